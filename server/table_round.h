/*
 * table_round.h -- sync (BSP) rounds of a sparse table. In a sync job a
 * worker's PushRows is a contribution to its table's round on that shard
 * (the library sends every shard one per push, with no rows where it has
 * none). When every worker the round waits for has contributed (the rule
 * of round.h: a round is the contributions pushed at the smallest worker
 * clock), each row is averaged over the ranks that pushed it: summed in
 * rank order, divided by how many did (float32, as docs/math.md says for
 * blocks), and the table takes one update with the rows of the union.
 * Every contributor is then answered with its own rows. The result does
 * not depend on arrival order.
 */
#ifndef PSD_TABLE_ROUND_H
#define PSD_TABLE_ROUND_H

#include "server.h"

/* One rank's pending contribution. */
typedef struct {
  uint8_t present;
  uint64_t seq, clock, n;
  uint64_t *keys;            /* n distinct keys */
  float *g;                  /* n x dim gradients, clipping scale applied */
  psd_waiter *w;             /* the held reply, or NULL (its connection closed, or restored) */
} psd_tcontrib;

struct psd_tround {
  uint32_t nw;               /* ranks of the job's run it was made for */
  psd_tcontrib *c;           /* [nw] */
  uint32_t ncontrib;
};

/* Add rank c->rank's contribution (keys[0..n) distinct and owned here,
 * g finite) pushed at `clock` with sequence number seq to t's round,
 * holding the reply; complete the round if it waits for nobody else.
 * Errors are answered through the outbox. */
void trow_add(psd_server *srv, psd_conn *c, uint64_t id, psd_table *t, const uint64_t *keys,
              const float *g, size_t n, float gscale, uint64_t seq, uint64_t clock, int want);
/* A resend of rank c->rank's contribution still pending: it takes the
 * round's reply. 1 if it was pending, 0 if not. */
int trow_resend(psd_server *srv, psd_conn *c, uint64_t id, psd_table *t, uint64_t seq,
                int want);
/* Complete every round of job's tables that waits for nobody any more. */
void trounds_recheck(psd_server *srv, psd_job *job);
/* Answer every held push of job's table rounds with an error and drop
 * the rounds (the job's run ended). */
void trounds_fail(psd_server *srv, psd_job *job, int code, const char *why);
/* Answer every held push of t's round with an error and drop the round
 * (the table is being deleted). */
void table_round_fail(psd_server *srv, psd_table *t, int code, const char *why);
/* Tables of job with a round in progress. */
uint64_t trounds_pending(psd_job *job);
/* w (a held table push) is going away with its connection. */
void trow_drop_waiter(psd_waiter *w);
/* Free t's round (its held replies are dropped unanswered). */
void table_round_free(psd_table *t);
/* Checkpoints: put back a contribution (keys and g are copied). 0, -1 (out
 * of memory), -2 (rank out of the job, or twice). */
int trow_restore(psd_table *t, uint32_t nw, uint32_t rank, uint64_t seq, uint64_t clock,
                 const uint64_t *keys, const float *g, uint64_t n);

#endif
