# amaranth: UnusedElaboratable=no
"""UART receiver and transmitter (boards/uart.py) in the Amaranth simulator."""

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.sim import Simulator

from systolic.boards.uart import UARTRx, UARTTx, uart_divisor
from systolic.sim.streams import stream_put


@pytest.mark.parametrize("clk_freq, baud, divisor", [
    (12e6, 115200, 104), (48e6, 3_000_000, 16), (1e6, 250_000, 4), (25e6, 9600, 2604),
])
def test_uart_divisor(clk_freq, baud, divisor):
    assert uart_divisor(clk_freq=clk_freq, baud=baud) == divisor


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(clk_freq=0, baud=9600), TypeError, r"Clock frequency must be a positive number, "
                                             r"not 0"),
    (dict(clk_freq=12e6, baud="9600"), TypeError, r"Baud rate must be a positive number, "
                                                  r"not '9600'"),
    (dict(clk_freq=1e6, baud=400_000), ValueError,
     r"Baud rate 400000 is too fast for a 1 MHz clock: the divisor must be at least 4, "
     r"not 2"),
    (dict(clk_freq=1e6, baud=115200), ValueError,
     r"Baud rate 115200 cannot be made from a 1 MHz clock: divisor 9 gives 111111 baud, "
     r"3.5% off \(at most 2%\)"),
])
def test_uart_divisor_rejects(kwargs, error, match):
    with pytest.raises(error, match=match):
        uart_divisor(**kwargs)


@pytest.mark.parametrize("cls", [UARTRx, UARTTx])
@pytest.mark.parametrize("divisor, error, match", [
    (3, ValueError, r"UART divisor must be at least 4, not 3"),
    (0, TypeError, r"UART divisor must be a positive integer, not 0"),
    ("4", TypeError, r"UART divisor must be a positive integer, not '4'"),
])
def test_uart_rejects_divisor(cls, divisor, error, match):
    with pytest.raises(error, match=match):
        cls(divisor=divisor)




@pytest.mark.parametrize("divisor", [4, 5, 7, 16])
@pytest.mark.parametrize("idle", ["none", "p0.5"])
def test_loopback(divisor, idle):
    """TX into RX: every byte arrives, none flagged, at 10 * divisor + 1 cycles per byte
    when the transmitter is kept busy."""
    rng = np.random.default_rng(divisor)
    payload = [int(b) for b in rng.integers(0, 256, 40)] + [0x00, 0xFF, 0x55, 0xAA]
    m = Module()
    m.submodules.tx = tx = UARTTx(divisor=divisor)
    m.submodules.rx = rx = UARTRx(divisor=divisor)
    m.d.comb += [rx.rx.eq(tx.tx), rx.o.ready.eq(1)]
    got, times = [], []

    async def source(ctx):
        await stream_put(ctx, tx.i, payload, idle=idle, seed=divisor)

    async def sink(ctx):
        cycle = 0
        while len(got) < len(payload):
            _, _, valid, p, overrun = await ctx.tick().sample(rx.o.valid, rx.o.payload,
                                                              rx.overrun)
            cycle += 1
            assert not overrun
            if valid:
                got.append((p.data, p.error))
                times.append(cycle)

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run()
    assert got == [(b, 0) for b in payload]
    if idle == "none":
        assert set(np.diff(times)) == {10 * divisor + 1}


def line(bits, period):
    """(level, cycles) segments for bits sent with a bit period of ``period`` cycles
    (fractional: the edges are rounded as a real sender's clock would place them)."""
    out, t = [], 0.0
    for bit in bits:
        start, t = round(t), t + period
        out.append((bit, round(t) - start))
    return out


def char(b, stop=1):
    return [0] + [(b >> i) & 1 for i in range(8)] + [stop]


def receive(divisor, segments, ready=True):
    """Drive ``rx`` with (level, cycles) segments; returns (data, error) characters and the
    number of overrun pulses."""
    dut = UARTRx(divisor=divisor)
    got, overruns = [], [0]

    async def drive(ctx):
        ctx.set(dut.o.ready, int(ready))
        for level, cycles in segments + [(1, 30 * divisor)]:
            ctx.set(dut.rx, level)
            for _ in range(cycles):
                _, _, valid, p, ov = await ctx.tick().sample(dut.o.valid, dut.o.payload,
                                                             dut.overrun)
                if valid and ready:
                    got.append((p.data, p.error))
                overruns[0] += ov

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(drive)
    sim.run()
    if not ready:
        got.append("held")
    return got, overruns[0]


@pytest.mark.parametrize("mismatch", [-0.02, 0.0, 0.02])
def test_rx_tolerates_baud_mismatch(mismatch):
    """A sender 2% fast or slow (divisor 50): every character is received."""
    D = 50
    data = [0x00, 0xFF, 0x0F, 0xF0, 0x55, 0xAA, 0x81]
    bits = [b for x in data for b in char(x)]
    got, _ = receive(D, line(bits, D * (1 + mismatch)))
    assert got == [(x, 0) for x in data]


def test_rx_fails_at_large_mismatch():
    """The tolerance test can fail: a sender 8% slow corrupts characters."""
    D = 50
    data = [0x00, 0xFF, 0x0F, 0xF0, 0x55, 0xAA, 0x81]
    bits = [b for x in data for b in char(x)]
    got, _ = receive(D, line(bits, D * 1.08))
    assert got != [(x, 0) for x in data]


def test_rx_framing_error_and_break():
    """A stop bit of 0 flags the character; a long break yields one flagged character,
    and the receiver resumes when the line returns to 1."""
    D = 8
    segs = line(char(0x3C, stop=0), D) + [(1, 2 * D)]
    segs += line([0] * 40, D) + [(1, 2 * D)]                 # a break of 40 bit times
    segs += line(char(0xC3), D)
    got, _ = receive(D, segs)
    assert got == [(0x3C, 1), (0x00, 1), (0xC3, 0)]


@pytest.mark.parametrize("width", [1, 2, 3])
def test_rx_ignores_glitches(width):
    """A low pulse shorter than half a bit is not a start bit."""
    D = 8
    segs = [(0, width), (1, 3 * D)] + line(char(0x5A), D)
    got, _ = receive(D, segs)
    assert got == [(0x5A, 0)]


def test_rx_overrun():
    D = 4
    got, overruns = receive(D, line(char(0x11) + char(0x22), D), ready=False)
    assert overruns == 1
