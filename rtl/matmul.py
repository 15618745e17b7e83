"""The systolic array with its requantization lanes: exact matrix products in, output
integers out (DESIGN.md sections 3 and 5).

:class:`RequantizedArray` puts a :class:`~.array.SystolicArray` in front of ``cols``
:class:`~.requant.Requantizer` lanes, one per column.  Each output row of the array (``C``
exact accumulators) goes through the lanes together with the tile's per-column bias and
the flat index of each element (the stochastic-rounding key).  The bias and index travel
with the input beats that produce output rows and wait in a small FIFO until their rows
leave the array, so they cannot fall out of step with the data under any stall pattern.
"""

from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from systolic.golden import srgen

from systolic.golden.accumulator import accumulator_width
from systolic.golden.qformat import MAX_WIDTH, MIN_WIDTH

from ._params import check_int
from .array import DATAFLOWS, DEFAULT_MAX_REDUCTION, SystolicArray, _size
from .mac import _choice, _operand_width, check_multiplier
from .requant import RequantConfig, Requantizer
from .srgen import pipeline_stages

__all__ = ["RequantizedArray"]

#: Generator rounds per lane pipeline stage (the lanes' default).
_ROUNDS_PER_STAGE = 3


class RequantizedArray(wiring.Component):
    """An R x C systolic array whose output rows are requantized by C lanes.

    Parameters
    ----------
    rows, cols : int
        PE rows ``R`` and columns ``C``, 1..32 (as :class:`~.array.SystolicArray`).
    in_width, weight_width : int
        Widths of the signed operands, 2..16.
    out_width : int
        Widest output format, 2..16 (as :class:`~.requant.Requantizer`; narrower formats
        are clamp bounds in ``config``).
    dataflow : str
        ``"os"`` or ``"ws"``.
    multiplier : str
        ``"inferred"``, ``"lut"`` or ``"sb_mac16"``.
    max_reduction : int or None
        As :class:`~.array.SystolicArray`; sets the accumulator width ``acc_width``.
    stochastic : bool
        Give every lane the stochastic-rounding generator.

    Members
    -------
    i : In(stream.Signature(...))
        The array's input (see :class:`~.array.SystolicArray`) with two more fields,
        ``bias`` (``ArrayLayout(signed(acc_width), C)``, aligned to the accumulator's scale)
        and ``index`` (``unsigned(32)``), read on the beats that produce output rows:

        * output-stationary: ``{a, b, last, bias, index}``; ``bias`` and ``index`` are read
          on the ``last`` beat.  ``index`` is the flat index of the tile's element
          ``(0, 0)``; element ``(r, j)`` of the tile gets ``index + r * row_stride + j``.
        * weight-stationary: ``{a, first, bias, index}``, read on every beat; ``index`` is
          the flat index of the beat's output element 0; element ``j`` gets ``index + j``.

        For a product ``Y = A @ B`` of ``M x N`` elements computed whole, the flat index of
        ``Y[i, j]`` is ``i * N + j`` (row-major): pass ``index = 0, row_stride = N``
        (output-stationary) or ``index = i * N`` (weight-stationary, beat ``i``).
    w : In(stream.Signature(ArrayLayout(signed(weight_width), C)))
        Weight-stationary only: the weight blocks, as :class:`~.array.SystolicArray`.
    o : Out(stream.Signature(StructLayout{value, saturated}))
        ``value``: ``ArrayLayout(signed(out_width), C)``, one requantized output row per
        beat, in the array's order; ``saturated``: ``ArrayLayout(unsigned(1), C)``, the
        lanes' saturation events.
    config : In(RequantConfig(out_width, acc_width + 1, 16))
        The layer's requantization (:func:`~.requant.requant_config`), shared by every
        lane; held constant while outputs of a layer are in flight.
    sr_keys : In(ROUNDS * 16)
        Stochastic-rounding round keys for ``(seed, layer)`` (:class:`~.srgen.SRKeySchedule`
        or :func:`systolic.golden.srgen.round_keys`), held like ``config``.
    row_stride : In(32)
        Output-stationary only: index distance between consecutive rows of a tile.

    Raises
    ------
    TypeError, ValueError, ConstraintError
        As :class:`~.array.SystolicArray` and :class:`~.requant.Requantizer`.

    Notes
    -----
    Latency ``R + C + 3 + L`` cycles from accepting a beat (an output-stationary tile's
    last) to its first output row valid, where ``L = 3 + max(1, ceil(9 / 3))`` = 6 cycles
    is the lane latency with ``stochastic`` (4 without).  Throughput as the array: one
    input beat per cycle, and one output row per cycle.

    Back-pressure: the lanes share one enable (they stay in lock step); a stalled output
    stalls the lanes, which stall the array, so nothing is lost, duplicated or reordered.
    A beat that carries ``bias``/``index`` also waits for room in the metadata FIFO, sized
    to the rows the pipeline can hold (``ceil((2R + C + 3) / R) + 2`` tiles
    output-stationary, ``R + C + 6`` beats weight-stationary), so it never limits the
    throughput.
    """

    def __init__(self, *, rows, cols, in_width=8, weight_width=8, out_width=8, dataflow="os",
                 multiplier="inferred", max_reduction=None, stochastic=True):
        # Validate as the units do (same messages), without building them here.
        _size("Array rows", rows)
        _size("Array columns", cols)
        _operand_width("Input width", in_width)
        _operand_width("Weight width", weight_width)
        check_int("Output width", out_width)
        if not MIN_WIDTH <= out_width <= MAX_WIDTH:
            raise ValueError(f"Output width must be between {MIN_WIDTH} and {MAX_WIDTH}, "
                             f"not {out_width}")
        _choice("Dataflow", dataflow, DATAFLOWS)
        check_multiplier(multiplier, in_width, weight_width, names=("Input", "Weight"))
        if max_reduction is None:
            max_reduction = DEFAULT_MAX_REDUCTION if dataflow == "os" else rows
        check_int("Maximum reduction", max_reduction)
        if dataflow == "ws" and max_reduction < rows:
            raise ValueError(f"Maximum reduction of a weight-stationary array must be at "
                             f"least its {rows} rows, not {max_reduction}")
        if not isinstance(stochastic, bool):
            raise TypeError(f"Stochastic must be a bool, not {stochastic!r}")
        acc_width = accumulator_width(in_width, weight_width, max_reduction)
        self._rows, self._cols = rows, cols
        self._in_width, self._weight_width, self._out_width = in_width, weight_width, out_width
        self._dataflow, self._multiplier = dataflow, multiplier
        self._max_reduction, self._stochastic = max_reduction, stochastic
        self._acc_width = acc_width
        # The lanes' defaults: every useful right shift, and 16 left.
        self._max_shift, self._max_left_shift = acc_width + 1, 16
        self._meta_layout = data.StructLayout({
            "bias": data.ArrayLayout(signed(acc_width), cols),
            "index": unsigned(srgen.INDEX_BITS)})

        a = data.ArrayLayout(signed(in_width), rows)
        weights = data.ArrayLayout(signed(weight_width), cols)
        if dataflow == "os":
            fields = {"a": a, "b": weights, "last": 1}
        else:
            fields = {"a": a, "first": 1}
        fields.update(self._meta_layout.members)
        members = {"i": In(stream.Signature(data.StructLayout(fields)))}
        if dataflow == "ws":
            members["w"] = In(stream.Signature(weights))
        members["o"] = Out(stream.Signature(data.StructLayout({
            "value": data.ArrayLayout(signed(out_width), cols),
            "saturated": data.ArrayLayout(unsigned(1), cols)})))
        members["config"] = In(RequantConfig(out_width, self._max_shift,
                                             self._max_left_shift))
        members["sr_keys"] = In(srgen.ROUNDS * srgen.WORD)
        if dataflow == "os":
            members["row_stride"] = In(srgen.INDEX_BITS)
        super().__init__(members)

    rows = property(lambda self: self._rows)
    cols = property(lambda self: self._cols)
    in_width = property(lambda self: self._in_width)
    weight_width = property(lambda self: self._weight_width)
    out_width = property(lambda self: self._out_width)
    dataflow = property(lambda self: self._dataflow)
    multiplier = property(lambda self: self._multiplier)
    max_reduction = property(lambda self: self._max_reduction)
    stochastic = property(lambda self: self._stochastic)
    acc_width = property(lambda self: self._acc_width)

    max_shift = property(lambda self: self._max_shift,
                         doc="Largest right shift of the lanes (``config.shift``).")
    max_left_shift = property(lambda self: self._max_left_shift,
                              doc="Largest left shift of the lanes.")

    @property
    def latency(self):
        """Cycles from accepting a beat (an OS tile's last) to its first output valid."""
        lane = 3 + (pipeline_stages(_ROUNDS_PER_STAGE) if self._stochastic else 1)
        return self._rows + self._cols + 3 + lane

    @property
    def meta_depth(self):
        """Entries of the bias/index FIFO (tiles for OS, beats for WS)."""
        R, C = self._rows, self._cols
        if self._dataflow == "os":
            return -(-(2 * R + C + 3) // R) + 2
        return R + C + 6

    def elaborate(self, platform):
        m = Module()
        R, C = self._rows, self._cols
        array = m.submodules.array = SystolicArray(
            rows=R, cols=C, in_width=self._in_width, weight_width=self._weight_width,
            dataflow=self._dataflow, multiplier=self._multiplier,
            max_reduction=self._max_reduction)
        lanes = [Requantizer(acc_width=self._acc_width, out_width=self._out_width,
                             max_shift=self._max_shift, max_left_shift=self._max_left_shift,
                             stochastic=self._stochastic, rounds_per_stage=_ROUNDS_PER_STAGE)
                 for _ in range(C)]
        for j, lane in enumerate(lanes):
            m.submodules[f"lane_{j}"] = lane
        meta = m.submodules.meta = SyncFIFOBuffered(width=self._meta_layout.size,
                                                    depth=self.meta_depth)

        # -- input: the array's fields to the array, bias/index into the FIFO -------------
        # Output-stationary: the tile's `last` beat; weight-stationary: every beat.
        pushes = self.i.payload.last if self._dataflow == "os" else 1
        room = (~pushes | meta.w_rdy) if self._dataflow == "os" else meta.w_rdy
        pushed = data.View(self._meta_layout, meta.w_data)
        for name in array.i.payload.shape().members:
            m.d.comb += array.i.payload[name].eq(self.i.payload[name])
        m.d.comb += [
            array.i.valid.eq(self.i.valid & room),
            self.i.ready.eq(array.i.ready & room),
            meta.w_en.eq(self.i.valid & self.i.ready & pushes),
            pushed.bias.eq(self.i.payload.bias),
            pushed.index.eq(self.i.payload.index),
        ]
        if self._dataflow == "ws":
            wiring.connect(m, wiring.flipped(self.w), array.w)
        head = data.View(self._meta_layout, meta.r_data)

        # -- array rows to the lanes, all lanes in lock step ------------------------------
        lanes_ready = Signal()
        lanes_valid = Signal()
        m.d.comb += [lanes_ready.eq(_all([lane.i.ready for lane in lanes])),
                     lanes_valid.eq(_all([lane.o.valid for lane in lanes]))]
        take = Signal()
        m.d.comb += [
            array.o.ready.eq(lanes_ready & meta.r_rdy),
            take.eq(array.o.valid & array.o.ready),
        ]
        if self._dataflow == "os":
            # Row r of a tile: index + r * row_stride, kept as a running sum.
            row = Signal(range(R))
            offset = Signal(srgen.INDEX_BITS)
            row_index = Signal(srgen.INDEX_BITS)
            m.d.comb += [row_index.eq(head.index + offset),
                         meta.r_en.eq(take & (row == R - 1))]
            with m.If(take):
                with m.If(row == R - 1):
                    m.d.sync += [row.eq(0), offset.eq(0)]
                with m.Else():
                    m.d.sync += [row.eq(row + 1), offset.eq(offset + self.row_stride)]
        else:
            row_index = head.index
            m.d.comb += meta.r_en.eq(take)

        for j, lane in enumerate(lanes):
            m.d.comb += [
                lane.i.valid.eq(array.o.valid & meta.r_rdy & lanes_ready),
                lane.i.payload.acc.eq(array.o.payload[j]),
                lane.i.payload.bias.eq(head.bias[j]),
                lane.i.payload.index.eq((row_index + j)[:srgen.INDEX_BITS]),
                lane.config.eq(self.config),
                lane.sr_keys.eq(self.sr_keys),
                lane.o.ready.eq(self.o.ready & lanes_valid),
                self.o.payload.value[j].eq(lane.o.payload.value),
                self.o.payload.saturated[j].eq(lane.o.payload.saturated),
            ]
        m.d.comb += self.o.valid.eq(lanes_valid)
        return m


def _all(signals):
    out = 1
    for s in signals:
        out = out & s
    return out
