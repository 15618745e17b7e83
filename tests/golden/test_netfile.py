"""The network file format (golden/netfile.py): round trips and every bad-file rule."""

import json
import zipfile

import numpy as np
import pytest

from systolic.golden.errors import NetworkFileError
from systolic.golden.ir import (Activation, Add, AvgPool2d, Conv2d, Dense, FloatNetwork,
                                MaxPool2d, QNetwork)
from systolic.golden.netfile import FORMAT_VERSION, load_network, save_network
from systolic.golden.qformat import QFormat
from systolic.golden.run import run


def make_qnet(seed=0):
    rng = np.random.default_rng(seed)
    F = QFormat
    return QNetwork((2, 9, 8), F(8, 6), [
        Conv2d(rng.integers(-128, 128, (4, 2, 3, 3)), rng.integers(-999, 999, 4), stride=2,
               padding="same", activation="clip", clip_max=1.5, weight_format=F(8, 7),
               bias_format=F(16, 12), out_format=F(8, 5), rounding="stochastic"),
        Activation("leaky_relu", slope_shift=2, out_format=F(6, 4), rounding="floor"),
        Add(other=1, out_format=F(8, 4), rounding="nearest_even"),
        AvgPool2d(2, out_format=F(8, 4), rounding="nearest_even"),
        MaxPool2d(1),
        Activation("lut", lut="sigmoid", out_format=F(8, 7), rounding="floor"),
        Conv2d(rng.integers(-8, 8, (3, 4, 2, 1)), None, padding=(1, 0, 0, 0),
               weight_format=F(4, 2), out_format=F(10, 3), rounding="floor"),
        Dense(rng.integers(-2000, 2000, (5, 12)), rng.integers(-50, 50, 5), activation="relu",
              weight_format=F(12, 11), bias_format=F(12, 9), out_format=F(16, 8),
              rounding="nearest_even"),
    ], seed=123456789, name="every-layer")


def test_quantized_round_trip_is_exact(tmp_path):
    net = make_qnet()
    path = save_network(net, tmp_path / "net.npz")
    back = load_network(path)
    assert back.equal(net)
    x = np.random.default_rng(1).integers(-128, 128, (3, 2, 9, 8))
    for a, b in zip(run(net, x).tensors, run(back, x).tensors):
        np.testing.assert_array_equal(a, b)


def test_round_trip_detects_a_changed_weight(tmp_path):
    # guards the test above: equal() must see a one-LSB change after a round trip
    net = make_qnet()
    back = load_network(save_network(net, tmp_path / "net.npz"))
    w = back.layers[0].weight.copy()
    w.flat[5] += 1 if w.flat[5] < 127 else -1
    from dataclasses import replace
    changed = QNetwork(back.input_shape, back.input_format,
                       (replace(back.layers[0], weight=w),) + back.layers[1:], seed=back.seed,
                       name=back.name)
    assert not changed.equal(net)


def test_float_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    net = FloatNetwork((1, 6, 6), [
        Conv2d(rng.normal(size=(3, 1, 3, 3)).astype(np.float32),
               rng.normal(size=3).astype(np.float32), activation="relu"),
        MaxPool2d(2), Dense(rng.normal(size=(4, 12)), None)], name="f")
    back = load_network(save_network(net, tmp_path / "f"))
    assert isinstance(back, FloatNetwork) and back.name == "f"
    for a, b in zip(net.layers, back.layers):
        assert type(a) is type(b)
        if hasattr(a, "weight"):
            np.testing.assert_array_equal(a.weight, b.weight)
            assert a.weight.dtype == b.weight.dtype


# --- bad files ---------------------------------------------------------------------------

def _rewrite(path, out, edit_header=None, drop=(), replace_arrays=None):
    """Copy a network file with its JSON header edited / arrays dropped or replaced."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(arrays["header"].tobytes())
    if edit_header:
        edit_header(header)
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    for k in drop:
        del arrays[k]
    arrays.update(replace_arrays or {})
    np.savez(out, **arrays)
    return out


@pytest.fixture
def good(tmp_path):
    return save_network(make_qnet(), tmp_path / "good.npz")


def test_missing_file(tmp_path):
    with pytest.raises(NetworkFileError, match=r"missing\.npz: no such file"):
        load_network(tmp_path / "missing.npz")


def test_not_a_network_file(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"this is not a zip archive at all\n" * 10)
    with pytest.raises(NetworkFileError, match=r"bad\.npz: not a systolic network file"):
        load_network(bad)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.99])
def test_truncated_file(good, tmp_path, keep):
    data = good.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(NetworkFileError, match=r"cut\.npz: .*(truncated|corrupt)"):
        load_network(cut)


def test_zip_without_header(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, weights=np.zeros(3))
    with pytest.raises(NetworkFileError, match=r"not a systolic network file \(no header\)"):
        load_network(path)


def test_corrupt_header(good, tmp_path):
    path = _rewrite(good, tmp_path / "h.npz",
                    replace_arrays={"header": np.frombuffer(b"{not json", dtype=np.uint8)})
    with pytest.raises(NetworkFileError, match=r"corrupt header"):
        load_network(path)


def test_wrong_format_name(good, tmp_path):
    path = _rewrite(good, tmp_path / "f.npz", lambda h: h.update(format="onnx"))
    with pytest.raises(NetworkFileError, match=r"not a systolic network file \(format is "
                                               r"'onnx'\)"):
        load_network(path)


@pytest.mark.parametrize("version", [0, FORMAT_VERSION + 1, "1", None])
def test_wrong_version(good, tmp_path, version):
    path = _rewrite(good, tmp_path / "v.npz", lambda h: h.update(version=version))
    with pytest.raises(NetworkFileError, match=r"file format version .* is not supported "
                                               r"\(this systolic reads version 1\)"):
        load_network(path)


def test_unknown_layer_kind(good, tmp_path):
    path = _rewrite(good, tmp_path / "u.npz",
                    lambda h: h["layers"][3].update(kind="transformer"))
    with pytest.raises(NetworkFileError, match=r"layer 3: unknown layer kind 'transformer'"):
        load_network(path)


def test_unknown_field(good, tmp_path):
    path = _rewrite(good, tmp_path / "u.npz", lambda h: h["layers"][1].update(dilation=2))
    with pytest.raises(NetworkFileError,
                       match=r"layer 1 \(activation\): unknown field 'dilation'"):
        load_network(path)


def test_missing_array(good, tmp_path):
    path = _rewrite(good, tmp_path / "m.npz", drop=["layer7.bias"])
    with pytest.raises(NetworkFileError,
                       match=r"layer 7 \(dense\): array 'layer7.bias' is missing"):
        load_network(path)


def test_shape_mismatch_between_layers(good, tmp_path):
    w = np.zeros((5, 11), dtype=np.int16)  # the dense layer's input flattens to 12
    path = _rewrite(good, tmp_path / "s.npz", replace_arrays={"layer7.weight": w})
    with pytest.raises(NetworkFileError, match=r"Layer 7 \(dense\): weight has 11 input "
                                               r"features but the layer's input \(3, 2, 2\) "
                                               r"flattens to 12"):
        load_network(path)


@pytest.mark.parametrize("width", [1, 17, 32])
def test_width_outside_2_to_16(good, tmp_path, width):
    path = _rewrite(good, tmp_path / "w.npz",
                    lambda h: h["layers"][0].update(weight_format=[width, 3]))
    with pytest.raises(NetworkFileError, match=rf"layer 0 \(conv2d\): field weight_format: "
                                               rf"Q format width must be between 2 and 16 "
                                               rf"bits, not {width}"):
        load_network(path)


def test_input_width_outside_range(good, tmp_path):
    path = _rewrite(good, tmp_path / "i.npz", lambda h: h.update(input_format=[20, 3]))
    with pytest.raises(NetworkFileError, match=r"field input_format: Q format width must "
                                               r"be between 2 and 16 bits, not 20"):
        load_network(path)


def test_missing_header_field(good, tmp_path):
    path = _rewrite(good, tmp_path / "s.npz", lambda h: h.pop("seed"))
    with pytest.raises(NetworkFileError, match=r"header field 'seed' is missing"):
        load_network(path)


def test_weight_outside_its_format(good, tmp_path):
    w = np.full((4, 2, 3, 3), 300, dtype=np.int16)
    path = _rewrite(good, tmp_path / "o.npz", replace_arrays={"layer0.weight": w})
    with pytest.raises(NetworkFileError, match=r"Layer 0 \(conv2d\): weight has values in "
                                               r"300..300, outside weight format Q\(8,7\)"):
        load_network(path)


def test_pickled_arrays_are_refused(good, tmp_path):
    path = _rewrite(good, tmp_path / "p.npz",
                    replace_arrays={"layer0.weight": np.array([object()], dtype=object)})
    with pytest.raises(NetworkFileError, match=r"p\.npz: truncated or corrupt"):
        load_network(path)
    assert zipfile.is_zipfile(path)
