"""Generation of the conformance suite (spec clause 11): ``tkb conformance reference``.

Every stream is declared here: positive streams from encoder configurations on
deterministic synthetic inputs (integer hashing, no random generator whose
stream could change between numpy versions), boundary streams written from
explicit syntax values, and negative streams that each break one rule of
clause 9 of an otherwise valid stream.  Each declaration names its expected
outcome (no error; or the error class and clause); generation fails when the
reference decoder disagrees, so the expectations are checked, not copied.

The expected results recorded in ``manifest.json`` are those of the reference
decoder in resilient mode (clause 9.10): the canonical digest (clause 10.2) and
the errors in order.  ``--check`` regenerates into a temporary directory and
fails when the committed suite differs (the CI staleness check).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tokenbits import canonical, decoder, encoder, errors, levels, prediction, rans, \
    reconstruction, symbols, syntax, tables, tracing
from tokenbits import transform as tr
from tokenbits import tkbt
from tokenbits.bitio import BitWriter
from tokenbits.crc32c import crc32c
from tokenbits.merge_map import stand_in_bits, write_merge_map
from tokenbits.presence import write_presence_map

from . import MANIFEST_FORMAT, SUITE_DIR

SPEC_DIR = SUITE_DIR.parent / "spec"
TRACE_LINES = 400          # longer traces are cut (the stream itself is the reference)
VALUES_KEPT = 64           # distinct values of an element recorded per stream

# -- deterministic inputs ---------------------------------------------------------


def uniform(seed: int, shape) -> np.ndarray:
    """float64 in [0, 1): splitmix64 of (seed, index), exact on every platform."""
    n = int(np.prod(shape))
    with np.errstate(over="ignore"):
        z = (np.arange(n, dtype=np.uint64) + np.uint64(seed << 32)) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(11)).astype(np.float64) / float(1 << 53)).reshape(shape)


def normal(seed: int, shape) -> np.ndarray:
    """Roughly normal: the centred sum of four uniforms, scaled to unit variance."""
    u = uniform(seed, (4,) + tuple(shape))
    return (u[0] + u[1] + u[2] + u[3] - 2.0) * np.sqrt(3.0)


def embeddings(seed: int, frames: int, tokens: int, channels: int, dtype: str = "float16",
               smooth: float = 0.6) -> np.ndarray:
    """Token embeddings [F, N, D] with per-channel scales and neighbour correlation
    (so that prediction pays).  bfloat16 comes as uint16 bit patterns."""
    g = normal(seed, (frames, tokens, channels))
    scale = 0.25 + uniform(seed + 1, (channels,)) * 1.5
    x = np.empty_like(g)
    x[:, 0] = g[:, 0]
    for t in range(1, tokens):
        x[:, t] = smooth * x[:, t - 1] + (1.0 - smooth) * g[:, t]
    x = (x * scale).astype(np.float32)
    if dtype == "bfloat16":
        return (x.view(np.uint32) >> np.uint32(16)).astype(np.uint16)
    return x.astype(dtype)


def token_ids(seed: int, frames: int, tokens: int, vocab: int) -> np.ndarray:
    """Token ids [F, N] in 0 .. vocab - 1, skewed towards small ids (as real vocabularies)."""
    u = uniform(seed, (frames, tokens))
    return np.minimum((u * u * vocab).astype(np.int64), vocab - 1).astype(np.uint32)


# -- taking streams apart ---------------------------------------------------------

@dataclass
class Unit:
    unit_type: int
    track_id: int
    essential: int
    payload: bytes

    def bytes(self) -> bytes:
        return encoder.unit(self.unit_type, self.track_id, self.payload, self.essential)


def split(data: bytes) -> tuple[bytes, list]:
    """(stream header, units) of a well-framed stream."""
    lv = levels.LEVELS[30]
    return data[:16], [Unit(u.unit_type, u.track_id, u.unit_essential, u.payload)
                       for u in decoder.iter_units(data, lv)]


def join(head: bytes, units: list) -> bytes:
    return head + b"".join(u.bytes() for u in units)


def header(profile: int = 2, level: int = 10, major: int = 1, minor: int = 0,
           reserved: int = 0, magic: int = syntax.MAGIC, crc: int | None = None) -> bytes:
    w = BitWriter()
    syntax.write(w, "stream_header", dict(magic=magic, version_major=major,
                                          version_minor=minor, profile_idc=profile,
                                          level_idc=level, reserved_zero_32bits=reserved,
                                          header_crc32c=0))
    b = w.getvalue()[:12]
    return b + (crc32c(b) if crc is None else crc).to_bytes(4, "little")


def unit_offsets(data: bytes) -> list:
    """Byte offset of every unit of a well-framed stream."""
    offs, pos = [], 16
    for u in decoder.iter_units(data, levels.LEVELS[30]):
        offs.append(pos)
        pos += u.size
    return offs


def find(data: bytes, name: str, unit: int | None = None, nth: int = 0) -> tracing.Element:
    """The ``nth`` element called ``name`` (full name or clause-5 name) in ``unit``
    (None: anywhere; -1: the stream header)."""
    hits = [e for e in tracing.walk(data) if isinstance(e, tracing.Element)
            and name in (e.name, e.leaf)
            and (unit is None or (unit == -1 and e.unit is None) or e.unit == unit)]
    if len(hits) <= nth:
        raise LookupError(f"no element {name!r} #{nth} in unit {unit}")
    return hits[nth]


def refresh_crc(data: bytearray, unit: int | None) -> None:
    """Recompute the CRC of the stream header (unit None) or of a unit."""
    if unit is None:
        data[12:16] = crc32c(bytes(data[:12])).to_bytes(4, "little")
        return
    off = unit_offsets(bytes(data))[unit]
    size = int.from_bytes(data[off:off + 4], "little")
    end = off + 8 + size
    data[end:end + 4] = crc32c(bytes(data[off:end])).to_bytes(4, "little")


def poke(data: bytes, name: str, value: int, unit: int | None = None, nth: int = 0,
         fix_crc: bool = True, index: int = 0) -> bytes:
    """``data`` with one element set to ``value`` (entry ``index`` of an array
    element), CRC recomputed.  Byte-aligned whole-byte elements are little-endian
    integers (clause 3.3); others are bit strings, most significant bit first."""
    return poke_element(data, find(data, name, unit, nth), value, fix_crc, index)


def poke_element(data: bytes, e: tracing.Element, value: int, fix_crc: bool = True,
                 index: int = 0) -> bytes:
    """:func:`poke` of an element already found in ``data``'s trace."""
    b = bytearray(data)
    if e.bit_offset % 8 == 0 and e.bit_length % 8 == 0 and not e.leaf.endswith("_present") \
            and e.leaf not in ("freq", "alignment_zero_bits"):
        count = np.asarray(e.value).size if isinstance(e.value, np.ndarray) else 1
        width = e.bit_length // 8 // count
        start = e.bit_offset // 8 + index * width
        signed = value < 0
        b[start:start + width] = int(value).to_bytes(width, "little", signed=signed)
    else:
        for i in range(e.bit_length):
            bit = (value >> (e.bit_length - 1 - i)) & 1
            pos = e.bit_offset + i
            b[pos // 8] = (b[pos // 8] & ~(0x80 >> (pos % 8))) | (bit << (7 - pos % 8))
    if fix_crc:
        refresh_crc(b, e.unit)
    return bytes(b)


def units_of(data: bytes, unit_type: int) -> list:
    return [i for i, u in enumerate(split(data)[1]) if u.unit_type == unit_type]


def with_payload(data: bytes, i: int, fn) -> bytes:
    """``data`` with unit ``i``'s payload replaced by ``fn(payload)`` (CRC recomputed)."""
    head, units = split(data)
    units[i].payload = fn(units[i].payload)
    return join(head, units)


def tps_values(payload: bytes) -> dict:
    """A parameter set's syntax values as a mutable dict."""
    t = decoder.parse_tps(payload, levels.LEVELS[30], 2)
    v = {e.name: t[e.name] for e in syntax.SYNTAX["track_parameter_set"] if e.name in t}
    v["freq_table"] = [dict(ft) for ft in t["freq_table"]]
    return v


def tps_payload(values: dict) -> bytes:
    w = BitWriter()
    syntax.write(w, "track_parameter_set", values)
    return w.getvalue()


def frame_values(data: bytes, i: int) -> tuple[dict, dict]:
    """(parameter set, syntax values) of frame unit ``i`` (its parameter set must
    precede it in the same track)."""
    head, units = split(data)
    u = units[i]
    profile = head[6]          # the frame syntax depends on it (merge map, clause 6.4)
    tps = next(decoder.parse_tps(t.payload, levels.LEVELS[30], profile) for t in units[:i]
               if t.unit_type == decoder.UNIT_TPS and t.track_id == u.track_id
               and t.payload[0] == u.payload[0])
    return tps, dict(decoder.parse_frame(u.payload, tps, levels.LEVELS[30]))


def frame_payload(tps: dict, v: dict) -> bytes:
    """Write a frame payload from syntax values (the mirror of ``decoder.parse_frame``)."""
    pos = np.asarray(v["positions"], dtype=np.uint32)
    vals = dict(v, num_kept=int(pos.size), num_chunks=len(v["chunk_words"]))
    w = BitWriter()

    def presence(wr, env):
        write_presence_map(wr, tps, v["num_tokens"], pos)

    def escape_data(wr, env):
        wr.packed(v["escape_data"], v["escape_bits"])
        wr.align_zero()

    def raw_data(wr, env):
        wr.packed(v["raw_data"], tps["raw_bits"])
        wr.align_zero()

    def merge_map(wr, env):
        # ``merge_pad``: the value of its alignment bits (0 in a valid stream)
        n, stand = stand_in_bits(pos.size), np.asarray(v["stand_ins"], dtype=np.uint64)
        wr.packed(stand, n)
        pad = (-(stand.size * n)) % 8
        if pad and v.get("merge_pad"):
            wr.bits(pad, v["merge_pad"])
        else:
            write_merge_map(wr, pos.size, [])

    syntax.write(w, "frame", vals, dict(coding_mode=tps["coding_mode"]),
                 dict(presence_map=presence, rans_data=lambda wr, env: wr.array(
                     "u16", v["rans_data"]), escape_data=escape_data, raw_data=raw_data,
                      merge_map=merge_map))
    return w.getvalue()


def rewrite_frame(data: bytes, i: int, **changes) -> bytes:
    tps, v = frame_values(data, i)
    v.update(changes)
    return with_payload(data, i, lambda p: frame_payload(tps, v))


# -- writing tracks from explicit values --------------------------------------------

def code_symbols(tps: dict, sym: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """rANS words and chunk_words of symbols [K, D] under the parameter set's tables
    (clause 7.3.3)."""
    k, d = sym.shape
    ts = [np.asarray(t["freq"], dtype=np.int64) for t in tps["freq_table"]]
    alph = max(t.size for t in ts)
    freq_all, cum_all = tables.encode_arrays(ts, alph)
    tmap = np.asarray(tps.get("table_map", np.zeros(d)), dtype=np.int64)
    flat = np.tile(tmap * alph, k) + sym.ravel()
    return rans.encode(sym.ravel(), freq_all.ravel()[flat], cum_all.ravel()[flat],
                       tps["num_lanes"], tps["lane_steps"], tps["prob_bits"])


def fit_tables(tps: dict, syms: list, alphabet: int, pseudo: bool = True) -> None:
    """Frequency tables (one per table of ``table_map``) fitted on symbols [K, D]."""
    d = tps.get("num_coded", tps["num_channels"])
    tmap = np.asarray(tps.get("table_map", np.zeros(d)), dtype=np.int64)
    nt = tps["num_tables"]
    counts = np.zeros((nt, alphabet), dtype=np.int64)
    for s in syms:
        for c in range(d):
            np.add.at(counts[tmap[c]], s[:, c], 1)
    if pseudo:
        counts += 1
    tps["freq_table"] = []
    for t in range(nt):
        f = tables.normalize(counts[t], tps["prob_bits"])
        tps["freq_table"].append(dict(alphabet_size=alphabet, freq_k=tables.best_freq_k(f),
                                      freq=[int(x) for x in f]))


def quantized_track(levels_: list, *, step_code, predictor: int = 0, alphabet: int = 16,
                    output_dtype: int = 1, grid=None, prefix: int = 0, num_lanes: int = 1,
                    lane_steps: int = 64, prob_bits: int = 12, num_tables: int = 1,
                    frame_step_delta: int = 0, token_step_delta=None, positions=None,
                    escape_bits=None, max_tokens=None, tps_id: int = 0,
                    transform=None, transform_id: int = 0, merge_maps=None,
                    num_tokens=None) -> tuple:
    """(parameter set payload, frame payloads) of a quantized track written from
    explicit levels [K, D] per frame (clauses 6.3, 6.4, 7.4.1, 7.5 in reverse); with a
    ``transform``, levels [K, num_coeffs] of its coefficients (coding_mode 2, 6.7).
    ``merge_maps``: per frame, its stand-ins (presence_present 2, clause 7.8), None
    (no merge map) or "full" (no presence map); ``num_tokens``: per frame, without grid."""
    k0, d = levels_[0].shape
    step_code = np.atleast_1d(np.asarray(step_code, dtype=np.uint8))
    t = dict(tps_id=tps_id, track_kind=0, coding_mode=0, source_dtype=output_dtype,
             output_dtype=output_dtype, num_channels=d, num_coded=d, predictor=predictor,
             per_channel_steps=int(step_code.size > 1), step_code=step_code,
             num_lanes=num_lanes, lane_steps=lane_steps, prob_bits=prob_bits,
             num_tables=num_tables)
    if grid:
        t.update(grid_present=1, grid_height=grid[0], grid_width=grid[1],
                 num_prefix_tokens=prefix)
    else:
        t.update(grid_present=0, max_tokens=max_tokens or max(lv.shape[0] for lv in levels_))
    if transform is not None:
        t.update(coding_mode=2, transform_id=transform_id, num_channels=transform.num_channels)
    if num_tables > 1:
        t["table_map"] = (np.arange(d) % num_tables).astype(np.uint8)
    n_tokens = t.get("max_tokens") if not grid else prefix + grid[0] * grid[1]
    ctx = dict(t, max_tokens=n_tokens, num_prefix_tokens=prefix,
               grid_height=grid[0] if grid else 0, grid_width=grid[1] if grid else 0)
    frames = []
    for i, lv in enumerate(levels_):
        pos = (np.arange(lv.shape[0], dtype=np.uint32) if positions is None
               else np.asarray(positions[i], dtype=np.uint32))
        u = symbols.zigzag(prediction.residuals_from_levels(lv.astype(np.int64), pos, ctx))
        esc = alphabet - 1
        is_esc = u >= esc
        frames.append((pos, np.where(is_esc, esc, u), (u - esc)[is_esc]))
    fit_tables(t, [s for _, s, _ in frames], alphabet)
    payloads = []
    for i, (pos, sym, escv) in enumerate(frames):
        words, cw = code_symbols(t, sym)
        ebits = escape_bits if escape_bits is not None else (
            int(escv.max()).bit_length() if escv.size else 0)
        n = n_tokens if grid else levels_[i].shape[0] if positions is None else n_tokens
        if num_tokens is not None:
            n = num_tokens[i]
        tdel = token_step_delta[i] if token_step_delta is not None else None
        mm = merge_maps[i] if merge_maps is not None else None
        presence = 0 if positions is None or (isinstance(mm, str) and mm == "full") else (
            1 if mm is None else 2)
        payloads.append(frame_payload(t, dict(
            tps_id=tps_id, random_access=1, frame_number=i, num_tokens=n,
            presence_present=presence, positions=pos, stand_ins=mm,
            frame_step_delta=frame_step_delta, token_scale_present=int(tdel is not None),
            token_step_delta=None if tdel is None else np.asarray(tdel, dtype=np.int8),
            escape_bits=ebits, num_escapes=int(escv.size), chunk_words=cw,
            rans_data=words, escape_data=escv)))
    return tps_payload(t), payloads


def split_track(values: list, *, source_dtype: int, raw_bits: int, predictor: int = 0,
                num_lanes: int = 1, lane_steps: int = 64, prob_bits: int = 12,
                vocab_size: int | None = None, tps_id: int = 0) -> tuple:
    """(parameter set payload, frame payloads) of a split track written from explicit
    bit patterns [K, D] (uint) per frame, without grid (clause 7.4.2 in reverse)."""
    ids = source_dtype == 3
    k0, d = values[0].shape
    width = reconstruction.DTYPE_BITS[source_dtype]
    t = dict(tps_id=tps_id, track_kind=int(ids), coding_mode=1, source_dtype=source_dtype,
             output_dtype=source_dtype, num_channels=d, grid_present=0,
             max_tokens=max(v.shape[0] for v in values), raw_bits=raw_bits,
             num_lanes=num_lanes, lane_steps=lane_steps, prob_bits=prob_bits, num_tables=1)
    if ids:
        t["vocab_size"] = vocab_size
    else:
        t["predictor"] = predictor
    ctx = dict(t, num_prefix_tokens=0)
    parts = []
    for v in values:
        u = v.astype(np.int64)
        pos = np.arange(v.shape[0], dtype=np.uint32)
        if predictor:
            m = symbols.bits_to_ordered(u, width)
            u = symbols.zigzag(prediction.residuals_from_levels(m, pos, ctx))
        parts.append((pos, u >> raw_bits, u & ((1 << raw_bits) - 1)))
    alphabet = max(int(s.max()) + 1 if s.size else 1 for _, s, _ in parts)
    fit_tables(t, [s for _, s, _ in parts], alphabet, pseudo=False)
    payloads = []
    for i, (pos, sym, raw) in enumerate(parts):
        words, cw = code_symbols(t, sym)
        payloads.append(frame_payload(t, dict(
            tps_id=tps_id, random_access=1, frame_number=i, num_tokens=int(pos.size),
            presence_present=0, positions=pos, chunk_words=cw, rans_data=words,
            raw_data=raw.ravel())))
    return tps_payload(t), payloads


def stream(units: list, profile: int = 2, level: int = 10, index: bool = True, **hdr) -> bytes:
    """A stream of (unit_type, track_id, payload[, essential]) units; with ``index``,
    an index unit per track is appended (clause 6.6)."""
    out = bytearray(header(profile, level, **hdr))
    entries: dict = {}
    for u in units:
        t, track, payload = u[:3]
        if t == decoder.UNIT_FRAME:
            number = int.from_bytes(payload[2:6], "little")
            entries.setdefault(track, []).append((number, len(out)))
        out += encoder.unit(t, track, payload, u[3] if len(u) > 3 else None)
    if index:
        for track, e in entries.items():
            out += encoder.unit(decoder.UNIT_INDEX, track, encoder.index_payload(e))
    return bytes(out)


def track_units(track: int, tps: bytes, frames: list) -> list:
    return [(decoder.UNIT_TPS, track, tps)] + [(decoder.UNIT_FRAME, track, f) for f in frames]


# -- declarations -----------------------------------------------------------------

@dataclass
class Vector:
    """One declared conformance stream and its expected outcome."""
    name: str
    suite: str                      # positive | negative | resilience
    description: str
    clauses: list
    features: list
    data: bytes
    error: tuple | None = None      # negative: (error class name, clause)
    errors: list = field(default_factory=list)   # resilience: error class names in order
    conditions: list = field(default_factory=list)


VECTORS: list = []


def _add(v: Vector) -> None:
    if any(o.name == v.name for o in VECTORS):
        raise ValueError(f"duplicate conformance stream name {v.name}")
    VECTORS.append(v)


def positive(name, description, clauses, features, data):
    _add(Vector(name, "positive", description, list(clauses), list(features), data))


def negative(name, description, condition, error, clause, data, features=()):
    """A stream violating one rule: ``condition`` is the id of its row of clause 9
    (e.g. "9.1-3"), ``error`` / ``clause`` what the decoder reports."""
    conds = [condition] if isinstance(condition, str) else list(condition)
    _add(Vector(name, "negative", description, [clause], list(features) or [f"error:{error}"],
                data,
                error=(error, clause), conditions=conds))


def resilience(name, description, clauses, features, errors_, data, conditions=()):
    _add(Vector(name, "resilience", description, list(clauses), list(features), data,
                errors=list(errors_), conditions=list(conditions)))


def _opts(array, opts: dict) -> dict:
    if np.asarray(array).dtype == np.uint16:      # bfloat16 bit patterns
        return dict(opts, source_dtype="bfloat16")
    return opts


def enc(array, meta=None, level=None, index=True, **opts) -> bytes:
    return encoder.encode(array, meta=meta, level_idc=level, index=index,
                          **_opts(array, opts))


def enc_tracks(tracks, meta=None, level=None, index=True) -> bytes:
    return encoder.encode_tracks([(a, encoder.TrackOptions(**_opts(a, o))) for a, o in tracks],
                                 meta=meta, level_idc=level, index=index)


F16 = embeddings(1, 3, 17, 8)                      # 3 frames, CLS + 4x4 grid, 8 channels
GRID = dict(grid=(4, 4), prefix_tokens=1)


def base_lossy() -> bytes:
    """The stream most negative streams start from: Main, level 10, metadata, three
    frames of a 4x4 grid with a prefix token, token step deltas, an index."""
    return enc(F16, meta={"model": "synthetic"}, qp=-6, predictor="left", **GRID)


def base_pruned() -> bytes:
    x = F16.copy()
    # an escape in frame 0: a level beyond the largest alphabet (4096 symbols, Annex B.3);
    # without token scale, so that the token's step stays 0.5
    x[0, 0, 3] = 3000.0                              # the prefix token: always kept
    return enc(x, qp=-6, keep=0.5, predictor="up", token_scale=False, **GRID)


def base_lossless() -> bytes:
    return enc(F16, lossless=True, predictor="left", **GRID)


def base_ids() -> bytes:
    return enc(token_ids(7, 2, 40, 1000), vocab_size=1000)


def declare_positive() -> None:
    P = positive
    # dtypes, quantized
    for dt in ("float32", "float16", "bfloat16"):
        x = embeddings(10, 2, 17, 8, dt)
        P(f"lossy_{dt}", f"quantized {dt} embeddings, decoded to {dt}",
          ["6.3", "7.5", "7.6"], [f"dtype:{dt}", "coding_mode:0", "grid", "prefix"],
          enc(x, qp=-6, **GRID))
    for src, out in (("float16", "float32"), ("float32", "bfloat16"), ("bfloat16", "float16")):
        P(f"lossy_{src}_to_{out}", f"quantized {src} embeddings decoded to {out}",
          ["6.3", "7.6.2"], [f"dtype:{src}", f"output_dtype:{out}"],
          enc(embeddings(11, 1, 17, 8, src), qp=-6, output_dtype=out, **GRID))
    # predictors, quantized
    for p in ("none", "left", "up"):
        P(f"lossy_predictor_{p}", f"quantized, predictor {p}", ["6.3.2", "7.5"],
          [f"predictor:{p}"], enc(F16, qp=-9, predictor=p, **GRID))
    P("lossy_left_no_grid", "quantized, left prediction along a track without grid",
      ["6.3.1", "7.5"], ["predictor:left", "no-grid"],
      enc(embeddings(12, 2, 23, 6), qp=-6, predictor="left"))
    P("lossy_per_channel_steps", "per-channel step codes, several tables and a table_map",
      ["6.3.2", "6.3.5", "7.6.1"], ["per_channel_steps", "tables:several", "table_map"],
      enc(F16, qp=-8, per_channel_steps=True, num_tables=3, **GRID))
    P("lossy_no_token_scale", "no token step deltas (token_scale_present 0)",
      ["6.4", "7.6.1"], ["token_scale:off"], enc(F16, qp=-6, token_scale=False, **GRID))
    # lossless (split) coding
    for dt in ("float32", "float16", "bfloat16"):
        for p in ("none", "left", "up"):
            P(f"lossless_{dt}_{p}", f"split (lossless) {dt}, predictor {p}",
              ["6.3.3", "7.4.2"], [f"dtype:{dt}", "coding_mode:1", f"predictor:{p}"],
              enc(embeddings(13, 2, 17, 8, dt), lossless=True, predictor=p, **GRID))
    special = np.array([[0.0, -0.0, np.inf, -np.inf, np.nan, 6e-8, -6e-8, 65504.0]],
                       dtype=np.float16)
    sp = np.concatenate([special, special[:, ::-1], embeddings(14, 1, 6, 8)[0]])
    sp16 = sp.view(np.uint16).copy()
    sp16[0, 4] = 0x7E01                              # a NaN with a payload
    P("lossless_float16_specials", "split float16: signed zeros, infinities, NaN payloads, "
      "subnormals, the largest finite value; kept bit for bit", ["7.4.2", "10.1"],
      ["dtype:float16", "coding_mode:1", "special-values"],
      enc(sp16.view(np.float16)[None], lossless=True, predictor="left"))
    # ids
    P("ids_spec_example", "the example of clause 10.3: one frame of three token ids",
      ["6.3", "7.4.2", "10.3"], ["ids", "profile:Lossless"], enc(np.array([[5, 9, 2]]),
                                                                vocab_size=10))
    P("ids_vocab_1", "ids track with vocab_size 1 (every id 0)", ["6.3", "7.4.2"],
      ["ids", "vocab:min"], enc(np.zeros((2, 9), np.uint32), vocab_size=1))
    P("ids_vocab_max_level10", "ids track with vocab_size = max_vocab of level 10 (2^20)",
      ["6.3", "8.2"], ["ids", "vocab:max"],
      enc(token_ids(15, 2, 64, 1 << 20), vocab_size=1 << 20, level=10))
    # entropy coder layout
    x1 = embeddings(16, 1, 40, 8)
    for lanes in (1, 3, 32):
        P(f"lanes_{lanes}", f"{lanes} lane(s) per chunk", ["6.3.4", "7.3"], [f"lanes:{lanes}"],
          enc(x1, qp=-6, num_lanes=lanes, lane_steps=7, exact_lanes=True))
    P("lanes_max_level10", "256 lanes (max_lanes of level 10), one step each",
      ["6.3.4", "7.3", "8.2"], ["lanes:max-level10"],
      enc(embeddings(17, 1, 32, 8), qp=-6, num_lanes=256, lane_steps=1, exact_lanes=True))
    P("lane_steps_max_level10", "one lane of 4096 steps (max_lane_steps of level 10)",
      ["6.3.4", "7.3", "8.2"], ["lane_steps:max-level10"],
      enc(embeddings(18, 1, 512, 8), qp=-3, num_lanes=1, lane_steps=4096, exact_lanes=True))
    P("lanes_max_level30", "4096 lanes (max_lanes of level 30) at level 30",
      ["6.3.4", "7.3", "8.2"], ["lanes:max", "level:30"],
      enc(embeddings(19, 1, 512, 8), qp=-3, num_lanes=4096, lane_steps=1, exact_lanes=True,
          level=30))
    P("lanes_1024_level20", "1024 lanes (max_lanes of level 20) at level 20",
      ["6.3.4", "8.2"], ["lanes:max-level20", "level:20"],
      enc(embeddings(20, 1, 128, 8), qp=-3, num_lanes=1024, lane_steps=1, exact_lanes=True,
          level=20))
    # chunk boundaries: 8 lanes x 4 steps = chunks of 32 symbols
    for n_sym, what in ((1, "one symbol"), (32, "exactly one full chunk"),
                        (33, "one full chunk and a chunk of one symbol"),
                        (5, "fewer symbols than lanes (inactive lanes)")):
        x = embeddings(21, 1, n_sym, 1)
        P(f"chunk_{n_sym}_symbols", f"{what} (8 lanes x 4 steps)", ["7.1", "7.3.2"],
          ["chunk-boundary"], enc(x, qp=-6, num_lanes=8, lane_steps=4, exact_lanes=True))
    # table precision: every prob_bits
    small = embeddings(22, 1, 16, 4)
    for pb in range(1, 16):
        qp = 30 if pb == 1 else (12 if pb < 4 else -6)
        P(f"prob_bits_{pb}", f"frequency tables of precision prob_bits = {pb}",
          ["6.3.5", "7.3"], [f"prob_bits:{pb}"], enc(small, qp=qp, prob_bits=pb))
    P("tables_max_level10", "16 tables (max_tables of level 10), a table per channel group",
      ["6.3.5", "8.2"], ["tables:max-level10", "table_map"],
      enc(embeddings(23, 2, 17, 32), qp=-8, num_tables=16, per_channel_steps=True, **GRID))
    P("alphabet_1", "a table of one symbol (constant input)", ["6.3.5", "7.3"],
      ["alphabet:1"], enc(np.zeros((2, 5, 3), np.float16), qp=0))
    tp, fr = split_track([np.arange(4096, dtype=np.int64)[::-1].reshape(4096, 1)],
                         source_dtype=3, raw_bits=0, vocab_size=4096, prob_bits=15,
                         num_lanes=4, lane_steps=1024)
    P("alphabet_4096", "a table of 4096 symbols (max_alphabet), every id of a 4096-id "
      "vocabulary once", ["6.3.5", "8.2"], ["alphabet:max"],
      stream(track_units(0, tp, fr), profile=1))
    # presence maps
    P("pruned_half", "a presence map over a 4x4 grid with a prefix token (half kept)",
      ["6.4", "7.2"], ["presence", "grid", "prefix"], base_pruned())
    P("pruned_none_kept", "presence map keeping no token", ["7.2"], ["presence:none-kept"],
      enc(F16, qp=-6, keep=0.0, **GRID))
    P("pruned_one_kept", "presence map keeping one token of a grid without prefix",
      ["7.2"], ["presence:one-kept"], enc(embeddings(25, 1, 16, 4), qp=-6, keep=0.07,
                                           grid=(4, 4)))
    for h, w, pre in ((3, 5, 0), (1, 7, 2), (7, 1, 1), (5, 5, 4)):
        P(f"pruned_grid_{h}x{w}_prefix{pre}", f"presence map on an irregular {h}x{w} grid "
          f"with {pre} prefix tokens", ["6.3.1", "7.2"], ["presence", "grid:irregular"],
          enc(embeddings(26 + h, 2, pre + h * w, 4), qp=-6, keep=0.5, grid=(h, w),
              prefix_tokens=pre, predictor="up"))
    P("pruned_no_grid", "presence map of a track without grid (one bit per token)",
      ["7.2"], ["presence", "no-grid"], enc(embeddings(30, 2, 21, 4), qp=-6, keep=0.4))
    d = enc(F16[:1], qp=-6, **GRID)
    P("presence_all_kept", "a presence map that keeps every token", ["7.2"],
      ["presence:all-kept"], rewrite_frame(d, units_of(d, decoder.UNIT_FRAME)[0],
                                           presence_present=1))
    # stream structure
    P("empty_stream", "a stream header and no unit (empty canonical output)", ["5.1", "10.2"],
      ["structure:empty"], header(2, 10))
    P("tps_without_frames", "a parameter set and no frame", ["6.3"], ["structure"],
      stream([(decoder.UNIT_TPS, 0, split(base_lossy())[1][1].payload)], index=False))
    P("no_index", "frames without index units", ["6.6"], ["structure", "index:absent"],
      enc(F16, qp=-6, index=False, **GRID))
    P("metadata", "stream and track metadata: UTF-8, an empty value, a 255-byte key",
      ["6.5"], ["metadata"], enc_tracks([(F16[:1], dict(qp=-6, meta={"layer": "11",
                                                                     "name": "ViT-S/14 ✓"},
                                                        **GRID))],
                                       meta={"k" * 255: "", "source": "synthétique"}))
    d = enc(F16, qp=-6, index=False, **GRID)
    head, units = split(d)
    units.insert(1, Unit(200, 0, 0, b"a future unit"))
    units.insert(3, Unit(17, 255, 0, b""))
    P("unknown_units_skipped", "reserved unit types with unit_essential 0 (skipped)",
      ["6.2"], ["structure:unknown-unit"], join(head, units))
    head, units = split(d)
    units.insert(2, units[0])
    P("repeated_parameter_set", "a parameter set repeated byte for byte between frames",
      ["6.3.6"], ["structure:repeated-tps"], join(head, units))
    tp0, fr0 = quantized_track([np.arange(-8, 8).reshape(4, 4)], step_code=140)
    tp1, fr1 = quantized_track([np.arange(8, -8, -1).reshape(4, 4)], step_code=150, tps_id=7)
    P("two_parameter_sets", "two parameter sets (tps_id 0 and 7) of one track, frames "
      "alternating between them", ["6.3.6", "6.4"], ["structure:several-tps"],
      stream([(1, 0, tp0), (1, 0, tp1), (2, 0, fr0[0]), (2, 0, fr1[0]), (2, 0, fr0[0])]))
    P("version_minor_255", "version_minor 255: decoded by this specification",
      ["6.1"], ["header:version_minor"], header(2, 10, minor=255) + base_lossy()[16:])
    P("profile_main_lossless_only", "a Main stream with only split tracks", ["8.1"],
      ["profile:Main"], header(2, 10) + base_lossless()[16:])
    # tracks
    P("multi_track_max_level10", "four tracks (max_tracks of level 10): quantized, "
      "lossless, ids and pruned, frames interleaved", ["6.3.6", "8.2"],
      ["multi-track", "tracks:max-level10"],
      enc_tracks([(F16, dict(qp=-6, **GRID)), (F16, dict(lossless=True, **GRID)),
                  (token_ids(31, 3, 12, 50), dict(vocab_size=50)),
                  (embeddings(32, 2, 9, 5), dict(qp=-3, keep=0.5))]))
    ta, fa = split_track([token_ids(33, 1, 5, 9).reshape(5, 1).astype(np.int64)],
                         source_dtype=3, raw_bits=0, vocab_size=9)
    P("track_id_254", "a track numbered 254 and stream metadata on track 255",
      ["6.2"], ["track_id:max"],
      stream([(3, 255, encoder.metadata_payload({"a": "b"}), 0)] + track_units(254, ta, fa)))
    P("frame_tokens_0", "a frame of zero tokens in a track without grid", ["6.4", "7.1"],
      ["frame:empty"], enc_tracks([(np.zeros((0, 4), np.float16),
                                    dict(qp=-6, max_tokens=3))]))
    declare_boundary_positive()


def declare_boundary_positive() -> None:
    """Streams written from explicit syntax values: the extremes of levels, escapes,
    step codes and deltas, raw_bits and frame_number."""
    P = positive
    big = (1 << 24) - 1
    lv = np.array([[big, -big, 0, 1], [-big, big, 5, -5], [0, 0, 0, 0]], dtype=np.int64)
    tp, fr = quantized_track([lv], step_code=100, predictor=1, alphabet=4)
    P("levels_extreme_escape26", "levels of magnitude 2^24 - 1 with left prediction: "
      "residuals escaped with escape_bits 26", ["7.4.1", "7.5"],
      ["escape:max", "level:max"], stream(track_units(0, tp, fr), index=False))
    tp, fr = quantized_track([lv[:, :2] * 0 + 3], step_code=144, alphabet=8, escape_bits=26)
    P("escape_bits_without_escapes", "escape_bits 26 and no escape (an empty escape_data)",
      ["6.4", "7.4.1"], ["escape:none"], stream(track_units(0, tp, fr), index=False))
    small = np.array([[1, -1, 2, 0]], dtype=np.int64)
    for code, delta, what in ((0, 0, "step code 0 (smallest step)"),
                              (255, 0, "step code 255 (largest step)"),
                              (128, 127, "frame_step_delta +127"),
                              (128, -128, "frame_step_delta -128")):
        tp, fr = quantized_track([small], step_code=code, frame_step_delta=delta, alphabet=8,
                                 output_dtype=0)
        P(f"step_code_{code}_delta_{delta}".replace("-", "m"), what, ["6.3.2", "6.4", "7.6.1"],
          ["step-code:extreme"], stream(track_units(0, tp, fr), index=False))
    tp, fr = quantized_track([np.tile(small, (3, 1))], step_code=[128, 128, 128, 128],
                             token_step_delta=[np.array([-128, 127, 0])], alphabet=8,
                             output_dtype=2)
    P("token_step_delta_extreme", "token_step_delta -128 and +127 on per-channel codes 128: "
      "step codes 0 and 255 of the frame", ["6.4", "7.6.1"],
      ["token-step-delta:extreme"], stream(track_units(0, tp, fr), index=False))
    bits = uniform(40, (6, 3))
    for dt, width, rb in ((0, 32, 31), (1, 16, 15), (2, 16, 4)):
        v = (bits * (1 << width)).astype(np.int64)
        if dt == 0:
            v &= ~(0xFF << 23)          # finite float32 values of any sign
        tp, fr = split_track([v], source_dtype=dt, raw_bits=rb)
        P(f"raw_bits_{rb}_{reconstruction.DTYPES[dt]}", f"split {reconstruction.DTYPES[dt]} "
          f"with raw_bits {rb}", ["6.3.3", "7.4.2"], [f"raw_bits:{rb}"],
          stream(track_units(0, tp, fr), profile=1, index=False))
    tp, fr = quantized_track([small], step_code=144, alphabet=8)
    fr = [bytearray(fr[0])]
    fr[0][2:6] = (0xFFFFFFFF).to_bytes(4, "little")
    P("frame_number_max", "frame_number 2^32 - 1", ["6.4"], ["frame_number:max"],
      stream(track_units(0, tp, [bytes(fr[0])])))
    tp, fr = quantized_track([np.zeros((4096, 256), np.int64)], step_code=144, alphabet=2,
                             num_lanes=256, lane_steps=512)
    P("values_max_level10", "a frame of 4096 tokens x 256 channels: max_tokens, max_values "
      "and max_chunk (256 lanes x 512 steps) of level 10", ["6.4", "7.3", "8.2"],
      ["tokens:max-level10", "values:max-level10", "chunk:max-level10"],
      stream(track_units(0, tp, fr), index=False))
    tp, fr = quantized_track([np.zeros((1, 4096), np.int64)], step_code=144, alphabet=2,
                             lane_steps=4096)
    P("channels_max_level10", "4096 channels (max_channels of level 10)", ["6.3", "8.2"],
      ["channels:max-level10"], stream(track_units(0, tp, fr), index=False))


def _payload_cut(data: bytes, unit: int, byte: int) -> bytes:
    return with_payload(data, unit, lambda p: p[:byte])


def _meta_bytes(entries: list) -> bytes:
    """A metadata payload from raw (key, value) byte strings (clause 5.9)."""
    out = len(entries).to_bytes(2, "little")
    for k, v in entries:
        out += bytes([len(k)]) + k + len(v).to_bytes(4, "little") + v
    return out


def declare_negative() -> None:
    N = negative
    L = base_lossy()            # units: 0 metadata, 1 tps, 2-4 frames, 5 index
    TPS, FR, META, IDX = 1, 2, 0, 5
    LL = base_lossless()        # 0 tps, 1-3 frames, 4 index
    IDS = base_ids()            # 0 tps, 1-2 frames, 3 index
    PR = base_pruned()          # 0 tps, 1-3 frames, 4 index
    NG = enc(embeddings(12, 2, 23, 6), qp=-6, predictor="left")   # no grid, 0 tps
    MT = enc(F16, qp=-8, per_channel_steps=True, num_tables=3, **GRID)

    # 9.1 TKBFormatError
    e = find(L, "freq", TPS)
    at = e.bit_offset // 8 - (unit_offsets(L)[TPS] + 8)
    N("eg_33_leading_zeros", "an eg(k) code of a frequency with 40 leading zero bits",
      "9.1-1", "TKBFormatError", "3.3",
      with_payload(L, TPS, lambda p: p[:at] + bytes(5) + b"\xff" * (len(p) - at)))
    for nm, base, unit, which in (("freq_table", L, TPS, 0), ("presence_map", PR, 1, 0),
                                  ("raw_data", LL, 1, -1), ("escape_data", PR, 1, -1)):
        els = [x for x in tracing.walk(base) if isinstance(x, tracing.Element)
               and x.unit == unit and x.leaf == "alignment_zero_bits"]
        if els:
            N(f"alignment_bit_{nm}", f"an alignment_zero_bits bit set to 1 after {nm}",
              "9.1-2", "TKBFormatError", "3.3", poke_element(base, els[which], 1))
    N("magic_wrong", "a ZIP signature instead of the TKB magic", "9.1-3", "TKBFormatError",
      "6.1", b"PK\x03\x04" + L[4:])
    N("reserved_zero_32bits", "reserved_zero_32bits = 1 (header CRC valid)", "9.1-4",
      "TKBFormatError", "6.1", poke(L, "reserved_zero_32bits", 1, -1))
    N("reserved_zero_8bits", "a unit's reserved_zero_8bits = 1", "9.1-5", "TKBFormatError",
      "6.2", poke(L, "reserved_zero_8bits", 1, TPS))
    N("unit_essential_2", "unit_essential = 2", "9.1-5", "TKBFormatError", "6.2",
      poke(L, "unit_essential", 2, FR))
    for unit, what in ((TPS, "parameter set"), (FR, "frame"), (IDX, "index")):
        N(f"track_id_255_{what.replace(' ', '_')}", f"track_id 255 on a {what} unit",
          "9.1-6", "TKBFormatError", "6.2", poke(L, "track_id", 255, unit))
    for unit, what in ((TPS, "parameter_set"), (FR, "frame"), (META, "metadata"),
                       (IDX, "index")):
        N(f"trailing_byte_{what}", f"one byte left over after a {what.replace('_', ' ')}",
          "9.1-7", "TKBFormatError", "6.2", with_payload(L, unit, lambda p: p + b"\x00"))
    tpsv = [("track_kind", 2, L, TPS, "9.1-8", "6.3"), ("coding_mode", 2, L, TPS, "9.1-9", "6.3"),
            ("coding_mode", 0, IDS, 0, "9.1-9", "6.3"),
            ("source_dtype", 3, L, TPS, "9.1-10", "6.3"),
            ("source_dtype", 0, IDS, 0, "9.1-10", "6.3"),
            ("output_dtype", 0, LL, 0, "9.1-11", "6.3"),
            ("output_dtype", 3, L, TPS, "9.1-11", "6.3"),
            ("num_channels", 2, IDS, 0, "9.1-12", "6.3"),
            ("num_channels", 0, L, TPS, "9.1-12", "6.3"),
            ("vocab_size", 0, IDS, 0, "9.1-13", "6.3"),
            ("grid_present", 2, L, TPS, "9.1-14", "6.3"),
            ("per_channel_steps", 2, L, TPS, "9.1-14", "6.3"),
            ("predictor", 3, L, TPS, "9.1-15", "6.3"),
            ("raw_bits", 16, LL, 0, "9.1-16", "6.3"),
            ("num_lanes", 0, L, TPS, "9.1-17", "6.3"),
            ("lane_steps", 0, L, TPS, "9.1-17", "6.3"),
            ("prob_bits", 0, L, TPS, "9.1-18", "6.3.5"),
            ("prob_bits", 16, L, TPS, "9.1-18", "6.3.5"),
            ("num_tables", 0, L, TPS, "9.1-19", "6.3.5"),
            ("freq_k", 16, L, TPS, "9.1-22", "6.3.5")]
    kinds = {id(L): "lossy", id(IDS): "ids", id(LL): "lossless"}
    for name, value, base, unit, cond, clause in tpsv:
        N(f"{name}_{value}_{kinds[id(base)]}", f"{name} = {value} in the parameter set of a "
          f"{kinds[id(base)]} track", cond, "TKBFormatError", clause,
          poke(base, name, value, unit))
    h, units = split(NG)
    v = tps_values(units[0].payload)
    v["predictor"] = 2
    units[0].payload = tps_payload(v)
    N("predictor_up_without_grid", "predictor 2 (up) on a track without grid", "9.1-15",
      "TKBFormatError", "6.3", join(h, units))
    N("table_map_beyond_num_tables", "a table_map entry naming table 5 of 3", "9.1-20",
      "TKBFormatError", "6.3.5", poke(MT, "table_map", 5, 0))
    tp, fr = split_track([(uniform(41, (4, 2)) * 65536).astype(np.int64)], source_dtype=1,
                         raw_bits=10)
    N("split_alphabet_beyond_2H", "split float16 with raw_bits 10: alphabet_size 65 > 2^6",
      "9.1-21", "TKBFormatError", "6.3.5",
      poke(stream(track_units(0, tp, fr), profile=1), "alphabet_size", 65, 0))
    frv = [("num_tokens", 18, L, FR, "9.1-23"), ("num_tokens", 24, NG, 1, "9.1-24"),
           ("random_access", 2, L, FR, "9.1-25"), ("presence_present", 2, L, FR, "9.1-26"),
           ("token_scale_present", 2, L, FR, "9.1-26"), ("escape_bits", 27, L, FR, "9.1-27"),
           ("num_escapes", 1000000, L, FR, "9.1-28")]
    for name, value, base, unit, cond in frv:
        N(f"frame_{name}_{value}", f"{name} = {value} in a frame", cond, "TKBFormatError",
          "6.4", poke(base, name, value, unit))
    for name, entries, cond in (("metadata_not_utf8", [(b"key", b"\xff\xfe")], "9.1-29"),
                                ("metadata_key_repeated", [(b"a", b"1"), (b"a", b"2")],
                                 "9.1-30"),
                                ("metadata_key_empty", [(b"", b"x")], "9.1-31")):
        N(name, name.replace("_", " "), cond, "TKBFormatError", "6.5",
          with_payload(L, META, lambda p, e=entries: _meta_bytes(e)))
    # two violations in one metadata unit: the entry constraints (empty key) are checked
    # after parsing, so the later parse error is reported (clauses 6.5, 9.0 item 3)
    N("order_metadata_key_empty_then_cut", "a metadata unit whose first key is empty and "
      "whose payload ends inside the value of its second entry: the truncation is reported, "
      "not the empty key", "9.2-4", "TKBTruncatedError", "6.5",
      with_payload(L, META, lambda p: _meta_bytes([(b"", b"x"), (b"k", b"value")])[:-2]),
      features=("error:TKBTruncatedError", "error-order"))
    N("order_metadata_key_empty_then_trailing_byte", "a metadata unit whose only key is empty "
      "and that has a byte left over: the bytes left over (clause 6.2) are reported, not the "
      "empty key (clause 6.5)", "9.1-7", "TKBFormatError", "6.2",
      with_payload(L, META, lambda p: _meta_bytes([(b"", b"x")]) + b"\x00"),
      features=("error:TKBFormatError", "error-order"))
    N("index_points_at_parameter_set", "an index entry pointing at the parameter set unit",
      "9.1-32", "TKBFormatError", "6.6",
      with_payload(L, IDX, lambda p: encoder.index_payload([(0, unit_offsets(L)[TPS])])))
    N("index_wrong_frame_number", "an index entry naming frame 2 at frame 1's unit",
      "9.1-32", "TKBFormatError", "6.6",
      with_payload(L, IDX, lambda p: encoder.index_payload([(2, unit_offsets(L)[3])])))

    # 9.2 TKBTruncatedError: the stream, then every structure point of each payload
    N("stream_3_bytes", "a stream of 3 bytes", "9.2-1", "TKBTruncatedError", "6.1", L[:3])
    N("stream_header_cut", "a valid magic and 10 bytes", "9.2-1", "TKBTruncatedError",
      "6.1", L[:10])
    offs = unit_offsets(L)
    N("unit_header_cut", "5 bytes of a unit header at the end", "9.2-2",
      "TKBTruncatedError", "6.2", L[:offs[TPS] + 5])
    N("unit_payload_cut", "the stream ends inside a frame unit's payload", "9.2-3",
      "TKBTruncatedError", "6.2", L[:offs[FR] + 20])
    N("unit_crc_cut", "the stream ends inside the last unit's CRC", "9.2-3",
      "TKBTruncatedError", "6.2", L[:-2])
    seen = set()
    for base, tag in ((L, "lossy"), (PR, "pruned"), (LL, "lossless"), (IDS, "ids")):
        units = split(base)[1]
        uoffs = unit_offsets(base)
        for el in tracing.walk(base):
            if not isinstance(el, tracing.Element) or el.unit is None:
                continue
            start = el.bit_offset // 8 - (uoffs[el.unit] + 8)
            utype = units[el.unit].unit_type
            key = (utype, el.leaf)
            if start < 0 or el.leaf in ("unit_payload", "unit_crc32c") or key in seen:
                continue
            seen.add(key)
            last = (el.bit_offset + el.bit_length - 1) // 8 - (uoffs[el.unit] + 8)
            what = decoder.UNIT_TYPES[utype]
            N(f"cut_{tag}_{what}_{el.leaf}", f"a {what} payload (CRC valid) that ends inside "
              f"{el.leaf}", "9.2-4", "TKBTruncatedError", None,
              _payload_cut(base, el.unit, last))
    N("frame_payload_empty", "a frame unit with an empty payload", "9.2-5",
      "TKBTruncatedError", "6.4", _payload_cut(L, FR, 0))
    N("step_code_array_beyond_payload", "num_channels 4000 with per-channel steps: the "
      "step_code array is longer than the payload", "9.2-6", "TKBTruncatedError", "7.1",
      poke(MT, "num_channels", 4000, 0))

    # 9.3 TKBCRCError
    N("header_crc_wrong", "header_crc32c off by one", "9.3-1", "TKBCRCError", "6.1",
      poke(L, "header_crc32c", find(L, "header_crc32c", -1).value ^ 1, -1, fix_crc=False))
    b = bytearray(L)
    b[offs[FR] + 12] ^= 0x10
    N("unit_crc_wrong", "a bit flipped in a frame payload (a strict decoder stops there)",
      "9.3-2", "TKBCRCError", "6.2", bytes(b))

    # 9.4 TKBUnsupportedError
    for name, hdr, cond, clause in (("version_major_2", dict(major=2), "9.4-1", "6.1"),
                                    ("profile_0", dict(profile=0), "9.4-2", "8.1"),
                                    ("profile_4", dict(profile=4), "9.4-2", "8.1"),
                                    ("level_0", dict(level=0), "9.4-3", "8.2"),
                                    ("level_11", dict(level=11), "9.4-3", "8.2"),
                                    ("level_40", dict(level=40), "9.4-3", "8.2")):
        kw = dict(profile=2, level=10)
        kw.update(hdr)
        N(name, f"stream header with {name.replace('_', ' ')}", cond, "TKBUnsupportedError",
          clause, header(**kw) + L[16:])
    h, units = split(L)
    N("unit_type_0", "a unit of unit_type 0 (never valid)", "9.4-4", "TKBUnsupportedError",
      "6.2", join(h, units[:2] + [Unit(0, 0, 0, b"")] + units[2:]))
    N("unit_type_reserved_essential", "a reserved unit_type 200 with unit_essential 1",
      "9.4-4", "TKBUnsupportedError", "6.2", join(h, units[:2] + [Unit(200, 0, 1, b"x")]
                                                  + units[2:]))
    N("lossless_profile_quantized_track", "a quantized parameter set in a Lossless stream",
      "9.4-5", "TKBUnsupportedError", "8.1", header(1, 10) + L[16:])
    N("random_access_0", "random_access 0 (inter-frame coding, not in version 1)", "9.4-6",
      "TKBUnsupportedError", "6.4", poke(L, "random_access", 0, FR))

    # 9.5 TKBLevelError (level 10 streams)
    N("unit_size_over_level", "unit_size 2^23 + 1 at level 10 (fatal)", "9.5-1",
      "TKBLevelError", "8.2", poke(L, "unit_size", (1 << 23) + 1, TPS, fix_crc=False))
    lvl = [("num_channels", 4097, L, TPS, "9.5-2"), ("vocab_size", (1 << 20) + 1, IDS, 0, "9.5-3"),
           ("grid_height", 4096, L, TPS, "9.5-4"), ("max_tokens", 4097, NG, 0, "9.5-6"),
           ("num_lanes", 257, L, TPS, "9.5-7"), ("num_tables", 17, L, TPS, "9.5-10"),
           ("alphabet_size", 4097, L, TPS, "9.5-11")]
    for name, value, base, unit, cond in lvl:
        N(f"level10_{name}_{value}", f"{name} = {value} at level 10", cond, "TKBLevelError",
          "8.2", poke(base, name, value, unit))
    d = poke(poke(poke(L, "num_channels", 4096, TPS), "grid_height", 16, TPS), "grid_width", 16,
             TPS)
    N("level10_grid_values", "a 16x16 grid + 1 prefix token of 4096 channels: 1 052 672 "
      "values > max_values at level 10", "9.5-5", "TKBLevelError", "8.2", d)
    d = poke(poke(L, "num_lanes", 1, TPS), "lane_steps", 4097, TPS)
    N("level10_lane_steps_4097", "lane_steps 4097 at level 10", "9.5-8", "TKBLevelError",
      "8.2", d)
    d = poke(poke(L, "num_lanes", 256, TPS), "lane_steps", 513, TPS)
    N("level10_chunk_over", "256 lanes x 513 steps > max_chunk at level 10", "9.5-9",
      "TKBLevelError", "8.2", d)
    tp, fr = quantized_track([np.array([[1, 2]])], step_code=144)
    N("level10_five_tracks", "five tracks at level 10 (max_tracks 4)", "9.5-12",
      "TKBLevelError", "8.2", stream([(1, t, tp) for t in range(5)], index=False))
    tp, fr = quantized_track([np.zeros((1, 4096), np.int64)], step_code=144, alphabet=2,
                             lane_steps=4096, max_tokens=300)
    d = poke(stream(track_units(0, tp, fr), index=False), "num_tokens", 257, 1)
    N("level10_frame_values", "a frame of 257 tokens x 4096 channels > max_values at "
      "level 10 (the parameter set allows 300 tokens)", "9.5-13", "TKBLevelError", "8.2", d)

    # 9.6 TKBReferenceError
    h, units = split(L)
    N("frame_without_parameter_set", "frames naming a parameter set never sent", "9.6-1",
      "TKBReferenceError", "6.4", join(h, [u for i, u in enumerate(units) if i != TPS]))
    N("parameter_set_after_frames", "the parameter set sent after the frames that use it",
      "9.6-1", "TKBReferenceError", "6.4",
      join(h, [units[0]] + units[2:5] + [units[TPS]] + units[5:]))
    v = tps_values(units[TPS].payload)
    v["step_code"] = np.array([v["step_code"][0] + 1], dtype=np.uint8)
    N("parameter_set_redefined", "tps_id 0 of track 0 sent again with another step_code",
      "9.6-2", "TKBReferenceError", "6.3",
      join(h, units[:3] + [Unit(1, 0, 1, tps_payload(v))] + units[3:]))
    for name, val in (("num_channels", 4), ("output_dtype", 0)):
        v = tps_values(units[TPS].payload)
        v.update(tps_id=1, **{name: val})
        if name == "num_channels":
            v["step_code"] = v["step_code"][:1]
        N(f"second_parameter_set_{name}", f"a second parameter set of track 0 with another "
          f"{name}", "9.6-3", "TKBReferenceError", "6.3",
          join(h, units[:2] + [Unit(1, 0, 1, tps_payload(v))] + units[2:]))
    hi, iu = split(IDS)
    v = tps_values(split(LL)[1][0].payload)
    v["tps_id"] = 1
    N("second_parameter_set_track_kind", "an ids track given an embedding parameter set",
      "9.6-3", "TKBReferenceError", "6.3",
      join(hi, iu[:1] + [Unit(1, 0, 1, tps_payload(v))] + iu[1:]))

    # 9.7 TKBTableError
    v = tps_values(units[TPS].payload)
    ft = v["freq_table"][0]
    v["freq_table"][0] = dict(ft, freq=[ft["freq"][0] + 1] + list(ft["freq"][1:]))
    N("table_sum_wrong", "frequencies summing to 2^prob_bits + 1", "9.7-1", "TKBTableError",
      "6.3.5", join(h, units[:1] + [Unit(1, 0, 1, tps_payload(v))] + units[2:]))
    N("alphabet_size_0", "alphabet_size 0", "9.7-2", "TKBTableError", "6.3.5",
      poke(L, "alphabet_size", 0, TPS))
    # two violations in one parameter set: the sums come after every element constraint
    # and after the bytes-left-over check (clause 6.3.6, steps 1 to 3; clause 9.0 item 3)
    hm, um = split(MT)
    v = tps_values(um[0].payload)
    ft = v["freq_table"][0]
    v["freq_table"][0] = dict(ft, freq=[ft["freq"][0] + 1] + list(ft["freq"][1:]))
    sum_bad = join(hm, [Unit(1, 0, 1, tps_payload(v))] + um[1:])
    N("order_table_sum_then_freq_k", "table 0's frequencies sum to 2^prob_bits + 1 and table "
      "1 has freq_k 16: the freq_k of the later table is reported, not the sum",
      "9.1-22", "TKBFormatError", "6.3.5", poke(sum_bad, "freq_k", 16, 0, nth=1),
      features=("error:TKBFormatError", "error-order"))
    N("order_table_sum_then_trailing_byte", "table 0's frequencies sum to 2^prob_bits + 1 and "
      "the parameter set has a byte left over: the bytes left over (clause 6.2) are "
      "reported, not the sum", "9.1-7", "TKBFormatError", "6.2",
      with_payload(sum_bad, 0, lambda p: p + b"\x00"),
      features=("error:TKBFormatError", "error-order"))

    # 9.8 TKBEntropyError: edits of rans_data with the frame syntax kept consistent
    tps, fv = frame_values(L, FR)
    words = np.asarray(fv["rans_data"]).copy()
    cw = np.asarray(fv["chunk_words"]).copy()
    lanes = tps["num_lanes"]
    N("chunk_words_too_few", f"chunk_words[0] = 1 < 2 x {lanes} active lane(s)", "9.8-1",
      "TKBEntropyError", "7.3.2",
      rewrite_frame(L, FR, chunk_words=np.concatenate([[1], cw[1:]]).astype(np.uint32),
                    rans_data=np.concatenate([words[:1], words[cw[0]:]])))
    # two violations in one frame: chunk_words[0] < 2 x active lanes is a check of entropy
    # decoding, so a later parse error of the same frame is reported (clauses 6.4, 9.0)
    tp, fr = quantized_track([np.array([[40, 1], [2, -50], [0, 3]], dtype=np.int64)],
                             step_code=144, alphabet=8)
    d = stream(track_units(0, tp, fr), index=False)
    fv = frame_values(d, 1)[1]
    assert fv["escape_bits"] and fv["num_escapes"] and len(fv["chunk_words"]) == 1
    few = rewrite_frame(d, 1, chunk_words=np.array([1], dtype=np.uint32),
                        rans_data=np.asarray(fv["rans_data"])[:1])
    N("order_chunk_words_too_few_then_escape_data_cut", "chunk_words[0] = 1 < 2 x 1 active "
      "lane, and the payload ends inside escape_data: the truncation is reported, not the "
      "entropy error", "9.2-4", "TKBTruncatedError", "6.4",
      with_payload(few, 1, lambda p: p[:-1]), features=("error:TKBTruncatedError", "error-order"))
    N("order_chunk_words_too_few_then_trailing_byte", "chunk_words[0] = 1 < 2 x 1 active "
      "lane, and a byte left over after the frame: the bytes left over (clause 6.2) are "
      "reported, not the entropy error", "9.1-7", "TKBFormatError", "6.2",
      with_payload(few, 1, lambda p: p + b"\x00"), features=("error:TKBFormatError", "error-order"))
    w2 = words.copy()
    w2[:2] = 0
    N("initial_state_below_L", "a lane whose initial state is 0 < RANS_L", "9.8-2",
      "TKBEntropyError", "7.3.2", rewrite_frame(L, FR, rans_data=w2))
    c2 = cw.copy()
    c2[0] -= 1
    N("chunk_needs_more_words", "the last word of chunk 0 removed", "9.8-3",
      "TKBEntropyError", "7.3.2",
      rewrite_frame(L, FR, chunk_words=c2, rans_data=np.delete(words, cw[0] - 1)))
    c3 = cw.copy()
    c3[0] += 1
    N("chunk_words_unread", "one word more than chunk 0 reads", "9.8-3", "TKBEntropyError",
      "7.3.2", rewrite_frame(L, FR, chunk_words=c3,
                             rans_data=np.insert(words, cw[0], 0x1234)))
    w4 = words.copy()
    w4[-1] ^= 0x5A5A
    N("lane_final_state_wrong", "a changed word: the lane does not end in RANS_L", "9.8-4",
      "TKBEntropyError", "7.3.2", rewrite_frame(L, FR, rans_data=w4))
    tps, fv = frame_values(PR, 1)
    esc = np.asarray(fv["escape_data"])
    N("escape_count_wrong", f"num_escapes {esc.size - 1} while {esc.size} escape symbols "
      "are decoded", "9.8-5", "TKBEntropyError", "7.4.1",
      rewrite_frame(PR, 1, num_escapes=esc.size - 1, escape_data=esc[:-1]))

    # 9.9 TKBValueError
    m = np.array([[-32768], [32767]], dtype=np.int64)
    tp, fr = split_track([symbols.ordered_to_bits(m, 16).astype(np.int64)], source_dtype=1,
                         raw_bits=8, predictor=1)
    d = stream(track_units(0, tp, fr), profile=1, index=False)
    raw = np.asarray(frame_values(d, 1)[1]["raw_data"]).copy()
    raw[1] ^= 1
    N("split_predicted_out_of_range", "split float16 with left prediction: a residual's sign "
      "flipped so the predicted integer leaves -2^15 .. 2^15 - 1", "9.9-1", "TKBValueError",
      "7.4.2", rewrite_frame(d, 1, raw_data=raw))
    N("token_id_beyond_vocab", "vocab_size 5 for ids up to 999", "9.9-2", "TKBValueError",
      "7.4.2", poke(IDS, "vocab_size", 5, 0))
    big = (1 << 24) - 1
    tp, fr = quantized_track([np.array([[big, 1]], dtype=np.int64)], step_code=100,
                             alphabet=4)
    d = stream(track_units(0, tp, fr), index=False)
    ev = np.asarray(frame_values(d, 1)[1]["escape_data"]).copy()
    ev[0] += 2
    N("level_over_2_24", "an escape making a level of magnitude 2^24", "9.9-3", "TKBValueError",
      "7.5", rewrite_frame(d, 1, escape_data=ev))
    N("step_code_over_255", "frame_step_delta 127 on step codes near 255", "9.9-4",
      "TKBValueError", "7.6.1",
      poke(poke(L, "step_code", 200, TPS), "frame_step_delta", 127, FR))
    N("step_code_below_0", "frame_step_delta -128 on a step code below 128", "9.9-4",
      "TKBValueError", "7.6.1",
      poke(poke(L, "step_code", 20, TPS), "frame_step_delta", -128, FR))


def declare_resilience() -> None:
    R = resilience
    L = base_lossy()
    offs = unit_offsets(L)
    b = bytearray(L)
    b[offs[3] + 12] ^= 0x10
    R("frame_crc_damaged", "frame 1 of 3 has a bad CRC: reported, frames 0 and 2 decode",
      ["9.3", "9.10"], ["resilience"], ["TKBCRCError"], bytes(b), ["9.3-2"])
    h, units = split(L)
    bad = bytearray(units[1].bytes())
    bad[10] ^= 1
    d = h + units[0].bytes() + bytes(bad) + b"".join(u.bytes() for u in units[2:4]) \
        + units[1].bytes() + units[4].bytes()
    R("parameter_set_damaged_then_repeated", "the parameter set has a bad CRC: its frames "
      "0 and 1 are rejected until the repeated copy; frame 2 decodes",
      ["9.3", "9.6", "9.10"], ["resilience", "structure:repeated-tps"],
      ["TKBCRCError", "TKBReferenceError", "TKBReferenceError"], d, ["9.3-2", "9.6-1"])
    R("truncated_after_frames", "the stream ends inside the index unit: every frame decodes, "
      "then the fatal truncation is reported", ["9.2", "9.10"], ["resilience", "fatal"],
      ["TKBTruncatedError"], L[:-3], ["9.2-3"])
    tps, fv = frame_values(L, 3)
    w = np.asarray(fv["rans_data"]).copy()
    w[-1] ^= 0x00FF
    R("frame_entropy_damaged", "frame 1's rANS data is damaged (CRC valid): frames 0 and 2 "
      "decode", ["9.8", "9.10"], ["resilience"], ["TKBEntropyError"],
      rewrite_frame(L, 3, rans_data=w), ["9.8-4"])
    R("index_entry_wrong", "the index names a wrong offset: the frames decode, the index "
      "check fails", ["6.6", "9.10"], ["resilience", "index"], ["TKBFormatError"],
      with_payload(L, 5, lambda p: encoder.index_payload([(0, offs[2]), (1, offs[2]),
                                                         (2, offs[4])])), ["9.1-32"])
    h, units = split(L)
    R("essential_unknown_unit_between_frames", "an essential unit of a reserved type between "
      "frames is reported; the frames decode", ["6.2", "9.10"], ["resilience"],
      ["TKBUnsupportedError"], join(h, units[:3] + [Unit(99, 0, 1, b"?")] + units[3:5]),
      ["9.4-4"])
    b = bytearray(with_payload(L, 5, lambda p: encoder.index_payload(
        [(0, offs[2]), (7, offs[3]), (2, offs[4])])))
    b[offs[3] + 12] ^= 0x10
    R("index_entry_at_crc_damaged_frame", "frame 1 has a bad CRC and the index names it "
      "frame 7: the CRC error is reported; the damaged unit still counts as a frame unit of "
      "the track and, not decoded, its frame_number is not compared (clause 6.6)",
      ["6.6", "9.3", "9.10"], ["resilience", "index"], ["TKBCRCError"], bytes(b), ["9.3-2"])
    d = with_payload(L, 5, lambda p: encoder.index_payload([(0, offs[1]), (1, offs[3]),
                                                           (2, offs[4])]))
    R("index_then_fatal_truncation", "an index whose first entry points at the parameter set, "
      "then 5 bytes of a unit header: frames 0 to 2 decode, the fatal truncation is "
      "reported, and the index is not checked (clauses 6.6, 9.10)",
      ["9.2", "6.6", "9.10"], ["resilience", "fatal", "index"], ["TKBTruncatedError"],
      d + b"\x05\x00\x00\x00\x02", ["9.2-2"])


# -- version 1.1: transforms (clauses 6.7, 7.6.3) ---------------------------------------

def _ints(seed: int, shape, lo: int, hi: int) -> np.ndarray:
    """Integers in lo..hi from the deterministic uniform() (exact on every platform)."""
    return (lo + np.floor(uniform(seed, shape) * (hi - lo + 1))).astype(np.int64)


def _model(seed: int, d: int, k: int, f: int, g: int, mean_max: int, basis_max: int):
    mean = _ints(seed, (d,), -mean_max, mean_max) if mean_max else np.zeros(d, np.int64)
    basis = _ints(seed + 1, (k, d), -basis_max, basis_max)
    return tr.make_transform(mean, basis, f, g)


_MODELS: dict = {}


def model_transforms() -> dict:
    """The transforms shipped with the suite (transforms/<sha256>.tkbt), by hex digest:
    what an application supplies to decode the streams that name them (clause 6.7)."""
    if not _MODELS:
        t = _model(900, 8, 6, 12, 7, 1 << 18, 100)
        _MODELS[t.hexdigest] = t
    return _MODELS


def model_a():
    return next(iter(model_transforms().values()))


def referenced_transforms(data: bytes) -> list:
    """Hex digests of the transforms that ``data``'s transform units name by reference."""
    out = []
    try:
        for u in decoder.iter_units(data, levels.LEVELS[30]):
            if u.unit_type == decoder.UNIT_TRANSFORM and len(u.payload) >= 34 \
                    and u.payload[1] == tr.SOURCE_REFERENCE:
                out.append(u.payload[2:34].hex())
    except errors.TKBError:
        pass
    return sorted(set(out))


def transform_data_bytes(**v) -> bytes:
    """A ``transform_data()`` written from explicit values, valid or not."""
    w = BitWriter()
    syntax.write(w, "transform_data", v)
    return w.getvalue()


def coeff_levels(seed: int, frames: int, tokens: int, k: int, amp: int) -> list:
    return [_ints(seed + i, (tokens, k), -amp, amp) for i in range(frames)]


def transform_stream(t, levels_: list, *, inline: bool = True, level: int = 10,
                     tracks: list | None = None, **track_kw) -> bytes:
    """A High stream: one transform unit (transform_id 0), then one track (or the
    ``tracks`` given as keyword dicts) coding ``levels_`` as coefficients of ``t``."""
    units = [(decoder.UNIT_TRANSFORM, decoder.STREAM_TRACK,
              tr.transform_unit_payload(0, t, inline))]
    for track, kw in enumerate(tracks or [track_kw]):
        tps, frames = quantized_track(kw.pop("levels", levels_), transform=t, **kw)
        units += track_units(track, tps, frames)
    return stream(units, profile=levels.PROFILE_HIGH, level=level, minor=1)


def _row(cls_clause: str, fragment: str) -> str:
    """The id of the row of clause ``cls_clause`` (e.g. "9.1") whose text has ``fragment``."""
    hits = [c["id"] for c in error_conditions() if c["id"].startswith(cls_clause + "-")
            and fragment in c["text"]]
    if len(hits) != 1:
        raise LookupError(f"{len(hits)} rows of {cls_clause} contain {fragment!r}")
    return hits[0]


def restream(units: list) -> bytes:
    """A High stream of ``units`` (Unit) with its index rebuilt for their offsets."""
    return stream([(u.unit_type, u.track_id, u.payload, u.essential) for u in units
                   if u.unit_type != decoder.UNIT_INDEX], profile=levels.PROFILE_HIGH,
                  level=10, minor=1)


def declare_transform() -> None:
    P, N, R = positive, negative, resilience
    A = model_a()
    grid = dict(grid=(4, 4), prefix=1)
    lv = coeff_levels(910, 3, 17, 6, 5)
    tsd = [_ints(920 + i, (17,), -3, 3) for i in range(3)]
    common = dict(step_code=[140, 141, 143, 146, 150, 155], predictor=2, alphabet=12,
                  token_step_delta=tsd, **grid)
    T = transform_stream(A, lv, **common)        # units: 0 transform, 1 tps, 2-4 frames, 5 index
    P("transform_inline_float16", "High profile: an inline transform (D 8, K 6) and a grid "
      "track coding its coefficients with up prediction, per-coefficient steps and token step "
      "deltas, float16 out", ["6.7", "7.6.3"], ["transform", "coding_mode:2", "predictor:2"], T)
    P("transform_by_reference", "the same track with the transform named by its SHA-256; "
      "the suite ships it as transforms/<sha256>.tkbt (clause 6.7)", ["6.7", "7.6.3"],
      ["transform", "transform:reference"], transform_stream(A, lv, inline=False, **common))
    B = _model(930, 4, 4, 10, 9, 1 << 30, 400)
    two = [dict(levels=coeff_levels(940, 2, 9, 4, 20), step_code=138, predictor=1,
                output_dtype=0, alphabet=64, max_tokens=9),
           dict(levels=coeff_levels(950, 2, 9, 4, 20), step_code=[130, 150, 160, 170],
                predictor=0, output_dtype=2, alphabet=64, max_tokens=9, num_tables=2)]
    P("transform_two_tracks", "two tracks (float32 and bfloat16 out, left and no prediction) "
      "sharing one square transform (K = D = 4)", ["6.7", "7.6.3"],
      ["transform", "tracks:2", "dtype:float32", "dtype:bfloat16"],
      transform_stream(B, None, tracks=two))
    C = tr.make_transform(np.array([(1 << 52) - 1, -(1 << 52) + 1, 12345]),
                          np.array([[(1 << 15) - 1, -(1 << 15) + 1, 7],
                                    [1, 2, 3], [-(1 << 15) + 1, 0, (1 << 15) - 1]]), 40, 40)
    P("transform_extremes", "the widest transform fields: mean ±(2^52 - 1) (mean_bits 53), "
      "basis ±(2^15 - 1) (basis_bits 16), coeff_frac_bits and basis_frac_bits 40, "
      "coefficient values ±2^23; pruned tokens without grid, float32 out", ["6.7", "7.6.3"],
      ["transform", "presence"],
      transform_stream(C, [_ints(960 + i, (5, 3), -1, 1) for i in range(2)], step_code=42,
                       output_dtype=0, alphabet=4, max_tokens=8,
                       positions=[[0, 2, 3, 5, 7], [1, 2, 4, 6, 7]]))
    Z = tr.make_transform(np.zeros(5, np.int64), _ints(970, (2, 5), -1, 1), 0, 0)
    P("transform_zero_mean_escapes", "no mean (mean_bits 0), a basis of 2-bit entries, "
      "coeff_frac_bits and basis_frac_bits 0, escapes and a frame step delta",
      ["6.7", "7.4.1", "7.6.3"], ["transform", "escapes"],
      transform_stream(Z, [_ints(980 + i, (6, 2), -300, 300) for i in range(2)],
                       step_code=144, frame_step_delta=6, alphabet=8, max_tokens=6))

    # negative: transform_data() and the transform unit (clause 6.7)
    N("transform_source_2", "transform_source 2 (reserved)", _row("9.1", "transform_source"),
      "TKBFormatError", "6.7", poke(T, "transform_source", 2, 0))
    c67 = _row("9.1", "`num_coeffs` not in")
    N("transform_num_channels_0", "a transform_data() with num_channels 0", c67,
      "TKBFormatError", "6.7", poke(T, "num_channels", 0, 0))
    N("transform_num_coeffs_0", "num_coeffs 0", c67, "TKBFormatError", "6.7",
      poke(T, "num_coeffs", 0, 0))
    N("transform_num_coeffs_above_channels", "num_coeffs 9 with num_channels 8", c67,
      "TKBFormatError", "6.7", poke(T, "num_coeffs", 9, 0))
    cbits = _row("9.1", "`coeff_frac_bits` or `basis_frac_bits` > 40")
    for el, v in (("coeff_frac_bits", 41), ("basis_frac_bits", 41), ("mean_bits", 54),
                  ("basis_bits", 1), ("basis_bits", 17)):
        N(f"transform_{el}_{v}", f"{el} {v}", cbits, "TKBFormatError", "6.7",
          poke(T, el, v, 0))
    h, units = split(T)
    cneg = _row("9.1", "most negative")
    for el, vals in (("mean", dict(mean=[-8, 1, 2, 3])), ("basis", dict(basis=[1] * 7 + [-8]))):
        v = dict(num_channels=4, num_coeffs=2, coeff_frac_bits=3, basis_frac_bits=2,
                 mean_bits=4, basis_bits=4, mean=[1, 2, 3, 4], basis=[1] * 8)
        v.update(vals)
        bad = bytes([0, 0]) + transform_data_bytes(**v)
        N(f"transform_{el}_most_negative", f"a {el} entry -2^(bits - 1) (-8 in 4 bits)", cneg,
          "TKBFormatError", "6.7", restream([Unit(5, 255, 1, bad)]))
    N("transform_unit_on_a_track", "a transform unit with track_id 0",
      _row("9.1", "transform unit (type 5"), "TKBFormatError", "6.2",
      restream([Unit(5, 0, 1, units[0].payload)] + units[1:]))
    main = header(2, 10) + T[16:]
    N("transform_unit_in_main_profile", "an essential unit of type 5 in a Main stream: "
      "reserved there as in version 1.0 (clause 6.2)", _row("9.4", "reserved `unit_type`"),
      "TKBUnsupportedError", "6.2", main)
    N("coding_mode_3_high", "coding_mode 3 in a High stream (reserved)",
      _row("9.1", "`coding_mode` not 0 or 1"), "TKBFormatError", "6.3",
      poke(T, "coding_mode", 3, 1))
    N("transform_data_cut", "a transform unit whose payload ends inside transform_data()'s "
      "fixed fields", _row("9.2", "the payload ends before its structure"),
      "TKBTruncatedError", "6.7", restream([Unit(5, 255, 1, units[0].payload[:9])] + units[1:]))
    N("transform_basis_beyond_payload", "a basis array longer than the rest of the payload "
      "(checked before it is read)", _row("9.2", "a transform's `mean` and `basis`"),
      "TKBTruncatedError", "7.1", restream([Unit(5, 255, 1, units[0].payload[:-3])] + units[1:]))
    big = bytes([0, 0]) + (4097).to_bytes(4, "little")
    N("transform_num_channels_above_level", "a transform of 4097 channels at level 10 "
      "(max_channels 4096)", _row("9.5", "`num_channels` > `max_channels` (inline"),
      "TKBLevelError", "8.2", restream([Unit(5, 255, 1, big + bytes(8))] + units[1:]))
    big = bytes([0, 0]) + (4096).to_bytes(4, "little") + (257).to_bytes(4, "little")
    N("transform_values_above_level", "K x D = 257 x 4096 > max_values 2^20 of level 10",
      _row("9.5", "`num_coeffs` × `num_channels`"), "TKBLevelError", "8.2",
      restream([Unit(5, 255, 1, big + bytes(8))] + units[1:]))
    cref = _row("9.6", "`transform_id` names no accepted transform")
    N("tps_transform_id_unknown", "a parameter set naming transform_id 7, which was never "
      "sent", cref, "TKBReferenceError", "6.3", poke(T, "transform_id", 7, 1))
    wide = _model(990, 9, 6, 12, 7, 1 << 18, 100)
    N("tps_transform_channels_differ", "a parameter set of 8 channels naming a transform of 9",
      cref, "TKBReferenceError", "6.3",
      restream([Unit(5, 255, 1, tr.transform_unit_payload(0, wide, True))] + units[1:]))
    ref = bytes([0, 1]) + bytes(range(32))
    N("transform_reference_not_supplied", "a transform by reference whose digest the suite "
      "does not supply", _row("9.6", "whose digest the application has not supplied"),
      "TKBReferenceError", "6.7", restream([Unit(5, 255, 1, ref)] + units[1:]))
    N("transform_redefined", "transform_id 0 sent again with other content",
      _row("9.6", "repeats the `transform_id`"), "TKBReferenceError", "6.7",
      restream(units[:2] + [Unit(5, 255, 1, tr.transform_unit_payload(0, B, True))]
           + units[2:]))
    O = tr.make_transform(np.zeros(2, np.int64), np.array([[3, 1], [1, -3]]), 40, 2)
    N("transform_coefficient_overflow", "levels 2 and 1 at step code 48 with coeff_frac_bits 40:"
      " Y = 2^25 and 2^24 > 2^24 - 1", _row("9.9", "transform coefficient value"), "TKBValueError",
      "7.6.3", transform_stream(O, [np.array([[2, 0], [1, 1]])], step_code=48, alphabet=8,
                                max_tokens=2))
    R("transform_reference_missing_cascade", "a transform by reference that is not supplied: "
      "the transform unit, its parameter set and the three frames are rejected, each with "
      "TKBReferenceError (clauses 6.7, 6.3, 6.4)", ["6.7", "6.3", "6.4", "9.10"],
      ["resilience", "transform:reference"], ["TKBReferenceError"] * 5,
      restream([Unit(5, 255, 1, ref)] + units[1:]))


def declare_merge_map() -> None:
    """Version 1.1 merge maps (clauses 6.4, 7.8) and the dense output (clause 10.4)."""
    P, N = positive, negative

    def high(units: list) -> bytes:
        return stream(units, profile=levels.PROFILE_HIGH, level=10, minor=1)

    # an encoder stream: CLS + 4x4 grid, half the grid kept (quadtree presence map)
    M = enc(F16, qp=-6, keep=0.5, predictor="up", merge_map=True, **GRID)
    P("merge_map_grid_prefix", "High profile: three frames of a 4x4 grid with a prefix "
      "token, half the grid tokens kept (quadtree presence map), each frame with a merge "
      "map (9 kept: 4-bit stand-ins); dense output fills the pruned positions",
      ["6.4", "7.8", "10.4"], ["merge_map", "presence", "dense"], M)
    lv = [_ints(1000 + i, (k, 3), -6, 6) for i, k in enumerate((5, 3, 7))]
    pos = [[0, 2, 3, 6, 9], [1, 4, 8], list(range(7))]
    P("merge_map_mixed_frames", "three frames without grid: the first with a merge map "
      "(5 kept of 10), the second pruned without one (its dense rows are zeros), the third "
      "without presence map; left prediction, float32 out", ["6.4", "7.8", "10.4"],
      ["merge_map", "presence", "dense"],
      high(track_units(0, *quantized_track(
          lv, step_code=140, predictor=1, output_dtype=0, alphabet=16, max_tokens=10,
          positions=pos, num_tokens=[10, 10, 7],
          merge_maps=[[4, 0, 1, 2, 3], None, "full"]))))
    one = quantized_track([_ints(1010, (1, 4), -3, 3)], step_code=150, alphabet=8,
                          grid=(2, 3), prefix=0, positions=[[4]],
                          merge_maps=[[0, 0, 0, 0, 0]])
    ONE = high(track_units(0, *one))
    P("merge_map_one_kept", "one kept token of a 2x3 grid: num_kept 1, so every stand_in "
      "has 0 bits and the merge map is empty; every dense row is the kept token's",
      ["6.4", "7.8", "10.4"], ["merge_map", "merge_map:0-bit"], ONE)
    A = model_a()
    T = transform_stream(A, [_ints(1020 + i, (6, 6), -4, 4) for i in range(2)], step_code=141,
                         alphabet=10, max_tokens=9, output_dtype=2,
                         positions=[[0, 1, 3, 4, 6, 8], [0, 2, 3, 4, 5, 7]],
                         merge_maps=[[5, 0, 3], None])
    P("merge_map_transform", "a transform track (coding_mode 2, bfloat16 out) with pruned "
      "frames, the first with a merge map", ["6.4", "6.7", "7.8", "10.4"],
      ["merge_map", "transform", "dense"], T)
    LL = enc(embeddings(1030, 2, 12, 4, "float32"), lossless=True, keep=0.5, merge_map=True)
    P("merge_map_lossless", "a lossless float32 track without grid, half the tokens kept, "
      "with merge maps (3-bit stand-ins): the dense rows are bit copies", ["6.4", "7.8"],
      ["merge_map", "coding_mode:1"], LL)

    # negative (clause 6.4 and the rows it adds to clause 9)
    fr = units_of(M, decoder.UNIT_FRAME)[0]
    tps, v = frame_values(M, fr)
    N("merge_map_stand_in_out_of_range", "a stand_in 9 with num_kept 9",
      _row("9.1", "a `stand_in` of the merge map"), "TKBFormatError", "6.4",
      rewrite_frame(M, fr, stand_ins=np.r_[v["stand_ins"][:-1], 9]))
    N("merge_map_nothing_pruned", "presence_present 2 on a frame whose presence map keeps "
      "every token", _row("9.1", "without pruned position"), "TKBFormatError", "6.4",
      high(track_units(0, *quantized_track([_ints(1040, (6, 2), -3, 3)], step_code=150,
                                           alphabet=8, max_tokens=6,
                                           positions=[list(range(6))], merge_maps=[[]]))))
    N("merge_map_nothing_kept", "presence_present 2 on a frame whose presence map keeps "
      "no token", _row("9.1", "without kept token"), "TKBFormatError", "6.4",
      high(track_units(0, *quantized_track([np.zeros((0, 2), np.int64)], step_code=150,
                                           alphabet=8, max_tokens=6, num_tokens=[6],
                                           positions=[[]], merge_maps=[[]]))))
    N("merge_map_alignment_bit", "merge_map_mixed_frames with the alignment bit after "
      "its first frame's merge map set (5 stand-ins of 3 bits, then 1 alignment bit)",
      _row("9.1", "the merge map,"), "TKBFormatError", "3.3", _merge_pad(lv, pos))
    N("merge_map_in_main_profile", "presence_present 2 (a merge map) in a Main stream: a "
      "TKBFormatError there, as in version 1.0", _row("9.1", "`presence_present` or"),
      "TKBFormatError", "6.4", header(2, 10) + M[16:])
    cut = find(M, "stand_in", fr)
    N("merge_map_truncated", "a frame payload that ends inside the merge map",
      _row("9.2", "the payload ends before its structure"), "TKBTruncatedError", "6.4",
      with_payload(M, fr, lambda p: p[:cut.bit_offset // 8 - unit_offsets(M)[fr] - 8 + 2]))


def _merge_pad(lv: list, pos: list) -> bytes:
    """merge_map_mixed_frames with the merge map's alignment bit set (clause 3.3)."""
    tps, frames = quantized_track(lv, step_code=140, predictor=1, output_dtype=0,
                                  alphabet=16, max_tokens=10, positions=pos,
                                  num_tokens=[10, 10, 7], merge_maps=[[4, 0, 1, 2, 3], None,
                                                                      "full"])
    data = stream(track_units(0, tps, frames), profile=levels.PROFILE_HIGH, level=10,
                  minor=1)
    return rewrite_frame(data, 1, merge_pad=1)


# -- expectations, universe, files ------------------------------------------------

VALUE_CLASSES = [
    ("version_minor", [0, 255], "minor versions a decoder ignores"),
    ("profile_idc", [1, 2, 3], "every profile"),
    ("level_idc", [10, 20, 30], "every level"),
    ("unit_type", [1, 2, 3, 4, 5], "every unit type of version 1.1"),
    ("unit_essential", [0, 1], "both values"),
    ("track_id", [0, 254, 255], "first track, last track, stream metadata"),
    ("track_kind", [0, 1], "embedding and ids tracks"),
    ("coding_mode", [0, 1, 2], "quantized, split and transform"),
    ("transform_source", [0, 1], "inline and by reference"),
    ("coeff_frac_bits", [0, 40], "minimum, maximum"),
    ("basis_frac_bits", [0, 40], "minimum, maximum"),
    ("mean_bits", [0, 53], "no mean, widest mean"),
    ("basis_bits", [2, 16], "narrowest, widest basis"),
    ("source_dtype", [0, 1, 2, 3], "every dtype"),
    ("output_dtype", [0, 1, 2, 3], "every dtype"),
    ("num_channels", [1, 4096], "minimum, max_channels of level 10"),
    ("vocab_size", [1, 1 << 20], "minimum, max_vocab of level 10"),
    ("grid_present", [0, 1], "with and without grid"),
    ("grid_height", [1, 7], "one row, irregular heights"),
    ("grid_width", [1, 7], "one column, irregular widths"),
    ("num_prefix_tokens", [0, 1, 4], "none, one, several"),
    ("predictor", [0, 1, 2], "every predictor"),
    ("per_channel_steps", [0, 1], "both values"),
    ("step_code", [0, 255], "smallest and largest step"),
    ("raw_bits", [0, 15, 31], "minimum, maximum of 16-bit and 32-bit dtypes"),
    ("num_lanes", [1, 256, 1024, 4096], "minimum, max_lanes of each level"),
    ("lane_steps", [1, 4096], "minimum, max_lane_steps of level 10"),
    ("prob_bits", list(range(1, 16)), "every table precision"),
    ("num_tables", [1, 16], "minimum, max_tables of level 10"),
    ("alphabet_size", [1, 4096], "minimum, max_alphabet"),
    ("random_access", [1], "the only value of version 1"),
    ("frame_number", [0, (1 << 32) - 1], "minimum, maximum"),
    ("num_tokens", [0, 1, 4096], "empty frame, one token, max_tokens of level 10"),
    ("presence_present", [0, 1, 2], "every value (2: a merge map, High profile)"),
    ("frame_step_delta", [-128, 0, 127], "minimum, zero, maximum"),
    ("token_scale_present", [0, 1], "both values"),
    ("token_step_delta", [-128, 127], "minimum, maximum"),
    ("escape_bits", [0, 26], "minimum, maximum"),
    ("key_length", [1, 255], "shortest and longest metadata key"),
]

NOT_COVERABLE = [
    ("level 20 and 30 maxima other than max_lanes (max_tokens, max_values, max_channels, "
     "max_vocab, max_unit_size ...)", "streams at those maxima are 10 MB to 2 GB; the suite "
     "stays under 10 MB. The maxima of level 10 are covered, and levels 20 and 30 share "
     "the decoding process"),
    ("max_tables of levels 20 and 30 (64, 255)", "needs as many channels; covered at "
     "level 10 (16), the check is the same"),
]

_ROW = re.compile(r"^\|\s*([^|]+?)\s*\|\s*(.+?)\s*\|\s*$")


def error_conditions(spec_dir: Path = SPEC_DIR) -> list:
    """The rows of the tables of clause 9 as {id, error_class, clause, text}; ids are
    "<clause of the class>-<row number>" (e.g. "9.1-3")."""
    out, cls, n = [], None, 0
    for line in (spec_dir / "9-errors.md").read_text(encoding="utf-8").splitlines():
        m = re.match(r"## (9\.\d+) (TKB\w+Error)", line)
        if m or line.startswith("## "):
            cls, n = (m.groups() if m else None), 0
            continue
        r = _ROW.match(line)
        if cls and r and not set(r.group(1)) <= set("-") and r.group(1) not in ("clause",
                                                                                  "where"):
            n += 1
            out.append(dict(id=f"{cls[0]}-{n}", error_class=cls[1], clause=r.group(1),
                            text=r.group(2)))
    return out


def universe(spec_dir: Path = SPEC_DIR) -> dict:
    elements = sorted({e.name for els in syntax.SYNTAX.values() for e in els}
                      | {"unit_crc32c", "token_present", "prefix_present", "node_present",
                         "stand_in"})
    return dict(elements=elements,
                error_classes=[c.__name__ for c in errors.ERROR_CLASSES],
                conditions=error_conditions(spec_dir),
                value_classes=[dict(id=f"{el}:{','.join(map(str, vals))}", element=el,
                                    values=vals, what=what) for el, vals, what in VALUE_CLASSES],
                not_coverable=[dict(item=i, why=w) for i, w in NOT_COVERABLE])


def outcome(data: bytes) -> dict:
    """The reference decoder's resilient result (clause 9.10) of a stream, with the
    suite's model transforms supplied (clause 6.7)."""
    try:
        s = decoder.decode(data, strict=False, transforms=list(model_transforms().values()))
        errs, frames, fatal = s.errors, s.frames, s.framing_error is not None
    except errors.TKBError as e:        # an error of the stream header is fatal
        errs, frames, fatal = [e], [], True
    h, hd = hashlib.sha256(), hashlib.sha256()
    for f in frames:
        h.update(canonical.frame_bytes(f))
        hd.update(canonical.frame_bytes(decoder.densify(f)))     # clause 10.4
    pruned = any(f.num_kept < f.num_tokens for f in frames)
    return dict(canonical_sha256=h.hexdigest(), frames=len(frames),
                dense_canonical_sha256=hd.hexdigest() if pruned else None,
                errors=[dict({"class": type(e).__name__}, clause=e.clause, element=e.element,
                             offset=e.offset) for e in errs], fatal=fatal)


def _elements(data: bytes) -> tuple[list, dict]:
    names, values = set(), {}
    for e in tracing.walk(data):
        if not isinstance(e, tracing.Element):
            continue
        names.add(e.leaf)
        names.update(p.split("[", 1)[0] for p in e.name.split(".")[:-1])
        v = e.value
        if isinstance(v, str) and re.match(r"^\d+ \(", v):     # "1 (track_parameter_set)"
            v = int(v.split(" ", 1)[0])
        if isinstance(v, (int, np.integer)):
            vals = [int(v)]
        elif isinstance(v, np.ndarray) and v.ndim == 1 and v.size <= 4096 and \
                e.leaf in ("step_code", "token_step_delta", "table_map"):
            vals = np.unique(v).tolist()
        else:
            continue
        values.setdefault(e.leaf, set()).update(vals)
    if any(n in names for n in ("token_present", "prefix_present", "node_present")):
        names.add("presence_map")
    if "stand_in" in names:
        names.add("merge_map")
    kept = {}
    for k, vs in sorted(values.items()):
        vs = sorted(vs)
        kept[k] = vs if len(vs) <= VALUES_KEPT else vs[:VALUES_KEPT // 2] + vs[-VALUES_KEPT // 2:]
    return sorted(names), kept


def _check(v: Vector, out: dict, conditions: dict) -> None:
    got = [e["class"] for e in out["errors"]]
    where = f"conformance stream {v.name}"
    if v.suite == "positive" and got:
        raise AssertionError(f"{where}: the reference decoder reports {out['errors']}")
    if v.suite == "resilience" and got != v.errors:
        raise AssertionError(f"{where}: errors {got}, declared {v.errors}")
    if v.suite == "negative":
        if not got:
            raise AssertionError(f"{where}: accepted by the reference decoder")
        cls, clause = v.error
        first = out["errors"][0]
        if first["class"] != cls or (clause is not None and first["clause"] != clause):
            raise AssertionError(f"{where}: first error {first}, declared {cls} {clause}")
        if clause is None:      # truncation families: the clause of the structure
            v.clauses = [first["clause"]]
            if first["clause"] not in ("6.3", "6.4", "6.5", "6.6", "6.7", "7.1"):   # 9.2
                raise AssertionError(f"{where}: truncation reported in clause "
                                     f"{first['clause']}")
        try:
            decoder.decode(v.data, strict=True, transforms=list(model_transforms().values()))
        except errors.TKBError as e:
            if type(e).__name__ != cls:
                raise AssertionError(f"{where}: strict decoding raises {e!r}") from None
        else:
            raise AssertionError(f"{where}: strict decoding accepts it")
    for c in v.conditions:
        if c not in conditions:
            raise AssertionError(f"{where}: no condition {c} in clause 9")
        if conditions[c]["error_class"] not in got:
            raise AssertionError(f"{where}: condition {c} is a {conditions[c]['error_class']}"
                                 f", the stream gives {got}")


def _profile(data: bytes) -> tuple:
    try:
        h = decoder.parse_stream_header(data)
    except errors.TKBError:
        idc = data[6] if len(data) > 7 else None
        lvl = data[7] if len(data) > 7 else None
        return "any", idc, lvl, 10
    return levels.PROFILES[h.profile_idc], h.profile_idc, h.level_idc, h.level_idc


def build(spec_dir: Path = SPEC_DIR, progress=None) -> tuple[dict, dict, dict]:
    """(manifest, {file name: stream bytes}, {file name: trace text})."""
    VECTORS.clear()
    declare_positive()
    declare_resilience()
    declare_negative()
    declare_transform()
    declare_merge_map()
    uni = universe(spec_dir)
    conds = {c["id"]: c for c in uni["conditions"]}
    entries, files, traces = [], {}, {}
    for i, v in enumerate(VECTORS):
        out = outcome(v.data)
        _check(v, out, conds)
        dense = out.pop("dense_canonical_sha256")
        if dense is not None and v.suite == "positive":     # clause 11.1
            out["dense_canonical_sha256"] = dense
        elements, values = _elements(v.data)
        prof, pidc, lidc, lvl = _profile(v.data)
        if v.suite == "negative" and any(c.startswith(("9.4-1", "9.4-2", "9.4-3", "9.1-3",
                                                       "9.1-4", "9.2-1", "9.3-1"))
                                         for c in v.conditions):
            prof = "any"         # header errors: every decoder must reject them
        lines = list(tracing.lines(v.data))
        if len(lines) > TRACE_LINES:
            lines = lines[:TRACE_LINES] + [f"... {len(lines) - TRACE_LINES} more lines "
                                           f"(tkb trace streams/{v.name}.tkb)"]
        files[f"streams/{v.name}.tkb"] = v.data
        traces[f"traces/{v.name}.txt"] = "\n".join(lines) + "\n"
        entry = dict(name=v.name, suite=v.suite, description=v.description,
                            clauses=v.clauses, features=v.features, conditions=v.conditions,
                            elements=elements, element_values=values, profile=prof,
                            profile_idc=pidc, level_idc=lidc, level=lvl, bytes=len(v.data),
                            stream_sha256=hashlib.sha256(v.data).hexdigest(),
                            trace=f"traces/{v.name}.txt", expect=out)
        needed = referenced_transforms(v.data)
        if needed:      # transforms the application supplies (clause 6.7, harness 11.2)
            entry["transforms"] = needed
        entries.append(entry)
        if progress:
            progress(i + 1, len(VECTORS))
    for hexd, t in model_transforms().items():
        files[f"transforms/{hexd}.tkbt"] = tkbt.dumps(t)
    manifest = dict(format=MANIFEST_FORMAT, spec_version="1.1",
                    generated_by="tkb conformance reference", universe=uni, streams=entries)
    return manifest, files, traces


def manifest_text(manifest: dict) -> str:
    """JSON with one line per stream (small, and diffs show which streams changed)."""
    def dump(x):
        return json.dumps(x, ensure_ascii=False, separators=(",", ":"))
    head = {k: v for k, v in manifest.items() if k not in ("universe", "streams")}
    parts = [f" {dump(k)}: {dump(v)}" for k, v in head.items()]
    uni = manifest["universe"]
    parts.append(' "universe": {\n' + ",\n".join(
        f"  {dump(k)}: [\n" + ",\n".join(f"   {dump(x)}" for x in v) + "]"
        for k, v in uni.items()) + "}")
    parts.append(' "streams": [\n' + ",\n".join(f"  {dump(st)}" for st in
                                                 manifest["streams"]) + "]")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def _suite_files(suite: Path) -> dict:
    out = {}
    for sub in ("streams", "traces", "transforms"):
        for p in sorted((suite / sub).glob("*")):
            out[f"{sub}/{p.name}"] = p.read_bytes()
    mf = suite / "manifest.json"
    if mf.exists():
        out["manifest.json"] = mf.read_bytes()
    return out


def write_suite(out: Path, manifest: dict, files: dict, traces: dict) -> None:
    """Write the suite into ``out``, removing streams and traces no longer declared."""
    for sub in ("streams", "traces", "transforms"):
        d = out / sub
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    for name, data in files.items():
        (out / name).write_bytes(data)
    for name, text in traces.items():
        (out / name).write_text(text, encoding="utf-8")
    (out / "manifest.json").write_text(manifest_text(manifest), encoding="utf-8")


def stale(suite: Path, manifest: dict, files: dict, traces: dict) -> list:
    """Files of ``suite`` that differ from a fresh generation (missing, changed, extra)."""
    want = dict(files)
    want.update({k: v.encode("utf-8") for k, v in traces.items()})
    want["manifest.json"] = manifest_text(manifest).encode("utf-8")
    have = _suite_files(suite)
    return sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))


def matrix_inputs() -> list:
    """Named inputs of the interop matrix (``tkb conformance matrix``): (name, array,
    encoder options in the vocabulary of TrackOptions)."""
    return [
        ("float16_grid", embeddings(50, 2, 17, 8), dict(qp=-6, grid=[4, 4], prefix_tokens=1)),
        ("float32_left", embeddings(51, 2, 20, 6, "float32"), dict(qp=-9, predictor="left")),
        ("bfloat16_pruned", embeddings(52, 2, 17, 8, "bfloat16"),
         dict(qp=-6, keep=0.5, grid=[4, 4], prefix_tokens=1, source_dtype="bfloat16")),
        ("float16_lossless", embeddings(53, 2, 17, 8),
         dict(lossless=True, grid=[4, 4], prefix_tokens=1)),
        ("float32_lossless", embeddings(54, 1, 9, 4, "float32"), dict(lossless=True)),
        ("ids", token_ids(55, 2, 30, 500), dict(vocab_size=500)),
        ("float16_lanes", embeddings(56, 1, 40, 8),
         dict(qp=-6, num_lanes=5, lane_steps=16, exact_lanes=True, num_tables=2,
              prob_bits=10)),
    ]


def main(argv=None) -> int:
    """``tkb conformance reference``: regenerate the suite (or ``--check`` it)."""
    p = argparse.ArgumentParser(prog="tkb conformance reference",
                                description="Regenerate the conformance streams, traces and "
                                            "manifest from their declarations (clause 11).")
    p.add_argument("--out", type=Path, default=SUITE_DIR, help="suite directory (default: "
                   "the package's conformance/)")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 when the suite differs from a fresh generation")
    p.add_argument("--spec", type=Path, default=SPEC_DIR, help="the spec/ directory (its "
                   "clause 9 lists the error conditions)")
    p.add_argument("-q", "--quiet", action="store_true")
    a = p.parse_args(argv)
    if not (a.spec / "9-errors.md").exists():
        print(f"tkb conformance reference: error: {a.spec}/9-errors.md not found (give --spec)",
              file=sys.stderr)
        return 2

    def progress(i, n):
        if not a.quiet and sys.stderr.isatty():
            print(f"\r{i}/{n} streams", end="" if i < n else "\n", file=sys.stderr)
    manifest, files, traces = build(a.spec, progress)
    if a.check:
        diff = stale(a.out, manifest, files, traces)
        if diff:
            print(f"the conformance suite in {a.out} is stale: {len(diff)} file(s) differ "
                  f"from a fresh generation, e.g. {', '.join(diff[:5])}; run "
                  "`tkb conformance reference` and commit", file=sys.stderr)
            return 1
        if not a.quiet:
            print(f"the conformance suite in {a.out} is up to date "
                  f"({len(manifest['streams'])} streams)")
        return 0
    write_suite(a.out, manifest, files, traces)
    if not a.quiet:
        streams = {k: b for k, b in files.items() if k.startswith("streams/")}
        size = sum(len(b) for b in streams.values())
        counts = {k: sum(s["suite"] == k for s in manifest["streams"])
                  for k in ("positive", "negative", "resilience")}
        print(f"wrote {len(streams)} streams ({size} bytes: {counts}) and "
              f"{len(files) - len(streams)} transforms to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
