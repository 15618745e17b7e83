"""``systolic run`` and ``systolic serve``: the host link and the virtual board.

``systolic serve --board icebreaker --listen 127.0.0.1:7000`` simulates the board's top
under Verilator and serves its UART on a TCP socket; ``systolic run --port
socket://127.0.0.1:7000`` then runs held-out MNIST images on it through the same host
code as on a real board (``--port /dev/ttyUSB1``).
"""

import sys
import time

from ._common import board_program

__all__ = ["add_parsers", "cmd_run", "cmd_serve"]


def _bar(done, total, width=30):
    filled = width * done // max(total, 1)
    return f"[{'#' * filled}{'.' * (width - filled)}]"


class _Progress:
    """Progress on stderr: redrawn on a terminal, a line per step otherwise."""

    def __init__(self):
        self.tty = sys.stderr.isatty()
        self.start = time.monotonic()
        self.last = 0.0

    def __call__(self, stage, done, total, batch=None):
        if stage == "weights":
            now = time.monotonic()
            if done < total and now - self.last < (0.2 if self.tty else 2.0):
                return
            self.last = now
            line = (f"{_bar(done, total)} weights {done}/{total} beats, "
                    f"{now - self.start:.1f} s")
            if self.tty:
                print("\r" + line, end="\n" if done == total else "", file=sys.stderr,
                      flush=True)
            else:
                print(line, file=sys.stderr, flush=True)
            return
        if self.tty:
            print("\r\033[K", end="", file=sys.stderr, flush=True)
        for r in batch:
            verdict = "bit-exact" if r.exact else f"MISMATCH ({r.differ} outputs differ)"
            label = f"label {r.label}, " if r.label >= 0 else ""
            right = "" if r.label < 0 else (" right" if r.predicted == r.label else " wrong")
            print(f"image {r.index:4d}: {label}board {r.predicted}{right}, golden "
                  f"{r.golden}: {'pass' if r.exact else 'FAIL'} ({verdict})", flush=True)
        line = f"{_bar(done, total)} {done}/{total} images, {time.monotonic() - self.start:.1f} s"
        if self.tty:
            print(line, end="\n" if done == total else "", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)


def cmd_run(args):
    import serial

    from systolic.boards.link import Link
    from systolic.boards.session import run_images
    from systolic.golden import models
    from systolic.golden.datasets import mnist
    target, name, program = board_program(args)
    images, labels = mnist("holdout")
    if not 1 <= args.images <= len(images):
        raise ValueError(f"--images must be between 1 and {len(images)} (the held-out "
                         f"MNIST images), not {args.images}")
    images, labels = images[:args.images], labels[:args.images]
    x = models.mnist_input(program.network, images)
    cfg = program.config
    print(f"systolic run {name} on {args.port}: {target.name} ({cfg.rows}x{cfg.cols} "
          f"array, {target.clock_mhz:g} MHz); {len(x)} held-out MNIST images", flush=True)
    try:
        port = serial.serial_for_url(args.port, baudrate=args.baud or target.baud,
                                     timeout=args.timeout)
    except (serial.SerialException, ValueError) as exc:
        raise OSError(f"Cannot open port {args.port}: {exc}") from None
    try:
        link = Link(port, timeout=args.timeout, retries=args.retries)
        result = run_images(link, program, x, labels, progress=_Progress(),
                            run_timeout=args.run_timeout, network_name=name)
    except KeyboardInterrupt:
        print("\nsystolic: interrupted", file=sys.stderr)
        return 130
    finally:
        port.close()

    n = len(result.images)
    C = cfg.cols
    acc, gacc = result.accuracy(), result.golden_accuracy()
    print(f"accuracy:          {100 * acc:.2f}% ({round(acc * n)}/{n} labels; golden "
          f"model {100 * gacc:.2f}%)")
    print(f"bit-exact:         {result.bit_exact}/{n} images (outputs vs golden model)")
    counters = "exact" if result.counters_exact else "DIFFERENT"
    print(f"counters:          cycles, layer cycles, beats and saturations of "
          f"{len(result.batches)} run{'s' if len(result.batches) > 1 else ''}: {counters} "
          f"(compiler's cycle model, golden saturations)")
    measured = result.cycles_per_batch
    print(f"cycles per run:    {measured:,} measured on the board, {program.cycles:,} "
          f"compiler model ({C} images per run)")
    from systolic.boards.top import board_pll
    clock = board_pll(target).f_out        # what the PLL makes of target.clock_mhz
    print(f"per inference:     {result.cycles_per_inference:,.1f} cycles; "
          f"{result.inferences_per_second(clock):,.0f} inferences/s at "
          f"{clock / 1e6:g} MHz (compute only)")
    wall = result.run_seconds
    weights = (f"weights {result.weights_loaded} beats in {result.weight_seconds:.1f} s"
               if result.weights_loaded else "weights in the bitstream")
    print(f"link:              {n / wall:.1f} images/s end to end over {args.port} "
          f"({wall:.1f} s; {weights}); {result.link_stats['retransmissions']} "
          f"retransmissions")
    if result.ok:
        return 0
    for b in result.batches:
        if not b.counters_exact:
            c = b.counters
            print(f"systolic: error: run {b.index}: cycles {c.cycles} (model "
                  f"{b.predicted_cycles}), layer cycles {list(c.layer_cycles)} (model "
                  f"{list(b.predicted_layer_cycles)}), beats {c.beats} (model "
                  f"{b.predicted_beats}), saturations {list(c.saturations)} (golden "
                  f"{list(b.golden_saturations)})", file=sys.stderr)
    if result.bit_exact < n:
        print(f"systolic: error: {n - result.bit_exact} of {n} images differ from the "
              f"golden model", file=sys.stderr)
    return 1


def _listen(text):
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen must be HOST:PORT, not {text!r}")
    return host or "127.0.0.1", int(port)


def cmd_serve(args):
    from systolic.boards.virtual import VirtualBoard
    host, port = _listen(args.listen)
    target, name, program = board_program(args)
    cfg = program.config
    print(f"systolic serve: virtual {target.name} board, {name} on a {cfg.rows}x{cfg.cols} "
          f"array; building the board top's simulation (Verilator, cached)...", flush=True)
    board = VirtualBoard(program, target=target, host=host, port=port, divisor=args.divisor,
                         log=lambda line: print(line, flush=True))
    try:
        board.start()
        print(f"listening on {board.url} (started in {board.start_seconds:.1f} s; UART "
              f"{args.divisor} clock cycles per bit in simulation, not the board's "
              f"{target.baud:,} baud); Ctrl-C stops", flush=True)
        while board.running:
            time.sleep(0.2)
        print("systolic: error: the simulation ended", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping", flush=True)
        return 0
    finally:
        board.stop()


def add_parsers(sub):
    """Register ``run`` and ``serve`` on the ``systolic`` command's subparsers."""
    from systolic.boards.virtual import DIVISOR

    s = sub.add_parser("run", help="run held-out MNIST images on a board (or a virtual "
                                   "board) over the UART link and compare with golden")
    s.add_argument("--port", required=True,
                   help="pyserial URL: /dev/ttyUSB1, socket://127.0.0.1:7000, ...")
    s.add_argument("--board", default="icebreaker", help="board (default icebreaker)")
    s.add_argument("--preset", default="default", help="the board's array preset")
    s.add_argument("--network", default=None,
                   help="network the board is built for (default: the board's)")
    s.add_argument("--images", type=int, default=10,
                   help="held-out MNIST images (default 10, at most 1000)")
    s.add_argument("--baud", type=int, default=None,
                   help="serial baud rate (default: the board's, 1000000)")
    s.add_argument("--timeout", type=float, default=2.0,
                   help="seconds to wait for one response before retransmitting")
    s.add_argument("--retries", type=int, default=8, help="retransmissions per command")
    s.add_argument("--run-timeout", type=float, default=60.0,
                   help="seconds one accelerator run may take")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("serve", help="simulate the board top (Verilator) and serve its "
                                     "UART on a TCP socket for `systolic run`")
    s.add_argument("--board", default="icebreaker", help="board (default icebreaker)")
    s.add_argument("--preset", default="default", help="the board's array preset")
    s.add_argument("--network", default=None,
                   help="network to build the board for (default: the board's)")
    s.add_argument("--listen", default="127.0.0.1:7000", help="HOST:PORT (default "
                                                             "127.0.0.1:7000)")
    s.add_argument("--divisor", type=int, default=DIVISOR,
                   help=f"UART clock cycles per bit in simulation (default {DIVISOR})")
    s.set_defaults(func=cmd_serve)
