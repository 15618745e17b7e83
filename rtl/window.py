"""The convolution window generator: conv2d patches without an im2col copy.

It holds one feature map in memory and streams every output position's patch, in the order of
golden :func:`systolic.golden.ops.conv2d_acc`: patches in output raster order ``(oh, ow)``,
each patch flattened ``(C, kh, kw)`` (channel, then kernel row, then kernel column), the order
of ``weight.reshape(O, C * kh * kw)``.  Zero padding (golden ``resolve_padding``: top,
bottom, left, right) is never stored: the generator computes each address and substitutes
zeros outside the map.

One beat carries one kernel row of a patch, ``kw`` values that are adjacent in the
flattening order, so a patch is ``C * kh`` beats.  The map is stored in ``B`` banks
(``B`` the power of two at or above ``max_kernel``), column ``x`` in bank ``x mod B``, so
the ``kw <= B`` adjacent columns of a kernel row sit in distinct banks and one cycle reads
them all; each bank is a simple dual-port :class:`amaranth.lib.memory.Memory` (an iCE40/ECP5
block RAM).
"""

from amaranth.hdl import Array, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for, ceil_log2

from systolic.golden.errors import ConstraintError
from systolic.golden.ir import MAX_KERNEL, resolve_padding
from systolic.golden.qformat import MAX_WIDTH, MIN_WIDTH

from ._params import check_int

__all__ = ["Window", "WindowConfig", "MAX_STRIDE"]

#: Largest convolution stride (DESIGN.md section 4).
MAX_STRIDE = 2
#: Width of the pass counter (``passes`` streams the patches that many times).
_PASS_BITS = 16


def _ubits(n):
    return unsigned(max(1, bits_for(n)))


def WindowConfig(*, max_kernel, max_channels, max_height, max_width, banks):
    """Layout of the window generator's run-time configuration (one layer).

    Fields: the map ``channels``/``height``/``width``, the kernel ``kh``/``kw``, ``stride``,
    the ``top``/``left`` padding, the output ``out_height``/``out_width``, ``passes`` (how
    many times to stream the patches, e.g. once per output-channel tile), and the derived
    addressing constants ``row_words`` (``ceil(width / banks)``: bank words per map row),
    ``plane_words`` (``height * row_words``) and ``start_row`` (``-top * row_words``)."""
    row_words = -(-max_width // banks)
    return data.StructLayout({
        "channels": _ubits(max_channels),
        "height": _ubits(max_height),
        "width": _ubits(max_width),
        "kh": _ubits(max_kernel),
        "kw": _ubits(max_kernel),
        "stride": _ubits(MAX_STRIDE),
        "top": _ubits(max_kernel - 1),
        "left": _ubits(max_kernel - 1),
        # padding can make the output larger than the map: up to H + kh - 1
        "out_height": _ubits(max_height + max_kernel - 1),
        "out_width": _ubits(max_width + max_kernel - 1),
        "passes": unsigned(_PASS_BITS),
        "row_words": _ubits(row_words),
        "plane_words": _ubits(max_height * row_words),
        "start_row": signed(bits_for((max_kernel - 1) * row_words) + 1),
    })


class Window(wiring.Component):
    """Convolution patches, one kernel row per beat, from a stored feature map.

    The unit alternates two phases.  *Load*: it accepts one map, ``C * H * W`` values in flat
    (C, H, W) order, one per beat (``o`` idle).  *Run*: it streams the patches ``passes``
    times (``i`` not ready), then loads the next map.

    Parameters
    ----------
    width : int
        Value width, 2..16 bits.
    max_kernel : int
        Largest kernel side, 1..7; also the number of lanes of a beat.
    max_channels, max_height, max_width : int
        Largest map.  Each of the ``B`` banks holds
        ``max_channels * max_height * ceil(max_width / B)`` values.

    Members
    -------
    i : In(stream.Signature(StructLayout{value: signed(width)}))
        The map, flat (C, H, W) order.
    o : Out(stream.Signature(StructLayout{values, first, last}))
        ``values`` is ``ArrayLayout(signed(width), max_kernel)``: lane ``s`` holds patch
        element ``(c, r, s)`` for the beat's channel ``c`` and kernel row ``r`` (zero for
        padding and for ``s >= kw``).  ``first``/``last`` mark a patch's first beat
        (``c = 0, r = 0``) and last beat (``c = C - 1, r = kh - 1``).
    config : In(WindowConfig)
        One layer's settings, from :meth:`layer_config`.  Change it only in the load phase
        before the map's first value.

    Raises
    ------
    TypeError
        A parameter of the wrong type or sign.
    ValueError
        A width beyond 2..16 or a kernel beyond 7.

    Throughput: load one value per cycle; run one beat (``kw`` values) per cycle, with no
    bubbles between patches or passes.  A layer takes
    ``C * H * W + passes * Ho * Wo * C * kh`` cycles plus the latency.  Latency: 2 cycles
    from the map's last input transfer to the first beat's ``o.valid``.
    """

    def __init__(self, *, width, max_kernel=MAX_KERNEL, max_channels=16, max_height=32,
                 max_width=32):
        check_int("Window value width", width, MIN_WIDTH, MAX_WIDTH)
        check_int("Window kernel", max_kernel, 1, MAX_KERNEL)
        check_int("Window channels", max_channels, 1)
        check_int("Window map height", max_height, 1)
        check_int("Window map width", max_width, 1)
        self._width = width
        self._max_kernel = max_kernel
        self._max_channels = max_channels
        self._max_height = max_height
        self._max_width = max_width
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({"value": signed(width)}))),
            "o": Out(stream.Signature(data.StructLayout({
                "values": data.ArrayLayout(signed(width), max_kernel),
                "first": unsigned(1), "last": unsigned(1)}))),
            "config": In(WindowConfig(max_kernel=max_kernel, max_channels=max_channels,
                                      max_height=max_height, max_width=max_width,
                                      banks=self.banks)),
        })

    width = property(lambda self: self._width)
    max_kernel = property(lambda self: self._max_kernel)
    max_channels = property(lambda self: self._max_channels)
    max_height = property(lambda self: self._max_height)
    max_width = property(lambda self: self._max_width)

    @property
    def banks(self):
        """Number of memory banks ``B``: the power of two at or above ``max_kernel``."""
        return 1 << ceil_log2(self._max_kernel)

    @property
    def bank_depth(self):
        """Values per bank, ``max_channels * max_height * ceil(max_width / B)``."""
        return self._max_channels * self._max_height * -(-self._max_width // self.banks)

    latency = 2

    def layer_config(self, *, channels, height, width, kernel, stride=1, padding="valid",
                     passes=1):
        """Run-time configuration for one conv2d layer's input (golden ``conv2d_acc``'s
        ``stride`` and ``padding``; ``kernel`` is ``k`` or ``(kh, kw)``).

        Returns
        -------
        dict
            Field values for :attr:`config`.

        Raises
        ------
        ValueError
            A stride other than 1 or 2, padding of a kernel side or more, or a kernel that
            does not fit the padded map.
        ConstraintError
            A map or kernel beyond this unit's limits.
        """
        for name, v in (("channels", channels), ("height", height), ("width", width)):
            check_int(f"Window {name}", v, 1)
        kh, kw = (kernel, kernel) if isinstance(kernel, int) and \
            not isinstance(kernel, bool) else tuple(kernel)
        check_int("Window kernel height", kh, 1)
        check_int("Window kernel width", kw, 1)
        check_int("Window passes", passes, 1, (1 << _PASS_BITS) - 1)
        if stride not in (1, 2) or isinstance(stride, bool):
            raise ValueError(f"Window stride must be 1 or 2, not {stride!r}")
        if max(kh, kw) > self._max_kernel:
            raise ConstraintError(f"A {kh}x{kw} kernel exceeds the unit's maximum "
                                  f"{self._max_kernel}x{self._max_kernel}")
        if channels > self._max_channels or height > self._max_height or \
                width > self._max_width:
            raise ConstraintError(f"A {channels}x{height}x{width} map exceeds the unit's "
                                  f"maximum {self._max_channels}x{self._max_height}x"
                                  f"{self._max_width}")
        top, bottom, left, right = resolve_padding(padding, (height, width), (kh, kw), stride)
        for p, k in zip((top, bottom, left, right), (kh, kh, kw, kw)):
            if not 0 <= p < k:
                raise ValueError(f"Window padding {(top, bottom, left, right)} must be "
                                 f"between 0 and kernel-1 on each side")
        out_h = (height + top + bottom - kh) // stride + 1
        out_w = (width + left + right - kw) // stride + 1
        if out_h < 1 or out_w < 1:
            raise ValueError(f"A {kh}x{kw} kernel with padding {(top, bottom, left, right)} "
                             f"does not fit the {height}x{width} map")
        row_words = -(-width // self.banks)
        return {
            "channels": channels, "height": height, "width": width, "kh": kh, "kw": kw,
            "stride": stride, "top": top, "left": left, "out_height": out_h,
            "out_width": out_w, "passes": passes, "row_words": row_words,
            "plane_words": height * row_words, "start_row": -top * row_words,
        }

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        nb = self.banks
        lb = ceil_log2(nb)
        lanes = self._max_kernel
        depth = self.bank_depth
        row_words_max = -(-self._max_width // nb)

        banks = []
        for b in range(nb):
            mem = memory.Memory(shape=signed(self._width), depth=depth, init=[])
            m.submodules[f"bank{b}"] = mem
            banks.append((mem.read_port(), mem.write_port()))

        run = Signal()                  # 0: load phase, 1: run phase

        # --- load: value (c, y, x) goes to bank x mod B, word (c*H + y)*row_words + x div B.
        wx = Signal(range(self._max_width))
        wy = Signal(range(self._max_height))
        wc = Signal(range(self._max_channels))
        w_row = Signal(range(depth + row_words_max + 1))    # (c*H + y) * row_words
        load = Signal()
        m.d.comb += [self.i.ready.eq(~run), load.eq(self.i.valid & ~run)]
        for b, (_, wr) in enumerate(banks):
            m.d.comb += [
                wr.addr.eq(w_row + (wx >> lb)),
                wr.data.eq(self.i.p.value),
                wr.en.eq(load & ((wx[:lb] == b) if lb else 1)),
            ]

        # --- run: counters of the next beat, (oh, ow, c, r) in generation order, with the
        # map coordinates and row addresses they imply, kept incrementally (no multiplier).
        oh = Signal(range(self._max_height + self._max_kernel - 1))
        ow = Signal(range(self._max_width + self._max_kernel - 1))
        c = Signal(range(self._max_channels))
        r = Signal(range(self._max_kernel))
        rep = Signal(_PASS_BITS)
        span = self._max_kernel + MAX_STRIDE * self._max_height
        y0 = Signal(signed(bits_for(span) + 1))          # oh * stride - top
        iy = Signal(signed(bits_for(span) + 1))          # y0 + r
        span = self._max_kernel + MAX_STRIDE * self._max_width
        x0 = Signal(signed(bits_for(span) + 1))          # ow * stride - left
        addr_span = depth + (self._max_kernel + MAX_STRIDE) * row_words_max
        row_addr = Signal(signed(bits_for(addr_span) + 1))   # (c*H + iy) * row_words
        chan_base = Signal.like(row_addr)                # row_addr at r = 0
        pix_base = Signal.like(row_addr)                 # row_addr at c = 0, r = 0
        stride_words = Signal.like(row_addr)
        m.d.comb += stride_words.eq(Mux(cfg.stride == 2, cfg.row_words << 1, cfg.row_words))

        def restart_pass():
            return [oh.eq(0), ow.eq(0), c.eq(0), r.eq(0),
                    y0.eq(-cfg.top), iy.eq(-cfg.top), x0.eq(-cfg.left),
                    row_addr.eq(cfg.start_row), chan_base.eq(cfg.start_row),
                    pix_base.eq(cfg.start_row)]

        with m.If(load & (wx == cfg.width - 1)):
            m.d.sync += [wx.eq(0), w_row.eq(w_row + cfg.row_words)]
            with m.If(wy == cfg.height - 1):
                m.d.sync += wy.eq(0)
                with m.If(wc == cfg.channels - 1):
                    m.d.sync += [wc.eq(0), w_row.eq(0), run.eq(1), rep.eq(0)]
                    m.d.sync += restart_pass()
                with m.Else():
                    m.d.sync += wc.eq(wc + 1)
            with m.Else():
                m.d.sync += wy.eq(wy + 1)
        with m.Elif(load):
            m.d.sync += wx.eq(wx + 1)

        # Read: bank b holds lane s = (b - x0) mod B, at word x0 div B, or the next word for
        # banks below x0 mod B (the row wrapped past bank B-1).
        advance = Signal()
        emit = Signal()
        m.d.comb += [advance.eq(~self.o.valid | self.o.ready), emit.eq(run & advance)]
        rot = x0[:lb] if lb else 0
        for b, (rd, _) in enumerate(banks):
            addr = row_addr + (x0 >> lb)
            if lb:
                addr = addr + (b < rot)
            m.d.comb += [rd.addr.eq(addr), rd.en.eq(emit)]

        row_ok = (iy >= 0) & (iy < cfg.height)
        lane_ok = [row_ok & (x0 + s >= 0) & (x0 + s < cfg.width) & (s < cfg.kw)
                   for s in range(lanes)]

        # Output register: the banks' read data (held while stalled: en = emit) rotated into
        # lane order and masked with the registered padding mask.
        o_rot = Signal(max(1, lb))
        o_mask = Signal(lanes)
        o_valid = Signal()
        o_first = Signal()
        o_last = Signal()
        with m.If(emit):
            m.d.sync += [o_valid.eq(1), o_mask.eq(Cat(*lane_ok)),
                         o_first.eq((c == 0) & (r == 0)),
                         o_last.eq((c == cfg.channels - 1) & (r == cfg.kh - 1))]
            if lb:
                m.d.sync += o_rot.eq(rot)
        with m.Elif(advance):
            m.d.sync += o_valid.eq(0)
        data_by_bank = Array(rd.data for rd, _ in banks)
        for s in range(lanes):
            value = data_by_bank[(o_rot + s)[:lb]] if lb else banks[0][0].data
            m.d.comb += self.o.p.values[s].eq(Mux(o_mask[s], value, 0))
        m.d.comb += [self.o.valid.eq(o_valid), self.o.p.first.eq(o_first),
                     self.o.p.last.eq(o_last)]

        # Step to the next beat: r, then c, then ow, then oh, then the next pass.
        with m.If(emit):
            with m.If(r != cfg.kh - 1):
                m.d.sync += [r.eq(r + 1), iy.eq(iy + 1), row_addr.eq(row_addr + cfg.row_words)]
            with m.Elif(c != cfg.channels - 1):
                m.d.sync += [r.eq(0), c.eq(c + 1), iy.eq(y0),
                             row_addr.eq(chan_base + cfg.plane_words),
                             chan_base.eq(chan_base + cfg.plane_words)]
            with m.Elif(ow != cfg.out_width - 1):
                m.d.sync += [r.eq(0), c.eq(0), ow.eq(ow + 1), x0.eq(x0 + cfg.stride),
                             iy.eq(y0), row_addr.eq(pix_base), chan_base.eq(pix_base)]
            with m.Elif(oh != cfg.out_height - 1):
                m.d.sync += [r.eq(0), c.eq(0), ow.eq(0), oh.eq(oh + 1),
                             x0.eq(-cfg.left), y0.eq(y0 + cfg.stride),
                             iy.eq(y0 + cfg.stride),
                             row_addr.eq(pix_base + stride_words),
                             chan_base.eq(pix_base + stride_words),
                             pix_base.eq(pix_base + stride_words)]
            with m.Else():
                m.d.sync += restart_pass()
                with m.If(rep != cfg.passes - 1):
                    m.d.sync += rep.eq(rep + 1)
                with m.Else():
                    m.d.sync += [rep.eq(0), run.eq(0)]
        return m
