"""The iCEBreaker targets of the boards issue, measured: builds and simulations, printed.

Outside CI (about 6 minutes on two cores)::

    python benchmarks/icebreaker_targets.py [--images 4] [--out build/icebreaker-bench]
        [--only lenet5:default mnist-tiny:4x2 ...]

For each (network, preset) it builds the bitstream (``systolic build``) and simulates the
same accelerator under Verilator on real held-out MNIST images, then prints:

* SB_MAC16 used of 8, MACs per cycle, logic cells, Fmax and the build time;
* cycles per inference as measured in simulation (bit-exact against golden), and
  inferences/s at the achieved Fmax and at the board's clock (39.75 MHz);
* each target of the issue (all 8 SB_MAC16, >= 16 MACs/cycle, Fmax >= 40 MHz, UP5K build
  under 3 minutes) as met or not.

A network that does not fit says so in one line (the ``ConstraintError``) and is still
simulated, so its cycles per inference are known.  The figures in the README come from
this script.
"""

import argparse
import sys
import time

#: The issue's targets for the iCEBreaker.
TARGET_DSPS, TARGET_MACS, TARGET_MHZ, TARGET_BUILD_S = 8, 16, 40.0, 180.0

#: lenet5 on the default preset (the 8x2 array, all 8 SB_MAC16), mnist-tiny on it and on
#: the 4x2 preset.
CASES = ("lenet5:default", "mnist-tiny:default", "mnist-tiny:4x2")



def _clock_mhz():
    """The iCEBreaker's clock: what its PLL makes of the board's 40 MHz (39.75)."""
    from systolic.boards.targets import board
    from systolic.boards.top import board_pll
    return board_pll(board("icebreaker")).f_out / 1e6


CLOCK_MHZ = _clock_mhz()


def measure(network, preset, *, images, out):
    """Build and simulate one case; returns a dict of figures (``None`` where not built)."""
    from systolic.boards.build import build
    from systolic.boards.targets import board
    from systolic.golden import models
    from systolic.golden.datasets import mnist
    from systolic.golden.errors import ConstraintError
    from systolic.rtl.compiler import compile_network
    from systolic.sim.accel import simulate

    target = board("icebreaker")
    program = compile_network(models.load(network), target.preset(preset))
    cfg = program.config
    row = {"case": f"{network}:{preset}", "array": f"{cfg.rows}x{cfg.cols}",
           "macs": cfg.rows * cfg.cols, "report": None, "seconds": None, "error": None}

    start = time.perf_counter()
    try:
        row["report"] = build(program, target, out_dir=f"{out}/{network}-{preset}",
                              progress=lambda line: print(f"  {line}", flush=True))
        row["seconds"] = time.perf_counter() - start
    except ConstraintError as exc:
        row["error"] = str(exc)
        print(f"  does not fit: {exc}", flush=True)

    x, _ = mnist("holdout")
    x = models.mnist_input(program.network, x[:images])
    print(f"  simulating {images} images (Verilator)...", flush=True)
    result = simulate(program, x)
    if not result.ok:
        raise SystemExit(f"{row['case']}: {result.images - result.bit_exact} of "
                         f"{result.images} images not bit-exact or counters off the model; "
                         f"run folder {result.run_dir}")
    row["cycles"] = result.cycles_per_image
    row["predicted"] = program.cycles_per_image
    row["bit_exact"] = f"{result.bit_exact}/{result.images}"
    return row


def report_lines(row):
    """The printed figures of one case and its targets."""
    lines = [f"{row['case']} ({row['array']}, {row['macs']} MACs/cycle): cycles per "
             f"inference {row['cycles']:,.1f} measured ({row['predicted']:,.1f} predicted), "
             f"{row['bit_exact']} bit-exact"]
    rep = row["report"]
    if rep is None:
        lines.append(f"  not built: {row['error']}")
        lines.append(f"  inferences/s at {CLOCK_MHZ:g} MHz (not built): "
                     f"{CLOCK_MHZ * 1e6 / row['cycles']:,.0f}")
        return lines
    dsp = rep.utilization["DSP"]
    cells = rep.utilization["logic cells"]
    fmax = rep.accelerator_fmax_mhz
    lines.append(f"  SB_MAC16 {dsp['used']}/{dsp['available']}, logic cells "
                 f"{cells['used']:,}/{cells['available']:,}, Fmax {fmax:.1f} MHz, build "
                 f"{row['seconds']:.0f} s")
    lines.append(f"  inferences/s: {fmax * 1e6 / row['cycles']:,.0f} at Fmax, "
                 f"{CLOCK_MHZ * 1e6 / row['cycles']:,.0f} at {CLOCK_MHZ:g} MHz")
    checks = [(f"all {TARGET_DSPS} SB_MAC16", dsp["used"] >= TARGET_DSPS),
              (f">= {TARGET_MACS} MACs/cycle", row["macs"] >= TARGET_MACS),
              (f"Fmax >= {TARGET_MHZ:g} MHz", fmax >= TARGET_MHZ),
              (f"build < {TARGET_BUILD_S:.0f} s", row["seconds"] < TARGET_BUILD_S)]
    lines.append("  targets: " + ", ".join(f"{name} {'met' if ok else 'NOT met'}"
                                           for name, ok in checks))
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", default=list(CASES), metavar="NETWORK:PRESET")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--out", default="build/icebreaker-bench")
    args = p.parse_args(argv)
    rows = []
    for case in args.only:
        network, _, preset = case.partition(":")
        print(f"{case}:", flush=True)
        rows.append(measure(network, preset or "default", images=args.images,
                            out=args.out))
    print()
    for row in rows:
        for line in report_lines(row):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
