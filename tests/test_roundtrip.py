"""Round trips over shapes, dtypes, tools and parameters (property tests).

Lossless paths must return the input bit for bit; lossy paths must return
exactly the encoder's own reconstruction (levels times steps, clause 7.6),
compared with exact equality."""
import io

import numpy as np
import pytest
from hypothesis import given, strategies as st

import tokenbits as tb
from tokenbits import encoder as enc_mod, reconstruction

DTYPES = ["float32", "float16", "bfloat16"]


def make_tokens(rng, f, n, d, dtype, scale=1.0):
    x = (rng.standard_normal((f, n, d)) * scale *
         rng.gamma(1.0, 1.0, size=(1, 1, d))).astype(np.float32)
    if n > 1:  # neighbour correlation, as real tokens have
        x[:, 1:] = 0.7 * x[:, :-1] + 0.3 * x[:, 1:]
    if dtype == "float16":
        return x.astype(np.float16)
    if dtype == "bfloat16":
        return reconstruction.float32_to_bfloat16_bits(x)
    return x


def expected_lossy(x, opts):
    """The encoder's own reconstruction, computed without the decoder."""
    te = enc_mod.TrackEncoder(list(x), enc_mod.TrackOptions(**opts), tb.levels.LEVELS[30])
    out = []
    for xf, pos in zip(te.xf, te.positions):
        lv, codes, _ = te._quantize(xf, te.qp)
        out.append(reconstruction.to_output(reconstruction.dequantize(lv, codes),
                                            te.tps["output_dtype"]))
    return out


@given(f=st.integers(1, 3), n=st.integers(1, 40), d=st.integers(1, 24),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**32 - 1))
def test_lossless_float_exact(f, n, d, dtype, seed):
    x = make_tokens(np.random.default_rng(seed), f, n, d, dtype)
    data = tb.encode(x, lossless=True, source_dtype="bfloat16" if dtype == "bfloat16" else None)
    s = tb.decode(data)
    y = tb.to_array(s)
    assert s.header.profile_idc == 1
    assert y.shape == (x.shape[1:] if f == 1 else x.shape)
    assert np.array_equal(np.asarray(y).view(np.uint8), np.asarray(x).reshape(y.shape).view(np.uint8))


def test_lossless_special_values():
    x = np.array([[0.0, -0.0, np.inf, -np.inf, np.nan, 65504, -65504, 6e-8, 1e-7]],
                 dtype=np.float16)
    y = tb.to_array(tb.decode(tb.encode(x, lossless=True)))
    assert np.array_equal(y.view(np.uint16), x.view(np.uint16))
    x32 = np.array([[np.float32(1e-45), np.float32(3.4e38), np.nan, -0.0]], dtype=np.float32)
    y32 = tb.to_array(tb.decode(tb.encode(x32, lossless=True)))
    assert np.array_equal(y32.view(np.uint32), x32.view(np.uint32))


@given(f=st.integers(1, 3), n=st.integers(1, 300), vocab=st.integers(1, 70000),
       seed=st.integers(0, 2**32 - 1))
def test_ids_exact(f, n, vocab, seed):
    rng = np.random.default_rng(seed)
    ids = np.minimum(rng.zipf(1.3, size=(f, n)) - 1, vocab - 1).astype(np.int64)
    s = tb.decode(tb.encode(ids, vocab_size=vocab))
    y = tb.to_array(s)
    assert y.dtype == np.uint32
    assert np.array_equal(y.reshape(ids.shape), ids.astype(np.uint32))
    assert s.tracks[0][0]["vocab_size"] == vocab


@given(f=st.integers(1, 2), h=st.integers(1, 9), w=st.integers(1, 9), p=st.integers(0, 2),
       d=st.integers(1, 16), dtype=st.sampled_from(DTYPES),
       out=st.sampled_from([None, "float32", "float16", "bfloat16"]),
       predictor=st.sampled_from(["auto", "none", "left", "up"]),
       qp=st.integers(-40, 10), token_scale=st.booleans(), per_channel=st.booleans(),
       lanes=st.integers(1, 40), lane_steps=st.sampled_from([None, 1, 3, 64]),
       seed=st.integers(0, 2**32 - 1))
def test_lossy_grid_exact_reconstruction(f, h, w, p, d, dtype, out, predictor, qp, token_scale,
                                         per_channel, lanes, lane_steps, seed):
    x = make_tokens(np.random.default_rng(seed), f, p + h * w, d, dtype)
    opts = dict(qp=qp, grid=(h, w), prefix_tokens=p, predictor=predictor,
                token_scale=token_scale, per_channel_steps=per_channel, output_dtype=out,
                num_lanes=lanes, lane_steps=lane_steps,
                source_dtype="bfloat16" if dtype == "bfloat16" else None)
    s = tb.decode(tb.encode(x, **opts))
    exp = expected_lossy(x, opts)
    assert len(s.frames) == f
    for fr, e in zip(s.frames, exp):
        assert fr.dtype == (out or dtype)
        assert np.array_equal(np.asarray(fr.values).view(np.uint8), e.view(np.uint8))


@given(f=st.integers(1, 3), n=st.integers(2, 60), d=st.integers(1, 12),
       keep=st.floats(0.0, 1.0), grid=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_pruned_positions_and_values(f, n, d, keep, grid, seed):
    rng = np.random.default_rng(seed)
    if grid:
        h = int(rng.integers(1, 8))
        n = h * h + 1
    x = make_tokens(rng, f, n, d, "float32")
    opts = dict(qp=-20, keep=keep, predictor="left")
    if grid:
        opts.update(grid=(h, h), prefix_tokens=1, predictor="up")
    s = tb.decode(tb.encode(x, **opts))
    exp = expected_lossy(x, opts)
    for i, fr in enumerate(s.frames):
        want = enc_mod.prune(x[i], keep, 1 if grid else 0) if keep < 1 else np.arange(n)
        assert np.array_equal(fr.positions, want)
        assert np.array_equal(fr.values, exp[i])
        assert fr.num_tokens == n


def test_pruning_extremes():
    x = make_tokens(np.random.default_rng(1), 2, 17, 8, "float16")
    for keep in (0.0, 1.0 / 16):
        s = tb.decode(tb.encode(x, qp=-10, keep=keep, grid=(4, 4), prefix_tokens=1))
        assert all(fr.positions[0] == 0 for fr in s.frames)   # prefix tokens always kept
        assert all(fr.num_kept == 1 + round(keep * 16) for fr in s.frames)


def test_target_cos_and_bpv_controls():
    x = make_tokens(np.random.default_rng(2), 2, 64, 48, "float32")
    from tokenbits.baselines import mean_token_cosine
    for target in (0.95, 0.99, 0.999):
        y = tb.to_array(tb.decode(tb.encode(x, target_cos=target)))
        assert mean_token_cosine(x.reshape(-1, 48), y.reshape(-1, 48)) >= target
    for bpv in (1.5, 3.0):
        data = tb.encode(x, bpv=bpv)
        assert len(data) * 8 / x.size <= bpv


def test_qp_six_doubles_the_step():
    assert reconstruction.STEP[150] == 2 * reconstruction.STEP[144] == 2.0
    assert np.all(reconstruction.STEP[6:] == 2 * reconstruction.STEP[:-6])


def test_multi_track_metadata_index_and_random_access():
    rng = np.random.default_rng(3)
    x = make_tokens(rng, 3, 17, 8, "float16")
    ids = rng.integers(0, 1000, (2, 20))
    data = tb.encode_tracks([(x, dict(qp=-12, grid=(4, 4), prefix_tokens=1,
                                      meta={"layer": "11"})),
                             (ids, dict(vocab_size=1000))],
                            meta={"model.name": "unit-test", "ключ": "значение"})
    s = tb.decode(data)
    assert sorted(s.tracks) == [0, 1]
    assert s.metadata[255] == {"model.name": "unit-test", "ключ": "значение"}
    assert s.metadata[0] == {"layer": "11"}
    assert [f.track_id for f in s.frames] == [0, 1, 0, 1, 0]
    assert np.array_equal(tb.to_array(s, 1), ids.astype(np.uint32))
    fr = tb.read_frame(data, 0, 2)
    assert np.array_equal(fr.values, s.track_frames(0)[2].values)
    # streaming decode yields the same frames
    frames = list(tb.iter_frames(io.BytesIO(data)))
    assert [(f.track_id, f.frame_number) for f in frames] == \
        [(f.track_id, f.frame_number) for f in s.frames]
    assert tb.canonical_sha256(s) == tb.canonical_sha256(tb.decode(data))


def test_canonical_output_layout():
    x = np.arange(6, dtype=np.float16).reshape(1, 2, 3)
    s = tb.decode(tb.encode(x, lossless=True))
    b = tb.canonical_bytes(s)
    head = np.frombuffer(b[:24], "<u4").tolist()
    assert head == [0, 0, 2, 2, 3, 1]   # track, frame, tokens, kept, channels, dtype
    assert np.frombuffer(b[24:32], "<u4").tolist() == [0, 1]
    assert np.array_equal(np.frombuffer(b[32:], "<f2"), np.arange(6, dtype=np.float16))


def test_torch_tensors_in_and_out():
    torch = pytest.importorskip("torch")
    t = torch.randn(2, 10, 6, dtype=torch.bfloat16)
    s = tb.decode(tb.encode(t, lossless=True))
    back = tb.to_array(s, torch_device="cpu")
    assert back.dtype == torch.bfloat16 and torch.equal(back, t)


@pytest.mark.parametrize("opts", [dict(qp=-10), dict(lossless=True),
                                  dict(qp=-8, grid=(4, 4), prefix_tokens=1, keep=0.5)])
def test_stream_writer(opts):
    """Streaming encode: tables fitted on the first frame still code later frames whose
    values go beyond the calibration range (escapes, wider alphabets)."""
    rng = np.random.default_rng(7)
    x = make_tokens(rng, 4, 17, 6, "float16")
    x[3] *= 40   # far outside the calibration frame's range
    buf = io.BytesIO()
    with tb.StreamWriter(buf, meta={"source": "test"}) as w:
        tid = w.add_track(x[0], **opts)
        ids = w.add_track(np.array([1, 2, 3]), vocab_size=100)
        for i in range(4):
            w.write(tid, x[i])
        w.write(ids, np.array([99, 0, 7, 7]))
    s = tb.decode(buf.getvalue())
    frames = s.track_frames(0)
    assert len(frames) == 4 and s.metadata[255] == {"source": "test"}
    te = w.tracks[tid]
    for i, fr in enumerate(frames):   # exactly the encoder's own reconstruction
        if opts.get("lossless"):
            continue
        pos = te._positions(x[i])
        assert np.array_equal(fr.positions, pos)
        lv, codes, _ = te._quantize(x[i][pos].astype(np.float32), te.qp)
        want = reconstruction.to_output(reconstruction.dequantize(lv, codes),
                                        te.tps["output_dtype"])
        assert np.array_equal(fr.values.view(np.uint8), want.view(np.uint8))
    assert np.array_equal(s.track_frames(1)[0].values, [99, 0, 7, 7])
    if opts.get("lossless"):
        assert np.array_equal(np.stack([f.values for f in frames]).view(np.uint16),
                              x.view(np.uint16))
    assert tb.read_frame(buf.getvalue(), 0, 3).frame_number == 3


def test_bfloat16_torch_tensors_through_every_entry_point():
    torch = pytest.importorskip("torch")
    t = torch.randn(3, 10, 6).to(torch.bfloat16)
    lossy_stream = tb.decode(tb.encode(t, qp=-20))
    assert lossy_stream.tracks[0][0]["source_dtype"] == 2          # bfloat16, not ids
    assert lossy_stream.frames[0].dtype == "bfloat16"
    buf = io.BytesIO()
    with tb.StreamWriter(buf) as w:
        tid = w.add_track(t[0], lossless=True)
        w.write(tid, t)
    back = tb.to_array(tb.decode(buf.getvalue()), torch_device="cpu")
    assert torch.equal(back, t)


def test_read_frame_errors():
    x = make_tokens(np.random.default_rng(9), 2, 8, 4, "float16")
    data = tb.encode(x, qp=-10)
    with pytest.raises(tb.TKBReferenceError):
        tb.read_frame(data, 0, 7)
    with pytest.raises(tb.TKBReferenceError):
        tb.read_frame(tb.encode(x, qp=-10, index=False), 0, 0)
