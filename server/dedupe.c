/* dedupe.c -- the exactly-once table; see dedupe.h. A u64map from worker
 * id to the last sequence number taken; id 0 means "no id" and is never
 * recorded. Its table is charged to the memory ceiling (memory.h). */
#include "dedupe.h"

#include "memory.h"

int dedupe_last(const psd_seqmap *m, uint64_t wid, uint64_t *seq) {
  return wid != 0 && u64map_get(m, wid, seq);
}

int dedupe_reserve(psd_seqmap *m) {
  size_t cap = m->cap;
  int rc = u64map_reserve(m);
  if (m->cap != cap) {
    mem_release(PSD_MEM_META, cap * 16);
    mem_charge(PSD_MEM_META, m->cap * 16);
  }
  return rc;
}

int dedupe_record(psd_seqmap *m, uint64_t wid, uint64_t seq) {
  if (wid == 0) return 0;
  size_t cap = m->cap;
  int rc = u64map_put(m, wid, seq);
  if (m->cap != cap) {
    mem_release(PSD_MEM_META, cap * 16);
    mem_charge(PSD_MEM_META, m->cap * 16);
  }
  return rc;
}

void dedupe_free(psd_seqmap *m) {
  mem_release(PSD_MEM_META, m->cap * 16);
  u64map_free(m);
}
