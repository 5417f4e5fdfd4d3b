"""The reference encoder's input conversion and quantization (informative, Annex B.1):
source dtypes, float32 views, levels by rounding or by the closed-loop deadzone quantizer,
token norms and the token step deltas derived from them."""
from __future__ import annotations

import numpy as np

from . import prediction, reconstruction
from .errors import TKBEncodeError


def source_dtype(a) -> str:
    name = str(getattr(a, "dtype", ""))
    if name in ("float32", "float16", "bfloat16"):
        return name
    if name == "float64":  # coded from float32 (lossless float64 is refused earlier)
        return "float32"
    if name.startswith(("int", "uint")):
        return "uint32"
    raise TKBEncodeError(f"unsupported input dtype {name}; use float32, float16, bfloat16 "
                         "or an integer type for token ids")


DTYPE_CODE = {"float32": 0, "float16": 1, "bfloat16": 2}    # clause 7.6.2's output types


def float_view(a: np.ndarray, dtype: str) -> np.ndarray:
    """Input values as float32 (bfloat16 arrives as uint16 bit patterns)."""
    if dtype == "bfloat16":
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float32)


# 1 / step(code) rounded to binary32: quantization is one binary32 multiplication and
# a round half to even, so every implementation (numpy, a GPU kernel) finds the same
# levels (Annex B.1)
INV_STEP = (1.0 / reconstruction.STEP.astype(np.float64)).astype(np.float32)


def quantize_levels(xf: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Levels of float32 values ``xf`` at step codes ``codes`` (broadcast): the binary32
    product x * INV_STEP[code] rounded half to even, clipped to +-MAX_LEVEL (int64)."""
    y = np.asarray(xf, dtype=np.float32) * INV_STEP[codes]
    lv = np.clip(np.rint(y), -reconstruction.MAX_LEVEL, reconstruction.MAX_LEVEL)
    return lv.astype(np.int64)


def quantize_closed_loop(xf: np.ndarray, codes: np.ndarray, pred: np.ndarray,
                         deadzone: float, lim=None) -> np.ndarray:
    """Levels of float32 values ``xf`` [K, C] at step codes ``codes`` (broadcast) by a
    closed-loop quantizer with a deadzone (Annex B.1): row k is predicted by the level of
    row pred[k] (-1: by 0), as the decoder predicts it (clause 7.5), and its prediction
    residual is quantized towards zero, in binary32:

        y = x * INV_STEP[code]          r = y - plev
        q = sign(r) * rint(max(|r| - deadzone, 0))         (half to even)
        lev = clip(plev + q, -lim, lim)                   (lim: MAX_LEVEL by default)

    Rows are quantized after the rows that predict them (in waves of equal chain depth),
    so every residual that is coded is the quantized one: a small residual becomes 0, the
    likeliest symbol, whatever the level."""
    y = np.asarray(xf, dtype=np.float32) * INV_STEP[codes]
    lim = np.broadcast_to(np.asarray(reconstruction.MAX_LEVEL if lim is None else lim),
                          y.shape)
    dz = np.float32(deadzone)
    lv = np.zeros(y.shape, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    depth = prediction.chain_depths(pred)
    order = np.argsort(depth, kind="stable")
    bounds = np.searchsorted(depth[order], np.arange(int(depth.max(initial=0)) + 2))
    for a, b in zip(bounds[:-1], bounds[1:]):
        rows = order[a:b]
        p = pred[rows]
        plv = np.where((p >= 0)[:, None], lv[np.maximum(p, 0)], 0)
        r = y[rows] - plv.astype(np.float32)
        q = np.minimum(np.rint(np.maximum(np.abs(r) - dz, np.float32(0))),
                       np.float32(1 << 25)).astype(np.int64)     # |plev + q| clips to lim
        lim_r = lim[rows]
        lv[rows] = np.clip(plv + np.where(r < 0, -q, q), -lim_r, lim_r)
    return lv


def step_deltas_of_norms(norms: np.ndarray, ref: float, lo: int, hi: int) -> np.ndarray:
    """Annex B.1: round(6 log2(max(norm, ref 2^-10) / ref)), clipped to -60..60 and then
    to lo..hi (TrackEncoder.delta_bounds), in float64, ties to even."""
    with np.errstate(divide="ignore"):
        dl = np.round(6 * np.log2(np.maximum(norms, ref * 2.0 ** -10) / ref))
    return np.clip(np.clip(dl, -60, 60), lo, hi).astype(np.int64)


def token_norms(xf: np.ndarray) -> np.ndarray:
    """Euclidean norm of each token, its squares summed in float64 in channel order (a
    sequential sum, so a GPU thread looping over the channels finds the same value)."""
    x = np.asarray(xf, dtype=np.float64)
    if x.shape[1] == 0:
        return np.zeros(x.shape[0])
    return np.sqrt(np.cumsum(x * x, axis=1)[:, -1])
