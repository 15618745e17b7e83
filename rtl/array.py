"""The systolic MAC array: R x C processing elements, output- or weight-stationary.

:class:`SystolicArray` is the unit the accelerator uses: whole vectors in and out
through streams, with the skew and deskew buffers inside.  The grids
(:class:`OutputStationaryGrid`, :class:`WeightStationaryGrid`) are the lock-step PE
meshes it wraps.

One global advance drives every register of the skew buffers, the grid and the deskew
buffer: ``advance = ~o.valid | o.ready``.  A stalled output freezes the whole pipeline
(nothing is lost or repeated); an idle input only inserts a bubble (a beat whose
``valid`` tags are clear), which flows through and is dropped at the output.  ``o.valid``
is a register output, so it never waits on ``o.ready``; ``i.ready`` is the advance,
gated by the tile rules below.
"""

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from systolic.golden.accumulator import accumulator_width
from systolic.golden.errors import ConstraintError

from ._params import check_int
from .mac import (MULTIPLIERS, Multiplier, _choice, _operand_width,
                  check_multiplier)
from .pe import (BroadcastPE, OutputStationaryPE, WeightStationaryPE, _check_pe,
                 tagged_layout)
from .skew import Deskew, Skew, _any

__all__ = ["DATAFLOWS", "INTERCONNECTS", "MAX_SIZE", "DEFAULT_MAX_REDUCTION",
           "SystolicArray", "OutputStationaryGrid", "BroadcastGrid", "WeightStationaryGrid"]

#: Dataflows: output-stationary, weight-stationary.
DATAFLOWS = ("os", "ws")
#: How operands reach the PEs: ``"systolic"`` (neighbour to neighbour, one register per
#: hop, with skew and deskew buffers) or ``"broadcast"`` (output-stationary only: to a
#: whole row or column in the same cycle, see :class:`BroadcastGrid`).
INTERCONNECTS = ("systolic", "broadcast")
#: Largest number of rows or columns.
MAX_SIZE = 32
#: Longest output-stationary reduction the default accumulator is sized for (the longest
#: reduction of the reference networks is 400: lenet5's first dense layer).
DEFAULT_MAX_REDUCTION = 1024


def _size(name, value):
    check_int(name, value)
    if value > MAX_SIZE:
        raise ValueError(f"{name} must be at most {MAX_SIZE}, not {value}")
    return value


def os_lane_layout(in_width):
    """Lane of the output-stationary A skew: a value of A and the reduction's ``last``."""
    return data.StructLayout({"value": signed(in_width), "last": 1})


def ws_lane_layout(in_width):
    """Lane of the weight-stationary activation skew: a value and the block's ``first``."""
    return data.StructLayout({"value": signed(in_width), "first": 1})


def _check_grid(rows, cols, in_width, weight_width, acc_width, multiplier):
    _size("Array rows", rows)
    _size("Array columns", cols)
    _choice("Multiplier", multiplier, MULTIPLIERS)   # "external" is a PE-only choice
    _check_pe(in_width, weight_width, acc_width, multiplier)


class _Grid(wiring.Component):
    def __init__(self, *, rows, cols, in_width, weight_width, acc_width, multiplier,
                 members):
        self._rows, self._cols = rows, cols
        self._in_width, self._weight_width = in_width, weight_width
        self._acc_width, self._multiplier = acc_width, multiplier
        self._pe_kwargs = dict(in_width=in_width, weight_width=weight_width,
                               acc_width=acc_width,
                               multiplier="external" if multiplier == "sb_mac16"
                               else multiplier)
        super().__init__(members)

    rows = property(lambda self: self._rows)
    cols = property(lambda self: self._cols)
    in_width = property(lambda self: self._in_width)
    weight_width = property(lambda self: self._weight_width)
    acc_width = property(lambda self: self._acc_width)
    multiplier = property(lambda self: self._multiplier)

    def _pes(self, m, cls):
        pes = [[cls(**self._pe_kwargs) for _ in range(self._cols)] for _ in range(self._rows)]
        for r in range(self._rows):
            for c in range(self._cols):
                pe = m.submodules[f"pe_{r}_{c}"] = pes[r][c]
                m.d.comb += pe.en.eq(self.en)
        if self._multiplier == "sb_mac16":
            # Two PEs per SB_MAC16: lanes 2k and 2k+1 of one bank.
            flat = [pe for row in pes for pe in row]
            bank = m.submodules.dsp = Multiplier(kind="sb_mac16", a_width=self._in_width,
                                                 b_width=self._weight_width,
                                                 lanes=len(flat))
            m.d.comb += bank.en.eq(self.en)
            for k, pe in enumerate(flat):
                m.d.comb += [bank.a[k].eq(pe.mul_a), bank.b[k].eq(pe.mul_b),
                             pe.mul_p.eq(bank.p[k])]
        return pes


class OutputStationaryGrid(_Grid):
    """R x C output-stationary PEs with their column drain chains (lock-step, no skew).

    Parameters
    ----------
    rows, cols : int
        1..32.
    in_width, weight_width, acc_width, multiplier, product_register
        As :class:`SystolicArray`; the grid itself only checks that ``acc_width`` holds
        one product (the array sizes it for the longest reduction).

    Members
    -------
    en : In(1)
        Global advance.
    a : In(ArrayLayout(tagged_layout(os_lane_layout(in_width)), rows))
        Skewed rows of A: lane ``p`` enters PE row ``p``.
    b : In(ArrayLayout(tagged_layout(signed(weight_width)), cols))
        Skewed columns of B: lane ``j`` enters PE column ``j`` (tags unused: a beat's
        validity travels with A).
    out : Out(ArrayLayout(tagged_layout(signed(acc_width)), cols))
        The bottom slot of each column's drain chain: a staircase of ``rows`` values per
        reduction, bottom PE row first.

    Raises
    ------
    TypeError, ValueError, ConstraintError
        As :class:`SystolicArray` and :class:`~.pe.OutputStationaryPE`.

    Consecutive ``last`` beats must be at least ``rows`` cycles apart (the array holds
    early ones back); latency and throughput as :class:`SystolicArray` without the skew
    and deskew.
    """

    def __init__(self, *, rows, cols, in_width, weight_width, acc_width,
                 multiplier="inferred", product_register=False):
        _check_grid(rows, cols, in_width, weight_width, acc_width, multiplier)
        super().__init__(rows=rows, cols=cols, in_width=in_width, weight_width=weight_width,
                         acc_width=acc_width, multiplier=multiplier, members={
                             "en": In(1),
                             "a": In(data.ArrayLayout(
                                 tagged_layout(os_lane_layout(in_width)), rows)),
                             "b": In(data.ArrayLayout(
                                 tagged_layout(signed(weight_width)), cols)),
                             "out": Out(data.ArrayLayout(
                                 tagged_layout(signed(acc_width)), cols)),
                         })
        self._pe_kwargs["product_register"] = product_register

    def elaborate(self, platform):
        m = Module()
        pes = self._pes(m, OutputStationaryPE)
        R, C = self._rows, self._cols
        for r in range(R):
            for c in range(C):
                pe = pes[r][c]
                if c == 0:
                    lane = self.a[r]
                    m.d.comb += [pe.a_in.value.eq(lane.value.value),
                                 pe.a_in.last.eq(lane.value.last),
                                 pe.a_in.valid.eq(lane.valid)]
                else:
                    m.d.comb += pe.a_in.eq(pes[r][c - 1].a_out)
                if r == 0:
                    m.d.comb += pe.b_in.eq(self.b[c].value)
                else:
                    m.d.comb += [pe.b_in.eq(pes[r - 1][c].b_out),
                                 pe.drain_in.eq(pes[r - 1][c].drain_out)]
                # The column drains once its bottom PE (the last to finish) has finished.
                m.d.comb += pe.drain_start.eq(pes[R - 1][c].done)
        for c in range(C):
            m.d.comb += self.out[c].eq(pes[R - 1][c].drain_out)
        return m


class BroadcastGrid(_Grid):
    """R x C output-stationary PEs fed by broadcast: row ``r``'s operand of ``a`` and column
    ``j``'s of ``b`` reach all their PEs in the same cycle, so there are no skew or
    deskew buffers, no operand registers in the PEs, and one copy of the pipeline control.

    The price is fan-out: each ``a`` value drives ``C`` multiplier inputs and each ``b``
    value ``R``.  That is cheap for the small arrays of an iCE40 UltraPlus (8 x 2: fan-out
    8), where the systolic registers were ~700 of the 5,280 logic cells; large arrays at
    high clocks keep the systolic interconnect.

    Parameters
    ----------
    rows, cols, in_width, weight_width, acc_width, multiplier
        As :class:`OutputStationaryGrid`.

    Members
    -------
    en : In(1)
        Global advance.
    a : In(ArrayLayout(signed(in_width), rows)); b : In(ArrayLayout(signed(weight_width), cols))
        The operands of a beat.
    valid, last : In(1)
        The beat counts; it ends the reduction.
    out : Out(ArrayLayout(signed(acc_width), cols)); out_valid : Out(1)
        The head of the drain: row ``i`` of a finished tile ``i`` enabled edges after its
        first row, row 0 first.

    Timing: a beat sampled at edge ``t`` is accumulated at edge ``t + 2``; a ``last`` beat's
    sums are all in the slots after that edge, and row ``i`` is at ``out`` (``out_valid``)
    after ``i`` more enabled edges.  Consecutive ``last`` beats must be at least ``rows``
    enabled edges apart (:class:`SystolicArray` holds early ones back).
    """

    def __init__(self, *, rows, cols, in_width, weight_width, acc_width,
                 multiplier="inferred"):
        _check_grid(rows, cols, in_width, weight_width, acc_width, multiplier)
        super().__init__(rows=rows, cols=cols, in_width=in_width, weight_width=weight_width,
                         acc_width=acc_width, multiplier=multiplier, members={
                             "en": In(1),
                             "a": In(data.ArrayLayout(signed(in_width), rows)),
                             "b": In(data.ArrayLayout(signed(weight_width), cols)),
                             "valid": In(1),
                             "last": In(1),
                             "out": Out(data.ArrayLayout(signed(acc_width), cols)),
                             "out_valid": Out(1),
                         })

    def elaborate(self, platform):
        m = Module()
        pes = self._pes(m, BroadcastPE)
        R, C = self._rows, self._cols
        valid1, last1, valid2, last2 = Signal(), Signal(), Signal(), Signal()
        fresh = Signal(init=1)
        load = Signal()
        held = Signal(R)                  # which slots of the drain hold a result
        m.d.comb += load.eq(valid2 & last2)
        with m.If(self.en):
            m.d.sync += [valid1.eq(self.valid), last1.eq(self.last),
                         valid2.eq(valid1), last2.eq(last1)]
            with m.If(valid2):
                m.d.sync += fresh.eq(last2)
            m.d.sync += held.eq(Mux(load, (1 << R) - 1, held >> 1))
        for r in range(R):
            for c in range(C):
                pe = pes[r][c]
                m.d.comb += [pe.a.eq(self.a[r]), pe.b.eq(self.b[c]),
                             pe.accumulate.eq(valid2), pe.fresh.eq(fresh), pe.load.eq(load)]
                if r + 1 < R:
                    m.d.comb += pe.drain_in.eq(pes[r + 1][c].drain_out)
        for c in range(C):
            m.d.comb += self.out[c].eq(pes[0][c].drain_out)
        m.d.comb += self.out_valid.eq(held[0])
        return m


class WeightStationaryGrid(_Grid):
    """R x C weight-stationary PEs with their shadow weight chains (lock-step, no skew).

    Parameters
    ----------
    rows, cols, in_width, weight_width, acc_width, multiplier
        As :class:`OutputStationaryGrid`.

    Members
    -------
    en : In(1)
        Global advance.
    x : In(ArrayLayout(tagged_layout(ws_lane_layout(in_width)), rows))
        Skewed activations: lane ``i`` enters PE row ``i``.
    w : In(ArrayLayout(signed(weight_width), cols))
        A row of the next weight block, entering the bottom of the shadow chains.
    w_shift : In(1)
        Shift the shadow chains up by one row (at an enabled edge).
    out : Out(ArrayLayout(tagged_layout(signed(acc_width)), cols))
        Partial sums leaving the bottom row: column ``j`` of ``x @ W``, skewed.

    Raises
    ------
    TypeError, ValueError, ConstraintError
        As :class:`SystolicArray` and :class:`~.pe.WeightStationaryPE`.

    The shadow chains must not shift while a ``first`` beat travels through the grid
    (the array's interlock); latency and throughput as :class:`SystolicArray` without
    the skew and deskew.
    """

    def __init__(self, *, rows, cols, in_width, weight_width, acc_width,
                 multiplier="inferred"):
        _check_grid(rows, cols, in_width, weight_width, acc_width, multiplier)
        super().__init__(rows=rows, cols=cols, in_width=in_width, weight_width=weight_width,
                         acc_width=acc_width, multiplier=multiplier, members={
                             "en": In(1),
                             "x": In(data.ArrayLayout(
                                 tagged_layout(ws_lane_layout(in_width)), rows)),
                             "w": In(data.ArrayLayout(signed(weight_width), cols)),
                             "w_shift": In(1),
                             "out": Out(data.ArrayLayout(
                                 tagged_layout(signed(acc_width)), cols)),
                         })

    def elaborate(self, platform):
        m = Module()
        pes = self._pes(m, WeightStationaryPE)
        R, C = self._rows, self._cols
        for r in range(R):
            for c in range(C):
                pe = pes[r][c]
                if c == 0:
                    lane = self.x[r]
                    m.d.comb += [pe.x_in.value.eq(lane.value.value),
                                 pe.x_in.first.eq(lane.value.first),
                                 pe.x_in.valid.eq(lane.valid)]
                else:
                    m.d.comb += pe.x_in.eq(pes[r][c - 1].x_out)
                if r > 0:
                    m.d.comb += pe.psum_in.eq(pes[r - 1][c].psum_out.value)
                m.d.comb += [pe.w_in.eq(self.w[c] if r == R - 1 else pes[r + 1][c].w_out),
                             pe.w_shift.eq(self.w_shift)]
        for c in range(C):
            m.d.comb += self.out[c].eq(pes[R - 1][c].psum_out)
        return m


class SystolicArray(wiring.Component):
    """An R x C systolic MAC array with skew and deskew buffers, streams in and out.

    Parameters
    ----------
    rows : int
        Number of PE rows ``R``, 1..32.
    cols : int
        Number of PE columns ``C``, 1..32.
    in_width : int
        Width of the signed activations (A, or x), 2..16.
    weight_width : int
        Width of the signed weights (B, or W), 2..16.
    dataflow : str
        ``"os"`` (output-stationary) or ``"ws"`` (weight-stationary).
    multiplier : str
        ``"inferred"``, ``"lut"`` or ``"sb_mac16"`` (:mod:`.mac`); ``"sb_mac16"`` packs
        two PEs per DSP and needs both widths <= 8.
    max_reduction : int or None
        Longest reduction the accumulators must hold exactly: the longest ``K`` of an
        output-stationary tile (default :data:`DEFAULT_MAX_REDUCTION`), or for
        weight-stationary at least ``rows`` (the default; more widens the partial sums
        for accumulation outside the array).
    acc_width : int or None
        Accumulator width; default (and minimum)
        ``accumulator_width(in_width, weight_width, max_reduction)`` (DESIGN.md
        section 2: accumulators can never overflow).
    interconnect : str
        ``"systolic"`` (default: operands hop from PE to PE through skew and deskew
        buffers) or ``"broadcast"`` (output-stationary only, :class:`BroadcastGrid`: each
        operand reaches its whole row or column in the same cycle; latency 3).
    min_reduction : int or None
        Output-stationary only: the shortest ``K`` of any tile the array will be given
        (default 1).  With ``min_reduction >= rows`` consecutive ``last`` beats are
        always at least ``R`` cycles apart, so the logic that holds a too-early ``last``
        beat back is left out and ``i.ready`` follows the output side alone.  A shorter
        tile then breaks the drain: the caller (the compiler knows every reduction of
        its program) must keep the promise.
    product_register : bool
        Output-stationary systolic only: one more register between each PE's multiplier
        and its accumulator (:class:`~.pe.OutputStationaryPE`), one more cycle of
        latency.  For large ECP5 arrays, whose DSP blocks spread over the die.

    Members
    -------
    i : In(stream.Signature(...))
        Output-stationary: ``StructLayout({"a": ArrayLayout(signed(in_width), R),
        "b": ArrayLayout(signed(weight_width), C), "last": 1})``: beat ``k`` of a tile
        carries column ``k`` of A and row ``k`` of B; ``last`` marks the tile's final beat
        (so ``K`` is a run-time count, 1 or more).
        Weight-stationary: ``StructLayout({"a": ArrayLayout(signed(in_width), R),
        "first": 1})``: one activation vector ``x`` per beat; ``first`` switches to the
        weight block loaded last (the beat waits until that block is complete).
    w : In(stream.Signature(ArrayLayout(signed(weight_width), C)))
        Weight-stationary only: a block ``W`` (R x C) as ``R`` beats, row 0 first.  The next
        block loads while the current one computes (double buffering).
    o : Out(stream.Signature(ArrayLayout(signed(acc_width), C)))
        Output-stationary: ``R`` beats per tile, row ``i`` of ``A @ B`` in beat ``i``.
        Weight-stationary: ``x @ W`` for each input beat, in order.

    Raises
    ------
    TypeError
        A size, width, reduction or accumulator width that is not a positive integer; a
        dataflow or multiplier that is not a string.
    ValueError
        A size over 32, a width outside 2..16, an unknown dataflow or multiplier, a width
        over 8 with ``"sb_mac16"``, or a weight-stationary ``max_reduction < rows``.
    ConstraintError
        An ``acc_width`` narrower than ``max_reduction`` products need.

    Notes
    -----
    Timing, in cycles without stalls (``R = rows``, ``C = cols``), systolic (broadcast:
    the same with ``latency = 3``, no skew, hops or deskew).  Latency:
    ``latency = R + C + 3`` cycles from the cycle an input beat is accepted (the last
    beat of an output-stationary tile) to the cycle its first output is valid, one per
    register on the way to column ``j``'s output: ``R`` in the skew (lane ``i``
    has ``i + 1``; the last PE row's lane is the longest), ``j`` hops along the row, 3 PE
    stages, and ``C - j`` in the deskew.

    Output-stationary: one input beat per cycle; a tile's ``R`` result rows leave on
    consecutive cycles starting ``R + C + 3`` cycles after its last beat, while the next
    tile already accumulates (the finished sums wait in per-PE slots and drain down the
    columns).  The drain needs ``last`` beats at least ``R`` cycles apart, so the tile
    period is ``max(K, R)`` cycles (the array holds a too-early ``last`` beat back).
    ``T`` back-to-back tiles take ``(T - 1) * max(K, R) + K + 2R + C + 2`` cycles from
    the cycle the first beat is accepted to the cycle the last row is delivered, both
    included (fill ``R + C + 3``, drain ``R - 1``); utilization ``T*K`` over that, e.g.
    512 / 526 = 97.3 % for ``R = C = 4, K = 64, T = 8``.

    Weight-stationary: one activation vector in and one C-vector out per cycle; ``N``
    beats take ``N + R + C + 3`` cycles.  A block loads in ``R`` beats of ``w``; it may
    begin loading ``R + C - 1`` cycles after the previous block's ``first`` beat (when
    every PE has switched), so blocks of at least ``2R + C - 1`` beats switch with no
    bubble.

    Back-pressure: any pattern of idle input and stalled output; nothing is lost,
    duplicated or reordered.

    Weight-stationary beats before the first ``first`` beat use zero weights.  With
    ``multiplier="sb_mac16"`` on an iCE40, synthesize without yosys's ``-dsp`` (see
    :mod:`.mac`).
    """

    def __init__(self, *, rows, cols, in_width=8, weight_width=8, dataflow="os",
                 multiplier="inferred", max_reduction=None, acc_width=None,
                 interconnect="systolic", product_register=False, min_reduction=None):
        _size("Array rows", rows)
        _size("Array columns", cols)
        _operand_width("Input width", in_width)
        _operand_width("Weight width", weight_width)
        _choice("Dataflow", dataflow, DATAFLOWS)
        check_interconnect(interconnect, dataflow)
        check_product_register(product_register, dataflow, interconnect)
        check_multiplier(multiplier, in_width, weight_width, names=("Input", "Weight"))
        if max_reduction is None:
            max_reduction = DEFAULT_MAX_REDUCTION if dataflow == "os" else rows
        check_int("Maximum reduction", max_reduction)
        if dataflow == "ws" and max_reduction < rows:
            raise ValueError(f"Maximum reduction of a weight-stationary array must be at "
                             f"least its {rows} rows, not {max_reduction}")
        if min_reduction is not None:
            check_int("Minimum reduction", min_reduction)
            if dataflow == "ws":
                raise ValueError("Minimum reduction applies to the output-stationary "
                                 "dataflow only")
            if min_reduction > max_reduction:
                raise ValueError(f"Minimum reduction {min_reduction} is over the maximum "
                                 f"reduction {max_reduction}")
        else:
            min_reduction = 1
        need = accumulator_width(in_width, weight_width, max_reduction)
        if acc_width is None:
            acc_width = need
        check_int("Accumulator width", acc_width)
        if acc_width < need:
            raise ConstraintError(
                f"Accumulator width {acc_width} is too narrow: {in_width}-bit inputs x "
                f"{weight_width}-bit weights over {max_reduction} products need {need} bits")
        self._rows, self._cols = rows, cols
        self._in_width, self._weight_width = in_width, weight_width
        self._dataflow, self._multiplier = dataflow, multiplier
        self._max_reduction, self._acc_width = max_reduction, acc_width
        self._min_reduction = min_reduction
        self._interconnect = interconnect
        self._product_register = product_register

        a = data.ArrayLayout(signed(in_width), rows)
        members = {}
        if dataflow == "os":
            members["i"] = In(stream.Signature(data.StructLayout({
                "a": a, "b": data.ArrayLayout(signed(weight_width), cols), "last": 1})))
        else:
            members["i"] = In(stream.Signature(data.StructLayout({"a": a, "first": 1})))
            members["w"] = In(stream.Signature(data.ArrayLayout(signed(weight_width), cols)))
        members["o"] = Out(stream.Signature(data.ArrayLayout(signed(acc_width), cols)))
        super().__init__(members)

    rows = property(lambda self: self._rows)
    cols = property(lambda self: self._cols)
    in_width = property(lambda self: self._in_width)
    weight_width = property(lambda self: self._weight_width)
    dataflow = property(lambda self: self._dataflow)
    multiplier = property(lambda self: self._multiplier)
    max_reduction = property(lambda self: self._max_reduction)
    min_reduction = property(lambda self: self._min_reduction)
    acc_width = property(lambda self: self._acc_width)
    interconnect = property(lambda self: self._interconnect)
    product_register = property(lambda self: self._product_register)

    @property
    def latency(self):
        """Cycles from accepting a beat (an OS tile's last) to its first output valid."""
        return array_latency(self._rows, self._cols, self._interconnect,
                             self._product_register)

    def tile_period(self, reduction):
        """Output-stationary: cycles between tiles of ``reduction`` beats, back to back."""
        return max(reduction, self._rows)

    def os_cycles(self, tiles, reduction):
        """Output-stationary: cycles from the first beat accepted to the last row
        delivered, for ``tiles`` back-to-back tiles of ``reduction`` beats, no stalls."""
        return ((tiles - 1) * self.tile_period(reduction) + reduction + self.latency
                + self._rows - 1)

    def elaborate(self, platform):
        m = Module()
        R, C = self._rows, self._cols
        grid_kwargs = dict(rows=R, cols=C, in_width=self._in_width,
                           weight_width=self._weight_width, acc_width=self._acc_width,
                           multiplier=self._multiplier)
        if self._interconnect == "broadcast":
            return self._elaborate_broadcast(m, grid_kwargs)
        deskew = m.submodules.deskew = Deskew(shape=signed(self._acc_width), lanes=C)
        advance = deskew.i.ready
        wiring.connect(m, deskew.o, wiring.flipped(self.o))

        if self._dataflow == "os":
            grid = m.submodules.grid = OutputStationaryGrid(
                **grid_kwargs, product_register=self._product_register)
            skew_a = m.submodules.skew_a = Skew(shape=os_lane_layout(self._in_width),
                                                lanes=R)
            skew_b = m.submodules.skew_b = Skew(shape=signed(self._weight_width), lanes=C)
            accept = self._tile_rule(m, advance)
            for r in range(R):
                # Row r of A enters PE row R-1-r: the bottom row finishes first in each
                # column and drains first, so rows leave in order 0..R-1.
                m.d.comb += [skew_a.i.payload[R - 1 - r].value.eq(self.i.payload.a[r]),
                             skew_a.i.payload[R - 1 - r].last.eq(self.i.payload.last)]
            m.d.comb += [
                skew_a.i.valid.eq(accept), skew_b.i.valid.eq(accept),
                skew_b.i.payload.eq(self.i.payload.b),
                skew_a.o.ready.eq(advance), skew_b.o.ready.eq(advance),
                grid.a.eq(skew_a.o.payload), grid.b.eq(skew_b.o.payload),
            ]
        else:
            grid = m.submodules.grid = WeightStationaryGrid(**grid_kwargs)
            skew = m.submodules.skew_x = Skew(shape=ws_lane_layout(self._in_width), lanes=R)
            # Double-buffer interlock: `full` once R rows are in the shadow chains; a
            # `first` beat waits for it; the chains stay still until that beat has
            # reached every PE (R + C - 1 cycles: PE (i, j) samples it i + j + 1 cycles
            # after it is accepted).
            full = Signal()
            rows_in = Signal(range(R + 1))
            hold = Signal(range(R + C))
            accept = Signal()
            w_take = Signal()
            m.d.comb += [
                self.i.ready.eq(advance & (~self.i.payload.first | full)),
                accept.eq(self.i.valid & self.i.ready),
                self.w.ready.eq(advance & ~full & (hold == 0)),
                w_take.eq(self.w.valid & self.w.ready),
            ]
            with m.If(advance):
                with m.If(accept & self.i.payload.first):
                    m.d.sync += [full.eq(0), hold.eq(R + C - 2)]
                with m.Elif(hold != 0):
                    m.d.sync += hold.eq(hold - 1)
                with m.If(w_take):
                    with m.If(rows_in == R - 1):
                        m.d.sync += [full.eq(1), rows_in.eq(0)]
                    with m.Else():
                        m.d.sync += rows_in.eq(rows_in + 1)
            for r in range(R):
                m.d.comb += [skew.i.payload[r].value.eq(self.i.payload.a[r]),
                             skew.i.payload[r].first.eq(self.i.payload.first)]
            m.d.comb += [
                skew.i.valid.eq(accept), skew.o.ready.eq(advance),
                grid.x.eq(skew.o.payload),
                grid.w.eq(self.w.payload), grid.w_shift.eq(w_take),
            ]

        m.d.comb += [
            grid.en.eq(advance),
            deskew.i.payload.eq(grid.out),
            deskew.i.valid.eq(_any([grid.out[c].valid for c in range(C)])),
        ]
        return m

    def _tile_rule(self, m, advance):
        """Accept a ``last`` beat only when the previous one is >= R enabled cycles back,
        so each column's drain has passed a slot before the slot's next sum; returns the
        accept signal.  With ``min_reduction >= R`` every tile is long enough: no rule."""
        R = self._rows
        accept = Signal()
        if self._min_reduction >= R:
            m.d.comb += [self.i.ready.eq(advance), accept.eq(self.i.valid & advance)]
            return accept
        since_last = Signal(range(R + 1), init=R)
        # ``since_last == R`` as a register: ``i.ready`` feeds the accelerator's address
        # generator enables, and the comparison was the head of the iCE40 critical path
        drained = Signal(init=1)
        m.d.comb += [
            self.i.ready.eq(advance & (~self.i.payload.last | drained)),
            accept.eq(self.i.valid & self.i.ready),
        ]
        with m.If(advance):
            with m.If(accept & self.i.payload.last):
                m.d.sync += [since_last.eq(1), drained.eq(R == 1)]
            with m.Elif(~drained):
                m.d.sync += [since_last.eq(since_last + 1), drained.eq(since_last + 1 == R)]
        return accept

    def _elaborate_broadcast(self, m, grid_kwargs):
        grid = m.submodules.grid = BroadcastGrid(**grid_kwargs)
        # The drain's head is the output register: the array advances when it is empty
        # or taken, so o.valid never waits on o.ready.
        advance = Signal()
        m.d.comb += advance.eq(~self.o.valid | self.o.ready)
        accept = self._tile_rule(m, advance)
        m.d.comb += [
            grid.en.eq(advance),
            grid.a.eq(self.i.payload.a), grid.b.eq(self.i.payload.b),
            grid.valid.eq(accept), grid.last.eq(self.i.payload.last),
            self.o.payload.eq(grid.out), self.o.valid.eq(grid.out_valid),
        ]
        return m


def check_interconnect(interconnect, dataflow):
    """Validate an interconnect for a dataflow (``ValueError`` if unknown or if
    ``"broadcast"`` is asked for the weight-stationary dataflow)."""
    _choice("Interconnect", interconnect, INTERCONNECTS)
    if interconnect == "broadcast" and dataflow != "os":
        raise ValueError(f"A broadcast interconnect needs the output-stationary dataflow, "
                         f"not {dataflow!r}")


def array_latency(rows, cols, interconnect="systolic", product_register=False):
    """Cycles from the array accepting an output-stationary tile's last beat to its first
    result row being valid: ``R + C + 3`` systolic (skew, hops, PE stages, deskew), 3
    broadcast (the PE stages only); one more with the PEs' product register."""
    return (3 if interconnect == "broadcast" else rows + cols + 3) + int(product_register)


def check_product_register(value, dataflow, interconnect):
    """Raise unless ``value`` is a bool, and True only for an output-stationary systolic
    array (the PE that has it)."""
    if not isinstance(value, bool):
        raise TypeError(f"Product register must be a bool, not {value!r}")
    if value and (dataflow != "os" or interconnect != "systolic"):
        raise ValueError(f"Product register is implemented for the output-stationary "
                         f"systolic array, not {dataflow} {interconnect}")
    return value
