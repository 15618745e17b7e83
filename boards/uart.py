"""UART receiver and transmitter, 8N1, for the host link (DESIGN.md section 7).

A character is a start bit (0), eight data bits LSB first and a stop bit (1), each
``divisor`` clock cycles long; the line idles at 1.  :func:`uart_divisor` picks the
divisor for a clock and a baud rate and refuses one that is too far off.

Receiver: the pin passes a two-flip-flop synchronizer; a falling edge starts a character,
the start bit is checked again half a bit later (a shorter low pulse is a glitch and is
ignored), and every later bit is sampled once, in its middle.  Sampling the stop bit at
9.5 bit times after the edge tolerates a total rate mismatch between the two ends of
``0.5 / 9.5 = 5.3 %`` minus the edge detection's uncertainty of one cycle, so each end may
be off by about 2 % (:data:`MAX_BAUD_ERROR`).  A stop bit sampled as 0 is a framing
error: the character is delivered with ``error`` set and the receiver waits for the line
to return to 1 (a break does not produce a stream of zero characters).
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

from systolic.rtl._params import check_int

__all__ = ["MIN_DIVISOR", "MAX_BAUD_ERROR", "uart_divisor", "rx_layout", "UARTRx", "UARTTx"]

#: Smallest divisor: the receiver needs a half bit of at least 2 cycles to tell a
#: glitch from a start bit after its synchronizer.
MIN_DIVISOR = 4
#: Largest relative baud-rate error of one end (see the module docstring).
MAX_BAUD_ERROR = 0.02

#: A received character: the byte, and whether its stop bit was 0.
rx_layout = data.StructLayout({"data": 8, "error": 1})


def uart_divisor(*, clk_freq, baud):
    """The divisor (clock cycles per bit) for ``baud`` at ``clk_freq`` Hz.

    Raises
    ------
    TypeError
        A frequency or baud rate that is not a positive number.
    ValueError
        A divisor below :data:`MIN_DIVISOR`, or a baud rate more than
        :data:`MAX_BAUD_ERROR` off.
    """
    if isinstance(clk_freq, bool) or not isinstance(clk_freq, (int, float)) or \
            not clk_freq > 0:
        raise TypeError(f"Clock frequency must be a positive number, not {clk_freq!r}")
    if isinstance(baud, bool) or not isinstance(baud, (int, float)) or not baud > 0:
        raise TypeError(f"Baud rate must be a positive number, not {baud!r}")
    divisor = round(clk_freq / baud)
    if divisor < MIN_DIVISOR:
        raise ValueError(f"Baud rate {baud} is too fast for a {clk_freq / 1e6:g} MHz clock: "
                         f"the divisor must be at least {MIN_DIVISOR}, not {divisor}")
    actual = clk_freq / divisor
    error = abs(actual - baud) / baud
    if error > MAX_BAUD_ERROR:
        raise ValueError(f"Baud rate {baud} cannot be made from a {clk_freq / 1e6:g} MHz "
                         f"clock: divisor {divisor} gives {actual:.0f} baud, "
                         f"{100 * error:.1f}% off (at most {100 * MAX_BAUD_ERROR:g}%)")
    return divisor


class UARTRx(wiring.Component):
    """8N1 receiver with mid-bit sampling and framing-error detection.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit, at least 4.

    Members
    -------
    rx : In(1, init=1)
        The pin (asynchronous; synchronized inside).
    o : Out(stream.Signature(rx_layout))
        One character per transfer; ``error`` flags a framing error.
    overrun : Out(1)
        Pulses when a character completes while the previous one is still waiting in
        ``o``; the new character is dropped.

    Latency: a character is on ``o`` ``2 + 9.5 * divisor`` cycles after its start edge
    (synchronizer plus 9.5 bits).  Throughput: one character per ``10 * divisor`` cycles
    (the line rate); ``o.ready`` must come within about half a bit to avoid an overrun.

    Raises
    ------
    TypeError, ValueError
        A divisor that is not an integer of at least 4.
    """

    def __init__(self, *, divisor):
        self._divisor = check_int("UART divisor", divisor, lo=MIN_DIVISOR)
        super().__init__({
            "rx": In(1, init=1),
            "o": Out(stream.Signature(rx_layout)),
            "overrun": Out(1),
        })

    @property
    def divisor(self):
        return self._divisor

    def elaborate(self, platform):
        m = Module()
        D = self._divisor
        rx = Signal(init=1)
        m.submodules.sync = FFSynchronizer(self.rx, rx, init=1)

        timer = Signal(range(D))
        bit = Signal(range(8))
        shreg = Signal(8)

        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        m.d.sync += self.overrun.eq(0)

        def deliver(error):
            with m.If(self.o.valid & ~self.o.ready):
                m.d.sync += self.overrun.eq(1)
            with m.Else():
                m.d.sync += [self.o.valid.eq(1), self.o.payload.data.eq(shreg),
                             self.o.payload.error.eq(error)]

        with m.If(timer != 0):
            m.d.sync += timer.eq(timer - 1)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~rx):
                    # to the middle of the start bit
                    m.d.sync += timer.eq(D // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer == 0):
                    with m.If(rx):
                        m.next = "IDLE"        # a glitch, not a start bit
                    with m.Else():
                        m.d.sync += [timer.eq(D - 1), bit.eq(0)]
                        m.next = "DATA"
            with m.State("DATA"):
                with m.If(timer == 0):
                    m.d.sync += [shreg.eq((shreg >> 1) | (rx << 7)), timer.eq(D - 1),
                                 bit.eq(bit + 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(timer == 0):
                    deliver(~rx)
                    # look for the next start edge from mid stop bit on, so that a slightly
                    # fast sender loses nothing; after a framing error, wait for idle first
                    with m.If(rx):
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "BREAK"
            with m.State("BREAK"):
                with m.If(rx):
                    m.next = "IDLE"
        return m


class UARTTx(wiring.Component):
    """8N1 transmitter.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit, at least 4.

    Members
    -------
    i : In(stream.Signature(8))
        Bytes to send; taken when the previous character's stop bit is complete.
    tx : Out(1, init=1)
        The pin (registered).

    Latency: the start bit begins the cycle after a byte is taken.  Throughput: one byte
    per ``10 * divisor + 1`` cycles.

    Raises
    ------
    TypeError, ValueError
        A divisor that is not an integer of at least 4.
    """

    def __init__(self, *, divisor):
        self._divisor = check_int("UART divisor", divisor, lo=MIN_DIVISOR)
        super().__init__({"i": In(stream.Signature(8)), "tx": Out(1, init=1)})

    @property
    def divisor(self):
        return self._divisor

    def elaborate(self, platform):
        m = Module()
        D = self._divisor
        shreg = Signal(10, init=0x3FF)    # stop, data[7:0], start; LSB goes out first
        bits = Signal(range(11))          # bits still to send
        timer = Signal(range(D))

        m.d.comb += [self.tx.eq(shreg[0]), self.i.ready.eq(bits == 0)]
        with m.If(bits == 0):
            with m.If(self.i.valid):
                m.d.sync += [shreg.eq((1 << 9) | (self.i.payload << 1)), bits.eq(10),
                             timer.eq(D - 1)]
        with m.Elif(timer == 0):
            m.d.sync += [shreg.eq((shreg >> 1) | (1 << 9)), bits.eq(bits - 1),
                         timer.eq(D - 1)]
        with m.Else():
            m.d.sync += timer.eq(timer - 1)
        return m
