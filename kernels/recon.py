"""Decoder kernels after rANS: escapes, inverse prediction, dequantization and
output conversion (clauses 7.4 - 7.6), and the lossless split path (7.4.2).

Twins: ``symbols.residuals``, ``prediction.reconstruct_levels``,
``reconstruction.dequantize`` / ``to_output`` and the split branch of
``decoder.decode_frame_values``.

Inverse prediction is a prefix sum along *chains*: lists of kept-token rows
whose levels accumulate from 0 (one chain per frame's sequence tokens for
"left"; one per run of vertically adjacent kept tokens of a grid column for
"up"; a single row for a prefix token or an unpredicted token).  Rows are
written at ``out_row`` (the kept tokens' scatter: dense output puts token k at
its position).  Where every chain is a run of consecutive rows (left or no
prediction), one program runs down a chain for a block of channels a row at a
time, carrying the levels, each row's steps read as one contiguous row of
``step_rows`` and the next row's symbols loading meanwhile (ROWS).  Other chains
go through the tile kernel: BR rows at a time with tl.cumsum, each row's step
vector read from shared memory in compiled kernels (SMEM_STEP, inline PTX).
"""
from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from .quant import column_mask, delta_row, scaled_step, step_residues, table_rows
from .rans import INTERPRET, smem_declare, smem_store, smem_sync

MAX_LEVEL = tl.constexpr((1 << 24) - 1)
# status bits (reported as TKBValueError)
BAD_LEVEL = tl.constexpr(1)       # |level| > 2^24 - 1 (clause 7.5)
BAD_VALUE = tl.constexpr(2)       # lossless value outside its dtype / id >= vocab_size (7.4.2)
# a row's step delta, frame_step_delta + token_step_delta (two int8, clause 7.6.1): the
# rows of step_rows
DELTA_MIN = tl.constexpr(-256)
DELTA_MAX = tl.constexpr(254)


@triton.jit
def _store_out(out_ptr, idx, v, m, OUT: tl.constexpr):
    """Clause 7.6.2: binary32 -> output dtype, round to nearest even."""
    if OUT == 0:
        tl.store(out_ptr + idx, v, mask=m)
    elif OUT == 1:
        tl.store(out_ptr + idx, v.to(tl.float16), mask=m)
    else:  # bfloat16 bits (levels times steps are finite: no NaN case)
        b = v.to(tl.uint32, bitcast=True)
        r = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
        tl.store(out_ptr + idx, r.to(tl.int32).to(tl.int16), mask=m)


# the static shared array of the SMEM_STEP path: six step vectors of 128 channels
_STEP_VECTORS = tl.constexpr(".shared .align 16 .b32 tkb_step_vectors[768];\n\t"
                             "mov.u32 $0, tkb_step_vectors;")


@triton.jit
def _smem_step_vectors(steps, BC: tl.constexpr):
    """Write the six float32 [1, BC] vectors step(code_c + b) to shared memory, wait,
    and return each channel's address in the first; vector b starts 4 * BC bytes
    after vector b - 1."""
    base = smem_declare(_STEP_VECTORS)
    addr = base + 4 * tl.arange(0, BC)[None, :]
    for k in tl.static_range(6):
        smem_store(addr + k * (4 * BC), steps[k].to(tl.int32, bitcast=True))
    return addr + smem_sync(base)


@triton.jit
def _smem_scaled_step(addr, delta, BC: tl.constexpr):
    """:func:`scaled_step` (step, not inverse) with the six vectors in shared memory at
    ``addr``: one read of the vector delta mod 6 selects, exact alike.  The read is
    pure, so that Triton may give it the layout of the values it multiplies; its
    address depends on the barrier's result, so it stays after it."""
    b = ((delta % 6) + 6) % 6
    a = tl.minimum(tl.maximum((delta - b) // 6, -126), 126)
    s = tl.inline_asm_elementwise("ld.shared.b32 $0, [$1];", "=r,r", [addr + b * (4 * BC)],
                                  dtype=tl.int32, is_pure=True, pack=1)
    return s.to(tl.float32, bitcast=True) * ((a + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _contig_tile(sym_ptr, delta_ptr, i, i1, c, cm, num_channels, BR: tl.constexpr):
    """Symbols [BR, BC] (int32) and step deltas [BR, 1] of rows i .. i + BR - 1 (< i1) of a
    contiguous chain (masked rows: no memory access)."""
    ri = i + tl.arange(0, BR)
    rm = ri < i1
    flat = ri.to(tl.int64)[:, None] * num_channels + c[None, :]
    s = tl.load(sym_ptr + flat, mask=rm[:, None] & cm[None, :], other=0).to(tl.int32)
    return s, tl.load(delta_ptr + ri, mask=rm, other=0)[:, None]


@triton.jit
def _dequant_kernel(sym_ptr, rows_ptr, chain_ptr, out_row_ptr, delta_ptr, code_ptr, step_ptr,
                    esc_ptr, uext_ptr, out_ptr, status_ptr, num_channels,
                    SCAN: tl.constexpr, CONTIG: tl.constexpr, DENSE: tl.constexpr,
                    OUT: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr,
                    ALU_STEP: tl.constexpr, STAGES: tl.constexpr, I32: tl.constexpr,
                    PREFETCH: tl.constexpr, SMEM_STEP: tl.constexpr):
    """SMEM_STEP (with ALU_STEP, BC = 128; compiled kernels only): the six step vectors
    wait in shared memory and a row reads the one its delta selects (inline PTX), in
    place of a five-way select per element.
    PREFETCH (CONTIG only, 0 to 2): the symbols and deltas of the next PREFETCH row
    tiles are loaded ahead, so that a program keeps several tiles' loads in flight.
    I32: levels in int32 with the carry saturated at +-2^27: exact until the first
    level beyond MAX_LEVEL, which makes the frame an error (clause 7.5) whatever the
    values after it (|r| < 2^26 and BR <= 16 keep every sum inside int32).
    ALU_STEP: step(code_c + b) for b = 0..5 is computed once per program, and a row
    scales it by 2^(delta div 6), exactly (clause 7.6.1: step(code + 6) = 2 step(code));
    else steps are read from the 256-entry table.  Levels beyond MAX_LEVEL and codes
    outside 0..255 are not clamped: they make the frame an error (the status here, the
    codes on the host), whatever its values."""
    chain = tl.program_id(0)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    cm = c < num_channels
    i0 = tl.load(chain_ptr + chain)
    i1 = tl.load(chain_ptr + chain + 1)
    esc = tl.load(esc_ptr + c, mask=cm, other=1 << 30)[None, :]    # masked: never reached
    code_c = tl.load(code_ptr + c, mask=cm, other=0)[None, :]
    carry = tl.zeros([BC], tl.int64)
    carry32 = tl.zeros([BC], tl.int32)
    hi = tl.zeros([BR, BC], tl.int32)        # extremes of the levels (masked ones are 0
    lo = tl.zeros([BR, BC], tl.int32)        # or repeat a row above): the clause 7.5 check
    if ALU_STEP:
        steps = step_residues(code_c)
        if SMEM_STEP:
            saddr = _smem_step_vectors(steps, BC)
    if PREFETCH >= 1:
        s1, d1 = _contig_tile(sym_ptr, delta_ptr, i0, i1, c, cm, num_channels, BR)
    if PREFETCH >= 2:
        s2, d2 = _contig_tile(sym_ptr, delta_ptr, i0 + BR, i1, c, cm, num_channels, BR)
    for i in tl.range(i0, i1, BR, num_stages=STAGES):     # STAGES > 1: loads run ahead
        ri = i + tl.arange(0, BR)
        rm = ri < i1
        if CONTIG:     # the chain is rows i0 .. i1 - 1 (left / none, kept order)
            row = ri.to(tl.int64)
        else:
            row = tl.load(rows_ptr + ri, mask=rm, other=0)
        m = rm[:, None] & cm[None, :]
        flat = row[:, None] * num_channels + c[None, :]
        if PREFETCH == 0:
            s = tl.load(sym_ptr + flat, mask=m, other=0).to(tl.int32)
            dl = tl.load(delta_ptr + row, mask=rm, other=0)[:, None]
        elif PREFETCH == 1:
            s, dl = s1, d1
            s1, d1 = _contig_tile(sym_ptr, delta_ptr, i + BR, i1, c, cm, num_channels, BR)
        else:
            s, dl = s1, d1
            s1, d1 = s2, d2
            s2, d2 = _contig_tile(sym_ptr, delta_ptr, i + 2 * BR, i1, c, cm, num_channels, BR)
        # a symbol is at most its channel's ESC: the largest s - ESC of the row is >= 0
        # where the row holds an escape (rare), whose u = ESC + escape value (< 2^27)
        # waits in uext at the same index
        if tl.max(tl.max(s - esc, 1), 0) >= 0:
            is_e = m & (s == esc)
            s = tl.where(is_e, tl.load(uext_ptr + flat, mask=is_e, other=0), s)
        r = (s >> 1) ^ -(s & 1)                 # |r| < 2^26: BR rows sum within int32
        if I32:
            if SCAN:
                lv = tl.cumsum(r, 0) + carry32[None, :]
                carry32 = tl.minimum(tl.maximum(carry32 + tl.sum(r, 0), -(1 << 27)), 1 << 27)
            else:
                lv = r
        elif SCAN:
            lv = tl.cumsum(r, 0).to(tl.int64) + carry[None, :]
            carry += tl.sum(r, 0).to(tl.int64)
        else:
            lv = r.to(tl.int64)
        if I32:
            lv32 = lv
        else:      # int64 levels: clamped into int32 first (a clamped level is bad anyway)
            lv32 = tl.minimum(tl.maximum(lv, -(1 << 30)), 1 << 30).to(tl.int32)
        hi = tl.maximum(hi, lv32)
        lo = tl.minimum(lo, lv32)
        if ALU_STEP and SMEM_STEP:
            v = lv.to(tl.int32).to(tl.float32) * _smem_scaled_step(saddr, dl, BC)
        elif ALU_STEP:
            v = lv.to(tl.int32).to(tl.float32) * scaled_step(steps, dl)
        else:
            code = tl.minimum(tl.maximum(code_c + dl, 0), 255)
            v = lv.to(tl.int32).to(tl.float32) * tl.load(step_ptr + code, mask=m, other=0.0)
        if DENSE:
            orow = tl.load(out_row_ptr + row, mask=rm, other=0)
        else:
            orow = row
        _store_out(out_ptr, orow[:, None] * num_channels + c[None, :], v, m, OUT)
    bad = (tl.max(tl.max(hi, 1), 0) > MAX_LEVEL) | (tl.min(tl.min(lo, 1), 0) < -MAX_LEVEL)
    tl.atomic_or(status_ptr + chain, bad.to(tl.int32) * BAD_LEVEL)


@triton.jit
def row_residuals(s, esc, cm, uext_ptr, flat):
    """Residuals (clause 7.4.1) of one row's symbols s [BC] (int32) at flat indices
    ``flat``.  A symbol is at most its channel's ESC: an escape (rare) makes
    max(s - ESC) >= 0; its u = ESC + escape value (< 2^27) waits in uext at the same
    index."""
    if tl.max(s - esc, 0) >= 0:
        is_e = cm & (s == esc)
        s = tl.where(is_e, tl.load(uext_ptr + flat, mask=is_e, other=0), s)
    return (s >> 1) ^ -(s & 1)


@triton.jit
def _dequant_rows_kernel(sym_ptr, chain_ptr, out_row_ptr, delta_ptr, step_rows_ptr, esc_ptr,
                         uext_ptr, out_ptr, status_ptr, num_channels, SCAN: tl.constexpr,
                         DENSE: tl.constexpr, OUT: tl.constexpr, BC: tl.constexpr,
                         EVEN: tl.constexpr):
    """:func:`_dequant_kernel` for chains of consecutive rows (CONTIG: left or no
    prediction), one row at a time: the levels are the column carries plus the row's
    residuals (no scan), a row's step delta is a scalar and its steps one contiguous row
    of ``step_rows`` (:func:`step_rows`), the next row's symbols load while this one is
    reconstructed.  Levels are int32: a carry can leave int32 only after passing
    MAX_LEVEL, which the running extremes catch (clause 7.5).  EVEN: BC divides
    num_channels (no column masks)."""
    chain = tl.program_id(0)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    cm = column_mask(c, num_channels, EVEN)
    i0 = tl.load(chain_ptr + chain)
    i1 = tl.load(chain_ptr + chain + 1)
    esc = tl.load(esc_ptr + c, mask=cm, other=1 << 30)       # masked: never reached
    carry = tl.zeros([BC], tl.int32)
    hi = tl.zeros([BC], tl.int32)
    lo = tl.zeros([BC], tl.int32)
    s_next = tl.load(sym_ptr + tl.maximum(tl.minimum(i0, i1 - 1), 0) * num_channels + c,
                     mask=cm, other=0)
    for r in range(i0, i1):
        s = s_next.to(tl.int32)
        # the next row's symbols (the last row's again at the chain's end)
        s_next = tl.load(sym_ptr + tl.minimum(r + 1, i1 - 1) * num_channels + c, mask=cm,
                         other=0)
        flat = (i0 + (r - i0)) * num_channels + c           # r is an int when interpreted
        lv = row_residuals(s, esc, cm, uext_ptr, flat)
        if SCAN:                                            # clause 7.5: left prediction
            lv += carry
            carry = lv
        hi = tl.maximum(hi, lv)
        lo = tl.minimum(lo, lv)
        v = lv.to(tl.float32) * delta_row(step_rows_ptr, tl.load(delta_ptr + r), c, cm,
                                          num_channels, DELTA_MIN, DELTA_MAX)
        if DENSE:
            orow = tl.load(out_row_ptr + r)
        else:
            orow = i0 + (r - i0)
        _store_out(out_ptr, orow * num_channels + c, v, cm, OUT)
    bad = (tl.max(hi, 0) > MAX_LEVEL) | (tl.min(lo, 0) < -MAX_LEVEL)
    tl.atomic_or(status_ptr + chain, bad.to(tl.int32) * BAD_LEVEL)


@triton.jit
def _split_kernel(sym_ptr, raw_ptr, rows_ptr, chain_ptr, out_row_ptr, out_ptr, status_ptr,
                  num_channels, raw_bits, limit, WIDTH: tl.constexpr, PRED: tl.constexpr,
                  IDS: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr):
    chain = tl.program_id(0)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    cm = c < num_channels
    i0 = tl.load(chain_ptr + chain)
    i1 = tl.load(chain_ptr + chain + 1)
    carry = tl.zeros([BC], tl.int64)
    bad = tl.zeros([BR, BC], tl.int32)
    half = ((tl.zeros([BC], tl.int64) + 1) << (WIDTH - 1))[None, :]   # int64: 2^31 fits
    for i in range(i0, i1, BR):
        ri = i + tl.arange(0, BR)
        rm = ri < i1
        row = tl.load(rows_ptr + ri, mask=rm, other=0)
        m = rm[:, None] & cm[None, :]
        flat = row[:, None] * num_channels + c[None, :]
        s = tl.load(sym_ptr + flat, mask=m, other=0).to(tl.int64) & 0xFFFF
        u = (s << raw_bits) | tl.load(raw_ptr + flat, mask=m, other=0)
        if PRED:
            mv = tl.cumsum((u >> 1) ^ -(u & 1), 0) + carry[None, :]
            carry += tl.sum((u >> 1) ^ -(u & 1), 0)
            bad |= (m & ((mv < -half) | (mv >= half))).to(tl.int32)
            u = tl.where(mv < 0, -(mv + 1) + half, mv)
        if IDS:
            bad |= (m & (u >= limit)).to(tl.int32)
        orow = tl.load(out_row_ptr + row, mask=rm, other=0)
        if WIDTH == 16:
            tl.store(out_ptr + orow[:, None] * num_channels + c[None, :],
                     (u & 0xFFFF).to(tl.int32).to(tl.int16), mask=m)
        else:
            tl.store(out_ptr + orow[:, None] * num_channels + c[None, :],
                     (u & 0xFFFFFFFF).to(tl.uint32).to(tl.int32, bitcast=True), mask=m)
    tl.atomic_or(status_ptr + chain, tl.max(tl.max(bad, 1), 0) * BAD_VALUE)


# -- chains (host) -------------------------------------------------------------

def predictor_rows(positions, tps) -> np.ndarray:
    """For each kept token of a frame, the kept token predicting it (clause 7.5), or -1."""
    pos = np.asarray(positions, dtype=np.int64)
    k = pos.size
    pred = np.full(k, -1, dtype=np.int64)
    p = tps.get("predictor", 0) or 0
    start = tps["num_prefix_tokens"] if tps["grid_present"] else 0
    seq = np.nonzero(pos >= start)[0]
    if p == 1 and seq.size > 1:
        pred[seq[1:]] = seq[:-1]
    elif p == 2 and seq.size:
        w = tps["grid_width"]
        g = pos[seq] - start
        where = np.full(tps["grid_height"] * w, -1, dtype=np.int64)
        where[g] = seq
        above = np.where(g >= w, where[np.maximum(g - w, 0)], -1)
        pred[seq] = above
    return pred


def chains(pred: np.ndarray, predictor: int, frame_rows=None, max_rows: int = 64):
    """(rows, offsets) of the chains of a batch from its predictor rows (global row
    numbers, -1: none).  Without prediction, blocks of up to ``max_rows`` rows that do
    not cross the frame starts ``frame_rows`` (so a chain's status is one frame's)."""
    k = pred.size
    if predictor == 0:
        starts = np.arange(0, k, max_rows)
        if frame_rows is not None:
            starts = np.union1d(starts, np.asarray(frame_rows, dtype=np.int64)[
                np.asarray(frame_rows) < k])
        return np.arange(k, dtype=np.int64), np.append(starts, k).astype(np.int64)
    # follow each row's successor (the row it predicts): one at most for left and up
    succ = np.full(k + 1, -1, dtype=np.int64)
    has = pred >= 0
    succ[pred[has]] = np.nonzero(has)[0]
    heads = np.nonzero(~has)[0]
    order = [heads]
    cur = succ[heads]
    # advance all chains together: chain j's i-th row is order[i][j]
    while True:
        live = cur >= 0
        if not live.any():
            break
        order.append(np.where(live, cur, -1))
        cur = np.where(live, succ[np.maximum(cur, 0)], -1)
    mat = np.stack(order)                    # [length, chains], -1 past a chain's end
    lens = (mat >= 0).sum(axis=0)
    rows = mat.T[mat.T >= 0]                 # chain by chain
    return rows, np.append(0, np.cumsum(lens))


def step_rows(code: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """:func:`quant.table_rows` of STEP for every delta DELTA_MIN .. DELTA_MAX (a frame
    with a code outside 0..255 is an error, clause 7.6.1, whatever its values)."""
    return table_rows(code, step, int(DELTA_MIN), int(DELTA_MAX))


def _launch(num_chains, d, bc=128):
    bc = min(bc, triton.next_power_of_2(max(d, 1)))
    return bc, (num_chains, triton.cdiv(d, bc))


def escape_values(num_symbols: int, num_channels: int, esc, keys, values, device):
    """Dense int32 [num_symbols] holding u = ESC + escape value at each escape's index
    (elsewhere uninitialised: only read where a symbol is ESC).  ``keys``: sorted
    escape keys 2 * index from kernels.rans.decode (odd keys: unfilled slots);
    ``values``: the escape values in the same order."""
    n = max(num_symbols, 1)
    uext = torch.empty(n + 1, dtype=torch.int32, device=device)   # + a slot for unfilled
    if keys.numel():         # no boolean indexing: nothing here waits for the device
        real = (keys & 1) == 0
        idx = torch.where(real, keys >> 1, n)
        uext[idx] = (esc.to(torch.int64)[idx % max(num_channels, 1)] + values).clamp(
            max=2**31 - 1).to(torch.int32)
    return uext[:n]


def is_contiguous(rows, offs) -> bool:
    """Chains that are runs of consecutive rows in order (left / none predictors)."""
    return bool(np.array_equal(rows, np.arange(rows.size)))


# launches of the reconstruction, chosen by the GPU benchmark (BENCHMARKS.md)
# ROWS: the row loop where chains are consecutive rows (ROWS_BC channels, ROWS_WARPS
# warps a program) and make at least ROWS_MIN_PROGRAMS programs; else the tile kernel
# (BR x BC tiles)
DEQUANT_VARIANT = dict(ROWS=True, ROWS_BC=512, ROWS_WARPS=2, ROWS_MIN_PROGRAMS=512, BR=4,
                       BC=128, num_warps=1, ALU_STEP=True, STAGES=1, I32=True, PREFETCH=1,
                       SMEM_STEP=True)


def dequantize(sym, rows, offs, out_row, delta, code, step, esc, uext, predictor, out,
               num_channels, contiguous: bool = False, dense: bool = False, variant=None):
    """Levels and output values of a batch (clauses 7.4.1, 7.5, 7.6) into ``out``
    (float32, float16, or int16 holding bfloat16 bits).  Returns the status of each
    chain.  ``contiguous``: every chain is a run of consecutive rows (is_contiguous);
    ``dense``: rows are written at out_row instead of in kept order."""
    dev = sym.device
    n = offs.numel() - 1
    status = torch.zeros(max(n, 1), dtype=torch.int32, device=dev)
    if n <= 0 or num_channels == 0:
        return status[:max(n, 0)]
    kind = {torch.float32: 0, torch.float16: 1, torch.int16: 2, torch.bfloat16: 2}[out.dtype]
    if out.dtype == torch.bfloat16:
        out = out.view(torch.int16)
    v = dict(DEQUANT_VARIANT, **(variant or {}))
    rows_bc, rows_warps = v.pop("ROWS_BC"), v.pop("ROWS_WARPS")
    rows_min = v.pop("ROWS_MIN_PROGRAMS")
    # consecutive rows: the row loop, where the batch gives it enough programs (each runs
    # down a whole chain: a few long chains leave the GPU idle, and the tile kernel,
    # BR rows a step and narrower blocks, is faster there)
    bc, grid = _launch(n, num_channels, rows_bc)
    if contiguous and v.pop("ROWS") and grid[0] * grid[1] >= rows_min:
        _dequant_rows_kernel[grid](sym, offs, out_row, delta, step_rows(code, step), esc, uext,
                                   out, status, num_channels, SCAN=predictor != 0,
                                   DENSE=dense, OUT=kind, BC=bc, EVEN=num_channels % bc == 0,
                                   num_warps=rows_warps)
        return status[:n]
    v.pop("ROWS", None)
    br, bc = v.pop("BR"), v.pop("BC")
    if not contiguous:     # rows through an index: short tiles down a chain
        br, bc = 16, 128
        v["PREFETCH"] = 0
    v["I32"] = v["I32"] and br <= 16
    bc, grid = _launch(n, num_channels, bc)
    # shared-memory steps: inline PTX (compiled kernels only), a 128-channel tile
    v["SMEM_STEP"] = bool(v["SMEM_STEP"]) and v["ALU_STEP"] and bc == 128 and not INTERPRET
    _dequant_kernel[grid](sym, rows, offs, out_row, delta, code, step, esc, uext, out, status,
                          num_channels, SCAN=predictor != 0, CONTIG=contiguous, DENSE=dense,
                          OUT=kind, BR=br, BC=bc, **v)
    return status[:n]


def split(sym, raw, rows, offs, out_row, out, num_channels, raw_bits, width, predictor,
          vocab=None):
    """Lossless values (clause 7.4.2) into ``out`` (int16 / int32 bit patterns).
    Returns the status of each chain."""
    n = offs.numel() - 1
    status = torch.zeros(max(n, 1), dtype=torch.int32, device=sym.device)
    if n <= 0 or num_channels == 0:
        return status[:max(n, 0)]
    bc, grid = _launch(n, num_channels)
    _split_kernel[grid](sym, raw, rows, offs, out_row, out, status, num_channels, raw_bits,
                        0 if vocab is None else vocab, WIDTH=width, PRED=predictor != 0,
                        IDS=vocab is not None, BR=16, BC=bc, num_warps=4)
    return status[:n]
