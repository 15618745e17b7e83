"""Whole networks on the accelerator under cocotb (sim/accel.py, bench sim/tb_accel.py),
bit-exact against the golden model, with every counter as the compiler predicts.

* ``mnist-tiny`` and ``lenet5`` on 5 real held-out MNIST images, all three rounding modes
  (run-time registers, so one build per network, array shape and dataflow), on an 8x8
  and a non-square 4x3 array (three columns keep the build small and make the 5 images
  two batches, the second partial), both dataflows, under Verilator; the 4x3 runs also
  compare every stored layer tensor.
* 32 random networks (:func:`~systolic.golden.randnet.random_network`, the seed in the
  test id) on random small arrays, 3 random inputs each, every layer tensor compared
  (their models compiled at -O0, see ``RANDOM_BUILD``): seeds 0..23 output-stationary,
  100..105, 116 and 125 weight-stationary.
* Random input gaps and output back-pressure: same results, same compute cycles.
* One Icarus run (a random network, with the layer check, gaps and back-pressure).
* A planted difference (the golden side's weights changed) is reported with its layer,
  element and both values; a run that does not finish is reported as such.

Every build is cached (sim/runner.py), so a second run of this file only simulates.  With
an empty cache, ``pytest -n 2`` runs this file and tests/test_cli_sim.py in about 3 1/2
minutes on two cores for the output-stationary part (3 min 17 s measured; 28 Verilator
builds and one Icarus build).  The weight-stationary cases (``-k "ws or 105"``) add 12
Verilator builds: about 7 minutes in one process on a loaded machine (the four zoo
runs 48-88 s each, the random networks 14-39 s).
"""

import shutil
from dataclasses import replace

import numpy as np
import pytest

from systolic.golden import models
from systolic.golden.datasets import mnist
from systolic.golden.errors import ConstraintError
from systolic.golden.randnet import random_input, random_network
from systolic.golden.rounding import ROUNDING_MODES
from systolic.golden.run import run
from systolic.rtl.compiler import ArrayConfig, compile_network
from systolic.sim._env import SimulatorError
from systolic.sim.accel import (MODE_CODES, icarus_verilog, rounding_modes, simulate,
                                verilator_args)

needs_icarus = pytest.mark.skipif(shutil.which("iverilog") is None,
                                  reason="Icarus Verilog is not installed "
                                         "(apt-get install iverilog; .ci/run installs it)")

#: Seed of the stochastic-rounding register in the zoo runs (the networks' own is 0).
SR_SEED = 12345


def check(result, *, layers=False):
    """Assert bit-exact outputs (and layer tensors) and counters as predicted."""
    assert result.ok, (f"{result.mismatch_count} elements differ, counters: "
                       f"{[str(c) for c in result.counter_mismatches]}; first: "
                       f"{result.first_problem()}; run folder {result.run_dir}")
    assert result.bit_exact == result.images
    net = result.program.network
    stored = {s.tensor for s in result.program.steps}
    assert set(result.checked_tensors) == (stored if layers else {len(net.layers)})
    for b in result.batches:
        assert b.cycles == b.busy_cycles == result.program.cycles


def _program(name, shape, dataflow="os"):
    """``dataflow`` is ``os``, ``ws`` or ``os-broadcast`` (the broadcast interconnect)."""
    dataflow, _, interconnect = dataflow.partition("-")
    return compile_network(models.load(name), ArrayConfig.parse_shape(
        shape, dataflow=dataflow, interconnect=interconnect or "systolic"))


ZOO = [(name, shape, layers, dataflow) for dataflow in ("os", "ws")
       for name, shape, layers in [("lenet5", "8x8", False), ("lenet5", "4x3", True),
                                   ("mnist-tiny", "8x8", False),
                                   ("mnist-tiny", "4x3", True)]] + [
    (name, "4x3", True, "os-broadcast") for name in ("lenet5", "mnist-tiny")]


@pytest.mark.slow
@pytest.mark.parametrize("name, shape, layers, dataflow", ZOO,
                         ids=[f"{n}-{s}-{d}{'-layers' if l else ''}" for n, s, l, d in ZOO])
def test_zoo_network_real_images(name, shape, layers, dataflow):
    program = _program(name, shape, dataflow)
    images, labels = mnist("holdout")
    x = models.mnist_input(program.network, images[:5])
    outputs = {}
    for mode in ROUNDING_MODES:
        seed = SR_SEED if mode == "stochastic" else None
        result = simulate(program, x, rounding=mode, seed=seed, check_layers=layers)
        check(result, layers=layers)
        assert result.modes == rounding_modes(program.network, mode)
        outputs[mode] = result.outputs
        # the register changes results: golden differs with the other seed / mode
        if mode == "stochastic":
            other = run(program.network, x, rounding=mode)
            assert any(np.any(a != b) for a, b in zip(other.tensors, result.golden.tensors))
    golden_floor = run(program.network, x, rounding="floor")
    golden_even = run(program.network, x, rounding="nearest_even")
    assert any(np.any(a != b) for a, b in zip(golden_floor.tensors, golden_even.tensors))
    # the networks classify these digits (not a test of the RTL; a sanity check of inputs)
    assert np.mean(outputs["nearest_even"].argmax(axis=1) == labels[:5]) >= 0.6


# -- random networks ---------------------------------------------------------------------

#: Random networks: the seed drives the network, the array shape, pool fusion and inputs;
#: seeds from 100 on run the weight-stationary dataflow.
RANDOM_SEEDS = list(range(24)) + list(range(100, 106)) + [116, 125]
#: The random networks are small and run a few thousand cycles: their models are compiled
#: without C++ optimization (-O0), which halves a build's time (the zoo networks and
#: `systolic sim` use Verilator's default -Os).
RANDOM_BUILD = ("-CFLAGS", "-O0")


def random_case(seed):
    rng = np.random.default_rng(seed)
    net = random_network(rng)
    rows, cols = (int(v) for v in rng.integers(1, 5, 2))
    config = ArrayConfig(rows=rows, cols=cols, fuse_pool=seed % 4 != 1,
                         dataflow="ws" if seed >= 100 else "os",
                         interconnect="broadcast" if seed < 100 and seed % 3 == 2
                         else "systolic")
    return net, config, random_input(rng, net, 3)


def _random_id(seed):
    _, config, _ = random_case(seed)
    if config.dataflow == "ws":
        return f"seed={seed}-{config.rows}x{config.cols}-ws"
    return (f"seed={seed}-{config.rows}x{config.cols}{'' if config.fuse_pool else '-unfused'}"
            f"{'-broadcast' if config.interconnect == 'broadcast' else ''}")


def test_random_set_coverage():
    """The random networks cover what they are meant to: every rounding mode, saturation,
    stride 2, padding, both pools (fused and unfused max pool), partial batches and
    one-column arrays."""
    seen = dict.fromkeys(["stochastic", "nearest_even", "floor", "saturation", "stride2",
                          "padding", "avgpool", "fused_max", "unfused_max", "partial",
                          "one_column", "several_tiles", "ws", "ws_k_tiles",
                          "ws_channel_tiles", "ws_c_lt_r", "ws_c_gt_r", "ws_fused_max",
                          "ws_unfused_max", "broadcast", "broadcast_several_tiles"], 0)
    for seed in RANDOM_SEEDS:
        net, config, x = random_case(seed)
        program = compile_network(net, config)
        for layer in net.layers:
            if getattr(layer, "rounding", None):
                seen[layer.rounding] += 1
        seen["saturation"] += sum(run(net, x).saturations) > 0
        seen["stride2"] += any(getattr(s, "stride", 1) == 2 for s in program.steps
                               if s.op == "conv2d")
        seen["padding"] += any(s.top or s.left for s in program.steps)
        seen["avgpool"] += any(s.op == "avg" for s in program.steps)
        seen["fused_max"] += any(s.fused_pool for s in program.steps)
        seen["unfused_max"] += any(s.op == "max" for s in program.steps)
        seen["partial"] += len(x) % config.cols != 0
        seen["one_column"] += config.cols == 1
        seen["several_tiles"] += any(s.channel_tiles > 1 for s in program.steps)
        if config.interconnect == "broadcast":
            seen["broadcast"] += 1
            seen["broadcast_several_tiles"] += any(s.channel_tiles > 1 for s in program.steps)
        if config.dataflow == "ws":
            seen["ws"] += 1
            seen["ws_k_tiles"] += any(s.k_tiles > 1 for s in program.steps)
            seen["ws_channel_tiles"] += any(s.channel_tiles > 1 for s in program.steps
                                            if s.kind == "matmul")
            seen["ws_c_lt_r"] += config.cols < config.rows
            seen["ws_c_gt_r"] += config.cols > config.rows
            seen["ws_fused_max"] += any(s.fused_pool for s in program.steps)
            seen["ws_unfused_max"] += any(s.op == "max" for s in program.steps)
    assert len(RANDOM_SEEDS) >= 20
    assert all(seen.values()), seen


@pytest.mark.slow
@pytest.mark.parametrize("seed", RANDOM_SEEDS, ids=[_random_id(s) for s in RANDOM_SEEDS])
def test_random_network(seed):
    net, config, x = random_case(seed)
    program = compile_network(net, config)
    print(f"random network seed={seed}: {config.rows}x{config.cols}, "
          f"{[layer.kind for layer in net.layers]}")
    result = simulate(program, x, check_layers=True, build_args=RANDOM_BUILD)
    check(result, layers=True)
    assert result.golden.saturations == [sum(b.saturations[j] for b in result.batches)
                                         for j in range(len(net.layers))]


# -- traffic ---------------------------------------------------------------------------

TRAFFIC = [("random", 5, 0.5, 0.5), ("random", 14, 0.9, 0.3), ("mnist-tiny", 0, 0.5, 0.7),
           ("random", 105, 0.6, 0.6)]


@pytest.mark.slow
@pytest.mark.parametrize("source, seed, gap, stall", TRAFFIC,
                         ids=[f"{s}-seed={n}-gap={g}-stall={t}" for s, n, g, t in TRAFFIC])
def test_input_gaps_and_output_backpressure(source, seed, gap, stall):
    """Seeded random idle cycles on the input and stalls on the output change neither the
    results (still bit-exact) nor the compute cycles (still as predicted, measured from
    ``busy`` and by the design's counters); the builds are those of the runs above."""
    if source == "random":
        net, config, x = random_case(seed)
        program = compile_network(net, config)
        layers, build = True, RANDOM_BUILD
    else:
        program = _program(source, "8x8")
        x = models.mnist_input(program.network, mnist("holdout")[0][5:10])
        layers, build = False, ()
    result = simulate(program, x, check_layers=layers, gap=gap, stall=stall,
                      traffic_seed=seed + 1, build_args=build)
    check(result, layers=layers)
    assert result.gaps > 0 and result.stalls > 0, (result.gaps, result.stalls)
    for b in result.batches:
        assert b.load_cycles == program.input_words + b.gaps
        assert b.output_cycles >= program.output_words + b.stalls


# -- Icarus ----------------------------------------------------------------------------

@pytest.mark.slow
@needs_icarus
def test_icarus():
    net, config, x = random_case(17)         # a max pool fused into a conv, 3x2
    program = compile_network(net, config)
    result = simulate(program, x, simulator="icarus", check_layers=True, gap=0.3, stall=0.6,
                      traffic_seed=4)
    assert result.simulator == "icarus"
    check(result, layers=True)
    assert result.gaps > 0 and result.stalls > 0


# -- a planted difference is found -------------------------------------------------------

@pytest.mark.slow
def test_mismatch_names_layer_element_and_values():
    """The hardware is built from the program's weight image, the comparison uses
    ``program.network``: changing one weight of the network's second conv makes the golden
    side differ from that layer on, and the report names the first differing element."""
    net, config, x = random_case(2)
    program = compile_network(net, config)
    j = 1
    layer = net.layers[j]
    assert layer.kind == "conv2d"
    w = np.where(layer.weight > 0, layer.weight_format.min, layer.weight_format.max)
    bad = replace(net, layers=tuple(replace(l, weight=w) if i == j else l
                                    for i, l in enumerate(net.layers)))
    assert np.any(run(bad, x).tensors[j + 1] != run(net, x).tensors[j + 1])
    result = simulate(replace(program, network=bad), x, check_layers=True,
                      build_args=RANDOM_BUILD)
    assert not result.ok and result.mismatch_count > 0
    first = result.mismatches[0]
    assert first.layer == j and first.kind == "conv2d" and first.tensor == j + 1
    want = run(bad, x).tensors[j + 1].reshape(len(x), -1)
    assert first.expected == want[first.image, first.index] != first.got
    assert first.got == run(net, x).tensors[j + 1].reshape(len(x), -1)[first.image,
                                                                        first.index]
    assert f"layer {j} (conv2d) output element {first.index}" in str(first)
    assert result.bit_exact < len(x)


@pytest.mark.slow
def test_a_run_that_does_not_finish_is_reported():
    """The bench gives up on a run that takes far longer than predicted (here the
    prediction is made 1 cycle per step; the hardware, and so the build, is the same)."""
    net, config, x = random_case(1)
    program = compile_network(net, config)
    assert program.cycles > 1100
    wrong = replace(program, steps=tuple(replace(s, cycles=1) for s in program.steps))
    with pytest.raises(SimulatorError, match=r"the accelerator did not finish its run in "
                                             r"1\d\d\d cycles \(busy=1, step=\d+"):
        simulate(wrong, x, check_layers=True, build_args=RANDOM_BUILD)


# -- fast checks of the library ------------------------------------------------------------

def test_mode_codes_are_the_rounding_register_encoding():
    from systolic.rtl.requant import MODE
    assert MODE_CODES == MODE


def test_rounding_modes():
    net = models.load("lenet5")
    assert rounding_modes(net) == ("nearest_even", "floor", "nearest_even", "floor",
                                   "nearest_even", "nearest_even", "nearest_even")
    assert rounding_modes(net, "stochastic")[:2] == ("stochastic", "floor")
    with pytest.raises(ValueError, match="Rounding must be one of floor, nearest_even, "
                                         "stochastic, not 'up'"):
        rounding_modes(net, "up")


def test_icarus_verilog_starts_the_combinational_blocks():
    text = ("module top(a);\n  reg \\$auto$verilog_backend.cc:2355:dump_module$1  = 0;\n"
            "  always @* begin\n  end\nendmodule\n")
    patched = icarus_verilog(text)
    assert "  initial #0 \\$auto$verilog_backend.cc:2355:dump_module$1  = 1'h1;\n" in patched
    assert patched.replace("  initial #0 \\$auto$verilog_backend.cc:2355:dump_module$1  "
                           "= 1'h1;\n", "") == text


def test_verilator_args_mark_only_ports_public(tmp_path):
    text = "module top(clk, rst, i__valid, busy);\n  input clk;\nendmodule\n"
    args = verilator_args(text, cache_dir=tmp_path)
    assert args[0] == "--no-public-flat-rw"
    vlt = open(args[1]).read()
    assert vlt.startswith("`verilator_config\n")
    for port in ("clk", "rst", "i__valid", "busy"):
        assert f'-var "{port}"' in vlt
    assert "bank_" not in vlt
    assert 'bank_*' in open(verilator_args(text, banks=True, cache_dir=tmp_path)[1]).read()
    assert verilator_args(text, cache_dir=tmp_path) == args      # content-named, stable
    with pytest.raises(ValueError, match="no module named 'top'"):
        verilator_args("module other(a);\nendmodule\n", cache_dir=tmp_path)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(gap=1.0), ValueError, r"Gap probability must be in \[0, 1\), not 1.0"),
    (dict(stall=-0.1), ValueError, r"Stall probability must be in \[0, 1\), not -0.1"),
    (dict(rounding="up"), ValueError, "Rounding must be one of"),
    (dict(seed=-1), ValueError, r"Seed must be an integer in \[0, 2\*\*32\), not -1"),
    (dict(images=np.zeros((0, 1, 28, 28), dtype=np.int64)), ValueError,
     "No images to simulate"),
    (dict(images=np.zeros((1, 1, 27, 28), dtype=np.int64)), ValueError,
     r"Input images have shape \(1, 27, 28\)"),
], ids=["gap", "stall", "rounding", "seed", "no-images", "shape"])
def test_simulate_argument_errors(kwargs, error, match):
    program = _program("mnist-tiny", "2x2")
    images = kwargs.pop("images", np.zeros((1, 1, 28, 28), dtype=np.int64))
    with pytest.raises(error, match=match):
        simulate(program, images, **kwargs)


def test_simulate_rejects_stochastic_without_generator():
    program = compile_network(models.load("mnist-tiny"), ArrayConfig(rows=2, cols=2,
                                                                     stochastic=False))
    with pytest.raises(ConstraintError, match="Layer 0 rounds stochastically, but the "
                                              "accelerator was built without"):
        simulate(program, np.zeros((1, 1, 28, 28), dtype=np.int64), rounding="stochastic")
    with pytest.raises(TypeError, match="Program must be a Program from compile_network"):
        simulate(models.load("mnist-tiny"), np.zeros((1, 1, 28, 28), dtype=np.int64))
