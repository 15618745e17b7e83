"""The host link protocol (boards/link.py): CRC, frames, descriptor, and the host against
the Python device model (boards/linkmodel.py) over a simulated line and a TCP socket."""

import time

import numpy as np
import pytest
import serial
from amaranth.lib import crc
from hypothesis import given, settings, strategies as st

from systolic.boards.link import (COMMANDS, PAYLOAD_MAX, RESPONSE, SYNC, DecodeError,
                                  Descriptor, DeviceError, DeviceResetError, Frame,
                                  FrameDecoder, Link, LinkError, LinkTimeoutError, crc16,
                                  encode_frame, network_hash, pack_beat, unpack_beat)
from systolic.boards.linkmodel import Faults, LinkModel, ModelServer, StandIn, VirtualSerial
from systolic.golden.errors import ConstraintError, SystolicError

PROPERTY = settings(max_examples=200, deadline=None)


def descriptor(cols=3, act_width=8, input_words=20, output_words=7, layers=3, addr=3,
               data=40, seed=5):
    return Descriptor(name_hash=network_hash("test"), rows=2, cols=cols, act_width=act_width,
                      input_words=input_words, output_words=output_words,
                      weight_addr_width=addr, weight_data_width=data,
                      rounding=tuple(j % 3 for j in range(layers)), seed=seed)


#: Readable small shapes: (cols, act_width, input_words, output_words, layers, addr, data)
SHAPES = {
    "1x1": dict(cols=1, act_width=2, input_words=1, output_words=1, layers=1, addr=1, data=1),
    "2x3": dict(cols=2, act_width=8, input_words=3, output_words=2, layers=2, addr=2, data=9),
    "4x4": dict(cols=4, act_width=8, input_words=70, output_words=70, layers=4, addr=3,
                data=64),
    "wide": dict(cols=5, act_width=16, input_words=200, output_words=30, layers=7, addr=4,
                 data=400),
}


def random_job(rng, d):
    """A random batch, weight beats and registers for descriptor ``d``."""
    n = int(rng.integers(0, d.cols + 1))
    half = 1 << (d.act_width - 1)
    batch = rng.integers(-half, half, (n, d.input_words)).tolist()
    weights = [(int(rng.integers(0, 2)), int(rng.integers(0, 1 << d.weight_addr_width)),
                int(rng.integers(0, 1 << min(d.weight_data_width, 62))))
               for _ in range(int(rng.integers(0, 25)))]
    rounding = tuple(int(r) for r in rng.integers(0, 3, d.layers))
    return batch, weights, rounding, int(rng.integers(0, 1 << 32))


def virtual(d, **kwargs):
    """A host link to a fresh model over a simulated line."""
    model = LinkModel(d, StandIn(d))
    port = VirtualSerial(model, **kwargs)
    return Link(port, timeout=0.05, clock=port.clock), model, port


# -- CRC and frames -------------------------------------------------------------------------

def test_crc_check_value():
    # the catalogue's check value of CRC-16/CCITT-FALSE
    assert crc16(b"123456789") == 0x29B1
    assert crc.catalog.CRC16_CCITT_FALSE(8).compute(b"123456789") == 0x29B1


@PROPERTY
@given(st.binary(max_size=300))
def test_crc_matches_amaranth_catalogue(data):
    assert crc16(data) == crc.catalog.CRC16_CCITT_FALSE(8).compute(data)


@PROPERTY
@given(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=PAYLOAD_MAX))
def test_frame_round_trip(cmd, seq, payload):
    frame = encode_frame(cmd, seq, payload)
    assert len(frame) == len(payload) + 7 and frame[:2] == bytes(SYNC)
    assert crc16(frame[2:]) == 0                      # the residue
    dec = FrameDecoder()
    assert dec.feed(frame + frame) == [Frame(cmd, seq, payload)] * 2
    assert dec.skipped == 0 and not dec.in_frame


@PROPERTY
@given(st.binary(max_size=400), st.binary(max_size=60), st.integers(0, 255))
def test_frame_after_garbage_and_gap(garbage, payload, seq):
    """Garbage, then an idle gap, then a frame: the frame is decoded."""
    frame = encode_frame(COMMANDS["LOAD_INPUT"], seq, payload)
    dec = FrameDecoder()
    items = dec.feed(garbage)
    items.append(dec.gap())
    items += dec.feed(frame)
    assert items[-1] == Frame(COMMANDS["LOAD_INPUT"], seq, payload)


@PROPERTY
@given(st.binary(max_size=400).map(lambda b: bytes(x for x in b if x != SYNC[0])),
       st.integers(0, 3), st.binary(max_size=60))
def test_frame_after_garbage_without_sync(garbage, syncs, payload):
    """Garbage without SYNC0 (then any number of stray SYNC0) never hides a frame."""
    frame = encode_frame(1, 2, payload)
    dec = FrameDecoder()
    assert dec.feed(garbage + bytes([SYNC[0]]) * syncs + frame) == [Frame(1, 2, payload)]
    assert dec.skipped == len(garbage) + syncs


def test_every_single_byte_corruption_is_detected():
    frame = encode_frame(COMMANDS["WRITE_WEIGHTS"], 77, bytes(range(40)))
    cases = 0
    for pos in range(len(frame)):
        for mask in range(1, 256):
            bad = bytearray(frame)
            bad[pos] ^= mask
            dec = FrameDecoder()
            items = dec.feed(bytes(bad)) + [dec.gap()]
            # a corrupted frame never decodes as a frame (except that garbage before a
            # SYNC can only delay it: corrupting SYNC0 into another SYNC0 is impossible)
            assert all(not isinstance(i, Frame) for i in items), (pos, mask, items)
            assert any(isinstance(i, DecodeError) for i in items) or pos < 2, (pos, mask)
            cases += 1
    assert cases == 255 * len(frame)


@pytest.mark.parametrize("data, error, reason", [
    (bytes([0xA5, 0x5A, 251]), None, "length"),
    (encode_frame(1, 1, b"abc")[:-1] + b"\x00", None, "crc"),
    (bytes([0xA5, 0x5A, 3, 1]), "byte", "rx"),
    (bytes([0xA5, 0x5A, 3, 1, 2]), "gap", "timeout"),
])
def test_decoder_errors(data, error, reason):
    dec = FrameDecoder()
    items = dec.feed(data)
    if error == "byte":
        items.append(dec.byte(0, error=True))
    elif error == "gap":
        items.append(dec.gap())
    assert items == [DecodeError(reason)]
    assert dec.feed(encode_frame(3, 4)) == [Frame(3, 4, b"")]       # and it resynchronises


def test_decoder_quiet_on_errors_while_hunting():
    dec = FrameDecoder()
    assert dec.byte(SYNC[0], error=True) is None and dec.gap() is None
    assert dec.feed(bytes([SYNC[0]])) == [] and dec.gap() is None   # a lone SYNC0
    assert dec.feed(encode_frame(1, 0)) == [Frame(1, 0, b"")]


@pytest.mark.parametrize("args, match", [
    ((256, 0), r"Command must be an integer between 0 and 255, not 256"),
    ((0, -1), r"Sequence number must be an integer between 0 and 255, not -1"),
    ((0, 0, bytes(251)), r"Payload must be at most 250 bytes, not 251"),
])
def test_encode_frame_rejects(args, match):
    with pytest.raises(ValueError, match=match):
        encode_frame(*args)


@PROPERTY
@given(st.integers(2, 16), st.data())
def test_beat_packing_round_trip(width, data):
    values = data.draw(st.lists(st.integers(-(1 << (width - 1)), (1 << (width - 1)) - 1),
                                max_size=9))
    raw = pack_beat(values, width)
    assert raw < 1 << (width * len(values)) or not values
    assert unpack_beat(raw, len(values), width) == values


# -- descriptor -----------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_descriptor_round_trip(shape):
    d = descriptor(**shape)
    assert Descriptor.from_bytes(d.to_bytes()) == d
    assert len(d.to_bytes()) == 21 + d.layers
    # chunk sizes fill frames
    assert 2 + d.input_chunk * d.input_bytes <= PAYLOAD_MAX
    assert d.weight_chunk * d.weight_beat_bytes <= PAYLOAD_MAX
    assert d.output_chunk * d.input_bytes <= PAYLOAD_MAX - 2
    assert 2 + (d.input_chunk + 1) * d.input_bytes > PAYLOAD_MAX


@pytest.mark.parametrize("change, error, match", [
    (dict(name_hash=-1), TypeError, r"Network hash must be a non-negative integer, not -1"),
    (dict(name_hash=1 << 32), ValueError, r"Network hash must be between 0 and 4294967295"),
    (dict(rows=0), TypeError, r"Array rows must be a positive integer, not 0"),
    (dict(rows=256), ValueError, r"Array rows must be between 1 and 255, not 256"),
    (dict(cols=2.0), TypeError, r"Array columns must be a positive integer, not 2.0"),
    (dict(act_width=17), ValueError, r"Activation width must be between 2 and 16, not 17"),
    (dict(input_words=0), TypeError, r"Input words must be a positive integer, not 0"),
    (dict(output_words=65536), ValueError, r"Output words must be between 1 and 65535"),
    (dict(weight_addr_width=33), ValueError, r"Weight address width must be between 1 and 32"),
    (dict(weight_data_width=True), TypeError, r"Weight data width must be a positive integer"),
    (dict(seed=-5), TypeError, r"Seed must be a non-negative integer, not -5"),
    (dict(version=0), TypeError, r"Protocol version must be a positive integer, not 0"),
    (dict(rounding="floor"), TypeError, r"Rounding must be a sequence of mode codes"),
    (dict(rounding=()), TypeError, r"Layer count must be a positive integer, not 0"),
    (dict(rounding=(0,) * 127), ValueError, r"Layer count must be between 1 and 126, not 127"),
    (dict(rounding=(0, 3)), ValueError, r"Rounding mode of layer 1 must be between 0 and 2"),
    (dict(cols=125, act_width=16), ConstraintError,
     r"An input beat of 125 x 16 bits does not fit a LOAD_INPUT frame"),
    (dict(weight_data_width=2000), ConstraintError,
     r"A weight beat of 2004 bits does not fit a WRITE_WEIGHTS frame"),
])
def test_descriptor_rejects(change, error, match):
    fields = dict(name_hash=1, rows=2, cols=3, act_width=8, input_words=4, output_words=4,
                  weight_addr_width=3, weight_data_width=10, rounding=(0, 1))
    fields.update(change)
    with pytest.raises(error, match=match):
        Descriptor(**fields)


@pytest.mark.parametrize("data, match", [
    (b"", r"Device speaks link protocol version none, this host version 1"),
    (bytes([2]) + bytes(22), r"Device speaks link protocol version 2"),
    (descriptor().to_bytes()[:-1], r"Device descriptor of 23 bytes is malformed"),
    (descriptor().to_bytes()[:16] + b"\x10" + descriptor().to_bytes()[17:],
     r"Device payload limit 16 differs from this host's 250"),
    (descriptor().to_bytes()[:7] + b"\x00" + descriptor().to_bytes()[8:],
     r"Device descriptor is invalid: Activation width must be a positive integer, not 0"),
])
def test_descriptor_from_bytes_rejects(data, match):
    with pytest.raises(LinkError, match=match):
        Descriptor.from_bytes(data)


def test_errors_are_systolic_errors():
    for cls in (LinkError, LinkTimeoutError, DeviceError, DeviceResetError):
        assert issubclass(cls, SystolicError)


# -- the host -------------------------------------------------------------------------------

class NoPort:
    pass


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(port=NoPort()), TypeError, r"Port must be a pyserial-like object with read\(\)"),
    (dict(timeout=0), TypeError, r"Timeout must be a positive number of seconds, not 0"),
    (dict(timeout="1"), TypeError, r"Timeout must be a positive number of seconds, not '1'"),
    (dict(retries=-1), TypeError, r"Retries must be a non-negative integer, not -1"),
    (dict(retries=1001), ValueError, r"Retries must be between 0 and 1000, not 1001"),
    (dict(seq=256), ValueError, r"Sequence number must be between 0 and 255, not 256"),
])
def test_link_rejects(kwargs, error, match):
    args = dict(port=serial.serial_for_url("loop://"))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        Link(args.pop("port"), **args)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("seed", range(3), ids=lambda s: f"seed={s}")
def test_host_against_model(shape, seed):
    d = descriptor(**shape)
    rng = np.random.default_rng(seed)
    link, model, port = virtual(d)
    assert link.identify() == d
    sent = []
    for run in range(2):            # weights persist across runs; registers are per session
        batch, weights, rounding, sr_seed = random_job(rng, d)
        out, counters = link.infer(batch, weights=weights, rounding=rounding, seed=sr_seed)
        sent += weights
        exp_out, exp_counters = StandIn.expected(d, batch, weights=sent, rounding=rounding,
                                                 seed=sr_seed)
        # what arrived is what was sent
        padded = batch + [[0] * d.input_words] * (d.cols - len(batch))
        assert model.device.inputs[-1] == [list(col) for col in zip(*padded)]
        assert out == exp_out
        assert [counters.cycles, counters.beats, *counters.layer_cycles,
                *counters.saturations] == exp_counters
    assert link.stats["retransmissions"] == 0 and link.stats["stale"] == 0
    assert model.stats["executed"] == link.stats["sent"]


def test_host_against_model_over_socket():
    d = descriptor(**SHAPES["4x4"])
    rng = np.random.default_rng(0)
    model = LinkModel(d, StandIn(d))
    with ModelServer(model) as server:
        port = serial.serial_for_url(f"socket://127.0.0.1:{server.port}", timeout=1)
        try:
            link = Link(port, timeout=2.0)
            batch, weights, rounding, sr_seed = random_job(rng, d)
            out, counters = link.infer(batch, weights=weights, rounding=rounding,
                                       seed=sr_seed)
        finally:
            port.close()
    assert (out, [counters.cycles, counters.beats, *counters.layer_cycles,
                  *counters.saturations]) == StandIn.expected(
        d, batch, weights=weights, rounding=rounding, seed=sr_seed)


def test_loopback_port_times_out_without_hanging():
    """loop:// echoes the host's own frames: they are never responses, so the host gives
    up after its retries, in bounded time."""
    port = serial.serial_for_url("loop://")
    link = Link(port, timeout=0.05, retries=3)
    start = time.monotonic()
    with pytest.raises(LinkTimeoutError, match=r"No valid response to PING \(seq 0\) after 4 "
                                               r"transmissions: 4 x timeout"):
        link.identify()
    assert time.monotonic() - start < 1.0
    assert link.stats["stale"] == 4 and link.stats["sent"] == 4


def test_model_statuses():
    """Each refusal of the command engine reaches the host as a DeviceError naming it,
    and a refused command changes nothing."""
    d = descriptor(**SHAPES["2x3"])
    link, model, _ = virtual(d)
    link.identify()
    link.reset()
    cmd = link.command
    IB = d.input_bytes
    assert cmd("PING", b"x") == ("BAD_LENGTH", b"")
    assert cmd("RESET", b"\x00") == ("BAD_ARG", b"")
    assert cmd("SET_REGISTERS", bytes(4 + d.layers)) == ("BAD_LENGTH", b"")
    assert cmd("SET_REGISTERS", bytes([3]) + bytes(4 + d.layers)) == ("BAD_ARG", b"")
    assert cmd("SET_REGISTERS", bytes(5) + bytes([0, 3])) == ("BAD_ARG", b"")
    assert model.images == d.cols
    assert cmd("WRITE_WEIGHTS", b"") == ("BAD_LENGTH", b"")
    assert cmd("WRITE_WEIGHTS", bytes(d.weight_beat_bytes + 1)) == ("BAD_LENGTH", b"")
    assert cmd("LOAD_INPUT", bytes(2 + IB - 1)) == ("BAD_LENGTH", b"")
    assert cmd("LOAD_INPUT", bytes([1, 0]) + bytes(IB)) == ("ORDER", b"")
    assert cmd("LOAD_INPUT", bytes(2 + 4 * IB)) == ("BAD_ARG", b"")     # 4 > 3 words
    assert model.loaded == 0
    assert cmd("RUN") == ("NO_INPUT", b"")
    assert cmd("READ_OUTPUT", bytes([0, 0, 1])) == ("NOT_READY", b"")
    assert cmd("READ_OUTPUT", bytes([0, 0, 0])) == ("BAD_ARG", b"")
    assert cmd("READ_OUTPUT", bytes([1, 0, 2])) == ("BAD_ARG", b"")
    assert cmd("READ_COUNTERS", bytes([0, 63])) == ("BAD_ARG", b"")
    assert cmd("READ_COUNTERS", bytes([d.counter_words - 1, 2])) == ("BAD_ARG", b"")
    assert cmd("READ_COUNTERS", bytes([d.counter_words - 1, 1]))[0] == "OK"
    with pytest.raises(DeviceError, match=r"Device refused LOAD_INPUT \(offset 0\): ORDER") as e:
        link.load_input([[0] * d.input_words])
        link.load_input([[0] * d.input_words])
    assert (e.value.command, e.value.status) == ("LOAD_INPUT", "ORDER")
    link.run()
    assert link.status().done
    with pytest.raises(DeviceError, match=r"Device refused RUN: NO_INPUT"):
        link.run()
    # an unknown command is answered, not NAKed
    link.port.write(encode_frame(0x42, 200))
    port = link.port
    port.timeout = 0.01
    assert FrameDecoder().feed(port.read(100)) == [Frame(RESPONSE | 0x42, 200, bytes([7, 1]))]


def test_busy_while_running():
    """A device whose run does not finish: commands that would disturb it are BUSY, and
    waiting for it times out in bounded (virtual) time."""
    d = descriptor(**SHAPES["2x3"])

    class Slow(StandIn):
        def put(self, values):
            super().put(values)
            return []

    model = LinkModel(d, Slow(d))
    port = VirtualSerial(model)
    link = Link(port, timeout=0.05, clock=port.clock)
    link.reset()
    link.load_input([[1] * d.input_words])
    link.run()
    st = link.status()
    assert st.running and not st.done and st.produced == 0
    for name, payload in (("SET_REGISTERS", bytes(5 + d.layers)), ("RUN", b""),
                          ("WRITE_WEIGHTS", bytes(d.weight_beat_bytes)),
                          ("LOAD_INPUT", bytes(2 + d.input_bytes))):
        assert link.command(name, payload) == ("BUSY", b"")
    with pytest.raises(LinkTimeoutError, match=r"Run did not finish within 0.5 s"):
        link.wait(timeout=0.5)
    assert port.now < 1.0
    link.reset()                                   # RESET ends a run
    assert not link.status().running


def test_lost_acknowledgement_is_not_executed_twice():
    """The device's answers to LOAD_INPUT and RUN are lost: the host retransmits with the
    same sequence number and the device answers without executing again."""
    d = descriptor(**SHAPES["2x3"])
    model = LinkModel(d, StandIn(d))
    # responses: PING, RESET, SET_REGISTERS, LOAD_INPUT (lost), LOAD_INPUT again, RUN (lost)
    sizes = [7 + 2 + len(d.to_bytes()), 9, 9]
    first_load = sum(sizes)
    to_host = Faults({first_load: [("truncate",)], first_load + 9 + 9: [("drop",)]})
    port = VirtualSerial(model, to_host=to_host)
    link = Link(port, timeout=0.05, clock=port.clock)
    batch = [[1, 2, 3], [4, 5, 6]]
    out, _ = link.infer(batch)
    assert to_host.applied == {"truncate": 1, "drop": 1}
    assert model.stats["duplicates"] == 2
    assert link.stats["retransmissions"] == 2
    assert model.device.inputs == [[[1, 4], [2, 5], [3, 6]]]          # once, not twice
    assert (out, ) == (StandIn.expected(d, batch)[0], )


def test_device_reset_is_detected_and_infer_restarts():
    d = descriptor(**SHAPES["2x3"])
    link, model, port = virtual(d)
    link.reset()
    link.load_input([[1, 2, 3]])
    model.power_reset()
    with pytest.raises(DeviceResetError, match=r"Device was reset during the transaction "
                                               r"\(session 0, expected 1\)"):
        link.run()
    # infer restarts the whole transaction after a reset in the middle of it
    batch = [[7, 8, 9]]
    calls = {"n": 0}
    real = model._execute

    def reset_once(cmd, p):
        calls["n"] += 1
        if calls["n"] == 4:                  # during the first LOAD_INPUT
            model.power_reset()
        return real(cmd, p)

    model._execute = reset_once
    out, counters = link.infer(batch)
    assert out == StandIn.expected(d, batch)[0]
    assert model.session == 3                # tokens 1 (above), 2 (interrupted), 3


@pytest.mark.parametrize("call, error, match", [
    (lambda l: l.set_registers(rounding=(0, 1, 2)), ValueError,
     r"Rounding must give 2 modes, not 3"),
    (lambda l: l.set_registers(rounding=3), ValueError,
     r"Rounding mode must be between 0 and 2, not 3"),
    (lambda l: l.set_registers(images=3), ValueError, r"Images must be between 0 and 2, not 3"),
    (lambda l: l.set_registers(seed=1 << 32), ValueError,
     r"Seed must be between 0 and 4294967295"),
    (lambda l: l.load_input([[0] * 3] * 3), ValueError,
     r"Input batch must be at most 2 rows of 3 values"),
    (lambda l: l.load_input([[0, 0]]), ValueError,
     r"Input batch must be at most 2 rows of 3 values"),
    (lambda l: l.load_input([[0, 0, 128]]), ValueError, r"Input values must fit 8 signed bits"),
    (lambda l: l.write_weights([(0, 4, 0)]), ValueError,
     r"Weight beat \(0, 4, 0\) does not fit the w stream \(addr 2 bits, data 9 bits\)"),
    (lambda l: l.write_weights([{"bias": 2, "addr": 0, "data": 0}]), ValueError,
     r"does not fit the w stream"),
    (lambda l: l.reset(token=0), TypeError, r"Session token must be a positive integer, not 0"),
    (lambda l: l.infer([[1, 2, 3]], attempts=0), TypeError,
     r"Attempts must be a positive integer, not 0"),
    (lambda l: l.wait(), LinkError, r"Device is not running and holds no output: RUN first"),
])
def test_host_rejects(call, error, match):
    link, model, _ = virtual(descriptor(**SHAPES["2x3"]))
    with pytest.raises(error, match=match):
        call(link)
    assert model.device.inputs == [] and model.loaded == 0


@pytest.mark.parametrize("command, call, match", [
    ("STATUS", lambda l: l.status(), r"STATUS answer of 6 bytes is malformed"),
    ("READ_OUTPUT", lambda l: l.read_output(), r"READ_OUTPUT answer of 5 bytes, expected 4"),
    ("READ_COUNTERS", lambda l: l.read_counters(),
     r"READ_COUNTERS answer of 25 bytes, expected 24"),
])
def test_host_rejects_malformed_answers(command, call, match):
    """A device that answers with the wrong amount of data (a bug, not a line fault, since
    the CRC was good) is reported, not trusted."""
    d = descriptor(**SHAPES["2x3"])
    link, model, _ = virtual(d)
    real = model._execute

    def padded(cmd, p):
        status, data = real(cmd, p)
        return status, data + (b"\x00" if cmd == COMMANDS[command] else b"")

    model._execute = padded
    link.reset()
    link.load_input([[1, 2, 3]])
    link.run()
    with pytest.raises(LinkError, match=match):
        call(link)


@pytest.mark.parametrize("make, error, match", [
    (lambda d: StandIn(d.to_bytes()), TypeError, r"Descriptor must be a Descriptor, not b'"),
    (lambda d: LinkModel(None, StandIn(d)), TypeError,
     r"Descriptor must be a Descriptor, not None"),
    (lambda d: Faults({0: [("melt",)]}).apply(b"x", None), ValueError,
     r"Unknown fault \('melt',\)"),
    (lambda d: VirtualSerial(LinkModel(d, StandIn(d))).read(1), ValueError,
     r"VirtualSerial needs a timeout \(reads would never end\)"),
])
def test_model_rejects(make, error, match):
    with pytest.raises(error, match=match):
        make(descriptor())
