/* Encoder core, Annex B.7 (informative): the forward transform in exact integer
 * arithmetic, so that every encoder (numpy, GPU, C) computes the same coefficients:
 *
 *   X = rint(clip((x - mean) 2^a, +-INPUT_MAX))      binary64, elementwise
 *   y = binary32((X P) 2^-(a + p))                    X P exact (|X P| < 2^53)
 *
 * P [D][K] is the transform's forward matrix (transform_fit.forward_matrix: pinv(basis)
 * rounded at 2^p, computed once by the caller); the decoder's inverse is clause 7.6.3. */
#include <stdlib.h>
#include "internal.h"
#include "../include/tkb_enc.h"
#include "enc_scalar.h"

#define INPUT_MAX 32639.0
#define ROWS 4096                   /* rows per block (P is read once per block) */

/* acc[r][j] = sum_c xq[r][c] P[c][j] for nr <= ROWS rows (exact integer sums: any order
 * gives the same bits) */
static void block_c(const double *xq, size_t nr, size_t d, const double *pd, size_t kc,
                    double *acc)
{
    for (size_t e = 0; e < nr * kc; e++)
        acc[e] = 0.0;
    for (size_t c = 0; c < d; c++) {
        const double *pr = pd + c * kc;
        for (size_t r = 0; r < nr; r++) {
            double xv = xq[r * d + c];
            if (xv == 0.0)
                continue;
            double *a = acc + r * kc;
            for (size_t j = 0; j < kc; j++)
                a[j] += xv * pr[j];
        }
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
/* register-blocked: 4 rows x 16 coefficients of accumulators over a packed panel of P
 * (16 columns, d rows: L2-resident while every row passes); fused multiply-adds are exact
 * here (integer products and sums below 2^53), so the bits are block_c's */
__attribute__((target("avx2,fma")))
static void block_avx2(const double *xq, size_t nr, size_t d, const double *pd, size_t kc,
                       double *acc)
{
    size_t j = 0;
    double *panel = malloc((d ? d : 1) * 16 * sizeof(double));
    if (!panel) {
        block_c(xq, nr, d, pd, kc, acc);
        return;
    }
    for (; j + 16 <= kc; j += 16) {
        for (size_t c = 0; c < d; c++)
            memcpy(panel + c * 16, pd + c * kc + j, 16 * sizeof(double));
        size_t r0 = 0;
        for (; r0 + 4 <= nr; r0 += 4) {
            const double *x0 = xq + r0 * d, *x1 = x0 + d, *x2 = x1 + d, *x3 = x2 + d;
            __m256d a[4][4];
            for (int r = 0; r < 4; r++)
                for (int v = 0; v < 4; v++)
                    a[r][v] = _mm256_setzero_pd();
            for (size_t c = 0; c < d; c++) {
                const double *pr = panel + c * 16;
                __m256d p0 = _mm256_loadu_pd(pr), p1 = _mm256_loadu_pd(pr + 4),
                        p2 = _mm256_loadu_pd(pr + 8), p3 = _mm256_loadu_pd(pr + 12);
                __m256d b[4] = {_mm256_set1_pd(x0[c]), _mm256_set1_pd(x1[c]),
                                _mm256_set1_pd(x2[c]), _mm256_set1_pd(x3[c])};
                for (int r = 0; r < 4; r++) {
                    a[r][0] = _mm256_fmadd_pd(b[r], p0, a[r][0]);
                    a[r][1] = _mm256_fmadd_pd(b[r], p1, a[r][1]);
                    a[r][2] = _mm256_fmadd_pd(b[r], p2, a[r][2]);
                    a[r][3] = _mm256_fmadd_pd(b[r], p3, a[r][3]);
                }
            }
            for (int r = 0; r < 4; r++)
                for (int v = 0; v < 4; v++)
                    _mm256_storeu_pd(acc + (r0 + r) * kc + j + 4 * v, a[r][v]);
        }
        for (; r0 < nr; r0++) {             /* the last rows */
            const double *x0 = xq + r0 * d;
            for (int v = 0; v < 16; v++) {
                double s0 = 0.0;
                for (size_t c = 0; c < d; c++)
                    s0 += x0[c] * panel[c * 16 + v];
                acc[r0 * kc + j + v] = s0;
            }
        }
    }
    free(panel);
    for (; j < kc; j++) {                   /* the last coefficients */
        for (size_t r = 0; r < nr; r++) {
            const double *x0 = xq + r * d;
            double s0 = 0.0;
            for (size_t c = 0; c < d; c++)
                s0 += x0[c] * pd[c * kc + j];
            acc[r * kc + j] = s0;
        }
    }
}

static int have_fma(void)
{
    static int hw = -1;
    if (hw < 0) {
        __builtin_cpu_init();
        hw = __builtin_cpu_supports("fma") ? 1 : 0;
    }
    return hw;
}
#endif

int tkb_enc_forward(const float *x, size_t k, size_t d, const double *mean, double scale,
                    const int64_t *p_int, size_t kc, double out_scale, float *out)
{
    if (k == 0 || kc == 0)
        return TKB_ENC_OK;
    /* binary64 products and sums of integers below 2^53 are exact: any order, any
     * vector width gives the same sums as int64 arithmetic */
    double *acc = malloc(ROWS * kc * sizeof(double));
    double *xq = malloc((d ? d : 1) * ROWS * sizeof(double));
    double *pd = malloc((d ? d : 1) * kc * sizeof(double));
    if (!acc || !xq || !pd) {
        free(acc);
        free(xq);
        free(pd);
        return TKB_ENC_USAGE;
    }
    for (size_t e = 0; e < d * kc; e++)
        pd[e] = (double)p_int[e];
    void (*block)(const double *, size_t, size_t, const double *, size_t, double *) = block_c;
#if defined(__x86_64__) && defined(__GNUC__)
    if (tkb_cpu_avx2() && have_fma())
        block = block_avx2;
#endif
    for (size_t i0 = 0; i0 < k; i0 += ROWS) {
        size_t nr = k - i0 < ROWS ? k - i0 : ROWS;
        for (size_t r = 0; r < nr; r++) {
            const float *row = x + (i0 + r) * d;
            double *xr = xq + r * d;
            for (size_t c = 0; c < d; c++) {
                double v = ((double)row[c] - mean[c]) * scale;   /* two rounded operations */
                if (v != v)
                    v = 0.0;   /* NaN input (refused by the encoder before): numpy gives NaN */
                v = v > INPUT_MAX ? INPUT_MAX : v < -INPUT_MAX ? -INPUT_MAX : v;
                xr[c] = rint_f64(v);                            /* half to even */
            }
        }
        block(xq, nr, d, pd, kc, acc);     /* |X P| < 2^53: exact in any order */
        for (size_t r = 0; r < nr; r++) {
            float *o = out + (i0 + r) * kc;
            const double *a = acc + r * kc;
            for (size_t j = 0; j < kc; j++)
                o[j] = (float)(a[j] * out_scale);    /* exact scaling, one rounding */
        }
    }
    free(acc);
    free(xq);
    free(pd);
    return TKB_ENC_OK;
}
