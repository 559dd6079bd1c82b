/*
 * metrics.c -- the metric registry, its Prometheus text rendering and the
 * HTTP endpoint that serves it; see metrics.h.
 *
 * The endpoint is a uv_tcp listener in psd's own loop. Each scrape is one
 * connection: the request is parsed by libhttp-parser (at most
 * HTTP_MAX_REQUEST bytes, within HTTP_DEADLINE_MS of the accept), answered
 * once and closed. GET or HEAD /metrics is answered 200 with the text
 * exposition format (version 0.0.4); any other path 404, any other method
 * 405, a missing or wrong bearer token (with --metrics-auth) 401, a request
 * too large 431, a malformed one 400, a slow one 408. At most
 * HTTP_MAX_CONNS scrapes are served at once; more are closed at accept.
 * Nothing here reads or sends tensor values.
 */
#include "metrics.h"

#include <http_parser.h>
#include <math.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#include "access.h"
#include "group.h"
#include "log.h"
#include "numfmt.h"
#include "memory.h"
#include "netaddr.h"
#include "round.h"
#include "tensor.h"

psd_metrics psd_m;

const double psd_hist_bounds[PSD_HIST_BUCKETS - 1] = {
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2,
    2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
const uint64_t psd_hist_ns[PSD_HIST_BUCKETS - 1] = {
    10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000,
    25000000, 50000000, 100000000, 250000000, 500000000, 1000000000, 2500000000u,
    5000000000u, 10000000000u};

static const char *const type_names[PSD_RT_N] = {
    "", "hello", "create", "lookup", "list", "pull", "push", "push_pull",
    "stats", "clock", "heartbeat", "barrier", "checkpoint", "ping", "goodbye",
    "pull_rows", "push_rows", "push_pull_rows", "other"};
static const char *const result_names[PSD_RES_N] = {"ok", "duplicate", "error", "dropped"};
static const char *const lat_names[PSD_LAT_N] = {"pull", "push", "push_pull"};

/* ---- hooks ------------------------------------------------------------------ */

void metrics_waiter_new(psd_waiter *w) { w->stamp = w->conn->srv->outbox.stamp; }

void metrics_waiter_done(psd_waiter *w) {
  if (w->conn == NULL) {
    metrics_dropped(&w->stamp);
    return;
  }
  psd_outbox *ob = &w->conn->srv->outbox;
  /* Every release queues the waiter's reply, then frees the waiter. */
  if (ob->len > 0) {
    psd_ob_rec *r = &ob->r[ob->len - 1];
    if (r->conn == w->conn && r->id == w->id) {
      r->stamp = w->stamp;
      return;
    }
  }
  metrics_dropped(&w->stamp);
}

void metrics_round_done(psd_block *b) {
  uint64_t now = uv_hrtime();
  /* A round restored from a checkpoint has no start: not observed. */
  if (b->round_t0 != 0 && now >= b->round_t0) psd_hist_observe(&psd_m.round_wait, now - b->round_t0);
  b->round_t0 = b->ncontrib > 0 ? now : 0;
}

void metrics_ckpt_done(psd_server *srv, uint64_t seq, int ok) {
  if (!ok) {
    psd_m.ckpt_failures++;
    return;
  }
  char path[1200];
  struct stat st;
  snprintf(path, sizeof(path), "%s/ckpt-%016llu.psd", srv->cfg.data_dir,
           (unsigned long long)seq);
  if (stat(path, &st) == 0) psd_m.ckpt_last_bytes = (uint64_t)st.st_size;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  psd_m.ckpt_last_ok_unix = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double metrics_quantile(const psd_hist *h, double q) {
  if (h->count == 0) return NAN;
  double rank = q * (double)h->count;
  uint64_t cum = 0;
  for (int i = 0; i < PSD_HIST_BUCKETS; i++) {
    uint64_t prev = cum;
    cum += h->b[i];
    if ((double)cum < rank || h->b[i] == 0) continue;
    if (i == PSD_HIST_BUCKETS - 1) return psd_hist_bounds[PSD_HIST_BUCKETS - 2];
    double lo = i == 0 ? 0.0 : psd_hist_bounds[i - 1], hi = psd_hist_bounds[i];
    return lo + (hi - lo) * (rank - (double)prev) / (double)h->b[i];
  }
  return psd_hist_bounds[PSD_HIST_BUCKETS - 2];
}

/* ---- a growing text buffer ------------------------------------------------------ */

typedef struct {
  char *p;
  size_t len, cap;
  int oom;
} mbuf;

static void mb_put(mbuf *b, const char *s, size_t n) {
  if (b->oom) return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 16384;
    while (cap < b->len + n + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (p == NULL) {
      b->oom = 1;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

static void mb_puts(mbuf *b, const char *s) { mb_put(b, s, strlen(s)); }

static void mb_printf(mbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void mb_printf(mbuf *b, const char *fmt, ...) {
  char tmp[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n < sizeof(tmp)) {
    mb_put(b, tmp, (size_t)n);
    return;
  }
  char *big = malloc((size_t)n + 1);
  if (big == NULL) {
    b->oom = 1;
    return;
  }
  va_start(ap, fmt);
  vsnprintf(big, (size_t)n + 1, fmt, ap);
  va_end(ap);
  mb_put(b, big, (size_t)n);
  free(big);
}

/* Length of the valid UTF-8 sequence at s (n bytes left), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n) {
  unsigned c = s[0];
  size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
  if (len == 0 || len > n || (len == 2 && c < 0xc2) || (len == 4 && c > 0xf4)) return 0;
  for (size_t i = 1; i < len; i++)
    if ((s[i] & 0xc0) != 0x80) return 0;
  if (len == 3 && ((c == 0xe0 && s[1] < 0xa0) || (c == 0xed && s[1] >= 0xa0))) return 0;
  if (len == 4 && ((c == 0xf0 && s[1] < 0x90) || (c == 0xf4 && s[1] >= 0x90))) return 0;
  return len;
}

/* A label value, escaped for the text format; bytes that are not UTF-8
 * become U+FFFD. */
static void mb_label(mbuf *b, const char *s) {
  const unsigned char *p = (const unsigned char *)s;
  size_t n = strlen(s);
  while (n > 0) {
    if (*p == '\\' || *p == '"') {
      char e[2] = {'\\', (char)*p};
      mb_put(b, e, 2);
      p++, n--;
    } else if (*p == '\n') {
      mb_put(b, "\\n", 2);
      p++, n--;
    } else {
      size_t l = utf8_len(p, n);
      if (l == 0) {
        mb_put(b, "\xef\xbf\xbd", 3);
        l = 1;
      } else {
        mb_put(b, (const char *)p, l);
      }
      p += l, n -= l;
    }
  }
}

static void family(mbuf *b, const char *name, const char *type, const char *help) {
  mb_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void sample_u(mbuf *b, const char *name, uint64_t v) {
  mb_printf(b, "%s %llu\n", name, (unsigned long long)v);
}

static void sample_d(mbuf *b, const char *name, double v) {
  mb_printf(b, "%s %.6f\n", name, v);
}

static void one_u(mbuf *b, const char *name, const char *type, const char *help, uint64_t v) {
  family(b, name, type, help);
  sample_u(b, name, v);
}

static void one_d(mbuf *b, const char *name, const char *type, const char *help, double v) {
  family(b, name, type, help);
  sample_d(b, name, v);
}

/* The series of one histogram; labels is "" or `key="value",`. */
static void hist_series(mbuf *b, const char *name, const char *labels, const psd_hist *h) {
  uint64_t cum = 0;
  for (int i = 0; i < PSD_HIST_BUCKETS; i++) {
    cum += h->b[i];
    if (i < PSD_HIST_BUCKETS - 1)
      mb_printf(b, "%s_bucket{%sle=\"%g\"} %llu\n", name, labels, psd_hist_bounds[i],
                (unsigned long long)cum);
    else
      mb_printf(b, "%s_bucket{%sle=\"+Inf\"} %llu\n", name, labels, (unsigned long long)cum);
  }
  size_t ll = strlen(labels);
  /* The labels without the trailing comma, for _sum and _count. */
  char lab[128];
  snprintf(lab, sizeof(lab), "%.*s", ll > 0 ? (int)ll - 1 : 0, labels);
  mb_printf(b, "%s_sum%s%s%s %.9f\n", name, ll ? "{" : "", lab, ll ? "}" : "",
            (double)h->sum_ns / 1e9);
  mb_printf(b, "%s_count%s%s%s %llu\n", name, ll ? "{" : "", lab, ll ? "}" : "",
            (unsigned long long)h->count);
}

static double wall_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- rendering ------------------------------------------------------------------ */

static void render_requests(mbuf *b, psd_server *srv) {
  family(b, "psd_requests_total", "counter",
         "Requests answered (or dropped, their connection gone), by type and result.");
  for (int t = 1; t < PSD_RT_N; t++)
    for (int r = 0; r < PSD_RES_N; r++) {
      /* Every series of the types that carry data is always present (a
       * rate over a counter that appears late misses its first step). */
      uint64_t v = psd_m.requests[t][r];
      if (v == 0 && !(t == PSD_RT_PULL || t == PSD_RT_PUSH || t == PSD_RT_PUSH_PULL)) continue;
      mb_printf(b, "psd_requests_total{type=\"%s\",result=\"%s\"} %llu\n", type_names[t],
                result_names[r], (unsigned long long)v);
    }
  family(b, "psd_request_duration_seconds", "histogram",
         "Time from a request's frame read to its reply queued, held time included.");
  for (int i = 0; i < PSD_LAT_N; i++) {
    char lab[64];
    snprintf(lab, sizeof(lab), "type=\"%s\",", lat_names[i]);
    hist_series(b, "psd_request_duration_seconds", lab, &psd_m.latency[i]);
  }
  one_u(b, "psd_received_bytes_total", "counter", "Bytes read from worker connections.",
        srv->stats.bytes_in);
  one_u(b, "psd_sent_bytes_total", "counter", "Bytes of replies written to worker connections.",
        srv->stats.bytes_out);
  one_u(b, "psd_lane_bytes_total", "counter",
        "Tensor bytes moved through same-host shared-memory lanes, both directions.",
        srv->stats.lane_bytes);
  one_u(b, "psd_lane_operations_total", "counter",
        "Gradients and values moved through same-host shared-memory lanes.", srv->stats.lane_ops);
  one_u(b, "psd_bad_frames_total", "counter",
        "Connections closed for a malformed, oversized or unknown frame.", srv->stats.bad_frames);
  one_u(b, "psd_nonfinite_updates_refused_total", "counter",
        "Updates refused because their result would not be finite.", srv->stats.nonfinite);
  one_u(b, "psd_replies_lost_total", "counter",
        "Replies that could not be queued (out of memory).", srv->outbox.lost);
}

/* A sample of a per-job series: NAME{psd_job="JOB"[,EXTRA]} V. (Not `job`:
 * Prometheus gives that label to the scrape job.) */
static void job_sample(mbuf *b, const char *name, const psd_job *j, const char *extra,
                       unsigned long long v) {
  mb_printf(b, "%s{psd_job=\"%s\"%s%s} %llu\n", name, j->name, extra[0] ? "," : "", extra, v);
}

#define FOR_JOBS(j)                                                  \
  for (psd_link *l_ = srv->jobs.next; l_ != &srv->jobs; l_ = l_->next) \
    for (psd_job *j = psd_link_entry(l_, psd_job, link); j; j = NULL)

static void render_sync(mbuf *b, psd_server *srv) {
  one_u(b, "psd_sync_rounds_total", "counter", "Sync (BSP) rounds completed.", srv->stats.rounds);
  one_u(b, "psd_sync_rounds_pending", "gauge", "Blocks with a sync round waiting for workers.",
        rounds_pending(srv));
  family(b, "psd_sync_round_wait_seconds", "histogram",
         "Time a sync round waits from its first contribution to its completion.");
  hist_series(b, "psd_sync_round_wait_seconds", "", &psd_m.round_wait);
  uint64_t held = 0, ahead = 0;
  FOR_JOBS(j) {
    const psd_group *g = &j->group;
    for (psd_link *l = g->pulls.next; l != &g->pulls; l = l->next) held++;
    if (g->max_ahead > ahead) ahead = g->max_ahead;
  }
  one_u(b, "psd_ssp_held_pulls", "gauge", "SSP pulls held now, waiting for slower workers.", held);
  one_u(b, "psd_ssp_held_pulls_total", "counter", "SSP pulls that had to wait for slower workers.",
        srv->stats.held_pulls);
  one_u(b, "psd_ssp_max_ahead_clocks", "gauge",
        "The largest lead over the slowest worker an SSP pull was granted (any job).", ahead);
  one_u(b, "psd_jobs", "gauge", "Jobs this shard serves (at most --max-jobs).", srv->njobs);

  /* Per job (psd_job label: at most --max-jobs values). */
  family(b, "psd_job_incarnation", "gauge", "The job's current run (1, 2, ...).");
  FOR_JOBS(j) job_sample(b, "psd_job_incarnation", j, "", j->incarnation);
  family(b, "psd_job_ended", "gauge", "1 when the job's current run has ended.");
  FOR_JOBS(j) job_sample(b, "psd_job_ended", j, "", (unsigned long long)j->ended);
  family(b, "psd_job_tensors", "gauge", "The job's tensors.");
  FOR_JOBS(j) job_sample(b, "psd_job_tensors", j, "", j->ntensors);
  family(b, "psd_job_workers", "gauge", "The job's worker count (0 before the first worker).");
  FOR_JOBS(j) job_sample(b, "psd_job_workers", j, "", j->group.configured ? j->group.num_workers : 0);
  family(b, "psd_job_staleness", "gauge", "The job's staleness bound: -1 async, 0 sync, s SSP.");
  FOR_JOBS(j)
    mb_printf(b, "psd_job_staleness{psd_job=\"%s\"} %d\n", j->name,
              j->group.configured ? j->group.staleness : -1);
  family(b, "psd_workers_live", "gauge", "Workers heard from within --worker-timeout.");
  family(b, "psd_workers_joined", "gauge", "Ranks that have joined the job's run at least once.");
  family(b, "psd_worker_joins_total", "counter", "Workers that joined or rejoined the job's run.");
  FOR_JOBS(j) {
    const psd_group *g = &j->group;
    uint64_t live = 0, joined = 0;
    for (uint32_t r = 0; g->configured && r < g->num_workers; r++) {
      live += g->w[r].live != 0;
      joined += g->w[r].joined != 0;
    }
    job_sample(b, "psd_workers_live", j, "", live);
    job_sample(b, "psd_workers_joined", j, "", joined);
    job_sample(b, "psd_worker_joins_total", j, "", g->joins);
  }
  family(b, "psd_worker_departures_total", "counter",
         "Workers that left the job's run: said goodbye (ps_close), or silent past "
         "--worker-timeout.");
  FOR_JOBS(j) {
    job_sample(b, "psd_worker_departures_total", j, "reason=\"goodbye\"", j->group.leaves);
    job_sample(b, "psd_worker_departures_total", j, "reason=\"timeout\"",
               j->group.departures - j->group.leaves);
  }
  family(b, "psd_worker_clock", "gauge", "Each joined worker's clock (iterations finished).");
  char rank[32];
  FOR_JOBS(j) {
    const psd_group *g = &j->group;
    for (uint32_t r = 0; g->configured && r < g->num_workers; r++)
      if (g->w[r].joined) {
        snprintf(rank, sizeof(rank), "rank=\"%u\"", r);
        job_sample(b, "psd_worker_clock", j, rank, g->w[r].clock);
      }
  }
  family(b, "psd_worker_lag_clocks", "gauge",
         "Each live worker's clocks behind the fastest live worker of its job.");
  FOR_JOBS(j) {
    const psd_group *g = &j->group;
    uint64_t fastest = 0;
    for (uint32_t r = 0; g->configured && r < g->num_workers; r++)
      if (g->w[r].live && g->w[r].clock > fastest) fastest = g->w[r].clock;
    for (uint32_t r = 0; g->configured && r < g->num_workers; r++)
      if (g->w[r].live) {
        snprintf(rank, sizeof(rank), "rank=\"%u\"", r);
        job_sample(b, "psd_worker_lag_clocks", j, rank, fastest - g->w[r].clock);
      }
  }
}

static void render_state(mbuf *b, psd_server *srv) {
  one_u(b, "psd_connections", "gauge", "Open client connections.", srv->nconns);
  one_u(b, "psd_connections_accepted_total", "counter", "Client connections accepted.",
        psd_m.conns_accepted);
  one_u(b, "psd_lanes", "gauge", "Same-host shared-memory lanes open.", srv->stats.lanes);
  uint64_t vmin, vmax, vsum, blocks = 0;
  tensor_versions(srv, &vmin, &vmax, &vsum, &blocks);
  one_u(b, "psd_tensors", "gauge", "Tensors this shard knows.", srv->ntensors);
  one_u(b, "psd_blocks_touched", "gauge", "Blocks this shard holds in memory.", blocks);
  one_u(b, "psd_block_updates_total", "counter",
        "Optimizer updates applied, summed over the blocks held.", vsum);
  static const char *const cats[PSD_MEM_NCAT] = {"tensors", "rounds", "held", "output",
                                                 "input",   "lanes",  "scratch", "meta",
                                                 "tables"};
  family(b, "psd_memory_bytes", "gauge",
         "Memory held, by category, charged against --max-memory (psd_memory_limit_bytes).");
  for (int i = 0; i < PSD_MEM_NCAT; i++)
    mb_printf(b, "psd_memory_bytes{category=\"%s\"} %llu\n", cats[i],
              (unsigned long long)mem_used_by((psd_mem_cat)i));
  one_u(b, "psd_memory_limit_bytes", "gauge", "The memory ceiling, --max-memory.", mem_limit());
  one_u(b, "psd_memory_used_bytes", "gauge", "Memory held, all categories.", mem_used());
  one_u(b, "psd_memory_peak_bytes", "gauge", "The most memory ever held at once.", mem_peak());
  one_u(b, "psd_memory_refusals_total", "counter",
        "Requests refused (RESOURCE_EXHAUSTED) because they would cross the ceiling.",
        mem_refusals());
  if (srv->cfg.metrics_tensor_labels) {
    family(b, "psd_tensor_elements", "gauge", "Elements of each tensor (all shards).");
    FOR_JOBS(j) for (size_t i = 0; i < j->table_cap; i++)
      for (psd_tensor *t = j->table[i]; t; t = t->next) {
        mb_printf(b, "psd_tensor_elements{psd_job=\"%s\",tensor=\"", j->name);
        mb_label(b, t->name);
        mb_printf(b, "\"} %llu\n", (unsigned long long)t->numel);
      }
    family(b, "psd_tensor_blocks", "gauge", "Blocks of each tensor (all shards).");
    FOR_JOBS(j) for (size_t i = 0; i < j->table_cap; i++)
      for (psd_tensor *t = j->table[i]; t; t = t->next) {
        mb_printf(b, "psd_tensor_blocks{psd_job=\"%s\",tensor=\"", j->name);
        mb_label(b, t->name);
        mb_printf(b, "\"} %llu\n", (unsigned long long)t->nblocks);
      }
  }
}

static void render_loop(mbuf *b, psd_server *srv) {
  /* server.c's turn figures: a turn's busy time, from its first callback to
   * the loop's next wait (how long any request waited to be looked at). */
  static const double edges[8] = {0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 1};
  family(b, "psd_loop_stall_seconds", "histogram",
         "Busy time of each turn of the event loop (each bucket counts turns strictly below "
         "its bound).");
  uint64_t cum = 0;
  for (int i = 0; i < 9; i++) {
    cum += srv->loop_hist[i];
    if (i < 8) mb_printf(b, "psd_loop_stall_seconds_bucket{le=\"%g\"} %llu\n", edges[i],
                         (unsigned long long)cum);
    else mb_printf(b, "psd_loop_stall_seconds_bucket{le=\"+Inf\"} %llu\n", (unsigned long long)cum);
  }
  mb_printf(b, "psd_loop_stall_seconds_sum %.6f\n", (double)srv->loop_busy_us_sum / 1e6);
  mb_printf(b, "psd_loop_stall_seconds_count %llu\n", (unsigned long long)cum);
  one_d(b, "psd_loop_worst_stall_seconds", "gauge", "The longest turn of the event loop.",
        (double)srv->loop_worst_us / 1e6);
  one_u(b, "psd_loop_yields_total", "counter",
        "Times a connection's requests went on at the next turn (the 3 ms turn budget).",
        srv->stats.yields);
  one_u(b, "psd_connection_pauses_total", "counter",
        "Times a connection stopped being read: its unread replies passed --out-cap.",
        srv->stats.pauses);
  family(b, "psd_connections_closed_total", "counter",
         "Connections psd closed for a limit, by reason.");
  static const char *const why[5] = {"hello_timeout", "idle_timeout", "frame_timeout",
                                     "input_memory", "write_error"};
  const uint64_t vals[5] = {srv->stats.closed_hello, srv->stats.closed_idle,
                            srv->stats.closed_frame, srv->stats.closed_input,
                            srv->stats.closed_write};
  for (int i = 0; i < 5; i++)
    mb_printf(b, "psd_connections_closed_total{reason=\"%s\"} %llu\n", why[i],
              (unsigned long long)vals[i]);
  one_u(b, "psd_frames_dropped_total", "counter",
        "Request frames received but never run: their connection went away first.",
        srv->stats.dropped_requests);
}

static void render_auth(mbuf *b, psd_server *srv) {
  family(b, "psd_authentications_total", "counter",
         "Hellos whose role proof (or session resume) was checked, by result.");
  mb_printf(b, "psd_authentications_total{result=\"accepted\"} %llu\n",
            (unsigned long long)srv->stats.auth_ok);
  mb_printf(b, "psd_authentications_total{result=\"failed\"} %llu\n",
            (unsigned long long)srv->stats.auth_failed);
  one_u(b, "psd_requests_denied_total", "counter",
        "Requests refused because the connection's role may not make them.", srv->stats.denied);
  family(b, "psd_connections_refused_total", "counter",
         "Connections refused at accept, by reason: max_clients (past --max-clients, or shed "
         "when file descriptors run out), auth_ban (an address whose authentications kept "
         "failing), accept_error.");
  mb_printf(b, "psd_connections_refused_total{reason=\"max_clients\"} %llu\n",
            (unsigned long long)srv->stats.clients_refused);
  mb_printf(b, "psd_connections_refused_total{reason=\"auth_ban\"} %llu\n",
            (unsigned long long)srv->stats.auth_refused);
  mb_printf(b, "psd_connections_refused_total{reason=\"accept_error\"} %llu\n",
            (unsigned long long)srv->stats.accept_errors);
  one_u(b, "psd_auth_addresses_refused", "gauge",
        "Addresses whose new connections are refused now (failed authentications).",
        auth_banned_count(srv, psd_now_ms()));
  one_u(b, "psd_sessions", "gauge", "Sessions this shard holds.", srv->sessions.len);
  family(b, "psd_auth_role_enabled", "gauge", "1 for each role with a token (none: protected mode).");
  static const char *const roles[PSA_NROLES] = {"reader", "worker", "admin"};
  for (int r = 0; r < PSA_NROLES; r++)
    mb_printf(b, "psd_auth_role_enabled{role=\"%s\"} %d\n", roles[r],
              srv->cfg.token_len[r] > 0);
}

static void render_ckpt(mbuf *b, psd_server *srv) {
  one_u(b, "psd_checkpoint_enabled", "gauge", "1 when --data-dir is set.", srv->cfg.data_dir[0] != 0);
  one_u(b, "psd_checkpoints_total", "counter", "Background checkpoints written.", srv->ckpt_written);
  one_u(b, "psd_checkpoint_failures_total", "counter", "Checkpoints that failed.",
        psd_m.ckpt_failures);
  one_u(b, "psd_checkpoint_in_progress", "gauge", "1 while a background save runs.",
        srv->ckpt_child != 0);
  one_d(b, "psd_checkpoint_last_duration_seconds", "gauge",
        "How long the last good background checkpoint took.", srv->ckpt_last_ms / 1000.0);
  one_u(b, "psd_checkpoint_last_size_bytes", "gauge", "Size of the last good checkpoint file.",
        psd_m.ckpt_last_bytes);
  one_d(b, "psd_checkpoint_last_success_timestamp_seconds", "gauge",
        "Unix time of the last good checkpoint (0: none yet).", psd_m.ckpt_last_ok_unix);
  if (psd_m.ckpt_last_ok_unix > 0)
    one_d(b, "psd_checkpoint_age_seconds", "gauge", "Seconds since the last good checkpoint.",
          wall_now() - psd_m.ckpt_last_ok_unix);
}

char *metrics_render(psd_server *srv, size_t *len) {
  mbuf b = {0};
  double up = (double)(psd_now_ms() - srv->start_ms) / 1000.0;
  family(&b, "psd_build_info", "gauge", "Always 1; the version is a label.");
  mb_printf(&b, "psd_build_info{version=\"%s\",protocol=\"%d\"} 1\n", PS_VERSION_STRING,
            PS_PROTOCOL_VERSION);
  one_d(&b, "psd_start_time_seconds", "gauge", "Unix time psd started.", wall_now() - up);
  one_d(&b, "psd_uptime_seconds", "gauge", "Seconds since psd started.", up);
  family(&b, "psd_shard_index", "gauge", "This shard's place in the server list (-1: not yet).");
  mb_printf(&b, "psd_shard_index %d\n", srv->have_list ? srv->shard_index : -1);
  render_requests(&b, srv);
  render_sync(&b, srv);
  render_state(&b, srv);
  render_loop(&b, srv);
  render_auth(&b, srv);
  render_ckpt(&b, srv);
  one_u(&b, "psd_metrics_scrapes_total", "counter", "Scrapes of this endpoint answered.",
        ++psd_m.scrapes);
  one_u(&b, "psd_metrics_refused_total", "counter",
        "Scrape connections closed at accept: too many at once.", psd_m.http_refused);
  if (b.oom) {
    free(b.p);
    return NULL;
  }
  *len = b.len;
  return b.p;
}

static void hist_json(mbuf *b, const char *name, const psd_hist *h) {
  double p50 = metrics_quantile(h, 0.5), p99 = metrics_quantile(h, 0.99);
  /* The quantiles are estimates: to 0.1 us. */
  mb_printf(b, "\"%s\":{\"count\":%llu,\"sum_s\":%s,\"p50_ms\":%s,\"p99_ms\":%s,\"buckets\":[",
            name, (unsigned long long)h->count, psn_num((double)h->sum_ns / 1e9).s,
            psn_num_at(isnan(p50) ? 0.0 : p50 * 1e3, 4).s,
            psn_num_at(isnan(p99) ? 0.0 : p99 * 1e3, 4).s);
  for (int i = 0; i < PSD_HIST_BUCKETS; i++)
    mb_printf(b, "%s%llu", i ? "," : "", (unsigned long long)h->b[i]);
  mb_puts(b, "]}");
}

char *metrics_stats_json(void) {
  mbuf b = {0};
  mb_puts(&b, "{\"bounds_ms\":[");
  for (int i = 0; i < PSD_HIST_BUCKETS - 1; i++)
    mb_printf(&b, "%s%s", i ? "," : "", psn_num_at(psd_hist_bounds[i] * 1e3, 3).s);
  mb_puts(&b, "],");
  for (int i = 0; i < PSD_LAT_N; i++) {
    hist_json(&b, lat_names[i], &psd_m.latency[i]);
    mb_puts(&b, ",");
  }
  hist_json(&b, "round_wait", &psd_m.round_wait);
  mb_puts(&b, "}");
  if (b.oom) {
    free(b.p);
    return NULL;
  }
  return b.p;
}

/* ---- the HTTP endpoint ---------------------------------------------------------------- */

#define HTTP_MAX_REQUEST 8192   /* bytes of request line, headers and body */
#define HTTP_DEADLINE_MS 10000  /* from accept to a whole request */
#define HTTP_MAX_CONNS 16
#define HTTP_AUTH_MAX 4200

typedef struct hconn {
  uv_tcp_t tcp;
  uv_timer_t timer;
  uv_shutdown_t shut;
  uv_write_t wreq;
  psd_link link;
  psd_server *srv;
  http_parser parser;
  char rbuf[2048];
  size_t got;             /* request bytes read so far */
  char url[1024];
  size_t url_len;
  int url_long;
  char field[32];
  size_t field_len;
  int in_value;           /* the last callback was a header value */
  int is_auth;            /* the header being read is Authorization */
  char auth[HTTP_AUTH_MAX];
  size_t auth_len;
  int auth_long;
  int complete;
  int answered;
  int open_handles;
  char *out;
} hconn;

static struct {
  uv_tcp_t listener;
  int listening;
  psd_link conns;
  uint64_t nconns;
  uint8_t token[HTTP_AUTH_MAX];
  size_t token_len;
} H;

static http_parser_settings settings;

void metrics_set_token(const uint8_t *tok, size_t len) {
  if (len > sizeof(H.token)) len = sizeof(H.token);
  memcpy(H.token, tok, len);
  H.token_len = len;
}

static void hconn_handle_closed(uv_handle_t *h) {
  hconn *hc = h->data;
  if (--hc->open_handles > 0) return;
  free(hc->out);
  free(hc);
}

static void hconn_close(hconn *hc) {
  if (uv_is_closing((uv_handle_t *)&hc->tcp)) return;
  psd_link_remove(&hc->link);
  H.nconns--;
  uv_timer_stop(&hc->timer);
  uv_close((uv_handle_t *)&hc->timer, hconn_handle_closed);
  uv_close((uv_handle_t *)&hc->tcp, hconn_handle_closed);
}

static void shutdown_cb(uv_shutdown_t *req, int status) {
  (void)status;
  hconn_close(req->data);
}

static void write_cb(uv_write_t *req, int status) {
  hconn *hc = req->data;
  if (status != 0 || uv_is_closing((uv_handle_t *)&hc->tcp)) {
    hconn_close(hc);
    return;
  }
  hc->shut.data = hc;
  if (uv_shutdown(&hc->shut, (uv_stream_t *)&hc->tcp, shutdown_cb) != 0) hconn_close(hc);
}

static void respond(hconn *hc, int code, const char *reason, const char *extra_headers,
                    const char *ctype, const char *body, size_t blen, int head_only) {
  if (hc->answered) return;
  hc->answered = 1;
  uv_read_stop((uv_stream_t *)&hc->tcp);
  uv_timer_stop(&hc->timer);
  char head[512];
  int hl = snprintf(head, sizeof(head),
                    "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                    "Cache-Control: no-store\r\n%sConnection: close\r\n\r\n",
                    code, reason, ctype, blen, extra_headers);
  size_t total = (size_t)hl + (head_only ? 0 : blen);
  hc->out = malloc(total);
  if (hc->out == NULL) {
    hconn_close(hc);
    return;
  }
  memcpy(hc->out, head, (size_t)hl);
  if (!head_only && blen) memcpy(hc->out + hl, body, blen);
  uv_buf_t buf = uv_buf_init(hc->out, (unsigned)total);
  hc->wreq.data = hc;
  if (uv_write(&hc->wreq, (uv_stream_t *)&hc->tcp, &buf, 1, write_cb) != 0) hconn_close(hc);
}

static void respond_text(hconn *hc, int code, const char *reason, const char *extra,
                         const char *msg) {
  respond(hc, code, reason, extra, "text/plain; charset=utf-8", msg, strlen(msg), 0);
}

/* Is the Authorization header "Bearer <reader token>"? Constant time in
 * the token's bytes. */
static int auth_ok(const hconn *hc) {
  if (H.token_len == 0 || hc->auth_long) return 0;
  const char *a = hc->auth;
  size_t n = hc->auth_len;
  if (n < 7 || strncasecmp(a, "Bearer ", 7) != 0) return 0;
  a += 7, n -= 7;
  while (n > 0 && *a == ' ') a++, n--;
  while (n > 0 && (a[n - 1] == ' ' || a[n - 1] == '\t')) n--;
  if (n != H.token_len) return 0;
  return sodium_memcmp(a, H.token, n) == 0;
}

static void answer(hconn *hc) {
  psd_server *srv = hc->srv;
  struct http_parser_url u;
  http_parser_url_init(&u);
  hc->url[hc->url_len] = '\0';
  int head = hc->parser.method == HTTP_HEAD;
  if (hc->url_long || http_parser_parse_url(hc->url, hc->url_len, 0, &u) != 0 ||
      !(u.field_set & (1 << UF_PATH))) {
    respond_text(hc, 400, "Bad Request", "", "bad request target\n");
    return;
  }
  const char *path = hc->url + u.field_data[UF_PATH].off;
  size_t plen = u.field_data[UF_PATH].len;
  if (plen != 8 || memcmp(path, "/metrics", 8) != 0) {
    respond_text(hc, 404, "Not Found", "", "not found; the metrics are at /metrics\n");
    return;
  }
  if (hc->parser.method != HTTP_GET && !head) {
    respond_text(hc, 405, "Method Not Allowed", "Allow: GET, HEAD\r\n", "use GET\n");
    return;
  }
  if (srv->cfg.metrics_auth && !auth_ok(hc)) {
    respond_text(hc, 401, "Unauthorized", "WWW-Authenticate: Bearer realm=\"psd\"\r\n",
                 "this endpoint wants the reader token: Authorization: Bearer <token>\n");
    return;
  }
  size_t len;
  char *text = metrics_render(srv, &len);
  if (text == NULL) {
    respond_text(hc, 500, "Internal Server Error", "", "out of memory\n");
    return;
  }
  respond(hc, 200, "OK", "", "text/plain; version=0.0.4; charset=utf-8", text, len, head);
  free(text);
}

static int on_url(http_parser *p, const char *at, size_t n) {
  hconn *hc = p->data;
  if (hc->url_len + n >= sizeof(hc->url)) {
    hc->url_long = 1;
    return 0;
  }
  memcpy(hc->url + hc->url_len, at, n);
  hc->url_len += n;
  return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t n) {
  hconn *hc = p->data;
  if (hc->in_value) {
    hc->in_value = 0;
    hc->field_len = 0;
  }
  for (size_t i = 0; i < n; i++)
    if (hc->field_len < sizeof(hc->field) - 1) hc->field[hc->field_len++] = at[i];
    else hc->field_len = sizeof(hc->field); /* too long: no header we know */
  return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t n) {
  hconn *hc = p->data;
  if (!hc->in_value) {
    hc->in_value = 1;
    hc->is_auth = hc->field_len == 13 && strncasecmp(hc->field, "authorization", 13) == 0;
    if (hc->is_auth) hc->auth_len = 0, hc->auth_long = 0;
  }
  if (!hc->is_auth) return 0;
  if (hc->auth_len + n > sizeof(hc->auth)) {
    hc->auth_long = 1;
    return 0;
  }
  memcpy(hc->auth + hc->auth_len, at, n);
  hc->auth_len += n;
  return 0;
}

static int on_message_complete(http_parser *p) {
  hconn *hc = p->data;
  hc->complete = 1;
  http_parser_pause(p, 1); /* one request per connection */
  return 0;
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  hconn *hc = h->data;
  (void)suggested;
  *buf = uv_buf_init(hc->rbuf, sizeof(hc->rbuf));
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  hconn *hc = s->data;
  if (nread < 0) {
    hconn_close(hc);
    return;
  }
  if (nread == 0 || hc->answered) return;
  size_t take = (size_t)nread;
  if (hc->got + take > HTTP_MAX_REQUEST) {
    respond_text(hc, 431, "Request Header Fields Too Large", "",
                 "request larger than 8192 bytes\n");
    return;
  }
  hc->got += take;
  size_t used = http_parser_execute(&hc->parser, &settings, buf->base, take);
  enum http_errno e = HTTP_PARSER_ERRNO(&hc->parser);
  if (hc->complete) {
    answer(hc);
  } else if (e != HPE_OK || used != take) {
    respond_text(hc, 400, "Bad Request", "", "malformed HTTP request\n");
  }
}

static void deadline_cb(uv_timer_t *t) {
  hconn *hc = t->data;
  if (!hc->answered) respond_text(hc, 408, "Request Timeout", "", "request not received in time\n");
}

static void on_scrape(uv_stream_t *server, int status) {
  psd_server *srv = server->data;
  if (status < 0) return;
  hconn *hc = calloc(1, sizeof(*hc));
  if (hc == NULL || H.nconns >= HTTP_MAX_CONNS) {
    /* Accept and close: an unaccepted connection would stop libuv
     * polling the listener. */
    free(hc);
    psd_m.http_refused++;
    uv_tcp_t *t = malloc(sizeof(*t));
    if (t == NULL) return;
    uv_tcp_init(srv->loop, t);
    if (uv_accept(server, (uv_stream_t *)t) != 0) log_debug("metrics: accept failed");
    uv_close((uv_handle_t *)t, (uv_close_cb)free);
    return;
  }
  hc->srv = srv;
  uv_tcp_init(srv->loop, &hc->tcp);
  uv_timer_init(srv->loop, &hc->timer);
  hc->tcp.data = hc->timer.data = hc;
  hc->open_handles = 2;
  psd_link_insert_tail(&H.conns, &hc->link);
  H.nconns++;
  if (uv_accept(server, (uv_stream_t *)&hc->tcp) != 0) {
    hconn_close(hc);
    return;
  }
  http_parser_init(&hc->parser, HTTP_REQUEST);
  hc->parser.data = hc;
  uv_timer_start(&hc->timer, deadline_cb, HTTP_DEADLINE_MS, 0);
  uv_read_start((uv_stream_t *)&hc->tcp, alloc_cb, read_cb);
}

int metrics_start(psd_server *srv) {
  psd_link_init(&H.conns);
  if (srv->cfg.metrics_listen[0] == '\0') return 0;
  if (srv->cfg.metrics_auth && H.token_len == 0) {
    log_error("--metrics-auth needs the reader token (--token-file with a reader token)");
    return -1;
  }
  if (sodium_init() < 0) {
    log_error("libsodium failed to initialize");
    return -1;
  }
  http_parser_settings_init(&settings);
  settings.on_url = on_url;
  settings.on_header_field = on_header_field;
  settings.on_header_value = on_header_value;
  settings.on_message_complete = on_message_complete;

  struct sockaddr_storage addr;
  if (netaddr_resolve(srv->loop, "--metrics-listen", srv->cfg.metrics_listen, &addr) != 0)
    return -1;
  uv_tcp_init(srv->loop, &H.listener);
  H.listener.data = srv;
  int r = uv_tcp_bind(&H.listener, (struct sockaddr *)&addr, 0);
  if (r == 0) r = uv_listen((uv_stream_t *)&H.listener, 64, on_scrape);
  if (r != 0) {
    log_error("cannot listen for metrics on %s: %s", srv->cfg.metrics_listen, uv_strerror(r));
    uv_close((uv_handle_t *)&H.listener, NULL);
    return -1;
  }
  H.listening = 1;
  char where[NETADDR_NAME_MAX];
  netaddr_bound(&H.listener, where, sizeof(where));
  const char *fields[] = {"address", where, "path", "/metrics", "auth",
                          srv->cfg.metrics_auth ? "bearer" : "none", NULL};
  plog_write_kv(PLOG_INFO, fields, "metrics listening on %s", where);
  return 0;
}

void metrics_stop(psd_server *srv) {
  (void)srv;
  if (!H.listening) return;
  H.listening = 0;
  uv_close((uv_handle_t *)&H.listener, NULL);
  while (!psd_link_empty(&H.conns)) hconn_close(psd_link_entry(H.conns.next, hconn, link));
}
