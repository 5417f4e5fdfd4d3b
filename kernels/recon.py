"""Decoder kernels after rANS: escapes, inverse prediction, dequantization and
output conversion (clauses 7.4 - 7.6), and the lossless split path (7.4.2).

Twins: ``symbols.residuals``, ``prediction.reconstruct_levels``,
``reconstruction.dequantize`` / ``to_output`` and the split branch of
``decoder.decode_frame_values``.

Inverse prediction is a prefix sum along *chains*: lists of kept-token rows
whose levels accumulate from 0 (one chain per frame's sequence tokens for
"left"; one per run of vertically adjacent kept tokens of a grid column for
"up"; a single row for a prefix token or an unpredicted token).  One program
scans one chain for a block of channels, BR rows at a time with tl.cumsum.
Rows are written at ``out_row`` (the kept tokens' scatter: dense output puts
token k at its position).
"""
from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

MAX_LEVEL = tl.constexpr((1 << 24) - 1)
# status bits (reported as TKBValueError)
BAD_LEVEL = tl.constexpr(1)       # |level| > 2^24 - 1 (clause 7.5)
BAD_VALUE = tl.constexpr(2)       # lossless value outside its dtype / id >= vocab_size (7.4.2)


@triton.jit
def _escape_values(s, is_e, flat, esc_pos_ptr, esc_val_ptr, n_esc, search_steps):
    """u of escape symbols: ESC + the escape value of rank k, found by binary search
    of the symbol's key 2 * index among the sorted escape keys (kernels.rans)."""
    key = 2 * flat
    lo = tl.zeros(s.shape, tl.int64)
    hi = tl.zeros(s.shape, tl.int64) + n_esc
    for _ in range(0, search_steps):
        go = is_e & (lo < hi)
        mid = (lo + hi) // 2
        v = tl.load(esc_pos_ptr + mid, mask=go, other=0)
        lo = tl.where(go & (v < key), mid + 1, lo)
        hi = tl.where(go & (v >= key), mid, hi)
    ev = tl.load(esc_val_ptr + lo, mask=is_e & (lo < n_esc), other=0)
    return tl.where(is_e, s + ev, s)


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


@triton.jit
def _dequant_kernel(sym_ptr, rows_ptr, chain_ptr, out_row_ptr, delta_ptr, code_ptr, step_ptr,
                    esc_ptr, esc_pos_ptr, esc_val_ptr, n_esc, search_steps, out_ptr,
                    status_ptr, num_channels, SCAN: tl.constexpr, OUT: tl.constexpr,
                    BR: tl.constexpr, BC: tl.constexpr):
    chain = tl.program_id(0)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    cm = c < num_channels
    i0 = tl.load(chain_ptr + chain)
    i1 = tl.load(chain_ptr + chain + 1)
    esc = tl.load(esc_ptr + c, mask=cm, other=-1)[None, :]
    code_c = tl.load(code_ptr + c, mask=cm, other=0)[None, :]
    carry = tl.zeros([BC], tl.int64)
    bad = tl.zeros([BR, BC], tl.int32)
    for i in range(i0, i1, BR):
        ri = i + tl.arange(0, BR)
        rm = ri < i1
        row = tl.load(rows_ptr + ri, mask=rm, other=0)
        m = rm[:, None] & cm[None, :]
        flat = row[:, None] * num_channels + c[None, :]
        s = tl.load(sym_ptr + flat, mask=m, other=0).to(tl.int64)
        is_e = m & (s == esc)
        if tl.sum(tl.sum(is_e.to(tl.int32), 1), 0) > 0:
            s = _escape_values(s, is_e, flat, esc_pos_ptr, esc_val_ptr, n_esc, search_steps)
        r = (s >> 1) ^ -(s & 1)
        if SCAN:
            lv = tl.cumsum(r, 0) + carry[None, :]
            carry += tl.sum(r, 0)
        else:
            lv = r
        bad |= (m & ((lv > MAX_LEVEL) | (lv < -MAX_LEVEL))).to(tl.int32)
        lv = tl.minimum(tl.maximum(lv, -MAX_LEVEL), MAX_LEVEL)
        code = code_c + tl.load(delta_ptr + row, mask=rm, other=0)[:, None]
        code = tl.minimum(tl.maximum(code, 0), 255)
        v = lv.to(tl.int32).to(tl.float32) * tl.load(step_ptr + code, mask=m, other=0.0)
        orow = tl.load(out_row_ptr + row, mask=rm, other=0)
        _store_out(out_ptr, orow[:, None] * num_channels + c[None, :], v, m, OUT)
    tl.atomic_or(status_ptr, tl.max(tl.max(bad, 1), 0) * BAD_LEVEL)


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
    tl.atomic_or(status_ptr, tl.max(tl.max(bad, 1), 0) * BAD_VALUE)


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


def chains(pred: np.ndarray, predictor: int, max_rows: int = 16):
    """(rows, offsets) of the chains of a batch from its predictor rows (global row
    numbers, -1: none).  Without prediction, blocks of up to ``max_rows`` rows."""
    k = pred.size
    if predictor == 0:
        return np.arange(k, dtype=np.int64), np.append(np.arange(0, k, max_rows), k)
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


def _launch(num_chains, d):
    bc = min(128, triton.next_power_of_2(max(d, 1)))
    return bc, (num_chains, triton.cdiv(d, bc))


def dequantize(sym, rows, offs, out_row, delta, code, step, esc, esc_pos, esc_val, predictor,
               out, num_channels):
    """Levels and output values of a batch (clauses 7.4.1, 7.5, 7.6) into ``out``
    (float32, float16, or int16 holding bfloat16 bits).  Returns the status word."""
    dev = sym.device
    status = torch.zeros(1, dtype=torch.int32, device=dev)
    n = offs.numel() - 1
    if n <= 0 or num_channels == 0:
        return status
    kind = {torch.float32: 0, torch.float16: 1, torch.int16: 2, torch.bfloat16: 2}[out.dtype]
    if out.dtype == torch.bfloat16:
        out = out.view(torch.int16)
    ne = esc_pos.numel()
    bc, grid = _launch(n, num_channels)
    _dequant_kernel[grid](sym, rows, offs, out_row, delta, code, step, esc, esc_pos,
                          esc_val if ne else esc_pos, ne, max(1, int(ne).bit_length() + 1),
                          out, status, num_channels, SCAN=predictor != 0, OUT=kind, BR=16,
                          BC=bc, num_warps=4)
    return status


def split(sym, raw, rows, offs, out_row, out, num_channels, raw_bits, width, predictor,
          vocab=None):
    """Lossless values (clause 7.4.2) into ``out`` (int16 / int32 bit patterns)."""
    status = torch.zeros(1, dtype=torch.int32, device=sym.device)
    n = offs.numel() - 1
    if n <= 0 or num_channels == 0:
        return status
    bc, grid = _launch(n, num_channels)
    _split_kernel[grid](sym, raw, rows, offs, out_row, out, status, num_channels, raw_bits,
                        0 if vocab is None else vocab, WIDTH=width, PRED=predictor != 0,
                        IDS=vocab is not None, BR=16, BC=bc, num_warps=4)
    return status
