/*
 * test_control.c -- a live tensor's lifecycle and settings against real psd
 * shards on loopback, through the library only: --optimizer none (the
 * averaged gradient back, bit for bit), delete (memory given back, waiting
 * requests answered), reset (a fresh create's bytes), set (ranges, the
 * optimizer state kept or zeroed, held between sync rounds) and tune (from
 * the next update, all or nothing, kept through a restart).
 *
 * Nothing here depends on the machine's speed: where a request must be
 * waiting in the shard (a sync round short of a worker, a set held for
 * it, an SSP pull ahead of the slowest worker), the test polls the shard's
 * own counters until it is, with a bound far beyond need (WAIT_MS).
 */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check_main.h"
#include "harness.h"
#include "psd.h"
#include "psmath.h"
#include "shards.h"

/* Two shards, a tensor name from base whose nblocks blocks land on both,
 * and a tool connected to them. */
static ps_client *two_shards_and_a_name(const char *base, uint64_t nblocks, char *name,
                                        size_t len) {
  char list[256];
  ts_start_cluster(2, NULL, list, sizeof(list));
  ts_spread_name(list, base, nblocks, name, len);
  return ts_connect_as(list, -1, 1, 0);
}

/* The gradient of `rank` at `step` for element i: distinct per rank and
 * step, with float rounding that depends on the summation order. */
static float grad_at(int rank, int step, uint64_t i) {
  uint64_t h = (uint64_t)rank * 0x9e3779b97f4a7c15ull ^ (uint64_t)step * 0xbf58476d1ce4e5b9ull ^ i;
  h ^= h >> 29;
  h *= 0x94d049bb133111ebull;
  h ^= h >> 32;
  return ((float)(h & 0xffffff) / (float)0x1000000 - 0.5f) * (1.0f + (float)rank * 0.37f);
}

static void fill(float *g, uint64_t n, int rank, int step) {
  for (uint64_t i = 0; i < n; i++) g[i] = grad_at(rank, step, i);
}

static void spec_of(ps_tensor_spec *s, ps_init_kind init, ps_optim_kind kind, double lr,
                    uint64_t block) {
  ps_tensor_spec_init(s, init, kind);
  if (lr > 0) s->optim.lr = lr;
  s->block_size = block;
}

/* ---- --optimizer none, sync: an allreduce through the shards -------------------- */

#define AV_W 4
#define AV_N 1000
#define AV_STEPS 6

static char av_list[256], av_name[64];
static float av_out[AV_W][AV_STEPS][AV_N];
static uint64_t av_version[AV_W][AV_STEPS];
static pthread_barrier_t av_joined;

typedef struct {
  int rank, rc;
  char err[300];
} av_arg;

static void *av_worker(void *p) {
  av_arg *a = p;
  ps_options o;
  ps_options_init(&o);
  o.rank = a->rank;
  o.num_workers = AV_W;
  o.staleness = 0;
  o.op_timeout_ms = o.connect_timeout_ms = WAIT_MS;
  ps_client *c = NULL;
  a->rc = ps_connect(&c, av_list, &o);
  if (a->rc == 0) {
    ps_tensor_spec s;
    spec_of(&s, PS_INIT_ZEROS, PS_OPT_NONE, 0, 64); /* 16 blocks over 3 shards */
    uint64_t shape[2] = {40, 25};
    a->rc = ps_create(c, av_name, shape, 2, &s);
  }
  if (a->rc != 0) snprintf(a->err, sizeof(a->err), "%s", c ? ps_errmsg(c) : ps_last_error());
  /* Every rank joins before any pushes (whether its connect worked or not,
   * so that none waits forever). */
  pthread_barrier_wait(&av_joined);
  float g[AV_N];
  for (int step = 0; step < AV_STEPS && a->rc == 0; step++) {
    fill(g, AV_N, a->rank, step);
    /* Vary the arrival order: rank r dawdles differently each step. */
    usleep((useconds_t)(((a->rank * 7 + step * 3) % 5) * 1000));
    a->rc = ps_push_pull(c, av_name, g, av_out[a->rank][step], AV_N,
                         &av_version[a->rank][step]);
    if (a->rc != 0) snprintf(a->err, sizeof(a->err), "step %d: %s", step, ps_errmsg(c));
  }
  if (c) ps_close(c);
  return NULL;
}

/* 4 workers, 3 shards: every worker receives the same bytes, and they are
 * what one process gets averaging the four gradients in rank order, in
 * float, as the shard does (round.c: the lowest rank's gradient, plus each
 * further rank's in increasing order, then divided by the count). */
START_TEST(none_sync_allreduce) {
  ts_start_cluster(3, NULL, av_list, sizeof(av_list));
  ts_spread_name(av_list, "avg", 16, av_name, sizeof(av_name));
  pthread_t t[AV_W];
  av_arg a[AV_W];
  pthread_barrier_init(&av_joined, NULL, AV_W);
  for (int r = 0; r < AV_W; r++) {
    a[r] = (av_arg){.rank = r};
    pthread_create(&t[r], NULL, av_worker, &a[r]);
  }
  for (int r = 0; r < AV_W; r++) pthread_join(t[r], NULL);
  pthread_barrier_destroy(&av_joined);
  for (int r = 0; r < AV_W; r++) ck_assert_msg(a[r].rc == 0, "rank %d: %s", r, a[r].err);
  static float g[AV_W][AV_N], ref[AV_N];
  for (int step = 0; step < AV_STEPS; step++) {
    for (int r = 0; r < AV_W; r++) fill(g[r], AV_N, r, step);
    for (int i = 0; i < AV_N; i++) {
      float acc = g[0][i];
      for (int r = 1; r < AV_W; r++) acc += g[r][i];
      ref[i] = acc / (float)AV_W;
    }
    for (int r = 0; r < AV_W; r++) {
      ck_assert_msg(memcmp(av_out[r][step], ref, sizeof(ref)) == 0,
                    "step %d: rank %d did not receive the rank-ordered average", step, r);
      ck_assert_uint_eq(av_version[r][step], (uint64_t)step + 1);
    }
  }
  /* No optimizer state was kept: the blocks hold weights only. */
  ps_client *c = ts_connect_as(av_list, -1, 1, 0);
  ps_tensor_info ti;
  CK_PS(c, ps_lookup(c, av_name, &ti));
  ck_assert_int_eq(ti.spec.optim.kind, PS_OPT_NONE);
  ps_tensor_info_free(&ti);
  long long bytes = 0;
  for (int s = 0; s < 3; s++) bytes += ts_stat(c, s, "mem_tensors");
  /* 15 blocks of 64 floats and one of 40, one 64-byte aligned array each. */
  ck_assert_int_eq(bytes, 15 * 256 + 192);
  ps_close(c);
  ts_stop_all_clean();
}
END_TEST

/* Async: a push-pull returns the block's latest gradient as pushed (no
 * round, so no average), clipped when clip_norm says so; a none spec that
 * sets a learning rate is refused with a sentence. */
START_TEST(none_async_latest) {
  char list[128];
  ts_start_cluster(1, NULL, list, sizeof(list));
  ps_client *w0 = ts_connect_as(list, 0, 2, -1), *w1 = ts_connect_as(list, 1, 2, -1);
  ps_tensor_spec s;
  spec_of(&s, PS_INIT_ZEROS, PS_OPT_NONE, 0, 0);
  uint64_t shape[1] = {300};
  CK_PS(w0, ps_create(w0, "g", shape, 1, &s));
  float g0[300], g1[300], out[300];
  fill(g0, 300, 0, 1);
  fill(g1, 300, 1, 1);
  uint64_t v;
  CK_PS(w0, ps_push_pull(w0, "g", g0, out, 300, &v));
  ck_assert_int_eq(memcmp(out, g0, sizeof(out)), 0);
  ck_assert_uint_eq(v, 1);
  CK_PS(w1, ps_push(w1, "g", g1, 300));
  CK_PS(w0, ps_pull(w0, "g", out, 300, &v));
  ck_assert_int_eq(memcmp(out, g1, sizeof(out)), 0);
  ck_assert_uint_eq(v, 2);

  s.optim.clip_norm = 1.0;
  CK_PS(w0, ps_create(w0, "gc", shape, 1, &s));
  CK_PS(w0, ps_push_pull(w0, "gc", g0, out, 300, NULL));
  float gs = (float)(1.0 / sqrt(psm_sumsq(g0, 300)));
  ck_assert(gs < 1.0f);
  for (int i = 0; i < 300; i++) ck_assert_float_eq(out[i], gs * g0[i]);

  spec_of(&s, PS_INIT_ZEROS, PS_OPT_NONE, 0, 0);
  s.optim.lr = 0.1;
  CK_FAILS(w0, ps_create(w0, "g2", shape, 1, &s), PS_ESPEC, "lr must be 0 for none");
  ps_close(w0);
  ps_close(w1);
  ts_stop_all_clean();
}
END_TEST

/* ---- delete ------------------------------------------------------------------- */

/* Blocks and optimizer state are freed on every shard: the memory account
 * goes back to where it was before the tensor. */
START_TEST(delete_frees_every_shard) {
  char name[64];
  ps_client *c = two_shards_and_a_name("big", 7, name, sizeof(name));
  long long before[2];
  for (int s = 0; s < 2; s++) before[s] = ts_stat(c, s, "mem_tensors");
  ps_tensor_spec s;
  spec_of(&s, PS_INIT_HE_NORMAL, PS_OPT_ADAM, 0, 16384);
  uint64_t shape[1] = {100000};
  CK_PS(c, ps_create(c, name, shape, 1, &s));
  float *v = malloc(100000 * sizeof(float));
  CK_PS(c, ps_pull(c, name, v, 100000, NULL)); /* every block materialized */
  for (int i = 0; i < 2; i++) ck_assert_int_gt(ts_stat(c, i, "mem_tensors"), before[i]);
  CK_PS(c, ps_delete(c, name));
  for (int i = 0; i < 2; i++) {
    ck_assert_int_eq(ts_stat(c, i, "mem_tensors"), before[i]);
    ck_assert_int_eq(ts_stat(c, i, "tensors"), 0);
  }
  ps_tensor_info ti;
  CK_FAILS(c, ps_lookup(c, name, &ti), PS_ENOTFOUND, "no tensor named");
  CK_FAILS(c, ps_pull(c, name, v, 100000, NULL), PS_ENOTFOUND, "no tensor named");
  CK_FAILS(c, ps_delete(c, name), PS_ENOTFOUND, "no shard knows");
  /* The name is free again: a create makes a new tensor of another shape. */
  uint64_t shape2[1] = {10};
  CK_PS(c, ps_create(c, name, shape2, 1, &s));
  CK_PS(c, ps_pull(c, name, v, 10, NULL));
  free(v);
  ps_close(c);
  ts_stop_all_clean();
}
END_TEST

typedef struct {
  ps_client *c;
  const char *name;
  const float *v;
  uint64_t off, n;
  int flags, rc;
  char err[400];
} set_arg;

static void *set_thread(void *p) {
  set_arg *a = p;
  a->rc = ps_set(a->c, a->name, a->off, a->v, a->n, a->flags);
  snprintf(a->err, sizeof(a->err), "%s", ps_errmsg(a->c));
  return NULL;
}

/* A set held in a sync round, by construction: rank 0's push (ticket push)
 * waits for rank 1's, and the admin's set, sent from thread th, waits for
 * that round. */
typedef struct {
  ps_ticket push;
  set_arg set;
  pthread_t th;
} held_set;

/* Rank 0 (w0) pushes g (its reply to out) to `name` of n floats; admin then
 * sets vals. Returns once the shard holds both. */
static void hold_set(held_set *h, ps_client *admin, ps_client *w0, const char *name,
                     const float *g, float *out, const float *vals, uint64_t n) {
  CK_PS(w0, ps_push_pull_async(w0, name, g, out, n, NULL, NULL, &h->push));
  ts_wait_stat(admin, 0, "rounds_pending", 1); /* rank 0's push waits for rank 1 */
  h->set = (set_arg){.c = admin, .name = name, .v = vals, .n = n};
  pthread_create(&h->th, NULL, set_thread, &h->set);
  ts_wait_stat(admin, 0, "held_sets", 1);
}

/* What waits on a tensor when it is deleted is answered with a sentence: a
 * sync push short of its round, a set held for that round, and an SSP pull
 * ahead of the slowest worker. */
START_TEST(delete_answers_what_waits) {
  char list[128];
  ts_start_cluster(1, NULL, list, sizeof(list));
  ps_client *admin = ts_connect_as(list, -1, 1, 0);
  ps_client *w0 = ts_connect_as(list, 0, 2, 0), *w1 = ts_connect_as(list, 1, 2, 0);
  ps_tensor_spec s;
  spec_of(&s, PS_INIT_ZEROS, PS_OPT_SGD, 0.1, 0);
  uint64_t shape[1] = {8};
  CK_PS(w0, ps_create(w0, "w", shape, 1, &s));
  float g[8] = {1, 2, 3, 4, 5, 6, 7, 8}, out[8], vals[8] = {9, 9, 9, 9, 9, 9, 9, 9};
  held_set h;
  hold_set(&h, admin, w0, "w", g, out, vals, 8);
  CK_PS(admin, ps_delete(admin, "w"));
  int rc = ps_wait(w0, h.push, NULL);
  ck_assert_int_eq(rc, PS_ENOTFOUND);
  ck_assert_ptr_nonnull(strstr(ps_errmsg(w0), "deleted while this push waited"));
  pthread_join(h.th, NULL);
  ck_assert_int_eq(h.set.rc, PS_ENOTFOUND);
  ck_assert_ptr_nonnull(strstr(h.set.err, "deleted while this set waited"));
  ck_assert_int_eq(ts_stat(admin, 0, "rounds_pending"), 0);
  ps_close(w0);
  ps_close(w1);
  ps_close(admin);

  /* SSP: rank 0 three clocks ahead of rank 1 with staleness 1. */
  char list2[128];
  ts_start_cluster(1, NULL, list2, sizeof(list2));
  admin = ts_connect_as(list2, -1, 1, 0);
  w0 = ts_connect_as(list2, 0, 2, 1);
  w1 = ts_connect_as(list2, 1, 2, 1);
  CK_PS(w0, ps_create(w0, "p", shape, 1, &s));
  for (int i = 0; i < 3; i++) ck_assert_int_eq(ps_clock(w0), i + 1);
  ps_ticket t0;
  CK_PS(w0, ps_pull_async(w0, "p", out, 8, NULL, NULL, &t0));
  ts_wait_stat(admin, 0, "held_pulls", 1);
  CK_PS(admin, ps_delete(admin, "p"));
  ck_assert_int_eq(ps_wait(w0, t0, NULL), PS_ENOTFOUND);
  ck_assert_ptr_nonnull(strstr(ps_errmsg(w0), "deleted while this pull waited"));
  ps_close(w0);
  ps_close(w1);
  ps_close(admin);
  ts_stop_all_clean();
}
END_TEST

/* ---- reset ---------------------------------------------------------------------- */

/* A reset tensor holds a fresh create's bytes at version 0, and its next
 * update is the first update again (Adam's state and step count zeroed). */
START_TEST(reset_is_a_fresh_create) {
  char name[64];
  ps_client *c = two_shards_and_a_name("r", 6, name, sizeof(name));
  ps_tensor_spec s;
  spec_of(&s, PS_INIT_HE_NORMAL, PS_OPT_ADAM, 0.01, 512);
  uint64_t shape[2] = {60, 50};
  enum { N = 3000 };
  CK_PS(c, ps_create(c, name, shape, 2, &s));
  static float v0[N], w1[N], g[N], out[N];
  uint64_t v;
  CK_PS(c, ps_pull(c, name, v0, N, NULL));
  fill(g, N, 0, 0);
  CK_PS(c, ps_push_pull(c, name, g, w1, N, &v));
  ck_assert_uint_eq(v, 1);
  for (int step = 1; step < 4; step++) {
    fill(g, N, 0, step);
    CK_PS(c, ps_push(c, name, g, N));
  }
  CK_PS(c, ps_reset(c, name));
  CK_PS(c, ps_pull(c, name, out, N, &v));
  ck_assert_int_eq(memcmp(out, v0, sizeof(out)), 0);
  ck_assert_uint_eq(v, 0);
  ps_tensor_info ti;
  CK_PS(c, ps_lookup(c, name, &ti));
  ck_assert_uint_eq(ti.version, 0);
  ps_tensor_info_free(&ti);
  fill(g, N, 0, 0);
  CK_PS(c, ps_push_pull(c, name, g, out, N, &v));
  ck_assert_int_eq(memcmp(out, w1, sizeof(out)), 0);
  ck_assert_uint_eq(v, 1);
  CK_FAILS(c, ps_reset(c, "nothing"), PS_ENOTFOUND, "no tensor named");
  ps_close(c);
  ts_stop_all_clean();
}
END_TEST

/* ---- set ----------------------------------------------------------------------- */

/* A range lands where it was asked, nothing else moves and the version
 * stays; the optimizer state is kept unless PS_SET_ZERO_STATE: with it, the
 * next update is the one a tensor with zero state makes. */
START_TEST(set_ranges_and_state) {
  char name[64];
  ps_client *c = two_shards_and_a_name("m", 8, name, sizeof(name));
  ps_tensor_spec s;
  spec_of(&s, PS_INIT_HE_NORMAL, PS_OPT_MOMENTUM, 0.05, 256);
  uint64_t shape[1] = {2000};
  enum { N = 2000 };
  CK_PS(c, ps_create(c, name, shape, 1, &s));
  static float init[N], vals[N], out[N], g1[N], g2[N], r[N];
  uint64_t v;
  CK_PS(c, ps_pull(c, name, init, N, NULL));
  for (int i = 0; i < N; i++) vals[i] = (float)i * 0.25f - 100.0f;
  CK_PS(c, ps_set(c, name, 300, vals, 700, 0)); /* blocks 1 to 3, two of them cut */
  CK_PS(c, ps_pull(c, name, out, N, &v));
  ck_assert_uint_eq(v, 0);
  ck_assert_int_eq(memcmp(out, init, 300 * sizeof(float)), 0);
  ck_assert_int_eq(memcmp(out + 300, vals, 700 * sizeof(float)), 0);
  ck_assert_int_eq(memcmp(out + 1000, init + 1000, 1000 * sizeof(float)), 0);

  fill(g1, N, 0, 1);
  fill(g2, N, 0, 2);
  /* R: the values, zero state, then g2. */
  CK_PS(c, ps_reset(c, name));
  CK_PS(c, ps_set(c, name, 0, vals, N, 0));
  CK_PS(c, ps_push_pull(c, name, g2, r, N, NULL));
  /* g1 builds momentum; the set zeroes it: g2 then gives R again. */
  CK_PS(c, ps_reset(c, name));
  CK_PS(c, ps_push(c, name, g1, N));
  CK_PS(c, ps_set(c, name, 0, vals, N, PS_SET_ZERO_STATE));
  CK_PS(c, ps_push_pull(c, name, g2, out, N, &v));
  ck_assert_int_eq(memcmp(out, r, sizeof(out)), 0);
  ck_assert_uint_eq(v, 2);
  /* Kept, the momentum of g1 shows in the update. */
  CK_PS(c, ps_reset(c, name));
  CK_PS(c, ps_push(c, name, g1, N));
  CK_PS(c, ps_set(c, name, 0, vals, N, 0));
  CK_PS(c, ps_push_pull(c, name, g2, out, N, NULL));
  ck_assert_int_ne(memcmp(out, r, sizeof(out)), 0);

  CK_FAILS(c, ps_set(c, name, 1990, vals, 20, 0), PS_ESHAPE, "outside");
  vals[5] = NAN;
  CK_FAILS(c, ps_set(c, name, 0, vals, 10, 0), PS_EINVAL, "NaN or Inf");
  CK_FAILS(c, ps_set(c, name, 0, init, 10, 4), PS_EINVAL, "unknown flags");
  ps_close(c);
  ts_stop_all_clean();
}
END_TEST

/* Sync: a set that arrives while its block's round is in progress is held
 * and written right after that round's update: both workers get the round's
 * values, and the tensor then holds the set's, at the round's version. A
 * worker whose own push the round still waits for is refused (BUSY): it
 * would wait for itself. */
START_TEST(set_between_sync_rounds) {
  char list[128];
  ts_start_cluster(1, NULL, list, sizeof(list));
  ps_client *admin = ts_connect_as(list, -1, 1, 0);
  ps_client *w0 = ts_connect_as(list, 0, 2, 0), *w1 = ts_connect_as(list, 1, 2, 0);
  ps_tensor_spec s;
  spec_of(&s, PS_INIT_ZEROS, PS_OPT_SGD, 0.5, 0);
  uint64_t shape[1] = {8};
  CK_PS(w0, ps_create(w0, "h", shape, 1, &s));
  float g0[8], g1[8], o0[8], o1[8], vals[8], out[8];
  fill(g0, 8, 0, 0);
  fill(g1, 8, 1, 0);
  for (int i = 0; i < 8; i++) vals[i] = 10.0f + (float)i;
  held_set h;
  hold_set(&h, admin, w0, "h", g0, o0, vals, 8);
  uint64_t v0, v1, v;
  CK_PS(w1, ps_push_pull(w1, "h", g1, o1, 8, &v1));
  CK_PS(w0, ps_wait(w0, h.push, &v0));
  pthread_join(h.th, NULL);
  ck_assert_msg(h.set.rc == 0, "set: %s: %s", ps_strerror(h.set.rc), h.set.err);
  ck_assert_uint_eq(v0, 1);
  ck_assert_uint_eq(v1, 1);
  ck_assert_int_eq(memcmp(o0, o1, sizeof(o0)), 0);
  for (int i = 0; i < 8; i++) {
    /* zeros - 0.5 * (g0 + g1) / 2: the round's own update, not the set. */
    float avg = (g0[i] + g1[i]) / 2.0f;
    ck_assert_float_eq_tol(o0[i], -0.5f * avg, 1e-6f);
  }
  CK_PS(admin, ps_pull(admin, "h", out, 8, &v));
  ck_assert_int_eq(memcmp(out, vals, sizeof(out)), 0);
  ck_assert_uint_eq(v, 1);

  /* Rank 1 pushes first: the round now waits for rank 0, which sets. */
  ps_ticket t1;
  CK_PS(w1, ps_push_pull_async(w1, "h", g1, o1, 8, NULL, NULL, &t1));
  ts_wait_stat(admin, 0, "rounds_pending", 1);
  CK_FAILS(w0, ps_set(w0, "h", 0, vals, 8, 0), PS_EBUSY, "wait for itself");
  CK_PS(w0, ps_push_pull(w0, "h", g0, o0, 8, &v0));
  CK_PS(w1, ps_wait(w1, t1, &v1));
  ck_assert_uint_eq(v0, 2);
  /* Between rounds a worker's set lands at once (rank 0 broadcasting). */
  CK_PS(w0, ps_set(w0, "h", 0, vals, 8, 0));
  CK_PS(w1, ps_pull(w1, "h", out, 8, NULL));
  ck_assert_int_eq(memcmp(out, vals, sizeof(out)), 0);
  ps_close(w0);
  ps_close(w1);
  ps_close(admin);
  ts_stop_all_clean();
}
END_TEST

/* ---- tune ----------------------------------------------------------------------- */

static void expect_sgd_step(const float *before, const float *after, const float *g, double lr,
                            int n) {
  for (int i = 0; i < n; i++)
    ck_assert_msg(fabs((double)after[i] - ((double)before[i] - lr * g[i])) <=
                      1e-6 * (1 + fabs(before[i])),
                  "element %d: %.9g, expected %.9g - %g * %.9g", i, after[i], before[i], lr, g[i]);
}

static double lr_of(ps_client *c, const char *name) {
  ps_tensor_info ti;
  CK_PS(c, ps_lookup(c, name, &ti));
  double lr = ti.spec.optim.lr;
  ps_tensor_info_free(&ti);
  return lr;
}

/* A tuning takes effect from the next update (a schedule evaluated at the
 * tensor's current step), shows in lookup, is checked like a create's spec
 * on every tensor before any changes, cannot change the kind, and leaves
 * creates compared with the spec as created. */
START_TEST(tune_from_next_update) {
  char list[256];
  ts_start_cluster(2, NULL, list, sizeof(list));
  ps_client *c = ts_connect_as(list, -1, 1, 0);
  ps_tensor_spec sg, mo;
  spec_of(&sg, PS_INIT_HE_NORMAL, PS_OPT_SGD, 0.1, 64);
  spec_of(&mo, PS_INIT_HE_NORMAL, PS_OPT_MOMENTUM, 0.1, 64);
  uint64_t shape[1] = {500};
  enum { N = 500 };
  CK_PS(c, ps_create(c, "sg", shape, 1, &sg));
  CK_PS(c, ps_create(c, "mo", shape, 1, &mo));
  float w0[N], w1[N], w2[N], w3[N], g[N];
  fill(g, N, 0, 0);
  CK_PS(c, ps_pull(c, "sg", w0, N, NULL));
  CK_PS(c, ps_push_pull(c, "sg", g, w1, N, NULL));
  expect_sgd_step(w0, w1, g, 0.1, N);

  ps_optim_spec o;
  memset(&o, 0, sizeof(o));
  o.lr = 0.5;
  CK_PS(c, ps_set_optim(c, "sg", &o, PS_OPTIM_F_LR));
  ck_assert_double_eq(lr_of(c, "sg"), 0.5);
  ck_assert_double_eq(lr_of(c, "mo"), 0.1);
  CK_PS(c, ps_push_pull(c, "sg", g, w2, N, NULL));
  expect_sgd_step(w1, w2, g, 0.5, N);

  /* A step schedule from now: update 3 runs at 0.5 * 0.5^3. */
  o.schedule = PS_SCHED_STEP;
  o.step_size = 1;
  o.gamma = 0.5;
  CK_PS(c, ps_set_optim(c, "sg", &o, PS_OPTIM_F_SCHEDULE | PS_OPTIM_F_STEP_SIZE |
                                         PS_OPTIM_F_GAMMA));
  CK_PS(c, ps_push_pull(c, "sg", g, w3, N, NULL));
  expect_sgd_step(w2, w3, g, 0.0625, N);

  /* Refusals change nothing. */
  o.kind = PS_OPT_ADAM;
  CK_FAILS(c, ps_set_optim(c, "sg", &o, PS_OPTIM_F_KIND), PS_ESPEC, "kind is fixed");
  o.lr = -1;
  CK_FAILS(c, ps_set_optim(c, "sg", &o, PS_OPTIM_F_LR), PS_ESPEC, "optimizer lr must be in");
  o.heavy_ball = 1;
  CK_FAILS(c, ps_set_optim(c, NULL, &o, PS_OPTIM_F_HEAVY_BALL), PS_ESPEC, "heavy_ball");
  ps_tensor_info ti;
  CK_PS(c, ps_lookup(c, "mo", &ti));
  ck_assert_int_eq(ti.spec.optim.heavy_ball, 0);
  ps_tensor_info_free(&ti);
  ck_assert_double_eq(lr_of(c, "sg"), 0.5);
  CK_FAILS(c, ps_set_optim(c, "none", &o, PS_OPTIM_F_LR), PS_ENOTFOUND, "no tensor named");
  CK_FAILS(c, ps_set_optim(c, "sg", &o, 0), PS_EINVAL, "fields");

  /* --all */
  o.clip_norm = 5;
  CK_PS(c, ps_set_optim(c, NULL, &o, PS_OPTIM_F_CLIP_NORM));
  CK_PS(c, ps_lookup(c, "mo", &ti));
  ck_assert_double_eq(ti.spec.optim.clip_norm, 5);
  ps_tensor_info_free(&ti);
  CK_PS(c, ps_lookup(c, "sg", &ti));
  ck_assert_double_eq(ti.spec.optim.clip_norm, 5);
  ps_tensor_info_free(&ti);

  /* The job's workers restarting with the spec they created are welcome;
   * a create with another spec is still refused. */
  CK_PS(c, ps_create(c, "sg", shape, 1, &sg));
  sg.optim.lr = 0.5;
  CK_FAILS(c, ps_create(c, "sg", shape, 1, &sg), PS_EEXISTS, "lr");
  ps_close(c);
  ts_stop_all_clean();
}
END_TEST

/* A restart on the same --data-dir restores the tuning: lookup shows it and
 * the next update uses it; the spec as created comes back too. */
START_TEST(tune_survives_restart) {
  char dir[600];
  snprintf(dir, sizeof(dir), "%s/tune-data", th_tmpdir());
  ck_assert_int_eq(mkdir(dir, 0700), 0);
  const char *extra[] = {"--data-dir", dir, NULL};
  th_psd *p = ts_start(0, extra);
  int port = p->port;
  char list[64];
  snprintf(list, sizeof(list), "%s", p->addr);
  ps_client *c = ts_connect_as(list, -1, 1, 0);
  ps_tensor_spec sg;
  spec_of(&sg, PS_INIT_HE_NORMAL, PS_OPT_SGD, 0.1, 0);
  uint64_t shape[1] = {100};
  float w1[100], w2[100], g[100];
  fill(g, 100, 0, 0);
  CK_PS(c, ps_create(c, "t", shape, 1, &sg));
  CK_PS(c, ps_push_pull(c, "t", g, w1, 100, NULL));
  ps_optim_spec o;
  memset(&o, 0, sizeof(o));
  o.lr = 0.5;
  o.weight_decay = 0.25;
  CK_PS(c, ps_set_optim(c, "t", &o, PS_OPTIM_F_LR));
  CK_PS(c, ps_checkpoint(c));
  ps_close(c);
  ts_stop_clean(p);
  ck_assert(th_log_contains(p, "tuned tensor 't'"));

  p = ts_start(port, extra);
  c = ts_connect_as(list, -1, 1, 0);
  ps_tensor_info ti;
  CK_PS(c, ps_lookup(c, "t", &ti));
  ck_assert_double_eq(ti.spec.optim.lr, 0.5);
  ck_assert_double_eq(ti.spec.optim.weight_decay, 0);
  ck_assert_uint_eq(ti.version, 1);
  ps_tensor_info_free(&ti);
  CK_PS(c, ps_create(c, "t", shape, 1, &sg)); /* the spec as created */
  CK_PS(c, ps_push_pull(c, "t", g, w2, 100, NULL));
  expect_sgd_step(w1, w2, g, 0.5, 100);
  ps_close(c);
  ts_stop_all_clean();
}
END_TEST

/* A set held for a sync round survives a shard restart (SIGTERM writes the
 * final checkpoint): after it, the round completes and the set lands after
 * it, once. (The set's resend may come before the round completes, and get
 * the held set's reply, or after, and be answered as a duplicate: written
 * once either way.) */
START_TEST(held_set_survives_restart) {
  char dir[600];
  snprintf(dir, sizeof(dir), "%s/held-data", th_tmpdir());
  ck_assert_int_eq(mkdir(dir, 0700), 0);
  const char *extra[] = {"--data-dir", dir, NULL};
  th_psd *p = ts_start(0, extra);
  int port = p->port;
  char list[64];
  snprintf(list, sizeof(list), "%s", p->addr);
  ps_client *admin = ts_connect_as(list, -1, 1, 0);
  ps_client *w0 = ts_connect_as(list, 0, 2, 0), *w1 = ts_connect_as(list, 1, 2, 0);
  ps_tensor_spec s;
  spec_of(&s, PS_INIT_ZEROS, PS_OPT_SGD, 0.5, 0);
  uint64_t shape[1] = {8};
  CK_PS(w0, ps_create(w0, "h", shape, 1, &s));
  float g0[8], g1[8], o0[8], o1[8], vals[8], out[8];
  fill(g0, 8, 0, 0);
  fill(g1, 8, 1, 0);
  for (int i = 0; i < 8; i++) vals[i] = 3.0f - (float)i;
  held_set h;
  hold_set(&h, admin, w0, "h", g0, o0, vals, 8);
  ts_stop_clean(p);
  p = ts_start(port, extra);
  /* The clients reconnect by themselves and resend what was not answered. */
  uint64_t v0, v1, v;
  CK_PS(w1, ps_push_pull(w1, "h", g1, o1, 8, &v1));
  CK_PS(w0, ps_wait(w0, h.push, &v0));
  pthread_join(h.th, NULL);
  ck_assert_msg(h.set.rc == 0, "set: %s: %s", ps_strerror(h.set.rc), h.set.err);
  ck_assert_uint_eq(v0, 1);
  ck_assert_uint_eq(v1, 1);
  ck_assert_int_eq(memcmp(o0, o1, sizeof(o0)), 0);
  CK_PS(admin, ps_pull(admin, "h", out, 8, &v));
  ck_assert_int_eq(memcmp(out, vals, sizeof(out)), 0);
  ck_assert_uint_eq(v, 1);
  ps_close(w0);
  ps_close(w1);
  ps_close(admin);
  ts_stop_all_clean();
}
END_TEST

static Suite *control_suite(void) {
  Suite *s = suite_create("control");
  TCase *tc = tcase_create("none");
  tcase_add_checked_fixture(tc, NULL, ts_kill_all);
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, none_sync_allreduce);
  tcase_add_test(tc, none_async_latest);
  suite_add_tcase(s, tc);
  tc = tcase_create("lifecycle");
  tcase_add_checked_fixture(tc, NULL, ts_kill_all);
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, delete_frees_every_shard);
  tcase_add_test(tc, delete_answers_what_waits);
  tcase_add_test(tc, reset_is_a_fresh_create);
  tcase_add_test(tc, set_ranges_and_state);
  tcase_add_test(tc, set_between_sync_rounds);
  tcase_add_test(tc, held_set_survives_restart);
  suite_add_tcase(s, tc);
  tc = tcase_create("tune");
  tcase_add_checked_fixture(tc, NULL, ts_kill_all);
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, tune_from_next_update);
  tcase_add_test(tc, tune_survives_restart);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return check_run(control_suite()); }
