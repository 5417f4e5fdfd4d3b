"""The track fit's numeric steps in libtkb's C (native/src/enc_fit.c, the
NativeFitKernels of tokenbits.native.encoder, which backend="native" passes to the
reference's rate control): every value equals numpy's (FitKernels) bit for bit, and every
decision (the qp search's cosine test, the table grouping's Lloyd step) is numpy's, the
C deciding only when its bound cannot flip the comparison (else numpy computes it), on
the AVX2 and the plain C paths."""
import numpy as np
import pytest

import tokenbits as tb
from tokenbits import encoder as E, levels, native

pytestmark = pytest.mark.skipif(native.available() is not None,
                                reason=f"libtkb not built: {native.available()}")

RNG = np.random.default_rng(20261208)


@pytest.fixture(params=["avx2", "scalar"])
def simd(request, monkeypatch):
    if request.param == "scalar":
        monkeypatch.setenv("TKB_NATIVE_SIMD", "scalar")
    return request.param


def kernels():
    from tokenbits.native import encoder as NE
    return NE.fit_kernels(), E.NUMPY_KERNELS


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
        m = mean_token_cosine(allx, E._float_view(rec, reconstruction.DTYPES[
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
