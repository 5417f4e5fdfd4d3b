/* Encoder core, Annex B.1 / B.3 (informative): the numeric steps of the reference
 * encoder's track fit (reference/encoder.py, TrackEncoder), called through the fit's
 * kernels (tokenbits.native.encoder.NativeFitKernels).  The rate control's logic stays in
 * Python; these functions compute its values:
 *
 *   - quantization levels by rounding (bit-identical: one binary32 product, half to even);
 *   - prediction residuals and their zigzag index (integers, exact);
 *   - histograms (integers, exact);
 *   - the mean token cosine of a trial quantization (the qp search) and the per-channel
 *     table costs of the table grouping's Lloyd refinement, each with a rigorous bound on
 *     the difference between this value and the value numpy computes (numpy sums in its
 *     own orders: pairwise, SIMD, BLAS): the caller takes a decision here only when the
 *     bound cannot flip it, else it computes the step with numpy, as the reference does.
 *
 * No fused operations (-ffp-contract=off). */
#include "internal.h"
#include "../include/tkb_enc.h"
#include "enc_scalar.h"

#define U64 (1.0 / 9007199254740992.0)      /* unit roundoff of binary64, 2^-53 */

/* the AVX2 paths: tkb_cpu_avx2's answer, the CPU probed once (cpuid can be slow under a
 * hypervisor); $TKB_NATIVE_SIMD=scalar read on every call */
int tkb_enc_use_avx2(void)
{
    static int hw = -1;
    const char *env = getenv("TKB_NATIVE_SIMD");
    if (env && !strcmp(env, "scalar"))
        return 0;
    if (hw < 0)
        hw = tkb_cpu_avx2();
    return hw;
}

/* gamma_n of the classical error analysis: n u / (1 - n u) */
static double gamma_n(double n)
{
    double nu = n * U64;
    return nu < 0.5 ? nu / (1.0 - nu) : 1.0;
}

int tkb_enc_levels(const float *x, const int64_t *codes, size_t n, int64_t *lv)
{
    float inv[256];
    for (int q = 0; q < 256; q++)
        inv[q] = tkb_enc_inv_step(q);
    for (size_t i = 0; i < n; i++) {
        int64_t q = codes[i];
        if (q < 0 || q > 255)
            return TKB_ENC_USAGE;
        float t = rint_f32(x[i] * inv[q]);
        if (t != t)
            return TKB_ENC_USAGE;       /* NaN: the caller takes numpy's path */
        t = t > (float)MAX_LEVEL ? (float)MAX_LEVEL : t;
        t = t < -(float)MAX_LEVEL ? -(float)MAX_LEVEL : t;
        lv[i] = (int64_t)t;
    }
    return TKB_ENC_OK;
}

/* one row of tkb_enc_levels_rows: levels of r[0..c) at inverse steps inv_r; nonzero when a
 * product is NaN (its level then 0) */
static int levels_row_c(const float *r, const float *inv_r, size_t c, int32_t *o)
{
    int bad = 0;
    for (size_t j = 0; j < c; j++) {
        float t = rint_f32(r[j] * inv_r[j]);
        bad |= t != t;
        t = t > (float)MAX_LEVEL ? (float)MAX_LEVEL : t;
        t = t < -(float)MAX_LEVEL ? -(float)MAX_LEVEL : t;
        o[j] = (int32_t)(t == t ? t : 0.0f);
    }
    return bad;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
/* the same levels eight at a time: the binary32 product, round half to even
 * (_mm256_round_ps, as rint_f32: values of 2^23 and beyond are integers already), the clip
 * to +-MAX_LEVEL, then integers (exact: |t| < 2^24) */
__attribute__((target("avx2")))
static int levels_row_avx2(const float *r, const float *inv_r, size_t c, int32_t *o)
{
    const __m256 mx = _mm256_set1_ps((float)MAX_LEVEL), mn = _mm256_set1_ps(-(float)MAX_LEVEL);
    __m256 nan = _mm256_setzero_ps();
    size_t j = 0;
    for (; j + 8 <= c; j += 8) {
        __m256 t = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(r + j),
                                                 _mm256_loadu_ps(inv_r + j)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        nan = _mm256_or_ps(nan, _mm256_cmp_ps(t, t, _CMP_UNORD_Q));
        t = _mm256_max_ps(_mm256_min_ps(t, mx), mn);
        _mm256_storeu_si256((__m256i *)(o + j), _mm256_cvtps_epi32(t));
    }
    return levels_row_c(r + j, inv_r + j, c - j, o + j) | (_mm256_movemask_ps(nan) != 0);
}
#endif

int tkb_enc_levels_rows(const float *x, size_t k, size_t c, const int64_t *code,
                        const int64_t *delta, int32_t *lv)
{
    float inv[256];
    for (int q = 0; q < 256; q++)
        inv[q] = tkb_enc_inv_step(q);
    for (size_t j = 0; j < c; j++)
        if (code[j] < 0 || code[j] > 255)
            return TKB_ENC_USAGE;
    float *inv_r = malloc((c ? c : 1) * sizeof(float));
    if (!inv_r)
        return TKB_ENC_USAGE;
    int64_t last = INT64_MIN;
    int rc = TKB_ENC_OK;
#if defined(__x86_64__) && defined(__GNUC__)
    const int avx2 = tkb_enc_use_avx2();
#endif
    for (size_t i = 0; i < k && rc == TKB_ENC_OK; i++) {
        if (delta[i] != last) {                    /* the row's inverse steps */
            for (size_t j = 0; j < c; j++) {
                int64_t q = code[j] + delta[i];
                if (q < 0 || q > 255) {
                    rc = TKB_ENC_USAGE;
                    break;
                }
                inv_r[j] = inv[q];
            }
            last = delta[i];
        }
        if (rc != TKB_ENC_OK)
            break;
        int bad;
#if defined(__x86_64__) && defined(__GNUC__)
        if (avx2)
            bad = levels_row_avx2(x + i * c, inv_r, c, lv + i * c);
        else
#endif
            bad = levels_row_c(x + i * c, inv_r, c, lv + i * c);
        if (bad)
            rc = TKB_ENC_USAGE;                    /* NaN: the caller takes numpy's path */
    }
    free(inv_r);
    return rc;
}

/* one token's sums a.a, b.b, a.b (b: the reconstruction of a at steps 1/inv_r, step_r);
 * any summation order (the caller's bound covers every order) */
static void row_sums_c(const float *r, const float *inv_r, const float *step_r, size_t d,
                       int out_dtype, double *s3)
{
    double saa = 0.0, sbb = 0.0, sab = 0.0;
    for (size_t j = 0; j < d; j++) {
        float t = rint_f32(r[j] * inv_r[j]);
        t = t > (float)MAX_LEVEL ? (float)MAX_LEVEL : t;
        t = t < -(float)MAX_LEVEL ? -(float)MAX_LEVEL : t;
        float v = t * step_r[j];                   /* binary32(level) * STEP, 7.6.1 */
        if (out_dtype == 1)
            v = f16_to_f32(tkb_f32_to_f16_bits(f32_bits(v)));
        else if (out_dtype == 2)
            v = bits_f32((uint32_t)tkb_f32_to_bf16_bits(f32_bits(v)) << 16);
        double a = (double)r[j], b = (double)v;
        saa += a * a;                              /* exact products (24-bit mantissas) */
        sbb += b * b;
        sab += a * b;
    }
    s3[0] = saa;
    s3[1] = sbb;
    s3[2] = sab;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
/* eight values' reconstruction as row_sums_c finds it: the level rint(x INV_STEP)
 * clipped to +-MAX_LEVEL, times STEP (7.6.1), converted to out_dtype (7.6.2) */
__attribute__((target("avx2,f16c")))
static inline __m256 recon8(__m256 x, const float *inv, const float *step, int out_dtype)
{
    const __m256 mx = _mm256_set1_ps((float)MAX_LEVEL), mn = _mm256_set1_ps(-(float)MAX_LEVEL);
    __m256 t = _mm256_round_ps(_mm256_mul_ps(x, _mm256_loadu_ps(inv)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    t = _mm256_max_ps(_mm256_min_ps(t, mx), mn);
    __m256 v = _mm256_mul_ps(t, _mm256_loadu_ps(step));
    if (out_dtype == 1) {
        v = _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
    } else if (out_dtype == 2) {
        __m256i b = _mm256_castps_si256(v);
        __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
        b = _mm256_add_epi32(_mm256_add_epi32(b, _mm256_set1_epi32(0x7FFF)), lsb);
        v = _mm256_castsi256_ps(_mm256_and_si256(b, _mm256_set1_epi32((int)0xFFFF0000u)));
    }
    return v;
}

__attribute__((target("avx2,f16c")))
static void row_sums_avx2(const float *r, const float *inv_r, const float *step_r, size_t d,
                          int out_dtype, double *s3)
{
    __m256d aa0 = _mm256_setzero_pd(), aa1 = aa0, bb0 = aa0, bb1 = aa0, ab0 = aa0, ab1 = aa0;
    size_t j = 0;
    for (; j + 8 <= d; j += 8) {
        __m256 x = _mm256_loadu_ps(r + j);
        __m256 v = recon8(x, inv_r + j, step_r + j, out_dtype);
        __m256d xl = _mm256_cvtps_pd(_mm256_castps256_ps128(x));
        __m256d xh = _mm256_cvtps_pd(_mm256_extractf128_ps(x, 1));
        __m256d vl = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
        __m256d vh = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
        aa0 = _mm256_add_pd(aa0, _mm256_mul_pd(xl, xl));
        aa1 = _mm256_add_pd(aa1, _mm256_mul_pd(xh, xh));
        bb0 = _mm256_add_pd(bb0, _mm256_mul_pd(vl, vl));
        bb1 = _mm256_add_pd(bb1, _mm256_mul_pd(vh, vh));
        ab0 = _mm256_add_pd(ab0, _mm256_mul_pd(xl, vl));
        ab1 = _mm256_add_pd(ab1, _mm256_mul_pd(xh, vh));
    }
    double tail[3];
    row_sums_c(r + j, inv_r + j, step_r + j, d - j, out_dtype, tail);
    double l[4], acc[3] = {tail[0], tail[1], tail[2]};
    __m256d sums[3] = {_mm256_add_pd(aa0, aa1), _mm256_add_pd(bb0, bb1),
                       _mm256_add_pd(ab0, ab1)};
    for (int k = 0; k < 3; k++) {
        _mm256_storeu_pd(l, sums[k]);
        s3[k] = acc[k] + ((l[0] + l[1]) + (l[2] + l[3]));
    }
}

/* row_sums_avx2 with binary32 sums (the fast pass of the qp search): the products x x,
 * v v, x v rounded to binary32 and added in binary32, eight lanes of two accumulators
 * each (m = ceil(floor(d / 8) / 2) terms an accumulator), the sixteen partial sums and the
 * d mod 8 last terms (exact binary64 products) added in binary64.  Each sum S of exact
 * terms t_i is found within gamma_m(binary32) sum |t_i| + gamma_{d+20}(binary64) sum |t_i|
 * + d 2^-150 (products and sums below 2^-126 lose their relative accuracy) of the exact
 * one (Higham, Accuracy and Stability, 3.1); the caller bounds the cosine from that. */
__attribute__((target("avx2,f16c")))
static void row_sums_f32_avx2(const float *r, const float *inv_r, const float *step_r,
                              size_t d, int out_dtype, double *s3)
{
    __m256 acc[2][3];
    for (int h = 0; h < 2; h++)
        acc[h][0] = acc[h][1] = acc[h][2] = _mm256_setzero_ps();
    size_t j = 0;
    for (int h = 0; j + 8 <= d; j += 8, h ^= 1) {
        __m256 x = _mm256_loadu_ps(r + j);
        __m256 v = recon8(x, inv_r + j, step_r + j, out_dtype);
        acc[h][0] = _mm256_add_ps(acc[h][0], _mm256_mul_ps(x, x));
        acc[h][1] = _mm256_add_ps(acc[h][1], _mm256_mul_ps(v, v));
        acc[h][2] = _mm256_add_ps(acc[h][2], _mm256_mul_ps(x, v));
    }
    double tail[3];
    row_sums_c(r + j, inv_r + j, step_r + j, d - j, out_dtype, tail);
    for (int q = 0; q < 3; q++) {
        float l[16];
        _mm256_storeu_ps(l, acc[0][q]);
        _mm256_storeu_ps(l + 8, acc[1][q]);
        double s = tail[q];
        for (int i = 0; i < 16; i++)
            s += (double)l[i];
        s3[q] = s;
    }
}
#endif

int tkb_enc_trial_cosine(const float *x, size_t k, size_t d, const uint8_t *code,
                         const int32_t *delta, int out_dtype, int fast, double target,
                         double *mean_cos, double *bound)
{
    if (out_dtype < 0 || out_dtype > 2)
        return TKB_ENC_USAGE;
    float inv[256], step[256];
    for (int q = 0; q < 256; q++) {
        inv[q] = tkb_enc_inv_step(q);
        step[q] = tkb_step(q);
    }
    int cmin = 255, cmax = 0;
    for (size_t j = 0; j < d; j++) {
        cmin = code[j] < cmin ? code[j] : cmin;
        cmax = code[j] > cmax ? code[j] : cmax;
    }
    float *inv_r = malloc((d ? d : 1) * sizeof(float)), *step_r = malloc((d ? d : 1) * sizeof(float));
    if (!inv_r || !step_r) {
        free(inv_r);
        free(step_r);
        return 1;                                  /* no memory: numpy decides */
    }
#if defined(__x86_64__) && defined(__GNUC__)
    const int avx2 = tkb_enc_use_avx2();
#else
    (void)fast;
#endif
    /* the binary32 sums' error, relative (see row_sums_f32_avx2; below: the cosine) */
    const double u32 = 1.0 / 16777216.0, m = (double)((d / 8 + 1) / 2);
    const double g32 = m * u32 < 0.5 ? m * u32 / (1.0 - m * u32) : 1.0;
    const double gf = g32 + gamma_n((double)d + 20) + (double)d * 0x1p-88;
    /* a row's cosine from exact-product binary64 sums: within 4 gamma_{d+2} + 8u of the
     * exact one (as numpy's); from binary32 sums: within 3 gf + 8u (below) */
    double row_err = 4.0 * gamma_n((double)d + 2) + 8.0 * U64;
    double total = 0.0;
    int64_t last = INT64_MIN;
    for (size_t i = 0; i < k; i++) {
        int32_t dl = delta ? delta[i] : 0;
        if (d && (cmin + dl < 0 || cmax + dl > 255)) {
            free(inv_r);
            free(step_r);
            return TKB_ENC_USAGE;
        }
        if (dl != last) {                          /* the row's steps */
            for (size_t j = 0; j < d; j++) {
                inv_r[j] = inv[code[j] + dl];
                step_r[j] = step[code[j] + dl];
            }
            last = dl;
        }
        const float *r = x + i * d;
        double s3[3];
        int exact = 1;
#if defined(__x86_64__) && defined(__GNUC__)
        if (avx2 && fast && gf < 0.01) {
            /* binary32 sums S^ of the exact S: S^aa = Saa (1 + e1), S^bb = Sbb (1 + e2),
             * S^ab = Sab + e3 sqrt(Saa Sbb) (Cauchy-Schwarz), |e| <= gf when both sums are
             * at least 2^-60 (the d 2^-150 of underflow then below d 2^-88 of them);
             * cos^ = (c + e3) / sqrt((1 + e1)(1 + e2)), |cos^ - c| <= 2.05 gf, and the
             * binary64 square roots, product and quotient add 4u (|cos^| <= 1.03).
             * Rows out of that range (zero, tiny, huge, not finite): binary64 sums. */
            row_sums_f32_avx2(r, inv_r, step_r, d, out_dtype, s3);
            exact = !(s3[0] >= 0x1p-60 && s3[0] <= 1e300 && s3[1] >= 0x1p-60 &&
                      s3[1] <= 1e300 && __builtin_fabs(s3[2]) <= 1e300);
            if (!exact) {
                double e = 3.0 * gf + 8.0 * U64;
                row_err = e > row_err ? e : row_err;
            }
        }
        if (exact && avx2)
            row_sums_avx2(r, inv_r, step_r, d, out_dtype, s3);
        else if (exact)
#endif
            row_sums_c(r, inv_r, step_r, d, out_dtype, s3);
        double saa = s3[0], sbb = s3[1], sab = s3[2];
        /* a non-finite value anywhere: numpy's result is NaN or special; let it decide */
        if (!(saa <= 1.7e308) || !(sbb <= 1.7e308) || sab != sab) {
            free(inv_r);
            free(step_r);
            return 1;
        }
        double c;
        if (saa > 0.0 && sbb > 0.0)
            c = sab / (sqrt_f64(saa) * sqrt_f64(sbb));
        else
            c = (saa == 0.0 && sbb == 0.0) ? 1.0 : 0.0;   /* exact in both */
        total += c;
        if ((i & 31) == 31 && target == target) {
            /* below the target already: every token left has a cosine <= 1 (exact and
             * numpy's); the tokens so far within row_err each of their exact cosine and
             * their sum within 1.03 gamma_k k; numpy's mean within its bound (below) of the
             * exact one.  hi bounds numpy's mean from above; returned with bound 0. */
            const double p = (double)(i + 1);
            double hi = (total + p * row_err + ((double)k - p)) / (double)k +
                        1.03 * gamma_n((double)k + 2) +
                        2.0 * (4.0 * gamma_n((double)d + 2) + gamma_n((double)k + 2) +
                               8.0 * U64) + 16.0 * U64;
            hi += __builtin_fabs(hi) * 8.0 * U64;
            if (hi < target) {
                free(inv_r);
                free(step_r);
                *mean_cos = hi;
                *bound = 0.0;
                return TKB_ENC_OK;
            }
        }
    }
    free(inv_r);
    free(step_r);
    *mean_cos = k ? total / (double)k : 0.0;
    /* |cos_numpy - cos_exact| <= 4 gamma_d + 4u per token (sums of exact products with
     * nonnegative or Cauchy-Schwarz-bounded magnitudes, in any order); the mean of k
     * such values |.| <= 1 adds gamma_k + u; for this computation row_err per token (the
     * same as numpy's, or the binary32 sums' above) and 1.03 (gamma_k + u) for the mean
     * of values |.| <= 1.03; each doubled. */
    *bound = 2.0 * (4.0 * gamma_n((double)d + 2) + gamma_n((double)k + 2) + 8.0 * U64) +
             2.0 * (row_err + 1.03 * gamma_n((double)k + 2) + 8.0 * U64);
    return k ? TKB_ENC_OK : 1;
}

int tkb_enc_row_stats(const float *x, size_t k, size_t d, double *sq, float *maxabs)
{
    /* four partial sums (any order: the certificate's bound, gamma_d, covers each) */
    for (size_t i = 0; i < k; i++) {
        const float *r = x + i * d;
        double s[4] = {0.0, 0.0, 0.0, 0.0};
        float m[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        size_t j = 0;
        for (; j + 4 <= d; j += 4)
            for (int h = 0; h < 4; h++) {
                double v = (double)r[j + h];
                s[h] += v * v;                     /* exact products, rounded sums */
                float a = __builtin_fabsf(r[j + h]);
                m[h] = a > m[h] ? a : m[h];        /* NaN: not kept, found below */
            }
        for (; j < d; j++) {
            double v = (double)r[j];
            s[0] += v * v;
            float a = __builtin_fabsf(r[j]);
            m[0] = a > m[0] ? a : m[0];
        }
        double t = (s[0] + s[1]) + (s[2] + s[3]);
        float mm = m[0] > m[1] ? m[0] : m[1];
        mm = m[2] > mm ? m[2] : mm;
        mm = m[3] > mm ? m[3] : mm;
        if (!(t <= 1e300) || !(mm <= 3.0e38f))
            return 1;                              /* not finite (NaN: t): no certificate */
        sq[i] = t;
        maxabs[i] = mm;
    }
    return TKB_ENC_OK;
}

int tkb_enc_trial_certificate(const double *sq, const float *maxabs, size_t k, size_t d,
                              const uint8_t *code, const int32_t *delta, int out_dtype,
                              double *lower, int64_t *zero_rows)
{
    if (out_dtype < 0 || out_dtype > 2 || d == 0 || k == 0)
        return TKB_ENC_USAGE;
    int64_t count[256] = {0};
    int cmin = 255, cmax = 0;
    for (size_t j = 0; j < d; j++) {
        count[code[j]]++;
        cmin = code[j] < cmin ? code[j] : cmin;
        cmax = code[j] > cmax ? code[j] : cmax;
    }
    /* the output conversion's error (7.6.2): relative (normal values), absolute
     * (subnormal: half the least subnormal), and the largest finite value */
    static const double rel_o[3] = {0x1p-24, 0x1p-11, 0x1p-8};
    static const double abs_o[3] = {0x1p-150, 0x1p-25, 0x1p-134};
    static const double max_o[3] = {3.4e38, 65504.0, 3.38e38};
    const double rel = rel_o[out_dtype], gd = gamma_n((double)d + 2);
    int all_zero = 1;
    int64_t zeros = 0;
    double total = 0.0;
    for (size_t i = 0; i < k; i++) {
        int32_t dl = delta ? delta[i] : 0;
        if (cmin + dl < 0 || cmax + dl > 255)
            return TKB_ENC_USAGE;
        const double mx = (double)maxabs[i];
        if (mx == 0.0) {                 /* a zero token: levels 0, output 0, cosine 1 */
            zeros++;
            total += 1.0;
            continue;
        }
        /* the largest |x * INV_STEP| of the row (binary32 product: within 2^-24) */
        const double ymax = mx * (double)tkb_enc_inv_step(cmin + dl) * (1.0 + 0x1p-20);
        if (ymax < 0.5) {                /* every level 0: output 0, cosine 0 (numpy's) */
            continue;
        }
        all_zero = 0;
        const double smax = (double)tkb_step(cmax + dl);
        if (ymax + 1.0 >= (double)MAX_LEVEL || (mx + smax) * (1.0 + 0x1p-20) >= max_o[out_dtype])
            return 1;                    /* a clip or an overflow: no bound here */
        /* |v - x| <= step/2 (1 + 2^-23 + 1.001 rel) + |x| (2^-21 + 1.001 rel) + abs_o for
         * each value (binary32 product x INV_STEP, rounding to the level, binary32 product
         * level x STEP, output conversion; INV_STEP x STEP within 2^-24 of 1); summed in
         * l2 by the triangle inequality */
        double s2 = 0.0;
        for (int q = cmin; q <= cmax; q++)
            if (count[q]) {
                double st = (double)tkb_step(q + dl);
                s2 += (double)count[q] * st * st;
            }
        const double sstep = sqrt_f64(s2) * (1.0 + 0x1p-40);
        const double nx_hi = sqrt_f64(sq[i] * (1.0 + gd)) * (1.0 + 0x1p-50);
        const double nx_lo = sqrt_f64(sq[i] * (1.0 - gd)) * (1.0 - 0x1p-50);
        const double ne = (0.5 * (1.0 + 0x1p-23 + 1.001 * rel) * sstep +
                           (0x1p-21 + 1.001 * rel) * nx_hi +
                           sqrt_f64((double)d) * 1.001 * abs_o[out_dtype]) * (1.0 + 0x1p-40);
        if (!(nx_lo > 0.0))
            return 1;
        const double eps = ne / nx_lo * (1.0 + 0x1p-50);
        /* v = x + e, |e| <= eps |x|: cos >= sqrt(1 - eps^2) >= 1 - eps^2 (eps < 1) */
        total += eps < 1.0 ? 1.0 - eps * eps * (1.0 + 0x1p-40) : -1.0;
    }
    *zero_rows = zeros;
    if (all_zero)
        return 2;                        /* every level 0: the mean is zero_rows / k */
    /* the sum of k values |.| <= 1 in binary64 and the division: within 2 gamma_k */
    *lower = total / (double)k - 2.0 * gamma_n((double)k + 2);
    return TKB_ENC_OK;
}

int tkb_enc_residuals(const int64_t *lv, size_t k, size_t c, const int64_t *pred,
                      int64_t *u)
{
    for (size_t i = 0; i < k; i++) {
        int64_t p = pred ? pred[i] : -1;
        if (p >= (int64_t)k)
            return TKB_ENC_USAGE;
        const int64_t *pl = p >= 0 ? lv + (size_t)p * c : NULL;
        const int64_t *l = lv + i * c;
        int64_t *o = u + i * c;
        if (pl) {
            for (size_t j = 0; j < c; j++) {
                int64_t r = l[j] - pl[j];
                o[j] = (int64_t)(((uint64_t)r << 1) ^ (0 - (uint64_t)(r < 0)));
            }
        } else {
            for (size_t j = 0; j < c; j++) {
                int64_t r = l[j];
                o[j] = (int64_t)(((uint64_t)r << 1) ^ (0 - (uint64_t)(r < 0)));
            }
        }
    }
    return TKB_ENC_OK;
}

int tkb_enc_histogram(const int64_t *u, size_t n, size_t c, int64_t cap, int64_t *hist)
{
    if (cap < 0)
        return TKB_ENC_USAGE;
    size_t a = (size_t)cap + 1;
    if (c == 0) {                              /* one histogram of every value */
        for (size_t i = 0; i < n; i++) {
            if (u[i] < 0)
                return TKB_ENC_USAGE;
            hist[u[i] < cap ? u[i] : cap]++;
        }
        return TKB_ENC_OK;
    }
    for (size_t i = 0; i < n; i += c) {        /* per channel: value i of channel i mod c */
        for (size_t j = 0; j < c && i + j < n; j++) {
            int64_t v = u[i + j];
            if (v < 0)
                return TKB_ENC_USAGE;
            hist[j * a + (size_t)(v < cap ? v : cap)]++;
        }
    }
    return TKB_ENC_OK;
}

#if defined(__x86_64__) && defined(__GNUC__)
/* eight residuals' zigzag indices min(zigzag(l - pl), cap) (pl NULL: none) in uint32;
 * *ovf: a difference overflows int32 (then the caller takes the plain code); *big: the
 * lanes whose index exceeds 3 */
__attribute__((target("avx2")))
static inline __m256i residual_u8(const int32_t *l, const int32_t *pl, __m256i capv, int *ovf,
                                  int *big)
{
    __m256i a = _mm256_loadu_si256((const __m256i *)l);
    __m256i b = pl ? _mm256_loadu_si256((const __m256i *)pl) : _mm256_setzero_si256();
    __m256i r = _mm256_sub_epi32(a, b);
    *ovf = _mm256_movemask_ps(_mm256_castsi256_ps(
        _mm256_and_si256(_mm256_xor_si256(a, b), _mm256_xor_si256(a, r))));
    __m256i u = _mm256_min_epu32(_mm256_xor_si256(_mm256_slli_epi32(r, 1),
                                                  _mm256_srai_epi32(r, 31)), capv);
    *big = _mm256_movemask_ps(_mm256_castsi256_ps(
        _mm256_cmpeq_epi32(_mm256_min_epu32(u, _mm256_set1_epi32(3)), u))) ^ 0xFF;
    return u;
}

/* One row of per-channel histograms (hist [c][a], a = cap + 1; tkb_enc_residual_histograms)
 * for one predictor (pl NULL: none), eight channels at a time: the int32 difference (a
 * block where it overflows goes one by one), its zigzag index (exact in uint32 then),
 * min(u, cap32); the values 0..3 (nine in ten on real tokens) counted by compares per
 * channel into acc [4][c] (uint32; the caller adds them into hist), the others one by
 * one.  The counts are the plain code's. */
__attribute__((target("avx2")))
static void residual_row_avx2(const int32_t *l, const int32_t *pl, size_t c, uint32_t cap32,
                              size_t a, uint32_t *acc, int64_t *hist)
{
    const __m256i capv = _mm256_set1_epi32((int)cap32);
    size_t j = 0;
    for (; j + 8 <= c; j += 8) {
        int ovf, big;
        __m256i u = residual_u8(l + j, pl ? pl + j : NULL, capv, &ovf, &big);
        if (ovf) {                                             /* int32 overflow */
            for (size_t h = j; h < j + 8; h++) {
                uint64_t v = zigzag_diff(l[h], pl ? pl[h] : 0);
                hist[h * a + (v < cap32 ? v : cap32)]++;
            }
            continue;
        }
        for (int v = 0; v < 4; v++) {
            __m256i eq = _mm256_cmpeq_epi32(u, _mm256_set1_epi32(v));
            __m256i *o = (__m256i *)(acc + (size_t)v * c + j);
            _mm256_storeu_si256(o, _mm256_sub_epi32(_mm256_loadu_si256(o), eq));
        }
        if (big) {
            uint32_t uv[8];
            _mm256_storeu_si256((__m256i *)uv, u);
            for (; big; big &= big - 1) {
                int h = __builtin_ctz((unsigned)big);
                hist[(j + (size_t)h) * a + uv[h]]++;
            }
        }
    }
    for (; j < c; j++) {
        uint64_t v = zigzag_diff(l[j], pl ? pl[j] : 0);
        hist[j * a + (v < cap32 ? v : cap32)]++;
    }
}
#endif

int tkb_enc_residual_histograms(const int32_t *lv, size_t k, size_t c, const int64_t *pred,
                                int64_t cap, int64_t *hist)
{
    if (cap < 0)
        return TKB_ENC_USAGE;
    const uint64_t ucap = (uint64_t)cap;
    const size_t a = (size_t)cap + 1;
#if defined(__x86_64__) && defined(__GNUC__)
    /* per-channel counters within 2^32 (k rows) */
    uint32_t *acc = NULL;
    if (tkb_enc_use_avx2() && k < ((size_t)1 << 31) && ucap <= 0xFFFFFFFFu && c > 0) {
        for (size_t i = 0; i < k; i++)
            if (pred && pred[i] >= (int64_t)k)
                return TKB_ENC_USAGE;
        acc = calloc(4 * c, sizeof(uint32_t));
    }
    if (acc) {
        for (size_t i = 0; i < k; i++) {
            int64_t p = pred ? pred[i] : -1;
            residual_row_avx2(lv + i * c, p >= 0 ? lv + (size_t)p * c : NULL, c,
                              (uint32_t)ucap, a, acc, hist);
        }
        for (size_t v = 0; v < 4 && v <= ucap; v++)
            for (size_t j = 0; j < c; j++)
                hist[j * a + v] += acc[v * c + j];
        free(acc);
        return TKB_ENC_OK;
    }
#endif
    for (size_t i = 0; i < k; i++) {
        int64_t p = pred ? pred[i] : -1;
        if (p >= (int64_t)k)
            return TKB_ENC_USAGE;
        const int32_t *pl = p >= 0 ? lv + (size_t)p * c : NULL, *l = lv + i * c;
        for (size_t j = 0; j < c; j++) {
            uint64_t u = zigzag_diff(l[j], pl ? pl[j] : 0);
            hist[j * a + (u < ucap ? u : ucap)]++;
        }
    }
    return TKB_ENC_OK;
}

/* tkb_enc_predictor_histograms: per-channel counts of min(u, PH_BINS - 1) (u the zigzag
 * index of a residual) for every candidate predictor at once, the values u >= PH_BINS - 1
 * listed (capped at big_cap).  The AVX2 path counts u < 16 in sixteen 4-bit counters per
 * channel (one 64-bit word: u adds 1 << 4u, a shift of 64 for u >= 16 adds nothing),
 * emptied into the per-channel counts every 15 rows, before any counter can overflow;
 * the other values go one by one.  Integers only: the counts are the plain loop's. */
#define PH_BINS 64

static inline void ph_one(uint32_t *cnt, uint32_t *big, size_t *nb, uint64_t big_cap,
                          size_t h, uint64_t v)
{
    if (v < PH_BINS - 1) {
        cnt[h * PH_BINS + v]++;
    } else {
        cnt[h * PH_BINS + PH_BINS - 1]++;
        big[(*nb)++] = (uint32_t)(v < big_cap ? v : big_cap);
    }
}

/* channels j0 .. j1 of a row one by one (an int32 overflow in a block, a row's tail) */
static void ph_ones(uint32_t *cnt, uint32_t *big, size_t *nb, uint64_t big_cap,
                    const int32_t *l, const int32_t *pl, size_t j0, size_t j1)
{
    for (size_t h = j0; h < j1; h++)
        ph_one(cnt, big, nb, big_cap, h, zigzag_diff(l[h], pl ? pl[h] : 0));
}

/* the lanes of mask (values uv[lane] of channels j + lane) one by one */
static void ph_lanes(uint32_t *cnt, uint32_t *big, size_t *nb, uint64_t big_cap, size_t j,
                     const uint32_t *uv, unsigned mask)
{
    for (; mask; mask &= mask - 1) {
        int h = __builtin_ctz(mask);
        ph_one(cnt, big, nb, big_cap, j + (size_t)h, uv[h]);
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
/* the 4-bit counters acc [c] added into 8-bit ones, the even bins' in ev [c] and the odd
 * bins' in od [c] (byte i: bin 2i, 2i + 1), four channels at a time; acc emptied */
__attribute__((target("avx2")))
static void ph_nibbles_avx2(uint64_t *acc, uint64_t *ev, uint64_t *od, size_t c)
{
    const __m256i lo4 = _mm256_set1_epi8(0x0F);
    size_t j = 0;
    for (; j + 4 <= c; j += 4) {
        __m256i w = _mm256_loadu_si256((const __m256i *)(acc + j));
        __m256i *e = (__m256i *)(ev + j), *o = (__m256i *)(od + j);
        _mm256_storeu_si256(e, _mm256_add_epi8(_mm256_loadu_si256(e), _mm256_and_si256(w, lo4)));
        _mm256_storeu_si256(o, _mm256_add_epi8(_mm256_loadu_si256(o),
                                               _mm256_and_si256(_mm256_srli_epi64(w, 4), lo4)));
        _mm256_storeu_si256((__m256i *)(acc + j), _mm256_setzero_si256());
    }
    for (; j < c; j++) {
        ev[j] += acc[j] & 0x0F0F0F0F0F0F0F0Full;        /* no carry: bytes <= 255 */
        od[j] += (acc[j] >> 4) & 0x0F0F0F0F0F0F0F0Full;
        acc[j] = 0;
    }
}

/* the 8-bit counters (ev, od) added into the channels' bins 0..15 of cnt; emptied */
__attribute__((target("avx2")))
static void ph_bytes_avx2(uint64_t *ev, uint64_t *od, size_t c, uint32_t *cnt)
{
    for (size_t j = 0; j < c; j++) {
        __m128i n = _mm_unpacklo_epi8(_mm_cvtsi64_si128((long long)ev[j]),
                                      _mm_cvtsi64_si128((long long)od[j]));   /* bin order */
        uint32_t *o = cnt + j * PH_BINS;
        __m256i a0 = _mm256_loadu_si256((const __m256i *)o);
        __m256i a1 = _mm256_loadu_si256((const __m256i *)(o + 8));
        _mm256_storeu_si256((__m256i *)o, _mm256_add_epi32(a0, _mm256_cvtepu8_epi32(n)));
        _mm256_storeu_si256((__m256i *)(o + 8),
                            _mm256_add_epi32(a1, _mm256_cvtepu8_epi32(_mm_srli_si128(n, 8))));
        ev[j] = od[j] = 0;
    }
}

/* one row of one predictor (pl NULL: none) into the 4-bit counters acc [c] */
__attribute__((target("avx2")))
static void ph_row_avx2(const int32_t *l, const int32_t *pl, size_t c, uint64_t *acc,
                        uint32_t *cnt, uint32_t *big, size_t *nb, uint64_t big_cap)
{
    const __m256i sixteen = _mm256_set1_epi32(16);
    const __m256i one = _mm256_set1_epi64x(1);
    /* u clamped at big_cap (>= 63: the same bins and the same listed values) */
    const __m256i capv = _mm256_set1_epi32((int)(uint32_t)big_cap);
    size_t j = 0;
    for (; j + 8 <= c; j += 8) {
        int ovf, above3;
        __m256i u = residual_u8(l + j, pl ? pl + j : NULL, capv, &ovf, &above3);
        if (ovf) {                                   /* an int32 overflow: one by one */
            ph_ones(cnt, big, nb, big_cap, l, pl, j, j + 8);
            continue;
        }
        __m256i uc = _mm256_min_epu32(u, sixteen);
        int large = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(uc, sixteen)));
        __m256i sh = _mm256_slli_epi32(uc, 2);                  /* 4u, 64 for u >= 16 */
        __m256i s0 = _mm256_cvtepu32_epi64(_mm256_castsi256_si128(sh));
        __m256i s1 = _mm256_cvtepu32_epi64(_mm256_extracti128_si256(sh, 1));
        __m256i *o = (__m256i *)(acc + j);
        _mm256_storeu_si256(o, _mm256_add_epi64(_mm256_loadu_si256(o), _mm256_sllv_epi64(one, s0)));
        _mm256_storeu_si256(o + 1, _mm256_add_epi64(_mm256_loadu_si256(o + 1),
                                                    _mm256_sllv_epi64(one, s1)));
        if (large) {
            uint32_t uv[8];
            _mm256_storeu_si256((__m256i *)uv, u);
            ph_lanes(cnt, big, nb, big_cap, j, uv, (unsigned)large);
        }
    }
    ph_ones(cnt, big, nb, big_cap, l, pl, j, c);
}
#endif

#if defined(__x86_64__) && defined(__GNUC__)
/* the same row, sixteen channels at a time (AVX-512F/BW/DQ: the same counters) */
__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl")))
static void ph_row_avx512(const int32_t *l, const int32_t *pl, size_t c, uint64_t *acc,
                          uint32_t *cnt, uint32_t *big, size_t *nb, uint64_t big_cap)
{
    const __m512i sixteen = _mm512_set1_epi32(16);
    const __m512i one = _mm512_set1_epi64(1);
    size_t j = 0;
    for (; j + 16 <= c; j += 16) {
        __m512i a = _mm512_loadu_si512((const void *)(l + j));
        __m512i b = pl ? _mm512_loadu_si512((const void *)(pl + j)) : _mm512_setzero_si512();
        __m512i r = _mm512_sub_epi32(a, b);
        __mmask16 ovf = _mm512_movepi32_mask(
            _mm512_and_si512(_mm512_xor_si512(a, b), _mm512_xor_si512(a, r)));
        if (ovf) {                                   /* an int32 overflow: one by one */
            ph_ones(cnt, big, nb, big_cap, l, pl, j, j + 16);
            continue;
        }
        __m512i u = _mm512_xor_si512(_mm512_slli_epi32(r, 1), _mm512_srai_epi32(r, 31));
        __m512i uc = _mm512_min_epu32(u, sixteen);
        unsigned large = _mm512_cmpeq_epi32_mask(uc, sixteen);
        __m512i sh = _mm512_slli_epi32(uc, 2);                  /* 4u, 64 for u >= 16 */
        __m512i s0 = _mm512_cvtepu32_epi64(_mm512_castsi512_si256(sh));
        __m512i s1 = _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(sh, 1));
        uint64_t *o = acc + j;
        _mm512_storeu_si512((void *)o, _mm512_add_epi64(_mm512_loadu_si512((const void *)o),
                                                        _mm512_sllv_epi64(one, s0)));
        _mm512_storeu_si512((void *)(o + 8),
                            _mm512_add_epi64(_mm512_loadu_si512((const void *)(o + 8)),
                                             _mm512_sllv_epi64(one, s1)));
        if (large) {
            uint32_t uv[16];
            _mm512_storeu_si512((void *)uv, u);
            ph_lanes(cnt, big, nb, big_cap, j, uv, large);
        }
    }
    ph_ones(cnt, big, nb, big_cap, l, pl, j, c);
}

/* the AVX-512 rows: the AVX2 paths and tkb_cpu_avx512 ($TKB_NATIVE_SIMD read on every
 * call: "avx2" or "scalar" turn them off) */
static int ph_use_avx512(void)
{
    return tkb_enc_use_avx2() && tkb_cpu_avx512();
}
#endif

int tkb_enc_predictor_histograms(const int32_t *lv, size_t k, size_t c, const int64_t *pred,
                                 size_t m, int64_t big_cap, uint32_t *cnt, uint32_t *big,
                                 size_t *num_big)
{
    if (m < 1 || m > 4 || big_cap < PH_BINS - 1 || big_cap > 0xFFFFFFFFll ||
        k >= ((size_t)1 << 31))
        return TKB_ENC_USAGE;
    for (size_t i = 0; i < m * k; i++)
        if (pred && pred[i] >= (int64_t)k)
            return TKB_ENC_USAGE;
    /* cnt [m][c][PH_BINS] (< 2^31: k rows); [m][c] words of sixteen 4-bit counters
     * (emptied every 15 rows) and two of eight 8-bit counters (every 17 x 15 rows) */
    memset(cnt, 0, m * c * PH_BINS * sizeof(uint32_t));
    uint64_t *acc = calloc(3 * m * c + 1, sizeof(uint64_t));
    if (!acc)
        return TKB_ENC_USAGE;
    uint64_t *ev = acc + m * c, *od = ev + m * c;
    size_t nb[4] = {0, 0, 0, 0};
    const uint64_t bc = (uint64_t)big_cap;
#if defined(__x86_64__) && defined(__GNUC__)
    const int avx2 = tkb_enc_use_avx2(), avx512 = avx2 && ph_use_avx512();
#endif
    for (size_t i = 0; i < k; i++) {
        const int32_t *l = lv + i * c;
        for (size_t g = 0; g < m; g++) {
            int64_t p = pred ? pred[g * k + i] : -1;
            const int32_t *pl = p >= 0 ? lv + (size_t)p * c : NULL;
            uint32_t *cg = cnt + g * c * PH_BINS;
            uint32_t *bg = big + g * k * c;
#if defined(__x86_64__) && defined(__GNUC__)
            if (avx2) {
                if (avx512)
                    ph_row_avx512(l, pl, c, acc + g * c, cg, bg, nb + g, bc);
                else
                    ph_row_avx2(l, pl, c, acc + g * c, cg, bg, nb + g, bc);
                if (i % 15 == 14 || i + 1 == k)
                    ph_nibbles_avx2(acc + g * c, ev + g * c, od + g * c, c);
                if (i % 255 == 254 || i + 1 == k)
                    ph_bytes_avx2(ev + g * c, od + g * c, c, cg);
                continue;
            }
#endif
            ph_ones(cg, bg, nb + g, bc, l, pl, 0, c);
        }
    }
    for (size_t g = 0; g < m; g++)
        num_big[g] = nb[g];
    free(acc);
    return TKB_ENC_OK;
}

/* costs [t] of one channel's nonzero counts hv[0..m) at symbols nz[0..m): cost[j] =
 * sum_q hv[q] lt[nz[q]][j], each a sequential sum in symbol order (the zero counts, which
 * would add +-0, are skipped: the same sums); the AVX2 path gives the same bits (a
 * product, then a sum: no fused operations) */
static void channel_costs_c(const double *hv, const uint32_t *nz, size_t m, const double *lt,
                            size_t t, double *cost)
{
    for (size_t j = 0; j < t; j++)
        cost[j] = 0.0;
    for (size_t q = 0; q < m; q++) {
        const double *l = lt + (size_t)nz[q] * t;
        for (size_t j = 0; j < t; j++)
            cost[j] += hv[q] * l[j];
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
/* sixteen columns at a time in four independent sums (each still sequential over q) */
__attribute__((target("avx2")))
static void channel_costs_avx2(const double *hv, const uint32_t *nz, size_t m,
                               const double *lt, size_t t, double *cost)
{
    size_t j = 0;
    for (; j + 16 <= t; j += 16) {
        __m256d c0 = _mm256_setzero_pd(), c1 = c0, c2 = c0, c3 = c0;
        for (size_t q = 0; q < m; q++) {
            const double *l = lt + (size_t)nz[q] * t + j;
            __m256d h = _mm256_set1_pd(hv[q]);
            c0 = _mm256_add_pd(c0, _mm256_mul_pd(h, _mm256_loadu_pd(l)));
            c1 = _mm256_add_pd(c1, _mm256_mul_pd(h, _mm256_loadu_pd(l + 4)));
            c2 = _mm256_add_pd(c2, _mm256_mul_pd(h, _mm256_loadu_pd(l + 8)));
            c3 = _mm256_add_pd(c3, _mm256_mul_pd(h, _mm256_loadu_pd(l + 12)));
        }
        _mm256_storeu_pd(cost + j, c0);
        _mm256_storeu_pd(cost + j + 4, c1);
        _mm256_storeu_pd(cost + j + 8, c2);
        _mm256_storeu_pd(cost + j + 12, c3);
    }
    for (; j + 4 <= t; j += 4) {
        __m256d c0 = _mm256_setzero_pd();
        for (size_t q = 0; q < m; q++)
            c0 = _mm256_add_pd(c0, _mm256_mul_pd(_mm256_set1_pd(hv[q]),
                                                 _mm256_loadu_pd(lt + (size_t)nz[q] * t + j)));
        _mm256_storeu_pd(cost + j, c0);
    }
    for (; j < t; j++) {
        double c = 0.0;
        for (size_t q = 0; q < m; q++)
            c += hv[q] * lt[(size_t)nz[q] * t + j];
        cost[j] = c;
    }
}

#endif

tkb_enc_costs_fn tkb_enc_channel_costs(void)
{
#if defined(__x86_64__) && defined(__GNUC__)
    return tkb_enc_use_avx2() ? channel_costs_avx2 : channel_costs_c;
#else
    return channel_costs_c;
#endif
}

long tkb_enc_table_argmin(const int64_t *hist, size_t d, size_t a, const double *nlq,
                          size_t t, int64_t *group)
{
    /* cost[i][g] = sum_s hist[i][s] * nlq[g][s], all terms >= 0; numpy's (BLAS) value and
     * this sequential one each lie within gamma_{a+1} cost of the exact cost */
    const double g = gamma_n((double)a + 2);
    long ambiguous = 0;
    double *lt = malloc((a * t > 0 ? a * t : 1) * sizeof(double));    /* nlq transposed */
    double *cost = malloc((t ? t : 1) * sizeof(double));
    if (!lt || !cost) {
        free(lt);
        free(cost);
        return -1;
    }
    for (size_t j = 0; j < t; j++)
        for (size_t s = 0; s < a; s++)
            lt[s * t + j] = nlq[j * a + s];
    uint32_t *nz = malloc((a ? a : 1) * sizeof(uint32_t));
    double *hv = malloc((a ? a : 1) * sizeof(double));
    if (!nz || !hv) {
        free(lt);
        free(cost);
        free(nz);
        free(hv);
        return -1;
    }
    tkb_enc_costs_fn costs = tkb_enc_channel_costs();
    for (size_t i = 0; i < d; i++) {
        const int64_t *h = hist + i * a;
        size_t m = 0;
        for (size_t s = 0; s < a; s++) {      /* the channel's symbols, branch-free */
            nz[m] = (uint32_t)s;
            hv[m] = (double)h[s];
            m += h[s] != 0;
        }
        costs(hv, nz, m, lt, t, cost);
        if (!m) {                   /* every cost exactly 0 in any order: numpy's first */
            group[i] = 0;
            continue;
        }
        double best = cost[0], second = __builtin_inf();
        size_t bi = 0;
        for (size_t j = 0; j < t; j++) {
            double c = cost[j];
            if (!(c >= 0.0) || c > 1e300) {
                free(lt);
                free(cost);
                free(nz);
                free(hv);
                return -1;          /* not finite: numpy decides */
            }
            if (j && c < best) {
                second = best;
                best = c;
                bi = j;
            } else if (j && c < second) {
                second = c;
            }
        }
        group[i] = (int64_t)bi;
        if (t > 1 && !(second - best > 8.0 * g * second))
            ambiguous++;
    }
    free(lt);
    free(cost);
    free(nz);
    free(hv);
    return ambiguous;
}

int tkb_enc_group_sum(const int64_t *hist, size_t d, size_t a, const int64_t *group,
                      size_t t, double *out)
{
    int64_t *acc = calloc(t * a > 0 ? t * a : 1, sizeof(int64_t));
    if (!acc)
        return TKB_ENC_USAGE;
    for (size_t i = 0; i < d; i++) {
        if (group[i] < 0 || (uint64_t)group[i] >= t) {
            free(acc);
            return TKB_ENC_USAGE;
        }
        int64_t *o = acc + (size_t)group[i] * a;
        const int64_t *h = hist + i * a;
        for (size_t s = 0; s < a; s++)
            o[s] += h[s];
    }
    for (size_t k = 0; k < t * a; k++) {
        if (acc[k] < 0 || acc[k] > ((int64_t)1 << 53)) {
            free(acc);
            return TKB_ENC_USAGE;        /* not exact in binary64: numpy's sums */
        }
        out[k] = (double)acc[k];
    }
    free(acc);
    return TKB_ENC_OK;
}

int tkb_enc_levels_closed(const float *x, size_t k, size_t c, const int64_t *codes,
                          const int64_t *lim, const int64_t *pred, float deadzone,
                          int64_t *lv)
{
    float inv[256];
    for (int q = 0; q < 256; q++)
        inv[q] = tkb_enc_inv_step(q);
    for (size_t i = 0; i < k; i++) {
        int64_t p = pred ? pred[i] : -1;
        if (p >= (int64_t)i)
            return TKB_ENC_USAGE;          /* rows after the rows that predict them */
        const int64_t *pl = p >= 0 ? lv + (size_t)p * c : NULL;
        for (size_t j = 0; j < c; j++) {
            size_t e = i * c + j;
            int64_t q = codes[e];
            int64_t l = lim ? lim[e] : MAX_LEVEL;
            if (q < 0 || q > 255 || l < 0 || l > MAX_LEVEL)
                return TKB_ENC_USAGE;
            int64_t plev = pl ? pl[j] : 0;
            float r = x[e] * inv[q] - (float)plev;         /* |plev| < 2^24: exact */
            if (r != r)
                return TKB_ENC_USAGE;                      /* NaN: numpy's result */
            float a = __builtin_fabsf(r) - deadzone;
            float t = rint_f32(a > 0.0f ? a : 0.0f);
            t = t < 33554432.0f ? t : 33554432.0f;         /* 2^25 */
            int64_t qv = (int64_t)t;
            int64_t v = plev + (r < 0.0f ? -qv : qv);
            v = v > l ? l : v;
            lv[e] = v < -l ? -l : v;
        }
    }
    return TKB_ENC_OK;
}
