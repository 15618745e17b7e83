"""Formal properties of the requantization lane (rtl/requant.py), DESIGN.md section 3.

Each property is proven (or bounded-checked), its covers are reached, and a planted bug
(a one-line mutant of the lane, :func:`formal_harness.mutant`) makes it fail.

What is proven, for every input and every configuration in range (any shift
``-max_left_shift..max_shift``, floor/nearest_even/stochastic, any output format of
2..out_width bits, with or without activation bounds):

* ``latency`` (k-induction, unbounded): with no back-pressure the lane takes an element
  every cycle and each element's output, exactly ``latency`` cycles later, is section 3's
  value and saturation event.  The stochastic lane runs with its generator replaced by one
  with the same contract whose output is the element index (so ``r`` is free);
  tests/formal/test_formal_srgen.py proves that the real generator computes ``H``.
* ``stalls`` (bounded): under any idle/back-pressure pattern, each output transfer carries
  its element's section 3 result, in order (at small widths; every element is tracked).
* ``stream`` (k-induction): ``o.valid`` is held until ``o.ready`` with a stable payload.
* ``conservation`` (bounded): no output without an input, never more than ``latency`` in
  flight, and after ``latency`` cycles of ``o.ready`` with no input nothing is in flight.
"""

import pytest

from systolic.rtl.requant import Requantizer

from formal_harness import (FLOOR, NEAREST_EVEN, STOCHASTIC, RequantHarness, expect,
                            mutant, requant_lane)

ALL = (FLOOR, NEAREST_EVEN, STOCHASTIC)

#: Planted bugs, each a one-line change of Requantizer.elaborate (built when a test runs,
#: so a stale pattern fails only its own test).
BUGS = {
    "ties_up": ("shifted[0] & ~(tie & tie_on)", "shifted[0]"),
    "clamp_is_event": ("saturated.eq(sat_lo)", "saturated.eq(1)"),
    "short_offset": ("(h & mask[:32])", "(h & (mask[:32] >> 1))"),
    "stages_ignore_stall": ("with m.If(advance): m.d.sync += reg.eq(value)",
                            "m.d.sync += reg.eq(value)"),
    "no_hold": ("advance.eq(~valid[-1] | self.o.ready)", "advance.eq(1)"),
    "always_ready": ("self.i.ready.eq(advance)", "self.i.ready.eq(1)"),
}


def bug(name):
    return mutant(Requantizer, *BUGS[name], name=f"Requantizer_{name}")


def lane(cls=None, **params):
    return requant_lane(cls, **params)


LATENCY_CASES = {
    # id: (lane parameters, modes, planted bug)
    "a6o3L16-floor,ne": (dict(acc_width=6, out_width=3, max_left_shift=16, stochastic=False),
                         (FLOOR, NEAREST_EVEN), "ties_up"),
    "a8o4L16-floor,ne": (dict(acc_width=8, out_width=4, max_left_shift=16, stochastic=False),
                         (FLOOR, NEAREST_EVEN), "clamp_is_event"),
    "a6o3L4-all": (dict(acc_width=6, out_width=3, max_left_shift=4, stochastic=True),
                   ALL, "short_offset"),
    "a8o4L16-all": (dict(acc_width=8, out_width=4, max_left_shift=16, stochastic=True),
                    ALL, "ties_up"),
}


@pytest.mark.parametrize("case", LATENCY_CASES)
def test_requant_latency(case, tmp_path):
    params, modes, planted = LATENCY_CASES[case]
    dut = lane(**params)
    n = dut.latency
    expect(RequantHarness(dut, modes=modes, check="latency"),
           "prove", n + 1, "PASS", tmp_path / "prove")
    expect(RequantHarness(lane(**params), modes=modes, check="latency"),
           "cover", n + 3, "PASS", tmp_path / "cover")
    expect(RequantHarness(lane(bug(planted), **params), modes=modes, check="latency"),
           "prove", n + 1, "FAIL", tmp_path / "bug")


STALL_CASES = {
    "a6o3L4-floor,ne": (dict(acc_width=6, out_width=3, max_left_shift=4, stochastic=False),
                        (FLOOR, NEAREST_EVEN), 10),
    "a4o2L2-all": (dict(acc_width=4, out_width=2, max_left_shift=2, stochastic=True),
                   ALL, 12),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", STALL_CASES)
def test_requant_stalls(case, tmp_path):
    params, modes, depth = STALL_CASES[case]
    expect(RequantHarness(lane(**params), modes=modes, check="spec"),
           "bmc", depth, "PASS", tmp_path / "bmc")
    expect(RequantHarness(lane(**params), modes=modes, check="spec"),
           "cover", depth, "PASS", tmp_path / "cover")
    expect(RequantHarness(lane(bug("stages_ignore_stall"), **params), modes=modes, check="spec"),
           "bmc", depth, "FAIL", tmp_path / "bug")


@pytest.mark.parametrize("stochastic", [False, True], ids=["plain", "stochastic"])
def test_requant_stream_rules(stochastic, tmp_path):
    params = dict(acc_width=6, out_width=3, max_left_shift=4, stochastic=stochastic)
    modes = ALL if stochastic else (FLOOR, NEAREST_EVEN)
    expect(RequantHarness(lane(**params), modes=modes, check="stream"),
           "prove", 2, "PASS", tmp_path / "prove")
    expect(RequantHarness(lane(**params), modes=modes, check="stream"),
           "cover", 12, "PASS", tmp_path / "cover")
    expect(RequantHarness(lane(bug("no_hold"), **params), modes=modes, check="stream"),
           "bmc", 12, "FAIL", tmp_path / "bug")


@pytest.mark.parametrize("stochastic", [False, True], ids=["plain", "stochastic"])
def test_requant_conservation(stochastic, tmp_path):
    params = dict(acc_width=4, out_width=2, max_left_shift=2, stochastic=stochastic)
    modes = ALL if stochastic else (FLOOR, NEAREST_EVEN)
    expect(RequantHarness(lane(**params), modes=modes, check="conservation"),
           "bmc", 24, "PASS", tmp_path / "bmc")
    expect(RequantHarness(lane(**params), modes=modes, check="conservation"),
           "cover", 12, "PASS", tmp_path / "cover")
    expect(RequantHarness(lane(bug("always_ready"), **params), modes=modes, check="conservation"),
           "bmc", 24, "FAIL", tmp_path / "bug")
