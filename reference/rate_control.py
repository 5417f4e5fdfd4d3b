"""Rate control and quantization of quantized tracks (Annex B.1, informative), with
their predictor choice (B.4).

``QuantizedFit`` is the part of ``encoder.TrackEncoder`` that fits a quantized track:
per-channel step offsets, the deadzone of the closed-loop quantizer, the qp that meets
``qp`` / ``bpv`` / ``target_cos`` (and the reference norm between two qp), the predictor
of smallest estimated size, the alphabet and the tables (through ``table_fit``, B.3).
It works on the TrackEncoder's state (``opts``, ``tps``, ``kernels``, ``positions``,
``transform``, ``d`` and ``dc``); the numeric steps go through ``kernels``
(``fit_kernels.FitKernels``).  The quantizers themselves are in ``quantization``.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from . import prediction, reconstruction
from . import transform as tr
from . import transform_fit
from .errors import TKBEncodeError
from .quantization import step_deltas_of_norms
from .table_fit import alphabet_size, channel_entropy_bits, entropy_bits, with_pseudo_counts

QP_MIN, QP_MAX = -144, 111
# the closed-loop quantizer's deadzones tried with a transform (B.1), the first the default
DEADZONES = (0.3125, 0.125, 0.0)
# per-channel step offsets round(tilt x log2(rms / median rms)) (B.1): coarser steps for
# strong channels without a transform (option), finer ones for strong coefficients with
# one (the default there, B.7)
STEP_TILT, STEP_TILT_TRANSFORM = 3, -2
FINE_STEPS = 6


def _largest_true(ok, lo: int, hi: int) -> int:
    """Largest q in [lo, hi] with ok(q), for ok true below some threshold."""
    if not ok(lo):
        raise TKBEncodeError("the target cannot be met at any quality")
    if ok(hi):
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _joined(arrs: list) -> np.ndarray:
    """The arrays concatenated along their first axis (one array: itself, not a copy)."""
    return arrs[0] if len(arrs) == 1 else np.concatenate(arrs)


class QuantizedFit:
    """Annex B.1 and B.4 for ``encoder.TrackEncoder`` (a base class of it)."""

    def token_step_deltas(self, norms: np.ndarray, qp: int) -> np.ndarray:
        """token_step_delta of tokens of norms ``norms`` (token_norms) at qp (Annex B.1)."""
        if not self.opts.token_scale:
            return np.zeros(norms.shape[0], dtype=np.int64)
        return step_deltas_of_norms(norms, self.norm_ref, *self.delta_bounds(qp))

    def delta_bounds(self, qp: int) -> tuple[int, int]:
        """The range of token_step_delta that keeps every channel's step code + delta
        within 0..255 (and the delta an int8) at qp."""
        sc = self._step_codes(qp)
        return max(-128, -int(sc.min())), min(127, 255 - int(sc.max()))

    def _step_codes(self, qp: int) -> np.ndarray:
        """step_code of every channel at qp (clause 6.3.2)."""
        return np.clip(qp + reconstruction.STEP_CODE_UNITY + self.chan_offset, 0, 255)

    def _quantize(self, xf: np.ndarray, qp: int, norms: np.ndarray | None = None,
                  pred: np.ndarray | None = None, want_codes: bool = True):
        """Levels, step codes [K, C] and token_step_delta [K] of kept tokens at qp; xf: the
        coded values (channels, or coefficients with a transform, clause 7.6.3); norms:
        the tokens' norms in channels (default: of xf), which set the token step deltas
        (the fidelity measured is the cosine of the channels, Annex B.1); pred: each
        row's predicting row or -1 (``predictor_rows``; default: none), used by the
        closed-loop quantizer (a deadzone, Annex B.1); want_codes False: the step codes
        may be returned as None."""
        if norms is None:
            norms = (self.kernels.token_norms(xf) if self.opts.token_scale
                     else np.zeros(xf.shape[0]))
        delta = self.token_step_deltas(norms, qp)
        if not (want_codes or self.closed_loop or self.transform is not None):
            return self.kernels.quantize_rows(xf, self._step_codes(qp), delta), None, delta
        codes = self._step_codes(qp)[None, :] + delta[:, None]
        lim = None
        if self.transform is not None:   # coefficient values within 2^24 - 1 (7.6.3)
            lim = transform_fit.max_levels(codes, self.transform.coeff_frac_bits)
        if self.closed_loop:
            if pred is None:
                pred = np.full(xf.shape[0], -1, dtype=np.int64)
            return (self.kernels.quantize_closed_loop(xf, codes, pred, self.deadzone, lim),
                    codes, delta)
        lv = self.kernels.quantize_levels(xf, codes)
        if lim is not None:
            lv = np.clip(lv, -lim, lim)
        return lv, codes, delta

    def predictor_rows(self, positions_list, predictor: int | None = None) -> np.ndarray:
        """The predicting row (clause 7.5) of every kept token of frames with kept
        ``positions_list``, rows numbered across the frames in order (-1: none)."""
        tps = self.tps if predictor is None else {**self.tps, "predictor": predictor}
        out, base = [], 0
        for pos in positions_list:
            p = prediction.predictor_rows(pos, tps)
            out.append(np.where(p >= 0, p + base, -1))
            base += len(pos)
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def coded_values(self, xf: np.ndarray) -> np.ndarray:
        """The values coded for kept tokens xf [K, D]: the channels, or their transform
        coefficients [K, num_coeffs] (Annex B.7) as float32."""
        if self.transform is None:
            return xf
        return transform_fit.forward(xf, self.transform, self.input_scale)

    def reconstruct(self, lv: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Decoded binary32 channels of levels at step codes (clauses 7.6.2, 7.6.3)."""
        if self.transform is None:
            return reconstruction.dequantize(lv, codes)
        return tr.reconstruct(lv, np.broadcast_to(codes, lv.shape), self.transform)

    def _fit_quant(self, arrs, pseudo: bool) -> None:
        o = self.opts
        self.xf = [self.kernels.kept_values(a, self.src, p)
                   for a, p in zip(arrs, self.positions)]
        if self.transform is not None:   # the forward transform's input scale (B.7)
            self.input_scale = transform_fit.input_scale(
                np.concatenate(self.xf) if self.xf else np.zeros((0, self.d)), self.transform)
        self.cf = [self.coded_values(x) for x in self.xf]
        allx, allc = _joined(self.xf), _joined(self.cf)
        self.norms = [self.kernels.token_norms(x) for x in self.xf]
        # the reference norm: the median of the token norms (B.1)
        norms = np.concatenate(self.norms) if self.norms else np.zeros(0)
        med = float(np.median(norms)) if norms.size else 0.0
        self.norm_ref = med if med > 0 else 1.0
        self.chan_offset = np.zeros(self.dc, dtype=np.int64)
        self.per_channel_steps = bool(o.per_channel_steps if o.per_channel_steps is not None
                                      else self.transform is not None)
        if self.per_channel_steps:
            rms = (np.sqrt((allc.astype(np.float64) ** 2).mean(axis=0)) + 1e-30 if len(allc)
                   else np.full(self.dc, np.nan))     # no kept token: offsets 0 below
            tilt = o.step_tilt if o.step_tilt is not None else (
                STEP_TILT_TRANSFORM if self.transform is not None else STEP_TILT)
            with np.errstate(invalid="ignore"):       # inf / inf (overflowing values): 0
                off = np.nan_to_num(np.round(tilt * np.log2(rms / np.median(rms))), nan=0.0)
            self.chan_offset = np.clip(off, -24, 24).astype(np.int64)
        self.deadzone = float(o.deadzone or 0.0)
        self._qp0 = {}       # this fit's open-loop qp by (predictor, norm_ref) (_closed_loop_fit)
        self.closed_loop = self.deadzone > 0 or (o.deadzone is None and
                                                 self.transform is not None)
        # predictor
        names = {"none": 0, "left": 1, "up": 2}
        if o.predictor == "auto":
            cands = [0, 1] + ([2] if self.tps["grid_present"] else [])
        else:
            if o.predictor not in names:
                raise TKBEncodeError(f"unknown predictor {o.predictor!r}")
            cands = [names[o.predictor]]
        if 2 in cands and not self.tps["grid_present"]:
            raise TKBEncodeError("predictor 'up' needs a grid")
        if self.closed_loop and o.deadzone is None:
            # the deadzone of DEADZONES whose residuals cost least (estimated per coded
            # channel): large ones pay at low rates, small ones at high rates (B.1)
            ref0, best = self.norm_ref, None
            for z in DEADZONES:
                self.deadzone, self.norm_ref = z, ref0
                fit = self._closed_loop_fit(allx, allc, cands)
                u = fit[2]
                ch = np.tile(np.arange(self.dc), u.size // self.dc)
                est = channel_entropy_bits(u, ch, self.dc)
                if best is None or est < best[0]:
                    best = (est, z, self.norm_ref, self.tps["predictor"], fit)
            _, self.deadzone, self.norm_ref, self.tps["predictor"], fit = best
            qp, quantized, u, us = fit
        elif self.closed_loop:
            qp, quantized, u, us = self._closed_loop_fit(allx, allc, cands)
        else:
            qp = self._choose_qp(allx, allc)
            quantized = [self._quantize(c, qp, n, want_codes=False)
                         for c, n in zip(self.cf, self.norms)]
            lvls = [q[0] for q in quantized]
            best = None
            # the predictor of least order-0 entropy estimate (B.4)
            for p, counts in zip(cands, self.kernels.predictor_counts(lvls, self.positions,
                                                                      self.tps, cands)):
                est = entropy_bits(counts)
                if best is None or est < best[0]:
                    best = (est, p, counts)
            _, self.tps["predictor"], counts = best
        self.qp = qp
        # the frames' step deltas and levels, reused when the same frames are coded
        self._fitted = [(q[2], q[0]) for q in quantized]
        self.tps["per_channel_steps"] = int(self.per_channel_steps)
        sc = self._step_codes(qp)
        self.tps["step_code"] = (sc if self.per_channel_steps else sc[:1]).astype(np.uint8)
        # alphabet: escape the rarest 0.01 % (at least values beyond 4094)
        if self.closed_loop:        # (the residuals u are at hand)
            alphabet = alphabet_size(self.kernels.symbol_counts(u), u.size)
            hist = self.kernels.channel_histograms(u, self.dc, alphabet)
        else:                       # (counts: the chosen predictor's)
            alphabet = alphabet_size(counts, sum(q[0].size for q in quantized))
            hist = self.kernels.residual_histograms([q[0] for q in quantized], self.positions,
                                                    self.tps, self.dc, alphabet)
        pb = self._prob_bits(alphabet)
        self.tps["prob_bits"] = pb
        key = (hist * np.arange(alphabet)).sum(axis=1) / np.maximum(hist.sum(axis=1), 1)
        tmap, freqs = self.kernels.group_tables(hist, key, self.level.max_tables, pb,
                                                o.num_tables, escape_slot=True)
        if pseudo:  # a streaming table must code any symbol up to ESC
            freqs = with_pseudo_counts(freqs, hist, tmap, alphabet, pb)
        self._set_tables(tmap, freqs)

    def _choose_qp(self, allx: np.ndarray, allc: np.ndarray, near: int | None = None) -> int:
        """The track's qp (Annex B.1); ``near``: with ``target_cos``, a qp close to the
        answer (the open-loop one, for the closed-loop quantizer): the search walks from
        it a qp at a time instead of bisecting."""
        o = self.opts
        if o.qp is not None:
            return int(o.qp)
        if o.bpv is not None:
            # the smallest qp (finest step) whose stream fits in bpv bits per value
            return -_largest_true(lambda nq: self._trial_bpv(-nq) <= o.bpv,
                                  -(QP_MAX - 24), -(QP_MIN + 60))
        target = o.target_cos if o.target_cos is not None else 0.99
        if allx.size == 0:      # nothing kept: any step will do
            return 0
        allnorms = np.concatenate(self.norms)

        pred = self.predictor_rows(self.positions) if self.closed_loop else None

        def ok(qp):
            return self.kernels.reaches(self, allx, allc, qp, allnorms, pred, target)
        lo, hi = QP_MIN + 60, QP_MAX - 24
        if near is not None:
            q = min(max(int(near), lo), hi)
            if ok(q):
                while q < hi and ok(q + 1):
                    q += 1
                return q
            while q > lo:
                q -= 1
                if ok(q):
                    return q
        if self.transform is not None and (near is not None or not ok(lo)):
            raise TKBEncodeError(f"mean token cosine {target} is out of reach with this "
                                 f"transform ({self.transform.num_coeffs} of "
                                 f"{self.d} coefficients): fit one with more coefficients")
        if near is not None:
            raise TKBEncodeError("the target cannot be met at any quality")
        return _largest_true(ok, lo, hi)

    def _closed_loop_fit(self, allx, allc, cands):
        """qp, quantized frames and zigzag residuals with the closed-loop quantizer (Annex
        B.1): the predictor is chosen by the open-loop levels at the open-loop qp (as
        without a deadzone), then qp is searched again with the closed loop."""
        # the open-loop qp depends on the predictor (the rows the closed loop follows) and
        # the reference norm only: kept for the next deadzone's fit when both are the same
        key = (self.tps.get("predictor"), self.norm_ref)
        cache = self._qp0
        if key not in cache:
            saved, self.deadzone = self.deadzone, 0.0
            cache[key] = self._choose_qp(allx, allc)
            self.deadzone = saved
        qp0 = cache[key]
        best = None
        for p in cands:
            self.tps["predictor"] = p
            u = np.concatenate([self.kernels.zigzag_residuals(
                self._quantize(c, qp0, n, prediction.predictor_rows(pos, self.tps))[0],
                pos, self.tps).ravel()
                for c, n, pos in zip(self.cf, self.norms, self.positions)]
                + [np.zeros(0, np.int64)])
            est = self.kernels.symbol_entropy(u)
            if best is None or est < best[0]:
                best = (est, p)
        self.tps["predictor"] = best[1]
        qp = self._choose_qp(allx, allc, near=qp0)
        if FINE_STEPS and self.opts.qp is None and self.opts.bpv is None and self.opts.token_scale:
            self._fine_ref(allx, allc, qp)
        quantized = [self._quantize(c, qp, n, prediction.predictor_rows(pos, self.tps))
                     for c, n, pos in zip(self.cf, self.norms, self.positions)]
        us = [self.kernels.zigzag_residuals(q[0], pos, self.tps)
              for q, pos in zip(quantized, self.positions)]
        u = np.concatenate([x.ravel() for x in us]) if us else np.zeros(0, np.int64)
        return qp, quantized, u, us

    def _fine_ref(self, allx, allc, qp: int) -> None:
        """Between qp and qp + 1 (Annex B.1): the largest b in 0 .. 1 (FINE_STEPS
        bisection steps) at which the target cosine still holds with the token step deltas
        taken against the reference norm ref 2^(-b/6), so that tokens whose
        6 log2(|x| / ref) lies within b below a rounding boundary get the next coarser
        step; sets norm_ref."""
        target = self.opts.target_cos if self.opts.target_cos is not None else 0.99
        allnorms = np.concatenate(self.norms)
        pred = self.predictor_rows(self.positions) if self.closed_loop else None
        ref0 = self.norm_ref

        def ok(b):
            self.norm_ref = ref0 * 2.0 ** (-b / 64 / 6)
            return self.kernels.reaches(self, allx, allc, qp, allnorms, pred, target)
        lo, hi = 0, 64
        for _ in range(FINE_STEPS):
            mid = (lo + hi) // 2
            if ok(mid):
                lo = mid
            else:
                hi = mid
        self.norm_ref = ref0 * 2.0 ** (-lo / 64 / 6)

    def _trial_bpv(self, qp: int) -> float:
        trial = type(self)(self._frames, replace(self.opts, qp=qp, bpv=None), self.level,
                           kernels=self.kernels, positions=self.positions)
        # stream header, parameter set unit, frame units, index unit (12 bytes per entry)
        size = 16 + len(trial.tps_payload) + 12 + 16 + sum(
            len(trial.encode_frame(f, i, p)) + 12 + 12
            for i, (f, p) in enumerate(zip(self._frames, trial.positions)))
        return 8 * size / sum(np.asarray(f).size for f in self._frames)
