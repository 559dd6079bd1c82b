/*
 * psctl -- command-line tool for a running psd cluster, built on libpsd.
 *
 *   psctl [-s HOST:PORT[,HOST:PORT...]] [--timeout MS] COMMAND [ARGS]
 *
 * Scriptable: results go to stdout one item per line, nothing else does;
 * any failure prints one line "psctl: WHAT: PS_ECODE: sentence" on stderr
 * and exits 1 (2 for a usage error). Options may come before or after the
 * positional arguments. Tensor files are raw little-endian float32.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "numfmt.h"
#include "psd.h"
#include "top.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "psctl reads and writes float32 files in host order, which must be little-endian"
#endif

static const char usage[] =
    "usage: psctl [-s HOST:PORT[,HOST:PORT...]] [--timeout MS] [--token-file PATH]\n"
    "             [--role ROLE] [--job NAME] COMMAND [ARGS]\n"
    "\n"
    "commands:\n"
    "  ping                      check that every shard answers\n"
    "  list                      one line per tensor, by name: name shape numel version init\n"
    "                            optimizer (the version a pull reports, over every shard)\n"
    "  stats [--shard N]         the JSON statistics of shard N (default: every shard,\n"
    "                            one object per line)\n"
    "  create NAME --shape D1,D2,... [--init KIND] [--optimizer KIND] [OPTIONS]\n"
    "                            create a tensor on every shard (idempotent); prints\n"
    "                            what it created, as lookup does\n"
    "  lookup NAME               print the tensor's resolved spec, one `key value` per line\n"
    "  pull NAME [--out FILE]    without --out: print version, count, mean, std, min, max\n"
    "  push NAME --in FILE       push the gradient in FILE\n"
    "  rm NAME                   delete the tensor on every shard (admin)\n"
    "  reset NAME                reinitialize it from its spec: the values of a fresh\n"
    "                            create, optimizer state and versions zeroed (admin)\n"
    "  set NAME --in FILE [--offset N] [--zero-state]\n"
    "                            write FILE's values into elements [N, N + its count);\n"
    "                            --zero-state also zeroes their optimizer state\n"
    "  tune NAME|--all [--lr X] [--schedule NAME] [--weight-decay X] [...]\n"
    "                            change optimizer settings of a live tensor, or of\n"
    "                            every tensor (--all), from its next update; takes\n"
    "                            create's optimizer options (the kind cannot change)\n"
    "  create-table NAME --dim N [--init KIND] [--optimizer KIND] [--max-rows N]\n"
    "               [--evict lru|lfu|none] [OPTIONS]\n"
    "                            create a sparse table of rows of N floats on every shard\n"
    "                            (idempotent); create's init and optimizer options apply\n"
    "                            (default init normal, sigma 0.01); --max-rows over all\n"
    "                            shards, past which the coldest rows are evicted (lru by\n"
    "                            default; none: new rows are refused)\n"
    "  pull-rows NAME --keys K1,K2,...\n"
    "                            one line per key: the key, then its row's values\n"
    "  rm-table NAME             delete the table on every shard: its rows are freed\n"
    "                            and the name is free again (admin)\n"
    "  reset-table NAME          empty the table: every row goes (made again from the\n"
    "                            init rule when touched), step and evictions zeroed,\n"
    "                            the spec kept (admin)\n"
    "  checkpoint                ask every shard to write a checkpoint now\n"
    "  jobs                      one line per job the shards serve: name, run, state,\n"
    "                            workers and mode, live workers, clocks, tensors, blocks,\n"
    "                            bytes, pending rounds\n"
    "  job end NAME              end the job's current run (its next worker starts a new\n"
    "                            one; tensors are kept)\n"
    "  job drop NAME             delete the job's tensors, sessions and records\n"
    "  top [--interval S] [--once] [--count N]\n"
    "                            a live table of every shard, refreshed every S seconds\n"
    "                            (default 1): ops/s, MB/s in and out, push-pull p50/p99,\n"
    "                            rounds/s, memory, workers and their clocks, the slowest\n"
    "                            worker, and a job line above; plain text when stdout is\n"
    "                            not a terminal. --once: one table (two samples S apart),\n"
    "                            --count N: N tables, then exit\n"
    "\n"
    "create options (defaults and valid ranges: docs/math.md):\n"
    "  --init KIND               zeros constant uniform normal truncated_normal he_normal\n"
    "                            he_uniform he_truncated_normal lecun_* fan_out_* glorot_*\n"
    "                            (default he_normal)\n"
    "  --seed N --sigma X --limit X --value X --fan-in N --fan-out N\n"
    "  --fan-in-includes-bias --allow-symmetric\n"
    "  --optimizer KIND          sgd momentum rmsprop adam adamw adagrad none (default\n"
    "                            adam; none: the shards only average gradients)\n"
    "  --lr X --beta1 X --beta2 X --eps X --weight-decay X --clip-norm X\n"
    "  --heavy-ball --nesterov --eps-inside-sqrt\n"
    "  --schedule NAME           constant step exponential inverse_time inverse_sqrt cosine\n"
    "  --gamma X --step-size N --decay X --total-steps N --lr-min X --warmup N\n"
    "  --block-size N            elements per block (0: the server's default)\n"
    "  Flags also take a value: --nesterov=1, --nesterov=0. Every line of `lookup`\n"
    "  except name, numel and version is `KEY VALUE` for a create option --KEY=VALUE.\n"
    "\n"
    "global options:\n"
    "  -s, --servers LIST        server list (default: $PS_SERVERS, then 127.0.0.1:7070)\n"
    "  --timeout MS              connect and call timeout (default 60000)\n"
    "  --token-file PATH         the file holding ROLE's token (default: $PS_TOKEN_FILE;\n"
    "                            none for shards in protected mode, which serve loopback\n"
    "                            only). Tokens are never given on the command line.\n"
    "  --job NAME                the job whose tensors the command acts on (default:\n"
    "                            $PS_JOB, else default)\n"
    "  --role ROLE               admin, worker or reader (default: $PS_ROLE, else admin).\n"
    "                            A reader may ping, list, lookup, pull and read stats; a\n"
    "                            worker may also create, push, set and tune; checkpoint,\n"
    "                            rm, reset, rm-table and reset-table are an admin's\n"
    "  -h, --help                this text\n"
    "\n"
    "FILE holds raw little-endian float32. Exit status: 0 success, 1 failure, 2 usage.\n";

/* ---- options ----------------------------------------------------------- */

enum { ARG_NONE = 0, ARG_VALUE, ARG_FLAG };

typedef struct {
  const char *name; /* without the leading dashes */
  int arg;
  const char *cmds;  /* the commands it applies to, space-separated; NULL: global */
  const char *value; /* set when given ("1" for a bare flag) */
} opt;

/* create's options, the init's (create-table's too), and the optimizer's
 * (tune's and create-table's too). */
#define CREATE "create"
#define INIT "create create-table"
#define OPTIM "create tune create-table"
static opt opts[] = {
    {"servers", ARG_VALUE, NULL, NULL},
    {"timeout", ARG_VALUE, NULL, NULL},
    {"token-file", ARG_VALUE, NULL, NULL},
    {"role", ARG_VALUE, NULL, NULL},
    {"help", ARG_NONE, NULL, NULL},
    {"job", ARG_VALUE, NULL, NULL},
    {"shard", ARG_VALUE, "stats", NULL},
    {"out", ARG_VALUE, "pull", NULL},
    {"in", ARG_VALUE, "push set", NULL},
    {"offset", ARG_VALUE, "set", NULL},
    {"zero-state", ARG_FLAG, "set", NULL},
    {"all", ARG_NONE, "tune", NULL},
    {"shape", ARG_VALUE, CREATE, NULL},
    {"block-size", ARG_VALUE, CREATE, NULL},
    {"init", ARG_VALUE, INIT, NULL},
    {"seed", ARG_VALUE, INIT, NULL},
    {"sigma", ARG_VALUE, INIT, NULL},
    {"limit", ARG_VALUE, INIT, NULL},
    {"value", ARG_VALUE, INIT, NULL},
    {"fan-in", ARG_VALUE, INIT, NULL},
    {"fan-out", ARG_VALUE, INIT, NULL},
    {"fan-in-includes-bias", ARG_FLAG, INIT, NULL},
    {"allow-symmetric", ARG_FLAG, INIT, NULL},
    {"optimizer", ARG_VALUE, OPTIM, NULL},
    {"lr", ARG_VALUE, OPTIM, NULL},
    {"beta1", ARG_VALUE, OPTIM, NULL},
    {"beta2", ARG_VALUE, OPTIM, NULL},
    {"eps", ARG_VALUE, OPTIM, NULL},
    {"weight-decay", ARG_VALUE, OPTIM, NULL},
    {"heavy-ball", ARG_FLAG, OPTIM, NULL},
    {"nesterov", ARG_FLAG, OPTIM, NULL},
    {"eps-inside-sqrt", ARG_FLAG, OPTIM, NULL},
    {"clip-norm", ARG_VALUE, OPTIM, NULL},
    {"schedule", ARG_VALUE, OPTIM, NULL},
    {"gamma", ARG_VALUE, OPTIM, NULL},
    {"step-size", ARG_VALUE, OPTIM, NULL},
    {"decay", ARG_VALUE, OPTIM, NULL},
    {"total-steps", ARG_VALUE, OPTIM, NULL},
    {"lr-min", ARG_VALUE, OPTIM, NULL},
    {"warmup", ARG_VALUE, OPTIM, NULL},
    {"dim", ARG_VALUE, "create-table", NULL},
    {"max-rows", ARG_VALUE, "create-table", NULL},
    {"evict", ARG_VALUE, "create-table", NULL},
    {"keys", ARG_VALUE, "pull-rows", NULL},
    {"interval", ARG_VALUE, "top", NULL},
    {"once", ARG_NONE, "top", NULL},
    {"count", ARG_VALUE, "top", NULL},
};
#define NOPTS (sizeof(opts) / sizeof(opts[0]))

/* Is cmd one of the space-separated words of list? */
static int word_in(const char *cmd, const char *list) {
  size_t n = strlen(cmd);
  for (const char *p = list; (p = strstr(p, cmd)) != NULL; p += n)
    if ((p == list || p[-1] == ' ') && (p[n] == ' ' || p[n] == '\0')) return 1;
  return 0;
}

static const char *getopt_value(const char *name) {
  for (size_t i = 0; i < NOPTS; i++)
    if (strcmp(opts[i].name, name) == 0) return opts[i].value;
  return NULL;
}

static void die_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die_usage(const char *fmt, ...) {
  va_list ap;
  fputs("psctl: ", stderr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputs(" (psctl --help for usage)\n", stderr);
  exit(2);
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...) {
  va_list ap;
  fputs("psctl: ", stderr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  exit(1);
}

/* "PS_ENOTFOUND" out of "PS_ENOTFOUND: no such tensor". */
static const char *code_name(int rc, char *buf, size_t n) {
  const char *s = ps_strerror(rc);
  size_t k = strcspn(s, ":");
  snprintf(buf, n, "%.*s", (int)(k < n ? k : n - 1), s);
  return buf;
}

static ps_client *client;

/* Exit with the one-line message of a failed library call. */
static void die_call(int rc, const char *what) __attribute__((noreturn));
static void die_call(int rc, const char *what) {
  char name[64];
  const char *msg = client ? ps_errmsg(client) : ps_last_error();
  if (msg == NULL || *msg == '\0') msg = strchr(ps_strerror(rc), ':') + 2;
  fprintf(stderr, "psctl: %s: %s: %s\n", what, code_name(rc, name, sizeof(name)), msg);
  if (client) ps_close(client);
  exit(1);
}

static void parse_args(int argc, char **argv, const char **pos, int *npos, int maxpos) {
  int only_pos = 0;
  *npos = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (only_pos || a[0] != '-' || a[1] == '\0') {
      if (*npos >= maxpos) die_usage("unexpected argument '%s'", a);
      pos[(*npos)++] = a;
      continue;
    }
    if (strcmp(a, "--") == 0) {
      only_pos = 1;
      continue;
    }
    char name[64];
    const char *eq = NULL;
    if (strcmp(a, "-s") == 0) {
      snprintf(name, sizeof(name), "servers");
    } else if (strcmp(a, "-h") == 0) {
      snprintf(name, sizeof(name), "help");
    } else if (a[1] == '-') {
      eq = strchr(a, '=');
      size_t len = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
      if (len >= sizeof(name)) die_usage("unknown option '%s'", a);
      memcpy(name, a + 2, len);
      name[len] = '\0';
    } else {
      die_usage("unknown option '%s'", a);
    }
    opt *o = NULL;
    for (size_t k = 0; k < NOPTS; k++)
      if (strcmp(opts[k].name, name) == 0) o = &opts[k];
    if (o == NULL) die_usage("unknown option '%s'", a);
    if (o->arg == ARG_NONE) {
      if (eq) die_usage("option --%s takes no value", name);
      o->value = "1";
    } else if (eq) {
      o->value = eq + 1;
    } else if (o->arg == ARG_FLAG) {
      o->value = "1";
    } else {
      if (i + 1 >= argc) die_usage("option --%s needs a value", name);
      o->value = argv[++i];
    }
  }
}

/* ---- value parsing ----------------------------------------------------- */

static double num_opt(const char *name, double def) {
  const char *v = getopt_value(name);
  if (v == NULL) return def;
  char *end;
  errno = 0;
  double x = strtod(v, &end);
  if (*v == '\0' || *end != '\0' || errno != 0 || !isfinite(x))
    die_usage("--%s: '%s' is not a number", name, v);
  return x;
}

static uint64_t parse_u64(const char *name, const char *v) {
  char *end;
  errno = 0;
  if (*v == '-' || *v == '\0') die_usage("--%s: '%s' is not a non-negative integer", name, v);
  unsigned long long x = strtoull(v, &end, 10);
  if (*end != '\0' || errno != 0)
    die_usage("--%s: '%s' is not a non-negative integer", name, v);
  return (uint64_t)x;
}

static uint64_t u64_opt(const char *name, uint64_t def) {
  const char *v = getopt_value(name);
  return v ? parse_u64(name, v) : def;
}

static int flag_opt(const char *name, int def) {
  const char *v = getopt_value(name);
  if (v == NULL) return def;
  if (!strcmp(v, "1") || !strcmp(v, "true") || !strcmp(v, "yes")) return 1;
  if (!strcmp(v, "0") || !strcmp(v, "false") || !strcmp(v, "no")) return 0;
  die_usage("--%s: '%s' is not 0/1/true/false", name, v);
}

static int parse_shape(const char *v, uint64_t *shape, int max) {
  int n = 0;
  const char *p = v;
  while (*p) {
    char *end;
    if (n == max) die_usage("--shape: more than %d dimensions", max);
    errno = 0;
    if (*p < '0' || *p > '9') die_usage("--shape: '%s' is not D1,D2,...", v);
    unsigned long long d = strtoull(p, &end, 10);
    if (errno != 0 || d == 0 || (*end != ',' && *end != '\0'))
      die_usage("--shape: '%s' is not D1,D2,... of positive integers", v);
    shape[n++] = (uint64_t)d;
    p = *end == ',' ? end + 1 : end;
  }
  if (n == 0) die_usage("--shape is empty");
  return n;
}

/* ---- files ------------------------------------------------------------- */

static float *read_floats(const char *path, uint64_t *count) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) die("%s: %s", path, strerror(errno));
  if (fseek(f, 0, SEEK_END) != 0) die("%s: %s", path, strerror(errno));
  long size = ftell(f);
  rewind(f);
  if (size < 0) die("%s: %s", path, strerror(errno));
  if (size == 0 || size % 4 != 0)
    die("%s: %ld bytes is not a whole, non-zero number of float32 values", path, size);
  float *v = malloc((size_t)size);
  if (v == NULL) die("%s: out of memory", path);
  if (fread(v, 1, (size_t)size, f) != (size_t)size) die("%s: short read", path);
  fclose(f);
  *count = (uint64_t)size / 4;
  return v;
}

static void write_floats(const char *path, const float *v, uint64_t n) {
  FILE *f = fopen(path, "wb");
  if (f == NULL) die("%s: %s", path, strerror(errno));
  if (fwrite(v, sizeof(float), (size_t)n, f) != (size_t)n || fclose(f) != 0)
    die("%s: write failed: %s", path, strerror(errno));
}

/* ---- commands ---------------------------------------------------------- */

static void print_shape(const uint64_t *shape, int ndim) {
  for (int i = 0; i < ndim; i++) printf(i ? ",%llu" : "%llu", (unsigned long long)shape[i]);
}

/* The optimizer options given, applied to *o; *fields gets the
 * PS_OPTIM_F_* bit of each (create's and tune's). */
static void optim_opts(ps_optim_spec *o, uint64_t *fields) {
  static const struct {
    const char *name;
    uint64_t bit;
    char type; /* d double, u uint64, f flag */
    size_t off;
  } t[] = {
      {"lr", PS_OPTIM_F_LR, 'd', offsetof(ps_optim_spec, lr)},
      {"beta1", PS_OPTIM_F_BETA1, 'd', offsetof(ps_optim_spec, beta1)},
      {"beta2", PS_OPTIM_F_BETA2, 'd', offsetof(ps_optim_spec, beta2)},
      {"eps", PS_OPTIM_F_EPS, 'd', offsetof(ps_optim_spec, eps)},
      {"weight-decay", PS_OPTIM_F_WEIGHT_DECAY, 'd', offsetof(ps_optim_spec, weight_decay)},
      {"heavy-ball", PS_OPTIM_F_HEAVY_BALL, 'f', offsetof(ps_optim_spec, heavy_ball)},
      {"nesterov", PS_OPTIM_F_NESTEROV, 'f', offsetof(ps_optim_spec, nesterov)},
      {"eps-inside-sqrt", PS_OPTIM_F_EPS_INSIDE_SQRT, 'f',
       offsetof(ps_optim_spec, eps_inside_sqrt)},
      {"clip-norm", PS_OPTIM_F_CLIP_NORM, 'd', offsetof(ps_optim_spec, clip_norm)},
      {"gamma", PS_OPTIM_F_GAMMA, 'd', offsetof(ps_optim_spec, gamma)},
      {"step-size", PS_OPTIM_F_STEP_SIZE, 'u', offsetof(ps_optim_spec, step_size)},
      {"decay", PS_OPTIM_F_DECAY, 'd', offsetof(ps_optim_spec, decay)},
      {"total-steps", PS_OPTIM_F_TOTAL_STEPS, 'u', offsetof(ps_optim_spec, total_steps)},
      {"lr-min", PS_OPTIM_F_LR_MIN, 'd', offsetof(ps_optim_spec, lr_min)},
      {"warmup", PS_OPTIM_F_WARMUP, 'u', offsetof(ps_optim_spec, warmup)},
  };
  const char *v;
  *fields = 0;
  if ((v = getopt_value("optimizer")) != NULL) {
    if (ps_optim_from_name(v, &o->kind) != 0) die_usage("--optimizer: unknown optimizer '%s'", v);
    *fields |= PS_OPTIM_F_KIND;
  }
  if ((v = getopt_value("schedule")) != NULL) {
    if (ps_schedule_from_name(v, &o->schedule) != 0)
      die_usage("--schedule: unknown schedule '%s'", v);
    *fields |= PS_OPTIM_F_SCHEDULE;
  }
  for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
    if (getopt_value(t[i].name) == NULL) continue;
    char *field = (char *)o + t[i].off;
    if (t[i].type == 'd') *(double *)field = num_opt(t[i].name, 0);
    else if (t[i].type == 'u') *(uint64_t *)field = u64_opt(t[i].name, 0);
    else *(int *)field = flag_opt(t[i].name, 0);
    *fields |= t[i].bit;
  }
}

/* A tensor's description, one `key value` per line: lookup's output, and
 * create's (what it created). Numbers in their shortest form that reads
 * back to the same bits (numfmt.h), so the lines turned into create
 * options describe the same tensor. */
static void print_info(const ps_tensor_info *ti) {
  const ps_init_spec *in = &ti->spec.init;
  const ps_optim_spec *o = &ti->spec.optim;
  printf("name %s\nshape ", ti->name);
  print_shape(ti->shape, ti->ndim);
  printf("\nnumel %llu\nversion %llu\nblock-size %llu\n", (unsigned long long)ti->numel,
         (unsigned long long)ti->version, (unsigned long long)ti->spec.block_size);
  printf("init %s\nseed %llu\nsigma %s\nlimit %s\nvalue %s\n", ps_init_name(in->kind),
         (unsigned long long)in->seed, psn_num(in->sigma).s, psn_num(in->limit).s,
         psn_num(in->value).s);
  printf("fan-in %llu\nfan-out %llu\nfan-in-includes-bias %d\nallow-symmetric %d\n",
         (unsigned long long)in->fan_in, (unsigned long long)in->fan_out,
         in->fan_in_includes_bias != 0, in->allow_symmetric != 0);
  printf("optimizer %s\nlr %s\nbeta1 %s\nbeta2 %s\neps %s\nweight-decay %s\n",
         ps_optim_name(o->kind), psn_num(o->lr).s, psn_num(o->beta1).s, psn_num(o->beta2).s,
         psn_num(o->eps).s, psn_num(o->weight_decay).s);
  printf("heavy-ball %d\nnesterov %d\neps-inside-sqrt %d\nclip-norm %s\n",
         o->heavy_ball != 0, o->nesterov != 0, o->eps_inside_sqrt != 0,
         psn_num(o->clip_norm).s);
  printf("schedule %s\ngamma %s\nstep-size %llu\ndecay %s\ntotal-steps %llu\n",
         ps_schedule_name(o->schedule), psn_num(o->gamma).s, (unsigned long long)o->step_size,
         psn_num(o->decay).s, (unsigned long long)o->total_steps);
  printf("lr-min %s\nwarmup %llu\n", psn_num(o->lr_min).s, (unsigned long long)o->warmup);
}

/* The init options given, applied to *in (create's and create-table's). */
static void init_opts(ps_init_spec *in) {
  in->seed = u64_opt("seed", in->seed);
  in->sigma = num_opt("sigma", in->sigma);
  in->limit = num_opt("limit", in->limit);
  in->value = num_opt("value", in->value);
  in->fan_in = u64_opt("fan-in", in->fan_in);
  in->fan_out = u64_opt("fan-out", in->fan_out);
  in->fan_in_includes_bias = flag_opt("fan-in-includes-bias", in->fan_in_includes_bias);
  in->allow_symmetric = flag_opt("allow-symmetric", in->allow_symmetric);
}

static int cmd_create(const char *name) {
  char what[300];
  const char *shape_s = getopt_value("shape");
  if (shape_s == NULL) die_usage("create needs --shape D1,D2,...");
  uint64_t shape[16];
  int ndim = parse_shape(shape_s, shape, 16);
  ps_init_kind ik = PS_INIT_HE_NORMAL;
  ps_optim_kind ok = PS_OPT_ADAM;
  const char *v;
  uint64_t fields;
  if ((v = getopt_value("init")) && ps_init_from_name(v, &ik) != 0)
    die_usage("--init: unknown initializer '%s'", v);
  if ((v = getopt_value("optimizer")) && ps_optim_from_name(v, &ok) != 0)
    die_usage("--optimizer: unknown optimizer '%s'", v);
  ps_tensor_spec s;
  ps_tensor_spec_init(&s, ik, ok);
  init_opts(&s.init);
  optim_opts(&s.optim, &fields);
  s.block_size = u64_opt("block-size", s.block_size);

  snprintf(what, sizeof(what), "create %s", name);
  int rc = ps_create(client, name, shape, ndim, &s);
  if (rc != 0) die_call(rc, what);
  /* Say what was created: the spec as the shards resolved it (defaults
   * filled in, the block size chosen), as lookup prints it. */
  ps_tensor_info ti;
  rc = ps_lookup(client, name, &ti);
  if (rc != 0) die_call(rc, what);
  print_info(&ti);
  ps_tensor_info_free(&ti);
  return 0;
}

static int cmd_create_table(const char *name) {
  char what[300];
  if (getopt_value("dim") == NULL) die_usage("create-table needs --dim N");
  uint64_t dim = u64_opt("dim", 0);
  if (dim == 0 || dim > UINT32_MAX) die_usage("--dim: give the floats of a row, >= 1");
  ps_init_kind ik = PS_INIT_NORMAL;
  ps_optim_kind ok = PS_OPT_ADAM;
  const char *v;
  uint64_t fields;
  if ((v = getopt_value("init")) && ps_init_from_name(v, &ik) != 0)
    die_usage("--init: unknown initializer '%s'", v);
  if ((v = getopt_value("optimizer")) && ps_optim_from_name(v, &ok) != 0)
    die_usage("--optimizer: unknown optimizer '%s'", v);
  ps_table_spec s;
  ps_table_spec_init(&s, ik, ok);
  init_opts(&s.init);
  optim_opts(&s.optim, &fields);
  s.max_rows = u64_opt("max-rows", 0);
  v = getopt_value("evict");
  if (v != NULL && ps_evict_from_name(v, &s.evict) != 0)
    die_usage("--evict: '%s' is not lru, lfu or none", v);
  if (v == NULL && s.max_rows > 0) s.evict = PS_EVICT_LRU;
  snprintf(what, sizeof(what), "create-table %s", name);
  int rc = ps_create_table(client, name, (uint32_t)dim, &s);
  if (rc != 0) die_call(rc, what);
  printf("ok: table %s, rows of %llu floats, %s, max_rows %llu, evict %s\n", name,
         (unsigned long long)dim, ps_optim_name(s.optim.kind), (unsigned long long)s.max_rows,
         ps_evict_name(s.evict));
  return 0;
}

/* The dim of table `name` in job `job`, from shard 0's statistics. */
static uint32_t table_dim(const char *name, const char *job) {
  char *json = NULL, pat[600];
  int rc = ps_stats(client, 0, &json);
  if (rc != 0) die_call(rc, "stats");
  snprintf(pat, sizeof(pat), "{\"job\":\"%s\",\"name\":\"%s\",\"dim\":", job, name);
  const char *p = strstr(json, pat);
  long d = p ? strtol(p + strlen(pat), NULL, 10) : 0;
  free(json);
  if (d <= 0) die("pull-rows %s: no table of that name in job %s", name, job);
  return (uint32_t)d;
}

static int cmd_pull_rows(const char *name) {
  char what[300];
  const char *ks = getopt_value("keys");
  if (ks == NULL || *ks == '\0') die_usage("pull-rows needs --keys K1,K2,...");
  size_t n = 1;
  for (const char *p = ks; *p; p++) n += *p == ',';
  uint64_t *keys = malloc(n * sizeof(*keys));
  if (keys == NULL) die("out of memory");
  char *copy = strdup(ks), *save = NULL;
  size_t k = 0;
  for (char *t = strtok_r(copy, ",", &save); t != NULL; t = strtok_r(NULL, ",", &save))
    keys[k++] = parse_u64("keys", t);
  free(copy);
  if (k != n) die_usage("--keys: '%s' is not K1,K2,...", ks);
  const char *job = getopt_value("job") ? getopt_value("job") : getenv("PS_JOB");
  uint32_t dim = table_dim(name, job && *job ? job : "default");
  float *rows = malloc(n * dim * sizeof(float));
  if (rows == NULL) die("out of memory");
  snprintf(what, sizeof(what), "pull-rows %s", name);
  int rc = ps_pull_rows(client, name, keys, n, rows);
  if (rc != 0) die_call(rc, what);
  for (size_t i = 0; i < n; i++) {
    printf("%llu", (unsigned long long)keys[i]);
    for (uint32_t j = 0; j < dim; j++) printf(" %.9g", rows[i * dim + j]);
    printf("\n");
  }
  free(rows);
  free(keys);
  return 0;
}

static int cmd_lookup(const char *name) {
  char what[300];
  ps_tensor_info ti;
  snprintf(what, sizeof(what), "lookup %s", name);
  int rc = ps_lookup(client, name, &ti);
  if (rc != 0) die_call(rc, what);
  print_info(&ti);
  ps_tensor_info_free(&ti);
  return 0;
}

static int cmd_pull(const char *name) {
  char what[300];
  ps_tensor_info ti;
  uint64_t version;
  snprintf(what, sizeof(what), "pull %s", name);
  int rc = ps_lookup(client, name, &ti);
  if (rc != 0) die_call(rc, what);
  uint64_t n = ti.numel;
  ps_tensor_info_free(&ti);
  float *v = malloc((size_t)n * sizeof(float));
  if (v == NULL) die("%s: out of memory for %llu floats", what, (unsigned long long)n);
  rc = ps_pull(client, name, v, n, &version);
  if (rc != 0) die_call(rc, what);
  const char *out = getopt_value("out");
  if (out != NULL) {
    write_floats(out, v, n);
    printf("version %llu\ncount %llu\n", (unsigned long long)version, (unsigned long long)n);
  } else {
    double sum = 0, sumsq = 0, mn = v[0], mx = v[0];
    for (uint64_t i = 0; i < n; i++) {
      sum += v[i];
      sumsq += (double)v[i] * v[i];
      if (v[i] < mn) mn = v[i];
      if (v[i] > mx) mx = v[i];
    }
    double mean = sum / (double)n, var = sumsq / (double)n - mean * mean;
    /* The values are float32: every figure to float32 precision. */
    printf("version %llu\ncount %llu\nmean %s\nstd %s\nmin %s\nmax %s\n",
           (unsigned long long)version, (unsigned long long)n, psn_num_float((float)mean).s,
           psn_num_float((float)sqrt(var > 0 ? var : 0)).s, psn_num_float((float)mn).s,
           psn_num_float((float)mx).s);
  }
  free(v);
  return 0;
}

static int cmd_push(const char *name) {
  char what[300];
  const char *in = getopt_value("in");
  if (in == NULL) die_usage("push needs --in FILE");
  snprintf(what, sizeof(what), "push %s", name);
  uint64_t n, version;
  float *g = read_floats(in, &n);
  ps_ticket t = 0;
  int rc = ps_push_async(client, name, g, n, NULL, NULL, &t);
  if (rc == 0) rc = ps_wait(client, t, &version);
  if (rc != 0) die_call(rc, what);
  printf("version %llu\n", (unsigned long long)version);
  free(g);
  return 0;
}

/* A call that takes only a name (rm, reset, rm-table, reset-table): run it,
 * or die naming the command; then say what was done. */
static int cmd_by_name(const char *cmd, int (*call)(ps_client *, const char *),
                       const char *done, const char *name) {
  char what[300];
  snprintf(what, sizeof(what), "%s %s", cmd, name);
  int rc = call(client, name);
  if (rc != 0) die_call(rc, what);
  printf("%s %s\n", done, name);
  return 0;
}

static int cmd_set(const char *name) {
  char what[300];
  const char *in = getopt_value("in");
  if (in == NULL) die_usage("set needs --in FILE");
  uint64_t offset = u64_opt("offset", 0), n;
  snprintf(what, sizeof(what), "set %s", name);
  float *v = read_floats(in, &n);
  int rc = ps_set(client, name, offset, v, n, flag_opt("zero-state", 0) ? PS_SET_ZERO_STATE : 0);
  free(v);
  if (rc != 0) die_call(rc, what);
  printf("set %s: %llu values at offset %llu\n", name, (unsigned long long)n,
         (unsigned long long)offset);
  return 0;
}

/* What tune changes is printed as the options given: the values exactly as
 * the operator wrote them. */
static int cmd_tune(const char *name) {
  char what[300], changed[1024] = "";
  ps_optim_spec o;
  uint64_t fields;
  memset(&o, 0, sizeof(o));
  optim_opts(&o, &fields);
  if (fields == 0) die_usage("tune needs at least one optimizer option (--lr X, ...)");
  for (size_t i = 0; i < NOPTS; i++)
    if (opts[i].value != NULL && opts[i].cmds != NULL && word_in("tune", opts[i].cmds) &&
        strcmp(opts[i].name, "all") != 0)
      snprintf(changed + strlen(changed), sizeof(changed) - strlen(changed), " --%s %s",
               opts[i].name, opts[i].value);
  snprintf(what, sizeof(what), "tune %s", name ? name : "--all");
  int rc = ps_set_optim(client, name, &o, fields);
  if (rc != 0) die_call(rc, what);
  printf("tuned %s:%s\n", name ? name : "every tensor", changed);
  return 0;
}

static int cmd_list(void) {
  ps_tensor_info *ti;
  size_t n;
  int rc = ps_list(client, &ti, &n);
  if (rc != 0) die_call(rc, "list");
  for (size_t i = 0; i < n; i++) {
    printf("%s ", ti[i].name);
    print_shape(ti[i].shape, ti[i].ndim);
    printf(" %llu %llu %s %s\n", (unsigned long long)ti[i].numel,
           (unsigned long long)ti[i].version, ps_init_name(ti[i].spec.init.kind),
           ps_optim_name(ti[i].spec.optim.kind));
  }
  ps_list_free(ti, n);
  return 0;
}

static int cmd_stats(void) {
  int first = 0, last = ps_num_shards(client) - 1;
  if (getopt_value("shard") != NULL) {
    uint64_t s = u64_opt("shard", 0);
    if (s > (uint64_t)last) die_usage("--shard %llu: the list has %d shards", (unsigned long long)s, last + 1);
    first = last = (int)s;
  }
  for (int i = first; i <= last; i++) {
    char *json, what[64];
    snprintf(what, sizeof(what), "stats of shard %d", i);
    int rc = ps_stats(client, i, &json);
    if (rc != 0) die_call(rc, what);
    printf("%s\n", json);
    free(json);
  }
  return 0;
}

static const char *mode_name(int staleness, char *buf, size_t n) {
  if (staleness < 0) snprintf(buf, n, "async");
  else if (staleness == 0) snprintf(buf, n, "sync");
  else snprintf(buf, n, "ssp:%d", staleness);
  return buf;
}

/* One line per job: NAME run N running|ended W workers MODE live L clocks
 * A..B tensors T blocks B bytes X rounds_pending R. */
static int cmd_jobs(void) {
  ps_job_info *jobs;
  size_t n;
  int rc = ps_jobs(client, &jobs, &n);
  if (rc != 0) die_call(rc, "jobs");
  for (size_t i = 0; i < n; i++) {
    const ps_job_info *j = &jobs[i];
    char m[32];
    printf("%s run %llu %s %u workers %s live %u clocks %llu..%llu tensors %llu blocks %llu "
           "bytes %llu rounds_pending %llu\n",
           j->name, (unsigned long long)j->incarnation, j->ended ? "ended" : "running",
           j->num_workers, j->num_workers ? mode_name(j->staleness, m, sizeof(m)) : "-",
           j->live, (unsigned long long)j->clock_min, (unsigned long long)j->clock_max,
           (unsigned long long)j->tensors, (unsigned long long)j->blocks,
           (unsigned long long)j->bytes, (unsigned long long)j->rounds_pending);
  }
  ps_jobs_free(jobs, n);
  return 0;
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

int main(int argc, char **argv) {
  const char *pos[3];
  int npos;
  parse_args(argc, argv, pos, &npos, 3);
  if (getopt_value("help")) {
    fputs(usage, stdout);
    return 0;
  }
  if (npos == 0) die_usage("no command given");
  const char *cmd = pos[0];
  int needs_name = -1;
  if (word_in(cmd, "create lookup pull push rm reset set create-table pull-rows rm-table "
                  "reset-table"))
    needs_name = 1;
  if (word_in(cmd, "ping list stats checkpoint top jobs")) needs_name = 0;
  if (strcmp(cmd, "tune") == 0) needs_name = getopt_value("all") == NULL;
  if (strcmp(cmd, "job") == 0) {
    if (npos != 3 || (strcmp(pos[1], "end") != 0 && strcmp(pos[1], "drop") != 0))
      die_usage("job takes `end NAME` or `drop NAME`");
    needs_name = 2;
  }
  if (needs_name < 0) die_usage("unknown command '%s'", cmd);
  if (!strcmp(cmd, "tune") && (npos != 1 + needs_name))
    die_usage("tune needs one tensor NAME, or --all for every tensor");
  if (needs_name == 1 && npos != 2)
    die_usage("%s needs exactly one %s NAME", cmd, strchr(cmd, '-') ? "table" : "tensor");
  if (!needs_name && npos != 1) die_usage("%s takes no arguments", cmd);
  /* Refuse options that mean nothing to this command: a misplaced --lr on
   * a pull is a mistake worth hearing about. */
  for (size_t i = 0; i < NOPTS; i++)
    if (opts[i].value != NULL && opts[i].cmds != NULL && !word_in(cmd, opts[i].cmds))
      die_usage("option --%s does not apply to %s", opts[i].name, cmd);

  /* psctl reports every failure itself, in one line; the library's own
   * log lines (reconnects, refusals) would only add noise to a script's
   * stderr. PS_LOG_LEVEL still turns them on. */
  setenv("PS_LOG_LEVEL", "off", 0);
  ps_options o;
  ps_options_init(&o);
  o.rank = -1; /* a tool, never a worker of the job */
  o.identity = "psctl";
  if (getopt_value("token-file") != NULL) o.token_file = getopt_value("token-file");
  if (getopt_value("role") != NULL) o.role = getopt_value("role");
  if (getopt_value("job") != NULL) o.job = getopt_value("job");
  /* A shard that stops answering shows as down in the next table. */
  if (strcmp(cmd, "top") == 0) o.op_timeout_ms = 3000;
  if (getopt_value("timeout") != NULL) {
    uint64_t ms = u64_opt("timeout", 0);
    if (ms == 0 || ms > 24u * 3600 * 1000) die_usage("--timeout: give milliseconds, > 0");
    o.connect_timeout_ms = o.op_timeout_ms = (int)ms;
  }
  const char *servers = getopt_value("servers");
  int rc = ps_connect(&client, servers, &o);
  if (rc != 0) {
    char what[600];
    const char *list = servers ? servers : getenv("PS_SERVERS");
    snprintf(what, sizeof(what), "connect to %s", list && *list ? list : "127.0.0.1:7070");
    die_call(rc, what);
  }

  if (strcmp(cmd, "create-table") == 0) {
    cmd_create_table(pos[1]);
  } else if (strcmp(cmd, "pull-rows") == 0) {
    cmd_pull_rows(pos[1]);
  } else if (strcmp(cmd, "rm-table") == 0) {
    cmd_by_name(cmd, ps_delete_table, "deleted table", pos[1]);
  } else if (strcmp(cmd, "reset-table") == 0) {
    cmd_by_name(cmd, ps_reset_table, "reset table", pos[1]);
  } else if (strcmp(cmd, "create") == 0) {
    cmd_create(pos[1]);
  } else if (strcmp(cmd, "lookup") == 0) {
    cmd_lookup(pos[1]);
  } else if (strcmp(cmd, "pull") == 0) {
    cmd_pull(pos[1]);
  } else if (strcmp(cmd, "push") == 0) {
    cmd_push(pos[1]);
  } else if (strcmp(cmd, "rm") == 0) {
    cmd_by_name(cmd, ps_delete, "deleted", pos[1]);
  } else if (strcmp(cmd, "reset") == 0) {
    cmd_by_name(cmd, ps_reset, "reset", pos[1]);
  } else if (strcmp(cmd, "set") == 0) {
    cmd_set(pos[1]);
  } else if (strcmp(cmd, "tune") == 0) {
    cmd_tune(npos == 2 ? pos[1] : NULL);
  } else if (strcmp(cmd, "list") == 0) {
    cmd_list();
  } else if (strcmp(cmd, "stats") == 0) {
    cmd_stats();
  } else if (strcmp(cmd, "ping") == 0) {
    double t0 = now_ms();
    rc = ps_ping(client);
    if (rc != 0) die_call(rc, "ping");
    printf("ok: %d shards answered in %s ms\n", ps_num_shards(client),
           psn_num_at(now_ms() - t0, 3).s);
  } else if (strcmp(cmd, "top") == 0) {
    double interval = num_opt("interval", 1.0);
    if (!(interval >= 0.05 && interval <= 3600)) die_usage("--interval: give seconds, 0.05 to 3600");
    uint64_t count = u64_opt("count", 0);
    const char *list = servers ? servers : getenv("PS_SERVERS");
    if (psctl_top(client, list && *list ? list : "127.0.0.1:7070", interval,
                  flag_opt("once", 0), (long)count) != 0)
      die("top: out of memory");
  } else if (strcmp(cmd, "checkpoint") == 0) {
    rc = ps_checkpoint(client);
    if (rc != 0) die_call(rc, "checkpoint");
    printf("ok\n");
  } else if (strcmp(cmd, "jobs") == 0) {
    cmd_jobs();
  } else if (strcmp(cmd, "job") == 0) {
    int drop = strcmp(pos[1], "drop") == 0;
    char what[128];
    snprintf(what, sizeof(what), "job %s %.64s", pos[1], pos[2]);
    rc = drop ? ps_job_drop(client, pos[2]) : ps_job_end(client, pos[2]);
    if (rc != 0) die_call(rc, what);
    printf("ok: job %s %s on %d shards\n", pos[2], drop ? "dropped" : "ended",
           ps_num_shards(client));
  }
  ps_close(client);
  return 0;
}
