"""libtkb, the C decoder of native/ (issue 17): conformance through the binding and the
command, differential tests against the reference (hypothesis-generated and mutated
streams: same canonical output, same errors by class and clause), the scalar and AVX2
paths, threads, streaming, the backend dispatch, and one sanitizer build.

Skipped as a whole where libtkb is not built (no C compiler at install time)."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import tokenbits as tb
from tokenbits import native
from tokenbits.conformance import adapters, cli as conf_cli
from tokenbits.errors import TKBBackendError

sys.path.insert(0, str(Path(__file__).parent))
import fuzzing  # noqa: E402

pytestmark = pytest.mark.skipif(native.available() is not None,
                                reason=f"libtkb not built: {native.available()}")

ROOT = Path(__file__).resolve().parent.parent
SUITE = Path(tb.conformance.__file__).parent if hasattr(tb, "conformance") else \
    ROOT / "conformance"
SUITE = Path(adapters.__file__).parent
MANIFEST = json.loads((SUITE / "manifest.json").read_text())
TRANSFORMS = sorted((SUITE / "transforms").glob("*.tkbt"))


def _errors(stream) -> list:
    return [(type(e).__name__, e.clause) for e in stream.errors]


def _native(data: bytes, strict=False, dense=False, **kw):
    return tb.decode(data, strict=strict, backend="native", dense=dense, **kw)


def _outcome(data: bytes, strict: bool, backend: str, transforms=(), dense=False):
    """(canonical sha256, [(class, clause)]) of a decode; a raised error counts as the
    only error with no output."""
    try:
        s = tb.decode(data, strict=strict, backend=backend, transforms=list(transforms),
                      dense=dense)
    except tb.TKBError as e:
        return ("raise", type(e).__name__, e.clause)
    return (tb.canonical_sha256(s), [(type(e).__name__, e.clause) for e in s.errors])


# -- the conformance suite ------------------------------------------------------------

@pytest.mark.parametrize("entry", MANIFEST["streams"], ids=lambda e: e["name"])
def test_conformance_stream_through_the_binding(entry):
    """Canonical digest, and every error with its class and clause, as the manifest
    expects (a resilient decode with the suite's transforms, clause 11.1)."""
    data = (SUITE / "streams" / f"{entry['name']}.tkb").read_bytes()
    exp = entry["expect"]
    want = [(e["class"], e["clause"]) for e in exp["errors"]]
    try:
        s = _native(data, transforms=TRANSFORMS)
    except tb.TKBError as e:       # a stream header error (fatal, raised)
        assert [(type(e).__name__, e.clause)] == want and exp["fatal"]
        return
    assert _errors(s) == want
    assert tb.canonical_sha256(s) == exp["canonical_sha256"]
    assert len(s.frames) == exp["frames"]
    if "dense_canonical_sha256" in entry:
        d = _native(data, transforms=TRANSFORMS, dense=True)
        assert tb.canonical_sha256(d) == entry["dense_canonical_sha256"]


def test_conformance_suite_through_the_command_and_the_adapter(capsys):
    """`tkb conformance run` with the command (tkbdec, dense output included) and with
    the registered adapter: every stream passes."""
    assert native.tkbdec_path()
    for dec in ("native-cmd", "native"):
        rc = conf_cli.main(["run", "--decoder", dec, "-j", "2"])
        out = capsys.readouterr().out
        assert rc == 0, out[-3000:]
        assert "292 pass" in out or " 0 fail, 0 error" in out


def _tkbdec(path, *args, env=None) -> tuple:
    r = subprocess.run([native.tkbdec_path(), *args, str(path), "-"], capture_output=True,
                       env=env, timeout=60)
    return r.returncode, r.stdout, r.stderr.decode()


def test_command_errors_and_exit_status(tmp_path):
    """Clause 11.2 contract: one line per error with its class; exit 0 / 1 / 3."""
    env = dict(os.environ, TKB_TRANSFORM_DIR=str(SUITE / "transforms"))
    for entry in MANIFEST["streams"]:
        if entry["suite"] == "positive":
            continue
        path = SUITE / "streams" / f"{entry['name']}.tkb"
        rc, out, err = _tkbdec(path, env=env)
        exp = entry["expect"]
        got = [(ln.split(": ")[1], ln.split("[clause ")[1].split("]")[0])
               for ln in err.splitlines() if "TKB" in ln]
        assert got == [(e["class"], e["clause"]) for e in exp["errors"]], entry["name"]
        assert rc == (1 if exp["fatal"] and not exp["frames"] else 3), entry["name"]
        assert hashlib.sha256(out).hexdigest() == exp["canonical_sha256"], entry["name"]


def test_scalar_and_avx2_paths_give_the_same_bits(tmp_path):
    """The plain C path and the AVX2 path decode every suite stream and the bench-like
    streams to the same bytes (the checkasm rule of the design brief)."""
    rng = np.random.default_rng(5)
    x = np.cumsum(rng.standard_normal((3, 40, 64)), axis=1).astype(np.float16)
    extra = []
    for i, opts in enumerate([dict(qp=-8), dict(qp=-20, output_dtype="bfloat16"),
                              dict(qp=-16, output_dtype="float32", per_channel_steps=True),
                              dict(qp=-12, num_lanes=40, lane_steps=7),
                              dict(qp=-12, grid=(5, 8), predictor="up", token_scale=True)]):
        try:
            p = tmp_path / f"x{i}.tkb"
            p.write_bytes(tb.encode(x, backend="reference", **opts))
            extra.append(p)
        except TypeError:        # an option this encoder does not have
            continue
    paths = sorted((SUITE / "streams").glob("*.tkb")) + extra
    env = dict(os.environ, TKB_TRANSFORM_DIR=str(SUITE / "transforms"))
    for p in paths:
        a = _tkbdec(p, env=env)
        b = _tkbdec(p, "--scalar", env=env)
        assert a[:2] == b[:2], p.name
        for dense in ("--dense",):
            assert _tkbdec(p, dense, env=env)[:2] == _tkbdec(p, dense, "--scalar", env=env)[:2]


# -- differential: hypothesis-generated streams ---------------------------------------

@st.composite
def encodings(draw):
    """A random array and random encoder options (every tool of version 1.1)."""
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["float16", "float32", "bfloat16", "ids"]))
    frames = draw(st.integers(1, 3))
    grid = draw(st.sampled_from([None, (3, 4), (5, 5), (1, 7)]))
    prefix = draw(st.integers(0, 2)) if grid else 0
    n = (grid[0] * grid[1] + prefix) if grid else draw(st.integers(1, 40))
    opts = {}
    if kind == "ids":
        vocab = draw(st.sampled_from([2, 300, 30522, 70000]))
        x = rng.integers(0, vocab, (frames, n)).astype(np.int64)
        opts["vocab_size"] = vocab
        return x, opts
    d = draw(st.sampled_from([1, 3, 8, 17, 64]))
    x = np.cumsum(rng.standard_normal((frames, n, d)) * draw(st.sampled_from([0.1, 1, 50])),
                  axis=1)
    if draw(st.booleans()):
        x[:, :, 0] *= 1000           # a massive-activation channel (escapes)
    x = x.astype(np.float32)
    if grid:
        opts.update(grid=grid, prefix_tokens=prefix)
    if draw(st.booleans()):
        opts["lossless"] = True
    else:
        opts["qp"] = draw(st.integers(-40, 10))
        opts["output_dtype"] = draw(st.sampled_from([None, "float16", "bfloat16", "float32"]))
        if opts["output_dtype"] is None:
            del opts["output_dtype"]
        if draw(st.booleans()):
            opts["per_channel_steps"] = True
        if d >= 3 and draw(st.integers(0, 3)) == 0:
            opts["transform"] = "auto"
    preds = ["none", "left"] + (["up"] if grid else [])
    opts["predictor"] = draw(st.sampled_from(preds))
    if draw(st.integers(0, 2)) == 0:
        opts["keep"] = draw(st.sampled_from([0.3, 0.5, 0.9]))
        if not opts.get("lossless") and draw(st.booleans()):
            opts["merge_map"] = True
    if draw(st.booleans()):
        opts["num_lanes"] = draw(st.integers(1, 40))
        opts["exact_lanes"] = True
        opts["lane_steps"] = draw(st.integers(1, 9))
    if draw(st.booleans()):
        opts["num_tables"] = draw(st.integers(1, 4))
        opts["prob_bits"] = draw(st.integers(9, 15))
    if kind == "float16":
        with np.errstate(over="ignore"):      # infinities are values too (lossless)
            x = x.astype(np.float16)
    elif kind == "bfloat16":
        import torch
        x = torch.from_numpy(x).to(torch.bfloat16)
    return x, opts


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(encodings(), st.integers(1, 3))
def test_differential_generated_streams(enc, threads):
    x, opts = enc
    try:
        data = tb.encode(x, backend="reference", **opts)
    except (tb.TKBEncodeError, ValueError, TypeError):
        return
    for strict in (False, True):
        want = _outcome(data, strict, "reference")
        assert _outcome(data, strict, "native") == want
    dense_ref = _outcome(data, False, "reference", dense=True)
    assert _outcome(data, False, "native", dense=True) == dense_ref
    s = native.decode(data, strict=False, threads=threads)
    assert tb.canonical_sha256(s) == want[0] if want[0] != "raise" else True
    if opts.get("lossless") and not opts.get("keep"):
        y = tb.to_array(tb.decode(data, backend="native"))
        if hasattr(x, "numpy"):          # a bfloat16 tensor: its bit patterns
            import torch
            xa = x.view(torch.int16).numpy().view(np.uint16)
        else:
            xa = np.asarray(x)
        assert y.view(np.uint8).tobytes() == np.asarray(xa).reshape(y.shape).view(
            np.uint8).tobytes()


# -- differential: mutated streams (the fuzz corpus of tests/fuzzing.py) --------------

_CORPUS = None


def _corpus():
    global _CORPUS
    if _CORPUS is None:
        _CORPUS = fuzzing.corpus()
    return _CORPUS


def differential_mutations(n: int, seed: int = 0) -> list:
    """Mutated streams on which the native and reference decoders disagree (strict:
    the first error's class and clause; resilient: canonical output and every error)."""
    rng = np.random.default_rng(seed)
    seeds = _corpus()
    ts = [fuzzing.TRANSFORM]
    bad = []
    for i in range(n):
        data = fuzzing.mutate(rng, seeds[i % len(seeds)])
        for strict in (True, False):
            a = _outcome(data, strict, "reference", ts)
            b = _outcome(data, strict, "native", ts)
            if a != b:
                bad.append((data, strict, a, b))
    return bad


def test_differential_mutated_streams():
    bad = differential_mutations(1500, seed=17)
    for data, strict, a, b in bad[:3]:
        p = fuzzing.save(data, f"native differs (strict={strict}): reference {a}, native {b}")
        print(p)
    assert not bad, bad[0][1:]


def test_regressions_decode_alike():
    for p in sorted((ROOT / "tests" / "regressions").glob("*.tkb")):
        data = p.read_bytes()
        for strict in (True, False):
            assert _outcome(data, strict, "native", [fuzzing.TRANSFORM]) == \
                _outcome(data, strict, "reference", [fuzzing.TRANSFORM]), p.name


# -- API: threads, streaming, random access, dispatch --------------------------------

def _stream64() -> bytes:
    rng = np.random.default_rng(3)
    x = np.cumsum(rng.standard_normal((64, 30, 48)), axis=1).astype(np.float16)
    return tb.encode(x, qp=-10, backend="reference")


def test_threads_give_the_same_frames():
    data = _stream64()
    one = native.decode(data, threads=1)
    for n in (2, 3, 8):
        assert tb.canonical_sha256(native.decode(data, threads=n)) == tb.canonical_sha256(one)
    assert tb.canonical_sha256(one) == tb.canonical_sha256(tb.decode(data, backend="reference"))


def _large_stream() -> bytes:
    """16 frames of 576 x 512: over 1 MiB of units (libtkb then checks CRCs ahead on a
    helper thread) and frames with more symbol bytes than their slot lookup (each worker
    then decodes with its own copy): the paths that only threads > 1 take."""
    rng = np.random.default_rng(5)
    x = np.cumsum(rng.standard_normal((16, 576, 512)), axis=2).astype(np.float16)
    data = tb.encode(x, qp=-10, backend="native")
    assert len(data) > 1 << 20
    return data


def _native_outcome(data: bytes, strict: bool, threads: int):
    try:
        s = native.decode(data, strict=strict, threads=threads)
    except tb.TKBError as e:
        return ("raise", type(e).__name__, e.clause, str(e))
    return (tb.canonical_sha256(s), [(type(e).__name__, e.clause, str(e)) for e in s.errors])


def test_threads_on_large_mutated_streams():
    """Frames decoded in parallel, CRCs checked ahead: the same output and the same errors,
    in the same order, as one thread, on a large stream and 24 seeded mutations of it
    (CRCs, payloads, unit headers, truncations, payloads with their CRC recomputed)."""
    import struct
    from tokenbits.crc32c import crc32c
    data = _large_stream()
    assert _native_outcome(data, True, 2)[0] == tb.canonical_sha256(
        tb.decode(data, backend="reference"))
    units, at = [], 16
    while at + 12 <= len(data):
        size = struct.unpack_from("<I", data, at)[0]
        units.append((at, size))
        at += 12 + size
    rng = np.random.default_rng(11)
    for kind in list(range(5)) * 4 + [0, 1, 4, 4]:
        b = bytearray(data)
        u, sz = units[int(rng.integers(len(units)))]
        if kind == 0:        # the CRC of one or two units
            for _ in range(int(rng.integers(1, 3))):
                u2, s2 = units[int(rng.integers(len(units)))]
                b[u2 + 8 + s2 + int(rng.integers(4))] ^= 1 << int(rng.integers(8))
        elif kind == 1:      # a payload byte (the CRC no longer matches)
            b[u + 8 + int(rng.integers(sz))] ^= 1 << int(rng.integers(8))
        elif kind == 2:      # a unit header byte (size, type, ids)
            b[u + int(rng.integers(8))] ^= 1 << int(rng.integers(8))
        elif kind == 3:      # truncated
            b = b[:int(rng.integers(16, len(b)))]
        else:                # a payload byte with the CRC recomputed: errors past the CRC
            b[u + 8 + int(rng.integers(min(sz, 64)))] ^= 1 << int(rng.integers(8))
            struct.pack_into("<I", b, u + 8 + sz, crc32c(bytes(b[u:u + 8 + sz])))
        b = bytes(b)
        for strict in (False, True):
            one = _native_outcome(b, strict, 1)
            assert _native_outcome(b, strict, 2) == one, (kind, strict)
            assert _native_outcome(b, strict, 3) == one, (kind, strict)


def test_streaming_iter_frames_and_read_frame():
    data = _stream64()
    ref = tb.decode(data, backend="reference")
    got = list(tb.iter_frames(io.BytesIO(data), backend="native"))
    assert [f.frame_number for f in got] == [f.frame_number for f in ref.frames]
    for a, b in zip(got, ref.frames):
        assert a.values.tobytes() == b.values.tobytes()
    # fed a few bytes at a time
    got = list(native.iter_frames(io.BytesIO(data), chunk=7))
    assert len(got) == 64 and got[5].values.tobytes() == ref.frames[5].values.tobytes()
    f = tb.read_frame(data, 0, 17, backend="native")
    assert f.values.tobytes() == ref.frames[17].values.tobytes() and f.frame_number == 17
    with pytest.raises(tb.TKBReferenceError):
        tb.read_frame(data, 0, 99, backend="native")


def test_backend_dispatch():
    from tokenbits.kernels import dispatch
    assert dispatch.choose("native", "decode") == "native"
    with pytest.raises(TKBBackendError, match="unknown backend"):
        dispatch.choose("fortran", "decode")
    # encoding: libtkb's encoder core (tests/test_native_encode.py), auto without a GPU
    x = np.zeros((4, 4), np.float32)
    assert tb.encode(x, backend="native") == tb.encode(x, backend="reference")
    if dispatch.backends()["gpu"] is not None:
        assert dispatch.choose("auto", "decode") == "native"
        assert dispatch.choose("auto", "encode") == "native"
    from tokenbits import cli
    assert "native" in cli.backends_report()


def test_strict_raises_like_the_reference():
    data = bytearray(_stream64())
    data[200] ^= 0x10
    for backend in ("reference", "native"):
        with pytest.raises(tb.TKBCRCError):
            tb.decode(bytes(data), backend=backend)
    with pytest.raises(tb.TKBFormatError):
        tb.decode(b"\x00" * 20, backend="native", strict=False)


# -- sanitizers ------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None,
                    reason="no C compiler")
def test_sanitizer_build_runs_the_suite(tmp_path):
    """libtkb built with -fsanitize=address,undefined decodes every conformance stream
    (dense output too) through tkbdec without a report."""
    sys.path.insert(0, str(ROOT / "native"))
    import build as native_build
    try:
        native_build.build(tmp_path, sanitize=True)
    except RuntimeError as e:
        pytest.skip(f"no sanitizer runtime: {e}")
    exe = str(tmp_path / "tkbdec")
    env = dict(os.environ, TKB_TRANSFORM_DIR=str(SUITE / "transforms"),
               ASAN_OPTIONS="detect_leaks=1", UBSAN_OPTIONS="halt_on_error=1")
    paths = sorted((SUITE / "streams").glob("*.tkb")) + \
        sorted((ROOT / "tests" / "regressions").glob("*.tkb"))
    for i, p in enumerate(paths):
        modes = ([], ["--dense", "--threads", "2"]) + ((["--strict", "--scalar"],) if i % 4 == 0 else ())
        for extra in modes:
            r = subprocess.run([exe, *extra, str(p), "-"], capture_output=True, env=env,
                               timeout=60)
            assert r.returncode in (0, 1, 3), (p.name, extra, r.stderr.decode()[-2000:])


if __name__ == "__main__":      # a long differential run: python -P tests/test_native.py N SEED
    import time
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    t0 = time.time()
    total = 0
    for start in range(0, n, 1000):
        bad = differential_mutations(min(1000, n - start), seed=seed * 1_000_003 + start)
        total += min(1000, n - start)
        for data, strict, a, b in bad:
            print("DIFF", fuzzing.save(data, f"native differs (strict={strict}): {a} vs {b}"))
        print(f"{total} mutated streams x 2 modes, {time.time() - t0:.0f} s", flush=True)
        if bad:
            sys.exit(1)
