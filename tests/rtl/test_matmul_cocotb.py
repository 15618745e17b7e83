# amaranth: UnusedElaboratable=no
"""The array with its requantization lanes (rtl/matmul.py) under cocotb: random matrix
products, bit-exact against the golden model, for both dataflows, under Verilator (and a
short run under Icarus).  The bench is tests/rtl/cocotb_matmul.py.

Products per run are split over the bench's four idle/back-pressure patterns; in total
1,200 products under Verilator (600 per dataflow) and 40 under Icarus.
"""

import shutil
from pathlib import Path

import pytest

from systolic.rtl.matmul import RequantizedArray
from systolic.sim.runner import run_cocotb

HERE = Path(__file__).parent

# (dataflow, rows, cols, products, seed)
RUNS = [("os", 4, 4, 300, 11), ("os", 3, 5, 300, 12),
        ("ws", 4, 4, 300, 13), ("ws", 3, 5, 300, 14)]


def run(dataflow, rows, cols, products, seed, simulator="verilator"):
    dut = RequantizedArray(rows=rows, cols=cols, dataflow=dataflow, out_width=8)
    env = {"MM_ROWS": str(rows), "MM_COLS": str(cols), "MM_DATAFLOW": dataflow,
           "MM_OUT_WIDTH": "8", "MM_PRODUCTS": str(products), "MM_KMAX": "12"}
    print(f"cocotb_matmul: {dataflow} {rows}x{cols} {simulator}, {products} products, "
          f"seed={seed}")
    results = run_cocotb(dut, test_module="cocotb_matmul", python_path=[HERE],
                         simulator=simulator, extra_env=env, seed=seed)
    print(f"  built={results.built} build {results.build_seconds:.1f} s, "
          f"test {results.test_seconds:.1f} s")
    results.assert_passed()
    assert len(results.cases) == 4, [c.name for c in results.cases]


@pytest.mark.slow
@pytest.mark.parametrize("dataflow, rows, cols, products, seed", RUNS,
                         ids=[f"{d}-{r}x{c}-seed={s}" for d, r, c, _, s in RUNS])
def test_products_verilator(dataflow, rows, cols, products, seed):
    run(dataflow, rows, cols, products, seed)


def test_product_count():
    assert sum(p for *_, p, _ in RUNS) >= 1000
    for flow in ("os", "ws"):
        assert sum(p for d, *_, p, _ in RUNS if d == flow) >= 500


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("iverilog") is None,
                    reason="Icarus Verilog is not installed (apt-get install iverilog)")
@pytest.mark.parametrize("dataflow", ["os", "ws"])
def test_products_icarus(dataflow):
    run(dataflow, 3, 5, 20, 21, simulator="icarus")


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(rows=0, cols=4), TypeError, "Array rows must be a positive integer, not 0"),
    (dict(rows=4, cols=33), ValueError, "Array columns must be at most 32, not 33"),
    (dict(rows=4, cols=4, in_width=17), ValueError, "Input width"),
    (dict(rows=4, cols=4, dataflow="xs"), ValueError, "Dataflow must be one of"),
    (dict(rows=4, cols=4, out_width=1), ValueError, "Output width must be between 2 and 16, "
                                                    "not 1"),
    (dict(rows=4, cols=4, stochastic=1), TypeError, "Stochastic must be a bool, not 1"),
], ids=["rows", "cols", "in_width", "dataflow", "out_width", "stochastic"])
def test_parameter_rules(kwargs, error, match):
    with pytest.raises(error, match=match):
        RequantizedArray(**kwargs)


@pytest.mark.parametrize("dataflow", ["os", "ws"])
def test_interface(dataflow):
    dut = RequantizedArray(rows=3, cols=5, dataflow=dataflow, stochastic=False)
    fields = set(dut.i.payload.shape().members)
    assert {"bias", "index"} <= fields
    assert ("w" in dut.signature.members) == (dataflow == "ws")
    assert ("row_stride" in dut.signature.members) == (dataflow == "os")
    assert dut.latency == 3 + 5 + 3 + 4
    assert (dut.rows, dut.cols, dut.dataflow, dut.stochastic) == (3, 5, dataflow, False)
