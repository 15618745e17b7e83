# amaranth: UnusedElaboratable=no
"""The activation unit (rtl/activation.py) against golden ``ops.activation``, bit for bit."""

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
from systolic.rtl.activation import Activation, lut_image
from systolic.sim.streams import PATTERNS, stream_get, stream_put, stream_through

from sr_helpers import sr_keys, sr_seed_for

COMPUTED = ("relu", "clip", "leaky_relu", "hard_sigmoid", "hard_tanh")
SHAPES = ((1, 1, 1), (1, 2, 3), (2, 4, 4), (3, 2, 5))
#: (idle, stall) pairs: every pattern on each end, spread over the parametrized tests.
PATTERN_PAIRS = tuple(zip(PATTERNS, PATTERNS[2:] + PATTERNS[:2]))


def simulate(dut, config, values, *, idle="none", stall="none", seed=0, keys=0, actions=None):
    """Stream ``values`` through ``dut`` under ``config``; return (values, saturated flags,
    input log, output log).  Checks the stream rules on both ports and that nothing more
    comes out after the expected outputs."""
    async def setup(ctx):
        ctx.set(dut.config, config)
        if dut.stochastic:
            ctx.set(dut.sr_keys, keys)
        if actions is not None:
            await actions(ctx)

    out, log_i, log_o = stream_through(dut, [{"value": int(v)} for v in values], len(values),
                                       idle=idle, stall=stall, seed=seed, setup=setup)
    return (np.array([p.value for p in out], dtype=np.int64),
            np.array([p.saturated for p in out], dtype=np.int64), log_i, log_o)


def exact_value(x, function, f_in, slope_shift):
    """The value before rounding and its fractional bits (for coverage only: the check is
    against golden ``ops.activation``)."""
    if function == "leaky_relu":
        return np.where(x >= 0, x << slope_shift, x), f_in + slope_shift
    if function == "hard_sigmoid":
        e = max(0, -1 - f_in)
        return (x << e) + (1 << (f_in + 1 + e)), f_in + 2 + e
    return x, f_in


def directed_inputs(in_format, function, slope, shift):
    """Inputs whose exact values round down, up, and tie to an even and to an odd quotient
    (coverage: every rounding direction and both tie cases)."""
    q = np.arange(in_format.min, in_format.max + 1, dtype=np.int64)
    a, _ = exact_value(q, function, in_format.frac, slope or 0)
    rem = a & ((1 << shift) - 1)
    half = 1 << (shift - 1)
    odd = ((a >> shift) & 1) == 1
    picks = [(rem > 0) & (rem < half), rem > half, (rem == half) & odd, (rem == half) & ~odd]
    return [int(q[np.flatnonzero(p)[len(p) // 3 % max(1, np.count_nonzero(p))]])
            if p.any() else 0 for p in picks]


def random_case(rng, function, shift):
    """Formats whose input range exceeds +-2 (every clamp reachable), an output with
    ``shift`` fewer fractional bits than the exact value and fewer integer bits than the
    input (saturation reachable), and values that include the input format's extremes."""
    wi = int(rng.integers(6, 13))
    fi = int(rng.integers(-2, wi - 2))
    slope = int(rng.integers(1, 5)) if function == "leaky_relu" else None
    _, f_acc = exact_value(np.zeros(1, dtype=np.int64), function, fi, slope or 0)
    fo = f_acc - shift
    wo = int(rng.integers(2, max(3, wi - max(shift, 0))))
    in_format, out_format = QFormat(wi, fi), QFormat(wo, fo)
    clip_max = float(rng.uniform(0.2, 0.9) * 2.0 ** (wi - 1 - fi)) if function == "clip" \
        else None
    return in_format, out_format, slope, clip_max


def unit_for(in_format, out_format, **kwargs):
    return Activation(in_width=in_format.width, out_width=out_format.width, **kwargs)


@pytest.mark.parametrize("seed", [1, 2, 3], ids=lambda s: f"seed={s}")
@pytest.mark.parametrize("rounding", ROUNDING_MODES)
@pytest.mark.parametrize("function", COMPUTED)
def test_computed_functions_match_golden(function, rounding, seed):
    rng = np.random.default_rng([seed, COMPUTED.index(function),
                                 ROUNDING_MODES.index(rounding)])
    shape = SHAPES[(seed + COMPUTED.index(function)) % len(SHAPES)]
    idle, stall = PATTERN_PAIRS[(seed + COMPUTED.index(function)) % len(PATTERN_PAIRS)]
    shift = seed + (rounding == "stochastic")       # 1..4: rounding happens
    in_format, out_format, slope, clip_max = random_case(rng, function, shift)
    n_images = -(-96 // int(np.prod(shape)))        # enough elements for coverage
    x = rng.integers(in_format.min, in_format.max + 1, (n_images, *shape))
    x.flat[:4] = [in_format.min, in_format.max, in_format.min + 1, in_format.max - 1]
    x.flat[4:8] = directed_inputs(in_format, function, slope, shift)
    layer = int(rng.integers(0, 2**16))
    sr_seed = sr_seed_for(rng, layer, np.arange(np.prod(shape)), shift) \
        if rounding == "stochastic" else 0
    params = dict(function=function, in_format=in_format, out_format=out_format,
                  rounding=rounding, clip_max=clip_max, slope_shift=slope)
    expected, events = ops.activation(x, **params, seed=sr_seed, layer=layer,
                                      count_saturations=True)

    dut = unit_for(in_format, out_format, stochastic=rounding == "stochastic")
    config = dut.layer_config(**params, size=int(np.prod(shape)))
    got, saturated, log_i, log_o = simulate(dut, config, x.ravel(), idle=idle, stall=stall,
                                            seed=seed, keys=sr_keys(sr_seed, layer))
    why = f"seed={seed} {in_format}->{out_format} slope={slope} clip={clip_max}"
    np.testing.assert_array_equal(got.reshape(x.shape), expected, err_msg=why)
    assert saturated.sum() == events, why
    assert log_o.transfers == x.size

    # Coverage: stalls on the ends that have them, a clamp (or saturation) hit, and every
    # rounding direction of the mode.
    if stall != "none":
        assert log_o.stalls > 0, why
    if idle != "none":
        assert log_i.idles > 0, why
    config_rq = config["requant"]
    assert np.any((got == config_rq["lo"]) | (got == config_rq["hi"])), why
    if function in ("relu", "leaky_relu"):
        assert events > 0, why                     # the format's own limit was hit
    a, f_acc = exact_value(x, function, in_format.frac, slope or 0)
    s = f_acc - out_format.frac
    floor = a >> s
    inexact = (a - (floor << s)) != 0
    rounded = round_shift(a, s, rounding, r=srgen.rounding_offsets(
        sr_seed, layer, ops.flat_index(shape), s) if rounding == "stochastic" else None)
    assert np.any(inexact), why
    if rounding != "floor":
        assert np.any(rounded > floor) and np.any(inexact & (rounded == floor)), why
    if rounding == "nearest_even":
        tie = (a - (floor << s)) == 1 << (s - 1)
        assert np.any(tie & (rounded > floor)) and np.any(tie & (rounded == floor)), why


@pytest.mark.parametrize("shift", [-20, -3, 0], ids=lambda s: f"shift={s}")
@pytest.mark.parametrize("function", COMPUTED)
def test_exact_and_left_shifts(function, shift):
    """``s <= 0``: no rounding, an exact left shift (beyond the lane's limit it is clamped,
    which changes no result)."""
    seed = 7
    rng = np.random.default_rng([seed, COMPUTED.index(function), -shift])
    in_format, out_format, slope, clip_max = random_case(rng, function, shift)
    x = rng.integers(in_format.min, in_format.max + 1, 40)
    x[:3] = [0, 1, -1]
    params = dict(function=function, in_format=in_format, out_format=out_format,
                  rounding="floor", clip_max=clip_max, slope_shift=slope)
    dut = unit_for(in_format, out_format, stochastic=False)
    got, saturated, _, _ = simulate(dut, dut.layer_config(**params), x, seed=seed)
    expected, events = ops.activation(x, **params, count_saturations=True)
    np.testing.assert_array_equal(got, expected, err_msg=f"seed={seed} {params}")
    assert saturated.sum() == events


LUT_CASES = [("sigmoid", QFormat(8, 5), QFormat(8, 7)), ("tanh", QFormat(6, 3), QFormat(8, 7)),
             ("gelu_tanh", QFormat(4, 1), QFormat(6, 3)), ("silu", QFormat(10, 6), QFormat(9, 4)),
             ("softplus", QFormat(7, 3), QFormat(5, 2)), ("exp", QFormat(5, 2), QFormat(8, 3)),
             ("square", QFormat(2, 0), QFormat(4, 0))]


@pytest.mark.parametrize("function, in_format, out_format", LUT_CASES,
                         ids=[f"{f}-{i}-{o}" for f, i, o in LUT_CASES])
def test_lut_matches_golden_on_every_input(function, in_format, out_format):
    """Every input integer of the format, in random order, through a 10-bit table built by
    golden ``lut_table``; the unit's input is 10 bits wide, or (odd cases) exactly the
    format's width, narrower than the table."""
    seed = LUT_CASES.index((function, in_format, out_format))
    idle, stall = PATTERN_PAIRS[seed % len(PATTERN_PAIRS)]
    x = np.random.default_rng(seed).permutation(
        np.arange(in_format.min, in_format.max + 1, dtype=np.int64))
    table = ops.lut_table(function, in_format, out_format)
    dut = Activation(in_width=in_format.width if seed % 2 else 10, out_width=out_format.width,
                     lut_width=10, lut_init=lut_image(table, in_format, 10), stochastic=False)
    params = dict(function="lut", in_format=in_format, out_format=out_format)
    got, saturated, _, log_o = simulate(dut, dut.layer_config(**params), x, idle=idle,
                                        stall=stall, seed=seed)
    np.testing.assert_array_equal(got, ops.activation(x, lut=function, **params),
                                  err_msg=f"seed={seed}")
    assert not saturated.any()
    if stall != "none":
        assert log_o.stalls > 0


def test_lut_write_port_and_runtime_function_switch():
    """One unit, three layers: a table loaded through ``lut_w``, then relu, then leaky relu,
    reconfigured at run time between images (while the unit is empty)."""
    seed = 5
    rng = np.random.default_rng(seed)
    fi, fo = QFormat(8, 4), QFormat(8, 6)
    dut = Activation(in_width=8, out_width=8, lut_width=8, stochastic=False)
    image = lut_image(ops.lut_table("tanh", fi, fo), fi, dut.lut_width)
    layers = [dict(function="lut", lut="tanh"), dict(function="relu"),
              dict(function="leaky_relu", slope_shift=3)]
    xs = [rng.integers(fi.min, fi.max + 1, 50) for _ in layers]
    outs, drained = [], []

    async def source(ctx):
        await stream_put(ctx, dut.lut_w, [{"addr": a, "value": v} for a, v in enumerate(image)],
                         idle="p0.5", seed=seed)
        for j, (layer, x) in enumerate(zip(layers, xs)):
            params = {k: v for k, v in layer.items() if k != "lut"}
            ctx.set(dut.config, dut.layer_config(in_format=fi, out_format=fo,
                                                 rounding="nearest_even", **params))
            await stream_put(ctx, dut.i, [{"value": int(v)} for v in x], idle="1110")
            while len(drained) <= j:           # the unit is empty before the next layer
                await ctx.tick()

    async def sink(ctx):
        for x in xs:
            got = await stream_get(ctx, dut.o, len(x), stall="p0.5", seed=seed)
            outs.append(np.array([p.value for p in got]))
            drained.append(True)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run()
    for layer, x, got in zip(layers, xs, outs):
        np.testing.assert_array_equal(
            got, ops.activation(x, in_format=fi, out_format=fo, rounding="nearest_even",
                                **layer), err_msg=f"seed={seed} {layer}")


@pytest.mark.parametrize("stall", PATTERNS)
@pytest.mark.parametrize("idle", PATTERNS)
def test_every_pattern_pair(idle, stall):
    seed = 17
    rng = np.random.default_rng(seed)
    fi, fo = QFormat(8, 4), QFormat(6, 2)
    x = rng.integers(fi.min, fi.max + 1, 60)
    dut = Activation(in_width=8, out_width=6, stochastic=False)
    params = dict(function="leaky_relu", slope_shift=2, in_format=fi, out_format=fo,
                  rounding="nearest_even")
    got, _, log_i, log_o = simulate(dut, dut.layer_config(**params), x, idle=idle,
                                    stall=stall, seed=seed)
    np.testing.assert_array_equal(got, ops.activation(x, **params), err_msg=f"seed={seed}")
    if stall != "none":
        assert log_o.stalls > 0
    if idle != "none":
        assert log_i.idles > 0


@pytest.mark.parametrize("stochastic", [False, True], ids=["det", "stoch"])
@pytest.mark.parametrize("function", ["relu", "lut"])
def test_latency_and_throughput(function, stochastic):
    """Latency as documented; one element per cycle with no bubbles."""
    fi = QFormat(8, 3)
    dut = Activation(in_width=8, out_width=8, lut_width=8 if function == "lut" else 0,
                     stochastic=stochastic)
    config = dut.layer_config(function=function, in_format=fi, out_format=fi)
    latency = 1 if function == "lut" else dut.latency
    assert dut.latency == (3 + -(-srgen.ROUNDS // 3) if stochastic else 4)
    n = 20
    cycles = {}

    async def bench(ctx):
        ctx.set(dut.config, config)
        ctx.set(dut.o.ready, 1)
        ctx.set(dut.i.valid, 1)
        for t in range(n + latency + 2):
            ctx.set(dut.i.payload, {"value": t % 100})
            ctx.set(dut.i.valid, int(t < n))
            _, _, valid, ready = await ctx.tick().sample(dut.o.valid, dut.i.ready)
            assert ready or t >= n
            if valid:
                cycles.setdefault("first", t)
                cycles["last"] = t
                cycles["count"] = cycles.get("count", 0) + 1

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    # o.valid sampled at the edge ending cycle t means valid during cycle t
    assert cycles == {"first": latency, "last": latency + n - 1, "count": n}


# --- parameters -------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, message", [
    (dict(in_width="8"), TypeError, r"Activation input width must be a positive integer, "
                                    r"not '8'"),
    (dict(in_width=1), ValueError, r"Activation input width must be between 2 and 16, not 1"),
    (dict(in_width=17), ValueError, r"Activation input width must be between 2 and 16, "
                                    r"not 17"),
    (dict(out_width=True), TypeError, r"Activation output width must be a positive integer, "
                                      r"not True"),
    (dict(out_width=0), TypeError, r"Activation output width must be a positive integer, "
                                   r"not 0"),
    (dict(out_width=20), ValueError, r"Activation output width must be between 2 and 16, "
                                     r"not 20"),
    (dict(max_pre_shift=-1), TypeError, r"Activation pre-shift must be a non-negative "
                                        r"integer, not -1"),
    (dict(max_pre_shift=16), ValueError, r"Activation pre-shift must be between 0 and 15, "
                                         r"not 16"),
    (dict(lut_width=1.0), TypeError, r"Activation table width must be a non-negative "
                                     r"integer, not 1.0"),
    (dict(lut_width=11), ValueError, r"Activation table width must be between 0 and 10, "
                                     r"not 11"),
    (dict(stochastic=1), TypeError, r"Activation stochastic must be a bool, not 1"),
    (dict(lut_init=[0, 1]), ValueError, r"Activation table contents need a table width of "
                                        r"at least 1"),
    (dict(lut_width=2, lut_init=[0, 1]), ValueError, r"Activation table must have 4 "
                                                     r"entries, not 2"),
    (dict(lut_width=1, lut_init=[0, 128]), ValueError, r"Activation table entries must be "
                                                       r"integers in -128..127, not 128"),
])
def test_parameter_rules(kwargs, error, message):
    with pytest.raises(error, match=message):
        Activation(**{"in_width": 8, "out_width": 8, **kwargs})


def test_parameters_are_read_only_properties():
    dut = Activation(in_width=6, out_width=5, max_pre_shift=4, lut_width=2,
                     lut_init=[1, 2, 3, 4], stochastic=False)
    assert (dut.in_width, dut.out_width, dut.max_pre_shift, dut.lut_width, dut.stochastic,
            dut.lut_init, dut.acc_width) == (6, 5, 4, 2, False, (1, 2, 3, 4), 10)
    with pytest.raises(AttributeError):
        dut.in_width = 7


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(function="gelu"), ValueError, r"Activation function must be one of relu, clip, "
                                        r"leaky_relu, hard_sigmoid, hard_tanh, lut, not 'gelu'"),
    (dict(rounding="up"), ValueError, r"Rounding mode must be one of"),
    (dict(in_format=(8, 4)), TypeError, r"Input format must be a QFormat, not \(8, 4\)"),
    (dict(in_format=QFormat(12, 4)), ConstraintError, r"Input format Q\(12,4\) is wider "
                                                      r"than the unit's 8-bit input"),
    (dict(out_format=QFormat(9, 4)), ConstraintError, r"Output format Q\(9,4\) is wider "
                                                      r"than the unit's 8-bit output"),
    (dict(size=0), TypeError, r"Activation size must be a positive integer, not 0"),
    (dict(function="leaky_relu"), TypeError, r"Leaky ReLU slope shift must be a positive "
                                             r"integer, not None"),
    (dict(function="leaky_relu", slope_shift=9), ConstraintError, r"leaky_relu on Q\(8,4\) "
                                                                  r"needs a pre-shift of 9; "
                                                                  r"this unit allows 8"),
    (dict(function="hard_sigmoid", in_format=QFormat(8, -12)), ConstraintError,
     r"needs a pre-shift of 11; this unit allows 8"),
    (dict(function="hard_sigmoid", in_format=QFormat(8, 14)), ConstraintError,
     r"hard_sigmoid on Q\(8,14\) needs a 17-bit constant; this unit's values have 16 bits"),
    (dict(out_format=QFormat(8, -30)), ConstraintError, r"Requantization shift 34 exceeds "
                                                        r"the unit's maximum shift 17"),
    (dict(function="lut"), ConstraintError, r"A lookup table for Q\(8,4\) needs 8 address "
                                            r"bits; this unit has 0"),
])
def test_layer_config_rules(kwargs, error, message):
    dut = Activation(in_width=8, out_width=8, max_pre_shift=8, stochastic=False)
    params = dict(function="relu", in_format=QFormat(8, 4), out_format=QFormat(8, 4))
    with pytest.raises(error, match=message):
        dut.layer_config(**{**params, **kwargs})


def test_lut_image_rules():
    with pytest.raises(ValueError, match=r"A Q\(5,2\) input needs a table of 5 address bits, "
                                         r"not 4"):
        lut_image(np.zeros(32), QFormat(5, 2), 4)
    with pytest.raises(ValueError, match=r"Table for Q\(3,2\) must have 8 entries, not "
                                         r"shape \(7,\)"):
        lut_image(np.zeros(7), QFormat(3, 2), 4)
    with pytest.raises(TypeError, match=r"Input format must be a QFormat, not 3"):
        lut_image(np.zeros(8), 3, 4)
    # two's-complement addressing: q = -1 sits at the top address
    image = lut_image(np.arange(8), QFormat(3, 0), 4)
    assert image[:4] == [4, 5, 6, 7] and image[4:12] == [0] * 8 and image[12:] == [0, 1, 2, 3]


_BAD = st.one_of(st.integers(-3, 40), st.sampled_from([None, True, 2.0, "8"]))


@st.composite
def param(draw, valid):
    """Nine draws in ten valid, otherwise anything."""
    return draw(_BAD) if draw(st.integers(0, 9)) == 0 else draw(valid)


@st.composite
def activation_kwargs(draw):
    kwargs = dict(in_width=draw(param(st.integers(2, 16))),
                  out_width=draw(param(st.integers(2, 16))),
                  max_pre_shift=draw(param(st.integers(0, 15))),
                  lut_width=draw(param(st.integers(0, 6))),
                  stochastic=draw(param(st.booleans())))
    choice = draw(st.integers(0, 3))
    if choice == 0:
        kwargs["lut_init"] = draw(st.lists(st.integers(-40, 40), max_size=8))
    elif choice == 1 and isinstance(kwargs["lut_width"], int):
        kwargs["lut_init"] = draw(st.lists(st.integers(-2, 1), min_size=1 << min(
            max(kwargs["lut_width"], 0), 6), max_size=1 << min(max(kwargs["lut_width"], 0), 6)))
    return kwargs


@settings(max_examples=200, deadline=None)
@given(activation_kwargs())
def test_constructor_fuzz(kwargs):
    """Any parameters either build a unit that elaborates, or raise TypeError/ValueError."""
    try:
        dut = Activation(**kwargs)
    except (TypeError, ValueError) as exc:
        event(type(exc).__name__)
        return
    event("built")
    Fragment.get(dut, None)
