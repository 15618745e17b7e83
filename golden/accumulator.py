"""Accumulator sizing (DESIGN.md section 2): exact accumulators that can never overflow.

The compiler sizes the array's accumulators from the operand widths and the longest
reduction in the network, plus the largest aligned bias.  A user-forced narrower
accumulator that could overflow is rejected with a :class:`~.errors.ConstraintError` that
names the layer and the width it needs.
"""

from .errors import ConstraintError

__all__ = ["product_sum_bound", "accumulator_width", "layer_accumulator_width",
           "network_accumulator_width", "check_accumulator_width"]


def product_sum_bound(in_width, weight_width, reduction_length):
    """Largest magnitude of a sum of ``reduction_length`` products of a signed
    ``in_width``-bit and a signed ``weight_width``-bit integer: ``K * 2**(wi-1) * 2**(ww-1)``
    (reached only by products of the two most negative values)."""
    for name, v in (("Input width", in_width), ("Weight width", weight_width),
                    ("Reduction length", reduction_length)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise TypeError(f"{name} must be a positive integer, not {v!r}")
    return reduction_length << (in_width + weight_width - 2)


def accumulator_width(in_width, weight_width, reduction_length, bias_bound=0):
    """Smallest signed width holding every sum of ``reduction_length`` products plus a bias
    of magnitude at most ``bias_bound``.

    Returns
    -------
    int
        ``W`` with ``-2**(W-1) <= sum <= 2**(W-1) - 1`` for every possible sum.
    """
    bound = product_sum_bound(in_width, weight_width, reduction_length) + int(bias_bound)
    return bound.bit_length() + 1


def layer_accumulator_width(network, index):
    """Accumulator width of conv2d/dense layer ``index`` of a QNetwork (``None`` for other
    layers)."""
    layer = network.layers[index]
    if layer.kind not in ("conv2d", "dense"):
        return None
    in_format = network.tensor_formats[index]
    bias_bound = 0
    if layer.bias is not None:
        shift = in_format.frac + layer.weight_format.frac - layer.bias_format.frac
        bias_bound = (1 << (layer.bias_format.width - 1)) << shift
    return accumulator_width(in_format.width, layer.weight_format.width,
                             layer.reduction_length(), bias_bound)


def network_accumulator_width(network):
    """The accumulator width that every conv2d/dense layer of ``network`` fits."""
    widths = [layer_accumulator_width(network, j) for j in range(len(network.layers))]
    return max([w for w in widths if w is not None], default=1)


def check_accumulator_width(network, width):
    """Raise :class:`ConstraintError` if an accumulator of ``width`` bits could overflow in
    some layer of ``network``; the message names the first such layer and the width it
    needs."""
    for j in range(len(network.layers)):
        need = layer_accumulator_width(network, j)
        if need is not None and need > width:
            layer = network.layers[j]
            raise ConstraintError(
                f"Layer {j} ({layer.kind}) needs a {need}-bit accumulator "
                f"({network.tensor_formats[j].width}-bit inputs x "
                f"{layer.weight_format.width}-bit weights over {layer.reduction_length()} "
                f"products plus bias); a {width}-bit accumulator could overflow")
