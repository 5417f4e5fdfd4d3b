"""Stream validator (``tkb validate``): every constraint of clauses 5 to 9 on one
stream, the clause each violation breaks, and whether the stream's claimed profile
(clause 8.1) and level (clause 8.2) fit what it uses.

The checks are those of the reference decoder run in resilient mode (clause
9.10), so that every unit is checked, not only up to the first error; the
validator adds the profile and level analysis and reports facts an encoder
implementer wants to know (units skipped, parameter sets unused, no index).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from . import decoder, levels
from .errors import TKBError


@dataclass
class Finding:
    severity: str            # "error" (the stream does not conform) or "note"
    clause: str
    message: str
    error_class: str | None = None
    element: str | None = None
    offset: int | None = None


@dataclass
class Report:
    profile: str | None = None
    level_idc: int | None = None
    units: int = 0
    frames: int = 0
    tracks: int = 0
    needed_profile: str | None = None
    needed_level: int | None = None
    findings: list = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["valid"] = self.valid
        return d


def _error(e: TKBError) -> Finding:
    return Finding("error", e.clause, e.message, type(e).__name__, e.element, e.offset)


def validate(data: bytes, transforms=None) -> Report:
    """Check ``data`` against every constraint of the specification; ``transforms``:
    those the stream may name by SHA-256 (clause 6.7)."""
    rep = Report()
    try:
        s = decoder.decode(data, strict=False, transforms=transforms)
    except TKBError as e:                    # a fatal error of the stream header
        rep.findings.append(_error(e))
        return rep
    h = s.header
    rep.profile = levels.PROFILES[h.profile_idc]
    rep.level_idc = h.level_idc
    rep.units, rep.frames, rep.tracks = len(s.units), len(s.frames), len(s.tracks)
    rep.findings += [_error(e) for e in s.errors]
    sets = [t for track in s.tracks.values() for t in track.values()]
    if sets:
        lossless = all(t["coding_mode"] == 1 for t in sets)
        rep.needed_profile = "Lossless" if lossless else "Main"
        if lossless and h.profile_idc == levels.PROFILE_MAIN:
            rep.findings.append(Finding("note", "8.1", "every parameter set uses split coding: "
                                        "the Lossless profile would suffice"))
        sizes = [len(u.payload) for u, _ in s.units] or [0]
        rep.needed_level = levels.smallest_level(
            tokens=max(t["max_tokens"] for t in sets),
            channels=max(t["num_channels"] for t in sets),
            values=max(max(t["max_tokens"] * t["num_channels"] for t in sets),
                       max((f.num_tokens * (f.values.shape[1] if f.values.ndim == 2 else 1)
                            for f in s.frames), default=0)),
            vocab=max(t.get("vocab_size", 0) for t in sets),
            tables=max(t["num_tables"] for t in sets),
            lanes=max(t["num_lanes"] for t in sets),
            chunk=max(t["chunk_size"] for t in sets),
            lane_steps=max(t["lane_steps"] for t in sets),
            unit_size=max(sizes), tracks=len(s.tracks))
        if rep.needed_level < h.level_idc:
            rep.findings.append(Finding("note", "8.2", f"the stream fits level "
                                        f"{rep.needed_level}; it claims {h.level_idc}"))
    used = {(f.track_id, f.tps_id) for f in s.frames}
    for track, tpss in s.tracks.items():
        for tps_id in tpss:
            if (track, tps_id) not in used:
                rep.findings.append(Finding("note", "6.3", f"parameter set {tps_id} of track "
                                            f"{track} is not used by any decoded frame"))
    skipped = [u for u, status in s.units if status == "ok" and u.unit_type
               not in decoder.UNIT_TYPES]
    if skipped:
        rep.findings.append(Finding("note", "6.2", f"{len(skipped)} unit(s) of reserved "
                                    "types skipped (unit_essential 0)"))
    if s.frames and not s.index:
        rep.findings.append(Finding("note", "6.6", "no index unit: random access needs a scan"))
    return rep


def render(rep: Report, name: str = "stream") -> str:
    lines = [f"{name}: {'valid' if rep.valid else 'INVALID'}"]
    if rep.profile:
        lines.append(f"  profile {rep.profile} (needs {rep.needed_profile or '-'}), level "
                     f"{rep.level_idc} (needs {rep.needed_level or '-'}); {rep.units} units, "
                     f"{rep.tracks} tracks, {rep.frames} frames decoded")
    for f in rep.findings:
        where = "".join([f", {f.element}" if f.element else "",
                         f", byte {f.offset}" if f.offset is not None else ""])
        kind = f.error_class or "note"
        lines.append(f"  {f.severity}: clause {f.clause} ({kind}{where}): {f.message}")
    return "\n".join(lines)
