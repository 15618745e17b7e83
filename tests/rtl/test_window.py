# amaranth: UnusedElaboratable=no
"""The convolution window generator (rtl/window.py) against golden ``ops.conv2d_acc``.

Golden's patches are read out of ``conv2d_acc`` itself: with the identity weight
``eye(C*kh*kw).reshape(C*kh*kw, C, kh, kw)`` its output channel ``j`` at ``(oh, ow)`` is
element ``j`` of that position's patch in the order of ``weight.reshape(O, C*kh*kw)``.
"""

import numpy as np
import pytest
from amaranth.hdl import Fragment
from amaranth.sim import Simulator
from hypothesis import event, given, settings
from hypothesis import strategies as st

from systolic.golden import ops
from systolic.golden.errors import ConstraintError
from systolic.golden.ir import resolve_padding
from systolic.rtl.window import Window
from systolic.sim.streams import PATTERNS, stream_get, stream_put, stream_through

#: (C, H, W) maps: 1x1, 2x3, 4x4 and non-square ones.
SHAPES = ((1, 1, 1), (1, 2, 3), (2, 4, 4), (3, 5, 3), (1, 3, 8), (2, 7, 7))
PATTERN_PAIRS = tuple(zip(PATTERNS, PATTERNS[2:] + PATTERNS[:2]))
MAX = dict(max_channels=3, max_height=8, max_width=8)


def golden_patches(x, kh, kw, stride, padding):
    """``(N, Ho, Wo, C*kh*kw)``: every patch, flattened (C, kh, kw), from ``conv2d_acc``."""
    c = x.shape[1]
    eye = np.eye(c * kh * kw, dtype=np.int64).reshape(c * kh * kw, c, kh, kw)
    return ops.conv2d_acc(x, eye, stride=stride, padding=padding).transpose(0, 2, 3, 1)


def nonzero_map(rng, shape, width):
    """Values without zeros, so a padding zero can never pass for map data."""
    hi = 1 << (width - 1)
    return rng.integers(1, hi, shape) * rng.choice([-1, 1], shape)


def simulate(dut, config, maps, beats, *, idle="none", stall="none", seed=0):
    """Load each map of ``maps`` and collect ``beats`` output beats per map; return
    (values ``(beats_total, max_kernel)``, first flags, last flags, input log, output log)."""
    total = beats * len(maps)

    async def setup(ctx):
        ctx.set(dut.config, config)

    out, log_i, log_o = stream_through(dut, [{"value": int(v)} for v in np.ravel(maps)], total,
                                       idle=idle, stall=stall, seed=seed, setup=setup)
    values = np.array([[p.values[s] for s in range(dut.max_kernel)] for p in out],
                      dtype=np.int64).reshape(total, dut.max_kernel)
    first = np.array([p.first for p in out], dtype=bool)
    last = np.array([p.last for p in out], dtype=bool)
    return values, first, last, log_i, log_o


def check_run(dut, x, kh, kw, stride, padding, *, idle, stall, seed, passes=1):
    """Stream the maps of ``x`` through ``dut`` and compare every beat with golden."""
    n, c, h, w = x.shape
    config = dut.layer_config(channels=c, height=h, width=w, kernel=(kh, kw), stride=stride,
                              padding=padding, passes=passes)
    expected = golden_patches(x, kh, kw, stride, padding)           # (N, Ho, Wo, C*kh*kw)
    _, ho, wo, _ = expected.shape
    beats = passes * ho * wo * c * kh
    values, first, last, log_i, log_o = simulate(dut, config, x, beats, idle=idle,
                                                  stall=stall, seed=seed)
    why = f"seed={seed} map={x.shape[1:]} kernel={kh}x{kw} stride={stride} pad={padding}"
    # beats: (image, pass, oh, ow, c, r) -> lanes s < kw hold patch element (c, r, s)
    got = values[:, :kw].reshape(n, passes, ho, wo, c * kh * kw)
    for p in range(passes):
        np.testing.assert_array_equal(got[:, p], expected, err_msg=why)
    assert not values[:, kw:].any(), why                         # unused lanes are zero
    per_patch = np.zeros(c * kh, dtype=bool)
    np.testing.assert_array_equal(first, np.tile(np.r_[True, per_patch[1:]], beats // (c * kh)
                                                 * n), err_msg=why)
    np.testing.assert_array_equal(last, np.tile(np.r_[per_patch[1:], True], beats // (c * kh)
                                                * n), err_msg=why)
    # the patches are what conv2d_acc multiplies: any weight gives golden's sums
    weight = np.random.default_rng(seed).integers(-8, 8, (3, c, kh, kw))
    np.testing.assert_array_equal(
        got[:, 0] @ weight.reshape(3, -1).T,
        ops.conv2d_acc(x, weight, stride=stride, padding=padding).transpose(0, 2, 3, 1),
        err_msg=why)
    if stall != "none":
        assert log_o.stalls > 0, why
    if idle != "none":
        assert log_i.idles > 0, why
    return config


PADDINGS = ("valid", "same", "explicit")


def choose_case(kernel, stride, padding, seed):
    """A map from SHAPES (rotating with the case) and, for ``explicit``, random pads, such
    that the kernel fits."""
    rng = np.random.default_rng([seed, kernel, stride, PADDINGS.index(padding)])
    start = kernel + stride + PADDINGS.index(padding)
    for j in range(len(SHAPES)):
        shape = SHAPES[(start + j) % len(SHAPES)]
        pads = tuple(int(v) for v in rng.integers(0, kernel, 4)) if padding == "explicit" \
            else padding
        t, b, l, r = resolve_padding(pads, shape[1:], (kernel, kernel), stride)
        if shape[1] + t + b >= kernel and shape[2] + l + r >= kernel:
            return shape, pads
    pytest.fail("no map fits")


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("stride", [1, 2], ids=lambda s: f"stride={s}")
@pytest.mark.parametrize("kernel", range(1, 8), ids=lambda k: f"k={k}")
def test_patches_match_golden(kernel, stride, padding):
    seed = 100 * kernel + 10 * stride + PADDINGS.index(padding)
    shape, pads = choose_case(kernel, stride, padding, seed)
    rng = np.random.default_rng(seed)
    idle, stall = PATTERN_PAIRS[(kernel + stride + PADDINGS.index(padding))
                                % len(PATTERN_PAIRS)]
    width = int(rng.integers(2, 17))
    x = nonzero_map(rng, (2, *shape), width)                       # two maps back to back
    dut = Window(width=width, **MAX)
    config = check_run(dut, x, kernel, kernel, stride, pads, idle=idle, stall=stall,
                       seed=seed)
    if padding != "valid" and (config["top"] or config["left"]):
        assert np.any(golden_patches(x, kernel, kernel, stride, pads) == 0)  # zeros inserted


@pytest.mark.parametrize("kh, kw", [(1, 3), (3, 1), (2, 5), (7, 4), (4, 7)],
                         ids=lambda k: str(k))
@pytest.mark.parametrize("stride", [1, 2], ids=lambda s: f"stride={s}")
def test_rectangular_kernels(kh, kw, stride):
    seed = 7 * kh + kw + stride
    rng = np.random.default_rng(seed)
    x = nonzero_map(rng, (1, 2, 5, 6), 8)
    dut = Window(width=8, max_kernel=7, **MAX)
    check_run(dut, x, kh, kw, stride, "same", idle="p0.5", stall="1110", seed=seed)


@pytest.mark.parametrize("stride", [1, 2], ids=lambda s: f"stride={s}")
def test_largest_map_with_most_padding(stride):
    """The unit's limits: the largest map, the largest kernel, padding of kernel-1 on every
    side (an output larger than the map)."""
    seed = 53 + stride
    rng = np.random.default_rng(seed)
    x = nonzero_map(rng, (1, 2, 7, 9), 4)
    dut = Window(width=4, max_kernel=7, max_channels=2, max_height=7, max_width=9)
    check_run(dut, x, 7, 7, stride, (6, 6, 6, 6), idle="none", stall="none", seed=seed)


def test_passes_repeat_the_patches():
    seed = 41
    rng = np.random.default_rng(seed)
    x = nonzero_map(rng, (2, 2, 4, 5), 6)
    dut = Window(width=6, max_kernel=3, **MAX)
    check_run(dut, x, 3, 3, 1, "same", idle="p0.1", stall="p0.5", seed=seed, passes=3)


@pytest.mark.parametrize("stall", PATTERNS)
@pytest.mark.parametrize("idle", PATTERNS)
def test_every_pattern_pair(idle, stall):
    seed = 43
    rng = np.random.default_rng(seed)
    x = nonzero_map(rng, (2, 2, 3, 4), 8)
    dut = Window(width=8, max_kernel=3, **MAX)
    check_run(dut, x, 3, 3, 2, "same", idle=idle, stall=stall, seed=seed)


def test_runtime_reconfiguration():
    """One unit, three layers of different maps, kernels, strides and paddings."""
    seed = 47
    rng = np.random.default_rng(seed)
    dut = Window(width=8, max_kernel=5, **MAX)
    layers = [((2, 6, 7), 5, 2, "same"), ((3, 4, 4), 1, 1, "valid"), ((1, 8, 8), 3, 1, 1)]
    xs = [nonzero_map(rng, (1, *shape), 8) for shape, *_ in layers]
    expected = [golden_patches(x, k, k, s, p) for x, (_, k, s, p) in zip(xs, layers)]
    outs, drained = [], []

    async def source(ctx):
        for j, ((c, h, w), k, s, p) in enumerate(layers):
            ctx.set(dut.config, dut.layer_config(channels=c, height=h, width=w, kernel=k,
                                                 stride=s, padding=p))
            await stream_put(ctx, dut.i, [{"value": int(v)} for v in xs[j].ravel()],
                             idle="p0.1", seed=j)
            while len(drained) <= j:
                await ctx.tick()

    async def sink(ctx):
        for ((c, _, _), k, _, _), e in zip(layers, expected):
            got = await stream_get(ctx, dut.o, e[0, :, :, 0].size * c * k, stall="p0.5",
                                   seed=seed)
            outs.append(np.array([[p.values[s] for s in range(k)] for p in got]))
            drained.append(True)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run()
    for got, e in zip(outs, expected):
        np.testing.assert_array_equal(got.reshape(e.shape), e, err_msg=f"seed={seed}")


@pytest.mark.parametrize("passes", [1, 2])
def test_latency_and_throughput(passes):
    """Load one value per cycle; the first beat ``latency`` cycles after the last value;
    then one beat per cycle with no bubble, for ``passes * Ho * Wo * C * kh`` cycles."""
    c, h, w, k = 2, 4, 5, 3
    dut = Window(width=8, max_kernel=3, **MAX)
    config = dut.layer_config(channels=c, height=h, width=w, kernel=k, stride=1,
                              padding="same", passes=passes)
    beats = passes * h * w * c * k
    n_in = c * h * w
    seen_valid, seen_ready = [], []

    async def bench(ctx):
        ctx.set(dut.config, config)
        ctx.set(dut.o.ready, 1)
        for t in range(n_in + dut.latency + beats + 3):
            ctx.set(dut.i.payload, {"value": 1})
            ctx.set(dut.i.valid, int(t < n_in))
            _, _, valid, ready = await ctx.tick().sample(dut.o.valid, dut.i.ready)
            if valid:
                seen_valid.append(t)
            if ready:
                seen_ready.append(t)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    last_in = n_in - 1
    assert seen_valid == list(range(last_in + dut.latency, last_in + dut.latency + beats))
    # ready in the load phase only, back as soon as the last beat is issued
    assert seen_ready[:n_in] == list(range(n_in))
    assert seen_ready[n_in] == last_in + dut.latency + beats - 1


# --- parameters -------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, message", [
    (dict(width=None), TypeError, r"Window value width must be a positive integer, not None"),
    (dict(width=1), ValueError, r"Window value width must be between 2 and 16, not 1"),
    (dict(width=17), ValueError, r"Window value width must be between 2 and 16, not 17"),
    (dict(max_kernel=0), TypeError, r"Window kernel must be a positive integer, not 0"),
    (dict(max_kernel=8), ValueError, r"Window kernel must be between 1 and 7, not 8"),
    (dict(max_channels=2.5), TypeError, r"Window channels must be a positive integer, "
                                        r"not 2.5"),
    (dict(max_height=0), TypeError, r"Window map height must be a positive integer, not 0"),
    (dict(max_width=False), TypeError, r"Window map width must be a positive integer, "
                                       r"not False"),
])
def test_parameter_rules(kwargs, error, message):
    with pytest.raises(error, match=message):
        Window(**{"width": 8, **kwargs})


@pytest.mark.parametrize("max_kernel, banks", [(1, 1), (2, 2), (3, 4), (4, 4), (5, 8),
                                               (7, 8)])
def test_parameters_are_read_only_properties(max_kernel, banks):
    dut = Window(width=5, max_kernel=max_kernel, max_channels=3, max_height=6, max_width=10)
    assert (dut.width, dut.max_kernel, dut.max_channels, dut.max_height, dut.max_width,
            dut.banks, dut.bank_depth) == (5, max_kernel, 3, 6, 10, banks,
                                           3 * 6 * -(-10 // banks))
    with pytest.raises(AttributeError):
        dut.width = 6


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(channels=0), TypeError, r"Window channels must be a positive integer, not 0"),
    (dict(height="3"), TypeError, r"Window height must be a positive integer, not '3'"),
    (dict(kernel=(3, 0)), TypeError, r"Window kernel width must be a positive integer, "
                                     r"not 0"),
    (dict(passes=0), TypeError, r"Window passes must be a positive integer, not 0"),
    (dict(stride=3), ValueError, r"Window stride must be 1 or 2, not 3"),
    (dict(kernel=6), ConstraintError, r"A 6x6 kernel exceeds the unit's maximum 5x5"),
    (dict(width=9), ConstraintError, r"A 2x6x9 map exceeds the unit's maximum 3x8x8"),
    (dict(padding=(0, 3, 0, 0)), ValueError, r"Window padding \(0, 3, 0, 0\) must be between "
                                             r"0 and kernel-1 on each side"),
    (dict(height=1, padding="valid"), ValueError, r"A 3x3 kernel with padding \(0, 0, 0, 0\) "
                                                  r"does not fit the 1x6 map"),
    (dict(padding="full"), TypeError, r"Padding must be an integer or a tuple of 4 integers"),
])
def test_layer_config_rules(kwargs, error, message):
    dut = Window(width=8, max_kernel=5, **MAX)
    params = dict(channels=2, height=6, width=6, kernel=3, stride=1, padding="same")
    with pytest.raises(error, match=message):
        dut.layer_config(**{**params, **kwargs})


def test_layer_config_values():
    dut = Window(width=8, max_kernel=7, **MAX)     # 8 banks
    assert dut.layer_config(channels=3, height=5, width=7, kernel=(3, 5), stride=2,
                            padding="same") == {
        "channels": 3, "height": 5, "width": 7, "kh": 3, "kw": 5, "stride": 2,
        "top": 1, "left": 2, "out_height": 3, "out_width": 4, "passes": 1,
        "row_words": 1, "plane_words": 5, "start_row": -1}


_BAD = st.one_of(st.integers(-3, 40), st.sampled_from([None, True, 2.0, "8"]))


@st.composite
def param(draw, valid):
    """Nine draws in ten valid, otherwise anything."""
    return draw(_BAD) if draw(st.integers(0, 9)) == 0 else draw(valid)


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({
    "width": param(st.integers(2, 16)),
    "max_kernel": param(st.integers(1, 7)),
    "max_channels": param(st.integers(1, 6)),
    "max_height": param(st.integers(1, 12)),
    "max_width": param(st.integers(1, 12)),
}))
def test_constructor_fuzz(kwargs):
    """Any parameters either build a unit that elaborates, or raise TypeError/ValueError."""
    try:
        dut = Window(**kwargs)
    except (TypeError, ValueError) as exc:
        event(type(exc).__name__)
        return
    event("built")
    Fragment.get(dut, None)
