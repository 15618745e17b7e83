"""Weights through the accelerator's ``w`` stream in sim/accel.py, and the Verilog cache.

* The iCEBreaker preset (8x2, packed SB_MAC16 multipliers, weights in SPRAM, which is empty
  at power-up) runs ``lenet5`` on 5 real MNIST images: the bench loads the weights through
  ``w`` after reset, then every image is bit-exact and every counter as predicted.
* Run-time weight rewrite: network B (A's weights and biases shuffled, seeded) loaded into
  the accelerator built for network A gives golden(B)'s outputs bit-exact, which differ from
  golden(A)'s; with input gaps and output back-pressure (the gaps apply to ``w`` too).
* Weights of another topology are refused before anything is built.
* :func:`~systolic.sim.accel.accelerator_verilog` reads a design it generated before back
  from the cache instead of elaborating it again; the key changes with the program's
  content and with the generator's source.

Time (two cores, cached builds): about 10 s; with an empty cache the two Verilator builds
add about 20 s each.
"""

from dataclasses import replace

import numpy as np
import pytest

from systolic.boards.targets import board
from systolic.golden import models
from systolic.golden.datasets import mnist
from systolic.golden.errors import ConstraintError
from systolic.golden.randnet import random_network
from systolic.golden.run import run
from systolic.rtl.compiler import ArrayConfig, compile_network
from systolic.sim import accel
from systolic.sim.accel import (accelerator_verilog, design_key, generator_digest, simulate,
                                weight_payloads)


def shuffled(net, seed):
    """``net`` with every layer's weights and biases permuted (seeded): the same topology
    and formats, other values."""
    rng = np.random.default_rng(seed)
    layers = []
    for layer in net.layers:
        changes = {}
        for name in ("weight", "bias"):
            value = getattr(layer, name, None)
            if value is not None:
                changes[name] = rng.permutation(value.reshape(-1)).reshape(value.shape)
        layers.append(replace(layer, **changes) if changes else layer)
    return replace(net, layers=tuple(layers), name=f"{net.name}-shuffled-{seed}")


def check(result):
    assert result.ok, (f"{result.mismatch_count} elements differ, counters: "
                       f"{[str(c) for c in result.counter_mismatches]}; first: "
                       f"{result.first_problem()}; run folder {result.run_dir}")
    assert result.bit_exact == result.images
    for b in result.batches:
        assert b.cycles == b.busy_cycles == result.program.cycles


@pytest.mark.slow
def test_icebreaker_preset_lenet5_real_images():
    config = board("icebreaker").preset("8x2")
    assert config.weight_memory == "spram" and config.multiplier == "sb_mac16"
    program = compile_network(models.load("lenet5"), config)
    images, labels = mnist("holdout")
    x = models.mnist_input(program.network, images[:5])
    result = simulate(program, x)
    check(result)
    assert result.weight_beats == program.weight_words + program.bias_words
    assert result.weight_cycles == result.weight_beats          # w never stalls in LOAD
    assert result.measured_cycles == result.predicted_cycles == 3 * program.cycles
    print(f"lenet5 on the iCEBreaker preset: {result.bit_exact}/5 bit-exact, "
          f"{program.cycles} cycles per batch of 2, weights {result.weight_beats} beats in "
          f"{result.weight_seconds:.2f} s, accuracy {result.accuracy(labels):.2f}")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [3], ids=lambda s: f"seed={s}")
def test_weight_rewrite_runs_the_other_network(seed):
    print(f"seed={seed}")
    net_a = models.load("mnist-tiny")
    net_b = shuffled(net_a, seed)
    program = compile_network(net_a, ArrayConfig.parse_shape("4x3"))
    images, _ = mnist("holdout")
    x = models.mnist_input(net_a, images[:5])
    result = simulate(program, x, weights=net_b, gap=0.3, stall=0.3, traffic_seed=seed)
    check(result)
    assert result.weights_network is net_b
    assert result.weight_beats == program.weight_words + program.bias_words
    assert result.weight_cycles > result.weight_beats       # the gaps reached w
    assert result.gaps > 0 and result.stalls > 0
    golden_a = run(net_a, x).logits
    np.testing.assert_array_equal(result.outputs, result.expected)
    assert not np.array_equal(result.outputs, golden_a), "B's outputs equal A's: no test"


def test_weights_of_another_topology_are_refused(tmp_path):
    program = compile_network(models.load("mnist-tiny"), ArrayConfig.parse_shape("4x3"))
    other = models.load("lenet5")
    x = models.mnist_input(program.network, mnist("holdout")[0][:1])
    with pytest.raises(ConstraintError, match=r"does not have the topology and formats"):
        simulate(program, x, weights=other, run_dir=tmp_path / "run",
                 cache_dir=tmp_path / "cache")
    with pytest.raises(TypeError, match=r"Weights must be a QNetwork .*, not dict"):
        simulate(program, x, weights={}, cache_dir=tmp_path / "cache")


def test_weight_payloads_pack_the_stream_layout():
    program = compile_network(models.load("mnist-tiny"), ArrayConfig.parse_shape("4x3"))
    payloads = weight_payloads(program)
    R, ww, accw = 4, program.weight_width, program.acc_width
    addr_width = (max(program.weight_words, program.bias_words) - 1).bit_length()
    assert len(payloads) == program.weight_words + program.bias_words
    for k in (0, program.weight_words - 1):
        word = payloads[k]
        assert word & 1 == 0 and (word >> 1) & ((1 << addr_width) - 1) == k
        values = [((word >> (1 + addr_width + r * ww)) & ((1 << ww) - 1)) for r in range(R)]
        values = [v - (1 << ww) if v >> (ww - 1) else v for v in values]
        assert values == list(program.weight_image[k])
    word = payloads[program.weight_words]
    assert word & 1 == 1 and (word >> 1) & ((1 << addr_width) - 1) == 0
    first = (word >> (1 + addr_width)) & ((1 << accw) - 1)
    first = first - (1 << accw) if first >> (accw - 1) else first
    assert first == program.bias_image[0][0]


@pytest.mark.parametrize("seed", [11], ids=lambda s: f"seed={s}")
def test_verilog_cache(tmp_path, monkeypatch, seed):
    print(f"seed={seed}")
    net = random_network(np.random.default_rng(seed))
    program = compile_network(net, ArrayConfig(rows=2, cols=2))
    first = accelerator_verilog(program, cache_dir=tmp_path)
    files = list((tmp_path / "verilog").glob("top-*.v"))
    assert len(files) == 1 and files[0].read_text() == first

    # a new process (empty in-process cache) reads it back without elaborating
    monkeypatch.setattr(accel, "_VERILOG", type(accel._VERILOG)())

    def no_elaboration(*args, **kwargs):
        raise AssertionError("the design was elaborated again")
    monkeypatch.setattr("systolic.sim.verilog.emit_verilog", no_elaboration)
    again = compile_network(net, ArrayConfig(rows=2, cols=2))      # equal, not the same
    assert again is not program and design_key(again) == design_key(program)
    assert accelerator_verilog(again, cache_dir=tmp_path) == first

    # other weights, another configuration: other keys
    other = compile_network(shuffled(net, seed), ArrayConfig(rows=2, cols=2))
    assert design_key(other) != design_key(program)
    assert design_key(compile_network(net, ArrayConfig(rows=2, cols=3))) != \
        design_key(program)


def test_generator_source_edit_changes_the_key(tmp_path, monkeypatch):
    """An edit of a generator source file changes :func:`generator_digest` and so every
    design key (a stand-in package takes the place of rtl/ here)."""
    package = tmp_path / "fake_rtl"
    package.mkdir()
    (package / "__init__.py").write_text("")
    unit = package / "unit.py"
    unit.write_text("WIDTH = 8\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(accel, "_GENERATOR_PACKAGES", ("fake_rtl", "systolic.golden"))
    before = generator_digest()
    assert generator_digest() == before
    unit.write_text("WIDTH = 9\n")
    after = generator_digest()
    assert after != before
    program = compile_network(models.load("mnist-tiny"), ArrayConfig.parse_shape("4x3"))
    key = design_key(program)
    unit.write_text("WIDTH = 10\n")
    assert design_key(program) != key


@pytest.mark.slow
def test_cli_sim_board_preset(capsys):
    """`systolic sim lenet5 --board icebreaker` simulates that board's preset (the build of
    test_icebreaker_preset_lenet5_real_images, from the cache)."""
    from systolic.cli import main
    assert main(["sim", "lenet5", "--board", "icebreaker", "--preset", "8x2",
                 "--images", "2"]) == 0
    out = capsys.readouterr().out
    assert ("board icebreaker's 8x2 array (os, broadcast, sb_mac16 multipliers, weights in "
            "spram, queues in memory)") in out
    assert "bit-exact:         2/2 images" in out
    assert "weights:           loaded through the weight stream, 8061 beats" in out


def test_cli_sim_board_and_array_conflict():
    from systolic.cli import main
    with pytest.raises(SystemExit, match=r"give --board or --array/--multiplier, not both"):
        main(["sim", "lenet5", "--board", "icebreaker", "--array", "4x4", "--images", "2"])
