/*
 * apply.h -- one optimizer update of one block, the shard's hot path.
 *
 * An update never leaves a block holding Inf or NaN. Every block carries
 * an upper bound of |w| and |state| (the kernels return the largest value
 * they wrote, found in registers in the same pass); with it, the gradient's largest magnitude and
 * the optimizer's constants, block_apply bounds what the update can
 * produce. When the bound is far below FLT_MAX (every ordinary update) the
 * update is applied in place at full speed. Otherwise the block's values
 * are saved first, and restored if the result is not finite.
 */
#ifndef PSD_APPLY_H
#define PSD_APPLY_H

#include "server.h"

/* Apply one update with gradient gscale * g (gmax_bits: psm_absmax_bits of
 * g, finite) to b, which is materialized. With out, the new values are also
 * written there (a lane slot), piece by piece while they are in cache.
 * Returns 0, or -1 when the result would not be finite: b is exactly as it
 * was (and -2 when out of memory for the undo copy: b unchanged too). */
int block_apply(psd_server *srv, psd_block *b, const float *g, uint32_t gmax_bits,
                float gscale, float *out);
/* Apply the table's next update (its step + 1) to rows[0..n) with the
 * gradients g (n x dim, finite; gmax_bits: psm_absmax_bits of all of it),
 * times gscale, each row counting its own update for lazy Adam. The same
 * guard as block_apply, over the whole request: 0, or -1 when a result
 * would not be finite (every row exactly as it was, the step too), -2
 * when out of memory for the undo copy (unchanged). n may be 0: the
 * table's step still advances (every shard counts every push alike). */
int rows_apply(psd_server *srv, psd_table *t, psd_rowhdr **rows, const float *g, size_t n,
               uint32_t gmax_bits, float gscale);
/* Measure b's absmax bound from its values (after init or restore). */
void block_measure(psd_block *b);

/* Buffers of at least n floats, 64-byte aligned, kept for reuse: the sync
 * rounds' averaging buffer and the copy of a pushed gradient. NULL when out
 * of memory. */
float *apply_scratch(psd_server *srv, uint64_t n);
float *apply_gradbuf(psd_server *srv, uint64_t n);
void apply_buffers_free(psd_server *srv);

#endif
