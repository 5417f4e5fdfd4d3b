"""Presence map (spec clause 7.2): which token positions of a frame are kept.

Positions: prefix tokens are 0 .. num_prefix_tokens-1; grid token (y, x) is
num_prefix_tokens + y * grid_width + x.  Kept tokens are output in increasing
position order.

Grid tracks: one bit per prefix token, then a quadtree over the grid coded
breadth first.  The root covers a square of side S, the smallest power of two
>= max(grid_height, grid_width).  Each visited node has one bit (1: the node
may hold kept tokens).  The children of a node of side > 1 whose bit is 1 are
visited at the next depth in the order top-left, top-right, bottom-left,
bottom-right, skipping children whose top-left corner lies outside the grid;
a 1 bit on a node of side 1 keeps that token.  Tracks without a grid: one
bit per token.  The map ends with zero bits up to a byte boundary.
"""
from __future__ import annotations

import numpy as np

from .bitio import BitReader, BitWriter

_CHILD_DY = np.array([0, 0, 1, 1])
_CHILD_DX = np.array([0, 1, 0, 1])


def _side(h: int, w: int) -> int:
    return 1 << max(0, int(max(h, w) - 1).bit_length())


def _walk(h: int, w: int, node_bits) -> tuple[np.ndarray, np.ndarray]:
    """Breadth-first quadtree walk; ``node_bits(ys, xs, side)`` gives the bits of the
    nodes visited at one depth.  Returns the (y, x) of the kept leaves."""
    ys = np.zeros(1 if h * w else 0, dtype=np.int64)
    xs = np.zeros_like(ys)
    side = _side(h, w)
    while ys.size:
        bits = node_bits(ys, xs, side)
        ys, xs = ys[bits], xs[bits]
        if side == 1:
            break
        side //= 2
        ys = (ys[:, None] + side * _CHILD_DY).ravel()
        xs = (xs[:, None] + side * _CHILD_DX).ravel()
        inside = (ys < h) & (xs < w)
        ys, xs = ys[inside], xs[inside]
    return ys, xs


def read_presence_map(reader: BitReader, tps, num_tokens: int) -> np.ndarray:
    """Kept positions (uint32, increasing) of clause 7.2."""
    if not tps["grid_present"]:
        bits = reader.bit_array(num_tokens, "token_present")
        reader.align_zero()
        return np.flatnonzero(bits).astype(np.uint32)
    p, h, w = tps["num_prefix_tokens"], tps["grid_height"], tps["grid_width"]
    prefix = np.flatnonzero(reader.bit_array(p, "prefix_present"))
    ys, xs = _walk(h, w, lambda ys, xs, side: reader.bit_array(
        ys.size, f"node_present[side {side}]").astype(bool))
    reader.align_zero()
    grid = np.sort(p + ys * w + xs)
    return np.concatenate((prefix, grid)).astype(np.uint32)


def write_presence_map(writer: BitWriter, tps, num_tokens: int, kept: np.ndarray) -> None:
    """Encoder mirror of :func:`read_presence_map`."""
    mask = np.zeros(num_tokens, dtype=np.uint8)
    mask[np.asarray(kept, dtype=np.int64)] = 1
    if not tps["grid_present"]:
        writer.bit_array(mask)
        writer.align_zero()
        return
    p, h, w = tps["num_prefix_tokens"], tps["grid_height"], tps["grid_width"]
    writer.bit_array(mask[:p])
    padded = np.zeros((_side(h, w),) * 2, dtype=bool)
    padded[:h, :w] = mask[p:].reshape(h, w).astype(bool)

    def node_bits(ys, xs, side):
        # node bit: any kept token in the side x side square at (ys, xs)
        blocks = padded.reshape(padded.shape[0] // side, side, -1, side).any(axis=(1, 3))
        bits = blocks[ys // side, xs // side]
        writer.bit_array(bits.astype(np.uint8))
        return bits
    _walk(h, w, node_bits)
    writer.align_zero()
