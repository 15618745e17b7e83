"""`systolic train` (systolic/cli.py): run as a user runs it."""

import re
import subprocess
import sys

import numpy as np
import pytest

from systolic.cli import main
from systolic.golden import fxtrain
from systolic.golden.datasets import mnist
from systolic.golden.ir import FloatNetwork, QNetwork
from systolic.golden.netfile import load_network
from systolic.golden.qformat import QFormat

SMALL = ["--train-images", "200", "--epochs", "2", "--batch-size", "20", "--test-images", "100"]


def test_train_writes_the_network_it_reports(tmp_path, capsys):
    out = tmp_path / "cnn.npz"
    assert main(["train", "gupta-cnn", *SMALL, "--mode", "nearest_even", "--frac", "12",
                 "--seed", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    lines = text.strip().splitlines()
    assert lines[0].startswith("systolic train gupta-cnn: nearest_even rounding, weights "
                               "Q(16,12), activations Q(16,10)")
    assert [l.split()[1] for l in lines if l.startswith("epoch")] == ["1/2", "2/2"]
    reported = float(re.search(r"^test error ([0-9.]+)% on 100 held-out images", text,
                               re.M).group(1))
    assert lines[-1] == f"wrote {out}"
    net = load_network(out)
    assert isinstance(net, QNetwork) and net.name == "gupta-cnn" and net.seed == 3
    assert net.layers[0].weight_format == QFormat(16, 12)
    assert {l.rounding for l in net.layers if hasattr(l, "weight")} == {"nearest_even"}
    images, labels = mnist("holdout")
    # The printed figure is the golden model's error of the written network.
    assert 100 * fxtrain.evaluate(net, images[:100], labels[:100]) == pytest.approx(reported,
                                                                                 abs=0.005)
    assert reported < 80  # it learned something in 20 steps


def test_train_float32_writes_a_float_network(tmp_path, capsys):
    out = tmp_path / "fc.npz"
    assert main(["train", "gupta-fc", *SMALL, "--mode", "float32", "--out", str(out)]) == 0
    assert "systolic train gupta-fc: float32;" in capsys.readouterr().out
    net = load_network(out)
    assert isinstance(net, FloatNetwork) and net.layers[0].weight.shape == (1000, 784)
    assert np.all(np.isfinite(net.layers[0].weight))


@pytest.mark.parametrize("argv, message", [
    (["train", "vgg"], "Architecture must be one of 'gupta-fc', 'gupta-cnn', 'lenet5', "
                       "'mnist-tiny', not 'vgg'"),
    (["train", "gupta-cnn", "--mode", "floor"],
     "Training mode must be one of float32, nearest_even, stochastic, not 'floor'"),
    (["train", "gupta-cnn", "--width", "17"], "Q format width must be between 2 and 16 bits, "
                                              "not 17"),
    (["train", "gupta-cnn", "--test-images", "0"],
     "--test-images must be between 1 and 1000 (the held-out MNIST images), not 0"),
    (["train", "gupta-cnn", "--train-images", "5000", "--epochs", "1"],
     "Training images must be at most 4000, not 5000"),
    (["train", "gupta-cnn", "--lr-decay", "2"], r"Learning-rate decay must be in (0, 1], not 2.0"),
], ids=["arch", "mode", "width", "test-images", "train-images", "lr-decay"])
def test_train_errors_are_one_line_and_nonzero(argv, message, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "systolic.cli", *argv], capture_output=True,
                          text=True, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"systolic: error: {message}"
    assert "loss" not in proc.stdout  # it stopped before the first epoch
