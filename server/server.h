/*
 * server.h -- the psd daemon's data: the types every file of the daemon
 * shares. Functions are declared in each module's own header.
 *
 * The modules, from the network edge down (each calls only those below it):
 *
 *   main.c        flags, environment, signals, start and stop
 *   server.c      the network edge: listener, connections, framing,
 *                 dispatch, hello, stats; delivers the outbox; per-connection
 *                 limits (--out-cap, deadlines, --max-clients), the loop's
 *                 turn budget and stall figures
 *   access.c      who may connect and what each role may do: tokens,
 *                 proofs, the failed-attempt limiter, the role table
 *   session.c     worker sessions: ids and secrets issued by the shard
 *   job.c         the jobs a shard serves: each owns its tensors, group,
 *                 rounds and exactly-once table; runs (incarnations)
 *   checkpoint.c  background saves to --data-dir (fork); ckpt.h and
 *                 ckpt_format.c, ckpt_state.c, ckpt_dir.c: the file format,
 *                 what is saved, restore and pruning
 *   store.c       the tensor requests: create, lookup, list, pull, push
 *   control.c     a live tensor's lifecycle and settings: delete, reset,
 *                 set, tune
 *   set.c         values written into a block, held while its sync round
 *                 is in progress (called by control.c and round.c)
 *   round.c       sync (BSP) rounds: contributions, rank-ordered average
 *   group.c       a job's workers: liveness, clocks, SSP holds, barriers
 *   apply.c       one optimizer update of a block (helper thread, guard)
 *   tensor.c      the tensor table and its lazily materialized blocks
 *   rows.c        the sparse-table requests: create, lookup, list, pull
 *                 rows, push rows, delete and reset a table (as store.c
 *                 and control.c are for tensors)
 *   table_round.c sync rounds of tables: each row averaged over the ranks
 *                 that pushed it, in rank order
 *   table.c       a job's tables: rows in slabs, their hash index, LRU/LFU
 *                 eviction, lazily initialized rows; emptied, removed
 *   table_age.c   LFU aging: every use count of a table halved once a
 *                 period, a bounded slice per request
 *   dedupe.c      the exactly-once table
 *   waiter.c      replies held for later (sync pushes, SSP pulls, barriers)
 *   outbox.c      replies decided by the state code, sent by server.c
 *   memory.c      the memory account against --max-memory, used by all of
 *                 the above (a leaf: it calls nothing)
 *   metrics.c     the metric registry and the Prometheus endpoint
 *                 (--metrics-listen, its own listener in the same loop); fed
 *                 by small hooks in server.c (stamps, deliveries), waiter.c
 *                 (held requests), round.c (round waits) and checkpoint.c;
 *                 reads the rest of the state when scraped
 *
 * State code (store, control, set, round, group, apply, tensor, dedupe) never writes to a
 * socket: it changes state and appends "answer request R of connection C
 * with block B / error E / ack" to the outbox. server.c delivers the outbox
 * after each request, timer and signal. No handler is re-entered half-way,
 * and the state machines can be driven without sockets (tests/test_sync.c).
 *
 * A push travels: server.c read_cb -> handle_frames -> handle_request ->
 * store.c store_push -> (async) apply.c block_apply -> psm_apply_range
 * (common/psmath.c) -> outbox_block; (sync) round.c round_add ->
 * round_try_complete -> block_apply -> outbox_block for every contributor;
 * then server.c deliver() writes the replies.
 */
#ifndef PSD_SERVER_H
#define PSD_SERVER_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "auth.h"
#include "helper.h"
#include "lane.h"
#include "placement.h"
#include "psd.pb-c.h"
#include "psd_limits.h"
#include "psd_types.h"
#include "u64map.h"
#include "wire.h"

typedef struct psd_server psd_server;
typedef struct psd_conn psd_conn;
typedef struct psd_waiter psd_waiter;
typedef struct psd_block psd_block;
typedef struct psd_tensor psd_tensor;
typedef struct psd_pin psd_pin;
typedef struct psd_growing psd_growing;
typedef struct psd_job psd_job;
typedef struct psd_table psd_table;
typedef struct psd_tround psd_tround;

/* Intrusive doubly linked list (libuv's queue idea, spelled out). */
typedef struct psd_link {
  struct psd_link *prev, *next;
} psd_link;

static inline void psd_link_init(psd_link *l) { l->prev = l->next = l; }
static inline int psd_link_empty(const psd_link *l) { return l->next == l; }
static inline void psd_link_insert_tail(psd_link *head, psd_link *l) {
  l->prev = head->prev;
  l->next = head;
  head->prev->next = l;
  head->prev = l;
}
static inline void psd_link_remove(psd_link *l) {
  l->prev->next = l->next;
  l->next->prev = l->prev;
  l->prev = l->next = l;
}
#define psd_link_entry(ptr, type, member) \
  ((type *)((char *)(ptr) - offsetof(type, member)))

/* Where a reply comes from, for the metrics (metrics.h): when its
 * request's bytes were read (uv_hrtime) and the request's type. */
typedef struct {
  uint64_t t0;
  uint8_t type;              /* PSD_RT_*, 0: not counted */
} psd_stamp;

/* Milliseconds of a monotonic clock. */
static inline uint64_t psd_now_ms(void) { return uv_hrtime() / 1000000u; }

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
  uint64_t max_memory;       /* bytes: the ceiling of memory.h */
  uint64_t max_clients;      /* connections; past it new ones get an Error and close */
  int max_clients_set;       /* given by the operator (not lowered to the fd limit) */
  double frame_timeout;      /* seconds a started frame may take to arrive whole */
  double hello_timeout;      /* seconds a new connection has to complete its hello */
  double idle_timeout;       /* seconds a non-worker connection may stay silent; 0 never */
  uint32_t max_workers;      /* largest job a hello may announce (0: the default, 1024) */
  double stall_log_ms;       /* a loop turn busy this long or longer is logged */
  uint32_t max_jobs;         /* jobs a shard serves at once (0: the default, 64) */
  /* Trust (access.c). Tokens come from files only (--token-file ROLE=PATH). */
  char token_path[PSA_NROLES][1024];
  uint8_t token[PSA_NROLES][PSA_TOKEN_MAX];
  size_t token_len[PSA_NROLES]; /* 0: that role is disabled */
  int tokens;                /* any token configured; 0: protected mode (loopback only) */
  int insecure;              /* --insecure: no tokens, yet listen beyond loopback */
  /* The failed-authentication limiter (access.c): this many failures from
   * one address within auth_fail_window seconds refuse its connections for
   * auth_ban seconds; 0 failures: never. */
  uint32_t auth_fail_limit;
  double auth_fail_window;
  double auth_ban;
  /* The shard's identity from its configuration (--servers, --index). */
  char servers[4096];        /* "" = not configured: an admin's first request sets it */
  int index;
  char metrics_listen[300];  /* HOST:PORT of the Prometheus endpoint, "" = none */
  int metrics_auth;          /* the endpoint wants the reader token as a bearer token */
  int metrics_tensor_labels; /* per-tensor series (tensor names as labels) */
} psd_config;

#define PSD_DEFAULT_MAX_WORKERS 1024u
#define PSD_DEFAULT_MAX_JOBS 64u

/* ---- held replies (waiter.c) ---------------------------------------------- */

/* A reply that will be sent later (sync push, SSP pull, barrier,
 * checkpoint). It belongs to its connection (conn->waiters) and to one wait
 * list; when the connection closes first, the waiter is unlinked from both
 * and freed. */
struct psd_waiter {
  psd_link conn_link;        /* in conn->waiters */
  psd_link wait_link;        /* in the list of what it waits for */
  psd_conn *conn;
  uint64_t id;               /* request id to answer */
  int kind;                  /* PSD_WAIT_* */
  psd_block *block;
  int want_values;
  uint64_t lane_out;         /* lane slot for the values, 0 = in the frame */
  uint64_t clock;            /* SSP pull: the requester's clock */
  uint64_t gen;              /* barrier generation */
  int rank;
  uint64_t cost;             /* bytes reserved (memory.h) */
  int capped;                /* cost counted in conn->held_bytes (waiter.h) */
  psd_table *table;          /* a table's request (sync push, SSP pull of rows) */
  uint64_t *keys;            /* SSP pull of rows: its keys (owned), nkeys of them */
  uint64_t nkeys;
  psd_stamp stamp;           /* the held request, for the metrics */
};

enum { PSD_WAIT_PUSH = 1, PSD_WAIT_PULL, PSD_WAIT_BARRIER, PSD_WAIT_CHECKPOINT, PSD_WAIT_SET };

/* ---- connections (server.c) ---------------------------------------------- */

/* What the state code may read of a connection: who it is (role, rank,
 * session), its lane, and its list of held replies. Only server.c does
 * I/O. */
struct psd_conn {
  uv_tcp_t tcp;              /* first: the handle's data is the conn */
  psd_server *srv;
  psd_link link;             /* in srv->conns */
  psw_rbuf in;
  char peer[64];
  int peer_local;            /* the peer is on loopback: a lane may be offered */
  uint8_t peer_addr[16];     /* the peer's address (IPv4 as ::ffff:a.b.c.d), for the limiter */
  uint8_t nonce[PSA_NONCE];  /* this connection's challenge (common/auth.h) */
  psl_lane lane;             /* shared-memory lane, if the hello asked for one */
  int lane_proven;           /* the client showed it mapped the lane (lane.h) */
  /* From the hello. */
  int hello_done;
  psd_job *job;              /* the job the hello named (a reference, job.h) */
  uint64_t incarnation;      /* a worker's: the job's incarnation it joined */
  int role;                  /* PSA_READER.. PSA_ADMIN once a hello was accepted */
  int rank;                  /* -1: tool */
  uint64_t worker_id;        /* the connection's session id (0: none, e.g. a reader):
                              * keys exactly-once pushes and holds the rank */
  char *list;                /* server list from the hello, normalized */
  uint64_t list_hash;
  int list_index;            /* which entry the client thinks this shard is */
  psd_link waiters;
  uint64_t held_bytes;       /* reserved by its held replies (waiter.h) */
  int reading;               /* uv_read_start active */
  int paused;                /* stopped reading and handling: output over the cap */
  int yielded;               /* paused only until the next turn: its turn's budget ran out */
  uint64_t yield_turn;
  psd_link paused_link;      /* in srv->paused while paused */
  int closing;
  int input_refused;         /* a frame's buffer would have crossed --max-memory */
  int in_grave, close_done;  /* closed, its held replies dropped over turns (server.c) */
  psd_link grave_link;
  int parked;                /* its next request waits for a block being made (tensor.h) */
  psd_link park_link;        /* in that psd_growing's waiting list, then srv->woken */
  uint64_t in_charged;       /* receive buffer bytes charged (memory.h) */
  uint64_t accepted_ms;      /* deadlines (--hello-timeout, --idle-timeout, */
  uint64_t last_active_ms;   /* --frame-timeout): checked by server.c's scan */
  uint64_t frame_start_ms;   /* first byte of a frame still arriving, 0: none */
  uint8_t *obuf;             /* small replies gathered for one write */
  size_t olen, ocap;
  int dirty;                 /* in srv->dirty */
  psd_link dirty_link;
  uint64_t t_read;           /* uv_hrtime of the last read: its frames' arrival */
};

/* ---- tensors (tensor.c) --------------------------------------------------- */

/* Versions of a set of materialized blocks, kept as they change (a stats or
 * lookup reply must not walk millions of blocks): how many blocks stand at
 * each version, their count, smallest, largest and sum. */
typedef struct {
  u64map count;              /* version -> blocks at that version */
  uint64_t n, min, max, sum;
} psd_vstat;

/* A block exists on a shard only once touched (pulled, pushed, restored):
 * then its weights and state are allocated and initialized. */
struct psd_block {
  uint64_t index;
  uint64_t first;            /* element offset within the tensor */
  uint64_t n;                /* elements */
  float *w;                  /* weights, n floats */
  float *state;              /* psm_state_per_param(kind) * n floats */
  uint64_t version;          /* updates applied */
  uint32_t absmax;           /* bits of an upper bound of |w| and |state| (apply.c) */
  uint32_t outbox_refs;      /* outbox records that will send w (outbox.c) */
  psd_pin *pin;              /* writes in flight send from w (tensor.h), or NULL */
  /* Sync (BSP) round in progress: one contribution per rank (round.c). */
  uint32_t round_nw;         /* size of the arrays below, 0 = none */
  float **contrib;           /* [round_nw] */
  uint64_t *contrib_seq;
  uint64_t *contrib_clock;   /* the worker clock each contribution was pushed at */
  uint8_t *present;
  psd_waiter **contrib_waiter;
  uint32_t ncontrib;
  psd_link round_link;       /* in srv->rounds while ncontrib > 0 */
  uint64_t round_t0;         /* uv_hrtime of the round's first contribution */
  psd_link sets;             /* psd_heldset: values to write once the round is done (set.c) */
  psd_tensor *tensor;
};

/* A set of values that arrived while its block had a sync round in
 * progress: written right after that round's update (set.h). It belongs to
 * the block, as a contribution does, and outlives its connection: a resend
 * (the same session and seq) re-attaches a reply. */
typedef struct {
  psd_link link;             /* in block->sets, in arrival order */
  uint64_t worker_id, seq;   /* the exactly-once key (0: none) */
  uint64_t off, n;           /* elements [off, off + n) of the block */
  int zero_state;
  float *vals;               /* n floats, charged to PSD_MEM_ROUNDS */
  psd_waiter *w;             /* the held reply, or NULL (its connection closed) */
} psd_heldset;

struct psd_tensor {
  char *name;
  uint64_t name_hash;
  int ndim;
  uint64_t shape[PSD_MAX_NDIM];
  uint64_t numel;
  uint64_t nblocks;
  ps_tensor_spec spec;       /* resolved: defaults filled, block_size set; as tuned */
  ps_tensor_spec created;    /* the spec as created: what a create is compared with
                              * (ps_set_optim changes only spec) */
  /* The blocks materialized here, by index (psd_block *): a create costs
   * O(1) whatever nblocks, and nothing iterates all nblocks. */
  u64map blocks;
  uint64_t blocks_here;      /* blocks materialized here (blocks.len) */
  uint64_t bytes_here;       /* their weights' and optimizer state's bytes */
  psd_vstat vs;              /* versions of those blocks */
  psd_job *job;              /* the job the tensor belongs to */
  psd_tensor *next;          /* hash chain */
};

/* ---- sparse tables (table.c) --------------------------------------------- */

/* A row's slot in a table's slab: this header, then the row's dim floats,
 * then its optimizer state (psm_state_per_param arrays of dim floats).
 * Tables without eviction use the first 16 bytes only (table.h). */
typedef struct {
  uint64_t key;
  uint32_t step;             /* updates applied to the row: lazy Adam's t */
  uint32_t node;             /* eviction: its frequency node (1-based); free slot: the
                              * next free slot + 1; top bit: pinned by the request
                              * being handled (table.h) */
  uint32_t prev, next;       /* eviction: neighbours in its node's list (slot + 1) */
} psd_rowhdr;

/* A set of rows with the same use count (LFU), or all rows (LRU), least
 * recently used first. */
typedef struct {
  uint32_t count;
  uint32_t head, tail;       /* slot + 1, 0: empty */
  uint32_t prev, next;       /* neighbouring nodes by count (1-based), 0: none */
} psd_rnode;

struct psd_table {
  char *name;
  uint64_t name_hash;
  uint32_t dim;
  ps_table_spec spec;        /* resolved */
  unsigned k;                /* optimizer state floats per element */
  uint32_t hdr_bytes;        /* 16, or 24 with eviction */
  uint32_t stride;           /* bytes per slot, a multiple of 8 */
  uint64_t limit;            /* rows kept on this shard (ceil(max_rows / shards)), 0: no limit */
  uint16_t *owner;           /* bucket -> shard index (placement.h) */
  /* The slab: 2 MiB chunks of per_chunk slots; slot id = chunk << 16 | index.
   * Slots are handed out in order (nfresh so far), then reused once freed. */
  uint8_t **chunks;
  uint32_t nchunks, chunks_cap, per_chunk;
  uint64_t nfresh;
  uint32_t free_slot;        /* free slots (evicted rows), slot + 1, 0: none */
  uint64_t nfree;
  uint64_t nrows;
  /* The index: open addressing over slot + 1 (0 empty; UINT32_MAX a
   * deleted entry of an index being migrated), grown by half at 3/4 full
   * and migrated a few entries per operation (table.c). */
  struct {
    uint32_t *e;
    uint64_t cap, len;
    uint32_t *old;           /* being migrated into e, or NULL */
    uint64_t old_cap, moved;
  } idx;
  /* Eviction order (table.c): frequency nodes, lowest count first. */
  psd_rnode *nodes;
  uint32_t nodes_cap, nodes_used, node_free, node_first, node_last;
  /* LFU aging (table_age.c): every use count halved once a period, a few
   * nodes or rows per request. */
  struct {
    uint64_t uses;           /* rows resolved since the last pass began */
    uint64_t passes;         /* passes completed */
    int active;              /* a pass is in progress */
    uint32_t next;           /* the node it halves next, 0: none left */
    uint32_t dst, src;       /* two adjacent nodes of one count being merged (src's rows
                              * move to dst's tail), 0: none */
  } age;
  uint32_t absmax;           /* bits of an upper bound of every |value| and |state| (apply.c) */
  uint64_t step;             /* updates applied to the table here (the schedule's t) */
  uint64_t evictions;
  uint64_t bytes;            /* memory charged for it (mem_tables) */
  psd_tround *round;         /* a sync round's contributions, or NULL (table_round.c) */
  psd_link round_link;       /* in job->trounds while a contribution is pending */
  psd_job *job;
  psd_table *next;           /* same name hash */
};

/* ---- the job's workers (group.c) ----------------------------------------- */

typedef struct {
  int joined;                /* has ever said hello or pushed */
  int live;
  uint64_t worker_id;        /* the session that holds (or last held) the rank; while
                              * live, only that session speaks for the rank */
  int orphan;                /* restored, but its holder is no restored session (a file
                              * from before sessions): the first session to speak for
                              * the rank takes it */
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
  psd_link ready;            /* SSP pulls released, answered a slice per loop turn */
  psd_link barriers;
  uint64_t barrier_min;      /* <= the smallest generation a barrier waiter waits for */
  uint64_t departures;        /* silent past --worker-timeout, or said goodbye */
  uint64_t leaves;            /* of which said goodbye */
  uint64_t joins;
  uint64_t max_ahead;        /* largest (clock - slowest clock) granted */
} psd_group;

/* ---- the exactly-once table (dedupe.c) ------------------------------------ */

/* Last applied push sequence number per worker id (a u64map). */
typedef u64map psd_seqmap;

/* ---- jobs (job.c) ---------------------------------------------------------- */

/* A named job: its tensors, its workers, its sync rounds and its
 * exactly-once table. Jobs on one shard share nothing but the shard's
 * limits. An incarnation is one run of the job: it ends when its last live
 * worker says goodbye, or by `psctl job end`; the next worker's hello
 * starts the next one (new clocks and rounds; tensors are kept). */
struct psd_job {
  psd_link link;             /* in srv->jobs (not once dropped) */
  char *name;
  uint64_t incarnation;      /* 1 for the first run; +1 for each new one */
  int ended;                 /* the incarnation ended; the next worker starts a new one */
  int dropped;               /* `job drop`: out of srv->jobs, freed with its last reference */
  uint32_t refs;             /* connections and sessions bound to it */
  psd_tensor **table;        /* hash table of its tensors by name */
  size_t table_cap, ntensors;
  psd_link rounds;           /* its blocks with a sync round in progress */
  u64map tables;             /* its sparse tables: name hash -> psd_table chain */
  size_t ntables;
  psd_link trounds;          /* its tables with a sync round in progress */
  psd_group group;
  psd_seqmap seqs;
  uint64_t started_ms;       /* the incarnation's start (monotonic ms) */
};

/* ---- sessions (session.c) -------------------------------------------------- */

/* Issued by the shard to a worker's (or admin's) first hello; resumed with
 * an HMAC of its secret after a reconnect or a shard restart. */
typedef struct {
  uint64_t id;               /* never 0; the exactly-once key */
  uint8_t secret[PSA_SECRET];
  int rank;                  /* the rank it was opened for; -1: a tool's */
  int role;
  psd_job *job;              /* the job it was opened in (a reference, job.h) */
  uint32_t nconns;           /* connections now in it */
  uint64_t last_seen_ms;     /* when it last had a connection */
} psd_session;

/* Addresses whose authentication failed (access.c): a bounded table. */
#define PSD_AUTH_SLOTS 256
typedef struct {
  uint8_t addr[16];
  int used;
  uint32_t count;            /* failures since first_ms */
  uint64_t first_ms, last_ms;
  uint64_t until_ms;         /* refused until then */
} psd_authfail;

/* ---- the outbox (outbox.c) ------------------------------------------------ */

typedef enum { PSD_OB_BLOCK = 1, PSD_OB_ERROR, PSD_OB_ACK, PSD_OB_FRAME, PSD_OB_ROWS } psd_ob_kind;

/* One reply to send: to request `id` of `conn`. */
typedef struct {
  psd_ob_kind kind;
  psd_conn *conn;            /* NULL once the connection closed: dropped */
  uint64_t id;
  /* PSD_OB_BLOCK: the block's version when the reply was decided, and its
   * values then: in the block (block != NULL) or, if the block changed
   * before delivery, in a private copy (snap). */
  psd_block *block;
  float *snap;
  uint64_t n;
  uint64_t version;
  uint64_t lane_out;         /* lane slot for the values, 0 = in the frame */
  uint8_t want_values, duplicate, filled;
  /* PSD_OB_ROWS: a table's step (version), `rows` rows whose n floats are in
   * snap (owned; NULL when the reply carries none). */
  uint64_t rows;
  /* PSD_OB_ERROR */
  int code;                  /* Psd__Code */
  char *msg;                 /* heap: the error's sentence, or the ack's detail */
  /* PSD_OB_FRAME: an encoded Response (lookup, list...) */
  uint8_t *frame;
  size_t frame_len;
  psd_stamp stamp;           /* the request it answers (metrics) */
} psd_ob_rec;

typedef struct {
  psd_ob_rec *r;
  size_t len, cap;
  uint64_t lost;             /* replies that could not be queued (out of memory) */
  psd_stamp stamp;           /* the request being handled: new records carry it */
} psd_outbox;

/* ---- the shard ------------------------------------------------------------ */

struct psd_server {
  uv_loop_t *loop;
  psd_config cfg;
  uv_tcp_t listener;
  uv_signal_t sigint, sigterm;
  uv_timer_t tick;
  uv_check_t flush;          /* sends gathered replies once per loop turn */
  uv_timer_t stop_timer;     /* bounds how long shutdown waits for readers */
  psd_link dirty;            /* connections with gathered replies */
  psd_link paused;           /* connections paused for their output (--out-cap) */
  psd_link graveyard;        /* closed connections whose held replies are being dropped */
  /* Big blocks materialized a slice per turn (tensor.h): the first touch of
   * a block of megabytes is not one long turn. */
  int grow_spread;           /* the live shard (a restore's scratch state fills at once) */
  psd_link growing;          /* psd_growing being filled */
  psd_link woken;            /* connections whose block is ready: they go on next turn */
  psd_growing *park_on;      /* set by the state code: park the request's connection */
  int reserve_fd;            /* /dev/null, given up to shed a connection at EMFILE */
  int fd_limit;              /* RLIMIT_NOFILE at start, 0 if none */
  uint64_t next_scan_ms;     /* deadlines scan */
  uint64_t next_trim_ms;     /* malloc_trim, at most once a second (memory.h) */
  uint64_t accept_log_ms;    /* rate limit of accept error lines */
  uint64_t accept_unlogged;  /* accept errors since the last line */
  /* The loop's turns (server.c): busy time between two prepare callbacks. */
  uv_prepare_t loop_prepare;
  uv_idle_t spread;          /* keeps the loop turning while work is spread */
  uint64_t turn_start_ns, loop_iter;
  uint64_t loop_worst_us, loop_turns;
  /* With --stall-log-ms below 100 (a diagnosis), the loop thread's CPU time
   * in each turn too: what of a turn was work, not waiting for a CPU. */
  int turn_cpu;
  uint64_t turn_cpu_start_ns, loop_worst_cpu_us;
  uint64_t loop_busy_us_sum;  /* the turns' busy time, summed (the metrics' histogram) */
  uint64_t turn_deadline_ns; /* requests run in this turn until then (server.c) */
  uint64_t turn_requests;    /* requests run in this turn */
  uint32_t turn_accepts;     /* connections accepted in this turn */
  /* What this turn did, for --stall-log-ms's line (reset by prepare_cb). */
  uint32_t turn_closes;
  uint64_t turn_rbytes, turn_wbytes, turn_grow_ns, turn_trim_ns;
  int accept_deferred;       /* a pending connection waits for the next turn */
  uint64_t accept_defer_iter;
  int scan_more;             /* the deadlines scan stopped at its close budget */
  uint64_t loop_hist[9];     /* turns by busy time: <1,<2,<5,<10,<20,<50,<100,<1000 ms, more */
  int stopping;
  psd_link conns;
  uint64_t nconns;

  /* This shard's identity, adopted from the first data request. */
  int have_list;
  psp_servers servers;
  int shard_index;

  psd_link jobs;             /* psd_job, by creation (job.c) */
  uint32_t njobs;
  size_t ntensors;           /* over every job */
  size_t ntables;            /* over every job */
  psd_vstat vstat;           /* versions of every block materialized here */
  u64map sessions;           /* session id -> psd_session * */
  psd_authfail authfail[PSD_AUTH_SLOTS];
  psd_outbox outbox;

  psd_helper *helper;        /* takes half of large updates, or NULL */
  float *scratch;            /* sync rounds' averaging buffer */
  size_t scratch_cap;
  float *gradbuf;            /* the pushed gradient being handled, when it must be
                              * copied (out of a lane, or realigned); never the
                              * averaging buffer: completing other rounds while a
                              * push is handled must not overwrite it */
  size_t gradbuf_cap;
  float *undo;               /* apply.c: a block's values before a risky update */
  size_t undo_cap;
  void *rowbuf;              /* table.c: rows of the request being handled */
  size_t rowbuf_cap;         /* bytes */
  uint64_t *keyset;          /* table.c: new keys of the request, to find repeats */
  size_t keyset_cap;         /* bytes */

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
    uint64_t held_sets;      /* sets held until their block's sync round completed */
    uint64_t lane_ops, lane_bytes, lanes;
    uint64_t nonfinite;      /* updates refused: their result was not finite */
    uint64_t clients_refused;  /* past --max-clients, or shed at EMFILE */
    uint64_t accept_errors;
    uint64_t closed_hello, closed_idle, closed_frame, closed_input, closed_write;
    uint64_t dropped_requests; /* frames received but never run: their peer went away */
    uint64_t pauses;           /* times a connection was paused for its output */
    uint64_t yields;           /* times a connection's requests went on at the next turn */
    uint64_t auth_ok, auth_failed, auth_refused, denied;
    uint64_t row_pulls, row_pushes; /* requests on tables */
    uint64_t rows_updated;     /* row updates applied */
  } stats;
  uint64_t start_ms;
};

/* server.c: the network edge. */
int server_start(psd_server *srv);
void server_stop(psd_server *srv);
/* Work begins in this turn of the loop (for the stall figures); callbacks
 * outside server.c that may take long (checkpoint timers) call it too. */
void server_turn_mark(psd_server *srv);

#endif
