"""Helpers to take streams apart and put them back together (with valid CRCs),
so that tests can craft streams violating one rule at a time."""
from tokenbits import decoder, encoder, levels, syntax
from tokenbits.bitio import BitWriter
from tokenbits.conformance.generate import tps_payload, tps_values  # noqa: F401


def split(data: bytes):
    """(stream header bytes, [[unit_type, track_id, essential, payload], ...])."""
    h = decoder.parse_stream_header(data)
    lv = levels.get_level(h.level_idc)
    return data[:16], [[u.unit_type, u.track_id, u.unit_essential, u.payload]
                       for u in decoder.iter_units(data, lv)]


def join(header: bytes, units) -> bytes:
    return header + b"".join(encoder.unit(t, tr, p, e) for t, tr, e, p in units)


def header(profile=2, level=10, major=1, reserved=0, magic=syntax.MAGIC) -> bytes:
    w = BitWriter()
    syntax.write(w, "stream_header", dict(magic=magic, version_major=major, version_minor=0,
                                          profile_idc=profile, level_idc=level,
                                          reserved_zero_32bits=reserved, header_crc32c=0))
    from tokenbits.crc32c import crc32c
    b = w.getvalue()[:12]
    return b + crc32c(b).to_bytes(4, "little")


def unit_offset(data: bytes, index: int) -> int:
    """Byte offset in the stream of unit ``index``."""
    return 16 + sum(len(encoder.unit(t, tr, p, e)) for t, tr, e, p in split(data)[1][:index])


def units_of(data: bytes, unit_type: int):
    return [i for i, u in enumerate(split(data)[1]) if u[0] == unit_type]
