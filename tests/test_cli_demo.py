"""``systolic demo`` (systolic/cli_demo.py): the main job, as a user runs it.

The bitstream stage is the same ``boards.build.build`` that tests/boards/test_build.py
runs on the default board; here it is skipped (``--no-build``) so the virtual board, the
golden comparison and the Verilog are checked without a second place-and-route.
"""

import re

import numpy as np
import pytest

from systolic.boards.targets import DEFAULT_BOARD, board
from systolic.cli import main
from systolic.golden import models
from systolic.golden.datasets import mnist
from systolic.golden.run import predict


@pytest.mark.slow
def test_demo_runs_the_default_board_bit_exact(tmp_path, capsys):
    target = board(DEFAULT_BOARD)
    assert main(["demo", "--no-build", "--images", "3", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    net = models.load(target.default_network)
    images, labels = mnist("holdout")
    golden = predict(net, models.mnist_input(net, images[:3]))
    acc = 100 * np.mean(golden == labels[:3])
    assert f"{target.default_network} on the {target.name}" in out
    assert re.search(r"bit-exact:\s+3/3 images; counters equal the cycle model", out), out
    assert f"{acc:.2f}% on the virtual board, {acc:.2f}% golden (3 images)" in out
    for what in ("accelerator", "top"):
        text = (tmp_path / f"{target.default_network}-{target.name}-{what}.v").read_text()
        assert "module top(" in text.replace(" (", "(")


def test_demo_rejects_a_bad_image_count(tmp_path, capsys):
    assert main(["demo", "--images", "0", "--no-build", "--out", str(tmp_path)]) == 1
    assert "--images must be between 1 and 1000" in capsys.readouterr().err
