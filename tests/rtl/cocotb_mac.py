"""cocotb testbench: the SB_MAC16 primitive (yosys's ice40/cells_sim.v model) against the
Amaranth model of :class:`systolic.rtl.mac.Dual8x8`, cycle by cycle.

The top (built by tests/rtl/test_mac.py) holds two ``Dual8x8`` units on the same inputs:
``dsp`` elaborated for an iCE40 platform (the ``SB_MAC16`` instance) and ``model``
elaborated without one.  The bench drives random operands and a random clock enable,
predicts the products with a register-level model of the configuration (driver, monitor,
model, checker), and checks both units against it on every cycle.

Settings (environment): ``MAC_CYCLES`` cycles per test (default 2000).
"""

import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

CYCLES = int(os.environ.get("MAC_CYCLES", "2000"))


def lanes(value, width, count=2):
    """Split an unsigned bus value into ``count`` signed lanes of ``width`` bits."""
    out = []
    for k in range(count):
        v = (value >> (k * width)) & ((1 << width) - 1)
        out.append(v - (1 << width) if v >> (width - 1) else v)
    return out


def pack(values, width):
    return sum((int(v) & ((1 << width) - 1)) << (k * width) for k, v in enumerate(values))


class Driver:
    """Random operands every cycle (extremes often); enable high with probability 0.7."""

    def __init__(self, dut, rng):
        self.dut, self.rng = dut, rng

    def drive(self):
        rng = self.rng
        ops = rng.integers(-128, 128, 4)
        extremes = rng.random(4) < 0.2
        ops[extremes] = rng.choice([-128, 127, -1, 0], int(extremes.sum()))
        en = int(rng.random() < 0.7)
        self.dut.a.value = pack(ops[:2], 8)
        self.dut.b.value = pack(ops[2:], 8)
        self.dut.en.value = en
        return en, ops[:2], ops[2:]


class Model:
    """The configuration's registers: A/B input registers, then the product registers,
    all behind the clock enable."""

    def __init__(self):
        self.ra = self.rb = (0, 0)
        self.rp = None               # unknown until two enabled edges have passed

    def edge(self, en, a, b):
        if en:
            self.rp = tuple(int(x) * int(y) for x, y in zip(self.ra, self.rb)) \
                if self.ra is not None else None
            self.ra, self.rb = tuple(a), tuple(b)


class Bench:
    def __init__(self, dut, rng):
        self.dut, self.driver, self.model = dut, Driver(dut, rng), Model()
        self.model.ra = None
        self.checked = self.disabled = self.extreme = 0

    async def run(self, cycles):
        dut = self.dut
        dut.rst.value = 0
        for _ in range(cycles):
            en, a, b = self.driver.drive()
            await ReadOnly()
            self.check()
            await RisingEdge(dut.clk)
            self.model.edge(en, a, b)
            self.disabled += not en

    def check(self):
        """Monitor and checker: both units' outputs against the model's product register."""
        dsp = lanes(int(self.dut.p_dsp.value), 16)
        model = lanes(int(self.dut.p_model.value), 16)
        assert dsp == model, f"cycle {self.checked}: SB_MAC16 gave {dsp}, model {model}"
        if self.model.rp is not None:
            assert tuple(dsp) == self.model.rp, \
                f"SB_MAC16 gave {dsp}, expected {self.model.rp}"
            self.checked += 1
            self.extreme += 16384 in self.model.rp


@cocotb.test()
async def sb_mac16_matches_model(dut):
    """Random operands and clock enables: the primitive and the model agree every cycle."""
    Clock(dut.clk, 10, unit="ns").start()
    rng = np.random.default_rng(cocotb.RANDOM_SEED)
    bench = Bench(dut, rng)
    await bench.run(CYCLES)
    # Coverage: products were checked, the enable was low at times, and -128 * -128 (the
    # largest product, 2**14) was seen.
    assert bench.checked > CYCLES // 2, f"only {bench.checked} cycles checked"
    assert bench.disabled > 0, "the clock enable was never low"
    assert bench.extreme > 0, "-128 * -128 never happened"
