/*
 * bag.c -- the embedding bag's means and their gradient (see bag.h).
 */
#include "bag.h"

#include <stdlib.h>
#include <string.h>

int bag_alloc(bag *b, int dim, int max_batch, size_t max_keys) {
  memset(b, 0, sizeof *b);
  if (dim < 1 || max_batch < 1 || max_keys < 1 || max_keys > UINT32_MAX / 2) return -1;
  b->dim = dim;
  b->max_batch = max_batch;
  b->max_keys = max_keys;
  b->cap = 16;
  while (b->cap < 2 * max_keys) b->cap *= 2;
  b->uniq = malloc(max_keys * sizeof *b->uniq);
  b->rows = malloc(max_keys * (size_t)dim * sizeof *b->rows);
  b->grads = malloc(max_keys * (size_t)dim * sizeof *b->grads);
  b->start = malloc(((size_t)max_batch + 1) * sizeof *b->start);
  b->occ = malloc(max_keys * sizeof *b->occ);
  b->where = malloc(max_keys * sizeof *b->where);
  b->slot_key = malloc(b->cap * sizeof *b->slot_key);
  b->slot_val = calloc(b->cap, sizeof *b->slot_val);
  if (!b->uniq || !b->rows || !b->grads || !b->start || !b->occ || !b->where || !b->slot_key ||
      !b->slot_val) {
    bag_free(b);
    return -1;
  }
  return 0;
}

void bag_free(bag *b) {
  free(b->uniq);
  free(b->rows);
  free(b->grads);
  free(b->start);
  free(b->occ);
  free(b->where);
  free(b->slot_key);
  free(b->slot_val);
  memset(b, 0, sizeof *b);
}

static size_t slot_of(const bag *b, uint64_t key) {
  uint64_t h = key * 0x9e3779b97f4a7c15ULL;
  size_t i = (size_t)(h >> 32) & (b->cap - 1);
  while (b->slot_val[i] != 0 && b->slot_key[i] != key) i = (i + 1) & (b->cap - 1);
  return i;
}

int bag_gather(bag *b, const uint64_t *keys, const size_t *off,
               const size_t *ex, int n) {
  /* Empty the previous batch's slots: O(its distinct keys), by position
   * (looking them up while emptying would stop at slots already empty). */
  for (size_t u = 0; u < b->nuniq; u++) b->slot_val[b->where[u]] = 0;
  b->nuniq = 0;
  b->n = 0;
  if (n < 0 || n > b->max_batch) return -1;
  size_t total = 0;
  for (int r = 0; r < n; r++) total += off[ex[r] + 1] - off[ex[r]];
  if (total > b->max_keys) return -1;
  size_t k = 0;
  for (int r = 0; r < n; r++) {
    b->start[r] = k;
    for (size_t j = off[ex[r]]; j < off[ex[r] + 1]; j++) {
      size_t s = slot_of(b, keys[j]);
      if (b->slot_val[s] == 0) {
        b->slot_key[s] = keys[j];
        b->where[b->nuniq] = s;
        b->uniq[b->nuniq++] = keys[j];
        b->slot_val[s] = (uint32_t)b->nuniq;
      }
      b->occ[k++] = b->slot_val[s] - 1;
    }
  }
  b->start[n] = k;
  b->n = n;
  return 0;
}

void bag_mean(const bag *b, float *x) {
  int d = b->dim;
  for (int r = 0; r < b->n; r++) {
    float *xr = x + (size_t)r * d;
    memset(xr, 0, (size_t)d * sizeof *xr);
    size_t cnt = b->start[r + 1] - b->start[r];
    if (cnt == 0) continue;
    for (size_t k = b->start[r]; k < b->start[r + 1]; k++) {
      const float *row = b->rows + (size_t)b->occ[k] * d;
      for (int j = 0; j < d; j++) xr[j] += row[j];
    }
    float inv = 1.0f / (float)cnt;
    for (int j = 0; j < d; j++) xr[j] *= inv;
  }
}

void bag_backward(bag *b, const float *dx) {
  int d = b->dim;
  memset(b->grads, 0, b->nuniq * (size_t)d * sizeof *b->grads);
  for (int r = 0; r < b->n; r++) {
    size_t cnt = b->start[r + 1] - b->start[r];
    if (cnt == 0) continue;
    float inv = 1.0f / (float)cnt;
    const float *dr = dx + (size_t)r * d;
    for (size_t k = b->start[r]; k < b->start[r + 1]; k++) {
      float *g = b->grads + (size_t)b->occ[k] * d;
      for (int j = 0; j < d; j++) g[j] += dr[j] * inv;
    }
  }
}
