"""Python decoder adapters for the harness tests (``module:attr``), most of them broken
on purpose, and :func:`fix_crcs`, shared with ``conformance_decoder.py``."""
from __future__ import annotations

import os
import time

import tokenbits as tb
from tokenbits.conformance.adapters import NotSupported, decode_reference
from tokenbits.crc32c import crc32c


def fix_crcs(data: bytes) -> bytes:
    """The stream with every CRC-32C recomputed (stream header, then each unit while
    its unit_size fits): what a decoder that never checks CRCs would see."""
    b = bytearray(data)
    if len(b) >= 16:
        b[12:16] = crc32c(bytes(b[:12])).to_bytes(4, "little")
    pos = 16
    while pos + 8 <= len(b):
        size = int.from_bytes(b[pos:pos + 4], "little")
        end = pos + 8 + size
        if end + 4 > len(b):
            break
        b[end:end + 4] = crc32c(bytes(b[pos:end])).to_bytes(4, "little")
        pos = end + 4
    return bytes(b)


def flip_last_bit(canonical: bytes) -> bytes:
    """Flip the lowest bit of the last byte (a value of the last frame)."""
    if not canonical:
        return canonical
    return canonical[:-1] + bytes([canonical[-1] ^ 1])


class FlipBit:
    """Flips one bit of the canonical output of the frames it decodes."""
    name = "flip-bit"

    def decode(self, data):
        r = decode_reference(data)
        return flip_last_bit(r.canonical), r.errors


class AcceptBadCRC:
    """Never checks a CRC (recomputes them all before decoding)."""

    def decode(self, data):
        r = decode_reference(fix_crcs(data))
        return r.canonical, r.errors


def wrong_class(data):
    """Reports every error as a TKBFormatError."""
    r = decode_reference(data)
    return r.canonical, ["TKBFormatError" for _ in r.errors]


def exceptions(data):
    """Returns the exception instances themselves (accepted by the harness)."""
    try:
        s = tb.decode(data, strict=False, backend="reference")
    except tb.TKBError as e:
        return None, [e]
    return tb.canonical_bytes(s), list(s.errors)


def hang(data):
    time.sleep(600)


def crash(data):
    raise RuntimeError("decoder bug")


def die(data):
    os._exit(70)


def unsupported(data):
    raise NotSupported("this adapter implements nothing")


def bad_return(data):
    return "not a tuple"


class Strict:
    """The reference strict decoder, declared strict by its attribute."""
    resilient = False
    name = "strict-by-attribute"

    def decode(self, data):
        try:
            s = tb.decode(data, strict=True, backend="reference")
        except tb.TKBError as e:
            return b"", [type(e).__name__]
        return tb.canonical_bytes(s), []


def _header_ok(data) -> bool:
    return len(data) >= 16 and crc32c(bytes(data[:12])) == int.from_bytes(data[12:16], "little")


def die_on_bad_header(data):
    """The reference decoder, except that its process dies on a bad header CRC."""
    if not _header_ok(data):
        os._exit(70)
    return decode_reference(data)


def hang_on_bad_header(data):
    """The reference decoder, except that it hangs on a bad header CRC."""
    if not _header_ok(data):
        time.sleep(600)
    return decode_reference(data)


def lossy_encoder(array, **options):
    """A matrix encoder that changes one input value before encoding."""
    import numpy as np
    a = np.array(array, copy=True)
    flat = a.reshape(-1)
    flat[0] = flat[1]
    return tb.encode(a, backend="reference", **options)


def unsupported_own_class(data):
    """Raises its own exception class named NotSupported (no tokenbits import needed)."""
    raise type("NotSupported", (Exception,), {})("no ids tracks here")
