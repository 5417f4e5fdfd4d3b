"""Token pruning tools of the reference encoder (Annex B.2, informative).

Similarities between tokens are computed in exact integer arithmetic so that every
encoder path (numpy here, a GPU kernel with int8 limb tensor-core products) finds the
same values, whatever its summation order:

    q = rint(x 2^(14 - e)), e the binary exponent of max |x| (frexp: max |x| = m 2^e,
        m in [0.5, 1)), so |q| <= 2^14: two balanced int8 limbs;
    dot(a, b) = sum q_a q_b (an integer below 2^44 for D <= 65536: exact in int64 and
        in binary64 in any order);
    cos(a, b) = dot / (sqrt(n_a) * sqrt(n_b)), n = sum q^2, each operation binary64
        rounded to nearest (IEEE 754: sqrt, * and / correctly rounded), 0 if n_a or
        n_b is 0.

Ties are broken towards the lower index.  Non-finite values count as 0 (a lossless
track may hold them).

The selection policies of Annex B.2 (``prune``: ``farthest``, ``uniform``, ``diversity``,
``coverage``, ``balanced``, ``density`` and two hybrids) compare and sum only the integer similarity
levels rint(cos 2^24) of these cosines, so that a GPU twin reproduces them bit for bit;
``keep_coverage`` keeps per frame the fewest tokens whose coverage reaches a target.
Also the informative helpers of the benchmark's proxies: coverage, stand-ins, dense fill
and ToMe-style merging.
"""
from __future__ import annotations

import numpy as np

from .errors import TKBEncodeError

SIM_BITS = 14            # |q| <= 2^14 (two balanced int8 limbs on a GPU)


def quantized_directions(x: np.ndarray) -> np.ndarray:
    """int64 [N, D]: each token at the power-of-two scale that brings its largest
    magnitude into [2^13, 2^14) (zero tokens stay zero)."""
    x = np.asarray(x)
    if x.dtype == np.uint16:                      # bfloat16 bit patterns
        x = (x.astype(np.uint32) << 16).view(np.float32)
    x = x.astype(np.float64)
    x = np.where(np.isfinite(x), x, 0.0)
    top = np.abs(x).max(axis=1) if x.shape[1] else np.zeros(x.shape[0])
    _, e = np.frexp(top)
    return np.rint(np.ldexp(x, (SIM_BITS - e)[:, None])).astype(np.int64)


def norms(q: np.ndarray) -> np.ndarray:
    """binary64 [N]: sqrt(sum q^2), exact sum, correctly rounded sqrt."""
    return np.sqrt(np.einsum("nd,nd->n", q, q).astype(np.float64))


def cosines(qa: np.ndarray, qb: np.ndarray, na: np.ndarray | None = None,
            nb: np.ndarray | None = None) -> np.ndarray:
    """binary64 [A, B] cosines of quantized directions (see the module docstring)."""
    na = norms(qa) if na is None else na
    nb = norms(qb) if nb is None else nb
    # binary64 BLAS: every product (|q| <= 2^14) and partial sum is an integer below
    # 2^28 D <= 2^44 (D <= 65536, Table 8.2-1), so exact in any summation order; the
    # same values as int64 products, several times faster
    dot = qa.astype(np.float64) @ qb.astype(np.float64).T
    den = na[:, None] * nb[None, :]
    return np.where(den > 0, dot / np.where(den > 0, den, 1.0), 0.0)


def assign_stand_ins(x: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """For each pruned position of frame ``x`` [N, D] (in position order), the index
    into ``kept`` (sorted kept positions) of its most similar kept token: the merge
    map's stand-ins.  uint32 [N - len(kept)]; empty when nothing is pruned or nothing
    is kept (then a frame can carry no merge map)."""
    n = x.shape[0]
    kept = np.asarray(kept, dtype=np.int64)
    pruned = np.setdiff1d(np.arange(n), kept)
    if pruned.size == 0 or kept.size == 0:
        return np.zeros(0, np.uint32)
    q = quantized_directions(x)
    nq = norms(q)
    cos = cosines(q[pruned], q[kept], nq[pruned], nq[kept])
    return np.argmax(cos, axis=1).astype(np.uint32)   # argmax: first of equal maxima


# -- similarity levels, coverage ---------------------------------------------------

SIM_FRAC = 24            # similarity level: s = rint(cos 2^24), an integer in [-2^24, 2^24]
SIM_ONE = 1 << SIM_FRAC


def similarity_levels(x: np.ndarray) -> np.ndarray:
    """int64 [N, N]: s[i, j] = rint(cos(x_i, x_j) 2^SIM_FRAC) (round half to even) of the
    exact-integer cosines above.  Every policy below compares and sums these integers
    only, so any summation order gives the same selection."""
    q = quantized_directions(x)
    nq = norms(q)
    return np.rint(cosines(q, q, nq, nq) * SIM_ONE).astype(np.int64)


def coverage_total(s: np.ndarray, kept: np.ndarray, start: int) -> int:
    """Sum over the sequence tokens i >= start of max over the kept positions j of
    s[i, j] (an exact integer); 0 when nothing is kept (no token is covered)."""
    kept = np.asarray(kept, dtype=np.int64)
    if kept.size == 0 or s.shape[0] <= start:
        return 0
    return int(s[start:, kept].max(axis=1).sum())


def coverage(x: np.ndarray, kept: np.ndarray, start: int = 0) -> float:
    """Coverage of frame ``x`` [N, D] by the kept positions: the mean over the sequence
    tokens (positions >= start) of the best similarity level to a kept token (prefix
    tokens included), divided by 2^SIM_FRAC.  1.0 for a frame without sequence tokens."""
    m = x.shape[0] - start
    if m <= 0:
        return 1.0
    return coverage_total(similarity_levels(x), kept, start) / (m * SIM_ONE)


# -- selection policies (Annex B.2) ------------------------------------------------
#
# A policy chooses k of the m = N - start sequence tokens of a frame; the prefix tokens
# (0 .. start-1) are always kept.  Policies work on the similarity levels s (integers);
# every argmax / argmin takes the lowest index among equal values (numpy's first
# occurrence), so a tie always goes to the earlier token.  "Nested" policies choose
# greedily: their choice for k is the first k tokens of one order, which is what
# keep_coverage walks along.

BALANCE_NUM, BALANCE_DEN = 3, 2     # the pooled term's weight in `balanced` (3/2)


def _greedy_coverage(s, start, k, stop=None, seed=(), balance=False):
    """Facility-location greedy: each step adds the sequence token with the largest
    coverage gain sum_i max(s[i, j] - best_i, 0) over the sequence tokens i, best_i the
    best level of i to the kept set so far (prefix tokens and ``seed`` included; -2^24 - 1
    before anything is kept, so the first token is the medoid: the largest sum of levels).
    ``stop``: stop as soon as coverage_total reaches it (keep_coverage).

    ``balance`` (policy ``balanced``): the score adds a kernel-herding term that keeps the
    mean of the kept tokens near the frame's mean, with t sequence tokens kept so far:
    score_j = gain_j + (3 herd_j) / (2 m (t + 1)),  herd_j = (t + 1) sum_i s[i, j]
    - m sum_{c kept} s[c, j] (exact integers below 2^51), the division and the addition
    binary64 rounded to nearest (IEEE)."""
    n = s.shape[0]
    ss = s[start:, start:]
    m = n - start
    best = np.full(m, -SIM_ONE - 1, dtype=np.int64)
    if start:
        best = np.maximum(best, s[start:, :start].max(axis=1))
    col = ss.sum(axis=0) if balance else None
    herd_sum = np.zeros(m, dtype=np.int64)
    chosen = []
    free = np.ones(m, dtype=bool)
    for j in seed:
        best = np.maximum(best, ss[:, j])
        herd_sum += ss[j]
        free[j] = False
        chosen.append(int(j))
    # gain_j = sum_i max(ss[i, j] - best_i, 0), kept up to date as best rises: only the
    # rows i whose best changed are subtracted and added again (exact integers, the same
    # values as recomputing the whole sum each step)
    gain = np.maximum(ss - best[:, None], 0).sum(axis=0)
    while len(chosen) < k and free.any():
        if stop is not None and (chosen or start) and int(best.sum()) >= stop:
            break
        if balance:
            t1 = len(chosen) + 1
            herd = t1 * col - m * herd_sum
            score = gain.astype(np.float64) + (BALANCE_NUM * herd).astype(np.float64) \
                / float(BALANCE_DEN * m * t1)
            score[~free] = -np.inf
        else:
            score = np.where(free, gain, -1)
        j = int(np.argmax(score))
        chosen.append(j)
        free[j] = False
        up = np.flatnonzero(ss[:, j] > best)
        if up.size:
            rows = ss[up]
            gain -= np.maximum(rows - best[up, None], 0).sum(axis=0)
            best[up] = ss[up, j]
            gain += np.maximum(rows - best[up, None], 0).sum(axis=0)
        herd_sum += ss[j]
    return chosen


def _greedy_diversity(s, start, k, stop=None, seed=()):
    """Greedy max-min (DivPrune): the first token is the medoid (largest sum of levels to
    the sequence tokens) unless ``seed`` or prefix tokens are kept; each further step adds
    the token whose largest level to the kept set (prefix tokens included) is smallest."""
    ss = s[start:, start:]
    m = ss.shape[0]
    near = np.full(m, -SIM_ONE - 1, dtype=np.int64)      # max level to the kept set
    if start:
        near = np.maximum(near, s[start:, :start].max(axis=1))
    best = near.copy()                                   # for the keep_coverage stop
    chosen, free = [], np.ones(m, dtype=bool)
    for j in seed:
        near = np.maximum(near, ss[:, j])
        free[j] = False
        chosen.append(int(j))
    best = near.copy()
    while len(chosen) < k and free.any():
        if stop is not None and (chosen or start) and int(best.sum()) >= stop:
            break
        if not chosen and not start:
            j = int(np.argmax(ss.sum(axis=1)))
        else:
            cand = np.where(free, near, SIM_ONE + 1)
            j = int(np.argmin(cand))
        chosen.append(j)
        free[j] = False
        near = np.maximum(near, ss[:, j])
        best = near
    return chosen


def _lattice(h: int, w: int, k: int) -> list:
    """k cells of an h x w grid spread evenly: r = round(sqrt(k h / w)) rows (1..h) at
    evenly spaced heights, the k cells dealt to them as evenly as possible (the first
    k mod r rows get one more), evenly spaced in each row: cell centres
    floor((i + 1/2) extent / count), computed in integers.  Raster order."""
    if k <= 0:
        return []
    if k >= h * w:
        return list(range(h * w))
    r = min(h, max(1, int(np.floor(np.sqrt(k * h / w) + 0.5))))
    while -(-k // r) > w:             # a row holds at most w cells
        r += 1
    out = []
    for i in range(r):
        y = (2 * i + 1) * h // (2 * r)
        c = k // r + (1 if i < k % r else 0)
        out += [y * w + (2 * t + 1) * w // (2 * c) for t in range(c)]
    return sorted(out)


def _uniform(s, start, k, grid):
    m = s.shape[0] - start
    if grid is None:
        return [(2 * i + 1) * m // (2 * k) for i in range(k)] if k else []
    return _lattice(grid[0], grid[1], k)


def _region_weight(ss, cells):
    """Variation of a region: |R| 2^24 - floor(sum_{i,j in R} s[i, j] / |R|), an integer
    (|R| times one minus the mean pairwise level, in levels), plus |R| 2^20 so that a
    flat region still counts for its area."""
    sub = ss[np.ix_(cells, cells)]
    n = len(cells)
    return n * SIM_ONE - int(sub.sum()) // n + n * (SIM_ONE >> 4)


def _apportion(budget, weights, caps):
    """Largest-remainder split of ``budget`` in proportion to integer ``weights``, each
    share at most its cap (the excess goes to the others in the same way); ties to the
    earlier region.  Exact integer arithmetic."""
    n = len(weights)
    share = [0] * n
    left = budget
    open_ = [i for i in range(n) if caps[i] > 0]
    while left > 0 and open_:
        tot = sum(max(weights[i], 1) for i in open_)
        q = {i: left * max(weights[i], 1) for i in open_}
        base = {i: min(q[i] // tot, caps[i] - share[i]) for i in open_}
        for i in open_:
            share[i] += base[i]
        given = sum(base.values())
        rest = left - given
        if rest > 0:
            order = sorted((i for i in open_ if share[i] < caps[i]),
                           key=lambda i: (-(q[i] % tot), i))
            for i in order[:rest]:
                share[i] += 1
                given += 1
        left = budget - sum(share)
        open_ = [i for i in open_ if share[i] < caps[i]]
        if given == 0:
            break
    return share


def _density(s, start, k, grid):
    """QPID-like information-density allocation over the presence-map quadtree (clause
    7.2: root square of side 2^ceil(log2 max(h, w)), children top-left, top-right,
    bottom-left, bottom-right): a node's budget is split among its children in proportion
    to their variation (_region_weight, largest remainder); a node whose budget is 1 or
    covers all its tokens, or a node of side 2, picks its budget by the coverage greedy
    among its own tokens.  Tracks without a grid: the same over a 1 x m grid."""
    m = s.shape[0] - start
    h, w = grid if grid is not None else (1, m)
    ss = s[start:, start:]
    side = 1 << max(0, int(max(h, w) - 1).bit_length())
    out = []

    def cells_of(y0, x0, sd):
        return [y * w + x for y in range(y0, min(y0 + sd, h)) for x in range(x0, min(x0 + sd, w))]

    def visit(y0, x0, sd, b):
        cells = cells_of(y0, x0, sd)
        if b <= 0 or not cells:
            return
        if b >= len(cells):
            out.extend(cells)
            return
        if b == 1 or sd <= 2:
            sub = ss[np.ix_(cells, cells)]
            out.extend(cells[j] for j in _greedy_coverage(sub, 0, b))
            return
        half = sd // 2
        kids = [(y0 + dy * half, x0 + dx * half) for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1))]
        kids = [(y, x) for y, x in kids if y < h and x < w]
        kc = [cells_of(y, x, half) for y, x in kids]
        share = _apportion(b, [_region_weight(ss, c) for c in kc], [len(c) for c in kc])
        for (y, x), bb in zip(kids, share):
            visit(y, x, half, bb)

    visit(0, 0, side, k)
    return sorted(out)


def _uniform_coverage(s, start, k, grid, stop=None):
    """Hybrid: a uniform lattice of k // 4 tokens, then the coverage greedy."""
    seed = _uniform(s, start, k // 4, grid)
    return _greedy_coverage(s, start, k, stop, seed)


def _uniform_diversity(s, start, k, grid, stop=None):
    """Hybrid: a uniform lattice of k // 4 tokens, then greedy max-min diversity."""
    seed = _uniform(s, start, k // 4, grid)
    return _greedy_diversity(s, start, k, stop, seed)


# name -> (function(s, start, k, grid, stop) -> chosen sequence indices, nested)
POLICIES = {
    "farthest": (None, False),
    "uniform": (lambda s, st, k, g, stop=None: _uniform(s, st, k, g), False),
    "diversity": (lambda s, st, k, g, stop=None: _greedy_diversity(s, st, k, stop), True),
    "coverage": (lambda s, st, k, g, stop=None: _greedy_coverage(s, st, k, stop), True),
    "balanced": (lambda s, st, k, g, stop=None: _greedy_coverage(s, st, k, stop,
                                                                 balance=True), True),
    "density": (lambda s, st, k, g, stop=None: _density(s, st, k, g), False),
    "uniform+coverage": (_uniform_coverage, False),
    "uniform+diversity": (_uniform_diversity, False),
}
DEFAULT_POLICY = "balanced"


def check_policy(policy):
    """The policy name (None: DEFAULT_POLICY), or TKBEncodeError.  A callable
    ``policy(x, start, k, grid)`` returning k sequence indices (0 .. m-1) is accepted too
    (experiments, baselines: the benchmark's seeded random selection)."""
    if policy is None:
        return DEFAULT_POLICY
    if callable(policy):
        return policy
    if policy not in POLICIES:
        raise TKBEncodeError(f"prune policy {policy!r}: one of {', '.join(POLICIES)}")
    return policy


# -- the farthest-from-mean policy (the B.2 policy of TKB 1.0's reference encoder) ----

def _sequential_sum(a: np.ndarray, axis: int) -> np.ndarray:
    """Sum in float64 in index order (np.cumsum is sequential; np.sum is pairwise)."""
    a = np.moveaxis(np.asarray(a, dtype=np.float64), axis, -1)
    return np.cumsum(a, axis=-1)[..., -1] if a.shape[-1] else np.zeros(a.shape[:-1])


def prune_scores(x: np.ndarray, start: int) -> np.ndarray:
    """Score of each sequence token x[start:] for the ``farthest`` policy: 1 - cosine to
    the frame's mean token, every sum in float64 in index order so a GPU kernel that sums
    in the same order finds the same scores (kernels/quant.scores_parts)."""
    seq = np.asarray(x[start:], dtype=np.float64)
    if seq.shape[0] == 0:
        return np.zeros(0)
    m = _sequential_sum(seq, 0) / seq.shape[0]
    mnorm = np.sqrt(_sequential_sum(m * m, 0)) or 1.0
    norms = np.sqrt(_sequential_sum(seq * seq, 1)) * mnorm
    dot = _sequential_sum(seq * m[None, :], 1)
    return 1.0 - dot / np.where(norms > 0, norms, 1.0)


def kept_count(keep: float, m: int) -> int:
    """Sequence tokens kept for the fraction ``keep`` of m: round(keep m), half to even."""
    return int(round(keep * m))


def select_kept(dist: np.ndarray, keep: float, start: int) -> np.ndarray:
    """``farthest``: the prefix tokens, then the fraction ``keep`` of the sequence
    tokens of highest score (ties: the earlier token), in position order."""
    k = kept_count(keep, dist.size)
    chosen = np.sort(np.argsort(-dist, kind="stable")[:k]) + start
    return np.concatenate((np.arange(start), chosen)).astype(np.uint32)


# -- one frame --------------------------------------------------------------------

def prune(x: np.ndarray, keep: float | None, start: int, policy: str | None = None,
          grid: tuple | None = None, keep_coverage: float | None = None) -> np.ndarray:
    """Kept positions (uint32, increasing) of one frame ``x`` [N, D] (Annex B.2): the
    ``start`` prefix tokens, then round(``keep`` m) of the m = N - start sequence tokens
    chosen by ``policy`` (default DEFAULT_POLICY); ``grid`` (h, w) of the sequence tokens
    for the spatial policies.  With ``keep_coverage`` C instead of ``keep``: the fewest
    tokens whose coverage (see :func:`coverage`) reaches C -- the shortest prefix of a
    nested policy's order, else the smallest count k whose choice reaches it."""
    policy = check_policy(policy)
    n = x.shape[0]
    m = n - start
    prefix = np.arange(min(start, n))
    if m <= 0:
        return prefix.astype(np.uint32)
    if grid is not None and grid[0] * grid[1] != m:
        raise TKBEncodeError(f"grid {grid[0]}x{grid[1]} does not hold {m} tokens")
    if callable(policy):
        user = policy
        policy = "user"
        table = {"user": (lambda s, st, k, g, stop=None: user(x, st, k, g), False)}
    else:
        table = POLICIES
    if keep_coverage is None:
        k = kept_count(keep, m)
        if policy == "farthest":
            return select_kept(prune_scores(x, start), keep, start)
        if k >= m:
            return np.arange(n, dtype=np.uint32)
        fn, _ = table[policy]
        chosen = fn(similarity_levels(x), start, k, grid) if k else []
    else:
        if policy == "farthest":
            order = np.argsort(-prune_scores(x, start), kind="stable")
            fn = lambda s, st, k, g, stop=None: list(order[:k])  # noqa: E731
            nested = False
        else:
            fn, nested = table[policy]
        s = similarity_levels(x)
        target = keep_coverage * m * SIM_ONE          # binary64, compared exactly
        if nested:
            chosen = fn(s, start, m, grid, stop=target)
        else:
            for k in range(m + 1):
                chosen = fn(s, start, k, grid) if k else []
                if coverage_total(s, np.concatenate((prefix, np.asarray(chosen, np.int64)
                                                     + start)), start) >= target:
                    break
    chosen = np.sort(np.asarray(chosen, dtype=np.int64)) + start
    return np.concatenate((prefix, chosen)).astype(np.uint32)


# -- stand-ins, dense fill, merging (informative; the benchmark's proxies) ---------

def dense_fill(values: np.ndarray, kept: np.ndarray, stand_ins: np.ndarray,
               num_tokens: int) -> np.ndarray:
    """[num_tokens, D]: the kept tokens ``values`` [K, D] at their positions, every pruned
    position (in position order) a copy of its stand-in ``values[stand_ins[i]]``."""
    kept = np.asarray(kept, dtype=np.int64)
    out = np.zeros((num_tokens,) + values.shape[1:], dtype=values.dtype)
    out[kept] = values
    pruned = np.setdiff1d(np.arange(num_tokens), kept)
    if pruned.size:
        out[pruned] = values[np.asarray(stand_ins, dtype=np.int64)]
    return out


def merge_average(x: np.ndarray, kept: np.ndarray, stand_ins: np.ndarray) -> np.ndarray:
    """ToMe-style merging: each kept token replaced by the mean (float64, then the input's
    float type) of itself and the pruned tokens it stands in for.  [K, D]."""
    kept = np.asarray(kept, dtype=np.int64)
    n = x.shape[0]
    pruned = np.setdiff1d(np.arange(n), kept)
    xf = np.asarray(x, dtype=np.float64)
    acc = xf[kept].copy()
    cnt = np.ones(kept.size)
    if pruned.size and kept.size:
        si = np.asarray(stand_ins, dtype=np.int64)
        np.add.at(acc, si, xf[pruned])
        np.add.at(cnt, si, 1.0)
    return (acc / cnt[:, None]).astype(np.result_type(x.dtype, np.float32))
