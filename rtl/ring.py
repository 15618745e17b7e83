"""A ring of values that turns one entry per enabled cycle: a delay line with a readable head.

The accelerator keeps two such rings in its output path: the rows' tags travelling beside
the requantization lanes (a fixed delay) and the fused pool's running maxima (one per row
of a tile, turning once per row).  As flip-flops each entry is a register fed by another
register, which an iCE40 logic cell cannot pair with a LUT: on the iCEBreaker's 8x2 array
the two rings were ~180 of the 5,280 logic cells.  In memory (block RAM on the iCE40) they
cost no logic cells.
"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from ._params import check_int

__all__ = ["Ring"]


class Ring(wiring.Component):
    """``depth`` entries in a ring: at each enabled edge the head entry is replaced by ``i``
    and the ring turns, so ``head`` is the value given ``depth`` enabled edges ago.

    Parameters
    ----------
    shape : shape-like
        Shape of an entry.
    depth : int
        Entries in the ring, 1 or more (2 or more in memory).
    in_memory : bool
        ``False``: a chain of registers.  ``True``: an :class:`amaranth.lib.memory.Memory`
        of ``depth`` entries whose read port reads the next head one cycle ahead (with
        ``attrs``, e.g. ``{"ram_style": "block"}`` for block RAM).  Both behave the same
        at every cycle.
    attrs : dict or None
        Attributes of the memory (only with ``in_memory``).

    Members
    -------
    en : In(1)
        Turn the ring at this edge.
    i : In(shape)
        The value that replaces the head at an enabled edge.
    head : Out(shape)
        The oldest entry: the ``i`` of ``depth`` enabled edges ago (zero from power-up
        until then; a reset leaves the entries as they were, in registers as in memory:
        a consumer reads only entries it has written).
    after : Out(shape)
        Only in registers: the entry that becomes the head at an enabled edge (the ``i`` of
        ``depth - 1`` enabled edges ago; ``i`` itself with ``depth`` 1).  With ``head`` it
        lets a consumer compute from the next cycle's head a cycle early,
        ``Mux(en, after, head)``, and keep the result in a register.

    Raises
    ------
    TypeError
        ``depth`` is not a positive integer, or ``in_memory`` not a bool.
    ValueError
        ``in_memory`` with ``depth`` 1 (the read ahead would read the entry being written).

    Timing: ``head`` and ``after`` (with ``depth`` >= 2) are register outputs (the
    chain's registers, or the memory's read data); ``i`` and ``en`` go to registers (or
    the write port) only.  In memory the read address is the next head's, so ``en`` also
    drives the read address.
    """

    def __init__(self, *, shape, depth, in_memory=False, attrs=None):
        check_int("Ring depth", depth)
        if not isinstance(in_memory, bool):
            raise TypeError(f"In memory must be a bool, not {in_memory!r}")
        if in_memory and depth < 2:
            raise ValueError(f"A ring in memory needs at least 2 entries, not {depth}")
        self._shape, self._depth = shape, depth
        self._in_memory, self._attrs = in_memory, attrs
        super().__init__({"en": In(1), "i": In(shape), "head": Out(shape),
                          **({} if in_memory else {"after": Out(shape)})})

    shape = property(lambda self: self._shape)
    depth = property(lambda self: self._depth)
    in_memory = property(lambda self: self._in_memory)

    def elaborate(self, platform):
        m = Module()
        if not self._in_memory:
            # no reset: like the memory's, and off the reset's fanout (see pe.py)
            chain = [Signal(self._shape, name=f"entry_{k}", reset_less=True)
                     for k in range(self._depth)]
            with m.If(self.en):
                m.d.sync += chain[0].eq(self.i)
                m.d.sync += [b.eq(a) for a, b in zip(chain, chain[1:])]
            m.d.comb += [self.head.eq(chain[-1]),
                         self.after.eq(chain[-2] if self._depth >= 2 else self.i)]
            return m
        mem = m.submodules.mem = memory.Memory(shape=self._shape, depth=self._depth, init=[],
                                               attrs=self._attrs)
        wr, rd = mem.write_port(), mem.read_port()
        ptr = Signal(range(self._depth))           # the head's entry
        nxt = Signal.like(ptr)
        m.d.comb += nxt.eq(Mux(self.en, Mux(ptr == self._depth - 1, 0, ptr + 1), ptr))
        m.d.sync += ptr.eq(nxt)
        # the write goes to the head's entry; the read, one cycle ahead, to the next head's
        # (never the same entry with depth >= 2, so no read-during-write case arises)
        m.d.comb += [wr.addr.eq(ptr), wr.data.eq(self.i), wr.en.eq(self.en),
                     rd.addr.eq(nxt), self.head.eq(rd.data)]
        return m
