/* round.c -- sync (BSP) rounds; see round.h. */
#include "round.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "apply.h"
#include "dedupe.h"
#include "group.h"
#include "log.h"
#include "memory.h"
#include "metrics.h"
#include "outbox.h"
#include "psmath.h"
#include "set.h"
#include "table_round.h"
#include "waiter.h"

/* Bytes of a round's arrays for nw workers, and of one contribution. */
static uint64_t arrays_bytes(uint32_t nw) {
  return (uint64_t)nw * (sizeof(float *) + 8 + 8 + 1 + sizeof(psd_waiter *));
}
static uint64_t contrib_bytes(const psd_block *b) {
  return (b->n * sizeof(float) + 63) & ~(uint64_t)63;
}

void round_free(psd_block *b) {
  if (b->contrib) {
    for (uint32_t r = 0; r < b->round_nw; r++)
      if (b->contrib[r]) {
        free(b->contrib[r]);
        mem_release(PSD_MEM_ROUNDS, contrib_bytes(b));
      }
  }
  if (b->round_nw) mem_release(PSD_MEM_ROUNDS, arrays_bytes(b->round_nw));
  if (b->contrib_waiter) {
    /* Held replies of a dropped round are not answered; their clients
     * resend, and the resend is a new contribution. */
    for (uint32_t r = 0; r < b->round_nw; r++)
      if (b->contrib_waiter[r]) b->contrib_waiter[r]->block = NULL;
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
  b->round_nw = 0;
  psd_link_remove(&b->round_link);
}

int round_alloc(psd_block *b, uint32_t nw) {
  if (mem_take(PSD_MEM_ROUNDS, arrays_bytes(nw)) != 0) return -2;
  b->contrib = calloc(nw, sizeof(*b->contrib));
  b->contrib_seq = calloc(nw, sizeof(*b->contrib_seq));
  b->contrib_clock = calloc(nw, sizeof(*b->contrib_clock));
  b->present = calloc(nw, sizeof(*b->present));
  b->contrib_waiter = calloc(nw, sizeof(*b->contrib_waiter));
  b->round_nw = nw;
  if (b->contrib && b->contrib_seq && b->contrib_clock && b->present && b->contrib_waiter)
    return 0;
  round_free(b);
  return -1;
}

void rounds_fail(psd_server *srv, psd_job *job, int code, const char *why) {
  while (!psd_link_empty(&job->rounds)) {
    psd_block *b = psd_link_entry(job->rounds.next, psd_block, round_link);
    for (uint32_t r = 0; r < b->round_nw; r++) {
      psd_waiter *w = b->contrib_waiter[r];
      if (w == NULL) continue;
      outbox_error(&srv->outbox, w->conn, w->id, code, "%s", why);
      b->contrib_waiter[r] = NULL;
      waiter_free(w);
    }
    round_free(b);
    set_release(srv, b); /* no round left to wait for */
  }
  /* Blocks with no contribution pending keep arrays sized for the old run;
   * round_add reallocates them at their next contribution. */
  trounds_fail(srv, job, code, why);
}

uint64_t rounds_pending(psd_server *srv) {
  uint64_t n = 0;
  for (psd_link *jl = srv->jobs.next; jl != &srv->jobs; jl = jl->next) {
    psd_job *j = psd_link_entry(jl, psd_job, link);
    for (psd_link *l = j->rounds.next; l != &j->rounds; l = l->next) n++;
    n += trounds_pending(j);
  }
  return n;
}

void round_drop_waiter(psd_waiter *w) {
  if (w->table != NULL) {
    trow_drop_waiter(w);
    return;
  }
  psd_block *b = w->block;
  if (b != NULL && b->contrib_waiter && w->rank >= 0 && (uint32_t)w->rank < b->round_nw &&
      b->contrib_waiter[w->rank] == w)
    b->contrib_waiter[w->rank] = NULL;
}

int round_waits_for(const psd_block *b, int rank) {
  if (b->ncontrib == 0 || rank < 0 || (uint32_t)rank >= b->round_nw) return 0;
  const psd_group *g = &b->tensor->job->group;
  uint32_t r = (uint32_t)rank;
  uint64_t k = UINT64_MAX;
  for (uint32_t i = 0; i < b->round_nw; i++)
    if (b->present[i] && b->contrib_clock[i] < k) k = b->contrib_clock[i];
  return !b->present[r] && group_expected(g, r) && group_clock_of(g, r) <= k;
}

void round_cancel(psd_server *srv, psd_block *b, const char *why) {
  for (uint32_t r = 0; b->contrib_waiter && r < b->round_nw; r++) {
    psd_waiter *w = b->contrib_waiter[r];
    if (w == NULL) continue;
    b->contrib_waiter[r] = NULL;
    outbox_error(&srv->outbox, w->conn, w->id, PSD__CODE__NOT_FOUND,
                 "block %llu of '%s': %s while this push waited for its sync round; nothing "
                 "was applied",
                 (unsigned long long)b->index, b->tensor->name, why);
    waiter_free(w);
  }
  round_free(b);
}

/* Is the round at clock k (the smallest pending) still waiting for
 * someone? */
static int round_waits(psd_block *b, uint64_t k) {
  const psd_group *g = &b->tensor->job->group;
  for (uint32_t r = 0; r < b->round_nw; r++) {
    if (b->present[r]) {
      /* A contribution nobody waits for, from a live worker, is about to
       * be resent (its connection dropped, or the shard restarted) or is
       * stale (see round_add); wait until it is one or the other. */
      if (b->contrib_clock[r] == k && b->contrib_waiter[r] == NULL && group_live(g, r))
        return 1;
      continue;
    }
    if (group_expected(g, r) && group_clock_of(g, r) <= k) return 1;
  }
  return 0;
}

/* Sum the contributions at clock k in rank order and divide by their
 * count, into acc. */
static void round_average(const psd_block *b, uint64_t k, float *acc) {
  uint32_t count = 0;
  for (uint32_t r = 0; r < b->round_nw; r++) {
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
}

/* Take the contributions at clock k out of the round and answer them: with
 * the block (ok) or with the error that refused the update. */
static void round_close(psd_server *srv, psd_block *b, uint64_t k, int rc) {
  for (uint32_t r = 0; r < b->round_nw; r++) {
    if (!b->present[r] || b->contrib_clock[r] != k) continue;
    b->present[r] = 0;
    b->ncontrib--;
    psd_waiter *w = b->contrib_waiter[r];
    b->contrib_waiter[r] = NULL;
    if (w == NULL) continue;
    if (rc == 0)
      outbox_block(&srv->outbox, w->conn, w->id, b, w->want_values, w->lane_out, 0);
    else
      outbox_error(&srv->outbox, w->conn, w->id, PSD__CODE__BAD_GRADIENT,
                   "the averaged gradient of block %llu of '%s' in this sync round would "
                   "make the weights or optimizer state Inf or NaN; the round is dropped "
                   "and the block left untouched",
                   (unsigned long long)b->index, b->tensor->name);
    waiter_free(w);
  }
}

/* Apply every round of this block that nobody it waits for is missing. */
static void round_try_complete(psd_server *srv, psd_block *b) {
  while (b->ncontrib > 0) {
    uint64_t k = UINT64_MAX;
    for (uint32_t r = 0; r < b->round_nw; r++)
      if (b->present[r] && b->contrib_clock[r] < k) k = b->contrib_clock[r];
    if (round_waits(b, k)) return;
    float *acc = apply_scratch(srv, b->n);
    if (acc == NULL) {
      log_error("out of memory averaging a round of '%s'; it waits", b->tensor->name);
      return;
    }
    round_average(b, k, acc);
    uint32_t gmax = psm_absmax_bits(acc, b->n);
    int rc = gmax < PSM_NONFINITE ? block_apply(srv, b, acc, gmax, 1.0f, NULL) : -1;
    if (rc == -2) {
      log_error("out of memory applying a round of '%s'; it waits", b->tensor->name);
      return;
    }
    if (rc == 0) srv->stats.rounds++;
    else srv->stats.rejected++;
    round_close(srv, b, k, rc);
    if (rc == 0) metrics_round_done(b);
    /* Sets that waited for this round land now, before the next one. */
    if (!psd_link_empty(&b->sets)) set_release(srv, b);
  }
  psd_link_remove(&b->round_link);
}

void rounds_recheck(psd_server *srv, psd_job *job) {
  psd_link *l = job->rounds.next;
  while (l != &job->rounds) {
    psd_block *b = psd_link_entry(l, psd_block, round_link);
    l = l->next;
    round_try_complete(srv, b);
  }
  trounds_recheck(srv, job);
}

/* A hold on c's reply for b's contribution of rank r. */
static psd_waiter *hold(psd_conn *c, uint64_t id, psd_block *b, int want_values,
                        uint64_t lane_out) {
  psd_waiter *w = waiter_new(c, id, PSD_WAIT_PUSH,
                             want_values && !lane_out ? b->n * sizeof(float) : 0);
  if (w == NULL) return NULL;
  w->block = b;
  w->want_values = want_values;
  w->lane_out = lane_out;
  return w;
}

int round_resend(psd_server *srv, psd_conn *c, uint64_t id, psd_block *b, uint64_t seq,
                 int want_values, uint64_t lane_out) {
  uint32_t r = (uint32_t)c->rank;
  if (c->rank < 0 || r >= b->round_nw || !b->present[r] || b->contrib_seq[r] != seq) return 0;
  psd_waiter *old = b->contrib_waiter[r];
  if (old) waiter_free(old);
  b->contrib_waiter[r] = hold(c, id, b, want_values, lane_out);
  if (b->contrib_waiter[r] == NULL) {
    waiter_fail(srv, c, id);
    return 1;
  }
  round_try_complete(srv, b); /* it may have waited for this resend */
  return 1;
}

/* The round's memory would cross the ceiling: refused, nothing changed. */
static void refuse_over(psd_server *srv, psd_conn *c, uint64_t id, const psd_block *b) {
  outbox_error(&srv->outbox, c, id, PSD__CODE__RESOURCE_EXHAUSTED,
               "a sync-round contribution to block %llu of '%s' would cross the shard's "
               "memory ceiling (--max-memory %llu bytes, %llu in use); nothing changed",
               (unsigned long long)b->index, b->tensor->name, (unsigned long long)mem_limit(),
               (unsigned long long)mem_used());
}

void round_add(psd_server *srv, psd_conn *c, uint64_t id, psd_block *b, const float *g,
               float gscale, uint64_t seq, uint64_t clock, int want_values, uint64_t lane_out) {
  psd_job *job = b->tensor->job;
  uint32_t nw = job->group.num_workers, r = (uint32_t)c->rank;
  if (b->round_nw != nw) {
    round_free(b);
    int rc = round_alloc(b, nw);
    if (rc == -2) {
      refuse_over(srv, c, id, b);
      return;
    }
    if (rc != 0) {
      outbox_error(&srv->outbox, c, id, PSD__CODE__INTERNAL, "out of memory");
      return;
    }
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
    if (--b->ncontrib == 0) {
      psd_link_remove(&b->round_link);
      set_release(srv, b); /* what waited for that round does not wait for the next */
    }
  }
  if (b->present[r]) {
    outbox_error(&srv->outbox, c, id, PSD__CODE__BUSY,
                 "rank %u already pushed block %llu of '%s' in this sync round; wait for "
                 "the reply before pushing it again",
                 r, (unsigned long long)b->index, b->tensor->name);
    return;
  }
  if (b->contrib[r] == NULL) {
    if (mem_take(PSD_MEM_ROUNDS, contrib_bytes(b)) != 0) {
      refuse_over(srv, c, id, b);
      return;
    }
    b->contrib[r] = mem_alloc_data(contrib_bytes(b));
    if (b->contrib[r] == NULL) {
      mem_release(PSD_MEM_ROUNDS, contrib_bytes(b));
      outbox_error(&srv->outbox, c, id, PSD__CODE__INTERNAL, "out of memory");
      return;
    }
  }
  /* Room for the exactly-once record first: once the contribution is in,
   * recording it must not fail. */
  if (seq && dedupe_reserve(&job->seqs) != 0) {
    outbox_error(&srv->outbox, c, id, PSD__CODE__INTERNAL, "out of memory");
    return;
  }
  psd_waiter *w = hold(c, id, b, want_values, lane_out);
  if (w == NULL) {
    waiter_fail(srv, c, id);
    return;
  }
  float *dst = b->contrib[r];
  if (gscale == 1.0f)
    memcpy(dst, g, b->n * sizeof(float));
  else
    for (uint64_t i = 0; i < b->n; i++) dst[i] = g[i] * gscale;
  b->present[r] = 1;
  b->contrib_seq[r] = seq;
  b->contrib_clock[r] = clock;
  b->contrib_waiter[r] = w;
  if (b->ncontrib++ == 0) {
    psd_link_insert_tail(&job->rounds, &b->round_link);
    metrics_round_begin(b);
  }
  if (seq) dedupe_record(&job->seqs, c->worker_id, seq);
  round_try_complete(srv, b);
}
