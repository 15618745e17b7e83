"""Specifications, harnesses and planted bugs for the formal tests (DESIGN.md section 6).

The specifications here are written from DESIGN.md and ``golden/`` alone, independently of
the RTL they check: section 3's requantization (remainder against half and the quotient's
parity, not the RTL's single-adder trick), and ``H``'s key schedule and rounds unrolled
combinationally.  ``tests/formal/test_formal_specs.py`` checks each against the golden model
by simulation, so a proof against them is a proof against golden.

Planted bugs are *mutants*: a subclass whose method is the unit's own source with one
change (:func:`mutant`).  A mutant fails loudly if its pattern is no longer in the source,
so a refactor of the unit cannot silently turn a planted bug into the correct design.
"""

import inspect
import re
import sys
import textwrap

from amaranth.asserts import AnyConst, AnySeq
from amaranth.hdl import (Assert, Assume, Cat, Const, Cover, Elaboratable, Module, Mux,
                          Signal, Value, signed, unsigned)
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from systolic.golden import srgen
from systolic.rtl.requant import MODE
from systolic.sim.formal import Scoreboard, run_formal, stream_sink, stream_source

FLOOR, NEAREST_EVEN, STOCHASTIC = MODE["floor"], MODE["nearest_even"], MODE["stochastic"]
_LEFT_CLAMP = 1 << 16          # decisions.md: left shifts clamp the input to +-2**16 first


# -- planted bugs ------------------------------------------------------------------------

def mutant(cls, old, new, *, method="elaborate", name=None, names=None):
    """A subclass of ``cls`` whose ``method`` is ``cls``'s source with ``old`` replaced by
    ``new`` (exactly once; runs of white space in ``old`` match any white space, so it
    may span lines).  Mutants of mutants accumulate the changes.  ``names`` adds globals
    that ``new`` refers to.

    Raises ``AssertionError`` if ``old`` does not occur exactly once, so that a changed unit
    makes the planted-bug test fail instead of testing an unchanged copy."""
    sources = getattr(cls, "_mutant_sources", {})
    source = sources.get(method) or textwrap.dedent(inspect.getsource(getattr(cls, method)))
    pattern = r"\s+".join(re.escape(word) for word in old.split())
    source, count = re.subn(pattern, lambda _: new, source)
    assert count == 1, (f"planted bug: {old!r} occurs {count} times in "
                        f"{cls.__name__}.{method}; update the mutant")
    names = {**getattr(cls, "_mutant_names", {}), **(names or {})}
    module = getattr(cls, "_mutant_module", cls.__module__)
    namespace = {**vars(sys.modules[module]), **names}
    exec(compile(source, f"<mutant of {cls.__qualname__}.{method}>", "exec"), namespace)
    return type(name or f"Mutant{cls.__name__}", (cls,), {
        method: namespace[method], "_mutant_sources": {**sources, method: source},
        "_mutant_names": names, "_mutant_module": module})


# -- DESIGN.md section 3 -------------------------------------------------------------------

def requant_layout(out_width):
    """What the reference produces per element: the output, the saturation event, and
    which interesting case it was (for covers)."""
    return data.StructLayout({
        "value": signed(out_width), "saturated": 1,
        "tie_up": 1, "tie_down": 1, "sr_up": 1, "sr_down": 1,
        "sat_hi": 1, "sat_lo": 1, "act_clamp": 1, "left": 1,
    })


class RequantParams:
    """The per-layer parameters of a requantization, in golden's terms.

    ``shift`` (``s``), ``mode``, the output format's width (``fmt_width``, 2..out_width),
    and the fused activation's bounds ``act_lo``/``act_hi`` (each present or not, per
    ``lo_on``/``hi_on``).  :meth:`free` makes them arbitrary constants (one arbitrary
    layer per trace) within the domain the compiler produces.
    """

    def __init__(self, m, *, out_width, max_shift, max_left_shift):
        self.out_width = out_width
        self.max_shift = max_shift
        self.max_left_shift = max_left_shift
        bits = max(max_shift, max_left_shift).bit_length() + 1
        self.shift = Signal(signed(bits))
        self.mode = Signal(2)
        self.fmt_width = Signal(range(out_width + 1))
        self.lo_on, self.hi_on = Signal(), Signal()
        self.act_lo, self.act_hi = Signal(signed(out_width)), Signal(signed(out_width))
        self.fmt_min = Signal(signed(out_width + 1))
        self.fmt_max = Signal(signed(out_width + 1))
        wm1 = Signal(range(out_width))
        m.d.comb += [wm1.eq(self.fmt_width - 1),
                     self.fmt_max.eq((Const(1, out_width + 1) << wm1) - 1),
                     self.fmt_min.eq(-(Const(1, out_width + 1) << wm1))]

    @property
    def inputs(self):
        return (self.shift, self.mode, self.fmt_width, self.lo_on, self.hi_on,
                self.act_lo, self.act_hi)

    def free(self, m, modes):
        """Drive every parameter from an ``AnyConst``; assume the valid domain: shifts the
        lane supports, one of ``modes``, a format of 2..out_width bits, activation bounds
        inside the format's range (``golden.ops.clamp_bounds`` quantizes them into it) and
        ordered."""
        m.d.comb += [s.eq(AnyConst(s.shape())) for s in self.inputs]
        m.d.comb += [
            Assume((self.shift >= -self.max_left_shift) & (self.shift <= self.max_shift)),
            Assume(Cat(*[self.mode == c for c in modes]).any()),
            Assume((self.fmt_width >= 2) & (self.fmt_width <= self.out_width)),
            Assume(~self.lo_on | ((self.act_lo >= self.fmt_min) &
                                  (self.act_lo <= self.fmt_max))),
            Assume(~self.hi_on | ((self.act_hi >= self.fmt_min) &
                                  (self.act_hi <= self.fmt_max))),
            Assume(~(self.lo_on & self.hi_on) | (self.act_lo <= self.act_hi)),
        ]

    def rtl_config(self):
        """The lane's ``config`` for these parameters: :func:`rtl.requant.requant_config`
        restated for symbolic values (``test_formal_specs`` checks the two agree)."""
        return {
            "shift": self.shift, "mode": self.mode,
            "lo": Mux(self.lo_on, self.act_lo, self.fmt_min),
            "hi": Mux(self.hi_on, self.act_hi, self.fmt_max),
            "sat_lo": ~self.lo_on, "sat_hi": ~self.hi_on,
        }


def requant_reference(m, x, h, p):
    """DESIGN.md section 3 for one element: ``x`` (exact, signed), the generator output
    ``h`` (32 bits; used by ``stochastic``) and the parameters ``p`` (RequantParams).

    Returns a ``requant_layout`` view (combinational)."""
    xw = len(x)
    s = Signal(range(p.max_shift + 1))            # right shift, if s > 0
    k = Signal(range(p.max_left_shift + 1))       # left shift, if s < 0
    m.d.comb += [s.eq(Mux(p.shift > 0, p.shift, 0)), k.eq(Mux(p.shift < 0, -p.shift, 0))]

    # s <= 0: clamp to +-2**16, then shift left exactly.
    xc = Signal(signed(max(xw, 18)))
    m.d.comb += xc.eq(Mux(x > _LEFT_CLAMP, _LEFT_CLAMP, Mux(x < -_LEFT_CLAMP, -_LEFT_CLAMP, x)))
    left = Signal(signed(len(xc) + p.max_left_shift))
    m.d.comb += left.eq(xc << k)

    # floor: arithmetic shift.
    q = Signal(signed(xw))
    m.d.comb += q.eq(x >> s)
    # nearest_even: compare the remainder with half; a tie goes to the even quotient.
    rem = Signal(signed(xw + 2))
    half = Signal(unsigned(p.max_shift + 1))
    m.d.comb += [rem.eq(x - (q << s)), half.eq((Const(1, p.max_shift + 2) << s) >> 1)]
    tie = Signal()
    up = Signal()
    m.d.comb += [tie.eq((s > 0) & (rem == half)),
                 up.eq((s > 0) & ((rem > half) | (tie & q[0])))]
    nearest = Signal(signed(xw + 1))
    m.d.comb += nearest.eq(q + up)
    # stochastic: r = H mod 2**s for s <= 32, H << (s - 32) beyond (golden rounding_offsets).
    r = Signal(unsigned(max(32, p.max_shift)))
    if p.max_shift <= 32:
        m.d.comb += r.eq(h & ((Const(1, 33) << s) - 1))
    else:
        m.d.comb += r.eq(Mux(s <= 32, h & ((Const(1, 33) << s) - 1),
                             h << (s - 32).as_unsigned()))
    sto = Signal(signed(max(xw, len(r) + 1) + 1))
    m.d.comb += sto.eq((x + r) >> s)

    y = Signal(signed(max(len(left), len(sto), len(nearest))))
    with m.If(p.shift <= 0):
        m.d.comb += y.eq(left)
    with m.Elif(p.mode == NEAREST_EVEN):
        m.d.comb += y.eq(nearest)
    with m.Elif(p.mode == STOCHASTIC):
        m.d.comb += y.eq(sto)
    with m.Else():
        m.d.comb += y.eq(q)

    # Saturation: the activation's bounds (if any) narrow the format's range; an event is
    # a value the activation's own clamp leaves outside the format (decisions.md).
    lo = Mux(p.lo_on, p.act_lo, p.fmt_min)
    hi = Mux(p.hi_on, p.act_hi, p.fmt_max)
    ya = Signal.like(y)
    m.d.comb += ya.eq(Mux(p.lo_on & (y < p.act_lo), p.act_lo,
                          Mux(p.hi_on & (y > p.act_hi), p.act_hi, y)))
    out = Signal(requant_layout(p.out_width))
    m.d.comb += [
        out.value.eq(Mux(y < lo, lo, Mux(y > hi, hi, y))),
        out.saturated.eq((ya < p.fmt_min) | (ya > p.fmt_max)),
        out.tie_up.eq((p.mode == NEAREST_EVEN) & tie & q[0]),
        out.tie_down.eq((p.mode == NEAREST_EVEN) & tie & ~q[0] & (rem != 0)),
        out.sr_up.eq((p.mode == STOCHASTIC) & (s > 0) & (sto != q)),
        out.sr_down.eq((p.mode == STOCHASTIC) & (s > 0) & (sto == q) & (rem != 0)),
        out.sat_hi.eq(out.saturated & (ya > p.fmt_max)),
        out.sat_lo.eq(out.saturated & (ya < p.fmt_min)),
        out.act_clamp.eq(~out.saturated & (y < lo)),
        out.left.eq((p.shift < 0) & ~out.saturated & (y != 0)),
    ]
    return out


class IdentityRounds(wiring.Component):
    """A stand-in for :class:`rtl.srgen.SRRounds` with its contract (``h`` is a function of
    the index presented ``latency`` enabled cycles earlier) and the identity as that
    function, so that a lane's stochastic offset ``r = h mod 2**s`` is a free input (the
    element's index).  The lane's datapath does not depend on which function the generator
    computes; :class:`rtl.srgen.SRRounds` itself is proven to compute ``H`` separately."""

    keys: In(srgen.ROUNDS * srgen.WORD)
    index: In(srgen.INDEX_BITS)
    enable: In(1)
    h: Out(32)

    def __init__(self, latency):
        self.latency = latency
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        value = self.index
        for j in range(self.latency):
            reg = Signal(32, name=f"h{j}")
            with m.If(self.enable):
                m.d.sync += reg.eq(value)
            value = reg
        m.d.comb += self.h.eq(value)
        return m


def with_identity_generator(cls):
    """``cls`` (Requantizer or a mutant) with :class:`IdentityRounds` in place of its
    generator: the test hook that makes the stochastic offset a free input."""
    hooked = mutant(cls, "SRRounds(rounds_per_stage=self._rounds_per_stage)",
                    "IdentityRounds(pipeline_stages(self._rounds_per_stage))",
                    names={"IdentityRounds": IdentityRounds}, name=cls.__name__)
    hooked.identity_generator = True
    return hooked


def requant_lane(cls=None, **params):
    """A Requantizer (or mutant ``cls``) with ``params``; a stochastic lane gets the
    generator hook (:func:`with_identity_generator`)."""
    from systolic.rtl.requant import Requantizer
    cls = cls or Requantizer
    if params.get("stochastic", True):
        cls = with_identity_generator(cls)
    return cls(**params)


class RequantHarness(Elaboratable):
    """A Requantizer lane against :func:`requant_reference`, under free stalls.

    Parameters
    ----------
    dut : Requantizer (or a mutant of it)
    modes : tuple of int
        Rounding modes the free configuration ranges over.
    check : str
        ``"spec"``: each output transfer carries the reference's value and event, in
        order (one arbitrary element is tracked through the lane).  ``"stream"``: the output stream rules.  ``"conservation"``: the
        scoreboard's no-duplicate/no-loss checks and the drain (after ``latency`` cycles
        of ``o.ready`` with no input, nothing is in flight).  ``"latency"``: with
        ``o.ready`` always high, the lane takes an input every cycle and each input's
        reference output is valid exactly ``latency`` cycles later (a fixed-latency
        check, provable by k-induction because the pipeline is overwritten in ``latency``
        cycles).  Covers are always present.
    """

    CHECKS = ("spec", "stream", "conservation", "latency")

    def __init__(self, dut, *, modes=(FLOOR, NEAREST_EVEN), check="spec"):
        assert check in self.CHECKS
        assert not dut.stochastic or getattr(dut, "identity_generator", False), \
            "a stochastic lane needs the generator hook: build it with requant_lane()"
        self.dut = dut
        self.modes = modes
        self.check = check

    def elaborate(self, platform):
        m = Module()
        dut = m.submodules.dut = self.dut
        n = dut.latency
        p = RequantParams(m, out_width=dut.out_width, max_shift=dut.max_shift,
                          max_left_shift=dut.max_left_shift)
        p.free(m, self.modes)
        m.d.comb += [getattr(dut.config, name).eq(v) for name, v in p.rtl_config().items()]
        m.d.comb += dut.sr_keys.eq(AnySeq(len(dut.sr_keys)))

        i_xfer = stream_source(m, dut.i, name="i")
        if self.check == "latency":
            m.d.comb += dut.o.ready.eq(1)
            o_xfer = dut.o.valid
        else:
            o_xfer = stream_sink(m, dut.o, rules=self.check == "stream", name="o")

        x = Signal(signed(dut.acc_width + 1))
        m.d.comb += x.eq(dut.i.p.acc + dut.i.p.bias)
        expect = requant_reference(m, x, dut.i.p.index, p)

        if self.check == "latency":
            m.d.comb += Assert(dut.i.ready)
            line = [(Signal(name=f"valid_d{j}"), Signal.like(expect, name=f"expect_d{j}"))
                    for j in range(n)]
            m.d.sync += [line[0][0].eq(i_xfer), line[0][1].eq(expect)]
            m.d.sync += [line[j][k].eq(line[j - 1][k]) for j in range(1, n) for k in (0, 1)]
            valid, head = line[-1]
            m.d.comb += Assert(dut.o.valid == valid)
            with m.If(valid):
                m.d.comb += [Assert(dut.o.p.value == head.value),
                             Assert(dut.o.p.saturated == head.saturated)]
            shown = valid
        else:
            # elements in flight (with the conservation asserts if that is the check)
            board = m.submodules.board = Scoreboard(1, n, checks=self.check == "conservation")
            m.d.comb += [board.push.eq(i_xfer), board.pop.eq(o_xfer)]
            m.d.comb += Cover(board.level == n, "full")
            # Track one arbitrary element: its expected output and how many are ahead of
            # it; it must leave after exactly those, carrying its expected output.  (Every
            # element may be the tracked one, so this checks all of them, in order.)
            pick = Signal()
            m.d.comb += pick.eq(AnySeq(1))
            tracking, tracked_done = Signal(), Signal()
            ahead = Signal(range(n + 1))
            head = Signal.like(expect)
            with m.If(i_xfer & pick & ~tracking & ~tracked_done):
                m.d.sync += [tracking.eq(1), head.eq(expect),
                             ahead.eq(board.level - o_xfer)]
            shown = Signal()
            with m.If(tracking & o_xfer):
                with m.If(ahead == 0):
                    m.d.sync += [tracking.eq(0), tracked_done.eq(1)]
                    m.d.comb += shown.eq(1)
                with m.Else():
                    m.d.sync += ahead.eq(ahead - 1)
            if self.check == "spec":
                with m.If(shown):
                    m.d.comb += [Assert(dut.o.p.value == head.value),
                                 Assert(dut.o.p.saturated == head.saturated)]
            if self.check == "conservation":
                quiet = Signal(range(n + 1))
                with m.If(dut.o.ready & ~dut.i.valid):
                    m.d.sync += quiet.eq(Mux(quiet == n, quiet, quiet + 1))
                with m.Else():
                    m.d.sync += quiet.eq(0)
                m.d.comb += Assert((quiet != n) | (board.level == 0), "drained")

        # Covers: every rounding direction, each saturation kind, a stall.
        stalled_before = Signal()
        m.d.sync += stalled_before.eq(dut.o.valid & ~dut.o.ready)
        covers = {"tie_up": head.tie_up, "tie_down": head.tie_down, "sat_hi": head.sat_hi,
                  "sat_lo": head.sat_lo, "act_clamp": head.act_clamp, "left": head.left}
        if self.check != "latency":
            covers["after_stall"] = stalled_before
        if STOCHASTIC in self.modes:
            covers.update(sr_up=head.sr_up, sr_down=head.sr_down)
        for name, cond in covers.items():
            m.d.comb += Cover(shown & cond, name)
        return m


# -- H (golden/srgen.py) ----------------------------------------------------------------------

_W = srgen.WORD
_MASK = (1 << _W) - 1


def key_schedule_reference(m, seed, layer):
    """golden ``round_keys`` unrolled: a list of ROUNDS 16-bit signals."""
    k = [seed[:_W]]
    l = [seed[_W:2 * _W], layer[:_W], Const(srgen.KEY_CONST, _W)]
    for j in range(srgen.ROUNDS - 1):
        lj, kj = Signal(_W, name=f"ref_l{j + 3}"), Signal(_W, name=f"ref_k{j + 1}")
        m.d.comb += [lj.eq((k[j] + l[j].rotate_right(7))[:_W] ^ Const(j, _W)),
                     kj.eq(k[j].rotate_left(2) ^ lj)]
        l.append(lj)
        k.append(kj)
    return k


def h_reference(m, keys, index, *, prefix="ref"):
    """golden ``H`` unrolled, for round keys ``keys`` (a list of 16-bit values)."""
    x, y = index[_W:2 * _W], index[:_W]
    for j, k in enumerate(keys):
        xn, yn = Signal(_W, name=f"{prefix}_x{j}"), Signal(_W, name=f"{prefix}_y{j}")
        m.d.comb += [xn.eq((x.rotate_right(srgen.ROT_X) + y)[:_W] ^ k),
                     yn.eq(y.rotate_left(srgen.ROT_Y) ^ xn)]
        x, y = xn, yn
    return Cat(y, x)


class KeyScheduleHarness(Elaboratable):
    """SRKeySchedule against :func:`key_schedule_reference`.

    ``start`` is pulsed in the first cycle and, with ``restart_at``, again at that cycle
    (mid-computation for ``restart_at < ROUNDS - 1``); with ``keys=False`` (timing only)
    ``start`` is free on every cycle instead.  ``seed``/``layer`` are free on every cycle.
    (A restart at a free cycle makes the key registers' index symbolic and the solver two
    orders of magnitude slower, so the data check enumerates restart cycles instead.)
    """

    def __init__(self, dut, *, restart_at=None, keys=True):
        self.dut = dut
        self.restart_at = restart_at
        self.keys = keys

    def elaborate(self, platform):
        m = Module()
        dut = m.submodules.dut = self.dut
        m.d.comb += [dut.seed.eq(AnySeq(32)), dut.layer.eq(AnySeq(16))]
        cycle = Signal(range(64))
        m.d.sync += cycle.eq(Mux(cycle == 63, cycle, cycle + 1))
        if not self.keys:
            m.d.comb += dut.start.eq(AnySeq(1))
        elif self.restart_at is None:
            m.d.comb += dut.start.eq(cycle == 0)
        else:
            m.d.comb += dut.start.eq((cycle == 0) | (cycle == self.restart_at))
        seed, layer = Signal(32), Signal(16)
        since = Signal(range(srgen.ROUNDS + 1), init=srgen.ROUNDS)   # cycles since start
        started = Signal()
        with m.If(dut.start):
            m.d.sync += [seed.eq(dut.seed), layer.eq(dut.layer), since.eq(0), started.eq(1)]
        with m.Elif(since != srgen.ROUNDS):
            m.d.sync += since.eq(since + 1)
        m.d.comb += Assert(dut.done == (started & (since >= srgen.ROUNDS - 1)))
        if self.keys:
            keys = key_schedule_reference(m, seed, layer)
            with m.If(dut.done):
                m.d.comb += [Assert(dut.keys[16 * j:16 * (j + 1)] == k)
                             for j, k in enumerate(keys)]
        m.d.comb += Cover(dut.done & (seed != 0) & (layer != 0))
        if not self.keys or (self.restart_at or srgen.ROUNDS) < srgen.ROUNDS - 1:
            restarted = Signal()
            with m.If(dut.start & started & (since < srgen.ROUNDS - 1)):
                m.d.sync += restarted.eq(1)
            m.d.comb += Cover(dut.done & restarted, "restarted mid-schedule")
        return m


class RoundsHarness(Elaboratable):
    """SRRounds against :func:`h_reference`.

    The keys are an arbitrary constant (a layer's keys are held while it runs) and the
    index is free on every cycle.  ``h`` must equal ``H(keys, index)`` of the index
    presented ``latency`` enabled cycles earlier, once ``latency`` enabled cycles have
    passed.  With ``stalls=False`` ``enable`` is always high (the fixed-latency check,
    provable by k-induction); otherwise it is free.

    With a free ``enable`` the solver has to compare the rounds on an index from a
    symbolic cycle and does not finish, so the stall check runs on a *transport
    abstraction* (``abstract=True``): :func:`rounds_transport` replaces each round's
    arithmetic by the identity and leaves every register and its enable as they are, and
    ``h`` must then be the index presented ``latency`` enabled cycles earlier.  Together:
    the rounds compute ``H`` (no stalls) and the pipeline moves exactly with ``enable``.
    """

    def __init__(self, dut, *, stalls=True, abstract=False):
        self.dut = dut
        self.stalls = stalls
        self.abstract = abstract

    def elaborate(self, platform):
        m = Module()
        dut = m.submodules.dut = self.dut
        n = dut.latency
        enable = Signal()
        m.d.comb += [enable.eq(AnySeq(1) if self.stalls else 1), dut.enable.eq(enable),
                     dut.keys.eq(AnyConst(len(dut.keys))), dut.index.eq(AnySeq(32))]
        line = [Signal(32, name=f"index_d{j}") for j in range(n)]
        filled = Signal(range(n + 1))
        with m.If(enable):
            m.d.sync += [line[0].eq(dut.index)] + [line[j].eq(line[j - 1])
                                                   for j in range(1, n)]
            m.d.sync += filled.eq(Mux(filled == n, n, filled + 1))
        if self.abstract:
            want = line[-1]
        else:
            keys = [dut.keys[16 * j:16 * (j + 1)] for j in range(srgen.ROUNDS)]
            want = h_reference(m, keys, line[-1])
        with m.If(filled == n):
            m.d.comb += Assert(dut.h == want)
        stalled = Signal()
        with m.If(~enable & (filled != 0)):
            m.d.sync += stalled.eq(1)
        m.d.comb += Cover((filled == n) & (dut.h != 0) & (stalled if self.stalls else 1))
        return m


def rounds_transport(cls):
    """``cls`` (SRRounds or a mutant) with each round's arithmetic replaced by the
    identity: the same registers, enables and wiring between rounds."""
    return mutant(cls, "Cat(*speck_round(x, y, self.keys[_W * j:_W * (j + 1)]))",
                  "Cat(x, y)", name=f"Transport{cls.__name__}")


class AccumulatorHarness(Elaboratable):
    """An output-stationary PE (a one-row column: ``drain_start = done``) with its
    accumulator sized by :func:`golden.accumulator.accumulator_width` for reductions of
    at most ``reduction`` products: every finished sum equals the exact mathematical sum
    of its products (no wrap), whatever the operands (the extremes included) and the
    enable pattern.

    The harness sums exactly in 32 bits as beats are sampled (``en & a_in.valid``) and
    expects the sum of a reduction at the PE's ``done`` two enabled edges after its
    ``last`` beat (the PE's documented timing), then on ``drain_out`` after that edge.
    """

    def __init__(self, dut, *, reduction):
        self.dut = dut
        self.reduction = reduction

    def elaborate(self, platform):
        m = Module()
        dut = m.submodules.dut = self.dut
        K = self.reduction
        en = Signal()
        m.d.comb += [en.eq(AnySeq(1)), dut.en.eq(en),
                     Value.cast(dut.a_in).eq(AnySeq(len(Value.cast(dut.a_in)))),
                     dut.b_in.eq(AnySeq(len(dut.b_in))),
                     dut.drain_start.eq(dut.done), dut.drain_in.valid.eq(0)]
        beat = Signal()
        m.d.comb += beat.eq(en & dut.a_in.valid)
        count = Signal(range(K + 1))       # beats of the current reduction so far
        m.d.comb += Assume(~beat | (count < K - 1) | dut.a_in.last)
        total = Signal(signed(32))
        nxt = Signal(signed(32))
        m.d.comb += nxt.eq(Mux(count == 0, 0, total) + dut.a_in.value * dut.b_in)
        # delay line of finished reductions, advancing with en (the PE's stages 2 and 3)
        fin = [(Signal(name=f"fin{j}"), Signal(signed(32), name=f"fin_sum{j}"))
               for j in range(2)]
        with m.If(en):
            m.d.sync += [fin[0][0].eq(beat & dut.a_in.last), fin[0][1].eq(nxt),
                         fin[1][0].eq(fin[0][0]), fin[1][1].eq(fin[0][1])]
        with m.If(beat):
            m.d.sync += [total.eq(nxt), count.eq(Mux(dut.a_in.last, 0, count + 1))]
        m.d.comb += Assert(dut.done == fin[1][0])
        expect = Signal(signed(32))
        with m.If(en & dut.done):
            m.d.sync += expect.eq(fin[1][1])
        with m.If(dut.drain_out.valid):
            m.d.comb += Assert(dut.drain_out.value == expect)
        wi, ww = dut.in_width, dut.weight_width
        top = K << (wi + ww - 2)                       # K products of the two minimums
        bottom = -K * (1 << (wi - 1)) * ((1 << (ww - 1)) - 1)
        m.d.comb += [Cover(dut.drain_out.valid & (expect == top), "largest sum"),
                     Cover(dut.drain_out.valid & (expect == bottom), "smallest sum")]
        return m


def expect(harness, mode, depth, status, workdir, **kwargs):
    """Run :func:`run_formal` and assert its status (with the log tail and trace on
    failure); a ``FAIL`` must come with a counterexample trace."""
    result = run_formal(harness, mode=mode, depth=depth, workdir=workdir, **kwargs)
    assert result.status == status, f"expected {status}\n{result.describe()}"
    if status == "FAIL" and mode != "cover":
        assert result.trace is not None and result.trace.is_file(), result.describe()
    return result


class StreamRulesHarness(Elaboratable):
    """The stream rules on every stream port of a unit (DESIGN.md section 5).

    Every ``In`` stream is driven by free inputs that obey the rules (assumed); every
    ``Out`` stream has a free ``ready`` and the rules asserted on it; every other input is
    an arbitrary constant (configuration is held while a layer runs), restricted by
    ``assume(m, dut)`` if given.  Covers: a transfer on every output stream after it was
    stalled.
    """

    def __init__(self, dut, *, assume=None):
        self.dut = dut
        self.assume = assume

    def elaborate(self, platform):
        m = Module()
        dut = m.submodules.dut = self.dut
        for name, member in dut.signature.members.items():
            port = getattr(dut, name)
            if member.is_signature and isinstance(member.signature, stream.Signature):
                if member.flow == wiring.In:
                    stream_source(m, port, name=name)
                else:
                    transfer = stream_sink(m, port, name=name)
                    stalled = Signal(name=f"{name}_was_stalled")
                    with m.If(port.valid & ~port.ready):
                        m.d.sync += stalled.eq(1)
                    m.d.comb += Cover(stalled & transfer, f"{name} transfer after a stall")
            elif member.is_port and member.flow == wiring.In:
                m.d.comb += Value.cast(port).eq(AnyConst(len(Value.cast(port))))
            elif member.is_signature:
                raise NotImplementedError(f"member {name}: {member.signature!r}")
        if self.assume is not None:
            self.assume(m, dut)
        return m


class ArrayConservationHarness(Elaboratable):
    """SystolicArray: no output beat is invented, duplicated or lost.

    Output-stationary, each accepted tile (its ``last`` beat) owes ``rows`` output beats;
    weight-stationary, each accepted activation beat owes one.  Asserted: outputs never
    exceed what is owed (the scoreboard), and after ``drain`` consecutive cycles with
    ``o.ready`` high and no input offered nothing is owed any more (nothing stuck or lost).
    Inputs (and weight blocks) are free under the stream rules, ``o.ready`` is free.
    """

    def __init__(self, dut):
        self.dut = dut

    def elaborate(self, platform):
        m = Module()
        dut = m.submodules.dut = self.dut
        R, C = dut.rows, dut.cols
        i_xfer = stream_source(m, dut.i, name="i")
        if dut.dataflow == "ws":
            stream_source(m, dut.w, name="w")
        o_xfer = stream_sink(m, dut.o, rules=False, name="o")
        owed_per_beat = R if dut.dataflow == "os" else 1
        capacity = 4 * (R + C + 2) * owed_per_beat
        board = m.submodules.board = Scoreboard(1, capacity)
        counts = i_xfer & (dut.i.p.last if dut.dataflow == "os" else 1)
        # the scoreboard takes one push per cycle: an OS tile owes R, pushed over R cycles
        owed_new = Signal(range(R + 1))
        backlog = Signal(range(capacity + 1))
        m.d.comb += [board.pop.eq(o_xfer),
                     board.push.eq((backlog != 0) | counts)]
        m.d.sync += backlog.eq(backlog + Mux(counts, owed_per_beat, 0) - board.push)
        drain = dut.latency + R + 1
        quiet = Signal(range(drain + 1))
        with m.If(dut.o.ready & ~dut.i.valid):
            m.d.sync += quiet.eq(Mux(quiet == drain, quiet, quiet + 1))
        with m.Else():
            m.d.sync += quiet.eq(0)
        m.d.comb += Assert((quiet != drain) | ((board.level == 0) & (backlog == 0)),
                           "drained")
        m.d.comb += Cover(o_xfer & (board.level > owed_per_beat), "two results in flight")
        return m
