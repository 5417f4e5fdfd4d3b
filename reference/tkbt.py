"""``.tkbt`` files: a model transform shipped apart from the streams that name it.

A ``.tkbt`` file is itself a TKB stream of the High profile: a stream header, a
stream-level metadata unit (informative: ``transform.energy``, ``model.name``, ...) and
one transform unit carrying the transform inline (clause 6.7).  Streams name it by
the SHA-256 of its ``transform_data()`` (``tkb inspect`` prints the digest), so the
same transform has one identity whether it is carried inline or by reference.
"""
from __future__ import annotations

import dataclasses
import os

from . import levels
from . import transform as tr
from .errors import TKBFormatError

SUFFIX = ".tkbt"


def _level_for(t: tr.Transform) -> int:
    for idc, lv in sorted(levels.LEVELS.items()):
        if (t.num_channels <= lv.max_channels and t.num_coeffs * t.num_channels <= lv.max_values
                and len(t.data) + 2 <= lv.max_unit_size):
            return idc
    raise TKBFormatError("the transform exceeds every level", clause="8.2")


def dumps(t: tr.Transform) -> bytes:
    from .decoder import UNIT_METADATA, UNIT_TRANSFORM
    from .stream_layout import metadata_payload, stream_header, unit
    from .decoder import STREAM_TRACK
    out = bytearray(stream_header(levels.PROFILE_HIGH, _level_for(t)))
    if t.meta:
        out += unit(UNIT_METADATA, STREAM_TRACK, metadata_payload(t.meta))
    out += unit(UNIT_TRANSFORM, STREAM_TRACK, tr.transform_unit_payload(0, t, inline=True), 1)
    return bytes(out)


def save(t: tr.Transform, path) -> None:
    with open(path, "wb") as f:
        f.write(dumps(t))


def loads(data: bytes) -> tr.Transform:
    """The transform of a ``.tkbt`` file's bytes (TKBError when it holds none or is bad)."""
    from .decoder import STREAM_TRACK, decode
    s = decode(bytes(data))
    if len(s.transforms) != 1 or s.tracks:
        raise TKBFormatError(f"a .tkbt file holds one transform and no track; this one holds "
                             f"{len(s.transforms)} transforms and {len(s.tracks)} tracks",
                             clause="6.7")
    t = next(iter(s.transforms.values()))
    return dataclasses.replace(t, meta=dict(s.metadata.get(STREAM_TRACK, {})))


def load(src) -> tr.Transform:
    """A transform from a path or from the bytes of a ``.tkbt`` file."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        return loads(bytes(src))
    with open(os.fspath(src), "rb") as f:
        return loads(f.read())
