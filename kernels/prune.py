"""Token selection on the GPU (Annex B.2): exact-integer similarities by int8-limb
``tl.dot`` products, the coverage greedy (policies ``coverage`` and ``balanced``, the
default), and the merge map's stand-ins.  Twins: ``tokenbits.pruning.similarity_levels``,
``_greedy_coverage`` (through ``pruning.prune`` with policy "coverage" or "balanced",
``keep`` or ``keep_coverage``) and
``assign_stand_ins``; every value is computed as the reference defines it:

* directions q = rint(x 2^(14 - e)) (e from frexp of the token's largest magnitude,
  non-finite values as 0) and n = sqrt(sum q^2) with torch ops in binary64: exact
  (powers of two built from their bits, integers below 2^53) or correctly rounded (sqrt);
* dot(a, b) = sum q_a q_b from two balanced int8 limbs per value: four int8 x int8 ->
  int32 tensor-core products (each below 2^27 in magnitude for D <= 8192), combined in
  int64; cos = dot / (n_a n_b) in binary64 (IEEE: correctly rounded), 0 when n_a n_b is
  0; the level rint(cos 2^24) by the 1.5 * 2^52 rounding trick (half to even);
* the greedy adds, step by step, the token of largest coverage gain
  sum_i max(s[i, j] - best_i, 0) (int64: any summation order), ties to the lower index,
  chosen tokens excluded; with a coverage target it stops as soon as sum_i best_i
  (int64, compared in binary64 with the target) reaches it; ``balanced`` adds its
  herding term in binary64 exactly as the reference does (one division, one addition).

Other policies select on the host through the reference (kernels/codec.kept_positions).
"""
from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from tokenbits import pruning

RINT64 = tl.constexpr(6755399441055744.0)      # 1.5 * 2^52: (v + RINT64) - RINT64 = rint(v)
SIM_ONE = tl.constexpr(pruning.SIM_ONE)
NONE_YET = tl.constexpr(-pruning.SIM_ONE - 1)  # best level before anything is kept
BAL_NUM = tl.constexpr(pruning.BALANCE_NUM)    # ``balanced``: the herding weight's
BAL_DEN = tl.constexpr(pruning.BALANCE_DEN)    # numerator and denominator
SIM_VARIANT = dict(BI=32, BJ=32, BK=64, num_warps=4)
GREEDY_VARIANT = dict(BI=64, BJ=32, num_warps=4)
FRAMES_PER_LAUNCH = 256                        # bounds the [F, N, N] level scratch


def _power_of_two(k: torch.Tensor) -> torch.Tensor:
    """binary64 2^k for integer k in -1022 .. 1023, built from its bits: exact (torch.ldexp
    multiplies by pow(2, k), which CUDA computes within 2 ulp: on an H100 it moved
    x 2^k = 509.5 to just below, and rint then gave 509 where the reference gives 510).
    Here k = 14 - e for a float32, float16 or bfloat16 token: -115 .. 163."""
    return ((k + 1023) << 52).view(torch.float64)


def directions(x: torch.Tensor):
    """(int8 limbs [2, R, DP] of q (DP: D padded with zeros to 32 or a multiple of 64: an
    int8 tensor-core product takes K >= 32 on a GPU), binary64 norms [R]) of the rows of
    x [R, D] (float16, bfloat16 or float32)."""
    xf = x.to(torch.float64)
    xf = torch.where(torch.isfinite(xf), xf, torch.zeros_like(xf))
    top = xf.abs().amax(dim=1) if xf.shape[1] else torch.zeros(xf.shape[0], dtype=xf.dtype,
                                                                  device=xf.device)
    _, e = torch.frexp(top)
    q = torch.round(xf * _power_of_two((pruning.SIM_BITS - e).to(torch.int64)[:, None]))
    norms = torch.sqrt((q * q).sum(dim=1))         # integers below 2^53: exact sums
    qi = q.to(torch.int64)
    lo = ((qi + 128) & 255) - 128
    hi = (qi - lo) >> 8
    d = x.shape[1]
    dp = 32 if d <= 32 else -(-d // 64) * 64
    limbs = torch.zeros((2, x.shape[0], dp), dtype=torch.int8, device=x.device)
    limbs[0, :, :x.shape[1]] = lo.to(torch.int8)
    limbs[1, :, :x.shape[1]] = hi.to(torch.int8)
    return limbs, norms


@triton.jit
def _similarity_kernel(q_ptr, norm_ptr, a_ptr, b_ptr, out_ptr, R, DP, MA, MB,
                       LEVELS: tl.constexpr, BI: tl.constexpr, BJ: tl.constexpr,
                       BK: tl.constexpr):
    """out[f, i, j] for rows a[f, i] and b[f, j] (-1: none): the cosine (binary64) or,
    LEVELS, its level rint(cos 2^24) (int32)."""
    f = tl.program_id(0)
    ii = tl.program_id(1) * BI + tl.arange(0, BI)
    jj = tl.program_id(2) * BJ + tl.arange(0, BJ)
    ra = tl.load(a_ptr + f.to(tl.int64) * MA + ii, mask=ii < MA, other=-1)
    rb = tl.load(b_ptr + f.to(tl.int64) * MB + jj, mask=jj < MB, other=-1)
    plane = tl.cast(R, tl.int64) * DP   # (R is a constexpr when a launch has one row)
    z = tl.zeros((BI, BJ), dtype=tl.int32)
    a00, a01, a10, a11 = z, z, z, z
    for k0 in range(0, DP, BK):
        kk = k0 + tl.arange(0, BK)
        am = (ra[:, None] >= 0) & (kk[None, :] < DP)
        bm = (rb[:, None] >= 0) & (kk[None, :] < DP)
        aidx = ra[:, None].to(tl.int64) * DP + kk[None, :]
        bidx = rb[:, None].to(tl.int64) * DP + kk[None, :]
        x0 = tl.load(q_ptr + aidx, mask=am, other=0)
        x1 = tl.load(q_ptr + plane + aidx, mask=am, other=0)
        y0 = tl.trans(tl.load(q_ptr + bidx, mask=bm, other=0))
        y1 = tl.trans(tl.load(q_ptr + plane + bidx, mask=bm, other=0))
        a00 += tl.dot(x0, y0)
        a01 += tl.dot(x0, y1)
        a10 += tl.dot(x1, y0)
        a11 += tl.dot(x1, y1)
    dot = (a00.to(tl.int64) + ((a01.to(tl.int64) + a10.to(tl.int64)) << 8)
           + (a11.to(tl.int64) << 16))
    na = tl.load(norm_ptr + ra, mask=ra >= 0, other=0.0)
    nb = tl.load(norm_ptr + rb, mask=rb >= 0, other=0.0)
    den = na[:, None] * nb[None, :]
    pos = den > 0
    cos = tl.where(pos, dot.to(tl.float64) / tl.where(pos, den, 1.0), 0.0)
    m = (ii[:, None] < MA) & (jj[None, :] < MB)
    idx = (f.to(tl.int64) * MA + ii[:, None]) * MB + jj[None, :]
    if LEVELS:
        v = cos * SIM_ONE
        s = ((v + RINT64) - RINT64).to(tl.int32)
        tl.store(out_ptr + idx, s, mask=m)
    else:
        tl.store(out_ptr + idx, cos, mask=m)


def similarities(q, norms, a_rows: torch.Tensor, b_rows: torch.Tensor, levels: bool,
                 variant=None) -> torch.Tensor:
    """[F, MA, MB]: cosines (binary64) or levels (int32) between rows a_rows [F, MA] and
    b_rows [F, MB] (int64, -1 pads) of the directions ``q``, ``norms``."""
    v = dict(SIM_VARIANT, **(variant or {}))
    bi, bj, bk = v.pop("BI"), v.pop("BJ"), v.pop("BK")
    if bk < 32:     # compiled int8 products need K >= 32 (the interpreter does not check)
        raise ValueError(f"BK {bk} < 32")
    f, ma = a_rows.shape
    mb = b_rows.shape[1]
    out = torch.empty((f, ma, mb), dtype=torch.int32 if levels else torch.float64,
                      device=q.device)
    if f and ma and mb:
        grid = (f, triton.cdiv(ma, bi), triton.cdiv(mb, bj))
        _similarity_kernel[grid](q, norms, a_rows.contiguous(), b_rows.contiguous(), out,
                                 q.shape[1], q.shape[2], ma, mb, LEVELS=levels, BI=bi, BJ=bj,
                                 BK=min(bk, q.shape[2]), **v)
    return out


@triton.jit
def _greedy_coverage_kernel(s_ptr, n_ptr, k_ptr, stop_ptr, best_ptr, free_ptr, col_ptr,
                            herd_ptr, chosen_ptr, count_ptr, NMAX, START,
                            BALANCE: tl.constexpr, BI: tl.constexpr, BJ: tl.constexpr):
    """One frame per program: the coverage greedy over its levels s [NMAX, NMAX] (the
    frame's n tokens first), prefix tokens 0 .. START-1 kept; up to k choices or until the
    coverage total reaches stop (binary64; +inf: no target).  BALANCE: the ``balanced``
    score, gain + (3 herd) / (2 m (t + 1)) in binary64.  Scratch per frame [NMAX]: best
    (int64), free (int8), and for BALANCE the column sums and the kept rows' sums (int64)."""
    f = tl.program_id(0)
    n = tl.load(n_ptr + f)
    m = n - START
    k = tl.load(k_ptr + f)
    stop = tl.load(stop_ptr + f)
    s0 = f.to(tl.int64) * NMAX * NMAX
    b0 = f.to(tl.int64) * NMAX
    for i0 in range(0, m, BI):                   # best_i: the prefix tokens' levels
        ii = i0 + tl.arange(0, BI)
        b = tl.full((BI,), NONE_YET, tl.int64)
        for p in range(0, START):
            sv = tl.load(s_ptr + s0 + (START + ii).to(tl.int64) * NMAX + p, mask=ii < m,
                         other=NONE_YET)
            b = tl.maximum(b, sv.to(tl.int64))
        tl.store(best_ptr + b0 + ii, b, mask=ii < m)
        tl.store(free_ptr + b0 + ii, tl.full((BI,), 1, tl.int8), mask=ii < m)
        if BALANCE:                              # column sums over the sequence tokens
            tl.store(herd_ptr + b0 + ii, tl.zeros((BI,), dtype=tl.int64), mask=ii < m)
            c = tl.zeros((BI,), dtype=tl.int64)
            for r0 in range(0, m, BJ):
                rr = r0 + tl.arange(0, BJ)
                sm = (rr[:, None] < m) & (ii[None, :] < m)
                c += tl.sum(tl.load(s_ptr + s0 + (START + rr[:, None]).to(tl.int64) * NMAX
                                    + START + ii[None, :], mask=sm, other=0).to(tl.int64), 0)
            tl.store(col_ptr + b0 + ii, c, mask=ii < m)
    tl.debug_barrier()
    cnt = 0
    done = 0
    for _step in range(0, k):
        if done == 0:
            if (cnt > 0) | (START > 0):          # a coverage target, once something is kept
                tot = tl.zeros((BI,), dtype=tl.int64)
                for i0 in range(0, m, BI):
                    ii = i0 + tl.arange(0, BI)
                    tot += tl.load(best_ptr + b0 + ii, mask=ii < m, other=0)
                if tl.sum(tot, 0).to(tl.float64) >= stop:
                    done = 1
        if done == 0:
            gbest = tl.full((), -3, tl.int64)
            fbest = tl.full((), float("-inf"), tl.float64)
            jbest = tl.full((), 0, tl.int32)
            den = (m * (cnt + 1) * BAL_DEN).to(tl.float64)
            for j0 in range(0, m, BJ):
                jj = j0 + tl.arange(0, BJ)
                g = tl.zeros((BJ,), dtype=tl.int64)
                for i0 in range(0, m, BI):
                    ii = i0 + tl.arange(0, BI)
                    sm = (ii[:, None] < m) & (jj[None, :] < m)
                    st = tl.load(s_ptr + s0 + (START + ii[:, None]).to(tl.int64) * NMAX
                                 + START + jj[None, :], mask=sm, other=0).to(tl.int64)
                    b = tl.load(best_ptr + b0 + ii, mask=ii < m, other=0)
                    g += tl.sum(tl.where(sm, tl.maximum(st - b[:, None], 0), 0), 0)
                fr = tl.load(free_ptr + b0 + jj, mask=jj < m, other=0)
                if BALANCE:
                    c = tl.load(col_ptr + b0 + jj, mask=jj < m, other=0)
                    hs = tl.load(herd_ptr + b0 + jj, mask=jj < m, other=0)
                    herd = (cnt + 1) * c - m * hs
                    sc = g.to(tl.float64) + (herd * BAL_NUM).to(tl.float64) / den
                    sc = tl.where((jj < m) & (fr != 0), sc, float("-inf"))
                    fx = tl.max(sc, 0)
                    idx = tl.min(tl.where(sc == fx, jj, 2147483647), 0)
                    if fx > fbest:               # strictly: a tie keeps the lower index
                        fbest = fx
                        jbest = idx
                else:
                    g = tl.where(jj < m, tl.where(fr != 0, g, -1), -2)
                    mx = tl.max(g, 0)
                    idx = tl.min(tl.where(g == mx, jj, 2147483647), 0)
                    if mx > gbest:               # strictly: a tie keeps the lower index
                        gbest = mx
                        jbest = idx
            tl.store(chosen_ptr + b0 + cnt, jbest)
            tl.store(free_ptr + b0 + jbest, tl.full((), 0, tl.int8))
            for i0 in range(0, m, BI):
                ii = i0 + tl.arange(0, BI)
                sv = tl.load(s_ptr + s0 + (START + ii).to(tl.int64) * NMAX + START + jbest,
                             mask=ii < m, other=0).to(tl.int64)
                b = tl.load(best_ptr + b0 + ii, mask=ii < m, other=0)
                tl.store(best_ptr + b0 + ii, tl.maximum(b, sv), mask=ii < m)
                if BALANCE:                      # the kept rows' sums: + s[jbest, :]
                    rv = tl.load(s_ptr + s0 + (START + jbest).to(tl.int64) * NMAX + START + ii,
                                 mask=ii < m, other=0).to(tl.int64)
                    h = tl.load(herd_ptr + b0 + ii, mask=ii < m, other=0)
                    tl.store(herd_ptr + b0 + ii, h + rv, mask=ii < m)
            tl.debug_barrier()
            cnt += 1
    tl.store(count_ptr + f, cnt)


def select_coverage(x: torch.Tensor, starts: np.ndarray, counts: np.ndarray, start: int,
                    keep: float | None = None, keep_coverage: float | None = None,
                    variant=None, balance: bool = False) -> list:
    """Kept positions (uint32, increasing) of frames x[starts[i] : starts[i] + counts[i]]
    (rows of x [R, D]) by the coverage policy (``balance``: the balanced one), as
    ``pruning.prune(frame, keep, start, "coverage" or "balanced", keep_coverage=...)``
    returns them."""
    v = dict(GREEDY_VARIANT, **(variant or {}))
    sv = {k: v.pop(k) for k in ("BI", "BJ")}
    out: list = [None] * len(counts)
    work = []
    for i, n in enumerate(counts):
        m = int(n) - start
        if m <= 0:
            out[i] = np.arange(min(start, int(n)), dtype=np.uint32)
            continue
        if keep_coverage is None:
            k = pruning.kept_count(keep, m)
            if k >= m:
                out[i] = np.arange(int(n), dtype=np.uint32)
                continue
            if k == 0:
                out[i] = np.arange(start, dtype=np.uint32)
                continue
            stop = float("inf")
        else:
            k, stop = m, keep_coverage * m * pruning.SIM_ONE
        work.append((i, k, stop))
    if not work:
        return out
    q, norms = directions(x)
    dev = x.device
    for c0 in range(0, len(work), FRAMES_PER_LAUNCH):
        chunk = work[c0:c0 + FRAMES_PER_LAUNCH]
        nmax = max(int(counts[i]) for i, _, _ in chunk)
        rows = np.full((len(chunk), nmax), -1, dtype=np.int64)
        for r, (i, _, _) in enumerate(chunk):
            rows[r, :counts[i]] = starts[i] + np.arange(counts[i])
        rows_t = torch.from_numpy(rows).to(dev)
        s = similarities(q, norms, rows_t, rows_t, True)
        nf = len(chunk)
        n_t = torch.tensor([int(counts[i]) for i, _, _ in chunk], dtype=torch.int32, device=dev)
        k_t = torch.tensor([k for _, k, _ in chunk], dtype=torch.int32, device=dev)
        stop_t = torch.tensor([st for _, _, st in chunk], dtype=torch.float64, device=dev)
        best = torch.empty((nf, nmax), dtype=torch.int64, device=dev)
        free = torch.empty((nf, nmax), dtype=torch.int8, device=dev)
        col = torch.empty((nf, nmax) if balance else (1,), dtype=torch.int64, device=dev)
        herd = torch.empty((nf, nmax) if balance else (1,), dtype=torch.int64, device=dev)
        chosen = torch.zeros((nf, nmax), dtype=torch.int32, device=dev)
        cnt = torch.zeros(nf, dtype=torch.int32, device=dev)
        _greedy_coverage_kernel[(nf,)](s, n_t, k_t, stop_t, best, free, col, herd, chosen,
                                       cnt, nmax, start, BALANCE=balance, **sv, **v)
        chosen, cnt = chosen.cpu().numpy(), cnt.cpu().numpy()
        for r, (i, _, _) in enumerate(chunk):
            picked = np.sort(chosen[r, :cnt[r]].astype(np.int64)) + start
            out[i] = np.concatenate((np.arange(start), picked)).astype(np.uint32)
    return out


def stand_ins(x: torch.Tensor, starts: np.ndarray, counts: np.ndarray, kept: list) -> list:
    """The merge map's stand-ins of frames x[starts[i] : starts[i] + counts[i]] with kept
    positions kept[i] (``pruning.assign_stand_ins``): for its
    pruned positions in order, the index of the kept token of largest cosine (ties: the
    lower index).  uint32 arrays; empty where nothing is pruned or nothing kept."""
    out: list = []
    jobs = []
    for i, pos in enumerate(kept):
        n = int(counts[i])
        pos = np.asarray(pos, dtype=np.int64)
        pr = np.setdiff1d(np.arange(n), pos)
        out.append(np.zeros(0, np.uint32))
        if pr.size and pos.size:
            jobs.append((i, starts[i] + pr, starts[i] + pos))
    if not jobs:
        return out
    q, norms = directions(x)
    ma = max(a.size for _, a, _ in jobs)
    mb = max(b.size for _, _, b in jobs)
    a = np.full((len(jobs), ma), -1, dtype=np.int64)
    b = np.full((len(jobs), mb), -1, dtype=np.int64)
    for r, (_, pa, pb) in enumerate(jobs):
        a[r, :pa.size] = pa
        b[r, :pb.size] = pb
    bt = torch.from_numpy(b).to(x.device)
    cos = similarities(q, norms, torch.from_numpy(a).to(x.device), bt, False)
    cos = torch.where(bt[:, None, :] >= 0, cos, torch.full_like(cos, -3.0))  # pads never win
    arg = torch.argmax(cos, dim=2).cpu().numpy()     # the first of equal maxima
    for r, (i, pa, _) in enumerate(jobs):
        out[i] = arg[r, :pa.size].astype(np.uint32)
    return out
