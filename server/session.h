/*
 * session.h -- sessions issued by the shard. A worker's (or an admin's)
 * first accepted hello opens one: a random id, which keys its exactly-once
 * pushes (dedupe.h) and holds its rank (group.h), and a random secret that
 * only the client learns (in the HelloReply). A reconnecting client resumes
 * its session by proving the secret (common/auth.h); no client can choose
 * or take another's id.
 *
 * Sessions are kept in checkpoints, so a worker resumes after a shard
 * restart. The table is bounded (session_cap): when it is full, the idle
 * session (no connection, no live rank) heard from least recently is
 * forgotten with its exactly-once record. A goodbye ends a session at once.
 * A session belongs to the job its first hello named (a reference on it,
 * job.h): it resumes in that job only.
 */
#ifndef PSD_SESSION_H
#define PSD_SESSION_H

#include "server.h"

/* Most sessions kept: 4 per worker of the largest job, at least 4096. */
size_t session_cap(const psd_server *srv);
psd_session *session_find(psd_server *srv, uint64_t id);
/* Make room for one more session, forgetting an idle one if the table is
 * full. 0, or -1 (every session is in use, or out of memory). */
int session_room(psd_server *srv, uint64_t now);
/* A new random session id, not in use (not inserted yet). */
uint64_t session_new_id(psd_server *srv);
/* Insert a session with this id (from session_new_id, after session_room)
 * and a fresh secret. NULL when out of memory. */
psd_session *session_open(psd_server *srv, psd_job *job, uint64_t id, int rank, int role,
                          uint64_t now);
/* Insert a restored session (checkpoint.c). 0 or -1 (out of memory, a
 * duplicate or zero id). */
int session_restore(psd_server *srv, psd_job *job, uint64_t id,
                    const uint8_t secret[PSA_SECRET], int rank, int role, uint64_t now);
/* A connection joins / leaves session id (a missing one is ignored). */
void session_attach(psd_server *srv, uint64_t id, uint64_t now);
void session_detach(psd_server *srv, uint64_t id, uint64_t now);
/* End session id (goodbye): its rank departs at once, its exactly-once
 * record is dropped. Returns GROUP_CHANGED (group.h) if the live set
 * shrank; the caller rechecks sync rounds. */
int session_end(psd_server *srv, uint64_t id);
/* Forget session s and its exactly-once record, without a goodbye (room
 * for a new one, or its job dropped). */
void session_forget(psd_server *srv, psd_session *s);
void sessions_free(psd_server *srv);

#endif
