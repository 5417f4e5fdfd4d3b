/* Presence map (spec clause 7.2): the kept positions pos[0 .. num_kept-1], increasing.
 *
 * Without grid: one bit token_present per position.  With grid: one bit prefix_present
 * per prefix token, then a quadtree over the grid read breadth first (node_present),
 * then alignment_zero_bits.  Running out of payload bits: TKBTruncatedError (clause 6.4,
 * the structure being parsed, clause 9.2). */
#include <stdlib.h>
#include "internal.h"

#define CK(x) do { int e_ = (x); if (e_) return e_; } while (0)

/* scratch: num_tokens bytes (a kept mark per grid position).  pos: num_tokens entries. */
int tkb_read_presence_map(tkb_reader *r, const tkb_tps *t, uint32_t num_tokens,
                          uint32_t *pos, uint32_t *num_kept, uint8_t *scratch)
{
    uint32_t nk = 0;
    uint64_t b;
    if (!t->grid_present) {
        if (rd_remaining_bits(r) < num_tokens) {
            /* read up to the end, then fail exactly where the map runs out */
            r->pos += rd_remaining_bits(r);
            return rd_bits(r, 1, "token_present", &b);
        }
        const uint8_t *p = r->p;
        uint64_t bit = r->pos;
        for (uint32_t q = 0; q < num_tokens; q++, bit++)
            if ((p[bit >> 3] >> (7 - (bit & 7))) & 1u)
                pos[nk++] = q;
        r->pos = bit;
        CK(rd_align(r, "alignment_zero_bits"));
        *num_kept = nk;
        return 0;
    }
    uint32_t P = t->num_prefix_tokens, H = t->grid_height, W = t->grid_width;
    for (uint32_t q = 0; q < P; q++) {
        CK(rd_bits(r, 1, "prefix_present", &b));
        if (b)
            pos[nk++] = q;
    }
    if ((uint64_t)H * W > 0) {
        size_t G = (size_t)H * W;
        /* node lists of two depths: at most one node per grid position each */
        uint32_t *cur = malloc(G * sizeof *cur), *next = malloc(G * sizeof *next);
        if (!cur || !next) {
            free(cur);
            free(next);
            return tkb_fail(r->err, TKB_NOMEM, "7.1", "presence_map", -1, "out of memory");
        }
        memset(scratch, 0, G);
        uint32_t S = 1, mx = H > W ? H : W;
        while (S < mx)
            S *= 2;
        size_t ncur = 1, nnext;
        cur[0] = 0;   /* top-left corner (y, x) as y * W + x */
        int e = 0;
        while (ncur > 0) {
            nnext = 0;
            size_t nones = 0;
            for (size_t i = 0; i < ncur; i++) {      /* the bits of this depth */
                e = rd_bits(r, 1, "node_present", &b);
                if (e)
                    goto done;
                if (b)
                    cur[nones++] = cur[i];           /* keep the 1-nodes, in order */
            }
            if (S == 1) {
                for (size_t i = 0; i < nones; i++)
                    scratch[cur[i]] = 1;
                break;
            }
            S /= 2;
            for (size_t i = 0; i < nones; i++) {
                uint32_t y = cur[i] / W, x = cur[i] % W;
                if (y < H && x < W) {
                    /* children in order: top-left, top-right, bottom-left, bottom-right;
                     * a child whose corner lies outside the grid is not visited */
                    next[nnext++] = y * W + x;
                    if (x + S < W)
                        next[nnext++] = y * W + x + S;
                    if (y + S < H) {
                        next[nnext++] = (y + S) * W + x;
                        if (x + S < W)
                            next[nnext++] = (y + S) * W + x + S;
                    }
                }
            }
            uint32_t *tmp = cur;
            cur = next;
            next = tmp;
            ncur = nnext;
        }
    done:
        free(cur);
        free(next);
        if (e)
            return e;
        for (size_t g = 0; g < G; g++)   /* kept grid positions, increasing */
            if (scratch[g])
                pos[nk++] = P + (uint32_t)g;
    }
    CK(rd_align(r, "alignment_zero_bits"));
    *num_kept = nk;
    return 0;
}
