"""The UART host link (DESIGN.md section 7): byte-level protocol and the host side.

One host talks to one device over a byte pipe (a UART at 8N1, or anything pyserial opens:
``/dev/ttyUSB1``, ``socket://127.0.0.1:7000``, ``loop://``).  The host sends a command
frame and waits for the device's answer (stop and wait); lost, corrupted or duplicated
bytes are detected by the CRC and recovered by retransmission with the same sequence
number, which the device recognises, so no command runs twice.  This docstring is the
byte-level specification; :mod:`.linkmodel` is its executable reference on the device
side and :mod:`.linkgw` the gateware, which the tests compare byte for byte.

Frames
------
Both directions use the same frame (all multi-byte fields little-endian, except the CRC)::

    offset  size  field
    0       1     SYNC0   0xA5
    1       1     SYNC1   0x5A
    2       1     LEN     payload length, 0..PAYLOAD_MAX (250)
    3       1     CMD     command (host -> device) or response code (device -> host)
    4       1     SEQ     sequence number, 0..255
    5       LEN   PAYLOAD
    5+LEN   2     CRC     CRC-16/CCITT-FALSE of LEN, CMD, SEQ, PAYLOAD; high byte first

CRC-16/CCITT-FALSE (also named CRC-16/IBM-3740 and CRC-16/AUTOSAR): polynomial 0x1021,
initial value 0xFFFF, no reflection, no final XOR; check value ``crc16(b"123456789") ==
0x29B1``.  Sent high byte first, so the CRC of a whole received frame from LEN through
the CRC bytes is 0 (the residue).  A frame is 7 bytes plus its payload, at most 257.
The CRC detects every error of up to 3 bits and every burst of up to 16 bits in a frame;
other corruptions pass with probability 2**-16.

Decoding (device and host alike; the decoder is :class:`FrameDecoder`):

* Hunting, bytes other than SYNC0 are skipped.  After SYNC0, SYNC1 starts a frame,
  SYNC0 is another candidate SYNC0, anything else returns to hunting.
* ``LEN > PAYLOAD_MAX`` is a *length* error.  A CRC mismatch after the last byte is a
  *CRC* error.  A byte received with a UART framing error (or after bytes lost to a
  receive overflow) inside a frame is an *rx* error.  An idle line for the gap timeout
  inside a frame (after SYNC1) is a *timeout* error.  Every error returns the decoder to
  hunting at the next byte; a byte with a UART error while hunting is skipped.
* The device answers each error with a NAK (below).  The host retransmits its command
  after a NAK, a corrupted response or its response timeout (its decoder has no gap
  timer: the timeout abandons a partial frame).

Responses
---------
The device answers every good command frame with exactly one response frame, and every
decoder error with one NAK frame, in the order they occurred:

* **response**: ``CMD = 0x80 | command``, ``SEQ`` = the command's, payload
  ``STATUS, SESSION, DATA...`` (``len(DATA) <= DATA_MAX = 248``).  ``STATUS`` is
  :data:`STATUS` (0 = OK; data follows only with OK); ``SESSION`` is the token of the
  last RESET command (0 after power-up), so that the host notices a device that was
  reset under it.
* **NAK**: ``CMD = 0x00, SEQ = 0``, payload ``REASON`` (:data:`NAK_REASONS`: 1 crc,
  2 length, 3 timeout, 4 rx).

Commands
--------
==  ==============  ========================================  ==================================
id  command         request payload                           response data (status OK)
==  ==============  ========================================  ==================================
01  PING            --                                        the device descriptor (below)
02  RESET           token u8 (1..255)                         --
03  SET_REGISTERS   images u8, seed u32, rounding u8 x L      --
04  WRITE_WEIGHTS   n >= 1 weight beats, ``WB`` bytes each    --
05  LOAD_INPUT      offset u16, n >= 1 input beats (IB each)  --
06  RUN             --                                        --
07  STATUS          --                                        flags u8, loaded u16, produced u16
08  READ_OUTPUT     offset u16, count u8                      count output beats, IB bytes each
09  READ_COUNTERS   offset u8, count u8                       count counter words, u32 each
==  ==============  ========================================  ==================================

Beats are packed as their Amaranth payloads' raw bits, little-endian, padded with zeros
to whole bytes: an input or output beat is ``C`` two's-complement values of ``act_width``
bits, value ``j`` (image ``j``) in bits ``j*act_width..``, ``IB = ceil(C*act_width/8)``
bytes (an output beat drops the stream's ``last`` bit); a weight beat is the
accelerator's ``w`` payload ``bias`` (bit 0), ``addr`` (next ``weight_addr_width`` bits),
``data`` (the remaining ``weight_data_width`` bits), ``WB = ceil((1 + addr + data)/8)``
bytes.  Chunk sizes follow from the payload cap and are :class:`Descriptor` properties:
``input_chunk = (250 - 2) // IB``, ``weight_chunk = 250 // WB``,
``output_chunk = min(255, 248 // IB)``, ``counter_chunk = 62``.

* **RESET** returns the link to its power-up state: the accelerator's control state is
  reset (its weights are kept), no input is loaded, no output is held, the registers
  take the descriptor's defaults, and ``SESSION`` becomes the token.
* **SET_REGISTERS** sets the accelerator's ``images`` (0..C), ``seed`` and each layer's
  rounding mode (0 floor, 1 nearest_even, 2 stochastic).  All or nothing.
* **WRITE_WEIGHTS** sends the beats to the accelerator's ``w`` stream in order.
* **LOAD_INPUT** sends input beats ``offset..offset+n-1`` (flat (C, H, W) element order);
  ``offset`` must equal the number of beats loaded so far (``loaded``).  The final beat
  of the tensor is held back until RUN, so the run starts on the host's command.
* **RUN** releases the held beat: the accelerator runs, and its output beats are
  captured in the device's output buffer (``produced`` counts them).  ``loaded``
  returns to 0.
* **STATUS** flags: bit 0 *running* (RUN done, output not complete), bit 1 *done* (the
  output buffer holds a complete output tensor), bit 2 the accelerator's ``busy``.
* **READ_OUTPUT** returns output beats ``offset..offset+count-1`` of the last run.
* **READ_COUNTERS** returns counter words ``offset..offset+count-1`` of the list
  ``cycles, beats, layer_cycles[0..L-1], saturations[0..L-1]`` (``2 + 2L`` words).

Statuses are checked in this order, the first failing check answers: BAD_LENGTH (the
payload length does not fit the command), BUSY (SET_REGISTERS, WRITE_WEIGHTS,
LOAD_INPUT and RUN while *running*), then BAD_ARG/ORDER/NO_INPUT/NOT_READY:
RESET BAD_ARG for token 0; SET_REGISTERS BAD_ARG for ``images > C`` or a mode above 2;
LOAD_INPUT ORDER for ``offset != loaded``, then BAD_ARG for ``offset + n > input_words``;
RUN NO_INPUT unless ``loaded == input_words``; READ_OUTPUT BAD_ARG for ``count`` 0 or
above ``output_chunk`` or ``offset + count > output_words``, then NOT_READY for
``offset + count > produced``; READ_COUNTERS BAD_ARG for ``count`` 0 or above 62 or
beyond the list.  A command whose status is not OK has no effect.

Duplicates.  The device remembers the (SEQ, CMD) of the last good command frame and the
status it answered.  A frame with the same pair is a retransmission: RESET,
SET_REGISTERS, WRITE_WEIGHTS, LOAD_INPUT and RUN are not executed again, the device
answers the remembered status (no data); PING, STATUS and the reads have no side effect
and are answered afresh.  The host increments SEQ for every new command and opens every
session with PING, so a new command never repeats the previous (SEQ, CMD).

The device descriptor (PING's data)::

    0   u8   protocol version (PROTOCOL_VERSION)
    1   u32  network hash: CRC-32 (zlib) of the network's name, UTF-8
    5   u8   R (array rows)        6  u8  C (array columns: images per run)
    7   u8   act_width             8  u8  L (layers)
    9   u16  input_words          11  u16 output_words
    13  u8   weight_addr_width    14  u16 weight_data_width
    16  u8   PAYLOAD_MAX
    17  u32  default seed
    21  u8 x L  default rounding mode of each layer

Timing.  A frame of ``n`` payload bytes takes ``10 * (n + 7)`` bit times on the wire
(87 us per byte at 115200 baud: 22 ms for the largest).  The device starts its answer
within ``O(n)`` clock cycles of the last CRC byte (:class:`~.linkgw.LinkDevice`); the
host waits ``timeout`` seconds for it, then retransmits, at most ``retries`` times.
"""

import time
import zlib
from dataclasses import dataclass

from systolic.golden.errors import ConstraintError, SystolicError

__all__ = [
    "SYNC", "PAYLOAD_MAX", "DATA_MAX", "FRAME_OVERHEAD", "PROTOCOL_VERSION", "NAK",
    "RESPONSE", "COMMANDS", "STATUS", "NAK_REASONS", "SIDE_EFFECTS", "crc16", "encode_frame",
    "Frame", "DecodeError", "FrameDecoder", "Descriptor", "network_hash", "pack_beat",
    "unpack_beat", "LinkError", "LinkTimeoutError", "DeviceError", "DeviceResetError",
    "Status", "Counters", "Link",
]

#: The two bytes that start every frame.
SYNC = (0xA5, 0x5A)
#: Largest payload (the LEN byte); LEN values above it are length errors.
PAYLOAD_MAX = 250
#: Largest data field of a response (payload minus STATUS and SESSION).
DATA_MAX = PAYLOAD_MAX - 2
#: Bytes of a frame besides its payload: SYNC0, SYNC1, LEN, CMD, SEQ, CRC x 2.
FRAME_OVERHEAD = 7
PROTOCOL_VERSION = 1
#: CMD of a NAK frame.
NAK = 0x00
#: Flag set in the CMD of a response.
RESPONSE = 0x80

COMMANDS = {
    "PING": 0x01, "RESET": 0x02, "SET_REGISTERS": 0x03, "WRITE_WEIGHTS": 0x04,
    "LOAD_INPUT": 0x05, "RUN": 0x06, "STATUS": 0x07, "READ_OUTPUT": 0x08,
    "READ_COUNTERS": 0x09,
}
_COMMAND_NAMES = {v: k for k, v in COMMANDS.items()}
#: Commands with side effects: a retransmission is answered, not executed.
SIDE_EFFECTS = frozenset(COMMANDS[c] for c in ("RESET", "SET_REGISTERS", "WRITE_WEIGHTS",
                                                "LOAD_INPUT", "RUN"))
STATUS = {
    "OK": 0, "BAD_LENGTH": 1, "BAD_ARG": 2, "BUSY": 3, "ORDER": 4, "NOT_READY": 5,
    "NO_INPUT": 6, "UNKNOWN_COMMAND": 7,
}
_STATUS_NAMES = {v: k for k, v in STATUS.items()}
NAK_REASONS = {"crc": 1, "length": 2, "timeout": 3, "rx": 4}
_NAK_NAMES = {v: k for k, v in NAK_REASONS.items()}
#: STATUS flags.
RUNNING, DONE, BUSY = 1, 2, 4
#: Counter words of READ_COUNTERS per response.
COUNTER_CHUNK = DATA_MAX // 4


# -- CRC ------------------------------------------------------------------------------------

def _crc_table():
    table = []
    for b in range(256):
        c = b << 8
        for _ in range(8):
            c = ((c << 1) ^ 0x1021) if c & 0x8000 else c << 1
        table.append(c & 0xFFFF)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16(data, crc=0xFFFF):
    """CRC-16/CCITT-FALSE of ``data`` (bytes), continuing from ``crc``."""
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC_TABLE[(crc >> 8) ^ b]
    return crc


# -- frames ---------------------------------------------------------------------------------

def encode_frame(cmd, seq, payload=b""):
    """The bytes of one frame.

    Raises
    ------
    ValueError
        ``cmd`` or ``seq`` outside 0..255, or a payload longer than :data:`PAYLOAD_MAX`.
    """
    payload = bytes(payload)
    for name, v in (("Command", cmd), ("Sequence number", seq)):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 255:
            raise ValueError(f"{name} must be an integer between 0 and 255, not {v!r}")
    if len(payload) > PAYLOAD_MAX:
        raise ValueError(f"Payload must be at most {PAYLOAD_MAX} bytes, not {len(payload)}")
    body = bytes((len(payload), cmd, seq)) + payload
    c = crc16(body)
    return bytes(SYNC) + body + bytes((c >> 8, c & 0xFF))


@dataclass(frozen=True)
class Frame:
    """A decoded frame."""
    cmd: int
    seq: int
    payload: bytes


@dataclass(frozen=True)
class DecodeError:
    """A decoding error; ``reason`` is a key of :data:`NAK_REASONS`."""
    reason: str


_HUNT, _SYNC1, _LEN, _CMD, _SEQ, _PAYLOAD, _CRC0, _CRC1 = range(8)


class FrameDecoder:
    """Byte-at-a-time frame decoder with resynchronisation (the rules of the module
    docstring).  Feed it bytes, UART errors and idle gaps; it returns :class:`Frame` and
    :class:`DecodeError` items in order.

    Members
    -------
    skipped : int
        Bytes skipped while hunting for SYNC (garbage).
    """

    def __init__(self):
        self.skipped = 0
        self.reset()

    def reset(self):
        """Abandon a partial frame and hunt (silently)."""
        self._state = _HUNT
        self._body = bytearray()
        self._len = 0

    @property
    def in_frame(self):
        """A frame has started (SYNC0 SYNC1 seen) and is not complete."""
        return self._state >= _LEN

    def feed(self, data):
        """Feed good bytes; returns the list of frames and errors they complete."""
        out = []
        for b in data:
            item = self.byte(b)
            if item is not None:
                out.append(item)
        return out

    def byte(self, b, error=False):
        """One received byte; ``error``: the UART flagged it (framing error or lost bytes
        before it).  Returns a :class:`Frame`, a :class:`DecodeError` or ``None``."""
        s = self._state
        if error:
            self._state = _HUNT
            if s >= _LEN:
                return DecodeError("rx")
            self.skipped += 1
            return None
        if s == _HUNT:
            if b == SYNC[0]:
                self._state = _SYNC1
            else:
                self.skipped += 1
            return None
        if s == _SYNC1:
            if b == SYNC[1]:
                self._state = _LEN
                self._body = bytearray()
            elif b != SYNC[0]:
                self._state = _HUNT
                self.skipped += 2
            else:
                self.skipped += 1
            return None
        self._body.append(b)
        if s == _LEN:
            if b > PAYLOAD_MAX:
                self._state = _HUNT
                return DecodeError("length")
            self._len = b
            self._state = _CMD
        elif s == _CMD:
            self._state = _SEQ
        elif s == _SEQ:
            self._state = _PAYLOAD if self._len else _CRC0
        elif s == _PAYLOAD:
            if len(self._body) == 3 + self._len:
                self._state = _CRC0
        elif s == _CRC0:
            self._state = _CRC1
        else:
            self._state = _HUNT
            body = bytes(self._body)
            if crc16(body) != 0:
                return DecodeError("crc")
            return Frame(body[1], body[2], body[3:-2])
        return None

    def gap(self):
        """The line was idle for the gap timeout.  Returns a timeout error inside a frame."""
        s = self._state
        self._state = _HUNT
        if s >= _LEN:
            return DecodeError("timeout")
        return None


# -- descriptor and beats -------------------------------------------------------------------

def network_hash(name):
    """The descriptor's network hash: CRC-32 (zlib) of the name's UTF-8 bytes."""
    return zlib.crc32(name.encode())


def _check(name, value, lo, hi):
    if isinstance(value, bool) or not isinstance(value, int) or value < min(lo, 1):
        kind = "a non-negative integer" if lo == 0 else "a positive integer"
        raise TypeError(f"{name} must be {kind}, not {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}, not {value}")
    return value


def _nbytes(bits):
    return (bits + 7) // 8


@dataclass(frozen=True)
class Descriptor:
    """What a device says about itself (PING), and what both ends need to pack beats.

    Parameters
    ----------
    name_hash : int
        :func:`network_hash` of the network's name, 0..2**32-1.
    rows, cols : int
        The array's R and C (1..255); ``cols`` images per run.
    act_width : int
        Bits of an activation, 2..16.
    input_words, output_words : int
        Beats of the input and output tensors, 1..65535.
    weight_addr_width, weight_data_width : int
        Widths of the ``w`` stream's ``addr`` (1..32) and ``data`` (1..65535) fields.
    rounding : tuple of int
        Default rounding mode (0..2) of each layer (1..126 layers, so that the
        ``2 + 2L`` counter words have u8 addresses).
    seed : int
        Default stochastic-rounding seed, 0..2**32-1.
    version : int
        Protocol version.

    Raises
    ------
    TypeError, ValueError
        A field of the wrong type or out of range.
    ConstraintError
        A beat that does not fit one frame.
    """
    name_hash: int
    rows: int
    cols: int
    act_width: int
    input_words: int
    output_words: int
    weight_addr_width: int
    weight_data_width: int
    rounding: tuple
    seed: int = 0
    version: int = PROTOCOL_VERSION

    def __post_init__(self):
        _check("Network hash", self.name_hash, 0, (1 << 32) - 1)
        _check("Array rows", self.rows, 1, 255)
        _check("Array columns", self.cols, 1, 255)
        _check("Activation width", self.act_width, 2, 16)
        _check("Input words", self.input_words, 1, 0xFFFF)
        _check("Output words", self.output_words, 1, 0xFFFF)
        _check("Weight address width", self.weight_addr_width, 1, 32)
        _check("Weight data width", self.weight_data_width, 1, 0xFFFF)
        _check("Seed", self.seed, 0, (1 << 32) - 1)
        _check("Protocol version", self.version, 1, 255)
        if isinstance(self.rounding, (str, bytes)) or not hasattr(self.rounding, "__len__"):
            raise TypeError(f"Rounding must be a sequence of mode codes, not "
                            f"{self.rounding!r}")
        object.__setattr__(self, "rounding", tuple(self.rounding))
        # READ_COUNTERS addresses 2 + 2L words with a u8 offset
        _check("Layer count", len(self.rounding), 1, 126)
        for j, r in enumerate(self.rounding):
            _check(f"Rounding mode of layer {j}", r, 0, 2)
        if self.input_bytes > DATA_MAX - 2:
            raise ConstraintError(
                f"An input beat of {self.cols} x {self.act_width} bits does not fit a "
                f"LOAD_INPUT frame (at most {8 * (DATA_MAX - 2)} bits)")
        if self.weight_beat_bytes > PAYLOAD_MAX:
            raise ConstraintError(
                f"A weight beat of {self.weight_beat_bits} bits does not fit a "
                f"WRITE_WEIGHTS frame (at most {8 * PAYLOAD_MAX} bits)")

    @property
    def layers(self):
        return len(self.rounding)

    @property
    def input_bytes(self):
        """``IB``: bytes of an input or output beat."""
        return _nbytes(self.cols * self.act_width)

    @property
    def weight_beat_bits(self):
        return 1 + self.weight_addr_width + self.weight_data_width

    @property
    def weight_beat_bytes(self):
        """``WB``: bytes of a weight beat."""
        return _nbytes(self.weight_beat_bits)

    @property
    def input_chunk(self):
        """Input beats per LOAD_INPUT frame."""
        return (PAYLOAD_MAX - 2) // self.input_bytes

    @property
    def weight_chunk(self):
        """Weight beats per WRITE_WEIGHTS frame."""
        return PAYLOAD_MAX // self.weight_beat_bytes

    @property
    def output_chunk(self):
        """Output beats per READ_OUTPUT frame."""
        return min(255, DATA_MAX // self.input_bytes)

    @property
    def counter_words(self):
        """Words of the counter list: cycles, beats, layer_cycles[L], saturations[L]."""
        return 2 + 2 * self.layers

    @property
    def counter_chunk(self):
        return COUNTER_CHUNK

    def to_bytes(self):
        return (bytes((self.version,)) + self.name_hash.to_bytes(4, "little")
                + bytes((self.rows, self.cols, self.act_width, self.layers))
                + self.input_words.to_bytes(2, "little")
                + self.output_words.to_bytes(2, "little")
                + bytes((self.weight_addr_width,))
                + self.weight_data_width.to_bytes(2, "little")
                + bytes((PAYLOAD_MAX,)) + self.seed.to_bytes(4, "little")
                + bytes(self.rounding))

    @classmethod
    def from_bytes(cls, data):
        """Parse PING's data.

        Raises
        ------
        LinkError
            Not a descriptor of this protocol version.
        """
        data = bytes(data)
        if len(data) < 1 or data[0] != PROTOCOL_VERSION:
            got = data[0] if data else "none"
            raise LinkError(f"Device speaks link protocol version {got}, this host "
                            f"version {PROTOCOL_VERSION}")
        if len(data) < 21 or len(data) != 21 + data[8]:
            raise LinkError(f"Device descriptor of {len(data)} bytes is malformed")
        u = lambda a, b: int.from_bytes(data[a:b], "little")  # noqa: E731
        if data[16] != PAYLOAD_MAX:
            raise LinkError(f"Device payload limit {data[16]} differs from this host's "
                            f"{PAYLOAD_MAX}")
        try:
            return cls(name_hash=u(1, 5), rows=data[5], cols=data[6], act_width=data[7],
                       input_words=u(9, 11), output_words=u(11, 13),
                       weight_addr_width=data[13], weight_data_width=u(14, 16),
                       seed=u(17, 21), rounding=tuple(data[21:]), version=data[0])
        except (TypeError, ValueError) as e:
            raise LinkError(f"Device descriptor is invalid: {e}") from None

    @classmethod
    def from_program(cls, program):
        """The descriptor of an :class:`~systolic.rtl.accelerator.Accelerator` built for
        ``program`` (a :class:`~systolic.rtl.compiler.Program`)."""
        from amaranth.hdl import Shape

        from systolic.rtl.accelerator import weight_stream_layout
        from systolic.rtl.requant import MODE
        net = program.network
        layout = weight_stream_layout(program)
        return cls(
            name_hash=network_hash(net.name), rows=program.config.rows,
            cols=program.config.cols, act_width=program.act_width,
            input_words=program.input_words, output_words=program.output_words,
            weight_addr_width=Shape.cast(layout["addr"].shape).width,
            weight_data_width=Shape.cast(layout["data"].shape).width,
            rounding=tuple(MODE[getattr(l, "rounding", None) or "floor"] for l in net.layers),
            seed=net.seed)


def pack_beat(values, width):
    """Raw bits of an array payload: ``values[j]`` (two's complement, ``width`` bits) in
    bits ``j*width..``."""
    mask = (1 << width) - 1
    return sum((int(v) & mask) << (j * width) for j, v in enumerate(values))


def unpack_beat(raw, count, width):
    """Inverse of :func:`pack_beat`: ``count`` signed values."""
    mask, half = (1 << width) - 1, 1 << (width - 1)
    out = []
    for j in range(count):
        v = (raw >> (j * width)) & mask
        out.append(v - (1 << width) if v & half else v)
    return out


def _weight_raw(beat, desc):
    if isinstance(beat, dict):
        bias, addr, data = beat["bias"], beat["addr"], beat["data"]
    else:
        bias, addr, data = beat
    if not (0 <= addr < 1 << desc.weight_addr_width and 0 <= data < 1 << desc.weight_data_width
            and bias in (0, 1)):
        raise ValueError(f"Weight beat {beat!r} does not fit the w stream "
                         f"(addr {desc.weight_addr_width} bits, data "
                         f"{desc.weight_data_width} bits)")
    return int(bias) | int(addr) << 1 | int(data) << (1 + desc.weight_addr_width)


# -- errors ---------------------------------------------------------------------------------

class LinkError(SystolicError):
    """The host link failed: no valid answer after the retries, a device that refused a
    command, or a device that was reset during a transaction."""


class LinkTimeoutError(LinkError):
    """No valid response to a command after every retransmission."""


class DeviceError(LinkError):
    """The device answered a command with a status other than OK.

    Members
    -------
    command, status : str
    """

    def __init__(self, message, command=None, status=None):
        super().__init__(message)
        self.command, self.status = command, status


class DeviceResetError(LinkError):
    """The device's session token changed: it was reset (power, button, watchdog) during
    the transaction, and what it held (input, registers, output) is lost.  Restart the
    transaction (:meth:`Link.infer` does so)."""


# -- host -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Status:
    """STATUS: ``running``, ``done``, ``busy`` flags and the ``loaded``/``produced`` beats."""
    running: bool
    done: bool
    busy: bool
    loaded: int
    produced: int


@dataclass(frozen=True)
class Counters:
    """The accelerator's counters after a run."""
    cycles: int
    beats: int
    layer_cycles: tuple
    saturations: tuple


class Link:
    """The host end of the link, over any pyserial-like port.

    Parameters
    ----------
    port
        An open port: ``serial.serial_for_url(url)`` (``socket://host:port``, ``loop://``,
        a device path), or any object with pyserial's ``read(n)``, ``write(data)``,
        ``timeout`` attribute and ``in_waiting``.  The link sets ``port.timeout`` before
        every read, so no read blocks longer than the remaining wait.
    timeout : float
        Seconds to wait for the response to one transmission.  Choose it above the
        device's gap timeout and the longest frame's time on the wire (22 ms at 115200
        baud); simulated boards need more.
    retries : int
        Retransmissions of one command (after a timeout, a NAK or a corrupted response)
        before :class:`LinkTimeoutError`.  A command therefore takes at most
        ``(retries + 1) * timeout`` seconds.
    clock : callable
        Seconds now, monotonic (``time.monotonic``); a simulated port passes its own.
    seq : int
        The first sequence number.

    Members
    -------
    descriptor : Descriptor or None
        From :meth:`identify` (which every other command calls first if needed).
    stats : dict
        ``sent`` frames, ``retransmissions``, ``timeouts``, ``naks``, ``bad_frames``
        (corrupted responses), ``stale`` (responses to an earlier transmission),
        ``garbage`` (bytes skipped while hunting).

    Raises
    ------
    TypeError, ValueError
        A parameter of the wrong type or out of range.
    """

    def __init__(self, port, *, timeout=1.0, retries=8, clock=time.monotonic, seq=0):
        for attr in ("read", "write"):
            if not callable(getattr(port, attr, None)):
                raise TypeError(f"Port must be a pyserial-like object with read() and "
                                f"write(), not {port!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or \
                not timeout > 0:
            raise TypeError(f"Timeout must be a positive number of seconds, not {timeout!r}")
        _check("Retries", retries, 0, 1000)
        _check("Sequence number", seq, 0, 255)
        self.port = port
        self.timeout = float(timeout)
        self.retries = retries
        self.clock = clock
        self._seq = seq
        self._session = None      # the token every response must carry (after RESET)
        self._token = 0           # the last token sent
        self._decoder = FrameDecoder()
        self.descriptor = None
        self.stats = dict.fromkeys(("sent", "retransmissions", "timeouts", "naks",
                                    "bad_frames", "stale", "garbage"), 0)

    # -- transport ----------------------------------------------------------------------

    def _read_some(self, deadline):
        """Bytes received before ``deadline`` (at least one, or none at the deadline)."""
        remaining = deadline - self.clock()
        if remaining <= 0:
            return b""
        self.port.timeout = remaining
        waiting = getattr(self.port, "in_waiting", 0) or 0
        return self.port.read(max(1, waiting))

    def _await(self, cmd, seq, deadline):
        """Read until the response to (cmd, seq), a NAK, a corrupted frame or the
        deadline.  Returns ``("ok", frame)``, ``("nak", reason)``, ``("bad", reason)`` or
        ``("timeout", None)``."""
        dec = self._decoder
        while True:
            data = self._read_some(deadline)
            if not data:
                if self.clock() >= deadline:
                    dec.reset()
                    return "timeout", None
                continue
            skipped = dec.skipped
            items = dec.feed(data)
            self.stats["garbage"] += dec.skipped - skipped
            failure = None
            for item in items:
                # the response wins over a NAK or bad frame that arrived with it
                if isinstance(item, DecodeError):
                    failure = failure or ("bad", item.reason)
                elif item.cmd == NAK:
                    reason = item.payload[0] if len(item.payload) == 1 else None
                    failure = failure or ("nak", _NAK_NAMES.get(reason, reason))
                elif item.cmd == RESPONSE | cmd and item.seq == seq and len(item.payload) >= 2:
                    return "ok", item
                else:
                    self.stats["stale"] += 1
            if failure is not None:
                return failure

    def command(self, name, payload=b""):
        """Send command ``name`` (a key of :data:`COMMANDS`) with ``payload``; retransmit
        until a valid response arrives.  Returns ``(status, data)``: the status name and
        the response's data.

        Raises
        ------
        LinkTimeoutError
            No valid response after ``retries`` retransmissions.
        DeviceResetError
            The response carries another session token than the last RESET's.
        """
        cmd = COMMANDS[name]
        seq = self._seq
        self._seq = (seq + 1) & 0xFF
        frame = encode_frame(cmd, seq, payload)
        log = []
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats["retransmissions"] += 1
            self.port.write(frame)
            self.stats["sent"] += 1
            kind, item = self._await(cmd, seq, self.clock() + self.timeout)
            if kind == "ok":
                status, session = item.payload[0], item.payload[1]
                if self._session is not None and session != self._session:
                    expected, self._session = self._session, None
                    raise DeviceResetError(
                        f"Device was reset during the transaction (session {session}, "
                        f"expected {expected}); its input, registers and output are lost")
                return _STATUS_NAMES.get(status, f"status {status}"), bytes(item.payload[2:])
            self.stats[{"timeout": "timeouts", "nak": "naks", "bad": "bad_frames"}[kind]] += 1
            log.append(kind if item is None else f"{kind} ({item})")
        summary = ", ".join(f"{log.count(k)} x {k}" for k in dict.fromkeys(log))
        raise LinkTimeoutError(
            f"No valid response to {name} (seq {seq}) after {self.retries + 1} "
            f"transmissions: {summary}")

    def _ok(self, name, payload=b"", detail=""):
        status, data = self.command(name, payload)
        if status != "OK":
            raise DeviceError(f"Device refused {name}{detail}: {status}", name, status)
        return data

    # -- commands -----------------------------------------------------------------------

    def identify(self):
        """PING: the device's :class:`Descriptor` (also kept as ``self.descriptor``)."""
        self.descriptor = Descriptor.from_bytes(self._ok("PING"))
        return self.descriptor

    def _desc(self):
        return self.descriptor if self.descriptor is not None else self.identify()

    def reset(self, token=None):
        """RESET: start a session (a fresh token, 1..255, unless given)."""
        self._desc()
        if token is None:
            token = self._token % 255 + 1
        _check("Session token", token, 1, 255)
        self._session = None
        self._ok("RESET", bytes((token,)))
        self._session = self._token = token

    def set_registers(self, *, rounding=None, seed=None, images=None):
        """SET_REGISTERS: rounding mode codes (one per layer, or one for all), seed,
        images; any not given take the descriptor's defaults (``images``: C)."""
        d = self._desc()
        if rounding is None:
            rounding = d.rounding
        elif isinstance(rounding, int):
            rounding = (rounding,) * d.layers
        rounding = tuple(rounding)
        if len(rounding) != d.layers:
            raise ValueError(f"Rounding must give {d.layers} modes, not {len(rounding)}")
        seed = d.seed if seed is None else seed
        images = d.cols if images is None else images
        _check("Images", images, 0, d.cols)
        _check("Seed", seed, 0, (1 << 32) - 1)
        for r in rounding:
            _check("Rounding mode", r, 0, 2)
        self._ok("SET_REGISTERS", bytes((images,)) + seed.to_bytes(4, "little")
                 + bytes(rounding))

    def write_weights(self, beats):
        """WRITE_WEIGHTS in chunks: ``beats`` are ``{"bias", "addr", "data"}`` dicts (as
        :func:`~systolic.rtl.accelerator.weight_beats` makes) or tuples."""
        d = self._desc()
        raws = [_weight_raw(b, d) for b in beats]
        wb, n = d.weight_beat_bytes, d.weight_chunk
        for k in range(0, len(raws), n):
            payload = b"".join(r.to_bytes(wb, "little") for r in raws[k:k + n])
            self._ok("WRITE_WEIGHTS", payload, f" (beats {k}..{k + n - 1})")

    def load_input(self, batch):
        """LOAD_INPUT in chunks.  ``batch``: ``C`` rows of ``input_words`` integers (image
        ``j``'s flat (C, H, W) tensor in row ``j``); fewer rows are padded with zeros."""
        d = self._desc()
        rows = [list(map(int, r)) for r in batch]
        if len(rows) > d.cols or any(len(r) != d.input_words for r in rows):
            raise ValueError(f"Input batch must be at most {d.cols} rows of "
                             f"{d.input_words} values")
        rows += [[0] * d.input_words] * (d.cols - len(rows))
        lo, hi = -(1 << (d.act_width - 1)), (1 << (d.act_width - 1)) - 1
        if any(not lo <= v <= hi for r in rows for v in r):
            raise ValueError(f"Input values must fit {d.act_width} signed bits")
        ib, n = d.input_bytes, d.input_chunk
        for k in range(0, d.input_words, n):
            payload = k.to_bytes(2, "little") + b"".join(
                pack_beat([r[e] for r in rows], d.act_width).to_bytes(ib, "little")
                for e in range(k, min(k + n, d.input_words)))
            self._ok("LOAD_INPUT", payload, f" (offset {k})")

    def run(self):
        """RUN: start the accelerator on the loaded input."""
        self._ok("RUN")

    def status(self):
        """STATUS as a :class:`Status`."""
        data = self._ok("STATUS")
        if len(data) != 5:
            raise LinkError(f"STATUS answer of {len(data)} bytes is malformed")
        f = data[0]
        return Status(bool(f & RUNNING), bool(f & DONE), bool(f & BUSY),
                      int.from_bytes(data[1:3], "little"), int.from_bytes(data[3:5], "little"))

    def wait(self, timeout=10.0):
        """Poll STATUS until the output is complete (at most ``timeout`` seconds)."""
        deadline = self.clock() + timeout
        while True:
            st = self.status()
            if st.done:
                return st
            if not st.running:
                raise LinkError("Device is not running and holds no output: RUN first")
            if self.clock() >= deadline:
                raise LinkTimeoutError(f"Run did not finish within {timeout} s "
                                       f"({st.produced} output beats)")

    def read_output(self):
        """READ_OUTPUT in chunks: the output tensors, ``C`` rows of ``output_words``."""
        d = self._desc()
        ib, n = d.input_bytes, d.output_chunk
        beats = []
        for k in range(0, d.output_words, n):
            count = min(n, d.output_words - k)
            data = self._ok("READ_OUTPUT", k.to_bytes(2, "little") + bytes((count,)),
                            f" (offset {k})")
            if len(data) != count * ib:
                raise LinkError(f"READ_OUTPUT answer of {len(data)} bytes, expected "
                                f"{count * ib}")
            beats += [unpack_beat(int.from_bytes(data[i * ib:(i + 1) * ib], "little"),
                                  d.cols, d.act_width) for i in range(count)]
        return [[b[j] for b in beats] for j in range(d.cols)]

    def read_counters(self):
        """READ_COUNTERS in chunks, as :class:`Counters`."""
        d = self._desc()
        words = []
        for k in range(0, d.counter_words, COUNTER_CHUNK):
            count = min(COUNTER_CHUNK, d.counter_words - k)
            data = self._ok("READ_COUNTERS", bytes((k, count)))
            if len(data) != 4 * count:
                raise LinkError(f"READ_COUNTERS answer of {len(data)} bytes, expected "
                                f"{4 * count}")
            words += [int.from_bytes(data[4 * i:4 * i + 4], "little") for i in range(count)]
        L = d.layers
        return Counters(words[0], words[1], tuple(words[2:2 + L]), tuple(words[2 + L:]))

    def infer(self, batch, *, weights=None, rounding=None, seed=None, images=None,
              attempts=3, run_timeout=10.0):
        """One whole transaction: RESET, weights (if given), registers, input, RUN, wait,
        outputs and counters.  A device reset during it restarts it, at most
        ``attempts`` times in all.  Returns ``(outputs, counters)``."""
        _check("Attempts", attempts, 1, 100)
        for attempt in range(attempts):
            try:
                self.reset()
                if weights is not None:
                    self.write_weights(weights)
                self.set_registers(rounding=rounding, seed=seed,
                                   images=len(batch) if images is None else images)
                self.load_input(batch)
                self.run()
                self.wait(run_timeout)
                return self.read_output(), self.read_counters()
            except DeviceResetError:
                if attempt == attempts - 1:
                    raise
