/* Scalar helpers shared by the encoder core (enc_quant.c, enc_fit.c, enc_transform.c):
 * binary32 / binary64 round half to even, a correctly rounded square root and the exact
 * binary16 -> binary32 conversion, without libm, so that every operation is the one the
 * reference encoder performs (no fused operations: -ffp-contract=off). */
#ifndef TKB_ENC_SCALAR_H
#define TKB_ENC_SCALAR_H

#include <stdint.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define MAX_LEVEL ((1 << 24) - 1)          /* clause 7.6.1 */

/* round half to even of binary32 / binary64 values (libm's rintf / rint in the default
 * rounding mode): below 2^23 (2^52) adding and subtracting 2^23 (2^52) rounds once at the
 * unit; larger values, infinities and NaN are returned as they are */
static inline float rint_f32(float x)
{
    /* branch-free: the rounding of |x|, with the sign of x (rint is odd-symmetric) */
    float a = __builtin_fabsf(x);
    float r = (a + 8388608.0f) - 8388608.0f;
    return __builtin_copysignf(a < 8388608.0f ? r : a, x);
}

static inline double rint_f64(double x)
{
    if (!(__builtin_fabs(x) < 4503599627370496.0))
        return x;
    return x >= 0.0 ? (x + 4503599627370496.0) - 4503599627370496.0
                    : (x - 4503599627370496.0) + 4503599627370496.0;
}

static inline double sqrt_f64(double s)     /* correctly rounded (IEEE 754 squareRoot) */
{
#if defined(__SSE2__)
    return _mm_cvtsd_f64(_mm_sqrt_sd(_mm_setzero_pd(), _mm_set_sd(s)));
#else
    return __builtin_sqrt(s);
#endif
}

static inline float bits_f32(uint32_t b)
{
    float f;
    memcpy(&f, &b, 4);
    return f;
}

static inline uint32_t f32_bits(float v)
{
    uint32_t b;
    memcpy(&b, &v, 4);
    return b;
}

/* binary16 -> binary32, exact (clause 7.6.2's conversions in reverse need none) */
static inline float f16_to_f32(uint16_t h)
{
    uint32_t s = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1F, m = h & 0x3FFu, b;
    if (e == 0x1F)
        b = s | 0x7F800000u | (m << 13);                 /* inf, NaN (payload kept) */
    else if (e != 0)
        b = s | ((e + 112) << 23) | (m << 13);           /* normal */
    else if (m == 0)
        b = s;                                           /* zero */
    else {                                               /* subnormal: normalise */
        e = 113;
        while (!(m & 0x400u)) {
            m <<= 1;
            e--;
        }
        b = s | (e << 23) | ((m & 0x3FFu) << 13);
    }
    return bits_f32(b);
}

/* the zigzag index (7.4.1) of the residual a - b (7.5), in uint64 arithmetic (no signed
 * overflow whatever the values) */
static inline uint64_t zigzag_diff(int64_t a, int64_t b)
{
    uint64_t r = (uint64_t)a - (uint64_t)b;
    return (r << 1) ^ (0 - (r >> 63));
}

/* whether the encoder's AVX2 (+ F16C) paths run: tkb_cpu_avx2 probed once (enc_fit.c),
 * $TKB_NATIVE_SIMD=scalar read on every call */
int tkb_enc_use_avx2(void);

/* costs [t] of one channel's nonzero counts hv[0..m) at symbols nz[0..m) under the
 * tables' -log2 probabilities lt [symbols][t]: cost[j] = sum_q hv[q] lt[nz[q]][j], each a
 * sequential sum in symbol order, the AVX2 path (enc_fit.c) with the same bits */
typedef void (*tkb_enc_costs_fn)(const double *hv, const uint32_t *nz, size_t m,
                                 const double *lt, size_t t, double *cost);
tkb_enc_costs_fn tkb_enc_channel_costs(void);

#endif
