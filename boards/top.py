"""The board top: PLL, the host link, the accelerator and status LEDs.

:class:`BoardTop` is what ``systolic build`` puts on a board and what the virtual board
simulates::

    oscillator --> PLL (SB_PLL40_PAD / EHXPLLL) --> sync domain, reset until lock
    rx pin --> LinkDevice --accel (i, w registered)--> Accelerator (accel domain)
    tx pin <--'        `--> LEDs: link error, heartbeat, busy

With ``platform=None`` (simulation, ``systolic emit --what top``, the virtual board) there
is no PLL: the top's own ports ``rx``, ``tx`` and ``leds`` are the pins and the ``sync``
domain is the board clock, so a simulation runs exactly the logic that is built, at the
frequency :attr:`BoardTop.clk_freq` the PLL makes (the UART divisor is the same).  On an
amaranth-boards platform the pins come from the platform's ``uart`` and ``led`` resources
and the PLL is instantiated from the dividers of :mod:`.pll`.

Weights: with ``weight_memory="spram"`` (iCE40) the weight memory starts empty on every
power-up (SPRAM is not in the bitstream); the host writes the weights through the link
(WRITE_WEIGHTS, :func:`~systolic.rtl.accelerator.weight_beats`) before the first run.
Block-RAM weights are in the bitstream and may be rewritten the same way.
"""

from functools import partial

from amaranth.build import ResourceError
from amaranth.hdl import ClockDomain, DomainRenamer, Instance, Module, Signal
from amaranth.lib import io, wiring
from amaranth.lib.cdc import ResetSynchronizer
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from systolic.rtl._params import check_int

from .link import Descriptor
from .linkgw import LinkDevice, register_stream
from .pll import ecp5_pll, ice40_pll
from .targets import BoardTarget, board
from .uart import uart_divisor

__all__ = ["BoardTop", "LEDS", "oscillator_hz", "board_pll"]

#: The status LEDs, in the order of the platform's ``led`` resources (on the iCEBreaker:
#: red, green, then the break-off PMOD's first LED).
LEDS = ("error", "heartbeat", "busy")

#: Seconds (at least, at most twice) an error or busy pulse keeps its LED lit, so a
#: short event is visible.
LED_HOLD = 0.1


def oscillator_hz(target):
    """The frequency of ``target``'s board oscillator (its platform's default clock)."""
    cls = target.platform_class()
    for res in cls.resources.values() if isinstance(cls.resources, dict) else cls.resources:
        if res.name == cls.default_clk:
            return res.clock.frequency
    raise ValueError(f"Board {target.name} has no {cls.default_clk} clock resource")


def board_pll(target):
    """The PLL setting that makes ``target.clock_mhz`` from the board oscillator
    (:class:`~.pll.ICE40PLL` or :class:`~.pll.ECP5PLL`)."""
    make = {"ice40": ice40_pll, "ecp5": ecp5_pll}[target.device.family]
    return make(oscillator_hz(target), target.clock_mhz * 1e6)


def _register_handshake(m, name, src, dst):
    """``src`` to ``dst`` with both handshake signals from flip-flops and the payload
    passed through: for a source that holds its payload until ``ready`` (the link
    engine's W_PUSH state).  ``dst.valid`` rises the cycle after ``src.valid``;
    ``src.ready`` pulses the cycle after ``dst`` took the beat.  Two flip-flops, where a
    payload register would take a whole weight word."""
    pending, ack = Signal(name=f"{name}_pending"), Signal(name=f"{name}_ack")
    m.d.comb += [dst.valid.eq(pending), dst.payload.eq(src.payload), src.ready.eq(ack)]
    m.d.sync += ack.eq(0)
    with m.If(pending & dst.ready):
        m.d.sync += [pending.eq(0), ack.eq(1)]
    with m.Elif(src.valid & ~pending & ~ack):
        m.d.sync += pending.eq(1)


class BoardTop(wiring.Component):
    """A board's whole design.

    Parameters
    ----------
    program : Program
        The compiled network the accelerator runs.
    target : BoardTarget or str
        The board (default: :data:`~.targets.DEFAULT_BOARD`).
    baud : int or None
        UART line rate; default the board's ``baud``.
    divisor : int or None
        Clock cycles per UART bit, instead of ``baud`` (fast simulations of the link).
    gap_bits, rx_depth : int
        Passed to :class:`~.linkgw.LinkDevice`.
    accelerator : callable or None
        ``accelerator(program)`` returns the component behind the link (with the members
        of :func:`~.linkgw.accelerator_signature`); default
        :class:`~systolic.rtl.accelerator.Accelerator` with its counter port.

    Members
    -------
    clk, rst : In(1)
        The board clock and reset (simulation only: on a platform the PLL makes the clock
        and the reset is held until it locks).
    rx : In(1, init=1); tx : Out(1, init=1)
        The UART pins (simulation only: on a platform the ``uart`` resource is used).
    leds : Out(len(LEDS))
        Status: bit ``k`` is :data:`LEDS` ``[k]`` (error and busy held for
        :data:`LED_HOLD` s, heartbeat toggling about once a second).

    Properties
    ----------
    clk_freq : float
        The accelerator's clock in Hz: the PLL's achieved output.
    pll : ICE40PLL or ECP5PLL
    baud, divisor : the UART rate and clock cycles per bit
    descriptor : Descriptor
        What the link's PING answers.

    Raises
    ------
    TypeError, ValueError
        A parameter of the wrong type or out of range (an unreachable baud rate or clock).
    """

    def __init__(self, program, *, target=None, baud=None, divisor=None, gap_bits=1000,
                 rx_depth=512, accelerator=None):
        from systolic.rtl.accelerator import Accelerator
        if target is None:
            from .targets import DEFAULT_BOARD
            target = DEFAULT_BOARD
        if isinstance(target, str):
            target = board(target)
        if not isinstance(target, BoardTarget):
            raise TypeError(f"Target must be a BoardTarget or a board name, not {target!r}")
        self._target = target
        self._program = program
        self._pll = board_pll(target)
        self._baud = target.baud if baud is None else baud
        if divisor is None:
            divisor = uart_divisor(clk_freq=self._pll.f_out, baud=self._baud)
        else:
            check_int("UART divisor", divisor, lo=4)
            self._baud = self._pll.f_out / divisor
        self._descriptor = Descriptor.from_program(program)
        self._divisor = divisor
        # LinkDevice's own checks, here so that errors come before elaboration
        self._gap_bits = check_int("Gap timeout", gap_bits, lo=20)
        self._rx_depth = check_int("RX FIFO depth", rx_depth, lo=16)
        # the link and the accelerator are made at elaboration
        # the counter port form: the per-layer counters in a memory (see Accelerator)
        self._make_accel = accelerator or partial(Accelerator, counter_port=True)
        super().__init__({
            "clk": In(1),
            "rst": In(1),
            "rx": In(1, init=1),
            "tx": Out(1, init=1),
            "leds": Out(len(LEDS)),
        })

    @property
    def target(self):
        return self._target

    @property
    def program(self):
        return self._program

    @property
    def pll(self):
        return self._pll

    @property
    def clk_freq(self):
        return self._pll.f_out

    @property
    def baud(self):
        return self._baud

    @property
    def divisor(self):
        return self._divisor

    @property
    def descriptor(self):
        return self._descriptor

    def _clock(self, m, platform):
        """The sync domain from the PLL; reset held until the PLL locks.  Returns it."""
        family = self._target.device.family
        pll = self._pll
        # On the iCE40 the sync domain's reset (the PLL lock, synchronized) is
        # asynchronous: as a synchronous reset yosys folds it into the LUTs in front of
        # the flip-flops (94 LUT4 of the default build), and the iCEBreaker's Fmax rose
        # 1.3-1.7 MHz at seeds 1-3.  On the ECP5 its flip-flops' LSR takes a synchronous
        # reset for free, and the asynchronous form routed slower (ULX3S-25F: 108.9,
        # 113.2, 121.0 MHz against 125.2, 123.4, 125.3).
        m.domains.sync = cd = ClockDomain("sync", async_reset=family == "ice40")
        lock = Signal()
        if family == "ice40":
            pin = platform.request(platform.default_clk, dir="-")
            # the PLL sits on the oscillator's pad (iCEBreaker pin 35, a PLL input)
            m.submodules.pll = Instance(
                "SB_PLL40_PAD", p_FEEDBACK_PATH="SIMPLE", p_PLLOUT_SELECT="GENCLK",
                p_DIVR=pll.divr, p_DIVF=pll.divf, p_DIVQ=pll.divq,
                p_FILTER_RANGE=pll.filter_range,
                i_PACKAGEPIN=pin.io, i_RESETB=1, i_BYPASS=0,
                o_PLLOUTGLOBAL=cd.clk, o_LOCK=lock)
        else:
            m.submodules.clk_buf = clk_buf = io.Buffer(
                "i", platform.request(platform.default_clk, dir="-"))
            clkin = clk_buf.i
            f_in, f_out = f"{pll.f_in / 1e6:g}", f"{pll.f_out / 1e6:g}"
            m.submodules.pll = Instance(
                "EHXPLLL",
                a_FREQUENCY_PIN_CLKI=f_in, a_FREQUENCY_PIN_CLKOP=f_out,
                a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
                a_MFG_GMCREF_SEL="2",
                p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
                p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA",
                p_OUTDIVIDER_MUXB="DIVB", p_OUTDIVIDER_MUXC="DIVC", p_OUTDIVIDER_MUXD="DIVD",
                p_CLKI_DIV=pll.clki_div, p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=pll.clkop_div,
                p_CLKOP_CPHASE=pll.clkop_cphase, p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP",
                p_CLKFB_DIV=pll.clkfb_div,
                i_RST=0, i_STDBY=0, i_CLKI=clkin, i_CLKFB=cd.clk, i_PHASESEL0=0,
                i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1,
                i_PLLWAKESYNC=0, i_ENCLKOP=0,
                o_CLKOP=cd.clk, o_LOCK=lock)
        platform.add_clock_constraint(cd.clk, pll.f_out)
        m.submodules.reset_sync = ResetSynchronizer(~lock, domain="sync")
        return cd

    def elaborate(self, platform):
        m = Module()
        if platform is not None:
            sync = self._clock(m, platform)
        else:
            # the board clock and reset are the top's ports (as an implicit sync domain's
            # would be): the accel domain below needs the sync domain's clock signal
            m.domains.sync = sync = ClockDomain("sync")
            sync.clk, sync.rst = self.clk, self.rst
        m.submodules.link = link = LinkDevice(
            descriptor=self._descriptor, divisor=self._divisor, gap_bits=self._gap_bits,
            rx_depth=self._rx_depth,
            registered_buffers=self._target.device.family == "ecp5")
        accel = self._make_accel(self._program)
        # The accelerator runs in its own domain on the same clock, whose one reset is a
        # flip-flop: the board's reset (PLL lock) or the link's RESET, registered.  With
        # the sync domain's reset and a ResetInserter's both on its flip-flops, yosys
        # ORed the two in LUTs in front of every clock enable (the iCE40 critical path:
        # the lock synchronizer across the die into the address generator's enables,
        # 28.7 ns).  The accelerator resets one cycle after either, long before the RESET
        # response is sent.
        m.domains.accel = accel_cd = ClockDomain("accel", local=True, async_reset=True)
        accel_cd.clk = sync.clk
        accel_reset = Signal(init=1, reset_less=True)
        m.d.sync += accel_reset.eq(link.accel_reset | sync.rst)
        m.d.comb += accel_cd.rst.eq(accel_reset)
        m.submodules.accel = DomainRenamer("accel")(accel)
        # The i stream passes a register and the w stream's handshake is registered (both
        # at a fraction of the accelerator's rate, far above the line rate): the link's
        # FSM no longer reaches the accelerator's load control or its weight memory in one
        # cycle, the iCE40 critical paths after the dispatch fix (39 and 37 ns).  The
        # input register forgets its beat on RESET like the accelerator.
        register_stream(m, "i", link.accel.i, accel.i, reset=accel_reset)
        _register_handshake(m, "w", link.accel.w, accel.w)
        wiring.connect(m, link.accel.o, accel.o)
        m.d.comb += [accel.rounding.eq(link.accel.rounding), accel.seed.eq(link.accel.seed),
                     accel.images.eq(link.accel.images),
                     accel.counter_addr.eq(link.accel.counter_addr),
                     link.accel.busy.eq(accel.busy),
                     link.accel.counter_data.eq(accel.counter_data)]

        if platform is not None:
            # ``rx``/``tx`` are the top's ports in simulation; on a board, the pins
            rx, tx = Signal(init=1), Signal(init=1)
            m.d.comb += [link.rx.eq(rx), tx.eq(link.tx)]
            self._pins_to(m, platform, rx, tx)
        else:
            m.d.comb += [link.rx.eq(self.rx), self.tx.eq(link.tx)]

        # status LEDs: an event lights its LED for one to two periods of ~LED_HOLD s
        # (two flags each, moved on the heartbeat counter's tick: four flip-flops instead
        # of two hold timers, which matters on a full UP5K)
        f = self._pll.f_out
        beat = Signal(ceil_log2(int(f)))            # top bit toggles every ~0.5..1 s
        m.d.sync += beat.eq(beat + 1)
        period = max(1, min(len(beat), int(LED_HOLD * f).bit_length() - 1))
        tick = Signal()                             # every 2**period cycles (~LED_HOLD s)
        m.d.comb += tick.eq(beat[:period] == 0)
        leds = Signal(len(LEDS))
        m.d.comb += leds[LEDS.index("heartbeat")].eq(beat[-1])
        for name, event in (("error", link.error), ("busy", accel.busy)):
            # ``seen``: the event happened in this period; ``before``: in the last one
            seen, before = Signal(name=f"{name}_seen"), Signal(name=f"{name}_before")
            with m.If(tick):
                m.d.sync += [before.eq(seen | event), seen.eq(0)]
            with m.Elif(event):
                m.d.sync += seen.eq(1)
            m.d.comb += leds[LEDS.index(name)].eq(seen | before)
        if platform is None:
            m.d.comb += self.leds.eq(leds)
        else:
            self._leds_to(m, platform, leds)
        return m

    def _pins_to(self, m, platform, rx, tx):
        uart = platform.request("uart", 0, dir="-")
        m.submodules.rx_buf = rx_buf = io.Buffer("i", uart.rx)
        m.submodules.tx_buf = tx_buf = io.Buffer("o", uart.tx)
        m.d.comb += [rx.eq(rx_buf.i), tx_buf.o.eq(tx)]

    def _leds_to(self, m, platform, leds):
        if hasattr(platform, "break_off_pmod"):
            # the iCEBreaker's LED PMOD (attached unless broken off) has LEDs 2..6
            try:
                platform.lookup("led", 2)
            except ResourceError:
                platform.add_resources(platform.break_off_pmod)
        for k in range(len(LEDS)):
            try:
                led = platform.request("led", k, dir="-")
            except ResourceError:
                break                       # a board with fewer LEDs shows the first ones
            m.submodules[f"led_buf_{k}"] = buf = io.Buffer("o", led)
            m.d.comb += buf.o.eq(leds[k])
