"""Stochastic-rounding helpers shared by the unit tests of lanes that round (activation,
pooling)."""

import numpy as np

from systolic.golden import srgen


def sr_keys(seed, layer):
    """The round keys of ``H(seed, layer, .)`` packed as the units' ``sr_keys`` input."""
    return sum(k << (srgen.WORD * j) for j, k in enumerate(srgen.round_keys(seed, layer)))


def sr_seed_for(rng, layer, indices, shift):
    """A generator seed whose offsets at ``indices`` are not all 0 or all ``2**shift - 1``,
    so both rounding directions can occur even on a one-element output (``r`` depends on
    the index only, so such an output sees one offset)."""
    assert shift >= 2
    while True:
        seed = int(rng.integers(0, 2**32))
        r = srgen.rounding_offsets(seed, layer, indices, shift)
        if np.any((r != 0) & (r != (1 << shift) - 1)):
            return seed
