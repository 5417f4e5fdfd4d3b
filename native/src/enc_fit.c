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

int tkb_enc_levels_rows(const float *x, size_t k, size_t c, const int64_t *code,
                        const int64_t *delta, int64_t *lv)
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
        const float *r = x + i * c;
        int64_t *o = lv + i * c;
        int bad = 0;
        for (size_t j = 0; j < c && rc == TKB_ENC_OK; j++) {
            float t = rint_f32(r[j] * inv_r[j]);
            bad |= t != t;
            t = t > (float)MAX_LEVEL ? (float)MAX_LEVEL : t;
            t = t < -(float)MAX_LEVEL ? -(float)MAX_LEVEL : t;
            o[j] = (int64_t)(t == t ? t : 0.0f);
        }
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
__attribute__((target("avx2,f16c")))
static void row_sums_avx2(const float *r, const float *inv_r, const float *step_r, size_t d,
                          int out_dtype, double *s3)
{
    const __m256 mx = _mm256_set1_ps((float)MAX_LEVEL), mn = _mm256_set1_ps(-(float)MAX_LEVEL);
    __m256d aa0 = _mm256_setzero_pd(), aa1 = aa0, bb0 = aa0, bb1 = aa0, ab0 = aa0, ab1 = aa0;
    size_t j = 0;
    for (; j + 8 <= d; j += 8) {
        __m256 x = _mm256_loadu_ps(r + j);
        __m256 t = _mm256_round_ps(_mm256_mul_ps(x, _mm256_loadu_ps(inv_r + j)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        t = _mm256_max_ps(_mm256_min_ps(t, mx), mn);
        __m256 v = _mm256_mul_ps(t, _mm256_loadu_ps(step_r + j));
        if (out_dtype == 1) {
            v = _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
        } else if (out_dtype == 2) {
            __m256i b = _mm256_castps_si256(v);
            __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
            b = _mm256_add_epi32(_mm256_add_epi32(b, _mm256_set1_epi32(0x7FFF)), lsb);
            v = _mm256_castsi256_ps(_mm256_and_si256(b, _mm256_set1_epi32((int)0xFFFF0000u)));
        }
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
#endif

int tkb_enc_trial_cosine(const float *x, size_t k, size_t d, const uint8_t *code,
                         const int32_t *delta, int out_dtype, double *mean_cos,
                         double *bound)
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
#endif
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
#if defined(__x86_64__) && defined(__GNUC__)
        if (avx2)
            row_sums_avx2(r, inv_r, step_r, d, out_dtype, s3);
        else
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
    }
    free(inv_r);
    free(step_r);
    *mean_cos = k ? total / (double)k : 0.0;
    /* |cos_numpy - cos_exact| <= 4 gamma_d + 4u per token (sums of exact products with
     * nonnegative or Cauchy-Schwarz-bounded magnitudes, in any order); the mean of k
     * such values |.| <= 1 adds gamma_k + u; the same for this computation; doubled. */
    *bound = 2.0 * 2.0 * (4.0 * gamma_n((double)d + 2) + gamma_n((double)k + 2) + 8.0 * U64);
    return k ? TKB_ENC_OK : 1;
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

/* a histogram's counts of small values in four interleaved copies (consecutive equal
 * values, the common case, do not wait on each other's increments) */
#define SMALL_BINS 1024

int tkb_enc_residual_counts(const int64_t *lv, size_t k, size_t c, const int64_t *pred,
                            int64_t cap, int64_t *hist)
{
    if (cap < 0)
        return TKB_ENC_USAGE;
    for (size_t i = 0; i < k; i++)
        if (pred && pred[i] >= (int64_t)k)
            return TKB_ENC_USAGE;
    uint64_t *small = calloc(4 * SMALL_BINS, sizeof(uint64_t));
    if (!small)
        return TKB_ENC_USAGE;
    const uint64_t ucap = (uint64_t)cap;
    for (size_t i = 0; i < k; i++) {
        int64_t p = pred ? pred[i] : -1;
        const int64_t *pl = p >= 0 ? lv + (size_t)p * c : NULL;
        const int64_t *l = lv + i * c;
        for (size_t j = 0; j < c; j++) {
            uint64_t u = zigzag_diff(l[j], pl ? pl[j] : 0);
            u = u < ucap ? u : ucap;
            if (u < SMALL_BINS)
                small[(j & 3) * SMALL_BINS + u]++;
            else
                hist[u]++;
        }
    }
    for (size_t v = 0; v < SMALL_BINS && v <= ucap; v++)
        hist[v] += (int64_t)(small[v] + small[SMALL_BINS + v] + small[2 * SMALL_BINS + v] +
                             small[3 * SMALL_BINS + v]);
    free(small);
    return TKB_ENC_OK;
}

int tkb_enc_residual_histograms(const int64_t *lv, size_t k, size_t c, const int64_t *pred,
                                int64_t cap, int64_t *hist)
{
    if (cap < 0)
        return TKB_ENC_USAGE;
    const uint64_t ucap = (uint64_t)cap;
    const size_t a = (size_t)cap + 1;
    for (size_t i = 0; i < k; i++) {
        int64_t p = pred ? pred[i] : -1;
        if (p >= (int64_t)k)
            return TKB_ENC_USAGE;
        const int64_t *pl = p >= 0 ? lv + (size_t)p * c : NULL, *l = lv + i * c;
        for (size_t j = 0; j < c; j++) {
            uint64_t u = zigzag_diff(l[j], pl ? pl[j] : 0);
            hist[j * a + (u < ucap ? u : ucap)]++;
        }
    }
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
__attribute__((target("avx2")))
static void channel_costs_avx2(const double *hv, const uint32_t *nz, size_t m,
                               const double *lt, size_t t, double *cost)
{
    size_t j = 0;
    for (; j + 8 <= t; j += 8) {
        __m256d c0 = _mm256_setzero_pd(), c1 = c0;
        for (size_t q = 0; q < m; q++) {
            const double *l = lt + (size_t)nz[q] * t + j;
            __m256d h = _mm256_set1_pd(hv[q]);
            c0 = _mm256_add_pd(c0, _mm256_mul_pd(h, _mm256_loadu_pd(l)));
            c1 = _mm256_add_pd(c1, _mm256_mul_pd(h, _mm256_loadu_pd(l + 4)));
        }
        _mm256_storeu_pd(cost + j, c0);
        _mm256_storeu_pd(cost + j + 4, c1);
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
