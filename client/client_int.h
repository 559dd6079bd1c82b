/*
 * client_int.h -- internals of the worker library (libpsd), shared by its
 * three files. Not installed; nothing here is public.
 *
 *   client.c  the public API (psd.h): handles, argument checks, building an
 *             op and handing it to the loop thread, tickets, ps_wait, errors
 *   ops.c     the loop thread's side of every op: cutting it into subs to
 *             the blocks' owners, encoding requests, applying replies,
 *             deadlines, heartbeats, the tensor cache, shutdown
 *   conn.c    one connection per shard: connect, hello, reconnect and
 *             resend, writes, reads (framing, in-place reads), the lane
 *
 * What is shared with the daemon comes from common/: framing and the
 * envelope (wire.h), placement and blocks (placement.h), limits
 * (psd_limits.h), the id maps (u64map.h), lanes (lane.h).
 *
 * The vocabulary:
 *
 *  - An *op* is one call of the public API (a ticket). It lives from the
 *    submitting thread's malloc until the ps_wait() that collects it.
 *  - A *sub* (sub-request) is one Request frame to one shard on behalf of an
 *    op: a pull of tensor T is one sub per block, sent to the block's owner.
 *    A sub lives on the loop thread only.
 *  - A *shard* is one entry of the server list and its connection.
 *
 * Threads: every field marked [loop] is touched by the handle's loop thread
 * only; fields marked [mu] are protected by ps_client.mu; the rest are set
 * before the loop thread starts (or before an op is submitted) and are
 * read-only afterwards.
 *
 * Lifetime rules that make zero-copy writes and reads safe:
 *  - A sub is freed only when it is neither *live* (waiting for its reply,
 *    in its shard's pending list and id map) nor *writing* (a frame of it is
 *    in a pending uv_write, pointing at the user's buffer) nor *reading*
 *    (its reply's values are being read straight into the user's buffer).
 *  - An op completes only when its last sub has been freed, so the user's
 *    buffer is never referenced by a pending write or read after ps_wait
 *    returns.
 */
#ifndef PSD_CLIENT_INT_H
#define PSD_CLIENT_INT_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "auth.h"
#include "lane.h"
#include "placement.h"
#include "psd.h"
#include "psd_limits.h"
#include "u64map.h"
#include "wire.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "psd sends float32 little-endian in place; big-endian hosts need a byte swap"
#endif

/* Largest reply frame the client accepts. The server enforces its own
 * --max-frame on what it receives; a pull reply holds one block, so this
 * only has to exceed the largest block size anyone configures. */
#define PS__MAX_REPLY_FRAME (1ull << 30)
#define PS__READ_HINT 65536 /* psw_rbuf_reserve hint per read */
#define PS__ERRMSG 512
#define PS__TICK_MS 50
#define PS__BACKOFF_MIN_MS 50
#define PS__BACKOFF_MAX_MS 2000
#define PS__ATTEMPT_TIMEOUT_MS 5000
/* Longest ps_close waits for a connected shard to answer its goodbye (a
 * stopped shard must not hold it up; the op timeout when shorter). */
#define PS__GOODBYE_MS 2000
/* A reply with at least this many value bytes still to come is read
 * straight into the caller's buffer (see conn.c, direct reads). */
#define PS__DIRECT_MIN 65536
/* Blocks of at least this many bytes go through the shard's shared-memory
 * lane when there is one (see lane.h); smaller ones are not worth a slot. */
#define PS__LANE_MIN PSL_CHUNK
/* Buffers of rows calls kept for reuse (rows.c). */
#define PS__POOL 8

/* ---- ops and subs ------------------------------------------------------ */

typedef enum {
  PS__OP_CONNECT = 0,
  PS__OP_CREATE,
  PS__OP_LOOKUP,
  PS__OP_PULL,
  PS__OP_PUSH,
  PS__OP_PUSH_PULL,
  PS__OP_PULL_RANGE,
  PS__OP_LIST,
  PS__OP_STATS,
  PS__OP_PING,
  PS__OP_CHECKPOINT,
  PS__OP_CLOCK,
  PS__OP_BARRIER,
  PS__OP_JOBS,
  PS__OP_JOB_END,
  PS__OP_JOB_DROP,
  PS__OP_DELETE,
  PS__OP_RESET,
  PS__OP_SET,
  PS__OP_TUNE,
  PS__OP_CREATE_TABLE,
  PS__OP_PULL_ROWS,
  PS__OP_PUSH_ROWS,
  PS__OP_PUSH_PULL_ROWS,
  PS__OP_DELETE_TABLE,
  PS__OP_RESET_TABLE
} ps__op_kind;

typedef enum {
  PS__SUB_CREATE = 0,
  PS__SUB_LOOKUP,
  PS__SUB_PULL,
  PS__SUB_PUSH,
  PS__SUB_LIST,
  PS__SUB_STATS,
  PS__SUB_PING,
  PS__SUB_CHECKPOINT,
  PS__SUB_CLOCK,
  PS__SUB_BARRIER,
  PS__SUB_JOBS,
  PS__SUB_JOB_END,
  PS__SUB_JOB_DROP,
  PS__SUB_DELETE,
  PS__SUB_RESET,
  PS__SUB_SET,
  PS__SUB_TUNE,
  PS__SUB_CREATE_TABLE,
  PS__SUB_LOOKUP_TABLE,
  PS__SUB_PULL_ROWS,
  PS__SUB_PUSH_ROWS,
  PS__SUB_DELETE_TABLE,
  PS__SUB_RESET_TABLE
} ps__sub_kind;

typedef struct ps__op ps__op;
typedef struct ps__sub ps__sub;
typedef struct ps__shard ps__shard;

/* ---- info.c: tensor descriptions over every shard ------------------------ */

/* A tensor's version as a pull of the whole of it would report it, from
 * the TensorInfo of every shard (info.c says how). */
typedef struct {
  uint64_t blocks;   /* blocks materialized, over the shards that answered */
  uint64_t min;      /* smallest version among them; UINT64_MAX: none yet */
  int uncounted;     /* a shard did not say how many blocks it holds */
} ps__vacc;

void ps__vacc_init(ps__vacc *a);
void ps__vacc_add(ps__vacc *a, const Psd__TensorInfo *ti);
uint64_t ps__vacc_version(const ps__vacc *a, const ps_tensor_info *info);

/* A TensorInfo as a ps_tensor_info (version: the shard's own). 0, or -1
 * with a sentence in err. */
int ps__info_from_pb(const Psd__TensorInfo *ti, ps_tensor_info *info, char *err,
                     size_t errlen);

/* The lists of every shard merged by name, each with its version. */
typedef struct {
  ps_tensor_info *infos;
  ps__vacc *acc;     /* [n], beside infos */
  size_t n, cap;
  u64map index;      /* name hash -> entry */
} ps__infolist;

/* Add one shard's list. 0, or a PS_E* code with a sentence in err. */
int ps__infolist_merge(ps__infolist *l, const Psd__TensorList *tl, char *err, size_t errlen);
/* Hand the merged list out, versions set and sorted by name (the caller
 * frees it with ps_list_free), and free l's own storage. */
void ps__infolist_finish(ps__infolist *l, ps_tensor_info **out, size_t *n);
void ps__infolist_free(ps__infolist *l);

/* ---- tables (rows.c) ------------------------------------------------------
 * What the library knows of a table: from a create or a lookup. Entries
 * are never changed or freed while the handle lives (threads building a
 * call read them without the lock): a table seen again with another
 * description gets a new entry, the old one is retired. */
typedef struct ps__table ps__table;
struct ps__table {
  ps__table *next;        /* same name hash; then the retired list */
  char *name;
  uint64_t hash;
  uint32_t dim;
  int clips;              /* its optimizer clips: pushes carry the norm */
  uint64_t rows_per_frame; /* the most rows one frame carries (the shards' --max-frame) */
  uint16_t owner[PSP_ROW_BUCKETS]; /* bucket -> shard */
};

/* One call's rows, planned: the distinct keys grouped by shard, in frames
 * no larger than the table allows; each frame's values (its keys, then for
 * a push its summed gradients) back to back in buf. Distinct keys are
 * numbered in frame order; pos maps the call's keys to them. */
typedef struct {
  int shard;
  size_t first, n;        /* its distinct keys [first, first + n) */
  size_t off, len;        /* its values: buf[off, off + len) */
} ps__frame;

typedef struct {
  size_t n, nu;           /* keys of the call, distinct keys */
  uint32_t dim;
  uint32_t *pos;          /* [n] */
  int identity;           /* pos[i] == i: replies land in the caller's out as they are */
  uint8_t *buf;
  size_t buf_cap;
  float *vals;            /* [nu * dim]: the replies' rows (the caller's out when identity) */
  size_t vals_cap;
  ps__frame *frames;
  size_t nframes;
  double grad_norm;       /* of the summed gradients (tables that clip) */
  int has_norm;
} ps__plan;

/* Plan a call of n keys on table t over nshards shards: a push carries
 * grads (n x dim), and every shard gets a frame of it (empty where it has
 * no key); out receives the rows of a pull or push-pull. 0, or a PS_E* code with a sentence in err
 * (PS_EGRADIENT: a summed gradient is not finite; PS_ENOMEM). */
int ps__plan_build(ps_client *c, ps__plan *p, const ps__table *t, const uint64_t *keys,
                   size_t n, int push, const float *grads, float *out, char *err,
                   size_t errlen);
/* Put the replies' rows in the order of the call's keys. */
void ps__plan_scatter(const ps__plan *p, float *out);
/* Free a plan (c NULL: its buffers too; else they go back to c's pool). */
void ps__plan_free(ps_client *c, ps__plan *p);

struct ps__sub {
  ps__op *op;
  ps__shard *sh;
  ps__sub_kind kind;
  uint64_t id;    /* request id, unique per handle */
  uint64_t seq;   /* pushes, sets: per-shard sequence number, kept across resends */
  uint64_t block; /* pull/push: block index; rows: the plan's frame */
  int live;       /* awaiting its reply: in sh->head list and sh->inflight */
  int writing;    /* frames in pending uv_writes */
  int reading;    /* its reply's values are being read into the user's buffer */
  uint64_t lane_off;   /* its lane slot (0: none), valid while lane_gen is its shard's */
  uint64_t lane_len;
  uint64_t lane_gen;
  int lane_sent;       /* a frame naming the slot went out: the shard may write it */
  int lane_answered;   /* the reply came: the shard is done with the slot */
  ps__sub *prev, *next;   /* sh's pending list, in creation order */
  ps__sub *oprev, *onext; /* op's subs */
};

struct ps__op {
  /* Set by the submitting thread before submission. */
  ps_client *c;
  ps__op_kind kind;
  ps_ticket ticket;
  char *name;
  float *out;
  const float *in;
  uint64_t count;
  uint64_t offset;
  double grad_norm;
  int has_norm;            /* grad_norm computed (the tensor may clip) */
  uint64_t clock; /* worker clock (Clock: the new clock; Barrier: gen) */
  ps_done_cb cb;
  void *arg;
  uint64_t *shape; /* create */
  int ndim;
  ps_tensor_spec spec;
  int shard;               /* stats */
  ps_tensor_info *info;    /* lookup result */
  ps_tensor_info **infos;  /* list result */
  size_t *ninfos;
  ps__vacc vacc;           /* [loop] lookup: the version over every shard */
  ps__infolist list;       /* [loop] list: every shard's, merged */
  char **json;             /* stats result */
  ps_job_info **jobs;      /* jobs result, merged over the shards */
  size_t *njobs;
  int flags;               /* set: PS_SET_* */
  uint64_t fields;         /* tune: PS_OPTIM_F_* of spec.optim to change */
  /* tables */
  uint32_t dim;            /* create_table */
  ps_table_spec tspec;     /* create_table */
  const uint64_t *keys;    /* rows: the call's keys */
  size_t nkeys;
  ps__plan *plan;          /* rows: planned (by the calling thread when the table was
                              known, else by the loop thread after a lookup) */
  const ps__table *table;  /* rows: the table it was planned for */
  uint64_t max_frame;      /* create_table: the smallest --max-frame of the shards */

  /* [loop] */
  ps__op *qnext;           /* submission queue ([mu] while queued) */
  ps__op *prev, *next;     /* active list */
  ps__sub *subs;           /* subs not yet freed */
  uint64_t deadline;       /* uv_now() ms */
  uint64_t numel, block_size, name_hash; /* tensor ops, once resolved */
  int hold;                /* connect: wait for every shard's hello */
  int starting;            /* subs are being added: do not complete yet */
  int completed;
  int status;
  uint64_t version;
  int notfound;            /* delete: shards that did not know the tensor (or table) */
  char errmsg[PS__ERRMSG];

  uint64_t t_submit;        /* uv_hrtime at submission (ps_metrics) */

  /* [mu] */
  int done;                /* completed and its callback returned */
};

/* ---- shards ------------------------------------------------------------ */

typedef enum {
  PS__SH_IDLE = 0,   /* no socket; the timer brings the next attempt */
  PS__SH_RESOLVING,  /* getaddrinfo in flight */
  PS__SH_CONNECTING, /* uv_tcp_connect in flight; the timer bounds it */
  PS__SH_CHALLENGE,  /* connected, waiting for the shard's challenge; the timer bounds it */
  PS__SH_HELLO,      /* connected, hello sent, requests pipelined behind */
  PS__SH_READY,      /* the hello was answered */
  PS__SH_CLOSING,    /* uv_close in progress */
  PS__SH_FATAL       /* the shard refused our hello, or a tool's first connection:
                        never reconnect */
} ps__shard_state;

struct ps__shard {
  ps_client *c;
  int index;
  const char *addr; /* c->servers.addr[index] */
  char host[256];
  int port;
  ps__shard_state state;

  uv_tcp_t tcp;      /* [loop] initialized per connection */
  int tcp_open;      /* tcp is initialized and not yet closed */
  uv_connect_t creq;
  uv_getaddrinfo_t gai;
  int resolving;
  uv_timer_t timer;  /* reconnect backoff, or the connect attempt's limit */
  unsigned backoff_ms;
  int was_ready;     /* answered a hello once: later connects are reconnects */
  int lost;          /* the connection just closed had been established */
  uint64_t last_warn_ms;

  psw_rbuf rbuf;
  struct {           /* a reply being read straight into the user's buffer */
    ps__sub *sub;    /* NULL when none */
    Psd__Response *r; /* the reply's envelope, values excluded */
    uint8_t *dst;
    size_t left;
    size_t len;      /* all value bytes */
  } direct;
  u64map inflight;  /* id -> live sub */
  psl_lane lane;     /* [loop] shared-memory lane of this connection, if any */
  uint64_t lane_gen; /* [loop] bumped whenever the lane goes away */
  u64map lane_orphans; /* [loop] id -> slot of a sub dropped before its reply */
  int lane_warned;
  ps__sub *head, *tail;
  uint64_t seq;      /* last push seq assigned */
  uint64_t hello_id;
  uint8_t nonce[PSA_NONCE]; /* this connection's challenge */
  /* The session this shard issued to this handle (common/auth.h): resumed
   * on every reconnect, so exactly-once and the rank survive it. */
  uint64_t session_id;      /* 0: none yet */
  uint8_t session_secret[PSA_SECRET];
  uint64_t reconnects;
  uint64_t goodbye_id;      /* the goodbye awaiting its answer at ps_close, 0: none */
  int shut;                 /* ps__shard_shutdown ran */

  int fatal_code;
  char fatal_msg[PS__ERRMSG];
  char last_err[256]; /* why the last connection attempt failed */
};

/* ---- the handle -------------------------------------------------------- */

typedef struct ps__tensor ps__tensor;
struct ps__tensor {
  ps__tensor *next; /* same name hash */
  char *name;
  uint64_t hash;
  uint64_t numel;
  uint64_t block_size;
  int ndim;
  uint64_t shape[PSD_MAX_NDIM];
};

struct ps_client {
  psp_servers servers;
  ps__shard *shards;
  ps_options opts;
  char *identity;
  char *job;                 /* the job's name (ps_options.job) */
  int role;          /* PSA_READER..PSA_ADMIN */
  uint8_t token[PSA_TOKEN_MAX];
  size_t token_len;  /* 0: no token (a shard in protected mode needs none) */

  uv_loop_t loop;
  uv_async_t async;
  uv_timer_t tick; /* deadlines */
  uv_timer_t hb;   /* heartbeats (workers only) */
  pthread_t thread;
  int thread_started;

  pthread_mutex_t mu;
  pthread_cond_t cv;
  ps__op *qhead, *qtail; /* [mu] submitted, not yet started */
  u64map tickets;        /* [mu] ticket -> op, until collected */
  u64map noclip;         /* [mu] name hashes of tensors known not to clip,
                            whose pushes need a finiteness test but no norm */
  u64map tables;         /* [mu] name hash -> ps__table chain (rows.c) */
  ps__table *retired;    /* [mu] table entries replaced, freed with the handle */
  /* [mu] Big buffers of finished rows calls, kept for the next ones (a
   * fresh megabyte every call would fault its pages in every time). */
  struct {
    void *p;
    size_t cap;
  } pool[PS__POOL];
  int npool;
  ps_ticket next_ticket; /* [mu] */
  size_t nundone;        /* [mu] tickets not yet done */
  uint64_t clock;        /* [mu] */
  uint64_t barrier_gen;  /* [mu] */
  int closing;           /* [mu] ps_close called: refuse new calls */
  int nwaiters;          /* [mu] threads inside ps_wait / ps_wait_all */

  ps__op *active;        /* [loop] started, not completed */
  ps__op *connect_op;    /* [loop] */
  u64map tensors;        /* [loop] name hash -> ps__tensor chain */
  uint64_t next_id;      /* [loop] */
  int shutting;          /* [loop] shutdown started */
  /* ps_metrics: written by the loop thread, read by any, with relaxed
   * atomics (PS__COUNT). */
  ps_client_metrics m;
};

#define PS__COUNT(c, field, v) __atomic_fetch_add(&(c)->m.field, (uint64_t)(v), __ATOMIC_RELAXED)

/* The table cache (rows.c), under c->mu. */
const ps__table *ps__table_get(ps_client *c, const char *name);
/* Remember a TableInfo of `name`; rows_per_frame from max_frame. NULL with
 * a sentence when it is not usable. */
const ps__table *ps__table_put(ps_client *c, const char *name, const Psd__TableInfo *ti,
                               uint64_t max_frame, char *err, size_t errlen);
void ps__table_forget(ps_client *c, const char *name);
void ps__tables_free(ps_client *c);
void ps__pool_free(ps_client *c);

/* ---- conn.c ------------------------------------------------------------ */

int ps__shard_init(ps_client *c, ps__shard *sh, int index);
void ps__shard_start(ps__shard *sh);
/* Queue a new sub on its shard and write it if connected. Returns 0, or
 * the shard's fatal code (the sub is then not queued). */
int ps__shard_submit(ps__shard *sh, ps__sub *sub);
/* Take a live sub off its shard's pending list and id map. */
void ps__shard_unlink(ps__sub *sub);
/* The lane slot for sub's values (len bytes), allocating one if the shard
 * has a lane: its offset, or 0 to send the values in the frame. */
uint64_t ps__lane_slot(ps__sub *sub, uint64_t len);
/* sub is being freed: give its slot back, or keep it aside until the
 * shard's late reply says the shard is done with it. */
void ps__lane_release(ps__sub *sub);
/* Close the connection (if any); un-answered subs are resent after the
 * reconnect. */
void ps__shard_disconnect(ps__shard *sh, const char *why);
void ps__shard_heartbeat(ps__shard *sh, uint64_t clock);
/* At ps_close: end the shard's session, so that its rank is free at once
 * (the shard logs the worker as having left) instead of after the shard's
 * worker timeout. The goodbye goes behind whatever is queued on the
 * connection; the shard is shut down once it is answered, the connection
 * is lost, or PS__GOODBYE_MS pass. Returns 1 if so, 0 if there is nothing
 * to say goodbye to (not connected, no session): the caller shuts the
 * shard down. */
int ps__shard_goodbye(ps__shard *sh);
/* Close the shard's handles (once; the loop ends after their callbacks). */
void ps__shard_shutdown(ps__shard *sh);
void ps__shard_free(ps__shard *sh);

/* ---- ops.c, called by conn.c -------------------------------------------- */

/* Encode sub's request into f: values pointing at the user's buffer, or
 * copied into a lane slot that the frame names. */
int ps__sub_encode(ps__sub *sub, psw_frame *f);
/* sub (already unlinked) got its reply. values == NULL with values_len > 0:
 * the values were read into place already (ps__sub_direct_dst). */
void ps__sub_reply(ps__sub *sub, const Psd__Response *r, const uint8_t *values,
                   size_t values_len);
/* Where the values_len value bytes of reply r to sub may be read in place,
 * or NULL if they have to go through the receive buffer. */
uint8_t *ps__sub_direct_dst(ps__sub *sub, const Psd__Response *r, size_t values_len);
/* A direct read for sub ended (completed or aborted). */
void ps__sub_read_done(ps__sub *sub);
/* A frame of sub left the write queue (written or cancelled). */
void ps__sub_written(ps__sub *sub);
/* Fail sub's op with code and message (the sub may be live or not). */
void ps__sub_fail(ps__sub *sub, int code, const char *msg);
/* A shard became ready or fatal. */
void ps__shard_event(ps_client *c, ps__shard *sh);
uint64_t ps__next_id(ps_client *c);

/* ---- ops.c, called by client.c ------------------------------------------ */

/* The loop thread: connect every shard, then run until ps_close. */
void *ps__loop_main(void *arg);
/* The async handle's callback: start submitted ops, or shut down. */
void ps__on_async(uv_async_t *a);
/* Free every cached tensor description (after the loop thread ended). */
void ps__cache_free(ps_client *c);

#endif /* PSD_CLIENT_INT_H */
