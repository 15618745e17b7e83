"""Golden-model throughput: images/s of a whole network on batches of held-out MNIST.

    python benchmarks/golden.py [--network lenet5] [--batch 1000] [--repeats 5]

Prints the median over repeats, for every rounding mode. The target for lenet5 on the
2-core reference machine is >= 2,000 images/s (issue: foundation).
"""

import argparse
import os
import time

import numpy as np

from systolic.golden import models
from systolic.golden.datasets import mnist
from systolic.golden.rounding import ROUNDING_MODES
from systolic.golden.run import run


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--network", default="lenet5")
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    net = models.load(args.network)
    images, _ = mnist("holdout")
    reps = -(-args.batch // len(images))
    x = models.mnist_input(net, np.concatenate([images] * reps)[:args.batch])
    run(net, x[:10])  # warm up (imports, BLAS threads)
    print(f"golden {net.name}: {net.macs:,} MACs/image, batch {args.batch}, "
          f"{os.cpu_count()} CPUs, median of {args.repeats}")
    for mode in ROUNDING_MODES:
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            run(net, x, rounding=mode)
            times.append(time.perf_counter() - start)
        t = float(np.median(times))
        print(f"  {mode:<13} {args.batch / t:10,.0f} images/s  ({1e3 * t:.0f} ms/batch)")


if __name__ == "__main__":
    main()
