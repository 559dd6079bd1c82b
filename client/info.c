/*
 * info.c -- tensor descriptions as the library reports them (ps_lookup,
 * ps_list): a shard's TensorInfo as a ps_tensor_info, and the answers of
 * every shard combined into one.
 *
 * The version. A pull of the whole tensor reports the smallest version
 * over all its blocks, each from its owner, and a block never touched is
 * created by that pull at version 0. Each shard describes only the blocks
 * it holds (TensorInfo.blocks_here, and version = the smallest among them,
 * 0 when it holds none: it cannot know about the others without walking
 * every block of the tensor). So lookup and list ask every shard and
 * combine: the smallest version among the shards that hold blocks (one
 * that holds none says nothing about the version), and 0 if the blocks
 * held, counted over every shard, are fewer than the tensor's blocks (some
 * block was never touched, and a pull would report 0). That is what a pull
 * would report at that moment.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_int.h"
#include "msg.h"
#include "psmath.h"

int ps__info_from_pb(const Psd__TensorInfo *ti, ps_tensor_info *info, char *err,
                     size_t errlen) {
  memset(info, 0, sizeof(*info));
  if (ti->spec == NULL || pmsg_spec_from_pb(ti->spec, &info->spec, err, errlen) != 0) {
    if (ti->spec == NULL) snprintf(err, errlen, "tensor description without a spec");
    return -1;
  }
  info->name = strdup(ti->name ? ti->name : "");
  info->ndim = (int)ti->spec->n_shape;
  info->shape = calloc(ti->spec->n_shape + 1, sizeof(uint64_t));
  if (info->name == NULL || info->shape == NULL) {
    ps_tensor_info_free(info);
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  for (size_t i = 0; i < ti->spec->n_shape; i++) info->shape[i] = ti->spec->shape[i];
  info->numel = ti->has_numel ? ti->numel : psd_numel(ti->spec->shape, ti->spec->n_shape);
  info->version = ti->has_version ? ti->version : 0;
  return 0;
}

/* ---- the version over every shard ---------------------------------------- */

void ps__vacc_init(ps__vacc *a) {
  a->blocks = 0;
  a->min = UINT64_MAX;
  a->uncounted = 0;
}

void ps__vacc_add(ps__vacc *a, const Psd__TensorInfo *ti) {
  uint64_t v = ti->has_version ? ti->version : 0;
  if (!ti->has_blocks_here) {
    /* A shard that does not count its blocks: its version is all there
     * is to go by. */
    a->uncounted = 1;
    if (v < a->min) a->min = v;
    return;
  }
  if (ti->blocks_here == 0) return; /* says nothing about the version */
  a->blocks += ti->blocks_here;
  if (v < a->min) a->min = v;
}

uint64_t ps__vacc_version(const ps__vacc *a, const ps_tensor_info *info) {
  uint64_t bs = info->spec.block_size ? info->spec.block_size : PSD_DEFAULT_BLOCK;
  if (a->min == UINT64_MAX) return 0; /* no block touched anywhere */
  if (!a->uncounted && a->blocks < psp_nblocks(info->numel, bs)) return 0;
  return a->min;
}

/* ---- lists from every shard ------------------------------------------------- */

/* The entry for `name`, or -1. The index is keyed by the name's hash; a
 * hash shared by two names falls back to a scan. */
static long list_find(const ps__infolist *l, const char *name, uint64_t hash) {
  uint64_t v;
  if (!u64map_get(&l->index, hash, &v)) return -1;
  if (strcmp(l->infos[v].name, name) == 0) return (long)v;
  for (size_t i = 0; i < l->n; i++)
    if (strcmp(l->infos[i].name, name) == 0) return (long)i;
  return -1;
}

static int list_grow(ps__infolist *l) {
  if (l->n < l->cap) return 0;
  size_t cap = l->cap ? 2 * l->cap : 16;
  ps_tensor_info *in = realloc(l->infos, cap * sizeof(*in));
  if (in == NULL) return -1;
  l->infos = in;
  ps__vacc *acc = realloc(l->acc, cap * sizeof(*acc));
  if (acc == NULL) return -1;
  l->acc = acc;
  l->cap = cap;
  return 0;
}

int ps__infolist_merge(ps__infolist *l, const Psd__TensorList *tl, char *err, size_t errlen) {
  for (size_t i = 0; i < tl->n_tensors; i++) {
    const Psd__TensorInfo *ti = tl->tensors[i];
    const char *name = ti->name ? ti->name : "";
    uint64_t hash = psm_hash_name(name);
    long k = list_find(l, name, hash);
    if (k < 0) {
      if (list_grow(l) != 0) {
        snprintf(err, errlen, "out of memory");
        return PS_ENOMEM;
      }
      if (ps__info_from_pb(ti, &l->infos[l->n], err, errlen) != 0)
        return strcmp(err, "out of memory") == 0 ? PS_ENOMEM : PS_EBADFRAME;
      if (!u64map_get(&l->index, hash, NULL) && u64map_put(&l->index, hash, l->n) != 0) {
        ps_tensor_info_free(&l->infos[l->n]);
        snprintf(err, errlen, "out of memory");
        return PS_ENOMEM;
      }
      ps__vacc_init(&l->acc[l->n]);
      k = (long)l->n++;
    }
    ps__vacc_add(&l->acc[k], ti);
  }
  return 0;
}

static int by_name(const void *a, const void *b) {
  return strcmp(((const ps_tensor_info *)a)->name, ((const ps_tensor_info *)b)->name);
}

void ps__infolist_finish(ps__infolist *l, ps_tensor_info **out, size_t *n) {
  for (size_t i = 0; i < l->n; i++) l->infos[i].version = ps__vacc_version(&l->acc[i], &l->infos[i]);
  if (l->n > 1) qsort(l->infos, l->n, sizeof(*l->infos), by_name);
  if (l->infos == NULL) l->infos = calloc(1, sizeof(*l->infos)); /* an empty list, not NULL */
  *out = l->infos;
  *n = l->n;
  l->infos = NULL;
  l->n = 0;
  ps__infolist_free(l);
}

void ps__infolist_free(ps__infolist *l) {
  if (l == NULL) return;
  for (size_t i = 0; i < l->n; i++) ps_tensor_info_free(&l->infos[i]);
  free(l->infos);
  free(l->acc);
  u64map_free(&l->index);
  memset(l, 0, sizeof(*l));
}
