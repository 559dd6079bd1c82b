/* u64map.c -- see u64map.h. */
#include "u64map.h"

#include <stdlib.h>
#include <string.h>

#include "hash.h"

/* Keys may be sequential (request ids) or already random (worker ids,
 * name hashes): mixing spreads both over the table. */
static size_t home(uint64_t key, size_t mask) { return (size_t)psh_mix64(key) & mask; }

/* The slot holding key, or the empty slot where it would go. */
static size_t probe(const u64map *m, uint64_t key) {
  size_t mask = m->cap - 1, i = home(key, mask);
  while (m->keys[i] != 0 && m->keys[i] != key) i = (i + 1) & mask;
  return i;
}

static int grow(u64map *m) {
  size_t cap = m->cap ? m->cap * 2 : 16;
  uint64_t *keys = calloc(cap, sizeof(*keys));
  uint64_t *vals = malloc(cap * sizeof(*vals));
  if (keys == NULL || vals == NULL) {
    free(keys);
    free(vals);
    return -1;
  }
  u64map old = *m;
  m->keys = keys;
  m->vals = vals;
  m->cap = cap;
  for (size_t i = 0; i < old.cap; i++) {
    if (old.keys[i] == 0) continue;
    size_t j = probe(m, old.keys[i]);
    m->keys[j] = old.keys[i];
    m->vals[j] = old.vals[i];
  }
  free(old.keys);
  free(old.vals);
  return 0;
}

int u64map_reserve(u64map *m) {
  size_t in_table = m->len - (size_t)m->has_zero;
  if ((in_table + 1) * 4 > m->cap * 3) return grow(m);
  return 0;
}

int u64map_put(u64map *m, uint64_t key, uint64_t val) {
  if (key == 0) {
    m->len += !m->has_zero;
    m->has_zero = 1;
    m->zero_val = val;
    return 0;
  }
  size_t i;
  if (m->cap > 0 && m->keys[i = probe(m, key)] == key) {
    m->vals[i] = val; /* a replacement never needs to grow */
    return 0;
  }
  if (u64map_reserve(m) != 0) return -1;
  i = probe(m, key);
  m->keys[i] = key;
  m->vals[i] = val;
  m->len++;
  return 0;
}

int u64map_get(const u64map *m, uint64_t key, uint64_t *val) {
  if (key == 0) {
    if (m->has_zero && val != NULL) *val = m->zero_val;
    return m->has_zero;
  }
  if (m->cap == 0) return 0;
  size_t i = probe(m, key);
  if (m->keys[i] == 0) return 0;
  if (val != NULL) *val = m->vals[i];
  return 1;
}

int u64map_del(u64map *m, uint64_t key, uint64_t *val) {
  if (key == 0) {
    if (!m->has_zero) return 0;
    if (val != NULL) *val = m->zero_val;
    m->has_zero = 0;
    m->len--;
    return 1;
  }
  if (m->cap == 0) return 0;
  size_t mask = m->cap - 1, i = probe(m, key);
  if (m->keys[i] == 0) return 0;
  if (val != NULL) *val = m->vals[i];
  /* Backward shift: walk the run after the hole; an entry whose home is
   * not cyclically in (hole, j] moves into the hole, which moves to j. */
  for (size_t j = (i + 1) & mask; m->keys[j] != 0; j = (j + 1) & mask) {
    size_t h = home(m->keys[j], mask);
    int stays = (i <= j) ? (i < h && h <= j) : (i < h || h <= j);
    if (!stays) {
      m->keys[i] = m->keys[j];
      m->vals[i] = m->vals[j];
      i = j;
    }
  }
  m->keys[i] = 0;
  m->len--;
  return 1;
}

int u64map_next(const u64map *m, size_t *it, uint64_t *key, uint64_t *val) {
  /* *it: 0 = key 0's entry, then 1 + slot index. */
  if (*it == 0) {
    *it = 1;
    if (m->has_zero) {
      *key = 0;
      *val = m->zero_val;
      return 1;
    }
  }
  for (size_t i = *it - 1; i < m->cap; i++)
    if (m->keys[i] != 0) {
      *key = m->keys[i];
      *val = m->vals[i];
      *it = i + 2;
      return 1;
    }
  *it = m->cap + 1;
  return 0;
}

void u64map_free(u64map *m) {
  free(m->keys);
  free(m->vals);
  memset(m, 0, sizeof(*m));
}
