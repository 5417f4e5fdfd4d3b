"""The conformance harness (tokenbits.conformance: adapters, harness, cli) on a small
suite built here with the reference encoder (tests/conformance_fixture.py), with
decoders broken on purpose (tests/conformance_broken.py, tests/conformance_decoder.py)."""

import json
import os
import shlex
import struct
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

import tokenbits as tb
from tokenbits.conformance import SUITE_DIR, cli
from tokenbits.conformance.adapters import (AdapterError, CommandDecoder, PythonDecoder,
                                            make_decoder)
from tokenbits.conformance.harness import (Encoder, describe_difference, encode_flags,
                                           junit_xml, load_suite, run_matrix, run_suite)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from conformance_fixture import FULL_COVERAGE, build_suite  # noqa: E402

PY = shlex.quote(sys.executable)
CMD = f"cmd:{PY} {shlex.quote(str(HERE / 'conformance_decoder.py'))}"
BROKEN = str(HERE / "conformance_broken.py")
NAMES = ["pos_f16_qp", "pos_f32_lossless", "pos_ids", "pos_f32_level20", "neg_header_crc",
         "neg_frame_crc", "neg_truncated", "res_frame_crc"]
POSITIVE, NEGATIVE, RESILIENCE = NAMES[:4], NAMES[4:7], NAMES[7:]


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("suite")
    build_suite(d)
    return d


@pytest.fixture(scope="module")
def suite(suite_dir):
    return load_suite(suite_dir)


def states(rep) -> dict:
    return {r.name: r.state for r in rep.results}


def by_name(rep) -> dict:
    return {r.name: r for r in rep.results}


def run_cli(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def all_pass() -> dict:
    return {n: "pass" for n in NAMES}


# -- the fixture itself -------------------------------------------------------------

def test_fixture_manifest_follows_the_schema(suite):
    m = suite.manifest
    assert m["format"] == 1 and [s["name"] for s in m["streams"]] == NAMES
    keys = {"name", "suite", "description", "clauses", "features", "conditions", "elements",
            "element_values", "profile", "profile_idc", "level_idc", "level", "bytes",
            "stream_sha256", "trace", "expect"}
    for s in m["streams"]:
        assert set(s) == keys
        assert set(s["expect"]) == {"canonical_sha256", "frames", "errors", "fatal"}
        assert s["bytes"] == suite.stream_path(s).stat().st_size
    exp = {s["name"]: s["expect"] for s in m["streams"]}
    assert [e["class"] for e in exp["neg_header_crc"]["errors"]] == ["TKBCRCError"]
    assert exp["neg_header_crc"]["fatal"] is True
    assert [e["class"] for e in exp["neg_frame_crc"]["errors"]] == ["TKBCRCError"]
    assert exp["neg_frame_crc"]["fatal"] is False
    assert [e["class"] for e in exp["neg_truncated"]["errors"]] == ["TKBTruncatedError"]
    assert exp["res_frame_crc"]["frames"] == 2 and exp["pos_f16_qp"]["frames"] == 2
    assert [s["level"] for s in m["streams"]][:4] == [10, 10, 10, 20]


# -- Python adapters ------------------------------------------------------------------

def test_reference_passes_every_stream(suite):
    rep = run_suite(make_decoder("reference"), suite, jobs=2)
    assert states(rep) == all_pass()
    assert rep.exit_status == 0
    r = by_name(rep)
    assert r["res_frame_crc"].errors == ["TKBCRCError"]
    assert r["pos_ids"].sha256 == r["pos_ids"].expected_sha256


def test_reference_strict_is_not_resilient(suite):
    rep = run_suite(make_decoder("reference-strict"), suite, jobs=2)
    assert states(rep) == {**all_pass(), "res_frame_crc": "not-supported"}
    assert "strict decoder" in by_name(rep)["res_frame_crc"].note
    assert rep.exit_status == 0


def test_adapter_returning_exception_instances_passes(suite):
    rep = run_suite(make_decoder(f"{BROKEN}:exceptions"), suite, jobs=2)
    assert states(rep) == all_pass()


def test_strict_by_attribute_or_prefix(suite):
    d = make_decoder(f"{BROKEN}:Strict")
    assert not d.resilient and d.name == "strict-by-attribute"
    rep = run_suite(d, suite, jobs=2)
    assert states(rep) == {**all_pass(), "res_frame_crc": "not-supported"}
    assert not make_decoder("strict:reference").resilient
    assert not make_decoder("reference", strict=True).resilient


def test_flip_bit_names_frame_and_field(suite):
    rep = run_suite(make_decoder(f"{BROKEN}:FlipBit"), suite, jobs=2)
    assert states(rep) == {**all_pass(), **{n: "fail" for n in POSITIVE + RESILIENCE}}
    r = by_name(rep)
    # pos_f16_qp: two float16 frames of 16 x 8; the last byte is values[15, 7] of frame 1
    note = r["pos_f16_qp"].note
    assert "first difference at byte 687 of 688: frame 1 (track 0, frame_number 1), " \
           "values[15, 7]: expected 0x" in note
    assert note.startswith(f"canonical digest {r['pos_f16_qp'].sha256[:16]}... differs from "
                           f"the expected {r['pos_f16_qp'].expected_sha256[:16]}...: ")
    # ids: u32 values, the last byte is the most significant one
    ids = tb.decode((suite.path / "streams" / "pos_ids.tkb").read_bytes(), backend="reference")
    last = int(ids.frames[-1].values[-1])
    assert r["pos_ids"].note.endswith(
        f"frame 1 (track 0, frame_number 1), values[11, 0]: expected {last}, "
        f"got {last ^ (1 << 24)}")
    # resilience: the second record is frame_number 2 (frame 1 was rejected)
    assert "frame 1 (track 0, frame_number 2), values[15, 7]" in r["res_frame_crc"].note
    assert rep.exit_status == 1


def test_accepting_a_bad_crc_is_caught(suite):
    rep = run_suite(make_decoder(f"{BROKEN}:AcceptBadCRC"), suite, jobs=2)
    r = by_name(rep)
    assert r["neg_header_crc"].state == "fail"
    assert r["neg_header_crc"].note == ("accepted a stream that violates clause 6.1 (expected "
                                        "TKBCRCError: the stream header's CRC has a flipped "
                                        "bit)")
    assert r["neg_frame_crc"].state == "fail" and "6.2" in r["neg_frame_crc"].note
    assert r["res_frame_crc"].state == "fail"
    assert all(r[n].state == "pass" for n in POSITIVE + ["neg_truncated"])


def test_wrong_error_class_is_caught(suite):
    rep = run_suite(make_decoder(f"{BROKEN}:wrong_class"), suite, jobs=2)
    r = by_name(rep)
    assert states(rep) == {**all_pass(), **{n: "fail" for n in NEGATIVE + RESILIENCE}}
    assert r["neg_header_crc"].note == "expected TKBCRCError (clause 6.1), got TKBFormatError"
    assert r["neg_truncated"].note == ("expected TKBTruncatedError (clause 6.2), got "
                                       "TKBFormatError")
    assert r["res_frame_crc"].note == ("expected errors [TKBCRCError] in order, got "
                                       "[TKBFormatError]")


def test_hang_crash_and_not_supported(suite):
    t0 = time.monotonic()
    rep = run_suite(make_decoder(f"{BROKEN}:hang"), suite, globs=["pos_ids", "neg_header*"],
                    jobs=2, timeout=1)
    assert states(rep) == {"pos_ids": "timeout", "neg_header_crc": "timeout"}
    assert by_name(rep)["pos_ids"].note == "no result within 1 s (worker killed)"
    assert rep.exit_status == 1
    rep = run_suite(make_decoder(f"{BROKEN}:crash"), suite, globs=["pos_ids"], jobs=1)
    assert states(rep) == {"pos_ids": "error"}
    assert by_name(rep)["pos_ids"].note.startswith("RuntimeError: decoder bug")
    rep = run_suite(make_decoder(f"{BROKEN}:bad_return"), suite, globs=["pos_ids"], jobs=1)
    assert states(rep) == {"pos_ids": "error"}
    assert by_name(rep)["pos_ids"].note.startswith("TypeError: decode() returned str")
    rep = run_suite(make_decoder(f"{BROKEN}:unsupported"), suite, jobs=2)
    assert set(states(rep).values()) == {"not-supported"}
    assert by_name(rep)["pos_ids"].note == "this adapter implements nothing"
    rep = run_suite(make_decoder(f"{BROKEN}:unsupported_own_class"), suite, globs=["pos_ids"],
                    jobs=1)
    assert states(rep) == {"pos_ids": "not-supported"}
    assert by_name(rep)["pos_ids"].note == "no ids tracks here"
    assert rep.exit_status == 0
    assert time.monotonic() - t0 < 30


def test_worker_replaced_after_death_or_timeout(suite):
    """One slot (-j 1): the stream after a dead or killed worker runs in a new one."""
    notes = {}
    for spec, state in (("die_on_bad_header", "error"), ("hang_on_bad_header", "timeout")):
        rep = run_suite(make_decoder(f"{BROKEN}:{spec}"), suite, jobs=1, timeout=2)
        assert states(rep) == {**all_pass(), "neg_header_crc": state}, spec
        notes[spec] = by_name(rep)["neg_header_crc"].note
    assert notes == {"die_on_bad_header": "the decoder's worker process died (exit code 70)",
                     "hang_on_bad_header": "no result within 2 s (worker killed)"}


def test_bad_adapter_specs():
    for spec, msg in (("nonsense", "cannot tell what decoder"),
                      ("no_such_module_xyz:decode", "cannot import no_such_module_xyz"),
                      (f"{BROKEN}:missing", "has no attribute missing"),
                      ("cmd:no-such-program-xyz {input}", "not found"),
                      ("cmd:echo hello", "no {input} placeholder"),
                      ("cmd:echo 'unbalanced {input}", "No closing quotation")):
        with pytest.raises(AdapterError, match=msg.replace("{", r"\{").replace("}", r"\}")):
            make_decoder(spec)
    assert isinstance(make_decoder("echo {input}"), CommandDecoder)
    assert isinstance(make_decoder("reference"), PythonDecoder)


# -- command-line decoders --------------------------------------------------------------

def test_command_decoder_gives_the_python_adapters_states(suite):
    ref = run_suite(make_decoder("reference"), suite, jobs=2)
    for spec in (f"{CMD} {{input}} {{output}}", f"{CMD} {{input}}"):   # file, stdout
        rep = run_suite(make_decoder(spec), suite, jobs=2)
        assert states(rep) == states(ref) == all_pass()
        assert [r.sha256 for r in rep.results] == [r.sha256 for r in ref.results]
        assert [r.errors for r in rep.results] == [r.errors for r in ref.results]
    strict = run_suite(make_decoder(f"strict:{CMD} --strict {{input}} {{output}}"), suite,
                       jobs=2)
    assert states(strict) == states(run_suite(make_decoder("reference-strict"), suite, jobs=2))


def test_tkb_decode_canonical_follows_the_contract(suite):
    """``tkb decode --canonical`` is the reference decoder as a command-line decoder."""
    from tokenbits import cli as tkb_cli
    if not hasattr(tkb_cli, "cmd_decode_canonical"):
        pytest.skip("tkb decode has no --canonical")
    tkb = f"{PY} -m tokenbits.cli decode {{input}} --canonical -o {{output}} -q"
    assert states(run_suite(make_decoder(tkb), suite, jobs=2)) == all_pass()
    rep = run_suite(make_decoder(f"strict:{tkb} --strict"), suite, jobs=2)
    assert states(rep) == {**all_pass(), "res_frame_crc": "not-supported"}


def test_broken_command_decoders(suite):
    def go(mode, **kw):
        return run_suite(make_decoder(f"{CMD} --mode {mode} {{input}} {{output}}"), suite,
                         jobs=2, **kw)
    rep = go("flip-bit")
    assert states(rep) == {**all_pass(), **{n: "fail" for n in POSITIVE + RESILIENCE}}
    assert "frame 1 (track 0, frame_number 1), values[15, 7]" in by_name(rep)["pos_f16_qp"].note
    rep = go("accept-crc")
    assert by_name(rep)["neg_header_crc"].note.startswith(
        "accepted a stream that violates clause 6.1 (expected TKBCRCError")
    rep = go("wrong-class", kinds=["negative"])
    assert states(rep) == {n: "fail" for n in NEGATIVE}
    assert by_name(rep)["neg_frame_crc"].note == ("expected TKBCRCError (clause 6.2), got "
                                                  "TKBFormatError")
    rep = go("no-class", kinds=["negative", "resilience"])
    assert states(rep) == {n: "fail" for n in NEGATIVE + RESILIENCE}
    assert by_name(rep)["neg_header_crc"].note == (
        "rejected the stream but no error class reported (expected TKBCRCError, clause 6.1)")
    assert "(no error class reported)" in by_name(rep)["res_frame_crc"].note
    rep = go("hang", globs=["pos_ids", "neg_frame*"], timeout=1)
    assert states(rep) == {"pos_ids": "timeout", "neg_frame_crc": "timeout"}
    rep = go("crash", globs=["pos_ids"])
    assert states(rep) == {"pos_ids": "error"}
    assert by_name(rep)["pos_ids"].note.startswith("decoder failed (killed by SIGABRT)")
    rep = go("exit2", globs=["pos_ids"])
    assert by_name(rep)["pos_ids"].note == ("decoder failed (exit status 2): "
                                            "conformance_decoder: something went wrong")
    rep = go("unsupported")
    assert set(states(rep).values()) == {"not-supported"} and rep.exit_status == 0


# -- filters, reports, exit statuses ------------------------------------------------------

def test_profile_and_level_filters(suite):
    d = make_decoder("reference")
    rep = run_suite(d, suite, profile="Lossless", jobs=2)
    outside = ["pos_f16_qp", "pos_f32_level20", "res_frame_crc"]
    assert states(rep) == {**all_pass(), **{n: "not-supported" for n in outside}}
    assert by_name(rep)["pos_f16_qp"].note == ("profile Main is outside the claimed profile "
                                               "Lossless")
    rep = run_suite(d, suite, profile="Main", level=10, jobs=2)
    assert states(rep) == {**all_pass(), "pos_f32_level20": "not-supported"}
    assert by_name(rep)["pos_f32_level20"].note == "needs level 20, above the claimed level 10"
    assert states(run_suite(d, suite, level=20, jobs=2)) == all_pass()
    rep = run_suite(d, suite, kinds=["negative", "resilience"], globs=["*crc*"], jobs=2)
    assert states(rep) == {"neg_header_crc": "pass", "neg_frame_crc": "pass",
                           "res_frame_crc": "pass"}


def test_cli_run_filters_and_exit_status(capsys, suite_dir):
    rc, out, err = run_cli(capsys, "run", "--suite", suite_dir, "-q", "--level", "1",
                           "--profile", "lossless")
    assert rc == 0 and err == ""
    lines = {ln.split()[1]: ln.split()[0] for ln in out.splitlines()
             if ln.split() and ln.split()[0] in ("pass", "not-supported")}
    assert lines == {**all_pass(), "pos_f16_qp": "not-supported",
                     "pos_f32_level20": "not-supported", "res_frame_crc": "not-supported"}
    assert ("totals: 5 pass, 0 fail, 0 error, 0 timeout, 3 not supported (8 streams)"
            in out)
    rc, out, err = run_cli(capsys, "run", "--suite", suite_dir, "-q", "--stream", "pos_*",
                           "--decoder", f"{BROKEN}:FlipBit")
    assert rc == 1 and "totals: 0 pass, 4 fail" in out and "neg_" not in out


def test_cli_usage_errors(capsys, suite_dir, tmp_path):
    for argv, msg in ((["run", "--level", "5"], "level '5'"),
                      (["run", "--profile", "High"], "profile 'High'"),
                      (["run", "--suite", tmp_path / "nope"], "no such directory"),
                      (["run", "--suite", tmp_path], "no manifest.json"),
                      (["run", "--suite", suite_dir, "--decoder", "nonsense"],
                       "cannot tell what decoder"),
                      (["run", "-j", "0"], "positive integer"),
                      (["run", "--timeout", "-1"], "positive number"),
                      (["frobnicate"], "invalid choice"),
                      (["run", "--suite", suite_dir, "--json", tmp_path / "no" / "r.json"],
                       "does not exist"),
                      (["matrix", "--encoder", "nonsense"], "cannot tell what encoder")):
        rc, out, err = run_cli(capsys, *argv)
        assert rc == 2, argv
        assert err.startswith("tkb conformance: error: ") and msg in err, (argv, err)
        assert err.count("\n") == 1 and out == ""
    assert run_cli(capsys, "--help")[0] == 0
    assert run_cli(capsys, "run", "--help")[0] == 0


def test_json_and_junit_reports(capsys, suite_dir, tmp_path):
    js, ju = tmp_path / "r.json", tmp_path / "r.xml"
    rc, out, err = run_cli(capsys, "run", "--suite", suite_dir, "-q", "--decoder",
                           f"{BROKEN}:FlipBit", "--profile", "Lossless", "--json", js,
                           "--junit", ju)
    assert rc == 1
    rep = json.loads(js.read_text())
    assert rep["exit_status"] == 1 and rep["decoder"]["name"] == "flip-bit"
    assert rep["totals"] == {"pass": 3, "fail": 2, "error": 0, "timeout": 0,
                             "not-supported": 3, "streams": 8}
    assert rep["by_kind"]["positive"] == {"pass": 0, "fail": 2, "error": 0, "timeout": 0,
                                          "not-supported": 2, "streams": 4}
    assert rep["by_kind"]["resilience"]["not-supported"] == 1
    assert [r["name"] for r in rep["results"]] == NAMES
    assert rep["claims"] == {"profile": "Lossless", "level": None}
    assert rep["coverage"]["passing_streams"] == 3
    root = ET.parse(ju).getroot()
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors"),
            root.get("skipped")) == ("8", "2", "0", "3")
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert list(suites) == ["positive", "negative", "resilience"]
    assert [(s.get("tests"), s.get("failures"), s.get("skipped")) for s in suites.values()] \
        == [("4", "2", "2"), ("3", "0", "0"), ("1", "0", "1")]
    fails = {tc.get("name"): tc.find("failure") for tc in root.iter("testcase")
             if tc.find("failure") is not None}
    assert set(fails) == {"pos_f32_lossless", "pos_ids"}
    assert "values[11, 0]" in fails["pos_ids"].get("message")
    assert "clauses 6.1" in fails["pos_ids"].text
    assert len(list(root.iter("skipped"))) == 3

    rep = run_suite(make_decoder(f"{BROKEN}:crash"), load_suite(suite_dir),
                    globs=["pos_*"], jobs=2)
    root = ET.fromstring(junit_xml(rep))
    errs = list(root.iter("error"))
    assert len(errs) == 4 and errs[0].get("type") == "error"
    assert root.get("errors") == "4"

    rc, out, err = run_cli(capsys, "run", "--suite", suite_dir, "-q", "--json", "-")
    assert rc == 0 and json.loads(out)["totals"]["pass"] == 8


def test_coverage(capsys, suite, suite_dir):
    cov = run_suite(make_decoder("reference"), suite, jobs=2).coverage()
    assert {k: (cov[k]["covered"], cov[k]["total"]) for k in FULL_COVERAGE} == FULL_COVERAGE
    assert cov["elements"]["missing"] == ["presence_map"]
    assert cov["error_classes"]["missing"] == [
        "TKBFormatError", "TKBUnsupportedError", "TKBLevelError", "TKBReferenceError",
        "TKBTableError", "TKBEntropyError", "TKBValueError"]
    assert [c["id"] for c in cov["conditions"]["missing"]] == ["entropy-final-state"]
    assert [v["id"] for v in cov["value_classes"]["missing"]] == ["source-bf16"]
    assert cov["clauses"]["list"] == ["6.1", "6.2", "6.3", "6.4", "7.3", "7.4.2", "8.2",
                                      "9.2", "9.3", "9.10", "10.1"]
    assert cov["features"]["covered"] == 9 and cov["features"]["total"] is None
    # negatives failing: no error class, no condition; positives alone still give
    # source_dtype 1 and 0 (value classes "source-f16" and "source-f32-f16")
    cov = run_suite(make_decoder(f"{BROKEN}:wrong_class"), suite, jobs=2).coverage()
    assert cov["passing_streams"] == 4
    assert (cov["error_classes"]["covered"], cov["conditions"]["covered"],
            cov["value_classes"]["covered"], cov["elements"]["covered"]) == (0, 0, 2, 6)
    # only pos_ids passes: source_dtype 3 only
    cov = run_suite(make_decoder("reference"), suite, globs=["pos_ids"], jobs=1).coverage()
    assert cov["value_classes"]["covered"] == 0
    rc, out, err = run_cli(capsys, "run", "--suite", suite_dir, "-q", "--coverage")
    assert rc == 0
    assert "  syntax elements    6/7\n      missing presence_map\n" in out
    assert "  error classes      2/9\n" in out and "  value classes      2/3\n" in out
    assert ("missing entropy-final-state: TKBEntropyError, clause 7.3.2: an active lane "
            "does not end in state RANS_L") in out
    assert "TKBLevelError on max_tracks: needs more tracks than this fixture writes" in out


def test_cli_list(capsys, suite_dir):
    rc, out, err = run_cli(capsys, "list", "--suite", suite_dir, "--json")
    info = json.loads(out)
    assert rc == 0 and info["counts"] == {"positive": 4, "negative": 3, "resilience": 1}
    assert info["features"]["damage:crc"] == ["neg_header_crc", "neg_frame_crc",
                                              "res_frame_crc"]
    rc, out, err = run_cli(capsys, "list", "--suite", suite_dir, "--level", "10",
                           "--suite-kind", "positive")
    assert rc == 0
    assert "suite " in out and ": 3 streams" in out and "pos_f32_level20" not in out
    assert "(1 more outside the claimed profile / level, not listed)" in out


def test_describe_difference():
    # the canonical output of clause 10.3: one ids frame of 3 tokens (5, 9, 2)
    c = struct.pack("<6I", 0, 0, 3, 3, 1, 3) + struct.pack("<3I", 0, 1, 2) + \
        struct.pack("<3I", 5, 9, 2)

    def at(i, v):
        b = bytearray(c)
        b[i] = v
        return bytes(b)
    assert describe_difference(c, c) == "outputs are identical"
    assert describe_difference(c, at(4, 7)) == ("first difference at byte 4 of 48: frame 0 "
                                                "(track 0, frame_number 0), frame_number: "
                                                "expected 0, got 7")
    assert describe_difference(c, at(20, 0)).endswith("dtype: expected 3, got 0")
    assert describe_difference(c, at(28, 9)).endswith("positions[1]: expected 1, got 9")
    assert describe_difference(c, at(44, 3)).endswith("values[2, 0]: expected 2, got 3")
    assert describe_difference(c, c[:30]) == ("output ends early at byte 30 of 48, inside "
                                              "frame 0 (track 0, frame_number 0), "
                                              "positions[1]")
    assert describe_difference(c, None) == "no output; expected 48 bytes (1 frames)"
    assert describe_difference(c, c + c) == ("48 extra bytes after the expected 1 frame "
                                              "records (frame record(s) of frame_number 0)")
    f16 = struct.pack("<6I", 2, 7, 2, 1, 2, 1) + struct.pack("<I", 1) + \
        np.array([1.0, -2.0], "<f2").tobytes()
    assert describe_difference(f16, f16[:-1] + b"\x40") == (
        "first difference at byte 31 of 32: frame 0 (track 2, frame_number 7), values[0, 1]: "
        "expected 0xc000 (-2), got 0x4000 (2)")


# -- gpu ---------------------------------------------------------------------------

def test_gpu_without_a_gpu_is_not_supported(suite_dir):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    p = subprocess.run([sys.executable, "-m", "tokenbits.conformance.cli", "run", "--suite",
                        str(suite_dir), "--decoder", "gpu", "-q"], capture_output=True,
                       text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stderr.count("\n") == 1 and "cannot run here" in p.stderr
    assert "0 pass, 0 fail, 0 error, 0 timeout, 8 not supported (8 streams)" in p.stdout


def test_gpu_adapter_in_the_triton_interpreter(suite):
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("runs the kernels in Triton's interpreter (TRITON_INTERPRET=1)")
    d = make_decoder("gpu")
    if d.unavailable():
        pytest.skip(d.unavailable())
    rep = run_suite(d, suite, globs=["pos_ids", "neg_*"], jobs=2)
    assert states(rep) == {n: "pass" for n in ["pos_ids"] + NEGATIVE}


# -- interop matrix --------------------------------------------------------------------

def _inputs():
    rng = np.random.default_rng(7)
    bf16 = (rng.standard_normal((1, 10, 4)).astype(np.float32).view(np.uint32) >> 16) \
        .astype(np.uint16)
    return [("f16_grid", rng.standard_normal((2, 10, 4)).astype(np.float16),
             {"qp": -6, "grid": [3, 3], "prefix_tokens": 1}),
            ("f32_lossless", rng.standard_normal((1, 8, 4)).astype(np.float32),
             {"lossless": True, "num_lanes": 3, "lane_steps": 7}),
            ("bf16_bits", bf16, {"qp": -6, "source_dtype": "bfloat16"}),
            ("ids", rng.integers(0, 60, (2, 9)).astype(np.uint32),
             {"vocab_size": 60, "index": False})]


TKB_ENCODE = f"cmd:{PY} -m tokenbits.cli encode {{input}} -o {{output}} {{flags}} -q"


def test_encode_flags():
    assert encode_flags({"qp": -6, "grid": [4, 4], "prefix_tokens": 1, "lossless": True,
                         "predictor": "left", "num_tables": 2, "prob_bits": 10,
                         "num_lanes": 3, "lane_steps": 7, "keep": 0.5, "vocab_size": 100,
                         "output_dtype": "float32", "index": False, "target_cos": None}) == \
        ["--qp", "-6", "--grid", "4x4", "--prefix", "1", "--lossless", "--predictor", "left",
         "--tables", "2", "--prob-bits", "10", "--lanes", "3", "--lane-steps", "7",
         "--keep", "0.5", "--vocab-size", "100", "--output-dtype", "float32", "--no-index"]
    from tokenbits.conformance.adapters import NotSupported
    with pytest.raises(NotSupported, match="per_channel_steps"):
        encode_flags({"per_channel_steps": True})


def test_matrix_all_cells_pass():
    encs = [Encoder("reference"), Encoder(TKB_ENCODE)]
    decs = [make_decoder("reference"), make_decoder(f"{CMD} {{input}} {{output}}")]
    rep = run_matrix(encs, decs, _inputs(), jobs=2)
    assert rep.exit_status == 0
    for row in list(rep.cells.values()) + list(rep.valid.values()):
        assert {k: v[0] for k, v in row.items()} == {n: "pass" for n, _, _ in _inputs()}
    assert rep.summary(rep.cells[(encs[1].name, decs[1].name)]) == ("pass 4/4", False)
    text = rep.render()
    assert "matrix: all cells pass" in text and "E1 = " in text
    js = rep.to_json()
    assert len(js["cells"]) == 4 and all(c["pass"] for c in js["cells"])


def test_matrix_catches_broken_decoder_and_encoder():
    encs = [Encoder("reference"), Encoder(f"{BROKEN}:lossy_encoder")]
    flip = make_decoder(f"{BROKEN}:FlipBit")
    rep = run_matrix(encs, [make_decoder("reference"), flip], _inputs(), jobs=2)
    assert rep.exit_status == 1
    assert rep.summary(rep.cells[("reference", "reference")]) == ("pass 4/4", False)
    assert rep.summary(rep.cells[("reference", "flip-bit")]) == ("FAIL 0/4", True)
    note = rep.cells[("reference", "flip-bit")]["ids"][1]
    assert note.startswith("canonical output differs from the reference decoder's: first "
                           "difference at byte") and "values[8, 0]" in note
    # the lossy encoder: valid streams, but the lossless inputs are not reproduced
    lossy = f"{BROKEN}:lossy_encoder"
    assert rep.summary(rep.valid[lossy]) == ("pass 4/4", False)
    row = rep.cells[(lossy, "reference")]
    assert {k: v[0] for k, v in row.items()} == {"f16_grid": "pass", "f32_lossless": "fail",
                                                 "bf16_bits": "pass", "ids": "fail"}
    assert row["f32_lossless"][1].startswith("lossless input not reproduced: decoded values "
                                             "differ from the input at [0, 0, 0]")
    assert "failing inputs:" in rep.render()


def test_matrix_unavailable_and_not_supported():
    dead = Encoder(f"{PY} -c 'import sys; sys.exit(4)' {{input}} {{output}}")
    rep = run_matrix([dead], [make_decoder(f"{BROKEN}:unsupported")], _inputs()[:2], jobs=1)
    assert rep.summary(rep.valid[dead.name]) == ("n/a", False)
    assert rep.exit_status == 0
    crash = Encoder(f"{PY} -c 'import sys; sys.exit(2)' {{input}} {{output}}")
    rep = run_matrix([crash], [make_decoder("reference")], _inputs()[:1], jobs=1)
    assert rep.valid[crash.name]["f16_grid"] == ("fail", "encoder failed: RuntimeError: "
                                                         "encoder exit status 2")
    assert rep.exit_status == 1


def test_cli_matrix_with_the_generated_inputs(capsys, tmp_path):
    from tokenbits.conformance.harness import SuiteError, matrix_inputs
    try:
        names = [n for n, _, _ in matrix_inputs()]
    except SuiteError as e:
        pytest.skip(str(e))
    js = tmp_path / "m.json"
    pick = "ids" if "ids" in names else names[0]
    rc, out, err = run_cli(capsys, "matrix", "-q", "--input", pick, "--encoder", "reference",
                           "--decoder", "reference", "--decoder", f"{BROKEN}:FlipBit",
                           "--json", js)
    assert rc == 1
    m = json.loads(js.read_text())
    assert m["inputs"] == [pick]
    assert [(c["decoder"], c["summary"]) for c in m["cells"]] == [
        ("reference", "pass 1/1"), ("flip-bit", "FAIL 0/1")]
    assert "FAIL 0/1" in out


# -- the committed suite ----------------------------------------------------------------

needs_suite = pytest.mark.skipif(not (SUITE_DIR / "manifest.json").exists(),
                                 reason="conformance/manifest.json is not generated yet")


@needs_suite
def test_committed_suite_reference_passes_everything():
    s = load_suite()
    rep = run_suite(make_decoder("reference"), s)
    assert {r.state for r in rep.results} == {"pass"}
    assert len(rep.results) == len(s.streams)
    strict = run_suite(make_decoder("reference-strict"), s)
    assert states(strict) == {r.name: ("not-supported" if r.suite == "resilience" else "pass")
                              for r in rep.results}


@needs_suite
def test_committed_suite_catches_a_wrong_class(capsys):
    rc, out, err = run_cli(capsys, "run", "-q", "--suite-kind", "negative", "--decoder",
                           f"{BROKEN}:wrong_class", "--json", "-")
    rep = json.loads(out)
    n_format = sum(1 for r in rep["results"] if r["expected_errors"][0] == "TKBFormatError")
    assert rep["totals"]["pass"] == n_format
    assert rep["totals"]["fail"] == rep["totals"]["streams"] - n_format > 0


@needs_suite
def test_reference_subcommand_delegates(capsys):
    try:
        import tokenbits.conformance.generate  # noqa: F401
    except ModuleNotFoundError:
        pytest.skip("tokenbits.conformance.generate is missing")
    rc, out, err = run_cli(capsys, "reference", "--help")
    assert rc == 0 and "tkb conformance reference" in out
