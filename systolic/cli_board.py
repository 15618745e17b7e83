"""``systolic emit``, ``systolic build`` and ``systolic program``: Verilog, bitstreams and
the board's programmer.

``systolic emit lenet5 --board icebreaker --what top -o top.v`` writes the board top (in
its simulation form: ``rx``/``tx``/``leds`` ports on the board clock, no PLL);
``systolic build --board icebreaker`` runs yowasp Yosys, nextpnr and icepack/ecppack and
prints the resource and timing report; ``systolic program --board icebreaker`` loads the
bitstream with the board's programmer (iceprog, openFPGALoader...), through amaranth-boards.
"""

import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from ._common import quantized_network

__all__ = ["add_parsers", "cmd_emit", "cmd_build", "cmd_program"]

#: Environment variables amaranth-boards reads to find a programmer (the others, such as
#: the iCESugar's icesprog, are run from PATH).
PROGRAMMER_ENV = {"iceprog": "ICEPROG", "openFPGALoader": "OPENFPGALOADER"}


def _config(args, target):
    """The array configuration: ``--array`` (with ``--multiplier``/``--dataflow``) or the
    board's preset."""
    from systolic.rtl.compiler import ArrayConfig
    if getattr(args, "array", None):
        try:
            return ArrayConfig.parse_shape(args.array, dataflow=args.dataflow,
                                           multiplier=args.multiplier)
        except TypeError as exc:
            raise ValueError(str(exc)) from None
    return target.preset(args.preset)


def cmd_emit(args):
    from systolic.boards.targets import board
    from systolic.rtl.compiler import compile_network
    from systolic.sim.verilog import emit_rtlil, emit_verilog
    target = board(args.board)
    net = quantized_network(args.network or target.default_network)
    program = compile_network(net, _config(args, target))
    if args.what == "top":
        from systolic.boards.top import BoardTop
        component = BoardTop(program, target=target)
    else:
        from systolic.rtl.accelerator import Accelerator
        component = Accelerator(program)
    emit = emit_verilog if args.format == "verilog" else emit_rtlil
    text = emit(component, name=args.name)
    Path(args.output).write_text(text)
    cfg = program.config
    print(f"{args.output}: {args.what} of {net.name or args.network} on a "
          f"{cfg.describe()}, {args.format}, {len(text.splitlines()):,} lines")
    return 0


def cmd_build(args):
    from systolic.boards.build import build
    from systolic.boards.targets import board
    from systolic.rtl.compiler import compile_network
    target = board(args.board)
    if args.clock is not None:
        # a slower PLL clock than the board's target, e.g. one the design meets
        target = replace(target, clock_mhz=args.clock)
    name = args.network or target.default_network
    program = compile_network(quantized_network(name), _config(args, target))
    out = Path(args.output or Path("build") / f"{target.name}-{name}")
    print(f"systolic build: {name} for {target.name} ({target.device.name}) in {out}",
          flush=True)
    report = build(program, target, out_dir=out, seed=args.seed, baud=args.baud,
                   progress=lambda line: print(line, flush=True))
    print()
    for line in report.table():
        print(line)
    print(f"report: {out / 'report.json'}")
    if not report.timing_met:
        failing = [c for c, v in report.fmax.items() if not v["met"]]
        print(f"systolic: warning: timing fails on {', '.join(failing) or 'no clock'}",
              file=sys.stderr)
    return 0


def _programmer(target):
    """The programmer's executable, or ``None`` with the name it was looked up as."""
    tool = target.programmer
    var = PROGRAMMER_ENV.get(tool)
    name = os.environ.get(var, tool) if var else tool
    return shutil.which(name), name, var


def cmd_program(args):
    from amaranth.build.run import LocalBuildProducts

    from systolic.boards.targets import board
    target = board(args.board)
    ext = ".bin" if target.device.family == "ice40" else ".bit"
    if args.bitstream:
        path = Path(args.bitstream)
    else:
        name = args.network or target.default_network
        path = Path("build") / f"{target.name}-{name}" / f"top{ext}"
    if not path.is_file():
        raise FileNotFoundError(f"bitstream {path} not found: run systolic build --board "
                                f"{target.name} first, or name the file")
    found, name, var = _programmer(target)
    if found is None:
        how = f" (or set {var} to its path)" if var else ""
        raise FileNotFoundError(f"programmer {name} not found on PATH{how}: install it to "
                                f"program the {target.name}")
    # amaranth-boards' toolchain_program: the board's own programmer command line
    if var:
        os.environ[var] = found
    plat = target.platform_class()()
    products = LocalBuildProducts(str(path.parent.resolve()))
    print(f"systolic program: {path} -> {target.name} with {found}", flush=True)
    try:
        plat.toolchain_program(products, path.stem)
    except subprocess.CalledProcessError as exc:
        raise OSError(f"{name} failed with exit status {exc.returncode}: is the "
                      f"{target.name} attached and powered, and may this user reach its "
                      f"USB device?") from None
    print("programmed")
    return 0


def add_parsers(sub):
    """Register ``emit``, ``build`` and ``program`` on the CLI's subparsers."""
    from systolic.boards.targets import BOARDS, DEFAULT_BOARD

    def board_args(s):
        s.add_argument("--board", default=DEFAULT_BOARD, choices=sorted(BOARDS),
                       help=f"target board (default {DEFAULT_BOARD})")
        s.add_argument("--preset", default="default",
                       help="the board's array preset (default: default)")

    s = sub.add_parser("emit", help="Verilog or RTLIL of the accelerator or the board top")
    s.add_argument("network", nargs="?", default=None,
                   help="reference network name or network file (default: the board's)")
    board_args(s)
    s.add_argument("--array", default=None,
                   help="PE rows x columns instead of the board's preset, e.g. 4x4")
    s.add_argument("--dataflow", default="os", choices=("os", "ws"))
    s.add_argument("--multiplier", default="inferred", help="inferred, lut or sb_mac16")
    s.add_argument("--what", default="accelerator", choices=("accelerator", "top"),
                   help="the accelerator (default) or the board top (link, LEDs; "
                        "simulation form without PLL)")
    s.add_argument("--format", default="verilog", choices=("verilog", "rtlil"))
    s.add_argument("--name", default="top", help="top module name (default top)")
    s.add_argument("-o", "--output", required=True, help="output file")
    s.set_defaults(func=cmd_emit)

    s = sub.add_parser("build", help="bitstream, resource and timing report (yowasp "
                                     "yosys + nextpnr)")
    board_args(s)
    s.add_argument("--network", default=None, help="network (default: the board's)")
    s.add_argument("--array", default=None, help="PE rows x columns instead of the preset")
    s.add_argument("--dataflow", default="os", choices=("os", "ws"))
    s.add_argument("--multiplier", default="inferred")
    s.add_argument("--seed", type=int, default=1, help="nextpnr placement seed (default 1)")
    s.add_argument("--baud", type=int, default=None, help="UART rate (default the board's)")
    s.add_argument("--clock", type=float, default=None,
                   help="PLL clock in MHz instead of the board's target (e.g. one that the "
                        "design meets: the report gives Fmax)")
    s.add_argument("-o", "--output", default=None,
                   help="build directory (default build/BOARD-NETWORK)")
    s.set_defaults(func=cmd_build)

    s = sub.add_parser("program", help="load a bitstream with the board's programmer")
    s.add_argument("bitstream", nargs="?", default=None,
                   help="bitstream file (default build/BOARD-NETWORK/top.bin or .bit)")
    s.add_argument("--board", default=DEFAULT_BOARD, choices=sorted(BOARDS))
    s.add_argument("--network", default=None, help="network of the default bitstream path")
    s.set_defaults(func=cmd_program)
