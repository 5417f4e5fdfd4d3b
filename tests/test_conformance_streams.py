"""The committed conformance suite (conformance/, spec clause 11): up to date with
its declarations (the CI staleness check), small, complete in coverage, and its
expectations confirmed by the independent decoder written from the spec alone
and by ``tkb validate``."""
import hashlib
import json
import shutil

import pytest

import tokenbits as tb
from tokenbits import cli
from tokenbits.conformance import SUITE_DIR, generate, load_manifest
from tokenbits.validate import validate

from spec_decoder import E, decode_sha, transform_data_of_tkbt

MANIFEST = load_manifest()
# the transforms the suite supplies to decoders (spec 11.1, harness TKB_TRANSFORM_DIR)
SUITE_TRANSFORMS = sorted((SUITE_DIR / "transforms").glob("*.tkbt"))
STREAMS = MANIFEST["streams"]
BY_KIND = {k: [s for s in STREAMS if s["suite"] == k]
           for k in ("positive", "negative", "resilience")}


def data_of(s) -> bytes:
    return (SUITE_DIR / "streams" / f"{s['name']}.tkb").read_bytes()


@pytest.fixture(scope="module")
def fresh():
    return generate.build()


def test_committed_suite_is_up_to_date(fresh):
    """CI fails here when a change of the codec, the spec's clause 9 or the
    declarations is not followed by `tkb conformance reference` and a commit."""
    assert generate.stale(SUITE_DIR, *fresh) == []


def test_staleness_check_detects_a_changed_stream(tmp_path, fresh):
    suite = tmp_path / "suite"
    shutil.copytree(SUITE_DIR / "streams", suite / "streams")
    shutil.copytree(SUITE_DIR / "traces", suite / "traces")
    shutil.copytree(SUITE_DIR / "transforms", suite / "transforms")
    shutil.copy(SUITE_DIR / "manifest.json", suite / "manifest.json")
    assert generate.main(["--check", "--out", str(suite), "-q"]) == 0
    victim = suite / "streams" / "lossy_float16.tkb"
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")
    (suite / "streams" / "extra.tkb").write_bytes(b"x")
    assert generate.stale(suite, *fresh) == ["streams/extra.tkb", "streams/lossy_float16.tkb"]
    assert generate.main(["--check", "--out", str(suite), "-q"]) == 1


def test_generation_is_deterministic(fresh):
    again = generate.build()
    assert generate.manifest_text(again[0]) == generate.manifest_text(fresh[0])
    assert again[1] == fresh[1]


def test_suite_is_small_and_consistent():
    total = sum(p.stat().st_size for p in SUITE_DIR.rglob("*")
                if p.is_file() and p.suffix in (".tkb", ".txt", ".json"))
    assert total < 10 * 1024 * 1024
    names = [s["name"] for s in STREAMS]
    assert len(set(names)) == len(names)
    assert {p.stem for p in (SUITE_DIR / "streams").glob("*.tkb")} == set(names)
    for s in STREAMS:
        d = data_of(s)
        assert len(d) == s["bytes"] and hashlib.sha256(d).hexdigest() == s["stream_sha256"]
        assert (SUITE_DIR / s["trace"]).read_text(encoding="utf-8").strip()
    assert all(len(BY_KIND[k]) for k in BY_KIND)


@pytest.mark.parametrize("s", STREAMS, ids=lambda s: s["name"])
def test_reference_decoder_strict_matches_the_manifest(s):
    d = data_of(s)
    if s["suite"] == "positive":
        assert tb.canonical_sha256(tb.decode(d, transforms=SUITE_TRANSFORMS)) == \
            s["expect"]["canonical_sha256"]
        return
    first = s["expect"]["errors"][0]
    with pytest.raises(tb.TKBError) as e:
        tb.decode(d, transforms=SUITE_TRANSFORMS)
    assert (type(e.value).__name__, e.value.clause) == (first["class"], first["clause"])


def test_independent_spec_decoder_agrees_with_the_manifest():
    """tests/spec_decoder.py (written from spec/ alone, strict) on every positive and
    negative stream: same canonical digest, same first error class."""
    disagree = []
    supplied = [transform_data_of_tkbt(p.read_bytes()) for p in SUITE_TRANSFORMS]
    assert len(supplied) == len(SUITE_TRANSFORMS) >= 1
    for s in BY_KIND["positive"] + BY_KIND["negative"]:
        try:
            got = ("ok", decode_sha(data_of(s), supplied))
        except E as e:
            got = ("error", f"TKB{e.cls}Error")
        want = (("ok", s["expect"]["canonical_sha256"]) if s["suite"] == "positive"
                else ("error", s["expect"]["errors"][0]["class"]))
        if got != want:
            disagree.append((s["name"], got, want))
    assert disagree == []


@pytest.mark.parametrize("s", STREAMS, ids=lambda s: s["name"])
def test_validate_accepts_positive_and_names_the_clause_of_negative(s):
    rep = validate(data_of(s), SUITE_TRANSFORMS)
    errs = [(f.error_class, f.clause) for f in rep.findings if f.severity == "error"]
    want = [(e["class"], e["clause"]) for e in s["expect"]["errors"]]
    assert rep.valid == (s["suite"] == "positive")
    assert errs == want


def test_validate_cli(capsys):
    good = str(SUITE_DIR / "streams" / "lossy_float16.tkb")
    bad = str(SUITE_DIR / "streams" / "level10_num_lanes_257.tkb")
    assert cli.main(["validate", good]) == 0
    assert "valid" in capsys.readouterr().out
    assert cli.main(["validate", good, bad]) == 1
    out = capsys.readouterr().out
    assert "error: clause 8.2 (TKBLevelError, num_lanes" in out
    assert cli.main(["validate", "--json", bad]) == 1
    rep = json.loads(capsys.readouterr().out)[0]
    assert rep["valid"] is False and rep["findings"][0]["clause"] == "8.2"
    note = str(SUITE_DIR / "streams" / "profile_main_lossless_only.tkb")
    assert cli.main(["validate", note]) == 0
    assert "Lossless profile would suffice" in capsys.readouterr().out


def test_coverage_is_complete():
    """Every syntax element, every error class, every error condition (row of
    clause 9) and every declared value class is exercised by the suite."""
    uni = MANIFEST["universe"]
    elements = set().union(*(s["elements"] for s in STREAMS))
    assert set(uni["elements"]) - elements == set()
    pos_elements = set().union(*(s["elements"] for s in BY_KIND["positive"]))
    assert set(uni["elements"]) - pos_elements == set()   # every element also when valid
    classes = {s["expect"]["errors"][0]["class"] for s in BY_KIND["negative"]}
    assert set(uni["error_classes"]) == classes
    conds = set().union(*(s["conditions"] for s in BY_KIND["negative"]))
    assert {c["id"] for c in uni["conditions"]} == conds
    seen: dict = {}
    for s in BY_KIND["positive"]:
        for k, v in s["element_values"].items():
            seen.setdefault(k, set()).update(v)
    missing = [vc["id"] for vc in uni["value_classes"]
               if not set(vc["values"]) <= seen.get(vc["element"], set())]
    assert missing == []
    profiles = {s["profile_idc"] for s in BY_KIND["positive"]}
    levels_ = {s["level_idc"] for s in BY_KIND["positive"]}
    assert profiles == {1, 2, 3} and levels_ == {10, 20, 30}
    # every transform the positive streams name by reference is shipped (11.1)
    named = set().union(*(s.get("transforms", []) for s in BY_KIND["positive"]))
    assert named and named == {p.stem for p in SUITE_TRANSFORMS}


def test_every_condition_row_of_clause_9_is_in_the_universe():
    rows = generate.error_conditions()
    assert [r["id"] for r in rows] == [c["id"] for c in MANIFEST["universe"]["conditions"]]
    per_class = {}
    for r in rows:
        per_class.setdefault(r["error_class"], 0)
        per_class[r["error_class"]] += 1
    assert set(per_class) == {c.__name__ for c in tb.errors.ERROR_CLASSES}


def test_canonical_decoder_cli_contract(tmp_path, capsys):
    """`tkb decode --canonical` is a decoder of the command-line contract."""
    out = tmp_path / "c.bin"
    s = next(x for x in BY_KIND["resilience"] if x["name"] == "frame_crc_damaged")
    rc = cli.main(["decode", str(SUITE_DIR / "streams" / f"{s['name']}.tkb"), "--canonical",
                   "-o", str(out), "-q"])
    assert rc == 3
    assert hashlib.sha256(out.read_bytes()).hexdigest() == s["expect"]["canonical_sha256"]
    assert "TKBCRCError" in capsys.readouterr().err
    s = next(x for x in BY_KIND["negative"] if x["name"] == "magic_wrong")
    rc = cli.main(["decode", str(SUITE_DIR / "streams" / "magic_wrong.tkb"), "--canonical",
                   "-o", str(out), "-q"])
    assert rc == 1 and out.read_bytes() == b""
    assert "TKBFormatError" in capsys.readouterr().err
