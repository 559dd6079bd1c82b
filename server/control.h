/*
 * control.h -- a live tensor's lifecycle and settings: delete, reset, set
 * and tune. Like store.h's requests, each is checked whole before anything
 * changes, changes state through tensor, round, group and set, and answers
 * through the outbox.
 *
 * What waits on a tensor is never left hanging: a delete answers the sync
 * pushes, held sets and SSP pulls waiting on its blocks with a sentence; a
 * reset lets them complete on the reset values (a round in progress is
 * applied on top of them, a held set written after it).
 */
#ifndef PSD_CONTROL_H
#define PSD_CONTROL_H

#include "server.h"

void control_delete(psd_server *srv, psd_conn *c, uint64_t id, const Psd__Delete *req);
void control_reset(psd_server *srv, psd_conn *c, uint64_t id, const Psd__Reset *req);
/* values/len: the values as they arrived in the frame (may be unaligned). */
void control_set(psd_server *srv, psd_conn *c, uint64_t id, const Psd__Set *req,
                 const uint8_t *values, size_t len);
void control_tune(psd_server *srv, psd_conn *c, uint64_t id, const Psd__Tune *req);

#endif
