"""Requantization lanes: DESIGN.md section 3 in hardware.

A lane turns an exact accumulator plus its aligned bias into an output integer: shift by
``s`` with the run-time rounding mode, then saturate into the layer's clamp bounds.  Its
golden twin is :func:`systolic.golden.rounding.requantize` on ``acc + bias``.

One adder serves all three rounding modes, because each is ``(x + addend) >> s``:

* ``floor``: ``addend = 0``;
* ``nearest_even``: ``addend = 2**(s-1)`` (round half up), then on a tie (``x mod 2**s ==
  2**(s-1)``) the result's LSB is cleared: of the two candidates ``n`` and ``n + 1`` that
  is the even one.  The tie test runs beside the adder, so no bit of ``x`` feeds the
  adder's carry-in (``2**(s-1) - 1 + x[s]`` did: a shifter's depth before the carry chain,
  the iCE40 build's critical path);
* ``stochastic``: ``addend = H(seed, layer, index) mod 2**s``.

For ``s <= 0`` the lane clamps ``x`` to ``+-2**16`` (as the golden model does; every output
saturates beyond that) and shifts left by ``-s``.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from systolic.golden import srgen
from systolic.golden.errors import ConstraintError
from systolic.golden.qformat import MAX_WIDTH, MIN_WIDTH
from systolic.golden.rounding import ROUNDING_MODES

from ._params import check_int
from .srgen import SRRounds, check_rounds_per_stage, pipeline_stages

__all__ = ["MODE", "RequantConfig", "Requantizer", "requant_config", "requant_shift"]

#: Run-time encoding of the rounding modes (the order of golden ``ROUNDING_MODES``).
MODE = {name: code for code, name in enumerate(ROUNDING_MODES)}

#: Inputs of magnitude beyond this saturate every output; see module docstring.
_LEFT_CLAMP = 1 << 16
#: Stochastic offsets come from 32 random bits.
_SR_MAX_SHIFT = 32


def RequantConfig(out_width, max_shift, max_left_shift):
    """Layout of a lane's per-layer run-time configuration.

    Fields: ``shift`` (signed ``s``), ``mode`` (:data:`MODE`), ``lo``/``hi`` (clamp bounds:
    the output format's range narrowed by a fused activation), ``sat_lo``/``sat_hi`` (whether
    a value clamped at ``lo``/``hi`` counts as a saturation event: true when that bound is
    the format's own limit rather than the activation's)."""
    return data.StructLayout({
        "shift": signed(max(max_shift, max_left_shift).bit_length() + 1),
        "mode": unsigned(2),
        "lo": signed(out_width),
        "hi": signed(out_width),
        "sat_lo": unsigned(1),
        "sat_hi": unsigned(1),
    })


def requant_config(shift, mode, out_format, lo=None, hi=None):
    """The configuration values for one layer, derived from the golden definitions.

    Parameters are those of :func:`systolic.golden.rounding.requantize`: ``lo``/``hi`` are a
    fused activation's bounds (``None``: the format's own limit).

    Returns
    -------
    dict
        Field values for :func:`RequantConfig`.
    """
    return {
        "shift": shift, "mode": MODE[mode],
        "lo": out_format.min if lo is None else max(lo, out_format.min),
        "hi": out_format.max if hi is None else min(hi, out_format.max),
        # golden counts an event when clip(y, lo, hi) leaves the format's range
        "sat_lo": int(lo is None or lo < out_format.min),
        "sat_hi": int(hi is None or hi > out_format.max),
    }


class Requantizer(wiring.Component):
    """A requantization lane: bias add, shift with run-time rounding mode, saturation.

    Parameters
    ----------
    acc_width : int
        Width of the signed accumulator (and of the aligned bias).
    out_width : int
        Widest output format, 2..16 bits; narrower formats are clamp bounds in ``config``.
    max_shift : int
        Largest right shift ``s`` the lane supports.
    max_left_shift : int
        Largest left shift ``-s``.
    stochastic : bool
        Include the stochastic-rounding generator.  Without it, mode ``stochastic`` is
        not supported (the compiler must not select it).
    rounds_per_stage : int
        Generator rounds per pipeline stage (see :class:`~.srgen.SRRounds`).
    external_h : bool
        With ``stochastic``: take ``H(seed, layer, index)`` from the input's ``h`` field
        instead of computing it, so that lanes whose elements share an index (the images of
        a batch) share one generator.  ``index`` is then unused.

    Members
    -------
    i : In(stream.Signature(StructLayout{acc, bias, index}))
        ``acc`` and ``bias`` are signed ``acc_width``; ``bias`` is already aligned to the
        accumulator's scale; ``index`` is the element's flat (C, H, W) output index.
        With ``external_h`` there is a fourth field, ``h`` (32 bits).
    o : Out(stream.Signature(StructLayout{value, saturated}))
        ``value`` signed ``out_width``; ``saturated`` flags a saturation event.
    config : In(RequantConfig)
        Held constant while a layer runs.
    sr_keys : In(ROUNDS * 16)
        Round keys from :class:`~.srgen.SRKeySchedule` (only with ``stochastic``).

    Raises
    ------
    TypeError
        A width or shift that is not a positive integer.
    ValueError
        ``out_width`` outside 2..16, or ``max_shift`` beyond what ``acc_width`` can use.

    Latency ``3 + max(1, L)`` cycles, where ``L`` is the generator's latency with
    ``stochastic`` and without ``external_h`` (``ceil(ROUNDS / rounds_per_stage)``), else
    0; throughput one element per cycle.  Back-pressure stalls the whole pipeline (shared enable).
    """

    def __init__(self, *, acc_width, out_width=8, max_shift=None, max_left_shift=16,
                 stochastic=True, rounds_per_stage=3, external_h=False):
        check_int("Accumulator width", acc_width)
        check_int("Output width", out_width)
        if not MIN_WIDTH <= out_width <= MAX_WIDTH:
            raise ValueError(f"Output width must be between {MIN_WIDTH} and {MAX_WIDTH}, "
                             f"not {out_width}")
        if max_shift is None:
            max_shift = acc_width + 1
        check_int("Maximum shift", max_shift)
        if max_shift > acc_width + 1:
            raise ValueError(f"Maximum shift must be at most acc_width + 1 = {acc_width + 1} "
                             f"(larger shifts give the same results), not {max_shift}")
        if isinstance(max_left_shift, bool) or not isinstance(max_left_shift, int) or \
                max_left_shift < 0:
            raise TypeError(f"Maximum left shift must be a non-negative integer, not "
                            f"{max_left_shift!r}")
        if not isinstance(stochastic, bool):
            raise TypeError(f"Stochastic must be a bool, not {stochastic!r}")
        if not isinstance(external_h, bool):
            raise TypeError(f"External H must be a bool, not {external_h!r}")
        if external_h and not stochastic:
            raise ValueError("External H needs a stochastic lane")
        self._external_h = external_h
        self._acc_width = acc_width
        self._out_width = out_width
        self._max_shift = max_shift
        self._max_left_shift = max_left_shift
        self._stochastic = stochastic
        self._rounds_per_stage = check_rounds_per_stage(rounds_per_stage)
        fields = {"acc": signed(acc_width), "bias": signed(acc_width),
                  "index": unsigned(srgen.INDEX_BITS)}
        if external_h:
            fields["h"] = unsigned(32)
        super().__init__({
            "i": In(stream.Signature(data.StructLayout(fields))),
            "o": Out(stream.Signature(data.StructLayout({
                "value": signed(out_width), "saturated": unsigned(1)}))),
            "config": In(RequantConfig(out_width, max_shift, max_left_shift)),
            "sr_keys": In(srgen.ROUNDS * srgen.WORD),
        })

    acc_width = property(lambda self: self._acc_width)
    out_width = property(lambda self: self._out_width)
    max_shift = property(lambda self: self._max_shift)
    max_left_shift = property(lambda self: self._max_left_shift)
    stochastic = property(lambda self: self._stochastic)
    external_h = property(lambda self: self._external_h)

    @property
    def latency(self):
        """Cycles from input transfer to output valid (with no stalls)."""
        if self._stochastic and not self._external_h:
            return 3 + pipeline_stages(self._rounds_per_stage)
        return 4

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        n = self.latency
        valid = Signal(n)                      # valid bit of each pipeline stage
        advance = Signal()
        m.d.comb += [
            advance.eq(~valid[-1] | self.o.ready),
            self.i.ready.eq(advance),
            self.o.valid.eq(valid[-1]),
        ]
        with m.If(advance):
            m.d.sync += valid.eq(Cat(self.i.valid, valid[:-1]))

        def stage(value, name):
            reg = Signal.like(value, name=name) if isinstance(value, Signal) else \
                Signal(value.shape(), name=name)
            with m.If(advance):
                m.d.sync += reg.eq(value)
            return reg

        # Stage 1: exact sum of accumulator and aligned bias.
        x = stage(self.i.p.acc + self.i.p.bias, "x")
        # Generator: H(seed, layer, index) arrives as x leaves its delay line.
        if self._external_h:
            h = stage(self.i.p.h, "h")
        elif self._stochastic:
            rounds = m.submodules.rounds = SRRounds(rounds_per_stage=self._rounds_per_stage)
            m.d.comb += [rounds.keys.eq(self.sr_keys), rounds.index.eq(self.i.p.index),
                         rounds.enable.eq(advance)]
            # rounds registers its input stage itself; align x with its output
            for k in range(rounds.latency - 1):
                x = stage(x, f"x_d{k}")
            h = rounds.h
        xw = len(x)

        # What the datapath needs from the configuration is registered here, every cycle,
        # so the configuration's fan-out and decoding are a cycle ahead of the data: on the
        # iCE40 the path from the accelerator's rounding-mode and shift registers through
        # this decoding into the rounding carry chain was the critical path (28.7 ns).
        # The latency is unchanged: an element's stage 2 comes a cycle after its transfer,
        # and the configuration is held from a layer's first transfer on.
        s = cfg.shift

        def derived(value, name):
            reg = Signal(value.shape(), name=name)
            m.d.sync += reg.eq(value)
            return reg

        right = Signal(range(self._max_shift + 1))      # s if s > 0, else 0
        left = Signal(range(self._max_left_shift + 1))  # -s if s < 0, else 0
        m.d.comb += [right.eq(Mux(s > 0, s, 0)), left.eq(Mux(s < 0, -s, 0))]
        s_pos, k, s_right = derived(right, "s_pos"), derived(left, "k"), derived(s > 0, "s_right")
        # per bit i: of the stochastic mask 2**s - 1 (gated by the mode), of the
        # nearest-even addend 2**(s-1) (gated), and of the tie test's mask 2**s - 1
        is_ne = cfg.mode == MODE["nearest_even"]
        is_sr = (cfg.mode == MODE["stochastic"]) if self._stochastic else Const(0)
        mask = derived(Cat(is_sr & (right > i) for i in range(xw + 1)), "mask")
        half = derived(Cat(is_ne & (right == i + 1) for i in range(xw + 1)), "half")
        tie_mask = derived(Cat(is_ne & (right > i) for i in range(xw)), "tie_mask")
        lo, hi = derived(cfg.lo, "lo"), derived(cfg.hi, "hi")
        sat_lo, sat_hi = derived(cfg.sat_lo, "sat_lo"), derived(cfg.sat_hi, "sat_hi")

        # Stage 2: t = x + addend, and whether x is a nearest-even tie (its low s bits are
        # exactly 2**(s-1)); the tie test is beside the adder, not in front of it.
        addend = Signal(unsigned(xw + 1))
        m.d.comb += addend.eq(half)
        if self._stochastic:
            m.d.comb += addend.eq(half | (h & mask[:32]))
        t = stage(x + addend, "t")
        tie = stage(((x.as_unsigned() ^ half[:xw]) & tie_mask) == 0, "tie")
        tie_on = stage(tie_mask[0], "tie_on")          # nearest-even with s > 0

        # Stage 3: shift.  Right by s > 0 (arithmetic), a tie's LSB cleared (the even
        # candidate); left by -s after the clamp.
        shifted = Signal(signed(len(t)))
        m.d.comb += shifted.eq(t >> s_pos)
        even = Cat(shifted[0] & ~(tie & tie_on), shifted[1:]).as_signed()
        x_left = Signal(signed(18))
        m.d.comb += x_left.eq(Mux(x > _LEFT_CLAMP, _LEFT_CLAMP,
                                  Mux(x < -_LEFT_CLAMP, -_LEFT_CLAMP, x)))
        x_left_d = stage(x_left, "x_left")   # aligned with t
        y = stage(Mux(s_right, even, x_left_d << k), "y")

        # Stage 4: clamp into [lo, hi]; saturation event when a format limit clamps.
        # y is as wide as the shifts make it (~30 bits); bounds are out_width bits.  So the
        # compares are on y's low out_width + 1 bits, with y's range (within +-2**n, n =
        # out_width, or beyond either bound) from its upper bits, in parallel: two ~30-bit
        # compare chains into the output register were the iCE40 critical path.
        n = self._out_width
        value = Signal(signed(n))
        saturated = Signal()
        if len(y) > n + 1:
            upper = y[n:]                       # all equal (to the sign) iff |y| <= 2**n
            above = ~y[-1] & upper.any()        # y >= 2**n > hi
            below = y[-1] & ~upper.all()        # y < -2**n < lo
            small = y[:n + 1].as_signed()
        else:
            above, below, small = Const(0), Const(0), y
        with m.If(below | (~above & (small < lo))):
            m.d.comb += [value.eq(lo), saturated.eq(sat_lo)]
        with m.Elif(above | (small > hi)):
            m.d.comb += [value.eq(hi), saturated.eq(sat_hi)]
        with m.Else():
            m.d.comb += value.eq(y)
        m.d.comb += [self.o.p.value.eq(stage(value, "value")),
                     self.o.p.saturated.eq(stage(saturated, "saturated"))]
        return m


def requant_shift(shift, requantizer):
    """Map a golden requantization shift onto a :class:`~.requant.Requantizer`'s range.

    A left shift beyond the lane's ``max_left_shift`` (at least 16) gives the same result
    as that limit (any nonzero value saturates, zero stays zero), so it is clamped.  A right
    shift beyond ``max_shift`` does not fit.

    Raises
    ------
    ConstraintError
        ``shift`` exceeds the lane's ``max_shift``.
    """
    if shift > requantizer.max_shift:
        raise ConstraintError(f"Requantization shift {shift} exceeds the unit's maximum "
                              f"shift {requantizer.max_shift}")
    if -shift > requantizer.max_left_shift and requantizer.max_left_shift >= MAX_WIDTH:
        return -requantizer.max_left_shift
    if -shift > requantizer.max_left_shift:
        raise ConstraintError(f"Requantization left shift {-shift} exceeds the unit's maximum "
                              f"left shift {requantizer.max_left_shift}")
    return shift
