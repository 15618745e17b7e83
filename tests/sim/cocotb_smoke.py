"""cocotb testbench for the running-sum unit of tests/sim/test_runner.py.

The unit takes signed samples on stream ``i`` and answers each with the running sum,
wrapped to the output width, on stream ``o``.  The testbench is built like every cocotb
bench in this project: a driver (random idle cycles), a sink (random back-pressure), a
monitor per stream, a model and a checker.  Widths are read from the DUT's ports.

Settings (environment): ``SMOKE_COUNT`` samples per test (default 300); ``SMOKE_BUG=1``
makes the model wrong, to check that a failing bench is reported as a failure.
"""

import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

COUNT = int(os.environ.get("SMOKE_COUNT", "300"))
BUG = os.environ.get("SMOKE_BUG") == "1"


def wrap(value, width):
    """``value`` as a signed ``width``-bit two's-complement integer."""
    value &= (1 << width) - 1
    return value - (1 << width) if value >> (width - 1) else value


class StreamDriver:
    """Drives ``valid``/``payload`` of a stream, idle with probability ``idle`` before each
    sample; holds a sample until the DUT takes it."""

    def __init__(self, clk, stream, rng, idle):
        self.clk, self.valid, self.ready, self.payload = clk, *stream
        self.rng, self.idle = rng, idle
        self.idles = 0

    async def send(self, samples):
        width = len(self.payload)
        for sample in samples:
            while self.rng.random() < self.idle:
                self.valid.value = 0
                self.idles += 1
                await RisingEdge(self.clk)
            self.payload.value = int(sample) & ((1 << width) - 1)
            self.valid.value = 1
            while True:
                await ReadOnly()
                taken = bool(self.ready.value)
                await RisingEdge(self.clk)
                if taken:
                    break
        self.valid.value = 0


class StreamSink:
    """Drives ``ready`` of a stream: low with probability ``stall`` each cycle."""

    def __init__(self, clk, ready, rng, stall):
        self.clk, self.ready, self.rng, self.stall = clk, ready, rng, stall

    async def run(self):
        while True:
            self.ready.value = int(self.rng.random() >= self.stall)
            await RisingEdge(self.clk)


class StreamMonitor:
    """Records the payload of every transfer (``valid & ready`` before a clock edge) and
    counts stalled cycles (``valid & ~ready``)."""

    def __init__(self, clk, stream):
        self.clk, self.valid, self.ready, self.payload = clk, *stream
        self.values, self.stalls = [], 0

    async def run(self):
        while True:
            await ReadOnly()            # the settled state of this cycle, before its edge
            if self.valid.value and self.ready.value:
                self.values.append(self.payload.value.to_signed())
            elif self.valid.value:
                self.stalls += 1
            await RisingEdge(self.clk)


def running_sum_model(samples, width):
    """The reference: the running sum of ``samples``, wrapped to ``width`` bits."""
    sums = [wrap(int(s), width) for s in np.cumsum(np.asarray(samples, dtype=np.int64))]
    if BUG:
        sums[len(sums) // 2] += 1
    return sums


class RunningSumBench:
    """Driver, sink, monitors, model and checker around one running-sum DUT."""

    def __init__(self, dut, rng, *, idle, stall):
        self.dut = dut
        self.driver = StreamDriver(dut.clk, (dut.i__valid, dut.i__ready, dut.i__payload),
                                   rng, idle)
        self.sink = StreamSink(dut.clk, dut.o__ready, rng, stall)
        self.inputs = StreamMonitor(dut.clk, (dut.i__valid, dut.i__ready, dut.i__payload))
        self.outputs = StreamMonitor(dut.clk, (dut.o__valid, dut.o__ready, dut.o__payload))

    async def reset(self):
        self.dut.rst.value = 1
        self.dut.i__valid.value = 0
        self.dut.o__ready.value = 0
        for _ in range(2):
            await RisingEdge(self.dut.clk)
        self.dut.rst.value = 0

    async def run(self, samples):
        await self.reset()
        for part in (self.sink, self.inputs, self.outputs):
            cocotb.start_soon(part.run())
        await self.driver.send(samples)
        for _ in range(100 * len(samples)):
            if len(self.outputs.values) == len(samples):
                break
            await RisingEdge(self.dut.clk)

    def check(self, samples):
        width = len(self.dut.o__payload)
        assert self.inputs.values == [int(s) for s in samples], "input monitor disagrees"
        expected = running_sum_model(samples, width)
        got = self.outputs.values
        assert len(got) == len(expected), f"{len(got)} outputs for {len(expected)} inputs"
        for index, (g, e) in enumerate(zip(got, expected)):
            assert g == e, f"output {index}: got {g}, expected {e}"


@cocotb.test()
@cocotb.parametrize(idle=[0.0, 0.5], stall=[0.0, 0.5])
async def running_sum_random(dut, idle, stall):
    """Random samples under idle/back-pressure patterns, against the model."""
    Clock(dut.clk, 10, unit="ns").start()
    rng = np.random.default_rng(cocotb.RANDOM_SEED)
    width = len(dut.i__payload)
    low, high = -(1 << (width - 1)), 1 << (width - 1)
    # Mostly large samples of one sign, so the sum wraps often.
    samples = rng.integers(low, high, COUNT)
    samples[: COUNT // 2] = rng.integers(high // 2, high, COUNT // 2)
    bench = RunningSumBench(dut, rng, idle=idle, stall=stall)
    await bench.run(samples)
    bench.check(samples)
    # Coverage: the patterns happened and the sum wrapped.
    sums = np.cumsum(samples.astype(np.int64))
    out_width = len(dut.o__payload)
    assert np.any(np.abs(sums) >= 1 << (out_width - 1)), "the running sum never wrapped"
    if stall:
        assert bench.outputs.stalls > 0, "no back-pressure happened"
    if idle:
        assert bench.driver.idles > 0, "the driver was never idle"
