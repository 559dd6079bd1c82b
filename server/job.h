/*
 * job.h -- the jobs a shard serves (psd_job in server.h). Every
 * connection names a job in its hello (`default` when it names none) and
 * acts on that job's tensors, workers and rounds only: several jobs share a
 * shard and nothing else.
 *
 * A job exists while something refers to it (a connection or a session)
 * or it holds state (tensors, a configured group, exactly-once records);
 * `--max-jobs` bounds how many exist at once.
 *
 * Incarnations: a job's run from its first worker's hello until its last
 * live worker says goodbye, or until `psctl job end`. The next worker
 * hello starts a new incarnation: clocks, rounds, barriers and the group's
 * size and mode start anew; tensors are kept unless deleted. A worker hello
 * also starts a new one when no worker of the job is live any more (they
 * all departed without goodbye) and it is not the resume of one of the
 * job's sessions: a job restarted whole is not mixed with its dead run.
 * Connections of an ended incarnation are refused what only a member of
 * the running one may do (JOB_ENDED): they say hello again.
 */
#ifndef PSD_JOB_H
#define PSD_JOB_H

#include "server.h"

#define PSD_JOB_DEFAULT "default"
#define PSD_JOB_NAME_MAX 64

/* Is name a valid job name: 1-64 of [A-Za-z0-9._-]? 0, or -1 with a
 * sentence in err. */
int job_name_check(const char *name, char *err, size_t errlen);
psd_job *job_find(psd_server *srv, const char *name);
/* The job called name, made when it does not exist; NULL with a Code
 * (BAD_REQUEST: not a job name; RESOURCE_EXHAUSTED: --max-jobs are in use,
 * or memory ran out) and a sentence in err. */
psd_job *job_get(psd_server *srv, const char *name, int *code, char *err, size_t errlen);
/* A job that is in no list: a restore's state being built (ckpt_state.c)
 * joins srv->jobs with job_adopt. NULL when out of memory. */
psd_job *job_alloc(const char *name);
void job_adopt(psd_server *srv, psd_job *j);
/* References from connections and sessions. The last one frees a job
 * that was dropped or holds nothing. */
void job_ref(psd_job *j);
void job_unref(psd_server *srv, psd_job *j);

/* A worker hello for job j from a session that is (resume) or is not the
 * resume of one of its sessions: start a new incarnation if the rules
 * above say so. 1 if one started. */
int job_maybe_restart(psd_server *srv, psd_job *j, int resume);
/* End j's incarnation: every rank departs, every held reply of the job
 * (sync pushes, SSP pulls, barriers) is answered JOB_ENDED with `why`, and
 * its rounds are dropped. */
void job_end(psd_server *srv, psd_job *j, const char *why);
/* Delete j's state: end it, free its tensors, sessions and exactly-once
 * records, and take it out of the list (connections still bound to it are
 * refused everything but hello). */
void job_drop(psd_server *srv, psd_job *j);
/* Free every job (exit, or a discarded restore's state with srv NULL). */
void jobs_free(psd_server *srv, psd_link *jobs);
/* Does connection c belong to j's running incarnation? (workers; tools
 * always do while the job is not dropped) */
int job_member(const psd_conn *c);

/* The Jobs request's reply: every job, in r (body job_list, using jl);
 * free with jobs_reply_free after sending. 0, or -1 when out of memory. */
int jobs_reply(psd_server *srv, Psd__Response *r, Psd__JobList *jl);
void jobs_reply_free(Psd__JobList *jl);
/* The jobs as a JSON array, for stats. */
void jobs_json(psd_server *srv, char *buf, size_t len);

#endif
