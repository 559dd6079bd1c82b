/*
 * rows.c -- the library's side of sparse tables: what it knows of each
 * table (the cache), and the plan of one call: its keys placed on their
 * shards, repeats merged (gradients summed in the order given), frames cut
 * at the table's limit, and the replies' rows put back in the order of the
 * call's keys. A plan is built on the calling thread when the table is
 * known (so that a trainer's threads share the work), else on the loop
 * thread after a lookup; it does no I/O.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_int.h"
#include "msg.h"
#include "psmath.h"

/* ---- the cache ---------------------------------------------------------------- */

const ps__table *ps__table_get(ps_client *c, const char *name) {
  uint64_t h = psm_hash_name(name);
  pthread_mutex_lock(&c->mu);
  const ps__table *t = u64map_get_ptr(&c->tables, h);
  while (t != NULL && strcmp(t->name, name) != 0) t = t->next;
  pthread_mutex_unlock(&c->mu);
  return t;
}

/* Take the entry of `name` out of its chain (the caller holds c->mu). */
static void unlink_entry(ps_client *c, const char *name, uint64_t h) {
  ps__table *head = u64map_get_ptr(&c->tables, h), **pp = &head;
  while (*pp != NULL && strcmp((*pp)->name, name) != 0) pp = &(*pp)->next;
  if (*pp == NULL) return;
  ps__table *t = *pp;
  *pp = t->next;
  if (head != NULL) u64map_put_ptr(&c->tables, h, head); /* a replacement: cannot fail */
  else u64map_del(&c->tables, h, NULL);
  t->next = c->retired; /* a thread may still be planning with it */
  c->retired = t;
}

const ps__table *ps__table_put(ps_client *c, const char *name, const Psd__TableInfo *ti,
                               uint64_t max_frame, char *err, size_t errlen) {
  ps_table_spec spec;
  if (ti->spec == NULL || pmsg_table_from_pb(ti->spec, &spec, err, errlen) != 0) {
    if (ti->spec == NULL) snprintf(err, errlen, "table description without a spec");
    return NULL;
  }
  if (ti->dim < 1 || ti->dim > PSM_TABLE_DIM_MAX) {
    snprintf(err, errlen, "table of dim %u (1 to %d supported)", ti->dim, PSM_TABLE_DIM_MAX);
    return NULL;
  }
  uint64_t row = sizeof(uint64_t) + (uint64_t)ti->dim * sizeof(float);
  uint64_t rpf = max_frame > PSW_HEAD_MAX + row ? (max_frame - PSW_HEAD_MAX) / row : 1;
  uint64_t h = psm_hash_name(name);
  int clips = spec.optim.clip_norm > 0;
  pthread_mutex_lock(&c->mu);
  const ps__table *old = u64map_get_ptr(&c->tables, h);
  while (old != NULL && strcmp(old->name, name) != 0) old = old->next;
  if (old != NULL && old->dim == ti->dim && old->clips == clips && old->rows_per_frame == rpf) {
    pthread_mutex_unlock(&c->mu);
    return old;
  }
  pthread_mutex_unlock(&c->mu);
  ps__table *t = calloc(1, sizeof(*t));
  if (t == NULL || (t->name = strdup(name)) == NULL) {
    free(t);
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  t->hash = h;
  t->dim = ti->dim;
  t->clips = clips;
  t->rows_per_frame = rpf;
  psp_row_map(&c->servers, h, t->owner);
  pthread_mutex_lock(&c->mu);
  unlink_entry(c, name, h);
  t->next = u64map_get_ptr(&c->tables, h);
  if (u64map_put_ptr(&c->tables, h, t) != 0) {
    pthread_mutex_unlock(&c->mu);
    free(t->name);
    free(t);
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  pthread_mutex_unlock(&c->mu);
  return t;
}

void ps__table_forget(ps_client *c, const char *name) {
  pthread_mutex_lock(&c->mu);
  unlink_entry(c, name, psm_hash_name(name));
  pthread_mutex_unlock(&c->mu);
}

void ps__tables_free(ps_client *c) {
  size_t it = 0;
  uint64_t h, v;
  while (u64map_next(&c->tables, &it, &h, &v))
    for (ps__table *t = (ps__table *)(uintptr_t)v, *next; t != NULL; t = next) {
      next = t->next;
      free(t->name);
      free(t);
    }
  u64map_free(&c->tables);
  for (ps__table *t = c->retired, *next; t != NULL; t = next) {
    next = t->next;
    free(t->name);
    free(t);
  }
  c->retired = NULL;
}

/* ---- buffers ---------------------------------------------------------------------- */

/* A 64-byte aligned buffer of at least `bytes`: the smallest pooled one that
 * fits, else a new one. *cap: its size. */
static void *buf_get(ps_client *c, size_t bytes, size_t *cap) {
  bytes = (bytes + 63) & ~(size_t)63;
  if (bytes == 0) bytes = 64;
  pthread_mutex_lock(&c->mu);
  int best = -1;
  for (int i = 0; i < c->npool; i++)
    if (c->pool[i].cap >= bytes && (best < 0 || c->pool[i].cap < c->pool[best].cap)) best = i;
  if (best >= 0) {
    void *p = c->pool[best].p;
    *cap = c->pool[best].cap;
    c->pool[best] = c->pool[--c->npool];
    pthread_mutex_unlock(&c->mu);
    return p;
  }
  pthread_mutex_unlock(&c->mu);
  *cap = bytes;
  return aligned_alloc(64, bytes);
}

/* Keep p for reuse; with the pool full, the smallest buffer goes. */
static void buf_put(ps_client *c, void *p, size_t cap) {
  if (p == NULL) return;
  if (c == NULL) {
    free(p);
    return;
  }
  pthread_mutex_lock(&c->mu);
  if (c->npool < PS__POOL) {
    c->pool[c->npool].p = p;
    c->pool[c->npool++].cap = cap;
    p = NULL;
  } else {
    int small = 0;
    for (int i = 1; i < c->npool; i++)
      if (c->pool[i].cap < c->pool[small].cap) small = i;
    if (c->pool[small].cap < cap) {
      void *old = c->pool[small].p;
      c->pool[small].p = p;
      c->pool[small].cap = cap;
      p = old;
    }
  }
  pthread_mutex_unlock(&c->mu);
  free(p);
}

void ps__pool_free(ps_client *c) {
  for (int i = 0; i < c->npool; i++) free(c->pool[i].p);
  c->npool = 0;
}

/* ---- plans ------------------------------------------------------------------------ */

void ps__plan_free(ps_client *c, ps__plan *p) {
  if (p == NULL) return;
  free(p->pos);
  buf_put(c, p->buf, p->buf_cap);
  if (!p->identity) buf_put(c, p->vals, p->vals_cap);
  free(p->frames);
  free(p);
}

void ps__plan_scatter(const ps__plan *p, float *out) {
  if (p->identity || out == NULL) return;
  size_t row = (size_t)p->dim * sizeof(float);
  for (size_t i = 0; i < p->n; i++) memcpy(out + i * p->dim, p->vals + (size_t)p->pos[i] * p->dim, row);
}

/* Cut the distinct keys of each shard (cnt[s] of them, from first[s] in
 * frame order) into frames of at most rpf; a push gives every shard one at
 * least. */
static int plan_frames(ps_client *c, ps__plan *p, const ps__table *t, int nshards,
                       const size_t *cnt, const size_t *first, int push) {
  size_t nf = 0, rpf = (size_t)t->rows_per_frame;
  for (int s = 0; s < nshards; s++)
    nf += cnt[s] ? (cnt[s] + rpf - 1) / rpf : (size_t)(push != 0);
  p->frames = calloc(nf ? nf : 1, sizeof(*p->frames));
  if (p->frames == NULL) return -1;
  size_t off = 0, row = sizeof(uint64_t) + (push ? (size_t)t->dim * sizeof(float) : 0);
  for (int s = 0; s < nshards; s++) {
    size_t left = cnt[s], at = first[s];
    do {
      if (left == 0 && !push) break;
      size_t k = left < rpf ? left : rpf;
      ps__frame *f = &p->frames[p->nframes++];
      f->shard = s;
      f->first = at;
      f->n = k;
      f->off = off;
      f->len = k * row;
      off += (f->len + 63) & ~(size_t)63; /* each frame's values 64-byte aligned */
      at += k;
      left -= k;
    } while (left > 0);
  }
  p->buf = buf_get(c, off, &p->buf_cap);
  return p->buf == NULL ? -1 : 0;
}

/* A small open-addressing map from a call's keys to their first-seen
 * numbers (the library's u64map is general; this one is sized once for the
 * call and costs one probe or two per key). */
typedef struct {
  uint64_t *key;
  uint32_t *val;             /* number + 1; 0: empty */
  size_t mask;
  uint32_t zero;             /* key 0's number + 1 */
} keyidx;

static int keyidx_init(keyidx *m, size_t n) {
  size_t cap = 16;
  while (cap < 2 * n) cap *= 2;
  m->key = malloc(cap * sizeof(*m->key));
  m->val = calloc(cap, sizeof(*m->val));
  m->mask = cap - 1;
  m->zero = 0;
  return m->key != NULL && m->val != NULL ? 0 : -1;
}

/* The number of key, given `next` if it is new (*fresh = 1). */
static uint32_t keyidx_get(keyidx *m, uint64_t key, uint32_t next, int *fresh) {
  *fresh = 0;
  if (key == 0) {
    if (m->zero == 0) m->zero = next + 1, *fresh = 1;
    return m->zero - 1;
  }
  size_t p = psh_mix64(key) & m->mask;
  for (; m->val[p] != 0; p = (p + 1) & m->mask)
    if (m->key[p] == key) return m->val[p] - 1;
  m->key[p] = key;
  m->val[p] = next + 1;
  *fresh = 1;
  return next;
}

static void keyidx_free(keyidx *m) {
  free(m->key);
  free(m->val);
}

int ps__plan_build(ps_client *c, ps__plan *p, const ps__table *t, const uint64_t *keys,
                   size_t n, int push, const float *grads, float *out, char *err,
                   size_t errlen) {
  int nshards = c->servers.n;
  memset(p, 0, sizeof(*p));
  p->n = n;
  p->dim = t->dim;
  size_t dim = t->dim, m = n ? n : 1;
  int rc = PS_ENOMEM;
  keyidx seen = {0};
  uint32_t *d0 = malloc(m * sizeof(*d0));        /* key i -> distinct, first-seen order */
  uint16_t *ush = malloc(m * sizeof(*ush));      /* distinct -> shard */
  uint32_t *fo = malloc(m * sizeof(*fo));        /* distinct -> frame order */
  uint64_t *ukey = malloc(m * sizeof(*ukey));    /* frame order -> key */
  float **grow = push ? malloc(m * sizeof(*grow)) : NULL; /* frame order -> its gradient row */
  unsigned char *summed = push ? calloc(m, 1) : NULL;
  size_t *cnt = calloc((size_t)nshards, sizeof(*cnt));
  size_t *first = calloc((size_t)nshards, sizeof(*first));
  size_t *next = calloc((size_t)nshards, sizeof(*next));
  p->pos = malloc(m * sizeof(*p->pos));
  if (!d0 || !ush || !fo || !ukey || (push && (!grow || !summed)) || !cnt || !first || !next ||
      !p->pos || keyidx_init(&seen, n) != 0)
    goto done;
  /* Distinct keys, numbered as first seen, and their shards. */
  for (size_t i = 0; i < n; i++) {
    int fresh;
    uint32_t d = keyidx_get(&seen, keys[i], (uint32_t)p->nu, &fresh);
    if (fresh) {
      p->nu++;
      ush[d] = t->owner[psp_row_bucket(t->hash, keys[i])];
      cnt[ush[d]]++;
    }
    d0[i] = d;
  }
  /* Frame order: grouped by shard, first seen first within a shard. */
  for (int s = 1; s < nshards; s++) first[s] = first[s - 1] + cnt[s - 1];
  for (size_t d = 0; d < p->nu; d++) fo[d] = (uint32_t)(first[ush[d]] + next[ush[d]]++);
  p->identity = p->nu == n;
  for (size_t i = 0; i < n; i++) {
    p->pos[i] = fo[d0[i]];
    ukey[p->pos[i]] = keys[i];
    p->identity = p->identity && p->pos[i] == i;
  }
  if (plan_frames(c, p, t, nshards, cnt, first, push) != 0) goto done;
  /* Each frame's keys, then (push) its rows' gradients. */
  for (size_t f = 0; f < p->nframes; f++) {
    const ps__frame *fr = &p->frames[f];
    memcpy(p->buf + fr->off, ukey + fr->first, fr->n * sizeof(uint64_t));
    float *g = (float *)(void *)(p->buf + fr->off + fr->n * sizeof(uint64_t));
    for (size_t j = 0; push && j < fr->n; j++) grow[fr->first + j] = g + j * dim;
  }
  if (push) {
    /* A repeated key's gradients are summed: the first copied, the others
     * added in the order given. */
    for (size_t i = 0; i < n; i++) {
      size_t at = p->pos[i];
      float *dst = grow[at];
      const float *src = grads + i * dim;
      if (!summed[at]) {
        memcpy(dst, src, dim * sizeof(float));
        summed[at] = 1;
      } else {
        for (size_t e = 0; e < dim; e++) dst[e] += src[e];
      }
    }
    /* What is sent must be finite (a sum of finite rows may not be); the
     * norm, for tables that clip, is that of what is sent. */
    double ss = 0;
    int finite = 1;
    for (size_t f = 0; f < p->nframes && finite; f++) {
      const ps__frame *fr = &p->frames[f];
      const float *g = (const float *)(const void *)(p->buf + fr->off + fr->n * sizeof(uint64_t));
      if (t->clips) ss += psm_sumsq(g, fr->n * dim);
      else finite = psm_all_finite(g, fr->n * dim);
    }
    if (!finite || !isfinite(ss)) {
      snprintf(err, errlen, "the gradient holds NaN or Inf (after summing repeated keys); "
               "nothing was sent");
      rc = PS_EGRADIENT;
      goto done;
    }
    p->grad_norm = sqrt(ss);
    p->has_norm = t->clips;
  }
  if (out != NULL) {
    p->vals = p->identity ? out : buf_get(c, m * dim * sizeof(float), &p->vals_cap);
    if (p->vals == NULL) goto done;
  }
  rc = 0;
done:
  if (rc == PS_ENOMEM) snprintf(err, errlen, "out of memory planning %zu rows", n);
  keyidx_free(&seen);
  free(d0);
  free(ush);
  free(fo);
  free(ukey);
  free(grow);
  free(summed);
  free(cnt);
  free(first);
  free(next);
  return rc;
}
