"""The spec is enough to write a bit-exact decoder: an independent decoder written
from spec/ alone (tests/spec_decoder.py) agrees with the reference on valid
streams (canonical SHA-256) and on mutated ones (decoded output or error class)."""
import os

import numpy as np
import pytest

import tokenbits as tb

from fuzzing import TRANSFORM, corpus, mutate
from spec_decoder import E, decode_sha


def outcome_reference(data):
    try:
        return "ok", tb.canonical_sha256(tb.decode(data, transforms=[TRANSFORM]))
    except tb.TKBError as e:
        return "error", type(e).__name__


def outcome_spec(data):
    try:
        return "ok", decode_sha(data, [TRANSFORM.data])
    except E as e:
        return "error", f"TKB{e.cls}Error"


@pytest.mark.parametrize("i", range(len(corpus())))
def test_valid_streams_same_canonical_output(i):
    data = corpus()[i]
    assert outcome_spec(data) == outcome_reference(data) == ("ok", outcome_reference(data)[1])


def test_real_tokens_same_canonical_output():
    rng = np.random.default_rng(3)
    x = (np.cumsum(rng.standard_normal((1, 26, 12)), axis=1)).astype(np.float16)
    for opts in (dict(qp=-12, grid=(5, 5), prefix_tokens=1, keep=0.5),
                 dict(lossless=True, grid=(5, 5), prefix_tokens=1, predictor="up"),
                 dict(qp=40, output_dtype="float16")):
        data = tb.encode(x * 1000 if opts.get("qp") == 40 else x, **opts)
        assert outcome_spec(data) == outcome_reference(data)


def test_mutated_streams_same_outcome():
    rng = np.random.default_rng(int(os.environ.get("TKB_FUZZ_SEED", "11")))
    seeds = corpus()
    for i in range(int(os.environ.get("TKB_SPEC_DECODER_N", "150"))):
        data = mutate(rng, seeds[i % len(seeds)])
        assert outcome_spec(data) == outcome_reference(data), f"mutation {i}"
