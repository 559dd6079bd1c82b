/*
 * u64map.h -- a hash map from uint64_t keys to uint64_t values, shared by
 * the daemon (its exactly-once table: worker id -> last push sequence) and
 * the library (request id -> sub, ticket -> op, name hash -> tensor, ...).
 *
 * Open addressing with linear probing over a power-of-two table, kept at
 * most 3/4 full; deletion shifts the entries that follow back (no
 * tombstones), so lookups stay short however many keys come and go. Every
 * key is allowed: key 0 marks an empty slot in the table, so an entry of
 * key 0 is kept beside it. Not thread-safe: the caller locks.
 *
 * A zeroed u64map (U64MAP_INIT, memset, calloc) is an empty map.
 */
#ifndef PSD_U64MAP_H
#define PSD_U64MAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
  uint64_t *keys;    /* 0: empty slot */
  uint64_t *vals;
  size_t cap;        /* slots: 0 or a power of two */
  size_t len;        /* entries, key 0's included */
  int has_zero;      /* key 0 is present, with value zero_val */
  uint64_t zero_val;
} u64map;

#define U64MAP_INIT {0}

/* Set key's value (insert or replace). 0, or -1 when the table cannot
 * grow (out of memory): the map is then unchanged. */
int u64map_put(u64map *m, uint64_t key, uint64_t val);

/* Make room for one more key: after a 0, the next u64map_put of a new key
 * cannot fail (for a caller that must not change its state unless the
 * record of the change can be kept). 0, or -1 when out of memory. */
int u64map_reserve(u64map *m);

/* 1 and *val (may be NULL) = key's value, or 0 if key is absent. */
int u64map_get(const u64map *m, uint64_t key, uint64_t *val);

/* Remove key: 1 and *val (may be NULL) = the value it had, or 0 if it was
 * absent. Never allocates. */
int u64map_del(u64map *m, uint64_t key, uint64_t *val);

/* Iteration, in no particular order:
 *   size_t it = 0; uint64_t k, v;
 *   while (u64map_next(m, &it, &k, &v)) ...
 * The map must not change during an iteration. */
int u64map_next(const u64map *m, size_t *it, uint64_t *key, uint64_t *val);

/* Free the table; the map is empty (and usable) again. */
void u64map_free(u64map *m);

/* Pointer values, for maps whose values are objects (NULL: absent). */
static inline int u64map_put_ptr(u64map *m, uint64_t key, void *p) {
  return u64map_put(m, key, (uint64_t)(uintptr_t)p);
}
static inline void *u64map_get_ptr(const u64map *m, uint64_t key) {
  uint64_t v;
  return u64map_get(m, key, &v) ? (void *)(uintptr_t)v : NULL;
}
static inline void *u64map_del_ptr(u64map *m, uint64_t key) {
  uint64_t v;
  return u64map_del(m, key, &v) ? (void *)(uintptr_t)v : NULL;
}

#endif /* PSD_U64MAP_H */
