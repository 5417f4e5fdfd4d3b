/* libtkb encoder core (informative, spec Annex B): the per-frame hot loops of the
 * reference encoder, driven by the Python encoder's rate control (tokenbits.native.encoder).
 *
 * The track parameter set (steps, tables, predictor, lanes, transform) is chosen by the
 * caller; these functions compute, for one frame, exactly the bits the reference encoder
 * (reference/encoder.py) computes: same binary32 / binary64 operations in the same order,
 * no fused operations (build with -ffp-contract=off), round half to even.
 *
 * Every function returns 0 on success or a negative TKB_ENC_* code. */
#ifndef TKB_ENC_H
#define TKB_ENC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TKB_ENC_OK 0
#define TKB_ENC_NOT_IN_TABLE (-1)   /* a symbol has no frequency in its table (7.3.1) */
#define TKB_ENC_USAGE (-2)          /* an argument out of range */

/* Source dtypes of frames (clause 6.3: source_dtype): 0 float32, 1 float16, 2 bfloat16
 * (uint16 bit patterns), 3 uint32 (token ids). */

/* Kept rows pos[0..k) of a frame src [n][d] of source dtype src_dtype (0, 1 or 2) as
 * binary32 [k][d] (exact conversions). */
int tkb_enc_gather_f32(const void *src, int src_dtype, size_t n, size_t d,
                       const uint32_t *pos, size_t k, float *out);

/* Annex B.1 token norms: sqrt of the binary64 squares summed in channel order. */
void tkb_enc_token_norms(const float *x, size_t k, size_t d, double *norms);

/* 1 / step(q) rounded to binary32 (Annex B.1's INV_STEP), q in 0..255. */
float tkb_enc_inv_step(int q);

/* Annex B.7 forward transform: coefficients [k][kc] (binary32) of channels x [k][d]:
 *   X = rint(clip((x - mean) * scale, +-INPUT_MAX))   binary64, elementwise
 *   y = binary32(sum_c X[c] P[c][j] * 2^-(a + p))     the sum exact in int64
 * mean [d] binary64 (Transform.mean_real), scale = 2^a, p_int [d][kc], out_scale =
 * 2^-(a + p). */
int tkb_enc_forward(const float *x, size_t k, size_t d, const double *mean, double scale,
                    const int64_t *p_int, size_t kc, double out_scale, float *out);

/* Annex B.1 quantization of coded values xc [k][c] at step codes code[c] + delta[row]
 * (each in 0..255), then clause 7.5 residuals against row pred[row] (-1: none; pred[row]
 * < row), their zigzag index (7.4.1) and the escape split (esc[c]: the channel's ESC):
 *   deadzone < 0:  level = clip(rint(x * INV_STEP), +-lim)                       (rounding)
 *   deadzone >= 0: the closed-loop quantizer: r = x * INV_STEP - plev,
 *                  q = min(rint(max(|r| - deadzone, 0)), 2^25),
 *                  level = clip(plev + sign(r) q, +-lim)
 * lim = lim_of_code[code] (NULL: 2^24 - 1).  Outputs: sym [k*c] (coding order), the
 * escape values (u - ESC) of escaped symbols in coding order into escapes [k*c] and their
 * count, and levels [k*c] (scratch, the quantized levels). */
int tkb_enc_quantize(const float *xc, size_t k, size_t c, const uint8_t *code,
                     const int32_t *delta, const int64_t *lim_of_code, const int64_t *pred,
                     float deadzone, const uint32_t *esc, uint32_t *sym, uint64_t *escapes,
                     size_t *num_escapes, int32_t *levels);

/* Clause 7.5 residuals of levels lv [k][c] (|level| < 2^24; e.g. the fit's levels of a
 * frame it was fitted on) against row pred[row] (-1: none), their zigzag index u (7.4.1)
 * and the escape split: sym = min(u, esc[c]), the escape values u - esc[c] of the escaped
 * symbols in coding order into escapes [k*c] and their count. */
int tkb_enc_residual_symbols(const int32_t *lv, size_t k, size_t c, const int64_t *pred,
                             const uint32_t *esc, uint32_t *sym, uint64_t *escapes,
                             size_t *num_escapes);

/* Clause 7.4.2 in reverse for split (lossless) tracks: values of kept rows pos[0..k) of
 * src [n][d] (width 16: uint16 bit patterns; 32: uint32 bit patterns or token ids).
 * predict != 0: the zigzag index of the residual of the order-preserving integer against
 * row pred[row] (embedding tracks); else the bit pattern itself.  sym = u >> raw_bits
 * (saturated to 2^32 - 1), raw = u & (2^raw_bits - 1). */
int tkb_enc_split(const void *src, int width, size_t n, size_t d, const uint32_t *pos,
                  size_t k, const int64_t *pred, int predict, unsigned raw_bits,
                  uint32_t *sym, uint32_t *raw);

/* Clause 7.3 interleaved rANS encode (Annex B's encoder): symbols sym[0..n) (symbol i of
 * channel i mod c, table offset chan_base[c] into freq/cum, alph entries per table).
 * Words in stream order into words (capacity: n + 2 * num_lanes * chunks), their count
 * into *num_words, and chunk_words[chunks]. */
int tkb_enc_rans(const uint32_t *sym, size_t n, size_t c, const uint32_t *chan_base,
                 const uint32_t *freq, const uint32_t *cum, uint32_t alph,
                 uint32_t num_lanes, uint32_t lane_steps, uint32_t prob_bits,
                 uint16_t *words, size_t *num_words, uint32_t *chunk_words);

/* -- the track fit's numeric steps (src/enc_fit.c; tokenbits.native.encoder's
 * NativeFitKernels, called by the reference encoder's rate control) -- */

/* Levels of n binary32 values x at step codes codes[i] (0..255): clip(rint(x *
 * INV_STEP[code]), +-(2^24 - 1)) (Annex B.1's rounding quantizer). */
int tkb_enc_levels(const float *x, const int64_t *codes, size_t n, int64_t *lv);

/* tkb_enc_levels of x [k][c] at step codes code[c] + delta[row] (each in 0..255), as int32
 * (|level| < 2^24: half the memory of int64 for the fit's passes over them). */
int tkb_enc_levels_rows(const float *x, size_t k, size_t c, const int64_t *code,
                        const int64_t *delta, int32_t *lv);

/* The mean token cosine (float64) of tokens x [k][d] against their reconstruction at step
 * codes code[c] + delta[row] by the rounding quantizer (7.6.1 dequantization, 7.6.2
 * conversion to out_dtype 0 float32, 1 float16, 2 bfloat16), and a bound on its
 * difference from numpy's value (baselines.mean_token_cosine).  Returns 1 (undecided:
 * compute it with numpy) when a value is not finite.  fast: on the AVX2 path, the sums of
 * each token in binary32 (twice as fast; a bound about 1e-5 instead of 1e-12: a caller
 * that cannot decide with it asks again with fast 0, binary64 sums of exact products).
 * target (NaN: none): once the tokens so far show that numpy's mean is below target
 * (the others counted at cosine 1), the pass stops: *mean_cos is then an upper bound on
 * numpy's mean, below target, and *bound 0. */
int tkb_enc_trial_cosine(const float *x, size_t k, size_t d, const uint8_t *code,
                         const int32_t *delta, int out_dtype, int fast, double target,
                         double *mean_cos, double *bound);

/* Per token of x [k][d] (the qp search's tokens, once per search): the binary64 sum of
 * squares (four partial sums: within gamma_{d+2} of the exact one) (sq) and the largest
 * magnitude (maxabs).  Returns 1 when a value is not finite. */
int tkb_enc_row_stats(const float *x, size_t k, size_t d, double *sq, float *maxabs);

/* A certificate for a trial of the qp search (tkb_enc_trial_cosine's question) from the
 * tokens' row statistics alone (no pass over the values): returns 2 when every level is
 * 0 at these steps (then numpy's mean cosine is exactly zero_rows / k: zero tokens count
 * 1, the others 0); 0 with *lower, a lower bound on the exact mean token cosine (each
 * token's reconstruction error bounded by half its steps and the roundings: cos >=
 * 1 - eps^2); 1 when a level could clip or a value overflow (no certificate). */
int tkb_enc_trial_certificate(const double *sq, const float *maxabs, size_t k, size_t d,
                              const uint8_t *code, const int32_t *delta, int out_dtype,
                              double *lower, int64_t *zero_rows);

/* Annex B.1's closed-loop deadzone quantizer (reference: encoder.quantize_closed_loop) of
 * x [k][c] at step codes codes [k][c], clipped to +-lim [k][c] (NULL: 2^24 - 1), row i
 * predicted by row pred[i] < i (-1: none), rows in order; levels into lv [k][c]. */
int tkb_enc_levels_closed(const float *x, size_t k, size_t c, const int64_t *codes,
                          const int64_t *lim, const int64_t *pred, float deadzone,
                          int64_t *lv);

/* Zigzag indices (7.4.1) of the clause 7.5 residuals of levels lv [k][c] against row
 * pred[row] (-1: none). */
int tkb_enc_residuals(const int64_t *lv, size_t k, size_t c, const int64_t *pred,
                      int64_t *u);

/* Histogram (added into hist) of min(u[i], cap), u >= 0: c == 0: one [cap + 1]; else per
 * channel (value i of channel i mod c) [c][cap + 1]. */
int tkb_enc_histogram(const int64_t *u, size_t n, size_t c, int64_t cap, int64_t *hist);

/* Per-channel histograms (added into hist [c][cap + 1]) of min(u, cap) for the zigzag
 * indices u (7.4.1) of the clause 7.5 residuals of levels lv [k][c] against row pred[row]
 * (-1: none): the histograms of tkb_enc_residuals' output without writing it. */
int tkb_enc_residual_histograms(const int32_t *lv, size_t k, size_t c, const int64_t *pred,
                                int64_t cap, int64_t *hist);

/* The predictor choice's counts (Annex B.4) and the chosen predictor's per-channel
 * histograms (B.3) in one pass: for each of m (1..4) predictors g (rows pred[g][0..k),
 * -1: none), cnt [g][c][64] (written) counts min(u, 63) per channel for the zigzag
 * indices u of the residuals of lv against row pred[g][row]; the values
 * u >= 63 are also listed, min(u, big_cap), into big [g][k * c] (their number in
 * num_big[g]), so that the exact counts of u are the bins 0..62 summed over the channels
 * and the list.  big_cap in 63 .. 2^32 - 1, k < 2^31. */
int tkb_enc_predictor_histograms(const int32_t *lv, size_t k, size_t c, const int64_t *pred,
                                 size_t m, int64_t big_cap, uint32_t *cnt, uint32_t *big,
                                 size_t *num_big);

/* Annex B.3's whole channel grouping (table_fit.group_tables) over the candidate table
 * counts cands[0..n) (channels in scale-key order `order`): 0 with the chosen groups
 * (group [d], dense), their number (*t_used) and tables (freq [t_used][a], the first
 * used[g] entries of row g); 1 when a step is too close to call under numpy's roundings
 * (then the caller takes the reference's steps); < 0 on bad arguments. */
int tkb_enc_group_tables(const int64_t *hist, size_t d, size_t a, const int64_t *order,
                         const int64_t *cands, size_t n, unsigned prob_bits, int escape_slot,
                         int64_t *group, int64_t *t_used, int64_t *freq, int64_t *used);

/* The table grouping's Lloyd step (Annex B.3): for each channel the table g of least
 * cost sum_s hist[i][s] nlq[g][s] (first on ties).  Returns the number of channels whose
 * choice a rounding difference could change (then the caller uses numpy's), or -1. */
long tkb_enc_table_argmin(const int64_t *hist, size_t d, size_t a, const double *nlq,
                          size_t t, int64_t *group);

/* Histograms hist [d][a] (counts >= 0) summed per group (group[i] in 0..t-1) into out
 * [t][a], exactly (as binary64; TKB_ENC_USAGE beyond 2^53). */
int tkb_enc_group_sum(const int64_t *hist, size_t d, size_t a, const int64_t *group,
                      size_t t, double *out);

/* -- the table grouping (src/enc_tables.c; Annex B.3) -- */

/* The Lloyd refinement of the channel groups (reference: FitKernels.lloyd_groups): up
 * to iters steps of "tables q = (group sums + 1e-3) / their row sums; each channel to the
 * table g of least cost sum_s hist[i][s] (-log2 q[g][s]) (the first on ties)", stopping
 * when no channel moves; group [d] (0 .. t-1) in and out.  Each step is taken only where
 * a bound on the difference from numpy's costs cannot change a choice.  Returns the
 * number of steps done (>= 0: finished), or -(1 + s) when step s was left undecided
 * (group then holds the groups before it: the caller runs the remaining iters - s steps
 * with numpy). */
long tkb_enc_lloyd(const int64_t *hist, size_t d, size_t a, int64_t *group, size_t t,
                   long iters);

/* Annex B.3's tables of group histograms ghist [t][a] (reference: FitKernels.table_set):
 * used[g] = 1 + the largest counted symbol (1 if none), plus the escape symbol when
 * escape_slot (at most a); freq [t][a] = tables.normalize(ghist[g][0 .. used[g]),
 * prob_bits), zeros beyond.  numpy[g] = 1 where numpy has to normalize table g (it takes
 * frequency away by a logarithmic cost); freq[g] is then not set. */
int tkb_enc_normalize_tables(const int64_t *ghist, size_t t, size_t a, unsigned prob_bits,
                             int escape_slot, int64_t *freq, int64_t *used, uint8_t *numpy);

/* The bits of the counted symbols ghist [t][a] under the tables freq [t][a] (used[g]
 * symbols each): *bits = sum of count x -log2(freq / 2^prob_bits), with *bound on its
 * difference from numpy's value (+ the tables' bits) in any order; *table_bits = the sum
 * of tables.table_cost_bits (exact). */
int tkb_enc_tables_bits(const int64_t *ghist, size_t t, size_t a, const int64_t *freq,
                        const int64_t *used, unsigned prob_bits, double *bits, double *bound,
                        int64_t *table_bits);

/* "avx2" or "scalar": the encoder's fast paths on this CPU ($TKB_NATIVE_SIMD=scalar): the
 * forward transform, the trial cosine and the table costs; the same bits either way. */
const char *tkb_enc_simd_name(void);

/* Clause 3.4 CRC-32C of n bytes (the stream header's and the units' CRC, 6.1, 6.2): the
 * SSE4.2 crc32 instruction when the CPU has it, else (or with $TKB_NATIVE_SIMD=scalar)
 * tables eight bytes at a time; the same value. */
uint32_t tkb_enc_crc32c(const void *p, size_t n);

#ifdef __cplusplus
}
#endif
#endif
