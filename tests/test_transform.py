"""Channel transforms (spec clauses 6.7, 7.6.3; Annex B.7): exactness, syntax, errors,
round trips through the API and the command line."""
import io
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, strategies as st

import tokenbits as tb
from tokenbits import decoder, encoder, levels, tkbt, transform_fit
from tokenbits import transform as tr
from tokenbits.reconstruction import STEP

LEVEL30 = levels.LEVELS[30]


# -- the normative arithmetic against exact rationals ---------------------------------

def exact_y(lev: int, code: int, f: int) -> int:
    """Y = lev * STEP[code] * 2^F rounded half to even, from the exact rational value."""
    v = Fraction(lev) * Fraction(float(STEP[code])) * Fraction(2) ** f
    return round(v)          # Python rounds Fractions half to even


def exact_v32(acc: int, scale_bits: int) -> np.float32:
    """The binary32 nearest to acc * 2^-scale_bits, ties to even, by exact comparison."""
    x = Fraction(acc, 2 ** scale_bits)
    cand = np.float32(float(x))          # within one ulp; fix by exact comparison
    best = None
    for c in (np.nextafter(cand, np.float32(-np.inf)), cand,
              np.nextafter(cand, np.float32(np.inf))):
        err = abs(Fraction(float(c)) - x)
        even = int(np.array(c, dtype=np.float32).view(np.uint32)) % 2 == 0
        key = (err, not even)
        if best is None or key < best[0]:
            best = (key, c)
    return best[1]


@given(st.integers(-(1 << 24) + 1, (1 << 24) - 1), st.integers(0, 255), st.integers(0, 40))
def test_coefficient_values_equal_the_exact_rounding(lev, code, f):
    y = exact_y(lev, code, f)
    if abs(y) > tr.MAX_COEFF_VALUE:
        with pytest.raises(tb.TKBValueError) as e:
            tr.coefficient_values(np.array([[lev]]), np.array([[code]]), f)
        assert e.value.clause == "7.6.3"
    else:
        got = tr.coefficient_values(np.array([[lev]]), np.array([[code]]), f)
        assert int(got[0, 0]) == y


def test_coefficient_values_at_ties_and_bounds():
    # code 144 (step 1) with F = 0: exact; code 138 (step 1/2): lev odd gives a tie
    levs = np.array([[1, 3, -1, -3, 5, (1 << 24) - 1]])
    codes = np.full(levs.shape, 138)
    got = tr.coefficient_values(levs, codes, 0)
    assert got.tolist() == [[exact_y(int(v), 138, 0) for v in levs[0]]]
    assert got.tolist() == [[0, 2, 0, -2, 2, 1 << 23]]      # ties to even
    with pytest.raises(tb.TKBValueError):
        tr.coefficient_values(np.array([[1]]), np.array([[144]]), 24)   # 2^24 > 2^24 - 1
    assert int(tr.coefficient_values(np.array([[-1]]), np.array([[138]]), 24)[0, 0]) == -(1 << 23)


@given(st.integers(1, 6), st.integers(1, 6), st.integers(0, 40), st.integers(0, 40),
       st.randoms(use_true_random=False))
def test_inverse_equals_exact_integer_arithmetic(k, d, f, g, rnd):
    k = min(k, d)
    basis = np.array([[rnd.randint(-(1 << 15) + 1, (1 << 15) - 1) for _ in range(d)]
                      for _ in range(k)], dtype=np.int64)
    mean = np.array([rnd.randint(-(1 << 52) + 1, (1 << 52) - 1) for _ in range(d)],
                    dtype=np.int64)
    t = tr.make_transform(mean, basis, f, g)
    y = np.array([[rnd.randint(-(1 << 24) + 1, (1 << 24) - 1) for _ in range(k)]
                  for _ in range(3)], dtype=np.int64)
    got = tr.inverse(y, t)
    for r in range(3):
        for c in range(d):
            acc = int(mean[c]) + sum(int(y[r, j]) * int(basis[j, c]) for j in range(k))
            want = exact_v32(acc, f + g)
            assert got[r, c].view(np.uint32) == np.float32(want).view(np.uint32), (r, c)


def test_inverse_is_exact_at_the_largest_sums():
    """K = 8192 coefficients at +-(2^24 - 1) against basis entries +-(2^15 - 1) and a mean
    of 2^52 - 1: the sums reach 2^53 - 2^40-ish, still exact in binary64."""
    k, d = tr.MAX_COEFFS, 2
    basis = np.full((k, d), (1 << 15) - 1, dtype=np.int64)
    basis[:, 1] = -basis[:, 1]
    mean = np.array([(1 << 52) - 1, -(1 << 52) + 1], dtype=np.int64)
    # K > D breaks clause 6.7, but the arithmetic bound is what is tested here
    t = tr.Transform(d, k, 0, 0, mean, basis, b"")
    y = np.full((1, k), (1 << 24) - 1, dtype=np.int64)
    y[0, ::2] -= 1                       # odd sums: the last bits matter
    got = tr.inverse(y, t)
    for c in range(d):
        acc = int(mean[c]) + int(np.sum(y[0].astype(object) * basis[:, c].astype(object)))
        assert abs(acc) < 1 << 53
        assert got[0, c] == exact_v32(acc, 0)


def test_worked_example_of_clause_7_6_3():
    """The example printed in spec/7-decoding.md, clause 7.6.3."""
    t = tr.make_transform(np.array([64, -32, 0]), np.array([[45, 45, 0], [32, -32, 45]]), 4, 6)
    assert t.data.hex(" ") == "03 00 00 00 02 00 00 00 04 06 08 07 40 e0 00 5a b4 02 0c 0b 40"
    lev = np.array([[3, -2], [1, 0]])
    codes = np.array([[144, 150], [145, 145]])
    y = tr.coefficient_values(lev, codes, 4)
    assert y.tolist() == [[48, -64], [18, 0]]
    v = tr.inverse(y, t)
    assert [hex(int(b)) for b in v.view(np.uint32).ravel()] == [
        "0x3e300000", "0x40828000", "0xc0340000", "0x3f5a8000", "0x3f428000", "0x0"]


# -- transform_data syntax and constraints (clause 6.7) ---------------------------------

def small_transform(**meta):
    rng = np.random.default_rng(5)
    return tr.make_transform(rng.integers(-1000, 1000, 6), rng.integers(-100, 100, (3, 6)),
                             10, 7, meta)


def test_transform_data_round_trip_and_digest():
    t = small_transform()
    u = tr.parse_transform_data(t.data, LEVEL30)
    assert (u.num_channels, u.num_coeffs, u.coeff_frac_bits, u.basis_frac_bits) == (6, 3, 10, 7)
    assert np.array_equal(u.mean, t.mean) and np.array_equal(u.basis, t.basis)
    assert u.digest == t.digest and len(t.digest) == 32


def _data(**v):
    base = dict(num_channels=2, num_coeffs=1, coeff_frac_bits=3, basis_frac_bits=2,
                mean_bits=4, basis_bits=4, mean=[1, -1], basis=[3, -3])
    base.update(v)
    from tokenbits import syntax
    from tokenbits.bitio import BitWriter
    w = BitWriter()
    syntax.write(w, "transform_data", base)
    return w.getvalue()


@pytest.mark.parametrize("values, cls, element", [
    (dict(num_channels=0, num_coeffs=0, mean=[], basis=[]), tb.TKBFormatError, "num_channels"),
    (dict(num_coeffs=0, basis=[]), tb.TKBFormatError, "num_coeffs"),
    (dict(num_coeffs=3, basis=[1] * 6), tb.TKBFormatError, "num_coeffs"),
    (dict(coeff_frac_bits=41), tb.TKBFormatError, "coeff_frac_bits"),
    (dict(basis_frac_bits=41), tb.TKBFormatError, "basis_frac_bits"),
    (dict(mean_bits=54), tb.TKBFormatError, "mean_bits"),
    (dict(basis_bits=1), tb.TKBFormatError, "basis_bits"),
    (dict(basis_bits=17), tb.TKBFormatError, "basis_bits"),
    (dict(mean=[-8, 1]), tb.TKBFormatError, "mean"),
    (dict(basis=[-8, 1]), tb.TKBFormatError, "basis"),
])
def test_transform_data_constraints(values, cls, element):
    with pytest.raises(cls) as e:
        tr.parse_transform_data(_data(**values), LEVEL30)
    assert e.value.element == element and e.value.clause == "6.7"


def test_transform_data_level_and_truncation():
    with pytest.raises(tb.TKBLevelError):        # 8192 channels > level 10's 4096
        tr.parse_transform_data(_data(num_channels=8192, mean_bits=0, basis=[1] * 8192),
                                levels.LEVELS[10])
    with pytest.raises(tb.TKBTruncatedError) as e:   # the basis is checked before reading
        tr.parse_transform_data(_data()[:-1], LEVEL30)
    assert e.value.element == "basis"
    with pytest.raises(tb.TKBFormatError) as e:
        tr.parse_transform_data(_data() + b"\0", LEVEL30)


# -- streams --------------------------------------------------------------------------

def tokens(seed=0, frames=3, n=65, d=48, rank=6):
    basis = np.random.default_rng(100 + d).normal(size=(rank, d))   # one subspace per d
    rng = np.random.default_rng(seed)
    scale = 2.0 ** -np.arange(rank)
    x = (rng.normal(size=(frames, n, rank)) * scale * 4) @ basis + 0.3
    return (x + 0.01 * rng.normal(size=x.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    return tb.fit_transform(tokens(seed=1), energy=0.9999)


def _values(stream):
    return np.stack([f.values for f in stream.frames]).astype(np.float32)


def test_by_reference_round_trip(model, tmp_path):
    x = tokens()
    data = tb.encode(x, target_cos=0.995, grid=(8, 8), prefix_tokens=1, transform=model,
                     backend="reference")
    with pytest.raises(tb.TKBReferenceError) as e:
        tb.decode(data, backend="reference")
    assert model.hexdigest in str(e.value)
    s = tb.decode(data, backend="reference", transforms=[model])
    assert s.header.profile_idc == levels.PROFILE_HIGH and s.header.version_minor == 1
    from tokenbits.baselines import mean_token_cosine
    assert mean_token_cosine(x.reshape(-1, 48), _values(s).reshape(-1, 48)) >= 0.995
    # the same stream through a .tkbt file, read_frame and iter_frames
    path = tmp_path / "m.tkbt"
    tb.save_transform(model, path)
    s2 = tb.decode(data, backend="reference", transforms=[path])
    assert tb.canonical_sha256(s2) == tb.canonical_sha256(s)
    f = tb.read_frame(data, 0, 2, transforms=[path.read_bytes()])
    assert np.array_equal(f.values, s.frames[2].values)
    frames = list(tb.iter_frames(io.BytesIO(data), transforms=[model]))
    assert all(np.array_equal(a.values, b.values) for a, b in zip(frames, s.frames))


def test_inline_and_by_reference_decode_the_same(model):
    x = tokens(seed=2)
    ref = tb.encode(x, qp=-12, transform=model, backend="reference")
    inl = tb.encode(x, qp=-12, transform=model, embed_transform=True, backend="reference")
    assert len(inl) == len(ref) + len(model.data) - 32
    a = tb.decode(ref, transforms=[model], backend="reference")
    b = tb.decode(inl, backend="reference")
    assert tb.canonical_sha256(a) == tb.canonical_sha256(b)


@pytest.mark.parametrize("out", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("predictor", ["none", "left", "up"])
def test_transform_streams_with_every_tool(model, out, predictor):
    x = tokens(seed=3)
    data = tb.encode(x, target_cos=0.99, grid=(8, 8), prefix_tokens=1, transform=model,
                     output_dtype=out, predictor=predictor, keep=0.75, per_channel_steps=True,
                     backend="reference")
    s = tb.decode(data, transforms=[model], backend="reference")
    assert s.frames[0].dtype == out and s.frames[0].values.shape == (49, 48)
    assert s.tracks[0][0]["predictor"] == {"none": 0, "left": 1, "up": 2}[predictor]


def test_auto_uses_a_transform_only_where_it_pays():
    x = tokens(seed=4, frames=4)
    auto = tb.encode(x, target_cos=0.99, transform="auto", backend="reference")
    plain = tb.encode(x, target_cos=0.99, backend="reference")
    assert len(auto) < plain.__len__()
    assert tb.decode(auto, backend="reference").header.profile_idc == levels.PROFILE_HIGH
    noise = np.random.default_rng(0).normal(size=(2, 40, 16)).astype(np.float32)
    a = tb.encode(noise, qp=-6, transform="auto", backend="reference")
    assert len(a) <= len(tb.encode(noise, qp=-6, backend="reference"))


def test_stream_writer_with_a_transform(model):
    x = tokens(seed=6)
    buf = io.BytesIO()
    with tb.StreamWriter(buf, level_idc=20) as w:
        w.add_track(x[:1], qp=-10, transform=model)
        w.write(0, x)
    s = tb.decode(buf.getvalue(), transforms=[model], backend="reference")
    assert len(s.frames) == 3 and s.header.profile_idc == levels.PROFILE_HIGH


def test_main_profile_streams_are_unchanged_by_version_1_1():
    x = tokens(seed=7)
    data = tb.encode(x, qp=-6, backend="reference")
    assert data[5] == 0 and data[6] == levels.PROFILE_MAIN      # version_minor 0, Main


# -- stream errors ------------------------------------------------------------------

def _units(data):
    return list(decoder.iter_units(data, LEVEL30))


def _rebuild(data, units):
    return data[:16] + b"".join(units)


def test_transform_unit_errors(model):
    x = tokens(seed=8, frames=1)
    data = tb.encode(x, qp=-8, transform=model, embed_transform=True, backend="reference")
    units = _units(data)
    tu = next(u for u in units if u.unit_type == decoder.UNIT_TRANSFORM)
    rest = [data[u.offset:u.offset + u.size] for u in units if u is not tu]

    def stream(header_profile, *unit_bytes):
        return encoder.stream_header(header_profile, data[7]) + b"".join(unit_bytes)

    def err(d, cls, clause):
        with pytest.raises(cls) as e:
            decoder.decode(d)
        assert e.value.clause == clause, e.value
        return e.value
    # in a Main stream unit type 5 is reserved as in 1.0: essential -> unsupported (6.2),
    # skippable -> skipped
    err(stream(levels.PROFILE_MAIN, encoder.unit(5, 255, tu.payload)), tb.TKBUnsupportedError,
        "6.2")
    assert not decoder.decode(stream(levels.PROFILE_MAIN, encoder.unit(5, 255, tu.payload, 0)
                                     )).errors
    # on a track: format error (6.2)
    err(stream(levels.PROFILE_HIGH, encoder.unit(5, 0, tu.payload)), tb.TKBFormatError, "6.2")
    # reserved transform_source
    err(stream(levels.PROFILE_HIGH, encoder.unit(5, 255, tu.payload[:1] + b"\2" +
                                                 tu.payload[2:])), tb.TKBFormatError, "6.7")
    # redefined with other content
    other = tr.transform_unit_payload(0, small_transform(), inline=True)
    err(stream(levels.PROFILE_HIGH, encoder.unit(5, 255, tu.payload),
               encoder.unit(5, 255, other)), tb.TKBReferenceError, "6.7")
    # a parameter set naming a transform that is not there (the transform unit dropped)
    err(stream(levels.PROFILE_HIGH, *rest), tb.TKBReferenceError, "6.3")
    # a transform of other D
    wrong = tr.make_transform(np.zeros(47, np.int64), np.ones((2, 47), np.int64), 8, 8)
    err(stream(levels.PROFILE_HIGH, encoder.unit(5, 255, tr.transform_unit_payload(0, wrong,
                                                                                  True)), *rest),
        tb.TKBReferenceError, "6.3")
    # coding_mode 2 in a Main stream: reserved as in 1.0 (6.3)
    e = err(stream(levels.PROFILE_MAIN, *rest), tb.TKBFormatError, "6.3")
    assert e.element == "coding_mode"


def test_coefficient_overflow_is_a_value_error():
    # a transform whose F makes every nonzero level overflow 2^24 - 1
    t = tr.make_transform(np.zeros(4, np.int64), np.eye(4, dtype=np.int64) * 100, 40, 6)
    x = tokens(seed=9, frames=1, d=4, rank=2, n=10)
    te = encoder.TrackEncoder([x[0]], encoder.TrackOptions(qp=0, transform=t), LEVEL30)
    # the encoder clips its levels, so the stream is valid ...
    data = tb.encode(x, qp=0, transform=t, embed_transform=True, backend="reference")
    tb.decode(data, backend="reference")
    assert te.transform is t
    # ... and a level past the limit is rejected
    with pytest.raises(tb.TKBValueError) as e:
        tr.reconstruct(np.array([[1 << 20, 0, 0, 0]]), np.full((1, 4), 144), t)
    assert e.value.clause == "7.6.3"


@given(st.binary(min_size=1, max_size=64), st.integers(0, 10_000))
def test_mutated_transform_streams_decode_or_raise_tkb_errors(patch, where):
    data = bytearray(_FUZZ_BASE)
    pos = 16 + where % (len(data) - 16)
    data[pos:pos + len(patch)] = patch
    try:
        tb.decode(bytes(data), strict=False, backend="reference", transforms=[_FUZZ_MODEL])
    except tb.TKBError:
        pass


_FUZZ_MODEL = tr.make_transform(np.arange(8) * 3 - 10, np.arange(24).reshape(3, 8) - 11, 6, 3)
_FUZZ_BASE = tb.encode(tokens(seed=10, frames=2, n=20, d=8, rank=3), qp=-10,
                       transform=_FUZZ_MODEL, embed_transform=True, backend="reference") + \
    tb.encode(tokens(seed=10, frames=1, n=20, d=8, rank=3), qp=-10, transform=_FUZZ_MODEL,
              backend="reference")[16:]


# -- .tkbt files and the command line ----------------------------------------------

def test_tkbt_files(tmp_path, model):
    p = tmp_path / "m.tkbt"
    tb.save_transform(model, p)
    back = tb.load_transform(p)
    assert back.digest == model.digest and back.meta["transform.energy"]
    with pytest.raises(tb.TKBError):
        tkbt.loads(tb.encode(tokens(), qp=-6, backend="reference"))   # a stream, no transform


def tkb(*args, cwd=None):
    return subprocess.run([sys.executable, "-P", "-m", "tokenbits.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=600)


def test_cli_fit_encode_decode_inspect(tmp_path):
    x = tokens(seed=11)
    np.save(tmp_path / "calib.npy", tokens(seed=12))
    np.save(tmp_path / "x.npy", x)
    r = tkb("transform", "fit", tmp_path / "calib.npy", "-o", tmp_path / "m.tkbt",
            "--energy", "0.999", "--meta", "model.name=test")
    assert r.returncode == 0, r.stderr
    assert "sha256" in r.stdout and "K " in r.stdout
    r = tkb("inspect", tmp_path / "m.tkbt")
    assert r.returncode == 0, r.stderr
    digest = tb.load_transform(tmp_path / "m.tkbt").hexdigest
    assert digest in r.stdout and "energy kept" in r.stdout
    r = tkb("encode", tmp_path / "x.npy", "-o", tmp_path / "x.tkb", "--transform",
            tmp_path / "m.tkbt", "-q")
    assert r.returncode == 0, r.stderr
    r = tkb("decode", tmp_path / "x.tkb", "-o", tmp_path / "y.npy", "-q")
    assert r.returncode == 1 and digest in r.stderr          # the transform is missing
    r = tkb("decode", tmp_path / "x.tkb", "-o", tmp_path / "y.npy", "-q", "--transform",
            tmp_path / "m.tkbt")
    assert r.returncode == 0, r.stderr
    y = np.load(tmp_path / "y.npy")
    s = tb.decode((tmp_path / "x.tkb").read_bytes(), transforms=[tmp_path / "m.tkbt"],
                  backend="reference")
    assert np.array_equal(y, tb.to_array(s))
    r = tkb("encode", tmp_path / "x.npy", "-o", tmp_path / "a.tkb", "--transform", "auto", "-q")
    assert r.returncode == 0, r.stderr
    r = tkb("encode", tmp_path / "x.npy", "-o", tmp_path / "b.tkb", "--embed-transform")
    assert r.returncode == 2 and "--embed-transform needs" in r.stderr


def test_closed_loop_quantizer_residuals_and_deadzone():
    """Annex B.1's closed-loop quantizer: with deadzone 0 and no prediction it is the
    open-loop rounding; with prediction every level lies within 1/2 + deadzone steps of
    its value and every coded residual is that of the quantized levels."""
    from tokenbits import prediction, quantization as Q
    rng = np.random.default_rng(5)
    x = (rng.normal(size=(17, 12)) * 3).astype(np.float32)
    codes = np.full((17, 12), 150)
    none = np.full(17, -1)
    assert np.array_equal(Q.quantize_closed_loop(x, codes, none, 0.0),
                          Q.quantize_levels(x, codes))
    tps = dict(predictor=2, grid_present=1, grid_height=4, grid_width=4, num_prefix_tokens=1)
    pred = prediction.predictor_rows(np.arange(17), tps)
    assert pred[0] == -1 and pred[5] == 1 and pred[4] == -1
    y = x * Q.INV_STEP[codes]
    for dz in (0.125, 0.3125, 0.5):
        lv = Q.quantize_closed_loop(x, codes, pred, dz)
        assert np.all(np.abs(lv - y) <= 0.5 + dz + 1e-6)
        res = prediction.residuals_from_levels(lv, np.arange(17), tps)
        assert np.array_equal(prediction.reconstruct_levels(res, np.arange(17), tps), lv)
        # a residual is 0 wherever the value lies within 1/2 + dz of its prediction
        plv = np.where((pred >= 0)[:, None], lv[np.maximum(pred, 0)], 0)
        assert np.all(res[np.abs(y - plv) < 0.5 + dz] == 0)
    assert np.array_equal(prediction.chain_depths(pred)[[0, 1, 5, 9, 13]], [0, 0, 1, 2, 3])


def test_per_coefficient_steps_with_a_transform(model):
    """Annex B.1/B.7: with a transform the encoder gives each coefficient its own step
    code, finer for the strong coefficients (tilt -2); without one, one step code unless
    asked; per_channel_steps=False and step_tilt override the defaults."""
    x = tokens(seed=8)

    def tps_of(**kw):
        data = tb.encode(x, qp=-8, backend="reference", **kw)
        return tb.decode(data, transforms=[model], backend="reference").tracks[0][0], data
    t, _ = tps_of(transform=model)
    codes = np.asarray(t["step_code"], dtype=np.int64)
    assert t["per_channel_steps"] == 1 and codes.size == model.num_coeffs
    c = tb.transform_fit.forward(x.reshape(-1, 48), model,
                                 tb.transform_fit.input_scale(x.reshape(-1, 48), model))
    rms = np.sqrt((c.astype(np.float64) ** 2).mean(axis=0))
    off = np.clip(np.round(-2 * np.log2(rms / np.median(rms))), -24, 24)
    assert np.array_equal(codes, np.clip(-8 + 144 + off, 0, 255))
    assert codes[np.argmax(rms)] < codes[np.argmin(rms)]
    t, _ = tps_of(transform=model, per_channel_steps=False)
    assert t["per_channel_steps"] == 0 and len(t["step_code"]) == 1
    t, _ = tps_of(transform=model, step_tilt=3)
    codes3 = np.asarray(t["step_code"], dtype=np.int64)
    assert codes3[np.argmax(rms)] > codes3[np.argmin(rms)]
    t, _ = tps_of()
    assert t["per_channel_steps"] == 0
    t, _ = tps_of(per_channel_steps=True)
    assert t["per_channel_steps"] == 1 and len(t["step_code"]) == 48


def test_max_levels_table_equals_the_formula():
    """transform_fit.max_levels gathers from a table over the codes present: the same
    values as the formula applied element by element (codes beyond 0..255 included)."""
    rng = np.random.default_rng(17)
    for frac in (0, 5, 12, 20):
        for lo, hi in ((0, 256), (-40, 300), (140, 141)):
            codes = rng.integers(lo, hi, size=(37, 29))
            got = transform_fit.max_levels(codes, frac)
            want = transform_fit._max_levels_of(codes, frac)
            assert got.dtype == want.dtype and np.array_equal(got, want)
    assert transform_fit.max_levels(np.zeros((0, 3), np.int64), 4).shape == (0, 3)
