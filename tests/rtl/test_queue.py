# amaranth: UnusedElaboratable=no
"""The memory queue (rtl/queue.py) in the Amaranth simulator against a Python queue: random
pushes and pops, the consumer taking an entry no earlier than its contract allows."""

import re
from collections import deque

import numpy as np
import pytest
from amaranth.hdl import unsigned
from amaranth.sim import Simulator

from systolic.rtl.queue import MemoryQueue


@pytest.mark.parametrize("depth", [2, 3, 5, 8])
@pytest.mark.parametrize("p_push, p_pop", [(0.5, 0.5), (0.9, 0.3), (0.3, 0.9), (1.0, 1.0)],
                         ids=lambda p: f"{p}")
def test_queue_matches_model(depth, p_push, p_pop):
    seed = 600 + 10 * depth + int(10 * p_push) + int(100 * p_pop)
    rng = np.random.default_rng(seed)
    dut = MemoryQueue(shape=unsigned(12), depth=depth)
    model = deque()                       # (value, edge of its push)
    stats = {"pops": 0, "full": 0, "waited": 0}

    async def testbench(ctx):
        for edge in range(400):
            level = ctx.get(dut.level)
            assert level == len(model), f"seed={seed} edge {edge}: level"
            push = len(model) < depth and rng.random() < p_push
            # the head may be taken from the second edge after its push on
            ready = bool(model) and edge >= model[0][1] + 2
            pop = ready and rng.random() < p_pop
            if ready:
                assert ctx.get(dut.r_data) == model[0][0], f"seed={seed} edge {edge}: head"
            elif model:
                stats["waited"] += 1
            stats["full"] += len(model) == depth
            value = int(rng.integers(0, 1 << 12))
            ctx.set(dut.w_en, push)
            ctx.set(dut.w_data, value)
            ctx.set(dut.r_en, pop)
            if pop:
                model.popleft()
                stats["pops"] += 1
            if push:
                model.append((value, edge))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    # it moved, filled up, and an entry was taken at the earliest allowed edge
    assert stats["pops"] > 50 and stats["waited"] > 0, stats
    if p_push > p_pop:
        assert stats["full"] > 0, stats


@pytest.mark.parametrize("kwargs, error, message", [
    ({"depth": 0}, TypeError, "Queue depth must be a positive integer, not 0"),
    ({"depth": 1}, ValueError, "A memory queue needs at least 2 entries, not 1"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_queue_errors(kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        MemoryQueue(**{"shape": unsigned(8), **kwargs})
