"""Network IR validation: every rule names the layer and the field (golden/ir.py)."""

from dataclasses import replace

import numpy as np
import pytest

from systolic.golden.errors import NetworkError
from systolic.golden.ir import (Activation, Add, AvgPool2d, Conv2d, Dense, FloatNetwork,
                                MaxPool2d, QNetwork, register_lut_function, resolve_padding)
from systolic.golden.qformat import QFormat

Q8 = QFormat(8, 6)


def conv(o=4, i=1, k=3, **kw):
    p = dict(weight=np.ones((o, i, k, k), dtype=np.int64), bias=np.zeros(o, dtype=np.int64),
             weight_format=QFormat(8, 7), bias_format=QFormat(16, 13), out_format=Q8,
             rounding="nearest_even")
    p.update(kw)
    return Conv2d(**p)


def dense(o, i, **kw):
    p = dict(weight=np.ones((o, i), dtype=np.int64), weight_format=QFormat(8, 7),
             out_format=Q8, rounding="floor")
    p.update(kw)
    return Dense(**p)


def qnet(*layers, shape=(1, 8, 8), **kw):
    return QNetwork(shape, Q8, list(layers), **kw)


def test_valid_network_shapes_and_macs():
    net = qnet(conv(padding="same"), MaxPool2d(2), conv(8, 4, stride=2, padding="same"),
               dense(10, 8 * 2 * 2))
    assert net.tensor_shapes == ((1, 8, 8), (4, 8, 8), (4, 4, 4), (8, 2, 2), (10, 1, 1))
    assert net.tensor_formats[2] == Q8  # maxpool keeps its input's format
    assert net.layer_macs() == [4 * 64 * 9, 0, 8 * 4 * 36, 320]


@pytest.mark.parametrize("padding, expected", [
    ("valid", (0, 0, 0, 0)), ("same", (1, 1, 1, 1)), (2, (2, 2, 2, 2)),
    ((1, 0), (1, 1, 0, 0)), ((0, 1, 2, 0), (0, 1, 2, 0))])
def test_resolve_padding(padding, expected):
    assert resolve_padding(padding, (8, 8), (3, 3), 1) == expected


def test_same_padding_stride2_puts_extra_row_at_bottom():
    # TensorFlow's rule: 7 rows, k=4, s=2 -> out 4 rows, total pad 3 -> (1, 2)
    assert resolve_padding("same", (7, 7), (4, 4), 2) == (1, 2, 1, 2)


@pytest.mark.parametrize("make, match", [
    (lambda: qnet(conv(i=2)), r"Layer 0 \(conv2d\): weight has 2 input channels but the "
                              r"layer's input has 1"),
    (lambda: qnet(conv(k=8, padding=0), shape=(1, 9, 9)),
     r"Layer 0 \(conv2d\): kernel height must be between 1 and 7, not 8"),
    (lambda: qnet(conv(stride=3)), r"Layer 0 \(conv2d\): stride must be between 1 and 2"),
    (lambda: qnet(conv(padding=3)), r"Layer 0 \(conv2d\): padding .* between 0 and kernel-1"),
    (lambda: qnet(conv(padding="full")), r"Layer 0 \(conv2d\): Padding must be"),
    (lambda: qnet(conv(k=5), shape=(1, 4, 4)), r"Layer 0 \(conv2d\): a 5x5 kernel .* does "
                                               r"not fit the 4x4 input"),
    (lambda: qnet(conv(bias=np.zeros(3, dtype=np.int64))),
     r"Layer 0 \(conv2d\): bias has shape \(3,\), expected \(4,\)"),
    (lambda: qnet(conv(weight=np.full((4, 1, 3, 3), 200))),
     r"Layer 0 \(conv2d\): weight has values in 200..200, outside weight format Q\(8,7\)"),
    (lambda: qnet(conv(weight=np.ones((4, 1, 3, 3)))),
     r"Layer 0 \(conv2d\): weight must hold integers in a quantized network, not float64"),
    (lambda: qnet(conv(weight=np.ones((4, 3, 3), dtype=np.int64))),
     r"Layer 0 \(conv2d\): weight must have 4 dimensions"),
    (lambda: qnet(conv(bias_format=QFormat(16, 14))),
     r"Layer 0 \(conv2d\): bias_format Q\(16,14\) has more fractional bits than the "
     r"accumulator \(f_in \+ f_w = 13\)"),
    (lambda: qnet(conv(out_format=None)), r"Layer 0 \(conv2d\): out_format must be a QFormat"),
    (lambda: qnet(conv(rounding="up")), r"Layer 0 \(conv2d\): rounding must be one of "
                                        r"floor, nearest_even, stochastic, not 'up'"),
    (lambda: qnet(conv(activation="gelu")), r"Layer 0 \(conv2d\): activation must be one of"),
    (lambda: qnet(conv(activation="clip")), r"Layer 0 \(conv2d\): clip_max must be a "
                                            r"positive number, not None"),
    (lambda: qnet(conv(), dense(10, 100)), r"Layer 1 \(dense\): weight has 100 input "
                                           r"features but the layer's input \(4, 6, 6\) "
                                           r"flattens to 144"),
    (lambda: qnet(MaxPool2d(9)), r"Layer 0 \(maxpool2d\): a 9x9 window does not fit"),
    (lambda: qnet(MaxPool2d(0)), r"Layer 0 \(maxpool2d\): kernel must be at least 1"),
    (lambda: qnet(AvgPool2d(3, out_format=Q8, rounding="floor")),
     r"Layer 0 \(avgpool2d\): window area must be a power of two, not 3x3"),
    (lambda: qnet(Activation("swish", out_format=Q8, rounding="floor")),
     r"Layer 0 \(activation\): function must be one of"),
    (lambda: qnet(Activation("leaky_relu", slope_shift=0, out_format=Q8, rounding="floor")),
     r"Layer 0 \(activation\): slope_shift must be between 1 and 15, not 0"),
    (lambda: qnet(Activation("lut", lut="nope", out_format=Q8, rounding="floor")),
     r"Layer 0 \(activation\): lut function 'nope' is not registered"),
    (lambda: QNetwork((1, 4, 4), QFormat(12, 6),
                      [Activation("lut", lut="tanh", out_format=Q8, rounding="floor")]),
     r"Layer 0 \(activation\): a lookup-table activation takes inputs of at most 10 bits"),
    (lambda: qnet(conv(), Add(other=0, out_format=Q8, rounding="floor")),
     r"Layer 1 \(add\): tensor 0 has shape \(1, 8, 8\) but the layer's input has shape "
     r"\(4, 6, 6\)"),
    (lambda: qnet(Add(other=1, out_format=Q8, rounding="floor")),
     r"Layer 0 \(add\): other must be between 0 and 0, not 1"),
    (lambda: qnet(conv(), seed=-1), r"Network: seed must be between 0 and 4294967295"),
    (lambda: qnet(conv(), shape=(1, 8)), r"Network: input_shape must be a \(C, H, W\) tuple"),
    (lambda: QNetwork((1, 8, 8), (8, 6), [conv()]), r"Network: input_format must be a QFormat"),
    (lambda: qnet("conv"), r"Layer 0: unknown layer type str"),
])
def test_invalid_network_is_rejected_naming_layer_and_field(make, match):
    with pytest.raises(NetworkError, match=match):
        make()


def test_float_network_rejects_integer_weights():
    with pytest.raises(NetworkError, match=r"Layer 0 \(conv2d\): weight must hold floats"):
        FloatNetwork((1, 8, 8), [Conv2d(np.ones((2, 1, 3, 3), dtype=np.int64))])


def test_float_network_rejects_non_finite_weights():
    w = np.ones((2, 1, 3, 3))
    w[0, 0, 0, 0] = np.nan
    with pytest.raises(NetworkError, match=r"Layer 0 \(conv2d\): weight has non-finite"):
        FloatNetwork((1, 8, 8), [Conv2d(w)])


def test_with_rounding_changes_every_requantizing_layer_only():
    net = qnet(conv(), MaxPool2d(2), Activation("relu", out_format=Q8, rounding="floor"))
    sr = net.with_rounding("stochastic")
    assert [getattr(l, "rounding", None) for l in sr.layers] == ["stochastic", None,
                                                                 "stochastic"]
    assert not sr.equal(net) and sr.with_rounding("nearest_even").layers[0].rounding == \
        "nearest_even"


def test_equal_compares_weights():
    a = qnet(conv())
    b = qnet(replace(a.layers[0], weight=a.layers[0].weight.copy()))
    assert a.equal(b)
    w = a.layers[0].weight.copy()
    w[0, 0, 0, 0] = 2
    assert not a.equal(qnet(replace(a.layers[0], weight=w)))


def test_register_lut_function_validates():
    with pytest.raises(TypeError, match="LUT function name must be a non-empty string"):
        register_lut_function("", np.tanh)
    with pytest.raises(TypeError, match="LUT function must be callable"):
        register_lut_function("x", 3)
    register_lut_function("cube", lambda x: x ** 3)
    qnet(Activation("lut", lut="cube", out_format=Q8, rounding="floor"))
