/*
 * test_auth.c -- trust: real shards on loopback, driven through raw sockets
 * (so that proofs can be forged, replayed or left out on purpose) and
 * through the library with token files.
 *
 * What is proven: a good proof is accepted for each role; a wrong token, a
 * missing proof and a proof replayed from another connection are refused
 * with UNAUTHENTICATED and the connection closed; the limiter refuses an
 * address after repeated failures (and only that address); each role's
 * forbidden requests get PERMISSION_DENIED and change nothing; a shard
 * without tokens will not listen beyond loopback unless --insecure; the
 * server list cannot be set by a worker and stats stays valid JSON; a live
 * rank cannot be taken by a second session, and a session that no longer
 * holds a rank cannot speak for it; sessions resume after a reconnect and a
 * shard restart with exactly-once intact; a worker id cannot be chosen; a
 * tool's push in a sync job is refused; --max-workers; the library with
 * token files.
 *
 * Every daemon is started for one test (the limiter counts failures per
 * address: tests must not share them). Nothing waits on a clock to decide an
 * outcome: a test that needs an event waits for its log line or its reply.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "auth.h"
#include "harness.h"
#include "msg.h"
#include "placement.h"
#include "psd.h"
#include "rawcheck.h"
#include "rawclient.h"
#include "wire.h"

#include "check_main.h"

/* ---- token files ------------------------------------------------------------- */

static char tdir[128];
static char tpath[PSA_NROLES][256];
static const char *const tokval[PSA_NROLES] = {
    "reader-token-0123456789abcdef", "worker-token-0123456789abcdef",
    "admin-token-0123456789abcdef"};

static void write_file(const char *path, const char *content, mode_t mode) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(write(fd, content, strlen(content)), (ssize_t)strlen(content));
  close(fd);
  ck_assert_int_eq(chmod(path, mode), 0);
}

static void make_tokens(void) {
  /* In the harness's directory: removed when the program passes. */
  snprintf(tdir, sizeof(tdir), "%s/auth-XXXXXX", th_tmpdir());
  ck_assert_ptr_nonnull(mkdtemp(tdir));
  for (int r = 0; r < PSA_NROLES; r++) {
    snprintf(tpath[r], sizeof(tpath[r]), "%s/%s.token", tdir, psa_role_name(r));
    char content[128];
    snprintf(content, sizeof(content), "%s\n", tokval[r]); /* a final newline is dropped */
    write_file(tpath[r], content, 0600);
  }
}

/* Start a shard with every role's token, plus extra arguments. */
static void start_with_tokens(th_psd *p, const char *const *more) {
  char a[PSA_NROLES][300];
  const char *argv[32];
  int n = 0;
  for (int r = 0; r < PSA_NROLES; r++) {
    snprintf(a[r], sizeof(a[r]), "%s=%s", psa_role_name(r), tpath[r]);
    argv[n++] = "--token-file";
    argv[n++] = a[r];
  }
  for (int i = 0; more && more[i] && n < 30; i++) argv[n++] = more[i];
  argv[n] = NULL;
  ck_assert_int_eq(th_psd_start(p, 0, argv), 0);
}

static void stop(th_psd *p) {
  int st = th_psd_stop(p, SIGTERM, 120000); /* a bound against a hang only */
  ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* ---- the raw protocol client (tests/rawclient.h), asserted -------------------------- */

/* Open a connection (from source address `from`, NULL: 127.0.0.1) and read
 * the challenge. Returns the first frame when it is not a challenge (an
 * Error), else NULL. */
static Psd__Response *rc_open_at(rc *c, int port, const char *from) {
  ck_assert_int_ge(rc_open_from(c, port, from), 0);
  Psd__Response *other;
  if (rc_challenge(c, &other) == 0) return NULL;
  ck_assert_ptr_nonnull(other);
  return other;
}

static void open_rc(rc *c, int port) { ck_assert_ptr_null(rc_open_at(c, port, NULL)); }

/* How a hello is built: rc_hello_args, the token of `role` proven. */
typedef rc_hello_args hello_args;

static hello_args H(int role, int rank) {
  hello_args a = rc_hello_defaults();
  a.identity = "test_auth";
  a.role = role;
  a.token = role >= 0 ? tokval[role] : NULL;
  a.rank = rank;
  a.nw = 2;
  return a;
}

/* A hello that must be accepted; returns the role granted and keeps the
 * session in c. */
static void rc_hello_ok(rc *c, const hello_args *a, const char *want_role) {
  Psd__Response *resp = rc_hello(c, a);
  expect_body(resp, PSD__RESPONSE__BODY_HELLO, "hello refused");
  ck_assert_str_eq(resp->hello->role, want_role);
  if (resp->hello->has_session_secret)
    ck_assert_uint_eq(resp->hello->session_secret.len, PSA_SECRET);
  psd__response__free_unpacked(resp, NULL);
}

/* Open a connection and hello as `role` (H's rank), which must be granted
 * as want_role. */
static void open_as(rc *c, int port, int role, int rank, const char *want_role) {
  open_rc(c, port);
  hello_args a = H(role, rank);
  rc_hello_ok(c, &a, want_role);
}

static Psd__Response *create_n(rc *c, const char *name, uint64_t n) {
  ps_tensor_spec s;
  ps_tensor_spec_init(&s, PS_INIT_ZEROS, PS_OPT_SGD);
  s.optim.lr = 1.0;
  uint64_t shape[1] = {n};
  return rc_create(c, name, shape, 1, &s);
}

static void rc_create_ok(rc *c, const char *name, uint64_t n) {
  Psd__Response *resp = create_n(c, name, n);
  expect_body(resp, PSD__RESPONSE__BODY_INFO, "create refused");
  psd__response__free_unpacked(resp, NULL);
}

/* An admin creates tensor `name` (and so sets the shard's server list:
 * workers may not). */
static void admin_create(int port, const char *name, uint64_t n) {
  rc adm;
  open_as(&adm, port, PSA_ADMIN, -1, "admin");
  rc_create_ok(&adm, name, n);
  rc_close(&adm);
}

static Psd__Response *push_at(rc *c, const char *name, uint64_t seq, const float *g, size_t n,
                              uint64_t clock) {
  Psd__Request r;
  Psd__Push p;
  rc_push_init(&r, &p, name, 0, seq);
  if (clock) p.has_clock = 1, p.clock = clock;
  return rc_call(c, &r, g, n * sizeof(float), NULL, NULL);
}

/* The block's version after a push that must be applied (or answered as a
 * duplicate when dup). */
static uint64_t push_ok(rc *c, const char *name, uint64_t seq, int dup) {
  float g[4] = {1, 1, 1, 1};
  Psd__Response *resp = push_at(c, name, seq, g, 4, 0);
  expect_body(resp, PSD__RESPONSE__BODY_BLOCK, "push refused");
  ck_assert_int_eq(resp->block->has_duplicate && resp->block->duplicate, dup);
  uint64_t v = resp->block->version;
  psd__response__free_unpacked(resp, NULL);
  return v;
}

static uint64_t pull_version(rc *c, const char *name) {
  Psd__Response *resp = rc_pull(c, name, 0, NULL, NULL);
  ck_assert_ptr_nonnull(resp);
  ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_BLOCK);
  uint64_t v = resp->block->version;
  psd__response__free_unpacked(resp, NULL);
  return v;
}

/* Requests without fields of their own; clock and heartbeat say 2^64-1,
 * barrier generation 1. */
static Psd__Response *simple(rc *c, Psd__Request__BodyCase bc) {
  uint64_t arg = bc == PSD__REQUEST__BODY_BARRIER ? 1 : UINT64_MAX;
  return rc_simple(c, bc, arg);
}

static char *stats_of(rc *c) {
  char *json = rc_stats(c);
  ck_assert_ptr_nonnull(json);
  return json;
}

/* ---- authentication ------------------------------------------------------------ */

START_TEST(good_proof_accepted_per_role) {
  th_psd d;
  start_with_tokens(&d, NULL);
  for (int role = 0; role < PSA_NROLES; role++) {
    rc c;
    open_rc(&c, d.port);
    hello_args a = H(role, -1);
    Psd__Response *resp = rc_hello(&c, &a);
    ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_HELLO);
    ck_assert_str_eq(resp->hello->role, psa_role_name(role));
    /* Readers cannot push: they get no session. The others get an id and a
     * 32-byte secret. */
    ck_assert_int_eq(resp->hello->has_session_id, role != PSA_READER);
    ck_assert_int_eq(resp->hello->has_session_secret, role != PSA_READER);
    if (role != PSA_READER) {
      ck_assert_uint_ne(resp->hello->session_id, 0);
      ck_assert_uint_eq(resp->hello->session_secret.len, PSA_SECRET);
    }
    psd__response__free_unpacked(resp, NULL);
    /* Authenticated: served. */
    resp = simple(&c, PSD__REQUEST__BODY_LIST);
    ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_LIST);
    psd__response__free_unpacked(resp, NULL);
    rc_close(&c);
  }
  /* A worker token with a rank: the default role of a hello with a rank. */
  rc w;
  open_rc(&w, d.port);
  hello_args a = H(-1, 0);
  a.token = tokval[PSA_WORKER];
  rc_hello_ok(&w, &a, "worker");
  rc_close(&w);
  stop(&d);
}
END_TEST

START_TEST(bad_proofs_refused_and_closed) {
  th_psd d;
  start_with_tokens(&d, NULL);
  rc c;

  /* The reader's token offered as the admin's. */
  open_rc(&c, d.port);
  hello_args a = H(PSA_ADMIN, -1);
  a.token = tokval[PSA_READER];
  expect_error(rc_hello(&c, &a), PSD__CODE__UNAUTHENTICATED, "role admin refused");
  expect_closed(&c);
  rc_close(&c);
  ck_assert(th_log_contains(&d, "authentication of 127.0.0.1:"));

  /* No proof at all. */
  open_rc(&c, d.port);
  a = H(PSA_WORKER, -1);
  a.token = NULL;
  expect_error(rc_hello(&c, &a), PSD__CODE__UNAUTHENTICATED, "no proof");
  expect_closed(&c);
  rc_close(&c);

  /* A good proof made for another connection (its nonce) and replayed. */
  rc first, second;
  open_rc(&first, d.port);
  open_rc(&second, d.port);
  ck_assert(memcmp(first.nonce, second.nonce, PSA_NONCE) != 0);
  a = H(PSA_ADMIN, -1);
  a.nonce = first.nonce;
  expect_error(rc_hello(&second, &a), PSD__CODE__UNAUTHENTICATED, "wrong proof");
  expect_closed(&second);
  rc_close(&second);
  /* The same proof on its own connection is good. */
  rc_hello_ok(&first, &a, "admin");
  rc_close(&first);

  /* An unknown role. */
  open_rc(&c, d.port);
  Psd__Request r = PSD__REQUEST__INIT;
  Psd__Hello h = PSD__HELLO__INIT;
  h.protocol = PS_PROTOCOL_VERSION;
  h.role = "root";
  r.body_case = PSD__REQUEST__BODY_HELLO;
  r.hello = &h;
  expect_error(rc_call(&c, &r, NULL, 0, NULL, NULL), PSD__CODE__UNAUTHENTICATED, "unknown role");
  expect_closed(&c);
  rc_close(&c);
  stop(&d);
}
END_TEST

/* Nothing but the hello and ping is served before a hello is accepted. */
START_TEST(nothing_served_before_hello) {
  th_psd d;
  start_with_tokens(&d, NULL);
  rc c;
  open_rc(&c, d.port);
  Psd__Response *resp = simple(&c, PSD__REQUEST__BODY_PING);
  ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_ACK);
  psd__response__free_unpacked(resp, NULL);
  expect_error(simple(&c, PSD__REQUEST__BODY_LIST), PSD__CODE__NOT_READY, "hello");
  expect_error(simple(&c, PSD__REQUEST__BODY_STATS), PSD__CODE__NOT_READY, "hello");
  expect_error(create_n(&c, "t", 4), PSD__CODE__NOT_READY, "hello");
  rc_close(&c);
  stop(&d);
}
END_TEST

START_TEST(failures_rate_limited_per_address) {
  th_psd d;
  start_with_tokens(&d, NULL);
  /* 127.0.0.2 fails AUTH_FAIL_LIMIT (5) times... */
  for (int i = 0; i < 5; i++) {
    rc c;
    ck_assert_ptr_null(rc_open_at(&c, d.port, "127.0.0.2"));
    hello_args a = H(PSA_WORKER, -1);
    a.token = "not-the-worker-token-at-all";
    expect_error(rc_hello(&c, &a), PSD__CODE__UNAUTHENTICATED, "wrong proof");
    expect_closed(&c);
    rc_close(&c);
  }
  ck_assert(th_log_contains(&d, "5 failed authentications from 127.0.0.2"));
  /* ...so its next connection gets one Error instead of a challenge, and is
   * closed, whatever it would have sent. */
  rc c;
  Psd__Response *first = rc_open_at(&c, d.port, "127.0.0.2");
  expect_error(first, PSD__CODE__UNAUTHENTICATED, "too many failed authentications");
  expect_closed(&c);
  rc_close(&c);
  /* Another address is not affected. */
  rc ok;
  ck_assert_ptr_null(rc_open_at(&ok, d.port, "127.0.0.3"));
  hello_args a = H(PSA_READER, -1);
  rc_hello_ok(&ok, &a, "reader");
  char *json = stats_of(&ok);
  ck_assert_ptr_nonnull(strstr(json, "\"addresses_refused\":1"));
  free(json);
  rc_close(&ok);
  stop(&d);
}
END_TEST

/* ---- roles ----------------------------------------------------------------------- */

START_TEST(forbidden_requests_per_role) {
  char dir[256];
  snprintf(dir, sizeof(dir), "%s/data", tdir);
  const char *more[] = {"--data-dir", dir, NULL};
  th_psd d;
  start_with_tokens(&d, more);
  rc admin, worker, reader;
  open_as(&admin, d.port, PSA_ADMIN, -1, "admin");
  rc_create_ok(&admin, "w", 4);

  open_as(&reader, d.port, PSA_READER, -1, "reader");
  float g[4] = {1, 1, 1, 1};
  expect_error(push_at(&reader, "w", 1, g, 4, 0), PSD__CODE__PERMISSION_DENIED,
               "role reader may not push");
  expect_error(create_n(&reader, "r", 4), PSD__CODE__PERMISSION_DENIED,
               "role reader may not create");
  expect_error(simple(&reader, PSD__REQUEST__BODY_CLOCK), PSD__CODE__PERMISSION_DENIED,
               "role reader may not clock");
  expect_error(simple(&reader, PSD__REQUEST__BODY_HEARTBEAT), PSD__CODE__PERMISSION_DENIED,
               "role reader may not heartbeat");
  expect_error(simple(&reader, PSD__REQUEST__BODY_BARRIER), PSD__CODE__PERMISSION_DENIED,
               "role reader may not barrier");
  expect_error(simple(&reader, PSD__REQUEST__BODY_CHECKPOINT), PSD__CODE__PERMISSION_DENIED,
               "role reader may not checkpoint");
  /* A reader does not join the job; a refused hello leaves the first. */
  rc r2;
  open_rc(&r2, d.port);
  hello_args a = H(PSA_READER, 0);
  expect_error(rc_hello(&r2, &a), PSD__CODE__PERMISSION_DENIED,
               "role reader may not join the job as worker rank 0");
  rc_close(&r2);
  /* What a reader may do. */
  ck_assert_uint_eq(pull_version(&reader, "w"), 0);

  open_as(&worker, d.port, PSA_WORKER, -1, "worker");
  expect_error(simple(&worker, PSD__REQUEST__BODY_CHECKPOINT), PSD__CODE__PERMISSION_DENIED,
               "role worker may not checkpoint");
  /* A worker creates its own tensors (idempotently) and pushes. */
  rc_create_ok(&worker, "w", 4);
  rc_create_ok(&worker, "w2", 4);
  ck_assert_uint_eq(push_ok(&worker, "w", 1, 0), 1);

  /* Nothing the refused requests asked for happened: the reader's push and
   * create, the worker's checkpoint. */
  Psd__Request r = PSD__REQUEST__INIT;
  Psd__Lookup lk = PSD__LOOKUP__INIT;
  lk.name = "r";
  r.body_case = PSD__REQUEST__BODY_LOOKUP;
  r.lookup = &lk;
  expect_error(rc_call(&reader, &r, NULL, 0, NULL, NULL), PSD__CODE__NOT_FOUND, "'r'");
  ck_assert_uint_eq(pull_version(&reader, "w"), 1);
  char *json = stats_of(&reader);
  ck_assert_ptr_nonnull(strstr(json, "\"written\":0"));
  ck_assert_ptr_nonnull(strstr(json, "\"denied\":8"));
  free(json);
  /* An admin may checkpoint. */
  Psd__Response *resp = simple(&admin, PSD__REQUEST__BODY_CHECKPOINT);
  ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_ACK);
  psd__response__free_unpacked(resp, NULL);
  rc_close(&admin);
  rc_close(&worker);
  rc_close(&reader);
  stop(&d);
}
END_TEST

/* ---- protected mode -------------------------------------------------------------- */

/* Run psd with these arguments, its stderr into log (emptied here, before
 * the fork: nothing of an earlier run is read for this one); its pid. */
static pid_t spawn_psd(const char *const *args, const char *log) {
  int lfd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ck_assert_int_ge(lfd, 0);
  close(lfd);
  const char *argv[32];
  int n = 0;
  argv[n++] = th_psd_bin();
  for (int i = 0; args[i] && n < 30; i++) argv[n++] = args[i];
  argv[n] = NULL;
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    int fd = open(log, O_WRONLY | O_APPEND);
    if (fd >= 0) dup2(fd, 2);
    execv(argv[0], (char *const *)argv);
    _exit(127);
  }
  return pid;
}

/* Wait until the daemon logs its port (or exits); the port, or -1. */
static int wait_listening(pid_t pid, const char *log) {
  for (int i = 0; i < 12000; i++) { /* 120 s: a bound against a hang only */
    int st;
    if (waitpid(pid, &st, WNOHANG) == pid) return -1;
    FILE *f = fopen(log, "r");
    char line[2048];
    int port = -1;
    while (f && fgets(line, sizeof(line), f)) {
      char *p = strstr(line, "listening on 0.0.0.0:");
      if (p) port = atoi(p + strlen("listening on 0.0.0.0:"));
    }
    if (f) fclose(f);
    if (port > 0) return port;
    struct timespec ts = {0, 10 * 1000000L};
    nanosleep(&ts, NULL);
  }
  return -1;
}

START_TEST(protected_mode_listen) {
  char log[300];
  snprintf(log, sizeof(log), "%s/protected.log", tdir);
  /* No tokens, beyond loopback: refused, with a sentence, exit non-zero. */
  const char *refused[] = {"--listen", "0.0.0.0:0", NULL};
  pid_t pid = spawn_psd(refused, log);
  int st;
  ck_assert_int_eq(waitpid(pid, &st, 0), pid);
  ck_assert(WIFEXITED(st) && WEXITSTATUS(st) != 0);
  ck_assert(th_file_contains(log, "refusing to listen on 0.0.0.0:0 without tokens"));

  /* --insecure: it starts, says so, and serves. */
  const char *insecure[] = {"--listen", "0.0.0.0:0", "--insecure", NULL};
  pid = spawn_psd(insecure, log);
  int port = wait_listening(pid, log);
  ck_assert_int_gt(port, 0);
  ck_assert(th_file_contains(log, "--insecure: listening on 0.0.0.0:0 without tokens"));
  rc c;
  open_rc(&c, port);
  hello_args a = H(-1, -1);
  rc_hello_ok(&c, &a, "admin"); /* no tokens: every client is an admin */
  rc_close(&c);
  kill(pid, SIGTERM);
  ck_assert_int_eq(waitpid(pid, &st, 0), pid);
  ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);

  /* With tokens, listening anywhere needs no --insecure. */
  char a0[300];
  snprintf(a0, sizeof(a0), "admin=%s", tpath[PSA_ADMIN]);
  const char *tokens[] = {"--listen", "0.0.0.0:0", "--token-file", a0, NULL};
  pid = spawn_psd(tokens, log);
  port = wait_listening(pid, log);
  ck_assert_int_gt(port, 0);
  ck_assert_msg(!th_file_contains(log, "--insecure:"),
                "a shard with tokens warns of --insecure");
  /* A challenge read: the event loop runs, so its SIGTERM handler is in. */
  open_rc(&c, port);
  rc_close(&c);
  kill(pid, SIGTERM);
  ck_assert_int_eq(waitpid(pid, &st, 0), pid);
  ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);

  /* Token files: a world-readable one, an empty one and a short one are
   * refused at start, each with a sentence. */
  char bad[300], arg[320];
  snprintf(bad, sizeof(bad), "%s/bad.token", tdir);
  struct {
    const char *content;
    mode_t mode;
    const char *says;
  } cases[] = {{"a-long-enough-token-but-public\n", 0644, "readable by every user"},
               {"\n", 0600, "is empty"},
               {"short\n", 0600, "at least 16 are needed"}};
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    write_file(bad, cases[i].content, cases[i].mode);
    snprintf(arg, sizeof(arg), "worker=%s", bad);
    const char *args[] = {"--listen", "127.0.0.1:0", "--token-file", arg, NULL};
    pid = spawn_psd(args, log);
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2);
    ck_assert_msg(th_file_contains(log, cases[i].says), "case %zu", i);
  }
}
END_TEST

/* One failed authentication from `from`: a worker proof made with a wrong
 * token, refused and closed. */
static void fail_once(int port, const char *from) {
  rc c;
  ck_assert_ptr_null(rc_open_at(&c, port, from));
  hello_args a = H(PSA_WORKER, -1);
  a.token = "not-the-worker-token-at-all";
  expect_error(rc_hello(&c, &a), PSD__CODE__UNAUTHENTICATED, "wrong proof");
  expect_closed(&c);
  rc_close(&c);
}

/* The limiter's numbers come from flags and their PSD_* variables: 2
 * failures (PSD_AUTH_FAIL_LIMIT) ban an address for 1 s (--auth-ban); once
 * the ban is over it is served again. --auth-fail-limit 0 never bans. */
START_TEST(limiter_configured) {
  setenv("PSD_AUTH_FAIL_LIMIT", "2", 1);
  const char *more[] = {"--auth-ban", "1", "--auth-fail-window", "600", NULL};
  th_psd d;
  start_with_tokens(&d, more);
  unsetenv("PSD_AUTH_FAIL_LIMIT");
  fail_once(d.port, "127.0.0.4");
  fail_once(d.port, "127.0.0.4");
  ck_assert(th_log_contains(&d, "2 failed authentications from 127.0.0.4 within 600 s: "
                                "refusing its connections for 1 s"));
  rc c;
  expect_error(rc_open_at(&c, d.port, "127.0.0.4"), PSD__CODE__UNAUTHENTICATED,
               "too many failed authentications");
  rc_close(&c);
  /* The ban ends: polled, bounded far beyond the 1 s (a bound, not a
   * measurement). */
  int served = 0;
  for (int i = 0; i < 12000 && !served; i++) {
    Psd__Response *first = rc_open_at(&c, d.port, "127.0.0.4");
    served = first == NULL;
    if (first) psd__response__free_unpacked(first, NULL);
    if (served) {
      hello_args a = H(PSA_READER, -1);
      rc_hello_ok(&c, &a, "reader");
      char *json = stats_of(&c);
      ck_assert_ptr_nonnull(strstr(json, "\"fail_limit\":2,\"fail_window_s\":600,\"ban_s\":1}"));
      free(json);
    }
    rc_close(&c);
    if (!served) usleep(10000);
  }
  ck_assert_msg(served, "127.0.0.4 still refused long after its 1 s ban");
  stop(&d);

  const char *off[] = {"--auth-fail-limit", "0", NULL};
  start_with_tokens(&d, off);
  for (int i = 0; i < 8; i++) fail_once(d.port, "127.0.0.5");
  ck_assert_ptr_null(rc_open_at(&c, d.port, "127.0.0.5")); /* a challenge: not banned */
  hello_args a = H(PSA_READER, -1);
  rc_hello_ok(&c, &a, "reader");
  char *json = stats_of(&c);
  ck_assert_ptr_nonnull(strstr(json, "\"failed\":8,"));
  ck_assert_ptr_nonnull(strstr(json, "\"addresses_refused\":0,"));
  free(json);
  rc_close(&c);
  stop(&d);

  /* Values out of range are refused at start. */
  char log[300];
  snprintf(log, sizeof(log), "%s/limiter.log", tdir);
  const char *bad[] = {"--listen", "127.0.0.1:0", "--auth-fail-window", "0", NULL};
  pid_t pid = spawn_psd(bad, log);
  int st;
  ck_assert_int_eq(waitpid(pid, &st, 0), pid);
  ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2);
  ck_assert(th_file_contains(log, "invalid value '0' for --auth-fail-window"));
}
END_TEST

/* ---- identity ---------------------------------------------------------------- */

START_TEST(server_list_not_set_by_worker) {
  th_psd d;
  start_with_tokens(&d, NULL);
  rc w;
  open_as(&w, d.port, PSA_WORKER, -1, "worker");
  expect_error(create_n(&w, "t", 4), PSD__CODE__WRONG_SHARD, "role worker may not set it");
  char *json = stats_of(&w);
  ck_assert_ptr_nonnull(strstr(json, "\"shard_index\":-1,\"servers\":\"\""));
  free(json);
  /* An admin's first tensor request sets it... */
  rc adm;
  open_as(&adm, d.port, PSA_ADMIN, -1, "admin");
  rc_create_ok(&adm, "t", 4);
  /* ...and the worker with the same list is served from then on. */
  rc_create_ok(&w, "t", 4);
  /* A worker with another list is refused, naming both. */
  rc other;
  open_rc(&other, d.port);
  char list[128];
  snprintf(list, sizeof(list), "127.0.0.1:%d,127.0.0.1:1", d.port);
  hello_args a = H(PSA_WORKER, -1);
  a.servers = list;
  rc_hello_ok(&other, &a, "worker");
  char both[320];
  snprintf(both, sizeof(both), "entry 0 of '127.0.0.1:%d' but the client says entry 0 of '%s'",
           d.port, list);
  expect_error(create_n(&other, "t", 4), PSD__CODE__WRONG_SHARD, both);
  rc_close(&other);
  rc_close(&adm);
  rc_close(&w);
  stop(&d);
}
END_TEST

START_TEST(server_list_from_configuration) {
  /* A configured list is the shard's identity from the start; stats stays
   * valid JSON whatever the list holds (a quote and a backslash here). */
  const char *list = "127.0.0.1:1,we\"ird\\host:2";
  const char *more[] = {"--servers", list, "--index", "0", NULL};
  th_psd d;
  start_with_tokens(&d, more);
  rc adm;
  open_rc(&adm, d.port);
  char mine[64];
  snprintf(mine, sizeof(mine), "127.0.0.1:%d", d.port);
  hello_args a = H(PSA_ADMIN, -1);
  a.servers = mine;
  rc_hello_ok(&adm, &a, "admin");
  /* Not even an admin's list replaces a configured one. */
  expect_error(create_n(&adm, "t", 4), PSD__CODE__WRONG_SHARD, "entry 0 of '127.0.0.1:1,we");
  char *json = stats_of(&adm);
  ck_assert_ptr_nonnull(strstr(json, "\"servers\":\"127.0.0.1:1,we\\\"ird\\\\host:2\""));
  ck_assert_ptr_nonnull(strstr(json, "\"shard_index\":0"));
  free(json);
  rc_close(&adm);
  stop(&d);
}
END_TEST

/* ---- sessions and ranks --------------------------------------------------------- */

START_TEST(live_rank_not_taken) {
  const char *more[] = {"--worker-timeout", "60", NULL};
  th_psd d;
  start_with_tokens(&d, more);
  rc adm, a0, b0;
  open_as(&adm, d.port, PSA_ADMIN, -1, "admin");
  rc_create_ok(&adm, "t", 4);

  open_rc(&a0, d.port);
  hello_args a = H(PSA_WORKER, 0);
  rc_hello_ok(&a0, &a, "worker");
  /* A second session claiming rank 0 while the first is live. */
  open_rc(&b0, d.port);
  expect_error(rc_hello(&b0, &a), PSD__CODE__PERMISSION_DENIED,
               "worker rank 0 is held by another live session");
  /* The holder is undisturbed. */
  ck_assert_uint_eq(push_ok(&a0, "t", 1, 0), 1);
  /* Its goodbye frees the rank at once. */
  Psd__Response *resp = simple(&a0, PSD__REQUEST__BODY_GOODBYE);
  ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_ACK);
  psd__response__free_unpacked(resp, NULL);
  ck_assert(th_log_contains(&d, "worker rank 0 left (it said goodbye)"));
  rc_hello_ok(&b0, &a, "worker");
  ck_assert_uint_eq(push_ok(&b0, "t", 1, 0), 2);
  rc_close(&a0);
  rc_close(&b0);
  rc_close(&adm);
  stop(&d);
}
END_TEST

/* A connection whose session no longer holds its rank cannot speak for it:
 * its session ended (a goodbye on another of its connections) and another
 * session took the rank. */
START_TEST(non_holder_refused) {
  const char *more[] = {"--worker-timeout", "60", NULL};
  th_psd d;
  start_with_tokens(&d, more);
  rc adm, x, y, z;
  open_as(&adm, d.port, PSA_ADMIN, -1, "admin");
  rc_create_ok(&adm, "t", 4);

  /* x: rank 0 of a 2-worker sync job. y: the same session, resumed. */
  open_rc(&x, d.port);
  hello_args w = H(PSA_WORKER, 0);
  w.staleness = 0;
  rc_hello_ok(&x, &w, "worker");
  open_rc(&y, d.port);
  hello_args r = w;
  r.session = x.session;
  r.secret = x.secret;
  rc_hello_ok(&y, &r, "worker");
  ck_assert_uint_eq(y.session, x.session);
  /* o: rank 1, live, so that the job's run goes on when rank 0 leaves (a
   * run whose last live worker leaves ends: job.h). */
  rc o;
  open_rc(&o, d.port);
  hello_args w1 = H(PSA_WORKER, 1);
  w1.staleness = 0;
  rc_hello_ok(&o, &w1, "worker");
  Psd__Response *resp = simple(&y, PSD__REQUEST__BODY_GOODBYE);
  psd__response__free_unpacked(resp, NULL);
  /* z takes the free rank 0 with a session of its own. */
  open_rc(&z, d.port);
  rc_hello_ok(&z, &w, "worker");
  ck_assert_uint_ne(z.session, x.session);

  /* x still says rank 0: every rank-bound request is refused. */
  float g[4] = {1, 1, 1, 1};
  expect_error(push_at(&x, "t", 7, g, 4, 1), PSD__CODE__PERMISSION_DENIED,
               "push refused: worker rank 0 is not held by this connection's session");
  expect_error(simple(&x, PSD__REQUEST__BODY_CLOCK), PSD__CODE__PERMISSION_DENIED,
               "clock refused");
  expect_error(simple(&x, PSD__REQUEST__BODY_HEARTBEAT), PSD__CODE__PERMISSION_DENIED,
               "heartbeat refused");
  expect_error(simple(&x, PSD__REQUEST__BODY_BARRIER), PSD__CODE__PERMISSION_DENIED,
               "barrier refused");
  /* Nothing changed: rank 0's clock is still 0, no round is pending, the
   * block untouched. */
  char *json = stats_of(&adm);
  ck_assert_ptr_nonnull(strstr(json, "{\"rank\":0,\"joined\":true,\"live\":true,\"clock\":0"));
  ck_assert_ptr_nonnull(strstr(json, "\"rounds_pending\":0"));
  free(json);
  ck_assert_uint_eq(pull_version(&adm, "t"), 0);
  rc_close(&x);
  rc_close(&y);
  rc_close(&z);
  rc_close(&o);
  rc_close(&adm);
  stop(&d);
}
END_TEST

START_TEST(session_resume_keeps_exactly_once) {
  th_psd d;
  start_with_tokens(&d, NULL);
  admin_create(d.port, "t", 4);
  rc c;
  open_rc(&c, d.port);
  hello_args a = H(PSA_WORKER, 0);
  rc_hello_ok(&c, &a, "worker");
  rc_create_ok(&c, "t", 4);
  ck_assert_uint_eq(push_ok(&c, "t", 1, 0), 1);
  uint64_t sid = c.session;
  uint8_t secret[PSA_SECRET];
  memcpy(secret, c.secret, PSA_SECRET);
  rc_close(&c);

  /* A new connection resumes the session with the proof of its secret. */
  open_rc(&c, d.port);
  a.session = sid;
  a.secret = secret;
  Psd__Response *resp = rc_hello(&c, &a);
  ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_HELLO);
  ck_assert_uint_eq(resp->hello->session_id, sid);
  ck_assert(resp->hello->has_resumed && resp->hello->resumed);
  ck_assert(!resp->hello->has_session_secret); /* the secret is never sent twice */
  psd__response__free_unpacked(resp, NULL);
  /* The resent push is a duplicate; the next one applies. */
  ck_assert_uint_eq(push_ok(&c, "t", 1, 1), 1);
  ck_assert_uint_eq(push_ok(&c, "t", 2, 0), 2);
  rc_close(&c);

  /* The session of another rank cannot be claimed with this rank. */
  open_rc(&c, d.port);
  hello_args b = H(PSA_WORKER, 1);
  b.session = sid;
  b.secret = secret;
  expect_error(rc_hello(&c, &b), PSD__CODE__PERMISSION_DENIED, "opened for rank 0");
  rc_close(&c);
  stop(&d);
}
END_TEST

START_TEST(worker_id_cannot_be_chosen) {
  th_psd d;
  start_with_tokens(&d, NULL);
  admin_create(d.port, "t", 4);
  rc victim, thief;
  open_rc(&victim, d.port);
  hello_args a = H(PSA_WORKER, -1);
  rc_hello_ok(&victim, &a, "worker");
  rc_create_ok(&victim, "t", 4);
  ck_assert_uint_eq(push_ok(&victim, "t", 5, 0), 1);

  /* Protocol 1's client-chosen worker id is ignored: the thief gets its
   * own session, and its huge sequence number is its own. */
  open_rc(&thief, d.port);
  hello_args t = H(PSA_WORKER, -1);
  t.worker_id = victim.session;
  rc_hello_ok(&thief, &t, "worker");
  ck_assert_uint_ne(thief.session, victim.session);
  ck_assert_uint_eq(push_ok(&thief, "t", UINT64_MAX, 0), 2);
  ck_assert_uint_eq(push_ok(&victim, "t", 6, 0), 3); /* not a "duplicate" */
  rc_close(&thief);

  /* Naming the victim's session without its secret: refused and closed. */
  open_rc(&thief, d.port);
  t = H(PSA_WORKER, -1);
  t.session = victim.session;
  uint8_t guess[PSA_SECRET] = {0};
  t.secret = guess;
  expect_error(rc_hello(&thief, &t), PSD__CODE__UNAUTHENTICATED, "session");
  expect_closed(&thief);
  rc_close(&thief);
  ck_assert_uint_eq(push_ok(&victim, "t", 7, 0), 4);
  rc_close(&victim);
  stop(&d);
}
END_TEST

START_TEST(session_resumes_after_restart) {
  char dir[256];
  snprintf(dir, sizeof(dir), "%s/restart", tdir);
  const char *more[] = {"--data-dir", dir, "--worker-timeout", "60", NULL};
  th_psd d;
  start_with_tokens(&d, more);
  int port = d.port;
  admin_create(port, "t", 4);
  rc c;
  open_rc(&c, port);
  hello_args a = H(PSA_WORKER, 0);
  rc_hello_ok(&c, &a, "worker");
  rc_create_ok(&c, "t", 4);
  ck_assert_uint_eq(push_ok(&c, "t", 1, 0), 1);
  uint64_t sid = c.session;
  uint8_t secret[PSA_SECRET];
  memcpy(secret, c.secret, PSA_SECRET);
  rc_close(&c);
  stop(&d); /* SIGTERM: the final checkpoint holds the session */

  /* The same port: the server list is the shard's identity. */
  char a0[300], a1[300], a2[300], portarg[16];
  snprintf(a0, sizeof(a0), "reader=%s", tpath[PSA_READER]);
  snprintf(a1, sizeof(a1), "worker=%s", tpath[PSA_WORKER]);
  snprintf(a2, sizeof(a2), "admin=%s", tpath[PSA_ADMIN]);
  (void)portarg;
  const char *args[] = {"--token-file", a0, "--token-file", a1, "--token-file", a2,
                        "--data-dir", dir, "--worker-timeout", "60", NULL};
  ck_assert_int_eq(th_psd_start(&d, port, args), 0);
  /* Rank 0 is still held by the restored session... */
  open_rc(&c, port);
  expect_error(rc_hello(&c, &a), PSD__CODE__PERMISSION_DENIED, "held by another");
  rc_close(&c);
  /* ...which its worker resumes, with exactly-once intact. */
  open_rc(&c, port);
  a.session = sid;
  a.secret = secret;
  Psd__Response *resp = rc_hello(&c, &a);
  ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_HELLO);
  ck_assert(resp->hello->resumed);
  ck_assert_uint_eq(resp->hello->session_id, sid);
  psd__response__free_unpacked(resp, NULL);
  ck_assert_uint_eq(push_ok(&c, "t", 1, 1), 1);
  ck_assert_uint_eq(push_ok(&c, "t", 2, 0), 2);
  rc_close(&c);
  /* The checkpoint holds secrets: only its owner may read it. */
  char cmd[400];
  snprintf(cmd, sizeof(cmd), "test -z \"$(find %s -name 'ckpt-*.psd' -perm /077)\"", dir);
  ck_assert_int_eq(system(cmd), 0);
  stop(&d);
}
END_TEST

/* ---- the job ---------------------------------------------------------------------- */

START_TEST(tool_push_in_sync_refused) {
  th_psd d;
  start_with_tokens(&d, NULL);
  admin_create(d.port, "t", 4);
  rc adm, w0;
  open_rc(&w0, d.port);
  hello_args a = H(PSA_WORKER, 0);
  a.staleness = 0; /* sync, 2 workers */
  rc_hello_ok(&w0, &a, "worker");
  rc_create_ok(&w0, "t", 4);
  open_as(&adm, d.port, PSA_ADMIN, -1, "admin");
  float g[4] = {1, 1, 1, 1};
  expect_error(push_at(&adm, "t", 1, g, 4, 0), PSD__CODE__PERMISSION_DENIED,
               "push from a tool (rank -1)");
  ck_assert_uint_eq(pull_version(&adm, "t"), 0);
  char *json = stats_of(&adm);
  ck_assert_ptr_nonnull(strstr(json, "\"rounds_pending\":0"));
  free(json);
  rc_close(&adm);
  rc_close(&w0);
  stop(&d);
}
END_TEST

START_TEST(max_workers) {
  const char *more[] = {"--max-workers", "4", NULL};
  th_psd d;
  start_with_tokens(&d, more);
  rc c;
  open_rc(&c, d.port);
  hello_args a = H(PSA_WORKER, 0);
  a.nw = 65536;
  a.staleness = 0;
  expect_error(rc_hello(&c, &a), PSD__CODE__WRONG_SHARD, "--max-workers 4");
  a.nw = 5;
  expect_error(rc_hello(&c, &a), PSD__CODE__WRONG_SHARD, "a job of 5 workers");
  /* Refused hellos configured nothing: a job of 4 is taken. */
  a.nw = 4;
  rc_hello_ok(&c, &a, "worker");
  char *json = stats_of(&c);
  ck_assert_ptr_nonnull(strstr(json, "\"num_workers\":4"));
  free(json);
  rc_close(&c);
  stop(&d);
}
END_TEST

/* ---- the library with token files ----------------------------------------------- */

START_TEST(library_with_token_files) {
  th_psd d;
  start_with_tokens(&d, NULL);
  ps_options o;
  ps_client *c;
  uint64_t shape[1] = {8};
  float g[8] = {1, 1, 1, 1, 1, 1, 1, 1}, w[8];

  /* The admin creates (and so sets the server list). */
  ps_options_init(&o);
  o.token_file = tpath[PSA_ADMIN];
  ck_assert_int_eq(ps_connect(&c, d.addr, &o), 0);
  ps_tensor_spec s;
  ps_tensor_spec_init(&s, PS_INIT_ZEROS, PS_OPT_SGD);
  ck_assert_int_eq(ps_create(c, "lib", shape, 1, &s), 0);
  ps_close(c);

  /* A worker with its token pushes; the role defaults to worker for a rank. */
  ps_options_init(&o);
  o.rank = 0;
  o.num_workers = 1;
  o.staleness = -1;
  o.token_file = tpath[PSA_WORKER];
  ck_assert_int_eq(ps_connect(&c, d.addr, &o), 0);
  ck_assert_int_eq(ps_push(c, "lib", g, 8), 0);
  ps_close(c);

  /* A reader pulls, and may not push. */
  ps_options_init(&o);
  o.role = "reader";
  o.token_file = tpath[PSA_READER];
  ck_assert_int_eq(ps_connect(&c, d.addr, &o), 0);
  uint64_t v;
  ck_assert_int_eq(ps_pull(c, "lib", w, 8, &v), 0);
  ck_assert_uint_eq(v, 1);
  ck_assert_int_eq(ps_push(c, "lib", g, 8), PS_EPERM);
  ck_assert_ptr_nonnull(strstr(ps_errmsg(c), "role reader may not push"));
  ps_close(c);

  /* The worker's token offered for the admin role. */
  ps_options_init(&o);
  o.token_file = tpath[PSA_WORKER];
  ck_assert_int_eq(ps_connect(&c, d.addr, &o), PS_EAUTH);
  ck_assert_ptr_null(c);
  ck_assert_ptr_nonnull(strstr(ps_last_error(), "role admin refused"));

  /* No token for a shard that needs one. */
  ps_options_init(&o);
  ck_assert_int_eq(ps_connect(&c, d.addr, &o), PS_EAUTH);
  ck_assert_ptr_nonnull(strstr(ps_last_error(), "no proof"));

  /* PS_TOKEN_FILE and PS_ROLE from the environment. */
  setenv("PS_TOKEN_FILE", tpath[PSA_READER], 1);
  setenv("PS_ROLE", "reader", 1);
  ps_options_init(&o);
  ck_assert_int_eq(ps_connect(&c, d.addr, &o), 0);
  ck_assert_int_eq(ps_pull(c, "lib", w, 8, &v), 0);
  ps_close(c);
  unsetenv("PS_TOKEN_FILE");
  unsetenv("PS_ROLE");

  /* Token files are checked by the library too. */
  char pub[300];
  snprintf(pub, sizeof(pub), "%s/public.token", tdir);
  write_file(pub, tokval[PSA_ADMIN], 0644);
  ps_options_init(&o);
  o.token_file = pub;
  ck_assert_int_eq(ps_connect(&c, d.addr, &o), PS_EINVAL);
  ck_assert_ptr_nonnull(strstr(ps_last_error(), "readable by every user"));
  ps_options_init(&o);
  o.role = "root";
  ck_assert_int_eq(ps_connect(&c, d.addr, &o), PS_EINVAL);
  stop(&d);
}
END_TEST

/* The library resumes its session after the shard restarts: a sync worker
 * keeps its rank and its pushes apply once. */
START_TEST(library_resumes_after_restart) {
  char dir[256];
  snprintf(dir, sizeof(dir), "%s/librestart", tdir);
  char a0[300], a1[300];
  snprintf(a0, sizeof(a0), "worker=%s", tpath[PSA_WORKER]);
  snprintf(a1, sizeof(a1), "admin=%s", tpath[PSA_ADMIN]);
  const char *args[] = {"--token-file", a0, "--token-file", a1, "--data-dir", dir,
                        "--worker-timeout", "60", NULL};
  th_psd d;
  ck_assert_int_eq(th_psd_start(&d, 0, args), 0);
  int port = d.port;
  ps_options o;
  ps_client *c;
  uint64_t shape[1] = {8};
  ps_tensor_spec s;
  ps_tensor_spec_init(&s, PS_INIT_ZEROS, PS_OPT_SGD);
  /* The admin creates the tensor (and so sets the shard's server list). */
  ps_options_init(&o);
  o.token_file = tpath[PSA_ADMIN];
  ck_assert_int_eq(ps_connect(&c, d.addr, &o), 0);
  ck_assert_int_eq(ps_create(c, "r", shape, 1, &s), 0);
  ps_close(c);
  ps_options_init(&o);
  o.rank = 0;
  o.num_workers = 1;
  o.staleness = 0;
  o.token_file = tpath[PSA_WORKER];
  ck_assert_int_eq(ps_connect(&c, d.addr, &o), 0);
  float g[8] = {1, 1, 1, 1, 1, 1, 1, 1}, w[8];
  ck_assert_int_eq(ps_create(c, "r", shape, 1, &s), 0);
  uint64_t v;
  ck_assert_int_eq(ps_push_pull(c, "r", g, w, 8, &v), 0);
  ck_assert_uint_eq(v, 1);
  ck_assert_int_eq(th_psd_stop(&d, SIGTERM, 120000) >= 0, 1);
  ck_assert_int_eq(th_psd_start(&d, port, args), 0);
  /* The library reconnects, resumes its session (so rank 0 is its own) and
   * the next push applies. */
  ck_assert_int_eq(ps_push_pull(c, "r", g, w, 8, &v), 0);
  ck_assert_uint_eq(v, 2);
  ck_assert(th_log_contains(&d, "resumed session"));
  ps_close(c);
  stop(&d);
}
END_TEST

static void cleanup_tokens(void) {
  char cmd[300];
  snprintf(cmd, sizeof(cmd), "rm -rf %s", tdir);
  if (tdir[0]) (void)!system(cmd);
}

static Suite *suite(void) {
  Suite *s = suite_create("auth");
  TCase *t = tcase_create("auth");
  tcase_set_timeout(t, 120);
  tcase_add_unchecked_fixture(t, make_tokens, cleanup_tokens);
  tcase_add_test(t, good_proof_accepted_per_role);
  tcase_add_test(t, bad_proofs_refused_and_closed);
  tcase_add_test(t, nothing_served_before_hello);
  tcase_add_test(t, failures_rate_limited_per_address);
  tcase_add_test(t, limiter_configured);
  tcase_add_test(t, forbidden_requests_per_role);
  tcase_add_test(t, protected_mode_listen);
  tcase_add_test(t, server_list_not_set_by_worker);
  tcase_add_test(t, server_list_from_configuration);
  tcase_add_test(t, live_rank_not_taken);
  tcase_add_test(t, non_holder_refused);
  tcase_add_test(t, session_resume_keeps_exactly_once);
  tcase_add_test(t, worker_id_cannot_be_chosen);
  tcase_add_test(t, session_resumes_after_restart);
  tcase_add_test(t, tool_push_in_sync_refused);
  tcase_add_test(t, max_workers);
  tcase_add_test(t, library_with_token_files);
  tcase_add_test(t, library_resumes_after_restart);
  suite_add_tcase(s, t);
  return s;
}

int main(void) { return check_run(suite()); }
