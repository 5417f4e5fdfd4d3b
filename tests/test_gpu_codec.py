"""The GPU path end to end: streams written through the kernels are byte-identical
to the reference encoder's, and streams decoded through them give the reference's
values, frames and errors (strict and non-strict).  Through the public API, the
dispatch layer and the CLI.

Runs the kernels in Triton's interpreter on CPU (TKB_TEST_DEVICE=cuda: on a GPU).
Small frames and short lanes (lane_steps) keep the interpreter quick.
"""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

import tokenbits as tkb  # noqa: E402
from tokenbits import cli  # noqa: E402
from tokenbits.errors import TKBError  # noqa: E402
from tokenbits.kernels import dispatch  # noqa: E402
from streamtools import join, split  # noqa: E402

DEV = os.environ.get("TKB_TEST_DEVICE", "cpu")
RNG = np.random.default_rng(20261121)


def _vit_like(frames, grid, prefix, d, dtype=np.float16):
    """Correlated tokens on a grid (neighbours alike) with a strong channel."""
    h, w = grid
    base = RNG.standard_normal((frames, 1, d)) * 2
    field = np.cumsum(RNG.standard_normal((frames, h * w + prefix, d)) * 0.4, axis=1)
    x = base + field
    x[:, :, 3] *= 12
    return x.astype(dtype)


X16 = _vit_like(2, (6, 6), 1, 24)
CASES = {
    "float16 up, token scale": (X16, dict(grid=(6, 6), prefix_tokens=1, qp=-6,
                                          predictor="up")),
    "float16 left, pruned": (X16, dict(grid=(6, 6), prefix_tokens=1, target_cos=0.99,
                                       keep=0.5, predictor="left")),
    "float16 per-channel steps, escapes": (X16, dict(grid=(6, 6), prefix_tokens=1, qp=-30,
                                                     per_channel_steps=True, num_tables=3)),
    "bfloat16 in, none": (X16.astype(np.float32).view(np.uint32).__rshift__(16)
                          .astype(np.uint16), dict(source_dtype="bfloat16", qp=0,
                                                   predictor="none")),
    "float32 to bfloat16, 3 lanes": (X16.astype(np.float32) * 1e-3,
                                     dict(qp=-40, output_dtype="bfloat16", num_lanes=3,
                                          token_scale=False)),
    "lossless float16 up": (X16, dict(lossless=True, grid=(6, 6), prefix_tokens=1)),
    "lossless float32 none": (X16.astype(np.float32)[:1], dict(lossless=True,
                                                               predictor="none")),
    "token ids": (RNG.integers(0, 3000, (3, 50)), dict()),
    # boundaries: nothing kept, empty frames, very fine steps (long escapes), coarse steps
    "nothing kept": (X16[:, 1:], dict(grid=(6, 6), keep=0.0, qp=0)),
    "empty frames": (X16[:, :0], dict(qp=0, max_tokens=5)),
    "empty id frames": (np.zeros((2, 0), dtype=np.int64), dict(vocab_size=10)),
    "lossless pruned": (X16, dict(lossless=True, keep=0.3, grid=(6, 6), prefix_tokens=1)),
    "float32 finest steps, up": (X16.astype(np.float32), dict(qp=-80, predictor="up",
                                                              grid=(6, 6), prefix_tokens=1)),
    "coarsest steps": (X16, dict(qp=80)),
}


def _canon(stream):
    return tkb.canonical_sha256(stream)


@pytest.mark.parametrize("name", list(CASES))
def test_gpu_encode_is_byte_identical_and_decodes_identically(name):
    x, opts = CASES[name]
    opts = dict(opts, lane_steps=opts.get("lane_steps", 16))
    ref = tkb.encode(x, backend="reference", **opts)
    gpu = tkb.encode(x, backend="gpu", device=DEV, **opts)
    assert gpu == ref
    want = tkb.decode(ref, backend="reference")
    got = tkb.decode(ref, backend="gpu", device=DEV)
    assert _canon(got) == _canon(want)
    for f, g in zip(want.frames, got.frames):
        assert g.values.dtype == f.values.dtype and g.values.tobytes() == f.values.tobytes()


def test_decode_tensors_dense_scatters_kept_tokens():
    x, opts = CASES["float16 left, pruned"]
    data = tkb.encode(x, backend="reference", lane_steps=16, **opts)
    ref = tkb.decode(data, backend="reference")
    got = tkb.decode_tensors(data, device=DEV, dense=True, backend="gpu")
    for f, g in zip(ref.frames, got.frames):
        v = g.values.cpu().numpy()
        assert v.shape == (f.num_tokens, f.values.shape[1])
        assert v[f.positions.astype(np.int64)].tobytes() == f.values.tobytes()
        dropped = np.setdiff1d(np.arange(f.num_tokens), f.positions)
        assert dropped.size and not v[dropped].any()


def test_multi_track_stream_through_the_gpu():
    tracks = [(X16, dict(grid=(6, 6), prefix_tokens=1, qp=0, lane_steps=16)),
              (RNG.integers(0, 500, (2, 30)), dict(lane_steps=16))]
    ref = tkb.encode_tracks(tracks, backend="reference", meta={"model": "test"})
    assert tkb.encode_tracks(tracks, backend="gpu", device=DEV, meta={"model": "test"}) == ref
    assert _canon(tkb.decode(ref, backend="gpu", device=DEV)) == _canon(tkb.decode(ref))


def _outcome(data, strict, backend):
    try:
        s = tkb.decode(data, strict=strict, backend=backend, device=DEV)
    except TKBError as e:
        return ("raise", type(e).__name__, e.offset)
    return ("ok", _canon(s), [(type(e).__name__, e.offset) for e in s.errors],
            [f.offset for f in s.frames])


def test_corrupted_streams_fail_the_same_way():
    """Mutations of a three-frame stream (words, headers, escapes): the GPU decoder
    raises the same error class at the same offset (strict), and keeps the same
    frames and records the same errors in the same order (non-strict)."""
    x = _vit_like(3, (4, 4), 0, 8)
    data = tkb.encode(x, backend="reference", grid=(4, 4), qp=-24, lane_steps=8)
    rng = np.random.default_rng(4)
    kinds = set()
    for trial in range(24):
        b = bytearray(data)
        for _ in range(1 + trial % 3):
            i = int(rng.integers(16, len(b)))
            b[i] ^= 1 << int(rng.integers(0, 8))
        b = bytes(b)
        # recompute CRCs half the time, so that payload checks (not the CRC) decide
        if trial % 2:
            try:
                head, units = split(b)
            except TKBError:     # framing broken: keep the stream as it is
                units = None
            if units is not None:
                b = join(head, units)
        for strict in (True, False):
            want = _outcome(b, strict, "reference")
            assert _outcome(b, strict, "gpu") == want
            kinds.add(want[0] if want[0] == "raise" else ("ok", bool(want[2])))
    assert ("raise" in kinds) and any(isinstance(k, tuple) and k[1] for k in kinds)


def test_backend_choice(monkeypatch, tmp_path):
    from tokenbits.errors import TKBBackendError
    assert dispatch.choose("reference") == "reference"
    with pytest.raises(TKBBackendError):
        dispatch.choose("fast")
    if not torch.cuda.is_available():
        # no GPU: libtkb when it is built (its encoder core), else the reference
        cpu = "native" if dispatch.native_unavailable("encode") is None else "reference"
        assert dispatch.choose("auto") == cpu
        # without the interpreter and without a GPU, insisting on the GPU is a usage error
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(TKBBackendError, match="no CUDA device"):
            dispatch.choose("gpu")
        np.save(tmp_path / "x.npy", X16[0])
        assert cli.main(["encode", str(tmp_path / "x.npy"), "-o", str(tmp_path / "x.tkb"),
                         "-q", "--backend", "gpu"]) == cli.EXIT_USAGE


def test_cli_gpu_backend_writes_the_same_file(tmp_path):
    x, opts = CASES["float16 up, token scale"]
    np.save(tmp_path / "x.npy", x)
    args = ["--grid", "6x6", "--prefix", "1", "--qp", "-6", "-q", "--lane-steps", "16"]
    assert cli.main(["encode", str(tmp_path / "x.npy"), "-o", str(tmp_path / "r.tkb"),
                     "--backend", "reference"] + args) == 0
    assert cli.main(["encode", str(tmp_path / "x.npy"), "-o", str(tmp_path / "g.tkb"),
                     "--backend", "gpu", "--device", DEV] + args) == 0
    assert (tmp_path / "r.tkb").read_bytes() == (tmp_path / "g.tkb").read_bytes()
    assert cli.main(["decode", str(tmp_path / "r.tkb"), "-o", str(tmp_path / "r.npy"), "-q",
                     "--backend", "reference"]) == 0
    assert cli.main(["decode", str(tmp_path / "r.tkb"), "-o", str(tmp_path / "g.npy"), "-q",
                     "--backend", "gpu", "--device", DEV]) == 0
    assert np.load(tmp_path / "r.npy").tobytes() == np.load(tmp_path / "g.npy").tobytes()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_tensor_on_the_device_is_coded_in_place(dtype):
    """A torch tensor on the kernels' device is read there (no second upload) and gives
    the reference's bytes, bfloat16 included."""
    x = torch.from_numpy(X16.astype(np.float32)).to(dtype).to(DEV)
    opts = dict(grid=(6, 6), prefix_tokens=1, qp=-6, lane_steps=16)
    ref = tkb.encode(x.cpu(), backend="reference", **opts)
    assert tkb.encode(x, backend="gpu", device=DEV, **opts) == ref
    lossless = dict(opts, qp=None, lossless=True)
    assert tkb.encode(x, backend="gpu", device=DEV, **lossless) == \
        tkb.encode(x.cpu(), backend="reference", **lossless)


from hypothesis import given, strategies as st  # noqa: E402

_SMALL = tkb.encode(_vit_like(2, (3, 3), 1, 6), backend="reference", grid=(3, 3),
                    prefix_tokens=1, qp=-20, lane_steps=4)


@given(st.lists(st.tuples(st.integers(0, len(_SMALL) - 1), st.integers(1, 255)),
                min_size=1, max_size=4), st.booleans(), st.booleans())
def test_any_mutation_decodes_the_same_on_both_backends(edits, strict, fix_crc):
    """Property: whatever bytes are changed (with the unit CRCs recomputed or not), the
    GPU decoder's outcome (values and errors, or the exception class and offset) is the
    reference decoder's."""
    b = bytearray(_SMALL)
    for i, x in edits:
        b[i] ^= x
    b = bytes(b)
    if fix_crc:
        try:
            head, units = split(b)
            b = join(head, units)
        except TKBError:
            pass
    assert _outcome(b, strict, "gpu") == _outcome(b, strict, "reference")
