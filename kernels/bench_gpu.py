"""GPU benchmark of the TKB kernels against the baselines, in one run.

    python -m tokenbits.kernels.bench_gpu --prepare DIR     # here: real ViT tokens
    python -m tokenbits.kernels.bench_gpu --data DIR/vit_frames.npy --json OUT.json

Data: 576 x 1024 float16 frames of real ViT-S/14 tokens (three layers side by
side, as ``tkb bench``'s large frame), tiled to at least 256 MB.  The parameter
set is fitted by the reference encoder on the distinct frames (target cosine
0.99); everything timed then runs on the GPU:

* copy bandwidth (read + write), our quantization kernel (levels, residuals,
  symbols), torch eager / torch.compile quantization, nvCOMP ANS on the same
  symbols, our rANS encode and decode; coded sizes against the entropy;
* full encode (float16 in -> words) and full decode (words -> float16 out);
* throughput against batch size (1 frame up to thousands);
* bit-exactness on the device: a frame encoded on the GPU against the
  reference encoder's bytes, and its GPU decode against the reference decode.

Host work (parsing headers, writing them) is not in the GPU timings; the
end-to-end bytes-to-tensor time of ``tokenbits.decode_tensors`` is reported
beside them.
"""
from __future__ import annotations

import argparse
import os
import json
import platform
import sys
import time
from datetime import datetime, timezone

import numpy as np
import torch
import triton

from tokenbits import reconstruction, tables
from tokenbits.quantization import INV_STEP

from . import quant, rans, recon

LAYERS = ((9, 10, "last"), (8, 9, 10), (7, 8, 9), (6, 7, 8))


def prepare(out_dir: str) -> str:
    """Write vit_frames.npy: distinct 576 x 1024 float16 frames of real tokens."""
    from pathlib import Path

    from tokenbits import realdata
    from tokenbits.bench import VIT_IMAGES
    frames = []
    for layers in LAYERS:
        parts = [realdata.vit_tokens(VIT_IMAGES, layer=layer)[:, 1:] for layer in layers]
        frames.append(np.concatenate(parts, axis=2)[:, :, :1024].reshape(-1, 1024)[:576])
    path = Path(out_dir) / "vit_frames.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.stack(frames).astype(np.float16))
    return str(path)


def _timer(device):
    if device == "cuda":
        from .baselines_gpu import bench_ms
        return bench_ms

    def host_ms(fn, warmup_ms=0, rep_ms=0):
        fn()
        t = time.perf_counter()
        fn()
        return 1e3 * (time.perf_counter() - t)
    return host_ms


def _entropy(sym: torch.Tensor, table_of_channel: torch.Tensor, d: int, alph: int):
    """Order-0 entropy, and entropy under the table coding each symbol (bits)."""
    def h(counts):
        c = counts[counts > 0].to(torch.float64)
        return float(-(c * torch.log2(c / c.sum())).sum())
    s = sym.to(torch.int64)
    order0 = h(torch.bincount(s, minlength=alph))
    t = table_of_channel.to(torch.int64).repeat(s.numel() // d)
    per_table = torch.bincount(t * alph + s).view(-1)
    nt = int(table_of_channel.max()) + 1
    per_table = torch.nn.functional.pad(per_table, (0, nt * alph - per_table.numel()))
    cond = sum(h(row) for row in per_table.view(nt, alph))
    return order0, cond


class Setup:
    """A fitted parameter set and a batch of frames on the device."""

    def __init__(self, base: np.ndarray, frames: int, lanes: int, device: str,
                 num_tables=None, prob_bits=None):
        from tokenbits import levels
        from tokenbits.encoder import TrackEncoder, TrackOptions
        self.device = device
        self.te = TrackEncoder(list(base), TrackOptions(target_cos=0.99, num_lanes=lanes,
                                                        predictor="left", num_tables=num_tables,
                                                        prob_bits=prob_bits),
                               levels.LEVELS[30])
        n, d = base.shape[1:]
        self.n, self.d = n, d
        # tiling: frame i is distinct frame i mod F.  (Rolling the tokens of the copies
        # made them distinct but created level residuals that the parameter set, fitted
        # on the F frames, cannot code: a table without that symbol.)
        base_t = torch.from_numpy(base).to(device)
        self.x = torch.empty((frames * n, d), dtype=torch.float16, device=device)
        for i in range(frames):
            self.x[i * n:(i + 1) * n] = base_t[i % len(base)]
        self.frames = frames

    def batch(self, b: int) -> "Batch":
        return Batch(self, b)


class Batch:
    """The first ``b`` frames: device inputs of every stage, and their outputs once."""

    def __init__(self, s: Setup, b: int):
        te, dev, d, n = s.te, s.device, s.d, s.n
        self.s, self.b = s, b
        self.x = s.x[:b * n]
        k = b * n
        self.src = torch.arange(k, device=dev)
        pred_h = np.concatenate([np.where(p >= 0, p + i * n, -1) for i, p in enumerate(
            [recon.predictor_rows(np.arange(n), te.tps)] * b)])
        self.pred = torch.from_numpy(pred_h).to(dev)
        self.prev_row = quant.prev_rows_only(pred_h)
        self.code = torch.from_numpy(te._step_codes(te.qp).astype(np.int32)).to(dev)
        self.inv = torch.from_numpy(INV_STEP).to(dev)
        self.esc = torch.from_numpy(te.chan_esc.astype(np.int32)).to(dev)
        alph = te.freq_all.shape[1]
        self.alph = alph
        self.etab = rans.encode_table(te.freq_all, te.cum_all, dev)
        self.chan_enc = torch.from_numpy((te.chan_table * alph).astype(np.int32)).to(dev)
        self.plan = rans.ChunkPlan(np.full(b, n * d), te.tps["num_lanes"], te.tps["lane_steps"],
                                   d, dev)
        tabs = [np.asarray(t, dtype=np.int64) for t in te.freqs]
        pb = te.tps["prob_bits"]
        self.pb = pb
        self.dtab = rans.DecodeTables(tables.decode_lookup(tabs, pb), [t.size for t in tabs],
                                      True, te.chan_table, pb, dev)
        self.dtab64 = rans.DecodeTables(tables.decode_lookup(tabs, pb), [t.size for t in tabs],
                                        True, te.chan_table, pb, dev, pack32=False)
        self.step = torch.from_numpy(reconstruction.STEP).to(dev)
        rows, offs = recon.chains(pred_h, te.tps["predictor"], np.arange(b) * n)
        self.contiguous = recon.is_contiguous(rows, offs)
        self.rows = torch.from_numpy(rows).to(dev)
        self.offs = torch.from_numpy(offs).to(dev)
        self.out_row = torch.arange(k, device=dev)
        self.out = torch.empty((k, d), dtype=torch.float16, device=dev)
        # one full encode, kept for the decode side
        self.full_encode()
        self.words, self.cw = self.enc_words, self.enc_cw
        self.n_esc = np.bincount((self.esc_pos // (n * d)).cpu().numpy(), minlength=b)
        self.esc_val = self.esc_vals

    def deltas(self):
        """token_step_delta on the device (Annex B.1), as the codec computes them."""
        te = self.s.te
        return quant.step_deltas(quant.squared_norms(self.x, self.src), te.norm_ref,
                                 *te.delta_bounds(te.qp))

    def quantize_only(self, delta, variant=None):
        """The fused quantization kernel alone (levels, residuals, symbols)."""
        v = dict(variant or {})
        prev = v.pop("prev_row", self.prev_row)
        quant.launch_symbols(self.x, self.src, delta, self.pred, self.code, self.inv, self.esc,
                             self.sym_buf, self.u_buf, v, prev)

    def full_encode(self):
        delta = self.deltas()
        sym, pos, vals = quant.symbols(self.x, self.src, delta, self.pred, self.code, self.inv,
                                       self.esc, self.prev_row)
        words, cw, status = rans.encode(self.plan, sym, self.etab, self.chan_enc, self.alph,
                                        self.pb)
        self.sym, self.delta, self.esc_pos, self.esc_vals = sym, delta, pos, vals
        self.enc_words, self.enc_cw, self.enc_status = words, cw, status
        self.sym_buf = torch.empty_like(sym)
        self.u_buf = torch.empty(sym.numel(), dtype=torch.int32, device=sym.device)
        return words

    def rans_encode(self, variant=None):
        return rans.encode(self.plan, self.sym, self.etab, self.chan_enc, self.alph, self.pb,
                           variant)

    def rans_decode(self, variant=None):
        v = dict(variant or {})
        tabs = self.dtab64 if v.pop("table64", False) else self.dtab
        return rans.decode(self.plan, self.words, self.cw, tabs, self.pb, self.n_esc, v)

    def dequant_only(self, variant=None, contiguous=None):
        recon.dequantize(self.sym, self.rows, self.offs, self.out_row, self.delta, self.code,
                         self.step, self.esc, self.uext, self.s.te.tps["predictor"], self.out,
                         self.s.d, self.contiguous if contiguous is None else contiguous,
                         variant=variant)

    def full_decode(self):
        sym, status, pos, count = rans.decode(self.plan, self.words, self.cw, self.dtab,
                                              self.pb, self.n_esc)
        self.uext = recon.escape_values(sym.numel(), self.s.d, self.esc, pos, self.esc_val,
                                        self.s.device)
        recon.dequantize(sym, self.rows, self.offs, self.out_row, self.delta, self.code,
                         self.step, self.esc, self.uext, self.s.te.tps["predictor"], self.out,
                         self.s.d, self.contiguous)
        return self.out


def check_exact(s: Setup, log) -> dict:
    """Frames 0 and 1 of the batch: GPU stream bytes against the reference encoder,
    GPU decode against the reference decoder (the same frames' reference values)."""
    import tokenbits as tkb
    from . import codec
    frames = [s.x[i * s.n:(i + 1) * s.n].cpu().numpy() for i in range(min(2, s.frames))]
    ref = [s.te.encode_frame(f, i) for i, f in enumerate(frames)]
    gpu = codec.encode_frames(s.te, frames, s.device)
    enc_ok = gpu == ref
    data = tkb.encode(np.stack(frames), target_cos=0.99, predictor="left", backend="reference")
    want = tkb.decode(data, backend="reference")
    got = codec.to_numpy(codec.decode(data, device=s.device))
    dec_ok = tkb.canonical_sha256(want) == tkb.canonical_sha256(got)
    log(f"bit-exact on {s.device}: encode bytes {'identical' if enc_ok else 'DIFFER'}, "
        f"decode {'identical' if dec_ok else 'DIFFERS'}")
    return dict(encode_identical=bool(enc_ok), decode_identical=bool(dec_ok))


def run(data: str, min_mb: int = 256, lanes=(32,), batches=(1, 4, 16, 64, 256, 1024, 2048),
        nvcomp=True, log=print, variants=(), num_tables=None,
        prob_bits=None, baselines_: bool = True) -> dict:
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    ms = _timer(dev)
    base = np.load(data)
    n, d = base.shape[1:]
    frame_bytes = n * d * 2
    frames = max(max(batches, default=1), -(-min_mb * 2**20 // frame_bytes))
    res = dict(date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               device=torch.cuda.get_device_name() if dev == "cuda" else platform.processor(),
               torch=torch.__version__, triton=__import__("triton").__version__,
               data=f"{len(base)} distinct {n}x{d} float16 frames of real ViT-S/14 tokens, "
                    f"tiled to {frames} frames", runs={})
    if dev == "cuda":
        from .baselines_gpu import copy_bandwidth
        res["copy"] = copy_bandwidth(frames * frame_bytes)
        log(f"copy: {res['copy']['GBps']:.0f} GB/s (read + write)")
    for ln in lanes:
        t0 = time.time()
        s = Setup(base, frames, ln, dev, num_tables, prob_bits)
        r = res["runs"][f"lanes{ln}"] = dict(tps=dict(num_lanes=s.te.tps["num_lanes"],
                                                      lane_steps=s.te.tps["lane_steps"],
                                                      num_tables=s.te.tps["num_tables"],
                                                      prob_bits=s.te.tps["prob_bits"],
                                                      qp=s.te.qp, predictor=s.te.tps["predictor"]))
        log(f"fitted {r['tps']} in {time.time() - t0:.1f} s")
        r["exact"] = check_exact(s, log)
        big = s.batch(frames)
        nsym = big.sym.numel()
        in_bytes = big.x.numel() * 2
        coded = int(big.words.numel()) * 2
        o0, cond = _entropy(big.sym, torch.from_numpy(s.te.chan_table).to(dev), d, big.alph)
        r["symbols"] = nsym
        # chunks holding a symbol without frequency in its table (none expected)
        r["chunks_with_uncodable_symbols"] = int((big.enc_status != 0).sum())
        log(f"chunks with uncodable symbols: {r['chunks_with_uncodable_symbols']}")
        r["coded_bytes"] = coded
        r["bits_per_symbol"] = 8 * coded / nsym
        r["entropy_order0_bits"] = o0 / nsym
        r["entropy_per_table_bits"] = cond / nsym
        r["over_entropy"] = 8 * coded / cond - 1
        delta = big.deltas()
        t = ms(lambda: big.quantize_only(delta))
        r["quantize"] = dict(ms=t, GBps=(in_bytes + nsym * 2) / t / 1e6,
                             GBps_in=in_bytes / t / 1e6)
        t = ms(big.rans_encode)
        r["rans_encode"] = dict(ms=t, Gsym_s=nsym / t / 1e6, GBps_coded=coded / t / 1e6)
        t = ms(big.rans_decode)
        r["rans_decode"] = dict(ms=t, Gsym_s=nsym / t / 1e6, GBps_coded=coded / t / 1e6)
        t = ms(big.full_encode)
        r["full_encode"] = dict(ms=t, GBps_in=in_bytes / t / 1e6)
        # parts of the full encode: the token norms kernel, and the norms with the step
        # deltas (Annex B.1)
        t = ms(lambda: quant.squared_norms(big.x, big.src))
        r["token_norms"] = dict(ms=t, GBps_in=in_bytes / t / 1e6)
        r["token_deltas_ms"] = ms(big.deltas)
        log(f"  full encode {r['full_encode']['ms']:.2f} ms: token norms kernel "
            f"{r['token_norms']['ms']:.2f} ms, norms and step deltas "
            f"{r['token_deltas_ms']:.2f} ms")
        t = ms(big.full_decode)
        r["full_decode"] = dict(ms=t, GBps_out=in_bytes / t / 1e6)
        big.full_decode()
        t = ms(big.dequant_only)
        r["dequantize"] = dict(ms=t, GBps_out=in_bytes / t / 1e6)
        if variants:
            r["variants"] = sweep_variants(big, delta, ms, nsym, in_bytes, log, variants)
        log(f"lanes {ln}: {r['bits_per_symbol']:.3f} bits/sym (entropy {r['entropy_per_table_bits']:.3f}"
            f" per table, {r['entropy_order0_bits']:.3f} order-0), quantize "
            f"{r['quantize']['GBps']:.0f} GB/s, rANS enc {r['rans_encode']['Gsym_s']:.0f} / dec "
            f"{r['rans_decode']['Gsym_s']:.0f} Gsym/s, full enc {r['full_encode']['GBps_in']:.0f}"
            f" / dec {r['full_decode']['GBps_out']:.0f} GB/s")
        sweep = r["batch_sweep"] = []
        for b in batches:
            if b > frames:
                continue
            bb = s.batch(b)
            te_ = ms(bb.full_encode)
            td = ms(bb.full_decode)
            trd = ms(bb.rans_decode)
            sweep.append(dict(frames=b, full_encode_GBps=b * frame_bytes / te_ / 1e6,
                              full_decode_GBps=b * frame_bytes / td / 1e6,
                              rans_decode_Gsym_s=b * n * d / trd / 1e6,
                              full_decode_ms=td))
            log(f"  batch {b}: enc {sweep[-1]['full_encode_GBps']:.1f} GB/s, dec "
                f"{sweep[-1]['full_decode_GBps']:.1f} GB/s ({td:.3f} ms), rANS dec "
                f"{sweep[-1]['rans_decode_Gsym_s']:.1f} Gsym/s")
        if ln == lanes[0] and baselines_:
            res["baselines"] = baselines(big, dev, nvcomp, log)
        if dev == "cuda":
            try:
                r["kernels"] = kernel_resources(log)
            except Exception as e:          # the cache layout differs between Triton versions
                r["kernels"] = {"error": repr(e)}
                log(f"  kernel resources unavailable: {e!r}")
        del big
    return res


# each changes the default launch in the settings it names: quant.ROWS_VARIANT (the
# row loop) or, with ROWS=0 or prev_row=False, quant.SYMBOLS_VARIANT (the tile kernel)
QUANT_VARIANTS = [dict(prev_row=False), dict(ROWS=0), dict(BC=256), dict(UNROLL=2),
                  dict(BC=1024), dict(ROWS=32), dict(ROWS=128), dict(RNI=False)]
# each changes the default (recon.DEQUANT_VARIANT) in the settings it names
DEQUANT_VARIANTS = [dict(ROWS=False), dict(ROWS_BC=256, ROWS_WARPS=1), dict(ROWS_WARPS=1),
                    dict(ROWS_BC=1024, ROWS_WARPS=4), dict(ROWS_BC=1024),
                    dict(ROWS=False, BR=2), dict(ROWS=False, SMEM_STEP=False),
                    dict(contiguous=False)]
COMPACT_VARIANTS = [dict(BLOCK=1024, num_warps=4), dict(BLOCK=4096, num_warps=4),
                    dict(BLOCK=4096, num_warps=8), dict(BLOCK=2048, num_warps=2),
                    dict(BLOCK=8192, num_warps=8)]
# each encode / decode variant changes the default launch (rans.ENCODE_VARIANT,
# rans.DECODE_VARIANT) in the settings it names
ENCODE_VARIANTS = [dict(REL=False), dict(PF=0, SDEPTH=2), dict(PF=0), dict(SDEPTH=2),
                   dict(PF=4), dict(PF=16), dict(G=4)]
DECODE_VARIANTS = [dict(PADDED=False), dict(SMEM=False), dict(SYMBYTES=False),
                   dict(SMEM=False, SYMBYTES=False), dict(SYMBYTES=False, RING=False),
                   dict(SMEM_MAXNREG=0), dict(LINKS=False),
                   dict(SMEM_G=16), dict(SMEM_G=4), dict(SMEM=False, G=2),
                   dict(SYMSMEM=False), dict(SYMSMEM=False, SMEM2_G=16),
                   dict(SYMSMEM_G=16), dict(SMEM2_MAXNREG=48), dict(SMEM_G=32, SMEM_MAXNREG=64),
                   dict(SMEM_G=16, SMEM_MAXNREG=64), dict(SYMSMEM_G=64, SMEM_PER_WARP=2)]


SWEEPS = ("quantize", "encode", "dequantize", "decode")


def sweep_variants(big: Batch, delta, ms, nsym: int, in_bytes: int, log,
                   which=SWEEPS) -> dict:
    """Launch variants of the kernels named in ``which`` (of SWEEPS) on the same batch,
    each checked bit for bit against the default launch's output."""
    out = dict(quantize=[], rans_decode=[], rans_encode=[], dequantize=[])
    sym_want = big.sym.clone()
    words_want = big.words.clone()
    big.full_decode()
    out_want = big.out.clone()

    def same(a, b) -> bool:
        return a.shape == b.shape and bool(torch.equal(a, b))

    def record(kind, v, t, ok, **rates):
        out[kind].append(dict(v, ms=t, exact=ok, **rates))
        log(f"  {kind} {v}: " + ", ".join(f"{k} {r:.0f}" for k, r in rates.items())
            + f", exact {ok}")

    if "quantize" in which:
        d = big.esc.numel()
        for v in QUANT_VARIANTS:
            big.sym_buf.zero_()
            big.u_buf.zero_()
            t = ms(lambda: big.quantize_only(delta, v))
            esc_ok = same(big.u_buf[big.esc_pos].to(torch.int64)
                          - big.esc[big.esc_pos % d].to(torch.int64), big.esc_vals)
            record("quantize", v, t, same(big.sym_buf, sym_want) and esc_ok,
                   GBps=(in_bytes + nsym * 2) / t / 1e6)
        keep = big.pred
        big.pred = torch.full_like(keep, -1)          # no prediction: one row read per row
        t = ms(lambda: big.quantize_only(delta))
        big.pred = keep
        out["quantize_no_prediction"] = dict(ms=t, GBps=(in_bytes + nsym * 2) / t / 1e6)
        log(f"  quantize without prediction: {out['quantize_no_prediction']['GBps']:.0f} GB/s")
    if "encode" in which:
        t = ms(lambda: rans.encode(big.plan, big.sym, big.etab, big.chan_enc, big.alph, big.pb,
                                   compact=False))
        out["rans_encode_kernel_only"] = dict(ms=t, Gsym_s=nsym / t / 1e6)
        log(f"  rANS encode kernel without compaction: "
            f"{out['rans_encode_kernel_only']['Gsym_s']:.0f} Gsym/s")
        out["compaction"] = []
        for cv in COMPACT_VARIANTS:
            t = ms(lambda: rans.encode(big.plan, big.sym, big.etab, big.chan_enc, big.alph,
                                       big.pb, compact_variant=cv))
            out["compaction"].append(dict(cv, ms=t, Gsym_s=nsym / t / 1e6))
            log(f"  rANS encode with compaction {cv}: {nsym / t / 1e6:.0f} Gsym/s")
        for v in ENCODE_VARIANTS:
            t = ms(lambda: big.rans_encode(v))
            record("rans_encode", v, t, same(big.rans_encode(v)[0], words_want),
                   Gsym_s=nsym / t / 1e6)
    if "dequantize" in which:
        for v in DEQUANT_VARIANTS:
            v = dict(v)
            contig = v.pop("contiguous", None)
            big.out.zero_()
            t = ms(lambda: big.dequant_only(v, contig))
            record("dequantize", dict(v, contiguous=contig), t, same(big.out, out_want),
                   GBps_out=in_bytes / t / 1e6)
    if "decode" in which:
        log(f"  slot tables fit shared memory (SMEM variants): {big.dtab.smem is not None}; "
            f"symbol tables (SMEM2 variants): {big.dtab.sym_smem is not None}")
        # diagnostic: the per-step escape check and position recording, measured by
        # decoding as if the batch declared no escapes (escapes then only counted per lane)
        t = ms(lambda: rans.decode(big.plan, big.words, big.cw, big.dtab, big.pb, None))
        ok = same(rans.decode(big.plan, big.words, big.cw, big.dtab, big.pb, None)[0], sym_want)
        out["rans_decode_no_positions"] = dict(ms=t, Gsym_s=nsym / t / 1e6, exact=ok)
        log(f"  rANS decode counting escapes only: {nsym / t / 1e6:.0f} Gsym/s, exact {ok}")
        for v in DECODE_VARIANTS:
            t = ms(lambda: big.rans_decode(v))
            record("rans_decode", v, t, same(big.rans_decode(v)[0], sym_want),
                   Gsym_s=nsym / t / 1e6)
    return out


def dump_kernels(out_dir: str) -> None:
    """The PTX, cubin (and SASS where the build has it) of every compiled kernel variant,
    with its cache key (the specialization) beside it."""
    os.makedirs(out_dir, exist_ok=True)
    for mod in (rans, quant, recon):
        for name in dir(mod):
            cache = getattr(getattr(mod, name), "device_caches", None)
            if cache is None:
                continue
            for dev_cache in cache.values():
                for i, (key, ck) in enumerate(dev_cache[0].items()):
                    with open(os.path.join(out_dir, f"{name}.{i}.key"), "w") as f:
                        f.write(str(key))         # the specialization: constexprs, options
                    for kind in ("ptx", "sass", "cubin"):
                        text = ck.asm.get(kind) if hasattr(ck, "asm") else None
                        if text:
                            with open(os.path.join(out_dir, f"{name}.{i}.{kind}"),
                                      "w" if isinstance(text, str) else "wb") as f:
                                f.write(text)


def kernel_resources(log) -> dict:
    """Registers, spills, shared memory (and the SASS instruction count where the
    Triton build exposes SASS) of each compiled kernel variant: the static part of a
    profile (for the counters, run ``ncu`` on ``--profile``)."""
    out = {}
    for mod in (rans, quant, recon):
        for name in dir(mod):
            k = getattr(mod, name)
            cache = getattr(k, "device_caches", None)
            if cache is None or not name.startswith("_") or not name.endswith("_kernel"):
                continue
            for dev_cache in cache.values():
                for key, ck in dev_cache[0].items():
                    sass = ck.asm.get("sass", "") if hasattr(ck, "asm") else ""
                    n_instr = sum(1 for line in sass.splitlines() if "/*" in line and ";" in line)
                    r = dict(kernel=name, n_regs=getattr(ck, "n_regs", None),
                             n_spills=getattr(ck, "n_spills", None), sass_instructions=n_instr,
                             shared=getattr(ck.metadata, "shared", None)
                             if hasattr(ck, "metadata") else None)
                    out.setdefault(name, []).append(r)
                    sass_note = f", {n_instr} SASS instructions" if n_instr else ""
                    log(f"  {name}: {r['n_regs']} registers, {r['n_spills']} spills"
                        f"{sass_note}, {r['shared']} B shared")
    return out


def baselines(big: Batch, dev: str, nvcomp: bool, log) -> dict:
    out = {}
    if dev != "cuda":
        return out
    from . import baselines_gpu as bg
    inv = big.inv[big.code.long()]
    x = big.x
    for compiled in (False, True):
        r = bg.torch_quantize(x, inv, compiled)
        r.pop("out", None)
        out["torch_compile" if compiled else "torch_eager"] = r
        log(f"torch {'compile' if compiled else 'eager'} quantize: {r}")
    if nvcomp and int(big.sym.max()) < 256:
        u8 = big.sym.to(torch.uint8)
        for chunk in (1 << 16, 1 << 18):
            r = bg.nvcomp_ans(u8, chunk_size=chunk)
            out[f"nvcomp_ans_{chunk >> 10}k"] = r
            log(f"nvCOMP ANS {chunk >> 10} KiB: {r}")
    elif nvcomp:
        out["nvcomp"] = {"error": "symbols beyond 255 do not fit nvCOMP's uint8 input"}
    return out


def profile(data: str, frames: int, num_tables=None, prob_bits=None, log=print) -> None:
    """One full encode and one full decode of ``frames`` frames between
    cudaProfilerStart and cudaProfilerStop, after a first round that compiles every
    kernel: for ``ncu --profile-from-start off`` (BENCHMARKS.md, "Profiles")."""
    base = np.load(data)
    s = Setup(base, frames, 32, "cuda", num_tables, prob_bits)
    big = s.batch(frames)                 # encodes once: the encode kernels compile
    big.full_decode()
    torch.cuda.synchronize()
    log(f"profiling {frames} frames, parameter set {dict(s.te.tps)}")
    torch.cuda.cudart().cudaProfilerStart()
    big.full_encode()
    big.full_decode()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()


# launches of the transform decode, timed stage by stage (_stage_sweep): the limb GEMM's
# shape, F64 (the binary64 epilogue), KEXT (limb-1 products only up to each block's limb-1
# extent), HORNER (one accumulator); the fused levels pass's LEVELS_BC coefficients and
# LEVELS_PF rows' loads ahead, LEVELS_WARPS warps
GEMM_SWEEP = [None, dict(HORNER=True), dict(HORNER=True, F64=False)] + [
    dict(s, HORNER=True, F64=True, KEXT=True) for s in (
        dict(BM=128, BN=128, BK=64, num_warps=8, num_stages=3),
        dict(BM=128, BN=128, BK=64, num_warps=4, num_stages=3),
        dict(BM=128, BN=256, BK=64, num_warps=8, num_stages=3),
        dict(BM=64, BN=256, BK=64, num_warps=8, num_stages=3))]
LEVELS_SWEEP = [None] + [dict(LEVELS_BC=bc, LEVELS_WARPS=w, LEVELS_PF=pf)
                         for bc, w, pf in ((128, 2, 2), (128, 2, 4), (64, 1, 4), (128, 1, 2),
                                           (128, 1, 4), (256, 4, 4), (256, 2, 2), (512, 4, 2))]
# (one warp: no barrier in the row loop of Triton 3.6's SASS for sm_90, at BC 64 or 128;
# at 2 warps each row waits at 6 BAR.SYNC)


def _checked(fn):
    """fn() with kernels.transform.unset giving all-ones bytes: a launch that leaves a
    value unwritten cannot pass a check by reusing an earlier launch's memory (PyTorch's
    caching allocator hands a freed block to the next tensor of its size)."""
    from . import transform as tk
    unset, tk.unset = tk.unset, tk.all_ones
    try:
        return fn()
    finally:
        tk.unset = unset


def _stage_sweep(tps, ps, st, bench_ms, log) -> dict:
    """The stages of the transform decode timed alone on the staged batch: rANS decode,
    levels as binary32 (recon.dequantize) then the coefficient limb planes (ylimbs), or
    both at once (the fused levels_limbs, each of LEVELS_SWEEP), then the limb GEMM (each
    of GEMM_SWEEP).  Each variant's output is compared with the default launch's (exact:
    limb planes and block statistics; channels bit for bit); the fastest exact variant of
    each stage is returned as ``best_levels`` and ``best_gemm``."""
    from . import rans, recon
    from . import transform as tk
    dt, d = ps.transform, st.d
    sym, _, esc_pos, _ = rans.decode(st.plan, st.t_words, st.t_cw, ps.tables,
                                     tps["prob_bits"], st.n_esc)
    uext = recon.escape_values(sym.numel(), d, ps.esc, esc_pos,
                               torch.from_numpy(st.esc_vals[:esc_pos.numel()]).to(sym.device),
                               sym.device)
    r = int(st.kept.sum())
    pred = tps.get("predictor", 0) or 0
    lev = torch.empty((r, d), dtype=torch.float32, device=sym.device)
    status = torch.zeros(r, dtype=torch.int32, device=sym.device)

    def levels():
        recon.dequantize(sym, st.t_rows, st.t_offs, st.lev_rows, st.t_delta, ps.t_code,
                         ps.ones, ps.esc, uext, pred, lev, d, st.contiguous, False,
                         variant=dict(ALU_STEP=False))

    def fused(v=None):
        return tk.levels_limbs(sym, st.t_offs, st.t_delta, ps.t_code, ps.esc, uext, dt, pred,
                               dict(v or {}, FUSED=True))
    levels()
    limbs, blocks, _, _ = _checked(fused)
    res = dict(rans_ms=bench_ms(lambda: rans.decode(st.plan, st.t_words, st.t_cw, ps.tables,
                                                    tps["prob_bits"], st.n_esc)),
               levels_f32_ms=bench_ms(levels),
               ylimbs_ms=bench_ms(lambda: tk.ylimbs(lev, st.t_delta, ps.t_code, dt, status)),
               limb1_extent_mean=float(blocks[1].double().mean()) if r else 0.0,
               limb_counts=sorted(set(blocks[0].cpu().tolist())),
               blocks_beyond_hmax=int((blocks[2] > dt.hmax).sum()), hmax=dt.hmax)
    log("  stages alone: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in res.items()))

    def sweep(kind, variants, run, same):
        rows, best = [], None
        for v in variants:
            try:
                ok = _checked(lambda: same(run(v)))
                ms = bench_ms(lambda: run(v))
            except Exception as e:      # a launch this GPU cannot compile
                log(f"  {kind} {v}: {type(e).__name__}: {str(e)[:160]}")
                continue
            rows.append(dict(variant=v, ms=ms, exact=ok))
            log(f"  {kind} {v or 'default'}: {ms:.3f} ms, same as the default {ok}")
            if ok and (best is None or ms < best[0]):
                best = (ms, v)
        return rows, best[1] if best else None

    k = dt.k
    res["levels_sweep"], res["best_levels"] = sweep(
        "fused levels", LEVELS_SWEEP, fused,
        lambda o: bool(torch.equal(o[0][:2, :, :k], limbs[:2, :, :k])
                       and torch.equal(o[1], blocks)))
    want = tk.all_ones(st.shape, torch.float16, sym.device)
    tk.limb_gemm(limbs, blocks, dt, want, st.t_out_row)

    def gemm(v):
        out = tk.unset(st.shape, torch.float16, sym.device)
        tk.limb_gemm(limbs, blocks, dt, out, st.t_out_row, v)
        return out
    res["gemm_sweep"], res["best_gemm"] = sweep(
        "limb GEMM", GEMM_SWEEP, gemm,
        lambda o: bool(torch.equal(o.view(torch.int16), want.view(torch.int16))))
    return res


def _inverse_breakdown(ps, st, variant, bench_ms, log) -> dict:
    """The two launches of kernels.transform.inverse timed alone, on levels of the batch's
    shape (random small integers, two Y limbs; and with one large value per block, four):
    where the time goes."""
    from . import transform as tk
    dt = ps.transform
    r = int(st.kept.sum())
    res = dict(rows=r, coeffs=dt.k, basis_limbs=dt.nb)
    variant = tk.split_variant(variant)[1]
    for tag, big in (("", False), ("_4limbs", True)):
        lev = torch.randint(-20, 21, (r, dt.k), device="cuda").to(torch.float32)
        if big:
            lev[::tk.LIMB_ROWS, 0] = float(1 << 22)    # |Y| > 32639 in every block
        delta = torch.zeros(r, dtype=torch.int32, device="cuda")
        out = torch.empty((r, dt.d), dtype=torch.float16, device="cuda")
        rows = torch.arange(r, device="cuda")
        status = torch.zeros(r, dtype=torch.int32, device="cuda")
        limbs, blocks = tk.ylimbs(lev, delta, ps.t_code, dt, status)
        res["limb_counts" + tag] = sorted(set(blocks[0].cpu().tolist()))
        res["ylimbs_ms" + tag] = bench_ms(lambda: tk.ylimbs(lev, delta, ps.t_code, dt, status))
        res["gemm_ms" + tag] = bench_ms(lambda: tk.limb_gemm(limbs, blocks, dt, out, rows,
                                                             variant))
        res["full_ms" + tag] = bench_ms(lambda: tk.inverse(lev, delta, ps.t_code, dt, out, rows,
                                                           variant))
        nlimb = max(res["limb_counts" + tag])
        res["gemm_tmac_per_s" + tag] = nlimb * dt.nb * r * dt.kp * dt.d / res["gemm_ms" + tag] / 1e9
        log(f"  inverse alone{tag} {res['full_ms' + tag]:.2f} ms: coefficient limbs "
            f"{res['ylimbs_ms' + tag]:.2f} ms, limb GEMM {res['gemm_ms' + tag]:.2f} ms "
            f"({res['gemm_tmac_per_s' + tag]:.0f} T int8 MAC/s, Y limbs "
            f"{res['limb_counts' + tag]}, {dt.nb} basis limb(s))")
    return res


def transform_streams(data: str, energy: float = 0.999, coeffs=None, log=print) -> dict:
    """The transform decode's inputs: the transform fitted on the frames of ``data``
    ("model") and, for "today" and "transform", the reference encoder's stream of those frames, its
    reference decode and the encode's seconds.  Cached beside ``data``
    (transform_streams.pkl, keyed by the frames' SHA-256, energy and K), so that a GPU
    run with the cache carried spends no device time on the reference encoder and
    decoder (``--prepare-transform``)."""
    import hashlib
    import pickle
    from pathlib import Path

    from tokenbits import decoder, encoder, transform_fit
    base = np.load(data)
    key = (hashlib.sha256(base.tobytes()).hexdigest(), energy, coeffs)
    cache = Path(data).with_name("transform_streams.pkl")
    if cache.exists():
        with open(cache, "rb") as f:
            res = pickle.load(f)
        if res.get("key") == key:
            log(f"streams from {cache}")
            return res
    x = base.astype(np.float32)
    t = transform_fit.fit_transform(x, energy=None if coeffs else energy, coeffs=coeffs)
    res = dict(key=key, model=t)
    for name, opts in (("today", {}), ("transform", dict(transform=t))):
        t0 = time.perf_counter()
        stream = encoder.encode(base, target_cos=0.99, predictor="left", num_lanes=32, **opts)
        enc_s = time.perf_counter() - t0
        ref = decoder.decode(stream, transforms=[t])
        res[name] = (stream, np.concatenate([f.values for f in ref.frames]), enc_s)
    try:
        with open(cache, "wb") as f:
            pickle.dump(res, f)
    except OSError:
        pass
    return res


def transform_decode(data: str, frames: int = 2048, energy: float = 0.999,
                     coeffs=None, log=print, device: str = "cuda", profile=None) -> dict:
    """Full GPU decode (the device work of codec.launch_batch: rANS, escapes, levels,
    inverse transform, float16 out) of ``frames`` frames of 576 x 1024 real tokens coded
    with a model transform (by reference, fitted on the same frames: a speed figure),
    beside today's path (no transform) on the same frames in the same run.  Each stream
    is encoded by the reference encoder from the distinct frames, which the batch repeats;
    the decoded values of the distinct frames are compared with the reference decoder.
    ``profile`` (a launch variant, {} for the default): no sweep and no "today"; the
    default and that variant decode the batch once more between cudaProfilerStart and
    cudaProfilerStop (for ``ncu --profile-from-start off``)."""
    from tokenbits import decoder
    from tokenbits.baselines import mean_token_cosine
    from . import codec
    from .transform import TRANSFORM_VARIANT
    bench_ms = _timer(device)
    base = np.load(data)
    x = base.astype(np.float32)
    inputs = transform_streams(data, energy, coeffs, log)
    t = inputs["model"]
    log(f"transform: D {t.num_channels}, K {t.num_coeffs}, energy kept "
        f"{t.meta['transform.energy']}")
    dev = device
    out = dict(frames=frames, shape=list(base.shape[1:]), coeffs=t.num_coeffs,
               energy=float(t.meta["transform.energy"]))
    for name in ("transform",) if profile is not None else ("today", "transform"):
        stream, want, enc_s = inputs[name]
        parsed = list(decoder.parsed_frames(stream, [t]))
        tps, frs = parsed[0][1], [fr for _, _, fr in parsed]
        ps = codec._ParamSet(tps, dev)
        small = codec.stage_batch(tps, frs, ps, dev)
        got = codec.launch_batch(tps, ps, small)[0].cpu().numpy()
        exact = bool(np.array_equal(got.view(np.uint16), want.view(np.uint16)))
        st = codec.stage_batch(tps, [frs[i % len(frs)] for i in range(frames)], ps, dev)
        nbytes = frames * base.shape[1] * base.shape[2] * 2
        variants = [None]
        if name == "transform" and profile is not None:
            variants += [profile] if profile else []
        elif name == "transform":   # each stage's launches alone, then the best together
            out["stages"] = _stage_sweep(tps, ps, st, bench_ms, log)
            combo = dict(out["stages"]["best_levels"] or {}, **(out["stages"]["best_gemm"] or {}))
            variants += [combo] if combo else []
        # the whole batch against the reference too (only a large batch takes the fused path)
        want_t = torch.from_numpy(want.view(np.int16)).to(dev).view(len(base), *base.shape[1:])
        pick = torch.arange(frames, device=dev) % len(base)
        best, out[name + "_variants"] = None, []
        for v in variants:
            ok = _checked(lambda: np.array_equal(
                codec.launch_batch(tps, ps, small, v)[0].cpu().numpy().view(np.uint16),
                want.view(np.uint16)))
            ok_all = _checked(lambda: bool(torch.equal(
                codec.launch_batch(tps, ps, st, v)[0].view(torch.int16)
                .view(frames, *base.shape[1:]), want_t[pick])))
            t_ms = bench_ms(lambda: codec.launch_batch(tps, ps, st, v))
            out[name + "_variants"].append(dict(variant=v, ms=t_ms, exact=ok, exact_batch=ok_all))
            log(f"  {name} {v or 'default ' + str(TRANSFORM_VARIANT)}: {t_ms:.3f} ms, "
                f"{nbytes / t_ms / 1e6:.1f} GB/s, exact {ok}, whole batch exact {ok_all}")
            if ok and ok_all and (best is None or t_ms < best[0]):
                best = (t_ms, v)
        ms, variant = best
        out[name + "_variant"] = variant
        if profile is not None and device == "cuda":
            torch.cuda.cudart().cudaProfilerStart()
            for v in variants:
                codec.launch_batch(tps, ps, st, v)
            torch.cuda.synchronize()
            torch.cuda.cudart().cudaProfilerStop()
        elif name == "transform" and device == "cuda":
            out["inverse_breakdown"] = _inverse_breakdown(ps, st, variant, bench_ms, log)
        out[name] = dict(ms=ms, gb_per_s=nbytes / ms / 1e6, exact=exact,
                         bits_per_value=8 * len(stream) / base.size,
                         cosine=float(mean_token_cosine(x.reshape(-1, x.shape[2]),
                                                        want.astype(np.float32))),
                         encode_s=enc_s, qp=int(tps["step_code"][0]) - 144)
        log(f"{name:9s} full decode {ms:8.3f} ms  {out[name]['gb_per_s']:7.1f} GB/s float16 out"
            f"  exact {exact}  {out[name]['bits_per_value']:.3f} b/v  cos "
            f"{out[name]['cosine']:.4f}  (reference encode {enc_s:.1f} s)")
    return out


def prune_encode(data: str, frames: int = 256, keep: float = 0.125, log=print,
                 device: str = "cuda") -> dict:
    """GPU encode (``tokenbits.encode``, backend "gpu", fixed qp) of ``frames`` frames of
    576 x 1024 real tokens (the distinct frames repeated), pruned to ``keep`` by the
    default policy (balanced: similarity levels and greedy on the GPU, kernels/prune.py)
    with merge maps, beside the same encode unpruned, in the same run; and the selection
    alone.  The pruned stream of the distinct frames is compared with the reference
    encoder's bytes."""
    import tokenbits as tb
    from . import prune as prune_k
    base = np.load(data)
    n, d = base.shape[1], base.shape[2]
    x = torch.from_numpy(np.concatenate([base] * -(-frames // len(base)))[:frames]).to(device)
    opts = dict(qp=-6, num_lanes=32, predictor="left")
    pruned = dict(opts, keep=keep, merge_map=True)
    small = torch.from_numpy(base).to(device)
    exact = tb.encode(small, backend="gpu", device=device, **pruned) == \
        tb.encode(base, backend="reference", **pruned)
    log(f"pruned GPU encode of the {len(base)} distinct frames equals the reference: {exact}")
    out = dict(frames=frames, keep=keep, exact=bool(exact), options=pruned)
    for name, o in (("unpruned", opts), ("pruned", pruned)):
        tb.encode(x, backend="gpu", device=device, **o)              # compile, warm up
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        stream = tb.encode(x, backend="gpu", device=device, **o)
        if device == "cuda":
            torch.cuda.synchronize()
        sec = time.perf_counter() - t0
        out[name] = dict(s=sec, frames_per_s=frames / sec, bytes=len(stream),
                         bits_per_value=8 * len(stream) / x.numel())
        log(f"{name:9s} GPU encode {frames} frames: {sec * 1e3:9.1f} ms "
            f"({frames / sec:7.1f} frames/s), {out[name]['bits_per_value']:.3f} b/v")
    counts = np.full(frames, n, dtype=np.int64)
    starts = np.arange(frames, dtype=np.int64) * n
    rows = x.reshape(-1, d)
    bench_ms = _timer(device)
    out["select_ms"] = bench_ms(lambda: prune_k.select_coverage(rows, starts, counts, 0, keep,
                                                                balance=True))
    kept = prune_k.select_coverage(rows, starts, counts, 0, keep, balance=True)
    out["stand_ins_ms"] = bench_ms(lambda: prune_k.stand_ins(rows, starts, counts, kept))
    log(f"selection alone {out['select_ms']:.1f} ms, stand-ins alone {out['stand_ins_ms']:.1f} ms"
        f" ({frames} frames of {n} tokens, keep {keep})")
    return out


def _write_json(res: dict, path) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(res, f, indent=1, default=str)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prepare", metavar="DIR", help="write DIR/vit_frames.npy and stop")
    p.add_argument("--data", metavar="NPY")
    p.add_argument("--json", metavar="OUT")
    p.add_argument("--min-mb", type=int, default=256)
    p.add_argument("--lanes", default="32", help="comma-separated num_lanes to run")
    p.add_argument("--batches", default="1,4,16,64,256,1024,2048")
    p.add_argument("--no-nvcomp", action="store_true")
    p.add_argument("--dump", metavar="DIR", help="write each compiled kernel's PTX there")
    p.add_argument("--no-baselines", action="store_true",
                   help="skip torch and nvCOMP baselines (exploratory runs only)")
    p.add_argument("--variants", nargs="?", const=",".join(SWEEPS), default="",
                   help="sweep kernel launch variants: all, or a comma-separated subset of "
                        + ", ".join(SWEEPS))
    p.add_argument("--tables", type=int, help="num_tables of the fitted parameter set")
    p.add_argument("--prob-bits", type=int, help="prob_bits of the fitted parameter set")
    p.add_argument("--profile", type=int, metavar="FRAMES",
                   help="only encode and decode FRAMES frames once, inside a profiler range")
    p.add_argument("--transform", type=int, nargs="?", const=2048, metavar="FRAMES",
                   help="only the transform decode (TKB 1.1) against today's path")
    p.add_argument("--coeffs", type=int, help="--transform: K (default: energy 0.999)")
    p.add_argument("--prepare-transform", action="store_true",
                   help="with --data: encode and reference-decode the transform decode's "
                        "streams into the cache beside the data (transform_streams.pkl) and stop")
    p.add_argument("--profile-transform", metavar="JSON",
                   help="--transform: no sweep; decode once more with the default launch and "
                        "this variant (a JSON dict) inside a profiler range, for ncu")
    p.add_argument("--prune", type=int, nargs="?", const=256, metavar="FRAMES",
                   help="only the pruned GPU encode (issue 16) against the unpruned one")
    a = p.parse_args(argv)
    if a.prepare_transform:
        transform_streams(a.data, coeffs=a.coeffs)
        return 0
    if a.prune or a.transform:      # one section alone: issue 16's or issue 15's
        log = lambda m: print(m, flush=True)  # noqa: E731
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        res = (prune_encode(a.data, a.prune, log=log, device=dev) if a.prune else
               transform_decode(a.data, a.transform, coeffs=a.coeffs, log=log, device=dev,
                                profile=None if a.profile_transform is None else
                                json.loads(a.profile_transform)))
        _write_json(res, a.json)
        return 0
    if a.prepare:
        print(prepare(a.prepare))
        return 0
    if a.profile:
        profile(a.data, a.profile, a.tables, a.prob_bits)
        return 0
    res = run(a.data, a.min_mb, tuple(int(v) for v in a.lanes.split(",")),
              tuple(int(v) for v in a.batches.split(",") if v), not a.no_nvcomp,
              log=lambda m: print(m, flush=True),
              variants=tuple(v for v in a.variants.split(",") if v), num_tables=a.tables,
              prob_bits=a.prob_bits, baselines_=not a.no_baselines)
    _write_json(res, a.json)
    if a.dump:
        dump_kernels(a.dump)
    return 0


if __name__ == "__main__":
    sys.exit(main())
