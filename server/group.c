/*
 * group.c -- the workers of the job; see group.h. Whenever the live set
 * shrinks, held pulls and barriers are re-examined here and sync rounds by
 * the caller, so nothing waits forever for a dead worker.
 */
#include "group.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dedupe.h"
#include "job.h"
#include "log.h"
#include "numfmt.h"
#include "outbox.h"
#include "table.h"
#include "waiter.h"

static void ssp_recheck(psd_job *j);
static void barrier_recheck(psd_server *srv, psd_job *j);

void group_init(psd_group *g) {
  memset(g, 0, sizeof(*g));
  g->staleness = -1;
  psd_link_init(&g->pulls);
  psd_link_init(&g->ready);
  psd_link_init(&g->barriers);
}

void group_free(psd_group *g) {
  free(g->w);
  g->w = NULL;
}

static const char *mode_name(int s, char *buf, size_t len) {
  if (s < 0) snprintf(buf, len, "async");
  else if (s == 0) snprintf(buf, len, "sync");
  else snprintf(buf, len, "ssp:%d", s);
  return buf;
}

static int any_live(const psd_group *g) {
  for (uint32_t r = 0; r < g->num_workers; r++)
    if (g->w[r].live) return 1;
  return 0;
}

int group_hello(psd_server *srv, psd_job *j, int rank, uint32_t num_workers, int staleness,
                uint64_t worker_id, uint64_t now, char *err, size_t errlen) {
  psd_group *g = &j->group;
  char m1[32], m2[32];
  uint32_t max = srv->cfg.max_workers ? srv->cfg.max_workers : PSD_DEFAULT_MAX_WORKERS;
  if (num_workers == 0) num_workers = 1;
  if (num_workers > max) {
    snprintf(err, errlen,
             "a job of %u workers is larger than this shard allows (--max-workers %u)",
             num_workers, max);
    return -1;
  }
  if (staleness < -1) {
    snprintf(err, errlen, "staleness %d is out of range (-1 async, 0 sync, s > 0 SSP)",
             staleness);
    return -1;
  }
  if ((uint32_t)rank >= num_workers) {
    snprintf(err, errlen, "worker rank %d is outside a job of %u workers", rank, num_workers);
    return -1;
  }
  if (g->configured && (g->num_workers != num_workers || g->staleness != staleness)) {
    /* A job's size and mode are those of its running incarnation; a new
     * one (job.h) may choose others. */
    snprintf(err, errlen,
             "job mismatch: job '%s' runs %u workers in %s mode (run %llu); the worker says "
             "%u workers in %s mode; end that run first (every worker's ps_close, or psctl "
             "job end %s) or use another job name (PS_JOB)",
             j->name, g->num_workers, mode_name(g->staleness, m1, sizeof(m1)),
             (unsigned long long)j->incarnation, num_workers, mode_name(staleness, m2, sizeof(m2)),
             j->name);
    return -1;
  }
  if (g->configured && g->w[rank].live && !g->w[rank].orphan &&
      g->w[rank].worker_id != worker_id) {
    snprintf(err, errlen,
             "worker rank %d is held by another live session; a rank is free again when its "
             "worker says goodbye (ps_close) or is silent for --worker-timeout (%s s)",
             rank, psn_num(srv->cfg.worker_timeout).s);
    return -2;
  }
  if (!g->configured) {
    g->w = calloc(num_workers, sizeof(*g->w));
    if (g->w == NULL) {
      snprintf(err, errlen, "out of memory");
      return -1;
    }
    g->num_workers = num_workers;
    g->staleness = staleness;
    g->configured = 1;
    g->first_join_ms = 0;
    g->pending_expired = 0;
    log_info("job '%s' run %llu: %u workers, %s mode", j->name,
             (unsigned long long)j->incarnation, num_workers, mode_name(staleness, m1, sizeof(m1)));
  }
  group_seen(j, rank, worker_id, now);
  return 0;
}

int group_seen(psd_job *j, int rank, uint64_t worker_id, uint64_t now) {
  psd_group *g = &j->group;
  if (!g->configured || rank < 0 || (uint32_t)rank >= g->num_workers) return 0;
  psd_worker *w = &g->w[rank];
  if (w->live && !w->orphan && w->worker_id != worker_id) return -1;
  if (w->orphan) {
    /* Restored without its session (a file from before sessions): the
     * first session to speak for the rank takes it, with the rank's
     * exactly-once record, so its resends are still recognized. */
    uint64_t last;
    if (dedupe_last(&j->seqs, w->worker_id, &last) &&
        dedupe_record(&j->seqs, worker_id, last) == 0)
      u64map_del(&j->seqs, w->worker_id, NULL);
    w->worker_id = worker_id;
    w->orphan = 0;
  }
  w->last_seen_ms = now;
  if (g->first_join_ms == 0) g->first_join_ms = now;
  if (!w->joined) {
    w->joined = 1;
    w->live = 1;
    w->worker_id = worker_id;
    g->joins++;
    log_info("job '%s': worker rank %d joined (%u of %u ranks seen)", j->name, rank,
             (unsigned)g->joins, g->num_workers);
    return GROUP_CHANGED;
  }
  if (!w->live) {
    w->live = 1;
    w->worker_id = worker_id;
    g->joins++;
    log_info("job '%s': worker rank %d rejoined", j->name, rank);
    return GROUP_CHANGED;
  }
  return 0;
}

int group_leave(psd_server *srv, psd_job *j, int rank, uint64_t worker_id) {
  psd_group *g = &j->group;
  if (!g->configured || rank < 0 || (uint32_t)rank >= g->num_workers) return 0;
  psd_worker *w = &g->w[rank];
  if (!w->live || w->worker_id != worker_id) return 0;
  w->live = 0;
  g->departures++;
  g->leaves++;
  /* A clean exit, not a failure: INFO, and never "departed: silent" (its
   * rank is no longer live, so group_tick cannot time it out). */
  log_info("job '%s': worker rank %d left (it said goodbye); the job goes on without it",
           j->name, rank);
  if (!any_live(g)) {
    /* The last live worker left: this run of the job is over. */
    job_end(srv, j, "every worker left");
    return GROUP_CHANGED;
  }
  ssp_recheck(j);
  barrier_recheck(srv, j);
  return GROUP_CHANGED;
}

int group_expected(const psd_group *g, uint32_t r) {
  if (r >= g->num_workers) return 0;
  return g->w[r].live || (!g->w[r].joined && !g->pending_expired);
}

int group_live(const psd_group *g, uint32_t r) { return r < g->num_workers && g->w[r].live; }

uint64_t group_clock_of(const psd_group *g, uint32_t r) {
  return r < g->num_workers ? g->w[r].clock : 0;
}

/* The slowest clock among the workers the job waits for. */
static uint64_t slowest_clock(const psd_group *g) {
  uint64_t m = UINT64_MAX;
  for (uint32_t r = 0; r < g->num_workers; r++)
    if (group_expected(g, r) && g->w[r].clock < m) m = g->w[r].clock;
  return m;
}

int group_clock(psd_job *j, int rank, uint64_t clock) {
  psd_group *g = &j->group;
  if (!g->configured || rank < 0 || (uint32_t)rank >= g->num_workers) return 0;
  if (clock <= g->w[rank].clock) return 0;
  g->w[rank].clock = clock;
  ssp_recheck(j);
  return GROUP_CHANGED;
}

/* Must a pull at `clock` wait, with the slowest expected clock `slow`? */
static int pull_blocked_at(psd_group *g, int rank, uint64_t clock, uint64_t slow) {
  if (!g->configured || g->staleness <= 0 || rank < 0 || (uint32_t)rank >= g->num_workers)
    return 0;
  if (slow == UINT64_MAX) return 0;
  if (slow + (uint64_t)g->staleness < clock) return 1;
  if (clock > slow && clock - slow > g->max_ahead) g->max_ahead = clock - slow;
  return 0;
}

int group_pull_blocked(psd_group *g, int rank, uint64_t clock) {
  if (!g->configured || g->staleness <= 0) return 0;
  return pull_blocked_at(g, rank, clock, slowest_clock(g));
}

void group_hold_pull(psd_server *srv, psd_job *j, psd_conn *c, uint64_t id, psd_block *b, uint64_t clock,
                     uint64_t lane_out) {
  psd_waiter *w = waiter_new(c, id, PSD_WAIT_PULL, lane_out ? 0 : b->n * sizeof(float));
  if (w == NULL) {
    waiter_fail(srv, c, id);
    return;
  }
  w->block = b;
  w->clock = clock;
  w->lane_out = lane_out;
  psd_link_insert_tail(&j->group.pulls, &w->wait_link);
  srv->stats.held_pulls++;
}

void group_hold_rows(psd_server *srv, psd_job *j, psd_conn *c, uint64_t id, psd_table *t,
                     const uint64_t *keys, size_t n, uint64_t clock) {
  uint64_t *copy = malloc((n ? n : 1) * sizeof(*copy));
  psd_waiter *w = copy ? waiter_new(c, id, PSD_WAIT_PULL, (uint64_t)n * t->dim * sizeof(float))
                       : NULL;
  if (w == NULL) {
    free(copy);
    waiter_fail(srv, c, id);
    return;
  }
  memcpy(copy, keys, n * sizeof(*copy));
  w->table = t;
  w->keys = copy;
  w->nkeys = n;
  w->clock = clock;
  psd_link_insert_tail(&j->group.pulls, &w->wait_link);
  srv->stats.held_pulls++;
}

/* Move the pulls that need not wait any more to the ready list: O(1)
 * each; they are answered a slice per loop turn (group_answer_ready), so
 * that releasing thousands of held pulls never stalls the loop. */
static void ssp_recheck(psd_job *j) {
  psd_group *g = &j->group;
  if (psd_link_empty(&g->pulls)) return;
  uint64_t slow = slowest_clock(g);
  psd_link *l = g->pulls.next;
  while (l != &g->pulls) {
    psd_waiter *w = psd_link_entry(l, psd_waiter, wait_link);
    l = l->next;
    if (pull_blocked_at(g, w->rank, w->clock, slow)) continue;
    psd_link_remove(&w->wait_link);
    psd_link_insert_tail(&g->ready, &w->wait_link);
  }
}

/* Answer and free the pulls of `list` that wait on a block of t. */
static void drop_pulls_in(psd_server *srv, psd_link *list, const psd_tensor *t,
                          const char *why) {
  psd_link *l = list->next;
  while (l != list) {
    psd_waiter *w = psd_link_entry(l, psd_waiter, wait_link);
    l = l->next;
    if (w->block == NULL || w->block->tensor != t) continue;
    outbox_error(&srv->outbox, w->conn, w->id, PSD__CODE__NOT_FOUND,
                 "block %llu of '%s': %s while this pull waited for slower workers",
                 (unsigned long long)w->block->index, t->name, why);
    waiter_free(w);
  }
}

void group_drop_pulls(psd_server *srv, const psd_tensor *t, const char *why) {
  drop_pulls_in(srv, &t->job->group.pulls, t, why);
  drop_pulls_in(srv, &t->job->group.ready, t, why);
}

/* Answer and free the pulls of `list` that wait for rows of t. */
static void drop_row_pulls_in(psd_server *srv, psd_link *list, const psd_table *t,
                              const char *why) {
  psd_link *l = list->next;
  while (l != list) {
    psd_waiter *w = psd_link_entry(l, psd_waiter, wait_link);
    l = l->next;
    if (w->table != t) continue;
    outbox_error(&srv->outbox, w->conn, w->id, PSD__CODE__NOT_FOUND,
                 "%llu rows of table '%s': %s while this pull waited for slower workers",
                 (unsigned long long)w->nkeys, t->name, why);
    waiter_free(w);
  }
}

void group_drop_row_pulls(psd_server *srv, const psd_table *t, const char *why) {
  drop_row_pulls_in(srv, &t->job->group.pulls, t, why);
  drop_row_pulls_in(srv, &t->job->group.ready, t, why);
}

int group_answer_ready(psd_server *srv, psd_job *j, uint64_t max_bytes, unsigned max_replies) {
  psd_group *g = &j->group;
  uint64_t bytes = 0;
  unsigned n = 0;
  while (!psd_link_empty(&g->ready) && bytes < max_bytes && n < max_replies) {
    psd_waiter *w = psd_link_entry(g->ready.next, psd_waiter, wait_link);
    n++;
    if (w->table != NULL) {
      /* Rows: the waiter's reservation goes before the reply is made. */
      psd_conn *c = w->conn;
      psd_table *t = w->table;
      uint64_t id = w->id, *keys = w->keys, nk = w->nkeys;
      w->keys = NULL;
      waiter_free(w);
      srv->stats.row_pulls++;
      table_answer(srv, c, id, t, keys, nk, 1, 0);
      bytes += nk * t->dim * sizeof(float);
      free(keys);
      continue;
    }
    srv->stats.pulls++;
    outbox_block(&srv->outbox, w->conn, w->id, w->block, 1, w->lane_out, 0);
    bytes += w->block->n * sizeof(float);
    waiter_free(w);
  }
  return !psd_link_empty(&g->ready);
}

void group_barrier(psd_server *srv, psd_job *j, psd_conn *c, uint64_t id, uint64_t gen) {
  psd_group *g = &j->group;
  if (!g->configured || c->rank < 0 || (uint32_t)c->rank >= g->num_workers) {
    outbox_error(&srv->outbox, c, id, PSD__CODE__NOT_READY,
                 "barrier before the job is configured");
    return;
  }
  if (gen > g->w[c->rank].barrier_gen) g->w[c->rank].barrier_gen = gen;
  psd_waiter *w = waiter_new(c, id, PSD_WAIT_BARRIER, 0);
  if (w == NULL) {
    waiter_fail(srv, c, id);
    return;
  }
  w->gen = gen;
  if (psd_link_empty(&g->barriers) || gen < g->barrier_min) g->barrier_min = gen;
  psd_link_insert_tail(&g->barriers, &w->wait_link);
  barrier_recheck(srv, j);
}

/* Release every barrier waiter whose generation every expected worker has
 * reached: one pass over the workers, and one over the waiters only when
 * that generation moved (an arrival that completes nothing costs no pass
 * over the waiters). */
static void barrier_recheck(psd_server *srv, psd_job *j) {
  psd_group *g = &j->group;
  uint64_t reached = UINT64_MAX;
  for (uint32_t r = 0; r < g->num_workers; r++)
    if (group_expected(g, r) && g->w[r].barrier_gen < reached) reached = g->w[r].barrier_gen;
  /* barrier_min is at most the smallest generation waited for (a waiter
   * freed with its connection may leave it lower: one pass too many). */
  if (psd_link_empty(&g->barriers) || reached < g->barrier_min) return;
  uint64_t left = UINT64_MAX;
  psd_link *l = g->barriers.next;
  while (l != &g->barriers) {
    psd_waiter *w = psd_link_entry(l, psd_waiter, wait_link);
    l = l->next;
    if (w->gen > reached) {
      if (w->gen < left) left = w->gen;
      continue;
    }
    outbox_ack(&srv->outbox, w->conn, w->id, "barrier");
    waiter_free(w);
  }
  g->barrier_min = left;
}

int group_tick(psd_server *srv, psd_job *j, uint64_t now) {
  psd_group *g = &j->group;
  if (!g->configured) return 0;
  uint64_t limit = (uint64_t)(srv->cfg.worker_timeout * 1000.0);
  int changed = 0;
  for (uint32_t r = 0; r < g->num_workers; r++) {
    psd_worker *w = &g->w[r];
    if (w->live && now - w->last_seen_ms > limit) {
      w->live = 0;
      g->departures++;
      changed = 1;
      log_warn("job '%s': worker rank %u departed: silent for %s s; the job goes on "
               "without it", j->name, r, psn_num((double)(now - w->last_seen_ms) / 1000.0).s);
    }
  }
  if (!g->pending_expired && g->first_join_ms && now - g->first_join_ms > limit) {
    g->pending_expired = 1;
    for (uint32_t r = 0; r < g->num_workers; r++)
      if (!g->w[r].joined) {
        changed = 1;
        log_warn("job '%s': worker rank %u never joined within %s s; the job goes on "
                 "without it", j->name, r, psn_num(srv->cfg.worker_timeout).s);
      }
  }
  if (!changed) return 0;
  ssp_recheck(j);
  barrier_recheck(srv, j);
  return GROUP_CHANGED;
}

/* Appenders for group_json: a job of thousands of workers is listed in a
 * fraction of a millisecond (snprintf per field took ~10 ms for 4096 on a
 * slow machine, one turn of the loop per stats request). */
static char *put_str(char *p, const char *s) {
  size_t l = strlen(s);
  memcpy(p, s, l);
  return p + l;
}

static char *put_u64(char *p, uint64_t v) {
  char tmp[20];
  int i = 0;
  do tmp[i++] = (char)('0' + v % 10);
  while ((v /= 10) != 0);
  while (i > 0) *p++ = tmp[--i];
  return p;
}

void group_json(psd_job *j, uint64_t now, char *buf, size_t len) {
  psd_group *g = &j->group;
  char m[32];
  size_t n = (size_t)snprintf(buf, len,
                              "{\"configured\":%s,\"num_workers\":%u,\"mode\":\"%s\","
                              "\"staleness\":%d,\"joins\":%llu,\"departures\":%llu,"
                              "\"max_ahead\":%llu,\"workers\":[",
                              g->configured ? "true" : "false", g->num_workers,
                              mode_name(g->staleness, m, sizeof(m)), g->staleness,
                              (unsigned long long)g->joins, (unsigned long long)g->departures,
                              (unsigned long long)g->max_ahead);
  /* A worker's entry is at most ~120 bytes: each is written only with 160
   * to spare. */
  for (uint32_t r = 0; r < g->num_workers && n + 160 < len; r++) {
    psd_worker *w = &g->w[r];
    char *p = buf + n;
    p = put_str(p, r ? ",{\"rank\":" : "{\"rank\":");
    p = put_u64(p, r);
    p = put_str(p, w->joined ? ",\"joined\":true" : ",\"joined\":false");
    p = put_str(p, w->live ? ",\"live\":true,\"clock\":" : ",\"live\":false,\"clock\":");
    p = put_u64(p, w->clock);
    p = put_str(p, ",\"silent_ms\":");
    p = put_u64(p, w->joined ? now - w->last_seen_ms : 0);
    *p++ = '}';
    *p = '\0';
    n = (size_t)(p - buf);
  }
  if (n + 3 < len) snprintf(buf + n, len - n, "]}");
}

void group_fail_held(psd_server *srv, psd_group *g, int code, const char *why) {
  psd_link *lists[3] = {&g->pulls, &g->ready, &g->barriers};
  for (int i = 0; i < 3; i++)
    while (!psd_link_empty(lists[i])) {
      psd_waiter *w = psd_link_entry(lists[i]->next, psd_waiter, wait_link);
      outbox_error(&srv->outbox, w->conn, w->id, code, "%s", why);
      waiter_free(w);
    }
}
