/*
 * waiter.h -- replies held for later (a sync push until its round
 * completes, an SSP pull until the slowest worker catches up, a barrier, a
 * checkpoint request until the save ends). A waiter belongs to its
 * connection's list, so that it dies with the connection.
 *
 * A waiter reserves the memory of its reply when it is made (memory.h,
 * category "held"). SSP pulls, barriers and checkpoint requests also count
 * against their connection's output cap (--out-cap): a client cannot make
 * psd hold more of them than it could have queued unread, so what a release
 * sends it is bounded by its own requests. A sync push's reply does not
 * count against the cap (pausing a worker on its own pending contributions
 * could deadlock a round that waits for another worker paused the same
 * way); it is bounded all the same: one pending contribution per block and
 * rank (BUSY otherwise), each charged to the memory ceiling.
 */
#ifndef PSD_WAITER_H
#define PSD_WAITER_H

#include "server.h"

/* Bytes a held reply counts, at least, whatever its values: bounds how
 * many replies one connection can have held. */
#define PSD_WAITER_MIN 1024

/* A waiter for request id of c, in c->waiters, whose reply carries
 * values_bytes of values; NULL when out of memory or when the reservation
 * would cross the memory ceiling (then waiter_refused() is 1). */
psd_waiter *waiter_new(psd_conn *c, uint64_t id, int kind, uint64_t values_bytes);
/* Unlink w from its connection and from what it waits on, and free it. */
void waiter_free(psd_waiter *w);
/* Did the last waiter_new fail for the memory ceiling (not out of memory)? */
int waiter_refused(void);
/* Answer request id of c after a failed waiter_new: RESOURCE_EXHAUSTED or
 * INTERNAL. */
void waiter_fail(psd_server *srv, psd_conn *c, uint64_t id);

#endif
