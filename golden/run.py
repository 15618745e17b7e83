"""Run a whole network on a batch of images: the expected outputs of every other floor."""

from dataclasses import dataclass

import numpy as np

from . import ops
from .ir import FloatNetwork, QNetwork
from .rounding import check_mode

__all__ = ["RunResult", "run", "run_float", "quantize_input", "predict"]


@dataclass(frozen=True)
class RunResult:
    """What :func:`run` returns.

    Members
    -------
    tensors : list of ndarray
        int64 ``(N, C, H, W)`` for tensor 0 (the input) .. tensor ``len(layers)``.
    saturations : list of int
        Per layer, the saturation events summed over the batch: output elements whose
        rounded value lay outside the output format's range (the hardware's per-layer
        saturation counter counts the same events).
    """
    tensors: list
    saturations: list

    @property
    def output(self):
        return self.tensors[-1]

    @property
    def logits(self):
        """The output flattened per image, ``(N, C*H*W)``."""
        return self.output.reshape(self.output.shape[0], -1)


def quantize_input(network, images):
    """Float images ``(N, C, H, W)`` (or one ``(C, H, W)``) in the network's input format."""
    images = np.asarray(images, dtype=np.float64)
    if images.ndim == 3:
        images = images[None]
    return network.input_format.quantize(images)


def _modes(network, rounding):
    n = len(network.layers)
    if rounding is None:
        return [getattr(l, "rounding", None) for l in network.layers]
    if isinstance(rounding, str):
        check_mode(rounding)
        return [rounding if getattr(l, "rounding", None) is not None else None
                for l in network.layers]
    modes = list(rounding)
    if len(modes) != n:
        raise ValueError(f"Rounding override must have one mode per layer ({n}), "
                         f"not {len(modes)}")
    return modes


def run(network, x, *, rounding=None, seed=None):
    """Run ``network`` on the int64 input batch ``x`` (``(N, C, H, W)`` in the input format).

    Parameters
    ----------
    network : QNetwork
    x : array_like of int
        Input integers; a single image ``(C, H, W)`` is accepted too.
    rounding : str or list of str, optional
        Override the layers' rounding modes (the run-time register): one mode for every
        requantizing layer, or one entry per layer.
    seed : int, optional
        Override the stochastic-rounding seed.

    Returns
    -------
    RunResult
    """
    if not isinstance(network, QNetwork):
        raise TypeError(f"Network must be a QNetwork, not {type(network).__name__}")
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[None]
    if x.dtype.kind not in "iu":
        raise TypeError(f"Input must hold integers in {network.input_format}, not {x.dtype}; "
                        f"use quantize_input() for float images")
    x = x.astype(np.int64)
    if tuple(x.shape[1:]) != network.input_shape:
        raise ValueError(f"Input images have shape {tuple(x.shape[1:])}, the network expects "
                         f"{network.input_shape}")
    if not network.input_format.contains(x):
        raise ValueError(f"Input values {x.min()}..{x.max()} are outside the input format "
                         f"{network.input_format}")
    seed = network.seed if seed is None else seed
    modes = _modes(network, rounding)
    tensors = [x]
    saturations = []
    for j, layer in enumerate(network.layers):
        in_format = network.tensor_formats[j]
        y, sat = _apply(layer, tensors, in_format, modes[j], seed, j, network)
        tensors.append(y)
        saturations.append(sat)
    return RunResult(tensors=tensors, saturations=saturations)


def _apply(layer, tensors, in_format, mode, seed, j, network):
    """Layer ``j`` on the last tensor; returns (output, saturation events)."""
    x = tensors[-1]
    kind = layer.kind
    if kind == "maxpool2d":
        return ops.maxpool2d(x, kernel=layer.kernel, stride=layer.stride), 0
    common = dict(out_format=layer.out_format, rounding=mode, seed=seed, layer=j,
                  count_saturations=True)
    if kind == "conv2d":
        return ops.conv2d(x, layer.weight, layer.bias, in_format=in_format,
                          weight_format=layer.weight_format, bias_format=layer.bias_format,
                          stride=layer.stride, padding=layer.padding,
                          activation=layer.activation, clip_max=layer.clip_max, **common)
    if kind == "dense":
        return ops.dense(x, layer.weight, layer.bias, in_format=in_format,
                         weight_format=layer.weight_format, bias_format=layer.bias_format,
                         activation=layer.activation, clip_max=layer.clip_max, **common)
    if kind == "avgpool2d":
        return ops.avgpool2d(x, kernel=layer.kernel, stride=layer.stride, in_format=in_format,
                             **common)
    if kind == "activation":
        return ops.activation(x, function=layer.function, in_format=in_format,
                              clip_max=layer.clip_max, slope_shift=layer.slope_shift,
                              lut=layer.lut, **common)
    if kind == "add":
        return ops.add(x, tensors[layer.other], a_format=in_format,
                       b_format=network.tensor_formats[layer.other],
                       activation=layer.activation, clip_max=layer.clip_max, **common)
    raise TypeError(f"Unknown layer kind {kind!r}")  # QNetwork validation prevents this


def predict(network, x, **kwargs):
    """Class predictions (argmax of the logits, lowest index on ties)."""
    return run(network, x, **kwargs).logits.argmax(axis=1)


def run_float(network, x):
    """Run a :class:`FloatNetwork` in float64; returns every tensor (input first)."""
    if not isinstance(network, FloatNetwork):
        raise TypeError(f"Network must be a FloatNetwork, not {type(network).__name__}")
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 3:
        x = x[None]
    tensors = [x]
    for layer in network.layers:
        t = tensors[-1]
        kind = layer.kind
        if kind == "conv2d":
            y = ops.float_conv2d(t, layer.weight, layer.bias, stride=layer.stride,
                                 padding=layer.padding, activation=layer.activation,
                                 clip_max=layer.clip_max)
        elif kind == "dense":
            y = ops.float_dense(t, layer.weight, layer.bias, activation=layer.activation,
                                clip_max=layer.clip_max)
        elif kind in ("maxpool2d", "avgpool2d"):
            y = ops.float_pool(t, op=kind[:3], kernel=layer.kernel, stride=layer.stride)
        elif kind == "activation":
            y = ops.float_activation(t, function=layer.function, clip_max=layer.clip_max,
                                     slope_shift=layer.slope_shift, lut=layer.lut)
        elif kind == "add":
            y = ops._float_fused(t + tensors[layer.other], layer.activation, layer.clip_max)
        tensors.append(y)
    return tensors
