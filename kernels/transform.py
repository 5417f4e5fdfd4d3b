"""Channel transforms on the GPU: the decoder's inverse (clause 7.6.3) and the
encoder's forward transform (Annex B.7), both exact integer arithmetic.

Twins: ``tokenbits.transform.coefficient_values`` and ``tokenbits.transform.inverse``;
``tokenbits.transform_fit.forward``.

The levels of a batch's coefficients come from ``recon.dequantize`` run with a step
table of ones (binary32(level) * 1.0 is the level, exactly: abs(level) <= 2^24 - 1).
Then two launches:

1. ``_ylimbs_kernel``, per block of LIMB_ROWS rows over all K coefficients:
   Y = rint(level * FACTORS[code]) in binary64, with code = step_code[j] + delta[row]
   (clause 7.6.1) and FACTORS[q] = M[q mod 6] * 2^(q div 6 - 47 + F), the reference's
   own formula (exact: a product of at most 48 significant bits; rint rounds half to
   even); abs(Y) > 2^24 - 1 sets the row's BAD_COEFF status.  Y is stored as balanced
   signed 8-bit limbs, Y = y0 + 2^8 y1 + 2^16 y2 + 2^24 y3 (each in -128..127), in limb
   planes [4, R, KP] (KP: K padded with zeros to a multiple of 64, aligned rows).  Planes
   0 and 1 are always written; planes 2 and 3 only for a block holding some abs(Y) >
   32639 (the most two limbs hold), and the block's statistics are stored (int32 [3,
   blocks]: its limb count 1, 2 or 4, its limb-1 extent (KEXT) and its largest abs(Y)).
2. ``_inverse_kernel``, per tile of rows x channels (a tile's rows lie in one block; two
   launches, the second for the blocks of four limbs): the block's limb count of Y limbs
   times one to three basis limbs (basis_limbs; one for basis_bits <= 8), each an int8 x
   int8 -> int32 tensor-core product over K (a limb sum over K <= 8192 coefficients is
   below 2^27 in magnitude: exact in int32); then
   acc = sum of the limb sums shifted by 8 (i + j), plus mean[c], in int64 (|acc| < 2^53),
   binary32(acc) rounded once to nearest even (int64 -> float32), times 2^-(F + G)
   (exact: a power of two, no underflow since F + G <= 80), and the output dtype
   (clause 7.6.2).  The limb count changes only how many zero products are skipped.

The basis limbs are stored transposed, [NB, D, KP] (K contiguous): int8 tensor-core
products on Hopper take both operands K-major.

FUSED (``levels_limbs``, for chains of consecutive rows: left or no prediction): step 1
and the levels in one pass, with no binary32 levels in memory.  ``_levels_limbs_kernel``
runs down a chain for a segment of LEVELS_BC coefficients, a row at a time (as
recon._dequant_rows_kernel; the next LEVELS_PF rows' symbols and step deltas in flight),
computes Y and writes limbs 0 and 1, and limbs 2 and 3 of a row's segment where that
segment holds an abs(Y) > 32639, with each segment's largest abs(Y).  Then
``_limb_counts_kernel``, per block: the rows' BAD_COEFF status, the block statistics,
and in a four-limb block zeros in limbs 2 and 3 of the segments that did not write
them.  Limb planes past K are never written: the basis limbs there are
zero, so whatever they hold adds nothing.

F64 (a launch option of step 2): where a block has at most two Y limbs, the limb sums
are combined in binary64 rather than int64 (each limb sum is an integer below 2^27, the
shifted total below 2^46 and acc below 2^53: exact), the same binary32 result.

KEXT (a launch option of step 2): both paths record each block's limb-1 extent, the
coefficient count past which every abs(Y) <= 127 in the block (limb 1 is zero there;
recorded to the granularity of a segment or a ylimbs chunk, never short).  A two-limb
block then multiplies limb 1 only up to it, rounded up to BK.  On the ViT frames of the
GPU bench 7.7 % of the Y are beyond 127, most in the first coefficients; the 18 blocks'
extents, rounded up to 64, are 256 to 448 of KP 576 (mean 324): 22 % fewer products.

HORNER (a launch option of step 2, one basis limb): one int32 accumulator instead of one
per Y limb.  acc = Y_1 x B over the limb-1 extent, then acc * 256, then acc += Y_0 x B
over all KP: acc is the exact sum of Y x B while every partial sum stays within int32,
which holds for a block whose largest abs(Y) is at most HMAX (``horner_bound``: (256
y1max + 128) colsum <= 2^31 - 1, colsum the basis' largest column sum of abs values).
Blocks beyond HMAX, and four-limb blocks, go to the second launch.  Half the
accumulator registers: tiles twice as large fit, and read the limb planes and the basis
from L2 fewer times per output value.
"""
from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from tokenbits import transform as ref

from .recon import BAD_LEVEL, MAX_LEVEL, _store_out, row_residuals

MAX_Y = tl.constexpr((1 << 24) - 1)
TWO_LIMBS = tl.constexpr(32639)             # 127 + 127 * 256: the most two balanced limbs hold
ONE_LIMB = tl.constexpr(127)
BAD_COEFF = tl.constexpr(4)    # status bit of a row: a coefficient value beyond 2^24 - 1 (7.6.3)
RINT64 = tl.constexpr(6755399441055744.0)      # 1.5 * 2^52: (v + RINT64) - RINT64 = rint(v)
LIMB_ROWS = 128                # rows of a limb-count block; a GEMM tile's BM divides it
# (the launches timed best on an H100, 2026-12-07 21:40 UTC: BENCHMARKS.md)
TRANSFORM_VARIANT = dict(BM=64, BN=128, BK=64, num_warps=4, num_stages=3, F64=True,
                         KEXT=True)
YLIMBS_VARIANT = dict(BK=32, num_warps=8)
# the fused path (levels_limbs): coefficient segments of LEVELS_BC, LEVELS_WARPS warps a
# program, taken where chains x segments >= LEVELS_MIN_PROGRAMS (else recon.dequantize and
# ylimbs, as for chains through an index)
LEVELS_VARIANT = dict(FUSED=True, LEVELS_BC=128, LEVELS_WARPS=2, LEVELS_MIN_PROGRAMS=512,
                      LEVELS_PF=1)


def unset(shape, dtype, device) -> torch.Tensor:
    """A tensor that the kernels overwrite wherever it is read (the limb planes, block
    statistics and the decoder's output of a transform batch: no zero-fill, 2.4 GB for
    the GPU benchmark's output).  Tests and bench_gpu's checks replace it with one of
    all-ones bytes, so that a value left unwritten cannot pass for a computed one."""
    return torch.empty(shape, dtype=dtype, device=device)


def all_ones(shape, dtype, device) -> torch.Tensor:
    """What the checks put in place of :func:`unset`: all-ones bytes (a NaN in float16,
    bfloat16 and float32, -1 in the integer types)."""
    ints = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    return torch.full(shape, -1, dtype=ints[dtype.itemsize], device=device).view(dtype)


@triton.jit
def _plane(R, KP):
    """The distance between limb planes [R, KP], in int64 (tl.cast, not R.to: a launch of
    one row passes R as the constant 1, which has no methods)."""
    return tl.cast(R, tl.int64) * KP


@triton.jit
def _limb(v):
    """(the balanced low 8-bit digit of v as int8, (v - digit) / 256) for integer v."""
    d = ((v + 128) & 255) - 128
    return d.to(tl.int8), (v - d) >> 8


@triton.jit
def _magnitude(v):
    """rint(abs(v)) (half to even) as int32, clamped at 2^24: a coefficient value's
    magnitude (step 1 of 7.6.3; above MAX_Y exactly when it is out of range)."""
    a = tl.minimum(tl.abs(v), 16777216.0)
    return ((a + RINT64) - RINT64).to(tl.int32)


@triton.jit
def _coefficients(lev_ptr, delta_ptr, code_ptr, fac_ptr, rows, kk, R, K):
    """Y [LB, BK] (int32, clamped to +-2^24) of rows ``rows`` and coefficients ``kk``, and
    each row's flag of a value beyond 2^24 - 1."""
    m = (rows[:, None] < R) & (kk[None, :] < K)
    lev = tl.load(lev_ptr + rows[:, None].to(tl.int64) * K + kk[None, :], mask=m, other=0.0)
    dl = tl.load(delta_ptr + rows, mask=rows < R, other=0)
    code = tl.load(code_ptr + kk, mask=kk < K, other=0)[None, :] + dl[:, None]
    code = tl.minimum(tl.maximum(code, 0), 255)            # out-of-range codes: errors (7.6.1)
    fac = tl.load(fac_ptr + code, mask=m, other=0.0)
    v = lev.to(tl.float64) * fac                          # exact (48 significant bits)
    y = _magnitude(v)
    bad = tl.max(tl.where(m & (y > MAX_Y), 1, 0), 1)
    return tl.where(v < 0, -y, y), bad


@triton.jit
def _ylimbs_kernel(lev_ptr, delta_ptr, code_ptr, fac_ptr, y_ptr, blk_ptr, status_ptr, R, K, KP,
                   NBLK, LB: tl.constexpr, BK: tl.constexpr):
    """Limb planes y_ptr [4, R, KP] of a block of LB rows, the block's statistics (limb
    count, limb-1 extent, largest abs(Y): _store_block) and its rows' BAD_COEFF status
    (see the module docstring)."""
    rows = tl.program_id(0) * LB + tl.arange(0, LB)
    plane = _plane(R, KP)
    top = tl.zeros((LB,), dtype=tl.int32)
    bad = tl.zeros((LB,), dtype=tl.int32)
    ke = 0
    for k0 in range(0, KP, BK):
        kk = k0 + tl.arange(0, BK)
        y, b = _coefficients(lev_ptr, delta_ptr, code_ptr, fac_ptr, rows, kk, R, K)
        chunk = tl.max(tl.abs(y), 1)
        top = tl.maximum(top, chunk)
        ke = tl.where(tl.max(chunk, 0) > ONE_LIMB, tl.minimum(k0 + BK, K), ke)
        bad = bad | b
        m = (rows[:, None] < R) & (kk[None, :] < KP)
        idx = rows[:, None].to(tl.int64) * KP + kk[None, :]
        y0, y = _limb(y)
        y1, y = _limb(y)
        tl.store(y_ptr + idx, y0, mask=m)
        tl.store(y_ptr + plane + idx, y1, mask=m)
    big = tl.max(top, 0)
    if big > TWO_LIMBS:                      # rare: recompute and store the upper limbs
        for k0 in range(0, KP, BK):
            kk = k0 + tl.arange(0, BK)
            y, b = _coefficients(lev_ptr, delta_ptr, code_ptr, fac_ptr, rows, kk, R, K)
            m = (rows[:, None] < R) & (kk[None, :] < KP)
            idx = rows[:, None].to(tl.int64) * KP + kk[None, :]
            _, y = _limb(y)
            _, y = _limb(y)
            y2, y = _limb(y)
            tl.store(y_ptr + 2 * plane + idx, y2, mask=m)
            tl.store(y_ptr + 3 * plane + idx, y.to(tl.int8), mask=m)
    _store_block(blk_ptr, NBLK, tl.program_id(0), big, ke)
    tl.store(status_ptr + rows, bad * BAD_COEFF, mask=rows < R)


@triton.jit
def _row_ahead(sym_ptr, delta_ptr, r, i0, i1, c, cm, K, R):
    """The symbols [BC] and step delta of row r clamped to the chain i0 .. i1 - 1 (and
    to the rows 0 .. R - 1: an empty chain may start at R): the loads
    _levels_limbs_kernel issues rows ahead."""
    row = tl.minimum(tl.maximum(tl.minimum(r, i1 - 1), i0), R - 1)
    return (tl.load(sym_ptr + row * K + c, mask=cm, other=0), tl.load(delta_ptr + row))


@triton.jit
def _levels_limbs_kernel(sym_ptr, chain_ptr, delta_ptr, code_ptr, fac_ptr, esc_ptr, uext_ptr,
                         y_ptr, ymax_ptr, status_ptr, R, K, KP, NT, SCAN: tl.constexpr,
                         BC: tl.constexpr, PF: tl.constexpr):
    """The fused path (module docstring, FUSED): down a chain of consecutive rows, for
    coefficients t * BC .. t * BC + BC - 1, the levels (clauses 7.4.1 and 7.5, as
    recon._dequant_rows_kernel: int32, the extremes checked), Y (step 1 of 7.6.3, as
    _coefficients) and its limbs 0 and 1; limbs 2 and 3 of a row's segment only where
    the segment holds an abs(Y) > 32639.  ymax_ptr [R, NT]: each segment's largest
    abs(Y) (clamped at 2^24: beyond 2^24 - 1 is the BAD_COEFF error).  The symbols and
    step deltas of the next PF rows (1 to 4) load while a row is computed."""
    chain = tl.program_id(0)
    t = tl.program_id(1)
    c = t * BC + tl.arange(0, BC)
    cm = c < K
    i0 = tl.load(chain_ptr + chain)
    i1 = tl.load(chain_ptr + chain + 1)
    esc = tl.load(esc_ptr + c, mask=cm, other=1 << 30)       # masked: never reached
    code_c = tl.load(code_ptr + c, mask=cm, other=0)
    plane = _plane(R, KP)
    carry = tl.zeros([BC], tl.int32)
    hi = tl.zeros([BC], tl.int32)
    lo = tl.zeros([BC], tl.int32)
    s1, d1 = _row_ahead(sym_ptr, delta_ptr, i0, i0, i1, c, cm, K, R)
    if PF >= 2:
        s2, d2 = _row_ahead(sym_ptr, delta_ptr, i0 + 1, i0, i1, c, cm, K, R)
    if PF >= 3:
        s3, d3 = _row_ahead(sym_ptr, delta_ptr, i0 + 2, i0, i1, c, cm, K, R)
    if PF >= 4:
        s4, d4 = _row_ahead(sym_ptr, delta_ptr, i0 + 3, i0, i1, c, cm, K, R)
    for r in range(i0, i1):
        s, dl = s1.to(tl.int32), d1
        if PF == 1:
            s1, d1 = _row_ahead(sym_ptr, delta_ptr, r + 1, i0, i1, c, cm, K, R)
        elif PF == 2:
            s1, d1 = s2, d2
            s2, d2 = _row_ahead(sym_ptr, delta_ptr, r + 2, i0, i1, c, cm, K, R)
        elif PF == 3:
            s1, d1, s2, d2 = s2, d2, s3, d3
            s3, d3 = _row_ahead(sym_ptr, delta_ptr, r + 3, i0, i1, c, cm, K, R)
        else:
            s1, d1, s2, d2, s3, d3 = s2, d2, s3, d3, s4, d4
            s4, d4 = _row_ahead(sym_ptr, delta_ptr, r + 4, i0, i1, c, cm, K, R)
        row = i0 + (r - i0)                                 # r is an int when interpreted
        lv = row_residuals(s, esc, cm, uext_ptr, row * K + c)
        if SCAN:                                            # clause 7.5: left prediction
            lv += carry
            carry = lv
        hi = tl.maximum(hi, lv)
        lo = tl.minimum(lo, lv)
        code = tl.minimum(tl.maximum(code_c + dl, 0), 255)
        v = lv.to(tl.float64) * tl.load(fac_ptr + code, mask=cm, other=0.0)   # exact
        y = _magnitude(v)
        top = tl.max(tl.where(cm, y, 0), 0)
        y = tl.where(v < 0, -y, y)
        idx = row * KP + c
        y0, y = _limb(y)
        y1, y = _limb(y)
        tl.store(y_ptr + idx, y0, mask=cm)
        tl.store(y_ptr + plane + idx, y1, mask=cm)
        if top > TWO_LIMBS:                                 # rare: the upper limbs too
            y2, y = _limb(y)
            tl.store(y_ptr + 2 * plane + idx, y2, mask=cm)
            tl.store(y_ptr + 3 * plane + idx, y.to(tl.int8), mask=cm)
        tl.store(ymax_ptr + row * NT + t, top)
    bad = (tl.max(hi, 0) > MAX_LEVEL) | (tl.min(lo, 0) < -MAX_LEVEL)
    tl.atomic_or(status_ptr + chain, bad.to(tl.int32) * BAD_LEVEL)


@triton.jit
def _store_block(blk_ptr, NBLK, b, big, ke):
    """A block's statistics, blk_ptr [3, NBLK]: its limb count (1, 2 or 4: the fewest
    balanced limbs that hold its largest abs(Y), ``big``), its limb-1 extent ``ke``
    and ``big`` itself (clamped at 2^24; the HORNER launch's bound)."""
    tl.store(blk_ptr + b, tl.where(big > TWO_LIMBS, 4, tl.where(big > ONE_LIMB, 2, 1)))
    tl.store(blk_ptr + NBLK + b, ke)
    tl.store(blk_ptr + 2 * NBLK + b, big)


@triton.jit
def _limb_counts_kernel(ymax_ptr, y_ptr, blk_ptr, status_ptr, R, K, KP, NT, NBLK,
                        LB: tl.constexpr, BC: tl.constexpr, NTP: tl.constexpr):
    """After _levels_limbs_kernel, per block of LB rows: the rows' BAD_COEFF status, the
    block's statistics (_store_block) and, where the limb count is 4, zeros in limbs 2
    and 3 of the segments that did not write them (their values are zero)."""
    rows = tl.program_id(0) * LB + tl.arange(0, LB)
    rm = rows < R
    tt = tl.arange(0, NTP)
    top = tl.load(ymax_ptr + rows[:, None].to(tl.int64) * NT + tt[None, :],
                  mask=rm[:, None] & (tt[None, :] < NT), other=0)
    row_top = tl.max(top, 1)
    tl.store(status_ptr + rows, tl.where(row_top > MAX_Y, BAD_COEFF, 0), mask=rm)
    big = tl.max(row_top, 0)
    last = tl.max(tl.max(tl.where(top > ONE_LIMB, tt[None, :] + 1, 0), 1), 0)
    _store_block(blk_ptr, NBLK, tl.program_id(0), big, tl.minimum(last * BC, K))
    if big > TWO_LIMBS:
        plane = _plane(R, KP)
        zero = tl.zeros([LB, BC], dtype=tl.int8)
        for t in range(0, NT):
            c = t * BC + tl.arange(0, BC)
            seg = tl.load(ymax_ptr + rows.to(tl.int64) * NT + t, mask=rm, other=0)
            m = (rm & (seg <= TWO_LIMBS))[:, None] & (c[None, :] < K)
            idx = rows[:, None].to(tl.int64) * KP + c[None, :]
            tl.store(y_ptr + 2 * plane + idx, zero, mask=m)
            tl.store(y_ptr + 3 * plane + idx, zero, mask=m)


@triton.jit
def _limb_gemm(y_ptr, basis_ptr, mean, rows, cols, R, KP, D, K1, NL: tl.constexpr,
               NB: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
               F64: tl.constexpr):
    """binary32(acc) [BM, BN], acc = mean + the sum over the NL Y limbs i and NB basis
    limbs j of (Y_i x B_j) 2^(8 (i + j)): int8 tensor-core products accumulated in int32
    (exact, see the docstring), summed in int64; or, with F64 and NL <= 2, in binary64
    (exact too: the limb sums' total is below 2^46 and acc below 2^53).  With NL = 2,
    Y limb 1 is taken as zero from coefficient K1 on (a multiple of BK: KEXT)."""
    plane = _plane(R, KP)
    z = tl.zeros((BM, BN), dtype=tl.int32)
    a00, a01, a02, a03 = z, z, z, z          # basis limb 0, Y limbs 0..3
    a10, a11, a12, a13 = z, z, z, z          # basis limb 1
    a20, a21, a22, a23 = z, z, z, z          # basis limb 2
    ym = rows[:, None] < R
    bm = cols[:, None] < D
    for k0 in range(0, K1 if NL == 2 else KP, BK):
        kk = k0 + tl.arange(0, BK)
        yidx = rows[:, None].to(tl.int64) * KP + kk[None, :]
        bidx = cols[:, None] * KP + kk[None, :]
        y0 = tl.load(y_ptr + yidx, mask=ym, other=0)
        b0 = tl.trans(tl.load(basis_ptr + bidx, mask=bm, other=0))
        a00 += tl.dot(y0, b0)
        if NL >= 2:
            y1 = tl.load(y_ptr + plane + yidx, mask=ym, other=0)
            a01 += tl.dot(y1, b0)
        if NL >= 4:
            y2 = tl.load(y_ptr + 2 * plane + yidx, mask=ym, other=0)
            y3 = tl.load(y_ptr + 3 * plane + yidx, mask=ym, other=0)
            a02 += tl.dot(y2, b0)
            a03 += tl.dot(y3, b0)
        if NB >= 2:
            b1 = tl.trans(tl.load(basis_ptr + D * KP + bidx, mask=bm, other=0))
            a10 += tl.dot(y0, b1)
            if NL >= 2:
                a11 += tl.dot(y1, b1)
            if NL >= 4:
                a12 += tl.dot(y2, b1)
                a13 += tl.dot(y3, b1)
        if NB >= 3:
            b2 = tl.trans(tl.load(basis_ptr + 2 * D * KP + bidx, mask=bm, other=0))
            a20 += tl.dot(y0, b2)
            if NL >= 2:
                a21 += tl.dot(y1, b2)
            if NL >= 4:
                a22 += tl.dot(y2, b2)
                a23 += tl.dot(y3, b2)
    if NL == 2:                    # coefficients K1 .. KP - 1: limb 0 alone
        for k0 in range(K1, KP, BK):
            kk = k0 + tl.arange(0, BK)
            y0 = tl.load(y_ptr + rows[:, None].to(tl.int64) * KP + kk[None, :], mask=ym,
                         other=0)
            bidx = cols[:, None] * KP + kk[None, :]
            a00 += tl.dot(y0, tl.trans(tl.load(basis_ptr + bidx, mask=bm, other=0)))
            if NB >= 2:
                a10 += tl.dot(y0, tl.trans(tl.load(basis_ptr + D * KP + bidx, mask=bm,
                                                   other=0)))
            if NB >= 3:
                a20 += tl.dot(y0, tl.trans(tl.load(basis_ptr + 2 * D * KP + bidx, mask=bm,
                                                   other=0)))
    if F64 and NL <= 2:
        acc = a00.to(tl.float64) + a01.to(tl.float64) * 256.0
        if NB >= 2:
            acc += (a10.to(tl.float64) + a11.to(tl.float64) * 256.0) * 256.0
        if NB >= 3:
            acc += (a20.to(tl.float64) + a21.to(tl.float64) * 256.0) * 65536.0
        return (acc + mean.to(tl.float64)[None, :]).to(tl.float32)   # one rounding
    acc = _combine(a00, a01, a02, a03, 0)
    if NB >= 2:
        acc += _combine(a10, a11, a12, a13, 8)
    if NB >= 3:
        acc += _combine(a20, a21, a22, a23, 16)
    return (acc + mean[None, :]).to(tl.float32)                 # one rounding


@triton.jit
def _limb_products(acc, plane_ptr, basis_ptr, rows, cols, R, KP, D, K1, BK: tl.constexpr):
    """acc plus the int8 products of one Y limb plane and basis limb 0 over coefficients
    0 .. K1 - 1 (int32 accumulation)."""
    ym = rows[:, None] < R
    bm = cols[:, None] < D
    for k0 in range(0, K1, BK):
        kk = k0 + tl.arange(0, BK)
        y = tl.load(plane_ptr + rows[:, None].to(tl.int64) * KP + kk[None, :], mask=ym, other=0)
        b = tl.load(basis_ptr + cols[:, None] * KP + kk[None, :], mask=bm, other=0)
        acc = tl.dot(y, tl.trans(b), acc, out_dtype=tl.int32)
    return acc


@triton.jit
def _horner_gemm(y_ptr, basis_ptr, mean, rows, cols, R, KP, D, K1, BM: tl.constexpr,
                 BN: tl.constexpr, BK: tl.constexpr, F64: tl.constexpr):
    """HORNER (one basis limb, at most two Y limbs): binary32(acc) [BM, BN] from one int32
    accumulator, acc = mean + 256 (Y_1 x B) + Y_0 x B: the limb-1 products over
    coefficients 0 .. K1 - 1 (the block's limb-1 extent, 0 for one limb), the
    accumulator times 256, then the limb-0 products over all KP.  Exact where every
    partial sum stays within int32: (256 y1max + 128) colsum <= 2^31 - 1, y1max the
    block's largest abs(limb 1) and colsum the largest sum of abs(basis) over a column
    (the launch's HMAX bound on the block's largest abs(Y); other blocks go to the HIGH
    launch).  Half the accumulators of _limb_gemm's two limbs: larger tiles fit.  The
    mean is added in binary64 with F64, else in int64 (both exact), then one rounding."""
    acc = tl.zeros((BM, BN), dtype=tl.int32)
    plane = _plane(R, KP)
    acc = _limb_products(acc, y_ptr + plane, basis_ptr, rows, cols, R, KP, D, K1, BK) * 256
    acc = _limb_products(acc, y_ptr, basis_ptr, rows, cols, R, KP, D, KP, BK)
    if F64:
        return (acc.to(tl.float64) + mean.to(tl.float64)[None, :]).to(tl.float32)
    return (acc.to(tl.int64) + mean[None, :]).to(tl.float32)


@triton.jit
def _combine(a0, a1, a2, a3, shift: tl.constexpr):
    """sum_i a_i 2^(8 i + shift) in int64."""
    return ((a0.to(tl.int64) + (a1.to(tl.int64) << 8) + (a2.to(tl.int64) << 16)
             + (a3.to(tl.int64) << 24)) << shift)


@triton.jit
def _inverse_kernel(y_ptr, blk_ptr, basis_ptr, mean_ptr, out_ptr, out_row_ptr, R, KP, D, NBLK,
                    HMAX, scale, NB: tl.constexpr, OUT: tl.constexpr, LB: tl.constexpr,
                    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, F64: tl.constexpr,
                    HIGH: tl.constexpr, KEXT: tl.constexpr, HORNER: tl.constexpr):
    """Channels of a tile of rows x channels (module docstring, step 2).  The grid is one
    dimension, the column tiles of a row tile consecutive (they share its Y limbs in L2).
    Two launches: HIGH False computes the tiles of blocks of one or two Y limbs, HIGH True
    those of four-limb blocks; each leaves the others' tiles alone.  Four limbs need twice
    the accumulators: compiled into one kernel with the others, they made every tile's
    kernel spill registers (255 registers and 1576 stack bytes for sm_90 at BM 64, BN
    128, 4 warps, kernels/sass_stats.py; the one- and two-limb launch at 8 warps: none).
    KEXT: a two-limb block's limb-1 products stop at its limb-1 extent (rounded up to BK):
    past it every limb 1 is zero.  HORNER (NB 1): the tiles of blocks whose largest
    abs(Y) is at most HMAX take _horner_gemm (one accumulator; limb 1 up to the extent);
    the HIGH launch takes the rest (four limbs, or two beyond HMAX)."""
    num_n = tl.cdiv(D, BN)
    pid_m = tl.program_id(0) // num_n
    pid_n = tl.program_id(0) % num_n
    blk = (pid_m * BM) // LB
    nl = tl.load(blk_ptr + blk)
    k1 = KP
    if KEXT or HORNER:
        k1 = tl.minimum(tl.cdiv(tl.load(blk_ptr + NBLK + blk), BK) * BK, KP)
    hard = nl == 4
    if HORNER:
        hard = hard | (tl.load(blk_ptr + 2 * NBLK + blk) > HMAX)
    if hard == HIGH:
        rows = pid_m * BM + tl.arange(0, BM)
        cols = pid_n * BN + tl.arange(0, BN)
        mean = tl.load(mean_ptr + cols, mask=cols < D, other=0)
        if HIGH and HORNER:
            if nl == 4:
                v = _limb_gemm(y_ptr, basis_ptr, mean, rows, cols, R, KP, D, k1, 4, NB, BM,
                               BN, BK, F64)
            else:                  # two limbs beyond HMAX
                v = _limb_gemm(y_ptr, basis_ptr, mean, rows, cols, R, KP, D, k1, 2, NB, BM,
                               BN, BK, F64)
        elif HIGH:
            v = _limb_gemm(y_ptr, basis_ptr, mean, rows, cols, R, KP, D, k1, 4, NB, BM, BN, BK,
                           F64)
        elif HORNER:
            v = _horner_gemm(y_ptr, basis_ptr, mean, rows, cols, R, KP, D, k1, BM, BN, BK,
                             F64)
        elif nl == 1:
            v = _limb_gemm(y_ptr, basis_ptr, mean, rows, cols, R, KP, D, k1, 1, NB, BM, BN, BK,
                           F64)
        else:
            v = _limb_gemm(y_ptr, basis_ptr, mean, rows, cols, R, KP, D, k1, 2, NB, BM, BN, BK,
                           F64)
        v = v * scale                                      # exact: a power of two
        orow = tl.load(out_row_ptr + rows, mask=rows < R, other=0)
        m = (rows[:, None] < R) & (cols[None, :] < D)
        _store_out(out_ptr, orow[:, None].to(tl.int64) * D + cols[None, :], v, m, OUT)


def basis_limbs(basis: np.ndarray) -> np.ndarray:
    """int8 [NB, K, D]: basis = sum_l limb_l 256^l, each limb in -128..127 (balanced base
    256); NB = 1 for entries in -128..127, 2 up to 32639, else 3 (|basis| <= 2^15 - 1)."""
    rest = basis.astype(np.int64)
    limbs = []
    while not limbs or np.any(rest):
        lo = ((rest + 128) & 255) - 128
        limbs.append(lo)
        rest = (rest - lo) >> 8
    return np.ascontiguousarray(np.stack(limbs).astype(np.int8))


class DeviceTransform:
    """A transform's device tables: basis limbs (int8 [NB, D, KP], transposed, zero past
    K), mean (int64 [D]), FACTORS (binary64 [256], the reference's table for F)."""

    def __init__(self, t: ref.Transform, device):
        limbs = basis_limbs(t.basis)
        self.nb = limbs.shape[0]
        self.kp = -(-t.num_coeffs // 64) * 64          # rows padded with zeros (aligned)
        pad = np.zeros((self.nb, t.num_channels, self.kp), dtype=np.int8)
        pad[:, :, :t.num_coeffs] = limbs.transpose(0, 2, 1)
        self.basis = torch.from_numpy(pad).to(device)
        self.mean = torch.from_numpy(t.mean.astype(np.int64)).to(device)
        self.factors = torch.from_numpy(ref.FACTORS[t.coeff_frac_bits]).to(device)
        self.k, self.d = t.num_coeffs, t.num_channels
        self.f = t.coeff_frac_bits
        self.scale = float(np.ldexp(np.float32(1.0), -t.scale_bits))
        self.hmax = horner_bound(t.basis) if self.nb == 1 else -1


def horner_bound(basis: np.ndarray) -> int:
    """HMAX of a one-limb basis [K, D]: the largest abs(Y) of a block whose HORNER
    products stay within int32, (256 y1max + 128) colsum <= 2^31 - 1 with y1max =
    (abs(Y) + 128) >> 8 (the largest limb 1 of such a Y) and colsum the largest column
    sum of abs(basis); -1 where even a block of one limb could leave int32."""
    colsum = int(np.abs(basis.astype(np.int64)).sum(axis=0).max(initial=0))
    if colsum == 0:
        return 1 << 30
    y1lim = ((2**31 - 1) // colsum - 128) // 256
    return 256 * y1lim + 127 if y1lim >= 0 else -1


def ylimbs(levels, delta, code, dt: DeviceTransform, status, variant=None):
    """Launch 1: (limb planes int8 [4, R, KP], block statistics int32 [3, blocks]: each
    LIMB_ROWS block's limb count, limb-1 extent and largest abs(Y))."""
    r = levels.shape[0]
    v = dict(YLIMBS_VARIANT, **(variant or {}))
    limbs = unset((4, r, dt.kp), torch.int8, levels.device)
    nblk = triton.cdiv(r, LIMB_ROWS)
    blocks = unset((3, nblk), torch.int32, levels.device)
    _ylimbs_kernel[(nblk,)](levels, delta, code, dt.factors, limbs, blocks, status, r, dt.k,
                            dt.kp, nblk, LB=LIMB_ROWS, **v)
    return limbs, blocks


def limb_gemm(limbs, blocks, dt: DeviceTransform, out, out_row, variant=None):
    """Launch 2: the channels of the limb planes (block statistics ``blocks``: ylimbs),
    written to ``out`` at rows ``out_row``."""
    r = limbs.shape[1]
    if r == 0:
        return
    kind = {torch.float32: 0, torch.float16: 1, torch.int16: 2, torch.bfloat16: 2}[out.dtype]
    if out.dtype == torch.bfloat16:
        out = out.view(torch.int16)
    v = dict(TRANSFORM_VARIANT, **(variant or {}))
    bm, bn, bk = v.pop("BM"), v.pop("BN"), v.pop("BK")
    v["HORNER"] = bool(v.get("HORNER")) and dt.nb == 1
    if LIMB_ROWS % bm:
        raise ValueError(f"BM {bm} does not divide LIMB_ROWS {LIMB_ROWS}")
    if dt.kp % bk:      # the K loop reads whole BK blocks of the padded rows, unmasked
        raise ValueError(f"BK {bk} does not divide the padded coefficient count {dt.kp}")
    bn = min(bn, max(16, triton.next_power_of_2(dt.d)))
    grid = (triton.cdiv(r, bm) * triton.cdiv(dt.d, bn),)
    for high in (False, True):     # the four-limb tiles (rare) in a launch of their own
        _inverse_kernel[grid](limbs, blocks, dt.basis, dt.mean, out, out_row, r, dt.kp,
                              dt.d, blocks.shape[1], dt.hmax, dt.scale, NB=dt.nb, OUT=kind,
                              LB=LIMB_ROWS, BM=bm, BN=bn, BK=bk, HIGH=high, **v)


def split_variant(variant) -> tuple:
    """(the fused path's keys (LEVELS_VARIANT), the rest: the limb GEMM's) of a launch
    variant of the transform decode (bench_gpu.LEVELS_SWEEP and GEMM_SWEEP)."""
    v = dict(variant or {})
    return {k: v.pop(k) for k in list(v) if k in LEVELS_VARIANT}, v


def fused(contiguous: bool, num_chains: int, k: int, variant=None) -> bool:
    """Whether a batch takes the fused path (levels_limbs): FUSED, chains of consecutive
    rows (left or no prediction), and enough programs (chains x coefficient segments)."""
    v = dict(LEVELS_VARIANT, **(variant or {}))
    return bool(v["FUSED"]) and contiguous and \
        num_chains * triton.cdiv(k, v["LEVELS_BC"]) >= v["LEVELS_MIN_PROGRAMS"]


def levels_limbs(sym, offs, delta, code, esc, uext, dt: DeviceTransform, predictor: int,
                 variant=None):
    """The fused path for chains of consecutive rows ``offs`` (recon.chains): the levels
    of the decoded symbols ``sym`` and their coefficient values, straight to limb
    planes.  Returns (limb planes int8 [4, R, KP], block statistics int32 [3, blocks] as
    ylimbs', status of each chain (recon.BAD_LEVEL), status of each row (BAD_COEFF))."""
    v = dict(LEVELS_VARIANT, **(variant or {}))
    if v["LEVELS_PF"] not in (1, 2, 3, 4):
        raise ValueError(f"LEVELS_PF {v['LEVELS_PF']} is not 1 to 4")
    r, dev = delta.numel(), sym.device
    n = offs.numel() - 1
    bc = min(v["LEVELS_BC"], max(16, triton.next_power_of_2(dt.k)))
    nt = triton.cdiv(dt.k, bc)
    limbs = unset((4, r, dt.kp), torch.int8, dev)
    ymax = unset((max(r, 1), nt), torch.int32, dev)
    vstatus = torch.zeros(max(n, 1), dtype=torch.int32, device=dev)
    tstatus = torch.zeros(max(r, 1), dtype=torch.int32, device=dev)
    nblk = triton.cdiv(r, LIMB_ROWS)
    blocks = unset((3, nblk), torch.int32, dev)
    if n > 0 and r > 0:
        _levels_limbs_kernel[(n, nt)](sym, offs, delta, code, dt.factors, esc, uext, limbs,
                                      ymax, vstatus, r, dt.k, dt.kp, nt, SCAN=predictor != 0,
                                      BC=bc, PF=v["LEVELS_PF"], num_warps=v["LEVELS_WARPS"])
        _limb_counts_kernel[(nblk,)](ymax, limbs, blocks, tstatus, r, dt.k, dt.kp, nt, nblk,
                                     LB=LIMB_ROWS, BC=bc, NTP=triton.next_power_of_2(nt),
                                     num_warps=4)
    return limbs, blocks, vstatus[:max(n, 0)], tstatus[:r]


def inverse(levels: torch.Tensor, delta: torch.Tensor, code: torch.Tensor,
            dt: DeviceTransform, out: torch.Tensor, out_row: torch.Tensor,
            variant=None) -> torch.Tensor:
    """Channels of coefficient levels ``levels`` (float32 [R, K], exact integers) at step
    codes code[j] + delta[r], written to ``out`` [*, D] (float32, float16 or int16 holding
    bfloat16 bits) at rows ``out_row``.  Returns each row's status (BAD_COEFF or 0).
    Two launches: the coefficient values as int8 limb planes, then the limb products."""
    r = levels.shape[0]
    status = torch.zeros(max(r, 1), dtype=torch.int32, device=levels.device)
    if r == 0:
        return status[:0]
    limbs, blocks = ylimbs(levels, delta, code, dt, status)
    limb_gemm(limbs, blocks, dt, out, out_row, variant)
    return status[:r]


# -- the forward transform of the encoder (Annex B.7) ---------------------------------

FORWARD_VARIANT = dict(BM=64, BN=64, BK=64, num_warps=4, num_stages=2)


@triton.jit
def _input_limbs(x_ptr, src, kk, R, D, mean_ptr, scale):
    """X = rint(clip((x - mean) 2^a, +-32639)) of source rows ``src``, channels ``kk``,
    in two balanced 8-bit limbs (binary64 arithmetic, as transform_fit.forward)."""
    m = (src[:, None] >= 0) & (kk[None, :] < D)
    x = tl.load(x_ptr + src[:, None] * D + kk[None, :], mask=m, other=0).to(tl.float32)
    mean = tl.load(mean_ptr + kk, mask=kk < D, other=0.0)
    v = (x.to(tl.float64) - mean[None, :]) * scale
    v = tl.minimum(tl.maximum(v, -32639.0), 32639.0)
    q = ((v + RINT64) - RINT64).to(tl.int64)
    q = tl.where(m, q, 0)
    lo, hi = _limb(q)
    return lo, hi.to(tl.int8)


@triton.jit
def _forward_kernel(x_ptr, src_ptr, mean_ptr, p_ptr, out_ptr, R, D, K, scale, out_scale,
                    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BM + tl.arange(0, BM)
    cols = pid_n * BN + tl.arange(0, BN)
    src = tl.load(src_ptr + rows, mask=rows < R, other=-1)
    z = tl.zeros((BM, BN), dtype=tl.int32)
    a00, a01, a10, a11 = z, z, z, z
    for k0 in range(0, D, BK):
        kk = k0 + tl.arange(0, BK)
        x0, x1 = _input_limbs(x_ptr, src, kk, R, D, mean_ptr, scale)
        pm = (kk[:, None] < D) & (cols[None, :] < K)
        pidx = kk[:, None] * K + cols[None, :]
        p0 = tl.load(p_ptr + pidx, mask=pm, other=0)
        p1 = tl.load(p_ptr + D * K + pidx, mask=pm, other=0)
        a00 += tl.dot(x0, p0)
        a01 += tl.dot(x0, p1)
        a10 += tl.dot(x1, p0)
        a11 += tl.dot(x1, p1)
    acc = (a00.to(tl.int64) + ((a01.to(tl.int64) + a10.to(tl.int64)) << 8)
           + (a11.to(tl.int64) << 16))
    y = (acc.to(tl.float64) * out_scale).to(tl.float32)     # exact, then one rounding
    m = (rows[:, None] < R) & (cols[None, :] < K)
    tl.store(out_ptr + rows[:, None].to(tl.int64) * K + cols[None, :], y, mask=m)


class DeviceForward:
    """A transform's forward matrix on the device: int8 limbs [2, D, K], and the mean."""

    def __init__(self, t: ref.Transform, device):
        from tokenbits import transform_fit
        fm = transform_fit.forward_matrix(t)
        self.p = fm.p
        self.limbs = torch.from_numpy(basis_limbs(fm.p_int)).to(device)
        if self.limbs.shape[0] == 1:                 # a second limb of zeros
            self.limbs = torch.cat([self.limbs, torch.zeros_like(self.limbs)])
        self.mean = torch.from_numpy(t.mean_real()).to(device)
        self.d, self.k = t.num_channels, t.num_coeffs


def forward(x: torch.Tensor, src: torch.Tensor, fw: DeviceForward, a: int,
            variant=None) -> torch.Tensor:
    """Coefficients float32 [len(src), K] of rows ``src`` of x [N, D] (float16, float32
    or bfloat16): transform_fit.forward on the device, bit for bit."""
    r = src.numel()
    out = torch.empty((max(r, 1), fw.k), dtype=torch.float32, device=x.device)
    if r:
        v = dict(FORWARD_VARIANT, **(variant or {}))
        bm, bn, bk = v.pop("BM"), v.pop("BN"), v.pop("BK")
        bn = min(bn, max(16, triton.next_power_of_2(fw.k)))
        grid = (triton.cdiv(r, bm), triton.cdiv(fw.k, bn))
        _forward_kernel[grid](x.contiguous(), src.contiguous(), fw.mean, fw.limbs, out, r,
                              fw.d, fw.k, float(2.0 ** a), float(2.0 ** -(a + fw.p)),
                              BM=bm, BN=bn, BK=bk, **v)
    return out[:r]
