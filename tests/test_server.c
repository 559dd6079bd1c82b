/*
 * test_server.c -- integration tests of the daemon at the protocol level:
 * a real psd on an ephemeral loopback port, driven through raw sockets and
 * common/wire, so that malformed input can be sent on purpose.
 *
 * No outcome depends on the machine's speed (run.sh also runs this under
 * valgrind): a test waits for the state it needs (a line in the daemon's
 * log) with a bound far beyond need (WAIT_MS), never for a fixed time.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check_main.h"
#include "harness.h"
#include "lane.h"
#include "msg.h"
#include "psmath.h"
#include "rawcheck.h"
#include "rawclient.h"
#include "wire.h"

/* ---- the raw protocol client (tests/rawclient.h), as this file uses it ------ */

/* A hello without a proof (this shard has no tokens: protected mode). */
static void rc_hello_tool(rc *c, int rank, int nw, int staleness) {
  rc_hello_args a = rc_hello_defaults();
  a.identity = "test_server";
  a.rank = rank, a.nw = nw, a.staleness = staleness;
  Psd__Response *resp = rc_hello(c, &a);
  ck_assert_ptr_nonnull(resp);
  ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_HELLO);
  psd__response__free_unpacked(resp, NULL);
}

static uint64_t seq_counter = 1;

/* Every push of this file carries the next sequence number. */
static Psd__Response *rc_push_seq(rc *c, const char *name, uint64_t block, const float *g,
                                  size_t n, int want, float **out, size_t *len) {
  return rc_push(c, name, block, seq_counter++, g, n, want, out, len);
}

/* A push to block 0 of `name` that must be applied: the block's version. */
static uint64_t push_applied(rc *c, const char *name, const float *g, size_t n) {
  Psd__Response *resp = rc_push_seq(c, name, 0, g, n, 0, NULL, NULL);
  expect_body(resp, PSD__RESPONSE__BODY_BLOCK, name);
  uint64_t v = resp->block->version;
  psd__response__free_unpacked(resp, NULL);
  return v;
}

static th_psd d;

/* How long a test waits for a state before calling it a hang. */
#define WAIT_MS 120000

/* Wait until the daemon's log holds `needle`; 1 if it does. */
static int wait_log(const th_psd *p, const char *needle) {
  for (int waited = 0; waited < WAIT_MS; waited += 10) {
    if (th_log_contains(p, needle)) return 1;
    usleep(10000);
  }
  return th_log_contains(p, needle);
}

static void start_default(void) { ck_assert_int_eq(th_psd_start(&d, 0, NULL), 0); }
static void stop_default(void) {
  int st = th_psd_stop(&d, SIGTERM, WAIT_MS);
  ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* ---- tests ------------------------------------------------------------------ */

START_TEST(create_pull_push_sgd) {
  rc c;
  ck_assert_int_ge(rc_open(&c, d.port), 0);
  rc_hello_tool(&c, -1, 0, -1);
  ps_tensor_spec s;
  ps_tensor_spec_init(&s, PS_INIT_ZEROS, PS_OPT_SGD);
  s.optim.lr = 0.5;
  uint64_t shape[1] = {10};
  Psd__Response *resp = rc_create(&c, "b", shape, 1, &s);
  ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_INFO);
  ck_assert_uint_eq(resp->info->numel, 10);
  psd__response__free_unpacked(resp, NULL);

  float g[10], *vals;
  size_t vlen;
  for (int i = 0; i < 10; i++) g[i] = (float)i;
  resp = rc_push_seq(&c, "b", 0, g, 10, 1, &vals, &vlen);
  ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_BLOCK);
  ck_assert_uint_eq(resp->block->version, 1);
  ck_assert_uint_eq(vlen, 40);
  for (int i = 0; i < 10; i++) ck_assert_float_eq(vals[i], -0.5f * (float)i);
  free(vals);
  psd__response__free_unpacked(resp, NULL);

  resp = rc_pull(&c, "b", 0, &vals, &vlen);
  ck_assert_uint_eq(resp->block->version, 1);
  ck_assert_float_eq(vals[9], -4.5f);
  free(vals);
  psd__response__free_unpacked(resp, NULL);
  rc_close(&c);
}
END_TEST

/* A hello asking for a lane, attached as libpsd does it. Returns 0 and
 * fills *l, or -1 if the shard offered none. */
static int rc_hello_lane_as(rc *c, uint64_t bytes, psl_lane *l, int attach, int rank,
                            int nw, int staleness) {
  rc_hello_args a = rc_hello_defaults();
  a.identity = "test_server lane";
  a.rank = rank, a.nw = nw, a.staleness = staleness;
  a.lane_bytes = bytes;
  Psd__Response *resp = rc_hello(c, &a);
  ck_assert_ptr_nonnull(resp);
  ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_HELLO);
  int rc = -1;
  const Psd__LaneOffer *lo = resp->hello->lane;
  if (lo != NULL && !attach) {
    rc = 0;
  } else if (lo != NULL) {
    char err[256];
    ck_assert_msg(psl_attach(l, lo->pid, lo->fd, lo->bytes, lo->cookie.data, lo->cookie.len,
                             err, sizeof(err)) == 0, "attach: %s", err);
    rc = 0;
  }
  psd__response__free_unpacked(resp, NULL);
  return rc;
}

static int rc_hello_lane(rc *c, uint64_t bytes, psl_lane *l, int attach) {
  return rc_hello_lane_as(c, bytes, l, attach, -1, 0, -1);
}

/* A push or pull naming lane slots (0: none); values may be sent inline too. */
static Psd__Response *rc_lane_op(rc *c, int push, const char *name, uint64_t block,
                                 uint64_t in, uint64_t out, const float *inline_g, size_t n) {
  Psd__Request r = PSD__REQUEST__INIT;
  Psd__Push p = PSD__PUSH__INIT;
  Psd__Pull q = PSD__PULL__INIT;
  if (push) {
    p.name = (char *)name;
    p.block = block;
    p.has_seq = 1;
    p.seq = seq_counter++;
    p.has_lane_in = in != 0, p.lane_in = in;
    p.has_lane_out = out != 0, p.lane_out = out;
    p.has_lane_len = 1, p.lane_len = n * sizeof(float);
    p.has_want_values = 1, p.want_values = out != 0;
    r.body_case = PSD__REQUEST__BODY_PUSH;
    r.push = &p;
  } else {
    q.name = (char *)name;
    q.block = block;
    q.has_lane_out = out != 0, q.lane_out = out;
    q.has_lane_len = 1, q.lane_len = n * sizeof(float);
    r.body_case = PSD__REQUEST__BODY_PULL;
    r.pull = &q;
  }
  float *v = NULL;
  size_t vl = 0;
  Psd__Response *resp = rc_call(c, &r, inline_g, inline_g ? n * sizeof(float) : 0, &v, &vl);
  ck_assert_uint_eq(vl, 0); /* lane replies carry no values in the frame */
  free(v);
  return resp;
}

/* The shared-memory lane at the protocol level: what it carries is exactly
 * what TCP carries; a bad slot is refused with a sentence and changes
 * nothing; the lane is sealed against a client shrinking it. */
START_TEST(lane_protocol) {
  enum { N = 100000 }; /* one block of 100000 floats */
  rc a, t;
  psl_lane l;
  rc_open(&a, d.port);
  ck_assert_int_eq(rc_hello_lane(&a, 4 << 20, &l, 1), 0);
  ck_assert_uint_ge(l.len, (4u << 20) + PSL_HEADER);
  rc_open(&t, d.port); /* a TCP-only twin */
  rc_hello_tool(&t, -1, 0, -1);

  ps_tensor_spec s;
  ps_tensor_spec_init(&s, PS_INIT_CONSTANT, PS_OPT_ADAM); /* init depends on the name */
  s.init.value = 0.25;
  uint64_t shape[1] = {N};
  psd__response__free_unpacked(rc_create(&a, "lane.a", shape, 1, &s), NULL);
  psd__response__free_unpacked(rc_create(&a, "lane.b", shape, 1, &s), NULL);

  /* The same gradients through the lane (a) and through TCP (b). */
  float *g = malloc(N * sizeof(float)), *vals;
  size_t vlen;
  uint64_t slot = psl_alloc(&l, N * sizeof(float));
  ck_assert_uint_ge(slot, PSL_HEADER);
  float *lane_f = (float *)(l.base + slot);
  for (int step = 0; step < 3; step++) {
    for (int i = 0; i < N; i++) g[i] = 0.001f * (float)((i * 7 + step) % 13) - 0.006f;
    memcpy(lane_f, g, N * sizeof(float));
    Psd__Response *ra = rc_lane_op(&a, 1, "lane.a", 0, slot, slot, NULL, N);
    ck_assert_int_eq(ra->body_case, PSD__RESPONSE__BODY_BLOCK);
    ck_assert(ra->block->in_lane);
    ck_assert_uint_eq(ra->block->version, (uint64_t)step + 1);
    psd__response__free_unpacked(ra, NULL);
    Psd__Response *rb = rc_push_seq(&t, "lane.b", 0, g, N, 1, &vals, &vlen);
    ck_assert_uint_eq(vlen, N * sizeof(float));
    ck_assert_msg(memcmp(lane_f, vals, vlen) == 0, "step %d: lane and TCP differ", step);
    free(vals);
    psd__response__free_unpacked(rb, NULL);
  }
  /* A pull into the lane. */
  memset(lane_f, 0, N * sizeof(float));
  Psd__Response *ra = rc_lane_op(&a, 0, "lane.a", 0, 0, slot, NULL, N);
  ck_assert(ra->block->in_lane);
  psd__response__free_unpacked(ra, NULL);
  Psd__Response *rb = rc_pull(&t, "lane.b", 0, &vals, &vlen);
  ck_assert_msg(memcmp(lane_f, vals, vlen) == 0, "pulled values differ");
  free(vals);
  psd__response__free_unpacked(rb, NULL);

  /* Bad slots: each refused with a sentence; the connection goes on, and
   * the tensor's version does not move. */
  expect_error(rc_lane_op(&a, 1, "lane.a", 0, 64, 0, NULL, N), PSD__CODE__BAD_FRAME,
               "not inside");
  expect_error(rc_lane_op(&a, 1, "lane.a", 0, slot + 4, 0, NULL, N), PSD__CODE__BAD_FRAME,
               "64-byte aligned");
  expect_error(rc_lane_op(&a, 1, "lane.a", 0, (uint64_t)l.len - 64, 0, NULL, N),
               PSD__CODE__BAD_FRAME, "not inside");
  expect_error(rc_lane_op(&a, 0, "lane.a", 0, 0, UINT64_MAX - 63, NULL, N),
               PSD__CODE__BAD_FRAME, "not inside");
  expect_error(rc_lane_op(&a, 1, "lane.a", 0, slot, 0, g, N), PSD__CODE__BAD_FRAME,
               "one or the other");
  expect_error(rc_lane_op(&t, 1, "lane.b", 0, slot, 0, NULL, N), PSD__CODE__BAD_FRAME,
               "no lane");
  /* A slot of another length than the block's (a client that cuts the
   * tensor differently) is refused: never a read or write past the slot. */
  expect_error(rc_lane_op(&a, 1, "lane.a", 0, slot, slot, NULL, N / 2), PSD__CODE__BAD_SHAPE,
               "names a slot of");
  expect_error(rc_lane_op(&a, 0, "lane.a", 0, 0, slot, NULL, N + 16), PSD__CODE__BAD_SHAPE,
               "names a slot of");
  /* In and out overlapping without being the same slot. */
  expect_error(rc_lane_op(&a, 1, "lane.a", 0, slot, slot + 64, NULL, N), PSD__CODE__BAD_FRAME,
               "overlap");
  /* A peer that asked for a lane but never mapped it cannot make the shard
   * write into it. */
  rc u;
  psl_lane unused;
  rc_open(&u, d.port);
  ck_assert_int_eq(rc_hello_lane(&u, 1 << 20, &unused, 0), 0);
  expect_error(rc_lane_op(&u, 0, "lane.a", 0, 0, PSL_HEADER, NULL, N), PSD__CODE__BAD_FRAME,
               "never attached");
  rc_close(&u);
  /* A NaN in the slot is refused like one in a frame. */
  lane_f[N / 2] = NAN;
  expect_error(rc_lane_op(&a, 1, "lane.a", 0, slot, slot, NULL, N), PSD__CODE__BAD_GRADIENT,
               "NaN");
  Psd__Response *rv = rc_pull(&a, "lane.a", 0, &vals, &vlen);
  ck_assert_uint_eq(rv->block->version, 3);
  free(vals);
  psd__response__free_unpacked(rv, NULL);

  /* Sealed: this process cannot shrink or grow the shard's lane. */
  char path[64];
  snprintf(path, sizeof(path), "/proc/%d/fd", (int)d.pid);
  int found = 0;
  for (int fd = 3; fd < 64 && !found; fd++) {
    char p2[96], target[256];
    snprintf(p2, sizeof(p2), "%s/%d", path, fd);
    ssize_t k = readlink(p2, target, sizeof(target) - 1);
    if (k <= 0) continue;
    target[k] = '\0';
    if (strstr(target, "psd-lane") == NULL) continue;
    int lfd = open(p2, O_RDWR);
    ck_assert_int_ge(lfd, 0);
    ck_assert_int_ne(ftruncate(lfd, 4096), 0);
    ck_assert_int_eq(errno, EPERM);
    close(lfd);
    found = 1;
  }
  ck_assert_msg(found, "no psd-lane fd in %s", path);

  free(g);
  psl_close(&l);
  rc_close(&a);
  rc_close(&t);
}
END_TEST

/* Send a sync push of block 0 of `name` at `clock` without waiting for the
 * reply (it comes when the round completes); its id is returned. */
static uint64_t rc_push_at(rc *c, const char *name, uint64_t clock, const float *g, size_t n,
                           uint64_t lane_slot) {
  Psd__Request r = PSD__REQUEST__INIT;
  Psd__Push p = PSD__PUSH__INIT;
  p.name = (char *)name;
  p.block = 0;
  p.has_seq = 1, p.seq = seq_counter++;
  p.has_clock = 1, p.clock = clock;
  if (lane_slot) {
    p.has_lane_in = 1, p.lane_in = lane_slot;
    p.has_lane_len = 1, p.lane_len = n * sizeof(float);
  }
  r.id = c->next_id++;
  r.body_case = PSD__REQUEST__BODY_PUSH;
  r.push = &p;
  ck_assert_int_eq(rc_send(c, &r, lane_slot ? NULL : g, lane_slot ? 0 : n * sizeof(float)), 0);
  return r.id;
}

/* Sync mode: a push whose clock moves its worker past a pending round
 * completes that round while the push itself is being handled; the pushed
 * gradient (here taken out of a lane) must survive that (it once shared the
 * buffer the completed round averaged in). */
START_TEST(lane_sync_push_that_completes_another_round) {
  enum { N = 20000 };
  rc w0, w1;
  psl_lane l;
  rc_open(&w0, d.port);
  rc_hello_tool(&w0, 0, 2, 0);
  rc_open(&w1, d.port);
  ck_assert_int_eq(rc_hello_lane_as(&w1, 1 << 20, &l, 1, 1, 2, 0), 0);
  ps_tensor_spec s;
  ps_tensor_spec_init(&s, PS_INIT_ZEROS, PS_OPT_SGD);
  s.optim.lr = 1;
  uint64_t shape[1] = {N};
  psd__response__free_unpacked(rc_create(&w0, "A", shape, 1, &s), NULL);
  psd__response__free_unpacked(rc_create(&w0, "B", shape, 1, &s), NULL);
  float *x = malloc(N * sizeof(float)), *z = malloc(N * sizeof(float));
  for (int i = 0; i < N; i++) x[i] = 50, z[i] = 3;
  uint64_t slot = psl_alloc(&l, N * sizeof(float));
  float *y = (float *)(l.base + slot);
  for (int i = 0; i < N; i++) y[i] = 1;

  /* Worker 0: A at clock 1 (its round waits for worker 1, at clock 0). */
  uint64_t ida = rc_push_at(&w0, "A", 1, x, N, 0);
  /* Worker 1: B at clock 2 through its lane; worker 1 passes clock 1, so
   * A's round completes while this push is handled. */
  uint64_t idb1 = rc_push_at(&w1, "B", 2, NULL, N, slot);
  /* Worker 0: B at clock 2; B's round completes: B = -(1 + 3) / 2. */
  uint64_t idb0 = rc_push_at(&w0, "B", 2, z, N, 0);
  int got_a = 0, got_b0 = 0;
  for (int k = 0; k < 2; k++) {
    Psd__Response *resp = rc_recv(&w0, NULL, NULL);
    ck_assert_ptr_nonnull(resp);
    ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_BLOCK);
    got_a |= resp->id == ida;
    got_b0 |= resp->id == idb0;
    psd__response__free_unpacked(resp, NULL);
  }
  Psd__Response *resp = rc_recv(&w1, NULL, NULL);
  ck_assert_ptr_nonnull(resp);
  ck_assert_uint_eq(resp->id, idb1);
  ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_BLOCK);
  psd__response__free_unpacked(resp, NULL);
  ck_assert(got_a && got_b0);

  float *vals;
  size_t vlen;
  resp = rc_pull(&w0, "A", 0, &vals, &vlen);
  ck_assert_float_eq(vals[0], -50.0f);
  ck_assert_float_eq(vals[N - 1], -50.0f);
  free(vals);
  psd__response__free_unpacked(resp, NULL);
  resp = rc_pull(&w0, "B", 0, &vals, &vlen);
  for (int i = 0; i < N; i += 997)
    ck_assert_msg(vals[i] == -2.0f, "B[%d] = %g, expected -2 (the lane push was lost)", i,
                  vals[i]);
  free(vals);
  psd__response__free_unpacked(resp, NULL);
  free(x);
  free(z);
  psl_close(&l);
  rc_close(&w0);
  rc_close(&w1);
}
END_TEST

/* --lane-mb 0: no lane is offered, and everything works over TCP. */
START_TEST(lane_disabled) {
  th_psd p;
  const char *args[] = {"--lane-mb", "0", NULL};
  ck_assert_int_eq(th_psd_start(&p, 0, args), 0);
  rc a;
  psl_lane l;
  rc_open(&a, p.port);
  ck_assert_int_eq(rc_hello_lane(&a, 1 << 20, &l, 1), -1);
  rc_close(&a);
  int st = th_psd_stop(&p, SIGTERM, WAIT_MS);
  ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}
END_TEST

START_TEST(request_errors_keep_connection) {
  rc c;
  rc_open(&c, d.port);
  float *vals;
  size_t vlen;
  /* Before the hello. */
  expect_error(rc_pull(&c, "x", 0, &vals, &vlen), PSD__CODE__NOT_READY, "hello");
  rc_hello_tool(&c, -1, 0, -1);
  expect_error(rc_pull(&c, "nope", 0, &vals, &vlen), PSD__CODE__NOT_FOUND, "nope");

  ps_tensor_spec s;
  ps_tensor_spec_init(&s, PS_INIT_HE_NORMAL, PS_OPT_ADAM);
  uint64_t shape[2] = {4, 8};
  Psd__Response *resp = rc_create(&c, "w", shape, 2, &s);
  ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_INFO);
  psd__response__free_unpacked(resp, NULL);
  /* Idempotent create. */
  resp = rc_create(&c, "w", shape, 2, &s);
  ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_INFO);
  psd__response__free_unpacked(resp, NULL);
  /* Conflicting create names the difference. */
  ps_tensor_spec s2 = s;
  s2.optim.lr = 0.01;
  expect_error(rc_create(&c, "w", shape, 2, &s2), PSD__CODE__EXISTS, "lr");
  uint64_t shape2[2] = {4, 9};
  expect_error(rc_create(&c, "w", shape2, 2, &s), PSD__CODE__EXISTS, "[4,8] vs [4,9]");
  /* Bad spec: zeros on a matrix. */
  ps_tensor_spec z;
  ps_tensor_spec_init(&z, PS_INIT_ZEROS, PS_OPT_SGD);
  expect_error(rc_create(&c, "z", shape, 2, &z), PSD__CODE__BAD_SPEC, NULL);
  ps_tensor_spec badlr = s;
  badlr.optim.lr = -1;
  expect_error(rc_create(&c, "q", shape, 2, &badlr), PSD__CODE__BAD_SPEC, NULL);

  float *before;
  size_t blen;
  resp = rc_pull(&c, "w", 0, &before, &blen);
  psd__response__free_unpacked(resp, NULL);

  /* Wrong shape, block out of range, NaN: errors, weights untouched. */
  float g[32];
  for (int i = 0; i < 32; i++) g[i] = 0.1f;
  expect_error(rc_push_seq(&c, "w", 0, g, 31, 0, NULL, NULL), PSD__CODE__BAD_SHAPE, "32 elements");
  expect_error(rc_push_seq(&c, "w", 5, g, 32, 0, NULL, NULL), PSD__CODE__BAD_SHAPE, "block 5");
  g[17] = NAN;
  expect_error(rc_push_seq(&c, "w", 0, g, 32, 0, NULL, NULL), PSD__CODE__BAD_GRADIENT, "NaN");
  g[17] = INFINITY;
  expect_error(rc_push_seq(&c, "w", 0, g, 32, 0, NULL, NULL), PSD__CODE__BAD_GRADIENT, NULL);
  resp = rc_pull(&c, "w", 0, &vals, &vlen);
  ck_assert_uint_eq(resp->block->version, 0);
  ck_assert_int_eq(memcmp(vals, before, blen), 0);
  free(vals);
  free(before);
  psd__response__free_unpacked(resp, NULL);

  /* The connection still works. */
  g[17] = 0.1f;
  ck_assert_uint_eq(push_applied(&c, "w", g, 32), 1);
  rc_close(&c);
}
END_TEST

/* A client sending random bytes is closed; others are unaffected. */
START_TEST(garbage_does_not_disturb_others) {
  rc good;
  rc_open(&good, d.port);
  rc_hello_tool(&good, -1, 0, -1);
  ps_tensor_spec s;
  ps_tensor_spec_init(&s, PS_INIT_ZEROS, PS_OPT_SGD);
  uint64_t shape[1] = {1000};
  psd__response__free_unpacked(rc_create(&good, "v", shape, 1, &s), NULL);

  srandom(1234);
  for (int round = 0; round < 20; round++) {
    int bad = th_connect(d.port);
    ck_assert_int_ge(bad, 0);
    uint8_t junk[4096];
    for (size_t i = 0; i < sizeof(junk); i++) junk[i] = (uint8_t)random();
    if (round % 2) memcpy(junk, "PSD1\1\0\0\0", 8); /* valid start, random rest */
    rc_send_all(bad, junk, sizeof(junk));

    float g[1000];
    for (int i = 0; i < 1000; i++) g[i] = 1.0f;
    Psd__Response *resp = rc_push_seq(&good, "v", 0, g, 1000, 0, NULL, NULL);
    ck_assert_ptr_nonnull(resp);
    ck_assert_uint_eq(resp->block->version, (uint64_t)round + 1);
    psd__response__free_unpacked(resp, NULL);

    /* The bad client gets an error frame (or nothing) and then EOF. */
    rc br;
    rc_adopt(&br, bad, d.port);
    Psd__Response *e = rc_recv(&br, NULL, NULL);
    if (e) {
      ck_assert_int_eq(e->body_case, PSD__RESPONSE__BODY_ERROR);
      psd__response__free_unpacked(e, NULL);
      ck_assert_ptr_null(rc_recv(&br, NULL, NULL));
    }
    rc_close(&br);
  }
  rc_close(&good);
  ck_assert(th_log_contains(&d, "closing"));
}
END_TEST

START_TEST(oversized_unknown_and_cut_frames) {
  /* Oversized length: refused from the header alone. */
  int fd = th_connect(d.port);
  uint8_t h[PSW_HEADER_SIZE];
  rc_header(h, (uint64_t)1 << 33);
  rc_send_all(fd, h, 16);
  rc c;
  rc_adopt(&c, fd, d.port);
  Psd__Response *resp = rc_recv(&c, NULL, NULL);
  expect_error(resp, PSD__CODE__TOO_LARGE, "maximum");
  ck_assert_ptr_null(rc_recv(&c, NULL, NULL));
  rc_close(&c);

  /* A request without a body. */
  rc_open(&c, d.port);
  rc_hello_tool(&c, -1, 0, -1);
  Psd__Request r = PSD__REQUEST__INIT;
  expect_error(rc_call(&c, &r, NULL, 0, NULL, NULL), PSD__CODE__UNKNOWN_REQUEST, "unknown");
  ck_assert_ptr_null(rc_recv(&c, NULL, NULL));
  rc_close(&c);

  /* Cut mid-frame. */
  fd = th_connect(d.port);
  uint8_t half[24] = {'P', 'S', 'D', '1', 1, 0, 0, 0, 100, 0, 0, 0, 0, 0, 0, 0};
  rc_send_all(fd, half, sizeof(half));
  close(fd);

  /* The daemon is still serving. */
  rc_open(&c, d.port);
  rc_hello_tool(&c, -1, 0, -1);
  Psd__Request p = PSD__REQUEST__INIT;
  Psd__Ping ping = PSD__PING__INIT;
  p.body_case = PSD__REQUEST__BODY_PING;
  p.ping = &ping;
  resp = rc_call(&c, &p, NULL, 0, NULL, NULL);
  ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_ACK);
  psd__response__free_unpacked(resp, NULL);
  rc_close(&c);
  ck_assert(wait_log(&d, "cut mid-frame"));
}
END_TEST

/* Connect c to port as a tool and create "big": 262144 floats, one 1 MiB
 * block, for pulls whose replies pile up. */
static void open_with_big(rc *c, int port) {
  rc_open(c, port);
  rc_hello_tool(c, -1, 0, -1);
  ps_tensor_spec s;
  ps_tensor_spec_init(&s, PS_INIT_NORMAL, PS_OPT_SGD);
  uint64_t shape[1] = {262144};
  psd__response__free_unpacked(rc_create(c, "big", shape, 1, &s), NULL);
}

/* A client that never reads its replies stops being read from; nothing is
 * buffered without bound, and once it reads, every reply arrives. */
START_TEST(backpressure_bounds_output) {
  /* debug: the daemon logs when it pauses a connection */
  const char *extra[] = {"--out-cap", "1048576", "--log-level", "debug", NULL};
  th_psd small;
  ck_assert_int_eq(th_psd_start(&small, 0, extra), 0);
  rc c;
  open_with_big(&c, small.port);

  /* 400 pulls of 1 MiB = 400 MiB of replies, none read yet. */
  struct timeval tv = {2, 0};
  setsockopt(c.fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  int sent = rc_send_pulls(&c, "big", 400, 100, 0);
  /* Wait until the server has run into its cap and stopped reading (the
   * 400 MiB asked for would take it far past the cap otherwise), then look
   * at its memory. */
  ck_assert_msg(wait_log(&small, "pausing"), "the server never paused the connection");
  long rss_kb = th_proc_kb(small.pid, "VmRSS");
  ck_assert_int_gt(rss_kb, 0);
  ck_assert_int_lt(rss_kb, 200 * 1024); /* far below the 400 MiB asked for */
  ck_assert(th_log_contains(&small, "listening"));

  /* Now read: every reply comes, in order. */
  for (int i = 0; i < sent; i++) {
    float *v;
    size_t vl;
    Psd__Response *resp = rc_recv(&c, &v, &vl);
    ck_assert_ptr_nonnull(resp);
    ck_assert_uint_eq(resp->id, (uint64_t)i + 100);
    ck_assert_uint_eq(vl, 262144 * 4);
    free(v);
    psd__response__free_unpacked(resp, NULL);
  }
  rc_close(&c);
  int st = th_psd_stop(&small, SIGTERM, WAIT_MS);
  ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}
END_TEST

START_TEST(sigterm_exits_cleanly) {
  th_psd p;
  ck_assert_int_eq(th_psd_start(&p, 0, NULL), 0);
  rc c;
  rc_open(&c, p.port);
  rc_hello_tool(&c, -1, 0, -1);
  int st = th_psd_stop(&p, SIGTERM, WAIT_MS);
  ck_assert(WIFEXITED(st));
  ck_assert_int_eq(WEXITSTATUS(st), 0);
  ck_assert(th_log_contains(&p, "stopped"));
  /* The open connection was closed by the server. */
  ck_assert_ptr_null(rc_recv(&c, NULL, NULL));
  rc_close(&c);
}
END_TEST

/* Checkpoint on SIGTERM, exact restore, and a corrupt newest file falls
 * back to the previous one. */
START_TEST(checkpoint_restore_and_corruption) {
  char dir[512];
  snprintf(dir, sizeof(dir), "%s/ckpt", th_tmpdir());
  char cmd[1200];
  snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
  ck_assert_int_eq(system(cmd), 0);
  const char *extra[] = {"--data-dir", dir, NULL};
  th_psd p;
  ck_assert_int_eq(th_psd_start(&p, 0, extra), 0);
  int port = p.port;
  rc c;
  rc_open(&c, port);
  rc_hello_tool(&c, -1, 0, -1);
  ps_tensor_spec s;
  ps_tensor_spec_init(&s, PS_INIT_GLOROT_UNIFORM, PS_OPT_ADAM);
  s.block_size = 100;
  uint64_t shape[2] = {30, 20};
  psd__response__free_unpacked(rc_create(&c, "w", shape, 2, &s), NULL);
  float g[100];
  for (int i = 0; i < 100; i++) g[i] = (float)(i % 7) - 3.0f;
  for (uint64_t b = 0; b < 6; b++)
    psd__response__free_unpacked(rc_push_seq(&c, "w", b, g, 100, 0, NULL, NULL), NULL);
  /* Checkpoint A on demand, then one more push, then SIGTERM writes B. */
  Psd__Request r = PSD__REQUEST__INIT;
  Psd__Checkpoint ck = PSD__CHECKPOINT__INIT;
  r.body_case = PSD__REQUEST__BODY_CHECKPOINT;
  r.checkpoint = &ck;
  Psd__Response *resp = rc_call(&c, &r, NULL, 0, NULL, NULL);
  ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_ACK);
  psd__response__free_unpacked(resp, NULL);
  float *after_a;
  size_t la;
  psd__response__free_unpacked(rc_pull(&c, "w", 2, &after_a, &la), NULL);
  psd__response__free_unpacked(rc_push_seq(&c, "w", 2, g, 100, 0, NULL, NULL), NULL);
  float *after_b;
  size_t lb;
  psd__response__free_unpacked(rc_pull(&c, "w", 2, &after_b, &lb), NULL);
  rc_close(&c);
  int st = th_psd_stop(&p, SIGTERM, WAIT_MS);
  ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);

  /* Exact restore of B. */
  ck_assert_int_eq(th_psd_start(&p, port, extra), 0);
  rc_open(&c, port);
  rc_hello_tool(&c, -1, 0, -1);
  float *v;
  size_t vl;
  resp = rc_pull(&c, "w", 2, &v, &vl);
  ck_assert_uint_eq(resp->block->version, 2);
  ck_assert_int_eq(memcmp(v, after_b, lb), 0);
  free(v);
  psd__response__free_unpacked(resp, NULL);
  rc_close(&c);
  th_psd_stop(&p, SIGKILL, 1000); /* no final checkpoint */

  /* Corrupt the newest (B): flip a byte in the middle. */
  snprintf(cmd, sizeof(cmd),
           "f=$(ls %s/ckpt-*.psd | sort | tail -1); printf '\\xff' | dd of=$f bs=1 "
           "seek=$(( $(stat -c %%s $f) / 2 )) conv=notrunc status=none",
           dir);
  ck_assert_int_eq(system(cmd), 0);
  ck_assert_int_eq(th_psd_start(&p, port, extra), 0);
  ck_assert(th_log_contains(&p, "checksum mismatch"));
  ck_assert(th_log_contains(&p, "trying the previous one"));
  rc_open(&c, port);
  rc_hello_tool(&c, -1, 0, -1);
  resp = rc_pull(&c, "w", 2, &v, &vl);
  ck_assert_uint_eq(resp->block->version, 1);
  ck_assert_int_eq(memcmp(v, after_a, la), 0);
  free(v);
  psd__response__free_unpacked(resp, NULL);
  rc_close(&c);
  th_psd_stop(&p, SIGKILL, 1000);

  /* Truncate the one that was used: the next older one (or none) is taken,
   * never half a file. */
  snprintf(cmd, sizeof(cmd),
           "for f in $(ls %s/ckpt-*.psd); do truncate -s 100 $f; done", dir);
  ck_assert_int_eq(system(cmd), 0);
  ck_assert_int_eq(th_psd_start(&p, port, extra), 0);
  ck_assert(th_log_contains(&p, "truncated"));
  ck_assert(th_log_contains(&p, "no valid checkpoint"));
  rc_open(&c, port);
  rc_hello_tool(&c, -1, 0, -1);
  expect_error(rc_pull(&c, "w", 2, &v, &vl), PSD__CODE__NOT_FOUND, NULL);
  rc_close(&c);
  st = th_psd_stop(&p, SIGTERM, WAIT_MS);
  ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  free(after_a);
  free(after_b);
  snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
  ck_assert_int_eq(system(cmd), 0);
}
END_TEST

/* A second hello that is refused changes nothing: its rank is not taken. */
START_TEST(refused_rehello_keeps_the_first) {
  rc c;
  rc_open(&c, d.port);
  rc_hello_tool(&c, 0, 1, 0); /* rank 0 of a 1-worker sync job */
  ps_tensor_spec s;
  ps_tensor_spec_init(&s, PS_INIT_ZEROS, PS_OPT_SGD);
  uint64_t shape[1] = {4};
  psd__response__free_unpacked(rc_create(&c, "t", shape, 1, &s), NULL);
  Psd__Request r = PSD__REQUEST__INIT;
  Psd__Hello h = PSD__HELLO__INIT;
  h.protocol = PS_PROTOCOL_VERSION;
  h.has_rank = 1;
  h.rank = 100000;
  h.servers = "nonsense";
  r.body_case = PSD__REQUEST__BODY_HELLO;
  r.hello = &h;
  expect_error(rc_call(&c, &r, NULL, 0, NULL, NULL), PSD__CODE__WRONG_SHARD, NULL);
  h.servers = NULL;
  h.has_num_workers = 1;
  h.num_workers = 1;
  h.staleness = 0;
  expect_error(rc_call(&c, &r, NULL, 0, NULL, NULL), PSD__CODE__WRONG_SHARD, "rank");
  /* Still rank 0: a sync push of a 1-worker job applies at once. */
  float g[4] = {1, 1, 1, 1};
  ck_assert_uint_eq(push_applied(&c, "t", g, 4), 1);
  rc_close(&c);
}
END_TEST

/* Replies bigger than any fixed buffer: a list of many tensors with long
 * names, the stats of a job of many workers. */
START_TEST(big_list_and_stats_replies) {
  rc c;
  rc_open(&c, d.port);
  rc_hello_tool(&c, 0, 500, -1); /* rank 0 of a 500-worker async job */
  ps_tensor_spec s;
  ps_tensor_spec_init(&s, PS_INIT_GLOROT_UNIFORM, PS_OPT_ADAM);
  uint64_t shape[2] = {8, 8};
  for (int i = 0; i < 80; i++) {
    char name[200];
    snprintf(name, sizeof(name), "model.encoder.layer%02d.attention.output.dense.weight", i);
    Psd__Response *resp = rc_create(&c, name, shape, 2, &s);
    ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_INFO);
    psd__response__free_unpacked(resp, NULL);
  }
  Psd__Request r = PSD__REQUEST__INIT;
  Psd__List l = PSD__LIST__INIT;
  r.body_case = PSD__REQUEST__BODY_LIST;
  r.list = &l;
  Psd__Response *resp = rc_call(&c, &r, NULL, 0, NULL, NULL);
  ck_assert_ptr_nonnull(resp);
  ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_LIST);
  ck_assert_uint_eq(resp->list->n_tensors, 80);
  psd__response__free_unpacked(resp, NULL);
  Psd__Request q = PSD__REQUEST__INIT;
  Psd__Stats st = PSD__STATS__INIT;
  q.body_case = PSD__REQUEST__BODY_STATS;
  q.stats = &st;
  resp = rc_call(&c, &q, NULL, 0, NULL, NULL);
  ck_assert_ptr_nonnull(resp);
  ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_STATS);
  ck_assert_ptr_nonnull(strstr(resp->stats->json, "{\"rank\":499,"));
  ck_assert_uint_gt(strlen(resp->stats->json), 4096);
  psd__response__free_unpacked(resp, NULL);
  rc_close(&c);
}
END_TEST

/* A client that never reads cannot hold shutdown (and the final
 * checkpoint) hostage. */
START_TEST(sigterm_with_unread_replies) {
  char dir[512], cmd[600];
  snprintf(dir, sizeof(dir), "%s/unread", th_tmpdir());
  snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
  ck_assert_int_eq(system(cmd), 0);
  /* A 4 MiB cap: the server pauses the connection (and says so at debug
   * level) once it holds that much unread. */
  const char *extra[] = {"--data-dir", dir, "--out-cap", "4194304", "--log-level", "debug", NULL};
  th_psd p;
  ck_assert_int_eq(th_psd_start(&p, 0, extra), 0);
  rc c;
  open_with_big(&c, p.port);
  rc_send_pulls(&c, "big", 100, 1000, 0);
  /* SIGTERM only once replies are queued that this client will not read. */
  ck_assert_msg(wait_log(&p, "pausing"), "the server never held unread replies");
  int st = th_psd_stop(&p, SIGTERM, WAIT_MS);
  ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  ck_assert(th_log_contains(&p, "not read within 2 s"));
  ck_assert(th_log_contains(&p, "final checkpoint"));
  rc_close(&c);
  ck_assert_int_eq(system(cmd), 0);
}
END_TEST

int main(void) {
  Suite *s = suite_create("server");
  TCase *tc = tcase_create("protocol");
  tcase_add_checked_fixture(tc, start_default, stop_default);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, create_pull_push_sgd);
  tcase_add_test(tc, request_errors_keep_connection);
  tcase_add_test(tc, garbage_does_not_disturb_others);
  tcase_add_test(tc, oversized_unknown_and_cut_frames);
  tcase_add_test(tc, refused_rehello_keeps_the_first);
  tcase_add_test(tc, lane_protocol);
  tcase_add_test(tc, lane_disabled);
  tcase_add_test(tc, lane_sync_push_that_completes_another_round);
  tcase_add_test(tc, big_list_and_stats_replies);
  suite_add_tcase(s, tc);
  tc = tcase_create("lifecycle");
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, backpressure_bounds_output);
  tcase_add_test(tc, sigterm_exits_cleanly);
  tcase_add_test(tc, sigterm_with_unread_replies);
  tcase_add_test(tc, checkpoint_restore_and_corruption);
  suite_add_tcase(s, tc);
  return check_run(s);
}
