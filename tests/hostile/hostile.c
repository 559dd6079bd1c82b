/*
 * hostile.c -- the hostile-client suite's driver: the shards, the
 * sentinel, the legitimate job, the checks after every attack and the
 * table of loop stalls. See hostile.h.
 *
 * Three shards, each with tokens, --max-memory 256M and --stall-log-ms 1:
 *  - "sync": a sync job of 3 workers whose rank 2 has said goodbye (a dead
 *    rank); the attacks on identity, ranks, rounds, clocks, names, lanes;
 *  - "async": an async job of ranks 0 and 1 of 4096 workers
 *    (--max-workers 4096), short deadlines; the attacks on memory,
 *    connections and the loop, the vast tensor that fills memory last;
 *  - "fds": an async job, the shard started with 64 file descriptors.
 * Every attack of a shard runs against the same daemon, one after another:
 * what one leaves behind, the next meets.
 */
#include "hostile.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "auth.h"

#ifndef PSD_HOSTILE_SANITIZED
#define PSD_HOSTILE_SANITIZED 0
#endif

static const char *current = "setup";  /* the attack running, for failures */
static pid_t live_daemons[8];

/* ---- failing --------------------------------------------------------------------- */

void h_fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "hostile: FAIL in %s: ", current);
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  for (int i = 0; i < 8; i++)
    if (live_daemons[i] > 0) kill(live_daemons[i], SIGKILL);
  exit(1);
}

void h_expect_error(Psd__Response *resp, Psd__Code code, const char *needle, const char *what) {
  char why[700];
  int ok = rc_is_error(resp, code, needle, why, sizeof(why));
  if (resp != NULL) psd__response__free_unpacked(resp, NULL);
  H_CHECK(ok, "%s: expected error %d: %s", what, (int)code, why);
}

void h_expect_body(Psd__Response *resp, Psd__Response__BodyCase body, const char *what) {
  H_CHECK(resp != NULL, "%s: no reply (the connection closed)", what);
  H_CHECK(resp->body_case == body, "%s: reply body %d, not %d%s%s", what, (int)resp->body_case,
          (int)body, resp->body_case == PSD__RESPONSE__BODY_ERROR ? ": " : "",
          resp->body_case == PSD__RESPONSE__BODY_ERROR ? resp->error->message : "");
}

void h_expect_closed(rc *c, const char *what) {
  Psd__Response *resp = rc_recv(c, NULL, NULL);
  if (resp != NULL && resp->body_case == PSD__RESPONSE__BODY_ERROR) {
    psd__response__free_unpacked(resp, NULL);
    resp = rc_recv(c, NULL, NULL);
  }
  int body = resp ? (int)resp->body_case : 0;
  if (resp) psd__response__free_unpacked(resp, NULL);
  H_CHECK(body == 0, "%s: the connection should be closed, a reply came (body %d)", what, body);
}

/* ---- tokens and clients ---------------------------------------------------------- */

static char tok_path[PSA_NROLES][512];
static char tok_val[PSA_NROLES][64];

static void make_tokens(void) {
  char dir[450];
  snprintf(dir, sizeof(dir), "%s/tokens", th_tmpdir());
  H_CHECK(mkdir(dir, 0700) == 0, "mkdir %s: %s", dir, strerror(errno));
  for (int r = 0; r < PSA_NROLES; r++) {
    uint8_t raw[16];
    psa_random(raw, sizeof(raw));
    for (int i = 0; i < 16; i++) snprintf(tok_val[r] + 2 * i, 3, "%02x", raw[i]);
    snprintf(tok_path[r], sizeof(tok_path[r]), "%s/%s.token", dir, psa_role_name(r));
    int fd = open(tok_path[r], O_WRONLY | O_CREAT | O_EXCL, 0600);
    H_CHECK(fd >= 0, "token file %s: %s", tok_path[r], strerror(errno));
    H_CHECK(write(fd, tok_val[r], strlen(tok_val[r])) == (ssize_t)strlen(tok_val[r]), "write");
    close(fd);
  }
}

const char *h_token(int role) { return tok_val[role]; }
const char *h_token_path(int role) { return tok_path[role]; }

const char *h_addr(void) {
  static char a[32];
  static int next = 20;
  snprintf(a, sizeof(a), "127.0.0.%d", next);
  next = next >= 250 ? 20 : next + 1;
  return a;
}

void h_open(rc *c, const h_scene *s, const char *from) {
  H_CHECK(rc_open_from(c, s->d.port, from) >= 0, "cannot connect to the shard from %s: %s",
          from ? from : "127.0.0.1", strerror(errno));
}

rc_hello_args h_args(const h_scene *s, int role, int rank) {
  rc_hello_args a = rc_hello_defaults();
  a.identity = "hostile";
  a.role = role;
  a.token = role >= 0 ? h_token(role) : NULL;
  a.rank = rank;
  a.nw = s->nw;
  a.staleness = s->staleness;
  return a;
}

void h_hello_ok(rc *c, const rc_hello_args *a, const char *what) {
  Psd__Response *resp = rc_hello(c, a);
  h_expect_body(resp, PSD__RESPONSE__BODY_HELLO, what);
  psd__response__free_unpacked(resp, NULL);
}

void h_tool(rc *c, const h_scene *s, int role, const char *from) {
  h_open(c, s, from);
  rc_hello_args a = h_args(s, role, -1);
  h_hello_ok(c, &a, "a tool's hello");
}

/* ---- the shard's figures ---------------------------------------------------------- */

char *h_stats(const h_scene *s) {
  rc c;
  h_tool(&c, s, PSA_ADMIN, NULL);
  char *json = rc_stats(&c);
  rc_close(&c);
  H_CHECK(json != NULL, "no stats from the shard");
  return json;
}

double h_stat(const h_scene *s, const char *obj, const char *key) {
  char *json = h_stats(s);
  int found;
  double v = rc_json_num(json, obj, key, &found);
  if (!found) {
    fprintf(stderr, "%s\n", json);
    h_fail("no %s.%s in the stats", obj ? obj : "", key);
  }
  free(json);
  return v;
}

void h_sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

double h_wait_stat_ge(const h_scene *s, const char *obj, const char *key, double want) {
  double v = 0;
  for (int waited = 0; waited <= H_WAIT_MS; waited += 20) {
    v = h_stat(s, obj, key);
    if (v >= want) return v;
    h_sleep_ms(20);
  }
  h_fail("stats %s.%s stayed at %g, below %g", obj ? obj : "", key, v, want);
}

int h_log_count(const h_scene *s, const char *needle) {
  FILE *f = fopen(s->d.log, "r");
  if (f == NULL) return 0;
  char line[4096];
  int n = 0;
  while (fgets(line, sizeof(line), f)) n += strstr(line, needle) != NULL;
  fclose(f);
  return n;
}

void h_wait_log_count(const h_scene *s, const char *needle, int n) {
  for (int waited = 0; waited <= H_WAIT_MS; waited += 20) {
    if (h_log_count(s, needle) >= n) return;
    h_sleep_ms(20);
  }
  h_fail("the shard's log never held %d lines saying '%s'", n, needle);
}

uint64_t h_vmhwm(const h_scene *s) {
  long kb = th_proc_kb(s->d.pid, "VmHWM");
  return kb > 0 ? (uint64_t)kb << 10 : 0;
}

int h_wait_closed(int fd) {
  static char buf[65536];
  for (int waited = 0; waited <= H_WAIT_MS; waited += 50) {
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, 50) > 0) {
      ssize_t n = recv(fd, buf, sizeof(buf), 0);
      if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) return 1;
    }
  }
  return 0;
}

/* ---- the legitimate job ---------------------------------------------------------- */

static float grad_of[2][H_W_N];

void h_legit_push(h_scene *s, int r) {
  if (s->has_pending[r]) return;
  int rc = ps_push_pull_async(s->w[r], H_W, grad_of[r], s->wbuf[r], H_W_N, NULL, NULL,
                              &s->pending[r]);
  H_CHECK(rc == 0, "legitimate rank %d: push-pull not started: %s", r, ps_errmsg(s->w[r]));
  s->has_pending[r] = 1;
}

void h_legit_finish(h_scene *s) {
  for (int r = 0; r < 2; r++) h_legit_push(s, r);
  uint64_t ver[2];
  for (int r = 0; r < 2; r++) {
    int rc = ps_wait(s->w[r], s->pending[r], &ver[r]);
    s->has_pending[r] = 0;
    H_CHECK(rc == 0, "legitimate rank %d: push-pull of step %llu failed: %s (%s)", r,
            (unsigned long long)s->steps + 1, ps_strerror(rc), ps_errmsg(s->w[r]));
  }
  s->steps++;
  /* Exactly what the job's own gradients make (SGD, lr 1, from zeros):
   * sync averages 1 and 3 into one update of 2 per step; async applies
   * both (4 per step), so the pull after both is the check. */
  float want;
  uint64_t want_ver;
  if (s->staleness == 0) {
    want = -2.0f * (float)s->steps;
    want_ver = s->steps;
    for (int r = 0; r < 2; r++)
      for (int i = 0; i < H_W_N; i++)
        H_CHECK(s->wbuf[r][i] == want && ver[r] == want_ver,
                "legitimate rank %d after step %llu: w[%d] = %g at version %llu, expected %g "
                "at version %llu (another gradient got into the round)",
                r, (unsigned long long)s->steps, i, s->wbuf[r][i], (unsigned long long)ver[r],
                want, (unsigned long long)want_ver);
  } else {
    want = -4.0f * (float)s->steps;
    want_ver = 2 * s->steps;
    uint64_t v;
    int rc = ps_pull(s->w[0], H_W, s->wbuf[0], H_W_N, &v);
    H_CHECK(rc == 0, "legitimate rank 0: pull failed: %s", ps_errmsg(s->w[0]));
    for (int i = 0; i < H_W_N; i++)
      H_CHECK(s->wbuf[0][i] == want && v == want_ver,
              "legitimate job after step %llu: w[%d] = %g at version %llu, expected %g at "
              "version %llu (another gradient got in)",
              (unsigned long long)s->steps, i, s->wbuf[0][i], (unsigned long long)v, want,
              (unsigned long long)want_ver);
  }
  for (int r = 0; r < 2; r++) {
    int64_t ck = ps_clock(s->w[r]);
    H_CHECK(ck >= 0, "legitimate rank %d: clock failed: %s", r, ps_errmsg(s->w[r]));
  }
}

void h_legit_step(h_scene *s) { h_legit_finish(s); }

/* The session a worker rank got, from the shard's log (the last one). */
static uint64_t session_of_rank(const h_scene *s, int rank) {
  FILE *f = fopen(s->d.log, "r");
  char line[4096], want[64];
  snprintf(want, sizeof(want), "(worker, rank %d,", rank);
  uint64_t sid = 0;
  while (f && fgets(line, sizeof(line), f)) {
    char *p = strstr(line, ": new session ");
    if (p && strstr(line, want)) sid = strtoull(p + strlen(": new session "), NULL, 16);
  }
  if (f) fclose(f);
  return sid;
}

static ps_client *legit_connect(h_scene *s, int rank) {
  ps_options o;
  ps_options_init(&o);
  o.identity = "legitimate worker";
  o.rank = rank;
  o.num_workers = s->nw;
  o.staleness = s->staleness;
  o.token_file = h_token_path(PSA_WORKER);
  o.role = "worker";
  o.connect_timeout_ms = H_WAIT_MS;
  o.op_timeout_ms = H_WAIT_MS; /* liveness, not speed */
  o.lane_mb = 1;
  ps_client *c = NULL;
  int rc = ps_connect(&c, s->d.addr, &o);
  H_CHECK(rc == 0, "legitimate rank %d cannot connect: %s", rank, ps_last_error());
  return c;
}

/* Ranks 0 and 1 join; in a job of 3, rank 2 joins and says goodbye (a dead
 * rank, whose round share nobody may claim). */
static void legit_join(h_scene *s) {
  for (int r = 0; r < 2; r++) {
    s->w[r] = legit_connect(s, r);
    s->wbuf[r] = calloc(H_W_N, sizeof(float));
    s->w_sessions[r] = session_of_rank(s, r);
    H_CHECK(s->w_sessions[r] != 0, "no session logged for rank %d", r);
  }
  if (s->nw == 3) {
    ps_client *dead = legit_connect(s, 2);
    ps_close(dead);
    h_wait_log_count(s, "worker rank 2 left (it said goodbye)", 1);
  }
  s->joined = 1;
}

/* ---- the shards ---------------------------------------------------------------------- */

static void track(pid_t pid, int on) {
  for (int i = 0; i < 8; i++) {
    if (on && live_daemons[i] == 0) {
      live_daemons[i] = pid;
      return;
    }
    if (!on && live_daemons[i] == pid) live_daemons[i] = 0;
  }
}

/* Start a shard; `nofile` > 0 starts it with that descriptor limit. */
static void scene_start(h_scene *s, const char *name, int nw, int staleness,
                        const char *const *extra, int nofile, int data_dir) {
  memset(s, 0, sizeof(*s));
  s->name = name;
  s->nw = nw;
  s->staleness = staleness;
  s->max_memory = 256ull << 20;
  char tf[PSA_NROLES][600];
  const char *argv[48];
  int n = 0;
  for (int r = 0; r < PSA_NROLES; r++) {
    snprintf(tf[r], sizeof(tf[r]), "%s=%s", psa_role_name(r), h_token_path(r));
    argv[n++] = "--token-file";
    argv[n++] = tf[r];
  }
  argv[n++] = "--max-memory";
  argv[n++] = "256M";
  argv[n++] = "--stall-log-ms";
  argv[n++] = "1";
  argv[n++] = "--worker-timeout";
  argv[n++] = "600";
  if (data_dir) {
    snprintf(s->data_dir, sizeof(s->data_dir), "%s/data-%s", th_tmpdir(), name);
    argv[n++] = "--data-dir";
    argv[n++] = s->data_dir;
  }
  for (int i = 0; extra && extra[i] && n < 46; i++) argv[n++] = extra[i];
  argv[n] = NULL;
  struct rlimit old, low;
  if (nofile > 0) {
    H_CHECK(getrlimit(RLIMIT_NOFILE, &old) == 0, "getrlimit");
    low = old;
    low.rlim_cur = (rlim_t)nofile; /* inherited by the daemon, as under prlimit */
    H_CHECK(setrlimit(RLIMIT_NOFILE, &low) == 0, "setrlimit");
  }
  int started = th_psd_start(&s->d, 0, argv);
  if (nofile > 0) H_CHECK(setrlimit(RLIMIT_NOFILE, &old) == 0, "setrlimit back");
  H_CHECK(started == 0, "the %s shard did not start", name);
  track(s->d.pid, 1);

  /* The sentinel and the job's tensor, made by an admin (whose first
   * tensor request sets the shard's server list). */
  rc adm;
  h_tool(&adm, s, PSA_ADMIN, NULL);
  ps_tensor_spec spec;
  ps_tensor_spec_init(&spec, PS_INIT_NORMAL, PS_OPT_ADAM);
  spec.init.seed = 7;
  uint64_t shape[1] = {H_SENTINEL_N};
  Psd__Response *resp = rc_create(&adm, H_SENTINEL, shape, 1, &spec);
  h_expect_body(resp, PSD__RESPONSE__BODY_INFO, "create the sentinel");
  psd__response__free_unpacked(resp, NULL);
  ps_tensor_spec_init(&spec, PS_INIT_ZEROS, PS_OPT_SGD);
  spec.optim.lr = 1;
  shape[0] = H_W_N;
  resp = rc_create(&adm, H_W, shape, 1, &spec);
  h_expect_body(resp, PSD__RESPONSE__BODY_INFO, "create the job's tensor");
  psd__response__free_unpacked(resp, NULL);
  resp = rc_pull(&adm, H_SENTINEL, 0, &s->sentinel, &s->sentinel_bytes);
  h_expect_body(resp, PSD__RESPONSE__BODY_BLOCK, "pull the sentinel");
  s->sentinel_version = resp->block->version;
  psd__response__free_unpacked(resp, NULL);
  H_CHECK(s->sentinel_bytes == H_SENTINEL_N * sizeof(float), "sentinel of %zu bytes",
          s->sentinel_bytes);
  rc_close(&adm);
}

static void scene_stop(h_scene *s) {
  current = "shutdown";
  for (int r = 0; r < 2; r++) {
    if (s->w[r]) ps_close(s->w[r]);
    free(s->wbuf[r]);
  }
  free(s->sentinel);
  int st = th_psd_stop(&s->d, SIGTERM, H_WAIT_MS);
  track(s->d.pid, 0);
  /* PSD_HOSTILE_LOGS=DIR keeps each shard's log (the harness removes its
   * directory when the suite passes): the turns it logged, for a study. */
  const char *keep = getenv("PSD_HOSTILE_LOGS");
  if (keep != NULL && keep[0]) {
    char cmd[1400];
    snprintf(cmd, sizeof(cmd), "cp '%s' '%s/hostile-%s.log'", s->d.log, keep, s->name);
    if (system(cmd) != 0) fprintf(stderr, "hostile: could not copy %s to %s\n", s->d.log, keep);
  }
  H_CHECK(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0,
          "the %s shard did not stop cleanly after its attacks (status %d; log %s)", s->name,
          st, s->d.log);
}

/* ---- after every attack ------------------------------------------------------------- */

/* (a) the sentinel, through a new connection. */
static void check_sentinel(h_scene *s) {
  rc c;
  h_tool(&c, s, PSA_READER, NULL);
  float *v = NULL;
  size_t n = 0;
  Psd__Response *resp = rc_pull(&c, H_SENTINEL, 0, &v, &n);
  h_expect_body(resp, PSD__RESPONSE__BODY_BLOCK, "pull the sentinel");
  uint64_t ver = resp->block->version;
  psd__response__free_unpacked(resp, NULL);
  rc_close(&c);
  H_CHECK(n == s->sentinel_bytes && ver == s->sentinel_version &&
              memcmp(v, s->sentinel, n) == 0,
          "the sentinel changed: %zu bytes at version %llu (was %zu at %llu)%s", n,
          (unsigned long long)ver, s->sentinel_bytes, (unsigned long long)s->sentinel_version,
          n == s->sentinel_bytes && memcmp(v, s->sentinel, n) ? ", values differ" : "");
  free(v);
}

/* (c) the peak RSS. */
static uint64_t check_rss(h_scene *s) {
  uint64_t hwm = h_vmhwm(s);
  H_CHECK(hwm > 0, "no VmHWM for pid %d (did the shard die?)", (int)s->d.pid);
  /* Sanitizers' shadow memory is the program's, not psd's: measured, not
   * bounded, there. */
  if (!PSD_HOSTILE_SANITIZED)
    H_CHECK(hwm <= s->max_memory + H_RSS_SLACK,
            "peak RSS %.1f MiB is over --max-memory %.0f MiB + %.0f MiB",
            (double)hwm / 1048576.0, (double)s->max_memory / 1048576.0,
            (double)H_RSS_SLACK / 1048576.0);
  return hwm;
}

/* The worst turn in the shard's log from byte `off` on (--stall-log-ms 1
 * logs every turn of 1 ms or more, with its CPU time on the loop thread):
 * the worst by the clock, the worst by CPU time, and how many turns took
 * 10 ms or more of either. */
static double worst_logged(const h_scene *s, long off, double *worst_cpu, int *over10) {
  FILE *f = fopen(s->d.log, "r");
  double worst = 0;
  *worst_cpu = 0;
  *over10 = 0;
  if (f == NULL) return 0;
  fseek(f, off, SEEK_SET);
  char line[4096];
  static const char key[] = "the event loop was busy for ", cpu_key[] = "in one turn (";
  while (fgets(line, sizeof(line), f)) {
    char *p = strstr(line, key);
    if (p == NULL) continue;
    double ms = strtod(p + strlen(key), NULL);
    char *q = strstr(p, cpu_key);
    double cpu = q ? strtod(q + strlen(cpu_key), NULL) : 0;
    if (ms > worst) worst = ms;
    if (cpu > *worst_cpu) *worst_cpu = cpu;
    *over10 += ms >= 10.0;
  }
  fclose(f);
  return worst;
}

static long log_size(const h_scene *s) {
  struct stat st;
  return stat(s->d.log, &st) == 0 ? (long)st.st_size : 0;
}

typedef struct {
  const char *scene, *attack;
  double worst_ms;       /* from the log: the attack and the checks after it */
  double worst_cpu_ms;   /* the same, the loop thread's CPU time */
  int over10;
  double stats_worst_ms; /* the shard's own worst_stall_ms so far */
  uint64_t hwm, used;
} h_row;

static h_row rows[64];
static int nrows;

typedef struct {
  const char *name;
  h_attack_fn fn;
} h_attack;

static void run_attack(h_scene *s, const h_attack *a) {
  current = a->name;
  long off = log_size(s);
  printf("hostile: [%s] %s\n", s->name, a->name);
  fflush(stdout);
  a->fn(s);
  int st;
  H_CHECK(waitpid(s->d.pid, &st, WNOHANG) == 0, "the shard exited (status %d; log %s)", st,
          s->d.log);
  check_sentinel(s);
  if (!s->joined) legit_join(s);
  h_legit_step(s);
  h_row *r = &rows[nrows++];
  r->scene = s->name;
  r->attack = a->name;
  r->hwm = check_rss(s);
  /* The stats request is the last round trip: every turn before it has
   * been logged. */
  char *json = h_stats(s);
  r->stats_worst_ms = rc_json_num(json, "loop", "worst_stall_ms", NULL);
  r->used = (uint64_t)rc_json_num(json, "memory", "used", NULL);
  free(json);
  r->worst_ms = worst_logged(s, off, &r->worst_cpu_ms, &r->over10);
  printf("hostile: [%s] %s: sentinel intact, the job at step %llu, peak RSS %.1f MiB, "
         "worst turn %.2f ms\n",
         s->name, a->name, (unsigned long long)s->steps, (double)r->hwm / 1048576.0,
         r->worst_ms);
  fflush(stdout);
}

/* PSD_HOSTILE_ONLY=NAME[,NAME...] runs only those attacks (each scene is
 * still set up): to study one, e.g. under perf. */
static int wanted(const char *name) {
  const char *only = getenv("PSD_HOSTILE_ONLY");
  if (only == NULL || only[0] == '\0') return 1;
  size_t n = strlen(name);
  for (const char *p = strstr(only, name); p; p = strstr(p + 1, name))
    if ((p == only || p[-1] == ',') && (p[n] == '\0' || p[n] == ',')) return 1;
  return 0;
}

static void run_scene(h_scene *s, const h_attack *attacks, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (wanted(attacks[i].name)) run_attack(s, &attacks[i]);
}

static void print_table(void) {
  printf("\nhostile: the worst event-loop turn per attack, from the shard's log (--stall-log-ms "
         "1; the attack and the checks after it):\n"
         "by the clock, and the loop thread's CPU time of its worst turn (the rest of a turn "
         "is waiting for a CPU on a loaded machine);\n"
         "the shard's own worst_stall_ms so far (stats JSON); its peak RSS and memory in "
         "use\n\n");
  printf("%-7s %-24s %9s %9s %7s %12s %10s %9s\n", "shard", "attack", "worst ms", "cpu ms",
         ">=10ms", "stats worst", "VmHWM MiB", "used MiB");
  double overall = 0, overall_cpu = 0, stats_overall = 0;
  for (int i = 0; i < nrows; i++) {
    h_row *r = &rows[i];
    char w[32], cpu[32];
    if (r->worst_ms > 0) snprintf(w, sizeof(w), "%.2f", r->worst_ms);
    else snprintf(w, sizeof(w), "<1");
    if (r->worst_cpu_ms > 0) snprintf(cpu, sizeof(cpu), "%.2f", r->worst_cpu_ms);
    else snprintf(cpu, sizeof(cpu), "<1");
    printf("%-7s %-24s %9s %9s %7d %12.2f %10.1f %9.1f\n", r->scene, r->attack, w, cpu,
           r->over10, r->stats_worst_ms, (double)r->hwm / 1048576.0,
           (double)r->used / 1048576.0);
    if (r->worst_ms > overall) overall = r->worst_ms;
    if (r->worst_cpu_ms > overall_cpu) overall_cpu = r->worst_cpu_ms;
    if (r->stats_worst_ms > stats_overall) stats_overall = r->stats_worst_ms;
  }
  printf("\nhostile: worst turn over every attack: %.2f ms by the clock, %.2f ms of CPU (the "
         "shards' stats: %.2f ms, start-up and set-up included)\n",
         overall, overall_cpu, stats_overall);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  setvbuf(stdout, NULL, _IOLBF, 0);
  H_CHECK(psa_init() == 0, "libsodium");
  for (int r = 0; r < 2; r++)
    for (int i = 0; i < H_W_N; i++) grad_of[r][i] = r == 0 ? 1.0f : 3.0f;
  make_tokens();

  static const h_attack sync_attacks[] = {
      {"first_hello_65536", attack_first_hello_65536},
      {"anonymous_writes", attack_anonymous_writes},
      {"stranger_server_list", attack_stranger_server_list},
      {"second_rank_1", attack_second_rank_1},
      {"impostor_dead_rank", attack_impostor_dead_rank},
      {"clock_max", attack_clock_max},
      {"worker_id_seq_max", attack_worker_id_seq_max},
      {"lane_requests", attack_lane_requests},
      {"bad_names", attack_bad_names},
  };
  h_scene s;
  scene_start(&s, "sync", 3, 0, NULL, 0, 1);
  if (!wanted("first_hello_65536")) legit_join(&s); /* it joins after that attack */
  run_scene(&s, sync_attacks, sizeof(sync_attacks) / sizeof(sync_attacks[0]));
  scene_stop(&s);

  static const h_attack async_attacks[] = {
      {"huge_creates", attack_huge_creates},
      {"stalled_64mib_frames", attack_stalled_64mib_frames},
      {"never_read_24", attack_never_read},
      {"pipelined_16mib_pulls", attack_pipelined_16mib_pulls},
      {"idle_2000", attack_idle_2000},
      {"slowloris", attack_slowloris},
      {"rehello_4096_barriers", attack_rehello_4096_barriers},
      {"vast_pushes", attack_vast_pushes},
  };
  const char *async_extra[] = {"--max-workers", "4096", "--frame-timeout", "2",
                               "--hello-timeout", "3", "--idle-timeout", "3", NULL};
  scene_start(&s, "async", 4096, -1, async_extra, 0, 0);
  s.joined = 0;
  legit_join(&s);
  run_scene(&s, async_attacks, sizeof(async_attacks) / sizeof(async_attacks[0]));
  scene_stop(&s);

  static const h_attack fd_attacks[] = {{"fd_exhaustion", attack_fd_exhaustion}};
  const char *fd_extra[] = {"--max-clients", "1000", NULL};
  scene_start(&s, "fds", 2, -1, fd_extra, 64, 0);
  legit_join(&s);
  run_scene(&s, fd_attacks, 1);
  scene_stop(&s);

  print_table();
  printf("hostile: every attack refused or bounded; sentinel intact, the job served, RSS "
         "within the ceiling after each\n");
  return 0;
}
