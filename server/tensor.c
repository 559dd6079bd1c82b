/* tensor.c -- the tensor table and its blocks; see tensor.h. */
#include "tensor.h"

#include <stdlib.h>
#include <string.h>

#include "apply.h"
#include "msg.h"
#include "psmath.h"
#include "round.h"

void tensor_table_init(psd_server *srv) {
  srv->table_cap = 64;
  srv->table = calloc(srv->table_cap, sizeof(*srv->table));
  psd_link_init(&srv->rounds);
}

static void tensor_free(psd_tensor *t) {
  for (uint64_t i = 0; t->blocks && i < t->nblocks; i++) {
    psd_block *b = t->blocks[i];
    if (b == NULL) continue;
    round_free(b);
    free(b->w);
    free(b->state);
    free(b);
  }
  free(t->blocks);
  free(t->name);
  free(t);
}

void tensor_table_free(psd_server *srv) {
  for (size_t i = 0; srv->table && i < srv->table_cap; i++) {
    psd_tensor *t = srv->table[i];
    while (t) {
      psd_tensor *next = t->next;
      tensor_free(t);
      t = next;
    }
  }
  free(srv->table);
  srv->table = NULL;
  srv->table_cap = srv->ntensors = 0;
}

void tensor_versions(psd_server *srv, uint64_t *vmin, uint64_t *vmax, uint64_t *vsum,
                     uint64_t *nblocks) {
  *vmin = UINT64_MAX;
  *vmax = *vsum = *nblocks = 0;
  for (size_t i = 0; i < srv->table_cap; i++)
    for (psd_tensor *t = srv->table[i]; t; t = t->next)
      for (uint64_t b = 0; b < t->nblocks; b++) {
        psd_block *k = t->blocks[b];
        if (k == NULL || k->w == NULL) continue;
        if (k->version < *vmin) *vmin = k->version;
        if (k->version > *vmax) *vmax = k->version;
        *vsum += k->version;
        (*nblocks)++;
      }
  if (*nblocks == 0) *vmin = 0;
}

uint64_t tensor_bytes(psd_server *srv) {
  uint64_t bytes = 0;
  for (size_t i = 0; i < srv->table_cap; i++)
    for (psd_tensor *t = srv->table[i]; t; t = t->next)
      for (uint64_t b = 0; b < t->nblocks; b++)
        if (t->blocks[b] && t->blocks[b]->w)
          bytes += t->blocks[b]->n * 4 * (1 + psm_state_per_param(t->spec.optim.kind));
  return bytes;
}

psd_tensor *tensor_find(psd_server *srv, const char *name) {
  uint64_t h = psm_hash_name(name);
  for (psd_tensor *t = srv->table[h & (srv->table_cap - 1)]; t; t = t->next)
    if (t->name_hash == h && strcmp(t->name, name) == 0) return t;
  return NULL;
}

static void table_grow(psd_server *srv) {
  size_t cap = srv->table_cap * 2;
  psd_tensor **nt = calloc(cap, sizeof(*nt));
  if (nt == NULL) return; /* keep the longer chains */
  for (size_t i = 0; i < srv->table_cap; i++) {
    psd_tensor *t = srv->table[i];
    while (t) {
      psd_tensor *next = t->next;
      t->next = nt[t->name_hash & (cap - 1)];
      nt[t->name_hash & (cap - 1)] = t;
      t = next;
    }
  }
  free(srv->table);
  srv->table = nt;
  srv->table_cap = cap;
}

psd_tensor *tensor_insert(psd_server *srv, const char *name, const uint64_t *shape, int ndim,
                          const ps_tensor_spec *spec) {
  psd_tensor *t = calloc(1, sizeof(*t));
  if (t == NULL) return NULL;
  t->name = strdup(name);
  t->name_hash = psm_hash_name(name);
  t->ndim = ndim;
  t->numel = 1;
  for (int i = 0; i < ndim; i++) {
    t->shape[i] = shape[i];
    t->numel *= shape[i];
  }
  t->spec = *spec;
  uint64_t bs = spec->block_size;
  t->nblocks = psp_nblocks(t->numel, bs);
  t->blocks = calloc(t->nblocks, sizeof(*t->blocks));
  if (t->name == NULL || t->blocks == NULL) goto fail;
  for (uint64_t i = 0; i < t->nblocks; i++) {
    if (psp_owner(&srv->servers, t->name_hash, i) != srv->shard_index) continue;
    psd_block *b = calloc(1, sizeof(*b));
    if (b == NULL) goto fail;
    b->index = i;
    b->n = psp_block_range(t->numel, bs, i, &b->first);
    b->tensor = t;
    psd_link_init(&b->round_link);
    t->blocks[i] = b;
    t->blocks_here++;
  }
  if ((srv->ntensors + 1) > srv->table_cap) table_grow(srv);
  t->next = srv->table[t->name_hash & (srv->table_cap - 1)];
  srv->table[t->name_hash & (srv->table_cap - 1)] = t;
  srv->ntensors++;
  return t;
fail:
  tensor_free(t);
  return NULL;
}

int block_materialize(psd_tensor *t, psd_block *b) {
  if (b->w != NULL) return 0;
  unsigned k = psm_state_per_param(t->spec.optim.kind);
  size_t wbytes = ((size_t)b->n * sizeof(float) + 63) & ~(size_t)63;
  b->w = aligned_alloc(64, wbytes);
  if (k > 0) b->state = aligned_alloc(64, wbytes * k);
  if (b->w == NULL || (k > 0 && b->state == NULL)) {
    free(b->w);
    free(b->state);
    b->w = b->state = NULL;
    return -1;
  }
  psm_init_fill(&t->spec.init, t->shape, t->ndim, t->name_hash, b->first, b->w, b->n);
  if (k > 0) memset(b->state, 0, wbytes * k);
  block_measure(b);
  return 0;
}

void tensor_info_fill(psd_tensor *t, Psd__TensorInfo *ti, void *storage) {
  pmsg_spec_pb *pb = storage;
  pmsg_spec_to_pb(pb, &t->spec, t->shape, t->ndim);
  psd__tensor_info__init(ti);
  ti->name = t->name;
  ti->spec = &pb->ts;
  ti->has_numel = 1;
  ti->numel = t->numel;
  uint64_t v = UINT64_MAX;
  for (uint64_t i = 0; i < t->nblocks; i++)
    if (t->blocks[i] && t->blocks[i]->version < v) v = t->blocks[i]->version;
  ti->has_version = 1;
  ti->version = v == UINT64_MAX ? 0 : v;
  ti->has_blocks_here = 1;
  ti->blocks_here = t->blocks_here;
}
