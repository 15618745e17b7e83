"""cocotb testbench: SB_SPRAM256KA (yosys's ice40/cells_sim.v model) tiled by
:class:`systolic.rtl.spram.SPRAM` against the same unit's Amaranth model, cycle by cycle.

Random writes, then random reads with a random ``en`` (the output must hold while ``en``
is low); after every read both outputs must equal a Python dictionary model of the memory.
Settings (environment): ``SPRAM_CYCLES`` (default 3000), ``SPRAM_WIDTH``, ``SPRAM_DEPTH``.
"""

import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

CYCLES = int(os.environ.get("SPRAM_CYCLES", "3000"))
WIDTH = int(os.environ["SPRAM_WIDTH"])
DEPTH = int(os.environ["SPRAM_DEPTH"])


@cocotb.test()
async def primitive_equals_model(dut):
    rng = np.random.default_rng(cocotb.RANDOM_SEED)
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 0
    dut.we.value = 0
    dut.en.value = 0
    memory = {}
    # the words to use: both ends of each block and random ones
    addrs = sorted({0, DEPTH - 1, *[min(DEPTH - 1, b * 16384 + o) for b in range(4)
                                    for o in (0, 16383)], *map(int, rng.integers(0, DEPTH, 40))})
    for a in addrs:
        await FallingEdge(dut.clk)
        v = int(rng.integers(0, 1 << WIDTH))
        dut.addr.value, dut.wdata.value, dut.we.value, dut.en.value = a, v, 1, 1
        memory[a] = v
    await FallingEdge(dut.clk)
    dut.we.value = 0
    expected = None
    reads = holds = 0
    for _ in range(CYCLES):
        await FallingEdge(dut.clk)
        a = int(rng.choice(addrs))
        en = int(rng.random() < 0.6)
        dut.addr.value, dut.en.value, dut.we.value = a, en, 0
        await RisingEdge(dut.clk)
        await ReadOnly()
        if en:
            expected = memory[a]
            reads += 1
        elif expected is not None:
            holds += 1
        if expected is not None:
            assert int(dut.data_primitive.value) == expected, (a, hex(expected))
            assert int(dut.data_model.value) == expected, (a, hex(expected))
    assert reads > CYCLES // 3 and holds > CYCLES // 5, (reads, holds)
