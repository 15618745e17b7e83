"""The virtual board (boards/virtual.py): the board top under Verilator behind a socket.

* The bridge's message framing, and the harness's checks of the top's ports.
* A loopback top (``tx = rx``) behind the harness and the relay: random byte streams come
  back unchanged, so the host-side UART, the chunking and the receive ring lose, add and
  reorder nothing.
* The real board top of the default board (its network and preset), served in a thread
  on a free port: ``systolic run`` over ``socket://`` (the command's own code) on 5
  held-out images, bit-exact with the golden model and with the compiler's cycle count;
  then seeded link faults through the socket and the Verilated gateware, 20 of each kind
  (dropped, flipped, duplicated bytes, truncated frames, garbage before or inside a
  frame, a reset of the board mid-transfer), in either direction: every case ends
  recovered (outputs and counters exact) or detected (a LinkError), never silently wrong,
  and within a time bound; then a clean run shows the weights survived it all.

Then 8 storms (5-12 faults, 2 retries, 1 attempt), most of which end detected.

The Python device model carries the large fault campaign (tests/boards/test_link_faults.py,
360 cases); this one checks the same host code against the gateware itself.  Time on this
machine (lenet5, the iCEBreaker default): about 50 s to build the top (cached afterwards),
27 s for its weights (204 KB over the simulated UART), 0.9 s per fault case: 150 s for
the whole board test with a cached build; the loopback test 10 s.
"""

import collections
import re
import socket
import time

import numpy as np
import pytest
import serial
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from systolic.boards.link import COMMANDS, Descriptor, Link, LinkError
from systolic.boards.linkmodel import (Faults, FaultyPort, LinkModel, StandIn,
                                       VirtualSerial)
from systolic.boards.session import run_images
from systolic.boards.targets import DEFAULT_BOARD, board
from systolic.boards.virtual import (BoardPort, MessageReader, VirtualBoard,
                                     encode_message, harness_verilog)
from systolic.cli import main
from systolic.golden import models
from systolic.golden.datasets import mnist
from systolic.golden.run import run as golden_run
from systolic.rtl.compiler import ArrayConfig, compile_network


def test_messages_round_trip_in_any_pieces():
    rng = np.random.default_rng(0)
    msgs = [(chr(int(rng.choice([68, 82, 81, 83]))), rng.bytes(int(rng.integers(0, 300))))
            for _ in range(50)]
    stream = b"".join(encode_message(k, p) for k, p in msgs)
    reader, got, pos = MessageReader(), [], 0
    while pos < len(stream):
        n = int(rng.integers(1, 40))
        got += reader.feed(stream[pos:pos + n])
        pos += n
    assert got == msgs


@pytest.mark.parametrize("ports, message", [
    ("input clk; input rst; output tx;", "The board top has no one-bit input 'rx'"),
    ("input clk; input rst; input rx;", "The board top has no one-bit output 'tx'"),
    ("input clk; input [1:0] rx; input rst; output tx;",
     "The board top has no one-bit input 'rx'"),
    ("input rst; input rx; output tx;", "The board top has no one-bit input 'clk'"),
], ids=["rx", "tx", "rx-width", "clk"])
def test_harness_rejects_a_top_without_its_pins(ports, message):
    names = ", ".join(re.findall(r"(\w+);", ports))
    text = f"module top({names});\n" + "\n".join(
        f"  {p.strip()};" for p in ports.split(";") if p.strip()) + "\nendmodule\n"
    with pytest.raises(ValueError, match=re.escape(message)):
        harness_verilog(text)


def test_failed_start_releases_the_port():
    program = compile_network(models.load("mnist-tiny"), ArrayConfig(rows=2, cols=2))

    def broken(program, **kwargs):
        raise ValueError("UART divisor must be at least 4, not 2")
    vb = VirtualBoard(program, top=broken)
    with pytest.raises(ValueError, match="UART divisor must be at least 4, not 2"):
        vb.start()
    assert not vb.running
    with socket.create_server((vb.host, vb.port)):      # the address is free again
        pass


class Loopback(wiring.Component):
    """``tx`` follows ``rx`` through one register (a top with the board's pins)."""
    rx: In(1, init=1)
    tx: Out(1, init=1)

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.tx.eq(self.rx)
        return m


@pytest.mark.slow
def test_loopback_returns_every_byte():
    """Random writes of 1..700 bytes through relay, bench, serializer, a one-register
    loopback and the receive ring: every byte comes back, in order (seed 1)."""
    rng = np.random.default_rng(1)
    program = compile_network(models.load("mnist-tiny"), ArrayConfig(rows=2, cols=2))
    with VirtualBoard(program, top=lambda p, **kw: Loopback()) as vb:
        with serial.serial_for_url(vb.url, timeout=5.0) as port:
            sent = bytearray()
            got = bytearray()
            start = time.monotonic()
            for _ in range(40):
                data = rng.bytes(int(rng.integers(1, 700)))
                port.write(data)
                sent += data
                if rng.random() < 0.5:
                    got += port.read(len(sent) - len(got))
            got += port.read(len(sent) - len(got))
            wall = time.monotonic() - start
        stats = vb.stats()
    assert bytes(got) == bytes(sent), f"{len(got)} of {len(sent)} bytes back"
    assert stats["bytes_in"] == stats["bytes_out"] == len(sent)
    assert stats["rx_errors"] == 0
    print(f"\nloopback: {len(sent):,} bytes each way in {wall:.1f} s "
          f"({len(sent) / wall:,.0f} bytes/s); {stats['cycles']:,} cycles "
          f"({stats['cycles'] / stats['active_seconds']:,.0f} cycles/s while running)")


# -- the real board top ---------------------------------------------------------------------

KINDS = ("drop", "flip", "dup", "truncate", "garbage", "reset")
DIRECTIONS = ("to_device", "to_host")
PER_KIND = 20
#: Cases with many faults and few retries.
STORMS = 8
#: The host's response timeout in the fault cases (seconds of wall time): well above the
#: longest frame on the simulated line (257 characters of 41 cycles, 30 ms here).
TIMEOUT = 0.3


class Recorder(Faults):
    """No faults; records each frame the host writes: (first byte index, command, length)."""

    def __init__(self):
        super().__init__()
        self.frames = []

    def apply(self, frame, on_reset):
        self.frames.append((self.index, frame[3], len(frame)))
        return super().apply(frame, on_reset)


class Job:
    """A fault case's work: one held-out image, and a slice of the network's weight beats
    written again (the same values, so the network stays the same)."""

    def __init__(self, program, x, beats, rng):
        self.i = int(rng.integers(0, len(x)))
        self.x = x[self.i:self.i + 1]
        k = int(rng.integers(1, 28))
        a = int(rng.integers(0, len(beats) - k))
        self.weights = beats[a:a + k]
        self.seq = int(rng.integers(0, 256))


def transact(vb, job, to_device=None, to_host=None, retries=8, attempts=3):
    port = FaultyPort(BoardPort(vb), to_device=to_device, to_host=to_host)
    link = Link(port, timeout=TIMEOUT, retries=retries, seq=job.seq)
    start = time.monotonic()
    try:
        result = link.infer(job.x.reshape(1, -1).tolist(), weights=job.weights,
                            attempts=attempts, run_timeout=30.0)
    except LinkError as e:
        result = e
    finally:
        port.close()
    # let late answers to this client drain before the next one connects
    time.sleep(0.05)
    return result, link, time.monotonic() - start


def spans(d, job):
    """Per direction: byte starts of the frames of ``job``'s transaction up to its first
    STATUS (the part whose bytes do not depend on timing), and that part's length, from
    a dry run of the same host code against the Python device model."""
    rec = Recorder()
    port = VirtualSerial(LinkModel(d, StandIn(d)), to_device=rec)
    Link(port, clock=port.clock, seq=job.seq).infer(job.x.reshape(1, -1).tolist(),
                                                    weights=job.weights)
    frames = rec.frames
    k = next(j for j, f in enumerate(frames) if f[1] == COMMANDS["STATUS"])
    dev_starts = [f[0] for f in frames[:k + 1]]
    host_starts, at = [], 0
    for _, cmd, _ in frames[:k + 1]:
        host_starts.append(at)
        data = {COMMANDS["PING"]: len(d.to_bytes()), COMMANDS["STATUS"]: 5}.get(cmd, 0)
        at += 9 + data
    return {"to_device": (dev_starts, frames[k][0] + frames[k][2]),
            "to_host": (host_starts, at)}


def plan(kind, seed, d, program, x, beats):
    """The case's job, and its one fault: direction, byte index, action."""
    rng = np.random.default_rng([KINDS.index(kind), seed])
    job = Job(program, x, beats, rng)
    return (job, *fault(kind, rng, spans(d, job)))


def fault(kind, rng, spans):
    direction = str(rng.choice(DIRECTIONS))
    starts, length = spans[direction]
    if kind in ("garbage", "truncate") and rng.random() < 0.5:
        at = int(rng.choice(starts))     # garbage before a frame, or a frame cut to nothing
    else:
        at = int(rng.integers(0, length))
    if kind == "flip":
        act = ("flip", int(rng.integers(1, 256)))
    elif kind == "garbage":
        junk = bytearray(rng.bytes(int(rng.integers(1, 65))))
        if rng.random() < 0.5:           # a plausible frame start inside the garbage
            j = int(rng.integers(0, len(junk)))
            junk[j:j] = bytes([0xA5, 0x5A, int(rng.integers(0, 256))])
        act = ("garbage", bytes(junk))
    else:
        act = (kind,)
    return direction, at, act


def check(program, job, result):
    """'recovered', 'detected' or 'silent' (with what differs)."""
    if isinstance(result, LinkError):
        return "detected", f"{type(result).__name__}: {result}"
    out, counters = result
    net = program.network
    g = golden_run(net, job.x)
    by_layer = [0] * len(net.layers)
    for s in program.steps:
        by_layer[s.layer] += s.cycles
    beats = sum(s.tiles * s.reduction for s in program.steps if s.kind == "matmul")
    wrong = []
    if not np.array_equal(np.array(out[0]), g.logits[0]):
        wrong.append(f"outputs {out[0]} != golden {g.logits[0].tolist()}")
    if (counters.cycles, list(counters.layer_cycles), counters.beats) != (
            program.cycles, by_layer, beats):
        wrong.append(f"counters {counters}")
    if list(counters.saturations) != [int(v) for v in g.saturations]:
        wrong.append(f"saturations {counters.saturations} != golden {g.saturations}")
    return ("silent", "; ".join(wrong)) if wrong else ("recovered", "")


@pytest.mark.slow
def test_virtual_board_runs_images_and_survives_faults(capsys):
    target = board(DEFAULT_BOARD)
    name = target.default_network
    net = models.load(name)
    program = compile_network(net, target.preset())
    images, labels = mnist("holdout")
    x = models.mnist_input(net, images)
    from systolic.rtl.accelerator import weight_beats
    beats = weight_beats(program, net)
    timings = {}
    t = time.monotonic()
    with VirtualBoard(program, target=target) as vb:
        timings["start"] = time.monotonic() - t

        # 1. `systolic run` itself: weights, 5 images, counters
        t = time.monotonic()
        assert main(["run", "--port", vb.url, "--images", "5", "--timeout", "2"]) == 0
        out, err = capsys.readouterr()
        timings["run 5 images"] = time.monotonic() - t
        assert "bit-exact:         5/5 images" in out, out + err
        assert f"cycles per run:    {program.cycles:,} measured on the board, " \
            f"{program.cycles:,} compiler model" in out
        assert ": exact (compiler's cycle model, golden saturations)" in out
        assert out.count(": pass (bit-exact)") == 5
        assert vb.stats()["rx_errors"] == 0      # every character from tx was well framed

        # 2. faults through the socket and the gateware
        d = Descriptor.from_program(program)
        resets = vb.stats()["resets"]
        t = time.monotonic()
        outcomes = collections.Counter()
        by_kind = collections.defaultdict(collections.Counter)
        totals = collections.Counter()
        slowest = 0.0
        problems = []
        for kind in KINDS:
            for seed in range(PER_KIND):
                job, direction, at, act = plan(kind, seed, d, program, x, beats)
                faults = {k: Faults() for k in DIRECTIONS}
                faults[direction] = Faults({at: [act]})
                result, link, wall = transact(vb, job, **faults)
                outcome, why = check(program, job, result)
                info = f"kind={kind} seed={seed} {direction}@{at} {act[0]}: {why}"
                applied = faults[direction].applied[kind]
                if outcome == "silent" or applied != 1 or wall > 60:
                    problems.append(f"{outcome} (applied {applied}, {wall:.1f} s) {info}")
                outcomes[outcome] += 1
                by_kind[kind, direction][outcome] += 1
                totals.update(link.stats)
                slowest = max(slowest, wall)
        timings["faults"] = time.monotonic() - t

        # storms: 5 to 12 faults of any kind, 2 retries, 1 attempt: some end detected
        t = time.monotonic()
        storms = collections.Counter()
        for seed in range(STORMS):
            rng = np.random.default_rng([len(KINDS), seed])
            job = Job(program, x, beats, rng)
            where = spans(d, job)
            actions = {k: collections.defaultdict(list) for k in DIRECTIONS}
            for _ in range(int(rng.integers(5, 13))):
                direction, at, act = fault(str(rng.choice(KINDS)), rng, where)
                actions[direction][at].append(act)
            result, link, wall = transact(vb, job, retries=2, attempts=1,
                                          **{k: Faults(v) for k, v in actions.items()})
            outcome, why = check(program, job, result)
            storms[outcome] += 1
            if outcome == "silent" or wall > 60:
                problems.append(f"storm seed={seed} {outcome} ({wall:.1f} s): {why}")
        timings["storms"] = time.monotonic() - t
        totals["board resets"] = vb.stats()["resets"] - resets

        # 3. the weights and the board are still right
        with serial.serial_for_url(vb.url) as s:
            after = run_images(Link(s, timeout=2.0), program, x[:2], labels[:2],
                               load_weights=False)
        assert after.ok, "board no longer bit-exact after the fault campaign"

    with capsys.disabled():
        n = len(KINDS) * PER_KIND
        print(f"\nvirtual board link faults, {n} cases: {dict(outcomes)}; slowest "
              f"{slowest:.1f} s")
        for (kind, direction), c in sorted(by_kind.items()):
            print(f"  {direction:9s} {kind:8s} {dict(c)}")
        print(f"  totals: {dict(totals)}")
        print(f"  storms (5-12 faults, 2 retries, 1 attempt), {STORMS} cases: "
              f"{dict(storms)}")
        print("  time: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    assert not problems, "\n".join(problems)
    assert outcomes["silent"] == 0 and storms["silent"] == 0
    assert storms["recovered"] + storms["detected"] == STORMS
    assert outcomes["recovered"] + outcomes["detected"] == len(KINDS) * PER_KIND
    for kind in KINDS:
        assert sum(by_kind[kind, d]["recovered"] for d in DIRECTIONS) > 0, kind
    assert {d for _, d in by_kind} == set(DIRECTIONS)
    assert totals["retransmissions"] > 0 and totals["timeouts"] > 0
    assert totals["naks"] > 0 and totals["bad_frames"] > 0
    assert totals["board resets"] >= PER_KIND
