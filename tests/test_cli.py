"""The `systolic` command line (systolic/cli.py), run as a user runs it."""

import json
import subprocess
import sys

import numpy as np
import pytest

from systolic.cli import main
from systolic.golden import models
from systolic.golden.datasets import mnist
from systolic.golden.netfile import load_network
from systolic.golden.run import predict


def test_info_lenet5_reports_layers_macs_and_memory(capsys):
    assert main(["info", "lenet5"]) == 0
    out = capsys.readouterr().out
    assert "416,520 MACs per image" in out
    for kind in ("conv2d 5x5/1 pad=[2, 2, 2, 2] +relu", "maxpool2d 2x2/2", "dense +relu"):
        assert kind in out


def test_info_json_matches_the_network(capsys):
    assert main(["info", "mnist-tiny", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    net = models.load("mnist-tiny")
    assert info["macs"] == net.macs == 192_064
    assert [r["macs"] for r in info["layers"]] == net.layer_macs()
    conv = info["layers"][0]
    assert conv["weight_bits"] == net.layers[0].weight.size * net.layers[0].weight_format.width
    assert conv["activation_bits"] == 8 * 26 * 26 * net.tensor_formats[1].width


def test_golden_json_accuracy_is_the_models_accuracy(capsys):
    assert main(["golden", "mnist-tiny", "--images", "200", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    net = models.load("mnist-tiny")
    images, labels = mnist("holdout")
    expected = np.mean(predict(net, models.mnist_input(net, images[:200])) == labels[:200])
    assert out["accuracy"] == pytest.approx(expected)
    confusion = np.array(out["confusion"])
    assert confusion.sum() == 200 and np.trace(confusion) == round(200 * expected)
    assert "float_accuracy" in out


def test_golden_prints_confusion(capsys):
    assert main(["golden", "lenet5", "--images", "50", "--rounding", "stochastic"]) == 0
    out = capsys.readouterr().out
    assert "quantized accuracy:" in out and "float accuracy:" in out
    assert "confusion (rows: true class, columns: predicted):" in out


def test_quantize_writes_a_network_that_loads(tmp_path, capsys):
    out = tmp_path / "q.npz"
    assert main(["quantize", "mnist-tiny", "--out", str(out), "--width", "6",
                 "--calibration-images", "100", "--rounding", "floor"]) == 0
    q = load_network(out)
    assert q.input_format.width == 6 and all(
        getattr(l, "rounding", "floor") == "floor" for l in q.layers)
    assert "calibrated on 100 images" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["info", "no-such-net"], "no-such-net: not a network file or a reference network"),
    (["golden", "lenet5", "--images", "0"], "--images must be between 1 and 1000"),
    (["quantize", "lenet5", "--out", "x.npz", "--width", "20"],
     "Q format width must be between 2 and 16 bits, not 20"),
])
def test_errors_are_one_line_and_nonzero(argv, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "systolic.cli", *argv], capture_output=True,
                          text=True)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("command", [["info"], ["golden"], ["sim"], ["emit", "-o", "x.v"],
                                     ["build"], ["demo", "--no-build"]])
def test_float_network_is_one_clear_line(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = str(models.zoo_dir() / "mnist-tiny-float.npz")
    args = command[:1] + ([path] if command[0] in ("info", "golden", "sim", "emit")
                          else ["--network", path]) + command[1:]
    assert main(args) == 1
    assert capsys.readouterr().err == (f"systolic: error: {path} is a float network; "
                                       f"quantize it first (systolic quantize)\n")
