/*
 * store.c -- the tensors a shard holds, and what a push does to them.
 *
 * Every shard knows every tensor (name, shape, spec) but holds only the
 * blocks that rendezvous hashing gives it. A block's memory is allocated
 * and initialized on first touch: initialization is a pure function of
 * (seed, name, element index), so this gives the same bytes as an eager
 * init while letting a tensor of 2^31+ elements exist on a shard that only
 * ever serves some of its blocks.
 *
 * Async and SSP pushes are applied when they arrive. A sync (BSP) push is a
 * contribution to the block's current round; when every expected worker
 * has contributed, the contributions are summed in rank order, divided by
 * their count and applied as one update, and every contributor is answered.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "msg.h"
#include "psmath.h"
#include "server.h"

#define MAX_NAME 256
#define MAX_BLOCKS (1ull << 24)

/* ---- exactly-once table ----------------------------------------------------- */

int seqmap_get(psd_seqmap *m, uint64_t key, uint64_t *val) {
  if (m->cap == 0) return 0;
  for (size_t i = key & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
    if (m->keys[i] == 0) return 0;
    if (m->keys[i] == key) {
      *val = m->vals[i];
      return 1;
    }
  }
}

int seqmap_put(psd_seqmap *m, uint64_t key, uint64_t val) {
  if (key == 0) return 0; /* 0 means "no id": no deduplication */
  if ((m->len + 1) * 2 > m->cap) {
    size_t cap = m->cap ? m->cap * 2 : 64;
    uint64_t *k = calloc(cap, sizeof(*k)), *v = calloc(cap, sizeof(*v));
    if (k == NULL || v == NULL) {
      free(k);
      free(v);
      return -1;
    }
    for (size_t i = 0; i < m->cap; i++) {
      if (m->keys[i] == 0) continue;
      size_t j = m->keys[i] & (cap - 1);
      while (k[j] != 0) j = (j + 1) & (cap - 1);
      k[j] = m->keys[i];
      v[j] = m->vals[i];
    }
    free(m->keys);
    free(m->vals);
    m->keys = k;
    m->vals = v;
    m->cap = cap;
  }
  size_t i = key & (m->cap - 1);
  while (m->keys[i] != 0 && m->keys[i] != key) i = (i + 1) & (m->cap - 1);
  if (m->keys[i] == 0) m->len++;
  m->keys[i] = key;
  m->vals[i] = val;
  return 0;
}

/* ---- the tensor table ----------------------------------------------------- */

void store_init(psd_server *srv) {
  srv->table_cap = 64;
  srv->table = calloc(srv->table_cap, sizeof(*srv->table));
  link_init(&srv->rounds);
}

static void block_free_round(psd_block *b, uint32_t nw) {
  if (b->contrib) {
    for (uint32_t r = 0; r < nw; r++) free(b->contrib[r]);
  }
  free(b->contrib);
  free(b->contrib_seq);
  free(b->contrib_clock);
  free(b->present);
  free(b->contrib_waiter);
  b->contrib = NULL;
  b->contrib_seq = NULL;
  b->contrib_clock = NULL;
  b->present = NULL;
  b->contrib_waiter = NULL;
  b->ncontrib = 0;
  link_remove(&b->round_link);
}

int block_round_alloc(psd_block *b, uint32_t nw) {
  b->contrib = calloc(nw, sizeof(*b->contrib));
  b->contrib_seq = calloc(nw, sizeof(*b->contrib_seq));
  b->contrib_clock = calloc(nw, sizeof(*b->contrib_clock));
  b->present = calloc(nw, sizeof(*b->present));
  b->contrib_waiter = calloc(nw, sizeof(*b->contrib_waiter));
  if (b->contrib && b->contrib_seq && b->contrib_clock && b->present && b->contrib_waiter)
    return 0;
  block_free_round(b, nw);
  return -1;
}

static void tensor_free(psd_tensor *t, uint32_t nw) {
  for (uint64_t i = 0; i < t->nblocks; i++) {
    psd_block *b = t->blocks[i];
    if (b == NULL) continue;
    block_free_round(b, nw);
    free(b->w);
    free(b->state);
    free(b);
  }
  free(t->blocks);
  free(t->name);
  free(t);
}

void store_free(psd_server *srv) {
  for (size_t i = 0; i < srv->table_cap; i++) {
    psd_tensor *t = srv->table[i];
    while (t) {
      psd_tensor *next = t->next;
      tensor_free(t, srv->group.num_workers);
      t = next;
    }
  }
  free(srv->table);
  srv->table = NULL;
  free(srv->seqs.keys);
  free(srv->seqs.vals);
}

void store_reset_rounds(psd_server *srv) {
  for (size_t i = 0; i < srv->table_cap; i++)
    for (psd_tensor *t = srv->table[i]; t; t = t->next)
      for (uint64_t b = 0; b < t->nblocks; b++)
        if (t->blocks[b]) block_free_round(t->blocks[b], srv->group.num_workers);
}

void store_versions(psd_server *srv, uint64_t *vmin, uint64_t *vmax, uint64_t *vsum,
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

psd_tensor *store_find(psd_server *srv, const char *name) {
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

/* Add a tensor whose arguments have been validated, with the blocks this
 * shard owns (not yet materialized). */
psd_tensor *store_insert(psd_server *srv, const char *name, const uint64_t *shape,
                         int ndim, const ps_tensor_spec *spec) {
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
  t->nblocks = (t->numel + bs - 1) / bs;
  t->blocks = calloc(t->nblocks, sizeof(*t->blocks));
  if (t->name == NULL || t->blocks == NULL) goto fail;
  for (uint64_t i = 0; i < t->nblocks; i++) {
    if (psp_owner(&srv->servers, t->name_hash, i) != srv->shard_index) continue;
    psd_block *b = calloc(1, sizeof(*b));
    if (b == NULL) goto fail;
    b->index = i;
    b->first = i * bs;
    b->n = (i + 1 == t->nblocks) ? t->numel - b->first : bs;
    b->tensor = t;
    link_init(&b->round_link);
    t->blocks[i] = b;
    t->blocks_here++;
  }
  if ((srv->ntensors + 1) > srv->table_cap) table_grow(srv);
  t->next = srv->table[t->name_hash & (srv->table_cap - 1)];
  srv->table[t->name_hash & (srv->table_cap - 1)] = t;
  srv->ntensors++;
  return t;
fail:
  tensor_free(t, 0);
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
  return 0;
}

/* ---- replies ---------------------------------------------------------------- */

void tensor_info_fill(psd_server *srv, psd_tensor *t, Psd__TensorInfo *ti, void *storage) {
  pmsg_spec_pb *pb = storage;
  (void)srv;
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

static void reply_info(psd_conn *c, uint64_t id, psd_tensor *t) {
  Psd__Response r = PSD__RESPONSE__INIT;
  Psd__TensorInfo ti;
  pmsg_spec_pb pb;
  tensor_info_fill(c->srv, t, &ti, &pb);
  r.id = id;
  r.body_case = PSD__RESPONSE__BODY_INFO;
  r.info = &ti;
  conn_send(c, &r, NULL, 0);
}

void reply_block(psd_conn *c, uint64_t id, psd_block *b, int want_values, uint64_t lane_out,
                 int flags) {
  Psd__Response r = PSD__RESPONSE__INIT;
  Psd__BlockReply br = PSD__BLOCK_REPLY__INIT;
  br.version = b->version;
  if (flags & PSD_REPLY_DUPLICATE) br.has_duplicate = 1, br.duplicate = 1;
  r.id = id;
  r.body_case = PSD__RESPONSE__BODY_BLOCK;
  r.block = &br;
  size_t len = b->n * sizeof(float);
  if (want_values && lane_out != 0) {
    /* Checked against this connection's lane when the request came. */
    if (!(flags & PSD_REPLY_FILLED)) memcpy(c->lane.base + lane_out, b->w, len);
    br.has_in_lane = 1, br.in_lane = 1;
    c->srv->stats.lane_ops++;
    c->srv->stats.lane_bytes += len;
    conn_send(c, &r, NULL, 0);
    conn_flush(c);
  } else if (want_values) {
    conn_send(c, &r, b->w, len);
  } else {
    conn_send(c, &r, NULL, 0);
  }
}

/* The lane slot a request names for block b (has/off from the message), or
 * 0 when it names none. A slot outside the connection's lane is answered
 * with an error and gives -1. */
static int lane_slot(psd_conn *c, uint64_t id, const psd_block *b, int has, uint64_t off,
                     int has_len, uint64_t lane_len, const char *field, uint64_t *slot) {
  *slot = 0;
  if (!has) return 0;
  uint64_t len = b->n * sizeof(float);
  if (c->lane.base == NULL) {
    c->srv->stats.rejected++;
    conn_send_error(c, id, PSD__CODE__BAD_FRAME,
                    "%s names a lane slot, but this connection has no lane", field);
    return -1;
  }
  if (!has_len || lane_len != len) {
    /* Slots are sized by the client: a client that cuts the tensor
     * differently must not make this shard read or write past its slot. */
    c->srv->stats.rejected++;
    conn_send_error(c, id, PSD__CODE__BAD_SHAPE,
                    "block %llu of '%s' has %llu elements (%llu bytes); %s names a slot of "
                    "%llu bytes",
                    (unsigned long long)b->index, b->tensor->name, (unsigned long long)b->n,
                    (unsigned long long)len, field,
                    has_len ? (unsigned long long)lane_len : 0ull);
    return -1;
  }
  if (!c->lane_proven) {
    if (!psl_proven(&c->lane)) {
      c->srv->stats.rejected++;
      conn_send_error(c, id, PSD__CODE__BAD_FRAME,
                      "%s names a lane slot, but the lane was never attached (no proof in "
                      "its header)", field);
      return -1;
    }
    c->lane_proven = 1;
  }
  if (!psl_range_ok(&c->lane, off, len)) {
    c->srv->stats.rejected++;
    conn_send_error(c, id, PSD__CODE__BAD_FRAME,
                    "%s = %llu: a slot of %llu bytes there is not inside the %zu-byte lane "
                    "(slots start at %u, 64-byte aligned)",
                    field, (unsigned long long)off, (unsigned long long)len, c->lane.len,
                    PSL_HEADER);
    return -1;
  }
  *slot = off;
  return 0;
}

/* ---- create, lookup, list ------------------------------------------------------ */

static int name_ok(const char *name, char *err, size_t errlen) {
  size_t n = strlen(name);
  if (n == 0 || n > MAX_NAME) {
    snprintf(err, errlen, "tensor names have 1 to %d bytes", MAX_NAME);
    return -1;
  }
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)name[i] < 0x21 || (unsigned char)name[i] == 0x7f) {
      snprintf(err, errlen, "tensor name holds a space or control character at byte %zu", i);
      return -1;
    }
  return 0;
}

void store_create(psd_conn *c, uint64_t id, const Psd__Create *req) {
  psd_server *srv = c->srv;
  char err[512];
  const Psd__TensorSpec *ps = req->spec;
  ps_tensor_spec spec;

  if (name_ok(req->name, err, sizeof(err)) != 0) {
    conn_send_error(c, id, PSD__CODE__BAD_SPEC, "%s", err);
    return;
  }
  if (ps->n_shape == 0 || ps->n_shape > PSD_MAX_NDIM) {
    conn_send_error(c, id, PSD__CODE__BAD_SHAPE, "tensor '%s': shape has %zu dimensions; 1 to %d allowed",
                    req->name, ps->n_shape, PSD_MAX_NDIM);
    return;
  }
  uint64_t numel = 1;
  for (size_t i = 0; i < ps->n_shape; i++) {
    if (ps->shape[i] == 0 || numel > (1ull << 62) / ps->shape[i]) {
      conn_send_error(c, id, PSD__CODE__BAD_SHAPE,
                      "tensor '%s': dimension %zu is %llu; dimensions must be >= 1 and the "
                      "product at most 2^62",
                      req->name, i, (unsigned long long)ps->shape[i]);
      return;
    }
    numel *= ps->shape[i];
  }
  if (pmsg_spec_from_pb(ps, &spec, err, sizeof(err)) != 0) {
    conn_send_error(c, id, PSD__CODE__BAD_SPEC, "tensor '%s': %s", req->name, err);
    return;
  }
  uint64_t max_block = (srv->cfg.max_frame - PSW_HEAD_MAX) / sizeof(float);
  psd_tensor *t = store_find(srv, req->name);
  /* block_size 0 means "the tensor's own, else this shard's default": a
   * worker that did not choose one joins a tensor created with one. */
  if (spec.block_size == 0) spec.block_size = t ? t->spec.block_size : srv->cfg.default_block;
  if (spec.block_size > max_block) {
    conn_send_error(c, id, PSD__CODE__BAD_SPEC,
                    "tensor '%s': block_size %llu does not fit the maximum frame (at most %llu)",
                    req->name, (unsigned long long)spec.block_size, (unsigned long long)max_block);
    return;
  }
  if ((numel + spec.block_size - 1) / spec.block_size > MAX_BLOCKS) {
    conn_send_error(c, id, PSD__CODE__BAD_SPEC,
                    "tensor '%s': %llu elements in blocks of %llu make more than %llu blocks",
                    req->name, (unsigned long long)numel, (unsigned long long)spec.block_size,
                    MAX_BLOCKS);
    return;
  }
  if (psm_init_validate(&spec.init, ps->shape, (int)ps->n_shape, err, sizeof(err)) != 0 ||
      psm_optim_validate(&spec.optim, err, sizeof(err)) != 0) {
    conn_send_error(c, id, PSD__CODE__BAD_SPEC, "tensor '%s': %s", req->name, err);
    return;
  }

  if (t != NULL) {
    /* Idempotent create: every worker may call it at start-up. */
    int same_shape = t->ndim == (int)ps->n_shape;
    for (int i = 0; same_shape && i < t->ndim; i++) same_shape = t->shape[i] == ps->shape[i];
    if (!same_shape) {
      char a[256] = "", b[256] = "";
      for (int i = 0; i < t->ndim; i++)
        snprintf(a + strlen(a), sizeof(a) - strlen(a), "%s%llu", i ? "," : "",
                 (unsigned long long)t->shape[i]);
      for (size_t i = 0; i < ps->n_shape; i++)
        snprintf(b + strlen(b), sizeof(b) - strlen(b), "%s%llu", i ? "," : "",
                 (unsigned long long)ps->shape[i]);
      conn_send_error(c, id, PSD__CODE__EXISTS,
                      "tensor '%s' exists with a different spec: shape: [%s] vs [%s]",
                      req->name, a, b);
      return;
    }
    if (psm_spec_diff(&t->spec, &spec, err, sizeof(err)) != 0) {
      conn_send_error(c, id, PSD__CODE__EXISTS,
                      "tensor '%s' exists with a different spec: %s (existing vs requested)",
                      req->name, err);
      return;
    }
    reply_info(c, id, t);
    return;
  }
  t = store_insert(srv, req->name, ps->shape, (int)ps->n_shape, &spec);
  if (t == NULL) {
    conn_send_error(c, id, PSD__CODE__INTERNAL, "out of memory creating '%s'", req->name);
    return;
  }
  log_info("created tensor '%s': %llu elements, %llu of %llu blocks here, init %s, optimizer %s",
           t->name, (unsigned long long)t->numel, (unsigned long long)t->blocks_here,
           (unsigned long long)t->nblocks, ps_init_name(spec.init.kind),
           ps_optim_name(spec.optim.kind));
  reply_info(c, id, t);
}

void store_lookup(psd_conn *c, uint64_t id, const Psd__Lookup *req) {
  psd_tensor *t = store_find(c->srv, req->name);
  if (t == NULL) {
    conn_send_error(c, id, PSD__CODE__NOT_FOUND, "no tensor named '%s'", req->name);
    return;
  }
  reply_info(c, id, t);
}

void store_list(psd_conn *c, uint64_t id) {
  psd_server *srv = c->srv;
  size_t n = srv->ntensors, k = 0;
  Psd__TensorInfo *tis = calloc(n ? n : 1, sizeof(*tis));
  Psd__TensorInfo **ptrs = calloc(n ? n : 1, sizeof(*ptrs));
  pmsg_spec_pb *pbs = calloc(n ? n : 1, sizeof(*pbs));
  if (tis == NULL || ptrs == NULL || pbs == NULL) {
    conn_send_error(c, id, PSD__CODE__INTERNAL, "out of memory listing tensors");
    goto out;
  }
  for (size_t i = 0; i < srv->table_cap; i++)
    for (psd_tensor *t = srv->table[i]; t; t = t->next) {
      tensor_info_fill(srv, t, &tis[k], &pbs[k]);
      ptrs[k] = &tis[k];
      k++;
    }
  Psd__Response r = PSD__RESPONSE__INIT;
  Psd__TensorList tl = PSD__TENSOR_LIST__INIT;
  tl.n_tensors = k;
  tl.tensors = ptrs;
  r.id = id;
  r.body_case = PSD__RESPONSE__BODY_LIST;
  r.list = &tl;
  conn_send(c, &r, NULL, 0);
out:
  free(tis);
  free(ptrs);
  free(pbs);
}

/* ---- pull and push ------------------------------------------------------------ */

/* Find the block a request names; answer the error and return NULL if it is
 * not here. */
static psd_block *find_block(psd_conn *c, uint64_t id, const char *name, uint64_t index,
                             psd_tensor **tp) {
  psd_tensor *t = store_find(c->srv, name);
  if (t == NULL) {
    conn_send_error(c, id, PSD__CODE__NOT_FOUND, "no tensor named '%s'", name);
    return NULL;
  }
  if (index >= t->nblocks) {
    conn_send_error(c, id, PSD__CODE__BAD_SHAPE, "tensor '%s' has %llu blocks; block %llu does not exist",
                    name, (unsigned long long)t->nblocks, (unsigned long long)index);
    return NULL;
  }
  psd_block *b = t->blocks[index];
  if (b == NULL) {
    conn_send_error(c, id, PSD__CODE__WRONG_SHARD,
                    "block %llu of '%s' belongs to shard %d, not this one (%d)",
                    (unsigned long long)index, name,
                    psp_owner(&c->srv->servers, t->name_hash, index), c->srv->shard_index);
    return NULL;
  }
  if (block_materialize(t, b) != 0) {
    conn_send_error(c, id, PSD__CODE__INTERNAL, "out of memory materializing block %llu of '%s'",
                    (unsigned long long)index, name);
    return NULL;
  }
  *tp = t;
  return b;
}

void store_pull(psd_conn *c, uint64_t id, const Psd__Pull *req) {
  psd_tensor *t;
  psd_block *b = find_block(c, id, req->name, req->block, &t);
  if (b == NULL) return;
  uint64_t out;
  if (lane_slot(c, id, b, req->has_lane_out, req->lane_out, req->has_lane_len, req->lane_len,
                "pull.lane_out", &out) != 0)
    return;
  if (req->has_clock && c->rank >= 0 && group_pull_blocked(c->srv, c->rank, req->clock)) {
    group_hold_pull(c, id, t, b, req->clock, out);
    return;
  }
  c->srv->stats.pulls++;
  reply_block(c, id, b, 1, out, 0);
}

/* Elements updated per piece when the new values are also copied out: the
 * piece's weights, state and gradient stay in L2 between the update and the
 * copy, so the copy costs no memory traffic of its own. */
#define APPLY_PIECE 16384

/* Blocks at least this large share their update's pieces with the helper
 * thread (helper.c); below it the hand-off would cost more than it saves. */
#define SPLIT_MIN 65536

typedef struct {
  const ps_optim_spec *spec;
  uint64_t step;
  psd_block *b;
  const float *g;
  float gscale;
  float *out;
} apply_job;

static void apply_piece(void *arg, uint32_t piece) {
  apply_job *j = arg;
  psd_block *b = j->b;
  uint64_t a = (uint64_t)piece * APPLY_PIECE;
  uint64_t e = b->n - a < APPLY_PIECE ? b->n : a + APPLY_PIECE;
  psm_apply_range(j->spec, j->step, b->w, b->state, j->g, j->gscale, b->n, a, e);
  if (j->out != NULL) memcpy(j->out + a, b->w + a, (size_t)(e - a) * sizeof(float));
}

/* Apply one update to b. With out, the new values are also written there
 * (a lane slot), piece by piece while they are in cache. */
static void block_apply(psd_server *srv, psd_tensor *t, psd_block *b, const float *g,
                        float gscale, float *out) {
  apply_job j = {&t->spec.optim, b->version + 1, b, g, gscale, out};
  uint64_t npieces = (b->n + APPLY_PIECE - 1) / APPLY_PIECE;
  if (b->n >= SPLIT_MIN && npieces <= UINT32_MAX) {
    helper_run(srv->helper, apply_piece, &j, (uint32_t)npieces);
  } else if (out == NULL) {
    psm_apply(j.spec, j.step, b->w, b->state, g, gscale, b->n);
  } else {
    for (uint64_t i = 0; i < npieces; i++) apply_piece(&j, (uint32_t)i);
  }
  b->version++;
  srv->stats.pushes++;
}

/* Apply every round of this block that nobody it waits for is missing.
 *
 * A round is the set of pending contributions pushed at the smallest worker
 * clock k. It waits for each live worker that has not contributed at k and
 * whose clock has not passed k (a worker at a later clock has either
 * contributed already or does not push this block). Contributions are summed
 * in rank order, so the result does not depend on arrival order, divided by
 * their count and applied as one update. */
static void round_try_complete(psd_server *srv, psd_block *b) {
  uint32_t nw = srv->group.num_workers;
  while (b->ncontrib > 0) {
    uint64_t k = UINT64_MAX;
    for (uint32_t r = 0; r < nw; r++)
      if (b->present[r] && b->contrib_clock[r] < k) k = b->contrib_clock[r];
    for (uint32_t r = 0; r < nw; r++) {
      if (b->present[r]) {
        /* A contribution nobody waits for, from a live worker, is about to
         * be resent (its connection dropped, or the shard restarted) or is
         * stale (see round_add); wait until it is one or the other. */
        if (b->contrib_clock[r] == k && b->contrib_waiter[r] == NULL && srv->group.w[r].live)
          return;
        continue;
      }
      if (group_expected(srv, r) && srv->group.w[r].clock <= k) return;
    }

    float *acc = server_scratch(srv, b->n);
    if (acc == NULL) {
      log_error("out of memory averaging a round of '%s'; it waits", b->tensor->name);
      return;
    }
    uint32_t count = 0;
    for (uint32_t r = 0; r < nw; r++) {
      if (!b->present[r] || b->contrib_clock[r] != k) continue;
      const float *g = b->contrib[r];
      if (count++ == 0) {
        memcpy(acc, g, b->n * sizeof(float));
      } else {
        for (uint64_t i = 0; i < b->n; i++) acc[i] += g[i];
      }
    }
    float fc = (float)count;
    for (uint64_t i = 0; i < b->n; i++) acc[i] /= fc;
    block_apply(srv, b->tensor, b, acc, 1.0f, NULL);
    srv->stats.rounds++;

    for (uint32_t r = 0; r < nw; r++) {
      if (!b->present[r] || b->contrib_clock[r] != k) continue;
      b->present[r] = 0;
      b->ncontrib--;
      psd_waiter *w = b->contrib_waiter[r];
      b->contrib_waiter[r] = NULL;
      if (w != NULL) {
        reply_block(w->conn, w->id, b, w->want_values, w->lane_out, 0);
        waiter_free(w);
      }
    }
  }
  link_remove(&b->round_link);
}

void store_rounds_recheck(psd_server *srv) {
  psd_link *l = srv->rounds.next;
  while (l != &srv->rounds) {
    psd_block *b = link_entry(l, psd_block, round_link);
    l = l->next;
    round_try_complete(srv, b);
  }
}

/* Add a sync contribution, or re-attach the reply of a resent one. */
static void round_add(psd_conn *c, uint64_t id, psd_block *b, const float *g, float gscale,
                      uint64_t seq, uint64_t clock, int want_values, uint64_t lane_out) {
  psd_server *srv = c->srv;
  uint32_t nw = srv->group.num_workers, r = (uint32_t)c->rank;
  if (b->contrib == NULL && block_round_alloc(b, nw) != 0) {
    conn_send_error(c, id, PSD__CODE__INTERNAL, "out of memory");
    return;
  }
  if (b->present[r] && b->contrib_waiter[r] == NULL && seq > b->contrib_seq[r]) {
    /* Nobody waits for the pending contribution and its worker has moved on
     * to a newer push. A client resends what was not answered, in order,
     * before anything new; so this contribution was answered, in a timeline
     * that a crash rolled back (it came from a checkpoint). Its round was
     * completed there; here it is stale. */
    log_warn("block %llu of '%s': dropping rank %u's contribution %llu restored from a "
             "checkpoint; the worker has moved on to push %llu",
             (unsigned long long)b->index, b->tensor->name, r,
             (unsigned long long)b->contrib_seq[r], (unsigned long long)seq);
    b->present[r] = 0;
    if (--b->ncontrib == 0) link_remove(&b->round_link);
  }
  if (b->present[r]) {
    conn_send_error(c, id, PSD__CODE__BUSY,
                    "rank %u already pushed block %llu of '%s' in this sync round; wait for "
                    "the reply before pushing it again",
                    r, (unsigned long long)b->index, b->tensor->name);
    return;
  }
  if (b->contrib[r] == NULL) {
    b->contrib[r] = aligned_alloc(64, (b->n * sizeof(float) + 63) & ~(size_t)63);
    if (b->contrib[r] == NULL) {
      conn_send_error(c, id, PSD__CODE__INTERNAL, "out of memory");
      return;
    }
  }
  psd_waiter *w = waiter_new(c, id, PSD_WAIT_PUSH);
  if (w == NULL) {
    conn_send_error(c, id, PSD__CODE__INTERNAL, "out of memory");
    return;
  }
  w->block = b;
  w->tensor = b->tensor;
  w->want_values = want_values;
  w->lane_out = lane_out;
  float *dst = b->contrib[r];
  if (gscale == 1.0f)
    memcpy(dst, g, b->n * sizeof(float));
  else
    for (uint64_t i = 0; i < b->n; i++) dst[i] = g[i] * gscale;
  b->present[r] = 1;
  b->contrib_seq[r] = seq;
  b->contrib_clock[r] = clock;
  b->contrib_waiter[r] = w;
  if (b->ncontrib++ == 0) link_insert_tail(&srv->rounds, &b->round_link);
  if (seq) seqmap_put(&srv->seqs, c->worker_id, seq);
  round_try_complete(srv, b);
}

void store_push(psd_conn *c, uint64_t id, const Psd__Push *req, const uint8_t *values,
                size_t len) {
  psd_server *srv = c->srv;
  psd_tensor *t;
  psd_block *b = find_block(c, id, req->name, req->block, &t);
  if (b == NULL) return;
  uint64_t in, out;
  if (lane_slot(c, id, b, req->has_lane_in, req->lane_in, req->has_lane_len, req->lane_len,
                "push.lane_in", &in) != 0 ||
      lane_slot(c, id, b, req->has_lane_out, req->lane_out, req->has_lane_len, req->lane_len,
                "push.lane_out", &out) != 0)
    return;
  if (in != 0 && out != 0 && in != out && in < out + b->n * sizeof(float) &&
      out < in + b->n * sizeof(float)) {
    srv->stats.rejected++;
    conn_send_error(c, id, PSD__CODE__BAD_FRAME,
                    "push.lane_in and push.lane_out overlap without being the same slot");
    return;
  }
  int lane_in = in != 0;
  if (lane_in) {
    if (len != 0) {
      srv->stats.rejected++;
      conn_send_error(c, id, PSD__CODE__BAD_FRAME,
                      "push carries values and names a lane slot; send one or the other");
      return;
    }
    values = c->lane.base + in;
    len = b->n * sizeof(float);
    srv->stats.lane_ops++;
    srv->stats.lane_bytes += len;
  }
  if (len != b->n * sizeof(float)) {
    srv->stats.rejected++;
    conn_send_error(c, id, PSD__CODE__BAD_SHAPE,
                    "block %llu of '%s' has %llu elements; the push carries %zu bytes (%zu floats)",
                    (unsigned long long)b->index, t->name, (unsigned long long)b->n, len,
                    len / sizeof(float));
    return;
  }
  if (c->rank >= 0 && (!srv->group.configured || (uint32_t)c->rank >= srv->group.num_workers)) {
    /* The job was reconfigured under this connection (its old job's
     * workers all left): its rank means nothing any more. */
    conn_send_error(c, id, PSD__CODE__WRONG_SHARD,
                    "rank %d is not part of this shard's job (%u workers); send a new hello",
                    c->rank, srv->group.num_workers);
    return;
  }
  int sync = srv->group.configured && srv->group.staleness == 0 && c->rank >= 0;
  uint64_t seq = req->has_seq ? req->seq : 0;

  /* Exactly once: a push whose sequence number is not above the last one
   * taken from this worker is a resend. */
  uint64_t last;
  if (seq && c->worker_id && seqmap_get(&srv->seqs, c->worker_id, &last) && seq <= last) {
    uint32_t r = (uint32_t)c->rank;
    if (sync && b->present && b->present[r] && b->contrib_seq[r] == seq) {
      /* Still waiting for its round: answer this request instead. */
      psd_waiter *old = b->contrib_waiter[r];
      if (old) waiter_free(old);
      psd_waiter *w = waiter_new(c, id, PSD_WAIT_PUSH);
      if (w == NULL) {
        b->contrib_waiter[r] = NULL;
        conn_send_error(c, id, PSD__CODE__INTERNAL, "out of memory");
        return;
      }
      w->block = b;
      w->tensor = t;
      w->want_values = req->has_want_values && req->want_values;
      w->lane_out = out;
      b->contrib_waiter[r] = w;
      round_try_complete(srv, b); /* it may have waited for this resend */
      return;
    }
    srv->stats.duplicates++;
    reply_block(c, id, b, req->has_want_values && req->want_values, out, PSD_REPLY_DUPLICATE);
    return;
  }

  /* Values sit in the receive buffer; the kernels want aligned floats. A
   * gradient in a lane is shared memory another process can write while
   * this one reads: it is copied out first (and tested on the way), so what
   * is tested below is what is applied. */
  const float *g = (const float *)values;
  int finite_known = 0;
  if (lane_in) {
    float *s = server_gradbuf(srv, b->n);
    if (s == NULL) {
      conn_send_error(c, id, PSD__CODE__INTERNAL, "out of memory");
      return;
    }
    finite_known = psm_copy_finite(s, g, b->n) ? 1 : -1;
    g = s;
  } else if (((uintptr_t)values & (sizeof(float) - 1)) != 0) {
    float *s = server_gradbuf(srv, b->n);
    if (s == NULL) {
      conn_send_error(c, id, PSD__CODE__INTERNAL, "out of memory");
      return;
    }
    memcpy(s, values, len);
    g = s;
  }
  /* The norm only matters for clipping without the client's whole-tensor
   * norm; otherwise a plain finiteness test is enough, and cheaper. */
  double clip = t->spec.optim.clip_norm;
  int need_ss = clip > 0 && !req->has_grad_norm;
  double ss = need_ss ? psm_sumsq(g, b->n) : 0;
  int finite = need_ss ? isfinite(ss) : finite_known ? finite_known > 0 : psm_all_finite(g, b->n);
  if (!finite) {
    srv->stats.rejected++;
    conn_send_error(c, id, PSD__CODE__BAD_GRADIENT,
                    "gradient for block %llu of '%s' holds NaN or Inf; weights left untouched",
                    (unsigned long long)b->index, t->name);
    return;
  }
  float gscale = 1.0f;
  if (clip > 0) {
    double norm = req->has_grad_norm ? req->grad_norm : sqrt(ss);
    if (norm > clip) gscale = (float)(clip / norm);
  }
  int want = req->has_want_values && req->want_values;
  if (sync) {
    uint64_t clock = req->has_clock ? req->clock : 0;
    group_clock(srv, c->rank, clock);
    round_add(c, id, b, g, gscale, seq, clock, want, out);
    return;
  }
  float *fill = want && out != 0 ? (float *)(c->lane.base + out) : NULL;
  block_apply(srv, t, b, g, gscale, fill);
  if (seq) seqmap_put(&srv->seqs, c->worker_id, seq);
  reply_block(c, id, b, want, out, fill != NULL ? PSD_REPLY_FILLED : 0);
}
