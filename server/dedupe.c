/* dedupe.c -- the exactly-once table; see dedupe.h. Open addressing with
 * linear probing, power-of-two capacity, at most half full; key 0 is never
 * stored (it means "no worker id"). */
#include "dedupe.h"

#include <stdlib.h>

int dedupe_last(const psd_seqmap *m, uint64_t wid, uint64_t *seq) {
  if (m->cap == 0 || wid == 0) return 0;
  for (size_t i = wid & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
    if (m->keys[i] == 0) return 0;
    if (m->keys[i] == wid) {
      *seq = m->vals[i];
      return 1;
    }
  }
}

int dedupe_reserve(psd_seqmap *m) {
  if ((m->len + 1) * 2 <= m->cap) return 0;
  size_t cap = m->cap ? m->cap * 2 : 64;
  uint64_t *k = calloc(cap, sizeof(*k)), *v = calloc(cap, sizeof(*v));
  if (k == NULL || v == NULL) {
    free(k);
    free(v);
    return -1;
  }
  for (size_t i = 0; i < m->cap; i++) {
    if (m->keys[i] == 0) continue;
    size_t j = m->keys[i] & (cap - 1);
    while (k[j] != 0) j = (j + 1) & (cap - 1);
    k[j] = m->keys[i];
    v[j] = m->vals[i];
  }
  free(m->keys);
  free(m->vals);
  m->keys = k;
  m->vals = v;
  m->cap = cap;
  return 0;
}

int dedupe_record(psd_seqmap *m, uint64_t wid, uint64_t seq) {
  if (wid == 0) return 0;
  if (dedupe_reserve(m) != 0) return -1;
  size_t i = wid & (m->cap - 1);
  while (m->keys[i] != 0 && m->keys[i] != wid) i = (i + 1) & (m->cap - 1);
  if (m->keys[i] == 0) m->len++;
  m->keys[i] = wid;
  m->vals[i] = seq;
  return 0;
}

void dedupe_free(psd_seqmap *m) {
  free(m->keys);
  free(m->vals);
  m->keys = m->vals = NULL;
  m->cap = m->len = 0;
}
