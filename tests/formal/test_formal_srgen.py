"""Formal properties of the stochastic-rounding generator (rtl/srgen.py), DESIGN.md section 3.

The reference is golden/srgen.py's ``round_keys`` and ``H`` unrolled combinationally in
Amaranth (formal_harness.py; test_formal_specs.py checks it against golden).

* ``keys`` (bounded, depth 2 * ROUNDS + 2): after ``start``, ``done`` rises exactly
  ``ROUNDS - 1`` cycles later and the keys then equal the reference's for every seed and
  layer, also after a restart at each cycle of a running schedule.
* ``done`` (k-induction): under any pattern of ``start``, ``done`` is high exactly when
  ``ROUNDS - 1`` or more cycles have passed since the last ``start``.
* ``rounds`` (k-induction): with ``enable`` high, ``h`` equals ``H(keys, index)`` of the
  index presented ``latency`` cycles earlier, for every key set and index, for each
  pipelining.
* ``rounds_stalls`` (bounded, depth 24): under any ``enable`` pattern the pipeline moves
  exactly with ``enable`` (on a transport abstraction of the same registers; see
  ``RoundsHarness``).
"""

import pytest

from systolic.golden import srgen
from systolic.rtl.srgen import SRKeySchedule, SRRounds, pipeline_stages

from formal_harness import (KeyScheduleHarness, RoundsHarness, expect, mutant,
                            rounds_transport)

KEY_DEPTH = 2 * srgen.ROUNDS + 2

WRONG_ROUND_CONSTANT = ("^ step", "^ (step ^ 1)")
EARLY_DONE = ("self.done.eq(step == rounds - 1)", "self.done.eq(step >= rounds - 2)")
SWAPPED_HALVES = ("self.h.eq(Cat(y, x))", "self.h.eq(Cat(x, y))")
IGNORES_ENABLE = ("with m.If(self.enable):", "with m.If(1):")


@pytest.mark.parametrize("restart_at", [None, *range(1, srgen.ROUNDS + 1)],
                         ids=lambda r: "once" if r is None else f"restart@{r}")
def test_srkeys_match_reference(restart_at, tmp_path):
    expect(KeyScheduleHarness(SRKeySchedule(), restart_at=restart_at),
           "bmc", KEY_DEPTH, "PASS", tmp_path / "bmc")
    expect(KeyScheduleHarness(SRKeySchedule(), restart_at=restart_at),
           "cover", KEY_DEPTH, "PASS", tmp_path / "cover")
    if restart_at in (None, 4):
        bad = mutant(SRKeySchedule, *WRONG_ROUND_CONSTANT)
        expect(KeyScheduleHarness(bad(), restart_at=restart_at),
               "bmc", KEY_DEPTH, "FAIL", tmp_path / "bug")


def test_srkeys_done(tmp_path):
    expect(KeyScheduleHarness(SRKeySchedule(), keys=False),
           "prove", srgen.ROUNDS + 1, "PASS", tmp_path / "prove")
    expect(KeyScheduleHarness(SRKeySchedule(), keys=False),
           "cover", KEY_DEPTH, "PASS", tmp_path / "cover")
    bad = mutant(SRKeySchedule, *EARLY_DONE)
    expect(KeyScheduleHarness(bad(), keys=False),
           "prove", srgen.ROUNDS + 1, "FAIL", tmp_path / "bug")


ROUNDS_PER_STAGE = sorted({1, 2, 3, 4, srgen.ROUNDS})


@pytest.mark.parametrize("rounds_per_stage", ROUNDS_PER_STAGE,
                         ids=lambda r: f"rounds_per_stage={r}")
def test_srrounds_match_reference(rounds_per_stage, tmp_path):
    n = pipeline_stages(rounds_per_stage)
    expect(RoundsHarness(SRRounds(rounds_per_stage=rounds_per_stage), stalls=False),
           "prove", n + 1, "PASS", tmp_path / "prove")
    expect(RoundsHarness(SRRounds(rounds_per_stage=rounds_per_stage), stalls=False),
           "cover", n + 2, "PASS", tmp_path / "cover")
    bad = mutant(SRRounds, *SWAPPED_HALVES)
    expect(RoundsHarness(bad(rounds_per_stage=rounds_per_stage), stalls=False),
           "prove", n + 1, "FAIL", tmp_path / "bug")


@pytest.mark.parametrize("rounds_per_stage", ROUNDS_PER_STAGE,
                         ids=lambda r: f"rounds_per_stage={r}")
def test_srrounds_stalls(rounds_per_stage, tmp_path):
    transport = rounds_transport(SRRounds)
    expect(RoundsHarness(transport(rounds_per_stage=rounds_per_stage), abstract=True),
           "bmc", 24, "PASS", tmp_path / "bmc")
    expect(RoundsHarness(transport(rounds_per_stage=rounds_per_stage), abstract=True),
           "cover", 16, "PASS", tmp_path / "cover")
    bad = rounds_transport(mutant(SRRounds, *IGNORES_ENABLE))
    expect(RoundsHarness(bad(rounds_per_stage=rounds_per_stage), abstract=True),
           "bmc", 24, "FAIL", tmp_path / "bug")
