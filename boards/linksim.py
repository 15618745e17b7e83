"""The link gateware in the Amaranth simulator, behind a pyserial-like port.

:class:`SimPort` simulates a :class:`~.linkgw.LinkDevice` and an accelerator (the
:class:`~.standin.StandInAccelerator` unless another is given) with testbenches that
drive and watch the UART pins, so the host :class:`~.link.Link` talks to the gateware
exactly as to a board: ``Link(SimPort(descriptor), clock=port.clock)``.  Time is the
simulator's (one clock cycle is ``period`` seconds), and the simulation runs only while
the host waits in :meth:`SimPort.read`, so timeouts are deterministic.

It can also replay a script of line events for the byte-for-byte comparison with
:class:`~.linkmodel.LinkModel`: characters with framing errors (:meth:`write_raw`),
idle time (:meth:`idle`) and a reset of the whole device (:meth:`reset_device`).
"""

import collections

from amaranth.hdl import Module, ResetInserter, Signal
from amaranth.sim import Simulator

from .linkgw import LinkDevice, connect_accelerator
from .standin import StandInAccelerator

__all__ = ["SimPort"]


class SimPort:
    """A pyserial-like port to the link gateware in the Amaranth simulator.

    Parameters
    ----------
    descriptor : Descriptor
    divisor : int
        Clock cycles per UART bit (small, for speed).
    gap_bits : int
        The device's gap timeout in bit times.
    accelerator : callable or None
        ``accelerator(descriptor)`` returns the component behind the link (default: the
        stand-in).
    period : float
        Seconds per clock cycle.
    registered_buffers : bool
        The device's :class:`~.linkgw.LinkDevice` option (the ECP5 form).
    """

    def __init__(self, descriptor, *, divisor=4, gap_bits=40, rx_depth=512, accelerator=None,
                 period=1e-6, registered_buffers=False):
        self.descriptor = descriptor
        self.divisor = divisor
        self.period = period
        self.timeout = None
        self.now = 0.0
        self.link = LinkDevice(descriptor=descriptor, divisor=divisor, gap_bits=gap_bits,
                               rx_depth=rx_depth, registered_buffers=registered_buffers)
        make = accelerator or (lambda d: StandInAccelerator(descriptor=d))
        self.accel = make(descriptor)
        self._reset = Signal()
        top = Module()
        top.submodules.link = self.link
        top.submodules.accel = ResetInserter(self.link.accel_reset)(self.accel)
        connect_accelerator(top, self.link.accel, self.accel)
        m = Module()
        m.submodules.top = ResetInserter(self._reset)(top)
        self._tx_queue = collections.deque()   # (byte, framing_error) or ("reset",)
        self._rx = collections.deque()
        self._sending = False
        self._receiving = False
        self.sim = Simulator(m)
        self.sim.add_clock(period)
        self.sim.add_testbench(self._driver, background=True)
        self.sim.add_testbench(self._monitor, background=True)

    def clock(self):
        return self.now

    # -- testbenches --------------------------------------------------------------------

    async def _driver(self, ctx):
        # Time-based waits, not per-cycle ticks: the testbenches cost a few events per bit
        # instead of one per cycle.  Levels change half a period after a clock edge.
        D, T = self.divisor, self.period
        pin = self.link.rx
        await ctx.delay(T / 2)
        while True:
            if not self._tx_queue:
                self._sending = False
                await ctx.delay(D * T)          # poll for bytes once per bit time
                continue
            self._sending = True
            item = self._tx_queue.popleft()
            if item == ("reset",):
                ctx.set(self._reset, 1)
                await ctx.delay(2 * T)
                ctx.set(self._reset, 0)
                continue
            b, error = item
            levels = [0] + [(b >> i) & 1 for i in range(8)] + [0 if error else 1]
            if error:
                levels.append(1)                # a full idle bit ends the break
            for level in levels:
                ctx.set(pin, level)
                await ctx.delay(D * T)

    async def _monitor(self, ctx):
        D, T = self.divisor, self.period
        tx = self.link.tx
        while True:
            await ctx.negedge(tx)
            self._receiving = True
            await ctx.delay(D * T / 2)
            assert not ctx.get(tx), "tx: start bit too short"
            value = 0
            for bit in range(8):
                await ctx.delay(D * T)
                value |= ctx.get(tx) << bit
            await ctx.delay(D * T)
            assert ctx.get(tx), "tx: stop bit is 0"
            self._rx.append(value)
            self._receiving = False

    # -- pyserial interface -------------------------------------------------------------

    def write(self, data):
        self._tx_queue.extend((b, False) for b in bytes(data))
        return len(data)

    def write_raw(self, b, framing_error=False):
        """One character, with a stop bit of 0 if ``framing_error``."""
        self._tx_queue.append((b, framing_error))

    def reset_device(self):
        """Reset the whole device (link and accelerator) once the queued characters are
        sent."""
        self._tx_queue.append(("reset",))

    def _run(self, seconds):
        self.now += seconds
        self.sim.run_until(self.now)

    def idle(self, seconds):
        """Let the simulation run (the queued characters go out)."""
        self._run(seconds)

    def settle(self, quiet_cycles, limit_cycles=1_000_000):
        """Run until everything queued is sent and both directions of the line have been
        idle for ``quiet_cycles`` (to within a character time)."""
        step = 10 * self.divisor
        quiet = 0
        received = len(self._rx)
        for _ in range(limit_cycles // step):
            busy = self._tx_queue or self._sending or self._receiving or \
                len(self._rx) != received
            received = len(self._rx)
            quiet = 0 if busy else quiet + step
            if quiet >= quiet_cycles:
                return
            self._run(step * self.period)
        raise TimeoutError("Link gateware never went quiet")

    @property
    def in_waiting(self):
        return len(self._rx)

    def read(self, n=1):
        if self.timeout is None:
            raise ValueError("SimPort needs a timeout (reads would never end)")
        deadline = self.now + self.timeout
        step = 10 * self.divisor * self.period
        while len(self._rx) < n and self.now < deadline:
            self._run(min(step, deadline - self.now))
        return bytes(self._rx.popleft() for _ in range(min(n, len(self._rx))))

    def take(self):
        """Everything received so far."""
        out = bytes(self._rx)
        self._rx.clear()
        return out

    def reset_input_buffer(self):
        self._rx.clear()

    def close(self):
        pass
