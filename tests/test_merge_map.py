"""TKB 1.1 merge maps (spec clauses 6.4, 7.8) and the dense output (clause 10.4):
round trips, exact dense rows through every entry point, every error with its class
and clause, the Main profile unchanged, the independent spec decoder, the CLI, the
conformance harness's dense run, the GPU path (Triton interpreter on CPU), fuzzing."""
import hashlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st

import tokenbits as tb
from tokenbits import cli, decoder, levels
from tokenbits.conformance import SUITE_DIR, adapters, generate, harness, load_manifest
from tokenbits.merge_map import dense_values, pruned_positions, stand_in_bits
from tokenbits.pruning import assign_stand_ins

from fuzzing import mutate
from spec_decoder import E, decode_sha

RNG = np.random.default_rng(161)
X = np.cumsum(RNG.standard_normal((3, 17, 8)), axis=1).astype(np.float16)
GRID = dict(grid=(4, 4), prefix_tokens=1)
MANIFEST = load_manifest()


def enc(x=X, **kw):
    return tb.encode(x, backend="reference", **kw)


def manual_dense(f):
    """Clause 7.8 written out row by row (independent of merge_map.dense_values)."""
    out = np.zeros((f.num_tokens,) + f.values.shape[1:], f.values.dtype)
    kept = [int(p) for p in f.positions]
    for k, p in enumerate(kept):
        out[p] = f.values[k]
    if f.stand_ins is not None:
        prn = [p for p in range(f.num_tokens) if p not in kept]
        for j, p in enumerate(prn):
            out[p] = f.values[int(f.stand_ins[j])]
    return out


def bits(a):
    a = np.asarray(a)
    return a.view({2: np.uint16, 4: np.uint32}[a.dtype.itemsize])


def test_stand_in_width():
    assert [stand_in_bits(k) for k in (1, 2, 3, 4, 5, 8, 9, 256, 257)] == \
        [0, 1, 2, 2, 3, 3, 4, 8, 9]


@pytest.mark.parametrize("opts", [dict(qp=-6, keep=0.5, **GRID),
                                  dict(qp=-6, keep=0.3, predictor="left"),
                                  dict(lossless=True, keep=0.5, **GRID),
                                  dict(qp=-8, keep=0.5, output_dtype="bfloat16",
                                       predictor="up", **GRID)])
def test_round_trip_and_dense_rows(opts):
    data = enc(merge_map=True, **opts)
    plain = enc(**opts)
    assert data[5:7] == bytes([1, levels.PROFILE_HIGH])       # version 1.1, High (B.8)
    assert plain[6] != levels.PROFILE_HIGH
    s, s0 = tb.decode(data), tb.decode(plain)
    # the merge map changes nothing of the decoded frames (clause 7.8) ...
    assert tb.canonical_sha256(s) == tb.canonical_sha256(s0)
    dense = tb.to_array(s, dense=True)
    assert dense.shape == (3, 17, 8)
    for i, (f, f0) in enumerate(zip(s.frames, s0.frames)):
        # ... but carries the encoder's stand-ins
        src = X[i] if not opts.get("lossless") else X[i]
        assert np.array_equal(f.stand_ins, assign_stand_ins(src, f.positions))
        assert f0.stand_ins is None
        assert np.array_equal(bits(dense[i]), bits(manual_dense(f)))
        assert np.array_equal(bits(tb.to_array(s0, dense=True)[i]), bits(manual_dense(f0)))
        prn = pruned_positions(f.positions, f.num_tokens)
        assert not np.any(bits(tb.to_array(s0, dense=True)[i][prn]))     # zeros, no map
    with pytest.raises(tb.TKBError):
        tb.to_array(s)                                   # pruned: not stackable


def test_every_entry_point_gives_the_same_dense_frames():
    data = enc(merge_map=True, qp=-6, keep=0.4, **GRID)
    want = tb.to_array(tb.decode(data), dense=True)
    s = tb.decode(data, dense=True)
    assert all(f.num_kept == f.num_tokens and f.kept_positions is not None for f in s.frames)
    assert np.array_equal(bits(tb.to_array(s)), bits(want))
    for n in range(3):
        f = tb.read_frame(data, 0, n, dense=True)
        assert np.array_equal(bits(f.values), bits(want[n]))
    got = [f.values for f in tb.iter_frames(io.BytesIO(data), dense=True)]
    assert np.array_equal(bits(np.stack(got)), bits(want))
    t = tb.decode_tensors(data, dense=True, backend="reference", device="cpu")
    assert np.array_equal(bits(np.stack([f.values.numpy() for f in t.frames])), bits(want))
    # the dense canonical output (clause 10.4) is the canonical output of dense frames
    assert tb.canonical_sha256(s) == decode_sha(data, dense=True)
    assert tb.canonical_sha256(tb.decode(data)) == decode_sha(data)


def test_dense_fill_copies_bits():
    """NaN payloads, -0 and infinities of a lossless track are copied bit for bit."""
    v = np.array([[np.nan, -0.0], [np.inf, 1.5]], np.float32)
    v.view(np.uint32)[0, 0] = 0x7FC01234
    d = dense_values(v, np.array([1, 3], np.uint32), 5, np.array([1, 0, 0], np.uint32))
    want = v.view(np.uint32)[[1, 0, 0, 1, 0]]     # pruned 0, 2, 4 <- kept 1, 0, 0
    assert np.array_equal(d.view(np.uint32), want)
    ids = dense_values(np.array([7, 9], np.uint32), np.array([0, 2]), 4, None)
    assert ids.tolist() == [7, 0, 9, 0]


def test_no_map_when_nothing_is_pruned():
    data = enc(merge_map=True, qp=-6, **GRID)             # no pruning: no map, not High
    assert data[6] == levels.PROFILE_MAIN and data[5] == 0
    assert all(f.stand_ins is None for f in tb.decode(data).frames)


def test_streaming_writer_signals_high():
    buf = io.BytesIO()
    with tb.StreamWriter(buf, level_idc=10) as w:
        w.add_track(X[:1], qp=-6, keep=0.5, merge_map=True, **GRID)
        w.write(0, X)
    s = tb.decode(buf.getvalue())
    assert s.header.profile_idc == levels.PROFILE_HIGH
    assert all(f.stand_ins is not None for f in s.frames)


# -- errors (clause 9 rows of clause 6.4, 3.3, 9.2) ------------------------------------

NEG = {s["name"]: s for s in MANIFEST["streams"] if s["name"].startswith("merge_map")}
WANT = {"merge_map_stand_in_out_of_range": ("TKBFormatError", "6.4", "stand_in"),
        "merge_map_nothing_pruned": ("TKBFormatError", "6.4", "merge_map"),
        "merge_map_nothing_kept": ("TKBFormatError", "6.4", "merge_map"),
        "merge_map_alignment_bit": ("TKBFormatError", "3.3", "alignment_zero_bits"),
        "merge_map_in_main_profile": ("TKBFormatError", "6.4", "presence_present"),
        "merge_map_truncated": ("TKBTruncatedError", "6.4", "stand_in")}


@pytest.mark.parametrize("name", sorted(WANT))
def test_errors_class_clause_and_spec_decoder(name):
    data = (SUITE_DIR / "streams" / f"{name}.tkb").read_bytes()
    assert NEG[name]["suite"] == "negative"
    with pytest.raises(tb.TKBError) as e:
        tb.decode(data)
    assert (type(e.value).__name__, e.value.clause, e.value.element) == WANT[name]
    with pytest.raises(E) as e2:
        decode_sha(data)
    assert f"TKB{e2.value.cls}Error" == WANT[name][0] and e2.value.clause == WANT[name][1]


def test_presence_present_2_is_a_1_0_error_outside_high():
    """Main and Lossless: presence_present 2 stays the TKBFormatError of version 1.0."""
    for opts in (dict(qp=-6, keep=0.5, **GRID), dict(lossless=True, keep=0.5, **GRID)):
        data = enc(**opts)
        fr = generate.units_of(data, decoder.UNIT_FRAME)[0]
        bad = generate.poke(data, "presence_present", 2, fr)
        with pytest.raises(tb.TKBFormatError) as e:
            tb.decode(bad)
        assert e.value.clause == "6.4" and e.value.element == "presence_present"
        high = generate.header(3, data[7], minor=1) + bad[16:]   # same bytes as High
        with pytest.raises(tb.TKBError):                         # a map would follow
            tb.decode(high)
    high = generate.header(3, 10, minor=1) + enc(qp=-6, keep=0.5, **GRID)[16:]
    tb.decode(high)                                              # 0 and 1 stay valid


def test_manifest_dense_expectations():
    pos = [s for s in MANIFEST["streams"] if s["suite"] == "positive"]
    dense = [s for s in pos if "dense_canonical_sha256" in s["expect"]]
    assert {s["name"] for s in pos if "merge_map" in s["features"]} <= \
        {s["name"] for s in dense}
    for s in dense:
        data = (SUITE_DIR / "streams" / f"{s['name']}.tkb").read_bytes()
        sup = sorted((SUITE_DIR / "transforms").glob("*.tkbt"))
        got = tb.canonical_sha256(tb.decode(data, transforms=sup, dense=True))
        assert got == s["expect"]["dense_canonical_sha256"] != s["expect"]["canonical_sha256"]
    assert all(s["suite"] == "positive" for s in MANIFEST["streams"]
               if "dense_canonical_sha256" in s["expect"])


# -- CLI -------------------------------------------------------------------------------

def test_cli_encode_decode_dense_inspect_trace(tmp_path, capsys):
    src = tmp_path / "x.npy"
    np.save(src, X)
    out = tmp_path / "x.tkb"
    assert cli.main(["encode", str(src), "-o", str(out), "--qp", "-6", "--keep", "0.5",
                     "--grid", "4x4", "--prefix", "1", "--merge-map", "-q"]) == 0
    data = out.read_bytes()
    assert data[6] == levels.PROFILE_HIGH
    assert cli.main(["decode", str(out), "-o", str(tmp_path / "y.npy"), "--dense", "-q"]) == 0
    y = np.load(tmp_path / "y.npy")
    assert y.shape == (3, 17, 8)
    assert np.array_equal(bits(y), bits(tb.to_array(tb.decode(data), dense=True)))
    assert cli.main(["decode", str(out), "-o", str(tmp_path / "c.bin"), "--canonical",
                     "--dense", "-q"]) == 0
    assert hashlib.sha256((tmp_path / "c.bin").read_bytes()).hexdigest() == \
        decode_sha(data, dense=True)
    capsys.readouterr()
    assert cli.main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "merge map" in text and "(32 bits)" in text      # 8 stand-ins of 4 bits
    assert cli.main(["inspect", "--json", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["frames"][0]["merge_map"] == dict(stand_ins=8, bits=32)
    assert cli.main(["trace", str(out)]) == 0
    trace = capsys.readouterr().out
    assert "presence_present = 2" in trace and ".stand_in = [" in trace
    ids = tmp_path / "ids.npy"
    np.save(ids, np.arange(10))
    assert cli.main(["encode", str(ids), "-o", str(tmp_path / "i.tkb"), "--merge-map"]) == 2


# -- the harness's dense run (clause 11.2) --------------------------------------------

def wrong_dense(data, dense=False):
    """A decoder whose dense output is the non-dense one (fails the dense check)."""
    return adapters.decode_reference(data)


def test_harness_dense_run(tmp_path):
    suite = harness.load_suite()
    globs = ["merge_map_grid_prefix", "merge_map_mixed_frames", "merge_map_nothing_kept"]
    ok = harness.run_suite(adapters.make_decoder("reference"), suite, globs=globs, jobs=1)
    assert [r.state for r in ok.results] == ["pass"] * 3
    bad = harness.run_suite(adapters.make_decoder("test_merge_map.py:wrong_dense"
                                                  .replace("test_merge_map.py", __file__)),
                            suite, globs=globs, jobs=1)
    states = {r.name: (r.state, r.note) for r in bad.results}
    assert states["merge_map_grid_prefix"][0] == "fail"
    assert "clause 10.4" in states["merge_map_grid_prefix"][1]
    assert states["merge_map_nothing_kept"][0] == "pass"      # negative: no dense run
    tkb = str(Path(sys.executable).parent / "tkb")
    cmd = adapters.make_decoder(f"cmd:{tkb} decode {{input}} --canonical -o {{output}} -q "
                                "{dense}")
    assert cmd.dense and cmd.argv("i", "o") == [tkb, "decode", "i", "--canonical", "-o",
                                                 "o", "-q"]
    assert cmd.argv("i", "o", True)[-1] == "--dense"
    assert not adapters.make_decoder(f"cmd:{tkb} decode {{input}} -o {{output}}").dense
    run = harness.run_suite(cmd, suite, globs=globs[:2], jobs=1)
    assert [r.state for r in run.results] == ["pass"] * 2


# -- GPU path (Triton interpreter on CPU) ------------------------------------------------

def test_gpu_encode_and_dense_decode_match_the_reference():
    pytest.importorskip("torch")
    pytest.importorskip("triton")
    for opts in (dict(qp=-6, keep=0.5, lane_steps=16, **GRID),
                 dict(lossless=True, keep=0.5, lane_steps=16, **GRID)):
        ref = enc(merge_map=True, **opts)
        gpu = tb.encode(X, backend="gpu", device="cpu", merge_map=True, **opts)
        assert gpu == ref
        want = tb.to_array(tb.decode(ref), dense=True)
        s = tb.decode_tensors(ref, dense=True, backend="gpu", device="cpu")
        got = np.stack([f.values.view(__import__("torch").int16).numpy() for f in s.frames])
        assert np.array_equal(got.view(np.uint16), bits(want))
        assert all(f.stand_ins is not None for f in s.frames)
        g = tb.decode(ref, backend="gpu", device="cpu", dense=True)
        assert np.array_equal(bits(tb.to_array(g)), bits(want))


# -- fuzzing ---------------------------------------------------------------------------

SEEDS = [enc(merge_map=True, qp=-6, keep=0.5, **GRID),
         enc(X[:1], merge_map=True, qp=-8, keep=0.3, predictor="left"),
         (SUITE_DIR / "streams" / "merge_map_one_kept.tkb").read_bytes()]


@given(st.integers(0, 2**32 - 1), st.integers(0, len(SEEDS) - 1))
def test_fuzz_merge_map_streams_decode_or_raise_tkb_errors(seed, i):
    data = mutate(np.random.default_rng(seed), SEEDS[i])
    for dense in (False, True):
        try:
            tb.decode(data, dense=dense)
            tb.decode(data, strict=False, dense=dense)
        except tb.TKBError:
            pass


@given(st.binary(max_size=64), st.integers(0, len(SEEDS) - 1), st.integers(0, 400))
def test_spliced_bytes_decode_or_raise_and_agree_with_spec_decoder(junk, i, at):
    base = SEEDS[i]
    data = base[:16 + at] + junk + base[16 + at + len(junk):]
    try:
        ref = ("ok", tb.canonical_sha256(tb.decode(data, dense=True)))
    except tb.TKBError as e:
        ref = ("error", type(e).__name__)
    try:
        spec = ("ok", decode_sha(data, dense=True))
    except E as e:
        spec = ("error", f"TKB{e.cls}Error")
    assert ref == spec
