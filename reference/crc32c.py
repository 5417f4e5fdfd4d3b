"""CRC-32C (Castagnoli) of the stream header and of units (spec clause 3.4).

Parameters: reflected polynomial 0x82F63B78, initial value 0xFFFFFFFF, final
XOR 0xFFFFFFFF; check value crc32c(b"123456789") == 0xE3069283.

The reference computes it with numpy only.  A CRC is linear over GF(2): the
message is cut into equal blocks (zero bytes prepended, which leave a CRC
register of zero unchanged), the blocks are run in parallel a byte at a time,
and the block CRCs are combined pairwise by "shift by n zero bytes" maps
expressed as four 256-entry tables.  ``crc32c_bytewise`` is the plain
definition the fast path is tested against.
"""
from __future__ import annotations

import numpy as np

POLY = 0x82F63B78


def _make_table() -> np.ndarray:
    t = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t = np.where(t & 1, (t >> 1) ^ np.uint32(POLY), t >> 1).astype(np.uint32)
    return t


TABLE = _make_table()
_TABLE_LIST = [int(v) for v in TABLE]


def crc32c_bytewise(data: bytes, crc: int = 0) -> int:
    """The definition: one table step per byte (slow, for tests and short inputs)."""
    c = crc ^ 0xFFFFFFFF
    for b in data:
        c = _TABLE_LIST[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _raw_step(reg: np.ndarray, byte: np.ndarray) -> np.ndarray:
    return TABLE[(reg ^ byte) & 0xFF] ^ (reg >> 8)


def _tables_from_images(img: np.ndarray) -> np.ndarray:
    """Tables [4, 256] of the linear map whose basis images (bit i -> img[i]) are given."""
    tabs = np.zeros((4, 256), dtype=np.uint32)
    v = np.arange(256)
    for k in range(4):
        for bit in range(8):
            tabs[k] ^= np.where((v >> bit) & 1, img[8 * k + bit], np.uint32(0)).astype(np.uint32)
    return tabs


def _apply(tabs: np.ndarray, reg: np.ndarray) -> np.ndarray:
    return (tabs[0][reg & 0xFF] ^ tabs[1][(reg >> 8) & 0xFF]
            ^ tabs[2][(reg >> 16) & 0xFF] ^ tabs[3][reg >> 24])


_SHIFT_CACHE: dict[int, np.ndarray] = {}


def _shift_tables(nbytes: int) -> np.ndarray:
    """Tables of the map 'append nbytes zero bytes' on a raw register (nbytes = BLOCK * 2^k)."""
    tabs = _SHIFT_CACHE.get(nbytes)
    if tabs is None:
        if nbytes == BLOCK:
            img = (np.uint32(1) << np.arange(32, dtype=np.uint32)).astype(np.uint32)
            zero = np.zeros(32, dtype=np.uint32)
            for _ in range(nbytes):
                img = _raw_step(img, zero)
        else:  # shift by 2m = shift by m applied twice
            half = _shift_tables(nbytes // 2)
            img = _apply(half, _apply(half, (np.uint32(1) << np.arange(32, dtype=np.uint32))))
        tabs = _SHIFT_CACHE[nbytes] = _tables_from_images(img)
    return tabs


BLOCK = 64  # bytes per parallel block


def crc32c(data) -> int:
    """CRC-32C of a bytes-like object."""
    buf = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    n = buf.size
    if n < 4 * BLOCK:
        return crc32c_bytewise(bytes(buf))
    # initial value 0xFFFFFFFF == zero register with the first 4 bytes inverted
    head = buf[:4] ^ np.uint8(0xFF)
    nblocks = 1 << int(np.ceil(np.log2((n + BLOCK - 1) // BLOCK)))
    padded = np.zeros(nblocks * BLOCK, dtype=np.uint8)
    start = padded.size - n
    padded[start:] = buf
    padded[start:start + 4] = head
    blocks = padded.reshape(nblocks, BLOCK).astype(np.uint32)
    reg = np.zeros(nblocks, dtype=np.uint32)
    for j in range(BLOCK):
        reg = _raw_step(reg, blocks[:, j])
    length = BLOCK
    while reg.size > 1:
        reg = _apply(_shift_tables(length), reg[0::2]) ^ reg[1::2]
        length *= 2
    return int(reg[0]) ^ 0xFFFFFFFF
