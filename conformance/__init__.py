"""The TKB conformance suite (spec clause 11): test bitstreams, their expected
results, and the harness that runs any decoder on them.

Installed as ``tokenbits.conformance``.  A *suite* is a directory holding
``manifest.json``, ``streams/<name>.tkb`` and ``traces/<name>.txt``; the suite
of this package is this directory, written by ``tkb conformance reference``
(:mod:`.generate`) and committed.

``manifest.json`` (format 1)::

    {"format": 1, "spec_version": "1.0",
     "generated_by": "tkb conformance reference",
     "universe": {                       # what coverage is measured against
        "elements": [...],               # every syntax element of clause 5
        "error_classes": [...],          # the nine classes of clause 9
        "conditions": [{"id", "error_class", "clause", "text"}],   # rows of clause 9
        "value_classes": [{"id", "element", "values", "what"}],    # min / max / boundary
        "not_coverable": [{"item", "why"}]},
     "streams": [STREAM, ...]}

    STREAM = {
     "name": "...",                      # streams/<name>.tkb, traces/<name>.txt
     "suite": "positive" | "negative" | "resilience",
     "description": "...",
     "clauses": [...],                   # spec clauses exercised; for a negative
                                         # stream the first is the violated one
     "features": ["dtype:float16", ...],
     "conditions": [...],                # ids of universe.conditions it triggers
     "elements": [...],                  # syntax elements present (from the trace)
     "element_values": {name: [v, ...]}, # distinct values of scalar elements (<= 64)
     "profile": "Lossless" | "Main" | "any",   # "any": every decoder must handle it
     "profile_idc": int | null, "level_idc": int | null,   # from the stream header
     "level": 10 | 20 | 30,              # the level a decoder needs for it
     "bytes": int, "stream_sha256": "...", "trace": "traces/<name>.txt",
     "expect": {
        "canonical_sha256": "...",       # resilient decode (clause 9.10), clause 10.2
        "frames": int,                   # decoded frames of that decode
        "errors": [{"class", "clause", "element", "offset"}, ...],   # in order
        "fatal": bool}}                  # the last error ends the stream

A decoder passes a **positive** stream when it reports no error and its
canonical digest equals ``expect.canonical_sha256``; a **negative** stream
when it reports an error whose class is that of ``expect.errors[0]`` (the
first error, clause 9.0); a **resilience** stream (a damaged unit among good
ones) when its digest is equal and it reports the classes of
``expect.errors`` in order.  A strict decoder (one that stops at the first
error) cannot pass resilience streams: they are "not supported" for it.
"""
from __future__ import annotations

import json
from pathlib import Path

SUITE_DIR = Path(__file__).resolve().parent
MANIFEST_FORMAT = 1


def load_manifest(suite_dir: Path | str | None = None) -> dict:
    """The manifest of a suite directory (default: the suite of this package)."""
    path = Path(suite_dir or SUITE_DIR) / "manifest.json"
    with open(path, encoding="utf-8") as f:
        m = json.load(f)
    if m.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path}: manifest format {m.get('format')!r}, this harness reads "
                         f"format {MANIFEST_FORMAT}")
    return m
