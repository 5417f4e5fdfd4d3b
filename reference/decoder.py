"""The decoding process (spec clauses 6 and 7): units in, decoded frames out.

Parsing yields immutable syntax values (``syntax.parse``); reconstruction is
a pipeline of pure functions over them: presence map (7.2) -> rANS (7.3) ->
symbol mapping (7.4) -> prediction (7.5) -> dequantization and output
conversion (7.6).  Every size is bounded by the level (8.2) and by the bytes
present before anything is allocated (7.1).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import BinaryIO, Iterator

import numpy as np

from . import levels, prediction, rans, reconstruction, symbols, syntax, tables
from . import transform as transforms_
from .bitio import BitReader
from .crc32c import crc32c
from .errors import (TKBCRCError, TKBError, TKBFormatError, TKBReferenceError, TKBTableError,
                     TKBTruncatedError, TKBUnsupportedError, TKBValueError)
from .merge_map import PRESENCE_WITH_MERGE_MAP, dense_values, read_merge_map
from .presence import read_presence_map

VERSION_MAJOR = 1
VERSION_MINOR = 1
STREAM_HEADER_SIZE = 16
UNIT_HEADER_SIZE = 8
UNIT_TPS, UNIT_FRAME, UNIT_METADATA, UNIT_INDEX, UNIT_TRANSFORM = 1, 2, 3, 4, 5
UNIT_TYPES = {UNIT_TPS: "track_parameter_set", UNIT_FRAME: "frame",
              UNIT_METADATA: "metadata", UNIT_INDEX: "index", UNIT_TRANSFORM: "transform"}
STREAM_TRACK = 255  # track_id of stream-level metadata and of transform units
STREAM_UNITS = (UNIT_METADATA, UNIT_TRANSFORM)   # unit types that may use track_id 255
CODING_MODES = (0, 1, 2)   # quantized, split, transform (clause 6.3)
LOOKUP_CACHE = 8    # parameter sets whose slot tables a decoder keeps built


@dataclass(frozen=True)
class StreamHeader:
    version_major: int
    version_minor: int
    profile_idc: int
    level_idc: int


@dataclass(frozen=True)
class Unit:
    """One unit as framed by clause 6.2 (payload not yet interpreted)."""
    offset: int          # byte offset of the unit header in the stream
    unit_type: int
    track_id: int
    unit_essential: int
    payload: bytes
    crc_ok: bool
    reserved_ok: bool

    @property
    def size(self) -> int:
        return UNIT_HEADER_SIZE + len(self.payload) + 4


@dataclass(frozen=True)
class Frame:
    """A decoded token frame (clause 10 lists what is canonical of it)."""
    track_id: int
    frame_number: int
    num_tokens: int
    positions: np.ndarray   # uint32 [num_kept]
    values: np.ndarray      # [num_kept, num_channels]; ids: uint32 [num_kept]
    dtype: str              # output dtype name; bfloat16 values are uint16 bit patterns
    tps_id: int
    offset: int             # byte offset of the frame unit
    stand_ins: np.ndarray | None = None   # uint32, the merge map's (clause 7.8; High)
    kept_positions: np.ndarray | None = None   # of a dense frame: the kept positions

    @property
    def num_kept(self) -> int:
        return int(self.positions.size)

    def dense_values(self) -> np.ndarray:
        """[num_tokens, D] (ids: [num_tokens]) of clause 7.8: kept rows at their
        positions, each pruned position a bit copy of its stand-in's row (merge map)
        or zeros (no merge map)."""
        if self.kept_positions is not None:        # already dense
            return self.values
        return dense_values(self.values, self.positions, self.num_tokens, self.stand_ins)


def densify(frame: Frame) -> Frame:
    """The frame as clause 7.8's dense frame: values [num_tokens, ...], positions 0 ..
    num_tokens-1 (so that its canonical record is the dense record of clause 10.4);
    ``kept_positions`` keeps the positions that were decoded."""
    if frame.kept_positions is not None:
        return frame
    return replace(frame, values=frame.dense_values(),
                   positions=np.arange(frame.num_tokens, dtype=np.uint32),
                   kept_positions=frame.positions)


def densify_stream(stream: "DecodedStream") -> "DecodedStream":
    """``stream`` with every frame dense (clause 7.8)."""
    return replace(stream, frames=[densify(f) for f in stream.frames])


@dataclass
class DecodedStream:
    header: StreamHeader
    tracks: dict = field(default_factory=dict)       # track_id -> {tps_id: tps mapping}
    transforms: dict = field(default_factory=dict)   # transform_id -> Transform (clause 6.7)
    frames: list = field(default_factory=list)       # Frame, in stream order
    metadata: dict = field(default_factory=dict)     # track_id (255: stream) -> {key: value}
    index: dict = field(default_factory=dict)        # track_id -> [(frame_number, offset)]
    errors: list = field(default_factory=list)       # TKBError of units that were skipped
    framing_error: TKBError | None = None            # non-strict: where unit framing broke
    units: list = field(default_factory=list)        # (Unit, status) for inspect

    def track_frames(self, track_id: int) -> list:
        return [f for f in self.frames if f.track_id == track_id]


# -- stream and unit framing (clauses 6.1, 6.2) -----------------------------------

def parse_stream_header(data, trace: list | None = None) -> StreamHeader:
    if len(data) < 4:
        raise TKBTruncatedError("stream shorter than its magic number", clause="6.1",
                                element="magic", offset=0)
    magic = int.from_bytes(bytes(memoryview(data)[:4]), "little")
    if magic != syntax.MAGIC:
        raise TKBFormatError(f"magic 0x{magic:08x} is not a TKB stream", clause="6.1",
                             element="magic", offset=0)
    r = BitReader(data, 0, min(len(data), STREAM_HEADER_SIZE), trace=trace, clause="6.1")
    h = syntax.parse(r, "stream_header")
    if crc32c(bytes(memoryview(data)[:12])) != h["header_crc32c"]:
        raise TKBCRCError("stream header crc32c mismatch", clause="6.1",
                          element="header_crc32c", offset=12)
    if h["version_major"] != VERSION_MAJOR:
        raise TKBUnsupportedError(f"version_major {h['version_major']} (this decoder: 1)",
                                  clause="6.1", element="version_major", offset=4)
    if h["reserved_zero_32bits"]:
        raise TKBFormatError("reserved_zero_32bits is not zero", clause="6.1",
                             element="reserved_zero_32bits", offset=8)
    levels.check_profile(h["profile_idc"])
    levels.get_level(h["level_idc"])
    return StreamHeader(h["version_major"], h["version_minor"], h["profile_idc"],
                        h["level_idc"])


def read_unit(data, offset: int, level: levels.Level, trace: list | None = None) -> Unit:
    """Frame one unit at ``offset`` (clause 6.2).  Framing errors are fatal: without a
    trusted unit_size the next unit cannot be found."""
    end = len(data)
    if end - offset < UNIT_HEADER_SIZE:
        raise TKBTruncatedError(f"{end - offset} bytes left, a unit header needs 8",
                                clause="6.2", element="unit_header", offset=offset)
    r = BitReader(data, offset, offset + UNIT_HEADER_SIZE, trace=trace, clause="6.2")
    h = syntax.parse(r, "unit_header")
    size = h["unit_size"]
    levels.check_limit(size, level.max_unit_size, "unit_size", level)
    if end - offset - UNIT_HEADER_SIZE - 4 < size:
        raise TKBTruncatedError(f"unit of {size} payload bytes ends past the stream",
                                clause="6.2", element="unit_size", offset=offset)
    mv = memoryview(data)
    body_end = offset + UNIT_HEADER_SIZE + size
    stored = int.from_bytes(mv[body_end:body_end + 4], "little")
    if trace is not None:
        trace.append(("unit_payload", (offset + UNIT_HEADER_SIZE) * 8, size * 8,
                      f"<{size} bytes>"))
        trace.append(("unit_crc32c", body_end * 8, 32, stored))
    return Unit(offset, h["unit_type"], h["track_id"], h["unit_essential"],
                bytes(mv[offset + UNIT_HEADER_SIZE:body_end]),
                crc32c(mv[offset:body_end]) == stored,
                h["reserved_zero_8bits"] == 0 and h["unit_essential"] in (0, 1))


def iter_units(data, level: levels.Level) -> Iterator[Unit]:
    pos = STREAM_HEADER_SIZE
    while pos < len(data):
        u = read_unit(data, pos, level)
        yield u
        pos += u.size


# -- track parameter sets (clause 6.3) --------------------------------------------

def _tps_checker(level: levels.Level, profile_idc: int, transforms: dict):
    def check(name, v, env):
        def bad(msg, cls=TKBFormatError, clause="6.3"):
            raise cls(msg, clause=clause, element=name)
        if name == "track_kind" and v not in (0, 1):
            bad(f"track_kind {v} is reserved")
        elif name == "coding_mode":
            if v not in CODING_MODES:
                bad(f"coding_mode {v} is reserved")
            if env["track_kind"] == 1 and v != 1:
                bad("ids tracks use coding_mode 1")
            if profile_idc == levels.PROFILE_LOSSLESS and v != 1:
                raise TKBUnsupportedError("the Lossless profile allows coding_mode 1 only",
                                          clause="8.1", element=name)
            if profile_idc != levels.PROFILE_HIGH and v == 2:
                bad("coding_mode 2 (transform) is reserved outside the High profile")
        elif name == "transform_id":
            t = transforms.get(v)
            if t is None:
                bad(f"transform_id {v} names no accepted transform", TKBReferenceError)
            if t.num_channels != env["num_channels"]:
                bad(f"transform {v} has {t.num_channels} channels, the parameter set "
                    f"{env['num_channels']}", TKBReferenceError)
        elif name == "source_dtype":
            ok = (3,) if env["track_kind"] == 1 else (0, 1, 2)
            if v not in ok:
                bad(f"source_dtype {v} not allowed for this track_kind")
        elif name == "output_dtype":
            if env["coding_mode"] == 1 and v != env["source_dtype"]:
                bad("split coding outputs the source dtype")
            if env["coding_mode"] != 1 and v not in (0, 1, 2):
                bad(f"output_dtype {v} not allowed")
        elif name == "num_channels":
            if env["track_kind"] == 1 and v != 1:
                bad("ids tracks have num_channels 1")
            if v < 1:
                bad("num_channels is 0")
            levels.check_limit(v, level.max_channels, name, level)
        elif name == "vocab_size":
            if v < 1:
                bad("vocab_size is 0")
            levels.check_limit(v, level.max_vocab, name, level)
        elif name in ("grid_present", "per_channel_steps") and v not in (0, 1):
            bad(f"{name} must be 0 or 1")
        elif name == "num_prefix_tokens":
            tokens = v + env["grid_height"] * env["grid_width"]
            levels.check_limit(tokens, level.max_tokens, "num_tokens", level)
            levels.check_limit(tokens * env["num_channels"], level.max_values,
                               "num_tokens * num_channels", level)
        elif name == "max_tokens":
            levels.check_limit(v, level.max_tokens, name, level)
        elif name == "predictor":
            if v not in prediction.PREDICTORS:
                bad(f"predictor {v} is reserved")
            if v == 2 and not env["grid_present"]:
                bad("predictor 2 (up) needs a grid")
        elif name == "raw_bits":
            width = reconstruction.DTYPE_BITS[env["source_dtype"]]
            if v >= width:
                bad(f"raw_bits {v} >= {width}")
        elif name == "num_lanes":
            if v < 1:
                bad("num_lanes is 0")
            levels.check_limit(v, level.max_lanes, name, level)
        elif name == "lane_steps":
            if v < 1:
                bad("lane_steps is 0")
            levels.check_limit(v, level.max_lane_steps, name, level)
            levels.check_limit(v * env["num_lanes"], level.max_chunk, "chunk_size", level)
        elif name == "prob_bits" and not 1 <= v <= tables.MAX_PROB_BITS:
            bad(f"prob_bits {v} not in 1..{tables.MAX_PROB_BITS}", clause="6.3.5")
        elif name == "num_tables":
            if v < 1:
                bad("num_tables is 0", clause="6.3.5")
            levels.check_limit(v, level.max_tables, name, level)
        elif name == "table_map" and v.size and int(v.max()) >= env["num_tables"]:
            bad("table_map names a table beyond num_tables", clause="6.3.5")
        elif name == "alphabet_size":
            if v == 0:
                raise TKBTableError("alphabet_size is 0", clause="6.3.5", element=name)
            levels.check_limit(v, level.max_alphabet, name, level)
            if env.get("coding_mode") == 1:
                width = (reconstruction.DTYPE_BITS[env["source_dtype"]] - env["raw_bits"]
                         + (1 if env.get("predictor") else 0))
                if width < 16 and v > 1 << width:
                    bad(f"alphabet_size {v} exceeds 2^{width} symbols of a split value",
                        clause="6.3.5")
        elif name == "freq_k" and v > 15:
            bad(f"freq_k {v} > 15", clause="6.3.5")
    return check


def parse_tps(payload: bytes, level: levels.Level, profile_idc: int,
              trace: list | None = None, transforms: dict | None = None) -> dict:
    """Parse and validate a track parameter set; adds derived fields (clause 6.3).
    ``transforms``: the accepted transforms by transform_id (clause 6.7)."""
    transforms = transforms or {}
    r = BitReader(payload, trace=trace, clause="6.3")
    r.pos = 0
    values = syntax.parse(r, "track_parameter_set", {"transforms": transforms},
                          check=_tps_checker(level, profile_idc, transforms))
    _check_consumed(r, "track_parameter_set")
    tps = dict(values)
    tps["transform"] = transforms.get(tps.get("transform_id"))
    tps["num_coded"] = (tps["transform"].num_coeffs if tps["coding_mode"] == 2
                        else tps["num_channels"])
    tps["tables"] = [tables.validate_table(t["freq"], tps["prob_bits"], i)
                     for i, t in enumerate(tps["freq_table"])]
    tps["chunk_size"] = tps["num_lanes"] * tps["lane_steps"]
    if tps["grid_present"]:
        tps["max_tokens"] = tps["num_prefix_tokens"] + tps["grid_height"] * tps["grid_width"]
    else:
        tps["num_prefix_tokens"] = 0
    tmap = tps.get("table_map")
    tps["channel_table"] = (np.zeros(tps["num_coded"], dtype=np.int64) if tmap is None
                            else tmap.astype(np.int64))
    alph = np.array([t.size for t in tps["tables"]], dtype=np.int64)
    tps["channel_esc"] = alph[tps["channel_table"]] - 1
    tps["payload"] = payload
    tps["profile_idc"] = profile_idc     # the frame syntax depends on it (merge map, 6.4)
    return tps


def _check_consumed(r: BitReader, what: str) -> None:
    if r.remaining_bits():
        raise TKBFormatError(f"{r.remaining_bytes()} bytes left over after the {what}",
                             clause="6.2", element="unit_payload", offset=r.byte_pos)


# -- frames (clauses 6.4, 7) -----------------------------------------------------

def _frame_checker(tps: dict, level: levels.Level):
    # presence_present 2 (a merge map) exists in High streams only; elsewhere it is
    # a TKBFormatError as in version 1.0 (clause 6.4)
    presence_values = ((0, 1, PRESENCE_WITH_MERGE_MAP)
                       if tps.get("profile_idc") == levels.PROFILE_HIGH else (0, 1))

    def check(name, v, env):
        if name == "random_access" and v == 0:
            raise TKBUnsupportedError("random_access 0 (inter-frame prediction) is not "
                                      "part of version 1", clause="6.4", element=name)
        elif name == "random_access" and v != 1:
            raise TKBFormatError(f"random_access {v} is not 0 or 1", clause="6.4", element=name)
        elif name == "num_tokens":
            if tps["grid_present"] and v != tps["max_tokens"]:
                raise TKBFormatError(f"num_tokens {v} != num_prefix_tokens + grid size "
                                     f"{tps['max_tokens']}", clause="6.4", element=name)
            if v > tps["max_tokens"]:
                raise TKBFormatError(f"num_tokens {v} > max_tokens {tps['max_tokens']}",
                                     clause="6.4", element=name)
            # num_coded <= num_channels: this bounds the coded values too (clause 6.7)
            levels.check_limit(v * tps["num_channels"], level.max_values,
                               "num_tokens * num_channels", level)
        elif name == "presence_present" and v not in presence_values:
            raise TKBFormatError(f"presence_present {v} is not one of "
                                 f"{', '.join(map(str, presence_values))}", clause="6.4",
                                 element=name)
        elif name == "token_scale_present" and v not in (0, 1):
            raise TKBFormatError(f"{name} must be 0 or 1", clause="6.4", element=name)
        elif name == "escape_bits" and v > symbols.MAX_ESCAPE_BITS:
            raise TKBFormatError(f"escape_bits {v} > {symbols.MAX_ESCAPE_BITS}",
                                 clause="6.4", element=name)
        elif name == "num_escapes" and v > env["num_symbols"]:
            raise TKBFormatError(f"num_escapes {v} > num_symbols {env['num_symbols']}",
                                 clause="6.4", element=name)
    return check


def parse_frame(payload: bytes, tps: dict, level: levels.Level,
                trace: list | None = None) -> dict:
    """Parse a frame unit's payload against its parameter set (clause 6.4)."""
    r = BitReader(payload, trace=trace, clause="6.4")
    ctx = {k: tps[k] for k in ("coding_mode", "num_channels", "num_coded", "chunk_size")}

    def presence(reader, env):
        return read_presence_map(reader, tps, env["num_tokens"])

    def merge_map(reader, env):
        return read_merge_map(reader, env["num_tokens"], env["num_kept"])

    def rans_data(reader, env):
        total = int(np.sum(env["chunk_words"], dtype=np.int64))
        return reader.words16(total, "rans_data")

    def escape_data(reader, env):
        v = reader.packed(env["num_escapes"], env["escape_bits"], "escape_data")
        reader.align_zero()
        return v

    def raw_data(reader, env):
        v = reader.packed(env["num_symbols"], tps["raw_bits"], "raw_data")
        reader.align_zero()
        return v

    parsers = {"presence_map": presence, "merge_map": merge_map, "rans_data": rans_data,
               "escape_data": escape_data, "raw_data": raw_data}
    values = dict(syntax.parse(r, "frame", ctx, parsers, check=_frame_checker(tps, level)))
    _check_consumed(r, "frame")
    values["positions"] = (values["presence_map"] if values["presence_present"]
                           else np.arange(values["num_tokens"], dtype=np.uint32))
    values["num_kept"] = int(values["positions"].size)     # derived variable, clause 7.1
    values["stand_ins"] = values.get("merge_map")           # clause 7.8 (None: no map)
    return values


def decode_frame_values(fr: dict, tps: dict, lookup=None) -> np.ndarray:
    """Clauses 7.3 - 7.6: the frame's output values (``lookup``: the parameter set's
    slot tables, built here when not given)."""
    if lookup is None:
        lookup = tables.decode_lookup(tps["tables"], tps["prob_bits"])
    k, d = fr["num_kept"], tps["num_coded"]   # coded values per token (clause 7.1)
    n = k * d
    base = tps["channel_table"] << tps["prob_bits"] if tps["num_tables"] > 1 else None
    sym = rans.decode(fr["rans_data"], fr["chunk_words"], n, tps["num_lanes"],
                      tps["lane_steps"], lookup, tps["prob_bits"], base, d)
    if tps["coding_mode"] == 1:  # split (lossless) tracks, 7.4.2
        bits = symbols.split_values(sym, fr["raw_data"], tps["raw_bits"])
        if tps.get("predictor"):
            width = reconstruction.DTYPE_BITS[tps["source_dtype"]]
            u = bits.astype(np.int64).reshape(k, d)
            m = prediction.reconstruct_levels((u >> 1) ^ -(u & 1), fr["positions"], tps)
            half = 1 << (width - 1)
            if m.size and (int(m.min()) < -half or int(m.max()) >= half):
                raise TKBValueError("a predicted value lies outside the range of its dtype",
                                    clause="7.4.2", element="rans_data")
            bits = symbols.ordered_to_bits(m, width).ravel()
        if tps["track_kind"] == 1:
            if n and int(bits.max()) >= tps["vocab_size"]:
                raise TKBValueError(f"token id {int(bits.max())} >= vocab_size "
                                    f"{tps['vocab_size']}", clause="7.4.2", element="raw_data")
            return bits.astype(np.uint32)
        return reconstruction.bits_to_output(bits, tps["source_dtype"]).reshape(k, d)
    res = symbols.residuals(sym.reshape(k, d), tps["channel_esc"], fr["escape_data"])
    lv = prediction.reconstruct_levels(res, fr["positions"], tps)
    if lv.size and int(np.abs(lv).max()) > reconstruction.MAX_LEVEL:
        raise TKBValueError("a quantization level exceeds 2^24 - 1 in magnitude",
                            clause="7.5", element="rans_data")
    codes = np.asarray(tps["step_code"], dtype=np.int64)[None, :] + fr["frame_step_delta"]
    if fr["token_scale_present"]:
        codes = codes + fr["token_step_delta"].astype(np.int64)[:, None]
    if k and (int(codes.min()) < 0 or int(codes.max()) > 255):
        raise TKBValueError("a step code is outside 0..255", clause="7.6.1",
                            element="token_step_delta" if fr["token_scale_present"]
                            else "frame_step_delta")
    codes = np.broadcast_to(codes, (k, d))
    if tps["coding_mode"] == 2:   # channels from the coefficients, 7.6.3
        v32 = transforms_.reconstruct(lv, codes, tps["transform"])
    else:
        v32 = reconstruction.dequantize(lv, codes)
    return reconstruction.to_output(v32, tps["output_dtype"])


# -- metadata and index (clauses 6.5, 6.6) ----------------------------------------

def parse_metadata(payload: bytes, trace: list | None = None) -> dict:
    r = BitReader(payload, trace=trace, clause="6.5")
    m = syntax.parse(r, "metadata")
    _check_consumed(r, "metadata")
    out = {}
    for e in m["metadata_entry"]:
        try:
            key, value = e["key"].decode("utf-8"), e["value"].decode("utf-8")
        except UnicodeDecodeError:
            raise TKBFormatError("metadata key or value is not UTF-8", clause="6.5",
                                 element="metadata_entry") from None
        if key in out:
            raise TKBFormatError(f"duplicate metadata key {key!r}", clause="6.5", element="key")
        if not key:
            raise TKBFormatError("empty metadata key", clause="6.5", element="key")
        out[key] = value
    return out


def parse_index(payload: bytes, trace: list | None = None) -> list:
    r = BitReader(payload, trace=trace, clause="6.6")
    m = syntax.parse(r, "index")
    _check_consumed(r, "index")
    return [(e["frame_number"], e["unit_offset"]) for e in m["index_entry"]]


# -- the decoder ---------------------------------------------------------------

class Decoder:
    """Decodes units one at a time (streaming), keeping the active parameter sets.

    ``strict``: raise on the first error.  Otherwise errors confined to one
    unit (bad CRC, bad payload, missing parameter set) are recorded in
    ``stream.errors`` and that unit is skipped (clause 9.10); framing errors
    still raise since the next unit cannot be found.
    """

    def __init__(self, header: StreamHeader, strict: bool = True, keep: bool = True,
                 transforms=None):
        self.level = levels.get_level(header.level_idc)
        self.stream = DecodedStream(header)
        self.strict = strict
        # the application's transforms by SHA-256 digest (clause 6.7)
        self.supplied = transforms_.supplied_transforms(transforms)
        self._transform_payloads: dict = {}
        self.keep = keep   # False: frames and units are handed on, not kept (streaming)
        self._lookups: dict = {}

    def add_unit(self, u: Unit) -> Frame | None:
        try:
            try:
                frame = self._unit(u)
            except TKBError as e:
                # errors of the unit's payload come with positions inside the payload
                # (clause 9.0); errors about the unit as a whole come without one
                raise (e.relocate(u.offset + UNIT_HEADER_SIZE) if e.offset is not None
                       else e.relocate(u.offset))
            if self.keep:
                self.stream.units.append((u, "ok"))
            return frame
        except TKBError as e:
            if self.keep:
                self.stream.units.append((u, f"error: {e}"))
            if self.strict:
                raise
            self.stream.errors.append(e)
            return None

    def _unit(self, u: Unit) -> Frame | None:
        name = UNIT_TYPES.get(u.unit_type, f"unit_type {u.unit_type}")
        if not u.crc_ok:
            raise TKBCRCError(f"{name} unit crc32c mismatch", clause="6.2",
                              element="unit_crc32c")
        if not u.reserved_ok:
            raise TKBFormatError("reserved_zero_8bits or unit_essential out of range",
                                 clause="6.2", element="unit_header")
        high = self.stream.header.profile_idc == levels.PROFILE_HIGH
        if u.unit_type not in UNIT_TYPES or (u.unit_type == UNIT_TRANSFORM and not high):
            # transform units are reserved outside the High profile, as in version 1.0
            if u.unit_type == 0 or u.unit_essential:
                raise TKBUnsupportedError(f"essential unit_type {u.unit_type} is unknown",
                                          clause="6.2", element="unit_type")
            return None  # skippable unknown unit (clause 6.2)
        if u.unit_type not in STREAM_UNITS and u.track_id == STREAM_TRACK:
            raise TKBFormatError("track_id 255 is for stream-level metadata and transforms "
                                 "only", clause="6.2", element="track_id")
        if u.unit_type == UNIT_TRANSFORM and u.track_id != STREAM_TRACK:
            raise TKBFormatError("a transform unit has track_id 255", clause="6.2",
                                 element="track_id")
        if u.unit_type == UNIT_TRANSFORM:
            self._transform(u)
        elif u.unit_type == UNIT_TPS:
            self._tps(u)
        elif u.unit_type == UNIT_FRAME:
            return self._frame(u)
        elif u.unit_type == UNIT_METADATA:
            self.stream.metadata.setdefault(u.track_id, {}).update(parse_metadata(u.payload))
        else:
            self.stream.index.setdefault(u.track_id, []).extend(parse_index(u.payload))
        return None

    def _transform(self, u: Unit) -> None:
        """Clause 6.7.1: a transform unit (High profile)."""
        tid, t = transforms_.parse_transform_unit(u.payload, self.level, self.supplied)
        old = self._transform_payloads.get(tid)
        if old is not None:
            if old != u.payload:
                raise TKBReferenceError(f"transform_id {tid} repeated with different content",
                                        clause="6.7", element="transform_id")
            return
        self._transform_payloads[tid] = u.payload
        self.stream.transforms[tid] = t

    def _tps(self, u: Unit) -> None:
        tps = parse_tps(u.payload, self.level, self.stream.header.profile_idc,
                        transforms=self.stream.transforms)
        track = self.stream.tracks.get(u.track_id)
        if track is None:
            levels.check_limit(len(self.stream.tracks) + 1, self.level.max_tracks,
                               "number of tracks", self.level)
            track = self.stream.tracks[u.track_id] = {}
        old = track.get(tps["tps_id"])
        if old is not None:
            if old["payload"] != u.payload:
                raise TKBReferenceError(f"tps_id {tps['tps_id']} of track {u.track_id} "
                                        "repeated with different content", clause="6.3",
                                        element="tps_id")
            return
        for other in track.values():
            for k in ("track_kind", "num_channels", "output_dtype"):
                if other[k] != tps[k]:
                    raise TKBReferenceError(f"parameter sets of track {u.track_id} disagree "
                                            f"on {k}", clause="6.3", element=k)
        track[tps["tps_id"]] = tps

    def _lookup(self, track_id: int, tps: dict):
        """Slot tables of a parameter set, built when a frame first needs them and kept
        for the LOOKUP_CACHE most recently used parameter sets (memory stays bounded
        however many parameter sets a stream defines)."""
        key = (track_id, tps["tps_id"])
        lut = self._lookups.pop(key, None)
        if lut is None:
            lut = tables.decode_lookup(tps["tables"], tps["prob_bits"])
        self._lookups[key] = lut
        while len(self._lookups) > LOOKUP_CACHE:
            self._lookups.pop(next(iter(self._lookups)))
        return lut

    def _frame(self, u: Unit) -> Frame:
        if not u.payload:
            raise TKBTruncatedError("empty frame unit", clause="6.4", element="tps_id")
        tps_id = u.payload[0]
        tps = self.stream.tracks.get(u.track_id, {}).get(tps_id)
        if tps is None:
            raise TKBReferenceError(f"frame refers to tps_id {tps_id} of track {u.track_id}, "
                                    "which has not been received", clause="6.4",
                                    element="tps_id")
        fr = parse_frame(u.payload, tps, self.level)
        values = decode_frame_values(fr, tps, self._lookup(u.track_id, tps))
        frame = Frame(u.track_id, fr["frame_number"], fr["num_tokens"], fr["positions"],
                      values, reconstruction.DTYPES[tps["output_dtype"]], tps_id, u.offset,
                      fr["stand_ins"])
        if self.keep:
            self.stream.frames.append(frame)
        return frame

    def finish(self) -> None:
        """The end of the units: a decoder that defers frame work completes it here."""

    def check_index(self) -> None:
        """Clause 6.6: every index entry points at a frame unit of its track."""
        frames = {(f.track_id, f.offset): f.frame_number for f in self.stream.frames}
        units = {u.offset: u for u, _ in self.stream.units}
        for track, entries in self.stream.index.items():
            for number, off in entries:
                u = units.get(off)
                ok = u is not None and u.unit_type == UNIT_FRAME and u.track_id == track
                if ok and (track, off) in frames:
                    ok = frames[(track, off)] == number
                if not ok:
                    err = TKBFormatError(f"index entry (frame {number}, offset {off}) of track "
                                         f"{track} does not point at that frame unit",
                                         clause="6.6", element="unit_offset")
                    if self.strict:
                        raise err
                    self.stream.errors.append(err)


def decode(data, strict: bool = True, progress=None, decoder=None,
           transforms=None) -> DecodedStream:
    """Decode a whole stream held in memory (bytes-like).  ``progress(nbytes)`` is
    called after each unit with its size.  ``decoder(header)``: makes the Decoder
    (a subclass that defers frame work, such as the GPU one); default Decoder.
    ``transforms``: the transforms the stream may name by digest (clause 6.7)."""
    header = parse_stream_header(data)
    dec = (decoder(header) if decoder is not None
           else Decoder(header, strict, transforms=transforms))
    try:
        for u in iter_units(data, dec.level):
            dec.add_unit(u)
            if progress:
                progress(u.size)
    except TKBError as e:
        # a framing error: the next unit cannot be found (clause 9.10)
        if strict:
            raise
        dec.finish()
        dec.stream.errors.append(e)
        dec.stream.framing_error = e
        return dec.stream
    dec.finish()
    dec.check_index()
    return dec.stream


def parsed_frames(data, transforms=None) -> Iterator[tuple]:
    """(unit, active parameter set, parsed frame) of each frame unit of a valid stream in
    memory, in stream order, without decoding the values (for tools: size reports,
    benchmarks).  Raises the first TKBError like a strict decode."""
    header = parse_stream_header(data)
    dec = Decoder(header, strict=True, keep=False, transforms=transforms)
    for u in iter_units(data, dec.level):
        if u.unit_type != UNIT_FRAME:
            dec.add_unit(u)
            continue
        tps = dec.stream.tracks.get(u.track_id, {}).get(u.payload[0] if u.payload else None)
        if tps is None:
            dec.add_unit(u)       # raises the reference's error for this frame
        yield u, tps, parse_frame(u.payload, tps, dec.level)


def iter_frames(f: BinaryIO, strict: bool = True, errors: list | None = None,
                transforms=None, dense: bool = False) -> Iterator[Frame]:
    """Streaming decode from a binary file object: yields frames as their units arrive.
    Non-strict: the errors of skipped units are appended to ``errors``, and a framing
    error (the next unit cannot be found) ends the iteration after being appended.
    ``dense``: frames as clause 7.8's dense frames (:func:`densify`)."""
    head = f.read(STREAM_HEADER_SIZE)
    header = parse_stream_header(head)
    dec = Decoder(header, strict, keep=False, transforms=transforms)
    dec.stream.errors = errors if errors is not None else []
    try:
        for frame in _iter_units_from_file(f, dec):
            yield densify(frame) if dense else frame
    except TKBError as e:
        if strict:
            raise
        dec.stream.errors.append(e)


def _iter_units_from_file(f: BinaryIO, dec: Decoder) -> Iterator[Frame]:
    offset = STREAM_HEADER_SIZE
    while True:
        uh = f.read(UNIT_HEADER_SIZE)
        if not uh:
            return
        if len(uh) < UNIT_HEADER_SIZE:
            raise TKBTruncatedError("stream ends inside a unit header", clause="6.2",
                                    element="unit_header", offset=offset)
        size = int.from_bytes(uh[:4], "little")
        levels.check_limit(size, dec.level.max_unit_size, "unit_size", dec.level)
        body = f.read(size + 4)
        buf = uh + body
        # reuse the in-memory framing on this one unit (offset 0 of buf)
        try:
            u = replace(read_unit(buf, 0, dec.level), offset=offset)
        except TKBError as e:
            raise e.relocate(offset)
        frame = dec.add_unit(u)
        if frame is not None:
            yield frame
        offset += len(buf)
