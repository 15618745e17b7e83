"""Fixed-point training (golden/fxtrain.py): the step against float, unbiased stochastic
updates, the documented generator keys, export bit-exact with golden run, the pipeline."""

import numpy as np
import pytest

from systolic.golden import datasets, fxtrain, train as ftrain
from systolic.golden.ir import FloatNetwork, QNetwork
from systolic.golden.netfile import load_network, save_network
from systolic.golden.qformat import QFormat
from systolic.golden.rounding import requantize
from systolic.golden.run import run, run_float
from systolic.golden.srgen import H, rounding_offsets

# Every layer kind and option: padding, stride 2, a maxpool with a remainder, relu and no
# relu, a dense on a (C, H, W) input (the same network as tests/golden/test_train.py).
TINY_ARCH = [
    ("conv", {"out": 3, "kernel": 3, "padding": (1, 0, 2, 1), "stride": 1, "relu": True}),
    ("maxpool", {"kernel": 2}),
    ("conv", {"out": 4, "kernel": (2, 3), "padding": (1, 1, 1, 1), "stride": 2, "relu": False}),
    ("dense", {"out": 5, "relu": True}),
    ("dense", {"out": 3, "relu": False}),
]
TINY_SHAPE = (2, 9, 8)


def _tiny(mode, seed, frac=12, batch=8):
    cfg = fxtrain.FxConfig(mode=mode, frac=frac, activation_frac=10, seed=seed)
    state = fxtrain.init_state(TINY_ARCH, cfg, TINY_SHAPE)
    rng = np.random.default_rng(seed)
    x = cfg.activation_format.quantize(rng.standard_normal((batch, *TINY_SHAPE)))
    labels = rng.integers(0, 3, size=batch)
    return cfg, state, x, labels


# --- configuration ---------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, message", [
    ({"mode": "floor"}, ValueError, "Training mode must be one of float32, nearest_even, "
                                    "stochastic, not 'floor'"),
    ({"width": 17}, ValueError, "Q format width must be between 2 and 16 bits, not 17"),
    ({"frac": 1.5}, TypeError, "Training frac must be an integer, not 1.5"),
    ({"lr": 0}, ValueError, "Learning rate must be a positive number, not 0"),
    ({"lr": "0.1"}, TypeError, "Training lr must be a number, not '0.1'"),
    ({"lr_decay": 1.5}, ValueError, r"Learning-rate decay must be in \(0, 1\], not 1.5"),
    ({"batch_size": 0}, ValueError, "Batch size must be at least 1, not 0"),
    ({"epochs": -1}, ValueError, "Epochs must be at least 0, not -1"),
    ({"seed": 1 << 32}, ValueError, r"Training seed must be in 0..2\*\*32-1, not 4294967296"),
    ({"train_images": 0}, ValueError, "Training images must be a positive integer or None, "
                                      "not 0"),
])
def test_config_rejects_bad_fields(kwargs, error, message):
    with pytest.raises(error, match=message):
        fxtrain.FxConfig(**kwargs)


def test_architectures_and_bad_names():
    assert fxtrain.architecture("gupta-fc")[0] == ("dense", {"out": 1000, "relu": True})
    assert ftrain.macs(fxtrain.ARCHITECTURES["gupta-fc"]) == 784 * 1000 + 1000 * 1000 + 10000
    assert ftrain.output_shapes(fxtrain.ARCHITECTURES["gupta-cnn"])[:4] == [
        (8, 24, 24), (8, 12, 12), (16, 8, 8), (16, 4, 4)]
    assert fxtrain.architecture("lenet5") == ftrain.architecture("lenet5")
    with pytest.raises(ValueError, match=r"Architecture must be one of 'gupta-fc', "
                                         r"'gupta-cnn', 'lenet5', 'mnist-tiny', not 'vgg'"):
        fxtrain.architecture("vgg")
    with pytest.raises(ValueError, match="needs a fixed-point mode"):
        fxtrain.init_state("gupta-cnn", fxtrain.FxConfig(mode="float32"))


# --- one step --------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["nearest_even", "stochastic"])
@pytest.mark.parametrize("seed", [0, 1, 2], ids=lambda s: f"seed={s}")
def test_fixed_step_equals_float_step_with_16_bit_formats(mode, seed):
    """With 16-bit words (weights Q(16,12), activations Q(16,10), gradients 16-bit dynamic),
    one fixed-point SGD step lands within one weight LSB of the float64 step taken from the
    same (dequantized) weights and inputs: every error before the update's own rounding is
    far below an LSB."""
    lr = 0.05
    cfg, state, x, labels = _tiny(mode, seed)
    fw = cfg.weight_format
    before = [{k: fw.to_float(v) for k, v in layer.items()} for layer in state.params]
    loss, grads = ftrain.loss_and_grads(TINY_ARCH, before, cfg.activation_format.to_float(x),
                                        labels)
    stats = fxtrain.train_step(state, x, labels, lr=lr)
    assert stats["loss"] == pytest.approx(loss, rel=1e-3)
    assert state.step == 1
    gap, moved, equal = [], [], []
    for layer, old, grad in zip(state.params, before, grads):
        for key in ("weight", "bias"):
            exact = (old[key] - lr * grad[key]) * 2.0 ** fw.frac  # in weight LSBs
            gap.append(np.abs(layer[key] - exact).ravel())
            moved.append(np.abs(lr * grad[key] * 2.0 ** fw.frac).ravel())
            equal.append((layer[key] == fw.quantize(exact * fw.lsb)).ravel())
    gap, moved, equal = map(np.concatenate, (gap, moved, equal))
    assert np.median(moved) > 2, "the step must move the weights by several LSBs"
    assert gap.max() < 1.0, f"seed {seed}: a weight is {gap.max():.3f} LSB from the float step"
    if mode == "nearest_even":
        # The fixed-point step is the float step rounded to nearest, but for a few weights
        # within a hair of a rounding boundary.
        assert equal.mean() > 0.9
        assert gap.max() < 0.75


@pytest.mark.parametrize("seed", [0, 1], ids=lambda s: f"seed={s}")
def test_stochastic_updates_are_unbiased_over_elements(seed):
    """200,000 updates with random fractional parts: stochastic rounding's mean error is
    below 0.01 LSB; nearest-even's sub-half-LSB updates vanish (the paper's failure)."""
    rng = np.random.default_rng(seed)
    fmt = QFormat(16, 8)
    lr, f_acc = 0.125, 20           # exact in Q(16,17); an update is acc * 2**-15 LSB
    acc = rng.integers(-3 << 12, 3 << 12, size=200_000)      # -0.375..0.375 LSB
    exact = acc * lr / 2.0 ** (f_acc - fmt.frac)            # in LSBs
    zero = np.zeros(acc.shape, dtype=np.int64)
    new, stats = fxtrain.apply_update(zero, acc, f_acc, lr=lr, mode="stochastic", fmt=fmt,
                                      seed=seed, key=fxtrain.WEIGHT_KEY)
    update = -new
    assert set(np.unique(update)) == {-1, 0, 1}
    assert abs(np.mean(update - exact)) < 0.01, f"seed {seed}: biased"
    assert abs(np.mean(np.abs(update)) - np.mean(np.abs(exact))) < 0.01
    assert stats["nonzero"] == np.count_nonzero(acc)
    assert stats["vanished"] == np.count_nonzero((acc != 0) & (update == 0))
    new, stats = fxtrain.apply_update(zero, acc, f_acc, lr=lr, mode="nearest_even", fmt=fmt,
                                      seed=seed, key=fxtrain.WEIGHT_KEY)
    assert not new.any() and stats["vanished"] == stats["nonzero"]
    assert np.mean(np.abs(exact)) > 0.18  # so nearest-even lost that much per weight


@pytest.mark.parametrize("seed", [0, 7], ids=lambda s: f"seed={s}")
def test_stochastic_updates_are_unbiased_over_steps(seed):
    """The same 50 updates of 0.3 LSB at 2,000 steps (100,000 samples): each step keys its
    own offsets (step seed), so the weights follow the exact sum to within 0.01 LSB/step."""
    fmt = QFormat(16, 10)
    lr, f_acc = 0.5, 20              # exact in Q(16,15); an update is acc * 2**-11 LSB
    acc = np.full(50, 614, dtype=np.int64)
    per_step = acc[0] * lr / 2.0 ** (f_acc - fmt.frac)
    assert per_step == pytest.approx(0.3, abs=1e-3)
    w = np.zeros(50, dtype=np.int64)
    steps = 2000
    for t in range(steps):
        w, _ = fxtrain.apply_update(w, -acc, f_acc, lr=lr, mode="stochastic", fmt=fmt,
                                    seed=fxtrain.step_seed(seed, t), key=fxtrain.WEIGHT_KEY)
    assert abs(w.mean() / steps - per_step) < 0.01, f"seed {seed}: {w.mean() / steps}"
    assert len(np.unique(w)) > 1  # the elements' offsets differ too


def test_update_offsets_follow_the_documented_keys():
    """Stochastic offsets of a weight update are H(step seed, 0x8000 + j, flat index)."""
    seed, t, j = 12345, 17, 3
    s = fxtrain.step_seed(seed, t)
    assert s == int(H(seed, 0xFFFF, t))
    assert len({fxtrain.step_seed(seed, k) for k in range(1000)}) == 1000
    rng = np.random.default_rng(5)
    fmt = QFormat(16, 12)
    acc = rng.integers(-1 << 30, 1 << 30, size=(4, 3, 2, 2))
    value = fmt.quantize(rng.standard_normal(acc.shape) * 0.1)
    new, _ = fxtrain.apply_update(value, acc, 24, lr=0.1, mode="stochastic", fmt=fmt,
                                  seed=s, key=fxtrain.WEIGHT_KEY + j)
    lr_int, f_lr = 26214, 18  # 0.1 in Q(16,18)
    shift = 24 + f_lr - fmt.frac
    r = rounding_offsets(s, 0x8000 + j, np.arange(acc.size).reshape(acc.shape), shift)
    expected = np.clip(value - requantize(acc * lr_int, shift, "stochastic", fmt, r=r),
                       fmt.min, fmt.max)
    np.testing.assert_array_equal(new, expected)
    other, _ = fxtrain.apply_update(value, acc, 24, lr=0.1, mode="stochastic", fmt=fmt,
                                    seed=s, key=fxtrain.BIAS_KEY + j)
    assert np.any(other != new)


def test_dynamic_gradient_format_uses_the_calibration_rule():
    acc = np.array([[3 << 20, -(5 << 18)], [0, 1]], dtype=np.int64)
    q, fmt = fxtrain.round_exact(acc, 30, mode="nearest_even", width=16, seed=0, key=1)
    # largest magnitude 3 * 2**-10: f = 23 (3 * 2**13 = 24576 fits 16 bits, 2**14 would not)
    assert fmt == QFormat(16, 23)
    np.testing.assert_array_equal(q, [[3 << 13, -(5 << 11)], [0, 0]])
    q, fmt = fxtrain.round_real(np.array([0.25, -0.5, 1e-9]), mode="nearest_even", width=8,
                                seed=0, key=1)
    assert fmt == QFormat(8, 7) and q.tolist() == [32, -64, 0]
    with pytest.raises(ValueError, match="non-finite"):
        fxtrain.round_real(np.array([np.nan]), mode="stochastic", width=16, seed=0, key=1)


def test_update_that_would_overflow_is_rejected():
    with pytest.raises(OverflowError, match="does not fit 62 bits"):
        fxtrain.apply_update(np.zeros(1, dtype=np.int64), np.array([1 << 50]), 40, lr=0.5,
                             mode="nearest_even", fmt=QFormat(16, 8), seed=0, key=0)


# --- export ----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["nearest_even", "stochastic"])
@pytest.mark.parametrize("seed", [0, 3], ids=lambda s: f"seed={s}")
def test_export_runs_bit_exact_in_golden_run(mode, seed, tmp_path):
    """After training steps, golden run() of the exported network (also through a network
    file) reproduces the trainer's fixed-point forward pass, every tensor, both with the
    network's seed and with a training step's seed."""
    cfg, state, x, labels = _tiny(mode, seed)
    for _ in range(3):
        fxtrain.train_step(state, x, labels, lr=0.05)
    net = fxtrain.export(state, name="tiny")
    assert isinstance(net, QNetwork) and net.seed == seed
    assert all(getattr(l, "rounding", mode) == mode for l in net.layers)
    loaded = load_network(save_network(net, tmp_path / "tiny.npz"))
    rng = np.random.default_rng(seed + 100)
    x_new = cfg.activation_format.quantize(rng.standard_normal((16, *TINY_SHAPE)))
    for s in (seed, fxtrain.step_seed(seed, 2)):
        expected = fxtrain.forward(state, x_new, seed=s)
        for network in (net, loaded):
            got = run(network, x_new, seed=None if s == seed else s).tensors
            assert len(got) == len(expected)
            for a, b in zip(got, expected):
                np.testing.assert_array_equal(a, b)
    if mode == "stochastic":
        # The step seed really changes the rounding (so the seed above was checked).
        other = fxtrain.forward(state, x_new, seed=seed + 1)
        assert any(np.any(a != b) for a, b in zip(other[1:], expected[1:]))


def test_export_float_matches_float_forward():
    params = ftrain.init_params(TINY_ARCH, TINY_SHAPE, seed=4)
    fnet = fxtrain.export_float(TINY_ARCH, params, TINY_SHAPE, name="f")
    assert isinstance(fnet, FloatNetwork) and fnet.output_shape == (3, 1, 1)
    x = np.random.default_rng(4).standard_normal((3, *TINY_SHAPE))
    np.testing.assert_allclose(run_float(fnet, x)[-1].reshape(3, -1),
                               ftrain.forward(TINY_ARCH, params, x), rtol=1e-5, atol=1e-5)


# --- the pipeline ----------------------------------------------------------------------------

def _subset(n_train=400, n_test=300):
    images, labels = datasets.mnist("train")
    hold, hold_labels = datasets.mnist("holdout")
    return (images[:n_train], labels[:n_train]), (hold[:n_test], hold_labels[:n_test])


@pytest.mark.parametrize("mode", ["stochastic", "float32"])
def test_pipeline_trains_on_a_small_subset(mode):
    """400 real training images, 2 epochs (40 steps) of the paper's CNN: the test error
    falls from chance to below 40%, the history is complete, and the recorded error is the
    golden model's on the result."""
    train_data, test_data = _subset()
    cfg = fxtrain.FxConfig(mode=mode, frac=12, epochs=2, batch_size=20, lr=0.1, seed=1)
    lines = []
    result = fxtrain.train("gupta-cnn", cfg, train_data=train_data, test_data=test_data,
                           name="cnn", progress=lines.append)
    assert [r.epoch for r in result.history] == [0, 1, 2] and len(lines) == 2
    assert "test error" in lines[-1]
    first, last = result.history[0].test_error, result.history[-1].test_error
    assert first > 0.8 and last < 0.4, f"test error {first:.3f} -> {last:.3f}"
    if mode == "float32":
        assert isinstance(result.network, FloatNetwork)
        assert np.isnan(result.history[-1].vanished)
    else:
        assert isinstance(result.network, QNetwork)
        assert fxtrain.evaluate(result.network, *test_data) == last
        assert 0 < result.history[-1].vanished < 1


def test_training_is_reproducible_and_seeded():
    train_data, test_data = _subset(200, 50)

    def weights(seed):
        cfg = fxtrain.FxConfig(mode="stochastic", frac=10, epochs=1, batch_size=50, seed=seed)
        net = fxtrain.train("gupta-cnn", cfg, train_data=train_data,
                            test_data=test_data).network
        return [l.weight for l in net.layers if hasattr(l, "weight")]

    a, b, c = weights(3), weights(3), weights(4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_train_rejects_more_images_than_the_split():
    with pytest.raises(ValueError, match="Training images must be at most 400, not 401"):
        fxtrain.train("gupta-cnn", fxtrain.FxConfig(train_images=401), train_data=_subset()[0],
                      test_data=_subset()[1])


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1], ids=lambda s: f"seed={s}")
def test_nearest_stalls_where_stochastic_learns_at_fl8(seed):
    """The paper's effect in small: with <16,8> weights, nearest-even rounds away almost
    every update of the fully connected net, stochastic rounding keeps learning."""
    train_data, test_data = _subset(1000, 500)
    errors, vanished = {}, {}
    for mode in ("nearest_even", "stochastic"):
        cfg = fxtrain.FxConfig(mode=mode, frac=8, epochs=2, batch_size=100, lr=0.1, seed=seed)
        result = fxtrain.train("gupta-fc", cfg, train_data=train_data, test_data=test_data)
        errors[mode] = result.test_error
        vanished[mode] = result.history[-1].vanished
    assert vanished["nearest_even"] > 0.99
    assert errors["stochastic"] < errors["nearest_even"] - 0.1, errors
