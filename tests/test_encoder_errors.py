"""The encoder reports every input it cannot code as a TKBEncodeError (Annex B),
never another exception and never a stream our own decoder would reject."""
import io

import numpy as np
import pytest

import tokenbits as tb

X = np.random.default_rng(0).standard_normal((2, 8, 4)).astype(np.float32)


@pytest.mark.parametrize("opts", [
    dict(qp=1000), dict(bpv=0), dict(target_cos=1.5), dict(keep=-0.1), dict(keep=1.5),
    dict(qp=0, bpv=2.0), dict(output_dtype="int8"), dict(predictor="diagonal"),
    dict(num_lanes=0), dict(lane_steps=0), dict(vocab_size=0),
    dict(grid=(3, 3)), dict(predictor="up"), dict(target_cos=1.0), dict(bpv=0.01),
])
def test_bad_options(opts):
    with pytest.raises(tb.TKBEncodeError):
        tb.encode(X, **opts)


@pytest.mark.parametrize("x", [
    np.array([[np.nan, 1.0]], dtype=np.float32),
    np.array([[np.inf, 1.0]], dtype=np.float16),
    np.zeros((2, 2, 2, 2), dtype=np.float32),
    np.array([[-1, 2]]),
    np.array([[2 ** 33]]),
    np.zeros((0, 4, 4), dtype=np.float32),
])
def test_bad_inputs(x):
    with pytest.raises(tb.TKBEncodeError):
        tb.encode(x)


def test_float64_lossy_ok_lossless_refused():
    x64 = X.astype(np.float64)
    assert tb.decode(tb.encode(x64, qp=-10)).frames[0].dtype == "float32"
    with pytest.raises(tb.TKBEncodeError):
        tb.encode(x64, lossless=True)


def test_requested_level_too_low():
    with pytest.raises(tb.TKBEncodeError):
        tb.encode(np.zeros((1, 5000, 1), dtype=np.float16), lossless=True, level_idc=10)
    with pytest.raises(tb.TKBEncodeError):   # a metadata unit beyond level 10's unit size
        tb.encode(X, qp=-10, meta={"big": "x" * (1 << 23)}, level_idc=10)
    data = tb.encode(X, qp=-10, meta={"big": "x" * (1 << 23)})   # picks a level that fits
    assert tb.decode(data).header.level_idc == 20


def test_stream_writer_rejections():
    w = tb.StreamWriter(io.BytesIO(), level_idc=10)
    with pytest.raises(tb.TKBEncodeError):          # 5000 channels: beyond level 10
        w.add_track(np.zeros((2, 5000), dtype=np.float16), lossless=True)
    ids = w.add_track(np.array([1, 2, 3]), vocab_size=10)
    with pytest.raises(tb.TKBEncodeError):          # beyond the track's vocabulary
        w.write(ids, np.array([10]))
    lossy = w.add_track(X[0], qp=-10)
    with pytest.raises(tb.TKBEncodeError):          # lossy coding of NaN
        w.write(lossy, np.full((8, 4), np.nan, dtype=np.float32))
    with pytest.raises(tb.TKBEncodeError):          # wrong channel count
        w.write(lossy, np.zeros((8, 3), dtype=np.float32))
    w.write(lossy, X[1])
    with pytest.raises(tb.TKBEncodeError):          # tracks come before frames
        w.add_track(X[0], qp=-10)


def test_prob_bits_option():
    import numpy as np
    import tokenbits as tkb
    from tokenbits.errors import TKBEncodeError
    x = np.random.default_rng(0).standard_normal((20, 8)).astype(np.float16)
    data = tkb.encode(x, qp=0, prob_bits=10, backend="reference")
    assert tkb.decode(data).tracks[0][0]["prob_bits"] == 10
    with pytest.raises(TKBEncodeError):
        tkb.TrackOptions(prob_bits=16)
    with pytest.raises(TKBEncodeError):      # 4 slots cannot hold the alphabet
        tkb.encode(x, qp=-30, prob_bits=2, backend="reference")


def test_all_finite_equals_numpy():
    """The finiteness check of lossy input (binary16 by its exponent field) is numpy's."""
    from tokenbits.encoder import _all_finite
    bits = np.arange(1 << 16, dtype=np.uint16)
    for b in bits.reshape(-1, 4096):                  # every pattern, with finite company
        for v in b:
            x = np.array([[1.0, -0.0], [0.5, 0.0]], dtype=np.float16)
            x.view(np.uint16)[1, 1] = v
            assert _all_finite(x) == bool(np.all(np.isfinite(x)))
    h = bits.view(np.float16).reshape(256, 256)
    assert _all_finite(h) is False and _all_finite(h[:, ::2][:120]) is True
    assert _all_finite(np.zeros((0, 3), np.float16)) is True
    for x in (np.array([[np.nan]], np.float32), np.ones((2, 2), np.float32)):
        assert _all_finite(x) == bool(np.all(np.isfinite(x)))
