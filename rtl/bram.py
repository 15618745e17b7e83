"""A block RAM whose read data pass an output register (read latency 2), for the ECP5.

An ECP5 DP16KD block RAM read without its output register has a clock-to-output of
5.8 ns in nextpnr's timing model (speed grade 6), 73% of the 8 ns period at 125 MHz; with
its output register (``REGMODE = "OUTREG"``) it is 0.96 ns.  Yosys's ECP5 memory mapping
never uses that register (``techlibs/lattice/brams_16kd.txt`` has no output-register
option), so :class:`RegisteredReadMemory` instantiates the DP16KD blocks itself on an
ECP5 platform.  Everywhere else (simulation, the iCE40) it is an
:class:`amaranth.lib.memory.Memory` read port followed by a fabric register: the same
behaviour, cycle for cycle.

Memories with initial values (the weights) use 1,024 x 18 blocks, whose ``INITVAL``
layout is Yosys's own (``tests/rtl/test_bram.py`` compares it with Yosys's mapping of
the same words).  Yosys has no simulation model of the DP16KD, only a black box, so the
tests simulate the ECP5 form with an Amaranth model of the primitive as read here and
in Yosys's ``brams_map_16kd.v``; the board is the final check.

Both read stages move with ``r_en``: at a clock edge with ``r_en`` high the address is
sampled and ``r_data`` takes the word addressed at the previous such edge.  While
``r_en`` is low, ``r_data`` holds.  That is a read port with an enable followed by a
register with the same enable, which is how the accelerator's registered memories use it
(:attr:`~.compiler.ArrayConfig.registered_memories`).
"""

from amaranth.hdl import ClockSignal, Const, Instance, Module, Signal
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from ._params import check_int
from .mac import is_ecp5

__all__ = ["RegisteredReadMemory", "dp16kd_initvals", "dp16kd_tiling"]

#: DP16KD aspect ratios: (data width, depth, address bits below the word address).  The
#: DP16KD's 14 address pins count single bits; a word of width w is addressed above the
#: bits a narrower word would use (yosys ``brams_map_16kd.v`` wires them the same way).
DP16KD_SHAPES = ((18, 1024, 4), (9, 2048, 3), (4, 4096, 2), (2, 8192, 1), (1, 16384, 0))


#: Builds the DP16KD instances; tests put an Amaranth model of the primitive here (Yosys
#: has no simulation model of the DP16KD, only a black box).
_instance = Instance


def dp16kd_tiling(width, depth, *, init=False):
    """DP16KD blocks for a ``width`` x ``depth`` memory: ``(data width, blocks side by
    side, blocks deep, address shift)``.  Without ``init``: the widest aspect ratio deep
    enough, one block deep, or ``None`` if it is deeper than one block (16,384 words): the
    caller then uses the portable form.  With ``init``: 1,024 x 18 blocks, as deep as
    needed, the one aspect ratio whose initial-value layout (``INITVAL_xx``) this module
    writes (the layout of Yosys's ``brams_map_16kd.v``)."""
    if init:
        return 18, -(-width // 18), -(-depth // 1024), 4
    for w, d, shift in DP16KD_SHAPES:
        if depth <= d:
            return w, -(-width // w), 1, shift
    return None


def dp16kd_initvals(words):
    """``INITVAL_00`` ... ``INITVAL_3F`` of one 1,024 x 18 block holding ``words`` (at
    most 1,024 integers of 18 bits): each 320-bit value holds 16 words at a 20-bit
    stride (Yosys ``brams_map_16kd.v``, ``init_slice``)."""
    params = {}
    for n in range(64):
        v = 0
        for i in range(16):
            a = n * 16 + i
            if a < len(words):
                v |= (words[a] & 0x3FFFF) << (20 * i)
        params[f"INITVAL_{n:02X}"] = Const(v, 320)
    return params


class RegisteredReadMemory(wiring.Component):
    """A simple dual-port memory with a registered read: one write port, one read port of
    latency 2 (address register, then output register), both stages enabled by ``r_en``.

    Parameters
    ----------
    width : int
        Bits per word.
    depth : int
        Words.
    init : sequence of int, optional
        Initial contents (the first words; the rest are zero).

    Members
    -------
    w_addr : In(range(depth)); w_data : In(width); w_en : In(1)
        Write port: the word is written at the clock edge where ``w_en`` is high.
    r_addr : In(range(depth)); r_en : In(1)
        Read address, sampled at an edge where ``r_en`` is high.
    r_data : Out(width)
        The word at the address sampled at the previous edge with ``r_en`` high, updated
        at each edge with ``r_en`` high (held otherwise).  Reading a word in the cycle it
        is written gives an undefined value: the accelerator never does.

    Raises
    ------
    TypeError
        A width or depth that is not a positive integer.
    ValueError
        More initial words than ``depth``.

    On an ECP5 platform, DP16KD blocks with the output register on (``REGMODE_B =
    "OUTREG"``, ``CEB = OCEB = r_en``), as :func:`dp16kd_tiling` lays them out: without
    ``init``, ``ceil(width / w)`` blocks side by side, ``w`` the widest of 18, 9, 4, 2, 1
    bits whose depth (1,024 ... 16,384 words) holds ``depth`` (deeper memories use the
    portable form); with ``init``, 1,024 x 18 blocks, ``ceil(depth / 1024)`` deep, the
    block of each read picked after the output registers.  Every other platform uses
    the portable form.
    """

    def __init__(self, *, width, depth, init=()):
        self._width = check_int("Memory width", width)
        self._depth = check_int("Memory depth", depth)
        self._init = [int(v) & ((1 << width) - 1) for v in init]
        if len(self._init) > depth:
            raise ValueError(f"Memory initial value has {len(self._init)} words, more than "
                             f"the depth {depth}")
        super().__init__({
            "w_addr": In(range(depth)), "w_data": In(width), "w_en": In(1),
            "r_addr": In(range(depth)), "r_en": In(1), "r_data": Out(width),
        })

    width = property(lambda self: self._width)
    depth = property(lambda self: self._depth)

    def elaborate(self, platform):
        m = Module()
        tiling = dp16kd_tiling(self._width, self._depth, init=bool(self._init))
        if is_ecp5(platform) and tiling is not None:
            self._dp16kd(m, *tiling)
            return m
        mem = m.submodules.mem = memory.Memory(shape=self._width, depth=self._depth,
                                               init=self._init)
        wr = mem.write_port()
        rd = mem.read_port()
        m.d.comb += [wr.addr.eq(self.w_addr), wr.data.eq(self.w_data), wr.en.eq(self.w_en),
                     rd.addr.eq(self.r_addr), rd.en.eq(self.r_en)]
        with m.If(self.r_en):
            m.d.sync += self.r_data.eq(rd.data)
        return m

    def _dp16kd(self, m, w, blocks, deep, shift):
        per_block = 16384 >> shift                  # words a block holds
        word_bits = 14 - shift

        def address(addr, pins):
            # the word address above `shift` low pins; x18 takes its two byte enables on
            # the lowest two pins (both bytes written)
            bits = Signal(word_bits, name=f"{pins.lower()}_word")
            m.d.comb += bits.eq(addr)
            low = [Const(1, 1), Const(1, 1), Const(0, 1), Const(0, 1)] if w == 18 else \
                [Const(0, 1)] * shift
            return {f"i_{pins}{k}": low[k] for k in range(shift)} | \
                {f"i_{pins}{shift + k}": bits[k] for k in range(word_bits)}

        # blocks deep: the block a read came from follows its address through both read
        # stages, and picks that block's output (after the output registers)
        top_w = self.w_addr[word_bits:] if deep > 1 else Const(0, 1)
        sel1 = Signal(range(deep))
        sel2 = Signal(range(deep))
        if deep > 1:
            with m.If(self.r_en):
                m.d.sync += [sel1.eq(self.r_addr[word_bits:]), sel2.eq(sel1)]
        for d in range(deep):
            for b in range(blocks):
                self._block(m, d, b, w, address, top_w == d, sel2 == d, per_block)

    def _block(self, m, d, b, w, address, write_here, read_here, per_block):
        lo = b * w
        n = min(w, self._width - lo)
        din = Signal(18, name=f"din_{d}_{b}")
        dout = Signal(18, name=f"dout_{d}_{b}")
        m.d.comb += din[:n].eq(self.w_data[lo:lo + n])
        with m.If(read_here):
            m.d.comb += self.r_data[lo:lo + n].eq(dout[:n])
        init = {}
        if self._init:
            words = [(v >> lo) & ((1 << n) - 1)
                     for v in self._init[d * per_block:(d + 1) * per_block]]
            init = {f"p_{k}": v for k, v in dp16kd_initvals(words).items()}
        m.submodules[f"dp16kd_{d}_{b}"] = _instance(
            "DP16KD", **init,
            p_DATA_WIDTH_A=w, p_DATA_WIDTH_B=w,
            p_REGMODE_A="NOREG", p_REGMODE_B="OUTREG",
            p_RESETMODE="SYNC", p_ASYNC_RESET_RELEASE="SYNC",
            p_CSDECODE_A="0b000", p_CSDECODE_B="0b000",
            p_WRITEMODE_A="NORMAL", p_WRITEMODE_B="NORMAL", p_GSR="AUTO",
            # port A writes
            i_CLKA=ClockSignal("sync"), i_CEA=1, i_OCEA=1, i_WEA=self.w_en & write_here,
            i_RSTA=0,
            i_CSA0=0, i_CSA1=0, i_CSA2=0,
            **address(self.w_addr, "ADA"),
            **{f"i_DIA{k}": din[k] for k in range(18)},
            # port B reads, through its output register
            i_CLKB=ClockSignal("sync"), i_CEB=self.r_en, i_OCEB=self.r_en, i_WEB=0,
            i_RSTB=0, i_CSB0=0, i_CSB1=0, i_CSB2=0,
            **address(self.r_addr, "ADB"),
            **{f"i_DIB{k}": 0 for k in range(18)},
            **{f"o_DOB{k}": dout[k] for k in range(18)},
        )
