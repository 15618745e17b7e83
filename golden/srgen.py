"""The stochastic-rounding generator ``H(seed, layer, i)`` (DESIGN.md section 3).

This module is the one definition of ``H``.  The golden model calls it; the RTL generator
reads :data:`ROUNDS`, :data:`WORD`, :data:`ROT_X`, :data:`ROT_Y`, :data:`KEY_CONST` and
:func:`round_keys` from here instead of restating them.

Definition
----------
``H`` is a counter-based generator: a keyed permutation of the 32-bit counter ``i``.  The
permutation is the Speck32/64 block cipher's round function and key schedule (Beaulieu et
al., "The SIMON and SPECK Families of Lightweight Block Ciphers", 2013), cut to
:data:`ROUNDS` rounds.  It is used for statistics only, never for secrecy.

* Key words: ``k0 = seed[15:0]``, ``l0 = seed[31:16]``, ``l1 = layer[15:0]``,
  ``l2 = KEY_CONST``.  Key schedule, for ``j = 0 .. ROUNDS-2``::

      l[j+3] = (k[j] + (l[j] >>> 7)) ^ j
      k[j+1] = (k[j] <<< 2) ^ l[j+3]

* Block: ``x = i[31:16]``, ``y = i[15:0]``.  Each round ``j``::

      x = ((x >>> ROT_X) + y) ^ k[j]
      y = (y <<< ROT_Y) ^ x

* ``H = (x << 16) | y`` (32 bits).

All words are 16 bits and all additions are modulo ``2**16``.  The per-element datapath is
:data:`ROUNDS` x (one 16-bit adder and two 16-bit xors); rotations are wiring.  There is no
multiplier.  The round keys depend only on ``(seed, layer)``, so hardware computes them once
per layer and shares them between all output lanes.

Rounding offsets
----------------
For a right shift by ``s`` bits, the stochastic-rounding offset is ``r = H & (2**s - 1)``
(the low ``s`` bits) for ``s <= 32``.  For ``s > 32`` it is ``H << (s - 32)``: the 32 random
bits become the top bits of ``r`` and the low bits are zero, a bias below ``2**-32`` LSB.

Why 9 rounds: flipping any one counter, seed or layer bit flips every output bit with
probability 0.5 +- 0.015 after 9 rounds (measured over 2e4 random counters, the sampling
noise floor).  The layer word ``l1`` first reaches the block through ``k[2]``, one round after
the seed's ``l0``, so it needs one round more: at 8 rounds layer-bit biases are still 0.13
(counter and seed bits are already at the noise floor), and 6 rounds leave seed-bit biases
of 0.37.  ``tests/golden/test_srgen.py`` checks this avalanche figure (every layer bit
included) and the uniformity of the low bits.
"""

import numpy as np

__all__ = ["ROUNDS", "WORD", "ROT_X", "ROT_Y", "KEY_CONST", "SEED_BITS", "LAYER_BITS",
           "INDEX_BITS", "round_keys", "H", "rounding_offsets"]

#: Number of Speck rounds (see "Why 9 rounds" above).
ROUNDS = 9
#: Word width of the two halves of the block.
WORD = 16
#: Right-rotation of ``x`` and left-rotation of ``y`` in each round (Speck32's alpha, beta).
ROT_X = 7
ROT_Y = 2
#: The fourth key word (constant).
KEY_CONST = 0x7A3C
#: Widths of H's inputs.
SEED_BITS = 32
LAYER_BITS = 16
INDEX_BITS = 32

_MASK = (1 << WORD) - 1


def _rotl(v, r):
    return ((v << r) | (v >> (WORD - r))) & _MASK


def _rotr(v, r):
    return ((v >> r) | (v << (WORD - r))) & _MASK


def _check_range(name, value, bits):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"Stochastic-rounding {name} must be an integer, not {value!r}")
    if not 0 <= value < (1 << bits):
        raise ValueError(
            f"Stochastic-rounding {name} must be in 0..2**{bits}-1, not {value}")
    return int(value)


def round_keys(seed, layer):
    """The :data:`ROUNDS` 16-bit round keys for ``(seed, layer)``.

    Parameters
    ----------
    seed : int
        The network's stochastic-rounding seed, ``0 <= seed < 2**32``.
    layer : int
        The layer index, ``0 <= layer < 2**16``.

    Returns
    -------
    tuple of int
    """
    seed = _check_range("seed", seed, SEED_BITS)
    layer = _check_range("layer", layer, LAYER_BITS)
    k = [seed & _MASK]
    l = [seed >> WORD, layer, KEY_CONST]
    for j in range(ROUNDS - 1):
        l.append(((k[j] + _rotr(l[j], 7)) & _MASK) ^ j)
        k.append(_rotl(k[j], 2) ^ l[j + 3])
    return tuple(k)


def H(seed, layer, i):
    """The generator: 32 random bits for each element index ``i``.

    Parameters
    ----------
    seed, layer : int
        See :func:`round_keys`.
    i : int or array_like of int
        Flat element indices, ``0 <= i < 2**32``.

    Returns
    -------
    numpy.ndarray of uint64
        Values in ``0 .. 2**32 - 1``, same shape as ``i``.
    """
    i = np.asarray(i)
    if i.size and (i.min() < 0 or i.max() >= (1 << INDEX_BITS)):
        raise ValueError(f"Stochastic-rounding index must be in 0..2**{INDEX_BITS}-1")
    i = i.astype(np.uint64)
    x = (i >> np.uint64(WORD)) & np.uint64(_MASK)
    y = i & np.uint64(_MASK)
    for k in round_keys(seed, layer):
        x = ((_rotr(x, ROT_X) + y) & np.uint64(_MASK)) ^ np.uint64(k)
        y = _rotl(y, ROT_Y) ^ x
    return (x << np.uint64(WORD)) | y


def rounding_offsets(seed, layer, i, shift):
    """The stochastic-rounding offsets ``r`` for a right shift by ``shift`` bits.

    ``r`` is uniform in ``[0, 2**shift)``; see the module docstring for ``shift > 32``.

    Returns
    -------
    numpy.ndarray of int64
    """
    if shift <= 0:
        return np.zeros(np.shape(i), dtype=np.int64)
    h = H(seed, layer, i).astype(np.int64)
    if shift <= 32:
        return h & ((1 << shift) - 1)
    return h << (shift - 32)
