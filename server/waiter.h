/*
 * waiter.h -- replies held for later (a sync push until its round
 * completes, an SSP pull until the slowest worker catches up, a barrier, a
 * checkpoint request until the save ends). A waiter belongs to its
 * connection's list, so that it dies with the connection.
 */
#ifndef PSD_WAITER_H
#define PSD_WAITER_H

#include "server.h"

/* A waiter for request id of c, in c->waiters; NULL when out of memory. */
psd_waiter *waiter_new(psd_conn *c, uint64_t id, int kind);
/* Unlink w from its connection and from what it waits on, and free it. */
void waiter_free(psd_waiter *w);

#endif
