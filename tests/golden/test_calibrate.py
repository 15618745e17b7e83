"""Calibration: the format rule of DESIGN section 2 (golden/calibrate.py)."""

import numpy as np
import pytest

from systolic.golden.calibrate import calibrate, choose_frac
from systolic.golden.ir import Conv2d, Dense, FloatNetwork, MaxPool2d, QNetwork
from systolic.golden.qformat import QFormat
from systolic.golden.run import quantize_input, run, run_float


@pytest.mark.parametrize("max_abs, width, frac", [
    (1.0, 8, 6),           # 1.0 * 2**7 = 128 > 127
    (0.99, 8, 7),          # 126.7 -> 127 fits
    (255 / 256, 8, 6),     # 127.5 rounds (ties to even) to 128: does not fit at frac 7
    (127.0, 8, 0),
    (127.6, 8, -1),        # rint(127.6) = 128 overflows; 63.8 -> 64 fits
    (0.001, 8, 16),
    (3.0, 16, 13),
    (0.0, 8, 7),           # all-zero tensor: frac = width - 1
    (1e6, 4, -18),
])
def test_choose_frac(max_abs, width, frac):
    assert choose_frac(max_abs, width) == frac


@pytest.mark.parametrize("seed", range(5), ids=lambda s: f"seed={s}")
def test_choose_frac_is_the_largest_that_fits(seed):
    rng = np.random.default_rng(seed)
    for m in np.exp(rng.uniform(-20, 20, 200)):
        w = int(rng.integers(2, 17))
        f = choose_frac(m, w)
        limit = 2 ** (w - 1) - 1
        assert np.rint(np.ldexp(m, f)) <= limit, (seed, m, w, f)
        assert np.rint(np.ldexp(m, f + 1)) > limit, (seed, m, w, f)


def test_choose_frac_rejects_bad_magnitudes():
    with pytest.raises(ValueError, match="finite non-negative"):
        choose_frac(-1.0, 8)
    with pytest.raises(ValueError, match="finite non-negative"):
        choose_frac(np.inf, 8)


def small_float_net(seed):
    rng = np.random.default_rng(seed)
    return FloatNetwork((1, 8, 8), [
        Conv2d(rng.normal(0, 0.5, (4, 1, 3, 3)), rng.normal(0, 0.1, 4), padding="same",
               activation="relu"),
        MaxPool2d(2),
        Dense(rng.normal(0, 0.3, (5, 64)), rng.normal(0, 0.1, 5)),
    ], name="small")


@pytest.mark.parametrize("seed", range(3), ids=lambda s: f"seed={s}")
def test_calibrate_picks_each_tensor_format_from_data(seed):
    fnet = small_float_net(seed)
    images = np.random.default_rng(100 + seed).uniform(0, 1, (64, 1, 8, 8))
    q = calibrate(fnet, images, width=8, bias_width=16, seed=77)
    assert isinstance(q, QNetwork) and q.seed == 77 and q.name == "small"
    floats = run_float(fnet, images)
    for j in (0, 1, 3):  # input, conv output, dense output (2 is the maxpool's, inherited)
        assert q.tensor_formats[j] == QFormat(8, choose_frac(np.abs(floats[j]).max(), 8))
    assert q.tensor_formats[2] == q.tensor_formats[1]
    conv = q.layers[0]
    assert conv.weight_format == QFormat(8, choose_frac(np.abs(fnet.layers[0].weight).max(),
                                                        8))
    np.testing.assert_array_equal(conv.weight, conv.weight_format.quantize(
        fnet.layers[0].weight))
    assert conv.bias_format.frac <= q.input_format.frac + conv.weight_format.frac
    # The rule's promise: no float calibration tensor saturates in its format...
    for j, t in enumerate(floats):
        fmt = q.tensor_formats[j]
        assert np.abs(np.rint(np.ldexp(t, fmt.frac))).max() <= fmt.max, j
    # ...while the quantized run may overshoot the float maximum by rounding, rarely.
    result = run(q, quantize_input(q, images))
    assert sum(result.saturations) <= 0.01 * sum(t.size for t in result.tensors[1:])
    # and the quantized network tracks the float one (8-bit: a few LSBs of the output).
    err = np.abs(q.output_format.to_float(result.output) - floats[-1]).max()
    assert err < 16 * q.output_format.lsb, err


def test_percentile_narrows_activation_formats():
    fnet = small_float_net(0)
    images = np.random.default_rng(5).uniform(0, 1, (64, 1, 8, 8))
    full = calibrate(fnet, images)
    clipped = calibrate(fnet, images, percentile=50)
    assert clipped.tensor_formats[1].frac > full.tensor_formats[1].frac
    assert sum(run(clipped, quantize_input(clipped, images)).saturations) > 0


def test_bias_frac_is_capped_at_the_accumulator():
    rng = np.random.default_rng(0)
    fnet = FloatNetwork((1, 1, 2), [Dense(rng.normal(0, 1, (2, 2)), np.array([1e-6, 2e-6]))])
    q = calibrate(fnet, rng.uniform(0, 1, (4, 1, 1, 2)), bias_width=16)
    d = q.layers[0]
    assert d.bias_format.frac == q.input_format.frac + d.weight_format.frac


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(width=1), ValueError, "Q format width must be between 2 and 16 bits, not 1"),
    (dict(bias_width=17), ValueError, "not 17"),
    (dict(rounding="up"), ValueError, "Rounding mode must be one of"),
    (dict(percentile=0), ValueError, r"Percentile must be in \(0, 100\]"),
])
def test_calibrate_rejects_bad_settings(kwargs, error, match):
    with pytest.raises(error, match=match):
        calibrate(small_float_net(0), np.zeros((2, 1, 8, 8)), **kwargs)


def test_calibrate_rejects_wrong_image_shape():
    with pytest.raises(ValueError, match=r"Calibration images must have shape"):
        calibrate(small_float_net(0), np.zeros((2, 1, 7, 8)))
