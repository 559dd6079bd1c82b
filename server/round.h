/*
 * round.h -- sync (BSP) rounds: a push in sync mode is a contribution to
 * its block's round; when every worker the round waits for has
 * contributed, the contributions are summed in rank order, divided by
 * their count and applied as one update, and every contributor is
 * answered (through the outbox). The result does not depend on arrival
 * order.
 *
 * A round is the set of pending contributions pushed at the smallest
 * worker clock k. It waits for each expected worker (group.h) that has not
 * contributed at k and whose clock has not passed k (a worker at a later
 * clock has either contributed already or does not push this block).
 */
#ifndef PSD_ROUND_H
#define PSD_ROUND_H

#include "server.h"

/* Add rank c->rank's contribution gscale*g (finite) pushed at worker clock `clock` with sequence number seq to b's round,
 * holding the reply; complete the round if it waits for nobody else.
 * Errors are answered through the outbox. */
void round_add(psd_server *srv, psd_conn *c, uint64_t id, psd_block *b, const float *g,
               float gscale, uint64_t seq, uint64_t clock, int want_values, uint64_t lane_out);
/* A resend (same seq) of rank r's contribution still pending in b's round:
 * answer request id of c when the round completes instead of the lost
 * original. Returns 1 if it was pending (handled), 0 if not. */
int round_resend(psd_server *srv, psd_conn *c, uint64_t id, psd_block *b, uint64_t seq,
                 int want_values, uint64_t lane_out);
/* Complete every round of job (its blocks' and its tables', table_round.h)
 * that no longer waits for anyone (after a worker departed, or advanced its
 * clock). */
void rounds_recheck(psd_server *srv, psd_job *job);
/* The waiter of a pending contribution is going away (its connection
 * closed): the contribution stays, and a resend re-attaches a reply. */
void round_drop_waiter(psd_waiter *w);
/* Allocate b's round arrays for nw workers; 0, -1 (out of memory) or -2 (over
 * the memory ceiling). */
int round_alloc(psd_block *b, uint32_t nw);
/* Free b's round arrays and its pending contributions. */
void round_free(psd_block *b);
/* Drop every round of job (blocks' and tables'), answering its held pushes
 * with an error (code, why): the job's run ended. Sets held for those
 * rounds are written (no round is left to wait for). */
void rounds_fail(psd_server *srv, psd_job *job, int code, const char *why);
/* Does b's round in progress (its smallest clock) wait for a contribution
 * of rank `rank`? (A request of that rank held until the round completes
 * would then wait for itself.) */
int round_waits_for(const psd_block *b, int rank);
/* Drop b's round: every contribution still waited for is answered with an
 * Error (NOT_FOUND) carrying the sentence `why` ("the tensor was deleted"),
 * then the round is freed. */
void round_cancel(psd_server *srv, psd_block *b, const char *why);
/* Number of blocks and tables with a round in progress, over every job. */
uint64_t rounds_pending(psd_server *srv);

#endif
