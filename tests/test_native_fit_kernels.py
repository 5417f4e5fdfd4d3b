"""The track fit's numeric steps in libtkb's C (native/src/enc_fit.c, the
NativeFitKernels of tokenbits.native.encoder, which backend="native" passes to the
reference's rate control): every value equals numpy's (FitKernels) bit for bit, and every
decision (the qp search's cosine test, the table grouping's Lloyd step) is numpy's, the
C deciding only when its bound cannot flip the comparison (else numpy computes it), on
the AVX2 and the plain C paths."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import tokenbits as tb
from tokenbits import encoder as E, levels, native
from tokenbits import fit_kernels as FK, quantization as Q, table_fit as TF

pytestmark = pytest.mark.skipif(native.available() is not None,
                                reason=f"libtkb not built: {native.available()}")

RNG = np.random.default_rng(20261208)


@pytest.fixture(params=["native", "avx2", "scalar"])
def simd(request, monkeypatch):
    """The CPU's own paths (AVX-512 where it has them), AVX2 only, plain C."""
    if request.param != "native":
        monkeypatch.setenv("TKB_NATIVE_SIMD", request.param)
    return request.param


def kernels():
    from tokenbits.native import encoder as NE
    return NE.fit_kernels(), FK.NUMPY_KERNELS


def tokens(n, d, dtype=np.float16):
    x = RNG.standard_normal((n, d)) * RNG.gamma(1.0, 1.0, size=(1, d))
    x[1:] = 0.6 * x[:-1] + 0.4 * x[1:]
    return x.astype(dtype)


def test_values_equal(simd):
    nk, rk = kernels()
    x = tokens(97, 75, np.float32)
    codes = RNG.integers(100, 200, size=x.shape)
    assert np.array_equal(nk.quantize_levels(x, codes), rk.quantize_levels(x, codes))
    assert np.array_equal(nk.token_norms(x), rk.token_norms(x))
    lv = rk.quantize_levels(x, codes)
    pos = np.arange(x.shape[0], dtype=np.uint32)
    for p in (0, 1):
        tps = dict(predictor=p, grid_present=0, num_prefix_tokens=0)
        u = nk.zigzag_residuals(lv, pos, tps)
        assert np.array_equal(u, rk.zigzag_residuals(lv, pos, tps))
        assert nk.symbol_entropy(u.ravel()) == rk.symbol_entropy(u.ravel())
        for alphabet in (1, 2, 17, int(u.max()) + 5):
            assert np.array_equal(nk.channel_histograms(u.ravel(), 75, alphabet),
                                  rk.channel_histograms(u.ravel(), 75, alphabet))


@pytest.mark.parametrize("deadzone", [0.0, 0.3, 0.5])
def test_closed_loop_levels_equal(simd, deadzone):
    nk, rk = kernels()
    x = tokens(60, 33, np.float32) * 40
    codes = RNG.integers(130, 160, size=x.shape)
    pred = np.where(np.arange(60) % 7 == 0, -1, np.arange(60) - 1)
    pred[5] = 2                                         # chains of several depths
    lim = RNG.integers(0, 400, size=x.shape)
    for lm in (None, lim):
        assert np.array_equal(nk.quantize_closed_loop(x, codes, pred, deadzone, lm),
                              rk.quantize_closed_loop(x, codes, pred, deadzone, lm))


def test_table_argmin_same_decisions(simd):
    nk, rk = kernels()
    for t in (1, 2, 5, 16):
        hist = RNG.poisson(RNG.gamma(0.5, 4.0, size=(200, 1)) * np.ones((1, 23)))
        hist[:7] = 0                                   # empty channels
        hist[7:9] = hist[9:11]                         # equal channels
        hf = hist.astype(np.float64)
        g = RNG.poisson(3.0, size=(t, 23)).astype(np.float64)
        g[t // 2] = g[0]                               # equal tables: ties
        q = (g + 1e-3) / (g + 1e-3).sum(axis=1, keepdims=True)
        assert np.array_equal(nk.table_argmin(hist, hf, q), rk.table_argmin(hist, hf, q))


@pytest.mark.parametrize("src", ["float16", "float32", "bfloat16"])
def test_cosine_decisions(simd, src):
    nk, rk = kernels()
    x = tokens(64, 40, np.float32)
    if src == "float16":
        x = x.astype(np.float16)
    elif src == "bfloat16":
        x = (x.view(np.uint32) >> 16).astype(np.uint16)
    te = E.TrackEncoder([x], E.TrackOptions(qp=0, source_dtype=src), levels.LEVELS[30])
    allx = np.concatenate(te.xf)
    allnorms = np.concatenate(te.norms)
    from tokenbits.baselines import mean_token_cosine
    from tokenbits import reconstruction
    for qp in (-30, -12, 0, 12, 30):
        lv, codes, _ = te._quantize(allx, qp, allnorms)
        rec = reconstruction.to_output(te.reconstruct(lv, codes), te.tps["output_dtype"])
        m = mean_token_cosine(allx, Q.float_view(rec, reconstruction.DTYPES[
            te.tps["output_dtype"]]))
        # targets at numpy's value itself and one ulp either side: the C must defer
        for target in (m, np.nextafter(m, 0), np.nextafter(m, 2), m - 1e-3, m + 1e-3, 0.5):
            assert (nk.reaches(te, allx, allx, qp, allnorms, None, target)
                    == rk.reaches(te, allx, allx, qp, allnorms, None, target))


@pytest.mark.parametrize("opts", [dict(qp=-6), dict(target_cos=0.99), dict(target_cos=0.995),
                                  dict(qp=2, per_channel_steps=True),
                                  dict(target_cos=0.99, predictor="left", num_tables=4),
                                  dict(target_cos=0.99, deadzone=0.4),
                                  dict(qp=-4, deadzone=0.25, predictor="left"),
                                  dict(qp=-6, transform="fit"), dict(target_cos=0.98, transform="fit")])
def test_native_fit_same_bytes(simd, opts):
    x = tokens(96, 64)
    if opts.get("transform") == "fit":
        opts = {**opts, "transform": tb.fit_transform(x, energy=0.99)}
    assert tb.encode(x, backend="native", **opts) == tb.encode(x, backend="reference", **opts)


# -- the residual passes, rows quantization, table grouping (enc_fit.c, enc_tables.c) --

def _frames_levels(rng, f, n, d, big=False):
    lv = [rng.integers(-40, 41, size=(n, d)) * rng.integers(1, 4, size=(1, d))
          for _ in range(f)]
    if big and n and d:
        for x in lv:
            x.flat[rng.integers(0, x.size, 3)] = rng.choice([(1 << 24) - 1, -(1 << 24) + 1,
                                                             70000, -40000])
    return [x.astype(np.int64) for x in lv]


@pytest.mark.parametrize("seed", range(6))
def test_residual_passes_equal(simd, seed):
    nk, rk = kernels()
    rng = np.random.default_rng(seed)
    f, n, d = int(rng.integers(1, 4)), int(rng.choice([0, 1, 7, 30])), int(rng.integers(1, 20))
    lvls = _frames_levels(rng, f, n, d, big=seed % 2 == 1)
    pos = [np.sort(rng.choice(n + 3, size=n, replace=False)).astype(np.uint32)
           for _ in range(f)]
    for p in (0, 1):
        tps = dict(predictor=p, grid_present=0, num_prefix_tokens=0)
        assert np.array_equal(nk.residual_counts(lvls, pos, tps),
                              rk.residual_counts(lvls, pos, tps))
        for alphabet in (1, 2, 17, 300):
            assert np.array_equal(nk.residual_histograms(lvls, pos, tps, d, alphabet),
                                  rk.residual_histograms(lvls, pos, tps, d, alphabet))
        u = np.concatenate([rk.zigzag_residuals(lv, q, tps).ravel()
                            for lv, q in zip(lvls, pos)] + [np.zeros(0, np.int64)])
        assert np.array_equal(nk.symbol_counts(u), rk.symbol_counts(u))
        assert nk.symbol_entropy(u) == rk.symbol_entropy(u)
        assert TF.alphabet_size(rk.symbol_counts(u), u.size) == (
            2 if not u.size else
            int(np.clip(int(np.quantile(u, 0.9999, method="higher")) + 2, 2, TF.MAX_ALPHABET)))
    # the up predictor on a grid
    tps = dict(predictor=2, grid_present=1, grid_height=3, grid_width=4, num_prefix_tokens=1)
    lv = _frames_levels(rng, 1, 13, d)
    pos = [np.arange(13, dtype=np.uint32)]
    assert np.array_equal(nk.residual_counts(lv, pos, tps), rk.residual_counts(lv, pos, tps))
    assert np.array_equal(nk.residual_histograms(lv, pos, tps, d, 9),
                          rk.residual_histograms(lv, pos, tps, d, 9))


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.integers(1, 10 ** 6), st.integers(1, 2 ** 62))
def test_alphabet_is_numpys_quantile(n, seed):
    rng = np.random.default_rng(seed)
    u = rng.geometric(rng.uniform(0.01, 0.9), size=min(n, 50000)) - 1
    if rng.random() < 0.3:
        u[rng.integers(0, u.size, 2)] = rng.choice([4094, 4095, 65535, 65536, 10 ** 7])
    ref = int(np.clip(int(np.quantile(u, 0.9999, method="higher")) + 2, 2, TF.MAX_ALPHABET))
    assert TF.alphabet_size(FK.NUMPY_KERNELS.symbol_counts(u), u.size) == ref


def test_quantize_rows_equal(simd):
    nk, rk = kernels()
    x = tokens(97, 75, np.float32) * 30
    x[0, :16] = [0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 8388607.5, -8388609.0, 3e38, -3e38,
                 16777215.4, 16777216.0, 1e-45, 0.0, -0.0, 4194304.5]
    sc = RNG.integers(100, 180, size=75)
    delta = RNG.integers(-20, 20, size=97)
    with np.errstate(over="ignore"):
        assert np.array_equal(nk.quantize_rows(x, sc, delta), rk.quantize_rows(x, sc, delta))
    x[3, 4] = np.nan                                   # NaN: numpy's result
    with np.errstate(invalid="ignore", over="ignore"):
        assert np.array_equal(nk.quantize_rows(x, sc, delta), rk.quantize_rows(x, sc, delta))


def _hists(rng, d, a):
    hist = rng.poisson(rng.gamma(0.5, 4.0, size=(d, 1)) *
                       np.exp(-np.arange(a) / rng.uniform(0.5, 6.0))[None, :])
    hist[:max(1, d // 10)] = 0                          # empty channels
    if d > 4:
        hist[2:4] = hist[4:6] if d >= 6 else hist[2:4]   # equal channels
    return hist.astype(np.int64)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.integers(0, 2 ** 32 - 1), st.integers(1, 300), st.integers(1, 40),
       st.sampled_from([1, 2, 3, 4, 5, 8, 12, 16, 32, 64]), st.integers(0, 6))
def test_lloyd_groups_equal(seed, d, a, t, iters):
    nk, rk = kernels()
    rng = np.random.default_rng(seed)
    hist = _hists(rng, d, a)
    group = rng.integers(0, t, size=d).astype(np.int64)
    assert np.array_equal(nk.lloyd_groups(hist, group.copy(), t, iters),
                          rk.lloyd_groups(hist, group.copy(), t, iters))


def test_lloyd_undecided_step_goes_to_numpy(simd):
    nk, rk = kernels()
    hist = np.zeros((6, 5), dtype=np.int64)
    hist[:, 0] = 10                                    # every table costs the same
    group = np.array([0, 1, 0, 1, 0, 1])
    nk.stats.clear()
    assert np.array_equal(nk.lloyd_groups(hist, group, 2, 6), rk.lloyd_groups(hist, group, 2, 6))
    assert nk.stats.get("lloyd_numpy") == 1


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.integers(0, 2 ** 32 - 1), st.integers(1, 12), st.integers(1, 300),
       st.sampled_from([2, 8, 10, 12, 15]), st.booleans())
def test_table_set_same_tables_and_bounded_bits(seed, t, a, prob_bits, escape_slot):
    nk, rk = kernels()
    rng = np.random.default_rng(seed)
    ghist = _hists(rng, t, a) * int(rng.choice([1, 1000]))
    ghist[rng.integers(0, t)] = 0                       # an unused table
    if rng.random() < 0.5:
        ghist[0, rng.integers(0, a, size=min(a, 40))] = 1   # rare symbols: taking away
    if (ghist > 0).sum(axis=1).max() + 1 > 1 << prob_bits:
        prob_bits = 15
    f_n, b_n, e_n = nk.table_set(ghist, prob_bits, escape_slot)
    f_r, b_r, e_r = rk.table_set(ghist, prob_bits, escape_slot)
    assert e_r == 0.0 and len(f_n) == len(f_r)
    assert all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(f_n, f_r))
    assert abs(b_n - b_r) <= e_n


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.integers(0, 2 ** 32 - 1), st.integers(1, 200), st.integers(2, 60),
       st.sampled_from([1, 4, 64]), st.booleans())
def test_group_tables_same(seed, d, a, max_tables, escape_slot):
    nk, rk = kernels()
    rng = np.random.default_rng(seed)
    hist = _hists(rng, d, a)
    key = (hist * np.arange(a)).sum(axis=1) / np.maximum(hist.sum(axis=1), 1)
    tm_n, f_n = TF.group_tables(hist, key, max_tables, 12, None, escape_slot, kernels=nk)
    tm_r, f_r = TF.group_tables(hist, key, max_tables, 12, None, escape_slot, kernels=rk)
    assert (tm_n is None) == (tm_r is None)
    assert tm_n is None or np.array_equal(tm_n, tm_r)
    assert all(np.array_equal(x, y) for x, y in zip(f_n, f_r)) and len(f_n) == len(f_r)


# -- issue 17, round 2: one pass for the predictors' counts, the 4-row token norms, the
# qp search's binary32 trial sums and its certificate from row statistics --

@pytest.mark.parametrize("seed", range(4))
def test_predictor_counts_equal(simd, seed):
    nk, rk = kernels()
    rng = np.random.default_rng(100 + seed)
    f, n, d = int(rng.integers(1, 4)), int(rng.choice([0, 1, 12, 30])), int(rng.integers(1, 20))
    lvls = _frames_levels(rng, f, n, d, big=seed % 2 == 1)
    l64 = lvls
    if seed >= 2:
        lvls = [lv.astype(np.int32) for lv in lvls]    # the native kernels' level type
    pos = [np.sort(rng.choice(n + 3, size=n, replace=False)).astype(np.uint32)
           for _ in range(f)]
    tps = dict(predictor=0, grid_present=0, num_prefix_tokens=0)
    for cands in ([0], [1], [0, 1], [1, 0, 1]):
        got, want = (nk.predictor_counts(lvls, pos, tps, cands),
                     rk.predictor_counts(l64, pos, tps, cands))
        assert len(got) == len(want) == len(cands)
        assert all(np.array_equal(a, b) for a, b in zip(got, want))
    tps = dict(predictor=0, grid_present=1, grid_height=3, grid_width=4, num_prefix_tokens=1)
    lv = _frames_levels(rng, 1, 13, d, big=True)
    pos = [np.arange(13, dtype=np.uint32)]
    got, want = (nk.predictor_counts([x.astype(np.int32) for x in lv], pos, tps, [0, 1, 2]),
                 rk.predictor_counts(lv, pos, tps, [0, 1, 2]))
    assert all(np.array_equal(a, b) for a, b in zip(got, want))


def test_token_norms_rows(simd):
    nk, rk = kernels()
    for k, d in ((1, 1), (3, 3), (4, 4), (5, 7), (9, 64), (13, 1027)):
        x = tokens(k, d, np.float32) * np.float32(RNG.choice([1e-30, 1.0, 1e18]))
        x[0, 0] = 0.0
        assert nk.token_norms(x).tobytes() == rk.token_norms(x).tobytes()


def _trial(te, x, qp):
    """numpy's mean token cosine of the qp search's trial at qp, and the C's inputs."""
    from tokenbits.baselines import mean_token_cosine
    from tokenbits import reconstruction
    allnorms = np.concatenate(te.norms)
    lv, codes, _ = te._quantize(x, qp, allnorms)
    rec = reconstruction.to_output(te.reconstruct(lv, codes), te.tps["output_dtype"])
    m = mean_token_cosine(x, Q.float_view(rec, reconstruction.DTYPES[te.tps["output_dtype"]]))
    delta = np.ascontiguousarray(te.token_step_deltas(allnorms, qp), dtype=np.int32)
    return m, np.ascontiguousarray(te._step_codes(qp), dtype=np.uint8), delta


@pytest.mark.parametrize("src", ["float16", "float32", "bfloat16"])
@pytest.mark.parametrize("seed", range(3))
def test_trial_bounds_hold(simd, src, seed):
    """The binary32 trial sums (fast) and the binary64 ones are within their bound of
    numpy's mean cosine; the certificate's lower bound is below numpy's value (less
    numpy's rounding), its 'every level 0' answer is numpy's value exactly."""
    import ctypes as C
    from tokenbits.native import encoder as NE
    rng = np.random.default_rng(seed)
    x = tokens(int(rng.integers(1, 70)), int(rng.choice([1, 7, 8, 40, 130])), np.float32)
    x *= np.float32(rng.choice([1e-3, 1.0, 300.0]))
    x[rng.integers(0, x.shape[0])] = 0.0                # a zero token
    if src == "float16":
        x = x.astype(np.float16)
    elif src == "bfloat16":
        x = (x.view(np.uint32) >> 16).astype(np.uint16)
    for opts in (dict(), dict(per_channel_steps=True, output_dtype="float32")):
        te = E.TrackEncoder([x], E.TrackOptions(qp=0, source_dtype=src, **opts),
                            levels.LEVELS[30])
        allx = np.ascontiguousarray(np.concatenate(te.xf))
        k, d = allx.shape
        nb = NE.numpy_cosine_bound(k, d)
        lib = NE._lib()
        sq, mx = np.empty(k), np.empty(k, dtype=np.float32)
        assert lib.tkb_enc_row_stats(NE._p(allx), k, d, NE._p(sq), NE._p(mx)) == 0
        for qp in (-84, -42, -30, -12, -6, 0, 12, 30, 87):
            m, code, delta = _trial(te, allx, qp)
            od = te.tps["output_dtype"]
            for fast in (1, 0):
                mean, bound = C.c_double(0), C.c_double(0)
                rc = lib.tkb_enc_trial_cosine(NE._p(allx), k, d, NE._p(code), NE._p(delta), od,
                                              fast, float("nan"), C.byref(mean),
                                              C.byref(bound))
                assert rc != 0 or abs(mean.value - m) <= bound.value
                for target in (m + 1e-3, m + 0.05, m + 0.3, 1.0):   # stopping early
                    rc = lib.tkb_enc_trial_cosine(NE._p(allx), k, d, NE._p(code),
                                                  NE._p(delta), od, fast, target,
                                                  C.byref(mean), C.byref(bound))
                    assert rc != 0 or abs(mean.value - m) <= bound.value or (
                        bound.value == 0.0 and m <= mean.value < target)
            lower, zeros = C.c_double(0), C.c_int64(0)
            rc = lib.tkb_enc_trial_certificate(NE._p(sq), NE._p(mx), k, d, NE._p(code),
                                               NE._p(delta), od, C.byref(lower),
                                               C.byref(zeros))
            if rc == 2:
                assert zeros.value / k == m
            elif rc == 0:
                assert lower.value - nb <= m


def test_certificate_decides_the_qp_search_ends():
    """On real-looking tokens the qp search's finest and coarsest trials are answered by
    the certificate (no pass over the values), with the reference's decisions."""
    nk, rk = kernels()
    x = tokens(200, 96)
    for target in (0.99, 0.999):
        nk.stats.clear()
        assert (tb.encode(x, backend="native", target_cos=target)
                == tb.encode(x, backend="reference", target_cos=target))
        assert nk.stats.get("reaches_zero") and nk.stats.get("reaches_bound")


def test_residual_passes_extreme_int32_levels(simd):
    """Levels at the ends of int32 (differences beyond int32: the AVX2 blocks' overflow
    path) and every small value, in rows longer than a vector block."""
    nk, rk = kernels()
    rng = np.random.default_rng(5)
    lv = rng.integers(-3, 4, size=(9, 37)).astype(np.int32)
    lv[2, :10] = [2 ** 31 - 1, -2 ** 31, 2 ** 30, -2 ** 30, 5, -(2 ** 31) + 1, 0, 1, -1, 7]
    lv[3, :10] = [-2 ** 31, 2 ** 31 - 1, -2 ** 30, 2 ** 30, 4, 2 ** 31 - 1, 0, 2, -2, -7]
    l64 = lv.astype(np.int64)           # the reference's levels: its differences in int64
    pos = [np.arange(9, dtype=np.uint32)]
    for p in (0, 1):
        tps = dict(predictor=p, grid_present=0, num_prefix_tokens=0)
        for lvn in (lv, l64):
            assert np.array_equal(nk.residual_counts([lvn], pos, tps),
                                  rk.residual_counts([l64], pos, tps))
        for alphabet in (1, 2, 3, 4, 5, 300):
            assert np.array_equal(nk.residual_histograms([lv], pos, tps, 37, alphabet),
                                  rk.residual_histograms([l64], pos, tps, 37, alphabet))
    tps = dict(predictor=0, grid_present=0, num_prefix_tokens=0)
    got, want = nk.predictor_counts([lv], pos, tps, [0, 1]), \
        rk.predictor_counts([l64], pos, tps, [0, 1])
    assert all(np.array_equal(a, b) for a, b in zip(got, want))


# -- issue 17, round 3: the predictors' counts and the per-channel histograms in one pass,
# the whole table grouping in C, the shaving of tables.normalize --

def _wide_levels(rng, f, n, d):
    """Levels of mostly small residuals with some of every size class the one-pass
    counter treats apart: 16..62, 63 and beyond, beyond 2^16, int32 extremes."""
    out = []
    for _ in range(f):
        lv = np.cumsum(rng.integers(-2, 3, size=(n, d)), axis=0) * rng.integers(1, 3, (1, d))
        m = lv.size
        if m:
            for vals in ([17, -30, 31], [63, 64, -32, 200], [70000, -(1 << 23)],
                         [2 ** 31 - 1, -2 ** 31]):
                lv.flat[rng.integers(0, m, max(1, m // 500))] = rng.choice(vals)
        out.append(lv.astype(np.int32))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_predictor_histograms_equal(simd, seed):
    """predictor_counts (one C pass over every predictor, 4-bit and 8-bit counters
    emptied every 15 and 255 rows) and the chosen predictor's residual_histograms derived
    from it equal numpy's, for rows wider than the vector blocks and than 255 rows."""
    nk, rk = kernels()
    rng = np.random.default_rng(300 + seed)
    f = int(rng.integers(1, 3))
    n = int(rng.choice([1, 15, 16, 256, 300]))
    d = int(rng.choice([1, 7, 16, 37, 70]))
    lvls = _wide_levels(rng, f, n, d)
    l64 = [lv.astype(np.int64) for lv in lvls]
    pos = [np.sort(rng.choice(n + 5, size=n, replace=False)).astype(np.uint32)
           for _ in range(f)]
    tps = dict(predictor=0, grid_present=0, num_prefix_tokens=0)
    for cands in ([0, 1], [1], [1, 0, 1, 0]):
        got, want = (nk.predictor_counts(lvls, pos, tps, cands),
                     rk.predictor_counts(l64, pos, tps, cands))
        assert len(got) == len(want) == len(cands)
        assert all(np.array_equal(a, b) for a, b in zip(got, want))
    for p in (0, 1):
        for alphabet in (1, 2, 5, 17, 63, 64, 65, 300):
            nk.stats.clear()
            nk.predictor_counts(lvls, pos, tps, [0, 1])
            t = {**tps, "predictor": p}
            got = nk.residual_histograms(lvls, pos, t, d, alphabet)
            assert np.array_equal(got, rk.residual_histograms(l64, pos, t, d, alphabet))
            # up to 64 symbols from the kept counts, else a pass of their own
            assert (nk.stats.get("residual_histograms_kept") == 1) == (alphabet <= 64)


def test_kept_histograms_need_the_same_levels():
    """The kept per-channel counts serve only the level arrays they were counted from,
    once: other arrays (equal or not) are counted again."""
    nk, rk = kernels()
    rng = np.random.default_rng(9)
    lv = _wide_levels(rng, 1, 40, 20)
    pos = [np.arange(40, dtype=np.uint32)]
    tps = dict(predictor=1, grid_present=0, num_prefix_tokens=0)
    nk.predictor_counts(lv, pos, tps, [0, 1])
    other = [lv[0] + 1]
    nk.stats.clear()
    assert np.array_equal(nk.residual_histograms(other, pos, tps, 20, 9),
                          rk.residual_histograms([o.astype(np.int64) for o in other], pos,
                                                 tps, 20, 9))
    assert not nk.stats.get("residual_histograms_kept")
    nk.residual_histograms(lv, pos, tps, 20, 9)               # used up above
    assert not nk.stats.get("residual_histograms_kept")


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.integers(0, 2 ** 32 - 1), st.integers(1, 300), st.integers(1, 70),
       st.sampled_from([1, 2, 4, 16, 64]), st.booleans(), st.sampled_from([None, 3, 8]),
       st.sampled_from([10, 12, 15]))
def test_group_tables_whole_same(seed, d, a, max_tables, escape_slot, forced, prob_bits):
    """tkb_enc_group_tables (candidates, Lloyd, dense renumbering, tables with their
    shaving, the bits compared within their bounds) gives numpy's grouping and tables,
    or hands the whole choice to the reference's steps."""
    nk, rk = kernels()
    rng = np.random.default_rng(seed)
    hist = _hists(rng, d, a)
    if rng.random() < 0.3:
        hist[:, rng.integers(0, a, size=min(a, 30))] += 1      # rare symbols everywhere
    key = (hist * np.arange(a)).sum(axis=1) / np.maximum(hist.sum(axis=1), 1)
    if a + 1 > 1 << prob_bits:
        prob_bits = 15
    tm_n, f_n = nk.group_tables(hist, key, max_tables, prob_bits, forced, escape_slot)
    tm_r, f_r = rk.group_tables(hist, key, max_tables, prob_bits, forced, escape_slot)
    assert (tm_n is None) == (tm_r is None)
    assert tm_n is None or np.array_equal(tm_n, tm_r)
    assert len(f_n) == len(f_r)
    assert all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(f_n, f_r))


def test_group_tables_decided_in_c_on_real_tokens(simd):
    """On real tokens (the bench's 576 x 1024 ViT frame) the whole grouping is decided in
    C, with the reference's result; on a small slice some steps may be too close to call
    (the reference's steps then), with the same result."""
    from tokenbits import bench
    nk, rk = kernels()
    x = bench.large_frame()
    for part, qps in ((x, (-12, -6, 0)), (x[:200, :256], (-3, 0))):
        for qp in qps:
            nk.stats.clear()
            te = E.TrackEncoder([part], E.TrackOptions(qp=qp), levels.LEVELS[30], kernels=nk)
            ter = E.TrackEncoder([part], E.TrackOptions(qp=qp), levels.LEVELS[30],
                                 kernels=rk)
            assert te.tps_payload == ter.tps_payload
            done = nk.stats.get("group_tables", 0)
            assert done + nk.stats.get("group_tables_numpy", 0) == 1
            assert done or part is not x, (qp, nk.stats)


def test_shaving_in_c_with_ties():
    """tables.normalize's shaving (more symbols than their share of slots): ties of equal
    count and frequency cut by index as numpy's stable sort does; distinct costs decided
    in C, not handed to numpy."""
    nk, rk = kernels()
    ghist = np.zeros((3, 300), dtype=np.int64)
    ghist[0, :] = 1                                  # all ties
    ghist[0, 0] = 5000
    ghist[1, :250] = np.arange(250) % 7 + 1          # ties in groups of equal counts
    ghist[1, 3] = 9000
    ghist[2, :200] = np.arange(1, 201) ** 2          # distinct costs
    for pb in (9, 10, 12):
        nk.stats.clear()
        f_n, b_n, e_n = nk.table_set(ghist, pb, True)
        f_r, b_r, _ = rk.table_set(ghist, pb, True)
        assert all(np.array_equal(x, y) for x, y in zip(f_n, f_r))
        assert abs(b_n - b_r) <= e_n
        assert not nk.stats.get("normalize_numpy"), (pb, nk.stats)
