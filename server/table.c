/* table.c -- a job's sparse tables: slab, index, eviction order; see table.h. */
#include "table.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "log.h"
#include "memory.h"
#include "msg.h"
#include "outbox.h"
#include "psmath.h"
#include "table_int.h"
#include "table_round.h"

#define CHUNK_BYTES (2u << 20)
#define IDX_DEAD UINT32_MAX    /* an index entry deleted or moved (old array only) */
/* Old index positions moved per request: a few, and 4 per key it names. An
 * array grown by half at 3/4 full takes 3/8 of its old size in new keys
 * before it grows again; 4 positions a key moves the old one in 1/4 of
 * that. */
#define IDX_MIGRATE 8
#define IDX_MIGRATE_PER_KEY 4
#define IDX_MIN 16

/* ---- memory ------------------------------------------------------------------ */

static void charge(psd_table *t, uint64_t bytes) {
  mem_charge(PSD_MEM_TABLES, bytes);
  t->bytes += bytes;
}

static void release(psd_table *t, uint64_t bytes) {
  mem_release(PSD_MEM_TABLES, bytes);
  t->bytes -= bytes;
}

/* ---- slots ------------------------------------------------------------------- */

/* The slot id of fresh slot number f (slots are handed out in order). */
static inline uint32_t fresh_id(const psd_table *t, uint64_t f) {
  return (uint32_t)((f / t->per_chunk) << 16 | (f % t->per_chunk));
}

/* Slots that can be taken without allocating. */
static uint64_t slots_ready(const psd_table *t) {
  return t->nfree + (uint64_t)t->nchunks * t->per_chunk - t->nfresh;
}

/* Allocate chunks until `want` slots are ready. 0, or -1 (out of memory;
 * the chunks made so far stay, charged). */
static int chunks_reserve(psd_table *t, uint64_t want) {
  while (slots_ready(t) < want) {
    if (t->nchunks >= 0xffffu) return -1; /* slot ids are 32-bit */
    if (t->nchunks == t->chunks_cap) {
      uint32_t cap = t->chunks_cap ? t->chunks_cap * 2 : 8;
      uint8_t **nc = realloc(t->chunks, cap * sizeof(*nc));
      if (nc == NULL) return -1;
      charge(t, (uint64_t)(cap - t->chunks_cap) * sizeof(*nc));
      t->chunks = nc;
      t->chunks_cap = cap;
    }
    uint8_t *c = mem_alloc_data(CHUNK_BYTES);
    if (c == NULL) return -1;
    charge(t, CHUNK_BYTES);
    t->chunks[t->nchunks++] = c;
  }
  return 0;
}

/* Bytes the chunks for `want` ready slots would add. */
static uint64_t chunks_cost(const psd_table *t, uint64_t want) {
  uint64_t ready = slots_ready(t);
  if (ready >= want) return 0;
  uint64_t n = (want - ready + t->per_chunk - 1) / t->per_chunk;
  return n * (CHUNK_BYTES + 2 * sizeof(uint8_t *));
}

static uint32_t slot_take(psd_table *t) {
  if (t->free_slot != 0) {
    uint32_t s = t->free_slot - 1;
    t->free_slot = slot_hdr(t, s)->node;
    t->nfree--;
    return s;
  }
  return fresh_id(t, t->nfresh++);
}

static void slot_put(psd_table *t, uint32_t s) {
  slot_hdr(t, s)->node = t->free_slot;
  t->free_slot = s + 1;
  t->nfree++;
}

/* ---- the index --------------------------------------------------------------
 * Open addressing with linear probing over any capacity (a key's home is
 * the high half of hash * cap), entries slot + 1. While an old array is
 * being migrated, a key may be in either; lookups try the new one first.
 * The old array is never written but to mark an entry moved or deleted
 * (IDX_DEAD), so its probe sequences stay intact. */

static inline uint64_t idx_hash(uint64_t key) {
  /* Not placement's hash: a shard's keys share its buckets' top bits. */
  return psh_mix64(key ^ UINT64_C(0x1D8E4E27C47D124F));
}

static inline uint64_t idx_home(uint64_t h, uint64_t cap) {
  return (uint64_t)(((unsigned __int128)h * cap) >> 64);
}

/* Position of key in e[0..cap), or cap when absent. */
static uint64_t idx_probe(const psd_table *t, const uint32_t *e, uint64_t cap, uint64_t key) {
  if (cap == 0) return cap;
  for (uint64_t p = idx_home(idx_hash(key), cap);;) {
    uint32_t v = e[p];
    if (v == 0) return cap;
    if (v != IDX_DEAD && slot_hdr(t, v - 1)->key == key) return p;
    if (++p == cap) p = 0;
  }
}

static void idx_place(psd_table *t, uint64_t key, uint32_t slot) {
  uint64_t p = idx_home(idx_hash(key), t->idx.cap);
  while (t->idx.e[p] != 0)
    if (++p == t->idx.cap) p = 0;
  t->idx.e[p] = slot + 1;
}

/* Move up to `budget` positions of the old array into the new one. Each
 * entry's key is read from its slot, a cache miss in a big table: the
 * slots of a batch are fetched together (prefetch), then placed. */
#define MIGRATE_BATCH 32

static void idx_migrate(psd_table *t, uint64_t budget) {
  if (t->idx.old == NULL) return;
  while (budget > 0 && t->idx.moved < t->idx.old_cap) {
    uint64_t lo = t->idx.moved, k = t->idx.old_cap - lo;
    if (k > MIGRATE_BATCH) k = MIGRATE_BATCH;
    if (k > budget) k = budget;
    for (uint64_t i = 0; i < k; i++) {
      uint32_t v = t->idx.old[lo + i];
      if (v != 0 && v != IDX_DEAD) __builtin_prefetch(slot_hdr(t, v - 1));
    }
    for (uint64_t i = 0; i < k; i++) {
      uint32_t v = t->idx.old[lo + i];
      if (v == 0 || v == IDX_DEAD) continue;
      idx_place(t, slot_hdr(t, v - 1)->key, v - 1);
      t->idx.old[lo + i] = IDX_DEAD;
    }
    t->idx.moved += k;
    budget -= k;
  }
  if (t->idx.moved == t->idx.old_cap) {
    release(t, t->idx.old_cap * sizeof(uint32_t));
    free(t->idx.old);
    t->idx.old = NULL;
    t->idx.old_cap = t->idx.moved = 0;
  }
}

/* Ask for the index line of key (and, for a key further ahead, its slot):
 * a request's keys are looked up a few ahead of where they are used, so
 * that the misses of a big table overlap. */
static inline void idx_prefetch(const psd_table *t, uint64_t key) {
  if (t->idx.cap) __builtin_prefetch(&t->idx.e[idx_home(idx_hash(key), t->idx.cap)]);
}

static inline void slot_prefetch(const psd_table *t, uint64_t key) {
  if (t->idx.cap == 0) return;
  uint32_t v = t->idx.e[idx_home(idx_hash(key), t->idx.cap)];
  if (v != 0 && v != IDX_DEAD) __builtin_prefetch(slot_hdr(t, v - 1));
}

/* The slot of key, or -1. */
static int64_t idx_find(const psd_table *t, uint64_t key) {
  uint64_t p = idx_probe(t, t->idx.e, t->idx.cap, key);
  if (p < t->idx.cap) return (int64_t)t->idx.e[p] - 1;
  if (t->idx.old == NULL) return -1;
  p = idx_probe(t, t->idx.old, t->idx.old_cap, key);
  return p < t->idx.old_cap ? (int64_t)t->idx.old[p] - 1 : -1;
}

/* The capacity that holds `len` entries at most 3/4 full, from cap. */
static uint64_t idx_cap_for(uint64_t cap, uint64_t len) {
  if (len * 4 <= cap * 3) return cap;
  uint64_t c = cap < IDX_MIN ? IDX_MIN : cap + cap / 2;
  if (c * 3 < len * 4) c = len * 4 / 3 + 1;
  return c;
}

/* Bytes growing the index for `more` entries would allocate. */
static uint64_t idx_cost(const psd_table *t, uint64_t more) {
  uint64_t c = idx_cap_for(t->idx.cap, t->idx.len + more);
  return c == t->idx.cap ? 0 : c * sizeof(uint32_t);
}

/* Room for `more` entries: 0, or -1 (out of memory, unchanged). A growth
 * while an old array is still being migrated (rare: it moves faster than
 * the index fills) finishes that migration first. */
static int idx_reserve(psd_table *t, uint64_t more) {
  uint64_t c = idx_cap_for(t->idx.cap, t->idx.len + more);
  if (c == t->idx.cap) return 0;
  /* calloc: a big array comes from fresh zero pages, faulted in as the
   * index fills, not all zeroed in this request's turn. */
  uint32_t *e = calloc(c, sizeof(uint32_t));
  if (e == NULL) return -1;
  charge(t, c * sizeof(uint32_t));
  idx_migrate(t, UINT64_MAX);
  t->idx.old = t->idx.e;
  t->idx.old_cap = t->idx.cap;
  t->idx.moved = 0;
  t->idx.e = e;
  t->idx.cap = c;
  if (t->idx.old == NULL) t->idx.old_cap = 0;
  if (t->idx.old_cap == 0) {
    free(t->idx.old);
    t->idx.old = NULL;
  }
  return 0;
}

/* Is `hole` in the cyclic range [h, q)? */
static int cyc_in(uint64_t h, uint64_t hole, uint64_t q) {
  return h <= q ? (h <= hole && hole < q) : (hole >= h || hole < q);
}

static void idx_delete(psd_table *t, uint64_t key) {
  uint64_t cap = t->idx.cap, p = idx_probe(t, t->idx.e, cap, key);
  t->idx.len--;
  if (p == cap) {
    p = idx_probe(t, t->idx.old, t->idx.old_cap, key);
    if (p < t->idx.old_cap) t->idx.old[p] = IDX_DEAD;
    return;
  }
  /* Backward shift: entries after the hole that may live there move up,
   * so that probes never meet a hole inside their run. */
  uint64_t hole = p, q = p;
  for (;;) {
    if (++q == cap) q = 0;
    uint32_t v = t->idx.e[q];
    if (v == 0) break;
    uint64_t h = idx_home(idx_hash(slot_hdr(t, v - 1)->key), cap);
    if (cyc_in(h, hole, q)) {
      t->idx.e[hole] = v;
      hole = q;
    }
  }
  t->idx.e[hole] = 0;
}

/* ---- eviction order ----------------------------------------------------------- */

int table_nodes_reserve(psd_table *t, uint64_t more) {
  if (t->nodes_used + more <= t->nodes_cap) return 0;
  uint64_t cap = t->nodes_cap ? (uint64_t)t->nodes_cap * 2 : 16;
  if (cap < t->nodes_used + more) cap = t->nodes_used + more;
  if (cap >= PIN) return -1;
  psd_rnode *n = realloc(t->nodes, cap * sizeof(*n));
  if (n == NULL) return -1;
  charge(t, (cap - t->nodes_cap) * sizeof(*n));
  t->nodes = n;
  t->nodes_cap = (uint32_t)cap;
  return 0;
}

static uint64_t nodes_cost(const psd_table *t, uint64_t more) {
  if (t->spec.evict == PS_EVICT_NONE || t->nodes_used + more <= t->nodes_cap) return 0;
  uint64_t cap = t->nodes_cap ? (uint64_t)t->nodes_cap * 2 : 16;
  if (cap < t->nodes_used + more) cap = t->nodes_used + more;
  return (cap - t->nodes_cap) * sizeof(psd_rnode);
}

uint32_t table_node_new(psd_table *t, uint32_t count, uint32_t after) {
  uint32_t id;
  if (t->node_free != 0) {
    id = t->node_free;
    t->node_free = node_at(t, id)->next;
  } else {
    id = ++t->nodes_used; /* ids of nodes ever made; freed ones are reused first */
  }
  psd_rnode *n = node_at(t, id);
  n->count = count;
  n->head = n->tail = 0;
  n->prev = after;
  n->next = after ? node_at(t, after)->next : t->node_first;
  if (n->prev) node_at(t, n->prev)->next = id;
  else t->node_first = id;
  if (n->next) node_at(t, n->next)->prev = id;
  else t->node_last = id;
  return id;
}

void table_node_drop(psd_table *t, uint32_t id) {
  if (t->age.active) table_age_node_gone(t, id);
  psd_rnode *n = node_at(t, id);
  if (n->prev) node_at(t, n->prev)->next = n->next;
  else t->node_first = n->next;
  if (n->next) node_at(t, n->next)->prev = n->prev;
  else t->node_last = n->prev;
  n->next = t->node_free;
  t->node_free = id;
}

/* A row was used: LRU, to the end of the one list; LFU, to the end of the
 * list of its count + 1 (the run of that count while aging merges it:
 * table_int.h). */
static void row_touch(psd_table *t, uint32_t slot) {
  psd_rowhdr *h = slot_hdr(t, slot);
  uint32_t nid = node_of(h);
  psd_rnode *n = node_at(t, nid);
  if (t->spec.evict == PS_EVICT_LRU || n->count == UINT32_MAX) {
    uint32_t to = table_run_tail(t, nid);
    list_remove(t, slot, 1);
    list_append(t, to, slot);
    return;
  }
  uint32_t after = table_run_tail(t, nid), next = node_at(t, after)->next;
  if (next == 0 || node_at(t, next)->count != n->count + 1)
    next = table_node_new(t, n->count + 1, after);
  else
    next = table_run_tail(t, next);
  list_remove(t, slot, 0);
  list_append(t, next, slot);
}

/* A new row enters the order: LRU at the end, LFU with count 1 (counts
 * never go below 1, aging included, so count 1 is the first node). */
static void row_enter(psd_table *t, uint32_t slot, uint32_t count) {
  uint32_t nid = t->node_first;
  if (t->spec.evict == PS_EVICT_LRU) count = 0;
  if (nid == 0 || node_at(t, nid)->count != count) nid = table_node_new(t, count, 0);
  else nid = table_run_tail(t, nid);
  list_append(t, nid, slot);
}

static void row_evict(psd_table *t, uint32_t slot) {
  psd_rowhdr *h = slot_hdr(t, slot);
  list_remove(t, slot, 0);
  idx_delete(t, h->key);
  slot_put(t, slot);
  t->nrows--;
  t->evictions++;
}

/* Evict k rows, coldest first, skipping pinned ones. */
static void evict_coldest(psd_table *t, uint64_t k) {
  uint32_t nid = t->node_first;
  while (k > 0 && nid != 0) {
    psd_rnode *n = node_at(t, nid);
    uint32_t next_node = n->next, s = n->head;
    while (k > 0 && s != 0) {
      psd_rowhdr *h = slot_hdr(t, s - 1);
      uint32_t next = h->next;
      if (!(h->node & PIN)) {
        row_evict(t, s - 1);
        k--;
      }
      s = next;
    }
    nid = next_node; /* captured first: evicting may have dropped node nid */
  }
}

/* ---- a request's rows ----------------------------------------------------------- */

static void *scratch(psd_server *srv, void **buf, size_t *cap, size_t bytes) {
  if (bytes > *cap) {
    void *p = malloc(bytes);
    if (p == NULL) return NULL;
    mem_release(PSD_MEM_SCRATCH, *cap);
    mem_charge(PSD_MEM_SCRATCH, bytes);
    free(*buf);
    *buf = p;
    *cap = bytes;
  }
  (void)srv;
  return *buf;
}

void table_buffers_free(psd_server *srv) {
  mem_release(PSD_MEM_SCRATCH, srv->rowbuf_cap + srv->keyset_cap);
  free(srv->rowbuf);
  free(srv->keyset);
  srv->rowbuf = NULL;
  srv->keyset = NULL;
  srv->rowbuf_cap = srv->keyset_cap = 0;
}

/* Are any of the m new keys of rows[] (NULL entries) repeated? A small
 * open-addressing set of the keys (key 0 apart). 1 and *bad, 0, or -1
 * when out of memory. */
static int new_keys_repeat(psd_server *srv, const uint64_t *keys, psd_rowhdr **rows, size_t n,
                           size_t m, uint64_t *bad) {
  size_t cap = 16;
  while (cap < 2 * m) cap *= 2;
  size_t bytes = cap * sizeof(uint64_t);
  uint64_t *set = scratch(srv, (void **)&srv->keyset, &srv->keyset_cap, bytes);
  if (set == NULL) return -1;
  memset(set, 0, bytes);
  int zero = 0;
  for (size_t i = 0; i < n; i++) {
    if (rows[i] != NULL) continue;
    uint64_t k = keys[i];
    if (k == 0) {
      if (zero++) return *bad = 0, 1;
      continue;
    }
    size_t p = psh_mix64(k) & (cap - 1);
    for (; set[p] != 0; p = (p + 1) & (cap - 1))
      if (set[p] == k) return *bad = k, 1;
    set[p] = k;
  }
  return 0;
}

void table_release(psd_table *t, psd_rowhdr **rows, size_t n) {
  (void)t; /* pins live in the rows themselves */
  for (size_t i = 0; i < n; i++)
    if (rows[i] != NULL) rows[i]->node &= ~PIN;
}

/* A new row of key in a slot taken now (room reserved). */
static psd_rowhdr *row_create(psd_table *t, uint64_t key) {
  uint32_t slot = slot_take(t);
  psd_rowhdr *h = slot_hdr(t, slot);
  memset(h, 0, t->hdr_bytes);
  h->key = key;
  h->node = PIN;
  float *row = row_values(t, h);
  psm_row_init(&t->spec.init, t->dim, t->name_hash, key, row);
  if (t->k) memset(row + t->dim, 0, (size_t)t->dim * t->k * sizeof(float));
  uint32_t m = psm_absmax_bits(row, t->dim);
  if (m > t->absmax) t->absmax = m;
  idx_place(t, key, slot);
  t->idx.len++;
  t->nrows++;
  if (t->spec.evict != PS_EVICT_NONE) row_enter(t, slot, 1);
  return h;
}

int table_resolve(psd_server *srv, psd_table *t, const uint64_t *keys, size_t n,
                  uint64_t extra, psd_rowhdr ***out, uint64_t *bad) {
  /* The rows, then their slot ids (for the eviction order). */
  psd_rowhdr **rows = scratch(srv, &srv->rowbuf, &srv->rowbuf_cap,
                              (n ? n : 1) * (sizeof(*rows) + sizeof(uint32_t)));
  if (rows == NULL) return TR_NOMEM;
  uint32_t *slots = (uint32_t *)(void *)(rows + n);
  *out = rows;
  idx_migrate(t, IDX_MIGRATE + IDX_MIGRATE_PER_KEY * (uint64_t)n);
  /* Pass 1: the rows that exist, pinned (a pinned one met again is a
   * repeated key); how many are new. */
  size_t miss = 0;
  for (size_t i = 0; i < n; i++) {
    if (i + 16 < n) idx_prefetch(t, keys[i + 16]);
    if (i + 8 < n) slot_prefetch(t, keys[i + 8]);
    int64_t s = idx_find(t, keys[i]);
    rows[i] = NULL;
    if (s < 0) {
      miss++;
      continue;
    }
    psd_rowhdr *h = slot_hdr(t, (uint32_t)s);
    slots[i] = (uint32_t)s;
    if (h->node & PIN) {
      table_release(t, rows, i);
      *bad = keys[i];
      return TR_REPEAT;
    }
    h->node |= PIN;
    rows[i] = h;
  }
  int rc = TR_OK;
  if (miss > 0) {
    int r = new_keys_repeat(srv, keys, rows, n, miss, bad);
    if (r != 0) rc = r > 0 ? TR_REPEAT : TR_NOMEM;
  }
  /* The limit: past it, evict (never this request's rows) or refuse. */
  uint64_t evict = 0;
  if (rc == TR_OK && t->limit > 0) {
    if (n > t->limit) rc = TR_TOO_MANY;
    else if (t->nrows + miss > t->limit && t->spec.evict == PS_EVICT_NONE) rc = TR_FULL;
    else if (t->nrows + miss > t->limit) evict = t->nrows + miss - t->limit;
  }
  /* Memory, checked whole before anything changes; then reserved, so that
   * nothing below can fail half-way. */
  if (rc == TR_OK && miss > 0) {
    uint64_t slots = miss > evict ? miss - evict : 0;
    uint64_t need = chunks_cost(t, slots) + idx_cost(t, miss) + nodes_cost(t, n + 1) + extra;
    /* New rows stay: they leave the serving reserve free (memory.h); the
     * reply may use it. */
    if (!mem_fits_growth(need - extra) || !mem_fits(need)) {
      mem_count_refusal();
      rc = TR_OVER;
    } else if (chunks_reserve(t, slots) != 0 || idx_reserve(t, miss) != 0 ||
               (t->spec.evict != PS_EVICT_NONE && table_nodes_reserve(t, n + 1) != 0)) {
      rc = TR_NOMEM;
    }
  } else if (rc == TR_OK && !mem_fits(extra)) {
    mem_count_refusal();
    rc = TR_OVER;
  } else if (rc == TR_OK && t->spec.evict == PS_EVICT_LFU && table_nodes_reserve(t, n + 1) != 0) {
    rc = TR_NOMEM;
  }
  if (rc != TR_OK) {
    table_release(t, rows, n);
    return rc;
  }
  if (evict > 0) evict_coldest(t, evict);
  for (size_t i = 0; i < n; i++) {
    if (rows[i] == NULL) rows[i] = row_create(t, keys[i]);
    else if (t->spec.evict != PS_EVICT_NONE) row_touch(t, slots[i]);
  }
  /* Aging moves rows between nodes only, pins and all. */
  if (t->spec.evict == PS_EVICT_LFU) table_age_tick(t, n);
  return TR_OK;
}

void table_resolve_error(psd_server *srv, psd_conn *c, uint64_t id, const psd_table *t,
                         int rc, size_t n, uint64_t bad) {
  int shards = srv->servers.n;
  switch (rc) {
    case TR_OVER:
      outbox_error(&srv->outbox, c, id, PSD__CODE__RESOURCE_EXHAUSTED,
                   "the %zu rows of this request to table '%s' and its reply would cross this "
                   "shard's memory ceiling (--max-memory %llu bytes, %llu in use); nothing "
                   "changed",
                   n, t->name, (unsigned long long)mem_limit(), (unsigned long long)mem_used());
      break;
    case TR_FULL:
      outbox_error(&srv->outbox, c, id, PSD__CODE__RESOURCE_EXHAUSTED,
                   "table '%s' holds %llu rows on this shard, its limit (max_rows %llu over %d "
                   "shards) with eviction none; new rows are refused and nothing changed",
                   t->name, (unsigned long long)t->nrows, (unsigned long long)t->spec.max_rows,
                   shards);
      break;
    case TR_TOO_MANY:
      outbox_error(&srv->outbox, c, id, PSD__CODE__BAD_REQUEST,
                   "this request names %zu distinct rows of table '%s', more than the %llu it "
                   "keeps on this shard (max_rows %llu over %d shards); nothing changed",
                   n, t->name, (unsigned long long)t->limit,
                   (unsigned long long)t->spec.max_rows, shards);
      break;
    case TR_REPEAT:
      outbox_error(&srv->outbox, c, id, PSD__CODE__BAD_REQUEST,
                   "key %llu appears twice in one request to table '%s': a request's keys "
                   "must be distinct (sum the gradients of repeated keys first, as the "
                   "library does); nothing changed",
                   (unsigned long long)bad, t->name);
      break;
    default:
      outbox_error(&srv->outbox, c, id, PSD__CODE__INTERNAL,
                   "out of memory resolving %zu rows of table '%s'; nothing changed", n,
                   t->name);
      break;
  }
}

void table_reply_rows(psd_server *srv, psd_conn *c, uint64_t id, psd_table *t,
                      psd_rowhdr **rows, size_t n, int flags) {
  uint64_t bytes = (uint64_t)n * t->dim * sizeof(float);
  float *vals = n ? mem_alloc_data(bytes) : NULL;
  if (n && vals == NULL) {
    table_release(t, rows, n);
    outbox_error(&srv->outbox, c, id, PSD__CODE__INTERNAL, "out of memory for a reply");
    return;
  }
  if (n) mem_charge(PSD_MEM_OUTPUT, bytes); /* admitted with the rows */
  for (size_t i = 0; i < n; i++)
    memcpy(vals + i * t->dim, row_values(t, rows[i]), (size_t)t->dim * sizeof(float));
  table_release(t, rows, n);
  outbox_rows(&srv->outbox, c, id, vals, n, (uint64_t)n * t->dim, t->step, flags);
}

void table_answer(psd_server *srv, psd_conn *c, uint64_t id, psd_table *t,
                  const uint64_t *keys, size_t n, int want_values, int flags) {
  if (!want_values || n == 0) {
    outbox_rows(&srv->outbox, c, id, NULL, 0, 0, t->step, flags);
    return;
  }
  uint64_t bad = 0;
  psd_rowhdr **rows;
  int rc = table_resolve(srv, t, keys, n, (uint64_t)n * t->dim * sizeof(float), &rows, &bad);
  if (rc != TR_OK) {
    table_resolve_error(srv, c, id, t, rc, n, bad);
    return;
  }
  table_reply_rows(srv, c, id, t, rows, n, flags);
}

/* ---- the namespace ---------------------------------------------------------------- */

void tables_init(psd_job *job) {
  memset(&job->tables, 0, sizeof(job->tables));
  job->ntables = 0;
  psd_link_init(&job->trounds);
}

psd_table *table_find(psd_job *job, const char *name) {
  uint64_t h = psm_hash_name(name);
  for (psd_table *t = u64map_get_ptr(&job->tables, h); t != NULL; t = t->next)
    if (strcmp(t->name, name) == 0) return t;
  return NULL;
}

static uint64_t table_meta_bytes(const char *name) {
  return sizeof(psd_table) + strlen(name) + 1 + PSP_ROW_BUCKETS * sizeof(uint16_t);
}

psd_table *table_insert(psd_server *srv, psd_job *job, const char *name, uint32_t dim,
                        const ps_table_spec *spec, int *over) {
  if (over) *over = 0;
  uint64_t meta = table_meta_bytes(name) + 32; /* and the map's share */
  if (!mem_fits_growth(meta)) {
    mem_count_refusal();
    if (over) *over = 1;
    return NULL;
  }
  psd_table *t = calloc(1, sizeof(*t));
  if (t == NULL) return NULL;
  t->name = strdup(name);
  t->owner = malloc(PSP_ROW_BUCKETS * sizeof(uint16_t));
  uint64_t h = psm_hash_name(name);
  t->next = u64map_get_ptr(&job->tables, h);
  if (t->name == NULL || t->owner == NULL || u64map_put_ptr(&job->tables, h, t) != 0) {
    free(t->name);
    free(t->owner);
    free(t);
    return NULL;
  }
  t->name_hash = h;
  t->dim = dim;
  t->spec = *spec;
  t->k = psm_state_per_param(spec->optim.kind);
  t->hdr_bytes = spec->evict == PS_EVICT_NONE ? 16 : 24;
  t->stride = (t->hdr_bytes + dim * (1 + t->k) * (uint32_t)sizeof(float) + 7) & ~7u;
  uint64_t per = CHUNK_BYTES / t->stride;
  t->per_chunk = (uint32_t)(per > 65535 ? 65535 : per < 1 ? 1 : per);
  int shards = srv->servers.n > 0 ? srv->servers.n : 1;
  t->limit = spec->max_rows ? (spec->max_rows + (uint64_t)shards - 1) / (uint64_t)shards : 0;
  psp_row_map(&srv->servers, h, t->owner);
  t->job = job;
  psd_link_init(&t->round_link);
  charge(t, table_meta_bytes(name));
  job->ntables++;
  srv->ntables++;
  return t;
}

/* Free t's rows: chunks, index, eviction order (their bytes stay charged). */
static void rows_free(psd_table *t) {
  for (uint32_t c = 0; c < t->nchunks; c++) free(t->chunks[c]);
  free(t->chunks);
  free(t->idx.e);
  free(t->idx.old);
  free(t->nodes);
}

static void table_free(psd_table *t) {
  table_round_free(t);
  rows_free(t);
  free(t->owner);
  free(t->name);
  mem_release(PSD_MEM_TABLES, t->bytes);
  free(t);
}

void table_clear(psd_table *t) {
  uint64_t freed = t->bytes - table_meta_bytes(t->name);
  rows_free(t);
  release(t, freed);
  t->chunks = NULL;
  t->nchunks = t->chunks_cap = 0;
  t->nfresh = t->nfree = t->nrows = 0;
  t->free_slot = 0;
  memset(&t->idx, 0, sizeof(t->idx));
  t->nodes = NULL;
  t->nodes_cap = t->nodes_used = t->node_free = t->node_first = t->node_last = 0;
  memset(&t->age, 0, sizeof(t->age));
  t->absmax = 0;
  t->step = 0;
  t->evictions = 0;
}

void table_remove(psd_server *srv, psd_table *t) {
  psd_job *job = t->job;
  psd_table *head = u64map_get_ptr(&job->tables, t->name_hash);
  if (head == t) {
    /* Replacing a present key never allocates, so it cannot fail. */
    if (t->next != NULL) u64map_put_ptr(&job->tables, t->name_hash, t->next);
    else u64map_del(&job->tables, t->name_hash, NULL);
  } else {
    while (head->next != t) head = head->next;
    head->next = t->next;
  }
  job->ntables--;
  srv->ntables--;
  table_free(t);
}

void tables_free(psd_server *srv, psd_job *job) {
  size_t it = 0;
  uint64_t k, v;
  while (u64map_next(&job->tables, &it, &k, &v)) {
    psd_table *t = (psd_table *)(uintptr_t)v;
    while (t != NULL) {
      psd_table *next = t->next;
      table_free(t);
      t = next;
    }
  }
  u64map_free(&job->tables);
  if (srv != NULL) srv->ntables -= job->ntables;
  job->ntables = 0;
  psd_link_init(&job->trounds);
}

/* ---- what a table looks like from outside -------------------------------------------- */

double table_bytes_per_row(const psd_table *t) {
  double idx = t->nrows ? (double)t->idx.cap * sizeof(uint32_t) / (double)t->nrows : 0;
  return (double)t->stride + idx;
}

void table_info_fill(psd_server *srv, psd_table *t, Psd__TableInfo *ti, void *storage) {
  pmsg_table_pb *pb = storage;
  pmsg_table_to_pb(pb, &t->spec);
  psd__table_info__init(ti);
  ti->name = t->name;
  ti->dim = t->dim;
  ti->spec = &pb->ts;
  ti->has_rows_here = 1, ti->rows_here = t->nrows;
  ti->has_bytes_here = 1, ti->bytes_here = t->bytes;
  ti->has_step = 1, ti->step = t->step;
  ti->has_evictions = 1, ti->evictions = t->evictions;
  ti->has_max_frame = 1, ti->max_frame = srv->cfg.max_frame;
}

/* A table's object: its escaped name (at most 6 bytes a byte), the job's
 * name and the figures. */
#define TABLE_JSON_MAX (6 * 256 + 600)

size_t tables_json_size(psd_server *srv) { return 64 + srv->ntables * TABLE_JSON_MAX; }

void tables_json(psd_server *srv, char *buf, size_t len) {
  size_t n = (size_t)snprintf(buf, len, "[");
  int first = 1;
  for (psd_link *l = srv->jobs.next; l != &srv->jobs; l = l->next) {
    psd_job *j = psd_link_entry(l, psd_job, link);
    size_t it = 0;
    uint64_t k, v;
    while (u64map_next(&j->tables, &it, &k, &v))
      for (psd_table *t = (psd_table *)(uintptr_t)v; t != NULL && n + TABLE_JSON_MAX < len;
           t = t->next) {
        char name[6 * 256 + 8];
        json_escape(name, sizeof(name), t->name);
        n += (size_t)snprintf(
            buf + n, len - n,
            "%s{\"job\":\"%s\",\"name\":\"%s\",\"dim\":%u,\"optimizer\":\"%s\",\"rows\":%llu,"
            "\"bytes\":%llu,\"bytes_per_row\":%.1f,\"evictions\":%llu,\"step\":%llu,"
            "\"max_rows\":%llu,\"limit_here\":%llu,\"evict\":\"%s\",\"lfu_halvings\":%llu}",
            first ? "" : ",", j->name, name, t->dim, ps_optim_name(t->spec.optim.kind),
            (unsigned long long)t->nrows, (unsigned long long)t->bytes,
            table_bytes_per_row(t), (unsigned long long)t->evictions,
            (unsigned long long)t->step, (unsigned long long)t->spec.max_rows,
            (unsigned long long)t->limit, ps_evict_name(t->spec.evict),
            (unsigned long long)t->age.passes);
        first = 0;
      }
  }
  if (n + 2 <= len) snprintf(buf + n, len - n, "]");
}

/* ---- checkpoints ---------------------------------------------------------------------- */

void table_each_row(psd_table *t, table_row_fn fn, void *arg) {
  if (t->spec.evict != PS_EVICT_NONE) {
    for (uint32_t nid = t->node_first; nid != 0; nid = node_at(t, nid)->next) {
      const psd_rnode *n = node_at(t, nid);
      for (uint32_t s = n->head; s != 0; s = slot_hdr(t, s - 1)->next) {
        psd_rowhdr *h = slot_hdr(t, s - 1);
        fn(arg, h, row_values(t, h), n->count);
      }
    }
    return;
  }
  /* Without eviction no slot is ever freed: the first nfresh are the rows. */
  for (uint64_t f = 0; f < t->nfresh; f++) {
    psd_rowhdr *h = slot_hdr(t, fresh_id(t, f));
    fn(arg, h, row_values(t, h), 0);
  }
}

int table_restore_row(psd_server *srv, psd_table *t, uint64_t key, uint32_t step,
                      uint32_t count, const float *row) {
  (void)srv;
  if (idx_find(t, key) >= 0) return -2;
  if (t->spec.evict == PS_EVICT_LFU) {
    if (count == 0 || (t->node_last != 0 && node_at(t, t->node_last)->count > count)) return -2;
  }
  if (!mem_fits(chunks_cost(t, 1) + idx_cost(t, 1) + nodes_cost(t, 1))) return -1;
  if (chunks_reserve(t, 1) != 0 || idx_reserve(t, 1) != 0 ||
      (t->spec.evict != PS_EVICT_NONE && table_nodes_reserve(t, 1) != 0))
    return -1;
  uint32_t slot = slot_take(t);
  psd_rowhdr *h = slot_hdr(t, slot);
  memset(h, 0, t->hdr_bytes);
  h->key = key;
  h->step = step;
  memcpy(row_values(t, h), row, (size_t)t->dim * (1 + t->k) * sizeof(float));
  uint32_t m = psm_absmax_bits(row, (uint64_t)t->dim * (1 + t->k));
  if (m > t->absmax) t->absmax = m;
  idx_place(t, key, slot);
  t->idx.len++;
  t->nrows++;
  if (t->spec.evict == PS_EVICT_LRU) {
    row_enter(t, slot, 0);
  } else if (t->spec.evict == PS_EVICT_LFU) {
    uint32_t nid = t->node_last;
    if (nid == 0 || node_at(t, nid)->count != count) nid = table_node_new(t, count, t->node_last);
    list_append(t, nid, slot);
  }
  return 0;
}
