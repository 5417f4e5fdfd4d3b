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
 * once); then x = (x div f) << prob_bits + x mod f + cum. */
#include "internal.h"
#include "../include/tkb_enc.h"

#define RANS_L 65536u

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
    const uint64_t chunk = (uint64_t)num_lanes * lane_steps;
    const uint64_t chunks = (n + chunk - 1) / chunk;
    const unsigned shift = 32 - prob_bits;
    uint32_t x[4096];
    size_t out = 0;
    for (uint64_t ch = 0; ch < chunks; ch++) {
        const uint64_t s0 = ch * chunk;
        const uint64_t cn = (n - s0 < chunk) ? n - s0 : chunk;        /* symbols */
        const uint32_t active = cn < num_lanes ? (uint32_t)cn : num_lanes;
        const uint64_t steps = (cn + num_lanes - 1) / num_lanes;
        for (uint32_t l = 0; l < active; l++)
            x[l] = RANS_L;
        /* renormalisation words go after the 2 * active state words, written backwards
         * from the end of the chunk's span (at most one word per symbol) */
        uint16_t *base = words + out + 2 * (size_t)active;
        size_t w = cn;                       /* next free slot, counting down */
        for (uint64_t t = steps; t-- > 0;) {
            uint64_t first = s0 + t * num_lanes;
            uint32_t lanes = (uint32_t)((cn - t * num_lanes) < num_lanes
                                        ? (cn - t * num_lanes) : num_lanes);
            size_t ci = (size_t)((first + lanes - 1) % c);     /* channel of the last */
            for (uint32_t l = lanes; l-- > 0; ci = ci ? ci - 1 : c - 1) {
                uint64_t i = first + l;
                uint32_t s = sym[i];
                if (s >= alph)
                    return TKB_ENC_NOT_IN_TABLE;
                uint32_t f = freq[chan_base[ci] + s];
                if (f == 0)
                    return TKB_ENC_NOT_IN_TABLE;
                uint32_t xs = x[l];
                if ((uint64_t)xs >= ((uint64_t)f << shift)) {
                    base[--w] = (uint16_t)(xs & 0xFFFFu);
                    xs >>= 16;
                }
                x[l] = ((xs / f) << prob_bits) + xs % f + cum[chan_base[ci] + s];
            }
        }
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
    *num_words = out;
    return TKB_ENC_OK;
}
