"""The gate-level check (boards/gatelevel.py): the iCEBreaker preset's accelerator for
``lenet5`` synthesized with yowasp Yosys (``synth_ice40``: SB_MAC16, SB_SPRAM256KA,
SB_RAM40_4K, SB_LUT4...) and its netlist simulated with Yosys's iCE40 cell models under
cocotb and Verilator, on 3 real MNIST images: bit-exact with the golden model, every counter
as the compiler predicts, and the same outputs and counters as the RTL run through the same
harness.

Time, measured with an empty cache on the two shared cores (load average about 5): 3 min
44 s (synthesis 59 s, Verilator build of netlist and cell models 129 s at -O0, simulation
32 s: the weight load and two batches of about 57,000 cycles); a second measurement after an
accelerator change gave synthesis 58 s, build 112 s, simulation 28 s.  About 20 s once the
netlist and the build are cached.
"""

import numpy as np
import pytest

from systolic.boards.gatelevel import gate_level_check, synthesize_netlist
from systolic.boards.targets import board
from systolic.golden import models
from systolic.golden.datasets import mnist
from systolic.rtl.compiler import ArrayConfig, compile_network
from systolic.sim.accel import simulate


@pytest.mark.slow
def test_lenet5_icebreaker_netlist_real_images():
    program = compile_network(models.load("lenet5"), board("icebreaker").preset("8x2"))
    images, labels = mnist("holdout")
    x = models.mnist_input(program.network, images[:3])
    result = gate_level_check(program, x, board="icebreaker")
    # the primitives the board build uses are in the netlist, not behavioural models
    cells = result.cells
    assert cells.get("SB_MAC16") == 8 and cells.get("SB_SPRAM256KA") == 4, cells
    assert cells.get("SB_RAM40_4K", 0) > 0 and cells.get("SB_LUT4", 0) > 1000, cells
    text = result.netlist.read_text()
    assert "SB_MAC16 " in text and "SB_SPRAM256KA " in text and " always " not in text
    assert result.ok, (f"{result.sim.mismatch_count} elements differ, counters "
                       f"{[str(c) for c in result.sim.counter_mismatches]}; first: "
                       f"{result.first_problem()}; run folder {result.sim.run_dir}")
    assert result.bit_exact == result.images == 3
    assert result.cycles == result.predicted_cycles == 2 * program.cycles
    for b in result.sim.batches:
        assert b.cycles == b.busy_cycles == program.cycles
    assert result.sim.weight_beats == program.weight_words + program.bias_words
    np.testing.assert_array_equal(result.sim.outputs, result.sim.expected)
    # and the RTL, through the same harness, does exactly the same (its build is cached by
    # tests/sim/test_accel_weights.py)
    rtl = simulate(program, x)
    assert rtl.ok, rtl.first_problem()
    np.testing.assert_array_equal(result.sim.outputs, rtl.outputs)
    assert [(b.cycles, b.layer_cycles, b.beats, b.saturations) for b in result.sim.batches] \
        == [(b.cycles, b.layer_cycles, b.beats, b.saturations) for b in rtl.batches]
    assert result.sim.weight_cycles == rtl.weight_cycles
    print(f"gate level, lenet5 on the iCEBreaker preset: {result.bit_exact}/3 bit-exact, "
          f"{result.cycles} cycles ({program.cycles} per batch of 2); synthesis "
          f"{'ran' if result.synthesized else 'cached'} {result.synth_seconds:.0f} s, "
          f"Verilator build {result.sim.build_seconds:.0f} s, simulation "
          f"{result.sim.test_seconds:.0f} s")


def test_ecp5_boards_are_refused():
    program = compile_network(models.load("mnist-tiny"), ArrayConfig(rows=4, cols=4))
    with pytest.raises(ValueError, match=r"supports iCE40 boards; ulx3s-25f is ecp5"):
        synthesize_netlist(program, board="ulx3s-25f")
    with pytest.raises(ValueError, match=r"Unknown board 'nope'"):
        synthesize_netlist(program, board="nope")
