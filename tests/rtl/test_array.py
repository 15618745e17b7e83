# amaranth: UnusedElaboratable=no
"""The systolic array (rtl/array.py) against the golden model: exact matrix products for
both dataflows, every multiplier, widths at their extremes, idle/back-pressure patterns on
every port, cycle counts against the documented formulas, and every parameter rule."""

import re

import numpy as np
import pytest
from amaranth.hdl import Fragment
from amaranth.sim import Simulator
from hypothesis import given, settings
from hypothesis import strategies as st

from systolic.golden.accumulator import accumulator_width
from systolic.golden.errors import ConstraintError
from systolic.golden.ops import dense_acc
from systolic.rtl.array import (DATAFLOWS, DEFAULT_MAX_REDUCTION, INTERCONNECTS,
                                SystolicArray)
from systolic.rtl.mac import MULTIPLIERS
from systolic.sim.streams import PATTERNS, StreamLog, stream_get, stream_monitor, stream_put

SHAPES = [(1, 1), (2, 3), (4, 4), (3, 5)]


def golden_matmul(a, b):
    """``a @ b`` exactly, through the golden dense layer (a row of ``a`` is one image)."""
    return dense_acc(np.asarray(a)[:, :, None, None], np.asarray(b).T)[:, :, 0, 0]


def operands(rng, width, shape, extreme=None):
    """Random signed operands; ``extreme`` = "min" / "max" / "mixed" pins them to the ends
    of the range so sums reach the accumulator's bound."""
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    if extreme == "min":
        return np.full(shape, lo, dtype=np.int64)
    if extreme == "max":
        return np.full(shape, hi, dtype=np.int64)
    v = rng.integers(lo, hi + 1, shape)
    if extreme == "mixed":
        v = np.where(rng.random(shape) < 0.5, lo, hi)
    return v


class Transfers:
    """Cycle numbers of the transfers on a stream (a background testbench)."""

    def __init__(self, stream):
        self.stream, self.cycles = stream, []

    async def run(self, ctx):
        cycle = 0
        async for _, _, valid, ready in ctx.tick().sample(self.stream.valid,
                                                          self.stream.ready):
            if valid and ready:
                self.cycles.append(cycle)
            cycle += 1


def simulate(dut, feeds, expect_count, *, idle, stall, seed):
    """Drive every input stream of ``dut`` with ``feeds`` ({port name: payloads}), collect
    ``expect_count`` outputs; monitor every port.  Returns (outputs, logs, transfers)."""
    got, logs = [], {}
    transfers = {name: Transfers(getattr(dut, name)) for name in [*feeds, "o"]}
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    for k, (name, payloads) in enumerate(feeds.items()):
        async def source(ctx, name=name, payloads=payloads, k=k):
            await stream_put(ctx, getattr(dut, name), payloads, idle=idle, seed=seed + 10 * k)
        sim.add_testbench(source)

    async def sink(ctx):
        got.extend(await stream_get(ctx, dut.o, expect_count, stall=stall, seed=seed + 1))
        for _ in range(dut.latency + dut.rows + 4):       # nothing more comes out
            _, _, valid = await ctx.tick().sample(dut.o.valid)
            assert not valid, f"seed={seed}: an extra output"
    sim.add_testbench(sink)
    for name in [*feeds, "o"]:
        logs[name] = StreamLog()
        sim.add_testbench(stream_monitor(getattr(dut, name), logs[name], name=name),
                          background=True)
        sim.add_testbench(transfers[name].run, background=True)
    sim.run()
    return np.array([[int(v) for v in row] for row in got]), logs, transfers


def check_coverage(logs, idle, stall, inputs):
    if stall != "none":
        assert logs["o"].stalls > 0, "no back-pressure on o happened"
    if idle != "none":
        for name in inputs:
            assert logs[name].idles > 0, f"the source of {name} was never idle"


# -- output-stationary ---------------------------------------------------------------------

def run_os(rows, cols, ks, *, in_width=8, weight_width=8, multiplier="inferred",
           idle="none", stall="none", seed=0, extreme=None, max_reduction=None,
           interconnect="systolic", product_register=False, min_reduction=None):
    rng = np.random.default_rng(seed)
    dut = SystolicArray(rows=rows, cols=cols, in_width=in_width, weight_width=weight_width,
                        dataflow="os", multiplier=multiplier, max_reduction=max_reduction,
                        interconnect=interconnect, product_register=product_register,
                        min_reduction=min_reduction)
    tiles = []
    for t, k in enumerate(ks):
        ex_a, ex_b = {"min": ("min", "min"), "mixed": ("min", "max"), None: (None, None),
                      "random": ("mixed", "mixed")}[extreme]
        tiles.append((operands(rng, in_width, (rows, k), ex_a),
                      operands(rng, weight_width, (k, cols), ex_b)))
    beats = [{"a": [int(v) for v in a[:, k]], "b": [int(v) for v in b[k]],
              "last": int(k == a.shape[1] - 1)}
             for a, b in tiles for k in range(a.shape[1])]
    out, logs, transfers = simulate(dut, {"i": beats}, rows * len(tiles), idle=idle,
                                    stall=stall, seed=seed)
    out = out.reshape(len(tiles), rows, cols)
    for t, (a, b) in enumerate(tiles):
        np.testing.assert_array_equal(out[t], golden_matmul(a, b),
                                      err_msg=f"seed={seed} tile {t} (K={a.shape[1]})")
    check_coverage(logs, idle, stall, ["i"])
    return dut, tiles, out, transfers


def ks_for(rows):
    # K = 1, K < R, K = R, K > R, long; back to back (a short tile right after a long one)
    return sorted({1, max(1, rows - 1), rows, rows + 1}) + [9, 1, 2]


@pytest.mark.parametrize("interconnect", INTERCONNECTS)
@pytest.mark.parametrize("multiplier", MULTIPLIERS)
@pytest.mark.parametrize("rows, cols", SHAPES, ids=[f"{r}x{c}" for r, c in SHAPES])
def test_os_matches_golden(rows, cols, multiplier, interconnect):
    run_os(rows, cols, ks_for(rows), multiplier=multiplier, seed=100 + 10 * rows + cols,
           interconnect=interconnect)


def pattern_cases():
    """Every (idle, stall) pair, each on one of the shapes in turn (all shapes covered)."""
    cases = []
    for k, (idle, stall) in enumerate((i, s) for i in PATTERNS for s in PATTERNS):
        rows, cols = SHAPES[k % len(SHAPES)]
        cases.append(pytest.param(rows, cols, idle, stall,
                                  id=f"{rows}x{cols}-idle={idle}-stall={stall}"))
    return cases


@pytest.mark.parametrize("interconnect", INTERCONNECTS + ("systolic-product",))
@pytest.mark.parametrize("rows, cols, idle, stall", pattern_cases())
def test_os_back_pressure(rows, cols, idle, stall, interconnect):
    seed = 200 + PATTERNS.index(idle) * 5 + PATTERNS.index(stall)
    interconnect, _, product = interconnect.partition("-")
    run_os(rows, cols, ks_for(rows) * 3, idle=idle, stall=stall,
           seed=seed + 50 * INTERCONNECTS.index(interconnect) + 7 * bool(product),
           multiplier=MULTIPLIERS[seed % 3], interconnect=interconnect,
           product_register=bool(product))


WIDTH_CASES = [(2, 2, "inferred"), (2, 2, "sb_mac16"), (16, 16, "inferred"),
               (16, 16, "lut"), (16, 2, "lut"), (8, 8, "sb_mac16"), (2, 16, "inferred")]


@pytest.mark.parametrize("interconnect", INTERCONNECTS)
@pytest.mark.parametrize("extreme", ["min", "mixed", "random"])
@pytest.mark.parametrize("in_width, weight_width, multiplier", WIDTH_CASES,
                         ids=[f"{a}x{b}-{m}" for a, b, m in WIDTH_CASES])
def test_os_extreme_widths(in_width, weight_width, multiplier, extreme, interconnect):
    """Operands at their extremes, K at the array's maximum reduction, the accumulator at
    its minimum width: the sums reach the bound of the accumulator exactly."""
    k = 6
    seed = 300 + in_width + weight_width
    dut, tiles, out, _ = run_os(3, 2, [k] * 4, in_width=in_width, weight_width=weight_width,
                                multiplier=multiplier, extreme=extreme, seed=seed,
                                idle="p0.5", stall="p0.5", max_reduction=k,
                                interconnect=interconnect)
    bound = k << (in_width + weight_width - 2)
    assert dut.acc_width == accumulator_width(in_width, weight_width, k)
    if extreme == "min":
        assert (out == bound).all()          # the largest sum the contract allows
        assert bound > (1 << (dut.acc_width - 2)) - 1     # it needs the top bit
    if extreme == "mixed":
        assert out.min() == -k * (1 << (in_width - 1)) * ((1 << (weight_width - 1)) - 1)


def test_os_cycles_and_utilization():
    """R = C = 4, K = 64, 8 tiles back to back: cycles match the documented formula."""
    rows = cols = 4
    k, tiles = 64, 8
    dut, _, _, transfers = run_os(rows, cols, [k] * tiles, seed=400)
    first, last = transfers["i"].cycles[0], transfers["o"].cycles[-1]
    cycles = last - first + 1
    assert cycles == dut.os_cycles(tiles, k) == 526
    # one input beat per cycle while a tile streams
    assert transfers["i"].cycles == list(range(first, first + tiles * k))
    utilization = tiles * k / cycles
    assert utilization >= 0.9, utilization
    print(f"R=C=4, K=64, 8 tiles: {cycles} cycles, utilization {utilization:.1%}")


@pytest.mark.parametrize("interconnect", INTERCONNECTS + ("systolic-product",))
@pytest.mark.parametrize("rows, cols, k, tiles", [(4, 4, 2, 6), (3, 5, 16, 4), (1, 1, 1, 5),
                                                  (4, 4, 4, 4), (8, 2, 3, 5)])
def test_os_cycles_formula(rows, cols, k, tiles, interconnect):
    """Tile period max(K, R) (short tiles are held back until the drain has passed);
    the first row leaves `latency` cycles after a tile's last beat (R + C + 3 systolic,
    3 broadcast, one more with the PEs' product register)."""
    interconnect, _, product = interconnect.partition("-")
    dut, _, _, transfers = run_os(rows, cols, [k] * tiles, seed=410 + k,
                                  interconnect=interconnect, product_register=bool(product))
    assert dut.latency == (3 if interconnect == "broadcast" else rows + cols + 3) + \
        bool(product)
    first = transfers["i"].cycles[0]
    assert transfers["o"].cycles[-1] - first + 1 == dut.os_cycles(tiles, k)
    last_beats = transfers["i"].cycles[k - 1::k]
    assert np.diff(last_beats).tolist() == [dut.tile_period(k)] * (tiles - 1)
    firsts = transfers["o"].cycles[::rows]
    assert [f - b for f, b in zip(firsts, last_beats)] == [dut.latency] * tiles


@pytest.mark.parametrize("interconnect", INTERCONNECTS)
@pytest.mark.parametrize("rows, cols", [(4, 2), (8, 2), (3, 3)], ids=["4x2", "8x2", "3x3"])
def test_os_min_reduction_without_tile_rule(rows, cols, interconnect):
    """Tiles of at least R beats (``min_reduction = R``): no hold-back logic, still bit-exact
    back to back and under back-pressure, and with the output always taken the input is
    never refused."""
    ks = [rows, rows + 3, rows, 2 * rows, rows]
    seed = 420 + rows + cols
    dut, _, _, transfers = run_os(rows, cols, ks, seed=seed, interconnect=interconnect,
                                  min_reduction=rows)
    assert dut.min_reduction == rows
    first = transfers["i"].cycles[0]
    assert transfers["i"].cycles == list(range(first, first + sum(ks))), f"seed={seed}"
    run_os(rows, cols, ks * 3, seed=seed + 1, interconnect=interconnect, idle="p0.5",
           stall="p0.5", min_reduction=rows)


# -- weight-stationary ---------------------------------------------------------------------

def run_ws(rows, cols, blocks, *, in_width=8, weight_width=8, multiplier="inferred",
           idle="none", stall="none", seed=0, extreme=None):
    rng = np.random.default_rng(seed)
    dut = SystolicArray(rows=rows, cols=cols, in_width=in_width, weight_width=weight_width,
                        dataflow="ws", multiplier=multiplier)
    ex_x, ex_w = {"min": ("min", "min"), "mixed": ("min", "max"), None: (None, None),
                  "random": ("mixed", "mixed")}[extreme]
    work = [(operands(rng, weight_width, (rows, cols), ex_w),
             operands(rng, in_width, (n, rows), ex_x)) for n in blocks]
    w_beats = [[int(v) for v in w[r]] for w, _ in work for r in range(rows)]
    x_beats = [{"a": [int(v) for v in x[n]], "first": int(n == 0)}
               for _, x in work for n in range(len(x))]
    out, logs, transfers = simulate(dut, {"w": w_beats, "i": x_beats}, len(x_beats),
                                    idle=idle, stall=stall, seed=seed)
    expect = np.concatenate([golden_matmul(x, w) for w, x in work])
    np.testing.assert_array_equal(out, expect, err_msg=f"seed={seed}")
    check_coverage(logs, idle, stall, ["i", "w"])
    return dut, work, out, transfers


def blocks_for(rows, cols):
    # one-beat blocks (the next load waits for the switch), then blocks long enough to
    # hide the next load (2R + C - 1 beats)
    return [1, 3, 2 * rows + cols - 1, 1, 2 * rows + cols + 3]


@pytest.mark.parametrize("multiplier", MULTIPLIERS)
@pytest.mark.parametrize("rows, cols", SHAPES, ids=[f"{r}x{c}" for r, c in SHAPES])
def test_ws_matches_golden(rows, cols, multiplier):
    run_ws(rows, cols, blocks_for(rows, cols), multiplier=multiplier,
           seed=500 + 10 * rows + cols)


@pytest.mark.parametrize("rows, cols, idle, stall", pattern_cases())
def test_ws_back_pressure(rows, cols, idle, stall):
    seed = 600 + PATTERNS.index(idle) * 5 + PATTERNS.index(stall)
    run_ws(rows, cols, blocks_for(rows, cols) * 2, idle=idle, stall=stall, seed=seed,
           multiplier=MULTIPLIERS[seed % 3])


@pytest.mark.parametrize("extreme", ["min", "mixed", "random"])
@pytest.mark.parametrize("in_width, weight_width, multiplier", WIDTH_CASES,
                         ids=[f"{a}x{b}-{m}" for a, b, m in WIDTH_CASES])
def test_ws_extreme_widths(in_width, weight_width, multiplier, extreme):
    rows = 4
    seed = 700 + in_width + weight_width
    dut, _, out, _ = run_ws(rows, 3, [5, 2, 4], in_width=in_width,
                            weight_width=weight_width, multiplier=multiplier,
                            extreme=extreme, seed=seed, idle="p0.5", stall="p0.5")
    assert dut.acc_width == accumulator_width(in_width, weight_width, rows)
    if extreme == "min":
        assert (out == rows << (in_width + weight_width - 2)).all()


def test_ws_cycles_and_utilization():
    """A block loads in R beats; then N beats stream at one per cycle, the last output
    `latency` cycles after the last beat; the next block loads while the first computes,
    and switches with no bubble."""
    rows = cols = 4
    n = 64
    dut, _, _, transfers = run_ws(rows, cols, [n, n], seed=800)
    w, i, o = transfers["w"].cycles, transfers["i"].cycles, transfers["o"].cycles
    first = i[0]
    assert first == w[rows - 1] + 1                       # waits for the first block only
    assert i == list(range(first, first + 2 * n))          # no bubble at the switch
    assert o[0] - first == dut.latency
    cycles = o[-1] - first + 1
    assert cycles == 2 * n + dut.latency
    utilization = 2 * n / cycles
    assert utilization >= 0.9, utilization
    print(f"WS R=C=4, 2 blocks of 64 beats: {cycles} cycles, utilization {utilization:.1%}")


def test_ws_shortest_block_without_bubble():
    """Blocks of 2R + C - 1 beats: each next block loads in time, no input bubble."""
    rows, cols = 3, 2
    n = 2 * rows + cols - 1
    dut, _, _, transfers = run_ws(rows, cols, [n] * 4, seed=810)
    i = transfers["i"].cycles
    assert i == list(range(i[0], i[0] + 4 * n))
    # one beat shorter: the switch waits one cycle for the block
    dut, _, _, transfers = run_ws(rows, cols, [n - 1] * 3, seed=811)
    i = transfers["i"].cycles
    assert i[-1] - i[0] + 1 == 3 * (n - 1) + 2


def test_sb_mac16_array_packs_two_pes_per_dsp():
    from amaranth.back import rtlil
    from amaranth_boards.icebreaker import ICEBreakerPlatform
    text = rtlil.convert(SystolicArray(rows=3, cols=3, multiplier="sb_mac16", dataflow="ws"),
                         platform=ICEBreakerPlatform())
    assert len(re.findall(r"cell \\SB_MAC16 ", text)) == 5       # 9 PEs
    text = rtlil.convert(SystolicArray(rows=8, cols=2, multiplier="sb_mac16",
                                       interconnect="broadcast"),
                         platform=ICEBreakerPlatform())
    assert len(re.findall(r"cell \\SB_MAC16 ", text)) == 8       # 16 PEs


# -- parameters ----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, message", [
    ({"rows": 0}, TypeError, "Array rows must be a positive integer, not 0"),
    ({"rows": 4.0}, TypeError, "Array rows must be a positive integer, not 4.0"),
    ({"rows": 33}, ValueError, "Array rows must be at most 32, not 33"),
    ({"cols": False}, TypeError, "Array columns must be a positive integer, not False"),
    ({"cols": 40}, ValueError, "Array columns must be at most 32, not 40"),
    ({"in_width": -8}, TypeError, "Input width must be a positive integer, not -8"),
    ({"in_width": 1}, ValueError, "Input width must be between 2 and 16, not 1"),
    ({"weight_width": None}, TypeError, "Weight width must be a positive integer, not None"),
    ({"weight_width": 17}, ValueError, "Weight width must be between 2 and 16, not 17"),
    ({"dataflow": 1}, TypeError, "Dataflow must be a string, not 1"),
    ({"dataflow": "is"}, ValueError, "Dataflow must be one of 'os', 'ws', not 'is'"),
    ({"multiplier": b"lut"}, TypeError, "Multiplier must be a string, not b'lut'"),
    ({"multiplier": "dsp"}, ValueError,
     "Multiplier must be one of 'inferred', 'lut', 'sb_mac16', not 'dsp'"),
    ({"multiplier": "sb_mac16", "in_width": 12}, ValueError,
     "The sb_mac16 multiplier packs two 8x8 products per DSP; Input width must be at most "
     "8, not 12"),
    ({"interconnect": 2}, TypeError, "Interconnect must be a string, not 2"),
    ({"interconnect": "mesh"}, ValueError,
     "Interconnect must be one of 'systolic', 'broadcast', not 'mesh'"),
    ({"interconnect": "broadcast", "dataflow": "ws"}, ValueError,
     "A broadcast interconnect needs the output-stationary dataflow, not 'ws'"),
    ({"max_reduction": 0}, TypeError, "Maximum reduction must be a positive integer, not 0"),
    ({"dataflow": "ws", "max_reduction": 3}, ValueError,
     "Maximum reduction of a weight-stationary array must be at least its 4 rows, not 3"),
    ({"min_reduction": 0}, TypeError, "Minimum reduction must be a positive integer, not 0"),
    ({"min_reduction": 1025}, ValueError,
     "Minimum reduction 1025 is over the maximum reduction 1024"),
    ({"dataflow": "ws", "min_reduction": 4}, ValueError,
     "Minimum reduction applies to the output-stationary dataflow only"),
    ({"acc_width": "24"}, TypeError, "Accumulator width must be a positive integer, not '24'"),
    ({"acc_width": 20}, ConstraintError, "Accumulator width 20 is too narrow: 8-bit inputs x "
     "8-bit weights over 1024 products need 26 bits"),
    ({"dataflow": "ws", "acc_width": 17}, ConstraintError, "Accumulator width 17 is too "
     "narrow: 8-bit inputs x 8-bit weights over 4 products need 18 bits"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_parameter_errors(kwargs, error, message):
    kwargs = {"rows": 4, "cols": 4, **kwargs}
    with pytest.raises(error, match=re.escape(message)):
        SystolicArray(**kwargs)


def test_defaults_and_properties():
    dut = SystolicArray(rows=2, cols=3)
    assert (dut.rows, dut.cols, dut.in_width, dut.weight_width, dut.dataflow,
            dut.multiplier, dut.max_reduction) == (2, 3, 8, 8, "os", "inferred",
                                                   DEFAULT_MAX_REDUCTION)
    assert dut.acc_width == accumulator_width(8, 8, DEFAULT_MAX_REDUCTION) == 26
    assert dut.latency == 2 + 3 + 3
    assert not hasattr(dut, "w")
    ws = SystolicArray(rows=4, cols=2, dataflow="ws", in_width=4, weight_width=3,
                       acc_width=40)
    assert (ws.max_reduction, ws.acc_width) == (4, 40) and hasattr(ws, "w")
    with pytest.raises(AttributeError):
        ws.rows = 8


@pytest.mark.slow
def test_largest_array_elaborates():
    Fragment.get(SystolicArray(rows=32, cols=32, dataflow="ws", multiplier="lut"), None)


_int = st.one_of(st.integers(-2, 6), st.sampled_from([16, 17, 32, 33]),
                 st.sampled_from([None, 4.0, "4", True]))


@settings(max_examples=200, deadline=None)
@given(rows=_int, cols=_int, in_width=_int, weight_width=_int,
       dataflow=st.one_of(st.sampled_from(DATAFLOWS), st.sampled_from(["x", 0])),
       multiplier=st.one_of(st.sampled_from(MULTIPLIERS), st.sampled_from(["x", None])),
       max_reduction=st.one_of(st.none(), st.integers(-1, 2000)),
       acc_width=st.one_of(st.none(), st.integers(-1, 48), st.just("x")))
def test_constructor_fuzz(rows, cols, in_width, weight_width, dataflow, multiplier,
                          max_reduction, acc_width):
    try:
        dut = SystolicArray(rows=rows, cols=cols, in_width=in_width,
                            weight_width=weight_width, dataflow=dataflow,
                            multiplier=multiplier, max_reduction=max_reduction,
                            acc_width=acc_width)
    except (TypeError, ValueError):       # ConstraintError is a ValueError
        return
    assert dut.acc_width >= accumulator_width(dut.in_width, dut.weight_width,
                                              dut.max_reduction)
    if dut.rows * dut.cols <= 64:         # larger ones: test_largest_array_elaborates
        Fragment.get(dut, None)
