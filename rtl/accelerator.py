"""The whole-network accelerator: array, memories, output path and controller.

:class:`Accelerator` runs a :class:`~.compiler.Program` on a batch of ``C`` images (one
per array column, see :mod:`.compiler` for the mapping).  One run:

1. **Load**: ``i`` takes the input tensor, one flat (C, H, W) element of every image per
   beat, into region 0 of the ``C`` activation banks.
2. **Compute**: each step of the program in turn.  *Setup* (``ROUNDS`` cycles) loads the
   step's constants and runs the stochastic-rounding key schedule for ``(seed, layer)``;
   *run* issues the step's beats from the address generator (one per cycle, the array's
   tile rule aside); the step ends when its last output row is written.
3. **Output**: ``o`` streams the output tensor (the logits), one element of every image
   per beat.

The datapath of a step::

    address generator --> weight/bias/activation memories (1 cycle)
        --> array (conv/dense) or pooling reducer (pool)
        --> output row: C accumulators + bias + flat index
        --> H(seed, layer, index), shared by the C lanes
        --> C requantization lanes --> activation banks (write), saturation counters

Nothing after the array ever stalls (the banks always accept a write), so the array's
output is always ready and the cycle count of a step is exact
(:meth:`~.compiler.Program.step_cycles`).

With ``dataflow="ws"`` the conv/dense steps run through :meth:`Accelerator._ws_datapath`
instead (corner turn -> weight-stationary array -> partial sums -> output transposer,
on a static schedule); the memories, the pooling passes and the output path are shared.
"""

from dataclasses import replace

from amaranth.hdl import Array, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for

from systolic.golden.accumulator import accumulator_width
from systolic.golden.errors import ConstraintError

from .array import SystolicArray, array_latency
from .compiler import LANE_LATENCY, MAX_LEFT_SHIFT, Program
from .bram import RegisteredReadMemory
from .mac import is_ice40
from .queue import MemoryQueue
from .ring import Ring
from .requant import RequantConfig, Requantizer
from .spram import SPRAM
from .srgen import SRKeySchedule, SRRounds

__all__ = ["Accelerator", "COUNTER_WIDTH", "counter_words", "queue_memories",
           "weight_stream_layout", "weight_beats"]

#: Width of the performance counters.
COUNTER_WIDTH = 32


def counter_words(layers):
    """Counter words of a network of ``layers`` layers, in the order of the counter port
    and the link's READ_COUNTERS: ``cycles, beats, layer_cycles[layers],
    saturations[layers]``."""
    return 2 + 2 * layers


def _index_width(steps, R, C):
    """Width of the flat output and pooled indices: the largest tensor, channels padded
    to the tiles, plus a bit."""
    return bits_for(max(max(s.out_shape[0], s.channel_tiles * max(R, C)) *
                        (s.out_shape[1] + 1) * (s.out_shape[2] + 1) for s in steps)) + 1


def _meta_layout(program):
    """A tile's metadata (output-stationary), waiting in a queue for the tile's rows: the
    bias word's address, not the R biases, and indices only as wide as the largest tensor
    (on the iCE40 8x2 array, R biases per entry were ~1,300 flip-flops)."""
    R = program.config.rows
    mm = [s for s in program.steps if s.kind == "matmul"] or program.steps
    return data.StructLayout({
        # row 0's (pooled) index: below channel_tiles * R * (pooled) pixels (the flat
        # index only for the stochastic-rounding generator)
        **({"index": _u(max(s.channel_tiles * R * s.pixels for s in mm))}
           if program.config.stochastic else {}),
        "rows": unsigned(bits_for(R)),
        "pindex": _u(max(s.channel_tiles * R * (s.stored_shape[1] + 1) *
                         (s.stored_shape[2] + 1) for s in mm)),
        "pfirst": 1, "plast": 1, "inwin": 1,
        "baddr": _u(program.bias_words)})


def _tiles_in_flight(program):
    """Tiles between the address generator and the array's output: issued, in the
    array and draining (period >= R), and one more (a tile's entry may go in while the
    skid register holds the previous tile's last beat)."""
    cfg = program.config
    latency = array_latency(cfg.rows, cfg.cols, cfg.interconnect, cfg.product_register)
    return -(-(cfg.rows + latency) // cfg.rows) + 3


def queue_memories(program):
    """The memories of ``program``'s output-path queues with ``queue_memory`` (else
    none): ``(what, depth, width)`` for the tile metadata, the rows' tags and the fused
    pool's maxima."""
    cfg = program.config
    if not cfg.queue_memory:
        return []
    R, C = cfg.rows, cfg.cols
    return [("tile queue", _tiles_in_flight(program), _meta_layout(program).size),
            ("tag ring", LANE_LATENCY, _index_width(program.steps, R, C) + 4),
            *([("max ring", R, C * program.act_width)] if R >= 2 else [])]


def _u(n):
    return unsigned(max(1, bits_for(n)))


class _SPRAMRead:
    """The read side of an :class:`~.spram.SPRAM` with a memory read port's names."""

    def __init__(self, spram):
        self.addr, self.en, self.data = Signal.like(spram.addr), spram.en, spram.data


class _Ports:
    """The read and write sides of a :class:`~.bram.RegisteredReadMemory` with a memory
    port's names (``addr``, ``en``, ``data``); the read ``data`` is two reads late."""

    def __init__(self, mem, side):
        self.addr, self.en, self.data = (getattr(mem, f"{side}_{n}")
                                         for n in ("addr", "en", "data"))


class _SPRAMWrite:
    """The write side; the single port takes the write address while ``en`` is high."""

    def __init__(self, spram):
        self.addr, self.data, self.en = Signal.like(spram.addr), spram.wdata, spram.we


def _last_band_rows(ho, kp):
    """Output rows in the last band of ``kp`` rows (a fused pool's) of ``ho`` rows."""
    return ho - (ho - 1) // kp * kp


def _pack(image, width):
    """Memory words from an ``(words, R)`` integer image: value ``r`` in bits
    ``r*width..``, two's complement."""
    mask = (1 << width) - 1
    return [sum((int(v) & mask) << (r * width) for r, v in enumerate(word)) for word in image]


def weight_stream_layout(program):
    """Payload of the accelerator's weight-rewrite stream ``w``."""
    return data.StructLayout({
        "bias": 1,
        "addr": _u(max(program.weight_words, program.bias_words) - 1),
        "data": unsigned(max(program.lanes * program.weight_width,
                             program.bias_lanes * program.acc_width)),
    })


def weight_beats(program, network):
    """The ``w`` stream beats that load ``network``'s weights and biases into an
    accelerator built for ``program``: a list of ``{"bias", "addr", "data"}`` dicts.

    Raises
    ------
    ConstraintError
        ``network`` differs from the program's in more than weight and bias values
        (topology, formats, fused activations or rounding are baked into the hardware).
    """
    from .compiler import compile_network
    other = compile_network(network, program.config)
    mine = [replace(s, rounding=None) for s in program.steps]
    theirs = [replace(s, rounding=None) for s in other.steps]
    if mine != theirs or (other.act_width, other.weight_width, other.acc_width) != (
            program.act_width, program.weight_width, program.acc_width):
        raise ConstraintError(
            f"Network {network.name or '(unnamed)'} does not have the topology and formats "
            f"this accelerator was built for ({program.network.name or '(unnamed)'}); only "
            f"weight and bias values can be loaded at run time")
    beats = [{"bias": 0, "addr": a, "data": d}
             for a, d in enumerate(_pack(other.weight_image, program.weight_width))]
    beats += [{"bias": 1, "addr": a, "data": d}
              for a, d in enumerate(_pack(other.bias_image, program.acc_width))]
    return beats


class Accelerator(wiring.Component):
    """A compiled network in hardware.

    Parameters
    ----------
    program : Program
        From :func:`~.compiler.compile_network`.
    counter_port : bool
        Replace the four counter members by a read port, ``counter_addr`` and
        ``counter_data``, over a memory: the board top's form (the per-layer counters as
        registers, with the link's multiplexer, were ~640 LUT4 of an iCE40 8x2 build).
        Needs the program's steps in layer order (the compiler's).

    Members
    -------
    i : In(stream.Signature(ArrayLayout(signed(act_width), C)))
        Input tensor element ``e`` (flat (C, H, W) order) of the ``C`` images, beat ``e``.
        A run starts when the last element has been taken.
    o : Out(stream.Signature(StructLayout{values: ArrayLayout(signed(act_width), C), last}))
        Output tensor element ``e`` of the ``C`` images, beat ``e``; ``last`` on the final one.
    w : In(stream.Signature(weight_stream_layout(program)))
        Rewrites weight word ``addr`` (``bias`` clear: ``R`` weights, weight ``r`` in bits
        ``r*ww..``) or bias word ``addr`` (``bias`` set: ``R`` aligned biases of
        ``acc_width`` bits) between runs; taken only while the accelerator waits for
        input.  :func:`weight_beats` makes the beats for a network of the same topology.
    rounding : In(ArrayLayout(unsigned(2), layers))
        Each layer's rounding mode (:data:`~.requant.MODE`); read at the layer's setup.
    seed : In(32)
        The stochastic-rounding seed; read at each layer's setup.
    images : In(range(C + 1))
        How many lanes hold real images (saturation events count only those).
    busy : Out(1)
        A run is computing.
    step : Out(range(steps))
        The step being computed (a step's output tensor is complete in the banks when
        ``step`` moves on, or ``busy`` falls after the last).
    cycles : Out(32)
        Compute cycles of the last (or current) run.
    layer_cycles : Out(ArrayLayout(unsigned(32), layers))
        Cycles each layer's step took.
    beats : Out(32)
        Array beats taken (each is ``R * C`` multiply slots).
    saturations : Out(ArrayLayout(unsigned(32), layers))
        Saturation events per layer, over the real images.
    counter_addr : In(range(counter_words(layers))); counter_data : Out(32)
        With ``counter_port``, instead of the four above: ``counter_data`` is the counter
        word at the previous cycle's ``counter_addr`` (order of :func:`counter_words`).
        During a run the words lag the events by up to two cycles.

    With ``weight_memory="spram"`` the weight memory is iCE40 SPRAM, which the bitstream
    cannot initialize: send the weights through ``w`` (:func:`weight_beats` of the
    program's own network) before the first run.

    Timing: ``program.cycles`` compute cycles per run exactly (no stall is possible
    inside a run); load ``input_words`` and output ``output_words`` beats at one per cycle
    when the streams allow.
    """

    def __init__(self, program, *, counter_port=False):
        if not isinstance(program, Program):
            raise TypeError(f"Program must be a Program from compile_network, not "
                            f"{type(program).__name__}")
        if not isinstance(counter_port, bool):
            raise TypeError(f"Counter port must be a bool, not {counter_port!r}")
        if counter_port:
            # the counter memory keeps one session per layer (see _counter_memory)
            layers = [s.layer for s in program.steps]
            if layers != sorted(layers):
                raise ValueError(f"A counter port needs the program's steps in layer "
                                 f"order, not layers {layers}")
        self._program = program
        self._counter_port = counter_port
        cfg = program.config
        C = cfg.cols
        L = len(program.network.layers)
        aw = program.act_width
        if counter_port:
            counters = {"counter_addr": In(range(counter_words(L))),
                        "counter_data": Out(COUNTER_WIDTH)}
        else:
            counters = {
                "cycles": Out(COUNTER_WIDTH),
                "layer_cycles": Out(data.ArrayLayout(unsigned(COUNTER_WIDTH), L)),
                "beats": Out(COUNTER_WIDTH),
                "saturations": Out(data.ArrayLayout(unsigned(COUNTER_WIDTH), L)),
            }
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(signed(aw), C))),
            "o": Out(stream.Signature(data.StructLayout({
                "values": data.ArrayLayout(signed(aw), C), "last": 1}))),
            "w": In(stream.Signature(weight_stream_layout(program))),
            "rounding": In(data.ArrayLayout(unsigned(2), L)),
            "seed": In(32),
            "images": In(range(C + 1)),
            "busy": Out(1),
            "step": Out(range(max(len(program.steps), 2))),
            **counters,
        })

    @property
    def program(self):
        return self._program

    @property
    def counter_port(self):
        return self._counter_port

    def elaborate(self, platform):
        m = Module()
        P = self._program
        cfg = P.config
        R, C = cfg.rows, cfg.cols
        aw, ww, accw = P.act_width, P.weight_width, P.acc_width
        steps = P.steps
        S = len(steps)

        # -- memories -------------------------------------------------------------------
        if cfg.weight_memory == "spram":
            # empty at power-up: the weights come through the w stream
            wmem = m.submodules.wmem = SPRAM(width=P.lanes * ww, depth=P.weight_words)
            w_rd = _SPRAMRead(wmem)
            w_wr = _SPRAMWrite(wmem)
        elif cfg.registered_memories:
            # the read's register is the block RAM's own output register on the ECP5
            wmem = m.submodules.wmem = RegisteredReadMemory(
                width=P.lanes * ww, depth=P.weight_words, init=_pack(P.weight_image, ww))
            w_rd, w_wr = _Ports(wmem, "r"), _Ports(wmem, "w")
        else:
            wmem = m.submodules.wmem = memory.Memory(
                shape=unsigned(P.lanes * ww), depth=P.weight_words,
                init=_pack(P.weight_image, ww))
            w_rd = wmem.read_port()
            w_wr = wmem.write_port()
        b_init = _pack(P.bias_image, accw)
        # The bias read late: with registered memories and the stochastic-rounding
        # generator's delay line in front of the lanes, a row's bias is first needed a
        # cycle after the row's registers, so the bias memory's read passes the block
        # RAM's output register too (on the ULX3S-85F the plain DP16KD read, 5.6 ns
        # clock-to-output, into the delay line was the critical path).
        # (registered memories are output-stationary only: ArrayConfig checks it)
        late_bias = cfg.registered_memories and cfg.stochastic
        if late_bias:
            bmem = m.submodules.bmem = RegisteredReadMemory(
                width=P.bias_lanes * accw, depth=P.bias_words, init=b_init)
            b_rd, b_wr = _Ports(bmem, "r"), _Ports(bmem, "w")
            m.d.comb += b_rd.en.eq(1)
        else:
            bmem = m.submodules.bmem = memory.Memory(shape=unsigned(P.bias_lanes * accw),
                                                     depth=P.bias_words, init=b_init)
            b_rd = bmem.read_port()
            b_wr = bmem.write_port()
        banks = []
        for j in range(C):
            if cfg.registered_memories:
                # the read's register is the block RAM's own output register on the ECP5
                bank = RegisteredReadMemory(width=aw, depth=P.act_words)
                m.submodules[f"bank_{j}"] = bank
                banks.append((_Ports(bank, "r"), _Ports(bank, "w")))
            else:
                bank = memory.Memory(shape=signed(aw), depth=P.act_words, init=[])
                m.submodules[f"bank_{j}"] = bank
                banks.append((bank.read_port(), bank.write_port()))
        act_addr = Signal(_u(P.act_words - 1))
        addr_w = len(act_addr) + 8                       # the read address sum's width
        act_en = Signal()
        for rd, _ in banks:
            m.d.comb += [rd.addr.eq(act_addr), rd.en.eq(act_en)]

        # -- step constants -------------------------------------------------------------
        # Loaded into registers at each step's setup from a table indexed by the step.
        ws = cfg.dataflow == "ws"
        P_ws = max(R, C)                # weight-stationary slot: R reads, C beats

        def rows_of(s):
            """Rows through the output path (including channels beyond C_out)."""
            if s.kind == "pool":
                return s.tiles
            return s.channel_tiles * s.pixels * (C if s.dataflow == "ws" else R)

        def ws_ext(s, pixels):
            return max(0, P.ws_block_min - pixels * P_ws) if s.dataflow == "ws" else 0

        mm_ws = [s for s in steps if s.dataflow == "ws"] or [None]
        counted = sorted({s.layer for s in steps})      # layers with per-layer counters
        H_max = max(max(s.in_shape[1], s.in_shape[2]) for s in steps)
        fields = {
            "pool": 1, "is_max": 1,
            "kh": _u(max(s.kh for s in steps)), "kw": _u(max(s.kw for s in steps)),
            "stride": _u(2), "top": _u(max(s.top for s in steps)),
            "left": _u(max(s.left for s in steps)),
            "cin": _u(max(s.in_shape[0] for s in steps)),
            "h": _u(H_max), "w": _u(H_max),
            "hw": _u(max(s.in_shape[1] * s.in_shape[2] for s in steps)),
            "ho": _u(max(s.out_shape[1] for s in steps)),
            "wo": _u(max(s.out_shape[2] for s in steps)),
            "howo": _u(max(s.pixels for s in steps)),
            "ct_count": _u(max(s.channel_tiles if s.kind == "matmul" else s.out_shape[0]
                               for s in steps)),
            "ct_index_step": _u(max(R * s.pixels for s in steps)),
            "cout": _u(max(s.out_shape[0] for s in steps)),
            "k": _u(max(s.reduction for s in steps)),
            "in_base": _u(P.act_words), "out_base": _u(P.act_words),
            "w_base": _u(P.weight_words), "b_base": _u(P.bias_words),
            "rows": _u(max(rows_of(s) for s in steps)),
            "layer": _u(max(s.layer for s in steps)),
            "slot": _u(len(counted) - 1),
            # output pixel order and the fused max pool (kp = 1: none, raster order)
            "kp": _u(max(max(s.fused_pool, 1) for s in steps)),
            "hp": _u(max(s.stored_shape[1] for s in steps)),
            "wp": _u(max(s.stored_shape[2] for s in steps)),
            "hpwp": _u(max(s.stored_shape[1] * s.stored_shape[2] for s in steps)),
            "wpkp": _u(max(s.out_shape[2] for s in steps)),
            "band_ystep": _u(max(max(s.fused_pool, 1) * s.stride for s in steps)),
            "band_ywstep": _u(max(max(s.fused_pool, 1) * s.stride * s.in_shape[2]
                                  for s in steps)),
            "band_pixstep": _u(max(max(s.fused_pool, 1) * s.out_shape[2] for s in steps)),
            "ct_pindex_step": _u(max(R * s.stored_shape[1] * s.stored_shape[2]
                                     for s in steps)),
            "ybw0": signed(bits_for(max(s.top * s.in_shape[2] for s in steps)) + 1),
            # the incremental read address (output-stationary): the first beat's
            # address, and what the next kx / ky / ci / output row adds
            "a0": signed(addr_w), "d_ky": signed(addr_w), "d_ci": signed(addr_w),
            "step_w": _u(max(s.stride * s.in_shape[2] for s in steps)),
            # rows in a band, minus 2 (the dy that makes the next row the band's last), and
            # whether a band has one row: for the full bands (kp) and the last (lkp)
            "kp_m2": signed(bits_for(max(max(s.fused_pool, 1) for s in steps)) + 1),
            "lkp_m2": signed(bits_for(max(max(s.fused_pool, 1) for s in steps)) + 1),
            "kp_1": 1, "lkp_1": 1,
            # 3 kp, and whether the second band is the last (ho <= 2 kp)
            "kp3": _u(3 * max(max(s.fused_pool, 1) for s in steps)), "nl0": 1,
        }
        if ws:
            # weight-stationary matmul: k-tiles, pixels per group, the block-switch wait
            # added to a block's last slot, weight words per channel tile, index step
            fields.update({
                "ws_kt": _u(max(s.k_tiles for s in mm_ws)),
                "ws_g": _u(max(s.group for s in mm_ws)),
                "ws_ext": _u(P.ws_block_min), "ws_ext_last": _u(P.ws_block_min),
                "ws_kr": _u(max(s.k_tiles * R for s in mm_ws)),
                "ws_ct_index": _u(max(C * s.pixels for s in mm_ws)),
                "ws_ct_pindex": _u(max(C * s.stored_shape[1] * s.stored_shape[2]
                                       for s in mm_ws)),
            })
        rq_layout = RequantConfig(aw, accw + 1, MAX_LEFT_SHIFT)
        pl = data.StructLayout({**fields, "rq": rq_layout})
        p = Signal(pl)

        def step_const(s):
            pool = s.kind == "pool"
            kp = max(s.fused_pool, 1)
            _, hp, wp = s.stored_shape
            v = {
                "pool": int(pool), "is_max": int(s.op == "max"),
                "kh": s.kh, "kw": s.kw, "stride": s.stride, "top": s.top, "left": s.left,
                "cin": 1 if pool else s.in_shape[0],
                "h": s.in_shape[1], "w": s.in_shape[2],
                "hw": s.in_shape[1] * s.in_shape[2],
                "ho": s.out_shape[1], "wo": s.out_shape[2], "howo": s.pixels,
                "ct_count": s.out_shape[0] if pool else s.channel_tiles,
                "ct_index_step": s.pixels if pool else R * s.pixels,
                "cout": s.out_shape[0], "k": s.reduction,
                "in_base": s.in_base, "out_base": s.out_base,
                "w_base": s.w_base, "b_base": s.b_base,
                "rows": rows_of(s),
                "layer": s.layer, "slot": counted.index(s.layer),
                "kp": kp, "hp": hp, "wp": wp, "hpwp": hp * wp, "wpkp": wp * kp,
                "band_ystep": kp * s.stride, "band_ywstep": kp * s.stride * s.in_shape[2],
                "band_pixstep": kp * s.out_shape[2],
                "ct_pindex_step": hp * wp if pool else R * hp * wp,
                "ybw0": -s.top * s.in_shape[2],
                "a0": s.in_base - s.top * s.in_shape[2] - s.left,
                "d_ky": s.in_shape[2] - (s.kw - 1),
                "d_ci": s.in_shape[1] * s.in_shape[2] - (s.kh - 1) * s.in_shape[2] - (s.kw - 1),
                "step_w": s.stride * s.in_shape[2],
                "kp_m2": kp - 2, "lkp_m2": _last_band_rows(s.out_shape[1], kp) - 2,
                "kp_1": int(kp == 1), "lkp_1": int(_last_band_rows(s.out_shape[1], kp) == 1),
                "kp3": 3 * kp, "nl0": int(s.out_shape[1] <= 2 * kp),
                "rq": {**s.requant, "mode": 0},
            }
            if ws:
                v.update({
                    "ws_kt": s.k_tiles, "ws_g": s.group, "ws_ext": ws_ext(s, s.group),
                    "ws_ext_last": ws_ext(s, s.last_group), "ws_kr": s.k_tiles * R,
                    "ws_ct_index": C * s.pixels,
                    "ws_ct_pindex": C * s.stored_shape[1] * s.stored_shape[2],
                })
            return v

        step = self.step

        # -- control state --------------------------------------------------------------
        state_names = ("LOAD", "SETUP", "KEYS", "RUN", "OUTPUT")
        ST = {n: i for i, n in enumerate(state_names)}
        state = Signal(range(len(state_names)), init=ST["LOAD"])
        computing = Signal()
        m.d.comb += [computing.eq((state == ST["SETUP"]) | (state == ST["KEYS"]) |
                                  (state == ST["RUN"])),
                     self.busy.eq(computing)]

        keys = m.submodules.keys = SRKeySchedule()
        mode = Signal(2)
        m.d.comb += [keys.seed.eq(self.seed), keys.layer.eq(p.layer)]

        # queues in memory (``queue_memory``): block RAM on the iCE40
        ram_attrs = {"ram_style": "block"} if is_ice40(platform) else None

        # -- address generator (stage 0) -------------------------------------------------
        kx, ky, ci = Signal.like(p.kw), Signal.like(p.kh), Signal.like(p.cin)
        ox, ct = Signal.like(p.wo), Signal.like(p.ct_count)
        # output pixels go band by band (kp rows of the conv output), column by column,
        # row by row inside a band: a pooling window's kp*kp pixels are consecutive
        band, dy = Signal.like(p.ho), Signal.like(p.kp)
        dx, px = Signal.like(p.kp), Signal.like(p.wo)
        ho_left = Signal.like(p.ho)                      # ho - band * kp
        band_pix = Signal.like(p.howo)                   # band * kp * wo
        pidx_band = Signal.like(p.hpwp)                  # band * wp
        # flat output indices (the generator's ``i``) and pooled indices (write
        # addresses) only as wide as the largest tensor, channels padded to the tiles,
        # plus a bit: 32-bit counters here cost ~20 logic cells each on the iCE40
        iw = _index_width(steps, R, C)
        ct_pindex = Signal(unsigned(iw))                 # pooled index of the tile's row 0
        kcount = Signal.like(p.k)
        aw_bits = len(act_addr) + 2
        xb = Signal(signed(bits_for(2 * H_max) + 2))     # ox * stride - left
        yb = Signal(signed(bits_for(2 * H_max) + 2))     # oy * stride - top
        ybw = Signal(signed(aw_bits + 4))                # yb * w
        band_yb = Signal.like(yb)                        # band * kp * stride - top
        band_ybw = Signal.like(ybw)                      # band_yb * w
        kyw = Signal(unsigned(aw_bits))                  # ky * w
        cioff = Signal(unsigned(aw_bits))                # ci * hw
        tplane = Signal(unsigned(aw_bits))               # pool: ct * hw
        pix = Signal.like(p.howo)                        # oy * wo + ox
        ct_index = Signal(unsigned(iw))                  # index of the tile's row 0, pixel 0
        wt = Signal(unsigned(bits_for(P.weight_words) + 1))   # w_base + ct * k
        issued = Signal()                                # every beat of the step issued

        x = Signal(signed(len(xb) + 1))
        y = Signal(signed(len(yb) + 1))
        inside = Signal()
        addr = Signal(signed(addr_w))
        m.d.comb += [
            x.eq(xb + kx), y.eq(yb + ky),
            inside.eq((x >= 0) & (x < p.w) & (y >= 0) & (y < p.h)),
        ]
        # Output-stationary: the read address is a register that each loop moves by a
        # per-step constant, ``in_base + tplane + cioff + ybw + kyw + xb + kx`` kept up to
        # date instead of summed in the cycle (the seven-term sum was the iCE40 critical
        # path).  ``pix_a``, ``col_a``, ``band_a``, ``tile_a``: the address of the first
        # beat of the current output pixel, column (band row 0), band and channel tile.
        # All are modulo 2**addr_w like the sum, so their low bits are the same.
        # The weight-stationary datapath moves the counters itself: there, the sum.
        raddr, pix_a, col_a, band_a, tile_a = (
            Signal(signed(addr_w), name=f"{n}_addr")
            for n in ("read", "pix", "col", "band", "tile"))
        if ws:
            m.d.comb += addr.eq(p.in_base + tplane + cioff + ybw + kyw + x)
        else:
            m.d.comb += addr.eq(raddr)
        kp_eff = Signal.like(p.kp)                       # rows in this band
        m.d.comb += kp_eff.eq(Mux(ho_left < p.kp, ho_left, p.kp))
        # output-stationary: whether the next band is the last (ho_left <= 2 kp), a
        # register like the loops' tests below (unused weight-stationary)
        next_last = Signal()
        if ws:
            # the weight-stationary datapath moves these counters itself: compare
            last_kx = kx == p.kw - 1
            last_ky = ky == p.kh - 1
            last_ci = ci == p.cin - 1
            last_dy = dy == kp_eff - 1
            last_ox = ox == p.wo - 1
            last_band = ho_left <= p.kp
            last_ct = ct == p.ct_count - 1
        else:
            # Each loop's "last" test is a register, set when its counter moves to the
            # value the test is true for (below, next to each counter's update), so the
            # counters' enables are ANDs of flip-flops: comparing in the cycle, the nested
            # tests (ho_left <= kp, dy == kp_eff - 1, ...) were the iCE40 critical path.
            last_kx, last_ky, last_ci, last_dy, last_ox, last_band, last_ct = (
                Signal(name=f"last_{n}") for n in ("kx", "ky", "ci", "dy", "ox", "band",
                                                  "ct"))
        last_beat = Signal()
        if ws:
            m.d.comb += last_beat.eq(last_kx & last_ky & last_ci)

        # -- stage 1: memory outputs and the beat's control --------------------------------
        s1_valid = Signal()
        s1_first, s1_last, s1_inside = Signal(), Signal(), Signal()
        s1_index = Signal(iw)
        s1_pindex = Signal(iw)
        s1_pfirst, s1_plast, s1_inwin = Signal(), Signal(), Signal()
        s1_rows = Signal(range(R + 1))
        advance = Signal()
        gen_valid = Signal()
        # weight-stationary: the generator below runs only the pooling passes
        # ``(state == RUN) & ~issued`` kept as a register (set as RUN starts, cleared with
        # ``issued``): the state decode was the head of the iCE40 critical path through
        # ``issue`` into the counters' enables
        run_gen = Signal()
        m.d.comb += gen_valid.eq(run_gen & (p.pool if ws else 1))
        issue = Signal()
        m.d.comb += issue.eq(gen_valid & advance)

        with m.If(state == ST["RUN"]):
            m.d.comb += [act_addr.eq(addr[:len(act_addr)]), act_en.eq(advance)]
        if not ws:
            m.d.comb += [w_rd.addr.eq(wt + kcount), w_rd.en.eq(advance)]
        s1_baddr = Signal.like(p.b_base)                 # the tile's first bias word

        rows_left = Signal(signed(bits_for(max(s.out_shape[0] for s in steps)) + 2))
        m.d.comb += rows_left.eq(p.cout - ct * R)        # real channels in this tile
        with m.If(advance):
            m.d.sync += [
                s1_valid.eq(issue),
                s1_first.eq(kcount == 0),
                s1_last.eq(last_beat),
                s1_inside.eq(inside),
                s1_index.eq(ct_index + pix),
                s1_pindex.eq(ct_pindex + pidx_band + px),
                s1_pfirst.eq((dy == 0) & (dx == 0)),
                s1_plast.eq((dy == p.kp - 1) & (dx == p.kp - 1)),
                s1_inwin.eq((band < p.hp) & (ox < p.wpkp)),
                # output-stationary: R bias words per tile; weight-stationary keeps
                # its own bias address (one word of C per tile)
                s1_baddr.eq(p.b_base + ct * (1 if ws else R)),
            ]
            m.d.sync += s1_rows.eq(Mux(p.pool | (rows_left >= R), R, rows_left))

        # The memories' read data, as the beat's logic sees it.  With registered memories
        # (ECP5) the data and stage 1's control pass one more register stage, moved by
        # ``advance`` like stage 1 (the memories hold their output while it is low), and
        # everything below uses that stage: a DP16KD's clock-to-output (5.8 ns, nextpnr's
        # ECP5 timing) left ~2 ns of the 8 ns at 125 MHz for the multiplexers behind it.
        # One more cycle per step (:attr:`~.compiler.Program.read_latency`); the write
        # below adds another.
        # (The activation banks, and the weights in block RAM, are
        # :class:`~.bram.RegisteredReadMemory`: their read data are already that register,
        # the DP16KD's output register on the ECP5.)
        bank_q = [rd.data.as_signed() for rd, _ in banks]
        w_q = w_rd.data
        if cfg.registered_memories:
            stage = [s1_valid, s1_first, s1_last, s1_inside, s1_index, s1_pindex,
                     s1_pfirst, s1_plast, s1_inwin, s1_rows, s1_baddr]
            held = [Signal.like(v, name=f"{v.name}_r") for v in stage]
            with m.If(advance):
                m.d.sync += [h.eq(v) for h, v in zip(held, stage)]
            if cfg.weight_memory == "spram":
                w_q = Signal.like(w_rd.data, name="w_q")
                with m.If(advance):
                    m.d.sync += w_q.eq(w_rd.data)
            (s1_valid, s1_first, s1_last, s1_inside, s1_index, s1_pindex, s1_pfirst,
             s1_plast, s1_inwin, s1_rows, s1_baddr) = held

        def flag(stmt):
            if not ws:
                m.d.sync += stmt

        # Counters advance with each issued beat.  Each loop level's update is its own
        # block under a flat condition (the levels are mutually exclusive): as nested
        # ``If``s the conditions were a chain of ANDs seven LUTs deep in front of the
        # counters' enables, the iCE40 critical path.  Output-stationary, the ANDs of
        # the loops' "last" flags are registers too (``end_ky``: kx and ky are at their
        # last values, ``end_ci``: the beat is the tile's last; ``end_ox``, ``end_band``,
        # ``end_ct``: dy and ox, and band, and ct are), each set by the level that moves
        # from the new flag values, so every condition is an AND of at most four
        # flip-flops.
        if ws:
            end_ky, end_ci = last_kx & last_ky, last_beat
            end_ox = last_dy & last_ox
            end_band = end_ox & last_band
            end_ct = end_band & last_ct
        else:
            end_ky, end_ci, end_ox, end_band, end_ct = (
                Signal(name=f"end_{n}") for n in ("ky", "ci", "ox", "band", "ct"))
            m.d.comb += last_beat.eq(end_ci)

        def inner_flags(kx_, ky_, ci_):
            """The inner levels' ANDs for new flag values."""
            flag([end_ky.eq(kx_ & ky_), end_ci.eq(kx_ & ky_ & ci_)])

        def outer_flags(dy_, ox_, band_, ct_):
            """The outer levels' ANDs for new flag values."""
            flag([end_ox.eq(dy_ & ox_), end_band.eq(dy_ & ox_ & band_),
                  end_ct.eq(dy_ & ox_ & band_ & ct_)])

        tile_end = Signal()
        m.d.comb += tile_end.eq(issue & end_ci)
        kw1, kh1, cin1 = p.kw == 1, p.kh == 1, p.cin == 1
        with m.If(issue):
            m.d.sync += kcount.eq(kcount + 1)
        # kx
        with m.If(issue & ~last_kx):
            m.d.sync += kx.eq(kx + 1)
            flag([last_kx.eq(kx + 2 == p.kw), raddr.eq(raddr + 1)])
            inner_flags(kx + 2 == p.kw, last_ky, last_ci)
        with m.If(issue & last_kx):
            m.d.sync += kx.eq(0)
            flag(last_kx.eq(kw1))
        # ky
        with m.If(issue & last_kx & ~end_ky):
            m.d.sync += [ky.eq(ky + 1), kyw.eq(kyw + p.w)]
            flag([last_ky.eq(ky + 2 == p.kh), raddr.eq(raddr + p.d_ky)])
            inner_flags(kw1, ky + 2 == p.kh, last_ci)
        with m.If(issue & end_ky):
            m.d.sync += [ky.eq(0), kyw.eq(0)]
            flag(last_ky.eq(kh1))
        # ci
        with m.If(issue & end_ky & ~end_ci):
            m.d.sync += [ci.eq(ci + 1), cioff.eq(cioff + p.hw)]
            flag([last_ci.eq(ci + 2 == p.cin), raddr.eq(raddr + p.d_ci)])
            inner_flags(kw1, kh1, ci + 2 == p.cin)
        # the tile (output pixel) is complete
        with m.If(tile_end):
            m.d.sync += [ci.eq(0), cioff.eq(0), kcount.eq(0)]
            flag(last_ci.eq(cin1))
            inner_flags(kw1, kh1, cin1)
        # dy: the next row of the band
        with m.If(tile_end & ~last_dy):
            step_w = Mux(p.stride == 2, p.w << 1, p.w)
            m.d.sync += [dy.eq(dy + 1), yb.eq(yb + p.stride), ybw.eq(ybw + step_w),
                         pix.eq(pix + p.wo)]
            # (constants, not kp_eff: its compare was the iCE40 critical path into this
            # flag)
            new_dy = dy == Mux(last_band, p.lkp_m2, p.kp_m2)
            flag([last_dy.eq(new_dy), raddr.eq(pix_a + p.step_w),
                  pix_a.eq(pix_a + p.step_w)])
            outer_flags(new_dy, last_ox, last_band, last_ct)
        # ox: the next column of the band
        with m.If(tile_end & last_dy & ~end_ox):
            m.d.sync += [dy.eq(0), ox.eq(ox + 1), xb.eq(xb + p.stride),
                         yb.eq(band_yb), ybw.eq(band_ybw), pix.eq(band_pix + ox + 1)]
            new_dy = Mux(last_band, p.lkp_1, p.kp_1)
            flag([last_dy.eq(new_dy), last_ox.eq(ox + 2 == p.wo),
                  raddr.eq(col_a + p.stride), pix_a.eq(col_a + p.stride),
                  col_a.eq(col_a + p.stride)])
            outer_flags(new_dy, ox + 2 == p.wo, last_band, last_ct)
            with m.If(dx == p.kp - 1):
                m.d.sync += [dx.eq(0), px.eq(px + 1)]
            with m.Else():
                m.d.sync += dx.eq(dx + 1)
        with m.If(tile_end & end_ox):
            m.d.sync += [dy.eq(0), ox.eq(0), xb.eq(-p.left), dx.eq(0), px.eq(0)]
            flag(last_ox.eq(p.wo == 1))
        # band: the next band of kp output rows (ho_left - kp rows left, > 0)
        with m.If(tile_end & end_ox & ~end_band):
            # whether the band after the next is the last: ho_left - kp <= 2 kp
            new_dy = Mux(next_last, p.lkp_1, p.kp_1)
            flag([last_band.eq(next_last), next_last.eq(ho_left <= p.kp3),
                  last_dy.eq(new_dy)])
            outer_flags(new_dy, p.wo == 1, next_last, last_ct)
            nxt = band_a + p.band_ywstep
            flag([raddr.eq(nxt), pix_a.eq(nxt), col_a.eq(nxt), band_a.eq(nxt)])
            m.d.sync += [
                band.eq(band + 1), ho_left.eq(ho_left - p.kp),
                band_yb.eq(band_yb + p.band_ystep),
                band_ybw.eq(band_ybw + p.band_ywstep),
                band_pix.eq(band_pix + p.band_pixstep),
                pidx_band.eq(pidx_band + p.wp),
                yb.eq(band_yb + p.band_ystep),
                ybw.eq(band_ybw + p.band_ywstep),
                pix.eq(band_pix + p.band_pixstep),
            ]
        with m.If(tile_end & end_band):
            m.d.sync += [band.eq(0), ho_left.eq(p.ho),
                         band_yb.eq(-p.top), band_ybw.eq(p.ybw0),
                         band_pix.eq(0), pidx_band.eq(0),
                         yb.eq(-p.top), ybw.eq(p.ybw0), pix.eq(0)]
            new_dy = (p.ho == 1) | (p.kp == 1)
            flag([last_band.eq(p.ho <= p.kp), next_last.eq(p.nl0), last_dy.eq(new_dy)])
            outer_flags(new_dy, p.wo == 1, p.ho <= p.kp, last_ct)
        # ct: the next channel tile (or pooling plane)
        with m.If(tile_end & end_band & ~end_ct):
            flag(last_ct.eq(ct + 2 == p.ct_count))
            outer_flags((p.ho == 1) | (p.kp == 1), p.wo == 1, p.ho <= p.kp,
                        ct + 2 == p.ct_count)
            # a pooling pass's next channel plane (tplane + hw)
            nxt = tile_a + Mux(p.pool, p.hw, 0)
            flag([raddr.eq(nxt), pix_a.eq(nxt), col_a.eq(nxt), band_a.eq(nxt),
                  tile_a.eq(nxt)])
            m.d.sync += [ct.eq(ct + 1),
                         ct_index.eq(ct_index + p.ct_index_step),
                         ct_pindex.eq(ct_pindex + p.ct_pindex_step)]
            with m.If(p.pool):
                m.d.sync += tplane.eq(tplane + p.hw)
            with m.Else():
                m.d.sync += wt.eq(wt + p.k)
        with m.If(tile_end & end_ct):
            m.d.sync += [issued.eq(1), run_gen.eq(0)]

        # -- the array and its tile metadata ---------------------------------------------
        if not ws:
            array = m.submodules.array = SystolicArray(
                rows=R, cols=C, in_width=ww, weight_width=aw, dataflow="os",
                multiplier=cfg.multiplier, acc_width=accw, interconnect=cfg.interconnect,
                product_register=cfg.product_register,
                max_reduction=max([s.reduction for s in steps if s.kind == "matmul"] or [1]),
                min_reduction=min([s.reduction for s in steps if s.kind == "matmul"] or [1]))
            # The array's only back-pressure is its tile rule (its output is always
            # taken): when every tile of the program is at least R beats long there is
            # none, and the skid register below is left out (on the iCE40 8x2 array, 81
            # flip-flops and the 81 multiplexers in front of the array's input).
            array_stalls = array.min_reduction < R
            # A tile's metadata waits here for its rows.  It carries the bias word's address,
            # not the R biases, and indices only as wide as the largest tensor: on the iCE40
            # this FIFO is flip-flops, and R biases per entry were ~1,300 of them (8x2 array).
            meta_layout = _meta_layout(P)
            in_flight = _tiles_in_flight(P)
            if cfg.queue_memory:
                # in block RAM on the iCE40: a tile's rows leave the array at least its
                # latency (3) cycles after the tile's entry went in, later than the
                # queue's read ahead needs (2)
                meta = m.submodules.meta = MemoryQueue(
                    shape=unsigned(meta_layout.size), depth=in_flight, attrs=ram_attrs)
            else:
                meta = m.submodules.meta = SyncFIFOBuffered(
                    width=meta_layout.size, depth=in_flight)
            wword = data.View(data.ArrayLayout(signed(ww), R), w_q)
            to_array = Signal()
            m.d.comb += to_array.eq(s1_valid & ~p.pool)
            # Room for a tile's metadata, from a register: at most one entry is pushed a
            # cycle, so "two free entries" a cycle ago means one now.  The FIFO is sized
            # for every tile in flight, so this never stalls a run; combinational, the
            # FIFO's level compare fed the address generator's enables through
            # ``advance`` (an iCE40 critical path).  Without the array's tile rule
            # nothing in a run waits at all (the array, the lanes and the writer take a
            # beat every cycle, and the queue holds every tile in flight: an entry lives
            # from its tile's last beat to its last row, latency + R cycles, and tiles are
            # at least R cycles apart), so there the generator never stops: ``advance``
            # is 1 and the counters' enables are ANDs of their loops' flags alone (on
            # the iCE40 8x2 array the room and skid logic in front of them were the
            # critical path).
            room = Signal()
            if array_stalls:
                room_r = Signal()
                m.d.sync += room_r.eq(meta.level + 2 <= in_flight)
                m.d.comb += room.eq(~s1_last | room_r)
            else:
                m.d.comb += room.eq(1)
            # Stage 1 hands its beat to the array through a skid register: the array
            # takes stage 1's beat directly, and when it cannot (its tile rule), the beat
            # waits in the skid register while the generator takes one more step, then
            # stops.  So the generator's ``advance`` is a function of registers only,
            # never of the array's ``ready`` (through ``advance``, the array's tile rule
            # reached every counter's enable: the iCE40 critical path).  The array sees
            # the same beats in the same cycles, so the cycle counts are unchanged.
            s1_beat = Signal(array.i.p.shape())
            skid_full = Signal()
            m.d.comb += s1_beat.last.eq(s1_last)
            for r in range(R):
                m.d.comb += s1_beat.a[r].eq(wword[r])
            for j in range(C):
                m.d.comb += s1_beat.b[j].eq(Mux(s1_inside, bank_q[j], 0))
            hand_on = Signal()                      # stage 1's beat leaves it
            m.d.comb += [
                hand_on.eq(to_array & ~skid_full & room),
                array.i.valid.eq(skid_full | hand_on),
                array.o.ready.eq(1),
            ]
            if array_stalls:
                beat = Signal(array.i.p.shape())
                m.d.comb += array.i.payload.eq(
                    Mux(skid_full, beat.as_value(), s1_beat.as_value()))
                with m.If(skid_full):
                    with m.If(array.i.ready):
                        m.d.sync += skid_full.eq(0)
                with m.Elif(hand_on & ~array.i.ready):
                    m.d.sync += [skid_full.eq(1), beat.eq(s1_beat)]
            else:
                m.d.comb += array.i.payload.eq(s1_beat)
            pushed = data.View(meta_layout, meta.w_data)
            array_take = Signal()
            m.d.comb += [
                array_take.eq(array.i.valid & array.i.ready),
                # a tile's metadata goes in as its last beat leaves stage 1: in order,
                # at most one tile ahead of the array (one more FIFO entry, below)
                meta.w_en.eq(hand_on & s1_last),
                *([pushed.index.eq(s1_index)] if cfg.stochastic else []),
                pushed.rows.eq(s1_rows), pushed.baddr.eq(s1_baddr),
                pushed.pindex.eq(s1_pindex), pushed.pfirst.eq(s1_pfirst),
                pushed.plast.eq(s1_plast), pushed.inwin.eq(s1_inwin),
            ]
            if array_stalls:
                with m.If(p.pool):
                    m.d.comb += advance.eq(1)
                with m.Else():
                    m.d.comb += advance.eq(~s1_valid | (~skid_full & room))
            else:
                m.d.comb += advance.eq(1)

            # array rows: bias of the row's channel, index = tile index + r * howo
            head = data.View(meta_layout, meta.r_data)
            row = Signal(range(R))
            row_off = Signal(iw)
            prow_off = Signal(iw)
            m.d.comb += meta.r_en.eq(array.o.valid & (row == R - 1))
            with m.If(array.o.valid):
                with m.If(row == R - 1):
                    m.d.sync += [row.eq(0), row_off.eq(0), prow_off.eq(0)]
                with m.Else():
                    m.d.sync += [row.eq(row + 1), row_off.eq(row_off + p.howo),
                                 prow_off.eq(prow_off + p.hpwp)]
        else:
            array_take, ws_reset, ws_rows = self._ws_datapath(
                m, P, p, state == ST["RUN"], issued, banks, w_rd, b_rd,
                dict(kx=kx, ky=ky, ci=ci, kyw=kyw, cioff=cioff, ox=ox, xb=xb, yb=yb,
                     ybw=ybw, addr_inside=inside, dy=dy, dx=dx, px=px, band=band,
                     ho_left=ho_left, band_yb=band_yb, band_ybw=band_ybw,
                     band_pix=band_pix, pidx_band=pidx_band, pix=pix, last_dy=last_dy,
                     last_ox=last_ox, last_band=last_band))
            m.d.comb += advance.eq(1)         # the pooling passes never wait

        # -- pooling reducer ---------------------------------------------------------------
        racc = Signal(data.ArrayLayout(signed(accw), C))
        pool_valid = Signal()
        pool_acc = Signal(data.ArrayLayout(signed(accw), C))
        pool_index = Signal(iw)
        m.d.sync += pool_valid.eq(s1_valid & p.pool & s1_last)
        with m.If(s1_valid & p.pool):
            for j in range(C):
                v = bank_q[j]
                cur = Signal(signed(accw), name=f"pool_cur_{j}")
                with m.If(s1_first):
                    m.d.comb += cur.eq(v)
                with m.Elif(p.is_max):
                    m.d.comb += cur.eq(Mux(v > racc[j], v, racc[j]))
                with m.Else():
                    m.d.comb += cur.eq(racc[j] + v)
                m.d.sync += [racc[j].eq(cur), pool_acc[j].eq(cur)]
            m.d.sync += pool_index.eq(s1_index)

        # -- output path: row register, shared generator, lanes, writer -------------------
        # what travels with a row to the writer: whether it is a real channel
        # (``write``), its pooled index and window flags, its row (for the running max)
        # (the row only for the weight-stationary writer: the output-stationary one keeps
        # its maxima in a ring)
        tag_layout = data.StructLayout({"write": 1, "pindex": unsigned(iw), "pfirst": 1,
                                        "plast": 1, "inwin": 1,
                                        **({"row": range(max(R, C))} if ws else {})})
        a_valid = Signal()
        a_acc = Signal(data.ArrayLayout(signed(accw), C))
        a_bias = Signal(signed(accw))
        a_index = Signal(iw)
        a_tag = Signal(tag_layout)
        # output-stationary: the row's own bias word (one bias per word: the head tile's
        # first word + the row), read while the row goes into the a registers, so it is
        # out of the memory when the row is (the head changes only after its last row)
        if not ws:
            # A tile's R bias words start at a multiple of R (each step's R words per
            # channel tile follow the last's), so with R a power of two the row is the
            # address's low bits: no adder between the metadata queue (a block RAM's
            # output on the iCE40) and the bias memory's address (that path was the
            # iCE40 critical path of the default preset).
            lg = R.bit_length() - 1
            if R == 1 << lg and all(s.b_base % R == 0 for s in steps if s.kind == "matmul"):
                m.d.comb += b_rd.addr.eq(Cat(row[:lg], head.baddr[lg:]))
            else:
                m.d.comb += b_rd.addr.eq(head.baddr + row)
            if not late_bias:
                m.d.comb += a_bias.eq(Mux(p.pool, 0, b_rd.data.as_signed()))
        else:
            # weight-stationary: the transposer's row carries its bias
            ws_bias = Signal(signed(accw))
            m.d.sync += ws_bias.eq(ws_rows["bias"])
            m.d.comb += a_bias.eq(Mux(p.pool, 0, ws_bias))
        with m.If(p.pool):
            m.d.sync += [a_valid.eq(pool_valid), a_acc.eq(pool_acc),
                         a_index.eq(pool_index), a_tag.write.eq(1),
                         a_tag.pindex.eq(pool_index), a_tag.pfirst.eq(1),
                         a_tag.plast.eq(1), a_tag.inwin.eq(1)]
            if ws:
                m.d.sync += a_tag.row.eq(0)
        with m.Else():
            if not ws:
                m.d.sync += [a_valid.eq(array.o.valid), a_acc.eq(array.o.payload),
                             a_tag.write.eq(row < head.rows),
                             a_tag.pindex.eq(head.pindex + prow_off),
                             a_tag.pfirst.eq(head.pfirst), a_tag.plast.eq(head.plast),
                             a_tag.inwin.eq(head.inwin)]
                if cfg.stochastic:
                    m.d.sync += a_index.eq(head.index + row_off)
            else:
                # weight-stationary: a row out of the output transposer
                m.d.sync += [a_valid.eq(ws_rows["valid"]), a_acc.eq(ws_rows["acc"]),
                             a_index.eq(ws_rows["index"]),
                             a_tag.write.eq(ws_rows["write"]),
                             a_tag.pindex.eq(ws_rows["pindex"]),
                             a_tag.pfirst.eq(ws_rows["pfirst"]),
                             a_tag.plast.eq(ws_rows["plast"]),
                             a_tag.inwin.eq(ws_rows["inwin"]), a_tag.row.eq(ws_rows["row"])]

        stochastic = cfg.stochastic
        if stochastic:
            rounds = m.submodules.rounds = SRRounds(rounds_per_stage=cfg.rounds_per_stage)
            m.d.comb += [rounds.keys.eq(keys.keys), rounds.index.eq(a_index),
                         rounds.enable.eq(1)]
            delay = rounds.latency
        else:
            delay = 0
        # the delay line beside the generator: values without reset, valid with (the ECP5
        # presets; nothing reads an invalid stage, and the reset's fanout is routing:
        # see pe.py)
        d_valid, d_acc, d_bias, d_index, d_tag = a_valid, a_acc, a_bias, a_index, a_tag
        for k in range(delay):
            nv, na, nb, ni, nt = (Signal.like(d_valid, name=f"d{k}_valid"),
                                  Signal.like(d_acc, name=f"d{k}_acc", reset_less=True),
                                  Signal.like(d_bias, name=f"d{k}_bias", reset_less=True),
                                  Signal.like(d_index, name=f"d{k}_index", reset_less=True),
                                  Signal.like(d_tag, name=f"d{k}_tag", reset_less=True))
            m.d.sync += [nv.eq(d_valid), na.eq(d_acc), ni.eq(d_index), nt.eq(d_tag)]
            if k == 0 and late_bias:
                # the bias memory's output register is this stage's bias register
                m.d.comb += nb.eq(Mux(p.pool, 0, b_rd.data.as_signed()))
            else:
                m.d.sync += nb.eq(d_bias)
            d_valid, d_acc, d_bias, d_index, d_tag = nv, na, nb, ni, nt

        # the lanes' shifters only as long as the program's shifts (fixed by the network's
        # formats, which a weight rewrite keeps): a right-only 4-stage shifter instead of
        # 5 stages each way saves ~40% of a lane (on the iCE40, ~200 LUTs a lane)
        shifts = [s.requant["shift"] for s in steps]
        lanes = []
        for j in range(C):
            lane = Requantizer(acc_width=accw, out_width=aw,
                               max_shift=min(accw + 1, max([1] + shifts)),
                               max_left_shift=max([0] + [-v for v in shifts]),
                               stochastic=stochastic, external_h=stochastic)
            m.submodules[f"lane_{j}"] = lane
            lanes.append(lane)
            m.d.comb += [
                lane.i.valid.eq(d_valid), lane.i.p.acc.eq(d_acc[j]),
                lane.i.p.bias.eq(d_bias), lane.i.p.index.eq(d_index),
                # field by field: the lane's shift field is narrower than p.rq's
                lane.config.shift.eq(p.rq.shift), lane.config.mode.eq(mode),
                lane.config.lo.eq(p.rq.lo), lane.config.hi.eq(p.rq.hi),
                lane.config.sat_lo.eq(p.rq.sat_lo), lane.config.sat_hi.eq(p.rq.sat_hi),
                lane.o.ready.eq(1),
            ]
            if stochastic:
                m.d.comb += lane.i.p.h.eq(rounds.h)
        # the tag alongside the lanes (which never stall: o.ready is 1): a ring turning
        # every cycle, in block RAM with ``queue_memory``
        tags = m.submodules.tag_ring = Ring(shape=tag_layout, depth=LANE_LATENCY,
                                            in_memory=cfg.queue_memory, attrs=ram_attrs)
        m.d.comb += [tags.en.eq(1), tags.i.eq(d_tag)]
        w_tag = tags.head
        w_valid = lanes[0].o.valid
        lane_value = [lane.o.p.value for lane in lanes]
        lane_sat = [lane.o.p.saturated for lane in lanes]

        # writer: the running maximum of each row's pooling window (one value per row and
        # lane; a step without a fused pool has every window of one pixel)
        # a row per output channel of a tile: R (output-stationary) or C (weight-st.)
        prows = max(R, C) if ws else R
        if ws:
            pmax = [[Signal(signed(aw), name=f"pmax_{r}_{j}") for j in range(C)]
                    for r in range(prows)]
        else:
            # output-stationary: every tile's rows come out in order, all R of them
            # (written or not), so the rows' maxima are a ring that turns once per row,
            # its head the current row's: no R:1 multiplexer between the maxima and the
            # compare (it and its routing were the iCE40 critical path).  A pooling
            # pass's rows start their windows (pfirst), so they may turn it any number
            # of times.  In block RAM with ``queue_memory`` (and R >= 2).
            maxima = m.submodules.max_ring = Ring(
                shape=data.ArrayLayout(signed(aw), C), depth=R,
                in_memory=cfg.queue_memory and R >= 2, attrs=ram_attrs)
        # The compare a cycle early: with the lanes' register below, a row's value is
        # known a cycle before the writer takes it, and so are the two heads it may meet
        # (the ring's ``after`` if the ring turns at this edge, else its head).  Both
        # compares go into that register, and the writer picks one by whether the ring
        # turned.  The loop through the ring of maxima is then its head through one
        # multiplexer into its tail; with the compare in it (its carry chain and the
        # routing from the ring's 16 entries per lane and back) it was the ULX3S-85F
        # critical path, and picking the head before the compare put the ring's enable
        # (fanout: every entry) in front of the carry chain.
        early = cfg.registered_memories and not ws and not maxima.in_memory and R >= 2
        greater = None
        if cfg.registered_memories:
            # the lanes' results pass a register before the running maximum's compare
            # (one more cycle per step): routing from the lanes into the compare, its
            # carry chain and the multiplexer were the ECP5 critical path
            q_valid = Signal(name="lane_valid_q")
            q_tag = Signal.like(w_tag, name="lane_tag_q", reset_less=True)
            q_value = [Signal(signed(aw), name=f"lane_{j}_value_q", reset_less=True)
                       for j in range(C)]
            q_sat = [Signal(name=f"lane_{j}_sat_q") for j in range(C)]
            m.d.sync += [q_valid.eq(w_valid), q_tag.eq(w_tag)]
            m.d.sync += [q.eq(v) for q, v in zip(q_value + q_sat, lane_value + lane_sat)]
            if early:
                # the ring turns at this edge if the registered row is valid: then the
                # next cycle's head is ``after``, else ``head``
                turned = Signal(name="max_turned")
                m.d.sync += turned.eq(q_valid)
                greater = []
                for j, v in enumerate(lane_value):
                    g_after = Signal(name=f"lane_{j}_gt_after_q")
                    g_head = Signal(name=f"lane_{j}_gt_head_q")
                    m.d.sync += [g_after.eq(v > maxima.after[j]), g_head.eq(v > maxima.head[j])]
                    gt = Signal(name=f"lane_{j}_greater")
                    m.d.comb += gt.eq(Mux(turned, g_after, g_head))
                    greater.append(gt)
            w_valid, w_tag, lane_value, lane_sat = q_valid, q_tag, q_value, q_sat
        w_write = w_tag.write
        if not ws:
            m.d.comb += maxima.en.eq(w_valid)
        wvalue = []
        for j in range(C):
            v = lane_value[j]
            mx = Signal(signed(aw), name=f"wmax_{j}")
            if ws:
                old = Array(pmax[r][j] for r in range(prows))[w_tag.row]
            else:
                old = maxima.head[j]
            gt = greater[j] if greater is not None else v > old
            m.d.comb += mx.eq(Mux(w_tag.pfirst | gt, v, old))
            wvalue.append(mx)
            if ws:
                with m.If(w_valid & w_write):
                    with m.Switch(w_tag.row):
                        for r in range(prows):
                            with m.Case(r):
                                m.d.sync += pmax[r][j].eq(mx)
            else:
                m.d.comb += maxima.i[j].eq(Mux(w_write, mx, old))
        write_en = Signal()
        m.d.comb += write_en.eq(w_valid & w_write & w_tag.inwin & w_tag.plast)
        write_addr = Signal(_u(P.act_words - 1))
        m.d.comb += write_addr.eq(p.out_base + w_tag.pindex)
        # saturation events of the images in the batch; the lanes in use as a register
        # (``images`` is held while a run goes), not compared in the counting cycle
        in_batch = Signal(C)
        m.d.sync += in_batch.eq(Cat(j < self.images for j in range(C)))
        sat_count = Signal(range(C + 1))
        m.d.comb += sat_count.eq(sum(
            (lane_sat[j] & in_batch[j]) for j in range(C)))

        # Registered memories: the write (enable, address, value) passes a register, and
        # the step's end with it (one more cycle per step): into the block RAM's data
        # inputs behind the running maximum's compare and multiplexer was the ECP5
        # critical path.
        if cfg.registered_memories:
            q_en, q_addr = Signal(name="write_en_q"), Signal.like(write_addr, name="write_addr_q")
            q_value = [Signal(signed(aw), name=f"wvalue_{j}_q", reset_less=True)
                       for j in range(C)]
            m.d.sync += [q_en.eq(write_en), q_addr.eq(write_addr)]
            m.d.sync += [q.eq(v) for q, v in zip(q_value, wvalue)]
            write_en, write_addr, wvalue = q_en, q_addr, q_value

        # -- steps: rows written, completion --------------------------------------------
        rows_done = Signal.like(p.rows)
        step_done = Signal()
        # ``at_last``: the next row written completes the step, kept in a register so that
        # the step's end does not wait for a comparison (with the step-constant load it
        # was the iCE40 critical path); same cycle as comparing rows_done directly
        at_last = Signal()
        if cfg.registered_memories:
            m.d.sync += step_done.eq(w_valid & at_last)     # with the registered write
        else:
            m.d.comb += step_done.eq(w_valid & at_last)
        with m.If(w_valid):
            m.d.sync += [rows_done.eq(rows_done + 1), at_last.eq(rows_done + 2 == p.rows)]

        # -- counters ---------------------------------------------------------------------
        # Registers only as wide as a run can count (cycles and beats at most
        # program.cycles, saturations at most C per cycle), two bits of headroom, and
        # zero-extended to the 32-bit outputs: 32-bit registers were ~400 logic cells of
        # an 8x2 iCE40 build (and a wider counter mux in the link).
        cw = min(COUNTER_WIDTH, bits_for(P.cycles) + 2)
        sw = min(COUNTER_WIDTH, bits_for(C * P.cycles) + 2)
        # Per-layer registers only for the layers a step runs (a fused pool's layer, for
        # one, has none: it reads 0), addressed by the step's ``slot``.
        cycles_r, beats_r = Signal(cw), Signal(cw)
        with m.If(computing):
            m.d.sync += cycles_r.eq(cycles_r + 1)
        with m.If(array_take):
            m.d.sync += beats_r.eq(beats_r + 1)
        # A row's saturation events are added a cycle after it is written (with its step's
        # slot): the sum of the lanes' flags, the slot's counter and the add in one cycle
        # were an iCE40 critical path.  The counters are read after the run.
        sat_add = Signal.like(sat_count)
        sat_slot = Signal.like(p.slot)
        m.d.sync += [sat_add.eq(Mux(w_valid & w_write, sat_count, 0)), sat_slot.eq(p.slot)]
        if self._counter_port:
            clear_counters = self._counter_memory(m, platform, counted, cycles_r, beats_r,
                                                  computing, sat_add, sat_slot, cw, sw)
        else:
            lcyc = Array(Signal(cw, name=f"layer_cycles_{n}") for n in counted)
            sats = Array(Signal(sw, name=f"saturations_{n}") for n in counted)
            m.d.comb += [self.cycles.eq(cycles_r), self.beats.eq(beats_r)]
            for k, n in enumerate(counted):
                m.d.comb += [self.layer_cycles[n].eq(lcyc[k]),
                             self.saturations[n].eq(sats[k])]
            with m.If(computing):
                m.d.sync += lcyc[p.slot].eq(lcyc[p.slot] + 1)
            m.d.sync += sats[sat_slot].eq(sats[sat_slot] + sat_add)
            clear_counters = ([lcyc[k].eq(0) for k in range(len(counted))] +
                              [sats[k].eq(0) for k in range(len(counted))])

        # -- load, output, weight rewrite --------------------------------------------------
        in_count = Signal(_u(P.input_words))
        out_count = Signal(_u(P.output_words))
        o_valid = Signal()
        o_last = Signal()
        o_advance = Signal()
        m.d.comb += [
            self.o.valid.eq(o_valid), self.o.p.last.eq(o_last),
            o_advance.eq(~o_valid | self.o.ready),
        ]
        for j in range(C):
            m.d.comb += self.o.p.values[j].eq(banks[j][0].data)

        with m.If(state == ST["LOAD"]):
            m.d.comb += self.i.ready.eq(1)
            for j in range(C):
                m.d.comb += [banks[j][1].addr.eq(in_count), banks[j][1].data.eq(self.i.p[j]),
                             banks[j][1].en.eq(self.i.valid)]
        with m.Else():
            for j in range(C):
                m.d.comb += [banks[j][1].addr.eq(write_addr),
                             banks[j][1].data.eq(wvalue[j]),
                             banks[j][1].en.eq(write_en)]
        if cfg.weight_memory == "spram":
            m.d.comb += wmem.addr.eq(Mux(w_wr.en, w_wr.addr, w_rd.addr))
        w_beat, w_take = self.w.p, self.w.valid & (state == ST["LOAD"])
        if cfg.registered_memories:
            # A taken beat is written a cycle later: from the state decode to the write
            # enables of block RAMs across the die was the ULX3S-85F critical path (4.2 ns
            # of routing).  The last beat lands before the first read (setup comes first).
            w_beat_q, w_take_q = Signal(self.w.p.shape()), Signal()
            m.d.sync += [w_beat_q.eq(w_beat), w_take_q.eq(w_take)]
            w_beat, w_take = w_beat_q, w_take_q
        m.d.comb += [w_wr.addr.eq(w_beat.addr), w_wr.data.eq(w_beat.data),
                     w_wr.en.eq(w_take & ~w_beat.bias),
                     b_wr.addr.eq(w_beat.addr), b_wr.data.eq(w_beat.data),
                     b_wr.en.eq(w_take & w_beat.bias),
                     self.w.ready.eq(state == ST["LOAD"])]

        def load_step(index):
            if isinstance(index, int):
                m.d.sync += p.eq(pl.const(step_const(steps[index])))
                return
            with m.Switch(index):
                for n, s in enumerate(steps):
                    with m.Case(n):
                        m.d.sync += p.eq(pl.const(step_const(s)))

        def begin_step():
            # counters of the address generator, from the step's constants
            m.d.sync += [kx.eq(0), ky.eq(0), ci.eq(0), ox.eq(0), ct.eq(0),
                         kcount.eq(0), kyw.eq(0), cioff.eq(0), tplane.eq(0), pix.eq(0),
                         ct_index.eq(0), issued.eq(0), rows_done.eq(0),
                         at_last.eq(p.rows == 1),
                         xb.eq(-p.left), yb.eq(-p.top), ybw.eq(p.ybw0),
                         band.eq(0), dy.eq(0), dx.eq(0), px.eq(0), ho_left.eq(p.ho),
                         band_pix.eq(0), pidx_band.eq(0), ct_pindex.eq(0),
                         band_yb.eq(-p.top), band_ybw.eq(p.ybw0),
                         wt.eq(p.w_base)]
            # the loops' "last" flags for the counters' start values
            flag([raddr.eq(p.a0), pix_a.eq(p.a0), col_a.eq(p.a0), band_a.eq(p.a0),
                  tile_a.eq(p.a0)])
            flag([last_kx.eq(p.kw == 1), last_ky.eq(p.kh == 1), last_ci.eq(p.cin == 1),
                  last_dy.eq((p.ho == 1) | (p.kp == 1)), last_ox.eq(p.wo == 1),
                  last_band.eq(p.ho <= p.kp), next_last.eq(p.nl0),
                  last_ct.eq(p.ct_count == 1)])
            inner_flags(p.kw == 1, p.kh == 1, p.cin == 1)
            outer_flags((p.ho == 1) | (p.kp == 1), p.wo == 1, p.ho <= p.kp, p.ct_count == 1)
            if ws:
                m.d.sync += ws_reset
            else:
                m.d.sync += [row.eq(0), row_off.eq(0), prow_off.eq(0)]

        with m.Switch(state):
            with m.Case(ST["LOAD"]):
                with m.If(self.i.valid):
                    m.d.sync += in_count.eq(in_count + 1)
                    with m.If(in_count == P.input_words - 1):
                        m.d.sync += [in_count.eq(0), state.eq(ST["SETUP"]), step.eq(0),
                                     cycles_r.eq(0), beats_r.eq(0)]
                        m.d.sync += clear_counters
                        load_step(0)
            with m.Case(ST["SETUP"]):
                # p holds the step's constants; start the key schedule
                m.d.comb += keys.start.eq(1)
                m.d.sync += [state.eq(ST["KEYS"]), mode.eq(self.rounding[p.layer])]
                begin_step()
            with m.Case(ST["KEYS"]):
                with m.If(keys.done):
                    m.d.sync += [state.eq(ST["RUN"]), run_gen.eq(1)]
            with m.Case(ST["RUN"]):
                with m.If(step_done):
                    m.d.sync += run_gen.eq(0)
                    with m.If(step == S - 1):
                        m.d.sync += [state.eq(ST["OUTPUT"]), out_count.eq(0)]
                    with m.Else():
                        m.d.sync += [state.eq(ST["SETUP"]), step.eq(step + 1)]
                        load_step(step + 1)
            with m.Case(ST["OUTPUT"]):
                m.d.comb += [act_addr.eq(P.output_base + out_count), act_en.eq(o_advance)]
                if cfg.registered_memories:
                    # two read stages, both moved by o_advance: ``o_pending`` is the word
                    # read in the cycle before o_valid's
                    o_pending, o_pending_last = Signal(), Signal()
                    with m.If(o_advance):
                        m.d.sync += [o_valid.eq(o_pending), o_last.eq(o_pending_last)]
                        with m.If(out_count == P.output_words):
                            m.d.sync += o_pending.eq(0)
                            with m.If(~o_pending):
                                m.d.sync += state.eq(ST["LOAD"])
                        with m.Else():
                            m.d.sync += [o_pending.eq(1),
                                         o_pending_last.eq(out_count == P.output_words - 1),
                                         out_count.eq(out_count + 1)]
                else:
                    with m.If(o_advance):
                        with m.If(out_count == P.output_words):
                            m.d.sync += [o_valid.eq(0), state.eq(ST["LOAD"])]
                        with m.Else():
                            m.d.sync += [o_valid.eq(1),
                                         o_last.eq(out_count == P.output_words - 1),
                                         out_count.eq(out_count + 1)]
        return m

    def _counter_memory(self, m, platform, counted, cycles_r, beats_r, computing, sat_add,
                        sat_slot, cw, sw):
        """The counter port: per-layer counters in a memory instead of registers.

        As registers (``layer_cycles``, ``saturations``), the per-layer counters, their
        shared adders and the link's word multiplexer were ~640 LUT4 and 250 flip-flops of
        an iCE40 lenet5 8x2 build.  A run's steps go through the layers in order
        (checked in ``__init__``), so each slot collects all its events in one contiguous
        *session*: its counts are summed in two registers (``acc_c``, ``acc_s``) and
        written to the memory once, when the events move to another slot (two cycles: the
        cycle word, then the saturation word; slots change at step loads, which are
        further apart).  A read of the session's own slot is served from the registers.
        A ``valid`` bit per slot, cleared at the run's start, makes the slots not yet
        written read 0.

        Events are attributed as with the registers: a compute cycle to ``p.slot``, a
        row's saturations to ``p.slot`` a cycle after the write (both here a cycle
        later, through ``sat_slot``).

        Returns the statements that clear the counters at a run's start.
        """
        P = self._program
        L = len(P.network.layers)
        NS = len(counted)
        width = max(cw, sw)
        # On the iCE40, block RAM, not flip-flops: the point of the memory (yosys would
        # otherwise build one this small from registers).  Elsewhere yosys's choice (the
        # ECP5's distributed RAM: a DP16KD's 5.8 ns clock-to-output would leave too little
        # of the 8 ns period for the multiplexer behind it).
        attrs = {"ram_style": "block"} if is_ice40(platform) else None
        cmem = m.submodules.counter_mem = memory.Memory(
            shape=unsigned(width), depth=2 * NS, init=[], attrs=attrs)
        wr, rd = cmem.write_port(), cmem.read_port()

        comp_d = Signal()
        m.d.sync += comp_d.eq(computing)
        acc_slot = Signal.like(sat_slot)
        acc_c, acc_s = Signal(cw), Signal(sw)
        dirty = Signal()                        # the session has had an event
        valid = Signal(NS)
        fl_pending = Signal()
        fl_addr = Signal(range(2 * NS))
        fl_data = Signal(sw)
        event = comp_d | (sat_add != 0)
        with m.If(sat_slot != acc_slot):
            with m.If(dirty):
                m.d.comb += [wr.en.eq(1), wr.addr.eq(acc_slot), wr.data.eq(acc_c)]
                m.d.sync += [fl_pending.eq(1), fl_addr.eq(NS + acc_slot), fl_data.eq(acc_s),
                             valid.bit_select(acc_slot, 1).eq(1)]
            m.d.sync += [acc_slot.eq(sat_slot), acc_c.eq(comp_d), acc_s.eq(sat_add),
                         dirty.eq(event)]
        with m.Else():
            m.d.sync += [acc_c.eq(acc_c + comp_d), acc_s.eq(acc_s + sat_add),
                         dirty.eq(dirty | event)]
        with m.If(fl_pending):
            m.d.comb += [wr.en.eq(1), wr.addr.eq(fl_addr), wr.data.eq(fl_data)]
            m.d.sync += fl_pending.eq(0)

        # the read: word w's source decoded from constant tables, registered with the
        # memory's read (data a cycle after the address)
        kinds = {"zero": 0, "cycles": 1, "beats": 2, "memory": 3}
        kind_of, slot_of, sat_of = [], [], []
        for w in range(counter_words(L)):
            if w < 2:
                kind_of.append(kinds["cycles" if w == 0 else "beats"])
                slot_of.append(0), sat_of.append(0)
                continue
            layer, sat = (w - 2) % L, (w - 2) >= L
            kind_of.append(kinds["memory"] if layer in counted else kinds["zero"])
            slot_of.append(counted.index(layer) if layer in counted else 0)
            sat_of.append(int(sat))
        a = self.counter_addr
        kind, slot, sat = Signal(2), Signal.like(sat_slot), Signal()
        m.d.comb += [kind.eq(Array(kind_of)[a]), slot.eq(Array(slot_of)[a]),
                     sat.eq(Array(sat_of)[a]),
                     rd.addr.eq(Mux(sat, NS + slot, slot))]
        kind_r, sat_r, live_r, valid_r = Signal(2), Signal(), Signal(), Signal()
        m.d.sync += [kind_r.eq(kind), sat_r.eq(sat),
                     live_r.eq(dirty & (slot == acc_slot)),
                     valid_r.eq(valid.bit_select(slot, 1))]
        stored = Mux(live_r, Mux(sat_r, acc_s, acc_c), Mux(valid_r, rd.data, 0))
        with m.Switch(kind_r):
            with m.Case(kinds["cycles"]):
                m.d.comb += self.counter_data.eq(cycles_r)
            with m.Case(kinds["beats"]):
                m.d.comb += self.counter_data.eq(beats_r)
            with m.Case(kinds["memory"]):
                m.d.comb += self.counter_data.eq(stored)
        return [acc_c.eq(0), acc_s.eq(0), dirty.eq(0), valid.eq(0)]

    def _ws_datapath(self, m, P, p, run, issued, banks, w_rd, b_rd, gen):
        """The weight-stationary matmul datapath (docs/accelerator.md).

        A static schedule of slots: slot ``s`` (one output pixel, one k-tile) reads the
        ``R`` reduction elements of the pixel from all ``C`` banks at once (``R`` cycles,
        the first corner turn fills an ``R x C`` half-buffer), then drains the half as
        ``C`` array beats (beat ``c`` = image ``c``'s ``R`` values) starting ``R + 1``
        cycles after the slot began.  Slots are ``max(R, C)`` cycles apart; a block's
        last slot waits so that blocks are at least ``2R + C - 1`` cycles apart (the
        array's weight double buffer), so the array never holds a beat back.  The weight
        words stream into the array as fast as it takes them.

        Array outputs go to a partial-sum memory of ``G * C`` entries (first k-tile
        writes, later ones add); the last k-tile's entries of a pixel (``C`` images x
        ``C`` channels) fill the output transposer, which drains as ``C`` rows (one
        channel, ``C`` images) into the output path.

        Returns the array's beat-taken signal, the statements that reset the datapath
        at a step's start, and the row entering the output path (a dict of signals).
        """
        cfg = P.config
        R, C = cfg.rows, cfg.cols
        aw, ww, accw = P.act_width, P.weight_width, P.acc_width
        slot = max(R, C)
        ws_steps = [s for s in P.steps if s.dataflow == "ws"]
        reset = []

        def reg(shape, name, init_stmt=None):
            sig = Signal(shape, name=name)
            if init_stmt is not None:
                reset.append(sig.eq(init_stmt))
            return sig

        array_acc = max(accw, accumulator_width(aw, ww, R))
        array = m.submodules.array = SystolicArray(
            rows=R, cols=C, in_width=aw, weight_width=ww, dataflow="ws",
            multiplier=cfg.multiplier, acc_width=array_acc)

        # -- reader: slots, the first corner turn ---------------------------------------
        kx, ky, ci, kyw, cioff = gen["kx"], gen["ky"], gen["ci"], gen["kyw"], gen["cioff"]
        # the output pixel in the generator's band order (a fused pool's window is k*k
        # consecutive pixels; raster order without one)
        pix_names = ("dy", "ox", "dx", "px", "band", "ho_left", "band_yb", "band_ybw",
                     "band_pix", "pidx_band", "xb", "yb", "ybw", "pix")
        cur_g = {n: gen[n] for n in pix_names}
        start_g = {"dy": 0, "ox": 0, "dx": 0, "px": 0, "band": 0, "ho_left": p.ho,
                   "band_yb": -p.top, "band_ybw": p.ybw0, "band_pix": 0, "pidx_band": 0,
                   "xb": -p.left, "yb": -p.top, "ybw": p.ybw0, "pix": 0}
        active = Signal()
        m.d.comb += active.eq(run & ~p.pool & ~issued)
        tick = reg(range(slot + P.ws_block_min + 1), "ws_tick", 0)
        half = reg(1, "ws_half", 0)
        pg = reg(Signal.like(p.ws_g).shape(), "ws_pg", 0)        # pixel in the group
        kt = reg(Signal.like(p.ws_kt).shape(), "ws_kt", 0)
        nt = reg(Signal.like(p.ct_count).shape(), "ws_nt", 0)
        gleft = reg(Signal.like(p.howo).shape(), "ws_gleft", p.howo)
        kmax = max(s.k_tiles * R for s in ws_steps)
        kidx = reg(_u(kmax), "ws_kidx", 0)
        # the reduction counters at the k-tile's start, the pixel at the group's start
        k0 = {n: reg(Signal.like(v).shape(), f"ws_k0_{n}", 0)
              for n, v in (("kx", kx), ("ky", ky), ("ci", ci), ("kyw", kyw),
                           ("cioff", cioff), ("kidx", kidx))}
        g0 = {n: reg(v.shape(), f"ws_g0_{n}", start_g[n]) for n, v in cur_g.items()}
        cur_k = {"kx": kx, "ky": ky, "ci": ci, "kyw": kyw, "cioff": cioff, "kidx": kidx}

        gsize = Signal.like(gleft)
        last_group = Signal()
        m.d.comb += [gsize.eq(Mux(gleft < p.ws_g, gleft, p.ws_g)),
                     last_group.eq(gleft <= p.ws_g)]
        last_pg = pg == gsize - 1
        ext = Signal.like(p.ws_ext)
        m.d.comb += ext.eq(Mux(last_pg, Mux(last_group, p.ws_ext_last, p.ws_ext), 0))
        reading = Signal()
        slot_end = Signal()
        m.d.comb += [reading.eq(active & (tick < R)),
                     slot_end.eq(active & (tick == slot - 1 + ext))]

        # the next reduction element (kx fastest, then ky, then ci)
        nxt_k = {n: Signal.like(v, name=f"ws_next_{n}") for n, v in cur_k.items()}
        m.d.comb += [nxt_k[n].eq(v) for n, v in cur_k.items()]
        m.d.comb += nxt_k["kidx"].eq(kidx + 1)
        with m.If(kx != p.kw - 1):
            m.d.comb += nxt_k["kx"].eq(kx + 1)
        with m.Else():
            m.d.comb += nxt_k["kx"].eq(0)
            with m.If(ky != p.kh - 1):
                m.d.comb += [nxt_k["ky"].eq(ky + 1), nxt_k["kyw"].eq(kyw + p.w)]
            with m.Else():
                m.d.comb += [nxt_k["ky"].eq(0), nxt_k["kyw"].eq(0),
                             nxt_k["ci"].eq(ci + 1), nxt_k["cioff"].eq(cioff + p.hw)]
        # the next output pixel: the generator's band order (down a band's kp rows,
        # then the next column, then the next band)
        g = cur_g
        nxt_g = {n: Signal.like(v, name=f"ws_next_{n}") for n, v in cur_g.items()}
        m.d.comb += [nxt_g[n].eq(v) for n, v in cur_g.items()]
        with m.If(~gen["last_dy"]):
            m.d.comb += [nxt_g["dy"].eq(g["dy"] + 1), nxt_g["yb"].eq(g["yb"] + p.stride),
                         nxt_g["ybw"].eq(g["ybw"] + Mux(p.stride == 2, p.w << 1, p.w)),
                         nxt_g["pix"].eq(g["pix"] + p.wo)]
        with m.Elif(~gen["last_ox"]):
            m.d.comb += [nxt_g["dy"].eq(0), nxt_g["ox"].eq(g["ox"] + 1),
                         nxt_g["xb"].eq(g["xb"] + p.stride), nxt_g["yb"].eq(g["band_yb"]),
                         nxt_g["ybw"].eq(g["band_ybw"]),
                         nxt_g["pix"].eq(g["band_pix"] + g["ox"] + 1)]
            with m.If(g["dx"] == p.kp - 1):
                m.d.comb += [nxt_g["dx"].eq(0), nxt_g["px"].eq(g["px"] + 1)]
            with m.Else():
                m.d.comb += nxt_g["dx"].eq(g["dx"] + 1)
        with m.Else():
            m.d.comb += [nxt_g["dy"].eq(0), nxt_g["ox"].eq(0), nxt_g["xb"].eq(-p.left),
                         nxt_g["dx"].eq(0), nxt_g["px"].eq(0),
                         nxt_g["band"].eq(g["band"] + 1),
                         nxt_g["ho_left"].eq(g["ho_left"] - p.kp),
                         nxt_g["band_yb"].eq(g["band_yb"] + p.band_ystep),
                         nxt_g["band_ybw"].eq(g["band_ybw"] + p.band_ywstep),
                         nxt_g["band_pix"].eq(g["band_pix"] + p.band_pixstep),
                         nxt_g["pidx_band"].eq(g["pidx_band"] + p.wp),
                         nxt_g["yb"].eq(g["band_yb"] + p.band_ystep),
                         nxt_g["ybw"].eq(g["band_ybw"] + p.band_ywstep),
                         nxt_g["pix"].eq(g["band_pix"] + p.band_pixstep)]

        # each pixel's output indices and pooling-window flags, written in the group's
        # last k-tile, read by the output side when the pixel's sums come out; two
        # copies by group parity (a group's next one may write while it is read)
        gmax_ = max(s.group for s in ws_steps)
        meta_layout = data.StructLayout({
            "pix": unsigned(32), "ppix": unsigned(32), "pfirst": 1, "plast": 1,
            "inwin": 1})
        pmeta = [[Signal(meta_layout, name=f"ws_meta_{h}_{i}") for i in range(gmax_)]
                 for h in range(2)]
        gpar = reg(1, "ws_gpar", 0)
        with m.If(active & (tick == 0) & (kt == p.ws_kt - 1)):
            for h in range(2):
                for i in range(gmax_):
                    with m.If((gpar == h) & (pg == i)):
                        e = pmeta[h][i]
                        m.d.sync += [
                            e.pix.eq(g["pix"]), e.ppix.eq(g["pidx_band"] + g["px"]),
                            e.pfirst.eq((g["dy"] == 0) & (g["dx"] == 0)),
                            e.plast.eq((g["dy"] == p.kp - 1) & (g["dx"] == p.kp - 1)),
                            e.inwin.eq((g["band"] < p.hp) & (g["ox"] < p.wpkp))]
        with m.If(slot_end & last_pg & (kt == p.ws_kt - 1)):
            m.d.sync += gpar.eq(~gpar)

        with m.If(active):
            m.d.sync += tick.eq(tick + 1)
        with m.If(reading):
            m.d.sync += [v.eq(nxt_k[n]) for n, v in cur_k.items()]
        with m.If(slot_end):
            m.d.sync += [tick.eq(0), half.eq(~half)]
            with m.If(~last_pg):
                # next pixel of the group, same k-tile
                m.d.sync += pg.eq(pg + 1)
                m.d.sync += [v.eq(k0[n]) for n, v in cur_k.items()]
                m.d.sync += [v.eq(nxt_g[n]) for n, v in cur_g.items()]
            with m.Else():
                m.d.sync += pg.eq(0)
                with m.If(kt != p.ws_kt - 1):
                    # next k-tile: it starts where this slot's reads ended
                    m.d.sync += kt.eq(kt + 1)
                    m.d.sync += [k0[n].eq(Mux(reading, nxt_k[n], v))
                                 for n, v in cur_k.items()]
                    m.d.sync += [v.eq(Mux(reading, nxt_k[n], v)) for n, v in cur_k.items()]
                    m.d.sync += [v.eq(g0[n]) for n, v in cur_g.items()]
                with m.Else():
                    # next group (or channel tile)
                    m.d.sync += kt.eq(0)
                    m.d.sync += [k0[n].eq(0) for n in cur_k]
                    m.d.sync += [v.eq(0) for v in cur_k.values()]
                    with m.If(~last_group):
                        m.d.sync += gleft.eq(gleft - p.ws_g)
                        m.d.sync += [v.eq(nxt_g[n]) for n, v in cur_g.items()]
                        m.d.sync += [g0[n].eq(nxt_g[n]) for n in cur_g]
                    with m.Else():
                        m.d.sync += gleft.eq(p.howo)
                        m.d.sync += [v.eq(start_g[n]) for n, v in cur_g.items()]
                        m.d.sync += [g0[n].eq(start_g[n]) for n in cur_g]
                        with m.If(nt != p.ct_count - 1):
                            m.d.sync += nt.eq(nt + 1)
                        with m.Else():
                            m.d.sync += issued.eq(1)

        # the read lands a cycle later; zero padding and k beyond K are masked
        rd_valid, rd_mask, rd_half, rd_last, rd_first = (
            Signal(name="ws_rd_valid"), Signal(name="ws_rd_mask"),
            Signal(name="ws_rd_half"), Signal(name="ws_rd_last"),
            Signal(name="ws_rd_first"))
        rd_r = Signal(range(R), name="ws_rd_r")
        m.d.sync += [rd_valid.eq(reading), rd_r.eq(tick[:len(rd_r)]),
                     rd_mask.eq(gen["addr_inside"] & (kidx < p.k)), rd_half.eq(half),
                     rd_last.eq(tick == R - 1), rd_first.eq(pg == 0)]
        turn = [[[Signal(signed(aw), name=f"ws_turn_{h}_{r}_{j}") for j in range(C)]
                 for r in range(R)] for h in range(2)]
        with m.If(rd_valid):
            for h in range(2):
                for r in range(R):
                    with m.If((rd_half == h) & (rd_r == r)):
                        m.d.sync += [turn[h][r][j].eq(Mux(rd_mask, banks[j][0].data, 0))
                                     for j in range(C)]

        # drain: beat c = image c's R values of the slot
        d_active = reg(1, "ws_drain", 0)
        d_c = Signal(range(C), name="ws_drain_c")
        d_half, d_first = Signal(name="ws_drain_half"), Signal(name="ws_drain_first")
        with m.If(d_active):
            m.d.sync += d_c.eq(d_c + 1)
            with m.If(d_c == C - 1):
                m.d.sync += [d_active.eq(0), d_c.eq(0)]
        with m.If(rd_valid & rd_last):
            m.d.sync += [d_active.eq(1), d_c.eq(0), d_half.eq(rd_half),
                         d_first.eq(rd_first)]
        m.d.comb += [array.i.valid.eq(d_active),
                     array.i.p.first.eq(d_first & (d_c == 0))]
        for r in range(R):
            pick = [Array(turn[h][r][j] for j in range(C))[d_c] for h in range(2)]
            m.d.comb += array.i.p.a[r].eq(Mux(d_half, pick[1], pick[0]))
        array_take = Signal()
        m.d.comb += array_take.eq(array.i.valid & array.i.ready)

        # -- weights: prefetched words, taken as the array allows ----------------------
        wv = reg(1, "ws_w_valid", 0)
        wdone = reg(1, "ws_w_done", 0)
        wi = reg(Signal.like(p.ws_kr).shape(), "ws_w_i", 0)
        wgleft = reg(Signal.like(p.howo).shape(), "ws_w_gleft", p.howo)
        wnt = reg(Signal.like(p.ct_count).shape(), "ws_w_nt", 0)
        wbase = reg(_u(P.weight_words), "ws_w_base", p.w_base)
        w_take = Signal()
        fetch = Signal()
        m.d.comb += [
            w_take.eq(array.w.valid & array.w.ready),
            fetch.eq(run & ~p.pool & (~wv | w_take) & ~wdone),
            w_rd.addr.eq(wbase + wi), w_rd.en.eq(fetch),
            array.w.valid.eq(wv),
            array.w.payload.eq(data.View(data.ArrayLayout(signed(ww), C), w_rd.data)),
        ]
        with m.If(fetch):
            m.d.sync += wv.eq(1)
            with m.If(wi != p.ws_kr - 1):
                m.d.sync += wi.eq(wi + 1)
            with m.Else():
                m.d.sync += wi.eq(0)
                with m.If(wgleft > p.ws_g):
                    m.d.sync += wgleft.eq(wgleft - p.ws_g)
                with m.Else():
                    m.d.sync += wgleft.eq(p.howo)
                    with m.If(wnt != p.ct_count - 1):
                        m.d.sync += [wnt.eq(wnt + 1), wbase.eq(wbase + p.ws_kr)]
                    with m.Else():
                        m.d.sync += wdone.eq(1)
        with m.Elif(w_take):
            m.d.sync += wv.eq(0)

        # -- array outputs: partial sums ------------------------------------------------
        m.d.comb += array.o.ready.eq(1)
        gmax = max(s.group for s in ws_steps)
        psum = m.submodules.psum = memory.Memory(
            shape=data.ArrayLayout(signed(accw), C), depth=max(gmax * C, 2), init=[])
        ps_rd = psum.read_port()
        ps_wr = psum.write_port()
        oc = reg(range(C), "ws_o_c", 0)
        op = reg(Signal.like(p.ws_g).shape(), "ws_o_p", 0)
        oe = reg(range(max(gmax * C, 2)), "ws_o_e", 0)
        okt = reg(Signal.like(p.ws_kt).shape(), "ws_o_kt", 0)
        ogleft = reg(Signal.like(p.howo).shape(), "ws_o_gleft", p.howo)
        ogpar = reg(1, "ws_o_gpar", 0)                            # the group's parity
        oindex = reg(unsigned(32), "ws_o_index", 0)                # nt * C * pixels
        opindex = reg(unsigned(32), "ws_o_pindex", 0)              # nt * C * pooled pixels
        och = reg(Signal.like(p.cout).shape(), "ws_o_ch", 0)      # nt * C
        ob = reg(_u(P.bias_words), "ws_o_b", p.b_base)
        ogsize = Signal.like(ogleft)
        m.d.comb += [ogsize.eq(Mux(ogleft < p.ws_g, ogleft, p.ws_g)),
                     ps_rd.addr.eq(oe), ps_rd.en.eq(1),
                     b_rd.addr.eq(ob), b_rd.en.eq(1)]
        with m.If(array.o.valid):
            m.d.sync += [oc.eq(oc + 1), oe.eq(oe + 1)]
            with m.If(oc == C - 1):
                m.d.sync += [oc.eq(0), op.eq(op + 1)]
                with m.If(op == ogsize - 1):
                    m.d.sync += [op.eq(0), oe.eq(0), okt.eq(okt + 1)]
                    with m.If(okt == p.ws_kt - 1):
                        m.d.sync += okt.eq(0)
                        m.d.sync += ogpar.eq(~ogpar)
                        with m.If(ogleft > p.ws_g):
                            m.d.sync += ogleft.eq(ogleft - p.ws_g)
                        with m.Else():
                            m.d.sync += [ogleft.eq(p.howo),
                                         oindex.eq(oindex + p.ws_ct_index),
                                         opindex.eq(opindex + p.ws_ct_pindex),
                                         och.eq(och + C), ob.eq(ob + 1)]
        sb_valid, sb_first, sb_last = (Signal(name="ws_sb_valid"), Signal(name="ws_sb_first"),
                                       Signal(name="ws_sb_last"))
        sb_out = Signal(data.ArrayLayout(signed(accw), C), name="ws_sb_out")
        sb_e = Signal.like(oe, name="ws_sb_e")
        sb_c = Signal(range(C), name="ws_sb_c")
        sb_index = Signal(32, name="ws_sb_index")
        sb_pindex = Signal(32, name="ws_sb_pindex")
        sb_meta = Signal(meta_layout, name="ws_sb_meta")
        sb_ch = Signal.like(och, name="ws_sb_ch")
        o_meta = Signal(meta_layout, name="ws_o_meta")
        m.d.comb += o_meta.eq(Mux(ogpar, Array(pmeta[1])[op], Array(pmeta[0])[op]))
        m.d.sync += [sb_valid.eq(array.o.valid), sb_first.eq(okt == 0),
                     sb_last.eq(okt == p.ws_kt - 1), sb_e.eq(oe), sb_c.eq(oc),
                     sb_index.eq(oindex + o_meta.pix),
                     sb_pindex.eq(opindex + o_meta.ppix), sb_meta.eq(o_meta),
                     sb_ch.eq(och)]
        m.d.sync += [sb_out[n].eq(array.o.payload[n]) for n in range(C)]
        total = Signal(data.ArrayLayout(signed(accw), C), name="ws_sum")
        for n in range(C):
            m.d.comb += total[n].eq(Mux(sb_first, 0, ps_rd.data[n]) + sb_out[n])
        m.d.comb += [ps_wr.addr.eq(sb_e), ps_wr.data.eq(total), ps_wr.en.eq(sb_valid)]

        # -- the output transposer: C images x C channels -> C rows ----------------------
        tr = [[[Signal(signed(accw), name=f"ws_tr_{h}_{j}_{n}") for n in range(C)]
               for j in range(C)] for h in range(2)]
        th = reg(1, "ws_tr_half", 0)
        x_active = reg(1, "ws_x_active", 0)
        x_n = Signal(range(C), name="ws_x_n")
        x_half = Signal(name="ws_x_half")
        x_bias = Signal(data.ArrayLayout(signed(accw), C), name="ws_x_bias")
        x_index = Signal(32, name="ws_x_index")
        x_pindex = Signal(32, name="ws_x_pindex")
        x_meta = Signal(meta_layout, name="ws_x_meta")
        x_ch = Signal.like(och, name="ws_x_ch")
        with m.If(sb_valid & sb_last):
            for h in range(2):
                for j in range(C):
                    with m.If((th == h) & (sb_c == j)):
                        m.d.sync += [tr[h][j][n].eq(total[n]) for n in range(C)]
        with m.If(x_active):
            m.d.sync += [x_n.eq(x_n + 1), x_index.eq(x_index + p.howo),
                         x_pindex.eq(x_pindex + p.hpwp)]
            with m.If(x_n == C - 1):
                m.d.sync += [x_active.eq(0), x_n.eq(0)]
        with m.If(sb_valid & sb_last & (sb_c == C - 1)):
            m.d.sync += [th.eq(~th), x_active.eq(1), x_n.eq(0), x_half.eq(th),
                         x_bias.eq(b_rd.data), x_index.eq(sb_index),
                         x_pindex.eq(sb_pindex), x_meta.eq(sb_meta), x_ch.eq(sb_ch)]
        acc = Signal(data.ArrayLayout(signed(accw), C), name="ws_row_acc")
        for j in range(C):
            pick = [Array(tr[h][j][n] for n in range(C))[x_n] for h in range(2)]
            m.d.comb += acc[j].eq(Mux(x_half, pick[1], pick[0]))
        rows = {"valid": x_active, "acc": acc,
                "bias": Array(x_bias[n] for n in range(C))[x_n],
                "index": x_index, "write": (x_ch + x_n) < p.cout, "pindex": x_pindex,
                "pfirst": x_meta.pfirst, "plast": x_meta.plast, "inwin": x_meta.inwin,
                "row": x_n}
        return array_take, reset, rows
