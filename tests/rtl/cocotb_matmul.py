"""cocotb testbench: :class:`systolic.rtl.matmul.RequantizedArray` (the systolic array with
its requantization lanes) against the golden model, bit-exact, for random matrix products.

Each product ``Y = A @ B`` is one tile: ``R x K`` by ``K x C`` output-stationary, ``M x R``
by ``R x C`` weight-stationary (``K <= R`` with the weight rows beyond ``K`` zero).  The
expected output row is golden ``requantize(A @ B + bias, shift, mode, out, lo, hi, seed=,
layer=, index=)`` with ``index = base + i * row_stride + j`` (the product sits at ``base``
in a row-major layer output with rows ``row_stride`` apart).  Products come in "layers" of
random run-time settings (output format, shift, rounding mode, fused activation, seed and
layer of the stochastic-rounding keys, row stride), changed only while the unit is idle.

The bench is driver (random idle cycles on ``i`` and ``w``), sink (back-pressure on
``o``), monitor (every transfer on ``o``), model (golden) and checker, as in
tests/sim/cocotb_smoke.py.  Payloads are packed and unpacked with the component's own
Amaranth layouts (``layout.const(...)`` / ``layout.from_bits(...)``), so the bench follows
the design's port layout.

Settings (environment, set by tests/rtl/test_matmul_cocotb.py): ``MM_ROWS``, ``MM_COLS``,
``MM_DATAFLOW``, ``MM_OUT_WIDTH``, ``MM_PRODUCTS`` (products per run, split over the
traffic patterns), ``MM_KMAX`` (longest output-stationary reduction).
"""

import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from systolic.golden import srgen
from systolic.golden.ops import clamp_bounds
from systolic.golden.qformat import QFormat
from systolic.golden.rounding import ROUNDING_MODES, requantize
from systolic.rtl.matmul import RequantizedArray
from systolic.rtl.requant import requant_config
from systolic.sim.streams import pattern

ROWS = int(os.environ.get("MM_ROWS", "4"))
COLS = int(os.environ.get("MM_COLS", "4"))
DATAFLOW = os.environ.get("MM_DATAFLOW", "os")
OUT_WIDTH = int(os.environ.get("MM_OUT_WIDTH", "8"))
PRODUCTS = int(os.environ.get("MM_PRODUCTS", "200"))
KMAX = int(os.environ.get("MM_KMAX", "12"))

#: Traffic: (idle pattern on the inputs, stall pattern on the output), STYLE.md rule 14.
TRAFFIC = {"steady": ("none", "none"), "bursty": ("1110", "p0.5"),
           "gappy": ("p0.5", "1110"), "choked": ("p0.1", "p0.9")}
#: Rounding outcomes over the whole run: see Model._cover.
COVERAGE = dict.fromkeys(["saturated", "up", "down", "exact", "left"], 0)
#: Products per layer (one setting of config, keys and stride).
PER_LAYER = 8


def unit():
    """The component the pytest side built (the same parameters), for its layouts."""
    return RequantizedArray(rows=ROWS, cols=COLS, dataflow=DATAFLOW, out_width=OUT_WIDTH)


def port(dut, name):
    """A top-level port; ``config`` is a Verilog keyword, emitted as ``\\config``."""
    try:
        return getattr(dut, name)
    except AttributeError:
        return dut[f"\\{name} "]


class StreamDriver:
    """Drives ``valid``/``payload`` of a stream; idle while the ``idle`` pattern says so
    before each beat, then holds the beat until the DUT takes it."""

    def __init__(self, clk, valid, ready, payload, willing):
        self.clk, self.valid, self.ready, self.payload = clk, valid, ready, payload
        self.willing = willing
        self.idles = self.sent = 0

    async def send(self, beats):
        for beat in beats:
            while not next(self.willing):
                self.valid.value = 0
                self.idles += 1
                await RisingEdge(self.clk)
            self.payload.value = beat
            self.valid.value = 1
            while True:
                await ReadOnly()
                taken = bool(self.ready.value)
                await RisingEdge(self.clk)
                if taken:
                    break
            self.sent += 1
        self.valid.value = 0


class StreamSink:
    """Drives ``ready`` of the output by the ``stall`` pattern."""

    def __init__(self, clk, ready, willing):
        self.clk, self.ready, self.willing = clk, ready, willing

    async def run(self):
        while True:
            self.ready.value = int(next(self.willing))
            await RisingEdge(self.clk)


class StreamMonitor:
    """Records every transfer's raw payload and counts stalled cycles."""

    def __init__(self, clk, valid, ready, payload):
        self.clk, self.valid, self.ready, self.payload = clk, valid, ready, payload
        self.values, self.stalls = [], 0

    async def run(self):
        while True:
            await ReadOnly()
            if self.valid.value and self.ready.value:
                self.values.append(int(self.payload.value))
            elif self.valid.value:
                self.stalls += 1
            await RisingEdge(self.clk)


class Model:
    """Random products and layer settings, and the golden result of each."""

    def __init__(self, rng, dut_unit):
        self.rng, self.unit = rng, dut_unit
        self.i_layout = dut_unit.i.payload.shape()
        self.w_layout = dut_unit.w.payload.shape() if DATAFLOW == "ws" else None
        self.config_layout = dut_unit.config.shape()
        self.coverage = dict.fromkeys(["saturated", "up", "down", "exact", "left"], 0)
        self.modes = set()

    def layer(self, mode):
        """Random run-time settings of one layer with rounding ``mode``."""
        rng = self.rng
        out = QFormat(int(rng.integers(4, OUT_WIDTH + 1)), int(rng.integers(-2, 6)))
        lo, hi = clamp_bounds(str(rng.choice(["none", "none", "relu", "clip"])),
                              float(rng.uniform(0.5, 4)), out)
        # Around the shift that maps typical sums onto the format, with left shifts and
        # shifts large enough to round nearly everything away.
        k = KMAX if DATAFLOW == "os" else ROWS
        typical = int(np.log2(1 << 12) + np.log2(max(k, 1)) / 2) - out.width + 3
        shift = int(np.clip(typical + rng.integers(-5, 6), -3, self.unit.max_shift))
        if rng.random() < 0.1:
            shift = int(rng.integers(-3, 1))
        settings = dict(out=out, lo=lo, hi=hi, shift=shift, mode=mode,
                        seed=int(rng.integers(0, 2**32)), layer=int(rng.integers(0, 2**16)),
                        stride=int(rng.integers(COLS, 4 * COLS + 1)))
        settings["config"] = self.config_layout.const(
            requant_config(shift, mode, out, lo, hi)).as_value().value
        settings["keys"] = sum(k << (srgen.WORD * j)
                               for j, k in enumerate(srgen.round_keys(settings["seed"],
                                                                      settings["layer"])))
        self.modes.add(mode)
        return settings

    def operands(self, width, shape):
        lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
        v = self.rng.integers(lo, hi + 1, shape)
        extreme = self.rng.random(shape) < 0.1           # reach the ends of the range
        return np.where(extreme, self.rng.choice([lo, hi], shape), v)

    def product(self, s):
        """One random product: returns (input beats, weight beats, expected rows)."""
        rng, R, C = self.rng, ROWS, COLS
        if DATAFLOW == "os":
            k = int(rng.integers(1, KMAX + 1))
            a, b = self.operands(8, (R, k)), self.operands(8, (k, C))
        else:
            k = int(rng.integers(1, R + 1))
            m = int(rng.integers(1, 2 * R + 1))
            a = self.operands(8, (m, R))
            b = np.zeros((R, C), dtype=np.int64)
            b[:k] = self.operands(8, (k, C))
        bias = rng.integers(-(1 << 15), 1 << 15, C)
        rows = a.shape[0]
        base = int(rng.integers(0, 2**32 - rows * s["stride"] - C))
        acc = a.astype(np.int64) @ b.astype(np.int64) + bias
        index = base + np.arange(rows)[:, None] * s["stride"] + np.arange(C)[None, :]
        kw = dict(lo=s["lo"], hi=s["hi"], seed=s["seed"], layer=s["layer"], index=index)
        values = requantize(acc, s["shift"], s["mode"], s["out"], **kw)
        flags = np.zeros_like(values)
        for r in range(rows):
            for j in range(C):
                flags[r, j] = requantize(acc[r:r + 1, j], s["shift"], s["mode"], s["out"],
                                         count_saturations=True, lo=s["lo"], hi=s["hi"],
                                         seed=s["seed"], layer=s["layer"],
                                         index=index[r:r + 1, j])[1]
        self._cover(acc, values, s)

        pack = lambda fields: self.i_layout.const(fields).as_value().value  # noqa: E731
        meta = {"bias": [int(v) for v in bias]}
        if DATAFLOW == "os":
            beats = [pack({"a": [int(v) for v in a[:, t]], "b": [int(v) for v in b[t]],
                           "last": int(t == k - 1), **meta, "index": base})
                     for t in range(k)]
            weights = []
        else:
            beats = [pack({"a": [int(v) for v in a[i]], "first": int(i == 0), **meta,
                           "index": base + i * s["stride"]}) for i in range(rows)]
            weights = [self.w_layout.const([int(v) for v in b[r]]).as_value().value
                       for r in range(R)]
        return beats, weights, list(zip(values.tolist(), flags.tolist()))

    def _cover(self, acc, values, s):
        c, shift = self.coverage, s["shift"]
        inside = (values > max(s["out"].min, s["lo"] if s["lo"] is not None else -2**40)) \
            & (values < min(s["out"].max, s["hi"] if s["hi"] is not None else 2**40))
        c["saturated"] += int(np.count_nonzero(~inside))
        if shift <= 0:
            c["left"] += int(np.count_nonzero(inside))
            return
        floor = acc >> shift
        exact = (acc & ((1 << shift) - 1)) == 0
        c["exact"] += int(np.count_nonzero(inside & exact))
        c["up"] += int(np.count_nonzero(inside & ~exact & (values == floor + 1)))
        c["down"] += int(np.count_nonzero(inside & ~exact & (values == floor)))


class MatmulBench:
    """Driver, sink, monitor, model and checker around one RequantizedArray."""

    def __init__(self, dut, rng, idle, stall):
        self.dut, self.rng = dut, rng
        self.unit = unit()
        self.model = Model(rng, self.unit)
        self.o_layout = self.unit.o.payload.shape()
        self.config = port(dut, "config")
        seed = int(rng.integers(0, 2**31))
        self.i_driver = StreamDriver(dut.clk, dut.i__valid, dut.i__ready, dut.i__payload,
                                     pattern(idle, seed))
        self.w_driver = StreamDriver(dut.clk, dut.w__valid, dut.w__ready, dut.w__payload,
                                     pattern(idle, seed + 1)) if DATAFLOW == "ws" else None
        self.sink = StreamSink(dut.clk, dut.o__ready, pattern(stall, seed + 2))
        self.monitor = StreamMonitor(dut.clk, dut.o__valid, dut.o__ready, dut.o__payload)
        self.expected = []
        self.products = 0

    async def reset(self):
        dut = self.dut
        dut.rst.value = 1
        dut.i__valid.value = 0
        if self.w_driver:
            dut.w__valid.value = 0
        dut.o__ready.value = 0
        for _ in range(3):
            await RisingEdge(dut.clk)
        dut.rst.value = 0

    async def run_layer(self, settings, count):
        """Set the layer's run-time inputs (the unit is idle), send ``count`` products and
        wait for all their rows."""
        dut = self.dut
        self.config.value = settings["config"]
        dut.sr_keys.value = settings["keys"]
        if DATAFLOW == "os":
            dut.row_stride.value = settings["stride"]
        beats, weights = [], []
        for _ in range(count):
            b, w, rows = self.model.product(settings)
            beats += b
            weights += w
            self.expected += rows
        self.products += count
        tasks = [cocotb.start_soon(self.i_driver.send(beats))]
        if self.w_driver:
            tasks.append(cocotb.start_soon(self.w_driver.send(weights)))
        for task in tasks:
            await task
        for _ in range(200 + 50 * len(self.expected)):
            if len(self.monitor.values) >= len(self.expected):
                break
            await RisingEdge(dut.clk)
        self.check()

    def check(self):
        got = self.monitor.values
        assert len(got) == len(self.expected), \
            f"{len(got)} output rows for {len(self.expected)} expected"
        for n, (raw, (values, flags)) in enumerate(zip(got, self.expected)):
            row = self.o_layout.from_bits(raw)
            assert list(row.value) == values, \
                f"output row {n}: got {list(row.value)}, expected {values}"
            assert list(row.saturated) == flags, \
                f"output row {n}: saturation flags {list(row.saturated)}, expected {flags}"


@cocotb.test()
@cocotb.parametrize(traffic=list(TRAFFIC))
async def random_products(dut, traffic):
    """Random products, layers cycling through the rounding modes, under idle and
    back-pressure patterns, bit-exact against golden requantize."""
    Clock(dut.clk, 10, unit="ns").start()
    idle, stall = TRAFFIC[traffic]
    rng = np.random.default_rng([cocotb.RANDOM_SEED, list(TRAFFIC).index(traffic)])
    bench = MatmulBench(dut, rng, idle, stall)
    await bench.reset()
    cocotb.start_soon(bench.sink.run())
    cocotb.start_soon(bench.monitor.run())
    total = max(len(ROUNDING_MODES), PRODUCTS // len(TRAFFIC))
    per_layer = min(PER_LAYER, total // len(ROUNDING_MODES))   # every mode at least once
    layer = 0
    while bench.products < total:
        count = min(per_layer, total - bench.products)
        mode = ROUNDING_MODES[layer % len(ROUNDING_MODES)]
        await bench.run_layer(bench.model.layer(mode), count)
        layer += 1
    # nothing more comes out
    for _ in range(bench.unit.latency + 2 * ROWS + 8):
        await RisingEdge(dut.clk)
    bench.check()
    dut._log.info("%s: %d products, %d rows, coverage %s", traffic, bench.products,
                  len(bench.expected), bench.model.coverage)

    # Coverage: every mode and saturation in each test; both rounding directions over
    # the run (checked by its last test); the traffic patterns happened.
    cov = bench.model.coverage
    for key, value in cov.items():
        COVERAGE[key] += value
    assert bench.model.modes == set(ROUNDING_MODES), f"modes seen: {bench.model.modes}"
    assert cov["saturated"] > 0, f"no saturation: coverage {cov}"
    if traffic == list(TRAFFIC)[-1]:
        assert COVERAGE["up"] > 0 and COVERAGE["down"] > 0, f"run coverage {COVERAGE}"
    if stall != "none":
        assert bench.monitor.stalls > 0, "no back-pressure happened"
    if idle != "none":
        assert bench.i_driver.idles > 0, "the input driver was never idle"
