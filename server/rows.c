/*
 * rows.c -- the sparse-table requests; see rows.h and table.h. A push, from
 * the frame to the rows: rows_push -> rows_locate (the table, the keys and
 * gradients: counts, dim, ownership, finite) -> resend? (exactly-once) ->
 * sync: table_round.c trow_add; async: table_resolve (rows found or made,
 * pinned) -> apply.c rows_apply -> table_reply_rows.
 */
#include "rows.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "apply.h"
#include "dedupe.h"
#include "group.h"
#include "log.h"
#include "memory.h"
#include "msg.h"
#include "outbox.h"
#include "psmath.h"
#include "round.h"
#include "store.h"
#include "table.h"
#include "table_round.h"
#include "tensor.h"

static void reply_info(psd_server *srv, psd_conn *c, uint64_t id, psd_table *t) {
  Psd__Response r = PSD__RESPONSE__INIT;
  Psd__TableList tl = PSD__TABLE_LIST__INIT;
  Psd__TableInfo ti, *tip = &ti;
  pmsg_table_pb pb;
  table_info_fill(srv, t, &ti, &pb);
  tl.n_tables = 1;
  tl.tables = &tip;
  r.body_case = PSD__RESPONSE__BODY_TABLES;
  r.tables = &tl;
  outbox_response(&srv->outbox, c, id, &r);
}

void rows_create_table(psd_server *srv, psd_conn *c, uint64_t id, const Psd__CreateTable *req) {
  char err[512];
  ps_table_spec spec;
  psd_job *job = c->job;
  if (store_name_check(req->name, err, sizeof(err)) != 0) {
    outbox_error(&srv->outbox, c, id, PSD__CODE__BAD_SPEC, "%s", err);
    return;
  }
  if (tensor_find(job, req->name) != NULL) {
    outbox_error(&srv->outbox, c, id, PSD__CODE__EXISTS,
                 "a tensor named '%s' exists in job '%s'; a name is a tensor or a table, "
                 "never both", req->name, job->name);
    return;
  }
  if (pmsg_table_from_pb(req->spec, &spec, err, sizeof(err)) != 0 ||
      psm_table_validate(&spec, req->dim, err, sizeof(err)) != 0) {
    outbox_error(&srv->outbox, c, id, PSD__CODE__BAD_SPEC, "table '%s': %s", req->name, err);
    return;
  }
  uint64_t row_bytes = sizeof(uint64_t) + (uint64_t)req->dim * sizeof(float);
  if (row_bytes + PSW_HEAD_MAX > srv->cfg.max_frame) {
    outbox_error(&srv->outbox, c, id, PSD__CODE__BAD_SPEC,
                 "table '%s': a row of %u floats does not fit this shard's frames "
                 "(--max-frame %llu)", req->name, req->dim,
                 (unsigned long long)srv->cfg.max_frame);
    return;
  }
  psd_table *t = table_find(job, req->name);
  if (t != NULL) {
    /* Idempotent: every worker may create it at start-up. */
    if (t->dim != req->dim) {
      outbox_error(&srv->outbox, c, id, PSD__CODE__EXISTS,
                   "table '%s' exists with a different spec: dim: %u vs %u", req->name,
                   t->dim, req->dim);
      return;
    }
    if (psm_table_spec_diff(&t->spec, &spec, err, sizeof(err)) != 0) {
      outbox_error(&srv->outbox, c, id, PSD__CODE__EXISTS,
                   "table '%s' exists with a different spec: %s (existing vs requested)",
                   req->name, err);
      return;
    }
    reply_info(srv, c, id, t);
    return;
  }
  int over;
  t = table_insert(srv, job, req->name, req->dim, &spec, &over);
  if (t == NULL) {
    if (over)
      outbox_error(&srv->outbox, c, id, PSD__CODE__RESOURCE_EXHAUSTED,
                   "creating table '%s' would cross this shard's memory ceiling "
                   "(--max-memory %llu bytes, %llu in use); nothing changed",
                   req->name, (unsigned long long)mem_limit(), (unsigned long long)mem_used());
    else
      outbox_error(&srv->outbox, c, id, PSD__CODE__INTERNAL, "out of memory creating '%s'",
                   req->name);
    return;
  }
  log_info("created table '%s' in job '%s': rows of %u floats (made on first touch), init %s, "
           "optimizer %s, max_rows %llu (%llu here), eviction %s",
           t->name, job->name, t->dim, ps_init_name(spec.init.kind),
           ps_optim_name(spec.optim.kind), (unsigned long long)spec.max_rows,
           (unsigned long long)t->limit, ps_evict_name(spec.evict));
  reply_info(srv, c, id, t);
}

/* The table a request names; else the error (a tensor of that name: the
 * call is the wrong kind, and `hint` says the right one) and NULL. */
static psd_table *find_table_as(psd_server *srv, psd_conn *c, uint64_t id, const char *name,
                                const char *hint) {
  psd_table *t = table_find(c->job, name);
  if (t != NULL) return t;
  if (tensor_find(c->job, name) != NULL)
    outbox_error(&srv->outbox, c, id, PSD__CODE__BAD_REQUEST, "'%s' is a tensor, not a table: %s",
                 name, hint);
  else
    outbox_error(&srv->outbox, c, id, PSD__CODE__NOT_FOUND, "no table named '%s' in job '%s'",
                 name, c->job->name);
  return NULL;
}

static psd_table *find_table(psd_server *srv, psd_conn *c, uint64_t id, const char *name) {
  return find_table_as(srv, c, id, name, "read and write it with ps_pull and ps_push");
}

void rows_lookup_table(psd_server *srv, psd_conn *c, uint64_t id, const Psd__LookupTable *req) {
  psd_table *t = find_table(srv, c, id, req->name);
  if (t != NULL) reply_info(srv, c, id, t);
}

void rows_list_tables(psd_server *srv, psd_conn *c, uint64_t id) {
  psd_job *job = c->job;
  size_t n = job->ntables, k = 0;
  Psd__TableInfo *tis = calloc(n ? n : 1, sizeof(*tis));
  Psd__TableInfo **ptrs = calloc(n ? n : 1, sizeof(*ptrs));
  pmsg_table_pb *pbs = calloc(n ? n : 1, sizeof(*pbs));
  if (tis == NULL || ptrs == NULL || pbs == NULL) {
    outbox_error(&srv->outbox, c, id, PSD__CODE__INTERNAL, "out of memory listing tables");
    goto out;
  }
  size_t it = 0;
  uint64_t key, v;
  while (u64map_next(&job->tables, &it, &key, &v))
    for (psd_table *t = (psd_table *)(uintptr_t)v; t != NULL && k < n; t = t->next) {
      table_info_fill(srv, t, &tis[k], &pbs[k]);
      ptrs[k] = &tis[k];
      k++;
    }
  Psd__Response r = PSD__RESPONSE__INIT;
  Psd__TableList tl = PSD__TABLE_LIST__INIT;
  tl.n_tables = k;
  tl.tables = ptrs;
  r.body_case = PSD__RESPONSE__BODY_TABLES;
  r.tables = &tl;
  outbox_response(&srv->outbox, c, id, &r);
out:
  free(tis);
  free(ptrs);
  free(pbs);
}

/* A row request, located and checked. */
typedef struct {
  psd_table *t;
  const uint64_t *keys;
  const float *g;            /* push: n x dim, aligned, finite */
  size_t n;
  uint32_t gmax;             /* psm_absmax_bits of g */
} rowreq;

/* Locate and check a request's keys (and gradients): the table, the
 * counts, the dim, each key this shard's, the gradients finite. 0, or -1
 * after answering the refusal. */
static int rows_locate(psd_server *srv, psd_conn *c, uint64_t id, const char *name, uint64_t n,
                       const uint8_t *values, size_t len, int push, rowreq *rq) {
  static const uint64_t none[1] = {0};
  psd_table *t = find_table(srv, c, id, name);
  if (t == NULL) return -1;
  if (values == NULL) values = (const uint8_t *)none; /* no keys: nothing to point at */
  rq->gmax = 0;
  const char *what = push ? "PushRows" : "PullRows";
  uint64_t row = (uint64_t)t->dim * sizeof(float);
  uint64_t kbytes = n <= len / sizeof(uint64_t) ? n * sizeof(uint64_t) : UINT64_MAX;
  uint64_t want = kbytes == UINT64_MAX ? UINT64_MAX : kbytes + (push ? n * row : 0);
  if (want != len) {
    srv->stats.rejected++;
    if (push && kbytes != UINT64_MAX && n > 0 && len > kbytes &&
        (len - kbytes) % (n * sizeof(float)) == 0)
      outbox_error(&srv->outbox, c, id, PSD__CODE__BAD_SHAPE,
                   "%s carries %llu rows of %llu floats; table '%s' has rows of %u floats "
                   "(dim); nothing changed",
                   what, (unsigned long long)n,
                   (unsigned long long)((len - kbytes) / (n * sizeof(float))), t->name, t->dim);
    else
      outbox_error(&srv->outbox, c, id, PSD__CODE__BAD_SHAPE,
                   "%s names %llu keys of table '%s' (rows of %u floats): %s bytes of %s "
                   "expected, the frame carries %zu; nothing changed",
                   what, (unsigned long long)n, t->name, t->dim,
                   want == UINT64_MAX ? "more" : "exactly that many",
                   push ? "keys and gradients" : "keys", len);
    return -1;
  }
  rq->t = t;
  rq->n = (size_t)n;
  uint64_t nf = push ? (uint64_t)rq->n * t->dim : 0;
  const uint8_t *gp = values + kbytes;
  /* The kernels want aligned keys and floats. Senders align the values
   * (psw_encode), so they are in place; a frame that put them elsewhere is
   * copied, into the gradient buffer (which completing other rounds while
   * this request is handled does not touch). */
  int copied = ((uintptr_t)values & 7) != 0 || ((uintptr_t)gp & (sizeof(float) - 1)) != 0;
  if (copied) {
    float *buf = apply_gradbuf(srv, 2 * (uint64_t)rq->n + nf + 1);
    if (buf == NULL) {
      outbox_error(&srv->outbox, c, id, PSD__CODE__INTERNAL, "out of memory");
      return -1;
    }
    memcpy(buf, values, kbytes);
    rq->keys = (const uint64_t *)(void *)buf;
    if (push) rq->gmax = psm_copy_absmax_bits(buf + 2 * rq->n, (const float *)(const void *)gp, nf);
    rq->g = buf + 2 * rq->n;
  } else {
    rq->keys = (const uint64_t *)(const void *)values;
    rq->g = (const float *)(const void *)gp;
    if (push) rq->gmax = psm_absmax_bits(rq->g, nf);
  }
  for (size_t i = 0; i < rq->n; i++)
    if (!table_owns(srv, t, rq->keys[i])) {
      srv->stats.rejected++;
      outbox_error(&srv->outbox, c, id, PSD__CODE__WRONG_SHARD,
                   "key %llu of table '%s' belongs to shard %u, not this one (%d); nothing "
                   "changed",
                   (unsigned long long)rq->keys[i], t->name,
                   t->owner[psp_row_bucket(t->name_hash, rq->keys[i])], srv->shard_index);
      return -1;
    }
  if (!push) {
    rq->g = NULL;
    return 0;
  }
  if (rq->gmax >= PSM_NONFINITE) {
    size_t bad = 0;
    while (bad + 1 < rq->n && psm_absmax_bits(rq->g + bad * t->dim, t->dim) < PSM_NONFINITE)
      bad++;
    srv->stats.rejected++;
    outbox_error(&srv->outbox, c, id, PSD__CODE__BAD_GRADIENT,
                 "the gradient row of key %llu (row %zu of the push) to table '%s' holds NaN "
                 "or Inf; nothing changed",
                 (unsigned long long)rq->keys[bad], bad, t->name);
    return -1;
  }
  return 0;
}

void rows_pull(psd_server *srv, psd_conn *c, uint64_t id, const Psd__PullRows *req,
               const uint8_t *values, size_t len) {
  rowreq rq;
  if (rows_locate(srv, c, id, req->name, req->n, values, len, 0, &rq) != 0) return;
  if (req->has_clock && c->rank >= 0 &&
      group_pull_blocked(&c->job->group, c->rank, req->clock)) {
    group_hold_rows(srv, c->job, c, id, rq.t, rq.keys, rq.n, req->clock);
    return;
  }
  srv->stats.row_pulls++;
  table_answer(srv, c, id, rq.t, rq.keys, rq.n, 1, 0);
}

/* Apply an async (or SSP) push of rows now and answer it. */
static void push_apply(psd_server *srv, psd_conn *c, uint64_t id, const rowreq *rq,
                       float gscale, uint64_t seq, int want) {
  psd_table *t = rq->t;
  if (seq && dedupe_reserve(&c->job->seqs) != 0) {
    outbox_error(&srv->outbox, c, id, PSD__CODE__INTERNAL,
                 "out of memory recording the push for exactly-once delivery; not applied");
    return;
  }
  uint64_t bad = 0;
  psd_rowhdr **rows;
  uint64_t extra = want ? (uint64_t)rq->n * t->dim * sizeof(float) : 0;
  int rc = table_resolve(srv, t, rq->keys, rq->n, extra, &rows, &bad);
  if (rc != TR_OK) {
    srv->stats.rejected++;
    table_resolve_error(srv, c, id, t, rc, rq->n, bad);
    return;
  }
  rc = rows_apply(srv, t, rows, rq->g, rq->n, rq->gmax, gscale);
  if (rc != 0) {
    table_release(t, rows, rq->n);
    srv->stats.rejected++;
    if (rc == -2)
      outbox_error(&srv->outbox, c, id, PSD__CODE__INTERNAL,
                   "out of memory saving rows of table '%s' before a large update; not applied",
                   t->name);
    else
      outbox_error(&srv->outbox, c, id, PSD__CODE__BAD_GRADIENT,
                   "this update would make rows of table '%s' Inf or NaN (gradient up to %g, "
                   "learning rate %g); the table is left untouched",
                   t->name, (double)psm_bits_float(rq->gmax) * gscale,
                   psm_lr_at(&t->spec.optim, t->step + 1));
    return;
  }
  if (seq) dedupe_record(&c->job->seqs, c->worker_id, seq);
  if (want) table_reply_rows(srv, c, id, t, rows, rq->n, 0);
  else {
    table_release(t, rows, rq->n);
    outbox_rows(&srv->outbox, c, id, NULL, 0, 0, t->step, 0);
  }
}

void rows_push(psd_server *srv, psd_conn *c, uint64_t id, const Psd__PushRows *req,
               const uint8_t *values, size_t len) {
  psd_group *g = &c->job->group;
  if (c->rank >= 0 && (!g->configured || (uint32_t)c->rank >= g->num_workers)) {
    outbox_error(&srv->outbox, c, id, PSD__CODE__JOB_ENDED,
                 "rank %d is not part of job '%s' (%u workers); send a new hello", c->rank,
                 c->job->name, g->num_workers);
    return;
  }
  if (g->configured && g->staleness == 0 && c->rank < 0) {
    srv->stats.rejected++;
    outbox_error(&srv->outbox, c, id, PSD__CODE__PERMISSION_DENIED,
                 "push to table '%s' refused: job '%s' is a sync job, and a push from a tool "
                 "(rank -1) would be applied outside its rounds; only the job's workers push",
                 req->name, c->job->name);
    return;
  }
  rowreq rq;
  if (rows_locate(srv, c, id, req->name, req->n, values, len, 1, &rq) != 0) return;
  psd_table *t = rq.t;
  int sync = g->configured && g->staleness == 0 && c->rank >= 0;
  int want = req->has_want_values && req->want_values;
  uint64_t seq = req->has_seq && c->worker_id != 0 ? req->seq : 0, last;
  srv->stats.row_pushes++;
  if (seq && dedupe_last(&c->job->seqs, c->worker_id, &last) && seq <= last) {
    /* A resend: still waiting for its round, it takes the round's reply;
     * else it was applied, and is answered, never applied twice. */
    if (sync && trow_resend(srv, c, id, t, seq, want)) return;
    srv->stats.duplicates++;
    table_answer(srv, c, id, t, rq.keys, rq.n, want, PSD_REPLY_DUPLICATE);
    return;
  }
  /* Clipping needs the norm of the whole push's gradient: the client
   * sends it; this frame's own norm stands in when it does not. */
  float gscale = 1.0f;
  const ps_optim_spec *o = &t->spec.optim;
  if (o->clip_norm > 0) {
    double norm = req->has_grad_norm ? req->grad_norm
                                     : sqrt(psm_sumsq(rq.g, (uint64_t)rq.n * t->dim));
    if (norm > o->clip_norm) gscale = (float)(o->clip_norm / norm);
  }
  if (sync) {
    uint64_t clock = req->has_clock ? req->clock : 0;
    if (group_clock(c->job, c->rank, clock) & GROUP_CHANGED) rounds_recheck(srv, c->job);
    trow_add(srv, c, id, t, rq.keys, rq.g, rq.n, gscale, seq, clock, want);
    return;
  }
  push_apply(srv, c, id, &rq, gscale, seq, want);
}

/* ---- a table's life ---------------------------------------------------------- */

void rows_delete_table(psd_server *srv, psd_conn *c, uint64_t id, const char *name) {
  psd_table *t = find_table_as(srv, c, id, name, "delete it with ps_delete (psctl rm)");
  if (t == NULL) return;
  char why[PSD_MAX_NAME + 160];
  snprintf(why, sizeof(why),
           "table '%s' was deleted while this push waited for its sync round; nothing was "
           "applied", t->name);
  table_round_fail(srv, t, PSD__CODE__NOT_FOUND, why);
  group_drop_row_pulls(srv, t, "the table was deleted");
  log_info("deleted table '%s' of job '%s': %llu rows here freed (%llu bytes of rows, "
           "optimizer state and index), by %s",
           t->name, c->job->name, (unsigned long long)t->nrows, (unsigned long long)t->bytes,
           c->peer);
  table_remove(srv, t);
  outbox_ack(&srv->outbox, c, id, "deleted");
}

void rows_reset_table(psd_server *srv, psd_conn *c, uint64_t id, const char *name) {
  psd_table *t = find_table_as(srv, c, id, name, "reset it with ps_reset (psctl reset)");
  if (t == NULL) return;
  uint64_t rows = t->nrows, bytes = t->bytes;
  table_clear(t);
  log_info("reset table '%s' of job '%s' from its spec (init %s, seed %llu): %llu rows here "
           "freed (%llu bytes given back), step and evictions zeroed, by %s",
           t->name, c->job->name, ps_init_name(t->spec.init.kind),
           (unsigned long long)t->spec.init.seed, (unsigned long long)rows,
           (unsigned long long)(bytes - t->bytes), c->peer);
  reply_info(srv, c, id, t);
}
