"""Build a large ECP5 design and print its report: ULX3S-85F, lenet5, 16x8 array by default.

Outside CI (a full ECP5-85F place and route takes long on two cores)::

    python benchmarks/build_ulx3s85.py [--board ulx3s-85f] [--network lenet5]
        [--preset default] [--out build/ulx3s-85f-bench]

Prints each stage as it runs, then the resource and timing table; the issue's target is
>= 128 MACs/cycle at >= 125 MHz.  The figures in the README come from this script.
"""

import argparse
import sys
import time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--board", default="ulx3s-85f")
    p.add_argument("--network", default="lenet5")
    p.add_argument("--preset", default="default")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    from systolic.boards.build import build
    from systolic.boards.targets import board
    from systolic.golden import models
    from systolic.rtl.compiler import compile_network

    target = board(args.board)
    program = compile_network(models.load(args.network), target.preset(args.preset))
    out = args.out or f"build/{target.name}-{args.network}-bench"
    start = time.perf_counter()
    report = build(program, target, out_dir=out, seed=args.seed,
                   progress=lambda line: print(line, flush=True))
    print()
    for line in report.table():
        print(line)
    macs = report.array["macs_per_cycle"]
    fmax = report.accelerator_fmax_mhz
    print(f"target: >= 128 MACs/cycle at >= 125 MHz; reached {macs} MACs/cycle, Fmax "
          f"{fmax:.1f} MHz ({macs * fmax / 1e3:.2f} GMAC/s peak at Fmax); "
          f"{time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
