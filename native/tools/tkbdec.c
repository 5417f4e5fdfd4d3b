/* tkbdec: the command-line decoder of libtkb, under the conformance contract of spec
 * clause 11.2 (conformance/README.md, conformance/adapters.py):
 *
 *   tkbdec [--strict] [--dense] [--threads N] [--transform FILE.tkbt|DIR]... IN [OUT]
 *   tkbdec --bench REPS [--threads N] [--scalar] IN      (timing: best of REPS, JSON)
 *
 * Writes the canonical output of clause 10.1 (--dense: clause 10.4) of the frames it
 * decodes to OUT (standard output when OUT is absent or "-").  Decodes resiliently
 * (clause 9.10) unless --strict.  Every error goes to standard error, one per line, with
 * its class name, clause, element and byte offset.  Transforms by reference (clause 6.7)
 * come from --transform, else from the folder $TKB_TRANSFORM_DIR (files H.tkbt).
 * Exit status: 0 no error; 1 the stream was rejected (a fatal error and no frame); 3 errors
 * were reported and frames decoded; 2 usage or I/O error. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include "../include/tkb.h"

static int usage(void)
{
    fprintf(stderr, "usage: tkbdec [--strict] [--dense] [--threads N] [--transform FILE|DIR]... "
                    "IN.tkb [OUT]\n       tkbdec --version\n");
    return 2;
}

static uint8_t *read_file(const char *path, size_t *n)
{
    FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
    if (!f)
        return NULL;
    size_t cap = 1 << 16, len = 0;
    uint8_t *b = malloc(cap);
    while (b) {
        if (len == cap) {
            uint8_t *nb = realloc(b, cap * 2);
            if (!nb) { free(b); b = NULL; break; }
            b = nb;
            cap *= 2;
        }
        size_t r = fread(b + len, 1, cap - len, f);
        len += r;
        if (r == 0)
            break;
    }
    if (f != stdin)
        fclose(f);
    *n = len;
    return b;
}

static void print_error(const tkb_error *e)
{
    fprintf(stderr, "tkbdec: %s: [clause %s] %s", tkb_class_name(e->cls), e->clause, e->message);
    if (e->element[0] || e->offset >= 0) {
        fprintf(stderr, " (");
        if (e->element[0])
            fprintf(stderr, "%s", e->element);
        if (e->offset >= 0)
            fprintf(stderr, "%sbyte %lld", e->element[0] ? ", " : "", (long long)e->offset);
        fprintf(stderr, ")");
    }
    fprintf(stderr, "\n");
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* --bench N: decode the whole stream N times (values into reused buffers, no output);
 * prints the best time of one pass, per stream and per frame. */
static int bench(const uint8_t *data, size_t n, tkb_options opt, int reps)
{
    double best = 1e30;
    int frames = 0;
    size_t bytes = 0;
    enum { B = 256 };
    void *pool[B] = {0};            /* output buffers, reused (as a data loader would) */
    size_t poolcap[B] = {0};
    for (int r = 0; r < reps; r++) {
        tkb_decoder *d = tkb_decoder_new(&opt);
        tkb_set_input(d, data, n);
        tkb_event ev;
        tkb_frame *fr[B];
        void *vals[B];
        tkb_error errs[B];
        int m = 0;
        double t0 = now();
        frames = 0;
        bytes = 0;
        for (;;) {
            int k = tkb_next(d, &ev);
            if (k == TKB_EV_FRAME) {
                fr[m] = ev.frame_handle;
                if (poolcap[m] < ev.frame.values_bytes + 1) {
                    free(pool[m]);
                    pool[m] = malloc(ev.frame.values_bytes + 1);
                    poolcap[m] = ev.frame.values_bytes + 1;
                }
                vals[m] = pool[m];
                bytes += ev.frame.values_bytes;
                m++;
            }
            if ((k == TKB_EV_END || m == B || (m && opt.threads <= 1)) && m) {
                tkb_frames_decode(d, m, fr, vals, NULL, NULL, NULL, errs);
                for (int i = 0; i < m; i++) {
                    if (errs[i].cls) {
                        fprintf(stderr, "tkbdec: %s\n", errs[i].message);
                        return 1;
                    }
                    tkb_frame_free(fr[i]);
                }
                frames += m;
                m = 0;
            }
            if (k == TKB_EV_END || k == TKB_EV_NEED_DATA)
                break;
            if (k == TKB_EV_ERROR) {
                fprintf(stderr, "tkbdec: %s: %s\n", tkb_class_name(ev.error.cls), ev.error.message);
                return 1;
            }
        }
        double t = now() - t0;
        tkb_decoder_free(d);
        if (t < best)
            best = t;
    }
    printf("{\"frames\": %d, \"threads\": %d, \"simd\": \"%s\", \"best_ms\": %.4f, "
           "\"ms_per_frame\": %.4f, \"output_bytes\": %zu, \"gb_per_s\": %.3f}\n",
           frames, opt.threads, opt.simd == 1 ? "scalar" : tkb_simd_name(), best * 1e3,
           frames ? best * 1e3 / frames : 0.0, bytes, bytes / best / 1e9);
    return 0;
}

static int add_transform_path(tkb_decoder *d, const char *path, int dir_only)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return dir_only ? 0 : (fprintf(stderr, "tkbdec: %s: %s\n", path, strerror(errno)), 2);
    if (S_ISDIR(st.st_mode)) {
        DIR *dir = opendir(path);
        if (!dir)
            return 0;
        struct dirent *de;
        while ((de = readdir(dir))) {
            size_t l = strlen(de->d_name);
            if (l > 5 && !strcmp(de->d_name + l - 5, ".tkbt")) {
                char full[4096];
                snprintf(full, sizeof full, "%s/%s", path, de->d_name);
                int r = add_transform_path(d, full, 0);
                if (r) {
                    closedir(dir);
                    return r;
                }
            }
        }
        closedir(dir);
        return 0;
    }
    size_t n;
    uint8_t *b = read_file(path, &n);
    if (!b) {
        fprintf(stderr, "tkbdec: %s: %s\n", path, strerror(errno));
        return 2;
    }
    tkb_error err;
    int r = tkb_add_transform_tkbt(d, b, n, &err);
    free(b);
    if (r) {
        fprintf(stderr, "tkbdec: %s is not a transform file: ", path);
        print_error(&err);
        return 2;
    }
    return 0;
}

typedef struct item {
    tkb_frame *frame;        /* or NULL: an error */
    tkb_error error;
    void *values;
    uint32_t *positions;
} item;

int main(int argc, char **argv)
{
    tkb_options opt = {0, 1, 0};
    int dense = 0, reps = 0;
    const char *in = NULL, *out = NULL;
    const char *tpaths[64];
    int ntp = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--version")) {
            printf("%s, %s\n", tkb_version(), tkb_simd_name());
            return 0;
        } else if (!strcmp(a, "--strict")) {
            opt.strict = 1;
        } else if (!strcmp(a, "--dense")) {
            dense = 1;
        } else if (!strcmp(a, "--scalar")) {
            opt.simd = 1;
        } else if (!strcmp(a, "--bench") && i + 1 < argc) {
            reps = atoi(argv[++i]);
        } else if (!strcmp(a, "--threads") && i + 1 < argc) {
            opt.threads = atoi(argv[++i]);
        } else if (!strcmp(a, "--transform") && i + 1 < argc) {
            if (ntp < 64)
                tpaths[ntp++] = argv[++i];
        } else if (!strcmp(a, "") ) {
            continue;                    /* an empty word ({dense} removed) */
        } else if (a[0] == '-' && a[1]) {
            return usage();
        } else if (!in) {
            in = a;
        } else if (!out) {
            out = a;
        } else {
            return usage();
        }
    }
    if (!in)
        return usage();
    size_t n;
    uint8_t *data = read_file(in, &n);
    if (!data) {
        fprintf(stderr, "tkbdec: %s: %s\n", in, strerror(errno));
        return 2;
    }
    tkb_decoder *d = tkb_decoder_new(&opt);
    if (!d) {
        fprintf(stderr, "tkbdec: out of memory\n");
        return 2;
    }
    if (ntp) {
        for (int i = 0; i < ntp; i++)
            if (add_transform_path(d, tpaths[i], 0))
                return 2;
    } else if (getenv("TKB_TRANSFORM_DIR")) {
        if (add_transform_path(d, getenv("TKB_TRANSFORM_DIR"), 1))
            return 2;
    }
    if (reps > 0)
        return bench(data, n, opt, reps);
    tkb_set_input(d, data, n);
    FILE *fo = (!out || !strcmp(out, "-")) ? stdout : fopen(out, "wb");
    if (!fo) {
        fprintf(stderr, "tkbdec: %s: %s\n", out, strerror(errno));
        return 2;
    }
    int batch = opt.threads > 1 ? 4 * opt.threads : 1;
    item *q = calloc((size_t)batch + 1, sizeof *q);
    int nq = 0, nframes_q = 0;
    int errors = 0, fatal = 0, frames_out = 0, stop = 0, ending = 0;
    tkb_event ev;
    for (;;) {
        int flush = ending || nq >= batch || tkb_units_done(d);
        if (flush && nq) {
            tkb_frame *fr[nq];
            void *vals[nq];
            uint32_t *poss[nq];
            int dn[nq];
            tkb_error errs[nq];
            int m = 0;
            for (int i = 0; i < nq; i++)
                if (q[i].frame) {
                    fr[m] = q[i].frame;
                    vals[m] = q[i].values;
                    poss[m] = q[i].positions;
                    dn[m] = dense;
                    m++;
                }
            tkb_frames_decode(d, m, fr, vals, poss, NULL, dn, errs);
            m = 0;
            for (int i = 0; i < nq; i++) {
                if (q[i].frame) {
                    tkb_error *e = &errs[m++];
                    if (!stop) {
                        if (e->cls == TKB_OK) {
                            const tkb_frame_info *fi = tkb_frame_get_info(q[i].frame);
                            size_t sz = tkb_frame_record(fi, dense, q[i].values, q[i].positions, NULL);
                            uint8_t *rb = malloc(sz);
                            if (rb) {
                                tkb_frame_record(fi, dense, q[i].values, q[i].positions, rb);
                                fwrite(rb, 1, sz, fo);
                                free(rb);
                            }
                            frames_out++;
                        } else {
                            print_error(e);
                            errors++;
                            if (opt.strict)
                                stop = 1;
                        }
                    }
                    tkb_frame_free(q[i].frame);
                    free(q[i].values);
                    free(q[i].positions);
                } else if (!stop) {
                    print_error(&q[i].error);
                    errors++;
                    if (q[i].error.fatal)
                        fatal = 1;
                    if (opt.strict || q[i].error.fatal)
                        stop = 1;
                }
            }
            nq = nframes_q = 0;
        }
        if (ending || stop)
            break;
        int k = tkb_next(d, &ev);
        if (k == TKB_EV_END || k == TKB_EV_NEED_DATA)
            break;
        if (k == TKB_EV_UNIT)
            continue;
        item *it = &q[nq++];
        memset(it, 0, sizeof *it);
        if (k == TKB_EV_ERROR) {
            it->error = ev.error;
            if (ev.error.fatal || opt.strict)
                ending = 1;     /* flush what is queued, then stop */
            continue;
        }
        const tkb_frame_info *fi = &ev.frame;
        size_t rows = dense ? fi->num_tokens : fi->num_kept;
        it->frame = ev.frame_handle;
        it->values = malloc((dense ? fi->dense_bytes : fi->values_bytes) + 1);
        it->positions = malloc(rows * 4 + 4);
        if (!it->values || !it->positions) {
            fprintf(stderr, "tkbdec: out of memory\n");
            return 2;
        }
        nframes_q++;
    }
    if (fo != stdout)
        fclose(fo);
    else
        fflush(stdout);
    tkb_decoder_free(d);
    free(q);
    free(data);
    if (!errors)
        return 0;
    return fatal && !frames_out ? 1 : 3;
}
