/* Internal declarations of libtkb: one source file per part of the spec. */
#ifndef TKB_INTERNAL_H
#define TKB_INTERNAL_H

#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include "../include/tkb.h"

#if defined(__FLT_EVAL_METHOD__) && __FLT_EVAL_METHOD__ != 0
#error "clause 3.2: binary32 operations must not use a wider format (build with SSE2)"
#endif

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "libtkb assumes a little-endian host (canonical output, clause 10)"
#endif

#define TKB_UNUSED(x) ((void)(x))

/* ---- errors.c (clause 9) --------------------------------------------------------- */
/* Set *err; returns cls.  offset -1: none.  Always returns the class (never TKB_OK). */
int tkb_fail(tkb_error *err, tkb_class cls, const char *clause, const char *element,
             int64_t offset, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 6, 7)))
#endif
    ;

/* ---- bitio.c (clause 3.3) -------------------------------------------------------- */
/* A reader over one bounded range of bytes (a stream header, a unit header or a unit
 * payload).  base: the stream offset of byte 0, for error reports.  clause: the clause
 * named for a truncation (clause 9.2). */
typedef struct tkb_reader {
    const uint8_t *p;
    size_t n;             /* bytes in the range */
    uint64_t pos;         /* bit position */
    int64_t base;
    const char *clause;
    tkb_error *err;
} tkb_reader;

void rd_init(tkb_reader *r, const uint8_t *p, size_t n, int64_t base, const char *clause,
             tkb_error *err);
static inline uint64_t rd_remaining_bits(const tkb_reader *r) { return (uint64_t)r->n * 8 - r->pos; }
static inline size_t rd_byte_pos(const tkb_reader *r) { return (size_t)(r->pos >> 3); }
static inline int64_t rd_offset(const tkb_reader *r) { return r->base + (int64_t)(r->pos >> 3); }
int rd_u8(tkb_reader *r, const char *el, uint32_t *v);
int rd_i8(tkb_reader *r, const char *el, int32_t *v);
int rd_u16(tkb_reader *r, const char *el, uint32_t *v);
int rd_u32(tkb_reader *r, const char *el, uint32_t *v);
int rd_u64(tkb_reader *r, const char *el, uint64_t *v);
int rd_bits(tkb_reader *r, unsigned n, const char *el, uint64_t *v);    /* b(n), n <= 64 */
int rd_eg(tkb_reader *r, unsigned k, const char *el, uint64_t *v);      /* eg(k) */
int rd_align(tkb_reader *r, const char *el);                              /* align */
int rd_bytes(tkb_reader *r, size_t count, const char *el, const uint8_t **out);
/* Clause 7.1: an array of fixed-width elements longer than what remains. */
int rd_need_bytes(tkb_reader *r, uint64_t nbytes, const char *el);
int rd_need_bits(tkb_reader *r, uint64_t nbits, const char *el);
/* Packed array of width n (clause 3.3), count fields, from a byte-aligned position:
 * field j of the run -> out[j].  Bounds were checked by the caller. */
void rd_packed_u32(tkb_reader *r, uint64_t count, unsigned n, uint32_t *out);

/* ---- crc32c.c (clause 3.4), sha256.c (FIPS 180-4) -------------------------------- */
uint32_t tkb_crc32c(const uint8_t *p, size_t n);

/* ---- levels.c (clause 8) --------------------------------------------------------- */
#define TKB_PROFILE_LOSSLESS 1
#define TKB_PROFILE_MAIN 2
#define TKB_PROFILE_HIGH 3
typedef struct tkb_level {
    int level_idc;
    uint64_t max_tracks, max_tokens, max_channels, max_values, max_vocab, max_tables,
        max_alphabet, max_lanes, max_chunk, max_lane_steps, max_unit_size;
} tkb_level;
const tkb_level *tkb_get_level(int level_idc);   /* NULL: not in Table 8.2-1 */
int tkb_profile_known(int profile_idc);
int tkb_check_limit(uint64_t value, uint64_t limit, const char *el, int64_t offset,
                    const tkb_level *lv, tkb_error *err);    /* TKBLevelError, clause 8.2 */

/* ---- transform.c (clauses 6.7, 7.6.3) -------------------------------------------- */
typedef struct tkb_transform {
    uint32_t num_channels, num_coeffs;     /* D, K */
    unsigned coeff_frac_bits, basis_frac_bits, mean_bits, basis_bits;
    int64_t *mean;                         /* [D] */
    int16_t *basis;                        /* [K][D]; abs <= 2^15 - 1 */
    uint8_t digest[32];
    uint8_t *payload;                      /* the transform unit's payload (clause 6.7.1 step 3) */
    size_t payload_len;
} tkb_transform;

/* Parse transform_data() from r (clause 5.15, constraints of 6.7) */
int tkb_parse_transform_data(tkb_reader *r, const tkb_level *lv, tkb_transform *t);
void tkb_transform_clear(tkb_transform *t);

/* ---- tables (clauses 6.3.5, 7.3.1) ----------------------------------------------- */
typedef struct tkb_freq_table {
    uint32_t alphabet_size;
    uint32_t *freq;             /* [alphabet_size]; values > 2^prob_bits clamped to 2^16 */
    uint64_t sum;
} tkb_freq_table;

/* The slot lookup of clause 7.3.1 for all tables of a parameter set, entry
 * (t << prob_bits) | v: either packed[] = sym << 2 prob_bits | (freq - 1) << prob_bits |
 * (v - cum), when that fits 32 bits (one load, one gather a symbol), or slot[] = freq << 16
 * | (v - cum) and sym[] (padded by 2 entries for wide loads). */
typedef struct tkb_lookup {
    uint32_t *slot;
    uint16_t *sym;
    uint32_t *packed;
    int refs;
    size_t total;               /* entries: num_tables << prob_bits */
    uint64_t serial;            /* unique in the process: names the contents of a copy */
} tkb_lookup;

/* decode_symbol of clause 7.3.1: the symbol of slot index idx (table base | (x & mask)),
 * and the new state */
static inline uint32_t tkb_decode_symbol(const tkb_lookup *L, uint32_t pb, uint32_t idx,
                                         uint32_t x, uint16_t *s)
{
    if (L->packed) {
        uint32_t e = L->packed[idx], mask = (1u << pb) - 1;
        *s = (uint16_t)(e >> (2 * pb));
        return (((e >> pb) & mask) + 1) * (x >> pb) + (e & mask);
    }
    uint32_t e = L->slot[idx];
    *s = L->sym[idx];
    return (e >> 16) * (x >> pb) + (e & 0xFFFF);
}

/* ---- tps.c (clause 6.3) ----------------------------------------------------------- */
typedef struct tkb_tps {
    uint32_t tps_id, track_kind, coding_mode, source_dtype, output_dtype, num_channels,
        vocab_size, transform_id, grid_present, grid_height, grid_width, num_prefix_tokens,
        max_tokens, predictor, per_channel_steps, raw_bits, num_lanes, lane_steps, prob_bits,
        num_tables;
    uint8_t *step_code;          /* [num_coded or 1] */
    uint8_t *table_map;          /* [num_coded] or NULL */
    tkb_freq_table *tables;      /* [num_tables] */
    /* derived */
    uint32_t num_coded, chunk_size;
    const tkb_transform *transform;
    uint16_t *esc;               /* [num_coded]: ESC[c] (quantized) */
    uint32_t *chan_base;         /* [num_coded]: ct[c] << prob_bits */
    uint8_t *payload;            /* for the byte-identical repetition rule */
    size_t payload_len;
    tkb_lookup *lookup;          /* built on first use, see decoder.c */
    uint64_t last_use;
} tkb_tps;

int tkb_parse_tps(const uint8_t *payload, size_t n, int64_t base, const tkb_level *lv,
                  int profile_idc, tkb_transform *const *transforms, tkb_tps *t,
                  tkb_error *err);
void tkb_tps_clear(tkb_tps *t);
tkb_lookup *tkb_build_lookup(const tkb_tps *t);
/* A private copy (same entries and serial; refs 1), or NULL: out of memory. */
tkb_lookup *tkb_copy_lookup(const tkb_lookup *l);
void tkb_lookup_free(tkb_lookup *l);

/* ---- frame.c (clause 6.4), presence.c (7.2), merge_map.c (7.8) ------------------- */
struct tkb_frame {
    tkb_frame_info info;
    const tkb_tps *tps;
    tkb_lookup *lookup;
    uint8_t *owned;              /* payload copy (streaming input) */
    const uint8_t *payload;
    size_t payload_len;
    int64_t base;                /* stream offset of the payload */
    uint32_t presence_present;
    uint32_t *pos;               /* [num_kept] */
    uint32_t *stand_in;          /* [num_tokens - num_kept] when presence_present 2 */
    int32_t frame_step_delta;
    uint32_t token_scale_present;
    const uint8_t *token_step_delta;  /* [num_kept] i8 bytes, in the payload */
    uint32_t escape_bits, num_escapes;
    uint64_t num_symbols, num_chunks;
    const uint8_t *chunk_words;       /* [num_chunks] u32 le, in the payload */
    const uint8_t *rans_data;         /* words, in the payload */
    uint64_t total_words;
    size_t escape_off, raw_off;       /* byte offsets of escape_data / raw_data */
    size_t unit_record;               /* index in the decoder's frame-unit records */
    struct tkb_decoder *dec;
    int simd;
    int threads;
};

int tkb_parse_frame(tkb_frame *f, const tkb_level *lv, int profile_idc, tkb_error *err);
int tkb_read_presence_map(tkb_reader *r, const tkb_tps *t, uint32_t num_tokens,
                          uint32_t *pos, uint32_t *num_kept, uint8_t *scratch);
int tkb_read_merge_map(tkb_reader *r, uint32_t num_tokens, uint32_t num_kept,
                       uint32_t *stand_in);
void tkb_dense_fill(const tkb_frame_info *fi, const uint32_t *pos, const uint32_t *stand_in,
                    int has_merge_map, const void *values, void *dense);

/* ---- rans.c (clause 7.3.2) -------------------------------------------------------- */
/* Decode chunks [c0, c1) of a frame into sym[] (coding order).  Returns TKB_OK or
 * TKB_ENTROPY_ERROR (err filled). */
void tkb_rans_init(void);   /* once, before any decoding (tables of the fast path) */
int tkb_rans_decode_chunks(const tkb_frame *f, uint64_t c0, uint64_t c1, uint16_t *sym,
                           int simd, tkb_error *err);
/* The same, from the word offset *woff of chunk c0 (advanced past the chunks decoded). */
int tkb_rans_decode_chunks_at(const tkb_frame *f, uint64_t c0, uint64_t c1, uint64_t *woff,
                              uint16_t *sym, int simd, tkb_error *err);

/* ---- symbols.c (7.4), prediction.c (7.5), reconstruction.c (7.6) ----------------- */
extern const uint32_t TKB_STEP_MANTISSA_BITS[6];
float tkb_step(int q);                    /* STEP[q], clause 7.6.1 */
uint16_t tkb_f32_to_f16_bits(uint32_t b);  /* clause 7.6.2 */
uint16_t tkb_f32_to_bf16_bits(uint32_t b);

/* Decode a quantized frame's values (clauses 7.4.1, 7.5, 7.6) from its symbols. */
int tkb_reconstruct_quantized(const tkb_frame *f, const uint16_t *sym, void *values,
                              int simd, int threads, tkb_error *err);
/* rANS decoding and tkb_reconstruct_quantized alternating chunk by chunk (symbols still
 * in cache); 0, or -1: not done (an error or out of memory: decode the plain way). */
int tkb_decode_quantized_fused(const tkb_frame *f, uint16_t *sym, void *values, int simd);
/* Decode a split frame's values (clause 7.4.2 with 7.5). */
int tkb_reconstruct_split(const tkb_frame *f, const uint16_t *sym, void *values,
                          tkb_error *err);
/* Clause 7.6.3 steps 2 and 3 for one token group: Y [nt][K] -> v32 [nt][D] */
void tkb_inverse_transform(const tkb_transform *t, const int64_t *Y, size_t nt, float *out,
                           double *scratch);
/* escape values: field e of escape_data */
static inline uint32_t tkb_packed_get(const uint8_t *p, uint64_t j, unsigned n) {
    uint64_t bit = j * n, v = 0;
    for (unsigned i = 0; i < n; i++, bit++)
        v = (v << 1) | ((p[bit >> 3] >> (7 - (bit & 7))) & 1u);
    return (uint32_t)v;
}

/* ---- cpu.c: run-time choice of the fast path ------------------------------------- */
int tkb_cpu_avx2(void);      /* AVX2 + F16C + BMI2 available */
/* AVX-512 F, BW, VL, DQ, CD with the OS saving the ZMM state (and tkb_cpu_avx2), the CPU
 * probed once; 0 when $TKB_NATIVE_SIMD is "scalar" or "avx2" (read on every call) */
int tkb_cpu_avx512(void);
/* enc_rans.c: the coder tkb_enc_rans would use now (num_lanes a multiple of 8): "avx512",
 * "avx2" or "scalar" (tests/test_native_rans_simd.py; not in tkb_enc.h) */
const char *tkb_enc_rans_simd_name(void);

/* ---- threads ----------------------------------------------------------------------- */
typedef void (*tkb_task_fn)(void *ctx, int index, int worker);
/* Run fn(ctx, i, worker) for i in [0, n) on up to `threads` threads (the caller included,
 * as worker 0; workers are numbered below min(threads, 65)). */
void tkb_parallel_for(int n, int threads, tkb_task_fn fn, void *ctx);

#endif
