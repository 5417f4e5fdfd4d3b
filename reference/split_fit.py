"""Lossless (split) tracks (Annex B.6, informative).

``SplitFit`` is the part of ``encoder.TrackEncoder`` that fits a split track (clause
7.4.2 in reverse): each value's bit pattern -- or, with a predictor, the zigzag residual
of its order-preserving integer; a token id as it is -- cut into entropy-coded top bits
and ``raw_bits`` raw low bits, the predictor and the split chosen by an order-0 size
estimate, then the tables (``table_fit``, B.3).
"""
from __future__ import annotations

import numpy as np

from . import prediction, reconstruction, symbols, tables
from .table_fit import (MAX_ALPHABET, choose_prob_bits, entropy_bits, histograms,
                        with_pseudo_counts)


class SplitFit:
    """Annex B.6 for ``encoder.TrackEncoder`` (a base class of it)."""

    def _split_symbols(self, a: np.ndarray, raw_bits: int, pos: np.ndarray):
        """(symbols, raw values) [K, D] of kept tokens ``a`` (clause 7.4.2 in reverse)."""
        if self.ids:
            u = a.astype(np.int64)
        else:
            bits = a.view({"float32": np.uint32, "float16": np.uint16,
                           "bfloat16": np.uint16}[self.src]).astype(np.int64)
            if self.tps.get("predictor"):
                m = symbols.bits_to_ordered(bits, reconstruction.DTYPE_BITS[
                    self.tps["source_dtype"]])
                u = symbols.zigzag(prediction.residuals_from_levels(m, pos, self.tps))
            else:
                u = bits
        return u >> raw_bits, u & ((1 << raw_bits) - 1)

    def _fit_split(self, arrs, pseudo: bool) -> None:
        width = reconstruction.DTYPE_BITS[self.tps["source_dtype"]]
        kept = [a[p].reshape(-1, self.d) for a, p in zip(arrs, self.positions)]
        if self.ids:
            lo = max(0, int(self.tps["vocab_size"] - 1).bit_length() - 12)
            cands = [(None, r) for r in range(lo, lo + 9)]
        else:
            preds = [0, 1] + ([2] if self.tps["grid_present"] else [])
            if self.opts.predictor != "auto":
                preds = [{"none": 0, "left": 1, "up": 2}[self.opts.predictor]]
            cands = []
            for p in preds:
                lo = width + (1 if p else 0) - 12          # alphabet of at most 4096
                cands += [(p, r) for r in range(max(0, lo), min(width, lo + 6))]
        # pick (predictor, raw_bits) by the order-0 entropy estimate, then build tables
        best = None
        u_of = {}
        for p, rb in cands:
            if p not in u_of:
                if p is not None:
                    self.tps["predictor"] = p
                u_of[p] = np.concatenate([self._split_symbols(k, 0, pos)[0]
                                          for k, pos in zip(kept, self.positions)]).ravel()
            sym = u_of[p] >> rb
            counts = np.bincount(sym, minlength=1)
            est = entropy_bits(counts) + rb * sym.size + tables.table_cost_bits(
                tables.normalize(counts, choose_prob_bits(counts.size)))
            if best is None or est < best[0]:
                best = (est, p, rb)
        _, p, rb = best
        if p is not None:
            self.tps["predictor"] = p
        self.tps["raw_bits"] = rb
        sym = np.concatenate([self._split_symbols(k, rb, pos)[0]
                              for k, pos in zip(kept, self.positions)]).ravel()
        channel = np.tile(np.arange(self.d), sym.size // self.d)
        alphabet = int(sym.max()) + 1 if sym.size else 1
        pb = self.tps["prob_bits"] = self._prob_bits(alphabet)
        hist = histograms(sym, channel, self.d, alphabet)
        key = np.zeros(self.d) if self.ids else \
            (hist * np.arange(alphabet)).sum(axis=1) / np.maximum(hist.sum(axis=1), 1)
        tmap, freqs = self.kernels.group_tables(hist, key, self.level.max_tables, pb,
                                                self.opts.num_tables)
        if pseudo:  # a streaming table must code every possible symbol
            full = (-(-self.tps["vocab_size"] >> rb) if self.ids else
                    min(MAX_ALPHABET, 1 << (width - rb + (1 if p else 0))))
            freqs = with_pseudo_counts(freqs, hist, tmap, full, pb)
        self._set_tables(tmap, freqs)
