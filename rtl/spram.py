"""iCE40 UltraPlus single-port RAM (SB_SPRAM256KA) as a wide, deep memory.

The UP5K has four 16384 x 16-bit SPRAM blocks (1 Mbit), eight times its block RAM.  The
accelerator keeps its weights there on an iCE40 (a weight word of ``R`` 8-bit weights is
``R/2`` blocks wide).  An SPRAM is single-port and is not part of the bitstream: it starts
empty, so weights stored in it are written through the accelerator's weight stream before
the first run (the host link does this).

:class:`SPRAM` tiles blocks ``ceil(width / 16)`` wide and ``ceil(depth / 16384)`` deep.  On
an iCE40 platform it instantiates the primitive; elsewhere (simulation, other families) it
elaborates a model of identical behaviour (yosys ``ice40/cells_sim.v``): a read takes one
cycle, and the output holds while ``en`` is low (the primitive's ``CHIPSELECT``) and is
undefined after a write (the model returns the last read value; the accelerator never reads
back right after a write).  ``tests/rtl/test_spram.py`` runs the primitive's simulation model
and this model side by side.
"""

from amaranth.hdl import ClockSignal, Const, Instance, Module, Mux, Signal, unsigned
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from systolic.golden.errors import ConstraintError

from ._params import check_int
from .mac import is_ice40

__all__ = ["SPRAM", "BLOCK_WIDTH", "BLOCK_DEPTH", "spram_blocks"]

#: One SB_SPRAM256KA: 16384 words of 16 bits (Lattice TN1314, iCE40 SPRAM usage guide).
BLOCK_WIDTH = 16
BLOCK_DEPTH = 16384


def spram_blocks(width, depth):
    """SB_SPRAM256KA blocks a ``width`` x ``depth`` memory needs."""
    return -(-width // BLOCK_WIDTH) * -(-depth // BLOCK_DEPTH)


class SPRAM(wiring.Component):
    """A single-port RAM of ``depth`` words of ``width`` bits from iCE40 SPRAM blocks.

    Parameters
    ----------
    width : int
        Word width in bits.
    depth : int
        Words.

    Members
    -------
    addr : In(range(depth))
    en : In(1)
        Read: ``data`` shows word ``addr`` one cycle later.  Low: ``data`` holds.
    we : In(1)
        Write ``wdata`` to word ``addr`` (takes precedence over a read).
    wdata : In(width)
    data : Out(width)

    Raises
    ------
    TypeError
        A width or depth that is not a positive integer.
    ConstraintError
        On an iCE40 platform whose device has fewer SPRAM blocks than needed (the
        UltraPlus parts have 4; other iCE40 parts none).

    Latency 1 cycle (read), throughput one access per cycle.
    """

    def __init__(self, *, width, depth):
        check_int("SPRAM width", width)
        check_int("SPRAM depth", depth)
        self._width, self._depth = width, depth
        super().__init__({
            "addr": In(range(depth)), "en": In(1), "we": In(1),
            "wdata": In(width), "data": Out(width),
        })

    width = property(lambda self: self._width)
    depth = property(lambda self: self._depth)

    @property
    def blocks(self):
        return spram_blocks(self._width, self._depth)

    def elaborate(self, platform):
        m = Module()
        if is_ice40(platform):
            device = getattr(platform, "device", "")
            have = 4 if device.startswith("iCE40UP") else 0
            if self.blocks > have:
                raise ConstraintError(
                    f"SPRAM of {self._depth} x {self._width} bits needs {self.blocks} "
                    f"SB_SPRAM256KA blocks; device {device or '(unknown)'} has {have}")
            self._primitives(m)
        else:
            self._model(m)
        return m

    def _primitives(self, m):
        cols = -(-self._width // BLOCK_WIDTH)
        banks = -(-self._depth // BLOCK_DEPTH)
        sel_bits = max(0, ceil_log2(banks))
        addr = Signal(max(14 + sel_bits, 14))
        m.d.comb += addr.eq(self.addr)
        bank = addr[14:] if banks > 1 else Const(0, 1)
        bank_q = Signal(max(1, sel_bits))          # which bank answers the current read
        with m.If(self.en & ~self.we):
            m.d.sync += bank_q.eq(bank)
        wdata = Signal(cols * BLOCK_WIDTH)
        m.d.comb += wdata.eq(self.wdata)
        outs = []
        for b in range(banks):
            out = Signal(cols * BLOCK_WIDTH, name=f"bank{b}_data")
            select = (bank == b) if banks > 1 else Const(1)
            for c in range(cols):
                m.submodules[f"spram_{b}_{c}"] = Instance(
                    "SB_SPRAM256KA",
                    i_ADDRESS=addr[:14],
                    i_DATAIN=wdata[c * BLOCK_WIDTH:(c + 1) * BLOCK_WIDTH],
                    i_MASKWREN=Const(0b1111, 4),
                    i_WREN=self.we,
                    i_CHIPSELECT=(self.en | self.we) & select,
                    i_CLOCK=ClockSignal(),
                    i_STANDBY=Const(0), i_SLEEP=Const(0), i_POWEROFF=Const(1),
                    o_DATAOUT=out[c * BLOCK_WIDTH:(c + 1) * BLOCK_WIDTH])
            outs.append(out)
        result = outs[0]
        for b in range(1, banks):
            result = Mux(bank_q == b, outs[b], result)
        m.d.comb += self.data.eq(result)

    def _model(self, m):
        mem = m.submodules.mem = memory.Memory(shape=unsigned(self._width),
                                               depth=self._depth, init=[])
        rd = mem.read_port()
        wr = mem.write_port()
        m.d.comb += [
            rd.addr.eq(self.addr), rd.en.eq(self.en & ~self.we),
            wr.addr.eq(self.addr), wr.data.eq(self.wdata), wr.en.eq(self.we),
            self.data.eq(rd.data),
        ]
