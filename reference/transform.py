"""Channel transforms (spec clauses 6.7 and 7.6.3, version 1.1).

A transform is a mean vector and a K x D basis in fixed point, carried inline in a
transform unit or named there by the SHA-256 of its ``transform_data()`` (clause 6.7).
A parameter set of ``coding_mode`` 2 codes K quantized coefficients per token; the
decoder turns them back into D channels with exact integer arithmetic (clause 7.6.3):

    Y[k][j]   = round(lev[k][j] * STEP[code[k][j]] * 2^F)        (|Y| <= 2^24 - 1)
    acc[k][c] = sum_j Y[k][j] * basis[j][c] + mean[c]            (|acc| < 2^53)
    v32[k][c] = binary32(acc[k][c] * 2^-(F + G))                 (one rounding)

with F = ``coeff_frac_bits`` and G = ``basis_frac_bits``.  Every product and partial
sum is an integer below 2^53 in magnitude, so binary64 arithmetic in any summation
order (BLAS) gives the exact sum; this module uses it.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
from dataclasses import dataclass, field

import numpy as np

from . import levels, syntax
from .bitio import BitReader, BitWriter
from .errors import TKBFormatError, TKBLevelError, TKBReferenceError, TKBValueError
from .reconstruction import STEP_MANTISSA_BITS

MAX_COEFFS = 8192                 # num_coeffs (clause 6.7): K * 2^24 * 2^15 < 2^52
MAX_FRAC_BITS = 40                # coeff_frac_bits, basis_frac_bits
MAX_MEAN_BITS = 53                # |mean| <= 2^52 - 1
MIN_BASIS_BITS, MAX_BASIS_BITS = 2, 16
MAX_COEFF_VALUE = (1 << 24) - 1   # |Y| (clause 7.6.3)
# the binary32 step mantissas of Table 7.6-1 as 24-bit integers: STEP[q] = M[q mod 6] * 2^(q div 6 - 47)
STEP_MANTISSA_INT = np.array([(b & 0x7FFFFF) | 0x800000 for b in STEP_MANTISSA_BITS],
                             dtype=np.int64)
SOURCE_INLINE, SOURCE_REFERENCE = 0, 1


@dataclass(frozen=True)
class Transform:
    """A parsed, validated ``transform_data()`` (clause 6.7) and its digest."""
    num_channels: int
    num_coeffs: int
    coeff_frac_bits: int
    basis_frac_bits: int
    mean: np.ndarray                 # int64 [D]
    basis: np.ndarray                # int64 [K, D]
    data: bytes                      # the transform_data() bytes (the digest's input)
    meta: dict = field(default_factory=dict, compare=False)   # informative (.tkbt metadata)

    @functools.cached_property
    def digest(self) -> bytes:
        """SHA-256 of ``data``: the transform's identity (computed once; the encoder looks
        its forward matrix up by it for every frame)."""
        return hashlib.sha256(self.data).digest()

    @property
    def hexdigest(self) -> str:
        return self.digest.hex()

    @functools.cached_property
    def basis_f64(self) -> np.ndarray:
        """The basis as integer-valued binary64 (the BLAS operand of clause 7.6.3)."""
        return self.basis.astype(np.float64)

    @functools.cached_property
    def mean_f64(self) -> np.ndarray:
        return self.mean.astype(np.float64)

    @property
    def scale_bits(self) -> int:
        """F + G: the output is acc * 2^-(F + G)."""
        return self.coeff_frac_bits + self.basis_frac_bits

    def mean_real(self) -> np.ndarray:
        return np.ldexp(self.mean.astype(np.float64), -self.scale_bits)

    def basis_real(self) -> np.ndarray:
        return np.ldexp(self.basis.astype(np.float64), -self.basis_frac_bits)


def _checker(level: levels.Level):
    """Constraints of the elements of ``transform()`` and ``transform_data()`` (6.7)."""
    def check(name, v, env):
        def bad(msg, cls=TKBFormatError):
            raise cls(msg, clause="6.7", element=name)
        if name == "transform_source" and v not in (SOURCE_INLINE, SOURCE_REFERENCE):
            bad(f"transform_source {v} is reserved")
        elif name == "num_channels":
            if v < 1:
                bad("num_channels of a transform is 0")
            levels.check_limit(v, level.max_channels, name, level)
        elif name == "num_coeffs":
            if not 1 <= v <= min(env["num_channels"], MAX_COEFFS):
                bad(f"num_coeffs {v} not in 1..min(num_channels, {MAX_COEFFS})")
            levels.check_limit(v * env["num_channels"], level.max_values,
                               "num_coeffs * num_channels", level)
        elif name in ("coeff_frac_bits", "basis_frac_bits") and v > MAX_FRAC_BITS:
            bad(f"{name} {v} > {MAX_FRAC_BITS}")
        elif name == "mean_bits" and v > MAX_MEAN_BITS:
            bad(f"mean_bits {v} > {MAX_MEAN_BITS}")
        elif name == "basis_bits" and not MIN_BASIS_BITS <= v <= MAX_BASIS_BITS:
            bad(f"basis_bits {v} not in {MIN_BASIS_BITS}..{MAX_BASIS_BITS}")
        elif name in ("mean", "basis") and v.size:
            bits = env[f"{name}_bits"]
            if int(v.min()) == -(1 << (bits - 1)):
                bad(f"{name} holds -2^{bits - 1}, which is not allowed")
    return check


def _transform(v, data: bytes) -> Transform:
    d, k = v["num_channels"], v["num_coeffs"]
    mean = v.get("mean")
    if mean is None:
        mean = np.zeros(d, dtype=np.int64)
    return Transform(d, k, v["coeff_frac_bits"], v["basis_frac_bits"], mean,
                     v["basis"].reshape(k, d), bytes(data))


def parse_transform_data(data: bytes, level: levels.Level, trace: list | None = None
                         ) -> Transform:
    """Parse and check a whole ``transform_data()`` (clause 6.7), e.g. of a .tkbt file."""
    r = BitReader(data, trace=trace, clause="6.7")
    v = syntax.parse(r, "transform_data", check=_checker(level))
    if r.remaining_bits():
        raise TKBFormatError(f"{r.remaining_bytes()} bytes left over after transform_data",
                             clause="6.7", element="transform_data", offset=r.byte_pos)
    return _transform(v, data)


def _bits_for(values: np.ndarray) -> int:
    """Smallest two's complement width holding ``values`` without the most negative."""
    m = int(np.abs(values).max()) if values.size else 0
    return m.bit_length() + 1


def transform_data_bytes(mean: np.ndarray, basis: np.ndarray, coeff_frac_bits: int,
                         basis_frac_bits: int) -> bytes:
    """Serialise ``transform_data()`` (clause 6.7) with the narrowest field widths."""
    mean = np.asarray(mean, dtype=np.int64)
    basis = np.asarray(basis, dtype=np.int64)
    k, d = basis.shape
    mean_bits = _bits_for(mean) if np.any(mean) else 0
    basis_bits = max(MIN_BASIS_BITS, _bits_for(basis))
    if mean_bits > MAX_MEAN_BITS or basis_bits > MAX_BASIS_BITS:
        raise ValueError("mean or basis entries too large for a transform")
    w = BitWriter()

    syntax.write(w, "transform_data", dict(
        num_channels=d, num_coeffs=k, coeff_frac_bits=coeff_frac_bits,
        basis_frac_bits=basis_frac_bits, mean_bits=mean_bits, basis_bits=basis_bits,
        mean=mean, basis=basis.ravel()))
    return w.getvalue()


def make_transform(mean: np.ndarray, basis: np.ndarray, coeff_frac_bits: int,
                   basis_frac_bits: int, meta: dict | None = None) -> Transform:
    data = transform_data_bytes(mean, basis, coeff_frac_bits, basis_frac_bits)
    t = parse_transform_data(data, levels.get_level(30))
    return dataclasses.replace(t, meta=dict(meta or {}))


# -- the transform unit (clause 6.7) -------------------------------------------------

def parse_transform_unit(payload: bytes, level: levels.Level, supplied: dict,
                         trace: list | None = None) -> tuple[int, Transform]:
    """(transform_id, transform) of a transform unit's payload.  ``supplied`` maps
    SHA-256 digests (bytes) to the application's transforms (clause 6.7)."""
    r = BitReader(payload, trace=trace, clause="6.7")
    v = syntax.parse(r, "transform", check=_checker(level))
    if r.remaining_bits():
        raise TKBFormatError(f"{r.remaining_bytes()} bytes left over after the transform",
                             clause="6.2", element="unit_payload", offset=r.byte_pos)
    if v["transform_source"] == SOURCE_INLINE:
        return v["transform_id"], _transform(v["transform_data"], payload[2:])
    digest = bytes(v["transform_digest"])
    t = supplied.get(digest)
    if t is None:
        have = ", ".join(sorted(x.hex() for x in supplied)) or "none"
        raise TKBReferenceError(f"the stream needs transform sha256 {digest.hex()}, which is "
                                f"not supplied (supplied: {have})", clause="6.7",
                                element="transform_digest")
    # the application's data is bounded by this stream's level like inline data
    if t.num_channels > level.max_channels or t.num_coeffs * t.num_channels > level.max_values:
        raise TKBLevelError(f"transform sha256 {digest.hex()} exceeds level {level.level_idc}",
                            clause="8.2", element="transform_digest")
    return v["transform_id"], t


def transform_unit_payload(transform_id: int, t: Transform, inline: bool) -> bytes:
    w = BitWriter()
    w.fixed("u8", transform_id)
    w.fixed("u8", SOURCE_INLINE if inline else SOURCE_REFERENCE)
    if inline:
        w.raw_bytes(t.data)
    else:
        w.raw_bytes(t.digest)
    return w.getvalue()


def supplied_transforms(transforms) -> dict:
    """digest -> Transform of what an application supplies: Transform objects, the bytes
    of ``.tkbt`` files or paths to them (see :mod:`tokenbits.tkbt`)."""
    from . import tkbt
    out = {}
    for t in transforms or ():
        t = tkbt.load(t) if not isinstance(t, Transform) else t
        out[t.digest] = t
    return out


# -- decoding (clause 7.6.3) ---------------------------------------------------------

def _factors(coeff_frac_bits: int) -> np.ndarray:
    """STEP[q] * 2^F for q = 0..255, binary64: M[q mod 6] * 2^(q div 6 - 47 + F), exact (a
    24-bit integer times a power of two)."""
    q = np.arange(256)
    return np.ldexp(STEP_MANTISSA_INT[q % 6].astype(np.float64), q // 6 + coeff_frac_bits - 47)


FACTORS = [_factors(f) for f in range(MAX_FRAC_BITS + 1)]


def coefficient_values(lev: np.ndarray, codes: np.ndarray, coeff_frac_bits: int) -> np.ndarray:
    """Clause 7.6.3 step 1: Y = round_half_even(lev * STEP[code] * 2^F), exactly.

    STEP[q] * 2^F = M[q mod 6] * 2^(q div 6 - 47 + F) with the 24-bit integer mantissas M.
    In binary64, lev * M * 2^e is exact (|lev| < 2^24: a product of at most 48
    significant bits, scaled by a power of two without underflow) and rint rounds half
    to even: Y is the exact rounding whenever it is in range, and every result beyond
    2^24 - 1 is one."""
    y = np.rint(np.asarray(lev, dtype=np.float64) * FACTORS[coeff_frac_bits][codes])
    if y.size and float(np.abs(y).max()) > MAX_COEFF_VALUE:
        raise TKBValueError("a transform coefficient exceeds 2^24 - 1 in magnitude",
                            clause="7.6.3", element="rans_data")
    return y


def inverse(y: np.ndarray, t: Transform) -> np.ndarray:
    """Clause 7.6.3 steps 2 and 3: binary32 channels [k, D] of coefficients y [k, K].

    Each sum is an integer of magnitude below 2^53 with partial sums as small, so the
    binary64 product (any summation order) is exact; scaling by 2^-(F+G) is exact and
    the conversion to binary32 rounds once, to nearest even."""
    acc = np.asarray(y, dtype=np.float64) @ t.basis_f64
    acc += t.mean_f64
    acc *= 2.0 ** -t.scale_bits                            # exact: a power of two
    return acc.astype(np.float32)


def reconstruct(lev: np.ndarray, codes: np.ndarray, t: Transform) -> np.ndarray:
    """binary32 channels of quantized coefficients (clause 7.6.3)."""
    return inverse(coefficient_values(lev, codes, t.coeff_frac_bits), t)

