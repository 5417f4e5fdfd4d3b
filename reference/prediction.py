"""Integer prediction of quantization levels (spec clause 7.5).

predictor 0 (none): level = residual.
predictor 1 (left): the sequence tokens (grid tokens, or all tokens of a track
without grid) are predicted from the previous kept sequence token in
position order; the first from 0.  Inverse: a prefix sum per channel.
predictor 2 (up, grid tracks only): grid token (y, x) is predicted from the
level of (y - 1, x) when y > 0 and that token is kept, else from 0.
Inverse: a prefix sum down each grid column, restarting after a missing token.
Prefix tokens are never predicted.
"""
from __future__ import annotations

import numpy as np

PREDICTORS = {0: "none", 1: "left", 2: "up"}


def _sequence_start(tps) -> int:
    return tps["num_prefix_tokens"] if tps["grid_present"] else 0


def reconstruct_levels(res: np.ndarray, positions: np.ndarray, tps) -> np.ndarray:
    """Residuals [K, D] of the kept tokens -> levels [K, D] (int64)."""
    pred = tps["predictor"]
    if pred == 0 or res.shape[0] == 0:
        return res
    start = _sequence_start(tps)
    seq = slice(int(np.searchsorted(positions, start)), None)   # positions are increasing
    lv = res.copy()
    if pred == 1:
        np.cumsum(res[seq], axis=0, out=lv[seq])
        return lv
    # up: segmented prefix sum down the columns of the grid
    h, w = tps["grid_height"], tps["grid_width"]
    d = res.shape[1]
    g = positions[seq].astype(np.int64) - start
    dense = np.zeros((h, w, d), dtype=np.int64)
    kept = np.zeros((h, w), dtype=bool)
    dense.reshape(h * w, d)[g] = res[seq]
    kept.reshape(-1)[g] = True
    csum = np.cumsum(dense, axis=0)
    # a run restarts at row y when y == 0 or (y - 1, x) is missing
    rows = np.arange(h)[:, None]
    restart = np.ones((h, w), dtype=bool)
    restart[1:] = ~kept[:-1]
    first = np.maximum.accumulate(np.where(restart, rows, 0), axis=0)
    before = np.where((first > 0)[:, :, None],
                      csum[np.maximum(first - 1, 0), np.arange(w)[None, :]], 0)
    lv[seq] = (csum - before).reshape(h * w, d)[g]
    return lv


def residuals_from_levels(levels: np.ndarray, positions: np.ndarray, tps) -> np.ndarray:
    """Encoder mirror: levels [K, D] -> residuals [K, D]."""
    pred = tps["predictor"]
    if pred == 0 or levels.shape[0] == 0:
        return levels
    start = _sequence_start(tps)
    seq = slice(int(np.searchsorted(positions, start)), None)
    res = levels.copy()
    if pred == 1:
        s = levels[seq]
        res[seq] = np.diff(s, axis=0, prepend=np.zeros((1, s.shape[1]), dtype=s.dtype))
        return res
    h, w = tps["grid_height"], tps["grid_width"]
    g = positions[seq].astype(np.int64) - start
    dense = np.zeros((h * w, levels.shape[1]), dtype=np.int64)
    kept = np.zeros(h * w, dtype=bool)
    dense[g] = levels[seq]
    kept[g] = True
    above = np.zeros_like(dense)
    above[w:] = np.where(kept[:-w, None], dense[:-w], 0)
    res[seq] = (dense - above)[g]
    return res


def predictor_rows(positions: np.ndarray, tps) -> np.ndarray:
    """For each kept token of a frame (increasing ``positions``), the row of the kept token
    whose level predicts it (clause 7.5), or -1 (no prediction: a prefix token, the first
    sequence token with ``left``, row 0 or a token whose upper neighbour is not kept with
    ``up``, every token with ``none``)."""
    pos = np.asarray(positions, dtype=np.int64)
    pred = np.full(pos.size, -1, dtype=np.int64)
    p = tps.get("predictor", 0) or 0
    seq = np.nonzero(pos >= _sequence_start(tps))[0]
    if p == 1 and seq.size > 1:
        pred[seq[1:]] = seq[:-1]
    elif p == 2 and seq.size:
        w = tps["grid_width"]
        g = pos[seq] - _sequence_start(tps)
        where = np.full(tps["grid_height"] * w, -1, dtype=np.int64)
        where[g] = seq
        pred[seq] = np.where(g >= w, where[np.maximum(g - w, 0)], -1)
    return pred


def chain_depths(pred: np.ndarray) -> np.ndarray:
    """The number of predictions between each row and the unpredicted row its chain starts
    at (rows ``pred`` >= 0 are predicted by an earlier row), by pointer jumping."""
    pred = np.asarray(pred, dtype=np.int64)
    depth = (pred >= 0).astype(np.int64)
    nxt = pred.copy()
    while True:
        live = nxt >= 0
        if not live.any():
            return depth
        i = np.nonzero(live)[0]
        j = nxt[i]
        depth[i] += depth[j]
        nxt[i] = nxt[j]
