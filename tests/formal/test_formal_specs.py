"""The formal specifications (formal_harness.py) agree with the golden model.

A formal proof shows that a unit equals a specification written in Amaranth; these
simulations show that the specification equals golden (``rounding.requantize``,
``srgen.round_keys``, ``srgen.H``) and that the harness's configuration mapping equals
``rtl.requant.requant_config``.  Together: the unit equals golden on every input the proof
covers.
"""

import itertools

import numpy as np
import pytest
from amaranth.hdl import Module, Signal, signed
from amaranth.sim import Simulator

from systolic.golden import srgen
from systolic.golden.qformat import QFormat
from systolic.golden.rounding import ROUNDING_MODES, requantize
from systolic.rtl.requant import MODE, requant_config

from formal_harness import (RequantParams, h_reference, key_schedule_reference,
                            requant_reference)

OUT_WIDTH, MAX_SHIFT, MAX_LEFT_SHIFT, X_WIDTH = 4, 8, 5, 8


def run_comb(m, testbench):
    sim = Simulator(m)
    sim.add_testbench(testbench)
    sim.run()


def bounds_cases(width):
    """Activation bounds (None: absent) inside a ``width``-bit format, as clamp_bounds
    makes them: none, ReLU, clip, and a two-sided clamp."""
    fmt = QFormat(width, 0)
    yield None, None
    yield 0, None
    for hi in range(0, fmt.max + 1):
        yield 0, hi
    yield fmt.min + 1, fmt.max - 1
    yield fmt.min, fmt.max


@pytest.mark.parametrize("seed", [0], ids=lambda s: f"seed={s}")
def test_requant_reference_matches_golden(seed):
    rng = np.random.default_rng(seed)
    m = Module()
    x = Signal(signed(X_WIDTH))
    h = Signal(32)
    p = RequantParams(m, out_width=OUT_WIDTH, max_shift=MAX_SHIFT,
                      max_left_shift=MAX_LEFT_SHIFT)
    out = requant_reference(m, x, h, p)
    config = p.rtl_config()
    config_sig = {name: Signal(signed(8), name=f"cfg_{name}") for name in config}
    m.d.comb += [config_sig[name].eq(v) for name, v in config.items()]
    seen = {"tie_up": 0, "tie_down": 0, "sat_hi": 0, "sat_lo": 0, "act_clamp": 0,
            "sr_up": 0, "sr_down": 0, "left": 0}

    async def testbench(ctx):
        cases = 0
        for width in range(2, OUT_WIDTH + 1):
            fmt = QFormat(width, 3)
            for (lo, hi), shift, mode in itertools.product(
                    bounds_cases(width), range(-MAX_LEFT_SHIFT, MAX_SHIFT + 1),
                    ROUNDING_MODES):
                ctx.set(p.shift, shift)
                ctx.set(p.mode, MODE[mode])
                ctx.set(p.fmt_width, width)
                ctx.set(p.lo_on, lo is not None)
                ctx.set(p.hi_on, hi is not None)
                ctx.set(p.act_lo, lo or 0)
                ctx.set(p.act_hi, hi or 0)
                want_cfg = requant_config(shift, mode, fmt, lo=lo, hi=hi)
                got_cfg = {name: ctx.get(s) for name, s in config_sig.items()}
                assert got_cfg == want_cfg, (fmt, lo, hi, shift, mode)
                # every x for the widest format without bounds, a random few otherwise
                xs = np.arange(-(1 << X_WIDTH - 1), 1 << X_WIDTH - 1)
                if width != OUT_WIDTH or lo is not None or hi is not None:
                    xs = rng.choice(xs, 6)
                hs = rng.integers(0, 1 << 32, len(xs))
                r = hs & ((1 << shift) - 1) if shift > 0 else np.zeros_like(hs)
                want, sats = requantize(xs, shift, mode, fmt, lo=lo, hi=hi, r=r,
                                        count_saturations=True)
                for xv, hv, wv in zip(xs, hs, want):
                    ctx.set(x, int(xv))
                    ctx.set(h, int(hv))
                    got = ctx.get(out)
                    assert got.value == wv, (fmt, lo, hi, shift, mode, xv, hv)
                    _, one_sat = requantize([xv], shift, mode, fmt, lo=lo, hi=hi,
                                            r=[hv & ((1 << max(shift, 0)) - 1)],
                                            count_saturations=True)
                    assert got.saturated == one_sat, (fmt, lo, hi, shift, mode, xv)
                    for name in seen:
                        seen[name] += getattr(got, name)
                    cases += 1
        assert cases > 10000, cases

    run_comb(m, testbench)
    assert all(seen.values()), seen       # every cover flag is exercised


@pytest.mark.parametrize("seed", [0], ids=lambda s: f"seed={s}")
def test_h_reference_matches_golden(seed):
    rng = np.random.default_rng(seed)
    m = Module()
    seed_s, layer, index = Signal(32), Signal(16), Signal(32)
    keys = key_schedule_reference(m, seed_s, layer)
    h = h_reference(m, keys, index)

    async def testbench(ctx):
        for _ in range(200):
            sv, lv, iv = (int(rng.integers(0, 1 << 32)), int(rng.integers(0, 1 << 16)),
                          int(rng.integers(0, 1 << 32)))
            ctx.set(seed_s, sv)
            ctx.set(layer, lv)
            ctx.set(index, iv)
            assert [ctx.get(k) for k in keys] == list(srgen.round_keys(sv, lv))
            assert ctx.get(h) == int(srgen.H(sv, lv, iv))

    run_comb(m, testbench)
