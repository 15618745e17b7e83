"""Float training of small sequential CNNs in NumPy, for the networks in the zoo.

A network here is an *architecture*, a list of layer tuples ``(kind, options)``, plus its
*parameters*, one ``{"weight": ..., "bias": ...}`` dict per conv or dense layer.  The
layer semantics are exactly those the quantized golden model implements (DESIGN.md
section 4), so float parameters trained here can be quantized layer by layer:

``("conv", {"out": O, "kernel": k, "padding": (top, bottom, left, right), "stride": s, "relu": bool})``
    Cross-correlation (no kernel flip, like PyTorch's ``Conv2d``) of the zero-padded input
    with a weight of shape ``(O, I, k, k)`` plus a bias of shape ``(O,)``; output size
    ``floor((H + top + bottom - k) / s) + 1``.  ``kernel`` may also be a pair ``(kh, kw)``;
    ``padding`` defaults to ``(0, 0, 0, 0)`` ("valid"), ``stride`` to 1, ``relu`` to False.
``("maxpool", {"kernel": k})``
    Maximum over ``k x k`` windows with stride ``k`` and no padding; the output is
    ``floor(H / k) x floor(W / k)`` (a remainder row or column is dropped).
``("dense", {"out": M, "relu": bool})``
    The input tensor, flattened in (C, H, W) order, times a weight of shape
    ``(M, C*H*W)`` plus a bias of shape ``(M,)``; the output has shape ``(M, 1, 1)``.

``"relu": True`` applies ``max(0, .)`` to the layer's output (a fused activation).  One
image is a ``(C, H, W)`` tensor, a batch ``(N, C, H, W)``.  The network input is
:func:`systolic.golden.datasets.to_float` of the uint8 image, ``p / 256``; the last
layer's output is the vector of logits.

Training (:func:`train`) uses only the ``"train"`` split of
:func:`systolic.golden.datasets.mnist`, softmax cross-entropy, AdamW with a one-cycle
learning rate, random shifts of up to 2 pixels, and one seed for everything, so a rerun on
the same machine reproduces the same weights bit for bit.  Run it as::

    python -m systolic.golden.train lenet5 --seed 0 --out lenet5_params.npz
"""

import argparse
import sys
import time

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import datasets

__all__ = [
    "ARCHITECTURES",
    "DEFAULTS",
    "architecture",
    "output_shapes",
    "macs",
    "init_params",
    "forward",
    "loss_and_grads",
    "train",
    "predict",
    "accuracy",
    "save_params",
    "load_params",
    "main",
]


#: Built-in architectures, name -> list of layer tuples (see the module docstring).
ARCHITECTURES = {
    # Classic LeNet-5 on MNIST: 28x28 padded to 32x32 by the first conv.  416,520 MACs.
    "lenet5": [
        ("conv", {"out": 6, "kernel": 5, "padding": (2, 2, 2, 2), "stride": 1, "relu": True}),
        ("maxpool", {"kernel": 2}),
        ("conv", {"out": 16, "kernel": 5, "padding": (0, 0, 0, 0), "stride": 1, "relu": True}),
        ("maxpool", {"kernel": 2}),
        ("dense", {"out": 120, "relu": True}),
        ("dense", {"out": 84, "relu": True}),
        ("dense", {"out": 10, "relu": False}),
    ],
    # A network small enough for the smallest boards.  192,064 MACs.
    "mnist-tiny": [
        ("conv", {"out": 8, "kernel": 3, "padding": (0, 0, 0, 0), "stride": 1, "relu": True}),
        ("maxpool", {"kernel": 2}),
        ("conv", {"out": 16, "kernel": 3, "padding": (0, 0, 0, 0), "stride": 1, "relu": True}),
        ("maxpool", {"kernel": 2}),
        ("dense", {"out": 10, "relu": False}),
    ],
}

#: Default training hyperparameters of :func:`train` (the zoo networks use these).
DEFAULTS = {
    "epochs": 40,
    "batch_size": 32,
    "lr": 2e-3,             # peak learning rate of the one-cycle schedule
    "warmup_epochs": 2,     # linear warm-up from 0 to lr, then cosine decay to 0
    "weight_decay": 5e-4,   # decoupled (AdamW), multiplied by the current learning rate
    "betas": (0.9, 0.999),
    "eps": 1e-8,
    "max_shift": 2,         # random translations of -2..2 pixels in each direction
}

MNIST_SHAPE = (1, 28, 28)


# --- architectures ---------------------------------------------------------------------------

def architecture(arch):
    """Architecture list of ``arch``: a name in :data:`ARCHITECTURES` or a list of layers.

    Parameters
    ----------
    arch : str or list of tuple
        Name of a built-in architecture, or a list of ``(kind, options)`` layer tuples.

    Returns
    -------
    list of tuple
        The layers, with every option filled in (defaults made explicit, ``kernel`` and
        ``padding`` normalized to tuples).

    Raises
    ------
    ValueError
        If the name is unknown or a layer is malformed (the message names the layer).
    """
    if isinstance(arch, str):
        if arch not in ARCHITECTURES:
            raise ValueError(f"Architecture must be one of {', '.join(map(repr, ARCHITECTURES))}, "
                             f"not {arch!r}")
        arch = ARCHITECTURES[arch]
    layers = []
    for index, layer in enumerate(arch):
        try:
            kind, options = layer
        except (TypeError, ValueError):
            raise ValueError(f"Layer {index} must be a (kind, options) pair, not {layer!r}") from None
        options = dict(options)
        if kind == "conv":
            kernel = options.pop("kernel")
            kernel = (kernel, kernel) if np.ndim(kernel) == 0 else tuple(kernel)
            padding = options.pop("padding", (0, 0, 0, 0))
            padding = (padding,) * 4 if np.ndim(padding) == 0 else tuple(padding)
            spec = {"out": int(options.pop("out")), "kernel": tuple(map(int, kernel)),
                    "padding": tuple(map(int, padding)), "stride": int(options.pop("stride", 1)),
                    "relu": bool(options.pop("relu", False))}
            if len(spec["kernel"]) != 2 or min(spec["kernel"]) < 1:
                raise ValueError(f"Layer {index} (conv): kernel must be k or (kh, kw) with k >= 1, "
                                 f"not {kernel!r}")
            if len(spec["padding"]) != 4 or min(spec["padding"]) < 0:
                raise ValueError(f"Layer {index} (conv): padding must be (top, bottom, left, "
                                 f"right) of non-negative ints, not {padding!r}")
            if spec["stride"] < 1:
                raise ValueError(f"Layer {index} (conv): stride must be >= 1, not {spec['stride']}")
        elif kind == "maxpool":
            spec = {"kernel": int(options.pop("kernel"))}
            if spec["kernel"] < 1:
                raise ValueError(f"Layer {index} (maxpool): kernel must be >= 1, "
                                 f"not {spec['kernel']}")
        elif kind == "dense":
            spec = {"out": int(options.pop("out")), "relu": bool(options.pop("relu", False))}
        else:
            raise ValueError(f"Layer {index}: kind must be 'conv', 'maxpool' or 'dense', "
                             f"not {kind!r}")
        if "out" in spec and spec["out"] < 1:
            raise ValueError(f"Layer {index} ({kind}): out must be >= 1, not {spec['out']}")
        if options:
            raise ValueError(f"Layer {index} ({kind}): unknown options {sorted(options)}")
        layers.append((kind, spec))
    return layers


def output_shapes(arch, in_shape=MNIST_SHAPE):
    """Shape ``(C, H, W)`` of each layer's output, for one input image of ``in_shape``.

    Raises
    ------
    ValueError
        If a layer's output would be empty.
    """
    c, h, w = in_shape
    shapes = []
    for index, (kind, spec) in enumerate(architecture(arch)):
        if kind == "conv":
            kh, kw = spec["kernel"]
            top, bottom, left, right = spec["padding"]
            s = spec["stride"]
            c, h, w = spec["out"], (h + top + bottom - kh) // s + 1, (w + left + right - kw) // s + 1
        elif kind == "maxpool":
            h, w = h // spec["kernel"], w // spec["kernel"]
        else:
            c, h, w = spec["out"], 1, 1
        if h < 1 or w < 1:
            raise ValueError(f"Layer {index} ({kind}) has an empty output for input {in_shape}")
        shapes.append((c, h, w))
    return shapes


def macs(arch, in_shape=MNIST_SHAPE):
    """Multiply-accumulates of one image through ``arch`` (conv and dense layers only)."""
    total = 0
    shape = tuple(in_shape)
    for (kind, spec), out in zip(architecture(arch), output_shapes(arch, in_shape)):
        if kind == "conv":
            total += int(np.prod(out)) * shape[0] * spec["kernel"][0] * spec["kernel"][1]
        elif kind == "dense":
            total += out[0] * int(np.prod(shape))
        shape = out
    return total


def init_params(arch, in_shape=MNIST_SHAPE, *, seed):
    """He-initialized float32 parameters of ``arch``.

    Weights are normal with standard deviation ``sqrt(2 / fan_in)``, biases zero.

    Parameters
    ----------
    arch : str or list of tuple
        Architecture (see :func:`architecture`).
    in_shape : tuple of int
        Shape ``(C, H, W)`` of one input image.
    seed : int
        Seed of :func:`numpy.random.default_rng`.

    Returns
    -------
    list of dict
        One ``{"weight": ..., "bias": ...}`` per conv or dense layer, in order.  Conv
        weights have shape ``(O, I, kh, kw)``, dense weights ``(out, in)``.
    """
    rng = np.random.default_rng(seed)
    params = []
    shape = tuple(in_shape)
    for (kind, spec), out in zip(architecture(arch), output_shapes(arch, in_shape)):
        if kind == "conv":
            wshape = (spec["out"], shape[0], *spec["kernel"])
        elif kind == "dense":
            wshape = (spec["out"], int(np.prod(shape)))
        if kind != "maxpool":
            fan_in = int(np.prod(wshape[1:]))
            weight = rng.standard_normal(wshape) * np.sqrt(2.0 / fan_in)
            params.append({"weight": weight.astype(np.float32),
                           "bias": np.zeros(spec["out"], dtype=np.float32)})
        shape = out
    return params


# --- layers ------------------------------------------------------------------------------------

def _im2col(x, kernel, padding, stride):
    """Patches of ``x`` (N, C, H, W) as a matrix (N*Ho*Wo, C*kh*kw), rows in (n, y, x) order."""
    top, bottom, left, right = padding
    if any(padding):
        x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    windows = sliding_window_view(x, kernel, axis=(2, 3))[:, :, ::stride, ::stride]
    n, c, ho, wo, kh, kw = windows.shape
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * kh * kw), (ho, wo)


def _conv_forward(x, weight, bias, spec):
    cols, (ho, wo) = _im2col(x, spec["kernel"], spec["padding"], spec["stride"])
    out = cols @ weight.reshape(weight.shape[0], -1).T
    out += bias
    y = out.reshape(x.shape[0], ho, wo, -1).transpose(0, 3, 1, 2)
    return y, (cols, x.shape)


def _conv_backward(dy, weight, cache, spec, need_dx):
    cols, x_shape = cache
    n, o, ho, wo = dy.shape
    dy_rows = dy.transpose(0, 2, 3, 1).reshape(-1, o)
    dweight = (dy_rows.T @ cols).reshape(weight.shape)
    dbias = dy_rows.sum(axis=0)
    if not need_dx:
        return None, dweight, dbias
    _, c, h, w = x_shape
    kh, kw = spec["kernel"]
    top, bottom, left, right = spec["padding"]
    s = spec["stride"]
    dcols = (dy_rows @ weight.reshape(o, -1)).reshape(n, ho, wo, c, kh, kw)
    dcols = dcols.transpose(4, 5, 0, 3, 1, 2)  # (kh, kw, N, C, Ho, Wo)
    dxp = np.zeros((n, c, h + top + bottom, w + left + right), dtype=dy.dtype)
    for i in range(kh):          # a loop over kernel taps, not pixels
        for j in range(kw):
            dxp[:, :, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s] += dcols[i, j]
    return dxp[:, :, top:top + h, left:left + w], dweight, dbias


def _maxpool_forward(x, k):
    n, c, h, w = x.shape
    hk, wk = h // k, w // k
    windows = (x[:, :, :hk * k, :wk * k].reshape(n, c, hk, k, wk, k)
               .transpose(0, 1, 2, 4, 3, 5).reshape(n, c, hk, wk, k * k))
    argmax = windows.argmax(axis=-1)[..., None]
    return np.take_along_axis(windows, argmax, axis=-1)[..., 0], (argmax, x.shape)


def _maxpool_backward(dy, cache, k):
    argmax, (n, c, h, w) = cache
    hk, wk = h // k, w // k
    dwindows = np.zeros((n, c, hk, wk, k * k), dtype=dy.dtype)
    np.put_along_axis(dwindows, argmax, dy[..., None], axis=-1)
    dx = np.zeros((n, c, h, w), dtype=dy.dtype)
    dx[:, :, :hk * k, :wk * k] = (dwindows.reshape(n, c, hk, wk, k, k)
                                  .transpose(0, 1, 2, 4, 3, 5).reshape(n, c, hk * k, wk * k))
    return dx


def _forward(layers, params, x, keep):
    caches = []
    p = iter(params)
    for kind, spec in layers:
        if kind == "maxpool":
            x, cache = _maxpool_forward(x, spec["kernel"])
        else:
            layer = next(p)
            if kind == "conv":
                x, cache = _conv_forward(x, layer["weight"], layer["bias"], spec)
            else:
                flat = x.reshape(x.shape[0], -1)
                cache = (flat, x.shape)
                x = (flat @ layer["weight"].T + layer["bias"])[:, :, None, None]
            if spec["relu"]:
                x = np.maximum(x, 0)
        if keep:
            caches.append((cache, x))
    return x, caches


def forward(arch, params, x):
    """Float forward pass of a batch.

    Parameters
    ----------
    arch : str or list of tuple
        Architecture (see :func:`architecture`).
    params : list of dict
        Parameters as returned by :func:`init_params` or :func:`train`.
    x : numpy.ndarray
        Float input of shape ``(N, C, H, W)`` (for MNIST, ``datasets.to_float(images)``).
        The computation runs in the result dtype of ``x`` and the parameters.

    Returns
    -------
    numpy.ndarray
        Logits (the last layer's outputs, flattened) of shape ``(N, out)``.
    """
    logits, _ = _forward(architecture(arch), params, x, keep=False)
    return logits.reshape(logits.shape[0], -1)


def loss_and_grads(arch, params, x, labels):
    """Mean softmax cross-entropy of a batch and its gradient for every parameter.

    Parameters
    ----------
    arch : str or list of tuple
        Architecture.
    params : list of dict
        Parameters.
    x : numpy.ndarray
        Float input ``(N, C, H, W)``.
    labels : numpy.ndarray
        Integer classes ``(N,)``.

    Returns
    -------
    loss : float
        ``mean(logsumexp(logits) - logits[label])``.
    grads : list of dict
        ``{"weight": ..., "bias": ...}`` gradients, shaped like ``params``.
    """
    layers = architecture(arch)
    out, caches = _forward(layers, params, x, keep=True)
    n = x.shape[0]
    logits = out.reshape(n, -1)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    log_probs = shifted - log_norm
    loss = -float(log_probs[np.arange(n), labels].mean())
    dy = np.exp(log_probs)
    dy[np.arange(n), labels] -= 1
    dy = (dy / n).astype(out.dtype, copy=False).reshape(out.shape)

    grads = []
    p = len(params)
    for index in range(len(layers) - 1, -1, -1):
        kind, spec = layers[index]
        cache, y = caches[index]
        if kind == "maxpool":
            dy = _maxpool_backward(dy, cache, spec["kernel"])
            continue
        p -= 1
        if spec["relu"]:
            dy = dy * (y > 0)
        need_dx = index > 0
        weight = params[p]["weight"]
        if kind == "conv":
            dx, dweight, dbias = _conv_backward(dy, weight, cache, spec, need_dx)
        else:
            flat, in_shape = cache
            dy2 = dy.reshape(n, -1)
            dweight, dbias = dy2.T @ flat, dy2.sum(axis=0)
            dx = (dy2 @ weight).reshape(in_shape) if need_dx else None
        grads.append({"weight": dweight, "bias": dbias})
        dy = dx
    grads.reverse()
    return loss, grads


# --- training ----------------------------------------------------------------------------------

def _shift(images, rng, max_shift):
    """Translate each image by its own random (dy, dx) in -max_shift..max_shift, zero-filled."""
    if max_shift == 0:
        return images
    n, c, h, w = images.shape
    m = max_shift
    padded = np.pad(images, ((0, 0), (0, 0), (m, m), (m, m)))
    oy = rng.integers(0, 2 * m + 1, size=n)
    ox = rng.integers(0, 2 * m + 1, size=n)
    rows = (oy[:, None] + np.arange(h))[:, None, :, None]
    cols = (ox[:, None] + np.arange(w))[:, None, None, :]
    return padded[np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None], rows, cols]


def train(arch_name, *, seed=0, epochs=DEFAULTS["epochs"], batch_size=DEFAULTS["batch_size"],
          lr=DEFAULTS["lr"], warmup_epochs=DEFAULTS["warmup_epochs"],
          weight_decay=DEFAULTS["weight_decay"], max_shift=DEFAULTS["max_shift"],
          progress=None):
    """Train a float32 network on the ``"train"`` MNIST split.

    AdamW (``betas`` and ``eps`` from :data:`DEFAULTS`) minimizes the mean softmax
    cross-entropy over shuffled minibatches.  The learning rate rises linearly from 0 to
    ``lr`` over ``warmup_epochs`` and then follows a cosine down to 0 at the last step;
    weight decay is decoupled (``w -= lr_t * weight_decay * w``, weights only, not biases).
    Every epoch sees each training image once, translated by a random integer shift of
    ``-max_shift..max_shift`` pixels in each direction (zero fill).  Initialization
    (:func:`init_params` with ``seed``) and the data order and shifts
    (``np.random.default_rng([seed, 1])``) are seeded, so a rerun on the same machine gives
    the same weights bit for bit.

    Parameters
    ----------
    arch_name : str or list of tuple
        Architecture name in :data:`ARCHITECTURES` (or an architecture list).
    seed : int
        The one seed of the run.
    epochs, batch_size, lr, warmup_epochs, weight_decay, max_shift
        Hyperparameters; the defaults are :data:`DEFAULTS`, with which the zoo networks
        were trained.
    progress : callable or None
        Called with one line of text after every epoch (training loss, holdout accuracy and
        elapsed time), e.g. ``print``.  The holdout accuracy is only reported, never used
        to choose anything.

    Returns
    -------
    list of dict
        The float32 parameters after the last epoch (see :func:`init_params`).
    """
    layers = architecture(arch_name)
    images, labels = datasets.mnist("train")
    x_all = datasets.to_float(images).astype(np.float32)
    if progress is not None:
        hold_images, hold_labels = datasets.mnist("holdout")
    params = init_params(layers, x_all.shape[1:], seed=seed)
    rng = np.random.default_rng([seed, 1])
    beta1, beta2 = DEFAULTS["betas"]
    eps = DEFAULTS["eps"]
    moments = [{k: (np.zeros_like(v), np.zeros_like(v)) for k, v in layer.items()}
               for layer in params]
    n = len(x_all)
    steps_per_epoch = -(-n // batch_size)
    total_steps = epochs * steps_per_epoch
    warmup_steps = warmup_epochs * steps_per_epoch
    step = 0
    start = time.perf_counter()
    for epoch in range(epochs):
        order = rng.permutation(n)
        x_epoch = _shift(x_all[order], rng, max_shift)
        y_epoch = labels[order]
        loss_sum = 0.0
        for first in range(0, n, batch_size):
            xb = x_epoch[first:first + batch_size]
            yb = y_epoch[first:first + batch_size]
            loss, grads = loss_and_grads(layers, params, xb, yb)
            loss_sum += loss * len(xb)
            step += 1
            if step <= warmup_steps:
                rate = lr * step / warmup_steps
            else:
                t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
                rate = lr * 0.5 * (1.0 + np.cos(np.pi * t))
            c1 = 1.0 - beta1 ** step
            c2 = 1.0 - beta2 ** step
            for layer, grad, moment in zip(params, grads, moments):
                for key, value in layer.items():
                    m, v = moment[key]
                    g = grad[key]
                    m *= beta1
                    m += (1.0 - beta1) * g
                    v *= beta2
                    v += (1.0 - beta2) * (g * g)
                    if key == "weight" and weight_decay:
                        value *= np.float32(1.0 - rate * weight_decay)
                    value -= (np.float32(rate / c1) * m
                              / (np.sqrt(v / np.float32(c2)) + np.float32(eps)))
        if progress is not None:
            held = accuracy(layers, params, hold_images, hold_labels)
            progress(f"epoch {epoch + 1:3d}/{epochs}  loss {loss_sum / n:.4f}  "
                     f"holdout {100 * held:.2f}%  {time.perf_counter() - start:.0f} s")
    return params


def predict(arch_name, params, images_uint8, batch_size=1000):
    """Predicted classes of uint8 images ``(N, C, H, W)``, computed in float32."""
    layers = architecture(arch_name)
    params32 = [{k: np.asarray(v, dtype=np.float32) for k, v in layer.items()} for layer in params]
    out = []
    for first in range(0, len(images_uint8), batch_size):
        x = datasets.to_float(images_uint8[first:first + batch_size]).astype(np.float32)
        out.append(forward(layers, params32, x).argmax(axis=1))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def accuracy(arch_name, params, images_uint8, labels):
    """Fraction (0..1) of uint8 images ``(N, C, H, W)`` whose predicted class is the label."""
    return float(np.mean(predict(arch_name, params, images_uint8) == np.asarray(labels)))


def save_params(path, params):
    """Write parameters with :func:`numpy.savez` as ``layer{i}.weight``/``layer{i}.bias``.

    ``i`` counts conv and dense layers only (0, 1, ...).
    """
    arrays = {}
    for i, layer in enumerate(params):
        arrays[f"layer{i}.weight"] = layer["weight"]
        arrays[f"layer{i}.bias"] = layer["bias"]
    np.savez(path, **arrays)


def load_params(path):
    """Read parameters written by :func:`save_params` (a list of dicts)."""
    with np.load(path) as data:
        count = sum(1 for key in data.files if key.endswith(".weight"))
        return [{"weight": data[f"layer{i}.weight"], "bias": data[f"layer{i}.bias"]}
                for i in range(count)]


def main(argv=None):
    """``python -m systolic.golden.train ARCH [--seed S] [--epochs E] [--out PATH.npz]``."""
    parser = argparse.ArgumentParser(
        prog="python -m systolic.golden.train",
        description="Train a float network on the MNIST 'train' split and report its "
                    "accuracy on the 'holdout' split.")
    parser.add_argument("arch", choices=sorted(ARCHITECTURES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    parser.add_argument("--out", help="write the parameters here (numpy .npz)")
    args = parser.parse_args(argv)
    try:
        start = time.perf_counter()
        params = train(args.arch, seed=args.seed, epochs=args.epochs,
                       progress=lambda line: print(line, flush=True))
        elapsed = time.perf_counter() - start
        images, labels = datasets.mnist("holdout")
        held = accuracy(args.arch, params, images, labels)
    except datasets.DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{args.arch}: holdout accuracy {100 * held:.2f}% "
          f"({len(labels)} images), trained in {elapsed:.0f} s")
    if args.out:
        save_params(args.out, params)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
