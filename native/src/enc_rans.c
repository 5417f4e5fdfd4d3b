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
 * enc_sym below). */
#include "internal.h"
#include "../include/tkb_enc.h"
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
        for (uint64_t t = steps; t-- > 0 && rc == TKB_ENC_OK;) {
            uint64_t first = s0 + t * num_lanes;
            uint32_t lanes = (uint32_t)((cn - t * num_lanes) < num_lanes
                                        ? (cn - t * num_lanes) : num_lanes);
            size_t ci = (size_t)((first + lanes - 1) % c);     /* channel of the last */
            for (uint32_t l = lanes; l-- > 0; ci = ci ? ci - 1 : c - 1) {
                uint32_t s = sym[first + l];
                if (s >= alph) {
                    rc = TKB_ENC_NOT_IN_TABLE;
                    break;
                }
                const enc_sym *e = tab + chan_base[ci] + s;
                if (e->freq == 0) {
                    rc = TKB_ENC_NOT_IN_TABLE;
                    break;
                }
                uint32_t xs = x[l];
                const int renorm = (uint64_t)xs >= e->xmax;
                base[w - 1] = (uint16_t)(xs & 0xFFFFu);
                w -= (size_t)renorm;
                xs = renorm ? xs >> 16 : xs;
                uint32_t q = (uint32_t)(((uint64_t)xs * e->rcp) >> e->shift);
                int64_t r = (int64_t)xs - (int64_t)q * e->freq;
                const int under = r < 0;
                q -= (uint32_t)under;
                r += under ? (int64_t)e->freq : 0;
                x[l] = (q << prob_bits) + (uint32_t)r + e->cum;
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
    if (rc != TKB_ENC_OK)
        return rc;
    *num_words = out;
    return TKB_ENC_OK;
}
