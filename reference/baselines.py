"""Baseline codecs that TKB is measured against, in the same run.

Non-normative helper (no spec clause). Every baseline takes tokens
[..., D] (last axis = channels, a "token" is one row), encodes them to
bytes, decodes them back and reports a ``Result``:

* ``bits_per_value``: all compressed bits (payload plus any scales) divided
  by the number of values;
* ``mean_cos``: ``mean_token_cosine`` of the decoded tokens vs the input;
* ``encode_s`` / ``decode_s``: best of ``repeat`` wall-clock runs; decode
  ends at a numpy array (float16 for the float16 codecs, float32 for the
  quantisers);
* ``lossless``: measured, the decoded tokens equal the float16 cast of the
  input bit for bit.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

__all__ = ["Result", "mean_token_cosine", "float16_raw", "zstd_float16",
           "int8_absmax", "int4_absmax", "run_baselines", "format_results"]


@dataclasses.dataclass(frozen=True)
class Result:
    name: str
    bits_per_value: float
    mean_cos: float
    encode_s: float
    decode_s: float
    lossless: bool


def mean_token_cosine(ref, test) -> float:
    """Mean over tokens of the cosine between rows of ``ref`` and ``test``
    (float64). A pair with a zero-norm row counts 1 if both rows are zero,
    else 0."""
    a = np.asarray(ref, np.float64).reshape(-1, np.shape(ref)[-1])
    b = np.asarray(test, np.float64).reshape(a.shape)
    if a.shape[0] == 0:
        return float("nan")      # no token: no mean (as numpy's mean, without its warning)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = np.einsum("ij,ij->i", a, b)
    ok = (na > 0) & (nb > 0)
    with np.errstate(invalid="ignore"):     # inf / inf (an overflowed output): nan, no match
        cos = np.where(ok, dot / np.where(ok, na * nb, 1.0), (na == 0) & (nb == 0))
    return float(cos.mean())


def _best(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def _measure(name, x, encode, decode, repeat) -> Result:
    x = np.asarray(x)
    blob, enc_s = _best(lambda: encode(x), repeat)
    y, dec_s = _best(lambda: decode(blob), repeat)
    y = y.reshape(x.shape)
    lossless = np.array_equal(y.astype(np.float16).view(np.uint16),
                              x.astype(np.float16).view(np.uint16))
    return Result(name, 8 * len(blob) / x.size, mean_token_cosine(x, y),
                  enc_s, dec_s, bool(lossless))


def float16_raw(x, repeat=1) -> Result:
    """float16 values, little-endian, nothing else."""
    return _measure("float16 raw", x, lambda a: a.astype("<f2").tobytes(),
                    lambda b: np.frombuffer(b, "<f2"), repeat)


def zstd_float16(x, level=19, repeat=1) -> Result:
    """zstd (``level``) on the float16 bytes: lossless on the float16 cast."""
    try:
        import zstandard
    except ImportError as e:
        raise RuntimeError("zstd_float16 needs zstandard: pip install 'tokenbits[realdata]'") from e
    cctx, dctx = zstandard.ZstdCompressor(level=level), zstandard.ZstdDecompressor()
    return _measure(f"zstd-{level} float16", x,
                    lambda a: cctx.compress(a.astype("<f2").tobytes()),
                    lambda b: np.frombuffer(dctx.decompress(b), "<f2"), repeat)


def _absmax(name, x, bits, repeat) -> Result:
    """Per-token symmetric quantization to [-qmax, qmax], qmax = 2^(bits-1)-1,
    with the step stored as float16 per token. Layout: all steps, then the
    levels as int8 (bits=8) or as nibbles level+8, two per byte, low first
    (bits=4)."""
    d, qmax = np.shape(x)[-1], 2 ** (bits - 1) - 1

    def encode(a):
        a = a.reshape(-1, d).astype(np.float32)
        step = (np.abs(a).max(axis=1) / qmax).astype("<f2")  # the stored step
        s = step.astype(np.float32)[:, None]
        q = np.clip(np.rint(a / np.where(s > 0, s, 1)), -qmax, qmax).astype(np.int8)
        if bits == 4:
            u = (q.ravel() + 8).astype(np.uint8)
            u = np.append(u, np.uint8(8)) if u.size % 2 else u
            q = u[0::2] | (u[1::2] << 4)
        return step.tobytes() + q.tobytes()

    def decode(b):  # the shape is side information, as in a header
        t = np.size(x) // d
        step = np.frombuffer(b[:2 * t], "<f2").astype(np.float32)
        p = np.frombuffer(b[2 * t:], np.uint8 if bits == 4 else np.int8)
        if bits == 4:
            p = np.stack([p & 15, p >> 4], axis=1).ravel()[:t * d].astype(np.int8) - 8
        return p.reshape(t, d).astype(np.float32) * step[:, None]

    return _measure(name, x, encode, decode, repeat)


def int8_absmax(x, repeat=1) -> Result:
    """int8 per-token absmax (levels -127..127, float16 step per token)."""
    return _absmax("int8 absmax", x, 8, repeat)


def int4_absmax(x, repeat=1) -> Result:
    """int4 per-token absmax (levels -7..7, packed 2 per byte, float16 step
    per token)."""
    return _absmax("int4 absmax", x, 4, repeat)


def run_baselines(x, repeat=1) -> list[Result]:
    """All baselines on ``x`` [..., D]."""
    return [f(x, repeat=repeat) for f in (float16_raw, zstd_float16, int8_absmax, int4_absmax)]


def format_results(results) -> str:
    """A plain-text table of ``results``."""
    rows = [f"{'method':<18} {'bits/value':>10} {'mean cos':>10} {'enc ms':>8} {'dec ms':>8}  lossless"]
    rows += [f"{r.name:<18} {r.bits_per_value:>10.3f} {r.mean_cos:>10.6f} "
             f"{1e3 * r.encode_s:>8.2f} {1e3 * r.decode_s:>8.2f}  {r.lossless}" for r in results]
    return "\n".join(rows)
