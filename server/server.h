/*
 * server.h -- the psd daemon's internal types, shared by its files:
 *
 *   main.c        flags, environment, signals, start and stop
 *   server.c      listener, connections, framing, request dispatch
 *   store.c       tensors and blocks: create, pull, push, sync rounds
 *   group.c       workers of the job: liveness, clocks, SSP waits, barriers
 *   checkpoint.c  background saves to --data-dir (fork); ckpt.h and
 *                 ckpt_format.c, ckpt_state.c, ckpt_dir.c: the file format,
 *                 what is saved, restore and pruning
 *
 * A push travels: server.c conn_read_cb -> handle_frame -> store.c
 * store_push -> (async) block_apply -> psm_apply (common/psmath.c), or
 * (sync) round_add -> round_try_complete -> block_apply -> reply_block.
 */
#ifndef PSD_SERVER_H
#define PSD_SERVER_H

#include <stdint.h>
#include <uv.h>

#include "helper.h"
#include "lane.h"
#include "placement.h"
#include "psd.h"
#include "psd.pb-c.h"
#include "wire.h"

#define PSD_MAX_NDIM 16
#define PSD_DEFAULT_BLOCK 262144u /* 1 MiB of float32 */

typedef struct psd_server psd_server;
typedef struct psd_conn psd_conn;
typedef struct psd_waiter psd_waiter;

/* Intrusive doubly linked list (libuv's queue idea, spelled out). */
typedef struct psd_link {
  struct psd_link *prev, *next;
} psd_link;

static inline void link_init(psd_link *l) { l->prev = l->next = l; }
static inline int link_empty(const psd_link *l) { return l->next == l; }
static inline void link_insert_tail(psd_link *head, psd_link *l) {
  l->prev = head->prev;
  l->next = head;
  head->prev->next = l;
  head->prev = l;
}
static inline void link_remove(psd_link *l) {
  l->prev->next = l->next;
  l->next->prev = l->prev;
  l->prev = l->next = l;
}
#define link_entry(ptr, type, member) \
  ((type *)((char *)(ptr) - offsetof(type, member)))

/* ---- configuration (main.c) ---------------------------------------------- */

typedef struct {
  char listen[300];          /* HOST:PORT */
  uint64_t max_frame;        /* bytes */
  uint64_t out_cap;          /* per-connection output cap, bytes */
  double worker_timeout;     /* seconds */
  char data_dir[1024];       /* "" = no checkpoints */
  double checkpoint_every;   /* seconds, 0 = only on demand and at exit */
  int keep_checkpoints;      /* K newest kept */
  uint64_t default_block;    /* elements */
  uint64_t lane_max;         /* largest shared-memory lane granted, bytes; 0 = none */
  int update_threads;        /* 1, or 2: a helper thread takes half of large updates */
} psd_config;

/* ---- connections (server.c) ---------------------------------------------- */

/* A reply that will be sent later (sync push, SSP pull, barrier). It belongs
 * to its connection (conn->waiters) and to one wait list; when the
 * connection closes first, the waiter is unlinked from both and freed. */
struct psd_waiter {
  psd_link conn_link;        /* in conn->waiters */
  psd_link wait_link;        /* in the list of what it waits for */
  psd_conn *conn;
  uint64_t id;               /* request id to answer */
  int kind;                  /* PSD_WAIT_* */
  struct psd_tensor *tensor;
  struct psd_block *block;
  int want_values;
  uint64_t lane_out;         /* lane slot for the values, 0 = in the frame */
  uint64_t clock;            /* SSP pull: the requester's clock */
  uint64_t gen;              /* barrier generation */
  int rank;
};

enum { PSD_WAIT_PUSH = 1, PSD_WAIT_PULL, PSD_WAIT_BARRIER, PSD_WAIT_CHECKPOINT };

struct psd_conn {
  uv_tcp_t tcp;              /* first: the handle's data is the conn */
  psd_server *srv;
  psd_link link;             /* in srv->conns */
  psw_rbuf in;
  char peer[64];
  int peer_local;            /* the peer is on loopback: a lane may be offered */
  psl_lane lane;             /* shared-memory lane, if the hello asked for one */
  int lane_proven;           /* the client showed it mapped the lane (lane.h) */
  /* From the hello. */
  int hello_done;
  int rank;                  /* -1: tool */
  uint64_t worker_id;
  char *list;                /* server list from the hello, normalized */
  uint64_t list_hash;
  int list_index;            /* which entry the client thinks this shard is */
  psd_link waiters;
  int reading;               /* uv_read_start active */
  int paused;                /* stopped reading: output over the cap */
  int closing;
  uint8_t *obuf;             /* small replies gathered for one write */
  size_t olen, ocap;
  int dirty;                 /* in srv->dirty */
  int dead;                  /* a write failed: closed by flush_cb */
  psd_link dirty_link;
};

/* ---- tensors (store.c) --------------------------------------------------- */

typedef struct psd_block {
  uint64_t index;
  uint64_t first;            /* element offset within the tensor */
  uint64_t n;                /* elements */
  float *w;                  /* NULL until first touched (lazy init) */
  float *state;              /* psm_state_per_param(kind) * n floats */
  uint64_t version;          /* updates applied */
  /* Sync (BSP) round in progress: one contribution per rank. */
  float **contrib;           /* [num_workers] or NULL */
  uint64_t *contrib_seq;
  uint64_t *contrib_clock;   /* the worker clock each contribution was pushed at */
  uint8_t *present;
  psd_waiter **contrib_waiter;
  uint32_t ncontrib;
  psd_link round_link;       /* in srv->rounds while ncontrib > 0 */
  struct psd_tensor *tensor;
} psd_block;

typedef struct psd_tensor {
  char *name;
  uint64_t name_hash;
  int ndim;
  uint64_t shape[PSD_MAX_NDIM];
  uint64_t numel;
  uint64_t nblocks;
  ps_tensor_spec spec;       /* resolved: defaults filled, block_size set */
  psd_block **blocks;        /* [nblocks]; NULL where another shard owns it */
  uint64_t blocks_here;
  struct psd_tensor *next;   /* hash chain */
} psd_tensor;

/* ---- the job's workers (group.c) ----------------------------------------- */

typedef struct {
  int joined;                /* has ever said hello or pushed */
  int live;
  uint64_t worker_id;
  uint64_t clock;
  uint64_t last_seen_ms;
  uint64_t barrier_gen;
} psd_worker;

typedef struct {
  int configured;
  uint32_t num_workers;
  int staleness;             /* -1 async, 0 sync, > 0 SSP */
  psd_worker *w;             /* [num_workers] */
  uint64_t first_join_ms;
  int pending_expired;       /* never-joined ranks stopped being waited for */
  psd_link pulls;            /* SSP pulls held */
  psd_link barriers;
  uint64_t departures;
  uint64_t joins;
  uint64_t max_ahead;        /* largest (clock - slowest clock) granted */
} psd_group;

/* Exactly-once table: last applied push sequence number per worker id. */
typedef struct {
  uint64_t *keys, *vals;
  size_t cap, len;
} psd_seqmap;

struct psd_server {
  uv_loop_t *loop;
  psd_config cfg;
  uv_tcp_t listener;
  uv_signal_t sigint, sigterm;
  uv_timer_t tick;
  uv_check_t flush;          /* sends gathered replies once per loop turn */
  uv_timer_t stop_timer;     /* bounds how long shutdown waits for readers */
  psd_link dirty;            /* connections with gathered replies */
  int stopping;
  psd_link conns;
  uint64_t nconns;

  /* This shard's identity, adopted from the first data request. */
  int have_list;
  psp_servers servers;
  int shard_index;

  psd_tensor **table;        /* hash table of tensors by name */
  size_t table_cap, ntensors;
  psd_link rounds;           /* blocks with a sync round in progress */
  psd_group group;
  psd_seqmap seqs;

  psd_helper *helper;        /* takes half of large updates, or NULL */
  float *scratch;            /* sync rounds' averaging buffer */
  size_t scratch_cap;
  float *gradbuf;            /* the pushed gradient being handled, when it must be
                              * copied (out of a lane, or realigned); never the
                              * averaging buffer: completing other rounds while a
                              * push is handled must not overwrite it */
  size_t gradbuf_cap;

  /* Checkpointing (checkpoint.c). */
  uint64_t ckpt_seq;          /* the last SEQ taken (or found in --data-dir at start) */
  uint64_t ckpt_good_seq;     /* newest checkpoint this process wrote or restored; 0 none */
  int ckpt_child;            /* pid of a background writer, 0 if none */
  uv_timer_t ckpt_timer;
  uv_timer_t ckpt_kick;         /* starts a save on the next loop turn */
  uv_signal_t sigchld;
  psd_link ckpt_waiters;     /* requests for the next save */
  psd_link ckpt_inflight;    /* requests the running save answers */
  double ckpt_last_ms;
  uint64_t ckpt_written;
  char ckpt_last_error[256];

  struct {
    uint64_t pushes, pulls, duplicates, rejected, bad_frames, rounds;
    uint64_t bytes_in, bytes_out, held_pulls;
    uint64_t lane_ops, lane_bytes, lanes;
  } stats;
  uint64_t start_ms;
};

/* server.c */
int server_start(psd_server *srv);
void server_stop(psd_server *srv);
uint64_t now_ms(void);
/* Send a response; values (may be NULL) are copied only if the socket does
 * not take them at once. */
void conn_send(psd_conn *c, Psd__Response *resp, const void *values, size_t len);
void conn_send_error(psd_conn *c, uint64_t id, Psd__Code code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void conn_send_ack(psd_conn *c, uint64_t id, const char *detail);
/* Send the small replies gathered so far now, not at the end of the loop
 * turn (after a reply whose values went through a lane: the client can
 * copy them out while this shard works on the next block). */
void conn_flush(psd_conn *c);
psd_waiter *waiter_new(psd_conn *c, uint64_t id, int kind);
void waiter_free(psd_waiter *w);
float *server_scratch(psd_server *srv, uint64_t n);
float *server_gradbuf(psd_server *srv, uint64_t n);

/* store.c */
void store_init(psd_server *srv);
void store_free(psd_server *srv);
psd_tensor *store_find(psd_server *srv, const char *name);
psd_tensor *store_insert(psd_server *srv, const char *name, const uint64_t *shape,
                         int ndim, const ps_tensor_spec *spec);
void store_create(psd_conn *c, uint64_t id, const Psd__Create *req);
void store_lookup(psd_conn *c, uint64_t id, const Psd__Lookup *req);
void store_list(psd_conn *c, uint64_t id);
void store_pull(psd_conn *c, uint64_t id, const Psd__Pull *req);
void store_push(psd_conn *c, uint64_t id, const Psd__Push *req,
                const uint8_t *values, size_t len);
/* Complete every sync round that no longer waits for anyone (after a worker
 * departed). */
void store_rounds_recheck(psd_server *srv);
/* Answer a pull or push of block b: its version, and its values when
 * want_values (into lane slot lane_out when not 0, else in the frame).
 * Flags: PSD_REPLY_DUPLICATE (the push was a resend), PSD_REPLY_FILLED (the
 * values are in the lane slot already). */
enum { PSD_REPLY_DUPLICATE = 1, PSD_REPLY_FILLED = 2 };
void reply_block(psd_conn *c, uint64_t id, psd_block *b, int want_values, uint64_t lane_out,
                 int flags);
int block_materialize(psd_tensor *t, psd_block *b);
/* Allocate a block's sync-round arrays for nw workers; 0 or -1. */
int block_round_alloc(psd_block *b, uint32_t nw);
/* Free every block's sync-round buffers (the job's worker count changed). */
void store_reset_rounds(psd_server *srv);
/* Smallest, largest and summed version over the blocks this shard has
 * materialized, and how many those are (0s when none). */
void store_versions(psd_server *srv, uint64_t *vmin, uint64_t *vmax, uint64_t *vsum,
                    uint64_t *nblocks);
void tensor_info_fill(psd_server *srv, psd_tensor *t, Psd__TensorInfo *ti,
                      void *storage);
int seqmap_get(psd_seqmap *m, uint64_t key, uint64_t *val);
int seqmap_put(psd_seqmap *m, uint64_t key, uint64_t val);

/* group.c */
void group_init(psd_group *g);
void group_free(psd_group *g);
/* Adopt or check the job's configuration from a worker hello; 0 or -1 with
 * a sentence in err. */
int group_hello(psd_server *srv, int rank, uint32_t num_workers, int staleness,
                uint64_t worker_id, char *err, size_t errlen);
void group_seen(psd_server *srv, int rank, uint64_t worker_id);
void group_clock(psd_server *srv, int rank, uint64_t clock);
/* Is rank r one the current sync round must wait for? */
int group_expected(psd_server *srv, uint32_t r);
/* SSP: must a pull at `clock` from `rank` wait for slower workers? */
int group_pull_blocked(psd_server *srv, int rank, uint64_t clock);
void group_hold_pull(psd_conn *c, uint64_t id, psd_tensor *t, psd_block *b,
                     uint64_t clock, uint64_t lane_out);
void group_barrier(psd_conn *c, uint64_t id, uint64_t gen);
void group_tick(psd_server *srv);
void group_json(psd_server *srv, char *buf, size_t len);

/* checkpoint.c */
int ckpt_restore(psd_server *srv);
void ckpt_start(psd_server *srv);   /* timers */
void ckpt_request(psd_conn *c, uint64_t id);
/* Write synchronously (at exit). 0 or -1. */
int ckpt_write_now(psd_server *srv);
void ckpt_stop(psd_server *srv);
void ckpt_json(psd_server *srv, char *buf, size_t len);

#endif
