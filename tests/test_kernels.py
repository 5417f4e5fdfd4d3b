"""Every Triton kernel against its reference twin (like dav1d's checkasm): outputs and
coder state compared with exact equality, on seeded random and boundary inputs.

On CPU the kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET=1);
TKB_TEST_DEVICE=cuda runs the same tests on a GPU.  Sizes stay small: the
interpreter costs about 0.1 ms per tl operation.
"""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from tokenbits import encoder as E  # noqa: E402
from tokenbits import quantization as Q, table_fit as TF  # noqa: E402
from tokenbits import prediction, rans as R, reconstruction, symbols, tables  # noqa: E402
from tokenbits.errors import TKBEntropyError  # noqa: E402
from tokenbits.kernels import quant, rans, recon  # noqa: E402

DEV = os.environ.get("TKB_TEST_DEVICE", "cpu")


def T(a, dtype=None):
    a = np.ascontiguousarray(a)
    return torch.from_numpy(a if dtype is None else a.astype(dtype)).to(DEV)


def N(t):
    return t.cpu().numpy()


# -- rANS ------------------------------------------------------------------------

def _tables(rng, d, alphabets, prob_bits):
    tabs = [tables.normalize(rng.integers(1, 60, a) * (rng.random(a) < 0.8) + (np.arange(a) == 0),
                             prob_bits) for a in alphabets]
    tmap = rng.integers(0, len(tabs), d)
    return tabs, tmap


def _frames(rng, sizes, d, tabs, tmap):
    """Random symbols of frames of ``sizes`` symbols, drawn where the tables have mass."""
    out = []
    for n in sizes:
        ch = np.arange(n) % d
        s = np.empty(n, dtype=np.int64)
        for c in range(d):
            f = tabs[tmap[c]]
            sel = ch == c
            s[sel] = rng.choice(f.size, sel.sum(), p=f / f.sum())
        out.append(s)
    return out


RANS_CASES = [
    # (lanes, lane_steps, channels, prob_bits, alphabets, frame sizes)
    (4, 8, 5, 10, [7, 5, 9], [5 * 30, 15, 0, 32, 33, 1]),     # empty, 1 symbol, full, one over
    (1, 16, 1, 12, [300], [16, 17, 40]),                        # one lane
    (3, 5, 7, 15, [2, 40], [7 * 11, 14, 3]),                    # lanes not a power of two
    (64, 4, 6, 12, [20], [256, 257, 5 * 64 + 1]),               # wide chunks, partial lanes
    (8, 32, 3, 11, [1, 30], [8 * 32 * 3 + 7]),                  # a table of one symbol
    (32, 6, 10, 9, [50, 3], [32 * 6 * 2 + 5, 31]),             # 32 lanes: lane bit 31
    (32, 8, 12, 10, [30] * 8, [32 * 8 * 3 + 9, 0, 1, 32 * 8]),  # tables fill SMEM_ENTRIES
    (20, 5, 7, 10, [256, 40], [20 * 5 * 2 + 3, 20]),            # 20 of 32 lanes, 256 symbols
    (32, 2, 2048, 10, [20, 9], [2048 * 2 + 5]),                 # LINKS at its channel limit
    (32, 2, 2049, 10, [20], [2049 * 2]),                        # one channel beyond it
    (32, 3, 40, 12, [60, 30, 20, 9], [32 * 3 * 4 + 5, 32]),     # two-level SMEM (SMEM2)
]


def _encode_ref(frames, tabs, tmap, lanes, steps, pb, d):
    freq_all, cum_all = tables.encode_arrays(tabs, max(t.size for t in tabs))
    words, cws = [], []
    for s in frames:
        ch = tmap[np.arange(s.size) % d]
        w, cw = R.encode(s, freq_all[ch, s], cum_all[ch, s], lanes, steps, pb)
        words.append(w)
        cws.append(cw)
    return words, cws, freq_all, cum_all


@pytest.mark.parametrize("case", RANS_CASES)
def test_rans_encode_matches_reference(case):
    lanes, steps, d, pb, alph, sizes = case
    rng = np.random.default_rng(sum(sizes) + lanes)
    tabs, tmap = _tables(rng, d, alph, pb)
    frames = _frames(rng, sizes, d, tabs, tmap)
    words, cws, freq_all, cum_all = _encode_ref(frames, tabs, tmap, lanes, steps, pb, d)
    plan = rans.ChunkPlan(sizes, lanes, steps, d, DEV)
    a = freq_all.shape[1]
    # compaction in one block per chunk (default) and in blocks of 4 words; words
    # placed by the coding kernel (DENSE, lane scan by vote or by cumsum); division
    # by reciprocal (RCP)
    # by reciprocal (RCP); the relative-offset kernel with channel links (REL, symbols
    # loaded SDEPTH steps ahead) and the kernel before it
    for v, cv in [(None, None), (None, dict(BLOCK=4, num_warps=1)),
                  (dict(DENSE=True, RCP=True, BITS=True), dict(BLOCK=4, num_warps=1)),
                  (dict(DENSE=True, BITS=False), None), (dict(RCP=True, DENSE=False), None),
                  (dict(REL=False), None), (dict(SDEPTH=1), None),
                  (dict(SDEPTH=2), None), (dict(SDEPTH=3, G=2), None)]:
        w, cw, status = rans.encode(plan, T(np.concatenate(frames), np.int16),
                                    rans.encode_table(freq_all, cum_all, DEV),
                                    T((tmap * a).astype(np.int32)), a, pb, variant=v,
                                    compact_variant=cv)
        # the words: each chunk's final coder states first, then its renormalisation words
        assert np.array_equal(N(w).view(np.uint16), np.concatenate(words))
        assert np.array_equal(N(cw), np.concatenate(cws).astype(np.int64))
        assert not N(status).any()


def test_reciprocals_divide_exactly():
    """The encoder table's multipliers give floor(x / f) for every f of a table
    (1 .. 2^15) at the 32-bit states that matter: 0, f - 1, f, multiples and their
    neighbours, and the top of the range."""
    f = np.arange(1, 2 ** 15 + 1, dtype=np.uint64)
    m = rans.reciprocals(f).astype(np.uint64)
    lg = np.frexp((f.astype(np.int64) - 1).astype(np.float64))[1].astype(np.uint64)
    sh1, sh2 = np.minimum(lg, 1), np.where(lg > 0, lg - 1, 0).astype(np.uint64)
    top = np.uint64(2 ** 32 - 1)
    rng = np.random.default_rng(3)
    for k in [0, 1, 2, 3, 1000, 65535, 65536, 131071]:
        for dx in (-1, 0, 1):
            x = np.clip(f.astype(np.int64) * k + dx, 0, 2 ** 32 - 1).astype(np.uint64)
            t = (x * m) >> np.uint64(32)
            assert np.array_equal((t + ((x - t) >> sh1)) >> sh2, x // f)
    for x in [top, top - np.uint64(1), np.uint64(2 ** 31)] + list(
            rng.integers(0, 2 ** 32, 4, dtype=np.uint64)):
        t = (x * m) >> np.uint64(32)
        assert np.array_equal((t + ((x - t) >> sh1)) >> sh2, x // f)


def _decode(frames, words, cws, tabs, tmap, lanes, steps, pb, d, escapes=True, variant=None,
            pack32=True, declare=True, padded=False):
    """declare: pass the frames' true escape counts as declared (else none declared);
    padded: the words in a buffer with rans.WORD_PAD words past them (unmasked loads)."""
    plan = rans.ChunkPlan([s.size for s in frames], lanes, steps, d, DEV)
    alph = [t.size for t in tabs]
    esc = np.array(alph)[tmap] - 1
    n_esc = np.array([int((s == esc[np.arange(s.size) % d]).sum()) for s in frames])
    t_words = T(np.concatenate(words).view(np.int16))
    if padded:
        t_words = rans.padded_words(t_words.numel(), DEV).copy_(t_words)
    return rans.decode(plan, t_words,
                       T(np.concatenate(cws), np.int64),
                       rans.DecodeTables(tables.decode_lookup(tabs, pb), alph, escapes, tmap, pb,
                                         DEV, pack32), pb, n_esc if declare else None,
                       variant), esc, n_esc


# slot tables in shared memory (on a GPU; the interpreter decodes the same launch from
# global memory): G chunks per program, one warp each, programs looping over groups
SMEM_VARIANT = (dict(SMEM=True, G=4, num_warps=4, PROGRAMS=2), True)


@pytest.mark.parametrize("case", RANS_CASES)
def test_rans_decode_matches_reference(case):
    lanes, steps, d, pb, alph, sizes = case
    rng = np.random.default_rng(sum(sizes) * 7 + lanes)
    tabs, tmap = _tables(rng, d, alph, pb)
    frames = _frames(rng, sizes, d, tabs, tmap)
    words, cws, _, _ = _encode_ref(frames, tabs, tmap, lanes, steps, pb, d)
    lookup = tables.decode_lookup(tabs, pb)
    for s, w, cw in zip(frames, words, cws):
        assert np.array_equal(R.decode(w, cw, s.size, lanes, steps, lookup, pb,
                                       tmap << pb, d), s)
    allsym = np.concatenate(frames)
    # every launch variant the benchmark may pick decodes the same symbols
    for variant, pack32 in [(None, True), (None, False), (dict(WINDOW=False), True),
                            (dict(ESC_BRANCH=False), True), (dict(BITS=True), True),
                            (dict(BITS=True, WINDOW=False), False),
                            (dict(BITS=False), True), (dict(BITS=True, G=2), True),
                            (dict(G=2, PROGRAMS=2), True),      # programs loop over groups
                            (dict(ESC_BRANCH=False, BITS=False, G=2, PROGRAMS=3), True),
                            SMEM_VARIANT, (dict(SMEM_VARIANT[0], PER_SM=1), True),
                            (dict(SMEM_VARIANT[0], LINKS=False), True), (dict(SMEM=False), True),
                            (dict(SMEM_VARIANT[0], G=8, SMEM_PER_WARP=2), True),  # 2 a warp
                            (dict(SMEM_VARIANT[0], SYMSMEM=False), True),     # SMEM2: L1
                            (dict(RING=False), True), (dict(SYMBYTES=False), True),
                            (dict(SYMBYTES=False, RING=False), True)]:
        (sym, status, esc_pos, esc_count), esc, n_esc = _decode(
            frames, words, cws, tabs, tmap, lanes, steps, pb, d, variant=variant,
            pack32=pack32, padded=variant is None or "SMEM" in variant)
        if variant is None and pack32 and max(alph) <= 256 and pb <= 12:   # 32-bit: the
            assert rans.last_decode["padded"]       # window loads without masks were taken
        assert np.array_equal(N(sym).astype(np.int64), allsym)
        assert not N(status).any()
        # escape symbols: counted per frame, positions recorded as keys 2 * index
        assert np.array_equal(N(esc_count), n_esc)
        where = np.nonzero(allsym == esc[np.concatenate([np.arange(s.size) % d
                                                         for s in frames])])[0]
        assert np.array_equal(N(esc_pos), 2 * where)
    # no escape declared: the escape symbols are still counted (the caller's error check),
    # without positions
    for variant in (None, dict(BITS=False), SMEM_VARIANT[0], dict(SMEM=False),
                    dict(SMEM_VARIANT[0], G=8, SMEM_PER_WARP=2)):
        (sym, status, esc_pos, esc_count), esc, n_esc = _decode(
            frames, words, cws, tabs, tmap, lanes, steps, pb, d, variant=variant,
            declare=False)
        assert np.array_equal(N(sym).astype(np.int64), allsym)
        assert np.array_equal(N(esc_count), n_esc) and N(esc_pos).size == 0
        assert not N(status).any()


def test_decode_tables_two_level_form_rebuilds_every_slot_entry():
    """SYMBYTES: a slot's symbol byte, then its symbol's (freq - 1) | cum << 12, give back
    the packed slot entry (freq - 1) | bias << 12 | symbol << 24 of every slot."""
    rng = np.random.default_rng(11)
    for d, alph, pb in [(8, [30] * 4, 12), (5, [256, 3], 9), (3, [1, 2], 1), (2, [40], 15)]:
        tabs, tmap = _tables(rng, d, alph, pb)
        t = rans.DecodeTables(tables.decode_lookup(tabs, pb), alph, True, tmap, pb, DEV)
        if pb > 12:                   # 64-bit entries: no two-level form
            assert not t.pack32 and t.sym_bytes is None
            continue
        e = N(t.table).astype(np.int64) & 0xFFFFFFFF
        sym = N(t.sym_bytes).astype(np.int64)
        fc = N(t.sym_entries).astype(np.int64)
        assert t.sym_stride == max(alph) and fc.size == len(alph) * max(alph)
        per = 1 << pb
        slot, tab = np.arange(e.size) % per, np.arange(e.size) // per
        f = fc[tab * t.sym_stride + sym]
        assert np.array_equal((f & 0xFFF) | ((slot - (f >> 12)) << 12) | (sym << 24), e)


@pytest.mark.parametrize("case, smem, links, smem2", [(6, 1, 1, 0), (10, 1, 1, 1),
                                                      (9, 1, 0, 0)])
def test_rans_decode_uses_shared_memory_on_a_gpu(case, smem, links, smem2):
    """The default decode of 32-lane chunks takes, on a GPU (compiled kernels), the SMEM
    path where the slot tables fit shared memory, with LINKS where the channels fit
    LINK_ENTRIES (case 9: one beyond), and the two-level form (SMEM2) where only the
    symbol tables fit (case 10), its slot bytes in dynamic shared memory (SYMSMEM); in
    the interpreter, the global-memory path."""
    lanes, steps, d, pb, alph, sizes = RANS_CASES[case]
    rng = np.random.default_rng(3)
    tabs, tmap = _tables(rng, d, alph, pb)
    frames = _frames(rng, sizes, d, tabs, tmap)
    words, cws, _, _ = _encode_ref(frames, tabs, tmap, lanes, steps, pb, d)
    (sym, status, _, _), _, _ = _decode(frames, words, cws, tabs, tmap, lanes, steps, pb, d)
    assert np.array_equal(N(sym).astype(np.int64), np.concatenate(frames))
    assert not N(status).any()
    on_gpu = DEV == "cuda" and not rans.INTERPRET
    assert [rans.last_decode[k] for k in ("smem", "links", "smem2", "symsmem")] == \
        [on_gpu and bool(smem), on_gpu and bool(links), on_gpu and bool(smem2),
         on_gpu and bool(smem2)]


@pytest.mark.parametrize("alph", [255, 256])
def test_rans_decode_without_escapes(alph):
    """Tables of a batch without escapes (no ESC symbol: LINKS's ESC 255 sentinel needs
    alphabets below 256): the same symbols, nothing counted as an escape."""
    lanes, steps, d, pb = 32, 4, 6, 10
    rng = np.random.default_rng(alph)
    tabs, tmap = _tables(rng, d, [alph, 7], pb)
    frames = _frames(rng, [32 * 4 * 2 + 3], d, tabs, tmap)
    words, cws, _, _ = _encode_ref(frames, tabs, tmap, lanes, steps, pb, d)
    on_gpu = DEV == "cuda" and not rans.INTERPRET
    for variant in (None, dict(LINKS=False), dict(SMEM=False)):
        (sym, status, esc_pos, esc_count), _, _ = _decode(
            frames, words, cws, tabs, tmap, lanes, steps, pb, d, escapes=False,
            variant=variant, declare=False)
        assert np.array_equal(N(sym).astype(np.int64), frames[0])
        assert not N(status).any() and not N(esc_count).any() and N(esc_pos).size == 0
        if variant is None:     # LINKS only where 255 can stand for "no ESC"
            assert rans.last_decode["links"] == (on_gpu and alph == 255)


@pytest.mark.parametrize("lanes", [4, 32])
def test_rans_decode_of_a_chunk_without_words(lanes):
    """A last chunk that claims no words (the stream's data ends before its initial
    states): nothing is read past the words, and only that chunk is reported."""
    steps, d, pb = 8, 3, 11
    rng = np.random.default_rng(9 + lanes)
    tabs, tmap = _tables(rng, d, [9, 12], pb)
    frames = _frames(rng, [3 * lanes * steps], d, tabs, tmap)
    words, cws, _, _ = _encode_ref(frames, tabs, tmap, lanes, steps, pb, d)
    cw = np.asarray(cws[0]).copy()
    w = np.asarray(words[0])[: int(cw[:-1].sum())]        # the last chunk's words dropped
    cw[-1] = 0
    for variant in (None, dict(SMEM=False)):
        (sym, status, _, _), _, _ = _decode(frames, [w], [cw], tabs, tmap, lanes, steps, pb,
                                            d, variant=variant)
        st = N(status)     # missing initial-state words read as 0: a bad initial state
        assert st[-1] & rans.BAD_INITIAL_STATE.value and not st[:-1].any()


@pytest.mark.parametrize("lanes", [4, 32])      # 32: the SMEM path on a GPU
def test_rans_decode_rejects_what_the_reference_rejects(lanes):
    """Corrupted words: the kernel's chunk status is non-zero exactly when the
    reference raises TKBEntropyError (final state or word count check)."""
    steps, d, pb = 8, 3, 11
    rng = np.random.default_rng(5 + lanes)
    tabs, tmap = _tables(rng, d, [9, 12], pb)
    frames = _frames(rng, [12 * lanes, 9 * lanes - 2], d, tabs, tmap)
    words, cws, _, _ = _encode_ref(frames, tabs, tmap, lanes, steps, pb, d)
    lookup = tables.decode_lookup(tabs, pb)
    seen = set()
    for trial in range(12):
        w = [x.copy() for x in words]
        i = int(rng.integers(0, w[0].size))
        w[0][i] ^= np.uint16(1 << int(rng.integers(0, 16)))
        try:
            R.decode(w[0], cws[0], frames[0].size, lanes, steps, lookup, pb, tmap << pb, d)
            ref_ok = True
        except TKBEntropyError:
            ref_ok = False
        plan = rans.ChunkPlan([s.size for s in frames], lanes, steps, d, "cpu")
        for variant in (None, dict(BITS=False), SMEM_VARIANT[0], dict(SMEM=False)):
            (sym, status, _, _), _, _ = _decode(frames, w, cws, tabs, tmap, lanes, steps, pb,
                                                d, variant=variant)
            st = N(status)
            assert bool(st[plan.frame == 0].any()) == (not ref_ok)
            assert not st[plan.frame == 1].any()          # the other frame is untouched
        seen.add(ref_ok)
    assert seen == {True, False} or seen == {False}


# -- quantization and symbols --------------------------------------------------

def _inputs(rng, n, d, dtype):
    x = rng.standard_normal((n, d)) * rng.uniform(0.01, 50, d)
    x[0, : min(d, 4)] = [65504, -65504, 0, 6e-8][: min(d, 4)]       # extremes, subnormal
    if dtype == "bfloat16":
        bits = (x.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
        return bits, (bits.astype(np.uint32) << 16).view(np.float32)
    a = x.astype(dtype)
    return a, a.astype(np.float32)


def _inputs_of(xf, dtype):
    """The raw array of float32 values exactly representable in ``dtype``."""
    if dtype == "bfloat16":
        return (np.asarray(xf, np.float32).view(np.uint32) >> 16).astype(np.uint16)
    return np.asarray(xf).astype(dtype)


def _to_torch(a, dtype):
    t = T(a.view(np.int16) if dtype == "bfloat16" else a)
    return t.view(torch.bfloat16) if dtype == "bfloat16" else t


@pytest.mark.parametrize("dtype,predictor,keep", [
    ("float16", 2, 0.6), ("float16", 1, 1.0), ("bfloat16", 0, 1.0), ("float32", 1, 0.5)])
def test_symbols_match_reference(dtype, predictor, keep):
    rng = np.random.default_rng(hash((dtype, predictor)) % 2**32)
    h, w, p, d = 5, 4, 2, 19
    n = p + h * w
    raw, xf = _inputs(rng, n, d, dtype)
    pos = np.arange(n, dtype=np.uint32) if keep >= 1 else np.sort(
        np.concatenate((np.arange(p), p + rng.choice(h * w, int(keep * h * w), replace=False)))
    ).astype(np.uint32)
    tps = dict(predictor=predictor, grid_present=1, num_prefix_tokens=p, grid_height=h,
               grid_width=w)
    codes = rng.integers(120, 170, d)
    delta = rng.integers(-20, 20, pos.size)
    # ties: values exactly halfway between two levels at their step
    xk = xf[pos].copy()
    step = reconstruction.STEP[codes[None, :] + delta[:, None]]
    xk[1, :3] = (np.array([2.5, -3.5, 0.5]) * step[1, :3]).astype(np.float32)
    raw = raw.copy()
    if dtype == "bfloat16":    # ties of steps with a short mantissa stay exact in bfloat16
        raw[pos[1], :3] = (xk[1, :3].view(np.uint32) >> 16).astype(np.uint16)
        xk = (raw[pos].astype(np.uint32) << 16).view(np.float32)
    else:
        raw[pos[1], :3] = xk[1, :3].astype(raw.dtype)
        xk = raw[pos].astype(np.float32)
    lv = Q.quantize_levels(xk, codes[None, :] + delta[:, None])
    u = symbols.zigzag(prediction.residuals_from_levels(lv, pos, tps))
    esc = rng.integers(2, 30, d)
    ref_sym = np.minimum(u, esc[None, :]).ravel()
    is_esc = (u >= esc[None, :]).ravel()
    pred = recon.predictor_rows(pos, tps)
    # inv_step from the table or computed; the tile kernel, and the row loop where every
    # predicting row is the row before
    runs = [(False, None), (False, dict(ALU_STEP=True))]
    if quant.prev_rows_only(pred):   # the row loop (with and without column masks)
        runs += [(True, dict(ROWS=4)), (True, dict(ROWS=3, BC=2, UNROLL=2))]
    for prev_row, variant in runs:
        sym, esc_pos, esc_val = quant.symbols(_to_torch(raw, dtype), T(pos, np.int64),
                                              T(delta), T(pred), T(codes), T(Q.INV_STEP),
                                              T(esc), prev_row=prev_row, variant=variant)
        assert np.array_equal(N(sym), ref_sym)
        assert np.array_equal(N(esc_pos), np.nonzero(is_esc)[0])
        assert np.array_equal(N(esc_val), (u - esc[None, :]).ravel()[is_esc])


def test_predictor_rows_match_reference_residuals():
    """kernels' predictor rows reproduce prediction.residuals_from_levels for every
    predictor on a pruned grid (the encoder kernel and the chains rely on them)."""
    rng = np.random.default_rng(11)
    h, w, p = 6, 5, 3
    pos = np.sort(np.concatenate((np.arange(p), p + rng.choice(h * w, 17, replace=False))))
    lv = rng.integers(-50, 50, (pos.size, 4))
    for pred in (0, 1, 2):
        tps = dict(predictor=pred, grid_present=1, num_prefix_tokens=p, grid_height=h,
                   grid_width=w)
        pr = recon.predictor_rows(pos, tps)
        mine = lv - np.where(pr[:, None] >= 0, lv[np.maximum(pr, 0)], 0)
        assert np.array_equal(mine, prediction.residuals_from_levels(lv, pos, tps))


def test_step_deltas_match_reference():
    """quant.step_deltas (the device's token_step_delta, Annex B.1) equals the reference's
    step_deltas_of_norms: random norms, zero norms, both clips, and norms whose
    6 log2(norm / ref) sits next to a rounding tie (taken from the host)."""
    rng = np.random.default_rng(8)
    ref = 3.7
    norms = np.concatenate([ref * 2.0 ** rng.uniform(-12, 12, 500), [0.0, ref, 1e150],
                            ref * 2.0 ** ((2 * np.arange(-30, 30) + 1) / 12)])
    sq = norms * norms
    near = np.abs(6 * np.log2(np.maximum(np.sqrt(sq), ref * 2.0 ** -10) / ref) % 1 - 0.5) < 1e-6
    assert near.sum() >= 30                       # the tie cases reach the host path
    for lo, hi in ((-128, 127), (-20, 9)):
        want = Q.step_deltas_of_norms(np.sqrt(sq), ref, lo, hi)
        assert np.array_equal(N(quant.step_deltas(T(sq), ref, lo, hi)), want)


@pytest.mark.parametrize("dtype,d", [("float16", 13), ("float32", 13), ("bfloat16", 13),
                                     ("float16", 24), ("float32", 16)])
def test_norms_and_pruning_sums_match_reference(dtype, d):
    """Sums in channel order, 8 channels a load: D not a multiple of 8 (masked tail) and
    multiples of 8 (ALIGN8)."""
    rng = np.random.default_rng(3)
    n, start = 21, 2
    raw, xf = _inputs(rng, n, d, dtype)
    xf[5] = 0                                       # a zero token
    raw[5] = 0
    # order matters: 2^30 + 2^-24 rounds back to 2^30 at each step in channel order,
    # while any grouped sum of the small squares would survive
    xf[6] = 2.0 ** -12
    xf[6, 0] = 32768.0
    raw[6] = _inputs_of(xf[6], dtype)
    x = _to_torch(raw, dtype)
    src = np.arange(n)
    assert Q.token_norms(xf[6:7])[0] == 32768.0
    assert np.array_equal(np.sqrt(N(quant.squared_norms(x, T(src)))), Q.token_norms(xf))
    mean, sq, dot = quant.scores_parts(x, T(np.array([start])), T(np.array([n - start])))
    m = N(mean)[0]
    mnorm = np.sqrt(np.cumsum(m * m)[-1]) or 1.0
    norms = np.sqrt(N(sq)) * mnorm
    dist = 1.0 - N(dot) / np.where(norms > 0, norms, 1.0)
    assert np.array_equal(dist, E.prune_scores(xf, start))


def test_histograms_match_reference():
    rng = np.random.default_rng(8)
    d, a = 7, 23
    sym = rng.integers(0, 40, 7 * 50)
    h = quant.histograms(T(sym, np.int16), d, a)
    ref = TF.histograms(np.minimum(sym, a - 1), np.arange(sym.size) % d, d, a)
    assert np.array_equal(N(h), ref)


# -- reconstruction ---------------------------------------------------------------

def _chains_of(pos_list, tps, kept):
    row0 = np.cumsum(kept) - kept
    pred = np.concatenate([np.where(p >= 0, p + r, -1) for p, r in
                           zip((recon.predictor_rows(q, tps) for q in pos_list), row0)])
    return recon.chains(pred, tps["predictor"], row0)


@pytest.mark.parametrize("out_dtype,predictor", [(1, 2), (0, 1), (2, 0), (1, 0)])
@pytest.mark.parametrize("d", [9, 130])     # 130: 128-channel tiles (SMEM_STEP on a GPU)
def test_dequantize_matches_reference(out_dtype, predictor, d):
    rng = np.random.default_rng(out_dtype * 3 + predictor + d)
    h, w, p = 4, 5, 1
    tps = dict(predictor=predictor, grid_present=1, num_prefix_tokens=p, grid_height=h,
               grid_width=w, output_dtype=out_dtype)
    pos_list = [np.arange(p + h * w), np.sort(np.concatenate(
        ([0], 1 + rng.choice(h * w, 9, replace=False))))]
    kept = np.array([q.size for q in pos_list])
    esc = rng.integers(3, 12, d)
    codes = rng.integers(20, 226, d)                 # tiny to huge steps: subnormals, inf
    ref_out, syms, escs, deltas = [], [], [], []
    for q in pos_list:
        u = rng.geometric(0.3, (q.size, d)) - 1
        u[0, 0] = 2 ** 20                              # an escape far beyond ESC
        s = np.minimum(u, esc[None, :])
        e = (u - esc[None, :])[u >= esc[None, :]]
        delta = rng.integers(-20, 30, q.size)        # codes 0..255: steps scaled by 2^-4..2^4
        lv = prediction.reconstruct_levels(symbols.residuals(s, esc, e.astype(np.uint64)),
                                           q, tps)
        v32 = reconstruction.dequantize(np.clip(lv, -2**24 + 1, 2**24 - 1),
                                        codes[None, :] + delta[:, None])
        ref_out.append(reconstruction.to_output(v32, out_dtype))
        syms.append(s.ravel())
        escs.append(e)
        deltas.append(delta)
    sym = np.concatenate(syms)
    flat_esc = np.nonzero(sym == np.tile(esc, kept.sum()))[0]
    rows, offs = _chains_of(pos_list, tps, kept)
    k = int(kept.sum())
    out = torch.zeros((k, d), dtype={0: torch.float32, 1: torch.float16, 2: torch.int16}[out_dtype],
                      device=DEV)
    uext = recon.escape_values(sym.size, d, T(esc), T(2 * flat_esc),
                               T(np.concatenate(escs), np.int64), DEV)
    want = np.concatenate(ref_out)
    # consecutive rows: the row loop (with and without column masks); the tile kernel
    # with the step computed or read from the table, levels in int64 or in saturated int32
    loop = dict(ROWS_MIN_PROGRAMS=0)      # the row loop whatever the batch
    for variant in (None, loop, dict(loop, ROWS_BC=2, ROWS_WARPS=1),
                    dict(loop, ROWS_BC=64, ROWS_WARPS=1), dict(ROWS=False),
                    dict(ROWS=False, ALU_STEP=False), dict(ROWS=False, I32=True, BR=2),
                    dict(ROWS=False, I32=False, BR=16), dict(ROWS=False, BR=4, ALU_STEP=True),
                    dict(ROWS=False, PREFETCH=0, SMEM_STEP=False),
                    dict(ROWS=False, PREFETCH=2, BR=2), dict(ROWS=False, SMEM_STEP=False)):
        out.fill_(0)
        status = recon.dequantize(T(sym, np.int16), T(rows), T(offs), T(np.arange(k)),
                                  T(np.concatenate(deltas), np.int32), T(codes, np.int32),
                                  T(reconstruction.STEP), T(esc, np.int32), uext, predictor,
                                  out, d, recon.is_contiguous(rows, offs), variant=variant)
        got = N(out)
        assert got.tobytes() == want.astype(got.dtype).tobytes()
        assert not N(status).any()
    # dense output: rows written at out_row (here 3 rows down), both kernels
    wide = torch.zeros((k + 3, d), dtype=out.dtype, device=DEV)
    for variant in (None, loop):
        wide.fill_(0)
        status = recon.dequantize(T(sym, np.int16), T(rows), T(offs), T(np.arange(k) + 3),
                                  T(np.concatenate(deltas), np.int32), T(codes, np.int32),
                                  T(reconstruction.STEP), T(esc, np.int32), uext, predictor,
                                  wide, d, recon.is_contiguous(rows, offs), dense=True,
                                  variant=variant)
        got = N(wide)
        assert got[3:].tobytes() == want.astype(got.dtype).tobytes() and not got[:3].any()
        assert not N(status).any()


@pytest.mark.parametrize("d,sign", [(2, 1), (2, -1), (130, 1), (130, -1)])  # 130: SMEM_STEP
def test_dequantize_flags_levels_beyond_the_limit(d, sign):
    tps = dict(predictor=1, grid_present=0, num_prefix_tokens=0)
    pos = np.arange(3)
    esc = np.full(d, 5)
    # three residuals of +-2^23 in channel 0 sum to +-3 * 2^23, beyond 2^24 - 1
    u = np.zeros((3, d), dtype=np.int64)
    u[:, 0] = 5
    e = np.full(3, 2 ** 24 - 5 - (sign < 0))          # u = 2^24 (- 1): residual +-2^23
    rows, offs = _chains_of([pos], tps, np.array([3]))
    out = torch.zeros((3, d), dtype=torch.float32, device=DEV)
    uext = recon.escape_values(3 * d, d, T(esc), T(2 * np.arange(3) * d), T(e, np.int64), DEV)
    for contig, variant in [(False, None), (True, dict(ROWS=False, I32=True, BR=2)),
                            (True, dict(ROWS=False, I32=False)), (True, dict(ROWS=False)),
                            (True, None), (True, dict(ROWS_MIN_PROGRAMS=0)),
                            (True, dict(ROWS_MIN_PROGRAMS=0, ROWS_BC=2, ROWS_WARPS=1))]:
        status = recon.dequantize(T(u.ravel(), np.int16), T(rows), T(offs), T(np.arange(3)),
                                  T(np.zeros(3), np.int32), T(np.full(d, 144), np.int32),
                                  T(reconstruction.STEP), T(esc, np.int32), uext, 1, out, d,
                                  contig, variant=variant)
        assert N(status).any()
    # the reference reaches the same levels, and rejects them (clause 7.5)
    lv = prediction.reconstruct_levels(symbols.residuals(u, esc, e.astype(np.uint64)), pos, tps)
    assert sign * lv[-1, 0] > reconstruction.MAX_LEVEL


def test_escape_values_skip_unfilled_slots():
    """Odd keys (slots a frame declared but did not decode) place nothing."""
    d, n = 3, 12
    esc = np.array([4, 5, 6])
    keys = np.array([2 * 1, 2 * 7, 2 * 12 - 1, 2 * 12 - 1])      # two real, two unfilled
    vals = np.array([10, 20, 99, 98])
    uext = N(recon.escape_values(n, d, T(esc), T(keys), T(vals, np.int64), DEV))
    assert uext.shape == (n,)
    assert uext[1] == esc[1] + 10 and uext[7] == esc[7 % d] + 20


@pytest.mark.parametrize("width,predictor,ids", [(16, 2, False), (32, 1, False), (16, 0, False),
                                                 (32, 0, True)])
def test_split_matches_reference(width, predictor, ids):
    rng = np.random.default_rng(width + predictor)
    d = 1 if ids else 6
    h, w, p = 3, 4, 1
    tps = dict(predictor=0 if ids else predictor, grid_present=1, num_prefix_tokens=p,
               grid_height=h, grid_width=w)
    pos = np.arange(p + h * w)
    if ids:
        vals = rng.integers(0, 5000, (pos.size, 1)).astype(np.int64)
        u = vals
    else:
        bits = rng.integers(0, 1 << width, (pos.size, d)).astype(np.int64)
        bits[0, :2] = [0, (1 << width) - 1]
        vals = bits
        u = bits
        if predictor:
            m = symbols.bits_to_ordered(bits, width)
            u = symbols.zigzag(prediction.residuals_from_levels(m, pos, tps))
    rb = max(5, width + 1 - 12)      # symbols below 4096, as an encoder must choose
    sym, raw = (u >> rb).ravel(), (u & ((1 << rb) - 1)).ravel()
    rows, offs = _chains_of([pos], tps, np.array([pos.size]))
    out = torch.zeros((pos.size, d), dtype=torch.int16 if width == 16 else torch.int32,
                      device=DEV)
    status = recon.split(T(sym, np.int16), T(raw, np.int64), T(rows), T(offs),
                         T(np.arange(pos.size)), out, d, rb, width, tps["predictor"],
                         5000 if ids else None)
    assert not N(status).any()
    mask = (1 << width) - 1
    assert np.array_equal(N(out).astype(np.int64) & mask, vals & mask)
    if ids:   # an id at or beyond vocab_size is reported (clause 7.4.2)
        status = recon.split(T(sym, np.int16), T(raw, np.int64), T(rows), T(offs),
                             T(np.arange(pos.size)), out, d, rb, width, 0, int(vals.max()))
        assert N(status).any()


import triton  # noqa: E402
import triton.language as tl  # noqa: E402


@triton.jit
def _steps_kernel(out_ptr, inv_ptr):
    code = tl.arange(0, 256)
    tl.store(out_ptr + code, quant.step_value(code, False))
    tl.store(inv_ptr + code, quant.step_value(code, True))


def test_step_values_without_a_table_equal_the_tables():
    """The kernels' table-free step(code) and inv_step(code), all 256 codes, equal
    reconstruction.STEP (clause 7.6.1) and quantization.INV_STEP (Annex B.1) bit for bit."""
    out = torch.empty(256, dtype=torch.float32, device=DEV)
    inv = torch.empty(256, dtype=torch.float32, device=DEV)
    _steps_kernel[(1,)](out, inv)
    assert N(out).view(np.uint32).tolist() == reconstruction.STEP.view(np.uint32).tolist()
    assert N(inv).view(np.uint32).tolist() == Q.INV_STEP.view(np.uint32).tolist()


def test_inv_rows_match_inv_step():
    """quant.inv_rows (the quantization row loop's inverse steps) and recon.step_rows (the
    reconstruction row loop's steps): row q, channel c holds the table's entry at
    code[c] + q + DELTA_MIN bit for bit, codes clipped to 0..255."""
    code = np.array([0, 1, 5, 127, 128, 200, 254, 255], dtype=np.int32)
    out = N(quant.inv_rows(T(code), T(Q.INV_STEP)))
    q = np.arange(out.shape[0])[:, None] + int(quant.DELTA_MIN)
    assert out.shape == (256, code.size) and q[0, 0] == -128
    want = Q.INV_STEP[np.clip(code[None, :] + q, 0, 255)]
    assert np.array_equal(out.view(np.uint32), want.view(np.uint32))
    # the reconstruction's steps for every frame + token delta (two int8)
    out = N(recon.step_rows(T(code), T(reconstruction.STEP)))
    q = np.arange(out.shape[0])[:, None] + int(recon.DELTA_MIN)
    assert out.shape == (511, code.size) and q[0, 0] == -256
    want = reconstruction.STEP[np.clip(code[None, :] + q, 0, 255)]
    assert np.array_equal(out.view(np.uint32), want.view(np.uint32))


def test_symbols_prev_row_path_matches_the_general_path():
    """Left prediction in kept order: the kernel's row-shift path (PREV_ROW) gives the
    general path's symbols, across tile boundaries and frame starts."""
    rng = np.random.default_rng(21)
    n, d = 37, 10
    x = (rng.standard_normal((n, d)) * 30).astype(np.float16)
    tps = dict(predictor=1, grid_present=0, num_prefix_tokens=0)
    kept = [np.arange(20), np.arange(17)]
    pred = np.concatenate([recon.predictor_rows(kept[0], tps),
                           np.where(recon.predictor_rows(kept[1], tps) >= 0,
                                    recon.predictor_rows(kept[1], tps) + 20, -1)])
    assert quant.prev_rows_only(pred)
    args = (T(x), T(np.arange(n)), T(rng.integers(-5, 5, n)), T(pred),
            T(rng.integers(130, 160, d)), T(Q.INV_STEP), T(rng.integers(5, 40, d)))
    general = quant.symbols(*args, prev_row=False)
    # the row shift inside a tile, and the row loop (8 or 64 rows per program)
    for v in (dict(ROWS=0, BR=16, BC=8), dict(ROWS=8, BC=8), dict(ROWS=5, BC=2, UNROLL=2),
              dict(ROWS=64, BC=16)):
        shifted = quant.symbols(*args, prev_row=True, variant=v)
        for a, b in zip(general, shifted):
            assert np.array_equal(N(a), N(b))
    lv = Q.quantize_levels(x.astype(np.float32), N(args[4])[None, :] + N(args[2])[:, None])
    u = symbols.zigzag(lv - np.where(pred[:, None] >= 0, lv[np.maximum(pred, 0)], 0))
    assert np.array_equal(N(general[0]), np.minimum(u, N(args[6])[None, :]).ravel())
