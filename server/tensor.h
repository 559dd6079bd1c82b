/*
 * tensor.h -- the tensors a shard holds. Every shard knows every tensor
 * (name, shape, spec) but holds only the blocks that rendezvous hashing
 * gives it, and of those only the ones touched: a block is created,
 * allocated and initialized on first touch (initialization is a pure
 * function of (seed, name, element index), so this gives the same bytes as
 * an eager init). Creating a tensor costs O(1) memory and time whatever its
 * block count; nothing iterates a tensor's nblocks, only the blocks
 * materialized here.
 */
#ifndef PSD_TENSOR_H
#define PSD_TENSOR_H

#include "server.h"

/* A job's tensor table (and its list of rounds), empty. job->table is
 * NULL when out of memory. */
void tensor_table_init(psd_job *job);
/* Free every tensor of job, its blocks and their round buffers; their
 * versions leave srv's statistics (srv NULL: a state being discarded whole,
 * whose statistics the caller drops with tensor_vstat_free). */
void tensor_table_free(psd_server *srv, psd_job *job);
psd_tensor *tensor_find(psd_job *job, const char *name);
/* Add a tensor to job, its arguments validated; no block exists yet.
 * NULL when out of memory or over the memory ceiling (*over set to 1 then,
 * if over is not NULL). */
psd_tensor *tensor_insert(psd_server *srv, psd_job *job, const char *name,
                          const uint64_t *shape, int ndim, const ps_tensor_spec *spec,
                          int *over);
/* Take t out of its job and free it with its blocks (their rounds and
 * held sets must have been answered: round.h, set.h). */
void tensor_remove(psd_server *srv, psd_tensor *t);
/* Drop srv's version statistics (a state discarded whole). */
void tensor_vstat_free(psd_server *srv);

/* Give b its initial values again (the bytes a first touch gives), zero
 * optimizer state and version 0. b must not be pinned (block_unpin) nor
 * referenced by the outbox (outbox_detach). */
void block_reinit(psd_server *srv, psd_block *b);

/* Block `index` (< t->nblocks) of t if materialized here, else NULL. */
psd_block *tensor_block(const psd_tensor *t, uint64_t index);

enum { TB_OK = 0, TB_NOT_OWNED = -1, TB_OVER = -2, TB_NOMEM = -3, TB_PENDING = -4 };
/* Block `index` (< t->nblocks) of t, materializing it on first touch: TB_OK
 * and *out, TB_NOT_OWNED (another shard owns it: psp_owner), TB_OVER (its
 * memory, plus `extra` bytes the request will need next (its reply), would
 * cross --max-memory: nothing changed), TB_NOMEM, or TB_PENDING: a block of
 * a megabyte or more is being made over several turns (its memory charged
 * and allocated, its values filled a slice per turn by tensor_grow_step);
 * srv->park_on names it, and the request must wait and run again once the
 * block has joined its tensor (server.c parks the connection). */
int tensor_block_get(psd_server *srv, psd_tensor *t, uint64_t index, uint64_t extra,
                     psd_block **out);
/* A block being materialized over turns, and the connections whose next
 * request waits for it. */
struct psd_growing {
  psd_link link;             /* in srv->growing */
  psd_tensor *t;
  psd_block *b;              /* allocated, not yet in t->blocks */
  uint64_t filled;           /* elements initialized so far */
  psd_link waiting;          /* psd_conn.park_link */
};
/* Fill growing blocks until uv_hrtime() passes deadline_ns (one slice at
 * least); a block filled joins its tensor and its waiting connections move
 * to srv->woken. 1 while some remain. */
int tensor_grow_step(psd_server *srv, uint64_t deadline_ns);

/* Bytes a block of n elements of t holds when materialized. */
uint64_t tensor_block_bytes(const psd_tensor *t, uint64_t n);

/* Replies a slow reader has not taken are sent from the block's own memory,
 * not copied: each queued write holds a pin on the block's current values.
 * Before an update changes a pinned block, block_unpin gives the block new
 * memory (a copy) and leaves the old values to the writes, freed with the
 * last of them; those bytes count as output (memory.h). */
struct psd_pin {
  uint32_t refs;
  int retired;               /* no longer the block's: freed with the last write */
  float *buf;
  size_t bytes;              /* charged to PSD_MEM_OUTPUT once retired */
  psd_block *block;          /* while not retired */
};
/* A pin on b's current values (one more write sends from them); NULL when
 * out of memory. */
psd_pin *block_pin(psd_block *b);
/* A pin that owns buf (bytes charged to PSD_MEM_OUTPUT): an outbox copy
 * whose write outlives the outbox. NULL when out of memory. */
psd_pin *pin_adopt(float *buf, size_t bytes);
/* A write is done with p. */
void pin_release(psd_pin *p);
/* b is about to change: if writes still send from its values, move b to a
 * copy. 0, or -1 when out of memory (b unchanged). */
int block_unpin(psd_block *b);

/* Block b's version becomes v (an update: v = version + 1; a restore). */
void block_set_version(psd_server *srv, psd_block *b, uint64_t v);

/* Smallest, largest and summed version over the blocks this shard has
 * materialized, and how many those are (0s when none). O(1). */
void tensor_versions(psd_server *srv, uint64_t *vmin, uint64_t *vmax, uint64_t *vsum,
                     uint64_t *nblocks);
/* Fill a TensorInfo for t; storage must point at a pmsg_spec_pb that lives
 * as long as ti. version: the smallest over the blocks materialized here (0
 * when none); blocks_here: how many those are. */
void tensor_info_fill(psd_tensor *t, Psd__TensorInfo *ti, void *storage);

/* Move srv's version statistics to dst (a restored state replacing srv's). */
void tensor_vstat_move(psd_vstat *dst, psd_vstat *src);

#endif
