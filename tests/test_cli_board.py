"""`systolic emit` and `systolic program` (systolic/cli_board.py); `systolic build` runs in
tests/boards/test_build.py."""

import os
import re
import stat
import sys

import pytest

from systolic.cli import main


def test_emit_accelerator_verilog(tmp_path, capsys):
    out = tmp_path / "accel.v"
    assert main(["emit", "mnist-tiny", "--array", "2x2", "-o", str(out)]) == 0
    text = out.read_text()
    assert "module top(" in text
    assert "SB_MAC16" not in text                 # inferred multipliers
    line = capsys.readouterr().out
    assert "accelerator of mnist-tiny on a 2x2 array" in line


def test_emit_board_top_rtlil(tmp_path, capsys):
    out = tmp_path / "top.il"
    assert main(["emit", "mnist-tiny", "--board", "icebreaker", "--what", "top",
                 "--format", "rtlil", "--name", "board", "-o", str(out)]) == 0
    text = out.read_text()
    assert "module \\board" in text
    head = text[text.index("module \\board"):]
    for width, direction, port in ((1, "input", "rx"), (1, "output", "tx"),
                                   (3, "output", "leds")):
        assert re.search(rf"wire width {width} {direction} \d+ +\\{port}\n", head), port
    # the board's preset: 8x2 packed SB_MAC16 (modelled in fabric without a platform)
    assert ("top of mnist-tiny on a 8x2 array (os, broadcast, sb_mac16 multipliers, "
            "weights in spram, queues in memory)") in capsys.readouterr().out


def test_emit_rejects_a_bad_array(tmp_path, capsys):
    assert main(["emit", "mnist-tiny", "--array", "0x2", "-o", str(tmp_path / "x.v")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("systolic: error: ") and len(err.strip().splitlines()) == 1


def _fake_tool(path, body):
    path.write_text(f"#!{sys.executable}\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_program_without_a_bitstream(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["program", "--board", "icebreaker"]) == 1
    err = capsys.readouterr().err
    assert err == ("systolic: error: bitstream build/icebreaker-lenet5/top.bin not found: "
                   "run systolic build --board icebreaker first, or name the file\n")


@pytest.mark.parametrize("board, tool, var", [("icebreaker", "iceprog", "ICEPROG"),
                                              ("ulx3s-85f", "openFPGALoader",
                                               "OPENFPGALOADER")])
def test_program_without_the_tool(tmp_path, monkeypatch, capsys, board, tool, var):
    bit = tmp_path / "top.bin"
    bit.write_bytes(b"\0" * 16)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv(var, raising=False)
    assert main(["program", "--board", board, str(bit)]) == 1
    err = capsys.readouterr().err
    assert err == (f"systolic: error: programmer {tool} not found on PATH (or set {var} "
                   f"to its path): install it to program the {board}\n")


def test_program_with_no_board_attached(tmp_path, monkeypatch, capsys):
    """A programmer that finds no board (exit status 2, like iceprog's "Can't find iCE
    FTDI USB device"): one clear line, status 1, no traceback."""
    bit = tmp_path / "top.bin"
    bit.write_bytes(b"\0" * 16)
    tool = _fake_tool(tmp_path / "iceprog", "import sys; print(\"Can't find iCE FTDI USB "
                                            "device\", file=sys.stderr); sys.exit(2)")
    monkeypatch.setenv("ICEPROG", str(tool))
    assert main(["program", "--board", "icebreaker", str(bit)]) == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("systolic: error: ") and "exit status 2" in last
    assert "Traceback" not in err


def test_program_runs_the_boards_programmer(tmp_path, monkeypatch, capsys):
    """iCEBreaker: amaranth-boards runs ``iceprog BITSTREAM``; the fake records it."""
    bit = tmp_path / "top.bin"
    bit.write_bytes(b"bitstream bytes")
    log = tmp_path / "calls"
    tool = _fake_tool(tmp_path / "iceprog",
                      f"import sys, pathlib; pathlib.Path({str(log)!r}).write_text("
                      f"repr(sys.argv[1:]) + open(sys.argv[-1], 'rb').read().decode())")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("ICEPROG", raising=False)
    assert main(["program", "--board", "icebreaker", str(bit)]) == 0
    calls = log.read_text()
    assert calls.endswith("bitstream bytes")
    assert "programmed" in capsys.readouterr().out


def test_build_with_an_unreachable_clock_is_one_line(tmp_path, capsys):
    """--clock sets the PLL; a frequency it cannot make is refused before any tool runs."""
    assert main(["build", "--board", "icebreaker", "--network", "mnist-tiny", "--preset",
                 "default", "--clock", "900", "-o", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert err == ("systolic: error: The iCE40 PLL cannot make 900 MHz from 12 MHz (at best "
                   "528.000 MHz)\n")
    assert not (tmp_path / "b" / "top.il").exists()


def test_program_icesugar_without_icesprog(tmp_path, monkeypatch, capsys):
    """A programmer amaranth-boards runs from PATH only: the message names no variable."""
    bit = tmp_path / "top.bin"
    bit.write_bytes(b"\0")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert main(["program", "--board", "icesugar", str(bit)]) == 1
    assert capsys.readouterr().err == ("systolic: error: programmer icesprog not found on "
                                       "PATH: install it to program the icesugar\n")
