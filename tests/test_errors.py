"""Every decoder error class of clause 9 is triggered by a crafted stream, and the
error names the clause; a corrupted frame unit is reported and the rest decodes."""
import numpy as np
import pytest

import tokenbits as tb
from tokenbits import decoder, encoder, errors
from tokenbits.decoder import UNIT_FRAME, UNIT_INDEX, UNIT_TPS

from streamtools import header, join, split, tps_payload, tps_values, unit_offset, units_of

RNG = np.random.default_rng(0)
X = (RNG.standard_normal((3, 17, 8))).astype(np.float16)


def lossy(**kw):
    return tb.encode(X, qp=-12, grid=(4, 4), prefix_tokens=1, **kw)


def with_tps(data, **changes):
    h, units = split(data)
    i = units_of(data, UNIT_TPS)[0]
    v = tps_values(units[i][3])
    v.update(changes)
    units[i][3] = tps_payload(v)
    return join(h, units)


def with_frame_payload(data, fn, which=0):
    h, units = split(data)
    i = units_of(data, UNIT_FRAME)[which]
    units[i][3] = fn(bytearray(units[i][3]))
    return join(h, units)


def raises(cls, data, clause_prefix=None):
    with pytest.raises(cls) as e:
        tb.decode(data)
    assert isinstance(e.value, tb.TKBError)
    assert e.value.clause
    if clause_prefix:
        assert e.value.clause.startswith(clause_prefix), e.value.clause
    return e.value


def test_all_error_classes_exported():
    for cls in errors.ERROR_CLASSES:
        assert issubclass(cls, tb.TKBError)
        assert getattr(tb, cls.__name__) is cls


# 9.1 format ---------------------------------------------------------------------
def test_bad_magic():
    raises(tb.TKBFormatError, b"PK\x03\x04" + bytes(20), "6.1")


def test_reserved_header_bits():
    d = lossy()
    raises(tb.TKBFormatError, header(reserved=1) + d[16:], "6.1")


def test_reserved_unit_byte_and_trailing_payload():
    h, units = split(lossy())
    from tokenbits.crc32c import crc32c
    u = encoder.unit(*units[0][:2], units[0][3], units[0][2])
    u = bytearray(u)
    u[7] = 1                                     # reserved_zero_8bits
    u[-4:] = crc32c(bytes(u[:-4])).to_bytes(4, "little")
    raises(tb.TKBFormatError, h + bytes(u) + join(b"", units[1:]), "6.2")
    units[0][3] = units[0][3] + b"\x00"          # one byte more than the syntax
    raises(tb.TKBFormatError, join(h, units), "6.2")


def test_bad_tps_values():
    d = lossy()
    raises(tb.TKBFormatError, with_tps(d, track_kind=7), "6.3")
    raises(tb.TKBFormatError, with_tps(d, predictor=9), "6.3")
    raises(tb.TKBFormatError, with_tps(d, prob_bits=16), "6.3.5")
    raises(tb.TKBFormatError, with_tps(d, grid_present=0, max_tokens=17, predictor=2), "6.3")


def test_frame_num_tokens_mismatch_and_alignment_bits():
    def bump(p):
        p[6] += 1  # num_tokens (u32 at byte 6) != grid size
        return bytes(p)
    raises(tb.TKBFormatError, with_frame_payload(lossy(), bump), "6.4")


def test_metadata_errors():
    h, units = split(tb.encode(X, qp=-12, meta={"a": "1"}))
    i = next(i for i, u in enumerate(units) if u[0] == 3)
    units[i][3] = encoder.metadata_payload({"a": "1"})[:-1] + b"\xff"   # value not UTF-8
    raises(tb.TKBFormatError, join(h, units), "6.5")


def test_index_entry_pointing_elsewhere():
    h, units = split(lossy())
    i = units_of(lossy(), UNIT_INDEX)[0]
    units[i][3] = encoder.index_payload([(0, 16)])   # offset 16 is the parameter set
    raises(tb.TKBFormatError, join(h, units), "6.6")


# 9.2 truncation ------------------------------------------------------------------
@pytest.mark.parametrize("cut", [0, 3, 10, 17, 23, 30, -5, -1])
def test_truncation(cut):
    d = lossy()
    raises(tb.TKBTruncatedError, d[:cut] if cut else b"")


def test_truncated_inside_payload_with_valid_crc():
    # a unit whose payload stops before its syntax does (CRC recomputed)
    raises(tb.TKBTruncatedError, with_frame_payload(lossy(), lambda p: bytes(p[:9])), "6.4")


# 9.3 CRC -------------------------------------------------------------------------
def test_crc_mismatch_strict_and_resilient():
    d = bytearray(lossy())
    # flip a byte inside the second frame unit's payload
    offset = unit_offset(bytes(d), units_of(bytes(d), UNIT_FRAME)[1])
    d[offset + 20] ^= 0x40
    raises(tb.TKBCRCError, bytes(d), "6.2")
    s = tb.decode(bytes(d), strict=False)
    assert [f.frame_number for f in s.frames] == [0, 2]
    assert len(s.errors) >= 1 and isinstance(s.errors[0], tb.TKBCRCError)
    assert s.errors[0].offset == offset
    good = tb.decode(lossy())
    assert np.array_equal(s.frames[1].values, good.frames[2].values)


def test_stream_header_crc():
    d = bytearray(lossy())
    d[5] ^= 1
    raises(tb.TKBCRCError, bytes(d), "6.1")


# 9.4 unsupported -----------------------------------------------------------------
def test_unsupported_version_profile_level():
    body = lossy()[16:]
    raises(tb.TKBUnsupportedError, header(major=2) + body, "6.1")
    raises(tb.TKBUnsupportedError, header(profile=9) + body, "8.1")
    raises(tb.TKBUnsupportedError, header(level=11) + body, "8.2")
    raises(tb.TKBUnsupportedError, header(profile=1) + body, "8.1")   # lossy in Lossless


def test_unknown_units_essential_and_skippable():
    h, units = split(lossy(index=False))
    skip = join(h, units[:1] + [[200, 0, 0, b"future"]] + units[1:])
    assert len(tb.decode(skip).frames) == 3
    essential = join(h, units[:1] + [[200, 0, 1, b"future"]] + units[1:])
    raises(tb.TKBUnsupportedError, essential, "6.2")


@pytest.mark.parametrize("value,cls", [(0, tb.TKBUnsupportedError), (2, tb.TKBFormatError)])
def test_random_access_other_than_one(value, cls):
    """0 is reserved for inter-frame prediction (unsupported); above 1 is malformed."""
    def set_ra(p):
        p[1] = value
        return bytes(p)
    raises(cls, with_frame_payload(lossy(), set_ra), "6.4")


# 9.5 level -----------------------------------------------------------------------
def test_level_limits():
    d = lossy()
    raises(tb.TKBLevelError, with_tps(d, num_lanes=300), "8.2")       # level 10: 256 lanes
    ft = tps_values(split(d)[1][0][3])["freq_table"]
    raises(tb.TKBLevelError, with_tps(d, num_tables=17, table_map=np.zeros(8, np.uint8),
                                      freq_table=ft * 17), "8.2")
    h, units = split(d)
    big = bytearray(encoder.unit(*units[0][:2], units[0][3]))
    big[0:4] = (1 << 24).to_bytes(4, "little")                       # unit_size > 8 MiB
    raises(tb.TKBLevelError, h + bytes(big), "8.2")
    wide = np.zeros((1, 2, 5000), dtype=np.float16)
    raises(tb.TKBLevelError, header(level=10) + tb.encode(wide, lossless=True)[16:], "8.2")


# 9.6 reference -------------------------------------------------------------------
def test_missing_and_conflicting_parameter_sets():
    d = lossy(index=False)
    h, units = split(d)
    t = units_of(d, UNIT_TPS)[0]
    raises(tb.TKBReferenceError, join(h, [u for i, u in enumerate(units) if i != t]), "6.4")
    v = tps_values(units[t][3])
    v["step_code"] = np.array([v["step_code"][0] + 1], dtype=np.uint8)
    units2 = units[:t + 1] + [[UNIT_TPS, 0, 1, tps_payload(v)]] + units[t + 1:]
    raises(tb.TKBReferenceError, join(h, units2), "6.3")
    same = units[:t + 1] + [units[t]] + units[t + 1:]                 # identical repeat: fine
    assert len(tb.decode(join(h, same)).frames) == 3


# 9.7 tables ----------------------------------------------------------------------
def test_table_that_does_not_sum():
    d = lossy()
    v = tps_values(split(d)[1][units_of(d, UNIT_TPS)[0]][3])
    ft = v["freq_table"][0]
    freq = list(ft["freq"])
    freq[0] += 1
    v["freq_table"][0] = dict(ft, freq=freq)
    raises(tb.TKBTableError, with_tps(d, freq_table=v["freq_table"]), "6.3.5")


# 9.8 entropy ---------------------------------------------------------------------
def test_lane_not_ending_at_L():
    def flip_last_word(p):
        p[-1] ^= 0x5A
        return bytes(p)
    raises(tb.TKBEntropyError, with_frame_payload(tb.encode(X, qp=-12, predictor="none"),
                                                  flip_last_word), "7.3")


def test_escape_count_mismatch():
    y = X.copy()
    y[0, 3, 2] = -512.0   # level -2048: zigzag 4095, the escape symbol of the largest
    #                       alphabet (4096) with escape value 0 (escape_bits 0)
    d = tb.encode(y, qp=-12, predictor="none", token_scale=False)
    fr = decoder.parse_frame(split(d)[1][units_of(d, UNIT_FRAME)[0]][3],
                             decoder.parse_tps(split(d)[1][0][3], tb.levels.LEVELS[30], 2),
                             tb.levels.LEVELS[30])
    assert fr["num_escapes"] >= 1
    off = 14    # tps_id, random_access, frame_number, num_tokens, presence_present,
    #             frame_step_delta, token_scale_present, escape_bits, then num_escapes (u32)

    def bump(p):
        p[off + 0] = 0 if p[off] else 1
        return bytes(p)
    raises(tb.TKBEntropyError, with_frame_payload(d, bump), "7.4.1")


# 9.9 values ----------------------------------------------------------------------
def test_token_id_beyond_vocab_and_step_code_range():
    ids = np.array([[5, 9, 2]])
    raises(tb.TKBValueError, with_tps(tb.encode(ids, vocab_size=10), vocab_size=9), "7.4.2")
    d = tb.encode(X, qp=-12, token_scale=False)
    raises(tb.TKBValueError, _frame_delta(d, 127, 200), "7.6.1")


def _frame_delta(d, delta, step):
    d = with_tps(d, step_code=np.array([step], dtype=np.uint8))

    def setdelta(p):
        p[11] = delta     # frame_step_delta (i8) follows presence_present (byte 10)
        return bytes(p)
    return with_frame_payload(d, setdelta)


def test_alphabet_size_zero_is_a_table_error():
    d = lossy()
    ft = tps_values(split(d)[1][0][3])["freq_table"]
    ft[0] = dict(ft[0], alphabet_size=0, freq=[])
    raises(tb.TKBTableError, with_tps(d, freq_table=ft), "6.3.5")


@pytest.mark.parametrize("data", [b"PK\x03\x04", b"PK\x03\x04\x00\x00", b"\x89TKB\x01"])
def test_short_streams(data):
    cls = tb.TKBTruncatedError if data.startswith(b"\x89TKB") else tb.TKBFormatError
    raises(cls, data, "6.1")


def test_streaming_decode_collects_errors_in_non_strict_mode():
    import io
    d = bytearray(lossy())
    offset = unit_offset(bytes(d), units_of(bytes(d), UNIT_FRAME)[1])
    d[offset + 20] ^= 1
    errs = []
    frames = list(tb.iter_frames(io.BytesIO(bytes(d[:-3])), strict=False, errors=errs))
    assert [f.frame_number for f in frames] == [0, 2]
    assert [type(e) for e in errs] == [tb.TKBCRCError, tb.TKBTruncatedError]
    with pytest.raises(tb.TKBCRCError):
        list(tb.iter_frames(io.BytesIO(bytes(d))))


def test_lane_steps_limit():
    d = lossy()
    raises(tb.TKBLevelError, with_tps(d, num_lanes=1, lane_steps=4097), "8.2")   # level 10: 4096


def test_slot_tables_are_built_lazily_and_bounded():
    """Many parameter sets cost no slot tables until used, and at most LOOKUP_CACHE stay."""
    h, units = split(lossy(index=False))
    tps = units[0]
    frame = units[1]
    extra = []
    for i in range(1, 40):
        v = tps_values(tps[3])
        v["tps_id"] = i
        extra.append([UNIT_TPS, 0, 1, tps_payload(v)])
        f = bytearray(frame[3])
        f[0] = i
        extra.append([UNIT_FRAME, 0, 1, bytes(f)])
    h2 = header(level=10)
    dec = decoder.Decoder(decoder.parse_stream_header(h2 + b""))
    for t, tr, e, p in [tps] + extra:
        dec.add_unit(decoder.Unit(0, t, tr, e, p, True, True))
    assert len(dec.stream.frames) == 39
    assert len(dec._lookups) == decoder.LOOKUP_CACHE
