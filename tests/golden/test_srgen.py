"""The stochastic-rounding generator H(seed, layer, i) (golden/srgen.py) and its use in
stochastic requantization (DESIGN.md section 3)."""

import numpy as np
import pytest

from systolic.golden import ops, srgen
from systolic.golden.qformat import QFormat
from systolic.golden.rounding import requantize
from systolic.golden.srgen import H, round_keys, rounding_offsets

# --- an independent scalar H, written from the srgen module docstring ----------------------

_M = 0xFFFF


def _ror(v, r):
    return ((v >> r) | (v << (16 - r))) & _M


def _rol(v, r):
    return ((v << r) | (v >> (16 - r))) & _M


def speck_encrypt(x, y, k0, l, rounds):
    """Speck32 with the 4-word key (k0; l0, l1, l2), cut to ``rounds`` rounds."""
    k, l = [k0], list(l)
    for j in range(rounds - 1):
        l.append(((k[j] + _ror(l[j], 7)) & _M) ^ j)
        k.append(_rol(k[j], 2) ^ l[j + 3])
    for j in range(rounds):
        x = ((_ror(x, 7) + y) & _M) ^ k[j]
        y = _rol(y, 2) ^ x
    return x, y, k


def ref_H(seed, layer, i):
    """H as the docstring defines it: k0 = seed[15:0], l0 = seed[31:16], l1 = layer,
    l2 = 0x7A3C, block (x, y) = (i[31:16], i[15:0]), 9 rounds, H = x:y."""
    x, y, _ = speck_encrypt(i >> 16, i & _M, seed & _M, (seed >> 16, layer, 0x7A3C), 9)
    return (x << 16) | y


def test_reference_is_speck32_64():
    # The published Speck32/64 test vector (Beaulieu et al. 2013, appendix C): key
    # 1918 1110 0908 0100, plaintext 6574 694c, ciphertext a868 42f2, 22 rounds.
    x, y, _ = speck_encrypt(0x6574, 0x694C, 0x0100, (0x0908, 0x1110, 0x1918), 22)
    assert (x, y) == (0xA868, 0x42F2)


def test_constants_match_docstring():
    assert (srgen.ROUNDS, srgen.WORD, srgen.ROT_X, srgen.ROT_Y, srgen.KEY_CONST) == (
        9, 16, 7, 2, 0x7A3C)
    assert (srgen.SEED_BITS, srgen.LAYER_BITS, srgen.INDEX_BITS) == (32, 16, 32)


# Pinned values of H, computed with ref_H above (itself checked against the Speck test
# vector).  If the definition changes, the RTL and every stored expected output change too.
PINNED = [(0, 0, 0, 0x95347F30), (0xDEADBEEF, 3, 12345, 0x591D50C9),
          (0xFFFFFFFF, 0xFFFF, 0xFFFFFFFF, 0xAA737F97)]


@pytest.mark.parametrize("seed, layer, i, value", PINNED,
                         ids=[f"seed={p[0]:#x}-layer={p[1]}-i={p[2]}" for p in PINNED])
def test_H_pinned(seed, layer, i, value):
    assert ref_H(seed, layer, i) == value
    assert int(H(seed, layer, i)) == value
    assert int(H(seed, layer, np.array([i]))[0]) == value


@pytest.mark.parametrize("seed", range(3), ids=lambda s: f"seed={s}")
def test_H_matches_scalar_reference(seed):
    rng = np.random.default_rng(seed)
    for _ in range(4):
        s = int(rng.integers(0, 1 << 32))
        layer = int(rng.integers(0, 1 << 16))
        i = rng.integers(0, 1 << 32, size=(3, 50))
        got = H(s, layer, i)
        assert got.shape == (3, 50) and got.dtype == np.uint64
        expected = [[ref_H(s, layer, int(v)) for v in row] for row in i]
        np.testing.assert_array_equal(got, expected, err_msg=f"seed={seed} key=({s}, {layer})")
        _, _, k = speck_encrypt(0, 0, s & _M, (s >> 16, layer, 0x7A3C), 9)
        assert round_keys(s, layer) == tuple(k), f"seed={seed}"


# --- statistics ------------------------------------------------------------------------------

# Chi-square critical value for 255 degrees of freedom at p = 0.001 (upper tail): 330.5
# (Wilson-Hilferty: 255 * (1 - 2/(9*255) + 3.0902 * sqrt(2/(9*255)))**3 = 330.5).
CHI2_255_P001 = 330.5


CHI2_KEYS = [(0, 0), (0x2545F491, 7), (123456789, 1)]


@pytest.mark.parametrize("seed, layer", CHI2_KEYS, ids=[f"seed={s:#x}-layer={l}"
                                                        for s, l in CHI2_KEYS])
@pytest.mark.parametrize("byte", [0, 1], ids=["bits7..0", "bits15..8"])
def test_low_bits_uniform_over_sequential_indices(seed, layer, byte):
    n = 100_000
    h = H(seed, layer, np.arange(n))
    counts = np.bincount(((h >> np.uint64(8 * byte)) & np.uint64(0xFF)).astype(np.int64),
                         minlength=256)
    expected = n / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < CHI2_255_P001, f"seed={seed} layer={layer}: chi2 = {chi2:.1f}"
    # Too flat is wrong too: the identity map i & 0xFF gives 0.15.  The lower p = 0.001 tail
    # of chi-square(255) is 190.8 (same approximation with z = -3.0902).
    assert chi2 > 190.8, f"seed={seed} layer={layer}: chi2 = {chi2:.1f} is suspiciously flat"


def _flip_rates(a, b):
    d = a ^ b
    return ((d[:, None] >> np.arange(32, dtype=np.uint64)) & np.uint64(1)).mean(axis=0)


@pytest.mark.parametrize("seed", range(3), ids=lambda s: f"seed={s}")
def test_avalanche(seed):
    rng = np.random.default_rng(seed)
    key_seed = int(rng.integers(0, 1 << 32))
    layer = int(rng.integers(0, 1 << 16))
    i = rng.integers(0, 1 << 32, size=20_000)
    base = H(key_seed, layer, i)
    flips = ([("index", b, H(key_seed, layer, i ^ (1 << b))) for b in range(32)]
             + [("seed", b, H(key_seed ^ (1 << b), layer, i)) for b in range(32)]
             + [("layer", b, H(key_seed, layer ^ (1 << b), i)) for b in range(16)])
    worst = 0.0
    for name, bit, h in flips:
        rates = _flip_rates(base, h)
        dev = np.abs(rates - 0.5)
        worst = max(worst, dev.max())
        assert dev.max() <= 0.03, (f"seed={seed}: flipping {name} bit {bit} flips output bit "
                                   f"{dev.argmax()} with probability {rates[dev.argmax()]:.3f}")
    # the module docstring's figure (0.015 at 2e4 samples)
    assert worst <= 0.016, f"seed={seed}: worst bias {worst:.4f}"


def _inverse(h, keys):
    x = (h >> np.uint64(16)) & np.uint64(_M)
    y = h & np.uint64(_M)
    for k in reversed(keys):
        y = y ^ x
        y = ((y >> np.uint64(2)) | (y << np.uint64(14))) & np.uint64(_M)
        x = ((x ^ np.uint64(k)) - y) & np.uint64(_M)
        x = ((x << np.uint64(7)) | (x >> np.uint64(9))) & np.uint64(_M)
    return (x << np.uint64(16)) | y


PERM_KEYS = [(0, 0, 0), (0xCAFEF00D, 42, 0xFFFF0000), (1, 65535, 123456)]


@pytest.mark.parametrize("seed, layer, start", PERM_KEYS,
                         ids=[f"seed={s:#x}-layer={l}-start={i}" for s, l, i in PERM_KEYS])
def test_H_is_a_permutation_of_the_counter(seed, layer, start):
    i = np.arange(start, start + (1 << 16))
    h = H(seed, layer, i)
    assert np.unique(h).size == 1 << 16, f"seed={seed} layer={layer}: collisions"
    assert h.max() < 1 << 32
    _, _, keys = speck_encrypt(0, 0, seed & _M, (seed >> 16, layer, 0x7A3C), 9)
    np.testing.assert_array_equal(_inverse(h, keys), i, err_msg=f"seed={seed} layer={layer}")


def test_streams_differ_between_layers_and_seeds():
    i = np.arange(100_000)
    streams = {(s, l): H(s, l, i) for s in (0, 1, 0x80000000, 0xFFFFFFFF) for l in (0, 1, 2, 255)}
    keys = list(streams)
    for a in range(len(keys)):
        for b in range(a + 1, len(keys)):
            same = int(np.count_nonzero(streams[keys[a]] == streams[keys[b]]))
            # 1e5 / 2**32 coincidences expected
            assert same <= 2, f"{keys[a]} and {keys[b]} agree on {same} indices"


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(seed=-1, layer=0), ValueError, r"Stochastic-rounding seed must be in 0\.\.2\*\*32-1, "
                                         r"not -1"),
    (dict(seed=1 << 32, layer=0), ValueError, r"seed must be in 0\.\.2\*\*32-1, not 4294967296"),
    (dict(seed=0, layer=-1), ValueError, r"Stochastic-rounding layer must be in 0\.\.2\*\*16-1, "
                                         r"not -1"),
    (dict(seed=0, layer=1 << 16), ValueError, r"layer must be in 0\.\.2\*\*16-1, not 65536"),
    (dict(seed=1.0, layer=0), TypeError, r"Stochastic-rounding seed must be an integer, not 1\.0"),
    (dict(seed=True, layer=0), TypeError, r"seed must be an integer, not True"),
    (dict(seed=0, layer="1"), TypeError, r"Stochastic-rounding layer must be an integer, "
                                         r"not '1'"),
    (dict(seed=0, layer=None), TypeError, r"layer must be an integer, not None"),
], ids=["seed=-1", "seed=2**32", "layer=-1", "layer=2**16", "seed=1.0", "seed=True",
        "layer='1'", "layer=None"])
def test_round_keys_checks(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        round_keys(**kwargs)
    with pytest.raises(exc, match=match):
        H(kwargs["seed"], kwargs["layer"], 0)


def test_round_keys_edges_accepted():
    assert len(round_keys((1 << 32) - 1, (1 << 16) - 1)) == 9
    assert len(round_keys(np.uint32(5), np.int64(3))) == 9
    assert round_keys(0, 0)[0] == 0 and round_keys(0x1234ABCD, 0)[0] == 0xABCD


@pytest.mark.parametrize("i", [-1, 1 << 32, [0, 5, -3]])
def test_H_index_range(i):
    with pytest.raises(ValueError, match=r"Stochastic-rounding index must be in 0\.\.2\*\*32-1"):
        H(0, 0, i)


def test_rounding_offsets():
    i = np.arange(4096).reshape(64, 64)
    h = [[ref_H(77, 5, int(v)) for v in row] for row in i]
    for shift in (0, -3):
        r = rounding_offsets(77, 5, i, shift)
        assert r.shape == i.shape and r.dtype == np.int64 and not r.any()
    for shift in range(1, 33):
        r = rounding_offsets(77, 5, i, shift)
        assert r.dtype == np.int64 and r.min() >= 0 and r.max() < 1 << shift, f"shift={shift}"
        np.testing.assert_array_equal(r, [[v % (1 << shift) for v in row] for row in h],
                                      err_msg=f"shift={shift}")
        if shift <= 8:   # every offset value occurs
            assert np.unique(r).size == 1 << shift, f"shift={shift}"
    for shift in (33, 40, 62):
        r = rounding_offsets(77, 5, i, shift)
        np.testing.assert_array_equal(r, [[v * (1 << (shift - 32)) for v in row] for row in h],
                                      err_msg=f"shift={shift}")
        assert r.min() >= 0 and r.max() < 1 << shift


# --- stochastic requantization ------------------------------------------------------------

@pytest.mark.parametrize("shift", [8, 40], ids=lambda s: f"s={s}")
@pytest.mark.parametrize("seed", range(2), ids=lambda s: f"seed={s}")
def test_mean_rounding_error_random_accumulators(seed, shift):
    rng = np.random.default_rng(seed)
    n = 100_000
    acc = rng.integers(-(1 << (shift + 12)), 1 << (shift + 12), size=n)
    q = QFormat(16, 0)
    out = requantize(acc, shift, "stochastic", q, seed=int(rng.integers(1 << 32)), layer=seed,
                     index=np.arange(n))
    err = out - acc / 2.0 ** shift
    assert abs(err.mean()) <= 0.01, f"seed={seed}: mean error {err.mean():.4f} LSB"
    assert err.min() > -1 and err.max() < 1, f"seed={seed}"
    # the data can expose a bias: floor rounding on it is off by about half an LSB
    floor_err = requantize(acc, shift, "floor", q) - acc / 2.0 ** shift
    assert floor_err.mean() < -0.45, f"seed={seed}"


@pytest.mark.parametrize("residue", [1, 64, 128, 200, 255], ids=lambda r: f"frac={r}/256")
def test_mean_rounding_error_fixed_fraction(residue):
    # Every accumulator has the same fractional part residue/256: stochastic rounding must be
    # unbiased for each fraction separately, over sequential indices 0..99,999.
    n = 100_000
    rng = np.random.default_rng(residue)
    acc = rng.integers(-1000, 1000, size=n) * 256 + residue
    out = requantize(acc, 8, "stochastic", QFormat(16, 0), seed=0x5EED, layer=residue,
                     index=np.arange(n))
    err = out - acc / 256.0
    assert abs(err.mean()) <= 0.01, f"seed={residue}: mean error {err.mean():.4f} LSB"
    up = np.count_nonzero(out > acc // 256)
    assert 0 < up < n, f"seed={residue}: both directions must occur"


def _conv_acc(x, w, stride, pads):
    """Exact conv sums with einsum over kernel offsets (int64)."""
    t, b, l, r = pads
    xp = np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)))
    o, c, kh, kw = w.shape
    ho = (xp.shape[2] - kh) // stride + 1
    wo = (xp.shape[3] - kw) // stride + 1
    acc = np.zeros((x.shape[0], o, ho, wo), dtype=np.int64)
    for u in range(kh):
        for v in range(kw):
            patch = xp[:, :, u:u + stride * (ho - 1) + 1:stride, v:v + stride * (wo - 1) + 1:stride]
            acc += np.einsum("nchw,oc->nohw", patch, w[:, :, u, v])
    return acc


TILING = [(2, (3, 6, 6), 4, 3, 1, "valid"), (1, (2, 9, 7), 5, 5, 2, (2, 2, 1, 1)),
          (3, (1, 5, 8), 2, 1, 1, "valid"), (2, (4, 4, 4), 8, 3, 2, (1, 1, 1, 1))]


@pytest.mark.parametrize("case", TILING, ids=[f"n{c[0]}-{c[1]}-o{c[2]}-k{c[3]}-s{c[4]}"
                                              for c in TILING])
@pytest.mark.parametrize("seed", range(3), ids=lambda s: f"seed={s}")
def test_stochastic_conv_is_independent_of_tiling(seed, case):
    n, (c, h, w), o, k, stride, padding = case
    rng = np.random.default_rng(seed)
    fin, fw, fout = QFormat(8, 5), QFormat(8, 7), QFormat(12, 4)
    x = rng.integers(-128, 128, size=(n, c, h, w))
    wt = rng.integers(-128, 128, size=(o, c, k, k))
    bias = rng.integers(-(1 << 15), 1 << 15, size=o)
    key_seed, layer = int(rng.integers(1 << 32)), int(rng.integers(1 << 16))
    whole = ops.conv2d(x, wt, bias, in_format=fin, weight_format=fw,
                       bias_format=QFormat(16, 10), out_format=fout, stride=stride,
                       padding=padding, rounding="stochastic", seed=key_seed, layer=layer)
    pads = (0, 0, 0, 0) if padding == "valid" else padding
    acc = _conv_acc(x, wt, stride, pads) + (bias << 2)[None, :, None, None]   # f 12 vs 10
    per_image = acc[0].size
    flat = acc.reshape(-1)
    total = flat.size
    # random partition of the flat output index set, processed in random order
    cuts = np.sort(rng.choice(np.arange(1, total), size=min(6, total - 1), replace=False))
    tiles = np.split(rng.permutation(total), cuts)
    out = np.full(total, 1 << 40, dtype=np.int64)
    for t in rng.permutation(len(tiles)):
        idx = tiles[t]
        out[idx] = requantize(flat[idx], 12 - 4, "stochastic", fout, seed=key_seed,
                              layer=layer, index=idx % per_image)
    np.testing.assert_array_equal(out.reshape(acc.shape), whole, err_msg=f"seed={seed}")
    assert np.count_nonzero(np.abs(whole) < 2047) > total // 2, f"seed={seed}: mostly saturated"
    # the layer really was stochastic: nearest-even and floor disagree with it somewhere
    for mode in ("floor", "nearest_even"):
        other = ops.conv2d(x, wt, bias, in_format=fin, weight_format=fw,
                           bias_format=QFormat(16, 10), out_format=fout, stride=stride,
                           padding=padding, rounding=mode, seed=key_seed, layer=layer)
        assert not np.array_equal(other, whole), f"seed={seed} mode={mode}"
