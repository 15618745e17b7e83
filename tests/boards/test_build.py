"""Bitstream builds (boards/build.py): the report's parsing and table, fit errors before
any tool runs, and (slow) real builds of the iCEBreaker and ULX3S-25F held to the floors
that the README states (its ``build-floors`` table)."""

import json
import re
from pathlib import Path

import pytest

from systolic.boards.build import BuildReport, build, parse_nextpnr_report
from systolic.boards.targets import board
from systolic.golden import models
from systolic.golden.errors import ConstraintError
from systolic.rtl.compiler import ArrayConfig, compile_network

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_floors():
    """``(board, network, preset, dsp, fmax_mhz)`` rows of the README's floor table."""
    text = README.read_text()
    block = text[text.index("<!-- build-floors -->"):text.index("<!-- /build-floors -->")]
    rows = []
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 5 and re.fullmatch(r"\d+", cells[3]):
            rows.append((cells[0], cells[1], cells[2], int(cells[3]), float(cells[4])))
    return rows


def test_readme_states_floors_for_both_families():
    floors = {r[0]: r for r in readme_floors()}
    assert board("icebreaker").name in floors and "ulx3s-25f" in floors
    assert all(r[3] > 0 and r[4] > 0 for r in floors.values())


#: nextpnr logs that stop a build, and the one line each becomes: an overfull device, and
#: a design that fits on paper but not for the placer (lenet5 on the 8x2 preset, 99.8%)
NEXTPNR_STOPS = [
    ("7065/   5280   133%", "28/     30    93%",
     "ERROR: Unable to place cell 'x', no BELs remaining",
     r"^net on a 8x2 array with the link needs 7,065 logic cells \(ICESTORM_LC\) after "
     r"synthesis; iCE40UP5K has 5,280; a smaller preset: 4x2$"),
    ("5272/   5280    99%", "18/     30    60%",
     "ERROR: Unable to find legal placement for all cells, design is probably at "
     "utilisation limit.",
     r"^net on a 8x2 array with the link takes 5,272 of the 5,280 logic cells "
     r"\(ICESTORM_LC\) of iCE40UP5K, too full for nextpnr to place; a smaller preset: "
     r"4x2$"),
]


@pytest.mark.parametrize("lc,ram,error,match", NEXTPNR_STOPS, ids=["overfull", "unplaceable"])
def test_nextpnr_stopping_is_a_constraint_error(tmp_path, lc, ram, error, match):
    """nextpnr stopping on a full device becomes one line that names the use."""
    from systolic.boards.build import _overfull
    log = tmp_path / "nextpnr.log"
    log.write_text(f"Info: Device utilisation:\n"
                   f"Info: \t         ICESTORM_LC:    {lc}\n"
                   f"Info: \t        ICESTORM_RAM:      {ram}\n{error}\n")
    target = board("icebreaker")
    with pytest.raises(ConstraintError, match=match):
        _overfull(log, target, target.preset("8x2"), "net")


NEXTPNR_REPORT = {
    "utilization": {"ICESTORM_LC": {"used": 5000, "available": 5280},
                    "ICESTORM_DSP": {"used": 8, "available": 8},
                    "ICESTORM_RAM": {"used": 28, "available": 30},
                    "ICESTORM_SPRAM": {"used": 4, "available": 4},
                    "SB_IO": {"used": 6, "available": 39}},
    "fmax": {"pll_clk": {"achieved": 38.5, "constraint": 42.0},
             "clk12_0__io": {"achieved": 200.1, "constraint": 12.0}},
}


def test_parse_nextpnr_report_flags_a_failing_clock():
    util, fmax = parse_nextpnr_report(NEXTPNR_REPORT, "ice40")
    assert util["logic cells"] == {"used": 5000, "available": 5280}
    assert util["DSP"]["used"] == 8 and util["SPRAM"]["available"] == 4
    assert fmax["pll_clk"] == {"achieved_mhz": 38.5, "constraint_mhz": 42.0, "met": False}
    assert fmax["clk12_0__io"]["met"]
    report = BuildReport("icebreaker", "iCE40UP5K", "net",
                         {"rows": 8, "cols": 2, "multiplier": "sb_mac16",
                          "weight_memory": "spram", "macs_per_cycle": 16},
                         {"target_mhz": 42.0, "pll_mhz": 42.0, "baud": 1e6},
                         cells={"LUT": 4000, "FF": 3000, "carry": 900},
                         utilization=util, fmax=fmax, seconds={"total": 1.0})
    assert not report.timing_met
    assert report.accelerator_fmax_mhz == 38.5
    table = "\n".join(report.table())
    assert "clock pll_clk: Fmax 38.50 MHz, constraint 42.00 MHz: FAILS" in table
    assert re.search(r"logic cells +5,000 +5,280 +94.7%", table)
    again = BuildReport.from_json(report.to_json())
    assert again == report and json.loads(report.to_json())["timing_met"] is False


def test_a_network_that_does_not_fit_is_refused_before_any_tool(tmp_path):
    program = compile_network(models.load("lenet5"), ArrayConfig(rows=8, cols=8))
    with pytest.raises(ConstraintError, match=r"needs 64 DSP blocks; iCE40UP5K has 8"):
        build(program, "icebreaker", out_dir=tmp_path, progress=None)
    assert not any(tmp_path.iterdir())             # nothing elaborated or run


@pytest.mark.slow
@pytest.mark.parametrize("row", readme_floors(), ids=lambda r: f"{r[0]}-{r[1]}-{r[2]}")
def test_build_meets_the_readme_floors(row, tmp_path):
    """A full build (yosys, nextpnr, pack): the bitstream exists, every DSP the preset
    needs is placed, and the PLL clock's Fmax is at least the README's floor.  Takes
    about 3 minutes (iCEBreaker) and 4 minutes (ULX3S-25F) on 2 loaded cores."""
    name, network, preset, dsp_floor, fmax_floor = row
    target = board(name)
    program = compile_network(models.load(network), target.preset(preset))
    lines = []
    report = build(program, target, out_dir=tmp_path, progress=lines.append)
    print("\n".join(lines + report.table()))
    assert Path(report.bitstream).stat().st_size > 0
    assert report.utilization["DSP"]["used"] >= dsp_floor, report.utilization
    assert report.cells["DSP"] == report.utilization["DSP"]["used"]
    assert report.accelerator_fmax_mhz >= fmax_floor, report.fmax
    assert json.loads((tmp_path / "report.json").read_text())["board"] == name
