/* Frequency tables and the slot lookup (spec clauses 6.3.5 and 7.3.1).
 *
 * For table t and slot v in 0 .. 2^prob_bits - 1: sym_t[v] = the s with
 * cum[s] <= v < cum[s] + freq[s].  The lookup stores, per slot, freq[s], v - cum[s]
 * (so that decode_symbol is one load, one multiply and one add) and s: packed in one
 * 32-bit word when they fit, else in two arrays.  It is built
 * only for tables whose frequencies sum to 2^prob_bits (clause 6.3.6 step 3), so every
 * slot has exactly one symbol. */
#include <stdatomic.h>
#include <stdlib.h>
#include "internal.h"

static atomic_ullong serials;       /* lookups built in this process */

tkb_lookup *tkb_build_lookup(const tkb_tps *t)
{
    uint32_t M = 1u << t->prob_bits, pb = t->prob_bits;
    size_t total = (size_t)t->num_tables * M;   /* <= max_tables * 2^15 (clause 7.1.4) */
    tkb_lookup *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    /* the packed form when 2 prob_bits + the bits of the largest symbol <= 32 */
    uint32_t maxsym = 0;
    for (uint32_t i = 0; i < t->num_tables; i++)
        if (t->tables[i].alphabet_size - 1 > maxsym)
            maxsym = t->tables[i].alphabet_size - 1;
    unsigned symbits = 0;
    while ((1u << symbits) <= maxsym)
        symbits++;
    int packed = 2 * pb + symbits <= 32;
    if (packed) {
        l->packed = malloc(total * sizeof *l->packed);
    } else {
        l->slot = malloc(total * sizeof *l->slot);
        l->sym = malloc((total + 2) * sizeof *l->sym);
    }
    if (packed ? !l->packed : (!l->slot || !l->sym)) {
        free(l->slot);
        free(l->sym);
        free(l->packed);
        free(l);
        return NULL;
    }
    for (uint32_t i = 0; i < t->num_tables; i++) {
        const tkb_freq_table *ft = &t->tables[i];
        size_t off = (size_t)i * M;
        uint32_t cum = 0;
        for (uint32_t s = 0; s < ft->alphabet_size; s++) {
            uint32_t f = ft->freq[s];
            if (packed) {
                /* sym << 2 prob_bits | (freq - 1) << prob_bits | (v - cum) */
                uint32_t *e = l->packed + off + cum;
                uint32_t hi = (s << (2 * pb)) | ((f - 1) << pb);
                for (uint32_t b = 0; b < f; b++)
                    e[b] = hi | b;
            } else {
                /* freq <= 2^15 and v - cum < 2^15: both fit 16 bits */
                uint32_t *e = l->slot + off + cum;
                uint16_t *y = l->sym + off + cum;
                for (uint32_t b = 0; b < f; b++) {
                    e[b] = (f << 16) | b;
                    y[b] = (uint16_t)s;
                }
            }
            cum += f;
        }
    }
    if (!packed)
        l->sym[total] = l->sym[total + 1] = 0;
    l->refs = 1;
    l->total = total;
    l->serial = (uint64_t)atomic_fetch_add(&serials, 1) + 1;
    return l;
}

/* A copy for one worker thread (the decoder's frames in parallel, decoder.c): the same
 * entries in memory that thread writes first, so the per-symbol gathers of each core
 * read lines that no other core holds */
tkb_lookup *tkb_copy_lookup(const tkb_lookup *l)
{
    tkb_lookup *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    *c = *l;
    c->slot = NULL;
    c->sym = NULL;
    c->packed = NULL;
    c->refs = 1;
    if (l->packed) {
        c->packed = malloc(l->total * sizeof *c->packed);
        if (c->packed)
            memcpy(c->packed, l->packed, l->total * sizeof *c->packed);
    } else {
        c->slot = malloc(l->total * sizeof *c->slot);
        c->sym = malloc((l->total + 2) * sizeof *c->sym);
        if (c->slot && c->sym) {
            memcpy(c->slot, l->slot, l->total * sizeof *c->slot);
            memcpy(c->sym, l->sym, (l->total + 2) * sizeof *c->sym);
        }
    }
    if (l->packed ? !c->packed : (!c->slot || !c->sym)) {
        free(c->slot);
        free(c->sym);
        free(c->packed);
        free(c);
        return NULL;
    }
    return c;
}

void tkb_lookup_free(tkb_lookup *l)
{
    if (l && --l->refs == 0) {
        free(l->slot);
        free(l->sym);
        free(l->packed);
        free(l);
    }
}
