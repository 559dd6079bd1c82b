/*
 * psd.h -- the psd worker library: the public API trainers link against.
 *
 * If a function is not declared here, it is not part of the API.
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

#ifdef __cplusplus
extern "C" {
#endif

#define PS_VERSION_STRING "0.1.0"
#define PS_PROTOCOL_VERSION 1

/* Every public function is marked PS_EXTERN: libpsd is compiled with
 * -fvisibility=hidden, so only these symbols are exported. */
#if defined(__GNUC__) && __GNUC__ >= 4
#define PS_EXTERN __attribute__((visibility("default")))
#else
#define PS_EXTERN
#endif

/* Error codes. 1..15 mirror the protocol's Code enum (proto/psd.proto). */
enum {
  PS_OK = 0,
  PS_EBADFRAME = -1,    /* malformed frame or message */
  PS_ETOOLARGE = -2,    /* frame larger than the maximum */
  PS_EVERSION = -3,     /* protocol version mismatch */
  PS_EUNKNOWN = -4,     /* unknown request */
  PS_ENOTFOUND = -5,    /* unknown tensor */
  PS_EEXISTS = -6,      /* tensor exists with a different spec */
  PS_ESHAPE = -7,       /* wrong element count / shape */
  PS_ESPEC = -8,        /* invalid init or optimizer spec */
  PS_EGRADIENT = -9,    /* gradient holds NaN or Inf */
  PS_EWRONGSHARD = -10, /* server list mismatch */
  PS_ENOTREADY = -11,
  PS_EBUSY = -12,       /* push already pending for this block in this round */
  PS_ESHUTDOWN = -13,   /* server shutting down */
  PS_EIO = -14,         /* server could not write a checkpoint */
  PS_EINTERNAL = -15,
  PS_EINVAL = -100,     /* bad argument to a library call */
  PS_ENOMEM = -101,
  PS_ECONNECT = -102,   /* could not connect to a server */
  PS_ETIMEDOUT = -103,  /* deadline passed */
  PS_ECLOSED = -104,    /* handle closed while the call was in flight */
  PS_ETICKET = -105     /* unknown or already-collected ticket */
};

/* The name of an error code, e.g. "PS_ETIMEDOUT: operation timed out". */
PS_EXTERN const char *ps_strerror(int err);

/* ---- Tensor specs --------------------------------------------------------
 * Every formula, default and valid range is defined in docs/math.md (in the
 * source tree; installed as share/doc/psd/math.md). The wire names
 * (he_normal, adam, cosine, ...) are given next to each enumerator, the
 * valid range next to each field: every double must be finite, also where
 * the kind does not use it, and ps_create refuses an out-of-range spec with
 * PS_ESPEC and a sentence naming the field, the value and the range. */

typedef enum {
  PS_INIT_ZEROS = 0,                /* zeros */
  PS_INIT_CONSTANT,                 /* constant (value) */
  PS_INIT_UNIFORM,                  /* uniform (limit) */
  PS_INIT_NORMAL,                   /* normal (sigma) */
  PS_INIT_TRUNCATED_NORMAL,         /* truncated_normal (sigma) */
  PS_INIT_HE_NORMAL,                /* he_normal: var 2/d_in */
  PS_INIT_HE_UNIFORM,               /* he_uniform */
  PS_INIT_HE_TRUNCATED_NORMAL,      /* he_truncated_normal */
  PS_INIT_LECUN_NORMAL,             /* lecun_normal: var 1/d_in */
  PS_INIT_LECUN_UNIFORM,            /* lecun_uniform */
  PS_INIT_LECUN_TRUNCATED_NORMAL,   /* lecun_truncated_normal */
  PS_INIT_FAN_OUT_NORMAL,           /* fan_out_normal: var 1/d_out */
  PS_INIT_FAN_OUT_UNIFORM,          /* fan_out_uniform */
  PS_INIT_FAN_OUT_TRUNCATED_NORMAL, /* fan_out_truncated_normal */
  PS_INIT_GLOROT_NORMAL,            /* glorot_normal: var 2/(d_in+d_out) */
  PS_INIT_GLOROT_UNIFORM,           /* glorot_uniform */
  PS_INIT_GLOROT_TRUNCATED_NORMAL,  /* glorot_truncated_normal */
  PS_INIT_COUNT_
} ps_init_kind;

typedef struct {
  ps_init_kind kind;
  uint64_t seed;            /* element i depends on (seed, name, i, spec) only */
  double sigma;             /* normal, truncated_normal (std after the cut): [1e-30, 1e3] */
  double limit;             /* uniform: [-limit, limit]; limit in [1e-30, 1e3] */
  double value;             /* constant: [-1e3, 1e3] */
  uint64_t fan_in;          /* 0: from the shape, as PyTorch computes it */
  uint64_t fan_out;         /* 0: from the shape */
  int fan_in_includes_bias; /* add 1 to d_in (the notes' sqrt(6/(1+d_in+d_out))) */
  int allow_symmetric;      /* permit zeros/constant on rank >= 2 */
} ps_init_spec;

typedef enum {
  PS_OPT_SGD = 0,   /* sgd */
  PS_OPT_MOMENTUM,  /* momentum (running average; heavy_ball, nesterov flags) */
  PS_OPT_RMSPROP,   /* rmsprop */
  PS_OPT_ADAM,      /* adam */
  PS_OPT_ADAMW,     /* adamw */
  PS_OPT_ADAGRAD,   /* adagrad */
  PS_OPT_COUNT_
} ps_optim_kind;

typedef enum {
  PS_SCHED_CONSTANT = 0, /* constant */
  PS_SCHED_STEP,         /* step: lr * gamma^floor(t/step_size) */
  PS_SCHED_EXPONENTIAL,  /* exponential: lr * gamma^t */
  PS_SCHED_INVERSE_TIME, /* inverse_time: lr / (1 + decay t) */
  PS_SCHED_INVERSE_SQRT, /* inverse_sqrt: lr / sqrt(t) */
  PS_SCHED_COSINE,       /* cosine: lr_min + (lr-lr_min)(1+cos(pi t/total_steps))/2 */
  PS_SCHED_COUNT_
} ps_schedule_kind;

typedef struct {
  ps_optim_kind kind;
  double lr;             /* (0, 1e3]; no schedule ever exceeds it */
  double beta1;          /* momentum beta (or mu with heavy_ball), rmsprop beta, adam beta1: [0, 1) */
  double beta2;          /* adam/adamw beta2: [0, 1) */
  double eps;            /* rmsprop, adam, adamw, adagrad: [1e-30, 1e3] */
  double weight_decay;   /* L2 (g += wd*w); decoupled in adamw: [0, 1e3], lr*wd <= 1 */
  int heavy_ball;        /* momentum: v = mu v + g */
  int nesterov;          /* momentum with heavy_ball: w -= lr (g + mu v) */
  int eps_inside_sqrt;   /* rmsprop, adam, adamw: sqrt(u + eps) */
  double clip_norm;      /* 0: off; else scale each pushed gradient to norm <= clip_norm (>= 0) */
  ps_schedule_kind schedule;
  double gamma;          /* step, exponential: (0, 1] */
  uint64_t step_size;    /* step: >= 1 */
  double decay;          /* inverse_time: >= 0 */
  uint64_t total_steps;  /* cosine: >= 1 */
  double lr_min;         /* cosine: [0, lr] */
  uint64_t warmup;       /* linear warmup over the first `warmup` updates (cosine: < total_steps) */
} ps_optim_spec;

typedef struct {
  ps_init_spec init;
  ps_optim_spec optim;
  uint64_t block_size;   /* elements per block; 0: server default (262144) */
} ps_tensor_spec;

/* Fill *spec with the defaults of the given kinds (docs/math.md: seed 0, lr
 * and betas of the optimizer, constant schedule, default block size). */
PS_EXTERN void ps_tensor_spec_init(ps_tensor_spec *spec, ps_init_kind init,
                                   ps_optim_kind optim);

/* Name <-> kind, using the wire names above. The *_from_name functions
 * return 0 and set *out, or PS_EINVAL for an unknown name. */
PS_EXTERN const char *ps_init_name(ps_init_kind k);
PS_EXTERN const char *ps_optim_name(ps_optim_kind k);
PS_EXTERN const char *ps_schedule_name(ps_schedule_kind k);
PS_EXTERN int ps_init_from_name(const char *name, ps_init_kind *out);
PS_EXTERN int ps_optim_from_name(const char *name, ps_optim_kind *out);
PS_EXTERN int ps_schedule_from_name(const char *name, ps_schedule_kind *out);

/* ---- Connecting ------------------------------------------------------- */

typedef struct ps_client ps_client;

typedef struct {
  const char *identity;     /* shown in server logs; default "pid N on HOST" */
  int rank;                 /* worker rank, -1 for a tool (default: PS_WORKER_RANK or -1) */
  int num_workers;          /* job size (default: PS_NUM_WORKERS or 1) */
  int staleness;            /* -1 async, 0 sync, s>0 SSP (default: PS_STALENESS or 0) */
  int connect_timeout_ms;   /* first connection to every shard (default 10000) */
  int op_timeout_ms;        /* deadline of every call (default: PS_TIMEOUT_MS or 60000) */
  int heartbeat_ms;         /* worker heartbeat period (default 1000) */
  int lane_mb;              /* shared-memory lane asked of each shard on this host, MiB:
                               blocks of 64 KiB and more then skip the kernel's socket
                               copies; 0 = TCP only (default: PS_LANE_MB or 64) */
} ps_options;

/* Fill *opts with defaults, reading PS_WORKER_RANK, PS_NUM_WORKERS,
 * PS_STALENESS and PS_TIMEOUT_MS from the environment when set. */
PS_EXTERN void ps_options_init(ps_options *opts);

/* Connect to every shard of `servers`, a comma-separated list of HOST:PORT
 * ("h1:7070,h2:7070"); NULL takes PS_SERVERS from the environment, then
 * 127.0.0.1:7070. Every client of a job must pass the same list, in the same
 * order: blocks are placed by hashing over it. opts may be NULL (defaults).
 * On success *out is a new handle the caller must ps_close(). On failure
 * *out is NULL and the error is returned; a message is available from
 * ps_last_error(). It waits until every shard has answered the hello:
 * PS_ECONNECT if one did not within connect_timeout_ms (the message names
 * it), or the shard's own code (e.g. PS_EWRONGSHARD for a job mismatch) if
 * it refused the hello. A shard that refuses a hello is never retried; any
 * other lost connection is re-established (backoff 50 ms to 2 s, for the
 * handle's life) and the requests it had not answered are resent, pushes
 * applying exactly once. */
PS_EXTERN int ps_connect(ps_client **out, const char *servers, const ps_options *opts);

/* Wait for every outstanding call, close all connections, stop the
 * background thread and free the handle. Calls still in flight complete
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

/* Describe one tensor. Free with ps_tensor_info_free(). */
PS_EXTERN int ps_lookup(ps_client *c, const char *name, ps_tensor_info *info);
PS_EXTERN void ps_tensor_info_free(ps_tensor_info *info);

/* List every tensor (from the first shard). *infos is an array of *n
 * entries the caller frees with ps_list_free(). */
PS_EXTERN int ps_list(ps_client *c, ps_tensor_info **infos, size_t *n);
PS_EXTERN void ps_list_free(ps_tensor_info *infos, size_t n);

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

/* Wait for ticket t; return its status. *version (may be NULL) receives the
 * version as for ps_pull. */
PS_EXTERN int ps_wait(ps_client *c, ps_ticket t, uint64_t *version);

/* Wait for every ticket issued by any thread on c and collect them all
 * (a thread then waiting for one of them gets PS_ETICKET); return 0 or the
 * error of the oldest failed ticket. */
PS_EXTERN int ps_wait_all(ps_client *c);

#ifdef __cplusplus
}
#endif
#endif /* PSD_H */
