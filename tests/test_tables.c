/*
 * test_tables.c -- sparse tables against real psd daemons on loopback:
 * through the library (psd.h) for what a trainer does, and through raw
 * protocol frames (common/wire) for what the library never sends (every
 * refusal of the shard, each followed by a check that nothing changed).
 *
 *   init            rows are the same bytes on 1 and 3 shards, in any order
 *                   and batching, and are psm_row_init's
 *   lazy updates    the rows a push names, with the table's step for the
 *                   rate and the row's own for Adam, as a float replay of
 *                   the kernels says (every optimizer kind), on 1 and 3 shards
 *   duplicates      repeated keys of a push are summed, of a pull repeated
 *   sync            4 workers, 2 shards: each row averaged over the ranks that
 *                   pushed it, in rank order, bit for bit as a reference
 *   eviction        lru and lfu keep exactly the rows they should; evicted
 *                   rows come back initialized; none refuses; memory
 *   checkpoint      a shard killed after a checkpoint and restarted goes on
 *                   bit for bit as the one that was not (rows, optimizer
 *                   state, per-row steps, the eviction order)
 *   exactly-once    a push the shard applied whose reply was lost is resent
 *                   after a reconnect and not applied again
 *   refusals        each answered with its code and a sentence; nothing changes
 *
 * No outcome depends on the machine's speed: a test waits for a state with
 * a bound far beyond need (WAIT_MS), and a held request is held by
 * construction (a proxy that swallows replies).
 */
#include <check.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <time.h>
#include <unistd.h>

#include "check_main.h"
#include "harness.h"
#include "msg.h"
#include "placement.h"
#include "psd.h"
#include "psmath.h"
#include "proxy.h"
#include "rawcheck.h"
#include "rawclient.h"
#include "shards.h"
#include "wire.h"

/* ---- shards and clients (tests/shards.h) ------------------------------------------ */

static void setup(void) { signal(SIGPIPE, SIG_IGN); }

/* Clients here speak TCP only: no shared-memory lane. */
static ps_client *connect_as(const char *list, int rank, int nw, int staleness) {
  ps_options o;
  ts_options(&o, rank, nw, staleness);
  o.lane_mb = 0;
  return ts_connect(list, &o);
}

static ps_client *connect_tool(const char *list) { return connect_as(list, -1, 1, -1); }

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* A deterministic stream of 64-bit words. */
static uint64_t rnd_state = 1;
static uint64_t rnd(void) {
  rnd_state += UINT64_C(0x9E3779B97F4A7C15);
  uint64_t z = rnd_state;
  z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
  return z ^ (z >> 31);
}
static float rndf(void) { return (float)((double)(rnd() >> 11) / 9007199254740992.0 * 2 - 1); }

/* ---- init ---------------------------------------------------------------------- */

#define IDIM 24
#define INKEYS 1500

static void create_init_tables(ps_client *c) {
  ps_table_spec s;
  ps_table_spec_init(&s, PS_INIT_NORMAL, PS_OPT_SGD);
  s.init.sigma = 0.25;
  s.init.seed = 7;
  CK_PS(c, ps_create_table(c, "emb", IDIM, &s));
  ps_table_spec_init(&s, PS_INIT_HE_UNIFORM, PS_OPT_ADAGRAD);
  CK_PS(c, ps_create_table(c, "emb_he", IDIM, &s)); /* fans: dim */
  ps_table_spec_init(&s, PS_INIT_GLOROT_TRUNCATED_NORMAL, PS_OPT_ADAM);
  s.init.fan_in = 100;
  s.init.fan_out = 20;
  CK_PS(c, ps_create_table(c, "emb_gl", IDIM, &s)); /* fans: the spec's */
}

START_TEST(init_same_on_1_and_3_shards) {
  char l1[128], l3[256];
  ts_start_cluster(1, NULL, l1, sizeof(l1));
  ts_start_cluster(3, NULL, l3, sizeof(l3));
  ps_client *a = connect_tool(l1), *b = connect_tool(l3);
  create_init_tables(a);
  create_init_tables(b);
  static uint64_t keys[INKEYS];
  rnd_state = 11;
  for (int i = 0; i < INKEYS; i++) keys[i] = rnd();
  keys[0] = 0;
  keys[1] = UINT64_MAX;
  keys[2] = 1;
  for (int i = 3; i < 60; i++) keys[INKEYS - i] = keys[i]; /* repeats */
  const char *names[3] = {"emb", "emb_he", "emb_gl"};
  ps_table_spec specs[3];
  ps_table_spec_init(&specs[0], PS_INIT_NORMAL, PS_OPT_SGD);
  specs[0].init.sigma = 0.25;
  specs[0].init.seed = 7;
  ps_table_spec_init(&specs[1], PS_INIT_HE_UNIFORM, PS_OPT_ADAGRAD);
  ps_table_spec_init(&specs[2], PS_INIT_GLOROT_TRUNCATED_NORMAL, PS_OPT_ADAM);
  specs[2].init.fan_in = 100;
  specs[2].init.fan_out = 20;
  static float ra[INKEYS * IDIM], rb[INKEYS * IDIM], want[IDIM];
  for (int t = 0; t < 3; t++) {
    /* One call on one shard; on three, three calls in another order. */
    CK_PS(a, ps_pull_rows(a, names[t], keys, INKEYS, ra));
    for (int part = 2; part >= 0; part--) {
      size_t lo = (size_t)part * INKEYS / 3, hi = (size_t)(part + 1) * INKEYS / 3;
      CK_PS(b, ps_pull_rows(b, names[t], keys + lo, hi - lo, rb + lo * IDIM));
    }
    ck_assert_int_eq(memcmp(ra, rb, sizeof(ra)), 0);
    double limit = sqrt(6.0 / IDIM); /* he_uniform with fan_in = dim */
    for (int i = 0; i < INKEYS; i++) {
      psm_row_init(&specs[t].init, IDIM, psm_hash_name(names[t]), keys[i], want);
      ck_assert_int_eq(memcmp(want, ra + i * IDIM, sizeof(want)), 0);
      if (t == 1)
        for (int j = 0; j < IDIM; j++) ck_assert(fabs(ra[i * IDIM + j]) <= limit);
    }
    /* Rows of different keys differ. */
    ck_assert(memcmp(ra, ra + 3 * IDIM, IDIM * sizeof(float)) != 0);
  }
  /* Every distinct key has one row, somewhere among the three shards. */
  long long rows = 0;
  for (int s = 0; s < 3; s++) rows += ts_table_stat(b, s, "emb", "rows");
  ck_assert_int_eq(rows, ts_table_stat(a, 0, "emb", "rows"));
  ck_assert_int_eq(rows, INKEYS - 57);
  ps_close(a);
  ps_close(b);
}
END_TEST

/* ---- lazy updates, replayed in float -------------------------------------------- */

#define LDIM 8
#define LKEYS 40
#define LSTEPS 12
#define LBATCH 30

typedef struct {
  uint64_t key;
  float row[LDIM * 3];
  uint32_t step;
  int exists;
} ref_row;

/* The kernels' own float replay of what a shard should do: the table's
 * update t for the rate, each row's own count for Adam. */
static void replay_push(ref_row *ref, const ps_table_spec *s, const char *name, uint64_t t,
                        const uint64_t *keys, const float *g, size_t n) {
  /* Sum repeated keys first (the library does), in the order given. */
  static float sum[LKEYS][LDIM];
  static int have[LKEYS];
  memset(have, 0, sizeof(have));
  for (size_t i = 0; i < n; i++) {
    int k = (int)keys[i];
    if (!have[k]) memcpy(sum[k], g + i * LDIM, sizeof(sum[k]));
    else
      for (int e = 0; e < LDIM; e++) sum[k][e] += g[i * LDIM + e];
    have[k] = 1;
  }
  psm_row_ctx ctx;
  psm_row_begin(&ctx, &s->optim, t);
  for (int k = 0; k < LKEYS; k++) {
    if (!have[k]) continue;
    ref_row *r = &ref[k];
    if (!r->exists) {
      psm_row_init(&s->init, LDIM, psm_hash_name(name), (uint64_t)k, r->row);
      memset(r->row + LDIM, 0, 2 * LDIM * sizeof(float));
      r->exists = 1;
    }
    r->step++;
    psm_row_apply(&ctx, r->step, r->row, sum[k], 1.0f, LDIM);
  }
}

static void lazy_case(const char *list, int nshards, const ps_table_spec *s, const char *name) {
  ps_client *c = connect_tool(list);
  CK_PS(c, ps_create_table(c, name, LDIM, s));
  static ref_row ref[LKEYS];
  memset(ref, 0, sizeof(ref));
  rnd_state = 99;
  uint64_t keys[LBATCH];
  float g[LBATCH * LDIM], out[LBATCH * LDIM];
  for (uint64_t t = 1; t <= LSTEPS; t++) {
    /* Rows 0..9 every step, the rest now and then, some twice in a push. */
    for (int i = 0; i < LBATCH; i++) keys[i] = i < 10 ? (uint64_t)i : 10 + rnd() % (LKEYS - 10);
    for (int i = 0; i < LBATCH * LDIM; i++) g[i] = rndf();
    if (t % 3 == 0) CK_PS(c, ps_push_rows(c, name, keys, LBATCH, g));
    else CK_PS(c, ps_push_pull_rows(c, name, keys, LBATCH, g, out));
    replay_push(ref, s, name, t, keys, g, LBATCH);
    if (t % 3 != 0)
      for (int i = 0; i < LBATCH; i++)
        ck_assert_int_eq(memcmp(out + i * LDIM, ref[keys[i]].row, LDIM * sizeof(float)), 0);
  }
  uint64_t all[LKEYS];
  float rows[LKEYS * LDIM];
  for (int k = 0; k < LKEYS; k++) all[k] = (uint64_t)k;
  CK_PS(c, ps_pull_rows(c, name, all, LKEYS, rows));
  for (int k = 0; k < LKEYS; k++) {
    float want[LDIM];
    if (ref[k].exists) memcpy(want, ref[k].row, sizeof(want));
    else psm_row_init(&s->init, LDIM, psm_hash_name(name), (uint64_t)k, want);
    ck_assert_msg(memcmp(rows + k * LDIM, want, sizeof(want)) == 0,
                  "%s (%s) on %d shards: row %d differs (%g vs %g)", name,
                  ps_optim_name(s->optim.kind), nshards, k, rows[k * LDIM], want[0]);
  }
  /* Every shard counted every push. */
  for (int sh = 0; sh < nshards; sh++)
    ck_assert_int_eq(ts_table_stat(c, sh, name, "step"), LSTEPS);
  ps_close(c);
}

START_TEST(lazy_updates_match_a_replay) {
  char l1[128], l3[256];
  ts_start_cluster(1, NULL, l1, sizeof(l1));
  ts_start_cluster(3, NULL, l3, sizeof(l3));
  ps_optim_kind kinds[] = {PS_OPT_SGD, PS_OPT_MOMENTUM, PS_OPT_ADAGRAD, PS_OPT_ADAM,
                           PS_OPT_ADAMW, PS_OPT_RMSPROP};
  for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
    ps_table_spec s;
    ps_table_spec_init(&s, PS_INIT_UNIFORM, kinds[i]);
    s.optim.lr = 0.05;
    s.optim.warmup = 4;                  /* the table's step drives the rate */
    s.optim.schedule = PS_SCHED_INVERSE_SQRT;
    if (kinds[i] == PS_OPT_MOMENTUM) s.optim.heavy_ball = s.optim.nesterov = 1;
    if (kinds[i] == PS_OPT_RMSPROP) s.optim.eps_inside_sqrt = 1;
    if (kinds[i] == PS_OPT_ADAGRAD) s.optim.weight_decay = 0.01;
    char name[32];
    snprintf(name, sizeof(name), "lazy_%s", ps_optim_name(kinds[i]));
    lazy_case(l1, 1, &s, name);
    lazy_case(l3, 3, &s, name);
  }
}
END_TEST

/* A push large enough that the shard shares its rows with its helper
 * thread (at least 64K elements): the same bytes as a replay. */
START_TEST(large_push_split_over_two_threads) {
  char l[64];
  ts_start_cluster(1, NULL, l, sizeof(l));
  ps_client *c = connect_tool(l);
  ps_table_spec s;
  ps_table_spec_init(&s, PS_INIT_NORMAL, PS_OPT_ADAM);
  s.optim.lr = 0.01;
  CK_PS(c, ps_create_table(c, "big", 64, &s));
  enum { N = 3000 };
  static uint64_t keys[N];
  static float g[N * 64], out[N * 64], want[N][3 * 64];
  rnd_state = 5;
  for (int i = 0; i < N; i++) {
    keys[i] = rnd();
    psm_row_init(&s.init, 64, psm_hash_name("big"), keys[i], want[i]);
    memset(want[i] + 64, 0, 128 * sizeof(float));
  }
  for (uint64_t t = 1; t <= 3; t++) {
    for (int i = 0; i < N * 64; i++) g[i] = rndf();
    CK_PS(c, ps_push_pull_rows(c, "big", keys, N, g, out));
    psm_row_ctx ctx;
    psm_row_begin(&ctx, &s.optim, t);
    for (int i = 0; i < N; i++) {
      psm_row_apply(&ctx, t, want[i], g + i * 64, 1.0f, 64);
      ck_assert_int_eq(memcmp(out + i * 64, want[i], 64 * sizeof(float)), 0);
    }
  }
  ps_close(c);
}
END_TEST

/* ---- repeated keys ----------------------------------------------------------------- */

START_TEST(repeated_keys_are_summed) {
  char l[128];
  ts_start_cluster(2, NULL, l, sizeof(l));
  ps_client *c = connect_tool(l);
  ps_table_spec s;
  ps_table_spec_init(&s, PS_INIT_ZEROS, PS_OPT_SGD);
  s.optim.lr = 0.5;
  CK_PS(c, ps_create_table(c, "dup", 4, &s));
  uint64_t keys[6] = {5, 7, 5, 5, 9, 7};
  float g[6 * 4], out[6 * 4];
  for (int i = 0; i < 24; i++) g[i] = (float)(i + 1) * 0.37f;
  CK_PS(c, ps_push_pull_rows(c, "dup", keys, 6, g, out));
  float w5[4], w7[4], w9[4];
  for (int e = 0; e < 4; e++) {
    /* The library's sum, in the order given; then one update. */
    float s5 = g[0 * 4 + e] + g[2 * 4 + e], s7 = g[1 * 4 + e] + g[5 * 4 + e];
    s5 += g[3 * 4 + e];
    w5[e] = 0.0f - 0.5f * s5;
    w7[e] = 0.0f - 0.5f * s7;
    w9[e] = 0.0f - 0.5f * g[4 * 4 + e];
  }
  const float *want[6] = {w5, w7, w5, w5, w9, w7};
  for (int i = 0; i < 6; i++) ck_assert_int_eq(memcmp(out + i * 4, want[i], 16), 0);
  /* A pull with repeats fills every position. */
  uint64_t q[5] = {9, 9, 5, 7, 9};
  float r[20];
  CK_PS(c, ps_pull_rows(c, "dup", q, 5, r));
  const float *wq[5] = {w9, w9, w5, w7, w9};
  for (int i = 0; i < 5; i++) ck_assert_int_eq(memcmp(r + i * 4, wq[i], 16), 0);
  /* push, out == grads is allowed. */
  uint64_t k2[2] = {5, 5};
  float g2[8] = {1, 1, 1, 1, 1, 1, 1, 1};
  CK_PS(c, ps_push_pull_rows(c, "dup", k2, 2, g2, g2));
  for (int e = 0; e < 4; e++) ck_assert(g2[e] == w5[e] - 0.5f * 2.0f && g2[4 + e] == g2[e]);
  /* The shards hold three rows in all. */
  ck_assert_int_eq(ts_table_stat(c, 0, "dup", "rows") + ts_table_stat(c, 1, "dup", "rows"), 3);
  ps_close(c);
}
END_TEST

/* ---- sync: 4 workers ---------------------------------------------------------------- */

#define SW 4
#define SDIM 6
#define SKEYS 50
#define SSTEPS 10
#define SBATCH 20

/* Worker r's keys and gradients at step t: overlapping, some repeated. */
static void sync_batch(int r, int t, uint64_t *keys, float *g) {
  for (int i = 0; i < SBATCH; i++) {
    uint64_t z = (uint64_t)(r * 1000003 + t * 7919 + i * 104729);
    keys[i] = (z * 2654435761u >> 7) % SKEYS;
    for (int e = 0; e < SDIM; e++) g[i * SDIM + e] = (float)((int)(z % 97) - 48) / 16.0f + e;
  }
}

typedef struct {
  const char *list;
  int rank;
  int rc;
} sync_arg;

static void *sync_worker(void *p) {
  sync_arg *a = p;
  ps_client *c = connect_as(a->list, a->rank, SW, 0);
  uint64_t keys[SBATCH];
  float g[SBATCH * SDIM], out[SBATCH * SDIM];
  a->rc = 0;
  for (int t = 0; t < SSTEPS && a->rc == 0; t++) {
    sync_batch(a->rank, t, keys, g);
    /* Rank 3 pushes nothing at step 4: it still takes part in the round. */
    size_t n = a->rank == 3 && t == 4 ? 0 : SBATCH;
    a->rc = ps_push_pull_rows(c, "sy", keys, n, g, out);
  }
  ps_close(c);
  return NULL;
}

START_TEST(sync_four_workers_rank_order) {
  char l[128];
  ts_start_cluster(2, NULL, l, sizeof(l));
  ps_client *adm = connect_tool(l);
  ps_table_spec s;
  ps_table_spec_init(&s, PS_INIT_NORMAL, PS_OPT_SGD);
  s.optim.lr = 0.3;
  CK_PS(adm, ps_create_table(adm, "sy", SDIM, &s));
  ps_close(adm);
  pthread_t th[SW];
  sync_arg args[SW];
  /* Started in reverse rank order: arrival order is not rank order. */
  for (int r = SW - 1; r >= 0; r--) {
    args[r] = (sync_arg){l, r, -1};
    pthread_create(&th[r], NULL, sync_worker, &args[r]);
  }
  for (int r = 0; r < SW; r++) pthread_join(th[r], NULL);
  for (int r = 0; r < SW; r++) ck_assert_msg(args[r].rc == 0, "rank %d: %s", r, ps_strerror(args[r].rc));
  /* The reference: per step, each row summed over the ranks that pushed it
   * in rank order (each rank's repeats summed first), divided by their
   * count, one sgd update. */
  static float w[SKEYS][SDIM];
  for (int k = 0; k < SKEYS; k++)
    psm_row_init(&s.init, SDIM, psm_hash_name("sy"), (uint64_t)k, w[k]);
  for (int t = 0; t < SSTEPS; t++) {
    float acc[SKEYS][SDIM];
    int cnt[SKEYS] = {0};
    for (int r = 0; r < SW; r++) {
      if (r == 3 && t == 4) continue;
      uint64_t keys[SBATCH];
      float g[SBATCH * SDIM], mine[SKEYS][SDIM];
      int have[SKEYS] = {0};
      sync_batch(r, t, keys, g);
      for (int i = 0; i < SBATCH; i++) {
        int k = (int)keys[i];
        for (int e = 0; e < SDIM; e++)
          mine[k][e] = have[k] ? mine[k][e] + g[i * SDIM + e] : g[i * SDIM + e];
        have[k] = 1;
      }
      for (int k = 0; k < SKEYS; k++) {
        if (!have[k]) continue;
        for (int e = 0; e < SDIM; e++) acc[k][e] = cnt[k] ? acc[k][e] + mine[k][e] : mine[k][e];
        cnt[k]++;
      }
    }
    float lr = (float)s.optim.lr;
    for (int k = 0; k < SKEYS; k++)
      if (cnt[k])
        for (int e = 0; e < SDIM; e++) {
          float ge = 1.0f * (acc[k][e] / (float)cnt[k]) + 0.0f * w[k][e];
          w[k][e] -= lr * ge;
        }
  }
  ps_client *c = connect_tool(l);
  uint64_t all[SKEYS];
  float rows[SKEYS * SDIM];
  for (int k = 0; k < SKEYS; k++) all[k] = (uint64_t)k;
  CK_PS(c, ps_pull_rows(c, "sy", all, SKEYS, rows));
  for (int k = 0; k < SKEYS; k++)
    ck_assert_msg(memcmp(rows + k * SDIM, w[k], sizeof(w[k])) == 0, "row %d: %.9g vs %.9g", k,
                  rows[k * SDIM], w[k][0]);
  ck_assert_int_eq(ts_table_stat(c, 0, "sy", "step"), SSTEPS);
  ck_assert_int_eq(ts_table_stat(c, 1, "sy", "step"), SSTEPS);
  ps_close(c);
}
END_TEST

/* SSP: a pull of rows from a worker too far ahead is held until the
 * slowest worker's clock catches up, as a block pull is. Held by
 * construction: rank 1 does not advance until the hold is seen. */
START_TEST(ssp_holds_a_pull_of_rows) {
  th_psd *p = ts_start(0, NULL);
  ps_client *w0 = connect_as(p->addr, 0, 2, 1), *w1 = connect_as(p->addr, 1, 2, 1);
  ps_client *watch = connect_tool(p->addr);
  ps_table_spec s;
  ps_table_spec_init(&s, PS_INIT_ZEROS, PS_OPT_SGD);
  s.optim.lr = 1.0;
  CK_PS(w0, ps_create_table(w0, "ssp", 4, &s));
  uint64_t k[2] = {1, 2};
  float g[8] = {1, 1, 1, 1, 1, 1, 1, 1}, out[8] = {9, 9, 9, 9, 9, 9, 9, 9};
  CK_PS(w1, ps_push_rows(w1, "ssp", k, 2, g)); /* rank 1 at clock 0 */
  ck_assert_int_gt(ps_clock(w0), 0);
  ck_assert_int_gt(ps_clock(w0), 0); /* rank 0 at clock 2, rank 1 at 0: more than 1 apart */
  long long held0 = ts_stat(watch, 0, "held_pulls");
  ps_ticket t;
  CK_PS(w0, ps_pull_rows_async(w0, "ssp", k, 2, out, NULL, NULL, &t));
  ts_wait_stat(watch, 0, "held_pulls", held0 + 1);
  ck_assert_int_eq(ts_stat(watch, 0, "held_pulls"), held0 + 1);
  ck_assert(out[0] == 9.0f); /* not answered while held */
  ck_assert_int_gt(ps_clock(w1), 0);            /* rank 1 at clock 1: within 1 of 2 */
  CK_PS(w0, ps_wait(w0, t, NULL));
  for (int i = 0; i < 8; i++) ck_assert(out[i] == -1.0f);
  ps_close(watch);
  ps_close(w1);
  ps_close(w0);
}
END_TEST

/* ---- eviction ------------------------------------------------------------------------ */

static void create_limited(ps_client *c, const char *name, ps_evict_kind ev, uint64_t max) {
  ps_table_spec s;
  ps_table_spec_init(&s, PS_INIT_NORMAL, PS_OPT_SGD);
  s.optim.lr = 1.0;
  s.max_rows = max;
  s.evict = ev;
  CK_PS(c, ps_create_table(c, name, 4, &s));
}

static void touch(ps_client *c, const char *name, const uint64_t *keys, size_t n) {
  float out[64 * 4];
  CK_PS(c, ps_pull_rows(c, name, keys, n, out));
}

/* Is row key as initialized (evicted and made again, or never pushed)? */
static int is_initial(ps_client *c, const char *name, uint64_t key) {
  ps_table_spec s;
  ps_table_spec_init(&s, PS_INIT_NORMAL, PS_OPT_SGD);
  float got[4], want[4];
  CK_PS(c, ps_pull_rows(c, name, &key, 1, got));
  psm_row_init(&s.init, 4, psm_hash_name(name), key, want);
  return memcmp(got, want, sizeof(got)) == 0;
}

static void mark(ps_client *c, const char *name, const uint64_t *keys, size_t n) {
  float g[64 * 4];
  for (size_t i = 0; i < n * 4; i++) g[i] = 1.0f;
  CK_PS(c, ps_push_rows(c, name, keys, n, g));
}

START_TEST(eviction_lru_and_lfu) {
  char l[64];
  ts_start_cluster(1, NULL, l, sizeof(l));
  ps_client *c = connect_tool(l);
  /* LRU, 4 rows. Every row pushed once: marked (not as initialized). */
  create_limited(c, "lru", PS_EVICT_LRU, 4);
  uint64_t k1234[4] = {1, 2, 3, 4}, k3[1] = {3}, k5[1] = {5}, k1[1] = {1};
  mark(c, "lru", k1234, 4);   /* order, coldest first: 1 2 3 4 */
  touch(c, "lru", k1, 1);     /* 2 3 4 1 */
  touch(c, "lru", k3, 1);     /* 2 4 1 3 */
  mark(c, "lru", k5, 1);      /* 2 goes: 4 1 3 5 */
  ck_assert_int_eq(ts_table_stat(c, 0, "lru", "rows"), 4);
  ck_assert_int_eq(ts_table_stat(c, 0, "lru", "evictions"), 1);
  ck_assert(is_initial(c, "lru", 2)); /* back, initialized: 4 goes: 1 3 5 2 */
  ck_assert_int_eq(ts_table_stat(c, 0, "lru", "evictions"), 2);
  ck_assert(!is_initial(c, "lru", 1)); /* 3 5 2 1 */
  ck_assert(!is_initial(c, "lru", 3)); /* 5 2 1 3 */
  ck_assert(!is_initial(c, "lru", 5)); /* 2 1 3 5 */
  ck_assert(is_initial(c, "lru", 4));  /* 4 was evicted: 2 goes */
  ck_assert_int_eq(ts_table_stat(c, 0, "lru", "evictions"), 3);

  /* LFU, 4 rows: the least used goes, the least recent among equals. */
  create_limited(c, "lfu", PS_EVICT_LFU, 4);
  uint64_t k12[2] = {1, 2}, k2[1] = {2}, k6[1] = {6}, k7[1] = {7};
  mark(c, "lfu", k1234, 4);   /* counts 1 1 1 1 */
  touch(c, "lfu", k12, 2);    /* 1:2 2:2 3:1 4:1 */
  touch(c, "lfu", k2, 1);     /* 2:3 */
  touch(c, "lfu", k1, 1);     /* 1:3; order by (count, recency): 3 4 | 2 1 */
  mark(c, "lfu", k5, 1);      /* 3 goes (count 1, least recent): 4 5 | 2 1 */
  mark(c, "lfu", k6, 1);      /* 4 goes: 5 6 | 2 1 */
  ck_assert_int_eq(ts_table_stat(c, 0, "lfu", "evictions"), 2);
  touch(c, "lfu", k5, 1);     /* 5:2: 6 | 5 | 2 1 */
  mark(c, "lfu", k7, 1);      /* 6 goes: 7 | 5 | 2 1 */
  ck_assert_int_eq(ts_table_stat(c, 0, "lfu", "evictions"), 3);
  ck_assert_int_eq(ts_table_stat(c, 0, "lfu", "rows"), 4);
  /* 1, 2, 5, 7 kept their updates (each read once more: 1 2 5 at
   * counts >= 3, 7 at 2, so none of them goes while checking). */
  ck_assert(!is_initial(c, "lfu", 1));
  ck_assert(!is_initial(c, "lfu", 2));
  ck_assert(!is_initial(c, "lfu", 5));
  ck_assert(!is_initial(c, "lfu", 7));
  ck_assert_int_eq(ts_table_stat(c, 0, "lfu", "evictions"), 3);
  ck_assert(is_initial(c, "lfu", 3)); /* came back as initialized */
  ps_close(c);
}
END_TEST

START_TEST(limits_without_eviction_and_requests_too_large) {
  char l[64];
  ts_start_cluster(1, NULL, l, sizeof(l));
  ps_client *c = connect_tool(l);
  create_limited(c, "cap", PS_EVICT_NONE, 4);
  uint64_t k4[4] = {1, 2, 3, 4}, k2[2] = {4, 5};
  mark(c, "cap", k4, 4);
  float out[8];
  ck_assert_int_eq(ps_pull_rows(c, "cap", k2, 2, out), PS_ERESOURCE);
  ck_assert_ptr_nonnull(strstr(ps_errmsg(c), "its limit"));
  ck_assert_int_eq(ts_table_stat(c, 0, "cap", "rows"), 4);
  ck_assert(!is_initial(c, "cap", 4)); /* unchanged */
  /* With eviction, one request may not name more rows than are kept. */
  create_limited(c, "few", PS_EVICT_LRU, 4);
  uint64_t k5[5] = {1, 2, 3, 4, 5};
  float o5[20];
  ck_assert_int_eq(ps_pull_rows(c, "few", k5, 5, o5), PS_EBADREQ);
  ck_assert_ptr_nonnull(strstr(ps_errmsg(c), "more than the 4"));
  ck_assert_int_eq(ts_table_stat(c, 0, "few", "rows"), 0);
  ps_close(c);
}
END_TEST

START_TEST(memory_ceiling_refuses_new_rows) {
  const char *extra[] = {"--max-memory", "24M", NULL};
  th_psd *p = ts_start(0, extra);
  ps_client *c = connect_tool(p->addr);
  ps_table_spec s;
  ps_table_spec_init(&s, PS_INIT_ZEROS, PS_OPT_ADAM);
  CK_PS(c, ps_create_table(c, "big", 1024, &s)); /* 12 KiB a row with its moments */
  static uint64_t keys[4096];
  static float out[4096 * 1024];
  for (int i = 0; i < 4096; i++) keys[i] = (uint64_t)i;
  int rc = 0;
  long long before = -1;
  uint64_t k = 0;
  /* Rows come a chunk at a time until the ceiling refuses one. */
  while (rc == 0 && k < 4096) {
    before = ts_table_stat(c, 0, "big", "rows");
    rc = ps_pull_rows(c, "big", keys + k, 256, out);
    k += 256;
  }
  ck_assert_int_eq(rc, PS_ERESOURCE);
  ck_assert_ptr_nonnull(strstr(ps_errmsg(c), "memory ceiling"));
  ck_assert_int_eq(ts_table_stat(c, 0, "big", "rows"), before); /* nothing changed */
  ps_close(c);
}
END_TEST

/* ---- checkpoints ------------------------------------------------------------------------ */

#define CDIM 16
#define CKEYS 100

static void ck_steps(ps_client *c, int from, int to) {
  for (int t = from; t < to; t++) {
    rnd_state = 1000 + (uint64_t)t;
    uint64_t keys[30];
    float g[30 * CDIM];
    for (int i = 0; i < 30; i++) keys[i] = rnd() % CKEYS;
    for (int i = 0; i < 30 * CDIM; i++) g[i] = rndf();
    CK_PS(c, ps_push_rows(c, "ck", keys, 30, g));
  }
}

static void ck_create(ps_client *c) {
  ps_table_spec s;
  ps_table_spec_init(&s, PS_INIT_NORMAL, PS_OPT_ADAM);
  s.optim.lr = 0.01;
  s.max_rows = 60;
  s.evict = PS_EVICT_LFU;
  CK_PS(c, ps_create_table(c, "ck", CDIM, &s));
}

START_TEST(checkpoint_restores_exactly) {
  char dir[512];
  snprintf(dir, sizeof(dir), "%s/ck", th_tmpdir());
  const char *extra[] = {"--data-dir", dir, NULL};
  th_psd *p = ts_start(0, extra);
  int port = p->port;
  char list[64];
  snprintf(list, sizeof(list), "%s", p->addr);
  ps_client *c = connect_tool(list);
  ck_create(c);
  ck_steps(c, 0, 10);
  CK_PS(c, ps_checkpoint(c));
  /* The run that goes on. */
  ck_steps(c, 10, 16);
  uint64_t all[CKEYS];
  for (int k = 0; k < CKEYS; k++) all[k] = (uint64_t)k;
  static float a[CKEYS * CDIM], b[CKEYS * CDIM];
  long long ev_a = ts_table_stat(c, 0, "ck", "evictions"), step_a = ts_table_stat(c, 0, "ck", "step");
  CK_PS(c, ps_pull_rows(c, "ck", all, 50, a));
  CK_PS(c, ps_pull_rows(c, "ck", all + 50, 50, a + 50 * CDIM));
  ps_close(c);
  /* The run that lost its shard after the checkpoint. */
  th_psd_stop(p, SIGKILL, 5000);
  const char *again[] = {"--data-dir", dir, NULL};
  ck_assert_int_eq(th_psd_start(p, port, again), 0);
  c = connect_tool(list);
  ck_create(c); /* idempotent: the restored table */
  ck_assert_int_eq(ts_table_stat(c, 0, "ck", "step"), 10);
  ck_steps(c, 10, 16);
  ck_assert_int_eq(ts_table_stat(c, 0, "ck", "evictions"), ev_a);
  ck_assert_int_eq(ts_table_stat(c, 0, "ck", "step"), step_a);
  CK_PS(c, ps_pull_rows(c, "ck", all, 50, b));
  CK_PS(c, ps_pull_rows(c, "ck", all + 50, 50, b + 50 * CDIM));
  ck_assert_int_eq(memcmp(a, b, sizeof(a)), 0);
  ps_close(c);
}
END_TEST

/* ---- exactly-once through a reconnect ------------------------------------------------------ */

START_TEST(resent_row_push_applies_once) {
  th_psd *p = ts_start(0, NULL);
  th_proxy px;
  ck_assert_int_eq(th_proxy_start(&px, p->port), 0);
  ps_client *c = connect_tool(px.addr), *watch = connect_tool(p->addr);
  ps_table_spec s;
  ps_table_spec_init(&s, PS_INIT_ZEROS, PS_OPT_SGD);
  s.optim.lr = 1.0;
  CK_PS(c, ps_create_table(c, "once", 4, &s));
  uint64_t keys[3] = {10, 20, 10};
  float g[12] = {1, 1, 1, 1, 2, 2, 2, 2, 1, 1, 1, 1}, out[12];
  /* The shard applies the push; its reply never arrives. */
  atomic_store(&px.drop_down, 1);
  ps_ticket t;
  CK_PS(c, ps_push_pull_rows_async(c, "once", keys, 3, g, out, NULL, NULL, &t));
  for (double t0 = now_ms(); ts_table_stat(watch, 0, "once", "step") < 1 && now_ms() - t0 < WAIT_MS;)
    sleep_ms(10);
  ck_assert_int_eq(ts_table_stat(watch, 0, "once", "step"), 1);
  /* Cut: the library reconnects and resends with the same sequence number. */
  atomic_store(&px.drop_down, 0);
  atomic_store(&px.cut, 1);
  CK_PS(c, ps_wait(c, t, NULL));
  ck_assert_int_ge(atomic_load(&px.accepted), 2);
  ck_assert_int_eq(ts_table_stat(watch, 0, "once", "step"), 1);
  ck_assert_int_ge(ts_stat(watch, 0, "duplicates"), 1);
  ck_assert(out[0] == -2.0f && out[4] == -2.0f && out[8] == -2.0f);
  ps_close(watch);
  ps_close(c);
  th_proxy_stop(&px);
}
END_TEST

/* ---- refusals, at the protocol level ---------------------------------------------------------- */

/* rc (tests/rawclient.h) asserted: a reply must come. */
static Psd__Response *call(rc *c, Psd__Request *r, const void *values, size_t vlen, float **out,
                           size_t *outlen) {
  Psd__Response *resp = rc_call(c, r, values, vlen, out, outlen);
  ck_assert_msg(resp != NULL, "the shard closed the connection");
  return resp;
}

/* Connect as a tool of the job of servers `list`, as its shard `index`. */
static void open_tool(rc *c, int port, const char *list, int index) {
  ck_assert_int_ge(rc_open(c, port), 0);
  rc_hello_args a = rc_hello_defaults();
  a.identity = "test_tables";
  a.servers = list;
  a.shard_index = (uint32_t)index;
  Psd__Response *resp = rc_hello(c, &a);
  ck_assert_ptr_nonnull(resp);
  ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_HELLO);
  psd__response__free_unpacked(resp, NULL);
}

static Psd__Response *rc_create_table(rc *c, const char *name, uint32_t dim,
                                      const ps_table_spec *s) {
  pmsg_table_pb pb;
  pmsg_table_to_pb(&pb, s);
  Psd__Request r = PSD__REQUEST__INIT;
  Psd__CreateTable ct = PSD__CREATE_TABLE__INIT;
  ct.name = (char *)name;
  ct.dim = dim;
  ct.spec = &pb.ts;
  r.body_case = PSD__REQUEST__BODY_CREATE_TABLE;
  r.create_table = &ct;
  return call(c, &r, NULL, 0, NULL, NULL);
}

static uint64_t seq = 1;

/* A PushRows of n keys whose values are `bytes` bytes at v. */
static Psd__Response *rc_push_rows(rc *c, const char *name, uint64_t n, const void *v,
                                   size_t bytes, int want, float **out, size_t *olen) {
  Psd__Request r = PSD__REQUEST__INIT;
  Psd__PushRows p = PSD__PUSH_ROWS__INIT;
  p.name = (char *)name;
  p.n = n;
  p.has_seq = 1, p.seq = seq++;
  p.has_want_values = 1, p.want_values = want;
  r.body_case = PSD__REQUEST__BODY_PUSH_ROWS;
  r.push_rows = &p;
  return call(c, &r, v, bytes, out, olen);
}

static Psd__Response *rc_pull_rows(rc *c, const char *name, uint64_t n, const void *v,
                                   size_t bytes, float **out, size_t *olen) {
  Psd__Request r = PSD__REQUEST__INIT;
  Psd__PullRows p = PSD__PULL_ROWS__INIT;
  p.name = (char *)name;
  p.n = n;
  r.body_case = PSD__REQUEST__BODY_PULL_ROWS;
  r.pull_rows = &p;
  return call(c, &r, v, bytes, out, olen);
}

/* The rows of keys 1, 2 (dim 4) and the table's step: what must not change. */
static void snapshot(rc *c, float *rows, uint64_t *step) {
  uint64_t k[2] = {1, 2};
  float *v = NULL;
  size_t vl = 0;
  Psd__Response *resp = rc_pull_rows(c, "t", 2, k, sizeof(k), &v, &vl);
  ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_ROWS);
  ck_assert_uint_eq(vl, 8 * sizeof(float));
  memcpy(rows, v, vl);
  *step = resp->rows->step;
  free(v);
  psd__response__free_unpacked(resp, NULL);
}

START_TEST(refusals_change_nothing) {
  th_psd *p = ts_start(0, NULL);
  rc c;
  open_tool(&c, p->port, p->addr, 0);
  ps_table_spec s;
  ps_table_spec_init(&s, PS_INIT_NORMAL, PS_OPT_ADAM);
  Psd__Response *resp = rc_create_table(&c, "t", 4, &s);
  ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_TABLES);
  ck_assert_uint_eq(resp->tables->tables[0]->dim, 4);
  psd__response__free_unpacked(resp, NULL);
  /* One good push, so that the rows have state. */
  struct {
    uint64_t k[2];
    float g[8];
  } good = {{1, 2}, {1, 2, 3, 4, 5, 6, 7, 8}};
  resp = rc_push_rows(&c, "t", 2, &good, sizeof(good), 0, NULL, NULL);
  ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_ROWS);
  psd__response__free_unpacked(resp, NULL);
  float before[8], after[8];
  uint64_t st0, st1;
  snapshot(&c, before, &st0);
  ck_assert_uint_eq(st0, 1);

  /* Rows of another dim. */
  struct {
    uint64_t k[2];
    float g[10];
  } wide = {{1, 2}, {0}};
  expect_error(rc_push_rows(&c, "t", 2, &wide, sizeof(wide), 0, NULL, NULL),
               PSD__CODE__BAD_SHAPE, "rows of 5 floats; table 't' has rows of 4");
  /* Counts that do not match: 3 keys announced, 2 sent; 2 keys with 1.5 rows. */
  expect_error(rc_pull_rows(&c, "t", 3, good.k, sizeof(good.k), NULL, NULL),
               PSD__CODE__BAD_SHAPE, "names 3 keys");
  expect_error(rc_push_rows(&c, "t", 2, &good, sizeof(good) - sizeof(float), 0, NULL, NULL),
               PSD__CODE__BAD_SHAPE, "names 2 keys");
  /* A NaN in the second row. */
  good.g[6] = NAN;
  expect_error(rc_push_rows(&c, "t", 2, &good, sizeof(good), 0, NULL, NULL),
               PSD__CODE__BAD_GRADIENT, "key 2 (row 1 of the push)");
  good.g[6] = INFINITY;
  expect_error(rc_push_rows(&c, "t", 2, &good, sizeof(good), 1, NULL, NULL),
               PSD__CODE__BAD_GRADIENT, "holds NaN or Inf");
  good.g[6] = 7;
  /* A key twice. */
  struct {
    uint64_t k[2];
    float g[8];
  } twice = {{2, 2}, {0}};
  expect_error(rc_push_rows(&c, "t", 2, &twice, sizeof(twice), 0, NULL, NULL),
               PSD__CODE__BAD_REQUEST, "key 2 appears twice");
  uint64_t new_twice[2] = {77, 77};
  expect_error(rc_pull_rows(&c, "t", 2, new_twice, sizeof(new_twice), NULL, NULL),
               PSD__CODE__BAD_REQUEST, "key 77 appears twice");
  /* An unknown table. */
  expect_error(rc_pull_rows(&c, "nope", 2, good.k, sizeof(good.k), NULL, NULL),
               PSD__CODE__NOT_FOUND, "no table named 'nope'");
  /* A tensor call on the table, and a tensor of its name. */
  Psd__Request r = PSD__REQUEST__INIT;
  Psd__Pull pl = PSD__PULL__INIT;
  pl.name = "t";
  pl.block = 0;
  r.body_case = PSD__REQUEST__BODY_PULL;
  r.pull = &pl;
  expect_error(rc_call(&c, &r, NULL, 0, NULL, NULL), PSD__CODE__BAD_REQUEST,
               "'t' is a table (rows of 4 floats), not a tensor");
  Psd__Push pu = PSD__PUSH__INIT;
  float g4[4] = {0};
  pu.name = "t";
  pu.block = 0;
  r.body_case = PSD__REQUEST__BODY_PUSH;
  r.push = &pu;
  expect_error(rc_call(&c, &r, g4, sizeof(g4), NULL, NULL), PSD__CODE__BAD_REQUEST,
               "is a table");
  Psd__Lookup lk = PSD__LOOKUP__INIT;
  lk.name = "t";
  r.body_case = PSD__REQUEST__BODY_LOOKUP;
  r.lookup = &lk;
  expect_error(rc_call(&c, &r, NULL, 0, NULL, NULL), PSD__CODE__BAD_REQUEST, "is a table");
  ps_tensor_spec ts;
  ps_tensor_spec_init(&ts, PS_INIT_ZEROS, PS_OPT_SGD);
  uint64_t shape[1] = {4};
  pmsg_spec_pb tpb;
  pmsg_spec_to_pb(&tpb, &ts, shape, 1);
  Psd__Create cr = PSD__CREATE__INIT;
  cr.name = "t";
  cr.spec = &tpb.ts;
  r.body_case = PSD__REQUEST__BODY_CREATE;
  r.create = &cr;
  expect_error(rc_call(&c, &r, NULL, 0, NULL, NULL), PSD__CODE__EXISTS,
               "a table named 't' exists");
  /* And the reverse: a rows call on a tensor, a table of its name. */
  cr.name = "dense";
  resp = call(&c, &r, NULL, 0, NULL, NULL);
  ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_INFO);
  psd__response__free_unpacked(resp, NULL);
  expect_error(rc_pull_rows(&c, "dense", 2, good.k, sizeof(good.k), NULL, NULL),
               PSD__CODE__BAD_REQUEST, "'dense' is a tensor, not a table");
  expect_error(rc_push_rows(&c, "dense", 2, &good, sizeof(good), 0, NULL, NULL),
               PSD__CODE__BAD_REQUEST, "is a tensor");
  expect_error(rc_create_table(&c, "dense", 4, &s), PSD__CODE__EXISTS,
               "a tensor named 'dense' exists");
  /* Specs: another dim or spec for the table; bad dims and evictions. */
  expect_error(rc_create_table(&c, "t", 8, &s), PSD__CODE__EXISTS, "dim: 4 vs 8");
  ps_table_spec s2 = s;
  s2.optim.lr = 0.5;
  expect_error(rc_create_table(&c, "t", 4, &s2), PSD__CODE__EXISTS, "optimizer lr");
  expect_error(rc_create_table(&c, "t0", 0, &s), PSD__CODE__BAD_SPEC, "dim must be in [1, 65536]");
  s2 = s;
  s2.evict = PS_EVICT_LRU;
  expect_error(rc_create_table(&c, "t2", 4, &s2), PSD__CODE__BAD_SPEC, "needs max_rows > 0");
  s2 = s;
  s2.optim.lr = -1;
  expect_error(rc_create_table(&c, "t3", 4, &s2), PSD__CODE__BAD_SPEC, "optimizer lr must be");
  snapshot(&c, after, &st1);
  ck_assert_uint_eq(st1, st0);
  ck_assert_int_eq(memcmp(before, after, sizeof(before)), 0);
  rc_close(&c);
}
END_TEST

/* A key that belongs to another shard is refused by this one. */
START_TEST(key_of_another_shard_is_refused) {
  th_psd *p0 = ts_start(0, NULL), *p1 = ts_start(0, NULL);
  char list[128];
  snprintf(list, sizeof(list), "%s,%s", p0->addr, p1->addr);
  rc c;
  open_tool(&c, p0->port, list, 0);
  ps_table_spec s;
  ps_table_spec_init(&s, PS_INIT_NORMAL, PS_OPT_SGD);
  Psd__Response *resp = rc_create_table(&c, "t", 4, &s);
  ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_TABLES);
  psd__response__free_unpacked(resp, NULL);
  psp_servers sv;
  char err[128];
  ck_assert_int_eq(psp_servers_parse(&sv, list, err, sizeof(err)), 0);
  static uint16_t owner[PSP_ROW_BUCKETS];
  psp_row_map(&sv, psm_hash_name("t"), owner);
  psp_servers_free(&sv);
  uint64_t k[2] = {0, 0};
  for (uint64_t key = 1, found = 0; found < 2; key++)
    if (owner[psp_row_bucket(psm_hash_name("t"), key)] == (found == 0 ? 0 : 1)) k[found++] = key;
  char want[64];
  snprintf(want, sizeof(want), "key %llu of table 't' belongs to shard 1",
           (unsigned long long)k[1]);
  expect_error(rc_pull_rows(&c, "t", 2, k, sizeof(k), NULL, NULL), PSD__CODE__WRONG_SHARD, want);
  resp = rc_pull_rows(&c, "t", 1, k, sizeof(k[0]), NULL, NULL);
  ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_ROWS);
  psd__response__free_unpacked(resp, NULL);
  rc_close(&c);
}
END_TEST

/* The library refuses what it can before sending anything. */
START_TEST(library_refusals) {
  th_psd *p = ts_start(0, NULL);
  ps_client *c = connect_tool(p->addr);
  ps_table_spec s;
  ps_table_spec_init(&s, PS_INIT_ZEROS, PS_OPT_SGD);
  CK_PS(c, ps_create_table(c, "t", 4, &s));
  uint64_t k[2] = {3, 3};
  float g[8] = {1, 1, 1, 1, 3.0e38f, 3.0e38f, 3.0e38f, 3.0e38f}, out[8];
  /* Finite rows whose sum is not: refused after summing. */
  g[0] = 3.0e38f;
  ck_assert_int_eq(ps_push_rows(c, "t", k, 2, g), PS_EGRADIENT);
  ck_assert_ptr_nonnull(strstr(ps_errmsg(c), "nothing was sent"));
  g[1] = NAN;
  ck_assert_int_eq(ps_push_rows(c, "t", k, 1, g), PS_EGRADIENT);
  ck_assert_int_eq(ps_pull_rows(c, "t", NULL, 2, out), PS_EINVAL);
  ck_assert_int_eq(ps_pull_rows(c, "nope", k, 2, out), PS_ENOTFOUND);
  ck_assert_int_eq(ps_create_table(c, "t", 0, &s), PS_EINVAL);
  ck_assert_int_eq(ps_create_table(c, "t", 8, &s), PS_EEXISTS);
  uint64_t shape[1] = {4};
  ps_tensor_spec ts;
  ps_tensor_spec_init(&ts, PS_INIT_ZEROS, PS_OPT_SGD);
  ck_assert_int_eq(ps_create(c, "t", shape, 1, &ts), PS_EEXISTS);
  ck_assert_int_eq(ps_pull(c, "t", out, 4, NULL), PS_EBADREQ);
  ck_assert_ptr_nonnull(strstr(ps_errmsg(c), "is a table"));
  ck_assert_int_eq(ps_delete(c, "t"), PS_EBADREQ); /* a tensor's lifecycle call too */
  ck_assert_ptr_nonnull(strstr(ps_errmsg(c), "is a table"));
  CK_PS(c, ps_create(c, "w", shape, 1, &ts));
  ck_assert_int_eq(ps_pull_rows(c, "w", k, 1, out), PS_EBADREQ);
  ck_assert_ptr_nonnull(strstr(ps_errmsg(c), "is a tensor"));
  ck_assert_int_eq(ts_table_stat(c, 0, "t", "step"), 0);
  ck_assert_int_eq(ts_table_stat(c, 0, "t", "rows"), 0);
  ps_close(c);
}
END_TEST

static Suite *tables_suite(void) {
  Suite *s = suite_create("tables");
  TCase *tc = tcase_create("tables");
  tcase_add_checked_fixture(tc, setup, ts_kill_all);
  tcase_set_timeout(tc, 600);
  tcase_add_test(tc, init_same_on_1_and_3_shards);
  tcase_add_test(tc, lazy_updates_match_a_replay);
  tcase_add_test(tc, large_push_split_over_two_threads);
  tcase_add_test(tc, repeated_keys_are_summed);
  tcase_add_test(tc, sync_four_workers_rank_order);
  tcase_add_test(tc, ssp_holds_a_pull_of_rows);
  tcase_add_test(tc, eviction_lru_and_lfu);
  tcase_add_test(tc, limits_without_eviction_and_requests_too_large);
  tcase_add_test(tc, memory_ceiling_refuses_new_rows);
  tcase_add_test(tc, checkpoint_restores_exactly);
  tcase_add_test(tc, resent_row_push_applies_once);
  tcase_add_test(tc, refusals_change_nothing);
  tcase_add_test(tc, key_of_another_shard_is_refused);
  tcase_add_test(tc, library_refusals);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return check_run(tables_suite()); }
