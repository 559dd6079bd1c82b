/*
 * train.c -- psd-train: trains an MLP on Fashion-MNIST against a psd job,
 * as any user's trainer would, through the public API in psd.h only.
 *
 * Every worker creates the job's tensors (creation is idempotent), pulls
 * them, and then, per minibatch of its share of the training set: forward,
 * backward, push-pull each layer's weight and bias (asynchronously: a layer
 * is pushed as soon as its gradients are final, while the layers below it
 * are still being differentiated), wait, clock. At every epoch end the
 * workers meet at a barrier and rank 0 measures test accuracy.
 *
 * It also owns what psd-train's models share (train.h): the flags, the
 * connection, the optimizer spec and the loop's helpers. --model sections
 * hands the job to train_sections.c.
 */
#include <cblas.h>
#include <errno.h>
#include <limits.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "idx.h"
#include "mlp.h"
#include "psd.h"
#include "train.h"

#define DEFAULT_DATA_DIR "/usr/share/datasets/fashion-mnist"

static int g_rank;

void die(const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "psd-train: rank %d: ", g_rank);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  exit(1);
}

double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void usage(FILE *f) {
  fprintf(f,
    "usage: psd-train [options]\n"
    "Train a ReLU MLP on Fashion-MNIST (--model mlp), or a classifier of the\n"
    "Debian package index's sections on a sparse embedding table (--model\n"
    "sections), with a psd parameter server.\n"
    "\n"
    "Job (flags override the environment):\n"
    "  --servers LIST      HOST:PORT,... of every shard (PS_SERVERS; 127.0.0.1:7070)\n"
    "  --rank R            this worker's rank (PS_WORKER_RANK, else RANK; 0)\n"
    "  --workers N         workers in the job (PS_NUM_WORKERS, else WORLD_SIZE; 1)\n"
    "  --mode M            sync | async | ssp:N (bounded staleness N) (sync)\n"
    "  --job NAME          the job's name: its tensors, workers and rounds are its\n"
    "                      own on shards that serve several jobs (PS_JOB, default)\n"
    "Model and data:\n"
    "  --model M           mlp | sections (mlp)\n"
    "  --layers L          mlp: layer sizes, input first (784,256,128,10)\n"
    "  --data DIR          IDX files (" DEFAULT_DATA_DIR ")\n"
    "  --train-limit N     use the first N training images (all)\n"
    "  --test-limit N      use the first N test images (all)\n"
    "  --no-standardize    feed pixels in [0,1] instead of (x - mean) / std\n"
    "  --index FILE        sections: the package index as apt-cache dumpavail\n"
    "                      prints it ('-': stdin; default: run apt-cache\n"
    "                      dumpavail, which needs apt-get update first)\n"
    "  --packages N        sections: read only the first N packages (all)\n"
    "  --dim N             sections: embedding width (32)\n"
    "  --rows-log2 B       sections: features hash into 2^B rows (20)\n"
    "  --emb-sigma X       sections: the rows' normal init (0.1)\n"
    "                      (--train-limit/--test-limit count packages there)\n"
    "Optimization (applied by the servers):\n"
    "  --epochs N          passes over the training set (mlp 12, sections 5)\n"
    "  --batch N           minibatch per worker (64)\n"
    "  --optimizer NAME    sgd momentum rmsprop adam adamw adagrad (adam)\n"
    "  --lr X              base learning rate (mlp: the optimizer's default,\n"
    "                      sections: 0.01)\n"
    "  --weight-decay X    L2 / decoupled weight decay (0)\n"
    "  --clip-norm X       clip every pushed gradient to this norm (off)\n"
    "  --schedule NAME     constant step exponential inverse_time inverse_sqrt\n"
    "                      cosine (mlp: cosine, decaying over the whole run;\n"
    "                      sections: constant)\n"
    "  --gamma X           step/exponential factor (0.1 step, 0.99 exponential)\n"
    "  --step-size E       step schedule: decay every E epochs (1)\n"
    "  --decay X           inverse_time decay per update (1e-3)\n"
    "  --lr-min X          cosine floor (0)\n"
    "  --warmup E          linear warmup over E epochs, may be fractional (0)\n"
    "  --seed N            weight init and shuffling seed (1)\n"
    "Output:\n"
    "  --csv FILE          append per-epoch rows (rank 0)\n"
    "  --log-every N       print the mean loss every N steps\n"
    "  --progress          progress bar on stderr when it is a terminal\n"
    "  --quiet             only the final accuracy (rank 0) or errors\n"
    "Testing:\n"
    "  --gate-file PATH    with --gate-step N: once this worker has done N steps\n"
    "  --gate-step N       (counted over all epochs, 0 = before the first), it\n"
    "                      prints 'psd-train: rank R at the gate after N steps'\n"
    "                      on stderr and waits (heartbeating, so it stays in the\n"
    "                      job) until PATH exists, then goes on; it gives up\n"
    "                      after 600 s. Tests use it to hold a job at a known\n"
    "                      point instead of racing a timer\n"
    "  --help, --version\n");
}

/* Parse a whole string as a long in [lo, hi] or die naming the flag. */
static long parse_long(const char *flag, const char *s, long lo, long hi) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (end == s || *end != '\0' || errno != 0 || v < lo || v > hi)
    die("%s: \"%s\" is not an integer in [%ld, %ld]", flag, s, lo, hi);
  return v;
}

static double parse_double(const char *flag, const char *s, double lo,
                           double hi) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (end == s || *end != '\0' || errno != 0 || !(v >= lo && v <= hi))
    die("%s: \"%s\" is not a number in [%g, %g]", flag, s, lo, hi);
  return v;
}

/* "sync" -> 0, "async" -> -1, "ssp:N" -> N (N >= 1). */
static int parse_mode(const char *s, config *cfg) {
  if (strcmp(s, "sync") == 0) {
    cfg->staleness = 0;
  } else if (strcmp(s, "async") == 0) {
    cfg->staleness = -1;
  } else if (strncmp(s, "ssp:", 4) == 0) {
    cfg->staleness = (int)parse_long("--mode ssp", s + 4, 1, 1000000);
  } else {
    die("--mode: \"%s\" is not sync, async or ssp:N", s);
  }
  snprintf(cfg->mode, sizeof cfg->mode, "%s", s);
  return 0;
}

enum {
  OPT_SERVERS = 256, OPT_RANK, OPT_WORKERS, OPT_MODE, OPT_EPOCHS, OPT_BATCH,
  OPT_LR, OPT_OPTIMIZER, OPT_SCHEDULE, OPT_GAMMA, OPT_STEP_SIZE, OPT_DECAY,
  OPT_LR_MIN, OPT_WARMUP, OPT_WD, OPT_CLIP, OPT_LAYERS, OPT_DATA,
  OPT_TRAIN_LIMIT, OPT_TEST_LIMIT, OPT_SEED, OPT_CSV, OPT_QUIET, OPT_PROGRESS,
  OPT_LOG_EVERY, OPT_NO_STD, OPT_GATE_FILE, OPT_GATE_STEP, OPT_JOB, OPT_HELP, OPT_VERSION,
  OPT_MODEL, OPT_INDEX, OPT_PACKAGES, OPT_DIM, OPT_ROWS_LOG2, OPT_EMB_SIGMA
};

/* The defaults that differ between the models, where no flag set them. */
static void model_defaults(config *cfg) {
  if (cfg->model == MODEL_MLP) {
    if (cfg->epochs < 0) cfg->epochs = 12;
    /* Cosine decay to zero over the run ends on a settled model rather
     * than wherever Adam's noise last left it: measured on Fashion-MNIST,
     * it moves the final test accuracy up by about half a point and
     * steadies it. */
    if (cfg->schedule == NULL) cfg->schedule = "cosine";
    return;
  }
  if (cfg->epochs < 0) cfg->epochs = 5;
  /* The sections model's rows are updated lazily, each only when a batch
   * holds it: a decaying rate leaves the rare rows, seen late, barely
   * trained. Measured on one process (Adam, 5 epochs): constant 0.01 ends
   * at 0.872 test accuracy, cosine from 0.01 at 0.851. */
  if (cfg->schedule == NULL) cfg->schedule = "constant";
  if (cfg->lr < 0) cfg->lr = 0.01;
}

static void parse_args(int argc, char **argv, config *cfg) {
  static const struct option longopts[] = {
    {"servers", 1, 0, OPT_SERVERS}, {"rank", 1, 0, OPT_RANK},
    {"workers", 1, 0, OPT_WORKERS}, {"mode", 1, 0, OPT_MODE},
    {"epochs", 1, 0, OPT_EPOCHS}, {"batch", 1, 0, OPT_BATCH},
    {"lr", 1, 0, OPT_LR}, {"optimizer", 1, 0, OPT_OPTIMIZER},
    {"schedule", 1, 0, OPT_SCHEDULE}, {"gamma", 1, 0, OPT_GAMMA},
    {"step-size", 1, 0, OPT_STEP_SIZE}, {"decay", 1, 0, OPT_DECAY},
    {"lr-min", 1, 0, OPT_LR_MIN}, {"warmup", 1, 0, OPT_WARMUP},
    {"weight-decay", 1, 0, OPT_WD}, {"clip-norm", 1, 0, OPT_CLIP},
    {"layers", 1, 0, OPT_LAYERS}, {"data", 1, 0, OPT_DATA},
    {"train-limit", 1, 0, OPT_TRAIN_LIMIT},
    {"test-limit", 1, 0, OPT_TEST_LIMIT}, {"seed", 1, 0, OPT_SEED},
    {"csv", 1, 0, OPT_CSV}, {"quiet", 0, 0, OPT_QUIET},
    {"progress", 0, 0, OPT_PROGRESS}, {"log-every", 1, 0, OPT_LOG_EVERY},
    {"no-standardize", 0, 0, OPT_NO_STD}, {"gate-file", 1, 0, OPT_GATE_FILE},
    {"gate-step", 1, 0, OPT_GATE_STEP}, {"job", 1, 0, OPT_JOB}, {"help", 0, 0, OPT_HELP},
    {"version", 0, 0, OPT_VERSION}, {"model", 1, 0, OPT_MODEL},
    {"index", 1, 0, OPT_INDEX}, {"packages", 1, 0, OPT_PACKAGES},
    {"dim", 1, 0, OPT_DIM}, {"rows-log2", 1, 0, OPT_ROWS_LOG2},
    {"emb-sigma", 1, 0, OPT_EMB_SIGMA}, {0, 0, 0, 0}};
  char err[256];
  const char *env;

  memset(cfg, 0, sizeof *cfg);
  cfg->servers = (env = getenv("PS_SERVERS")) && *env ? env : "127.0.0.1:7070";
  /* The rank and the job's size from the environment as the library reads
   * it (psd.h, ps_options_init): PS_WORKER_RANK and PS_NUM_WORKERS, else a
   * launcher's RANK and WORLD_SIZE. */
  ps_options env_opts;
  ps_options_init(&env_opts);
  cfg->rank = env_opts.rank >= 0 ? env_opts.rank : 0;
  cfg->workers = env_opts.num_workers;
  if (cfg->rank > 1 << 20 || cfg->workers < 1 || cfg->workers > 1 << 20)
    die("the environment's rank %d or worker count %d (PS_WORKER_RANK or RANK, "
        "PS_NUM_WORKERS or WORLD_SIZE) is out of range", cfg->rank, cfg->workers);
  parse_mode("sync", cfg);
  cfg->epochs = -1; /* -1: the model's default, set below */
  cfg->batch = 64;
  cfg->optimizer = "adam";
  cfg->lr = cfg->gamma = cfg->decay = -1; /* -1: the spec's default */
  cfg->dim = 32;
  cfg->rows_log2 = 20;
  cfg->emb_sigma = 0.1;
  cfg->step_epochs = 1;
  cfg->data_dir = DEFAULT_DATA_DIR;
  cfg->seed = 1;
  cfg->standardize = 1;
  cfg->gate_step = -1;
  if (mlp_parse_sizes("784,256,128,10", cfg->sizes, MLP_MAX_SIZES,
                      &cfg->nsizes, err, sizeof err) != 0)
    die("default layers: %s", err);

  int ch;
  while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    switch (ch) {
    case OPT_SERVERS: cfg->servers = optarg; break;
    case OPT_RANK: cfg->rank = (int)parse_long("--rank", optarg, 0, 1 << 20); break;
    case OPT_WORKERS:
      cfg->workers = (int)parse_long("--workers", optarg, 1, 1 << 20);
      break;
    case OPT_MODE: parse_mode(optarg, cfg); break;
    case OPT_EPOCHS: cfg->epochs = (int)parse_long("--epochs", optarg, 1, 1000000); break;
    case OPT_BATCH: cfg->batch = (int)parse_long("--batch", optarg, 1, 1 << 20); break;
    case OPT_LR: cfg->lr = parse_double("--lr", optarg, 1e-12, 1e3); break;
    case OPT_OPTIMIZER: cfg->optimizer = optarg; break;
    case OPT_SCHEDULE: cfg->schedule = optarg; break;
    case OPT_GAMMA: cfg->gamma = parse_double("--gamma", optarg, 0, 1); break;
    case OPT_STEP_SIZE:
      cfg->step_epochs = parse_double("--step-size", optarg, 1e-6, 1e9);
      break;
    case OPT_DECAY: cfg->decay = parse_double("--decay", optarg, 0, 1e9); break;
    case OPT_LR_MIN: cfg->lr_min = parse_double("--lr-min", optarg, 0, 1e3); break;
    case OPT_WARMUP: cfg->warmup_epochs = parse_double("--warmup", optarg, 0, 1e9); break;
    case OPT_WD: cfg->weight_decay = parse_double("--weight-decay", optarg, 0, 1e3); break;
    case OPT_CLIP: cfg->clip_norm = parse_double("--clip-norm", optarg, 0, 1e12); break;
    case OPT_LAYERS:
      if (mlp_parse_sizes(optarg, cfg->sizes, MLP_MAX_SIZES, &cfg->nsizes, err,
                          sizeof err) != 0)
        die("--layers: %s", err);
      break;
    case OPT_DATA: cfg->data_dir = optarg; break;
    case OPT_TRAIN_LIMIT:
      cfg->train_limit = parse_long("--train-limit", optarg, 1, 1L << 40);
      break;
    case OPT_TEST_LIMIT:
      cfg->test_limit = parse_long("--test-limit", optarg, 1, 1L << 40);
      break;
    case OPT_SEED:
      cfg->seed = (uint64_t)parse_long("--seed", optarg, 0, (long)(~0UL >> 1));
      break;
    case OPT_CSV: cfg->csv = optarg; break;
    case OPT_QUIET: cfg->quiet = 1; break;
    case OPT_PROGRESS: cfg->progress = 1; break;
    case OPT_LOG_EVERY:
      cfg->log_every = (int)parse_long("--log-every", optarg, 1, 1 << 30);
      break;
    case OPT_NO_STD: cfg->standardize = 0; break;
    case OPT_GATE_FILE: cfg->gate_file = optarg; break;
    case OPT_JOB: cfg->job = optarg; break;
    case OPT_GATE_STEP:
      cfg->gate_step = parse_long("--gate-step", optarg, 0, 1L << 40);
      break;
    case OPT_MODEL:
      if (strcmp(optarg, "mlp") == 0)
        cfg->model = MODEL_MLP;
      else if (strcmp(optarg, "sections") == 0)
        cfg->model = MODEL_SECTIONS;
      else
        die("--model: \"%s\" is not mlp or sections", optarg);
      break;
    case OPT_INDEX: cfg->index = optarg; break;
    case OPT_PACKAGES: cfg->packages = parse_long("--packages", optarg, 1, 1L << 40); break;
    case OPT_DIM: cfg->dim = (int)parse_long("--dim", optarg, 1, 4096); break;
    case OPT_ROWS_LOG2: cfg->rows_log2 = (int)parse_long("--rows-log2", optarg, 8, 40); break;
    case OPT_EMB_SIGMA: cfg->emb_sigma = parse_double("--emb-sigma", optarg, 1e-6, 1e3); break;
    case OPT_HELP: usage(stdout); exit(0);
    case OPT_VERSION: printf("psd-train %s\n", PS_VERSION_STRING); exit(0);
    default: usage(stderr); exit(2);
    }
  }
  if (optind < argc) die("unexpected argument \"%s\" (see --help)", argv[optind]);
  model_defaults(cfg);
  /* Check names now rather than after the data has been loaded. */
  ps_optim_kind ok_kind;
  ps_schedule_kind sk_kind;
  if (ps_optim_from_name(cfg->optimizer, &ok_kind) != 0)
    die("--optimizer: unknown optimizer \"%s\"", cfg->optimizer);
  if (ok_kind == PS_OPT_NONE)
    die("--optimizer none: the shards would return averaged gradients, and psd-train keeps "
        "no optimizer of its own to step with them; choose one the shards apply");
  if (ps_schedule_from_name(cfg->schedule, &sk_kind) != 0)
    die("--schedule: unknown schedule \"%s\"", cfg->schedule);
  if ((cfg->gate_file != NULL) != (cfg->gate_step >= 0))
    die("--gate-file and --gate-step go together");
  g_rank = cfg->rank;
  if (cfg->rank >= cfg->workers)
    die("rank %d is not below the number of workers (%d)", cfg->rank,
        cfg->workers);
}

/* ---- the job's tensors -------------------------------------------------- */

/* The spec of every tensor: weights get He-normal (ReLU follows them)
 * except the output layer's, which feeds the softmax and gets
 * Glorot-uniform; biases start at zero. Every worker must build exactly the
 * same spec or ps_create fails with PS_EEXISTS, so it depends on flags and
 * on the data size only. updates_per_epoch converts epoch-based schedule
 * flags into the server's update counts. */
static void tensor_spec(const config *cfg, int layer, int is_bias,
                        uint64_t updates_per_epoch, ps_tensor_spec *spec) {
  ps_init_kind ik = is_bias ? PS_INIT_ZEROS
                    : layer == cfg->nsizes - 2 ? PS_INIT_GLOROT_UNIFORM
                                               : PS_INIT_HE_NORMAL;
  ps_tensor_spec_init(spec, ik, train_optim_kind(cfg));
  spec->init.seed = cfg->seed;
  train_optim(cfg, updates_per_epoch, &spec->optim);
}

ps_optim_kind train_optim_kind(const config *cfg) {
  ps_optim_kind ok;
  if (ps_optim_from_name(cfg->optimizer, &ok) != 0)
    die("--optimizer: unknown optimizer \"%s\"", cfg->optimizer);
  return ok;
}

void train_optim(const config *cfg, uint64_t updates_per_epoch, ps_optim_spec *o) {
  ps_schedule_kind sk;
  if (ps_schedule_from_name(cfg->schedule, &sk) != 0)
    die("--schedule: unknown schedule \"%s\"", cfg->schedule);
  if (cfg->lr > 0) o->lr = cfg->lr;
  o->weight_decay = cfg->weight_decay;
  o->clip_norm = cfg->clip_norm;
  o->schedule = sk;
  if (sk == PS_SCHED_STEP) o->gamma = cfg->gamma >= 0 ? cfg->gamma : 0.1;
  if (sk == PS_SCHED_EXPONENTIAL) o->gamma = cfg->gamma >= 0 ? cfg->gamma : 0.99;
  if (sk == PS_SCHED_INVERSE_TIME) o->decay = cfg->decay >= 0 ? cfg->decay : 1e-3;
  uint64_t step = (uint64_t)llround(cfg->step_epochs * (double)updates_per_epoch);
  if (sk == PS_SCHED_STEP) o->step_size = step > 0 ? step : 1;
  if (sk == PS_SCHED_COSINE) {
    o->total_steps = updates_per_epoch * (uint64_t)cfg->epochs;
    o->lr_min = cfg->lr_min;
  }
  o->warmup = (uint64_t)llround(cfg->warmup_epochs * (double)updates_per_epoch);
}

typedef struct {
  ps_client *c;
  mlp *m;
  char names[2 * MLP_MAX_SIZES][32];
  ps_ticket tickets[2 * MLP_MAX_SIZES];
  int issued[2 * MLP_MAX_SIZES];
  const char *op;     /* "push-pull" or "pull": what the tickets are */
  int failed;         /* set when issuing a call failed (see failed_msg) */
  char failed_msg[512];
} pusher;

/* Describe the failure of the call on tensor i: the library's sentence,
 * prefixed with the call and the tensor unless it already names them. */
static void call_error(const pusher *p, int i, int rc, char *out, size_t len) {
  const char *why = ps_errmsg(p->c);
  if (*why == '\0') why = ps_strerror(rc);
  if (strstr(why, p->names[i]) != NULL)
    snprintf(out, len, "%s", why);
  else
    snprintf(out, len, "%s %s: %s", p->op, p->names[i], why);
}

/* mlp_backward's hook: layer l's gradients are final and its weights are no
 * longer read, so start pushing its gradient and receiving its new values
 * into the weight buffers themselves. The buffers belong to psd until the
 * tickets are waited for in finish_step(). */
static void push_layer(mlp *m, int l, void *arg) {
  pusher *p = arg;
  mlp_layer *L = &m->layer[l];
  float *grads[2] = {L->gw, L->gb}, *vals[2] = {L->w, L->b};
  p->op = "push-pull";
  uint64_t counts[2] = {(uint64_t)L->in * (uint64_t)L->out, (uint64_t)L->out};
  for (int k = 0; k < 2; k++) {
    int i = 2 * l + k;
    p->issued[i] = 0;
    if (p->failed) continue;
    int rc = ps_push_pull_async(p->c, p->names[i], grads[k], vals[k],
                                counts[k], NULL, NULL, &p->tickets[i]);
    if (rc != 0) {
      p->failed = 1;
      call_error(p, i, rc, p->failed_msg, sizeof p->failed_msg);
      continue;
    }
    p->issued[i] = 1;
  }
}

/* Collect every ticket of the step (all of them, even after a failure, so
 * that none is left owning a buffer) and die on the first error. */
static void finish_step(pusher *p) {
  int n = 2 * p->m->nlayers, first = 0;
  char msg[512] = "";
  for (int i = 0; i < n; i++) {
    if (!p->issued[i]) continue;
    int rc = ps_wait(p->c, p->tickets[i], NULL);
    p->issued[i] = 0;
    if (rc != 0 && first == 0) {
      first = rc;
      call_error(p, i, rc, msg, sizeof msg);
    }
  }
  if (p->failed) die("%s", p->failed_msg);
  if (first) die("%s", msg);
}

/* Pull every tensor into the network's weights, all at once. */
static void pull_all(pusher *p) {
  int n = 2 * p->m->nlayers;
  p->op = "pull";
  for (int i = 0; i < n; i++) {
    mlp_layer *L = &p->m->layer[i / 2];
    float *dst = i % 2 ? L->b : L->w;
    uint64_t cnt = i % 2 ? (uint64_t)L->out : (uint64_t)L->in * L->out;
    int rc = ps_pull_async(p->c, p->names[i], dst, cnt, NULL, NULL,
                           &p->tickets[i]);
    if (rc != 0) {
      p->failed = 1;
      call_error(p, i, rc, p->failed_msg, sizeof p->failed_msg);
      break;
    }
    p->issued[i] = 1;
  }
  finish_step(p);
}

/* ---- training ----------------------------------------------------------- */

/* splitmix64: seedable and plenty for shuffling an epoch's order. */
static uint64_t rng_next(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

void shuffle(int *perm, int n, uint64_t seed) {
  uint64_t s = seed;
  for (int i = n - 1; i > 0; i--) {
    /* The modulo bias is below n / 2^64: immaterial here. */
    int j = (int)(rng_next(&s) % (uint64_t)(i + 1));
    int t = perm[i];
    perm[i] = perm[j];
    perm[j] = t;
  }
}

static void progress_bar(int epoch, int epochs, int step, int steps,
                         double loss) {
  char bar[31];
  int fill = steps > 0 ? (int)((long)step * 30 / steps) : 30;
  for (int i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '.';
  bar[30] = '\0';
  fprintf(stderr, "\r\033[Kepoch %d/%d [%s] %d/%d loss %.4f", epoch, epochs,
          bar, step, steps, loss);
  fflush(stderr);
}

void csv_row(const config *cfg, int epoch, double loss, double tacc,
                    double acc, double sps, double elapsed) {
  FILE *f = fopen(cfg->csv, "a");
  if (f == NULL) die("--csv %s: %s", cfg->csv, strerror(errno));
  if (fseek(f, 0, SEEK_END) == 0 && ftell(f) == 0)
    fprintf(f, "mode,workers,epoch,loss,train_acc,test_acc,samples_per_s,"
               "elapsed\n");
  fprintf(f, "%s,%d,%d,%.6f,%.6f,%.6f,%.1f,%.3f\n", cfg->mode, cfg->workers,
          epoch, loss, tacc, acc, sps, elapsed);
  if (fclose(f) != 0) die("--csv %s: %s", cfg->csv, strerror(errno));
}

/* One line of what the library counted (ps_metrics): calls by kind with
 * their mean and worst latency, the block requests the shards saw, bytes,
 * reconnects and resends. key=value pairs, for people and scripts. */
void print_client_metrics(ps_client *c, int rank) {
  ps_client_metrics m;
  if (ps_metrics(c, &m) != 0) return;
  char line[2048];
  int n = snprintf(line, sizeof line,
                   "client metrics: rank=%d push_pull_requests=%llu push_requests=%llu "
                   "pull_requests=%llu requests_sent=%llu resends=%llu reconnects=%llu "
                   "bytes_sent=%llu bytes_received=%llu lane_bytes=%llu",
                   rank, (unsigned long long)m.push_pull_requests,
                   (unsigned long long)m.push_requests, (unsigned long long)m.pull_requests,
                   (unsigned long long)m.requests_sent, (unsigned long long)m.resends,
                   (unsigned long long)m.reconnects, (unsigned long long)m.bytes_sent,
                   (unsigned long long)m.bytes_received, (unsigned long long)m.lane_bytes);
  for (int k = 0; k < PS_CALL_KINDS && n > 0 && (size_t)n < sizeof line; k++) {
    const ps_call_metrics *cm = &m.calls[k];
    if (cm->calls == 0) continue;
    n += snprintf(line + n, sizeof line - (size_t)n,
                  " %s_calls=%llu %s_errors=%llu %s_ms_mean=%.3f %s_ms_max=%.3f",
                  ps_call_name(k), (unsigned long long)cm->calls, ps_call_name(k),
                  (unsigned long long)cm->errors, ps_call_name(k),
                  (double)cm->latency_sum_ns / 1e6 / (double)cm->calls, ps_call_name(k),
                  (double)cm->latency_max_ns / 1e6);
  }
  printf("%s\n", line);
}

uint64_t epoch_seed(const config *cfg, int epoch) {
  return cfg->seed * 0x100000001b3ULL + (uint64_t)cfg->rank * 7919u + (uint64_t)epoch;
}

int train_steps(const config *cfg, size_t total, const char *what,
                uint64_t *updates_per_epoch) {
  /* Every worker takes the same number of steps per epoch, set by the
   * smallest share, so that in sync mode nobody waits at the end of an
   * epoch for a step that a peer with one example fewer will never push. */
  long steps = (long)(total / (size_t)cfg->workers / (size_t)cfg->batch);
  if (steps < 1)
    die("%zu %s are too few for %d workers with --batch %d", total, what, cfg->workers,
        cfg->batch);
  if (steps > INT_MAX / 2) die("%zu %s make too many steps per epoch", total, what);
  /* In sync mode the server applies one (averaged) update per round; in
   * async and SSP modes every push is an update of its own. */
  *updates_per_epoch = (uint64_t)steps * (cfg->staleness == 0 ? 1 : (uint64_t)cfg->workers);
  if (cfg->gate_step >= steps * cfg->epochs)
    die("--gate-step %ld is not below the job's %ld steps (%d epochs of %ld)", cfg->gate_step,
        steps * cfg->epochs, cfg->epochs, steps);
  return (int)steps;
}

ps_client *train_connect(const config *cfg) {
  ps_options opts;
  ps_options_init(&opts);
  char identity[128];
  snprintf(identity, sizeof identity, "psd-train rank %d pid %ld", cfg->rank,
           (long)getpid());
  opts.identity = identity;
  opts.rank = cfg->rank;
  opts.num_workers = cfg->workers;
  opts.staleness = cfg->staleness;
  if (cfg->job != NULL) opts.job = cfg->job;
  ps_client *c = NULL;
  if (ps_connect(&c, cfg->servers, &opts) != 0)
    die("connect to %s: %s", cfg->servers, ps_last_error());
  return c;
}

/* --gate-file/--gate-step: say so, then wait until the gate file exists.
 * The library's thread keeps heartbeating meanwhile, so the shards keep
 * this worker in the job however long the test holds it. */
void gate_wait(const config *cfg, long done) {
  fprintf(stderr, "psd-train: rank %d at the gate after %ld steps: waiting for %s\n",
          cfg->rank, done, cfg->gate_file);
  fflush(stderr);
  double t0 = now_s();
  while (access(cfg->gate_file, F_OK) != 0) {
    if (now_s() - t0 > 600.0)
      die("the gate file %s did not appear within 600 s", cfg->gate_file);
    struct timespec ts = {0, 10 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  fprintf(stderr, "psd-train: rank %d passes the gate\n", cfg->rank);
  fflush(stderr);
}

int main(int argc, char **argv) {
  config cfg;
  char err[1024];
  parse_args(argc, argv, &cfg);
  /* Several workers and shards share the machine's cores: one BLAS thread
   * per process is faster than all of them fighting, unless the user has
   * said otherwise. */
  if (getenv("OPENBLAS_NUM_THREADS") == NULL) openblas_set_num_threads(1);
  /* Lines must reach a log file as they happen, not at exit. */
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (cfg.model == MODEL_SECTIONS) return sections_main(&cfg);

  dataset train, test;
  memset(&test, 0, sizeof test);
  if (dataset_load_split(&train, cfg.data_dir, "train", (size_t)cfg.train_limit,
                         cfg.rank, cfg.workers, err, sizeof err) != 0)
    die("training set: %s", err);
  int classes = cfg.sizes[cfg.nsizes - 1];
  if (train.dim != cfg.sizes[0])
    die("the images have %d pixels but the network takes %d inputs "
        "(--layers)", train.dim, cfg.sizes[0]);
  if (train.classes > classes)
    die("the labels go up to %d but the network has %d outputs (--layers)",
        train.classes - 1, classes);
  if (cfg.rank == 0) {
    if (dataset_load_split(&test, cfg.data_dir, "t10k", (size_t)cfg.test_limit,
                           0, 1, err, sizeof err) != 0)
      die("test set: %s", err);
    if (test.dim != train.dim || test.classes > classes)
      die("the test set does not match the training set (%d pixels, %d "
          "classes)", test.dim, test.classes);
  }
  if (cfg.standardize) {
    /* Both sets with the training set's statistics, as a deployed model
     * would see new data. */
    if (cfg.rank == 0) dataset_standardize(&test, train.mean, train.std);
    dataset_standardize(&train, train.mean, train.std);
  }

  uint64_t updates_per_epoch;
  int steps = train_steps(&cfg, train.total, "training images", &updates_per_epoch);

  mlp m;
  int eval_batch = cfg.batch > 1024 ? cfg.batch : 1024;
  if (mlp_alloc(&m, cfg.sizes, cfg.nsizes, eval_batch) != 0)
    die("out of memory for the network");

  ps_client *c = train_connect(&cfg);

  pusher p;
  double lr_used = 0.0;
  memset(&p, 0, sizeof p);
  p.c = c;
  p.m = &m;
  for (int l = 0; l < m.nlayers; l++) {
    mlp_layer *L = &m.layer[l];
    uint64_t wshape[2] = {(uint64_t)L->out, (uint64_t)L->in};
    uint64_t bshape[1] = {(uint64_t)L->out};
    ps_tensor_spec spec;
    snprintf(p.names[2 * l], sizeof p.names[0], "fc%d.w", l);
    snprintf(p.names[2 * l + 1], sizeof p.names[0], "fc%d.b", l);
    tensor_spec(&cfg, l, 0, updates_per_epoch, &spec);
    lr_used = spec.optim.lr;
    if (ps_create(c, p.names[2 * l], wshape, 2, &spec) != 0)
      die("create %s: %s", p.names[2 * l], ps_errmsg(c));
    tensor_spec(&cfg, l, 1, updates_per_epoch, &spec);
    if (ps_create(c, p.names[2 * l + 1], bshape, 1, &spec) != 0)
      die("create %s: %s", p.names[2 * l + 1], ps_errmsg(c));
  }
  pull_all(&p);

  if (cfg.rank == 0 && !cfg.quiet)
    printf("psd-train: %d workers, %d shards, mode %s, layers %d", cfg.workers,
           ps_num_shards(c), cfg.mode, cfg.sizes[0]);
  if (cfg.rank == 0 && !cfg.quiet) {
    for (int i = 1; i < cfg.nsizes; i++) printf("-%d", cfg.sizes[i]);
    printf(" (%zu parameters), %s lr %g, batch %d x %d, %d steps/epoch, "
           "%zu train / %d test images\n",
           mlp_num_params(&m), cfg.optimizer, lr_used,
           cfg.batch, cfg.workers, steps, train.total, test.n);
  }

  int *perm = malloc(sizeof(int) * (size_t)train.n);
  float *xb = malloc(sizeof(float) * (size_t)cfg.batch * (size_t)train.dim);
  uint8_t *yb = malloc((size_t)cfg.batch);
  if (perm == NULL || xb == NULL || yb == NULL) die("out of memory");
  for (int i = 0; i < train.n; i++) perm[i] = i;
  int show_bar = cfg.progress && !cfg.quiet && isatty(STDERR_FILENO);

  double t0 = now_s(), test_acc = 0.0;
  long global_step = 0;
  /* The --log-every window runs across epoch boundaries. */
  double win_loss = 0.0;
  int win = 0;
  for (int epoch = 1; epoch <= cfg.epochs; epoch++) {
    double te = now_s(), loss_sum = 0.0;
    long correct = 0;
    shuffle(perm, train.n, epoch_seed(&cfg, epoch));
    for (int s = 0; s < steps; s++) {
      if (cfg.gate_file != NULL && global_step == cfg.gate_step) gate_wait(&cfg, global_step);
      for (int r = 0; r < cfg.batch; r++) {
        int i = perm[(size_t)s * cfg.batch + r];
        memcpy(xb + (size_t)r * train.dim, train.x + (size_t)i * train.dim,
               sizeof(float) * (size_t)train.dim);
        yb[r] = train.y[i];
      }
      int ok = 0;
      mlp_forward(&m, xb, cfg.batch);
      double loss = mlp_loss(&m, yb, cfg.batch, &ok);
      mlp_backward(&m, xb, yb, cfg.batch, push_layer, &p);
      finish_step(&p);
      if (ps_clock(c) < 0) die("clock: %s", ps_errmsg(c));
      global_step++;
      loss_sum += loss;
      correct += ok;
      win_loss += loss;
      win++;
      if (cfg.log_every > 0 && win == cfg.log_every) {
        if (show_bar) fprintf(stderr, "\r\033[K");
        printf("%sstep %ld epoch %d loss %.4f\n",
               cfg.rank == 0 ? "" : "worker ", global_step, epoch,
               win_loss / win);
        win_loss = 0.0;
        win = 0;
      }
      if (show_bar && (s % 8 == 7 || s == steps - 1))
        progress_bar(epoch, cfg.epochs, s + 1, steps, loss_sum / (s + 1));
    }
    if (show_bar) fprintf(stderr, "\r\033[K");
    if (ps_barrier(c) != 0) die("barrier after epoch %d: %s", epoch, ps_errmsg(c));
    double train_time = now_s() - te;
    double epoch_loss = loss_sum / steps;
    double train_acc = (double)correct / ((double)steps * cfg.batch);
    /* Every worker processed the same number of samples; the job's rate is
     * this worker's times the number of workers. */
    double sps = (double)steps * cfg.batch * cfg.workers / train_time;
    if (cfg.rank == 0) {
      /* Pull: in async mode the other workers' last pushes landed after
       * this worker's last push-pull. */
      pull_all(&p);
      test_acc = mlp_evaluate(&m, test.x, test.y, test.n, NULL);
      double elapsed = now_s() - t0;
      if (!cfg.quiet)
        printf("epoch %d/%d loss %.4f train_acc %.4f test_acc %.4f "
               "samples/s %.0f elapsed %.1fs\n",
               epoch, cfg.epochs, epoch_loss, train_acc, test_acc, sps,
               elapsed);
      if (cfg.csv != NULL)
        csv_row(&cfg, epoch, epoch_loss, train_acc, test_acc, sps, elapsed);
    } else if (!cfg.quiet) {
      printf("worker %d epoch %d/%d loss %.4f train_acc %.4f\n", cfg.rank,
             epoch, cfg.epochs, epoch_loss, train_acc);
    }
  }
  if (cfg.rank == 0) printf("final test accuracy: %.4f\n", test_acc);
  if (!cfg.quiet) print_client_metrics(c, cfg.rank);

  ps_close(c);
  free(perm);
  free(xb);
  free(yb);
  mlp_free(&m);
  dataset_free(&train);
  dataset_free(&test);
  return 0;
}
