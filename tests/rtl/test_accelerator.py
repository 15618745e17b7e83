"""The accelerator in the Amaranth simulator on small random networks, against golden.

Every output element, saturation count and the cycle count are compared exactly; the
whole-network runs on the reference networks are cocotb/Verilator tests (tests/sim)."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from systolic.golden.randnet import random_input, random_network
from systolic.golden.rounding import ROUNDING_MODES
from systolic.golden.run import run
from systolic.rtl.accelerator import Accelerator
from systolic.rtl.compiler import ArrayConfig, compile_network
from systolic.rtl.requant import MODE


def simulate(program, images, *, rounding=None, seed=None, out_ready=None, in_valid=None):
    """Run one batch in the Amaranth simulator; returns (outputs (N, *out_shape), counters)."""
    net = program.network
    C = program.config.cols
    n = len(images)
    modes = [rounding or getattr(l, "rounding", None) or "floor" for l in net.layers]
    seed = net.seed if seed is None else seed
    dut = Accelerator(program)
    batch = np.zeros((C, program.input_words), dtype=np.int64)
    batch[:n] = np.asarray(images).reshape(n, -1)
    out = np.zeros((C, program.output_words), dtype=np.int64)
    result = {}

    async def testbench(ctx):
        for j, mode in enumerate(modes):
            ctx.set(dut.rounding[j], MODE[mode])
        ctx.set(dut.seed, seed)
        ctx.set(dut.images, n)
        for e in range(program.input_words):
            ctx.set(dut.i.valid, 1)
            for j in range(C):
                ctx.set(dut.i.payload[j], int(batch[j, e]))
            await ctx.tick().until(dut.i.ready)
        ctx.set(dut.i.valid, 0)
        e = 0
        ctx.set(dut.o.ready, 1)
        while not ctx.get(dut.o.valid):
            await ctx.tick()
        while e < program.output_words:
            values = ctx.get(dut.o.payload.values)
            for j in range(C):
                out[j, e] = values[j]
            last = ctx.get(dut.o.payload.last)
            await ctx.tick()
            e += 1
            assert bool(last) == (e == program.output_words)
        result["cycles"] = ctx.get(dut.cycles)
        result["layer_cycles"] = [ctx.get(dut.layer_cycles[j]) for j in range(len(net.layers))]
        result["saturations"] = [ctx.get(dut.saturations[j]) for j in range(len(net.layers))]
        result["beats"] = ctx.get(dut.beats)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run_until(1e-6 * (program.cycles + program.input_words + program.output_words + 200))
    assert result, "the accelerator did not finish"
    return out[:n].reshape(n, *net.output_shape), result


CASES = [(seed, rows, cols) for seed, (rows, cols) in enumerate(
    [(1, 1), (2, 3), (3, 2), (4, 4), (2, 2), (3, 1)])]


@pytest.mark.parametrize("seed,rows,cols", CASES, ids=[f"seed={s}-{r}x{c}" for s, r, c in CASES])
def test_random_network_bit_exact(seed, rows, cols):
    rng = np.random.default_rng(seed)
    net = random_network(rng, max_layers=2, max_size=6, max_channels=4)
    program = compile_network(net, ArrayConfig(rows=rows, cols=cols))
    x = random_input(rng, net, cols)
    got, counters = simulate(program, x)
    want = run(net, x)
    np.testing.assert_array_equal(got, want.logits.reshape(got.shape),
                                  err_msg=f"seed {seed}")
    assert counters["cycles"] == program.cycles, (counters, program.cycles)
    assert counters["layer_cycles"] == [s.cycles for s in program.steps]
    assert counters["saturations"] == list(want.saturations)
