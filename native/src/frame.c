/* Frame (spec clause 6.4, syntax 5.8): parsing with the active parameter set, steps 1 to 4
 * of clause 6.4.1.  The payloads are located and their sizes checked here; the values are
 * decoded later (step 5, decoder.c).  The presence map and the merge map are decoded while
 * parsing because the sizes of later elements depend on them (clause 7.1.1). */
#include <stdlib.h>
#include "internal.h"

#define CK(x) do { int e_ = (x); if (e_) return e_; } while (0)

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

int tkb_parse_frame(tkb_frame *f, const tkb_level *lv, int profile_idc, tkb_error *err)
{
    const tkb_tps *t = f->tps;
    tkb_reader rd, *r = &rd;
    rd_init(r, f->payload, f->payload_len, f->base, "6.4", err);
    uint32_t v;
    int64_t off;
    CK(rd_u8(r, "tps_id", &v));
    CK(rd_u8(r, "random_access", &v));
    if (v == 0)
        return tkb_fail(err, TKB_UNSUPPORTED_ERROR, "6.4", "random_access", rd_offset(r) - 1,
                        "random_access 0 (prediction between frames) is not part of version 1");
    if (v > 1)
        return tkb_fail(err, TKB_FORMAT_ERROR, "6.4", "random_access", rd_offset(r) - 1,
                        "random_access %u is not 0 or 1", v);
    CK(rd_u32(r, "frame_number", &f->info.frame_number));
    uint32_t num_tokens;
    CK(rd_u32(r, "num_tokens", &num_tokens));
    off = rd_offset(r) - 4;
    if (t->grid_present && num_tokens != t->max_tokens)
        return tkb_fail(err, TKB_FORMAT_ERROR, "6.4", "num_tokens", off,
                        "num_tokens %u != num_prefix_tokens + grid size %u", num_tokens,
                        t->max_tokens);
    if (num_tokens > t->max_tokens)
        return tkb_fail(err, TKB_FORMAT_ERROR, "6.4", "num_tokens", off,
                        "num_tokens %u > max_tokens %u", num_tokens, t->max_tokens);
    CK(tkb_check_limit((uint64_t)num_tokens * t->num_channels, lv->max_values,
                       "num_tokens * num_channels", off, lv, err));
    f->info.num_tokens = num_tokens;
    CK(rd_u8(r, "presence_present", &f->presence_present));
    if (f->presence_present > (profile_idc == TKB_PROFILE_HIGH ? 2u : 1u))
        return tkb_fail(err, TKB_FORMAT_ERROR, "6.4", "presence_present", rd_offset(r) - 1,
                        "presence_present %u is not allowed", f->presence_present);
    /* kept positions: num_tokens <= max_tokens of the level (clause 7.1.4) */
    f->pos = malloc(((size_t)num_tokens + 1) * sizeof *f->pos);
    if (!f->pos)
        return tkb_fail(err, TKB_NOMEM, "7.1", "presence_map", -1, "out of memory");
    uint32_t num_kept = num_tokens;
    if (f->presence_present) {
        uint8_t *scratch = malloc((size_t)num_tokens + 1);
        if (!scratch)
            return tkb_fail(err, TKB_NOMEM, "7.1", "presence_map", -1, "out of memory");
        int e = tkb_read_presence_map(r, t, num_tokens, f->pos, &num_kept, scratch);
        free(scratch);
        if (e)
            return e;
    } else {
        for (uint32_t p = 0; p < num_tokens; p++)
            f->pos[p] = p;
    }
    /* derived variables of clause 7.1.3 */
    f->info.num_kept = num_kept;
    f->num_symbols = (uint64_t)num_kept * t->num_coded;
    f->num_chunks = f->num_symbols ? (f->num_symbols + t->chunk_size - 1) / t->chunk_size : 0;
    if (f->presence_present == 2) {       /* merge map, clauses 6.4 and 7.8 */
        off = rd_offset(r);
        if (num_kept == 0)
            return tkb_fail(err, TKB_FORMAT_ERROR, "6.4", "merge_map", off,
                            "a merge map on a frame without kept token");
        if (num_kept == num_tokens)
            return tkb_fail(err, TKB_FORMAT_ERROR, "6.4", "merge_map", off,
                            "a merge map on a frame without pruned position");
        f->stand_in = malloc(((size_t)num_tokens - num_kept) * sizeof *f->stand_in);
        if (!f->stand_in)
            return tkb_fail(err, TKB_NOMEM, "7.1", "merge_map", -1, "out of memory");
        CK(tkb_read_merge_map(r, num_tokens, num_kept, f->stand_in));
        f->info.has_merge_map = 1;
    }
    if (t->coding_mode != 1) {
        CK(rd_i8(r, "frame_step_delta", &f->frame_step_delta));
        CK(rd_u8(r, "token_scale_present", &f->token_scale_present));
        if (f->token_scale_present > 1)
            return tkb_fail(err, TKB_FORMAT_ERROR, "6.4", "token_scale_present",
                            rd_offset(r) - 1, "token_scale_present must be 0 or 1");
        if (f->token_scale_present) {
            CK(rd_need_bytes(r, num_kept, "token_step_delta"));
            CK(rd_bytes(r, num_kept, "token_step_delta", &f->token_step_delta));
        }
        CK(rd_u8(r, "escape_bits", &f->escape_bits));
        if (f->escape_bits > 26)
            return tkb_fail(err, TKB_FORMAT_ERROR, "6.4", "escape_bits", rd_offset(r) - 1,
                            "escape_bits %u > 26", f->escape_bits);
        CK(rd_u32(r, "num_escapes", &f->num_escapes));
        if (f->num_escapes > f->num_symbols)
            return tkb_fail(err, TKB_FORMAT_ERROR, "6.4", "num_escapes", rd_offset(r) - 4,
                            "num_escapes %u > num_symbols %llu", f->num_escapes,
                            (unsigned long long)f->num_symbols);
    }
    CK(rd_need_bytes(r, 4 * f->num_chunks, "chunk_words"));
    CK(rd_bytes(r, 4 * f->num_chunks, "chunk_words", &f->chunk_words));
    uint64_t total = 0;   /* can exceed 2^32 in an invalid stream (clause 7.1.4 note) */
    for (uint64_t c = 0; c < f->num_chunks; c++)
        total += le32(f->chunk_words + 4 * c);
    f->total_words = total;
    if (2 * total > (uint64_t)(f->payload_len - rd_byte_pos(r))) {
        r->pos = (uint64_t)f->payload_len * 8;
        return tkb_fail(err, TKB_TRUNCATED_ERROR, "6.4", "rans_data", rd_offset(r),
                        "rans_data needs %llu words, the payload ends first",
                        (unsigned long long)total);
    }
    f->rans_data = f->payload + rd_byte_pos(r);
    r->pos += 16 * total;
    if (t->coding_mode != 1) {
        uint64_t nbits = (uint64_t)f->num_escapes * f->escape_bits;
        f->escape_off = rd_byte_pos(r);
        if (rd_remaining_bits(r) < nbits) {
            r->pos = (uint64_t)f->payload_len * 8;
            return tkb_fail(err, TKB_TRUNCATED_ERROR, "6.4", "escape_data", rd_offset(r),
                            "escape_data needs %llu bits, the payload ends first",
                            (unsigned long long)nbits);
        }
        r->pos += nbits;
        CK(rd_align(r, "alignment_zero_bits"));
    } else {
        uint64_t nbits = f->num_symbols * t->raw_bits;
        f->raw_off = rd_byte_pos(r);
        if (rd_remaining_bits(r) < nbits) {
            r->pos = (uint64_t)f->payload_len * 8;
            return tkb_fail(err, TKB_TRUNCATED_ERROR, "6.4", "raw_data", rd_offset(r),
                            "raw_data needs %llu bits, the payload ends first",
                            (unsigned long long)nbits);
        }
        r->pos += nbits;
        CK(rd_align(r, "alignment_zero_bits"));
    }
    if (rd_remaining_bits(r))    /* clause 6.4.1 step 4 */
        return tkb_fail(err, TKB_FORMAT_ERROR, "6.2", "unit_payload", rd_offset(r),
                        "%zu bytes left over after the frame", f->payload_len - rd_byte_pos(r));
    /* the frame's shape (clause 7.7) */
    f->info.num_channels = t->num_channels;
    f->info.dtype = (tkb_dtype)t->output_dtype;
    f->info.value_size = t->output_dtype == TKB_FLOAT16 || t->output_dtype == TKB_BFLOAT16 ? 2 : 4;
    f->info.values_bytes = (size_t)num_kept * t->num_channels * f->info.value_size;
    f->info.dense_bytes = (size_t)num_tokens * t->num_channels * f->info.value_size;
    return 0;
}
