/* session.c -- sessions issued by the shard; see session.h. */
#include "session.h"

#include <stdlib.h>
#include <string.h>

#include "group.h"
#include "job.h"
#include "log.h"

size_t session_cap(const psd_server *srv) {
  uint32_t mw = srv->cfg.max_workers ? srv->cfg.max_workers : PSD_DEFAULT_MAX_WORKERS;
  size_t cap = (size_t)mw * 4;
  return cap < 4096 ? 4096 : cap;
}

psd_session *session_find(psd_server *srv, uint64_t id) {
  return id ? u64map_get_ptr(&srv->sessions, id) : NULL;
}

/* In use: a connection is in it, or it holds a live rank. */
static int session_busy(const psd_session *s) {
  const psd_group *g = &s->job->group;
  return s->nconns > 0 ||
         (s->rank >= 0 && group_live(g, (uint32_t)s->rank) && g->w[s->rank].worker_id == s->id);
}

void session_forget(psd_server *srv, psd_session *s) {
  psd_job *j = s->job;
  u64map_del(&srv->sessions, s->id, NULL);
  u64map_del(&j->seqs, s->id, NULL);
  psa_wipe(s->secret, sizeof(s->secret));
  free(s);
  job_unref(srv, j);
}

int session_room(psd_server *srv, uint64_t now) {
  (void)now;
  if (srv->sessions.len >= session_cap(srv)) {
    psd_session *old = NULL;
    size_t it = 0;
    uint64_t k, v;
    while (u64map_next(&srv->sessions, &it, &k, &v)) {
      psd_session *s = (psd_session *)(uintptr_t)v;
      if (!session_busy(s) && (old == NULL || s->last_seen_ms < old->last_seen_ms))
        old = s;
    }
    if (old == NULL) return -1;
    log_info("forgetting idle session %016llx (rank %d) to make room for a new one",
             (unsigned long long)old->id, old->rank);
    session_forget(srv, old);
  }
  return u64map_reserve(&srv->sessions);
}

uint64_t session_new_id(psd_server *srv) {
  uint64_t id;
  do psa_random(&id, sizeof(id));
  while (id == 0 || session_find(srv, id) != NULL);
  return id;
}

static psd_session *insert(psd_server *srv, psd_job *job, uint64_t id, int rank, int role,
                           uint64_t now) {
  psd_session *s = calloc(1, sizeof(*s));
  if (s == NULL) return NULL;
  s->job = job;
  s->id = id;
  s->rank = rank;
  s->role = role;
  s->last_seen_ms = now;
  if (u64map_put_ptr(&srv->sessions, id, s) != 0) {
    free(s);
    return NULL;
  }
  job_ref(job);
  return s;
}

psd_session *session_open(psd_server *srv, psd_job *job, uint64_t id, int rank, int role,
                          uint64_t now) {
  psd_session *s = insert(srv, job, id, rank, role, now);
  if (s != NULL) psa_random(s->secret, sizeof(s->secret));
  return s;
}

int session_restore(psd_server *srv, psd_job *job, uint64_t id,
                    const uint8_t secret[PSA_SECRET], int rank, int role, uint64_t now) {
  if (id == 0 || session_find(srv, id) != NULL) return -1;
  psd_session *s = insert(srv, job, id, rank, role, now);
  if (s == NULL) return -1;
  memcpy(s->secret, secret, PSA_SECRET);
  return 0;
}

void session_attach(psd_server *srv, uint64_t id, uint64_t now) {
  psd_session *s = session_find(srv, id);
  if (s == NULL) return;
  s->nconns++;
  s->last_seen_ms = now;
}

void session_detach(psd_server *srv, uint64_t id, uint64_t now) {
  psd_session *s = session_find(srv, id);
  if (s == NULL || s->nconns == 0) return;
  s->nconns--;
  s->last_seen_ms = now;
}

int session_end(psd_server *srv, uint64_t id) {
  psd_session *s = session_find(srv, id);
  if (s == NULL) return 0;
  psd_job *j = s->job;
  job_ref(j); /* the caller goes on with it (rounds_recheck) */
  int changed = s->rank >= 0 ? group_leave(srv, j, s->rank, s->id) : 0;
  session_forget(srv, s);
  j->refs--; /* not job_unref: the caller's connection still refers to it */
  return changed;
}

void sessions_free(psd_server *srv) {
  size_t it = 0;
  uint64_t k, v;
  while (u64map_next(&srv->sessions, &it, &k, &v)) {
    psd_session *s = (psd_session *)(uintptr_t)v;
    s->job->refs--; /* the jobs are freed whole by the caller */
    psa_wipe(s->secret, sizeof(s->secret));
    free(s);
  }
  u64map_free(&srv->sessions);
}
