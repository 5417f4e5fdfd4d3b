"""Dequantization and output conversion (spec clause 7.6).

step(code) = STEP_MANTISSA[code mod 6] * 2^(code div 6 - 24), code in 0..255,
computed exactly in binary32 (the mantissas are the binary32 constants below;
multiplying by a power of two in the normal range is exact).  code 144 gives
step 1.0 and +6 doubles the step.

A value is reconstructed as binary32(level) * step(code) in binary32 with
round-to-nearest-even, no fused operations, and then converted once to the
output dtype with round-to-nearest-even (overflow gives infinity).
"""
from __future__ import annotations

import numpy as np

# 2^(k/6), k = 0..5, rounded to binary32 (spec table 7.6-1)
STEP_MANTISSA_BITS = (0x3F800000, 0x3F8FACD6, 0x3FA14518, 0x3FB504F3, 0x3FCB2FF5, 0x3FE411F0)
STEP_MANTISSA = np.array(STEP_MANTISSA_BITS, dtype=np.uint32).view(np.float32)
STEP_CODE_UNITY = 144
MAX_LEVEL = (1 << 24) - 1


def _step_table() -> np.ndarray:
    code = np.arange(256)
    scale = np.ldexp(np.float32(1.0), code // 6 - 24).astype(np.float32)
    return (STEP_MANTISSA[code % 6] * scale).astype(np.float32)


STEP = _step_table()

DTYPES = {0: "float32", 1: "float16", 2: "bfloat16", 3: "uint32"}
DTYPE_CODES = {v: k for k, v in DTYPES.items()}
DTYPE_BITS = {0: 32, 1: 16, 2: 16, 3: 32}


def dequantize(levels: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """binary32(level) * STEP[code], elementwise; levels |l| <= MAX_LEVEL."""
    return levels.astype(np.float32) * STEP[codes]


def float32_to_bfloat16_bits(v: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even binary32 -> bfloat16, as uint16 bit patterns."""
    b = np.ascontiguousarray(v, dtype=np.float32).view(np.uint32).astype(np.uint64)
    nan = np.isnan(v)
    r = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(nan, ((b >> 16) | 0x40).astype(np.uint16), r)


def to_output(v32: np.ndarray, output_dtype: int) -> np.ndarray:
    """Clause 7.6.2: binary32 values -> output dtype (bfloat16 as uint16 bits)."""
    if output_dtype == 0:
        return v32
    if output_dtype == 1:
        with np.errstate(over="ignore"):     # beyond the float16 range: inf (7.6.2)
            return v32.astype(np.float16)
    return float32_to_bfloat16_bits(v32)


def bits_to_output(bits: np.ndarray, dtype_code: int) -> np.ndarray:
    """Split tracks: value bit patterns -> output array (bfloat16 as uint16 bits)."""
    if dtype_code == 0:
        return bits.astype(np.uint32).view(np.float32)
    if dtype_code == 1:
        return bits.astype(np.uint16).view(np.float16)
    if dtype_code == 2:
        return bits.astype(np.uint16)
    return bits.astype(np.uint32)
