# amaranth: UnusedElaboratable=no
# (the inner Requantizer is elaborated exactly when its unit is; the unit warns for both)
"""The activation unit: DESIGN.md section 4's stand-alone activations in hardware.

Its golden twin is :func:`systolic.golden.ops.activation`.  Every function except the lookup
table is "an exact value, then requantization" (docs/decisions.md, Activations):

=================  ===================================  ==========================
function           exact value ``a`` (``f_acc`` bits)    clamp ``[lo, hi]``
=================  ===================================  ==========================
``relu``           ``x``  (``f_in``)                     ``[0, max]``
``clip``           ``x``  (``f_in``)                     ``[0, quantize(clip_max)]``
``leaky_relu``     ``x << k`` if ``x >= 0`` else ``x``   the format's range
                   (``f_in + k``)
``hard_sigmoid``   ``(x << e) + 2**(f_acc - 1)``          ``[quantize(0), quantize(1)]``
                   (``f_acc = f_in + 2 + e``)
``hard_tanh``      ``x``  (``f_in``)                     ``[quantize(-1), quantize(1)]``
=================  ===================================  ==========================

so one datapath serves them all: a sign-dependent left shift (``x << pos_shift`` for
``x >= 0``, ``x << neg_shift`` otherwise), plus a constant ``bias``, into a
:class:`~.requant.Requantizer` (shift ``f_acc - f_out`` with the run-time rounding mode, then
the clamp).  Which function runs is only a matter of the run-time :attr:`Activation.config`,
built from the golden definitions by :meth:`Activation.layer_config`.  A ``lut`` function
instead reads a table (:class:`amaranth.lib.memory.Memory`) built by
:func:`systolic.golden.ops.lut_table`, the same Python function the golden model uses.
"""

import numpy as np
from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from systolic.golden import srgen
from systolic.golden.errors import ConstraintError
from systolic.golden.ir import LUT_MAX_INPUT_WIDTH
from systolic.golden.ops import clamp_bounds
from systolic.golden.qformat import MAX_WIDTH, MIN_WIDTH, QFormat
from systolic.golden.rounding import check_mode

from ._params import check_int
from .requant import RequantConfig, Requantizer, requant_config, requant_shift

__all__ = ["Activation", "ActivationConfig", "LUT_FUNCTION", "lut_image"]

#: The function name of a lookup-table activation (every other name is computed).
LUT_FUNCTION = "lut"
#: Leaky-ReLU slope shifts allowed by the IR (``golden.ir``: 1..15); also the widest
#: hard-sigmoid pre-shift the default unit supports.
_MAX_PRE_SHIFT = 15


def lut_image(table, in_format, lut_width):
    """The table memory's contents for a golden table of inputs in ``in_format``.

    ``table`` is :func:`systolic.golden.ops.lut_table`'s result: entry ``q - min`` for input
    ``q``.  The memory (``2**lut_width`` entries) is addressed by the low ``lut_width`` bits
    of ``q`` itself (two's complement), so the lookup needs no adder; entries no input of
    ``in_format`` reaches are 0.

    Raises
    ------
    ValueError
        ``in_format`` is wider than ``lut_width``, or ``table`` has the wrong length.
    """
    if not isinstance(in_format, QFormat):
        raise TypeError(f"Input format must be a QFormat, not {in_format!r}")
    if in_format.width > lut_width:
        raise ValueError(f"A {in_format} input needs a table of {in_format.width} address "
                         f"bits, not {lut_width}")
    table = np.asarray(table, dtype=np.int64)
    if table.shape != (1 << in_format.width,):
        raise ValueError(f"Table for {in_format} must have {1 << in_format.width} entries, "
                         f"not shape {table.shape}")
    image = [0] * (1 << lut_width)
    mask = (1 << lut_width) - 1
    for q, v in zip(range(in_format.min, in_format.max + 1), table):
        image[q & mask] = int(v)
    return image


def ActivationConfig(*, max_pre_shift, acc_width, requant_layout):
    """Layout of the activation unit's run-time configuration (one layer).

    Fields: ``lut`` (1: read the table, 0: compute), ``pos_shift``/``neg_shift`` (left shift
    of ``x >= 0`` / ``x < 0``), ``bias`` (exact constant added before rounding), ``size``
    (elements per image: the stochastic index counter wraps there) and ``requant`` (a
    :func:`~.requant.RequantConfig`)."""
    return data.StructLayout({
        "lut": unsigned(1),
        "pos_shift": unsigned(max_pre_shift.bit_length()),
        "neg_shift": unsigned(max_pre_shift.bit_length()),
        "bias": signed(acc_width),
        "size": unsigned(srgen.INDEX_BITS),
        "requant": requant_layout,
    })


class Activation(wiring.Component):
    """Element-wise activation: relu, clip, leaky relu, hard sigmoid, hard tanh, lookup table.

    One element per beat.  Elements arrive in their tensor's flat (C, H, W) order, image after
    image: the unit numbers them ``0 .. size - 1`` per image, and that number is the index of
    the stochastic-rounding generator (DESIGN.md section 3).

    Parameters
    ----------
    in_width : int
        Widest input format, 2..16 bits (narrower inputs are sign-extended).
    out_width : int
        Widest output format, 2..16 bits (narrower formats are clamp bounds in ``config``).
    max_pre_shift : int
        Largest left shift before rounding (the leaky-ReLU slope shift ``k``, the
        hard-sigmoid scale ``e``), 0..15.  Sets the exact value's width,
        ``acc_width = in_width + max_pre_shift``.
    lut_width : int
        Address bits of the lookup table, 0..10; 0 builds no table.
    lut_init : sequence of int, optional
        Initial table, ``2**lut_width`` entries (see :func:`lut_image`).
    stochastic : bool
        Include the stochastic-rounding generator (see :class:`~.requant.Requantizer`).

    Members
    -------
    i : In(stream.Signature(StructLayout{value: signed(in_width)}))
    o : Out(stream.Signature(StructLayout{value: signed(out_width), saturated: 1}))
        ``saturated`` flags a saturation event as :func:`~systolic.golden.rounding.requantize`
        counts them (never for a table).
    config : In(ActivationConfig)
        One layer's settings, from :meth:`layer_config`.  Change it only while the unit is
        empty (no element in flight) and its index counter is at an image boundary.
    sr_keys : In(ROUNDS * 16)
        Round keys of ``H`` for (seed, layer) (with ``stochastic``).
    lut_w : In(stream.Signature(StructLayout{addr, value}))
        Table write port, always ready (with ``lut_width > 0``).  Load it while no ``lut``
        layer runs.

    Raises
    ------
    TypeError
        A parameter of the wrong type or sign.
    ValueError
        A width beyond its limit, or a ``lut_init`` of the wrong length or range.

    Latency: computed functions :attr:`latency` cycles, the requantizer's: 4, or
    ``3 + ceil(ROUNDS / 3)`` with the stochastic generator (3 rounds per stage); ``lut``
    1 cycle.  Throughput: one element per cycle; back-pressure stalls the pipeline without
    bubbles.
    """

    def __init__(self, *, in_width, out_width, max_pre_shift=_MAX_PRE_SHIFT, lut_width=0,
                 lut_init=None, stochastic=True):
        check_int("Activation input width", in_width, MIN_WIDTH, MAX_WIDTH)
        check_int("Activation output width", out_width, MIN_WIDTH, MAX_WIDTH)
        check_int("Activation pre-shift", max_pre_shift, 0, _MAX_PRE_SHIFT)
        check_int("Activation table width", lut_width, 0, LUT_MAX_INPUT_WIDTH)
        if not isinstance(stochastic, bool):
            raise TypeError(f"Activation stochastic must be a bool, not {stochastic!r}")
        if lut_init is not None:
            if lut_width == 0:
                raise ValueError("Activation table contents need a table width of at least 1")
            lut_init = list(lut_init)
            if len(lut_init) != 1 << lut_width:
                raise ValueError(f"Activation table must have {1 << lut_width} entries, not "
                                 f"{len(lut_init)}")
            lo, hi = -(1 << (out_width - 1)), (1 << (out_width - 1)) - 1
            for v in lut_init:
                if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or \
                        not lo <= v <= hi:
                    raise ValueError(f"Activation table entries must be integers in "
                                     f"{lo}..{hi}, not {v!r}")
            lut_init = [int(v) for v in lut_init]
        self._in_width = in_width
        self._out_width = out_width
        self._max_pre_shift = max_pre_shift
        self._lut_width = lut_width
        self._lut_init = lut_init
        self._stochastic = stochastic
        self._requant = Requantizer(acc_width=self.acc_width, out_width=out_width,
                                    stochastic=stochastic)
        rq = self._requant
        members = {
            "i": In(stream.Signature(data.StructLayout({"value": signed(in_width)}))),
            "o": Out(stream.Signature(data.StructLayout({
                "value": signed(out_width), "saturated": unsigned(1)}))),
            "config": In(ActivationConfig(
                max_pre_shift=max_pre_shift, acc_width=self.acc_width,
                requant_layout=RequantConfig(out_width, rq.max_shift, rq.max_left_shift))),
        }
        if stochastic:
            members["sr_keys"] = In(srgen.ROUNDS * srgen.WORD)
        if lut_width:
            members["lut_w"] = In(stream.Signature(data.StructLayout({
                "addr": unsigned(lut_width), "value": signed(out_width)})))
        super().__init__(members)

    in_width = property(lambda self: self._in_width)
    out_width = property(lambda self: self._out_width)
    max_pre_shift = property(lambda self: self._max_pre_shift)
    lut_width = property(lambda self: self._lut_width)
    stochastic = property(lambda self: self._stochastic)

    @property
    def lut_init(self):
        return None if self._lut_init is None else tuple(self._lut_init)

    @property
    def acc_width(self):
        """Width of the exact value before rounding, ``in_width + max_pre_shift``."""
        return self._in_width + self._max_pre_shift

    @property
    def latency(self):
        """Cycles from input transfer to output valid for computed functions."""
        return self._requant.latency

    def layer_config(self, *, function, in_format, out_format, rounding="nearest_even",
                     clip_max=None, slope_shift=None, size=1):
        """Run-time configuration for one activation layer (the arguments of
        :func:`systolic.golden.ops.activation`; ``size`` is ``C * H * W`` of one image).

        Returns
        -------
        dict
            Field values for :attr:`config`.

        Raises
        ------
        ValueError
            An unknown function or rounding mode, or formats wider than the unit.
        ConstraintError
            A layer whose shifts or constants do not fit this unit.
        """
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
        check_int("Activation size", size, 1, (1 << srgen.INDEX_BITS) - 1)
        f_in = in_format.frac
        pos = neg = bias = 0
        lo = hi = None
        if function == LUT_FUNCTION:
            if in_format.width > self._lut_width:
                raise ConstraintError(f"A lookup table for {in_format} needs "
                                      f"{in_format.width} address bits; this unit has "
                                      f"{self._lut_width}")
            f_acc = out_format.frac          # unused: the table bypasses the requantizer
        elif function in ("relu", "clip", "hard_tanh"):
            f_acc = f_in
            if function == "hard_tanh":
                lo, hi = int(out_format.quantize(-1.0)), int(out_format.quantize(1.0))
            else:
                lo, hi = clamp_bounds(function, clip_max, out_format)
        elif function == "leaky_relu":
            check_int("Leaky ReLU slope shift", slope_shift, 1, _MAX_PRE_SHIFT)
            pos, f_acc = slope_shift, f_in + slope_shift
        elif function == "hard_sigmoid":
            # x/4 + 1/2 exactly, as golden: scale up by e bits when f_in + 2 < 1.
            e = max(0, 1 - (f_in + 2))
            pos = neg = e
            f_acc = f_in + 2 + e
            bias = 1 << (f_acc - 1)
            lo, hi = int(out_format.quantize(0.0)), int(out_format.quantize(1.0))
        else:
            raise ValueError(f"Activation function must be one of relu, clip, leaky_relu, "
                             f"hard_sigmoid, hard_tanh, lut, not {function!r}")
        if max(pos, neg) > self._max_pre_shift:
            raise ConstraintError(f"{function} on {in_format} needs a pre-shift of "
                                  f"{max(pos, neg)}; this unit allows {self._max_pre_shift}")
        if bias >= 1 << (self.acc_width - 1):
            raise ConstraintError(f"{function} on {in_format} needs a {bias.bit_length() + 1}"
                                  f"-bit constant; this unit's values have {self.acc_width} "
                                  f"bits")
        shift = 0 if function == LUT_FUNCTION else \
            requant_shift(f_acc - out_format.frac, self._requant)
        return {
            "lut": int(function == LUT_FUNCTION), "pos_shift": pos, "neg_shift": neg,
            "bias": bias, "size": size,
            "requant": requant_config(shift, rounding, out_format, lo, hi),
        }

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        m.submodules.requant = rq = self._requant
        m.d.comb += rq.config.eq(cfg.requant)
        if self._stochastic:
            m.d.comb += rq.sr_keys.eq(self.sr_keys)

        use_lut = Signal()
        if self._lut_width:
            m.d.comb += use_lut.eq(cfg.lut)

        # Flat index of the element in its image, for the stochastic generator.
        index = Signal(srgen.INDEX_BITS)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += index.eq(Mux(index == cfg.size - 1, 0, index + 1))

        # Computed functions: sign-dependent exact left shift, constant bias, requantize.
        x = self.i.p.value
        shifted = Signal(signed(self.acc_width))
        m.d.comb += shifted.eq(Mux(x < 0, x << cfg.neg_shift, x << cfg.pos_shift))
        m.d.comb += [
            rq.i.valid.eq(self.i.valid & ~use_lut),
            rq.i.p.acc.eq(shifted),
            rq.i.p.bias.eq(cfg.bias),
            rq.i.p.index.eq(index),
        ]

        if not self._lut_width:
            m.d.comb += self.i.ready.eq(rq.i.ready)
            wiring.connect(m, rq.o, wiring.flipped(self.o))
            return m

        # Lookup table: one registered stage (the memory's synchronous read port), addressed
        # by the low lut_width bits of x, sign-extended first when x is narrower (lut_image's
        # two's-complement layout); the port's data register holds while the output stalls.
        m.submodules.lut = lut = memory.Memory(
            shape=signed(self._out_width), depth=1 << self._lut_width,
            init=self._lut_init or [])
        rd = lut.read_port()
        wr = lut.write_port()
        m.d.comb += [
            wr.addr.eq(self.lut_w.p.addr), wr.data.eq(self.lut_w.p.value),
            wr.en.eq(self.lut_w.valid), self.lut_w.ready.eq(1),
        ]
        lut_valid = Signal()
        lut_advance = Signal()
        m.d.comb += [
            lut_advance.eq(~lut_valid | self.o.ready),
            rd.addr.eq(x),
            rd.en.eq(lut_advance),
        ]
        with m.If(lut_advance):
            m.d.sync += lut_valid.eq(self.i.valid & use_lut)

        m.d.comb += [
            self.i.ready.eq(Mux(use_lut, lut_advance, rq.i.ready)),
            rq.o.ready.eq(self.o.ready & ~use_lut),
            self.o.valid.eq(Mux(use_lut, lut_valid, rq.o.valid)),
            self.o.p.value.eq(Mux(use_lut, rd.data, rq.o.p.value)),
            self.o.p.saturated.eq(~use_lut & rq.o.p.saturated),
        ]
        return m
