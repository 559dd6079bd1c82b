/*
 * tensor.h -- the tensors a shard holds. Every shard knows every tensor
 * (name, shape, spec) but holds only the blocks that rendezvous hashing
 * gives it. A block's memory is allocated and initialized on first touch:
 * initialization is a pure function of (seed, name, element index), so this
 * gives the same bytes as an eager init while letting a tensor of 2^31+
 * elements exist on a shard that only ever serves some of its blocks.
 */
#ifndef PSD_TENSOR_H
#define PSD_TENSOR_H

#include "server.h"

void tensor_table_init(psd_server *srv);
/* Free every tensor, its blocks and their round buffers. */
void tensor_table_free(psd_server *srv);
psd_tensor *tensor_find(psd_server *srv, const char *name);
/* Add a tensor whose arguments have been validated, with the blocks this
 * shard owns (not yet materialized). NULL when out of memory. */
psd_tensor *tensor_insert(psd_server *srv, const char *name, const uint64_t *shape, int ndim,
                          const ps_tensor_spec *spec);
/* Allocate and initialize b's weights and optimizer state if not yet
 * done. 0, or -1 when out of memory (b unchanged). */
int block_materialize(psd_tensor *t, psd_block *b);
/* Smallest, largest and summed version over the blocks this shard has
 * materialized, and how many those are (0s when none). */
void tensor_versions(psd_server *srv, uint64_t *vmin, uint64_t *vmax, uint64_t *vsum,
                     uint64_t *nblocks);
/* Bytes of weights and optimizer state materialized here. */
uint64_t tensor_bytes(psd_server *srv);
/* Fill a TensorInfo for t; storage must point at a pmsg_spec_pb that lives
 * as long as ti. */
void tensor_info_fill(psd_tensor *t, Psd__TensorInfo *ti, void *storage);

#endif
