/* Merge map and dense output (spec clause 7.8, version 1.1). */
#include "internal.h"

/* Reads the num_tokens - num_kept fields stand_in, each b(n) with n the smallest integer
 * with 2^n >= num_kept, then alignment_zero_bits; then checks constraint 3 of clause 6.4.
 * Constraints 1 and 2 were checked by the caller before the map. */
int tkb_read_merge_map(tkb_reader *r, uint32_t num_tokens, uint32_t num_kept,
                       uint32_t *stand_in)
{
    unsigned n = 0;
    while (((uint64_t)1 << n) < num_kept)
        n++;
    uint64_t count = (uint64_t)num_tokens - num_kept;
    if (rd_remaining_bits(r) < count * n) {
        r->pos += (rd_remaining_bits(r) / (n ? n : 1)) * n;
        uint64_t dummy;
        return rd_bits(r, n, "stand_in", &dummy);
    }
    int64_t off = rd_offset(r);
    rd_packed_u32(r, count, n, stand_in);
    int e = rd_align(r, "alignment_zero_bits");
    if (e)
        return e;
    for (uint64_t j = 0; j < count; j++)
        if (stand_in[j] >= num_kept)
            return tkb_fail(r->err, TKB_FORMAT_ERROR, "6.4", "stand_in", off,
                            "stand_in %u >= num_kept %u", stand_in[j], num_kept);
    return 0;
}

/* The dense frame (clause 7.8): row pos[k] is row k of values; a pruned position's row is
 * a bit copy of its stand-in's row with a merge map, else all bit patterns 0. */
void tkb_dense_fill(const tkb_frame_info *fi, const uint32_t *pos, const uint32_t *stand_in,
                    int has_merge_map, const void *values, void *dense)
{
    size_t row = (size_t)fi->num_channels * fi->value_size;
    const uint8_t *v = values;
    uint8_t *d = dense;
    uint32_t k = 0, j = 0;
    for (uint32_t p = 0; p < fi->num_tokens; p++) {
        if (k < fi->num_kept && pos[k] == p) {
            memcpy(d + (size_t)p * row, v + (size_t)k * row, row);
            k++;
        } else {
            if (has_merge_map)
                memcpy(d + (size_t)p * row, v + (size_t)stand_in[j] * row, row);
            else
                memset(d + (size_t)p * row, 0, row);
            j++;
        }
    }
}
