"""Gupta et al. (2015) with the golden arithmetic: 16-bit fixed-point training on MNIST.

    python benchmarks/gupta2015.py            # the full experiment (about 40 min, 2 cores)
    python benchmarks/gupta2015.py --quick    # a 1-minute smoke run, written to /tmp

Trains the paper's fully connected network and its LeNet-like CNN
(:data:`systolic.golden.fxtrain.ARCHITECTURES`) on the 4,000 MNIST ``train`` images with
word length 16 and fractional lengths 8, 10, 12 and 14 for the weights and their updates,
with round-to-nearest-even and with stochastic rounding, and in float32, for several seeds.
Every test error is measured on the 1,000 ``holdout`` images by the golden model
(:func:`systolic.golden.run.predict` on the exported network).

Writes the results table into ``docs/gupta2015.md`` (between the ``gupta2015-table``
markers) and the plot of test error against epoch to ``docs/gupta2015.png``.  Each run is
cached as JSON (``--cache``), so an interrupted experiment resumes where it stopped.
Needs matplotlib: ``pip install -e '.[experiments]'``.
"""

import os

# One BLAS thread per worker: the workers already use every core, and the products here are
# too small to gain from threads (oversubscribed, they ran 2.5x slower).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import hashlib
import json
import multiprocessing
import re
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from systolic.golden import fxtrain

ROOT = Path(__file__).resolve().parent.parent
FRACS = (8, 10, 12, 14)
FIXED_MODES = ("nearest_even", "stochastic")
#: Network -> (architecture, hyperparameters).  Plain SGD, batch 100 (the paper's batch).
NETWORKS = {
    "fc": ("gupta-fc", {"lr": 0.1, "lr_decay": 1.0, "epochs": 20}),
    "cnn": ("gupta-cnn", {"lr": 0.1, "lr_decay": 0.95, "epochs": 20}),
}
NAMES = {"fc": "fully connected 784-1000-1000-10", "cnn": "CNN 8c5-p2-16c5-p2-128-10"}
TABLE_BEGIN = "<!-- gupta2015-table -->"
TABLE_END = "<!-- /gupta2015-table -->"


def settings():
    """(mode, frac) of every setting, float32 first (its frac is None)."""
    return [("float32", None)] + [(m, f) for f in FRACS for m in FIXED_MODES]


def _run_key(net, config):
    text = json.dumps([net, asdict(config)], sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _job(job):
    """Train one (network, setting, seed); returns the record (also cached as JSON)."""
    net, config, cache = job
    path = Path(cache) / f"{net}-{config.mode}-{config.frac}-{config.seed}-" \
                         f"{_run_key(net, config)}.json"
    if path.is_file():
        return json.loads(path.read_text())
    arch = NETWORKS[net][0]
    result = fxtrain.train(arch, config)
    record = {"net": net, "mode": config.mode,
              "frac": None if config.mode == "float32" else config.frac,
              "seed": config.seed, "config": asdict(config),
              "history": [asdict(r) for r in result.history]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)
    return record


def jobs(args):
    out = []
    for net in args.networks:
        _, hyper = NETWORKS[net]
        hyper = dict(hyper)
        if args.epochs is not None:
            hyper["epochs"] = args.epochs
        for mode, frac in settings():
            for seed in args.seeds:
                config = fxtrain.FxConfig(mode=mode, frac=14 if frac is None else frac,
                                          seed=seed, train_images=args.train_images,
                                          **hyper)
                out.append((net, config, str(args.cache)))
    # Longest first (stochastic rounding of the 1.8M fully connected weights dominates), so
    # the two workers finish together.
    cost = {"stochastic": 3, "nearest_even": 2, "float32": 1}
    out.sort(key=lambda j: (j[0] != "fc", -cost[j[1].mode]))
    return out


def _label(mode, frac):
    if mode == "float32":
        return "float32"
    return f"{'stochastic' if mode == 'stochastic' else 'nearest-even'} <16,{frac}>"


def _fmt_pct(values, sign=False):
    values = 100 * np.asarray(values)
    mean = f"{values.mean():+.2f}" if sign else f"{values.mean():.2f}"
    if len(values) == 1:
        return mean
    return f"{mean} ± {values.std(ddof=1):.2f}"


def summarize(records):
    """Per (net, mode, frac): final test errors, best-epoch errors, vanished fractions."""
    groups = {}
    for r in records:
        groups.setdefault((r["net"], r["mode"], r["frac"]), []).append(r)
    return groups


def table(records):
    groups = summarize(records)
    seeds = sorted({r["seed"] for r in records})
    lines = []
    for net in NETWORKS:
        if not any(k[0] == net for k in groups):
            continue
        any_run = next(r for r in records if r["net"] == net)
        cfg = any_run["config"]
        lines.append(f"**{NAMES[net]}**: {cfg['epochs']} epochs of plain SGD, batch "
                     f"{cfg['batch_size']}, learning rate {cfg['lr']} "
                     + (f"x {cfg['lr_decay']}^epoch" if cfg["lr_decay"] != 1 else "(constant)")
                     + f", {len(seeds)} seeds ({', '.join(map(str, seeds))})")
        lines.append("")
        lines.append("| arithmetic | test error % (final epoch) | min..max % | "
                     "minus float32, same seed (points) | training loss (last epoch) | "
                     "updates rounded to zero (last epoch) |")
        lines.append("|---|---|---|---|---|---|")
        base = {r["seed"]: r["history"][-1]["test_error"]
                for r in groups.get((net, "float32", None), [])}
        for mode, frac in settings():
            runs = groups.get((net, mode, None if mode == "float32" else frac))
            if not runs:
                continue
            final = [r["history"][-1]["test_error"] for r in runs]
            paired = [r["history"][-1]["test_error"] - base[r["seed"]] for r in runs
                      if r["seed"] in base]
            vanished = [r["history"][-1]["vanished"] for r in runs]
            van = ("-" if mode == "float32" else
                   f"{100 * float(np.mean(vanished)):.1f}%")
            diff = "-" if mode == "float32" or not paired else _fmt_pct(paired, sign=True)
            loss = float(np.mean([r["history"][-1]["loss"] for r in runs]))
            lines.append(f"| {_label(mode, frac)} | {_fmt_pct(final)} | "
                         f"{100 * min(final):.1f}..{100 * max(final):.1f} | {diff} | "
                         f"{loss:.3f} | {van} |")
        lines.append("")
    train_seconds = sum(r["history"][-1]["seconds"] for r in records)
    lines.append(f"Test error: mean ± sample standard deviation over the seeds, on the 1,000 "
                 f"held-out images, computed by the golden model on the exported network "
                 f"(float32: the float network in float32). A seed fixes the initial "
                 f"weights and the batches, so the difference to float32 is taken seed by "
                 f"seed. Training loss: mean cross-entropy over the last epoch's batches "
                 f"(from the fixed-point logits), mean over the seeds. Updates rounded to "
                 f"zero: of the weight and bias updates that were "
                 f"not zero before rounding, the share that rounded to zero (stochastic "
                 f"rounding zeroes many too, but with the probability that keeps the mean "
                 f"update exact). {len(records)} runs, "
                 f"{train_seconds / 60:.0f} min of training summed over the runs "
                 f"(one core each).")
    return "\n".join(lines)


def plot(records, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    groups = summarize(records)
    nets = [n for n in NETWORKS if any(k[0] == n for k in groups)]
    fig, axes = plt.subplots(1, len(nets), figsize=(6.4 * len(nets), 4.8), squeeze=False)
    colors = dict(zip(FRACS, ("tab:red", "tab:orange", "tab:green", "tab:blue")))
    for ax, net in zip(axes[0], nets):
        for mode, frac in settings():
            runs = groups.get((net, mode, None if mode == "float32" else frac))
            if not runs:
                continue
            err = 100 * np.array([[h["test_error"] for h in r["history"]] for r in runs])
            epochs = np.arange(err.shape[1])
            color = "black" if mode == "float32" else colors[frac]
            style = {"float32": "-", "stochastic": "-", "nearest_even": "--"}[mode]
            # float32 on top, thin, so the stochastic curves under it stay visible.
            ax.plot(epochs, err.mean(axis=0), style, color=color, label=_label(mode, frac),
                    linewidth={"float32": 1.2, "stochastic": 2.0, "nearest_even": 1.4}[mode],
                    zorder=3 if mode == "float32" else 2)
            if len(runs) > 1:
                ax.fill_between(epochs, err.min(axis=0), err.max(axis=0), color=color,
                                alpha=0.12, linewidth=0)
        ax.set_yscale("log")
        ax.set_ylim(1, 100)
        cfg = next(r for r in records if r["net"] == net)["config"]
        steps = -(-(cfg["train_images"] or 4000) // cfg["batch_size"])
        ax.set_xlabel(f"epoch ({steps} SGD steps of {cfg['batch_size']} images)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("test error on 1,000 held-out images (%)")
        ax.set_title(f"{NAMES[net]}, WL = 16")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
    fig.suptitle("MNIST (4,000 training images): fixed-point training with the golden "
                 "arithmetic; solid = stochastic, dashed = nearest-even; mean, band = "
                 "min..max over seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_table(doc, text):
    """Replace the table between the markers in ``doc``; return False if no markers."""
    if not doc.is_file():
        return False
    content = doc.read_text()
    pattern = re.compile(re.escape(TABLE_BEGIN) + ".*?" + re.escape(TABLE_END), re.S)
    if not pattern.search(content):
        return False
    doc.write_text(pattern.sub(lambda _: f"{TABLE_BEGIN}\n{text}\n{TABLE_END}", content))
    return True


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=None,
                   help="override the epochs of every network")
    p.add_argument("--train-images", type=int, default=None,
                   help="train on the first N training images (default all 4,000)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--cache", type=Path, default=Path("/tmp/gupta2015-cache"))
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "gupta2015.md")
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "gupta2015.png")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 seed, 2 epochs, 500 images, outputs in /tmp")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.train_images = [0], 2, 500
        args.cache = Path("/tmp/gupta2015-quick-cache")
        args.doc, args.plot = Path("/tmp/gupta2015-quick.md"), Path("/tmp/gupta2015-quick.png")
    args.cache.mkdir(parents=True, exist_ok=True)
    todo = jobs(args)
    print(f"gupta2015: {len(todo)} runs on {args.jobs} workers, cache {args.cache}",
          flush=True)
    start = time.perf_counter()
    records = []
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(args.jobs) as pool:
        for record in pool.imap_unordered(_job, todo):
            records.append(record)
            final = record["history"][-1]
            print(f"[{len(records):3d}/{len(todo)}] {record['net']:<3} "
                  f"{_label(record['mode'], record['frac']):<24} seed {record['seed']}  "
                  f"test error {100 * final['test_error']:5.2f}%  "
                  f"({final['seconds']:.0f} s; {time.perf_counter() - start:.0f} s elapsed)",
                  flush=True)
    print(f"gupta2015: runs done in {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    text = table(records)
    print(text)
    plot(records, args.plot)
    print(f"wrote {args.plot}")
    if args.quick and not args.doc.exists():
        args.doc.write_text(f"{TABLE_BEGIN}\n{TABLE_END}\n")
    if write_table(args.doc, text):
        print(f"wrote the table into {args.doc}")
    else:
        print(f"{args.doc} has no {TABLE_BEGIN} markers; the table was only printed",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
