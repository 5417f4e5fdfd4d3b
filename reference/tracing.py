"""Syntax trace of a stream (informative): every syntax element read, with its bit
offset and length, in stream order, as the decoding process of clauses 6.1, 6.2
and 6.3 to 6.6 reads it.  ``tkb trace`` prints it; the conformance generator uses
it to find elements and to record which elements a stream contains.

Only parsing is traced, not decoding: a unit whose payload parses but whose
frame would fail later (clause 7) is traced in full.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from . import decoder as d
from . import levels, transform
from .crc32c import crc32c
from .errors import TKBError


@dataclass(frozen=True)
class Element:
    """One syntax element: ``unit`` is the unit index (None: the stream header)."""
    unit: int | None
    name: str            # as the syntax tables name it, with [i] and nesting prefixes
    bit_offset: int      # in the stream
    bit_length: int
    value: object

    @property
    def leaf(self) -> str:
        """The element's name in clause 5 (``freq_table[0].freq[3]`` -> ``freq``)."""
        leaf = self.name.rsplit(".", 1)[-1]
        return leaf.split("[", 1)[0]


@dataclass(frozen=True)
class Problem:
    """A unit (or the stream header, unit None) that failed to parse."""
    unit: int | None
    error: str
    fatal: bool          # the units after it cannot be found (clause 9.10)


def walk(data: bytes) -> Iterator[Element | Problem]:
    """Elements and problems of ``data`` in stream order."""
    tr: list = []
    try:
        header = d.parse_stream_header(data, trace=tr)
    except TKBError as e:
        yield from (Element(None, n, o, ln, v) for n, o, ln, v in tr)
        yield Problem(None, str(e), True)
        return
    yield from (Element(None, n, o, ln, v) for n, o, ln, v in tr)
    level = levels.get_level(header.level_idc)
    parameter_sets: dict = {}
    transforms: dict = {}    # transform_id -> Transform (inline ones; references are not resolved)
    pos, i = d.STREAM_HEADER_SIZE, 0
    while pos < len(data):
        tr = []
        try:
            u = d.read_unit(data, pos, level, trace=tr)
        except TKBError as e:
            yield from (Element(i, n, o, ln, v) for n, o, ln, v in tr)
            yield Problem(i, f"{e} (the units after it cannot be found)", True)
            return
        items = list(tr)
        payload_trace: list = []
        err = None
        try:
            if u.unit_type == d.UNIT_TRANSFORM:
                tid, t = transform.parse_transform_unit(u.payload, level, {},
                                                        trace=payload_trace)
                transforms.setdefault(tid, t)
            elif u.unit_type == d.UNIT_TPS:
                tps = d.parse_tps(u.payload, level, header.profile_idc, trace=payload_trace,
                                  transforms=transforms)
                parameter_sets[(u.track_id, tps["tps_id"])] = tps
            elif u.unit_type == d.UNIT_FRAME:
                tps = parameter_sets.get((u.track_id, u.payload[0])) if u.payload else None
                if tps is None:
                    err = (f"frame refers to tps_id {u.payload[0] if u.payload else '?'} "
                           f"of track {u.track_id}, which has not been received")
                else:
                    d.parse_frame(u.payload, tps, level, trace=payload_trace)
            elif u.unit_type == d.UNIT_METADATA:
                d.parse_metadata(u.payload, trace=payload_trace)
            elif u.unit_type == d.UNIT_INDEX:
                d.parse_index(u.payload, trace=payload_trace)
        except TKBError as e:
            err = str(e)
        base = (u.offset + d.UNIT_HEADER_SIZE) * 8
        items += [(n, o + base, ln, v) for n, o, ln, v in payload_trace]
        items.sort(key=lambda t: (t[1], -t[2]))
        body_end = u.offset + d.UNIT_HEADER_SIZE + len(u.payload)
        for n, o, ln, v in items:
            if n == "unit_type":
                v = f"{v} ({d.UNIT_TYPES.get(v, 'unknown')})"
            elif n == "track_id" and o < base and v == d.STREAM_TRACK:
                v = f"{v} (stream)"
            elif n == "unit_crc32c" and not u.crc_ok:
                v = f"0x{v:08x} (mismatch: computed 0x{crc32c(data[u.offset:body_end]):08x})"
            yield Element(i, n, o, ln, v)
        if not u.crc_ok and err is None:
            err = "unit_crc32c mismatch"
        if err:
            yield Problem(i, err, False)
        pos += u.size
        i += 1


def format_value(name: str, value, data: bytes, bit_off: int, bit_len: int) -> str:
    leaf = name.rsplit(".", 1)[-1]
    if isinstance(value, np.ndarray):
        shown = ", ".join(str(v) for v in value[:8].tolist())
        return f"[{shown}{', ...' if value.size > 8 else ''}] (len {value.size})"
    if isinstance(value, str):
        if value.startswith("<") and value.endswith(" bytes>") and leaf != "unit_payload" \
                and bit_off % 8 == 0:
            raw = data[bit_off // 8: bit_off // 8 + min(bit_len // 8, 48)]
            more = "..." if bit_len // 8 > 48 else ""
            try:
                text = raw.decode("utf-8")
                if text.isprintable():
                    return f"{text!r}{more} {value}"
            except UnicodeDecodeError:
                pass
            return f"0x{raw.hex()}{more} {value}"
        return value
    if isinstance(value, (int, np.integer)) and (leaf == "magic" or leaf.endswith("crc32c")):
        return f"0x{int(value):08x}"
    return str(value)


def line(ev: Element | Problem, data: bytes) -> str:
    """One line of ``tkb trace``."""
    where = "stream_header" if ev.unit is None else f"unit[{ev.unit}]"
    if isinstance(ev, Problem):
        return f"{where}: error: {ev.error}"
    return (f"bit {ev.bit_offset:<8d} len {ev.bit_length:<6d} {where}.{ev.name} = "
            f"{format_value(ev.name, ev.value, data, ev.bit_offset, ev.bit_length)}")


def lines(data: bytes) -> Iterator[str]:
    """The trace as text, one line per element or problem (``tkb trace``)."""
    return (line(ev, data) for ev in walk(data))
