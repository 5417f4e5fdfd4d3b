"""Merge map and dense output (spec clauses 6.4 and 7.8, version 1.1, High profile).

A frame of a High stream whose ``presence_present`` is 2 carries, after its
presence map, a ``merge_map()``: for every pruned position (the positions
0 .. num_tokens-1 that are not kept, in increasing order) one ``stand_in``, the
index (0 .. num_kept-1) of the kept token that stands in for it, each a field
``b(n)`` with n = Ceil(Log2(num_kept)) bits (0 bits when num_kept is 1), then zero
bits to the next byte boundary.

The dense output of a frame (clause 7.8) is [num_tokens, num_channels] (ids:
[num_tokens]): row pos[k] holds the decoded row of kept token k; a pruned
position holds a bit copy of its stand-in's row when the frame has a merge map,
and zeros (the +0 bit pattern, token id 0) otherwise.
"""
from __future__ import annotations

import numpy as np

from .bitio import BitReader, BitWriter
from .errors import TKBFormatError

PRESENCE_WITH_MERGE_MAP = 2     # presence_present: a presence map, then a merge map


def stand_in_bits(num_kept: int) -> int:
    """n = Ceil(Log2(num_kept)): the width of one stand_in (0 when num_kept <= 1)."""
    return max(0, int(num_kept) - 1).bit_length()


def pruned_positions(positions: np.ndarray, num_tokens: int) -> np.ndarray:
    """The positions 0 .. num_tokens-1 that are not kept, increasing (int64)."""
    mask = np.ones(int(num_tokens), dtype=bool)
    mask[np.asarray(positions, dtype=np.int64)] = False
    return np.flatnonzero(mask)


def read_merge_map(reader: BitReader, num_tokens: int, num_kept: int) -> np.ndarray:
    """The stand-ins (uint32 [num_tokens - num_kept]) of clause 7.8, checked as clause
    6.4 says: a frame with a merge map keeps at least one token and prunes at least
    one; once the map has been read (alignment included), every stand_in < num_kept."""
    if num_kept == 0:
        raise TKBFormatError("a merge map on a frame without kept token (num_kept 0)",
                             clause="6.4", element="merge_map", offset=reader.byte_pos)
    if num_kept == num_tokens:
        raise TKBFormatError("a merge map on a frame without pruned position",
                             clause="6.4", element="merge_map", offset=reader.byte_pos)
    count, n = num_tokens - num_kept, stand_in_bits(num_kept)
    start = reader.pos
    trace, reader.trace = reader.trace, None
    try:
        v = reader.packed(count, n, "stand_in")
    finally:
        reader.trace = trace
    if trace is not None:
        trace.append(("stand_in", start, reader.pos - start, v.astype(np.int64)))
    reader.align_zero()
    if v.size and int(v.max()) >= num_kept:
        bad = int(np.argmax(v >= num_kept))
        raise TKBFormatError(f"stand_in[{bad}] = {int(v[bad])} >= num_kept {num_kept}",
                             clause="6.4", element="stand_in", offset=start // 8)
    return v.astype(np.uint32)


def write_merge_map(writer: BitWriter, num_kept: int, stand_ins) -> None:
    """Encoder mirror of :func:`read_merge_map`."""
    writer.packed(np.asarray(stand_ins, dtype=np.uint64), stand_in_bits(num_kept))
    writer.align_zero()


def dense_values(values: np.ndarray, positions: np.ndarray, num_tokens: int,
                 stand_ins=None) -> np.ndarray:
    """The dense rows of clause 7.8: [num_tokens, ...] in the dtype of ``values``."""
    values = np.asarray(values)
    out = np.zeros((int(num_tokens),) + values.shape[1:], dtype=values.dtype)
    pos = np.asarray(positions, dtype=np.int64)
    out[pos] = values
    if stand_ins is not None and len(stand_ins):
        out[pruned_positions(pos, num_tokens)] = values[np.asarray(stand_ins, dtype=np.int64)]
    return out
