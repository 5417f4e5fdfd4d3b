"""Any byte string either decodes or raises a TKBError (never another exception,
never a hang); the full 100 000-mutation run is ``python tests/fuzzing.py``."""
import os
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

import tokenbits as tb

from fuzzing import REGRESSIONS, TRANSFORM, check, corpus, run


@given(st.binary(max_size=400))
def test_arbitrary_bytes(data):
    assert check(data) is None


@given(st.binary(max_size=200))
def test_arbitrary_bytes_after_a_valid_header(data):
    assert check(corpus()[0][:16] + data) is None


def test_corpus_is_valid():
    for data in corpus():
        tb.decode(data, transforms=[TRANSFORM])


def test_mutations():
    n = int(os.environ.get("TKB_FUZZ_N", "3000"))
    failures = run(n, seed=int(os.environ.get("TKB_FUZZ_SEED", "0")))
    assert not failures, failures[:5]


@pytest.mark.parametrize("path", sorted(REGRESSIONS.glob("*.tkb")), ids=lambda p: p.name)
def test_regressions(path: Path):
    """Every input that once broke the decoder stays fixed."""
    assert check(path.read_bytes()) is None
