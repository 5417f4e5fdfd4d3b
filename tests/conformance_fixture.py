"""A small conformance suite built with the reference encoder, for the harness tests
(``python tests/conformance_fixture.py DIR`` writes one).

The manifest follows the schema of ``tokenbits.conformance`` (format 1); every
``expect`` is computed with the reference decoder.  Elements, conditions, value
classes and the universe are small hand-made lists, so that the coverage the
tests expect is known by construction.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

import tokenbits as tb
from tokenbits.decoder import UNIT_FRAME

sys.path.insert(0, str(Path(__file__).resolve().parent))
import streamtools as st  # noqa: E402

ERROR_CLASSES = ["TKBFormatError", "TKBTruncatedError", "TKBCRCError", "TKBUnsupportedError",
                 "TKBLevelError", "TKBReferenceError", "TKBTableError", "TKBEntropyError",
                 "TKBValueError"]
ELEMENTS_ALL = ["magic", "header_crc32c", "unit_size", "tps_id", "frame_number", "num_tokens"]
UNIVERSE = {
    "elements": ELEMENTS_ALL + ["presence_map"],
    "error_classes": ERROR_CLASSES,
    "conditions": [
        {"id": "crc-header", "error_class": "TKBCRCError", "clause": "6.1",
         "text": "header_crc32c mismatch"},
        {"id": "crc-unit", "error_class": "TKBCRCError", "clause": "6.2",
         "text": "unit_crc32c mismatch"},
        {"id": "trunc-unit", "error_class": "TKBTruncatedError", "clause": "6.2",
         "text": "the unit extends beyond the end of the stream"},
        {"id": "entropy-final-state", "error_class": "TKBEntropyError", "clause": "7.3.2",
         "text": "an active lane does not end in state RANS_L"},
    ],
    "value_classes": [
        {"id": "source-f16", "element": "source_dtype", "values": [1], "what": "float16"},
        {"id": "source-f32-f16", "element": "source_dtype", "values": [0, 1],
         "what": "float32 and float16"},
        {"id": "source-bf16", "element": "source_dtype", "values": [2], "what": "bfloat16"},
    ],
    "not_coverable": [{"item": "TKBLevelError on max_tracks",
                       "why": "needs more tracks than this fixture writes"}],
}
#: what the reference decoder covers on this suite (the tests compare with it)
FULL_COVERAGE = {"elements": (6, 7), "error_classes": (2, 9), "conditions": (3, 4),
                 "value_classes": (2, 3)}


def _rng(seed):
    return np.random.default_rng(seed)


def _flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    b = bytearray(data)
    b[offset] ^= mask
    return bytes(b)


def _frame_payload_byte(data: bytes, nth: int = 0, byte: int = 4) -> int:
    """Offset of a payload byte of the nth frame unit."""
    return st.unit_offset(data, st.units_of(data, UNIT_FRAME)[nth]) + 8 + byte


def streams() -> list:
    """(name, suite, profile, description, clauses, features, elements, element_values,
    conditions, data) of each fixture stream."""
    f16 = _rng(1).standard_normal((2, 16, 8)).astype(np.float16)
    f16_one = _rng(2).standard_normal((1, 16, 8)).astype(np.float16)
    f16_three = _rng(3).standard_normal((3, 16, 8)).astype(np.float16)
    f32 = _rng(4).standard_normal((2, 8, 4)).astype(np.float32)
    f32_l20 = _rng(5).standard_normal((1, 8, 4)).astype(np.float32)
    ids = _rng(6).integers(0, 50, (2, 12)).astype(np.uint32)
    enc = dict(backend="reference")
    p_f16 = tb.encode(f16, qp=-6, **enc)
    p_f32 = tb.encode(f32, lossless=True, **enc)
    p_ids = tb.encode(ids, vocab_size=50, **enc)
    p_l20 = tb.encode(f32_l20, qp=-6, level_idc=20, **enc)
    one = tb.encode(f16_one, qp=-6, **enc)
    three = tb.encode(f16_three, qp=-6, **enc)
    base = ["6.1", "6.2", "6.3", "6.4", "7.3", "10.1"]
    sv = lambda *v: {"source_dtype": list(v)}  # noqa: E731
    return [
        ("pos_f16_qp", "positive", "Main", "two float16 frames at qp -6", base,
         ["dtype:float16", "frames:2"], ELEMENTS_ALL, sv(1), [], p_f16),
        ("pos_f32_lossless", "positive", "Lossless", "two float32 frames, lossless",
         base + ["7.4.2"], ["dtype:float32", "lossless"], ELEMENTS_ALL, sv(0), [], p_f32),
        ("pos_ids", "positive", "Lossless", "two frames of token ids, vocabulary 50",
         base + ["7.4.2"], ["ids"], ELEMENTS_ALL, sv(3), [], p_ids),
        ("pos_f32_level20", "positive", "Main", "one float32 frame in a level 20 stream",
         base + ["8.2"], ["dtype:float32", "level:20"], ELEMENTS_ALL, sv(0), [], p_l20),
        ("neg_header_crc", "negative", "any", "the stream header's CRC has a flipped bit",
         ["6.1", "9.3"], ["damage:crc"], ["magic", "header_crc32c"], {}, ["crc-header"],
         _flip(p_ids, 12)),
        ("neg_frame_crc", "negative", "any", "a payload byte of the only frame unit is "
         "flipped", ["6.2", "9.3"], ["damage:crc"], ELEMENTS_ALL, sv(1), ["crc-unit"],
         _flip(one, _frame_payload_byte(one))),
        ("neg_truncated", "negative", "any", "the stream ends inside its last unit",
         ["6.2", "9.2"], ["damage:truncation"], ["magic", "header_crc32c", "unit_size"],
         sv(1), ["trunc-unit"], p_f16[:-6]),
        ("res_frame_crc", "resilience", "Main", "the CRC of the middle of three frame units "
         "is broken; the other two decode", ["9.10", "6.2"], ["damage:crc", "frames:3"],
         ELEMENTS_ALL, sv(1), ["crc-unit"], _flip(three, _frame_payload_byte(three, 1))),
    ]


def expect(data: bytes) -> dict:
    """expect.* of a stream, from the reference decoder (resilient, clause 9.10)."""
    try:
        s = tb.decode(data, strict=False, backend="reference")
    except tb.TKBError as e:
        return {"canonical_sha256": hashlib.sha256(b"").hexdigest(), "frames": 0,
                "errors": [_err(e)], "fatal": True}
    return {"canonical_sha256": tb.canonical_sha256(s), "frames": len(s.frames),
            "errors": [_err(e) for e in s.errors], "fatal": s.framing_error is not None}


def _err(e) -> dict:
    return {"class": type(e).__name__, "clause": e.clause, "element": e.element,
            "offset": e.offset}


def build_suite(root) -> dict:
    """Write the fixture suite into ``root``; returns its manifest."""
    root = Path(root)
    (root / "streams").mkdir(parents=True, exist_ok=True)
    (root / "traces").mkdir(exist_ok=True)
    entries = []
    for name, kind, profile, desc, clauses, feats, elems, values, conds, data in streams():
        (root / "streams" / f"{name}.tkb").write_bytes(data)
        (root / "traces" / f"{name}.txt").write_text(f"(fixture trace of {name})\n")
        head = data[:16]
        entries.append({
            "name": name, "suite": kind, "description": desc, "clauses": clauses,
            "features": feats, "conditions": conds, "elements": elems,
            "element_values": values, "profile": profile,
            "profile_idc": head[6] if len(head) == 16 else None,
            "level_idc": head[7] if len(head) == 16 else None,
            "level": head[7] if len(head) == 16 and head[7] in (10, 20, 30) else 10,
            "bytes": len(data), "stream_sha256": hashlib.sha256(data).hexdigest(),
            "trace": f"traces/{name}.txt", "expect": expect(data)})
    manifest = {"format": 1, "spec_version": "1.0", "generated_by": "tests/conformance_fixture.py",
                "universe": UNIVERSE, "streams": entries}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


if __name__ == "__main__":
    m = build_suite(sys.argv[1])
    print(f"{sys.argv[1]}: {len(m['streams'])} streams")
