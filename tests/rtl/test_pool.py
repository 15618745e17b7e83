# amaranth: UnusedElaboratable=no
"""The pooling unit (rtl/pool.py) against golden ``ops.maxpool2d``/``ops.avgpool2d``."""

import numpy as np
import pytest
from amaranth.hdl import Fragment
from amaranth.sim import Simulator
from hypothesis import event, given, settings
from hypothesis import strategies as st

from systolic.golden import ops, srgen
from systolic.golden.errors import ConstraintError
from systolic.golden.qformat import QFormat
from systolic.golden.rounding import ROUNDING_MODES, round_shift
from systolic.rtl.pool import Pool
from systolic.sim.streams import PATTERNS, stream_get, stream_put, stream_through

from sr_helpers import sr_keys, sr_seed_for

#: (C, H, W) maps: 1x1, 2x3, 4x4 and non-square ones with remainders to drop.
SHAPES = ((1, 1, 1), (1, 2, 3), (2, 4, 4), (2, 5, 7), (3, 7, 4), (1, 9, 8))
PATTERN_PAIRS = tuple(zip(PATTERNS, PATTERNS[2:] + PATTERNS[:2]))


def shape_id(shape):
    return "x".join(map(str, shape))


def cases(kernels):
    return [pytest.param(k, shape, id=f"k={k}-{shape_id(shape)}")
            for k in kernels for shape in SHAPES if min(shape[1:]) >= k]


def simulate(dut, config, values, count, *, idle="none", stall="none", seed=0, keys=0):
    """Stream ``values`` through ``dut``; return (values, saturated flags, input log, output
    log) of ``count`` outputs, checking the stream rules on both ports and that nothing more
    comes out."""
    async def setup(ctx):
        ctx.set(dut.config, config)
        if dut.stochastic:
            ctx.set(dut.sr_keys, keys)

    out, log_i, log_o = stream_through(dut, [{"value": int(v)} for v in values], count,
                                       idle=idle, stall=stall, seed=seed, setup=setup)
    return (np.array([p.value for p in out], dtype=np.int64),
            np.array([p.saturated for p in out], dtype=np.int64), log_i, log_o)


def check_stalls(idle, stall, log_i, log_o, why):
    if stall != "none":
        assert log_o.stalls > 0, why
    if idle != "none":
        assert log_i.idles > 0, why


@pytest.mark.parametrize("seed", [1, 2], ids=lambda s: f"seed={s}")
@pytest.mark.parametrize("kernel, shape", cases((1, 2, 3)))
def test_maxpool_matches_golden(kernel, shape, seed):
    rng = np.random.default_rng([seed, kernel, *shape])
    idle, stall = PATTERN_PAIRS[(seed + SHAPES.index(shape)) % len(PATTERN_PAIRS)]
    width = int(rng.integers(2, 17))
    fmt = QFormat(width, 0)
    out_size = shape[0] * (shape[1] // kernel) * (shape[2] // kernel)
    x = rng.integers(fmt.min, fmt.max + 1, (max(2, -(-40 // out_size)), *shape))
    expected = ops.maxpool2d(x, kernel=kernel)
    dut = Pool(op="max", in_width=width, max_kernel=3, max_height=9, max_width=9)
    config = dut.layer_config(kernel=kernel, height=shape[1], width=shape[2])
    got, saturated, log_i, log_o = simulate(dut, config, x.ravel(), expected.size, idle=idle,
                                            stall=stall, seed=seed)
    why = f"seed={seed} width={width}"
    np.testing.assert_array_equal(got.reshape(expected.shape), expected, err_msg=why)
    assert not saturated.any()
    check_stalls(idle, stall, log_i, log_o, why)


def window_sums(x, k):
    """Exact window sums (for coverage only: the check is against golden avgpool2d)."""
    n, c, h, w = x.shape
    ho, wo = h // k, w // k
    return x[:, :, :ho * k, :wo * k].reshape(n, c, ho, k, wo, k).sum(axis=(3, 5))


def set_window(x, j, k, total):
    """Make window ``j`` (flat over images, channels, rows, columns) of ``x`` sum to
    ``total``."""
    n, c, h, w = x.shape
    i, ch, oh, ow = np.unravel_index(j, (n, c, h // k, w // k))
    base = total // (k * k)
    x[i, ch, oh * k:(oh + 1) * k, ow * k:(ow + 1) * k] = base
    x[i, ch, oh * k, ow * k] += total - base * k * k


@pytest.mark.parametrize("rounding", ROUNDING_MODES)
@pytest.mark.parametrize("kernel, shape", cases((1, 2, 4)))
def test_avgpool_matches_golden(kernel, shape, rounding):
    seed = 10 * kernel + SHAPES.index(shape)
    rng = np.random.default_rng([seed, ROUNDING_MODES.index(rounding)])
    idle, stall = PATTERN_PAIRS[(seed + ROUNDING_MODES.index(rounding)) % len(PATTERN_PAIRS)]
    area_log2 = 2 * (kernel.bit_length() - 1)
    # Output: 1..3 fewer fractional bits than the exact sum (rounding happens) and fewer
    # integer bits than the input's (saturation happens).
    wi = int(rng.integers(6, 13))
    fi = int(rng.integers(-3, 10))
    shift = int(rng.integers(2 if rounding == "stochastic" else 1, 4))
    fo = fi + area_log2 - shift
    wo = int(rng.integers(2, wi - shift + area_log2))
    in_format, out_format = QFormat(wi, fi), QFormat(wo, fo)
    out_size = shape[0] * (shape[1] // kernel) * (shape[2] // kernel)
    n_images = max(2, -(-32 // out_size))
    x = rng.integers(in_format.min, in_format.max + 1, (n_images, *shape))
    # Directed windows: one that must saturate high and one low, then sums that round down,
    # round up, and tie to an odd and to an even quotient.
    half = 1 << (shift - 1)
    targets = [in_format.max * kernel**2, in_format.min * kernel**2,
               (2 << shift) + 1, (2 << shift) + half + 1, (1 << shift) + half,
               (2 << shift) + half]
    for j, total in enumerate(targets):
        set_window(x, j, kernel, total)
    layer = int(rng.integers(0, 2**16))
    sr_seed = sr_seed_for(rng, layer, np.arange(out_size), shift) \
        if rounding == "stochastic" else 0
    params = dict(kernel=kernel, in_format=in_format, out_format=out_format,
                  rounding=rounding)
    expected, events = ops.avgpool2d(x, **params, seed=sr_seed, layer=layer,
                                     count_saturations=True)
    dut = Pool(op="avg", in_width=wi, out_width=wo, max_kernel=4, max_height=9, max_width=9,
               stochastic=rounding == "stochastic")
    config = dut.layer_config(height=shape[1], width=shape[2], channels=shape[0], **params)
    got, saturated, log_i, log_o = simulate(dut, config, x.ravel(), expected.size, idle=idle,
                                            stall=stall, seed=seed,
                                            keys=sr_keys(sr_seed, layer))
    why = f"seed={seed} {in_format}->{out_format}"
    np.testing.assert_array_equal(got.reshape(expected.shape), expected, err_msg=why)
    assert saturated.sum() == events > 0, why
    check_stalls(idle, stall, log_i, log_o, why)

    # Coverage: every rounding direction of the mode.
    a = window_sums(x, kernel)
    s = fi + area_log2 - fo
    floor = a >> s
    rem = a - (floor << s)
    r = srgen.rounding_offsets(sr_seed, layer, ops.flat_index(a.shape[1:]), s) \
        if rounding == "stochastic" else None
    rounded = round_shift(a, s, rounding, r=r)
    assert np.any(rem != 0), why
    if rounding != "floor":
        assert np.any(rounded > floor) and np.any((rem != 0) & (rounded == floor)), why
    if rounding == "nearest_even":
        tie = rem == 1 << (s - 1)
        assert np.any(tie & (rounded > floor)) and np.any(tie & (rounded == floor)), why


@pytest.mark.parametrize("shift", [-20, -2, 0], ids=lambda s: f"shift={s}")
def test_avgpool_exact_and_left_shifts(shift):
    seed = 3
    rng = np.random.default_rng([seed, -shift])
    in_format, out_format = QFormat(8, 2), QFormat(10, 4 - shift)
    x = rng.integers(in_format.min, in_format.max + 1, (1, 2, 4, 6))
    params = dict(kernel=2, in_format=in_format, out_format=out_format, rounding="floor")
    expected, events = ops.avgpool2d(x, **params, count_saturations=True)
    dut = Pool(op="avg", in_width=8, out_width=10, max_kernel=2, max_height=4, max_width=6,
               stochastic=False)
    got, saturated, _, _ = simulate(dut, dut.layer_config(height=4, width=6, channels=2,
                                                          **params), x.ravel(), expected.size,
                                    seed=seed)
    np.testing.assert_array_equal(got.reshape(expected.shape), expected, err_msg=f"seed={seed}")
    assert saturated.sum() == events


@pytest.mark.parametrize("stall", PATTERNS)
@pytest.mark.parametrize("idle", PATTERNS)
@pytest.mark.parametrize("op", ["max", "avg"])
def test_every_pattern_pair(op, idle, stall):
    seed = 23
    rng = np.random.default_rng(seed)
    fi, fo = QFormat(8, 3), QFormat(8, 4)
    # odd sizes, so the output phase drifts against periodic patterns and meets their stalls
    c, h, w = 2, 11, 9
    x = rng.integers(fi.min, fi.max + 1, (2, c, h, w))
    dut = Pool(op=op, in_width=8, max_kernel=2, max_height=h, max_width=w, stochastic=False)
    if op == "max":
        expected = ops.maxpool2d(x, kernel=2)
        config = dut.layer_config(kernel=2, height=h, width=w)
    else:
        params = dict(kernel=2, in_format=fi, out_format=fo, rounding="nearest_even")
        expected = ops.avgpool2d(x, **params)
        config = dut.layer_config(height=h, width=w, channels=c, **params)
    got, _, log_i, log_o = simulate(dut, config, x.ravel(), expected.size, idle=idle,
                                    stall=stall, seed=seed)
    np.testing.assert_array_equal(got.reshape(expected.shape), expected,
                                  err_msg=f"seed={seed}")
    check_stalls(idle, stall, log_i, log_o, f"seed={seed}")


def test_runtime_reconfiguration():
    """One unit, three layers of different kernels and maps, configured at run time between
    images."""
    seed = 31
    rng = np.random.default_rng(seed)
    fi, fo = QFormat(8, 3), QFormat(8, 2)
    dut = Pool(op="avg", in_width=8, max_kernel=4, max_height=8, max_width=8,
               stochastic=False)
    layers = [(2, (2, 8, 6)), (4, (1, 8, 8)), (1, (3, 2, 3))]
    xs = [rng.integers(fi.min, fi.max + 1, (1, *shape)) for _, shape in layers]
    expected = [ops.avgpool2d(x, kernel=k, in_format=fi, out_format=fo, rounding="floor")
                for (k, _), x in zip(layers, xs)]
    outs, drained = [], []

    async def source(ctx):
        for j, ((k, (c, h, w)), x) in enumerate(zip(layers, xs)):
            ctx.set(dut.config, dut.layer_config(kernel=k, height=h, width=w, channels=c,
                                                 in_format=fi, out_format=fo,
                                                 rounding="floor"))
            await stream_put(ctx, dut.i, [{"value": int(v)} for v in x.ravel()], idle="p0.1")
            while len(drained) <= j:
                await ctx.tick()

    async def sink(ctx):
        for e in expected:
            got = await stream_get(ctx, dut.o, e.size, stall="p0.5", seed=seed)
            outs.append(np.array([p.value for p in got]).reshape(e.shape))
            drained.append(True)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run()
    for got, e in zip(outs, expected):
        np.testing.assert_array_equal(got, e, err_msg=f"seed={seed}")


@pytest.mark.parametrize("op, stochastic", [("max", False), ("avg", False), ("avg", True)],
                         ids=["max", "avg", "avg-stoch"])
def test_latency_and_throughput(op, stochastic):
    """One value per cycle with no bubbles; each window's result ``latency`` cycles after
    its last value."""
    k, h, w = 2, 4, 6
    fmt = QFormat(8, 0)
    dut = Pool(op=op, in_width=8, max_kernel=2, max_height=h, max_width=w,
               stochastic=stochastic)
    config = dut.layer_config(kernel=k, height=h, width=w) if op == "max" else \
        dut.layer_config(kernel=k, height=h, width=w, in_format=fmt, out_format=fmt)
    assert dut.latency == (1 if op == "max" else
                           4 + (-(-srgen.ROUNDS // 3) if stochastic else 1))
    # the cycle of each window's last value: (2*oh + 1, 2*ow + 1) in raster order
    last = [(k * oh + k - 1) * w + k * ow + k - 1 for oh in range(h // k) for ow in range(w // k)]
    seen = []

    async def bench(ctx):
        ctx.set(dut.config, config)
        ctx.set(dut.o.ready, 1)
        for t in range(h * w + dut.latency + 2):
            ctx.set(dut.i.payload, {"value": t % 50})
            ctx.set(dut.i.valid, int(t < h * w))
            _, _, valid, ready = await ctx.tick().sample(dut.o.valid, dut.i.ready)
            assert ready
            if valid:
                seen.append(t)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert seen == [t + dut.latency for t in last]


# --- parameters -------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, message", [
    (dict(op="min"), ValueError, r"Pool op must be one of max, avg, not 'min'"),
    (dict(in_width=None), TypeError, r"Pool input width must be a positive integer, not None"),
    (dict(in_width=17), ValueError, r"Pool input width must be between 2 and 16, not 17"),
    (dict(out_width=1), ValueError, r"Pool output width must be between 2 and 16, not 1"),
    (dict(op="max", out_width=6), ValueError, r"Max pool output width must equal its input "
                                              r"width 8, not 6"),
    (dict(max_kernel=0), TypeError, r"Pool kernel must be a positive integer, not 0"),
    (dict(max_kernel=2.0), TypeError, r"Pool kernel must be a positive integer, not 2.0"),
    (dict(max_height=-1), TypeError, r"Pool map height must be a positive integer, not -1"),
    (dict(max_width="4"), TypeError, r"Pool map width must be a positive integer, not '4'"),
    (dict(max_kernel=5, max_height=4), ValueError, r"Pool kernel 5 does not fit the largest "
                                                   r"map 4x32"),
    (dict(stochastic="yes"), TypeError, r"Pool stochastic must be a bool, not 'yes'"),
])
def test_parameter_rules(kwargs, error, message):
    with pytest.raises(error, match=message):
        Pool(**{"op": "avg", "in_width": 8, **kwargs})


def test_parameters_are_read_only_properties():
    dut = Pool(op="avg", in_width=6, out_width=9, max_kernel=4, max_height=10, max_width=12,
               stochastic=False)
    assert (dut.op, dut.in_width, dut.out_width, dut.max_kernel, dut.max_height,
            dut.max_width, dut.stochastic, dut.acc_width) == (
        "avg", 6, 9, 4, 10, 12, False, 10)
    assert Pool(op="max", in_width=5).out_width == 5
    with pytest.raises(AttributeError):
        dut.op = "max"


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(kernel=0), TypeError, r"Pool kernel must be a positive integer, not 0"),
    (dict(height=0), TypeError, r"Pool map height must be a positive integer, not 0"),
    (dict(width=None), TypeError, r"Pool map width must be a positive integer, not None"),
    (dict(channels=-2), TypeError, r"Pool channels must be a positive integer, not -2"),
    (dict(kernel=8), ConstraintError, r"Pool kernel 8 exceeds the unit's maximum 4"),
    (dict(height=17), ConstraintError, r"A 17x8 map exceeds the unit's maximum 16x16"),
    (dict(kernel=4, height=3), ValueError, r"A 4x4 window does not fit the 3x8 map"),
    (dict(kernel=3), ValueError, r"Average-pool window area must be a power of two, not 9"),
    (dict(in_format=None), TypeError, r"Input format must be a QFormat, not None"),
    (dict(out_format="Q8.4"), TypeError, r"Output format must be a QFormat, not 'Q8.4'"),
    (dict(rounding="ceil"), ValueError, r"Rounding mode must be one of floor, nearest_even, "
                                        r"stochastic, not 'ceil'"),
    (dict(in_format=QFormat(9, 0)), ConstraintError, r"Input format Q\(9,0\) is wider than "
                                                     r"the unit's 8-bit input"),
    (dict(out_format=QFormat(9, 0)), ConstraintError, r"Output format Q\(9,0\) is wider "
                                                      r"than the unit's 8-bit output"),
    (dict(out_format=QFormat(8, -20)), ConstraintError, r"Requantization shift 22 exceeds the "
                                                        r"unit's maximum shift 13"),
])
def test_layer_config_rules(kwargs, error, message):
    dut = Pool(op="avg", in_width=8, max_kernel=4, max_height=16, max_width=16,
               stochastic=False)
    params = dict(kernel=2, height=8, width=8, channels=1, in_format=QFormat(8, 0),
                  out_format=QFormat(8, 0))
    with pytest.raises(error, match=message):
        dut.layer_config(**{**params, **kwargs})


def test_max_layer_config_takes_any_kernel():
    dut = Pool(op="max", in_width=8, max_kernel=3, max_height=9, max_width=9)
    assert dut.layer_config(kernel=3, height=7, width=9) == {
        "kernel": 3, "height": 7, "width": 9}


_BAD = st.one_of(st.integers(-3, 40), st.sampled_from([None, True, 2.0, "8", "max"]))


@st.composite
def param(draw, valid):
    """Nine draws in ten valid, otherwise anything."""
    return draw(_BAD) if draw(st.integers(0, 9)) == 0 else draw(valid)


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({
    "op": param(st.sampled_from(["max", "avg"])),
    "in_width": param(st.integers(2, 16)),
    "out_width": param(st.one_of(st.none(), st.integers(2, 16))),
    "max_kernel": param(st.integers(1, 8)),
    "max_height": param(st.integers(1, 20)),
    "max_width": param(st.integers(1, 20)),
    "stochastic": param(st.booleans()),
}))
def test_constructor_fuzz(kwargs):
    """Any parameters either build a unit that elaborates, or raise TypeError/ValueError."""
    try:
        dut = Pool(**kwargs)
    except (TypeError, ValueError) as exc:
        event(type(exc).__name__)
        return
    event("built")
    Fragment.get(dut, None)
