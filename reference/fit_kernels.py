"""The numeric steps of a track's fit (informative, Annex B.1 to B.3) behind one interface,
:class:`FitKernels`: numpy here; libtkb's C (``tokenbits.native.encoder``) returns the same
values through the same methods."""
from __future__ import annotations

import numpy as np

from . import prediction, reconstruction, symbols, tables
from .crc32c import crc32c
from .quantization import float_view, quantize_closed_loop, quantize_levels, token_norms
from .table_fit import entropy_bits, group_sum, group_tables, histograms, tables_bits


class FitKernels:
    """The numeric steps of a track's fit (Annex B.1, B.3) that the rate control of
    :class:`TrackEncoder` calls: numpy here (the reference); a backend may pass its own
    (``tokenbits.native.encoder.NativeFitKernels``: libtkb's C) that returns the same
    values, or the same decisions, bit for bit.  The search logic is the TrackEncoder's."""

    name = "numpy"

    def crc32c(self, data) -> int:
        """The CRC-32C (clause 3.4) of a unit that :func:`encoder.encode_tracks` writes
        (clause 6.2, ``stream_layout.unit``): numpy's (``crc32c.crc32c``) here."""
        return crc32c(data)

    def positions(self, te, arrs: list) -> list:
        """The kept positions of each frame of ``arrs`` (Annex B.2, ``te.opts``' pruning):
        the reference selection, frame by frame, here; a backend may select on its own
        hardware (the GPU: ``tokenbits.kernels.codec.GpuFitKernels``) the same tokens."""
        return [te._positions(a) for a in arrs]

    def kept_values(self, a: np.ndarray, src: str, pos: np.ndarray) -> np.ndarray:
        """The kept rows ``pos`` of frame ``a`` [N, D] as float32 (source dtype ``src``)."""
        return float_view(a, src)[pos]

    def token_norms(self, xf: np.ndarray) -> np.ndarray:
        return token_norms(xf)

    def quantize_levels(self, xf: np.ndarray, codes: np.ndarray) -> np.ndarray:
        return quantize_levels(xf, codes)

    def quantize_rows(self, xf: np.ndarray, step_codes: np.ndarray,
                      delta: np.ndarray) -> np.ndarray:
        """quantize_levels of xf [K, C] at step codes step_codes[c] + delta[k] (int64 here;
        a backend may return another integer type holding the same values: |level| <
        2^24)."""
        return self.quantize_levels(xf, step_codes[None, :] + delta[:, None])

    def reaches(self, te, allx, allc, qp: int, allnorms, pred, target: float) -> bool:
        """Whether the mean token cosine of the kept tokens ``allx`` reconstructed from
        their coded values ``allc`` quantized at ``qp`` (te's current norm_ref, deadzone,
        predictor rows ``pred``) is at least ``target`` (the qp search, Annex B.1)."""
        from .baselines import mean_token_cosine
        out_name = reconstruction.DTYPES[te.tps["output_dtype"]]
        lv, codes, _ = te._quantize(allc, qp, allnorms, pred)
        rec = reconstruction.to_output(te.reconstruct(lv, codes), te.tps["output_dtype"])
        return mean_token_cosine(allx, float_view(rec, out_name)) >= target

    def quantize_closed_loop(self, xf: np.ndarray, codes: np.ndarray, pred: np.ndarray,
                             deadzone: float, lim) -> np.ndarray:
        return quantize_closed_loop(xf, codes, pred, deadzone, lim)

    def zigzag_residuals(self, lv: np.ndarray, pos: np.ndarray, tps) -> np.ndarray:
        """Zigzag indices (7.4.1) of the clause 7.5 residuals of a frame's levels."""
        return symbols.zigzag(prediction.residuals_from_levels(lv, pos, tps))

    def symbol_entropy(self, u: np.ndarray) -> float:
        """The order-0 entropy estimate that picks the predictor."""
        return entropy_bits(self.symbol_counts(u))

    def residual_histograms(self, lvls: list, positions: list, tps, d: int,
                            alphabet: int) -> np.ndarray:
        """channel_histograms of the zigzag residuals of every frame's levels (as
        residual_counts takes them)."""
        return self.channel_histograms(self._all_residuals(lvls, positions, tps), d, alphabet)

    def symbol_counts(self, u: np.ndarray) -> np.ndarray:
        """Counts of min(u, 2^16) for zigzag indices u (np.bincount's: up to the largest)."""
        return np.bincount(np.minimum(u, 1 << 16))

    def residual_counts(self, lvls: list, positions: list, tps) -> np.ndarray:
        """symbol_counts of the zigzag residuals (zigzag_residuals) of every frame's levels
        ``lvls`` (kept ``positions``) under ``tps``'s predictor, taken together."""
        return self.symbol_counts(self._all_residuals(lvls, positions, tps))

    def predictor_counts(self, lvls: list, positions: list, tps, predictors) -> list:
        """residual_counts of the frames' levels under each predictor of ``predictors``
        (tps's other fields as given): the predictor choice of Annex B.4."""
        return [self.residual_counts(lvls, positions, {**tps, "predictor": p})
                for p in predictors]

    def _all_residuals(self, lvls: list, positions: list, tps) -> np.ndarray:
        """The frames' zigzag residuals (zigzag_residuals), concatenated."""
        return np.concatenate([self.zigzag_residuals(lv, pos, tps).ravel()
                               for lv, pos in zip(lvls, positions)] + [np.zeros(0, np.int64)])

    def channel_histograms(self, u: np.ndarray, d: int, alphabet: int) -> np.ndarray:
        """[d, alphabet] histograms of min(u, alphabet - 1), value i of channel i mod d."""
        channel = np.tile(np.arange(d), u.size // d)
        return histograms(np.minimum(u, alphabet - 1), channel, d, alphabet)

    def group_sum(self, hist: np.ndarray, hf: np.ndarray | None, group: np.ndarray,
                  t: int) -> np.ndarray:
        """Histograms summed per group [t, alphabet] as float64 (hf: hist as float64)."""
        return group_sum(hist.astype(np.float64) if hf is None else hf, group, t)

    def lloyd_groups(self, hist: np.ndarray, group: np.ndarray, t: int,
                     iters: int) -> np.ndarray:
        """The table grouping's Lloyd iterations (Annex B.3): give each channel the table
        that codes its histogram in the fewest bits, then re-estimate the tables from
        their channels; at most ``iters`` times, until no channel moves."""
        hf = hist.astype(np.float64)
        for _ in range(iters):
            ghist = self.group_sum(hist, hf, group, t)
            q = (ghist + 1e-3) / (ghist + 1e-3).sum(axis=1, keepdims=True)
            new = self.table_argmin(hist, hf, q)     # least [channels, tables] bits
            if np.array_equal(new, group):
                break
            group = new
        return group

    def table_set(self, ghist: np.ndarray, prob_bits: int, escape_slot: bool):
        """(tables, bits, bound) of group histograms ghist [t, alphabet] (int64): table g
        normalizes ghist[g] up to its largest counted symbol (and the escape symbol past
        it, ``escape_slot``); bits: those of the counted symbols under the tables and of
        the tables themselves; bound: on the difference of bits from numpy's (0 here)."""
        freqs = []
        for h in ghist:
            used = int(np.flatnonzero(h).max()) + 1 if h.any() else 1
            used = min(used + 1, h.size) if escape_slot else used
            freqs.append(tables.normalize(h[:used], prob_bits))
        return freqs, tables_bits(ghist, freqs, prob_bits, 0), 0.0

    def group_tables(self, hist: np.ndarray, scale_key: np.ndarray, max_tables: int,
                     prob_bits: int, forced: int | None, escape_slot: bool = False):
        """Annex B.3's channel grouping and tables, (table_map or None, tables):
        table_fit.group_tables with these kernels' steps."""
        return group_tables(hist, scale_key, max_tables, prob_bits, forced, escape_slot,
                            kernels=self)

    def table_argmin(self, hist: np.ndarray, hf: np.ndarray, q: np.ndarray) -> np.ndarray:
        """The Lloyd step of the table grouping: each channel's table of least cost
        (hf: hist as float64; q: the tables' probabilities [tables, alphabet])."""
        cost = hf @ -np.log2(q).T                       # [channels, tables] bits
        return np.argmin(cost, axis=1)


NUMPY_KERNELS = FitKernels()
