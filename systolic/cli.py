"""The ``systolic`` command line: parse, call library functions, print.

Every library error reaches the user as one line on stderr and exit status 1; usage errors
exit with status 2 (argparse).
"""

import argparse
import json
import sys
import time

import numpy as np

from ._common import quantized_network

__all__ = ["main"]


def _fmt(f):
    return "-" if f is None else str(f)


def _kib(bits):
    return f"{bits / 8192:.1f}"


def _layer_rows(net):
    """One row per layer for `info`: what it is, its formats, MACs, parameters, memory."""
    rows = []
    in_shape = net.input_shape
    for j, layer in enumerate(net.layers):
        in_fmt = net.tensor_formats[j]
        out_shape, out_fmt = net.tensor_shapes[j + 1], net.tensor_formats[j + 1]
        weight = getattr(layer, "weight", None)
        bias = getattr(layer, "bias", None)
        params = (0 if weight is None else weight.size) + (0 if bias is None else bias.size)
        wbits = 0 if weight is None else weight.size * layer.weight_format.width
        bbits = 0 if bias is None else bias.size * layer.bias_format.width
        desc = layer.kind
        if layer.kind == "conv2d":
            kh, kw = layer.kernel
            desc += f" {kh}x{kw}/{layer.stride} pad={list(layer.padding_for(in_shape))}"
        elif layer.kind in ("maxpool2d", "avgpool2d"):
            desc += f" {layer.kernel}x{layer.kernel}/{layer.step}"
        elif layer.kind == "activation":
            desc += f" {layer.function}" + (f"({layer.lut})" if layer.lut else "")
        elif layer.kind == "add":
            desc += f" t{layer.other}"
        act = getattr(layer, "activation", "none")
        if act != "none":
            desc += f" +{act}"
        rows.append({
            "index": j, "kind": layer.kind, "description": desc,
            "output_shape": list(out_shape), "in_format": str(in_fmt),
            "weight_format": _fmt(getattr(layer, "weight_format", None)),
            "bias_format": _fmt(getattr(layer, "bias_format", None)),
            "out_format": str(out_fmt), "rounding": getattr(layer, "rounding", None),
            "macs": layer.macs(in_shape) if hasattr(layer, "macs") else 0,
            "parameters": int(params), "weight_bits": int(wbits), "bias_bits": int(bbits),
            "activation_bits": int(np.prod(out_shape)) * out_fmt.width,
        })
        in_shape = out_shape
    return rows


def cmd_info(args):
    net = quantized_network(args.network)
    rows = _layer_rows(net)
    input_bits = int(np.prod(net.input_shape)) * net.input_format.width
    summary = {
        "name": net.name, "input_shape": list(net.input_shape),
        "input_format": str(net.input_format), "seed": net.seed,
        "layers": rows, "macs": net.macs,
        "parameters": sum(r["parameters"] for r in rows),
        "weight_bits": sum(r["weight_bits"] + r["bias_bits"] for r in rows),
        "input_bits": input_bits,
        "largest_activation_bits": max([input_bits] + [r["activation_bits"] for r in rows]),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"network {net.name or args.network}: input {tuple(net.input_shape)} "
          f"{net.input_format}, SR seed {net.seed}")
    head = (f"{'#':>2} {'layer':<38} {'output':<12} {'in':<8} {'weight':<8} {'bias':<9} "
            f"{'out':<8} {'rounding':<12} {'MACs':>8} {'params':>7} {'w+b bits':>9} "
            f"{'out bits':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['index']:>2} {r['description']:<38} {'x'.join(map(str, r['output_shape'])):<12} "
              f"{r['in_format']:<8} {r['weight_format']:<8} {r['bias_format']:<9} "
              f"{r['out_format']:<8} {r['rounding'] or '-':<12} {r['macs']:>8,} "
              f"{r['parameters']:>7,} {r['weight_bits'] + r['bias_bits']:>9,} "
              f"{r['activation_bits']:>9,}")
    print("-" * len(head))
    print(f"total: {summary['macs']:,} MACs per image, {summary['parameters']:,} parameters, "
          f"{summary['weight_bits']:,} bits of weights and biases "
          f"({_kib(summary['weight_bits'])} KiB); input {input_bits:,} bits; largest "
          f"activation tensor {summary['largest_activation_bits']:,} bits")
    return 0


def _calibration_images(args, fnet):
    from systolic.golden.datasets import mnist, to_float
    if args.calibration == "mnist":
        images, _ = mnist("calibration")
        images = to_float(images)
    else:
        images = np.load(args.calibration, allow_pickle=False).astype(np.float64)
    if args.calibration_images is not None:
        images = images[:args.calibration_images]
    return images


def cmd_quantize(args):
    from systolic.golden import models
    from systolic.golden.calibrate import calibrate
    from systolic.golden.ir import FloatNetwork
    from systolic.golden.netfile import save_network
    fnet = models.load_float_reference(args.network) or models.load(args.network)
    if not isinstance(fnet, FloatNetwork):
        raise SystemExit(f"systolic: error: {args.network} is already quantized")
    images = _calibration_images(args, fnet)
    qnet = calibrate(fnet, images, width=args.width, weight_width=args.weight_width,
                     bias_width=args.bias_width, percentile=args.percentile,
                     rounding=args.rounding, seed=args.seed)
    path = save_network(qnet, args.out)
    print(f"calibrated on {len(images)} images; wrote {path}")
    print(f"input {qnet.input_format}; " + "; ".join(
        f"{j}:{l.kind} out {qnet.tensor_formats[j + 1]}"
        + (f" w {l.weight_format}" if getattr(l, "weight_format", None) else "")
        for j, l in enumerate(qnet.layers)))
    return 0


def _confusion(labels, predictions, classes):
    m = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(m, (labels, predictions), 1)
    return m


def cmd_golden(args):
    from systolic.golden import models
    from systolic.golden.datasets import mnist, to_float
    from systolic.golden.run import run, run_float
    net = quantized_network(args.network)
    images, labels = mnist("holdout")
    if not 1 <= args.images <= len(images):
        raise SystemExit(f"systolic: error: --images must be between 1 and {len(images)} "
                         f"(the held-out MNIST images), not {args.images}")
    images, labels = images[:args.images], labels[:args.images]
    x = models.mnist_input(net, images)
    start = time.perf_counter()
    result = run(net, x, rounding=args.rounding, seed=args.seed)
    elapsed = time.perf_counter() - start
    pred = result.logits.argmax(axis=1)
    classes = result.logits.shape[1]
    out = {
        "network": net.name or args.network, "images": int(len(images)),
        "rounding": args.rounding or "per-layer",
        "accuracy": float(np.mean(pred == labels)),
        "images_per_second": len(images) / elapsed,
        "saturations": [int(s) for s in result.saturations],
        "confusion": _confusion(labels, pred, classes).tolist(),
    }
    fnet = models.load_float_reference(args.network)
    if fnet is not None:
        fpred = run_float(fnet, to_float(images))[-1].reshape(len(images), -1).argmax(1)
        out["float_accuracy"] = float(np.mean(fpred == labels))
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    width = net.output_format.width
    print(f"{out['network']}: {len(images)} held-out MNIST images, rounding "
          f"{out['rounding']}, golden model ran in {elapsed:.2f} s")
    if "float_accuracy" in out:
        print(f"float accuracy:       {100 * out['float_accuracy']:.2f}%")
    print(f"quantized accuracy:   {100 * out['accuracy']:.2f}% "
          f"({width}-bit outputs, {net.input_format} input)")
    print(f"saturation events per layer: {out['saturations']}")
    print("confusion (rows: true class, columns: predicted):")
    print("      " + " ".join(f"{c:>5}" for c in range(classes)) + "  recall")
    for c, row in enumerate(out["confusion"]):
        total = sum(row)
        recall = f"{100 * row[c] / total:6.1f}%" if total else "     -"
        print(f"{c:>5} " + " ".join(f"{v:>5}" for v in row) + f"  {recall}")
    return 0


def cmd_train(args):
    from systolic.golden import fxtrain
    from systolic.golden.datasets import mnist
    from systolic.golden.netfile import save_network
    config = fxtrain.FxConfig(
        mode=args.mode, width=args.width, frac=args.frac, activation_frac=args.activation_frac,
        lr=args.lr, lr_decay=args.lr_decay, batch_size=args.batch_size, epochs=args.epochs,
        seed=args.seed, train_images=args.train_images)
    fxtrain.architecture(args.arch)  # a bad name fails before anything is printed
    test_images, test_labels = mnist("holdout")
    if not 1 <= args.test_images <= len(test_images):
        raise SystemExit(f"systolic: error: --test-images must be between 1 and "
                         f"{len(test_images)} (the held-out MNIST images), "
                         f"not {args.test_images}")
    test = (test_images[:args.test_images], test_labels[:args.test_images])
    arith = ("float32" if config.mode == "float32" else
             f"{config.mode} rounding, weights {config.weight_format}, activations "
             f"{config.activation_format}, gradients {config.width}-bit dynamic")
    epochs = f"{config.epochs} epoch{'' if config.epochs == 1 else 's'}"
    print(f"systolic train {args.arch}: {arith}; {epochs}, batch "
          f"{config.batch_size}, lr {config.lr}, seed {config.seed}", flush=True)
    try:
        result = fxtrain.train(args.arch, config, test_data=test, name=args.name or args.arch,
                               progress=lambda line: print(line, flush=True))
    except ArithmeticError as exc:  # overflow of an exact sum, or a diverged float run
        raise SystemExit(f"systolic: error: {exc}") from None
    print(f"test error {100 * result.test_error:.2f}% on {len(test[1])} held-out images "
          f"({'float32' if config.mode == 'float32' else 'golden model, exported network'})")
    if args.out:
        print(f"wrote {save_network(result.network, args.out)}")
    return 0


def cmd_sim(args):
    from systolic.golden import models
    from systolic.golden.datasets import mnist
    from systolic.rtl.compiler import ArrayConfig, compile_network
    from systolic.sim.accel import simulate
    net = quantized_network(args.network)
    try:
        if args.board is not None:
            from dataclasses import replace

            from systolic.boards.targets import board
            if args.array is not None or args.multiplier is not None:
                raise SystemExit("systolic: error: --board simulates that board's array "
                                 "preset; give --board or --array/--multiplier, not both")
            config = board(args.board).preset(args.preset)
            if args.dataflow is not None:
                config = replace(config, dataflow=args.dataflow)
        else:
            config = ArrayConfig.parse_shape(args.array or "8x8",
                                             dataflow=args.dataflow or "os",
                                             multiplier=args.multiplier or "inferred")
    except TypeError as exc:        # "Array rows must be a positive integer, not 0"
        raise ValueError(str(exc)) from None
    images, labels = mnist("holdout")
    if not 1 <= args.images <= len(images):
        raise SystemExit(f"systolic: error: --images must be between 1 and {len(images)} "
                         f"(the held-out MNIST images), not {args.images}")
    images, labels = images[:args.images], labels[:args.images]
    program = compile_network(net, config)
    x = models.mnist_input(net, images)
    R, C = config.rows, config.cols
    batches = -(-len(x) // C)
    name = net.name or args.network
    where = f"board {args.board}'s " if args.board is not None else ""
    print(f"systolic sim {name}: {where}{config.describe()}, "
          f"{args.simulator}; {len(x)} held-out MNIST images in {batches} "
          f"batch{'es' if batches > 1 else ''} of {C}; generating and building "
          f"(builds are cached)...", flush=True)
    start = time.perf_counter()
    result = simulate(program, x, rounding=args.rounding, seed=args.seed,
                      simulator=args.simulator, waves=args.waves, check_layers=args.layers,
                      progress=_SimProgress(len(x), C))
    elapsed = time.perf_counter() - start

    golden_pred = result.expected.argmax(axis=1)
    accuracy, golden_acc = result.accuracy(labels), float(np.mean(golden_pred == labels))
    what = "outputs and every stored layer tensor" if args.layers else "outputs"
    per_batch = result.batches[0].cycles
    print(f"accuracy:          {100 * accuracy:.2f}% ({int(round(accuracy * len(x)))}/"
          f"{len(x)} labels; golden model {100 * golden_acc:.2f}%)")
    print(f"bit-exact:         {result.bit_exact}/{len(x)} images ({what})")
    print(f"cycles per image:  {result.cycles_per_image:.1f} measured, "
          f"{program.cycles_per_image:.1f} predicted ({per_batch} per batch of {C})")
    exact = "exact" if result.cycles_exact else "DIFFERENT"
    n = len(result.batches)
    print(f"cycles:            {result.measured_cycles} measured, "
          f"{result.predicted_cycles} predicted ({n} batch{'es' if n > 1 else ''}): {exact}")
    print(f"utilization:       {100 * result.utilization:.1f}% = ({net.macs:,} MACs / "
          f"{R * C} PEs) / {result.cycles_per_image:.1f} cycles per image")
    sim_cycles = sum(b.sim_cycles for b in result.batches)
    sim_wall = sum(b.wall_seconds for b in result.batches)
    if result.weight_beats:
        print(f"weights:           loaded through the weight stream, {result.weight_beats} "
              f"beats in {result.weight_cycles} cycles")
    print(f"simulation:        {elapsed:.1f} s in all ({'built' if result.built else 'cached'}"
          f" model, build {result.build_seconds:.1f} s); batches {sim_wall:.2f} s, "
          f"{sim_cycles / max(sim_wall, 1e-9):,.0f} cycles/s")
    _print_layers(program, result)
    if result.waves is not None:
        print(f"waves: {result.waves}")
    print(f"run folder: {result.run_dir}")
    if result.ok:
        return 0
    for m in result.mismatches[:5]:
        print(f"systolic: error: mismatch: {m}", file=sys.stderr)
    if result.mismatch_count:
        print(f"systolic: error: {result.mismatch_count} elements differ from the golden "
              f"model", file=sys.stderr)
    for c in result.counter_mismatches[:5]:
        print(f"systolic: error: {c}", file=sys.stderr)
    return 1


class _SimProgress:
    """Progress bar of `systolic sim` on stderr: redrawn on a terminal, a line per batch
    otherwise."""

    def __init__(self, images, lanes):
        self.images, self.lanes = images, lanes
        self.tty = sys.stderr.isatty()
        self.start = time.perf_counter()

    def __call__(self, done, total, info):
        width = 30
        filled = width * done // total
        images = min(done * self.lanes, self.images)
        line = (f"[{'#' * filled}{'.' * (width - filled)}] batch {done}/{total}, "
                f"{images}/{self.images} images, {info['cycles']} cycles, "
                f"{time.perf_counter() - self.start:.1f} s")
        if self.tty:
            print("\r" + line, end="\n" if done == total else "", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)


def _print_layers(program, result):
    """Per step: MACs, measured and predicted cycles, utilization and the lost cycles."""
    R, C = program.config.rows, program.config.cols
    measured = result.batches[0].layer_cycles
    print("per layer (cycles of one batch; lost cycles as the compiler accounts them):")
    head = (f"  {'layer':<20} {'MACs/image':>10} {'cycles':>8} {'predicted':>9} "
            f"{'util':>6} {'padding':>8} {'tile stalls':>11} {'fill/drain':>10} "
            f"{'non-matrix':>10}")
    print(head)
    for step, report in zip(program.steps, program.layer_report()):
        op = step.op + ("+maxpool" if step.fused_pool else "")
        cycles = measured[step.layer]
        util = step.macs / R / cycles if cycles else 0.0
        cells = [report.get(k) for k in ("padding", "tile_stalls", "fill_drain",
                                         "non_matrix")]
        cells = ["-" if v is None else f"{v:,.0f}" for v in cells]
        print(f"  {step.layer:>2} {op:<17} {step.macs:>10,} {cycles:>8,} {step.cycles:>9,} "
              f"{100 * util:>5.1f}% {cells[0]:>8} {cells[1]:>11} {cells[2]:>10} "
              f"{cells[3]:>10}")
    total = sum(measured)
    print(f"  {'total':<20} {program.network.macs:>10,} {total:>8,} {program.cycles:>9,} "
          f"{100 * program.network.macs / R / total if total else 0:>5.1f}%")


def _parser():
    p = argparse.ArgumentParser(
        prog="systolic",
        description="Quantized CNN accelerators for small FPGAs, bit-exact with a NumPy "
                    "golden model.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("info", help="layers, formats, MACs, parameters and memory of a "
                                    "network")
    s.add_argument("network", help="reference network name (lenet5, mnist-tiny) or a "
                                   "network file")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("quantize", help="calibrate a float network into a quantized one")
    s.add_argument("network", help="float network file, or a reference network name (its "
                                   "shipped float weights)")
    s.add_argument("--out", "-o", required=True, help="quantized network file to write")
    s.add_argument("--width", type=int, default=8, help="activation width (default 8)")
    s.add_argument("--weight-width", type=int, default=None,
                   help="weight width (default: --width)")
    s.add_argument("--bias-width", type=int, default=16, help="bias width (default 16)")
    s.add_argument("--percentile", type=float, default=None,
                   help="calibrate activations to this percentile of magnitudes "
                        "(default: the maximum)")
    s.add_argument("--rounding", default="nearest_even",
                   choices=("floor", "nearest_even", "stochastic"))
    s.add_argument("--seed", type=int, default=0, help="stochastic-rounding seed")
    s.add_argument("--calibration", default="mnist",
                   help="'mnist' (the MNIST calibration split) or a .npy file of float "
                        "images (N, C, H, W) in the network's input scale")
    s.add_argument("--calibration-images", type=int, default=None,
                   help="use only the first N calibration images")
    s.set_defaults(func=cmd_quantize)

    s = sub.add_parser("golden", help="run the golden model on held-out MNIST images")
    s.add_argument("network")
    s.add_argument("--images", type=int, default=1000,
                   help="number of held-out images (default and maximum 1000)")
    s.add_argument("--rounding", default=None,
                   choices=("floor", "nearest_even", "stochastic"),
                   help="override every layer's rounding mode")
    s.add_argument("--seed", type=int, default=None,
                   help="override the stochastic-rounding seed")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_golden)

    s = sub.add_parser("train", help="train a network in fixed point (or float32) on MNIST "
                                     "with the golden arithmetic")
    s.add_argument("arch", help="gupta-fc, gupta-cnn, lenet5 or mnist-tiny")
    s.add_argument("--mode", default="stochastic",
                   help="float32, nearest_even or stochastic (default)")
    s.add_argument("--width", type=int, default=16, help="word width of every tensor "
                                                        "(default 16)")
    s.add_argument("--frac", type=int, default=14,
                   help="fractional bits of weights, biases and updates (default 14)")
    s.add_argument("--activation-frac", type=int, default=10,
                   help="fractional bits of the input and the layer outputs (default 10)")
    s.add_argument("--lr", type=float, default=0.1, help="learning rate (default 0.1)")
    s.add_argument("--lr-decay", type=float, default=1.0,
                   help="learning-rate factor after every epoch (default 1)")
    s.add_argument("--batch-size", type=int, default=100)
    s.add_argument("--epochs", type=int, default=10)
    s.add_argument("--seed", type=int, default=0,
                   help="seed of the weights, data order and stochastic rounding")
    s.add_argument("--train-images", type=int, default=None,
                   help="train on the first N of the 4,000 training images")
    s.add_argument("--test-images", type=int, default=1000,
                   help="held-out images for the test error (default and maximum 1000)")
    s.add_argument("--name", default=None, help="name of the trained network")
    s.add_argument("--out", "-o", default=None,
                   help="write the trained network here (a quantized network file, or a "
                        "float one for float32)")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("sim", help="run the accelerator's RTL under cocotb on held-out MNIST "
                                   "images, bit-exact against the golden model")
    s.add_argument("network", help="reference network name (lenet5, mnist-tiny) or a "
                                   "quantized network file")
    s.add_argument("--images", type=int, default=100,
                   help="number of held-out images (default 100, maximum 1000)")
    s.add_argument("--array", default=None, help="PE rows x columns (default 8x8); the "
                                                 "columns are the batch")
    s.add_argument("--dataflow", default=None, choices=("os", "ws"),
                   help="output-stationary (os, default) or weight-stationary (ws)")
    s.add_argument("--multiplier", default=None,
                   help="inferred (default), lut or sb_mac16")
    s.add_argument("--board", default=None,
                   help="simulate this board's array preset (e.g. icebreaker: 8x2, "
                        "broadcast, packed SB_MAC16 multipliers, weights in SPRAM loaded "
                        "through the weight stream) instead of --array/--multiplier")
    s.add_argument("--preset", default="default",
                   help="with --board: the board's preset (default: default)")
    s.add_argument("--simulator", default="verilator", choices=("verilator", "icarus"))
    s.add_argument("--waves", action="store_true", help="record FST waves")
    s.add_argument("--rounding", default=None,
                   choices=("floor", "nearest_even", "stochastic"),
                   help="override every layer's rounding mode (a run-time register)")
    s.add_argument("--seed", type=int, default=None,
                   help="stochastic-rounding seed (a run-time register; default the "
                        "network's)")
    s.add_argument("--layers", action="store_true",
                   help="also compare every stored layer tensor with the golden model")
    s.set_defaults(func=cmd_sim)

    from . import cli_demo
    cli_demo.add_parser(sub)

    from . import cli_link
    cli_link.add_parsers(sub)
    from . import cli_board
    cli_board.add_parsers(sub)
    return p


def main(argv=None):
    args = _parser().parse_args(argv)
    from systolic.golden.errors import SystolicError
    try:
        return args.func(args)
    except (SystolicError, OSError, ValueError) as exc:
        print(f"systolic: error: {exc}", file=sys.stderr)
        return 1

if __name__ == "__main__":
    sys.exit(main())
