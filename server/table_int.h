/*
 * table_int.h -- what table.c and table_age.c share of a table's insides:
 * slots, frequency nodes and their lists. Nothing else includes it.
 *
 * The eviction order (table.h): frequency nodes sorted by use count, each
 * a list of rows from least to most recently used. While LFU aging merges
 * two nodes that halving gave the same count (t->age.dst, then t->age.src
 * right after it), the pair is one run: rows are moved from src's head to
 * dst's tail, and whatever joins the run joins src's tail, its most recent
 * end (table_run_tail), so that the order of rows is the one a single node
 * would keep.
 */
#ifndef PSD_TABLE_INT_H
#define PSD_TABLE_INT_H

#include "server.h"

#define PIN 0x80000000u        /* psd_rowhdr.node: pinned by the request being handled */

static inline psd_rowhdr *slot_hdr(const psd_table *t, uint32_t slot) {
  return (psd_rowhdr *)(void *)(t->chunks[slot >> 16] + (size_t)(slot & 0xffffu) * t->stride);
}

static inline psd_rnode *node_at(const psd_table *t, uint32_t id) { return &t->nodes[id - 1]; }
static inline uint32_t node_of(const psd_rowhdr *h) { return h->node & ~PIN; }

/* The node where rows joining node id's count go: id, or the second node
 * of a merge in progress. */
static inline uint32_t table_run_tail(const psd_table *t, uint32_t id) {
  return id == t->age.dst && t->age.src != 0 ? t->age.src : id;
}

/* A new empty node of `count` right after node `after` (0: first); room
 * was reserved (table.c). */
uint32_t table_node_new(psd_table *t, uint32_t count, uint32_t after);
/* Unlink node id and free it (table.c; tells table_age.c first). */
void table_node_drop(psd_table *t, uint32_t id);
/* Node id is about to be dropped: a pass's cursor or merge moves on. */
void table_age_node_gone(psd_table *t, uint32_t id);

static inline void list_append(psd_table *t, uint32_t nid, uint32_t slot) {
  psd_rnode *n = node_at(t, nid);
  psd_rowhdr *h = slot_hdr(t, slot);
  h->node = (h->node & PIN) | nid;
  h->prev = n->tail;
  h->next = 0;
  if (n->tail) slot_hdr(t, n->tail - 1)->next = slot + 1;
  else n->head = slot + 1;
  n->tail = slot + 1;
}

/* Take slot out of its node's list; drop the node when that empties it
 * (keep_empty: not the node itself). */
static inline void list_remove(psd_table *t, uint32_t slot, int keep_empty) {
  psd_rowhdr *h = slot_hdr(t, slot);
  uint32_t nid = node_of(h);
  psd_rnode *n = node_at(t, nid);
  if (h->prev) slot_hdr(t, h->prev - 1)->next = h->next;
  else n->head = h->next;
  if (h->next) slot_hdr(t, h->next - 1)->prev = h->prev;
  else n->tail = h->prev;
  h->prev = h->next = 0;
  if (n->head == 0 && !keep_empty) table_node_drop(t, nid);
}

/* Room for `more` nodes: 0 or -1 (table.c). */
int table_nodes_reserve(psd_table *t, uint64_t more);

#endif
