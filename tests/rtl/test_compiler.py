"""The compiler: configuration checks, errors for networks that do not run or fit, the
memory images and the tiling arithmetic (the cycle model itself is checked against the
hardware in test_accelerator.py and tests/sim)."""

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from systolic.golden import models
from systolic.golden.errors import ConstraintError, NetworkError
from systolic.golden.ir import Activation, Conv2d, Dense, MaxPool2d, QNetwork
from systolic.golden.qformat import QFormat
from systolic.golden.randnet import random_network
from systolic.rtl.compiler import ArrayConfig, compile_network

F = QFormat(8, 4)


def small_net(*extra, stochastic=False):
    rng = np.random.default_rng(0)
    return QNetwork((1, 6, 6), F, [
        Conv2d(weight=rng.integers(-8, 8, (3, 1, 3, 3)), weight_format=F, out_format=F,
               rounding="stochastic" if stochastic else "nearest_even"),
        *extra,
        Dense(weight=rng.integers(-8, 8, (2, 48)), weight_format=F,
              out_format=F, rounding="floor")])


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(rows=0), TypeError, r"Array rows must be a positive integer, not 0"),
    (dict(cols=33), ValueError, r"Array columns must be between 1 and 32, not 33"),
    (dict(rows=2.0), TypeError, r"Array rows must be a positive integer, not 2.0"),
    (dict(dataflow="xx"), ValueError, r"Dataflow must be one of os, ws, not 'xx'"),
    (dict(dataflow=1), ValueError, r"Dataflow must be one of os, ws, not 1"),
    (dict(multiplier="dsp"), ValueError, r"Multiplier must be one of"),
    (dict(stochastic=1), TypeError, r"Stochastic must be a bool, not 1"),
    (dict(fuse_pool="yes"), TypeError, r"Fuse pool must be a bool, not 'yes'"),
    (dict(registered_memories=1), TypeError, r"Registered memories must be a bool, not 1"),
    (dict(queue_memory="yes"), TypeError, r"Queue memory must be a bool, not 'yes'"),
    (dict(queue_memory=True, dataflow="ws"), ValueError,
     r"Queues in memory are implemented for the output-stationary dataflow, not 'ws'"),
    (dict(product_register=1), TypeError, r"Product register must be a bool, not 1"),
    (dict(product_register=True, interconnect="broadcast"), ValueError,
     r"Product register is implemented for the output-stationary systolic array, not os "
     r"broadcast"),
    (dict(registered_memories=True, dataflow="ws"), ValueError,
     r"Registered memories are implemented for the output-stationary dataflow, not 'ws'"),
    (dict(weight_memory="flash"), ValueError, r"Weight memory must be one of bram, spram, "
                                              r"auto, not 'flash'"),
    (dict(interconnect="mesh"), ValueError, r"Interconnect must be one of systolic, "
                                            r"broadcast, not 'mesh'"),
    (dict(interconnect="broadcast", dataflow="ws"), ValueError,
     r"A broadcast interconnect needs the output-stationary dataflow, not 'ws'"),
    (dict(rounds_per_stage=0), TypeError, r"Rounds per stage must be a positive integer"),
    (dict(weight_memory_bits=-1), TypeError, r"Weight memory bits must be a positive"),
])
def test_config_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        ArrayConfig(**kwargs)


@pytest.mark.parametrize("text,shape", [("8x8", (8, 8)), ("4X6", (4, 6)), ("1x32", (1, 32))])
def test_parse_shape(text, shape):
    config = ArrayConfig.parse_shape(text)
    assert (config.rows, config.cols) == shape


@pytest.mark.parametrize("text", ["8", "8x", "axb", "8x8x8"])
def test_parse_shape_errors(text):
    with pytest.raises(ValueError, match=r"Array shape must look like 8x8"):
        ArrayConfig.parse_shape(text)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["rows", "cols", "dataflow", "multiplier",
                                        "stochastic", "rounds_per_stage", "fuse_pool",
                                        "weight_memory_bits"]),
                       st.one_of(st.integers(-3, 40), st.booleans(), st.text(max_size=3),
                                 st.none(), st.floats(allow_nan=False))))
def test_config_fuzz(kwargs):
    try:
        ArrayConfig(**kwargs)
    except (TypeError, ValueError):
        pass


def test_unsupported_layer_is_named():
    net = small_net(Activation(function="leaky_relu", slope_shift=2, out_format=F,
                               rounding="floor"))
    with pytest.raises(NetworkError, match=r"Layer 1 \(activation\): not supported by the "
                                           r"accelerator yet"):
        compile_network(net)


def test_overlapping_pool_is_rejected():
    net = QNetwork((1, 6, 6), F, [
        Conv2d(weight=np.ones((2, 1, 3, 3), np.int64), weight_format=F, out_format=F,
               rounding="floor"),
        MaxPool2d(kernel=2, stride=1),
        Dense(weight=np.ones((2, 18), np.int64), weight_format=F, out_format=F,
              rounding="floor")])
    with pytest.raises(NetworkError, match=r"Layer 1 \(maxpool2d\): the accelerator pools "
                                           r"with stride equal to the kernel"):
        compile_network(net)


def test_stochastic_layer_needs_the_generator():
    with pytest.raises(ConstraintError, match=r"Layer 0 \(conv2d\) rounds stochastically"):
        compile_network(small_net(stochastic=True), ArrayConfig(stochastic=False))


def test_activation_memory_too_small_names_tensor_and_bits():
    net = models.load("lenet5")
    program = compile_network(net)
    with pytest.raises(ConstraintError, match=rf"Activation memory: tensor \d+ .* "
                                              rf"{program.act_bits} bits needed, 1000 available"):
        compile_network(net, ArrayConfig(activation_memory_bits=1000))


def test_weight_memory_too_small_names_bits():
    net = models.load("lenet5")
    program = compile_network(net)
    with pytest.raises(ConstraintError, match=rf"Weight memory: the weights and biases need "
                                              rf"{program.weight_bits} \+ {program.bias_bits} bits"
                                              rf".*layer 4's weight tensor.*1000 available"):
        compile_network(net, ArrayConfig(weight_memory_bits=1000))


@pytest.mark.parametrize("dataflow", ["os", "ws"])
def test_auto_weight_memory_chooses_by_size(dataflow):
    net = models.load("lenet5")
    bram = compile_network(net, ArrayConfig(dataflow=dataflow, weight_memory="bram"))
    need = bram.weight_bits + bram.bias_bits
    for budget, kind in [(None, "bram"), (need, "bram"), (need - 1, "spram")]:
        auto = compile_network(net, ArrayConfig(dataflow=dataflow, weight_memory="auto",
                                                weight_memory_bits=budget))
        assert auto.config.weight_memory == kind, (budget, auto.config)
        explicit = compile_network(net, replace(auto.config))
        assert auto.config == explicit.config
        assert auto.steps == explicit.steps == bram.steps
        assert auto.cycles == bram.cycles
        np.testing.assert_array_equal(auto.weight_image, bram.weight_image)
        np.testing.assert_array_equal(auto.bias_image, bram.bias_image)
    # the budget only limits block RAM: a network that overflows it goes to SPRAM, and
    # an explicit block-RAM configuration with that budget is still refused
    with pytest.raises(ConstraintError, match=r"Weight memory: the weights and biases need"):
        compile_network(net, ArrayConfig(dataflow=dataflow, weight_memory_bits=need - 1))


def test_not_a_network():
    with pytest.raises(TypeError, match=r"Network must be a QNetwork, not str"):
        compile_network("lenet5")


@pytest.mark.parametrize("seed", range(10), ids=lambda s: f"seed={s}")
def test_weight_image_holds_every_weight_once(seed):
    """Word (tile t, beat k) row r is W[t*R + r, k]; padding rows are zero."""
    rng = np.random.default_rng(seed)
    net = random_network(rng)
    rows = int(rng.integers(1, 6))
    program = compile_network(net, ArrayConfig(rows=rows, cols=2))
    for s in program.steps:
        if s.kind != "matmul":
            continue
        layer = net.layers[s.layer]
        w2 = layer.weight.reshape(layer.weight.shape[0], -1)
        words = program.weight_image[s.w_base:s.w_base + s.channel_tiles * s.reduction]
        back = words.reshape(s.channel_tiles, s.reduction, rows).transpose(0, 2, 1)
        back = back.reshape(-1, s.reduction)
        np.testing.assert_array_equal(back[:len(w2)], w2, err_msg=f"seed {seed}")
        assert not back[len(w2):].any()


def test_lenet5_mapping_and_utilization():
    """The reference mapping: both max pools fused, 5 steps, 91 % utilization predicted on
    8 x 8 (README performance table)."""
    program = compile_network(models.load("lenet5"))
    assert [s.op for s in program.steps] == ["conv2d", "conv2d", "dense", "dense", "dense"]
    assert [s.fused_pool for s in program.steps] == [2, 2, 0, 0, 0]
    assert program.region_words == 6 * 14 * 14
    assert 0.90 < program.utilization() < 0.92


# -- weight-stationary ---------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(10), ids=lambda s: f"seed={s}")
def test_ws_weight_and_bias_images(seed):
    """Block (channel tile t, k-tile q) is R words of C weights, word r holding
    W[t*C + c, q*R + r]; padding (channels beyond C_out, k beyond K) is zero; bias word t
    holds the C biases of tile t."""
    from systolic.golden.ops import align_bias
    rng = np.random.default_rng(seed)
    net = random_network(rng)
    rows, cols = (int(v) for v in rng.integers(1, 6, 2))
    program = compile_network(net, ArrayConfig(rows=rows, cols=cols, dataflow="ws"))
    assert program.weight_image.shape[1] == program.bias_image.shape[1] == cols
    formats = net.tensor_formats
    for s in program.steps:
        if s.kind != "matmul":
            continue
        layer = net.layers[s.layer]
        w2 = layer.weight.reshape(layer.weight.shape[0], -1)
        cout, k = w2.shape
        assert s.k_tiles == -(-k // rows) and s.channel_tiles == -(-cout // cols)
        words = program.weight_image[s.w_base:s.w_base + s.channel_tiles * s.k_tiles * rows]
        back = words.reshape(s.channel_tiles, s.k_tiles * rows, cols).transpose(0, 2, 1)
        back = back.reshape(s.channel_tiles * cols, s.k_tiles * rows)
        np.testing.assert_array_equal(back[:cout, :k], w2, err_msg=f"seed {seed}")
        assert not back[cout:].any() and not back[:, k:].any()
        bias = program.bias_image[s.b_base:s.b_base + s.channel_tiles].reshape(-1)
        want = np.zeros(cout, np.int64) if layer.bias is None else align_bias(
            layer.bias, layer.bias_format, formats[s.layer].frac + layer.weight_format.frac)
        np.testing.assert_array_equal(bias[:cout], want)
        assert not bias[cout:].any()


@pytest.mark.parametrize("fuse", [True, False])
def test_ws_pool_fusion(fuse):
    """Weight-stationary programs fuse max pools as output-stationary ones do."""
    net = models.load("lenet5")
    program = compile_network(net, ArrayConfig(dataflow="ws", fuse_pool=fuse))
    if fuse:
        assert [s.op for s in program.steps] == ["conv2d"] * 2 + ["dense"] * 3
        assert [s.fused_pool for s in program.steps] == [2, 2, 0, 0, 0]
    else:
        assert [s.op for s in program.steps] == ["conv2d", "max", "conv2d", "max",
                                                 "dense", "dense", "dense"]


def test_ws_cycle_model_lenet5_8x8():
    """The weight-stationary model, written out for lenet5's first layer on 8 x 8:
    784 pixels in groups of G = ceil(23 / 8) = 3 (the last of 1), 4 k-tiles of 8 (K = 25),
    one channel tile; slots of 8 cycles, blocks at least 2R + C - 1 = 23 cycles."""
    from systolic.golden import srgen
    program = compile_network(models.load("lenet5"), ArrayConfig(dataflow="ws"))
    s = program.steps[0]
    assert s.fused_pool == 2
    assert (s.group, s.groups, s.last_group, s.k_tiles, s.channel_tiles) == (3, 262, 1, 4, 1)
    assert s.beats == 1 * 4 * 784 * 8
    span = 4 * (261 * 24 + 23) - 23 + 0 * 8          # all blocks but the last; its one slot
    out = 1 + 3 + 4                                   # row register, generator, lanes
    assert s.cycles == (1 + srgen.ROUNDS) + 1 + span + (2 * 8 + 3 * 8 + 4) + out
    dense = program.steps[2]                          # one pixel: blocks of 23 cycles
    assert (dense.group, dense.k_tiles, dense.channel_tiles) == (1, 50, 15)
    assert dense.cycles == (1 + srgen.ROUNDS) + 1 + (15 * 50 - 1) * 23 + 44 + out


@pytest.mark.parametrize("shape", ["8x8", "4x3", "3x5", "1x1"])
def test_ws_layer_report_adds_up(shape):
    program = compile_network(models.load("lenet5"),
                              ArrayConfig.parse_shape(shape, dataflow="ws"))
    R = program.config.rows
    for step, row in zip(program.steps, program.layer_report()):
        if step.kind == "matmul":
            parts = step.macs / R + row["padding"] + row["tile_stalls"] + row["fill_drain"]
            assert parts == pytest.approx(row["cycles"])
            assert row["tile_stalls"] >= 0 and row["padding"] >= 0
        else:
            assert row["non_matrix"] == row["cycles"]
    assert program.cycles == sum(r["cycles"] for r in program.layer_report())


def test_ws_weight_memory_too_small_names_bits():
    net = models.load("lenet5")
    program = compile_network(net, ArrayConfig(rows=8, cols=4, dataflow="ws"))
    assert program.lanes == 4
    with pytest.raises(ConstraintError, match=rf"Weight memory: the weights and biases need "
                                              rf"{program.weight_bits} \+ {program.bias_bits} bits"
                                              rf" \({program.weight_words} words of 4 x 8 bits; "
                                              rf"layer 4's weight tensor.*1000 available"):
        compile_network(net, ArrayConfig(rows=8, cols=4, dataflow="ws",
                                         weight_memory_bits=1000))


def test_broadcast_interconnect_changes_only_the_array_latency():
    """The same network on a broadcast array: the same weights, biases and schedule, and
    each matmul step R + C fewer cycles (no skew and deskew); the description names it."""
    net = models.load("lenet5")
    systolic = compile_network(net, ArrayConfig(rows=8, cols=2))
    broadcast = compile_network(net, ArrayConfig(rows=8, cols=2, interconnect="broadcast"))
    np.testing.assert_array_equal(systolic.weight_image, broadcast.weight_image)
    np.testing.assert_array_equal(systolic.bias_image, broadcast.bias_image)
    for a, b in zip(systolic.steps, broadcast.steps):
        assert a.cycles - b.cycles == (10 if a.kind == "matmul" else 0), a
    assert broadcast.config.describe() == "8x2 array (os, broadcast, inferred multipliers)"
    assert ArrayConfig(weight_memory="spram").describe() == \
        "8x8 array (os, inferred multipliers, weights in spram)"


def test_output_stationary_biases_one_per_word():
    """Output-stationary bias words hold one bias each (a tile's rows read their own),
    weight-stationary ones C (a transposer row): lenet5's 236 biases in R-padded tiles."""
    net = models.load("lenet5")
    os_ = compile_network(net, ArrayConfig(rows=8, cols=2))
    assert os_.bias_image.shape == (8 * (1 + 2 + 15 + 11 + 2), 1) and os_.bias_lanes == 1
    ws = compile_network(net, ArrayConfig(rows=8, cols=2, dataflow="ws"))
    assert ws.bias_lanes == 2 and ws.bias_image.shape[1] == 2
    from systolic.golden.ops import align_bias
    for s in os_.steps:
        if s.kind == "matmul":
            layer = net.layers[s.layer]
            f_acc = net.tensor_formats[s.layer].frac + layer.weight_format.frac
            want = align_bias(layer.bias, layer.bias_format, f_acc)
            got = os_.bias_image[s.b_base:s.b_base + s.channel_tiles * 8, 0]
            np.testing.assert_array_equal(got[:len(want)], want)
            assert not got[len(want):].any()            # the padding rows
