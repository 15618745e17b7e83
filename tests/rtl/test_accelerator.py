# amaranth: UnusedElaboratable=no
"""The accelerator in the Amaranth simulator on small random networks, against golden.

Every output element, saturation count and the cycle count are compared exactly; the
whole-network runs on the reference networks are cocotb/Verilator tests (tests/sim)."""

import dataclasses
import itertools

import numpy as np
import pytest
from amaranth.hdl import ResetInserter, Signal
from amaranth.sim import Simulator

from systolic.golden.errors import ConstraintError
from systolic.golden.randnet import random_input, random_network
from systolic.golden.rounding import ROUNDING_MODES
from systolic.golden.run import run
from systolic.rtl.accelerator import Accelerator, counter_words, weight_beats
from systolic.rtl.compiler import ArrayConfig, compile_network
from systolic.rtl.requant import MODE


def simulate(program, images, *, rounding=None, seed=None, gaps=None, stalls=None,
             weights=None, counter_port=False, runs=1, abort=None):
    """Run one batch in the Amaranth simulator; returns (outputs (N, *out_shape), counters).

    ``gaps``/``stalls``: a numpy Generator to insert idle input cycles and output
    back-pressure (each with probability 0.5).  ``weights``: ``w`` stream beats
    (:func:`~systolic.rtl.accelerator.weight_beats`) sent before the images.
    ``counter_port``: the accelerator's counter port form, its words read one by one
    after the run.  ``runs``: the batch is run that many times (the counters are the last
    run's).  ``abort``: ``(images, cycles)``, a batch started first and cut by a reset
    after that many cycles (its outputs taken and dropped)."""
    net = program.network
    L = len(net.layers)
    C = program.config.cols
    n = len(images)
    modes = [rounding or getattr(l, "rounding", None) or "floor" for l in net.layers]
    seed = net.seed if seed is None else seed
    dut = Accelerator(program, counter_port=counter_port)
    batch = np.zeros((C, program.input_words), dtype=np.int64)
    batch[:n] = np.asarray(images).reshape(n, -1)
    out = np.zeros((C, program.output_words), dtype=np.int64)
    result = {}

    async def testbench(ctx):
        for j, mode in enumerate(modes):
            ctx.set(dut.rounding[j], MODE[mode])
        ctx.set(dut.seed, seed)
        ctx.set(dut.images, n)
        for beat in weights or ():
            ctx.set(dut.w.valid, 1)
            ctx.set(dut.w.payload, beat)
            await ctx.tick().until(dut.w.ready)
        ctx.set(dut.w.valid, 0)
        if abort is not None:
            await aborted_run(ctx, *abort)
        for _ in range(runs):
            await one_run(ctx)
        if counter_port:
            words = []
            for w in range(counter_words(L)):
                ctx.set(dut.counter_addr, w)
                await ctx.tick()
                words.append(ctx.get(dut.counter_data))
            result.update(cycles=words[0], beats=words[1], layer_cycles=words[2:2 + L],
                          saturations=words[2 + L:])
        else:
            result["cycles"] = ctx.get(dut.cycles)
            result["layer_cycles"] = [ctx.get(dut.layer_cycles[j]) for j in range(L)]
            result["saturations"] = [ctx.get(dut.saturations[j]) for j in range(L)]
            result["beats"] = ctx.get(dut.beats)

    async def aborted_run(ctx, images, cycles):
        first = np.zeros((C, program.input_words), dtype=np.int64)
        first[:len(images)] = np.asarray(images).reshape(len(images), -1)
        e = 0
        ctx.set(dut.o.ready, 1)
        for _ in range(cycles):
            ctx.set(dut.i.valid, e < program.input_words)
            if e < program.input_words:
                for j in range(C):
                    ctx.set(dut.i.payload[j], int(first[j, e]))
            await ctx.tick()
            e += ctx.get(dut.i.valid) and ctx.get(dut.i.ready)
        result["aborted_busy"] = ctx.get(dut.busy)
        ctx.set(dut.i.valid, 0)
        ctx.set(reset, 1)
        await ctx.tick()
        ctx.set(reset, 0)

    async def one_run(ctx):
        for e in range(program.input_words):
            while gaps is not None and gaps.random() < 0.5:
                ctx.set(dut.i.valid, 0)
                result["gaps"] = result.get("gaps", 0) + 1
                await ctx.tick()
            ctx.set(dut.i.valid, 1)
            for j in range(C):
                ctx.set(dut.i.payload[j], int(batch[j, e]))
            await ctx.tick().until(dut.i.ready)
        ctx.set(dut.i.valid, 0)
        if counter_port:
            # as the run starts, the words of the layers after the first read 0 (not
            # the last run's counts)
            early = []
            for layer in sorted({s.layer for s in program.steps} - {program.steps[0].layer}):
                for w in (2 + layer, 2 + L + layer):
                    ctx.set(dut.counter_addr, w)
                    await ctx.tick()
                    early.append(ctx.get(dut.counter_data))
            result.setdefault("early", []).append(early)
        e = 0
        while e < program.output_words:
            ready = stalls is None or stalls.random() < 0.5
            ctx.set(dut.o.ready, ready)
            valid = ctx.get(dut.o.valid)
            if valid and ready:
                values = ctx.get(dut.o.payload.values)
                for j in range(C):
                    out[j, e] = values[j]
                last = ctx.get(dut.o.payload.last)
                e += 1
                assert bool(last) == (e == program.output_words)
            elif valid:
                result["stalls"] = result.get("stalls", 0) + 1
            await ctx.tick()

    reset = Signal()
    sim = Simulator(ResetInserter(reset)(dut) if abort is not None else dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    slack = 4 if gaps is not None or stalls is not None else 1
    sim.run_until(1e-6 * (runs * (program.cycles + slack * (
        program.input_words + program.output_words) + 200) + len(weights or ()) + 2 * L
        + (abort[1] + 1 if abort is not None else 0)))
    assert result, "the accelerator did not finish"
    return out[:n].reshape(n, *net.output_shape), result


def check(program, x, *, rounding=None, network=None, **kwargs):
    net = network or program.network
    got, counters = simulate(program, x, rounding=rounding, **kwargs)
    want = run(net, x, rounding=rounding)
    np.testing.assert_array_equal(got, want.logits.reshape(got.shape))
    assert counters["cycles"] == program.cycles, (counters, program.cycles)
    by_layer = [0] * len(net.layers)
    for s in program.steps:
        by_layer[s.layer] = s.cycles
    assert counters["layer_cycles"] == by_layer
    assert counters["saturations"] == list(want.saturations)
    assert counters["beats"] == program.beats
    return counters, want


#: (seed, rows, cols): shapes 1x1, 2x3, 4x4 and non-square ones
CASES = [(seed, rows, cols) for seed, (rows, cols) in enumerate(
    [(1, 1), (2, 3), (3, 2), (4, 4), (2, 2), (3, 1), (1, 4), (4, 2)])]


@pytest.mark.parametrize("interconnect", ["systolic", "broadcast"])
@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("seed,rows,cols", CASES, ids=[f"seed={s}-{r}x{c}" for s, r, c in CASES])
def test_random_network_bit_exact(seed, rows, cols, fuse, interconnect):
    rng = np.random.default_rng(seed)
    net = random_network(rng, max_layers=3, max_size=7, max_channels=4)
    program = compile_network(net, ArrayConfig(rows=rows, cols=cols, fuse_pool=fuse,
                                               interconnect=interconnect))
    check(program, random_input(rng, net, cols))


def test_random_set_covers_short_and_long_tiles():
    """The random cases include programs with a tile shorter than R (the array holds its
    ``last`` beat back and the skid register takes the beat) and programs whose tiles are
    all at least R long (neither exists)."""
    kinds = set()
    for seed, rows, cols in CASES:
        rng = np.random.default_rng(seed)
        net = random_network(rng, max_layers=3, max_size=7, max_channels=4)
        program = compile_network(net, ArrayConfig(rows=rows, cols=cols))
        kinds.add(min(s.reduction for s in program.steps if s.kind == "matmul") < rows)
    assert kinds == {True, False}


@pytest.mark.parametrize("variant", ["os", "ws", "registered"])
@pytest.mark.parametrize("seed,rows,cols", CASES, ids=[f"seed={s}-{r}x{c}" for s, r, c in CASES])
def test_counter_port(seed, rows, cols, variant):
    """The board's counter port (per-layer counters in a memory, one session per layer):
    every word read through the port equals the cycle model and the golden saturation
    counts, on the second of two runs (the first run's sessions must not leak)."""
    rng = np.random.default_rng(seed)
    net = random_network(rng, max_layers=3, max_size=7, max_channels=4)
    config = ArrayConfig(rows=rows, cols=cols, dataflow="ws" if variant == "ws" else "os",
                         registered_memories=variant == "registered")
    program = compile_network(net, config)
    x = random_input(rng, net, cols)
    counters, want = check(program, x, counter_port=True, runs=2)
    assert counters["early"] == [[0] * len(counters["early"][0])] * 2, f"seed {seed}"
    # the memory held more than one layer's session (and saturations, where any)
    assert len({s.layer for s in program.steps}) >= 2, f"seed {seed}: one counted layer"


def test_counter_port_saturations_and_idle_layers():
    """A network whose layers saturate, and whose flatten layer (no step) reads 0."""
    for seed in range(40):
        rng = np.random.default_rng(seed)
        net = random_network(rng, max_layers=3, max_size=7, max_channels=4)
        x = random_input(rng, net, 2)
        want = run(net, x)
        stepless = set(range(len(net.layers))) - {
            s.layer for s in compile_network(net, ArrayConfig(rows=2, cols=2)).steps}
        if sum(want.saturations) > 0 and stepless:
            break
    else:
        pytest.fail("no random network with saturations and a stepless layer")
    program = compile_network(net, ArrayConfig(rows=2, cols=2))
    counters, _ = check(program, x, counter_port=True)
    assert sum(counters["saturations"]) > 0, f"seed {seed}"
    assert all(counters["layer_cycles"][l] == 0 for l in stepless), f"seed {seed}"


def test_counter_port_needs_steps_in_layer_order():
    rng = np.random.default_rng(0)
    net = random_network(rng, max_layers=3, max_size=7, max_channels=4)
    program = compile_network(net, ArrayConfig(rows=2, cols=2))
    assert len(program.steps) >= 2
    shuffled = dataclasses.replace(program, steps=tuple(reversed(program.steps)))
    with pytest.raises(ValueError, match=r"^A counter port needs the program's steps in "
                                         r"layer order, not layers \["):
        Accelerator(shuffled, counter_port=True)
    with pytest.raises(TypeError, match=r"^Counter port must be a bool, not 1$"):
        Accelerator(program, counter_port=1)


@pytest.mark.parametrize("interconnect", ["systolic", "broadcast"])
@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("seed,rows,cols", CASES[1:6], ids=[f"seed={s}-{r}x{c}"
                                                          for s, r, c in CASES[1:6]])
def test_registered_memories_bit_exact(seed, rows, cols, fuse, interconnect):
    """The ECP5 presets' registered memories: same outputs, three more cycles per step
    (the cycle model's ``read_latency`` and ``write_latency``), fused and separate
    pooling passes."""
    rng = np.random.default_rng(seed)
    net = random_network(rng, max_layers=3, max_size=7, max_channels=4)
    program = compile_network(net, ArrayConfig(rows=rows, cols=cols, fuse_pool=fuse,
                                               interconnect=interconnect,
                                               registered_memories=True))
    plain = compile_network(net, ArrayConfig(rows=rows, cols=cols, fuse_pool=fuse,
                                             interconnect=interconnect))
    assert program.cycles == plain.cycles + 3 * len(program.steps)
    check(program, random_input(rng, net, cols))


@pytest.mark.parametrize("stochastic", [True, False], ids=["sr", "no-sr"])
@pytest.mark.parametrize("interconnect", ["systolic", "broadcast"])
@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("seed,rows,cols", CASES, ids=[f"seed={s}-{r}x{c}" for s, r, c in CASES])
def test_queues_in_memory_bit_exact(seed, rows, cols, fuse, interconnect, stochastic):
    """The iCE40 presets' queues in memory (the tile metadata, the rows' tags, the fused
    pool's maxima): same outputs and counters in the same cycles, fused and separate
    pooling passes, R = 1 (whose maxima stay in a register) included, with and without
    the stochastic-rounding generator (whose flat index the metadata then carries)."""
    rng = np.random.default_rng(seed)
    net = random_network(rng, max_layers=3, max_size=7, max_channels=4)
    if not stochastic:
        # without the generator, the stochastic layers round to nearest even
        net = dataclasses.replace(net, layers=[
            dataclasses.replace(l, rounding="nearest_even")
            if getattr(l, "rounding", None) == "stochastic" else l for l in net.layers])
    program = compile_network(net, ArrayConfig(rows=rows, cols=cols, fuse_pool=fuse,
                                               interconnect=interconnect, queue_memory=True,
                                               stochastic=stochastic))
    check(program, random_input(rng, net, cols))


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["ecp5", "ice40"])
def test_reset_mid_run_leaves_no_trace(preset):
    """mnist-tiny on real images: a batch cut by a reset at a random cycle of its run,
    then another batch, bit-exact with the same counters.  Many datapath registers have
    no reset (the PEs' operands and drain slots, the skew lines, the rings, the
    generator's rounds and delay line: only their valid flags and the control have), so
    this shows that no stale value of the cut batch is read.  (Random networks are no
    good here: their logits are mostly saturated, the same for any input.)"""
    from systolic.golden import datasets, models
    seed = 7 if preset == "ecp5" else 8
    rng = np.random.default_rng(seed)
    net = models.load("mnist-tiny")
    extra = (dict(registered_memories=True, product_register=True) if preset == "ecp5"
             else dict(queue_memory=True, interconnect="broadcast"))
    program = compile_network(net, ArrayConfig(rows=8, cols=2, fuse_pool=True, **extra))
    images, _ = datasets.mnist("holdout")
    pick = rng.choice(len(images), 4, replace=False)
    first, x = (models.mnist_input(net, images[pick[k:k + 2]]) for k in (0, 2))
    cut = int(rng.integers(program.input_words + program.cycles // 4, program.cycles))
    counters, want = check(program, x, abort=(first, cut))
    assert counters["aborted_busy"], f"seed {seed}: the reset at cycle {cut} found no run"
    assert len(np.unique(want.logits)) > 10, f"seed {seed}: degenerate logits"


def test_registered_memories_cover_pooling_passes():
    """The cases above include a separate pooling pass and a fused pool."""
    kinds = set()
    for (seed, rows, cols), fuse in itertools.product(CASES[1:6], [True, False]):
        rng = np.random.default_rng(seed)
        net = random_network(rng, max_layers=3, max_size=7, max_channels=4)
        program = compile_network(net, ArrayConfig(rows=rows, cols=cols, fuse_pool=fuse))
        kinds |= {"pool" if s.kind == "pool" else "fused" if s.fused_pool else "conv"
                  for s in program.steps}
    assert {"pool", "fused"} <= kinds, kinds


@pytest.mark.parametrize("seed,rows,cols", CASES[1:6], ids=[f"seed={s}-{r}x{c}"
                                                          for s, r, c in CASES[1:6]])
def test_product_register_bit_exact(seed, rows, cols):
    """The ECP5 presets' PE product register: same outputs, one more cycle of array
    latency per matmul step."""
    rng = np.random.default_rng(seed)
    net = random_network(rng, max_layers=3, max_size=7, max_channels=4)
    program = compile_network(net, ArrayConfig(rows=rows, cols=cols, product_register=True,
                                               registered_memories=True))
    plain = compile_network(net, ArrayConfig(rows=rows, cols=cols, registered_memories=True))
    mm = sum(s.kind == "matmul" for s in program.steps)
    assert mm > 0 and program.cycles == plain.cycles + mm
    check(program, random_input(rng, net, cols))


@pytest.mark.parametrize("mode", ROUNDING_MODES)
def test_rounding_register_overrides_every_layer(mode):
    rng = np.random.default_rng(11)
    net = random_network(rng, max_layers=2, max_size=6, max_channels=3)
    program = compile_network(net, ArrayConfig(rows=2, cols=2))
    check(program, random_input(rng, net, 2), rounding=mode)


@pytest.mark.parametrize("dataflow", ["os", "ws", "os-broadcast"])
def test_fused_pool_with_dropped_rows_and_columns(dataflow):
    """A 5x7 conv output pooled 2x2: the last row and column are computed (their
    saturations count) but belong to no window."""
    rng = np.random.default_rng(5)
    from systolic.golden.ir import Conv2d, Dense, MaxPool2d, QNetwork
    from systolic.golden.qformat import QFormat
    f = QFormat(6, 2)
    net = QNetwork((2, 7, 9), f, [
        Conv2d(weight=rng.integers(-32, 32, (3, 2, 3, 3)), weight_format=f, out_format=f,
               activation="relu", rounding="nearest_even"),
        MaxPool2d(kernel=2),
        Dense(weight=rng.integers(-32, 32, (4, 3 * 2 * 3)), weight_format=f, out_format=f,
              rounding="stochastic")], seed=99)
    dataflow, _, interconnect = dataflow.partition("-")
    program = compile_network(net, ArrayConfig(rows=2, cols=3, dataflow=dataflow,
                                               interconnect=interconnect or "systolic"))
    assert program.steps[0].fused_pool == 2 and len(program.steps) == 2
    counters, want = check(program, random_input(rng, net, 3))
    assert want.saturations[0] > 0, "the conv should saturate somewhere"


@pytest.mark.parametrize("interconnect", ["systolic", "broadcast", "systolic-registered",
                                          "systolic-registered-product"])
@pytest.mark.parametrize("seed", [3, 4], ids=lambda s: f"seed={s}")
def test_input_gaps_and_output_backpressure(seed, interconnect):
    rng = np.random.default_rng(seed)
    net = random_network(rng, max_layers=2, max_size=6, max_channels=3)
    interconnect, *options = interconnect.split("-")
    program = compile_network(net, ArrayConfig(rows=3, cols=2, interconnect=interconnect,
                                               registered_memories="registered" in options,
                                               product_register="product" in options))
    counters, _ = check(program, random_input(rng, net, 2), gaps=np.random.default_rng(seed),
                        stalls=np.random.default_rng(seed + 1))
    assert counters.get("gaps", 0) > 0 and counters.get("stalls", 0) > 0, counters


def test_partial_batch_counts_only_real_images():
    rng = np.random.default_rng(8)
    net = random_network(rng, max_layers=2, max_size=6, max_channels=3)
    program = compile_network(net, ArrayConfig(rows=2, cols=3))
    check(program, random_input(rng, net, 1))


def _new_weights(rng, net):
    from dataclasses import replace
    layers = []
    for layer in net.layers:
        if layer.kind in ("conv2d", "dense"):
            wf = layer.weight_format
            bias = None if layer.bias is None else rng.integers(-500, 500, layer.bias.shape)
            layer = replace(layer, weight=rng.integers(wf.min, wf.max + 1, layer.weight.shape),
                            bias=bias)
        layers.append(layer)
    return replace(net, layers=tuple(layers), name="retrained")


@pytest.mark.parametrize("registered", [False, True], ids=["plain", "registered"])
@pytest.mark.parametrize("seed", [21, 22], ids=lambda s: f"seed={s}")
def test_weights_loaded_at_run_time(seed, registered):
    rng = np.random.default_rng(seed)
    net = random_network(rng, max_layers=2, max_size=6, max_channels=4)
    program = compile_network(net, ArrayConfig(rows=3, cols=2,
                                               registered_memories=registered))
    other = _new_weights(rng, net)
    x = random_input(rng, net, 2)
    assert not np.array_equal(run(net, x).tensors[1], run(other, x).tensors[1])
    check(program, x, network=other, weights=weight_beats(program, other))
    # the first tensors differ, and check() compares logits and every layer's saturation
    # count with golden run on the new weights


def test_weights_of_another_topology_are_rejected():
    rng = np.random.default_rng(23)
    program = compile_network(random_network(rng, max_layers=1), ArrayConfig(rows=2, cols=2))
    with pytest.raises(ConstraintError, match=r"does not have the topology and formats this "
                                              r"accelerator was built for"):
        weight_beats(program, random_network(np.random.default_rng(24), max_layers=3))


@pytest.mark.parametrize("interconnect", ["systolic", "broadcast"])
@pytest.mark.parametrize("seed", [31, 32], ids=lambda s: f"seed={s}")
def test_weights_in_spram(seed, interconnect):
    """With ``weight_memory="spram"`` the weights are not in the bitstream: they arrive
    through the weight stream first (the SPRAM model starts empty, like the primitive)."""
    rng = np.random.default_rng(seed)
    net = random_network(rng, max_layers=2, max_size=6, max_channels=4)
    program = compile_network(net, ArrayConfig(rows=3, cols=2, weight_memory="spram",
                                               interconnect=interconnect))
    check(program, random_input(rng, net, 2), weights=weight_beats(program, net))


# -- weight-stationary -------------------------------------------------------------------

#: (seed, rows, cols) of the weight-stationary runs: 1x1, 2x3, 3x2, 4x4 and more, C < R
#: (the corner turn's rate is C/R) and C > R
WS_CASES = [(110 + seed, rows, cols) for seed, (rows, cols) in enumerate(
    [(1, 1), (2, 3), (3, 2), (4, 4), (2, 2), (3, 1), (1, 4), (4, 2), (2, 4), (4, 3)])]


def _ws_case(seed, rows, cols, fuse=True):
    rng = np.random.default_rng(seed)
    net = random_network(rng, max_layers=3, max_size=7, max_channels=6)
    program = compile_network(net, ArrayConfig(rows=rows, cols=cols, dataflow="ws",
                                               fuse_pool=fuse))
    return program, random_input(rng, net, cols)


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("seed,rows,cols", WS_CASES,
                         ids=[f"seed={s}-{r}x{c}" for s, r, c in WS_CASES])
def test_ws_random_network_bit_exact(seed, rows, cols, fuse):
    program, x = _ws_case(seed, rows, cols, fuse)
    assert all(s.dataflow == "ws" for s in program.steps if s.kind == "matmul")
    check(program, x)


def test_ws_random_set_coverage():
    """The weight-stationary cases cover what the schedule has to get right: several
    k-tiles and channel tiles, a partial last pixel group, blocks that wait for the
    weight double buffer, k-tiles beyond K, both C < R and C > R, pooling passes."""
    seen = dict.fromkeys(["k_tiles", "channel_tiles", "partial_group", "block_wait",
                          "k_padding", "c_lt_r", "c_gt_r", "pool", "fused_pool",
                          "stride2"], 0)
    for seed, rows, cols in WS_CASES:
        seen["pool"] += any(s.kind == "pool" for s in _ws_case(seed, rows, cols,
                                                               False)[0].steps)
        program, _ = _ws_case(seed, rows, cols)
        seen["c_lt_r"] += cols < rows
        seen["c_gt_r"] += cols > rows
        for s in program.steps:
            if s.kind != "matmul":
                continue
            seen["fused_pool"] += s.fused_pool > 0
            seen["k_tiles"] += s.k_tiles > 1
            seen["channel_tiles"] += s.channel_tiles > 1
            seen["partial_group"] += s.last_group < s.group
            seen["block_wait"] += program.ws_block_cycles(s.last_group) > \
                s.last_group * program.ws_slot
            seen["k_padding"] += s.k_tiles * rows > s.reduction
            seen["stride2"] += s.stride == 2
    assert all(seen.values()), seen


@pytest.mark.parametrize("mode", ROUNDING_MODES)
def test_ws_rounding_modes(mode):
    rng = np.random.default_rng(12)
    net = random_network(rng, max_layers=2, max_size=6, max_channels=5)
    program = compile_network(net, ArrayConfig(rows=3, cols=2, dataflow="ws"))
    check(program, random_input(rng, net, 2), rounding=mode)


@pytest.mark.parametrize("seed", [3, 4], ids=lambda s: f"seed={s}")
def test_ws_input_gaps_and_output_backpressure(seed):
    rng = np.random.default_rng(seed)
    net = random_network(rng, max_layers=2, max_size=6, max_channels=3)
    program = compile_network(net, ArrayConfig(rows=2, cols=3, dataflow="ws"))
    counters, _ = check(program, random_input(rng, net, 3), gaps=np.random.default_rng(seed),
                        stalls=np.random.default_rng(seed + 1))
    assert counters.get("gaps", 0) > 0 and counters.get("stalls", 0) > 0, counters


def test_ws_partial_batch_counts_only_real_images():
    rng = np.random.default_rng(9)
    net = random_network(rng, max_layers=2, max_size=6, max_channels=3)
    program = compile_network(net, ArrayConfig(rows=2, cols=3, dataflow="ws"))
    check(program, random_input(rng, net, 2))


@pytest.mark.parametrize("memory", ["bram", "spram"])
def test_ws_weights_loaded_at_run_time(memory):
    """The weight stream carries the weight-stationary layout (words of C weights)."""
    rng = np.random.default_rng(25)
    net = random_network(rng, max_layers=2, max_size=6, max_channels=4)
    program = compile_network(net, ArrayConfig(rows=2, cols=3, dataflow="ws",
                                               weight_memory=memory))
    other = _new_weights(rng, net) if memory == "bram" else net
    check(program, random_input(rng, net, 3), network=other,
          weights=weight_beats(program, other))


@pytest.mark.parametrize("registered", [False, True], ids=["plain", "registered"])
@pytest.mark.parametrize("seed,rows,cols", [(21, 2, 3), (22, 3, 2), (23, 4, 1), (24, 1, 2)],
                         ids=lambda v: str(v))
def test_fused_max_pool_is_the_output(seed, rows, cols, registered):
    """A conv whose fused 2x2 max pool is the network's output, so every pooled value is
    compared (a pool inside a random network mostly disappears behind saturated dense
    layers).  With registered memories the running maximum's compare is made a cycle
    early against the ring's coming head; input gaps and output stalls change when the
    ring turns.  Coverage: the maximum is often not the window's first value."""
    from systolic.golden.ir import Conv2d, MaxPool2d, QNetwork
    from systolic.golden.qformat import QFormat
    rng = np.random.default_rng(seed)
    f = QFormat(8, 3)
    net = QNetwork((2, 8, 6), f, [
        Conv2d(weight=rng.integers(-128, 128, (5, 2, 3, 3)), weight_format=f,
               out_format=QFormat(8, -3), padding="same", rounding="nearest_even"),
        MaxPool2d(kernel=2)], seed=seed)
    program = compile_network(net, ArrayConfig(rows=rows, cols=cols, fuse_pool=True,
                                               registered_memories=registered))
    assert program.steps[-1].fused_pool == 2
    x = random_input(rng, net, cols)
    counters, want = check(program, x, gaps=np.random.default_rng(seed),
                           stalls=np.random.default_rng(seed + 1))
    assert counters.get("gaps", 0) > 0 and counters.get("stalls", 0) > 0, counters
    n, c, h, w = want.tensors[1].shape
    windows = want.tensors[1].reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5)
    windows = windows.reshape(n, c, h // 2, w // 2, 4)
    later = (windows[..., 1:].max(-1) > windows[..., 0]).mean()
    assert 0.3 < later < 1, f"seed={seed}: the maximum came later in {later:.0%} of windows"
    assert len(np.unique(want.logits)) > 20, f"seed={seed}: degenerate pooled values"
