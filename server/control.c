/*
 * control.c -- delete, reset, set and tune; see control.h. A request is
 * checked whole before anything changes: a refused one changes nothing and
 * is answered with an Error carrying a sentence.
 */
#include "control.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "apply.h"
#include "dedupe.h"
#include "group.h"
#include "log.h"
#include "msg.h"
#include "outbox.h"
#include "psmath.h"
#include "round.h"
#include "set.h"
#include "store.h"
#include "table.h"
#include "tensor.h"

/* The next materialized block of t after *it (start at 0), or NULL. */
static psd_block *next_block(psd_tensor *t, size_t *it) {
  uint64_t k, v;
  return u64map_next(&t->blocks, it, &k, &v) ? (psd_block *)(uintptr_t)v : NULL;
}

static psd_tensor *find_or_answer(psd_server *srv, psd_conn *c, uint64_t id,
                                  const char *name) {
  psd_tensor *t = tensor_find(c->job, name);
  if (t == NULL) store_not_found(srv, c, id, name);
  return t;
}

/* The tensor a delete or reset names; a table's name is answered with the
 * call that acts on tables. */
static psd_tensor *find_lifecycle(psd_server *srv, psd_conn *c, uint64_t id, const char *name,
                                  const char *table_call) {
  if (tensor_find(c->job, name) == NULL && table_find(c->job, name) != NULL) {
    outbox_error(&srv->outbox, c, id, PSD__CODE__BAD_REQUEST,
                 "'%s' is a table, not a tensor: %s", name, table_call);
    return NULL;
  }
  return find_or_answer(srv, c, id, name);
}

/* ---- delete ---------------------------------------------------------------- */

void control_delete(psd_server *srv, psd_conn *c, uint64_t id, const Psd__Delete *req) {
  psd_tensor *t = find_lifecycle(srv, c, id, req->name,
                                 "delete it with ps_delete_table (psctl rm-table)");
  if (t == NULL) return;
  const char *why = "the tensor was deleted";
  uint64_t bytes = 0, nblocks = t->blocks_here;
  size_t it = 0;
  for (psd_block *b; (b = next_block(t, &it)) != NULL;) {
    bytes += tensor_block_bytes(t, b->n);
    round_cancel(srv, b, why);
    set_drop(srv, b, why);
    /* Replies decided earlier keep the values they were decided with. */
    if (b->outbox_refs) outbox_detach(&srv->outbox, b);
  }
  group_drop_pulls(srv, t, why);
  log_info("deleted tensor '%s': %llu blocks here freed (%llu bytes of weights and optimizer "
           "state), by %s",
           t->name, (unsigned long long)nblocks, (unsigned long long)bytes, c->peer);
  tensor_remove(srv, t);
  outbox_ack(&srv->outbox, c, id, "deleted");
}

/* ---- reset ----------------------------------------------------------------- */

void control_reset(psd_server *srv, psd_conn *c, uint64_t id, const Psd__Reset *req) {
  psd_tensor *t = find_lifecycle(srv, c, id, req->name,
                                 "empty it with ps_reset_table (psctl reset-table)");
  if (t == NULL) return;
  /* First, nothing may still send a block's current values from its memory
   * (a failure here changes nothing anyone can see). */
  size_t it = 0;
  for (psd_block *b; (b = next_block(t, &it)) != NULL;) {
    if (block_unpin(b) != 0) {
      outbox_error(&srv->outbox, c, id, PSD__CODE__INTERNAL,
                   "out of memory copying block %llu of '%s' for the replies still sending "
                   "it; nothing was reset",
                   (unsigned long long)b->index, t->name);
      return;
    }
  }
  it = 0;
  for (psd_block *b; (b = next_block(t, &it)) != NULL;) {
    if (b->outbox_refs) outbox_detach(&srv->outbox, b);
    block_reinit(srv, b);
  }
  log_info("reset tensor '%s' from its spec (init %s, seed %llu): %llu blocks here "
           "reinitialized, optimizer state and versions zeroed, by %s",
           t->name, ps_init_name(t->spec.init.kind), (unsigned long long)t->spec.init.seed,
           (unsigned long long)t->blocks_here, c->peer);
  store_reply_info(srv, c, id, t);
}

/* ---- set ------------------------------------------------------------------- */

/* The elements [off, off + n) of b a set of len bytes at element off
 * writes: 0, or -1 after answering why they do not fit. */
static int set_range(psd_server *srv, psd_conn *c, uint64_t id, const psd_block *b, uint64_t off,
                     size_t len, uint64_t *n) {
  *n = len / sizeof(float);
  if (len % sizeof(float) == 0 && *n > 0 && off < b->n && *n <= b->n - off) return 0;
  srv->stats.rejected++;
  outbox_error(&srv->outbox, c, id, PSD__CODE__BAD_SHAPE,
               "set of block %llu of '%s' (%llu elements): %zu bytes of values at element %llu "
               "are not a whole, non-empty run of float32 inside the block; nothing written",
               (unsigned long long)b->index, b->tensor->name, (unsigned long long)b->n, len,
               (unsigned long long)off);
  return -1;
}

void control_set(psd_server *srv, psd_conn *c, uint64_t id, const Psd__Set *req,
                 const uint8_t *values, size_t len) {
  psd_tensor *t;
  psd_block *b = store_find_block(srv, c, id, req->name, req->block, 0, &t);
  if (b == NULL) return;
  uint64_t off = req->has_offset ? req->offset : 0, n;
  if (set_range(srv, c, id, b, off, len, &n) != 0) return;
  psd_job *job = c->job;
  psd_group *g = &job->group;
  if (c->rank >= 0 && (!g->configured || (uint32_t)c->rank >= g->num_workers)) {
    /* A guard: server.c lets only members of the job's running
     * incarnation this far. */
    outbox_error(&srv->outbox, c, id, PSD__CODE__JOB_ENDED,
                 "rank %d is not part of job '%s' (%u workers); send a new hello", c->rank,
                 job->name, g->num_workers);
    return;
  }
  uint64_t seq = req->has_seq && c->worker_id != 0 ? req->seq : 0, last;
  int zero = req->has_zero_state && req->zero_state;
  if (seq && dedupe_last(&job->seqs, c->worker_id, &last) && seq <= last) {
    /* A resend: still held, it gets the held set's reply; else it was
     * written already, and is answered without writing it again. */
    if (set_resend(srv, c, id, b, seq)) return;
    srv->stats.duplicates++;
    outbox_block(&srv->outbox, c, id, b, 0, 0, PSD_REPLY_DUPLICATE);
    return;
  }
  /* Aligned floats, and what is checked is what is written. */
  float *v = apply_gradbuf(srv, n);
  if (v == NULL) {
    outbox_error(&srv->outbox, c, id, PSD__CODE__INTERNAL, "out of memory");
    return;
  }
  if (psm_copy_absmax_bits(v, (const float *)values, n) >= PSM_NONFINITE) {
    srv->stats.rejected++;
    outbox_error(&srv->outbox, c, id, PSD__CODE__BAD_REQUEST,
                 "set of block %llu of '%s': the values hold NaN or Inf; nothing written",
                 (unsigned long long)b->index, t->name);
    return;
  }
  if (g->configured && g->staleness == 0 && (b->ncontrib > 0 || !psd_link_empty(&b->sets))) {
    /* Between rounds only. */
    if (round_waits_for(b, c->rank)) {
      outbox_error(&srv->outbox, c, id, PSD__CODE__BUSY,
                   "set of block %llu of '%s' refused: its sync round in progress waits for "
                   "rank %d's own push, so a set held until that round completes would wait "
                   "for itself; set before pushing (e.g. before a barrier)",
                   (unsigned long long)b->index, t->name, c->rank);
      return;
    }
    set_hold(srv, c, id, b, off, v, n, zero, seq);
    return;
  }
  if (seq && dedupe_reserve(&job->seqs) != 0) {
    outbox_error(&srv->outbox, c, id, PSD__CODE__INTERNAL,
                 "out of memory recording the set for exactly-once delivery; nothing written");
    return;
  }
  if (set_write(srv, b, off, v, n, zero) != 0) {
    outbox_error(&srv->outbox, c, id, PSD__CODE__INTERNAL,
                 "out of memory copying block %llu of '%s' for the replies still sending it; "
                 "nothing written",
                 (unsigned long long)b->index, t->name);
    return;
  }
  if (seq) dedupe_record(&job->seqs, c->worker_id, seq);
  log_debug("set %llu values of block %llu of '%s' at element %llu%s", (unsigned long long)n,
            (unsigned long long)b->index, t->name, (unsigned long long)off,
            zero ? ", optimizer state zeroed" : "");
  outbox_block(&srv->outbox, c, id, b, 0, 0, 0);
}

/* ---- tune ------------------------------------------------------------------ */

/* t's optimizer spec with the fields present in po: 0 and *out, or -1 with
 * a sentence in err (another kind, an unknown name, a value out of range). */
static int tuned_spec(const psd_tensor *t, const Psd__OptimSpec *po, ps_optim_spec *out,
                      char *err, size_t errlen) {
  ps_optim_kind kind;
  if (po->kind != NULL && ps_optim_from_name(po->kind, &kind) != 0) {
    snprintf(err, errlen, "unknown optimizer '%s'", po->kind);
    return -1;
  }
  if (po->kind != NULL && kind != t->spec.optim.kind) {
    snprintf(err, errlen,
             "tensor '%s': its optimizer is %s and stays %s: the kind is fixed at creation "
             "(its state would mean nothing to %s); delete the tensor and create it again to "
             "change it",
             t->name, ps_optim_name(t->spec.optim.kind), ps_optim_name(t->spec.optim.kind),
             ps_optim_name(kind));
    return -1;
  }
  ps_tensor_spec s = t->spec;
  char why[400];
  if (pmsg_optim_overlay(po, &s.optim, why, sizeof(why)) != 0 ||
      psm_spec_validate(&s, t->shape, t->ndim, why, sizeof(why)) != 0) {
    snprintf(err, errlen, "tensor '%s': %s", t->name, why);
    return -1;
  }
  *out = s.optim;
  return 0;
}

/* Answer with the tensors tuned, their specs as they are now. */
static void reply_list(psd_server *srv, psd_conn *c, uint64_t id, psd_tensor **ts, size_t n) {
  Psd__TensorInfo *tis = calloc(n ? n : 1, sizeof(*tis));
  Psd__TensorInfo **ptrs = calloc(n ? n : 1, sizeof(*ptrs));
  pmsg_spec_pb *pbs = calloc(n ? n : 1, sizeof(*pbs));
  if (tis == NULL || ptrs == NULL || pbs == NULL) {
    outbox_error(&srv->outbox, c, id, PSD__CODE__INTERNAL,
                 "out of memory describing the tensors tuned (they were tuned)");
  } else {
    for (size_t i = 0; i < n; i++) {
      tensor_info_fill(ts[i], &tis[i], &pbs[i]);
      ptrs[i] = &tis[i];
    }
    Psd__Response r = PSD__RESPONSE__INIT;
    Psd__TensorList tl = PSD__TENSOR_LIST__INIT;
    tl.n_tensors = n;
    tl.tensors = ptrs;
    r.body_case = PSD__RESPONSE__BODY_LIST;
    r.list = &tl;
    outbox_response(&srv->outbox, c, id, &r);
  }
  free(tis);
  free(ptrs);
  free(pbs);
}

void control_tune(psd_server *srv, psd_conn *c, uint64_t id, const Psd__Tune *req) {
  psd_job *job = c->job;
  size_t n = 0, cap = req->name != NULL ? 1 : job->ntensors;
  psd_tensor **ts = calloc(cap ? cap : 1, sizeof(*ts));
  ps_optim_spec *tuned = calloc(cap ? cap : 1, sizeof(*tuned));
  char err[800];
  if (ts == NULL || tuned == NULL) {
    outbox_error(&srv->outbox, c, id, PSD__CODE__INTERNAL, "out of memory; nothing was tuned");
    goto out;
  }
  if (req->name != NULL) {
    if ((ts[0] = find_or_answer(srv, c, id, req->name)) == NULL) goto out;
    n = 1;
  } else {
    for (size_t i = 0; i < job->table_cap; i++)
      for (psd_tensor *t = job->table[i]; t != NULL && n < cap; t = t->next) ts[n++] = t;
  }
  /* Every tensor is checked before any changes: all or none. */
  for (size_t i = 0; i < n; i++)
    if (tuned_spec(ts[i], req->optim, &tuned[i], err, sizeof(err)) != 0) {
      srv->stats.rejected++;
      outbox_error(&srv->outbox, c, id, PSD__CODE__BAD_SPEC, "%s; nothing was tuned", err);
      goto out;
    }
  for (size_t i = 0; i < n; i++) {
    psd_tensor *t = ts[i];
    ps_tensor_spec before = t->spec;
    t->spec.optim = tuned[i];
    if (psm_spec_diff(&before, &t->spec, err, sizeof(err)) != 0)
      log_info("tuned tensor '%s' from its next update (update %llu of its blocks here), "
               "before vs after: %s; by %s",
               t->name, (unsigned long long)(t->vs.n ? t->vs.min + 1 : 1), err, c->peer);
  }
  reply_list(srv, c, id, ts, n);
out:
  free(ts);
  free(tuned);
}
