"""The reference encoder's frequency tables (informative, Annex B.3): histograms, the
alphabet size, entropy estimates, the channel grouping (sorted by scale, refined by Lloyd
iterations, more tables while they pay for themselves) and the tables' cost in bits."""
from __future__ import annotations

import math

import numpy as np

from . import tables

MAX_ALPHABET = 4096


def histograms(sym: np.ndarray, channel: np.ndarray, d: int, alphabet: int) -> np.ndarray:
    return np.bincount(channel * alphabet + sym, minlength=d * alphabet).reshape(d, alphabet)


def entropy_bits(counts: np.ndarray) -> float:
    c = counts[counts > 0].astype(np.float64)
    return float(-(c * np.log2(c / c.sum())).sum()) if c.size else 0.0


def alphabet_size(counts: np.ndarray, n: int, quantile: float = 0.9999) -> int:
    """Annex B.3's alphabet size of n zigzag indices u counted in ``counts`` (counts of
    min(u, 2^16), FitKernels.symbol_counts): their ``quantile`` (np.quantile's "higher":
    the value at sorted index ceil((n - 1) quantile)) plus 2, clipped to 2 .. MAX_ALPHABET
    (a value counted in the last bin, 2^16, is beyond the clip)."""
    if n == 0:
        return 2
    rank = math.ceil((n - 1) * quantile)            # binary64, as numpy computes it
    value = int(np.searchsorted(np.cumsum(counts), rank, side="right"))
    return int(np.clip(value + 2, 2, MAX_ALPHABET))


def channel_entropy_bits(u: np.ndarray, channel: np.ndarray, d: int) -> float:
    """Order-0 entropy of symbols u (capped at 2^12) summed over their channels."""
    u = np.minimum(u, 1 << 12)
    a = int(u.max()) + 1 if u.size else 1
    h = np.bincount(channel * a + u, minlength=d * a).reshape(d, a).astype(np.float64)
    tot = h.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(-(h * np.log2(np.where(h > 0, h / np.maximum(tot, 1), 1))).sum())


def with_pseudo_counts(freqs, hist, tmap, alphabet: int, prob_bits: int) -> list:
    """Tables over the whole alphabet, every symbol at least frequency 1."""
    group = np.zeros(hist.shape[0], dtype=np.int64) if tmap is None else tmap
    out = []
    for g in range(len(freqs)):
        counts = np.zeros(alphabet, dtype=np.int64)
        h = hist[group == g].sum(axis=0)
        counts[:h.size] = h[:alphabet]
        out.append(tables.normalize(counts + 1, prob_bits))
    return out


def group_sum(hist: np.ndarray, group: np.ndarray, t: int) -> np.ndarray:
    """Histograms summed per group: [t, alphabet]."""
    order = np.argsort(group, kind="stable")
    g = group[order]
    starts = np.searchsorted(g, np.arange(t))
    out = np.zeros((t, hist.shape[1]), dtype=hist.dtype)
    present = starts < g.size
    present[present] = g[starts[present]] == np.arange(t)[present]
    if present.any():
        out[present] = np.add.reduceat(hist[order], starts[present], axis=0)
    return out


def refine_groups(hist: np.ndarray, group: np.ndarray, t: int, iters: int = 6,
                   kernels=None) -> np.ndarray:
    """Lloyd iterations (FitKernels.lloyd_groups), the emptied tables dropped (dense
    numbering)."""
    if kernels is None:
        from .fit_kernels import NUMPY_KERNELS as kernels
    group = kernels.lloyd_groups(hist, group, t, iters)
    used, group = np.unique(group, return_inverse=True)
    return group


def table_counts(d: int, max_tables: int, forced: int | None) -> list:
    """The numbers of tables group_tables tries, in order: ``forced``, else powers of two
    up to the channels and the level's limit."""
    return [forced] if forced else [t for t in (1, 2, 4, 8, 16, 32, 64)
                                    if t <= min(d, max_tables)]


def group_tables(hist: np.ndarray, scale_key: np.ndarray, max_tables: int, prob_bits: int,
                  forced: int | None, escape_slot: bool = False, kernels=None):
    """Choose channel groups; returns (table_map or None, list of freq arrays).
    ``escape_slot`` (quantized tracks, Annex B.3): each table ends one symbol past its
    largest symbol, an unused escape symbol, so that the largest value is not escaped."""
    if kernels is None:
        from .fit_kernels import NUMPY_KERNELS as kernels
    d = hist.shape[0]
    order = np.argsort(scale_key, kind="stable")
    best = None
    for t in table_counts(d, max_tables, forced):
        group = np.empty(d, dtype=np.int64)
        group[order] = np.arange(d) * t // d
        if t > 1:
            group = refine_groups(hist, group, t, kernels=kernels)
        t_used = int(group.max()) + 1
        ghist = np.rint(kernels.group_sum(hist, None, group, t_used)).astype(np.int64)
        freqs, bits, err = kernels.table_set(ghist, prob_bits, escape_slot)
        if t_used > 1:
            bits += 8 * d
        if best is not None:
            if abs(bits - best[0]) <= err + best[3]:
                # the kernel's bound cannot tell: numpy's bits of both (same tables)
                bits = tables_bits(ghist, freqs, prob_bits, 8 * d if t_used > 1 else 0)
                best = (tables_bits(best[4], best[2], prob_bits,
                                     8 * d if best[1] is not None else 0), *best[1:3],
                        0.0, best[4])
            if bits >= best[0]:
                break   # more tables stopped paying for themselves
        best = (bits, group if t_used > 1 else None, freqs, err, ghist)
    return best[1], best[2]


def tables_bits(ghist: np.ndarray, freqs: list, prob_bits: int, extra: int) -> float:
    """The bits of the symbols counted in ghist under tables ``freqs`` and of the tables
    themselves, plus ``extra`` (the table map), summed as the reference sums them."""
    bits = 0.0
    for h, f in zip(ghist, freqs):
        h = h[:f.size]
        nz = h > 0
        bits += float(-(h[nz] * np.log2(f[nz] / (1 << prob_bits))).sum())
        bits += tables.table_cost_bits(f)
    return bits + extra if extra else bits


def choose_prob_bits(alphabet: int) -> int:
    """12 bits for small alphabets (measured on real tokens: 11..15 bits change the size
    by < 0.1 % while larger slot tables slow the decoder); large alphabets (lossless,
    ids) get 3 bits more than the alphabet needs so that rare symbols are not
    over-charged."""
    need = int(alphabet - 1).bit_length()
    return int(min(tables.MAX_PROB_BITS, max(12, need + 3 if need > 8 else need)))
