"""Array utilization of the accelerator per layer, and where the other cycles go.

    python benchmarks/utilization.py               # lenet5, mnist-tiny; 8x8, 4x4; os and ws
    python benchmarks/utilization.py lenet5 --array 8x8 --array 4x6 --dataflow ws

Figures come from the compiler's cycle model (rtl/compiler.py), which the hardware's
cycle counters equal exactly in every simulation (tests/rtl/test_accelerator.py and the
cocotb runs in tests/sim; `systolic sim` prints predicted and measured side by side).
Utilization = (MACs per image / (R*C)) / cycles per image, the batch being the C columns.
The breakdown follows the TPU paper's: useful beats, padding (output channels beyond
C_out in a layer's last tile; weight-stationary also reduction elements beyond K in the
last k-tile), stalls (output-stationary: reductions shorter than R; weight-stationary:
the corner turn's rate C/R when C < R and blocks shorter than the 2R + C - 1 cycles the
weight double buffer needs), fill/drain and setup, and non-matrix work (pooling passes
that are not fused).
"""

import argparse
import sys

from systolic.golden import models
from systolic.rtl.compiler import ArrayConfig, compile_network


def report(name, shape, dataflow="os", out=sys.stdout):
    program = compile_network(models.load(name),
                              ArrayConfig.parse_shape(shape, dataflow=dataflow))
    cfg = program.config
    print(f"\n{name} on {cfg.rows}x{cfg.cols} {cfg.dataflow} ({cfg.cols} images per run): "
          f"{program.cycles:,} cycles per run, {program.cycles_per_image:,.1f} per image, "
          f"utilization {program.utilization():.1%}", file=out)
    print(f"{'layer':>5} {'op':<15} {'MACs/img':>9} {'cycles':>8} {'util':>6} "
          f"{'padding':>8} {'stalls':>7} {'fill/drain':>10} {'non-matrix':>10}", file=out)
    lost = {"padding": 0, "tile_stalls": 0, "fill_drain": 0, "non_matrix": 0}
    for row in program.layer_report():
        for key in lost:
            lost[key] += row.get(key, 0)
        print(f"{row['layer']:>5} {row['op']:<15} {row['macs']:>9,} {row['cycles']:>8,} "
              f"{row['utilization']:>6.1%} {row.get('padding', 0):>8,.0f} "
              f"{row.get('tile_stalls', 0):>7,} {row.get('fill_drain', 0):>10,} "
              f"{row.get('non_matrix', 0):>10,}", file=out)
    total = program.cycles
    print("lost cycles: " + ", ".join(f"{k.replace('_', ' ')} {v:,.0f} ({v / total:.1%})"
                                      for k, v in lost.items()), file=out)
    return program


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("networks", nargs="*", default=["lenet5", "mnist-tiny"])
    parser.add_argument("--array", action="append", help="RxC (repeatable; default 8x8, 4x4)")
    parser.add_argument("--dataflow", action="append", choices=("os", "ws"),
                        help="repeatable; default both")
    args = parser.parse_args(argv)
    for name in args.networks:
        for dataflow in args.dataflow or ["os", "ws"]:
            for shape in args.array or ["8x8", "4x4"]:
                report(name, shape, dataflow)


if __name__ == "__main__":
    main()
