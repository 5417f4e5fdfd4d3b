"""Fitting a channel transform, and the forward transform (Annex B.7, informative).

A transform (clause 6.7) is a mean and a K x D basis in fixed point.  The reference
fits a PCA of calibration tokens: the mean token, then the K leading eigenvectors of
the covariance of the centred tokens.  K is given (``coeffs``) or is the smallest
count whose eigenvalues hold the fraction ``energy`` of the centred energy.

Fixed point: the basis is scaled so that its largest entry uses ``basis_bits`` bits
(G = ``basis_frac_bits``); F = ``coeff_frac_bits`` is chosen so that coefficients up
to 4 times the largest seen in calibration fit COEFF_FAST_MAX = 32639, two balanced
8-bit limbs: the GPU inverse's fast path (clause 7.6.3 keeps larger values up to
2^24 - 1 exact; the GPU then spends more limb products on their block).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from . import transform as tr
from .errors import TKBEncodeError

DEFAULT_BASIS_BITS = 8     # +0.9 % rate against a float basis (shared/TRANSFORM-NOTES.md)
COEFF_HEADROOM = 4.0       # coefficients up to 4x the calibration's largest ...
COEFF_FAST_MAX = 32639     # ... fit two balanced int8 limbs (kernels/transform.py)
DEFAULT_ENERGY = 0.999


def _tokens(array) -> np.ndarray:
    x = np.asarray(array)
    if x.dtype == np.uint16:                      # bfloat16 bit patterns
        x = (x.astype(np.uint32) << 16).view(np.float32)
    if x.ndim == 3:
        x = x.reshape(-1, x.shape[-1])
    if x.ndim != 2 or x.shape[0] < 2 or x.dtype.kind != "f":
        raise TKBEncodeError("a transform is fitted on float tokens [N, D] or [F, N, D] "
                             "with N >= 2")
    x = x.astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise TKBEncodeError("calibration tokens must be finite")
    return x


def fit_transform(arrays, *, coeffs: int | None = None, energy: float | None = None,
                  basis_bits: int = DEFAULT_BASIS_BITS, meta: dict | None = None
                  ) -> tr.Transform:
    """PCA transform of calibration tokens (one array or a list of arrays with the same D).

    ``coeffs``: K; ``energy``: keep the fewest coefficients holding this fraction of the
    centred energy (default 0.999 when neither is given)."""
    if isinstance(arrays, (list, tuple)):
        xs = [_tokens(a) for a in arrays]
        if len({x.shape[1] for x in xs}) != 1:
            raise TKBEncodeError("calibration arrays have different channel counts")
        x = np.concatenate(xs)
    else:
        x = _tokens(arrays)
    n, d = x.shape
    if coeffs is not None and energy is not None:
        raise TKBEncodeError("give coeffs or energy, not both")
    if coeffs is not None and not 1 <= coeffs <= min(d, tr.MAX_COEFFS):
        raise TKBEncodeError(f"coeffs {coeffs} not in 1..{min(d, tr.MAX_COEFFS)}")
    if energy is not None and not 0 < energy <= 1:
        raise TKBEncodeError("energy must be in (0, 1]")
    if not tr.MIN_BASIS_BITS <= basis_bits <= tr.MAX_BASIS_BITS:
        raise TKBEncodeError(f"basis_bits {basis_bits} not in "
                             f"{tr.MIN_BASIS_BITS}..{tr.MAX_BASIS_BITS}")
    mean = x.mean(axis=0)
    xc = x - mean
    cov = xc.T @ xc / n
    w, v = np.linalg.eigh(cov)
    order = np.argsort(w)[::-1]
    w, v = np.maximum(w[order], 0), v[:, order]
    # a deterministic sign: each vector's largest entry is positive
    signs = np.sign(v[np.argmax(np.abs(v), axis=0), np.arange(d)])
    v = v * np.where(signs == 0, 1, signs)
    total = float(w.sum()) or 1.0
    cum = np.cumsum(w) / total
    if coeffs is None:
        target = DEFAULT_ENERGY if energy is None else energy
        coeffs = int(np.searchsorted(cum, target - 1e-12) + 1)
    k = int(min(coeffs, d, tr.MAX_COEFFS))
    basis = v[:, :k].T                                   # K x D, orthonormal rows
    return quantize_transform(mean, basis, x, basis_bits,
                              {**(meta or {}), "transform.energy": f"{cum[k - 1]:.6f}",
                               "transform.fit_tokens": str(n)})


def quantize_transform(mean: np.ndarray, basis: np.ndarray, calib: np.ndarray,
                       basis_bits: int, meta: dict) -> tr.Transform:
    """Fixed-point form (clause 6.7) of a float mean and basis; ``calib`` [N, D] sets F."""
    k, d = basis.shape
    top = float(np.abs(basis).max()) or 1.0
    g = int(math.floor(math.log2(((1 << (basis_bits - 1)) - 1) / top)))
    g = max(0, min(g, tr.MAX_FRAC_BITS))
    bint = np.clip(np.rint(np.ldexp(basis, g)), -((1 << (basis_bits - 1)) - 1),
                   (1 << (basis_bits - 1)) - 1).astype(np.int64)
    bq = np.ldexp(bint.astype(np.float64), -g)
    ymax = float(np.abs((calib - mean) @ np.linalg.pinv(bq)).max()) if calib.size else 1.0
    f = int(math.floor(math.log2(COEFF_FAST_MAX / (COEFF_HEADROOM * max(ymax, 1e-30)))))
    f = max(0, min(f, tr.MAX_FRAC_BITS))
    # the mean at scale 2^-(F+G) within 2^52 - 1 (clause 6.7)
    while f > 0 and np.abs(np.ldexp(mean, f + g)).max() >= 2.0 ** 52:
        f -= 1
    mint = np.rint(np.ldexp(mean, f + g)).astype(np.int64)
    return tr.make_transform(mint, bint, f, g, meta)


INPUT_MAX = 32639        # |X|, |P| of the forward transform: two balanced 8-bit limbs


@dataclass(frozen=True)
class ForwardMatrix:
    """The forward transform in fixed point: P = pinv(basis) [D, K] rounded at 2^p."""
    p_int: np.ndarray        # int64 [D, K], |entries| <= INPUT_MAX
    p: int

    @functools.cached_property
    def p_f64(self) -> np.ndarray:
        return self.p_int.astype(np.float64)


_FORWARD: dict = {}


def forward_matrix(t: tr.Transform) -> ForwardMatrix:
    """The transform's forward matrix (computed once on the host, by numpy: every encoder
    path, CPU or GPU, uses these same integers)."""
    m = _FORWARD.get(t.digest)
    if m is None:
        if len(_FORWARD) > 16:
            _FORWARD.clear()
        pinv = np.linalg.pinv(t.basis_real())
        top = float(np.abs(pinv).max()) or 1.0
        p = int(math.floor(math.log2(INPUT_MAX / top)))
        p_int = np.clip(np.rint(np.ldexp(pinv, p)), -INPUT_MAX, INPUT_MAX).astype(np.int64)
        m = _FORWARD[t.digest] = ForwardMatrix(p_int, p)
    return m


def input_scale(x: np.ndarray, t: tr.Transform) -> int:
    """The exponent a of the forward transform's fixed-point input (x - mean) 2^a: the
    largest whose values from ``x`` stay within INPUT_MAX (larger ones are clipped)."""
    top = float(np.abs(np.asarray(x, dtype=np.float64) - t.mean_real()).max()) if np.size(x) \
        else 0.0
    return int(math.floor(math.log2(INPUT_MAX / top))) if top > 0 else 0


def forward(x: np.ndarray, t: tr.Transform, a: int) -> np.ndarray:
    """Coefficients [N, K] (float32) of channels x [N, D], in exact integer arithmetic so
    that every encoder path computes the same bits (Annex B.7):

        X = rint(clip((x - mean) 2^a, +-INPUT_MAX))       binary64, elementwise
        y = binary32((X P) 2^-(a + p))                    X P exact: |X P| < 2^53

    the least-squares coefficients (x - mean) pinv(basis), to about 2^-15 relative."""
    m = forward_matrix(t)
    v = (np.asarray(x, dtype=np.float32).astype(np.float64) - t.mean_real()) * 2.0 ** a
    xq = np.rint(np.clip(v, -INPUT_MAX, INPUT_MAX))
    acc = xq @ m.p_f64
    acc *= 2.0 ** -(a + m.p)
    return acc.astype(np.float32)


def _max_levels_of(codes: np.ndarray, coeff_frac_bits: int) -> np.ndarray:
    step = np.ldexp(tr.STEP_MANTISSA_INT[codes % 6].astype(np.float64),
                    codes // 6 - 47 + coeff_frac_bits)
    lim = np.floor((tr.MAX_COEFF_VALUE - 0.5) / step)
    return np.minimum(lim, (1 << 24) - 1).astype(np.int64)


def max_levels(codes: np.ndarray, coeff_frac_bits: int) -> np.ndarray:
    """The largest level magnitude at each step code whose coefficient value stays within
    2^24 - 1 (clause 7.6.3); the encoder clips to it.  A function of the code alone: worked
    out once for each code in the range present and gathered (the same values)."""
    codes = np.asarray(codes)
    if codes.size == 0:
        return _max_levels_of(codes, coeff_frac_bits)
    lo, hi = int(codes.min()), int(codes.max())
    table = _max_levels_of(np.arange(lo, hi + 1, dtype=codes.dtype), coeff_frac_bits)
    return table[codes - lo]
