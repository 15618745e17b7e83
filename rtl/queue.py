"""A first-in first-out queue whose head is read ahead from memory, for a consumer that
never takes an entry in the two cycles after it went in.

The accelerator's tile metadata waits in such a queue from the cycle a tile's last beat
goes into the array until the tile's rows come out, at least the array's latency (3 or
more cycles) later.  :class:`amaranth.lib.fifo.SyncFIFOBuffered` serves any consumer,
so its storage is read through a bypass for an entry read as it is written, which an
iCE40 block RAM does not have: yosys builds it from flip-flops, or in block RAM with
emulation registers as wide as an entry.  Here no entry is read as it is written, so the
storage is a plain memory (block RAM on the iCE40: no logic cells for the entries).
"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from ._params import check_int

__all__ = ["MemoryQueue"]


class MemoryQueue(wiring.Component):
    """A queue of ``depth`` entries in memory, its head read one cycle ahead.

    Parameters
    ----------
    shape : shape-like
        Shape of an entry.
    depth : int
        Entries it holds, 2 or more.
    attrs : dict or None
        Attributes of the memory (``{"ram_style": "block"}`` for block RAM).

    Members
    -------
    w_en : In(1)
        Push ``w_data`` at this edge (only when ``level < depth``).
    w_data : In(shape)
    r_en : In(1)
        Pop the head at this edge (only when ``level > 0``).
    r_data : Out(shape)
        The head entry, from the second cycle after its push on (a register: the
        memory's read data).
    level : Out(range(depth + 1))
        Entries held.

    Raises
    ------
    TypeError
        ``depth`` is not a positive integer.
    ValueError
        ``depth`` is 1.

    Timing: the read address is the next head's (the head's, or the one behind it at a
    pop), so the read data follow the pops with no delay.  An entry pushed into an empty
    queue at edge ``t`` is read at edges ``t`` (the old contents: the write and the read
    of one address in a cycle, which the memory need not forward) and ``t + 1``, so
    ``r_data`` shows it from the cycle after edge ``t + 1`` on.  The consumer must not
    use it before: the accelerator's rows come out at least 3 cycles after their tile's
    entry goes in.
    """

    def __init__(self, *, shape, depth, attrs=None):
        check_int("Queue depth", depth)
        if depth < 2:
            raise ValueError(f"A memory queue needs at least 2 entries, not {depth}")
        self._shape, self._depth, self._attrs = shape, depth, attrs
        super().__init__({"w_en": In(1), "w_data": In(shape), "r_en": In(1),
                          "r_data": Out(shape), "level": Out(range(depth + 1))})

    shape = property(lambda self: self._shape)
    depth = property(lambda self: self._depth)

    def elaborate(self, platform):
        m = Module()
        D = self._depth
        mem = m.submodules.mem = memory.Memory(shape=self._shape, depth=D, init=[],
                                               attrs=self._attrs)
        wr, rd = mem.write_port(), mem.read_port()

        def wrap(ptr):
            return Mux(ptr == D - 1, 0, ptr + 1)

        wp, rp = Signal(range(D)), Signal(range(D))
        r_next = Signal.like(rp)
        m.d.comb += [
            r_next.eq(Mux(self.r_en, wrap(rp), rp)),
            wr.addr.eq(wp), wr.data.eq(self.w_data), wr.en.eq(self.w_en),
            rd.addr.eq(r_next), self.r_data.eq(rd.data),
        ]
        m.d.sync += rp.eq(r_next)
        with m.If(self.w_en):
            m.d.sync += wp.eq(wrap(wp))
        with m.If(self.w_en & ~self.r_en):
            m.d.sync += self.level.eq(self.level + 1)
        with m.Elif(~self.w_en & self.r_en):
            m.d.sync += self.level.eq(self.level - 1)
        return m
