"""Fault injection on the host link: a whole transaction (identify, reset, weights,
registers, input, run, outputs, counters) between the host Link and the device model over
a simulated line, with seeded faults in both directions: dropped, flipped and duplicated
bytes, truncated frames, garbage before or inside frames, and device resets in the middle
of a transfer.

Every case must end *recovered* (the transaction completes and everything delivered, to
the device and to the host, equals what was sent) or *detected* (a LinkError), never with
silently wrong data, and within a bounded time.  The device model is byte-for-byte equal
to the gateware (tests/boards/test_linkgw.py), so this holds for the gateware too."""

import collections
import time

import numpy as np
import pytest

from systolic.boards.link import Descriptor, Link, LinkError, network_hash
from systolic.boards.linkmodel import Faults, LinkModel, StandIn, VirtualSerial

CASES = 240
#: Cases with a storm of faults and few retries, so that many end in a LinkError.
STORMS = range(1000, 1120)
KINDS = ("drop", "flip", "dup", "truncate", "garbage", "reset")
DIRECTIONS = ("to_device", "to_host")

SHAPES = [
    dict(cols=2, act_width=8, input_words=40, output_words=10, layers=3, addr=3, data=40),
    dict(cols=4, act_width=6, input_words=130, output_words=70, layers=5, addr=4, data=200),
    dict(cols=1, act_width=16, input_words=9, output_words=300, layers=2, addr=2, data=12),
]


def descriptor(shape):
    return Descriptor(name_hash=network_hash("faults"), rows=2, cols=shape["cols"],
                      act_width=shape["act_width"], input_words=shape["input_words"],
                      output_words=shape["output_words"], weight_addr_width=shape["addr"],
                      weight_data_width=shape["data"],
                      rounding=tuple(j % 3 for j in range(shape["layers"])), seed=1)


def job(rng, d):
    n = int(rng.integers(1, d.cols + 1))
    half = 1 << (d.act_width - 1)
    batch = rng.integers(-half, half, (n, d.input_words)).tolist()
    weights = [(int(rng.integers(0, 2)), int(rng.integers(0, 1 << d.weight_addr_width)),
                int.from_bytes(rng.bytes(d.weight_beat_bytes), "little")
                % (1 << d.weight_data_width)) for _ in range(int(rng.integers(1, 40)))]
    rounding = [int(r) for r in rng.integers(0, 3, d.layers)]
    return batch, weights, rounding, int(rng.integers(0, 1 << 32))


def transact(d, work, to_device=None, to_host=None, retries=8, attempts=3):
    """One transaction; returns (result or LinkError, model, port, link, wall time)."""
    batch, weights, rounding, seed = work
    model = LinkModel(d, StandIn(d))
    port = VirtualSerial(model, to_device=to_device, to_host=to_host)
    link = Link(port, timeout=0.05, retries=retries, clock=port.clock)
    start = time.monotonic()
    try:
        result = link.infer(batch, weights=weights, rounding=rounding, seed=seed,
                            attempts=attempts)
    except LinkError as e:
        result = e
    return result, model, port, link, time.monotonic() - start


def plan(seed):
    """The case's descriptor, job and faults, from its seed alone."""
    rng = np.random.default_rng(seed)
    d = descriptor(SHAPES[seed % len(SHAPES)])
    work = job(rng, d)
    # a clean dry run gives the length of each direction's byte stream and frame starts
    probe = {k: Faults() for k in DIRECTIONS}
    transact(d, work, **probe)
    actions = {k: collections.defaultdict(list) for k in DIRECTIONS}
    planned = []
    storm = seed in STORMS
    count = int(rng.integers(5, 16)) if storm else int(rng.choice([1, 1, 1, 2, 2, 3]))
    for _ in range(count):
        direction = str(rng.choice(DIRECTIONS))
        kind = str(rng.choice(KINDS))
        f = probe[direction]
        if kind in ("garbage", "truncate") and rng.random() < 0.5:
            # at a frame's first byte: garbage before a frame, or a frame cut to nothing
            at = int(rng.choice(f.starts))
        else:
            at = int(rng.integers(0, f.index))
        if kind == "flip":
            act = ("flip", int(rng.integers(1, 256)))
        elif kind == "garbage":
            junk = bytearray(rng.bytes(int(rng.integers(1, 65))))
            if rng.random() < 0.5:       # a plausible frame start inside the garbage
                k = int(rng.integers(0, len(junk)))
                junk[k:k] = bytes([0xA5, 0x5A, int(rng.integers(0, 256))])
            act = ("garbage", bytes(junk))
        else:
            act = (kind,)
        actions[direction][at].append(act)
        planned.append((direction, kind, at))
    return d, work, actions, planned


def run_case(seed):
    d, work, actions, planned = plan(seed)
    faults = {k: Faults(actions[k]) for k in DIRECTIONS}
    storm = dict(retries=2, attempts=1) if seed in STORMS else {}
    result, model, port, link, wall = transact(d, work, **faults, **storm)
    batch, weights, rounding, sr_seed = work
    applied = {k: dict(faults[k].applied) for k in DIRECTIONS}
    info = dict(seed=seed, planned=planned, applied=applied, wall=wall, virtual=port.now,
                stats=dict(link.stats), device=dict(model.stats), resets=port.resets)
    if isinstance(result, LinkError):
        return "detected", info | dict(error=f"{type(result).__name__}: {result}")
    out, counters = result
    exp_out, exp_counters = StandIn.expected(d, batch, weights=weights, rounding=rounding,
                                             seed=sr_seed)
    # device side: what arrived is what was sent
    dev = model.device
    padded = batch + [[0] * d.input_words] * (d.cols - len(batch))
    ref = StandIn(d)
    for beat in weights:
        ref.write(*beat)
    delivered = (dev.inputs[-1] == [list(c) for c in zip(*padded)]
                 and dev.weights == ref.weights and dev.biases == ref.biases
                 and (dev.rounding, dev.seed, dev.images) == (tuple(rounding), sr_seed,
                                                              len(batch)))
    # host side: what was read is what the device holds
    got = [counters.cycles, counters.beats, *counters.layer_cycles, *counters.saturations]
    if not delivered or out != exp_out or got != exp_counters:
        return "silent", info
    return "recovered", info


@pytest.mark.parametrize("seed", [*range(CASES), *STORMS], ids=lambda s: f"seed={s}")
def test_fault_is_detected_or_recovered(seed):
    outcome, info = run_case(seed)
    assert outcome != "silent", f"silent corruption: {info}"
    assert outcome in ("recovered", "detected"), info
    assert info["wall"] < 5 and info["virtual"] < 60, f"too slow (a hang?): {info}"
    assert any(info["applied"].values()), f"no fault happened: {info}"


def campaign(seeds):
    outcomes = collections.Counter()
    by_kind = collections.defaultdict(collections.Counter)
    totals = collections.Counter()
    worst = 0.0
    errors = collections.Counter()
    for seed in seeds:
        outcome, info = run_case(seed)
        outcomes[outcome] += 1
        # harmless faults exist (a doubled SYNC0, garbage without SYNC between frames)
        if outcome == "recovered" and not info["stats"]["retransmissions"]:
            outcomes["recovered without retransmission"] += 1
        if outcome == "detected":
            errors[info["error"].split(":")[0]] += 1
        worst = max(worst, info["wall"])
        for direction, acts in info["applied"].items():
            for kind, n in acts.items():
                by_kind[direction, kind][outcome] += n
        totals.update(info["stats"])
        totals["device_duplicates"] += info["device"].get("duplicates", 0)
        totals["device_naks"] += sum(v for k, v in info["device"].items()
                                     if k.startswith("nak_"))
        totals["device_resets"] += info["resets"]
    return outcomes, by_kind, totals, worst, errors


def report(title, n, outcomes, by_kind, totals, worst, errors):
    print(f"\n{title}, {n} cases: {dict(outcomes)}; slowest case {worst * 1000:.0f} ms")
    if errors:
        print(f"  detected as: {dict(errors)}")
    for (direction, kind), c in sorted(by_kind.items()):
        print(f"  {direction:9s} {kind:8s} {dict(c)}")
    print(f"  totals: {dict(totals)}")


@pytest.mark.slow
def test_fault_campaign_summary(capsys):
    """All the cases again, in one table: both directions and every kind of fault
    happened, single faults were all recovered, storms were recovered or detected, and
    nothing went unnoticed."""
    outcomes, by_kind, totals, worst, errors = result = campaign(range(CASES))
    storms = campaign(STORMS)
    with capsys.disabled():
        report("link fault injection (1-3 faults, 8 retries, 3 attempts)", CASES, *result)
        report("fault storms (5-15 faults, 2 retries, 1 attempt)", len(STORMS), *storms)
    assert outcomes["silent"] == 0 and storms[0]["silent"] == 0
    assert outcomes["recovered"] == CASES
    assert storms[0]["recovered"] + storms[0]["detected"] == len(STORMS)
    assert storms[0]["recovered"] > 0 and storms[0]["detected"] > 0
    assert {k for k in by_kind} == {(d, k) for d in DIRECTIONS for k in KINDS}
    assert totals["retransmissions"] > 0 and totals["device_duplicates"] > 0
    assert totals["naks"] > 0 and totals["bad_frames"] > 0 and totals["timeouts"] > 0
    assert totals["device_resets"] > 0
