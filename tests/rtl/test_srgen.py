# amaranth: UnusedElaboratable=no
"""H(seed, layer, i) in hardware (rtl/srgen.py) against the golden definition."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from systolic.golden import srgen as golden
from systolic.rtl.srgen import SRKeySchedule, SRRounds


def keys_value(keys):
    return sum(k << (16 * j) for j, k in enumerate(keys))


@pytest.mark.parametrize("seed", [0, 1, 0xDEADBEEF, 0xFFFFFFFF, 12345])
def test_key_schedule_matches_golden(seed):
    layer_values = [0, 1, 7, 0xFFFF]
    dut = SRKeySchedule()
    got = {}

    async def tb(ctx):
        for layer in layer_values:
            ctx.set(dut.seed, seed)
            ctx.set(dut.layer, layer)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            cycles = 0
            while not ctx.get(dut.done):
                await ctx.tick()
                cycles += 1
            assert cycles == golden.ROUNDS - 1
            got[layer] = ctx.get(dut.keys)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    for layer in layer_values:
        assert got[layer] == keys_value(golden.round_keys(seed, layer)), (seed, layer)


@pytest.mark.parametrize("rounds_per_stage", [1, 3, golden.ROUNDS])
@pytest.mark.parametrize("seed", [3, 99], ids=lambda s: f"seed={s}")
def test_rounds_match_golden_H(rounds_per_stage, seed):
    rng = np.random.default_rng(seed)
    key_seed, layer = int(rng.integers(0, 2**32)), int(rng.integers(0, 2**16))
    indices = [int(v) for v in rng.integers(0, 2**32, 200)] + list(range(50))
    dut = SRRounds(rounds_per_stage=rounds_per_stage)
    out = []

    async def tb(ctx):
        ctx.set(dut.keys, keys_value(golden.round_keys(key_seed, layer)))
        ctx.set(dut.enable, 1)
        for i in indices + [0] * dut.latency:
            ctx.set(dut.index, i)
            await ctx.tick()
            out.append(ctx.get(dut.h))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    expected = golden.H(key_seed, layer, np.array(indices, dtype=np.uint64))
    np.testing.assert_array_equal(np.array(out[dut.latency - 1:][:len(indices)],
                                           dtype=np.uint64), expected,
                                  err_msg=f"seed={seed}")


@pytest.mark.parametrize("value, error, match", [
    (0, TypeError, "Rounds per stage must be a positive integer, not 0"),
    (True, TypeError, "Rounds per stage must be a positive integer, not True"),
    (golden.ROUNDS + 1, ValueError, f"Rounds per stage must be at most {golden.ROUNDS}"),
])
def test_rounds_per_stage_rules(value, error, match):
    with pytest.raises(error, match=match):
        SRRounds(rounds_per_stage=value)
