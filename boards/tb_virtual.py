"""cocotb bench of the virtual board: the simulator's end of :class:`~.virtual.VirtualBoard`.

It connects to the bridge socket named in ``$SYSTOLIC_VIRTUAL`` (a JSON settings file
written by :class:`~.virtual.VirtualBoard`), resets the board, says hello, then loops until
the bridge closes:

* bytes from the bridge (``D``) are queued and handed to the harness's serializer up to
  ``tx_chunk`` at a time, in order with resets (``R``), which wait until the bytes before
  them have been shifted in;
* the simulation advances by ``wake_chars`` character times (or until the serializer is
  done), the clock running inside the model;
* the bytes the harness received from ``tx`` since the last wake-up go to the bridge.

All reads and writes of the harness's ports happen at times between clock edges (the
clock's edges fall at odd multiples of half a period; the bench wakes at whole periods), so
nothing races with the design.  After ``idle_after`` seconds without traffic the bench
blocks on the bridge (up to 0.2 s) before each step: an idle board takes no CPU, and no
simulated time passes while nobody talks to it, which nothing on the link can observe.
"""

import collections
import json
import os
import select
import signal
import socket
import time
from pathlib import Path

import cocotb
from cocotb.simtime import get_sim_time
from cocotb.triggers import Timer

from systolic.boards.virtual import MessageReader, encode_message


class Bench:
    def __init__(self, dut, settings, sock):
        self.dut, self.s, self.sock = dut, settings, sock
        self.period = settings["period_ns"]
        self.char_cycles = 10 * settings["divisor"] + 1
        self.queue = collections.deque()     # bytes objects, None for a reset
        self.reader = MessageReader()
        self.go = 0
        self.sending = 0                     # bytes in the serializer, 0 if idle
        self.sent_flag = 0
        self.rx_seen = 0
        self.stats = collections.Counter()
        self.active = 0.0
        self.last_traffic = time.monotonic()
        self.closed = False

    def cycles(self):
        return round(get_sim_time("ns") / self.period)

    async def step(self, cycles):
        start = time.perf_counter()
        await Timer(cycles * self.period, "ns")
        self.active += time.perf_counter() - start

    async def reset(self):
        dut = self.dut
        dut.h_reset.value = 1
        await self.step(self.s["reset_cycles"])
        dut.h_reset.value = 0
        await self.step(1)

    def poll(self, wait):
        """Take what the bridge has (waiting up to ``wait`` seconds for something)."""
        ready, _, _ = select.select([self.sock], [], [], wait)
        if not ready:
            return
        data = self.sock.recv(1 << 16)
        if not data:
            self.closed = True
            return
        for kind, payload in self.reader.feed(data):
            if kind == "D":
                self.queue.append(payload)
                self.last_traffic = time.monotonic()
            elif kind == "R":
                self.queue.append(None)
            elif kind == "Q":
                query = json.loads(payload)
                self.sock.sendall(encode_message("S", json.dumps({
                    **query, "cycles": self.cycles(), "bytes_in": self.stats["in"],
                    "bytes_out": self.stats["out"], "resets": self.stats["resets"],
                    "rx_errors": int(self.dut.h_rx_errors.value),
                    "active_seconds": self.active}).encode()))
            elif kind == "X":
                self.closed = True

    def take(self):
        """Up to ``tx_chunk`` queued bytes (none past a reset)."""
        out = bytearray()
        while self.queue and self.queue[0] is not None and len(out) < self.s["tx_chunk"]:
            head = self.queue.popleft()
            room = self.s["tx_chunk"] - len(out)
            out += head[:room]
            if len(head) > room:
                self.queue.appendleft(head[room:])
        return bytes(out)

    def collect(self):
        """Bytes received from ``tx`` since the last call, to the bridge."""
        dut, ring = self.dut, self.s["rx_ring"]
        count = int(dut.h_rx_count.value)
        n = (count - self.rx_seen) & 0xFFFFFFFF
        if not n:
            return
        assert n <= ring, f"{n} bytes arrived between two wake-ups; the ring holds {ring}"
        raw = int(dut.h_rx_ring.value)
        data = bytes((raw >> (8 * ((self.rx_seen + k) % ring))) & 0xFF for k in range(n))
        self.rx_seen = count
        self.stats["out"] += n
        self.last_traffic = time.monotonic()
        self.sock.sendall(encode_message("D", data))

    async def run(self):
        dut, s = self.dut, self.s
        wake = s["wake_chars"] * self.char_cycles
        deadline = 0
        while not self.closed:
            idle = (not self.queue and not self.sending
                    and time.monotonic() - self.last_traffic > s["idle_after"])
            self.poll(0.2 if idle else 0)
            if self.closed:
                break
            if not self.sending and self.queue:
                if self.queue[0] is None:
                    self.queue.popleft()
                    await self.reset()
                    self.stats["resets"] += 1
                    continue
                chunk = self.take()
                dut.h_data.value = int.from_bytes(chunk, "little")
                dut.h_len.value = len(chunk)
                self.go ^= 1
                dut.h_go.value = self.go
                self.sending = len(chunk)
                self.stats["in"] += len(chunk)
                # the serializer starts at the next edge; its last stop bit ends
                # len * char_cycles later
                deadline = self.cycles() + 1 + len(chunk) * self.char_cycles
            if self.sending:
                # no longer than a wake-up interval: the receive ring must not overflow
                await self.step(max(1, min(wake, deadline - self.cycles())))
                if int(dut.h_sent.value) != self.sent_flag:
                    self.sent_flag ^= 1
                    self.sending = 0
            else:
                await self.step(wake)
            self.collect()


@cocotb.test()
async def serve(dut):
    """Serve the board over the bridge until it closes."""
    # Ctrl-C in a terminal reaches every process of the group: the server stops the
    # bench over the bridge, so the simulator itself ignores it and ends cleanly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    settings = json.loads(Path(os.environ["SYSTOLIC_VIRTUAL"]).read_text())
    sock = socket.create_connection(("127.0.0.1", settings["bridge_port"]))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    dut.h_go.value = 0
    dut.h_len.value = 0
    dut.h_data.value = 0
    bench = Bench(dut, settings, sock)
    await bench.reset()
    bench.sent_flag = int(dut.h_sent.value)
    bench.rx_seen = int(dut.h_rx_count.value)
    sock.sendall(encode_message("H", json.dumps({"cycles": bench.cycles()}).encode()))
    try:
        await bench.run()
    finally:
        sock.close()
