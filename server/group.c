/*
 * group.c -- the workers of the job as one shard sees them: who is live,
 * their clocks, SSP pull gating and barriers.
 *
 * The job's size and consistency mode come from the first worker's hello
 * (less to configure: the shards need no job flags). A worker is live while
 * it has been heard from (any request, heartbeats included) within
 * --worker-timeout. A rank that has never joined is waited for during the
 * first worker-timeout after the first worker joined, then the job goes on
 * without it. Whenever the live set shrinks, sync rounds, held pulls and
 * barriers are re-examined, so nothing waits forever for a dead worker.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "server.h"

static void ssp_recheck(psd_server *srv);
static void barrier_recheck(psd_server *srv);

void group_init(psd_group *g) {
  memset(g, 0, sizeof(*g));
  g->staleness = -1;
  link_init(&g->pulls);
  link_init(&g->barriers);
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

static int any_live(psd_group *g) {
  for (uint32_t r = 0; r < g->num_workers; r++)
    if (g->w[r].live) return 1;
  return 0;
}

int group_hello(psd_server *srv, int rank, uint32_t num_workers, int staleness,
                uint64_t worker_id, char *err, size_t errlen) {
  psd_group *g = &srv->group;
  char m1[32], m2[32];
  if (num_workers == 0) num_workers = 1;
  if (num_workers > 65536 || staleness < -1) {
    snprintf(err, errlen, "job of %u workers with staleness %d is out of range", num_workers,
             staleness);
    return -1;
  }
  if ((uint32_t)rank >= num_workers) {
    snprintf(err, errlen, "worker rank %d is outside a job of %u workers", rank, num_workers);
    return -1;
  }
  if (g->configured && (g->num_workers != num_workers || g->staleness != staleness)) {
    /* A new job may take over shards whose previous job is gone. */
    if (any_live(g) || !link_empty(&srv->rounds)) {
      snprintf(err, errlen,
               "job mismatch: this shard runs a job of %u workers in %s mode; the worker "
               "says %u workers in %s mode",
               g->num_workers, mode_name(g->staleness, m1, sizeof(m1)), num_workers,
               mode_name(staleness, m2, sizeof(m2)));
      return -1;
    }
    log_warn("no worker of the previous job (%u workers, %s) is live; reconfiguring", g->num_workers,
             mode_name(g->staleness, m1, sizeof(m1)));
    store_reset_rounds(srv);
    group_free(g);
    g->configured = 0;
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
    log_info("job: %u workers, %s mode", num_workers, mode_name(staleness, m1, sizeof(m1)));
  }
  group_seen(srv, rank, worker_id);
  return 0;
}

void group_seen(psd_server *srv, int rank, uint64_t worker_id) {
  psd_group *g = &srv->group;
  if (!g->configured || rank < 0 || (uint32_t)rank >= g->num_workers) return;
  psd_worker *w = &g->w[rank];
  w->last_seen_ms = now_ms();
  if (g->first_join_ms == 0) g->first_join_ms = w->last_seen_ms;
  if (!w->joined) {
    w->joined = 1;
    w->live = 1;
    w->worker_id = worker_id;
    g->joins++;
    log_info("worker rank %d joined (%u of %u ranks seen)", rank, (unsigned)g->joins,
             g->num_workers);
  } else if (!w->live) {
    w->live = 1;
    w->worker_id = worker_id;
    g->joins++;
    log_info("worker rank %d rejoined", rank);
  }
}

int group_expected(psd_server *srv, uint32_t r) {
  psd_group *g = &srv->group;
  if (r >= g->num_workers) return 0;
  return g->w[r].live || (!g->w[r].joined && !g->pending_expired);
}

/* The slowest clock among the workers the job waits for. */
static uint64_t slowest_clock(psd_server *srv) {
  psd_group *g = &srv->group;
  uint64_t m = UINT64_MAX;
  for (uint32_t r = 0; r < g->num_workers; r++)
    if (group_expected(srv, r) && g->w[r].clock < m) m = g->w[r].clock;
  return m;
}

void group_clock(psd_server *srv, int rank, uint64_t clock) {
  psd_group *g = &srv->group;
  if (!g->configured || (uint32_t)rank >= g->num_workers) return;
  if (clock > g->w[rank].clock) {
    g->w[rank].clock = clock;
    if (g->staleness == 0) store_rounds_recheck(srv); /* a round may stop waiting for it */
    ssp_recheck(srv);
  }
}

int group_pull_blocked(psd_server *srv, int rank, uint64_t clock) {
  psd_group *g = &srv->group;
  if (!g->configured || g->staleness <= 0 || (uint32_t)rank >= g->num_workers) return 0;
  uint64_t slow = slowest_clock(srv);
  if (slow == UINT64_MAX) return 0;
  if (slow + (uint64_t)g->staleness < clock) return 1;
  if (clock > slow && clock - slow > g->max_ahead) g->max_ahead = clock - slow;
  return 0;
}

void group_hold_pull(psd_conn *c, uint64_t id, psd_tensor *t, psd_block *b, uint64_t clock,
                     uint64_t lane_out) {
  psd_waiter *w = waiter_new(c, id, PSD_WAIT_PULL);
  if (w == NULL) {
    conn_send_error(c, id, PSD__CODE__INTERNAL, "out of memory");
    return;
  }
  w->tensor = t;
  w->block = b;
  w->clock = clock;
  w->lane_out = lane_out;
  link_insert_tail(&c->srv->group.pulls, &w->wait_link);
  c->srv->stats.held_pulls++;
}

static void ssp_recheck(psd_server *srv) {
  psd_link *l = srv->group.pulls.next;
  while (l != &srv->group.pulls) {
    psd_waiter *w = link_entry(l, psd_waiter, wait_link);
    l = l->next;
    if (group_pull_blocked(srv, w->rank, w->clock)) continue;
    srv->stats.pulls++;
    reply_block(w->conn, w->id, w->block, 1, w->lane_out, 0);
    waiter_free(w);
  }
}

void group_barrier(psd_conn *c, uint64_t id, uint64_t gen) {
  psd_server *srv = c->srv;
  psd_group *g = &srv->group;
  if (!g->configured || (uint32_t)c->rank >= g->num_workers) {
    conn_send_error(c, id, PSD__CODE__NOT_READY, "barrier before the job is configured");
    return;
  }
  if (gen > g->w[c->rank].barrier_gen) g->w[c->rank].barrier_gen = gen;
  psd_waiter *w = waiter_new(c, id, PSD_WAIT_BARRIER);
  if (w == NULL) {
    conn_send_error(c, id, PSD__CODE__INTERNAL, "out of memory");
    return;
  }
  w->gen = gen;
  link_insert_tail(&g->barriers, &w->wait_link);
  barrier_recheck(srv);
}

static void barrier_recheck(psd_server *srv) {
  psd_group *g = &srv->group;
  psd_link *l = g->barriers.next;
  while (l != &g->barriers) {
    psd_waiter *w = link_entry(l, psd_waiter, wait_link);
    l = l->next;
    int done = 1;
    for (uint32_t r = 0; r < g->num_workers && done; r++)
      if (group_expected(srv, r) && g->w[r].barrier_gen < w->gen) done = 0;
    if (!done) continue;
    conn_send_ack(w->conn, w->id, "barrier");
    waiter_free(w);
  }
}

/* Every 100 ms: find workers that fell silent. */
void group_tick(psd_server *srv) {
  psd_group *g = &srv->group;
  if (!g->configured) return;
  uint64_t now = now_ms(), limit = (uint64_t)(srv->cfg.worker_timeout * 1000.0);
  int changed = 0;
  for (uint32_t r = 0; r < g->num_workers; r++) {
    psd_worker *w = &g->w[r];
    if (w->live && now - w->last_seen_ms > limit) {
      w->live = 0;
      g->departures++;
      changed = 1;
      log_warn("worker rank %u departed: silent for %.1f s; the job goes on without it", r,
               (double)(now - w->last_seen_ms) / 1000.0);
    }
  }
  if (!g->pending_expired && g->first_join_ms && now - g->first_join_ms > limit) {
    g->pending_expired = 1;
    for (uint32_t r = 0; r < g->num_workers; r++)
      if (!g->w[r].joined) {
        changed = 1;
        log_warn("worker rank %u never joined within %.1f s; the job goes on without it", r,
                 srv->cfg.worker_timeout);
      }
  }
  if (changed) {
    store_rounds_recheck(srv);
    ssp_recheck(srv);
    barrier_recheck(srv);
  }
}

void group_json(psd_server *srv, char *buf, size_t len) {
  psd_group *g = &srv->group;
  char m[32];
  size_t n = (size_t)snprintf(buf, len,
                              "{\"configured\":%s,\"num_workers\":%u,\"mode\":\"%s\","
                              "\"staleness\":%d,\"joins\":%llu,\"departures\":%llu,"
                              "\"max_ahead\":%llu,\"workers\":[",
                              g->configured ? "true" : "false", g->num_workers,
                              mode_name(g->staleness, m, sizeof(m)), g->staleness,
                              (unsigned long long)g->joins, (unsigned long long)g->departures,
                              (unsigned long long)g->max_ahead);
  uint64_t now = now_ms();
  for (uint32_t r = 0; r < g->num_workers && n + 128 < len; r++) {
    psd_worker *w = &g->w[r];
    n += (size_t)snprintf(buf + n, len - n,
                          "%s{\"rank\":%u,\"joined\":%s,\"live\":%s,\"clock\":%llu,"
                          "\"silent_ms\":%llu}",
                          r ? "," : "", r, w->joined ? "true" : "false",
                          w->live ? "true" : "false", (unsigned long long)w->clock,
                          (unsigned long long)(w->joined ? now - w->last_seen_ms : 0));
  }
  if (n + 3 < len) snprintf(buf + n, len - n, "]}");
}
