"""The stream rules on every stream port of every unit (DESIGN.md section 5), by k-induction.

For each unit, with every input stream driven by free inputs that obey the rules and every
output stream under free back-pressure, and any (constant) configuration: an output's
``valid``, once asserted, is held until ``ready``, and its payload is stable meanwhile.
Small parameters keep the state small; the rules are properties of the control, which does
not depend on the widths.  Each unit has a cover (an output transfer after a stall) and a
planted bug (its output stage advancing while stalled) that must fail.

Not covered here: that ``valid`` never *combinationally* depends on ``ready`` (a
single-trace property cannot see it; tests/rtl check it by simulation).
"""

import pytest
from amaranth.hdl import signed

from systolic.rtl.activation import Activation
from systolic.rtl.array import SystolicArray
from systolic.rtl.pool import Pool
from systolic.rtl.requant import Requantizer
from systolic.rtl.skew import Deskew, Skew
from systolic.rtl.window import Window

from formal_harness import StreamRulesHarness, expect, mutant

DESKEW_NO_HOLD = ("advance.eq(~self.o.valid | self.o.ready)", "advance.eq(1)")
REQUANT_NO_HOLD = ("advance.eq(~valid[-1] | self.o.ready)", "advance.eq(1)")


def lane_without_hold(unit):
    """``unit`` with its requantization lane replaced by a planted-bug copy."""
    unit._requant.__class__ = mutant(Requantizer, *REQUANT_NO_HOLD)
    return unit


def bad_array(**params):
    bad_deskew = mutant(Deskew, *DESKEW_NO_HOLD)
    cls = mutant(SystolicArray, "= Deskew(shape=", "= BadDeskew(shape=",
                 names={"BadDeskew": bad_deskew})
    return cls(**params)


ARRAY_OS = dict(rows=2, cols=2, in_width=2, weight_width=2, max_reduction=4)
ARRAY_WS = dict(rows=2, cols=2, in_width=2, weight_width=2, dataflow="ws")
POOL = dict(in_width=3, max_kernel=2, max_height=4, max_width=4, stochastic=False)
WINDOW = dict(width=2, max_kernel=2, max_channels=2, max_height=3, max_width=3)

#: unit id: (factory, planted-bug factory)
UNITS = {
    "skew": (lambda: Skew(shape=signed(2), lanes=3),
             lambda: mutant(Skew, "advance = self.o.ready", "advance = 1")(
                 shape=signed(2), lanes=3)),
    "deskew": (lambda: Deskew(shape=signed(2), lanes=3),
               lambda: mutant(Deskew, *DESKEW_NO_HOLD)(shape=signed(2), lanes=3)),
    "array-os-2x2": (lambda: SystolicArray(**ARRAY_OS), lambda: bad_array(**ARRAY_OS)),
    "array-ws-2x2": (lambda: SystolicArray(**ARRAY_WS), lambda: bad_array(**ARRAY_WS)),
    "pool-max": (lambda: Pool(op="max", **POOL),
                 lambda: mutant(Pool, "down_ready.eq(self.o.ready)", "down_ready.eq(1)")(
                     op="max", **POOL)),
    "pool-avg": (lambda: Pool(op="avg", **POOL),
                 lambda: lane_without_hold(Pool(op="avg", **POOL))),
    "activation": (lambda: Activation(in_width=4, out_width=3, stochastic=False),
                   lambda: lane_without_hold(
                       Activation(in_width=4, out_width=3, stochastic=False))),
    "activation-lut": (lambda: Activation(in_width=4, out_width=3, lut_width=4,
                                          stochastic=False),
                       lambda: mutant(Activation, "lut_advance.eq(~lut_valid | self.o.ready)",
                                      "lut_advance.eq(1)")(
                           in_width=4, out_width=3, lut_width=4, stochastic=False)),
    "window": (lambda: Window(**WINDOW),
               lambda: mutant(Window, *DESKEW_NO_HOLD)(**WINDOW)),
}


@pytest.mark.parametrize("unit", UNITS)
def test_stream_rules(unit, tmp_path):
    make, make_bug = UNITS[unit]
    expect(StreamRulesHarness(make()), "prove", 3, "PASS", tmp_path / "prove")
    expect(StreamRulesHarness(make()), "cover", 16, "PASS", tmp_path / "cover")
    expect(StreamRulesHarness(make_bug()), "bmc", 16, "FAIL", tmp_path / "bug")
