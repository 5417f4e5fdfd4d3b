/* libFuzzer harness of libtkb: any input either decodes or is rejected with a clause 9
 * error, with no crash, no undefined behaviour, no leak and bounded memory.
 *
 *   clang -fsanitize=fuzzer,address,undefined native/fuzz/fuzz_decode.c native/src/ALL.c
 *
 * The first input byte selects the mode (strict or resilient, dense or not, threads, the
 * scalar or the fast path, streaming in small pieces); the rest is the stream.  A fixed
 * transform is supplied so that transforms by reference are reached (clause 6.7).
 * `make fuzz-native` runs it with the conformance streams as the seed corpus. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "../include/tkb.h"

/* transform_data() of the worked example of clause 7.6.3 (D = 3, K = 2) */
static const uint8_t EXAMPLE[21] = {0x03, 0, 0, 0, 0x02, 0, 0, 0, 0x04, 0x06, 0x08, 0x07,
                                    0x40, 0xe0, 0x00, 0x5a, 0xb4, 0x02, 0x0c, 0x0b, 0x40};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t mode = data[0];
    data++;
    size--;
    tkb_options o = {mode & 1, (mode & 2) ? 2 : 1, (mode & 4) ? 1 : 0};
    int dense = (mode >> 3) & 1, streaming = (mode >> 4) & 1;
    tkb_decoder *d = tkb_decoder_new(&o);
    if (!d)
        return 0;
    tkb_add_transform_data(d, EXAMPLE, sizeof EXAMPLE, NULL);
    size_t fed = 0;
    if (!streaming)
        tkb_set_input(d, data, size);
    tkb_event ev;
    for (int guard = 0; guard < 100000; guard++) {
        int k = tkb_next(d, &ev);
        if (k == TKB_EV_NEED_DATA) {
            if (fed >= size) {
                tkb_feed_end(d);
                continue;
            }
            size_t n = 1 + (mode >> 5) * 7;
            if (n > size - fed)
                n = size - fed;
            tkb_feed(d, data + fed, n);
            fed += n;
            continue;
        }
        if (k == TKB_EV_END)
            break;
        if (k == TKB_EV_FRAME) {
            const tkb_frame_info *fi = &ev.frame;
            size_t vb = dense ? fi->dense_bytes : fi->values_bytes;
            size_t rows = dense ? fi->num_tokens : fi->num_kept;
            void *v = malloc(vb + 1);
            uint32_t *p = malloc(rows * 4 + 4);
            uint32_t *s = malloc(((size_t)fi->num_tokens - fi->num_kept) * 4 + 4);
            tkb_error err;
            int e = dense ? tkb_frame_decode_dense(d, ev.frame_handle, v, p, &err)
                          : tkb_frame_decode(d, ev.frame_handle, v, p, s, &err);
            if (!e) {
                size_t n = tkb_frame_record(fi, dense, v, p, NULL);
                uint8_t *rec = malloc(n);
                tkb_frame_record(fi, dense, v, p, rec);
                free(rec);
            } else if (e < TKB_FORMAT_ERROR || e > TKB_VALUE_ERROR) {
                abort();      /* only stream errors are expected */
            }
            free(v);
            free(p);
            free(s);
            tkb_frame_free(ev.frame_handle);
        } else if (k == TKB_EV_ERROR) {
            if (ev.error.cls < TKB_FORMAT_ERROR || ev.error.cls > TKB_VALUE_ERROR)
                abort();
        }
    }
    tkb_decoder_free(d);
    return 0;
}
