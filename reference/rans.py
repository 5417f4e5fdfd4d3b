"""Interleaved rANS with chunks and lanes (spec clause 7.3).

Constants: 32-bit state, lower bound RANS_L = 2^16, 16-bit renormalisation
words, so a decoder reads at most one word per symbol.

Layout: the symbols of a frame are cut into chunks of chunk_size =
num_lanes * lane_steps symbols (the last may be shorter).  Within a chunk,
symbol j belongs to lane j mod num_lanes and is decoded at step
j div num_lanes.  The a = min(num_lanes, n) active lanes of a chunk of n
symbols share one word stream: first each lane's initial state as two words
(low, high), then the renormalisation words in the order the decoder reads
them: step by step, and within a step in lane order.

This module decodes all chunks of a frame at once: one numpy vector holds
every lane of every chunk ("column"), columns grouped by chunk, so the lanes
still active at a step always form a prefix of the columns.  The encoder runs
the same layout in reverse (steps last to first, lanes last to first).
"""
from __future__ import annotations

import numpy as np

from .errors import TKBEntropyError

RANS_L = 1 << 16
WORD_BITS = 16


class _Layout:
    """Column bookkeeping shared by the encoder and the decoder."""

    def __init__(self, num_symbols: int, num_lanes: int, lane_steps: int):
        chunk = self.chunk = num_lanes * lane_steps
        self.num_chunks = -(-num_symbols // chunk)
        full, last = divmod(num_symbols, chunk)
        sizes = [chunk] * full + ([last] if last else [])
        self.sizes = np.array(sizes, dtype=np.int64)
        self.active = np.minimum(self.sizes, num_lanes)            # active lanes per chunk
        self.num_cols = int(self.active.sum())
        self.col_chunk = np.repeat(np.arange(self.num_chunks), self.active)
        starts = np.cumsum(self.active) - self.active               # first column of each chunk
        self.col_first = np.repeat(starts, self.active)
        self.chunk_first_col = starts
        lane = np.arange(self.num_cols) - self.col_first
        self.col_sym0 = self.col_chunk * chunk + lane              # symbol index at step 0
        self.steps = -(-int(self.sizes.max()) // num_lanes) if self.num_chunks else 0
        n_last = sizes[-1] if sizes else 0
        self.cols_before_last = self.num_cols - (int(self.active[-1]) if sizes else 0)
        self.n_last = n_last
        self.num_lanes = num_lanes

    def step_matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """Symbol index [steps, columns] of every (step, column), and where it exists."""
        idx = self.col_sym0[None, :] + self.num_lanes * np.arange(self.steps)[:, None]
        end = np.minimum(self.col_chunk * self.chunk + self.sizes[self.col_chunk],
                         self.col_chunk * self.chunk + self.chunk)
        return idx, idx < end[None, :]

    def cols_at(self, t: int) -> int:
        """Columns with a symbol at step t: a prefix of all columns."""
        rest = min(self.num_lanes, max(0, self.n_last - t * self.num_lanes))
        return self.cols_before_last + rest


def decode(words: np.ndarray, chunk_words: np.ndarray, num_symbols: int, num_lanes: int,
           lane_steps: int, lookup, prob_bits: int,
           channel_base: np.ndarray | None, num_channels: int = 1) -> np.ndarray:
    """Decode ``num_symbols`` symbols (clause 7.3.2).

    ``words``: the frame's rans_data as uint16; ``chunk_words``: words per chunk;
    ``lookup``: (freq, bias, symbol) slot tables of all tables (tables.decode_lookup),
    table t at offset t << prob_bits; ``channel_base``: the offset of each channel's
    table (None: one table), symbol i being of channel i mod ``num_channels``.
    Raises TKBEntropyError when the payload is inconsistent.
    """
    lay = _Layout(num_symbols, num_lanes, lane_steps)
    if num_symbols == 0:   # no chunk, hence no chunk_words and no word
        return np.empty(0, dtype=np.int64)
    cw = np.asarray(chunk_words, dtype=np.int64)
    if np.any(cw < 2 * lay.active):
        k = int(np.argmax(cw < 2 * lay.active))
        raise TKBEntropyError(f"chunk {k} has {int(cw[k])} words, fewer than its "
                              f"{2 * int(lay.active[k])} initial-state words",
                              clause="7.3.2", element=f"chunk_words[{k}]")
    chunk_start = np.cumsum(cw) - cw
    # a chunk reads at most one word per symbol: padding by the largest chunk keeps an
    # over-reading chunk in bounds; the final pointer check reports it
    w = np.concatenate((np.asarray(words, dtype=np.int64),
                        np.zeros(int(lay.sizes.max()) + 1, dtype=np.int64)))
    lane = np.arange(lay.num_cols) - lay.col_first
    s0 = chunk_start[lay.col_chunk] + 2 * lane
    x = w[s0] | (w[s0 + 1] << 16)
    if np.any(x < RANS_L):
        col = int(np.argmax(x < RANS_L))
        raise TKBEntropyError(f"initial state {int(x[col])} of lane {int(lane[col])} of chunk "
                              f"{int(lay.col_chunk[col])} is below RANS_L",
                              clause="7.3.2", element="rans_data")
    ptr = chunk_start + 2 * lay.active
    mask = (1 << prob_bits) - 1
    freq, bias, sym_of = lookup
    # the table of column c at step t repeats with period D / gcd(num_lanes, D)
    bases = None
    if channel_base is not None:
        period = num_channels // np.gcd(num_lanes, num_channels)
        bases = channel_base[(lay.col_sym0[None, :] + num_lanes * np.arange(period)[:, None])
                             % num_channels]
    slots = np.zeros((lay.steps, lay.num_cols), dtype=np.int32)   # table offsets < 2^23
    first_col = np.append(lay.chunk_first_col, lay.num_cols)
    for t, na in enumerate([lay.cols_at(t) for t in range(lay.steps)]):
        xs = x[:na]
        ix = xs & mask
        if bases is not None:
            ix += bases[t % period, :na]
        slots[t, :na] = ix
        xs = freq[ix] * (xs >> prob_bits) + bias[ix]
        sel = (xs < RANS_L).nonzero()[0]
        if sel.size:
            # the lanes that read, in lane order within each chunk
            ch = lay.col_chunk[sel]
            firsts = np.searchsorted(sel, first_col)        # with a sentinel at the end
            pos = (ptr - firsts[:-1])[ch] + np.arange(sel.size)
            xs[sel] = (xs[sel] << 16) | w[pos]
            ptr += firsts[1:] - firsts[:-1]
        x[:na] = xs
    end = chunk_start + cw
    if np.any(ptr != end):
        k = int(np.argmax(ptr != end))
        raise TKBEntropyError(f"chunk {k} read {int(ptr[k] - chunk_start[k])} of its "
                              f"{int(cw[k])} words", clause="7.3.2", element=f"chunk_words[{k}]")
    if np.any(x != RANS_L):
        col = int(np.argmax(x != RANS_L))
        raise TKBEntropyError(f"lane {int(lane[col])} of chunk {int(lay.col_chunk[col])} ends in "
                              f"state {int(x[col])}, not RANS_L", clause="7.3.2",
                              element="rans_data")
    # symbols in coding order: step t of column c is symbol col_sym0[c] + t * num_lanes
    idx, valid = lay.step_matrix()
    out = np.empty(num_symbols, dtype=np.int64)
    out[idx[valid]] = sym_of[slots[valid]]
    return out


def encode(symbols: np.ndarray, freq: np.ndarray, cum: np.ndarray, num_lanes: int,
           lane_steps: int, prob_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Encode (informative, Annex B): the inverse of :func:`decode`.

    ``freq``/``cum``: per-symbol frequency and cumulative frequency (int64,
    freq >= 1).  Returns (words uint16, chunk_words uint32).
    """
    n = symbols.size
    lay = _Layout(n, num_lanes, lane_steps)
    if n == 0:
        return np.zeros(0, dtype=np.uint16), np.zeros(0, dtype=np.uint32)
    x = np.full(lay.num_cols, RANS_L, dtype=np.int64)
    emitted_t, emitted_col, emitted_w = [], [], []
    # frequencies laid out as [step, column] once, so each step reads contiguous rows
    idx, valid = lay.step_matrix()
    f2 = np.ones(idx.shape, dtype=np.int64)
    c2 = np.zeros(idx.shape, dtype=np.int64)
    f2[valid] = freq[idx[valid]]
    c2[valid] = cum[idx[valid]]
    limit2 = f2 << (32 - prob_bits)   # renormalise when x >= freq << (32 - prob_bits)
    for t in range(lay.steps - 1, -1, -1):
        na = lay.cols_at(t)
        xs = x[:na]
        f = f2[t, :na]
        need = xs >= limit2[t, :na]
        sel = need.nonzero()[0]
        if sel.size:
            emitted_t.append((t, sel.size))
            emitted_col.append(sel)
            emitted_w.append(xs[sel] & 0xFFFF)
            xs = np.where(need, xs >> 16, xs)
        q, r = np.divmod(xs, f)
        x[:na] = (q << prob_bits) + r + c2[t, :na]
    # decoder order within a chunk: step ascending, lane ascending
    if emitted_t:
        et = np.repeat([t for t, _ in emitted_t], [n for _, n in emitted_t])
        ec = np.concatenate(emitted_col)
        ew = np.concatenate(emitted_w)
        order = np.lexsort((ec, et, lay.col_chunk[ec]))
        ec, ew = ec[order], ew[order]
        per_chunk = np.bincount(lay.col_chunk[ec], minlength=lay.num_chunks)
    else:
        ew = np.zeros(0, dtype=np.int64)
        per_chunk = np.zeros(lay.num_chunks, dtype=np.int64)
    states = np.stack((x & 0xFFFF, x >> 16), axis=1).ravel()   # lo, hi per column
    state_split = np.cumsum(2 * lay.active)[:-1]
    word_split = np.cumsum(per_chunk)[:-1]
    parts = []
    for st, wd in zip(np.split(states, state_split), np.split(ew, word_split)):
        parts.append(st)
        parts.append(wd)
    words = np.concatenate(parts).astype(np.uint16)
    chunk_words = (2 * lay.active + per_chunk).astype(np.uint32)
    return words, chunk_words
