"""Board targets (boards/targets.py): presets fit their boards, and what does not fit is
refused before synthesis with what is needed and what the device has."""

import pytest

from systolic.boards.targets import (BOARDS, LFE5U_25F, UP5K, board, check_fit, estimate,
                                     memory_blocks)
from systolic.golden import models
from systolic.golden.errors import ConstraintError
from systolic.rtl.compiler import ArrayConfig, compile_network


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_every_preset_fits_its_board_with_its_default_network(name):
    target = BOARDS[name]
    for preset, config in target.presets.items():
        program = compile_network(models.load(target.default_network), config)
        need = check_fit(program, target)
        assert need["dsps"] <= target.device.dsps and need["brams"] <= target.device.brams
        assert target.platform_class().device == target.device.name


def test_icebreaker_default_uses_every_dsp_and_spram_for_lenet5():
    target = board("icebreaker")
    program = compile_network(models.load("lenet5"), target.preset("8x2"))
    need = estimate(program, target.device)
    assert need["dsps"] == 8 and need["sprams"] == 4
    assert program.config.rows * program.config.cols == 16     # 16 MACs per cycle


@pytest.mark.parametrize("depth,width,blocks", [
    (256, 16, 1), (512, 8, 1), (2352, 8, 5), (31, 192, 12), (7813, 64, 124),
    (4096, 16, 16)])
def test_up5k_block_ram_count(depth, width, blocks):
    assert memory_blocks(UP5K, depth, width) == blocks


@pytest.mark.parametrize("depth,width,blocks", [(7813, 64, 32), (2352, 8, 2), (31, 192, 6)])
def test_ecp5_block_ram_count(depth, width, blocks):
    assert memory_blocks(LFE5U_25F, depth, width) == blocks


@pytest.mark.parametrize("board_name,config,match", [
    ("icebreaker", ArrayConfig(rows=8, cols=8), r"lenet5 on a 8x8 array with inferred "
     r"multipliers needs 64 DSP blocks; iCE40UP5K has 8"),
    ("icebreaker", ArrayConfig(rows=4, cols=2), r"lenet5 needs 134 block RAMs \(weights 122, "
     r"biases 2, activations \(2 banks\) 10; 493,504 weight bits, 37,632 activation "
     r"bits\); iCE40UP5K has 30"),
    ("ulx3s-25f", ArrayConfig(rows=4, cols=2, multiplier="sb_mac16"),
     r"Multiplier sb_mac16 is an iCE40 UltraPlus primitive; LFE5U-25F is ecp5"),
    ("ulx3s-25f", ArrayConfig(rows=4, cols=2, weight_memory="spram"),
     r"Weight memory spram needs iCE40 UltraPlus SPRAM; LFE5U-25F has none"),
    ("ulx3s-25f", ArrayConfig(rows=8, cols=8), r"needs 64 DSP blocks; LFE5U-25F has 28"),
])
def test_what_does_not_fit_is_refused(board_name, config, match):
    program = compile_network(models.load("lenet5"), config)
    with pytest.raises(ConstraintError, match=match):
        check_fit(program, board(board_name))


def test_unknown_board_and_preset():
    with pytest.raises(ValueError, match=r"Unknown board 'de10'; known boards: icebreaker"):
        board("de10")
    with pytest.raises(ValueError, match=r"Board icebreaker has no preset 'huge'; it has "
                                         r"default, 8x2"):
        board("icebreaker").preset("huge")
