"""The compiler: configuration checks, errors for networks that do not run or fit, the
memory images and the tiling arithmetic (the cycle model itself is checked against the
hardware in test_accelerator.py and tests/sim)."""

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
    (dict(dataflow="ws"), ValueError, r"Dataflow 'ws' is not supported by the accelerator"),
    (dict(multiplier="dsp"), ValueError, r"Multiplier must be one of"),
    (dict(stochastic=1), TypeError, r"Stochastic must be a bool, not 1"),
    (dict(fuse_pool="yes"), TypeError, r"Fuse pool must be a bool, not 'yes'"),
    (dict(weight_memory="flash"), ValueError, r"Weight memory must be one of bram, spram, "
                                              r"not 'flash'"),
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
