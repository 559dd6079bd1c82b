/*
 * test_sync.c -- the shard's state machines driven directly, without
 * sockets: sync rounds, SSP holds, barriers, departures and rejoins, and
 * the refusal of updates whose result is not finite. Connections are plain
 * structs that only carry a rank; the replies are read from the outbox,
 * exactly as server.c would deliver them. Time is an argument (group_tick's
 * `now`), so nothing here depends on the machine's speed.
 */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check_main.h"
#include "apply.h"
#include "dedupe.h"
#include "group.h"
#include "job.h"
#include "log.h"
#include "metrics.h"
#include "outbox.h"
#include "psmath.h"
#include "round.h"
#include "server.h"
#include "store.h"
#include "tensor.h"
#include "waiter.h"

#define NMAX 4
#define N 1000 /* elements of the test tensor (one block) */

static psd_server srv;
static psd_conn conns[NMAX];
static psd_tensor *tensor;
static psd_job *job;
static uint64_t now;

static void setup_job(uint32_t nw, int staleness, ps_optim_kind kind) {
  char err[256];
  memset(&srv, 0, sizeof(srv));
  srv.cfg.worker_timeout = 10;
  srv.cfg.default_block = 1 << 20;
  psd_link_init(&srv.jobs);
  job = job_alloc(PSD_JOB_DEFAULT);
  ck_assert_ptr_nonnull(job);
  job_adopt(&srv, job);
  outbox_init(&srv.outbox);
  ck_assert_int_eq(psp_servers_parse(&srv.servers, "127.0.0.1:7070", err, sizeof(err)), 0);
  srv.have_list = 1;
  srv.shard_index = 0;
  ps_tensor_spec spec;
  ps_tensor_spec_init(&spec, PS_INIT_GLOROT_UNIFORM, kind);
  spec.optim.lr = 0.5;
  spec.block_size = N;
  uint64_t shape[1] = {N};
  tensor = tensor_insert(&srv, job, "w", shape, 1, &spec, NULL);
  ck_assert_ptr_nonnull(tensor);
  psd_block *b0;
  ck_assert_int_eq(tensor_block_get(&srv, tensor, 0, 0, &b0), TB_OK);
  now = 1000;
  for (uint32_t r = 0; r < nw; r++) {
    memset(&conns[r], 0, sizeof(conns[r]));
    conns[r].srv = &srv;
    conns[r].rank = (int)r;
    conns[r].worker_id = 100 + r;
    conns[r].job = job;
    psd_link_init(&conns[r].waiters);
    ck_assert_int_ge(group_hello(&srv, job, (int)r, nw, staleness, 100 + r, now, err,
                                 sizeof(err)),
                     0);
  }
}

static void teardown_job(void) {
  for (int r = 0; r < NMAX; r++)
    while (conns[r].srv && !psd_link_empty(&conns[r].waiters)) {
      psd_waiter *w = psd_link_entry(conns[r].waiters.next, psd_waiter, conn_link);
      if (w->kind == PSD_WAIT_PUSH) round_drop_waiter(w);
      waiter_free(w);
    }
  memset(conns, 0, sizeof(conns));
  outbox_free(&srv.outbox);
  jobs_free(&srv, &srv.jobs);
  tensor_vstat_free(&srv);
  psp_servers_free(&srv.servers);
  apply_buffers_free(&srv);
}

static psd_block *block0(void) { return tensor_block(tensor, 0); }

/* Rank r's gradient for round k: distinct, exactly representable values. */
static void grad(float *g, int r, int k) {
  for (int i = 0; i < N; i++) g[i] = (float)((i % 7) - 3) * 0.25f + (float)r * 0.125f + (float)k;
}

/* What one process applying the rank-ordered average of ranks[] would
 * hold: w - lr * avg (sgd). */
static void reference(float *w, const int *ranks, int n, int k) {
  float acc[N], g[N];
  for (int j = 0; j < n; j++) {
    grad(g, ranks[j], k);
    for (int i = 0; i < N; i++) acc[i] = j == 0 ? g[i] : acc[i] + g[i];
  }
  for (int i = 0; i < N; i++) {
    acc[i] /= (float)n;
    w[i] -= 0.5f * acc[i];
  }
}

static void push(int r, int k, uint64_t clock) {
  float g[N];
  grad(g, r, k);
  psd_conn *c = &conns[r];
  uint64_t seq = (uint64_t)k + 1;
  if (group_clock(job, r, clock) & GROUP_CHANGED) rounds_recheck(&srv, job);
  round_add(&srv, c, 1000 + (uint64_t)r, block0(), g, 1.0f, seq, clock, 1, 0);
}

/* The outbox holds exactly one block reply per rank in ranks[], at
 * `version`, carrying `w`'s values. */
static void expect_replies(const int *ranks, int n, uint64_t version, const float *w) {
  ck_assert_uint_eq(srv.outbox.len, (size_t)n);
  for (int j = 0; j < n; j++) {
    int found = 0;
    for (size_t i = 0; i < srv.outbox.len; i++) {
      psd_ob_rec *rec = &srv.outbox.r[i];
      if (rec->conn != &conns[ranks[j]]) continue;
      found = 1;
      ck_assert_int_eq(rec->kind, PSD_OB_BLOCK);
      ck_assert_uint_eq(rec->id, 1000 + (uint64_t)ranks[j]);
      ck_assert_uint_eq(rec->version, version);
      const float *v = rec->snap ? rec->snap : rec->block->w;
      ck_assert_int_eq(memcmp(v, w, N * sizeof(float)), 0);
    }
    ck_assert_msg(found, "no reply for rank %d", ranks[j]);
  }
}

/* ---- rounds -------------------------------------------------------------- */

/* Every arrival order of 4 workers gives the same bytes: the rank-ordered
 * average, applied once, every contributor answered only at the end. */
START_TEST(round_every_order) {
  int perm[4] = {0, 1, 2, 3};
  int count = 0;
  /* All 24 permutations (Heap's algorithm, iterative). */
  int c[4] = {0, 0, 0, 0}, i = 0;
  for (;;) {
    setup_job(4, 0, PS_OPT_SGD);
    float w[N];
    memcpy(w, block0()->w, sizeof(w));
    int all[4] = {0, 1, 2, 3};
    reference(w, all, 4, 0);
    for (int j = 0; j < 4; j++) {
      push(perm[j], 0, 0);
      if (j < 3) ck_assert_uint_eq(srv.outbox.len, 0);
    }
    expect_replies(all, 4, 1, w);
    ck_assert_int_eq(memcmp(block0()->w, w, sizeof(w)), 0);
    ck_assert_uint_eq(block0()->ncontrib, 0);
    ck_assert(psd_link_empty(&job->rounds));
    teardown_job();
    count++;
    while (i < 4 && c[i] >= i) c[i++] = 0;
    if (i >= 4) break;
    int a = (i % 2 == 0) ? 0 : c[i], t = perm[a];
    perm[a] = perm[i];
    perm[i] = t;
    c[i]++;
    i = 1;
  }
  ck_assert_int_eq(count, 24);
}
END_TEST

/* A worker that departs mid-round stops being waited for: the round
 * completes with the others' average. */
START_TEST(round_departure) {
  setup_job(3, 0, PS_OPT_SGD);
  float w[N];
  memcpy(w, block0()->w, sizeof(w));
  push(0, 0, 0);
  push(2, 0, 0);
  ck_assert_uint_eq(srv.outbox.len, 0);
  /* Ranks 0 and 2 keep talking; rank 1 falls silent past the timeout. */
  now += 10001;
  group_seen(job, 0, 100, now);
  group_seen(job, 2, 102, now);
  ck_assert_int_eq(group_tick(&srv, job, now) & GROUP_CHANGED, GROUP_CHANGED);
  rounds_recheck(&srv, job);
  int got[2] = {0, 2};
  reference(w, got, 2, 0);
  expect_replies(got, 2, 1, w);
  ck_assert_uint_eq(job->group.departures, 1);
  teardown_job();
}
END_TEST

/* A departed worker that comes back is waited for again. */
START_TEST(round_rejoin) {
  setup_job(2, 0, PS_OPT_SGD);
  now += 10001;
  group_seen(job, 0, 100, now);
  if (group_tick(&srv, job, now) & GROUP_CHANGED) rounds_recheck(&srv, job);
  ck_assert(!group_live(&job->group, 1));
  push(0, 0, 0);
  ck_assert_uint_eq(srv.outbox.len, 1); /* alone: applied at once */
  outbox_clear(&srv.outbox);
  ck_assert_int_eq(group_seen(job, 1, 101, now), GROUP_CHANGED);
  push(0, 1, 1);
  ck_assert_uint_eq(srv.outbox.len, 0); /* waits for the rejoined rank */
  push(1, 1, 1);
  ck_assert_uint_eq(srv.outbox.len, 2);
  ck_assert_uint_eq(block0()->version, 2);
  teardown_job();
}
END_TEST

/* A contributor's connection closes mid-round: its contribution stays, the
 * round waits for its resend (the worker is live), and the resend gets the
 * round's reply. */
START_TEST(round_resend_after_close) {
  setup_job(2, 0, PS_OPT_SGD);
  push(0, 0, 0);
  psd_waiter *w0 = psd_link_entry(conns[0].waiters.next, psd_waiter, conn_link);
  round_drop_waiter(w0);
  waiter_free(w0);
  push(1, 0, 0);
  ck_assert_uint_eq(srv.outbox.len, 0); /* waits for rank 0's resend */
  ck_assert_int_eq(round_resend(&srv, &conns[0], 1000, block0(), 1, 1, 0), 1);
  ck_assert_uint_eq(srv.outbox.len, 2);
  ck_assert_uint_eq(block0()->version, 1);
  /* A second resend is a duplicate, not a contribution. */
  ck_assert_int_eq(round_resend(&srv, &conns[0], 1000, block0(), 1, 1, 0), 0);
  teardown_job();
}
END_TEST

/* Two rounds of one block complete in one call: the first round's replies
 * keep the first round's values (the outbox copies them before the block
 * changes again). */
START_TEST(round_two_in_one_call) {
  setup_job(2, 0, PS_OPT_SGD);
  float w1[N], w2[N];
  memcpy(w1, block0()->w, sizeof(w1));
  push(1, 0, 0);                   /* rank 1 at clock 0; rank 0 has not pushed */
  ck_assert_int_eq(group_clock(job, 1, 2), GROUP_CHANGED); /* rank 1 moves on */
  rounds_recheck(&srv, job);
  ck_assert_uint_eq(srv.outbox.len, 0); /* round 0 still waits for rank 0 */
  push(0, 1, 1);                   /* rank 0 skips round 0, pushes at clock 1 */
  int r1[1] = {1}, r0[1] = {0};
  reference(w1, r1, 1, 0);
  memcpy(w2, w1, sizeof(w2));
  reference(w2, r0, 1, 1);
  ck_assert_uint_eq(block0()->version, 2);
  ck_assert_uint_eq(srv.outbox.len, 2);
  for (size_t i = 0; i < 2; i++) {
    psd_ob_rec *rec = &srv.outbox.r[i];
    const float *v = rec->snap ? rec->snap : rec->block->w;
    const float *want = rec->conn == &conns[1] ? w1 : w2;
    ck_assert_uint_eq(rec->version, rec->conn == &conns[1] ? 1 : 2);
    ck_assert_int_eq(memcmp(v, want, sizeof(w1)), 0);
  }
  teardown_job();
}
END_TEST

/* ---- SSP holds and barriers --------------------------------------------- */

START_TEST(ssp_hold_and_release) {
  setup_job(2, 1, PS_OPT_SGD);
  group_clock(job, 0, 3);
  group_clock(job, 1, 1);
  ck_assert(group_pull_blocked(&job->group, 0, 3)); /* 1 + 1 < 3 */
  group_hold_pull(&srv, job, &conns[0], 7, block0(), 3, 0);
  ck_assert_uint_eq(srv.outbox.len, 0);
  ck_assert_int_eq(group_clock(job, 1, 2), GROUP_CHANGED);
  /* Released pulls are answered a slice per loop turn. */
  ck_assert_uint_eq(srv.outbox.len, 0);
  ck_assert_int_eq(group_answer_ready(&srv, job, UINT64_MAX, 1000), 0);
  ck_assert_uint_eq(srv.outbox.len, 1);
  ck_assert_uint_eq(srv.outbox.r[0].id, 7);
  ck_assert_int_eq(srv.outbox.r[0].kind, PSD_OB_BLOCK);
  ck_assert(psd_link_empty(&job->group.pulls));
  outbox_clear(&srv.outbox);
  /* A held pull is released when the slow worker departs. */
  group_clock(job, 0, 10);
  group_hold_pull(&srv, job, &conns[0], 8, block0(), 10, 0);
  ck_assert_uint_eq(srv.outbox.len, 0);
  now += 10001;
  group_seen(job, 0, 100, now);
  ck_assert_int_eq(group_tick(&srv, job, now), GROUP_CHANGED);
  ck_assert_int_eq(group_answer_ready(&srv, job, UINT64_MAX, 1000), 0);
  ck_assert_uint_eq(srv.outbox.len, 1);
  ck_assert_uint_eq(srv.outbox.r[0].id, 8);
  teardown_job();
}
END_TEST

START_TEST(barrier_release) {
  setup_job(3, 0, PS_OPT_SGD);
  group_barrier(&srv, job, &conns[2], 1, 1);
  group_barrier(&srv, job, &conns[0], 2, 1);
  ck_assert_uint_eq(srv.outbox.len, 0);
  group_barrier(&srv, job, &conns[1], 3, 1);
  ck_assert_uint_eq(srv.outbox.len, 3);
  for (size_t i = 0; i < 3; i++) ck_assert_int_eq(srv.outbox.r[i].kind, PSD_OB_ACK);
  outbox_clear(&srv.outbox);
  /* Generation 2: rank 1 departs instead of arriving. */
  group_barrier(&srv, job, &conns[0], 4, 2);
  group_barrier(&srv, job, &conns[2], 5, 2);
  ck_assert_uint_eq(srv.outbox.len, 0);
  now += 10001;
  group_seen(job, 0, 100, now);
  group_seen(job, 2, 102, now);
  ck_assert_int_eq(group_tick(&srv, job, now), GROUP_CHANGED);
  ck_assert_uint_eq(srv.outbox.len, 2);
  teardown_job();
}
END_TEST

/* ---- updates whose result is not finite ------------------------------------ */

/* Three FLT_MAX-sized pushes with sgd and lr 1 used to make NaN weights: the
 * update that would overflow is refused and the block stays exactly as it
 * was. */
START_TEST(nonfinite_result_refused) {
  setup_job(1, -1, PS_OPT_SGD);
  tensor->spec.optim.lr = 1.0;
  psd_block *b = block0();
  float g[N], before[N];
  for (int i = 0; i < N; i++) g[i] = FLT_MAX;
  uint32_t gmax = psm_absmax_bits(g, N);
  int applied = 0, refused = 0;
  for (int k = 0; k < 3; k++) {
    memcpy(before, b->w, sizeof(before));
    uint64_t v = b->version;
    int rc = block_apply(&srv, b, g, gmax, 1.0f, NULL);
    if (rc == 0) {
      applied++;
    } else {
      ck_assert_int_eq(rc, -1);
      refused++;
      ck_assert_uint_eq(b->version, v);
      ck_assert_int_eq(memcmp(before, b->w, sizeof(before)), 0);
    }
    ck_assert_uint_lt(psm_absmax_bits(b->w, N), PSM_NONFINITE);
  }
  ck_assert_int_eq(applied, 1); /* -FLT_MAX once; twice would overflow */
  ck_assert_int_eq(refused, 2);
  teardown_job();
}
END_TEST

/* Adam with a gradient whose square overflows float: the state would hold
 * Inf; refused, state untouched. An ordinary update right after applies. */
START_TEST(nonfinite_state_refused) {
  setup_job(1, -1, PS_OPT_ADAM);
  psd_block *b = block0();
  float g[N], before[2 * N];
  for (int i = 0; i < N; i++) g[i] = 1e30f;
  memcpy(before, b->state, sizeof(before));
  ck_assert_int_eq(block_apply(&srv, b, g, psm_absmax_bits(g, N), 1.0f, NULL), -1);
  ck_assert_int_eq(memcmp(before, b->state, sizeof(before)), 0);
  ck_assert_uint_eq(b->version, 0);
  for (int i = 0; i < N; i++) g[i] = 0.01f;
  ck_assert_int_eq(block_apply(&srv, b, g, psm_absmax_bits(g, N), 1.0f, NULL), 0);
  ck_assert_uint_eq(b->version, 1);
  teardown_job();
}
END_TEST

/* ---- the exactly-once table ---------------------------------------------- */

/* calloc, as the daemon's code calls it (linked with --wrap=calloc): fails
 * while fail_calloc is set. */
static int fail_calloc;
void *__real_calloc(size_t n, size_t size);
void *__wrap_calloc(size_t n, size_t size) {
  return fail_calloc ? NULL : __real_calloc(n, size);
}

/* An async push through the request handler, as server.c dispatches it. */
static void push_req(psd_conn *c, uint64_t id, uint64_t seq, const float *g) {
  Psd__Push p = PSD__PUSH__INIT;
  p.name = "w";
  p.block = 0;
  p.has_seq = 1;
  p.seq = seq;
  store_push(&srv, c, id, &p, (const uint8_t *)g, N * sizeof(float));
}

/* When the exactly-once table cannot grow, the push is refused, not
 * applied without its record (a resend would then be applied twice). */
START_TEST(dedupe_full_refuses_push) {
  setup_job(1, -1, PS_OPT_SGD);
  float g[N], before[N];
  for (int i = 0; i < N; i++) g[i] = 0.5f;
  /* Workers fill the table until the next new one needs it to grow (it is
   * kept at most 3/4 full). */
  uint64_t wid = 1;
  for (; wid == 1 || (job->seqs.len + 1) * 4 <= job->seqs.cap * 3; wid++) {
    conns[1].srv = &srv;
    conns[1].job = job;
    conns[1].rank = -1;
    conns[1].worker_id = wid;
    psd_link_init(&conns[1].waiters);
    push_req(&conns[1], wid, 1, g);
  }
  uint64_t applied = wid - 1;
  ck_assert_uint_eq(srv.outbox.len, applied);
  ck_assert_uint_eq(block0()->version, applied);
  outbox_clear(&srv.outbox);
  memcpy(before, block0()->w, sizeof(before));
  conns[1].worker_id = wid;
  fail_calloc = 1;
  push_req(&conns[1], 99, 1, g);
  fail_calloc = 0;
  ck_assert_uint_eq(srv.outbox.len, 1);
  ck_assert_int_eq(srv.outbox.r[0].kind, PSD_OB_ERROR);
  ck_assert_uint_eq(block0()->version, applied);
  ck_assert_int_eq(memcmp(before, block0()->w, sizeof(before)), 0);
  outbox_clear(&srv.outbox);
  /* The resend, with memory back, is applied once; a second is a duplicate. */
  push_req(&conns[1], 100, 1, g);
  push_req(&conns[1], 101, 1, g);
  ck_assert_uint_eq(block0()->version, applied + 1);
  ck_assert_uint_eq(srv.outbox.len, 2);
  ck_assert(srv.outbox.r[1].duplicate);
  teardown_job();
}
END_TEST

/* Through the request handler: FLT_MAX gradients, sgd, lr 1. The first
 * applies; the next would overflow and is answered BAD_GRADIENT with the
 * weights unchanged. */
START_TEST(push_nonfinite_result) {
  setup_job(1, -1, PS_OPT_SGD);
  tensor->spec.optim.lr = 1.0;
  conns[1].srv = &srv;
  conns[1].job = job;
  conns[1].rank = -1;
  conns[1].worker_id = 7;
  psd_link_init(&conns[1].waiters);
  float g[N], before[N];
  for (int i = 0; i < N; i++) g[i] = FLT_MAX;
  push_req(&conns[1], 1, 1, g);
  ck_assert_int_eq(srv.outbox.r[0].kind, PSD_OB_BLOCK);
  memcpy(before, block0()->w, sizeof(before));
  push_req(&conns[1], 2, 2, g);
  ck_assert_int_eq(srv.outbox.r[1].kind, PSD_OB_ERROR);
  ck_assert_int_eq(srv.outbox.r[1].code, PSD__CODE__BAD_GRADIENT);
  ck_assert_ptr_nonnull(strstr(srv.outbox.r[1].msg, "Inf or NaN"));
  ck_assert_int_eq(memcmp(before, block0()->w, sizeof(before)), 0);
  ck_assert_uint_eq(block0()->version, 1);
  teardown_job();
}
END_TEST

START_TEST(dedupe_table) {
  psd_seqmap m;
  memset(&m, 0, sizeof(m));
  uint64_t s;
  ck_assert_int_eq(dedupe_last(&m, 5, &s), 0);
  for (uint64_t k = 1; k <= 1000; k++) {
    ck_assert_int_eq(dedupe_reserve(&m), 0);
    ck_assert_int_eq(dedupe_record(&m, k * 0x9e3779b97f4a7c15ull, k), 0);
  }
  for (uint64_t k = 1; k <= 1000; k++) {
    ck_assert_int_eq(dedupe_last(&m, k * 0x9e3779b97f4a7c15ull, &s), 1);
    ck_assert_uint_eq(s, k);
  }
  ck_assert_int_eq(dedupe_record(&m, 0, 9), 0); /* no id: not recorded */
  ck_assert_int_eq(dedupe_last(&m, 0, &s), 0);
  dedupe_free(&m);
}
END_TEST


/* ---- the metrics' view of held replies -------------------------------------- */

/* A held sync push keeps the stamp of its own request (its read time and
 * type), and the reply that finally answers it carries that stamp, not
 * the one of the request that completed the round; the round's wait is
 * observed once. A held push whose connection closes is counted dropped. */
START_TEST(metrics_held_stamps) {
  setup_job(2, 0, PS_OPT_SGD);
  uint64_t waits = psd_m.round_wait.count;
  srv.outbox.stamp = (psd_stamp){111, PSD_RT_PUSH_PULL};
  push(0, 0, 0);
  ck_assert_uint_eq(srv.outbox.len, 0);
  srv.outbox.stamp = (psd_stamp){222, PSD_RT_PUSH_PULL};
  push(1, 0, 0);
  ck_assert_uint_eq(srv.outbox.len, 2);
  for (size_t i = 0; i < 2; i++) {
    psd_ob_rec *r = &srv.outbox.r[i];
    ck_assert_int_eq(r->stamp.type, PSD_RT_PUSH_PULL);
    ck_assert_uint_eq(r->stamp.t0, r->conn == &conns[0] ? 111 : 222);
  }
  ck_assert_uint_eq(psd_m.round_wait.count, waits + 1);
  outbox_clear(&srv.outbox);

  /* Round 2: rank 0's push is held, then its connection goes. */
  uint64_t dropped = psd_m.requests[PSD_RT_PUSH_PULL][PSD_RES_DROPPED];
  srv.outbox.stamp = (psd_stamp){333, PSD_RT_PUSH_PULL};
  push(0, 1, 1);
  psd_waiter *w = psd_link_entry(conns[0].waiters.next, psd_waiter, conn_link);
  ck_assert_uint_eq(w->stamp.t0, 333);
  round_drop_waiter(w);
  waiter_free(w);
  ck_assert_uint_eq(psd_m.requests[PSD_RT_PUSH_PULL][PSD_RES_DROPPED], dropped + 1);
  srv.outbox.stamp = (psd_stamp){0, PSD_RT_NONE};
  teardown_job();
}
END_TEST

/* Quantiles from a histogram interpolate within the bucket, as
 * Prometheus's histogram_quantile does. */
START_TEST(metrics_quantiles) {
  psd_hist h;
  memset(&h, 0, sizeof(h));
  ck_assert(isnan(metrics_quantile(&h, 0.5)));
  /* 100 observations in (50 us, 100 us], 100 in (100 us, 250 us]. */
  for (int i = 0; i < 100; i++) psd_hist_observe(&h, 75000);
  for (int i = 0; i < 100; i++) psd_hist_observe(&h, 200000);
  ck_assert_uint_eq(h.count, 200);
  ck_assert_uint_eq(h.b[3], 100);
  ck_assert_uint_eq(h.b[4], 100);
  ck_assert_double_eq_tol(metrics_quantile(&h, 0.5), 100e-6, 1e-12);
  ck_assert_double_eq_tol(metrics_quantile(&h, 0.25), 75e-6, 1e-12);
  ck_assert_double_eq_tol(metrics_quantile(&h, 0.99), 100e-6 + 150e-6 * 0.98, 1e-12);
  /* Past the last bound: the last bound. */
  psd_hist_observe(&h, 60ull * 1000000000ull);
  ck_assert_uint_eq(h.b[PSD_HIST_BUCKETS - 1], 1);
  ck_assert_double_eq_tol(metrics_quantile(&h, 1.0), 10.0, 1e-12);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("sync");
  TCase *t = tcase_create("rounds");
  tcase_add_test(t, round_every_order);
  tcase_add_test(t, round_departure);
  tcase_add_test(t, round_rejoin);
  tcase_add_test(t, round_resend_after_close);
  tcase_add_test(t, round_two_in_one_call);
  suite_add_tcase(s, t);
  t = tcase_create("group");
  tcase_add_test(t, ssp_hold_and_release);
  tcase_add_test(t, barrier_release);
  suite_add_tcase(s, t);
  t = tcase_create("finite");
  tcase_add_test(t, nonfinite_result_refused);
  tcase_add_test(t, nonfinite_state_refused);
  suite_add_tcase(s, t);
  t = tcase_create("dedupe");
  tcase_add_test(t, dedupe_table);
  tcase_add_test(t, dedupe_full_refuses_push);
  tcase_add_test(t, push_nonfinite_result);
  tcase_add_test(t, metrics_held_stamps);
  tcase_add_test(t, metrics_quantiles);
  suite_add_tcase(s, t);
  return s;
}

int main(void) {
  plog_set_level(PLOG_ERROR);
  return check_run(suite());
}
