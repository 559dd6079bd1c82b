/*
 * psmath.h -- psd's math core: initializers, optimizers, learning-rate
 * schedules. Every formula, default and valid range is written out in
 * docs/math.md. Used by the server; the spec helpers are also used by the
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

/* Fill the defaults of one optimizer kind into *o (all fields; the table
 * is in docs/math.md). */
void psm_optim_defaults(ps_optim_spec *o, ps_optim_kind kind);
/* Fill defaults for one init kind (sigma 0.01 for normal kinds, limit 0.05
 * for uniform, value 0 for constant, everything else 0). */
void psm_init_defaults(ps_init_spec *i, ps_init_kind kind);

/* The bounds validation enforces (docs/math.md, "Valid ranges", says why).
 * Every real-valued field must also be finite, used by the kind or not. */
#define PSM_LR_MAX 1e3      /* lr in (0, PSM_LR_MAX] */
#define PSM_WD_MAX 1e3      /* weight_decay in [0, PSM_WD_MAX], and lr * weight_decay <= 1 */
#define PSM_EPS_MIN 1e-30   /* eps in [PSM_EPS_MIN, PSM_EPS_MAX] where it is used */
#define PSM_EPS_MAX 1e3
#define PSM_SCALE_MIN 1e-30 /* sigma and limit in [PSM_SCALE_MIN, PSM_SCALE_MAX] */
#define PSM_SCALE_MAX 1e3
#define PSM_VALUE_MAX 1e3   /* constant value in [-PSM_VALUE_MAX, PSM_VALUE_MAX] */

/* Check an init spec against a shape. Returns 0, or -1 with a sentence in
 * err naming the field, the value and the allowed range ("init sigma must
 * be in [1e-30, 1000] for normal (got -1)"), or the problem ("zeros on a
 * rank-2 tensor would leave every unit identical ..."). */
int psm_init_validate(const ps_init_spec *s, const uint64_t *shape, int ndim,
                      char *err, size_t errlen);
/* Check an optimizer spec: lr in (0, 1e3], betas in [0, 1), eps in
 * [1e-30, 1e3], weight_decay in [0, 1e3] with lr * weight_decay <= 1,
 * clip_norm >= 0, the schedule's parameters, flags that fit the kind.
 * Returns 0, or -1 with a sentence as for psm_init_validate. */
int psm_optim_validate(const ps_optim_spec *s, char *err, size_t errlen);

/* Both of the above for a tensor's whole spec, with what one part implies
 * for the other (a none tensor may start symmetric). 0, or -1 and the
 * sentence. */
int psm_spec_validate(const ps_tensor_spec *s, const uint64_t *shape, int ndim, char *err,
                      size_t errlen);

/* Compare two specs; return 0 if identical, else 1 and a sentence naming the
 * first differing field(s) with both values ("optimizer lr: 0.001 vs 0.01"). */
int psm_spec_diff(const ps_tensor_spec *a, const ps_tensor_spec *b, char *out,
                  size_t outlen);

/* ---- tables (spec.c) -------------------------------------------------------- */

/* The widest row a table may have (256 KiB of float32). */
#define PSM_TABLE_DIM_MAX 65536
/* Check a table spec for rows of dim floats: dim in [1, PSM_TABLE_DIM_MAX],
 * the init rule for a rank-1 shape [dim] (fans = dim unless fan_in/fan_out
 * say), the optimizer as for tensors, eviction only with max_rows. 0, or -1
 * with a sentence as for psm_init_validate. */
int psm_table_validate(const ps_table_spec *s, uint64_t dim, char *err, size_t errlen);
/* As psm_spec_diff, for table specs (max_rows and evict included). */
int psm_table_spec_diff(const ps_table_spec *a, const ps_table_spec *b, char *out,
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

/* Fill out[0..dim) with the initial row `key` of the table whose init spec
 * is s and name hash name_hash: a pure function of (s->seed, name_hash,
 * key, spec), as if the row were a rank-1 tensor [dim] whose stream is
 * keyed by the table and the key (docs/math.md, "Tables"). The spec must
 * have passed psm_table_validate. */
void psm_row_init(const ps_init_spec *s, uint32_t dim, uint64_t name_hash, uint64_t key,
                  float *out);

/* ---- optimizers (psmath.c) ------------------------------------------------ */

/* Optimizer state floats per parameter: sgd 0, momentum 1, rmsprop 1,
 * adam 2, adamw 2, adagrad 1, none 0. State starts at zero. */
unsigned psm_state_per_param(ps_optim_kind k);

/* Learning rate of update t (t = 1, 2, ...), schedule and warmup applied. */
double psm_lr_at(const ps_optim_spec *s, uint64_t t);

/* Apply update number t (1-based) to w[0..n) with gradient gscale * g.
 * state holds psm_state_per_param(kind) arrays of n floats, back to back
 * (adam: m = state[0..n), v = state[n..2n)). One pass over w, state and g;
 * the loops are branch-free so that the compiler vectorizes them.
 * gscale is 1 except for clipping (min(1, clip_norm / norm)). none is no
 * update: w = gscale * g (exactly g when gscale is 1). Returns the
 * largest magnitude among the values written (the new weights and state),
 * as the bits of a float (see psm_absmax_bits): Inf shows as PSM_NONFINITE,
 * but a NaN is not seen, so this measures finite results and does not
 * test for NaN. It is found in the same pass, from registers, so it costs
 * no memory traffic (the shard bounds its next update with it,
 * server/apply.c). */
uint32_t psm_apply(const ps_optim_spec *s, uint64_t t, float *w, float *state,
                   const float *g, float gscale, uint64_t n);

/* The same update restricted to elements [lo, hi) of a block of n: w, state
 * and g are the block's arrays, as for psm_apply. Applying [0, k) then
 * [k, n) gives exactly psm_apply's result (every kernel is elementwise);
 * the shard uses it to apply a large block a cache-sized piece at a time. */
uint32_t psm_apply_range(const ps_optim_spec *s, uint64_t t, float *w, float *state,
                         const float *g, float gscale, uint64_t n, uint64_t lo, uint64_t hi);

/* ---- row-wise (lazy) updates ---------------------------------------------
 * A table's update t (its t-th push, or sync round, on a shard) changes
 * only the rows it carries. The learning rate is that of update t
 * (schedule and warmup count the table's updates, as a tensor's count its
 * block's); Adam's and AdamW's bias corrections use the row's own count of
 * updates (lazy Adam: a row's moments decay only when it is pushed). The
 * per-element arithmetic is psm_apply's, on a row of dim floats followed by
 * its state (psm_state_per_param arrays of dim floats). */

#define PSM_ROW_MEMO 64
typedef struct {
  const ps_optim_spec *s;
  double lr;                           /* lr_t of the table's update t */
  /* Bias corrections by row step (a direct-mapped memo: most rows of one
   * update share a handful of steps). memo_t 0: empty. */
  uint64_t memo_t[PSM_ROW_MEMO];
  float memo_step[PSM_ROW_MEMO], memo_rs[PSM_ROW_MEMO], memo_ibc2[PSM_ROW_MEMO];
} psm_row_ctx;

/* Start the table's update t (1-based). */
void psm_row_begin(psm_row_ctx *x, const ps_optim_spec *s, uint64_t t);
/* Apply it to one row whose own update count becomes row_t (1-based):
 * row[0..dim) the weights, row[dim..) the state, g[0..dim) the gradient,
 * times gscale. Returns the largest magnitude written, as psm_apply. */
uint32_t psm_row_apply(psm_row_ctx *x, uint64_t row_t, float *row, const float *g,
                       float gscale, uint32_t dim);

/* 1 if every element of g[0..n) is finite, 0 if one is NaN or Inf. Several
 * times faster than psm_sumsq: for when the norm is not needed. */
int psm_all_finite(const float *g, uint64_t n);

/* Copy src[0..n) to dst and return psm_all_finite of what was copied, in
 * one pass (the shard takes a gradient out of shared memory this way: what
 * it tests is what it applies, whatever the other process does next). */
int psm_copy_finite(float *restrict dst, const float *restrict src, uint64_t n);

/* The largest |x[i]| over x[0..n), as the bits of a float (for finite
 * floats, |x| < |y| exactly when the bits of |x| are below those of |y|):
 * a value >= PSM_NONFINITE means an element is Inf or NaN. One pass of
 * integer operations, as fast as psm_all_finite; the shard uses it both to
 * refuse bad gradients and to bound what an update can produce. */
#define PSM_NONFINITE 0x7f800000u
uint32_t psm_absmax_bits(const float *x, uint64_t n);
/* psm_absmax_bits of src[0..n) while copying it to dst, in one pass. src
 * need not be aligned (it may point into a receive buffer). */
uint32_t psm_copy_absmax_bits(float *restrict dst, const float *restrict src, uint64_t n);
/* The float whose bits psm_absmax_bits returned. */
float psm_bits_float(uint32_t bits);

/* Sum of squares of g[0..n) in double. The result is NaN or Inf if any
 * element is NaN or Inf, which is how the server rejects bad gradients. */
double psm_sumsq(const float *g, uint64_t n);

#endif /* PSD_PSMATH_H */
