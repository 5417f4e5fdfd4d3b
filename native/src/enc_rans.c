/* Encoder core, clause 7.3 in reverse (Annex B): interleaved rANS encode with chunks and
 * lanes, the inverse of the decoding process of clause 7.3.2 (rans.c).
 *
 * A frame's symbols are cut into chunks of num_lanes * lane_steps symbols (the last may be
 * shorter); in a chunk of n symbols, symbol j is lane j mod num_lanes's symbol of step
 * j div num_lanes, and the a = min(num_lanes, n) active lanes share one word stream: each
 * lane's final encoder state (the decoder's initial state) as two words (low, high), then
 * the renormalisation words in the order the decoder reads them (step ascending, lane
 * ascending).  The encoder runs the steps last to first with the lanes last to first, so
 * its words are that order reversed.
 *
 * State: 32 bits, RANS_L = 2^16, 16-bit words.  Before coding a symbol of frequency f,
 * a state x >= f << (32 - prob_bits) emits its low 16 bits and shifts right by 16 (at most
 * once); then x = (x div f) << prob_bits + x mod f + cum (x div f by a reciprocal,
 * enc_sym below).
 *
 * Three coders, the same words, states and chunk_words: enc_one (plain C, lane by lane),
 * the AVX2 coder (eight lanes of a step at once) and the AVX-512 coder (sixteen); each
 * vector lane performs enc_one's integer operations, and the words of a group of lanes
 * are stored where enc_one would store them (see each coder).  The choice is made per
 * call (enc_rans_simd): $TKB_NATIVE_SIMD=scalar forces enc_one, =avx2 the AVX2 coder. */
#include "internal.h"
#include "../include/tkb_enc.h"
#include "enc_scalar.h"
#include <stdlib.h>

#define RANS_L 65536u

/* One (table, symbol) entry as the encoder uses it: the state bound of the
 * renormalisation, and x div f by a multiplication (as in published rANS coders, e.g.
 * ryg_rans): with s = ceil(log2 f) and m = ceil(2^(31+s) / f), q = (x m) >> (31 + s)
 * is x div f or x div f + 1 for every x < 2^32 (the error term x (m f - 2^(31+s)) /
 * (f 2^(31+s)) < x / 2^(31+s) <= 1 for s >= 1; exact for f = 1), so one downward step
 * on a negative remainder gives the exact quotient and remainder. */
typedef struct {
    uint64_t xmax;            /* f << (32 - prob_bits): renormalise a state at or above */
    uint64_t rcp;             /* m */
    uint32_t freq, cum, shift;
} enc_sym;

static void enc_sym_init(enc_sym *e, uint32_t f, uint32_t cum, unsigned prob_bits)
{
    unsigned s = 0;
    while (s < 32 && ((uint64_t)1 << s) < f)
        s++;
    e->freq = f;
    e->cum = cum;
    e->xmax = (uint64_t)f << (32 - prob_bits);
    e->shift = 31 + s;
    e->rcp = f ? (((uint64_t)1 << (31 + s)) + f - 1) / f : 0;
}

/* One symbol of the scalar coder (lane state *xp; the renormalisation word, if any, at
 * base[*w - 1]); TKB_ENC_NOT_IN_TABLE when the symbol has no frequency. */
static inline int enc_one(const enc_sym *tab, uint32_t base_e, uint32_t s, uint32_t alph,
                          uint32_t prob_bits, uint32_t *xp, uint16_t *base, size_t *w)
{
    if (s >= alph)
        return TKB_ENC_NOT_IN_TABLE;
    const enc_sym *e = tab + base_e + s;
    if (e->freq == 0)
        return TKB_ENC_NOT_IN_TABLE;
    uint32_t xs = *xp;
    const int renorm = (uint64_t)xs >= e->xmax;
    base[*w - 1] = (uint16_t)(xs & 0xFFFFu);
    *w -= (size_t)renorm;
    xs = renorm ? xs >> 16 : xs;
    uint32_t q = (uint32_t)(((uint64_t)xs * e->rcp) >> e->shift);
    int64_t r = (int64_t)xs - (int64_t)q * e->freq;
    const int under = r < 0;
    q -= (uint32_t)under;
    r += under ? (int64_t)e->freq : 0;
    *xp = (q << prob_bits) + (uint32_t)r + e->cum;
    return TKB_ENC_OK;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
/* The AVX2 coder: eight lanes of a full step at once (num_lanes a multiple of 8), the same
 * operations as enc_one lane by lane (32-bit states; x div f by the same reciprocal, a
 * 32 x 32 -> 64-bit product per lane, shifted by 31 + s; the same one-step correction),
 * so the same states.  The eight lanes' renormalisation words go where the scalar coder
 * puts them: lanes descending, each word below the previous, i.e. ascending lanes at
 * ascending addresses ending at base[w - 1]: the words of the renormalising lanes are
 * packed to the top of eight slots (a permutation per mask) and stored at base[w - 8 ..
 * w) (w >= the symbols not yet coded >= 8: inside the chunk's span; the slots below the
 * packed words are rewritten later or lie outside the chunk's words, as the scalar
 * coder's unkept writes).  A table entry is one 64-bit word, rcp | (f - 1) << 32 |
 * cum << 48 (rcp < 2^32, and rcp >= 2^31 when f >= 1: rcp 0 marks frequency 0), two
 * gathers of four; s = ceil(log2 f) from the exponent of binary32(f - 1) (exact below
 * 2^24).  A group with a symbol outside its table goes to enc_one (which reports it). */
typedef struct {
    uint64_t *ent;
    int32_t perm[256][8];           /* mask -> lanes to the top slots, ascending */
} enc_vec;

static void enc_vec_perm(enc_vec *v)
{
    for (int m = 0; m < 256; m++) {
        int cnt = __builtin_popcount((unsigned)m), k = 8 - cnt;
        for (int i = 0; i < 8; i++)
            v->perm[m][i] = 0;
        for (int l = 0; l < 8; l++)
            if (m & (1 << l))
                v->perm[m][k++] = l;
    }
}

__attribute__((target("avx2,popcnt"), always_inline)) static inline int enc_group_avx2(
    const enc_vec *v, const uint32_t *sym, const uint32_t *chan8, uint32_t alph,
    uint32_t prob_bits, uint32_t *x, uint16_t *base, size_t *w)
{
    __m256i sv = _mm256_loadu_si256((const __m256i *)sym);
    const __m256i am1 = _mm256_set1_epi32((int)(alph - 1));
    if (_mm256_movemask_epi8(_mm256_cmpeq_epi32(_mm256_min_epu32(sv, am1), sv)) != -1)
        return 1;                                       /* a symbol >= alph */
    __m256i idx = _mm256_add_epi32(_mm256_loadu_si256((const __m256i *)chan8), sv);
    __m256i g0 = _mm256_i32gather_epi64((const long long *)v->ent,
                                        _mm256_castsi256_si128(idx), 8);
    __m256i g1 = _mm256_i32gather_epi64((const long long *)v->ent,
                                        _mm256_extracti128_si256(idx, 1), 8);
    const __m256i odd = _mm256_setr_epi32(1, 3, 5, 7, 0, 2, 4, 6);
    const __m256i even = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    /* the 32-bit halves of the eight entries: rcp, (f - 1) | cum << 16 */
    __m256i rcp = _mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm256_castsi256_si128(_mm256_permutevar8x32_epi32(g0, even))),
        _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(g1, even)), 1);
    if (_mm256_movemask_epi8(_mm256_cmpeq_epi32(rcp, _mm256_setzero_si256())))
        return 1;                                       /* frequency 0 */
    __m256i hw = _mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm256_castsi256_si128(_mm256_permutevar8x32_epi32(g0, odd))),
        _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(g1, odd)), 1);
    __m256i fm1 = _mm256_and_si256(hw, _mm256_set1_epi32(0xFFFF));
    __m256i f = _mm256_add_epi32(fm1, _mm256_set1_epi32(1));
    __m256i cum = _mm256_srli_epi32(hw, 16);
    /* 31 + s: s = floor(log2(f - 1)) + 1 (f >= 2), 0 (f = 1) */
    __m256i ex = _mm256_srli_epi32(_mm256_castps_si256(_mm256_cvtepi32_ps(fm1)), 23);
    __m256i sh = _mm256_add_epi32(_mm256_max_epi32(_mm256_sub_epi32(ex, _mm256_set1_epi32(126)),
                                                   _mm256_setzero_si256()),
                                  _mm256_set1_epi32(31));
    __m256i xs = _mm256_loadu_si256((const __m256i *)x);
    /* renormalise x >= f << (32 - prob_bits) (2^32: never), unsigned compare */
    const __m256i sign = _mm256_set1_epi32((int)0x80000000u);
    __m256i xmaxm1 = _mm256_sub_epi32(_mm256_sll_epi32(f, _mm_cvtsi32_si128((int)(32 - prob_bits))),
                                      _mm256_set1_epi32(1));
    __m256i ren = _mm256_cmpgt_epi32(_mm256_xor_si256(xs, sign), _mm256_xor_si256(xmaxm1, sign));
    int m = _mm256_movemask_ps(_mm256_castsi256_ps(ren));
    if (m) {
        int cnt = __builtin_popcount((unsigned)m);
        __m256i lo = _mm256_and_si256(xs, _mm256_set1_epi32(0xFFFF));
        lo = _mm256_permutevar8x32_epi32(lo, _mm256_loadu_si256((const __m256i *)v->perm[m]));
        __m256i pk = _mm256_permute4x64_epi64(_mm256_packus_epi32(lo, lo), 0x08);
        _mm_storeu_si128((__m128i *)(base + *w - 8), _mm256_castsi256_si128(pk));
        *w -= (size_t)cnt;
        xs = _mm256_blendv_epi8(xs, _mm256_srli_epi32(xs, 16), ren);
    }
    /* q = (x rcp) >> (31 + s), 64-bit products: even lanes, then odd lanes */
    const __m256i lo32 = _mm256_set1_epi64x(0xFFFFFFFFLL);
    __m256i qe = _mm256_srlv_epi64(_mm256_mul_epu32(xs, rcp), _mm256_and_si256(sh, lo32));
    __m256i qo = _mm256_srlv_epi64(_mm256_mul_epu32(_mm256_srli_epi64(xs, 32),
                                                    _mm256_srli_epi64(rcp, 32)),
                                   _mm256_srli_epi64(sh, 32));
    __m256i q = _mm256_or_si256(_mm256_and_si256(qe, lo32), _mm256_slli_epi64(qo, 32));
    __m256i r = _mm256_sub_epi32(xs, _mm256_mullo_epi32(q, f));   /* |r| < 2^17: exact */
    __m256i under = _mm256_cmpgt_epi32(_mm256_setzero_si256(), r);
    q = _mm256_add_epi32(q, under);
    r = _mm256_add_epi32(r, _mm256_and_si256(under, f));
    xs = _mm256_add_epi32(_mm256_add_epi32(_mm256_sll_epi32(q, _mm_cvtsi32_si128((int)prob_bits)),
                                           r), cum);
    _mm256_storeu_si256((__m256i *)x, xs);
    return 0;
}

/* the channels of lanes l .. l + k of a step whose lane 0 has channel c0 (l + k <= num_lanes):
 * chan_base + the first one's channel, or buf when they wrap past channel c */
static inline const uint32_t *enc_chans(const uint32_t *chan_base, size_t c, size_t c0,
                                        uint32_t num_lanes, uint32_t l, uint32_t k,
                                        uint32_t *buf)
{
    size_t cg = c0 + l;                                /* < c + num_lanes */
    cg = cg < c ? cg : (c >= num_lanes ? cg - c : cg % c);
    if (cg + k <= c)
        return chan_base + cg;
    for (uint32_t h = 0; h < k; h++, cg = cg + 1 < c ? cg + 1 : 0)
        buf[h] = chan_base[cg];
    return buf;
}

/* the groups of a full step (symbols sym[0 .. num_lanes), lane 0's channel c0), the last
 * group first; returns the lanes left to the plain code (0, or those up to a group with
 * a symbol outside its table) */
__attribute__((target("avx2,popcnt")))
static uint32_t enc_step_avx2(const enc_vec *v, const uint32_t *sym, const uint32_t *chan_base,
                              size_t c, size_t c0, uint32_t num_lanes, uint32_t alph,
                              uint32_t prob_bits, uint32_t *x, uint16_t *base, size_t *w)
{
    size_t wl = *w;
    uint32_t l = num_lanes;
    for (; l >= 8; l -= 8) {
        uint32_t chan8[8];
        const uint32_t *cb = enc_chans(chan_base, c, c0, num_lanes, l - 8, 8, chan8);
        if (enc_group_avx2(v, sym + l - 8, cb, alph, prob_bits, x + l - 8, base, &wl))
            break;                                     /* the plain code reports it */
    }
    *w = wl;
    return l;
}

#define TKB_AVX512 "avx512f,avx512bw,avx512vl,avx512dq,avx512cd,avx2,popcnt"

/* The AVX-512 coder: sixteen lanes of a full step at once, enc_one's operations lane by
 * lane (clause 7.3 in reverse), so the same states and words:
 *  - the entries: the AVX2 coder's 64-bit words (rcp | (f - 1) << 32 | cum << 48), two
 *    gathers of eight under the mask of the symbols < alph (the others read nothing and
 *    give 0, as frequency 0: rcp 0 marks both), their 32-bit halves split by two
 *    two-source permutes; a group with a symbol outside its table goes to enc_one (which
 *    reports it);
 *  - 31 + s: s = ceil(log2 f) = 32 - lzcnt(f - 1) (lzcnt(0) = 32: s = 0 for f = 1, as
 *    enc_sym_init);
 *  - renormalisation: x >= f << (32 - prob_bits) <=> x >> (32 - prob_bits) >= f (both
 *    sides integers: floor(x / 2^k) >= f <=> x >= f 2^k; no overflow at f = 2^prob_bits);
 *  - the words: the renormalising lanes' low halves compressed to the bottom (ascending
 *    lanes), narrowed to 16 bits and stored under a mask at base[w - cnt .. w): the
 *    scalar coder's order (lanes descending, each word below the previous one), and only
 *    the kept slots are written (w >= the symbols not yet coded >= 16 >= cnt);
 *  - x div f: the same 32 x 32 -> 64-bit products x rcp (even lanes, then odd lanes),
 *    shifted by the same 31 + s, so the same q (x div f or x div f + 1, enc_sym);
 *    r = x - q f from the low 32 bits of q f (|r| < 2^17: exact); the same one-step
 *    correction of a negative r, as
 *    (q - 1) << prob_bits + (r + f) + cum = (q << prob_bits + r + cum) + (f - 2^prob_bits)
 *    modulo 2^32 (the state is below 2^32, so the same value). */
__attribute__((target(TKB_AVX512), always_inline)) static inline __mmask16 enc_ent_avx512(
    const enc_vec *v, const uint32_t *sym, const uint32_t *chan16, __m512i alphv,
    __m512i *rcp, __m512i *hw)
{
    __m512i sv = _mm512_loadu_si512((const void *)sym);
    __mmask16 in = _mm512_cmplt_epu32_mask(sv, alphv);
    __m512i idx = _mm512_add_epi32(_mm512_loadu_si512((const void *)chan16), sv);
    __m512i g0 = _mm512_mask_i32gather_epi64(_mm512_setzero_si512(), (__mmask8)in,
                                             _mm512_castsi512_si256(idx),
                                             (const void *)v->ent, 8);
    __m512i g1 = _mm512_mask_i32gather_epi64(_mm512_setzero_si512(), (__mmask8)(in >> 8),
                                             _mm512_extracti64x4_epi64(idx, 1),
                                             (const void *)v->ent, 8);
    /* the 32-bit halves of the sixteen entries: rcp, (f - 1) | cum << 16 */
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14,
                                           16, 18, 20, 22, 24, 26, 28, 30);
    *rcp = _mm512_permutex2var_epi32(g0, even, g1);
    *hw = _mm512_permutex2var_epi32(g0, _mm512_add_epi32(even, _mm512_set1_epi32(1)), g1);
    return (__mmask16)~_mm512_test_epi32_mask(*rcp, *rcp);  /* lanes outside the table */
}

/* the sixteen lanes' states xs coded (entries rcp, hw; kb: 32 - prob_bits, pb: prob_bits) */
__attribute__((target(TKB_AVX512), always_inline)) static inline __m512i enc_code_avx512(
    __m512i rcp, __m512i hw, __m512i xs, __m128i kb, __m128i pb, uint16_t *base, size_t *w)
{
    const __m512i lo32 = _mm512_set1_epi64(0xFFFFFFFFLL);
    __m512i fm1 = _mm512_and_si512(hw, _mm512_set1_epi32(0xFFFF));
    __m512i f = _mm512_add_epi32(fm1, _mm512_set1_epi32(1));
    __m512i sh = _mm512_sub_epi32(_mm512_set1_epi32(63), _mm512_lzcnt_epi32(fm1)); /* 31 + s */
    /* f - 2^prob_bits: what the correction of a negative r adds to the state (below) */
    __m512i fmm = _mm512_sub_epi32(f, _mm512_sll_epi32(_mm512_set1_epi32(1), pb));
    __m512i cum = _mm512_srli_epi32(hw, 16);
    /* renormalise x >= f << (32 - prob_bits): its low 16 bits to base[w - cnt .. w) */
    __mmask16 ren = _mm512_cmpge_epu32_mask(_mm512_srl_epi32(xs, kb), f);
    unsigned cnt = (unsigned)__builtin_popcount((unsigned)ren);
    _mm512_mask_cvtepi32_storeu_epi16(base + *w - cnt, (__mmask16)((1u << cnt) - 1),
                                      _mm512_maskz_compress_epi32(ren, xs));
    *w -= cnt;
    xs = _mm512_mask_srli_epi32(xs, ren, xs, 16);
    /* q = (x rcp) >> (31 + s), 64-bit products: even lanes, then odd lanes */
    __m512i qe = _mm512_srlv_epi64(_mm512_mul_epu32(xs, rcp), _mm512_and_si512(sh, lo32));
    __m512i qo = _mm512_srlv_epi64(_mm512_mul_epu32(_mm512_srli_epi64(xs, 32),
                                                    _mm512_srli_epi64(rcp, 32)),
                                   _mm512_srli_epi64(sh, 32));
    __m512i q = _mm512_mask_blend_epi32(0xAAAA, qe, _mm512_slli_epi64(qo, 32));
    __m512i r = _mm512_sub_epi32(xs, _mm512_mullo_epi32(q, f));   /* |r| < 2^17: exact */
    __m512i xn = _mm512_add_epi32(_mm512_add_epi32(_mm512_sll_epi32(q, pb), cum), r);
    return _mm512_add_epi32(xn, _mm512_and_si512(_mm512_srai_epi32(r, 31), fmm));
}

/* one group of sixteen lanes of a step (states x[0 .. 16)); 1 (nothing done) when a
 * symbol is outside its table */
__attribute__((target(TKB_AVX512), always_inline)) static inline int enc_group_avx512(
    const enc_vec *v, const uint32_t *sym, const uint32_t *chan16, uint32_t alph,
    uint32_t prob_bits, uint32_t *x, uint16_t *base, size_t *w)
{
    __m512i rcp, hw;
    if (enc_ent_avx512(v, sym, chan16, _mm512_set1_epi32((int)alph), &rcp, &hw))
        return 1;
    __m512i xs = enc_code_avx512(rcp, hw, _mm512_loadu_si512((const void *)x),
                                 _mm_cvtsi32_si128((int)(32 - prob_bits)),
                                 _mm_cvtsi32_si128((int)prob_bits), base, w);
    _mm512_storeu_si512((void *)x, xs);
    return 0;
}

/* enc_step_avx2 with groups of sixteen lanes (the last group first), then a last group of
 * eight lanes (num_lanes = 8 mod 16) by the AVX2 coder: the lanes in the same order */
__attribute__((target(TKB_AVX512)))
static uint32_t enc_step_avx512(const enc_vec *v, const uint32_t *sym,
                                const uint32_t *chan_base, size_t c, size_t c0,
                                uint32_t num_lanes, uint32_t alph, uint32_t prob_bits,
                                uint32_t *x, uint16_t *base, size_t *w)
{
    size_t wl = *w;
    uint32_t l = num_lanes;
    uint32_t chan[16];
    for (; l >= 16; l -= 16) {
        const uint32_t *cb = enc_chans(chan_base, c, c0, num_lanes, l - 16, 16, chan);
        if (enc_group_avx512(v, sym + l - 16, cb, alph, prob_bits, x + l - 16, base, &wl))
            goto out;                                  /* the plain code reports it */
    }
    if (l == 8) {
        const uint32_t *cb = enc_chans(chan_base, c, c0, num_lanes, 0, 8, chan);
        if (!enc_group_avx2(v, sym, cb, alph, prob_bits, x, base, &wl))
            l = 0;
    }
out:
    *w = wl;
    return l;
}

/* Steps t - 1 .. 0 of a chunk (all full: only a chunk's last step can be partial) with
 * num_lanes = 16 G, G <= 4: the states stay in registers from step to step (x[] read
 * first, written last), each step as enc_step_avx512 (its groups, the last first); the
 * entries of all the step's groups are read before any is coded, so that a step with a
 * symbol outside its table is left as it was to enc_step_avx512 and enc_one (which
 * report it).  *c0: lane 0's channel of step t - 1, on return that of the first step not
 * coded; returns the steps not coded (0: all). */
__attribute__((target(TKB_AVX512), always_inline)) static inline uint64_t enc_run_avx512_g(
    const int G, const enc_vec *v, const uint32_t *sym, const uint32_t *chan_base, size_t c,
    size_t *c0p, uint64_t t, uint32_t alph, uint32_t prob_bits, uint32_t *x,
    uint16_t *base, size_t *w)
{
    const uint32_t num_lanes = 16u * (uint32_t)G;
    const size_t dec = (size_t)(num_lanes % c);
    const __m512i alphv = _mm512_set1_epi32((int)alph);
    const __m128i kb = _mm_cvtsi32_si128((int)(32 - prob_bits));
    const __m128i pb = _mm_cvtsi32_si128((int)prob_bits);
    __m512i xv[4], rcp[4], hw[4];
    uint32_t chan[4][16];
    size_t c0 = *c0p, wl = *w;
#pragma GCC unroll 4
    for (int g = 0; g < G; g++)
        xv[g] = _mm512_loadu_si512((const void *)(x + 16 * g));
    for (; t > 0; t--, c0 = c0 >= dec ? c0 - dec : c0 + c - dec) {
        const uint32_t *st = sym + (t - 1) * num_lanes;
        __mmask16 bad = 0;
#pragma GCC unroll 4
        for (int g = 0; g < G; g++)
            bad |= enc_ent_avx512(v, st + 16 * g,
                                  enc_chans(chan_base, c, c0, num_lanes, 16u * (uint32_t)g, 16,
                                            chan[g]), alphv, &rcp[g], &hw[g]);
        if (bad)
            break;
#pragma GCC unroll 4
        for (int g = G - 1; g >= 0; g--)
            xv[g] = enc_code_avx512(rcp[g], hw[g], xv[g], kb, pb, base, &wl);
    }
#pragma GCC unroll 4
    for (int g = 0; g < G; g++)
        _mm512_storeu_si512((void *)(x + 16 * g), xv[g]);
    *c0p = c0;
    *w = wl;
    return t;
}

/* enc_run_avx512_g for num_lanes 16, 32, 48, 64; other lane counts: every step left */
__attribute__((target(TKB_AVX512)))
static uint64_t enc_run_avx512(const enc_vec *v, const uint32_t *sym, const uint32_t *chan_base,
                               size_t c, size_t *c0, uint32_t num_lanes, uint64_t t,
                               uint32_t alph, uint32_t prob_bits, uint32_t *x, uint16_t *base,
                               size_t *w)
{
    switch (num_lanes) {
    case 16: return enc_run_avx512_g(1, v, sym, chan_base, c, c0, t, alph, prob_bits, x, base, w);
    case 32: return enc_run_avx512_g(2, v, sym, chan_base, c, c0, t, alph, prob_bits, x, base, w);
    case 48: return enc_run_avx512_g(3, v, sym, chan_base, c, c0, t, alph, prob_bits, x, base, w);
    case 64: return enc_run_avx512_g(4, v, sym, chan_base, c, c0, t, alph, prob_bits, x, base, w);
    default: return t;
    }
}

/* the coder of this call: 2 AVX-512 (sixteen lanes), 1 AVX2 (eight lanes), 0 plain C;
 * the CPU probed once, $TKB_NATIVE_SIMD read on every call ("scalar": plain C, "avx2":
 * not AVX-512).  All three give the same words, states and chunk_words. */
static int enc_rans_simd(void)
{
    if (!tkb_enc_use_avx2())                         /* "scalar", or no AVX2 */
        return 0;
    return tkb_cpu_avx512() ? 2 : 1;                 /* "avx2": not AVX-512 */
}
#endif

const char *tkb_enc_rans_simd_name(void)
{
#if defined(__x86_64__) && defined(__GNUC__)
    static const char *const names[3] = {"scalar", "avx2", "avx512"};
    return names[enc_rans_simd()];
#else
    return "scalar";
#endif
}

int tkb_enc_rans(const uint32_t *sym, size_t n, size_t c, const uint32_t *chan_base,
                 const uint32_t *freq, const uint32_t *cum, uint32_t alph,
                 uint32_t num_lanes, uint32_t lane_steps, uint32_t prob_bits,
                 uint16_t *words, size_t *num_words, uint32_t *chunk_words)
{
    *num_words = 0;
    if (n == 0)
        return TKB_ENC_OK;
    if (num_lanes == 0 || lane_steps == 0 || prob_bits < 1 || prob_bits > 16 || c == 0 ||
        alph == 0 || num_lanes > 4096)
        return TKB_ENC_USAGE;
    /* the entries the channels reach: chan_base[j] + 0 .. alph - 1 */
    size_t entries = 0;
    for (size_t j = 0; j < c; j++)
        entries = (size_t)chan_base[j] + alph > entries ? (size_t)chan_base[j] + alph : entries;
    enc_sym *tab = malloc(entries * sizeof(enc_sym));
    if (!tab)
        return TKB_ENC_USAGE;
    for (size_t e = 0; e < entries; e++) {
        if (freq[e] > (1u << prob_bits)) {
            free(tab);
            return TKB_ENC_USAGE;
        }
        enc_sym_init(tab + e, freq[e], cum[e], prob_bits);
    }
    const uint64_t chunk = (uint64_t)num_lanes * lane_steps;
    const uint64_t chunks = (n + chunk - 1) / chunk;
    uint32_t x[4096];
    size_t out = 0;
    int rc = TKB_ENC_OK;
#if defined(__x86_64__) && defined(__GNUC__)
    enc_vec *vec = NULL;
    const int simd = num_lanes % 8 == 0 && c <= 0x7FFFFFFF && entries <= 0x7FFFFFFF
                     ? enc_rans_simd() : 0;
    if (simd) {
        vec = malloc(sizeof(enc_vec));
        uint64_t *ent = malloc(entries * sizeof(uint64_t));
        if (!vec || !ent) {
            free(vec);
            free(ent);
            vec = NULL;
        } else {
            vec->ent = ent;
            int wide = 0;                            /* a cum the entry cannot hold */
            for (size_t e = 0; e < entries; e++) {   /* rcp < 2^32 (see enc_sym) */
                ent[e] = tab[e].freq ? (tab[e].rcp | (uint64_t)(tab[e].freq - 1) << 32 |
                                        (uint64_t)tab[e].cum << 48) : 0;
                wide |= tab[e].freq && tab[e].cum > 0xFFFFu;   /* not a table of 7.3 */
            }
            if (wide) {
                free(ent);
                free(vec);
                vec = NULL;
            } else if (simd == 1 || num_lanes % 16) {  /* the eight-lane coder runs */
                enc_vec_perm(vec);
            }
        }
    }
#endif
    for (uint64_t ch = 0; ch < chunks && rc == TKB_ENC_OK; ch++) {
        const uint64_t s0 = ch * chunk;
        const uint64_t cn = (n - s0 < chunk) ? n - s0 : chunk;        /* symbols */
        const uint32_t active = cn < num_lanes ? (uint32_t)cn : num_lanes;
        const uint64_t steps = (cn + num_lanes - 1) / num_lanes;
        for (uint32_t l = 0; l < active; l++)
            x[l] = RANS_L;
        /* renormalisation words go after the 2 * active state words, written backwards
         * from the end of the chunk's span (at most one word per symbol, so base[w - 1]
         * lies in the chunk's span, state words included, before every symbol: it is
         * written whether or not the symbol emits a word, and kept only if it does) */
        uint16_t *base = words + out + 2 * (size_t)active;
        size_t w = cn;                       /* next free slot, counting down */
        /* the channel of each step's lane 0, stepping down without a division */
        const size_t dec = (size_t)(num_lanes % c);
        size_t c0 = (size_t)((s0 + (steps - 1) * num_lanes) % c);
        for (uint64_t t = steps; t-- > 0 && rc == TKB_ENC_OK;
             c0 = c0 >= dec ? c0 - dec : c0 + c - dec) {
            uint64_t first = s0 + t * num_lanes;
            uint32_t lanes = (uint32_t)((cn - t * num_lanes) < num_lanes
                                        ? (cn - t * num_lanes) : num_lanes);
            uint32_t l = lanes;
#if defined(__x86_64__) && defined(__GNUC__)
            /* a full step: groups of sixteen or eight lanes, the last group first (as the
             * lanes) */
            if (vec && lanes == num_lanes) {
                if (simd == 2 && num_lanes % 16 == 0 && num_lanes <= 64) {
                    /* steps t .. 0 (all full), the states in registers */
                    uint64_t left = enc_run_avx512(vec, sym + s0, chan_base, c, &c0, num_lanes,
                                                   t + 1, alph, prob_bits, x, base, &w);
                    if (left == 0)
                        break;
                    t = left - 1;                      /* a step the plain code reports */
                    first = s0 + t * num_lanes;
                }
                l = (simd == 2 ? enc_step_avx512 : enc_step_avx2)(
                    vec, sym + first, chan_base, c, c0, num_lanes, alph, prob_bits, x, base,
                    &w);
            }
#endif
            size_t ci = l ? (size_t)((first + l - 1) % c) : 0;  /* channel of the last */
            for (; l-- > 0; ci = ci ? ci - 1 : c - 1) {
                rc = enc_one(tab, chan_base[ci], sym[first + l], alph, prob_bits, x + l,
                             base, &w);
                if (rc != TKB_ENC_OK)
                    break;
            }
        }
        if (rc != TKB_ENC_OK)
            break;
        /* the words now sit at base[w .. cn): move them next to the states */
        size_t nw = cn - w;
        if (w)
            memmove(base, base + w, nw * sizeof(uint16_t));
        uint16_t *st = words + out;
        for (uint32_t l = 0; l < active; l++) {
            st[2 * l] = (uint16_t)(x[l] & 0xFFFFu);
            st[2 * l + 1] = (uint16_t)(x[l] >> 16);
        }
        chunk_words[ch] = 2 * active + (uint32_t)nw;
        out += 2 * (size_t)active + nw;
    }
    free(tab);
#if defined(__x86_64__) && defined(__GNUC__)
    if (vec) {
        free(vec->ent);
        free(vec);
    }
#endif
    if (rc != TKB_ENC_OK)
        return rc;
    *num_words = out;
    return TKB_ENC_OK;
}
