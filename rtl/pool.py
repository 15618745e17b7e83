# amaranth: UnusedElaboratable=no
# (the inner Requantizer is elaborated exactly when its unit is; the unit warns for both)
"""The pooling unit: max and average pooling over ``k x k`` windows with stride ``k``.

Its golden twins are :func:`systolic.golden.ops.maxpool2d` and
:func:`~systolic.golden.ops.avgpool2d`.  Rows and columns that do not fill a window are
dropped, as golden does.

A feature map arrives one value per beat in flat (C, H, W) order: channel planes one after
another, each in raster order.  No window is ever stored whole.  A register combines the
``k`` values of one window row (max, or exact sum); a line buffer
(:class:`amaranth.lib.memory.Memory`, one entry per output column) combines the ``k`` window
rows; the last row emits the window's result.  Max keeps the input format; the average is the
exact window sum (``f_in + log2(k*k)`` fractional bits) through a
:class:`~.requant.Requantizer`, whose shift is the divide (docs/decisions.md).

Outputs leave in the output tensor's flat (C, H, W) order, which is also the index of the
stochastic-rounding generator (DESIGN.md section 3).
"""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from systolic.golden import srgen
from systolic.golden.errors import ConstraintError
from systolic.golden.qformat import MAX_WIDTH, MIN_WIDTH, QFormat
from systolic.golden.rounding import check_mode

from ._params import check_int
from .requant import RequantConfig, Requantizer, requant_config, requant_shift

__all__ = ["Pool", "PoolConfig", "POOL_OPS"]

#: The pooling operations.
POOL_OPS = ("max", "avg")


def PoolConfig(*, max_kernel, max_height, max_width, requant_layout=None):
    """Layout of the pooling unit's run-time configuration (one layer).

    Fields: ``kernel`` (``k``), ``height``/``width`` (input ``H``, ``W``); for average
    pooling also ``size`` (output elements per image, ``C * (H // k) * (W // k)``: the
    stochastic index wraps there) and ``requant`` (a :func:`~.requant.RequantConfig`)."""
    fields = {
        "kernel": unsigned(max_kernel.bit_length()),
        "height": unsigned(max_height.bit_length()),
        "width": unsigned(max_width.bit_length()),
    }
    if requant_layout is not None:
        fields["size"] = unsigned(srgen.INDEX_BITS)
        fields["requant"] = requant_layout
    return data.StructLayout(fields)


class Pool(wiring.Component):
    """Max or average pooling, ``k x k`` windows, stride ``k``, one value per beat.

    Parameters
    ----------
    op : str
        ``"max"`` or ``"avg"``.
    in_width : int
        Widest input format, 2..16 bits.
    out_width : int, optional
        Widest output format, 2..16 bits (``avg``; defaults to ``in_width``).  ``max`` keeps
        the input format, so its ``out_width`` must equal ``in_width``.
    max_kernel : int
        Largest window side ``k`` the unit runs.  ``avg`` runs only power-of-two ``k``.
    max_height, max_width : int
        Largest input map.  The line buffer has ``max_width // 2`` entries (none when
        ``max_kernel == 1``).
    stochastic : bool
        ``avg`` only: include the stochastic-rounding generator.

    Members
    -------
    i : In(stream.Signature(StructLayout{value: signed(in_width)}))
        The input map, flat (C, H, W) order, image after image.
    o : Out(stream.Signature(StructLayout{value: signed(out_width), saturated: 1}))
        The pooled map in flat (C, H // k, W // k) order; ``saturated`` flags a saturation
        event of the average's requantization (always 0 for ``max``).
    config : In(PoolConfig)
        One layer's settings, from :meth:`layer_config`.  Change it only between images
        while the unit is empty.
    sr_keys : In(ROUNDS * 16)
        ``avg`` with ``stochastic``: round keys of ``H`` for (seed, layer).

    Raises
    ------
    TypeError
        A parameter of the wrong type or sign.
    ValueError
        An unknown ``op``, a width beyond 2..16, or an ``out_width`` that ``max`` cannot have.

    Throughput: one input value per cycle, whatever ``k``; so a ``C x H x W`` map takes
    ``C * H * W`` cycles plus the latency.  Latency, from the transfer of a window's last
    value to its result's ``o.valid``: ``max`` 1 cycle; ``avg`` ``1 + requant.latency``
    cycles (5, or ``4 + ceil(ROUNDS / 3)`` with the stochastic generator).
    """

    def __init__(self, *, op, in_width, out_width=None, max_kernel=2, max_height=32,
                 max_width=32, stochastic=True):
        if op not in POOL_OPS:
            raise ValueError(f"Pool op must be one of {', '.join(POOL_OPS)}, not {op!r}")
        check_int("Pool input width", in_width, MIN_WIDTH, MAX_WIDTH)
        if out_width is None:
            out_width = in_width
        check_int("Pool output width", out_width, MIN_WIDTH, MAX_WIDTH)
        if op == "max" and out_width != in_width:
            raise ValueError(f"Max pool output width must equal its input width "
                             f"{in_width}, not {out_width}")
        check_int("Pool kernel", max_kernel, 1)
        check_int("Pool map height", max_height, 1)
        check_int("Pool map width", max_width, 1)
        if max_kernel > min(max_height, max_width):
            raise ValueError(f"Pool kernel {max_kernel} does not fit the largest map "
                             f"{max_height}x{max_width}")
        if not isinstance(stochastic, bool):
            raise TypeError(f"Pool stochastic must be a bool, not {stochastic!r}")
        self._op = op
        self._in_width = in_width
        self._out_width = out_width
        self._max_kernel = max_kernel
        self._max_height = max_height
        self._max_width = max_width
        self._stochastic = stochastic and op == "avg"
        members = {
            "i": In(stream.Signature(data.StructLayout({"value": signed(in_width)}))),
            "o": Out(stream.Signature(data.StructLayout({
                "value": signed(out_width), "saturated": unsigned(1)}))),
        }
        if op == "avg":
            self._requant = rq = Requantizer(acc_width=self.acc_width, out_width=out_width,
                                             stochastic=self._stochastic)
            requant_layout = RequantConfig(out_width, rq.max_shift, rq.max_left_shift)
            if self._stochastic:
                members["sr_keys"] = In(srgen.ROUNDS * srgen.WORD)
        else:
            self._requant = requant_layout = None
        members["config"] = In(PoolConfig(max_kernel=max_kernel, max_height=max_height,
                                          max_width=max_width,
                                          requant_layout=requant_layout))
        super().__init__(members)

    op = property(lambda self: self._op)
    in_width = property(lambda self: self._in_width)
    out_width = property(lambda self: self._out_width)
    max_kernel = property(lambda self: self._max_kernel)
    max_height = property(lambda self: self._max_height)
    max_width = property(lambda self: self._max_width)
    stochastic = property(lambda self: self._stochastic)

    @property
    def acc_width(self):
        """Width of the window result before requantization: ``in_width`` for ``max``,
        ``in_width + 2 * ceil(log2(max_kernel))`` for the exact ``avg`` sum."""
        if self._op == "max":
            return self._in_width
        return self._in_width + 2 * ceil_log2(self._max_kernel)

    @property
    def latency(self):
        """Cycles from a window's last input transfer to its output ``valid``."""
        return 1 if self._op == "max" else 1 + self._requant.latency

    def layer_config(self, *, kernel, height, width, channels=1, in_format=None,
                     out_format=None, rounding="nearest_even"):
        """Run-time configuration for one pooling layer on a ``channels x height x width``
        map (the arguments of :func:`systolic.golden.ops.avgpool2d`; ``max`` takes no
        formats).

        Returns
        -------
        dict
            Field values for :attr:`config`.

        Raises
        ------
        ValueError
            A kernel that ``avg`` cannot run (area not a power of two) or that does not fit
            the map, or missing formats for ``avg``.
        ConstraintError
            A map, kernel or format beyond this unit's limits.
        """
        check_int("Pool kernel", kernel, 1)
        check_int("Pool map height", height, 1)
        check_int("Pool map width", width, 1)
        check_int("Pool channels", channels, 1)
        if kernel > self._max_kernel:
            raise ConstraintError(f"Pool kernel {kernel} exceeds the unit's maximum "
                                  f"{self._max_kernel}")
        if height > self._max_height or width > self._max_width:
            raise ConstraintError(f"A {height}x{width} map exceeds the unit's maximum "
                                  f"{self._max_height}x{self._max_width}")
        if kernel > min(height, width):
            raise ValueError(f"A {kernel}x{kernel} window does not fit the {height}x{width} "
                             f"map")
        cfg = {"kernel": kernel, "height": height, "width": width}
        if self._op == "max":
            return cfg
        if kernel & (kernel - 1):
            raise ValueError(f"Average-pool window area must be a power of two, not "
                             f"{kernel * kernel}")
        for name, fmt in (("Input format", in_format), ("Output format", out_format)):
            if not isinstance(fmt, QFormat):
                raise TypeError(f"{name} must be a QFormat, not {fmt!r}")
        check_mode(rounding)
        if in_format.width > self._in_width:
            raise ConstraintError(f"Input format {in_format} is wider than the unit's "
                                  f"{self._in_width}-bit input")
        if out_format.width > self._out_width:
            raise ConstraintError(f"Output format {out_format} is wider than the unit's "
                                  f"{self._out_width}-bit output")
        size = channels * (height // kernel) * (width // kernel)
        if size >= 1 << srgen.INDEX_BITS:
            raise ConstraintError(f"{size} output elements exceed the generator's "
                                  f"{srgen.INDEX_BITS}-bit index")
        f_acc = in_format.frac + 2 * (kernel.bit_length() - 1)
        shift = requant_shift(f_acc - out_format.frac, self._requant)
        cfg.update(size=size, requant=requant_config(shift, rounding, out_format))
        return cfg

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        k = cfg.kernel
        x = self.i.p.value
        is_max = self._op == "max"

        def combine(a, b):
            return Mux(a > b, a, b) if is_max else a + b

        # Position of the incoming value: column w (in-window column wc, output column ow),
        # row h (in-window row hr).
        w = Signal(range(self._max_width))
        wc = Signal(range(self._max_kernel))
        ow = Signal(range(self._max_width + 1))
        h = Signal(range(self._max_height))
        hr = Signal(range(self._max_kernel))

        # Window row partial result: max, or the exact sum of up to max_kernel values.
        row_width = self._in_width if is_max else self._in_width + ceil_log2(self._max_kernel)
        row_acc = Signal(signed(row_width))
        row_next = Signal(signed(row_width))
        m.d.comb += row_next.eq(Mux(wc == 0, x, combine(row_acc, x)))
        # This value completes a window row.  The remainder needs no test: its < k columns
        # never complete a window row, and its < k rows never reach a window's last row (their
        # partial results go to the line buffer, where the next image's first row ignores
        # them).
        seg_end = Signal()
        m.d.comb += seg_end.eq(wc == k - 1)

        # Stage A: a completed window row, merged with the line buffer's partial window.
        a_valid = Signal()
        a_row = Signal(signed(row_width))
        a_col = Signal.like(ow)
        a_first = Signal()              # first row of its window: nothing to merge
        a_last = Signal()               # last row: the window is complete, emit it
        a_result = Signal(signed(self.acc_width))
        down_ready = Signal()
        a_done = Signal()
        a_free = Signal()
        m.d.comb += [
            a_done.eq(a_valid & (~a_last | down_ready)),
            a_free.eq(~a_valid | a_done),
            # Values inside a window row only update row_acc, so they pass even when stage A
            # waits on the output.
            self.i.ready.eq(a_free | ~seg_end),
        ]
        load_a = Signal()
        m.d.comb += load_a.eq(self.i.valid & self.i.ready & seg_end)

        if self._max_kernel > 1:
            # One entry per output column.  A column is read when its window row enters stage
            # A and written the cycle after; the next read of that column is a whole input row
            # (W >= k >= 2 transfers) later, so no read ever meets a write to its address.
            m.submodules.line = line = memory.Memory(
                shape=signed(self.acc_width), depth=max(1, self._max_width // 2), init=[])
            rd = line.read_port()
            wr = line.write_port()
            m.d.comb += [
                rd.addr.eq(ow), rd.en.eq(load_a),
                wr.addr.eq(a_col), wr.data.eq(a_result), wr.en.eq(a_valid & ~a_last),
                a_result.eq(Mux(a_first, a_row, combine(rd.data, a_row))),
            ]
        else:
            m.d.comb += a_result.eq(a_row)

        with m.If(load_a):
            m.d.sync += [a_valid.eq(1), a_row.eq(row_next), a_col.eq(ow),
                         a_first.eq(hr == 0), a_last.eq(hr == k - 1)]
        with m.Elif(a_done):
            m.d.sync += a_valid.eq(0)

        with m.If(self.i.valid & self.i.ready):
            m.d.sync += row_acc.eq(row_next)
            with m.If(w == cfg.width - 1):
                m.d.sync += [w.eq(0), wc.eq(0), ow.eq(0)]
                with m.If(h == cfg.height - 1):
                    m.d.sync += [h.eq(0), hr.eq(0)]
                with m.Else():
                    m.d.sync += h.eq(h + 1)
                    with m.If(hr == k - 1):
                        m.d.sync += hr.eq(0)
                    with m.Else():
                        m.d.sync += hr.eq(hr + 1)
            with m.Else():
                m.d.sync += w.eq(w + 1)
                with m.If(wc == k - 1):
                    m.d.sync += [wc.eq(0), ow.eq(ow + 1)]
                with m.Else():
                    m.d.sync += wc.eq(wc + 1)

        if is_max:
            m.d.comb += [
                down_ready.eq(self.o.ready),
                self.o.valid.eq(a_valid & a_last),
                self.o.p.value.eq(a_result),
                self.o.p.saturated.eq(0),
            ]
            return m

        m.submodules.requant = rq = self._requant
        m.d.comb += rq.config.eq(cfg.requant)
        if self._stochastic:
            m.d.comb += rq.sr_keys.eq(self.sr_keys)
        index = Signal(srgen.INDEX_BITS)
        with m.If(rq.i.valid & rq.i.ready):
            m.d.sync += index.eq(Mux(index == cfg.size - 1, 0, index + 1))
        m.d.comb += [
            down_ready.eq(rq.i.ready),
            rq.i.valid.eq(a_valid & a_last),
            rq.i.p.acc.eq(a_result),
            rq.i.p.bias.eq(0),
            rq.i.p.index.eq(index),
        ]
        wiring.connect(m, rq.o, wiring.flipped(self.o))
        return m
