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

/* round half to even (as enc_quant.c's; no libm) */
static inline double rint_f64(double x)
{
    if (!(__builtin_fabs(x) < 4503599627370496.0))
        return x;
    return x >= 0.0 ? (x + 4503599627370496.0) - 4503599627370496.0
                    : (x - 4503599627370496.0) + 4503599627370496.0;
}

#define INPUT_MAX 32639.0

int tkb_enc_forward(const float *x, size_t k, size_t d, const double *mean, double scale,
                    const int64_t *p_int, size_t kc, double out_scale, float *out)
{
    if (k == 0 || kc == 0)
        return TKB_ENC_OK;
    /* binary64 products and sums of integers below 2^53 are exact: any order, any
     * vector width gives the same sums as int64 arithmetic */
    double *acc = malloc(kc * sizeof(double));
    double *xq = malloc((d ? d : 1) * sizeof(double));
    double *pd = malloc((d ? d : 1) * kc * sizeof(double));
    if (!acc || !xq || !pd) {
        free(acc);
        free(xq);
        free(pd);
        return TKB_ENC_USAGE;
    }
    for (size_t e = 0; e < d * kc; e++)
        pd[e] = (double)p_int[e];
    for (size_t i = 0; i < k; i++) {
        const float *r = x + i * d;
        for (size_t c = 0; c < d; c++) {
            double v = ((double)r[c] - mean[c]) * scale;       /* two rounded operations */
            if (v != v)
                v = 0.0;     /* NaN input (refused by the encoder before): numpy gives NaN */
            v = v > INPUT_MAX ? INPUT_MAX : v < -INPUT_MAX ? -INPUT_MAX : v;
            xq[c] = rint_f64(v);                            /* half to even */
        }
        for (size_t j = 0; j < kc; j++)
            acc[j] = 0.0;
        for (size_t c = 0; c < d; c++) {
            double xv = xq[c];
            if (xv == 0.0)
                continue;
            const double *pr = pd + c * kc;
            for (size_t j = 0; j < kc; j++)
                acc[j] += xv * pr[j];          /* |X P| < 2^53: exact in any order */
        }
        float *o = out + i * kc;
        for (size_t j = 0; j < kc; j++)
            o[j] = (float)(acc[j] * out_scale);    /* exact scaling, one rounding */
    }
    free(acc);
    free(xq);
    free(pd);
    return TKB_ENC_OK;
}
