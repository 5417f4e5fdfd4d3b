"""Frequency tables (spec clauses 6.3.5 and 7.3.1).

A table gives each symbol s < alphabet_size a frequency freq[s] >= 0; the
frequencies sum to 2^prob_bits and cum[s] is their exclusive prefix sum.  The
decoder builds from each table a slot lookup: for slot in [0, 2^prob_bits),
the symbol s with cum[s] <= slot < cum[s] + freq[s].
"""
from __future__ import annotations

import numpy as np

from .errors import TKBTableError

MAX_PROB_BITS = 15


def validate_table(freq, prob_bits: int, index: int) -> np.ndarray:
    """Clause 6.3.5 constraints of one table; returns freq as an int64 array."""
    el = f"freq_table[{index}]"
    f = np.asarray(freq, dtype=np.int64)   # alphabet_size was bounded while parsing
    total = int(f.sum())
    if total != 1 << prob_bits:
        raise TKBTableError(f"frequencies sum to {total}, not 2^prob_bits = {1 << prob_bits}",
                            clause="6.3.5", element=el + ".freq")
    return f


def decode_lookup(tables: list[np.ndarray], prob_bits: int):
    """Slot lookups of all tables, table t at offset t << prob_bits: for every slot
    (freq[s], slot - cum[s], s) of the symbol s it falls in (clause 7.3.1)."""
    m = 1 << prob_bits
    sym = np.concatenate([np.repeat(np.arange(f.size, dtype=np.int64), f) for f in tables])
    cum = np.concatenate([np.cumsum(f) - f for f in tables])
    freq = np.concatenate(list(tables))
    offs = np.repeat(np.cumsum([f.size for f in tables]) - [f.size for f in tables], m)
    g = sym + offs
    bias = np.tile(np.arange(m, dtype=np.int64), len(tables)) - cum[g]
    # freq <= 2^15, bias < 2^15, symbol < 4096: narrow types keep the tables small
    return freq[g].astype(np.int32), bias.astype(np.int32), sym.astype(np.int16)


def encode_arrays(tables: list[np.ndarray], alphabet: int) -> tuple[np.ndarray, np.ndarray]:
    """Encoder view: freq and cum of all tables as [num_tables, alphabet] int64 arrays."""
    freq = np.zeros((len(tables), alphabet), dtype=np.int64)
    for t, f in enumerate(tables):
        freq[t, :f.size] = f
    cum = np.cumsum(freq, axis=1) - freq
    return freq, cum


# -- encoder side (informative, Annex B) -----------------------------------------

def normalize(counts: np.ndarray, prob_bits: int) -> np.ndarray:
    """Frequencies summing to 2^prob_bits, >= 1 wherever counts > 0, close to
    proportional (largest-remainder rounding, then costs shaved where cheapest)."""
    c = np.asarray(counts, dtype=np.float64)
    m = 1 << prob_bits
    nz = c > 0
    if nz.sum() > m:
        raise ValueError("more coded symbols than 2^prob_bits slots")
    if not nz.any():  # an unused table: put all mass on symbol 0
        f = np.zeros(c.size, dtype=np.int64)
        f[0] = m
        return f
    ideal = c * m / c.sum()
    f = np.where(nz, np.maximum(1, np.floor(ideal)), 0).astype(np.int64)
    d = m - int(f.sum())
    if d > 0:
        order = np.argsort(-(ideal - f), kind="stable")
        f[order[:d]] += 1
    while d < 0:
        # take one from the symbols where it costs least: c * log(f / (f - 1))
        can = f > 1
        cost = np.full(f.size, np.inf)
        cost[can] = c[can] * np.log(f[can] / (f[can] - 1))
        order = np.argsort(cost, kind="stable")[:min(-d, int(can.sum()))]
        f[order] -= 1
        d = m - int(f.sum())
    return f


def eg_lengths(values: np.ndarray, k) -> np.ndarray:
    """Total bits of eg(k) codes of ``values`` (clause 3.3), for one k or an array of k."""
    k = np.atleast_1d(np.asarray(k, dtype=np.int64))
    v = np.asarray(values, dtype=np.int64)[:, None] + (1 << k)[None, :]
    nbits = np.floor(np.log2(v)).astype(np.int64) + 1
    return (2 * nbits - 1 - k[None, :]).sum(axis=0)


def best_freq_k(freq: np.ndarray) -> int:
    return int(np.argmin(eg_lengths(freq, np.arange(16))))


def best_freq_ks(freqs: list) -> list:
    """best_freq_k of each table, computed together (the same integer sums)."""
    if not freqs:
        return []
    sizes = np.array([f.size for f in freqs])
    if (sizes == 0).any():
        return [best_freq_k(f) for f in freqs]
    k = np.arange(16, dtype=np.int64)
    v = np.concatenate(freqs).astype(np.int64)[:, None] + (1 << k)[None, :]
    nbits = np.floor(np.log2(v)).astype(np.int64) + 1
    per = np.add.reduceat(2 * nbits - 1 - k[None, :], np.cumsum(sizes) - sizes, axis=0)
    return [int(x) for x in np.argmin(per, axis=1)]


def table_cost_bits(freq: np.ndarray) -> int:
    """Bits a table takes in a parameter set (alphabet_size, freq_k, codes, alignment)."""
    bits = int(eg_lengths(freq, np.arange(16)).min())
    return 24 + (bits + 7) // 8 * 8
