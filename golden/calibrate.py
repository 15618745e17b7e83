"""Calibration and quantization: a :class:`FloatNetwork` plus calibration images become a
:class:`QNetwork` (DESIGN.md section 2).

The rule, written once here and used by every tool: a tensor of word width ``w`` whose
largest magnitude is ``m`` gets the largest ``frac`` for which ``m`` still fits without
saturating, i.e. ``rint(m * 2**frac) <= 2**(w-1) - 1``.  For activations ``m`` is the
largest magnitude seen over the calibration images, or optionally a percentile of the
magnitudes (values above it then saturate).  For weights ``m`` is the tensor's own maximum.
A bias gets the same rule at its own width, capped at the accumulator's ``frac``
(``f_in + f_w``) so it aligns with an exact left shift.  An all-zero tensor gets
``frac = w - 1``.
"""

import math
from dataclasses import replace

import numpy as np

from .ir import FloatNetwork, QNetwork
from .qformat import QFormat
from .rounding import check_mode
from .run import run_float

__all__ = ["choose_frac", "calibrate"]


def choose_frac(max_abs, width):
    """The largest ``frac`` with which ``max_abs`` fits a signed ``width``-bit word.

    Parameters
    ----------
    max_abs : float
        Largest magnitude to represent (>= 0).
    width : int
        Word width in bits.

    Returns
    -------
    int
    """
    max_abs = float(max_abs)
    if not math.isfinite(max_abs) or max_abs < 0:
        raise ValueError(f"Largest magnitude must be a finite non-negative number, "
                         f"not {max_abs}")
    limit = (1 << (width - 1)) - 1
    if max_abs == 0:
        return width - 1
    frac = math.floor(math.log2(limit / max_abs))
    # log2 is inexact near powers of two, and rint may round m * 2**frac up: settle exactly.
    while np.rint(np.ldexp(max_abs, frac + 1)) <= limit:
        frac += 1
    while np.rint(np.ldexp(max_abs, frac)) > limit:
        frac -= 1
    return frac


def _magnitude(values, percentile):
    values = np.abs(np.asarray(values, dtype=np.float64)).ravel()
    if values.size == 0:
        return 0.0
    if percentile is None:
        return float(values.max())
    return float(np.percentile(values, percentile))


def calibrate(network, images, *, width=8, weight_width=None, bias_width=16,
              percentile=None, rounding="nearest_even", seed=0, name=None):
    """Quantize a float network, choosing every tensor's format from data.

    Parameters
    ----------
    network : FloatNetwork
    images : ndarray
        Calibration images, float ``(N, C, H, W)`` in the network's input scale.
    width : int
        Activation word width (input and every layer output).
    weight_width : int, optional
        Weight word width; defaults to ``width``.
    bias_width : int
        Bias word width.
    percentile : float, optional
        Use this percentile of activation magnitudes instead of the maximum.
    rounding : str
        Every requantizing layer's rounding mode.
    seed : int
        Stochastic-rounding seed.
    name : str, optional
        Name of the quantized network (default: the float network's).

    Returns
    -------
    QNetwork
    """
    if not isinstance(network, FloatNetwork):
        raise TypeError(f"Network must be a FloatNetwork, not {type(network).__name__}")
    check_mode(rounding)
    weight_width = width if weight_width is None else weight_width
    for label, w in (("Activation width", width), ("Weight width", weight_width),
                     ("Bias width", bias_width)):
        QFormat(w, 0)  # raises naming the rule
    if percentile is not None and not 0 < percentile <= 100:
        raise ValueError(f"Percentile must be in (0, 100], not {percentile}")
    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 4 or tuple(images.shape[1:]) != network.input_shape or not len(images):
        raise ValueError(f"Calibration images must have shape (N, *{network.input_shape}) "
                         f"with N >= 1, not {images.shape}")
    tensors = run_float(network, images)

    def fmt(values, w):
        return QFormat(w, choose_frac(_magnitude(values, percentile), w))

    formats = [fmt(tensors[0], width)]
    layers = []
    for j, layer in enumerate(network.layers):
        in_format = formats[-1]
        kind = layer.kind
        if kind == "maxpool2d":
            layers.append(layer)
            formats.append(in_format)
            continue
        out_format = fmt(tensors[j + 1], width)
        changes = dict(out_format=out_format, rounding=rounding)
        if kind in ("conv2d", "dense"):
            wf = QFormat(weight_width, choose_frac(np.abs(layer.weight).max(), weight_width))
            changes.update(weight=wf.quantize(layer.weight), weight_format=wf)
            if layer.bias is not None:
                f_acc = in_format.frac + wf.frac
                bf = QFormat(bias_width, min(f_acc, choose_frac(np.abs(layer.bias).max(),
                                                                bias_width)))
                changes.update(bias=bf.quantize(layer.bias), bias_format=bf)
        layers.append(replace(layer, **changes))
        formats.append(out_format)
    return QNetwork(network.input_shape, formats[0], layers, seed=seed,
                    name=network.name if name is None else name)
