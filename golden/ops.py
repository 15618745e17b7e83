"""Bit-exact NumPy layer operations (DESIGN.md sections 2-4).

Every function works on a batch ``(N, C, H, W)`` of int64 tensors.  Products and sums are
exact: the matrix products run in float64 through BLAS only when every partial sum is
provably below 2**53 in magnitude (so float64 holds it exactly, in any summation order),
and in int64 otherwise.

Each quantized layer operation has an RTL twin with the same signature shape, so a test
reads ``assert_array_equal(rtl_conv2d(x, w, **p), conv2d(x, w, **p))``.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .qformat import QFormat
from .rounding import check_mode, requantize
from .ir import LUT_FUNCTIONS, resolve_padding

__all__ = [
    "conv2d_acc", "dense_acc", "align_bias", "clamp_bounds", "flat_index",
    "conv2d", "dense", "maxpool2d", "avgpool2d", "activation", "add", "lut_table",
    "float_conv2d", "float_dense", "float_pool", "float_activation",
]

_EXACT_LIMIT = 1 << 53
_EXACT_LIMIT_F32 = 1 << 24


def _windows(x, kernel, stride, pads):
    """``(N, C, Ho, Wo, kh, kw)`` view of the zero-padded input's windows."""
    t, b, l, r = pads
    if any(pads):
        x = np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)))
    win = sliding_window_view(x, kernel, axis=(2, 3))
    return win[:, :, ::stride, ::stride]


def _exact_dtype(k, amax, bmax):
    """The cheapest dtype in which a product of a ``(.., k)`` and a ``(k, ..)`` integer
    matrix with entries bounded by ``amax`` and ``bmax`` is exact in any summation order:
    every partial sum is an integer of magnitude at most ``k * amax * bmax``, exact in
    float32 below 2**24 and in float64 below 2**53."""
    bound = k * int(amax) * int(bmax)
    if bound < _EXACT_LIMIT_F32:
        return np.float32
    if bound < _EXACT_LIMIT:
        return np.float64
    return np.int64


def _amax(a):
    return int(np.abs(a).max(initial=0))


def _matmul_exact(a, b):
    """``a @ b`` for integer arrays, exact: float32 or float64 BLAS when the bound allows,
    int64 otherwise (see :func:`_exact_dtype`)."""
    dtype = _exact_dtype(a.shape[-1], _amax(a), _amax(b))
    return (a.astype(dtype) @ b.astype(dtype)).astype(np.int64)


def conv2d_acc(x, weight, *, stride=1, padding="valid"):
    """Exact convolution sums (no bias): ``(N, C, H, W) x (O, C, kh, kw) -> (N, O, Ho, Wo)``.

    Works for integer inputs (exact int64 result) and float inputs (float64 result)."""
    x = np.asarray(x)
    o, c, kh, kw = weight.shape
    integer = x.dtype.kind != "f" and weight.dtype.kind != "f"
    dtype = _exact_dtype(c * kh * kw, _amax(x), _amax(weight)) if integer else np.float64
    # Convert before the im2col copy, so it is made once, in the narrowest exact dtype.
    x, wmat = x.astype(dtype, copy=False), weight.reshape(o, c * kh * kw).T.astype(dtype)
    pads = resolve_padding(padding, x.shape[2:], (kh, kw), stride)
    win = _windows(x, (kh, kw), stride, pads)
    n, _, ho, wo = win.shape[:4]
    cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * kh * kw)
    out = cols @ wmat
    if integer:
        out = out.astype(np.int64)
    return out.reshape(n, ho, wo, o).transpose(0, 3, 1, 2)


def dense_acc(x, weight):
    """Exact dense sums (no bias): input flattened in (C, H, W) order -> ``(N, O, 1, 1)``."""
    x = np.asarray(x)
    flat = x.reshape(x.shape[0], -1)
    if x.dtype.kind == "f" or weight.dtype.kind == "f":
        out = flat.astype(np.float64) @ weight.T.astype(np.float64)
    else:
        out = _matmul_exact(flat, weight.T)
    return out.reshape(x.shape[0], weight.shape[0], 1, 1)


def align_bias(bias, bias_format, f_acc):
    """Bias integers shifted left to the accumulator scale ``f_acc`` (exact)."""
    shift = f_acc - bias_format.frac
    if shift < 0:
        raise ValueError(f"Bias format {bias_format} has more fractional bits than the "
                         f"accumulator ({f_acc})")
    return np.asarray(bias, dtype=np.int64) << np.int64(shift)


def clamp_bounds(activation, clip_max, out_format):
    """Integer ``(lo, hi)`` of a fused activation in ``out_format`` (``None`` = the format's
    own limit).  A real bound is quantized with :meth:`QFormat.quantize`."""
    if activation == "none":
        return None, None
    if activation == "relu":
        return 0, None
    if activation == "clip":
        return 0, int(out_format.quantize(clip_max))
    raise ValueError(f"Fused activation must be one of none, relu, clip, not {activation!r}")


def flat_index(shape):
    """Flat (C, H, W) index of every element of one image's tensor of ``shape``."""
    return np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)


def _requant_layer(acc, f_acc, out_format, rounding, seed, layer, lo=None, hi=None,
                   count_saturations=False):
    return requantize(acc, f_acc - out_format.frac, rounding, out_format, lo=lo, hi=hi,
                      seed=seed, layer=layer, index=flat_index(acc.shape[1:]),
                      count_saturations=count_saturations)


def _check_formats(**formats):
    for name, fmt in formats.items():
        if not isinstance(fmt, QFormat):
            raise TypeError(f"{name} must be a QFormat, not {fmt!r}")


def conv2d(x, weight, bias=None, *, in_format, weight_format, bias_format=None, out_format,
           stride=1, padding="valid", activation="none", clip_max=None,
           rounding="nearest_even", seed=0, layer=0, count_saturations=False):
    """Quantized conv2d: exact sums, aligned bias, requantization with the fused clamp.

    ``f_acc = in_format.frac + weight_format.frac``; stochastic offsets are keyed by
    ``(seed, layer, flat output index)``.  Returns int64 ``(N, O, Ho, Wo)`` (and the
    saturation count with ``count_saturations``, as :func:`~.rounding.requantize`)."""
    _check_formats(in_format=in_format, weight_format=weight_format, out_format=out_format)
    check_mode(rounding)
    f_acc = in_format.frac + weight_format.frac
    acc = conv2d_acc(np.asarray(x, dtype=np.int64), np.asarray(weight, dtype=np.int64),
                     stride=stride, padding=padding)
    if bias is not None:
        acc = acc + align_bias(bias, bias_format, f_acc)[None, :, None, None]
    lo, hi = clamp_bounds(activation, clip_max, out_format)
    return _requant_layer(acc, f_acc, out_format, rounding, seed, layer, lo, hi,
                          count_saturations)


def dense(x, weight, bias=None, *, in_format, weight_format, bias_format=None, out_format,
          activation="none", clip_max=None, rounding="nearest_even", seed=0, layer=0,
          count_saturations=False):
    """Quantized dense layer (a conv2d over the flattened input).  Returns int64
    ``(N, O, 1, 1)``."""
    _check_formats(in_format=in_format, weight_format=weight_format, out_format=out_format)
    check_mode(rounding)
    f_acc = in_format.frac + weight_format.frac
    acc = dense_acc(np.asarray(x, dtype=np.int64), np.asarray(weight, dtype=np.int64))
    if bias is not None:
        acc = acc + align_bias(bias, bias_format, f_acc)[None, :, None, None]
    lo, hi = clamp_bounds(activation, clip_max, out_format)
    return _requant_layer(acc, f_acc, out_format, rounding, seed, layer, lo, hi,
                          count_saturations)


def _pool_windows(x, kernel, stride):
    return _windows(np.asarray(x), (kernel, kernel), stride or kernel, (0, 0, 0, 0))


def maxpool2d(x, *, kernel, stride=None):
    """Max over ``kernel x kernel`` windows (stride defaults to ``kernel``); same format."""
    return _pool_windows(x, kernel, stride).max(axis=(-2, -1))


def avgpool2d(x, *, kernel, stride=None, in_format, out_format, rounding="nearest_even",
              seed=0, layer=0, count_saturations=False):
    """Average pool: exact window sum with ``f_in + log2(kernel**2)`` fractional bits,
    requantized into ``out_format``."""
    _check_formats(in_format=in_format, out_format=out_format)
    area = kernel * kernel
    if area & (area - 1):
        raise ValueError(f"Average-pool window area must be a power of two, not {area}")
    acc = _pool_windows(np.asarray(x, dtype=np.int64), kernel, stride).sum(axis=(-2, -1))
    f_acc = in_format.frac + area.bit_length() - 1
    return _requant_layer(acc, f_acc, out_format, rounding, seed, layer,
                          count_saturations=count_saturations)


def lut_table(function, in_format, out_format):
    """The table of a lookup-table activation: entry ``q - in_format.min`` holds
    ``out_format.quantize(f(q * 2**-f_in))`` for every input integer ``q``.

    ``function`` is a name in :data:`~.ir.LUT_FUNCTIONS` or a callable.  Golden and RTL both
    build their table with this function."""
    fn = LUT_FUNCTIONS[function] if isinstance(function, str) else function
    q = np.arange(in_format.min, in_format.max + 1, dtype=np.int64)
    with np.errstate(over="ignore", invalid="ignore"):
        values = np.asarray(fn(in_format.to_float(q)), dtype=np.float64)
    values = np.nan_to_num(values, nan=0.0, posinf=np.inf, neginf=-np.inf)
    return out_format.quantize(np.clip(values, -2.0 ** 80, 2.0 ** 80))


def activation(x, *, function, in_format, out_format, rounding="nearest_even", clip_max=None,
               slope_shift=None, lut=None, seed=0, layer=0, count_saturations=False):
    """A stand-alone element-wise activation (see :class:`~.ir.Activation`)."""
    _check_formats(in_format=in_format, out_format=out_format)
    check_mode(rounding)
    x = np.asarray(x, dtype=np.int64)
    f_in = in_format.frac
    if function == "lut":
        y = lut_table(lut, in_format, out_format)[x - in_format.min]
        return (y, 0) if count_saturations else y
    lo = hi = None
    if function == "relu":
        acc, f_acc, lo = x, f_in, 0
    elif function == "clip":
        acc, f_acc = x, f_in
        lo, hi = clamp_bounds("clip", clip_max, out_format)
    elif function == "leaky_relu":
        k = int(slope_shift)
        acc, f_acc = np.where(x >= 0, x << np.int64(k), x), f_in + k
    elif function == "hard_sigmoid":
        # x/4 + 1/2 exactly: x has f_in + 2 fractional bits after the divide by 4; 1/2 needs
        # at least one, so both are scaled up by e bits when f_in + 2 < 1.
        e = max(0, 1 - (f_in + 2))
        f_acc = f_in + 2 + e
        acc = (x << np.int64(e)) + (np.int64(1) << np.int64(f_acc - 1))
        lo, hi = int(out_format.quantize(0.0)), int(out_format.quantize(1.0))
    elif function == "hard_tanh":
        acc, f_acc = x, f_in
        lo, hi = int(out_format.quantize(-1.0)), int(out_format.quantize(1.0))
    else:
        raise ValueError(f"Unknown activation function {function!r}")
    return _requant_layer(acc, f_acc, out_format, rounding, seed, layer, lo, hi,
                          count_saturations)


def add(a, b, *, a_format, b_format, out_format, activation="none", clip_max=None,
        rounding="nearest_even", seed=0, layer=0, count_saturations=False):
    """Residual add: align both operands to the larger ``frac`` (exact left shifts), add,
    requantize into ``out_format`` with the fused clamp."""
    _check_formats(a_format=a_format, b_format=b_format, out_format=out_format)
    f_acc = max(a_format.frac, b_format.frac)
    acc = ((np.asarray(a, dtype=np.int64) << np.int64(f_acc - a_format.frac))
           + (np.asarray(b, dtype=np.int64) << np.int64(f_acc - b_format.frac)))
    lo, hi = clamp_bounds(activation, clip_max, out_format)
    return _requant_layer(acc, f_acc, out_format, rounding, seed, layer, lo, hi,
                          count_saturations)


# --- float twins (used by calibration and the float reference) ---------------------------

def _float_fused(y, activation, clip_max):
    if activation == "relu":
        return np.maximum(y, 0.0)
    if activation == "clip":
        return np.clip(y, 0.0, clip_max)
    return y


def float_conv2d(x, weight, bias=None, *, stride=1, padding="valid", activation="none",
                 clip_max=None):
    y = conv2d_acc(np.asarray(x, dtype=np.float64), np.asarray(weight, dtype=np.float64),
                   stride=stride, padding=padding)
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float64)[None, :, None, None]
    return _float_fused(y, activation, clip_max)


def float_dense(x, weight, bias=None, *, activation="none", clip_max=None):
    y = dense_acc(np.asarray(x, dtype=np.float64), np.asarray(weight, dtype=np.float64))
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float64)[None, :, None, None]
    return _float_fused(y, activation, clip_max)


def float_pool(x, *, op, kernel, stride=None):
    win = _pool_windows(np.asarray(x, dtype=np.float64), kernel, stride)
    return win.max(axis=(-2, -1)) if op == "max" else win.mean(axis=(-2, -1))


def float_activation(x, *, function, clip_max=None, slope_shift=None, lut=None):
    x = np.asarray(x, dtype=np.float64)
    if function == "relu":
        return np.maximum(x, 0.0)
    if function == "clip":
        return np.clip(x, 0.0, clip_max)
    if function == "leaky_relu":
        return np.where(x >= 0, x, x * 2.0 ** -slope_shift)
    if function == "hard_sigmoid":
        return np.clip(x / 4 + 0.5, 0.0, 1.0)
    if function == "hard_tanh":
        return np.clip(x, -1.0, 1.0)
    if function == "lut":
        return np.asarray(LUT_FUNCTIONS[lut](x), dtype=np.float64)
    raise ValueError(f"Unknown activation function {function!r}")
