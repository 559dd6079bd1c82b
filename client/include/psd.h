/*
 * psd.h -- the psd worker library: the public API trainers link against.
 *
 * If a function is not declared here or in psd_types.h (which this file
 * includes), it is not part of the API.
 *
 * Conventions (copied from libuv):
 *  - Every call returns 0 on success or a negative PS_E* code; ps_strerror()
 *    names the code and ps_errmsg() returns the sentence describing the last
 *    failure of the calling thread on that handle.
 *  - When a function which takes a callback returns an error, the callback
 *    will never be called.
 *  - Whoever creates a handle destroys it: ps_connect() / ps_close().
 *
 * Threads: a ps_client may be shared by any number of threads. Each handle
 * runs one background thread with its own event loop that talks to every
 * shard; calls from trainer threads are handed to it and pipelined.
 *
 * Buffers: a float buffer given to an asynchronous call belongs to psd until
 * the call's ticket completes (ps_wait) or its callback runs; the caller must
 * neither free nor modify it before then.
 */
#ifndef PSD_H
#define PSD_H

#include <stddef.h>
#include <stdint.h>

/* The version, the PS_E* error codes and the tensor specs (shared with the
 * daemon, installed beside this file). */
#include "psd_types.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The name of an error code, e.g. "PS_ETIMEDOUT: operation timed out". */
PS_EXTERN const char *ps_strerror(int err);

/* ---- Connecting ------------------------------------------------------- */

typedef struct ps_client ps_client;

typedef struct {
  const char *identity;     /* shown in server logs; default "pid N on HOST" */
  int rank;                 /* worker rank, -1 for a tool (default: PS_WORKER_RANK, else
                               RANK as torchrun sets it, else -1) */
  int num_workers;          /* job size (default: PS_NUM_WORKERS, else WORLD_SIZE, else 1) */
  int staleness;            /* -1 async, 0 sync, s>0 SSP (default: PS_STALENESS or 0) */
  int connect_timeout_ms;   /* first connection to every shard (default 10000) */
  int op_timeout_ms;        /* deadline of every call (default: PS_TIMEOUT_MS or 60000) */
  int heartbeat_ms;         /* worker heartbeat period (default 1000) */
  int lane_mb;              /* shared-memory lane asked of each shard on this host, MiB:
                               blocks of 64 KiB and more then skip the kernel's socket
                               copies; 0 = TCP only (default: PS_LANE_MB or 64) */
  const char *token_file;   /* file holding this client's role token (default:
                               PS_TOKEN_FILE or none). The token never crosses the
                               wire: the hello carries an HMAC of it over the shard's
                               challenge. A shard without tokens (protected mode,
                               loopback only) needs none. A file every user may
                               read is refused. */
  const char *role;         /* "admin", "worker" or "reader": the token's role
                               (default: PS_ROLE, else "worker" when rank >= 0,
                               "admin" otherwise) */
  const char *job;          /* the job this client acts in: its tensors, workers and
                               rounds are its own on every shard (default: PS_JOB,
                               else "default"); 1-64 of [A-Za-z0-9._-] */
} ps_options;

/* Fill *opts with defaults, reading PS_WORKER_RANK, PS_NUM_WORKERS,
 * PS_STALENESS, PS_TIMEOUT_MS, PS_LANE_MB, PS_TOKEN_FILE, PS_ROLE and PS_JOB
 * from the environment when set. A launcher's RANK and WORLD_SIZE
 * (torchrun's) stand in for PS_WORKER_RANK and PS_NUM_WORKERS when those
 * are not set; when both are set, the PS_ ones win. A value that is not an
 * integer is ignored with a warning (the default stays). */
PS_EXTERN void ps_options_init(ps_options *opts);

/* Connect to every shard of `servers`, a comma-separated list of HOST:PORT
 * ("h1:7070,h2:7070"); NULL takes PS_SERVERS from the environment, then
 * 127.0.0.1:7070. Every client of a job must pass the same list, in the same
 * order: blocks are placed by hashing over it. opts may be NULL (defaults).
 * On success *out is a new handle the caller must ps_close(). On failure
 * *out is NULL and the error is returned; a message is available from
 * ps_last_error(). It waits until every shard has answered the hello:
 * PS_ECONNECT if one did not within connect_timeout_ms (the message names
 * it); for a tool (rank -1), PS_ECONNECT at once when a shard's address
 * refuses the connection (nothing listens there), while a worker keeps
 * trying until connect_timeout_ms, as its shards may be starting; or the
 * shard's own code (e.g. PS_EWRONGSHARD for a job mismatch,
 * PS_EAUTH for a token it did not accept, PS_EPERM for a rank another live
 * worker holds) if it refused the hello. Each shard issues this handle a
 * session (exactly-once pushes, the rank), resumed after every reconnect;
 * ps_close ends it, freeing the rank at once. A shard that refuses a hello is never retried; any
 * other lost connection is re-established (backoff 50 ms to 2 s, for the
 * handle's life) and the requests it had not answered are resent, pushes
 * applying exactly once. */
PS_EXTERN int ps_connect(ps_client **out, const char *servers, const ps_options *opts);

/* Wait for every outstanding call, end this handle's session on every
 * shard (a worker's rank is then free at once, the shard logging that the
 * worker left; the goodbye goes behind what is still being written, and
 * ps_close waits for each connected shard's answer, at most 2 s or
 * op_timeout_ms when shorter), close all connections, stop
 * the background thread and free the handle. Calls still in flight complete
 * with PS_ECLOSED (their callbacks run); tickets not yet collected are
 * freed. No thread may start a call on c once ps_close has begun. Returns
 * 0, or PS_EINVAL if called from a callback (it would wait for itself). */
PS_EXTERN int ps_close(ps_client *c);

/* The sentence describing the last failed call made by this thread on c
 * (never NULL; "" if none). Valid until the thread's next call on c.
 * Sentences are kept per thread: a failed asynchronous call's sentence
 * belongs to the thread whose ps_wait / ps_wait_all collected it. Server
 * errors read "HOST:PORT: what the server said". */
PS_EXTERN const char *ps_errmsg(ps_client *c);

/* The sentence of the last ps_connect() failure of this thread. */
PS_EXTERN const char *ps_last_error(void);

/* ---- Blocking calls ----------------------------------------------------
 * Each is a thin wrapper over the asynchronous call of the same name plus
 * ps_wait(). */

/* Create tensor `name` of the given shape on every shard (idempotent: the
 * same name with an identical spec succeeds and changes nothing; a
 * different spec fails with PS_EEXISTS and a message saying what differs).
 * spec may be NULL: he_normal + adam defaults. */
PS_EXTERN int ps_create(ps_client *c, const char *name, const uint64_t *shape, int ndim,
                        const ps_tensor_spec *spec);

/* Read the whole tensor into out[0..count), count = number of elements.
 * *version (may be NULL) receives the smallest block version: the number of
 * updates applied. In SSP mode it waits until the job's slowest worker is
 * within `staleness` clocks of this worker's clock. */
PS_EXTERN int ps_pull(ps_client *c, const char *name, float *out, uint64_t count,
                      uint64_t *version);

/* Push a gradient of `count` elements. In sync mode it returns when the
 * round including this gradient has been applied on every block. */
PS_EXTERN int ps_push(ps_client *c, const char *name, const float *grad, uint64_t count);

/* Push a gradient and receive the updated values in the same round trip.
 * grad and out may be the same buffer. */
PS_EXTERN int ps_push_pull(ps_client *c, const char *name, const float *grad, float *out,
                           uint64_t count, uint64_t *version);

/* Read elements [offset, offset+count) only (touches only the blocks that
 * hold them). */
PS_EXTERN int ps_pull_range(ps_client *c, const char *name, uint64_t offset, float *out,
                            uint64_t count, uint64_t *version);

typedef struct {
  char *name;
  int ndim;
  uint64_t *shape;
  uint64_t numel;
  uint64_t version;
  ps_tensor_spec spec;
} ps_tensor_info;

/* ---- Jobs ---------------------------------------------------------------
 *
 * A shard serves several jobs at once, each with its own tensors, workers,
 * rounds and exactly-once state (ps_options.job, PS_JOB). A job's run (its
 * incarnation) ends when its last live worker calls ps_close(), or with
 * ps_job_end(); the next worker to connect starts a new run with fresh
 * clocks and rounds, keeping the tensors. */
typedef struct {
  char *name;
  uint64_t incarnation;     /* the current run, 1, 2, ... */
  int ended;                /* that run ended on every shard */
  uint32_t num_workers;     /* 0 before a worker said hello in the run */
  int staleness;            /* -1 async, 0 sync, s > 0 SSP */
  uint32_t live;            /* workers live (the fewest any shard sees) */
  uint64_t clock_min, clock_max; /* clocks of the live workers */
  uint64_t tensors;
  uint64_t blocks, bytes;   /* blocks materialized and their bytes, all shards */
  uint64_t rounds_pending;  /* blocks with a sync round in progress, all shards */
  int shards;               /* shards that know the job */
} ps_job_info;

/* Every job the shards serve, merged over the shards, into a new array
 * the caller frees with ps_jobs_free(). */
PS_EXTERN int ps_jobs(ps_client *c, ps_job_info **jobs, size_t *n);
PS_EXTERN void ps_jobs_free(ps_job_info *jobs, size_t n);
/* End the job's current run on every shard: held pushes, pulls and
 * barriers of its workers fail with PS_EJOBENDED (admin). */
PS_EXTERN int ps_job_end(ps_client *c, const char *job);
/* Delete the job's state on every shard: its tensors, sessions and
 * exactly-once records (admin). */
PS_EXTERN int ps_job_drop(ps_client *c, const char *job);

/* Describe one tensor. Every shard is asked: version is what ps_pull of
 * the whole tensor would report, the smallest version over all its blocks
 * (0 while some block was never touched). Free with ps_tensor_info_free();
 * on failure there is nothing to free. */
PS_EXTERN int ps_lookup(ps_client *c, const char *name, ps_tensor_info *info);
PS_EXTERN void ps_tensor_info_free(ps_tensor_info *info);

/* List every tensor, from every shard, sorted by name; versions as for
 * ps_lookup. *infos is an array of *n entries the caller frees with
 * ps_list_free(). */
PS_EXTERN int ps_list(ps_client *c, ps_tensor_info **infos, size_t *n);
PS_EXTERN void ps_list_free(ps_tensor_info *infos, size_t n);

/* ---- Tensor lifecycle and runtime control ------------------------------ */

/* Delete tensor `name` on every shard: its blocks and optimizer state are
 * freed. A push, set or SSP pull held on it (a sync round waiting for
 * other workers) fails with a sentence saying it was deleted. PS_ENOTFOUND
 * when no shard knew it. Admin only (PS_EPERM otherwise). */
PS_EXTERN int ps_delete(ps_client *c, const char *name);

/* Reinitialize tensor `name` from its spec: the values of a fresh create,
 * optimizer state zeroed, versions (step counts: schedules, bias
 * corrections) back to 0. The spec keeps the tunings of ps_set_optim. A
 * sync round in progress on it completes on top of the reset values (a
 * set held for it is written after it). Admin only. */
PS_EXTERN int ps_reset(ps_client *c, const char *name);

/* ps_set flags. */
#define PS_SET_ZERO_STATE 1 /* also zero the optimizer state of the elements written */

/* Write values[0..count) into elements [offset, offset + count) of tensor
 * `name` (pretrained weights, or rank 0 broadcasting its initial values
 * before the others pull). The optimizer state of those elements is kept,
 * or zeroed with PS_SET_ZERO_STATE; versions do not change (a set is not
 * an update; ps_reset restarts the step counts). In sync mode each block is
 * written between two of its rounds: a block with a round in progress is
 * written right after that round's update, and the call returns then.
 * PS_EBUSY when that round waits for this worker's own push (the call
 * would wait for itself): set before pushing, e.g. before a barrier.
 * Resent after a reconnect, a block is written once. Workers of the job
 * and admins; not readers. */
PS_EXTERN int ps_set(ps_client *c, const char *name, uint64_t offset, const float *values,
                     uint64_t count, int flags);

/* Change the optimizer settings of tensor `name`, or of every tensor of the
 * job when name is NULL: the members of *o named by `fields` (PS_OPTIM_F_*
 * bits of psd_types.h) are copied into each tensor's spec, effective from its next
 * update (schedules are evaluated at the tensor's current step count). The
 * result is validated as a create's spec would be, on every tensor before
 * any changes: PS_ESPEC and a sentence naming the tensor and the field, and
 * nothing changed. The optimizer kind is fixed: PS_OPTIM_F_KIND with
 * another kind is refused (PS_ESPEC). Each shard logs the change; lookup
 * shows it; checkpoints keep it. ps_create still compares a new create
 * with the spec as created. Workers of the job and admins. */
PS_EXTERN int ps_set_optim(ps_client *c, const char *name, const ps_optim_spec *o,
                           uint64_t fields);

/* Statistics of shard `shard` (index in the server list) as a JSON object
 * string the caller free()s. */
PS_EXTERN int ps_stats(ps_client *c, int shard, char **json);

/* Check that every shard answers. */
PS_EXTERN int ps_ping(ps_client *c);

/* Ask every shard to write a checkpoint now (needs psd --data-dir). */
PS_EXTERN int ps_checkpoint(ps_client *c);

/* End this worker's iteration: advance its clock and tell every shard
 * (SSP waits are measured in these clocks). Waits for every shard's
 * acknowledgement and returns the new clock, or a negative code (the clock
 * has advanced anyway: later pulls and pushes carry it). */
PS_EXTERN int64_t ps_clock(ps_client *c);

/* Block until every live worker of the job has called ps_barrier() the
 * same number of times. */
PS_EXTERN int ps_barrier(ps_client *c);

/* Number of shards in the server list. */
PS_EXTERN int ps_num_shards(const ps_client *c);

/* ---- Sparse tables -------------------------------------------------------
 *
 * A table holds rows of `dim` floats keyed by uint64 ids (embeddings: a
 * row per token, item or hashed feature), with no declared size: a row
 * exists once it is pulled or pushed, and starts as the table's init rule
 * says for (seed, table name, key) alone, the same on any number of shards.
 * A name in a job is a tensor or a table, never both; a tensor call on a
 * table (or the reverse) fails with PS_EBADREQ and a sentence.
 *
 * Rows are spread over the shards by hashing (name, key) into buckets
 * placed by rendezvous hashing (adding a shard moves about 1/(N+1) of
 * them). A call groups its keys by shard, sends each shard one frame of
 * its distinct keys (more only past the shards' --max-frame), and puts the
 * replies back in the order of `keys`. Pushes go to every shard, with no
 * rows where a shard has none: each shard then counts every push, so the
 * learning-rate schedule's t (the table's update count) and sync rounds
 * agree everywhere.
 *
 * Optimizers update only the rows pushed ("lazy"): a row's optimizer state
 * changes when it is pushed, Adam's bias correction counts the row's own
 * updates, schedules and warmup count the table's. In a sync job a round
 * averages each row over the workers that pushed it, in rank order. */

/* Create table `name` with rows of dim floats on every shard (idempotent as
 * ps_create: the same spec succeeds and changes nothing, another fails with
 * PS_EEXISTS and a sentence). spec may be NULL: normal (sigma 0.01) + adam. */
PS_EXTERN int ps_create_table(ps_client *c, const char *name, uint32_t dim,
                              const ps_table_spec *spec);
/* Read the rows of keys[0..n) into out[0..n*dim): row i of out is the row
 * of keys[i], repeated keys included. Missing rows are created. In SSP mode
 * it waits as ps_pull does. */
PS_EXTERN int ps_pull_rows(ps_client *c, const char *name, const uint64_t *keys, size_t n,
                           float *out);
/* Push gradients grads[0..n*dim), row i for keys[i]; the gradients of a
 * repeated key are summed (in the order given) before they are sent. A
 * NaN or Inf anywhere fails with PS_EGRADIENT before anything is sent. In
 * sync mode it returns when the round has been applied on every shard. n
 * may be 0 (a worker with nothing to push still takes part in sync
 * rounds). */
PS_EXTERN int ps_push_rows(ps_client *c, const char *name, const uint64_t *keys, size_t n,
                           const float *grads);
/* Push, then read the updated rows in the same round trip (out as for
 * ps_pull_rows; out may be grads). */
PS_EXTERN int ps_push_pull_rows(ps_client *c, const char *name, const uint64_t *keys,
                                size_t n, const float *grads, float *out);
/* Delete table `name` on every shard: its rows, optimizer state and index
 * are freed, the name is free again (a create may make it with another dim
 * or spec). A sync push of its rows waiting for its round, and an SSP pull
 * of its rows waiting for slower workers, fail with PS_ENOTFOUND and a
 * sentence saying it was deleted; later calls on it fail with
 * PS_ENOTFOUND. PS_ENOTFOUND when no shard knew it, PS_EBADREQ when `name`
 * is a tensor (ps_delete deletes tensors). Admin only (PS_EPERM
 * otherwise). */
PS_EXTERN int ps_delete_table(ps_client *c, const char *name);
/* Empty table `name` on every shard: every row goes (a row touched again
 * starts from the init rule, as in a fresh table), its memory is given
 * back, the table's step (the schedule's t), evictions and LFU counts go
 * back to 0; the spec stays. A sync round in progress completes on the
 * emptied table. Admin only. */
PS_EXTERN int ps_reset_table(ps_client *c, const char *name);
/* ---- The library's own counters ----------------------------------------
 * What this handle did since ps_connect, for a trainer's logs or its own
 * metrics. Counters only grow; take two snapshots for rates. */

typedef enum {
  PS_CALL_PULL = 0,    /* ps_pull, ps_pull_async */
  PS_CALL_PUSH,        /* ps_push, ps_push_async */
  PS_CALL_PUSH_PULL,   /* ps_push_pull, ps_push_pull_async */
  PS_CALL_PULL_RANGE,
  PS_CALL_CREATE,
  PS_CALL_LOOKUP,
  PS_CALL_LIST,
  PS_CALL_STATS,
  PS_CALL_PING,
  PS_CALL_CHECKPOINT,
  PS_CALL_CLOCK,
  PS_CALL_BARRIER,
  PS_CALL_DELETE,
  PS_CALL_RESET,
  PS_CALL_SET,
  PS_CALL_SET_OPTIM,
  PS_CALL_PULL_ROWS,   /* ps_pull_rows, ps_pull_rows_async */
  PS_CALL_PUSH_ROWS,
  PS_CALL_PUSH_PULL_ROWS,
  PS_CALL_CREATE_TABLE,
  PS_CALL_KINDS
} ps_call_kind;

typedef struct {
  uint64_t calls;          /* calls of this kind completed (a ticket collected or not) */
  uint64_t errors;         /* of those, the ones that failed */
  uint64_t latency_sum_ns; /* submission to completion, summed over the calls */
  uint64_t latency_max_ns; /* the slowest call */
} ps_call_metrics;

typedef struct {
  ps_call_metrics calls[PS_CALL_KINDS];
  /* Requests to shards, one per block a call touches: a push-pull of a
   * tensor of 3 blocks is 3 push-pull requests. Each is counted once,
   * when first sent; resends are counted apart. The shards' own
   * psd_requests_total counts the same requests. */
  uint64_t pull_requests, push_requests, push_pull_requests;
  uint64_t requests_sent;  /* every request frame written, resends included */
  uint64_t bytes_sent;     /* bytes written to the shards' sockets */
  uint64_t bytes_received; /* bytes read from them */
  uint64_t lane_bytes;     /* tensor bytes moved through same-host lanes, both ways */
  uint64_t reconnects;     /* connections re-established after a loss */
  uint64_t resends;        /* requests written again after a reconnect */
} ps_client_metrics;

/* Copy c's counters into *out (any thread, at any time). 0, or PS_EINVAL
 * when c or out is NULL. */
PS_EXTERN int ps_metrics(ps_client *c, ps_client_metrics *out);

/* "pull", "push", "push_pull", ... for a ps_call_kind; "?" otherwise. */
PS_EXTERN const char *ps_call_name(int kind);

/* ---- Asynchronous calls ------------------------------------------------
 * Each returns 0 and a ticket, or an error (and no ticket). Complete a
 * ticket with ps_wait(); every ticket must be waited for exactly once
 * (ps_wait_all() collects all of them). Buffers belong to psd until then. */

typedef uint64_t ps_ticket;

/* Called on the library's background thread when the call completes;
 * `status` is 0 or a negative code. It must not block; it may issue new
 * async calls (ps_wait on an unfinished ticket from a callback returns
 * PS_EINVAL rather than deadlock). A call that fails with PS_ETIMEDOUT may
 * or may not have been applied by the server. When a callback is given, the ticket still has to be
 * waited for (ps_wait returns at once after the callback ran). */
typedef void (*ps_done_cb)(ps_client *c, ps_ticket t, int status,
                           uint64_t version, void *arg);

PS_EXTERN int ps_pull_async(ps_client *c, const char *name, float *out, uint64_t count,
                            ps_done_cb cb, void *arg, ps_ticket *t);
PS_EXTERN int ps_push_async(ps_client *c, const char *name, const float *grad,
                            uint64_t count, ps_done_cb cb, void *arg, ps_ticket *t);
PS_EXTERN int ps_push_pull_async(ps_client *c, const char *name, const float *grad,
                                 float *out, uint64_t count, ps_done_cb cb, void *arg,
                                 ps_ticket *t);

/* Read elements [offset, offset+count) asynchronously (see ps_pull_range). */
PS_EXTERN int ps_pull_range_async(ps_client *c, const char *name, uint64_t offset,
                                  float *out, uint64_t count, ps_done_cb cb,
                                  void *arg, ps_ticket *t);

/* The other calls, asynchronously: the results (info, infos and n, json,
 * clock) are written when the call completes and belong to psd until its
 * ticket is collected; they are as for the blocking call of the same name.
 * ps_clock_async advances the clock at once and stores the new value in
 * *clock (may be NULL) before it returns. A binding waits for these with
 * ps_wait_timeout so that a user can interrupt a barrier. */
PS_EXTERN int ps_create_async(ps_client *c, const char *name, const uint64_t *shape,
                              int ndim, const ps_tensor_spec *spec, ps_done_cb cb,
                              void *arg, ps_ticket *t);
PS_EXTERN int ps_lookup_async(ps_client *c, const char *name, ps_tensor_info *info,
                              ps_done_cb cb, void *arg, ps_ticket *t);
PS_EXTERN int ps_list_async(ps_client *c, ps_tensor_info **infos, size_t *n,
                            ps_done_cb cb, void *arg, ps_ticket *t);
PS_EXTERN int ps_stats_async(ps_client *c, int shard, char **json, ps_done_cb cb,
                             void *arg, ps_ticket *t);
PS_EXTERN int ps_ping_async(ps_client *c, ps_done_cb cb, void *arg, ps_ticket *t);
PS_EXTERN int ps_checkpoint_async(ps_client *c, ps_done_cb cb, void *arg, ps_ticket *t);
PS_EXTERN int ps_clock_async(ps_client *c, uint64_t *clock, ps_done_cb cb, void *arg,
                             ps_ticket *t);
PS_EXTERN int ps_barrier_async(ps_client *c, ps_done_cb cb, void *arg, ps_ticket *t);
/* ps_set (a set may wait for a sync round in progress): the values belong
 * to psd until the ticket is collected. */
PS_EXTERN int ps_set_async(ps_client *c, const char *name, uint64_t offset,
                           const float *values, uint64_t count, int flags, ps_done_cb cb,
                           void *arg, ps_ticket *t);

/* The rows calls (see "Sparse tables"). Asynchronous forms: keys, grads and out belong to psd until the ticket
 * completes, as the buffers of the tensor calls do. */
PS_EXTERN int ps_pull_rows_async(ps_client *c, const char *name, const uint64_t *keys,
                                 size_t n, float *out, ps_done_cb cb, void *arg,
                                 ps_ticket *t);
PS_EXTERN int ps_push_rows_async(ps_client *c, const char *name, const uint64_t *keys,
                                 size_t n, const float *grads, ps_done_cb cb, void *arg,
                                 ps_ticket *t);
PS_EXTERN int ps_push_pull_rows_async(ps_client *c, const char *name, const uint64_t *keys,
                                      size_t n, const float *grads, float *out,
                                      ps_done_cb cb, void *arg, ps_ticket *t);

/* Wait for ticket t; return its status. *version (may be NULL) receives the
 * version as for ps_pull. */
PS_EXTERN int ps_wait(ps_client *c, ps_ticket t, uint64_t *version);

/* Wait for ticket t at most timeout_ms milliseconds (0: only look; a
 * negative value: without limit, as ps_wait). If the call completes in
 * time, this is ps_wait: the ticket is collected and its status returned.
 * If not, it returns PS_ETIMEDOUT and the ticket stays as it was, in flight
 * and uncollected: it must still be waited for (ps_wait, ps_wait_timeout or
 * ps_wait_all), and its buffers still belong to psd until then. A binding
 * polls with it to notice signals (Ctrl-C) while a call is blocked. The
 * call's own PS_ETIMEDOUT (its op_timeout_ms passed, the ticket collected)
 * is told apart by waiting again with timeout_ms 0: PS_ETICKET then means
 * the first PS_ETIMEDOUT was the call's own (ps_errmsg names the shard that
 * did not answer; a timeout of this wait reads "ticket N is not done yet").
 * Unlike ps_wait, a callback may use it with timeout_ms 0. */
PS_EXTERN int ps_wait_timeout(ps_client *c, ps_ticket t, int timeout_ms, uint64_t *version);

/* Wait for every ticket issued by any thread on c and collect them all
 * (a thread then waiting for one of them gets PS_ETICKET); return 0 or the
 * error of the oldest failed ticket. */
PS_EXTERN int ps_wait_all(ps_client *c);

#ifdef __cplusplus
}
#endif
#endif /* PSD_H */
