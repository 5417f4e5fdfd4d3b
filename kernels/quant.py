"""Encoder kernels: quantization, prediction residuals, symbols, token norms,
histograms (Annex B.1 and B.3; clauses 7.4.1 and 7.5 run in reverse).

Twins in the reference encoder: ``quantize_levels`` (one binary32 multiply by
INV_STEP, round half to even, clip), ``quantize_closed_loop`` (the same product, the
prediction residual quantized with a deadzone along each prediction chain),
``prediction.residuals_from_levels``,
``symbols.zigzag`` with escapes at ESC, ``token_norms`` (a float64 sum in
channel order) and ``_histograms``.

Kept tokens are read through a row index (the presence-map gather), so pruned
frames are quantized straight from the full input.  Every float operation is a
single IEEE operation with fusion into FMA turned off at launch: the GPU
finds the reference's levels exactly.
"""
from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from tokenbits.quantization import step_deltas_of_norms

from .rans import INTERPRET

MAX_LEVEL = tl.constexpr((1 << 24) - 1)
# token_step_delta is an int8 (clause 6.4): the rows of inv_rows
DELTA_MIN = tl.constexpr(-128)
DELTA_MAX = tl.constexpr(127)
# a step delta whose 6 log2(...) lies this close to a rounding tie is taken from the host
NEAR_TIE = tl.constexpr(1e-6)
NO_FMA = {"enable_fp_fusion": False}


@triton.jit
def step_value(code, INVERSE: tl.constexpr):
    """step(code) (clause 7.6.1) or the encoder's inv_step (Annex B.1) of codes 0..255
    without a table: the binary32 mantissa of code mod 6 times 2^(code div 6 - 24)
    (or its inverse times 2^(24 - code div 6)); both products are exact, so the
    values equal reconstruction.STEP and quantization.INV_STEP bit for bit."""
    q = code // 6
    m = code - 6 * q
    if INVERSE:
        mant = tl.where(m == 0, 1.0, tl.where(m == 1, 0.8908987045288086, tl.where(m == 2, 0.7937005162239075, tl.where(
            m == 3, 0.7071067690849304, tl.where(m == 4, 0.6299605369567871, 0.5612310171127319)))))
        e = 151 - q
    else:
        mant = tl.where(m == 0, 1.0, tl.where(m == 1, 1.1224620342254639, tl.where(m == 2, 1.2599210739135742, tl.where(
            m == 3, 1.4142135381698608, tl.where(m == 4, 1.587401032447815, 1.7817974090576172)))))
        e = 103 + q
    return mant * (e << 23).to(tl.float32, bitcast=True)


@triton.jit
def step_residues(code):
    """step_value(code + b) for b = 0..5 (the six residues of a row's code delta)."""
    return (step_value(code, False), step_value(code + 1, False), step_value(code + 2, False),
            step_value(code + 3, False), step_value(code + 4, False), step_value(code + 5, False))


@triton.jit
def scaled_step(res, delta):
    """step_value(code + delta) from ``res`` = step_residues(code), exactly: with
    delta = 6 a + b (0 <= b < 6), step(code + delta) = step(code + b) * 2^a (clause
    7.6.1), the product exact for codes 0..255.  Other codes give some value (their
    frames are errors)."""
    b = ((delta % 6) + 6) % 6
    a = tl.minimum(tl.maximum((delta - b) // 6, -126), 126)
    s = tl.where(b == 0, res[0], tl.where(b == 1, res[1], tl.where(b == 2, res[2], tl.where(
        b == 3, res[3], tl.where(b == 4, res[4], res[5])))))
    return s * ((a + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _levels(x_ptr, src, delta, c, m, code_ptr, inv_ptr, num_channels, ALU_STEP: tl.constexpr,
            RNI: tl.constexpr):
    """Levels [R, C] of input rows ``src`` [R] at step codes code[c] + delta[r]."""
    x = tl.load(x_ptr + src[:, None] * num_channels + c[None, :], mask=m, other=0).to(tl.float32)
    code = tl.load(code_ptr + c, mask=c < num_channels, other=0)[None, :] + delta[:, None]
    if ALU_STEP:
        y = x * step_value(code, True)
    else:
        y = x * tl.load(inv_ptr + code, mask=m, other=0.0)
    return _round_level(y, RNI)


@triton.jit
def _round_level(y, RNI: tl.constexpr):
    """Annex B.1: round half to even, clip to MAX_LEVEL, as int32.  RNI: one
    cvt.rni.s32.f32 (saturating) and the clip, where inline assembly runs (a GPU; the
    encoder rejects non-finite input, so NaN never reaches it); else in float32."""
    if RNI:
        li = tl.inline_asm_elementwise("cvt.rni.s32.f32 $0, $1;", "=r,r", [y], dtype=tl.int32,
                                       is_pure=True, pack=1)
        return tl.minimum(tl.maximum(li, -MAX_LEVEL), MAX_LEVEL)
    a = tl.abs(y)
    # round half to even: exact for |y| < 2^23; larger binary32 values are integers
    r = tl.minimum(tl.where(a < 8388608.0, (a + 8388608.0) - 8388608.0, a), 16777215.0)
    li = r.to(tl.int32)
    return tl.where(y < 0, -li, li)


@triton.jit
def _symbols_kernel(x_ptr, src_ptr, delta_ptr, pred_ptr, code_ptr, inv_ptr, esc_ptr,
                    sym_ptr, u_ptr, num_rows, num_channels,
                    BR: tl.constexpr, BC: tl.constexpr, ALU_STEP: tl.constexpr,
                    RNI: tl.constexpr,
                    PREV_ROW: tl.constexpr):
    r = tl.program_id(0) * BR + tl.arange(0, BR)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    rm = r < num_rows
    m = rm[:, None] & (c < num_channels)[None, :]
    src = tl.load(src_ptr + r, mask=rm, other=0)
    delta = tl.load(delta_ptr + r, mask=rm, other=0)
    lv = _levels(x_ptr, src, delta, c, m, code_ptr, inv_ptr, num_channels, ALU_STEP, RNI)
    p = tl.load(pred_ptr + r, mask=rm, other=-1)            # predicting row, -1: none
    has = p >= 0
    if PREV_ROW:
        # every predicting row is the row before (left prediction): shift the tile's
        # levels down one row, and quantize only the row above the tile again
        above = tl.program_id(0) * BR - 1 + tl.zeros([1], tl.int32)
        am = above >= 0
        asrc = tl.load(src_ptr + above, mask=am, other=0)
        adelta = tl.load(delta_ptr + above, mask=am, other=0)
        alv = _levels(x_ptr, asrc, adelta, c, am[:, None] & (c < num_channels)[None, :],
                      code_ptr, inv_ptr, num_channels, ALU_STEP, RNI)
        i = tl.arange(0, BR)[:, None] + 0 * c[None, :]
        plv = tl.where(i == 0, alv, tl.gather(lv, tl.maximum(i - 1, 0), 0))
    else:
        pp = tl.where(has, p, 0)
        psrc = tl.load(src_ptr + pp, mask=rm & has, other=0)
        pdelta = tl.load(delta_ptr + pp, mask=rm & has, other=0)
        plv = _levels(x_ptr, psrc, pdelta, c, m & has[:, None], code_ptr, inv_ptr,
                      num_channels, ALU_STEP, RNI)
    res = lv - tl.where(has[:, None], plv, 0)
    u = (res << 1) ^ (res >> 31)                            # zigzag (clause 7.4.1)
    esc = tl.load(esc_ptr + c, mask=c < num_channels, other=0)[None, :]
    flat = r[:, None].to(tl.int64) * num_channels + c[None, :]
    tl.store(sym_ptr + flat, tl.minimum(u, esc).to(tl.int16), mask=m)
    tl.store(u_ptr + flat, u, mask=m & (u >= esc))


@triton.jit
def _closed_loop_kernel(x_ptr, src_ptr, delta_ptr, pred_ptr, rows_ptr, offs_ptr, code_ptr,
                        inv_ptr, lim_ptr, esc_ptr, sym_ptr, u_ptr, num_channels, dz,
                        BC: tl.constexpr):
    """The closed-loop quantizer (Annex B.1, ``quantization.quantize_closed_loop``): one
    program runs down a chain (``recon.chains``: rows rows[offs[j]:offs[j+1]], each one
    predicted by the row before it in the chain or not at all) for a block of channels,
    carrying the levels; every operation is the reference's binary32 operation."""
    j = tl.program_id(0)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    cm = c < num_channels
    r0 = tl.load(offs_ptr + j)
    r1 = tl.load(offs_ptr + j + 1)
    base = tl.load(code_ptr + c, mask=cm, other=0)
    esc = tl.load(esc_ptr + c, mask=cm, other=1 << 30)      # masked lanes never escape
    prev = tl.zeros([BC], tl.int32)
    for i in tl.range(r0, r1):
        r = tl.load(rows_ptr + i)
        code = base + tl.load(delta_ptr + r)
        x = tl.load(x_ptr + tl.load(src_ptr + r) * num_channels + c, mask=cm, other=0)
        y = x.to(tl.float32) * tl.load(inv_ptr + code, mask=cm, other=0.0)
        lim = tl.load(lim_ptr + code, mask=cm, other=0)
        p = tl.where(tl.load(pred_ptr + r) >= 0, prev, 0)
        rr = y - p.to(tl.float32)
        a = tl.maximum(tl.abs(rr) - dz, 0.0)
        # round half to even (exact below 2^23; larger binary32 values are integers),
        # capped at 2^25 (any level then clips to lim)
        q = tl.minimum(tl.where(a < 8388608.0, (a + 8388608.0) - 8388608.0, a),
                       33554432.0).to(tl.int32)
        lev = tl.minimum(tl.maximum(p + tl.where(rr < 0, -q, q), -lim), lim)
        res = lev - p
        prev = lev
        u = (res << 1) ^ (res >> 31)                        # zigzag (clause 7.4.1)
        flat = r.to(tl.int64) * num_channels + c
        tl.store(sym_ptr + flat, tl.minimum(u, esc).to(tl.int16), mask=cm)
        tl.store(u_ptr + flat, u, mask=cm & (u >= esc))


@triton.jit
def column_mask(c, num_channels, EVEN: tl.constexpr):
    """The channels c < num_channels of a block; all of them where EVEN (the block width
    divides num_channels), so that loads and stores go unmasked."""
    if EVEN:
        return tl.full(c.shape, 1, tl.int1)
    return c < num_channels


@triton.jit
def delta_row(rows_ptr, dl, c, m, num_channels, LO: tl.constexpr, HI: tl.constexpr):
    """Channels c of the :func:`table_rows` row of step delta ``dl`` (clamped to
    LO .. HI, the table's deltas)."""
    q = tl.minimum(tl.maximum(dl, LO), HI) - LO
    return tl.load(rows_ptr + q * num_channels + c, mask=m, other=0.0)


@triton.jit
def _row_levels(x, inv_rows_ptr, dl, c, m, num_channels, RNI: tl.constexpr):
    """Levels [BC] of the input row ``x`` at step codes code[c] + dl: one binary32 multiply
    by inv_rows[dl - DELTA_MIN, c] = INV_STEP[code[c] + dl] (Annex B.1)."""
    inv = delta_row(inv_rows_ptr, dl, c, m, num_channels, DELTA_MIN, DELTA_MAX)
    return _round_level(x.to(tl.float32) * inv, RNI)


@triton.jit
def _symbols_rows_kernel(x_ptr, src_ptr, delta_ptr, pred_ptr, inv_rows_ptr, esc_ptr,
                         sym_ptr, u_ptr, num_rows, num_channels, RB: tl.constexpr,
                         BC: tl.constexpr, RNI: tl.constexpr, UNROLL: tl.constexpr,
                         EVEN: tl.constexpr):
    """The symbols of :func:`_symbols_kernel` when every predicting row is the row
    before (left prediction, or none): one program runs down RB rows of a column block
    carrying the row above's levels, the next row's input loading while this one is
    quantized (the block's first row quantizes the row above it again).  A row's source,
    step delta and predictor are scalars and its inverse steps one contiguous row of
    ``inv_rows`` (no per-element gather), so every vector keeps the input's layout.
    EVEN: BC divides num_channels (no column masks)."""
    r0 = tl.program_id(0) * RB
    r1 = tl.minimum(r0 + RB, num_rows)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    cm = column_mask(c, num_channels, EVEN)
    esc = tl.load(esc_ptr + c, mask=cm, other=1 << 30)      # masked lanes never escape
    prev = tl.zeros([BC], tl.int32)
    if r0 > 0:   # the row above the block, quantized again
        x = tl.load(x_ptr + tl.load(src_ptr + r0 - 1) * num_channels + c, mask=cm, other=0)
        prev = _row_levels(x, inv_rows_ptr, tl.load(delta_ptr + r0 - 1), c, cm, num_channels,
                           RNI)
    x_next = tl.load(x_ptr + tl.load(src_ptr + r0) * num_channels + c, mask=cm, other=0)
    for r in tl.range(r0, r1, loop_unroll_factor=UNROLL):
        x = x_next
        # the next row's input (the last row's again at the block's end)
        x_next = tl.load(x_ptr + tl.load(src_ptr + tl.minimum(r + 1, r1 - 1)) * num_channels + c,
                         mask=cm, other=0)
        lv = _row_levels(x, inv_rows_ptr, tl.load(delta_ptr + r), c, cm, num_channels, RNI)
        res = lv - tl.where(tl.load(pred_ptr + r) >= 0, prev, 0)
        prev = lv
        u = (res << 1) ^ (res >> 31)                        # zigzag (clause 7.4.1)
        flat = (r0.to(tl.int64) + (r - r0)) * num_channels + c   # r is an int when interpreted
        tl.store(sym_ptr + flat, tl.minimum(u, esc).to(tl.int16), mask=cm)
        if tl.max(u - esc, 0) >= 0:                         # escapes are rare
            tl.store(u_ptr + flat, u, mask=u >= esc)


@triton.jit
def _table_rows_kernel(code_ptr, table_ptr, out_ptr, num_channels, delta_min,
                       BC: tl.constexpr):
    q = tl.program_id(0)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    m = c < num_channels
    code = tl.load(code_ptr + c, mask=m, other=0) + q + delta_min
    v = tl.load(table_ptr + tl.minimum(tl.maximum(code, 0), 255), mask=m, other=0.0)
    tl.store(out_ptr + q * num_channels + c, v, mask=m)


@triton.jit
def _columns8(t, BR: tl.constexpr):
    """The 8 columns of t [BR, 8], in order, by splits (no arithmetic)."""
    a, b = tl.split(tl.reshape(t, [BR, 4, 2]))      # columns 0 2 4 6 | 1 3 5 7
    a0, a1 = tl.split(tl.reshape(a, [BR, 2, 2]))    # 0 4 | 2 6
    b0, b1 = tl.split(tl.reshape(b, [BR, 2, 2]))    # 1 5 | 3 7
    c0, c4 = tl.split(a0)
    c2, c6 = tl.split(a1)
    c1, c5 = tl.split(b0)
    c3, c7 = tl.split(b1)
    return c0, c1, c2, c3, c4, c5, c6, c7


@triton.jit
def _norms_kernel(x_ptr, src_ptr, mean_ptr, frame_ptr, norm_ptr, dot_ptr, num_rows,
                  num_channels, WITH_DOT: tl.constexpr, BR: tl.constexpr,
                  ALIGN8: tl.constexpr):
    """Per row: sum of x^2 (and of x * mean[frame]) in float64, in channel order.  A
    thread sums its row; it loads 8 channels at a time and adds them one by one.
    ALIGN8: num_channels is a multiple of 8 (rows start 16-byte aligned)."""
    r = tl.program_id(0) * BR + tl.arange(0, BR)
    rm = r < num_rows
    src = tl.load(src_ptr + r, mask=rm, other=0)
    base = (src * num_channels)[:, None]
    if ALIGN8:
        base = tl.multiple_of(base, [8, 8])
    acc = tl.zeros([BR], tl.float64)
    dot = tl.zeros([BR], tl.float64)
    if WITH_DOT:
        mbase = (tl.load(frame_ptr + r, mask=rm, other=0).to(tl.int64) * num_channels)[:, None]
    for c in range(0, num_channels, 8):
        # channels past the end read as 0: adding +0 leaves the sums unchanged
        cc = tl.multiple_of(c, 8) + tl.arange(0, 8)[None, :]
        if ALIGN8:   # whole groups of 8 channels: the mask is the row's
            m = rm[:, None] & (cc >= 0)
        else:
            m = rm[:, None] & (cc < num_channels)
        v = _columns8(tl.load(x_ptr + base + cc, mask=m, other=0).to(tl.float32)
                      .to(tl.float64), BR)
        if WITH_DOT:
            mv = _columns8(tl.load(mean_ptr + mbase + cc, mask=m, other=0.0), BR)
        for j in tl.static_range(8):
            acc += v[j] * v[j]
            if WITH_DOT:
                dot += v[j] * mv[j]
    tl.store(norm_ptr + r, acc, mask=rm)
    if WITH_DOT:
        tl.store(dot_ptr + r, dot, mask=rm)


@triton.jit
def _deltas_kernel(sq_ptr, out_ptr, near_ptr, n, ref, floor, lo, hi, BLOCK: tl.constexpr):
    """token_step_delta from squared norms (Annex B.1), in binary64.  log2 (and any
    operation not rounded as numpy rounds it) may differ from the host's in the last
    places, which moves the result only next to a rounding tie: a value within NEAR_TIE
    of one is flagged, and the host computes it."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    norm = tl.sqrt(tl.load(sq_ptr + i, mask=m, other=1.0))
    v = 6.0 * tl.log2(tl.maximum(norm, floor) / ref)
    r = tl.floor(v + 0.5)                       # any rule: ties are flagged
    near = tl.abs(v - tl.floor(v) - 0.5) < NEAR_TIE
    dl = tl.minimum(tl.maximum(tl.minimum(tl.maximum(r, -60.0), 60.0), lo), hi)
    tl.store(out_ptr + i, dl.to(tl.int32), mask=m)
    tl.store(near_ptr + i, near.to(tl.int8), mask=m)


@triton.jit
def _mean_kernel(x_ptr, row0_ptr, nrows_ptr, mean_ptr, num_channels, BC: tl.constexpr):
    """Per frame: the mean of its rows, a float64 sum in row order over the count."""
    f = tl.program_id(0)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    cm = c < num_channels
    row0 = tl.load(row0_ptr + f)
    n = tl.load(nrows_ptr + f)
    acc = tl.zeros([BC], tl.float64)
    for i in range(0, n):
        acc += tl.load(x_ptr + (row0 + i) * num_channels + c, mask=cm, other=0
                       ).to(tl.float32).to(tl.float64)
    tl.store(mean_ptr + f.to(tl.int64) * num_channels + c, acc / tl.maximum(n, 1).to(tl.float64),
             mask=cm)


@triton.jit
def _hist_kernel(sym_ptr, hist_ptr, num_symbols, num_channels, alphabet, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < num_symbols
    s = tl.load(sym_ptr + i, mask=m, other=0).to(tl.int32)
    s = tl.minimum(tl.maximum(s, 0), alphabet - 1)
    ch = (i % num_channels).to(tl.int32)
    tl.atomic_add(hist_ptr + ch * alphabet + s, 1 + 0 * s, mask=m)


# -- host side -----------------------------------------------------------------

def _c(t, dtype):
    return t.to(dtype).contiguous()


# launches chosen by the GPU benchmark (BENCHMARKS.md): the row loop where every
# predicting row is the row before (left / none), else the tile kernel
RNI = not INTERPRET   # inline assembly: compiled kernels only
ROWS_VARIANT = dict(ROWS=64, BC=512, num_warps=1, UNROLL=1)
SYMBOLS_VARIANT = dict(BR=16, BC=128, num_warps=2, ALU_STEP=False)


def table_rows(code: torch.Tensor, table: torch.Tensor, delta_min: int,
               delta_max: int) -> torch.Tensor:
    """[delta_max - delta_min + 1, D] float32: row q holds table[code[c] + q + delta_min]
    of a 256-entry table (codes clipped to 0..255), so that a row of step delta dl reads
    its values as one contiguous row (q = dl - delta_min)."""
    d = code.numel()
    out = torch.empty((delta_max - delta_min + 1, max(d, 1)), dtype=torch.float32,
                      device=code.device)
    if d:
        bc = min(1024, triton.next_power_of_2(d))
        _table_rows_kernel[(out.shape[0], triton.cdiv(d, bc))](code, table, out, d, delta_min,
                                                               BC=bc)
    return out


def inv_rows(code: torch.Tensor, inv_step: torch.Tensor) -> torch.Tensor:
    """:func:`table_rows` of INV_STEP for every int8 token_step_delta (the encoder's deltas
    keep the codes in 0..255, Annex B.1)."""
    return table_rows(code, inv_step, int(DELTA_MIN), int(DELTA_MAX))


def launch_symbols(x, src, delta, pred, code, inv_step, esc, sym, u, variant=None,
                   prev_row: bool = False):
    """The quantization kernel alone: symbols into ``sym``, u at escapes into ``u``.
    ``prev_row``: every row's predicting row is -1 or the row before (prev_rows_only)."""
    k, d = src.numel(), x.shape[1]
    if not (k and d):
        return
    variant = dict(variant or {})
    variant.setdefault("RNI", RNI)
    if prev_row and variant.get("ROWS", ROWS_VARIANT["ROWS"]):
        # run down ROWS rows, the row above's levels carried
        v = dict(ROWS_VARIANT, **variant)
        rows, bc = v.pop("ROWS"), min(v.pop("BC"), triton.next_power_of_2(d))
        grid = (triton.cdiv(k, rows), triton.cdiv(d, bc))
        _symbols_rows_kernel[grid](x, src, delta, pred, inv_rows(code, inv_step), esc, sym, u,
                                   k, d, RB=rows, BC=bc, EVEN=d % bc == 0, **v, **NO_FMA)
        return
    variant.pop("ROWS", None)
    v = dict(SYMBOLS_VARIANT, **variant)
    br, bc = v.pop("BR"), min(v.pop("BC"), triton.next_power_of_2(d))
    grid = (triton.cdiv(k, br), triton.cdiv(d, bc))
    _symbols_kernel[grid](x, src, delta, pred, code, inv_step, esc, sym, u, k, d, BR=br, BC=bc,
                          PREV_ROW=prev_row and br > 1, **v, **NO_FMA)


def prev_rows_only(pred) -> bool:
    """True when each row is predicted by the row before it or not at all (host array)."""
    pred = np.asarray(pred)
    return bool(np.all((pred < 0) | (pred == np.arange(pred.size) - 1)))


def symbols(x: torch.Tensor, src: torch.Tensor, delta: torch.Tensor, pred: torch.Tensor,
            code: torch.Tensor, inv_step: torch.Tensor, esc: torch.Tensor,
            prev_row: bool = False, variant=None):
    """Symbols of kept tokens: x [N, D] input rows, src [K] the row of each kept token,
    delta [K] token step deltas, pred [K] the predicting kept token (-1: none),
    code [D] channel step codes, inv_step [256] float32, esc [D] ESC per channel.
    Returns (symbols int16 [K*D], escapes: positions int64 and values u - ESC int64)."""
    k, d = src.numel(), x.shape[1]
    dev = x.device
    sym = torch.empty(max(k * d, 1), dtype=torch.int16, device=dev)
    u = torch.empty(max(k * d, 1), dtype=torch.int32, device=dev)
    launch_symbols(x.contiguous(), _c(src, torch.int64), _c(delta, torch.int32),
                   _c(pred, torch.int64), _c(code, torch.int32), inv_step, _c(esc, torch.int32),
                   sym, u, variant, prev_row=prev_row)
    sym = sym[:k * d]
    # escapes: symbols equal to their channel's ESC (compared by broadcasting, rows x D)
    pos = torch.nonzero((sym.view(k, d) == esc.to(dev, torch.int16)[None, :]).view(-1)).flatten() \
        if k and d else torch.zeros(0, dtype=torch.int64, device=dev)
    vals = u[pos].to(torch.int64) - esc.to(dev, torch.int64)[pos % max(d, 1)]
    return sym, pos, vals


def symbols_closed_loop(x: torch.Tensor, src: torch.Tensor, delta: torch.Tensor,
                        pred_h: np.ndarray, predictor: int, code: torch.Tensor,
                        inv_step: torch.Tensor, lim: torch.Tensor, esc: torch.Tensor,
                        deadzone: float, frame_rows=None, bc: int = 128):
    """:func:`symbols` with the closed-loop quantizer of deadzone ``deadzone`` (Annex
    B.1): ``pred_h`` [K] the predicting row of each kept token (host array, -1: none),
    ``predictor`` the track's, ``lim`` [256] the largest level of each step code,
    ``frame_rows`` the first row of each frame.  Same return values."""
    from .recon import chains
    k, d = src.numel(), x.shape[1]
    dev = x.device
    sym = torch.empty(max(k * d, 1), dtype=torch.int16, device=dev)
    u = torch.empty(max(k * d, 1), dtype=torch.int32, device=dev)
    if k and d:
        rows, offs = chains(np.asarray(pred_h, dtype=np.int64), predictor, frame_rows)
        bc = min(bc, triton.next_power_of_2(d))
        grid = (offs.size - 1, triton.cdiv(d, bc))
        _closed_loop_kernel[grid](
            x.contiguous(), _c(src, torch.int64), _c(delta, torch.int32),
            torch.from_numpy(np.asarray(pred_h, dtype=np.int64)).to(dev),
            torch.from_numpy(rows.astype(np.int64)).to(dev),
            torch.from_numpy(offs.astype(np.int64)).to(dev), _c(code, torch.int32),
            inv_step, _c(lim, torch.int32), _c(esc, torch.int32), sym, u, d, float(deadzone),
            BC=bc, **NO_FMA)
    sym = sym[:k * d]
    pos = torch.nonzero((sym.view(k, d) == esc.to(dev, torch.int16)[None, :]).view(-1)).flatten() \
        if k and d else torch.zeros(0, dtype=torch.int64, device=dev)
    vals = u[pos].to(torch.int64) - esc.to(dev, torch.int64)[pos % max(d, 1)]
    return sym, pos, vals


def squared_norms(x: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Sum of squares (float64, channel order) of rows src of x [N, D]."""
    k = src.numel()
    out = torch.empty(max(k, 1), dtype=torch.float64, device=x.device)
    if k:
        br = 64
        _norms_kernel[(triton.cdiv(k, br),)](x.contiguous(), _c(src, torch.int64), out, src, out,
                                             out, k, x.shape[1], WITH_DOT=False, BR=br,
                                             ALIGN8=x.shape[1] % 8 == 0, num_warps=2, **NO_FMA)
    return out[:k]


def step_deltas(sq: torch.Tensor, ref: float, lo: int, hi: int) -> torch.Tensor:
    """token_step_delta (int32, on the device) of tokens of squared norms ``sq``
    (:func:`squared_norms`): equal to the reference's ``step_deltas_of_norms(sqrt(sq),
    ref, lo, hi)``, with the few tokens near a rounding tie computed by it on the host."""
    k = sq.numel()
    out = torch.empty(max(k, 1), dtype=torch.int32, device=sq.device)
    near = torch.empty(max(k, 1), dtype=torch.int8, device=sq.device)
    if k:
        block = 1024
        _deltas_kernel[(triton.cdiv(k, block),)](sq, out, near, k, float(ref),
                                                 float(ref) * 2.0 ** -10, float(lo), float(hi),
                                                 BLOCK=block)
        idx = torch.nonzero(near[:k]).flatten()
        if idx.numel():
            fix = step_deltas_of_norms(np.sqrt(sq[idx].cpu().numpy()), ref, lo, hi)
            out[idx] = torch.from_numpy(fix.astype(np.int32)).to(sq.device)
    return out[:k]


def scores_parts(x: torch.Tensor, row0: torch.Tensor, nrows: torch.Tensor):
    """Pruning sums of frames whose sequence tokens are rows row0[f] .. row0[f]+nrows[f]
    of x [N, D]: the mean token of each frame [F, D] and, per sequence row, the sum of
    squares and the dot product with its frame's mean (float64, Annex B.2 order)."""
    f, d = row0.numel(), x.shape[1]
    dev = x.device
    x = x.contiguous()
    mean = torch.zeros(max(f, 1), d, dtype=torch.float64, device=dev)
    if f and d:
        bc = min(256, triton.next_power_of_2(d))
        _mean_kernel[(f, triton.cdiv(d, bc))](x, _c(row0, torch.int64), _c(nrows, torch.int32),
                                              mean, d, BC=bc, num_warps=2, **NO_FMA)
    nr = nrows.to(torch.int64)
    src = torch.repeat_interleave(row0.to(torch.int64), nr) + (
        torch.arange(int(nr.sum()), device=dev) - torch.repeat_interleave(torch.cumsum(nr, 0) - nr, nr))
    frame = torch.repeat_interleave(torch.arange(f, device=dev, dtype=torch.int32), nr)
    k = src.numel()
    sq = torch.empty(max(k, 1), dtype=torch.float64, device=dev)
    dot = torch.empty_like(sq)
    if k:
        br = 64
        _norms_kernel[(triton.cdiv(k, br),)](x, src, mean, frame, sq, dot, k, d, WITH_DOT=True,
                                             BR=br, ALIGN8=d % 8 == 0, num_warps=2, **NO_FMA)
    return mean[:f], sq[:k], dot[:k]


def histograms(sym: torch.Tensor, num_channels: int, alphabet: int) -> torch.Tensor:
    """[D, alphabet] counts of symbols (symbol i of channel i mod D), clipped to alphabet."""
    hist = torch.zeros(num_channels * alphabet, dtype=torch.int32, device=sym.device)
    n = sym.numel()
    if n:
        block = 4096
        _hist_kernel[(triton.cdiv(n, block),)](sym.contiguous(), hist, n, num_channels, alphabet,
                                               BLOCK=block, num_warps=4)
    return hist.view(num_channels, alphabet)
