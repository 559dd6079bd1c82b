/* apply.c -- one optimizer update of a block; see apply.h. */
#include "apply.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "memory.h"
#include "outbox.h"
#include "psmath.h"
#include "table.h"
#include "tensor.h"

/* Elements updated per piece when the new values are also copied out: the
 * piece's weights, state and gradient stay in L2 between the update and
 * the copy, which then costs no memory traffic. */
#define APPLY_PIECE 16384

/* Blocks at least this large share their update's pieces with the helper
 * thread (helper.c); below it the hand-off would cost more than it saves. */
#define SPLIT_MIN 65536

/* Updates whose bound stays below this are applied without an undo copy:
 * far below FLT_MAX (3.4e38), so the rounding of float arithmetic (a
 * relative 1e-7 per operation) cannot take a result past it. */
#define SAFE_BOUND 1e30

static float *grow(float **buf, size_t *cap, uint64_t n) {
  if (n > *cap) {
    float *p = aligned_alloc(64, ((n * sizeof(float)) + 63) & ~(size_t)63);
    if (p == NULL) return NULL;
    /* Bounded by the largest block (--max-frame): charged, never refused. */
    mem_release(PSD_MEM_SCRATCH, *cap * sizeof(float));
    mem_charge(PSD_MEM_SCRATCH, n * sizeof(float));
    free(*buf);
    *buf = p;
    *cap = n;
  }
  return *buf;
}

float *apply_scratch(psd_server *srv, uint64_t n) {
  return grow(&srv->scratch, &srv->scratch_cap, n);
}

float *apply_gradbuf(psd_server *srv, uint64_t n) {
  return grow(&srv->gradbuf, &srv->gradbuf_cap, n);
}

void apply_buffers_free(psd_server *srv) {
  mem_release(PSD_MEM_SCRATCH,
              (srv->scratch_cap + srv->gradbuf_cap + srv->undo_cap) * sizeof(float));
  free(srv->scratch);
  free(srv->gradbuf);
  free(srv->undo);
  srv->scratch = srv->gradbuf = srv->undo = NULL;
  srv->scratch_cap = srv->gradbuf_cap = srv->undo_cap = 0;
}

/* The largest magnitude over elements [a, e) of b's weights and state. */
static uint32_t measure_range(const psd_block *b, unsigned k, uint64_t a, uint64_t e) {
  uint32_t m = psm_absmax_bits(b->w + a, e - a);
  for (unsigned s = 0; s < k; s++) {
    uint32_t x = psm_absmax_bits(b->state + s * b->n + a, e - a);
    if (x > m) m = x;
  }
  return m;
}

void block_measure(psd_block *b) {
  unsigned k = psm_state_per_param(b->tensor->spec.optim.kind);
  b->absmax = b->w ? measure_range(b, k, 0, b->n) : 0;
}

/* An upper bound of the magnitude of every value (weights, state, and the
 * intermediate products of the kernels in common/psmath.c) that an update
 * at rate lr, with Adam's bias corrections of step t, can produce, for
 * |w|, |state| <= A and |gscale * g| <= G. Each line follows its kernel
 * with every term taken at its largest. */
static double bound_at(const ps_optim_spec *s, double lr, uint64_t t, double A, double G) {
  double wd = s->weight_decay, eps = s->eps;
  double g1 = G + wd * A; /* |gs*g + wd*w| */
  double den = s->eps_inside_sqrt ? sqrt(eps) : eps;
  double v, m;
  switch (s->kind) {
    case PS_OPT_SGD:
      return fmax(A + lr * g1, g1);
    case PS_OPT_MOMENTUM:
      v = s->beta1 * A + g1; /* covers the running average and heavy ball */
      return fmax(A + lr * (g1 + s->beta1 * v) + lr * v, v);
    case PS_OPT_RMSPROP:
    case PS_OPT_ADAGRAD:
      v = A + g1 * g1;
      return fmax(fmax(A + lr * g1 / den, v), lr * g1);
    case PS_OPT_ADAM:
    case PS_OPT_ADAMW: {
      double c1 = 1.0 - pow(s->beta1, (double)t), c2 = 1.0 - pow(s->beta2, (double)t);
      if (c1 <= 0 || c2 <= 0) return INFINITY;
      m = A + g1;
      v = A + g1 * g1;
      double mhat = m / c1;
      return fmax(fmax(A + lr * wd * A + lr * mhat / den, v / c2), fmax(lr * mhat, mhat));
    }
    case PS_OPT_NONE:
      return G; /* w = gs * g */
    default:
      return INFINITY;
  }
}

/* The bound of update t of a block. */
static double update_bound(const ps_optim_spec *s, uint64_t t, double A, double G) {
  return bound_at(s, psm_lr_at(s, t), t, A, G);
}

typedef struct {
  const ps_optim_spec *spec;
  uint64_t step;
  psd_block *b;
  unsigned k;
  const float *g;
  float gscale;
  float *out;
  _Atomic uint32_t absmax;
} apply_job;

static void apply_piece(void *arg, uint32_t piece) {
  apply_job *j = arg;
  psd_block *b = j->b;
  uint64_t a = (uint64_t)piece * APPLY_PIECE;
  uint64_t e = b->n - a < APPLY_PIECE ? b->n : a + APPLY_PIECE;
  uint32_t m = psm_apply_range(j->spec, j->step, b->w, b->state, j->g, j->gscale, b->n, a, e);
  uint32_t cur = atomic_load_explicit(&j->absmax, memory_order_relaxed);
  while (m > cur &&
         !atomic_compare_exchange_weak_explicit(&j->absmax, &cur, m, memory_order_relaxed,
                                                memory_order_relaxed)) {
  }
  if (j->out != NULL) memcpy(j->out + a, b->w + a, (size_t)(e - a) * sizeof(float));
}

/* Save or restore b's weights and state through srv->undo. */
static int undo_save(psd_server *srv, const psd_block *b, unsigned k) {
  uint64_t n = b->n * (1 + k);
  if (grow(&srv->undo, &srv->undo_cap, n) == NULL) return -1;
  memcpy(srv->undo, b->w, b->n * sizeof(float));
  if (k) memcpy(srv->undo + b->n, b->state, b->n * k * sizeof(float));
  return 0;
}

static void undo_restore(psd_server *srv, psd_block *b, unsigned k) {
  memcpy(b->w, srv->undo, b->n * sizeof(float));
  if (k) memcpy(b->state, srv->undo + b->n, b->n * k * sizeof(float));
}

int block_apply(psd_server *srv, psd_block *b, const float *g, uint32_t gmax_bits,
                float gscale, float *out) {
  psd_tensor *t = b->tensor;
  unsigned k = psm_state_per_param(t->spec.optim.kind);
  uint64_t step = b->version + 1;
  double A = psm_bits_float(b->absmax), G = (double)psm_bits_float(gmax_bits) * gscale;
  int risky = !(update_bound(&t->spec.optim, step, A, G) < SAFE_BOUND);
  /* Writes to slow readers may still send b's values: b moves first. */
  if (block_unpin(b) != 0) return -2;
  if (risky && undo_save(srv, b, k) != 0) return -2;
  /* Replies decided earlier in this request may still send b's values. */
  if (b->outbox_refs) outbox_detach(&srv->outbox, b);

  apply_job j = {&t->spec.optim, step, b, k, g, gscale, out, 0};
  uint64_t npieces = (b->n + APPLY_PIECE - 1) / APPLY_PIECE;
  if (b->n >= SPLIT_MIN && npieces <= UINT32_MAX) {
    helper_run(srv->helper, apply_piece, &j, (uint32_t)npieces);
  } else if (out == NULL) {
    j.absmax = psm_apply(j.spec, step, b->w, b->state, g, gscale, b->n);
  } else {
    for (uint64_t i = 0; i < npieces; i++) apply_piece(&j, (uint32_t)i);
  }
  uint32_t m = atomic_load(&j.absmax);
  /* The kernels' own measure does not see NaN: a risky update is measured
   * again, exactly. A safe one cannot have produced Inf or NaN. */
  if (risky) m = measure_range(b, k, 0, b->n);
  if (m >= PSM_NONFINITE) {
    if (!risky) {
      log_error("block %llu of '%s': an update the bound called safe produced Inf/NaN",
                (unsigned long long)b->index, t->name);
    } else {
      undo_restore(srv, b, k);
      srv->stats.nonfinite++;
      return -1;
    }
  }
  b->absmax = m;
  block_set_version(srv, b, b->version + 1);
  srv->stats.pushes++;
  return 0;
}

/* ---- a table's rows ------------------------------------------------------------ */

/* Save or restore the n rows (values, state, update counts) through
 * srv->undo. */
static int rows_save(psd_server *srv, const psd_table *t, psd_rowhdr **rows, size_t n) {
  uint64_t per = (uint64_t)t->dim * (1 + t->k);
  if (grow(&srv->undo, &srv->undo_cap, n * (per + 1)) == NULL) return -1;
  for (size_t i = 0; i < n; i++) {
    memcpy(srv->undo + i * per, row_values(t, rows[i]), per * sizeof(float));
    memcpy(srv->undo + n * per + i, &rows[i]->step, sizeof(uint32_t));
  }
  return 0;
}

static void rows_restore(psd_server *srv, const psd_table *t, psd_rowhdr **rows, size_t n) {
  uint64_t per = (uint64_t)t->dim * (1 + t->k);
  for (size_t i = 0; i < n; i++) {
    memcpy(row_values(t, rows[i]), srv->undo + i * per, per * sizeof(float));
    memcpy(&rows[i]->step, srv->undo + n * per + i, sizeof(uint32_t));
  }
}

/* Rows per piece when a request's update is shared with the helper thread
 * (at least SPLIT_MIN elements in all, as for blocks). */
#define ROWS_PIECE_MIN 4096

typedef struct {
  psd_table *t;
  const ps_optim_spec *spec;
  uint64_t step;
  psd_rowhdr **rows;
  const float *g;
  float gscale;
  size_t n, per_piece;
  int risky;
  _Atomic uint32_t absmax;
} rows_job;

static void rows_piece(void *arg, uint32_t piece) {
  rows_job *j = arg;
  psd_table *t = j->t;
  uint32_t dim = t->dim, m = 0;
  uint64_t per = (uint64_t)dim * (1 + t->k);
  size_t a = (size_t)piece * j->per_piece, e = a + j->per_piece < j->n ? a + j->per_piece : j->n;
  /* Each piece its own context: the memo of bias corrections is written. */
  psm_row_ctx ctx;
  psm_row_begin(&ctx, j->spec, j->step);
  for (size_t i = a; i < e; i++) {
    psd_rowhdr *h = j->rows[i];
    if (h->step < UINT32_MAX) h->step++;
    uint32_t r = psm_row_apply(&ctx, h->step, row_values(t, h), j->g + i * dim, j->gscale, dim);
    /* The kernels' own measure does not see NaN: risky rows are measured
     * again, exactly. */
    if (j->risky) r = psm_absmax_bits(row_values(t, h), per);
    if (r > m) m = r;
  }
  uint32_t cur = atomic_load_explicit(&j->absmax, memory_order_relaxed);
  while (m > cur && !atomic_compare_exchange_weak_explicit(&j->absmax, &cur, m,
                                                           memory_order_relaxed,
                                                           memory_order_relaxed)) {
  }
}

int rows_apply(psd_server *srv, psd_table *t, psd_rowhdr **rows, const float *g, size_t n,
               uint32_t gmax_bits, float gscale) {
  const ps_optim_spec *o = &t->spec.optim;
  uint64_t step = t->step + 1;
  /* One bound for the table (its values' largest magnitude so far), with
   * Adam's largest bias correction (a row's first update): ordinary
   * updates are far below it and run in place. */
  double A = psm_bits_float(t->absmax), G = (double)psm_bits_float(gmax_bits) * gscale;
  int risky = n > 0 && !(bound_at(o, psm_lr_at(o, step), 1, A, G) < SAFE_BOUND);
  if (risky && rows_save(srv, t, rows, n) != 0) return -2;
  rows_job j = {t, o, step, rows, g, gscale, n, n ? n : 1, risky, t->absmax};
  /* A large request's rows are shared with the helper thread, as a large
   * block's elements are (rows are independent). */
  if ((uint64_t)n * t->dim >= SPLIT_MIN) {
    size_t rows_min = (ROWS_PIECE_MIN + t->dim - 1) / t->dim;
    j.per_piece = (n + 1) / 2 > rows_min ? (n + 1) / 2 : rows_min;
    helper_run(srv->helper, rows_piece, &j, (uint32_t)((n + j.per_piece - 1) / j.per_piece));
  } else if (n > 0) {
    rows_piece(&j, 0);
  }
  uint32_t m = atomic_load(&j.absmax);
  if (m >= PSM_NONFINITE) {
    if (!risky) {
      log_error("table '%s': an update the bound called safe produced Inf/NaN", t->name);
    } else {
      rows_restore(srv, t, rows, n);
      srv->stats.nonfinite++;
      return -1;
    }
  }
  t->absmax = m;
  t->step = step;
  srv->stats.rows_updated += n;
  return 0;
}
