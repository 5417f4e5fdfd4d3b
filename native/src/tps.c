/* Track parameter set (spec clause 6.3; syntax 5.6, 5.7): parsing, with each element's
 * constraints checked right after it is read (clause 5.3), in the order of clause 6.3.
 * The frequency sums (clause 6.3.6 step 3) are checked after parsing, by the caller. */
#include <stdlib.h>
#include "internal.h"

#define CK(x) do { int e_ = (x); if (e_) return e_; } while (0)

static unsigned dtype_width(uint32_t dtype) { return dtype == 1 || dtype == 2 ? 16 : 32; }

static int fmt(tkb_reader *r, const char *clause, const char *el, const char *msg)
{
    return tkb_fail(r->err, TKB_FORMAT_ERROR, clause, el, rd_offset(r) - 1, "%s", msg);
}

int tkb_parse_tps(const uint8_t *payload, size_t n, int64_t base, const tkb_level *lv,
                  int profile_idc, tkb_transform *const *transforms, tkb_tps *t,
                  tkb_error *err)
{
    tkb_reader rd, *r = &rd;
    rd_init(r, payload, n, base, "6.3", err);
    memset(t, 0, sizeof *t);
    int64_t off;

    CK(rd_u8(r, "tps_id", &t->tps_id));
    CK(rd_u8(r, "track_kind", &t->track_kind));
    if (t->track_kind > 1)
        return fmt(r, "6.3", "track_kind", "track_kind is reserved");
    CK(rd_u8(r, "coding_mode", &t->coding_mode));
    if (t->coding_mode > 2)
        return fmt(r, "6.3", "coding_mode", "coding_mode is reserved");
    if (t->track_kind == 1 && t->coding_mode != 1)
        return fmt(r, "6.3", "coding_mode", "ids tracks use coding_mode 1");
    if (profile_idc == TKB_PROFILE_LOSSLESS && t->coding_mode != 1)
        return tkb_fail(err, TKB_UNSUPPORTED_ERROR, "8.1", "coding_mode", rd_offset(r) - 1,
                        "the Lossless profile allows coding_mode 1 only");
    if (profile_idc != TKB_PROFILE_HIGH && t->coding_mode == 2)
        return fmt(r, "6.3", "coding_mode", "coding_mode 2 is reserved outside the High profile");
    CK(rd_u8(r, "source_dtype", &t->source_dtype));
    if (t->track_kind == 1 ? t->source_dtype != 3 : t->source_dtype > 2)
        return fmt(r, "6.3", "source_dtype", "source_dtype not allowed for this track_kind");
    CK(rd_u8(r, "output_dtype", &t->output_dtype));
    if (t->coding_mode == 1 && t->output_dtype != t->source_dtype)
        return fmt(r, "6.3", "output_dtype", "split coding outputs the source dtype");
    if (t->coding_mode != 1 && t->output_dtype > 2)
        return fmt(r, "6.3", "output_dtype", "output_dtype not allowed");
    CK(rd_u32(r, "num_channels", &t->num_channels));
    off = rd_offset(r) - 4;
    if (t->track_kind == 1 && t->num_channels != 1)
        return tkb_fail(err, TKB_FORMAT_ERROR, "6.3", "num_channels", off, "ids tracks have num_channels 1");
    if (t->num_channels < 1)
        return tkb_fail(err, TKB_FORMAT_ERROR, "6.3", "num_channels", off, "num_channels is 0");
    CK(tkb_check_limit(t->num_channels, lv->max_channels, "num_channels", off, lv, err));
    if (t->track_kind == 1) {
        CK(rd_u32(r, "vocab_size", &t->vocab_size));
        off = rd_offset(r) - 4;
        if (t->vocab_size < 1)
            return tkb_fail(err, TKB_FORMAT_ERROR, "6.3", "vocab_size", off, "vocab_size is 0");
        CK(tkb_check_limit(t->vocab_size, lv->max_vocab, "vocab_size", off, lv, err));
    }
    t->num_coded = t->num_channels;             /* num_coded (clause 6.3) */
    if (t->coding_mode == 2) {
        CK(rd_u8(r, "transform_id", &t->transform_id));
        const tkb_transform *tr = transforms[t->transform_id];
        if (!tr)
            return tkb_fail(err, TKB_REFERENCE_ERROR, "6.3", "transform_id", rd_offset(r) - 1,
                            "transform_id %u names no accepted transform", t->transform_id);
        if (tr->num_channels != t->num_channels)
            return tkb_fail(err, TKB_REFERENCE_ERROR, "6.3", "transform_id", rd_offset(r) - 1,
                            "transform %u has %u channels, the parameter set %u",
                            t->transform_id, tr->num_channels, t->num_channels);
        t->transform = tr;
        t->num_coded = tr->num_coeffs;
    }
    /* 6.3.1 Geometry */
    CK(rd_u8(r, "grid_present", &t->grid_present));
    if (t->grid_present > 1)
        return fmt(r, "6.3", "grid_present", "grid_present must be 0 or 1");
    if (t->grid_present) {
        CK(rd_u16(r, "grid_height", &t->grid_height));
        CK(rd_u16(r, "grid_width", &t->grid_width));
        CK(rd_u16(r, "num_prefix_tokens", &t->num_prefix_tokens));
        off = rd_offset(r) - 2;
        uint64_t T = (uint64_t)t->num_prefix_tokens + (uint64_t)t->grid_height * t->grid_width;
        CK(tkb_check_limit(T, lv->max_tokens, "num_tokens", off, lv, err));
        CK(tkb_check_limit(T * t->num_channels, lv->max_values, "num_tokens * num_channels",
                           off, lv, err));
        t->max_tokens = (uint32_t)T;   /* derived (clause 6.3.1) */
    } else {
        CK(rd_u32(r, "max_tokens", &t->max_tokens));
        CK(tkb_check_limit(t->max_tokens, lv->max_tokens, "max_tokens", rd_offset(r) - 4, lv, err));
        t->num_prefix_tokens = 0;
    }
    /* 6.3.2 Prediction and quantization */
    if (t->track_kind == 0) {
        CK(rd_u8(r, "predictor", &t->predictor));
        if (t->predictor > 2)
            return fmt(r, "6.3", "predictor", "predictor is reserved");
        if (t->predictor == 2 && !t->grid_present)
            return fmt(r, "6.3", "predictor", "predictor 2 (up) needs a grid");
    }
    if (t->coding_mode != 1) {
        CK(rd_u8(r, "per_channel_steps", &t->per_channel_steps));
        if (t->per_channel_steps > 1)
            return fmt(r, "6.3", "per_channel_steps", "per_channel_steps must be 0 or 1");
        uint32_t count = t->per_channel_steps ? t->num_coded : 1;
        CK(rd_need_bytes(r, count, "step_code"));
        const uint8_t *sc;
        CK(rd_bytes(r, count, "step_code", &sc));
        t->step_code = malloc(count);
        if (!t->step_code)
            return tkb_fail(err, TKB_NOMEM, "7.1", "step_code", -1, "out of memory");
        memcpy(t->step_code, sc, count);
    } else {
        /* 6.3.3 Split coding */
        CK(rd_u8(r, "raw_bits", &t->raw_bits));
        if (t->raw_bits >= dtype_width(t->source_dtype))
            return fmt(r, "6.3", "raw_bits", "raw_bits is not below the width of source_dtype");
    }
    /* 6.3.4 Lanes and chunks */
    CK(rd_u16(r, "num_lanes", &t->num_lanes));
    off = rd_offset(r) - 2;
    if (t->num_lanes < 1)
        return tkb_fail(err, TKB_FORMAT_ERROR, "6.3", "num_lanes", off, "num_lanes is 0");
    CK(tkb_check_limit(t->num_lanes, lv->max_lanes, "num_lanes", off, lv, err));
    CK(rd_u32(r, "lane_steps", &t->lane_steps));
    off = rd_offset(r) - 4;
    if (t->lane_steps < 1)
        return tkb_fail(err, TKB_FORMAT_ERROR, "6.3", "lane_steps", off, "lane_steps is 0");
    CK(tkb_check_limit(t->lane_steps, lv->max_lane_steps, "lane_steps", off, lv, err));
    CK(tkb_check_limit((uint64_t)t->lane_steps * t->num_lanes, lv->max_chunk, "chunk_size",
                       off, lv, err));
    t->chunk_size = t->num_lanes * t->lane_steps;
    /* 6.3.5 Frequency tables */
    CK(rd_u8(r, "prob_bits", &t->prob_bits));
    if (t->prob_bits < 1 || t->prob_bits > 15)
        return fmt(r, "6.3.5", "prob_bits", "prob_bits not in 1..15");
    CK(rd_u8(r, "num_tables", &t->num_tables));
    off = rd_offset(r) - 1;
    if (t->num_tables < 1)
        return tkb_fail(err, TKB_FORMAT_ERROR, "6.3.5", "num_tables", off, "num_tables is 0");
    CK(tkb_check_limit(t->num_tables, lv->max_tables, "num_tables", off, lv, err));
    if (t->num_tables > 1) {
        CK(rd_need_bytes(r, t->num_coded, "table_map"));
        const uint8_t *tm;
        off = rd_offset(r);
        CK(rd_bytes(r, t->num_coded, "table_map", &tm));
        t->table_map = malloc(t->num_coded);
        if (!t->table_map)
            return tkb_fail(err, TKB_NOMEM, "7.1", "table_map", -1, "out of memory");
        memcpy(t->table_map, tm, t->num_coded);
        for (uint32_t c = 0; c < t->num_coded; c++)   /* once the whole array is read */
            if (tm[c] >= t->num_tables)
                return tkb_fail(err, TKB_FORMAT_ERROR, "6.3.5", "table_map", off + c,
                                "table_map names a table beyond num_tables");
    }
    t->tables = calloc(t->num_tables, sizeof *t->tables);
    if (!t->tables)
        return tkb_fail(err, TKB_NOMEM, "7.1", "freq_table", -1, "out of memory");
    unsigned H = dtype_width(t->source_dtype) - t->raw_bits + (t->predictor ? 1 : 0);
    for (uint32_t i = 0; i < t->num_tables; i++) {
        tkb_freq_table *ft = &t->tables[i];
        CK(rd_u16(r, "alphabet_size", &ft->alphabet_size));
        off = rd_offset(r) - 2;
        if (ft->alphabet_size == 0)
            return tkb_fail(err, TKB_TABLE_ERROR, "6.3.5", "alphabet_size", off, "alphabet_size is 0");
        CK(tkb_check_limit(ft->alphabet_size, lv->max_alphabet, "alphabet_size", off, lv, err));
        if (t->coding_mode == 1 && H < 16 && ft->alphabet_size > (1u << H))
            return tkb_fail(err, TKB_FORMAT_ERROR, "6.3.5", "alphabet_size", off,
                            "alphabet_size %u exceeds 2^%u symbols of a split value",
                            ft->alphabet_size, H);
        uint32_t k;
        CK(rd_u8(r, "freq_k", &k));
        if (k > 15)
            return fmt(r, "6.3.5", "freq_k", "freq_k > 15");
        ft->freq = malloc(ft->alphabet_size * sizeof *ft->freq);
        if (!ft->freq)
            return tkb_fail(err, TKB_NOMEM, "7.1", "freq", -1, "out of memory");
        uint64_t sum = 0;
        for (uint32_t s = 0; s < ft->alphabet_size; s++) {
            uint64_t v;
            CK(rd_eg(r, k, "freq", &v));
            /* a sum above 2^prob_bits is a TKBTableError after parsing (6.3.6 step 3):
             * keep the sum exact, the value clamped */
            sum += v;
            ft->freq[s] = v > 65536 ? 65536 : (uint32_t)v;
        }
        ft->sum = sum;
        CK(rd_align(r, "alignment_zero_bits"));
    }
    if (rd_remaining_bits(r))     /* clause 6.2: bytes left over */
        return tkb_fail(err, TKB_FORMAT_ERROR, "6.2", "unit_payload", rd_offset(r),
                        "%zu bytes left over after the track_parameter_set",
                        n - rd_byte_pos(r));
    /* derived: ESC[c] and the table of each coded channel (clause 6.3.5) */
    t->esc = malloc(t->num_coded * sizeof *t->esc);
    t->chan_base = malloc(t->num_coded * sizeof *t->chan_base);
    t->payload = malloc(n ? n : 1);
    if (!t->esc || !t->chan_base || !t->payload)
        return tkb_fail(err, TKB_NOMEM, "7.1", "track_parameter_set", -1, "out of memory");
    for (uint32_t c = 0; c < t->num_coded; c++) {
        uint32_t ct = t->table_map ? t->table_map[c] : 0;
        t->chan_base[c] = ct << t->prob_bits;
        t->esc[c] = (uint16_t)(t->tables[ct].alphabet_size - 1);
    }
    memcpy(t->payload, payload, n);
    t->payload_len = n;
    return 0;
}

void tkb_tps_clear(tkb_tps *t)
{
    if (t->tables)
        for (uint32_t i = 0; i < t->num_tables; i++)
            free(t->tables[i].freq);
    free(t->tables);
    free(t->step_code);
    free(t->table_map);
    free(t->esc);
    free(t->chan_base);
    free(t->payload);
    if (t->lookup)
        tkb_lookup_free(t->lookup);
    memset(t, 0, sizeof *t);
}
