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

``--transform`` adds (``--only transform`` runs alone) the measurements of transform
coding (TKB 1.1, issue 15): ViT-S/14 images coded leave-one-out with a model
transform fitted on the other images and named by reference, with the saliency
head's error; a 16-frame camera pan with ``transform="auto"`` (transform inline)
and with a model transform; MiniLM (last layer and layer 3) with a transform fitted
on other texts; the decode time of the 576 x 1024 frame with a transform.  Today's
codec (no transform) is measured on the same inputs in the same run.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone

import numpy as np

from . import baselines, decoder, rans, realdata, tables
from .encoder import encode
from .errors import TKBEncodeError
from .transform_fit import fit_transform

VIT_IMAGES = ("astronaut", "coffee", "chelsea", "rocket")
# the dev images of issue 15 (all load offline from skimage.data)
DEV_IMAGES = VIT_IMAGES + (
    "camera", "coins", "page", "immunohistochemistry", "moon", "text", "horse",
    "hubble_deep_field", "retina", "brick", "grass", "gravel", "cat", "clock", "cell",
    "microaneurysms")
PAN = dict(image="hubble_deep_field", frames=16, crop=0.6)
MINILM_TEST_CHUNKS = 8       # the main MiniLM dataset's chunks
MINILM_POOL_CHUNKS = 128     # calibration: those of the first 128 that share no text with them
TARGET_COS = 0.99


def _best(fn, repeat: int):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def entropy_report(data: bytes, transforms=None) -> dict:
    """rANS payload bits of every frame against the empirical entropy of its symbols,
    each symbol counted under the table that codes it (counts taken over the stream).
    ``transforms``: those the stream names by reference."""
    counts: dict = {}
    payload_bits = 0
    state_bits = 0
    for u, tps, fr in decoder.parsed_frames(data, transforms):
        k, d = fr["num_kept"], tps.get("num_coded") or tps["num_channels"]   # K with a transform
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


def frame_tokens(images=VIT_IMAGES) -> np.ndarray:
    """Tokens of the 576 x 1024 frame's construction: ViT-S/14 layers 9, 10 and 11 side by
    side (1152 channels, first 1024 kept), patch tokens of ``images``: float16 [F*256, 1024]."""
    parts = [realdata.vit_tokens(images, layer=layer)[:, 1:] for layer in (9, 10, "last")]
    return np.concatenate(parts, axis=2)[:, :, :1024].reshape(-1, 1024).astype(np.float16)


def large_frame() -> np.ndarray:
    """A 576 x 1024 float16 frame of real tokens: ViT-S/14 layers 9, 10 and 11 side by side
    (1152 channels, first 1024 kept), patch tokens of 3 images (first 576 kept)."""
    return frame_tokens(VIT_IMAGES)[:576]


def run(quick: bool = False, repeat: int = 3, progress=print, transform: bool = False,
        only: str | None = None) -> dict:
    """The benchmark; ``transform`` adds the transform section, ``only="transform"`` runs
    it alone."""
    results = dict(date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                   machine=f"{platform.processor() or platform.machine()}, "
                           f"{platform.python_implementation()} {platform.python_version()}, "
                           f"numpy {np.__version__}")
    if only != "transform":
        _codec_sections(results, quick, repeat, progress)
    if transform or only == "transform":
        progress("[bench] transform coding (TKB 1.1, issue 15)")
        results["transform"] = transform_section(transform_inputs(quick), repeat,
                                                 realdata.vit_saliency, progress)
    return results


def _codec_sections(results: dict, quick: bool, repeat: int, progress) -> None:
    results["datasets"] = []
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


# -- transform coding (TKB 1.1, issue 15) ----------------------------------------------

def transform_inputs(quick: bool = False) -> dict:
    """The real inputs of the transform section (generated offline, cached by realdata).

    ViT: last-layer tokens of the dev images, each held out in turn (``quick``: the
    first 4).  Pan: ``realdata.vit_pan(**PAN)``; its model transform is fitted on the dev
    images other than the pan's source.  MiniLM: the first 8 chunks (the main dataset),
    calibration on the chunks among the first 128 that share no text with them.  Frame:
    the 576 x 1024 frame of the CPU section; calibration on the same construction from the
    dev images that are not in it.  Of identical dev images only the first is used."""
    import pydoc_data.topics
    vit = realdata.vit_tokens(DEV_IMAGES, layer="last")
    # an image that another one duplicates (skimage.data.cat() is chelsea()) would be in the
    # calibration of its own fold: keep the first of identical images only
    names, keep, dropped = [], [], []
    for i, n in enumerate(DEV_IMAGES):
        same = [names[j] for j, k in enumerate(keep) if np.array_equal(vit[k], vit[i])]
        if same:
            dropped.append(f"{n} (= {same[0]})")
            continue
        names.append(n)
        keep.append(i)
    vit = vit[keep]
    pan_calib = [i for i, n in enumerate(names) if n != PAN["image"]]
    keys = sorted(pydoc_data.topics.topics)
    topics = realdata.minilm_topics(MINILM_POOL_CHUNKS)
    test = list(range(MINILM_TEST_CHUNKS))
    test_texts = set(topics[test].ravel().tolist()) - {-1}
    calib = [i for i in range(MINILM_TEST_CHUNKS, MINILM_POOL_CHUNKS)
             if not set(topics[i].ravel().tolist()) & test_texts]
    calib_texts = sorted(set(topics[calib].ravel().tolist()) - {-1})
    minilm_note = (f"test: chunks 0-{MINILM_TEST_CHUNKS - 1} (texts "
                   f"{', '.join(keys[j] for j in sorted(test_texts))}); transform fitted on "
                   f"{len(calib)} chunks ({calib[0]}-{calib[-1]} of the first "
                   f"{MINILM_POOL_CHUNKS}) from {len(calib_texts)} other texts "
                   f"({keys[calib_texts[0]]} ... {keys[calib_texts[-1]]})")
    minilm = []
    for layer, label in (("last", "last layer"), (3, "layer 3")):
        h = realdata.minilm_tokens(MINILM_POOL_CHUNKS, layer=layer)
        minilm.append(dict(name=f"MiniLM-L6 {label}, {len(test)} x 128 tokens",
                           test=h[test], calib=h[calib], note=minilm_note))
    other = tuple(n for n in names if n not in VIT_IMAGES)
    return dict(
        vit=dict(names=tuple(names), tokens=vit, grid=(16, 16), prefix=1,
                 held_out=list(range(4 if quick else len(names))),
                 note=f"{len(names)} distinct dev images"
                      + (f"; dropped as duplicates: {', '.join(dropped)}" if dropped else "")),
        pan=dict(name=f"camera pan over {PAN['image']}, {PAN['frames']} frames",
                 tokens=realdata.vit_pan(**PAN), calib=vit[pan_calib], grid=(16, 16), prefix=1,
                 note=f"window {PAN['crop']:.0%} of the short side, diagonal path; model "
                      f"transform fitted on the {len(pan_calib)} dev images other than "
                      f"{PAN['image']}"),
        minilm=minilm,
        frame=dict(x=large_frame(), calib=frame_tokens(other),
                   note=f"transform fitted on the same construction (layers 9, 10, last; "
                        f"first 1024 channels) from the patch tokens of the {len(other)} "
                        f"dev images not in the frame ({len(other) * 256} tokens)"))


def _tkb_code(x: np.ndarray, transform=None, grid=None, prefix=0, repeat=0):
    """Code float32 tokens ``x`` as float16 at TARGET_COS with the reference encoder
    (``transform``: None, a Transform named by reference, or "auto"), decode them, and
    measure against ``x``.  None when the target is out of reach with the transform."""
    try:
        data = encode(x.astype(np.float16), target_cos=TARGET_COS, grid=grid,
                      prefix_tokens=prefix, transform=transform)
    except TKBEncodeError as e:
        if "out of reach" in str(e):
            return None
        raise
    known = [transform] if transform is not None and not isinstance(transform, str) else None
    dec_s, s = _best(lambda: decoder.decode(data, transforms=known), max(repeat, 1))
    y = np.stack([f.values for f in s.frames]).astype(np.float32).reshape(x.shape)
    t = s.tracks[0][0].get("transform")
    return dict(bytes=len(data), values=x.size, bits_per_value=8 * len(data) / x.size,
                mean_cos=baselines.mean_token_cosine(x.astype(np.float32), y), y=y,
                num_coeffs=t.num_coeffs if t is not None else None,
                escapes=escape_count(data, known),
                transform_bytes=len(t.data) if t is not None else 0,
                decode_ms=dec_s * 1e3 if repeat else None)


def escape_count(data: bytes, transforms=None) -> int:
    """The escape values (clause 7.4.1) in the frames of a stream."""
    return sum(int(fr.get("num_escapes", 0)) for _, _, fr in
               decoder.parsed_frames(data, transforms))


def _saliency_err(saliency, x, y):
    if saliency is None:
        return None
    a = saliency(np.asarray(x, np.float32).reshape(-1, *x.shape[-2:]))
    b = saliency(np.asarray(y, np.float32).reshape(-1, *y.shape[-2:]))
    return float(np.abs(a - b).mean())


def _krange(ks):
    ks = [k for k in ks if k is not None]
    if not ks:
        return None
    return str(min(ks)) if min(ks) == max(ks) else f"{min(ks)}-{max(ks)}"


def _row(data, method, r=None, saliency_err=None, target=None, met=None, note="", **extra):
    row = dict(data=data, method=method, bits_per_value=None, mean_cos=None,
               saliency_err=saliency_err, num_coeffs=None, target=target, met=met, note=note)
    if r is not None:
        row.update(bits_per_value=r["bits_per_value"], mean_cos=r["mean_cos"],
                   num_coeffs=r["num_coeffs"], escapes=r.get("escapes"))
    row.update(extra)
    return row


def _vit_loo(v, saliency, progress):
    """Leave-one-out over the dev images: one image per stream, model transforms fitted on
    the other images (energy 1.0, and 0.999), by reference, against today's codec."""
    x, names, n = v["tokens"], v["names"], len(v["tokens"])
    held = v["held_out"]
    per, sums = [], {m: dict(bits=0, values=0, cos=[], sal=[], k=[], miss=0)
                     for m in ("none", "model", "best", "e999")}
    for i in held:
        rest = [j for j in range(n) if j != i]
        progress(f"[bench] transform: ViT leave-one-out, {names[i]}")
        rec = dict(image=names[i])
        for m, t in (("none", None), ("model", fit_transform([x[rest]], energy=1.0)),
                     ("e999", fit_transform([x[rest]], energy=0.999))):
            r = _tkb_code(x[i], t, v["grid"], v["prefix"])
            sm = sums[m]
            if r is None:
                sm["miss"] += 1
                sm["k"].append(t.num_coeffs)
                rec[m] = None
                continue
            sal = _saliency_err(saliency, x[i], r["y"])
            sm["bits"] += 8 * r["bytes"]
            sm["values"] += r["values"]
            sm["cos"].append(r["mean_cos"])
            sm["k"].append(r["num_coeffs"])
            if sal is not None:
                sm["sal"].append(sal)
            rec[m] = dict(bits_per_value=r["bits_per_value"], mean_cos=r["mean_cos"],
                          saliency_err=sal, num_coeffs=r["num_coeffs"], bytes=r["bytes"],
                          values=r["values"], escapes=r["escapes"])
        # an encoder may code each stream with the model transform or without it (coding
        # mode 2 or 0), whichever is smaller: both streams were measured above
        best = min((rec[m] for m in ("model", "none") if rec[m]), key=lambda c: c["bytes"])
        rec["best"] = dict(best, choice="transform" if best is rec["model"] else "none")
        sm = sums["best"]
        sm["bits"] += 8 * best["bytes"]
        sm["values"] += best["values"]
        sm["cos"].append(best["mean_cos"])
        sm["k"].append(best["num_coeffs"])
        if best["saliency_err"] is not None:
            sm["sal"].append(best["saliency_err"])
        per.append(rec)
    data = f"ViT-S/14 last layer, {len(held)} images, one per stream, leave-one-out"
    rows = []
    for m, method in (("none", "today's codec (no transform)"),
                      ("model", f"model transform by reference, energy 1.0, fitted on the "
                                f"other {n - 1} images"),
                      ("best", "the same transform or none, whichever stream is smaller"),
                      ("e999", "model transform by reference, energy 0.999, fitted on the "
                               f"other {n - 1} images")):
        sm = sums[m]
        k = _krange(sm["k"])
        sal = float(np.mean(sm["sal"])) if sm["sal"] else None
        target = None if m == "none" else "<= 1.0 b/v at cos >= 0.99"
        if sm["miss"]:
            rows.append(_row(data, method, None, target=target, met=False if target else None,
                             num_coeffs=k, reachable=False,
                             note=f"not reachable: cosine {TARGET_COS} out of reach on "
                                  f"{sm['miss']} of {len(held)} images"))
            continue
        r = dict(bits_per_value=sm["bits"] / sm["values"], mean_cos=float(np.mean(sm["cos"])),
                 num_coeffs=None, escapes=sum(p[m]["escapes"] for p in per))
        note, met = "", None
        if m != "none":
            base = sums["none"]["bits"] / sums["none"]["values"]
            under = sum(1 for p in per if p[m] and p[m]["bits_per_value"] <= 1.0)
            met = r["bits_per_value"] <= 1.0 and min(sm["cos"]) >= TARGET_COS
            note = (f"{1 - r['bits_per_value'] / base:.1%} smaller than today's codec; "
                    f"{under} of {len(held)} images <= 1.0 b/v")
            if m == "best":
                chosen = sum(1 for p in per if p["best"]["choice"] == "transform")
                note += f"; transform chosen for {chosen} of {len(held)} images"
            elif m == "model":
                note += f"; {v.get('note', '')}"
        row = _row(data, method, r, sal, target, met, note, reachable=True,
                   min_cos=min(sm["cos"]))
        row["num_coeffs"] = k
        rows.append(row)
    return rows, per


def _pan(p, saliency, progress):
    data = p["name"]
    progress(f"[bench] transform: {data} {p['tokens'].shape}")
    x = p["tokens"]
    rows = []
    r0 = _tkb_code(x, None, p["grid"], p["prefix"])
    rows.append(_row(data, "today's codec (no transform), one stream", r0,
                     _saliency_err(saliency, x, r0["y"])))
    ra = _tkb_code(x, "auto", p["grid"], p["prefix"])
    met = ra["bits_per_value"] <= 0.6 and ra["mean_cos"] >= TARGET_COS
    rows.append(_row(data, 'transform="auto" (fitted on the stream, carried inline, counted)',
                     ra, _saliency_err(saliency, x, ra["y"]), "<= 0.6 b/v at cos >= 0.99", met,
                     f"transform inline: {ra['transform_bytes']} bytes = "
                     f"{8 * ra['transform_bytes'] / x.size:.3f} b/v of the total; "
                     f"{1 - ra['bits_per_value'] / r0['bits_per_value']:.1%} smaller than "
                     "today's codec" if ra["num_coeffs"] else "auto chose no transform",
                     transform_bytes=ra["transform_bytes"]))
    t = fit_transform([p["calib"]], energy=1.0)
    rm = _tkb_code(x, t, p["grid"], p["prefix"])
    if rm is None:
        rows.append(_row(data, "model transform by reference, energy 1.0", None,
                         num_coeffs=t.num_coeffs, reachable=False, note="not reachable"))
    else:
        rows.append(_row(data, "model transform by reference, energy 1.0", rm,
                         _saliency_err(saliency, x, rm["y"]), None, None,
                         f"{p['note']}; {1 - rm['bits_per_value'] / r0['bits_per_value']:.1%} "
                         "smaller than today's codec"))
    return rows


def _minilm(m, progress):
    data = m["name"]
    progress(f"[bench] transform: {data}")
    r0 = _tkb_code(m["test"], None)
    t = fit_transform([m["calib"]], energy=1.0)
    r1 = _tkb_code(m["test"], t)
    rows = [_row(data, "today's codec (no transform)", r0)]
    target = ">= 10 % smaller than no transform at cos >= 0.99"
    if r1 is None:
        rows.append(_row(data, "model transform by reference, energy 1.0", None, None, target,
                         False, "not reachable", num_coeffs=t.num_coeffs, reachable=False))
        return rows
    saving = 1 - r1["bits_per_value"] / r0["bits_per_value"]
    rows.append(_row(data, "model transform by reference, energy 1.0", r1, None, target,
                     saving >= 0.10 and r1["mean_cos"] >= TARGET_COS,
                     f"{saving:.1%} smaller; {m['note']}", saving=saving))
    return rows


def _frame_decode(f, repeat, progress):
    x = f["x"].astype(np.float32)
    data = f"one {f['x'].shape[0]} x {f['x'].shape[1]} float16 frame, decode on one core"
    progress(f"[bench] transform: {data}")
    r0 = _tkb_code(x, None, repeat=repeat)
    rows = [_row(data, "today's codec (no transform)", r0, decode_ms=r0["decode_ms"],
                 note=f"decode {r0['decode_ms']:.1f} ms")]
    fits = [("model transform by reference", f["calib"], e, f["note"])
            for e in (1.0, 0.9999, 0.999)]
    fits += [("transform fitted on the frame itself, by reference", f["x"], e,
              "transform fitted on the measured frame's own tokens (its size is not "
              "comparable: the transform fits this frame and is not counted)")
             for e in (0.9999, 0.999)]
    for what, calib, energy, note in fits:
        t = fit_transform(calib, energy=energy)
        method = f"{what}, energy {energy}"
        r = _tkb_code(x, t, repeat=repeat)
        target = "decode <= 1.5x without"
        if r is None:
            rows.append(_row(data, method, None, None, target, None,
                             f"not reachable ({t.num_coeffs} coefficients)",
                             num_coeffs=t.num_coeffs, reachable=False))
            continue
        ratio = r["decode_ms"] / r0["decode_ms"]
        rows.append(_row(data, method, r, None, target, ratio <= 1.5,
                         f"decode {r['decode_ms']:.1f} ms = {ratio:.2f}x without; {note}",
                         decode_ms=r["decode_ms"], decode_ratio=ratio))
    return rows


def transform_section(inp: dict, repeat: int = 3, saliency=None, progress=print) -> dict:
    """Issue 15's measurements on ``inp`` (from :func:`transform_inputs`, or synthetic):
    rows of data, method, bits/value (everything counted), mean token cosine, saliency
    error (``saliency``: a function of last-layer tokens [F, N, D], or None), K (the
    transform's coefficients), the issue's target and whether it is met."""
    t0 = time.perf_counter()
    times = {}
    rows, per = _vit_loo(inp["vit"], saliency, progress)
    times["vit_leave_one_out"] = time.perf_counter() - t0
    t = time.perf_counter()
    rows += _pan(inp["pan"], saliency, progress)
    times["pan"] = time.perf_counter() - t
    t = time.perf_counter()
    for m in inp["minilm"]:
        rows += _minilm(m, progress)
    times["minilm"] = time.perf_counter() - t
    t = time.perf_counter()
    rows += _frame_decode(inp["frame"], repeat, progress)
    times["frame_decode"] = time.perf_counter() - t
    return dict(rows=rows, vit_images=per, target_cos=TARGET_COS, repeat=repeat,
                seconds=times, elapsed_s=time.perf_counter() - t0,
                notes=dict(pan=inp["pan"].get("note", ""),
                           minilm=inp["minilm"][0].get("note", "") if inp["minilm"] else "",
                           frame=inp["frame"].get("note", "")))


def _fmt(v, f):
    return "" if v is None else format(v, f)


def transform_markdown(t: dict) -> str:
    out = [f"**Transform coding (TKB 1.1, issue 15)**: reference encoder and decoder, target "
           f"mean token cosine {t['target_cos']}, sizes with everything counted; "
           f"{t['elapsed_s']:.0f} s", "",
           "| data | method | bits/value | mean cos | saliency err | K | escapes | target | met "
           "| notes |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in t["rows"]:
        met = "" if r["met"] is None else ("**met**" if r["met"] else "not met")
        out.append(f"| {r['data']} | {r['method']} | {_fmt(r['bits_per_value'], '.3f')} | "
                   f"{_fmt(r['mean_cos'], '.5f')} | {_fmt(r['saliency_err'], '.5f')} | "
                   f"{r['num_coeffs'] or ''} | {_fmt(r.get('escapes'), 'd')} | "
                   f"{r['target'] or ''} | {met} | {r['note']} |")
    out += ["", "**Leave-one-out, per image** (bits/value, mean cos, saliency err; escapes: "
            "escape values in the stream, today's codec / model transform)", "",
            "| image | today's codec | model transform, energy 1.0 | smaller by | escapes | "
            "energy 0.999 |", "|---|---|---|---|---|---|"]

    def cell(c):
        if c is None:
            return "not reachable"
        return (f"{c['bits_per_value']:.3f}, {c['mean_cos']:.4f}"
                + (f", {c['saliency_err']:.5f}" if c["saliency_err"] is not None else ""))
    for p in t["vit_images"]:
        by = (f"{1 - p['model']['bits_per_value'] / p['none']['bits_per_value']:.1%}"
              if p["model"] and p["none"] else "")
        esc = " / ".join(str(p[m]["escapes"]) if p[m] else "-" for m in ("none", "model"))
        out.append(f"| {p['image']} | {cell(p['none'])} | {cell(p['model'])} | {by} | {esc} | "
                   f"{cell(p['e999'])} |")
    return "\n".join(out)


def markdown(res: dict) -> str:
    out = [f"Date: {res['date']}. Machine: {res['machine']}.", ""]
    if "ids" not in res:  # --only transform
        return "\n".join(out + [transform_markdown(res["transform"])])
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
    if "transform" in res:
        out += ["", transform_markdown(res["transform"])]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="tkb bench", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer inputs and qualities")
    ap.add_argument("--repeat", type=int, default=3, help="timing repetitions (best of)")
    ap.add_argument("--json", help="also write the results as JSON to this file")
    ap.add_argument("--transform", action="store_true",
                    help="also measure transform coding (TKB 1.1, issue 15)")
    ap.add_argument("--only", choices=["transform"],
                    help="run only this section")
    a = ap.parse_args(argv)
    res = run(a.quick, a.repeat, transform=a.transform, only=a.only)
    print(markdown(res))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1, default=float)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
