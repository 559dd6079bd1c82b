/*
 * test_limits.c -- the shard's limits against real daemons on loopback:
 * the memory ceiling (--max-memory), O(1) creates, partial frames and their
 * deadline, output caps for clients that never read, requests of a reset
 * client dropped, --max-clients, EMFILE, hello and idle deadlines, strings
 * holding NUL or invalid UTF-8, and the loop stall figures in stats.
 *
 * Nothing here depends on the machine's speed: states are reached by
 * construction (a client that never reads, a frame never finished) and
 * observed by bounded polling of `stats`, of /proc and of sockets.
 */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check_main.h"
#include "harness.h"
#include "msg.h"
#include "psmath.h"
#include "rawcheck.h"
#include "rawclient.h"
#include "wire.h"

/* ---- the raw protocol client (tests/rawclient.h), as this file uses it ------ */

/* Hello as `rank` (-1: a tool) of a job of nw workers with staleness,
 * asking for a lane of lane_bytes (0: none); the reply (caller frees). */
static Psd__Response *hello_as(rc *c, int rank, int nw, int staleness, uint64_t lane_bytes) {
  rc_hello_args a = rc_hello_defaults();
  a.identity = "test_limits";
  a.rank = rank;
  a.nw = nw;
  a.staleness = staleness;
  a.lane_bytes = lane_bytes;
  return rc_hello(c, &a);
}

/* A tool's hello (of a 1-worker async job); a lane of lane_bytes asked. */
static Psd__Response *rc_hello_lane(rc *c, uint64_t lane_bytes) {
  return hello_as(c, -1, 1, -1, lane_bytes);
}

/* Connect and hello as `rank` of such a job, which must be accepted. */
static void open_as(rc *c, int port, int rank, int nw, int staleness) {
  ck_assert_int_ge(rc_open(c, port), 0);
  Psd__Response *resp = hello_as(c, rank, nw, staleness, 0);
  ck_assert_ptr_nonnull(resp);
  ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_HELLO);
  psd__response__free_unpacked(resp, NULL);
}

static void rc_hello_tool(rc *c) {
  Psd__Response *resp = rc_hello_lane(c, 0);
  ck_assert_ptr_nonnull(resp);
  ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_HELLO);
  psd__response__free_unpacked(resp, NULL);
}

/* Connect and hello as a tool (see rc_hello_tool). */
static void open_tool(rc *c, int port) { open_as(c, port, -1, 1, -1); }

/* A clock request that must be acknowledged. */
static void clock_ok(rc *c, uint64_t clock) {
  Psd__Response *resp = rc_simple(c, PSD__REQUEST__BODY_CLOCK, clock);
  ck_assert_ptr_nonnull(resp);
  ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_ACK);
  psd__response__free_unpacked(resp, NULL);
}

static int rc_ping(rc *c) {
  Psd__Response *resp = rc_simple(c, PSD__REQUEST__BODY_PING, 0);
  int ok = resp != NULL && resp->body_case == PSD__RESPONSE__BODY_ACK;
  if (resp) psd__response__free_unpacked(resp, NULL);
  return ok;
}

/* ---- observing the daemon -------------------------------------------------------- */

static char *stats_json(rc *c) {
  char *j = rc_stats(c);
  ck_assert_msg(j != NULL, "no stats reply");
  return j;
}

/* The number after "key": inside the object "obj": (NULL: top level). */
static double json_num(const char *j, const char *obj, const char *key) {
  int found;
  double v = rc_json_num(j, obj, key, &found);
  ck_assert_msg(found, "no %s.%s in %s", obj ? obj : "", key, j);
  return v;
}

static double stat_of(rc *c, const char *obj, const char *key) {
  char *j = stats_json(c);
  double v = json_num(j, obj, key);
  free(j);
  return v;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* Poll a stats figure until it is at least `want`; bounded (60 s). */
static double wait_stat_ge(rc *c, const char *obj, const char *key, double want) {
  double v = 0;
  for (int i = 0; i < 6000; i++) {
    v = stat_of(c, obj, key);
    if (v >= want) return v;
    sleep_ms(10);
  }
  ck_abort_msg("stats %s.%s stayed at %g, below %g", obj ? obj : "", key, v, want);
  return v;
}

/* Poll a stats figure until it is 0; bounded (60 s). */
static void wait_stat_zero(rc *c, const char *obj, const char *key) {
  double v = 0;
  for (int i = 0; i < 6000; i++) {
    if ((v = stat_of(c, obj, key)) == 0) return;
    sleep_ms(10);
  }
  ck_abort_msg("stats %s.%s stayed at %g, not 0", obj ? obj : "", key, v);
}

/* Wait until the peer closes fd (EOF or reset), reading and dropping what
 * comes; bounded (60 s). Returns 1 when closed. */
static int wait_closed(int fd) {
  char buf[65536];
  for (int i = 0; i < 600; i++) {
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, 100) > 0) {
      ssize_t n = recv(fd, buf, sizeof(buf), 0);
      if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) return 1;
    }
  }
  return 0;
}

static void start(th_psd *d, const char *const *extra) {
  ck_assert_int_eq(th_psd_start(d, 0, extra), 0);
}

/* The worst loop stall the daemon saw, printed (a figure, not an assertion). */
static void print_stall(const char *test, int port) {
  rc c;
  if (rc_open(&c, port) < 0) return;
  rc_hello_tool(&c);
  char *j = stats_json(&c);
  const char *h = strstr(j, "\"stall_ms\":");
  const char *e = h ? strchr(h, '}') : NULL;
  printf("%-36s worst loop stall %6.2f ms over %5.0f turns %.*s\n", test,
         json_num(j, "loop", "worst_stall_ms"), json_num(j, "loop", "turns"),
         h && e ? (int)(e - h + 1) : 0, h ? h : "");
  free(j);
  rc_close(&c);
}

static void stop(th_psd *d) {
  int st = th_psd_stop(d, SIGTERM, 20000);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "psd did not exit cleanly (%d)", st);
}

/* The end of a test: its worst loop stall printed, then a clean stop. */
static void stop_after(th_psd *d, const char *test) {
  print_stall(test, d->port);
  stop(d);
}

/* ---- tests ---------------------------------------------------------------------- */

/* A create of 2^24 blocks of one element answers at once and holds no
 * block; touching one materializes one. */
START_TEST(create_costs_o1) {
  const char *extra[] = {"--max-memory", "64M", NULL};
  th_psd d;
  start(&d, extra);
  rc c;
  open_tool(&c, d.port);
  double before = stat_of(&c, "memory", "used");
  ps_tensor_spec s;
  ps_tensor_spec_init(&s, PS_INIT_NORMAL, PS_OPT_ADAM);
  s.block_size = 1;
  uint64_t shape[1] = {1u << 24};
  Psd__Response *resp = rc_create(&c, "huge", shape, 1, &s);
  ck_assert_ptr_nonnull(resp);
  ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_INFO);
  ck_assert_uint_eq(resp->info->blocks_here, 0);
  ck_assert_uint_eq(resp->info->numel, 1u << 24);
  psd__response__free_unpacked(resp, NULL);
  char *j = stats_json(&c);
  ck_assert_int_eq((int)json_num(j, "memory", "mem_tensors"), 0);
  ck_assert_int_eq((int)json_num(j, NULL, "blocks_touched"), 0);
  /* The tensor's record, not its 2^24 blocks: well under a kilobyte each. */
  ck_assert_double_lt(json_num(j, "memory", "used") - before, 4096);
  free(j);
  float *v;
  size_t vl;
  resp = rc_pull(&c, "huge", 12345, &v, &vl);
  ck_assert_ptr_nonnull(resp);
  ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_BLOCK);
  ck_assert_uint_eq(vl, 4);
  free(v);
  psd__response__free_unpacked(resp, NULL);
  ck_assert_int_eq((int)stat_of(&c, NULL, "blocks_touched"), 1);
  ck_assert_double_gt(stat_of(&c, "memory", "mem_tensors"), 0);
  rc_close(&c);
  stop_after(&d, "create_costs_o1");
}
END_TEST

/* Pushes to ever new blocks of a [2^44] tensor stop at the ceiling with
 * RESOURCE_EXHAUSTED; what was there stays byte for byte, and another
 * client still works. */
START_TEST(pushes_stop_at_the_ceiling) {
  const char *extra[] = {"--max-memory", "48M", NULL};
  th_psd d;
  start(&d, extra);
  rc c;
  open_tool(&c, d.port);
  ps_tensor_spec s;
  ps_tensor_spec_init(&s, PS_INIT_NORMAL, PS_OPT_SGD);
  uint64_t sshape[1] = {1024};
  create_ok(&c, "sentinel", sshape, 1, &s);
  float g[1024];
  for (int i = 0; i < 1024; i++) g[i] = 0.01f * (float)(i % 13);
  Psd__Response *resp = rc_push(&c, "sentinel", 0, 0, g, 1024, 0, NULL, NULL);
  ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_BLOCK);
  psd__response__free_unpacked(resp, NULL);
  float *before;
  size_t blen;
  psd__response__free_unpacked(rc_pull(&c, "sentinel", 0, &before, &blen), NULL);
  ck_assert_uint_eq(blen, 4096);

  uint64_t bs = 1u << 20; /* 4 MiB blocks */
  ps_tensor_spec big;
  ps_tensor_spec_init(&big, PS_INIT_ZEROS, PS_OPT_SGD);
  big.block_size = bs;
  uint64_t shape[1] = {1ull << 44};
  create_ok(&c, "vast", shape, 1, &big);
  float *grad = calloc(bs, sizeof(float));
  int refused_at = -1;
  for (int b = 0; b < 64 && refused_at < 0; b++) {
    resp = rc_push(&c, "vast", (uint64_t)b * 4099, 0, grad, bs, 0, NULL, NULL);
    ck_assert_ptr_nonnull(resp);
    if (resp->body_case == PSD__RESPONSE__BODY_ERROR) {
      refused_at = b;
      expect_error(resp, PSD__CODE__RESOURCE_EXHAUSTED, "memory ceiling");
    } else {
      ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_BLOCK);
      psd__response__free_unpacked(resp, NULL);
    }
  }
  free(grad);
  ck_assert_int_gt(refused_at, 0); /* some fit, then the ceiling */
  char *j = stats_json(&c);
  ck_assert_double_le(json_num(j, "memory", "used"), 48.0 * 1024 * 1024);
  ck_assert_double_ge(json_num(j, "memory", "mem_refused"), 1);
  ck_assert_int_eq((int)json_num(j, NULL, "blocks_touched"), refused_at + 1);
  free(j);
  ck_assert_int_lt(th_proc_kb(d.pid, "VmRSS"), 48 * 1024 + 32 * 1024);

  /* The sentinel is untouched, and a new client is served. */
  rc c2;
  open_tool(&c2, d.port);
  float *after;
  size_t alen;
  resp = rc_pull(&c2, "sentinel", 0, &after, &alen);
  ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_BLOCK);
  psd__response__free_unpacked(resp, NULL);
  ck_assert_uint_eq(alen, blen);
  ck_assert_int_eq(memcmp(before, after, blen), 0);
  free(before);
  free(after);
  /* Still refused, whoever asks: nothing was freed. */
  resp = rc_pull(&c2, "vast", 999999, NULL, NULL);
  expect_error(resp, PSD__CODE__RESOURCE_EXHAUSTED, NULL);
  rc_close(&c2);
  rc_close(&c);
  stop_after(&d, "pushes_stop_at_the_ceiling");
}
END_TEST

/* A frame announced and not finished holds its buffer: it counts against
 * the ceiling (a second one that would cross it is refused and closed) and
 * is closed at --frame-timeout. */
START_TEST(unfinished_frames_count_and_expire) {
  const char *extra[] = {"--max-memory", "48M", "--frame-timeout", "1", "--hello-timeout",
                         "600", NULL};
  th_psd d;
  start(&d, extra);
  rc obs;
  open_tool(&obs, d.port);

  uint8_t head[PSW_HEADER_SIZE];
  rc_header(head, 30u << 20);
  static uint8_t part[1 << 20];
  memset(part, 0x08, sizeof(part));

  /* Authenticated connections (before its hello, a connection may send
   * frames of 64 KiB at most: see pre_hello_frames_are_small). */
  rc ra, rb;
  open_tool(&ra, d.port);
  int a = ra.fd;
  ck_assert_int_eq(rc_send_all(a, head, 16), 0);
  ck_assert_int_eq(rc_send_all(a, part, sizeof(part)), 0);
  /* Its buffer is reserved once the header is in: 30 MiB and more. */
  wait_stat_ge(&obs, "memory", "mem_input", 30.0 * 1024 * 1024);

  open_tool(&rb, d.port);
  int b = rb.fd;
  ck_assert_int_eq(rc_send_all(b, head, 16), 0);
  rc_send_all(b, part, sizeof(part)); /* fails once psd closes: fine */
  /* Refused: an Error frame saying why (unless the close's reset overtook
   * it), then closed. */
  Psd__Response *resp = rc_recv(&rb, NULL, NULL);
  if (resp != NULL) expect_error(resp, PSD__CODE__RESOURCE_EXHAUSTED, "memory ceiling");
  ck_assert(wait_closed(b));
  rc_close(&rb);
  wait_stat_ge(&obs, "limits", "closed_input", 1);
  ck_assert(th_log_contains(&d, "would cross the memory ceiling"));

  /* The first one is closed at its deadline, and its buffer given back. */
  ck_assert(wait_closed(a));
  rc_close(&ra);
  wait_stat_ge(&obs, "limits", "closed_frame", 1);
  char *j = stats_json(&obs);
  ck_assert_double_ge(json_num(j, "limits", "closed_input"), 1);
  ck_assert_double_lt(json_num(j, "memory", "mem_input"), 1024 * 1024);
  free(j);
  ck_assert(th_log_contains(&d, "--frame-timeout"));

  /* A slowloris: one byte at a time, never a whole header. */
  int s = th_connect(d.port);
  ck_assert_int_eq(rc_send_all(s, "PSD", 3), 0);
  ck_assert(wait_closed(s));
  close(s);
  wait_stat_ge(&obs, "limits", "closed_frame", 2);
  rc_close(&obs);
  stop_after(&d, "unfinished_frames_count_and_expire");
}
END_TEST

/* Before its hello is accepted a connection may send frames of 64 KiB at
 * most: a bigger one is refused from its header, and nothing is buffered
 * for it (no one holds the shard's memory without a token). */
START_TEST(pre_hello_frames_are_small) {
  th_psd d;
  start(&d, NULL);
  rc obs;
  open_tool(&obs, d.port);
  double input0 = stat_of(&obs, "memory", "mem_input");
  uint8_t head[PSW_HEADER_SIZE];
  rc_header(head, 65537);
  rc c;
  ck_assert_int_ge(rc_open(&c, d.port), 0);
  ck_assert_int_eq(rc_send_all(c.fd, head, sizeof(head)), 0);
  expect_error(rc_recv(&c, NULL, NULL), PSD__CODE__TOO_LARGE, "before its hello is accepted");
  ck_assert(wait_closed(c.fd));
  rc_close(&c);
  ck_assert_double_le(stat_of(&obs, "memory", "mem_input"), input0);
  /* One of 64 KiB is read (and refused as what it is, not for its size). */
  rc_header(head, 65536);
  static uint8_t junk[65536];
  ck_assert_int_ge(rc_open(&c, d.port), 0);
  ck_assert_int_eq(rc_send_all(c.fd, head, sizeof(head)), 0);
  ck_assert_int_eq(rc_send_all(c.fd, junk, sizeof(junk)), 0);
  expect_error(rc_recv(&c, NULL, NULL), PSD__CODE__BAD_FRAME, "not a valid");
  rc_close(&c);
  /* Once the hello is accepted, --max-frame holds. */
  open_tool(&c, d.port);
  float *g = calloc(1u << 20, sizeof(float));
  ps_tensor_spec s;
  ps_tensor_spec_init(&s, PS_INIT_ZEROS, PS_OPT_SGD);
  uint64_t shape[1] = {1u << 20};
  s.block_size = 1u << 20;
  create_ok(&c, "w4", shape, 1, &s);
  Psd__Response *resp = rc_push(&c, "w4", 0, 0, g, 1u << 20, 0, NULL, NULL);
  ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_BLOCK);
  psd__response__free_unpacked(resp, NULL);
  free(g);
  rc_close(&c);
  rc_close(&obs);
  stop_after(&d, "pre_hello_frames_are_small");
}
END_TEST

/* A block of a megabyte or more is made a slice per loop turn while the
 * request for it waits (tensor.h): what comes out is what making it at
 * once gives (the init function of each element; an Adam step on it), for
 * two clients asking for the same new block together too. */
START_TEST(big_blocks_made_over_turns) {
  th_psd d;
  start(&d, NULL);
  rc a, b;
  open_tool(&a, d.port);
  open_tool(&b, d.port);
  enum { BS = 1 << 20, NB = 3 };
  ps_tensor_spec s;
  ps_tensor_spec_init(&s, PS_INIT_NORMAL, PS_OPT_ADAM);
  s.init.seed = 11;
  s.block_size = BS;
  uint64_t shape[1] = {(uint64_t)BS * NB - 5}; /* a short last block */
  create_ok(&a, "grown", shape, 1, &s);
  float *want = malloc((size_t)BS * sizeof(float)), *state = calloc(2 * (size_t)BS, sizeof(float));
  float *g = malloc((size_t)BS * sizeof(float));
  for (int k = 0; k < BS; k++) g[k] = 1e-3f * (float)(k % 7) - 3e-3f;
  for (uint64_t blk = 0; blk < NB; blk++) {
    uint64_t first = blk * BS, n = blk + 1 < NB ? BS : shape[0] - first;
    psm_init_fill(&s.init, shape, 1, psm_hash_name("grown"), first, want, n);
    /* Two clients ask for the new block together (pipelined). */
    Psd__Request r1, r2;
    Psd__Pull p1, p2;
    rc_pull_init(&r1, &p1, "grown", blk);
    rc_pull_init(&r2, &p2, "grown", blk);
    ck_assert_int_eq(rc_post(&a, &r1, NULL, 0), 0);
    ck_assert_int_eq(rc_post(&b, &r2, NULL, 0), 0);
    rc *who[2] = {&a, &b};
    for (int i = 0; i < 2; i++) {
      float *v = NULL;
      size_t vl = 0;
      Psd__Response *resp = rc_recv(who[i], &v, &vl);
      ck_assert_ptr_nonnull(resp);
      ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_BLOCK);
      ck_assert_uint_eq(resp->block->version, 0);
      ck_assert_uint_eq(vl, n * sizeof(float));
      ck_assert_msg(memcmp(v, want, vl) == 0, "block %llu differs from its init",
                    (unsigned long long)blk);
      free(v);
      psd__response__free_unpacked(resp, NULL);
    }
  }
  /* A push-pull to a block never touched: made over turns, then one Adam
   * step, as the kernel gives it at once. */
  ps_tensor_spec s2 = s;
  create_ok(&a, "grown2", shape, 1, &s2);
  psm_init_fill(&s2.init, shape, 1, psm_hash_name("grown2"), 0, want, BS);
  psm_apply_range(&s2.optim, 1, want, state, g, 1.0f, BS, 0, BS);
  float *v = NULL;
  size_t vl = 0;
  Psd__Response *resp = rc_push(&a, "grown2", 0, 0, g, BS, 1, &v, &vl);
  ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_BLOCK);
  ck_assert_uint_eq(resp->block->version, 1);
  ck_assert_uint_eq(vl, (size_t)BS * sizeof(float));
  ck_assert_msg(memcmp(v, want, vl) == 0, "the first update of a block made over turns differs");
  free(v);
  psd__response__free_unpacked(resp, NULL);
  ck_assert_int_eq((int)stat_of(&a, NULL, "blocks_growing"), 0);
  ck_assert_int_eq((int)stat_of(&a, NULL, "blocks_touched"), NB + 1);
  free(want);
  free(state);
  free(g);
  rc_close(&a);
  rc_close(&b);
  stop_after(&d, "big_blocks_made_over_turns");
}
END_TEST

/* Clients that never read their replies: each is paused at --out-cap, the
 * daemon's memory stays bounded, and others are served meanwhile. */
START_TEST(non_readers_are_bounded) {
  const char *extra[] = {"--max-memory", "128M", "--out-cap", "1048576", NULL};
  th_psd d;
  start(&d, extra);
  rc c;
  open_tool(&c, d.port);
  ps_tensor_spec s;
  ps_tensor_spec_init(&s, PS_INIT_NORMAL, PS_OPT_SGD);
  s.block_size = 1u << 20;
  uint64_t shape[1] = {1u << 20};
  create_ok(&c, "w", shape, 1, &s);

  enum { NR = 6, NPULL = 300 };
  rc r[NR];
  for (int i = 0; i < NR; i++) {
    open_tool(&r[i], d.port);
    ck_assert_int_eq(rc_send_pulls(&r[i], "w", NPULL, 10, 0), NPULL);
  }
  /* Each is paused with its requests still buffered. */
  wait_stat_ge(&c, "limits", "paused", NR);
  char *j = stats_json(&c);
  double pulls = json_num(j, NULL, "pulls");
  ck_assert_double_lt(pulls, NR * NPULL / 4); /* most were never run */
  ck_assert_double_le(json_num(j, "memory", "used"), 128.0 * 1024 * 1024);
  /* Per connection: the cap, one reply past it, gathered replies. */
  ck_assert_double_le(json_num(j, "memory", "mem_output"), NR * (1.0 + 4.0 + 1.0) * 1024 * 1024);
  free(j);
  ck_assert_int_lt(th_proc_kb(d.pid, "VmRSS"), 128 * 1024 + 32 * 1024);
  /* Someone else is served meanwhile. */
  float *v;
  size_t vl;
  Psd__Response *resp = rc_pull(&c, "w", 0, &v, &vl);
  ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_BLOCK);
  ck_assert_uint_eq(vl, 4u << 20);
  free(v);
  psd__response__free_unpacked(resp, NULL);
  /* A non-reader that reads at last gets every reply, in order. */
  for (int k = 0; k < NPULL; k++) {
    resp = rc_recv(&r[0], &v, &vl);
    ck_assert_ptr_nonnull(resp);
    ck_assert_uint_eq(resp->id, (uint64_t)k + 10);
    ck_assert_uint_eq(vl, 4u << 20);
    free(v);
    psd__response__free_unpacked(resp, NULL);
  }
  for (int i = 0; i < NR; i++) rc_close(&r[i]);
  rc_close(&c);
  stop_after(&d, "non_readers_are_bounded");
}
END_TEST

/* 2000 pipelined pulls of a 16 MiB block from a client that never reads:
 * bounded by --out-cap (not run while its output is over it); when it
 * resets, the requests it queued are dropped, not run. */
START_TEST(pipelined_big_pulls_then_reset) {
  const char *extra[] = {"--max-memory", "256M", NULL};
  th_psd d;
  start(&d, extra);
  rc c;
  open_tool(&c, d.port);
  ps_tensor_spec s;
  ps_tensor_spec_init(&s, PS_INIT_ZEROS, PS_OPT_SGD);
  s.block_size = 4u << 20;
  uint64_t shape[1] = {4u << 20};
  create_ok(&c, "w16", shape, 1, &s);

  rc bad;
  open_tool(&bad, d.port);
  int small = 4096;
  setsockopt(bad.fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
  enum { NPULL = 2000 };
  /* In one write: the shard pauses after a few of them with the rest
   * buffered (rc_post_many), so the reset below meets queued requests. */
  Psd__Request q = PSD__REQUEST__INIT;
  Psd__Pull p = PSD__PULL__INIT;
  p.name = "w16";
  q.body_case = PSD__REQUEST__BODY_PULL;
  q.pull = &p;
  ck_assert_int_eq(rc_post_many(&bad, &q, NPULL), 0);
  wait_stat_ge(&c, "limits", "paused", 1);
  double pulls = stat_of(&c, NULL, "pulls");
  /* The default --out-cap is 64 MiB: a handful of 16 MiB replies. */
  ck_assert_double_lt(pulls, 16);
  ck_assert_int_lt(th_proc_kb(d.pid, "VmRSS"), 256 * 1024 + 32 * 1024);
  ck_assert(rc_ping(&c));

  /* Reset (RST, not FIN): its queued pulls must not run. */
  rc_reset(&bad);
  wait_stat_ge(&c, "limits", "dropped_requests", 1);
  char *j = stats_json(&c);
  ck_assert_double_eq(json_num(j, NULL, "pulls"), pulls);
  /* Those psd had buffered are counted; the rest died in the kernel. */
  ck_assert_double_ge(json_num(j, "limits", "dropped_requests"), 1);
  ck_assert_double_le(json_num(j, "limits", "dropped_requests") + pulls, NPULL);
  ck_assert_double_eq(json_num(j, NULL, "connections"), 1);
  free(j);
  /* Its queued replies and receive buffer are given back. */
  int back = 0;
  for (int i = 0; i < 600 && !back; i++) {
    j = stats_json(&c);
    back = json_num(j, "memory", "mem_output") < 1024 * 1024 &&
           json_num(j, "memory", "mem_input") < 1024 * 1024 && json_num(j, "memory", "mem_held") == 0;
    free(j);
    if (!back) sleep_ms(10);
  }
  ck_assert(back);
  rc_close(&c);
  stop_after(&d, "pipelined_big_pulls_then_reset");
}
END_TEST

/* A shard that waits long for silent workers (--worker-timeout 600), and
 * both workers of a 2-worker job with `staleness` connected to it. */
static void start_pair(th_psd *d, int staleness, rc *w0, rc *w1) {
  const char *extra[] = {"--worker-timeout", "600", NULL};
  start(d, extra);
  open_as(w0, d->port, 0, 2, staleness);
  open_as(w1, d->port, 1, 2, staleness);
}

/* SSP: 2000 pulls held for a slow worker are released when it advances
 * (answered a slice per loop turn, every one of them); 2000 held by a peer
 * that resets are dropped with it. */
START_TEST(held_pulls_released_and_dropped) {
  th_psd d;
  rc fast, slow;
  start_pair(&d, 1, &fast, &slow);
  ps_tensor_spec s;
  ps_tensor_spec_init(&s, PS_INIT_NORMAL, PS_OPT_SGD);
  uint64_t shape[1] = {1024};
  create_ok(&fast, "w", shape, 1, &s);
  enum { N = 2000 };
  clock_ok(&fast, 5);
  /* The slow worker is at clock 0: held. */
  ck_assert_int_eq(rc_send_pulls(&fast, "w", N, 1000, 5), N);
  wait_stat_ge(&slow, NULL, "held_pulls", N);
  ck_assert_double_ge(stat_of(&slow, "memory", "mem_held"), N * 1024.0);
  /* The slow worker reaches clock 4: every pull goes. */
  clock_ok(&slow, 4);
  for (int k = 0; k < N; k++) {
    float *v;
    size_t vl;
    Psd__Response *resp = rc_recv(&fast, &v, &vl);
    ck_assert_ptr_nonnull(resp);
    ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_BLOCK);
    ck_assert_uint_eq(vl, 4096);
    free(v);
    psd__response__free_unpacked(resp, NULL);
  }
  ck_assert_double_eq(stat_of(&fast, "memory", "mem_held"), 0);
  /* Held again, then the peer resets: its held pulls go with it. */
  ck_assert_int_eq(rc_send_pulls(&fast, "w", N, 5000, 50), N);
  wait_stat_ge(&slow, NULL, "held_pulls", 2.0 * N);
  rc_reset(&fast);
  wait_stat_zero(&slow, "memory", "mem_held");
  ck_assert_double_eq(stat_of(&slow, NULL, "pulls"), N);
  rc_close(&slow);
  stop_after(&d, "held_pulls_released_and_dropped");
}
END_TEST

/* Sync: a worker holding 20000 pending pushes (one per block, waiting for
 * the other worker) resets; its held replies are dropped over several
 * turns, the contributions stay for its resends. */
START_TEST(dead_worker_with_many_held_pushes) {
  th_psd d;
  rc w0, w1;
  start_pair(&d, 0, &w0, &w1);
  ps_tensor_spec s;
  ps_tensor_spec_init(&s, PS_INIT_ZEROS, PS_OPT_SGD);
  s.block_size = 1;
  enum { N = 20000 };
  uint64_t shape[1] = {N};
  create_ok(&w1, "w", shape, 1, &s);
  float g = 0.5f;
  for (int k = 0; k < N; k++) {
    Psd__Request r = PSD__REQUEST__INIT;
    Psd__Push p = PSD__PUSH__INIT;
    p.name = "w";
    p.block = (uint64_t)k;
    r.id = (uint64_t)k + 1;
    r.body_case = PSD__REQUEST__BODY_PUSH;
    r.push = &p;
    ck_assert_int_eq(rc_send(&w0, &r, &g, sizeof(g)), 0);
  }
  wait_stat_ge(&w1, NULL, "rounds_pending", N);
  ck_assert_double_ge(stat_of(&w1, "memory", "mem_held"), N * 1024.0);
  rc_reset(&w0);
  wait_stat_zero(&w1, "memory", "mem_held");
  ck_assert_double_eq(stat_of(&w1, NULL, "rounds_pending"), N);
  ck_assert_double_eq(stat_of(&w1, NULL, "connections"), 1);
  rc_close(&w1);
  stop_after(&d, "dead_worker_with_many_held_pushes");
}
END_TEST

/* Past --max-clients a new connection gets one Error frame and is closed. */
START_TEST(max_clients_refuses) {
  const char *extra[] = {"--max-clients", "3", NULL};
  th_psd d;
  start(&d, extra);
  rc c;
  open_tool(&c, d.port);
  int a = th_connect(d.port), b = th_connect(d.port);
  ck_assert_int_ge(a, 0);
  ck_assert_int_ge(b, 0);
  wait_stat_ge(&c, NULL, "connections", 3);
  rc x;
  rc_open(&x, d.port);
  Psd__Response *resp = rc_recv(&x, NULL, NULL);
  expect_error(resp, PSD__CODE__RESOURCE_EXHAUSTED, "--max-clients");
  ck_assert(wait_closed(x.fd));
  rc_close(&x);
  ck_assert_double_ge(stat_of(&c, "limits", "clients_refused"), 1);
  /* Room again once one leaves. */
  close(a);
  int ok = 0;
  for (int i = 0; i < 600 && !ok; i++) {
    if (stat_of(&c, NULL, "connections") <= 2) ok = 1;
    else sleep_ms(10);
  }
  ck_assert(ok);
  rc y;
  open_tool(&y, d.port);
  ck_assert(rc_ping(&y));
  rc_close(&y);
  close(b);
  rc_close(&c);
  stop_after(&d, "max_clients_refuses");
}
END_TEST

/* Out of file descriptors (the daemon runs with RLIMIT_NOFILE 64): more
 * connections than that are shed, logged, and the listener goes on. */
START_TEST(emfile_does_not_wedge_the_listener) {
  const char *extra[] = {"--max-clients", "1000", NULL};
  struct rlimit old, low;
  ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &old), 0);
  low = old;
  low.rlim_cur = 64; /* inherited by the daemon, as under prlimit --nofile=64 */
  ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &low), 0);
  th_psd d;
  int started = th_psd_start(&d, 0, extra);
  ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &old), 0);
  ck_assert_int_eq(started, 0);
  enum { N = 150 };
  int fds[N];
  for (int i = 0; i < N; i++) {
    fds[i] = th_connect(d.port);
    ck_assert_int_ge(fds[i], 0);
  }
  /* Bounded wait for the daemon to have said so. */
  int logged = 0;
  for (int i = 0; i < 6000 && !logged; i++) {
    logged = th_log_contains(&d, "out of file descriptors");
    if (!logged) sleep_ms(10);
  }
  ck_assert_msg(logged, "no accept error logged");
  for (int i = 0; i < N; i++) close(fds[i]);
  /* A new client is served once descriptors are free again. */
  int ok = 0;
  for (int i = 0; i < 600 && !ok; i++) {
    rc c;
    if (rc_open(&c, d.port) >= 0) {
      /* Until descriptors are free, a connection gets an Error (id 0). */
      Psd__Request r = PSD__REQUEST__INIT;
      Psd__Ping p = PSD__PING__INIT;
      r.id = 77;
      r.body_case = PSD__REQUEST__BODY_PING;
      r.ping = &p;
      Psd__Response *resp = rc_send(&c, &r, NULL, 0) == 0 ? rc_recv(&c, NULL, NULL) : NULL;
      ok = resp != NULL && resp->id == 77 && resp->body_case == PSD__RESPONSE__BODY_ACK;
      if (resp) psd__response__free_unpacked(resp, NULL);
      if (ok) {
        rc_hello_tool(&c);
        ck_assert_double_ge(stat_of(&c, "limits", "accept_errors"), 1);
      }
    }
    rc_close(&c);
    if (!ok) sleep_ms(100);
  }
  ck_assert(ok);
  stop_after(&d, "emfile_does_not_wedge_the_listener");
}
END_TEST

/* The default --max-clients is lowered to fit the descriptor limit. */
START_TEST(max_clients_fits_the_fd_limit) {
  struct rlimit old, low;
  ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &old), 0);
  low = old;
  low.rlim_cur = 256;
  ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &low), 0);
  th_psd d;
  int started = th_psd_start(&d, 0, NULL);
  ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &old), 0);
  ck_assert_int_eq(started, 0);
  ck_assert(th_log_contains(&d, "max-clients lowered from 10000 to 224"));
  rc c;
  open_tool(&c, d.port);
  ck_assert_int_eq((int)stat_of(&c, "limits", "max_clients"), 224);
  rc_close(&c);
  stop_after(&d, "max_clients_fits_the_fd_limit");
}
END_TEST

/* No hello within --hello-timeout: closed. A tool silent for
 * --idle-timeout: closed. A worker is never closed for idleness. */
START_TEST(hello_and_idle_deadlines) {
  const char *extra[] = {"--hello-timeout", "0.5", "--idle-timeout", "1", NULL};
  th_psd d;
  start(&d, extra);
  int silent = th_connect(d.port);
  ck_assert(wait_closed(silent));
  close(silent);
  rc idle;
  open_tool(&idle, d.port);
  ck_assert(wait_closed(idle.fd));
  rc_close(&idle);
  ck_assert(th_log_contains(&d, "no hello within"));
  ck_assert(th_log_contains(&d, "--idle-timeout"));
  rc c;
  open_tool(&c, d.port);
  char *j = stats_json(&c);
  ck_assert_double_ge(json_num(j, "limits", "closed_hello"), 1);
  ck_assert_double_ge(json_num(j, "limits", "closed_idle"), 1);
  free(j);
  rc_close(&c);
  stop_after(&d, "hello_and_idle_deadlines");
}
END_TEST

/* rc_send_patched, asserted: strings holding NUL or invalid UTF-8 that
 * protobuf-c's packer (strlen) would not send. */
static void send_patched(rc *c, Psd__Request *r, const char *mark, const char *bytes, size_t n) {
  ck_assert_int_eq(rc_send_patched(c, r, mark, bytes, n), 0);
}

START_TEST(strings_with_nul_or_bad_utf8_refused) {
  th_psd d;
  start(&d, NULL);
  rc c;
  open_tool(&c, d.port);
  ps_tensor_spec s;
  ps_tensor_spec_init(&s, PS_INIT_ZEROS, PS_OPT_SGD);
  uint64_t shape[1] = {8};
  create_ok(&c, "w", shape, 1, &s);

  /* lookup "w\0EVIL" must not answer for "w". */
  Psd__Request r = PSD__REQUEST__INIT;
  Psd__Lookup lk = PSD__LOOKUP__INIT;
  lk.name = "wXEVIL";
  r.body_case = PSD__REQUEST__BODY_LOOKUP;
  r.lookup = &lk;
  send_patched(&c, &r, "wXEVIL", "w\0EVIL", 6);
  expect_error(rc_recv(&c, NULL, NULL), PSD__CODE__BAD_REQUEST, "NUL");

  /* init "zeros\0junk" is not zeros. */
  pmsg_spec_pb pb;
  pmsg_spec_to_pb(&pb, &s, shape, 1);
  pb.init.kind = "zerosXjunk";
  Psd__Create cr = PSD__CREATE__INIT;
  cr.name = "w2";
  cr.spec = &pb.ts;
  Psd__Request r2 = PSD__REQUEST__INIT;
  r2.body_case = PSD__REQUEST__BODY_CREATE;
  r2.create = &cr;
  send_patched(&c, &r2, "zerosXjunk", "zeros\0junk", 10);
  expect_error(rc_recv(&c, NULL, NULL), PSD__CODE__BAD_REQUEST, "InitSpec.kind");

  /* A name that is not UTF-8. */
  cr.name = "bad-XX";
  pmsg_spec_to_pb(&pb, &s, shape, 1);
  send_patched(&c, &r2, "bad-XX", "bad-\xff\xfe", 6);
  expect_error(rc_recv(&c, NULL, NULL), PSD__CODE__BAD_REQUEST, "UTF-8");
  /* An overlong encoding of '/' is not UTF-8 either. */
  lk.name = "aXXb";
  send_patched(&c, &r, "aXXb", "a\xc0\xafz", 4);
  expect_error(rc_recv(&c, NULL, NULL), PSD__CODE__BAD_REQUEST, "UTF-8");

  /* Nothing was created, and the connection is still usable. */
  Psd__Request l2 = PSD__REQUEST__INIT;
  Psd__Lookup lk2 = PSD__LOOKUP__INIT;
  lk2.name = "w2";
  l2.body_case = PSD__REQUEST__BODY_LOOKUP;
  l2.lookup = &lk2;
  expect_error(rc_call(&c, &l2, NULL, 0, NULL, NULL), PSD__CODE__NOT_FOUND, NULL);
  ck_assert_int_eq((int)stat_of(&c, NULL, "tensors"), 1);
  /* Valid UTF-8 beyond ASCII is fine where names allow it. */
  create_ok(&c, "poids-\xc3\xa9t\xc3\xa9", shape, 1, &s);
  rc_close(&c);
  stop_after(&d, "strings_with_nul_or_bad_utf8_refused");
}
END_TEST

/* A lane is granted within the ceiling only. */
START_TEST(lane_within_the_ceiling) {
  const char *extra[] = {"--max-memory", "16M", NULL};
  th_psd d;
  start(&d, extra);
  rc c;
  rc_open(&c, d.port);
  Psd__Response *resp = rc_hello_lane(&c, 64u << 20);
  ck_assert_ptr_nonnull(resp);
  ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_HELLO);
  ck_assert_ptr_null(resp->hello->lane);
  psd__response__free_unpacked(resp, NULL);
  ck_assert_int_eq((int)stat_of(&c, "memory", "mem_lanes"), 0);
  rc_close(&c);
  rc c2;
  rc_open(&c2, d.port);
  resp = rc_hello_lane(&c2, 1u << 20);
  ck_assert_ptr_nonnull(resp->hello->lane);
  psd__response__free_unpacked(resp, NULL);
  ck_assert_double_ge(stat_of(&c2, "memory", "mem_lanes"), 1u << 20);
  rc_close(&c2);
  stop_after(&d, "lane_within_the_ceiling");
}
END_TEST

/* stats reports the loop's turns: the worst stall and a histogram whose
 * buckets add up to the turns. */
START_TEST(loop_stalls_reported) {
  th_psd d;
  start(&d, NULL);
  rc c;
  open_tool(&c, d.port);
  ck_assert(rc_ping(&c));
  char *j = stats_json(&c);
  double turns = json_num(j, "loop", "turns");
  ck_assert_double_gt(turns, 0);
  ck_assert_double_ge(json_num(j, "loop", "worst_stall_ms"), 0);
  static const char *const b[] = {"<1", "<2", "<5", "<10", "<20", "<50", "<100", "<1000",
                                  ">=1000"};
  double sum = 0;
  for (int i = 0; i < 9; i++) sum += json_num(j, "stall_ms", b[i]);
  ck_assert_double_eq(sum, turns);
  ck_assert(strstr(j, "\"memory\":{\"limit\":") != NULL);
  free(j);
  rc_close(&c);
  stop_after(&d, "loop_stalls_reported");
}
END_TEST

/* LIMITS_TEST=name runs that test alone (for profiling). */
#define ADD(t)                                          \
  do {                                                  \
    const char *only = getenv("LIMITS_TEST");           \
    if (only == NULL || strcmp(only, #t) == 0) tcase_add_test(tc, t); \
  } while (0)

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  Suite *s = suite_create("limits");
  TCase *tc = tcase_create("limits");
  tcase_set_timeout(tc, 240);
  ADD(create_costs_o1);
  ADD(pushes_stop_at_the_ceiling);
  ADD(unfinished_frames_count_and_expire);
  ADD(pre_hello_frames_are_small);
  ADD(big_blocks_made_over_turns);
  ADD(non_readers_are_bounded);
  ADD(pipelined_big_pulls_then_reset);
  ADD(held_pulls_released_and_dropped);
  ADD(dead_worker_with_many_held_pushes);
  ADD(max_clients_refuses);
  ADD(emfile_does_not_wedge_the_listener);
  ADD(max_clients_fits_the_fd_limit);
  ADD(hello_and_idle_deadlines);
  ADD(strings_with_nul_or_bad_utf8_refused);
  ADD(lane_within_the_ceiling);
  ADD(loop_stalls_reported);
  suite_add_tcase(s, tc);
  return check_run(s);
}
