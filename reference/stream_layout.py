"""Writing the stream's framing (informative, Annex B.8): the stream header (clause 6.1),
units with their CRC-32C (6.2), metadata (6.5) and index (6.6) payloads."""
from __future__ import annotations

from . import levels, syntax
from .bitio import BitWriter
from .crc32c import crc32c
from .decoder import UNIT_FRAME, UNIT_TPS, UNIT_TRANSFORM, VERSION_MAJOR, VERSION_MINOR
from .errors import TKBEncodeError


def stream_header(profile_idc: int, level_idc: int) -> bytes:
    """The stream header (clause 6.1); version_minor is the lowest minor version whose
    tools the profile has: 1 for High, 0 for Main and Lossless (unchanged 1.0 streams)."""
    w = BitWriter()
    minor = VERSION_MINOR if profile_idc == levels.PROFILE_HIGH else 0
    vals = dict(magic=syntax.MAGIC, version_major=VERSION_MAJOR, version_minor=minor,
                profile_idc=profile_idc, level_idc=level_idc, reserved_zero_32bits=0,
                header_crc32c=0)
    syntax.write(w, "stream_header", vals)
    b = w.getvalue()[:12]
    return b + crc32c(b).to_bytes(4, "little")


def unit(unit_type: int, track_id: int, payload: bytes, essential: int | None = None,
         crc=crc32c) -> bytes:
    """A unit (clause 6.2): its header, ``payload`` and the CRC-32C of both (clause 3.4)
    computed by ``crc`` (bytes -> int; default this package's numpy one; an encoder
    backend may pass its own, ``FitKernels.crc32c``, that returns the same value)."""
    if essential is None:
        essential = 1 if unit_type in (UNIT_TPS, UNIT_FRAME, UNIT_TRANSFORM) else 0
    w = BitWriter()
    syntax.write(w, "unit_header", dict(unit_size=len(payload), unit_type=unit_type,
                                         track_id=track_id, unit_essential=essential,
                                         reserved_zero_8bits=0))
    body = w.getvalue() + payload
    return body + crc(body).to_bytes(4, "little")


def metadata_payload(meta: dict) -> bytes:
    entries = []
    for k, v in meta.items():
        kb, vb = str(k).encode(), str(v).encode()
        if not kb or len(kb) > 255:
            raise TKBEncodeError(f"metadata key {k!r} must be 1..255 bytes")
        entries.append(dict(key_length=len(kb), key=kb, value_length=len(vb), value=vb))
    w = BitWriter()
    syntax.write(w, "metadata", dict(num_entries=len(entries), metadata_entry=entries))
    return w.getvalue()


def index_payload(entries: list) -> bytes:
    w = BitWriter()
    syntax.write(w, "index", dict(num_entries=len(entries), index_entry=[
        dict(frame_number=n, unit_offset=o) for n, o in entries]))
    return w.getvalue()
