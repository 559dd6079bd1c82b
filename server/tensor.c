/* tensor.c -- the tensor table and its blocks; see tensor.h. */
#include "tensor.h"

#include <stdlib.h>
#include <string.h>

#include "apply.h"
#include "memory.h"
#include "msg.h"
#include "psmath.h"
#include "spare.h"
#include "round.h"

/* ---- version statistics ------------------------------------------------------ */

static void vstat_add(psd_vstat *vs, uint64_t v) {
  uint64_t k = 0;
  u64map_get(&vs->count, v, &k);
  u64map_put(&vs->count, v, k + 1); /* out of memory: the figures drift, nothing else */
  if (vs->n == 0 || v < vs->min) vs->min = v;
  if (vs->n == 0 || v > vs->max) vs->max = v;
  vs->n++;
  vs->sum += v;
}

/* Remove one block at version v; `next` is a version known to be present
 * after the removal, or UINT64_MAX: then the smallest and largest are found
 * among the distinct versions (a rare path: restores and frees). */
static void vstat_del(psd_vstat *vs, uint64_t v, uint64_t next) {
  uint64_t k = 0;
  if (!u64map_get(&vs->count, v, &k) || k == 0) return;
  if (k > 1) u64map_put(&vs->count, v, k - 1);
  else u64map_del(&vs->count, v, NULL);
  vs->n--;
  vs->sum -= v;
  if (vs->n == 0) {
    vs->min = vs->max = 0;
    return;
  }
  if (k > 1) return;
  if (next != UINT64_MAX) {
    if (v == vs->min) vs->min = next;
    if (v == vs->max) vs->max = next;
    return;
  }
  if (v != vs->min && v != vs->max) return;
  size_t it = 0;
  uint64_t key, val, mn = UINT64_MAX, mx = 0;
  while (u64map_next(&vs->count, &it, &key, &val)) {
    if (key < mn) mn = key;
    if (key > mx) mx = key;
  }
  vs->min = mn;
  vs->max = mx;
}

static void vstat_free(psd_vstat *vs) {
  u64map_free(&vs->count);
  memset(vs, 0, sizeof(*vs));
}

void tensor_vstat_move(psd_vstat *dst, psd_vstat *src) {
  vstat_free(dst);
  *dst = *src;
  memset(src, 0, sizeof(*src));
}

void block_set_version(psd_server *srv, psd_block *b, uint64_t v) {
  uint64_t old = b->version;
  if (v == old) return;
  /* An update: old + 1 is present right after, so the smallest moves there
   * when old was the last block at the smallest version. O(1). */
  uint64_t next = v == old + 1 ? v : UINT64_MAX;
  psd_vstat *s[2] = {&srv->vstat, &b->tensor->vs};
  for (int i = 0; i < 2; i++) {
    if (next != UINT64_MAX) {
      vstat_add(s[i], v);
      vstat_del(s[i], old, next);
    } else {
      vstat_del(s[i], old, UINT64_MAX);
      vstat_add(s[i], v);
    }
  }
  b->version = v;
}

/* ---- the table ---------------------------------------------------------------- */

void tensor_table_init(psd_job *job) {
  job->table_cap = 64;
  job->table = calloc(job->table_cap, sizeof(*job->table));
  if (job->table) mem_charge(PSD_MEM_META, job->table_cap * sizeof(*job->table));
  psd_link_init(&job->rounds);
}

uint64_t tensor_block_bytes(const psd_tensor *t, uint64_t n) {
  uint64_t wbytes = (n * sizeof(float) + 63) & ~(uint64_t)63;
  return wbytes * (1 + psm_state_per_param(t->spec.optim.kind));
}

static uint64_t tensor_meta_bytes(const psd_tensor *t) {
  return sizeof(*t) + strlen(t->name) + 1 + t->blocks.cap * 16;
}

/* Sets held for b's round (set.h) go with it; a reply still held for one
 * is freed with its connection, knowing the block is gone. */
static void heldsets_free(psd_block *b) {
  while (!psd_link_empty(&b->sets)) {
    psd_heldset *h = psd_link_entry(b->sets.next, psd_heldset, link);
    psd_link_remove(&h->link);
    if (h->w != NULL) h->w->block = NULL;
    mem_release(PSD_MEM_ROUNDS, (h->n * sizeof(float) + 63) & ~(uint64_t)63);
    free(h->vals);
    free(h);
  }
}

static void block_free(psd_block *b) {
  heldsets_free(b);
  round_free(b);
  mem_release(PSD_MEM_TENSORS, tensor_block_bytes(b->tensor, b->n));
  mem_release(PSD_MEM_META, sizeof(*b));
  if (b->pin != NULL) {
    /* Writes still send from w: they free it. */
    b->pin->retired = 1;
    b->pin->block = NULL;
    mem_charge(PSD_MEM_OUTPUT, b->pin->bytes);
    b->w = NULL;
  }
  free(b->w);
  free(b->state);
  free(b);
}

static void growing_drop(psd_server *srv, psd_growing *g);

/* Free t and its blocks; their versions leave srv's statistics (srv NULL:
 * the caller drops those whole). */
static void tensor_free(psd_server *srv, psd_tensor *t) {
  size_t it = 0;
  uint64_t k, v;
  /* Blocks still being made go too; their waiting requests run again and
   * find the tensor gone. */
  if (srv != NULL && srv->growing.next != NULL) {
    psd_link *l = srv->growing.next;
    while (l != &srv->growing) {
      psd_growing *g = psd_link_entry(l, psd_growing, link);
      l = l->next;
      if (g->t == t) growing_drop(srv, g);
    }
  }
  while (u64map_next(&t->blocks, &it, &k, &v)) {
    psd_block *b = (psd_block *)(uintptr_t)v;
    if (srv != NULL) vstat_del(&srv->vstat, b->version, UINT64_MAX);
    block_free(b);
  }
  mem_release(PSD_MEM_META, tensor_meta_bytes(t));
  u64map_free(&t->blocks);
  vstat_free(&t->vs);
  free(t->name);
  free(t);
}

void tensor_table_free(psd_server *srv, psd_job *job) {
  for (size_t i = 0; job->table && i < job->table_cap; i++) {
    psd_tensor *t = job->table[i];
    while (t) {
      psd_tensor *next = t->next;
      tensor_free(srv, t);
      t = next;
    }
  }
  if (job->table) mem_release(PSD_MEM_META, job->table_cap * sizeof(*job->table));
  free(job->table);
  if (srv != NULL) srv->ntensors -= job->ntensors;
  job->table = NULL;
  job->table_cap = job->ntensors = 0;
}

void tensor_remove(psd_server *srv, psd_tensor *t) {
  psd_job *job = t->job;
  psd_tensor **pp = &job->table[t->name_hash & (job->table_cap - 1)];
  while (*pp != t) pp = &(*pp)->next;
  *pp = t->next;
  job->ntensors--;
  srv->ntensors--;
  tensor_free(srv, t);
}

void tensor_versions(psd_server *srv, uint64_t *vmin, uint64_t *vmax, uint64_t *vsum,
                     uint64_t *nblocks) {
  *vmin = srv->vstat.min;
  *vmax = srv->vstat.max;
  *vsum = srv->vstat.sum;
  *nblocks = srv->vstat.n;
}

void tensor_vstat_free(psd_server *srv) { vstat_free(&srv->vstat); }

psd_tensor *tensor_find(psd_job *job, const char *name) {
  uint64_t h = psm_hash_name(name);
  for (psd_tensor *t = job->table[h & (job->table_cap - 1)]; t; t = t->next)
    if (t->name_hash == h && strcmp(t->name, name) == 0) return t;
  return NULL;
}

static void table_grow(psd_job *job) {
  size_t cap = job->table_cap * 2;
  if (mem_take_growth(PSD_MEM_META, cap * sizeof(psd_tensor *)) != 0) return; /* longer chains */
  psd_tensor **nt = calloc(cap, sizeof(*nt));
  if (nt == NULL) {
    mem_release(PSD_MEM_META, cap * sizeof(psd_tensor *));
    return;
  }
  for (size_t i = 0; i < job->table_cap; i++) {
    psd_tensor *t = job->table[i];
    while (t) {
      psd_tensor *next = t->next;
      t->next = nt[t->name_hash & (cap - 1)];
      nt[t->name_hash & (cap - 1)] = t;
      t = next;
    }
  }
  mem_release(PSD_MEM_META, job->table_cap * sizeof(psd_tensor *));
  free(job->table);
  job->table = nt;
  job->table_cap = cap;
}

psd_tensor *tensor_insert(psd_server *srv, psd_job *job, const char *name,
                          const uint64_t *shape, int ndim, const ps_tensor_spec *spec,
                          int *over) {
  if (over) *over = 0;
  uint64_t meta = sizeof(psd_tensor) + strlen(name) + 1;
  if (mem_take_growth(PSD_MEM_META, meta) != 0) {
    if (over) *over = 1;
    return NULL;
  }
  psd_tensor *t = calloc(1, sizeof(*t));
  if (t == NULL || (t->name = strdup(name)) == NULL) {
    free(t);
    mem_release(PSD_MEM_META, meta);
    return NULL;
  }
  t->name_hash = psm_hash_name(name);
  t->ndim = ndim;
  t->numel = 1;
  for (int i = 0; i < ndim; i++) {
    t->shape[i] = shape[i];
    t->numel *= shape[i];
  }
  t->spec = *spec;
  t->created = *spec;
  t->nblocks = psp_nblocks(t->numel, spec->block_size);
  t->job = job;
  if ((job->ntensors + 1) > job->table_cap) table_grow(job);
  t->next = job->table[t->name_hash & (job->table_cap - 1)];
  job->table[t->name_hash & (job->table_cap - 1)] = t;
  job->ntensors++;
  srv->ntensors++;
  return t;
}

void block_reinit(psd_server *srv, psd_block *b) {
  psd_tensor *t = b->tensor;
  unsigned k = psm_state_per_param(t->spec.optim.kind);
  psm_init_fill(&t->spec.init, t->shape, t->ndim, t->name_hash, b->first, b->w, b->n);
  if (k > 0) memset(b->state, 0, b->n * sizeof(float) * k);
  block_set_version(srv, b, 0);
  block_measure(b);
}

psd_block *tensor_block(const psd_tensor *t, uint64_t index) {
  return u64map_get_ptr(&t->blocks, index);
}

/* Allocate and initialize b's weights and optimizer state. 0, or -1. */
static int block_alloc(psd_tensor *t, psd_block *b) {
  unsigned k = psm_state_per_param(t->spec.optim.kind);
  size_t wbytes = ((size_t)b->n * sizeof(float) + 63) & ~(size_t)63;
  b->w = mem_alloc_data(wbytes);
  if (k > 0) b->state = mem_alloc_data(wbytes * k);
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

/* A block record of t (no values yet), or NULL when out of memory. */
static psd_block *block_new(psd_tensor *t, uint64_t index, uint64_t first, uint64_t n) {
  psd_block *b = calloc(1, sizeof(*b));
  if (b == NULL) return NULL;
  b->index = index;
  b->first = first;
  b->n = n;
  b->tensor = t;
  psd_link_init(&b->round_link);
  psd_link_init(&b->sets);
  return b;
}

/* b, made, joins t: its map (room reserved), t's counts, the version
 * figures. */
static void block_join(psd_server *srv, psd_tensor *t, psd_block *b) {
  u64map_put_ptr(&t->blocks, b->index, b); /* reserved: cannot fail */
  t->blocks_here = t->blocks.len;
  t->bytes_here += tensor_block_bytes(t, b->n);
  vstat_add(&srv->vstat, 0);
  vstat_add(&t->vs, 0);
}

/* ---- big blocks made over turns ---------------------------------------------------- */

/* A block this big or bigger (weights and state) is made a slice per turn:
 * its first touch (page faults, initialization) would otherwise be one turn
 * of tens of milliseconds. */
#define GROW_SPREAD_MIN (1u << 20)
/* Elements filled between two looks at the clock. */
#define GROW_SLICE 16384u

static psd_growing *growing_find(psd_server *srv, const psd_tensor *t, uint64_t index) {
  for (psd_link *l = srv->growing.next; l != &srv->growing; l = l->next) {
    psd_growing *g = psd_link_entry(l, psd_growing, link);
    if (g->t == t && g->b->index == index) return g;
  }
  return NULL;
}

/* Its waiting connections go on (their requests run again). */
static void growing_wake(psd_server *srv, psd_growing *g) {
  while (!psd_link_empty(&g->waiting)) {
    psd_link *l = g->waiting.next;
    psd_link_remove(l);
    psd_link_insert_tail(&srv->woken, l);
  }
}

static void growing_drop(psd_server *srv, psd_growing *g) {
  growing_wake(srv, g);
  psd_link_remove(&g->link);
  block_free(g->b);
  mem_release(PSD_MEM_META, sizeof(*g));
  free(g);
}

/* g is filled: it joins its tensor (or, without memory for the map, is
 * dropped: its requests run again and meet the error then). */
static void growing_finish(psd_server *srv, psd_growing *g) {
  psd_tensor *t = g->t;
  psd_block *b = g->b;
  unsigned k = psm_state_per_param(t->spec.optim.kind);
  size_t wbytes = ((size_t)b->n * sizeof(float) + 63) & ~(size_t)63;
  if (k > 0) /* the padding after the k state arrays */
    memset((char *)b->state + (size_t)b->n * sizeof(float) * k, 0,
           wbytes * k - (size_t)b->n * sizeof(float) * k);
  size_t oldcap = t->blocks.cap;
  if (u64map_reserve(&t->blocks) != 0 || u64map_reserve(&srv->vstat.count) != 0 ||
      u64map_reserve(&t->vs.count) != 0) {
    mem_charge(PSD_MEM_META, (t->blocks.cap - oldcap) * 16);
    growing_drop(srv, g);
    return;
  }
  mem_charge(PSD_MEM_META, (t->blocks.cap - oldcap) * 16);
  block_join(srv, t, b);
  g->b = NULL;
  growing_wake(srv, g);
  psd_link_remove(&g->link);
  mem_release(PSD_MEM_META, sizeof(*g));
  free(g);
}

int tensor_grow_step(psd_server *srv, uint64_t deadline_ns) {
  while (!psd_link_empty(&srv->growing)) {
    psd_growing *g = psd_link_entry(srv->growing.next, psd_growing, link);
    psd_tensor *t = g->t;
    psd_block *b = g->b;
    unsigned k = psm_state_per_param(t->spec.optim.kind);
    uint64_t a = g->filled, m = b->n - a < GROW_SLICE ? b->n - a : GROW_SLICE;
    psm_init_fill(&t->spec.init, t->shape, t->ndim, t->name_hash, b->first + a, b->w + a, m);
    for (unsigned s = 0; s < k; s++) memset(b->state + s * b->n + a, 0, m * sizeof(float));
    /* block_measure's bound, a slice at a time (the state is zero). */
    uint32_t mx = psm_absmax_bits(b->w + a, m);
    if (mx > b->absmax) b->absmax = mx;
    g->filled += m;
    if (g->filled == b->n) growing_finish(srv, g);
    if (uv_hrtime() >= deadline_ns) break;
  }
  return !psd_link_empty(&srv->growing);
}

/* Start making block `index` of t over turns: memory charged and allocated
 * (not touched). TB_PENDING, or TB_NOMEM. */
static int growing_start(psd_server *srv, psd_tensor *t, uint64_t index, uint64_t first,
                         uint64_t n) {
  psd_growing *g = calloc(1, sizeof(*g));
  psd_block *b = block_new(t, index, first, n);
  unsigned k = psm_state_per_param(t->spec.optim.kind);
  size_t wbytes = ((size_t)n * sizeof(float) + 63) & ~(size_t)63;
  if (g == NULL || b == NULL || (b->w = mem_alloc_data(wbytes)) == NULL ||
      (k > 0 && (b->state = mem_alloc_data(wbytes * k)) == NULL)) {
    if (b != NULL) free(b->w);
    free(b);
    free(g);
    return TB_NOMEM;
  }
  g->t = t;
  g->b = b;
  psd_link_init(&g->waiting);
  psd_link_insert_tail(&srv->growing, &g->link);
  mem_charge(PSD_MEM_META, sizeof(*b) + sizeof(*g));
  mem_charge(PSD_MEM_TENSORS, tensor_block_bytes(t, n));
  srv->park_on = g;
  /* A push to a block this big comes in a frame this big: have a receive
   * buffer for it touched off the loop (spare.h). */
  spare_want(psw_rbuf_cap_for((uint64_t)n * sizeof(float) + 4096));
  return TB_PENDING;
}

int tensor_block_get(psd_server *srv, psd_tensor *t, uint64_t index, uint64_t extra,
                     psd_block **out) {
  psd_block *b = u64map_get_ptr(&t->blocks, index);
  if (b != NULL) {
    if (!mem_fits(extra)) {
      mem_count_refusal();
      return TB_OVER;
    }
    *out = b;
    return TB_OK;
  }
  if (!srv->have_list || psp_owner(&srv->servers, t->name_hash, index) != srv->shard_index)
    return TB_NOT_OWNED;
  if (srv->grow_spread) {
    psd_growing *g = growing_find(srv, t, index);
    if (g != NULL) {
      srv->park_on = g; /* already being made: wait for it too */
      return TB_PENDING;
    }
  }
  uint64_t first, n = psp_block_range(t->numel, t->spec.block_size, index, &first);
  /* The block, its record, and the map's next table if it must grow (the
   * old one is freed after the move). */
  uint64_t grow = (t->blocks.len + 1) * 4 > t->blocks.cap * 3
                      ? (t->blocks.cap ? t->blocks.cap * 2 : 16) * 16 : 0;
  uint64_t need = tensor_block_bytes(t, n) + sizeof(psd_block) + grow + extra;
  /* The block stays: it leaves the serving reserve free; its reply may use
   * the reserve. */
  if (!mem_fits_growth(need - extra) || !mem_fits(need)) {
    mem_count_refusal();
    return TB_OVER;
  }
  if (srv->grow_spread && tensor_block_bytes(t, n) >= GROW_SPREAD_MIN)
    return growing_start(srv, t, index, first, n);
  b = block_new(t, index, first, n);
  if (b == NULL) return TB_NOMEM;
  size_t oldcap = t->blocks.cap;
  if (u64map_reserve(&t->blocks) != 0 || u64map_reserve(&srv->vstat.count) != 0 ||
      u64map_reserve(&t->vs.count) != 0 || block_alloc(t, b) != 0) {
    free(b);
    mem_charge(PSD_MEM_META, (t->blocks.cap - oldcap) * 16);
    return TB_NOMEM;
  }
  mem_charge(PSD_MEM_META, (t->blocks.cap - oldcap) * 16 + sizeof(*b));
  mem_charge(PSD_MEM_TENSORS, tensor_block_bytes(t, n));
  block_join(srv, t, b);
  *out = b;
  return TB_OK;
}

/* ---- pins: replies sent from a block's memory ------------------------------------ */

psd_pin *block_pin(psd_block *b) {
  if (b->pin == NULL) {
    psd_pin *p = calloc(1, sizeof(*p));
    if (p == NULL) return NULL;
    p->buf = b->w;
    p->bytes = (b->n * sizeof(float) + 63) & ~(size_t)63;
    p->block = b;
    b->pin = p;
    /* An update before the last write is done moves b (block_unpin): have
     * the memory for that made off the loop (spare.h). */
    if (p->bytes >= SPARE_MIN) spare_want(p->bytes);
  }
  b->pin->refs++;
  return b->pin;
}

psd_pin *pin_adopt(float *buf, size_t bytes) {
  psd_pin *p = calloc(1, sizeof(*p));
  if (p == NULL) return NULL;
  p->refs = 1;
  p->retired = 1;
  p->buf = buf;
  p->bytes = bytes;
  return p;
}

void pin_release(psd_pin *p) {
  if (--p->refs > 0) return;
  if (p->retired) {
    mem_release(PSD_MEM_OUTPUT, p->bytes);
    free(p->buf);
  } else {
    p->block->pin = NULL;
  }
  free(p);
}

int block_unpin(psd_block *b) {
  psd_pin *p = b->pin;
  if (p == NULL) return 0;
  float *w = spare_take(p->bytes);
  if (w == NULL) w = mem_alloc_data(p->bytes);
  if (w == NULL) return -1;
  memcpy(w, b->w, b->n * sizeof(float));
  /* The old values now belong to the writes: output, admitted with their
   * replies. */
  mem_charge(PSD_MEM_OUTPUT, p->bytes);
  p->retired = 1;
  p->block = NULL;
  b->pin = NULL;
  b->w = w;
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
  ti->has_version = 1;
  ti->version = t->vs.n ? t->vs.min : 0;
  ti->has_blocks_here = 1;
  ti->blocks_here = t->blocks_here;
}
