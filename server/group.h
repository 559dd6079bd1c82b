/*
 * group.h -- the workers of the job as one shard sees them: who is live,
 * their clocks, SSP pull holds and barriers.
 *
 * The job's size and consistency mode come from the first worker's hello.
 * A worker is live while it has been heard from (any request, heartbeats
 * included) within --worker-timeout. A rank that has never joined is waited
 * for during the first worker-timeout after the first worker joined, then
 * the job goes on without it.
 *
 * The group only changes its own state and answers what it holds (SSP
 * pulls, barriers) through the outbox. Functions that can release a sync
 * round return GROUP_CHANGED; the caller then calls rounds_recheck
 * (round.h), so the group never calls up into the rounds.
 */
#ifndef PSD_GROUP_H
#define PSD_GROUP_H

#include "server.h"

enum { GROUP_CHANGED = 1 };

void group_init(psd_group *g);
void group_free(psd_group *g);
/* Adopt or check the job's configuration from a worker hello at time now,
 * from session worker_id (job.c has started a new incarnation first when
 * one is due). A job larger than --max-workers is refused, and so are
 * another size or mode than the running incarnation's, and a rank held by
 * another live session. Returns 0, or -1 with a sentence in err (-2 when
 * the rank is held by another live session). */
int group_hello(psd_server *srv, psd_job *j, int rank, uint32_t num_workers, int staleness,
                uint64_t worker_id, uint64_t now, char *err, size_t errlen);
/* Session worker_id spoke for worker `rank` at time now. GROUP_CHANGED if
 * it (re)joined; -1, changing nothing, if another live session holds the
 * rank (only the holder speaks for a rank; a departed rank is free). */
int group_seen(psd_job *j, int rank, uint64_t worker_id, uint64_t now);
/* Session worker_id leaves (goodbye): if it holds `rank`, the rank departs
 * now, and when it was the last live one the job's run ends (job.h).
 * GROUP_CHANGED if it departed. */
int group_leave(psd_server *srv, psd_job *j, int rank, uint64_t worker_id);
/* Worker `rank` reached clock `clock`. Releases SSP pulls and barriers
 * that no longer wait; GROUP_CHANGED when the clock advanced (a sync round
 * may stop waiting for it). */
int group_clock(psd_job *j, int rank, uint64_t clock);
/* Is rank r one the current sync round must wait for? */
int group_expected(const psd_group *g, uint32_t r);
int group_live(const psd_group *g, uint32_t r);
uint64_t group_clock_of(const psd_group *g, uint32_t r);
/* SSP: must a pull at `clock` from `rank` wait for slower workers? */
int group_pull_blocked(psd_group *g, int rank, uint64_t clock);
/* Hold a pull of block b at `clock` until it is no longer blocked. */
void group_hold_pull(psd_server *srv, psd_job *j, psd_conn *c, uint64_t id, psd_block *b, uint64_t clock,
                     uint64_t lane_out);
/* Hold a pull of table t's rows keys[0..n) (copied) at `clock` until it is
 * no longer blocked; answered then with the rows as they are. */
void group_hold_rows(psd_server *srv, psd_job *j, psd_conn *c, uint64_t id, psd_table *t,
                     const uint64_t *keys, size_t n, uint64_t clock);
/* Answer every SSP pull held on a block of t with an Error (NOT_FOUND)
 * carrying the sentence `why`, and drop it (t is being deleted). */
void group_drop_pulls(psd_server *srv, const psd_tensor *t, const char *why);
/* The same for SSP pulls held on rows of table t (t is being deleted). */
void group_drop_row_pulls(psd_server *srv, const psd_table *t, const char *why);
/* Answer SSP pulls released from their hold, up to max_bytes of values or
 * max_replies replies (server.c calls it once per loop turn). 1 if some
 * remain. */
int group_answer_ready(psd_server *srv, psd_job *j, uint64_t max_bytes, unsigned max_replies);
/* Worker c->rank enters barrier generation gen; answered when every
 * expected worker has. */
void group_barrier(psd_server *srv, psd_job *j, psd_conn *c, uint64_t id, uint64_t gen);
/* Find workers that fell silent by time now; GROUP_CHANGED if the set of
 * expected workers shrank (held pulls and barriers are released here). */
int group_tick(psd_server *srv, psd_job *j, uint64_t now);
/* Answer every held SSP pull and barrier of g with an error (code, why). */
void group_fail_held(psd_server *srv, psd_group *g, int code, const char *why);
void group_json(psd_job *j, uint64_t now, char *buf, size_t len);

#endif
