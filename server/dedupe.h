/*
 * dedupe.h -- the exactly-once table: the last push sequence number taken
 * from each worker id. A push whose number is not above it is a resend and
 * is answered as a duplicate, never applied twice.
 */
#ifndef PSD_DEDUPE_H
#define PSD_DEDUPE_H

#include "server.h"

/* 1 and *seq when worker id wid has pushed before, else 0. */
int dedupe_last(const psd_seqmap *m, uint64_t wid, uint64_t *seq);
/* Make room for one more worker id: 0, or -1 when out of memory (then the
 * caller refuses the push: a push applied without its record could be
 * applied again when resent). Called before a push is applied. */
int dedupe_reserve(psd_seqmap *m);
/* Record that push seq of worker wid was taken; after dedupe_reserve it
 * cannot fail. 0, or -1 (out of memory, table unchanged). wid 0 means "no
 * id": nothing is recorded. */
int dedupe_record(psd_seqmap *m, uint64_t wid, uint64_t seq);
void dedupe_free(psd_seqmap *m);

#endif
