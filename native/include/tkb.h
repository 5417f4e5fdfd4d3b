/* libtkb: a decoder of TKB version 1.1 streams (spec/, clauses 1-11), in C11.
 *
 * Written from the specification; names are the spec's names.  No dependencies
 * beyond the C library (and POSIX threads for `threads` > 1).
 *
 * Streaming use (clause 5.1: a unit decodes as soon as its bytes have arrived):
 *
 *     tkb_decoder *d = tkb_decoder_new(&opts);          // opts: strict, threads
 *     tkb_add_transform_data(d, bytes, n);               // transforms by digest (6.7)
 *     tkb_feed(d, buf, n); ... tkb_feed_end(d);          // or tkb_set_input(d, all, n)
 *     tkb_event ev;
 *     for (;;) {
 *         int r = tkb_next(d, &ev);
 *         if (r == TKB_EV_NEED_DATA) { feed more; continue; }
 *         if (r == TKB_EV_END) break;
 *         if (r == TKB_EV_ERROR) { report ev.error; continue; }   // confined or fatal (9.10)
 *         if (r == TKB_EV_FRAME) {                                // shape known: ev.frame
 *             tkb_frame_info *fi = &ev.frame;  // num_kept x num_channels of dtype
 *             tkb_frame_decode(d, ev.frame_handle, values, positions, stand_ins, &err);
 *             tkb_frame_free(ev.frame_handle);
 *         }
 *     }
 *     tkb_decoder_free(d);
 *
 * Errors (clause 9) carry the class, the clause whose rule was violated, the
 * syntax element and the byte offset in the stream.  Every size is checked
 * against the stream's level (clause 8.2) and the bytes present before anything
 * is allocated (clause 7.1.4).
 */
#ifndef TKB_H
#define TKB_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TKB_VERSION_STRING "libtkb 1.1.0 (TKB version 1.1 decoder)"

/* Error classes of clause 9 (9.1 .. 9.9), then the library's own failures. */
typedef enum tkb_class {
    TKB_OK = 0,
    TKB_FORMAT_ERROR = 1,       /* 9.1 */
    TKB_TRUNCATED_ERROR = 2,    /* 9.2 */
    TKB_CRC_ERROR = 3,          /* 9.3 */
    TKB_UNSUPPORTED_ERROR = 4,  /* 9.4 */
    TKB_LEVEL_ERROR = 5,        /* 9.5 */
    TKB_REFERENCE_ERROR = 6,    /* 9.6 */
    TKB_TABLE_ERROR = 7,        /* 9.7 */
    TKB_ENTROPY_ERROR = 8,      /* 9.8 */
    TKB_VALUE_ERROR = 9,        /* 9.9 */
    TKB_NOMEM = 32,             /* out of memory (not a stream error) */
    TKB_USAGE = 33              /* the API was misused (buffer too small, bad state) */
} tkb_class;

typedef struct tkb_error {
    tkb_class cls;
    char clause[12];       /* "6.4", "7.1", "8.2", ... (clause 9 tables) */
    char element[40];      /* the syntax element being read or checked */
    int64_t offset;        /* byte offset in the stream, -1 when none (index check) */
    int fatal;             /* 1: stream header or unit framing (clause 9.10) */
    char message[200];
} tkb_error;

/* Table 4.4-1 */
typedef enum tkb_dtype { TKB_FLOAT32 = 0, TKB_FLOAT16 = 1, TKB_BFLOAT16 = 2, TKB_UINT32 = 3 } tkb_dtype;

typedef struct tkb_options {
    int strict;     /* 1: stop at the first error; 0: resilient (clause 9.10) */
    int threads;    /* worker threads for chunks and frames (0 or 1: the calling thread);
                     * > 1 with tkb_set_input: also one helper that checks the CRCs of
                     * the units ahead while tkb_next parses (same events) */
    int simd;       /* 0: choose at run time; 1: scalar only (same bits) */
} tkb_options;

typedef struct tkb_stream_info {   /* clause 6.1 */
    int version_major, version_minor, profile_idc, level_idc;
} tkb_stream_info;

typedef struct tkb_frame_info {    /* clause 7.7; known before the values are decoded */
    uint32_t track_id, tps_id, frame_number, num_tokens, num_kept, num_channels;
    tkb_dtype dtype;
    int has_merge_map;             /* presence_present 2 (clause 7.8) */
    uint64_t offset;               /* byte offset of the frame unit */
    size_t value_size;             /* bytes of one value: 2 or 4 */
    size_t values_bytes;           /* num_kept * num_channels * value_size */
    size_t dense_bytes;            /* num_tokens * num_channels * value_size (clause 7.8) */
} tkb_frame_info;

typedef struct tkb_frame tkb_frame;      /* a parsed frame, not yet decoded */
typedef struct tkb_decoder tkb_decoder;

enum tkb_event_kind {
    TKB_EV_NEED_DATA = 0,  /* feed more bytes (or tkb_feed_end) */
    TKB_EV_UNIT = 1,       /* a non-frame unit was processed (or skipped) */
    TKB_EV_FRAME = 2,      /* a frame unit was parsed: decode it, then free it */
    TKB_EV_ERROR = 3,      /* an error (ev.error); ev.error.fatal: decoding has ended */
    TKB_EV_END = 4         /* the stream has ended (index check of clause 6.6 done) */
};

typedef struct tkb_event {
    int kind;
    int unit_type, track_id;       /* of the unit (TKB_EV_UNIT, TKB_EV_FRAME) */
    uint64_t offset;               /* byte offset of the unit */
    tkb_frame_info frame;          /* TKB_EV_FRAME */
    tkb_frame *frame_handle;       /* TKB_EV_FRAME: owned by the caller (tkb_frame_free) */
    tkb_error error;               /* TKB_EV_ERROR */
    const uint8_t *payload;        /* the unit's payload (valid until the next call) */
    size_t payload_len;
} tkb_event;

const char *tkb_version(void);
const char *tkb_class_name(tkb_class cls);      /* "TKBFormatError", ... */
const char *tkb_simd_name(void);                /* "avx2" or "scalar": the fast path in use */

tkb_decoder *tkb_decoder_new(const tkb_options *opts);   /* NULL: out of memory */
void tkb_decoder_free(tkb_decoder *d);

/* Transforms the application supplies (clause 6.7): the bytes of a transform_data()
 * structure, named by their SHA-256; or a .tkbt file (a stream of the High profile with
 * inline transform units).  Returns TKB_OK or an error class (err filled, may be NULL). */
int tkb_add_transform_data(tkb_decoder *d, const uint8_t *data, size_t n, tkb_error *err);
int tkb_add_transform_tkbt(tkb_decoder *d, const uint8_t *data, size_t n, tkb_error *err);

/* Input.  tkb_feed copies; tkb_set_input borrows a whole stream held in memory (it must
 * outlive the decoder and every frame) and ends the input. */
int tkb_feed(tkb_decoder *d, const uint8_t *data, size_t n);
void tkb_feed_end(tkb_decoder *d);
int tkb_set_input(tkb_decoder *d, const uint8_t *data, size_t n);

/* The next event.  The first call reads the stream header (clause 6.1). */
int tkb_next(tkb_decoder *d, tkb_event *ev);
const tkb_stream_info *tkb_stream(const tkb_decoder *d);   /* NULL before the header */
/* 1 when every unit has been read and the next tkb_next starts the index check of
 * clause 6.6 (decode the frames still pending first: the check compares the
 * frame_number of frames decoded without error). */
int tkb_units_done(const tkb_decoder *d);

/* Decode a parsed frame (clause 6.4.1 step 5, clauses 7.3 - 7.8) into caller buffers:
 * values: values_bytes (dense: dense_bytes) bytes, row-major, little-endian bit patterns
 * of dtype; positions: num_kept uint32 (dense: num_tokens, 0..num_tokens-1), may be NULL;
 * stand_ins: num_tokens - num_kept uint32 when has_merge_map, may be NULL.  Returns TKB_OK
 * or the class of the frame's error (err filled).  tkb_frame_decode_dense writes clause
 * 7.8's dense frame. */
int tkb_frame_decode(tkb_decoder *d, tkb_frame *f, void *values, uint32_t *positions,
                     uint32_t *stand_ins, tkb_error *err);
int tkb_frame_decode_dense(tkb_decoder *d, tkb_frame *f, void *values, uint32_t *positions,
                           tkb_error *err);
/* Several frames at once, `threads` of the options at a time (frames in parallel). */
int tkb_frames_decode(tkb_decoder *d, int n, tkb_frame *const *frames, void *const *values,
                      uint32_t *const *positions, uint32_t *const *stand_ins,
                      const int *dense, tkb_error *errs);
const tkb_frame_info *tkb_frame_get_info(const tkb_frame *f);
void tkb_frame_free(tkb_frame *f);

/* Clause 10: the canonical frame record of a decoded frame (dense: clause 10.4).
 * Returns its size; writes it when out is not NULL. */
size_t tkb_frame_record(const tkb_frame_info *fi, int dense, const void *values,
                        const uint32_t *positions, uint8_t *out);

/* FIPS 180-4 SHA-256 (used for transform digests; exported for tools). */
void tkb_sha256(const uint8_t *data, size_t n, uint8_t out[32]);

#ifdef __cplusplus
}
#endif
#endif
