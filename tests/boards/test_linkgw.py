# amaranth: UnusedElaboratable=no
"""The link gateware (boards/linkgw.py): decoder and encoder against the Python frame code,
the whole device against the Python model byte for byte (faults included), and the host
against the gateware through the UART pins."""

from dataclasses import replace

import numpy as np
import pytest
from amaranth.sim import Simulator

from systolic.boards.link import (COMMANDS, NAK_REASONS, PAYLOAD_MAX, SYNC, DecodeError,
                                  Descriptor, Frame, FrameDecoder, Link, encode_frame,
                                  network_hash)
from systolic.boards.linkgw import (FrameDecoder as GwDecoder, FrameEncoder, LinkDevice,
                                    LinkEngine, accelerator_signature)
from systolic.boards.linkmodel import Faults, FaultyPort, LinkModel, StandIn, VirtualSerial
from systolic.boards.linksim import SimPort
from systolic.boards.standin import StandInAccelerator
from systolic.golden.randnet import random_network
from systolic.rtl.accelerator import Accelerator
from systolic.rtl.compiler import ArrayConfig, compile_network
from systolic.sim.streams import PATTERNS, StreamLog, stream_get, stream_monitor, stream_put

C_ = COMMANDS


def descriptor(cols=3, act_width=8, input_words=5, output_words=4, layers=3, addr=3,
               data=20, seed=5):
    return Descriptor(name_hash=network_hash("gw"), rows=2, cols=cols, act_width=act_width,
                      input_words=input_words, output_words=output_words,
                      weight_addr_width=addr, weight_data_width=data,
                      rounding=tuple(j % 3 for j in range(layers)), seed=seed)


SHAPES = {
    "1x1": dict(cols=1, act_width=2, input_words=1, output_words=1, layers=1, addr=1, data=1),
    "2x3": dict(cols=2, act_width=6, input_words=3, output_words=2, layers=2, addr=2, data=9),
    "3x5": dict(cols=3, act_width=8, input_words=5, output_words=4, layers=3, addr=3, data=20),
}


# -- parameters and the accelerator interface -----------------------------------------------

@pytest.mark.parametrize("make, error, match", [
    (lambda d: LinkDevice(descriptor=None, divisor=4), TypeError,
     r"Descriptor must be a Descriptor, not None"),
    (lambda d: LinkDevice(descriptor=d, divisor=3), ValueError,
     r"UART divisor must be at least 4, not 3"),
    (lambda d: LinkDevice(descriptor=d, divisor=4.0), TypeError,
     r"UART divisor must be a positive integer, not 4.0"),
    (lambda d: LinkDevice(descriptor=d, divisor=4, gap_bits=19), ValueError,
     r"Gap timeout must be at least 20, not 19"),
    (lambda d: LinkDevice(descriptor=d, divisor=4, gap_bits=-1), TypeError,
     r"Gap timeout must be a positive integer, not -1"),
    (lambda d: LinkDevice(descriptor=d, divisor=4, rx_depth=8), ValueError,
     r"RX FIFO depth must be at least 16, not 8"),
    (lambda d: LinkDevice(descriptor=d, divisor=4, rx_depth=None), TypeError,
     r"RX FIFO depth must be a positive integer, not None"),
    (lambda d: LinkEngine(descriptor="d"), TypeError, r"Descriptor must be a Descriptor, not 'd'"),
    (lambda d: LinkDevice(descriptor=d, divisor=4, registered_buffers=1), TypeError,
     r"Registered buffers must be a bool, not 1"),
    (lambda d: StandInAccelerator(descriptor=1), TypeError,
     r"Descriptor must be a Descriptor, not 1"),
    (lambda d: accelerator_signature(d.to_bytes()), TypeError,
     r"Descriptor must be a Descriptor, not b'"),
])
def test_rejects(make, error, match):
    with pytest.raises(error, match=match):
        make(descriptor())


def test_properties():
    d = descriptor()
    dev = LinkDevice(descriptor=d, divisor=5, gap_bits=30, rx_depth=64)
    assert (dev.descriptor, dev.divisor, dev.gap_bits, dev.rx_depth) == (d, 5, 30, 64)


@pytest.mark.parametrize("seed", range(3), ids=lambda s: f"seed={s}")
def test_interface_matches_the_accelerator(seed):
    """The link's accelerator interface is the real Accelerator's, minus ``step``."""
    rng = np.random.default_rng(seed)
    net = random_network(rng, max_layers=3, max_size=6, max_channels=3)
    program = compile_network(net, ArrayConfig(rows=2, cols=int(rng.integers(1, 4))))
    d = Descriptor.from_program(program)
    assert (d.cols, d.rows, d.act_width, d.layers) == (
        program.config.cols, program.config.rows, program.act_width, len(net.layers))
    assert (d.input_words, d.output_words) == (program.input_words, program.output_words)
    assert d.name_hash == network_hash(net.name) and d.seed == net.seed
    real = dict(Accelerator(program, counter_port=True).signature.members.items())
    del real["step"]
    assert real == dict(accelerator_signature(d).members.items())


# -- decoder and encoder against the Python frame code --------------------------------------

def entries_for(rng, n_frames):
    """RX FIFO entries (data, error, gap): frames, corrupted frames, garbage, UART errors
    and idle markers."""
    out = []
    for _ in range(n_frames):
        size = int(rng.choice([0, 1, 5, 30, PAYLOAD_MAX]))
        frame = bytearray(encode_frame(int(rng.integers(0, 256)), int(rng.integers(0, 256)),
                                       rng.integers(0, 256, size).astype(np.uint8).tobytes()))
        kind = rng.choice(["good", "good", "flip", "drop", "garbage", "error", "gap", "len"])
        if kind == "flip":
            frame[int(rng.integers(0, len(frame)))] ^= int(rng.integers(1, 256))
        elif kind == "drop":
            del frame[int(rng.integers(0, len(frame)))]
        elif kind == "len":
            frame[2] = int(rng.integers(PAYLOAD_MAX + 1, 256))
        items = [(b, 0, 0) for b in frame]
        if kind == "garbage":
            junk = rng.integers(0, 256, int(rng.integers(1, 20))).tolist()
            junk += [SYNC[0]] * int(rng.integers(0, 3))
            items = [(int(b), 0, 0) for b in junk] + items
        elif kind == "error":
            items.insert(int(rng.integers(0, len(items))), (int(rng.integers(0, 256)), 1, 0))
        elif kind == "gap":
            items.insert(int(rng.integers(0, len(items))), (0, 0, 1))
        out += items
        if rng.random() < 0.5:
            out.append((0, 0, 1))
    return out


def python_events(entries):
    dec = FrameDecoder()
    events = []
    for b, error, gap in entries:
        item = dec.gap() if gap else dec.byte(b, bool(error))
        if isinstance(item, Frame):
            events.append((0, item.cmd, item.seq, item.payload))
        elif isinstance(item, DecodeError):
            events.append((NAK_REASONS[item.reason],))
    return events


@pytest.mark.parametrize("seed, idle, stall", [
    (0, "none", "none"), (1, "1110", "p0.5"), (2, "none", "p0.9"), (3, "p0.5", "1110"),
], ids=lambda v: f"seed={v}" if isinstance(v, int) else v)
def test_decoder_matches_python(seed, idle, stall):
    rng = np.random.default_rng(seed)
    entries = entries_for(rng, 25)
    expected = python_events(entries)
    dut = GwDecoder()
    buf, got = {}, []
    log = StreamLog()

    async def source(ctx):
        await stream_put(ctx, dut.i, [{"data": b, "error": e, "gap": g}
                                      for b, e, g in entries], idle=idle, seed=seed)

    async def writes(ctx):
        async for _, _, en, addr, value in ctx.tick().sample(dut.wr_en, dut.wr_addr,
                                                            dut.wr_data):
            if en:
                buf[addr] = value

    async def sink(ctx):
        for k in range(len(expected)):
            # one at a time: the buffer holds this frame's payload only until it is taken
            ev, = await stream_get(ctx, dut.o, 1, stall=stall, seed=seed + 7 + k)
            if ev.reason:
                got.append((ev.reason,))
            else:
                got.append((0, ev.cmd, ev.seq, bytes(buf[a] for a in range(ev.length))))
        await ctx.tick().repeat(20)
        assert not ctx.get(dut.o.valid)            # nothing more

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.add_testbench(writes, background=True)
    sim.add_testbench(stream_monitor(dut.o, log, name="o"), background=True)
    sim.run()
    assert got == expected
    # coverage: good frames and every kind of error
    assert {e[0] for e in expected} == {0, *NAK_REASONS.values()}
    assert stall == "none" or log.stalls > 0


@pytest.mark.parametrize("stall", PATTERNS)
def test_encoder_matches_python(stall):
    rng = np.random.default_rng(len(stall))
    frames = [(int(rng.integers(0, 256)), int(rng.integers(0, 256)),
               rng.integers(0, 256, int(rng.choice([0, 1, 17, PAYLOAD_MAX]))).astype(
                   np.uint8).tobytes()) for _ in range(8)]
    expected = b"".join(encode_frame(*f) for f in frames)
    dut = FrameEncoder()
    logs = StreamLog()
    got = []

    async def headers(ctx):
        await stream_put(ctx, dut.h, [{"cmd": c, "seq": s, "length": len(p)}
                                      for c, s, p in frames], idle="p0.5", seed=1)

    async def payload(ctx):
        await stream_put(ctx, dut.i, [b for _, _, p in frames for b in p], idle="1110")

    async def sink(ctx):
        got.extend(await stream_get(ctx, dut.o, len(expected), stall=stall, seed=3))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(headers)
    sim.add_testbench(payload)
    sim.add_testbench(sink)
    sim.add_testbench(stream_monitor(dut.o, logs, name="o"), background=True)
    sim.run()
    assert bytes(got) == expected
    assert stall == "none" or logs.stalls > 0


# -- the whole device against the model, byte for byte --------------------------------------

GAP_BITS = 20
DIVISOR = 4


class Script:
    """Host transmissions with faults, replayed into the gateware (through the UART pins)
    and into the model; both must answer the same bytes."""

    def __init__(self, d, registered=False):
        self.d = d
        self.port = SimPort(d, divisor=DIVISOR, gap_bits=GAP_BITS,
                            registered_buffers=registered)
        self.model = LinkModel(d, StandIn(d))
        self.expected = bytearray()
        self.stats = {}

    def send(self, items):
        """Items: ints (bytes), ("error", b) (framing error), ("reset",)."""
        for item in items:
            if isinstance(item, int):
                self.port.write_raw(item)
                self.expected += self.model.byte(item)
            elif item[0] == "error":
                self.port.write_raw(item[1], framing_error=True)
                self.expected += self.model.byte(item[1], error=True)
            else:
                self.port.reset_device()
                self.model.power_reset()
        # the device answers, then the line stays idle beyond the gap timeout
        # (the engine answers within 2 cycles per payload byte plus a few; these payloads
        # are short)
        self.port.settle(GAP_BITS * DIVISOR + 200)
        self.expected += self.model.gap()

    def check(self):
        got = self.port.take()
        assert got == bytes(self.expected), (got.hex(), bytes(self.expected).hex())
        self.expected.clear()


def session_frames(rng, d):
    """A plausible session with refusals mixed in: (cmd, payload) pairs."""
    IB, WB = d.input_bytes, d.weight_beat_bytes
    beats = rng.integers(0, 256, (d.input_words, IB)).astype(np.uint8)
    mask = (1 << (d.cols * d.act_width)) - 1     # padding bits zero, as the host packs
    raw = [int.from_bytes(b.tobytes(), "little") & mask for b in beats]
    inputs = [r.to_bytes(IB, "little") for r in raw]
    wmask = (1 << d.weight_beat_bits) - 1
    weights = [(int.from_bytes(rng.integers(0, 256, WB).astype(np.uint8).tobytes(), "little")
                & wmask).to_bytes(WB, "little") for _ in range(6)]
    rounding = bytes(int(r) for r in rng.integers(0, 3, d.layers))
    out = [("PING", b""), ("RESET", bytes([int(rng.integers(1, 256))])),
           ("SET_REGISTERS", bytes([int(rng.integers(0, d.cols + 1))])
            + rng.integers(0, 256, 4).astype(np.uint8).tobytes() + rounding),
           ("WRITE_WEIGHTS", b"".join(weights[:3])), ("WRITE_WEIGHTS", b"".join(weights[3:])),
           ("RUN", b""),                                                     # NO_INPUT
           ("READ_OUTPUT", bytes([0, 0, 1]))]                                # NOT_READY
    for k in range(d.input_words):
        out.append(("LOAD_INPUT", k.to_bytes(2, "little") + inputs[k]))
    out += [("LOAD_INPUT", bytes(2 + IB)),                                   # ORDER
            ("SET_REGISTERS", bytes([d.cols + 1]) + bytes(4 + d.layers)),   # BAD_ARG
            ("SET_REGISTERS", bytes(4 + d.layers) + bytes([3])),            # BAD_ARG
            ("SET_REGISTERS", bytes(5) + bytes([255]) + bytes(d.layers - 1)),  # BAD_ARG
            ("WRITE_WEIGHTS", bytes(WB + 1)),                               # BAD_LENGTH
            ("RUN", b""), ("STATUS", b""), ("RUN", b""),
            ("READ_OUTPUT", bytes([0, 0, d.output_words])),
            ("READ_OUTPUT", bytes([0, 0, d.output_words + 1])),              # BAD_ARG
            ("READ_COUNTERS", bytes([0, d.counter_words])),
            ("READ_COUNTERS", bytes([1, d.counter_words])),                  # BAD_ARG
            ("STATUS", b"x"), ("UNKNOWN", b"")]
    return out


def faulty(rng, frame):
    """One transmission of ``frame``, perhaps damaged."""
    kind = rng.choice(["clean"] * 4 + ["flip", "drop", "garbage", "truncate", "error",
                                       "twice", "reset"])
    items = list(frame)
    k = int(rng.integers(0, len(items)))
    if kind == "flip":
        items[k] ^= int(rng.integers(1, 256))
    elif kind == "drop":
        del items[k]
    elif kind == "garbage":
        items = rng.integers(0, 256, int(rng.integers(1, 12))).tolist() + [SYNC[0]] + items
    elif kind == "truncate":
        items = items[:k]
    elif kind == "error":
        items[k] = ("error", items[k])
    elif kind == "twice":
        items = items + items
    elif kind == "reset":
        items.insert(k, ("reset",))
    return str(kind), items


def replay(seed, shape, transmissions=None, registered=False):
    rng = np.random.default_rng(seed)
    d = descriptor(**SHAPES[shape])
    script = Script(d, registered)
    kinds = set()
    seq = 0
    frames = session_frames(rng, d)
    for name, payload in frames[:transmissions]:
        seq = seq if rng.random() < 0.15 else (seq + 1) & 0xFF      # some repeated seqs
        frame = encode_frame(C_.get(name, 0x42), seq, payload)
        kind, items = faulty(rng, frame)
        kinds.add(kind)
        script.send(items)
    script.check()
    return script, kinds


@pytest.mark.parametrize("registered", [False, True], ids=["plain", "registered"])
@pytest.mark.parametrize("seed, shape", list(enumerate(SHAPES)),
                         ids=lambda v: f"seed={v}" if isinstance(v, int) else v)
def test_device_matches_model(seed, shape, registered):
    """Both forms of the engine (``registered_buffers``: the ECP5 boards')."""
    script, kinds = replay(seed, shape, registered=registered)
    stats = script.model.stats
    naks = sum(v for k, v in stats.items() if k.startswith("nak_"))
    assert stats["executed"] >= 8 and naks > 0 and len(kinds) >= 4, (stats, kinds)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3, 15), ids=lambda s: f"seed={s}")
def test_device_matches_model_more_seeds(seed):
    script, kinds = replay(seed, list(SHAPES)[seed % 3])
    assert script.model.stats["executed"] >= 8


# -- the host against the gateware -----------------------------------------------------------

@pytest.mark.parametrize("shape", ["1x1", "2x3"])
@pytest.mark.parametrize("registered", [False, True], ids=["plain", "registered"])
def test_host_against_gateware(shape, registered):
    d = descriptor(**SHAPES[shape])
    rng = np.random.default_rng(1)
    port = SimPort(d, divisor=DIVISOR, gap_bits=GAP_BITS, registered_buffers=registered)
    link = Link(port, timeout=0.01, clock=port.clock)
    assert link.identify() == d
    n = int(rng.integers(1, d.cols + 1))
    half = 1 << (d.act_width - 1)
    batch = rng.integers(-half, half, (n, d.input_words)).tolist()
    weights = [(int(rng.integers(0, 2)), int(rng.integers(0, 1 << d.weight_addr_width)),
                int(rng.integers(0, 1 << d.weight_data_width))) for _ in range(5)]
    rounding = [int(r) for r in rng.integers(0, 3, d.layers)]
    out, counters = link.infer(batch, weights=weights, rounding=rounding, seed=123456789)
    exp_out, exp_counters = StandIn.expected(d, batch, weights=weights, rounding=rounding,
                                             seed=123456789)
    assert out == exp_out
    assert [counters.cycles, counters.beats, *counters.layer_cycles,
            *counters.saturations] == exp_counters
    assert link.stats["retransmissions"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(8), ids=lambda s: f"seed={s}")
def test_host_against_gateware_with_faults(seed):
    """Faults on the line between the host and the gateware (through the UART pins): the
    transaction recovers, and what arrives equals what was sent."""
    rng = np.random.default_rng(seed)
    d = descriptor(**SHAPES["2x3"])
    batch = rng.integers(-32, 32, (2, d.input_words)).tolist()
    weights = [(int(rng.integers(0, 2)), int(rng.integers(0, 4)),
                int(rng.integers(0, 1 << 9))) for _ in range(6)]
    # the byte streams of a clean transaction (the model's equal the gateware's)
    probe = {"to_device": Faults(), "to_host": Faults()}
    model = LinkModel(d, StandIn(d))
    vport = VirtualSerial(model, **probe)
    Link(vport, timeout=0.05, clock=vport.clock).infer(batch, weights=weights)
    actions = {}
    for direction in ("to_device", "to_host"):
        kind = ["drop", "flip", "dup", "truncate", "garbage", "reset"][(seed + len(direction))
                                                                       % 6]
        act = {"flip": ("flip", 0x10), "garbage": ("garbage", bytes([0xA5, 0x5A, 0x30, 1]))
               }.get(kind, (kind,))
        actions[direction] = Faults({int(rng.integers(0, probe[direction].index)): [act]})
    port = FaultyPort(SimPort(d, divisor=DIVISOR, gap_bits=GAP_BITS), **actions)
    link = Link(port, timeout=0.005, clock=port.clock)
    out, counters = link.infer(batch, weights=weights)
    assert all(sum(f.applied.values()) == 1 for f in actions.values())
    assert link.stats["retransmissions"] > 0
    exp_out, exp_counters = StandIn.expected(d, batch, weights=weights)
    assert out == exp_out
    assert [counters.cycles, counters.beats, *counters.layer_cycles,
            *counters.saturations] == exp_counters


def test_rx_overflow_is_flagged_and_recovered():
    """A tiny RX FIFO (16) and a burst of 8 PINGs while the device answers: characters are
    lost, the frames they belong to are NAKed or never complete, nothing is answered
    wrongly, and the device then answers a clean PING."""
    d = descriptor(**SHAPES["2x3"])
    port = SimPort(d, divisor=DIVISOR, gap_bits=GAP_BITS, rx_depth=16)
    port.write(b"".join(encode_frame(C_["PING"], s) for s in range(8)))
    port.settle(GAP_BITS * DIVISOR + 200)
    items = FrameDecoder().feed(port.take())
    answers = [i for i in items if i.cmd != 0]
    naks = [i.payload[0] for i in items if i.cmd == 0]
    assert all(isinstance(i, Frame) for i in items)            # well-formed, every one
    assert 1 <= len(answers) < 8 and NAK_REASONS["rx"] in naks
    ping = bytes([0, 0]) + d.to_bytes()           # OK, session 0
    assert all(a.cmd == 0x81 and a.payload == ping for a in answers)
    port.write(encode_frame(C_["PING"], 99))
    port.settle(GAP_BITS * DIVISOR + 200)
    assert FrameDecoder().feed(port.take()) == [Frame(0x81, 99, ping)]


def test_simport_needs_a_timeout():
    port = SimPort(descriptor())
    port.idle(1e-5)
    with pytest.raises(ValueError, match=r"SimPort needs a timeout \(reads would never end\)"):
        port.read(1)


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow),
                                  pytest.param(2, marks=pytest.mark.slow)],
                         ids=lambda s: f"seed={s}")
def test_host_against_gateware_and_real_accelerator(seed):
    """The link wired to a real Accelerator (random tiny network): the host's outputs and
    counters equal the golden model's, with run-time rounding, seed and a weight rewrite."""
    from systolic.golden.randnet import random_input
    from systolic.golden.rounding import ROUNDING_MODES
    from systolic.golden.run import run
    from systolic.rtl.accelerator import weight_beats
    from systolic.rtl.requant import MODE

    rng = np.random.default_rng(seed)
    net = random_network(rng, max_layers=2, max_size=5, max_channels=3)
    program = compile_network(net, ArrayConfig(rows=2, cols=2))
    d = Descriptor.from_program(program)
    port = SimPort(d, divisor=DIVISOR, gap_bits=GAP_BITS,
                   accelerator=lambda _: Accelerator(program, counter_port=True))
    link = Link(port, timeout=0.05, clock=port.clock)
    x = random_input(rng, net, 2)
    modes = [str(rng.choice(ROUNDING_MODES)) for _ in net.layers]
    sr_seed = int(rng.integers(0, 1 << 32))
    # new weights of the same topology and formats, loaded at run time: each output
    # channel's weights shuffled (the compiler's sizing, from per-channel magnitudes,
    # stays the same)
    def redraw(layer):
        if getattr(layer, "weight", None) is None:
            return layer
        w = layer.weight.reshape(layer.weight.shape[0], -1).copy()
        for row in w:
            rng.shuffle(row)
        return replace(layer, weight=w.reshape(layer.weight.shape))

    other = replace(net, layers=[redraw(layer) for layer in net.layers])
    assert not np.array_equal(other.layers[0].weight, net.layers[0].weight)
    beats = weight_beats(program, other)
    out, counters = link.infer(x.reshape(2, -1).tolist(), weights=beats,
                               rounding=[MODE[m] for m in modes], seed=sr_seed)
    want = run(other, x, rounding=modes, seed=sr_seed)
    assert np.array_equal(np.array(out), want.logits)
    assert list(counters.saturations) == want.saturations
    assert counters.cycles == program.cycles
