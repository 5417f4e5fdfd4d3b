/* Interleaved rANS decoding (spec clauses 7.3.1 and 7.3.2).
 *
 * Chunk c holds n_c symbols; symbol j of the chunk belongs to lane j mod num_lanes and is
 * decoded at step j div num_lanes.  The chunk's words are the initial states of its
 * a_c active lanes (two words each, low word first), then the renormalisation words in
 * the order the decoder reads them: step by step, lane by lane.  Every check of clause
 * 7.3.2 is a TKBEntropyError.
 *
 * Two implementations give the same symbols and the same errors: the plain one below
 * (decode_chunk_scalar) and, when the CPU has AVX2, decode_chunk_avx2 (eight lanes at a
 * time: the lanes that renormalise take their words by an exclusive prefix sum over the
 * "needs a word" mask, clause 7.3.2 note 1). */
#include "internal.h"

#define RANS_L 65536u

static inline uint32_t word(const uint8_t *w, uint64_t i)
{
    return (uint32_t)w[2 * i] | (uint32_t)w[2 * i + 1] << 8;
}

static inline uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int entropy(tkb_error *err, const tkb_frame *f, uint64_t c, const char *what)
{
    return tkb_fail(err, TKB_ENTROPY_ERROR, "7.3.2", "rans_data",
                    f->base + (int64_t)(f->rans_data - f->payload), "chunk %llu: %s",
                    (unsigned long long)c, what);
}

/* The plain decoder: decode_chunk of clause 7.3.2, lane by lane.  Words are read
 * branch-free: a lane that needs a word past the chunk's words reads a clamped index and
 * the chunk fails the word count check (p != chunk_words) at its end. */
static int decode_chunk_scalar(const tkb_frame *f, uint64_t c, const uint8_t *w, uint32_t cw,
                               uint16_t *sym, tkb_error *err)
{
    const tkb_tps *t = f->tps;
    const tkb_lookup *L = f->lookup;
    const uint32_t *base = t->chan_base;
    const uint32_t lanes = t->num_lanes, pb = t->prob_bits, mask = (1u << pb) - 1;
    const uint64_t first = c * t->chunk_size;
    const uint64_t rem = f->num_symbols - first;
    const uint32_t n = rem < t->chunk_size ? (uint32_t)rem : t->chunk_size;
    const uint32_t a = n < lanes ? n : lanes;
    uint32_t x[4096];
    if (cw < 2 * a)
        return entropy(err, f, c, "chunk_words is less than twice the active lanes");
    for (uint32_t l = 0; l < a; l++) {
        x[l] = word(w, 2 * l) | word(w, 2 * l + 1) << 16;
        if (x[l] < RANS_L)
            return entropy(err, f, c, "an initial state is less than RANS_L");
    }
    uint64_t p = 2 * a;
    const uint32_t nc = t->num_coded;
    uint32_t ch = (uint32_t)(first % nc);     /* channel of the chunk's symbol 0 */
    uint16_t *out = sym + first;
    uint32_t j = 0;
    const uint32_t last = cw - 1;
    while (j < n) {
        uint32_t m = n - j < lanes ? n - j : lanes;     /* lanes active at this step */
        for (uint32_t l = 0; l < m; l++, j++) {
            uint32_t y = tkb_decode_symbol(L, pb, base[ch] | (x[l] & mask), x[l], &out[j]);
            uint32_t need = y < RANS_L;
            uint32_t wv = word(w, p < last ? p : last);
            x[l] = need ? (y << 16) | wv : y;
            p += need;
            if (++ch == nc)
                ch = 0;
        }
    }
    if (p != cw)
        return entropy(err, f, c, p > cw ? "the chunk needs more words than chunk_words"
                                         : "words are left over");
    for (uint32_t l = 0; l < a; l++)
        if (x[l] != RANS_L)
            return entropy(err, f, c, "a lane does not end in state RANS_L");
    return 0;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

/* permutation of the words to the lanes that need one: entry m lists, for each lane,
 * the index of its word (number of needing lanes below it) */
static int32_t PERM[256][8];
void tkb_rans_init(void)
{
    for (int m = 0; m < 256; m++) {
        int k = 0;
        for (int l = 0; l < 8; l++) {
            PERM[m][l] = (m >> l) & 1 ? k : 0;
            k += (m >> l) & 1;
        }
    }
}

/* One decoding step of eight lanes (clause 7.3.2): decode_symbol for each (clause 7.3.1),
 * then the lanes whose state fell below RANS_L take the next words in lane order (the
 * exclusive prefix sum of the mask, a permutation from PERM).  Branch-free: the eight
 * words at p are always loaded (the caller guarantees p + 8 <= chunk_words). */
#define TKB_AVX2 __attribute__((target("avx2,bmi2,popcnt"), always_inline)) static inline

TKB_AVX2 __m256i step8(__m256i vx, __m256i vb, const uint32_t *slot, const uint16_t *ssym,
                       const uint32_t *packed, uint32_t pb, const uint8_t *w, uint64_t *p,
                       uint16_t *out)
{
    const __m256i vmask = _mm256_set1_epi32((int)((1u << pb) - 1));
    const __m256i lo16 = _mm256_set1_epi32(0xFFFF);
    const __m128i vpb = _mm_cvtsi32_si128((int)pb);
    __m256i idx = _mm256_or_si256(vb, _mm256_and_si256(vx, vmask));
    __m256i f, bias, sv;
    if (packed) {
        __m256i e = _mm256_i32gather_epi32((const int *)packed, idx, 4);
        bias = _mm256_and_si256(e, vmask);
        f = _mm256_add_epi32(_mm256_and_si256(_mm256_srl_epi32(e, vpb), vmask),
                             _mm256_set1_epi32(1));
        sv = _mm256_srl_epi32(e, _mm_cvtsi32_si128((int)(2 * pb)));
    } else {
        __m256i e = _mm256_i32gather_epi32((const int *)slot, idx, 4);
        sv = _mm256_and_si256(_mm256_i32gather_epi32((const int *)ssym, idx, 2), lo16);
        f = _mm256_srli_epi32(e, 16);
        bias = _mm256_and_si256(e, lo16);
    }
    __m128i s16 = _mm_packus_epi32(_mm256_castsi256_si128(sv), _mm256_extracti128_si256(sv, 1));
    _mm_storeu_si128((__m128i *)out, s16);
    __m256i y = _mm256_add_epi32(_mm256_mullo_epi32(f, _mm256_srl_epi32(vx, vpb)), bias);
    __m256i need = _mm256_cmpeq_epi32(_mm256_srli_epi32(y, 16), _mm256_setzero_si256());
    unsigned m = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(need));
    __m256i words = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(w + 2 * *p)));
    words = _mm256_permutevar8x32_epi32(words, _mm256_load_si256((const __m256i *)PERM[m]));
    *p += (unsigned)__builtin_popcount(m);
    return _mm256_blendv_epi8(y, _mm256_or_si256(_mm256_slli_epi32(y, 16), words), need);
}

__attribute__((target("avx2,bmi2,popcnt")))
static int decode_chunk_avx2(const tkb_frame *f, uint64_t c, const uint8_t *w, uint32_t cw,
                             uint16_t *sym, tkb_error *err)
{
    const tkb_tps *t = f->tps;
    const tkb_lookup *L = f->lookup;
    const uint32_t *slot = L->slot;
    const uint16_t *ssym = L->sym;
    const uint32_t *packed = L->packed;
    const uint32_t *base = t->chan_base;
    const uint32_t lanes = t->num_lanes, pb = t->prob_bits, mask = (1u << pb) - 1;
    const uint64_t first = c * t->chunk_size;
    const uint64_t rem = f->num_symbols - first;
    const uint32_t n = rem < t->chunk_size ? (uint32_t)rem : t->chunk_size;
    const uint32_t a = n < lanes ? n : lanes;
    uint32_t x[4096] __attribute__((aligned(32)));
    if (cw < 2 * a)
        return entropy(err, f, c, "chunk_words is less than twice the active lanes");
    for (uint32_t l = 0; l < a; l++) {
        x[l] = word(w, 2 * l) | word(w, 2 * l + 1) << 16;
        if (x[l] < RANS_L)
            return entropy(err, f, c, "an initial state is less than RANS_L");
    }
    uint64_t p = 2 * a;
    const uint32_t nc = t->num_coded;
    uint32_t ch = (uint32_t)(first % nc);
    uint16_t *out = sym + first;
    uint32_t j = 0;
    const uint32_t last = cw - 1;
    const uint32_t groups = lanes / 8;
    const uint32_t steps_full = n / lanes;
    /* the common layout: every lane a multiple of 8, channels a multiple of the lanes,
     * so the eight lanes of a group have consecutive channels without wrapping */
    const int aligned = lanes % 8 == 0 && nc % 8 == 0;
    uint32_t s = 0;
    for (; s < steps_full; s++) {
        /* eight words per group at most: stay off the vector load near the end */
        if (p + 8 * (uint64_t)groups + 8 > cw)
            break;
        for (uint32_t g = 0; g < groups; g++, j += 8) {
            __m256i vb;
            if (aligned) {
                vb = _mm256_loadu_si256((const __m256i *)(base + ch));
                ch += 8;
                if (ch == nc)
                    ch = 0;
            } else {
                uint32_t tmp[8];
                for (int l = 0; l < 8; l++) {
                    tmp[l] = base[ch];
                    if (++ch == nc)
                        ch = 0;
                }
                vb = _mm256_loadu_si256((const __m256i *)tmp);
            }
            __m256i vx = _mm256_load_si256((const __m256i *)(x + 8 * g));
            vx = packed ? step8(vx, vb, slot, ssym, packed, pb, w, &p, out + j)
                        : step8(vx, vb, slot, ssym, NULL, pb, w, &p, out + j);
            _mm256_store_si256((__m256i *)(x + 8 * g), vx);
        }
        for (uint32_t l = groups * 8; l < lanes; l++, j++) {
            uint32_t y = tkb_decode_symbol(L, pb, base[ch] | (x[l] & mask), x[l], &out[j]);
            uint32_t need = y < RANS_L;
            uint32_t wv = word(w, p < last ? p : last);
            x[l] = need ? (y << 16) | wv : y;
            p += need;
            if (++ch == nc)
                ch = 0;
        }
    }
    while (j < n) {     /* the steps near the end of the words, and the last, partial step */
        uint32_t m = n - j < lanes ? n - j : lanes;
        for (uint32_t l = 0; l < m; l++, j++) {
            uint32_t y = tkb_decode_symbol(L, pb, base[ch] | (x[l] & mask), x[l], &out[j]);
            uint32_t need = y < RANS_L;
            uint32_t wv = word(w, p < last ? p : last);
            x[l] = need ? (y << 16) | wv : y;
            p += need;
            if (++ch == nc)
                ch = 0;
        }
    }
    if (p != cw)
        return entropy(err, f, c, p > cw ? "the chunk needs more words than chunk_words"
                                         : "words are left over");
    for (uint32_t l = 0; l < a; l++)
        if (x[l] != RANS_L)
            return entropy(err, f, c, "a lane does not end in state RANS_L");
    return 0;
}
#else
void tkb_rans_init(void) {}
#endif

int tkb_rans_decode_chunks_at(const tkb_frame *f, uint64_t c0, uint64_t c1, uint64_t *woffp,
                              uint16_t *sym, int simd, tkb_error *err)
{
    uint64_t woff = *woffp;
    for (uint64_t c = c0; c < c1; c++) {
        uint32_t cw = le32(f->chunk_words + 4 * c);
        const uint8_t *w = f->rans_data + 2 * woff;
        int e;
#if defined(__x86_64__) && defined(__GNUC__)
        if (simd && f->tps->num_lanes >= 8)
            e = decode_chunk_avx2(f, c, w, cw, sym, err);
        else
#endif
            e = decode_chunk_scalar(f, c, w, cw, sym, err);
        TKB_UNUSED(simd);
        if (e)
            return e;
        woff += cw;
        *woffp = woff;
    }
    return 0;
}

int tkb_rans_decode_chunks(const tkb_frame *f, uint64_t c0, uint64_t c1, uint16_t *sym,
                           int simd, tkb_error *err)
{
    uint64_t woff = 0;
    for (uint64_t c = 0; c < c0; c++)
        woff += le32(f->chunk_words + 4 * c);
    return tkb_rans_decode_chunks_at(f, c0, c1, &woff, sym, simd, err);
}
