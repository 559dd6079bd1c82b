/* dedupe.c -- the exactly-once table; see dedupe.h. A u64map from worker
 * id to the last sequence number taken; id 0 means "no id" and is never
 * recorded. */
#include "dedupe.h"

int dedupe_last(const psd_seqmap *m, uint64_t wid, uint64_t *seq) {
  return wid != 0 && u64map_get(m, wid, seq);
}

int dedupe_reserve(psd_seqmap *m) { return u64map_reserve(m); }

int dedupe_record(psd_seqmap *m, uint64_t wid, uint64_t seq) {
  return wid == 0 ? 0 : u64map_put(m, wid, seq);
}

void dedupe_free(psd_seqmap *m) { u64map_free(m); }
