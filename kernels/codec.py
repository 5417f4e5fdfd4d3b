"""Streams encoded and decoded through the GPU kernels, byte- and bit-identical
to the reference (``tokenbits``).

Decoding: units are framed and parsed on the host by the reference parser
(clause 6); the frames of one parameter set are then decoded in batches: one
rANS launch for all their chunks, one reconstruction launch for all their
chains.  Errors found on the GPU are raised (strict) or recorded against their
frame's unit (non-strict) exactly as the reference would: same error class,
same unit, errors in stream order.

Encoding: the parameter set is fitted by the reference encoder on the host
(Annex B: rate control, tables), its pruning selection made on the GPU
(:class:`GpuFitKernels`); the frames are then coded on the GPU in
batches: token norms, quantization with the presence-map
gather, residuals and symbols, rANS encode (words in stream order).  The host writes
the frame headers.
"""
from __future__ import annotations

import numpy as np
import torch

from tokenbits import pruning, reconstruction, tables
from tokenbits.decoder import Decoder, Frame, parse_frame
from tokenbits.decoder import decode as ref_decode
from tokenbits.encoder import SYMBOL_NOT_IN_TABLE, TrackEncoder, select_kept
from tokenbits.fit_kernels import FitKernels
from tokenbits.quantization import INV_STEP
from tokenbits.errors import TKBEncodeError, TKBEntropyError, TKBError, TKBValueError

from . import prune as prune_k
from . import quant, rans, recon
from . import transform as transform_k
from tokenbits import transform_fit

BATCH_SYMBOLS = 1 << 27      # symbols decoded or encoded per launch at most
_TORCH_OUT = {0: torch.float32, 1: torch.float16, 2: torch.bfloat16}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _t(a, dtype, device):
    return torch.from_numpy(np.ascontiguousarray(a).astype(dtype, copy=False)).to(device)


# -- decoding -------------------------------------------------------------------

class _ParamSet:
    """Device copies of a parameter set's tables."""

    def __init__(self, tps: dict, device):
        pb = tps["prob_bits"]
        alph = [int(t.size) for t in tps["tables"]]
        lookup = tables.decode_lookup(tps["tables"], pb)
        quantized = tps["coding_mode"] != 1
        tmap = np.asarray(tps["channel_table"], dtype=np.int64) if tps["num_tables"] > 1 else \
            np.zeros(tps["num_coded"], dtype=np.int64)
        self.tables = rans.DecodeTables(lookup, alph, quantized, tmap, pb, device)
        if quantized:
            self.esc = _t(np.asarray(alph)[tmap] - 1, np.int32, device)
            self.code = np.broadcast_to(np.asarray(tps["step_code"], dtype=np.int64),
                                        (tps["num_coded"],))
            self.t_code = _t(self.code, np.int32, device)
            self.step = _t(reconstruction.STEP, np.float32, device)
        if tps["coding_mode"] == 2:
            # levels through recon.dequantize with steps of 1.0 (exact), then 7.6.3
            self.ones = torch.ones(256, dtype=torch.float32, device=device)
            self.transform = transform_k.DeviceTransform(tps["transform"], device)


class _Staged:
    """A batch's device inputs (host staging of decode_batch): launch() runs the kernels."""


def stage_batch(tps: dict, frames: list, ps: _ParamSet, device, dense: bool = False) -> _Staged:
    """Host work of :func:`decode_batch`: the batch's words, chunk plan, chains, step
    deltas and escape values on the device, and the errors found before decoding."""
    st = _Staged()
    st.d = d = tps["num_coded"]          # coded values per token (clause 7.1.2)
    st.kept = kept = np.array([f["num_kept"] for f in frames], dtype=np.int64)
    st.results = [None] * len(frames)
    st.plan = plan = rans.ChunkPlan(kept * d, tps["num_lanes"], tps["lane_steps"], d, device)
    cw_host = [np.asarray(f["chunk_words"], dtype=np.int64) for f in frames]
    # clause 7.3.2: a chunk holds at least its initial states
    act_split = np.split(plan.active, np.cumsum(plan.frame_chunks)[:-1])
    for i, (cw, act) in enumerate(zip(cw_host, act_split)):
        if np.any(cw < 2 * act):
            k = int(np.argmax(cw < 2 * act))
            st.results[i] = TKBEntropyError(f"chunk {k} has {int(cw[k])} words, fewer than "
                                            f"its {2 * int(act[k])} initial-state words",
                                            clause="7.3.2", element=f"chunk_words[{k}]")
    words = np.concatenate([np.asarray(f["rans_data"], dtype=np.uint16) for f in frames]
                           + [np.zeros(rans.WORD_PAD, np.uint16)])
    st.t_words = _t(words.view(np.int16), np.int16, device)[:words.size - rans.WORD_PAD]
    st.t_cw = _t(np.concatenate(cw_host + [np.zeros(0, np.int64)]), np.int64, device)
    st.quantized = quantized = tps["coding_mode"] != 1
    st.transformed = tps["coding_mode"] == 2
    st.n_esc = np.array([f["num_escapes"] for f in frames], dtype=np.int64) if quantized \
        else None
    # chains of the whole batch (rows: kept tokens of all frames, in frame order)
    st.row0 = row0 = np.cumsum(kept) - kept
    preds = []
    for f, r0 in zip(frames, row0):
        p = recon.predictor_rows(f["positions"], tps)
        preds.append(np.where(p >= 0, p + r0, -1))
    pred = np.concatenate(preds + [np.zeros(0, np.int64)])
    rows, offs = recon.chains(pred, tps.get("predictor", 0) or 0, row0)
    st.contiguous = recon.is_contiguous(rows, offs)
    st.chain_frame = np.searchsorted(row0, rows[offs[:-1]], side="right") - 1 \
        if offs.size > 1 else np.zeros(0, np.int64)
    st.dense = dense
    if dense:
        st.n_tok = n_tok = np.array([f["num_tokens"] for f in frames], dtype=np.int64)
        base = np.cumsum(n_tok) - n_tok
        out_row = np.concatenate([b + np.asarray(f["positions"], np.int64)
                                  for f, b in zip(frames, base)] + [np.zeros(0, np.int64)])
        out_rows_total = int(n_tok.sum())
    else:
        out_row = np.arange(int(kept.sum()), dtype=np.int64)
        out_rows_total = int(kept.sum())
    st.t_rows, st.t_offs, st.t_out_row = (_t(a, np.int64, device) for a in (rows, offs, out_row))
    st.shape = (out_rows_total, tps["num_channels"])
    if quantized:
        st.esc_vals = np.concatenate([np.asarray(f["escape_data"], dtype=np.int64)
                                      for f in frames] + [np.zeros(0, np.int64)])
        delta = np.concatenate([np.asarray(f["token_step_delta"], np.int64)
                                if f["token_scale_present"] else np.zeros(k, np.int64)
                                for f, k in zip(frames, kept)] + [np.zeros(0, np.int64)])
        delta += np.repeat([f["frame_step_delta"] for f in frames], kept).astype(np.int64)
        st.delta, st.t_delta = delta, _t(delta, np.int32, device)
        if st.transformed:
            st.lev_rows = torch.arange(int(kept.sum()), dtype=torch.int64, device=device)
    else:
        st.raw = _t(np.concatenate([np.asarray(f["raw_data"], dtype=np.uint64).astype(np.int64)
                                    for f in frames] + [np.zeros(0, np.int64)]), np.int64,
                    device)
    st.device = device
    return st


def launch_batch(tps: dict, ps: _ParamSet, st: _Staged, transform_variant=None):
    """The device work of :func:`decode_batch` on a staged batch: (values, rANS status,
    escape counts, chain status, coefficient status or None), all on the device."""
    d, device = st.d, st.device
    sym, status, esc_pos, esc_count = rans.decode(st.plan, st.t_words, st.t_cw, ps.tables,
                                                  tps["prob_bits"], st.n_esc)
    pred = tps.get("predictor", 0) or 0
    tstatus = None
    if st.quantized:
        # the transform writes every channel of every decoded row (limb_gemm): rows are
        # left unset only in a dense batch (pruned positions, filled by clause 7.8)
        alloc = transform_k.unset if st.transformed and not st.dense else torch.zeros
        out = alloc(st.shape, dtype=_TORCH_OUT[tps["output_dtype"]], device=device)
        uext = recon.escape_values(sym.numel(), d, ps.esc, esc_pos,
                                   _t(st.esc_vals[:esc_pos.numel()], np.int64, device), device)
        if st.transformed:     # 7.6.3: fused (levels straight to limb planes), or levels
            lev_v, gemm_v = transform_k.split_variant(transform_variant)   # then the inverse
            if transform_k.fused(st.contiguous, st.t_offs.numel() - 1, d, lev_v):
                limbs, blocks, vstatus, tstatus = transform_k.levels_limbs(
                    sym, st.t_offs, st.t_delta, ps.t_code, ps.esc, uext, ps.transform, pred,
                    lev_v)
                transform_k.limb_gemm(limbs, blocks, ps.transform, out, st.t_out_row, gemm_v)
            else:
                lev = torch.empty((int(st.kept.sum()), d), dtype=torch.float32, device=device)
                vstatus = recon.dequantize(sym, st.t_rows, st.t_offs, st.lev_rows, st.t_delta,
                                           ps.t_code, ps.ones, ps.esc, uext, pred, lev, d,
                                           st.contiguous, False, variant=dict(ALU_STEP=False))
                tstatus = transform_k.inverse(lev, st.t_delta, ps.t_code, ps.transform, out,
                                              st.t_out_row, gemm_v)
        else:
            vstatus = recon.dequantize(sym, st.t_rows, st.t_offs, st.t_out_row, st.t_delta,
                                       ps.t_code, ps.step, ps.esc, uext, pred, out, d,
                                       st.contiguous, st.dense)
    else:
        width = reconstruction.DTYPE_BITS[tps["source_dtype"]]
        ids = tps["track_kind"] == 1
        out = torch.zeros(st.shape, dtype=torch.int16 if width == 16 else torch.int32,
                          device=device)
        vstatus = recon.split(sym, st.raw, st.t_rows, st.t_offs, st.t_out_row, out, d,
                              tps["raw_bits"], width, pred, tps["vocab_size"] if ids else None)
    return out, status, esc_count, vstatus, tstatus


def decode_batch(tps: dict, frames: list, ps: _ParamSet, device, dense: bool = False):
    """Values of parsed frames ``frames`` (parse_frame dicts) of one parameter set.
    Returns a list with, per frame, a tensor or the TKBError the reference raises."""
    st = stage_batch(tps, frames, ps, device, dense)
    out, status, esc_count, vstatus, tstatus = launch_batch(tps, ps, st)
    d, kept, row0, results, quantized = st.d, st.kept, st.row0, st.results, st.quantized
    n_esc, plan, chain_frame = st.n_esc, st.plan, st.chain_frame
    if quantized:   # the clause 7.6.1 check needs only the codes' extremes (host)
        delta = st.delta
        code_min = ps.code.min() if d else 0
        code_max = ps.code.max() if d else 0
    if tstatus is not None:
        tstatus = tstatus.cpu().numpy()
    # errors, in the order the reference checks them (rANS, escapes, levels, codes)
    st_ = status.cpu().numpy()
    ec = esc_count.cpu().numpy()
    vs = vstatus.cpu().numpy()
    chunk_bad = np.zeros(len(frames), dtype=bool)
    if st_.size:
        np.logical_or.at(chunk_bad, plan.frame[st_ != 0], True)
    chain_bad = np.zeros(len(frames), dtype=np.int64)
    if vs.size and chain_frame.size:
        np.bitwise_or.at(chain_bad, chain_frame, vs[:chain_frame.size])
    for i, f in enumerate(frames):
        if results[i] is not None:
            continue
        if chunk_bad[i]:
            results[i] = TKBEntropyError("a rANS chunk is inconsistent: an initial state "
                                         "below RANS_L, a word count or a final state that "
                                         "does not match", clause="7.3.2", element="rans_data")
        elif quantized and ec[i] != n_esc[i]:
            results[i] = TKBEntropyError(f"{int(ec[i])} escape symbols decoded but "
                                         f"num_escapes = {int(n_esc[i])}", clause="7.4.1",
                                         element="num_escapes")
        elif quantized and chain_bad[i]:
            results[i] = TKBValueError("a quantization level exceeds 2^24 - 1 in magnitude",
                                       clause="7.5", element="rans_data")
        elif not quantized and chain_bad[i]:
            results[i] = TKBValueError("a lossless value lies outside its dtype or a token "
                                       "id >= vocab_size", clause="7.4.2", element="rans_data")
        elif quantized and kept[i]:
            dl = delta[row0[i]:row0[i] + kept[i]]
            if code_min + dl.min() < 0 or code_max + dl.max() > 255:
                results[i] = TKBValueError("a step code is outside 0..255", clause="7.6.1",
                                           element="token_step_delta" if f["token_scale_present"]
                                           else "frame_step_delta")
            elif tstatus is not None and tstatus[row0[i]:row0[i] + kept[i]].any():
                results[i] = TKBValueError("a transform coefficient exceeds 2^24 - 1 in "
                                           "magnitude", clause="7.6.3", element="rans_data")
    first, count = (np.cumsum(st.n_tok) - st.n_tok, st.n_tok) if st.dense else (row0, kept)
    for i in range(len(frames)):
        if results[i] is None:
            v = out[int(first[i]):int(first[i] + count[i])]
            if not quantized:
                v = v.view({0: torch.float32, 1: torch.float16, 2: torch.bfloat16,
                            3: torch.int32}[tps["source_dtype"]])
                if tps["track_kind"] == 1:
                    v = v.reshape(-1)
            results[i] = v
    return results


def dense_fill(v: torch.Tensor, positions, stand_ins) -> torch.Tensor:
    """Clause 7.8 on a dense frame [num_tokens, ...] whose kept rows are in place: each
    pruned position gets a bit copy of its stand-in's row (a gather on the device; the
    stand-ins are parsed on the host with the frame)."""
    pos = np.asarray(positions, dtype=np.int64)
    mask = np.ones(v.shape[0], dtype=bool)
    mask[pos] = False
    pruned = _t(np.flatnonzero(mask), np.int64, v.device)
    src = _t(pos[np.asarray(stand_ins, dtype=np.int64)], np.int64, v.device)
    v[pruned] = v[src]
    return v


class GPUDecoder(Decoder):
    """The reference Decoder with frame values decoded on the GPU in batches.

    Frames are parsed as their units arrive and decoded when :meth:`flush` runs
    (at the end of the stream, or when a batch is full)."""

    def __init__(self, header, strict: bool = True, device=None, dense: bool = False,
                 transforms=None):
        super().__init__(header, strict, transforms=transforms)
        self.device = device or default_device()
        self.dense = dense
        self._pending: list = []     # (unit, tps, parsed frame)
        self._pending_symbols = 0
        self._sets: dict = {}

    def _frame(self, u):
        if not u.payload:
            return super()._frame(u)     # raises the reference's error
        tps = self.stream.tracks.get(u.track_id, {}).get(u.payload[0])
        if tps is None:
            return super()._frame(u)
        fr = parse_frame(u.payload, tps, self.level)
        self._pending.append((u, tps, fr))
        self._pending_symbols += fr["num_kept"] * tps["num_channels"]
        return None

    def add_unit(self, u):
        try:
            r = super().add_unit(u)
        except TKBError:
            self.flush()       # an earlier frame's error comes first
            raise
        if self._pending_symbols >= BATCH_SYMBOLS:
            self.flush()
        return r

    def flush(self) -> None:
        pending, self._pending, self._pending_symbols = self._pending, [], 0
        groups: dict = {}
        for item in pending:
            u, tps, _ = item
            groups.setdefault((u.track_id, tps["tps_id"], id(tps)), []).append(item)
        outcome = {}
        for (track, tid, _), items in groups.items():
            tps = items[0][1]
            key = (track, tid, id(tps))
            ps = self._sets.get(key)
            if ps is None:
                ps = self._sets[key] = _ParamSet(tps, self.device)
            res = decode_batch(tps, [fr for _, _, fr in items], ps, self.device, self.dense)
            for (u, _, fr), r in zip(items, res):
                outcome[u.offset] = (u, tps, fr, r)
        errors = []
        for off in sorted(outcome):
            u, tps, fr, r = outcome[off]
            if isinstance(r, TKBError):
                e = r.relocate(u.offset)
                self._mark(u, f"error: {e}")
                if self.strict:
                    raise e
                errors.append(e)
                continue
            if self.dense and fr["stand_ins"] is not None:
                r = dense_fill(r, fr["positions"], fr["stand_ins"])
            self.stream.frames.append(Frame(u.track_id, fr["frame_number"], fr["num_tokens"],
                                            fr["positions"], r,
                                            reconstruction.DTYPES[tps["output_dtype"]],
                                            tps["tps_id"], u.offset, fr["stand_ins"]))
        self.stream.errors.extend(errors)

    def finish(self) -> None:
        self.flush()
        _order(self.stream)

    def _mark(self, u, status: str) -> None:
        for i, (v, _) in enumerate(self.stream.units):
            if v is u:
                self.stream.units[i] = (u, status)


def decode(data, strict: bool = True, device=None, dense: bool = False, progress=None,
           transforms=None):
    """Decode a stream with the GPU kernels (same contract as ``tokenbits.decode``).
    Frame values are torch tensors on ``device``: float32/float16/bfloat16 values, or
    uint32 ids as int32.  ``dense``: each frame's values are [num_tokens, D] with the
    kept tokens scattered to their positions and each pruned position filled from its
    stand-in (merge map, clause 7.8: a device gather after the batch) or zeros."""
    return ref_decode(data, strict, progress,
                      decoder=lambda header: GPUDecoder(header, strict, device, dense,
                                                        transforms))


def _order(stream) -> None:
    """Frames and errors in stream order, as the reference records them (a framing
    error, if any, is appended after this)."""
    stream.frames.sort(key=lambda f: f.offset)
    stream.errors.sort(key=lambda e: e.offset if e.offset is not None else -1)


def to_numpy(stream):
    """A GPU-decoded stream with numpy values, exactly as the reference returns them
    (bfloat16 as uint16 bit patterns, ids as uint32)."""
    import dataclasses
    frames = []
    for f in stream.frames:
        v = f.values
        if isinstance(v, torch.Tensor):
            if v.dtype == torch.bfloat16:
                v = v.view(torch.int16).cpu().numpy().view(np.uint16)
            elif v.dtype == torch.int32 and f.dtype == "uint32":
                v = v.cpu().numpy().view(np.uint32)
            else:
                v = v.cpu().numpy()
        frames.append(dataclasses.replace(f, values=v))
    return dataclasses.replace(stream, frames=frames)


# -- encoding -------------------------------------------------------------------

def _batches(sizes, limit):
    start, acc = 0, 0
    for i, s in enumerate(sizes):
        if acc and acc + s > limit:
            yield start, i
            start, acc = i, 0
        acc += s
    if start < len(sizes):
        yield start, len(sizes)


def _device_rows(source, te: TrackEncoder, device):
    """A track's input as [rows, D] on ``device`` when it already lies there (a torch
    tensor [N, D] or [F, N, D] of frames of one size), else None."""
    if not isinstance(source, torch.Tensor) or source.device.type != torch.device(device).type \
            or te.ids or source.ndim not in (2, 3):
        return None
    x = source.reshape(-1, source.shape[-1])
    if x.dtype == torch.float64:          # coded from float32, as the reference does
        x = x.to(torch.float32)
    return x.contiguous()


def _input_tensor(frames, te: TrackEncoder, device, rows=None, first_row: int = 0):
    if rows is not None:                  # the input is on the device already: no copy
        n = sum(f.shape[0] for f in frames)
        return rows[first_row:first_row + n]
    x = np.concatenate(frames) if frames else np.zeros((0, te.d))
    t = torch.from_numpy(np.ascontiguousarray(x))
    if te.src == "bfloat16":
        t = t.view(torch.int16).view(torch.bfloat16)
    return t.to(device)


def _clipped(c: torch.Tensor, delta: torch.Tensor, code: torch.Tensor, inv: torch.Tensor,
             lim: torch.Tensor) -> bool:
    """Whether a coefficient's level would exceed its code's limit (the reference encoder
    clips those, transform_fit.max_levels): levels as the quantizer computes them, the
    binary32 product with the reciprocal step rounded half to even."""
    if c.numel() == 0:
        return False
    q = (code.to(torch.int64)[None, :] + delta.to(torch.int64)[:, None]).clamp(0, 255)
    lev = torch.round(c * inv[q]).abs()
    return bool((lev > lim[q].to(lev.dtype)).any())


def kept_positions(te: TrackEncoder, x: torch.Tensor, frames) -> list:
    """Positions of each frame (Annex B.2).  ``balanced`` (the default policy) and
    ``coverage``, with ``keep`` or ``keep_coverage``: similarity levels and the greedy on the GPU
    (kernels/prune.py).  ``farthest``: scores on the GPU, selection on the host.  The
    other policies (uniform, diversity, density, the hybrids): the reference selection
    (tokenbits.pruning) on the host copy of the frames.  Every path selects the tokens
    the reference encoder selects."""
    o = te.opts
    n = [a.shape[0] for a in frames]
    if not o.prunes or not frames:
        return [np.arange(k, dtype=np.uint32) for k in n]
    policy = pruning.check_policy(o.prune)
    t = te.tps
    start = t["num_prefix_tokens"]
    grid_bad = t["grid_present"] and any(0 < k - start != t["grid_height"] * t["grid_width"]
                                         for k in n)
    if policy in ("coverage", "balanced") and not te.ids and not grid_bad:
        counts = np.asarray(n, dtype=np.int64)
        return prune_k.select_coverage(x, np.cumsum(counts) - counts, counts, start,
                                       o.keep, o.keep_coverage, balance=policy == "balanced")
    if o.keep_coverage is not None or policy != "farthest":
        return [te._positions(a) for a in frames]      # errors as the reference raises them
    start = te.tps["num_prefix_tokens"]
    base = np.cumsum(n) - n
    nrows = np.maximum(np.asarray(n) - start, 0)
    mean, sq, dot = quant.scores_parts(x, _t(base + start, np.int64, x.device),
                                       _t(nrows, np.int32, x.device))
    mean, sq, dot = mean.cpu().numpy(), sq.cpu().numpy(), dot.cpu().numpy()
    out = []
    r0 = np.cumsum(nrows) - nrows
    for i, k in enumerate(n):
        if k == 0:
            out.append(np.zeros(0, np.uint32))
            continue
        m = mean[i]
        mnorm = np.sqrt(np.cumsum(m * m)[-1] if m.size else 0.0) or 1.0
        norms = np.sqrt(sq[r0[i]:r0[i] + nrows[i]]) * mnorm
        dist = 1.0 - dot[r0[i]:r0[i] + nrows[i]] / np.where(norms > 0, norms, 1.0)
        out.append(select_kept(dist, o.keep, start))
    return out


class GpuFitKernels(FitKernels):
    """The reference fit's steps (numpy), but the pruning selection of every frame
    (Annex B.2) made on the GPU by :func:`kept_positions`, in batches: the same
    positions as the reference's, so the fitted parameter set is the same.  The frame
    coder then reuses them (``encode_frames(..., positions=te.positions)``)."""

    name = "gpu"

    def __init__(self, device):
        self.device = device

    def positions(self, te: TrackEncoder, arrs: list) -> list:
        if not te.opts.prunes or te.ids:
            return super().positions(te, arrs)
        out = []
        for a, b in _batches([f.size for f in arrs], BATCH_SYMBOLS):
            batch = arrs[a:b]
            out += kept_positions(te, _input_tensor(batch, te, self.device), batch)
        return out


def _merge_maps(te: TrackEncoder, x: torch.Tensor, pos, n, base) -> list:
    """Each frame's merge map (clause 7.8), or None: with the option ``merge_map``, on a
    frame that keeps some tokens and prunes others, the stand-ins chosen on the GPU
    (kernels/prune.stand_ins, the twin of TrackEncoder.stand_ins)."""
    if not te.opts.merge_map or te.ids:
        return [None] * len(pos)
    si = prune_k.stand_ins(x, base, n, pos)
    return [s if 0 < p.size < k else None for s, p, k in zip(si, pos, n)]


def _split_symbols(te: TrackEncoder, x: torch.Tensor, src: torch.Tensor, pred: torch.Tensor):
    """Split-track symbols and raw values (clause 7.4.2 in reverse) with torch ops."""
    rb = te.tps["raw_bits"]
    v = x[src]
    if te.ids:
        u = v.to(torch.int64).reshape(-1, 1)
    else:
        width = reconstruction.DTYPE_BITS[te.tps["source_dtype"]]
        bits = v.view(torch.int16 if width == 16 else torch.int32).to(torch.int64) & (
            (1 << width) - 1)
        u = bits
        if te.tps.get("predictor"):
            sign = 1 << (width - 1)
            m = torch.where(bits & sign != 0, -(bits - sign) - 1, bits)
            has = (pred >= 0)[:, None]
            r = m - torch.where(has, m[pred.clamp(min=0)], torch.zeros_like(m))
            u = (r << 1) ^ (r >> 63)
    return u >> rb, u & ((1 << rb) - 1)


def encode_frames(te: TrackEncoder, frames: list, device=None, source=None,
                  positions: list | None = None) -> list:
    """Frame unit payloads of ``frames`` against the fitted parameter set of ``te``,
    computed on the GPU; byte-identical to ``te.encode_frame``.  ``source``: the same
    frames as a torch tensor; when it lies on ``device`` the kernels read it there
    instead of uploading ``frames`` again.  ``positions``: the frames' kept positions
    when the fit selected them already (``te.positions``); else selected here."""
    device = device or default_device()
    frames = [te.check_frame(a) for a in frames]
    rows = _device_rows(source, te, device)
    row_start = np.cumsum([0] + [f.shape[0] for f in frames])
    tps, d = te.tps, te.dc          # coded values per token (clause 7.1.2)
    alph = te.freq_all.shape[1]
    etab = rans.encode_table(te.freq_all, te.cum_all, device)
    chan_base = _t(te.chan_table * alph, np.int32, device)
    inv = _t(INV_STEP, np.float32, device)
    code = _t(te._step_codes(te.qp) if not te.lossless else np.zeros(d), np.int32, device)
    esc = _t(te.chan_esc, np.int32, device)
    if te.transform is not None:     # the forward transform (Annex B.7) and its level limits
        fw = transform_k.DeviceForward(te.transform, device)
        lim = _t(transform_fit.max_levels(np.arange(256), te.transform.coeff_frac_bits),
                 np.int64, device)
    closed = getattr(te, "closed_loop", False) and not te.lossless
    deadzone = te.deadzone if closed else 0.0
    if closed and te.transform is None:     # closed loop (B.1): levels within 2^24 - 1
        lim = torch.full((256,), reconstruction.MAX_LEVEL, dtype=torch.int64, device=device)
    payloads = []
    for a, b in _batches([f.size for f in frames], BATCH_SYMBOLS):
        batch = frames[a:b]
        x = _input_tensor(batch, te, device, rows, int(row_start[a]))
        pos = kept_positions(te, x, batch) if positions is None else \
            [np.asarray(p, dtype=np.uint32) for p in positions[a:b]]
        n = np.array([f.shape[0] for f in batch], dtype=np.int64)
        kept = np.array([p.size for p in pos], dtype=np.int64)
        base, row0 = np.cumsum(n) - n, np.cumsum(kept) - kept
        merges = _merge_maps(te, x, pos, n, base)
        if te.opts.merge_tokens:        # B.2 merging: on the host, by the reference
            batch = [te.merged(f, p) for f, p in zip(batch, pos)]
            x = _input_tensor(batch, te, device)
        src_h = np.concatenate([bb + p.astype(np.int64) for bb, p in zip(base, pos)]
                               + [np.zeros(0, np.int64)])
        pred_h = np.concatenate([np.where(p >= 0, p + r, -1) for p, r in
                                 zip((recon.predictor_rows(q, tps) for q in pos), row0)]
                                + [np.zeros(0, np.int64)])
        src, pred = _t(src_h, np.int64, device), _t(pred_h, np.int64, device)
        if te.lossless:
            s, raw = _split_symbols(te, x, src, pred)
            sym = s.clamp(max=32767).to(torch.int16).reshape(-1)
            raw_h = raw.reshape(-1).cpu().numpy()
        else:
            if te.opts.token_scale:   # step deltas on the device (Annex B.1)
                delta = quant.step_deltas(quant.squared_norms(x, src), te.norm_ref,
                                          *te.delta_bounds(te.qp))
            else:
                delta = torch.zeros(src_h.size, dtype=torch.int32, device=device)
            xs, srcs = x, src
            if te.transform is not None:
                xs = transform_k.forward(x, src, fw, te.input_scale)
                srcs = torch.arange(src_h.size, dtype=torch.int64, device=device)
                if not closed and _clipped(xs, delta, code, inv, lim):
                    # a level the reference clips (clause 7.6.3 bound): code this batch there
                    payloads += [te.encode_frame(f, a + i, p) for i, (f, p) in
                                 enumerate(zip(batch, pos))]
                    continue
            if closed:            # the closed-loop quantizer, along prediction chains
                sym, esc_pos, esc_val = quant.symbols_closed_loop(
                    xs, srcs, delta, pred_h, tps["predictor"], code, inv, lim, esc, deadzone,
                    row0)
            else:
                sym, esc_pos, esc_val = quant.symbols(xs, srcs, delta, pred, code, inv, esc,
                                                      quant.prev_rows_only(pred_h))
            esc_pos, esc_val = esc_pos.cpu().numpy(), esc_val.cpu().numpy()
            delta_h = delta.cpu().numpy().astype(np.int64)
        plan = rans.ChunkPlan(kept * d, tps["num_lanes"], tps["lane_steps"], d, device)
        words, cw, status = rans.encode(plan, sym, etab, chan_base, alph, tps["prob_bits"])
        if int(status.max()) if status.numel() else 0:
            raise TKBEncodeError(SYMBOL_NOT_IN_TABLE)
        words = words.cpu().numpy().view(np.uint16)
        cw = cw.cpu().numpy()
        c_end = np.cumsum(plan.frame_chunks)
        w_end = np.cumsum(cw)
        s_end = np.cumsum(kept * d)
        for i, (f, p) in enumerate(zip(batch, pos)):
            c0 = c_end[i] - plan.frame_chunks[i]
            w0 = int(w_end[c0 - 1]) if c0 > 0 else 0
            w1 = int(w_end[c_end[i] - 1]) if c_end[i] > 0 else w0
            s0, s1 = int(s_end[i] - kept[i] * d), int(s_end[i])
            number = a + i
            merge = merges[i]
            if te.lossless:
                payloads.append(te.frame_payload(number, f.shape[0], p, words[w0:w1],
                                                 cw[c0:c_end[i]], raw=raw_h[s0:s1],
                                                 stand_ins=merge))
            else:
                j0, j1 = np.searchsorted(esc_pos, [s0, s1])
                payloads.append(te.frame_payload(number, f.shape[0], p, words[w0:w1],
                                                 cw[c0:c_end[i]],
                                                 tdelta=delta_h[row0[i]:row0[i] + kept[i]],
                                                 escapes=esc_val[j0:j1], stand_ins=merge))
    return payloads
