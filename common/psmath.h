/*
 * psmath.h -- psd's math core: initializers, optimizers, learning-rate
 * schedules (definitions: ../shared/reference/MATH.md, summarized in
 * README.md). Used by the server; the spec helpers are also used by the
 * client library and psctl.
 *
 * Nothing here allocates except where said; nothing here does I/O.
 */
#ifndef PSD_PSMATH_H
#define PSD_PSMATH_H

#include <stddef.h>
#include <stdint.h>

#include "psd_types.h"

/* 64-bit hash of a tensor name (used as the init stream key and for
 * placement). Stable across versions and machines. */
uint64_t psm_hash_name(const char *name);

/* ---- specs (spec.c) ---------------------------------------------------- */

/* Fill MATH.md's defaults for one optimizer kind into *o (all fields). */
void psm_optim_defaults(ps_optim_spec *o, ps_optim_kind kind);
/* Fill defaults for one init kind (sigma 0.01 for normal kinds, limit 0.05
 * for uniform, value 0 for constant, everything else 0). */
void psm_init_defaults(ps_init_spec *i, ps_init_kind kind);

/* Check an init spec against a shape. Returns 0, or -1 with a sentence in
 * err ("zeros on a rank-2 tensor would leave every unit identical ..."). */
int psm_init_validate(const ps_init_spec *s, const uint64_t *shape, int ndim,
                      char *err, size_t errlen);
/* Check an optimizer spec (lr > 0, 0 <= beta < 1, eps > 0, ...). */
int psm_optim_validate(const ps_optim_spec *s, char *err, size_t errlen);

/* Compare two specs; return 0 if identical, else 1 and a sentence naming the
 * first differing field(s) with both values ("optimizer lr: 0.001 vs 0.01"). */
int psm_spec_diff(const ps_tensor_spec *a, const ps_tensor_spec *b, char *out,
                  size_t outlen);

/* ---- initializers (psmath.c) ---------------------------------------------- */

/* Fans as torch.nn.init._calculate_fan_in_and_fan_out, or the spec's
 * explicit fan_in/fan_out when nonzero; +1 on fan_in if
 * fan_in_includes_bias. */
void psm_fans(const ps_init_spec *s, const uint64_t *shape, int ndim,
              double *fan_in, double *fan_out);

/* Fill out[0..n) with elements [first, first+n) of the tensor whose init
 * spec is s, shape/ndim as given, and name hash name_hash. Element i is a
 * pure function of (s->seed, name_hash, i, spec): the result never depends
 * on how a tensor is cut into calls. The spec must have passed
 * psm_init_validate. */
void psm_init_fill(const ps_init_spec *s, const uint64_t *shape, int ndim,
                   uint64_t name_hash, uint64_t first, float *out, uint64_t n);

/* ---- optimizers (psmath.c) ------------------------------------------------ */

/* Optimizer state floats per parameter: sgd 0, momentum 1, rmsprop 1,
 * adam 2, adamw 2, adagrad 1. State starts at zero. */
unsigned psm_state_per_param(ps_optim_kind k);

/* Learning rate of update t (t = 1, 2, ...), schedule and warmup applied. */
double psm_lr_at(const ps_optim_spec *s, uint64_t t);

/* Apply update number t (1-based) to w[0..n) with gradient gscale * g.
 * state holds psm_state_per_param(kind) arrays of n floats, back to back
 * (adam: m = state[0..n), v = state[n..2n)). One pass over w, state and g;
 * the loops are branch-free so that the compiler vectorizes them.
 * gscale is 1 except for clipping (min(1, clip_norm / norm)). */
void psm_apply(const ps_optim_spec *s, uint64_t t, float *w, float *state,
               const float *g, float gscale, uint64_t n);

/* The same update restricted to elements [lo, hi) of a block of n: w, state
 * and g are the block's arrays, as for psm_apply. Applying [0, k) then
 * [k, n) gives exactly psm_apply's result (every kernel is elementwise);
 * the shard uses it to apply a large block a cache-sized piece at a time. */
void psm_apply_range(const ps_optim_spec *s, uint64_t t, float *w, float *state,
                     const float *g, float gscale, uint64_t n, uint64_t lo, uint64_t hi);

/* 1 if every element of g[0..n) is finite, 0 if one is NaN or Inf. Several
 * times faster than psm_sumsq: for when the norm is not needed. */
int psm_all_finite(const float *g, uint64_t n);

/* Copy src[0..n) to dst and return psm_all_finite of what was copied, in
 * one pass (the shard takes a gradient out of shared memory this way: what
 * it tests is what it applies, whatever the other process does next). */
int psm_copy_finite(float *restrict dst, const float *restrict src, uint64_t n);

/* Sum of squares of g[0..n) in double. The result is NaN or Inf if any
 * element is NaN or Inf, which is how the server rejects bad gradients. */
double psm_sumsq(const float *g, uint64_t n);

#endif /* PSD_PSMATH_H */
