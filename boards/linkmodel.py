"""The device end of the host link in Python: the reference model of :mod:`.linkgw`.

:class:`LinkModel` implements the protocol of :mod:`.link` (decoder, duplicate filter,
command engine, output buffer) on top of a *device*, the Python twin of the gateware's
accelerator interface (:func:`~.linkgw.accelerator_signature`).  A device is any object
with these methods:

``reset()``
    The accelerator's control state returns to power-up (the gateware's ``accel_reset``);
    stored weights are kept.
``set_registers(rounding, seed, images)``
    The run-time inputs ``rounding`` (a tuple of L mode codes), ``seed``, ``images``.
``write(bias, addr, data)``
    One ``w`` stream beat.
``put(values)``
    One ``i`` stream beat (``C`` signed integers).  Returns the output beats (lists of
    ``C`` integers) the accelerator produced because of it: all ``output_words`` of them
    after the last input beat of a run, else none.
``counters()``
    The ``2 + 2L`` counter words: ``cycles, beats, layer_cycles[L], saturations[L]``.

:class:`StandIn` is a small such device with the behaviour of the gateware stand-in
(:class:`~.standin.StandInAccelerator`), so host, model and gateware can be tested
before the real accelerator is wired in.  :class:`VirtualSerial` is a pyserial-like port
to a model over a simulated line, with a virtual clock and seeded fault injection;
:class:`ModelServer` serves a model on a TCP socket (``socket://`` URLs).
"""

import collections
import math
import select
import socket
import threading
import time

from .link import (COMMANDS, DONE, FRAME_OVERHEAD, NAK, NAK_REASONS, PAYLOAD_MAX, RESPONSE,
                   RUNNING, SIDE_EFFECTS, STATUS, BUSY, DecodeError, Descriptor,
                   FrameDecoder, encode_frame, pack_beat, unpack_beat)

__all__ = ["LinkModel", "StandIn", "fold", "Faults", "FaultyPort", "VirtualSerial",
           "ModelServer"]

_C = COMMANDS
_S = STATUS


def fold(value, width):
    """XOR of the ``width``-bit chunks of a non-negative integer (the stand-in's way to
    make every bit of a word matter)."""
    out = 0
    while value:
        out ^= value & ((1 << width) - 1)
        value >>= width
    return out


class StandIn:
    """A stand-in accelerator (Python): stores what it is sent and answers with outputs
    and counters that depend on every input bit, weight bit and register.

    Output beat ``e``, lane ``j`` (``j < images``; other lanes 0), wrapped to
    ``act_width`` bits two's complement::

        x[e % input_words][j] + fold(weight[e % D]) + fold(bias[e % D])
            + fold(seed) + rounding[e % L] + j

    with ``D = 2**weight_addr_width`` words of each memory (zero at power-up, kept by
    :meth:`reset`) and ``fold`` over ``act_width``-bit chunks.  Counters: ``cycles`` =
    runs and ``beats`` = input beats since the last reset, ``layer_cycles[l] = seed + l``
    (mod 2**32), ``saturations[l] = 256 * rounding[l] + images``.

    Members
    -------
    weights, biases : list of int
        The memories.
    inputs : list of list
        Input beats of every completed run, for checking what arrived.
    """

    def __init__(self, descriptor):
        if not isinstance(descriptor, Descriptor):
            raise TypeError(f"Descriptor must be a Descriptor, not {descriptor!r}")
        self.d = descriptor
        depth = 1 << descriptor.weight_addr_width
        self.weights = [0] * depth
        self.biases = [0] * depth
        self.inputs = []
        self.reset()

    def reset(self):
        d = self.d
        self._x = []
        self.runs = self.beats = 0
        self.rounding, self.seed, self.images = d.rounding, d.seed, d.cols

    def set_registers(self, rounding, seed, images):
        self.rounding, self.seed, self.images = tuple(rounding), seed, images

    def write(self, bias, addr, data):
        (self.biases if bias else self.weights)[addr] = data

    def put(self, values):
        d = self.d
        self._x.append(list(values))
        self.beats += 1
        if len(self._x) < d.input_words:
            return []
        x, self._x = self._x, []
        self.inputs.append(x)
        self.runs += 1
        return [self.output_beat(x, e) for e in range(d.output_words)]

    def output_beat(self, x, e):
        d = self.d
        aw, D = d.act_width, len(self.weights)
        base = (fold(self.weights[e % D], aw) + fold(self.biases[e % D], aw)
                + fold(self.seed, aw) + self.rounding[e % d.layers])
        raw = [(x[e % d.input_words][j] + base + j) if j < self.images else 0
               for j in range(d.cols)]
        return unpack_beat(pack_beat(raw, aw), d.cols, aw)

    @classmethod
    def expected(cls, descriptor, batch, *, weights=(), rounding=None, seed=None, images=None):
        """What a fresh stand-in answers to one run: ``(outputs, counters)`` as
        :meth:`~.link.Link.infer` returns them (``C`` rows of outputs; counter words)."""
        d = descriptor
        dev = cls(d)
        for beat in weights:
            dev.write(*(beat if not isinstance(beat, dict) else
                        (beat["bias"], beat["addr"], beat["data"])))
        rounding = d.rounding if rounding is None else tuple(rounding)
        dev.set_registers(rounding, d.seed if seed is None else seed,
                          len(batch) if images is None else images)
        rows = [list(r) for r in batch] + [[0] * d.input_words] * (d.cols - len(batch))
        out = []
        for e in range(d.input_words):
            out = dev.put([r[e] for r in rows])
        return [[b[j] for b in out] for j in range(d.cols)], dev.counters()

    def counters(self):
        L = self.d.layers
        return ([self.runs, self.beats]
                + [(self.seed + l) & 0xFFFFFFFF for l in range(L)]
                + [256 * self.rounding[l] + self.images for l in range(L)])


class LinkModel:
    """The device side of the protocol (module docstring of :mod:`.link`).

    Parameters
    ----------
    descriptor : Descriptor
    device
        The accelerator behind the link (see the module docstring).

    Members
    -------
    stats : collections.Counter
        ``executed`` commands, ``duplicates`` answered without executing, NAKs by reason.
    """

    def __init__(self, descriptor, device):
        if not isinstance(descriptor, Descriptor):
            raise TypeError(f"Descriptor must be a Descriptor, not {descriptor!r}")
        self.d = descriptor
        self.device = device
        self.decoder = FrameDecoder()
        self.stats = collections.Counter()
        self.power_reset()

    def power_reset(self):
        """The whole device resets (power, button): decoder, duplicate filter, session,
        and what RESET clears."""
        self.decoder.reset()
        self.session = 0
        self.last = None          # (seq, cmd, status) of the last good command frame
        self._reset()

    def _reset(self):
        d = self.d
        self.device.reset()
        self.loaded = 0
        self.held = None
        self.running = False
        self.done = False
        self.produced = 0
        self.outputs = [None] * d.output_words
        self.rounding, self.seed, self.images = d.rounding, d.seed, d.cols
        self.device.set_registers(self.rounding, self.seed, self.images)

    # -- bytes in, bytes out ------------------------------------------------------------

    def receive(self, data):
        """Good bytes in; the response bytes out."""
        return b"".join(self.byte(b) for b in data)

    def byte(self, b, error=False):
        """One byte from the UART (``error``: a framing error or lost bytes before it)."""
        return self._event(self.decoder.byte(b, error))

    def gap(self):
        """The line has been idle for the gap timeout."""
        return self._event(self.decoder.gap())

    def _event(self, item):
        if item is None:
            return b""
        if isinstance(item, DecodeError):
            self.stats[f"nak_{item.reason}"] += 1
            return encode_frame(NAK, 0, bytes((NAK_REASONS[item.reason],)))
        return self._command(item.cmd, item.seq, item.payload)

    # -- the command engine -------------------------------------------------------------

    def _command(self, cmd, seq, p):
        if (self.last is not None and self.last[:2] == (seq, cmd)
                and cmd in SIDE_EFFECTS):
            status, data = self.last[2], b""
            self.stats["duplicates"] += 1
        else:
            status, data = self._execute(cmd, p)
            self.stats["executed"] += 1
        self.last = (seq, cmd, status)
        return encode_frame(RESPONSE | cmd, seq, bytes((status, self.session)) + data)

    def _execute(self, cmd, p):
        d = self.d
        n = len(p)
        C, L, IB, WB = d.cols, d.layers, d.input_bytes, d.weight_beat_bytes
        if cmd == _C["PING"]:
            if n:
                return _S["BAD_LENGTH"], b""
            return _S["OK"], d.to_bytes()
        if cmd == _C["RESET"]:
            if n != 1:
                return _S["BAD_LENGTH"], b""
            if p[0] == 0:
                return _S["BAD_ARG"], b""
            self._reset()
            self.session = p[0]
            return _S["OK"], b""
        if cmd == _C["SET_REGISTERS"]:
            if n != 5 + L:
                return _S["BAD_LENGTH"], b""
            if self.running:
                return _S["BUSY"], b""
            images, seed, rounding = p[0], int.from_bytes(p[1:5], "little"), tuple(p[5:])
            if images > C or any(r > 2 for r in rounding):
                return _S["BAD_ARG"], b""
            self.rounding, self.seed, self.images = rounding, seed, images
            self.device.set_registers(rounding, seed, images)
            return _S["OK"], b""
        if cmd == _C["WRITE_WEIGHTS"]:
            if n == 0 or n % WB:
                return _S["BAD_LENGTH"], b""
            if self.running:
                return _S["BUSY"], b""
            aw = d.weight_addr_width
            for k in range(0, n, WB):
                raw = int.from_bytes(p[k:k + WB], "little")
                self.device.write(raw & 1, (raw >> 1) & ((1 << aw) - 1),
                                  (raw >> (1 + aw)) & ((1 << d.weight_data_width) - 1))
            return _S["OK"], b""
        if cmd == _C["LOAD_INPUT"]:
            if n < 2 + IB or (n - 2) % IB:
                return _S["BAD_LENGTH"], b""
            if self.running:
                return _S["BUSY"], b""
            offset, count = int.from_bytes(p[:2], "little"), (n - 2) // IB
            if offset != self.loaded:
                return _S["ORDER"], b""
            if offset + count > d.input_words:
                return _S["BAD_ARG"], b""
            for k in range(count):
                raw = int.from_bytes(p[2 + k * IB:2 + (k + 1) * IB], "little")
                beat = unpack_beat(raw, C, d.act_width)
                if self.loaded == d.input_words - 1:
                    self.held = beat
                else:
                    assert not self.device.put(beat)
                self.loaded += 1
            return _S["OK"], b""
        if cmd == _C["RUN"]:
            if n:
                return _S["BAD_LENGTH"], b""
            if self.running:
                return _S["BUSY"], b""
            if self.loaded != d.input_words:
                return _S["NO_INPUT"], b""
            self.loaded, self.running, self.done, self.produced = 0, True, False, 0
            for beat in self.device.put(self.held):
                self._capture(beat)
            self.held = None
            return _S["OK"], b""
        if cmd == _C["STATUS"]:
            if n:
                return _S["BAD_LENGTH"], b""
            flags = (RUNNING if self.running else 0) | (DONE if self.done else 0) | \
                (BUSY if getattr(self.device, "busy", False) else 0)
            return _S["OK"], (bytes((flags,)) + self.loaded.to_bytes(2, "little")
                              + self.produced.to_bytes(2, "little"))
        if cmd == _C["READ_OUTPUT"]:
            if n != 3:
                return _S["BAD_LENGTH"], b""
            offset, count = int.from_bytes(p[:2], "little"), p[2]
            if not 1 <= count <= d.output_chunk or offset + count > d.output_words:
                return _S["BAD_ARG"], b""
            if offset + count > self.produced:
                return _S["NOT_READY"], b""
            return _S["OK"], b"".join(
                pack_beat(self.outputs[e], d.act_width).to_bytes(IB, "little")
                for e in range(offset, offset + count))
        if cmd == _C["READ_COUNTERS"]:
            if n != 2:
                return _S["BAD_LENGTH"], b""
            offset, count = p[0], p[1]
            if not 1 <= count <= d.counter_chunk or offset + count > d.counter_words:
                return _S["BAD_ARG"], b""
            words = self.device.counters()
            return _S["OK"], b"".join(w.to_bytes(4, "little")
                                      for w in words[offset:offset + count])
        return _S["UNKNOWN_COMMAND"], b""

    def _capture(self, beat):
        """An output beat from the accelerator into the output buffer."""
        if self.produced < self.d.output_words:
            self.outputs[self.produced] = list(beat)
            self.produced += 1
        if self.produced == self.d.output_words:
            self.running, self.done = False, True


# -- a simulated line with faults -----------------------------------------------------------

class Faults:
    """Seeded faults on one direction of a line, by byte index (bytes offered so far).

    Parameters
    ----------
    actions : dict
        Byte index -> list of actions, each a tuple: ``("drop",)``, ``("flip", mask)``
        (XOR a nonzero mask), ``("dup",)`` (deliver twice), ``("garbage", data)`` (insert
        ``data`` before the byte), ``("truncate",)`` (drop the rest of the frame, from this
        byte on), ``("reset",)`` (the device resets before this byte; toward the host: it
        resets while sending this byte, and the rest of the frame is lost).

    Members
    -------
    applied : collections.Counter
        Actions that happened.
    starts : list of int
        Byte index of the start of every frame offered.
    """

    def __init__(self, actions=None):
        self.actions = {k: list(v) for k, v in (actions or {}).items()}
        self.index = 0
        self.applied = collections.Counter()
        self.starts = []

    def apply(self, frame, on_reset):
        """The bytes delivered for ``frame``'s bytes (one write, or one response)."""
        self.starts.append(self.index)
        out = bytearray()
        truncated = False
        for b in frame:
            acts = self.actions.get(self.index, ())
            self.index += 1
            if truncated:
                continue
            deliver = [b]
            for act in acts:
                kind = act[0]
                self.applied[kind] += 1
                if kind == "drop":
                    deliver = []
                elif kind == "flip":
                    deliver = [x ^ act[1] for x in deliver]
                elif kind == "dup":
                    deliver = deliver * 2
                elif kind == "garbage":
                    out += act[1]
                elif kind == "truncate":
                    deliver, truncated = [], True
                elif kind == "reset":
                    if on_reset(out):
                        deliver, truncated = [], True
                else:
                    raise ValueError(f"Unknown fault {act!r}")
            out += bytes(deliver)
        return bytes(out)


class FaultyPort:
    """Faults on any pyserial-like port that can reset its device (``reset_device()``,
    as :class:`~.linksim.SimPort` can): ``to_device`` acts on each ``write`` (a frame),
    ``to_host`` on each chunk that ``read`` returns (so *truncate* drops the rest of a
    chunk, and *reset* resets the device and drops the rest of the chunk).  Other
    attributes are the wrapped port's."""

    def __init__(self, port, *, to_device=None, to_host=None):
        self.port = port
        self.to_device = to_device or Faults()
        self.to_host = to_host or Faults()
        self.resets = 0

    def __getattr__(self, name):
        return getattr(self.port, name)

    @property
    def timeout(self):
        return self.port.timeout

    @timeout.setter
    def timeout(self, value):
        self.port.timeout = value

    def _reset(self, sent, truncate):
        self.resets += 1
        if not truncate:
            self.port.write(bytes(sent))      # what went before the reset, then the reset
            sent.clear()
        self.port.reset_device()
        return truncate

    def write(self, data):
        data = self.to_device.apply(bytes(data), lambda out: self._reset(out, False))
        return self.port.write(data)

    def read(self, n=1):
        return self.to_host.apply(self.port.read(n), lambda out: self._reset(out, True))


class VirtualSerial:
    """A pyserial-like port to a :class:`LinkModel` over a simulated UART line.

    Deterministic: time is virtual (:meth:`clock`; give it to :class:`~.link.Link` as
    ``clock``), bytes take ``10 / baud`` seconds on each direction of the line, the device
    answers at once, and its decoder sees an idle gap after ``gap`` seconds without a byte.
    ``to_device``/``to_host`` inject faults.

    Parameters
    ----------
    model : LinkModel
    baud : int
    gap : float
        The device's gap timeout (seconds).
    to_device, to_host : Faults or None
    """

    def __init__(self, model, *, baud=115200, gap=0.005, to_device=None, to_host=None):
        self.model = model
        self.byte_time = 10 / baud
        self.gap_timeout = gap
        self.to_device = to_device or Faults()
        self.to_host = to_host or Faults()
        self.timeout = None
        self.now = 0.0
        self._tx_free = 0.0            # host -> device line busy until
        self._rx_free = 0.0            # device -> host line busy until
        self._rx = collections.deque()  # (arrival time, byte) toward the host
        self._dev_last = None          # arrival of the device's last byte
        self._dev_armed = False        # a byte since the last gap event
        self.resets = 0

    def clock(self):
        return self.now

    # -- device side --------------------------------------------------------------------

    def _emit(self, t, data):
        if not data:
            return
        data = self.to_host.apply(data, self._reset_sending)
        start = max(t, self._rx_free)
        for i, b in enumerate(data):
            self._rx.append((start + (i + 1) * self.byte_time, b))
        if data:
            self._rx_free = start + len(data) * self.byte_time

    def _reset_sending(self, sent):
        self.resets += 1
        self.model.power_reset()
        return True

    def _reset_receiving(self, _):
        self.resets += 1
        self.model.power_reset()
        return False

    def _gap_due(self):
        return self._dev_last + self.gap_timeout if self._dev_armed else math.inf

    def _device_gap(self):
        t = self._gap_due()
        self._dev_armed = False
        self._emit(t, self.model.gap())

    # -- pyserial interface -------------------------------------------------------------

    def write(self, data):
        data = self.to_device.apply(bytes(data), self._reset_receiving)
        start = max(self.now, self._tx_free)
        for i, b in enumerate(data):
            t = start + (i + 1) * self.byte_time
            if self._gap_due() <= t:
                self._device_gap()
            self._dev_last, self._dev_armed = t, True
            self._emit(t, self.model.byte(b))
        if data:
            self._tx_free = start + len(data) * self.byte_time
        return len(data)

    def _advance(self, until):
        """Process device gap events due by ``until``."""
        while self._gap_due() <= until:
            self._device_gap()

    @property
    def in_waiting(self):
        self._advance(self.now)
        return sum(1 for t, _ in self._rx if t <= self.now)

    def read(self, n=1):
        if self.timeout is None:
            raise ValueError("VirtualSerial needs a timeout (reads would never end)")
        deadline = self.now + self.timeout
        out = bytearray()
        while len(out) < n:
            t_gap = self._gap_due()
            t_byte = self._rx[0][0] if self._rx else math.inf
            t = min(t_gap, t_byte)
            if t > deadline:
                self.now = max(self.now, deadline)
                break
            self.now = max(self.now, t)
            if t_gap <= t_byte:
                self._device_gap()
            else:
                out.append(self._rx.popleft()[1])
        return bytes(out)

    def reset_input_buffer(self):
        self._rx = collections.deque((t, b) for t, b in self._rx if t > self.now)

    def close(self):
        pass


class ModelServer:
    """Serve a :class:`LinkModel` on a TCP socket, one client at a time, in a thread:
    ``serial.serial_for_url(f"socket://127.0.0.1:{server.port}")`` reaches it.

    Parameters
    ----------
    model : LinkModel
    host : str
    port : int
        0: any free port (see ``.port``).
    gap : float
        The decoder's gap timeout (seconds of wall-clock idle line).

    Use as a context manager; leaving it stops the thread.
    """

    def __init__(self, model, *, host="127.0.0.1", port=0, gap=0.05):
        self.model = model
        self.gap_timeout = gap
        self._sock = socket.create_server((host, port))
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()

    def _serve(self):
        self._sock.settimeout(0.05)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, socket.timeout):
                continue
            with conn:
                self._session(conn)

    def _session(self, conn):
        last, armed = time.monotonic(), False
        while not self._stop.is_set():
            ready, _, _ = select.select([conn], [], [], 0.01)
            now = time.monotonic()
            out = b""
            if armed and now - last >= self.gap_timeout:
                armed = False
                out += self.model.gap()
            if ready:
                try:
                    data = conn.recv(4096)
                except OSError:
                    return
                if not data:
                    return
                last, armed = now, True
                out += self.model.receive(data)
            if out:
                conn.sendall(out)


#: Bytes on the wire of the longest frame (for timeouts).
MAX_FRAME = PAYLOAD_MAX + FRAME_OVERHEAD
