/* Encoder core, Annex B.3 (informative): the table grouping of the reference encoder's
 * track fit (reference/encoder.py: _group_tables, FitKernels.lloyd_groups and
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
 *     the same stable order), except where it has to take frequency away (its costs use a
 *     logarithm): such tables are left to numpy.
 *   - tkb_enc_tables_bits: the bits of the coded symbols under the tables (a binary64 sum
 *     with a bound, as above) and the tables' own bits (integers, exact).
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

long tkb_enc_lloyd(const int64_t *hist, size_t d, size_t a, int64_t *group, size_t t,
                   long iters)
{
    if (t == 0 || a == 0)
        return -1;
    for (size_t i = 0; i < d; i++)
        if (group[i] < 0 || (uint64_t)group[i] >= t)
            return -1;
    int64_t *gh = malloc(t * a * sizeof(int64_t));
    double *nlq = malloc(t * a * sizeof(double));       /* [a][t]: symbol-major */
    double *cost = malloc(t * sizeof(double));
    int64_t *next = malloc((d ? d : 1) * sizeof(int64_t));
    /* each channel's nonzero counts (as binary64) and their symbols, once */
    size_t *off = malloc((d + 1) * sizeof(size_t));
    double *hv = malloc((d * a > 0 ? d * a : 1) * sizeof(double));
    uint32_t *nz = malloc((d * a > 0 ? d * a : 1) * sizeof(uint32_t));
    double *hsum = malloc((d ? d : 1) * sizeof(double));
    long rc = 0;
    if (!gh || !nlq || !cost || !next || !off || !hv || !nz || !hsum) {
        rc = -1;
        goto done;
    }
    off[0] = 0;
    for (size_t i = 0; i < d; i++) {
        const int64_t *h = hist + i * a;
        size_t m = off[i];
        double sum = 0.0;
        for (size_t s = 0; s < a; s++) {
            if (h[s] < 0 || h[s] > ((int64_t)1 << 53)) {
                rc = -1;
                goto done;
            }
            nz[m] = (uint32_t)s;                 /* branch-free compaction */
            hv[m] = (double)h[s];
            sum += hv[m];
            m += h[s] != 0;                     /* numpy adds the zeros' +0: same sums */
        }
        off[i + 1] = m;
        hsum[i] = sum;
    }
    /* numpy's q = (ghist + 1e-3) / row sum: the row sums differ by at most 2.01 gamma_a
     * relative (both orders, positive terms), the quotients by rho = that + 2u, their
     * log2 by 1.5 rho (absolute); each log2 within 4 ulps */
    const double rho = 2.01 * gamma_of((double)a) + 2.0 * U64;
    const double delta1 = 1.5 * rho;
    const double gcost = gamma_of((double)a + 2);
    const tkb_enc_costs_fn costs = tkb_enc_channel_costs();
    for (long it = 0; it < iters; it++) {
        memset(gh, 0, t * a * sizeof(int64_t));
        for (size_t i = 0; i < d; i++) {
            const int64_t *h = hist + i * a;
            int64_t *o = gh + (size_t)group[i] * a;
            for (size_t s = 0; s < a; s++)
                o[s] += h[s];
        }
        for (size_t g = 0; g < t; g++) {
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
        for (size_t i = 0; i < d; i++) {
            size_t bi = 0;
            if (hsum[i] > 0.0) {             /* else every cost is 0: numpy's first */
                costs(hv + off[i], nz + off[i], off[i + 1] - off[i], nlq, t, cost);
                double best = cost[0], second = __builtin_inf();
                for (size_t j = 1; j < t; j++) {
                    double c = cost[j];
                    if (c < best) {
                        second = best;
                        best = c;
                        bi = j;
                    } else if (c < second) {
                        second = c;
                    }
                }
                if (!(best >= 0.0) || !(second <= 1e300 || t == 1)) {
                    rc = -1 - it;            /* not finite: numpy decides */
                    goto done;
                }
                /* |cost_numpy - cost_here| <= (3 gamma + 2^-47) cost + 2 H delta1 */
                double bound = (3.0 * gcost + 8.0 * LOG_ULPS) * second + 2.0 * hsum[i] * delta1;
                if (t > 1 && !(second - best > 2.0 * bound)) {
                    rc = -1 - it;            /* this step is numpy's */
                    goto done;
                }
            }
            next[i] = (int64_t)bi;
            moved |= next[i] != group[i];
        }
        rc = it + 1;
        if (!moved)
            break;
        memcpy(group, next, d * sizeof(int64_t));
    }
done:
    free(gh);
    free(nlq);
    free(cost);
    free(next);
    free(off);
    free(hv);
    free(nz);
    free(hsum);
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
    if (dd < 0)
        return 1;                            /* the logarithmic shaving: numpy's */
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
