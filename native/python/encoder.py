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

A track the core cannot code falls back to the reference (``TrackEncoder.encode_frame``)
with a :class:`NativeFallbackWarning` naming the reason; :data:`fallbacks` records them.
"""
from __future__ import annotations

import ctypes as C
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
    from . import _load, available
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
        "tkb_enc_split": (C.c_int, [vp, C.c_int, sz, sz, vp, sz, vp, C.c_int, C.c_uint,
                                    vp, vp]),
        "tkb_enc_rans": (C.c_int, [vp, sz, sz, vp, vp, vp, C.c_uint32, C.c_uint32,
                                   C.c_uint32, C.c_uint32, vp, P(sz), vp]),
        "tkb_enc_simd_name": (C.c_char_p, []),
    }
    try:
        for name, (res, args) in sig.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
    except AttributeError as e:
        _enc_why = f"this libtkb has no encoder core (rebuild it: make native): {e}"
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
    return a.ctypes.data_as(C.c_void_p) if a is not None else None


def _check(rc: int, what: str) -> None:
    if rc == ENC_NOT_IN_TABLE:
        from tokenbits.encoder import SYMBOL_NOT_IN_TABLE
        raise TKBEncodeError(SYMBOL_NOT_IN_TABLE)
    if rc != ENC_OK:
        raise RuntimeError(f"libtkb encoder core: {what} refused its arguments ({rc})")


# -- the C core, one call per tool ----------------------------------------------------

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
                prob_bits: int):
    """(words uint16, chunk_words uint32) of clause 7.3 (tables: _Tables)."""
    sym = np.ascontiguousarray(sym, dtype=np.uint32)
    n = sym.size
    chunk = num_lanes * lane_steps
    chunks = -(-n // chunk) if n else 0
    words = np.empty(n + 2 * num_lanes * chunks, dtype=np.uint16)
    cw = np.empty(chunks, dtype=np.uint32)
    nw = C.c_size_t(0)
    _check(_lib().tkb_enc_rans(_p(sym), n, channels, _p(tables.base), _p(tables.freq),
                               _p(tables.cum), tables.alph, num_lanes, lane_steps, prob_bits,
                               _p(words), C.byref(nw), _p(cw)), "rans")
    return words[:nw.value], cw


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
    words, cw = rans_encode(sym, d, tables, t["num_lanes"], t["lane_steps"], t["prob_bits"])
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
