/*
 * test_client_integration.c -- the worker library (libpsd) against real psd
 * daemons on loopback: every test starts its own shards (tests/harness.c)
 * and talks to them only through psd.h.
 *
 * Fault tests use two tools: SIGSTOP (a shard that accepts but never
 * answers) and a small in-process TCP proxy that can swallow the replies of
 * one connection and then cut it, so that a push the shard applied is
 * resent by the client on the next connection (exactly-once).
 *
 * No outcome depends on the machine's speed. A test waits for a state (bytes
 * through the proxy, a shard's counter, a flag) with a bound far beyond
 * need (WAIT_MS). Where a deadline is the subject, the call's end is checked
 * against the deadline from below (never early) and against a bound far
 * above it (it did end: without the deadline it would wait forever); calls
 * on a handle whose short deadline exists only for the call under test
 * retry when that deadline passes, if they are idempotent.
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
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#include "check_main.h"
#include "harness.h"
#include "proxy.h"
#include "placement.h"
#include "psd.h"
#include "psd_limits.h"
#include "psmath.h"
#include "shards.h"

/* ---- shards and clients (tests/shards.h) -------------------------------- */

static void setup(void) {
  signal(SIGPIPE, SIG_IGN); /* the proxy writes to sockets that may close */
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* Run an idempotent call on a handle with a short deadline until it does
 * not time out (a loaded machine may make it miss a deadline meant for
 * another call); at most WAIT_MS in all. */
#define RETRY_TIMEOUTS(rc_, call)                                                    \
  do {                                                                               \
    double t0_ = now_ms();                                                           \
    while (((rc_) = (call)) == PS_ETIMEDOUT && now_ms() - t0_ < WAIT_MS) {           \
    }                                                                                \
  } while (0)

/* A tool whose calls time out after op_timeout_ms. */
static ps_client *connect_to(const char *list, int op_timeout_ms) {
  ps_options o;
  ts_options(&o, -1, 1, -1);
  o.op_timeout_ms = op_timeout_ms;
  return ts_connect(list, &o);
}

static void sgd_spec(ps_tensor_spec *s, ps_init_kind init, double lr, uint64_t block) {
  ps_tensor_spec_init(s, init, PS_OPT_SGD);
  s->optim.lr = lr;
  s->block_size = block;
}

/* Numeric field `key` of a flat JSON object, or -1. */
static long long json_num(const char *json, const char *key) {
  char pat[64];
  snprintf(pat, sizeof(pat), "\"%s\":", key);
  const char *p = strstr(json, pat);
  return p ? atoll(p + strlen(pat)) : -1;
}

/* ---- basics ------------------------------------------------------------ */

START_TEST(create_pull_push_push_pull) {
  char list[256];
  ts_start_cluster(2, NULL, list, sizeof(list));
  ps_client *c = connect_to(list, WAIT_MS);
  ck_assert_int_eq(ps_num_shards(c), 2);
  CK_PS(c, ps_ping(c));

  uint64_t shape[2] = {30, 20};
  ps_tensor_spec s;
  sgd_spec(&s, PS_INIT_GLOROT_UNIFORM, 0.5, 128);
  s.init.seed = 7;
  CK_PS(c, ps_create(c, "basic", shape, 2, &s));

  float w0[600], w1[600], w2[600], g[600];
  uint64_t version = 99;
  CK_PS(c, ps_pull(c, "basic", w0, 600, &version));
  ck_assert_uint_eq(version, 0);
  float mx = 0;
  for (int i = 0; i < 600; i++) mx = fmaxf(mx, fabsf(w0[i]));
  ck_assert_msg(mx > 0.01f && mx < 0.5f, "glorot_uniform values look wrong (max |w| %g)", mx);

  for (int i = 0; i < 600; i++) g[i] = (float)(i % 7) - 3.0f;
  CK_PS(c, ps_push(c, "basic", g, 600));
  CK_PS(c, ps_pull(c, "basic", w1, 600, &version));
  ck_assert_uint_eq(version, 1);
  for (int i = 0; i < 600; i++)
    ck_assert_msg(fabsf(w1[i] - (w0[i] - 0.5f * g[i])) < 1e-6f, "element %d: %g, expected %g",
                  i, w1[i], w0[i] - 0.5f * g[i]);

  /* push-pull returns the values after its own update. */
  CK_PS(c, ps_push_pull(c, "basic", g, w2, 600, &version));
  ck_assert_uint_eq(version, 2);
  CK_PS(c, ps_pull(c, "basic", w1, 600, &version));
  ck_assert_uint_eq(version, 2);
  ck_assert(memcmp(w1, w2, sizeof(w1)) == 0);

  /* grad and out may be the same buffer. */
  memcpy(w2, g, sizeof(g));
  CK_PS(c, ps_push_pull(c, "basic", w2, w2, 600, &version));
  ck_assert_uint_eq(version, 3);
  for (int i = 0; i < 600; i++) ck_assert(fabsf(w2[i] - (w1[i] - 0.5f * g[i])) < 1e-6f);

  ps_tensor_info ti;
  CK_PS(c, ps_lookup(c, "basic", &ti));
  ck_assert_str_eq(ti.name, "basic");
  ck_assert_int_eq(ti.ndim, 2);
  ck_assert_uint_eq(ti.shape[0], 30);
  ck_assert_uint_eq(ti.shape[1], 20);
  ck_assert_uint_eq(ti.numel, 600);
  ck_assert_int_eq(ti.spec.optim.kind, PS_OPT_SGD);
  ck_assert(ti.spec.optim.lr == 0.5);
  ck_assert_uint_eq(ti.spec.block_size, 128);
  ck_assert_uint_eq(ti.spec.init.seed, 7);
  ps_tensor_info_free(&ti);

  ps_tensor_info *all;
  size_t n;
  CK_PS(c, ps_list(c, &all, &n));
  ck_assert_uint_eq(n, 1);
  ck_assert_str_eq(all[0].name, "basic");
  ps_list_free(all, n);

  char *json;
  CK_PS(c, ps_stats(c, 1, &json));
  ck_assert_int_eq(json_num(json, "shard_index"), 1);
  free(json);
  ck_assert_int_eq(ps_stats(c, 2, &json), PS_EINVAL);
  ck_assert_int_eq(ps_clock(c), 1);
  ck_assert_int_eq(ps_clock(c), 2);
  ps_close(c);
}
END_TEST

START_TEST(create_is_idempotent_and_conflicts_say_what_differs) {
  char list[256];
  ts_start_cluster(2, NULL, list, sizeof(list));
  ps_client *c = connect_to(list, WAIT_MS);
  uint64_t shape[2] = {8, 4};
  ps_tensor_spec s;
  sgd_spec(&s, PS_INIT_HE_NORMAL, 0.01, 0);
  CK_PS(c, ps_create(c, "t", shape, 2, &s));
  float w[32];
  CK_PS(c, ps_push(c, "t", (float[32]){1}, 32));
  CK_PS(c, ps_create(c, "t", shape, 2, &s)); /* same spec: nothing changes */
  uint64_t version;
  CK_PS(c, ps_pull(c, "t", w, 32, &version));
  ck_assert_uint_eq(version, 1);

  s.optim.lr = 0.02;
  ck_assert_int_eq(ps_create(c, "t", shape, 2, &s), PS_EEXISTS);
  ck_assert_msg(strstr(ps_errmsg(c), "lr") != NULL, "message: %s", ps_errmsg(c));
  ck_assert_msg(strstr(ps_errmsg(c), "0.01") != NULL, "message: %s", ps_errmsg(c));

  s.optim.lr = 0.01;
  uint64_t other[2] = {4, 8};
  ck_assert_int_eq(ps_create(c, "t", other, 2, &s), PS_EEXISTS);
  ck_assert_msg(strstr(ps_errmsg(c), "shape") != NULL, "message: %s", ps_errmsg(c));

  /* Argument errors never reach the server. */
  ck_assert_int_eq(ps_create(c, "", shape, 2, &s), PS_EINVAL);
  ck_assert_int_eq(ps_create(c, "z", shape, 0, &s), PS_EINVAL);
  /* The library and the shards keep one set of limits (psd_limits.h): a
   * name of PSD_MAX_NAME bytes is created, one byte more is refused here,
   * as are more than 2^62 elements or PSD_MAX_NDIM dimensions. */
  char name[PSD_MAX_NAME + 2];
  memset(name, 'n', sizeof(name));
  name[PSD_MAX_NAME] = '\0';
  CK_PS(c, ps_create(c, name, shape, 2, &s));
  name[PSD_MAX_NAME] = 'n';
  name[PSD_MAX_NAME + 1] = '\0';
  ck_assert_int_eq(ps_create(c, name, shape, 2, &s), PS_EINVAL);
  uint64_t huge[2] = {1ull << 31, 1ull << 32}, deep[PSD_MAX_NDIM + 1];
  ck_assert_int_eq(ps_create(c, "huge", huge, 2, &s), PS_EINVAL);
  for (int i = 0; i <= PSD_MAX_NDIM; i++) deep[i] = 1;
  ck_assert_int_eq(ps_create(c, "deep", deep, PSD_MAX_NDIM + 1, &s), PS_EINVAL);
  /* NULL spec: he_normal + adam. */
  CK_PS(c, ps_create(c, "dflt", shape, 2, NULL));
  ps_tensor_info ti;
  CK_PS(c, ps_lookup(c, "dflt", &ti));
  ck_assert_int_eq(ti.spec.init.kind, PS_INIT_HE_NORMAL);
  ck_assert_int_eq(ti.spec.optim.kind, PS_OPT_ADAM);
  ps_tensor_info_free(&ti);
  ps_close(c);
}
END_TEST

START_TEST(unknown_tensor_and_wrong_count) {
  char list[256];
  ts_start_cluster(1, NULL, list, sizeof(list));
  ps_client *c = connect_to(list, WAIT_MS);
  float w[100] = {0};
  ck_assert_int_eq(ps_pull(c, "fc0.w", w, 100, NULL), PS_ENOTFOUND);
  ck_assert_msg(strstr(ps_errmsg(c), "fc0.w") != NULL, "message: %s", ps_errmsg(c));
  ps_tensor_info ti;
  ck_assert_int_eq(ps_lookup(c, "fc0.w", &ti), PS_ENOTFOUND);
  ck_assert_int_eq(ps_push(c, "fc0.w", w, 100), PS_ENOTFOUND);

  uint64_t shape[1] = {50};
  ps_tensor_spec s;
  sgd_spec(&s, PS_INIT_ZEROS, 0.1, 0);
  CK_PS(c, ps_create(c, "fc0.w", shape, 1, &s));
  ck_assert_int_eq(ps_pull(c, "fc0.w", w, 100, NULL), PS_ESHAPE);
  ck_assert_msg(strstr(ps_errmsg(c), "100") && strstr(ps_errmsg(c), "50"),
                "message should give both counts: %s", ps_errmsg(c));
  ck_assert_int_eq(ps_push(c, "fc0.w", w, 49), PS_ESHAPE);
  ck_assert_int_eq(ps_pull_range(c, "fc0.w", 40, w, 11, NULL), PS_ESHAPE);
  ck_assert_int_eq(ps_pull(c, "fc0.w", w, 0, NULL), PS_EINVAL);
  ck_assert_int_eq(ps_pull(c, "fc0.w", NULL, 50, NULL), PS_EINVAL);
  CK_PS(c, ps_pull(c, "fc0.w", w, 50, NULL));

  /* A NaN gradient is refused and applies nothing. */
  for (int i = 0; i < 50; i++) w[i] = 1;
  w[7] = NAN;
  ck_assert_int_eq(ps_push(c, "fc0.w", w, 50), PS_EGRADIENT);

  /* Tickets: unknown, and collected twice. */
  ck_assert_int_eq(ps_wait(c, 123456, NULL), PS_ETICKET);
  ps_ticket t;
  CK_PS(c, ps_pull_async(c, "fc0.w", w, 50, NULL, NULL, &t));
  CK_PS(c, ps_wait(c, t, NULL));
  ck_assert_int_eq(ps_wait(c, t, NULL), PS_ETICKET);
  ck_assert_str_eq(ps_strerror(PS_ETICKET), "PS_ETICKET: unknown or already collected ticket");
  ps_close(c);
}
END_TEST

START_TEST(pull_range_touches_only_its_blocks) {
  char list[256];
  ts_start_cluster(3, NULL, list, sizeof(list));
  ps_client *c = connect_to(list, WAIT_MS);
  uint64_t shape[1] = {1000};
  ps_tensor_spec s;
  sgd_spec(&s, PS_INIT_UNIFORM, 0.1, 64);
  s.init.limit = 1;
  CK_PS(c, ps_create(c, "r", shape, 1, &s));
  float all[1000], part[1000];
  CK_PS(c, ps_pull(c, "r", all, 1000, NULL));
  static const uint64_t cases[][2] = {{0, 1}, {0, 64}, {63, 2}, {100, 300}, {999, 1},
                                      {960, 40}, {0, 1000}, {65, 62}};
  for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
    uint64_t off = cases[k][0], n = cases[k][1], version = 99;
    memset(part, 0xff, sizeof(part));
    CK_PS(c, ps_pull_range(c, "r", off, part, n, &version));
    ck_assert_uint_eq(version, 0);
    ck_assert_msg(memcmp(part, all + off, n * sizeof(float)) == 0, "range [%llu, +%llu)",
                  (unsigned long long)off, (unsigned long long)n);
    /* Nothing past the range is written. */
    uint32_t bits;
    memcpy(&bits, &part[n < 1000 ? n : 999], 4);
    if (n < 1000) ck_assert_uint_eq(bits, 0xffffffffu);
  }
  ps_close(c);
}
END_TEST

/* ---- sharding ---------------------------------------------------------- */

/* Run the same 6 Adam steps on a tensor cut in 64-element blocks. */
static void run_steps(const char *list, const char *name, float *out, uint64_t *version) {
  ps_client *c = connect_to(list, WAIT_MS);
  uint64_t shape[2] = {37, 53};
  enum { N = 37 * 53 };
  ps_tensor_spec s;
  ps_tensor_spec_init(&s, PS_INIT_GLOROT_NORMAL, PS_OPT_ADAM);
  s.init.seed = 42;
  s.optim.lr = 0.01;
  s.block_size = 64;
  CK_PS(c, ps_create(c, name, shape, 2, &s));
  static float g[N], w[N];
  for (int step = 0; step < 6; step++) {
    for (int i = 0; i < N; i++) g[i] = (float)sin(0.37 * i + step) * 0.1f;
    if (step % 2) CK_PS(c, ps_push(c, name, g, N));
    else CK_PS(c, ps_push_pull(c, name, g, w, N, NULL));
  }
  CK_PS(c, ps_pull(c, name, out, N, version));
  ps_close(c);

  /* The blocks really are spread: every shard owns some (and the shards
   * agreed, or they would have answered WRONG_SHARD). */
  psp_servers sv;
  char err[128];
  ck_assert_int_eq(psp_servers_parse(&sv, list, err, sizeof(err)), 0);
  int owned[8] = {0};
  for (uint64_t b = 0; b < (N + 63) / 64; b++) owned[psp_owner(&sv, psm_hash_name(name), b)]++;
  for (int i = 0; i < sv.n; i++) ck_assert_msg(owned[i] > 0, "shard %d owns no block", i);
  psp_servers_free(&sv);
}

START_TEST(three_shards_match_one_bit_for_bit) {
  enum { N = 37 * 53 };
  static float one[N], three[N];
  char list1[64], list3[256];
  uint64_t v1, v3;
  ts_start_cluster(1, NULL, list1, sizeof(list1));
  ts_start_cluster(3, NULL, list3, sizeof(list3));
  char name[64]; /* the same name on both: the values depend on it */
  ts_spread_name(list3, "layer", (N + 63) / 64, name, sizeof(name));
  run_steps(list1, name, one, &v1);
  run_steps(list3, name, three, &v3);
  ck_assert_uint_eq(v1, 6);
  ck_assert_uint_eq(v3, 6);
  ck_assert_msg(memcmp(one, three, sizeof(one)) == 0,
                "3-shard values differ from the 1-shard run");
}
END_TEST

/* ---- concurrency ------------------------------------------------------- */

enum { CLIENTS = 6, PUSHES = 40, CNT_N = 3000 };

typedef struct {
  const char *list;
  int rc;
  char err[512];
} worker_arg;

static void *own_handle_worker(void *p) {
  worker_arg *a = p;
  ps_options o;
  ps_options_init(&o);
  o.rank = -1;
  ps_client *c;
  if ((a->rc = ps_connect(&c, a->list, &o)) != 0) {
    snprintf(a->err, sizeof(a->err), "%s", ps_last_error());
    return NULL;
  }
  static const float ones[CNT_N] = {[0 ... CNT_N - 1] = 1.0f};
  float w[CNT_N];
  for (int i = 0; i < PUSHES && a->rc == 0; i++) {
    a->rc = i % 4 == 3 ? ps_push_pull(c, "cnt", ones, w, CNT_N, NULL)
                       : ps_push(c, "cnt", ones, CNT_N);
    if (a->rc == 0 && i % 10 == 0) a->rc = ps_pull(c, "cnt", w, CNT_N, NULL);
  }
  if (a->rc != 0) snprintf(a->err, sizeof(a->err), "%s", ps_errmsg(c));
  ps_close(c);
  return NULL;
}

static void create_counter(ps_client *c) {
  uint64_t shape[1] = {CNT_N};
  ps_tensor_spec s;
  sgd_spec(&s, PS_INIT_ZEROS, 1.0, 512);
  CK_PS(c, ps_create(c, "cnt", shape, 1, &s));
}

static void check_counter(ps_client *c, int expect) {
  float w[CNT_N];
  uint64_t version;
  CK_PS(c, ps_pull(c, "cnt", w, CNT_N, &version));
  ck_assert_uint_eq(version, (uint64_t)expect);
  for (int i = 0; i < CNT_N; i++)
    ck_assert_msg(w[i] == (float)-expect, "element %d is %g, expected %d", i, w[i], -expect);
}

START_TEST(many_clients_at_once) {
  char list[256];
  ts_start_cluster(2, NULL, list, sizeof(list));
  ps_client *c = connect_to(list, WAIT_MS);
  create_counter(c);
  pthread_t th[CLIENTS];
  worker_arg a[CLIENTS];
  for (int i = 0; i < CLIENTS; i++) {
    a[i] = (worker_arg){.list = list};
    pthread_create(&th[i], NULL, own_handle_worker, &a[i]);
  }
  for (int i = 0; i < CLIENTS; i++) {
    pthread_join(th[i], NULL);
    ck_assert_msg(a[i].rc == 0, "client %d: %s: %s", i, ps_strerror(a[i].rc), a[i].err);
  }
  check_counter(c, CLIENTS * PUSHES);
  ps_close(c);
}
END_TEST

typedef struct {
  ps_client *c;
  int rc;
  char err[512];
} shared_arg;

static atomic_int callbacks;
static atomic_int callback_errors;

static void count_cb(ps_client *c, ps_ticket t, int status, uint64_t version, void *arg) {
  (void)c, (void)t, (void)version, (void)arg;
  atomic_fetch_add(&callbacks, 1);
  if (status != 0) atomic_fetch_add(&callback_errors, 1);
}

static void *shared_handle_worker(void *p) {
  shared_arg *a = p;
  static const float ones[CNT_N] = {[0 ... CNT_N - 1] = 1.0f};
  ps_ticket mine[PUSHES];
  int n = 0;
  for (int i = 0; i < PUSHES && a->rc == 0; i++) {
    ps_ticket t;
    a->rc = ps_push_async(a->c, "cnt", ones, CNT_N, count_cb, NULL, &t);
    /* Every other ticket is collected here, the rest by ps_wait_all. */
    if (a->rc == 0 && i % 2) mine[n++] = t;
  }
  for (int i = 0; i < n && a->rc == 0; i++) a->rc = ps_wait(a->c, mine[i], NULL);
  if (a->rc != 0) snprintf(a->err, sizeof(a->err), "%s", ps_errmsg(a->c));
  return NULL;
}

START_TEST(many_threads_share_one_handle) {
  char list[256];
  ts_start_cluster(3, NULL, list, sizeof(list));
  ps_client *c = connect_to(list, WAIT_MS);
  create_counter(c);
  atomic_store(&callbacks, 0);
  atomic_store(&callback_errors, 0);
  pthread_t th[CLIENTS];
  shared_arg a[CLIENTS];
  for (int i = 0; i < CLIENTS; i++) {
    a[i] = (shared_arg){.c = c};
    pthread_create(&th[i], NULL, shared_handle_worker, &a[i]);
  }
  for (int i = 0; i < CLIENTS; i++) {
    pthread_join(th[i], NULL);
    ck_assert_msg(a[i].rc == 0, "thread %d: %s: %s", i, ps_strerror(a[i].rc), a[i].err);
  }
  CK_PS(c, ps_wait_all(c));
  ck_assert_int_eq(atomic_load(&callbacks), CLIENTS * PUSHES);
  ck_assert_int_eq(atomic_load(&callback_errors), 0);
  CK_PS(c, ps_wait_all(c)); /* nothing left: returns at once */
  check_counter(c, CLIENTS * PUSHES);
  ps_close(c);
}
END_TEST

/* ---- faults ------------------------------------------------------------ */

START_TEST(reconnects_after_restart_and_resends) {
  char dir[512];
  snprintf(dir, sizeof(dir), "%s/restart-XXXXXX", th_tmpdir());
  ck_assert_ptr_nonnull(mkdtemp(dir));
  const char *extra[] = {"--data-dir", dir, NULL};
  th_psd *p = ts_start(0, extra);
  int port = p->port;
  ps_client *c = connect_to(p->addr, WAIT_MS);
  create_counter(c);
  static const float ones[CNT_N] = {[0 ... CNT_N - 1] = 1.0f};
  CK_PS(c, ps_push(c, "cnt", ones, CNT_N));
  CK_PS(c, ps_checkpoint(c));

  ck_assert_int_ne(th_psd_stop(p, SIGKILL, 5000), -1);
  /* Issued while the shard is down: queued, sent after the reconnect. */
  ps_ticket t;
  CK_PS(c, ps_push_async(c, "cnt", ones, CNT_N, NULL, NULL, &t));
  sleep_ms(300);
  p = ts_start(port, extra);
  uint64_t version = 0;
  CK_PS(c, ps_wait(c, t, &version));
  ck_assert_uint_eq(version, 2);
  check_counter(c, 2);
  ps_close(c);
  char cmd[600];
  snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
  ck_assert_int_eq(system(cmd), 0);
}
END_TEST

START_TEST(resent_push_applies_exactly_once) {
  th_psd *p = ts_start(0, NULL);
  th_proxy px;
  ck_assert_int_eq(th_proxy_start(&px, p->port), 0);
  const char *via = px.addr;
  ps_client *c = connect_to(via, WAIT_MS);
  /* A second handle straight to the shard, for its statistics only. */
  ps_client *watch = connect_to(p->addr, WAIT_MS);
  create_counter(c);
  uint64_t version;
  float w[CNT_N];
  CK_PS(c, ps_pull(c, "cnt", w, CNT_N, &version));
  ck_assert_uint_eq(version, 0);

  /* The shard applies the push, but its reply never arrives. */
  atomic_store(&px.drop_down, 1);
  static const float ones[CNT_N] = {[0 ... CNT_N - 1] = 1.0f};
  ps_ticket t;
  CK_PS(c, ps_push_async(c, "cnt", ones, CNT_N, NULL, NULL, &t));
  ts_wait_stat(watch, 0, "pushes", CNT_N / 512 + 1);
  ck_assert_int_eq(ts_stat(watch, 0, "pushes"), CNT_N / 512 + 1); /* one per block */
  ck_assert_int_eq(atomic_load(&px.accepted), 1);

  /* Cut the connection: the client reconnects and resends with the same
   * worker id and sequence numbers; the shard must not apply them again. */
  atomic_store(&px.drop_down, 0);
  atomic_store(&px.cut, 1);
  CK_PS(c, ps_wait(c, t, &version));
  ck_assert_int_ge(atomic_load(&px.accepted), 2);
  ck_assert_uint_eq(version, 1);
  ck_assert_int_eq(ts_stat(watch, 0, "duplicates"), CNT_N / 512 + 1);
  check_counter(c, 1);
  ps_close(watch);
  ps_close(c);
  th_proxy_stop(&px);
}
END_TEST

START_TEST(stopped_server_times_out) {
  th_psd *p = ts_start(0, NULL);
  ps_client *c = connect_to(p->addr, 700);
  uint64_t cshape[1] = {CNT_N};
  ps_tensor_spec s;
  sgd_spec(&s, PS_INIT_ZEROS, 1.0, 512);
  int rc;
  /* Creates are idempotent: one that misses the short deadline is retried. */
  RETRY_TIMEOUTS(rc, ps_create(c, "cnt", cshape, 1, &s));
  CK_PS(c, rc);
  uint64_t shape[1] = {8u << 20}; /* 32 MiB: more than the socket buffers hold */
  sgd_spec(&s, PS_INIT_ZEROS, 1.0, 1u << 20);
  RETRY_TIMEOUTS(rc, ps_create(c, "big", shape, 1, &s));
  CK_PS(c, rc);
  float w[CNT_N];

  kill(p->pid, SIGSTOP);
  double t0 = now_ms();
  ck_assert_int_eq(ps_pull(c, "cnt", w, CNT_N, NULL), PS_ETIMEDOUT);
  double el = now_ms() - t0;
  ck_assert_msg(el >= 650 && el < WAIT_MS, "timed out after %.0f ms (timeout 700)", el);
  ck_assert_msg(strstr(ps_errmsg(c), "timed out") && strstr(ps_errmsg(c), p->addr),
                "message: %s", ps_errmsg(c));

  /* A push whose frames cannot all be written: the deadline closes the
   * connection so that the caller's buffer is released. */
  float *big = calloc(8u << 20, sizeof(float));
  ck_assert_ptr_nonnull(big);
  t0 = now_ms();
  ck_assert_int_eq(ps_push(c, "big", big, 8u << 20), PS_ETIMEDOUT);
  el = now_ms() - t0;
  ck_assert_msg(el >= 650 && el < WAIT_MS, "push timed out after %.0f ms (timeout 700)", el);
  free(big);

  /* In flight at ps_close: completed with PS_ECLOSED, callback included. */
  atomic_store(&callbacks, 0);
  atomic_store(&callback_errors, 0);
  ps_ticket t;
  CK_PS(c, ps_pull_async(c, "cnt", w, CNT_N, count_cb, NULL, &t));

  kill(p->pid, SIGCONT);
  /* Late replies are ignored; the handle works again. */
  ps_client *c2 = connect_to(p->addr, WAIT_MS);
  CK_PS(c2, ps_pull(c2, "cnt", w, CNT_N, NULL));
  ps_close(c2);
  ps_close(c);
  ck_assert_int_eq(atomic_load(&callbacks), 1);
}
END_TEST

START_TEST(close_completes_in_flight_calls) {
  th_psd *p = ts_start(0, NULL);
  ps_client *c = connect_to(p->addr, 10 * WAIT_MS); /* the close must not wait for it */
  create_counter(c);
  kill(p->pid, SIGSTOP);
  atomic_store(&callbacks, 0);
  atomic_store(&callback_errors, 0);
  static float w[4][CNT_N];
  for (int i = 0; i < 4; i++)
    CK_PS(c, ps_pull_async(c, "cnt", w[i], CNT_N, count_cb, NULL, NULL));
  sleep_ms(100); /* pace only: the calls are usually sent by now, or else queued */
  double t0 = now_ms();
  ck_assert_int_eq(ps_close(c), 0);
  ck_assert_msg(now_ms() - t0 < WAIT_MS, "ps_close took %.0f ms", now_ms() - t0);
  ck_assert_int_eq(atomic_load(&callbacks), 4);
  ck_assert_int_eq(atomic_load(&callback_errors), 4);
  kill(p->pid, SIGCONT);
}
END_TEST

START_TEST(connect_failures) {
  /* Nothing listens: a tool gets PS_ECONNECT at once, naming the address
   * and saying the connection was refused (not "within 400 ms": it did not
   * wait for the connect timeout). */
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
  socklen_t len = sizeof(a);
  getsockname(fd, (struct sockaddr *)&a, &len);
  char list[256];
  th_psd *p = ts_start(0, NULL);
  snprintf(list, sizeof(list), "%s,127.0.0.1:%d", p->addr, ntohs(a.sin_port));
  /* fd stays bound (never listening) until the end: connections to it are
   * refused, and no other program can take the port meanwhile. */

  ps_options o;
  ps_options_init(&o);
  o.rank = -1;
  o.connect_timeout_ms = 400;
  ps_client *c = (ps_client *)1;
  double t0 = now_ms();
  ck_assert_int_eq(ps_connect(&c, list, &o), PS_ECONNECT);
  ck_assert_msg(now_ms() - t0 < WAIT_MS, "took %.0f ms", now_ms() - t0);
  ck_assert_ptr_null(c);
  char want[128];
  snprintf(want, sizeof(want), "could not connect to shard 1 (%s): connection refused",
           list + strlen(p->addr) + 1);
  ck_assert_msg(strstr(ps_last_error(), want) != NULL && !strstr(ps_last_error(), "within"),
                "message: %s", ps_last_error());

  ck_assert_int_eq(ps_connect(&c, "no-port-here", &o), PS_EINVAL);
  ck_assert_int_eq(ps_connect(&c, "a:1,a:1", &o), PS_EINVAL);

  /* A shard that refuses the hello (job mismatch) fails at once, and the
   * library does not keep reconnecting to it. */
  ps_client *w0;
  o.rank = 0;
  o.num_workers = 2;
  o.staleness = -1;
  o.connect_timeout_ms = 10 * WAIT_MS; /* a refused hello must not wait for it */
  ck_assert_int_eq(ps_connect(&w0, p->addr, &o), 0);
  o.rank = 1;
  o.num_workers = 3;
  t0 = now_ms();
  ck_assert_int_eq(ps_connect(&c, p->addr, &o), PS_EWRONGSHARD);
  ck_assert_msg(now_ms() - t0 < WAIT_MS, "took %.0f ms", now_ms() - t0);
  ck_assert_msg(strstr(ps_last_error(), "mismatch") != NULL, "message: %s", ps_last_error());
  ps_close(w0);
  close(fd);
}
END_TEST

/* A port nothing listens on: bound, its number taken, closed. */
static int closed_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
  socklen_t len = sizeof(a);
  ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
  close(fd);
  return ntohs(a.sin_port);
}

typedef struct {
  char addr[64];
  int rc;
  ps_client *c;
  atomic_int done;
} retry_arg;

static void *retrying_worker(void *p) {
  retry_arg *a = p;
  ps_options o;
  ps_options_init(&o);
  o.rank = 0;
  o.num_workers = 1;
  o.connect_timeout_ms = WAIT_MS;
  a->rc = ps_connect(&a->c, a->addr, &o);
  atomic_store(&a->done, 1);
  return NULL;
}

/* A worker whose shard refuses its connection keeps trying: its connect
 * succeeds once a shard listens there. The test waits for the library's
 * own line saying the attempt was refused (its log on a file), then starts
 * the shard on that port. A tool refused the same way fails at once with
 * PS_ECONNECT (connect_failures, test_psctl). */
START_TEST(worker_retries_a_refused_connection) {
  int port = closed_port();
  char log[600];
  snprintf(log, sizeof(log), "%s/worker-retry.log", th_tmpdir());
  int saved = dup(STDERR_FILENO);
  FILE *lf = fopen(log, "w");
  ck_assert_ptr_nonnull(lf);
  dup2(fileno(lf), STDERR_FILENO);
  setenv("PS_LOG_LEVEL", "debug", 1); /* the library reads it at its first connect */

  retry_arg a = {.rc = -1};
  snprintf(a.addr, sizeof(a.addr), "127.0.0.1:%d", port);
  pthread_t th;
  pthread_create(&th, NULL, retrying_worker, &a);
  char refused[128];
  snprintf(refused, sizeof(refused), "cannot reach %s: connection refused", a.addr);
  double t0 = now_ms();
  while (!th_file_contains(log, refused) && !atomic_load(&a.done) && now_ms() - t0 < WAIT_MS)
    sleep_ms(10);
  int seen = th_file_contains(log, refused);
  th_psd *p = seen ? ts_start(port, NULL) : NULL;
  pthread_join(th, NULL);
  dup2(saved, STDERR_FILENO);
  close(saved);
  fclose(lf);
  ck_assert_msg(seen, "no refused attempt logged in %s", log);
  ck_assert_msg(a.rc == 0, "worker connect: %s: %s", ps_strerror(a.rc), ps_last_error());
  ck_assert(th_log_contains(p, "worker rank 0 joined"));
  ps_close(a.c);
}
END_TEST

/* A worker of a sync job of nworkers. */
static ps_client *connect_worker(const char *list, int rank, int nworkers, int lane_mb) {
  ps_options o;
  ts_options(&o, rank, nworkers, 0);
  o.lane_mb = lane_mb;
  return ts_connect(list, &o);
}

/* Two shards (their list to list), and both workers of a 2-worker sync job
 * on them (lanes of 64 MiB). */
static void start_sync_pair(char *list, size_t len, ps_client **w0, ps_client **w1) {
  ts_start_cluster(2, NULL, list, len);
  *w0 = connect_worker(list, 0, 2, 64);
  *w1 = connect_worker(list, 1, 2, 64);
}

/* ps_close says goodbye: the shard logs the worker as having left (INFO),
 * the sync rounds go on without it at once, and it never departs "silent".
 * The shard's --worker-timeout is far beyond the test, so only the goodbye
 * can let rank 0's rounds complete. Rank 1 leaves with a 16 MiB push still
 * being written over TCP: its goodbye queues behind the push, not beside
 * it (a goodbye that could not be written at once used to be dropped). */
START_TEST(close_says_goodbye_and_the_job_goes_on) {
  const char *extra[] = {"--worker-timeout", "600", NULL};
  th_psd *p = ts_start(0, extra);
  ps_client *w0 = connect_worker(p->addr, 0, 2, 0);
  ps_client *w1 = connect_worker(p->addr, 1, 2, 0);
  ps_tensor_spec s;
  sgd_spec(&s, PS_INIT_ZEROS, 1.0, 0);
  uint64_t shape[1] = {4};
  CK_PS(w0, ps_create(w0, "small", shape, 1, &s));
  enum { BIG = 4u << 20 };
  uint64_t bshape[1] = {BIG};
  sgd_spec(&s, PS_INIT_ZEROS, 1.0, BIG);
  CK_PS(w0, ps_create(w0, "big", bshape, 1, &s));

  /* One round of both: (1 + 3) / 2 applied with lr 1. */
  float g[2][4] = {{1, 1, 1, 1}, {3, 3, 3, 3}};
  ps_ticket t[2];
  ps_client *w[2] = {w0, w1};
  for (int r = 0; r < 2; r++)
    CK_PS(w[r], ps_push_pull_async(w[r], "small", g[r], g[r], 4, NULL, NULL, &t[r]));
  for (int r = 0; r < 2; r++) CK_PS(w[r], ps_wait(w[r], t[r], NULL));
  ck_assert_float_eq(g[0][0], -2.0f);

  /* Rank 1 starts a big push and closes while it is being written. */
  float *big = calloc(BIG, sizeof(float));
  ck_assert_ptr_nonnull(big);
  ps_client_metrics m0, m;
  CK_PS(w1, ps_metrics(w1, &m0));
  CK_PS(w1, ps_push_async(w1, "big", big, BIG, NULL, NULL, NULL));
  double t0 = now_ms();
  do CK_PS(w1, ps_metrics(w1, &m));
  while (m.requests_sent == m0.requests_sent && now_ms() - t0 < WAIT_MS);
  ck_assert_uint_gt(m.requests_sent, m0.requests_sent);
  ck_assert_int_eq(ps_close(w1), 0);
  free(big);

  /* Rank 0 goes on alone: three more rounds, each its own gradient. */
  uint64_t version = 0;
  for (int step = 0; step < 3; step++) {
    float one[4] = {1, 1, 1, 1};
    CK_PS(w0, ps_push_pull(w0, "small", one, one, 4, &version));
    ck_assert_float_eq(one[2], -3.0f - (float)step);
  }
  ck_assert_uint_eq(version, 4);
  char *json;
  CK_PS(w0, ps_stats(w0, 0, &json));
  ck_assert_msg(strstr(json, "{\"rank\":1,\"joined\":true,\"live\":false,") != NULL, "%s", json);
  ck_assert_int_eq(json_num(json, "departures"), 1);
  free(json);
  ps_close(w0);
  ck_assert(th_log_contains(p, "INFO  psd: job 'default': worker rank 1 left (it said goodbye)"));
  ck_assert(th_log_contains(p, "INFO  psd: job 'default': worker rank 0 left (it said goodbye)"));
  ck_assert(!th_log_contains(p, "departed"));
}
END_TEST

/* A name whose block 0 the shard of index `owner` holds. */
static void owned_name(const char *list, const char *base, int owner, char *out, size_t len) {
  psp_servers sv;
  char err[128];
  ck_assert_int_eq(psp_servers_parse(&sv, list, err, sizeof(err)), 0);
  for (int k = 0; k < 100000; k++) {
    snprintf(out, len, "%s%d", base, k);
    if (psp_owner(&sv, psm_hash_name(out), 0) == owner) {
      psp_servers_free(&sv);
      return;
    }
  }
  ck_abort_msg("no name of %s's block 0 is on shard %d", list, owner);
}

/* The version of `name` in a list, or -1. */
static long long listed_version(const ps_tensor_info *ti, size_t n, const char *name) {
  for (size_t i = 0; i < n; i++)
    if (strcmp(ti[i].name, name) == 0) return (long long)ti[i].version;
  return -1;
}

/* lookup and list report a tensor's version as a pull of the whole tensor
 * does, over every shard: a tensor whose one block is on shard 2 (shards 0
 * and 1 hold none of it), and one of 3 blocks, one per shard, whose block
 * on shard 2 lags (an update that would make it Inf is refused there and
 * applied on the others). Asking shard 0 alone would say 0 and 5. */
START_TEST(versions_over_every_shard) {
  char list[256];
  ts_start_cluster(3, NULL, list, sizeof(list));
  ps_client *c = connect_to(list, WAIT_MS);
  char one[64], spread[64];
  owned_name(list, "one", 2, one, sizeof(one));
  ts_spread_name(list, "spread", 3, spread, sizeof(spread));
  ps_tensor_spec s;
  sgd_spec(&s, PS_INIT_ZEROS, 1.0, 4);
  uint64_t shape1[1] = {4}, shape3[1] = {12};
  CK_PS(c, ps_create(c, one, shape1, 1, &s));
  CK_PS(c, ps_create(c, spread, shape3, 1, &s));

  ps_tensor_info ti;
  CK_PS(c, ps_lookup(c, spread, &ti));
  ck_assert_uint_eq(ti.version, 0); /* no block touched yet */
  ps_tensor_info_free(&ti);

  float g[12], w[12];
  for (int i = 0; i < 12; i++) g[i] = 1.0f;
  for (int step = 0; step < 5; step++) CK_PS(c, ps_push(c, one, g, 4));
  for (int step = 0; step < 3; step++) CK_PS(c, ps_push(c, spread, g, 12));
  /* Twice a gradient of 3e38 on the block shard 2 holds: the first update
   * leaves it near -3e38, the second would make it -Inf and is refused
   * there, while the other blocks take both. */
  psp_servers sv;
  char err[128];
  ck_assert_int_eq(psp_servers_parse(&sv, list, err, sizeof(err)), 0);
  for (uint64_t b = 0; b < 3; b++)
    if (psp_owner(&sv, psm_hash_name(spread), b) == 2)
      for (int i = 0; i < 4; i++) g[b * 4 + i] = 3e38f;
  psp_servers_free(&sv);
  CK_PS(c, ps_push(c, spread, g, 12));
  ck_assert_int_eq(ps_push(c, spread, g, 12), PS_EGRADIENT);

  uint64_t v_one, v_spread;
  CK_PS(c, ps_pull(c, one, w, 4, &v_one));
  CK_PS(c, ps_pull(c, spread, w, 12, &v_spread));
  ck_assert_uint_eq(v_one, 5);
  ck_assert_uint_eq(v_spread, 4);
  /* Shard 0 holds one block, of spread only: alone it would answer 5. */
  ck_assert_int_eq(ts_stat(c, 0, "version_min"), 5);
  ck_assert_int_eq(ts_stat(c, 0, "blocks_touched"), 1);

  CK_PS(c, ps_lookup(c, one, &ti));
  ck_assert_uint_eq(ti.version, v_one);
  ps_tensor_info_free(&ti);
  CK_PS(c, ps_lookup(c, spread, &ti));
  ck_assert_uint_eq(ti.version, v_spread);
  ps_tensor_info_free(&ti);

  ps_tensor_info *all;
  size_t n;
  CK_PS(c, ps_list(c, &all, &n));
  ck_assert_uint_eq(n, 2);
  ck_assert_int_eq(listed_version(all, n, one), (long long)v_one);
  ck_assert_int_eq(listed_version(all, n, spread), (long long)v_spread);
  ck_assert_int_lt(strcmp(all[0].name, all[1].name), 0); /* sorted by name */
  ps_list_free(all, n);
  ps_close(c);
}
END_TEST

/* A launcher's RANK and WORLD_SIZE (torchrun's) stand in for
 * PS_WORKER_RANK and PS_NUM_WORKERS; the PS_ ones win when both are set. */
START_TEST(launcher_variables_are_fallbacks) {
  static const char *const vars[] = {"PS_WORKER_RANK", "PS_NUM_WORKERS", "RANK", "WORLD_SIZE"};
  for (int i = 0; i < 4; i++) unsetenv(vars[i]);
  ps_options o;
  ps_options_init(&o);
  ck_assert_int_eq(o.rank, -1);
  ck_assert_int_eq(o.num_workers, 1);
  setenv("RANK", "3", 1);
  setenv("WORLD_SIZE", "4", 1);
  ps_options_init(&o);
  ck_assert_int_eq(o.rank, 3);
  ck_assert_int_eq(o.num_workers, 4);
  setenv("PS_WORKER_RANK", "1", 1);
  setenv("PS_NUM_WORKERS", "2", 1);
  ps_options_init(&o);
  ck_assert_int_eq(o.rank, 1);
  ck_assert_int_eq(o.num_workers, 2);
  /* Set but empty is not set. */
  setenv("PS_WORKER_RANK", "", 1);
  unsetenv("PS_NUM_WORKERS");
  ps_options_init(&o);
  ck_assert_int_eq(o.rank, 3);
  ck_assert_int_eq(o.num_workers, 4);

  /* And a worker so configured joins its job as that rank: two workers of
   * a sync job, from RANK and WORLD_SIZE alone, complete a round. */
  th_psd *p = ts_start(0, NULL);
  unsetenv("PS_WORKER_RANK");
  ps_client *w[2];
  for (int r = 0; r < 2; r++) {
    char v[8];
    snprintf(v, sizeof(v), "%d", r);
    setenv("RANK", v, 1);
    setenv("WORLD_SIZE", "2", 1);
    ps_options_init(&o);
    o.staleness = 0;
    o.connect_timeout_ms = o.op_timeout_ms = WAIT_MS;
    int rc = ps_connect(&w[r], p->addr, &o);
    ck_assert_msg(rc == 0, "rank %d: %s", r, ps_last_error());
  }
  for (int i = 0; i < 4; i++) unsetenv(vars[i]);
  ps_tensor_spec s;
  sgd_spec(&s, PS_INIT_ZEROS, 1.0, 0);
  uint64_t shape[1] = {4};
  CK_PS(w[0], ps_create(w[0], "ranked", shape, 1, &s));
  float g[2][4] = {{1, 1, 1, 1}, {3, 3, 3, 3}};
  ps_ticket t[2];
  for (int r = 0; r < 2; r++)
    CK_PS(w[r], ps_push_pull_async(w[r], "ranked", g[r], g[r], 4, NULL, NULL, &t[r]));
  uint64_t version;
  for (int r = 0; r < 2; r++) CK_PS(w[r], ps_wait(w[r], t[r], &version));
  ck_assert_uint_eq(version, 1);
  /* Both got the round's result: 0 - 1.0 * (1 + 3) / 2. */
  ck_assert_float_eq(g[0][0], -2.0f);
  ck_assert_float_eq(g[1][3], -2.0f);
  ck_assert(th_log_contains(p, "worker rank 1 joined (2 of 2 ranks seen)"));
  for (int r = 0; r < 2; r++) ps_close(w[r]);
}
END_TEST

typedef struct {
  const char *list;
  int rank, rc;
  int64_t clock;
} barrier_arg;

/* Set by rank 1 just before it enters the barrier; rank 0 reads it when its
 * barrier returns. */
static atomic_int rank1_arrived;
static atomic_int rank0_early;

static void *barrier_worker(void *p) {
  barrier_arg *a = p;
  ps_options o;
  ps_options_init(&o);
  o.rank = a->rank;
  o.num_workers = 2;
  o.staleness = -1;
  ps_client *c;
  if ((a->rc = ps_connect(&c, a->list, &o)) != 0) return NULL;
  if (a->rank == 1) {
    sleep_ms(300); /* pace only: rank 0 is usually in the barrier by now */
    atomic_store(&rank1_arrived, 1);
  }
  if ((a->rc = ps_barrier(c)) == 0 && a->rank == 0 && !atomic_load(&rank1_arrived))
    atomic_store(&rank0_early, 1);
  if (a->rc == 0) a->rc = ps_barrier(c);
  a->clock = ps_clock(c);
  ps_close(c);
  return NULL;
}

START_TEST(barrier_waits_for_every_worker) {
  char list[256];
  ts_start_cluster(2, NULL, list, sizeof(list));
  pthread_t th[2];
  barrier_arg a[2] = {{list, 0, 0, 0}, {list, 1, 0, 0}};
  atomic_store(&rank1_arrived, 0);
  atomic_store(&rank0_early, 0);
  for (int i = 0; i < 2; i++) pthread_create(&th[i], NULL, barrier_worker, &a[i]);
  for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
  ck_assert_msg(!atomic_load(&rank0_early), "rank 0 left the barrier before rank 1 came");
  for (int i = 0; i < 2; i++) {
    ck_assert_msg(a[i].rc == 0, "rank %d: %s", i, ps_strerror(a[i].rc));
    ck_assert_int_eq(a[i].clock, 1);
  }
}
END_TEST

/* ---- waiting with a limit --------------------------------------------- */

/* A sync push of rank 0 cannot complete before rank 1 pushes the same
 * round: held that way, ps_wait_timeout must give up without collecting the
 * ticket, and a later ps_wait / ps_wait_all must still collect it. */
START_TEST(wait_timeout_leaves_the_ticket) {
  char list[256];
  ps_client *w0, *w1;
  start_sync_pair(list, sizeof(list), &w0, &w1);
  uint64_t shape[1] = {1000};
  ps_tensor_spec s;
  sgd_spec(&s, PS_INIT_ZEROS, 1.0, 300); /* 4 blocks over 2 shards */
  CK_PS(w0, ps_create(w0, "held", shape, 1, &s));
  float g0[1000], g1[1000], out[1000];
  for (int i = 0; i < 1000; i++) g0[i] = 1.0f, g1[i] = 3.0f;

  /* Round 1: polled, waited with a limit, then released by rank 1. */
  ps_ticket t;
  uint64_t version = 99;
  CK_PS(w0, ps_push_pull_async(w0, "held", g0, out, 1000, NULL, NULL, &t));
  ck_assert_int_eq(ps_wait_timeout(w0, t, 0, &version), PS_ETIMEDOUT);
  ck_assert_msg(strstr(ps_errmsg(w0), "not done yet") != NULL, "message: %s", ps_errmsg(w0));
  ck_assert_int_eq(ps_wait_timeout(w0, t, 30, &version), PS_ETIMEDOUT);
  ck_assert_uint_eq(version, 99); /* untouched */
  CK_PS(w1, ps_push(w1, "held", g1, 1000));
  CK_PS(w0, ps_wait_timeout(w0, t, WAIT_MS, &version));
  ck_assert_uint_eq(version, 1);
  for (int i = 0; i < 1000; i++) ck_assert(out[i] == -2.0f); /* 0 - 1.0 * mean(1, 3) */
  ck_assert_int_eq(ps_wait_timeout(w0, t, 0, NULL), PS_ETICKET); /* collected once */

  /* Round 2: a ticket given up on is collected by ps_wait_all. */
  CK_PS(w0, ps_push_async(w0, "held", g0, 1000, NULL, NULL, &t));
  ck_assert_int_eq(ps_wait_timeout(w0, t, 10, NULL), PS_ETIMEDOUT);
  CK_PS(w1, ps_push(w1, "held", g1, 1000));
  CK_PS(w0, ps_wait_all(w0));
  ck_assert_int_eq(ps_wait(w0, t, NULL), PS_ETICKET);

  /* Round 3: a negative limit waits as ps_wait does (rank 1 pushes from a
   * ticket of its own first, so the wait cannot end before the round). */
  ps_ticket t1;
  CK_PS(w0, ps_push_async(w0, "held", g0, 1000, NULL, NULL, &t));
  ck_assert_int_eq(ps_wait_timeout(w0, t, 0, NULL), PS_ETIMEDOUT);
  CK_PS(w1, ps_push_async(w1, "held", g1, 1000, NULL, NULL, &t1));
  CK_PS(w0, ps_wait_timeout(w0, t, -1, &version));
  ck_assert_uint_eq(version, 3);
  CK_PS(w1, ps_wait(w1, t1, NULL));
  CK_PS(w0, ps_pull(w0, "held", out, 1000, &version));
  for (int i = 0; i < 1000; i++) ck_assert(out[i] == -6.0f);

  /* A ticket given up on is freed by ps_close, and its call completes
   * with PS_ECLOSED (nothing reads the buffers after ps_close returns). */
  CK_PS(w0, ps_push_async(w0, "held", g0, 1000, NULL, NULL, &t));
  ck_assert_int_eq(ps_wait_timeout(w0, t, 0, NULL), PS_ETIMEDOUT);
  ck_assert_int_eq(ps_close(w0), 0);
  ps_close(w1);
}
END_TEST

/* Every call has an asynchronous form; a barrier is held by construction
 * until the second worker arrives. */
START_TEST(async_forms_of_every_call) {
  char list[256];
  ps_client *w0, *w1;
  start_sync_pair(list, sizeof(list), &w0, &w1);
  uint64_t shape[2] = {10, 20};
  ps_tensor_spec s;
  sgd_spec(&s, PS_INIT_UNIFORM, 1.0, 64);
  ps_ticket t;
  CK_PS(w0, ps_create_async(w0, "a", shape, 2, &s, NULL, NULL, &t));
  CK_PS(w0, ps_wait(w0, t, NULL));
  s.optim.lr = 2.0;
  CK_PS(w0, ps_create_async(w0, "a", shape, 2, &s, NULL, NULL, &t)); /* differs: refused */
  ck_assert_int_eq(ps_wait(w0, t, NULL), PS_EEXISTS);
  ck_assert_msg(strstr(ps_errmsg(w0), "lr") != NULL, "message: %s", ps_errmsg(w0));

  ps_tensor_info info;
  CK_PS(w0, ps_lookup_async(w0, "a", &info, NULL, NULL, &t));
  CK_PS(w0, ps_wait(w0, t, NULL));
  ck_assert_str_eq(info.name, "a");
  ck_assert_uint_eq(info.numel, 200);
  ps_tensor_info_free(&info);
  CK_PS(w0, ps_lookup_async(w0, "nope", &info, NULL, NULL, &t));
  ck_assert_int_eq(ps_wait(w0, t, NULL), PS_ENOTFOUND);

  ps_tensor_info *all;
  size_t n;
  CK_PS(w0, ps_list_async(w0, &all, &n, NULL, NULL, &t));
  CK_PS(w0, ps_wait(w0, t, NULL));
  ck_assert_uint_eq(n, 1);
  ps_list_free(all, n);
  char *json;
  CK_PS(w0, ps_stats_async(w0, 1, &json, NULL, NULL, &t));
  CK_PS(w0, ps_wait(w0, t, NULL));
  ck_assert_int_eq(json_num(json, "shard_index"), 1);
  free(json);
  ck_assert_int_eq(ps_stats_async(w0, 2, &json, NULL, NULL, &t), PS_EINVAL);
  CK_PS(w0, ps_ping_async(w0, NULL, NULL, &t));
  CK_PS(w0, ps_wait(w0, t, NULL));
  CK_PS(w0, ps_checkpoint_async(w0, NULL, NULL, &t)); /* no --data-dir: refused */
  ck_assert_int_lt(ps_wait(w0, t, NULL), 0);
  uint64_t clock = 0;
  CK_PS(w0, ps_clock_async(w0, &clock, NULL, NULL, &t));
  ck_assert_uint_eq(clock, 1);
  CK_PS(w0, ps_wait(w0, t, NULL));

  CK_PS(w0, ps_barrier_async(w0, NULL, NULL, &t));
  ck_assert_int_eq(ps_wait_timeout(w0, t, 20, NULL), PS_ETIMEDOUT);
  CK_PS(w1, ps_barrier(w1)); /* returns only once rank 0 is in as well */
  CK_PS(w0, ps_wait_timeout(w0, t, WAIT_MS, NULL));
  ck_assert_int_eq(ps_barrier_async(w0, NULL, NULL, NULL), PS_EINVAL);

  ps_close(w0);
  ps_close(w1);
}
END_TEST

START_TEST(set_async_waits_for_the_round) {
  char list[256];
  ps_client *w0, *w1;
  start_sync_pair(list, sizeof(list), &w0, &w1);
  uint64_t shape[1] = {200};
  ps_tensor_spec s;
  sgd_spec(&s, PS_INIT_ZEROS, 1.0, 64);
  CK_PS(w0, ps_create(w0, "a", shape, 1, &s));
  /* A set waits for the sync round in progress on its block: an admin's
   * set is held until rank 1's push completes the round, then written. */
  float g[200], v[200], out[200];
  for (int i = 0; i < 200; i++) g[i] = 1.0f, v[i] = (float)i;
  ps_client *admin = connect_to(list, WAIT_MS);
  ps_ticket tp, ts;
  CK_PS(w0, ps_push_async(w0, "a", g, 200, NULL, NULL, &tp));
  /* Rank 0's push of every block (4 of 64) has reached the shards. */
  double t0 = now_ms();
  for (;;) {
    ps_job_info *jobs;
    size_t n, pending = 0;
    CK_PS(admin, ps_jobs(admin, &jobs, &n));
    for (size_t i = 0; i < n; i++) pending += jobs[i].rounds_pending;
    ps_jobs_free(jobs, n);
    if (pending == 4) break;
    ck_assert_msg(now_ms() - t0 < WAIT_MS, "rank 0's push never reached the shards");
    sleep_ms(5);
  }
  CK_PS(admin, ps_set_async(admin, "a", 0, v, 200, 0, NULL, NULL, &ts));
  ck_assert_int_eq(ps_wait_timeout(admin, ts, 20, NULL), PS_ETIMEDOUT);
  CK_PS(w1, ps_push(w1, "a", g, 200));
  CK_PS(admin, ps_wait(admin, ts, NULL));
  CK_PS(w0, ps_wait(w0, tp, NULL));
  ps_close(admin);
  CK_PS(w0, ps_pull(w0, "a", out, 200, NULL));
  ck_assert(memcmp(out, v, sizeof(v)) == 0);
  ps_close(w0);
  ps_close(w1);
}
END_TEST

/* ---- big blocks: values read straight into the caller's buffer --------- */

enum { BIG_N = 3u << 20, BIG_BLOCK = 1u << 20 };

static void big_spec(ps_tensor_spec *s) {
  ps_tensor_spec_init(s, PS_INIT_UNIFORM, PS_OPT_SGD);
  s->init.limit = 1;
  s->init.seed = 11;
  s->optim.lr = 0.25;
  s->block_size = BIG_BLOCK;
}

/* The initial values, computed here the way every shard computes them. */
static float *big_expected(const char *name) {
  ps_tensor_spec s;
  big_spec(&s);
  uint64_t shape[1] = {BIG_N};
  float *w = malloc(BIG_N * sizeof(float));
  psm_init_fill(&s.init, shape, 1, psm_hash_name(name), 0, w, BIG_N);
  return w;
}

typedef struct {
  ps_client *c;
  const float *expect;
  int rc;
  char err[512];
} big_arg;

static void *big_puller(void *p) {
  big_arg *a = p;
  float *w = malloc(BIG_N * sizeof(float)), *part = malloc(BIG_BLOCK * sizeof(float));
  for (int i = 0; i < 6 && a->rc == 0; i++) {
    memset(w, 0, BIG_N * sizeof(float));
    a->rc = ps_pull(a->c, "big", w, BIG_N, NULL);
    if (a->rc == 0 && memcmp(w, a->expect, BIG_N * sizeof(float)) != 0) {
      snprintf(a->err, sizeof(a->err), "pull %d: values differ", i);
      a->rc = -1;
    }
    /* Cuts two blocks: the partial ends take the buffered path. */
    uint64_t off = BIG_BLOCK - 1000 + (uint64_t)i * 77;
    if (a->rc == 0) a->rc = ps_pull_range(a->c, "big", off, part, BIG_BLOCK, NULL);
    if (a->rc == 0 && memcmp(part, a->expect + off, BIG_BLOCK * sizeof(float)) != 0) {
      snprintf(a->err, sizeof(a->err), "pull_range %d: values differ", i);
      a->rc = -1;
    }
  }
  if (a->rc > -100 && a->rc < 0 && a->err[0] == '\0')
    snprintf(a->err, sizeof(a->err), "%s", ps_errmsg(a->c));
  free(w);
  free(part);
  return NULL;
}

START_TEST(big_blocks_pull_in_place) {
  char list[256];
  ts_start_cluster(2, NULL, list, sizeof(list));
  ps_client *c = connect_to(list, WAIT_MS);
  ps_tensor_spec s;
  big_spec(&s);
  uint64_t shape[1] = {BIG_N};
  CK_PS(c, ps_create(c, "big", shape, 1, &s));
  float *expect = big_expected("big");

  /* Four threads pulling whole tensors and ranges on one handle. */
  pthread_t th[4];
  big_arg a[4];
  for (int i = 0; i < 4; i++) {
    a[i] = (big_arg){.c = c, .expect = expect};
    pthread_create(&th[i], NULL, big_puller, &a[i]);
  }
  for (int i = 0; i < 4; i++) {
    pthread_join(th[i], NULL);
    ck_assert_msg(a[i].rc == 0, "thread %d: %s", i, a[i].err);
  }

  /* push-pull in place (grad == out) over whole blocks. */
  float *w = malloc(BIG_N * sizeof(float));
  for (uint64_t i = 0; i < BIG_N; i++) w[i] = 2.0f;
  uint64_t version;
  CK_PS(c, ps_push_pull(c, "big", w, w, BIG_N, &version));
  ck_assert_uint_eq(version, 1);
  for (uint64_t i = 0; i < BIG_N; i++)
    ck_assert_msg(w[i] == expect[i] - 0.5f, "element %llu: %g, expected %g",
                  (unsigned long long)i, w[i], expect[i] - 0.5f);
  free(w);
  free(expect);
  ps_close(c);
}
END_TEST

START_TEST(connection_lost_mid_reply_is_resent) {
  /* The proxy cuts the TCP stream: keep the values on it, not on a lane. */
  setenv("PS_LANE_MB", "0", 1);
  th_psd *p = ts_start(0, NULL);
  th_proxy px;
  ck_assert_int_eq(th_proxy_start(&px, p->port), 0);
  const char *via = px.addr;
  ps_client *c = connect_to(via, WAIT_MS);
  ps_tensor_spec s;
  big_spec(&s);
  uint64_t shape[1] = {BIG_N};
  CK_PS(c, ps_create(c, "big", shape, 1, &s));
  float *expect = big_expected("big");
  float *w = calloc(BIG_N, sizeof(float));

  /* Let 1.5 MB of the replies through, then cut: the client is in the
   * middle of a block it reads in place. */
  long long base = atomic_load(&px.forwarded);
  atomic_store(&px.down_budget, 3 << 19);
  ps_ticket t;
  CK_PS(c, ps_pull_async(c, "big", w, BIG_N, NULL, NULL, &t));
  for (double t0 = now_ms(); atomic_load(&px.forwarded) - base < (3 << 19) && now_ms() - t0 < WAIT_MS;)
    sleep_ms(10);
  ck_assert_int_eq(atomic_load(&px.forwarded) - base, 3 << 19);
  sleep_ms(50); /* pace only: the client reads into the block meanwhile */
  atomic_store(&px.down_budget, -1);
  atomic_store(&px.cut, 1);
  uint64_t version = 99;
  CK_PS(c, ps_wait(c, t, &version));
  ck_assert_uint_eq(version, 0);
  ck_assert_int_ge(atomic_load(&px.accepted), 2);
  ck_assert_msg(memcmp(w, expect, BIG_N * sizeof(float)) == 0, "values differ after resend");
  ps_close(c);

  /* Stuck mid-reply past the deadline: the call fails in time, and the
   * handle recovers. */
  c = connect_to(via, 600);
  base = atomic_load(&px.forwarded);
  atomic_store(&px.down_budget, 1 << 19);
  double t0 = now_ms();
  ck_assert_int_eq(ps_pull(c, "big", w, BIG_N, NULL), PS_ETIMEDOUT);
  double el = now_ms() - t0;
  ck_assert_msg(el >= 550 && el < WAIT_MS, "timed out after %.0f ms (timeout 600)", el);
  ck_assert_int_le(atomic_load(&px.forwarded) - base, 1 << 19);
  ps_close(c);
  atomic_store(&px.down_budget, -1);
  c = connect_to(via, WAIT_MS);
  memset(w, 0, BIG_N * sizeof(float));
  CK_PS(c, ps_pull(c, "big", w, BIG_N, NULL));
  ck_assert(memcmp(w, expect, BIG_N * sizeof(float)) == 0);
  ps_close(c);
  th_proxy_stop(&px);
  free(w);
  free(expect);
}
END_TEST

/* The shared-memory lane (same host) and TCP give the same bytes: two
 * identical 2-shard clusters, one client on lanes and one on TCP only, the
 * same calls on both; and the lane is really used. */
START_TEST(lane_matches_tcp_bit_for_bit) {
  enum { N = 1573000, SMALL = 1000 }; /* 6 blocks of 2^18 and a part */
  char la[256], lb[256];
  th_psd *sa = ts_start_cluster(2, NULL, la, sizeof(la));
  ts_start_cluster(2, NULL, lb, sizeof(lb));
  ps_options o;
  ps_options_init(&o);
  o.rank = 0, o.num_workers = 1, o.staleness = -1;
  ps_client *a = NULL, *b = NULL;
  o.lane_mb = 16;
  CK_PS(a, ps_connect(&a, la, &o));
  o.lane_mb = 0;
  CK_PS(b, ps_connect(&b, lb, &o));
  /* Every shard of a must own one of the 6 full blocks (those go through
   * the lane), whatever ports the shards got. */
  char w[64];
  ts_spread_name(la, "w", N / (1u << 18), w, sizeof(w));
  ps_tensor_spec s;
  ps_tensor_spec_init(&s, PS_INIT_HE_UNIFORM, PS_OPT_ADAM);
  s.block_size = 1u << 18;
  uint64_t shape[2] = {N / 1000, 1000}, small[1] = {SMALL};
  ps_client *cs[2] = {a, b};
  for (int k = 0; k < 2; k++) {
    CK_PS(cs[k], ps_create(cs[k], w, shape, 2, &s));
    CK_PS(cs[k], ps_create(cs[k], "bias", small, 1, &s));
  }
  float *g = malloc(N * sizeof(float)), *out[2], *ws[2];
  for (int k = 0; k < 2; k++) {
    out[k] = malloc(N * sizeof(float));
    ws[k] = malloc(N * sizeof(float));
  }
  for (int step = 0; step < 6; step++) {
    for (uint64_t i = 0; i < N; i++) g[i] = 0.01f * (float)((i * 31 + (uint64_t)step) % 17) - 0.08f;
    for (int k = 0; k < 2; k++) {
      ps_client *c = cs[k];
      switch (step % 3) {
        case 0: CK_PS(c, ps_push_pull(c, w, g, out[k], N, NULL)); break;
        case 1:
          memcpy(ws[k], g, N * sizeof(float)); /* in place: grad == out */
          CK_PS(c, ps_push_pull(c, w, ws[k], ws[k], N, NULL));
          memcpy(out[k], ws[k], N * sizeof(float));
          break;
        default:
          CK_PS(c, ps_push(c, w, g, N));
          CK_PS(c, ps_pull_range(c, w, 200000, out[k], 400000, NULL));
          break;
      }
      CK_PS(c, ps_push_pull(c, "bias", g, out[k] + N - SMALL, SMALL, NULL));
    }
    size_t cmp = step % 3 == 2 ? 400000 : N;
    ck_assert_msg(memcmp(out[0], out[1], cmp * sizeof(float)) == 0, "step %d differs", step);
    ck_assert_msg(memcmp(out[0] + N - SMALL, out[1] + N - SMALL, SMALL * sizeof(float)) == 0,
                  "step %d: bias differs", step);
  }
  for (int k = 0; k < 2; k++) CK_PS(cs[k], ps_pull(cs[k], w, out[k], N, NULL));
  ck_assert(memcmp(out[0], out[1], N * sizeof(float)) == 0);
  /* Every shard of a gave a lane and moved blocks through it; b's none. */
  for (int i = 0; i < 2; i++) {
    ck_assert_int_eq(ts_stat(a, i, "lanes"), 1);
    ck_assert_int_gt(ts_stat(a, i, "lane_ops"), 0);
    ck_assert_int_eq(ts_stat(b, i, "lanes"), 0);
    ck_assert_int_eq(ts_stat(b, i, "lane_ops"), 0);
  }
  /* A shard restarted under the handle: the new connection gets a new
   * lane, and the values are still right. */
  th_psd_stop(&sa[0], SIGTERM, WAIT_MS);
  ck_assert_int_eq(th_psd_start(&sa[0], sa[0].port, NULL), 0);
  CK_PS(a, ps_create(a, w, shape, 2, &s));
  float *fresh = malloc(N * sizeof(float));
  CK_PS(a, ps_pull(a, w, fresh, N, NULL));
  ck_assert_int_eq(ts_stat(a, 0, "lanes"), 1);
  free(fresh);
  for (int k = 0; k < 2; k++) {
    ps_close(cs[k]);
    free(out[k]);
    free(ws[k]);
  }
  free(g);
}
END_TEST

/* A pull through the lane that the shard holds (SSP) past the caller's
 * deadline: the call fails in time, the shard answers later into the slot,
 * and the slot is only reused after that late answer; later calls on the
 * handle get the right values. */
START_TEST(lane_slot_of_a_timed_out_call_is_kept_until_answered) {
  enum { N = 65536 }; /* 256 KiB: through the lane */
  th_psd *p = ts_start(0, NULL);
  ps_options o;
  ps_options_init(&o);
  /* w0's short deadline is for its held pulls; its other calls retry when
   * a loaded machine makes them miss it. */
  o.num_workers = 2, o.staleness = 1, o.op_timeout_ms = 400;
  o.lane_mb = 64; /* whatever PS_LANE_MB says: this is a lane test */
  ps_client *w0 = NULL, *w1 = NULL;
  o.rank = 0;
  CK_PS(w0, ps_connect(&w0, p->addr, &o));
  o.rank = 1;
  o.op_timeout_ms = WAIT_MS;
  CK_PS(w1, ps_connect(&w1, p->addr, &o));
  ps_tensor_spec s;
  ps_tensor_spec_init(&s, PS_INIT_CONSTANT, PS_OPT_SGD);
  s.init.value = 3;
  uint64_t shape[1] = {N};
  int rc;
  RETRY_TIMEOUTS(rc, ps_create(w0, "ssp", shape, 1, &s));
  CK_PS(w0, rc);
  float *a = malloc(N * sizeof(float)), *b = malloc(N * sizeof(float));
  /* Worker 0 runs 3 clocks ahead of worker 1, past the bound of 1. The
   * clock advances when the call is made (the pulls carry it); only the
   * acknowledgement may miss the deadline. */
  for (int i = 0; i < 3; i++) {
    int64_t k = ps_clock(w0);
    ck_assert_msg(k == i + 1 || k == PS_ETIMEDOUT, "clock %d: %lld", i, (long long)k);
  }
  for (int round = 0; round < 3; round++) {
    ck_assert_int_eq(ps_pull(w0, "ssp", a, N, NULL), PS_ETIMEDOUT);
  }
  /* Worker 1 catches up: the three held pulls are answered into their
   * slots, which worker 0's handle no longer waits for. */
  for (int i = 0; i < 3; i++) ck_assert_int_eq(ps_clock(w1), i + 1);
  CK_PS(w1, ps_pull(w1, "ssp", b, N, NULL));
  for (int round = 0; round < 20; round++) {
    memset(a, 0, N * sizeof(float));
    RETRY_TIMEOUTS(rc, ps_pull(w0, "ssp", a, N, NULL));
    CK_PS(w0, rc);
    ck_assert_msg(memcmp(a, b, N * sizeof(float)) == 0, "round %d: wrong values", round);
  }
  ck_assert_int_gt(ts_stat(w1, 0, "lane_ops"), 20);
  ps_close(w0);
  ps_close(w1);
  free(a);
  free(b);
}
END_TEST

static Suite *client_suite(void) {
  Suite *s = suite_create("client");
  TCase *tc = tcase_create("calls");
  tcase_add_checked_fixture(tc, setup, ts_kill_all);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, create_pull_push_push_pull);
  tcase_add_test(tc, create_is_idempotent_and_conflicts_say_what_differs);
  tcase_add_test(tc, unknown_tensor_and_wrong_count);
  tcase_add_test(tc, pull_range_touches_only_its_blocks);
  tcase_add_test(tc, three_shards_match_one_bit_for_bit);
  tcase_add_test(tc, lane_matches_tcp_bit_for_bit);
  suite_add_tcase(s, tc);

  /* tests/run.sh runs this case under ThreadSanitizer (CK_RUN_CASE=threads). */
  tc = tcase_create("threads");
  tcase_add_checked_fixture(tc, setup, ts_kill_all);
  tcase_set_timeout(tc, 240);
  tcase_add_test(tc, many_clients_at_once);
  tcase_add_test(tc, many_threads_share_one_handle);
  tcase_add_test(tc, barrier_waits_for_every_worker);
  tcase_add_test(tc, big_blocks_pull_in_place);
  tcase_add_test(tc, wait_timeout_leaves_the_ticket);
  tcase_add_test(tc, async_forms_of_every_call);
  tcase_add_test(tc, set_async_waits_for_the_round);
  suite_add_tcase(s, tc);

  tc = tcase_create("faults");
  tcase_add_checked_fixture(tc, setup, ts_kill_all);
  tcase_set_timeout(tc, 240);
  tcase_add_test(tc, reconnects_after_restart_and_resends);
  tcase_add_test(tc, resent_push_applies_exactly_once);
  tcase_add_test(tc, connection_lost_mid_reply_is_resent);
  tcase_add_test(tc, lane_slot_of_a_timed_out_call_is_kept_until_answered);
  tcase_add_test(tc, stopped_server_times_out);
  tcase_add_test(tc, close_completes_in_flight_calls);
  tcase_add_test(tc, connect_failures);
  suite_add_tcase(s, tc);

  /* The cleaner edges: launcher variables, goodbyes, refused connections,
   * versions over every shard. */
  tc = tcase_create("edges");
  tcase_add_checked_fixture(tc, setup, ts_kill_all);
  tcase_set_timeout(tc, 240);
  tcase_add_test(tc, launcher_variables_are_fallbacks);
  tcase_add_test(tc, worker_retries_a_refused_connection);
  tcase_add_test(tc, close_says_goodbye_and_the_job_goes_on);
  tcase_add_test(tc, versions_over_every_shard);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return check_run(client_suite()); }
