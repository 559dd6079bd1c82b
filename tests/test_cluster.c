/*
 * test_cluster.c -- several real psd shards and several workers (threads,
 * each with its own client handle, as separate trainer processes would
 * have) on loopback: sync exactness, bounded staleness, and durability
 * through SIGTERM and kill -9.
 *
 * No outcome here depends on the machine's speed: where a test needs the
 * workers in a given order (a slow worker, a dead one, a stop mid-stream)
 * it holds them there (a barrier after every worker joined, a worker that
 * waits for the others' clocks, a pusher that waits at a gate); sleeps
 * only vary the pace.
 */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check_main.h"
#include "harness.h"
#include "psd.h"
#include "psmath.h"
#include "shards.h"

/* The gradient worker `rank` pushes at `step` for element i: distinct per
 * rank and step, with float rounding that depends on summation order. */
static float grad_at(int rank, int step, uint64_t i) {
  uint64_t h = (uint64_t)rank * 0x9e3779b97f4a7c15ull ^ (uint64_t)step * 0xbf58476d1ce4e5b9ull ^ i;
  h ^= h >> 29;
  h *= 0x94d049bb133111ebull;
  h ^= h >> 32;
  return ((float)(h & 0xffffff) / (float)0x1000000 - 0.5f) * (1.0f + (float)rank * 0.37f);
}

/* ---- sync: 3 shards x 4 workers equals one process, bit for bit ------------ */

#define SYNC_W 4
#define SYNC_STEPS 12
#define SYNC_N 1000

typedef struct {
  const char *servers;
  int rank;
  int rc;
  char err[256];
} wargs;

/* Workers that need every rank joined before any of them goes on meet
 * here (whether their connect worked or not, so that none waits forever). */
static pthread_barrier_t joined;

/* Run n workers (threads, each with its own handle) and fail the test with
 * the first one's error. */
static void run_workers(const char *list, int n, void *(*fn)(void *)) {
  pthread_t t[8];
  wargs a[8];
  ck_assert_int_le(n, 8);
  pthread_barrier_init(&joined, NULL, (unsigned)n);
  for (int r = 0; r < n; r++) {
    a[r] = (wargs){.servers = list, .rank = r};
    pthread_create(&t[r], NULL, fn, &a[r]);
  }
  for (int r = 0; r < n; r++) pthread_join(t[r], NULL);
  pthread_barrier_destroy(&joined);
  for (int r = 0; r < n; r++)
    if (a[r].rc != 0) ck_abort_msg("worker %d: %s", r, a[r].err);
}

static void make_spec(ps_tensor_spec *s) {
  ps_tensor_spec_init(s, PS_INIT_GLOROT_UNIFORM, PS_OPT_ADAM);
  s->init.seed = 5;
  s->block_size = 64; /* 16 blocks over 3 shards */
  s->optim.lr = 0.01;
}

static void *sync_worker(void *p) {
  wargs *a = p;
  ps_options o;
  ps_options_init(&o);
  o.rank = a->rank;
  o.num_workers = SYNC_W;
  o.staleness = 0;
  ps_client *c;
  if ((a->rc = ps_connect(&c, a->servers, &o)) != 0) {
    snprintf(a->err, sizeof(a->err), "%s", ps_last_error());
    return NULL;
  }
  ps_tensor_spec s;
  make_spec(&s);
  uint64_t shape[2] = {40, 25};
  if ((a->rc = ps_create(c, "layer", shape, 2, &s)) != 0) goto out;
  float g[SYNC_N], w[SYNC_N];
  for (int step = 0; step < SYNC_STEPS && a->rc == 0; step++) {
    for (uint64_t i = 0; i < SYNC_N; i++) g[i] = grad_at(a->rank, step, i);
    /* Vary the arrival order: rank r dawdles differently each step. */
    usleep((useconds_t)(((a->rank * 7 + step * 3) % 5) * 2000));
    uint64_t version;
    a->rc = ps_push_pull(c, "layer", g, w, SYNC_N, &version);
    if (a->rc == 0 && version != (uint64_t)step + 1) {
      snprintf(a->err, sizeof(a->err), "rank %d step %d: version %llu", a->rank, step,
               (unsigned long long)version);
      a->rc = -1;
    }
    ps_clock(c);
  }
out:
  if (a->rc != 0 && a->err[0] == '\0') snprintf(a->err, sizeof(a->err), "%s", ps_errmsg(c));
  ps_close(c);
  return NULL;
}

START_TEST(sync_matches_single_process) {
  char list[256];
  ts_start_cluster(3, NULL, list, sizeof(list));
  run_workers(list, SYNC_W, sync_worker);
  /* The reference: one process, the same init, rank-ordered averages. */
  ps_tensor_spec s;
  make_spec(&s);
  uint64_t shape[2] = {40, 25};
  float *ref = malloc(SYNC_N * sizeof(float));
  float *state = calloc(2 * SYNC_N, sizeof(float));
  psm_init_fill(&s.init, shape, 2, psm_hash_name("layer"), 0, ref, SYNC_N);
  /* Blocks are updated independently, so apply per block as the shards do. */
  for (uint64_t b0 = 0; b0 < SYNC_N; b0 += 64) {
    uint64_t n = SYNC_N - b0 < 64 ? SYNC_N - b0 : 64;
    float m[2 * 64] = {0};
    for (int step = 0; step < SYNC_STEPS; step++) {
      float avg[64];
      for (uint64_t i = 0; i < n; i++) {
        float acc = grad_at(0, step, b0 + i);
        for (int r = 1; r < SYNC_W; r++) acc += grad_at(r, step, b0 + i);
        avg[i] = acc / (float)SYNC_W;
      }
      /* psm_apply wants state as [m | v] arrays of n floats. */
      psm_apply(&s.optim, (uint64_t)step + 1, ref + b0, m, avg, 1.0f, n);
    }
  }
  ps_client *c;
  ck_assert_int_eq(ps_connect(&c, list, NULL), 0);
  float *got = malloc(SYNC_N * sizeof(float));
  uint64_t version;
  ck_assert_int_eq(ps_pull(c, "layer", got, SYNC_N, &version), 0);
  ck_assert_uint_eq(version, SYNC_STEPS);
  for (int i = 0; i < SYNC_N; i++)
    if (memcmp(&got[i], &ref[i], sizeof(float)) != 0)
      ck_abort_msg("element %d: server %.9g, reference %.9g", i, got[i], ref[i]);
  ps_close(c);
  free(ref);
  free(state);
  free(got);
  ts_stop_all_clean();
}
END_TEST

/* ---- SSP: nobody runs more than s clocks ahead ---------------------------------- */

#define SSP_W 3
#define SSP_S 2
#define SSP_STEPS 25

static atomic_int ssp_clock[SSP_W];
static atomic_int ssp_violations, ssp_max_ahead;

static void *ssp_worker(void *p) {
  wargs *a = p;
  ps_options o;
  ps_options_init(&o);
  o.rank = a->rank;
  o.num_workers = SSP_W;
  o.staleness = SSP_S;
  ps_client *c;
  a->rc = ps_connect(&c, a->servers, &o);
  pthread_barrier_wait(&joined); /* every rank has joined the job */
  if (a->rc != 0) {
    snprintf(a->err, sizeof(a->err), "%s", ps_last_error());
    return NULL;
  }
  ps_tensor_spec s;
  ps_tensor_spec_init(&s, PS_INIT_ZEROS, PS_OPT_SGD);
  uint64_t shape[1] = {256};
  if ((a->rc = ps_create(c, "ssp", shape, 1, &s)) != 0) goto out;
  float g[256], w[256];
  /* Rank 0 is the slow one: it starts only once the others have run as far
   * ahead as the bound lets them (their pulls at clock s were granted with
   * rank 0 at clock 0), so the lead is exercised whatever the timing; their
   * next pulls are held until rank 0 moves. */
  if (a->rank == 0)
    for (int r = 1; r < SSP_W; r++)
      while (atomic_load(&ssp_clock[r]) < SSP_S + 1) usleep(1000);
  for (int i = 0; i < 256; i++) g[i] = 0.01f;
  for (int step = 0; step < SSP_STEPS && a->rc == 0; step++) {
    if ((a->rc = ps_pull(c, "ssp", w, 256, NULL)) != 0) break;
    /* Our clock is `step`; the pull returned, so the slowest worker must
     * be within s clocks (local clocks run ahead of the servers' view). */
    int mine = atomic_load(&ssp_clock[a->rank]), slowest = mine;
    for (int r = 0; r < SSP_W; r++) {
      int cr = atomic_load(&ssp_clock[r]);
      if (cr < slowest) slowest = cr;
    }
    if (mine - slowest > SSP_S) atomic_fetch_add(&ssp_violations, 1);
    if (mine - slowest > atomic_load(&ssp_max_ahead)) atomic_store(&ssp_max_ahead, mine - slowest);
    /* Pace only: rank 0 stays slower than the others. */
    usleep(a->rank == 0 ? 9000 : 1000);
    if ((a->rc = ps_push(c, "ssp", g, 256)) != 0) break;
    atomic_fetch_add(&ssp_clock[a->rank], 1);
    ps_clock(c);
  }
out:
  if (a->rc != 0 && a->err[0] == '\0') snprintf(a->err, sizeof(a->err), "%s", ps_errmsg(c));
  ps_close(c);
  return NULL;
}

START_TEST(ssp_bounds_staleness) {
  char list[256];
  ts_start_cluster(2, NULL, list, sizeof(list));
  run_workers(list, SSP_W, ssp_worker);
  ck_assert_int_eq(atomic_load(&ssp_violations), 0);
  /* The fast workers did run ahead, to the bound: SSP was exercised. */
  ck_assert_int_eq(atomic_load(&ssp_max_ahead), SSP_S);
  /* The servers' own record agrees. */
  ps_client *c;
  ck_assert_int_eq(ps_connect(&c, list, NULL), 0);
  for (int i = 0; i < 2; i++) {
    char *json;
    ck_assert_int_eq(ps_stats(c, i, &json), 0);
    char *p = strstr(json, "\"max_ahead\":");
    ck_assert_ptr_nonnull(p);
    ck_assert_int_le(atoi(p + 12), SSP_S);
    free(json);
  }
  ps_close(c);
  ts_stop_all_clean();
}
END_TEST

/* ---- a worker dies: the others finish ----------------------------------------- */

static void *quitter(void *p) {
  wargs *a = p;
  ps_options o;
  ps_options_init(&o);
  o.rank = a->rank;
  o.num_workers = 3;
  o.staleness = 0;
  /* The live workers wait in rounds for rank 2's departure; heartbeats
   * every 100 ms keep them far from the 3 s --worker-timeout themselves. */
  o.heartbeat_ms = 100;
  ps_client *c;
  a->rc = ps_connect(&c, a->servers, &o);
  /* Rank 2 has joined before anyone pushes: the rounds wait for it, and go
   * on only once the shard has seen it depart. */
  pthread_barrier_wait(&joined);
  if (a->rc != 0) {
    snprintf(a->err, sizeof(a->err), "connect: %s", ps_last_error());
    return NULL;
  }
  ps_tensor_spec s;
  ps_tensor_spec_init(&s, PS_INIT_ZEROS, PS_OPT_SGD);
  uint64_t shape[1] = {100};
  float g[100], w[100];
  for (int i = 0; i < 100; i++) g[i] = 1.0f;
  a->rc = ps_create(c, "dq", shape, 1, &s);
  int steps = a->rank == 2 ? 3 : 20;
  for (int step = 0; step < steps && a->rc == 0; step++)
    a->rc = ps_push_pull(c, "dq", g, w, 100, NULL);
  if (a->rank == 2) {
    /* Leave: ps_close says goodbye, so the rank departs at once (a crash
     * would make it depart after --worker-timeout); either way the others
     * go on without it. */
    ps_close(c);
    return NULL;
  }
  if (a->rc != 0) snprintf(a->err, sizeof(a->err), "rc %d: %s", a->rc, ps_errmsg(c));
  ps_close(c);
  return NULL;
}

START_TEST(dead_worker_does_not_hang_sync) {
  const char *extra[] = {"--worker-timeout", "3", NULL};
  char list[256];
  th_psd *sh = ts_start_cluster(2, extra, list, sizeof(list));
  run_workers(list, 3, quitter);
  /* Ranks 0 and 1 finished 20 sync rounds; past the 3rd (or 4th) every one
   * waited for rank 2 until the shard saw it leave (its goodbye). */
  int left = 0;
  for (int i = 0; i < 2; i++) {
    left += th_log_contains(&sh[i], "worker rank 2 left (it said goodbye)");
    ck_assert(!th_log_contains(&sh[i], "worker rank 2 departed: silent"));
  }
  ck_assert_int_ge(left, 1);
  ts_stop_all_clean();
}
END_TEST

/* ---- placement does not change values ------------------------------------------- */

static void pull_init(const char *servers, const char *name, uint64_t block_size, float *out,
                      uint64_t n) {
  ps_client *c;
  ck_assert_int_eq(ps_connect(&c, servers, NULL), 0);
  ps_tensor_spec s;
  ps_tensor_spec_init(&s, PS_INIT_GLOROT_UNIFORM, PS_OPT_ADAM);
  s.init.seed = 3;
  s.block_size = block_size;
  uint64_t shape[2] = {1000, 37};
  ck_assert_int_eq(ps_create(c, name, shape, 2, &s), 0);
  uint64_t v;
  ck_assert_int_eq(ps_pull(c, name, out, n, &v), 0);
  ck_assert_uint_eq(v, 0);
  ps_close(c);
}

START_TEST(init_same_on_1_and_7_shards) {
  const uint64_t n = 37000;
  float *one = malloc(n * 4), *seven = malloc(n * 4);
  char lb[512], name[64];
  ts_start_cluster(7, NULL, lb, sizeof(lb));
  /* The same name on both: the values depend on it. */
  ts_spread_name(lb, "init7", (n + 332) / 333, name, sizeof(name));
  char la[64];
  th_psd *a = ts_start_cluster(1, NULL, la, sizeof(la));
  pull_init(la, name, 0, one, n);
  ts_stop_clean(a);
  pull_init(lb, name, 333, seven, n); /* 112 blocks over 7 shards */
  /* Every shard really holds some of them. */
  ps_client *c;
  ck_assert_int_eq(ps_connect(&c, lb, NULL), 0);
  for (int i = 0; i < 7; i++) {
    char *json;
    ck_assert_int_eq(ps_stats(c, i, &json), 0);
    char *p = strstr(json, "\"blocks_touched\":");
    ck_assert_ptr_nonnull(p);
    ck_assert_int_gt(atoi(p + strlen("\"blocks_touched\":")), 0);
    free(json);
  }
  ps_close(c);
  ts_stop_all_clean();
  ck_assert_int_eq(memcmp(one, seven, n * 4), 0);
  free(one);
  free(seven);
}
END_TEST

/* Shards started with different default block sizes would cut a tensor
 * differently: creating it without an explicit block size is refused. */
START_TEST(block_size_disagreement_refused) {
  const char *a[] = {"--block-size", "1000", NULL}, *b[] = {"--block-size", "2000", NULL};
  th_psd *sh0 = ts_start(0, a), *sh1 = ts_start(0, b);
  char list[128];
  snprintf(list, sizeof(list), "%s,%s", sh0->addr, sh1->addr);
  ps_client *c;
  ck_assert_int_eq(ps_connect(&c, list, NULL), 0);
  ps_tensor_spec s;
  ps_tensor_spec_init(&s, PS_INIT_ZEROS, PS_OPT_SGD);
  uint64_t shape[1] = {10000};
  ck_assert_int_eq(ps_create(c, "cut", shape, 1, &s), PS_ESPEC);
  ck_assert_ptr_nonnull(strstr(ps_errmsg(c), "disagree"));
  s.block_size = 500; /* an explicit block size settles it */
  ck_assert_int_eq(ps_create(c, "cut2", shape, 1, &s), 0);
  s.block_size = 0; /* and 0 then means "the tensor's own" */
  ck_assert_int_eq(ps_create(c, "cut2", shape, 1, &s), 0);
  ps_close(c);
  ts_stop_all_clean();
}
END_TEST

/* A client whose server list differs from the job's (another order, a
 * missing shard) is refused with a sentence naming both lists, before it
 * can read or write a block in the wrong place. */
START_TEST(server_list_mismatch_refused) {
  char list[128], reversed[128];
  th_psd *sh = ts_start_cluster(2, NULL, list, sizeof(list));
  snprintf(reversed, sizeof(reversed), "%s,%s", sh[1].addr, sh[0].addr);
  ps_client *a, *b, *one;
  ck_assert_int_eq(ps_connect(&a, list, NULL), 0);
  ps_tensor_spec s;
  ps_tensor_spec_init(&s, PS_INIT_ZEROS, PS_OPT_SGD);
  uint64_t shape[1] = {1000};
  ck_assert_int_eq(ps_create(a, "placed", shape, 1, &s), 0);
  /* Tools with their own list may still ping. */
  ck_assert_int_eq(ps_connect(&one, sh[1].addr, NULL), 0);
  ck_assert_int_eq(ps_ping(one), 0);
  float w[1000];
  ck_assert_int_eq(ps_pull(one, "placed", w, 1000, NULL), PS_EWRONGSHARD);
  ck_assert_ptr_nonnull(strstr(ps_errmsg(one), "server list mismatch"));
  ps_close(one);
  ck_assert_int_eq(ps_connect(&b, reversed, NULL), 0);
  ck_assert_int_eq(ps_pull(b, "placed", w, 1000, NULL), PS_EWRONGSHARD);
  ck_assert_ptr_nonnull(strstr(ps_errmsg(b), list));
  ps_close(b);
  ck_assert_int_eq(ps_pull(a, "placed", w, 1000, NULL), 0);
  ps_close(a);
  ts_stop_all_clean();
}
END_TEST

/* More than 2^31 elements: 64-bit offsets end to end, and only the block
 * that is touched takes memory on the shard. */
START_TEST(tensor_beyond_2_pow_31) {
  char list[64];
  ts_start_cluster(1, NULL, list, sizeof(list));
  ps_client *c;
  ck_assert_int_eq(ps_connect(&c, list, NULL), 0);
  ps_tensor_spec s;
  ps_tensor_spec_init(&s, PS_INIT_UNIFORM, PS_OPT_SGD);
  s.init.limit = 0.5;
  s.init.seed = 9;
  const uint64_t n = (1ull << 31) + 7;
  uint64_t shape[1] = {n};
  ck_assert_int_eq(ps_create(c, "huge", shape, 1, &s), 0);
  float got[16], want[16];
  uint64_t v = 99;
  ck_assert_int_eq(ps_pull_range(c, "huge", n - 16, got, 16, &v), 0);
  ck_assert_uint_eq(v, 0);
  psm_init_fill(&s.init, shape, 1, psm_hash_name("huge"), n - 16, want, 16);
  ck_assert_int_eq(memcmp(got, want, sizeof(got)), 0);
  for (int i = 0; i < 16; i++) ck_assert(got[i] >= -0.5f && got[i] <= 0.5f);
  char *json;
  ck_assert_int_eq(ps_stats(c, 0, &json), 0);
  /* [n-16, n) straddles blocks 8191 and 8192 (the last, 7 elements). */
  ck_assert_ptr_nonnull(strstr(json, "\"blocks_touched\":2,"));
  free(json);
  ps_tensor_info info;
  ck_assert_int_eq(ps_lookup(c, "huge", &info), 0);
  ck_assert_uint_eq(info.numel, n);
  ps_tensor_info_free(&info);
  ps_close(c);
  ts_stop_all_clean();
}
END_TEST

/* ---- durability: exactly once through SIGTERM, checkpoint + kill -9 ---------------- */

typedef struct {
  const char *servers;
  int n, depth;
  int gate_at;   /* > 0: issue no push past this many until go is set */
  atomic_int go;
  atomic_int acked;
  int rc;
  char err[256];
} pusher_args;

/* Push `n` gradients of all ones through sgd lr=1: w = -version exactly. */
static void *pusher(void *p) {
  pusher_args *a = p;
  ps_options o;
  ps_options_init(&o);
  o.op_timeout_ms = 600000; /* pushes wait through a restart the test controls */
  ps_client *c;
  if ((a->rc = ps_connect(&c, a->servers, &o)) != 0) {
    snprintf(a->err, sizeof(a->err), "%s", ps_last_error());
    return NULL;
  }
  ps_tensor_spec s;
  ps_tensor_spec_init(&s, PS_INIT_ZEROS, PS_OPT_SGD);
  s.optim.lr = 1.0;
  uint64_t shape[1] = {64};
  if ((a->rc = ps_create(c, "count", shape, 1, &s)) != 0) goto out;
  static float ones[64];
  for (int i = 0; i < 64; i++) ones[i] = 1.0f;
  ps_ticket *tk = calloc((size_t)a->depth, sizeof(*tk));
  int issued = 0, done = 0;
  while (done < a->n && a->rc == 0) {
    while (issued < a->n && issued - done < a->depth) {
      if (a->gate_at > 0 && issued >= a->gate_at && !atomic_load(&a->go)) break;
      if ((a->rc = ps_push_async(c, "count", ones, 64, NULL, NULL, &tk[issued % a->depth])) != 0)
        break;
      issued++;
    }
    if (a->rc) break;
    if (done == issued) { /* at the gate with nothing in flight */
      usleep(1000);
      continue;
    }
    a->rc = ps_wait(c, tk[done % a->depth], NULL);
    done++;
    atomic_store(&a->acked, done);
  }
  free(tk);
out:
  if (a->rc != 0) snprintf(a->err, sizeof(a->err), "%s", ps_errmsg(c));
  ps_close(c);
  return NULL;
}

static uint64_t pull_count(const char *servers, float *w0) {
  ps_client *c;
  ck_assert_int_eq(ps_connect(&c, servers, NULL), 0);
  float w[64];
  uint64_t version;
  ck_assert_int_eq(ps_pull(c, "count", w, 64, &version), 0);
  for (int i = 0; i < 64; i++) ck_assert_float_eq(w[i], w[0]);
  *w0 = w[0];
  ps_close(c);
  return version;
}

START_TEST(sigterm_under_load_loses_nothing) {
  char dir[512], cmd[600];
  snprintf(dir, sizeof(dir), "%s/dur", th_tmpdir());
  snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
  ck_assert_int_eq(system(cmd), 0);
  const char *extra[] = {"--data-dir", dir, NULL};
  th_psd *sh = ts_start(0, extra);
  int port = sh->port;
  /* The pusher streams, but issues nothing past push 10000 until the test
   * says so: the stop lands mid-stream by construction. */
  pusher_args a = {.servers = sh->addr, .n = 20000, .depth = 16, .gate_at = 10000};
  pthread_t t;
  pthread_create(&t, NULL, pusher, &a);
  while (atomic_load(&a.acked) < 5000) usleep(1000);
  /* Stop mid-stream (pushes usually in flight); let the pusher go on while
   * the shard is down (its pushes wait for the reconnect), and restart on
   * the same port from the final checkpoint. */
  ts_stop_clean(sh);
  int acked_at_stop = atomic_load(&a.acked);
  atomic_store(&a.go, 1);
  ck_assert_int_eq(th_psd_start(sh, port, extra), 0);
  pthread_join(t, NULL);
  if (a.rc != 0) ck_abort_msg("pusher: %s", a.err);
  ck_assert_int_le(acked_at_stop, a.gate_at); /* the stop did land mid-stream */
  float w0;
  uint64_t v = pull_count(sh->addr, &w0);
  /* Every push applied exactly once: none lost, none doubled. */
  ck_assert_uint_eq(v, (uint64_t)a.n);
  ck_assert_float_eq(w0, -(float)a.n);
  ts_stop_all_clean();
  ck_assert_int_eq(system(cmd), 0);
}
END_TEST

START_TEST(kill9_restores_last_checkpoint) {
  char dir[512], cmd[600];
  snprintf(dir, sizeof(dir), "%s/k9", th_tmpdir());
  snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
  ck_assert_int_eq(system(cmd), 0);
  const char *extra[] = {"--data-dir", dir, NULL};
  th_psd *sh = ts_start(0, extra);
  int port = sh->port;
  pusher_args a = {.servers = sh->addr, .n = 500, .depth = 4};
  pusher(&a);
  ck_assert_int_eq(a.rc, 0);
  ps_client *c;
  ck_assert_int_eq(ps_connect(&c, sh->addr, NULL), 0);
  ck_assert_int_eq(ps_checkpoint(c), 0);
  ps_close(c);
  pusher_args b = {.servers = sh->addr, .n = 300, .depth = 4};
  pusher(&b); /* acknowledged, then lost with the crash */
  ck_assert_int_eq(b.rc, 0);
  th_psd_stop(sh, SIGKILL, 5000);
  ck_assert_int_eq(th_psd_start(sh, port, extra), 0);
  ck_assert(th_log_contains(sh, "restored checkpoint"));
  pusher_args d = {.servers = sh->addr, .n = 200, .depth = 4};
  pusher(&d);
  ck_assert_int_eq(d.rc, 0);
  float w0;
  uint64_t v = pull_count(sh->addr, &w0);
  /* The last checkpoint (500) plus what was pushed after the restart. */
  ck_assert_uint_eq(v, 700);
  ck_assert_float_eq(w0, -700.0f);
  ts_stop_all_clean();
  ck_assert_int_eq(system(cmd), 0);
}
END_TEST

int main(void) {
  Suite *s = suite_create("cluster");
  TCase *tc = tcase_create("consistency");
  tcase_add_checked_fixture(tc, NULL, ts_kill_all);
  tcase_set_timeout(tc, 180);
  tcase_add_test(tc, sync_matches_single_process);
  tcase_add_test(tc, ssp_bounds_staleness);
  tcase_add_test(tc, dead_worker_does_not_hang_sync);
  tcase_add_test(tc, init_same_on_1_and_7_shards);
  tcase_add_test(tc, tensor_beyond_2_pow_31);
  tcase_add_test(tc, block_size_disagreement_refused);
  tcase_add_test(tc, server_list_mismatch_refused);
  suite_add_tcase(s, tc);
  tc = tcase_create("durability");
  tcase_add_checked_fixture(tc, NULL, ts_kill_all);
  tcase_set_timeout(tc, 240);
  tcase_add_test(tc, sigterm_under_load_loses_nothing);
  tcase_add_test(tc, kill9_restores_last_checkpoint);
  suite_add_tcase(s, tc);
  return check_run(s);
}
