/* The decoder (spec clauses 5.1, 6.1, 6.2, 6.3.6, 6.4.1, 6.5, 6.6, 6.7.1, 9.10): the
 * stream header, the framing of units, the processing of each payload, error resilience,
 * the index check at the end of the stream; and the public API of tkb.h. */
#include <stdlib.h>
#include <stdio.h>
#include <pthread.h>
#include <stdatomic.h>
#include "internal.h"

#define CK(x) do { int e_ = (x); if (e_) return e_; } while (0)
#define MAGIC 0x424B5489u
#define LOOKUP_CACHE 8      /* parameter sets whose slot lookups are kept built */

typedef struct track {
    tkb_tps *tps[256];
} track;

typedef struct frame_record {   /* a framed unit with unit_type 2 (clause 6.6) */
    uint64_t offset;
    uint32_t track_id, frame_number;
    int decoded;                /* decoded without error: frame_number is compared */
} frame_record;

typedef struct index_entry {
    uint64_t offset;
    uint32_t track_id, frame_number;
} index_entry;

typedef struct supplied {
    uint8_t digest[32];
    uint8_t *data;
    size_t n;
} supplied;

struct tkb_decoder {
    tkb_options opt;
    int simd;
    /* input */
    uint8_t *buf;               /* owned, or the borrowed stream */
    size_t len, cap;            /* bytes in buf */
    uint64_t buf_off;           /* stream offset of buf[0] */
    uint64_t pos;               /* stream offset of the next unit */
    int borrowed, eof;
    /* state */
    int header_done, stopped, index_phase;
    tkb_stream_info info;
    const tkb_level *level;
    track *tracks[255];
    uint32_t num_tracks;
    tkb_transform *transforms[256];
    supplied *sup;
    size_t nsup;
    frame_record *rec;
    size_t nrec, caprec;
    index_entry *idx;
    size_t nidx, capidx;
    size_t idx_next;            /* index check progress */
    tkb_tps *cached[LOOKUP_CACHE + 1];
    uint16_t *scratch[65];      /* a symbol buffer per worker, kept between frames */
    size_t scratch_cap[65];
    tkb_lookup *wlookup[65];    /* a copy of a slot lookup per worker (frames in parallel) */
    struct crc_ahead *ahead;    /* units' CRCs checked ahead by a helper thread, or NULL */
    uint64_t ahead_next;        /* stream offset: no new lookahead window before it */
    int ncached;
    uint64_t clock;
};

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int have_avx2;

static void global_init(void)
{
    tkb_rans_init();
    have_avx2 = tkb_cpu_avx2();
}

const char *tkb_version(void) { return TKB_VERSION_STRING; }

const char *tkb_simd_name(void)
{
    pthread_once(&once, global_init);
    return have_avx2 ? "avx2" : "scalar";
}

tkb_decoder *tkb_decoder_new(const tkb_options *opts)
{
    pthread_once(&once, global_init);
    tkb_decoder *d = calloc(1, sizeof *d);
    if (!d)
        return NULL;
    if (opts)
        d->opt = *opts;
    if (d->opt.threads < 1)
        d->opt.threads = 1;
    d->simd = have_avx2 && d->opt.simd != 1;
    return d;
}

static void ahead_end(tkb_decoder *d);

void tkb_decoder_free(tkb_decoder *d)
{
    if (!d)
        return;
    ahead_end(d);
    for (int i = 0; i < 255; i++)
        if (d->tracks[i]) {
            for (int j = 0; j < 256; j++)
                if (d->tracks[i]->tps[j]) {
                    tkb_tps_clear(d->tracks[i]->tps[j]);
                    free(d->tracks[i]->tps[j]);
                }
            free(d->tracks[i]);
        }
    for (int i = 0; i < 256; i++)
        if (d->transforms[i]) {
            tkb_transform_clear(d->transforms[i]);
            free(d->transforms[i]);
        }
    for (size_t i = 0; i < d->nsup; i++)
        free(d->sup[i].data);
    free(d->sup);
    for (int i = 0; i < 65; i++) {
        free(d->scratch[i]);
        tkb_lookup_free(d->wlookup[i]);
    }
    free(d->rec);
    free(d->idx);
    if (!d->borrowed)
        free(d->buf);
    free(d);
}

const tkb_stream_info *tkb_stream(const tkb_decoder *d)
{
    return d->header_done ? &d->info : NULL;
}

int tkb_units_done(const tkb_decoder *d)
{
    return d->stopped || d->index_phase ||
           (d->header_done && d->eof && d->pos - d->buf_off == d->len);
}

/* ---- input -------------------------------------------------------------------------- */

int tkb_feed(tkb_decoder *d, const uint8_t *data, size_t n)
{
    if (d->borrowed || d->eof)
        return TKB_USAGE;
    /* drop what has been consumed */
    uint64_t used = d->pos > d->buf_off ? d->pos - d->buf_off : 0;
    if (used > d->len)
        used = d->len;
    if (used && used >= d->len / 2) {
        memmove(d->buf, d->buf + used, d->len - used);
        d->len -= used;
        d->buf_off += used;
    }
    if (d->len + n > d->cap) {
        size_t cap = d->cap ? d->cap : 65536;
        while (cap < d->len + n)
            cap *= 2;
        uint8_t *b = realloc(d->buf, cap);
        if (!b)
            return TKB_NOMEM;
        d->buf = b;
        d->cap = cap;
    }
    if (n)
        memcpy(d->buf + d->len, data, n);
    d->len += n;
    return TKB_OK;
}

void tkb_feed_end(tkb_decoder *d) { d->eof = 1; }

int tkb_set_input(tkb_decoder *d, const uint8_t *data, size_t n)
{
    if (d->len || d->borrowed)
        return TKB_USAGE;
    d->buf = (uint8_t *)data;
    d->len = d->cap = n;
    d->borrowed = d->eof = 1;
    return TKB_OK;
}

/* ---- transforms supplied by the application (clause 6.7) ------------------------- */

int tkb_add_transform_data(tkb_decoder *d, const uint8_t *data, size_t n, tkb_error *err)
{
    tkb_error e0;
    if (!err)
        err = &e0;
    /* check it now (at the largest level); the stream's level is checked when used */
    tkb_reader r;
    tkb_transform t;
    memset(&t, 0, sizeof t);
    rd_init(&r, data, n, 0, "6.7", err);
    int e = tkb_parse_transform_data(&r, tkb_get_level(30), &t);
    tkb_transform_clear(&t);
    if (e)
        return e;
    if (rd_remaining_bits(&r))
        return tkb_fail(err, TKB_FORMAT_ERROR, "6.7", "transform_data", (int64_t)rd_byte_pos(&r),
                        "bytes left over after transform_data");
    supplied *s = realloc(d->sup, (d->nsup + 1) * sizeof *s);
    if (!s)
        return tkb_fail(err, TKB_NOMEM, "6.7", "transform_data", -1, "out of memory");
    d->sup = s;
    s = &d->sup[d->nsup];
    s->data = malloc(n ? n : 1);
    if (!s->data)
        return tkb_fail(err, TKB_NOMEM, "6.7", "transform_data", -1, "out of memory");
    memcpy(s->data, data, n);
    s->n = n;
    tkb_sha256(data, n, s->digest);
    d->nsup++;
    return TKB_OK;
}

int tkb_add_transform_tkbt(tkb_decoder *d, const uint8_t *data, size_t n, tkb_error *err)
{
    tkb_error e0;
    if (!err)
        err = &e0;
    tkb_options o = {1, 1, 0};
    tkb_decoder *t = tkb_decoder_new(&o);
    if (!t)
        return tkb_fail(err, TKB_NOMEM, "6.7", "transform", -1, "out of memory");
    tkb_set_input(t, data, n);
    tkb_event ev;
    int rc = TKB_OK, found = 0;
    for (;;) {
        int k = tkb_next(t, &ev);
        if (k == TKB_EV_END)
            break;
        if (k == TKB_EV_ERROR) {
            *err = ev.error;
            rc = ev.error.cls;
            break;
        }
        if (k == TKB_EV_FRAME) {
            tkb_frame_free(ev.frame_handle);
            continue;
        }
        if (k == TKB_EV_UNIT && ev.unit_type == 5) {
            uint64_t at = ev.offset + 8 - t->buf_off;
            uint32_t size = (uint32_t)t->buf[at - 8] | (uint32_t)t->buf[at - 7] << 8 |
                            (uint32_t)t->buf[at - 6] << 16 | (uint32_t)t->buf[at - 5] << 24;
            if (size >= 2 && t->buf[at + 1] == 0) {
                rc = tkb_add_transform_data(d, t->buf + at + 2, size - 2, err);
                if (rc)
                    break;
                found++;
            }
        }
    }
    tkb_decoder_free(t);
    if (!rc && !found)
        rc = tkb_fail(err, TKB_FORMAT_ERROR, "6.7", "transform", -1,
                      "the .tkbt stream holds no inline transform");
    return rc;
}

/* ---- slot lookups: built when a frame first needs them, LOOKUP_CACHE kept ---------- */

static tkb_lookup *get_lookup(tkb_decoder *d, tkb_tps *t)
{
    t->last_use = ++d->clock;
    if (t->lookup)
        return t->lookup;
    t->lookup = tkb_build_lookup(t);
    if (!t->lookup)
        return NULL;
    d->cached[d->ncached++] = t;
    if (d->ncached > LOOKUP_CACHE) {
        int old = 0;
        for (int i = 1; i < d->ncached; i++)
            if (d->cached[i]->last_use < d->cached[old]->last_use)
                old = i;
        tkb_lookup_free(d->cached[old]->lookup);   /* frames keep their own references */
        d->cached[old]->lookup = NULL;
        d->cached[old] = d->cached[--d->ncached];
    }
    return t->lookup;
}

/* ---- units ------------------------------------------------------------------------ */

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* ---- units' CRCs checked ahead (threads > 1) ------------------------------------------ */

/* With threads > 1 and the whole stream in memory (tkb_set_input), a helper thread
 * computes the CRC-32C (clause 6.2 step 4, clause 3.4) of a window of units after the
 * current one, from the last backwards, while the calling thread parses units from the
 * front; a unit whose CRC the helper has found matching is not computed again.  Nothing
 * else is taken from the helper: a unit it has not reached, or whose CRC does not match,
 * is checked by the calling thread as always, so every error, and the order of errors,
 * is unchanged.  The window holds the units tkb_next would frame (unit_size within the
 * level and within the stream, steps 1 - 3) and stops before anything else.  On the
 * 2-core dev VM the serial parse of the bench's 64-frame stream (9.2 MB, mostly CRC-32C
 * of bytes read from memory), which precedes its frames decoded in parallel, went from
 * 1.06 - 1.28 ms to 0.85 - 0.93 ms. */
enum { AHEAD_UNITS = 256 };
#define AHEAD_BYTES ((uint64_t)32 << 20)   /* at most this much in a window */
#define AHEAD_MIN ((uint64_t)1 << 20)      /* less is not worth a thread (~0.1 ms to start) */

typedef struct crc_ahead {
    pthread_t th;
    const uint8_t *buf;            /* the borrowed stream; buf[0] is at stream offset 0 */
    uint64_t off[AHEAD_UNITS];     /* the window's units: stream offset, unit_size */
    uint32_t size[AHEAD_UNITS];
    atomic_uchar ok[AHEAD_UNITS];  /* 1: the helper computed the unit's CRC and it matched */
    atomic_size_t claimed;         /* units [0, claimed) are the calling thread's */
    size_t n, next;                /* units in the window; the calling thread's next one */
} crc_ahead;

static void *ahead_main(void *arg)
{
    crc_ahead *a = arg;
    for (size_t i = a->n; i-- > 0;) {
        if (i < atomic_load(&a->claimed))
            break;
        const uint8_t *u = a->buf + a->off[i];
        if (tkb_crc32c(u, 8 + (size_t)a->size[i]) == le32(u + 8 + a->size[i]))
            atomic_store_explicit(&a->ok[i], 1, memory_order_release);
    }
    return NULL;
}

/* stop the helper (at its next unit) and wait for it */
static void ahead_end(tkb_decoder *d)
{
    crc_ahead *a = d->ahead;
    if (!a)
        return;
    atomic_store(&a->claimed, a->n);
    pthread_join(a->th, NULL);
    free(a);
    d->ahead = NULL;
}

/* At the CRC step of the unit at stream offset `offset` (d->pos is the next unit): 1 when
 * the helper has found its CRC matching, else 0 (the caller computes it).  Starts a window
 * at the next unit when none is open. */
static int crc_known(tkb_decoder *d, uint64_t offset, uint32_t size)
{
    crc_ahead *a = d->ahead;
    if (a) {
        size_t i = a->next;
        if (i < a->n && a->off[i] == offset && a->size[i] == size) {
            a->next = i + 1;
            atomic_store(&a->claimed, i + 1);
            int ok = atomic_load_explicit(&a->ok[i], memory_order_acquire) == 1;
            if (a->next == a->n)
                ahead_end(d);
            return ok;
        }
        ahead_end(d);     /* not the window's unit (tkb_next frames units the same way) */
    }
    if (d->opt.threads <= 1 || !d->borrowed || d->buf_off != 0 || d->pos < d->ahead_next)
        return 0;
    a = malloc(sizeof *a);
    if (!a)
        return 0;
    uint64_t at = d->pos, total = 0;
    size_t n = 0;
    while (n < AHEAD_UNITS && d->len - at >= 12) {
        uint32_t sz = le32(d->buf + at);
        if (sz > d->level->max_unit_size || d->len - at - 12 < (uint64_t)sz ||
            total + 12 + sz > AHEAD_BYTES)
            break;
        a->off[n] = at;
        a->size[n] = sz;
        atomic_init(&a->ok[n], 0);
        n++;
        total += 12 + (uint64_t)sz;
        at += 12 + (uint64_t)sz;
    }
    d->ahead_next = at > d->pos ? at : d->pos + 1;
    a->buf = d->buf;
    a->n = n;
    a->next = 0;
    atomic_init(&a->claimed, 0);
    if (n < 2 || total < AHEAD_MIN || pthread_create(&a->th, NULL, ahead_main, a) != 0) {
        free(a);
        return 0;
    }
    d->ahead = a;
    return 0;
}

/* clause 6.3.6 */
static int process_tps(tkb_decoder *d, uint32_t track_id, const uint8_t *p, size_t n,
                       int64_t base, tkb_error *err)
{
    tkb_tps *t = calloc(1, sizeof *t);
    if (!t)
        return tkb_fail(err, TKB_NOMEM, "6.3", "track_parameter_set", -1, "out of memory");
    int e = tkb_parse_tps(p, n, base, d->level, d->info.profile_idc, d->transforms, t, err);
    if (!e)   /* step 3: the frequency sums, table 0 first */
        for (uint32_t i = 0; i < t->num_tables && !e; i++)
            if (t->tables[i].sum != (1ull << t->prob_bits))
                e = tkb_fail(err, TKB_TABLE_ERROR, "6.3.5", "freq", base,
                             "the frequencies of table %u sum to %llu, not 2^%u", i,
                             (unsigned long long)t->tables[i].sum, t->prob_bits);
    track *tr = d->tracks[track_id];
    if (!e && !tr)   /* step 4: a new track */
        e = tkb_check_limit(d->num_tracks + 1, d->level->max_tracks, "number of tracks", base - 8,
                            d->level, err);
    if (!e && tr && tr->tps[t->tps_id]) {   /* step 5: repetition */
        tkb_tps *old = tr->tps[t->tps_id];
        if (old->payload_len != n || memcmp(old->payload, p, n))
            e = tkb_fail(err, TKB_REFERENCE_ERROR, "6.3", "tps_id", base,
                         "tps_id %u of track %u repeated with different content", t->tps_id,
                         track_id);
        tkb_tps_clear(t);
        free(t);
        return e;
    }
    if (!e && tr)    /* step 6: consistency within the track */
        for (int j = 0; j < 256 && !e; j++) {
            tkb_tps *o = tr->tps[j];
            if (!o)
                continue;
            const char *what = o->track_kind != t->track_kind ? "track_kind"
                               : o->num_channels != t->num_channels ? "num_channels"
                               : o->output_dtype != t->output_dtype ? "output_dtype" : NULL;
            if (what)
                e = tkb_fail(err, TKB_REFERENCE_ERROR, "6.3", what, base,
                             "parameter sets of track %u disagree on %s", track_id, what);
        }
    if (!e && !tr) {
        tr = d->tracks[track_id] = calloc(1, sizeof *tr);
        if (!tr)
            e = tkb_fail(err, TKB_NOMEM, "6.3", "track_parameter_set", -1, "out of memory");
        else
            d->num_tracks++;
    }
    if (e) {
        tkb_tps_clear(t);
        free(t);
        return e;
    }
    tr->tps[t->tps_id] = t;     /* step 7: accepted */
    return 0;
}

/* clause 6.7.1 */
static int process_transform(tkb_decoder *d, const uint8_t *p, size_t n, int64_t base,
                             tkb_error *err)
{
    tkb_reader r;
    rd_init(&r, p, n, base, "6.7", err);
    uint32_t id, source;
    CK(rd_u8(&r, "transform_id", &id));
    CK(rd_u8(&r, "transform_source", &source));
    if (source > 1)
        return tkb_fail(err, TKB_FORMAT_ERROR, "6.7", "transform_source", base + 1,
                        "transform_source %u is reserved", source);
    tkb_transform *t = calloc(1, sizeof *t);
    if (!t)
        return tkb_fail(err, TKB_NOMEM, "6.7", "transform", -1, "out of memory");
    int e = 0;
    const uint8_t *digest = NULL;
    if (source == 1) {
        e = rd_bytes(&r, 32, "transform_digest", &digest);
    } else {
        e = tkb_parse_transform_data(&r, d->level, t);
    }
    if (!e && rd_remaining_bits(&r))
        e = tkb_fail(err, TKB_FORMAT_ERROR, "6.2", "unit_payload", rd_offset(&r),
                     "%zu bytes left over after the transform", n - rd_byte_pos(&r));
    if (!e && source == 1) {   /* step 2: the application's transform */
        const supplied *s = NULL;
        for (size_t i = 0; i < d->nsup && !s; i++)
            if (!memcmp(d->sup[i].digest, digest, 32))
                s = &d->sup[i];
        if (!s) {
            char hex[65];
            for (int i = 0; i < 32; i++)
                snprintf(hex + 2 * i, 3, "%02x", digest[i]);
            e = tkb_fail(err, TKB_REFERENCE_ERROR, "6.7", "transform_digest", base + 2,
                         "the stream needs transform sha256 %s, which is not supplied", hex);
        } else {
            tkb_reader r2;
            rd_init(&r2, s->data, s->n, base + 2, "6.7", err);
            e = tkb_parse_transform_data(&r2, d->level, t);
        }
    }
    if (!e && d->transforms[id]) {   /* step 3: repetition */
        if (d->transforms[id]->payload_len != n || memcmp(d->transforms[id]->payload, p, n))
            e = tkb_fail(err, TKB_REFERENCE_ERROR, "6.7", "transform_id", base,
                         "transform_id %u repeated with different content", id);
        tkb_transform_clear(t);
        free(t);
        return e;
    }
    if (!e) {
        t->payload = malloc(n ? n : 1);
        if (!t->payload)
            e = tkb_fail(err, TKB_NOMEM, "6.7", "transform", -1, "out of memory");
        else {
            memcpy(t->payload, p, n);
            t->payload_len = n;
        }
    }
    if (e) {
        tkb_transform_clear(t);
        free(t);
        return e;
    }
    d->transforms[id] = t;    /* step 4: accepted */
    return 0;
}

/* clause 6.5: UTF-8 of RFC 3629 */
static int utf8_ok(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) { i++; continue; }
        size_t len;
        uint32_t cp;
        if (c >= 0xC2 && c <= 0xDF) { len = 2; cp = c & 0x1F; }
        else if (c >= 0xE0 && c <= 0xEF) { len = 3; cp = c & 0x0F; }
        else if (c >= 0xF0 && c <= 0xF4) { len = 4; cp = c & 0x07; }
        else return 0;
        if (n - i < len)
            return 0;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += len;
    }
    return 1;
}

typedef struct keyref { const uint8_t *p; size_t n; } keyref;

static int keycmp(const void *a, const void *b)
{
    const keyref *x = a, *y = b;
    size_t n = x->n < y->n ? x->n : y->n;
    int c = memcmp(x->p, y->p, n);
    return c ? c : (x->n > y->n) - (x->n < y->n);
}

static int process_metadata(const uint8_t *p, size_t n, int64_t base, tkb_error *err)
{
    tkb_reader r;
    rd_init(&r, p, n, base, "6.5", err);
    uint32_t count;
    CK(rd_u16(&r, "num_entries", &count));
    keyref *keys = malloc((count + 1) * sizeof *keys);
    if (!keys)
        return tkb_fail(err, TKB_NOMEM, "6.5", "metadata", -1, "out of memory");
    int e = 0, bad = 0;
    for (uint32_t i = 0; i < count && !e; i++) {
        uint32_t kl, vl;
        const uint8_t *k, *v;
        if ((e = rd_u8(&r, "key_length", &kl)) || (e = rd_bytes(&r, kl, "key", &k)) ||
            (e = rd_u32(&r, "value_length", &vl)) || (e = rd_bytes(&r, vl, "value", &v)))
            break;
        keys[i].p = k;
        keys[i].n = kl;
        /* constraints 1 and 3 (after parsing; every one is a TKBFormatError of 6.5) */
        if (!utf8_ok(k, kl) || !utf8_ok(v, vl) || kl == 0)
            bad = 1;
    }
    if (!e && rd_remaining_bits(&r))
        e = tkb_fail(err, TKB_FORMAT_ERROR, "6.2", "unit_payload", rd_offset(&r),
                     "%zu bytes left over after the metadata", n - rd_byte_pos(&r));
    if (!e && !bad && count > 1) {   /* constraint 2: a repeated key */
        qsort(keys, count, sizeof *keys, keycmp);
        for (uint32_t i = 1; i < count; i++)
            if (!keycmp(&keys[i - 1], &keys[i]))
                bad = 1;
    }
    if (!e && bad)
        e = tkb_fail(err, TKB_FORMAT_ERROR, "6.5", "metadata_entry", base,
                     "a metadata key or value is not UTF-8, a key repeats, or a key is empty");
    free(keys);
    return e;
}

static int process_index(tkb_decoder *d, uint32_t track_id, const uint8_t *p, size_t n,
                         int64_t base, tkb_error *err)
{
    tkb_reader r;
    rd_init(&r, p, n, base, "6.6", err);
    uint32_t count;
    CK(rd_u32(&r, "num_entries", &count));
    if ((uint64_t)count * 12 > n - 4)   /* clause 6.6: before allocating the entries */
        return tkb_fail(err, TKB_TRUNCATED_ERROR, "6.6", "index_entry", rd_offset(&r),
                        "%u index entries need %llu bytes, %zu remain", count,
                        (unsigned long long)count * 12, n - 4);
    if (n - 4 > (uint64_t)count * 12)
        return tkb_fail(err, TKB_FORMAT_ERROR, "6.2", "unit_payload", base + 4 + (int64_t)count * 12,
                        "bytes left over after the index");
    if (d->nidx + count > d->capidx) {
        size_t cap = d->capidx ? d->capidx : 64;
        while (cap < d->nidx + count)
            cap *= 2;
        index_entry *x = realloc(d->idx, cap * sizeof *x);
        if (!x)
            return tkb_fail(err, TKB_NOMEM, "6.6", "index", -1, "out of memory");
        d->idx = x;
        d->capidx = cap;
    }
    for (uint32_t i = 0; i < count; i++) {   /* accepted: entries taken together */
        const uint8_t *q = p + 4 + 12 * (size_t)i;
        index_entry *x = &d->idx[d->nidx++];
        x->track_id = track_id;
        x->frame_number = le32(q);
        x->offset = (uint64_t)le32(q + 4) | (uint64_t)le32(q + 8) << 32;
    }
    return 0;
}

static void frame_release(tkb_frame *f)
{
    if (!f)
        return;
    if (f->lookup)
        tkb_lookup_free(f->lookup);
    free(f->owned);
    free(f->pos);
    free(f->stand_in);
    free(f);
}

void tkb_frame_free(tkb_frame *f) { frame_release(f); }

const tkb_frame_info *tkb_frame_get_info(const tkb_frame *f) { return &f->info; }

/* clause 6.4.1 steps 1 - 4 */
static int process_frame(tkb_decoder *d, uint32_t track_id, const uint8_t *p, size_t n,
                         int64_t base, size_t rec, tkb_frame **out, tkb_error *err)
{
    if (n == 0)
        return tkb_fail(err, TKB_TRUNCATED_ERROR, "6.4", "tps_id", base, "empty frame unit");
    track *tr = d->tracks[track_id];
    tkb_tps *t = tr ? tr->tps[p[0]] : NULL;
    if (!t)
        return tkb_fail(err, TKB_REFERENCE_ERROR, "6.4", "tps_id", base,
                        "frame refers to tps_id %u of track %u, which has not been accepted",
                        p[0], track_id);
    tkb_frame *f = calloc(1, sizeof *f);
    if (!f)
        return tkb_fail(err, TKB_NOMEM, "6.4", "frame", -1, "out of memory");
    if (d->borrowed) {
        f->payload = p;
    } else {
        f->owned = malloc(n);
        if (!f->owned) {
            free(f);
            return tkb_fail(err, TKB_NOMEM, "6.4", "frame", -1, "out of memory");
        }
        memcpy(f->owned, p, n);
        f->payload = f->owned;
    }
    f->payload_len = n;
    f->base = base;
    f->tps = t;
    f->dec = d;
    f->unit_record = rec;
    f->info.track_id = track_id;
    f->info.tps_id = p[0];
    f->info.offset = (uint64_t)base - 8;
    f->simd = d->simd;
    f->threads = d->opt.threads;
    int e = tkb_parse_frame(f, d->level, d->info.profile_idc, err);
    if (!e) {
        f->lookup = get_lookup(d, t);
        if (!f->lookup)
            e = tkb_fail(err, TKB_NOMEM, "7.3.1", "freq_table", -1, "out of memory");
        else
            f->lookup->refs++;
    }
    if (e) {
        frame_release(f);
        return e;
    }
    *out = f;
    return 0;
}

static int stop_with(tkb_decoder *d, tkb_event *ev, int fatal)
{
    ev->kind = TKB_EV_ERROR;
    ev->error.fatal = fatal;
    if (fatal || d->opt.strict) {
        d->stopped = 1;
        ahead_end(d);
    }
    return TKB_EV_ERROR;
}

/* clause 6.1 */
static int read_header(tkb_decoder *d, tkb_event *ev)
{
    tkb_error *err = &ev->error;
    const uint8_t *b = d->buf;
    size_t n = d->len;
    if (n < 4) {
        if (!d->eof)
            return TKB_EV_NEED_DATA;
        tkb_fail(err, TKB_TRUNCATED_ERROR, "6.1", "magic", 0, "stream shorter than its magic number");
        return stop_with(d, ev, 1);
    }
    if (le32(b) != MAGIC) {
        tkb_fail(err, TKB_FORMAT_ERROR, "6.1", "magic", 0, "magic 0x%08x is not a TKB stream", le32(b));
        return stop_with(d, ev, 1);
    }
    if (n < 16) {
        if (!d->eof)
            return TKB_EV_NEED_DATA;
        tkb_fail(err, TKB_TRUNCATED_ERROR, "6.1", "stream_header", (int64_t)n,
                 "stream shorter than its 16-byte header");
        return stop_with(d, ev, 1);
    }
    if (tkb_crc32c(b, 12) != le32(b + 12)) {
        tkb_fail(err, TKB_CRC_ERROR, "6.1", "header_crc32c", 12, "stream header crc32c mismatch");
        return stop_with(d, ev, 1);
    }
    if (b[4] != 1) {
        tkb_fail(err, TKB_UNSUPPORTED_ERROR, "6.1", "version_major", 4,
                 "version_major %u (this decoder: 1)", b[4]);
        return stop_with(d, ev, 1);
    }
    if (le32(b + 8)) {
        tkb_fail(err, TKB_FORMAT_ERROR, "6.1", "reserved_zero_32bits", 8, "reserved_zero_32bits is not zero");
        return stop_with(d, ev, 1);
    }
    if (!tkb_profile_known(b[6])) {
        tkb_fail(err, TKB_UNSUPPORTED_ERROR, "8.1", "profile_idc", 6, "profile_idc %u is not a profile", b[6]);
        return stop_with(d, ev, 1);
    }
    d->level = tkb_get_level(b[7]);
    if (!d->level) {
        tkb_fail(err, TKB_UNSUPPORTED_ERROR, "8.2", "level_idc", 7, "level_idc %u is not a level", b[7]);
        return stop_with(d, ev, 1);
    }
    d->info.version_major = b[4];
    d->info.version_minor = b[5];
    d->info.profile_idc = b[6];
    d->info.level_idc = b[7];
    d->header_done = 1;
    d->pos = 16;
    return -1;
}

static int add_record(tkb_decoder *d, uint64_t offset, uint32_t track_id)
{
    if (d->nrec == d->caprec) {
        size_t cap = d->caprec ? 2 * d->caprec : 256;
        frame_record *r = realloc(d->rec, cap * sizeof *r);
        if (!r)
            return TKB_NOMEM;
        d->rec = r;
        d->caprec = cap;
    }
    frame_record *r = &d->rec[d->nrec++];
    r->offset = offset;
    r->track_id = track_id;
    r->frame_number = 0;
    r->decoded = 0;
    return 0;
}

/* clause 6.6: after the last unit (records are in increasing offset order) */
static int index_check_next(tkb_decoder *d, tkb_event *ev)
{
    while (d->idx_next < d->nidx) {
        const index_entry *x = &d->idx[d->idx_next++];
        size_t lo = 0, hi = d->nrec;
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (d->rec[mid].offset < x->offset)
                lo = mid + 1;
            else
                hi = mid;
        }
        int ok = lo < d->nrec && d->rec[lo].offset == x->offset && d->rec[lo].track_id == x->track_id;
        if (ok && d->rec[lo].decoded)
            ok = d->rec[lo].frame_number == x->frame_number;
        if (!ok) {
            tkb_fail(&ev->error, TKB_FORMAT_ERROR, "6.6", "unit_offset", -1,
                     "index entry (frame %u, offset %llu) of track %u does not point at that "
                     "frame unit", x->frame_number, (unsigned long long)x->offset, x->track_id);
            return stop_with(d, ev, 0);
        }
    }
    ev->kind = TKB_EV_END;
    d->stopped = 1;
    return TKB_EV_END;
}

int tkb_next(tkb_decoder *d, tkb_event *ev)
{
    memset(ev, 0, sizeof *ev);
    if (d->stopped) {
        ev->kind = TKB_EV_END;
        return TKB_EV_END;
    }
    if (!d->header_done) {
        int r = read_header(d, ev);
        if (r >= 0)
            return r;
    }
    if (d->index_phase)
        return index_check_next(d, ev);
    tkb_error *err = &ev->error;
    uint64_t at = d->pos - d->buf_off;      /* the unit, in buf */
    uint64_t left = d->len - at;
    if (left == 0 && d->eof) {              /* the stream ends with a unit (clause 5.1) */
        d->index_phase = 1;
        return index_check_next(d, ev);
    }
    /* clause 6.2, steps 1 - 3: framing (fatal errors) */
    if (left < 8) {
        if (!d->eof)
            return TKB_EV_NEED_DATA;
        tkb_fail(err, TKB_TRUNCATED_ERROR, "6.2", "unit_header", (int64_t)d->pos,
                 "%llu bytes left, a unit header needs 8", (unsigned long long)left);
        return stop_with(d, ev, 1);
    }
    const uint8_t *u = d->buf + at;
    uint32_t size = le32(u);
    uint32_t type = u[4], track_id = u[5], essential = u[6], reserved = u[7];
    if (size > d->level->max_unit_size) {
        tkb_check_limit(size, d->level->max_unit_size, "unit_size", (int64_t)d->pos, d->level, err);
        return stop_with(d, ev, 1);
    }
    if (left - 8 - 4 < (uint64_t)size || left < 12) {
        if (!d->eof)
            return TKB_EV_NEED_DATA;
        tkb_fail(err, TKB_TRUNCATED_ERROR, "6.2", "unit_size", (int64_t)d->pos,
                 "unit of %u payload bytes ends past the stream", size);
        return stop_with(d, ev, 1);
    }
    uint64_t offset = d->pos;
    d->pos += 12 + (uint64_t)size;          /* the next unit, whatever happens to this one */
    ev->unit_type = (int)type;
    ev->track_id = (int)track_id;
    ev->offset = offset;
    ev->payload = u + 8;
    ev->payload_len = size;
    size_t rec = 0;
    if (type == 2) {
        if (add_record(d, offset, track_id)) {
            tkb_fail(err, TKB_NOMEM, "6.2", "unit", -1, "out of memory");
            return stop_with(d, ev, 1);
        }
        rec = d->nrec - 1;
    }
    const uint8_t *p = u + 8;
    int64_t base = (int64_t)offset + 8;
    /* steps 4 - 8: errors confined to the unit (clause 9.10) */
    if (!crc_known(d, offset, size) && tkb_crc32c(u, 8 + (size_t)size) != le32(u + 8 + size)) {
        tkb_fail(err, TKB_CRC_ERROR, "6.2", "unit_crc32c", (int64_t)offset, "unit crc32c mismatch");
        return stop_with(d, ev, 0);
    }
    if (reserved || essential > 1) {
        tkb_fail(err, TKB_FORMAT_ERROR, "6.2", "unit_header", (int64_t)offset,
                 "reserved_zero_8bits or unit_essential out of range");
        return stop_with(d, ev, 0);
    }
    int high = d->info.profile_idc == TKB_PROFILE_HIGH;
    if (type == 0 || type > 5 || (type == 5 && !high)) {
        if (type == 0 || essential) {
            tkb_fail(err, TKB_UNSUPPORTED_ERROR, "6.2", "unit_type", (int64_t)offset,
                     "essential unit_type %u is unknown", type);
            return stop_with(d, ev, 0);
        }
        ev->kind = TKB_EV_UNIT;       /* skipped (clause 6.2) */
        return TKB_EV_UNIT;
    }
    if ((track_id == 255 && type != 3 && type != 5) || (type == 5 && track_id != 255)) {
        tkb_fail(err, TKB_FORMAT_ERROR, "6.2", "track_id", (int64_t)offset,
                 "track_id 255 is for stream-level metadata and transforms only");
        return stop_with(d, ev, 0);
    }
    int e = 0;
    switch (type) {
    case 1: e = process_tps(d, track_id, p, size, base, err); break;
    case 3: e = process_metadata(p, size, base, err); break;
    case 4: e = process_index(d, track_id, p, size, base, err); break;
    case 5: e = process_transform(d, p, size, base, err); break;
    case 2: {
        tkb_frame *f = NULL;
        e = process_frame(d, track_id, p, size, base, rec, &f, err);
        if (!e) {
            ev->kind = TKB_EV_FRAME;
            ev->frame = f->info;
            ev->frame_handle = f;
            return TKB_EV_FRAME;
        }
        break;
    }
    }
    if (e) {
        if (e == TKB_NOMEM)
            return stop_with(d, ev, 1);
        return stop_with(d, ev, 0);
    }
    ev->kind = TKB_EV_UNIT;
    return TKB_EV_UNIT;
}

/* ---- threads -------------------------------------------------------------------------- */

typedef struct pool {
    tkb_task_fn fn;
    void *ctx;
    int n;
    atomic_int next;
    atomic_int ids;
} pool;

static void *worker(void *arg)
{
    pool *p = arg;
    int id = atomic_fetch_add(&p->ids, 1);
    for (;;) {
        int i = atomic_fetch_add(&p->next, 1);
        if (i >= p->n)
            break;
        p->fn(p->ctx, i, id);
    }
    return NULL;
}

void tkb_parallel_for(int n, int threads, tkb_task_fn fn, void *ctx)
{
    if (threads > n)
        threads = n;
    if (threads <= 1) {
        for (int i = 0; i < n; i++)
            fn(ctx, i, 0);
        return;
    }
    pool p = {fn, ctx, n, 0, 0};
    pthread_t th[64];
    int started = 0;
    if (threads > 65)
        threads = 65;
    for (int i = 0; i < threads - 1; i++)
        if (pthread_create(&th[started], NULL, worker, &p) == 0)
            started++;
    worker(&p);
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
}

/* ---- frame decoding (clause 6.4.1 step 5) ------------------------------------------ */

typedef struct chunk_job {
    const tkb_frame *f;
    uint16_t *sym;
    int parts;
    int *rc;
    tkb_error *errs;
} chunk_job;

static void chunk_task(void *ctx, int i, int worker)
{
    TKB_UNUSED(worker);
    chunk_job *j = ctx;
    uint64_t nc = j->f->num_chunks;
    uint64_t c0 = nc * (uint64_t)i / (uint64_t)j->parts, c1 = nc * (uint64_t)(i + 1) / (uint64_t)j->parts;
    j->rc[i] = tkb_rans_decode_chunks(j->f, c0, c1, j->sym, j->f->simd, &j->errs[i]);
}

static int decode_values(const tkb_frame *f, void *values, int threads, int worker,
                         tkb_error *err)
{
    const tkb_tps *t = f->tps;
    tkb_decoder *d = f->dec;
    if (f->num_symbols == 0)
        return 0;
    /* the symbols: num_symbols <= max_values (clause 7.1.4), in the worker's buffer */
    if (d->scratch_cap[worker] < f->num_symbols) {
        free(d->scratch[worker]);
        d->scratch[worker] = malloc((size_t)f->num_symbols * sizeof(uint16_t));
        d->scratch_cap[worker] = d->scratch[worker] ? f->num_symbols : 0;
    }
    uint16_t *sym = d->scratch[worker];
    if (!sym)
        return tkb_fail(err, TKB_NOMEM, "7.3", "rans_data", -1, "out of memory");
    int e;
    int parts = threads;
    if ((uint64_t)parts > f->num_chunks)
        parts = (int)f->num_chunks;
    if (parts <= 1 && t->coding_mode != 1 && f->num_chunks > 1 &&
        tkb_decode_quantized_fused(f, sym, values, f->simd) == 0)
        return 0;
    if (parts > 1) {
        int rc[64];
        tkb_error errs[64];
        if (parts > 64)
            parts = 64;
        chunk_job j = {f, sym, parts, rc, errs};
        tkb_parallel_for(parts, parts, chunk_task, &j);
        e = 0;
        for (int i = 0; i < parts && !e; i++)
            if (rc[i]) {
                e = rc[i];
                *err = errs[i];
            }
    } else {
        e = tkb_rans_decode_chunks(f, 0, f->num_chunks, sym, f->simd, err);
    }
    if (!e) {
        if (t->coding_mode == 1)
            e = tkb_reconstruct_split(f, sym, values, err);
        else
            e = tkb_reconstruct_quantized(f, sym, values, f->simd, threads, err);
    }
    return e;
}

static int frame_decode(tkb_frame *f, void *values, uint32_t *positions, uint32_t *stand_ins,
                        int dense, int threads, int worker, tkb_error *err)
{
    tkb_error e0;
    if (!err)
        err = &e0;
    int e;
    if (dense && f->info.num_kept != f->info.num_tokens) {
        void *tmp = malloc(f->info.values_bytes ? f->info.values_bytes : 1);
        if (!tmp)
            return tkb_fail(err, TKB_NOMEM, "7.8", "frame", -1, "out of memory");
        e = decode_values(f, tmp, threads, worker, err);
        if (!e)
            tkb_dense_fill(&f->info, f->pos, f->stand_in, f->info.has_merge_map, tmp, values);
        free(tmp);
    } else {
        e = decode_values(f, values, threads, worker, err);
    }
    if (e)
        return e;
    if (positions) {
        if (dense)
            for (uint32_t p = 0; p < f->info.num_tokens; p++)
                positions[p] = p;
        else
            memcpy(positions, f->pos, (size_t)f->info.num_kept * sizeof *positions);
    }
    if (stand_ins && !dense && f->info.has_merge_map)
        memcpy(stand_ins, f->stand_in,
               ((size_t)f->info.num_tokens - f->info.num_kept) * sizeof *stand_ins);
    return 0;
}

static void commit(tkb_decoder *d, tkb_frame *f, int e)
{
    if (!e && f->unit_record < d->nrec) {
        d->rec[f->unit_record].decoded = 1;
        d->rec[f->unit_record].frame_number = f->info.frame_number;
    }
    if (e && d->opt.strict)
        d->stopped = 1;
}

int tkb_frame_decode(tkb_decoder *d, tkb_frame *f, void *values, uint32_t *positions,
                     uint32_t *stand_ins, tkb_error *err)
{
    int e = frame_decode(f, values, positions, stand_ins, 0, d->opt.threads, 0, err);
    commit(d, f, e);
    return e;
}

int tkb_frame_decode_dense(tkb_decoder *d, tkb_frame *f, void *values, uint32_t *positions,
                           tkb_error *err)
{
    int e = frame_decode(f, values, positions, NULL, 1, d->opt.threads, 0, err);
    commit(d, f, e);
    return e;
}

typedef struct frames_job {
    tkb_frame *const *frames;
    void *const *values;
    uint32_t *const *positions, *const *stand_ins;
    const int *dense;
    tkb_error *errs;
    int *rc;
} frames_job;

/* The worker's own copy of the frame's slot lookup (clause 7.3.1), made by that worker
 * and kept until a frame with another lookup comes: with frames decoded in parallel, each
 * core's gathers (one per symbol) then read lines of its own rather than lines that both
 * cores hold.  On the 2-core dev VM the two-thread decode of the 64-frame stream was 2.5
 * to 10 % slower with the one shared lookup (per frame, against one thread, or against
 * two threads each decoding a stream of its own; most likely the shared lines, evicted
 * from a core's L2 by the frame's symbols, come back from the other core more slowly).
 * Same entries, so the same symbols.  Only for frames with at least as many bytes of
 * symbols as the lookup has (the copy costs no more than the frame's own symbol writes);
 * the shared lookup when the copy cannot be made. */
static const tkb_lookup *worker_lookup(tkb_decoder *d, const tkb_frame *f, int worker)
{
    const tkb_lookup *l = f->lookup;
    if (!l || d->opt.threads <= 1 || worker < 0 || worker > 64 ||
        f->num_symbols * sizeof(uint16_t) < (uint64_t)l->total * sizeof(uint32_t))
        return l;
    tkb_lookup *w = d->wlookup[worker];
    if (w && w->serial == l->serial)
        return w;
    tkb_lookup *c = tkb_copy_lookup(l);
    if (!c)
        return l;
    tkb_lookup_free(w);
    d->wlookup[worker] = c;
    return c;
}

static void frames_task(void *ctx, int i, int worker)
{
    frames_job *j = ctx;
    tkb_frame *f = j->frames[i];
    /* the frame as it is, but with the worker's lookup (nothing writes to the frame while
     * it is decoded; the caller's handle is untouched) */
    tkb_frame fw = *f;
    fw.lookup = (tkb_lookup *)worker_lookup(f->dec, f, worker);
    j->rc[i] = frame_decode(&fw, j->values[i], j->positions ? j->positions[i] : NULL,
                            j->stand_ins ? j->stand_ins[i] : NULL, j->dense ? j->dense[i] : 0, 1,
                            worker, &j->errs[i]);
}

int tkb_frames_decode(tkb_decoder *d, int n, tkb_frame *const *frames, void *const *values,
                      uint32_t *const *positions, uint32_t *const *stand_ins,
                      const int *dense, tkb_error *errs)
{
    if (n <= 0)
        return 0;
    int *rc = calloc((size_t)n, sizeof *rc);
    if (!rc)
        return TKB_NOMEM;
    if (n == 1) {
        rc[0] = frame_decode(frames[0], values[0], positions ? positions[0] : NULL,
                             stand_ins ? stand_ins[0] : NULL, dense ? dense[0] : 0,
                             d->opt.threads, 0, &errs[0]);
    } else {
        frames_job j = {frames, values, positions, stand_ins, dense, errs, rc};
        tkb_parallel_for(n, d->opt.threads, frames_task, &j);
    }
    int first = 0;
    for (int i = 0; i < n; i++) {
        if (!rc[i])
            errs[i].cls = TKB_OK;
        commit(d, frames[i], rc[i]);
        if (rc[i] && !first)
            first = rc[i];
    }
    free(rc);
    return first;
}

/* ---- canonical output (clause 10) ----------------------------------------------------- */

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}

size_t tkb_frame_record(const tkb_frame_info *fi, int dense, const void *values,
                        const uint32_t *positions, uint8_t *out)
{
    uint32_t rows = dense ? fi->num_tokens : fi->num_kept;
    size_t vbytes = (size_t)rows * fi->num_channels * fi->value_size;
    size_t total = 24 + 4 * (size_t)rows + vbytes;
    if (!out)
        return total;
    put32(out, fi->track_id);
    put32(out + 4, fi->frame_number);
    put32(out + 8, fi->num_tokens);
    put32(out + 12, rows);              /* clause 10.4: num_kept is num_tokens */
    put32(out + 16, fi->num_channels);
    put32(out + 20, (uint32_t)fi->dtype);
    uint8_t *q = out + 24;
    for (uint32_t k = 0; k < rows; k++, q += 4)
        put32(q, dense ? k : positions[k]);
    /* little-endian host: the values are already in canonical byte order */
    memcpy(q, values, vbytes);
    return total;
}
