/*
 * table.h -- a job's sparse tables (psd_table in server.h): rows of dim
 * floats keyed by uint64, created on first touch and initialized from
 * (seed, table name, key) alone (psm_row_init), so a row's bytes do not
 * depend on how many shards there are or in which order rows came.
 *
 * Storage. A row lives in a slot of the table's slab: fixed-size slots in
 * 2 MiB chunks, a header (key, the
 * row's update count, its eviction links) then the row and its optimizer
 * state. An open-addressing index of 32-bit slot numbers finds a key's
 * slot; it grows by half when 3/4 full and moves its entries to the new
 * array a few per operation, so no request pays for rehashing the whole
 * table. No malloc per row: for dim 64 with Adam a row costs 24 + 768 bytes
 * of slot plus 5.3 to 8 bytes of index (16 bytes of header without
 * eviction).
 *
 * Limits and eviction. A table with max_rows keeps limit = ceil(max_rows /
 * shards) rows on this shard. With lru or lfu, the rows of a request that
 * would pass it push the coldest rows out first (never a row of the same
 * request); an evicted row comes back re-initialized when next touched.
 * Rows are kept in frequency nodes (LFU: one per use count, LRU: one for
 * all), each a list from least to most recently used: touching a row and
 * finding the coldest are O(1). With evict none, a request that would pass
 * the limit is refused. LFU counts are halved once a period (table_age.c),
 * so that rows hot long ago do not outlive the rows hot now.
 *
 * A request's rows are resolved in one call that either resolves them all
 * (creating, evicting) or changes nothing; they stay pinned (never
 * evicted) until table_release.
 */
#ifndef PSD_TABLE_H
#define PSD_TABLE_H

#include "server.h"

/* A job's table namespace, empty (tables_init), and its freeing: every
 * table's rows and round go (their held replies must have been answered:
 * table_round.h). srv NULL: a state discarded whole. */
void tables_init(psd_job *job);
void tables_free(psd_server *srv, psd_job *job);
psd_table *table_find(psd_job *job, const char *name);
/* Add a table, its arguments validated (psm_table_validate). Rows are placed
 * by srv's server list, which must be known. NULL when out of memory or
 * over the ceiling (*over = 1). */
psd_table *table_insert(psd_server *srv, psd_job *job, const char *name, uint32_t dim,
                        const ps_table_spec *spec, int *over);
/* Empty t as a fresh create leaves it: every row, chunk, the index and the
 * eviction order freed (the memory account given back), step, evictions
 * and aging 0; the spec, placement and a sync round in progress stay. */
void table_clear(psd_table *t);
/* Take t out of its job and free it. What waits on it (its round's held
 * pushes, SSP pulls of its rows) must have been answered first. */
void table_remove(psd_server *srv, psd_table *t);

/* Row floats of a slot. */
static inline float *row_values(const psd_table *t, psd_rowhdr *h) {
  return (float *)(void *)((uint8_t *)h + t->hdr_bytes);
}
/* Does this shard own row `key`? */
static inline int table_owns(const psd_server *srv, const psd_table *t, uint64_t key) {
  return t->owner[psp_row_bucket(t->name_hash, key)] == srv->shard_index;
}

enum {
  TR_OK = 0,
  TR_OVER = -1,     /* the new rows (plus `extra`) would cross --max-memory */
  TR_FULL = -2,     /* evict none: the new rows would pass the table's limit */
  TR_TOO_MANY = -3, /* more distinct rows than the table keeps here */
  TR_REPEAT = -4,   /* a key appears twice (*bad names it) */
  TR_NOMEM = -5
};
/* Resolve keys[0..n) to their slots (*rows, an array of n that lives until
 * the next resolve), creating missing rows and evicting cold ones for them.
 * On any error nothing changed (chunks and index room reserved for them may
 * stay). The rows are pinned: release them before anything else resolves.
 * `extra`: bytes the request needs next (its reply), checked with the rows. */
int table_resolve(psd_server *srv, psd_table *t, const uint64_t *keys, size_t n,
                  uint64_t extra, psd_rowhdr ***rows, uint64_t *bad);
void table_release(psd_table *t, psd_rowhdr **rows, size_t n);
/* A sentence for a failed resolve, naming the table and the request. */
void table_resolve_error(psd_server *srv, psd_conn *c, uint64_t id, const psd_table *t,
                         int rc, size_t n, uint64_t bad);

/* Answer request id of c with the n resolved rows (their values copied
 * into the reply; memory for it was checked by the resolve), then release
 * them. flags as for outbox_rows. */
void table_reply_rows(psd_server *srv, psd_conn *c, uint64_t id, psd_table *t,
                      psd_rowhdr **rows, size_t n, int flags);
/* Answer request id of c with the rows of keys[0..n) (resolving them:
 * missing rows are created) when want_values, else with the table's step
 * only; flags as for outbox_rows. */
void table_answer(psd_server *srv, psd_conn *c, uint64_t id, psd_table *t,
                  const uint64_t *keys, size_t n, int want_values, int flags);

/* Memory of a table's row: its slot, and its share of the index. */
double table_bytes_per_row(const psd_table *t);
/* TableInfo of t (storage must be a pmsg_table_pb living as long as ti). */
void table_info_fill(psd_server *srv, psd_table *t, Psd__TableInfo *ti, void *storage);
/* The tables of every job as a JSON array, for stats. */
void tables_json(psd_server *srv, char *buf, size_t len);
size_t tables_json_size(psd_server *srv);

/* Checkpoints (ckpt_state.c). Visit every row in eviction order (coldest
 * first; slab order without eviction) with its use count (LFU; else 0). */
typedef void (*table_row_fn)(void *arg, const psd_rowhdr *h, const float *row,
                             uint32_t count);
void table_each_row(psd_table *t, table_row_fn fn, void *arg);
/* Restore one row, hotter than every row restored before it: 0, -1 (out of
 * memory, or over the ceiling), -2 (a key twice, or counts out of order). */
int table_restore_row(psd_server *srv, psd_table *t, uint64_t key, uint32_t step,
                      uint32_t count, const float *row);

void table_buffers_free(psd_server *srv);

/* ---- LFU aging (table_age.c) -------------------------------------------------
 * Every TABLE_AGE_PERIOD row uses per row the table holds, a pass halves
 * every use count (never below 1), a few nodes or moved rows per request
 * (TABLE_AGE_BUDGET + TABLE_AGE_BUDGET_PER_KEY per key it names), so that
 * no request pays for the whole table. Halving keeps the order of rows
 * (counts stay sorted; two counts that become one are merged, the lower
 * first); only later uses see the new counts. */
#define TABLE_AGE_PERIOD 8
#define TABLE_AGE_BUDGET 16
#define TABLE_AGE_BUDGET_PER_KEY 4

/* A request resolved n rows of t (an LFU table): count them, start a pass
 * when one is due, and take this request's slice of it. */
void table_age_tick(psd_table *t, uint64_t n);
/* Start a pass now, unless one is in progress (tests; tick starts them
 * when due). */
void table_age_start(psd_table *t);
/* Work on the pass in progress for at most `budget` nodes halved or rows
 * moved: 1 while it goes on, 0 when none is left. */
int table_age_step(psd_table *t, uint64_t budget);

/* Checkpoints: the aging state, as far as it shows (the node a pass
 * halves next, by its count, and the rows a merge has still to move). */
typedef struct {
  uint64_t uses, passes;
  uint32_t active;           /* a pass in progress with nodes left to halve */
  uint32_t next_count;       /* the count of the node it halves next */
  uint32_t merge_count;      /* the count of a merge in progress, 0: none */
  uint64_t merge_rows;       /* rows at the end of that count's run still to move */
} table_age_state;
void table_age_save(const psd_table *t, table_age_state *s);
/* Put the state back once t's rows are restored: 0, -1 (out of memory),
 * -2 (it does not fit the rows). */
int table_age_restore(psd_table *t, const table_age_state *s);

#endif
