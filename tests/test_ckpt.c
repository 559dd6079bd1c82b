/*
 * test_ckpt.c -- checkpoints that are never lost: real psd daemons on
 * loopback, driven through raw sockets, with their --data-dir inspected and
 * damaged on purpose.
 *
 *   writer_closes_inherited_fds     the save's child holds no socket: a
 *                                   connection the parent closes gets its FIN
 *   kill9_during_save_then_restart  kill -9 during a save, restart on the
 *                                   same port at once: it serves
 *   restore_out_of_memory           a restore that lacks memory stops psd
 *                                   (files untouched); with 1.5x the state's
 *                                   size it restores (no second copy)
 *   restore_unreadable              a directory in a checkpoint's place, a
 *                                   file psd may not read: psd stops, files
 *                                   untouched, a later start restores
 *   corrupt_files_renamed_aside     checksum, truncation, bad magic: renamed
 *                                   *.corrupt, the previous one used
 *   prune_keeps_newest_valid        pruning removes nothing newer than what
 *                                   this process wrote, nor the newest valid
 *   old_files_still_read            a file written before the format was
 *                                   made explicitly little-endian restores
 *                                   exactly and is rewritten byte for byte
 *   unknown_names_stop_psd          a spec naming an optimizer this psd does
 *                                   not know (a newer psd's file?) stops psd
 *
 * "Long" saves are made by construction: a FIFO created at the next
 * checkpoint's .tmp path blocks the writer in open(2) until a reader comes,
 * and none does.
 *
 * `test_ckpt --make-fixture FILE` wrote tests/data/ckpt-v1.psd (with
 * PSD_BIN naming the psd of commit 2b5a9f7).
 */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
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

#ifndef PSD_TESTS_DIR
#define PSD_TESTS_DIR "."
#endif

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif
#ifndef UNDER_ASAN
#define UNDER_ASAN 0
#endif

/* ---- processes to clean up whatever happens --------------------------------- */

/* Shared with the forked tests, so that the suite's teardown (in the parent)
 * kills what a failed test left running: an old psd's writer blocked on a
 * FIFO would hold its port forever. */
static pid_t *spawned;
enum { MAX_SPAWNED = 128 };

static void track(pid_t pid) {
  for (int i = 0; i < MAX_SPAWNED; i++)
    if (__atomic_compare_exchange_n(&spawned[i], &(pid_t){0}, pid, 0, __ATOMIC_SEQ_CST,
                                    __ATOMIC_SEQ_CST))
      return;
}

static int is_psd(pid_t pid) {
  char p[64], comm[64] = "";
  snprintf(p, sizeof(p), "/proc/%d/comm", (int)pid);
  FILE *f = fopen(p, "r");
  if (f == NULL) return 0;
  int ok = fgets(comm, sizeof(comm), f) != NULL && strncmp(comm, "psd", 3) == 0;
  fclose(f);
  return ok;
}

static void kill_leftovers(void) {
  for (int i = 0; i < MAX_SPAWNED; i++) {
    pid_t pid = spawned[i];
    spawned[i] = 0;
    if (pid > 0 && is_psd(pid)) kill(pid, SIGKILL);
  }
}

/* ---- small helpers ------------------------------------------------------------ */

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* How long a test waits for a state (a writer forked, a descriptor closed,
 * a process gone) before calling it a hang: far beyond what any machine
 * needs, so that no outcome depends on its speed. */
#define WAIT_MS 120000

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...) {
  char cmd[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cmd, sizeof(cmd), fmt, ap);
  va_end(ap);
  int st = system(cmd);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void fresh_dir(char *dir, size_t len, const char *what) {
  snprintf(dir, len, "%s/ckpt-%s", th_tmpdir(), what);
  ck_assert_int_eq(sh("rm -rf %s && mkdir -p %s", dir, dir), 0);
}

static void ckpt_file(char *out, size_t len, const char *dir, int seq, const char *ext) {
  snprintf(out, len, "%s/ckpt-%016d.%s", dir, seq, ext);
}

static int exists(const char *path) {
  struct stat sb;
  return lstat(path, &sb) == 0;
}

static int ckpt_exists(const char *dir, int seq, const char *ext) {
  char p[512];
  ckpt_file(p, sizeof(p), dir, seq, ext);
  return exists(p);
}

/* Names, sizes, modes and contents of every file in dir, as one string. */
static char *dir_digest(const char *dir) {
  char cmd[1024];
  snprintf(cmd, sizeof(cmd),
           "cd %s && find . -printf '%%p %%y %%s %%m\\n' | sort && "
           "find . -type f | sort | xargs -r md5sum",
           dir);
  FILE *f = popen(cmd, "r");
  ck_assert_ptr_nonnull(f);
  size_t cap = 1 << 16, len = 0;
  char *buf = malloc(cap);
  size_t n;
  while ((n = fread(buf + len, 1, cap - len - 1, f)) > 0) len += n;
  buf[len] = '\0';
  pclose(f);
  return buf;
}

static void expect_same_files(const char *before, const char *dir) {
  char *after = dir_digest(dir);
  if (strcmp(before, after) != 0)
    ck_abort_msg("%s changed:\nbefore:\n%s\nafter:\n%s", dir, before, after);
  free(after);
}

/* A child of `parent` (the save's writer), waiting up to timeout_ms. */
static pid_t find_child(pid_t parent, int timeout_ms) {
  for (int waited = 0; waited <= timeout_ms; waited += 10) {
    DIR *d = opendir("/proc");
    struct dirent *e;
    pid_t found = 0;
    while (d && !found && (e = readdir(d)) != NULL) {
      if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
      char p[300], buf[512];
      snprintf(p, sizeof(p), "/proc/%s/stat", e->d_name);
      FILE *f = fopen(p, "r");
      if (f == NULL) continue;
      size_t n = fread(buf, 1, sizeof(buf) - 1, f);
      fclose(f);
      buf[n] = '\0';
      char *rp = strrchr(buf, ')');
      int ppid = 0;
      if (rp && sscanf(rp + 2, "%*c %d", &ppid) == 1 && ppid == parent) found = atoi(e->d_name);
    }
    if (d) closedir(d);
    if (found) return found;
    sleep_ms(10);
  }
  return 0;
}

static int gone(pid_t pid) {
  char p[64], buf[512];
  snprintf(p, sizeof(p), "/proc/%d/stat", (int)pid);
  FILE *f = fopen(p, "r");
  if (f == NULL) return 1;
  size_t n = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  buf[n] = '\0';
  char *rp = strrchr(buf, ')');
  return rp != NULL && rp[2] == 'Z'; /* a zombie holds nothing */
}

static int wait_gone(pid_t pid, int timeout_ms) {
  for (int waited = 0; waited <= timeout_ms; waited += 10) {
    if (gone(pid)) return 1;
    sleep_ms(10);
  }
  return 0;
}

/* The descriptors pid holds: how many, how many sockets, and their list. */
static int fds_of(pid_t pid, int *sockets, char *list, size_t len) {
  char p[64];
  snprintf(p, sizeof(p), "/proc/%d/fd", (int)pid);
  DIR *d = opendir(p);
  if (d == NULL) return -1;
  int n = 0;
  *sockets = 0;
  list[0] = '\0';
  /* Under a wrapper (valgrind), the tool's own descriptors sit at the top
   * of the table, out of psd's reach. */
  int wrapped = getenv("PSD_WRAPPER") && getenv("PSD_WRAPPER")[0];
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.' || (wrapped && atoi(e->d_name) >= 1024)) continue;
    char lp[400], target[256] = "";
    snprintf(lp, sizeof(lp), "%s/%s", p, e->d_name);
    ssize_t k = readlink(lp, target, sizeof(target) - 1);
    if (k > 0) target[k] = '\0';
    n++;
    if (strncmp(target, "socket:", 7) == 0) (*sockets)++;
    size_t used = strlen(list);
    snprintf(list + used, len - used, "%s->%s ", e->d_name, target);
  }
  closedir(d);
  return n;
}

static void make_fifo_gate(const char *dir, int seq) {
  char p[512];
  ckpt_file(p, sizeof(p), dir, seq, "tmp");
  ck_assert_int_eq(mkfifo(p, 0600), 0);
}

/* Run psd (under wrap, a NULL-terminated argv prefix, may be NULL) until it
 * exits. Returns its waitpid status; -1 if it started listening instead
 * (it is then killed): a start that should have failed. */
static int run_psd_to_exit(const char *const *wrap, const char *const *extra, char *log,
                           size_t loglen) {
  static int seq;
  snprintf(log, loglen, "%s/run-%d-%d.log", th_tmpdir(), (int)getpid(), seq++);
  int lfd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ck_assert_int_ge(lfd, 0);
  const char *argv[64];
  int n = 0;
  for (int i = 0; wrap && wrap[i]; i++) argv[n++] = wrap[i];
  argv[n++] = th_psd_bin();
  argv[n++] = "--listen";
  argv[n++] = "127.0.0.1:0";
  argv[n++] = "--log-level";
  argv[n++] = "info";
  for (int i = 0; extra && extra[i] && n < 62; i++) argv[n++] = extra[i];
  argv[n] = NULL;
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    dup2(lfd, 2);
    execvp(argv[0], (char *const *)argv);
    _exit(127);
  }
  close(lfd);
  track(pid);
  th_psd probe;
  memset(&probe, 0, sizeof(probe));
  snprintf(probe.log, sizeof(probe.log), "%.200s", log);
  for (int waited = 0; waited < WAIT_MS; waited += 10) {
    int st;
    if (waitpid(pid, &st, WNOHANG) == pid) return st;
    if (th_log_contains(&probe, "listening on")) {
      kill(pid, SIGKILL);
      waitpid(pid, &st, 0);
      return -1;
    }
    sleep_ms(10);
  }
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
  return -1;
}

static int log_has(const char *log, const char *needle) {
  th_psd probe;
  memset(&probe, 0, sizeof(probe));
  snprintf(probe.log, sizeof(probe.log), "%.200s", log);
  return th_log_contains(&probe, needle);
}

/* psd (under wrap, may be NULL) with extra must refuse to start on its data
 * directory dir: exit non-zero, logging a sentence with says and todo, and
 * leave every file of dir as it was. `started` completes "psd started ..."
 * for the failure where it did start. */
static void refuses_to_start(const char *const *wrap, const char *const *extra, const char *dir,
                             const char *started, const char *says, const char *todo) {
  char *before = dir_digest(dir), log[512];
  int st = run_psd_to_exit(wrap, extra, log, sizeof(log));
  ck_assert_msg(st != -1, "psd started %s (log %s)", started, log);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) != 0, "psd should exit non-zero (log %s)", log);
  ck_assert_msg(log_has(log, says) && log_has(log, todo), "no sentence saying what to do (log %s)",
                log);
  expect_same_files(before, dir);
  free(before);
}

static void start_psd(th_psd *p, int port, const char *const *extra) {
  ck_assert_msg(th_psd_start(p, port, extra) == 0, "psd did not start on port %d (log %s)", port,
                p->log);
  track(p->pid);
}

/* Start psd under a wrapper (words split on spaces, as PSD_WRAPPER). */
static int start_psd_wrapped(th_psd *p, const char *wrapper, const char *const *extra) {
  setenv("PSD_WRAPPER", wrapper, 1);
  int rc = th_psd_start(p, 0, extra);
  unsetenv("PSD_WRAPPER");
  if (rc == 0) track(p->pid);
  return rc;
}

static void stop_psd(th_psd *p) {
  int st = th_psd_stop(p, SIGTERM, WAIT_MS);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "psd did not stop cleanly (log %s)",
                p->log);
}

/* ---- the raw protocol client (tests/rawclient.h), asserted ------------------------ */

static void open_rc(rc *c, int port) { ck_assert_int_ge(rc_open(c, port), 0); }

static void send_rc(rc *c, Psd__Request *r, const void *values, size_t vlen) {
  ck_assert_int_eq(rc_post(c, r, values, vlen), 0);
}

/* One response, values copied into *vals (malloc'd) when vals. */
static Psd__Response *recv_rc(rc *c, float **vals, size_t *vlen) {
  Psd__Response *resp = rc_recv(c, vals, vlen);
  ck_assert_msg(resp != NULL, "connection closed while a reply was expected");
  return resp;
}

static Psd__Response *call_rc(rc *c, Psd__Request *r, const void *values, size_t vlen,
                              float **out, size_t *outlen) {
  Psd__Response *resp = rc_call(c, r, values, vlen, out, outlen);
  ck_assert_msg(resp != NULL, "connection closed while a reply was expected");
  return resp;
}

static void hello_as(rc *c, const char *list, int rank, int nw, int staleness, uint64_t wid,
                     uint64_t lane_bytes) {
  rc_hello_args a = rc_hello_defaults();
  a.identity = "test_ckpt";
  a.worker_id = wid;
  a.rank = rank, a.nw = nw, a.staleness = staleness;
  a.servers = list;
  a.lane_bytes = lane_bytes;
  Psd__Response *resp = rc_hello(c, &a);
  ck_assert_ptr_nonnull(resp);
  ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_HELLO);
  psd__response__free_unpacked(resp, NULL);
}

/* A tool's hello (rank -1). The job's server list is a name that stays the
 * same when a restarted shard listens on another port (the shard adopts
 * the list its checkpoint holds). */
static const char tool_list[] = "127.0.0.1:7998";

static void rc_tool(rc *c, int port) {
  open_rc(c, port);
  hello_as(c, tool_list, -1, 0, -1, (uint64_t)getpid() * 1000 + (uint64_t)random() % 1000 + 1,
           0);
}

/* The version in resp, a Block reply to `verb` `name` block `block` (the
 * test fails on anything else); resp is freed. */
static uint64_t block_version(Psd__Response *resp, const char *verb, const char *name,
                              uint64_t block) {
  char what[300];
  snprintf(what, sizeof(what), "%s %s block %llu", verb, name, (unsigned long long)block);
  expect_body(resp, PSD__RESPONSE__BODY_BLOCK, what);
  uint64_t v = resp->block->version;
  psd__response__free_unpacked(resp, NULL);
  return v;
}

/* Pull block `block`: its version, values into *out (malloc'd, n floats). */
static uint64_t pull_ok(rc *c, const char *name, uint64_t block, float **out, size_t *n) {
  size_t bytes;
  uint64_t v = block_version(rc_pull(c, name, block, out, &bytes), "pull of", name, block);
  *n = bytes / sizeof(float);
  return v;
}

static int pull_not_found(rc *c, const char *name) {
  Psd__Response *resp = rc_pull(c, name, 0, NULL, NULL);
  ck_assert_ptr_nonnull(resp);
  int nf = resp->body_case == PSD__RESPONSE__BODY_ERROR &&
           resp->error->code == PSD__CODE__NOT_FOUND;
  psd__response__free_unpacked(resp, NULL);
  return nf;
}

static void push_req(Psd__Request *r, Psd__Push *p, const char *name, uint64_t block,
                     uint64_t seq, int has_clock, uint64_t clock) {
  rc_push_init(r, p, name, block, seq);
  p->has_clock = has_clock, p->clock = clock;
}

/* An async push (or a sync one that completes a round): its version. */
static uint64_t push_ok(rc *c, const char *name, uint64_t block, const float *g, size_t n,
                        uint64_t seq, int has_clock, uint64_t clock) {
  Psd__Request r;
  Psd__Push p;
  push_req(&r, &p, name, block, seq, has_clock, clock);
  return block_version(call_rc(c, &r, g, n * sizeof(float), NULL, NULL), "push to", name,
                       block);
}

/* A sync push whose reply waits for its round: sent, not answered yet. */
static void push_nowait(rc *c, const char *name, uint64_t block, const float *g, size_t n,
                        uint64_t seq, uint64_t clock) {
  Psd__Request r;
  Psd__Push p;
  push_req(&r, &p, name, block, seq, 1, clock);
  send_rc(c, &r, g, n * sizeof(float));
}

static uint64_t block_reply(rc *c) {
  Psd__Response *resp = recv_rc(c, NULL, NULL);
  ck_assert_int_eq(resp->body_case, PSD__RESPONSE__BODY_BLOCK);
  uint64_t v = resp->block->version;
  psd__response__free_unpacked(resp, NULL);
  return v;
}

static void checkpoint_send(rc *c) {
  Psd__Request r = PSD__REQUEST__INIT;
  Psd__Checkpoint ck = PSD__CHECKPOINT__INIT;
  r.body_case = PSD__REQUEST__BODY_CHECKPOINT;
  r.checkpoint = &ck;
  send_rc(c, &r, NULL, 0);
}

static void checkpoint_ok(rc *c) {
  checkpoint_send(c);
  Psd__Response *resp = recv_rc(c, NULL, NULL);
  expect_body(resp, PSD__RESPONSE__BODY_ACK, "checkpoint");
  psd__response__free_unpacked(resp, NULL);
}

static void ping_ok(rc *c) {
  Psd__Response *resp = rc_simple(c, PSD__REQUEST__BODY_PING, 0);
  ck_assert_ptr_nonnull(resp);
  psd__response__free_unpacked(resp, NULL);
}

/* A small SGD tensor "w" (10 zeros, lr 0.5) and `pushes` pushes of g = i:
 * weights -0.5 * pushes * i, version `pushes`. */
static void sgd_tensor(rc *c) {
  ps_tensor_spec s;
  ps_tensor_spec_init(&s, PS_INIT_ZEROS, PS_OPT_SGD);
  s.optim.lr = 0.5;
  uint64_t shape[1] = {10};
  create_ok(c, "w", shape, 1, &s);
}

static uint64_t push_seq = 1;

static void sgd_push(rc *c) {
  float g[10];
  for (int i = 0; i < 10; i++) g[i] = (float)i;
  push_ok(c, "w", 0, g, 10, push_seq++, 0, 0);
}

/* "w" holds what `pushes` pushes made of it. */
/* Start a shard with extra, connect c to it as a tool, create the SGD
 * tensor and apply one push. */
static void start_with_one_push(th_psd *p, const char *const *extra, rc *c) {
  start_psd(p, 0, extra);
  rc_tool(c, p->port);
  sgd_tensor(c);
  sgd_push(c);
}

static void expect_sgd_state(rc *c, uint64_t pushes) {
  float *v;
  size_t n;
  uint64_t ver = pull_ok(c, "w", 0, &v, &n);
  ck_assert_uint_eq(ver, pushes);
  ck_assert_uint_eq(n, 10);
  for (int i = 0; i < 10; i++) ck_assert_float_eq(v[i], -0.5f * (float)pushes * (float)i);
  free(v);
}

/* ---- 1. the save's child and the parent's descriptors ----------------------------- */

START_TEST(writer_closes_inherited_fds) {
  char dir[256];
  fresh_dir(dir, sizeof(dir), "fds");
  const char *extra[] = {"--data-dir", dir, "--update-threads", "1", NULL};
  th_psd p;
  start_psd(&p, 0, extra);
  /* A connection open before the fork, with a lane (a memfd) if granted. */
  rc a, b;
  open_rc(&a, p.port);
  hello_as(&a, tool_list, -1, 0, -1, 4242, 1 << 20);
  rc_tool(&b, p.port);
  sgd_tensor(&b);
  sgd_push(&b);

  make_fifo_gate(dir, 1);
  checkpoint_send(&b);
  pid_t child = find_child(p.pid, WAIT_MS);
  ck_assert_msg(child > 0, "no checkpoint writer was forked");
  track(child);

  /* Right after fork the child closes everything but stdin, stdout, stderr
   * (it then blocks on the FIFO, holding nothing). */
  int n = -1, sockets = -1;
  char fds[4096] = "";
  for (int waited = 0; waited < WAIT_MS; waited += 10) {
    n = fds_of(child, &sockets, fds, sizeof(fds));
    if (n >= 0 && n <= 3 && sockets == 0) break;
    sleep_ms(10);
  }
  ck_assert_msg(n >= 0 && n <= 3 && sockets == 0,
                "the checkpoint writer holds %d descriptors, %d sockets: %s", n, sockets, fds);

  /* The parent closes a connection (a bad frame header): the client sees
   * the end of the stream while the writer still runs. */
  ck_assert_int_eq(rc_send_all(a.fd, "XXXXXXXXXXXXXXXXXXXXXXXX", 24), 0);
  struct timeval tv = {WAIT_MS / 1000, 0};
  setsockopt(a.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  char buf[4096];
  ssize_t k;
  while ((k = recv(a.fd, buf, sizeof(buf), 0)) > 0) {
  }
  ck_assert_msg(k == 0, "no FIN from a connection the parent closed (%s)",
                k < 0 ? strerror(errno) : "");
  ck_assert_msg(!gone(child), "the writer should still be blocked on its FIFO");
  rc_close(&a);
  rc_close(&b);

  /* The writer dies with its parent. */
  th_psd_stop(&p, SIGKILL, 5000);
  ck_assert_msg(wait_gone(child, WAIT_MS), "the writer outlived its parent");
  ck_assert_int_eq(sh("rm -rf %s", dir), 0);
}
END_TEST

START_TEST(kill9_during_save_then_restart) {
  char dir[256];
  fresh_dir(dir, sizeof(dir), "kill9");
  const char *extra[] = {"--data-dir", dir, "--update-threads", "1", NULL};
  th_psd p;
  rc c;
  start_with_one_push(&p, extra, &c);
  int port = p.port;
  checkpoint_ok(&c); /* ckpt 1: one push */
  sgd_push(&c);
  make_fifo_gate(dir, 2);
  checkpoint_send(&c); /* ckpt 2 never gets past open(2) */
  pid_t child = find_child(p.pid, WAIT_MS);
  ck_assert_msg(child > 0, "no checkpoint writer was forked");
  track(child);
  rc_close(&c);

  th_psd_stop(&p, SIGKILL, 5000);
  /* At once, on the same port. */
  th_psd q;
  int rc_start = th_psd_start(&q, port, extra);
  ck_assert_msg(rc_start == 0, "psd did not restart on port %d after kill -9 during a save (%s)",
                port, q.log);
  track(q.pid);
  rc_tool(&c, port);
  expect_sgd_state(&c, 1);
  rc_close(&c);
  ck_assert(th_log_contains(&q, "left by a save that did not finish"));
  ck_assert_msg(wait_gone(child, WAIT_MS), "the writer outlived its parent");
  stop_psd(&q);
  ck_assert_int_eq(sh("rm -rf %s", dir), 0);
}
END_TEST

/* ---- 2. restores that fail for a reason that is not the file's --------------------- */

START_TEST(restore_out_of_memory) {
  if (UNDER_ASAN || (getenv("PSD_WRAPPER") && getenv("PSD_WRAPPER")[0])) {
    fprintf(stderr, "restore_out_of_memory: skipped (address-space limits mean nothing here)\n");
    return;
  }
  char dir[256], base[256];
  fresh_dir(base, sizeof(base), "oom-base");
  fresh_dir(dir, sizeof(dir), "oom");
  /* What psd itself takes, with nothing to restore. */
  const char *bextra[] = {"--data-dir", base, "--update-threads", "1", NULL};
  th_psd p;
  start_psd(&p, 0, bextra);
  rc c;
  rc_tool(&c, p.port);
  ping_ok(&c);
  long base_kb = th_proc_kb(p.pid, "VmPeak");
  ck_assert_int_gt(base_kb, 0);
  rc_close(&c);
  stop_psd(&p);

  /* 64 MiB of weights: 64 blocks of 1 MiB, two of them updated. */
  const char *extra[] = {"--data-dir", dir, "--update-threads", "1", NULL};
  start_psd(&p, 0, extra);
  rc_tool(&c, p.port);
  ps_tensor_spec s;
  ps_tensor_spec_init(&s, PS_INIT_NORMAL, PS_OPT_SGD);
  uint64_t shape[1] = {64u << 18};
  create_ok(&c, "big", shape, 1, &s);
  const uint64_t probe[3] = {0, 31, 63};
  float *want[3];
  float *g = malloc((1u << 18) * sizeof(float));
  for (size_t i = 0; i < (1u << 18); i++) g[i] = (float)(i % 13) * 0.25f;
  for (uint64_t b = 0; b < 64; b++) {
    float *v;
    size_t n;
    pull_ok(&c, "big", b, &v, &n);
    free(v);
  }
  push_ok(&c, "big", 0, g, 1u << 18, 1, 0, 0);
  push_ok(&c, "big", 63, g, 1u << 18, 2, 0, 0);
  for (int i = 0; i < 3; i++) {
    size_t n;
    pull_ok(&c, "big", probe[i], &want[i], &n);
    ck_assert_uint_eq(n, 1u << 18);
  }
  rc_close(&c);
  stop_psd(&p); /* ckpt 1 */
  char path[512];
  ckpt_file(path, sizeof(path), dir, 1, "psd");
  struct stat sb;
  ck_assert_int_eq(stat(path, &sb), 0);
  long state_kb = (long)(sb.st_size / 1024);
  ck_assert_int_gt(state_kb, 64 * 1024);

  /* Half the state's size on top of psd's own: the restore cannot fit. */
  char as[64];
  snprintf(as, sizeof(as), "--as=%ld", (base_kb + state_kb / 2) * 1024);
  const char *wrap[] = {"prlimit", as, NULL};
  refuses_to_start(wrap, extra, dir, "(empty?) without the memory to restore",
                   "not enough memory", "raise its memory limit");

  /* One and a half times the state: a restore that needs no second copy of
   * the file fits. */
  char wrapper[128];
  snprintf(wrapper, sizeof(wrapper), "prlimit --as=%ld", (base_kb + state_kb * 3 / 2) * 1024);
  ck_assert_msg(start_psd_wrapped(&p, wrapper, extra) == 0, "psd did not start under %s (%s)",
                wrapper, p.log);
  ck_assert_msg(th_log_contains(&p, "restored checkpoint"), "nothing restored (log %s)", p.log);
  rc_tool(&c, p.port);
  for (int i = 0; i < 3; i++) {
    float *v;
    size_t n;
    uint64_t ver = pull_ok(&c, "big", probe[i], &v, &n);
    ck_assert_uint_eq(ver, probe[i] == 31 ? 0 : 1);
    ck_assert_int_eq(memcmp(v, want[i], n * sizeof(float)), 0);
    free(v);
    free(want[i]);
  }
  rc_close(&c);
  th_psd_stop(&p, SIGKILL, 5000);
  free(g);
  ck_assert_int_eq(sh("rm -rf %s %s", dir, base), 0);
}
END_TEST

START_TEST(restore_unreadable) {
  char dir[256];
  fresh_dir(dir, sizeof(dir), "unreadable");
  const char *extra[] = {"--data-dir", dir, "--update-threads", "1", NULL};
  th_psd p;
  rc c;
  start_with_one_push(&p, extra, &c);
  rc_close(&c);
  stop_psd(&p); /* ckpt 1: one push */

  /* A directory where the newest checkpoint should be. */
  char newest[512];
  ckpt_file(newest, sizeof(newest), dir, 2, "psd");
  ck_assert_int_eq(mkdir(newest, 0755), 0);
  refuses_to_start(NULL, extra, dir, "over a directory in a checkpoint's place",
                   "is a directory", "move it out");
  ck_assert_int_eq(rmdir(newest), 0);

  /* Moved away: the later start restores ckpt 1, and writes ckpt 2 with
   * two pushes. */
  start_psd(&p, 0, extra);
  rc_tool(&c, p.port);
  expect_sgd_state(&c, 1);
  sgd_push(&c);
  rc_close(&c);
  stop_psd(&p);
  ck_assert(ckpt_exists(dir, 2, "psd"));

  /* A file psd's user may not read (psd runs as nobody; the file is root's,
   * mode 0600). */
  if (access("/usr/bin/setpriv", X_OK) != 0 || getuid() != 0) {
    fprintf(stderr, "restore_unreadable: permission part skipped (needs root and setpriv)\n");
  } else {
    ckpt_file(newest, sizeof(newest), dir, 2, "psd");
    ck_assert_int_eq(chmod(newest, 0600), 0);
    ck_assert_int_eq(chmod(dir, 0755), 0);
    const char *wrap[] = {"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", NULL};
    refuses_to_start(wrap, extra, dir, "without reading its newest checkpoint",
                     "Permission denied", "read access");
    /* With the permission: the newest state. */
    start_psd(&p, 0, extra);
    rc_tool(&c, p.port);
    expect_sgd_state(&c, 2);
    rc_close(&c);
    th_psd_stop(&p, SIGKILL, 5000);
  }
  ck_assert_int_eq(sh("rm -rf %s", dir), 0);
}
END_TEST

/* ---- 2. files proven corrupt ------------------------------------------------------ */

START_TEST(corrupt_files_renamed_aside) {
  char dir[256], path[512];
  fresh_dir(dir, sizeof(dir), "corrupt");
  const char *extra[] = {"--data-dir", dir, "--keep", "2", "--update-threads", "1", NULL};
  th_psd p;
  rc c;
  start_with_one_push(&p, extra, &c);
  int port = p.port;
  checkpoint_ok(&c); /* ckpt 1: one push */
  sgd_push(&c);
  rc_close(&c);
  stop_psd(&p); /* ckpt 2: two pushes */

  /* A flipped byte in the newest. */
  ckpt_file(path, sizeof(path), dir, 2, "psd");
  ck_assert_int_eq(sh("printf '\\377' | dd of=%s bs=1 seek=$(( $(stat -c %%s %s) / 2 )) "
                      "conv=notrunc status=none",
                      path, path),
                   0);
  ck_assert_int_eq(sh("md5sum < %s > %s.md5", path, dir), 0);
  start_psd(&p, port, extra);
  ck_assert(th_log_contains(&p, "checksum mismatch"));
  ck_assert(th_log_contains(&p, "trying the previous one"));
  ck_assert_msg(ckpt_exists(dir, 2, "psd.corrupt") && !ckpt_exists(dir, 2, "psd"),
                "the corrupt checkpoint was not renamed aside");
  ck_assert_int_eq(sh("md5sum < %s.corrupt | cmp -s - %s.md5", path, dir), 0);
  rc_tool(&c, port);
  expect_sgd_state(&c, 1);
  /* A new save takes number 3; pruning keeps 2 valid ones and never counts
   * or removes the corrupt one. */
  sgd_push(&c);
  checkpoint_ok(&c);
  rc_close(&c);
  ck_assert(ckpt_exists(dir, 3, "psd"));
  ck_assert(ckpt_exists(dir, 1, "psd"));
  ck_assert(ckpt_exists(dir, 2, "psd.corrupt"));
  th_psd_stop(&p, SIGKILL, 5000);

  /* Truncated: renamed too, and the older one used. */
  ckpt_file(path, sizeof(path), dir, 3, "psd");
  ck_assert_int_eq(truncate(path, 100), 0);
  start_psd(&p, port, extra);
  ck_assert(th_log_contains(&p, "truncated"));
  ck_assert(ckpt_exists(dir, 3, "psd.corrupt"));
  rc_tool(&c, port);
  expect_sgd_state(&c, 1);
  rc_close(&c);
  th_psd_stop(&p, SIGKILL, 5000);

  /* A bad magic in the last one: all are proven corrupt, so psd starts
   * empty, and its next save takes a number above every corrupt file's. */
  ckpt_file(path, sizeof(path), dir, 1, "psd");
  ck_assert_int_eq(sh("printf 'X' | dd of=%s bs=1 conv=notrunc status=none", path), 0);
  start_psd(&p, port, extra);
  ck_assert(th_log_contains(&p, "bad magic"));
  ck_assert(th_log_contains(&p, "no valid checkpoint"));
  ck_assert(ckpt_exists(dir, 1, "psd.corrupt"));
  rc_tool(&c, port);
  ck_assert(pull_not_found(&c, "w"));
  rc_close(&c);
  stop_psd(&p);
  ck_assert(ckpt_exists(dir, 4, "psd"));
  ck_assert(ckpt_exists(dir, 1, "psd.corrupt") && ckpt_exists(dir, 2, "psd.corrupt") &&
            ckpt_exists(dir, 3, "psd.corrupt"));
  ck_assert_int_eq(sh("rm -rf %s %s.md5", dir, dir), 0);
}
END_TEST

START_TEST(prune_keeps_newest_valid) {
  char dir[256], a[512], b[512];
  fresh_dir(dir, sizeof(dir), "prune");
  const char *extra[] = {"--data-dir", dir, "--keep", "1", "--update-threads", "1", NULL};
  th_psd p;
  rc c;
  start_with_one_push(&p, extra, &c);
  checkpoint_ok(&c); /* ckpt 1 */
  /* A newer file this process did not write appears (another writer, an
   * operator's copy): whatever it is, it is not this process's to remove,
   * nor a reason to remove what this process writes. */
  ckpt_file(a, sizeof(a), dir, 1, "psd");
  ckpt_file(b, sizeof(b), dir, 9, "psd");
  ck_assert_int_eq(sh("cp %s %s", a, b), 0);
  sgd_push(&c);
  checkpoint_ok(&c); /* ckpt 2 */
  ck_assert_msg(ckpt_exists(dir, 2, "psd"), "pruning removed the checkpoint just written");
  ck_assert_msg(ckpt_exists(dir, 9, "psd"), "pruning removed a newer file");
  ck_assert_msg(!ckpt_exists(dir, 1, "psd"), "--keep 1 kept an older one");
  rc_close(&c);
  th_psd_stop(&p, SIGKILL, 5000);
  ck_assert_int_eq(sh("rm -rf %s", dir), 0);
}
END_TEST

/* ---- 4. the format: a file written before it was made explicitly LE --------------- */

static const char fixture_list[] = "127.0.0.1:7999";

static void fixture_grads(float *g0, float *g1, float *h0, float *h1, float *s0, float *s1) {
  for (int i = 0; i < 8; i++) {
    g0[i] = 0.1f * (float)(i + 1);
    g1[i] = -0.3f * (float)(i % 3);
    h0[i] = 0.05f * (float)(7 - i);
    h1[i] = 0.2f;
    s0[i] = (float)i;
    s1[i] = 2.0f;
  }
}

/* A tool and both ranks of a 2-worker sync job, connected as in the
 * fixture. */
static void fixture_clients(rc *t, rc *w0, rc *w1, int port) {
  open_rc(t, port);
  hello_as(t, fixture_list, -1, 0, -1, 0x2001, 0);
  open_rc(w0, port);
  hello_as(w0, fixture_list, 0, 2, 0, 0x1001, 0);
  open_rc(w1, port);
  hello_as(w1, fixture_list, 1, 2, 0, 0x1002, 0);
}

/* The fixture's history up to its checkpoint: "adam" (4x5, blocks of 8)
 * gets one round on blocks 0 and 2; "sgd" (8 zeros) has rank 0's push of
 * the next round pending. */
static void fixture_history(rc *t, rc *w0, rc *w1) {
  float g0[8], g1[8], h0[8], h1[8], s0[8], s1[8];
  fixture_grads(g0, g1, h0, h1, s0, s1);
  ps_tensor_spec s;
  ps_tensor_spec_init(&s, PS_INIT_GLOROT_UNIFORM, PS_OPT_ADAM);
  s.block_size = 8;
  uint64_t shape[2] = {4, 5};
  create_ok(t, "adam", shape, 2, &s);
  ps_tensor_spec_init(&s, PS_INIT_ZEROS, PS_OPT_SGD);
  s.optim.lr = 0.5;
  uint64_t shape1[1] = {8};
  create_ok(t, "sgd", shape1, 1, &s);
  push_nowait(w0, "adam", 0, g0, 8, 1, 0);
  push_nowait(w0, "adam", 2, g0, 4, 2, 0);
  ck_assert_uint_eq(push_ok(w1, "adam", 0, g1, 8, 1, 1, 0), 1);
  ck_assert_uint_eq(push_ok(w1, "adam", 2, g1, 4, 2, 1, 0), 1);
  ck_assert_uint_eq(block_reply(w0), 1);
  ck_assert_uint_eq(block_reply(w0), 1);
  push_nowait(w0, "sgd", 0, s0, 8, 3, 1);
  ping_ok(w0); /* the push above has been handled */
}

/* After the checkpoint: rank 0 resends its pending push, rank 1 completes
 * that round; one more round of "adam" block 0. */
static void fixture_after(rc *w0, rc *w1, int resend) {
  float g0[8], g1[8], h0[8], h1[8], s0[8], s1[8];
  fixture_grads(g0, g1, h0, h1, s0, s1);
  if (resend) push_nowait(w0, "sgd", 0, s0, 8, 3, 1);
  ping_ok(w0);
  ck_assert_uint_eq(push_ok(w1, "sgd", 0, s1, 8, 3, 1, 1), 1);
  ck_assert_uint_eq(block_reply(w0), 1);
  push_nowait(w0, "adam", 0, h0, 8, 4, 2);
  ck_assert_uint_eq(push_ok(w1, "adam", 0, h1, 8, 4, 1, 2), 2);
  ck_assert_uint_eq(block_reply(w0), 2);
}

/* Every block of both tensors, concatenated, with versions. */
static void fixture_pull_all(rc *t, float *out, uint64_t *vers) {
  size_t off = 0;
  for (uint64_t b = 0; b < 3; b++) {
    float *v;
    size_t n;
    vers[b] = pull_ok(t, "adam", b, &v, &n);
    memcpy(out + off, v, n * sizeof(float));
    off += n;
    free(v);
  }
  float *v;
  size_t n;
  vers[3] = pull_ok(t, "sgd", 0, &v, &n);
  memcpy(out + off, v, n * sizeof(float));
  free(v);
}

/* A shard on extra's data directory and the fixture's job on it: on a fresh
 * shard the history first, on a restored one rank 0's resend; then what
 * comes after the checkpoint. Every block into out and vers; the shard is
 * then killed. */
static void fixture_run(const char *const *extra, int fresh, float *out, uint64_t *vers) {
  th_psd p;
  start_psd(&p, 0, extra);
  rc t, w0, w1;
  fixture_clients(&t, &w0, &w1, p.port);
  if (fresh) fixture_history(&t, &w0, &w1);
  fixture_after(&w0, &w1, !fresh);
  fixture_pull_all(&t, out, vers);
  rc_close(&t);
  rc_close(&w0);
  rc_close(&w1);
  th_psd_stop(&p, SIGKILL, 5000);
}

/* Not a test: writes the fixture (run with PSD_BIN naming an old psd).
 * Inside a test case because the client's checks are Check's. */
static const char *fixture_out;

START_TEST(make_fixture) {
  char dir[256];
  fresh_dir(dir, sizeof(dir), "make-fixture");
  const char *extra[] = {"--data-dir", dir, "--update-threads", "1", NULL};
  th_psd p;
  start_psd(&p, 0, extra);
  rc t, w0, w1;
  fixture_clients(&t, &w0, &w1, p.port);
  fixture_history(&t, &w0, &w1);
  checkpoint_ok(&t);
  th_psd_stop(&p, SIGKILL, 5000);
  ck_assert_int_eq(sh("cp %s/ckpt-0000000000000001.psd %s && rm -rf %s", dir, fixture_out, dir),
                   0);
}
END_TEST

START_TEST(old_files_still_read) {
  char dir[256], fixture[512], path[512];
  snprintf(fixture, sizeof(fixture), "%s/data/ckpt-v1.psd", PSD_TESTS_DIR);
  fresh_dir(dir, sizeof(dir), "v1");
  ckpt_file(path, sizeof(path), dir, 1, "psd");
  ck_assert_int_eq(sh("cp %s %s", fixture, path), 0);
  const char *extra[] = {"--data-dir", dir, "--update-threads", "1", NULL};

  /* Restored, and written back in today's format (its one job becomes the
   * job "default": a JOB section); the next start reads that file. */
  th_psd p;
  start_psd(&p, 0, extra);
  stop_psd(&p);
  ckpt_file(path, sizeof(path), dir, 2, "psd");
  ck_assert_int_eq(sh("test -s %s && grep -q default %s", path, path), 0);

  /* Then the job goes on from it as it would have without a restart. */
  float got[28];
  uint64_t gotv[4];
  fixture_run(extra, 0, got, gotv);

  char ref[256];
  fresh_dir(ref, sizeof(ref), "v1-ref");
  const char *rextra[] = {"--data-dir", ref, "--update-threads", "1", NULL};
  float want[28];
  uint64_t wantv[4];
  fixture_run(rextra, 1, want, wantv);

  ck_assert_int_eq(memcmp(gotv, wantv, sizeof(gotv)), 0);
  ck_assert_uint_eq(gotv[0], 2);
  ck_assert_uint_eq(gotv[3], 1);
  ck_assert_int_eq(memcmp(got, want, sizeof(got)), 0);
  /* sgd: -0.5 * (s0 + s1) / 2 */
  for (int i = 0; i < 8; i++) ck_assert_float_eq(got[20 + i], -0.5f * ((float)i + 2.0f) / 2.0f);
  ck_assert_int_eq(sh("rm -rf %s %s", dir, ref), 0);
}
END_TEST

/* zlib's CRC-32, bit by bit. */
static uint32_t crc32_bits(const uint8_t *p, size_t n) {
  uint32_t c = 0xffffffffu;
  for (size_t i = 0; i < n; i++) {
    c ^= p[i];
    for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1)));
  }
  return ~c;
}

static uint64_t le(const uint8_t *p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; i++) v |= (uint64_t)p[i] << (8 * i);
  return v;
}

/* A checkpoint from a newer psd, as far as this one can tell: a spec names
 * an optimizer it does not know (checksums right). psd stops rather than
 * calling the file corrupt and starting from an older one. */
START_TEST(unknown_names_stop_psd) {
  char dir[256], fixture[512], path[512];
  snprintf(fixture, sizeof(fixture), "%s/data/ckpt-v1.psd", PSD_TESTS_DIR);
  fresh_dir(dir, sizeof(dir), "newer");
  ckpt_file(path, sizeof(path), dir, 1, "psd");
  ck_assert_int_eq(sh("cp %s %s", fixture, path), 0);
  FILE *f = fopen(fixture, "rb");
  ck_assert_ptr_nonnull(f);
  uint8_t buf[4096];
  size_t n = fread(buf, 1, sizeof(buf), f);
  fclose(f);
  int changed = 0;
  for (size_t off = 16; off + 16 <= n;) {
    uint32_t type = (uint32_t)le(buf + off, 4);
    uint64_t len = le(buf + off + 4, 8);
    uint8_t *pl = buf + off + 12;
    /* The tensor is named "adam" too: its optimizer's name is the last one. */
    uint8_t *last = NULL;
    for (uint64_t i = 0; type == 4 && !changed && i + 4 <= len; i++)
      if (memcmp(pl + i, "adam", 4) == 0) last = pl + i;
    if (last) memcpy(last, "adaz", 4), changed = 1;
    uint32_t c = crc32_bits(pl, len);
    for (int i = 0; i < 4; i++) pl[len + i] = (uint8_t)(c >> (8 * i));
    off += 12 + len + 4;
  }
  ck_assert(changed);
  ckpt_file(path, sizeof(path), dir, 2, "psd");
  f = fopen(path, "wb");
  ck_assert_uint_eq(fwrite(buf, 1, n, f), n);
  fclose(f);
  const char *extra[] = {"--data-dir", dir, "--update-threads", "1", NULL};
  refuses_to_start(NULL, extra, dir, "over a checkpoint it cannot read in full",
                   "unknown optimizer 'adaz'", "newer psd");
  ck_assert_int_eq(sh("rm -rf %s", dir), 0);
}
END_TEST

int main(int argc, char **argv) {
  spawned = mmap(NULL, MAX_SPAWNED * sizeof(pid_t), PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (spawned == MAP_FAILED) return 1;
  srandom((unsigned)getpid());
  Suite *s = suite_create("ckpt");
  TCase *tc = tcase_create("ckpt");
  tcase_set_timeout(tc, 180);
  tcase_add_unchecked_fixture(tc, NULL, kill_leftovers);
  if (argc == 3 && strcmp(argv[1], "--make-fixture") == 0) {
    fixture_out = argv[2];
    tcase_add_test(tc, make_fixture);
  } else {
    tcase_add_test(tc, writer_closes_inherited_fds);
    tcase_add_test(tc, kill9_during_save_then_restart);
    tcase_add_test(tc, restore_out_of_memory);
    tcase_add_test(tc, restore_unreadable);
    tcase_add_test(tc, corrupt_files_renamed_aside);
    tcase_add_test(tc, prune_keeps_newest_valid);
    tcase_add_test(tc, old_files_still_read);
    tcase_add_test(tc, unknown_names_stop_psd);
  }
  suite_add_tcase(s, tc);
  int failed = check_run(s);
  kill_leftovers();
  return failed;
}
