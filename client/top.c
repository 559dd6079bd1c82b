/*
 * top.c -- `psctl top`: a live table of the cluster, refreshed every
 * interval, from the `stats` request of every shard (as redis-cli --stat
 * does from INFO). Rates are differences between two samples; latency
 * quantiles come from the difference of the shards' latency histograms
 * over the interval, so they describe the last interval, not the whole
 * run.
 *
 * On a terminal the screen is redrawn in place; otherwise each refresh
 * prints a plain table (no escape codes), separated by a blank line.
 */
#include "top.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- a small JSON reader (the shards' stats) ----------------------------- */

typedef enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ } jtype;

typedef struct jv jv;
struct jv {
  jtype t;
  double num;
  char *str;      /* J_STR */
  char **keys;    /* J_OBJ */
  jv *kids;       /* J_ARR, J_OBJ */
  size_t n;
};

static void jfree(jv *v) {
  for (size_t i = 0; i < v->n; i++) {
    if (v->keys) free(v->keys[i]);
    jfree(&v->kids[i]);
  }
  free(v->keys);
  free(v->kids);
  free(v->str);
  memset(v, 0, sizeof(*v));
}

static void skip_ws(const char **p) {
  while (**p == ' ' || **p == '\t' || **p == '\n' || **p == '\r') (*p)++;
}

static char *parse_str(const char **p) {
  if (**p != '"') return NULL;
  (*p)++;
  size_t cap = 16, len = 0;
  char *s = malloc(cap);
  while (s && **p && **p != '"') {
    char ch = **p;
    if (ch == '\\') {
      (*p)++;
      ch = **p == 'n' ? '\n' : **p == 't' ? '\t' : **p == 'u' ? '?' : **p;
      if (**p == 'u') {
        for (int i = 0; i < 4 && (*p)[1]; i++) (*p)++;
      }
      if (**p == '\0') break;
    }
    if (len + 2 > cap) {
      char *ns = realloc(s, cap *= 2);
      if (ns == NULL) {
        free(s);
        return NULL;
      }
      s = ns;
    }
    s[len++] = ch;
    (*p)++;
  }
  if (s == NULL || **p != '"') {
    free(s);
    return NULL;
  }
  (*p)++;
  s[len] = '\0';
  return s;
}

static int parse_val(const char **p, jv *v, int depth) {
  memset(v, 0, sizeof(*v));
  skip_ws(p);
  if (depth > 32) return -1;
  if (**p == '{' || **p == '[') {
    int obj = **p == '{';
    char close = obj ? '}' : ']';
    v->t = obj ? J_OBJ : J_ARR;
    (*p)++;
    skip_ws(p);
    if (**p == close) {
      (*p)++;
      return 0;
    }
    for (;;) {
      char *key = NULL;
      if (obj) {
        skip_ws(p);
        key = parse_str(p);
        skip_ws(p);
        if (key == NULL || **p != ':') {
          free(key);
          return -1;
        }
        (*p)++;
      }
      jv *nk = realloc(v->kids, (v->n + 1) * sizeof(jv));
      char **nkeys = obj ? realloc(v->keys, (v->n + 1) * sizeof(char *)) : NULL;
      if (nk) v->kids = nk;
      if (nkeys) v->keys = nkeys;
      if (nk == NULL || (obj && nkeys == NULL)) {
        free(key);
        return -1;
      }
      if (obj) v->keys[v->n] = key;
      if (parse_val(p, &v->kids[v->n], depth + 1) != 0) {
        v->n++;
        return -1;
      }
      v->n++;
      skip_ws(p);
      if (**p == ',') {
        (*p)++;
        continue;
      }
      if (**p == close) {
        (*p)++;
        return 0;
      }
      return -1;
    }
  }
  if (**p == '"') {
    v->t = J_STR;
    v->str = parse_str(p);
    return v->str ? 0 : -1;
  }
  if (strncmp(*p, "true", 4) == 0 || strncmp(*p, "false", 5) == 0) {
    v->t = J_BOOL;
    v->num = **p == 't';
    *p += **p == 't' ? 4 : 5;
    return 0;
  }
  if (strncmp(*p, "null", 4) == 0) {
    *p += 4;
    return 0;
  }
  char *end;
  v->num = strtod(*p, &end);
  if (end == *p) return -1;
  v->t = J_NUM;
  *p = end;
  return 0;
}

/* The member `key` of object o, or NULL. */
static const jv *jget(const jv *o, const char *key) {
  if (o == NULL || o->t != J_OBJ) return NULL;
  for (size_t i = 0; i < o->n; i++)
    if (strcmp(o->keys[i], key) == 0) return &o->kids[i];
  return NULL;
}

/* The number at a dotted path ("latency.push_pull.count"), or def. */
static double jnum(const jv *o, const char *path, double def) {
  char part[64];
  while (o && *path) {
    size_t k = strcspn(path, ".");
    snprintf(part, sizeof(part), "%.*s", (int)k, path);
    o = jget(o, part);
    path += k + (path[k] == '.');
  }
  return o && (o->t == J_NUM || o->t == J_BOOL) ? o->num : def;
}

/* ---- samples --------------------------------------------------------------- */

#define NB 20 /* histogram buckets in the stats (19 bounds + the rest) */

typedef struct {
  int ok;
  jv root;
  double ops, bytes_in, bytes_out, lane_bytes, rounds;
  double pp_b[NB], bounds_ms[NB - 1];
  int nbounds;
} sample;

static const char *const lat_kinds[] = {"pull", "push", "push_pull"};

static void sample_take(ps_client *c, int shard, sample *s) {
  char *json = NULL;
  memset(s, 0, sizeof(*s));
  if (ps_stats(c, shard, &json) != 0) return;
  const char *p = json;
  if (parse_val(&p, &s->root, 0) != 0 || s->root.t != J_OBJ) {
    jfree(&s->root);
    free(json);
    return;
  }
  free(json);
  s->ok = 1;
  const jv *lat = jget(&s->root, "latency");
  for (int k = 0; k < 3; k++) {
    char path[64];
    snprintf(path, sizeof(path), "%s.count", lat_kinds[k]);
    s->ops += jnum(lat, path, 0);
  }
  s->bytes_in = jnum(&s->root, "bytes_in", 0);
  s->bytes_out = jnum(&s->root, "bytes_out", 0);
  s->lane_bytes = jnum(&s->root, "lane_bytes", 0);
  s->rounds = jnum(&s->root, "rounds", 0);
  const jv *pp = jget(jget(lat, "push_pull"), "buckets");
  for (size_t i = 0; pp && pp->t == J_ARR && i < pp->n && i < NB; i++) s->pp_b[i] = pp->kids[i].num;
  const jv *bd = jget(lat, "bounds_ms");
  for (size_t i = 0; bd && bd->t == J_ARR && i < bd->n && i < NB - 1; i++)
    s->bounds_ms[s->nbounds++] = bd->kids[i].num;
}

/* The q-quantile (ms) of the push-pulls between samples a and b, as
 * Prometheus's histogram_quantile interpolates; NAN when there were none. */
static double interval_quantile(const sample *a, const sample *b, double q) {
  double d[NB], total = 0;
  for (int i = 0; i < NB; i++) total += d[i] = b->pp_b[i] - a->pp_b[i];
  if (total <= 0 || b->nbounds != NB - 1) return NAN;
  double rank = q * total, cum = 0;
  for (int i = 0; i < NB; i++) {
    double prev = cum;
    cum += d[i];
    if (cum < rank || d[i] <= 0) continue;
    if (i == NB - 1) return b->bounds_ms[NB - 2];
    double lo = i ? b->bounds_ms[i - 1] : 0, hi = b->bounds_ms[i];
    return lo + (hi - lo) * (rank - prev) / d[i];
  }
  return b->bounds_ms[NB - 2];
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void human_bytes(double v, char *buf, size_t len) {
  const char *u = "BKMGT";
  int i = 0;
  while (v >= 1024 && i < 4) v /= 1024, i++;
  if (i == 0) snprintf(buf, len, "%.0f%c", v, u[i]);
  else snprintf(buf, len, "%.1f%c", v, u[i]);
}

static void fmt_ms(double ms, char *buf, size_t len) {
  if (isnan(ms)) snprintf(buf, len, "-");
  else if (ms < 10) snprintf(buf, len, "%.3f", ms);
  else snprintf(buf, len, "%.1f", ms);
}

/* ---- the table ------------------------------------------------------------------ */

typedef struct {
  int live, joined, nw;
  double cmin, cmax;
  int slow_rank;
  int have;
  char mode[32];
} workers_view;

static void workers_of(const sample *s, workers_view *w) {
  memset(w, 0, sizeof(*w));
  w->slow_rank = -1;
  const jv *g = jget(&s->root, "group");
  const jv *m = jget(g, "mode");
  snprintf(w->mode, sizeof(w->mode), "%s", m && m->t == J_STR ? m->str : "?");
  w->nw = (int)jnum(g, "num_workers", 0);
  const jv *ws = jget(g, "workers");
  for (size_t i = 0; ws && ws->t == J_ARR && i < ws->n; i++) {
    const jv *x = &ws->kids[i];
    if (jnum(x, "joined", 0)) w->joined++;
    if (!jnum(x, "live", 0)) continue;
    double clk = jnum(x, "clock", 0);
    if (!w->have || clk < w->cmin) w->cmin = clk, w->slow_rank = (int)jnum(x, "rank", -1);
    if (!w->have || clk > w->cmax) w->cmax = clk;
    w->have = 1;
    w->live++;
  }
}

static void print_table(ps_client *c, char **addrs, const sample *a, const sample *b, double dt,
                        int tty) {
  int n = ps_num_shards(c);
  double ops = 0, bin = 0, bout = 0, lane = 0, rounds = 0;
  workers_view job = {0};
  job.slow_rank = -1;
  int up = 0;
  char line[512];
  char when[32];
  time_t t = time(NULL);
  struct tm tm;
  localtime_r(&t, &tm);
  strftime(when, sizeof(when), "%H:%M:%S", &tm);

  /* The job: the workers as the shards see them (every shard sees every
   * worker; the first that answers speaks for the job). */
  for (int i = 0; i < n; i++) {
    if (!a[i].ok || !b[i].ok) continue;
    up++;
    ops += b[i].ops - a[i].ops;
    bin += b[i].bytes_in - a[i].bytes_in;
    bout += b[i].bytes_out - a[i].bytes_out;
    lane += b[i].lane_bytes - a[i].lane_bytes;
    rounds += b[i].rounds - a[i].rounds;
    if (!job.have) workers_of(&b[i], &job);
  }
  if (tty) fputs("\033[H\033[2J", stdout);
  printf("psctl top  %s  every %.1fs  %d/%d shards up\n", when, dt, up, n);
  if (job.have)
    snprintf(line, sizeof(line),
             "job: %d workers %s, %d live; clocks %.0f..%.0f, slowest rank %d (%.0f behind); "
             "%.0f ops/s, %.2f MB/s in, %.2f MB/s out, %.2f MB/s lanes, %.0f rounds/s",
             job.nw, job.mode, job.live, job.cmin, job.cmax, job.slow_rank,
             job.cmax - job.cmin, ops / dt, bin / dt / 1e6, bout / dt / 1e6, lane / dt / 1e6,
             rounds / dt);
  else
    snprintf(line, sizeof(line),
             "job: no live worker; %.0f ops/s, %.2f MB/s in, %.2f MB/s out, %.2f MB/s lanes, "
             "%.0f rounds/s",
             ops / dt, bin / dt / 1e6, bout / dt / 1e6, lane / dt / 1e6, rounds / dt);
  printf("%s\n\n", line);
  printf("%-5s %-21s %9s %8s %8s %8s %9s %9s %8s %-17s %-7s %-13s %s\n", "SHARD", "ADDRESS",
         "OPS/S", "IN_MB/S", "OUT_MB/S", "LANE_MB/S", "PP_P50MS", "PP_P99MS", "ROUNDS/S",
         "MEMORY", "WORKERS", "CLOCKS", "SLOWEST");
  for (int i = 0; i < n; i++) {
    const char *addr = addrs[i];
    if (!a[i].ok || !b[i].ok) {
      printf("%-5d %-21.21s %9s\n", i, addr ? addr : "?", "down");
      continue;
    }
    char p50[16], p99[16], mem[40], used[16], lim[16], wk[16], clk[32], slow[32];
    fmt_ms(interval_quantile(&a[i], &b[i], 0.50), p50, sizeof(p50));
    fmt_ms(interval_quantile(&a[i], &b[i], 0.99), p99, sizeof(p99));
    const jv *m = jget(&b[i].root, "memory");
    if (m != NULL) {
      double u = jnum(m, "used", 0), l = jnum(m, "limit", 0);
      human_bytes(u, used, sizeof(used));
      human_bytes(l, lim, sizeof(lim));
      if (l > 0) snprintf(mem, sizeof(mem), "%s/%s %.0f%%", used, lim, 100.0 * u / l);
      else snprintf(mem, sizeof(mem), "%s", used);
    } else {
      human_bytes(jnum(&b[i].root, "bytes", 0), used, sizeof(used));
      snprintf(mem, sizeof(mem), "%s", used);
    }
    workers_view w;
    workers_of(&b[i], &w);
    snprintf(wk, sizeof(wk), "%d/%d", w.live, w.nw);
    if (w.have) {
      snprintf(clk, sizeof(clk), "%.0f..%.0f", w.cmin, w.cmax);
      snprintf(slow, sizeof(slow), "rank %d (-%.0f)", w.slow_rank, w.cmax - w.cmin);
    } else {
      snprintf(clk, sizeof(clk), "-");
      snprintf(slow, sizeof(slow), "-");
    }
    printf("%-5d %-21.21s %9.0f %8.2f %8.2f %9.2f %9s %9s %8.0f %-17s %-7s %-13s %s\n", i,
           addr ? addr : "?", (b[i].ops - a[i].ops) / dt, (b[i].bytes_in - a[i].bytes_in) / dt / 1e6,
           (b[i].bytes_out - a[i].bytes_out) / dt / 1e6,
           (b[i].lane_bytes - a[i].lane_bytes) / dt / 1e6, p50, p99,
           (b[i].rounds - a[i].rounds) / dt, mem, wk, clk, slow);
  }
  if (!tty) putchar('\n');
  fflush(stdout);
}

static void sleep_s(double s) {
  struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
  while (nanosleep(&ts, &ts) != 0) {}
}

int psctl_top(ps_client *c, const char *servers, double interval, int once, long count) {
  int n = ps_num_shards(c);
  int tty = isatty(STDOUT_FILENO);
  sample *prev = calloc((size_t)n, sizeof(sample)), *cur = calloc((size_t)n, sizeof(sample));
  char **addrs = calloc((size_t)n, sizeof(char *));
  char *list = strdup(servers);
  if (prev == NULL || cur == NULL || addrs == NULL || list == NULL) {
    free(prev);
    free(cur);
    free(addrs);
    free(list);
    return -1;
  }
  /* The addresses as the list names them, in its order (the shard index). */
  char *save = NULL;
  int k0 = 0;
  for (char *tok = strtok_r(list, ",", &save); tok && k0 < n; tok = strtok_r(NULL, ",", &save))
    addrs[k0++] = tok;
  for (; k0 < n; k0++) addrs[k0] = "?";
  double t0 = now_s();
  for (int i = 0; i < n; i++) sample_take(c, i, &prev[i]);
  for (long k = 0; once ? k < 1 : count <= 0 || k < count; k++) {
    /* Sample on the interval's grid, however long the stats took. */
    double next = t0 + interval, now = now_s();
    if (next > now) sleep_s(next - now);
    double t1 = now_s();
    for (int i = 0; i < n; i++) sample_take(c, i, &cur[i]);
    print_table(c, addrs, prev, cur, t1 - t0, tty && !once);
    for (int i = 0; i < n; i++) jfree(&prev[i].root);
    sample *tmp = prev;
    prev = cur;
    cur = tmp;
    t0 = t1;
  }
  for (int i = 0; i < n; i++) jfree(&prev[i].root);
  free(prev);
  free(cur);
  free(addrs);
  free(list);
  return 0;
}
