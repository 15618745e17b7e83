"""The reference networks (``lenet5``, ``mnist-tiny``) and how they are made.

Each reference network ships as package data in ``golden/zoo/``: ``NAME-float.npz`` (the
trained float network) and ``NAME.npz`` (the 8-bit quantized network), both in the format
of :mod:`.netfile`.  They are reproduced from scratch by::

    python -m systolic.golden.models lenet5 mnist-tiny

which trains each float network on the MNIST ``train`` split (:mod:`.train`), calibrates it
on the ``calibration`` split (:mod:`.calibrate`) and writes both files.  The ``holdout``
split is used for neither.
"""

import argparse
import sys
import time
from importlib import resources
from pathlib import Path

import numpy as np

from .calibrate import calibrate
from .datasets import mnist, to_float
from .errors import NetworkFileError
from .ir import Conv2d, Dense, FloatNetwork, MaxPool2d
from .netfile import load_network, save_network
from .run import predict, run_float

__all__ = ["ZOO", "DEFAULT_NETWORK", "zoo_dir", "load", "load_float_reference",
           "float_network", "mnist_input", "build", "main"]

#: Reference networks: name -> one-line description.
ZOO = {
    "lenet5": "LeNet-5 (6-16-120-84-10) on 32x32 padded MNIST, 416,520 MACs",
    "mnist-tiny": "two 3x3 convs (8, 16) with max pooling and a dense layer, 192,064 MACs",
}
#: The network `systolic demo` uses.
DEFAULT_NETWORK = "mnist-tiny"
#: Quantization settings of the shipped networks.
ZOO_WIDTH = 8
ZOO_BIAS_WIDTH = 16
ZOO_TRAIN_SEED = 0


def zoo_dir():
    """The folder of the shipped network files (inside the installed package)."""
    return Path(str(resources.files(__package__) / "zoo"))


def _zoo_file(name, float_=False):
    return zoo_dir() / f"{name}{'-float' if float_ else ''}.npz"


def load(name_or_path):
    """A network by zoo name (``lenet5``) or file path.

    Raises
    ------
    NetworkFileError
        If it is neither a zoo name nor a readable network file.
    """
    path = Path(name_or_path)
    if path.suffix == ".npz" or path.exists():
        return load_network(path)
    if name_or_path in ZOO:
        return load_network(_zoo_file(name_or_path))
    raise NetworkFileError(f"{name_or_path}: not a network file or a reference network "
                           f"(reference networks: {', '.join(ZOO)})")


def load_float_reference(name_or_path):
    """The float network a zoo network was quantized from, or ``None`` when not shipped."""
    if name_or_path in ZOO and _zoo_file(name_or_path, True).is_file():
        return load_network(_zoo_file(name_or_path, True))
    return None


def float_network(arch_name, params, name=None):
    """A :class:`FloatNetwork` from a :data:`.train.ARCHITECTURES` entry and its trained
    parameters."""
    from .train import ARCHITECTURES
    layers, p = [], iter(params)
    for op, cfg in ARCHITECTURES[arch_name]:
        act = "relu" if cfg.get("relu") else "none"
        if op == "conv":
            q = next(p)
            layers.append(Conv2d(np.asarray(q["weight"]), np.asarray(q["bias"]),
                                 stride=cfg.get("stride", 1),
                                 padding=tuple(cfg.get("padding", (0, 0, 0, 0))),
                                 activation=act))
        elif op == "dense":
            q = next(p)
            layers.append(Dense(np.asarray(q["weight"]), np.asarray(q["bias"]),
                                activation=act))
        elif op == "maxpool":
            layers.append(MaxPool2d(cfg["kernel"]))
        else:
            raise ValueError(f"Unknown architecture op {op!r}")
    return FloatNetwork((1, 28, 28), layers, name=name or arch_name)


def mnist_input(network, images):
    """uint8 MNIST images ``(N, 1, 28, 28)`` as the integers a quantized network takes."""
    return network.input_format.quantize(to_float(images))


def build(name, *, out_dir=None, seed=ZOO_TRAIN_SEED, progress=print):
    """Train, calibrate and save reference network ``name``; returns the two paths."""
    from .train import train
    out_dir = zoo_dir() if out_dir is None else Path(out_dir)
    start = time.perf_counter()
    params = train(name, seed=seed, progress=progress)
    fnet = float_network(name, params)
    calib, _ = mnist("calibration")
    qnet = calibrate(fnet, to_float(calib), width=ZOO_WIDTH, bias_width=ZOO_BIAS_WIDTH,
                     name=name)
    images, labels = mnist("holdout")
    f_acc = float(np.mean(run_float(fnet, to_float(images))[-1].reshape(len(images), -1)
                          .argmax(1) == labels))
    q_acc = float(np.mean(predict(qnet, mnist_input(qnet, images)) == labels))
    paths = (save_network(fnet, out_dir / f"{name}-float.npz"),
             save_network(qnet, out_dir / f"{name}.npz"))
    progress(f"{name}: float {100 * f_acc:.2f}%, {ZOO_WIDTH}-bit {100 * q_acc:.2f}% on "
             f"{len(images)} held-out images ({time.perf_counter() - start:.0f} s)")
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m systolic.golden.models",
        description="Rebuild the shipped reference networks from real MNIST.")
    parser.add_argument("names", nargs="*", default=list(ZOO), choices=list(ZOO))
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="where to write (default: the package's zoo folder)")
    parser.add_argument("--seed", type=int, default=ZOO_TRAIN_SEED)
    args = parser.parse_args(argv)
    for name in args.names:
        build(name, out_dir=args.out_dir, seed=args.seed)


if __name__ == "__main__":
    sys.exit(main())
