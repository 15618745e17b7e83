# amaranth: UnusedElaboratable=no
"""Skew and deskew buffers (rtl/skew.py): the staircase relation, lock-step composition,
and every parameter rule, under the idle/back-pressure patterns of STYLE.md rule 14."""

import re

import numpy as np
import pytest
from amaranth.hdl import Fragment, Module, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator
from hypothesis import given, settings
from hypothesis import strategies as st

from systolic.rtl.skew import Deskew, Skew
from systolic.sim.streams import (PATTERNS, StreamLog, pattern, stream_get, stream_monitor,
                                  stream_put)

LANES = [1, 3, 4]


def vectors(rng, count, lanes, width=5):
    return [[int(v) for v in row]
            for row in rng.integers(-(1 << (width - 1)), 1 << (width - 1), (count, lanes))]


def _lanes(payload):
    return [(int(lane.valid), int(lane.value)) for lane in payload]


@pytest.mark.parametrize("lanes", LANES, ids=lambda n: f"lanes={n}")
@pytest.mark.parametrize("idle, stall", [("none", "none"), ("1110", "p0.5"), ("p0.5", "1110"),
                                         ("p0.9", "p0.1"), ("p0.1", "p0.9")])
def test_skew_staircase(lanes, idle, stall):
    """Lane k of vector v is in the transferred diagonal k after the one holding its lane 0,
    every lane exactly once, in order."""
    seed = 20 + lanes
    rng = np.random.default_rng(seed)
    data_in = vectors(rng, 40, lanes)
    dut = Skew(shape=signed(5), lanes=lanes)
    diagonals, log_i, log_o = [], StreamLog(), StreamLog()
    total = len(data_in) * lanes

    async def source(ctx):
        await stream_put(ctx, dut.i, data_in, idle=idle, seed=seed)

    async def sink(ctx):
        willing, seen = pattern(stall, seed + 1), 0
        while seen < total:
            ready = next(willing)
            ctx.set(dut.o.ready, int(ready))
            _, _, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            if ready and valid:
                diagonals.append(_lanes(payload))
                seen += sum(v for v, _ in diagonals[-1])
        ctx.set(dut.o.ready, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.add_testbench(stream_monitor(dut.i, log_i, name="i"), background=True)
    sim.add_testbench(stream_monitor(dut.o, log_o, name="o"), background=True)
    sim.run()

    # Reassemble: walk each lane's valid entries in order.
    per_lane = [[(t, value) for t, diag in enumerate(diagonals)
                 for k2, (valid, value) in enumerate(diag) if k2 == k and valid]
                for k in range(lanes)]
    for k in range(lanes):
        assert [value for _, value in per_lane[k]] == [v[k] for v in data_in], \
            f"seed={seed} lane {k}"
        assert [t for t, _ in per_lane[k]] == [t + k for t, _ in per_lane[0]], \
            f"seed={seed} lane {k} is not {k} diagonals behind lane 0"
    assert log_i.transfers == len(data_in) and log_o.transfers == len(diagonals)
    if stall != "none":
        assert log_o.stalls > 0, "no back-pressure happened"
    if idle != "none":
        assert log_i.idles > 0, "the source was never idle"


class SkewDeskew(wiring.Component):
    """A skew and a deskew in lock step (as inside the array): vectors in, vectors out."""

    def __init__(self, shape, lanes):
        self.shape, self.lanes = shape, lanes
        super().__init__({"i": In(stream.Signature(data.ArrayLayout(shape, lanes))),
                          "o": Out(stream.Signature(data.ArrayLayout(shape, lanes)))})

    def elaborate(self, platform):
        m = Module()
        skew = m.submodules.skew = Skew(shape=self.shape, lanes=self.lanes)
        deskew = m.submodules.deskew = Deskew(shape=self.shape, lanes=self.lanes)
        wiring.connect(m, wiring.flipped(self.i), skew.i)
        wiring.connect(m, skew.o, deskew.i)
        wiring.connect(m, deskew.o, wiring.flipped(self.o))
        return m


FLAGGED = data.StructLayout({"value": signed(6), "last": 1})


@pytest.mark.parametrize("lanes", LANES, ids=lambda n: f"lanes={n}")
@pytest.mark.parametrize("idle", PATTERNS)
@pytest.mark.parametrize("stall", PATTERNS)
def test_skew_then_deskew_is_identity(lanes, idle, stall):
    seed = 40 + lanes
    rng = np.random.default_rng(seed)
    values = rng.integers(-32, 32, (30, lanes))
    lasts = rng.integers(0, 2, (30, lanes))
    data_in = [[{"value": int(v), "last": int(f)} for v, f in zip(vr, fr)]
               for vr, fr in zip(values, lasts)]
    dut = SkewDeskew(FLAGGED, lanes)
    got, log_i, log_o = [], StreamLog(), StreamLog()

    async def source(ctx):
        await stream_put(ctx, dut.i, data_in, idle=idle, seed=seed)

    async def sink(ctx):
        got.extend(await stream_get(ctx, dut.o, len(data_in), stall=stall, seed=seed + 1))
        for _ in range(2 * lanes + 4):           # nothing more comes out
            _, _, valid = await ctx.tick().sample(dut.o.valid)
            assert not valid, f"seed={seed}: an extra vector"

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.add_testbench(stream_monitor(dut.i, log_i, name="i"), background=True)
    sim.add_testbench(stream_monitor(dut.o, log_o, name="o"), background=True)
    sim.run()
    out = [[{"value": int(lane.value), "last": int(lane.last)} for lane in v] for v in got]
    assert out == data_in, f"seed={seed}"
    # (with "1110" at both ends the output's gaps can line up with the sink's)
    if stall != "none" and (idle, stall) != ("1110", "1110"):
        assert log_o.stalls > 0, "no back-pressure happened"
    if idle != "none":
        assert log_i.idles > 0, "the source was never idle"


@pytest.mark.parametrize("lanes", LANES, ids=lambda n: f"lanes={n}")
@pytest.mark.parametrize("stall", PATTERNS)
def test_deskew_aligns_staircases(lanes, stall):
    """Well-formed staircases (with bubble vectors in between, as a lock-step producer
    makes them) leave as whole vectors; the deskew drains on its own at the end."""
    seed = 60 + lanes
    rng = np.random.default_rng(seed)
    data_in = vectors(rng, 30, lanes)
    present = rng.random(len(data_in) + 10) < 0.6
    # Vectors (None = bubble) in diagonal time, then the Python skew of them.
    timeline, it = [], iter(data_in)
    for p in present:
        timeline.append(next(it, None) if p else None)
    timeline += list(it)
    diagonals = []
    for t in range(len(timeline) + lanes - 1):
        diag = []
        for k in range(lanes):
            v = timeline[t - k] if 0 <= t - k < len(timeline) else None
            diag.append({"valid": int(v is not None), "value": v[k] if v else 0})
        diagonals.append(diag)
    dut = Deskew(shape=signed(5), lanes=lanes)
    got, log_o = [], StreamLog()

    async def source(ctx):
        # Lock-step producer: a diagonal per advance (bubble diagonals not valid).
        for diag in diagonals:
            ctx.set(dut.i.payload, diag)
            ctx.set(dut.i.valid, int(any(lane["valid"] for lane in diag)))
            await ctx.tick().until(dut.i.ready)
        ctx.set(dut.i.valid, 0)

    async def sink(ctx):
        got.extend(await stream_get(ctx, dut.o, len(data_in), stall=stall, seed=seed + 1))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.add_testbench(stream_monitor(dut.o, log_o, name="o"), background=True)
    sim.run()
    assert [[int(x) for x in v] for v in got] == data_in, f"seed={seed}"
    if stall != "none":
        assert log_o.stalls > 0, "no back-pressure happened"


def test_delays():
    assert Skew(shape=signed(3), lanes=4).delays == (1, 2, 3, 4)
    assert Deskew(shape=signed(3), lanes=4).delays == (4, 3, 2, 1)
    dut = Skew(shape=signed(3), lanes=2)
    assert (dut.lanes, dut.shape) == (2, signed(3))
    with pytest.raises(AttributeError):
        dut.lanes = 3


@pytest.mark.parametrize("cls", [Skew, Deskew])
@pytest.mark.parametrize("kwargs, error, message", [
    ({"lanes": 0}, TypeError, "Skew lanes must be a positive integer, not 0"),
    ({"lanes": "3"}, TypeError, "Skew lanes must be a positive integer, not '3'"),
    ({"shape": "wide"}, TypeError, "Lane shape must be a shape-castable object, not 'wide'"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_parameter_errors(cls, kwargs, error, message):
    kwargs = {"shape": signed(4), "lanes": 2, **kwargs}
    with pytest.raises(error, match=re.escape(message)):
        cls(**kwargs)


@settings(max_examples=200, deadline=None)
@given(cls=st.sampled_from([Skew, Deskew]),
       shape=st.one_of(st.integers(-2, 20), st.sampled_from([signed(3), FLAGGED, None, "x"])),
       lanes=st.one_of(st.integers(-2, 12), st.sampled_from([None, 2.0, True])))
def test_constructor_fuzz(cls, shape, lanes):
    try:
        dut = cls(shape=shape, lanes=lanes)
    except (TypeError, ValueError):
        return
    Fragment.get(dut, None)
