"""The tkb command line, run in-process through tokenbits.cli.main."""

import json
import sys
import types

import numpy as np
import pytest

from tokenbits import cli
from tokenbits.decoder import UNIT_FRAME, decode


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(0).standard_normal((2, 64, 32)).astype(np.float16)


def run(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def cosine(a, b):
    a, b = a.astype(np.float64).reshape(-1, a.shape[-1]), b.astype(np.float64).reshape(
        -1, b.shape[-1])
    return float(np.mean((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


def encode(capsys, tmp_path, array, *opts, name="in.npy"):
    src, dst = tmp_path / name, tmp_path / "out.tkb"
    np.save(src, array)
    rc, out, err = run(capsys, "encode", src, "-o", dst, *opts)
    assert rc == 0, err
    return dst, out


# -- encode / decode ---------------------------------------------------------------

def test_npy_round_trip(capsys, tmp_path, tokens):
    tkb, out = encode(capsys, tmp_path, tokens)
    assert "2 frames" in out and "bits/value" in out and "profile Main" in out
    assert "level 10" in out
    rc, out, err = run(capsys, "decode", tkb, "-o", tmp_path / "dec.npy")
    assert rc == 0 and err == ""
    y = np.load(tmp_path / "dec.npy")
    assert y.shape == tokens.shape and y.dtype == tokens.dtype
    assert cosine(tokens, y) > 0.985


def test_single_frame_keeps_leading_axis(capsys, tmp_path, tokens):
    tkb, _ = encode(capsys, tmp_path, tokens[:1], "--qp", "-12")
    assert run(capsys, "decode", tkb, "-o", tmp_path / "d.npy")[0] == 0
    assert np.load(tmp_path / "d.npy").shape == (1, 64, 32)
    tkb, _ = encode(capsys, tmp_path, tokens[0], "--qp", "-12")
    assert run(capsys, "decode", tkb, "-o", tmp_path / "d.npy")[0] == 0
    assert np.load(tmp_path / "d.npy").shape == (64, 32)


def test_safetensors_round_trip_and_options(capsys, tmp_path, tokens):
    st = pytest.importorskip("safetensors.numpy")
    x = tokens.astype(np.float32)
    st.save_file({"emb": x}, str(tmp_path / "in.safetensors"))
    tkb = tmp_path / "x.tkb"
    rc, _, err = run(capsys, "encode", tmp_path / "in.safetensors", "-o", tkb, "--qp", "-10",
                     "--predictor", "left", "--output-dtype", "float16", "--level", "20")
    assert rc == 0, err
    rc, _, _ = run(capsys, "decode", tkb, "-o", tmp_path / "dec.safetensors")
    assert rc == 0
    y = st.load_file(str(tmp_path / "dec.safetensors"))
    assert list(y) == ["values_0"]
    assert y["values_0"].shape == x.shape and y["values_0"].dtype == np.float16
    assert cosine(x, y["values_0"]) > 0.99
    rc, out, _ = run(capsys, "inspect", tkb, "--json")
    info = json.loads(out)
    assert info["header"]["level_idc"] == 20
    ps = info["tracks"][0]["parameter_sets"][0]
    assert ps["predictor"] == "left" and ps["qp"] == -10 and ps["output_dtype"] == "float16"


def test_pt_bfloat16_lossless(capsys, tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("safetensors.torch")
    t = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    torch.save(t, tmp_path / "in.pt")
    tkb = tmp_path / "x.tkb"
    rc, out, err = run(capsys, "encode", tmp_path / "in.pt", "-o", tkb, "--lossless")
    assert rc == 0, err
    assert "bfloat16" in out and "profile Lossless" in out
    rc, _, err = run(capsys, "decode", tkb, "-o", tmp_path / "d.npy")
    assert rc == 2 and "bfloat16" in err and ".safetensors" in err
    rc, _, _ = run(capsys, "decode", tkb, "-o", tmp_path / "d.safetensors")
    assert rc == 0
    from safetensors.torch import load_file
    y = load_file(str(tmp_path / "d.safetensors"))["values_0"]
    assert y.dtype == torch.bfloat16 and torch.equal(y, t)


def test_lossless_exact(capsys, tmp_path, tokens):
    x = tokens.copy()
    x[0, 0, :4] = [np.inf, -0.0, np.nan, 65504]
    tkb, out = encode(capsys, tmp_path, x, "--lossless")
    assert "profile Lossless" in out
    assert run(capsys, "decode", tkb, "-o", tmp_path / "d.npy")[0] == 0
    y = np.load(tmp_path / "d.npy")
    assert y.dtype == np.float16 and np.array_equal(y.view(np.uint16), x.view(np.uint16))


def test_ids_track(capsys, tmp_path):
    ids = np.random.default_rng(2).integers(0, 1000, size=(3, 40))  # int64
    tkb, out = encode(capsys, tmp_path, ids, "--vocab-size", "1024")
    assert "3 frames" in out
    assert run(capsys, "decode", tkb, "-o", tmp_path / "d.npy")[0] == 0
    y = np.load(tmp_path / "d.npy")
    assert y.dtype == ids.dtype and np.array_equal(y, ids)
    info = json.loads(run(capsys, "inspect", tkb, "--json")[1])
    ps = info["tracks"][0]["parameter_sets"][0]
    assert ps["kind"] == "ids" and ps["vocab_size"] == 1024 and ps["coding_mode"] == "split"


def test_pruned_decode_to_safetensors(capsys, tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    x = np.random.default_rng(3).standard_normal((2, 65, 16)).astype(np.float32)
    tkb, _ = encode(capsys, tmp_path, x, "--grid", "8x8", "--prefix", "1", "--keep", "0.5",
                    "--predictor", "up")
    rc, _, err = run(capsys, "decode", tkb, "-o", tmp_path / "d.npy")
    assert rc == 2 and "pruned" in err and ".safetensors" in err
    assert not (tmp_path / "d.npy").exists()
    assert run(capsys, "decode", tkb, "-o", tmp_path / "d.safetensors")[0] == 0
    y = st.load_file(str(tmp_path / "d.safetensors"))
    assert sorted(y) == ["positions_0_0", "positions_0_1", "values_0_0", "values_0_1"]
    for f in range(2):
        pos = y[f"positions_0_{f}"]
        assert pos[0] == 0 and pos.size == 1 + 32 and np.all(np.diff(pos.astype(int)) > 0)
        assert y[f"values_0_{f}"].shape == (pos.size, 16)
        assert cosine(x[f][pos], y[f"values_0_{f}"]) > 0.98
    info = json.loads(run(capsys, "inspect", tkb, "--json")[1])
    assert [(f["tokens"], f["kept"]) for f in info["frames"]] == [(65, 33), (65, 33)]
    assert info["tracks"][0]["parameter_sets"][0]["grid"] == dict(height=8, width=8,
                                                                  prefix_tokens=1)


# -- inspect, trace ------------------------------------------------------------------

def test_inspect(capsys, tmp_path, tokens):
    tkb, _ = encode(capsys, tmp_path, tokens, "--meta", "model=vit-b/16", "--meta", "layer=7")
    rc, out, _ = run(capsys, "inspect", tkb, "--json")
    assert rc == 0
    info = json.loads(out)
    assert info["metadata"]["stream"] == {"model": "vit-b/16", "layer": "7"}
    assert info["header"]["profile"] == "Main" and info["header"]["version"] == "1.0"
    assert [f["frame"] for f in info["frames"]] == [0, 1]
    assert info["totals"]["values"] == tokens.size
    assert info["totals"]["bits_per_value"] == pytest.approx(8 * tkb.stat().st_size /
                                                             tokens.size)
    assert [e["frame"] for e in info["index"]["0"]] == [0, 1]
    assert all(u["status"] == "ok" and u["crc"] == "ok" for u in info["units"])
    rc, out, _ = run(capsys, "inspect", tkb)
    assert rc == 0 and "model = vit-b/16" in out and "profile Main" in out


def test_trace(capsys, tmp_path, tokens):
    tkb, _ = encode(capsys, tmp_path, tokens)
    rc, out, _ = run(capsys, "trace", tkb)
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split() == ["bit", "0", "len", "32", "stream_header.magic", "=",
                                "0x424b5489"]
    assert any(".unit_crc32c = 0x" in ln for ln in lines)
    assert any("unit[0].unit_size = " in ln for ln in lines)
    assert any(".frame_number = 1" in ln for ln in lines)
    assert any(".rans_data = [" in ln and "(len " in ln for ln in lines)
    # absolute offsets: the second unit's header starts where the first unit ends
    data = tkb.read_bytes()
    first = int.from_bytes(data[16:20], "little")
    assert any(ln.startswith(f"bit {(16 + 8 + first + 4) * 8} ") and "unit[1].unit_size" in ln
               for ln in lines)
    # a frame's tps_id sits right after its unit header
    frame_off = next(u.offset for u, _ in decode(data).units if u.unit_type == UNIT_FRAME)
    assert any(ln.startswith(f"bit {(frame_off + 8) * 8} ") and ln.endswith(".tps_id = 0")
               for ln in lines)
    rc, out, _ = run(capsys, "trace", tkb, "--limit", "5")
    assert rc == 0 and len(out.splitlines()) == 5


# -- damaged streams -----------------------------------------------------------------

def _corrupt_first_frame(path):
    data = bytearray(path.read_bytes())
    off = next(u.offset for u, _ in decode(bytes(data)).units if u.unit_type == UNIT_FRAME)
    data[off + 8 + 40] ^= 0x5A
    path.write_bytes(bytes(data))
    return off


def test_corrupted_frame(capsys, tmp_path, tokens):
    tkb, _ = encode(capsys, tmp_path, tokens, "--qp", "-12")
    off = _corrupt_first_frame(tkb)
    rc, out, err = run(capsys, "decode", tkb, "-o", tmp_path / "d.npy")
    assert rc == 3
    assert "crc32c" in err and err.startswith("tkb: error: ")
    assert "frame 0 lost" in out
    y = np.load(tmp_path / "d.npy")
    assert y.shape == (1, 64, 32) and cosine(tokens[1:], y) > 0.99
    rc, _, err = run(capsys, "decode", tkb, "-o", tmp_path / "s.npy", "--strict")
    assert rc == 1 and "crc32c" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "s.npy").exists()
    rc, out, _ = run(capsys, "inspect", tkb, "--json")
    assert rc == 3
    info = json.loads(out)
    bad = [u for u in info["units"] if u["offset"] == off][0]
    assert bad["crc"] == "mismatch" and "crc32c mismatch" in bad["status"]
    assert [f["frame"] for f in info["frames"]] == [1]
    rc, out, _ = run(capsys, "inspect", tkb)
    assert rc == 3 and "mismatch" in out
    rc, out, _ = run(capsys, "trace", tkb)
    assert rc == 3 and "(mismatch: computed 0x" in out


def test_truncated_stream(capsys, tmp_path, tokens):
    tkb, _ = encode(capsys, tmp_path, tokens, "--qp", "-12")
    data = tkb.read_bytes()
    tkb.write_bytes(data[:-100])  # cuts into the last frame or the index
    rc, out, err = run(capsys, "inspect", tkb, "--json")
    assert rc == 3 and "cannot be found" in json.loads(out)["units"][-1]["status"]
    rc, _, err = run(capsys, "decode", tkb, "-o", tmp_path / "d.npy")
    assert rc == 3 and "ends past the stream" in err
    rc, out, _ = run(capsys, "trace", tkb)
    assert rc == 3 and "error:" in out.splitlines()[-1]


def test_not_a_stream(capsys, tmp_path):
    p = tmp_path / "junk.tkb"
    p.write_bytes(b"definitely not a TKB stream")
    for cmd in (["decode", p, "-o", tmp_path / "d.npy"], ["inspect", p]):
        rc, _, err = run(capsys, *cmd)
        assert rc == 1 and "not a TKB stream" in err and len(err.splitlines()) == 1


# -- errors --------------------------------------------------------------------------

def test_missing_file(capsys, tmp_path):
    for cmd in ("decode", "inspect", "trace"):
        argv = [cmd, tmp_path / "nope.tkb"] + (["-o", tmp_path / "d.npy"] if cmd == "decode"
                                              else [])
        rc, out, err = run(capsys, *argv)
        assert rc == 2 and out == ""
        assert err.startswith("tkb: error: ") and "no such file" in err
        assert len(err.splitlines()) == 1
    rc, _, err = run(capsys, "encode", tmp_path / "nope.npy", "-o", tmp_path / "x.tkb")
    assert rc == 2 and "no such file" in err


@pytest.mark.parametrize("opts, words", [
    (["--bogus"], "unrecognized arguments"),
    (["--qp", "abc"], "invalid int value"),
    (["--qp", "3", "--bpv", "2"], "at most one"),
    (["--lossless", "--qp", "3"], "--lossless"),
    (["--keep", "1.5"], "--keep"),
    (["--grid", "8by8"], "--grid"),
    (["--grid", "8x7"], "grid 8x7"),          # the encoder's TKBEncodeError
    (["--predictor", "up"], "needs --grid"),
    (["--predictor", "diag"], "invalid choice"),
    (["--level", "7"], "--level 7"),
    (["--meta", "novalue"], "KEY=VALUE"),
    (["--vocab-size", "10"], "token ids"),
])
def test_bad_encode_options(capsys, tmp_path, tokens, opts, words):
    np.save(tmp_path / "in.npy", tokens)
    rc, out, err = run(capsys, "encode", tmp_path / "in.npy", "-o", tmp_path / "x.tkb", *opts)
    assert rc == 2 and words in err
    assert err.startswith("tkb: error: ") and len(err.splitlines()) == 1
    assert not (tmp_path / "x.tkb").exists()


def test_bad_usage(capsys, tmp_path, tokens):
    tkb, _ = encode(capsys, tmp_path, tokens)
    for argv in ([], ["frobnicate"], ["decode", tkb], ["decode", tkb, "-o", tmp_path / "a.pt"],
                 ["decode", tkb, "-o", tmp_path / "a.npy", "--track", "3"],
                 ["encode", tmp_path / "in.txt", "-o", tmp_path / "x.tkb"],
                 ["trace", tkb, "--limit", "-1"]):
        rc, _, err = run(capsys, *argv)
        assert rc == 2 and err.startswith("tkb: error: ") and len(err.splitlines()) == 1, argv
    assert run(capsys, "--help")[0] == 0


def test_level_too_small(capsys, tmp_path):
    x = np.random.default_rng(4).standard_normal((5000, 2)).astype(np.float32)
    np.save(tmp_path / "big.npy", x)
    rc, _, err = run(capsys, "encode", tmp_path / "big.npy", "-o", tmp_path / "x.tkb",
                     "--level", "10", "--qp", "0")
    assert rc == 2 and "level 10" in err and not (tmp_path / "x.tkb").exists()


def test_bench_demo_delegation(capsys, monkeypatch):
    seen = {}
    fake = types.ModuleType("tokenbits.bench")
    fake.main = lambda args: seen.setdefault("args", args) and 0
    monkeypatch.setitem(sys.modules, "tokenbits.bench", fake)
    rc, _, _ = run(capsys, "bench", "--frames", "3", "x")
    assert rc == 0 and seen["args"] == ["--frames", "3", "x"]
    monkeypatch.setitem(sys.modules, "tokenbits.demo", None)  # import fails
    rc, _, err = run(capsys, "demo")
    assert rc == 1 and "tkb demo" in err and "not available" in err
