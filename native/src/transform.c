/* Channel transforms (spec clause 6.7, syntax 5.14 / 5.15) and the integer synthesis of
 * the inverse transform (clause 7.6.3, steps 2 and 3). */
#include <stdlib.h>
#include "internal.h"

#define CK(x) do { int e_ = (x); if (e_) return e_; } while (0)

void tkb_transform_clear(tkb_transform *t)
{
    free(t->mean);
    free(t->basis);
    free(t->payload);
    memset(t, 0, sizeof *t);
}

static int fmt67(tkb_reader *r, const char *el, int64_t off, const char *msg)
{
    return tkb_fail(r->err, TKB_FORMAT_ERROR, "6.7", el, off, "%s", msg);
}

int tkb_parse_transform_data(tkb_reader *r, const tkb_level *lv, tkb_transform *t)
{
    uint32_t v;
    int64_t off;
    CK(rd_u32(r, "num_channels", &t->num_channels));
    off = rd_offset(r) - 4;
    if (t->num_channels < 1)
        return fmt67(r, "num_channels", off, "num_channels of a transform is 0");
    CK(tkb_check_limit(t->num_channels, lv->max_channels, "num_channels", off, lv, r->err));
    CK(rd_u32(r, "num_coeffs", &t->num_coeffs));
    off = rd_offset(r) - 4;
    uint32_t kmax = t->num_channels < 8192 ? t->num_channels : 8192;
    if (t->num_coeffs < 1 || t->num_coeffs > kmax)
        return fmt67(r, "num_coeffs", off, "num_coeffs not in 1..min(num_channels, 8192)");
    CK(tkb_check_limit((uint64_t)t->num_coeffs * t->num_channels, lv->max_values,
                       "num_coeffs * num_channels", off, lv, r->err));
    CK(rd_u8(r, "coeff_frac_bits", &v));
    if (v > 40)
        return fmt67(r, "coeff_frac_bits", rd_offset(r) - 1, "coeff_frac_bits > 40");
    t->coeff_frac_bits = v;
    CK(rd_u8(r, "basis_frac_bits", &v));
    if (v > 40)
        return fmt67(r, "basis_frac_bits", rd_offset(r) - 1, "basis_frac_bits > 40");
    t->basis_frac_bits = v;
    CK(rd_u8(r, "mean_bits", &v));
    if (v > 53)
        return fmt67(r, "mean_bits", rd_offset(r) - 1, "mean_bits > 53");
    t->mean_bits = v;
    CK(rd_u8(r, "basis_bits", &v));
    if (v < 2 || v > 16)
        return fmt67(r, "basis_bits", rd_offset(r) - 1, "basis_bits not in 2..16");
    t->basis_bits = v;
    uint64_t D = t->num_channels, K = t->num_coeffs;
    t->mean = calloc(D, sizeof *t->mean);
    if (!t->mean)
        return tkb_fail(r->err, TKB_NOMEM, "7.1", "mean", -1, "out of memory");
    if (t->mean_bits) {
        unsigned n = t->mean_bits;
        CK(rd_need_bits(r, D * n, "mean"));   /* clause 7.1, before reading the array */
        off = rd_offset(r);
        int bad = 0;
        for (uint64_t c = 0; c < D; c++) {
            uint64_t u;
            rd_bits(r, n, "mean", &u);
            int64_t s = u >= ((uint64_t)1 << (n - 1)) ? (int64_t)u - ((int64_t)1 << n) : (int64_t)u;
            if (s == -((int64_t)1 << (n - 1)))
                bad = 1;
            t->mean[c] = s;
        }
        if (bad)   /* checked once the array has been read */
            return fmt67(r, "mean", off, "mean holds the most negative value of its width");
    }
    {
        unsigned n = t->basis_bits;
        CK(rd_need_bits(r, K * D * n, "basis"));
        off = rd_offset(r);
        t->basis = malloc(K * D * sizeof *t->basis);
        if (!t->basis)
            return tkb_fail(r->err, TKB_NOMEM, "7.1", "basis", -1, "out of memory");
        int bad = 0;
        const uint8_t *p = r->p;
        uint64_t bit = r->pos;
        for (uint64_t i = 0; i < K * D; i++) {
            uint32_t u = 0;
            for (unsigned b = 0; b < n; b++, bit++)
                u = (u << 1) | ((p[bit >> 3] >> (7 - (bit & 7))) & 1u);
            int32_t s = u >= (1u << (n - 1)) ? (int32_t)u - (1 << n) : (int32_t)u;
            if (s == -(1 << (n - 1)))
                bad = 1;
            t->basis[i] = (int16_t)(bad ? 0 : s);
        }
        r->pos = bit;
        if (bad)
            return fmt67(r, "basis", off, "basis holds the most negative value of its width");
    }
    CK(rd_align(r, "alignment_zero_bits"));
    return 0;
}

/* Steps 2 and 3 of clause 7.6.3 for nt tokens: acc = mean + sum_j Y[j] * basis[j][c]
 * is an integer of magnitude below 2^53, and so is every partial sum: binary64
 * arithmetic in any order is exact (a fused multiply-add too).  acc * 2^-(F+G) is
 * exact in binary64; the conversion to binary32 rounds once, to nearest even. */
void tkb_inverse_transform(const tkb_transform *t, const int64_t *Y, size_t nt, float *out,
                           double *acc /* [nt][D] */)
{
    size_t D = t->num_channels, K = t->num_coeffs;
    double m[64];
    for (size_t k = 0; k < nt; k++)
        for (size_t c = 0; c < D; c++)
            acc[k * D + c] = (double)t->mean[c];
    for (size_t j = 0; j < K; j++) {
        const int16_t *b = t->basis + j * D;
        for (size_t k = 0; k < nt; k++)
            m[k] = (double)Y[k * K + j];
        for (size_t k = 0; k < nt; k++) {
            double y = m[k];
            if (y == 0.0)
                continue;
            double *a = acc + k * D;
            for (size_t c = 0; c < D; c++)
                a[c] += y * (double)b[c];
        }
    }
    /* 2^-(F+G), F + G <= 80: a normal binary64 power of two */
    double scale = 1.0;
    for (unsigned i = 0; i < t->coeff_frac_bits + t->basis_frac_bits; i++)
        scale *= 0.5;
    for (size_t i = 0; i < nt * D; i++)
        out[i] = (float)(acc[i] * scale);
}
