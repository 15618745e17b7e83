"""cocotb testbench of the whole-network accelerator (:class:`systolic.rtl.accelerator.Accelerator`).

The bench is the simulator half of :func:`systolic.sim.accel.simulate`, which writes its
settings and inputs into the run folder, runs this module under cocotb, and compares what
the bench recorded with the golden model (the model and the checker live there; this side
is driver, sink and monitors, and checks the stream protocol).

A *fast harness*: once after reset, Python sends the weights through the ``w`` stream if
the caller asks (always for SPRAM weight memory, which starts empty); then, per batch of
``C`` images, Python drives the input stream (one beat per element, plus seeded random gaps
if asked), then lets the design run free until the output stream becomes valid, the clock
generated inside the simulation (the ``harness`` wrapper of
:func:`systolic.sim.accel.clocked_verilog`, or cocotb's C++ GPI clock): no Python runs per
cycle.  Python wakes up again only for the output beats (with seeded random
back-pressure if asked) and, with the layer check, once per step to read the step's output
tensor out of the activation banks through hierarchical handles (``bank_j[addr]``).
``busy`` is watched by value-change callbacks, so the compute cycles are measured from
simulated time as well as read from the design's own counters.

Run folder (``$SYSTOLIC_ACCEL_RUN``)
------------------------------------
``accel.json`` (written by the caller)
    ``lanes`` (``C``), ``act_width``, ``input_words``, ``output_words``, ``layers``,
    ``act_words``, ``steps`` (``layer``, ``tensor``, ``out_base``, ``size`` per step),
    ``modes`` (one :data:`~systolic.rtl.requant.MODE` value per layer), ``seed``,
    ``check_layers``, ``gap``, ``stall`` (probabilities of an idle input cycle and of a
    stalled output cycle), ``traffic_seed``, ``load_timeout_cycles`` and
    ``timeout_cycles`` (the longest a batch's load and its run may take),
    ``weights`` (whether ``weights.json`` holds weight-stream beats to send before the
    first batch), ``weight_timeout_cycles``, ``period_ns``, ``clock`` (``"model"``: the
    design generates its clock; ``"gpi"``: the bench starts cocotb's GPI clock),
    ``dut_path`` (the accelerator's instance under the top level, ``""`` if it is the top
    level).
``inputs.npy`` (written by the caller)
    ``(N, input_words)`` int64, the flat input tensors.
``weights.json`` (written by the caller, with ``weights``)
    The ``w`` stream's payloads (:func:`systolic.rtl.accelerator.weight_beats` packed by
    :func:`systolic.sim.accel.weight_payloads`) as hexadecimal strings, sent once after
    reset (with the same gap probability as the input stream).
``weights_loaded.json`` (written here, with ``weights``)
    ``beats``, ``cycles``, ``gaps``, ``wall_seconds`` of the weight load.
``batch_NNNN.npz`` (written here, one per batch)
    ``outputs`` ``(C, output_words)``, ``cycles``, ``layer_cycles``, ``beats``,
    ``saturations``, ``busy_cycles`` (measured from simulated time), ``load_cycles``,
    ``output_cycles``, ``gaps``, ``stalls``, ``wall_seconds``, ``compute_seconds`` and, with
    the layer check, ``tensor_T`` ``(C, size)`` for every stored tensor ``T``.
``progress.jsonl`` (appended here, one line per finished batch)
    ``batch``, ``batches``, ``images``, ``cycles``, ``busy_cycles``, ``wall_seconds``.
"""

import json
import os
import time
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.handle import Immediate
from cocotb.simtime import get_sim_time
from cocotb.triggers import (FallingEdge, First, ReadOnly, RisingEdge, SimTimeoutError,
                             with_timeout)

COUNTER_WIDTH = 32


def _signed(value, width):
    value &= (1 << width) - 1
    return value - (1 << width) if value >> (width - 1) else value


def _fields(value, width, count):
    mask = (1 << width) - 1
    return [(value >> (k * width)) & mask for k in range(count)]


def _willing(probability, rng):
    """Per cycle: is the driver (or sink) willing?  Never idle when ``probability`` is 0."""
    if probability <= 0:
        return lambda: True
    return lambda: rng.random() >= probability


class StreamDriver:
    """Drives an input stream of the accelerator (``i``: one beat per input element, lane
    ``j`` = image ``j``; ``w``: one weight or bias word per beat), with a seeded random idle
    cycle before a beat with probability ``gap``."""

    def __init__(self, dut, willing, name="i"):
        self.dut, self.willing, self.name = dut, willing, name
        self.gaps = self.sent = 0

    async def send(self, beats):
        dut = self.dut
        clk = dut.clk
        valid = getattr(dut, f"{self.name}__valid")
        ready = getattr(dut, f"{self.name}__ready")
        payload = getattr(dut, f"{self.name}__payload")
        for beat in beats:
            while not self.willing():
                valid.value = 0
                self.gaps += 1
                await RisingEdge(clk)
            payload.value = beat
            valid.value = 1
            while True:
                await ReadOnly()
                taken = bool(ready.value)
                await RisingEdge(clk)
                if taken:
                    break
            self.sent += 1
        valid.value = 0


#: The input stream's driver (a :class:`StreamDriver` of ``i``).
InputDriver = StreamDriver


class OutputSink:
    """Drives ``o.ready`` (seeded random back-pressure) and records the output beats,
    checking that ``last`` marks exactly the final one and counting stalled cycles."""

    def __init__(self, dut, willing, lanes, width, words):
        self.dut, self.willing = dut, willing
        self.lanes, self.width, self.words = lanes, width, words
        self.stalls = 0

    async def receive(self):
        dut = self.dut
        clk, valid, ready, payload = dut.clk, dut.o__valid, dut.o__ready, dut.o__payload
        out = np.zeros((self.lanes, self.words), dtype=np.int64)
        e = 0
        ready.value = 0
        while e < self.words:
            willing = self.willing()
            ready.value = int(willing)
            await ReadOnly()
            if valid.value:
                if willing:
                    raw = int(payload.value)
                    values = _fields(raw, self.width, self.lanes)
                    last = (raw >> (self.lanes * self.width)) & 1
                    out[:, e] = [_signed(v, self.width) for v in values]
                    e += 1
                    assert last == (e == self.words), \
                        f"output beat {e - 1} of {self.words}: last={last}"
                else:
                    self.stalls += 1
            await RisingEdge(clk)
        ready.value = 0
        return out


async def settled(edge, signal, value):
    """Wait for ``edge`` of ``signal`` after which it stays at ``value`` when the time step
    settles (in the read-only phase).  Icarus reports every assignment to a signal that an
    ``always @*`` block computes, including a zero-width glitch inside one time step (the
    block first assigns the default, then the value), so an edge alone is not enough."""
    while True:
        await edge(signal)
        await ReadOnly()
        if int(signal.value) == value:
            return


class LayerMonitor:
    """Reads each step's output tensor out of the activation banks when the step is
    complete: when ``step`` moves on, or ``busy`` falls after the last step.  The next step
    writes the other region, so the tensor is intact; the simulation waits while Python
    reads (no simulated time passes)."""

    def __init__(self, dut, settings):
        self.dut = dut
        self.steps = settings["steps"]
        self.width = settings["act_width"]
        scope = getattr(dut, settings["dut_path"]) if settings["dut_path"] else dut
        self.banks = [getattr(scope, f"bank_{j}") for j in range(settings["lanes"])]
        self.tensors = {}

    def read(self, n):
        s = self.steps[n]
        base, size = s["out_base"], s["size"]
        t = np.zeros((len(self.banks), size), dtype=np.int64)
        for j, bank in enumerate(self.banks):
            t[j] = [_signed(int(bank[base + e].value), self.width) for e in range(size)]
        self.tensors[s["tensor"]] = t

    async def run(self):
        """From the start of a run (``busy`` has risen, step 0 is running) to its end."""
        dut = self.dut
        n = 0
        while True:
            await First(dut.step.value_change, dut.busy.value_change)
            await ReadOnly()
            busy, step = int(dut.busy.value), int(dut.step.value)
            if busy and step == n:
                continue                    # a glitch (see settled)
            self.read(n)
            if not busy:
                return
            assert step == n + 1, f"step went from {n} to {step}"
            n = step


class AccelBench:
    """Driver, sink and monitors around one accelerator; the caller is model and checker."""

    def __init__(self, dut, settings, run_dir):
        self.dut, self.s, self.run_dir = dut, settings, Path(run_dir)
        rng = np.random.default_rng(settings["traffic_seed"])
        self.driver = StreamDriver(dut, _willing(settings["gap"], rng), "i")
        # the weight stream's gaps come from their own generator, so loading weights does
        # not change the input and output traffic of a seed
        wrng = np.random.default_rng([settings["traffic_seed"], 1])
        self.weight_driver = StreamDriver(dut, _willing(settings["gap"], wrng), "w")
        self.sink = OutputSink(dut, _willing(settings["stall"], rng), settings["lanes"],
                               settings["act_width"], settings["output_words"])
        self.period = settings["period_ns"]

    def cycle_now(self):
        return get_sim_time("ns") / self.period

    async def reset(self):
        dut, s = self.dut, self.s
        dut.rst.value = 1
        dut.i__valid.value = 0
        dut.o__ready.value = 0
        dut.w__valid.value = 0
        dut.rounding.value = sum(m << (2 * j) for j, m in enumerate(s["modes"]))
        dut.seed.value = s["seed"]
        for _ in range(3):
            await RisingEdge(dut.clk)
        dut.rst.value = 0
        await RisingEdge(dut.clk)

    async def load_weights(self, beats):
        """Send the weight stream's ``beats`` (ints) before the first run; returns a dict
        for ``weights_loaded.json``."""
        wall = time.perf_counter()
        start = self.cycle_now()
        try:
            await with_timeout(self.weight_driver.send(beats),
                               self.s["weight_timeout_cycles"] * self.period, "ns")
        except SimTimeoutError:
            raise AssertionError(f"the accelerator took {self.weight_driver.sent} of "
                                 f"{len(beats)} weight beats in "
                                 f"{self.s['weight_timeout_cycles']} cycles") from None
        return {"beats": len(beats), "cycles": round(self.cycle_now() - start),
                "gaps": self.weight_driver.gaps,
                "wall_seconds": time.perf_counter() - wall}

    def beats(self, batch):
        """Input beats: element ``e`` of every lane packed into one integer."""
        width, mask = self.s["act_width"], (1 << self.s["act_width"]) - 1
        words = (batch & mask).astype(object)
        shifts = [1 << (j * width) for j in range(batch.shape[0])]
        return [sum(int(words[j, e]) * shifts[j] for j in range(batch.shape[0]))
                for e in range(batch.shape[1])]

    async def run_batch(self, batch, images):
        """One run: load ``batch`` ``(C, input_words)`` (``images`` real lanes), let it
        compute, read the outputs and counters.  Returns a dict for ``batch_NNNN.npz``."""
        dut, s = self.dut, self.s
        L = s["layers"]
        wall = time.perf_counter()
        dut.images.value = images
        gaps0 = self.driver.gaps
        self.driver.sent = 0
        monitor = None
        t_load = self.cycle_now()
        if s["check_layers"]:
            monitor = LayerMonitor(dut, s)

        async def watch_busy():
            await settled(RisingEdge, dut.busy, 1)
            began = self.cycle_now()
            task = cocotb.start_soon(monitor.run()) if monitor else None
            await settled(FallingEdge, dut.busy, 0)
            ended = self.cycle_now()
            if task is not None:
                await task
            return began, ended

        watcher = cocotb.start_soon(watch_busy())
        try:
            await with_timeout(self.driver.send(self.beats(batch)),
                               s["load_timeout_cycles"] * self.period, "ns")
        except SimTimeoutError:
            raise AssertionError(f"the accelerator took {self.driver.sent} of "
                                 f"{batch.shape[1]} input beats in "
                                 f"{s['load_timeout_cycles']} cycles") from None
        t_loaded = self.cycle_now()
        compute_wall = time.perf_counter()
        # the design runs free until its output is valid
        try:
            if not int(dut.o__valid.value):
                await with_timeout(RisingEdge(dut.o__valid),
                                   s["timeout_cycles"] * self.period, "ns")
            began, ended = await with_timeout(watcher, 10 * self.period, "ns")
        except SimTimeoutError:
            raise AssertionError(
                f"the accelerator did not finish its run in {s['timeout_cycles']} cycles "
                f"(busy={dut.busy.value}, step={dut.step.value}, "
                f"cycles={int(dut.cycles.value)})") from None
        compute_wall = time.perf_counter() - compute_wall
        t_out = self.cycle_now()
        outputs = await self.sink.receive()
        t_done = self.cycle_now()
        counters = {
            "cycles": int(dut.cycles.value),
            "layer_cycles": _fields(int(dut.layer_cycles.value), COUNTER_WIDTH, L),
            "beats": int(dut.beats.value),
            "saturations": _fields(int(dut.saturations.value), COUNTER_WIDTH, L),
        }
        result = {
            "outputs": outputs, **counters,
            "busy_cycles": round(ended - began),
            "load_cycles": round(t_loaded - t_load),
            "output_cycles": round(t_done - t_out),
            "gaps": self.driver.gaps - gaps0,
            "stalls": self.sink.stalls,
            "wall_seconds": time.perf_counter() - wall,
            "compute_seconds": compute_wall,
            "sim_cycles": round(t_done - t_load),
        }
        self.sink.stalls = 0
        if monitor is not None:
            for t, value in monitor.tensors.items():
                result[f"tensor_{t}"] = value
        return result


@cocotb.test()
async def run_batches(dut):
    """Every batch of the run folder's inputs through the accelerator."""
    run_dir = Path(os.environ["SYSTOLIC_ACCEL_RUN"])
    settings = json.loads((run_dir / "accel.json").read_text())
    inputs = np.load(run_dir / "inputs.npy")
    C = settings["lanes"]
    if settings["clock"] == "gpi":
        Clock(dut.clk, settings["period_ns"], unit="ns", impl="gpi",
              set_action=Immediate).start()
    bench = AccelBench(dut, settings, run_dir)
    await bench.reset()
    if settings["weights"]:
        beats = [int(h, 16) for h in json.loads((run_dir / "weights.json").read_text())]
        done = await bench.load_weights(beats)
        path = run_dir / "weights_loaded.json"
        path.with_suffix(".tmp").write_text(json.dumps(done))
        os.replace(path.with_suffix(".tmp"), path)
    batches = -(-len(inputs) // C)
    progress = run_dir / "progress.jsonl"
    for k in range(batches):
        part = inputs[k * C:(k + 1) * C]
        batch = np.zeros((C, settings["input_words"]), dtype=np.int64)
        batch[:len(part)] = part
        result = await bench.run_batch(batch, len(part))
        path = run_dir / f"batch_{k:04d}.npz"
        np.savez(path.with_suffix(".tmp.npz"), **result)
        os.replace(path.with_suffix(".tmp.npz"), path)
        with open(progress, "a") as f:
            f.write(json.dumps({"batch": k, "batches": batches, "images": len(part),
                                "cycles": result["cycles"],
                                "busy_cycles": result["busy_cycles"],
                                "wall_seconds": result["wall_seconds"]}) + "\n")
