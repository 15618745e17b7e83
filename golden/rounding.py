"""Requantization and rounding: the one definition of DESIGN.md section 3.

An exact integer ``a`` with ``f_acc`` fractional bits becomes an output integer of format
``Q(w_out, f_out)``.  With ``s = f_acc - f_out``:

* ``s <= 0``: shift left exactly, ``a << -s``;
* ``s > 0``: round ``a / 2**s`` with the mode:

  ==================  ===========================================================
  ``floor``           ``a >> s`` (arithmetic shift)
  ``nearest_even``    nearest integer, ties to even (NumPy ``rint``)
  ``stochastic``      ``(a + r) >> s`` with ``r`` uniform in ``[0, 2**s)``
  ==================  ===========================================================

then clamp to ``[lo, hi]``: the format's range ``[-2**(w_out-1), 2**(w_out-1)-1]``,
narrowed by a fused activation (ReLU: ``lo = 0``).  Saturation is this clamp.
"""

import numpy as np

from .qformat import QFormat
from .srgen import rounding_offsets

__all__ = ["ROUNDING_MODES", "MAX_SHIFT", "MAX_LEFT_SHIFT", "check_mode", "round_shift", "requantize"]

#: The rounding modes, in the order of their run-time register encoding (0, 1, 2).
ROUNDING_MODES = ("floor", "nearest_even", "stochastic")

#: Largest right shift that requantization accepts.  Exact accumulators are kept below
#: 2**53 in magnitude, so larger shifts never change a result and only signal a mistaken
#: format.
MAX_SHIFT = 62
#: Largest left shift.  ``requantize`` clamps its input to +-2**16 before a left shift
#: (every 16-bit output saturates beyond that), so 46 bits cannot overflow int64.
MAX_LEFT_SHIFT = 46


def check_mode(mode):
    """Return ``mode`` if it is a rounding mode; raise ``ValueError`` naming the modes."""
    if mode not in ROUNDING_MODES:
        raise ValueError(
            f"Rounding mode must be one of {', '.join(ROUNDING_MODES)}, not {mode!r}")
    return mode


def round_shift(a, shift, mode, *, r=None):
    """``a / 2**shift`` rounded by ``mode`` (``shift > 0``), or ``a << -shift``.

    Parameters
    ----------
    a : array_like of int
        Exact values (int64).
    shift : int
        Right shift ``s``; ``s <= 0`` shifts left by ``-s``.
    mode : str
        One of :data:`ROUNDING_MODES`.
    r : array_like of int, optional
        Offsets for ``stochastic``, each in ``[0, 2**s)``, broadcastable to ``a``.

    Returns
    -------
    numpy.ndarray of int64
    """
    check_mode(mode)
    a = np.asarray(a, dtype=np.int64)
    if not -MAX_LEFT_SHIFT <= shift <= MAX_SHIFT:
        raise ValueError(f"Requantization shift must be between -{MAX_LEFT_SHIFT} and "
                         f"{MAX_SHIFT}, not {shift}")
    if shift <= 0:
        return a << np.int64(-shift)
    s = np.int64(shift)
    if mode == "floor":
        return a >> s
    if mode == "nearest_even":
        q = a >> s
        rem = a - (q << s)                    # in [0, 2**s)
        half = np.int64(1) << (s - 1)
        up = (rem > half) | ((rem == half) & ((q & 1) == 1))
        return q + up
    if r is None:
        raise ValueError("Stochastic rounding needs the offsets r")
    return (a + np.asarray(r, dtype=np.int64)) >> s


def requantize(acc, shift, mode, out_format, *, lo=None, hi=None, r=None,
               seed=None, layer=None, index=None, count_saturations=False):
    """Round ``acc`` by ``shift`` bits with ``mode``, then saturate into ``out_format``.

    Parameters
    ----------
    acc : array_like of int
        Exact accumulator values.
    shift : int
        ``s = f_acc - f_out``.
    mode : str
        One of :data:`ROUNDING_MODES`.
    out_format : QFormat
        The output format.
    lo, hi : int, optional
        A fused activation's clamp, applied with saturation; defaults to the format range.
        Bounds outside the format range are narrowed to it.
    r : array_like of int, optional
        Explicit stochastic offsets (used by tests and formal checks).
    seed, layer, index : optional
        Otherwise, for ``stochastic``, ``r = H(seed, layer, index)`` truncated to ``s`` bits,
        where ``index`` holds the flat (C, H, W) index of each element of ``acc`` in the
        layer's output tensor.
    count_saturations : bool
        Also return the number of saturation events: elements whose rounded value, after
        the activation's own clamp ``[lo, hi]``, lies outside ``out_format``'s range (a
        negative value zeroed by ReLU is not an event; an overflow is).

    Returns
    -------
    numpy.ndarray of int64, or (ndarray, int) with ``count_saturations``
    """
    if not isinstance(out_format, QFormat):
        raise TypeError(f"Output format must be a QFormat, not {out_format!r}")
    if mode == "stochastic" and r is None and shift > 0:
        if seed is None or layer is None or index is None:
            raise ValueError("Stochastic rounding needs either r or seed, layer and index")
        r = rounding_offsets(seed, layer, index, shift)
    acc = np.asarray(acc, dtype=np.int64)
    if shift < 0:
        # Values beyond +-2**16 saturate whatever the shift; clamping first keeps a << -s
        # inside int64.
        acc = np.clip(acc, -(1 << 16), 1 << 16)
    y = round_shift(acc, shift, mode, r=r)
    out = np.clip(y, out_format.min if lo is None else max(lo, out_format.min),
                  out_format.max if hi is None else min(hi, out_format.max))
    if count_saturations:
        # An event is a value that the activation's own clamp leaves outside the format.
        ya = y if lo is None and hi is None else np.clip(y, lo, hi)
        return out, int(np.count_nonzero((ya < out_format.min) | (ya > out_format.max)))
    return out
