"""Layer operations (golden/ops.py) and whole-network runs (golden/run.py) against loop
references written here from DESIGN.md sections 2-4.

The references loop over output pixels on Python integers: exact sums, ``Fraction`` for
round-half-even, ``srgen.H`` called per element for stochastic offsets, explicit clamps.  They
share nothing with ``ops`` but ``srgen.H`` (which test_srgen.py checks against its own scalar
re-implementation).
"""

import math
import re
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest

from systolic.golden import ops, srgen
from systolic.golden.ir import (Activation, AvgPool2d, Conv2d, Dense, LUT_FUNCTIONS, MaxPool2d,
                                QNetwork, register_lut_function)
from systolic.golden.qformat import QFormat
from systolic.golden.rounding import ROUNDING_MODES
from systolic.golden.run import RunResult, predict, run

MODES = ROUNDING_MODES
SHAPES = [(1, 1), (2, 3), (4, 4), (3, 5), (5, 2), (6, 7), (8, 8)]


# --- reference arithmetic -------------------------------------------------------------------

def fmt_range(fmt):
    return -(1 << (fmt.width - 1)), (1 << (fmt.width - 1)) - 1


def ref_quantize(value, fmt):
    """A real number in ``fmt``: round half to even, saturate."""
    lo, hi = fmt_range(fmt)
    if math.isnan(value):
        return 0
    if math.isinf(value):
        return hi if value > 0 else lo
    return min(max(round(Fraction(value) * Fraction(2) ** fmt.frac), lo), hi)


def ref_requant(a, s, mode, fmt, lo=None, hi=None, seed=0, layer=0, idx=0, stats=None):
    """Accumulator ``a`` (Python int) shifted by ``s``; returns (output, saturation event)."""
    if s <= 0:
        y = a * 2 ** -s
    elif mode == "floor":
        y = a // 2 ** s
    elif mode == "nearest_even":
        y = round(Fraction(a, 2 ** s))
    else:
        h = int(srgen.H(seed, layer, idx))
        r = h % 2 ** s if s <= 32 else h * 2 ** (s - 32)
        y = (a + r) // 2 ** s
    if stats is not None and s > 0:
        exact = Fraction(a, 2 ** s)
        stats["tie"] += exact.denominator == 2
        stats["up"] += y > exact
        stats["down"] += y < exact
    if lo is not None:
        y = max(y, lo)
    if hi is not None:
        y = min(y, hi)
    fmin, fmax = fmt_range(fmt)
    event = not fmin <= y <= fmax
    if stats is not None:
        stats["sat"] += event
        stats["inside"] += not event
    return min(max(y, fmin), fmax), event


def fused_bounds(activation, clip_max, fmt):
    if activation == "relu":
        return 0, None
    if activation == "clip":
        return 0, ref_quantize(clip_max, fmt)
    return None, None


def ref_pads(padding, h, w, kh, kw, stride):
    if padding == "valid":
        return 0, 0, 0, 0
    if padding == "same":   # TensorFlow: output ceil(size / stride), extra pad at the end
        th = max((-(-h // stride) - 1) * stride + kh - h, 0)
        tw = max((-(-w // stride) - 1) * stride + kw - w, 0)
        return th // 2, th - th // 2, tw // 2, tw - tw // 2
    if isinstance(padding, int):
        return (padding,) * 4
    if len(padding) == 2:
        return padding[0], padding[0], padding[1], padding[1]
    return tuple(padding)


def ref_conv2d(x, w, b, *, fin, fw, fb, fout, stride, padding, activation, clip_max, mode,
               seed, layer, stats=None):
    n_, c_, h_, w_ = x.shape
    o_, _, kh, kw = w.shape
    t, _, l, _ = pads = ref_pads(padding, h_, w_, kh, kw, stride)
    ho = (h_ + pads[0] + pads[1] - kh) // stride + 1
    wo = (w_ + pads[2] + pads[3] - kw) // stride + 1
    f_acc = fin.frac + fw.frac
    lo, hi = fused_bounds(activation, clip_max, fout)
    xl, wl = x.tolist(), w.tolist()
    out = np.zeros((n_, o_, ho, wo), dtype=np.int64)
    events = 0
    for n in range(n_):
        for o in range(o_):
            for i in range(ho):
                for j in range(wo):
                    acc = 0
                    for c in range(c_):
                        for u in range(kh):
                            for v in range(kw):
                                yy, xx = i * stride + u - t, j * stride + v - l
                                if 0 <= yy < h_ and 0 <= xx < w_:
                                    acc += xl[n][c][yy][xx] * wl[o][c][u][v]
                    if b is not None:
                        acc += int(b[o]) * 2 ** (f_acc - fb.frac)
                    out[n, o, i, j], e = ref_requant(
                        acc, f_acc - fout.frac, mode, fout, lo, hi, seed, layer,
                        (o * ho + i) * wo + j, stats)
                    events += e
    return out, events


def ref_dense(x, w, b, *, fin, fw, fb, fout, activation, clip_max, mode, seed, layer,
              stats=None):
    n_, c_, h_, w_ = x.shape
    f_acc = fin.frac + fw.frac
    lo, hi = fused_bounds(activation, clip_max, fout)
    xl, wl = x.tolist(), w.tolist()
    out = np.zeros((n_, w.shape[0], 1, 1), dtype=np.int64)
    events = 0
    for n in range(n_):
        for o in range(w.shape[0]):
            acc = 0
            for c in range(c_):
                for i in range(h_):
                    for j in range(w_):
                        acc += xl[n][c][i][j] * wl[o][(c * h_ + i) * w_ + j]
            if b is not None:
                acc += int(b[o]) * 2 ** (f_acc - fb.frac)
            out[n, o, 0, 0], e = ref_requant(acc, f_acc - fout.frac, mode, fout, lo, hi,
                                             seed, layer, o, stats)
            events += e
    return out, events


def _pool_loop(x, kernel, stride, reduce):
    n_, c_, h_, w_ = x.shape
    step = kernel if stride is None else stride
    ho, wo = (h_ - kernel) // step + 1, (w_ - kernel) // step + 1
    xl = x.tolist()
    out = {}
    for n in range(n_):
        for c in range(c_):
            for i in range(ho):
                for j in range(wo):
                    window = [xl[n][c][i * step + u][j * step + v]
                              for u in range(kernel) for v in range(kernel)]
                    out[n, c, i, j] = reduce(window)
    return out, (n_, c_, ho, wo)


def ref_maxpool(x, kernel, stride=None):
    vals, shape = _pool_loop(x, kernel, stride, max)
    out = np.zeros(shape, dtype=np.int64)
    for k, v in vals.items():
        out[k] = v
    return out


def ref_avgpool(x, kernel, stride, *, fin, fout, mode, seed, layer, stats=None):
    # the window mean has f_in + log2(kernel**2) fractional bits: its sum is the accumulator
    vals, shape = _pool_loop(x, kernel, stride, sum)
    f_acc = fin.frac + 2 * int(math.log2(kernel))
    out = np.zeros(shape, dtype=np.int64)
    events = 0
    _, _, ho, wo = shape
    for (n, c, i, j), acc in vals.items():
        out[n, c, i, j], e = ref_requant(acc, f_acc - fout.frac, mode, fout, None, None, seed,
                                         layer, (c * ho + i) * wo + j, stats)
        events += e
    return out, events


def ref_activation(x, *, function, fin, fout, mode, clip_max=None, slope_shift=None, lut=None,
                   seed=0, layer=0, stats=None):
    """Each element as an exact accumulator at the smallest scale that holds the function's
    exact value (the stochastic offsets are drawn at that scale), then requantized."""
    _, c_, h_, w_ = x.shape
    out = np.zeros(x.shape, dtype=np.int64)
    events = 0
    fmin, fmax = fmt_range(fout)
    for (n, c, i, j), q in np.ndenumerate(x):
        q = int(q)
        idx = (c * h_ + i) * w_ + j
        lo = hi = None
        if function == "lut":
            with np.errstate(over="ignore", invalid="ignore"):
                v = float(np.asarray(LUT_FUNCTIONS[lut](np.array([q * 2.0 ** -fin.frac])))[0])
            out[n, c, i, j] = ref_quantize(v, fout)     # a table entry: no saturation event
            continue
        if function == "relu":
            acc, f_acc, lo = q, fin.frac, 0
        elif function == "clip":
            acc, f_acc, lo, hi = q, fin.frac, 0, ref_quantize(clip_max, fout)
        elif function == "leaky_relu":             # x, or x * 2**-k below zero
            f_acc = fin.frac + slope_shift
            acc = q * 2 ** slope_shift if q >= 0 else q
        elif function == "hard_sigmoid":           # clamp(x/4 + 1/2, 0, 1)
            f_acc = max(fin.frac + 2, 1)
            acc = q * 2 ** (f_acc - fin.frac - 2) + 2 ** (f_acc - 1)
            lo, hi = ref_quantize(0.0, fout), ref_quantize(1.0, fout)
        elif function == "hard_tanh":              # clamp(x, -1, 1)
            acc, f_acc = q, fin.frac
            lo, hi = ref_quantize(-1.0, fout), ref_quantize(1.0, fout)
        out[n, c, i, j], e = ref_requant(acc, f_acc - fout.frac, mode, fout, lo, hi, seed,
                                         layer, idx, stats)
        events += e
    assert fmin <= out.min() and out.max() <= fmax
    return out, events


def ref_add(a, b, *, fa, fb, fout, activation, clip_max, mode, seed, layer, stats=None):
    f_acc = max(fa.frac, fb.frac)
    lo, hi = fused_bounds(activation, clip_max, fout)
    out = np.zeros(a.shape, dtype=np.int64)
    events = 0
    _, c_, h_, w_ = a.shape
    for (n, c, i, j), qa in np.ndenumerate(a):
        acc = int(qa) * 2 ** (f_acc - fa.frac) + int(b[n, c, i, j]) * 2 ** (f_acc - fb.frac)
        out[n, c, i, j], e = ref_requant(acc, f_acc - fout.frac, mode, fout, lo, hi, seed,
                                         layer, (c * h_ + i) * w_ + j, stats)
        events += e
    return out, events


# --- random data ---------------------------------------------------------------------------

def rand_format(rng, wlo=2, whi=16):
    return QFormat(int(rng.integers(wlo, whi + 1)), int(rng.integers(-4, 21)))


def rand_tensor(rng, fmt, shape):
    lo, hi = fmt_range(fmt)
    return rng.integers(lo, hi + 1, size=shape)


def out_format_for(rng, acc_magnitude, f_acc, width=None):
    """An output format whose range cuts through the accumulator's typical magnitude, so that
    some outputs saturate, some round and some are small."""
    width = int(rng.integers(2, 17)) if width is None else width
    bits = max(int(acc_magnitude), 1).bit_length()
    s = bits - (width - 1) + int(rng.integers(-3, 2))
    return QFormat(width, f_acc - s)


def check_coverage(stats, mode, msg):
    assert stats["sat"] > 0 and stats["inside"] > 0, f"{msg}: coverage {dict(stats)}"
    assert stats["down"] > 0, f"{msg}: coverage {dict(stats)}"
    if mode != "floor":
        assert stats["up"] > 0, f"{msg}: coverage {dict(stats)}"


# --- conv2d ---------------------------------------------------------------------------------

PADDINGS = ["valid", "same", "explicit4", "explicit2", "int"]
FUSED = ["none", "relu", "clip"]


def _conv_case(rng, kernel, sub):
    stride = 1 + sub % 2
    activation = FUSED[sub % 3]
    with_bias = sub < 3
    kind = PADDINGS[(sub + kernel) % len(PADDINGS)]
    h, w = SHAPES[int(rng.integers(len(SHAPES)))]
    if kind == "valid" and (h < kernel or w < kernel):
        kind = "same"
    if kind == "same":
        padding = "same"
    elif kind == "valid":
        padding = "valid"
    else:
        while True:
            p = tuple(int(v) for v in rng.integers(0, kernel, size=4))
            if kind == "explicit2":
                p = (p[0], p[0], p[2], p[2])
            elif kind == "int":
                p = (p[0],) * 4
            if h + p[0] + p[1] >= kernel and w + p[2] + p[3] >= kernel:
                break
        padding = {"explicit4": p, "explicit2": (p[0], p[2]), "int": p[0]}[kind]
    return stride, activation, with_bias, padding, (h, w)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kernel", range(1, 8), ids=lambda k: f"k={k}")
@pytest.mark.parametrize("seed", range(3), ids=lambda s: f"seed={s}")
def test_conv2d_against_loops(seed, kernel, mode):
    rng = np.random.default_rng(seed * 100 + kernel)
    stats = Counter()
    for sub in range(6):
        stride, activation, with_bias, padding, (h, w) = _conv_case(rng, kernel, sub)
        n, c, o = int(rng.integers(1, 3)), int(rng.integers(1, 4)), int(rng.integers(1, 4))
        fin, fw = rand_format(rng), rand_format(rng)
        x = rand_tensor(rng, fin, (n, c, h, w))
        wt = rand_tensor(rng, fw, (o, c, kernel, kernel))
        f_acc = fin.frac + fw.frac
        typical = np.sqrt(c * kernel * kernel) * max(abs(x).mean(), 1) * max(abs(wt).mean(), 1)
        fb = bias = None
        if with_bias:
            fb = QFormat(int(rng.integers(2, 17)), f_acc - int(rng.integers(0, 8)))
            bias = rand_tensor(rng, fb, (o,))
        fout = out_format_for(rng, typical, f_acc)
        clip_max = float(fout.max * fout.lsb * rng.uniform(0.3, 1.5))
        key_seed, layer = int(rng.integers(1 << 32)), int(rng.integers(1 << 16))
        msg = (f"seed={seed} sub={sub}: x{x.shape} k={kernel} stride={stride} "
               f"padding={padding} bias={with_bias} act={activation} {fin} {fw} {fb} -> {fout}")
        expected, events = ref_conv2d(x, wt, bias, fin=fin, fw=fw, fb=fb, fout=fout,
                                      stride=stride, padding=padding, activation=activation,
                                      clip_max=clip_max, mode=mode, seed=key_seed, layer=layer,
                                      stats=stats)
        got, nsat = ops.conv2d(x, wt, bias, in_format=fin, weight_format=fw, bias_format=fb,
                               out_format=fout, stride=stride, padding=padding,
                               activation=activation, clip_max=clip_max, rounding=mode,
                               seed=key_seed, layer=layer, count_saturations=True)
        np.testing.assert_array_equal(got, expected, err_msg=msg)
        assert nsat == events, msg
        assert got.dtype == np.int64
    check_coverage(stats, mode, f"seed={seed} k={kernel}")


# --- dense ----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", range(4), ids=lambda s: f"seed={s}")
def test_dense_against_loops(seed, mode):
    rng = np.random.default_rng(1000 + seed)
    stats = Counter()
    for sub in range(6):
        h, w = SHAPES[sub % len(SHAPES)] if sub < 4 else SHAPES[int(rng.integers(len(SHAPES)))]
        n, c, o = int(rng.integers(1, 4)), int(rng.integers(1, 4)), int(rng.integers(1, 6))
        fin, fw = rand_format(rng), rand_format(rng)
        x = rand_tensor(rng, fin, (n, c, h, w))
        wt = rand_tensor(rng, fw, (o, c * h * w))
        f_acc = fin.frac + fw.frac
        fb = bias = None
        if sub % 2:
            fb = QFormat(int(rng.integers(2, 17)), f_acc - int(rng.integers(0, 8)))
            bias = rand_tensor(rng, fb, (o,))
        typical = np.sqrt(c * h * w) * max(abs(x).mean(), 1) * max(abs(wt).mean(), 1)
        fout = out_format_for(rng, typical, f_acc)
        activation = FUSED[sub % 3]
        clip_max = float(fout.max * fout.lsb * rng.uniform(0.3, 1.5))
        key_seed, layer = int(rng.integers(1 << 32)), int(rng.integers(1 << 16))
        msg = f"seed={seed} sub={sub}: x{x.shape} act={activation} {fin} {fw} {fb} -> {fout}"
        expected, events = ref_dense(x, wt, bias, fin=fin, fw=fw, fb=fb, fout=fout,
                                     activation=activation, clip_max=clip_max, mode=mode,
                                     seed=key_seed, layer=layer, stats=stats)
        got, nsat = ops.dense(x, wt, bias, in_format=fin, weight_format=fw, bias_format=fb,
                              out_format=fout, activation=activation, clip_max=clip_max,
                              rounding=mode, seed=key_seed, layer=layer,
                              count_saturations=True)
        np.testing.assert_array_equal(got, expected, err_msg=msg)
        assert nsat == events, msg
    check_coverage(stats, mode, f"seed={seed}")


def test_dense_flattens_c_h_w():
    # One weight picks one input element: the flat index of (c, h, w) in a (2, 2, 3) input
    # is c*6 + h*3 + w.
    x = np.arange(12).reshape(1, 2, 2, 3)
    wt = np.zeros((3, 12), dtype=np.int64)
    wt[0, 1 * 6 + 0 * 3 + 2] = 1     # x[0, 1, 0, 2] = 8
    wt[1, 0 * 6 + 1 * 3 + 0] = 1     # x[0, 0, 1, 0] = 3
    wt[2, 11] = -1                   # x[0, 1, 1, 2] = 11
    q = QFormat(8, 0)
    got = ops.dense(x, wt, in_format=q, weight_format=q, out_format=q, rounding="floor")
    np.testing.assert_array_equal(got.reshape(-1), [8, 3, -11])


# --- pooling --------------------------------------------------------------------------------

@pytest.mark.parametrize("kernel, stride", [(1, None), (2, None), (3, None), (2, 1), (3, 2),
                                            (2, 3), (1, 2)])
@pytest.mark.parametrize("seed", range(3), ids=lambda s: f"seed={s}")
def test_maxpool_against_loops(seed, kernel, stride):
    rng = np.random.default_rng(2000 + seed)
    for h, w in SHAPES:
        if h < kernel or w < kernel:
            continue
        fmt = rand_format(rng)
        x = rand_tensor(rng, fmt, (int(rng.integers(1, 3)), int(rng.integers(1, 4)), h, w))
        got = ops.maxpool2d(x, kernel=kernel, stride=stride)
        np.testing.assert_array_equal(got, ref_maxpool(x, kernel, stride),
                                      err_msg=f"seed={seed} x{x.shape}")


@pytest.mark.parametrize("kernel, stride", [(1, None), (2, None), (4, None), (2, 1), (2, 3),
                                            (4, 2), (1, 2)])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", range(2), ids=lambda s: f"seed={s}")
def test_avgpool_against_loops(seed, mode, kernel, stride):
    rng = np.random.default_rng(3000 + seed)
    stats = Counter()
    for h, w in SHAPES + [(4, 9), (9, 4)]:
        if h < kernel or w < kernel:
            continue
        fin = rand_format(rng)
        x = rand_tensor(rng, fin, (int(rng.integers(1, 3)), int(rng.integers(1, 4)), h, w))
        # out frac fin - 1 .. fin + log2(area) + 1: saturating, rounding and exact shifts
        f_acc = fin.frac + 2 * int(math.log2(kernel))
        fout = QFormat(min(16, max(2, fin.width + int(rng.integers(-2, 2)))),
                       f_acc - int(rng.integers(-1, 2 * int(math.log2(kernel)) + 2)))
        key_seed, layer = int(rng.integers(1 << 32)), int(rng.integers(1 << 16))
        expected, events = ref_avgpool(x, kernel, stride, fin=fin, fout=fout, mode=mode,
                                       seed=key_seed, layer=layer, stats=stats)
        got, nsat = ops.avgpool2d(x, kernel=kernel, stride=stride, in_format=fin,
                                  out_format=fout, rounding=mode, seed=key_seed, layer=layer,
                                  count_saturations=True)
        msg = f"seed={seed} x{x.shape} {fin} -> {fout}"
        np.testing.assert_array_equal(got, expected, err_msg=msg)
        assert nsat == events, msg
    if kernel > 1:
        check_coverage(stats, mode, f"seed={seed}")


def test_avgpool_rejects_area_not_power_of_two():
    q = QFormat(8, 0)
    with pytest.raises(ValueError, match=r"Average-pool window area must be a power of two, "
                                         r"not 9"):
        ops.avgpool2d(np.zeros((1, 1, 3, 3), dtype=np.int64), kernel=3, in_format=q,
                      out_format=q)


# --- activations ---------------------------------------------------------------------------

register_lut_function("test_ops_cubic", lambda v: v ** 3 - 0.5 * v)

ACTS = [("relu", {}), ("clip", {"clip_max": None}), ("leaky_relu", {"slope_shift": 1}),
        ("leaky_relu", {"slope_shift": 5}), ("hard_sigmoid", {}), ("hard_tanh", {}),
        ("lut", {"lut": "tanh"}), ("lut", {"lut": "sigmoid"}), ("lut", {"lut": "exp"}),
        ("lut", {"lut": "test_ops_cubic"})]


@pytest.mark.parametrize("function, extra", ACTS,
                         ids=[f"{f}-{next(iter(e.values()), '')}" for f, e in ACTS])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", range(2), ids=lambda s: f"seed={s}")
def test_activation_against_loops(seed, mode, function, extra):
    rng = np.random.default_rng(4000 + seed)
    stats = Counter()
    for sub, (h, w) in enumerate(SHAPES):
        extra = dict(extra)
        if function == "lut":
            fin = rand_format(rng, 2, 10)
            fin = QFormat(fin.width, int(rng.integers(-1, fin.width + 2)))
        elif function in ("hard_sigmoid", "hard_tanh") and sub % 2:
            # coarse formats: x/4 + 1/2 needs more fractional bits than x, and the result
            # rounds away (the stochastic offsets are drawn at that finer scale)
            fin = QFormat(int(rng.integers(2, 5)), int(rng.integers(-4, 2)))
        else:
            fin = rand_format(rng)
        x = rand_tensor(rng, fin, (int(rng.integers(1, 3)), int(rng.integers(1, 3)), h, w))
        # output fracs near the input's, so values are neither all saturated nor all zero;
        # for the [-1, 1] functions near what holds 1.0
        if function in ("hard_sigmoid", "hard_tanh") and sub % 2:
            fout = QFormat(int(rng.integers(2, 17)), int(rng.integers(-1, 2)))
        elif function in ("hard_sigmoid", "hard_tanh", "lut"):
            width = int(rng.integers(2, 17))
            fout = QFormat(width, width - 1 + int(rng.integers(-3, 2)))
        else:
            fout = QFormat(int(rng.integers(2, 17)), fin.frac - int(rng.integers(-2, 5)))
        if "clip_max" in extra:
            extra["clip_max"] = float(fout.max * fout.lsb * rng.uniform(0.2, 1.5))
        key_seed, layer = int(rng.integers(1 << 32)), int(rng.integers(1 << 16))
        expected, events = ref_activation(x, function=function, fin=fin, fout=fout, mode=mode,
                                          seed=key_seed, layer=layer, stats=stats, **extra)
        got, nsat = ops.activation(x, function=function, in_format=fin, out_format=fout,
                                   rounding=mode, seed=key_seed, layer=layer,
                                   count_saturations=True, **extra)
        msg = f"seed={seed} x{x.shape} {fin} -> {fout} {extra}"
        np.testing.assert_array_equal(got, expected, err_msg=msg)
        assert nsat == events, msg
    if function == "leaky_relu":
        check_coverage(stats, mode, f"seed={seed}")
    elif function == "hard_sigmoid":   # clamped inside the format: it cannot saturate
        assert stats["down"] > 0 and (mode == "floor" or stats["up"] > 0), dict(stats)
    elif function != "lut":            # no shift unless the formats' fracs differ
        assert stats["inside"] > 0, f"seed={seed}: coverage {dict(stats)}"


# (x, expected entry) for Q(8,4) in, Q(8,5) out: f(x) * 32 rounded half-even, saturated
LUT_POINTS = {
    "tanh": [(0.0, 0), (-1.0, -24), (2.0, 31), (7.9375, 32)],      # tanh(-1)*32 = -24.37
    "exp": [(0.0, 32), (1.0, 87), (-8.0, 0), (7.9375, 127)],       # e*32 = 86.98
    "square": [(1.5, 72), (-8.0, 127), (0.125, 0), (0.25, 2)],     # 0.5 -> 0 (even)
    "sigmoid": [(0.0, 16), (-8.0, 0), (7.9375, 32)],
}


@pytest.mark.parametrize("name", sorted(LUT_POINTS))
def test_lut_table_entries(name):
    table = ops.lut_table(name, QFormat(8, 4), QFormat(8, 5))
    assert table.shape == (256,) and table.dtype == np.int64
    for x, y in LUT_POINTS[name]:
        assert table[int(x * 16) + 128] == y, (name, x)
    # callables work as well as names
    np.testing.assert_array_equal(ops.lut_table(LUT_FUNCTIONS[name], QFormat(8, 4),
                                                QFormat(8, 5)), table)


def test_lut_ties_and_saturation():
    # identity from Q(8,4) into Q(4,3): q/16 * 8 = q/2, so every odd q is a tie
    table = ops.lut_table(lambda v: v, QFormat(8, 4), QFormat(4, 3))
    q = np.array([1, 3, 5, -1, -3, -5, 14, 15, 16, -16, -17, -18])
    np.testing.assert_array_equal(table[q + 128], [0, 2, 2, 0, -2, -2, 7, 7, 7, -8, -8, -8])
    x = q.reshape(1, 1, 3, 4)
    register_lut_function("test_ops_identity", lambda v: v)
    np.testing.assert_array_equal(
        ops.activation(x, function="lut", lut="test_ops_identity", in_format=QFormat(8, 4),
                       out_format=QFormat(4, 3)).reshape(-1),
        [0, 2, 2, 0, -2, -2, 7, 7, 7, -8, -8, -8])


def test_hard_sigmoid_values():
    # Q(8,4) in, Q(8,6) out: x/4 + 1/2 with x = -2 -> 0, 0 -> 0.5 (32), 1 -> 0.75 (48),
    # 2 -> 1.0 (64), 7.9375 -> clamp 1.0 (64), -8 -> 0; 0.0625 -> 0.515625 (33, exact)
    x = np.array([-32, 0, 16, 32, 127, -128, 1]).reshape(1, 1, 1, 7)
    got = ops.activation(x, function="hard_sigmoid", in_format=QFormat(8, 4),
                         out_format=QFormat(8, 6), rounding="floor")
    np.testing.assert_array_equal(got.reshape(-1), [0, 32, 48, 64, 64, 0, 33])


def test_activation_rejects_unknown_function():
    q = QFormat(8, 0)
    with pytest.raises(ValueError, match=r"Unknown activation function 'gelu'"):
        ops.activation(np.zeros((1, 1, 1, 1), dtype=np.int64), function="gelu", in_format=q,
                       out_format=q)


# --- add -----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", range(4), ids=lambda s: f"seed={s}")
def test_add_against_loops(seed, mode):
    rng = np.random.default_rng(5000 + seed)
    stats = Counter()
    for sub, (h, w) in enumerate(SHAPES):
        fa = rand_format(rng)
        fb = QFormat(int(rng.integers(2, 17)), fa.frac + int(rng.integers(-6, 7)))
        shape = (int(rng.integers(1, 3)), int(rng.integers(1, 4)), h, w)
        a, b = rand_tensor(rng, fa, shape), rand_tensor(rng, fb, shape)
        f_acc = max(fa.frac, fb.frac)
        typical = max(abs(a).max() << (f_acc - fa.frac), abs(b).max() << (f_acc - fb.frac))
        fout = out_format_for(rng, typical, f_acc)
        activation = FUSED[sub % 3]
        clip_max = float(fout.max * fout.lsb * rng.uniform(0.3, 1.5))
        key_seed, layer = int(rng.integers(1 << 32)), int(rng.integers(1 << 16))
        expected, events = ref_add(a, b, fa=fa, fb=fb, fout=fout, activation=activation,
                                   clip_max=clip_max, mode=mode, seed=key_seed, layer=layer,
                                   stats=stats)
        got, nsat = ops.add(a, b, a_format=fa, b_format=fb, out_format=fout,
                            activation=activation, clip_max=clip_max, rounding=mode,
                            seed=key_seed, layer=layer, count_saturations=True)
        msg = f"seed={seed} {shape} {fa} + {fb} -> {fout} act={activation}"
        np.testing.assert_array_equal(got, expected, err_msg=msg)
        assert nsat == events, msg
    check_coverage(stats, mode, f"seed={seed}")


# --- exactness of the matrix product ---------------------------------------------------------

@pytest.mark.parametrize("k, amax, bmax, float_breaks", [
    (2, 1 << 26, (1 << 26) - 1, False),   # k*amax*bmax = 2**53 - 2**27: float64 path
    (1, (1 << 53) - 1, 1, False),         # 2**53 - 1: float64 path, largest exact odd value
    (2, 1 << 26, 1 << 26, False),         # exactly 2**53: int64 path
    (1, (1 << 53) + 2, 1, True),          # 2**53 + 2: int64 path, sums 2**53 + 1
    (2, 1 << 26, (1 << 26) + 1, True),    # 2**53 + 2**27: int64 path
    (4, 1 << 30, (1 << 30) + 1, True),    # 2**62 + 2**32: far above, still inside int64
])
def test_matmul_exact_near_2_53(k, amax, bmax, float_breaks):
    # amax even, bmax odd: a row of amax with its last entry amax - 1 against a column of bmax
    # sums to k*amax*bmax - bmax, an odd number, which float64 cannot hold above 2**53.
    a = np.full((3, k), amax, dtype=np.int64)
    a[1, -1] = amax - 1
    a[2] = -a[1]
    b = np.full((k, 3), bmax, dtype=np.int64)
    b[0, 1] = -bmax                           # mixed signs
    b[:, 2] = np.arange(k) % 2 * 2 - 1        # +-1
    got = ops._matmul_exact(a, b)
    expected = [[sum(int(a[i, t]) * int(b[t, j]) for t in range(k)) for j in range(3)]
                for i in range(3)]
    msg = f"k={k} amax={amax} bmax={bmax}"
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, expected, err_msg=msg)
    # the data is chosen so that a float64 product would be wrong exactly in the cases beyond
    # the bound (this is what the int64 path is for)
    fl = (a.astype(np.float64) @ b.astype(np.float64)).astype(np.int64)
    assert np.array_equal(fl, expected) != float_breaks, msg


@pytest.mark.parametrize("k, amax, bmax, path", [
    (4, 1 << 11, (1 << 11) - 1, np.float32),   # 2**24 - 2**13: float32 path
    (4, 1 << 11, 1 << 11, np.float64),         # exactly 2**24: float64 path
    (4, 1 << 11, (1 << 11) + 1, np.float64),   # a float32 product would round the odd sum
])
def test_matmul_exact_near_2_24(k, amax, bmax, path):
    assert ops._exact_dtype(k, amax, bmax) is path
    a = np.full((2, k), amax, dtype=np.int64)
    a[1, -1] = amax - 1
    b = np.full((k, 2), bmax, dtype=np.int64)
    expected = [[sum(int(a[i, t]) * int(b[t, j]) for t in range(k)) for j in range(2)]
                for i in range(2)]
    np.testing.assert_array_equal(ops._matmul_exact(a, b), expected)
    # conv2d_acc takes the same path: a 1x1 convolution over k channels is this product
    x = a.reshape(2, k, 1, 1)
    w = b.T.reshape(2, k, 1, 1)
    np.testing.assert_array_equal(ops.conv2d_acc(x, w)[:, :, 0, 0], expected)
    f32 = (a.astype(np.float32) @ b.astype(np.float32)).astype(np.int64)
    assert np.array_equal(f32, expected) == (path is np.float32 or bmax % 2 == 0)


def test_conv2d_acc_exact_with_wide_values():
    # 16-bit operands, 7x7 kernel: sums beyond 2**31 but inside the float64 bound.
    rng = np.random.default_rng(7)
    x = rng.integers(-32768, 32768, size=(1, 3, 7, 7))
    w = rng.integers(-32768, 32768, size=(2, 3, 7, 7))
    got = ops.conv2d_acc(x, w)
    expected = [[sum(int(v) for v in (x[0] * w[o]).reshape(-1))] for o in range(2)]
    np.testing.assert_array_equal(got.reshape(2, 1), expected)
    assert max(abs(v[0]) for v in expected) > 1 << 31


# --- run() ------------------------------------------------------------------------------------

NET_ACTS = [("relu", {}), ("leaky_relu", {"slope_shift": 2}), ("hard_tanh", {}),
            ("hard_sigmoid", {}), ("clip", {"clip_max": 1.5}), ("lut", {"lut": "tanh"})]


def ref_network(net, x, modes, seed):
    """Chain the loop references; returns (tensors, saturations)."""
    tensors, sats = [x], []
    for j, layer in enumerate(net.layers):
        t, fin = tensors[-1], net.tensor_formats[j]
        mode = modes[j]
        if layer.kind == "conv2d":
            y, e = ref_conv2d(t, layer.weight, layer.bias, fin=fin, fw=layer.weight_format,
                              fb=layer.bias_format, fout=layer.out_format, stride=layer.stride,
                              padding=layer.padding, activation=layer.activation,
                              clip_max=layer.clip_max, mode=mode, seed=seed, layer=j)
        elif layer.kind == "maxpool2d":
            y, e = ref_maxpool(t, layer.kernel, layer.stride), 0
        elif layer.kind == "avgpool2d":
            y, e = ref_avgpool(t, layer.kernel, layer.stride, fin=fin, fout=layer.out_format,
                               mode=mode, seed=seed, layer=j)
        elif layer.kind == "activation":
            y, e = ref_activation(t, function=layer.function, fin=fin, fout=layer.out_format,
                                  mode=mode, clip_max=layer.clip_max,
                                  slope_shift=layer.slope_shift, lut=layer.lut, seed=seed,
                                  layer=j)
        else:
            y, e = ref_dense(t, layer.weight, layer.bias, fin=fin, fw=layer.weight_format,
                             fb=layer.bias_format, fout=layer.out_format,
                             activation=layer.activation, clip_max=layer.clip_max, mode=mode,
                             seed=seed, layer=j)
        tensors.append(y)
        sats.append(e)
    return tensors, sats


def _frac_cutting(rng, values, f_acc, width, min_shift):
    """An output frac for ``width`` bits that puts the top ~10% of ``values`` (a sample of
    accumulators at ``f_acc``) near or beyond the format's limit, with a right shift of at
    least ``min_shift`` bits."""
    top = int(np.quantile(np.abs(values), 0.9))
    s = max(top, 1).bit_length() - (width - 1) - int(rng.integers(0, 2))
    return f_acc - max(s, min_shift)


def make_network(rng, act_index):
    """conv -> maxpool -> avgpool -> activation -> dense with random formats, each layer's
    output format picked from its (floor-rounded) reference input so that outputs neither
    all saturate nor all vanish; returns (network, input batch)."""
    c, (h, w) = int(rng.integers(1, 3)), [(8, 8), (8, 12), (12, 8)][int(rng.integers(3))]
    fin = QFormat(int(rng.integers(5, 9)), int(rng.integers(0, 8)))
    x = rand_tensor(rng, fin, (3, c, h, w))
    modes = [MODES[int(rng.integers(3))] for _ in range(5)]
    no_key = dict(mode="floor", seed=0, layer=0)

    # conv: integers first; then the output format holds +-4 (real) and the weight's frac is
    # chosen so the accumulators' top ~10% reach that limit
    c1, k = int(rng.integers(2, 4)), int(rng.integers(2, 6))
    ww = int(rng.integers(4, 9))
    wt = rng.integers(-(1 << (ww - 1)), 1 << (ww - 1), size=(c1, c, k, k))
    bias = rng.integers(-(1 << (fin.width + ww - 4)), 1 << (fin.width + ww - 4), size=c1)
    t, l = (k - 1) // 2, (k - 1) // 2
    xp = np.pad(x, ((0, 0), (0, 0), (t, k - 1 - t), (l, k - 1 - l)))
    acc = sum(np.einsum("nchw,oc->nohw", xp[:, :, u:u + h, v:v + w], wt[:, :, u, v])
              for u in range(k) for v in range(k)) + (bias << 2)[None, :, None, None]
    width = int(rng.integers(5, 11))
    f_out = QFormat(width, width - 3)
    f_acc = f_out.frac + f_out.frac - _frac_cutting(rng, acc, f_out.frac, width, 2)
    fw = QFormat(ww, f_acc - fin.frac)
    fb = QFormat(14, f_acc - 2)
    fused, clip_max = FUSED[act_index % 3], 3.0
    conv = Conv2d(weight=wt, bias=bias, padding="same", activation=fused, clip_max=clip_max,
                  weight_format=fw, bias_format=fb, out_format=f_out, rounding=modes[0])
    t1, _ = ref_conv2d(x, wt, bias, fin=fin, fw=fw, fb=fb, fout=f_out, stride=1,
                       padding="same", activation=fused, clip_max=clip_max, **no_key)
    t2 = ref_maxpool(t1, 2)
    # avgpool: one more fractional bit than its input, so the top quarter of the range
    # saturates and the divide by 4 rounds off one bit
    avg_out = QFormat(width, f_out.frac + 1)
    avg = AvgPool2d(kernel=2, out_format=avg_out, rounding=modes[2])
    t3, _ = ref_avgpool(t2, 2, None, fin=f_out, fout=avg_out, **no_key)
    function, extra = NET_ACTS[act_index]
    if function in ("hard_tanh", "hard_sigmoid", "lut", "clip"):
        act_out = QFormat(width - 1, width - 3)              # range +-2, [-1, 1] fits
    else:
        act_out = QFormat(width - 2, avg_out.frac - 1)       # a quarter of the range, 1 bit off
    act = Activation(function=function, out_format=act_out, rounding=modes[3], **extra)
    t4, _ = ref_activation(t3, function=function, fin=avg_out, fout=act_out, **extra, **no_key)
    fw2 = QFormat(8, 6)
    w2t = rand_tensor(rng, fw2, (4, t4[0].size))
    f_acc2 = act_out.frac + fw2.frac
    acc2 = t4.reshape(3, -1) @ w2t.T
    d_out = QFormat(8, _frac_cutting(rng, acc2, f_acc2, 8, 1))
    dense = Dense(weight=w2t, weight_format=fw2, out_format=d_out, rounding=modes[4])
    net = QNetwork((c, h, w), fin, [conv, MaxPool2d(kernel=2), avg, act, dense],
                   seed=int(rng.integers(1 << 32)))
    return net, x


def layer_modes(net):
    return [getattr(l, "rounding", None) for l in net.layers]


@pytest.mark.parametrize("act_index", range(len(NET_ACTS)), ids=[a[0] for a in NET_ACTS])
@pytest.mark.parametrize("seed", range(2), ids=lambda s: f"seed={s}")
def test_run_against_chained_references(seed, act_index):
    rng = np.random.default_rng(6000 + 10 * seed + act_index)
    net, x = make_network(rng, act_index)
    res = run(net, x)
    assert isinstance(res, RunResult) and len(res.tensors) == 6
    expected, sats = ref_network(net, x, layer_modes(net), net.seed)
    for j, (got, exp) in enumerate(zip(res.tensors, expected)):
        np.testing.assert_array_equal(got, exp, err_msg=f"seed={seed}: tensor {j}")
    assert res.saturations == sats, f"seed={seed}"
    np.testing.assert_array_equal(res.logits, expected[-1].reshape(3, -1))
    np.testing.assert_array_equal(predict(net, x), expected[-1].reshape(3, -1).argmax(axis=1))
    # the network is not degenerate: its output varies and some layer saturated
    assert np.unique(res.output).size > 1 and sum(sats) > 0, f"seed={seed}: {sats}"
    # a single image is a batch of one
    one = run(net, x[1])
    np.testing.assert_array_equal(one.output, expected[-1][1:2])


@pytest.mark.parametrize("seed", range(3), ids=lambda s: f"seed={s}")
def test_run_rounding_and_seed_overrides(seed):
    rng = np.random.default_rng(7000 + seed)
    net, x = make_network(rng, seed % len(NET_ACTS))
    for mode in MODES:
        expected, sats = ref_network(net, x, [None if m is None else mode
                                              for m in layer_modes(net)], net.seed)
        res = run(net, x, rounding=mode)
        np.testing.assert_array_equal(res.output, expected[-1], err_msg=f"seed={seed} {mode}")
        assert res.saturations == sats
    per_layer = ["stochastic", None, "floor", "nearest_even", "stochastic"]
    expected, sats = ref_network(net, x, per_layer, net.seed)
    res = run(net, x, rounding=per_layer)
    for j in range(6):
        np.testing.assert_array_equal(res.tensors[j], expected[j], err_msg=f"seed={seed} {j}")
    assert res.saturations == sats
    # a seed override changes stochastic results, and floor ones not at all
    other = (net.seed + 1 + int(rng.integers(1000))) % (1 << 32)
    stoch = run(net, x, rounding="stochastic")
    stoch2 = run(net, x, rounding="stochastic", seed=other)
    expected2, _ = ref_network(net, x, [None if m is None else "stochastic"
                                        for m in layer_modes(net)], other)
    np.testing.assert_array_equal(stoch2.tensors[1], expected2[1], err_msg=f"seed={seed}")
    np.testing.assert_array_equal(stoch2.output, expected2[-1], err_msg=f"seed={seed}")
    assert not np.array_equal(stoch.tensors[1], stoch2.tensors[1]), f"seed={seed}"
    floor = run(net, x, rounding="floor")
    floor2 = run(net, x, rounding="floor", seed=other)
    for j in range(6):
        np.testing.assert_array_equal(floor.tensors[j], floor2.tensors[j])
    # the seed is the network's when not overridden
    same = run(net, x, rounding="stochastic", seed=net.seed)
    np.testing.assert_array_equal(same.output, stoch.output)


def test_run_input_validation():
    rng = np.random.default_rng(8000)
    net, x = make_network(rng, 0)
    c, h, w = net.input_shape
    fmt = net.input_format
    with pytest.raises(TypeError, match=r"Input must hold integers in Q\(\d+,\d+\), not "
                                        r"float64; use quantize_input\(\) for float images"):
        run(net, x.astype(np.float64))
    with pytest.raises(ValueError, match=rf"Input images have shape \({c}, {h}, {w + 1}\), "
                                         rf"the network expects \({c}, {h}, {w}\)"):
        run(net, np.zeros((1, c, h, w + 1), dtype=np.int64))
    with pytest.raises(ValueError, match=r"Input images have shape"):
        run(net, np.zeros((h, w), dtype=np.int64))
    bad = x.copy()
    bad[0, 0, 0, 0] = fmt.max + 1
    with pytest.raises(ValueError, match=rf"Input values -?\d+\.\.{fmt.max + 1} are outside "
                                         rf"the input format {re.escape(str(fmt))}"):
        run(net, bad)
    bad[0, 0, 0, 0] = fmt.min - 1
    with pytest.raises(ValueError, match=r"are outside the input format"):
        run(net, bad)
    with pytest.raises(TypeError, match=r"Network must be a QNetwork, not list"):
        run([], x)
    with pytest.raises(ValueError, match=r"Rounding override must have one mode per layer "
                                         r"\(5\), not 2"):
        run(net, x, rounding=["floor", "floor"])
    with pytest.raises(ValueError, match=r"Rounding mode must be one of floor, nearest_even, "
                                         r"stochastic, not 'up'"):
        run(net, x, rounding="up")
