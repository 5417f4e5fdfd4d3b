"""Canonical decoded output and its SHA-256 (spec clause 10).

For each decoded frame, in stream order: track_id, frame_number, num_tokens,
num_kept, num_channels, output dtype code (each u32 little-endian), the kept
positions (u32 little-endian), then the values row-major, little-endian, in
the output dtype (token ids as u32, bfloat16 as its 16-bit pattern).
"""
from __future__ import annotations

import hashlib

import numpy as np

from .reconstruction import DTYPE_CODES


def frame_bytes(frame) -> bytes:
    values = np.asarray(frame.values)
    channels = 1 if values.ndim == 1 else values.shape[1]
    head = np.array([frame.track_id, frame.frame_number, frame.num_tokens, frame.num_kept,
                     channels, DTYPE_CODES[frame.dtype]], dtype="<u4").tobytes()
    le = values.dtype.newbyteorder("<")
    return head + np.asarray(frame.positions, dtype="<u4").tobytes() + values.astype(le).tobytes()


def canonical_bytes(stream) -> bytes:
    return b"".join(frame_bytes(f) for f in stream.frames)


def canonical_sha256(stream) -> str:
    h = hashlib.sha256()
    for f in stream.frames:
        h.update(frame_bytes(f))
    return h.hexdigest()
