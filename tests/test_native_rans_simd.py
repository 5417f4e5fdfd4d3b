"""libtkb's rANS encoder (native/src/enc_rans.c, clause 7.3 in reverse): the plain C coder,
the AVX2 coder (eight lanes a group) and the AVX-512 coder (sixteen lanes a group, the
states in registers for 16 .. 64 lanes) give the same words and chunk_words, bit for bit,
and the same errors.  $TKB_NATIVE_SIMD is read on every call: "scalar" forces the plain
C coder, "avx2" the AVX2 coder, unset the best the CPU has (AVX-512 where it has it).
Lane counts that are not multiples of 8 run the plain C coder in every mode; 8 mod 16
ends each step with one AVX2 group under AVX-512."""
import ctypes
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

import tokenbits as tb
from tokenbits import native

pytestmark = pytest.mark.skipif(native.available() is not None,
                                reason=f"libtkb not built: {native.available()}")

if native.available() is None:
    from tokenbits.errors import TKBEncodeError
    from tokenbits.native import encoder as NE

AVX512_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd")


def _cpu_flags() -> set:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


FLAGS = _cpu_flags()
HAS_AVX2 = {"avx2", "f16c", "bmi2", "popcnt"} <= FLAGS
HAS_AVX512 = HAS_AVX2 and set(AVX512_FLAGS) <= FLAGS
NO_AVX512 = ("this CPU lacks AVX-512 (F/BW/VL/DQ/CD in /proc/cpuinfo): the default path "
             "is the AVX2 one, compared under TKB_NATIVE_SIMD=avx2")

# the modes compared with the plain C coder; "default": $TKB_NATIVE_SIMD unset
MODES = ["avx2", pytest.param("default", marks=pytest.mark.skipif(not HAS_AVX512,
                                                                  reason=NO_AVX512))]


def _set_mode(monkeypatch, mode):
    if mode == "default":
        monkeypatch.delenv("TKB_NATIVE_SIMD", raising=False)
    else:
        monkeypatch.setenv("TKB_NATIVE_SIMD", mode)


def rans_path() -> str:
    """The coder tkb_enc_rans uses now (num_lanes a multiple of 8)."""
    f = native._load().tkb_enc_rans_simd_name
    f.restype = ctypes.c_char_p
    f.argtypes = []
    return f().decode()


class Tabs:
    """The tables as tkb_enc_rans reads them (NE._Tables without a fitted track)."""

    def __init__(self, freq, cum, base, alph):
        self.alph = int(alph)
        self.freq = np.ascontiguousarray(freq, dtype=np.uint32)
        self.cum = np.ascontiguousarray(cum, dtype=np.uint32)
        self.base = np.ascontiguousarray(base, dtype=np.uint32)


def run(sym, c, tabs, lanes, steps, pb):
    """(words bytes, chunk_words bytes), or the exception class."""
    try:
        w, cw = NE.rans_encode(np.asarray(sym, np.uint32), c, tabs, lanes, steps, pb)
    except (TKBEncodeError, RuntimeError) as e:
        return type(e)
    return w.tobytes(), cw.tobytes()


def same_in_modes(monkeypatch, mode, sym, c, tabs, lanes, steps, pb):
    """The plain C coder's result, and the same from ``mode``'s coder."""
    monkeypatch.setenv("TKB_NATIVE_SIMD", "scalar")
    ref = run(sym, c, tabs, lanes, steps, pb)
    _set_mode(monkeypatch, mode)
    got = run(sym, c, tabs, lanes, steps, pb)
    assert got == ref, (mode, lanes, steps, pb, c, len(sym))
    return ref


def make_tables(rng, pb, t, alph, kind):
    """t tables of alph symbols at prob_bits pb (sums 2^pb, zeros allowed):
    kind "skewed" (gamma weights), "ones" (frequency 1 where possible, the rest on one
    symbol), "full" (one symbol with 2^pb), "sparse" (a few symbols, the others 0)."""
    m = 1 << pb
    freqs = []
    for _ in range(t):
        if kind == "full":
            f = np.zeros(alph, np.int64)
            f[int(rng.integers(alph))] = m
        elif kind == "ones":
            f = np.zeros(alph, np.int64)
            k = min(alph, m)
            f[:k] = 1
            f[int(rng.integers(k))] += m - k
        elif kind == "sparse":
            f = np.zeros(alph, np.int64)
            on = rng.choice(alph, size=int(rng.integers(1, min(alph, m, 4) + 1)), replace=False)
            f[on] = 1
            f[on[0]] += m - len(on)
        else:
            k = min(alph, m)
            w = rng.gamma(rng.choice([0.05, 1.0]), size=k) + 1e-9
            g = np.maximum(1, np.floor(w / w.sum() * (m - k)).astype(np.int64))
            g[int(np.argmax(g))] += m - int(g.sum())
            f = np.zeros(alph, np.int64)
            f[rng.permutation(alph)[:k]] = g
        assert f.sum() == m and f.min() >= 0
        freqs.append(f)
    freq = np.stack(freqs)
    cum = np.concatenate([np.zeros((t, 1), np.int64), np.cumsum(freq, axis=1)[:, :-1]], axis=1)
    return freq, cum


def case(rng, pb, lanes, steps, n, c, t=None, alph=None, kind=None, uniform=None):
    """Random symbols (by the tables' probabilities, or uniform over the symbols coded)
    of a random table layout; returns (sym, c, tabs)."""
    m = 1 << pb
    t = t or int(rng.integers(1, 5))
    alph = alph or int(rng.integers(1, min(m, 40) + 1))
    kind = kind or rng.choice(["skewed", "ones", "full", "sparse"])
    freq, cum = make_tables(rng, pb, t, alph, kind)
    chan_table = rng.integers(0, t, size=c)
    if rng.random() < 0.3:            # bases that are not multiples of alph (any layout)
        extra = int(rng.integers(0, 5))
        flat_f = np.concatenate([freq.ravel(), np.ones(extra, np.int64)])
        flat_c = np.concatenate([cum.ravel(), np.zeros(extra, np.int64)])
        base = chan_table * alph + rng.integers(0, extra + 1, size=c) * (extra > 0)
        base = np.minimum(base, flat_f.size - alph)
    else:
        flat_f, flat_c = freq.ravel(), cum.ravel()
        base = chan_table * alph
    rows = flat_f[base[:, None] + np.arange(alph)]                  # [c, alph]
    empty = rows.sum(axis=1) == 0              # a shifted window on zeros: the table's own
    base[empty] = (chan_table * alph)[empty]
    rows[empty] = flat_f[base[empty][:, None] + np.arange(alph)]
    tabs = Tabs(flat_f, flat_c, base, alph)
    if uniform if uniform is not None else rng.random() < 0.5:
        p = (rows > 0).astype(np.float64)
    else:
        p = rows.astype(np.float64)
    cp = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)
    cp[:, -1] = 2.0
    sym = np.empty(n, np.int64)
    for ch in range(min(c, n)):                 # channel ch: symbols ch, ch + c, ...
        k = len(range(ch, n, c))
        sym[ch::c] = np.searchsorted(cp[ch], rng.random(k), side="right")
    chan = np.arange(n) % c
    zero = rows[chan, sym] == 0                 # (a rounding at the top of cp)
    sym[zero] = np.argmax(rows, axis=1)[chan][zero]
    return sym.astype(np.uint32), c, tabs


LANES = [1, 3, 5, 7, 8, 9, 15, 16, 17, 24, 31, 32, 33, 40, 48, 56, 64, 72, 80, 128]


@pytest.mark.parametrize("mode", MODES)
def test_paths_in_use(mode, monkeypatch):
    """The coder each setting selects (so that the comparisons below cover it)."""
    monkeypatch.setenv("TKB_NATIVE_SIMD", "scalar")
    assert rans_path() == "scalar"
    _set_mode(monkeypatch, mode)
    want = {"avx2": "avx2" if HAS_AVX2 else "scalar", "default": "avx512"}[mode]
    assert rans_path() == want
    if mode == "avx2":            # read on every call: back to the best without the variable
        monkeypatch.delenv("TKB_NATIVE_SIMD")
        assert rans_path() == ("avx512" if HAS_AVX512 else "avx2" if HAS_AVX2 else "scalar")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("pb", range(1, 17))
def test_every_precision(pb, mode, monkeypatch):
    """prob_bits 1 .. 16, lane counts on and off the vector paths, chunks with partial
    last steps and chunks shorter than a step, channels fewer and more than the lanes."""
    rng = np.random.default_rng(1000 + pb)
    for lanes in LANES:
        steps = int(rng.integers(1, 12))
        chunk = lanes * steps
        n = int(rng.choice([chunk * int(rng.integers(1, 4)),                  # whole chunks
                            chunk * int(rng.integers(0, 3)) + int(rng.integers(1, chunk + 1)),
                            int(rng.integers(1, lanes + 1))]))               # < one step
        c = int(rng.choice([1, 2, 7, 16, 33, 100, 1024]))
        sym, c, tabs = case(rng, pb, lanes, steps, n, c)
        ref = same_in_modes(monkeypatch, mode, sym, c, tabs, lanes, steps, pb)
        assert isinstance(ref, tuple)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["ones", "full", "sparse", "skewed"])
def test_frequency_extremes(kind, mode, monkeypatch):
    """Frequency 1 (a word at every symbol, the largest quotients), 2^prob_bits (the
    bound f << (32 - prob_bits) = 2^32: no word ever; s = prob_bits), uniform symbols
    over the coded ones; many steps on 16 .. 64 lanes (the register runs)."""
    rng = np.random.default_rng(["ones", "full", "sparse", "skewed"].index(kind))
    for pb in (1, 2, 8, 11, 12, 15, 16):
        for lanes in (8, 16, 24, 32, 48, 64, 4096):
            steps = int(rng.integers(20, 200)) if lanes <= 64 else 3
            n = lanes * steps * 2 - int(rng.integers(0, lanes))
            c = int(rng.choice([3, 20, 1024]))
            alph = int(min(1 << pb, rng.choice([1, 2, 33, 300])))
            sym, c, tabs = case(rng, pb, lanes, steps, n, c, alph=alph, kind=kind,
                                uniform=True)
            same_in_modes(monkeypatch, mode, sym, c, tabs, lanes, steps, pb)


@pytest.mark.parametrize("mode", MODES)
def test_against_the_reference(mode, monkeypatch):
    """The vector coders against the reference's rans.encode (Annex B), a few cases."""
    from tokenbits import rans
    rng = np.random.default_rng(77)
    _set_mode(monkeypatch, mode)
    for pb, lanes, steps, n, c in [(12, 32, 2048, 3 * 32 * 40 + 5, 1024), (16, 16, 9, 700, 5),
                                   (1, 64, 3, 64 * 7 - 1, 64), (11, 24, 13, 1000, 17),
                                   (14, 48, 50, 48 * 50 + 48 * 3 + 2, 48)]:
        sym, c, tabs = case(rng, pb, lanes, steps, n, c)
        flat = tabs.base[np.arange(n) % c] + sym
        ref_w, ref_cw = rans.encode(sym.astype(np.int64), tabs.freq[flat].astype(np.int64),
                                    tabs.cum[flat].astype(np.int64), lanes, steps, pb)
        w, cw = NE.rans_encode(sym, c, tabs, lanes, steps, pb)
        assert np.array_equal(np.asarray(w, np.int64), np.asarray(ref_w, np.int64).ravel())
        assert np.array_equal(np.asarray(cw, np.int64), np.asarray(ref_cw, np.int64).ravel())


# (prob_bits, frequencies, one lane's symbols, step 0 first) where x div f by the
# reciprocal (enc_sym in enc_rans.c) comes out one too large at some symbol, so that the
# one-step correction runs (rare: found by a search over random sequences; checked below)
CORRECTED = [
    (12, [3033, 1, 1062], [0, 0, 0, 2, 0, 2, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    (12, [3033, 1, 1062], [0, 2, 2, 0, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 2, 2, 0, 0,
                           0, 0, 0, 2, 0, 0, 2, 0, 0]),
    (12, [3033, 531, 532], [0, 0, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0,
                            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0, 1, 0, 0]),
]


def corrections(pb, freqs, seq) -> int:
    """How many quotients of one lane coding seq (last symbol first) the reciprocal gets
    one too large (the scalar coder's arithmetic, in Python integers)."""
    cum = np.concatenate([[0], np.cumsum(freqs)[:-1]])
    x, n = 1 << 16, 0
    for s in reversed(seq):
        f = int(freqs[s])
        if x >= f << (32 - pb):
            x >>= 16
        sh = 31 + (f - 1).bit_length()
        q = x * ((1 << sh) + f - 1) // f >> sh
        n += q != x // f
        x = (x // f << pb) + x % f + int(cum[s])
    return n


@pytest.mark.parametrize("mode", MODES)
def test_quotient_correction(mode, monkeypatch):
    """States where the reciprocal's quotient needs its correction, in every lane or in
    one lane among random ones: the same words in every mode, and the reference's."""
    from tokenbits import rans
    rng = np.random.default_rng(11)
    for pb, freqs, seq in CORRECTED:
        assert corrections(pb, freqs, seq) >= 1
        alph, steps = len(freqs), len(seq)
        cum = np.concatenate([[0], np.cumsum(freqs)[:-1]])
        for lanes in (8, 16, 24, 32, 48, 64, 80, 5):
            for c in (1, 7):
                tabs = Tabs(freqs, cum, np.zeros(c, np.int64), alph)
                sym = np.repeat(np.array(seq, np.uint32), lanes)        # every lane
                one = rng.choice(alph, size=(steps, lanes), p=np.array(freqs) / (1 << pb))
                one[:, int(rng.integers(lanes))] = seq                   # one lane
                for s in (sym, one.ravel().astype(np.uint32)):
                    ref = same_in_modes(monkeypatch, mode, s, c, tabs, lanes, steps, pb)
                    rw, rcw = rans.encode(s.astype(np.int64), np.array(freqs)[s],
                                          cum[s], lanes, steps, pb)
                    assert ref == (np.asarray(rw, np.uint16).tobytes(),
                                   np.asarray(rcw, np.uint32).tobytes())


@pytest.mark.parametrize("mode", MODES)
def test_symbols_outside_the_table(mode, monkeypatch):
    """A symbol >= alph or of frequency 0, anywhere (a vector group, the partial step,
    the first and the last symbol coded): TKBEncodeError in every mode; a frequency above
    2^prob_bits: refused in every mode."""
    rng = np.random.default_rng(5)
    for lanes in (8, 16, 24, 32, 64, 96, 7):
        steps = 5
        n = lanes * steps * 3 - 3
        for where in (0, n - 1, n // 2, int(rng.integers(n)), n - 2):
            for bad in ("alph", "huge", "zero"):
                sym, c, tabs = case(rng, 12, lanes, steps, n, 40, alph=20, kind="sparse")
                sym = sym.copy()
                if bad == "alph":
                    sym[where] = tabs.alph
                elif bad == "huge":
                    sym[where] = 0xFFFFFFFF
                else:             # of frequency 0 in its table, not in the other table
                    f = np.ones((2, 20), np.int64)
                    f[0, 19] = 0
                    f[0, 0] += (1 << 12) - 19
                    f[1, 5] += (1 << 12) - 20
                    cum = np.cumsum(f, axis=1) - f
                    chan_table = rng.integers(0, 2, size=c)
                    chan_table[where % c] = 0
                    tabs = Tabs(f.ravel(), cum.ravel(), chan_table * 20, 20)
                    sym = rng.integers(0, 19, size=n).astype(np.uint32)
                    sym[where] = 19
                ref = same_in_modes(monkeypatch, mode, sym, c, tabs, lanes, steps, 12)
                assert ref is TKBEncodeError
    sym, c, tabs = case(rng, 10, 32, 4, 300, 9, alph=8, kind="ones")
    tabs.freq[3] = (1 << 10) + 1
    assert same_in_modes(monkeypatch, mode, sym, c, tabs, 32, 4, 10) is RuntimeError


@pytest.mark.parametrize("mode", MODES)
def test_tables_outside_clause_7_3(mode, monkeypatch):
    """Frequencies and cums that are no table of clause 7.3 (cum + f > 2^prob_bits, cum
    up to 2^32 - 1: the vector coders' entries hold 16 bits of cum, so such a call runs
    the plain C coder): the same words in every mode."""
    rng = np.random.default_rng(9)
    for pb in (4, 12, 16):
        for lanes in (16, 32, 40):
            n, c, alph = lanes * 30 + 3, 50, 6
            freq = rng.integers(1, (1 << pb) + 1, size=alph * 3)
            for top in (1 << (16 - (pb == 16)), 1 << 32):
                cum = rng.integers(0, top, size=alph * 3, dtype=np.uint64)
                tabs = Tabs(freq, cum, rng.integers(0, 3, size=c) * alph, alph)
                sym = rng.integers(0, alph, size=n).astype(np.uint32)
                ref = same_in_modes(monkeypatch, mode, sym, c, tabs, lanes, 7, pb)
                assert isinstance(ref, tuple)


@pytest.mark.parametrize("mode", ["scalar"] + MODES)
def test_real_tokens(mode, monkeypatch):
    """Slices of bench.large_frame() (real ViT tokens) at the bench's qp and with other
    lane counts: backend="native" writes the reference's bytes in every mode, and both
    decoders give the reference decoder's values."""
    from tokenbits import bench
    x = bench.large_frame()
    _set_mode(monkeypatch, mode)
    for sl, opts in [((slice(0, 64), slice(0, 256)), dict(qp=-6)),
                     ((slice(100, 196), slice(0, 1024)), dict(qp=-6)),
                     ((slice(0, 48), slice(256, 768)), dict(target_cos=0.999)),
                     ((slice(300, 364), slice(0, 512)),
                      dict(qp=-6, num_lanes=48, lane_steps=5, exact_lanes=True)),
                     ((slice(8, 40), slice(0, 384)),
                      dict(qp=-8, num_lanes=24, lane_steps=3, exact_lanes=True)),
                     ((slice(0, 33), slice(0, 200)),
                      dict(qp=-4, num_lanes=7, lane_steps=11, exact_lanes=True))]:
        a = np.ascontiguousarray(x[sl])
        ref = tb.encode(a, backend="reference", **opts)
        with warnings.catch_warnings():
            warnings.simplefilter("error", NE.NativeFallbackWarning)
            nat = tb.encode(a, backend="native", **opts)
        assert nat == ref, (mode, a.shape, opts)
        want = tb.decode(ref, backend="reference").frames[0].values
        for backend in ("reference", "native"):
            got = tb.decode(nat, backend=backend).frames[0].values
            assert np.array_equal(np.asarray(got), np.asarray(want))
        assert np.asarray(want).shape == a.shape


def test_mode_switch_per_call(monkeypatch):
    """os.environ changes take effect at the next call (no cached choice)."""
    rng = np.random.default_rng(3)
    sym, c, tabs = case(rng, 12, 32, 50, 32 * 50 * 2 + 7, 64)
    out = []
    for mode in ("scalar", "avx2", "", "scalar", "avx2", ""):
        if mode:
            monkeypatch.setenv("TKB_NATIVE_SIMD", mode)
        else:
            monkeypatch.delenv("TKB_NATIVE_SIMD", raising=False)
        out.append((os.environ.get("TKB_NATIVE_SIMD"), rans_path(),
                    run(sym, c, tabs, 32, 50, 12)))
    assert len({o[2] for o in out}) == 1
    assert [o[1] for o in out[:3]] == [o[1] for o in out[3:]]
