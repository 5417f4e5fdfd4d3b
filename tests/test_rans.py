"""Interleaved rANS (clause 7.3): the vectorised reference decoder is checked
against a literal, one-symbol-at-a-time transcription of clause 7.3.2, and
encode/decode round trips are checked on seeded random and boundary inputs."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from tokenbits import rans, tables
from tokenbits.errors import TKBEntropyError


def literal_decode(words, chunk_words, n, lanes, lane_steps, freqs, prob_bits, table_of):
    """Clause 7.3.2 as written: chunk by chunk, step by step, lane by lane."""
    out = []
    pos = 0
    chunk = lanes * lane_steps
    for k, cw in enumerate(chunk_words):
        w = [int(v) for v in words[pos:pos + cw]]
        size = min(chunk, n - k * chunk)
        active = min(lanes, size)
        x = [w[2 * l] | (w[2 * l + 1] << 16) for l in range(active)]
        ptr = 2 * active
        t = 0
        while t * lanes < size:
            for l in range(lanes):
                j = t * lanes + l
                if j >= size:
                    break
                f = freqs[table_of(k * chunk + j)]
                cum = np.concatenate(([0], np.cumsum(f)))
                slot = x[l] & ((1 << prob_bits) - 1)
                s = int(np.searchsorted(cum, slot, side="right") - 1)
                x[l] = int(f[s]) * (x[l] >> prob_bits) + slot - int(cum[s])
                if x[l] < rans.RANS_L:
                    x[l] = (x[l] << 16) | w[ptr]
                    ptr += 1
                out.append(s)
            t += 1
        assert ptr == cw and all(v == rans.RANS_L for v in x)
        pos += cw
    return out


def make_case(seed, n, lanes, lane_steps, ntables, prob_bits, channels):
    rng = np.random.default_rng(seed)
    alph = int(rng.integers(1, 40))
    freqs = []
    for _ in range(ntables):
        counts = rng.integers(0, 50, alph) * (rng.random(alph) < 0.8)
        counts[rng.integers(0, alph)] += 100
        freqs.append(tables.normalize(counts, prob_bits))
    tmap = rng.integers(0, ntables, channels)
    tid = tmap[np.arange(n) % channels]
    sym = np.empty(n, dtype=np.int64)
    for t in range(ntables):
        m = tid == t
        sym[m] = rng.choice(alph, size=int(m.sum()), p=freqs[t] / freqs[t].sum())
    return freqs, tmap, tid, sym


def run(freqs, tid, sym, lanes, lane_steps, prob_bits, tmap=None):
    if tmap is None:
        tmap = np.zeros(1, dtype=np.int64)
    f_all, c_all = tables.encode_arrays(freqs, max(f.size for f in freqs))
    words, cw = rans.encode(sym, f_all[tid, sym], c_all[tid, sym], lanes, lane_steps, prob_bits)
    lut = tables.decode_lookup(freqs, prob_bits)
    base = (tmap << prob_bits) if len(freqs) > 1 else None
    dec = rans.decode(words, cw, sym.size, lanes, lane_steps, lut, prob_bits, base, tmap.size)
    return words, cw, dec


@pytest.mark.parametrize("n,lanes,lane_steps", [
    (1, 1, 1), (1, 32, 4), (31, 32, 1), (32, 32, 1), (33, 32, 1),   # chunk boundaries
    (64, 32, 2), (65, 32, 2), (7, 3, 5), (500, 7, 9), (1000, 1, 1000)])
@pytest.mark.parametrize("ntables", [1, 3])
def test_vectorised_equals_literal(n, lanes, lane_steps, ntables):
    prob_bits = 11
    freqs, tmap, tid, sym = make_case(n * 7 + lanes, n, lanes, lane_steps, ntables, prob_bits, 5)
    words, cw, dec = run(freqs, tid, sym, lanes, lane_steps, prob_bits, tmap)
    assert np.array_equal(dec, sym)
    lit = literal_decode(words, cw, n, lanes, lane_steps, freqs, prob_bits,
                         lambda i: int(tid[i]))
    assert lit == sym.tolist()


@given(st.integers(0, 3000), st.integers(1, 64), st.integers(1, 64), st.integers(1, 4),
       st.integers(6, 15), st.integers(0, 2**31))
def test_round_trip(n, lanes, lane_steps, ntables, prob_bits, seed):
    freqs, tmap, tid, sym = make_case(seed, n, lanes, lane_steps, ntables, prob_bits, 3)
    _, _, dec = run(freqs, tid, sym, lanes, lane_steps, prob_bits, tmap)
    assert np.array_equal(dec, sym)


def test_single_symbol_table_and_extreme_precision():
    # one symbol with all the probability mass: zero bits of information per symbol
    freqs = [np.array([1 << 15])]
    sym = np.zeros(1000, dtype=np.int64)
    words, cw, dec = run(freqs, np.zeros(1000, np.int64), sym, 4, 100, 15)
    assert np.array_equal(dec, sym)
    assert words.size == 2 * 4 * 3   # only the initial states of 3 chunks x 4 lanes


def test_corrupt_payload_is_detected():
    freqs, tmap, tid, sym = make_case(5, 400, 8, 10, 1, 12, 1)
    words, cw, _ = run(freqs, tid, sym, 8, 10, 12)
    lut = tables.decode_lookup(freqs, 12)
    bad = words.copy()
    bad[-1] ^= 0x55
    with pytest.raises(TKBEntropyError):
        rans.decode(bad, cw, 400, 8, 10, lut, 12, None)
    with pytest.raises(TKBEntropyError):   # one word too few
        rans.decode(words[:-1], cw - np.eye(cw.size, dtype=cw.dtype)[-1], 400, 8, 10, lut, 12, None)
    low = words.copy()
    low[1] = 0   # high half of lane 0's initial state: state < RANS_L
    low[0] = 5
    with pytest.raises(TKBEntropyError):
        rans.decode(low, cw, 400, 8, 10, lut, 12, None)
