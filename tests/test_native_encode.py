"""libtkb's encoder core (native/src/enc_*.c, tokenbits.native.encoder): streams written
with backend="native" (the reference's rate control, the C core coding the frames) are
byte-identical to backend="reference" for every option; the C tools agree with the
reference's numpy bit for bit; a track the core cannot code falls back to the
reference with a warning; auto picks native without a GPU."""
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import tokenbits as tb
from tokenbits import encoder as E, levels, reconstruction, transform_fit
from tokenbits import quantization as Q
from tokenbits import native
from tokenbits.errors import TKBEncodeError

pytestmark = pytest.mark.skipif(native.available() is not None,
                                reason=f"libtkb not built: {native.available()}")

if native.available() is None:
    from tokenbits.native import encoder as NE

RNG = np.random.default_rng(20261207)


def tokens(f, n, d, dtype="float32", scale=1.0, rng=RNG):
    x = (rng.standard_normal((f, n, d)) * scale *
         rng.gamma(1.0, 1.0, size=(1, 1, d))).astype(np.float32)
    if n > 1:
        x[:, 1:] = 0.7 * x[:, :-1] + 0.3 * x[:, 1:]
    if dtype == "float16":
        return x.astype(np.float16)
    if dtype == "bfloat16":
        return reconstruction.float32_to_bfloat16_bits(x)
    return x


def same(x, **opts):
    """Encode with both backends; both succeed with the same bytes or both raise the same
    error class."""
    try:
        ref = tb.encode(x, backend="reference", **opts)
    except TKBEncodeError as e:
        with pytest.raises(type(e)):
            tb.encode(x, backend="native", **opts)
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("error", NE.NativeFallbackWarning)   # no silent fallback
        nat = tb.encode(x, backend="native", **opts)
    assert nat == ref, opts
    return ref


X32 = tokens(2, 37, 24)
X16 = tokens(2, 37, 24, "float16")
XBF = tokens(2, 37, 24, "bfloat16")
GRID = tokens(2, 1 + 36, 20, "float16")        # 1 prefix + 6 x 6
GOPT = dict(grid=(6, 6), prefix_tokens=1)
T = transform_fit.fit_transform(X32.reshape(-1, 24), energy=0.999)

CASES = {
    "default": (X32, {}),
    "qp": (X32, dict(qp=-8)),
    "float16 target_cos": (X16, dict(target_cos=0.995)),
    "bfloat16": (XBF, dict(source_dtype="bfloat16", qp=-4)),
    "bfloat16 to float32": (XBF, dict(source_dtype="bfloat16", output_dtype="float32")),
    "bpv": (X32, dict(bpv=3.0)),
    "deadzone": (X32, dict(deadzone=0.3, target_cos=0.99)),
    "deadzone qp": (X16, dict(deadzone=0.5, qp=-2)),
    "per-channel steps": (X32, dict(per_channel_steps=True, qp=-6)),
    "no token scale": (X32, dict(token_scale=False, qp=-6)),
    "no token scale deadzone": (X32, dict(token_scale=False, deadzone=0.2, qp=-6)),
    "grid up": (GRID, dict(GOPT, predictor="up", qp=-6)),
    "grid auto": (GRID, dict(GOPT)),
    "grid up deadzone": (GRID, dict(GOPT, predictor="up", deadzone=0.25)),
    "left": (X16, dict(predictor="left")),
    "none": (X16, dict(predictor="none", qp=-10)),
    "tables": (X32, dict(num_tables=4, prob_bits=11)),
    "lanes": (X32, dict(num_lanes=5, lane_steps=7, exact_lanes=True)),
    "one lane": (X32, dict(num_lanes=1, lane_steps=3, exact_lanes=True)),
    "keep": (GRID, dict(GOPT, keep=0.5)),
    "keep up": (GRID, dict(GOPT, keep=0.4, predictor="up", qp=-6)),
    "keep coverage": (GRID, dict(GOPT, keep_coverage=0.9)),
    "keep uniform": (GRID, dict(GOPT, keep=0.5, prune="uniform")),
    "keep farthest": (GRID, dict(GOPT, keep=0.5, prune="farthest")),
    "keep diversity": (X32, dict(keep=0.6, prune="diversity")),
    "merge map": (GRID, dict(GOPT, keep=0.5, merge_map=True)),
    "merge tokens": (GRID, dict(GOPT, keep=0.5, merge_tokens=True, merge_map=True)),
    "transform": (X32, dict(transform=T)),
    "transform qp": (X32, dict(transform=T, qp=-4, embed_transform=True)),
    "transform rounding": (X32, dict(transform=T, deadzone=0.0, qp=-6)),
    "transform float16": (X16, dict(transform=T, qp=-5)),
    "transform auto": (X32[:1], dict(transform="auto", qp=-6)),
    "lossless float32": (X32, dict(lossless=True)),
    "lossless float16": (X16, dict(lossless=True)),
    "lossless bfloat16": (XBF, dict(lossless=True, source_dtype="bfloat16")),
    "lossless left": (X16, dict(lossless=True, predictor="left")),
    "lossless none": (X32, dict(lossless=True, predictor="none")),
    "lossless grid up": (GRID, dict(GOPT, lossless=True, predictor="up")),
    "lossless keep": (GRID, dict(GOPT, lossless=True, keep=0.5)),
    "lossless lanes": (X16, dict(lossless=True, num_lanes=3, lane_steps=5, exact_lanes=True)),
    "ids": (RNG.integers(0, 30522, size=(3, 50)), dict(vocab_size=30522)),
    "ids small": (RNG.integers(0, 5, size=(2, 9)).astype(np.int32), {}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_same_bytes(name):
    x, opts = CASES[name]
    assert same(x, **opts) is not None


def test_boundaries():
    same(np.zeros((0, 8), np.float32))                       # empty frame
    same(np.zeros((2, 0, 8), np.float16), lossless=True)
    same(np.ones((1, 8), np.float32) * 3)                     # one token
    same(np.ones((1, 1), np.float16), lossless=True)
    same(np.zeros((5, 4), np.float32), qp=0)                  # all zero
    x = tokens(1, 60, 16)
    x[0, 7, 3] = 1e30                                         # huge: escapes, clipped levels
    x[0, 9, :] = -3e-38
    x[0, 11, 5] = -2e4
    same(x, qp=-30)
    same(x, qp=-30, deadzone=0.4)
    same(x, target_cos=0.999)
    same(x.astype(np.float64))                                # coded from float32
    y = tokens(1, 40, 8, "float16")
    y[0, 3, 1], y[0, 4, 2], y[0, 5, 3] = np.nan, np.inf, -np.inf
    y[0, 6, 4] = np.float16(6e-8)                             # a subnormal
    same(y, lossless=True)
    same(y, lossless=True, predictor="none")
    z = tokens(1, 40, 8)
    z[0, 3, 1], z[0, 4, 2] = np.nan, -np.inf
    same(z, lossless=True)
    b = tokens(1, 40, 8, "bfloat16")
    b[0, 1, 1] = 0x7FC1                                       # a bfloat16 NaN
    same(b, lossless=True, source_dtype="bfloat16")
    same(np.array([0, 2 ** 31 - 1, 5], dtype=np.int64))       # ids up to 2^31 - 1
    same(tokens(1, 30, 8), qp=-144 + 60)                      # the finest qp searched
    same(tokens(1, 30, 8), qp=111)                            # everything zero


def test_several_tracks_and_frames():
    a, b = tokens(3, 20, 12, "float16"), RNG.integers(0, 100, size=(2, 30))
    tracks = [(a, dict(qp=-5)), (b, dict(vocab_size=100)), (a, dict(lossless=True))]
    ref = tb.encode_tracks(tracks, backend="reference", meta={"k": "v"})
    assert tb.encode_tracks(tracks, backend="native", meta={"k": "v"}) == ref


def test_frames_outside_the_fit():
    """Frames other than the fitted ones (as a streaming encoder codes them): quantized
    from scratch by the core, escapes for values beyond the tables, the same errors."""
    calib = tokens(2, 30, 24)
    for opts in (dict(qp=-6), dict(qp=-6, deadzone=0.3), dict(transform=T, qp=-4),
                 dict(lossless=True)):
        te = E.TrackEncoder(list(calib), E.TrackOptions(**opts), levels.LEVELS[30],
                            pseudo=True)
        for scale in (1.0, 40.0):
            f = tokens(1, 25, 24, scale=scale)[0]
            try:
                ref = te.encode_frame(f, 3)
            except TKBEncodeError as e:
                with pytest.raises(TKBEncodeError, match=str(e)[:20]):
                    NE.encode_frame(te, f, 3)
                continue
            assert NE.encode_frame(te, f, 3) == ref
    te = E.TrackEncoder(list(calib), E.TrackOptions(qp=-6), levels.LEVELS[30])
    big = calib[0] * 1000
    with pytest.raises(TKBEncodeError) as e_ref:
        te.encode_frame(big, 0)
    with pytest.raises(TKBEncodeError) as e_nat:
        NE.encode_frame(te, big, 0)
    assert str(e_ref.value) == str(e_nat.value)


def test_fallback_is_announced(monkeypatch):
    x, opts = CASES["grid up"]
    ref = tb.encode(x, backend="reference", **opts)
    monkeypatch.setattr(NE, "unsupported", lambda te: "a reason for the test")
    n = len(NE.fallbacks)
    with pytest.warns(NE.NativeFallbackWarning, match="a reason for the test"):
        assert tb.encode(x, backend="native", **opts) == ref
    assert len(NE.fallbacks) == n + 1 and NE.fallbacks[-1][1] == "a reason for the test"


def test_dispatch():
    from tokenbits.kernels import dispatch
    assert dispatch.choose("native", "encode") == "native"
    if dispatch.backends()["gpu"] is not None:
        assert dispatch.choose("auto", "encode") == "native"
    assert NE.simd() in ("scalar", "avx2", "avx512")


def test_simd_name_follows_the_switch(monkeypatch):
    """TKB_NATIVE_SIMD=avx2 turns the AVX-512 paths off, =scalar every vector path."""
    monkeypatch.delenv("TKB_NATIVE_SIMD", raising=False)     # the CPU's own answer
    native_name = NE.simd()
    monkeypatch.setenv("TKB_NATIVE_SIMD", "avx2")
    assert NE.simd() == ("scalar" if native_name == "scalar" else "avx2")
    monkeypatch.setenv("TKB_NATIVE_SIMD", "scalar")
    assert NE.simd() == "scalar"


# -- the C tools against the reference's numpy ------------------------------------------

def test_inv_step_and_norms():
    lib = NE._lib()
    inv = np.array([lib.tkb_enc_inv_step(q) for q in range(256)], dtype=np.float32)
    assert inv.tobytes() == Q.INV_STEP.tobytes()
    x = tokens(1, 50, 33, scale=1e3)[0]
    assert NE.token_norms(x).tobytes() == Q.token_norms(x).tobytes()


@pytest.mark.parametrize("simd", ["avx2", "scalar"])
def test_conversions_of_every_16_bit_pattern(simd, monkeypatch):
    if simd == "scalar":
        monkeypatch.setenv("TKB_NATIVE_SIMD", "scalar")
    bits = np.arange(1 << 16, dtype=np.uint16).reshape(-1, 64)
    pos = np.arange(bits.shape[0], dtype=np.uint32)
    h = NE.gather_f32(bits.view(np.float16), "float16", pos)
    assert h.view(np.uint32).tobytes() == bits.view(np.float16).astype(np.float32) \
        .view(np.uint32).tobytes()
    b = NE.gather_f32(bits, "bfloat16", pos)
    assert b.view(np.uint32).tobytes() == Q.float_view(bits, "bfloat16") \
        .view(np.uint32).tobytes()


def test_rounding_ties_and_limits():
    """Levels at ties (half to even), near the 2^24 limit, beyond float ranges."""
    v = np.array([[0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 8388607.5, -8388609.0, 3e38, -3e38,
                   16777215.4, 16777216.0, 1e-45, 0.0, -0.0, 4194304.5]], dtype=np.float32)
    codes = np.full(v.shape[1], 144)
    for closed, dz in ((False, 0.0), (True, 0.0), (True, 0.3125), (True, 0.5)):
        lim = np.full(256, (1 << 24) - 1, dtype=np.int64)
        if closed:
            ref = Q.quantize_closed_loop(v, codes[None, :], np.array([-1]), dz)
        else:
            ref = Q.quantize_levels(v, codes[None, :])
        esc = np.full(v.shape[1], 1 << 30, dtype=np.uint32)
        _, _, lv = NE.quantize(v, codes, np.zeros(1), lim, np.array([-1]),
                               dz if closed else -1.0, esc)
        assert lv.astype(np.int64).tolist() == ref.tolist(), (closed, dz)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.integers(0, 2 ** 32 - 1), st.integers(1, 4), st.integers(2, 40))
def test_forward_transform(seed, f, n):
    rng = np.random.default_rng(seed)
    x = tokens(1, n, 24, scale=float(rng.choice([1e-3, 1.0, 300.0])), rng=rng)[0]
    a = transform_fit.input_scale(x, T) + int(rng.integers(-3, 3))
    assert NE.forward(x, T, a).tobytes() == transform_fit.forward(x, T, a).tobytes()


OPTION_SETS = st.fixed_dictionaries({}, optional={
    "qp": st.integers(-40, 10), "target_cos": st.sampled_from([0.95, 0.99, 0.999]),
    "deadzone": st.sampled_from([0.0, 0.125, 0.3125, 0.5]),
    "predictor": st.sampled_from(["auto", "none", "left"]),
    "per_channel_steps": st.booleans(), "token_scale": st.booleans(),
    "num_lanes": st.integers(1, 40), "lane_steps": st.integers(1, 64),
    "exact_lanes": st.booleans(), "keep": st.sampled_from([0.3, 0.5, 0.9]),
    "prune": st.sampled_from(["balanced", "coverage", "uniform", "farthest"]),
    "merge_map": st.booleans(), "lossless": st.booleans(),
    "output_dtype": st.sampled_from(["float32", "float16", "bfloat16"]),
})


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.integers(0, 2 ** 32 - 1), st.integers(1, 3), st.integers(0, 40),
       st.integers(1, 24), st.sampled_from(["float32", "float16", "bfloat16"]),
       st.sampled_from([1e-3, 1.0, 50.0]), OPTION_SETS)
def test_same_bytes_hypothesis(seed, f, n, d, dtype, scale, opts):
    rng = np.random.default_rng(seed)
    x = tokens(f, n, d, dtype, scale, rng)
    if rng.random() < 0.3 and x.size:                 # outliers: escapes
        flat = x.reshape(-1)
        big = min(float(np.abs(flat.astype(np.float32)).max()) * 200, 6e4)
        flat[rng.integers(0, flat.size, 3)] = big if dtype != "bfloat16" else 0x4F00
    opts = dict(opts)
    if "qp" in opts and "target_cos" in opts:
        opts.pop("target_cos")
    if "prune" in opts and "keep" not in opts:
        opts.pop("prune")
    if opts.get("lossless"):
        for k in ("qp", "target_cos", "deadzone", "output_dtype", "per_channel_steps",
                  "token_scale"):
            opts.pop(k, None)
    if dtype == "bfloat16":
        opts["source_dtype"] = "bfloat16"
    same(x, **opts)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.integers(0, 2 ** 32 - 1), st.integers(1, 16), st.integers(1, 5), st.integers(1, 9),
       st.integers(1, 40), st.integers(1, 70), st.integers(0, 3000))
def test_rans_any_tables(seed, prob_bits, t, c, lanes, steps, n):
    """The reciprocal division of the rANS encoder (enc_rans.c) against the reference's
    rans.encode: every precision, frequencies 1 .. 2^prob_bits, skewed tables."""
    from tokenbits import rans, tables
    rng = np.random.default_rng(seed)
    m = 1 << prob_bits
    alph = int(rng.integers(1, min(m, 64) + 1))
    freqs = []
    for _ in range(t):
        w = rng.gamma(rng.choice([0.05, 1.0]), size=alph) + 1e-9
        f = np.maximum(1, np.floor(w / w.sum() * (m - alph)).astype(np.int64))
        f[int(np.argmax(f))] += m - int(f.sum())         # alph 1: one symbol, every slot
        freqs.append(f)
    freq_all, cum_all = tables.encode_arrays(freqs, alph)
    chan_table = rng.integers(0, t, size=c)
    probs = freq_all[chan_table] / m                   # [c, alph]
    rows = -(-n // c) if n else 0
    sym = np.array([[rng.choice(alph, p=probs[j]) for j in range(c)] for _ in range(rows)],
                   dtype=np.int64).reshape(-1)[:n]
    flat = np.tile(chan_table * alph, rows)[:n] + sym
    ref_w, ref_cw = rans.encode(sym, freq_all.ravel()[flat], cum_all.ravel()[flat],
                                lanes, steps, prob_bits)

    class Tabs:
        pass
    tabs = Tabs()
    tabs.alph = alph
    tabs.freq = np.ascontiguousarray(freq_all.ravel(), dtype=np.uint32)
    tabs.cum = np.ascontiguousarray(cum_all.ravel(), dtype=np.uint32)
    tabs.base = np.ascontiguousarray(chan_table * alph, dtype=np.uint32)
    w, cw = NE.rans_encode(sym, c, tabs, lanes, steps, prob_bits)
    assert np.array_equal(np.asarray(w, np.int64), np.asarray(ref_w, np.int64).ravel())
    assert np.array_equal(np.asarray(cw, np.int64), np.asarray(ref_cw, np.int64).ravel())


@pytest.mark.parametrize("simd", ["avx2", "scalar"])
def test_units_crc32c(simd, monkeypatch):
    """The units' CRC-32C by libtkb (SSE4.2 or tables) is the reference's (clause 3.4)."""
    from tokenbits.crc32c import crc32c, crc32c_bytewise
    if simd == "scalar":
        monkeypatch.setenv("TKB_NATIVE_SIMD", "scalar")
    rng = np.random.default_rng(7)
    assert NE.crc32c(b"123456789") == 0xE3069283
    for n in (0, 1, 7, 8, 9, 255, 256, 4095, 3 * 4096 - 1, 3 * 4096, 3 * 4096 + 13, 50001):
        data = rng.integers(0, 256, size=n, dtype=np.uint8).tobytes()
        assert NE.crc32c(data) == crc32c(data)
        assert n > 5000 or NE.crc32c(data) == crc32c_bytewise(data)
        assert NE.crc32c(bytearray(data)) == crc32c(data)
    assert NE.fit_kernels().crc32c(b"\xff" * 300) == crc32c(b"\xff" * 300)


@pytest.mark.parametrize("simd", ["avx2", "scalar"])
@pytest.mark.parametrize("seed", range(4))
def test_residual_symbols(seed, simd, monkeypatch):
    if simd == "scalar":
        monkeypatch.setenv("TKB_NATIVE_SIMD", "scalar")
    rng = np.random.default_rng(seed)
    k, c = int(rng.integers(1, 40)), int(rng.integers(1, 30))
    lv = rng.integers(-300, 300, size=(k, c))
    lv.flat[rng.integers(0, lv.size, 2)] = [(1 << 24) - 1, -(1 << 24) + 1]
    if seed % 2:                          # levels as the fit's native kernels give them
        lv = lv.astype(np.int32)
    pred = np.where(rng.random(k) < 0.3, -1, np.arange(k) - 1)
    pred[0] = -1
    esc = rng.integers(1, 600, size=c)
    u = np.where((pred >= 0)[:, None], lv - lv[np.maximum(pred, 0)], lv)
    u = np.where(u < 0, -2 * u - 1, 2 * u)
    is_esc = u >= esc
    sym, escapes = NE.residual_symbols(lv, pred, esc)
    assert np.array_equal(sym.astype(np.int64), np.where(is_esc, esc, u).ravel())
    assert np.array_equal(escapes, (u - esc)[is_esc])
    sym2, escapes2 = NE.residual_symbols(lv, pred, esc, scratch=True)   # the work arrays
    assert np.array_equal(sym2, sym) and np.array_equal(escapes2, escapes)
