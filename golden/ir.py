"""The network IR: layers, float networks and quantized networks (DESIGN.md section 4).

A network is a sequence of layers.  Tensor 0 is the input; tensor ``j + 1`` is the output of
layer ``j``.  Every tensor of one image has shape ``(C, H, W)``.  Layer ``j``'s index ``j``
is also its ``layer`` key for the stochastic-rounding generator.

The same layer classes describe a :class:`FloatNetwork` (float parameters, no formats) and
a :class:`QNetwork` (integer parameters, a :class:`~.qformat.QFormat` per tensor and a
rounding mode per layer).  Both validate on construction and raise
:class:`~.errors.NetworkError` naming the layer and the field.
"""

import math
from dataclasses import dataclass, field, fields, replace
from typing import Callable

import numpy as np

from .errors import NetworkError
from .qformat import QFormat
from .rounding import ROUNDING_MODES

__all__ = [
    "Conv2d", "Dense", "MaxPool2d", "AvgPool2d", "Activation", "Add", "LAYER_KINDS",
    "ACTIVATIONS", "FUSED_ACTIVATIONS", "LUT_FUNCTIONS", "LUT_MAX_INPUT_WIDTH",
    "register_lut_function", "FloatNetwork", "QNetwork", "resolve_padding",
]

#: Functions that may be fused into a conv2d or dense layer's saturation.
FUSED_ACTIVATIONS = ("none", "relu", "clip")
#: Stand-alone activation functions.
ACTIVATIONS = ("relu", "clip", "leaky_relu", "hard_sigmoid", "hard_tanh", "lut")
#: Widest input of a lookup-table activation (the table has 2**width entries).
LUT_MAX_INPUT_WIDTH = 10
#: Largest convolution kernel side.
MAX_KERNEL = 7


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


#: Named functions for lookup-table activations.  Golden and RTL both build the table from
#: the function registered here (see :func:`~.ops.lut_table`).
LUT_FUNCTIONS: dict[str, Callable] = {
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "silu": lambda x: x * _sigmoid(x),
    "softplus": lambda x: np.logaddexp(0.0, x),
    "gelu_tanh": lambda x: 0.5 * x * (1.0 + np.tanh(0.7978845608028654 * (x + 0.044715 * x ** 3))),
    "exp": np.exp,
    "square": np.square,
}


def register_lut_function(name, function):
    """Make ``function`` (float64 array -> float64 array) available to ``lut`` activations
    under ``name``.  A network file stores only the name, so the loader must register the
    same function before loading."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"LUT function name must be a non-empty string, not {name!r}")
    if not callable(function):
        raise TypeError(f"LUT function must be callable, not {function!r}")
    LUT_FUNCTIONS[name] = function


def _int_tuple(value, n, what):
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return (int(value),) * n
    if isinstance(value, (tuple, list)) and len(value) == n and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
        return tuple(int(v) for v in value)
    raise TypeError(f"{what} must be an integer or a tuple of {n} integers, not {value!r}")


def resolve_padding(padding, in_hw, kernel, stride):
    """Explicit ``(top, bottom, left, right)`` zero padding.

    ``padding`` is ``"valid"`` (none), ``"same"`` (output size ``ceil(H / stride)``, the extra
    row or column at the bottom/right, as TensorFlow), an integer, a ``(ph, pw)`` pair or a
    ``(top, bottom, left, right)`` tuple.
    """
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        pads = []
        for size, k in zip(in_hw, kernel):
            total = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
            pads += [total // 2, total - total // 2]
        return tuple(pads)
    if isinstance(padding, (tuple, list)) and len(padding) == 2:
        ph, pw = _int_tuple(padding, 2, "Padding")
        return (ph, ph, pw, pw)
    return _int_tuple(padding, 4, "Padding")


def _pad_json(padding):
    return padding if isinstance(padding, str) else list(padding)


def _pad_from_json(padding):
    return padding if isinstance(padding, str) else tuple(padding)


# --- layers -----------------------------------------------------------------------------
#
# Every layer is a frozen dataclass.  Array fields (weights, biases) are compared by
# identity (eq=False): networks are compared with ``QNetwork.equal``.

@dataclass(frozen=True, eq=False)
class Conv2d:
    """2-D convolution (cross-correlation) with bias and a fused activation.

    Parameters
    ----------
    weight : ndarray, shape (out_channels, in_channels, kh, kw)
        Float for a float network; int64 in ``weight_format`` for a quantized one.
    bias : ndarray, shape (out_channels,), optional
        Quantized in ``bias_format``, whose ``frac`` must not exceed the accumulator's
        (``f_in + f_w``): it is aligned by an exact left shift.
    stride : int
        1 or 2.
    padding : str or tuple
        See :func:`resolve_padding`.
    activation : str
        Fused activation, one of :data:`FUSED_ACTIVATIONS`, applied as part of saturation.
    clip_max : float, optional
        Upper bound of a fused ``clip`` (ReLU-N), a real number; its integer bound is
        ``out_format.quantize(clip_max)``.
    weight_format, bias_format, out_format : QFormat
        Quantized networks only.
    rounding : str
        Quantized networks only: the default rounding mode (a run-time register).
    """
    kind = "conv2d"
    weight: np.ndarray
    bias: np.ndarray | None = None
    stride: int = 1
    padding: object = "valid"
    activation: str = "none"
    clip_max: float | None = None
    weight_format: QFormat | None = None
    bias_format: QFormat | None = None
    out_format: QFormat | None = None
    rounding: str | None = None

    @property
    def kernel(self):
        return tuple(self.weight.shape[2:])

    def padding_for(self, in_shape):
        return resolve_padding(self.padding, in_shape[1:], self.kernel, self.stride)

    def output_shape(self, in_shape):
        t, b, l, r = self.padding_for(in_shape)
        kh, kw = self.kernel
        return (self.weight.shape[0],
                (in_shape[1] + t + b - kh) // self.stride + 1,
                (in_shape[2] + l + r - kw) // self.stride + 1)

    def macs(self, in_shape):
        c, h, w = self.output_shape(in_shape)
        return c * h * w * int(np.prod(self.weight.shape[1:]))

    def reduction_length(self):
        return int(np.prod(self.weight.shape[1:]))


@dataclass(frozen=True, eq=False)
class Dense:
    """Fully connected layer: a conv2d over a 1x1 map of the input flattened in (C, H, W)
    order.  Output shape ``(out_features, 1, 1)``.  Fields as :class:`Conv2d`;
    ``weight`` has shape ``(out_features, in_features)``."""
    kind = "dense"
    weight: np.ndarray
    bias: np.ndarray | None = None
    activation: str = "none"
    clip_max: float | None = None
    weight_format: QFormat | None = None
    bias_format: QFormat | None = None
    out_format: QFormat | None = None
    rounding: str | None = None

    def output_shape(self, in_shape):
        return (self.weight.shape[0], 1, 1)

    def macs(self, in_shape):
        return int(self.weight.size)

    def reduction_length(self):
        return int(self.weight.shape[1])


@dataclass(frozen=True, eq=False)
class MaxPool2d:
    """Max pooling over ``kernel x kernel`` windows with ``stride`` (default ``kernel``), no
    padding; rows/columns that do not fill a window are dropped.  Works on quantized values:
    the output format is the input format, and there is no rounding."""
    kind = "maxpool2d"
    kernel: int = 2
    stride: int | None = None

    @property
    def step(self):
        return self.kernel if self.stride is None else self.stride

    def output_shape(self, in_shape):
        c, h, w = in_shape
        return (c, (h - self.kernel) // self.step + 1, (w - self.kernel) // self.step + 1)


@dataclass(frozen=True, eq=False)
class AvgPool2d:
    """Average pooling over ``kernel x kernel`` windows whose area is a power of two.

    The window sum is exact with ``f_in + log2(kernel**2)`` fractional bits; the divide is the
    requantization shift into ``out_format`` with the layer's rounding mode."""
    kind = "avgpool2d"
    kernel: int = 2
    stride: int | None = None
    out_format: QFormat | None = None
    rounding: str | None = None

    @property
    def step(self):
        return self.kernel if self.stride is None else self.stride

    @property
    def area_log2(self):
        return int(self.kernel * self.kernel).bit_length() - 1

    output_shape = MaxPool2d.output_shape


@dataclass(frozen=True, eq=False)
class Activation:
    """An element-wise activation with its own output format.

    Functions (``x`` real, bounds exact in the output format):

    ===============  ==========================================================
    ``relu``         ``max(x, 0)``
    ``clip``         ``min(max(x, 0), clip_max)`` (ReLU-N)
    ``leaky_relu``   ``x`` if ``x >= 0`` else ``x * 2**-slope_shift``
    ``hard_sigmoid`` ``clamp(x / 4 + 1/2, 0, 1)``
    ``hard_tanh``    ``clamp(x, -1, 1)``
    ``lut``          ``LUT_FUNCTIONS[lut](x)``, tabulated over every input integer (input
                     width <= 10 bits), rounded to nearest-even and saturated
    ===============  ==========================================================
    """
    kind = "activation"
    function: str = "relu"
    clip_max: float | None = None
    slope_shift: int | None = None
    lut: str | None = None
    out_format: QFormat | None = None
    rounding: str | None = None

    def output_shape(self, in_shape):
        return tuple(in_shape)


@dataclass(frozen=True, eq=False)
class Add:
    """Element-wise residual add of the previous tensor and tensor ``other`` (an earlier
    tensor index, 0 = network input).  Both are aligned to the larger ``frac`` by exact left
    shifts, added, and requantized into ``out_format``."""
    kind = "add"
    other: int = 0
    activation: str = "none"
    clip_max: float | None = None
    out_format: QFormat | None = None
    rounding: str | None = None

    def output_shape(self, in_shape):
        return tuple(in_shape)


LAYER_KINDS = {cls.kind: cls for cls in (Conv2d, Dense, MaxPool2d, AvgPool2d, Activation, Add)}
_ARRAY_FIELDS = ("weight", "bias")


# --- validation --------------------------------------------------------------------------

class _Checker:
    """Raises NetworkError with the layer named."""

    def __init__(self, index, layer):
        self.where = (f"Layer {index} ({layer.kind})" if index is not None else "Network")

    def fail(self, message):
        raise NetworkError(f"{self.where}: {message}")

    def integer(self, name, value, lo=None, hi=None):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            self.fail(f"{name} must be an integer, not {value!r}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            self.fail(f"{name} must be {bounds}, not {value}")

    def choice(self, name, value, options):
        if value not in options:
            self.fail(f"{name} must be one of {', '.join(options)}, not {value!r}")

    def qformat(self, name, value):
        if not isinstance(value, QFormat):
            self.fail(f"{name} must be a QFormat, not {value!r}")

    def array(self, name, value, ndim, quantized, fmt=None):
        if not isinstance(value, np.ndarray):
            self.fail(f"{name} must be a NumPy array, not {type(value).__name__}")
        if value.ndim != ndim:
            self.fail(f"{name} must have {ndim} dimensions, not shape {value.shape}")
        if quantized:
            if value.dtype.kind not in "iu":
                self.fail(f"{name} must hold integers in a quantized network, not {value.dtype}")
            if fmt is not None and not fmt.contains(value):
                self.fail(f"{name} has values in {value.min()}..{value.max()}, outside {name} "
                          f"format {fmt} ({fmt.min}..{fmt.max})")
        else:
            if value.dtype.kind != "f":
                self.fail(f"{name} must hold floats in a float network, not {value.dtype}")
            if not np.all(np.isfinite(value)):
                self.fail(f"{name} has non-finite values")


def _check_layer(index, layer, in_shape, in_format, quantized, tensor_shapes):
    """Validate ``layer`` on an input of ``in_shape``; return (out_shape, out_format)."""
    if type(layer) not in LAYER_KINDS.values():
        raise NetworkError(f"Layer {index}: unknown layer type {type(layer).__name__}")
    kind = layer.kind
    ck = _Checker(index, layer)
    c, h, w = in_shape

    if quantized:
        if kind != "maxpool2d":
            ck.qformat("out_format", layer.out_format)
            ck.choice("rounding", layer.rounding, ROUNDING_MODES)
    if hasattr(layer, "activation"):
        ck.choice("activation", layer.activation, FUSED_ACTIVATIONS)
    if getattr(layer, "activation", None) == "clip" or (
            kind == "activation" and layer.function == "clip"):
        if not isinstance(layer.clip_max, (int, float)) or not layer.clip_max > 0:
            ck.fail(f"clip_max must be a positive number, not {layer.clip_max!r}")

    if kind in ("conv2d", "dense"):
        ndim = 4 if kind == "conv2d" else 2
        wf = layer.weight_format if quantized else None
        if quantized:
            ck.qformat("weight_format", layer.weight_format)
        ck.array("weight", layer.weight, ndim, quantized, wf)
        out_ch = layer.weight.shape[0]
        if out_ch < 1:
            ck.fail("weight must have at least one output channel")
        if layer.bias is not None:
            if quantized:
                ck.qformat("bias_format", layer.bias_format)
            ck.array("bias", layer.bias, 1, quantized, layer.bias_format if quantized else None)
            if layer.bias.shape != (out_ch,):
                ck.fail(f"bias has shape {layer.bias.shape}, expected ({out_ch},) "
                        f"(one per output channel)")
            if quantized:
                f_acc = in_format.frac + layer.weight_format.frac
                if layer.bias_format.frac > f_acc:
                    ck.fail(f"bias_format {layer.bias_format} has more fractional bits than "
                            f"the accumulator (f_in + f_w = {f_acc}); it must be aligned by a "
                            f"left shift")
        if kind == "conv2d":
            if layer.weight.shape[1] != c:
                ck.fail(f"weight has {layer.weight.shape[1]} input channels but the layer's "
                        f"input has {c} (input shape {in_shape})")
            kh, kw = layer.kernel
            for name, k in (("kernel height", kh), ("kernel width", kw)):
                ck.integer(name, k, 1, MAX_KERNEL)
            ck.integer("stride", layer.stride, 1, 2)
            try:
                pads = layer.padding_for(in_shape)
            except TypeError as exc:
                ck.fail(str(exc))
            for p, k in zip(pads, (kh, kh, kw, kw)):
                if not 0 <= p < k:
                    ck.fail(f"padding {pads} must be between 0 and kernel-1 on each side")
            oc, oh, ow = layer.output_shape(in_shape)
            if oh < 1 or ow < 1:
                ck.fail(f"a {kh}x{kw} kernel with padding {pads} does not fit the "
                        f"{h}x{w} input")
        else:
            if layer.weight.shape[1] != c * h * w:
                ck.fail(f"weight has {layer.weight.shape[1]} input features but the layer's "
                        f"input {in_shape} flattens to {c * h * w}")

    elif kind in ("maxpool2d", "avgpool2d"):
        ck.integer("kernel", layer.kernel, 1)
        if layer.stride is not None:
            ck.integer("stride", layer.stride, 1)
        if layer.kernel > h or layer.kernel > w:
            ck.fail(f"a {layer.kernel}x{layer.kernel} window does not fit the {h}x{w} input")
        if kind == "avgpool2d" and (layer.kernel * layer.kernel) & (
                layer.kernel * layer.kernel - 1):
            ck.fail(f"window area must be a power of two, not {layer.kernel}x{layer.kernel}")

    elif kind == "activation":
        ck.choice("function", layer.function, ACTIVATIONS)
        if layer.function == "leaky_relu":
            ck.integer("slope_shift", layer.slope_shift, 1, 15)
        if layer.function == "lut":
            if layer.lut not in LUT_FUNCTIONS:
                ck.fail(f"lut function {layer.lut!r} is not registered (known: "
                        f"{', '.join(sorted(LUT_FUNCTIONS))})")
            if quantized and in_format.width > LUT_MAX_INPUT_WIDTH:
                ck.fail(f"a lookup-table activation takes inputs of at most "
                        f"{LUT_MAX_INPUT_WIDTH} bits, not {in_format} ")

    elif kind == "add":
        ck.integer("other", layer.other, 0, index)
        if tensor_shapes[layer.other] != tuple(in_shape):
            ck.fail(f"tensor {layer.other} has shape {tensor_shapes[layer.other]} but the "
                    f"layer's input has shape {in_shape}")

    out_shape = tuple(int(v) for v in layer.output_shape(in_shape))
    out_format = None
    if quantized:
        out_format = in_format if kind == "maxpool2d" else layer.out_format
    return out_shape, out_format


def _check_shape(shape):
    if not (isinstance(shape, tuple) and len(shape) == 3 and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1
            for v in shape)):
        raise NetworkError(f"Network: input_shape must be a (C, H, W) tuple of positive "
                           f"integers, not {shape!r}")


@dataclass(frozen=True, eq=False)
class FloatNetwork:
    """A trained float network: the input of calibration (:mod:`.calibrate`).

    Parameters
    ----------
    input_shape : tuple of int
        ``(C, H, W)`` of one image.
    layers : tuple of layers
        Float weights; formats and rounding fields are ignored.
    name : str
    """
    input_shape: tuple
    layers: tuple
    name: str = ""

    def __post_init__(self):
        object.__setattr__(self, "input_shape", tuple(self.input_shape))
        object.__setattr__(self, "layers", tuple(self.layers))
        _check_shape(self.input_shape)
        shapes = [self.input_shape]
        for i, layer in enumerate(self.layers):
            shapes.append(_check_layer(i, layer, shapes[-1], None, False, shapes)[0])
        object.__setattr__(self, "tensor_shapes", tuple(shapes))

    @property
    def output_shape(self):
        return self.tensor_shapes[-1]


@dataclass(frozen=True, eq=False)
class QNetwork:
    """A quantized network: the contract between golden model, compiler and RTL.

    Parameters
    ----------
    input_shape : tuple of int
        ``(C, H, W)`` of one image.
    input_format : QFormat
        Format of the input tensor.
    layers : tuple of layers
        Integer weights, every format set, a rounding mode per requantizing layer.
    seed : int
        Stochastic-rounding seed, ``0 <= seed < 2**32`` (a run-time register in hardware).
    name : str

    Members
    -------
    tensor_shapes : tuple
        ``(C, H, W)`` of tensor 0 (input) .. tensor ``len(layers)`` (output).
    tensor_formats : tuple of QFormat
        Format of every tensor.

    Raises
    ------
    NetworkError
        Naming the layer and field that breaks a rule.
    """
    input_shape: tuple
    input_format: QFormat
    layers: tuple
    seed: int = 0
    name: str = ""
    tensor_shapes: tuple = field(init=False, repr=False)
    tensor_formats: tuple = field(init=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "input_shape", tuple(self.input_shape))
        object.__setattr__(self, "layers", tuple(self.layers))
        _check_shape(self.input_shape)
        if not isinstance(self.input_format, QFormat):
            raise NetworkError(f"Network: input_format must be a QFormat, not "
                               f"{self.input_format!r}")
        ck = _Checker(None, None)
        ck.integer("seed", self.seed, 0, (1 << 32) - 1)
        shapes, formats = [self.input_shape], [self.input_format]
        for i, layer in enumerate(self.layers):
            shape, fmt = _check_layer(i, layer, shapes[-1], formats[-1], True, shapes)
            shapes.append(shape)
            formats.append(fmt)
        object.__setattr__(self, "tensor_shapes", tuple(shapes))
        object.__setattr__(self, "tensor_formats", tuple(formats))

    @property
    def output_shape(self):
        return self.tensor_shapes[-1]

    @property
    def output_format(self):
        return self.tensor_formats[-1]

    def layer_macs(self):
        """Multiply-accumulates per image of each layer (0 for layers without a matrix
        product)."""
        return [layer.macs(self.tensor_shapes[i]) if hasattr(layer, "macs") else 0
                for i, layer in enumerate(self.layers)]

    @property
    def macs(self):
        return sum(self.layer_macs())

    def with_rounding(self, mode):
        """A copy with every requantizing layer's rounding mode set to ``mode``."""
        return replace(self, layers=tuple(
            replace(l, rounding=mode) if getattr(l, "rounding", None) is not None else l
            for l in self.layers))

    def equal(self, other):
        """True if ``other`` describes the same network bit for bit."""
        if not isinstance(other, QNetwork):
            return False
        if (self.input_shape, self.input_format, self.seed, self.name, len(self.layers)) != (
                other.input_shape, other.input_format, other.seed, other.name,
                len(other.layers)):
            return False
        for a, b in zip(self.layers, other.layers):
            if type(a) is not type(b):
                return False
            for f in fields(a):
                x, y = getattr(a, f.name), getattr(b, f.name)
                if f.name in _ARRAY_FIELDS:
                    if (x is None) != (y is None) or (
                            x is not None and not np.array_equal(x, y)):
                        return False
                elif x != y:
                    return False
        return True
