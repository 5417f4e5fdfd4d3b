/* The bit reader (spec clause 3.3): the only code that reads syntax elements.
 *
 * A reader covers one bounded range of bytes; reading beyond it is a
 * TKBTruncatedError naming the clause of the structure being parsed (clause 9.2),
 * detected before the value that would need the missing bits is used.  Bits are read
 * most significant first; fixed-width integers are little-endian and byte aligned. */
#include "internal.h"

void rd_init(tkb_reader *r, const uint8_t *p, size_t n, int64_t base, const char *clause,
             tkb_error *err)
{
    r->p = p;
    r->n = n;
    r->pos = 0;
    r->base = base;
    r->clause = clause;
    r->err = err;
}

static int truncated(tkb_reader *r, const char *el)
{
    return tkb_fail(r->err, TKB_TRUNCATED_ERROR, r->clause, el, rd_offset(r),
                    "the payload ends inside %s", el);
}

static int rd_le(tkb_reader *r, unsigned nbytes, const char *el, uint64_t *v)
{
    size_t at = rd_byte_pos(r);
    if (r->n - at < nbytes)
        return truncated(r, el);
    uint64_t x = 0;
    for (unsigned i = 0; i < nbytes; i++)
        x |= (uint64_t)r->p[at + i] << (8 * i);
    r->pos += 8u * nbytes;
    *v = x;
    return 0;
}

int rd_u8(tkb_reader *r, const char *el, uint32_t *v)
{
    uint64_t x = 0;
    int e = rd_le(r, 1, el, &x);
    *v = (uint32_t)x;
    return e;
}

int rd_i8(tkb_reader *r, const char *el, int32_t *v)
{
    uint64_t x = 0;
    int e = rd_le(r, 1, el, &x);
    *v = x >= 128 ? (int32_t)x - 256 : (int32_t)x;   /* descriptor i8 */
    return e;
}

int rd_u16(tkb_reader *r, const char *el, uint32_t *v)
{
    uint64_t x = 0;
    int e = rd_le(r, 2, el, &x);
    *v = (uint32_t)x;
    return e;
}

int rd_u32(tkb_reader *r, const char *el, uint32_t *v)
{
    uint64_t x = 0;
    int e = rd_le(r, 4, el, &x);
    *v = (uint32_t)x;
    return e;
}

int rd_u64(tkb_reader *r, const char *el, uint64_t *v) { return rd_le(r, 8, el, v); }

int rd_bits(tkb_reader *r, unsigned n, const char *el, uint64_t *v)
{
    if (rd_remaining_bits(r) < n)
        return truncated(r, el);
    uint64_t x = 0;
    for (unsigned i = 0; i < n; i++, r->pos++)
        x = (x << 1) | ((r->p[r->pos >> 3] >> (7 - (r->pos & 7))) & 1u);
    *v = x;
    return 0;
}

int rd_eg(tkb_reader *r, unsigned k, const char *el, uint64_t *v)
{
    unsigned z = 0;
    for (;;) {
        uint64_t bit;
        if (rd_bits(r, 1, el, &bit))
            return TKB_TRUNCATED_ERROR;
        if (bit)
            break;
        if (++z > 32)   /* more than 32 leading zeros (clause 3.3) */
            return tkb_fail(r->err, TKB_FORMAT_ERROR, "3.3", el, rd_offset(r),
                            "exp-Golomb code with more than 32 leading zero bits");
    }
    uint64_t m;
    if (rd_bits(r, z + k, el, &m))
        return TKB_TRUNCATED_ERROR;
    *v = ((uint64_t)1 << (z + k)) + m - ((uint64_t)1 << k);   /* < 2^48 */
    return 0;
}

int rd_align(tkb_reader *r, const char *el)
{
    while (r->pos & 7) {
        /* the bits up to the boundary exist: the range holds whole bytes */
        if ((r->p[r->pos >> 3] >> (7 - (r->pos & 7))) & 1u)
            return tkb_fail(r->err, TKB_FORMAT_ERROR, "3.3", el ? el : "alignment_zero_bits",
                            rd_offset(r), "an alignment_zero_bits bit is 1");
        r->pos++;
    }
    return 0;
}

int rd_bytes(tkb_reader *r, size_t count, const char *el, const uint8_t **out)
{
    size_t at = rd_byte_pos(r);
    if (r->n - at < count)
        return truncated(r, el);
    *out = r->p + at;
    r->pos += (uint64_t)count * 8;
    return 0;
}

int rd_need_bytes(tkb_reader *r, uint64_t nbytes, const char *el)
{
    if (nbytes > r->n - rd_byte_pos(r))
        return tkb_fail(r->err, TKB_TRUNCATED_ERROR, "7.1", el, rd_offset(r),
                        "%s needs %llu bytes, %llu remain", el, (unsigned long long)nbytes,
                        (unsigned long long)(r->n - rd_byte_pos(r)));
    return 0;
}

int rd_need_bits(tkb_reader *r, uint64_t nbits, const char *el)
{
    if (nbits > rd_remaining_bits(r))
        return tkb_fail(r->err, TKB_TRUNCATED_ERROR, "7.1", el, rd_offset(r),
                        "%s needs %llu bits, %llu remain", el, (unsigned long long)nbits,
                        (unsigned long long)rd_remaining_bits(r));
    return 0;
}

void rd_packed_u32(tkb_reader *r, uint64_t count, unsigned n, uint32_t *out)
{
    const uint8_t *p = r->p + rd_byte_pos(r);
    if (n == 0) {
        memset(out, 0, count * sizeof *out);
        return;
    }
    uint64_t bit = 0;
    for (uint64_t j = 0; j < count; j++) {
        uint64_t v = 0;
        for (unsigned i = 0; i < n; i++, bit++)
            v = (v << 1) | ((p[bit >> 3] >> (7 - (bit & 7))) & 1u);
        out[j] = (uint32_t)v;
    }
    r->pos += count * n;
}
