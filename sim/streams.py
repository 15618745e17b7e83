"""Stream drivers, sinks and a protocol monitor for Amaranth-simulator testbenches.

Every unit talks through ``amaranth.lib.stream`` (DESIGN.md section 5) and must tolerate any
back-pressure.  The tests drive each stream port with the idle and stall patterns of STYLE.md
rule 14 and check the results against the golden model, and the monitor checks the rules on
every cycle:

* once ``valid`` is asserted it stays asserted until a transfer (``valid & ready`` at a
  clock edge), and
* the payload does not change while a transfer is pending.

Patterns
--------
A pattern yields, per cycle, whether the driver (or sink) is willing: ``"none"`` always,
``"1110"`` three cycles out of four, ``"p0.1"``, ``"p0.5"``, ``"p0.9"`` stall with that
probability (seeded).
"""

import itertools

import numpy as np

__all__ = ["PATTERNS", "pattern", "stream_put", "stream_get", "stream_monitor",
           "StreamLog", "stream_through"]

#: The idle/back-pressure patterns every stream test runs under (STYLE.md rule 14).
PATTERNS = ("none", "1110", "p0.1", "p0.5", "p0.9")


def pattern(name, seed=0):
    """An endless iterator of booleans: is the driver/sink willing this cycle?"""
    if name == "none":
        return itertools.repeat(True)
    if name == "1110":
        return itertools.cycle((True, True, True, False))
    if name.startswith("p"):
        p = float(name[1:])
        if not 0 <= p < 1:
            raise ValueError(f"Stall probability must be in [0, 1), not {p}")
        rng = np.random.default_rng(seed)
        return (bool(v) for v in iter(lambda: rng.random() >= p, None))
    raise ValueError(f"Pattern must be one of {', '.join(PATTERNS)}, not {name!r}")


async def stream_put(ctx, stream, payloads, *, idle="none", seed=0):
    """Send ``payloads`` on ``stream`` (valid/payload driven by the testbench).

    Before each payload the driver waits while the ``idle`` pattern says so; once ``valid`` is
    asserted it is held, with the payload, until the sink takes it."""
    willing = pattern(idle, seed)
    for payload in payloads:
        while not next(willing):
            await ctx.tick()
        ctx.set(stream.payload, payload)
        ctx.set(stream.valid, 1)
        await ctx.tick().until(stream.ready)
        ctx.set(stream.valid, 0)


async def stream_get(ctx, stream, count, *, stall="none", seed=0):
    """Receive ``count`` payloads from ``stream``, driving ``ready`` by the ``stall`` pattern.

    Returns the payloads in arrival order (as the simulator returns them: ints, or
    ``data.Const`` views for structured payloads)."""
    willing = pattern(stall, seed)
    received = []
    while len(received) < count:
        ready = next(willing)
        ctx.set(stream.ready, int(ready))
        _, _, valid, payload = await ctx.tick().sample(stream.valid, stream.payload)
        if ready and valid:
            received.append(payload)
    ctx.set(stream.ready, 0)
    return received


class StreamLog:
    """What :func:`stream_monitor` saw: transfers and stalled cycles (for coverage)."""

    def __init__(self):
        self.transfers = 0
        self.stalls = 0      # cycles with valid and not ready
        self.idles = 0       # cycles with ready and not valid


def stream_monitor(stream, log, *, name="stream"):
    """A testbench that checks the stream rules on every clock edge, forever: add it with
    ``sim.add_testbench(stream_monitor(dut.o, log), background=True)``.

    It raises ``AssertionError`` naming the stream if ``valid`` drops or the payload changes
    while a transfer is pending, and counts transfers, stalls and idle cycles in ``log``."""
    async def monitor(ctx):
        pending = None
        async for _, _, valid, ready, payload in ctx.tick().sample(stream.valid, stream.ready,
                                                                   stream.payload):
            value = _bits(payload)
            if pending is not None:
                assert valid, f"{name}: valid dropped before the transfer of {pending:#x}"
                assert value == pending, (f"{name}: payload changed from {pending:#x} to "
                                          f"{value:#x} while stalled")
            if valid and ready:
                log.transfers += 1
                pending = None
            elif valid:
                log.stalls += 1
                pending = value
            else:
                if ready:
                    log.idles += 1
                pending = None
    return monitor


def stream_through(dut, payloads, count, *, idle="none", stall="none", seed=0, setup=None):
    """Run ``payloads`` through a unit's ``i`` -> ``o`` streams in the Amaranth simulator.

    ``setup(ctx)`` (async, optional) runs first (configuration inputs).  The source puts the
    payloads under the ``idle`` pattern; the sink starts ``dut.latency + 2`` cycles later
    (out of phase, so outputs meet its stalls even when both ends run the same periodic
    pattern), takes ``count`` outputs under the ``stall`` pattern, then holds ``ready`` for
    ``dut.latency + 4`` cycles and asserts nothing more comes out (no duplicate).  Monitors
    check the stream rules on both ports.

    Returns
    -------
    (list of payloads, StreamLog of ``i``, StreamLog of ``o``)
    """
    from amaranth.sim import Simulator
    out, log_i, log_o = [], StreamLog(), StreamLog()

    async def source(ctx):
        if setup is not None:
            await setup(ctx)
        await stream_put(ctx, dut.i, payloads, idle=idle, seed=seed)

    async def sink(ctx):
        await ctx.tick().repeat(dut.latency + 2)
        out.extend(await stream_get(ctx, dut.o, count, stall=stall, seed=seed + 1))
        ctx.set(dut.o.ready, 1)
        for _ in range(dut.latency + 4):
            await ctx.tick()
            assert not ctx.get(dut.o.valid), f"seed={seed}: extra output"

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.add_testbench(stream_monitor(dut.i, log_i, name="i"), background=True)
    sim.add_testbench(stream_monitor(dut.o, log_o, name="o"), background=True)
    sim.run()
    return out, log_i, log_o


def _bits(payload):
    """The raw bits of a sampled payload (an int or a data.Const view)."""
    if isinstance(payload, int):
        return payload
    return payload.as_value().value if hasattr(payload, "as_value") else int(payload)
