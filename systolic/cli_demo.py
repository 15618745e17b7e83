"""``systolic demo``: the main job, end to end, on the default board and its network.

1. the golden model (the quantized network in NumPy) on held-out MNIST images;
2. the virtual board: the board top (link, accelerator, LEDs) simulated under Verilator,
   reached over a TCP socket by the same host code as a real board (``systolic run``),
   outputs and counters compared with the golden model and the compiler's cycle model;
3. Verilog of the accelerator and of the board top;
4. the bitstream (yowasp Yosys, nextpnr, icepack/ecppack) with its resource and timing
   report;
5. one summary.

Everything it writes goes under ``--out`` (default ``systolic-demo/``).
"""

import sys
import time
from pathlib import Path

from ._common import board_program

__all__ = ["add_parser", "cmd_demo"]


def _stage(n, total, text):
    print(f"\n[{n}/{total}] {text}", flush=True)


def _golden(program, x, labels):
    import numpy as np

    from systolic.golden.run import predict
    start = time.perf_counter()
    pred = predict(program.network, x)
    acc = float(np.mean(pred == labels))
    print(f"golden: {100 * acc:.2f}% ({int(np.sum(pred == labels))}/{len(labels)} labels) "
          f"in {1e3 * (time.perf_counter() - start):.1f} ms", flush=True)
    return acc


def _virtual_board(program, target, x, labels):
    from systolic.boards.link import Link
    from systolic.boards.session import run_images
    from systolic.boards.virtual import VirtualBoard
    import serial
    print("building the board top's simulation (Verilator; cached after the first run)...",
          flush=True)
    with VirtualBoard(program, target=target) as vb:
        print(f"virtual board listening on {vb.url} (ready in {vb.start_seconds:.1f} s); "
              f"running {len(x)} images over the UART link", flush=True)
        port = serial.serial_for_url(vb.url, timeout=5.0)
        try:
            link = Link(port, timeout=5.0)
            done = [0]

            def progress(stage, n, total, batch=None):
                if stage != "weights" and batch is not None:
                    done[0] = n
                    exact = sum(r.exact for r in batch)
                    print(f"  {n}/{total} images, this run {exact}/{len(batch)} bit-exact",
                          flush=True)

            result = run_images(link, program, x, labels, progress=progress,
                                network_name=program.network.name)
        finally:
            port.close()
    return result


def cmd_demo(args):
    from systolic.boards.targets import check_fit
    from systolic.boards.top import BoardTop, board_pll
    from systolic.golden import models
    from systolic.golden.datasets import mnist
    from systolic.rtl.accelerator import Accelerator
    from systolic.sim.verilog import emit_verilog

    target, name, program = board_program(args)
    net = program.network
    check_fit(program, target)
    cfg = program.config
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images, labels = mnist("holdout")
    if not 1 <= args.images <= len(images):
        raise ValueError(f"--images must be between 1 and {len(images)} (the held-out "
                         f"MNIST images), not {args.images}")
    images, labels = images[:args.images], labels[:args.images]
    x = models.mnist_input(net, images)
    total = 4 if args.no_build else 5
    start = time.perf_counter()
    print(f"systolic demo: {name} on the {target.name} ({target.device.name}), "
          f"{cfg.describe()}; {len(x)} held-out MNIST images; output in "
          f"{out}/", flush=True)

    _stage(1, total, "golden model")
    golden_acc = _golden(program, x, labels)

    _stage(2, total, "virtual board: the board top in Verilator, over the host link")
    result = _virtual_board(program, target, x, labels)
    n = len(result.images)
    clock = board_pll(target).f_out
    print(f"board: {100 * result.accuracy():.2f}% accuracy, {result.bit_exact}/{n} "
          f"bit-exact, counters {'exact' if result.counters_exact else 'DIFFERENT'}; "
          f"{result.cycles_per_inference:,.1f} cycles per inference", flush=True)

    _stage(3, total, "Verilog")
    for what, component in (("accelerator", Accelerator(program)),
                            ("top", BoardTop(program, target=target))):
        path = out / f"{name}-{target.name}-{what}.v"
        text = emit_verilog(component, name="top")
        path.write_text(text)
        print(f"{path}: {len(text.splitlines()):,} lines", flush=True)

    report = None
    if not args.no_build:
        from systolic.boards.build import build
        _stage(4, total, "bitstream (yowasp Yosys, nextpnr, pack)")
        report = build(program, target, out_dir=out / "build",
                       progress=lambda line: print(f"  {line}", flush=True))
        for line in report.table():
            print(f"  {line}")

    _stage(total, total, "summary")
    rows = [("network", f"{name}: {net.macs:,} MACs per inference"),
            ("board", f"{target.name} ({target.device.name}), {cfg.rows}x{cfg.cols} array, "
                      f"{cfg.rows * cfg.cols} MACs/cycle"),
            ("accuracy", f"{100 * result.accuracy():.2f}% on the virtual board, "
                         f"{100 * golden_acc:.2f}% golden ({n} images)"),
            ("bit-exact", f"{result.bit_exact}/{n} images; counters "
                          f"{'equal the cycle model' if result.counters_exact else 'DIFFER'}"),
            ("cycles", f"{result.cycles_per_inference:,.1f} per inference measured, "
                       f"{program.cycles_per_image:,.1f} predicted"),
            ("throughput", f"{result.inferences_per_second(clock):,.0f} inferences/s at "
                           f"{clock / 1e6:g} MHz (compute only)")]
    if report is not None:
        u = report.utilization
        res = ", ".join(f"{k} {v['used']:,}/{v['available']:,}" for k, v in u.items()
                        if k in ("logic cells", "DSP", "BRAM", "SPRAM"))
        fmax = report.accelerator_fmax_mhz
        met = "met" if report.timing_met else "NOT met"
        rows += [("resources", res),
                 ("Fmax", f"{fmax:.1f} MHz for a {clock / 1e6:g} MHz clock: timing {met}"),
                 ("bitstream", report.bitstream)]
    for key, value in rows:
        print(f"{key + ':':<12} {value}")
    print(f"{'time:':<12} {time.perf_counter() - start:.0f} s")
    ok = result.ok
    if report is not None and not report.timing_met:
        fmax = report.accelerator_fmax_mhz
        print(f"systolic: warning: the bitstream does not meet its {clock / 1e6:g} MHz clock "
              f"(Fmax {fmax:.1f} MHz); `systolic build --board {target.name} --clock "
              f"{int(fmax) - 1}` builds one for a slower clock", file=sys.stderr)
    if not ok:
        print(f"systolic: error: the virtual board differs from the golden model "
              f"({result.bit_exact}/{n} bit-exact, counters "
              f"{'exact' if result.counters_exact else 'different'})", file=sys.stderr)
        return 1
    return 0


def add_parser(sub):
    """Register ``demo`` on the CLI's subparsers."""
    from systolic.boards.targets import BOARDS, DEFAULT_BOARD
    s = sub.add_parser("demo", help="the main job: golden model, virtual board, Verilog and "
                                    "bitstream of the default network and board")
    s.add_argument("--board", default=DEFAULT_BOARD, choices=sorted(BOARDS),
                   help=f"target board (default {DEFAULT_BOARD})")
    s.add_argument("--preset", default="default", help="the board's array preset")
    s.add_argument("--network", default=None,
                   help="network (default: the board's reference network)")
    s.add_argument("--images", type=int, default=20,
                   help="held-out MNIST images (default 20)")
    s.add_argument("--out", default="systolic-demo",
                   help="folder for the Verilog, the build and its report "
                        "(default systolic-demo)")
    s.add_argument("--no-build", action="store_true",
                   help="skip the bitstream (golden, virtual board and Verilog only)")
    s.set_defaults(func=cmd_demo)
