/* waiter.c -- held replies; see waiter.h. */
#include "waiter.h"

#include <stdlib.h>

#include "memory.h"
#include "metrics.h"
#include "outbox.h"

static int last_refused;

int waiter_refused(void) { return last_refused; }

psd_waiter *waiter_new(psd_conn *c, uint64_t id, int kind, uint64_t values_bytes) {
  uint64_t cost = sizeof(psd_waiter) + 256 + values_bytes;
  if (cost < PSD_WAITER_MIN) cost = PSD_WAITER_MIN;
  last_refused = 0;
  if (mem_take(PSD_MEM_HELD, cost) != 0) {
    last_refused = 1;
    return NULL;
  }
  psd_waiter *w = calloc(1, sizeof(*w));
  if (w == NULL) {
    mem_release(PSD_MEM_HELD, cost);
    return NULL;
  }
  w->conn = c;
  w->id = id;
  w->kind = kind;
  w->rank = c->rank;
  w->cost = cost;
  w->capped = kind != PSD_WAIT_PUSH;
  if (w->capped) c->held_bytes += cost;
  metrics_waiter_new(w);
  psd_link_init(&w->wait_link);
  psd_link_insert_tail(&c->waiters, &w->conn_link);
  return w;
}

void waiter_free(psd_waiter *w) {
  metrics_waiter_done(w);
  psd_link_remove(&w->conn_link);
  psd_link_remove(&w->wait_link);
  mem_release(PSD_MEM_HELD, w->cost);
  if (w->conn && w->capped) w->conn->held_bytes -= w->cost;
  free(w->keys);
  free(w);
}

void waiter_fail(psd_server *srv, psd_conn *c, uint64_t id) {
  if (last_refused)
    outbox_error(&srv->outbox, c, id, PSD__CODE__RESOURCE_EXHAUSTED,
                 "holding this reply would cross the shard's memory ceiling (--max-memory "
                 "%llu bytes, %llu in use); nothing changed",
                 (unsigned long long)mem_limit(), (unsigned long long)mem_used());
  else
    outbox_error(&srv->outbox, c, id, PSD__CODE__INTERNAL, "out of memory");
}
