# amaranth: UnusedElaboratable=no
"""Processing elements (rtl/pe.py) on their own: sums, forwarding, the drain slot, the
weight double buffer, under a random clock enable, for every multiplier."""

import re

import numpy as np
import pytest
from amaranth.hdl import Fragment
from amaranth.sim import Simulator
from hypothesis import given, settings
from hypothesis import strategies as st

from systolic.golden.errors import ConstraintError
from systolic.rtl.pe import PE_MULTIPLIERS, OutputStationaryPE, WeightStationaryPE

WIDTHS = [(2, 2), (8, 8), (16, 16), (5, 3)]
CASES = [(m, aw, ww) for m in PE_MULTIPLIERS for aw, ww in WIDTHS
         if m != "sb_mac16" or max(aw, ww) <= 8]
IDS = [f"{m}-{aw}x{ww}" for m, aw, ww in CASES]


def rand(rng, width, extreme=0.3):
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    return int(rng.choice([lo, hi])) if rng.random() < extreme else int(rng.integers(lo, hi + 1))


class ExternalMultiplier:
    """Stand-in for the array's multiplier bank: the product 2 enabled edges later.

    Call :meth:`before_edge` once the cycle's inputs are set, :meth:`after_edge` after
    the clock edge."""

    def __init__(self, dut):
        self.dut, self.pipe, self.pending = dut, [0, 0], None

    def before_edge(self, ctx, enabled):
        ctx.set(self.dut.mul_p, self.pipe[0])
        self.pending = ctx.get(self.dut.mul_a) * ctx.get(self.dut.mul_b) if enabled else None

    def after_edge(self, ctx):
        if self.pending is not None:
            self.pipe = [self.pipe[1], self.pending]
        ctx.set(self.dut.mul_p, self.pipe[0])


@pytest.mark.parametrize("multiplier, in_width, weight_width", CASES, ids=IDS)
def test_output_stationary_pe(multiplier, in_width, weight_width):
    seed = 7 * in_width + weight_width
    rng = np.random.default_rng(seed)
    acc_width = in_width + weight_width + 6          # room for 64 products
    dut = OutputStationaryPE(in_width=in_width, weight_width=weight_width,
                             acc_width=acc_width, multiplier=multiplier)
    counts = {"done": 0, "shifts": 0, "disabled": 0}

    async def bench(ctx):
        beats = []                  # beats sampled at enabled edges
        partial, sums = 0, []       # the reference reduction
        slot_value, slot_valid = 0, 0
        ext = ExternalMultiplier(dut) if multiplier == "external" else None
        for _ in range(600):
            en = int(rng.random() < 0.8)
            beat = {"value": rand(rng, in_width), "valid": int(rng.random() < 0.8),
                    "last": int(rng.random() < 0.15)}
            b = rand(rng, weight_width)
            start, d_valid = int(rng.random() < 0.1), int(rng.random() < 0.3)
            d_value = rand(rng, acc_width, 0)
            ctx.set(dut.en, en)
            ctx.set(dut.a_in, beat)
            ctx.set(dut.b_in, b)
            ctx.set(dut.drain_start, start)
            ctx.set(dut.drain_in, {"value": d_value, "valid": d_valid})
            if ext:
                ext.before_edge(ctx, en)
            done = ctx.get(dut.done)
            if en:
                old = beats[-2] if len(beats) >= 2 else None
                assert done == int(bool(old and old["valid"] and old["last"])), \
                    f"seed={seed}: done"
                if old and old["valid"]:
                    partial += old["value"] * old["b"]
                    if old["last"]:
                        sums.append(partial)
                        partial = 0
                if done:
                    slot_value = sums[-1]
                    counts["done"] += 1
                elif slot_valid:
                    slot_value = d_value
                    counts["shifts"] += 1
                slot_valid = start | d_valid
                beats.append({**beat, "b": b})
            else:
                counts["disabled"] += 1
            await ctx.tick()
            if ext:
                ext.after_edge(ctx)
            out = ctx.get(dut.drain_out)
            assert (out.valid, out.value) == (slot_valid, slot_value), f"seed={seed}: slot"
            if beats:
                assert ctx.get(dut.a_out.value) == beats[-1]["value"], f"seed={seed}"
                assert ctx.get(dut.b_out) == beats[-1]["b"], f"seed={seed}"

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert min(counts.values()) > 5, counts


@pytest.mark.parametrize("multiplier, in_width, weight_width", CASES, ids=IDS)
def test_weight_stationary_pe(multiplier, in_width, weight_width):
    seed = 11 * in_width + weight_width
    rng = np.random.default_rng(seed)
    acc_width = in_width + weight_width + 4
    dut = WeightStationaryPE(in_width=in_width, weight_width=weight_width,
                             acc_width=acc_width, multiplier=multiplier)
    counts = {"first": 0, "checked": 0, "disabled": 0}

    async def bench(ctx):
        products = []               # per enabled edge: (valid, x * active weight)
        shadow = active = 0
        expect = None
        ext = ExternalMultiplier(dut) if multiplier == "external" else None
        psum_lim = 1 << (acc_width - 3)
        for _ in range(600):
            en = int(rng.random() < 0.8)
            x = {"value": rand(rng, in_width), "valid": int(rng.random() < 0.8),
                 "first": int(rng.random() < 0.1)}
            psum_in = int(rng.integers(-psum_lim, psum_lim))
            w_in, w_shift = rand(rng, weight_width), int(rng.random() < 0.3)
            ctx.set(dut.en, en)
            ctx.set(dut.x_in, x)
            ctx.set(dut.psum_in, psum_in)
            ctx.set(dut.w_in, w_in)
            ctx.set(dut.w_shift, w_shift)
            if ext:
                ext.before_edge(ctx, en)
            if en:
                if x["valid"] and x["first"]:
                    active = shadow
                    counts["first"] += 1
                products.append((x["valid"], x["value"] * active))
                if w_shift:
                    shadow = w_in
                if len(products) >= 3:
                    valid, p = products[-3]
                    expect = (valid, psum_in + p)
            else:
                counts["disabled"] += 1
            await ctx.tick()
            if ext:
                ext.after_edge(ctx)
            assert ctx.get(dut.w_out) == shadow, f"seed={seed}: shadow"
            if expect is not None:
                out = ctx.get(dut.psum_out)
                assert (out.valid, out.value) == expect, f"seed={seed}: partial sum"
                counts["checked"] += 1

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert min(counts.values()) > 5, counts


@pytest.mark.parametrize("cls", [OutputStationaryPE, WeightStationaryPE])
@pytest.mark.parametrize("kwargs, error, message", [
    ({"in_width": 0}, TypeError, "Input width must be a positive integer, not 0"),
    ({"in_width": 17}, ValueError, "Input width must be between 2 and 16, not 17"),
    ({"weight_width": "8"}, TypeError, "Weight width must be a positive integer, not '8'"),
    ({"weight_width": 1}, ValueError, "Weight width must be between 2 and 16, not 1"),
    ({"acc_width": -4}, TypeError, "Accumulator width must be a positive integer, not -4"),
    ({"acc_width": 15}, ConstraintError,
     "Accumulator width 15 cannot hold a 8-bit x 8-bit product, which needs 16 bits"),
    ({"multiplier": None}, TypeError, "Multiplier must be a string, not None"),
    ({"multiplier": "booth"}, ValueError, "Multiplier must be one of 'inferred', 'lut', "
     "'sb_mac16', 'external', not 'booth'"),
    ({"multiplier": "sb_mac16", "weight_width": 9}, ValueError,
     "The sb_mac16 multiplier packs two 8x8 products per DSP; Weight width must be at most "
     "8, not 9"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_parameter_errors(cls, kwargs, error, message):
    kwargs = {"in_width": 8, "weight_width": 8, "acc_width": 24, **kwargs}
    with pytest.raises(error, match=re.escape(message)):
        cls(**kwargs)


def test_properties_are_read_only():
    pe = OutputStationaryPE(in_width=4, weight_width=6, acc_width=12, multiplier="lut")
    assert (pe.in_width, pe.weight_width, pe.acc_width, pe.multiplier, pe.latency) == \
        (4, 6, 12, "lut", 3)
    with pytest.raises(AttributeError):
        pe.acc_width = 30
    assert not hasattr(pe, "mul_a")
    assert hasattr(WeightStationaryPE(in_width=4, weight_width=6, acc_width=12,
                                      multiplier="external"), "mul_p")


_value = st.one_of(st.integers(-2, 40), st.sampled_from([None, 8.0, "8", True]))


@settings(max_examples=200, deadline=None)
@given(cls=st.sampled_from([OutputStationaryPE, WeightStationaryPE]),
       in_width=_value, weight_width=_value, acc_width=_value,
       multiplier=st.one_of(st.sampled_from(PE_MULTIPLIERS), st.sampled_from(["x", 1])))
def test_constructor_fuzz(cls, in_width, weight_width, acc_width, multiplier):
    try:
        dut = cls(in_width=in_width, weight_width=weight_width, acc_width=acc_width,
                  multiplier=multiplier)
    except (TypeError, ValueError):       # ConstraintError is a ValueError
        return
    Fragment.get(dut, None)
