"""Dynamic fixed-point number formats (DESIGN.md section 2)."""

from dataclasses import dataclass

import numpy as np

__all__ = ["QFormat", "MIN_WIDTH", "MAX_WIDTH"]

#: Narrowest and widest tensor word, in bits (DESIGN.md section 2).
MIN_WIDTH = 2
MAX_WIDTH = 16


@dataclass(frozen=True)
class QFormat:
    """A signed two's-complement fixed-point format ``Q(width, frac)``.

    An integer ``q`` of ``width`` bits stands for the real number ``q * 2**-frac``.
    ``frac`` may be any integer, negative or larger than ``width``.

    Parameters
    ----------
    width : int
        Word width in bits, ``2 <= width <= 16``.
    frac : int
        Number of fractional bits (the binary exponent of one LSB is ``-frac``).

    Raises
    ------
    TypeError
        If ``width`` or ``frac`` is not an integer.
    ValueError
        If ``width`` is outside ``2..16``.
    """

    width: int
    frac: int

    def __post_init__(self):
        for name in ("width", "frac"):
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"Q format {name} must be an integer, not {value!r}")
            object.__setattr__(self, name, int(value))
        if not MIN_WIDTH <= self.width <= MAX_WIDTH:
            raise ValueError(
                f"Q format width must be between {MIN_WIDTH} and {MAX_WIDTH} bits, not {self.width}")

    def __str__(self):
        return f"Q({self.width},{self.frac})"

    @property
    def min(self):
        """Smallest representable integer, ``-2**(width-1)``."""
        return -(1 << (self.width - 1))

    @property
    def max(self):
        """Largest representable integer, ``2**(width-1) - 1``."""
        return (1 << (self.width - 1)) - 1

    @property
    def lsb(self):
        """The real value of one LSB, ``2**-frac``."""
        return 2.0 ** -self.frac

    def to_float(self, q):
        """The real values that the integers ``q`` stand for (float64)."""
        return np.asarray(q, dtype=np.float64) * self.lsb

    def quantize(self, x):
        """Quantize real values: scale by ``2**frac``, round to nearest (ties to even),
        saturate to the format's range.  Returns int64."""
        scaled = np.rint(np.ldexp(np.asarray(x, dtype=np.float64), self.frac))
        return np.clip(scaled, self.min, self.max).astype(np.int64)

    def contains(self, q):
        """True if every integer in ``q`` is in the format's range."""
        q = np.asarray(q)
        return bool(q.size == 0 or (q.min() >= self.min and q.max() <= self.max))

    def to_json(self):
        return [self.width, self.frac]

    @classmethod
    def from_json(cls, value):
        if not (isinstance(value, (list, tuple)) and len(value) == 2):
            raise TypeError(f"Q format must be a [width, frac] pair, not {value!r}")
        return cls(*value)
