# amaranth: UnusedElaboratable=no
"""Requantization lanes (rtl/requant.py) against golden requantize, under stalls."""

import numpy as np
import pytest
from amaranth.hdl import Fragment
from amaranth.sim import Simulator
from hypothesis import given, settings, strategies as st

from systolic.golden import srgen
from systolic.golden.ops import clamp_bounds
from systolic.golden.qformat import QFormat
from systolic.golden.rounding import ROUNDING_MODES, requantize
from systolic.rtl.requant import Requantizer, requant_config
from systolic.sim.streams import PATTERNS, StreamLog, stream_get, stream_monitor, stream_put


def simulate(dut, items, config, keys=0, idle="none", stall="none", seed=0):
    """Feed (acc, bias, index) items with one config; return (values, saturated flags)."""
    got, logs = [], (StreamLog(), StreamLog())

    async def source(ctx):
        ctx.set(dut.config, config)
        ctx.set(dut.sr_keys, keys)
        await stream_put(ctx, dut.i, [{"acc": a, "bias": b, "index": i} for a, b, i in items],
                         idle=idle, seed=seed)

    async def sink(ctx):
        got.extend(await stream_get(ctx, dut.o, len(items), stall=stall, seed=seed + 1))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.add_testbench(stream_monitor(dut.i, logs[0], name="i"), background=True)
    sim.add_testbench(stream_monitor(dut.o, logs[1], name="o"), background=True)
    sim.run()
    values = np.array([p.value for p in got], dtype=np.int64)
    flags = np.array([p.saturated for p in got], dtype=np.int64)
    return values, flags, logs


def keys_value(seed, layer):
    return sum(k << (16 * j) for j, k in enumerate(srgen.round_keys(seed, layer)))


def random_case(rng, acc_width, mode):
    """A random layer configuration and elements, biased toward ties and saturation."""
    out = QFormat(int(rng.integers(2, 17)), int(rng.integers(-4, 12)))
    act = str(rng.choice(["none", "relu", "clip"]))
    lo, hi = clamp_bounds(act, float(rng.uniform(0.1, 4)), out)
    shift = int(rng.integers(-3, min(acc_width, 32 if mode == "stochastic" else acc_width) + 1))
    n = 120
    lim = 1 << (acc_width - 2)
    acc = rng.integers(-lim, lim, n)
    bias = rng.integers(-lim, lim, n)
    odd_max = lim >> max(shift - 1, 0)   # |2q + 1| * 2**(s-1) must stay within +-lim
    if shift > 0 and odd_max >= 1:  # exact ties: x = (2q + 1) * 2**(s-1)
        qmax = max(1, min(out.max + 2, (odd_max + 1) // 2))  # past the format, within acc
        q = rng.integers(-qmax, qmax, 20)
        acc[:20] = (2 * q + 1) << (shift - 1)
        bias[:20] = 0
    index = rng.integers(0, 2**32, n)
    return out, act, lo, hi, shift, list(zip(acc.tolist(), bias.tolist(), index.tolist()))


@pytest.mark.parametrize("mode", ROUNDING_MODES)
@pytest.mark.parametrize("seed", range(4), ids=lambda s: f"seed={s}")
def test_lane_matches_golden(mode, seed):
    rng = np.random.default_rng(seed)
    acc_width = int(rng.integers(12, 30))
    dut = Requantizer(acc_width=acc_width, out_width=16, stochastic=True)
    sr_seed, layer = int(rng.integers(0, 2**32)), int(rng.integers(0, 100))
    hit_sat = hit_tie = 0
    for case in range(3):
        out, act, lo, hi, shift, items = random_case(rng, acc_width, mode)
        acc = np.array([a + b for a, b, _ in items])
        index = np.array([i for _, _, i in items])
        expected, sats = requantize(acc, shift, mode, out, lo=lo, hi=hi, seed=sr_seed,
                                    layer=layer, index=index, count_saturations=True)
        values, flags, _ = simulate(dut, items, requant_config(shift, mode, out, lo, hi),
                                    keys=keys_value(sr_seed, layer))
        np.testing.assert_array_equal(values, expected,
                                      err_msg=f"seed={seed} case={case} {mode} s={shift} {out}")
        assert int(flags.sum()) == sats, f"seed={seed} case={case}"
        hit_sat += sats
        hit_tie += shift > 0 and (lim := 1 << (acc_width - 2)) >> (shift - 1) >= 1
    assert hit_sat > 0 and hit_tie > 0, f"seed={seed}: coverage"


@pytest.mark.parametrize("stall", PATTERNS)
@pytest.mark.parametrize("idle", PATTERNS)
def test_lane_under_back_pressure(idle, stall):
    seed = 7
    rng = np.random.default_rng(seed)
    dut = Requantizer(acc_width=20, out_width=16, stochastic=True, rounds_per_stage=2)
    out, act, lo, hi, shift, items = random_case(rng, 20, "stochastic")
    acc = np.array([a + b for a, b, _ in items])
    index = np.array([i for _, _, i in items])
    expected = requantize(acc, shift, "stochastic", out, lo=lo, hi=hi, seed=5, layer=2,
                          index=index)
    values, _, (log_i, log_o) = simulate(dut, items, requant_config(shift, "stochastic", out,
                                                                    lo, hi),
                                         keys=keys_value(5, 2), idle=idle, stall=stall,
                                         seed=seed)
    np.testing.assert_array_equal(values, expected, err_msg=f"seed={seed} {idle}/{stall}")
    assert log_o.transfers == len(items)
    if stall != "none" and (idle, stall) != ("1110", "1110"):  # in phase: never stalls
        assert log_o.stalls > 0


def test_lane_without_generator_is_smaller_and_exact():
    rng = np.random.default_rng(1)
    dut = Requantizer(acc_width=18, out_width=8, stochastic=False)
    assert dut.latency == 4
    out = QFormat(8, 3)
    items = [(int(a), 0, 0) for a in rng.integers(-2**16, 2**16, 200)]
    acc = np.array([a for a, _, _ in items])
    for mode in ("floor", "nearest_even"):
        values, _, _ = simulate(dut, items, requant_config(9, mode, out))
        np.testing.assert_array_equal(values, requantize(acc, 9, mode, out))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(acc_width=0), TypeError, "Accumulator width must be a positive integer, not 0"),
    (dict(acc_width=16, out_width=1), ValueError, "Output width must be between 2 and 16, "
                                                  "not 1"),
    (dict(acc_width=16, out_width=17), ValueError, "not 17"),
    (dict(acc_width=16, out_width="8"), TypeError, "Output width must be a positive integer"),
    (dict(acc_width=16, max_shift=18), ValueError, "Maximum shift must be at most acc_width "
                                                   r"\+ 1 = 17"),
    (dict(acc_width=16, max_left_shift=-1), TypeError, "Maximum left shift must be a "
                                                       "non-negative integer"),
    (dict(acc_width=16, stochastic=1), TypeError, "Stochastic must be a bool, not 1"),
    (dict(acc_width=16, external_h=1), TypeError, "External H must be a bool, not 1"),
    (dict(acc_width=16, stochastic=False, external_h=True), ValueError,
     "External H needs a stochastic lane"),
])
def test_parameter_rules(kwargs, error, match):
    with pytest.raises(error, match=match):
        Requantizer(**kwargs)


@settings(max_examples=200, deadline=None)
@given(acc_width=st.integers(-2, 40), out_width=st.integers(-1, 20),
       max_shift=st.one_of(st.none(), st.integers(-1, 45)), max_left_shift=st.integers(-1, 20),
       stochastic=st.booleans(), rounds=st.integers(0, 10), external_h=st.booleans())
def test_constructor_fuzz(acc_width, out_width, max_shift, max_left_shift, stochastic, rounds,
                          external_h):
    try:
        dut = Requantizer(acc_width=acc_width, out_width=out_width, max_shift=max_shift,
                          max_left_shift=max_left_shift, stochastic=stochastic,
                          rounds_per_stage=rounds, external_h=external_h)
    except (TypeError, ValueError):
        return
    Fragment.get(dut, None)
