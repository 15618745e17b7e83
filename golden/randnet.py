"""Random small quantized networks, for testing the compiler and the accelerator.

:func:`random_network` draws a layer stack (conv2d with kernels 1..5, stride 1/2, valid,
same or explicit padding; max/avg pooling; dense layers; fused none/relu/clip), operand
widths 4..8 and per-tensor formats, with integer weights and biases drawn over their whole
format, so that saturation and every rounding direction happen.  Everything comes from one
``numpy.random.Generator``: the same seed gives the same network.
"""

import numpy as np

from .ir import AvgPool2d, Conv2d, Dense, MaxPool2d, QNetwork
from .qformat import QFormat
from .rounding import ROUNDING_MODES

__all__ = ["random_network", "random_input"]


def _fmt(rng, width):
    return QFormat(width, int(rng.integers(-1, width + 2)))


def random_network(rng, *, max_layers=4, max_size=10, max_channels=6, widths=(4, 8),
                   pools=True, name="random"):
    """A random :class:`~.ir.QNetwork` that the accelerator runs.

    Parameters
    ----------
    rng : numpy.random.Generator
    max_layers : int
        Conv/pool layers before the final dense layer (at least one conv).
    max_size : int
        Largest input height/width (the input is at least 3 x 3).
    max_channels : int
        Largest channel count.
    widths : (int, int)
        Range of activation and weight widths.
    pools : bool
        Allow pooling layers.
    """
    lo, hi = widths
    c = int(rng.integers(1, max_channels + 1))
    h = int(rng.integers(3, max_size + 1))
    w = int(rng.integers(3, max_size + 1))
    aw = int(rng.integers(lo, hi + 1))
    in_fmt = _fmt(rng, aw)
    layers = []
    shape = (c, h, w)
    cur = in_fmt
    n = int(rng.integers(1, max_layers + 1))
    for i in range(n):
        _, hh, ww = shape
        kind = "conv"
        if pools and i > 0 and layers[-1].kind == "conv2d" and min(hh, ww) >= 2 \
                and rng.random() < 0.4:
            kind = "pool"
        if kind == "pool":
            k = 2
            if rng.random() < 0.5:
                layer = MaxPool2d(kernel=k)
            else:
                layer = AvgPool2d(kernel=k, out_format=_fmt(rng, int(rng.integers(lo, hi + 1))),
                                  rounding=str(rng.choice(ROUNDING_MODES)))
        else:
            kmax = min(5, hh, ww)
            kh = int(rng.integers(1, kmax + 1))
            kw = int(rng.integers(1, kmax + 1))
            stride = int(rng.integers(1, 3))
            pad = rng.choice(["valid", "same", "explicit"])
            if pad == "explicit":
                padding = tuple(int(v) for v in rng.integers(0, [kh, kh, kw, kw]))
            elif pad == "same" and stride == 1:
                padding = "same"
            else:
                padding = "valid"
            cout = int(rng.integers(1, max_channels + 1))
            layer = _matmul(rng, "conv2d", (cout, shape[0], kh, kw), lo, hi, cur.frac,
                            stride=stride, padding=padding)
        probe = QNetwork((c, h, w), in_fmt, [*layers, layer])
        if min(probe.tensor_shapes[-1][1:]) < 1:
            break
        layers.append(layer)
        shape = probe.tensor_shapes[-1]
        cur = probe.tensor_formats[-1]
    features = int(np.prod(shape))
    layers.append(_matmul(rng, "dense", (int(rng.integers(1, 11)), features), lo, hi,
                          cur.frac))
    seed = int(rng.integers(0, 1 << 32))
    return QNetwork((c, h, w), in_fmt, layers, seed=seed, name=name)


def _matmul(rng, kind, wshape, lo, hi, f_in, **kw):
    wf = _fmt(rng, int(rng.integers(lo, hi + 1)))
    of = _fmt(rng, int(rng.integers(lo, hi + 1)))
    weight = rng.integers(wf.min, wf.max + 1, size=wshape)
    bias = None
    bf = None
    if rng.random() < 0.8:
        bf = QFormat(16, f_in + wf.frac - int(rng.integers(0, 5)))
        bias = rng.integers(-(1 << 10), 1 << 10, size=wshape[0])
    act = str(rng.choice(["none", "relu", "clip"]))
    clip_max = float(of.max * 2.0 ** -of.frac * rng.uniform(0.3, 0.9)) if act == "clip" \
        else None
    cls = Conv2d if kind == "conv2d" else Dense
    return cls(weight=weight, bias=bias, activation=act, clip_max=clip_max,
               weight_format=wf, bias_format=bf, out_format=of,
               rounding=str(rng.choice(ROUNDING_MODES)), **kw)


def random_input(rng, network, images):
    """``images`` random input tensors over the network's whole input format."""
    f = network.input_format
    return rng.integers(f.min, f.max + 1, size=(images, *network.input_shape))
