"""Fixed-point training with the golden arithmetic (Gupta et al. 2015, on real MNIST).

This trainer keeps every number of a training step in a dynamic fixed-point format
``Q(w, f)`` of DESIGN.md section 2 and rounds after every operation with one of the golden
rounding modes (``nearest_even`` or ``stochastic``, :mod:`.rounding`), taking stochastic
offsets from the hardware's generator ``H`` (:mod:`.srgen`).  It reproduces the setting of
Gupta, Agrawal, Gopalakrishnan and Narayanan, "Deep Learning with Limited Numerical
Precision" (ICML 2015, arXiv:1502.02551): a multiply-accumulate is computed exactly and
then converted, with rounding and saturation, into the format of its result.  Mode
``float32`` trains the same network, from the same initial weights and on the same batches,
in float32: the baseline.

Numbers
-------
With ``cfg`` a :class:`FxConfig` (word width ``w = cfg.width``, 16 by default):

* **Weights and biases** are integers in ``Q(w, cfg.frac)`` (the paper's ``<IL, FL>``
  with ``FL = cfg.frac``).  The initial weights are :func:`.train.init_params` (He normal,
  zero bias) quantized to nearest in this format, identical for every mode.
* **Activations**: the input (``p / 256`` of the uint8 pixels, exact) and the output of
  every layer are in ``Q(w, cfg.activation_frac)`` (the paper's ``<6, 10>`` for
  ``w = 16``).  The forward pass *is* the golden model: :func:`.ops.conv2d`,
  :func:`.ops.dense` and :func:`.ops.maxpool2d`, exact sums, aligned bias, one rounding
  into the output format with the fused ReLU clamp.
* **Back-propagated gradients** (of the loss with respect to each layer's input) are exact
  sums of products of integers, rounded into ``Q(w, f_g)`` where ``f_g`` is chosen every
  step from the exact values by the calibration rule (:func:`.calibrate.choose_frac`):
  dynamic fixed point, so a gradient uses all ``w`` bits whatever its scale.  The gradient
  of the mean cross-entropy with respect to the logits is computed in float64 from the
  fixed-point logits (softmax is not an accelerator operation), truncated to
  ``2**-(f_g + 32)`` and rounded into ``Q(w, f_g)`` with the mode.
* **Weight gradients** exist only as exact accumulators (the paper's MACC model).  The
  learning rate is an integer ``L`` in ``Q(16, f_L)`` (``f_L`` by the calibration rule), and
  the update ``L * acc`` is exact, then rounded once into the weight's own format: this is
  the rounding that decides whether a small update survives.  The new weight is
  ``W - round(L * acc)``, saturated.  Plain minibatch SGD: no momentum, no weight decay.

The ReLU derivative is the mask of the fixed-point output (``y > 0``); max pooling routes
each gradient to the first maximum of its window.  Products and sums are exact: float64
BLAS is used only where every partial sum is provably below 2**53 (the bound is checked).

Stochastic-rounding keys
------------------------
Every rounding draws its offset ``r = H(seed, layer, i)`` truncated to the shift
(:func:`.srgen.rounding_offsets`), with these keys (``cfg.seed`` is the run's seed, ``t``
the 0-based training step; tensor ``k`` is the output of layer ``k - 1``, and tensor ``L``,
for ``L`` layers, holds the logits):

====================================  ==========================  =======================
rounded tensor                        ``seed``                    ``layer``, ``i``
====================================  ==========================  =======================
(step seed ``s_t`` itself)            ``H(cfg.seed, 0xFFFF, t)``  (a derived key)
output of layer ``j`` (forward)       ``s_t``                     ``j``; flat (C, H, W)
                                                                  index in one image
gradient of tensor ``k``              ``s_t``                     ``0x4000 + k``; flat
                                                                  (N, C, H, W) index
update of layer ``j``'s weight        ``s_t``                     ``0x8000 + j``; flat
                                                                  index in the weight
update of layer ``j``'s bias          ``s_t``                     ``0xC000 + j``; channel
====================================  ==========================  =======================

The forward keys are exactly those of the hardware and of :func:`.run.run` (DESIGN.md
section 3): during step ``t`` the network computes what ``run(export(state), x,
seed=s_t)`` computes, and after training the exported :class:`~.ir.QNetwork` (its seed is
``cfg.seed``) runs on the accelerator with the same rounding it was trained with.
As in the hardware, the forward offsets depend on the element's index within one image, so
the images of a batch share them.  ``H(seed, layer, .)`` is a permutation of the 32-bit
counter, so the step seeds of distinct steps differ, and within a step every other
rounded element has its own ``(layer, i)`` pair.  A network has fewer than ``0x4000``
layers (keys would collide beyond).

The command line is ``systolic train`` (``systolic/cli.py``); the experiment that
reproduces the paper is ``benchmarks/gupta2015.py``.
"""

import math
import time
from dataclasses import dataclass

import numpy as np

from . import datasets, ops, train as ftrain
from .calibrate import choose_frac
from .ir import Conv2d, Dense, FloatNetwork, MaxPool2d, QNetwork
from .qformat import QFormat
from .rounding import requantize
from .run import predict as run_predict
from .srgen import H

__all__ = [
    "MODES", "ARCHITECTURES", "STEP_KEY", "GRADIENT_KEY", "WEIGHT_KEY", "BIAS_KEY",
    "FxConfig", "FxState", "EpochRecord", "TrainResult",
    "architecture", "step_seed", "init_state", "forward", "round_real", "round_exact",
    "apply_update", "train_step", "export", "export_float", "evaluate", "train",
]

#: Training arithmetics: the float32 baseline and the two fixed-point rounding modes.
MODES = ("float32", "nearest_even", "stochastic")

#: The MNIST networks of Gupta et al. (2015) (see docs/gupta2015.md), in :mod:`.train`'s notation.
#: Any name of :data:`.train.ARCHITECTURES` (``lenet5``, ``mnist-tiny``) is accepted too.
ARCHITECTURES = {
    # Fully connected: 784-1000-1000-10, ReLU hidden units.  1,794,000 MACs.
    "gupta-fc": [
        ("dense", {"out": 1000, "relu": True}),
        ("dense", {"out": 1000, "relu": True}),
        ("dense", {"out": 10, "relu": False}),
    ],
    # LeNet-like CNN: 5x5 convs with 8 and 16 maps, 2x2 max pooling, 128 ReLU units.
    "gupta-cnn": [
        ("conv", {"out": 8, "kernel": 5, "relu": True}),
        ("maxpool", {"kernel": 2}),
        ("conv", {"out": 16, "kernel": 5, "relu": True}),
        ("maxpool", {"kernel": 2}),
        ("dense", {"out": 128, "relu": True}),
        ("dense", {"out": 10, "relu": False}),
    ],
}

#: ``layer`` keys of ``H`` (see the module docstring).
STEP_KEY = 0xFFFF
GRADIENT_KEY = 0x4000
WEIGHT_KEY = 0x8000
BIAS_KEY = 0xC000
_MAX_LAYERS = GRADIENT_KEY - 1

_EXACT_F64 = 1 << 53
_INT64_SAFE = 1 << 62
#: The float loss gradient is truncated this many bits below its format's LSB before the
#: (single) rounding into that format.
_REAL_GUARD_BITS = 32
#: Word width of the learning rate.
_LR_WIDTH = 16
MNIST_SHAPE = (1, 28, 28)


def architecture(arch):
    """Layer list of ``arch``: a name in :data:`ARCHITECTURES` or
    :data:`.train.ARCHITECTURES`, or a list of layer tuples (see :mod:`.train`).

    Raises
    ------
    ValueError
        If the name is unknown or a layer is malformed.
    """
    if isinstance(arch, str):
        if arch in ARCHITECTURES:
            return ftrain.architecture(ARCHITECTURES[arch])
        if arch not in ftrain.ARCHITECTURES:
            names = [*ARCHITECTURES, *ftrain.ARCHITECTURES]
            raise ValueError(f"Architecture must be one of {', '.join(map(repr, names))}, "
                             f"not {arch!r}")
    layers = ftrain.architecture(arch)
    if len(layers) > _MAX_LAYERS:
        raise ValueError(f"A network trained in fixed point has at most {_MAX_LAYERS} "
                         f"layers, not {len(layers)}")
    return layers


# --- configuration -----------------------------------------------------------------------

def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


@dataclass(frozen=True)
class FxConfig:
    """How to train: arithmetic, formats and SGD hyperparameters.

    Parameters
    ----------
    mode : str
        One of :data:`MODES`.
    width : int
        Word width ``w`` of every fixed-point tensor (2..16).
    frac : int
        Fractional bits of weights, biases and their updates (the paper's ``FL``).
    activation_frac : int
        Fractional bits of the input and of every layer's output.
    lr : float
        Learning rate of the first epoch.
    lr_decay : float
        The learning rate is multiplied by this after every epoch (``0 < lr_decay <= 1``).
    batch_size : int
        Images per SGD step.
    epochs : int
        Passes over the training images.
    seed : int
        The one seed of the run (``0 <= seed < 2**32``): initial weights, data order and
        stochastic rounding.
    train_images : int or None
        Train on the first ``train_images`` images of the ``"train"`` split (default: all
        4,000).

    Members
    -------
    weight_format, activation_format : QFormat
        ``Q(width, frac)`` and ``Q(width, activation_frac)``.

    Raises
    ------
    TypeError
        If a field has the wrong type.
    ValueError
        If a field is out of range.
    """
    mode: str = "stochastic"
    width: int = 16
    frac: int = 14
    activation_frac: int = 10
    lr: float = 0.1
    lr_decay: float = 1.0
    batch_size: int = 100
    epochs: int = 10
    seed: int = 0
    train_images: int | None = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"Training mode must be one of {', '.join(MODES)}, "
                             f"not {self.mode!r}")
        for name in ("width", "frac", "activation_frac", "batch_size", "epochs", "seed"):
            value = getattr(self, name)
            if not _is_int(value):
                raise TypeError(f"Training {name} must be an integer, not {value!r}")
        QFormat(self.width, self.frac)  # raises naming the width rule
        for name in ("lr", "lr_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
                raise TypeError(f"Training {name} must be a number, not {value!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"Learning rate must be a positive number, not {self.lr}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"Learning-rate decay must be in (0, 1], not {self.lr_decay}")
        if self.batch_size < 1:
            raise ValueError(f"Batch size must be at least 1, not {self.batch_size}")
        if self.epochs < 0:
            raise ValueError(f"Epochs must be at least 0, not {self.epochs}")
        if not 0 <= self.seed < 1 << 32:
            raise ValueError(f"Training seed must be in 0..2**32-1, not {self.seed}")
        if self.train_images is not None and (
                not _is_int(self.train_images) or self.train_images < 1):
            raise ValueError(f"Training images must be a positive integer or None, "
                             f"not {self.train_images!r}")

    @property
    def weight_format(self):
        return QFormat(self.width, self.frac)

    @property
    def activation_format(self):
        return QFormat(self.width, self.activation_frac)

    def lr_at(self, epoch):
        """The learning rate of 0-based ``epoch``, ``lr * lr_decay**epoch``."""
        return self.lr * self.lr_decay ** epoch


# --- state -------------------------------------------------------------------------------

@dataclass
class FxState:
    """A network being trained in fixed point.

    Members
    -------
    layers : list of tuple
        The architecture (see :func:`architecture`).
    in_shape : tuple of int
        ``(C, H, W)`` of one input image.
    config : FxConfig
    params : list of dict
        ``{"weight": int64, "bias": int64}`` per conv or dense layer, in
        ``config.weight_format``.
    step : int
        Training steps done so far (the ``t`` of the stochastic-rounding keys).
    """
    layers: list
    in_shape: tuple
    config: FxConfig
    params: list
    step: int = 0


def init_state(arch, config, in_shape=MNIST_SHAPE):
    """A fresh :class:`FxState`: :func:`.train.init_params` with ``config.seed``, quantized
    to nearest in ``config.weight_format``.

    Raises
    ------
    ValueError
        If ``config.mode`` is ``"float32"`` (use :func:`train`), or the architecture is bad.
    """
    if config.mode == "float32":
        raise ValueError("A fixed-point training state needs a fixed-point mode "
                         "(nearest_even or stochastic), not float32")
    layers = architecture(arch)
    fmt = config.weight_format
    params = [{k: fmt.quantize(v) for k, v in layer.items()}
              for layer in ftrain.init_params(layers, in_shape, seed=config.seed)]
    return FxState(layers, tuple(in_shape), config, params)


def step_seed(seed, step):
    """The stochastic-rounding seed of training step ``step``: ``H(seed, 0xFFFF, step)``."""
    return int(H(seed, STEP_KEY, step))


# --- rounding ------------------------------------------------------------------------------

def _flat_index(shape):
    return np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)


def round_exact(acc, f_acc, *, mode, width, seed, key):
    """Round exact integers ``acc`` (``f_acc`` fractional bits) into a dynamic format.

    The format is ``Q(width, f)`` with ``f = choose_frac(max|acc| * 2**-f_acc, width)``, the
    calibration rule; the rounding is :func:`.rounding.requantize` with ``mode``, keyed by
    ``(seed, key, flat index of acc)``.

    Returns
    -------
    q : numpy.ndarray of int64
    fmt : QFormat
    """
    acc = np.asarray(acc, dtype=np.int64)
    peak = float(np.abs(acc).max(initial=0))
    fmt = QFormat(width, choose_frac(math.ldexp(peak, -f_acc), width))
    q = requantize(acc, f_acc - fmt.frac, mode, fmt, seed=seed, layer=key,
                   index=_flat_index(acc.shape))
    return q, fmt


def round_real(x, *, mode, width, seed, key):
    """Round real (float) values into a dynamic format, as :func:`round_exact`.

    ``x`` is first truncated to ``2**-(f + 32)`` (exact in int64: ``|x| * 2**f`` is below
    ``2**15``), a bias below ``2**-32`` LSB, then rounded once with ``mode``.

    Returns
    -------
    q : numpy.ndarray of int64
    fmt : QFormat
    """
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError("Cannot round non-finite values into a fixed-point format")
    fmt = QFormat(width, choose_frac(float(np.abs(x).max(initial=0)), width))
    acc = np.floor(np.ldexp(x, fmt.frac + _REAL_GUARD_BITS)).astype(np.int64)
    q = requantize(acc, _REAL_GUARD_BITS, mode, fmt, seed=seed, layer=key,
                   index=_flat_index(acc.shape))
    return q, fmt


def _lr_fixed(lr):
    """The learning rate as an integer ``L`` in ``Q(16, f_L)``: ``(L, f_L)``."""
    fmt = QFormat(_LR_WIDTH, choose_frac(lr, _LR_WIDTH))
    return int(fmt.quantize(lr)), fmt.frac


def apply_update(value, acc, f_acc, *, lr, mode, fmt, seed, key):
    """One SGD update of a parameter tensor in fixed point.

    ``value - round(L * acc)``, saturated to ``fmt``: ``acc`` is the exact gradient sum
    (``f_acc`` fractional bits), ``L`` the learning rate in ``Q(16, f_L)``, and the product
    is rounded once into ``fmt`` with ``mode``, keyed by ``(seed, key, flat index)``.

    Parameters
    ----------
    value : numpy.ndarray of int
        The parameter, in ``fmt``.
    acc : numpy.ndarray of int
        Exact gradient, same shape.
    f_acc : int
    lr : float
    mode : str
    fmt : QFormat
    seed, key : int
        Stochastic-rounding key (see the module docstring).

    Returns
    -------
    new : numpy.ndarray of int64
    stats : dict
        ``"nonzero"``: elements whose exact update ``L * acc`` is not zero;
        ``"vanished"``: those of them whose rounded update is zero;
        ``"saturated"``: elements clamped to the format's range.
    """
    lr_int, f_lr = _lr_fixed(lr)
    acc = np.asarray(acc, dtype=np.int64)
    if int(np.abs(acc).max(initial=0)) * lr_int >= _INT64_SAFE:
        raise OverflowError("Learning rate times gradient does not fit 62 bits; use narrower "
                            "formats")
    exact = acc * np.int64(lr_int)
    delta = requantize(exact, f_acc + f_lr - fmt.frac, mode, fmt, seed=seed, layer=key,
                       index=_flat_index(acc.shape))
    raw = np.asarray(value, dtype=np.int64) - delta
    new = np.clip(raw, fmt.min, fmt.max)
    nonzero = exact != 0
    return new, {"nonzero": int(np.count_nonzero(nonzero)),
                 "vanished": int(np.count_nonzero(nonzero & (delta == 0))),
                 "saturated": int(np.count_nonzero(new != raw))}


# --- forward and backward --------------------------------------------------------------------

def forward(state, x, *, seed):
    """The fixed-point forward pass: every tensor, as the golden model computes it.

    Parameters
    ----------
    state : FxState
    x : numpy.ndarray of int
        Input batch ``(N, C, H, W)`` in ``state.config.activation_format``.
    seed : int
        Stochastic-rounding seed (a step seed during training, ``config.seed`` after).

    Returns
    -------
    list of numpy.ndarray of int64
        Tensor 0 (the input) .. tensor ``L`` (the logits, ``(N, 10, 1, 1)``): what
        ``run(export(state), x, seed=seed).tensors`` returns.
    """
    cfg = state.config
    fa, fw = cfg.activation_format, cfg.weight_format
    tensors = [np.asarray(x, dtype=np.int64)]
    p = iter(state.params)
    for j, (kind, spec) in enumerate(state.layers):
        x = tensors[-1]
        if kind == "maxpool":
            y = ops.maxpool2d(x, kernel=spec["kernel"])
        else:
            layer = next(p)
            common = dict(in_format=fa, weight_format=fw, bias_format=fw, out_format=fa,
                          activation="relu" if spec["relu"] else "none",
                          rounding=cfg.mode, seed=seed, layer=j)
            if kind == "conv":
                y = ops.conv2d(x, layer["weight"], layer["bias"], stride=spec["stride"],
                               padding=spec["padding"], **common)
            else:
                y = ops.dense(x, layer["weight"], layer["bias"], **common)
        tensors.append(y)
    return tensors


def _check_exact(bound, j, what):
    if bound >= _EXACT_F64:
        raise OverflowError(f"Layer {j}: the {what} sums could exceed 2**53 and would not "
                            f"be exact in float64; use narrower formats or smaller batches")


def _amax(a):
    return int(np.abs(a).max(initial=0))


def _conv_grads(j, spec, x, weight, delta, need_dx):
    """Exact (dx, dweight, dbias) of a conv layer, with :mod:`.train`'s layer math run in
    float64 on integers (checked exact)."""
    o, c, kh, kw = weight.shape
    n, _, ho, wo = delta.shape
    _check_exact(n * ho * wo * _amax(delta) * _amax(x), j, "weight-gradient")
    if need_dx:
        _check_exact(o * kh * kw * _amax(delta) * _amax(weight), j, "input-gradient")
    cols, _ = ftrain._im2col(x.astype(np.float64), spec["kernel"], spec["padding"],
                             spec["stride"])
    dx, dw, db = ftrain._conv_backward(delta.astype(np.float64), weight.astype(np.float64),
                                       (cols, x.shape), spec, need_dx)
    to_int = lambda a: None if a is None else a.astype(np.int64)  # exact integers
    return to_int(dx), to_int(dw), to_int(db)


def _dense_grads(x, weight, delta, need_dx):
    n = len(x)
    d2 = delta.reshape(n, -1)
    flat = x.reshape(n, -1)
    dw = ops._matmul_exact(d2.T, flat)
    db = d2.sum(axis=0)
    dx = ops._matmul_exact(d2, weight).reshape(x.shape) if need_dx else None
    return dx, dw, db


def _softmax_grad(logits, labels):
    """Mean cross-entropy and its gradient w.r.t. the logits (float64)."""
    n = len(logits)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -float(log_probs[np.arange(n), labels].mean())
    grad = np.exp(log_probs)
    grad[np.arange(n), labels] -= 1
    return loss, grad / n


def train_step(state, x, labels, *, lr):
    """One SGD step in fixed point, in place: ``state.params`` updated, ``state.step``
    incremented.

    Parameters
    ----------
    state : FxState
    x : numpy.ndarray of int
        Input batch in ``state.config.activation_format``.
    labels : numpy.ndarray of int
    lr : float
        This step's learning rate.

    Returns
    -------
    dict
        ``"loss"`` (mean cross-entropy of the batch, from the fixed-point logits) and the
        update counts of :func:`apply_update` summed over every parameter tensor.
    """
    cfg = state.config
    mode, width = cfg.mode, cfg.width
    fa, fw = cfg.activation_format, cfg.weight_format
    seed = step_seed(cfg.seed, state.step)
    tensors = forward(state, x, seed=seed)
    n, count = len(x), len(state.layers)
    loss, grad = _softmax_grad(fa.to_float(tensors[-1].reshape(n, -1)), np.asarray(labels))
    delta, gfmt = round_real(grad.reshape(tensors[-1].shape), mode=mode, width=width,
                             seed=seed, key=GRADIENT_KEY + count)
    stats = {"loss": loss, "nonzero": 0, "vanished": 0, "saturated": 0}
    p = len(state.params)
    for j in range(count - 1, -1, -1):
        kind, spec = state.layers[j]
        x_in = tensors[j]
        if kind == "maxpool":
            _, cache = ftrain._maxpool_forward(x_in, spec["kernel"])
            delta = ftrain._maxpool_backward(delta, cache, spec["kernel"])
            continue
        p -= 1
        if spec["relu"]:
            delta = delta * (tensors[j + 1] > 0)
        layer = state.params[p]
        need_dx = j > 0
        if kind == "conv":
            dx, dw, db = _conv_grads(j, spec, x_in, layer["weight"], delta, need_dx)
        else:
            dx, dw, db = _dense_grads(x_in, layer["weight"], delta, need_dx)
        for name, acc, f_acc, key in (("weight", dw, gfmt.frac + fa.frac, WEIGHT_KEY),
                                      ("bias", db, gfmt.frac, BIAS_KEY)):
            layer[name], counts = apply_update(layer[name], acc, f_acc, lr=lr, mode=mode,
                                               fmt=fw, seed=seed, key=key + j)
            for k, v in counts.items():
                stats[k] += v
        if need_dx:
            delta, gfmt = round_exact(dx, gfmt.frac + fw.frac, mode=mode, width=width,
                                      seed=seed, key=GRADIENT_KEY + j)
    state.step += 1
    return stats


# --- export ------------------------------------------------------------------------------

def export(state, name=""):
    """The trained network as a :class:`~.ir.QNetwork` that :func:`.run.run` (and the
    accelerator) runs with the arithmetic it was trained with.

    Every tensor keeps its training format, every requantizing layer the training mode,
    and the network's stochastic-rounding seed is ``state.config.seed``.
    """
    cfg = state.config
    fa, fw = cfg.activation_format, cfg.weight_format
    layers, p = [], iter(state.params)
    for kind, spec in state.layers:
        if kind == "maxpool":
            layers.append(MaxPool2d(kernel=spec["kernel"]))
            continue
        q = next(p)
        common = dict(activation="relu" if spec["relu"] else "none", weight_format=fw,
                      bias_format=fw, out_format=fa, rounding=cfg.mode)
        if kind == "conv":
            layers.append(Conv2d(q["weight"].copy(), q["bias"].copy(), stride=spec["stride"],
                                 padding=tuple(spec["padding"]), **common))
        else:
            layers.append(Dense(q["weight"].copy(), q["bias"].copy(), **common))
    return QNetwork(state.in_shape, fa, layers, seed=cfg.seed, name=name)


def export_float(arch, params, in_shape=MNIST_SHAPE, name=""):
    """A float network (:class:`~.ir.FloatNetwork`) of ``arch`` with float ``params``."""
    layers, p = [], iter(params)
    for kind, spec in architecture(arch):
        if kind == "maxpool":
            layers.append(MaxPool2d(kernel=spec["kernel"]))
            continue
        q = next(p)
        act = "relu" if spec["relu"] else "none"
        if kind == "conv":
            layers.append(Conv2d(np.asarray(q["weight"]), np.asarray(q["bias"]),
                                 stride=spec["stride"], padding=tuple(spec["padding"]),
                                 activation=act))
        else:
            layers.append(Dense(np.asarray(q["weight"]), np.asarray(q["bias"]),
                                activation=act))
    return FloatNetwork(tuple(in_shape), layers, name=name)


def evaluate(network, images, labels):
    """Error rate (0..1) of a :class:`~.ir.QNetwork` on uint8 images, computed by the golden
    model (:func:`.run.predict`)."""
    if not isinstance(network, QNetwork):
        raise TypeError(f"Network must be a QNetwork, not {type(network).__name__}")
    pred = run_predict(network, network.input_format.quantize(datasets.to_float(images)))
    return float(np.mean(pred != np.asarray(labels)))


# --- the training loop ---------------------------------------------------------------------

@dataclass(frozen=True)
class EpochRecord:
    """One epoch of :func:`train` (epoch 0: the initial network, before any step).

    Members
    -------
    epoch : int
    loss : float
        Mean training cross-entropy over the epoch (``nan`` for epoch 0).
    test_error : float
        Error rate on the test images after the epoch.
    vanished : float
        Of the parameter updates that were not zero before rounding, the fraction that
        rounded to zero (``nan`` for float32 and epoch 0).
    saturated : int
        Parameter elements clamped by saturation during the epoch.
    seconds : float
        Wall time since training started.
    """
    epoch: int
    loss: float
    test_error: float
    vanished: float
    saturated: int
    seconds: float


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns.

    Members
    -------
    arch : str or list
    config : FxConfig
    history : tuple of EpochRecord
        Epoch 0 (initial network) .. ``config.epochs``.
    network : QNetwork or FloatNetwork
        The trained network (a :class:`~.ir.FloatNetwork` for ``float32``).
    """
    arch: object
    config: FxConfig
    history: tuple
    network: object

    @property
    def test_error(self):
        return self.history[-1].test_error


def _data(config, train_data, test_data):
    if train_data is None:
        train_data = datasets.mnist("train")
    if test_data is None:
        test_data = datasets.mnist("holdout")
    images, labels = train_data
    if config.train_images is not None:
        if config.train_images > len(images):
            raise ValueError(f"Training images must be at most {len(images)}, "
                             f"not {config.train_images}")
        images, labels = images[:config.train_images], labels[:config.train_images]
    return (np.asarray(images), np.asarray(labels)), (np.asarray(test_data[0]),
                                                      np.asarray(test_data[1]))


def train(arch, config, *, train_data=None, test_data=None, name="", progress=None):
    """Train ``arch`` with ``config`` and record the test error after every epoch.

    Fixed-point modes follow the module docstring.  ``float32`` runs the same SGD
    (:func:`.train.loss_and_grads` in float32) from the same initial weights (before
    quantization) on the same batches.  Each epoch visits the training images in the order
    ``np.random.default_rng([seed, 1]).permutation``, in batches of ``batch_size`` (the
    last one smaller), without augmentation.

    Parameters
    ----------
    arch : str or list
        See :func:`architecture`.
    config : FxConfig
    train_data, test_data : (images, labels), optional
        uint8 images ``(N, 1, 28, 28)`` and labels; default the MNIST ``"train"`` split
        and the ``"holdout"`` split.
    name : str
        Name of the trained network.
    progress : callable, optional
        Called with one line of text after every epoch.

    Returns
    -------
    TrainResult
    """
    if not isinstance(config, FxConfig):
        raise TypeError(f"Training configuration must be an FxConfig, not {config!r}")
    layers = architecture(arch)
    (images, labels), (test_images, test_labels) = _data(config, train_data, test_data)
    x_all = datasets.to_float(images)
    in_shape = tuple(images.shape[1:])
    fixed = config.mode != "float32"
    if fixed:
        state = init_state(layers, config, in_shape)
        x_all = config.activation_format.quantize(x_all)
        error = lambda: evaluate(export(state, name), test_images, test_labels)
    else:
        params = ftrain.init_params(layers, in_shape, seed=config.seed)
        x_all = x_all.astype(np.float32)
        error = lambda: float(np.mean(ftrain.predict(layers, params, test_images)
                                      != test_labels))
    rng = np.random.default_rng([config.seed, 1])
    start = time.perf_counter()
    history = [EpochRecord(0, math.nan, error(), math.nan, 0, 0.0)]
    n = len(x_all)
    for epoch in range(config.epochs):
        lr = config.lr_at(epoch)
        order = rng.permutation(n)
        loss_sum, nonzero, vanished, saturated = 0.0, 0, 0, 0
        for first in range(0, n, config.batch_size):
            rows = order[first:first + config.batch_size]
            xb, yb = x_all[rows], labels[rows]
            if fixed:
                stats = train_step(state, xb, yb, lr=lr)
                loss = stats["loss"]
                nonzero += stats["nonzero"]
                vanished += stats["vanished"]
                saturated += stats["saturated"]
            else:
                loss, grads = ftrain.loss_and_grads(layers, params, xb, yb)
                for layer, grad in zip(params, grads):
                    for key, value in layer.items():
                        value -= np.float32(lr) * grad[key]
            loss_sum += loss * len(rows)
        if not math.isfinite(loss_sum):
            raise FloatingPointError(f"Training diverged in epoch {epoch + 1} (loss "
                                     f"{loss_sum}); lower the learning rate")
        record = EpochRecord(epoch + 1, loss_sum / n, error(),
                             vanished / nonzero if nonzero else math.nan, saturated,
                             time.perf_counter() - start)
        history.append(record)
        if progress is not None:
            extra = (f"  updates rounded to zero {100 * record.vanished:.1f}%"
                     if fixed else "")
            progress(f"epoch {record.epoch:3d}/{config.epochs}  loss {record.loss:.4f}  "
                     f"test error {100 * record.test_error:.2f}%{extra}  "
                     f"{record.seconds:.0f} s")
    if fixed:
        network = export(state, name)
    else:
        network = export_float(layers, params, in_shape, name)
    return TrainResult(arch, config, tuple(history), network)
