"""Requantization and rounding (golden/rounding.py) and Q formats (golden/qformat.py).

Expected values are written out as integers, or computed with exact Python integers and
``fractions.Fraction`` from DESIGN.md section 3, never by the functions under test.
"""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from systolic.golden import rounding
from systolic.golden.qformat import QFormat
from systolic.golden.rounding import MAX_LEFT_SHIFT, MAX_SHIFT, requantize, round_shift

PROPERTY = settings(max_examples=300, deadline=None)
INT64 = st.integers(-(1 << 63), (1 << 63) - 1)


def exact_round(a, s, mode, r=0):
    """DESIGN.md section 3 on Python integers: ``a / 2**s`` rounded, or ``a * 2**-s``."""
    if s <= 0:
        return a << -s
    if mode == "floor":
        return a // (1 << s)
    if mode == "nearest_even":
        return round(Fraction(a, 1 << s))      # Fraction rounds half to even
    return (a + r) // (1 << s)


# --- exact ties and explicit cases -------------------------------------------------------

# value in LSBs, floor, nearest_even.  a = value * 2**s for s = 1, 5 and 60.
TIES = [(2.5, 2, 2), (-2.5, -3, -2), (3.5, 3, 4), (-0.5, -1, 0), (0.5, 0, 0), (1.5, 1, 2),
        (-1.5, -2, -2), (-3.5, -4, -4), (4.5, 4, 4)]


@pytest.mark.parametrize("s", [1, 5, 60], ids=lambda s: f"s={s}")
@pytest.mark.parametrize("value, floor, even", TIES, ids=[f"{t[0]}lsb" for t in TIES])
def test_round_shift_ties(value, floor, even, s):
    a = int(value * 2) << (s - 1)
    assert round_shift(a, s, "floor") == floor
    assert round_shift(a, s, "nearest_even") == even
    # the same values as a vector, in one call
    np.testing.assert_array_equal(round_shift(np.array([a, a]), s, "nearest_even"),
                                  [even, even])


# value in LSBs (s = 2): floor, nearest_even -- not ties
@pytest.mark.parametrize("a, floor, even", [
    (9, 2, 2), (11, 2, 3), (-9, -3, -2), (-11, -3, -3), (8, 2, 2), (-8, -2, -2),
    (1, 0, 0), (3, 0, 1), (-1, -1, 0), (-3, -1, -1), (0, 0, 0)])
def test_round_shift_non_ties(a, floor, even):
    assert round_shift(a, 2, "floor") == floor
    assert round_shift(a, 2, "nearest_even") == even


@pytest.mark.parametrize("a, s, r, expected", [
    (5, 1, 0, 2), (5, 1, 1, 3),                     # 2.5
    (-5, 1, 0, -3), (-5, 1, 1, -2),                 # -2.5
    (-5, 2, 0, -2), (-5, 2, 3, -1),                 # -1.25
    (9, 2, 0, 2), (9, 2, 2, 2), (9, 2, 3, 3),       # 2.25: only r = 3 carries
    (8, 2, 0, 2), (8, 2, 3, 2),                     # exact 2: never rounds up
    (-1, 4, 0, -1), (-1, 4, 1, 0), (-1, 4, 15, 0),  # -1/16
    (1, 4, 14, 0), (1, 4, 15, 1),                   # 1/16
    ((1 << 62) - 1, 62, 0, 0), ((1 << 62) - 1, 62, 1, 1),
    (-(1 << 62), 62, (1 << 62) - 1, -1),
])
def test_round_shift_stochastic_explicit_r(a, s, r, expected):
    assert round_shift(a, s, "stochastic", r=r) == expected


@pytest.mark.parametrize("mode", rounding.ROUNDING_MODES)
def test_shift_zero_is_identity(mode):
    a = np.array([-(1 << 62), -7, -1, 0, 1, 7, (1 << 62) - 1])
    np.testing.assert_array_equal(round_shift(a, 0, mode, r=np.zeros(7)), a)
    fmt = QFormat(16, 3)
    np.testing.assert_array_equal(
        requantize([-40000, -32768, -5, 0, 5, 32767, 40000], 0, mode, fmt, seed=1, layer=2,
                   index=np.arange(7)),
        [-32768, -32768, -5, 0, 5, 32767, 32767])


def test_max_right_shift():
    assert MAX_SHIFT == 62
    a = [(1 << 62) - 1, 1 << 62, -1, -(1 << 62), -(1 << 62) - 1, (1 << 61), (1 << 61) + 1,
         -(1 << 61), (3 << 61) - 1]
    np.testing.assert_array_equal(round_shift(a, 62, "floor"), [0, 1, -1, -1, -2, 0, 0, -1, 1])
    np.testing.assert_array_equal(round_shift(a, 62, "nearest_even"),
                                  [1, 1, 0, -1, -1, 0, 1, 0, 1])
    for shift in (MAX_SHIFT + 1, 64):
        with pytest.raises(ValueError, match=r"Requantization shift must be between -46 and "
                                             rf"62, not {shift}"):
            round_shift(1, shift, "floor")


def test_left_shifts():
    assert MAX_LEFT_SHIFT == 46
    np.testing.assert_array_equal(round_shift([1, -3, 0], -MAX_LEFT_SHIFT, "floor"),
                                  [1 << 46, -3 << 46, 0])
    np.testing.assert_array_equal(round_shift([5, -5], -3, "nearest_even"), [40, -40])
    with pytest.raises(ValueError, match=r"Requantization shift must be between -46 and 62, "
                                         r"not -47"):
        round_shift(1, -MAX_LEFT_SHIFT - 1, "floor")
    q = QFormat(8, 0)
    # exact left shifts inside the format, and saturating ones (also from far outside +-2**16,
    # where requantize clamps before shifting)
    out, n = requantize([3, -4, 31, 32, -32, -33, 1, -1, 1 << 40, -(1 << 40)], -2, "floor", q,
                        count_saturations=True)
    np.testing.assert_array_equal(out, [12, -16, 124, 127, -128, -128, 4, -4, 127, -128])
    assert n == 4
    out, n = requantize([1, -1, 0, (1 << 62), -(1 << 62)], -MAX_LEFT_SHIFT, "stochastic", q,
                        count_saturations=True)
    np.testing.assert_array_equal(out, [127, -128, 0, 127, -128])
    assert n == 4


@pytest.mark.parametrize("width", range(2, 17), ids=lambda w: f"w={w}")
def test_saturation_limits(width):
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    if width == 8:
        assert (lo, hi) == (-128, 127)
    if width == 16:
        assert (lo, hi) == (-32768, 32767)
    q = QFormat(width, 4)
    # acc has f_acc = 6 -> shift 2; values in LSBs of the output are acc / 4
    acc = np.array([hi * 4, hi * 4 + 1, hi * 4 + 2, hi * 4 + 4, 1 << 40,
                    lo * 4, lo * 4 - 1, lo * 4 - 2, lo * 4 - 3, -(1 << 40)])
    out, n = requantize(acc, 2, "nearest_even", q, count_saturations=True)
    np.testing.assert_array_equal(out, [hi, hi, hi, hi, hi, lo, lo, lo, lo, lo])
    # hi*4+2 is hi + 0.5: hi is odd, so the tie goes to hi + 1, saturated.  lo*4-2 is
    # lo - 0.5 -> lo (even), not saturated.  lo*4-3 is lo - 0.75 -> lo - 1, saturated.
    assert n == 5   # hi*4+2, hi*4+4, 1<<40, lo*4-3, -(1<<40)
    out, n = requantize(acc, 2, "floor", q, count_saturations=True)
    np.testing.assert_array_equal(out, [hi, hi, hi, hi, hi, lo, lo, lo, lo, lo])
    assert n == 6  # hi*4+4, 1<<40; lo*4-1, -2, -3, -(1<<40)
    assert q.min == lo and q.max == hi
    assert q.contains([lo, hi]) and not q.contains([hi + 1]) and not q.contains([lo - 1])


def test_relu_and_clip_clamp():
    q = QFormat(8, 0)
    acc = [-1000, -3, 0, 3, 50, 127, 128, 1000]
    out, n = requantize(acc, 0, "floor", q, lo=0, count_saturations=True)
    np.testing.assert_array_equal(out, [0, 0, 0, 3, 50, 127, 127, 127])
    assert n == 2                     # 128 and 1000 overflow; the negatives are ReLU, not events
    out, n = requantize(acc, 0, "floor", q, lo=0, hi=50, count_saturations=True)
    np.testing.assert_array_equal(out, [0, 0, 0, 3, 50, 50, 50, 50])
    assert n == 0                     # everything above 50 is the clip, inside the format
    out, n = requantize(acc, 0, "floor", q, lo=-300, hi=300, count_saturations=True)
    np.testing.assert_array_equal(out, [-128, -3, 0, 3, 50, 127, 127, 127])
    assert n == 3                     # bounds wider than the format are narrowed to it
    out, n = requantize(acc, 0, "floor", q, lo=-2, count_saturations=True)
    np.testing.assert_array_equal(out, [-2, -2, 0, 3, 50, 127, 127, 127])
    assert n == 2
    # clamp is applied after rounding: -0.5 rounds to 0 (even) / -1 (floor) before ReLU
    np.testing.assert_array_equal(requantize([-1, 1, 3], 1, "nearest_even", q, lo=0), [0, 0, 2])
    np.testing.assert_array_equal(requantize([-1, 1, 3], 1, "floor", q, hi=0), [-1, 0, 0])


def test_count_saturations_counts_format_overflow_only():
    q = QFormat(4, 2)    # -8..7
    acc = np.array([-100, -17, -16, -15, 0, 14, 15, 16, 100])   # shift 1: -50 -8.5 -8 -7.5 ..
    out, n = requantize(acc, 1, "floor", q, count_saturations=True)
    np.testing.assert_array_equal(out, [-8, -8, -8, -8, 0, 7, 7, 7, 7])
    assert n == 4        # -50, -9 (floor -8.5), 8, 50
    out, n = requantize(acc, 1, "nearest_even", q, count_saturations=True)
    np.testing.assert_array_equal(out, [-8, -8, -8, -8, 0, 7, 7, 7, 7])
    assert n == 4        # -50, 7.5 -> 8, 8, 50 (-8.5 -> -8 is in range)
    out, n = requantize(acc, 1, "nearest_even", q, lo=0, count_saturations=True)
    np.testing.assert_array_equal(out, [0, 0, 0, 0, 0, 7, 7, 7, 7])
    assert n == 3        # 7.5 -> 8, 8, 50; the ReLU'd negatives are not events


def test_requantize_stochastic_seed_path():
    q = QFormat(16, 0)
    acc = np.array([5, -5, 9, 1000, 12345], dtype=np.int64)
    # r = 0 everywhere must give floor, r = 2**s-1 the ceiling: check both through r=
    np.testing.assert_array_equal(requantize(acc, 3, "stochastic", q, r=0), acc >> 3)
    np.testing.assert_array_equal(requantize(acc, 3, "stochastic", q, r=7), -((-acc) >> 3))
    # with seed/layer/index each result is floor or floor + 1, and both occur
    acc = np.full(200, 5)      # 0.625 LSB
    out = requantize(acc, 3, "stochastic", q, seed=7, layer=1, index=np.arange(200))
    assert set(out.tolist()) == {0, 1}
    assert 100 < np.count_nonzero(out) < 150, "seed=7: expect about 62.5% ones"


def test_mode_and_argument_errors():
    with pytest.raises(ValueError, match=r"Rounding mode must be one of floor, nearest_even, "
                                         r"stochastic, not 'round'"):
        round_shift(1, 1, "round")
    with pytest.raises(ValueError, match=r"Rounding mode must be one of .* not None"):
        requantize(1, 1, None, QFormat(8, 0))
    with pytest.raises(ValueError, match=r"Stochastic rounding needs the offsets r"):
        round_shift(1, 1, "stochastic")
    with pytest.raises(ValueError, match=r"Stochastic rounding needs either r or seed, "
                                         r"layer and index"):
        requantize(1, 1, "stochastic", QFormat(8, 0), seed=1, layer=0)
    with pytest.raises(TypeError, match=r"Output format must be a QFormat, not \(8, 0\)"):
        requantize(1, 1, "floor", (8, 0))
    assert rounding.check_mode("floor") == "floor"
    assert rounding.ROUNDING_MODES == ("floor", "nearest_even", "stochastic")


# --- seeded random comparison with coverage ------------------------------------------------

@pytest.mark.parametrize("seed", range(6), ids=lambda s: f"seed={s}")
def test_requantize_random_against_exact(seed):
    rng = np.random.default_rng(seed)
    seen = dict(ties=0, up=0, down=0, sat_hi=0, sat_lo=0, left=0, inside=0)
    for _ in range(60):
        width = int(rng.integers(2, 17))
        q = QFormat(width, int(rng.integers(-4, 21)))
        shift = int(rng.integers(-6, 24))
        mode = rounding.ROUNDING_MODES[int(rng.integers(3))]
        relu = bool(rng.integers(2))
        n = 64
        # magnitudes around the format's range, with forced ties for right shifts
        scale = 1 << max(width + max(shift, 0) - 1, 0)
        acc = rng.integers(-2 * scale, 2 * scale, size=n)
        if shift > 0:
            acc[: n // 4] = (acc[: n // 4] >> shift << shift) + (1 << (shift - 1))
        r = rng.integers(0, 1 << shift, size=n) if shift > 0 else None
        got, nsat = requantize(acc, shift, mode, q, lo=0 if relu else None, r=r,
                               count_saturations=True)
        fmin, fmax = -(1 << (width - 1)), (1 << (width - 1)) - 1
        expected, events = [], 0
        for i, a in enumerate(acc.tolist()):
            y = exact_round(a, shift, mode, 0 if r is None else int(r[i]))
            if relu:
                y = max(y, 0)
            events += not fmin <= y <= fmax
            seen["sat_hi"] += y > fmax
            seen["sat_lo"] += y < fmin
            seen["inside"] += fmin <= y <= fmax
            if shift > 0:
                exact = Fraction(a, 1 << shift)
                seen["ties"] += exact.denominator == 2
                raw = exact_round(a, shift, mode, 0 if r is None else int(r[i]))
                seen["up"] += raw > exact
                seen["down"] += raw < exact
            else:
                seen["left"] += 1
            expected.append(min(max(y, fmin), fmax))
        msg = f"seed={seed} width={width} frac={q.frac} shift={shift} mode={mode} relu={relu}"
        np.testing.assert_array_equal(got, expected, err_msg=msg)
        assert nsat == events, msg
    assert all(v > 0 for v in seen.values()), f"seed={seed}: coverage {seen}"


# --- properties ---------------------------------------------------------------------------

@PROPERTY
@given(a=INT64, s=st.integers(1, MAX_SHIFT))
@example(a=-(1 << 63), s=1).via("most negative")
@example(a=(1 << 63) - 1, s=MAX_SHIFT).via("most positive")
def test_floor_property(a, s):
    q = int(round_shift(a, s, "floor"))
    assert q * (1 << s) <= a < (q + 1) * (1 << s)


@PROPERTY
@given(a=INT64, s=st.integers(1, MAX_SHIFT))
@example(a=5, s=1).via("tie 2.5")
@example(a=(1 << 63) - 1, s=1).via("tie at the top of int64")
@example(a=-(1 << 63), s=MAX_SHIFT).via("most negative")
def test_nearest_even_property(a, s):
    q = int(round_shift(a, s, "nearest_even"))
    assert abs(q * (1 << s) - a) <= 1 << (s - 1)
    exact = Fraction(a, 1 << s)
    if exact.denominator == 2:
        assert q % 2 == 0, "a tie must go to the even neighbour"
    assert q == round(exact)
    if abs(a) < 1 << 53:       # a / 2**s is exact in float64 here
        assert q == int(np.rint(a / 2.0 ** s))


@PROPERTY
@given(a=st.integers(-(1 << 62), (1 << 62) - 1), s=st.integers(1, MAX_SHIFT), data=st.data())
def test_stochastic_property(a, s, data):
    r = data.draw(st.integers(0, (1 << s) - 1), label="r")
    q = int(round_shift(a, s, "stochastic", r=r))
    fl = a // (1 << s)
    assert q in (fl, fl + 1)
    assert q == (a + r) // (1 << s)
    if a % (1 << s) == 0:
        assert q == fl, "an exact value never rounds up"


@PROPERTY
@given(a=st.integers(-(1 << 53), 1 << 53), shift=st.integers(-MAX_LEFT_SHIFT, MAX_SHIFT),
       mode=st.sampled_from(rounding.ROUNDING_MODES), width=st.integers(2, 16),
       frac=st.integers(-4, 20), relu=st.booleans(), seed=st.integers(0, (1 << 32) - 1))
def test_requantize_in_range(a, shift, mode, width, frac, relu, seed):
    q = QFormat(width, frac)
    acc = np.array([a, -a, a // 3, 0], dtype=np.int64)
    out, n = requantize(acc, shift, mode, q, lo=0 if relu else None, seed=seed, layer=3,
                        index=np.arange(4), count_saturations=True)
    assert out.dtype == np.int64
    assert np.all(out >= -(1 << (width - 1))) and np.all(out <= (1 << (width - 1)) - 1)
    if relu:
        assert np.all(out >= 0)
    assert 0 <= n <= 4


# --- QFormat --------------------------------------------------------------------------------

def test_qformat_quantize_ties_to_even_and_saturation():
    np.testing.assert_array_equal(
        QFormat(8, 1).quantize([0.25, 0.75, -0.25, -0.75, 1.25, 0.3, -0.3, 0.0]),
        [0, 2, 0, -2, 2, 1, -1, 0])
    np.testing.assert_array_equal(
        QFormat(8, 0).quantize([126.5, 127.49, 127.5, 200.0, -128.5, -128.6, -1e30, np.inf,
                                -np.inf]),
        [126, 127, 127, 127, -128, -128, -128, 127, -128])
    np.testing.assert_array_equal(QFormat(4, -2).quantize([6.0, 10.0, 1e9, -100.0]),
                                  [2, 2, 7, -8])    # 6/4 = 1.5 -> 2; 10/4 = 2.5 -> 2
    np.testing.assert_array_equal(QFormat(16, 20).quantize([2.0 ** -21, 3 * 2.0 ** -21, 1.0]),
                                  [0, 2, 32767])
    assert QFormat(8, 3).quantize(1.0).dtype == np.int64


@pytest.mark.parametrize("width", [1, 0, -8, 17, 32])
def test_qformat_width_range(width):
    with pytest.raises(ValueError, match=rf"Q format width must be between 2 and 16 bits, "
                                         rf"not {width}"):
        QFormat(width, 0)


@pytest.mark.parametrize("width, frac, match", [
    (8.0, 0, r"Q format width must be an integer, not 8\.0"),
    ("8", 0, r"Q format width must be an integer, not '8'"),
    (True, 0, r"Q format width must be an integer, not True"),
    (8, 1.5, r"Q format frac must be an integer, not 1\.5"),
    (8, None, r"Q format frac must be an integer, not None"),
    (8, np.bool_(False), r"Q format frac must be an integer"),
])
def test_qformat_type_errors(width, frac, match):
    with pytest.raises(TypeError, match=match):
        QFormat(width, frac)


def test_qformat_members():
    q = QFormat(np.int64(8), np.int32(-3))
    assert type(q.width) is int and type(q.frac) is int
    assert (q.min, q.max, q.lsb, str(q)) == (-128, 127, 8.0, "Q(8,-3)")
    np.testing.assert_array_equal(QFormat(8, 3).to_float([8, -4, 1, 0]), [1.0, -0.5, 0.125, 0])
    np.testing.assert_array_equal(q.to_float(3), 24.0)
    assert QFormat(2, 0).contains([-2, 1]) and not QFormat(2, 0).contains([2])
    assert QFormat(2, 0).contains(np.zeros((0, 3)))
    assert QFormat(2, 0).contains(np.array([[-2, 0], [1, 1]]))
    assert not QFormat(2, 0).contains(np.array([[-3, 0], [1, 1]]))
    assert QFormat.from_json(q.to_json()) == q and q.to_json() == [8, -3]
    with pytest.raises(TypeError, match=r"Q format must be a \[width, frac\] pair, not 8"):
        QFormat.from_json(8)
