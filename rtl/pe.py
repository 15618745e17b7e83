"""Processing elements of the systolic array: output-stationary and weight-stationary.

A processing element (PE) is one cell of the lock-step grid in :mod:`.array`: every
register in it, its multiplier's included, advances only when ``en`` (the array's global
advance) is high, so a stalled array freezes whole and resumes without loss.  Neighbour
links are plain registered signals, not streams: a ready signal threaded through the grid
would be a combinational path across every PE, while a shared enable keeps each PE's
boundary registered (the Fmax goal) and costs one clock-enable net.

Both PEs have three pipeline stages, counted in enabled edges from the edge at which the
PE samples its inputs:

1. operands registered (forwarded to the neighbours, and the multiplier's input register);
2. product registered (:class:`~.mac.Multiplier`, latency 2);
3. accumulator (output-stationary) or partial sum (weight-stationary) registered.

Each PE multiplies once per enabled cycle: one MAC per PE per cycle while data flows.
"""

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from systolic.golden.errors import ConstraintError

from ._params import check_int
from .mac import (MULTIPLIERS, Multiplier, _choice, _operand_width,
                  check_multiplier)

__all__ = ["PE_MULTIPLIERS", "OutputStationaryPE", "BroadcastPE", "WeightStationaryPE",
           "os_operand_layout", "ws_operand_layout", "tagged_layout"]

#: ``multiplier`` values a PE takes: a kind of :mod:`.mac`, or ``"external"`` (the PE
#: exposes ``mul_a``/``mul_b``/``mul_p`` so that the array can pack two PEs' products into
#: one SB_MAC16).
PE_MULTIPLIERS = MULTIPLIERS + ("external",)


def os_operand_layout(in_width):
    """Layout of the output-stationary operand flowing from the left: the value of
    ``A``, whether the beat is valid, and whether it ends a reduction."""
    return data.StructLayout({"value": signed(in_width), "valid": 1, "last": 1})


def ws_operand_layout(in_width):
    """Layout of the weight-stationary activation flowing from the left: the value,
    whether the beat is valid, and whether it is the first beat of a new weight block."""
    return data.StructLayout({"value": signed(in_width), "valid": 1, "first": 1})


def tagged_layout(shape):
    """A value and a valid tag."""
    return data.StructLayout({"value": shape, "valid": 1})


def _check_pe(in_width, weight_width, acc_width, multiplier):
    _operand_width("Input width", in_width)
    _operand_width("Weight width", weight_width)
    check_int("Accumulator width", acc_width)
    _choice("Multiplier", multiplier, PE_MULTIPLIERS)
    if multiplier != "external":
        check_multiplier(multiplier, in_width, weight_width, names=("Input", "Weight"))
    if acc_width < in_width + weight_width:
        raise ConstraintError(
            f"Accumulator width {acc_width} cannot hold a {in_width}-bit x "
            f"{weight_width}-bit product, which needs {in_width + weight_width} bits")


def _multiplier_members(in_width, weight_width, multiplier):
    if multiplier != "external":
        return {}
    return {"mul_a": Out(signed(in_width)), "mul_b": Out(signed(weight_width)),
            "mul_p": In(signed(in_width + weight_width))}


class _PE(wiring.Component):
    def __init__(self, *, in_width, weight_width, acc_width, multiplier, members):
        _check_pe(in_width, weight_width, acc_width, multiplier)
        self._in_width = in_width
        self._weight_width = weight_width
        self._acc_width = acc_width
        self._multiplier = multiplier
        super().__init__({**members,
                          **_multiplier_members(in_width, weight_width, multiplier)})

    in_width = property(lambda self: self._in_width)
    weight_width = property(lambda self: self._weight_width)
    acc_width = property(lambda self: self._acc_width)
    multiplier = property(lambda self: self._multiplier)

    #: Enabled edges from sampling the inputs to the stage-3 register (accumulator or
    #: partial sum) holding the result.
    latency = 3

    def _product(self, m, a, b):
        """Connect the operands to the multiplier; return the product (stage 2)."""
        if self._multiplier == "external":
            m.d.comb += [self.mul_a.eq(a), self.mul_b.eq(b)]
            return self.mul_p
        mul = m.submodules.mul = Multiplier(kind=self._multiplier, a_width=self._in_width,
                                            b_width=self._weight_width)
        m.d.comb += [mul.en.eq(self.en), mul.a[0].eq(a), mul.b[0].eq(b)]
        return mul.p[0]


class OutputStationaryPE(_PE):
    """Output-stationary PE: accumulates ``sum_k a[k] * b[k]`` over the valid beats of a
    reduction and hands the sum to its column's drain chain.

    Parameters
    ----------
    in_width : int
        Width of the signed operand ``a`` (activations), 2..16.
    weight_width : int
        Width of the signed operand ``b`` (weights), 2..16.
    acc_width : int
        Width of the signed accumulator; at least ``in_width + weight_width``.  The array
        sizes it so that no reduction it accepts can overflow.
    multiplier : str
        One of :data:`PE_MULTIPLIERS`.
    product_register : bool
        One more register between the multiplier and the accumulator (latency 4): for
        the ECP5, whose DSP blocks can sit far from their accumulators.

    Members
    -------
    en : In(1)
        Global advance: every register of the PE updates only when it is high.
    a_in : In(os_operand_layout(in_width))
        Operand from the left: ``value``, ``valid`` (the beat counts) and ``last`` (the
        beat ends the reduction).
    a_out : Out(os_operand_layout(in_width))
        ``a_in`` registered, to the right neighbour.
    b_in : In(signed(weight_width))
        Operand from above (its beat's validity travels with ``a``).
    b_out : Out(signed(weight_width))
        ``b_in`` registered, to the neighbour below.
    done : Out(1)
        A reduction completes at this edge: the slot loads the finished sum.  The array
        drives every ``drain_start`` of a column from ``done`` of its bottom PE.
    drain_start : In(1)
        The column's drain begins at this edge: ``drain_out.valid`` is set.
    drain_in : In(tagged_layout(signed(acc_width)))
        The slot of the PE above (zero for the top row).
    drain_out : Out(tagged_layout(signed(acc_width)))
        This PE's slot: the finished sum, or during a drain the value shifted down from
        above; ``valid`` marks a value being drained (at the bottom row: the column's
        output is valid).
    mul_a, mul_b, mul_p : Out, Out, In
        Only with ``multiplier="external"``: the operands for an outside
        :class:`~.mac.Multiplier` lane and its product, 2 enabled edges later.

    Raises
    ------
    TypeError
        A width that is not a positive integer, or a multiplier that is not a string.
    ValueError
        A width outside 2..16, an unknown multiplier, or a width over 8 with
        ``"sb_mac16"``.
    ConstraintError
        ``acc_width < in_width + weight_width``.

    Timing: the product of operands sampled at edge ``t`` is accumulated at edge ``t + 2``
    (``latency = 3`` counts the sampling edge); a beat with ``last`` completes the sum
    (``done``) at that edge.  The drain shifts the slot chain down one row per enabled
    edge for ``R`` edges after ``drain_start``; a slot loads its own sum (which has
    priority) only after the previous drain has passed it, which holds when consecutive
    ``last`` beats are at least ``R`` enabled edges apart (the array enforces it).
    Throughput: one MAC per enabled cycle.
    """

    def __init__(self, *, in_width, weight_width, acc_width, multiplier="inferred",
                 product_register=False):
        _operand_width("Input width", in_width)
        _operand_width("Weight width", weight_width)
        check_int("Accumulator width", acc_width)
        if not isinstance(product_register, bool):
            raise TypeError(f"Product register must be a bool, not {product_register!r}")
        self._product_register = product_register
        slot = tagged_layout(signed(acc_width))
        super().__init__(in_width=in_width, weight_width=weight_width, acc_width=acc_width,
                         multiplier=multiplier, members={
                             "en": In(1),
                             "a_in": In(os_operand_layout(in_width)),
                             "a_out": Out(os_operand_layout(in_width)),
                             "b_in": In(signed(weight_width)),
                             "b_out": Out(signed(weight_width)),
                             "done": Out(1),
                             "drain_start": In(1),
                             "drain_in": In(slot),
                             "drain_out": Out(slot),
                         })

    product_register = property(lambda self: self._product_register)

    @property
    def latency(self):
        """Enabled edges from sampling the inputs to the accumulator: 3, or 4 with the
        product register."""
        return 3 + int(self._product_register)

    def elaborate(self, platform):
        m = Module()
        # Values have no reset, flags do: on the ECP5 the accelerator's reset reached
        # 12,085 flip-flops (ULX3S-85F, 16x8), a route to nearly every slice's LSR input
        # and a split of slices by control set, for registers whose contents nothing
        # reads before writing them.
        a_value = Signal(signed(self._in_width), reset_less=True)
        a_valid, a_last = Signal(), Signal()
        b_r = Signal.like(self.b_out, reset_less=True)
        valid2 = Signal()                 # stage-2 flags, aligned with the product
        last2 = Signal()
        fresh = Signal(init=1)            # the next valid product starts a new sum
        acc = Signal(signed(self._acc_width), reset_less=True)
        slot_value = Signal(signed(self._acc_width), reset_less=True)
        slot_valid = Signal()

        product = self._product(m, self.a_in.value, self.b_in)
        if self._product_register:
            # One more register between the multiplier and the accumulator, the flags
            # with it: on the ECP5 the DSP blocks are spread over the die, and the route
            # from a MULT18X18D's output to its PE's accumulator was 6.7 ns of an 11.2 ns
            # path (ULX3S-85F, 16x8).
            p_q = Signal.like(product, name="product_q", reset_less=True)
            v_q, l_q = Signal(name="valid_q"), Signal(name="last_q")
            with m.If(self.en):
                m.d.sync += [p_q.eq(product), v_q.eq(valid2), l_q.eq(last2)]
            product, use_valid, use_last = p_q, v_q, l_q
        else:
            use_valid, use_last = valid2, last2
        total = Signal(signed(self._acc_width))
        m.d.comb += [
            total.eq(Mux(fresh, product, acc + product)),
            self.done.eq(use_valid & use_last),
            self.a_out.value.eq(a_value), self.a_out.valid.eq(a_valid),
            self.a_out.last.eq(a_last), self.b_out.eq(b_r),
            self.drain_out.value.eq(slot_value), self.drain_out.valid.eq(slot_valid),
        ]
        with m.If(self.en):
            m.d.sync += [a_value.eq(self.a_in.value), a_valid.eq(self.a_in.valid),
                         a_last.eq(self.a_in.last), b_r.eq(self.b_in),
                         valid2.eq(a_valid), last2.eq(a_last)]
            with m.If(use_valid):
                m.d.sync += [acc.eq(total), fresh.eq(use_last)]
            # The slot: own sum on completion; otherwise shift down while draining.
            with m.If(self.done):
                m.d.sync += slot_value.eq(total)
            with m.Elif(slot_valid):
                m.d.sync += slot_value.eq(self.drain_in.value)
            m.d.sync += slot_valid.eq(self.drain_start | self.drain_in.valid)
        return m


class BroadcastPE(_PE):
    """Output-stationary PE of a broadcast array: the operands reach every PE of their row
    (``a``) or column (``b``) in the same cycle, so the PE forwards nothing and the pipeline
    control (which beats count, where a reduction starts and ends) is the array's, shared.

    Parameters
    ----------
    in_width, weight_width, acc_width, multiplier
        As :class:`OutputStationaryPE`.

    Members
    -------
    en : In(1)
        Global advance.
    a : In(signed(in_width)); b : In(signed(weight_width))
        The operands, sampled (stage 1: the multiplier's input register) at each enabled
        edge.
    accumulate : In(1)
        The product at this edge belongs to a valid beat (stage 2's valid).
    fresh : In(1)
        That product starts a new sum.
    load : In(1)
        That product ends the reduction: the slot takes the finished sum.
    drain_in : In(signed(acc_width))
        The slot of the PE below it in the drain chain (any value for the last row).
    drain_out : Out(signed(acc_width))
        This PE's slot: the finished sum, or the value shifted from ``drain_in`` at every
        other enabled edge (the array tracks which slots hold results).
    mul_a, mul_b, mul_p : Out, Out, In
        Only with ``multiplier="external"``.

    Raises
    ------
    As :class:`OutputStationaryPE`.

    Timing: the product of operands sampled at edge ``t`` is accumulated at edge ``t + 2``
    (``latency = 3``), and with ``load`` the sum is in the slot after that edge.
    Throughput: one MAC per enabled cycle.  Per PE this is the accumulator and the slot
    only: no operand, tag or skew registers (the area of a small iCE40 array).
    """

    def __init__(self, *, in_width, weight_width, acc_width, multiplier="inferred"):
        _operand_width("Input width", in_width)
        _operand_width("Weight width", weight_width)
        check_int("Accumulator width", acc_width)
        super().__init__(in_width=in_width, weight_width=weight_width, acc_width=acc_width,
                         multiplier=multiplier, members={
                             "en": In(1),
                             "a": In(signed(in_width)),
                             "b": In(signed(weight_width)),
                             "accumulate": In(1),
                             "fresh": In(1),
                             "load": In(1),
                             "drain_in": In(signed(acc_width)),
                             "drain_out": Out(signed(acc_width)),
                         })

    def elaborate(self, platform):
        m = Module()
        acc = Signal(signed(self._acc_width), reset_less=True)
        slot = Signal(signed(self._acc_width), reset_less=True)
        product = self._product(m, self.a, self.b)
        total = Signal(signed(self._acc_width))
        m.d.comb += [total.eq(Mux(self.fresh, product, acc + product)),
                     self.drain_out.eq(slot)]
        with m.If(self.en):
            with m.If(self.accumulate):
                m.d.sync += acc.eq(total)
            m.d.sync += slot.eq(Mux(self.load, total, self.drain_in))
        return m


class WeightStationaryPE(_PE):
    """Weight-stationary PE: holds one weight, adds ``x * w`` to the partial sum passing
    down its column, and double-buffers the next weight.

    Parameters
    ----------
    in_width, weight_width, acc_width, multiplier
        As :class:`OutputStationaryPE`.

    Members
    -------
    en : In(1)
        Global advance.
    x_in : In(ws_operand_layout(in_width))
        Activation from the left: ``value``, ``valid``, and ``first`` (from this beat on,
        use the weight in the shadow register).
    x_out : Out(ws_operand_layout(in_width))
        ``x_in`` registered, to the right neighbour.
    psum_in : In(signed(acc_width))
        Partial sum from the PE above (zero for the top row).
    psum_out : Out(tagged_layout(signed(acc_width)))
        ``psum_in + x * w`` and the validity of its beat, to the PE below.
    w_in : In(signed(weight_width))
        Next weight, from the shadow register of the PE below (the bottom row's comes
        from the weight stream).
    w_shift : In(1)
        Shift the shadow chain up at this enabled edge.
    w_out : Out(signed(weight_width))
        This PE's shadow register, to the PE above.
    mul_a, mul_b, mul_p : Out, Out, In
        Only with ``multiplier="external"``.

    Raises
    ------
    As :class:`OutputStationaryPE`.

    Timing: ``x`` sampled at edge ``t`` meets ``psum_in`` at edge ``t + 2`` and leaves in
    ``psum_out`` after it (``latency = 3``); a ``first`` beat switches the active weight
    at the edge it is sampled, so it and every later beat use the new weight.  The shadow
    register must not shift between the ``first`` beat entering the array and reaching
    this PE (the array's interlock).  Throughput: one MAC per enabled cycle.
    """

    def __init__(self, *, in_width, weight_width, acc_width, multiplier="inferred"):
        _operand_width("Input width", in_width)
        _operand_width("Weight width", weight_width)
        check_int("Accumulator width", acc_width)
        super().__init__(in_width=in_width, weight_width=weight_width, acc_width=acc_width,
                         multiplier=multiplier, members={
                             "en": In(1),
                             "x_in": In(ws_operand_layout(in_width)),
                             "x_out": Out(ws_operand_layout(in_width)),
                             "psum_in": In(signed(acc_width)),
                             "psum_out": Out(tagged_layout(signed(acc_width))),
                             "w_in": In(signed(weight_width)),
                             "w_shift": In(1),
                             "w_out": Out(signed(weight_width)),
                         })

    def elaborate(self, platform):
        m = Module()
        x_r = Signal.like(self.x_out)
        valid2 = Signal()
        shadow = Signal(signed(self._weight_width), reset_less=True)
        active = Signal(signed(self._weight_width))
        psum = Signal.like(self.psum_out)

        # The weight this edge's operand is multiplied by: a `first` beat uses the shadow.
        weight = Mux(self.x_in.valid & self.x_in.first, shadow, active)
        product = self._product(m, self.x_in.value, weight)
        m.d.comb += [self.x_out.eq(x_r), self.w_out.eq(shadow), self.psum_out.eq(psum)]
        with m.If(self.en):
            m.d.sync += [x_r.eq(self.x_in), active.eq(weight), valid2.eq(x_r.valid),
                         psum.value.eq(self.psum_in + product), psum.valid.eq(valid2)]
            with m.If(self.w_shift):
                m.d.sync += shadow.eq(self.w_in)
        return m
