"""``tkb bench``: size, fidelity and speed on real tokens, baselines in the same run.

Datasets (brief section 10, generated offline and cached): ViT-S/14 hidden
states of real images (last layer and a middle layer; CLS + 16x16 grid, 384
channels), all-MiniLM-L6-v2 hidden states and token ids of real English text.
For each: TKB lossy at several qualities (bits per value with everything
counted: stream header, parameter sets, tables, frame headers, index),
mean token cosine against the float32 tokens, encode/decode time, the rANS
payload against the empirical entropy of its symbols; TKB lossless; and
float16 raw, zstd-19, int8 and int4 absmax measured in the same run.
Also CPU speed on one 576 x 1024 float16 frame.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone

import numpy as np

from . import baselines, decoder, levels, rans, realdata, tables
from .encoder import encode

VIT_IMAGES = ("astronaut", "coffee", "chelsea", "rocket")


def _best(fn, repeat: int):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def entropy_report(data: bytes) -> dict:
    """rANS payload bits of every frame against the empirical entropy of its symbols,
    each symbol counted under the table that codes it (counts taken over the stream)."""
    h = decoder.parse_stream_header(data)
    lv = levels.get_level(h.level_idc)
    dec = decoder.Decoder(h)
    counts: dict = {}
    payload_bits = 0
    state_bits = 0
    for u in decoder.iter_units(data, lv):
        if u.unit_type != decoder.UNIT_FRAME:
            dec.add_unit(u)
            continue
        tps = dec.stream.tracks[u.track_id][u.payload[0]]
        fr = decoder.parse_frame(u.payload, tps, lv)
        k, d = fr["num_kept"], tps["num_channels"]
        base = tps["channel_table"] << tps["prob_bits"] if tps["num_tables"] > 1 else None
        sym = rans.decode(fr["rans_data"], fr["chunk_words"], k * d, tps["num_lanes"],
                          tps["lane_steps"], tables.decode_lookup(tps["tables"], tps["prob_bits"]),
                          tps["prob_bits"], base, d)
        table = np.tile(tps["channel_table"], k)
        key = (u.track_id, u.payload[0])
        alph = max(t.size for t in tps["tables"])
        c = np.bincount(table * alph + sym, minlength=tps["num_tables"] * alph)
        counts[key] = counts.get(key, 0) + c.reshape(tps["num_tables"], alph)
        payload_bits += 16 * int(fr["rans_data"].size)
        lanes = rans._Layout(k * d, tps["num_lanes"], tps["lane_steps"]).num_cols
        state_bits += 32 * lanes
    ent = 0.0
    for c in counts.values():
        for row in c:
            nz = row[row > 0].astype(np.float64)
            if nz.size:
                ent += float(-(nz * np.log2(nz / nz.sum())).sum())
    return dict(payload_bits=payload_bits, entropy_bits=ent, state_bits=state_bits,
                overhead=payload_bits / ent - 1 if ent else 0.0)


def _tkb_row(name, x, grid, prefix, repeat, **opts):
    enc_s, data = _best(lambda: encode(x, grid=grid, prefix_tokens=prefix, **opts), repeat)
    dec_s, s = _best(lambda: decoder.decode(data), repeat)
    y = np.stack([f.values for f in s.frames]).astype(np.float32)
    lossless = bool(opts.get("lossless"))
    ref = x.astype(np.float32)
    row = dict(method=name, bits_per_value=8 * len(data) / x.size,
               mean_cos=baselines.mean_token_cosine(ref, y), encode_ms=enc_s * 1e3,
               decode_ms=dec_s * 1e3, lossless=lossless and np.array_equal(
                   y.view(np.uint32), ref.view(np.uint32)) if x.dtype == np.float32 else
               lossless and np.array_equal(np.stack([f.values for f in s.frames]).view(np.uint8),
                                           x.view(np.uint8)))
    er = entropy_report(data)
    row.update(rans_overhead=er["overhead"], payload_bits=er["payload_bits"],
               entropy_bits=er["entropy_bits"], bytes=len(data))
    tps = s.tracks[0][0]
    row["tools"] = (f"pred={tps.get('predictor', '-')} tables={tps['num_tables']} "
                    f"pb={tps['prob_bits']} lanes={tps['num_lanes']}x{tps['lane_steps']}")
    return row


def _baseline_rows(x, repeat):
    rows = []
    for r in baselines.run_baselines(x.astype(np.float32), repeat=repeat):
        rows.append(dict(method=r.name, bits_per_value=r.bits_per_value, mean_cos=r.mean_cos,
                         encode_ms=r.encode_s * 1e3, decode_ms=r.decode_s * 1e3,
                         lossless=r.lossless))
    return rows


def datasets(quick: bool):
    n = 2 if quick else 4
    yield ("ViT-S/14 last layer, %d images" % n,
           realdata.vit_tokens(VIT_IMAGES[:n], layer="last").astype(np.float16), (16, 16), 1)
    if not quick:
        yield ("ViT-S/14 layer 6, 4 images",
               realdata.vit_tokens(VIT_IMAGES, layer=6).astype(np.float16), (16, 16), 1)
    yield ("MiniLM-L6 last layer, %d x 128 tokens" % (4 if quick else 8),
           realdata.minilm_tokens(num_chunks=4 if quick else 8).astype(np.float16), None, 0)


def large_frame() -> np.ndarray:
    """A 576 x 1024 float16 frame of real tokens: ViT-S/14 layers 9, 10 and 11 side by side
    (1152 channels, first 1024 kept), patch tokens of 3 images (first 576 kept)."""
    parts = [realdata.vit_tokens(VIT_IMAGES, layer=layer)[:, 1:] for layer in (9, 10, "last")]
    return np.concatenate(parts, axis=2)[:, :, :1024].reshape(-1, 1024)[:576].astype(np.float16)


def run(quick: bool = False, repeat: int = 3, progress=print) -> dict:
    results = dict(date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                   machine=f"{platform.processor() or platform.machine()}, "
                           f"{platform.python_implementation()} {platform.python_version()}, "
                           f"numpy {np.__version__}", datasets=[])
    for name, x, grid, prefix in datasets(quick):
        progress(f"[bench] {name} {x.shape}")
        rows = []
        for target in (0.99, 0.995, 0.999):
            rows.append(_tkb_row(f"TKB target_cos={target}", x, grid, prefix, repeat,
                                 target_cos=target))
        rows.append(_tkb_row("TKB lossless", x, grid, prefix, repeat, lossless=True))
        rows += _baseline_rows(x, repeat)
        results["datasets"].append(dict(name=name, shape=list(x.shape), rows=rows))
    progress("[bench] MiniLM token ids")
    ids = realdata.minilm_ids(num_chunks=64)
    enc_s, data = _best(lambda: encode(ids, vocab_size=30522), repeat)
    dec_s, _ = _best(lambda: decoder.decode(data), repeat)
    results["ids"] = dict(shape=list(ids.shape), bits_per_id=8 * len(data) / ids.size,
                          raw_bits=15, encode_ms=enc_s * 1e3, decode_ms=dec_s * 1e3,
                          rans_overhead=entropy_report(data)["overhead"])
    progress("[bench] 576 x 1024 float16 frame, one core")
    x = large_frame()
    big = {}
    for label, opts in (("lossy target_cos=0.99", dict(target_cos=0.99)),
                        ("lossless", dict(lossless=True))):
        data = encode(x, **opts)
        fixed = dict(opts)
        if "target_cos" in fixed:  # time the encode at the chosen step, rate control apart
            fixed.pop("target_cos")
            fixed["qp"] = int(decoder.decode(data).tracks[0][0]["step_code"][0]) - 144
        enc_s, _ = _best(lambda: encode(x, **fixed), repeat)
        rc_s, _ = _best(lambda: encode(x, **opts), 1)
        dec_s, s = _best(lambda: decoder.decode(data), repeat)
        big[label] = dict(encode_ms=enc_s * 1e3, encode_with_rate_control_ms=rc_s * 1e3,
                          decode_ms=dec_s * 1e3, bits_per_value=8 * len(data) / x.size,
                          mean_cos=baselines.mean_token_cosine(
                              x.astype(np.float32), s.frames[0].values.astype(np.float32)))
    results["frame_576x1024"] = big
    qp = int(decoder.decode(encode(x, target_cos=0.99)).tracks[0][0]["step_code"][0]) - 144
    layout = []
    for steps in (512, 1024, 2048, 4096):
        data = encode(x, qp=qp, lane_steps=steps)
        dec_s, _ = _best(lambda: decoder.decode(data), repeat)
        layout.append(dict(lane_steps=steps, bits_per_value=8 * len(data) / x.size,
                           rans_overhead=entropy_report(data)["overhead"],
                           decode_ms=dec_s * 1e3))
    results["lane_steps_tradeoff"] = layout
    return results


def markdown(res: dict) -> str:
    out = [f"Date: {res['date']}. Machine: {res['machine']}.", ""]
    for ds in res["datasets"]:
        out += [f"**{ds['name']}** — shape {ds['shape']}", "",
                "| method | bits/value | mean token cosine | encode ms | decode ms | "
                "rANS payload vs entropy | tools |", "|---|---|---|---|---|---|---|"]
        for r in ds["rows"]:
            ov = f"{100 * r['rans_overhead']:+.2f} %" if "rans_overhead" in r else ""
            cos = "1 (lossless)" if r["lossless"] else f"{r['mean_cos']:.5f}"
            out.append(f"| {r['method']} | {r['bits_per_value']:.3f} | {cos} | "
                       f"{r['encode_ms']:.1f} | {r['decode_ms']:.1f} | {ov} | "
                       f"{r.get('tools', '')} |")
        out.append("")
    i = res["ids"]
    out += [f"**MiniLM token ids** {i['shape']} (vocabulary 30522, 15 bits raw): "
            f"{i['bits_per_id']:.2f} bits/id, encode {i['encode_ms']:.1f} ms, decode "
            f"{i['decode_ms']:.1f} ms, rANS payload vs entropy {100 * i['rans_overhead']:+.2f} %",
            "", "**One 576 x 1024 float16 frame, one core**", "",
            "| mode | bits/value | mean cos | encode ms (fixed qp) | encode ms (with rate "
            "control) | decode ms |", "|---|---|---|---|---|---|"]
    for k, v in res["frame_576x1024"].items():
        out.append(f"| {k} | {v['bits_per_value']:.3f} | {v['mean_cos']:.5f} | "
                   f"{v['encode_ms']:.1f} | {v['encode_with_rate_control_ms']:.1f} | "
                   f"{v['decode_ms']:.1f} |")
    out += ["", "**rANS layout on that frame (32 lanes, qp of target_cos 0.99)**", "",
            "| lane_steps | bits/value | rANS payload vs entropy | decode ms |",
            "|---|---|---|---|"]
    for r in res["lane_steps_tradeoff"]:
        out.append(f"| {r['lane_steps']} | {r['bits_per_value']:.4f} | "
                   f"{100 * r['rans_overhead']:+.2f} % | {r['decode_ms']:.1f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="tkb bench", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer inputs and qualities")
    ap.add_argument("--repeat", type=int, default=3, help="timing repetitions (best of)")
    ap.add_argument("--json", help="also write the results as JSON to this file")
    a = ap.parse_args(argv)
    res = run(a.quick, a.repeat)
    print(markdown(res))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1, default=float)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
