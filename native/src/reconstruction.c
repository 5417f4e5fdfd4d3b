/* Symbol mapping, prediction and reconstruction of quantized frames (spec clauses 7.4.1,
 * 7.5, 7.6.1, 7.6.2 and, for coding_mode 2, 7.6.3).
 *
 * The fast path fuses, token by token: the zigzag inverse (or the escape), the inverse
 * prediction, the range check of the level, the step code and the one binary32
 * multiplication, and the conversion to output_dtype.  Levels are checked as soon as
 * they are computed, so 32-bit arithmetic suffices (clause 7.5 note).  When anything is
 * out of range, ordered_error() recomputes the frame in 64 bits and reports the first
 * error in the order of clause 9.0 item 4: escape count (7.4.1), level range (7.5), step
 * codes (7.6.1), coefficient values (7.6.3). */
#include <stdlib.h>
#include "internal.h"

#define MAX_LEVEL ((1 << 24) - 1)

/* Table 7.6-1 */
const uint32_t TKB_STEP_MANTISSA_BITS[6] = {0x3F800000u, 0x3F8FACD6u, 0x3FA14518u,
                                            0x3FB504F3u, 0x3FCB2FF5u, 0x3FE411F0u};

/* STEP[q] = float32(STEP_MANTISSA_BITS[q mod 6] + ((q div 6) - 24) * 2^23): exact, from
 * the bit patterns (no power function, clause 7.6.1). */
float tkb_step(int q)
{
    uint32_t b = (uint32_t)((int64_t)TKB_STEP_MANTISSA_BITS[q % 6] + ((int64_t)(q / 6) - 24) * (1 << 23));
    float f;
    memcpy(&f, &b, 4);
    return f;
}

/* clause 7.6.2: binary32 -> binary16, round to nearest even, on the bit patterns */
uint16_t tkb_f32_to_f16_bits(uint32_t b)
{
    uint32_t sign = (b >> 16) & 0x8000u;
    uint32_t a = b & 0x7FFFFFFFu;
    if (a >= 0x477FF000u)
        return (uint16_t)(sign | 0x7C00u);
    if (a >= 0x38800000u) {
        uint32_t r = a - 0x38000000u;
        return (uint16_t)(sign | ((r + 0x0FFFu + ((r >> 13) & 1u)) >> 13));
    }
    if (a < 0x33000000u)
        return (uint16_t)sign;
    uint32_t e = a >> 23;
    uint32_t m = (a & 0x007FFFFFu) | 0x00800000u;
    uint32_t s = 126 - e;
    return (uint16_t)(sign | ((m + (1u << (s - 1)) - 1 + ((m >> s) & 1u)) >> s));
}

uint16_t tkb_f32_to_bf16_bits(uint32_t b)
{
    return (uint16_t)(((uint64_t)b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
}

static inline uint32_t fbits(float v)
{
    uint32_t b;
    memcpy(&b, &v, 4);
    return b;
}

static void store_row(const float *v32, size_t n, uint32_t dtype, void *out)
{
    if (dtype == TKB_FLOAT32) {
        memcpy(out, v32, n * 4);
    } else if (dtype == TKB_FLOAT16) {
        uint16_t *o = out;
        for (size_t i = 0; i < n; i++)
            o[i] = tkb_f32_to_f16_bits(fbits(v32[i]));
    } else {
        uint16_t *o = out;
        for (size_t i = 0; i < n; i++)
            o[i] = tkb_f32_to_bf16_bits(fbits(v32[i]));
    }
}

/* Clause 7.6.3 step 1: Y = lev * STEP[q] * 2^F rounded half to even, exactly.  Returns 0
 * and *y, or 1 when abs(Y) > 2^24 - 1. */
static int coefficient(int64_t lev, int q, unsigned F, int64_t *y)
{
    static const int64_t M[6] = {0x800000, 0x8FACD6, 0xA14518, 0xB504F3, 0xCB2FF5, 0xE411F0};
    int64_t p = lev * M[q % 6];       /* abs(p) < 2^48 */
    int s = 47 - (int)F - q / 6;
    uint64_t a = (uint64_t)(p < 0 ? -p : p), m;
    if (s <= 0) {
        if (a > ((uint64_t)MAX_LEVEL >> -s))
            return 1;
        m = a << -s;
    } else {
        m = (a + ((uint64_t)1 << (s - 1)) - 1 + ((a >> s) & 1u)) >> s;
        if (m > MAX_LEVEL)
            return 1;
    }
    *y = p < 0 ? -(int64_t)m : (int64_t)m;
    return 0;
}

/* ---- the frame's context --------------------------------------------------------- */

typedef struct qctx {
    const tkb_frame *f;
    const tkb_tps *t;
    const uint16_t *sym;
    uint32_t K, C, D, start;
    const uint8_t *esc_data;
} qctx;

static inline int32_t tsd(const tkb_frame *f, uint32_t k)
{
    if (!f->token_scale_present)
        return 0;
    uint8_t b = f->token_step_delta[k];
    return b >= 128 ? (int32_t)b - 256 : (int32_t)b;
}

static inline int is_seq(const qctx *q, uint32_t k) { return q->f->pos[k] >= q->start; }

/* ---- the ordered, 64-bit process (errors) ---------------------------------------- */

static int ordered_error(const qctx *q, tkb_error *err)
{
    const tkb_frame *f = q->f;
    const tkb_tps *t = q->t;
    uint32_t K = q->K, C = q->C;
    int64_t off = f->base + (int64_t)(f->rans_data - f->payload);
    /* 7.4.1: the number of escape symbols */
    uint64_t count = 0;
    for (uint64_t i = 0; i < (uint64_t)K * C; i++)
        count += q->sym[i] == t->esc[i % C];
    if (count != f->num_escapes)
        return tkb_fail(err, TKB_ENTROPY_ERROR, "7.4.1", "num_escapes", off,
                        "%llu escape symbols decoded, num_escapes is %u",
                        (unsigned long long)count, f->num_escapes);
    /* 7.5: every level, computed exactly */
    int64_t *prev = calloc(C, sizeof *prev);
    uint32_t W = t->grid_width;
    int64_t *col = NULL, *tag = NULL;
    int64_t *lev = malloc(C * sizeof *lev);
    if (t->predictor == 2) {
        col = calloc((size_t)W * C + 1, sizeof *col);
        tag = malloc(((size_t)W + 1) * sizeof *tag);
    }
    int bad_level = 0, rc = 0;
    if (!prev || !lev || (t->predictor == 2 && (!col || !tag))) {
        rc = tkb_fail(err, TKB_NOMEM, "7.5", "rans_data", -1, "out of memory");
        goto out;
    }
    if (tag)
        for (uint32_t x = 0; x < W; x++)
            tag[x] = -2;
    uint64_t e = 0;
    for (uint32_t k = 0; k < K && !bad_level; k++) {
        for (uint32_t c = 0; c < C; c++) {
            uint32_t s = q->sym[(uint64_t)k * C + c];
            uint64_t u = s;
            if (s == t->esc[c])
                u = s + (uint64_t)tkb_packed_get(q->esc_data, e++, f->escape_bits);
            lev[c] = (u & 1) ? -(int64_t)((u + 1) >> 1) : (int64_t)(u >> 1);
        }
        if (is_seq(q, k)) {
            if (t->predictor == 1) {
                for (uint32_t c = 0; c < C; c++)
                    prev[c] = lev[c] += prev[c];
            } else if (t->predictor == 2) {
                uint32_t g = f->pos[k] - q->start, y = g / W, x = g % W;
                if (tag[x] == (int64_t)y - 1)
                    for (uint32_t c = 0; c < C; c++)
                        lev[c] += col[(size_t)x * C + c];
                memcpy(col + (size_t)x * C, lev, C * sizeof *lev);
                tag[x] = y;
            }
        }
        for (uint32_t c = 0; c < C; c++)
            if (lev[c] > MAX_LEVEL || lev[c] < -MAX_LEVEL)
                bad_level = 1;
    }
    if (bad_level) {
        rc = tkb_fail(err, TKB_VALUE_ERROR, "7.5", "rans_data", off,
                      "a quantization level exceeds 2^24 - 1 in magnitude");
        goto out;
    }
    /* 7.6.1: the step codes */
    for (uint32_t k = 0; k < K; k++)
        for (uint32_t c = 0; c < (t->per_channel_steps ? C : 1); c++) {
            int64_t code = (int64_t)t->step_code[c] + f->frame_step_delta + tsd(f, k);
            if (code < 0 || code > 255) {
                rc = tkb_fail(err, TKB_VALUE_ERROR, "7.6.1",
                              f->token_scale_present ? "token_step_delta" : "frame_step_delta",
                              off, "a step code is outside 0..255");
                goto out;
            }
        }
    /* 7.6.3: the coefficient values (levels recomputed: every level is now in range) */
    if (t->coding_mode == 2) {
        qctx q2 = *q;
        TKB_UNUSED(q2);
        memset(prev, 0, C * sizeof *prev);
        if (tag)
            for (uint32_t x = 0; x < W; x++)
                tag[x] = -2;
        e = 0;
        for (uint32_t k = 0; k < K; k++) {
            for (uint32_t c = 0; c < C; c++) {
                uint32_t s = q->sym[(uint64_t)k * C + c];
                uint64_t u = s;
                if (s == t->esc[c])
                    u = s + (uint64_t)tkb_packed_get(q->esc_data, e++, f->escape_bits);
                lev[c] = (u & 1) ? -(int64_t)((u + 1) >> 1) : (int64_t)(u >> 1);
            }
            if (is_seq(q, k)) {
                if (t->predictor == 1) {
                    for (uint32_t c = 0; c < C; c++)
                        prev[c] = lev[c] += prev[c];
                } else if (t->predictor == 2) {
                    uint32_t g = f->pos[k] - q->start, y = g / W, x = g % W;
                    if (tag[x] == (int64_t)y - 1)
                        for (uint32_t c = 0; c < C; c++)
                            lev[c] += col[(size_t)x * C + c];
                    memcpy(col + (size_t)x * C, lev, C * sizeof *lev);
                    tag[x] = y;
                }
            }
            for (uint32_t c = 0; c < C; c++) {
                int code = t->step_code[t->per_channel_steps ? c : 0] + f->frame_step_delta + tsd(f, k);
                int64_t y;
                if (coefficient(lev[c], code, t->transform->coeff_frac_bits, &y)) {
                    rc = tkb_fail(err, TKB_VALUE_ERROR, "7.6.3", "rans_data", off,
                                  "a transform coefficient exceeds 2^24 - 1 in magnitude");
                    goto out;
                }
            }
        }
    }
    rc = tkb_fail(err, TKB_USAGE, "7", "rans_data", off,
                  "internal error: the fast path found an anomaly the ordered process did not");
out:
    free(prev);
    free(lev);
    free(col);
    free(tag);
    return rc;
}

/* ---- the fast path ---------------------------------------------------------------- */

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
/* 16 bytes out: a streaming (non-temporal) store when nt (p is then 16-byte aligned) */
__attribute__((target("avx2,f16c"), always_inline))
static inline void st16(void *p, __m128i v, int nt)
{
    if (nt)
        _mm_stream_si128((__m128i *)p, v);
    else
        _mm_storeu_si128((__m128i *)p, v);
}
/* One row without escapes: residuals from symbols, plus the prediction row (NULL: 0),
 * range check, levels out; then v = binary32(lev) * step, converted to dtype.
 * Returns nonzero when a level is out of range. */
__attribute__((target("avx2,f16c")))
static int row_avx2(const qctx *q, const uint16_t *s, const int32_t *pred, int32_t *lev,
                    const float *step, uint32_t C, uint32_t dtype, void *out, uint64_t *e,
                    int nt)
{
    const __m256i one = _mm256_set1_epi32(1), lim = _mm256_set1_epi32(MAX_LEVEL);
    const uint16_t *esc = q->t->esc;
    __m256i bad = _mm256_setzero_si256();
    uint32_t c = 0;
    for (; c + 8 <= C; c += 8) {
        __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(s + c)));
        __m256i ve = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(esc + c)));
        unsigned m = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(u, ve)));
        if (m) {   /* escapes: ESC + the next escape values, in coding order (7.4.1) */
            uint32_t tmp[8] __attribute__((aligned(32)));
            _mm256_store_si256((__m256i *)tmp, u);
            for (int l = 0; l < 8; l++)
                if (m >> l & 1) {
                    if (*e >= q->f->num_escapes)
                        return 1;
                    tmp[l] += tkb_packed_get(q->esc_data, (*e)++, q->f->escape_bits);
                }
            u = _mm256_load_si256((const __m256i *)tmp);
        }
        /* zigzag inverse: (u >> 1) ^ -(u & 1); u < 2^26 + 2^12 */
        __m256i r = _mm256_xor_si256(_mm256_srli_epi32(u, 1),
                                     _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_and_si256(u, one)));
        if (pred)
            r = _mm256_add_epi32(r, _mm256_loadu_si256((const __m256i *)(pred + c)));
        bad = _mm256_or_si256(bad, _mm256_cmpgt_epi32(_mm256_abs_epi32(r), lim));
        _mm256_storeu_si256((__m256i *)(lev + c), r);
        /* one binary32 multiplication (7.6.2); binary32(lev) is exact for |lev| < 2^24 */
        __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(r), _mm256_loadu_ps(step + c));
        if (dtype == TKB_FLOAT16) {
            /* vcvtps2ph: IEEE convertFormat, round to nearest even: clause 7.6.2 */
            st16((uint16_t *)out + c,
                 _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), nt);
        } else if (dtype == TKB_FLOAT32) {
            st16((float *)out + c, _mm256_castsi256_si128(_mm256_castps_si256(v)), nt);
            st16((float *)out + c + 4, _mm256_extracti128_si256(_mm256_castps_si256(v), 1), nt);
        } else {
            /* (b + 0x7FFF + ((b >> 16) & 1)) >> 16 on 32-bit lanes: a finite v32 has
             * b < 0xD5000000, so the sum does not wrap */
            __m256i b = _mm256_castps_si256(v);
            b = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(b, _mm256_set1_epi32(0x7FFF)),
                                                   _mm256_and_si256(_mm256_srli_epi32(b, 16), one)), 16);
            __m128i p = _mm_packus_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
            st16((uint16_t *)out + c, p, nt);
        }
    }
    int badm = !_mm256_testz_si256(bad, bad);
    for (; c < C; c++) {
        uint32_t u = s[c];
        if (u == esc[c]) {
            if (*e >= q->f->num_escapes)
                return 1;
            u += tkb_packed_get(q->esc_data, (*e)++, q->f->escape_bits);
        }
        int32_t r = (int32_t)(u >> 1) ^ -(int32_t)(u & 1);
        if (pred)
            r += pred[c];
        if (r > MAX_LEVEL || r < -MAX_LEVEL)
            badm = 1;
        lev[c] = r;
        float v = (float)r * step[c];
        if (dtype == TKB_FLOAT32)
            ((float *)out)[c] = v;
        else if (dtype == TKB_FLOAT16)
            ((uint16_t *)out)[c] = tkb_f32_to_f16_bits(fbits(v));
        else
            ((uint16_t *)out)[c] = tkb_f32_to_bf16_bits(fbits(v));
    }
    return badm;
}

/* binary32(lev) * step, converted to dtype (clauses 7.6.1, 7.6.2), eight at a time */
__attribute__((target("avx2,f16c")))
static void out_avx2(const int32_t *lev, const float *step, uint32_t C, uint32_t dtype,
                     void *out, int nt)
{
    const __m256i one = _mm256_set1_epi32(1);
    uint32_t c = 0;
    for (; c + 8 <= C; c += 8) {
        __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)(lev + c))),
                                 _mm256_loadu_ps(step + c));
        if (dtype == TKB_FLOAT16) {
            st16((uint16_t *)out + c,
                 _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), nt);
        } else if (dtype == TKB_FLOAT32) {
            st16((float *)out + c, _mm256_castsi256_si128(_mm256_castps_si256(v)), nt);
            st16((float *)out + c + 4, _mm256_extracti128_si256(_mm256_castps_si256(v), 1), nt);
        } else {
            __m256i b = _mm256_castps_si256(v);
            b = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(b, _mm256_set1_epi32(0x7FFF)),
                                                   _mm256_and_si256(_mm256_srli_epi32(b, 16), one)), 16);
            st16((uint16_t *)out + c,
                 _mm_packus_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1)), nt);
        }
    }
    for (; c < C; c++) {
        float v = (float)lev[c] * step[c];
        if (dtype == TKB_FLOAT32)
            ((float *)out)[c] = v;
        else if (dtype == TKB_FLOAT16)
            ((uint16_t *)out)[c] = tkb_f32_to_f16_bits(fbits(v));
        else
            ((uint16_t *)out)[c] = tkb_f32_to_bf16_bits(fbits(v));
    }
}
#endif

/* The same row, plain C, with escapes. */
static int row_scalar(const qctx *q, const uint16_t *s, const int32_t *pred, int32_t *lev,
                      uint64_t *e)
{
    const tkb_tps *t = q->t;
    int bad = 0;
    for (uint32_t c = 0; c < q->C; c++) {
        uint32_t u = s[c];
        if (u == t->esc[c]) {
            if (*e >= q->f->num_escapes)
                return 1;                 /* more escapes than num_escapes: ordered_error */
            u += tkb_packed_get(q->esc_data, (*e)++, q->f->escape_bits);
        }
        /* u < 2^26 + 2^12: the residual and its sum with a level fit 32 bits */
        int32_t r = (int32_t)(u >> 1) ^ -(int32_t)(u & 1);
        if (pred)
            r += pred[c];
        if (r > MAX_LEVEL || r < -MAX_LEVEL)
            bad = 1;
        lev[c] = r;
    }
    return bad;
}

/* The reconstruction of a quantized frame as a resumable process over its rows (tokens in
 * coding order), so that rANS decoding and reconstruction can alternate chunk by chunk
 * while the symbols are still in cache (tkb_decode_quantized_fused).  `lazy`: the
 * symbols may not all be decoded yet, so an error is not diagnosed (ordered_error reads
 * every symbol): the process returns -1 and the caller decodes the frame the plain way,
 * which reports the same error as ever. */
typedef struct qstate {
    qctx q;
    void *values;
    int lazy, use_avx2, nt;
    int32_t *buf, *col;
    float *step;
    int64_t *tag, *Y;
    double *acc;
    float *v32;
    int32_t *prev, *cur, *tmp;
    int have_prev;
    int32_t step_row_tsd;
    uint64_t e;
    uint32_t nb, bstart, W;
    float steptab[256];             /* STEP[q], Table 7.6-1 */
} qstate;

static const uint32_t NT = 32;     /* tokens per inverse transform batch */

static void q_end(qstate *st)
{
#if defined(__x86_64__) && defined(__GNUC__)
    if (st->nt)
        _mm_sfence();   /* the streaming stores ordered before whatever follows */
#endif
    free(st->buf);
    free(st->step);
    free(st->col);
    free(st->tag);
    free(st->Y);
    free(st->acc);
    free(st->v32);
    st->buf = st->col = NULL;
    st->step = st->v32 = NULL;
    st->tag = st->Y = NULL;
    st->acc = NULL;
}

static int q_error(qstate *st, tkb_error *err)
{
    return st->lazy ? -1 : ordered_error(&st->q, err);
}

/* 0: ready (q_rows, then q_finish, then q_end); 1: K == 0, nothing to do; else an error */
static int q_begin(qstate *st, const tkb_frame *f, const uint16_t *sym, void *values, int simd,
                   int lazy, tkb_error *err)
{
    const tkb_tps *t = f->tps;
    memset(st, 0, sizeof *st);
    qctx q0 = {f, t, sym, f->info.num_kept, t->num_coded, t->num_channels,
               t->grid_present ? t->num_prefix_tokens : 0, f->payload + f->escape_off};
    st->q = q0;
    st->values = values;
    st->lazy = lazy;
    uint32_t K = st->q.K, C = st->q.C, D = st->q.D;
    if (K == 0)
        return 1;     /* no value, no step code (clause 7.6.1) */
    /* step codes: all in range?  (reported after the level checks, clause 9.0) */
    int code_min = 255, code_max = 0;
    for (uint32_t c = 0; c < (t->per_channel_steps ? C : 1); c++) {
        if (t->step_code[c] < code_min) code_min = t->step_code[c];
        if (t->step_code[c] > code_max) code_max = t->step_code[c];
    }
    int tmin = 0, tmax = 0;
    if (f->token_scale_present) {
        tmin = 127, tmax = -128;
        for (uint32_t k = 0; k < K; k++) {
            int d = tsd(f, k);
            if (d < tmin) tmin = d;
            if (d > tmax) tmax = d;
        }
    }
    if (code_min + f->frame_step_delta + tmin < 0 || code_max + f->frame_step_delta + tmax > 255)
        return q_error(st, err);
    uint32_t W = st->W = t->grid_width;
    st->buf = malloc(3 * (size_t)C * sizeof *st->buf);
    st->step = malloc((size_t)C * sizeof *st->step);
    if (t->predictor == 2) {
        st->col = malloc(((size_t)W * C + 1) * sizeof *st->col);
        st->tag = malloc(((size_t)W + 1) * sizeof *st->tag);
    }
    if (t->coding_mode == 2) {
        st->Y = malloc((size_t)NT * C * sizeof *st->Y);
        st->acc = malloc((size_t)NT * D * sizeof *st->acc);
        st->v32 = malloc((size_t)NT * D * sizeof *st->v32);
    }
    if (!st->buf || !st->step || (t->predictor == 2 && (!st->col || !st->tag)) ||
        (t->coding_mode == 2 && (!st->Y || !st->acc || !st->v32))) {
        q_end(st);
        return tkb_fail(err, TKB_NOMEM, "7.6", "rans_data", -1, "out of memory");
    }
    if (st->tag)
        for (uint32_t x = 0; x < W; x++)
            st->tag[x] = -2;
    st->prev = st->buf;
    st->cur = st->buf + C;
    st->tmp = st->buf + 2 * C;
    st->step_row_tsd = 1000;
    for (int qq = 0; qq < 256; qq++)
        st->steptab[qq] = tkb_step(qq);
#if defined(__x86_64__) && defined(__GNUC__)
    st->use_avx2 = simd && t->coding_mode == 0;
    /* a frame of 1 MiB or more (larger than half a typical L2 cache): streaming stores,
     * the values go to memory without first reading their lines in */
    st->nt = st->use_avx2 && f->info.values_bytes >= ((size_t)1 << 20) &&
             ((uintptr_t)values & 15) == 0 && (D * f->info.value_size) % 16 == 0;
#else
    TKB_UNUSED(simd);
#endif
    return 0;
}

/* rows [k0, k1): their symbols must be decoded */
static int q_rows(qstate *st, uint32_t k0, uint32_t k1, tkb_error *err)
{
    const qctx *qc = &st->q;
    const tkb_frame *f = qc->f;
    const tkb_tps *t = qc->t;
    const uint16_t *sym = qc->sym;
    uint32_t K = qc->K, C = qc->C, D = qc->D, W = st->W;
    size_t vs = f->info.value_size;
    float *step = st->step;
    int32_t *col = st->col;
    int64_t *tag = st->tag, *Y = st->Y;
    for (uint32_t k = k0; k < k1; k++) {
        const uint16_t *s = sym + (size_t)k * C;
        int seq = is_seq(qc, k);
        const int32_t *pred = NULL;
        int32_t *lev = st->tmp;
        uint32_t x = 0, y = 0;
        if (seq && t->predictor == 1) {
            pred = st->have_prev ? st->prev : NULL;
            lev = st->cur;
        } else if (seq && t->predictor == 2) {
            uint32_t g = f->pos[k] - qc->start;
            y = g / W;
            x = g % W;
            pred = tag[x] == (int64_t)y - 1 ? col + (size_t)x * C : NULL;
        }
        int32_t d = tsd(f, k);
        if (d != st->step_row_tsd) {    /* the row's steps, clause 7.6.1 (codes checked above) */
            if (t->per_channel_steps) {
                for (uint32_t c = 0; c < C; c++)
                    step[c] = st->steptab[t->step_code[c] + f->frame_step_delta + d];
            } else {
                float v = st->steptab[t->step_code[0] + f->frame_step_delta + d];
                for (uint32_t c = 0; c < C; c++)
                    step[c] = v;
            }
            st->step_row_tsd = d;
        }
        void *out = (uint8_t *)st->values + (size_t)k * D * vs;
        int bad = 2;
#if defined(__x86_64__) && defined(__GNUC__)
        if (st->use_avx2)
            bad = row_avx2(qc, s, pred, lev, step, C, t->output_dtype, out, &st->e, st->nt);
#endif
        if (bad == 2) {
            bad = row_scalar(qc, s, pred, lev, &st->e);
#if defined(__x86_64__) && defined(__GNUC__)
            if (!bad && st->use_avx2) {
                out_avx2(lev, step, C, t->output_dtype, out, st->nt);
            } else
#endif
            if (!bad && t->coding_mode == 0) {
                float row[64];
                for (uint32_t c0 = 0; c0 < C; c0 += 64) {
                    uint32_t n = C - c0 < 64 ? C - c0 : 64;
                    for (uint32_t c = 0; c < n; c++)   /* one multiplication, clause 7.6.2 */
                        row[c] = (float)lev[c0 + c] * step[c0 + c];
                    store_row(row, n, t->output_dtype, (uint8_t *)out + (size_t)c0 * vs);
                }
            }
        }
        if (bad)
            return q_error(st, err);
        if (t->coding_mode == 2) {   /* clause 7.6.3 step 1, then batches of tokens */
            int64_t *yr = Y + (size_t)st->nb * C;
            for (uint32_t c = 0; c < C; c++) {
                int code = t->step_code[t->per_channel_steps ? c : 0] + f->frame_step_delta + d;
                if (coefficient(lev[c], code, t->transform->coeff_frac_bits, &yr[c]))
                    return q_error(st, err);
            }
            if (st->nb++ == 0)
                st->bstart = k;
        }
        if (seq && t->predictor == 1) {
            int32_t *sw = st->prev;
            st->prev = st->cur;
            st->cur = sw;
            st->have_prev = 1;
        } else if (seq && t->predictor == 2) {
            memcpy(col + (size_t)x * C, lev, C * sizeof *lev);
            tag[x] = y;
        }
        if (t->coding_mode == 2 && (st->nb == NT || k + 1 == K)) {
            tkb_inverse_transform(t->transform, Y, st->nb, st->v32, st->acc);
            for (uint32_t i = 0; i < st->nb; i++)
                store_row(st->v32 + (size_t)i * D, D, t->output_dtype,
                          (uint8_t *)st->values + (size_t)(st->bstart + i) * D * vs);
            st->nb = 0;
        }
    }
    return 0;
}

static int q_finish(qstate *st, tkb_error *err)
{
    return st->e != st->q.f->num_escapes ? q_error(st, err) : 0;
}

int tkb_reconstruct_quantized(const tkb_frame *f, const uint16_t *sym, void *values,
                              int simd, int threads, tkb_error *err)
{
    TKB_UNUSED(threads);
    qstate st;
    int rc = q_begin(&st, f, sym, values, simd, 0, err);
    if (rc)
        return rc == 1 ? 0 : rc;
    rc = q_rows(&st, 0, st.q.K, err);
    if (!rc)
        rc = q_finish(&st, err);
    q_end(&st);
    return rc;
}

/* rANS decoding (clause 7.3.2) and reconstruction alternating: chunks of about 64 KiB of
 * symbols, then the rows they complete, so the symbols are read back from cache rather
 * than memory (one thread per frame).  Same values as tkb_rans_decode_chunks followed by
 * tkb_reconstruct_quantized; returns 0, or -1 when anything went wrong (an error, or out
 * of memory): the caller then decodes the frame the plain way, which reports the error. */
int tkb_decode_quantized_fused(const tkb_frame *f, uint16_t *sym, void *values, int simd)
{
    const tkb_tps *t = f->tps;
    tkb_error e0;
    qstate st;
    uint32_t C = t->num_coded, K = f->info.num_kept;
    if (t->coding_mode == 1 || C == 0 || f->num_symbols != (uint64_t)K * C)
        return -1;
    int rc = q_begin(&st, f, sym, values, simd, 1, &e0);
    if (rc)
        return rc == 1 ? 0 : -1;
    const uint64_t target = 32768;  /* symbols per step (64 KiB) */
    uint64_t woff = 0, c = 0;
    uint32_t done = 0;
    while (!rc && c < f->num_chunks) {
        uint64_t c1 = c, have;
        do {
            c1++;
            have = c1 * (uint64_t)t->chunk_size;
            if (have > f->num_symbols)
                have = f->num_symbols;
        } while (c1 < f->num_chunks && have - (uint64_t)done * C < target);
        rc = tkb_rans_decode_chunks_at(f, c, c1, &woff, sym, simd, &e0);
        c = c1;
        uint32_t rows = (uint32_t)(have / C);
        if (!rc && rows > done) {
            rc = q_rows(&st, done, rows, &e0);
            done = rows;
        }
    }
    if (!rc)
        rc = q_finish(&st, &e0);
    q_end(&st);
    return rc ? -1 : 0;
}

/* ---- split frames (clause 7.4.2 with the prediction of 7.5) ----------------------- */

int tkb_reconstruct_split(const tkb_frame *f, const uint16_t *sym, void *values,
                          tkb_error *err)
{
    const tkb_tps *t = f->tps;
    uint32_t K = f->info.num_kept, C = t->num_channels;
    unsigned W = t->source_dtype == 1 || t->source_dtype == 2 ? 16 : 32;
    unsigned rb = t->raw_bits;
    const uint8_t *raw = f->payload + f->raw_off;
    int64_t off = f->base + (int64_t)(f->rans_data - f->payload);
    uint64_t bit = 0;
    uint32_t start = t->grid_present ? t->num_prefix_tokens : 0;
    int64_t half = (int64_t)1 << (W - 1);
    int64_t *prev = NULL, *col = NULL, *tag = NULL, *lev = NULL;
    uint32_t GW = t->grid_width;
    int rc = 0, bad = 0;
    if (t->predictor) {
        prev = calloc(C, sizeof *prev);
        lev = malloc(C * sizeof *lev);
        if (t->predictor == 2) {
            col = malloc(((size_t)GW * C + 1) * sizeof *col);
            tag = malloc(((size_t)GW + 1) * sizeof *tag);
        }
        if (!prev || !lev || (t->predictor == 2 && (!col || !tag))) {
            rc = tkb_fail(err, TKB_NOMEM, "7.4.2", "rans_data", -1, "out of memory");
            goto out;
        }
        if (tag)
            for (uint32_t x = 0; x < GW; x++)
                tag[x] = -2;
    }
    uint64_t maxid = 0;
    for (uint32_t k = 0; k < K; k++) {
        const uint16_t *s = sym + (size_t)k * C;
        if (!t->predictor) {
            for (uint32_t c = 0; c < C; c++) {
                uint64_t rv = 0;
                for (unsigned i = 0; i < rb; i++, bit++)
                    rv = (rv << 1) | ((raw[bit >> 3] >> (7 - (bit & 7))) & 1u);
                uint64_t u = ((uint64_t)s[c] << rb) | rv;   /* < 2^W (clause 6.3.5) */
                size_t i = (size_t)k * C + c;
                if (W == 16)
                    ((uint16_t *)values)[i] = (uint16_t)u;
                else
                    ((uint32_t *)values)[i] = (uint32_t)u;
                if (u > maxid)
                    maxid = u;
            }
            continue;
        }
        for (uint32_t c = 0; c < C; c++) {
            uint64_t rv = 0;
            for (unsigned i = 0; i < rb; i++, bit++)
                rv = (rv << 1) | ((raw[bit >> 3] >> (7 - (bit & 7))) & 1u);
            uint64_t u = ((uint64_t)s[c] << rb) | rv;      /* < 2^(W+1) */
            lev[c] = (u & 1) ? -(int64_t)((u + 1) >> 1) : (int64_t)(u >> 1);
        }
        if (f->pos[k] >= start) {
            if (t->predictor == 1) {
                for (uint32_t c = 0; c < C; c++)
                    prev[c] = lev[c] += prev[c];
            } else {
                uint32_t g = f->pos[k] - start, y = g / GW, x = g % GW;
                if (tag[x] == (int64_t)y - 1)
                    for (uint32_t c = 0; c < C; c++)
                        lev[c] += col[(size_t)x * C + c];
                memcpy(col + (size_t)x * C, lev, C * sizeof *lev);
                tag[x] = y;
            }
        }
        for (uint32_t c = 0; c < C; c++) {
            int64_t mo = lev[c];
            if (mo < -half || mo >= half) {
                bad = 1;
                mo = 0;
            }
            /* ord_inv */
            uint64_t b = mo >= 0 ? (uint64_t)mo : (uint64_t)(-(mo + 1)) + (uint64_t)half;
            size_t i = (size_t)k * C + c;
            if (W == 16)
                ((uint16_t *)values)[i] = (uint16_t)b;
            else
                ((uint32_t *)values)[i] = (uint32_t)b;
        }
    }
    if (bad) {
        rc = tkb_fail(err, TKB_VALUE_ERROR, "7.4.2", "rans_data", off,
                      "a predicted value lies outside the range of its dtype");
        goto out;
    }
    if (t->track_kind == 1 && K && maxid >= t->vocab_size)
        rc = tkb_fail(err, TKB_VALUE_ERROR, "7.4.2", "raw_data", off,
                      "token id %llu >= vocab_size %u", (unsigned long long)maxid, t->vocab_size);
out:
    free(prev);
    free(lev);
    free(col);
    free(tag);
    return rc;
}
