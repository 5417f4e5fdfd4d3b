"""Every stream of the TKB 1.0 conformance suite still decodes as version 1.0 said
(spec version 1.1 keeps every earlier stream valid with the same canonical output).

tests/regressions/suite-1.0/ holds the 244 streams of the suite as it was at 1.0
(commit 8bae752) and their expected results from its manifest: the canonical digest of
a resilient decode and the error classes in order.  The suite itself is regenerated
as the reference encoder improves; these bytes never change.
"""
import hashlib
import json
from pathlib import Path

import pytest

from tokenbits.conformance.adapters import decode_reference

HERE = Path(__file__).resolve().parent / "regressions" / "suite-1.0"
EXPECTED = json.loads((HERE / "expected.json").read_text())["streams"]
# what version 1.1 defines and 1.0 reserved: profile_idc 3 is now the High profile, so
# this header-only violation of 1.0 is a valid stream of 1.1 (its frames use Main tools)
NOW_VALID = {"profile_3"}


def test_the_1_0_suite_is_complete():
    assert len(EXPECTED) == 244
    assert {p.stem for p in HERE.glob("*.tkb")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_1_0_stream_decodes_as_version_1_0_said(name):
    want = EXPECTED[name]
    data = (HERE / f"{name}.tkb").read_bytes()
    assert hashlib.sha256(data).hexdigest() == want["stream_sha256"]
    res = decode_reference(data)
    if name in NOW_VALID:
        assert res.errors == [] and want["errors"] == ["TKBUnsupportedError"]
        return
    assert res.errors == want["errors"]
    assert hashlib.sha256(res.canonical).hexdigest() == want["canonical_sha256"]
