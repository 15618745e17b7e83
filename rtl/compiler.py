"""The compiler: a :class:`~systolic.golden.ir.QNetwork` onto the accelerator.

From a quantized network and an :class:`ArrayConfig` it produces a :class:`Program`: the
layer steps the controller runs (tiling of every conv/dense layer onto the array, the
pooling passes), the memory map (weights, biases, the two activation regions), the memory
images baked into the bitstream, and the exact cycle model.

The mapping (docs/accelerator.md has the picture):

* **Batch across columns.**  The array's ``C`` columns are ``C`` images run in lock step;
  column ``j`` reads and writes activation bank ``j``, which holds image ``j``'s tensors.
  Every bank is read at the same address each cycle, so the array gets ``C`` activations
  per cycle with no crossbar and no bank conflict, and a dense layer (one output pixel)
  fills every column just as a convolution does.
* **Output channels down the rows.**  A tile is ``R`` output channels of one output pixel
  for the ``C`` images: ``K = C_in * kh * kw`` beats, beat ``k`` carrying the ``R``
  weights ``W[co, k]`` (one weight-memory word) and the ``C`` activations of patch
  element ``k`` (``(ci, ky, kx)`` order, zero padding made by the address generator).
* **Requantization** per output row (one channel of one pixel for ``C`` images): the
  ``C`` lanes share the bias, the flat output index and so ``H(seed, layer, index)``.
* **Pooling** runs as its own pass over the activation memory (``k*k`` reads per output),
  its result through the same requantization lanes (an average's divide is the shift; a
  maximum passes with shift 0).

**Weight-stationary** (``dataflow="ws"``): the same banks and output path; a block of
``R`` reduction elements x ``C`` output channels stays in the array, a corner turn
feeds it one image's ``R`` elements per beat, partial sums accumulate over k-tiles and
a transposer turns each pixel back into output rows (docs/accelerator.md).

Weights and biases are baked in at generation time (and can be rewritten at run time
through the accelerator's weight stream).
"""

from dataclasses import dataclass, field, replace

import numpy as np

from systolic.golden import srgen
from systolic.golden.accumulator import accumulator_width
from systolic.golden.errors import ConstraintError, NetworkError
from systolic.golden.ir import QNetwork
from systolic.golden.ops import align_bias, clamp_bounds

from ._params import check_int
from .array import (DATAFLOWS, INTERCONNECTS, MAX_SIZE, array_latency,
                    check_interconnect, check_product_register)
from .mac import MULTIPLIERS
from .requant import requant_config
from .srgen import check_rounds_per_stage, pipeline_stages

__all__ = ["ArrayConfig", "Step", "Program", "compile_network", "PRESETS",
           "LANE_LATENCY", "WEIGHT_MEMORIES"]

#: Requantization lane latency with the generator outside the lane (``external_h``).
LANE_LATENCY = 4
#: Where the weights live (ArrayConfig.weight_memory); ``"auto"`` is resolved by
#: :func:`compile_network` to one of the other two.
WEIGHT_MEMORIES = ("bram", "spram", "auto")
#: The lanes' largest left shift (a larger one gives the same results, see requant_shift).
MAX_LEFT_SHIFT = 16


@dataclass(frozen=True)
class ArrayConfig:
    """How to build the accelerator for a network.

    Parameters
    ----------
    rows : int
        PE rows ``R`` (output channels per tile), 1..32.
    cols : int
        PE columns ``C``, 1..32: the batch, images computed in lock step.
    dataflow : str
        ``"os"`` (output-stationary: ``R`` output channels of one pixel per tile) or
        ``"ws"`` (weight-stationary: a block of ``R`` reduction elements x ``C`` output
        channels stays in the array; see docs/accelerator.md).
    multiplier : str
        ``"inferred"``, ``"lut"`` or ``"sb_mac16"`` (:mod:`systolic.rtl.mac`).
    stochastic : bool
        Build the stochastic-rounding generator (else mode ``stochastic`` is rejected).
    rounds_per_stage : int
        Generator rounds per pipeline stage.
    weight_memory_bits, activation_memory_bits : int or None
        Capacity limits (``None``: no limit); a network that needs more raises
        :class:`~systolic.golden.errors.ConstraintError`.
    fuse_pool : bool
        Fuse a max pool (stride = kernel) that follows a convolution into the
        convolution's output (no separate pass, no stored conv output), in either
        dataflow.
    weight_memory : str
        ``"bram"`` (block RAM, initialized by the bitstream), ``"spram"`` (iCE40
        UltraPlus SPRAM, :mod:`systolic.rtl.spram`: 8x larger, but empty at power-up, so
        the weights are written through the weight stream before the first run), or
        ``"auto"``: chosen by size when the network is compiled, block RAM if the weight
        and bias tensors fit in ``weight_memory_bits`` (the block-RAM budget; no budget:
        they fit), SPRAM if they do not (the biases stay in block RAM either way, and
        ``weight_memory_bits`` then no longer limits the weights: the board's SPRAM count
        does, see :func:`systolic.boards.targets.check_fit`).  The program's ``config``
        holds the choice.
    interconnect : str
        ``"systolic"`` (operands hop from PE to PE through skew and deskew buffers: short
        wires, for large arrays and high clocks) or ``"broadcast"`` (output-stationary
        only: each operand reaches its whole row or column at once; no skew, deskew or
        operand registers, the area of a small iCE40 array; see
        :class:`~systolic.rtl.array.BroadcastGrid`).  Same results, the array's latency
        differs (:func:`~systolic.rtl.array.array_latency`).
    registered_memories : bool
        Output-stationary only: the activation and weight memories' read data pass a
        register before the beat's multiplexers and the pooling compare (in block RAM,
        the RAM's own output register on the ECP5,
        :class:`~systolic.rtl.bram.RegisteredReadMemory`), and the lanes' results and
        the output writes pass one each before the banks: three more cycles per step
        (:attr:`Program.read_latency`, :attr:`Program.write_latency`).  For the ECP5
        presets: a DP16KD block RAM's clock-to-output is 5.8 ns of the 8 ns period at
        125 MHz without its register.
    product_register : bool
        Output-stationary systolic only: one more register between each PE's multiplier
        and its accumulator, one more cycle of array latency
        (:func:`~systolic.rtl.array.array_latency`).  For the ECP5 presets, whose DSP
        blocks spread over the die.
    queue_memory : bool
        Output-stationary only: the output path's two rings (the rows' tags beside the
        requantization lanes, and the fused pool's running maxima, one per row of a
        tile) in memory (:class:`~systolic.rtl.ring.Ring`; block RAM on the iCE40, three
        blocks for an 8x2 array) instead of flip-flops, each of which takes an iCE40
        logic cell of its own (~180 of the 5,280 for the 8x2).  Same cycles.  For the
        iCE40 presets.

    Raises
    ------
    TypeError, ValueError
        A parameter of the wrong type or out of range.
    """
    rows: int = 8
    cols: int = 8
    dataflow: str = "os"
    multiplier: str = "inferred"
    stochastic: bool = True
    rounds_per_stage: int = 3
    weight_memory_bits: int | None = None
    activation_memory_bits: int | None = None
    fuse_pool: bool = True
    weight_memory: str = "bram"
    interconnect: str = "systolic"
    registered_memories: bool = False
    product_register: bool = False
    queue_memory: bool = False

    def __post_init__(self):
        check_int("Array rows", self.rows, 1, MAX_SIZE)
        check_int("Array columns", self.cols, 1, MAX_SIZE)
        if self.dataflow not in DATAFLOWS:
            raise ValueError(f"Dataflow must be one of {', '.join(DATAFLOWS)}, not "
                             f"{self.dataflow!r}")
        if self.multiplier not in MULTIPLIERS:
            raise ValueError(f"Multiplier must be one of {', '.join(MULTIPLIERS)}, not "
                             f"{self.multiplier!r}")
        if not isinstance(self.stochastic, bool):
            raise TypeError(f"Stochastic must be a bool, not {self.stochastic!r}")
        if self.weight_memory not in WEIGHT_MEMORIES:
            raise ValueError(f"Weight memory must be one of {', '.join(WEIGHT_MEMORIES)}, "
                             f"not {self.weight_memory!r}")
        if self.interconnect not in INTERCONNECTS:
            raise ValueError(f"Interconnect must be one of {', '.join(INTERCONNECTS)}, "
                             f"not {self.interconnect!r}")
        check_interconnect(self.interconnect, self.dataflow)
        if not isinstance(self.fuse_pool, bool):
            raise TypeError(f"Fuse pool must be a bool, not {self.fuse_pool!r}")
        check_rounds_per_stage(self.rounds_per_stage)
        if not isinstance(self.registered_memories, bool):
            raise TypeError(f"Registered memories must be a bool, not "
                            f"{self.registered_memories!r}")
        check_product_register(self.product_register, self.dataflow, self.interconnect)
        if not isinstance(self.queue_memory, bool):
            raise TypeError(f"Queue memory must be a bool, not {self.queue_memory!r}")
        if self.queue_memory and self.dataflow != "os":
            raise ValueError(f"Queues in memory are implemented for the output-stationary "
                             f"dataflow, not {self.dataflow!r}")
        if self.registered_memories and self.dataflow != "os":
            raise ValueError(f"Registered memories are implemented for the output-stationary "
                             f"dataflow, not {self.dataflow!r}")
        for name in ("weight_memory_bits", "activation_memory_bits"):
            if getattr(self, name) is not None:
                check_int(name.replace("_", " ").capitalize(), getattr(self, name))

    @property
    def batch(self):
        """Images per run: one per column."""
        return self.cols

    def describe(self):
        """``"8x2 array (os, broadcast, sb_mac16 multipliers, weights in spram)"``: the
        shape and every choice that is not the default, for the tools' messages."""
        parts = [self.dataflow]
        if self.interconnect != "systolic":
            parts.append(self.interconnect)
        parts.append(f"{self.multiplier} multipliers")
        if self.weight_memory != "bram":
            parts.append(f"weights in {self.weight_memory}")
        if self.registered_memories:
            parts.append("registered memories")
        if self.product_register:
            parts.append("product register")
        if self.queue_memory:
            parts.append("queues in memory")
        return f"{self.rows}x{self.cols} array ({', '.join(parts)})"

    @classmethod
    def parse_shape(cls, text, **kwargs):
        """``"8x8"`` -> ``ArrayConfig(rows=8, cols=8, **kwargs)``."""
        try:
            rows, cols = (int(v) for v in text.lower().split("x"))
        except ValueError:
            raise ValueError(f"Array shape must look like 8x8 (rows x columns), not "
                             f"{text!r}") from None
        return cls(rows=rows, cols=cols, **kwargs)


#: Named configurations.
PRESETS = {
    "8x8": ArrayConfig(),
    "4x4": ArrayConfig(rows=4, cols=4),
}


@dataclass(frozen=True)
class Step:
    """One pass of the controller: a conv/dense layer on the array, or a pooling pass.

    Members
    -------
    layer : int
        The network layer (its SR key and counters).
    kind : str
        ``"matmul"`` (conv2d and dense) or ``"pool"``.
    op : str
        ``"conv2d"``, ``"dense"``, ``"max"`` or ``"avg"``.
    in_shape, out_shape : tuple
        ``(C, H, W)`` of the layer's input and output tensors.
    in_base, out_base : int
        Word addresses of the two tensors in every activation bank.
    kh, kw, stride, top, left : int
        Window geometry (dense: a 1x1 "convolution" of ``C*H*W`` input channels over a
        1x1 map; pooling: the pooling window, no padding).
    reduction : int
        ``K = C_in * kh * kw`` (matmul: beats per output-stationary tile) or ``kh * kw``
        (pool).
    channel_tiles : int
        ``ceil(C_out / R)`` (output-stationary matmul), ``ceil(C_out / C)``
        (weight-stationary matmul) or 1 (pool).
    w_base, b_base : int
        First weight word and bias word (matmul).
    requant : dict
        The lanes' configuration (:func:`~systolic.rtl.requant.requant_config` without
        ``mode``; the mode is the run-time register).
    rounding : str
        The layer's default rounding mode (the register's reset value).
    macs : int
        Multiply-accumulates per image.
    tensor : int
        The network tensor the step writes (``layer + 1``, or ``layer + 2`` with a fused
        pool).
    fused_pool : int
        Kernel ``k`` of a max pool (stride ``k``) fused into this conv step's output
        (0: none): the step computes every conv output, ``k*k`` consecutive pixels per
        pooling window, and writes only each window's maximum (the conv's own output
        tensor is never stored).
    cycles : int
        Predicted cycles (:meth:`Program.step_cycles`).
    dataflow : str
        ``"os"`` or ``"ws"`` (a matmul step of a weight-stationary program).
    k_tiles : int
        Weight-stationary: reduction tiles ``ceil(K / R)`` (one weight block each).
    group : int
        Weight-stationary: output pixels per block, ``G`` (the last group of a channel
        tile may be smaller).
    beats : int
        Array beats of the step (each ``R * C`` multiply slots).
    """
    layer: int
    kind: str
    op: str
    in_shape: tuple
    out_shape: tuple
    in_base: int
    out_base: int
    kh: int
    kw: int
    stride: int
    top: int
    left: int
    reduction: int
    channel_tiles: int
    w_base: int
    b_base: int
    requant: dict
    rounding: str
    macs: int
    tensor: int = 0
    fused_pool: int = 0
    cycles: int = 0
    dataflow: str = "os"
    k_tiles: int = 0
    group: int = 0
    beats: int = 0

    @property
    def pixels(self):
        return self.out_shape[1] * self.out_shape[2]

    @property
    def stored_shape(self):
        """Shape of the tensor the step writes (the pooled one with a fused pool)."""
        k = self.fused_pool
        if not k:
            return self.out_shape
        return (self.out_shape[0], self.out_shape[1] // k, self.out_shape[2] // k)

    @property
    def tiles(self):
        return self.channel_tiles * self.pixels if self.kind == "matmul" else \
            int(np.prod(self.out_shape))

    @property
    def groups(self):
        """Weight-stationary: pixel groups per channel tile, ``ceil(pixels / G)``."""
        return _ceil_div(self.pixels, self.group) if self.group else 0

    @property
    def last_group(self):
        """Weight-stationary: pixels in a channel tile's last group."""
        return self.pixels - (self.groups - 1) * self.group if self.group else 0


@dataclass(frozen=True)
class Program:
    """What the compiler produced for one network and configuration.

    Members
    -------
    network : QNetwork
    config : ArrayConfig
    steps : tuple of Step
    act_width, weight_width, acc_width : int
        Widths of stored activations, weights, and the array's accumulators.
    region_words : int
        Words of each of the two activation regions (the largest tensor).
    weight_image : ndarray, shape (weight_words, lanes)
        The weight memory, word ``w`` holding ``lanes`` weights (``R`` output-stationary,
        ``C`` weight-stationary).
    bias_image : ndarray, shape (bias_words, bias_lanes)
        The bias memory (biases aligned to their layer's accumulator scale): one bias per
        word output-stationary (a tile's rows leave the array one per cycle, each reads
        its own), ``C`` per word weight-stationary (a transposer row needs ``C`` at once).
    """
    network: QNetwork
    config: ArrayConfig
    steps: tuple
    act_width: int
    weight_width: int
    acc_width: int
    region_words: int
    weight_image: np.ndarray = field(repr=False)
    bias_image: np.ndarray = field(repr=False)

    # -- memory map -------------------------------------------------------------------

    @property
    def lanes(self):
        """Values per weight and bias word: ``R`` (output-stationary: the output channels
        of a tile) or ``C`` (weight-stationary: a row of a weight block)."""
        return self.config.cols if self.config.dataflow == "ws" else self.config.rows

    @property
    def bias_lanes(self):
        """Biases per bias word: 1 output-stationary, ``C`` weight-stationary."""
        return self.config.cols if self.config.dataflow == "ws" else 1

    @property
    def act_words(self):
        """Words of each activation bank (two regions)."""
        return 2 * self.region_words

    @property
    def act_bits(self):
        """Bits of activation memory (all ``C`` banks)."""
        return self.act_words * self.act_width * self.config.cols

    @property
    def weight_words(self):
        return len(self.weight_image)

    @property
    def weight_bits(self):
        return self.weight_words * self.lanes * self.weight_width

    @property
    def bias_words(self):
        return len(self.bias_image)

    @property
    def bias_bits(self):
        return self.bias_words * self.bias_lanes * self.acc_width

    @property
    def input_words(self):
        return int(np.prod(self.network.input_shape))

    @property
    def output_words(self):
        return int(np.prod(self.network.output_shape))

    @property
    def output_base(self):
        return self.steps[-1].out_base

    @property
    def beats(self):
        """Array beats of one run (the accelerator's ``beats`` counter)."""
        return sum(s.beats for s in self.steps)

    # -- timing -----------------------------------------------------------------------

    @property
    def sr_latency(self):
        """Cycles of the shared generator stage in the output path."""
        return pipeline_stages(self.config.rounds_per_stage) if self.config.stochastic \
            else 0

    @property
    def read_latency(self):
        """Cycles the memories' read data wait in a register before use: 1 with
        ``registered_memories``, else 0."""
        return int(self.config.registered_memories)

    @property
    def write_latency(self):
        """Cycles a row's write waits in registers: 2 with ``registered_memories`` (the
        lanes' results before the running maximum, the write after it), else 0."""
        return 2 * int(self.config.registered_memories)

    @property
    def output_latency(self):
        """Cycles from a row entering the output path to its write (inclusive)."""
        return 1 + self.sr_latency + LANE_LATENCY + self.write_latency

    def step_cycles(self, step):
        """Exact cycles of one step, from its first cycle (the key schedule's start) to
        its last write, with no stalls (the accelerator never stalls inside a run)."""
        R, C = self.config.rows, self.config.cols
        # one cycle loads the step's constants and starts the key schedule, whose keys
        # are ready ROUNDS - 1 cycles later; the run starts the cycle after
        setup = 1 + srgen.ROUNDS
        if step.kind == "matmul" and step.dataflow == "ws":
            # slots of max(R, C) cycles, one per (pixel, k-tile); the last one starts
            # ``span`` cycles after the run's first; then R + 1 cycles to the corner
            # turn, C - 1 to drain it, the array, the partial-sum add and C rows out of
            # the output transposer
            span = self.ws_issue_cycles(step) - self.ws_block_cycles(step.last_group) + \
                (step.last_group - 1) * self.ws_slot
            return setup + 1 + span + 2 * R + 3 * C + 4 + self.output_latency
        if step.kind == "matmul":
            k = step.reduction
            issue = (step.tiles - 1) * max(k, R) + k          # beats accepted
            # last beat -> last row out
            array = array_latency(R, C, self.config.interconnect,
                                  self.config.product_register) + R - 1
            return setup + 1 + self.read_latency + issue + array + self.output_latency
        beats = step.tiles * step.reduction
        return setup + 1 + self.read_latency + beats + 1 + self.output_latency

    # -- weight-stationary schedule ---------------------------------------------------

    @property
    def ws_slot(self):
        """Cycles per (pixel, k-tile) slot: ``R`` reads into the corner turn, ``C`` beats
        out of it, overlapped (double buffer): ``max(R, C)``."""
        return max(self.config.rows, self.config.cols)

    @property
    def ws_block_min(self):
        """Fewest cycles between two weight blocks' first beats: the array takes the
        next block ``R + C - 1`` cycles after a first beat, in ``R`` beats."""
        return 2 * self.config.rows + self.config.cols - 1

    def ws_block_cycles(self, pixels):
        """Cycles of a block of ``pixels`` slots: ``max(pixels * slot, 2R + C - 1)``."""
        return max(pixels * self.ws_slot, self.ws_block_min)

    def ws_issue_cycles(self, step):
        """Cycles of all of a weight-stationary step's blocks, back to back."""
        return step.channel_tiles * step.k_tiles * (
            (step.groups - 1) * self.ws_block_cycles(step.group) +
            self.ws_block_cycles(step.last_group))

    @property
    def cycles(self):
        """Predicted compute cycles of one run (``C`` images): every step, back to back."""
        return sum(s.cycles for s in self.steps)

    @property
    def cycles_per_image(self):
        return self.cycles / self.config.cols

    def utilization(self):
        """(network MACs / (R*C)) / cycles per image: the fraction of the array's
        multiply slots doing network work, over the whole run."""
        R, C = self.config.rows, self.config.cols
        return self.network.macs / (R * C) / self.cycles_per_image

    def layer_report(self):
        """Per step: layer, op, MACs per image, cycles, utilization and where the other
        cycles went (array fill/drain, pipeline and setup, padding of partial tiles,
        non-matrix work).  A list of dicts.  Weight-stationary steps count as padding
        the beats on channels beyond C_out and on k beyond K, and as ``tile_stalls`` the
        slot cycles without a beat (C < R) and the waits of short blocks."""
        R, C = self.config.rows, self.config.cols
        rows = []
        for s in self.steps:
            ideal = s.macs * C / (R * C)          # cycles at 100 % for the whole batch
            op = f"{s.op}+maxpool" if s.fused_pool else s.op
            entry = {"layer": s.layer, "op": op, "macs": s.macs, "cycles": s.cycles,
                     "utilization": ideal / s.cycles if s.cycles else 0.0}
            if s.kind == "matmul" and s.dataflow == "ws":
                issue = self.ws_issue_cycles(s)
                entry["padding"] = s.beats - ideal  # channels beyond C_out, k beyond K
                entry["tile_stalls"] = issue - s.beats  # C < R, short blocks
                entry["fill_drain"] = s.cycles - issue
            elif s.kind == "matmul":
                k = s.reduction
                beats = s.tiles * k
                stall = (s.tiles - 1) * (max(k, R) - k)
                entry["padding"] = beats - ideal    # rows beyond C_out in the last tile
                entry["tile_stalls"] = stall
                entry["fill_drain"] = s.cycles - beats - stall
            else:
                entry["non_matrix"] = s.cycles
            rows.append(entry)
        return rows


def _ceil_div(a, b):
    return -(-a // b)


def compile_network(network, config=None):
    """Map ``network`` onto the accelerator described by ``config``.

    Parameters
    ----------
    network : QNetwork
    config : ArrayConfig, optional
        Default ``ArrayConfig()`` (8 x 8, output-stationary).

    Returns
    -------
    Program

    Raises
    ------
    TypeError
        ``network`` is not a QNetwork or ``config`` not an ArrayConfig.
    NetworkError
        A layer the accelerator does not run (naming the layer and why).
    ConstraintError
        The network does not fit: memory (naming the tensor, bits needed and available),
        a shift beyond the lanes, or a stochastic layer without the generator.
    """
    if not isinstance(network, QNetwork):
        raise TypeError(f"Network must be a QNetwork, not {type(network).__name__}")
    config = ArrayConfig() if config is None else config
    if not isinstance(config, ArrayConfig):
        raise TypeError(f"Configuration must be an ArrayConfig, not {type(config).__name__}")
    R, C = config.rows, config.cols
    ws = config.dataflow == "ws"
    if config.weight_memory == "auto":
        # Weights, biases and formats do not depend on where the weights live: compile
        # for block RAM, and keep it if the tensors fit the block-RAM budget.
        program = compile_network(network, replace(config, weight_memory="bram",
                                                   weight_memory_bits=None))
        budget = config.weight_memory_bits
        fits = budget is None or program.weight_bits + program.bias_bits <= budget
        program = replace(program, config=replace(
            config, weight_memory="bram" if fits else "spram",
            weight_memory_bits=budget if fits else None))
        _check_memory(program, program.config)
        return program

    shapes, formats = network.tensor_shapes, network.tensor_formats
    for j, layer in enumerate(network.layers):
        if layer.kind in ("activation", "add"):
            raise NetworkError(f"Layer {j} ({layer.kind}): not supported by the accelerator "
                               f"yet (supported: conv2d, dense, maxpool2d, avgpool2d, with "
                               f"fused none/relu/clip)")
        if layer.kind in ("maxpool2d", "avgpool2d") and layer.step != layer.kernel:
            raise NetworkError(f"Layer {j} ({layer.kind}): the accelerator pools with stride "
                               f"equal to the kernel, not stride {layer.step} with kernel "
                               f"{layer.kernel}")
        if getattr(layer, "rounding", None) == "stochastic" and not config.stochastic:
            raise ConstraintError(f"Layer {j} ({layer.kind}) rounds stochastically, but the "
                                  f"configuration has no stochastic-rounding generator")

    act_width = max(f.width for f in formats)
    mm = [l for l in network.layers if l.kind in ("conv2d", "dense")]
    weight_width = max((l.weight_format.width for l in mm), default=2)
    weight_width = max(weight_width, 2)
    acc_width = 2
    for j, layer in enumerate(network.layers):
        if layer.kind in ("conv2d", "dense"):
            acc_width = max(acc_width, accumulator_width(
                act_width, weight_width, layer.reduction_length()))
        elif layer.kind in ("maxpool2d", "avgpool2d"):
            acc_width = max(acc_width, act_width + 2 * layer.kernel.bit_length())
    # biases are added in the lanes (acc + bias, one bit wider); they must fit acc_width
    for j, layer in enumerate(network.layers):
        if getattr(layer, "bias", None) is not None:
            f_acc = formats[j].frac + layer.weight_format.frac
            b = align_bias(layer.bias, layer.bias_format, f_acc)
            need = int(max(abs(int(b.min())), abs(int(b.max())))).bit_length() + 1
            acc_width = max(acc_width, need)

    layers = network.layers
    fused = set()           # conv layers whose following max pool is fused
    if config.fuse_pool:
        for j in range(len(layers) - 1):
            nxt = layers[j + 1]
            if layers[j].kind == "conv2d" and nxt.kind == "maxpool2d" and \
                    nxt.step == nxt.kernel:
                fused.add(j)
    stored = [0] + [j + 1 for j in range(len(layers)) if j not in fused]
    region = max(int(np.prod(shapes[t])) for t in stored)
    weights, biases, steps = [], [], []
    w_base = b_base = 0
    lane_max_shift = acc_width + 1
    n = 0                   # step number: step n reads region n % 2, writes the other
    for j, layer in enumerate(layers):
        if j - 1 in fused:
            continue        # this max pool is part of the previous step
        in_shape, out_shape = shapes[j], shapes[j + 1]
        in_base, out_base = (n % 2) * region, ((n + 1) % 2) * region
        n += 1
        fin, fout = formats[j], formats[j + 1]
        kp = layers[j + 1].kernel if j in fused else 0
        common = dict(layer=j, in_shape=in_shape, out_shape=out_shape, in_base=in_base,
                      out_base=out_base, tensor=j + 2 if kp else j + 1, fused_pool=kp)
        if layer.kind in ("conv2d", "dense"):
            cout = layer.weight.shape[0]
            if layer.kind == "conv2d":
                kh, kw = layer.kernel
                stride = layer.stride
                top, _, left, _ = layer.padding_for(in_shape)
                w2 = layer.weight.reshape(cout, -1)
            else:
                kh = kw = stride = 1
                top = left = 0
                w2 = layer.weight
            k = w2.shape[1]
            lanes = C if ws else R
            tiles = _ceil_div(cout, lanes)
            if ws:
                # block (tile t, k-tile q) is R words; word r holds W[t*C + c, q*R + r]
                # for c = 0..C-1 (zero beyond C_out and K)
                k_tiles = _ceil_div(k, R)
                wpad = np.zeros((tiles * C, k_tiles * R), dtype=np.int64)
                wpad[:cout, :k] = w2
                weights.append(wpad.reshape(tiles, C, k_tiles * R).transpose(0, 2, 1)
                               .reshape(-1, C))
                pixels = out_shape[1] * out_shape[2] if layer.kind == "conv2d" else 1
                group = min(pixels, _ceil_div(2 * R + C - 1, max(R, C)))
                dataflow = dict(dataflow="ws", k_tiles=k_tiles, group=group,
                                beats=tiles * k_tiles * pixels * C)
                words = tiles * k_tiles * R
            else:
                wpad = np.zeros((tiles * R, k), dtype=np.int64)
                wpad[:cout] = w2
                # word (tile t, beat k) holds W[t*R + r, k] for r = 0..R-1
                weights.append(wpad.reshape(tiles, R, k).transpose(0, 2, 1).reshape(-1, R))
                pixels = out_shape[1] * out_shape[2] if layer.kind == "conv2d" else 1
                dataflow = dict(beats=tiles * pixels * k)
                words = tiles * k
            f_acc = fin.frac + layer.weight_format.frac
            bpad = np.zeros(tiles * lanes, dtype=np.int64)
            if layer.bias is not None:
                bpad[:cout] = align_bias(layer.bias, layer.bias_format, f_acc)
            blanes = C if ws else 1
            biases.append(bpad.reshape(-1, blanes))
            lo, hi = clamp_bounds(layer.activation, layer.clip_max, fout)
            shift = f_acc - fout.frac
            if layer.kind == "dense":
                geometry = dict(kh=1, kw=1, stride=1, top=0, left=0)
                in_shape_eff = (k, 1, 1)
            else:
                geometry = dict(kh=kh, kw=kw, stride=stride, top=top, left=left)
                in_shape_eff = in_shape
            step = Step(kind="matmul", op=layer.kind, reduction=k, channel_tiles=tiles,
                        w_base=w_base, b_base=b_base,
                        requant=_requant(j, layer, shift, fout, lo, hi, lane_max_shift),
                        rounding=layer.rounding, macs=layer.macs(in_shape),
                        **{**common, "in_shape": in_shape_eff}, **geometry, **dataflow)
            w_base += words
            b_base += tiles * lanes // blanes
        else:
            kk = layer.kernel
            if layer.kind == "avgpool2d":
                shift = fin.frac + layer.area_log2 - fout.frac
                rq = _requant(j, layer, shift, fout, None, None, lane_max_shift)
                op, rounding = "avg", layer.rounding
            else:
                rq = _requant(j, layer, 0, fout, None, None, lane_max_shift)
                op, rounding = "max", "floor"
            step = Step(kind="pool", op=op, reduction=kk * kk, channel_tiles=1,
                        w_base=0, b_base=0, requant=rq, rounding=rounding, macs=0,
                        kh=kk, kw=kk, stride=kk, top=0, left=0, **common)
        steps.append(step)

    lanes = C if ws else R
    weight_image = (np.concatenate(weights) if weights else np.zeros((1, lanes), np.int64))
    bias_image = (np.concatenate(biases) if biases else
                  np.zeros((1, C if ws else 1), np.int64))
    program = Program(network=network, config=config, steps=tuple(steps),
                      act_width=act_width, weight_width=weight_width, acc_width=acc_width,
                      region_words=region, weight_image=weight_image, bias_image=bias_image)
    program = replace(program, steps=tuple(replace(s, cycles=program.step_cycles(s))
                                           for s in steps))
    _check_memory(program, config)
    return program


def _requant(j, layer, shift, fout, lo, hi, max_shift):
    if shift > max_shift:
        raise ConstraintError(
            f"Layer {j} ({layer.kind}): requantization shift {shift} exceeds the lanes' "
            f"maximum {max_shift} (accumulator width + 1); the output format's frac is "
            f"too small for this accumulator")
    if shift < -MAX_LEFT_SHIFT:
        shift = -MAX_LEFT_SHIFT       # same results (requant_shift): saturates or stays 0
    cfg = requant_config(shift, "floor", fout, lo=lo, hi=hi)
    del cfg["mode"]
    return cfg


def _check_memory(program, config):
    net = program.network
    if config.activation_memory_bits is not None and \
            program.act_bits > config.activation_memory_bits:
        largest = max(range(len(net.tensor_shapes)),
                      key=lambda t: int(np.prod(net.tensor_shapes[t])))
        raise ConstraintError(
            f"Activation memory: tensor {largest} {net.tensor_shapes[largest]} sets the two "
            f"regions of {program.region_words} words x {program.act_width} bits x "
            f"{config.cols} images = {program.act_bits} bits needed, "
            f"{config.activation_memory_bits} available")
    if config.weight_memory_bits is not None and \
            program.weight_bits + program.bias_bits > config.weight_memory_bits:
        def words(s):
            return s.channel_tiles * (s.k_tiles * config.rows if s.dataflow == "ws"
                                      else s.reduction)
        heaviest = max((s for s in program.steps if s.kind == "matmul"), key=words)
        raise ConstraintError(
            f"Weight memory: the weights and biases need {program.weight_bits} + "
            f"{program.bias_bits} bits ({program.weight_words} words of {program.lanes} x "
            f"{program.weight_width} bits; layer {heaviest.layer}'s weight tensor "
            f"alone {words(heaviest) * program.lanes * program.weight_width} "
            f"bits), {config.weight_memory_bits} available")
