/* job.c -- the jobs a shard serves; see job.h. */
#include "job.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dedupe.h"
#include "group.h"
#include "log.h"
#include "memory.h"
#include "round.h"
#include "session.h"
#include "table.h"
#include "tensor.h"

int job_name_check(const char *name, char *err, size_t errlen) {
  size_t n = strlen(name);
  if (n == 0 || n > PSD_JOB_NAME_MAX) {
    snprintf(err, errlen, "a job name has 1 to %d characters (this one has %zu)",
             PSD_JOB_NAME_MAX, n);
    return -1;
  }
  for (size_t i = 0; i < n; i++) {
    char ch = name[i];
    if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
          ch == '.' || ch == '_' || ch == '-')) {
      snprintf(err, errlen,
               "job name '%.64s' holds '%c': use letters, digits, '.', '_' and '-' only",
               name, ch >= 0x20 && ch < 0x7f ? ch : '?');
      return -1;
    }
  }
  return 0;
}

psd_job *job_find(psd_server *srv, const char *name) {
  for (psd_link *l = srv->jobs.next; l != &srv->jobs; l = l->next) {
    psd_job *j = psd_link_entry(l, psd_job, link);
    if (strcmp(j->name, name) == 0) return j;
  }
  return NULL;
}

static uint64_t job_bytes(const psd_job *j) { return sizeof(*j) + strlen(j->name) + 1; }

psd_job *job_alloc(const char *name) {
  psd_job *j = calloc(1, sizeof(*j));
  if (j == NULL) return NULL;
  j->name = strdup(name);
  tensor_table_init(j);
  tables_init(j);
  if (j->name == NULL || j->table == NULL) {
    if (j->table) tensor_table_free(NULL, j);
    free(j->name);
    free(j);
    return NULL;
  }
  psd_link_init(&j->link);
  group_init(&j->group);
  j->incarnation = 1;
  mem_charge(PSD_MEM_META, job_bytes(j));
  return j;
}

void job_adopt(psd_server *srv, psd_job *j) {
  psd_link_insert_tail(&srv->jobs, &j->link);
  srv->njobs++;
  srv->ntensors += j->ntensors;
  srv->ntables += j->ntables;
}

psd_job *job_get(psd_server *srv, const char *name, int *code, char *err, size_t errlen) {
  psd_job *j = job_find(srv, name);
  if (j != NULL) return j;
  *code = PSD__CODE__BAD_REQUEST;
  if (job_name_check(name, err, errlen) != 0) return NULL;
  *code = PSD__CODE__RESOURCE_EXHAUSTED;
  uint32_t max = srv->cfg.max_jobs ? srv->cfg.max_jobs : PSD_DEFAULT_MAX_JOBS;
  if (srv->njobs >= max) {
    snprintf(err, errlen,
             "this shard serves %u jobs, its limit (--max-jobs %u); end and drop one "
             "(psctl job drop NAME) to make room for job '%s'",
             srv->njobs, max, name);
    return NULL;
  }
  if (!mem_fits(sizeof(psd_job) + 64 * sizeof(psd_tensor *) + strlen(name) + 1) ||
      (j = job_alloc(name)) == NULL) {
    snprintf(err, errlen, "no memory left for job '%s' (--max-memory)", name);
    return NULL;
  }
  job_adopt(srv, j);
  return j;
}

/* Nothing to keep: no tensor, no job configured, no exactly-once record. */
static int job_empty(const psd_job *j) {
  return j->ntensors == 0 && j->ntables == 0 && !j->group.configured && j->seqs.len == 0;
}

static void job_free(psd_server *srv, psd_job *j) {
  tensor_table_free(srv, j);
  tables_free(srv, j);
  group_free(&j->group);
  dedupe_free(&j->seqs);
  mem_release(PSD_MEM_META, job_bytes(j));
  free(j->name);
  free(j);
}

void job_ref(psd_job *j) { j->refs++; }

void job_unref(psd_server *srv, psd_job *j) {
  if (j == NULL || j->refs == 0) return;
  if (--j->refs > 0) return;
  if (j->dropped) {
    job_free(srv, j);
  } else if (job_empty(j)) {
    psd_link_remove(&j->link);
    srv->njobs--;
    job_free(srv, j);
  }
}

static int any_live(const psd_group *g) {
  for (uint32_t r = 0; r < g->num_workers; r++)
    if (g->w[r].live) return 1;
  return 0;
}

/* Answer everything the job holds with JOB_ENDED, drop its rounds. */
static void fail_held(psd_server *srv, psd_job *j, const char *why) {
  rounds_fail(srv, j, PSD__CODE__JOB_ENDED, why);
  group_fail_held(srv, &j->group, PSD__CODE__JOB_ENDED, why);
}

int job_maybe_restart(psd_server *srv, psd_job *j, int resume) {
  psd_group *g = &j->group;
  int restart = j->ended || (g->configured && !any_live(g) && !resume);
  if (!restart) return 0;
  char why[160];
  snprintf(why, sizeof(why), "job '%s' run %llu ended; its run %llu started", j->name,
           (unsigned long long)j->incarnation, (unsigned long long)j->incarnation + 1);
  fail_held(srv, j, why);
  group_free(g);
  group_init(g);
  j->incarnation++;
  j->ended = 0;
  j->started_ms = psd_now_ms();
  log_info("job '%s': run %llu begins (tensors kept: %zu)", j->name,
           (unsigned long long)j->incarnation, j->ntensors);
  return 1;
}

void job_end(psd_server *srv, psd_job *j, const char *why) {
  if (j->ended) return;
  char msg[256];
  snprintf(msg, sizeof(msg), "job '%s' run %llu ended: %s", j->name,
           (unsigned long long)j->incarnation, why);
  fail_held(srv, j, msg);
  psd_group *g = &j->group;
  for (uint32_t r = 0; r < g->num_workers; r++) g->w[r].live = 0;
  j->ended = 1;
  log_info("%s", msg);
}

void job_drop(psd_server *srv, psd_job *j) {
  job_end(srv, j, "dropped");
  /* Its sessions go (each holds a reference, released here). */
  job_ref(j); /* the sessions' references must not free it half-way */
  size_t it = 0, n = 0;
  uint64_t k, v;
  uint64_t *ids = malloc((srv->sessions.len + 1) * sizeof(*ids));
  while (ids != NULL && u64map_next(&srv->sessions, &it, &k, &v))
    if (((psd_session *)(uintptr_t)v)->job == j) ids[n++] = k;
  for (size_t i = 0; i < n; i++) session_forget(srv, session_find(srv, ids[i]));
  free(ids);
  tensor_table_free(srv, j);
  tables_free(srv, j);
  group_free(&j->group);
  group_init(&j->group);
  dedupe_free(&j->seqs);
  psd_link_remove(&j->link);
  srv->njobs--;
  j->dropped = 1;
  log_info("job '%s' dropped: its tensors, tables, sessions and records are gone", j->name);
  job_unref(srv, j);
}

void jobs_free(psd_server *srv, psd_link *jobs) {
  while (!psd_link_empty(jobs)) {
    psd_job *j = psd_link_entry(jobs->next, psd_job, link);
    psd_link_remove(&j->link);
    job_free(srv, j);
  }
}

int job_member(const psd_conn *c) {
  const psd_job *j = c->job;
  if (j == NULL || j->dropped) return 0;
  if (c->rank < 0) return 1;
  return !j->ended && c->incarnation == j->incarnation;
}

/* ---- what a job looks like from outside ------------------------------------- */

static void job_info(psd_server *srv, psd_job *j, Psd__JobInfo *ji) {
  (void)srv;
  const psd_group *g = &j->group;
  ji->name = j->name;
  ji->has_incarnation = 1, ji->incarnation = j->incarnation;
  ji->has_ended = 1, ji->ended = j->ended;
  ji->has_configured = 1, ji->configured = g->configured;
  if (g->configured) {
    ji->has_num_workers = 1, ji->num_workers = g->num_workers;
    ji->has_staleness = 1, ji->staleness = g->staleness;
  }
  uint32_t live = 0, joined = 0;
  uint64_t cmin = UINT64_MAX, cmax = 0;
  for (uint32_t r = 0; r < g->num_workers; r++) {
    joined += g->w[r].joined != 0;
    if (!g->w[r].live) continue;
    live++;
    if (g->w[r].clock < cmin) cmin = g->w[r].clock;
    if (g->w[r].clock > cmax) cmax = g->w[r].clock;
  }
  ji->has_live = 1, ji->live = live;
  ji->has_joined = 1, ji->joined = joined;
  if (live > 0) {
    ji->has_clock_min = 1, ji->clock_min = cmin;
    ji->has_clock_max = 1, ji->clock_max = cmax;
  }
  uint64_t blocks = 0, bytes = 0;
  for (size_t i = 0; j->table && i < j->table_cap; i++)
    for (psd_tensor *t = j->table[i]; t; t = t->next) {
      blocks += t->blocks_here;
      bytes += t->bytes_here;
    }
  ji->has_tensors = 1, ji->tensors = j->ntensors;
  ji->has_blocks_here = 1, ji->blocks_here = blocks;
  ji->has_bytes_here = 1, ji->bytes_here = bytes;
  uint64_t pending = 0;
  for (psd_link *l = j->rounds.next; l != &j->rounds; l = l->next) pending++;
  ji->has_rounds_pending = 1, ji->rounds_pending = pending;
  ji->has_connections = 1, ji->connections = j->refs;
}

int jobs_reply(psd_server *srv, Psd__Response *r, Psd__JobList *jl) {
  size_t n = srv->njobs, k = 0;
  /* One allocation: the pointers, then the messages they point at. */
  Psd__JobInfo **ptrs = calloc(1, (n + 1) * (sizeof(Psd__JobInfo *) + sizeof(Psd__JobInfo)));
  if (ptrs == NULL) return -1;
  Psd__JobInfo *infos = (Psd__JobInfo *)(void *)(ptrs + n + 1);
  for (psd_link *l = srv->jobs.next; l != &srv->jobs && k < n; l = l->next) {
    psd_job *j = psd_link_entry(l, psd_job, link);
    if (job_empty(j)) continue; /* only a connection's (psctl's own): nothing to show */
    psd__job_info__init(&infos[k]);
    job_info(srv, j, &infos[k]);
    ptrs[k] = &infos[k];
    k++;
  }
  psd__job_list__init(jl);
  jl->n_jobs = k;
  jl->jobs = ptrs;
  r->body_case = PSD__RESPONSE__BODY_JOB_LIST;
  r->job_list = jl;
  return 0;
}

void jobs_reply_free(Psd__JobList *jl) { free(jl->jobs); }

void jobs_json(psd_server *srv, char *buf, size_t len) {
  size_t n = (size_t)snprintf(buf, len, "[");
  int first = 1;
  for (psd_link *l = srv->jobs.next; l != &srv->jobs && n + PSD_JOB_NAME_MAX + 200 < len;
       l = l->next) {
    psd_job *j = psd_link_entry(l, psd_job, link);
    if (job_empty(j)) continue;
    Psd__JobInfo ji = PSD__JOB_INFO__INIT;
    job_info(srv, j, &ji);
    /* Job names are [A-Za-z0-9._-]: nothing to escape. */
    n += (size_t)snprintf(buf + n, len - n,
                          "%s{\"name\":\"%s\",\"incarnation\":%llu,\"ended\":%s,"
                          "\"num_workers\":%u,\"staleness\":%d,\"live\":%u,\"tensors\":%llu,"
                          "\"blocks_here\":%llu,\"rounds_pending\":%llu}",
                          first ? "" : ",", j->name, (unsigned long long)j->incarnation,
                          j->ended ? "true" : "false", ji.num_workers,
                          ji.has_staleness ? ji.staleness : -1, ji.live,
                          (unsigned long long)ji.tensors, (unsigned long long)ji.blocks_here,
                          (unsigned long long)ji.rounds_pending);
    first = 0;
  }
  if (n + 2 <= len) snprintf(buf + n, len - n, "]");
}
