/* waiter.c -- held replies; see waiter.h. */
#include "waiter.h"

#include <stdlib.h>

psd_waiter *waiter_new(psd_conn *c, uint64_t id, int kind) {
  psd_waiter *w = calloc(1, sizeof(*w));
  if (w == NULL) return NULL;
  w->conn = c;
  w->id = id;
  w->kind = kind;
  w->rank = c->rank;
  psd_link_init(&w->wait_link);
  psd_link_insert_tail(&c->waiters, &w->conn_link);
  return w;
}

void waiter_free(psd_waiter *w) {
  psd_link_remove(&w->conn_link);
  psd_link_remove(&w->wait_link);
  free(w);
}
