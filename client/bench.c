/*
 * bench.c -- psd-bench: throughput and latency of psd through the real
 * client library, beside a raw loopback TCP reference measured in the same
 * run. A benchmark prints figures; it asserts nothing.
 *
 *   psd-bench [--psd PATH] [--quick] [--seconds S] [--csv FILE]
 *             [--python PYTHON [--rounds N]]
 *   psd-bench [--psd PATH] --checkpoint-gb 1     (client pause during a save)
 *   psd-bench [--psd PATH] --sparse [--seconds S] (sparse rows beside dense)
 *   psd-bench [--psd PATH] --checkpoint-rows 1e7 (the same pause, a 10 M-row table)
 *
 * --python PYTHON adds the psd Python package's rows: its worker loop
 * (python/psd/bench.py, run as `PYTHON -m psd.bench`) against the C one on
 * the target configurations, interleaved N times (default 5), with the
 * differences.
 *
 * For each configuration (shards x workers x tensor size x mode x pipeline
 * depth) it starts the shards (psd processes on ephemeral loopback ports,
 * Adam on the server), forks the workers (each its own process with its own
 * client handle), runs the operation for a fixed time and prints
 *   ops/s, GB/s of gradient/values moved per direction, p50/p99 latency
 *   (depth 1), and the ratio of GB/s to the raw TCP reference.
 * The reference is one process writing 4 MiB chunks over a loopback TCP
 * socket to another that reads them (no copy beyond the kernel's).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helper.h"
#include "psd.h"
#include "psmath.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double_early(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* ---- raw TCP references ------------------------------------------------------
 * Each runs between two of the benchmark's own processes over loopback: the
 * child runs `serve` on its end of the connection, the parent measures. */

#define REF_CHUNK (4u << 20)

static int recv_all(int s, char *buf, size_t n) {
  for (size_t got = 0; got < n;) {
    ssize_t k = recv(s, buf + got, n - got, 0);
    if (k <= 0) return -1;
    got += (size_t)k;
  }
  return 0;
}

static int send_all(int s, const char *buf, size_t n) {
  for (size_t off = 0; off < n;) {
    ssize_t k = send(s, buf + off, n - off, 0);
    if (k <= 0) return -1;
    off += (size_t)k;
  }
  return 0;
}

/* Fork a child that accepts one loopback connection and runs serve() on it;
 * return the parent's connected socket (TCP_NODELAY), or -1. */
static int loopback_pair(void (*serve)(int), pid_t *child) {
  int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t al = sizeof(a);
  if (bind(ls, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(ls, 1) != 0) return -1;
  getsockname(ls, (struct sockaddr *)&a, &al);
  *child = fork();
  if (*child == 0) {
    int s = accept(ls, NULL, NULL);
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    serve(s);
    _exit(0);
  }
  close(ls);
  int s = socket(AF_INET, SOCK_STREAM, 0);
  if (connect(s, (struct sockaddr *)&a, sizeof(a)) != 0) return -1;
  setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return s;
}

static void serve_sink(int s) {
  char *buf = malloc(REF_CHUNK);
  while (recv(s, buf, REF_CHUNK, 0) > 0) {
  }
}

static void serve_echo_chunk(int s) {
  char *buf = malloc(REF_CHUNK);
  while (recv_all(s, buf, REF_CHUNK) == 0 && send_all(s, buf, REF_CHUNK) == 0) {
  }
}

static void serve_echo_4k(int s) {
  char buf[4096];
  while (recv_all(s, buf, sizeof(buf)) == 0 && send_all(s, buf, sizeof(buf)) == 0) {
  }
}

/* One way: GB/s written with 4 MiB writes. */
static double tcp_reference(double seconds) {
  pid_t pid;
  int s = loopback_pair(serve_sink, &pid);
  if (s < 0) return 0;
  char *buf = malloc(REF_CHUNK);
  memset(buf, 1, REF_CHUNK);
  uint64_t bytes = 0;
  double t0 = now_s(), t = 0;
  do {
    if (send_all(s, buf, REF_CHUNK) != 0) break;
    bytes += REF_CHUNK;
    t = now_s();
  } while (t - t0 < seconds);
  double gbs = (double)bytes / (now_s() - t0) / 1e9;
  close(s);
  waitpid(pid, NULL, 0);
  free(buf);
  return gbs;
}

/* The same as a round trip: send 4 MiB, get 4 MiB back (the shape of a
 * push-pull with no work on the far side). GB/s of one direction. */
static double tcp_echo_reference(double seconds) {
  pid_t pid;
  int s = loopback_pair(serve_echo_chunk, &pid);
  if (s < 0) return 0;
  char *buf = malloc(REF_CHUNK);
  memset(buf, 1, REF_CHUNK);
  uint64_t trips = 0;
  double t0 = now_s(), t = 0;
  do {
    if (send_all(s, buf, REF_CHUNK) != 0 || recv_all(s, buf, REF_CHUNK) != 0) break;
    trips++;
    t = now_s();
  } while (t - t0 < seconds);
  double gbs = (double)trips * REF_CHUNK / (now_s() - t0) / 1e9;
  close(s);
  waitpid(pid, NULL, 0);
  free(buf);
  return gbs;
}

/* The latency floor: p50 of a 4 KB ping-pong. */
static double tcp_pingpong_p50_us(int n) {
  pid_t pid;
  int s = loopback_pair(serve_echo_4k, &pid);
  if (s < 0) return 0;
  char buf[4096];
  memset(buf, 1, sizeof(buf));
  double *lat = malloc((size_t)n * sizeof(double));
  int done = 0;
  for (; done < n; done++) {
    double t0 = now_s();
    if (send_all(s, buf, sizeof(buf)) != 0 || recv_all(s, buf, sizeof(buf)) != 0) break;
    lat[done] = (now_s() - t0) * 1e6;
  }
  close(s);
  waitpid(pid, NULL, 0);
  qsort(lat, (size_t)done, sizeof(double), cmp_double_early);
  double p50 = done ? lat[done / 2] : 0;
  free(lat);
  return p50;
}

/* ---- shards -------------------------------------------------------------------- */

typedef struct {
  pid_t pid;
  int port;
} shard;

static const char *psd_path = "./server/psd";

static const char *shard_data_dir = NULL;

static int start_shard(shard *s) {
  char log[64];
  snprintf(log, sizeof(log), "/tmp/psd-bench-%d.log", (int)getpid());
  int fds[2];
  if (pipe(fds) != 0) return -1;
  pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], 2);
    close(fds[0]);
    if (shard_data_dir)
      execl(psd_path, psd_path, "--listen", "127.0.0.1:0", "--log-level", "info", "--data-dir",
            shard_data_dir, (char *)NULL);
    else
      execl(psd_path, psd_path, "--listen", "127.0.0.1:0", "--log-level", "info", (char *)NULL);
    _exit(127);
  }
  close(fds[1]);
  s->pid = pid;
  s->port = 0;
  FILE *f = fdopen(fds[0], "r");
  char line[512];
  while (fgets(line, sizeof(line), f)) {
    char *p = strstr(line, "listening on 127.0.0.1:");
    if (p) {
      s->port = atoi(p + strlen("listening on 127.0.0.1:"));
      break;
    }
  }
  /* Keep draining its log in a child so the daemon never blocks on it. */
  if (fork() == 0) {
    while (fgets(line, sizeof(line), f))
      if (strstr(line, "paused")) { fputs(line, stdout); fflush(stdout); } /* its pause */
    _exit(0);
  }
  fclose(f);
  return s->port > 0 ? 0 : -1;
}

static void stop_shard(shard *s) {
  kill(s->pid, SIGTERM);
  waitpid(s->pid, NULL, 0);
}

/* ---- one worker -------------------------------------------------------------------- */

enum { M_PUSH, M_PULL, M_PUSHPULL };
static const char *mode_names[] = {"push", "pull", "push-pull"};

typedef struct {
  double ops_per_s;
  double p50_us, p99_us;
} wresult;

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* Run `mode` on tensor "bench" for `seconds`, `depth` operations in flight. */
static int run_worker(const char *servers, int mode, uint64_t n, int depth, double seconds,
                      wresult *out) {
  ps_client *c;
  ps_options o;
  ps_options_init(&o);
  o.rank = -1;
  if (ps_connect(&c, servers, &o) != 0) {
    fprintf(stderr, "psd-bench: connect: %s\n", ps_last_error());
    return -1;
  }
  ps_tensor_spec spec;
  ps_tensor_spec_init(&spec, PS_INIT_GLOROT_UNIFORM, PS_OPT_ADAM);
  uint64_t shape[1] = {n};
  if (ps_create(c, "bench", shape, 1, &spec) != 0) {
    fprintf(stderr, "psd-bench: create: %s\n", ps_errmsg(c));
    ps_close(c);
    return -1;
  }
  float *g = aligned_alloc(64, ((n * 4 + 63) / 64) * 64 * (size_t)depth);
  float *v = aligned_alloc(64, ((n * 4 + 63) / 64) * 64 * (size_t)depth);
  for (uint64_t i = 0; i < n * (uint64_t)depth; i++) g[i] = 1e-3f * (float)((int)(i % 13) - 6);
  size_t maxlat = 1 << 22, nlat = 0;
  double *lat = depth == 1 ? malloc(maxlat * sizeof(double)) : NULL;
  ps_ticket *tk = calloc((size_t)depth, sizeof(*tk));
  double *t_issue = calloc((size_t)depth, sizeof(double));
  uint64_t ops = 0;
  int rc = 0;

  double t0 = now_s(), t = t0;
  /* Warm up one round trip first (connections, lazy block init). */
  ps_pull(c, "bench", v, n, NULL);
  t0 = now_s();
  int inflight = 0, slot = 0;
  while (rc == 0) {
    t = now_s();
    int stop = t - t0 >= seconds;
    if (!stop && inflight < depth) {
      float *gs = g + (size_t)slot * n, *vs = v + (size_t)slot * n;
      int r;
      if (mode == M_PUSH) r = ps_push_async(c, "bench", gs, n, NULL, NULL, &tk[slot]);
      else if (mode == M_PULL) r = ps_pull_async(c, "bench", vs, n, NULL, NULL, &tk[slot]);
      else r = ps_push_pull_async(c, "bench", gs, vs, n, NULL, NULL, &tk[slot]);
      if (r != 0) {
        fprintf(stderr, "psd-bench: %s\n", ps_errmsg(c));
        rc = -1;
        break;
      }
      t_issue[slot] = t;
      inflight++;
      slot = (slot + 1) % depth;
      continue;
    }
    if (inflight == 0) break;
    /* Collect the oldest. */
    int oldest = (slot - inflight + depth) % depth;
    int r = ps_wait(c, tk[oldest], NULL);
    if (r != 0) {
      fprintf(stderr, "psd-bench: %s\n", ps_errmsg(c));
      rc = -1;
    }
    double done = now_s();
    if (lat && nlat < maxlat) lat[nlat++] = (done - t_issue[oldest]) * 1e6;
    inflight--;
    ops++;
  }
  double el = now_s() - t0;
  ps_wait_all(c);
  out->ops_per_s = (double)ops / el;
  out->p50_us = out->p99_us = NAN;
  if (lat && nlat > 0) {
    qsort(lat, nlat, sizeof(double), cmp_double);
    out->p50_us = lat[nlat / 2];
    out->p99_us = lat[(size_t)((double)nlat * 0.99)];
  }
  free(lat);
  free(tk);
  free(t_issue);
  free(g);
  free(v);
  ps_close(c);
  return rc;
}

/* ---- checkpoint pause ----------------------------------------------------------------
 * A shard holding `gb` GB of weights (sgd: no optimizer state) is saved
 * while a client runs 4 KB push-pulls back to back; the longest round trip
 * seen during the save, beside the longest seen before it, is the pause a
 * client experiences. */

typedef struct {
  const char *servers;
  volatile int stop;
  double max_us, sum_us;
  uint64_t n;
} probe;

static void *probe_thread(void *p) {
  probe *pr = p;
  ps_client *c;
  if (ps_connect(&c, pr->servers, NULL) != 0) return NULL;
  float g[1024], v[1024];
  for (int i = 0; i < 1024; i++) g[i] = 1e-3f;
  while (!pr->stop) {
    double t0 = now_s();
    if (ps_push_pull(c, "probe", g, v, 1024, NULL) != 0) break;
    double us = (now_s() - t0) * 1e6;
    if (us > pr->max_us) pr->max_us = us;
    pr->sum_us += us;
    pr->n++;
  }
  ps_close(c);
  return NULL;
}

/* Fill a shard with a table of `rows` rows of dim 64 with Adam (their
 * moments too: 784 bytes a slot), pulling them in 4096 at a time. */
static int fill_table(ps_client *c, uint64_t rows) {
  ps_table_spec s;
  ps_table_spec_init(&s, PS_INIT_NORMAL, PS_OPT_ADAM);
  if (ps_create_table(c, "emb", 64, &s) != 0) return -1;
  uint64_t keys[4096];
  float *out = malloc(4096 * 64 * sizeof(float));
  for (uint64_t k = 0; k < rows; k += 4096) {
    size_t n = rows - k < 4096 ? (size_t)(rows - k) : 4096;
    for (size_t i = 0; i < n; i++) keys[i] = (k + i) * 0x9E3779B97F4A7C15ull; /* distinct */
    if (ps_pull_rows(c, "emb", keys, n, out) != 0) {
      free(out);
      return -1;
    }
  }
  free(out);
  return 0;
}

static int bench_checkpoint(double gb, uint64_t table_rows) {
  char dir[64];
  snprintf(dir, sizeof(dir), "/tmp/psd-bench-ckpt-%d", (int)getpid());
  shard_data_dir = dir;
  shard sh;
  if (start_shard(&sh) != 0) return 1;
  char servers[64];
  snprintf(servers, sizeof(servers), "127.0.0.1:%d", sh.port);
  ps_client *c;
  ps_options o;
  ps_options_init(&o);
  o.op_timeout_ms = 3600 * 1000; /* a save of gigabytes on a loaded machine */
  if (ps_connect(&c, servers, &o) != 0) return 1;
  ps_tensor_spec spec;
  ps_tensor_spec_init(&spec, PS_INIT_UNIFORM, PS_OPT_SGD);
  uint64_t per = 1u << 26; /* 256 MiB tensors */
  int nt = table_rows > 0 ? 0 : (int)(gb * 1e9 / (per * 4.0) + 0.5);
  if (nt < 1 && table_rows == 0) nt = 1;
  if (table_rows > 0) {
    double t0 = now_s();
    if (fill_table(c, table_rows) != 0) {
      fprintf(stderr, "psd-bench: %s\n", ps_errmsg(c));
      return 1;
    }
    char *js = NULL;
    if (ps_stats(c, 0, &js) == 0) {
      const char *b = strstr(js, "\"bytes_per_row\":"), *m = strstr(js, "\"mem_tables\":");
      const char *w = strstr(js, "\"worst_stall_ms\":");
      const char *wc = strstr(js, "\"worst_stall_cpu_ms\":");
      printf("table of %llu rows of dim 64 with adam made in %.1f s; %.1f bytes a row, %.2f GB "
             "in all; the shard's worst loop turn while making them: %.1f ms",
             (unsigned long long)table_rows, now_s() - t0,
             b ? atof(b + strlen("\"bytes_per_row\":")) : 0.0,
             m ? atof(m + strlen("\"mem_tables\":")) / 1e9 : 0.0,
             w ? atof(w + strlen("\"worst_stall_ms\":")) : 0.0);
      /* With PSD_STALL_LOG_MS below 100 the shard times its turns' CPU too. */
      double cpu = wc ? atof(wc + strlen("\"worst_stall_cpu_ms\":")) : 0.0;
      if (cpu > 0) printf(" (%.1f ms of CPU)", cpu);
      printf("\n");
      free(js);
    }
  }
  float *buf = malloc(per * 4);
  for (int i = 0; i < nt; i++) {
    char name[32];
    snprintf(name, sizeof(name), "big%d", i);
    uint64_t shape[1] = {per};
    /* A pull touches every block, so the shard really holds the bytes. */
    if (ps_create(c, name, shape, 1, &spec) != 0 || ps_pull(c, name, buf, per, NULL) != 0) {
      fprintf(stderr, "psd-bench: %s\n", ps_errmsg(c));
      return 1;
    }
  }
  free(buf);
  ps_tensor_spec_init(&spec, PS_INIT_ZEROS, PS_OPT_ADAM);
  uint64_t shape[1] = {1024};
  ps_create(c, "probe", shape, 1, &spec);

  probe base = {.servers = servers};
  pthread_t t;
  pthread_create(&t, NULL, probe_thread, &base);
  usleep(1000000);
  base.stop = 1;
  pthread_join(t, NULL);

  probe during = {.servers = servers};
  pthread_create(&t, NULL, probe_thread, &during);
  usleep(200000);
  double t0 = now_s();
  int rc = ps_checkpoint(c);
  double save_s = now_s() - t0;
  usleep(200000);
  during.stop = 1;
  pthread_join(t, NULL);
  ps_close(c);
  stop_shard(&sh);
  char cmd[128];
  snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
  if (system(cmd) != 0) return 1;
  if (rc != 0) {
    fprintf(stderr, "psd-bench: checkpoint failed: %s\n", ps_strerror(rc));
    return 1;
  }
  if (table_rows > 0)
    printf("checkpoint of a table of %llu rows: written in %.2f s in the background\n",
           (unsigned long long)table_rows, save_s);
  else
    printf("checkpoint of a %.2f GB shard: written in %.2f s in the background\n",
           (double)nt * per * 4 / 1e9, save_s);
  printf("4 KB push-pull round trips: before the save %llu, mean %.1f us, max %.1f us; "
         "during it %llu, mean %.1f us, max %.1f us\n",
         (unsigned long long)base.n, base.sum_us / (double)base.n, base.max_us,
         (unsigned long long)during.n, during.sum_us / (double)during.n, during.max_us);
  return 0;
}

/* ---- sparse rows ------------------------------------------------------------------------
 * Pull, push and push-pull of 4096 distinct keys of dim 64 (1 MiB of values)
 * on a table with Adam, at depth 1 and pipelined, beside the push-pull of a
 * dense tensor of the same 1 MiB measured in the same run, on the same
 * shards. Rows travel over TCP (a table has no lanes): the dense figure that
 * compares like with like is TCP's (PS_LANE_MB=0); the lanes' is printed too. */

#define SP_ROWS 4096
#define SP_DIM 64

enum { SP_DENSE = 3 };

/* Run op `mode` (M_PULL, M_PUSH, M_PUSHPULL on the table; SP_DENSE: a dense
 * push-pull of the same bytes) for `seconds` with `depth` in flight; ops/s. */
static double sparse_worker(const char *servers, int mode, int depth, double seconds) {
  ps_client *c;
  if (ps_connect(&c, servers, NULL) != 0) return -1;
  const size_t nf = (size_t)SP_ROWS * SP_DIM;
  uint64_t *keys = malloc(SP_ROWS * sizeof(*keys));
  float *g = aligned_alloc(64, nf * sizeof(float) * (size_t)depth);
  float *v = aligned_alloc(64, nf * sizeof(float) * (size_t)depth);
  ps_ticket *tk = calloc((size_t)depth, sizeof(*tk));
  uint64_t z = 12345;
  for (int i = 0; i < SP_ROWS; i++) {
    z = z * 6364136223846793005ull + 1442695040888963407ull;
    keys[i] = z ^ (z >> 29); /* distinct, spread like hashed features */
  }
  for (size_t i = 0; i < nf * (size_t)depth; i++) g[i] = 1e-3f * (float)((int)(i % 13) - 6);
  int rc;
  if (mode == SP_DENSE) {
    ps_tensor_spec ts;
    ps_tensor_spec_init(&ts, PS_INIT_GLOROT_UNIFORM, PS_OPT_ADAM);
    uint64_t shape[1] = {nf};
    rc = ps_create(c, "dense", shape, 1, &ts);
    if (rc == 0) rc = ps_pull(c, "dense", v, nf, NULL);
  } else {
    ps_table_spec s;
    ps_table_spec_init(&s, PS_INIT_NORMAL, PS_OPT_ADAM);
    rc = ps_create_table(c, "rows", SP_DIM, &s);
    if (rc == 0) rc = ps_pull_rows(c, "rows", keys, SP_ROWS, v); /* the rows exist */
  }
  uint64_t ops = 0;
  int inflight = 0, slot = 0;
  double t0 = now_s();
  while (rc == 0) {
    if (now_s() - t0 < seconds && inflight < depth) {
      float *gs = g + (size_t)slot * nf, *vs = v + (size_t)slot * nf;
      if (mode == SP_DENSE) rc = ps_push_pull_async(c, "dense", gs, vs, nf, NULL, NULL, &tk[slot]);
      else if (mode == M_PULL)
        rc = ps_pull_rows_async(c, "rows", keys, SP_ROWS, vs, NULL, NULL, &tk[slot]);
      else if (mode == M_PUSH)
        rc = ps_push_rows_async(c, "rows", keys, SP_ROWS, gs, NULL, NULL, &tk[slot]);
      else rc = ps_push_pull_rows_async(c, "rows", keys, SP_ROWS, gs, vs, NULL, NULL, &tk[slot]);
      inflight++;
      slot = (slot + 1) % depth;
      continue;
    }
    if (inflight == 0) break;
    rc = ps_wait(c, tk[(slot - inflight + depth) % depth], NULL);
    inflight--;
    ops++;
  }
  double el = now_s() - t0;
  if (rc != 0) fprintf(stderr, "psd-bench: %s\n", ps_errmsg(c));
  ps_wait_all(c);
  ps_close(c);
  free(keys);
  free(g);
  free(v);
  free(tk);
  return rc == 0 ? (double)ops / el : -1;
}

/* sparse_worker in a process of its own (a worker as a trainer's would be). */
static double sparse_run(const char *servers, int mode, int depth, double seconds, int lanes) {
  int fds[2];
  if (pipe(fds) != 0) return -1;
  pid_t pid = fork();
  if (pid == 0) {
    if (!lanes) setenv("PS_LANE_MB", "0", 1);
    double r = sparse_worker(servers, mode, depth, seconds);
    ssize_t k = write(fds[1], &r, sizeof(r));
    (void)k;
    _exit(0);
  }
  close(fds[1]);
  double r = -1;
  if (read(fds[0], &r, sizeof(r)) != (ssize_t)sizeof(r)) r = -1;
  close(fds[0]);
  waitpid(pid, NULL, 0);
  return r;
}

static int cmp_dbl(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* The machine is shared: each figure is the median of SP_REPEAT runs, the
 * dense and the sparse runs interleaved so that both see the same load. */
#define SP_REPEAT 5

static int bench_sparse(double seconds) {
  const double bytes = (double)SP_ROWS * SP_DIM * sizeof(float);
  printf("sparse rows: %d distinct keys of dim %d (%.0f KiB of values) on a table with adam; "
         "the dense push-pull of a %.0f KiB tensor (adam) on the same shards in the same run; "
         "medians of %d interleaved runs of %.1f s\n\n",
         SP_ROWS, SP_DIM, bytes / 1024, bytes / 1024, SP_REPEAT, seconds);
  printf("| shards | op | depth | rows/s | GB/s | dense push-pull GB/s (TCP) | ratio | dense via lanes GB/s |\n");
  printf("|---|---|---|---|---|---|---|---|\n");
  for (int nshards = 1; nshards <= 2; nshards++) {
    shard sh[2];
    char servers[128] = "";
    for (int i = 0; i < nshards; i++) {
      if (start_shard(&sh[i]) != 0) return 1;
      snprintf(servers + strlen(servers), sizeof(servers) - strlen(servers), "%s127.0.0.1:%d",
               i ? "," : "", sh[i].port);
    }
    for (int depth = 1; depth <= 4; depth += 3) {
      double dense[SP_REPEAT * 3], lanes[SP_REPEAT], rows[3][SP_REPEAT];
      for (int r = 0; r < SP_REPEAT; r++) {
        lanes[r] = sparse_run(servers, SP_DENSE, depth, seconds, 1);
        for (int mode = M_PUSH; mode <= M_PUSHPULL; mode++) {
          dense[r * 3 + mode] = sparse_run(servers, SP_DENSE, depth, seconds, 0);
          rows[mode][r] = sparse_run(servers, mode, depth, seconds, 0);
        }
      }
      qsort(dense, SP_REPEAT * 3, sizeof(double), cmp_dbl);
      qsort(lanes, SP_REPEAT, sizeof(double), cmp_dbl);
      double dgbs = dense[SP_REPEAT * 3 / 2] * bytes / 1e9, lgbs = lanes[SP_REPEAT / 2] * bytes / 1e9;
      for (int mode = M_PUSH; mode <= M_PUSHPULL; mode++) {
        qsort(rows[mode], SP_REPEAT, sizeof(double), cmp_dbl);
        double ops = rows[mode][SP_REPEAT / 2], gbs = ops * bytes / 1e9;
        printf("| %d | %s | %d | %.0f | %.3f | %.3f | %.2f | %.3f |\n", nshards, mode_names[mode],
               depth, ops * SP_ROWS, gbs, dgbs, gbs / dgbs, lgbs);
        fflush(stdout);
      }
    }
    for (int i = 0; i < nshards; i++) stop_shard(&sh[i]);
  }
  return 0;
}

/* ---- one configuration -------------------------------------------------------------- */

static FILE *csv;
static double ref_gbs, echo_gbs;

/* ---- the in-process floor -----------------------------------------------------
 * What no transport can take away from a 4 MB push-pull with Adam on the
 * shard: test the gradient for NaN/Inf, apply Adam to 1 M parameters and
 * write the 4 MB of new values out, here, with no socket or lane at all,
 * on two threads the way the shard splits a large block (common/helper.c),
 * in the shard's own pieces. Its GB/s over the TCP reference is the best
 * ratio any push-pull could show on this machine. */

typedef struct {
  ps_optim_spec spec;
  uint64_t step, n;
  float *w, *state, *g, *out;
} floor_job;

static void floor_piece(void *arg, uint32_t piece) {
  floor_job *j = arg;
  uint64_t a = (uint64_t)piece * 16384, e = j->n - a < 16384 ? j->n : a + 16384;
  psm_apply_range(&j->spec, j->step, j->w, j->state, j->g, 1.0f, j->n, a, e);
  memcpy(j->out + a, j->w + a, (size_t)(e - a) * sizeof(float));
}

static double floor_reference(double seconds) {
  const uint64_t n = 1u << 20;
  floor_job j;
  memset(&j, 0, sizeof(j));
  ps_tensor_spec ts;
  ps_tensor_spec_init(&ts, PS_INIT_ZEROS, PS_OPT_ADAM);
  j.spec = ts.optim;
  j.n = n;
  j.w = calloc(n, sizeof(float));
  j.state = calloc(2 * n, sizeof(float));
  j.g = malloc(n * sizeof(float));
  j.out = malloc(n * sizeof(float));
  if (!j.w || !j.state || !j.g || !j.out) return 0;
  for (uint64_t i = 0; i < n; i++) j.g[i] = 1e-3f * (float)(i % 13) - 6e-3f;
  psd_helper *h = helper_start();
  uint64_t ops = 0;
  double t0 = now_s(), t = 0;
  do {
    j.step = ++ops;
    if (!psm_all_finite(j.g, n)) break;
    helper_run(h, floor_piece, &j, (uint32_t)(n / 16384));
  } while ((t = now_s() - t0) < seconds);
  helper_stop(h);
  free(j.w);
  free(j.state);
  free(j.g);
  free(j.out);
  return (double)ops * (double)(n * sizeof(float)) / t / 1e9;
}

/* The number after "key": in a shard's stats JSON (0 if absent). */
static double stats_num(const char *json, const char *key) {
  char pat[96];
  snprintf(pat, sizeof(pat), "\"%s\":", key);
  const char *p = strstr(json, pat);
  return p ? strtod(p + strlen(pat), NULL) : 0;
}

/* With PSD_STALL_LOG_MS set (the shards inherit it: they then measure each
 * loop turn's CPU time too), each shard's worst turn of the run, by the
 * clock and by the loop thread's CPU time, on a line of its own. */
static void print_worst_turns(const char *servers, int nshards) {
  const char *e = getenv("PSD_STALL_LOG_MS");
  if (e == NULL || e[0] == '\0') return;
  ps_client *c;
  ps_options o;
  ps_options_init(&o);
  o.rank = -1;
  if (ps_connect(&c, servers, &o) != 0) return;
  printf("|   | worst loop turn per shard:");
  for (int i = 0; i < nshards; i++) {
    char *json = NULL;
    if (ps_stats(c, i, &json) != 0) continue;
    printf(" %.2f ms (%.2f ms CPU)", stats_num(json, "worst_stall_ms"),
           stats_num(json, "worst_stall_cpu_ms"));
    free(json);
  }
  printf(" | | | | | | | | | |\n");
  ps_close(c);
}

/* The Python worker (psd-bench --python PY): `PY -m psd.bench` in the child,
 * its one line of figures read from a pipe. */
static const char *python_path = NULL;

static void exec_python_worker(const char *servers, int mode, uint64_t n, int depth,
                               double seconds, int out_fd) {
  char elements[32], dep[16], secs[32];
  snprintf(elements, sizeof(elements), "%llu", (unsigned long long)n);
  snprintf(dep, sizeof(dep), "%d", depth);
  snprintf(secs, sizeof(secs), "%g", seconds);
  dup2(out_fd, 1);
  execl(python_path, python_path, "-m", "psd.bench", "--servers", servers, "--elements",
        elements, "--mode", mode_names[mode], "--depth", dep, "--seconds", secs,
        (char *)NULL);
  fprintf(stderr, "psd-bench: cannot run %s\n", python_path);
  _exit(127);
}

/* One configuration on fresh shards: ops/s summed over the workers, worker
 * 0's latencies. The workers are C (the library's calls) or, with python,
 * the psd package's. 0, or -1 if a worker failed. */
static int measure(int nshards, int nworkers, uint64_t n, int mode, int depth, double seconds,
                   int python, wresult *res) {
  shard sh[8];
  char servers[512] = "";
  for (int i = 0; i < nshards; i++) {
    if (start_shard(&sh[i]) != 0) {
      fprintf(stderr, "psd-bench: cannot start %s\n", psd_path);
      exit(1);
    }
    snprintf(servers + strlen(servers), sizeof(servers) - strlen(servers), "%s127.0.0.1:%d",
             i ? "," : "", sh[i].port);
  }
  int fds[8][2];
  pid_t pids[8];
  for (int w = 0; w < nworkers; w++) {
    if (pipe(fds[w]) != 0) exit(1);
    pids[w] = fork();
    if (pids[w] == 0) {
      close(fds[w][0]);
      if (python) exec_python_worker(servers, mode, n, depth, seconds, fds[w][1]);
      wresult r;
      memset(&r, 0, sizeof(r));
      int rc = run_worker(servers, mode, n, depth, seconds, &r);
      if (rc != 0) r.ops_per_s = -1;
      ssize_t k = write(fds[w][1], &r, sizeof(r));
      (void)k;
      _exit(rc ? 1 : 0);
    }
    close(fds[w][1]);
  }
  int ok = 1;
  memset(res, 0, sizeof(*res));
  for (int w = 0; w < nworkers; w++) {
    wresult r = {-1, NAN, NAN};
    if (python) {
      FILE *f = fdopen(fds[w][0], "r");
      char line[256] = "";
      if (f == NULL || fgets(line, sizeof(line), f) == NULL ||
          sscanf(line, "%lf %lf %lf", &r.ops_per_s, &r.p50_us, &r.p99_us) != 3)
        r.ops_per_s = -1;
      if (f) fclose(f);
    } else {
      if (read(fds[w][0], &r, sizeof(r)) != (ssize_t)sizeof(r)) r.ops_per_s = -1;
      close(fds[w][0]);
    }
    int st = 0;
    waitpid(pids[w], &st, 0);
    if (r.ops_per_s < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) ok = 0;
    res->ops_per_s += r.ops_per_s;
    if (w == 0) {
      res->p50_us = r.p50_us;
      res->p99_us = r.p99_us;
    }
  }
  if (ok) print_worst_turns(servers, nshards);
  for (int i = 0; i < nshards; i++) stop_shard(&sh[i]);
  return ok ? 0 : -1;
}

static void run_config(int nshards, int nworkers, uint64_t n, int mode, int depth,
                       double seconds) {
  wresult r;
  if (measure(nshards, nworkers, n, mode, depth, seconds, 0, &r) != 0) {
    printf("| %d | %d | %9llu B | %-9s | %3d | FAILED | | | | | |\n", nshards, nworkers,
           (unsigned long long)n * 4, mode_names[mode], depth);
    return;
  }
  double ops = r.ops_per_s, p50 = r.p50_us, p99 = r.p99_us;
  double gbs = ops * (double)n * 4 / 1e9;
  char p50s[32] = "-", p99s[32] = "-";
  if (!isnan(p50)) {
    snprintf(p50s, sizeof(p50s), "%.1f", p50);
    snprintf(p99s, sizeof(p99s), "%.1f", p99);
  }
  char echo[16] = "-";
  if (mode == M_PUSHPULL) snprintf(echo, sizeof(echo), "%.2f", gbs / echo_gbs);
  printf("| %d | %d | %9llu B | %-9s | %3d | %10.0f | %7.3f | %8s | %8s | %5.2f | %5s |\n",
         nshards, nworkers, (unsigned long long)n * 4, mode_names[mode], depth, ops, gbs, p50s,
         p99s, gbs / ref_gbs, echo);
  fflush(stdout);
  if (csv)
    fprintf(csv, "%d,%d,%llu,%s,%d,%.0f,%.4f,%s,%s,%.3f\n", nshards, nworkers,
            (unsigned long long)n * 4, mode_names[mode], depth, ops, gbs, p50s, p99s,
            gbs / ref_gbs);
}

static int cmp_wresult_ops(const void *a, const void *b) {
  double x = ((const wresult *)a)->ops_per_s, y = ((const wresult *)b)->ops_per_s;
  return x < y ? -1 : x > y;
}

static int cmp_wresult_p50(const void *a, const void *b) {
  double x = ((const wresult *)a)->p50_us, y = ((const wresult *)b)->p50_us;
  return x < y ? -1 : x > y;
}

/* The C row and the Python row of one configuration, interleaved `rounds`
 * times on fresh shards each (the machine's drift hits both alike): the
 * median and the best run of each, and Python's difference from C. On a
 * shared machine the round trips of one run fall in a fast or a slow mode
 * (scheduling), for C and Python alike: the best runs compare the code,
 * the medians what a user would see. */
static void compare_python(uint64_t n, int mode, int depth, double seconds, int rounds) {
  wresult c[16], py[16];
  int nc = 0, np = 0;
  for (int i = 0; i < rounds; i++) {
    if (measure(1, 1, n, mode, depth, seconds, 0, &c[nc]) == 0) nc++;
    if (measure(1, 1, n, mode, depth, seconds, 1, &py[np]) == 0) np++;
  }
  if (nc == 0 || np == 0) {
    printf("| %9llu B | %-9s | %3d | FAILED (%d C, %d Python runs) | | | | | |\n",
           (unsigned long long)n * 4, mode_names[mode], depth, nc, np);
    return;
  }
  double scale = (double)n * 4 / 1e9;
  qsort(c, (size_t)nc, sizeof(wresult), cmp_wresult_ops);
  qsort(py, (size_t)np, sizeof(wresult), cmp_wresult_ops);
  double c_med = c[nc / 2].ops_per_s * scale, py_med = py[np / 2].ops_per_s * scale;
  double c_best = c[nc - 1].ops_per_s * scale, py_best = py[np - 1].ops_per_s * scale;
  char lat[3][48] = {"-", "-", "-"};
  if (depth == 1) {
    qsort(c, (size_t)nc, sizeof(wresult), cmp_wresult_p50);
    qsort(py, (size_t)np, sizeof(wresult), cmp_wresult_p50);
    snprintf(lat[0], sizeof(lat[0]), "%.1f / %.1f", c[nc / 2].p50_us, c[0].p50_us);
    snprintf(lat[1], sizeof(lat[1]), "%.1f / %.1f", py[np / 2].p50_us, py[0].p50_us);
    snprintf(lat[2], sizeof(lat[2]), "%+.1f / %+.1f", py[np / 2].p50_us - c[nc / 2].p50_us,
             py[0].p50_us - c[0].p50_us);
  }
  printf("| %9llu B | %-9s | %3d | %.3f / %.3f | %.3f / %.3f | %+.1f%% / %+.1f%% | %s | %s | "
         "%s |\n",
         (unsigned long long)n * 4, mode_names[mode], depth, c_med, c_best, py_med, py_best,
         100.0 * (py_med - c_med) / c_med, 100.0 * (py_best - c_best) / c_best, lat[0], lat[1],
         lat[2]);
  fflush(stdout);
  if (csv)
    fprintf(csv, "python-vs-c,%llu,%s,%d,%.4f,%.4f,%.4f,%.4f,%s,%s\n", (unsigned long long)n * 4,
            mode_names[mode], depth, c_med, c_best, py_med, py_best, lat[0], lat[1]);
}

int main(int argc, char **argv) {
  int quick = 0, rounds = 0, seconds_given = 0, sparse = 0;
  double seconds = 2.0, ckpt_gb = 0, ckpt_rows = 0;
  const char *csv_path = NULL;
  static const struct option opts[] = {{"psd", required_argument, 0, 'p'},
                                       {"quick", no_argument, 0, 'q'},
                                       {"seconds", required_argument, 0, 's'},
                                       {"csv", required_argument, 0, 'c'},
                                       {"checkpoint-gb", required_argument, 0, 'g'},
                                       {"python", required_argument, 0, 'y'},
                                       {"rounds", required_argument, 0, 'R'},
                                       {"sparse", no_argument, 0, 'r'},
                                       {"checkpoint-rows", required_argument, 0, 'k'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  int ch;
  while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (ch) {
      case 'p': psd_path = optarg; break;
      case 'q': quick = 1; break;
      case 's': seconds = atof(optarg), seconds_given = 1; break;
      case 'c': csv_path = optarg; break;
      case 'g': ckpt_gb = atof(optarg); break;
      case 'y': python_path = optarg; break;
      case 'R': rounds = atoi(optarg); break;
      case 'r': sparse = 1; break;
      case 'k': ckpt_rows = atof(optarg); break;
      default:
        printf("usage: psd-bench [--psd PATH] [--quick] [--seconds S] [--csv FILE]\n"
               "                 [--python PYTHON [--rounds N]]\n"
               "       psd-bench [--psd PATH] --checkpoint-gb GB   (pause seen during a save)\n"
               "       psd-bench [--psd PATH] --sparse [--seconds S] (sparse rows beside dense)\n"
               "       psd-bench [--psd PATH] --checkpoint-rows N  (pause, a table of N rows)\n");
        return ch == 'h' ? 0 : 2;
    }
  }
  if (quick && !seconds_given) seconds = 0.3;
  if (access(psd_path, X_OK) != 0) {
    fprintf(stderr, "psd-bench: no psd at %s (use --psd PATH)\n", psd_path);
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  if (ckpt_gb > 0 || ckpt_rows > 0) return bench_checkpoint(ckpt_gb, (uint64_t)ckpt_rows);
  if (sparse) return bench_sparse(quick ? 0.3 : seconds);
  if (csv_path) {
    csv = fopen(csv_path, "w");
    if (csv) fprintf(csv, "shards,workers,bytes,mode,depth,ops_per_s,gb_per_s,p50_us,p99_us,ratio_tcp\n");
  }
  ref_gbs = tcp_reference(quick ? 0.3 : 2.0);
  echo_gbs = tcp_echo_reference(quick ? 0.3 : 2.0);
  printf("raw loopback TCP reference (one process to another, 4 MiB writes): %.3f GB/s\n",
         ref_gbs);
  printf("raw loopback TCP echo (4 MiB there and back, per direction): %.3f GB/s\n", echo_gbs);
  double floor_gbs = floor_reference(quick ? 0.3 : 2.0);
  printf("in-process floor of a 4 MB push-pull (NaN test + Adam on 1 M parameters + 4 MB "
         "out, two threads, no transport): %.3f GB/s = %.2f of the TCP reference\n",
         floor_gbs, floor_gbs / ref_gbs);
  printf("raw loopback TCP 4 KB ping-pong: p50 %.1f us\n", tcp_pingpong_p50_us(quick ? 2000 : 20000));
  {
    ps_options o;
    ps_options_init(&o);
    if (o.lane_mb > 0)
      printf("transport: shared-memory lanes of %d MiB for blocks of 64 KiB and more "
             "(PS_LANE_MB=0: TCP only)\n\n", o.lane_mb);
    else
      printf("transport: TCP only (PS_LANE_MB=0)\n\n");
  }
  printf("| shards | workers | tensor | mode | depth | ops/s | GB/s | p50 us | p99 us | ratio to TCP | ratio to echo |\n");
  printf("|---|---|---|---|---|---|---|---|---|---|---|\n");

  const uint64_t small = 1024, large = 1u << 20; /* 4 KB and 4 MB of float32 */
  /* The targets first: one shard, one worker, Adam on the server. */
  run_config(1, 1, small, M_PUSHPULL, 1, seconds);
  run_config(1, 1, small, M_PUSHPULL, 32, seconds);
  run_config(1, 1, large, M_PUSHPULL, 1, seconds);
  run_config(1, 1, large, M_PUSHPULL, 4, seconds);
  if (!quick) {
    for (int mode = M_PUSH; mode <= M_PULL; mode++) {
      run_config(1, 1, small, mode, 1, seconds);
      run_config(1, 1, small, mode, 32, seconds);
      run_config(1, 1, large, mode, 1, seconds);
      run_config(1, 1, large, mode, 4, seconds);
    }
    run_config(2, 1, large, M_PUSHPULL, 4, seconds);
    run_config(1, 2, small, M_PUSHPULL, 32, seconds);
    run_config(2, 2, small, M_PUSHPULL, 32, seconds);
    run_config(2, 2, large, M_PUSHPULL, 4, seconds);
    run_config(2, 4, large, M_PUSHPULL, 2, seconds);
  }
  if (python_path != NULL) {
    /* The psd package's overhead over the C library it wraps. */
    if (rounds < 1 || rounds > 16) rounds = quick ? 3 : 9;
    printf("\nPython (%s -m psd.bench: the psd package) against C, 1 shard, 1 worker, "
           "%d runs each, interleaved; median / best:\n\n", python_path, rounds);
    printf("| tensor | mode | depth | C GB/s | Python GB/s | difference | C p50 us | "
           "Python p50 us | difference |\n");
    printf("|---|---|---|---|---|---|---|---|---|\n");
    compare_python(small, M_PUSHPULL, 1, seconds, rounds);
    compare_python(large, M_PUSHPULL, 1, seconds, rounds);
    compare_python(large, M_PUSHPULL, 4, seconds, rounds);
  }
  if (csv) fclose(csv);
  return 0;
}
