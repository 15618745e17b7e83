"""The virtual board: the board top simulated under cocotb + Verilator, on a TCP socket.

::

    with VirtualBoard(program) as board:            # builds (cached) and starts the simulation
        port = serial.serial_for_url(board.url)     # socket://127.0.0.1:PORT
        link = Link(port, timeout=2.0)              # the same host code as for a real board

The whole board top (:func:`board_top`: :class:`~.top.BoardTop` without a platform, so
the link gateware, the accelerator in its reset domain, the status LEDs and the
UART pins, but no PLL) is converted to Verilog and wrapped in a Verilog
``harness`` (:func:`harness_verilog`) that generates the clock inside the model and plays
the host's UART: a serializer shifts bytes into the ``rx`` pin as 8N1 characters at the
top's divisor, and a deserializer samples ``tx`` in the middle of each bit and keeps the
received bytes in a ring.  Both are plain Verilog written here, independent of the
gateware's :mod:`.uart`, so a bit-order or timing bug there is not mirrored.

Speed.  In simulation the UART divisor is small (:data:`DIVISOR` = 4 clock cycles per
bit, so a character is 41 cycles), not the board's 1 Mbaud (42 cycles per bit at 42
MHz), which would make every byte cost ten times as many cycles.  Python does not touch a pin per bit: the bench
(:mod:`.tb_virtual`) hands the serializer up to :data:`TX_CHUNK` bytes at a time and wakes
every :data:`WAKE_CHARS` character times to collect what ``tx`` produced, so the design
runs free in between, the clock inside the model.  When nothing has crossed the line for
:data:`IDLE_AFTER` seconds the bench waits on the socket before it advances the
simulation again, so an idle server takes no CPU.  Measured on this project's 2-core
machine with the iCEBreaker's lenet5 top: 350,000 to 690,000 simulated cycles/s (the
design's evaluation dominates; it depends on the machine's load), 7,000 to 14,600
bytes/s through the socket while weights are written; a 1-image inference transaction
(2 KB in, 70 frames) takes 0.4 s.

Processes.  :class:`VirtualBoard` (in the caller's process) owns the TCP listener and
relays bytes between the client and the bench, which runs in the simulator's process and
connects back to a private bridge socket.  The bridge carries messages (a type byte, a
u32 little-endian length, the payload): ``D`` data (both ways), ``R`` reset the board
(after the data before it has been shifted in), ``Q`` query statistics and ``S`` the
answer (JSON), ``H`` the bench's hello (JSON), ``X`` stop.  Resets come from
:meth:`VirtualBoard.reset` (a board's reset button: the gateware restarts, its memories,
and so the weights in SPRAM, keep their contents); :class:`BoardPort` is a pyserial port
that can ask for one in order with the bytes it wrote, for fault injection.
"""

import json
import os
import re
import select
import socket
import threading
import time

from systolic.golden.errors import SystolicError

__all__ = ["DIVISOR", "TX_CHUNK", "RX_RING", "WAKE_CHARS", "IDLE_AFTER", "RESET_CYCLES",
           "PERIOD_NS", "board_top", "harness_verilog", "VirtualBoard", "BoardPort",
           "VirtualBoardError", "encode_message", "MessageReader"]

#: Clock cycles per UART bit in simulation (the smallest the gateware's UART takes).
DIVISOR = 4
#: Bytes the harness's serializer takes from Python at a time.
TX_CHUNK = 64
#: Bytes the harness's receive ring holds (more than arrive between two wake-ups).
RX_RING = 64
#: Character times between the bench's wake-ups (at most RX_RING / 2 bytes arrive).
WAKE_CHARS = 16
#: Seconds without traffic after which the bench waits for the socket.
IDLE_AFTER = 0.5
#: Cycles the reset is held.
RESET_CYCLES = 4
#: Clock period in simulation (ns); only the waves' time scale depends on it.
PERIOD_NS = 10

_TB_MODULE = "systolic.boards.tb_virtual"


class VirtualBoardError(SystolicError):
    """The virtual board could not start, or its simulation ended unexpectedly."""


# -- bridge messages ------------------------------------------------------------------------

def encode_message(kind, payload=b""):
    """One bridge message: ``kind`` (one ASCII letter), u32 length, payload."""
    payload = bytes(payload)
    return kind.encode() + len(payload).to_bytes(4, "little") + payload


class MessageReader:
    """Splits a byte stream into ``(kind, payload)`` bridge messages."""

    def __init__(self):
        self._buf = bytearray()

    def feed(self, data):
        self._buf += data
        out = []
        while len(self._buf) >= 5:
            n = int.from_bytes(self._buf[1:5], "little")
            if len(self._buf) < 5 + n:
                break
            out.append((chr(self._buf[0]), bytes(self._buf[5:5 + n])))
            del self._buf[:5 + n]
        return out


# -- the design -----------------------------------------------------------------------------

def board_top(program, *, target=None, divisor=DIVISOR):
    """The :class:`~.top.BoardTop` of ``program`` for ``target`` (a board or its name;
    default the default board) as it is simulated: no platform, so no PLL and plain
    ``rx``, ``tx`` and ``leds`` ports, with a UART of ``divisor`` cycles per bit."""
    from .top import BoardTop
    return BoardTop(program, target=target, divisor=divisor)


_PORT = re.compile(r"^\s*(input|output)\s+(?:\[(\d+):0\]\s+)?([A-Za-z_]\w*)\s*;", re.MULTILINE)


def _top_ports(verilog):
    start = verilog.find("module top(")
    if start < 0:
        raise ValueError("The Verilog has no module named 'top'")
    body = verilog[start:verilog.index("endmodule", start)]
    return {name: (d, int(msb) + 1 if msb else 1) for d, msb, name in _PORT.findall(body)}


def harness_verilog(verilog, *, divisor=DIVISOR, period_ns=PERIOD_NS, tx_chunk=TX_CHUNK,
                    rx_ring=RX_RING):
    """The board top's Verilog (module ``top`` with ``clk``, ``rst``, ``rx``, ``tx`` and
    optionally ``leds``) with a module ``harness`` added: the clock inside the model and
    the host's end of the UART line.

    Harness ports (all driven or read by the bench between clock edges):

    ``h_data[8*tx_chunk]``, ``h_len``, ``h_go``
        Bytes to send (byte ``k`` in bits ``8k..``); toggling ``h_go`` sends the first
        ``h_len`` of them, 8N1 at ``divisor`` cycles per bit, one idle cycle between
        characters.
    ``h_sent``
        Toggles when they have all been sent.
    ``h_rx_ring[8*rx_ring]``, ``h_rx_count``
        Received byte ``n`` is in ring slot ``n % rx_ring``; ``h_rx_count`` counts them.
    ``h_rx_errors``
        Characters from ``tx`` whose stop bit was 0.
    ``h_reset``
        The board's reset (the top's ``rst``) while 1.
    ``h_leds``
        The top's LEDs.
    """
    ports = _top_ports(verilog)
    for name, want in (("clk", "input"), ("rst", "input"), ("rx", "input"),
                       ("tx", "output")):
        if ports.get(name, (None,))[0] != want or ports[name][1] != 1:
            raise ValueError(f"The board top has no one-bit {want} {name!r}")
    leds = ports.get("leds", ("output", 0))[1]
    extra = sorted(n for n in ports if n not in ("clk", "rst", "rx", "tx", "leds"))
    ties = "".join(f",\n    .{n}({ports[n][1]}'d0)" for n in extra if ports[n][0] == "input")
    D = divisor
    lw = max(leds, 1)
    text = f"""
module harness(h_data, h_len, h_go, h_sent, h_rx_ring, h_rx_count, h_rx_errors, h_reset, h_leds);
  input [{8 * tx_chunk - 1}:0] h_data;
  input [15:0] h_len;
  input h_go;
  output reg h_sent = 1'b0;
  output reg [{8 * rx_ring - 1}:0] h_rx_ring = 0;
  output reg [31:0] h_rx_count = 0;
  output reg [31:0] h_rx_errors = 0;
  input h_reset;
  output [{lw - 1}:0] h_leds;

  reg clk = 1'b0;
  always #{period_ns // 2} clk = ~clk;
  reg rx = 1'b1;
  wire tx;
  top dut (
    .clk(clk),
    .rst(h_reset),
    .rx(rx),
    .tx(tx){f",{chr(10)}    .leds(h_leds)" if leds else ""}{ties}
  );
{"" if leds else "  assign h_leds = 1'b0;" + chr(10)}
  // host -> board: 8N1, {D} cycles per bit (start, 8 data bits LSB first, stop)
  reg go_seen = 1'b0;
  reg sending = 1'b0;
  reg [15:0] index = 0;
  reg [3:0] bitn = 0;
  reg [15:0] timer = 0;
  always @(posedge clk) begin
    if (!sending) begin
      if (h_go != go_seen) begin
        go_seen <= h_go;
        index <= 0;
        bitn <= 0;
        timer <= 0;
        if (h_len == 0) h_sent <= ~h_sent;
        else sending <= 1'b1;
      end
    end else if (timer != 0) begin
      timer <= timer - 1;
    end else if (bitn == 10) begin
      if (index + 1 == h_len) begin
        sending <= 1'b0;
        h_sent <= ~h_sent;
      end else begin
        index <= index + 1;
        bitn <= 0;
      end
    end else begin
      rx <= bitn == 0 ? 1'b0 : bitn == 9 ? 1'b1 : h_data[index * 8 + bitn - 1];
      bitn <= bitn + 1;
      timer <= {D - 1};
    end
  end

  // board -> host: a falling edge starts a character; every bit is sampled in its middle
  reg receiving = 1'b0;
  reg [3:0] rbit = 0;
  reg [15:0] rtimer = 0;
  reg [7:0] shift = 0;
  always @(posedge clk) begin
    if (!receiving) begin
      if (!tx) begin
        receiving <= 1'b1;
        rbit <= 0;
        rtimer <= {max(D // 2 - 1, 0)};
      end
    end else if (rtimer != 0) begin
      rtimer <= rtimer - 1;
    end else begin
      rtimer <= {D - 1};
      rbit <= rbit + 1;
      if (rbit == 0) begin
        if (tx) receiving <= 1'b0;     // a glitch, not a start bit
      end else if (rbit <= 8) begin
        shift <= {{tx, shift[7:1]}};
      end else begin
        h_rx_ring[(h_rx_count % {rx_ring}) * 8 +: 8] <= shift;
        h_rx_count <= h_rx_count + 1;
        if (!tx) h_rx_errors <= h_rx_errors + 1;
        receiving <= 1'b0;
      end
    end
  end
endmodule
"""
    return verilog + text


# -- the server -----------------------------------------------------------------------------

class VirtualBoard:
    """The board top of ``program`` simulated, served on a TCP socket (one client at a
    time; others wait in the listen queue).

    Parameters
    ----------
    program : Program
        The network and array the board is built for.
    target : BoardTarget or str, optional
        The board (default: the default board).
    host, port : str, int
        Where to listen (port 0: any free port; see :attr:`port`).
    divisor : int
        UART clock cycles per bit in simulation.
    top : callable, optional
        ``top(program, target=..., divisor=...)`` makes the board top (default
        :func:`board_top`).
    log : callable, optional
        Called with a line for every client connection and disconnection.
    cache_dir : path-like, optional
        The simulation build cache (default :func:`~systolic.sim.runner.cache_root`).
    build_args : sequence of str
        Extra Verilator arguments.

    Members
    -------
    url : str
        ``socket://host:port``.
    descriptor : Descriptor
        What the board answers to PING.
    start_seconds : float
        Wall time :meth:`start` took (generating, building or finding the cached build,
        starting the simulation).

    Use as a context manager (start on entry, stop on exit), or call :meth:`start` and
    :meth:`stop`.

    Raises
    ------
    OSError
        The address cannot be listened on (in use, not local).
    """

    def __init__(self, program, *, target=None, host="127.0.0.1", port=0, divisor=DIVISOR,
                 top=None, log=None, cache_dir=None, build_args=()):
        from .link import Descriptor
        self.program = program
        self.descriptor = Descriptor.from_program(program)
        self.target = target
        self.divisor = divisor
        self._make_top = top or board_top
        self._log = log or (lambda line: None)
        self._cache_dir = cache_dir
        self._build_args = list(build_args)
        try:
            self._listener = socket.create_server((host, port))
        except OSError as e:
            why = os.strerror(e.errno) if e.errno else str(e)
            raise OSError(f"Cannot listen on {host}:{port}: {why}") from None
        self.host, self.port = self._listener.getsockname()[:2]
        self.url = f"socket://{self.host}:{self.port}"
        self._bridge_listener = socket.create_server(("127.0.0.1", 0))
        self._bridge = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._lock = threading.Lock()
        self._resets = []               # byte counts of the client after which to reset
        self._queries = {}
        self._query_id = 0
        self._stop = threading.Event()
        self._sim_thread = self._relay_thread = None
        self._outcome = {}
        self.start_seconds = 0.0
        self.hello = None
        self.run_dir = None
        self._client_info = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- start and stop -----------------------------------------------------------------

    def start(self, timeout=900.0):
        """Build the simulation (or reuse the cached build), start it and wait until it
        is ready to serve.

        Raises
        ------
        VirtualBoardError, SimulatorError
            The build failed or the simulation did not come up within ``timeout`` s
            (everything started is stopped again).
        """
        try:
            return self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout):
        from systolic.sim.accel import _new_run_dir, verilator_args
        from systolic.sim.runner import run_cocotb
        from systolic.sim.verilog import emit_verilog
        started = time.monotonic()
        top = self._make_top(self.program, target=self.target, divisor=self.divisor)
        text = harness_verilog(emit_verilog(top, name="top", emit_src=False),
                               divisor=self.divisor)
        args = [*verilator_args(text, cache_dir=self._cache_dir), "--timing",
                *self._build_args]
        self.run_dir = run_dir = _new_run_dir(self._cache_dir)
        settings = {"bridge_port": self._bridge_listener.getsockname()[1],
                    "divisor": self.divisor, "period_ns": PERIOD_NS, "tx_chunk": TX_CHUNK,
                    "rx_ring": RX_RING, "wake_chars": WAKE_CHARS, "idle_after": IDLE_AFTER,
                    "reset_cycles": RESET_CYCLES}
        (run_dir / "virtual.json").write_text(json.dumps(settings, indent=1))

        def work():
            try:
                self._outcome["results"] = run_cocotb(
                    text, test_module=_TB_MODULE, toplevel="harness",
                    extra_env={"SYSTOLIC_VIRTUAL": str(run_dir / "virtual.json")},
                    cache_dir=self._cache_dir, test_dir=run_dir, build_args=args, seed=0)
            except BaseException as error:          # reported by start() or stop()
                self._outcome["error"] = error

        self._sim_thread = threading.Thread(target=work, name="virtual-board-sim", daemon=True)
        self._sim_thread.start()
        self._bridge_listener.settimeout(0.2)
        deadline = time.monotonic() + timeout
        while self._bridge is None:
            try:
                self._bridge, _ = self._bridge_listener.accept()
            except (TimeoutError, socket.timeout):
                if not self._sim_thread.is_alive():
                    self._failed("The virtual board's simulation ended before it started")
                if time.monotonic() > deadline:
                    raise VirtualBoardError(f"The virtual board did not start within "
                                            f"{timeout:.0f} s (log {run_dir / 'sim.log'})")
        self._bridge.settimeout(None)
        self._bridge.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = MessageReader()
        while self.hello is None:
            data = self._bridge.recv(65536)
            if not data:
                self._failed("The virtual board's simulation ended before it started")
            for kind, payload in reader.feed(data):
                if kind == "H":
                    self.hello = json.loads(payload)
        self._reader = reader
        self.start_seconds = time.monotonic() - started
        self._relay_thread = threading.Thread(target=self._relay, name="virtual-board",
                                              daemon=True)
        self._relay_thread.start()
        return self

    def _failed(self, message):
        self._sim_thread.join(timeout=60)
        error = self._outcome.get("error")
        if error is not None:
            raise error
        raise VirtualBoardError(f"{message} (log {self.run_dir / 'sim.log'})")

    def stop(self, timeout=60.0):
        """Stop serving and end the simulation."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake_w.send(b"x")
        if self._relay_thread is not None:
            self._relay_thread.join(timeout)
        if self._bridge is not None:
            try:
                self._bridge.sendall(encode_message("X"))
                self._bridge.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        if self._sim_thread is not None:
            self._sim_thread.join(timeout)
        for s in (self._listener, self._bridge_listener, self._bridge, self._wake_r,
                  self._wake_w):
            if s is not None:
                s.close()

    @property
    def running(self):
        """The simulation is up and serving."""
        return (self._relay_thread is not None and self._relay_thread.is_alive()
                and not self._stop.is_set())

    # -- control ------------------------------------------------------------------------

    def reset(self, after=None):
        """Reset the board (its reset button), after the current client's first ``after``
        bytes have reached it (default: now, after what was received so far)."""
        with self._lock:
            self._resets.append(after)
        self._wake_w.send(b"r")

    def stats(self, timeout=10.0):
        """The simulation's statistics: ``cycles`` simulated, ``bytes_in`` (to the
        board), ``bytes_out``, ``resets``, ``active_seconds`` (wall time the simulation
        ran, idle waits excluded), ``rx_errors``."""
        event = threading.Event()
        with self._lock:
            self._query_id += 1
            qid = self._query_id
            self._queries[qid] = [event, None]
        self._send(encode_message("Q", json.dumps({"id": qid}).encode()))
        if not event.wait(timeout):
            raise VirtualBoardError("The virtual board did not answer a statistics query")
        with self._lock:
            return self._queries.pop(qid)[1]

    def _send(self, message):
        with self._lock:
            self._bridge.sendall(message)

    # -- the relay ----------------------------------------------------------------------

    def _relay(self):
        client = None
        received = 0
        try:
            while not self._stop.is_set():
                watch = [self._bridge, self._wake_r, client if client else self._listener]
                ready, _, _ = select.select(watch, [], [], 1.0)
                if self._wake_r in ready:
                    self._wake_r.recv(4096)
                if client is None and self._listener in ready:
                    client, addr = self._listener.accept()
                    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    received = 0
                    with self._lock:
                        self._resets.clear()
                    self._client_info = {"addr": f"{addr[0]}:{addr[1]}",
                                         "start": time.monotonic()}
                    self._query_stats("connect")
                    self._log(f"client {addr[0]}:{addr[1]} connected")
                elif client is not None and client in ready:
                    try:
                        data = client.recv(65536)
                    except OSError:
                        data = b""
                    if data:
                        # a reset asked for after byte ``a`` of this client goes between
                        # the bytes before and after it
                        with self._lock:
                            cuts = sorted(a - received for a in self._resets
                                          if a is not None and received <= a < received
                                          + len(data))
                            self._resets = [a for a in self._resets
                                            if a is None or not received <= a < received
                                            + len(data)]
                        pos = 0
                        for cut in cuts:
                            if cut > pos:
                                self._send(encode_message("D", data[pos:cut]))
                            self._send(encode_message("R"))
                            pos = cut
                        self._send(encode_message("D", data[pos:]))
                        received += len(data)
                    else:
                        client.close()
                        client = None
                        self._query_stats("disconnect")
                if self._bridge in ready:
                    data = self._bridge.recv(65536)
                    if not data:
                        if not self._stop.is_set():
                            self._log("the simulation ended")
                        break
                    for kind, payload in self._reader.feed(data):
                        if kind == "D" and client is not None:
                            try:
                                client.sendall(payload)
                            except OSError:
                                pass
                        elif kind == "S":
                            self._answer(json.loads(payload))
                with self._lock:
                    due = [a for a in self._resets if a is None or a <= received]
                    self._resets = [a for a in self._resets if not (a is None or a <= received)]
                for _ in due:
                    self._send(encode_message("R"))
        finally:
            if client is not None:
                client.close()

    def _query_stats(self, tag):
        self._send(encode_message("Q", json.dumps({"tag": tag}).encode()))

    def _answer(self, stats):
        qid = stats.pop("id", None)
        if qid is not None:
            with self._lock:
                if qid in self._queries:
                    self._queries[qid][1] = stats
                    self._queries[qid][0].set()
            return
        tag = stats.pop("tag", None)
        info = self._client_info
        if tag == "connect" and info is not None:
            info["stats"] = stats
        elif tag == "disconnect" and info is not None and "stats" in info:
            first = info["stats"]
            wall = time.monotonic() - info["start"]
            d = {k: stats[k] - first[k] for k in ("cycles", "bytes_in", "bytes_out",
                                                  "active_seconds", "resets")}
            moved = d["bytes_in"] + d["bytes_out"]
            active = max(d["active_seconds"], 1e-9)
            self._log(f"client {info['addr']} disconnected after {wall:.1f} s: "
                      f"{d['bytes_in']:,} bytes in, {d['bytes_out']:,} out "
                      f"({moved / max(wall, 1e-9):,.0f} bytes/s); {d['cycles']:,} cycles "
                      f"simulated ({d['cycles'] / active:,.0f} cycles/s while running)")


class BoardPort:
    """A pyserial port to a :class:`VirtualBoard` that can also reset the board in order
    with the bytes written (``reset_device()``, as :class:`~.linkmodel.FaultyPort` needs).
    Other attributes are the socket port's."""

    def __init__(self, board, **kwargs):
        import serial
        self.board = board
        self.port = serial.serial_for_url(board.url, **kwargs)
        self.written = 0

    def __getattr__(self, name):
        return getattr(self.port, name)

    @property
    def timeout(self):
        return self.port.timeout

    @timeout.setter
    def timeout(self, value):
        self.port.timeout = value

    def write(self, data):
        n = self.port.write(data)
        self.written += len(data)
        return n

    def read(self, n=1):
        return self.port.read(n)

    def reset_device(self):
        """Reset the board once everything written so far has reached it."""
        self.board.reset(after=self.written)

    def close(self):
        self.port.close()
