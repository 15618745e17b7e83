"""Skew and deskew buffers: whole vectors on the outside, diagonal wavefronts inside.

A systolic array needs lane ``k`` of each vector ``k`` cycles after lane 0, so that
operands meet in the right PE.  :class:`Skew` turns a stream of whole vectors (one per
beat) into that staircase; :class:`Deskew` turns the array's staircase of results back
into whole vectors.  Callers stream rows and columns and never hand-skew.

Skewed beats are *diagonals*: lane ``k`` of diagonal ``t`` belongs to vector ``t - k``.
Each lane carries its own ``valid`` tag, because a diagonal mixes lanes of different
vectors and of idle beats (bubbles).  A diagonal is valid (``o.valid``) if any lane is.
"""

from amaranth.hdl import Module, Shape, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ._params import check_int
from .pe import tagged_layout

__all__ = ["Skew", "Deskew"]


def _check(shape, lanes):
    check_int("Skew lanes", lanes)
    try:
        Shape.cast(shape)
    except TypeError:
        raise TypeError(f"Lane shape must be a shape-castable object, not {shape!r}") from None


class Skew(wiring.Component):
    """Delays lane ``k`` of each input vector by ``k + 1`` beats.

    Parameters
    ----------
    shape : ShapeLike
        Shape of one lane (e.g. ``signed(8)`` or a ``StructLayout`` carrying flags).
    lanes : int
        Vector length.

    Members
    -------
    i : In(stream.Signature(ArrayLayout(shape, lanes)))
        Whole vectors.
    o : Out(stream.Signature(ArrayLayout(tagged_layout(shape), lanes)))
        Diagonals: ``o.payload[k]`` is lane ``k`` of the vector accepted ``k + 1``
        advances earlier, tagged ``valid`` if that beat carried one.

    Raises
    ------
    TypeError
        ``lanes`` not a positive integer, or ``shape`` not shape-castable.

    The skew is a lock-step stage: it advances exactly when ``o.ready`` is high (which is
    also ``i.ready``), taking a bubble when ``i.valid`` is low, so a consumer that
    advances with it (the array) sees diagonals in the same time base.  Latency
    ``k + 1`` advances for lane ``k``; throughput one vector per advance; a vector's
    staircase occupies ``lanes`` consecutive diagonals.
    """

    def __init__(self, *, shape, lanes):
        _check(shape, lanes)
        self._shape = shape
        self._lanes = lanes
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(shape, lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(tagged_layout(shape), lanes))),
        })

    shape = property(lambda self: self._shape)
    lanes = property(lambda self: self._lanes)

    @property
    def delays(self):
        """Advances from input to output, per lane."""
        return tuple(k + 1 for k in range(self._lanes))

    def elaborate(self, platform):
        m = Module()
        advance = self.o.ready
        m.d.comb += self.i.ready.eq(advance)
        tags = []
        for k in range(self._lanes):
            # values without reset (only a valid beat's value is read), tags with
            values = [Signal(self._shape, name=f"lane{k}_{d}_value", reset_less=True)
                      for d in range(k + 1)]
            valids = [Signal(name=f"lane{k}_{d}_valid") for d in range(k + 1)]
            with m.If(advance):
                m.d.sync += [values[0].eq(self.i.payload[k]), valids[0].eq(self.i.valid)]
                m.d.sync += [line[d].eq(line[d - 1])
                             for line in (values, valids) for d in range(1, k + 1)]
            m.d.comb += [self.o.payload[k].value.eq(values[-1]),
                         self.o.payload[k].valid.eq(valids[-1])]
            tags.append(valids[-1])
        m.d.comb += self.o.valid.eq(_any(tags))
        return m


class Deskew(wiring.Component):
    """Delays lane ``k`` of each diagonal by ``lanes - k`` beats, so a staircase leaves as
    one vector.

    Parameters
    ----------
    shape : ShapeLike
        Shape of one lane.
    lanes : int
        Vector length.

    Members
    -------
    i : In(stream.Signature(ArrayLayout(tagged_layout(shape), lanes)))
        Diagonals (lane ``k`` of a vector ``k`` beats after lane 0); a lane counts only if
        both its tag and ``i.valid`` are set.
    o : Out(stream.Signature(ArrayLayout(shape, lanes)))
        Whole vectors; a vector is valid when its last lane's tag is (every lane of a
        well-formed staircase has the same tag).

    Raises
    ------
    TypeError
        As :class:`Skew`.

    The deskew advances whenever its output register is empty or taken
    (``~o.valid | o.ready``; ``i.ready`` is that advance), taking a bubble diagonal when
    ``i.valid`` is low, so it drains on its own.  Bubbles it takes while its producer is
    idle fall between staircases, never inside one (a producer emitting a staircase has a
    valid lane on every diagonal of it).  Latency ``lanes - k`` advances for lane ``k``,
    ``lanes`` from a staircase's first lane to the vector; throughput one vector per
    cycle.
    """

    def __init__(self, *, shape, lanes):
        _check(shape, lanes)
        self._shape = shape
        self._lanes = lanes
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(tagged_layout(shape), lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(shape, lanes))),
        })

    shape = property(lambda self: self._shape)
    lanes = property(lambda self: self._lanes)

    @property
    def delays(self):
        """Advances from input to output, per lane."""
        return tuple(self._lanes - k for k in range(self._lanes))

    def elaborate(self, platform):
        m = Module()
        n = self._lanes
        advance = Signal()
        m.d.comb += [advance.eq(~self.o.valid | self.o.ready), self.i.ready.eq(advance)]
        for k in range(n):
            values = [Signal(self._shape, name=f"lane{k}_{d}_value", reset_less=True)
                      for d in range(n - k)]
            valids = [Signal(name=f"lane{k}_{d}_valid") for d in range(n - k)]
            with m.If(advance):
                m.d.sync += [values[0].eq(self.i.payload[k].value),
                             valids[0].eq(self.i.payload[k].valid & self.i.valid)]
                m.d.sync += [line[d].eq(line[d - 1])
                             for line in (values, valids) for d in range(1, n - k)]
            m.d.comb += self.o.payload[k].eq(values[-1])
            if k == n - 1:
                m.d.comb += self.o.valid.eq(valids[-1])
        return m


def _any(bits):
    out = bits[0]
    for b in bits[1:]:
        out = out | b
    return out
