"""tokenbits.native.encoder: the frame coder of libtkb's encoder core (ctypes).

The Python reference encoder fits each track (Annex B: rate control, qp search,
predictor, tables, lanes, transform; ``tokenbits.encoder.TrackEncoder``); this module
then codes the track's frames with the C core of ``native/src/enc_*.c``
(``native/include/tkb_enc.h``): input conversion, token norms, the forward transform
(B.7), quantization by rounding or by the closed-loop deadzone quantizer (B.1),
prediction residuals (7.5), zigzag symbols and escapes (7.4), split symbols of lossless
tracks (7.4.2) and interleaved rANS (7.3).  The payloads are byte-identical to
``TrackEncoder.encode_frame``.

What stays in Python (numpy), per frame: the kept positions (pruning selection, B.2),
merge maps and ``merge_tokens`` (B.2), the predictor rows (7.5), the token step deltas
from the C norms (6 log2 of a norm ratio, Annex B.1: numpy's log2, so that the rounding
is numpy's) and the frame payload syntax (6.4).

The track fit itself (``TrackEncoder``: qp search, predictor, tables) is the reference's
Python logic; ``backend="native"`` passes it :func:`fit_kernels`, libtkb's C for its numeric
steps (``native/src/enc_fit.c``; see :class:`_NativeFitKernels`), which give numpy's values
or numpy's decisions bit for bit.

A track the core cannot code falls back to the reference (``TrackEncoder.encode_frame``)
with a :class:`NativeFallbackWarning` naming the reason; :data:`fallbacks` records them.
"""
from __future__ import annotations

import ctypes as C
import threading
import warnings

import numpy as np

from tokenbits.errors import TKBEncodeError

ENC_OK, ENC_NOT_IN_TABLE, ENC_USAGE = 0, -1, -2
MAX_LANES = 4096

fallbacks: list = []            # (track description, reason) of tracks coded by the reference


class NativeFallbackWarning(UserWarning):
    """A track was coded by the reference encoder instead of libtkb's core."""


_enc = None
_enc_why = None


def _lib():
    """libtkb with the encoder core's signatures, or None (see :func:`available`)."""
    global _enc, _enc_why
    if _enc is not None or _enc_why is not None:
        return _enc
    from . import _bind, _load, available
    lib = _load()
    if lib is None:
        _enc_why = available()
        return None
    vp, sz, P = C.c_void_p, C.c_size_t, C.POINTER
    sig = {
        "tkb_enc_gather_f32": (C.c_int, [vp, C.c_int, sz, sz, vp, sz, vp]),
        "tkb_enc_token_norms": (None, [vp, sz, sz, vp]),
        "tkb_enc_inv_step": (C.c_float, [C.c_int]),
        "tkb_enc_forward": (C.c_int, [vp, sz, sz, vp, C.c_double, vp, sz, C.c_double, vp]),
        "tkb_enc_quantize": (C.c_int, [vp, sz, sz, vp, vp, vp, vp, C.c_float, vp, vp, vp,
                                       P(sz), vp]),
        "tkb_enc_residual_symbols": (C.c_int, [vp, sz, sz, vp, vp, vp, vp, P(sz)]),
        "tkb_enc_split": (C.c_int, [vp, C.c_int, sz, sz, vp, sz, vp, C.c_int, C.c_uint,
                                    vp, vp]),
        "tkb_enc_rans": (C.c_int, [vp, sz, sz, vp, vp, vp, C.c_uint32, C.c_uint32,
                                   C.c_uint32, C.c_uint32, vp, P(sz), vp]),
        "tkb_enc_simd_name": (C.c_char_p, []),
        "tkb_enc_crc32c": (C.c_uint32, [C.c_char_p, sz]),
        "tkb_enc_levels": (C.c_int, [vp, vp, sz, vp]),
        "tkb_enc_levels_rows": (C.c_int, [vp, sz, sz, vp, vp, vp]),
        "tkb_enc_trial_cosine": (C.c_int, [vp, sz, sz, vp, vp, C.c_int, C.c_int,
                                           C.c_double, P(C.c_double), P(C.c_double)]),
        "tkb_enc_residuals": (C.c_int, [vp, sz, sz, vp, vp]),
        "tkb_enc_row_stats": (C.c_int, [vp, sz, sz, vp, vp]),
        "tkb_enc_trial_certificate": (C.c_int, [vp, vp, sz, sz, vp, vp, C.c_int,
                                                P(C.c_double), P(C.c_int64)]),
        "tkb_enc_histogram": (C.c_int, [vp, sz, sz, C.c_int64, vp]),
        "tkb_enc_residual_histograms": (C.c_int, [vp, sz, sz, vp, C.c_int64, vp]),
        "tkb_enc_predictor_histograms": (C.c_int, [vp, sz, sz, vp, sz, C.c_int64, vp, vp,
                                                   vp]),
        "tkb_enc_table_argmin": (C.c_long, [vp, sz, sz, vp, sz, vp]),
        "tkb_enc_group_sum": (C.c_int, [vp, sz, sz, vp, sz, vp]),
        "tkb_enc_lloyd": (C.c_long, [vp, sz, sz, vp, sz, C.c_long]),
        "tkb_enc_group_tables": (C.c_int, [vp, sz, sz, vp, vp, sz, C.c_uint, C.c_int, vp,
                                           P(C.c_int64), vp, vp]),
        "tkb_enc_normalize_tables": (C.c_int, [vp, sz, sz, C.c_uint, C.c_int, vp, vp, vp]),
        "tkb_enc_tables_bits": (C.c_int, [vp, sz, sz, vp, vp, C.c_uint, P(C.c_double),
                                          P(C.c_double), P(C.c_int64)]),
        "tkb_enc_levels_closed": (C.c_int, [vp, sz, sz, vp, vp, vp, C.c_float, vp]),
    }
    missing = _bind(lib, sig)
    if missing:
        _enc_why = f"this libtkb has no encoder core (rebuild it: make native): {missing}"
        return None
    _enc = lib
    return lib


def available() -> str | None:
    """None when libtkb's encoder core can run here, else why not."""
    _lib()
    return _enc_why


def simd() -> str:
    lib = _lib()
    return lib.tkb_enc_simd_name().decode() if lib else "-"


def _p(a):
    """The address of array ``a``'s data (None: NULL); the caller keeps ``a`` alive."""
    return a.ctypes.data if a is not None else None


def _check(rc: int, what: str) -> None:
    if rc == ENC_NOT_IN_TABLE:
        from tokenbits.encoder import SYMBOL_NOT_IN_TABLE
        raise TKBEncodeError(SYMBOL_NOT_IN_TABLE)
    if rc != ENC_OK:
        raise RuntimeError(f"libtkb encoder core: {what} refused its arguments ({rc})")


# -- the C core, one call per tool ----------------------------------------------------

def crc32c(data: bytes) -> int:
    """CRC-32C (clause 3.4) of ``data`` (bytes) by libtkb (SSE4.2, else tables): the value
    of the reference's ``tokenbits.crc32c.crc32c``."""
    data = data if isinstance(data, bytes) else bytes(data)
    return _lib().tkb_enc_crc32c(data, len(data))


def gather_f32(a: np.ndarray, src: str, pos: np.ndarray) -> np.ndarray:
    """Kept rows of frame ``a`` [N, D] as float32 [K, D] (exact conversions)."""
    a = np.ascontiguousarray(a)
    code = {np.dtype(np.float32): 0, np.dtype(np.float16): 1}.get(a.dtype)
    if src == "bfloat16" and a.dtype == np.uint16:
        code = 2
    if code is None:                          # e.g. float64 input: as the reference does
        a, code = np.ascontiguousarray(a.astype(np.float32)), 0
    pos = np.ascontiguousarray(pos, dtype=np.uint32)
    n, d = a.shape
    out = np.empty((pos.size, d), dtype=np.float32)
    _check(_lib().tkb_enc_gather_f32(_p(a), code, n, d, _p(pos), pos.size, _p(out)), "gather")
    return out


def token_norms(xf: np.ndarray) -> np.ndarray:
    xf = np.ascontiguousarray(xf, dtype=np.float32)
    out = np.empty(xf.shape[0], dtype=np.float64)
    _lib().tkb_enc_token_norms(_p(xf), xf.shape[0], xf.shape[1], _p(out))
    return out


def forward(xf: np.ndarray, transform, a: int) -> np.ndarray:
    """transform_fit.forward in C (Annex B.7)."""
    from tokenbits import transform_fit
    m = transform_fit.forward_matrix(transform)
    xf = np.ascontiguousarray(xf, dtype=np.float32)
    mean = np.ascontiguousarray(transform.mean_real(), dtype=np.float64)
    p_int = np.ascontiguousarray(m.p_int, dtype=np.int64)
    k, d = xf.shape
    kc = p_int.shape[1]
    out = np.zeros((k, kc), dtype=np.float32)
    _check(_lib().tkb_enc_forward(_p(xf), k, d, _p(mean), 2.0 ** a, _p(p_int), kc,
                                  2.0 ** -(a + m.p), _p(out)), "forward")
    return out


class _Scratch(threading.local):
    """Work arrays of the frame coder kept from frame to frame (one set a thread): the
    symbols, escape values and rANS words of a frame live only until its payload is
    written, and a fresh array of a few MB costs more in page faults than the C pass
    that fills it."""

    def __init__(self):
        self.bufs = {}

    def get(self, name: str, n: int, dtype) -> np.ndarray:
        """An uninitialized array of n items of dtype, valid until the next get(name)."""
        nbytes = n * np.dtype(dtype).itemsize
        buf = self.bufs.get(name)
        if buf is None or buf.size < nbytes:
            buf = self.bufs[name] = np.empty(max(nbytes, 1), dtype=np.uint8)
        return buf[:nbytes].view(dtype)


_scratch = _Scratch()


def _work(scratch: bool, name: str, n: int, dtype) -> np.ndarray:
    return _scratch.get(name, n, dtype) if scratch else np.empty(n, dtype=dtype)


def quantize(xc, code, delta, lim, pred, deadzone, esc):
    """(symbols uint32 [K*C], escape values int64, levels int32 [K, C])."""
    xc = np.ascontiguousarray(xc, dtype=np.float32)
    k, c = xc.shape
    code = np.ascontiguousarray(code, dtype=np.uint8)
    delta = np.ascontiguousarray(delta, dtype=np.int32)
    lim = None if lim is None else np.ascontiguousarray(lim, dtype=np.int64)
    pred = np.ascontiguousarray(pred, dtype=np.int64)
    esc = np.ascontiguousarray(esc, dtype=np.uint32)
    sym = np.empty(k * c, dtype=np.uint32)
    escapes = np.empty(k * c, dtype=np.uint64)
    levels = np.empty((k, c), dtype=np.int32)
    ne = C.c_size_t(0)
    _check(_lib().tkb_enc_quantize(_p(xc), k, c, _p(code), _p(delta), _p(lim), _p(pred),
                                   float(deadzone), _p(esc), _p(sym), _p(escapes),
                                   C.byref(ne), _p(levels)), "quantize")
    return sym, escapes[:ne.value].astype(np.int64), levels


def levels32(lv: np.ndarray) -> np.ndarray | None:
    """Integer levels as a contiguous int32 array (the core's levels, |level| < 2^24; the
    fit's native kernels write them so), or None when a value lies beyond int32."""
    lv = np.asarray(lv)
    if lv.dtype == np.int32:
        return np.ascontiguousarray(lv)
    if lv.dtype.kind not in "iu" or (lv.size and (int(lv.min()) < -(1 << 31)
                                                  or int(lv.max()) >= 1 << 31)):
        return None
    return np.ascontiguousarray(lv, dtype=np.int32)


def residual_symbols(lv: np.ndarray, pred: np.ndarray, esc: np.ndarray,
                     scratch: bool = False):
    """(symbols uint32 [K*C], escape values int64) of the zigzag residuals (7.5, 7.4.1) of
    levels lv [K, C] (int32 range) against rows pred: the reference's
    ``TrackEncoder.escape_split`` of them, less its escape_bits.  ``scratch``: the
    symbols in the thread's work array (valid until the next such call)."""
    lv32 = levels32(lv)
    if lv32 is None:
        raise TKBEncodeError("a residual is too large to escape")
    lv = lv32
    k, c = lv.shape
    pred = np.ascontiguousarray(pred, dtype=np.int64)
    esc = np.ascontiguousarray(np.broadcast_to(esc, (c,)), dtype=np.uint32)
    sym = _work(scratch, "sym", k * c, np.uint32)
    escapes = _work(scratch, "escapes", k * c, np.uint64)
    ne = C.c_size_t(0)
    _check(_lib().tkb_enc_residual_symbols(_p(lv), k, c, _p(pred), _p(esc), _p(sym),
                                           _p(escapes), C.byref(ne)), "residual symbols")
    return sym, escapes[:ne.value].astype(np.int64)


def split(a: np.ndarray, width: int, pos, pred, raw_bits: int):
    """(symbols uint32, raw uint32) of split tracks (clause 7.4.2 in reverse)."""
    a = np.ascontiguousarray(a)
    n, d = a.shape
    pos = np.ascontiguousarray(pos, dtype=np.uint32)
    pr = None if pred is None else np.ascontiguousarray(pred, dtype=np.int64)
    sym = np.empty(pos.size * d, dtype=np.uint32)
    raw = np.empty(pos.size * d, dtype=np.uint32)
    _check(_lib().tkb_enc_split(_p(a), width, n, d, _p(pos), pos.size, _p(pr),
                                int(pred is not None), raw_bits, _p(sym), _p(raw)), "split")
    return sym, raw


def rans_encode(sym: np.ndarray, channels: int, tables, num_lanes: int, lane_steps: int,
                prob_bits: int, scratch: bool = False):
    """(words uint16, chunk_words uint32) of clause 7.3 (tables: _Tables); ``scratch``:
    the words in the thread's work array (valid until the next such call)."""
    sym = np.ascontiguousarray(sym, dtype=np.uint32)
    n = sym.size
    chunk = num_lanes * lane_steps
    chunks = -(-n // chunk) if n else 0
    words = _work(scratch, "words", n + 2 * num_lanes * chunks, np.uint16)
    cw = np.empty(chunks, dtype=np.uint32)
    nw = C.c_size_t(0)
    _check(_lib().tkb_enc_rans(_p(sym), n, channels, _p(tables.base), _p(tables.freq),
                               _p(tables.cum), tables.alph, num_lanes, lane_steps, prob_bits,
                               _p(words), C.byref(nw), _p(cw)), "rans")
    return words[:nw.value], cw


# -- the track fit's numeric steps (FitKernels) ---------------------------------------

def _fit_kernels_base():
    from tokenbits.fit_kernels import FitKernels
    return FitKernels


class _NativeFitKernels:
    """Mixin over ``tokenbits.fit_kernels.FitKernels``: the fit's numeric steps in libtkb's C
    (``native/src/enc_fit.c``), same values (integers; binary32 quantization) or same
    decisions (the mean cosine of the qp search and the table grouping's costs, summed
    by numpy in its own orders, are decided here only when a bound on the difference
    cannot flip the comparison; else numpy computes them, as the reference does).  Any
    case the C does not cover goes to numpy (the reference's own code).
    ``stats`` counts the steps taken by each side."""

    name = "native"

    def __init__(self):
        self.stats = {}
        self._rows = None       # (weakref to the qp search's tokens, key, row stats)
        self._hists = None      # predictor_counts' per-channel counts (_kept_histograms)

    def _n(self, key):
        self.stats[key] = self.stats.get(key, 0) + 1

    def crc32c(self, data):
        self._n("crc32c")
        return crc32c(data)

    def kept_values(self, a, src, pos):
        a = np.asarray(a)
        ok = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}.get(src)
        p = np.asarray(pos)
        if (ok is None or a.dtype != ok or a.ndim != 2 or p.ndim != 1
                or not np.issubdtype(p.dtype, np.integer)
                or (p.size and (p.min() < 0 or p.max() >= a.shape[0]))):
            return super().kept_values(a, src, pos)
        self._n("kept_values")
        return gather_f32(a, src, p)

    def token_norms(self, xf):
        if xf.dtype != np.float32 or xf.ndim != 2:
            return super().token_norms(xf)
        self._n("token_norms")
        return token_norms(xf)

    def quantize_levels(self, xf, codes):
        xf = np.asarray(xf)
        if xf.dtype != np.float32 or np.shape(codes) != xf.shape:
            return super().quantize_levels(xf, codes)
        x = np.ascontiguousarray(xf)
        c = np.ascontiguousarray(codes, dtype=np.int64)
        lv = np.empty(x.shape, dtype=np.int64)
        if _lib().tkb_enc_levels(_p(x), _p(c), x.size, _p(lv)) != ENC_OK:
            return super().quantize_levels(xf, codes)      # NaN: numpy's result
        self._n("levels")
        return lv

    def quantize_rows(self, xf, step_codes, delta):
        xf = np.asarray(xf)
        if (xf.dtype != np.float32 or xf.ndim != 2 or np.shape(step_codes) != xf.shape[1:]
                or np.shape(delta) != xf.shape[:1]):
            return super().quantize_rows(xf, step_codes, delta)
        x = np.ascontiguousarray(xf)
        c = np.ascontiguousarray(step_codes, dtype=np.int64)
        dl = np.ascontiguousarray(delta, dtype=np.int64)
        lv = np.empty(x.shape, dtype=np.int32)       # |level| < 2^24: the same values
        if _lib().tkb_enc_levels_rows(_p(x), x.shape[0], x.shape[1], _p(c), _p(dl),
                                      _p(lv)) != ENC_OK:
            return super().quantize_rows(xf, step_codes, delta)   # NaN: numpy's result
        self._n("levels")
        return lv

    def quantize_closed_loop(self, xf, codes, pred, deadzone, lim):
        xf = np.asarray(xf)
        if (xf.dtype != np.float32 or xf.ndim != 2 or np.shape(codes) != xf.shape
                or (lim is not None and np.shape(lim) != xf.shape)
                or np.shape(pred) != xf.shape[:1]):
            return super().quantize_closed_loop(xf, codes, pred, deadzone, lim)
        x = np.ascontiguousarray(xf)
        c = np.ascontiguousarray(codes, dtype=np.int64)
        li = None if lim is None else np.ascontiguousarray(lim, dtype=np.int64)
        pr = np.ascontiguousarray(pred, dtype=np.int64)
        lv = np.empty(x.shape, dtype=np.int64)
        if _lib().tkb_enc_levels_closed(_p(x), x.shape[0], x.shape[1], _p(c), _p(li), _p(pr),
                                        float(np.float32(deadzone)), _p(lv)) != ENC_OK:
            return super().quantize_closed_loop(xf, codes, pred, deadzone, lim)
        self._n("levels_closed")
        return lv

    def reaches(self, te, allx, allc, qp, allnorms, pred, target):
        od = te.tps["output_dtype"]
        if (te.closed_loop or te.transform is not None or od not in (0, 1, 2)
                or allc.dtype != np.float32 or allc.ndim != 2 or allc.shape != allx.shape):
            self._n("reaches_numpy")
            return super().reaches(te, allx, allc, qp, allnorms, pred, target)
        delta = np.ascontiguousarray(te.token_step_deltas(allnorms, qp), dtype=np.int32)
        sc = te._step_codes(qp)
        code = np.ascontiguousarray(sc, dtype=np.uint8)
        x = np.ascontiguousarray(allc)
        decided = self._certificate(x, code, delta, od, target)
        if decided is not None:
            return decided
        mean, bound = C.c_double(0), C.c_double(0)
        for fast in (1, 0):     # binary32 sums (bound ~1e-5), then binary64 (~1e-12);
            # stopping early when the tokens so far put the mean below the target
            rc = _lib().tkb_enc_trial_cosine(_p(x), x.shape[0], x.shape[1], _p(code),
                                             _p(delta), od, fast, float(target),
                                             C.byref(mean), C.byref(bound))
            if rc == ENC_OK and abs(mean.value - target) > bound.value:
                self._n("reaches_c" if fast else "reaches_c_exact")
                return mean.value >= target
        self._n("reaches_numpy")
        return super().reaches(te, allx, allc, qp, allnorms, pred, target)

    def _row_stats(self, x):
        """(squares summed, largest magnitude) of each token of x (tkb_enc_row_stats),
        kept for the qp search's next trials on the same array; None: not finite."""
        key = (x.ctypes.data, x.shape)
        c = self._rows
        if c is not None and c[0]() is x and c[1] == key:
            return c[2]
        sq = np.empty(x.shape[0], dtype=np.float64)
        mx = np.empty(x.shape[0], dtype=np.float32)
        ok = _lib().tkb_enc_row_stats(_p(x), x.shape[0], x.shape[1], _p(sq), _p(mx)) == ENC_OK
        stats = (sq, mx) if ok else None
        import weakref
        self._rows = (weakref.ref(x), key, stats)
        return stats

    def _certificate(self, x, code, delta, od, target):
        """The qp search's trial decided from the tokens' row statistics alone
        (tkb_enc_trial_certificate), or None: every level 0 (numpy's mean is then exactly
        the share of zero tokens), or a lower bound on the exact mean cosine that exceeds
        the target by more than numpy's rounding (tkb_enc_trial_cosine's bound)."""
        k, d = x.shape
        if k == 0 or d == 0:
            return None
        stats = self._row_stats(x)
        if stats is None:
            return None
        lower, zeros = C.c_double(0), C.c_int64(0)
        rc = _lib().tkb_enc_trial_certificate(_p(stats[0]), _p(stats[1]), k, d, _p(code),
                                              _p(delta), od, C.byref(lower), C.byref(zeros))
        if rc == 2:
            self._n("reaches_zero")
            return zeros.value / k >= target
        if rc == ENC_OK and lower.value - numpy_cosine_bound(k, d) > target:
            self._n("reaches_bound")
            return True
        return None

    def zigzag_residuals(self, lv, pos, tps):
        if lv.dtype != np.int64 or lv.ndim != 2:
            return super().zigzag_residuals(lv, pos, tps)
        from tokenbits import prediction
        pred = np.ascontiguousarray(prediction.predictor_rows(pos, tps), dtype=np.int64)
        lv = np.ascontiguousarray(lv)
        u = np.empty(lv.shape, dtype=np.int64)
        _check(_lib().tkb_enc_residuals(_p(lv), lv.shape[0], lv.shape[1], _p(pred), _p(u)),
               "residuals")
        self._n("residuals")
        return u

    def symbol_counts(self, u):
        u = np.ascontiguousarray(u, dtype=np.int64)
        if u.size == 0:
            return super().symbol_counts(u)
        h = np.zeros(SYMBOL_CAP + 1, dtype=np.int64)
        if _lib().tkb_enc_histogram(_p(u), u.size, 0, SYMBOL_CAP, _p(h)) != ENC_OK:
            return super().symbol_counts(u)               # negative values: numpy's error
        self._n("counts")
        return _bincount_length(h)

    def _residual_pass(self, fn, lvls, positions, tps, cap, h, what):
        """fn (a C pass over residuals of levels) of every frame, into h; False: numpy's."""
        from tokenbits import prediction
        l32 = self._levels32(lvls)
        if l32 is None:
            return False
        for lv, pos in zip(l32, positions):
            pred = np.ascontiguousarray(prediction.predictor_rows(pos, tps), dtype=np.int64)
            _check(fn(_p(lv), lv.shape[0], lv.shape[1], _p(pred), cap, _p(h)), what)
        self._n(what)
        return True

    @staticmethod
    def _levels32(lvls):
        """The frames' levels [K, C] as int32 arrays (levels32), or None (numpy's path)."""
        if not lvls or any(np.ndim(lv) != 2 for lv in lvls):
            return None
        l32 = [levels32(lv) for lv in lvls]
        return None if any(lv is None for lv in l32) else l32

    def _predictor_histograms(self, lvls, positions, tps, predictors):
        """The counts of residual_counts under each predictor and, kept for
        residual_histograms, each predictor's per-channel counts of min(u, PH_BINS - 1)
        (tkb_enc_predictor_histograms: one C pass), or None (the other paths)."""
        import weakref
        from tokenbits import prediction
        m = len(predictors)
        l32 = self._levels32(lvls)
        if l32 is None or not 1 <= m <= 4 or len({lv.shape[1] for lv in l32}) != 1:
            return None
        c = l32[0].shape[1]
        hist = None
        bigs = [[] for _ in range(m)]
        preds = []
        for lv, pos in zip(l32, positions):
            pred = np.ascontiguousarray(np.stack([
                prediction.predictor_rows(pos, {**tps, "predictor": p}) for p in predictors]),
                dtype=np.int64)
            preds.append(pred)
            # the counts and the list in the thread's work arrays (no page faults)
            cnt = _work(True, "ph_counts", m * c * PH_BINS, np.uint32).reshape(m, c, PH_BINS)
            big = _work(True, "ph_big", m * max(lv.size, 1), np.uint32).reshape(m, -1)
            nb = np.zeros(m, dtype=np.uintp)
            _check(_lib().tkb_enc_predictor_histograms(_p(lv), lv.shape[0], c, _p(pred), m,
                                                        SYMBOL_CAP, _p(cnt), _p(big),
                                                        _p(nb)), "predictor_histograms")
            hist = cnt.astype(np.int64) if hist is None else hist + cnt
            for g in range(m):
                bigs[g].append(big[g, :nb[g]].copy())
        if hist is None:
            return None
        counts = []
        low = hist[:, :, :PH_BINS - 1].sum(axis=1)
        for g in range(m):
            b = np.concatenate(bigs[g])
            h = np.zeros(max(PH_BINS - 1, int(b.max()) + 1 if b.size else 0), dtype=np.int64)
            h[:PH_BINS - 1] = low[g]
            if b.size:
                h += np.bincount(b, minlength=h.size)
            counts.append(_bincount_length(h))
        self._hists = ([weakref.ref(lv) for lv in lvls], list(predictors), preds, hist)
        self._n("predictor_histograms")
        return counts

    def residual_counts(self, lvls, positions, tps):
        counts = self._predictor_histograms(lvls, positions, tps, [tps["predictor"]])
        return super().residual_counts(lvls, positions, tps) if counts is None else counts[0]

    def predictor_counts(self, lvls, positions, tps, predictors):
        counts = self._predictor_histograms(lvls, positions, tps, list(predictors))
        return (super().predictor_counts(lvls, positions, tps, predictors) if counts is None
                else counts)

    def _kept_histograms(self, lvls, positions, tps, d, alphabet):
        """residual_histograms from the counts predictor_counts kept: the same level
        arrays, the same predictor rows, alphabet <= PH_BINS; else None."""
        from tokenbits import prediction
        kept, self._hists = getattr(self, "_hists", None), None
        if kept is None or not 1 <= alphabet <= PH_BINS:
            return None
        refs, predictors, preds, hist = kept
        p = tps.get("predictor")
        if (p not in predictors or len(refs) != len(lvls) or hist.shape[1] != d
                or any(r() is not lv for r, lv in zip(refs, lvls))):
            return None
        g = predictors.index(p)
        if any(not np.array_equal(prediction.predictor_rows(pos, tps), pr[g])
               for pos, pr in zip(positions, preds)):
            return None
        h = hist[g, :, :alphabet].copy()
        h[:, alphabet - 1] = hist[g, :, alphabet - 1:].sum(axis=1)
        self._n("residual_histograms_kept")
        return h

    def residual_histograms(self, lvls, positions, tps, d, alphabet):
        kept = self._kept_histograms(lvls, positions, tps, d, alphabet)
        if kept is not None:
            return kept
        h = np.zeros((d, alphabet), dtype=np.int64)
        if (alphabet < 1 or any(lv.shape[1:] != (d,) for lv in lvls)
                or not self._residual_pass(_lib().tkb_enc_residual_histograms, lvls,
                                           positions, tps, alphabet - 1, h,
                                           "residual_histograms")):
            return super().residual_histograms(lvls, positions, tps, d, alphabet)
        return h

    def channel_histograms(self, u, d, alphabet):
        u = np.ascontiguousarray(u, dtype=np.int64)
        if d <= 0 or alphabet < 1:
            return super().channel_histograms(u, d, alphabet)
        n = (u.size // d) * d                          # np.tile covers whole rows only
        h = np.zeros((d, alphabet), dtype=np.int64)
        if n != u.size or _lib().tkb_enc_histogram(_p(u), n, d, alphabet - 1, _p(h)) != ENC_OK:
            return super().channel_histograms(u, d, alphabet)
        self._n("histograms")
        return h

    def group_sum(self, hist, hf, group, t):
        hist = np.ascontiguousarray(hist)
        group = np.ascontiguousarray(group, dtype=np.int64)
        if hist.dtype != np.int64 or hist.ndim != 2 or group.shape != hist.shape[:1] or t < 1:
            return super().group_sum(hist, hf, group, t)
        out = np.empty((t, hist.shape[1]), dtype=np.float64)
        if _lib().tkb_enc_group_sum(_p(hist), hist.shape[0], hist.shape[1], _p(group), t,
                                    _p(out)) != ENC_OK:
            return super().group_sum(hist, hf, group, t)
        self._n("group_sum")
        return out

    def table_argmin(self, hist, hf, q):
        hist = np.ascontiguousarray(hist)
        if hist.dtype != np.int64 or hist.ndim != 2 or q.ndim != 2 or q.shape[1] != hist.shape[1]:
            return super().table_argmin(hist, hf, q)
        nlq = np.ascontiguousarray(-np.log2(q))          # numpy's log2, as the reference's
        group = np.empty(hist.shape[0], dtype=np.int64)
        amb = _lib().tkb_enc_table_argmin(_p(hist), hist.shape[0], hist.shape[1], _p(nlq),
                                          nlq.shape[0], _p(group))
        if amb != 0:
            self._n("argmin_numpy")
            return super().table_argmin(hist, hf, q)
        self._n("argmin_c")
        return group

    def lloyd_groups(self, hist, group, t, iters):
        hist = np.ascontiguousarray(hist)
        if hist.dtype != np.int64 or hist.ndim != 2 or np.shape(group) != hist.shape[:1]:
            return super().lloyd_groups(hist, group, t, iters)
        g = np.array(group, dtype=np.int64)
        done = _lib().tkb_enc_lloyd(_p(hist), hist.shape[0], hist.shape[1], _p(g), t, iters)
        if done >= 0:
            self._n("lloyd_c")
            return g
        done = -done - 1                # steps taken here; the undecided one is numpy's
        self._n("lloyd_numpy")
        return super().lloyd_groups(hist, g, t, iters - done)

    def group_tables(self, hist, scale_key, max_tables, prob_bits, forced, escape_slot=False):
        """The whole grouping in C (tkb_enc_group_tables) when no step of it is too close
        to call; else the reference's steps (with this class's kernels)."""
        from tokenbits.table_fit import table_counts
        hist = np.ascontiguousarray(hist)
        cands = (table_counts(hist.shape[0], max_tables, forced) if hist.ndim == 2 else [])
        if (hist.dtype != np.int64 or hist.ndim != 2 or 0 in hist.shape or not cands
                or np.shape(scale_key) != hist.shape[:1] or max(cands) > hist.shape[0]):
            return super().group_tables(hist, scale_key, max_tables, prob_bits, forced,
                                        escape_slot)
        d, a = hist.shape
        order = np.ascontiguousarray(np.argsort(scale_key, kind="stable"), dtype=np.int64)
        cn = np.asarray(cands, dtype=np.int64)
        group = np.empty(d, dtype=np.int64)
        freq = np.empty((int(cn.max()), a), dtype=np.int64)
        used = np.empty(int(cn.max()), dtype=np.int64)
        tu = C.c_int64(0)
        rc = _lib().tkb_enc_group_tables(_p(hist), d, a, _p(order), _p(cn), cn.size,
                                         prob_bits, int(bool(escape_slot)), _p(group),
                                         C.byref(tu), _p(freq), _p(used))
        if rc != ENC_OK:
            self._n("group_tables_numpy")
            return super().group_tables(hist, scale_key, max_tables, prob_bits, forced,
                                        escape_slot)
        self._n("group_tables")
        t = tu.value
        return (group if t > 1 else None), [freq[g, :used[g]].copy() for g in range(t)]

    def table_set(self, ghist, prob_bits, escape_slot):
        ghist = np.ascontiguousarray(ghist)
        if ghist.dtype != np.int64 or ghist.ndim != 2 or ghist.shape[1] < 1:
            return super().table_set(ghist, prob_bits, escape_slot)
        t, a = ghist.shape
        freq = np.empty((t, a), dtype=np.int64)
        used = np.empty(t, dtype=np.int64)
        by_numpy = np.empty(t, dtype=np.uint8)
        lib = _lib()
        if lib.tkb_enc_normalize_tables(_p(ghist), t, a, prob_bits, int(bool(escape_slot)),
                                        _p(freq), _p(used), _p(by_numpy)) != ENC_OK:
            return super().table_set(ghist, prob_bits, escape_slot)
        from tokenbits import tables
        for g in np.flatnonzero(by_numpy):         # frequency taken away: numpy's normalize
            self._n("normalize_numpy")
            freq[g, :used[g]] = tables.normalize(ghist[g, :used[g]], prob_bits)
        bits, bound, tb = C.c_double(0), C.c_double(0), C.c_int64(0)
        if lib.tkb_enc_tables_bits(_p(ghist), t, a, _p(freq), _p(used), prob_bits,
                                   C.byref(bits), C.byref(bound), C.byref(tb)) != ENC_OK:
            return super().table_set(ghist, prob_bits, escape_slot)
        self._n("table_set")
        return ([freq[g, :used[g]].copy() for g in range(t)], bits.value + tb.value,
                bound.value)


SYMBOL_CAP = 1 << 16      # FitKernels.symbol_counts counts min(u, 2^16)
PH_BINS = 64              # tkb_enc_predictor_histograms' per-channel bins


def numpy_cosine_bound(k: int, d: int) -> float:
    """A bound on the difference between numpy's mean token cosine of k tokens of d
    channels (baselines.mean_token_cosine) and the exact one: 4 gamma_{d+2} + 4u per token,
    gamma_{k+2} + u for the mean, doubled (as tkb_enc_trial_cosine's)."""
    u = 2.0 ** -53

    def gamma(n):
        return n * u / (1 - n * u) if n * u < 0.5 else 1.0
    return 2.0 * (4.0 * gamma(d + 2) + gamma(k + 2) + 8.0 * u)


def _bincount_length(h: np.ndarray) -> np.ndarray:
    """Counts h cut after the largest counted value, as np.bincount returns them."""
    nz = np.flatnonzero(h)
    return h[:nz[-1] + 1] if nz.size else h[:0]


_native_kernels = None


def fit_kernels():
    """The fit's kernels with libtkb's C (a FitKernels), or None when the core is absent."""
    global _native_kernels
    if available() is not None:
        return None
    if _native_kernels is None:
        cls = type("NativeFitKernels", (_NativeFitKernels, _fit_kernels_base()), {})
        _native_kernels = cls()
    return _native_kernels


# -- the frame coder ------------------------------------------------------------------

class _Tables:
    """A fitted track's tables as the core reads them."""

    def __init__(self, te):
        self.alph = int(te.freq_all.shape[1])
        self.freq = np.ascontiguousarray(te.freq_all.ravel(), dtype=np.uint32)
        self.cum = np.ascontiguousarray(te.cum_all.ravel(), dtype=np.uint32)
        self.base = np.ascontiguousarray(te.chan_table * self.alph, dtype=np.uint32)


def unsupported(te) -> str | None:
    """Why the core cannot code this fitted track (then the reference does), or None."""
    why = available()
    if why is not None:
        return why
    t = te.tps
    if t["num_lanes"] > MAX_LANES:
        return f"num_lanes {t['num_lanes']} > {MAX_LANES}"
    if t["prob_bits"] > 16:
        return f"prob_bits {t['prob_bits']} > 16"
    return None


def encode_frame(te, a, frame_number: int, positions=None, tables=None) -> bytes:
    """The frame unit payload of frame ``a`` against fitted track ``te``: byte-identical
    to ``te.encode_frame(a, frame_number, positions)``."""
    from tokenbits import transform_fit
    a = te.check_frame(a)
    pos = te._positions(a) if positions is None else np.asarray(positions, np.uint32)
    tables = tables or _Tables(te)
    t = te.tps
    escapes = tdelta = raw = None
    if te.lossless:
        pred = te.predictor_rows([pos]) if t.get("predictor") else None
        if te.ids:
            src, width = a.astype(np.uint32), 32
        else:
            width = 32 if te.src == "float32" else 16
            src = a.view(np.uint32 if width == 32 else np.uint16)
        sym, raw = split(src, width, pos, pred, t["raw_bits"])
        d = te.d
    elif (fitted := te._fitted_frame(a, pos)) is not None:
        # a frame of the fit: its step deltas and levels (as the reference's encode_frame
        # takes them), their residuals split into symbols and escapes here
        tdelta, lv = fitted
        sym, escapes = residual_symbols(lv, te.predictor_rows([pos]), te.chan_esc,
                                        scratch=True)
        te.escape_bits(escapes)           # "too large to escape" before the table check
        d = te.dc
    else:
        m = te.merged(a, pos)
        xf = gather_f32(m, te.src, pos)
        if te.opts.token_scale:
            tdelta = te.token_step_deltas(token_norms(xf), te.qp)
        else:
            tdelta = np.zeros(pos.size, dtype=np.int64)
        xc = xf
        lim = None
        if te.transform is not None:
            xc = forward(xf, te.transform, te.input_scale)
            lim = transform_fit.max_levels(np.arange(256), te.transform.coeff_frac_bits)
        pred = te.predictor_rows([pos])
        deadzone = te.deadzone if te.closed_loop else -1.0
        sym, escapes, _ = quantize(xc, te._step_codes(te.qp), tdelta, lim, pred, deadzone,
                                   te.chan_esc)
        te.escape_bits(escapes)           # "too large to escape" before the table check
        d = te.dc
    words, cw = rans_encode(sym, d, tables, t["num_lanes"], t["lane_steps"], t["prob_bits"],
                            scratch=True)       # written into the payload below
    return te.frame_payload(frame_number, a.shape[0], pos, words, cw, tdelta=tdelta,
                            escapes=escapes, raw=raw, stand_ins=te.stand_ins(a, pos))


def encode_frames(te, frames: list) -> list:
    """Frame unit payloads of a fitted track's frames (the ``frame_coder`` of
    ``tokenbits.encoder.encode_tracks``): libtkb's core, or the reference for a track
    the core does not cover (:class:`NativeFallbackWarning`)."""
    why = unsupported(te)
    if why is not None:
        desc = f"{te.d} channels, coding_mode {te.tps['coding_mode']}"
        fallbacks.append((desc, why))
        warnings.warn(f"libtkb's encoder core cannot code this track ({why}): the reference "
                      "encoder codes it", NativeFallbackWarning, stacklevel=2)
        return [te.encode_frame(f, i, te.positions[i]) for i, f in enumerate(frames)]
    tables = _Tables(te)
    return [encode_frame(te, f, i, te.positions[i] if i < len(te.positions) else None, tables)
            for i, f in enumerate(frames)]
