"""Symbol mapping (spec clause 7.4): decoded symbols to residuals or values.

Quantized tracks (coding_mode 0): the last symbol of each table,
alphabet_size - 1, is the escape symbol ESC.  A symbol s < ESC is the zigzag
index u = s; the k-th ESC in coding order takes u = ESC + escape_value[k]
(escape_data: num_escapes fields of escape_bits bits, MSB first).  The
residual is r = u / 2 for even u and -(u + 1) / 2 for odd u.

Split tracks (coding_mode 1): u = symbol << raw_bits | raw_value, raw_value
being the symbol's raw_bits-bit field of raw_data.  Without prediction u is
the value's bit pattern.  With a predictor (embedding tracks), u is the
zigzag index of a residual of the order-preserving integer m of the value's
bit pattern b of W bits: m = b when the sign bit is clear, else
-(b - 2^(W-1)) - 1 (clause 7.4.2).
"""
from __future__ import annotations

import numpy as np

from .errors import TKBEntropyError

MAX_ESCAPE_BITS = 26


def residuals(symbols: np.ndarray, esc: np.ndarray, escapes: np.ndarray) -> np.ndarray:
    """Clause 7.4.1: symbols [K, D] and per-channel ESC [D] -> residuals [K, D] (int64)."""
    is_esc = symbols == esc
    count = int(is_esc.sum())
    if count != escapes.size:
        raise TKBEntropyError(f"{count} escape symbols decoded but num_escapes = {escapes.size}",
                              clause="7.4.1", element="num_escapes")
    u = symbols.copy()
    u[is_esc] = np.broadcast_to(esc, symbols.shape)[is_esc] + escapes.astype(np.int64)
    return (u >> 1) ^ -(u & 1)


def zigzag(r: np.ndarray) -> np.ndarray:
    """Inverse of the residual mapping: r >= 0 -> 2r, r < 0 -> -2r - 1."""
    r = np.asarray(r, dtype=np.int64)
    return (r << 1) ^ (r >> 63)


def split_values(symbols: np.ndarray, raw: np.ndarray, raw_bits: int) -> np.ndarray:
    """Clause 7.4.2: value bits of split tracks (uint64)."""
    return (symbols.astype(np.uint64) << np.uint64(raw_bits)) | raw.astype(np.uint64)


def bits_to_ordered(bits: np.ndarray, width: int) -> np.ndarray:
    """Order-preserving integer of W-bit float patterns (clause 7.4.2)."""
    b = bits.astype(np.int64)
    sign = 1 << (width - 1)
    return np.where(b & sign, -(b - sign) - 1, b)


def ordered_to_bits(m: np.ndarray, width: int) -> np.ndarray:
    """Inverse of :func:`bits_to_ordered` (m in -2^(W-1) .. 2^(W-1) - 1)."""
    sign = 1 << (width - 1)
    return np.where(m < 0, (-(m + 1)) + sign, m).astype(np.uint64)
