"""The inverse-transform kernel (kernels/transform.py) against its reference twin
(tokenbits.transform, clause 7.6.3), output for output with exact equality, and
transform streams through the GPU decoder.  On CPU the kernel runs in Triton's
interpreter (tests/conftest.py); TKB_TEST_DEVICE=cuda runs it on a GPU."""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

import tokenbits as tb  # noqa: E402
from tokenbits import reconstruction  # noqa: E402
from tokenbits import transform as tr  # noqa: E402
from tokenbits.kernels import codec  # noqa: E402
from tokenbits.kernels import transform as tk  # noqa: E402

DEV = os.environ.get("TKB_TEST_DEVICE", "cpu")
TORCH_OUT = {0: torch.float32, 1: torch.float16, 2: torch.int16}


def _reference(lev, codes, t, out_dtype):
    """Reference values and the rows whose coefficients overflow (TKBValueError)."""
    bad = np.zeros(lev.shape[0], dtype=bool)
    for r in range(lev.shape[0]):
        try:
            tr.coefficient_values(lev[r:r + 1], codes[r:r + 1], t.coeff_frac_bits)
        except tb.TKBValueError:
            bad[r] = True
    ok = ~bad
    vals = np.zeros((lev.shape[0], t.num_channels), dtype=np.float32)
    if ok.any():
        vals[ok] = tr.reconstruct(lev[ok], codes[ok], t)
    return reconstruction.to_output(vals, out_dtype), bad


@pytest.fixture(autouse=True)
def unset_outputs(monkeypatch):
    """transform.unset with all-ones bytes (limb planes, block statistics, the GPU
    decoder's outputs of transform batches), in every test of this file."""
    monkeypatch.setattr(tk, "unset", tk.all_ones)


def _run(lev, base, delta, t, out_dtype, out_rows=None, variant=None):
    r = lev.shape[0]
    rows_total = r if out_rows is None else int(out_rows.max()) + 1
    out = tk.all_ones((rows_total, t.num_channels), TORCH_OUT[out_dtype], DEV)
    orow = np.arange(r) if out_rows is None else out_rows
    st = tk.inverse(torch.from_numpy(lev.astype(np.float32)).to(DEV),
                    torch.from_numpy(delta.astype(np.int32)).to(DEV),
                    torch.from_numpy(base.astype(np.int32)).to(DEV),
                    tk.DeviceTransform(t, DEV), out,
                    torch.from_numpy(orow.astype(np.int64)).to(DEV), variant)
    o = out.cpu().numpy()
    if out_dtype == 2:
        o = o.view(np.uint16)
    return o[orow], st.cpu().numpy() != 0


CASES = [
    # (seed, rows, K, D, F, G, basis_max, mean_max, level_max, code range)
    (1, 7, 5, 9, 12, 7, 127, 1 << 20, 50, (120, 170)),            # one limb, small sizes
    (2, 33, 40, 70, 16, 14, (1 << 15) - 1, (1 << 40), 300, (100, 150)),   # two limbs
    (3, 5, 3, 3, 40, 40, (1 << 15) - 1, (1 << 52) - 1, 1, (40, 47)),     # the widest fields
    (4, 9, 17, 20, 0, 0, 1, 0, 32, (200, 255)),                  # F = G = 0, huge steps
    (5, 12, 30, 40, 3, 20, (1 << 15) - 1, (1 << 52) - 1, 40, (140, 150)),  # 2 Y limbs, 3 B
    (6, 10, 24, 32, 6, 20, (1 << 15) - 1, 0, 300, (140, 150)),   # the same, no mean
    (7, 9, 20, 24, 5, 40, 127, (1 << 52) - 1, 300, (140, 150)),   # 1 B limb, the widest mean
    (8, 1, 20, 24, 5, 12, 127, 1 << 30, 300, (140, 150)),   # one row: R a constexpr on a GPU
]


@pytest.mark.parametrize("out_dtype", [0, 1, 2])
@pytest.mark.parametrize("case", CASES, ids=[str(c[0]) for c in CASES])
def test_inverse_kernel_matches_reference(case, out_dtype):
    seed, r, k, d, f, g, bmax, mmax, lmax, (clo, chi) = case
    rng = np.random.default_rng(seed)
    t = tr.make_transform(rng.integers(-mmax, mmax + 1, d) if mmax else np.zeros(d, np.int64),
                          rng.integers(-bmax, bmax + 1, (k, d)), f, g)
    base = rng.integers(clo, chi - 3, k)
    delta = rng.integers(0, 4, r)
    lev = rng.integers(-lmax, lmax + 1, (r, k))
    lev[0, :] = lmax                                     # the largest levels in one row
    codes = base[None, :] + delta[:, None]
    want, bad = _reference(lev, codes, t, out_dtype)
    for variant in (None, dict(BM=16, BN=16, BK=32), dict(BM=32, BN=64, BK=64),
                    dict(BM=16, BN=32, BK=64, F64=True), dict(BM=16, BN=32, BK=32, HORNER=True),
                    dict(BM=16, BN=16, BK=64, HORNER=True, F64=False)):
        got, gbad = _run(lev, base, delta, t, out_dtype, variant=variant)
        assert np.array_equal(gbad, bad), variant
        assert np.array_equal(got[~bad].view(np.uint8), want[~bad].view(np.uint8)), variant


def test_inverse_kernel_refuses_a_block_beyond_the_padded_coefficients():
    """BK must divide KP (K padded to a multiple of 64): the K loop of the limb GEMM reads
    whole blocks unmasked, so BK 128 on K 575 (KP 576) read the next row's limbs (found on
    an H100 by bench_gpu --transform: exact False).  Refused, not computed wrongly."""
    rng = np.random.default_rng(8)
    t = tr.make_transform(np.zeros(80, np.int64), rng.integers(-100, 101, (70, 80)), 12, 7)
    dt = tk.DeviceTransform(t, DEV)
    assert dt.kp == 128 and tk.TRANSFORM_VARIANT["BK"] == 64
    lev = rng.integers(-20, 21, (5, 70))
    base, delta = rng.integers(120, 140, 70), np.zeros(5, np.int64)
    want, bad = _reference(lev, base[None, :] + delta[:, None], t, 0)
    got, _ = _run(lev, base, delta, t, 0, variant=dict(BM=16, BN=16, BK=128))   # 128 | 128
    assert np.array_equal(got[~bad].view(np.uint8), want[~bad].view(np.uint8))
    t2 = tr.make_transform(np.zeros(48, np.int64), rng.integers(-100, 101, (40, 48)), 12, 7)
    assert tk.DeviceTransform(t2, DEV).kp == 64
    with pytest.raises(ValueError, match="BK 128 does not divide"):
        _run(lev[:, :40], base[:40], delta, t2, 0, variant=dict(BM=16, BN=16, BK=128))


def test_inverse_kernel_limb_counts_per_block():
    """Blocks of LIMB_ROWS rows needing one, two and four Y limbs (and a bad row) in one
    batch: each block skips only products that are zero, so the values stay exact."""
    rng = np.random.default_rng(5)
    lb = tk.LIMB_ROWS
    k, d = 9, 20
    t = tr.make_transform(rng.integers(-1000, 1000, d), rng.integers(-127, 128, (k, d)), 0, 3)
    base = np.full(k, 144)                    # step 1.0, F = 0: Y = level
    r = 3 * lb + 5
    lev = rng.integers(-127, 128, (r, k))     # block 0: one limb
    lev[lb:2 * lb] = rng.integers(-32639, 32640, (lb, k))       # block 1: two
    lev[2 * lb:] = rng.integers(-300, 301, (r - 2 * lb, k))     # block 2: four (one value)
    lev[2 * lb + 7, 3] = (1 << 24) - 1
    lev[3 * lb + 2, 0] = -(1 << 23) - 12345   # block 3: four
    lev[3 * lb + 4, 1] = 1 << 24              # and a bad row
    codes = base[None, :].repeat(r, 0)
    want, bad = _reference(lev, codes, t, 0)
    assert bad.sum() == 1
    status = torch.zeros(r, dtype=torch.int32, device=DEV)
    _, blocks = tk.ylimbs(torch.from_numpy(lev.astype(np.float32)).to(DEV),
                          torch.zeros(r, dtype=torch.int32, device=DEV),
                          torch.from_numpy(base.astype(np.int32)).to(DEV),
                          tk.DeviceTransform(t, DEV), status)
    assert blocks[0].cpu().tolist() == [1, 2, 4, 4]
    for variant in (None, dict(BM=32, BN=16, BK=64), dict(BM=32, BN=16, BK=64, F64=True),
                    dict(BM=32, BN=16, BK=64, HORNER=True)):
        got, gbad = _run(lev, base, np.zeros(r), t, 0, variant=variant)
        assert np.array_equal(gbad, bad), variant
        assert np.array_equal(got[~bad].view(np.uint8), want[~bad].view(np.uint8)), variant


def test_inverse_kernel_flags_overflow_and_scatters_rows():
    t = tr.make_transform(np.zeros(4, np.int64), np.array([[3, 1, 0, 2], [1, -3, 5, 0]]), 40, 2)
    lev = np.array([[2, 0], [0, 0], [0, 1], [-1, 0]])   # Y = +-2^24 .. 2^25: rows 0, 2, 3 bad
    base = np.array([48, 48])
    want, bad = _reference(lev, base[None, :].repeat(4, 0), t, 0)
    assert bad.tolist() == [True, False, True, True]
    got, gbad = _run(lev, base, np.zeros(4), t, 0, out_rows=np.array([5, 1, 3, 0]))
    assert gbad.tolist() == bad.tolist()
    assert np.array_equal(got[1], want[1])


def _zigzag(r):
    return np.where(r >= 0, 2 * r, -2 * r - 1)


def _fused_run(lev, base, delta, t, offs, predictor, esc=None, variant=None):
    """levels_limbs then limb_gemm on the symbols of levels ``lev`` (chains ``offs`` of
    consecutive rows; left prediction inside a chain when ``predictor``), symbols at or
    above ``esc`` escaped.  Returns (values, bad-coefficient rows, chain status, limb
    planes, block statistics [3, blocks]: limb counts, limb-1 extents, largest abs(Y))."""
    r, k = lev.shape
    res = lev.astype(np.int64).copy()
    if predictor:
        for a, b in zip(offs[:-1], offs[1:]):
            res[a + 1:b] = lev[a + 1:b] - lev[a:b - 1]
    u = _zigzag(res)
    esc = np.full(k, 16000) if esc is None else np.asarray(esc)     # int16 symbols
    sym = np.minimum(u, esc[None, :])
    uext = np.where(u >= esc[None, :], u, 0)
    dt = tk.DeviceTransform(t, DEV)
    dev = lambda a, ty: torch.from_numpy(np.ascontiguousarray(a).astype(ty)).to(DEV)  # noqa
    lev_v, variant = tk.split_variant(variant)
    limbs, blocks, vst, tst = tk.levels_limbs(
        dev(sym.reshape(-1), np.int16), dev(offs, np.int64), dev(delta, np.int32),
        dev(base, np.int32), dev(esc, np.int32), dev(uext.reshape(-1), np.int32), dt,
        int(predictor), dict(lev_v, FUSED=True, LEVELS_MIN_PROGRAMS=0))
    out = tk.all_ones((r, t.num_channels), torch.float32, DEV)
    tk.limb_gemm(limbs, blocks, dt, out, dev(np.arange(r), np.int64), variant)
    return (out.cpu().numpy(), tst.cpu().numpy() != 0, vst.cpu().numpy(), limbs.cpu().numpy(),
            blocks.cpu().numpy())


@pytest.mark.parametrize("predictor", [0, 1])
@pytest.mark.parametrize("bc, pf", [(16, 1), (64, 3), (16, 2), (64, 4)])
def test_fused_levels_limbs_match_the_two_step_path(predictor, bc, pf):
    """The fused path (levels straight to limb planes) against the reference and against
    ylimbs on the same levels: blocks of one, two and four Y limbs, rows whose
    coefficients overflow, escapes, segments of BC coefficients (K 37: a partial last
    segment), PF rows loaded ahead (chains of 1, 50 and 149 rows: loads past a chain's
    end; empty chains, the last at row R), chains that cross limb blocks."""
    rng = np.random.default_rng(21 + bc + predictor)
    lb = tk.LIMB_ROWS
    k, d = 37, 40
    t = tr.make_transform(rng.integers(-1000, 1000, d), rng.integers(-127, 128, (k, d)), 0, 3)
    base = np.full(k, 144)                    # step 1.0, F = 0: Y = level (a delta doubles)
    r = 3 * lb + 9
    lev = rng.integers(-60, 61, (r, k))       # block 0: one limb (deltas up to 1: 120)
    lev[lb:2 * lb] = rng.integers(-16000, 16001, (lb, k))       # block 1: two
    lev[2 * lb + 7, 30] = (1 << 23) - 1       # block 2: four, in one segment
    lev[3 * lb + 2, 0] = -(1 << 22) - 12345   # block 3: four
    lev[3 * lb + 4, 1] = (1 << 23) + 5        # and a bad row: Y = 2 level > 2^24 - 1
    delta = rng.integers(0, 2, r)
    delta[3 * lb + 4] = 6
    offs = np.array([0, 50, 50, 51, 200, 2 * lb + 8, r, r])
    codes = base[None, :] + delta[:, None]
    want, bad = _reference(lev, codes, t, 0)
    assert bad.sum() == 1
    esc = np.full(k, 40)                      # residuals beyond 20 in magnitude escape
    got, gbad, vst, limbs, (nl, ke, top) = _fused_run(lev, base, delta, t, offs, predictor,
                                                      esc, dict(LEVELS_BC=bc, LEVELS_PF=pf))
    assert np.array_equal(gbad, bad) and not vst.any()
    assert np.array_equal(got[~bad].view(np.uint8), want[~bad].view(np.uint8))
    st = torch.zeros(r, dtype=torch.int32, device=DEV)
    two, blocks2 = tk.ylimbs(torch.from_numpy(lev.astype(np.float32)).to(DEV),
                             torch.from_numpy(delta.astype(np.int32)).to(DEV),
                             torch.from_numpy(base.astype(np.int32)).to(DEV),
                             tk.DeviceTransform(t, DEV), st)
    two, (nl2, ke2, top2) = two.cpu().numpy(), blocks2.cpu().numpy()
    assert nl.tolist() == nl2.tolist() == [1, 2, 4, 4]
    ok = ~bad
    assert np.array_equal(limbs[:2, ok, :k], two[:2, ok, :k])
    four = np.repeat(nl == 4, lb)[:r] & ok
    assert np.array_equal(limbs[2:, four, :k], two[2:, four, :k])
    y = np.rint(lev * tr.FACTORS[t.coeff_frac_bits][codes])     # 7.6.3 step 1, unchecked
    _check_extents(y, ke, bc)
    _check_extents(y, ke2, tk.YLIMBS_VARIANT["BK"])
    tops = [np.abs(y[b:b + lb][ok[b:b + lb]]).max() for b in range(0, r, lb)]
    assert top.tolist() == top2.tolist() == [min(v, 1 << 24) for v in tops[:3]] + [1 << 24]


def _check_extents(y, ke, step):
    """Each block's limb-1 extent covers its last abs(Y) > 127, by less than ``step``."""
    lb = tk.LIMB_ROWS
    for b in range(ke.size):
        cols = np.nonzero((np.abs(y[b * lb:(b + 1) * lb]) > 127).any(axis=0))[0]
        last = int(cols.max()) + 1 if cols.size else 0
        assert last <= ke[b] < max(last, 1) + step or ke[b] == y.shape[1], (b, last, ke[b])


@pytest.mark.parametrize("fused", [False, True])
def test_limb_gemm_stops_limb_one_at_the_block_extent(fused):
    """KEXT: a two-limb block whose limb 1 is zero past its first coefficients (the
    extent below one BK block of 64) beside one whose limb 1 reaches the last
    coefficient, K 150 (KP 192): the reference's values, with KEXT on and off."""
    rng = np.random.default_rng(25)
    lb, k, d = tk.LIMB_ROWS, 150, 160
    t = tr.make_transform(rng.integers(-1000, 1000, d), rng.integers(-127, 128, (k, d)), 0, 3)
    base = np.full(k, 144)                    # step 1.0, F = 0: Y = level
    r = 2 * lb + 5
    lev = rng.integers(-20, 21, (r, k))
    lev[3, 0], lev[70, 9] = 5000, -3000       # block 0: limb 1 within coefficients 0..9
    lev[lb + 1, 149], lev[2 * lb + 2, 40] = 200, -300     # blocks 1 and 2: to 150 and 41
    delta = np.zeros(r, np.int64)
    want, bad = _reference(lev, base[None, :] + delta[:, None], t, 0)
    assert not bad.any()
    for variant in (dict(KEXT=True), dict(KEXT=True, F64=True), dict(KEXT=False)):
        if fused:
            got, _, _, _, (nl, ke, _) = _fused_run(lev, base, delta, t, np.array([0, 100, r]), 1,
                                              variant=dict(variant, LEVELS_BC=32))
            assert nl.tolist() == [2, 2, 2] and ke.tolist() == [32, k, 64]
        else:
            got, _ = _run(lev, base, delta, t, 0, variant=variant)
        assert np.array_equal(got.view(np.uint8), want.view(np.uint8)), variant


def test_horner_bound_keeps_every_partial_sum_in_int32():
    """HMAX (transform.horner_bound): the largest abs(Y) whose limb 1 keeps (256 y1 + 128)
    colsum within int32, the next limb-1 value beyond it; -1 where one limb already
    overflows."""
    rng = np.random.default_rng(30)
    for k in (1, 70, 1000, 8192):
        basis = rng.integers(-127, 128, (k, 5))
        basis[:, 2] = 127                       # the largest column sum: 127 k
        h = tk.horner_bound(basis)
        cs = 127 * k
        assert (256 * ((h + 128) >> 8) + 128) * cs <= 2**31 - 1
        assert (256 * ((h + 1 + 128) >> 8) + 128) * cs > 2**31 - 1
    assert tk.horner_bound(np.full((1, 1), 0)) > (1 << 24)
    assert tk.horner_bound(np.full((2**24 // 127 + 1, 1), 127)) == -1


def test_horner_launch_sends_blocks_beyond_its_bound_to_the_high_launch():
    """HORNER (one accumulator) on K 600 with a column of 127s: HMAX is 28031, so a
    two-limb block with abs(Y) up to 32000 could leave int32 there and goes to the HIGH
    launch's two-accumulator path, beside a two-limb block within HMAX, a one-limb
    block and a four-limb block: the reference's values in every block."""
    rng = np.random.default_rng(31)
    lb, k, d = tk.LIMB_ROWS, 600, 600
    basis = rng.integers(-127, 128, (k, d))
    basis[:, 5] = 127
    t = tr.make_transform(rng.integers(-1000, 1000, d), basis, 0, 3)
    assert tk.DeviceTransform(t, DEV).hmax == 28031
    base = np.full(k, 144)                    # step 1.0, F = 0: Y = level
    r = 4 * lb
    lev = rng.integers(-100, 101, (r, k))     # block 0: one limb
    lev[lb:2 * lb, :40] = rng.integers(-28031, 28032, (lb, 40))    # block 1: two, <= HMAX
    lev[lb + 3, 7] = 28031
    lev[2 * lb:3 * lb, 500:] = rng.integers(-32000, 32001, (lb, 100))   # block 2: beyond
    lev[2 * lb + 9, :] = 32000              # times column 5: 2.44e9, beyond int32
    lev[3 * lb + 1, 0] = 1 << 20              # block 3: four limbs
    delta = np.zeros(r, np.int64)
    want, bad = _reference(lev, base[None, :] + delta[:, None], t, 0)
    assert not bad.any()
    for variant in (dict(BM=64, BN=128, BK=64, HORNER=True, F64=False),
                    dict(BM=128, BN=256, BK=64, HORNER=True, F64=True, KEXT=True)):
        got, _ = _run(lev, base, delta, t, 0, variant=variant)
        assert np.array_equal(got.view(np.uint8), want.view(np.uint8)), variant


@pytest.mark.parametrize("pf", [1, 4])
def test_fused_levels_limbs_flag_levels_beyond_the_bound(pf):
    """Clause 7.5 in the fused path: a chain whose levels pass 2^24 - 1 gets BAD_LEVEL,
    the other chains none (PF rows loaded ahead)."""
    rng = np.random.default_rng(23)
    t = tr.make_transform(np.zeros(8, np.int64), rng.integers(-9, 10, (5, 8)), 0, 0)
    lev = rng.integers(-5, 6, (12, 5))
    lev[7, 2] = 1 << 24
    _, _, vst, _, _ = _fused_run(lev, np.full(5, 144), np.zeros(12), t,
                                 np.array([0, 4, 6, 12]), 1,
                                 variant=dict(LEVELS_PF=pf))
    assert vst.tolist() == [0, 0, 1]


def test_gpu_decoder_takes_the_fused_path_like_the_reference(monkeypatch):
    """Transform streams (left and no prediction, pruned, escapes, a frame whose
    coefficients need four limbs, a frame whose coefficients overflow) through the GPU
    decoder with the fused path forced: the reference's values and errors."""
    calls = []
    fused = tk.levels_limbs
    monkeypatch.setattr(tk, "levels_limbs", lambda *a, **kw: calls.append(1) or fused(*a, **kw))
    monkeypatch.setattr(tk, "LEVELS_VARIANT", dict(tk.LEVELS_VARIANT, FUSED=True,
                                                   LEVELS_MIN_PROGRAMS=0))
    rng = np.random.default_rng(24)
    basis = rng.normal(size=(5, 24))
    x = ((rng.normal(size=(4, 17, 5)) * [4, 2, 1, .5, .2]) @ basis + 0.3).astype(np.float32)
    t = tb.fit_transform(x[:1], energy=1.0)
    x[2] *= 40                                # far beyond the calibration: four limbs
    for kw in (dict(predictor="left"), dict(predictor="none", keep=0.7),
               dict(predictor="left", keep=0.5, grid=(4, 4), prefix_tokens=1)):
        data = tb.encode(x, qp=-8, transform=t, backend="reference", **kw)
        ref = tb.decode(data, transforms=[t], backend="reference")
        calls.clear()
        got = codec.to_numpy(codec.decode(data, device=DEV, transforms=[t]))
        assert calls and tb.canonical_sha256(got) == tb.canonical_sha256(ref), kw


def test_fused_path_passes_the_transform_conformance_streams(monkeypatch):
    """Every conformance stream of clauses 6.7 and 7.6.3 through the GPU decoder with the
    fused path forced: the manifest's canonical output and errors (clause 9 order)."""
    from tokenbits.conformance import SUITE_DIR, harness, load_manifest
    from tokenbits.conformance.adapters import DecodeResult
    calls = []
    fused = tk.levels_limbs
    monkeypatch.setattr(tk, "levels_limbs", lambda *a, **kw: calls.append(1) or fused(*a, **kw))
    monkeypatch.setattr(tk, "LEVELS_VARIANT", dict(tk.LEVELS_VARIANT, FUSED=True,
                                                   LEVELS_MIN_PROGRAMS=0))
    supplied = sorted((SUITE_DIR / "transforms").glob("*.tkbt"))
    fused_streams = []
    for s in load_manifest()["streams"]:
        if not {"6.7", "7.6.3"} & set(s["clauses"]):
            continue
        path = SUITE_DIR / "streams" / f"{s['name']}.tkb"
        calls.clear()
        try:
            st = tb.decode(path.read_bytes(), strict=False, backend="gpu", device=DEV,
                           transforms=supplied)
        except tb.TKBError as e:
            res = DecodeResult(b"", [type(e).__name__])
        else:
            res = DecodeResult(tb.canonical_bytes(st), [type(e).__name__ for e in st.errors])
        state, note = harness.judge(s, path, res)
        assert state == "pass", (s["name"], note)
        if calls:
            fused_streams.append(s["name"])
    assert {"transform_two_tracks", "transform_coefficient_overflow"} <= set(fused_streams)


def _stream(out_dtype="float16", keep=None):
    rng = np.random.default_rng(7)
    basis = rng.normal(size=(5, 24))
    x = ((rng.normal(size=(3, 17, 5)) * [4, 2, 1, .5, .2]) @ basis + 0.3).astype(np.float32)
    t = tb.fit_transform(x[:1], energy=1.0)
    data = tb.encode(x, target_cos=0.999, grid=(4, 4), prefix_tokens=1, transform=t,
                     output_dtype=out_dtype, keep=keep, backend="reference")
    return data, t


@pytest.mark.parametrize("out_dtype, keep, dense", [("float16", None, False),
                                                    ("bfloat16", 0.5, True),
                                                    ("float32", 0.75, False)])
def test_gpu_decoder_decodes_transform_streams_like_the_reference(out_dtype, keep, dense):
    data, t = _stream(out_dtype, keep)
    ref = tb.decode(data, transforms=[t], backend="reference")
    s = codec.decode(data, device=DEV, dense=dense, transforms=[t])
    assert len(s.frames) == len(ref.frames)
    for a, b in zip(s.frames, ref.frames):
        v = a.values
        if dense:
            v = v[torch.from_numpy(b.positions.astype(np.int64)).to(v.device)]
        v = v.view(torch.int16).cpu().numpy().view(np.uint16) if b.dtype == "bfloat16" \
            else v.cpu().numpy()
        assert np.array_equal(v.view(np.uint8), b.values.view(np.uint8))
    assert tb.canonical_sha256(codec.to_numpy(codec.decode(data, device=DEV, transforms=[t]))) \
        == tb.canonical_sha256(ref)


# -- the forward transform of the encoder (Annex B.7) --------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_forward_kernel_matches_reference(dtype):
    from tokenbits import transform_fit as tf
    rng = np.random.default_rng({"float32": 1, "float16": 2, "bfloat16": 3}[dtype])
    d, k, n = 70, 13, 37
    x = (rng.normal(size=(n, d)) * 3 + 1).astype(np.float32)
    t = tb.fit_transform(x, coeffs=k)
    a = tf.input_scale(x[:20], t)            # rows 20.. exceed the scale: clipped
    x[25, 3] = 1e4
    src = rng.permutation(n)[:30]
    xt = torch.from_numpy(x)
    if dtype == "float16":
        xt = xt.to(torch.float16)
    elif dtype == "bfloat16":
        xt = xt.to(torch.bfloat16)
    xv = xt.to(torch.float32).numpy()        # the values the encoder sees
    want = tf.forward(xv[src], t, a)
    for variant in (None, dict(BM=16, BN=16, BK=32), dict(BM=32, BN=32, BK=64)):
        got = tk.forward(xt.to(DEV), torch.from_numpy(src).to(DEV),
                         tk.DeviceForward(t, DEV), a, variant).cpu().numpy()
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), variant


@pytest.mark.parametrize("opts", [dict(output_dtype="float16"),
                                  dict(keep=0.5, predictor="up", per_channel_steps=True),
                                  dict(predictor="left", token_scale=False)])
def test_gpu_encoder_writes_the_reference_bytes_with_a_transform(opts):
    rng = np.random.default_rng(11)
    basis = rng.normal(size=(6, 40))
    x = ((rng.normal(size=(3, 17, 6)) * [5, 3, 2, 1, .5, .2]) @ basis + 0.7).astype(np.float16)
    t = tb.fit_transform(x[:2].astype(np.float32), energy=1.0)
    kw = dict(target_cos=0.995, grid=(4, 4), prefix_tokens=1, transform=t, **opts)
    ref = tb.encode(x, backend="reference", **kw)
    gpu = tb.encode(torch.from_numpy(x).to(DEV), backend="gpu", device=DEV, **kw)
    assert gpu == ref


def test_gpu_encoder_falls_back_where_the_reference_clips_levels(monkeypatch):
    """Coefficients beyond the clause 7.6.3 bound at the chosen step: the reference clips
    their levels; the GPU path codes that batch through the reference, same bytes (the
    open-loop quantizer, deadzone 0)."""
    seen = []
    clipped = codec._clipped
    monkeypatch.setattr(codec, "_clipped", lambda *a: seen.append(clipped(*a)) or seen[-1])
    rng = np.random.default_rng(12)
    x = rng.normal(size=(2, 9, 8)).astype(np.float32)
    t = tr.make_transform(np.zeros(8, np.int64), np.eye(8, dtype=np.int64) * 100, 30, 7)
    x[1, 3, 2] = 60.0            # a coefficient far beyond 2^(24 - F) at fine steps
    kw = dict(qp=-20, transform=t, embed_transform=True, deadzone=0)
    ref = tb.encode(x, backend="reference", **kw)
    gpu = tb.encode(torch.from_numpy(x).to(DEV), backend="gpu", device=DEV, **kw)
    assert gpu == ref and seen == [True]
    tb.decode(ref, backend="reference")      # and the stream is valid


@pytest.mark.parametrize("predictor", ["none", "left", "up"])
def test_closed_loop_kernel_clips_levels_like_the_reference(monkeypatch, predictor):
    """The closed-loop quantizer (the default with a transform) clips levels at the
    clause 7.6.3 bound inside its loop, on the GPU as in the reference: same bytes, no
    fallback."""
    calls = []
    closed = codec.quant.symbols_closed_loop
    monkeypatch.setattr(codec.quant, "symbols_closed_loop",
                        lambda *a, **k: calls.append(1) or closed(*a, **k))
    rng = np.random.default_rng(12)
    x = rng.normal(size=(2, 10, 8)).astype(np.float32)
    t = tr.make_transform(np.zeros(8, np.int64), np.eye(8, dtype=np.int64) * 100, 30, 7)
    x[1, 3, 2] = 60.0            # a coefficient far beyond 2^(24 - F) at fine steps
    x[1, 4:, 2] = 60.0 - np.arange(6)
    kw = dict(qp=-20, transform=t, embed_transform=True, grid=(3, 3), prefix_tokens=1,
              predictor=predictor)
    ref = tb.encode(x, backend="reference", **kw)
    gpu = tb.encode(torch.from_numpy(x).to(DEV), backend="gpu", device=DEV, **kw)
    assert gpu == ref and calls
    tb.decode(ref, backend="reference")      # and the stream is valid


@pytest.mark.parametrize("deadzone", [0.125, 0.3125, 0.5])
@pytest.mark.parametrize("opts", [dict(predictor="up"), dict(predictor="left", keep=0.6),
                                  dict(predictor="none", per_channel_steps=True)])
def test_gpu_encoder_closed_loop_writes_the_reference_bytes(deadzone, opts):
    """The closed-loop quantizer (Annex B.1) on the GPU, with and without a transform:
    the reference's bytes."""
    rng = np.random.default_rng(13)
    basis = rng.normal(size=(6, 24))
    x = ((rng.normal(size=(3, 17, 6)) * [5, 3, 2, 1, .5, .2]) @ basis + 0.7).astype(np.float16)
    t = tb.fit_transform(x[:2].astype(np.float32), energy=1.0)
    for tf in (t, None):
        kw = dict(target_cos=0.99, grid=(4, 4), prefix_tokens=1, transform=tf,
                  deadzone=deadzone, **opts)
        ref = tb.encode(x, backend="reference", **kw)
        gpu = tb.encode(torch.from_numpy(x).to(DEV), backend="gpu", device=DEV, **kw)
        assert gpu == ref
