"""Formal property of the processing element's accumulator (rtl/pe.py), DESIGN.md section 2.

``accumulator`` (bounded): an output-stationary PE whose accumulator has the width that
``golden.accumulator.accumulator_width`` computes for reductions of ``K`` products delivers,
for every reduction of 1..K products of any operands (the most negative ones included) under
any enable pattern, exactly the mathematical sum (no wrap), at the documented time.  The
planted bug is the same PE one bit narrower, which wraps on ``K`` products of the two most
negative operands.
"""

import pytest

from systolic.golden.accumulator import accumulator_width
from systolic.rtl.pe import OutputStationaryPE

from formal_harness import AccumulatorHarness, expect

#: (in_width, weight_width, K, multiplier, BMC depth): depth >= K beats + 3 PE stages + 1.
CASES = {
    "3x3-K4-inferred": (3, 3, 4, "inferred", 8),
    "3x3-K4-lut": (3, 3, 4, "lut", 8),
    "2x4-K3-inferred": (2, 4, 3, "inferred", 8),
}


@pytest.mark.parametrize("case", CASES)
def test_pe_accumulator_exact(case, tmp_path):
    wi, ww, k, multiplier, depth = CASES[case]
    width = accumulator_width(wi, ww, k)

    def pe(acc_width):
        return OutputStationaryPE(in_width=wi, weight_width=ww, acc_width=acc_width,
                                  multiplier=multiplier)

    expect(AccumulatorHarness(pe(width), reduction=k), "bmc", depth, "PASS",
           tmp_path / "bmc")
    expect(AccumulatorHarness(pe(width), reduction=k), "cover", depth, "PASS",
           tmp_path / "cover")
    expect(AccumulatorHarness(pe(width - 1), reduction=k), "bmc", depth, "FAIL",
           tmp_path / "bug")
