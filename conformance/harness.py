"""The conformance harness (spec clause 11): runs a decoder on a suite, judges
every stream by the pass rules of :mod:`tokenbits.conformance`, reports
(table, JSON, JUnit XML), measures coverage, and checks encoders against
decoders (the interop matrix).

States of a stream: ``pass``, ``fail``, ``error`` (the decoder crashed or
misbehaved), ``timeout``, ``not-supported`` (outside the claimed profile or
level, a resilience stream for a strict decoder, or declined by the decoder).
"""
from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import os
import json
import struct
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import SUITE_DIR, load_manifest
from .adapters import (DEFAULT_TIMEOUT, TRANSFORM_DIR_ENV, UNKNOWN_ERROR, AdapterError,
                       Decoder, NotSupported,
                       decode_reference, default_jobs, make_decoder)

STATES = ("pass", "fail", "error", "timeout", "not-supported")
KINDS = ("positive", "negative", "resilience")
PROFILES = ("Lossless", "Main")
LEVELS = (10, 20, 30)
BAD_STATES = ("fail", "error", "timeout")


class SuiteError(ValueError):
    """A suite directory or manifest that cannot be used."""


# -- suites and filters -------------------------------------------------------------

@dataclass
class Suite:
    path: Path
    manifest: dict

    @property
    def streams(self) -> list:
        return self.manifest["streams"]

    def stream_path(self, s: dict) -> Path:
        return self.path / "streams" / f"{s['name']}.tkb"


@contextlib.contextmanager
def transform_dir(suite: Suite):
    """The suite's transforms/ folder in the environment of every decoder run
    (TKB_TRANSFORM_DIR, see adapters): where a decoder finds the transforms that
    streams name by SHA-256 (clause 6.7), each as transforms/<sha256>.tkbt."""
    old = os.environ.get(TRANSFORM_DIR_ENV)
    d = suite.path / "transforms"
    if d.is_dir():
        os.environ[TRANSFORM_DIR_ENV] = str(d.resolve())
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(TRANSFORM_DIR_ENV, None)
        else:
            os.environ[TRANSFORM_DIR_ENV] = old


def load_suite(path=None) -> Suite:
    """A suite directory (default: the package's own suite)."""
    p = Path(path) if path else SUITE_DIR
    if not p.is_dir():
        raise SuiteError(f"suite {p}: no such directory")
    if not (p / "manifest.json").is_file():
        raise SuiteError(f"suite {p}: no manifest.json (generate the suite with "
                         "'tkb conformance reference')")
    try:
        m = load_manifest(p)
    except json.JSONDecodeError as e:
        raise SuiteError(f"suite {p}: manifest.json is not valid JSON: {e}") from None
    except ValueError as e:
        raise SuiteError(str(e)) from None
    streams = m.get("streams")
    if not isinstance(streams, list):
        raise SuiteError(f"suite {p}: manifest.json has no list of streams")
    seen = set()
    for i, s in enumerate(streams):
        for key in ("name", "suite", "expect"):
            if key not in s:
                raise SuiteError(f"suite {p}: stream #{i} has no {key!r}")
        if s["suite"] not in KINDS:
            raise SuiteError(f"suite {p}: stream {s['name']}: suite {s['suite']!r} is not "
                             f"one of {', '.join(KINDS)}")
        if s["name"] in seen:
            raise SuiteError(f"suite {p}: stream name {s['name']!r} appears twice")
        seen.add(s["name"])
    return Suite(p, m)


def parse_level(text) -> int:
    """10, 20, 30 (1, 2, 3 are accepted for 10, 20, 30)."""
    try:
        n = int(str(text).strip())
    except ValueError:
        n = None
    if n in (1, 2, 3):
        n *= 10
    if n not in LEVELS:
        raise ValueError(f"level {text!r}: expected 10, 20 or 30 (or 1, 2, 3)")
    return n


def parse_profile(text) -> str:
    for p in PROFILES:
        if str(text).strip().lower() == p.lower():
            return p
    raise ValueError(f"profile {text!r}: expected Lossless or Main")


def select(streams: list, kinds=None, globs=None) -> list:
    """The streams of the given suite kinds whose names match one of ``globs``."""
    out = []
    for s in streams:
        if kinds and s["suite"] not in kinds:
            continue
        if globs and not any(fnmatch.fnmatchcase(s["name"], g) for g in globs):
            continue
        out.append(s)
    return out


def outside_claim(s: dict, profile: str | None, level: int | None) -> str | None:
    """Why a stream is outside a decoder's claimed profile / level (clause 8)."""
    sp = s.get("profile", "any")
    if profile == "Lossless" and sp not in ("Lossless", "any"):
        return f"profile {sp} is outside the claimed profile Lossless"
    lv = s.get("level")
    if level is not None and lv is not None and lv > level:
        return f"needs level {lv}, above the claimed level {level}"
    return None


# -- canonical output: where two outputs differ (clause 10.1, Table 10-1) --------------

_HEAD = ("track_id", "frame_number", "num_tokens", "num_kept", "num_channels", "dtype")
_VALUE = {0: ("<f4", 4), 1: ("<f2", 2), 2: ("bf16", 2), 3: ("<u4", 4)}


def _value_text(b: bytes, dtype: int) -> str:
    if len(b) == 0:
        return "nothing"
    code, size = _VALUE.get(dtype, ("?", len(b)))
    if len(b) < size:
        return f"{len(b)} byte(s) {b.hex()}"
    raw = int.from_bytes(b[:size], "little")
    if code == "<u4":
        return str(raw)
    if code == "bf16":
        v = np.frombuffer((raw << 16).to_bytes(4, "little"), "<f4")[0]
    else:
        v = np.frombuffer(b[:size], code)[0]
    return f"0x{raw:0{2 * size}x} ({float(v):.8g})"


def records(canonical: bytes) -> list:
    """(offset, head tuple, size) of each frame record; stops at a malformed one."""
    out, pos = [], 0
    while pos + 24 <= len(canonical):
        head = struct.unpack_from("<6I", canonical, pos)
        vsize = _VALUE.get(head[5], (None, None))[1]
        if vsize is None:
            break
        size = 24 + 4 * head[3] + vsize * head[3] * head[4]
        out.append((pos, head, size))
        pos += size
    return out


def locate(canonical: bytes, offset: int) -> str:
    """The frame record and field of ``canonical`` that holds byte ``offset``."""
    for i, (pos, head, size) in enumerate(records(canonical)):
        if offset < pos + size:
            rel = offset - pos
            frame = f"frame {i} (track {head[0]}, frame_number {head[1]})"
            if rel < 24:
                return f"{frame}, {_HEAD[rel // 4]}"
            rel -= 24
            if rel < 4 * head[3]:
                return f"{frame}, positions[{rel // 4}]"
            rel -= 4 * head[3]
            k = rel // _VALUE[head[5]][1]
            t, c = divmod(k, max(head[4], 1))
            return f"{frame}, values[{t}, {c}]"
    return f"after the last frame record ({len(records(canonical))} frames)"


def _field_range(canonical: bytes, offset: int):
    """(start, end, dtype or None for a u32) of the field holding ``offset``."""
    for pos, head, size in records(canonical):
        if offset < pos + size:
            rel = offset - pos
            if rel < 24 + 4 * head[3]:
                start = pos + rel // 4 * 4
                return start, start + 4, 3
            vs = _VALUE[head[5]][1]
            start = pos + 24 + 4 * head[3] + (rel - 24 - 4 * head[3]) // vs * vs
            return start, start + vs, head[5]
    return None


def describe_difference(expected: bytes, got: bytes | None) -> str:
    """The first byte where ``got`` differs from ``expected``, as frame and field."""
    got = got or b""
    n = min(len(expected), len(got))
    diff = next((i for i in range(n) if expected[i] != got[i]), None) if \
        expected[:n] != got[:n] else None
    if diff is None:
        if len(got) == len(expected):
            return "outputs are identical"
        if len(got) < len(expected):
            if not got:
                return (f"no output; expected {len(expected)} bytes "
                        f"({len(records(expected))} frames)")
            return (f"output ends early at byte {len(got)} of {len(expected)}, inside "
                    f"{locate(expected, len(got))}")
        extra = records(got[len(expected):]) if len(got) > len(expected) else []
        what = (f" (frame record(s) of frame_number {', '.join(str(h[1]) for _, h, _ in extra)})"
                if extra else "")
        return (f"{len(got) - len(expected)} extra bytes after the expected "
                f"{len(records(expected))} frame records{what}")
    where = locate(expected, diff)
    rng = _field_range(expected, diff)
    if rng is None:
        return f"first difference at byte {diff}: {where}"
    start, end, dtype = rng
    return (f"first difference at byte {diff} of {len(expected)}: {where}: expected "
            f"{_value_text(expected[start:end], dtype)}, got "
            f"{_value_text(got[start:end], dtype)}")


# -- judging (the pass rules of tokenbits.conformance) ------------------------------

@dataclass
class StreamResult:
    """The result of one stream."""
    name: str
    suite: str
    state: str
    seconds: float = 0.0
    note: str = ""
    clauses: list = field(default_factory=list)
    description: str = ""
    profile: str = "any"
    level: int | None = None
    expected_errors: list = field(default_factory=list)
    expected_sha256: str | None = None
    errors: list | None = None         # classes reported (None: did not run)
    sha256: str | None = None           # digest of its canonical output
    output_bytes: int | None = None
    detail: str = ""                    # the decoder's own text (stderr, messages)


def _classes(errors: list) -> str:
    return "[" + ", ".join("(no error class reported)" if e == UNKNOWN_ERROR else e
                           for e in errors) + "]"


def _reference_canonical(path: Path) -> bytes:
    return decode_reference(path.read_bytes()).canonical or b""


def _digest_note(s: dict, path: Path, canonical: bytes | None, expect_sha: str) -> str:
    """Why a canonical output has the wrong digest (clause 10.2)."""
    got_sha = hashlib.sha256(canonical or b"").hexdigest()
    ref = _reference_canonical(path)
    note = (f"canonical digest {got_sha[:16]}... differs from the expected "
            f"{expect_sha[:16]}...: {describe_difference(ref, canonical)}")
    if canonical is None:
        note = "wrote no canonical output; " + note
    if hashlib.sha256(ref).hexdigest() != expect_sha:
        note += (" (the reference decoder's output does not match the manifest either: "
                 "the suite may be out of date)")
    return note


def judge(s: dict, path: Path, res) -> tuple:
    """(state, note) of a decoder's DecodeResult on stream ``s``."""
    exp = s["expect"]
    want = [e["class"] for e in exp.get("errors", [])]
    got = list(res.errors)
    sha = res.sha256
    kind = s["suite"]
    clauses = s.get("clauses") or ["?"]
    if kind == "positive":
        if got:
            return "fail", (f"reported {_classes(got)} on a valid stream (expected no error)"
                            + (f": {res.detail.splitlines()[0]}" if res.detail.strip() else ""))
        if sha != exp["canonical_sha256"]:
            return "fail", _digest_note(s, path, res.canonical, exp["canonical_sha256"])
        return "pass", ""
    if not want:
        return "error", f"manifest: {kind} stream without expected errors"
    first = exp["errors"][0]
    if kind == "negative":
        if not got:
            return "fail", (f"accepted a stream that violates clause {clauses[0]} "
                            f"(expected {want[0]}: {s.get('description', '')})")
        if got[0] == UNKNOWN_ERROR:
            return "fail", (f"rejected the stream but no error class reported (expected "
                            f"{want[0]}, clause {first.get('clause', clauses[0])})")
        if got[0] != want[0]:
            return "fail", (f"expected {want[0]} (clause {first.get('clause', clauses[0])}), "
                            f"got {got[0]}")
        return "pass", ""
    notes = []                                   # resilience (clause 9.10)
    if got != want:
        if not got:
            notes.append(f"reported no error; expected {_classes(want)} in order "
                         f"(clause {first.get('clause', clauses[0])})")
        else:
            notes.append(f"expected errors {_classes(want)} in order, got {_classes(got)}")
    if sha != exp["canonical_sha256"]:
        notes.append(_digest_note(s, path, res.canonical, exp["canonical_sha256"]))
    return ("fail", "; ".join(notes)) if notes else ("pass", "")


# -- running a suite -----------------------------------------------------------------

class Progress:
    """A counter on stderr: rewritten in place on a terminal, a line every 10 s
    otherwise; nothing when quiet."""

    def __init__(self, total: int, quiet: bool = False, what: str = "streams"):
        self.total, self.n, self.what = total, 0, what
        self.on = not quiet and total > 0
        self.tty = sys.stderr.isatty()
        self.last = time.monotonic()

    def __call__(self) -> None:
        self.n += 1
        if not self.on:
            return
        if self.tty:
            print(f"\r[{self.n}/{self.total}] {self.what}", end="", file=sys.stderr, flush=True)
        elif time.monotonic() - self.last > 10:
            self.last = time.monotonic()
            print(f"tkb conformance: {self.n}/{self.total} {self.what}", file=sys.stderr)

    def done(self) -> None:
        if self.on and self.tty:
            print("\r" + " " * 40 + "\r", end="", file=sys.stderr, flush=True)


@dataclass
class RunReport:
    """Everything about one run of a decoder on a suite."""
    suite: Suite
    decoder: Decoder
    results: list
    profile: str | None = None
    level: int | None = None
    kinds: list | None = None
    globs: list | None = None
    timeout: float = DEFAULT_TIMEOUT
    jobs: int = 1
    seconds: float = 0.0
    unavailable: str | None = None

    def totals(self, kind: str | None = None) -> dict:
        t = {st: 0 for st in STATES}
        for r in self.results:
            if kind is None or r.suite == kind:
                t[r.state] += 1
        t["streams"] = sum(t[st] for st in STATES)
        return t

    @property
    def exit_status(self) -> int:
        return 1 if any(r.state in BAD_STATES for r in self.results) else 0

    def coverage(self) -> dict:
        passing = {r.name for r in self.results if r.state == "pass"}
        return coverage(self.suite.manifest, [s for s in self.suite.streams
                                              if s["name"] in passing])

    def to_json(self) -> dict:
        return {
            "format": 1, "tool": "tkb conformance run", "suite": str(self.suite.path),
            "decoder": {"name": self.decoder.name, "spec": self.decoder.spec,
                        "kind": self.decoder.kind, "resilient": self.decoder.resilient,
                        "unavailable": self.unavailable},
            "claims": {"profile": self.profile, "level": self.level},
            "filters": {"suite_kinds": self.kinds, "streams": self.globs},
            "timeout_s": self.timeout, "jobs": self.jobs, "seconds": round(self.seconds, 3),
            "exit_status": self.exit_status,
            "totals": self.totals(),
            "by_kind": {k: self.totals(k) for k in KINDS},
            "results": [asdict(r) for r in self.results],
            "coverage": self.coverage(),
        }


def run_suite(decoder: Decoder, suite: Suite, profile: str | None = None,
              level: int | None = None, kinds=None, globs=None, jobs: int | None = None,
              timeout: float = DEFAULT_TIMEOUT, quiet: bool = True) -> RunReport:
    """Run ``decoder`` on the selected streams of ``suite`` and judge each one."""
    t0 = time.perf_counter()
    jobs = jobs or default_jobs()
    streams = select(suite.streams, kinds, globs)
    results, todo = {}, []
    unavailable = decoder.unavailable()
    for s in streams:
        r = StreamResult(s["name"], s["suite"], "not-supported",
                         clauses=list(s.get("clauses", [])),
                         description=s.get("description", ""), profile=s.get("profile", "any"),
                         level=s.get("level"),
                         expected_errors=[e["class"] for e in s["expect"].get("errors", [])],
                         expected_sha256=s["expect"].get("canonical_sha256"))
        results[s["name"]] = r
        path = suite.stream_path(s)
        why = outside_claim(s, profile, level)
        if why is None and s["suite"] == "resilience" and not decoder.resilient:
            why = "a strict decoder does not continue after an error (clause 9.10)"
        if why is None and unavailable:
            why = unavailable
        if why:
            r.note = why
            continue
        if not path.is_file():
            r.state, r.note = "error", f"suite: stream file {path} is missing"
            continue
        want = s.get("stream_sha256")
        if want and hashlib.sha256(path.read_bytes()).hexdigest() != want:
            r.state, r.note = "error", (f"suite: {path.name} does not match its "
                                        "stream_sha256 in the manifest")
            continue
        todo.append((s, path, r))
    progress = Progress(len(todo), quiet)
    with transform_dir(suite):
        outcomes = decoder.run_many([str(p) for _, p, _ in todo], jobs, timeout, progress)
    progress.done()
    for (s, path, r), o in zip(todo, outcomes):
        r.seconds = o.seconds
        if o.state != "done":
            r.state, r.note = o.state, o.message
            continue
        res = o.result
        r.errors, r.sha256 = list(res.errors), res.sha256
        r.output_bytes = None if res.canonical is None else len(res.canonical)
        r.detail = res.detail
        r.state, r.note = judge(s, path, res)
    _check_dense(decoder, suite, todo, results, jobs, timeout, quiet)
    return RunReport(suite, decoder, [results[s["name"]] for s in streams], profile, level,
                     list(kinds) if kinds else None, list(globs) if globs else None,
                     timeout, jobs, time.perf_counter() - t0, unavailable)


def _check_dense(decoder: Decoder, suite: Suite, todo: list, results: dict, jobs, timeout,
                 quiet) -> None:
    """Clause 11.2: a decoder that produces dense output (``{dense}`` in its command, a
    ``dense`` keyword in a Python adapter) is run again on the passing positive streams
    that have a dense canonical digest; a different digest fails the stream."""
    dense = [(s, path, results[s["name"]]) for s, path, _ in todo
             if s["suite"] == "positive" and s["expect"].get("dense_canonical_sha256")
             and results[s["name"]].state == "pass"]
    if not dense or not getattr(decoder, "dense", False):
        return
    progress = Progress(len(dense), quiet, "dense outputs")
    with transform_dir(suite):
        outcomes = decoder.run_many([(str(p), True) for _, p, _ in dense], jobs, timeout,
                                    progress)
    progress.done()
    for (s, path, r), o in zip(dense, outcomes):
        want = s["expect"]["dense_canonical_sha256"]
        if o.state != "done":
            r.state, r.note = o.state, f"dense output (clause 10.4): {o.message}"
        elif o.result.errors:
            r.state, r.note = "fail", (f"reported {_classes(o.result.errors)} when asked for "
                                       "the dense output (clause 10.4)")
        elif o.result.sha256 != want:
            r.state, r.note = "fail", (f"dense canonical digest {o.result.sha256[:16]}... "
                                       f"differs from the expected {want[:16]}... (clause "
                                       "10.4)")


# -- coverage ---------------------------------------------------------------------------

def coverage(manifest: dict, passing: list) -> dict:
    """What of ``manifest.universe`` the passing streams exercise.  Error classes:
    of a negative stream the first expected error (the one its pass rule checks,
    clause 9.0), of a resilience stream every expected error."""
    u = manifest.get("universe") or {}
    elements, classes, conditions, clauses, features = set(), set(), set(), set(), set()
    values: dict = {}
    for s in passing:
        elements.update(s.get("elements", []))
        conditions.update(s.get("conditions", []))
        clauses.update(s.get("clauses", []))
        features.update(s.get("features", []))
        errs = [e["class"] for e in s["expect"].get("errors", [])]
        if s["suite"] == "negative":
            classes.update(errs[:1])
        elif s["suite"] == "resilience":
            classes.update(errs)
        if s["suite"] == "positive":      # value classes: values of valid streams only
            for k, vs in (s.get("element_values") or {}).items():
                values.setdefault(k, []).extend(vs)

    def part(universe: list, covered: set) -> dict:
        return {"covered": sum(1 for x in universe if x in covered), "total": len(universe),
                "missing": [x for x in universe if x not in covered]}

    out = {"passing_streams": len(passing),
           "elements": part(u.get("elements", []), elements),
           "error_classes": part(u.get("error_classes", []), classes)}
    conds = u.get("conditions", [])
    c = part([x["id"] for x in conds], conditions)
    text = {x["id"]: x for x in conds}
    c["missing"] = [{"id": i, "error_class": text[i].get("error_class"),
                     "clause": text[i].get("clause"), "text": text[i].get("text")}
                    for i in c["missing"]]
    out["conditions"] = c
    vcs = u.get("value_classes", [])
    met = [v["id"] for v in vcs
           if all(x in values.get(v["element"], []) for x in v.get("values", []))]
    out["value_classes"] = {"covered": len(met), "total": len(vcs),
                            "missing": [{"id": v["id"], "element": v["element"],
                                         "values": v.get("values"), "what": v.get("what")}
                                        for v in vcs if v["id"] not in met]}
    for key, got in (("clauses", clauses), ("features", features)):
        if u.get(key):
            out[key] = part(u[key], got)
            out[key]["list"] = sorted(got, key=_natural)
        else:
            out[key] = {"covered": len(got), "total": None, "missing": [],
                        "list": sorted(got, key=_natural)}
    out["not_coverable"] = list(u.get("not_coverable", []))
    return out


def _natural(x: str):
    return [(0, int(p), "") if p.isdigit() else (1, 0, p)
            for p in str(x).replace(":", ".").split(".")]


def render_coverage(cov: dict) -> str:
    lines = [f"coverage (from {cov['passing_streams']} passing streams):"]
    for key, label in (("elements", "syntax elements"), ("error_classes", "error classes"),
                       ("conditions", "error conditions"), ("value_classes", "value classes"),
                       ("clauses", "clauses"), ("features", "features")):
        c = cov[key]
        if c["total"] is None:
            lines.append(f"  {label:18} {c['covered']} exercised: {', '.join(c['list']) or '-'}")
            continue
        lines.append(f"  {label:18} {c['covered']}/{c['total']}")
        for m in c["missing"]:
            if key == "conditions":
                lines.append(f"      missing {m['id']}: {m['error_class']}, clause "
                             f"{m['clause']}: {m['text']}")
            elif key == "value_classes":
                lines.append(f"      missing {m['id']}: {m['element']} = "
                             f"{', '.join(map(str, m['values'] or []))}"
                             + (f" ({m['what']})" if m.get("what") else ""))
            else:
                lines.append(f"      missing {m}")
    nc = cov.get("not_coverable") or []
    if nc:
        lines.append(f"  not coverable by a stream ({len(nc)}):")
        for x in nc:
            lines.append(f"      {x.get('item')}: {x.get('why')}")
    return "\n".join(lines)


# -- reports ------------------------------------------------------------------------------

_LABEL = {"pass": "pass", "fail": "FAIL", "error": "ERROR", "timeout": "TIMEOUT",
          "not-supported": "not-supported"}


def _ms(s: float) -> str:
    return f"{s * 1000:.1f}ms" if s < 10 else f"{s:.1f}s"


def _totals_text(t: dict) -> str:
    return (", ".join(f"{t[st]} {st.replace('-', ' ')}" for st in STATES)
            + f" ({t['streams']} stream{'s' * (t['streams'] != 1)})")


def render_table(rep: RunReport) -> str:
    lines = [f"decoder {rep.decoder.describe()} on suite {rep.suite.path}"
             + (f", claimed profile {rep.profile}" if rep.profile else "")
             + (f", level {rep.level}" if rep.level else "")]
    if rep.unavailable:
        lines.append(f"decoder unavailable here: {rep.unavailable}")
    w = min(max([len(r.name) for r in rep.results] + [6]), 48)
    lines.append(f"{'STATE':13} {'STREAM':{w}} {'TIME':>9}  NOTE")
    for r in rep.results:
        t = _ms(r.seconds) if r.state not in ("not-supported",) or r.seconds else "-"
        lines.append(f"{_LABEL[r.state]:13} {r.name:{w}} {t:>9}  {r.note}".rstrip())
    bad = [r for r in rep.results if r.state in BAD_STATES]
    if bad:
        lines.append("")
        lines.append("problems:")
        for r in bad:
            lines.append(f"{_LABEL[r.state]} {r.name} ({r.suite}, clauses "
                         f"{', '.join(r.clauses) or '-'}): {r.description}")
            lines.append(f"    {r.note}")
            if r.errors is not None and r.suite == "negative" and len(r.errors) > 1:
                lines.append(f"    reported {_classes(r.errors)}")
            if r.detail.strip():
                for d in r.detail.strip().splitlines()[-4:]:
                    lines.append(f"    | {d[:200]}")
    lines.append("")
    lines.append(f"totals: {_totals_text(rep.totals())} in {rep.seconds:.1f}s")
    for k in KINDS:
        t = rep.totals(k)
        if t["streams"]:
            lines.append(f"  {k:11} {_totals_text(t)}")
    return "\n".join(lines)


def junit_xml(rep: RunReport) -> bytes:
    """JUnit XML: a testsuite per suite kind, a testcase per stream."""
    root = ET.Element("testsuites", name=f"tkb conformance: {rep.decoder.name}")
    all_t = rep.totals()
    root.set("tests", str(all_t["streams"]))
    root.set("failures", str(all_t["fail"]))
    root.set("errors", str(all_t["error"] + all_t["timeout"]))
    root.set("skipped", str(all_t["not-supported"]))
    root.set("time", f"{rep.seconds:.3f}")
    for k in KINDS:
        rs = [r for r in rep.results if r.suite == k]
        if not rs:
            continue
        t = rep.totals(k)
        ts = ET.SubElement(root, "testsuite", name=k, tests=str(t["streams"]),
                           failures=str(t["fail"]), errors=str(t["error"] + t["timeout"]),
                           skipped=str(t["not-supported"]),
                           time=f"{sum(r.seconds for r in rs):.3f}")
        for r in rs:
            tc = ET.SubElement(ts, "testcase", name=r.name, classname=f"tkb.conformance.{k}",
                               time=f"{r.seconds:.3f}")
            text = (f"clauses {', '.join(r.clauses)}: {r.description}\n{r.note}"
                    + (f"\n{r.detail}" if r.detail.strip() else ""))
            if r.state == "fail":
                ET.SubElement(tc, "failure", message=r.note, type="fail").text = text
            elif r.state in ("error", "timeout"):
                ET.SubElement(tc, "error", message=r.note, type=r.state).text = text
            elif r.state == "not-supported":
                ET.SubElement(tc, "skipped", message=r.note)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


# -- list -------------------------------------------------------------------------------

def list_info(suite: Suite, profile=None, level=None, kinds=None, globs=None) -> dict:
    """Suite kinds with counts, the streams, and features -> streams."""
    chosen = select(suite.streams, kinds, globs)
    outside = [s["name"] for s in chosen if outside_claim(s, profile, level)]
    streams = [s for s in chosen if s["name"] not in set(outside)]
    feats: dict = {}
    for s in streams:
        for f in s.get("features", []):
            feats.setdefault(f, []).append(s["name"])
    m = suite.manifest
    return {"suite": str(suite.path), "format": m.get("format"),
            "spec_version": m.get("spec_version"),
            "counts": {k: sum(1 for s in streams if s["suite"] == k) for k in KINDS},
            "outside_claim": outside,
            "streams": [{"name": s["name"], "suite": s["suite"],
                         "profile": s.get("profile"), "level": s.get("level"),
                         "bytes": s.get("bytes"), "clauses": s.get("clauses", []),
                         "description": s.get("description", ""),
                         "features": s.get("features", [])} for s in streams],
            "features": {f: feats[f] for f in sorted(feats, key=_natural)}}


def render_list(info: dict) -> str:
    c = info["counts"]
    lines = [f"suite {info['suite']} (format {info['format']}, spec {info['spec_version']}): "
             f"{sum(c.values())} streams"]
    for k in KINDS:
        lines.append(f"  {k:11} {c[k]}")
    if info["outside_claim"]:
        lines.append(f"  ({len(info['outside_claim'])} more outside the claimed profile / "
                     "level, not listed)")
    lines.append("")
    w = min(max([len(s["name"]) for s in info["streams"]] + [6]), 48)
    cw = min(max([len(",".join(s["clauses"])) for s in info["streams"]] + [7]), 24)
    lines.append(f"{'STREAM':{w}} {'KIND':10} {'PROFILE':8} {'LEVEL':>5} {'BYTES':>7}  "
                 f"{'CLAUSES':{cw}}  DESCRIPTION")
    for s in info["streams"]:
        lines.append(f"{s['name']:{w}} {s['suite']:10} {str(s['profile']):8} "
                     f"{str(s['level']):>5} {str(s['bytes']):>7}  "
                     f"{','.join(s['clauses']) or '-':{cw}}  {s['description']}")
    if info["features"]:
        lines.append("")
        lines.append("features:")
        fw = max(len(f) for f in info["features"])
        for f, names in info["features"].items():
            lines.append(f"  {f:{fw}}  {len(names):3}  {', '.join(names)}")
    return "\n".join(lines)


# -- interop matrix -------------------------------------------------------------------------

def matrix_inputs() -> list:
    """The inputs of the interop matrix: ``tokenbits.conformance.generate.matrix_inputs()``,
    a list of (name, array, encoder options)."""
    from . import generate
    return list(generate.matrix_inputs())


#: TrackOptions (and encode) keywords -> tkb encode flags
_FLAGS = {"qp": "--qp", "bpv": "--bpv", "target_cos": "--target-cos", "keep": "--keep",
          "prefix_tokens": "--prefix", "predictor": "--predictor",
          "output_dtype": "--output-dtype", "num_tables": "--tables",
          "prob_bits": "--prob-bits", "num_lanes": "--lanes", "lane_steps": "--lane-steps",
          "vocab_size": "--vocab-size", "level_idc": "--level"}
_DEFAULTS = {"per_channel_steps": False, "token_scale": True, "source_dtype": None,
             "max_tokens": None}


def encode_flags(opts: dict) -> list:
    """``tkb encode`` flags for encoder options; NotSupported for an option without one."""
    out = []
    for k, v in opts.items():
        if v is None:
            continue
        if k in _FLAGS:
            out += [_FLAGS[k], str(v)]
        elif k == "lossless":
            out += ["--lossless"] if v else []
        elif k == "exact_lanes":
            out += ["--exact-lanes"] if v else []
        elif k == "grid":
            out += ["--grid", f"{int(v[0])}x{int(v[1])}"]
        elif k == "index":
            out += [] if v else ["--no-index"]
        elif k == "meta":
            for mk, mv in dict(v).items():
                out += ["--meta", f"{mk}={mv}"]
        elif k in _DEFAULTS and v == _DEFAULTS[k]:
            continue
        else:
            raise NotSupported(f"option {k}={v!r} has no tkb encode flag")
    return out


class Encoder:
    """An encoder of the matrix: ``reference``, ``gpu``, ``module:attr`` (a callable
    ``encode(array, **options) -> bytes``) or a command template ``cmd:... {input}
    {output} {flags}``: ``{input}`` a .npy file (a .safetensors file holding one BF16
    tensor for a bfloat16 input), ``{output}`` the .tkb to write, ``{flags}`` the
    options as ``tkb encode`` flags (an option without a flag makes the input "n/a"
    for it); exit status 0 ok, 4 not supported, else a failure."""

    def __init__(self, spec: str, timeout: float = DEFAULT_TIMEOUT):
        import shlex
        import shutil
        self.spec, self.timeout = spec.strip(), timeout
        s = self.spec
        self.name = s
        self.words = None
        if s.startswith("cmd:") or "{input}" in s:
            t = s[4:].strip() if s.startswith("cmd:") else s
            try:
                self.words = shlex.split(t)
            except ValueError as e:
                raise AdapterError(f"encoder command {t!r}: {e}") from None
            if not self.words or not any("{input}" in w for w in self.words) or \
                    not any("{output}" in w for w in self.words):
                raise AdapterError(f"encoder command {t!r} needs {{input}} and {{output}}")
            if shutil.which(self.words[0]) is None:
                raise AdapterError(f"encoder command {t!r}: program {self.words[0]!r} not found")
            self.kind = "command"
        elif s in ("reference", "gpu"):
            self.kind = s
        elif ":" in s:
            from .adapters import _PY_SPEC_RE, _import_target
            m = _PY_SPEC_RE.match(s)
            if not m:
                raise AdapterError(f"encoder {s!r} is not module:attr")
            try:
                obj = _import_target(m["mod"])
                for part in m["attr"].split("."):
                    obj = getattr(obj, part)
            except AdapterError:
                raise
            except Exception as e:
                raise AdapterError(f"encoder {s}: {type(e).__name__}: {e}") from None
            self.fn = getattr(obj, "encode", obj)
            if not callable(self.fn):
                raise AdapterError(f"encoder {s}: not callable")
            self.kind = "python"
        else:
            raise AdapterError(f"cannot tell what encoder {s!r} is: reference, gpu, "
                               "module:attr, or a command template with {input} {output}")

    def unavailable(self) -> str | None:
        if self.kind == "gpu":
            from .adapters import gpu_unavailable
            return gpu_unavailable()
        return None

    def encode(self, array: np.ndarray, opts: dict, workdir: Path) -> bytes:
        """The stream of one input; NotSupported, or RuntimeError with the reason."""
        import tokenbits
        if self.kind in ("reference", "gpu"):
            from tokenbits.errors import TKBBackendError
            try:
                return tokenbits.encode(array, backend=self.kind, **_plain(opts))
            except TKBBackendError as e:
                raise NotSupported(str(e)) from None
        if self.kind == "python":
            return bytes(self.fn(array, **_plain(opts)))
        return self._run_command(array, opts, workdir)

    def _run_command(self, array, opts, workdir: Path) -> bytes:
        import subprocess
        opts = dict(opts)
        if opts.get("source_dtype") == "bfloat16":   # bit patterns: .npy has no bfloat16
            opts.pop("source_dtype")
            src = workdir / "input.safetensors"
            write_bf16_safetensors(src, array)
        else:
            src = workdir / "input.npy"
            np.save(src, array)
        flags = encode_flags(opts)
        dst = workdir / "output.tkb"
        if dst.exists():
            dst.unlink()
        argv = []
        for w in self.words:
            if w == "{flags}":
                argv += flags
            else:
                argv.append(w.replace("{input}", str(src)).replace("{output}", str(dst))
                            .replace("{flags}", " ".join(flags)))
        try:
            p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                               timeout=self.timeout, start_new_session=True)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"encoder timed out after {self.timeout:g} s") from None
        except OSError as e:
            raise RuntimeError(f"cannot run {argv[0]}: {e}") from None
        err = p.stderr.decode("utf-8", "replace").strip()
        if p.returncode == 4:
            raise NotSupported(err.splitlines()[-1] if err else "exit status 4")
        if p.returncode != 0:
            raise RuntimeError(f"encoder exit status {p.returncode}"
                               + (f": {err.splitlines()[-1]}" if err else ""))
        if not dst.is_file():
            raise RuntimeError("encoder wrote no output file")
        return dst.read_bytes()


def write_bf16_safetensors(path: Path, bits: np.ndarray, name: str = "tokens") -> None:
    """One BF16 tensor (given as uint16 bit patterns) in a .safetensors file."""
    bits = np.ascontiguousarray(bits, dtype="<u2")
    header = json.dumps({name: {"dtype": "BF16", "shape": list(bits.shape),
                                "data_offsets": [0, bits.nbytes]}}).encode()
    header += b" " * (-len(header) % 8)
    Path(path).write_bytes(len(header).to_bytes(8, "little") + header + bits.tobytes())


def _plain(opts: dict) -> dict:
    o = dict(opts)
    if isinstance(o.get("grid"), list):
        o["grid"] = tuple(o["grid"])
    return o


def _is_lossless(arr: np.ndarray, opts: dict) -> bool:
    """Lossless coding, or token ids (integers that are not bfloat16 bit patterns)."""
    return bool(opts.get("lossless")) or (arr.dtype.kind in "iu"
                                          and opts.get("source_dtype") != "bfloat16")


def _bit_equal(decoded: np.ndarray, original: np.ndarray, opts: dict) -> str | None:
    """Why decoded values are not the lossless input, bit for bit (None: they are)."""
    dec = np.asarray(decoded)
    org = np.asarray(original)
    if dec.size != org.size:
        return f"decoded {dec.size} values, the input has {org.size}"
    dec = dec.reshape(org.shape)
    if org.dtype.kind in "iu":
        ok = np.array_equal(dec.astype(np.int64), org.astype(np.int64))
    elif dec.dtype.itemsize != org.dtype.itemsize:
        return f"decoded dtype {dec.dtype} differs from the input's {org.dtype}"
    else:
        u = {2: np.uint16, 4: np.uint32}[org.dtype.itemsize]
        neq = dec.view(u) != org.view(u)
        if neq.any():
            i = tuple(int(x) for x in np.argwhere(neq)[0])
            return (f"decoded values differ from the input at {list(i)}: "
                    f"0x{int(dec.view(u)[i]):x} != 0x{int(org.view(u)[i]):x}")
        ok = True
    return None if ok else "decoded token ids differ from the input"


@dataclass
class MatrixReport:
    encoders: list           # names
    decoders: list           # names
    inputs: list             # names
    valid: dict              # encoder -> {input: (status, note)}
    cells: dict              # (encoder, decoder) -> {input: (status, note)}
    notes: dict              # encoder / decoder name -> why unavailable
    seconds: float = 0.0

    @staticmethod
    def summary(row: dict) -> tuple:
        """(text, failed) of one cell: 'pass 12/12', 'FAIL 9/12', 'n/a'."""
        run = [v for v in row.values() if v[0] != "n/a"]
        ok = sum(1 for v in run if v[0] == "pass")
        na = len(row) - len(run)
        if not run:
            return "n/a", False
        failed = ok < len(run)
        text = f"{'FAIL' if failed else 'pass'} {ok}/{len(run)}" + (f" ({na} n/a)" if na else "")
        return text, failed

    @property
    def exit_status(self) -> int:
        rows = list(self.valid.values()) + list(self.cells.values())
        return 1 if any(self.summary(r)[1] for r in rows) else 0

    def to_json(self) -> dict:
        def rows(d):
            return {i: {"status": s, "note": n} for i, (s, n) in d.items()}
        return {"format": 1, "tool": "tkb conformance matrix", "encoders": self.encoders,
                "decoders": self.decoders, "inputs": self.inputs, "unavailable": self.notes,
                "valid": {e: {"summary": self.summary(r)[0], "inputs": rows(r)}
                          for e, r in self.valid.items()},
                "cells": [{"encoder": e, "decoder": d, "summary": self.summary(r)[0],
                           "pass": not self.summary(r)[1], "inputs": rows(r)}
                          for (e, d), r in self.cells.items()],
                "exit_status": self.exit_status, "seconds": round(self.seconds, 3)}

    def render(self) -> str:
        legend, short = [], {}

        def label(names, prefix):       # long command templates get a short label
            out = []
            for name in names:
                if len(name) > 24:
                    n = sum(1 for x in legend if x.startswith(prefix)) + 1
                    legend.append(f"{prefix}{n} = {name}")
                    short[name] = f"{prefix}{n}"
                out.append(short.get(name, name))
            return out
        rows = label(self.encoders, "E")
        cols = ["valid"] + label(self.decoders, "D")
        table = [[r] + [self.summary(self.valid[e])[0]]
                 + [self.summary(self.cells[(e, d)])[0] for d in self.decoders]
                 for r, e in zip(rows, self.encoders)]
        head = ["encoder \\ decoder"] + cols
        widths = [max(len(str(r[i])) for r in table + [head]) for i in range(len(head))]
        lines = [f"interop matrix: {len(self.inputs)} input{'s' * (len(self.inputs) != 1)}; "
                 "a cell is inputs passed / "
                 "inputs run",
                 "  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
        for r in table:
            lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
        lines += [f"  {x}" for x in legend]
        for who, why in self.notes.items():
            lines.append(f"n/a {who}: {why}")
        bad = []
        for e in self.encoders:
            for i, (st, note) in self.valid[e].items():
                if st == "fail":
                    bad.append(f"  {short.get(e, e)} (valid): {i}: {note}")
            for d in self.decoders:
                for i, (st, note) in self.cells[(e, d)].items():
                    if st == "fail":
                        bad.append(f"  {short.get(e, e)} x {short.get(d, d)}: {i}: {note}")
        if bad:
            lines.append("failing inputs:")
            lines += bad
        lines.append("matrix: " + ("all cells pass" if not self.exit_status
                                   else "FAILING cells"))
        return "\n".join(lines)


def run_matrix(encoders: list, decoders: list, inputs: list | None = None,
               jobs: int | None = None, timeout: float = DEFAULT_TIMEOUT,
               quiet: bool = True) -> MatrixReport:
    """Every encoder x every decoder over the same inputs.  A cell (e, d) passes an
    input when e's stream decodes under d with no error, d's canonical output equals
    the reference decoder's on that stream (clause 10), the stream is valid (the
    strict reference decoder accepts it) and, for a lossless input, the decoded
    values are the input bit for bit."""
    import tokenbits
    from concurrent.futures import ThreadPoolExecutor
    t0 = time.perf_counter()
    inputs = matrix_inputs() if inputs is None else list(inputs)
    names = [n for n, _, _ in inputs]
    if len(set(names)) != len(names):
        raise ValueError("matrix inputs have duplicate names")
    jobs = jobs or default_jobs()
    notes = {}
    enc_names = [e.name for e in encoders]
    dec_names = [d.name for d in decoders]
    for label, group in (("encoder", enc_names), ("decoder", dec_names)):
        if len(set(group)) != len(group):
            raise ValueError(f"the same {label} is given twice")
    valid, cells = {}, {}
    streams = {}           # (encoder, input) -> Path, for the valid ones to decode
    facts = {}             # (encoder, input) -> (status, note) before decoding
    ref_out = {}
    with tempfile.TemporaryDirectory(prefix="tkb-matrix-") as tmp:
        tmp = Path(tmp)
        for ei, enc in enumerate(encoders):
            why = enc.unavailable()
            if why:
                notes[enc.name] = why

            def one(ii, enc=enc, ei=ei, why=why):
                name, arr, opts = inputs[ii]
                if why:
                    return ii, None, ("n/a", why)
                wd = tmp / f"e{ei}_i{ii}"
                wd.mkdir()
                try:
                    return ii, enc.encode(arr, opts, wd), None
                except NotSupported as e:
                    return ii, None, ("n/a", f"encoder: {e}")
                except Exception as e:
                    return ii, None, ("fail", f"encoder failed: {type(e).__name__}: {e}")

            n_par = jobs if enc.kind == "command" else 1
            with ThreadPoolExecutor(n_par) as ex:
                done = list(ex.map(one, range(len(inputs))))
            valid[enc.name] = {}
            for ii, data, status in done:
                name, arr, opts = inputs[ii]
                key = (enc.name, name)
                if status:
                    valid[enc.name][name] = status
                    facts[key] = status
                    continue
                path = tmp / f"e{ei}_i{ii}.tkb"
                path.write_bytes(data)
                try:
                    tokenbits.decode(data, strict=True, backend="reference")
                    valid[enc.name][name] = ("pass", "")
                except tokenbits.TKBError as e:
                    valid[enc.name][name] = ("fail", f"the reference decoder rejects the "
                                                     f"stream: {type(e).__name__}: {e}")
                    facts[key] = ("fail", "invalid stream (the reference decoder rejects it)")
                ref = decode_reference(data)
                ref_out[key] = ref.canonical or b""
                if key not in facts and _is_lossless(arr, opts):
                    try:
                        s = tokenbits.decode(data, strict=False, backend="reference")
                        why_not = _bit_equal(tokenbits.to_array(s, 0), arr, opts)
                    except tokenbits.TKBError as e:
                        why_not = f"cannot read the decoded values: {e}"
                    if why_not:
                        facts[key] = ("fail", f"lossless input not reproduced: {why_not}")
                streams[key] = path
        keys = [k for k in streams]
        for dec in decoders:
            why = dec.unavailable()
            if why:
                notes[dec.name] = why
            todo = [] if why else [k for k in keys if k not in facts]
            progress = Progress(len(todo), quiet, f"streams ({dec.name})")
            outs = dec.run_many([str(streams[k]) for k in todo], jobs, timeout, progress)
            progress.done()
            got = dict(zip(todo, outs))
            for enc in encoders:
                row = {}
                for name in names:
                    key = (enc.name, name)
                    if why:
                        row[name] = ("n/a", why)
                        continue
                    if key in facts:
                        row[name] = facts[key]
                        continue
                    o = got[key]
                    if o.state == "not-supported":
                        row[name] = ("n/a", f"decoder: {o.message}")
                    elif o.state != "done":
                        row[name] = ("fail", f"decoder {o.state}: {o.message}")
                    elif o.result.errors:
                        row[name] = ("fail", f"decoder reported {_classes(o.result.errors)} "
                                             "on a valid stream")
                    elif (o.result.canonical or b"") != ref_out[key]:
                        row[name] = ("fail", "canonical output differs from the reference "
                                             "decoder's: " + describe_difference(
                                                 ref_out[key], o.result.canonical))
                    else:
                        row[name] = ("pass", "")
                cells[(enc.name, dec.name)] = row
    return MatrixReport(enc_names, dec_names, names, valid, cells, notes,
                        time.perf_counter() - t0)


def make_decoders(specs: list, strict: bool = False) -> list:
    return [make_decoder(s, strict) for s in specs]


def write_json(path: str, obj) -> None:
    """Write JSON to a file ('-': standard output)."""
    text = json.dumps(obj, indent=1, sort_keys=False, default=str) + "\n"
    if path == "-":
        sys.stdout.write(text)
    else:
        Path(path).write_text(text, encoding="utf-8")


__all__ = ["Suite", "SuiteError", "load_suite", "select", "outside_claim", "judge",
           "run_suite", "RunReport", "StreamResult", "coverage", "render_coverage",
           "render_table", "junit_xml", "list_info", "render_list", "describe_difference",
           "locate", "Encoder", "encode_flags", "matrix_inputs",
           "run_matrix", "MatrixReport", "make_decoders", "parse_level", "parse_profile",
           "write_json"]
