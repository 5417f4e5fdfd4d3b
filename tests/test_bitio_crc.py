"""Bit reader/writer (clause 3.3) and CRC-32C (clause 6.2)."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from tokenbits.bitio import BitReader, BitWriter
from tokenbits.crc32c import crc32c, crc32c_bytewise
from tokenbits.errors import TKBFormatError, TKBTruncatedError


def test_crc32c_check_value():
    assert crc32c_bytewise(b"123456789") == 0xE3069283
    assert crc32c(b"123456789") == 0xE3069283


@given(st.binary(max_size=3000))
def test_crc32c_fast_equals_definition(data):
    assert crc32c(data) == crc32c_bytewise(data)


@pytest.mark.parametrize("n", [255, 256, 257, 4095, 4096, 65537, 200003])
def test_crc32c_block_boundaries(n):
    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
    assert crc32c(data) == crc32c_bytewise(data)


@given(st.lists(st.tuples(st.integers(0, 15), st.integers(0, 2**20)), max_size=50))
def test_eg_round_trip(items):
    w = BitWriter()
    for k, v in items:
        w.eg(k, v)
    w.align_zero()
    r = BitReader(w.getvalue())
    assert [r.eg(k, "x") for k, _ in items] == [v for _, v in items]


@given(st.integers(1, 33), st.lists(st.integers(0, 2**33 - 1), max_size=40), st.integers(0, 7))
def test_packed_round_trip(width, values, lead):
    values = [v % (1 << width) for v in values]
    w = BitWriter()
    w.bits(lead, 0)
    w.packed(values, width)
    w.align_zero()
    r = BitReader(w.getvalue())
    r.bits(lead, "lead")
    assert r.packed(len(values), width, "p").tolist() == values


def test_reader_truncation_and_alignment_errors():
    r = BitReader(b"\x01")
    with pytest.raises(TKBTruncatedError) as e:
        r.fixed("u16", "field")
    assert e.value.element == "field"
    r = BitReader(b"\x40")
    r.bits(1, "a")
    with pytest.raises(TKBFormatError):
        r.align_zero()
    with pytest.raises(TKBFormatError):   # 33 leading zeros in an exp-Golomb code
        BitReader(bytes(5)).eg(0, "e")


def _bits_by_definition(w, n, value):
    """BitWriter.bits as clause 3.3 defines it: one bit at a time, most significant first."""
    for i in range(n - 1, -1, -1):
        w.acc = (w.acc << 1) | ((value >> i) & 1)
        w.nacc += 1
        if w.nacc == 8:
            w.buf.append(w.acc)
            w.acc = w.nacc = 0


@given(st.lists(st.tuples(st.integers(-1, 70), st.integers(-2 ** 70, 2 ** 70)), max_size=40))
def test_bits_equal_definition(items):
    a, b = BitWriter(), BitWriter()
    for n, v in items:
        a.bits(n, v)
        _bits_by_definition(b, n, v)
        assert (a.acc, a.nacc, bytes(a.buf)) == (b.acc, b.nacc, bytes(b.buf))
    a.bits(3, np.int64(-3))                     # numpy integers, negative values
    _bits_by_definition(b, 3, np.int64(-3))
    a.align_zero()
    _bits_by_definition(b, (8 - b.nacc) % 8, 0)
    assert a.getvalue() == b.getvalue()


@given(st.integers(0, 7), st.integers(0, 15),
       st.lists(st.integers(0, 2**40), max_size=300))
def test_eg_array_equals_eg_one_by_one(lead, k, values):
    """eg_array (codes gathered, whole bytes every 64 values) writes eg's bits, from any
    bit position."""
    a, b = BitWriter(), BitWriter()
    for w in (a, b):
        w.bits(lead, 0b1011011)
    for v in values:
        a.eg(k, v)
    b.eg_array(k, np.asarray(values, dtype=np.uint64) if values and max(values) < 2**63
               else values)
    assert (a.buf, a.acc, a.nacc) == (b.buf, b.acc, b.nacc)
    for w in (a, b):
        w.align_zero()
    assert a.getvalue() == b.getvalue()


@given(st.lists(st.lists(st.integers(0, 2**16), min_size=1, max_size=40), max_size=8))
def test_best_freq_ks_equals_best_freq_k(tabs):
    from tokenbits import tables
    freqs = [np.asarray(t, dtype=np.int64) for t in tabs]
    assert tables.best_freq_ks(freqs) == [tables.best_freq_k(f) for f in freqs]
