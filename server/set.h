/*
 * set.h -- values written into a block (ps_set): pretrained weights, or
 * rank 0's initial values broadcast to the others. A set is not an update:
 * the block's version does not change, and its optimizer state is kept
 * unless the set zeroes it.
 *
 * In sync mode a set lands between two rounds of its block, never inside
 * one: while the block has a round in progress the set is held (its values
 * copied, its reply held) and written right after that round's update
 * (round.c calls set_release), before any later round can complete. A held
 * set belongs to the block, as a pending contribution does: it outlives its
 * connection, and a resend with the same (session, seq) gets the reply.
 *
 * Like the rest of the state code, nothing here writes to a socket: the
 * replies go to the outbox.
 */
#ifndef PSD_SET_H
#define PSD_SET_H

#include "server.h"

/* Write vals[0..n) (aligned, finite) into elements [off, off + n) of b,
 * zeroing their optimizer state when zero_state. Replies decided earlier
 * keep the values they were decided with. 0, or -1 when out of memory (b
 * unchanged). */
int set_write(psd_server *srv, psd_block *b, uint64_t off, const float *vals, uint64_t n,
              int zero_state);
/* Hold request id of c, a set of vals[0..n) into [off, off + n) of b, until
 * b's round in progress completes. seq (0: none) is recorded for
 * exactly-once now, as a contribution's is. Refusals are answered here. */
void set_hold(psd_server *srv, psd_conn *c, uint64_t id, psd_block *b, uint64_t off,
              const float *vals, uint64_t n, int zero_state, uint64_t seq);
/* A resend (same session, same seq) of a set still held on b: request id
 * of c gets its reply instead of the lost original. 1 if it was held. */
int set_resend(psd_server *srv, psd_conn *c, uint64_t id, psd_block *b, uint64_t seq);
/* b has no round in progress at its smallest clock any more (one completed,
 * or the rounds were dropped): write every held set, in arrival order, and
 * answer them. */
void set_release(psd_server *srv, psd_block *b);
/* Drop every set held on b, answering each with an Error: the sentence
 * `why` (the tensor was deleted or reset). Nothing is written. */
void set_drop(psd_server *srv, psd_block *b, const char *why);
/* The waiter of a held set is going away (its connection closed): the set
 * stays, without a reply. */
void set_drop_waiter(psd_waiter *w);

#endif
