# amaranth: UnusedElaboratable=no
"""The board top (boards/top.py) and its PLL settings (boards/pll.py): dividers equal to
icepll/ecppll's, the simulated top answers the host link bit-exact with the golden model
and lights its LEDs, and the platform build files carry the PLL and clock constraints."""

import collections
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from amaranth.sim import Simulator

from systolic.boards.link import COMMANDS, Descriptor, Link, encode_frame
from systolic.boards.pll import ecp5_pll, ice40_pll
from systolic.boards.synth import yowasp_tool
from systolic.boards.targets import BOARDS, board
from systolic.boards.top import LEDS, BoardTop, board_pll, oscillator_hz
from systolic.golden.randnet import random_input, random_network
from systolic.golden.run import run
from systolic.rtl.compiler import ArrayConfig, compile_network


def _tool(name, args):
    # yowasp tools see only their working directory: write the Verilog there
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([yowasp_tool(name), *args, "-f", "pll.v"], cwd=tmp,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return Path(tmp, "pll.v").read_text()


def _param(text, name):
    m = re.search(rf"\.{name}\(([^)]*)\)", text)
    return m.group(1)


@pytest.mark.parametrize("mhz", [42, 48, 30, 60, 25.125], ids=lambda f: f"{f}MHz")
def test_ice40_pll_equals_icepll(mhz):
    text = _tool("yowasp-icepll", ["-i", "12", "-o", str(mhz), "-m"])
    pll = ice40_pll(12e6, mhz * 1e6)
    want = {k: int(_param(text, k).split("'b")[-1], 2)
            for k in ("DIVR", "DIVF", "DIVQ", "FILTER_RANGE")}
    assert (pll.divr, pll.divf, pll.divq, pll.filter_range) == (
        want["DIVR"], want["DIVF"], want["DIVQ"], want["FILTER_RANGE"])
    assert pll.f_out == pytest.approx(12e6 * (pll.divf + 1) / (pll.divr + 1) / 2 ** pll.divq)
    assert 533e6 <= pll.f_vco <= 1066e6 and 10e6 <= pll.f_pfd <= 133e6


@pytest.mark.parametrize("mhz", [125, 100, 60, 50, 48], ids=lambda f: f"{f}MHz")
def test_ecp5_pll_equals_ecppll(mhz):
    text = _tool("yowasp-ecppll", ["-i", "25", "-o", str(mhz)])
    pll = ecp5_pll(25e6, mhz * 1e6)
    got = (pll.clki_div, pll.clkfb_div, pll.clkop_div, pll.clkop_cphase)
    want = tuple(int(_param(text, k)) for k in ("CLKI_DIV", "CLKFB_DIV", "CLKOP_DIV",
                                                 "CLKOP_CPHASE"))
    assert got == want
    assert 400e6 <= pll.f_vco <= 800e6


@pytest.mark.parametrize("make, error, match", [
    (lambda: ice40_pll(12e6, 900e6), ValueError, r"iCE40 PLL cannot make 900 MHz"),
    (lambda: ecp5_pll(25e6, 1e6), ValueError, r"ECP5 PLL cannot make 1 MHz"),
    (lambda: ice40_pll(0, 42e6), TypeError, r"PLL input frequency must be a positive"),
    (lambda: ecp5_pll(25e6, "fast"), TypeError, r"PLL output frequency must be a positive"),
])
def test_pll_rejects(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_every_board_has_a_pll_and_an_exact_baud(name):
    t = board(name)
    pll = board_pll(t)
    assert pll.f_in == oscillator_hz(t)
    assert abs(pll.f_out - t.clock_mhz * 1e6) <= 0.01 * t.clock_mhz * 1e6
    top = BoardTop(_tiny_program(0), target=t)
    assert top.clk_freq == pll.f_out
    assert abs(top.clk_freq / top.divisor - t.baud) / t.baud < 0.01


def _tiny_program(seed, cols=2):
    rng = np.random.default_rng(seed)
    net = random_network(rng, max_layers=2, max_size=5, max_channels=3)
    return compile_network(net, ArrayConfig(rows=2, cols=cols))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(target=3), TypeError, r"Target must be a BoardTarget or a board name, not 3"),
    (dict(target="nope"), ValueError, r"Unknown board 'nope'"),
    (dict(divisor=3), ValueError, r"UART divisor must be"),
    (dict(baud=40e6), ValueError, r"Baud rate .* is too fast"),
    (dict(gap_bits=10), ValueError, r"Gap timeout must be"),
    (dict(rx_depth=8), ValueError, r"RX FIFO depth must be"),
])
def test_top_rejects(kwargs, error, match):
    with pytest.raises(error, match=match):
        BoardTop(_tiny_program(0), **kwargs)


class TopPort:
    """A pyserial-like port to a simulated :class:`BoardTop` (platform ``None``): bytes
    written go to the ``rx`` pin, ``tx`` is decoded; the simulation runs while the host
    reads."""

    def __init__(self, top):
        self.top, self.D = top, top.divisor
        self.T = 1 / top.clk_freq
        self.now, self.timeout = 0.0, None
        self._tx, self._rx = collections.deque(), collections.deque()
        self.leds_seen = set()
        self.sim = Simulator(top)
        self.sim.add_clock(self.T)
        self.sim.add_testbench(self._driver, background=True)
        self.sim.add_testbench(self._monitor, background=True)
        self.sim.add_process(self._leds)

    async def _driver(self, ctx):
        D, T = self.D, self.T
        await ctx.delay(T / 2)
        while True:
            if not self._tx:
                await ctx.delay(D * T)
                continue
            b = self._tx.popleft()
            for level in [0] + [(b >> i) & 1 for i in range(8)] + [1]:
                ctx.set(self.top.rx, level)
                await ctx.delay(D * T)

    async def _monitor(self, ctx):
        D, T = self.D, self.T
        while True:
            await ctx.negedge(self.top.tx)
            await ctx.delay(D * T * 1.5)
            value = 0
            for bit in range(8):
                value |= ctx.get(self.top.tx) << bit
                await ctx.delay(D * T)
            assert ctx.get(self.top.tx), "tx: stop bit is 0"
            self._rx.append(value)

    async def _leds(self, ctx):
        async for (leds,) in ctx.changed(self.top.leds):
            for k, name in enumerate(LEDS):
                if leds >> k & 1:
                    self.leds_seen.add(name)

    def clock(self):
        return self.now

    def write(self, data):
        self._tx.extend(bytes(data))
        return len(data)

    def read(self, n=1):
        deadline = self.now + self.timeout
        step = 10 * self.D * self.T
        while len(self._rx) < n and self.now < deadline:
            self.now += min(step, deadline - self.now)
            self.sim.run_until(self.now)
        return bytes(self._rx.popleft() for _ in range(min(n, len(self._rx))))

    @property
    def in_waiting(self):
        return len(self._rx)

    def reset_input_buffer(self):
        self._rx.clear()

    def close(self):
        pass


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow)],
                         ids=lambda s: f"seed={s}")
def test_simulated_top_runs_bit_exact(seed):
    """The whole top (link, accelerator in its ResetInserter, LEDs) behind its rx/tx pins:
    the host identifies it, writes the weights, runs a batch and reads outputs and
    counters equal to the golden model's; a corrupted frame lights the error LED."""
    from systolic.rtl.accelerator import weight_beats
    program = _tiny_program(seed)
    net = program.network
    top = BoardTop(program, divisor=4, gap_bits=40)
    port = TopPort(top)
    link = Link(port, timeout=0.05, clock=port.clock)
    assert link.identify() == Descriptor.from_program(program)
    rng = np.random.default_rng(seed)
    x = random_input(rng, net, 2)
    out, counters = link.infer(x.reshape(2, -1).tolist(),
                               weights=weight_beats(program, net))
    want = run(net, x)
    assert np.array_equal(np.array(out), want.logits), f"seed {seed}"
    assert counters.cycles == program.cycles
    assert "busy" in port.leds_seen and "error" not in port.leds_seen
    bad = bytearray(encode_frame(COMMANDS["PING"], 7))
    bad[-1] ^= 0x40                                   # a CRC error: NAKed, LED on
    port.write(bytes(bad))
    port.timeout = 0.002
    port.read(64)
    assert "error" in port.leds_seen


def _plan(name, program):
    t = board(name)
    top = BoardTop(program, target=t)
    return top, t.platform_class()().prepare(top, name="top")


def test_icebreaker_files_have_the_pll_and_clock():
    program = compile_network(random_network(np.random.default_rng(3), max_layers=1,
                                             max_size=4, max_channels=2),
                              ArrayConfig(rows=2, cols=2, multiplier="sb_mac16"))
    top, plan = _plan("icebreaker", program)
    il = plan.files["top.il"]
    assert "SB_PLL40_PAD" in il and "SB_MAC16" in il
    pll = top.pll
    for name, value in (("DIVR", pll.divr), ("DIVF", pll.divf), ("DIVQ", pll.divq)):
        assert re.search(rf"parameter \\{name} {value}\b", il), name
    pcf = plan.files["top.pcf"]
    assert top.clk_freq == 39.75e6          # the PLL's nearest to the board's 40 MHz
    assert re.search(r"set_frequency \S+ 39\.75\b", pcf)
    assert "set_io uart_0__rx__io 6" in pcf and "set_io uart_0__tx__io 9" in pcf


def test_ulx3s_files_have_the_pll_and_clock():
    top, plan = _plan("ulx3s-25f", _tiny_program(4))
    il = plan.files["top.il"]
    assert "EHXPLLL" in il
    assert re.search(r"parameter \\CLKFB_DIV 5\b", il)
    assert re.search(r"FREQUENCY PORT|FREQUENCY NET", plan.files["top.lpf"])
    assert "125" in plan.files["top.lpf"]
