/* Encoder core, Annex B.3 (informative): the table grouping of the reference encoder's
 * track fit (reference/table_fit.py: group_tables; FitKernels.lloyd_groups and
 * FitKernels.table_set; reference/tables.py: normalize, table_cost_bits), called through
 * tokenbits.native.encoder.NativeFitKernels.
 *
 *   - tkb_enc_lloyd: the Lloyd refinement of the channel groups.  The tables'
 *     probabilities, their -log2 and the channels' costs are binary64 values that numpy
 *     sums in its own orders (pairwise row sums, BLAS) and takes the logarithm of with its
 *     own library: each step's choices are taken here only where a rigorous bound on the
 *     difference from numpy's costs cannot flip them (the bound assumes that both log2
 *     functions are within 4 ulps of the exact value; glibc's and numpy's SIMD ones are
 *     within 1 to 4); the first undecided step is left to numpy.
 *   - tkb_enc_normalize_tables: tables.normalize exactly (the same binary64 operations and
 *     the same stable order); where it takes frequency away (costs with a logarithm) the
 *     choice is taken here only when no rounding of numpy's log can change it, else the
 *     table is left to numpy.
 *   - tkb_enc_tables_bits: the bits of the coded symbols under the tables (a binary64 sum
 *     with a bound, as above) and the tables' own bits (integers, exact).
 *   - tkb_enc_group_tables: the whole grouping (every candidate number of tables, its
 *     Lloyd steps, tables and bits, the comparisons) when every step of it is decided
 *     here; else the caller takes the reference's steps with the kernels above.
 *
 * No fused operations (-ffp-contract=off). */
#include "internal.h"
#include "../include/tkb_enc.h"
#include "enc_scalar.h"
#include <math.h>
#include <stdlib.h>

#define U64 (1.0 / 9007199254740992.0)      /* unit roundoff of binary64, 2^-53 */
#define LOG_ULPS (4.0 * 2.0 * U64)          /* 4 ulps of a log2 value, relative */

static double gamma_of(double n)            /* n u / (1 - n u) */
{
    double nu = n * U64;
    return nu < 0.5 ? nu / (1.0 - nu) : 1.0;
}

/* the smallest cost of c[0..t) and its first index, and the smallest of the others (inf
 * when t == 1): the sequential scan's answers (ties: the first index best, the tie second) */
static void best_two_c(const double *c, size_t t, size_t *bi, double *best, double *second)
{
    size_t b = 0;
    double b1 = c[0], b2 = __builtin_inf();
    for (size_t j = 1; j < t; j++) {
        double v = c[j];
        if (v < b1) {
            b2 = b1;
            b1 = v;
            b = j;
        } else if (v < b2) {
            b2 = v;
        }
    }
    *bi = b;
    *best = b1;
    *second = b2;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

/* Each channel's nonzero counts (as binary64) and their symbols, and its total. */
typedef struct {
    size_t *off;                /* [d + 1]: channel i's entries off[i] .. off[i + 1] */
    double *hv;
    uint32_t *nz;
    double *hsum;
    /* the vector paths' channels in groups of w (4: AVX2, 8: AVX-512; those with counts,
     * by their largest symbol): group g's lanes are the channels lane[w g .. w g + w) (d:
     * none), its counts h4[w s + l] of symbols s < gs[g] from h4 + w goff[g]; NULL
     * without them */
    size_t w, ng, *lane, *gs, *goff;
    double *h4;
} compact_hist;

static void compact_free(compact_hist *cp)
{
    free(cp->off);
    free(cp->hv);
    free(cp->nz);
    free(cp->hsum);
    free(cp->lane);
    free(cp->gs);
    free(cp->goff);
    free(cp->h4);
}

#if defined(__x86_64__) && defined(__GNUC__)
static int key_cmp(const void *pa, const void *pb)      /* (largest symbol, channel) */
{
    const uint64_t x = *(const uint64_t *)pa, y = *(const uint64_t *)pb;
    return (x > y) - (x < y);
}

/* the channels with counts in groups of w by their largest symbol (compact_hist) */
static int group_channels(compact_hist *cp, size_t d, size_t w)
{
    uint64_t *key = malloc(d * sizeof(uint64_t));
    size_t n = 0, total = 0;
    if (!key)
        return -1;
    for (size_t i = 0; i < d; i++)
        if (cp->off[i + 1] > cp->off[i])          /* (symbols < 2^32, channels < 2^32) */
            key[n++] = (uint64_t)cp->nz[cp->off[i + 1] - 1] << 32 | i;
    qsort(key, n, sizeof(uint64_t), key_cmp);
    cp->w = w;
    cp->ng = (n + w - 1) / w;
    cp->lane = malloc((cp->ng * w + 1) * sizeof(size_t));
    cp->gs = malloc((cp->ng + 1) * sizeof(size_t));
    cp->goff = malloc((cp->ng + 1) * sizeof(size_t));
    if (!cp->lane || !cp->gs || !cp->goff) {
        free(key);
        return -1;
    }
    for (size_t g = 0; g < cp->ng; g++) {
        size_t smax = 0;
        for (size_t l = 0; l < w; l++) {
            size_t r = w * g + l;
            cp->lane[r] = r < n ? (size_t)(key[r] & 0xFFFFFFFFu) : d;
            if (r < n && (size_t)(key[r] >> 32) + 1 > smax)
                smax = (size_t)(key[r] >> 32) + 1;
        }
        cp->gs[g] = smax;
        cp->goff[g] = total;
        total += smax;
    }
    free(key);
    cp->h4 = calloc(w * total + 1, sizeof(double));
    if (!cp->h4)
        return -1;
    for (size_t g = 0; g < cp->ng; g++)
        for (size_t l = 0; l < w; l++) {
            size_t i = cp->lane[w * g + l];
            if (i == d)
                continue;
            for (size_t q = cp->off[i]; q < cp->off[i + 1]; q++)
                cp->h4[w * (cp->goff[g] + cp->nz[q]) + l] = cp->hv[q];
        }
    return 0;
}

/* Every table's cost for the four channels of a group, cm4[4 j + l] = sum_s h4[4 s + l]
 * nlq[s][j] summed for s = 0, 1, ... (a product, then a sum: no fused operations; the
 * zero counts add +0 exactly, so these are channel_costs' sums, bit for bit), eight
 * tables at a time in independent sums; then each lane's scan of the tables in order
 * (best_two_c's answers: a smaller value replaces the best and its index, the old best
 * or the value becomes the second, b2 = min(b2, max(b1, v)); minima round nothing). */
__attribute__((target("avx2")))
static void group_costs_avx2(const double *h4, size_t ns, const double *nlq, size_t t,
                             double *cm4, int64_t *bi, double *best, double *second)
{
    size_t j = 0;
    for (; j + 8 <= t; j += 8) {
        __m256d c0 = _mm256_setzero_pd(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0,
                c6 = c0, c7 = c0;
        for (size_t s = 0; s < ns; s++) {
            const __m256d h = _mm256_loadu_pd(h4 + 4 * s);
            const double *w = nlq + s * t + j;
            c0 = _mm256_add_pd(c0, _mm256_mul_pd(h, _mm256_broadcast_sd(w)));
            c1 = _mm256_add_pd(c1, _mm256_mul_pd(h, _mm256_broadcast_sd(w + 1)));
            c2 = _mm256_add_pd(c2, _mm256_mul_pd(h, _mm256_broadcast_sd(w + 2)));
            c3 = _mm256_add_pd(c3, _mm256_mul_pd(h, _mm256_broadcast_sd(w + 3)));
            c4 = _mm256_add_pd(c4, _mm256_mul_pd(h, _mm256_broadcast_sd(w + 4)));
            c5 = _mm256_add_pd(c5, _mm256_mul_pd(h, _mm256_broadcast_sd(w + 5)));
            c6 = _mm256_add_pd(c6, _mm256_mul_pd(h, _mm256_broadcast_sd(w + 6)));
            c7 = _mm256_add_pd(c7, _mm256_mul_pd(h, _mm256_broadcast_sd(w + 7)));
        }
        double *o = cm4 + 4 * j;
        _mm256_storeu_pd(o, c0);
        _mm256_storeu_pd(o + 4, c1);
        _mm256_storeu_pd(o + 8, c2);
        _mm256_storeu_pd(o + 12, c3);
        _mm256_storeu_pd(o + 16, c4);
        _mm256_storeu_pd(o + 20, c5);
        _mm256_storeu_pd(o + 24, c6);
        _mm256_storeu_pd(o + 28, c7);
    }
    for (; j < t; j++) {
        __m256d c0 = _mm256_setzero_pd();
        for (size_t s = 0; s < ns; s++)
            c0 = _mm256_add_pd(c0, _mm256_mul_pd(_mm256_loadu_pd(h4 + 4 * s),
                                                 _mm256_broadcast_sd(nlq + s * t + j)));
        _mm256_storeu_pd(cm4 + 4 * j, c0);
    }
    __m256d b1 = _mm256_loadu_pd(cm4), b2 = _mm256_set1_pd(__builtin_inf());
    __m256i ix = _mm256_setzero_si256(), jv = ix;
    const __m256i one = _mm256_set1_epi64x(1);
    for (j = 1; j < t; j++) {
        __m256d v = _mm256_loadu_pd(cm4 + 4 * j);
        jv = _mm256_add_epi64(jv, one);
        __m256d lt = _mm256_cmp_pd(v, b1, _CMP_LT_OQ);
        b2 = _mm256_min_pd(b2, _mm256_max_pd(b1, v));
        b1 = _mm256_blendv_pd(b1, v, lt);
        ix = _mm256_castpd_si256(_mm256_blendv_pd(_mm256_castsi256_pd(ix),
                                                  _mm256_castsi256_pd(jv), lt));
    }
    _mm256_storeu_pd(best, b1);
    _mm256_storeu_pd(second, b2);
    _mm256_storeu_si256((__m256i *)bi, ix);
}

/* the same for eight channels (AVX-512F: the same operations lane by lane) */
__attribute__((target("avx512f")))
static void group_costs_avx512(const double *h8, size_t ns, const double *nlq, size_t t,
                               double *cm8, int64_t *bi, double *best, double *second)
{
    size_t j = 0;
    for (; j + 8 <= t; j += 8) {
        __m512d c0 = _mm512_setzero_pd(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0,
                c6 = c0, c7 = c0;
        for (size_t s = 0; s < ns; s++) {
            const __m512d h = _mm512_loadu_pd(h8 + 8 * s);
            const double *w = nlq + s * t + j;
            c0 = _mm512_add_pd(c0, _mm512_mul_pd(h, _mm512_set1_pd(w[0])));
            c1 = _mm512_add_pd(c1, _mm512_mul_pd(h, _mm512_set1_pd(w[1])));
            c2 = _mm512_add_pd(c2, _mm512_mul_pd(h, _mm512_set1_pd(w[2])));
            c3 = _mm512_add_pd(c3, _mm512_mul_pd(h, _mm512_set1_pd(w[3])));
            c4 = _mm512_add_pd(c4, _mm512_mul_pd(h, _mm512_set1_pd(w[4])));
            c5 = _mm512_add_pd(c5, _mm512_mul_pd(h, _mm512_set1_pd(w[5])));
            c6 = _mm512_add_pd(c6, _mm512_mul_pd(h, _mm512_set1_pd(w[6])));
            c7 = _mm512_add_pd(c7, _mm512_mul_pd(h, _mm512_set1_pd(w[7])));
        }
        double *o = cm8 + 8 * j;
        _mm512_storeu_pd(o, c0);
        _mm512_storeu_pd(o + 8, c1);
        _mm512_storeu_pd(o + 16, c2);
        _mm512_storeu_pd(o + 24, c3);
        _mm512_storeu_pd(o + 32, c4);
        _mm512_storeu_pd(o + 40, c5);
        _mm512_storeu_pd(o + 48, c6);
        _mm512_storeu_pd(o + 56, c7);
    }
    for (; j < t; j++) {
        __m512d c0 = _mm512_setzero_pd();
        for (size_t s = 0; s < ns; s++)
            c0 = _mm512_add_pd(c0, _mm512_mul_pd(_mm512_loadu_pd(h8 + 8 * s),
                                                 _mm512_set1_pd(nlq[s * t + j])));
        _mm512_storeu_pd(cm8 + 8 * j, c0);
    }
    __m512d b1 = _mm512_loadu_pd(cm8), b2 = _mm512_set1_pd(__builtin_inf());
    __m512i ix = _mm512_setzero_si512();
    for (j = 1; j < t; j++) {
        __m512d v = _mm512_loadu_pd(cm8 + 8 * j);
        __mmask8 lt = _mm512_cmp_pd_mask(v, b1, _CMP_LT_OQ);
        b2 = _mm512_min_pd(b2, _mm512_max_pd(b1, v));
        b1 = _mm512_mask_blend_pd(lt, b1, v);
        ix = _mm512_mask_blend_epi64(lt, ix, _mm512_set1_epi64((long long)j));
    }
    _mm512_storeu_pd(best, b1);
    _mm512_storeu_pd(second, b2);
    _mm512_storeu_si512((void *)bi, ix);
}
#endif

/* 0, or -1 (out of memory; a count beyond 2^53 or all counts beyond 2^62: numpy's) */
static int compact_build(const int64_t *hist, size_t d, size_t a, compact_hist *cp)
{
    const size_t da = d * a > 0 ? d * a : 1;
    cp->off = malloc((d + 1) * sizeof(size_t));
    cp->hv = malloc(da * sizeof(double));
    cp->nz = malloc(da * sizeof(uint32_t));
    cp->hsum = malloc((d ? d : 1) * sizeof(double));
    cp->ng = 0;
    cp->lane = cp->gs = cp->goff = NULL;
    cp->h4 = NULL;
    if (!cp->off || !cp->hv || !cp->nz || !cp->hsum)
        return -1;
    cp->off[0] = 0;
    double all = 0.0;
    for (size_t i = 0; i < d; i++) {
        const int64_t *h = hist + i * a;
        size_t m = cp->off[i];
        double sum = 0.0;
        for (size_t s = 0; s < a; s++) {
            if (h[s] < 0 || h[s] > ((int64_t)1 << 53))
                return -1;
            if (h[s]) {                          /* numpy adds the zeros' +0: same sums */
                cp->nz[m] = (uint32_t)s;
                cp->hv[m] = (double)h[s];
                sum += cp->hv[m];
                m++;
            }
        }
        cp->off[i + 1] = m;
        cp->hsum[i] = sum;
        all += sum;
    }
    if (!(all < 4e18))
        return -1;                               /* the groups' sums stay below 2^62 */
#if defined(__x86_64__) && defined(__GNUC__)
    if (tkb_enc_use_avx2() && d > 0 && d < ((size_t)1 << 32))
        return group_channels(cp, d, tkb_cpu_avx512() ? 8 : 4);
#endif
    return 0;
}

/* Whether a channel's choice (best, second: its two least costs) is numpy's whatever
 * the roundings: both finite, and apart by more than twice the bound on the difference
 * of each cost from numpy's, (3 gamma + 2^-47) cost + 2 H delta1 (numpy's q =
 * (ghist + 1e-3) / row sum: the row sums differ by at most 2.01 gamma_a relative, the
 * quotients by rho = that + 2u, their log2 by delta1 = 1.5 rho absolute; each log2 within
 * 4 ulps); a single table (t = 1) is always numpy's. */
static int choice_decided(double best, double second, size_t t, double gcost, double hsum,
                          double delta1)
{
    if (!(best >= 0.0) || !(second <= 1e300 || t == 1))
        return 0;                            /* not finite: numpy decides */
    double bound = (3.0 * gcost + 8.0 * LOG_ULPS) * second + 2.0 * hsum * delta1;
    return t == 1 || second - best > 2.0 * bound;
}

/* Lloyd iterations of the channel groups (FitKernels.lloyd_groups).  Each step: the
 * groups' histograms (kept up to date by the channels that moved: integer sums, the same
 * as summing them again), the -log2 probabilities of the groups that changed (the others'
 * are the previous step's values: same operations on the same histogram), every
 * channel's cost under every group (sequential sums over its symbols: channel_costs, or
 * group_costs_avx2 four channels at a time, the same bits) and its cheapest group. */
static long lloyd_run(size_t d, size_t a, const compact_hist *cp,
                      int64_t *group, size_t t, long iters)
{
    const size_t dd = d ? d : 1;
    const size_t *off = cp->off;
    const double *hv = cp->hv, *hsum = cp->hsum;
    const uint32_t *nz = cp->nz;
    int64_t *gh = malloc(t * a * sizeof(int64_t));
    double *nlq = malloc(t * a * sizeof(double));       /* [a][t]: symbol-major */
    double *cost = malloc(8 * t * sizeof(double));      /* a channel's [t] or a group's [t][w] */
    uint8_t *chg = malloc(t);
    int64_t *next = malloc(dd * sizeof(int64_t));
    long rc = 0;
    if (!gh || !nlq || !cost || !chg || !next) {
        rc = -1;
        goto done;
    }
    memset(gh, 0, t * a * sizeof(int64_t));
    for (size_t i = 0; i < d; i++) {
        int64_t *o = gh + (size_t)group[i] * a;
        for (size_t q = off[i]; q < off[i + 1]; q++)
            o[nz[q]] += (int64_t)hv[q];
    }
    memset(chg, 1, t);
    /* numpy's q = (ghist + 1e-3) / row sum: the row sums differ by at most 2.01 gamma_a
     * relative (both orders, positive terms), the quotients by rho = that + 2u, their
     * log2 by 1.5 rho (absolute); each log2 within 4 ulps */
    const double rho = 2.01 * gamma_of((double)a) + 2.0 * U64;
    const double delta1 = 1.5 * rho;
    const double gcost = gamma_of((double)a + 2);
    const tkb_enc_costs_fn costs = tkb_enc_channel_costs();
    for (long it = 0; it < iters; it++) {
        for (size_t g = 0; g < t; g++) {
            if (!chg[g])
                continue;
            const int64_t *o = gh + g * a;
            double sum = 0.0;
            for (size_t s = 0; s < a; s++) {
                if (o[s] > ((int64_t)1 << 53)) {
                    rc = -1 - it;            /* not exact in binary64: numpy's step */
                    goto done;
                }
                sum += (double)o[s] + 1e-3;
            }
            for (size_t s = 0; s < a; s++)
                nlq[s * t + g] = -log2(((double)o[s] + 1e-3) / sum);
        }
        int moved = 0;
        for (size_t i = 0; i < d; i++)
            next[i] = 0;                     /* no counts: every cost 0, numpy's first */
#if defined(__x86_64__) && defined(__GNUC__)
        if (cp->h4) {                        /* w channels at a time */
            const size_t w = cp->w;
            for (size_t g = 0; g < cp->ng; g++) {
                int64_t bi4[8];
                double b1[8], b2[8];
                if (w == 8)
                    group_costs_avx512(cp->h4 + 8 * cp->goff[g], cp->gs[g], nlq, t, cost,
                                       bi4, b1, b2);
                else
                    group_costs_avx2(cp->h4 + 4 * cp->goff[g], cp->gs[g], nlq, t, cost, bi4,
                                     b1, b2);
                for (size_t l = 0; l < w; l++) {
                    const size_t i = cp->lane[w * g + l];
                    if (i == d)
                        continue;
                    if (!choice_decided(b1[l], b2[l], t, gcost, hsum[i], delta1)) {
                        rc = -1 - it;        /* this step is numpy's */
                        goto done;
                    }
                    next[i] = bi4[l];
                }
            }
        } else
#endif
        for (size_t i = 0; i < d; i++) {
            if (!(hsum[i] > 0.0))
                continue;
            size_t bi;
            double best, second;
            costs(hv + off[i], nz + off[i], off[i + 1] - off[i], nlq, t, cost);
            best_two_c(cost, t, &bi, &best, &second);
            if (!choice_decided(best, second, t, gcost, hsum[i], delta1)) {
                rc = -1 - it;                /* this step is numpy's */
                goto done;
            }
            next[i] = (int64_t)bi;
        }
        for (size_t i = 0; i < d; i++)
            moved |= next[i] != group[i];
        rc = it + 1;
        if (!moved)
            break;
        memset(chg, 0, t);
        for (size_t i = 0; i < d; i++) {     /* the moved channels' counts */
            if (next[i] == group[i])
                continue;
            int64_t *o = gh + (size_t)group[i] * a, *n = gh + (size_t)next[i] * a;
            for (size_t q = off[i]; q < off[i + 1]; q++) {
                o[nz[q]] -= (int64_t)hv[q];
                n[nz[q]] += (int64_t)hv[q];
            }
            chg[group[i]] = chg[next[i]] = 1;
            group[i] = next[i];
        }
    }
done:
    free(gh);
    free(nlq);
    free(cost);
    free(chg);
    free(next);
    return rc;
}

long tkb_enc_lloyd(const int64_t *hist, size_t d, size_t a, int64_t *group, size_t t,
                   long iters)
{
    if (t == 0 || a == 0)
        return -1;
    for (size_t i = 0; i < d; i++)
        if (group[i] < 0 || (uint64_t)group[i] >= t)
            return -1;
    compact_hist cp;
    long rc = compact_build(hist, d, a, &cp) ? -1 : lloyd_run(d, a, &cp, group, t, iters);
    compact_free(&cp);
    return rc;
}

/* tables.normalize's stable argsort of -(ideal - f): ascending keys, ties by index */
typedef struct {
    double key;
    size_t idx;
} keyed;

static int keyed_cmp(const void *pa, const void *pb)
{
    const keyed *x = pa, *y = pb;
    if (x->key < y->key)
        return -1;
    if (y->key < x->key)
        return 1;
    return (x->idx > y->idx) - (x->idx < y->idx);
}

/* One step of tables.normalize's shaving: the cost of taking one from symbol s is
 * c log(f / (f - 1)) (f > 1; else never taken), and the min(need, takeable) cheapest
 * (stable: ties by index) lose one.  numpy's log and this one (libm) may differ by a few
 * ulps, so the choice is taken here only when no rounding can change it: the costs on
 * either side of the cut differ by more than SHAVE_EPS relative, or the symbols within
 * that distance of the cut have the same count and frequency (then their costs are the
 * same in numpy too, and both orders put them by index).  Returns 1 when undecided. */
#define SHAVE_EPS (1.0 / 70368744177664.0)          /* 2^-46: >> 16 ulps */

static int shave_step(const int64_t *h, size_t n, int64_t *f, int64_t need, keyed *sc)
{
    size_t nc = 0;
    for (size_t s = 0; s < n; s++) {
        if (f[s] > 1) {
            double fs = (double)f[s];
            sc[nc].key = (double)h[s] * log(fs / (fs - 1.0));
            sc[nc].idx = s;
            nc++;
        }
    }
    qsort(sc, nc, sizeof(keyed), keyed_cmp);
    size_t k = (size_t)need < nc ? (size_t)need : nc;
    if (k == 0)
        return 1;                            /* nothing to take: numpy's (it raises) */
    if (k < nc) {
        double x = sc[k - 1].key, y = sc[k].key, tol = SHAVE_EPS * y;
        if (!(y - x > tol)) {
            size_t r = sc[k].idx;
            for (size_t p = 0; p < nc; p++) {
                double v = sc[p].key;
                if (v >= x - tol && v <= y + tol &&
                    (h[sc[p].idx] != h[r] || f[sc[p].idx] != f[r]))
                    return 1;
            }
        }
    }
    for (size_t p = 0; p < k; p++)
        f[sc[p].idx]--;
    return 0;
}

/* one table: returns 0, or 1 when numpy has to normalize it (frequency to take away, or
 * more symbols than slots, or counts beyond 2^53) */
static int normalize_one(const int64_t *h, size_t n, unsigned prob_bits, int64_t *f,
                         keyed *scratch, double *ideal)
{
    const int64_t m = (int64_t)1 << prob_bits;
    int64_t total = 0, nnz = 0;
    for (size_t s = 0; s < n; s++) {
        if (h[s] < 0 || h[s] > ((int64_t)1 << 52) - total)
            return 1;
        total += h[s];
        nnz += h[s] > 0;
    }
    if (nnz > m)
        return 1;                            /* numpy raises: let it */
    if (nnz == 0) {                          /* an unused table: all mass on symbol 0 */
        memset(f, 0, n * sizeof(int64_t));
        f[0] = m;
        return 0;
    }
    const double csum = (double)total;       /* exact: any order */
    int64_t fsum = 0;
    for (size_t s = 0; s < n; s++) {
        double c = (double)h[s];
        ideal[s] = c * (double)m / csum;
        double fl = floor(ideal[s]);
        f[s] = h[s] > 0 ? (fl > 1.0 ? (int64_t)fl : 1) : 0;
        fsum += f[s];
    }
    int64_t dd = m - fsum;
    while (dd < 0) {                         /* too many: take one where it costs least */
        if (shave_step(h, n, f, -dd, scratch))
            return 1;                        /* a choice a rounding could change */
        fsum = 0;
        for (size_t s = 0; s < n; s++)
            fsum += f[s];
        dd = m - fsum;
    }
    if (dd > 0) {
        for (size_t s = 0; s < n; s++) {
            scratch[s].key = -(ideal[s] - (double)f[s]);
            scratch[s].idx = s;
        }
        qsort(scratch, n, sizeof(keyed), keyed_cmp);
        for (size_t r = 0; r < (size_t)dd && r < n; r++)
            f[scratch[r].idx]++;
    }
    return 0;
}

int tkb_enc_normalize_tables(const int64_t *ghist, size_t t, size_t a, unsigned prob_bits,
                             int escape_slot, int64_t *freq, int64_t *used, uint8_t *numpy)
{
    if (prob_bits > 30 || a == 0)
        return TKB_ENC_USAGE;
    keyed *scratch = malloc(a * sizeof(keyed));
    double *ideal = malloc(a * sizeof(double));
    if (!scratch || !ideal) {
        free(scratch);
        free(ideal);
        return TKB_ENC_USAGE;
    }
    for (size_t g = 0; g < t; g++) {
        const int64_t *h = ghist + g * a;
        size_t u = 0;
        for (size_t s = 0; s < a; s++)
            u = h[s] ? s + 1 : u;
        u = u ? u : 1;                       /* an empty table codes symbol 0 */
        if (escape_slot && u < a)
            u++;                             /* the unused escape symbol (B.3) */
        used[g] = (int64_t)u;
        int64_t *f = freq + g * a;
        memset(f, 0, a * sizeof(int64_t));
        numpy[g] = (uint8_t)normalize_one(h, u, prob_bits, f, scratch, ideal);
    }
    free(scratch);
    free(ideal);
    return TKB_ENC_OK;
}

static int bit_length(uint64_t v)
{
    return v ? 64 - __builtin_clzll(v) : 0;
}

/* tables.table_cost_bits: 24 + the exp-Golomb codes of the frequencies at the best k,
 * rounded up to whole bytes (nbits(v + 2^k) = floor(log2(v + 2^k)) + 1: a bit length) */
static int64_t table_cost(const int64_t *f, size_t n)
{
    int64_t best = INT64_MAX;
    for (int k = 0; k < 16; k++) {
        int64_t b = 0;
        for (size_t s = 0; s < n; s++)
            b += 2 * bit_length((uint64_t)f[s] + ((uint64_t)1 << k)) - 1 - k;
        best = b < best ? b : best;
    }
    return 24 + (best + 7) / 8 * 8;
}

int tkb_enc_tables_bits(const int64_t *ghist, size_t t, size_t a, const int64_t *freq,
                        const int64_t *used, unsigned prob_bits, double *bits, double *bound,
                        int64_t *table_bits)
{
    if (prob_bits > 30)
        return TKB_ENC_USAGE;
    const double m = (double)((int64_t)1 << prob_bits);
    double total = 0.0;
    int64_t tb = 0;
    for (size_t g = 0; g < t; g++) {
        const int64_t *h = ghist + g * a, *f = freq + g * a;
        size_t n = (size_t)used[g];
        if (n > a)
            return TKB_ENC_USAGE;
        double part = 0.0;
        for (size_t s = 0; s < n; s++) {
            if (h[s] <= 0)
                continue;
            if (f[s] <= 0 || f[s] > ((int64_t)1 << prob_bits))
                return TKB_ENC_USAGE;        /* a counted symbol needs a frequency */
            part += (double)h[s] * -log2((double)f[s] / m);
        }
        total += part;
        tb += table_cost(f, n);
    }
    /* numpy: per table, a sum of <= a nonnegative terms (each a product of a log2 within
     * 4 ulps), then t sequential additions with the tables' bits; the same here: each
     * within (gamma_{a+t+2} + 2^-49) of the exact sum; the difference at most twice that */
    *bits = total;
    *bound = 2.0 * (gamma_of((double)(a + t + 4)) + 2.0 * LOG_ULPS) * (total + (double)tb);
    *table_bits = tb;
    return TKB_ENC_OK;
}

/* The whole channel grouping of Annex B.3 (table_fit.group_tables) for the candidate
 * table counts cands[0..n) in order: each candidate's groups (channels sorted by their
 * scale key, `order`, cut into t equal runs), Lloyd iterations (6) when t > 1, the
 * emptied groups dropped (dense numbering, as np.unique), the tables normalized and
 * their bits; a candidate that does not cost fewer bits than the best so far ends the
 * search.  Returns 0 with the best candidate's groups (group [d]), number of tables
 * (*t_used) and tables (freq [g][a], used[g] symbols each); 1 when some step could go
 * either way under numpy's roundings (a Lloyd step, a shaving, a comparison of bits
 * within their bounds): the caller then runs the reference's steps; < 0: usage. */
int tkb_enc_group_tables(const int64_t *hist, size_t d, size_t a, const int64_t *order,
                         const int64_t *cands, size_t n, unsigned prob_bits, int escape_slot,
                         int64_t *group, int64_t *t_used, int64_t *freq, int64_t *used)
{
    if (a == 0 || d == 0 || n == 0 || prob_bits > 30)
        return TKB_ENC_USAGE;
    size_t tmax = 0;
    for (size_t c = 0; c < n; c++) {
        if (cands[c] < 1 || (uint64_t)cands[c] > d)
            return TKB_ENC_USAGE;
        tmax = (size_t)cands[c] > tmax ? (size_t)cands[c] : tmax;
    }
    for (size_t i = 0; i < d; i++)
        if (order[i] < 0 || (uint64_t)order[i] >= d)
            return TKB_ENC_USAGE;
    compact_hist cp;
    int64_t *g = malloc(d * sizeof(int64_t));
    int64_t *map = malloc(tmax * sizeof(int64_t));
    int64_t *gh = malloc(tmax * a * sizeof(int64_t));
    int64_t *f = malloc(tmax * a * sizeof(int64_t));
    int64_t *u = malloc(tmax * sizeof(int64_t));
    uint8_t *by_numpy = malloc(tmax);
    int rc = 1;
    double best_bits = 0.0, best_bound = 0.0;
    int have = 0;
    if (compact_build(hist, d, a, &cp) || !g || !map || !gh || !f || !u || !by_numpy)
        goto done;
    for (size_t c = 0; c < n; c++) {
        const size_t t = (size_t)cands[c];
        for (size_t r = 0; r < d; r++)              /* np.arange(d) * t // d */
            g[order[r]] = (int64_t)((uint64_t)r * t / d);
        if (t > 1 && lloyd_run(d, a, &cp, g, t, 6) < 0)
            goto done;                              /* a Lloyd step numpy decides */
        for (size_t j = 0; j < t; j++)
            map[j] = -1;
        for (size_t i = 0; i < d; i++)
            map[g[i]] = 0;
        size_t tu = 0;
        for (size_t j = 0; j < t; j++)              /* the groups present, in order */
            if (map[j] == 0)
                map[j] = (int64_t)tu++;
        for (size_t i = 0; i < d; i++)
            g[i] = map[g[i]];
        memset(gh, 0, tu * a * sizeof(int64_t));    /* (sums below 2^62: compact_build) */
        for (size_t i = 0; i < d; i++) {
            int64_t *o = gh + (size_t)g[i] * a;
            for (size_t q = cp.off[i]; q < cp.off[i + 1]; q++)
                o[cp.nz[q]] += (int64_t)cp.hv[q];
        }
        for (size_t e = 0; e < tu * a; e++)
            if (gh[e] > ((int64_t)1 << 53))
                goto done;                          /* group_sum's binary64 is not exact */
        if (tkb_enc_normalize_tables(gh, tu, a, prob_bits, escape_slot, f, u, by_numpy))
            goto done;
        for (size_t j = 0; j < tu; j++)
            if (by_numpy[j])
                goto done;
        double bits, bound;
        int64_t tb;
        if (tkb_enc_tables_bits(gh, tu, a, f, u, prob_bits, &bits, &bound, &tb))
            goto done;
        bits += (double)tb;                         /* as the caller: bits + tb, + 8 d */
        if (tu > 1)
            bits += (double)(8 * d);
        if (have) {
            double diff = bits - best_bits;
            if (!(fabs(diff) > bound + best_bound))
                goto done;                          /* too close to call here */
            if (bits >= best_bits)
                break;                              /* more tables stopped paying */
        }
        have = 1;
        best_bits = bits;
        best_bound = bound;
        *t_used = (int64_t)tu;
        memcpy(group, g, d * sizeof(int64_t));
        memcpy(freq, f, tu * a * sizeof(int64_t));
        memcpy(used, u, tu * sizeof(int64_t));
    }
    rc = 0;
done:
    compact_free(&cp);
    free(g);
    free(map);
    free(gh);
    free(f);
    free(u);
    free(by_numpy);
    return rc;
}
