"""The GPU selection (kernels/prune.py) against its reference twin (tokenbits.pruning):
similarity levels, the coverage greedy (keep and keep_coverage) and the merge map's
stand-ins, with exact equality, on seeded random and boundary inputs.  On CPU the
kernels run in Triton's interpreter (tests/conftest.py); TKB_TEST_DEVICE=cuda runs them
on a GPU."""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from tokenbits import pruning  # noqa: E402
from tokenbits.kernels import prune as pk  # noqa: E402

DEV = os.environ.get("TKB_TEST_DEVICE", "cpu")
TORCH = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _frames(seed, sizes, d, dtype="float16"):
    """Token frames with structure (clusters), duplicates (ties), a zero token, a
    non-finite value and a subnormal-scale token."""
    rng = np.random.default_rng(seed)
    out = []
    for n in sizes:
        centres = rng.normal(size=(4, d)) * 3
        x = centres[rng.integers(0, 4, n)] + rng.normal(size=(n, d))
        if n > 6:
            x[3] = x[5]                                  # identical tokens: ties
            x[4] = 0.0                                   # a zero token
            x[6] *= 1e-6                                 # tiny (float16 subnormals)
        out.append(x.astype(np.float32))
    if dtype == "float32" and sizes[0] > 2:
        out[0][1, 0] = np.inf                            # non-finite counts as 0
    return out


def _device(frames, dtype):
    t = torch.from_numpy(np.concatenate(frames)).to(TORCH[dtype])
    host = t.to(torch.float32).numpy()                  # the values the encoder sees
    counts = np.array([f.shape[0] for f in frames])
    starts = np.cumsum(counts) - counts
    return t.to(DEV), host, starts, counts


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_similarity_levels_and_cosines_match_reference(dtype):
    frames = _frames(1, [19, 8], 40, dtype)
    x, host, starts, counts = _device(frames, dtype)
    q, norms = pk.directions(x)
    for f, (s0, n) in enumerate(zip(starts, counts)):
        rows = torch.arange(s0, s0 + n, device=DEV)[None, :]
        want = pruning.similarity_levels(host[s0:s0 + n])
        for variant in (None, dict(BI=16, BJ=16, BK=32)):
            got = pk.similarities(q, norms, rows, rows, True, variant)[0].cpu().numpy()
            assert np.array_equal(got.astype(np.int64), want), (f, variant)
        qd = pruning.quantized_directions(host[s0:s0 + n])
        want_cos = pruning.cosines(qd, qd)
        got_cos = pk.similarities(q, norms, rows, rows, False)[0].cpu().numpy()
        assert np.array_equal(got_cos.view(np.uint64), want_cos.view(np.uint64))


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_directions_scale_by_exact_powers_of_two(dtype):
    """q = rint(x 2^(14 - e)) with the scaled value exactly halfway between integers
    (0.248779296875 2^11 = 509.5: rint gives 510), and tokens whose largest magnitude is
    a float32 subnormal or near the float32 maximum.  torch.ldexp on a GPU multiplied by
    CUDA's pow(2, k), which is not exact: it gave 509 (an H100, 2026-12-07)."""
    rows = [[0.248779296875, 5.0, -0.093505859375, 0.0],      # e = 3: 509.5 and -191.5
            [0.248779296875, 3.0, 0.1, -0.2]]                 # e = 2: 1019.0
    if dtype == "float32":
        rows += [[1e-40, -3e-41, 0.0, 7e-42], [3e38, -1e38, 2.5, 0.0]]
    x = np.array(rows, dtype=np.float32).astype(dtype)
    q, norms = pk.directions(torch.from_numpy(x).to(DEV))
    got = (q[0].to(torch.int64) + 256 * q[1].to(torch.int64)).cpu().numpy()[:, :4]
    want = pruning.quantized_directions(x.astype(np.float32))
    assert want[0, 0] == 510 and want[0, 2] == -192 and want[1, 0] == 1019   # ties to even
    assert np.array_equal(got, want)
    assert np.array_equal(norms.cpu().numpy(), pruning.norms(want))


@pytest.mark.parametrize("start, keep, keep_coverage, sizes", [
    (1, 0.25, None, [17, 17, 9]),          # CLS kept, a fraction
    (0, 0.5, None, [12, 5]),               # no prefix: the medoid first
    (1, None, 0.95, [17, 12]),             # a coverage target: stops early
    (0, None, 0.999, [9]),                 # a target that needs most tokens
    (2, 0.1, None, [3, 2, 12]),            # frames with one or no sequence token; k = 0 or 1
])
@pytest.mark.parametrize("policy", ["coverage", "balanced"])
def test_coverage_greedy_matches_reference(start, keep, keep_coverage, sizes, policy):
    frames = _frames(2, sizes, 24)
    x, host, starts, counts = _device(frames, "float16")
    for variant in (None, dict(BI=8, BJ=4)):
        got = pk.select_coverage(x, starts, counts, start, keep, keep_coverage, variant,
                                 balance=policy == "balanced")
        for f, (s0, n) in enumerate(zip(starts, counts)):
            want = pruning.prune(host[s0:s0 + n], keep, start, policy,
                                 keep_coverage=keep_coverage)
            assert np.array_equal(got[f], want), (f, variant)


def _clustered(seed, n, d):
    """A frame of clusters of unequal sizes: ``balanced`` (and its weight) then chooses
    differently from ``coverage``."""
    rng = np.random.default_rng(seed)
    sizes = rng.multinomial(n, rng.dirichlet(np.ones(6) * 0.5))
    c = rng.normal(size=(6, d)) * 2 + 1.0
    x = np.concatenate([c[i] + rng.normal(size=(k, d)) * rng.uniform(0.3, 1.5)
                        for i, k in enumerate(sizes)])
    return x[rng.permutation(n)].astype(np.float32)


def test_balanced_weight_matters_and_matches(monkeypatch):
    frames = [_clustered(s, 24, 16) for s in (0, 1, 3)]
    x, host, starts, counts = _device(frames, "float16")
    got = pk.select_coverage(x, starts, counts, 1, 0.4, None, balance=True)
    want = [pruning.prune(host[s0:s0 + n], 0.4, 1, "balanced") for s0, n in zip(starts, counts)]
    cov = [pruning.prune(host[s0:s0 + n], 0.4, 1, "coverage") for s0, n in zip(starts, counts)]
    monkeypatch.setattr(pruning, "BALANCE_NUM", 2)
    other = [pruning.prune(host[s0:s0 + n], 0.4, 1, "balanced") for s0, n in zip(starts, counts)]
    for f in range(3):
        assert np.array_equal(got[f], want[f]), f
        assert not np.array_equal(want[f], cov[f]) and not np.array_equal(want[f], other[f])


def test_stand_ins_match_reference():
    frames = _frames(3, [17, 17, 6], 32)
    x, host, starts, counts = _device(frames, "float16")
    kept = [np.array([0, 2, 5, 9, 16]), np.arange(17), np.array([3])]   # incl. ties (3 = 5)
    got = pk.stand_ins(x, starts, counts, kept)
    for f, (s0, n) in enumerate(zip(starts, counts)):
        want = pruning.assign_stand_ins(host[s0:s0 + n], kept[f])
        assert got[f].dtype == np.uint32 and np.array_equal(got[f], want), f
