# amaranth: UnusedElaboratable=no
"""The ring (rtl/ring.py) in the Amaranth simulator: registers and memory, against a
Python model of the ring, under random enables."""

import re
from collections import deque

import numpy as np
import pytest
from amaranth.hdl import signed
from amaranth.lib import data
from amaranth.sim import Simulator

from systolic.rtl.ring import Ring


def run_ring(dut, values, enables, afters=None):
    """Drive ``values``/``enables`` one per cycle; return ``head`` at every cycle (and
    append ``after`` to ``afters`` at every cycle, if given)."""
    heads = []

    async def testbench(ctx):
        for v, e in zip(values, enables):
            ctx.set(dut.i, v)
            ctx.set(dut.en, e)
            heads.append(ctx.get(dut.head))
            if afters is not None:
                afters.append(ctx.get(dut.after))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    return heads


def model(depth, values, enables):
    ring, heads = deque([0] * depth), []
    for v, e in zip(values, enables):
        heads.append(ring[0])
        if e:
            ring.popleft()
            ring.append(v)
    return heads


#: (depth, in_memory): a ring in memory has at least 2 entries (test_ring_errors)
RINGS = [(d, False) for d in (1, 2, 4, 5, 8)] + [(d, True) for d in (2, 4, 5, 8)]


@pytest.mark.parametrize("depth, in_memory", RINGS,
                         ids=[f"{d}-{'memory' if m else 'registers'}" for d, m in RINGS])
@pytest.mark.parametrize("p_en", [1.0, 0.5, 0.1], ids=lambda p: f"en={p}")
def test_ring_matches_model(depth, in_memory, p_en):
    seed = 500 + 10 * depth + int(10 * p_en) + in_memory
    rng = np.random.default_rng(seed)
    n = 40 * depth + 20
    values = [int(v) for v in rng.integers(-128, 128, n)]
    enables = [int(e) for e in rng.random(n) < p_en]
    dut = Ring(shape=signed(8), depth=depth, in_memory=in_memory)
    afters = None if in_memory else []
    heads = run_ring(dut, values, enables, afters)
    want = model(depth, values, enables)
    assert heads == want, f"seed={seed}"
    if afters is not None:
        # ``after`` is the head that an enabled edge brings: the model's next head
        taken = [h for h, e in zip(want[1:], enables) if e]
        assert [a for a, e in zip(afters, enables[:-1]) if e] == taken, f"seed={seed}"
    assert sum(enables) > 2 * depth and len(set(heads)) > depth    # it turned, values moved
    if p_en < 1:
        assert 0 in enables                                        # and it held


def test_ring_of_structs_in_memory():
    """An entry of several fields (the accelerator's maxima: one per lane) in memory."""
    layout = data.ArrayLayout(signed(8), 2)
    rng = np.random.default_rng(7)
    pairs = [[int(v) for v in rng.integers(-128, 128, 2)] for _ in range(60)]
    enables = [int(e) for e in rng.random(60) < 0.7]
    dut = Ring(shape=layout, depth=3, in_memory=True)
    heads = []

    async def testbench(ctx):
        for v, e in zip(pairs, enables):
            ctx.set(dut.i, v)
            ctx.set(dut.en, e)
            heads.append([int(x) for x in ctx.get(dut.head)])
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    want = model(3, [tuple(p) for p in pairs], enables)
    assert [tuple(h) for h in heads] == [w if w != 0 else (0, 0) for w in want]


@pytest.mark.parametrize("kwargs, error, message", [
    ({"depth": 0}, TypeError, "Ring depth must be a positive integer, not 0"),
    ({"in_memory": 1}, TypeError, "In memory must be a bool, not 1"),
    ({"depth": 1, "in_memory": True}, ValueError,
     "A ring in memory needs at least 2 entries, not 1"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_ring_errors(kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        Ring(**{"shape": signed(8), "depth": 4, **kwargs})
