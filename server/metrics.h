/*
 * metrics.h -- the shard's metric registry and its Prometheus endpoint
 * (psd --metrics-listen HOST:PORT, GET /metrics in the text exposition
 * format, served by psd's own event loop).
 *
 * What is counted where:
 *  - every reply, by the request type it answers and its result: server.c
 *    stamps each decoded request (psd_stamp: the time its bytes were read
 *    and its type) into the outbox; waiter.c carries the stamp of a held
 *    request (sync push, SSP pull, barrier, checkpoint) to the reply that
 *    finally answers it, or counts it dropped when its connection goes;
 *    conn_send counts the reply and, for pull, push and push-pull, observes
 *    the time from frame in to reply queued;
 *  - sync rounds: round.c marks the first contribution of a block's round
 *    and its completion (the time rounds wait for their last worker);
 *  - checkpoints: checkpoint.c reports each save's outcome and size;
 *  - the rest (bytes, connections, lanes, workers, clocks, tensors) is read
 *    from the shard's own state when the endpoint is scraped.
 *
 * The hot path costs a couple of integer adds and one uv_hrtime per
 * reply delivery pass (shared by every reply of the pass) plus one per
 * socket read. The registry is one process-wide struct: psd is one loop.
 */
#ifndef PSD_METRICS_H
#define PSD_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "server.h"

/* Request types, the `type` label of psd_requests_total. */
enum {
  PSD_RT_NONE = 0, /* not counted (frame errors, replies nobody asked for) */
  PSD_RT_HELLO,
  PSD_RT_CREATE,
  PSD_RT_LOOKUP,
  PSD_RT_LIST,
  PSD_RT_PULL,
  PSD_RT_PUSH,
  PSD_RT_PUSH_PULL,
  PSD_RT_STATS,
  PSD_RT_CLOCK,
  PSD_RT_HEARTBEAT,
  PSD_RT_BARRIER,
  PSD_RT_CHECKPOINT,
  PSD_RT_PING,
  PSD_RT_GOODBYE,
  PSD_RT_PULL_ROWS,
  PSD_RT_PUSH_ROWS,
  PSD_RT_PUSH_PULL_ROWS,
  PSD_RT_OTHER,
  PSD_RT_N
};

/* Results, the `result` label: answered with data or an ack, answered as a
 * resend already applied, answered with an Error, never answered (the
 * connection closed while the reply was held or queued). */
enum { PSD_RES_OK = 0, PSD_RES_DUPLICATE, PSD_RES_ERROR, PSD_RES_DROPPED, PSD_RES_N };

/* Latency buckets (upper bounds, seconds): 10 us to 10 s, then +Inf. */
#define PSD_HIST_BUCKETS 20
extern const double psd_hist_bounds[PSD_HIST_BUCKETS - 1];

typedef struct {
  uint64_t count;
  uint64_t sum_ns;
  uint64_t b[PSD_HIST_BUCKETS]; /* per bucket (not cumulative); last: +Inf */
} psd_hist;

/* The histograms of request latency, by type. */
enum { PSD_LAT_PULL = 0, PSD_LAT_PUSH, PSD_LAT_PUSH_PULL, PSD_LAT_N };

typedef struct {
  uint64_t requests[PSD_RT_N][PSD_RES_N];
  psd_hist latency[PSD_LAT_N];
  psd_hist round_wait;
  uint64_t now_ns;              /* this delivery pass's clock (0: not read yet) */
  psd_stamp reply;              /* the request the reply being sent answers */
  uint64_t conns_accepted;
  uint64_t ckpt_failures;
  uint64_t ckpt_last_bytes;
  double ckpt_last_ok_unix;     /* wall clock of the last good save, 0: none */
  uint64_t scrapes, http_refused;
} psd_metrics;

extern psd_metrics psd_m;

extern const uint64_t psd_hist_ns[PSD_HIST_BUCKETS - 1]; /* the same bounds in ns */

static inline void psd_hist_observe(psd_hist *h, uint64_t ns) {
  int i = 0;
  while (i < PSD_HIST_BUCKETS - 1 && ns > psd_hist_ns[i]) i++;
  h->b[i]++;
  h->count++;
  h->sum_ns += ns;
}

/* The type of a decoded request. */
static inline uint8_t metrics_type(const Psd__Request *req) {
  switch (req->body_case) {
    case PSD__REQUEST__BODY_HELLO: return PSD_RT_HELLO;
    case PSD__REQUEST__BODY_CREATE: return PSD_RT_CREATE;
    case PSD__REQUEST__BODY_LOOKUP: return PSD_RT_LOOKUP;
    case PSD__REQUEST__BODY_LIST: return PSD_RT_LIST;
    case PSD__REQUEST__BODY_PULL: return PSD_RT_PULL;
    case PSD__REQUEST__BODY_PUSH:
      return req->push->has_want_values && req->push->want_values ? PSD_RT_PUSH_PULL
                                                                  : PSD_RT_PUSH;
    case PSD__REQUEST__BODY_STATS: return PSD_RT_STATS;
    case PSD__REQUEST__BODY_CLOCK: return PSD_RT_CLOCK;
    case PSD__REQUEST__BODY_HEARTBEAT: return PSD_RT_HEARTBEAT;
    case PSD__REQUEST__BODY_BARRIER: return PSD_RT_BARRIER;
    case PSD__REQUEST__BODY_CHECKPOINT: return PSD_RT_CHECKPOINT;
    case PSD__REQUEST__BODY_PING: return PSD_RT_PING;
    case PSD__REQUEST__BODY_GOODBYE: return PSD_RT_GOODBYE;
    case PSD__REQUEST__BODY_PULL_ROWS: return PSD_RT_PULL_ROWS;
    case PSD__REQUEST__BODY_PUSH_ROWS:
      return req->push_rows->has_want_values && req->push_rows->want_values
                 ? PSD_RT_PUSH_PULL_ROWS
                 : PSD_RT_PUSH_ROWS;
    default: return PSD_RT_OTHER;
  }
}

/* A reply to the request stamped s is being sent with this result. */
static inline void metrics_reply(const psd_stamp *s, int result) {
  if (s->type == PSD_RT_NONE) return;
  psd_m.requests[s->type][result]++;
  if (s->type == PSD_RT_PULL || s->type == PSD_RT_PUSH || s->type == PSD_RT_PUSH_PULL) {
    if (psd_m.now_ns < s->t0) psd_m.now_ns = uv_hrtime();
    psd_hist_observe(&psd_m.latency[s->type - PSD_RT_PULL], psd_m.now_ns - s->t0);
  }
}

/* A request stamped s will never be answered. */
static inline void metrics_dropped(const psd_stamp *s) {
  if (s->type != PSD_RT_NONE) psd_m.requests[s->type][PSD_RES_DROPPED]++;
}

/* Held requests (waiter.c): the stamp of the request being handled, and
 * at release, the stamp moved to the reply just queued for it. */
void metrics_waiter_new(psd_waiter *w);
void metrics_waiter_done(psd_waiter *w);

/* Sync rounds (round.c): block b got the first contribution of a round;
 * a round of b completed (the next one, if contributions wait, starts
 * now). */
static inline void metrics_round_begin(psd_block *b) { b->round_t0 = uv_hrtime(); }
void metrics_round_done(psd_block *b);

/* Checkpoints (checkpoint.c): save seq ended, ok or not. */
void metrics_ckpt_done(psd_server *srv, uint64_t seq, int ok);

/* The Prometheus text for this shard (malloc'd, *len bytes), or NULL. */
char *metrics_render(psd_server *srv, size_t *len);
/* The latency summary for the stats JSON:
 * {"bounds_ms":[...],"pull":{"count":..,"sum_s":..,"p50_ms":..,"p99_ms":..,
 *  "buckets":[...]},"push":{...},"push_pull":{...},"round_wait":{...}} */
char *metrics_stats_json(void);
/* The q-quantile (0..1) of h in seconds, interpolated within its bucket as
 * Prometheus's histogram_quantile does; NaN when h is empty. */
double metrics_quantile(const psd_hist *h, double q);

/* The HTTP endpoint: start listening on cfg.metrics_listen (nothing when
 * it is empty); 0 or -1 (logged). Stop closes it and every scrape in
 * progress. */
int metrics_start(psd_server *srv);
void metrics_stop(psd_server *srv);
/* The bearer token --metrics-auth compares against (copied); len 0 = none. */
void metrics_set_token(const uint8_t *tok, size_t len);

#endif
