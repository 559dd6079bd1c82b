/*
 * train_sections.c -- psd-train --model sections: a fastText-style
 * classifier of a Debian package's Section, trained against a psd job
 * through the public API only.
 *
 * The model: a package's hashed features (sections.h) are rows of a sparse
 * embedding table on the shards ("emb", 2^rows_log2 rows of --dim floats,
 * created on first touch); their mean (bag.h) feeds a dense softmax layer
 * ("head.w" [sections, dim] and "head.b", ordinary tensors). Per minibatch
 * of its share, a worker pulls the batch's distinct rows, computes the
 * forward and backward passes, pushes the rows' gradients and push-pulls
 * the head (both at once), waits and clocks. In sync mode every round
 * averages the workers' pushes, row by row, as it does for tensors. At every
 * epoch end the workers meet at a barrier and rank 0 measures the test
 * accuracy, pulling the test packages' rows.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bag.h"
#include "mlp.h"
#include "psd.h"
#include "sections.h"
#include "train.h"

#define TABLE "emb"
#define HEAD_W "head.w"
#define HEAD_B "head.b"

/* Examples rank 0 evaluates at once, and the key occurrences it gathers at
 * most per chunk (a chunk closes early at that many). */
#define EVAL_BATCH 1024
#define EVAL_KEYS 65536

typedef struct {
  const config *cfg;
  ps_client *c;
  const char *job_name; /* the job this worker acts in, as the library resolved it */
  sections_data d;
  size_t *mine;      /* this worker's training packages */
  int nmine;
  size_t ntrain;     /* training packages of the whole job (after --train-limit) */
  size_t ntest;      /* test packages evaluated (after --test-limit) */
  mlp head;
  bag bag;
  float *x, *dx;     /* [max batch, dim] the means and their gradient */
  uint8_t *y;        /* [max batch] */
  ps_ticket tickets[3];
  int issued[3];
  int failed;        /* issuing a head push failed: failed_msg says why */
  char failed_msg[512];
} job;

/* ---- data ----------------------------------------------------------------- */

static int cmp_desc(const void *a, const void *b) {
  size_t x = *(const size_t *)a, y = *(const size_t *)b;
  return x < y ? 1 : x > y ? -1 : 0;
}

/* The most key occurrences any `batch` packages of the index hold together:
 * the bag's capacity for a training batch. */
static size_t batch_key_bound(const sections_data *d, int batch) {
  size_t *cnt = malloc(d->n * sizeof *cnt), sum = 0;
  if (cnt == NULL) die("out of memory sizing batches");
  for (size_t i = 0; i < d->n; i++) cnt[i] = d->off[i + 1] - d->off[i];
  qsort(cnt, d->n, sizeof *cnt, cmp_desc);
  for (size_t i = 0; i < d->n && i < (size_t)batch; i++) sum += cnt[i];
  free(cnt);
  return sum;
}

/* Read the index, apply the limits, take this worker's strided share of the
 * training packages. Every worker reads the same index, so all of them
 * agree on the labels, the split and each other's shares. */
static void load_data(job *j) {
  const config *cfg = j->cfg;
  char err[1024];
  if (sections_load(cfg->index, (size_t)cfg->packages, cfg->rows_log2, &j->d, err,
                    sizeof err) != 0)
    die("%s", err);
  j->ntrain = j->d.ntrain;
  if (cfg->train_limit > 0 && (size_t)cfg->train_limit < j->ntrain)
    j->ntrain = (size_t)cfg->train_limit;
  j->ntest = j->d.ntest;
  if (cfg->test_limit > 0 && (size_t)cfg->test_limit < j->ntest)
    j->ntest = (size_t)cfg->test_limit;
  j->mine = malloc((j->ntrain / (size_t)cfg->workers + 1) * sizeof *j->mine);
  if (j->mine == NULL) die("out of memory for the training share");
  for (size_t i = (size_t)cfg->rank; i < j->ntrain; i += (size_t)cfg->workers)
    j->mine[j->nmine++] = j->d.train[i];
}

static void alloc_model(job *j) {
  const config *cfg = j->cfg;
  int sizes[2] = {cfg->dim, j->d.nclasses};
  int max_batch = cfg->batch > EVAL_BATCH ? cfg->batch : EVAL_BATCH;
  size_t max_keys = batch_key_bound(&j->d, cfg->batch);
  if (max_keys < EVAL_KEYS) max_keys = EVAL_KEYS;
  if (mlp_alloc(&j->head, sizes, 2, max_batch) != 0 ||
      bag_alloc(&j->bag, cfg->dim, max_batch, max_keys) != 0)
    die("out of memory for the model (%d x %zu keys of dim %d)", max_batch, max_keys,
        cfg->dim);
  j->x = malloc((size_t)max_batch * (size_t)cfg->dim * sizeof *j->x);
  j->dx = malloc((size_t)max_batch * (size_t)cfg->dim * sizeof *j->dx);
  j->y = malloc((size_t)max_batch);
  if (j->x == NULL || j->dx == NULL || j->y == NULL) die("out of memory for the model");
}

/* ---- the job's table and tensors ------------------------------------------ */

/* The rows start small and normal (at sigma 1, PyTorch's default for an
 * embedding, the bag's means are noisier: computed in one process, the
 * same model ended 5 epochs at 0.839 instead of 0.872); the head starts uniform in +-1/sqrt(dim) as PyTorch's Linear
 * does, its bias at zero. Every worker builds the same specs (flags and
 * data size only), so that creation is idempotent. */
static void create_params(job *j, uint64_t updates_per_epoch) {
  const config *cfg = j->cfg;
  ps_optim_kind ok = train_optim_kind(cfg);
  ps_table_spec ts;
  ps_table_spec_init(&ts, PS_INIT_NORMAL, ok);
  ts.init.seed = cfg->seed;
  ts.init.sigma = cfg->emb_sigma;
  train_optim(cfg, updates_per_epoch, &ts.optim);
  if (ps_create_table(j->c, TABLE, (uint32_t)cfg->dim, &ts) != 0)
    die("create table %s: %s", TABLE, ps_errmsg(j->c));

  ps_tensor_spec spec;
  uint64_t wshape[2] = {(uint64_t)j->d.nclasses, (uint64_t)cfg->dim};
  uint64_t bshape[1] = {(uint64_t)j->d.nclasses};
  ps_tensor_spec_init(&spec, PS_INIT_UNIFORM, ok);
  spec.init.seed = cfg->seed;
  spec.init.limit = 1.0 / sqrt((double)cfg->dim);
  train_optim(cfg, updates_per_epoch, &spec.optim);
  if (ps_create(j->c, HEAD_W, wshape, 2, &spec) != 0)
    die("create %s: %s", HEAD_W, ps_errmsg(j->c));
  ps_tensor_spec_init(&spec, PS_INIT_ZEROS, ok);
  spec.init.seed = cfg->seed;
  train_optim(cfg, updates_per_epoch, &spec.optim);
  if (ps_create(j->c, HEAD_B, bshape, 1, &spec) != 0)
    die("create %s: %s", HEAD_B, ps_errmsg(j->c));
}

static void pull_head(job *j) {
  mlp_layer *L = &j->head.layer[0];
  if (ps_pull(j->c, HEAD_W, L->w, (uint64_t)L->in * (uint64_t)L->out, NULL) != 0)
    die("pull %s: %s", HEAD_W, ps_errmsg(j->c));
  if (ps_pull(j->c, HEAD_B, L->b, (uint64_t)L->out, NULL) != 0)
    die("pull %s: %s", HEAD_B, ps_errmsg(j->c));
}

/* Fill the bag's rows for its distinct keys from the table. */
static void pull_rows(job *j) {
  if (ps_pull_rows(j->c, TABLE, j->bag.uniq, j->bag.nuniq, j->bag.rows) != 0)
    die("pull rows of %s (%zu rows): %s", TABLE, j->bag.nuniq, ps_errmsg(j->c));
}

/* The rows the job's table holds over every shard: every row a worker or
 * an evaluation has touched. From the shards' stats, psd's own JSON, where
 * each table is an object that starts with its job and name and holds
 * "rows" (job and table names need no escaping). -1 when a shard's stats do
 * not say. */
static long table_rows(job *j) {
  char head[160];
  snprintf(head, sizeof head, "{\"job\":\"%s\",\"name\":\"%s\",", j->job_name, TABLE);
  long total = 0;
  for (int s = 0; s < ps_num_shards(j->c); s++) {
    char *json = NULL;
    if (ps_stats(j->c, s, &json) != 0) die("stats of shard %d: %s", s, ps_errmsg(j->c));
    const char *t = strstr(json, head);
    const char *end = t ? strchr(t, '}') : NULL;
    const char *rows = t ? strstr(t, "\"rows\":") : NULL;
    long n = rows != NULL && rows < end ? strtol(rows + 7, NULL, 10) : -1;
    free(json);
    if (n < 0) return -1;
    total += n;
  }
  return total;
}

/* ---- one step --------------------------------------------------------------- */

/* mlp_backward_dx's hook: the head's gradients are final (and dx too), and
 * its weights are read no more: push-pull them now, the new values landing
 * in the head's own buffers, which belong to psd until finish_step. */
static void push_head(mlp *m, int l, void *arg) {
  job *j = arg;
  mlp_layer *L = &m->layer[l];
  const char *names[2] = {HEAD_W, HEAD_B};
  float *grads[2] = {L->gw, L->gb}, *vals[2] = {L->w, L->b};
  uint64_t counts[2] = {(uint64_t)L->in * (uint64_t)L->out, (uint64_t)L->out};
  for (int k = 0; k < 2; k++) {
    if (j->failed) return;
    if (ps_push_pull_async(j->c, names[k], grads[k], vals[k], counts[k], NULL, NULL,
                           &j->tickets[k]) != 0) {
      j->failed = 1;
      snprintf(j->failed_msg, sizeof j->failed_msg, "push-pull %s: %s", names[k],
               ps_errmsg(j->c));
      return;
    }
    j->issued[k] = 1;
  }
}

/* Wait for every call of the step (all of them, even after a failure, so
 * that none is left owning a buffer), then die on the first error. */
static void finish_step(job *j) {
  static const char *what[3] = {"push-pull " HEAD_W, "push-pull " HEAD_B,
                                "push rows of " TABLE};
  char msg[512] = "";
  for (int k = 0; k < 3; k++) {
    if (!j->issued[k]) continue;
    j->issued[k] = 0;
    if (ps_wait(j->c, j->tickets[k], NULL) != 0 && msg[0] == '\0')
      snprintf(msg, sizeof msg, "%s: %s", what[k], ps_errmsg(j->c));
  }
  if (j->failed) die("%s", j->failed_msg);
  if (msg[0] != '\0') die("%s", msg);
}

/* Train on the packages ex[0..n): returns the batch's mean loss, adds the
 * rows it moved and the examples it classified right. */
static double step(job *j, const size_t *ex, int n, long *rows, long *correct) {
  bag *b = &j->bag;
  if (bag_gather(b, j->d.keys, j->d.off, ex, n) != 0)
    die("a batch of %d packages holds more keys than the bag was sized for", n);
  pull_rows(j);
  bag_mean(b, j->x);
  for (int r = 0; r < n; r++) j->y[r] = j->d.label[ex[r]];
  int ok = 0;
  mlp_forward(&j->head, j->x, n);
  double loss = mlp_loss(&j->head, j->y, n, &ok);
  mlp_backward_dx(&j->head, j->x, j->y, n, j->dx, push_head, j);
  bag_backward(b, j->dx);
  if (!j->failed) {
    if (ps_push_rows_async(j->c, TABLE, b->uniq, b->nuniq, b->grads, NULL, NULL,
                           &j->tickets[2]) != 0) {
      j->failed = 1;
      snprintf(j->failed_msg, sizeof j->failed_msg, "push rows of %s (%zu rows): %s",
               TABLE, b->nuniq, ps_errmsg(j->c));
    } else {
      j->issued[2] = 1;
    }
  }
  finish_step(j);
  if (ps_clock(j->c) < 0) die("clock: %s", ps_errmsg(j->c));
  *rows += (long)b->nuniq;
  *correct += ok;
  return loss;
}

/* Rank 0: the accuracy on the test packages, in chunks of at most
 * EVAL_BATCH packages and EVAL_KEYS key occurrences, each one pull of its
 * distinct rows. Rows only test packages use are created by the pull, at
 * their initial values, as an untrained feature of a model would be. */
static double evaluate(job *j) {
  long ok = 0;
  size_t i = 0;
  while (i < j->ntest) {
    int n = 0;
    size_t keys = 0;
    while (i + (size_t)n < j->ntest && n < EVAL_BATCH) {
      size_t p = j->d.test[i + (size_t)n];
      size_t k = j->d.off[p + 1] - j->d.off[p];
      if (n > 0 && keys + k > j->bag.max_keys) break;
      keys += k;
      n++;
    }
    const size_t *ex = j->d.test + i;
    if (bag_gather(&j->bag, j->d.keys, j->d.off, ex, n) != 0)
      die("a test package holds more keys than the bag was sized for");
    pull_rows(j);
    bag_mean(&j->bag, j->x);
    for (int r = 0; r < n; r++) j->y[r] = j->d.label[ex[r]];
    int c = 0;
    mlp_forward(&j->head, j->x, n);
    mlp_loss(&j->head, j->y, n, &c);
    ok += c;
    i += (size_t)n;
  }
  return j->ntest > 0 ? (double)ok / (double)j->ntest : 0.0;
}

/* ---- the job ------------------------------------------------------------------ */

static void print_start(const job *j, int steps) {
  const config *cfg = j->cfg;
  printf("psd-train: %d workers, %d shards, mode %s, sections: %zu train / %zu test "
         "packages, %d sections, table %s of 2^%d rows x %d (%zu rows used by "
         "training), %s lr %g, batch %d x %d, %d steps/epoch\n",
         cfg->workers, ps_num_shards(j->c), cfg->mode, j->ntrain, j->ntest,
         j->d.nclasses, TABLE, cfg->rows_log2, cfg->dim,
         sections_distinct_train_keys(&j->d), cfg->optimizer, cfg->lr, cfg->batch,
         cfg->workers, steps);
}

int sections_main(const config *cfg) {
  job j;
  memset(&j, 0, sizeof j);
  j.cfg = cfg;
  load_data(&j);
  uint64_t updates_per_epoch;
  int steps = train_steps(cfg, j.ntrain, "training packages", &updates_per_epoch);
  alloc_model(&j);
  j.c = train_connect(cfg);
  ps_options defaults;
  ps_options_init(&defaults); /* the job's name from PS_JOB when no flag gave one */
  j.job_name = cfg->job != NULL ? cfg->job : defaults.job != NULL ? defaults.job : "default";
  create_params(&j, updates_per_epoch);
  pull_head(&j);
  if (cfg->rank == 0 && !cfg->quiet) print_start(&j, steps);

  int *perm = malloc(sizeof(int) * (size_t)j.nmine);
  size_t *ex = malloc(sizeof(size_t) * (size_t)cfg->batch);
  if (perm == NULL || ex == NULL) die("out of memory");
  for (int i = 0; i < j.nmine; i++) perm[i] = i;

  double t0 = now_s(), test_acc = 0.0, win_loss = 0.0;
  long global_step = 0;
  int win = 0;
  for (int epoch = 1; epoch <= cfg->epochs; epoch++) {
    double te = now_s(), loss_sum = 0.0;
    long correct = 0, rows = 0;
    shuffle(perm, j.nmine, epoch_seed(cfg, epoch));
    for (int s = 0; s < steps; s++) {
      if (cfg->gate_file != NULL && global_step == cfg->gate_step) gate_wait(cfg, global_step);
      for (int r = 0; r < cfg->batch; r++) ex[r] = j.mine[perm[(size_t)s * cfg->batch + r]];
      double loss = step(&j, ex, cfg->batch, &rows, &correct);
      global_step++;
      loss_sum += loss;
      win_loss += loss;
      if (cfg->log_every > 0 && ++win == cfg->log_every) {
        printf("%sstep %ld epoch %d loss %.4f\n", cfg->rank == 0 ? "" : "worker ",
               global_step, epoch, win_loss / win);
        win_loss = 0.0;
        win = 0;
      }
    }
    if (ps_barrier(j.c) != 0) die("barrier after epoch %d: %s", epoch, ps_errmsg(j.c));
    double train_time = now_s() - te;
    double epoch_loss = loss_sum / steps;
    double train_acc = (double)correct / ((double)steps * cfg->batch);
    /* Every worker takes as many steps of as many packages; the job's
     * rates are this worker's times the workers (rows: about so). */
    double sps = (double)steps * cfg->batch * cfg->workers / train_time;
    double rps = (double)rows * cfg->workers / train_time;
    if (cfg->rank == 0) {
      pull_head(&j);
      test_acc = evaluate(&j);
      double elapsed = now_s() - t0;
      if (!cfg->quiet)
        printf("epoch %d/%d loss %.4f train_acc %.4f test_acc %.4f rows/step %.0f "
               "rows/s %.0f rows_touched %ld samples/s %.0f elapsed %.1fs\n",
               epoch, cfg->epochs, epoch_loss, train_acc, test_acc, (double)rows / steps,
               rps, table_rows(&j), sps, elapsed);
      if (cfg->csv != NULL) csv_row(cfg, epoch, epoch_loss, train_acc, test_acc, sps, elapsed);
    } else if (!cfg->quiet) {
      printf("worker %d epoch %d/%d loss %.4f train_acc %.4f rows/step %.0f\n", cfg->rank,
             epoch, cfg->epochs, epoch_loss, train_acc, (double)rows / steps);
    }
  }
  if (cfg->rank == 0) printf("final test accuracy: %.4f\n", test_acc);
  if (!cfg->quiet) print_client_metrics(j.c, cfg->rank);

  ps_close(j.c);
  free(perm);
  free(ex);
  free(j.mine);
  free(j.x);
  free(j.dx);
  free(j.y);
  bag_free(&j.bag);
  mlp_free(&j.head);
  sections_free(&j.d);
  return 0;
}
