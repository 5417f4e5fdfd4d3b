/* Encoder core, Annex B.1 (informative): input conversion, token norms, quantization by
 * rounding and by the closed-loop deadzone quantizer, clause 7.5 residuals, clause 7.4.1
 * zigzag symbols and escapes.  Every binary32 / binary64 operation is the one the
 * reference encoder performs, in the same order (no fused operations: -ffp-contract=off),
 * so the levels are the same bits. */
#include "internal.h"
#include "../include/tkb_enc.h"
#include "enc_scalar.h"

static void gather_row_c(const void *src, int src_dtype, size_t r, size_t d, float *o)
{
    if (src_dtype == 0) {
        memcpy(o, (const float *)src + r, d * sizeof(float));
    } else if (src_dtype == 1) {
        const uint16_t *h = (const uint16_t *)src + r;
        for (size_t c = 0; c < d; c++)
            o[c] = f16_to_f32(h[c]);
    } else {
        const uint16_t *h = (const uint16_t *)src + r;
        for (size_t c = 0; c < d; c++) {
            uint32_t b = (uint32_t)h[c] << 16;
            memcpy(o + c, &b, 4);
        }
    }
}

static void norms_c(const float *x, size_t k, size_t d, double *norms)
{
    for (size_t i = 0; i < k; i++) {
        const float *r = x + i * d;
        double s = 0.0;
        for (size_t c = 0; c < d; c++) {
            double v = (double)r[c];
            s += v * v;                 /* exact product (24-bit mantissas), rounded sum */
        }
        norms[i] = sqrt_f64(s);
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
/* binary16 rows by F16C, eight values at a time (exact conversions, as f16_to_f32); a
 * block holding a NaN (whose payload F16C may quiet) goes through f16_to_f32 */
__attribute__((target("avx2,f16c")))
static void gather_row_f16_avx2(const uint16_t *h, size_t d, float *o)
{
    size_t c = 0;
    const __m128i expo = _mm_set1_epi16(0x7C00);
    for (; c + 8 <= d; c += 8) {
        __m128i v = _mm_loadu_si128((const __m128i *)(h + c));
        __m128i e = _mm_cmpeq_epi16(_mm_and_si128(v, expo), expo);
        if (_mm_movemask_epi8(e)) {
            for (size_t j = c; j < c + 8; j++)
                o[j] = f16_to_f32(h[j]);
        } else {
            _mm256_storeu_ps(o + c, _mm256_cvtph_ps(v));
        }
    }
    for (; c < d; c++)
        o[c] = f16_to_f32(h[c]);
}

/* token norms of four rows at once, one row a lane: each lane adds its row's squares in
 * channel order (binary64 products of binary32 values are exact; a multiplication, then an
 * addition, no fused operation), so every norm has the bits of norms_c's */
__attribute__((target("avx2")))
static void norms4_avx2(const float *x, size_t d, double *norms)
{
    const float *r0 = x, *r1 = x + d, *r2 = x + 2 * d, *r3 = x + 3 * d;
    __m256d s = _mm256_setzero_pd();
    size_t c = 0;
    for (; c + 4 <= d; c += 4) {
        __m256d a = _mm256_cvtps_pd(_mm_loadu_ps(r0 + c)), b = _mm256_cvtps_pd(_mm_loadu_ps(r1 + c));
        __m256d e = _mm256_cvtps_pd(_mm_loadu_ps(r2 + c)), f = _mm256_cvtps_pd(_mm_loadu_ps(r3 + c));
        /* transpose: v_m = channel c + m of rows 0..3 */
        __m256d ab0 = _mm256_unpacklo_pd(a, b), ab1 = _mm256_unpackhi_pd(a, b);
        __m256d ef0 = _mm256_unpacklo_pd(e, f), ef1 = _mm256_unpackhi_pd(e, f);
        __m256d v0 = _mm256_permute2f128_pd(ab0, ef0, 0x20);
        __m256d v1 = _mm256_permute2f128_pd(ab1, ef1, 0x20);
        __m256d v2 = _mm256_permute2f128_pd(ab0, ef0, 0x31);
        __m256d v3 = _mm256_permute2f128_pd(ab1, ef1, 0x31);
        s = _mm256_add_pd(s, _mm256_mul_pd(v0, v0));
        s = _mm256_add_pd(s, _mm256_mul_pd(v1, v1));
        s = _mm256_add_pd(s, _mm256_mul_pd(v2, v2));
        s = _mm256_add_pd(s, _mm256_mul_pd(v3, v3));
    }
    double acc[4];
    _mm256_storeu_pd(acc, s);
    for (int m = 0; m < 4; m++) {
        const float *r = x + (size_t)m * d;
        for (size_t j = c; j < d; j++) {
            double v = (double)r[j];
            acc[m] += v * v;
        }
        norms[m] = sqrt_f64(acc[m]);
    }
}

#endif

int tkb_enc_gather_f32(const void *src, int src_dtype, size_t n, size_t d,
                       const uint32_t *pos, size_t k, float *out)
{
    if (src_dtype < 0 || src_dtype > 2)
        return TKB_ENC_USAGE;
#if defined(__x86_64__) && defined(__GNUC__)
    const int avx2 = src_dtype == 1 && tkb_enc_use_avx2();
#endif
    for (size_t i = 0; i < k; i++) {
        if (pos[i] >= n)
            return TKB_ENC_USAGE;
        size_t r = (size_t)pos[i] * d;
#if defined(__x86_64__) && defined(__GNUC__)
        if (avx2) {
            gather_row_f16_avx2((const uint16_t *)src + r, d, out + i * d);
            continue;
        }
#endif
        gather_row_c(src, src_dtype, r, d, out + i * d);
    }
    return TKB_ENC_OK;
}

void tkb_enc_token_norms(const float *x, size_t k, size_t d, double *norms)
{
    size_t i = 0;
#if defined(__x86_64__) && defined(__GNUC__)
    if (tkb_enc_use_avx2())
        for (; i + 4 <= k; i += 4)
            norms4_avx2(x + i * d, d, norms + i);
#endif
    norms_c(x + i * d, k - i, d, norms + i);
}

float tkb_enc_inv_step(int q)
{
    /* the binary64 reciprocal of the binary32 step, rounded once to binary32 */
    return (float)(1.0 / (double)tkb_step(q));
}

static inline uint64_t zigzag(int64_t r)    /* 7.4.1 in reverse: r >= 0 -> 2r, else -2r - 1 */
{
    return ((uint64_t)r << 1) ^ (0 - (uint64_t)(r < 0));   /* branch-free */
}

/* one row of tkb_enc_residual_symbols from channel j0 on (pl NULL: no prediction) */
static size_t residual_symbols_row_c(const int32_t *l, const int32_t *pl, size_t j0, size_t c,
                                     const uint32_t *esc, uint32_t *sy, uint64_t *escapes)
{
    size_t ne = 0;
    for (size_t j = j0; j < c; j++) {
        uint64_t u = zigzag_diff(l[j], pl ? pl[j] : 0);
        if (u >= esc[j]) {
            escapes[ne++] = u - esc[j];
            sy[j] = esc[j];
        } else {
            sy[j] = (uint32_t)u;
        }
    }
    return ne;
}

#if defined(__x86_64__) && defined(__GNUC__)
/* the same row four channels at a time: the zigzag of the int64 difference (wrapping, as
 * zigzag_diff), stored as uint32 when all four lie in 0 .. esc - 1 (signed compares: a
 * value of 2^63 or more, negative here, goes with the escapes); a block with an escape
 * (rare) is done by the plain code, so the escapes keep their coding order */
__attribute__((target("avx2")))
static size_t residual_symbols_row_avx2(const int32_t *l, const int32_t *pl, size_t c,
                                        const uint32_t *esc, uint32_t *sy, uint64_t *escapes)
{
    /* eight channels at a time in 32 bits: the difference (a block where it overflows
     * int32 goes to the plain code), its zigzag index u (exact in uint32 then), stored
     * when every u < esc (unsigned: u <= esc and u != esc), else the plain code (it
     * escapes them in channel order) */
    size_t ne = 0, j = 0;
    for (; j + 8 <= c; j += 8) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(l + j));
        __m256i b = pl ? _mm256_loadu_si256((const __m256i *)(pl + j)) : _mm256_setzero_si256();
        __m256i r = _mm256_sub_epi32(a, b);
        __m256i ovf = _mm256_and_si256(_mm256_xor_si256(a, b), _mm256_xor_si256(a, r));
        __m256i u = _mm256_xor_si256(_mm256_slli_epi32(r, 1), _mm256_srai_epi32(r, 31));
        __m256i e = _mm256_loadu_si256((const __m256i *)(esc + j));
        __m256i bad = _mm256_or_si256(
            _mm256_srai_epi32(ovf, 31),
            _mm256_or_si256(_mm256_cmpeq_epi32(u, e),
                            _mm256_xor_si256(_mm256_cmpeq_epi32(_mm256_max_epu32(u, e), e),
                                             _mm256_set1_epi32(-1))));
        if (!_mm256_testz_si256(bad, bad)) {
            ne += residual_symbols_row_c(l, pl, j, j + 8, esc, sy, escapes + ne);
            continue;
        }
        _mm256_storeu_si256((__m256i *)(sy + j), u);
    }
    return ne + residual_symbols_row_c(l, pl, j, c, esc, sy, escapes + ne);
}
#endif

/* a row's residual symbols and escapes (the AVX2 path when avx2), their number */
static size_t residual_symbols_row(const int32_t *l, const int32_t *pl, size_t c,
                                   const uint32_t *esc, uint32_t *sy, uint64_t *escapes,
                                   int avx2)
{
#if defined(__x86_64__) && defined(__GNUC__)
    if (avx2)
        return residual_symbols_row_avx2(l, pl, c, esc, sy, escapes);
#else
    (void)avx2;
#endif
    return residual_symbols_row_c(l, pl, 0, c, esc, sy, escapes);
}

int tkb_enc_quantize(const float *xc, size_t k, size_t c, const uint8_t *code,
                     const int32_t *delta, const int64_t *lim_of_code, const int64_t *pred,
                     float deadzone, const uint32_t *esc, uint32_t *sym, uint64_t *escapes,
                     size_t *num_escapes, int32_t *levels)
{
    float inv[256], limf[256];
    for (int q = 0; q < 256; q++) {
        inv[q] = tkb_enc_inv_step(q);
        int64_t l = lim_of_code ? lim_of_code[q] : MAX_LEVEL;
        if (l < 0 || l > MAX_LEVEL)
            return TKB_ENC_USAGE;
        limf[q] = (float)l;                   /* exact: below 2^24 */
    }
    int cmin = 255, cmax = 0;
    for (size_t j = 0; j < c; j++) {
        cmin = code[j] < cmin ? code[j] : cmin;
        cmax = code[j] > cmax ? code[j] : cmax;
    }
    const int closed = deadzone >= 0.0f;
    const int avx2 = tkb_enc_use_avx2();
    size_t ne = 0;
    for (size_t i = 0; i < k; i++) {
        int64_t p = pred ? pred[i] : -1;
        if (p >= (int64_t)i)
            return TKB_ENC_USAGE;              /* a row is predicted by an earlier row */
        const int32_t *plv = p >= 0 ? levels + (size_t)p * c : NULL;
        const float *x = xc + i * c;
        int32_t *lv = levels + i * c;
        int32_t dl = delta ? delta[i] : 0;
        if (c && (cmin + dl < 0 || cmax + dl > 255))
            return TKB_ENC_USAGE;              /* step codes within 0..255 (6.3.2) */
        int bad = 0;
        /* the row's levels: no dependency between channels (branch-free) */
        if (!closed) {
            for (size_t j = 0; j < c; j++) {
                int q = code[j] + dl;
                float t = rint_f32(x[j] * inv[q]);         /* binary32 product, half even */
                float l = limf[q];
                bad |= t != t;                             /* lossy values are finite */
                t = t > l ? l : t;
                t = t < -l ? -l : t;                       /* clip(+-MAX_LEVEL), then +-lim */
                lv[j] = (int32_t)(t == t ? t : 0.0f);
            }
        } else {
            for (size_t j = 0; j < c; j++) {
                int32_t pl = plv ? plv[j] : 0;
                int q = code[j] + dl;
                float r = x[j] * inv[q] - (float)pl;       /* |plev| < 2^24: exact */
                float a = __builtin_fabsf(r) - deadzone;
                float t = rint_f32(a > 0.0f ? a : 0.0f);
                bad |= r != r;
                t = t < 33554432.0f ? t : 33554432.0f;     /* 2^25: |plev + q| clips */
                int32_t qv = (int32_t)(t == t ? t : 0.0f);
                int32_t l = pl + (r < 0.0f ? -qv : qv);
                int32_t li = (int32_t)limf[q];
                l = l > li ? li : l;
                lv[j] = l < -li ? -li : l;
            }
        }
        if (bad)
            return TKB_ENC_USAGE;
        /* clause 7.5 residuals, 7.4.1 zigzag and escapes */
        ne += residual_symbols_row(lv, plv, c, esc, sym + i * c, escapes + ne, avx2);
    }
    *num_escapes = ne;
    return TKB_ENC_OK;
}

int tkb_enc_residual_symbols(const int32_t *lv, size_t k, size_t c, const int64_t *pred,
                             const uint32_t *esc, uint32_t *sym, uint64_t *escapes,
                             size_t *num_escapes)
{
    size_t ne = 0;
    const int avx2 = tkb_enc_use_avx2();
    for (size_t i = 0; i < k; i++) {
        int64_t p = pred ? pred[i] : -1;
        if (p >= (int64_t)k)
            return TKB_ENC_USAGE;
        const int32_t *pl = p >= 0 ? lv + (size_t)p * c : NULL;
        ne += residual_symbols_row(lv + i * c, pl, c, esc, sym + i * c, escapes + ne, avx2);
    }
    *num_escapes = ne;
    return TKB_ENC_OK;
}

int tkb_enc_split(const void *src, int width, size_t n, size_t d, const uint32_t *pos,
                  size_t k, const int64_t *pred, int predict, unsigned raw_bits,
                  uint32_t *sym, uint32_t *raw)
{
    if ((width != 16 && width != 32) || raw_bits > 32)
        return TKB_ENC_USAGE;
    const uint64_t mask = raw_bits >= 32 ? 0xFFFFFFFFu : (((uint64_t)1 << raw_bits) - 1);
    const int64_t sign = (int64_t)1 << (width - 1);
    for (size_t i = 0; i < k; i++) {
        if (pos[i] >= n)
            return TKB_ENC_USAGE;
        int64_t p = predict && pred ? pred[i] : -1;
        if (p >= (int64_t)i)
            return TKB_ENC_USAGE;
        size_t r = (size_t)pos[i] * d, rp = p >= 0 ? (size_t)pos[p] * d : 0;
        for (size_t j = 0; j < d; j++) {
            int64_t b = width == 16 ? ((const uint16_t *)src)[r + j]
                                    : ((const uint32_t *)src)[r + j];
            uint64_t u;
            if (predict) {                   /* order-preserving integers (7.4.2), 7.5 */
                int64_t m = (b & sign) ? -(b - sign) - 1 : b, mp = 0;
                if (p >= 0) {
                    int64_t bp = width == 16 ? ((const uint16_t *)src)[rp + j]
                                             : ((const uint32_t *)src)[rp + j];
                    mp = (bp & sign) ? -(bp - sign) - 1 : bp;
                }
                u = zigzag(m - mp);
            } else {
                u = (uint64_t)b;
            }
            uint64_t s = raw_bits >= 64 ? 0 : u >> raw_bits;
            sym[i * d + j] = s > 0xFFFFFFFFu ? 0xFFFFFFFFu : (uint32_t)s;
            raw[i * d + j] = (uint32_t)(u & mask);
        }
    }
    return TKB_ENC_OK;
}

const char *tkb_enc_simd_name(void)
{
    /* AVX2 paths: the forward transform (enc_transform.c, with FMA, exact), the fit's
     * kernels (enc_fit.c, enc_tables.c), quantization, residual symbols and rANS; on top
     * of them, where the CPU has AVX-512 (tkb_cpu_avx512): the rANS coder (enc_rans.c),
     * the predictors' counts and the Lloyd costs */
    return tkb_cpu_avx512() ? "avx512" : tkb_cpu_avx2() ? "avx2" : "scalar";
}
