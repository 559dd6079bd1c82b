/*
 * table_age.c -- LFU aging of a table's use counts; see table.h.
 *
 * Why. An LFU table evicts the row used least often. Counts that only grow
 * make a row that was hot long ago outlive every row that is hot now until
 * each of them has been used as often: after a change of traffic (a new
 * vocabulary, a new day's items) the table keeps the past. Redis's LFU
 * solves this by decaying its counters with time; here the counts are
 * halved once a period, and the period is counted in the table's own uses
 * (TABLE_AGE_PERIOD uses per row it holds), not in seconds: eviction only
 * happens when requests come, so traffic is the clock that matters, and a
 * count then means about "uses in the last two periods, older ones
 * weighing half as much per period", whatever the request rate. Counting
 * uses also keeps a shard deterministic: the same requests give the same
 * evictions on any machine, and after a restore from a checkpoint
 * (table_age_save keeps the pass's state).
 *
 * How. Counts live in frequency nodes (table.h), sorted. A pass walks the
 * nodes from the lowest count up (t->age.next) and halves each node's
 * count (never below 1): one node, whatever its rows, costs one step.
 * Halving keeps the nodes sorted, because every node already halved holds
 * a lower count than the next one to halve; when a node's half is not above
 * the node before it (2k and 2k+1 both halve to k, or a row of the lower
 * node was used meanwhile), it takes that node's count and the two are
 * merged: its rows move, a few per step, to the end of the node before it
 * (the lower count's rows first), while the pair acts as one node
 * (table_int.h). The order of the rows never changes; later uses see the
 * halved counts.
 *
 * Cost. A request naming n keys does at most TABLE_AGE_BUDGET +
 * TABLE_AGE_BUDGET_PER_KEY * n steps (a node halved or a row moved), the
 * same order as its own work, as the index's migration does. A pass takes
 * at most one step per node and one per row moved (each row once, plus
 * those used during the pass), far fewer than a period's budget
 * (TABLE_AGE_BUDGET_PER_KEY * TABLE_AGE_PERIOD = 32 steps per row), so a
 * pass ends long before the next is due.
 */
#include <string.h>

#include "table.h"
#include "table_int.h"

void table_age_start(psd_table *t) {
  if (t->age.active) return;
  t->age.uses = 0;
  t->age.active = 1;
  t->age.next = t->node_first;
}

void table_age_node_gone(psd_table *t, uint32_t id) {
  if (id == t->age.next) t->age.next = node_at(t, id)->next;
  if (id == t->age.src || id == t->age.dst) t->age.src = t->age.dst = 0;
}

/* Halve the count of the next node; merge it into the node before it when
 * they meet. */
static void halve_next(psd_table *t) {
  uint32_t id = t->age.next;
  psd_rnode *n = node_at(t, id);
  t->age.next = n->next;
  uint32_t c = n->count > 1 ? n->count / 2 : 1;
  if (n->prev != 0 && node_at(t, n->prev)->count >= c) {
    c = node_at(t, n->prev)->count; /* below n's own count: the nodes are sorted */
    t->age.dst = n->prev;
    t->age.src = id;
  }
  n->count = c;
}

/* Move up to budget rows of the merge's second node to the first's tail;
 * drop the second node once empty (which ends the merge). Steps taken. */
static uint64_t merge_some(psd_table *t, uint64_t budget) {
  uint32_t src = t->age.src, dst = t->age.dst;
  uint64_t k = 0;
  while (k < budget && node_at(t, src)->head != 0) {
    uint32_t s = node_at(t, src)->head - 1;
    list_remove(t, s, 1);
    list_append(t, dst, s);
    k++;
  }
  if (node_at(t, src)->head == 0) table_node_drop(t, src);
  return k > 0 ? k : 1;
}

int table_age_step(psd_table *t, uint64_t budget) {
  while (t->age.active && budget > 0) {
    if (t->age.src != 0) {
      uint64_t k = merge_some(t, budget);
      budget = k < budget ? budget - k : 0;
    } else if (t->age.next == 0) {
      t->age.active = 0;
      t->age.passes++;
    } else {
      halve_next(t);
      budget--;
    }
  }
  return t->age.active;
}

void table_age_tick(psd_table *t, uint64_t n) {
  t->age.uses += n;
  uint64_t rows = t->nrows ? t->nrows : 1;
  if (!t->age.active && t->age.uses >= TABLE_AGE_PERIOD * rows) table_age_start(t);
  if (t->age.active) table_age_step(t, TABLE_AGE_BUDGET + TABLE_AGE_BUDGET_PER_KEY * n);
}

/* ---- checkpoints ---------------------------------------------------------------- */

void table_age_save(const psd_table *t, table_age_state *s) {
  memset(s, 0, sizeof(*s));
  s->uses = t->age.uses;
  s->passes = t->age.passes;
  s->active = (uint32_t)t->age.active;
  if (t->age.next != 0) s->next_count = node_at(t, t->age.next)->count;
  if (t->age.src != 0) {
    s->merge_count = node_at(t, t->age.src)->count;
    for (uint32_t r = node_at(t, t->age.src)->head; r != 0; r = slot_hdr(t, r - 1)->next)
      s->merge_rows++;
  }
}

/* The first node with a count of at least c, or 0. */
static uint32_t node_from(const psd_table *t, uint32_t c) {
  uint32_t id = t->node_first;
  while (id != 0 && node_at(t, id)->count < c) id = node_at(t, id)->next;
  return id;
}

/* Restored rows of one count are one node: split off the last `rows` of
 * them into a node of the same count right after it, as the merge had
 * them. */
static int split_merge(psd_table *t, uint32_t count, uint64_t rows) {
  uint32_t m = node_from(t, count);
  if (m == 0 || node_at(t, m)->count != count || rows == 0) return -2;
  uint64_t total = 0;
  for (uint32_t r = node_at(t, m)->head; r != 0; r = slot_hdr(t, r - 1)->next) total++;
  if (rows >= total) return -2; /* both nodes of a merge hold rows */
  if (table_nodes_reserve(t, 1) != 0) return -1;
  uint32_t b = table_node_new(t, count, m);
  uint32_t r = node_at(t, m)->tail;
  for (uint64_t i = 1; i < rows; i++) r = slot_hdr(t, r - 1)->prev;
  while (r != 0) {
    uint32_t next = slot_hdr(t, r - 1)->next;
    list_remove(t, r - 1, 1);
    list_append(t, b, r - 1);
    r = next;
  }
  t->age.dst = m;
  t->age.src = b;
  return 0;
}

int table_age_restore(psd_table *t, const table_age_state *s) {
  if (t->spec.evict != PS_EVICT_LFU) return -2;
  if (!s->active && (s->next_count != 0 || s->merge_count != 0)) return -2;
  if (s->next_count != 0 && s->merge_count >= s->next_count) return -2;
  t->age.uses = s->uses;
  t->age.passes = s->passes;
  t->age.active = s->active != 0;
  t->age.next = t->age.src = t->age.dst = 0;
  if (s->next_count != 0) {
    /* Every node halved already holds a lower count than the next one. */
    t->age.next = node_from(t, s->next_count);
    if (t->age.next == 0 || node_at(t, t->age.next)->count != s->next_count) return -2;
  }
  return s->merge_count != 0 ? split_merge(t, s->merge_count, s->merge_rows) : 0;
}
