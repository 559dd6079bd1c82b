/* table_round.c -- sync rounds of sparse tables; see table_round.h. */
#include "table_round.h"

#include <stdlib.h>
#include <string.h>

#include "apply.h"
#include "dedupe.h"
#include "group.h"
#include "log.h"
#include "memory.h"
#include "outbox.h"
#include "psmath.h"
#include "table.h"
#include "waiter.h"

static uint64_t contrib_bytes(const psd_table *t, uint64_t n) {
  return n * (sizeof(uint64_t) + (uint64_t)t->dim * sizeof(float));
}

static void contrib_clear(psd_table *t, psd_tcontrib *c) {
  if (c->present) mem_release(PSD_MEM_ROUNDS, contrib_bytes(t, c->n));
  free(c->keys);
  free(c->g);
  memset(c, 0, sizeof(*c));
}

static void round_unlist(psd_table *t) { psd_link_remove(&t->round_link); }

void table_round_free(psd_table *t) {
  psd_tround *r = t->round;
  if (r == NULL) return;
  for (uint32_t i = 0; i < r->nw; i++) {
    /* Held replies of a dropped round are not answered: their clients
     * resend, and the resend is a new contribution. */
    if (r->c[i].w != NULL) r->c[i].w->table = NULL;
    contrib_clear(t, &r->c[i]);
  }
  mem_release(PSD_MEM_ROUNDS, sizeof(*r) + (uint64_t)r->nw * sizeof(*r->c));
  free(r->c);
  free(r);
  t->round = NULL;
  round_unlist(t);
}

/* t's round for a run of nw workers (a round of another run's size is
 * dropped). 0, -1 (out of memory), -2 (over the ceiling). */
static int round_get(psd_table *t, uint32_t nw) {
  if (t->round != NULL && t->round->nw == nw) return 0;
  table_round_free(t);
  uint64_t bytes = sizeof(psd_tround) + (uint64_t)nw * sizeof(psd_tcontrib);
  if (mem_take(PSD_MEM_ROUNDS, bytes) != 0) return -2;
  psd_tround *r = calloc(1, sizeof(*r));
  psd_tcontrib *c = calloc(nw, sizeof(*c));
  if (r == NULL || c == NULL) {
    free(r);
    free(c);
    mem_release(PSD_MEM_ROUNDS, bytes);
    return -1;
  }
  r->nw = nw;
  r->c = c;
  t->round = r;
  return 0;
}

void trow_drop_waiter(psd_waiter *w) {
  psd_table *t = w->table;
  if (t == NULL || t->round == NULL || w->rank < 0 || (uint32_t)w->rank >= t->round->nw) return;
  if (t->round->c[w->rank].w == w) t->round->c[w->rank].w = NULL;
}

/* Is the round at clock k (the smallest pending) still waiting for
 * someone? As round.c's. */
static int round_waits(const psd_table *t, uint64_t k) {
  const psd_group *g = &t->job->group;
  const psd_tround *r = t->round;
  for (uint32_t i = 0; i < r->nw; i++) {
    const psd_tcontrib *c = &r->c[i];
    if (c->present) {
      if (c->clock == k && c->w == NULL && group_live(g, i)) return 1;
      continue;
    }
    if (group_expected(g, i) && group_clock_of(g, i) <= k) return 1;
  }
  return 0;
}

/* The union of the rows pushed at clock k, each averaged over the ranks
 * that pushed it: sums in rank order, then one division per row. */
typedef struct {
  uint64_t *keys;
  float *acc;
  uint32_t *count;
  size_t n;
  u64map where;              /* key -> index */
} row_union;

static void union_free(row_union *u) {
  free(u->keys);
  free(u->acc);
  free(u->count);
  u64map_free(&u->where);
}

static int union_build(const psd_table *t, uint64_t k, row_union *u) {
  const psd_tround *r = t->round;
  uint32_t dim = t->dim;
  size_t total = 0;
  memset(u, 0, sizeof(*u));
  for (uint32_t i = 0; i < r->nw; i++)
    if (r->c[i].present && r->c[i].clock == k) total += r->c[i].n;
  u->keys = malloc((total ? total : 1) * sizeof(*u->keys));
  u->acc = malloc((total ? total : 1) * dim * sizeof(float));
  u->count = malloc((total ? total : 1) * sizeof(*u->count));
  if (u->keys == NULL || u->acc == NULL || u->count == NULL) return -1;
  for (uint32_t i = 0; i < r->nw; i++) {
    const psd_tcontrib *c = &r->c[i];
    if (!c->present || c->clock != k) continue;
    for (uint64_t j = 0; j < c->n; j++) {
      const float *g = c->g + j * dim;
      uint64_t at;
      if (u64map_get(&u->where, c->keys[j], &at)) {
        float *a = u->acc + at * dim;
        for (uint32_t e = 0; e < dim; e++) a[e] += g[e];
        u->count[at]++;
        continue;
      }
      if (u64map_put(&u->where, c->keys[j], u->n) != 0) return -1;
      u->keys[u->n] = c->keys[j];
      memcpy(u->acc + u->n * dim, g, dim * sizeof(float));
      u->count[u->n] = 1;
      u->n++;
    }
  }
  for (size_t j = 0; j < u->n; j++) {
    float fc = (float)u->count[j], *a = u->acc + j * dim;
    for (uint32_t e = 0; e < dim; e++) a[e] /= fc;
  }
  return 0;
}

/* Apply the round at clock k; answer and drop its contributions. */
static void round_complete(psd_server *srv, psd_table *t, uint64_t k) {
  psd_tround *r = t->round;
  row_union u;
  int rc = union_build(t, k, &u), code = 0;
  uint64_t bad = 0;
  if (rc == 0) {
    uint32_t gmax = psm_absmax_bits(u.acc, u.n * t->dim);
    psd_rowhdr **rows;
    if (gmax >= PSM_NONFINITE) {
      rc = -3; /* the sum of finite contributions overflowed */
    } else if ((code = table_resolve(srv, t, u.keys, u.n, 0, &rows, &bad)) != TR_OK) {
      rc = -4;
    } else {
      rc = rows_apply(srv, t, rows, u.acc, u.n, gmax, 1.0f);
      table_release(t, rows, u.n);
    }
  }
  if (rc == 0) srv->stats.rounds++;
  else srv->stats.rejected++;
  for (uint32_t i = 0; i < r->nw; i++) {
    psd_tcontrib *c = &r->c[i];
    if (!c->present || c->clock != k) continue;
    psd_waiter *w = c->w;
    c->w = NULL;
    if (w != NULL) {
      psd_conn *conn = w->conn;
      uint64_t id = w->id;
      int want = w->want_values;
      waiter_free(w); /* its reservation goes before the reply is built */
      if (rc == 0)
        table_answer(srv, conn, id, t, c->keys, c->n, want, 0);
      else if (rc == -4)
        table_resolve_error(srv, conn, id, t, code, u.n, bad);
      else if (rc == -1 || rc == -2)
        outbox_error(&srv->outbox, conn, id, PSD__CODE__INTERNAL,
                     "out of memory applying a sync round of table '%s'; the round is "
                     "dropped and the table left untouched", t->name);
      else
        outbox_error(&srv->outbox, conn, id, PSD__CODE__BAD_GRADIENT,
                     "the averaged rows of table '%s' in this sync round would make rows or "
                     "optimizer state Inf or NaN; the round is dropped and the table left "
                     "untouched", t->name);
    }
    contrib_clear(t, c);
    r->ncontrib--;
  }
  union_free(&u);
}

/* Apply every round of t that nobody it waits for is missing. */
static void round_try_complete(psd_server *srv, psd_table *t) {
  psd_tround *r = t->round;
  while (r != NULL && r->ncontrib > 0) {
    uint64_t k = UINT64_MAX;
    for (uint32_t i = 0; i < r->nw; i++)
      if (r->c[i].present && r->c[i].clock < k) k = r->c[i].clock;
    if (round_waits(t, k)) return;
    round_complete(srv, t, k);
  }
  round_unlist(t);
}

void trounds_recheck(psd_server *srv, psd_job *job) {
  psd_link *l = job->trounds.next;
  while (l != &job->trounds) {
    psd_table *t = psd_link_entry(l, psd_table, round_link);
    l = l->next;
    round_try_complete(srv, t);
  }
}

void table_round_fail(psd_server *srv, psd_table *t, int code, const char *why) {
  psd_tround *r = t->round;
  for (uint32_t i = 0; r != NULL && i < r->nw; i++) {
    psd_waiter *w = r->c[i].w;
    if (w == NULL) continue;
    outbox_error(&srv->outbox, w->conn, w->id, code, "%s", why);
    r->c[i].w = NULL;
    waiter_free(w);
  }
  table_round_free(t);
}

void trounds_fail(psd_server *srv, psd_job *job, int code, const char *why) {
  while (!psd_link_empty(&job->trounds))
    table_round_fail(srv, psd_link_entry(job->trounds.next, psd_table, round_link), code, why);
}

uint64_t trounds_pending(psd_job *job) {
  uint64_t n = 0;
  for (psd_link *l = job->trounds.next; l != &job->trounds; l = l->next) n++;
  return n;
}

static psd_waiter *hold(psd_conn *c, uint64_t id, psd_table *t, size_t n, int want) {
  psd_waiter *w = waiter_new(c, id, PSD_WAIT_PUSH,
                             want ? (uint64_t)n * t->dim * sizeof(float) : 0);
  if (w == NULL) return NULL;
  w->table = t;
  w->want_values = want;
  return w;
}

int trow_resend(psd_server *srv, psd_conn *c, uint64_t id, psd_table *t, uint64_t seq,
                int want) {
  psd_tround *r = t->round;
  uint32_t rank = (uint32_t)c->rank;
  if (c->rank < 0 || r == NULL || rank >= r->nw || !r->c[rank].present ||
      r->c[rank].seq != seq)
    return 0;
  psd_tcontrib *ct = &r->c[rank];
  if (ct->w != NULL) waiter_free(ct->w);
  ct->w = hold(c, id, t, ct->n, want);
  if (ct->w == NULL) {
    waiter_fail(srv, c, id);
    return 1;
  }
  round_try_complete(srv, t); /* it may have waited for this resend */
  return 1;
}

static void refuse_over(psd_server *srv, psd_conn *c, uint64_t id, const psd_table *t) {
  outbox_error(&srv->outbox, c, id, PSD__CODE__RESOURCE_EXHAUSTED,
               "a sync-round contribution to table '%s' would cross the shard's memory "
               "ceiling (--max-memory %llu bytes, %llu in use); nothing changed",
               t->name, (unsigned long long)mem_limit(), (unsigned long long)mem_used());
}

void trow_add(psd_server *srv, psd_conn *c, uint64_t id, psd_table *t, const uint64_t *keys,
              const float *g, size_t n, float gscale, uint64_t seq, uint64_t clock, int want) {
  psd_job *job = t->job;
  uint32_t nw = job->group.num_workers, rank = (uint32_t)c->rank;
  int rc = round_get(t, nw);
  if (rc != 0) {
    if (rc == -2) refuse_over(srv, c, id, t);
    else outbox_error(&srv->outbox, c, id, PSD__CODE__INTERNAL, "out of memory");
    return;
  }
  psd_tround *r = t->round;
  psd_tcontrib *ct = &r->c[rank];
  if (ct->present && ct->w == NULL && seq > ct->seq) {
    /* As round.c: a contribution restored from a checkpoint whose worker
     * has moved on was answered in a timeline a crash rolled back. */
    log_warn("table '%s': dropping rank %u's contribution %llu restored from a checkpoint; "
             "the worker has moved on to push %llu",
             t->name, rank, (unsigned long long)ct->seq, (unsigned long long)seq);
    contrib_clear(t, ct);
    r->ncontrib--;
  }
  if (ct->present) {
    outbox_error(&srv->outbox, c, id, PSD__CODE__BUSY,
                 "rank %u already pushed rows of table '%s' in this sync round; wait for the "
                 "reply before pushing it again",
                 rank, t->name);
    return;
  }
  uint64_t bytes = contrib_bytes(t, n);
  if (mem_take(PSD_MEM_ROUNDS, bytes) != 0) {
    refuse_over(srv, c, id, t);
    return;
  }
  uint64_t *kc = malloc((n ? n : 1) * sizeof(*kc));
  float *gc = malloc((n ? n : 1) * (size_t)t->dim * sizeof(float));
  if (kc == NULL || gc == NULL || (seq && dedupe_reserve(&job->seqs) != 0)) {
    free(kc);
    free(gc);
    mem_release(PSD_MEM_ROUNDS, bytes);
    outbox_error(&srv->outbox, c, id, PSD__CODE__INTERNAL, "out of memory");
    return;
  }
  psd_waiter *w = hold(c, id, t, n, want);
  if (w == NULL) {
    free(kc);
    free(gc);
    mem_release(PSD_MEM_ROUNDS, bytes);
    waiter_fail(srv, c, id);
    return;
  }
  memcpy(kc, keys, n * sizeof(*kc));
  size_t nf = n * (size_t)t->dim;
  if (gscale == 1.0f) memcpy(gc, g, nf * sizeof(float));
  else
    for (size_t i = 0; i < nf; i++) gc[i] = g[i] * gscale;
  ct->present = 1;
  ct->seq = seq;
  ct->clock = clock;
  ct->n = n;
  ct->keys = kc;
  ct->g = gc;
  ct->w = w;
  if (r->ncontrib++ == 0) psd_link_insert_tail(&job->trounds, &t->round_link);
  if (seq) dedupe_record(&job->seqs, c->worker_id, seq);
  round_try_complete(srv, t);
}

int trow_restore(psd_table *t, uint32_t nw, uint32_t rank, uint64_t seq, uint64_t clock,
                 const uint64_t *keys, const float *g, uint64_t n) {
  if (rank >= nw) return -2;
  if (round_get(t, nw) != 0) return -1;
  psd_tcontrib *ct = &t->round->c[rank];
  if (ct->present) return -2;
  ct->keys = malloc((n ? n : 1) * sizeof(*ct->keys));
  ct->g = malloc((n ? n : 1) * (size_t)t->dim * sizeof(float));
  if (ct->keys == NULL || ct->g == NULL) {
    free(ct->keys);
    free(ct->g);
    ct->keys = NULL;
    ct->g = NULL;
    return -1;
  }
  memcpy(ct->keys, keys, n * sizeof(*keys));
  memcpy(ct->g, g, n * (size_t)t->dim * sizeof(float));
  mem_charge(PSD_MEM_ROUNDS, contrib_bytes(t, n));
  ct->present = 1;
  ct->seq = seq;
  ct->clock = clock;
  ct->n = n;
  if (t->round->ncontrib++ == 0) psd_link_insert_tail(&t->job->trounds, &t->round_link);
  return 0;
}
