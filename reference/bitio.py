"""Bit reader and writer: the only code that touches bits (spec clause 3.3).

Conventions of clause 3.3: fixed-width fields (descriptors ``u8``, ``u16``,
``u32``, ``u64``, ``i8``) are byte aligned and little-endian; bit fields
(``b(n)``, ``eg(k)``, packed arrays) are read most significant bit first;
word streams (``w16``) are little-endian 16-bit words.  A reader never reads
past its end: running out raises :class:`TKBTruncatedError` naming the element.
When ``trace`` is a list, every element read is appended to it as
``(name, bit_offset, bit_length, value)`` for ``tkb trace``.
"""
from __future__ import annotations

import numpy as np

from .errors import TKBFormatError, TKBTruncatedError

_FIXED = {"u8": (1, False), "u16": (2, False), "u32": (4, False), "u64": (8, False),
          "i8": (1, True)}


class BitReader:
    def __init__(self, data, start: int = 0, end: int | None = None, *,
                 trace: list | None = None, clause: str = "3.3"):
        self.data = memoryview(data).cast("B")
        self.pos = start * 8
        self.end = (len(self.data) if end is None else end) * 8
        self.trace = trace
        self.clause = clause

    # -- bookkeeping -------------------------------------------------------
    @property
    def byte_pos(self) -> int:
        return self.pos // 8

    def remaining_bits(self) -> int:
        return self.end - self.pos

    def remaining_bytes(self) -> int:
        return (self.end - self.pos) // 8

    def _need(self, nbits: int, name: str) -> None:
        if nbits > self.end - self.pos:
            raise TKBTruncatedError(
                f"{name} needs {nbits} bits but only {self.end - self.pos} remain",
                clause=self.clause, element=name, offset=self.pos // 8)

    def _log(self, name, start, value):
        if self.trace is not None:
            self.trace.append((name, start, self.pos - start, value))

    def _aligned(self, name: str) -> None:
        if self.pos % 8:
            raise AssertionError(f"{name}: byte-aligned read at bit {self.pos}")

    # -- byte-aligned fields ------------------------------------------------
    def fixed(self, desc: str, name: str) -> int:
        """Read a fixed-width little-endian field (``u8`` .. ``u64``, ``i8``)."""
        nbytes, signed = _FIXED[desc]
        self._aligned(name)
        self._need(nbytes * 8, name)
        start = self.pos
        b = self.pos // 8
        v = int.from_bytes(self.data[b:b + nbytes], "little", signed=signed)
        self.pos += nbytes * 8
        self._log(name, start, v)
        return v

    def array(self, desc: str, count: int, name: str) -> np.ndarray:
        """Read ``count`` fixed-width little-endian values as a numpy array."""
        nbytes, signed = _FIXED[desc]
        self._aligned(name)
        self._need(nbytes * 8 * count, name)
        start = self.pos
        dtype = np.dtype(f"<{'i' if signed else 'u'}{nbytes}")
        b = self.pos // 8
        v = np.frombuffer(self.data[b:b + nbytes * count], dtype=dtype).copy()
        self.pos += nbytes * 8 * count
        self._log(name, start, v)
        return v

    def raw_bytes(self, nbytes: int, name: str) -> bytes:
        self._aligned(name)
        self._need(nbytes * 8, name)
        start = self.pos
        b = self.pos // 8
        v = bytes(self.data[b:b + nbytes])
        self.pos += nbytes * 8
        self._log(name, start, f"<{nbytes} bytes>")
        return v

    def words16(self, count: int, name: str) -> np.ndarray:
        """``count`` little-endian 16-bit words (descriptor ``w16``)."""
        return self.array("u16", count, name)

    # -- bit fields ---------------------------------------------------------
    def bits(self, n: int, name: str) -> int:
        """Read an n-bit unsigned field, most significant bit first (``b(n)``)."""
        self._need(n, name)
        start = self.pos
        v = 0
        for _ in range(n):
            byte = self.data[self.pos >> 3]
            v = (v << 1) | ((byte >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        self._log(name, start, v)
        return v

    def bit_array(self, n: int, name: str) -> np.ndarray:
        """n single bits as a uint8 array of 0/1, MSB first."""
        self._need(n, name)
        start = self.pos
        b0, off = divmod(self.pos, 8)
        nb = (off + n + 7) // 8
        bits = np.unpackbits(np.frombuffer(self.data[b0:b0 + nb], dtype=np.uint8))
        v = bits[off:off + n].copy()
        self.pos += n
        self._log(name, start, v)
        return v

    def packed(self, count: int, width: int, name: str) -> np.ndarray:
        """``count`` unsigned fields of ``width`` bits each, MSB first, as uint64."""
        if width == 0 or count == 0:
            v = np.zeros(count, dtype=np.uint64)
            self._log(name, self.pos, v)
            return v
        self._need(count * width, name)
        if self.pos % 8 == 0 and width in (8, 16, 32):
            start = self.pos
            b = self.pos // 8
            v = np.frombuffer(self.data[b:b + count * width // 8],
                              dtype=f">u{width // 8}").astype(np.uint64)
            self.pos += count * width
            self._log(name, start, v)
            return v
        bits = self.bit_array(count * width, name).reshape(count, width)
        v = np.zeros(count, dtype=np.uint64)
        for j in range(width):
            v = (v << np.uint64(1)) | bits[:, j]
        return v

    def eg(self, k: int, name: str) -> int:
        """Exp-Golomb code of order k (``eg(k)``), at most 32 leading zeros (clause 3.3)."""
        start = self.pos
        zeros = 0
        while True:
            self._need(1, name)
            bit = (self.data[self.pos >> 3] >> (7 - (self.pos & 7))) & 1
            self.pos += 1
            if bit:
                break
            zeros += 1
            if zeros > 32:
                raise TKBFormatError("exp-Golomb prefix longer than 32 zeros", clause="3.3",
                                     element=name, offset=start // 8)
        trace, self.trace = self.trace, None
        try:
            v = ((1 << (zeros + k)) | self.bits(zeros + k, name)) - (1 << k)
        finally:
            self.trace = trace
        self._log(name, start, v)
        return v

    def align_zero(self, name: str = "alignment_zero_bits") -> None:
        """Skip to the next byte boundary; the skipped bits shall be zero."""
        n = (-self.pos) % 8
        if n:
            start = self.pos
            if self.bits(n, name):
                raise TKBFormatError("alignment bits are not zero", clause="3.3",
                                     element=name, offset=start // 8)


class BitWriter:
    """Mirror of :class:`BitReader` for the encoder."""

    def __init__(self):
        self.buf = bytearray()
        self.acc = 0
        self.nacc = 0

    def _flush_check(self, name):
        if self.nacc:
            raise AssertionError(f"{name}: byte-aligned write at an unaligned position")

    def fixed(self, desc: str, value: int, name: str = "") -> None:
        self._flush_check(name)
        nbytes, signed = _FIXED[desc]
        self.buf += int(value).to_bytes(nbytes, "little", signed=signed)

    def array(self, desc: str, values, name: str = "") -> None:
        self._flush_check(name)
        nbytes, signed = _FIXED[desc]
        dtype = np.dtype(f"<{'i' if signed else 'u'}{nbytes}")
        self.buf += np.ascontiguousarray(values, dtype=dtype).tobytes()

    def raw_bytes(self, data: bytes) -> None:
        self._flush_check("raw")
        self.buf += data

    def bits(self, n: int, value: int) -> None:
        """The n low bits of ``value`` (two's complement), most significant first: whole
        bytes go out as they fill, the rest waits in ``acc`` (``nacc`` bits)."""
        if n <= 0:
            return
        acc = (self.acc << n) | (int(value) & ((1 << n) - 1))
        nacc = self.nacc + n
        while nacc >= 8:
            nacc -= 8
            self.buf.append((acc >> nacc) & 0xFF)
        self.acc = acc & ((1 << nacc) - 1)
        self.nacc = nacc

    def bit_array(self, bits) -> None:
        bits = np.asarray(bits, dtype=np.uint8)
        if self.nacc:
            head = min((8 - self.nacc), bits.size)
            for b in bits[:head]:
                self.bits(1, int(b))
            bits = bits[head:]
        if bits.size:
            full = bits.size // 8 * 8
            self.buf += np.packbits(bits[:full]).tobytes()
            for b in bits[full:]:
                self.bits(1, int(b))

    def packed(self, values, width: int) -> None:
        if width == 0:
            return
        v = np.asarray(values, dtype=np.uint64)
        if self.nacc == 0 and width in (8, 16, 32):
            self.buf += v.astype(f">u{width // 8}").tobytes()
            return
        bits = np.empty((v.size, width), dtype=np.uint8)
        for j in range(width):
            bits[:, width - 1 - j] = (v >> np.uint64(j)) & np.uint64(1)
        self.bit_array(bits.ravel())

    def eg(self, k: int, value: int) -> None:
        v = int(value) + (1 << k)
        nbits = v.bit_length()
        self.bits(nbits - 1 - k, 0)
        self.bits(nbits, v)

    def eg_array(self, k: int, values) -> None:
        """eg(k) of each value in turn (the same bits as :meth:`eg` value by value), the
        codes gathered in one integer and written as whole bytes every 64 values."""
        vals = [int(x) for x in values]
        if vals and min(vals) < 0:
            for x in vals:                    # (no eg code: eg's own behaviour)
                self.eg(k, x)
            return
        base = 1 << k
        for i in range(0, len(vals), 64):
            acc, nacc = self.acc, self.nacc
            for x in vals[i:i + 64]:
                v = x + base
                n = 2 * v.bit_length() - 1 - k     # nbits - 1 - k zeros, then v
                acc = (acc << n) | v
                nacc += n
            whole = nacc >> 3
            if whole:
                rest = nacc - 8 * whole
                self.buf += (acc >> rest).to_bytes(whole, "big")
                acc &= (1 << rest) - 1
                nacc = rest
            self.acc, self.nacc = acc, nacc

    def align_zero(self) -> None:
        if self.nacc:
            self.bits(8 - self.nacc, 0)

    def getvalue(self) -> bytes:
        self._flush_check("end")
        return bytes(self.buf)
