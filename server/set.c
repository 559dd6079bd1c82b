/* set.c -- values written into a block; see set.h. */
#include "set.h"

#include <stdlib.h>
#include <string.h>

#include "dedupe.h"
#include "log.h"
#include "memory.h"
#include "outbox.h"
#include "psmath.h"
#include "tensor.h"
#include "waiter.h"

static uint64_t vals_bytes(uint64_t n) { return (n * sizeof(float) + 63) & ~(uint64_t)63; }

int set_write(psd_server *srv, psd_block *b, uint64_t off, const float *vals, uint64_t n,
              int zero_state) {
  /* Writes to slow readers may still send b's values: b moves first. */
  if (block_unpin(b) != 0) return -1;
  if (b->outbox_refs) outbox_detach(&srv->outbox, b);
  memcpy(b->w + off, vals, n * sizeof(float));
  if (zero_state) {
    unsigned k = psm_state_per_param(b->tensor->spec.optim.kind);
    for (unsigned s = 0; s < k; s++) memset(b->state + s * b->n + off, 0, n * sizeof(float));
  }
  /* The bound of |w| and |state| that apply.c's guard relies on: still an
   * upper bound with the new values in (zeroed state only lowers it). */
  uint32_t m = psm_absmax_bits(vals, n);
  if (m > b->absmax) b->absmax = m;
  return 0;
}

static void heldset_free(psd_heldset *h) {
  psd_link_remove(&h->link);
  mem_release(PSD_MEM_ROUNDS, vals_bytes(h->n));
  free(h->vals);
  free(h);
}

void set_hold(psd_server *srv, psd_conn *c, uint64_t id, psd_block *b, uint64_t off,
              const float *vals, uint64_t n, int zero_state, uint64_t seq) {
  if (mem_take(PSD_MEM_ROUNDS, vals_bytes(n)) != 0) {
    outbox_error(&srv->outbox, c, id, PSD__CODE__RESOURCE_EXHAUSTED,
                 "holding a set of %llu values of block %llu of '%s' until its sync round "
                 "completes would cross the shard's memory ceiling (--max-memory %llu bytes, "
                 "%llu in use); nothing changed",
                 (unsigned long long)n, (unsigned long long)b->index, b->tensor->name,
                 (unsigned long long)mem_limit(), (unsigned long long)mem_used());
    return;
  }
  psd_heldset *h = calloc(1, sizeof(*h));
  float *copy = mem_alloc_data(vals_bytes(n));
  /* Room for the exactly-once record first: once held, recording it must
   * not fail. */
  if (h == NULL || copy == NULL || (seq && dedupe_reserve(&b->tensor->job->seqs) != 0)) {
    free(h);
    free(copy);
    mem_release(PSD_MEM_ROUNDS, vals_bytes(n));
    outbox_error(&srv->outbox, c, id, PSD__CODE__INTERNAL, "out of memory");
    return;
  }
  psd_waiter *w = waiter_new(c, id, PSD_WAIT_SET, 0);
  if (w == NULL) {
    free(h);
    free(copy);
    mem_release(PSD_MEM_ROUNDS, vals_bytes(n));
    waiter_fail(srv, c, id);
    return;
  }
  w->block = b;
  memcpy(copy, vals, n * sizeof(float));
  h->worker_id = seq ? c->worker_id : 0;
  h->seq = seq;
  h->off = off;
  h->n = n;
  h->zero_state = zero_state;
  h->vals = copy;
  h->w = w;
  psd_link_insert_tail(&b->sets, &h->link);
  if (seq) dedupe_record(&b->tensor->job->seqs, c->worker_id, seq);
  srv->stats.held_sets++;
  log_debug("set of block %llu of '%s' held until its sync round completes",
            (unsigned long long)b->index, b->tensor->name);
}

int set_resend(psd_server *srv, psd_conn *c, uint64_t id, psd_block *b, uint64_t seq) {
  for (psd_link *l = b->sets.next; l != &b->sets; l = l->next) {
    psd_heldset *h = psd_link_entry(l, psd_heldset, link);
    if (h->worker_id != c->worker_id || h->seq != seq) continue;
    if (h->w != NULL) waiter_free(h->w);
    h->w = waiter_new(c, id, PSD_WAIT_SET, 0);
    if (h->w == NULL) {
      waiter_fail(srv, c, id);
      return 1;
    }
    h->w->block = b;
    return 1;
  }
  return 0;
}

void set_release(psd_server *srv, psd_block *b) {
  while (!psd_link_empty(&b->sets)) {
    psd_heldset *h = psd_link_entry(b->sets.next, psd_heldset, link);
    int rc = set_write(srv, b, h->off, h->vals, h->n, h->zero_state);
    if (rc != 0)
      log_error("out of memory writing a held set into block %llu of '%s'; it is dropped",
                (unsigned long long)b->index, b->tensor->name);
    psd_waiter *w = h->w;
    if (w != NULL && rc == 0) {
      outbox_block(&srv->outbox, w->conn, w->id, b, 0, 0, 0);
    } else if (w != NULL) {
      outbox_error(&srv->outbox, w->conn, w->id, PSD__CODE__INTERNAL,
                   "out of memory writing block %llu of '%s' after its sync round; the set "
                   "was not written",
                   (unsigned long long)b->index, b->tensor->name);
    }
    if (w != NULL) waiter_free(w);
    heldset_free(h);
  }
}

void set_drop(psd_server *srv, psd_block *b, const char *why) {
  while (!psd_link_empty(&b->sets)) {
    psd_heldset *h = psd_link_entry(b->sets.next, psd_heldset, link);
    if (h->w != NULL) {
      outbox_error(&srv->outbox, h->w->conn, h->w->id, PSD__CODE__NOT_FOUND,
                   "block %llu of '%s': %s while this set waited for the block's sync round; "
                   "nothing was written",
                   (unsigned long long)b->index, b->tensor->name, why);
      waiter_free(h->w);
    }
    heldset_free(h);
  }
}

void set_drop_waiter(psd_waiter *w) {
  psd_block *b = w->block;
  if (b == NULL) return;
  for (psd_link *l = b->sets.next; l != &b->sets; l = l->next) {
    psd_heldset *h = psd_link_entry(l, psd_heldset, link);
    if (h->w == w) h->w = NULL;
  }
}
