"""The stream testbench helpers (sim/streams.py), on a FIFO and on deliberately bad sources."""

import numpy as np
import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from systolic.sim.streams import (PATTERNS, StreamLog, pattern, stream_get, stream_monitor,
                                  stream_put)


class Fifo(wiring.Component):
    i: In(stream.Signature(8))
    o: Out(stream.Signature(8))

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=8, depth=4)
        wiring.connect(m, wiring.flipped(self.i), fifo.w_stream)
        wiring.connect(m, fifo.r_stream, wiring.flipped(self.o))
        return m


@pytest.mark.parametrize("idle", PATTERNS)
@pytest.mark.parametrize("stall", PATTERNS)
def test_fifo_passes_everything_in_order(idle, stall):
    seed = 11
    data = [int(v) for v in np.random.default_rng(seed).integers(0, 256, 60)]
    dut = Fifo()
    got, log_i, log_o = [], StreamLog(), StreamLog()

    async def source(ctx):
        await stream_put(ctx, dut.i, data, idle=idle, seed=seed)

    async def sink(ctx):
        got.extend(await stream_get(ctx, dut.o, len(data), stall=stall, seed=seed + 1))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.add_testbench(stream_monitor(dut.i, log_i, name="i"), background=True)
    sim.add_testbench(stream_monitor(dut.o, log_o, name="o"), background=True)
    sim.run()
    assert got == data, f"seed={seed}"
    assert log_o.transfers == len(data)
    if stall != "none":
        assert log_o.stalls > 0  # back-pressure actually happened


class Fickle(wiring.Component):
    """A bad source: drops valid after one stalled cycle, or changes its payload."""
    o: Out(stream.Signature(8))

    def __init__(self, bug):
        self.bug = bug
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        count = Signal(4)
        m.d.sync += count.eq(count + 1)
        if self.bug == "drop":
            m.d.comb += [self.o.valid.eq(count == 3), self.o.payload.eq(7)]
        else:
            m.d.comb += [self.o.valid.eq(count >= 3), self.o.payload.eq(count)]
        return m


@pytest.mark.parametrize("bug, message", [("drop", "valid dropped"),
                                          ("change", "payload changed")])
def test_monitor_catches_protocol_violations(bug, message):
    dut = Fickle(bug)
    log = StreamLog()

    async def idle_sink(ctx):
        for _ in range(8):
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(idle_sink)
    sim.add_testbench(stream_monitor(dut.o, log), background=True)
    with pytest.raises(AssertionError, match=message):
        sim.run()


def test_patterns():
    p = pattern("1110")
    assert [next(p) for _ in range(8)] == [True, True, True, False] * 2
    p = pattern("p0.9", 3)
    assert 850 < sum(not next(p) for _ in range(1000)) < 950
    with pytest.raises(ValueError, match="Pattern must be one of"):
        pattern("sometimes")
