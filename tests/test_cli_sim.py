"""`systolic sim`: errors as one line, a real run of mnist-tiny under Verilator, and a
planted mismatch reported with its layer, element and both values (exit 1)."""

from dataclasses import replace

import pytest

from systolic.cli import main


@pytest.mark.parametrize("argv, message", [
    (["sim", "no-such-net", "--images", "2"],
     "no-such-net: not a network file or a reference network"),
    (["sim", "mnist-tiny", "--array", "8y8"],
     "Array shape must look like 8x8 (rows x columns), not '8y8'"),
    (["sim", "mnist-tiny", "--array", "0x8"],
     "Array rows must be a positive integer, not 0"),
    (["sim", "mnist-tiny", "--multiplier", "dsp"], "Multiplier must be one of"),
    (["sim", "mnist-tiny", "--images", "1001"], "--images must be between 1 and 1000"),
], ids=["network", "shape", "rows", "multiplier", "images"])
def test_errors_are_one_line(argv, message, capsys):
    try:
        status = main(argv)
    except SystemExit as exit_:             # cmd_sim's own checks exit with the message
        status, err = 1, str(exit_.code)
    else:
        err = capsys.readouterr().err
    assert status == 1
    assert message in err
    assert len(err.strip().splitlines()) == 1, err


def test_constraint_error_is_one_line(capsys, monkeypatch):
    from systolic.golden.errors import ConstraintError
    from systolic.rtl import compiler

    def too_small(network, config):
        raise ConstraintError("Activation memory: tensor 1 needs 100 bits, 10 available")
    monkeypatch.setattr(compiler, "compile_network", too_small)
    assert main(["sim", "mnist-tiny", "--images", "2"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == ("systolic: error: Activation memory: tensor 1 needs 100 bits, "
                           "10 available")


@pytest.mark.slow
def test_sim_mnist_tiny(capsys):
    """10 images on 8x8 (two batches, the second partial): every figure is printed."""
    assert main(["sim", "mnist-tiny", "--images", "10", "--array", "8x8"]) == 0
    out, err = capsys.readouterr()
    assert "bit-exact:         10/10 images (outputs)" in out
    assert "accuracy:" in out and "golden model" in out
    assert "cycles per image:  3055.4 measured, 3055.4 predicted (24443 per batch of 8)" \
        in out
    assert "cycles:            48886 measured, 48886 predicted (2 batches): exact" in out
    assert "utilization:       98.2%" in out
    for row in ("0 conv2d+maxpool", "2 conv2d+maxpool", "4 dense", "total"):
        assert row in out
    assert "batch 1/2" in err and "batch 2/2" in err          # progress, one line each


@pytest.mark.slow
def test_sim_mnist_tiny_weight_stationary(capsys):
    """``--dataflow ws``: bit-exact, cycles as predicted, both max pools fused."""
    assert main(["sim", "mnist-tiny", "--images", "3", "--array", "8x8",
                 "--dataflow", "ws"]) == 0
    out, _ = capsys.readouterr()
    assert "8x8 array (ws, inferred multipliers)" in out
    assert "bit-exact:         3/3 images (outputs)" in out
    assert "cycles per image:  3870.0 measured, 3870.0 predicted (30960 per batch of 8)" \
        in out
    assert "cycles:            30960 measured, 30960 predicted (1 batch): exact" in out
    assert "utilization:       77.5%" in out
    for row in ("0 conv2d+maxpool", "2 conv2d+maxpool", "4 dense", "total"):
        assert row in out


@pytest.mark.slow
def test_sim_mismatch_exits_1(capsys, monkeypatch):
    """The golden side's dense weights changed (the hardware keeps the program's): the
    first mismatch is named with layer 4, its element and both values."""
    from systolic.rtl import compiler
    real = compiler.compile_network

    def planted(network, config):
        program = real(network, config)
        j = 4
        w = network.layers[j].weight.copy()
        w[:, :] = 0
        layers = tuple(replace(l, weight=w) if i == j else l
                       for i, l in enumerate(network.layers))
        return replace(program, network=replace(network, layers=layers))
    monkeypatch.setattr(compiler, "compile_network", planted)
    assert main(["sim", "mnist-tiny", "--images", "3", "--array", "8x8"]) == 1
    out, err = capsys.readouterr()
    assert "bit-exact:         0/3 images" in out
    errors = [line for line in err.splitlines() if line.startswith("systolic: error:")]
    first = errors[0]
    assert first.startswith("systolic: error: mismatch: image 0: layer 4 (dense) output "
                            "element "), err
    assert "accelerator " in first and "golden " in first
    assert "elements differ from the golden model" in err
