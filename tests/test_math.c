/*
 * test_math.c -- the math core against docs/math.md.
 *
 * Optimizers and schedules are checked against a double-precision
 * reference written here straight from docs/math.md's formulas (not from
 * psmath.c), initializers by their moments and bounds over 2^20 samples,
 * and the generator by its determinism under any cutting of a tensor.
 */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check_main.h"
#include "helper.h"
#include "psd_types.h"
#include "psmath.h"

/* ---- helpers ------------------------------------------------------------ */

/* A small deterministic generator for test data (not the one under test). */
static uint64_t lcg_state;
static double lcg_unit(void) {
  lcg_state = lcg_state * UINT64_C(6364136223846793005) + 1442695040888963407u;
  return (double)(lcg_state >> 11) / 9007199254740992.0;
}

static int close_rel(double got, double want, double rel) {
  return fabs(got - want) <= rel * fabs(want) + 1e-12;
}

/* ---- reference learning rate (docs/math.md, independent of psmath.c) ---- */

static double ref_lr(const ps_optim_spec *s, uint64_t t) {
  double lr = s->lr, td = (double)t;
  if (s->warmup > 0 && t <= s->warmup) return lr * td / (double)s->warmup;
  switch (s->schedule) {
  case PS_SCHED_STEP:
    return lr * pow(s->gamma, floor(td / (double)s->step_size));
  case PS_SCHED_EXPONENTIAL:
    return lr * pow(s->gamma, td);
  case PS_SCHED_INVERSE_TIME:
    return lr / (1 + s->decay * td);
  case PS_SCHED_INVERSE_SQRT:
    return lr / sqrt(td);
  case PS_SCHED_COSINE: {
    double tc = fmin(td, (double)s->total_steps);
    return s->lr_min + 0.5 * (lr - s->lr_min) *
                           (1 + cos(M_PI * tc / (double)s->total_steps));
  }
  default:
    return lr;
  }
}

/* ---- reference optimizer step (docs/math.md, double) -------------------- */

/* The update with the rate of update t_lr and Adam's bias corrections of
 * step t (equal for a tensor's block; a table's row counts its own). */
static void ref_step_at(const ps_optim_spec *s, uint64_t t_lr, uint64_t t, double *w,
                        double *st, const float *g, double gscale, size_t n) {
  double lr = ref_lr(s, t_lr), wd = s->weight_decay, b1 = s->beta1,
         b2 = s->beta2, eps = s->eps;
  for (size_t i = 0; i < n; i++) {
    double gi = gscale * (double)g[i];
    if (s->kind != PS_OPT_ADAMW) gi += wd * w[i]; /* L2 */
    switch (s->kind) {
    case PS_OPT_SGD:
      w[i] -= lr * gi;
      break;
    case PS_OPT_MOMENTUM:
      if (!s->heavy_ball) {
        st[i] = b1 * st[i] + (1 - b1) * gi;
        w[i] -= lr * st[i];
      } else {
        st[i] = b1 * st[i] + gi;
        w[i] -= s->nesterov ? lr * (gi + b1 * st[i]) : lr * st[i];
      }
      break;
    case PS_OPT_RMSPROP:
      st[i] = b1 * st[i] + (1 - b1) * gi * gi;
      w[i] -= lr * gi /
              (s->eps_inside_sqrt ? sqrt(st[i] + eps) : sqrt(st[i]) + eps);
      break;
    case PS_OPT_ADAM:
    case PS_OPT_ADAMW: {
      if (s->kind == PS_OPT_ADAMW) w[i] -= lr * wd * w[i];
      double *m = &st[i], *v = &st[n + i];
      *m = b1 * *m + (1 - b1) * gi;
      *v = b2 * *v + (1 - b2) * gi * gi;
      double mh = *m / (1 - pow(b1, (double)t));
      double vh = *v / (1 - pow(b2, (double)t));
      w[i] -= lr * mh / (s->eps_inside_sqrt ? sqrt(vh + eps) : sqrt(vh) + eps);
      break;
    }
    case PS_OPT_ADAGRAD:
      st[i] += gi * gi;
      w[i] -= lr * gi / (sqrt(st[i]) + eps);
      break;
    case PS_OPT_NONE:
      w[i] = gi;
      break;
    default:
      ck_abort_msg("reference: unknown kind");
    }
  }
}

static void ref_step(const ps_optim_spec *s, uint64_t t, double *w, double *st,
                     const float *g, double gscale, size_t n) {
  ref_step_at(s, t, t, w, st, g, gscale, n);
}

/* ---- optimizers --------------------------------------------------------- */

typedef struct {
  const char *what;
  ps_optim_kind kind;
  double wd;
  int heavy, nesterov, eps_in;
  double eps; /* 0: the default */
  float gscale;
  ps_schedule_kind sched;
  uint64_t warmup;
} opt_case;

static const opt_case opt_cases[] = {
    {"sgd", PS_OPT_SGD, 0, 0, 0, 0, 0, 1, PS_SCHED_CONSTANT, 0},
    {"sgd wd", PS_OPT_SGD, 0.1, 0, 0, 0, 0, 1, PS_SCHED_CONSTANT, 0},
    {"sgd clip", PS_OPT_SGD, 0, 0, 0, 0, 0, 0.25f, PS_SCHED_CONSTANT, 0},
    {"momentum", PS_OPT_MOMENTUM, 0, 0, 0, 0, 0, 1, PS_SCHED_CONSTANT, 0},
    {"momentum wd clip", PS_OPT_MOMENTUM, 0.05, 0, 0, 0, 0, 0.5f,
     PS_SCHED_STEP, 0},
    {"heavy_ball", PS_OPT_MOMENTUM, 0, 1, 0, 0, 0, 1, PS_SCHED_CONSTANT, 0},
    {"nesterov", PS_OPT_MOMENTUM, 0, 1, 1, 0, 0, 1, PS_SCHED_CONSTANT, 0},
    {"nesterov wd", PS_OPT_MOMENTUM, 0.1, 1, 1, 0, 0, 1, PS_SCHED_CONSTANT, 0},
    {"rmsprop", PS_OPT_RMSPROP, 0, 0, 0, 0, 0, 1, PS_SCHED_CONSTANT, 0},
    {"rmsprop eps_inside", PS_OPT_RMSPROP, 0, 0, 0, 1, 1e-2, 1,
     PS_SCHED_CONSTANT, 0},
    {"rmsprop wd clip", PS_OPT_RMSPROP, 0.1, 0, 0, 0, 0, 0.5f,
     PS_SCHED_CONSTANT, 0},
    {"adam", PS_OPT_ADAM, 0, 0, 0, 0, 0, 1, PS_SCHED_CONSTANT, 0},
    {"adam eps_inside", PS_OPT_ADAM, 0, 0, 0, 1, 1e-3, 1, PS_SCHED_CONSTANT,
     0},
    {"adam big eps", PS_OPT_ADAM, 0, 0, 0, 0, 1e-2, 1, PS_SCHED_CONSTANT, 0},
    {"adam wd clip", PS_OPT_ADAM, 0.1, 0, 0, 0, 0, 0.5f, PS_SCHED_CONSTANT, 0},
    {"adam cosine warmup", PS_OPT_ADAM, 0, 0, 0, 0, 0, 1, PS_SCHED_COSINE, 2},
    {"adamw", PS_OPT_ADAMW, 0.1, 0, 0, 0, 0, 1, PS_SCHED_CONSTANT, 0},
    {"adamw eps_inside clip", PS_OPT_ADAMW, 0.1, 0, 0, 1, 1e-3, 0.5f,
     PS_SCHED_CONSTANT, 0},
    {"adagrad", PS_OPT_ADAGRAD, 0, 0, 0, 0, 0, 1, PS_SCHED_CONSTANT, 0},
    {"adagrad wd", PS_OPT_ADAGRAD, 0.1, 0, 0, 0, 0, 1, PS_SCHED_CONSTANT, 0},
    {"none", PS_OPT_NONE, 0, 0, 0, 0, 0, 1, PS_SCHED_CONSTANT, 0},
    {"none clip", PS_OPT_NONE, 0, 0, 0, 0, 0, 0.25f, PS_SCHED_CONSTANT, 0},
};
#define N_OPT_CASES ((int)(sizeof opt_cases / sizeof opt_cases[0]))

/* The optimizer spec of case c, its schedule over total_steps updates. */
static void case_spec(ps_optim_spec *s, const opt_case *c, uint64_t total_steps) {
  psm_optim_defaults(s, c->kind);
  s->weight_decay = c->wd;
  s->heavy_ball = c->heavy;
  s->nesterov = c->nesterov;
  s->eps_inside_sqrt = c->eps_in;
  if (c->eps > 0) s->eps = c->eps;
  s->schedule = c->sched;
  s->warmup = c->warmup;
  s->step_size = 2;
  s->gamma = 0.5;
  s->total_steps = total_steps;
  s->lr_min = s->lr / 10;
}

/* 37 elements: two full vector chunks and a scalar tail. */
#define OPT_N 37

START_TEST(test_optimizer_vs_reference) {
  const opt_case *c = &opt_cases[_i];
  ps_optim_spec s;
  case_spec(&s, c, 4);
  char err[256];
  ck_assert_msg(psm_optim_validate(&s, err, sizeof err) == 0, "%s: %s",
                c->what, err);

  unsigned k = psm_state_per_param(c->kind);
  float w[OPT_N], st[2 * OPT_N], g[OPT_N];
  double rw[OPT_N], rst[2 * OPT_N];
  lcg_state = 12345;
  for (int i = 0; i < OPT_N; i++) {
    double sign = (i % 3 == 0) ? -1 : 1;
    w[i] = (float)(sign * (0.5 + lcg_unit()));
    rw[i] = w[i];
  }
  for (int i = 0; i < 2 * OPT_N; i++) st[i] = 0, rst[i] = 0;
  for (uint64_t t = 1; t <= 3; t++) {
    for (int i = 0; i < OPT_N; i++) {
      double sign = ((i + (int)t) % 2) ? -1 : 1;
      g[i] = (float)(sign * (0.1 + 0.9 * lcg_unit()));
    }
    psm_apply(&s, t, w, k ? st : NULL, g, c->gscale, OPT_N);
    ref_step(&s, t, rw, rst, g, c->gscale, OPT_N);
    for (int i = 0; i < OPT_N; i++)
      ck_assert_msg(close_rel(w[i], rw[i], 1e-6),
                    "%s step %d w[%d]: %.9g vs reference %.9g", c->what,
                    (int)t, i, w[i], rw[i]);
    /* Gradients alternate in sign, so a running average can cancel down to
     * a small difference of float terms: each state array is compared with
     * a tolerance relative to its largest element. */
    for (unsigned a = 0; a < k; a++) {
      double scale = 0;
      for (int i = 0; i < OPT_N; i++)
        scale = fmax(scale, fabs(rst[a * OPT_N + i]));
      for (int i = 0; i < OPT_N; i++) {
        int j = (int)a * OPT_N + i;
        ck_assert_msg(fabs(st[j] - rst[j]) <= 1e-6 * scale,
                      "%s step %d state[%d]: %.9g vs reference %.9g",
                      c->what, (int)t, j, st[j], rst[j]);
      }
    }
  }
}
END_TEST

/* The row-wise (lazy) form of every case: a table of rows of OPT_N, each
 * pushed only at some of the table's updates; the rate follows the table's
 * update count, Adam's bias corrections the row's own (docs/math.md,
 * "Tables"), against the double reference. */
#define ROWS 5
#define ROW_STEPS 9

START_TEST(test_row_optimizer_vs_reference) {
  const opt_case *c = &opt_cases[_i];
  ps_optim_spec s;
  case_spec(&s, c, ROW_STEPS);
  unsigned k = psm_state_per_param(c->kind);
  /* A row: its OPT_N weights, then its state. */
  static float rows[ROWS][3 * OPT_N];
  static double rw[ROWS][OPT_N], rst[ROWS][2 * OPT_N];
  uint64_t steps[ROWS] = {0};
  float g[OPT_N];
  lcg_state = 777;
  for (int r = 0; r < ROWS; r++) {
    for (int i = 0; i < OPT_N; i++) {
      rows[r][i] = (float)((i % 3 == 0 ? -1 : 1) * (0.5 + lcg_unit()));
      rw[r][i] = rows[r][i];
    }
    for (int i = 0; i < 2 * OPT_N; i++) rows[r][OPT_N + i] = 0, rst[r][i] = 0;
  }
  for (uint64_t t = 1; t <= ROW_STEPS; t++) {
    psm_row_ctx ctx;
    psm_row_begin(&ctx, &s, t);
    for (int r = 0; r < ROWS; r++) {
      if ((r + t) % 3 == 0 || (r == 4 && t > 2)) continue; /* not pushed at this update */
      for (int i = 0; i < OPT_N; i++)
        g[i] = (float)(((i + (int)t + r) % 2 ? -1 : 1) * (0.1 + 0.9 * lcg_unit()));
      steps[r]++;
      psm_row_apply(&ctx, steps[r], rows[r], g, c->gscale, OPT_N);
      ref_step_at(&s, t, steps[r], rw[r], rst[r], g, c->gscale, OPT_N);
    }
    for (int r = 0; r < ROWS; r++) {
      for (int i = 0; i < OPT_N; i++)
        ck_assert_msg(close_rel(rows[r][i], rw[r][i], 1e-6),
                      "%s update %d row %d w[%d]: %.9g vs reference %.9g", c->what, (int)t, r,
                      i, rows[r][i], rw[r][i]);
      for (unsigned a = 0; a < k; a++) {
        double scale = 0;
        for (int i = 0; i < OPT_N; i++) scale = fmax(scale, fabs(rst[r][a * OPT_N + i]));
        for (int i = 0; i < OPT_N; i++) {
          int j = (int)a * OPT_N + i;
          ck_assert_msg(fabs(rows[r][OPT_N + j] - rst[r][j]) <= 1e-6 * scale,
                        "%s update %d row %d state[%d]: %.9g vs reference %.9g", c->what,
                        (int)t, r, j, rows[r][OPT_N + j], rst[r][j]);
        }
      }
    }
  }
  /* Rows pushed at different updates diverge in step: the lazy rows lag. */
  ck_assert_uint_lt(steps[4], steps[0]);
}
END_TEST

/* The memo of bias corrections is per row step: steps that share a slot
 * (1 and 1 + PSM_ROW_MEMO) in one update each get their own. */
START_TEST(test_row_memo_collisions) {
  ps_optim_spec s;
  psm_optim_defaults(&s, PS_OPT_ADAM);
  float g[8] = {0.5f, -1, 2, 0.25f, -0.5f, 1, -2, 3};
  uint64_t ts[3] = {1, 1 + PSM_ROW_MEMO, 1};
  float shared[3][24], fresh[3][24];
  for (int r = 0; r < 3; r++)
    for (int i = 0; i < 24; i++) shared[r][i] = fresh[r][i] = i < 8 ? 1.0f + (float)i : 0.1f;
  psm_row_ctx one;
  psm_row_begin(&one, &s, 7);
  for (int r = 0; r < 3; r++) {
    psm_row_apply(&one, ts[r], shared[r], g, 1.0f, 8);
    psm_row_ctx own;
    psm_row_begin(&own, &s, 7);
    psm_row_apply(&own, ts[r], fresh[r], g, 1.0f, 8);
    ck_assert_int_eq(memcmp(shared[r], fresh[r], sizeof(shared[r])), 0);
  }
  ck_assert(memcmp(shared[0], shared[1], sizeof(shared[0])) != 0);
}
END_TEST

/* A row's init is a tensor's of shape [dim] with the row's own stream:
 * the same for the same (seed, name, key), another for another key, name
 * or seed, and the fans of rule kinds are dim unless the spec says. */
START_TEST(test_row_init) {
  ps_init_spec s;
  psm_init_defaults(&s, PS_INIT_HE_NORMAL);
  float a[64], b[64], c[64];
  uint64_t h = psm_hash_name("emb");
  psm_row_init(&s, 64, h, 42, a);
  psm_row_init(&s, 64, h, 42, b);
  ck_assert_int_eq(memcmp(a, b, sizeof(a)), 0);
  psm_row_init(&s, 64, h, 43, c);
  ck_assert(memcmp(a, c, sizeof(a)) != 0);
  psm_row_init(&s, 64, psm_hash_name("emb2"), 42, c);
  ck_assert(memcmp(a, c, sizeof(a)) != 0);
  s.seed = 1;
  psm_row_init(&s, 64, h, 42, c);
  ck_assert(memcmp(a, c, sizeof(a)) != 0);
  /* he_normal, fan_in = dim: standard deviation sqrt(2/64) over many rows. */
  s.seed = 0;
  double sum2 = 0;
  for (uint64_t key = 0; key < 2000; key++) {
    psm_row_init(&s, 64, h, key, a);
    for (int i = 0; i < 64; i++) sum2 += (double)a[i] * a[i];
  }
  ck_assert(close_rel(sqrt(sum2 / (2000.0 * 64)), sqrt(2.0 / 64), 0.02));
  s.fan_in = 8;
  sum2 = 0;
  for (uint64_t key = 0; key < 2000; key++) {
    psm_row_init(&s, 64, h, key, a);
    for (int i = 0; i < 64; i++) sum2 += (double)a[i] * a[i];
  }
  ck_assert(close_rel(sqrt(sum2 / (2000.0 * 64)), sqrt(2.0 / 8), 0.02));
}
END_TEST

/* Table specs: the checks of psm_table_validate, and the differences
 * psm_table_spec_diff names. */
START_TEST(test_table_spec) {
  ps_table_spec a, b;
  char err[256];
  ps_table_spec_init(&a, PS_INIT_NORMAL, PS_OPT_ADAGRAD);
  ck_assert_int_eq(psm_table_validate(&a, 64, err, sizeof(err)), 0);
  ck_assert_int_eq(psm_table_validate(&a, 0, err, sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "dim must be in [1, 65536] (got 0)"));
  ck_assert_int_eq(psm_table_validate(&a, PSM_TABLE_DIM_MAX + 1, err, sizeof(err)), -1);
  b = a;
  b.evict = PS_EVICT_LFU;
  ck_assert_int_eq(psm_table_validate(&b, 8, err, sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "lfu needs max_rows > 0"));
  b.max_rows = 10;
  ck_assert_int_eq(psm_table_validate(&b, 8, err, sizeof(err)), 0);
  ck_assert_int_eq(psm_table_spec_diff(&a, &a, err, sizeof(err)), 0);
  ck_assert_int_eq(psm_table_spec_diff(&a, &b, err, sizeof(err)), 1);
  ck_assert_ptr_nonnull(strstr(err, "max_rows: 0 vs 10"));
  ck_assert_ptr_nonnull(strstr(err, "evict: none vs lfu"));
  ps_evict_kind k;
  ck_assert_int_eq(ps_evict_from_name("lru", &k), 0);
  ck_assert_int_eq(k, PS_EVICT_LRU);
  ck_assert_int_eq(ps_evict_from_name("LRU", &k), PS_EINVAL);
  ck_assert_str_eq(ps_evict_name(PS_EVICT_LFU), "lfu");
}
END_TEST

/* Hand-checked outcomes that do not rely on the reference: Adam's first
 * step moves every weight by lr against the sign of its gradient; heavy
 * ball after two unit gradients has v = 1 + mu; adamw without gradient
 * shrinks w by the factor 1 - lr*wd. */
START_TEST(test_optimizer_known_values) {
  ps_optim_spec s;
  float w[3] = {1.0f, -2.0f, 0.5f}, st[6] = {0}, g[3] = {0.3f, -4.0f, 1e-3f};
  psm_optim_defaults(&s, PS_OPT_ADAM);
  psm_apply(&s, 1, w, st, g, 1.0f, 3);
  ck_assert_float_eq_tol(w[0], 1.0f - 0.001f, 1e-7f);
  ck_assert_float_eq_tol(w[1], -2.0f + 0.001f, 1e-7f);
  ck_assert_float_eq_tol(w[2], 0.5f - 0.001f, 1e-7f);

  psm_optim_defaults(&s, PS_OPT_MOMENTUM);
  s.heavy_ball = 1;
  float w1[1] = {0}, v1[1] = {0}, g1[1] = {1};
  psm_apply(&s, 1, w1, v1, g1, 1.0f, 1);
  psm_apply(&s, 2, w1, v1, g1, 1.0f, 1);
  ck_assert_float_eq_tol(v1[0], 1.9f, 1e-6f);
  ck_assert_float_eq_tol(w1[0], -0.01f * (1.0f + 1.9f), 1e-7f);

  psm_optim_defaults(&s, PS_OPT_ADAMW);
  float w2[1] = {2.0f}, st2[2] = {0}, g2[1] = {0};
  psm_apply(&s, 1, w2, st2, g2, 1.0f, 1);
  ck_assert_float_eq_tol(w2[0], 2.0f * (1.0f - 0.001f * 0.01f), 1e-7f);

  ck_assert_uint_eq(psm_state_per_param(PS_OPT_SGD), 0);
  ck_assert_uint_eq(psm_state_per_param(PS_OPT_MOMENTUM), 1);
  ck_assert_uint_eq(psm_state_per_param(PS_OPT_RMSPROP), 1);
  ck_assert_uint_eq(psm_state_per_param(PS_OPT_ADAM), 2);
  ck_assert_uint_eq(psm_state_per_param(PS_OPT_ADAMW), 2);
  ck_assert_uint_eq(psm_state_per_param(PS_OPT_ADAGRAD), 1);
}
END_TEST

/* A long vector exercises the vectorized chunks; it must match the same
 * update done one element at a time (the tail path). */
START_TEST(test_optimizer_chunks_match_scalar) {
  enum { N = 1000 };
  static float w[N], st[2 * N], g[N], w1[N], st1[2 * N];
  ps_optim_spec s;
  psm_optim_defaults(&s, PS_OPT_ADAM);
  lcg_state = 7;
  for (int i = 0; i < N; i++) {
    w[i] = w1[i] = (float)(lcg_unit() - 0.5);
    g[i] = (float)(lcg_unit() - 0.5);
  }
  for (uint64_t t = 1; t <= 3; t++) {
    psm_apply(&s, t, w, st, g, 1.0f, N);
    for (int i = 0; i < N; i++) {
      float one_st[2] = {st1[i], st1[N + i]};
      psm_apply(&s, t, &w1[i], one_st, &g[i], 1.0f, 1);
      st1[i] = one_st[0];
      st1[N + i] = one_st[1];
    }
  }
  ck_assert_int_eq(memcmp(w, w1, sizeof w), 0);
  ck_assert_int_eq(memcmp(st, st1, sizeof st), 0);
}
END_TEST

/* ---- schedules ---------------------------------------------------------- */

static void sched_spec(ps_optim_spec *s, ps_schedule_kind k) {
  psm_optim_defaults(s, PS_OPT_SGD);
  s->lr = 0.1;
  s->schedule = k;
}

#define LR_EQ(s, t, want)                                                     \
  ck_assert_msg(close_rel(psm_lr_at((s), (t)), (want), 1e-12),               \
                "lr at t=%d: %.17g, want %.17g", (int)(t),                    \
                psm_lr_at((s), (t)), (double)(want))

START_TEST(test_schedules) {
  ps_optim_spec s;
  sched_spec(&s, PS_SCHED_CONSTANT);
  LR_EQ(&s, 1, 0.1);
  LR_EQ(&s, 1000000, 0.1);
  LR_EQ(&s, 0, 0.1); /* t = 0 is read as t = 1 */

  sched_spec(&s, PS_SCHED_STEP);
  s.gamma = 0.5;
  s.step_size = 10;
  LR_EQ(&s, 9, 0.1);
  LR_EQ(&s, 10, 0.05);
  LR_EQ(&s, 25, 0.025);

  sched_spec(&s, PS_SCHED_EXPONENTIAL);
  s.gamma = 0.9;
  LR_EQ(&s, 3, 0.1 * 0.729);

  sched_spec(&s, PS_SCHED_INVERSE_TIME);
  s.decay = 0.5;
  LR_EQ(&s, 4, 0.1 / 3);

  sched_spec(&s, PS_SCHED_INVERSE_SQRT);
  LR_EQ(&s, 16, 0.025);
  LR_EQ(&s, 1, 0.1);

  sched_spec(&s, PS_SCHED_COSINE);
  s.total_steps = 100;
  s.lr_min = 0.01;
  LR_EQ(&s, 50, 0.055);
  LR_EQ(&s, 25, 0.01 + 0.045 * (1 + sqrt(0.5)));
  LR_EQ(&s, 100, 0.01);
  LR_EQ(&s, 200, 0.01); /* clamped at total_steps */
  for (uint64_t t = 1; t <= 300; t += 7) LR_EQ(&s, t, ref_lr(&s, t));
}
END_TEST

START_TEST(test_schedules_warmup) {
  ps_optim_spec s;
  sched_spec(&s, PS_SCHED_CONSTANT);
  s.warmup = 10;
  LR_EQ(&s, 1, 0.01);
  LR_EQ(&s, 5, 0.05);
  LR_EQ(&s, 10, 0.1);
  LR_EQ(&s, 11, 0.1);

  /* After the warmup the schedule runs on t itself, not t - W. */
  sched_spec(&s, PS_SCHED_INVERSE_SQRT);
  s.warmup = 4;
  LR_EQ(&s, 2, 0.05);
  LR_EQ(&s, 4, 0.1);
  LR_EQ(&s, 9, 0.1 / 3);

  sched_spec(&s, PS_SCHED_STEP);
  s.gamma = 0.5;
  s.step_size = 10;
  s.warmup = 10;
  LR_EQ(&s, 10, 0.1);
  LR_EQ(&s, 11, 0.05);

  sched_spec(&s, PS_SCHED_COSINE);
  s.total_steps = 100;
  s.warmup = 20;
  LR_EQ(&s, 10, 0.05);
  LR_EQ(&s, 50, 0.05);
  for (ps_schedule_kind k = 0; k < PS_SCHED_COUNT_; k++) {
    sched_spec(&s, k);
    s.gamma = 0.9;
    s.step_size = 3;
    s.decay = 0.1;
    s.total_steps = 50;
    s.warmup = 5;
    for (uint64_t t = 1; t <= 60; t++) LR_EQ(&s, t, ref_lr(&s, t));
  }
}
END_TEST

/* ---- initializers ------------------------------------------------------- */

#define INIT_N (1u << 20)
static const uint64_t init_shape[2] = {256, 4096}; /* fan_in 4096, fan_out 256 */

typedef struct {
  double mean, var, kurt, maxabs, frac1; /* frac1: share with |x| < sd */
  double corr, corr2; /* of the pairs (x[2k], x[2k+1]) and of their squares */
} moments;

static moments moments_of(const float *x, size_t n) {
  moments m = {0};
  double s1 = 0, s2 = 0;
  for (size_t i = 0; i < n; i++) s1 += x[i];
  m.mean = s1 / (double)n;
  double s4 = 0;
  for (size_t i = 0; i < n; i++) {
    double d = x[i] - m.mean;
    s2 += d * d;
    s4 += d * d * d * d;
    if (fabs(x[i]) > m.maxabs) m.maxabs = fabs(x[i]);
  }
  m.var = s2 / (double)n;
  m.kurt = s4 / (double)n / (m.var * m.var);
  double sd = sqrt(m.var);
  size_t in1 = 0;
  for (size_t i = 0; i < n; i++) in1 += fabs(x[i]) < sd;
  m.frac1 = (double)in1 / (double)n;
  double sxy = 0, sq = 0, sqq = 0, q1 = 0, q2 = 0;
  for (size_t i = 0; i + 1 < n; i += 2) {
    double a = x[i] - m.mean, b = x[i + 1] - m.mean;
    sxy += a * b;
    double a2 = a * a - m.var, b2 = b * b - m.var;
    sq += a2 * b2;
    q1 += a2 * a2;
    q2 += b2 * b2;
  }
  m.corr = sxy / (double)(n / 2) / m.var;
  sqq = sq / sqrt(q1 * q2);
  m.corr2 = sqq;
  return m;
}

/* kind, the expected variance, and the distribution family:
 * 0 normal, 1 uniform, 2 truncated normal. */
typedef struct {
  ps_init_kind kind;
  double var;
  int fam;
} init_case;

static const init_case init_cases[] = {
    {PS_INIT_UNIFORM, 0.05 * 0.05 / 3, 1},
    {PS_INIT_NORMAL, 0.01 * 0.01, 0},
    {PS_INIT_TRUNCATED_NORMAL, 0.01 * 0.01, 2},
    {PS_INIT_HE_NORMAL, 2.0 / 4096, 0},
    {PS_INIT_HE_UNIFORM, 2.0 / 4096, 1},
    {PS_INIT_HE_TRUNCATED_NORMAL, 2.0 / 4096, 2},
    {PS_INIT_LECUN_NORMAL, 1.0 / 4096, 0},
    {PS_INIT_LECUN_UNIFORM, 1.0 / 4096, 1},
    {PS_INIT_LECUN_TRUNCATED_NORMAL, 1.0 / 4096, 2},
    {PS_INIT_FAN_OUT_NORMAL, 1.0 / 256, 0},
    {PS_INIT_FAN_OUT_UNIFORM, 1.0 / 256, 1},
    {PS_INIT_FAN_OUT_TRUNCATED_NORMAL, 1.0 / 256, 2},
    {PS_INIT_GLOROT_NORMAL, 2.0 / (4096 + 256), 0},
    {PS_INIT_GLOROT_UNIFORM, 2.0 / (4096 + 256), 1},
    {PS_INIT_GLOROT_TRUNCATED_NORMAL, 2.0 / (4096 + 256), 2},
};
#define N_INIT_CASES ((int)(sizeof init_cases / sizeof init_cases[0]))

START_TEST(test_init_moments) {
  const init_case *c = &init_cases[_i];
  ps_init_spec s;
  psm_init_defaults(&s, c->kind);
  s.seed = 1234 + (uint64_t)_i;
  char err[256];
  ck_assert_msg(psm_init_validate(&s, init_shape, 2, err, sizeof err) == 0,
                "%s", err);
  float *x = malloc(INIT_N * sizeof *x);
  ck_assert_ptr_nonnull(x);
  psm_init_fill(&s, init_shape, 2, psm_hash_name("layer1.weight"), 0, x,
                INIT_N);
  moments m = moments_of(x, INIT_N);
  const char *nm = ps_init_name(c->kind);
  double sd = sqrt(c->var);
  ck_assert_msg(fabs(m.mean) < 5 * sd / sqrt(INIT_N), "%s mean %g", nm,
                m.mean);
  ck_assert_msg(fabs(m.var / c->var - 1) < 0.01, "%s variance %g, want %g",
                nm, m.var, c->var);
  ck_assert_msg(fabs(m.corr) < 0.006 && fabs(m.corr2) < 0.006,
                "%s neighbours correlate: %g, squares %g", nm, m.corr,
                m.corr2);
  if (c->fam == 0) {
    ck_assert_msg(fabs(m.kurt - 3) < 0.05, "%s kurtosis %g", nm, m.kurt);
    ck_assert_msg(fabs(m.frac1 - 0.682689) < 0.003, "%s P(|x|<sd) %g", nm,
                  m.frac1);
    ck_assert_msg(m.maxabs > 4.5 * sd, "%s has no tails: max %g", nm,
                  m.maxabs);
  } else if (c->fam == 1) {
    float L = (float)(sqrt(3 * c->var));
    ck_assert_msg(m.maxabs <= L, "%s exceeds L: %.9g > %.9g", nm, m.maxabs, L);
    ck_assert_msg(m.maxabs > 0.999 * L, "%s max %.9g, L %.9g", nm, m.maxabs,
                  L);
    ck_assert_msg(fabs(m.kurt - 1.8) < 0.02, "%s kurtosis %g", nm, m.kurt);
  } else {
    float bound = (float)(2 * sd / 0.87962566103423978);
    ck_assert_msg(m.maxabs <= bound, "%s exceeds 2s: %.9g > %.9g", nm,
                  m.maxabs, bound);
    ck_assert_msg(m.maxabs > 0.999 * bound, "%s max %.9g, bound %.9g", nm,
                  m.maxabs, bound);
    ck_assert_msg(fabs(m.kurt - 2.3655367) < 0.03, "%s kurtosis %g", nm,
                  m.kurt);
  }
  free(x);
}
END_TEST

START_TEST(test_fans) {
  ps_init_spec s;
  double fi, fo;
  psm_init_defaults(&s, PS_INIT_HE_NORMAL);
  const uint64_t conv[4] = {64, 32, 3, 3};
  psm_fans(&s, conv, 4, &fi, &fo);
  ck_assert_double_eq(fi, 32 * 9);
  ck_assert_double_eq(fo, 64 * 9);
  const uint64_t vec[1] = {10};
  psm_fans(&s, vec, 1, &fi, &fo);
  ck_assert_double_eq(fi, 10);
  ck_assert_double_eq(fo, 10);
  const uint64_t r3[3] = {8, 4, 5};
  psm_fans(&s, r3, 3, &fi, &fo);
  ck_assert_double_eq(fi, 20);
  ck_assert_double_eq(fo, 40);
  s.fan_in = 100;
  psm_fans(&s, conv, 4, &fi, &fo);
  ck_assert_double_eq(fi, 100);
  ck_assert_double_eq(fo, 576);
  s.fan_out = 7;
  s.fan_in_includes_bias = 1;
  psm_fans(&s, conv, 4, &fi, &fo);
  ck_assert_double_eq(fi, 101);
  ck_assert_double_eq(fo, 7);
  s.fan_in = s.fan_out = 0;
  psm_fans(&s, conv, 4, &fi, &fo);
  ck_assert_double_eq(fi, 289);
}
END_TEST

/* The notes' glorot_uniform: L = sqrt(6 / (1 + d_in + d_out)). */
START_TEST(test_fan_in_includes_bias) {
  ps_init_spec s;
  psm_init_defaults(&s, PS_INIT_GLOROT_UNIFORM);
  s.fan_in_includes_bias = 1;
  const uint64_t shape[2] = {3, 4}; /* d_out 3, d_in 4 + 1 */
  enum { N = 1 << 18 };
  static float x[N];
  psm_init_fill(&s, shape, 2, 99, 0, x, N);
  double L = sqrt(6.0 / (1 + 4 + 3));
  moments m = moments_of(x, N);
  ck_assert(m.maxabs <= (float)L);
  ck_assert(m.maxabs > 0.999 * L);
  ck_assert_msg(fabs(m.var / (L * L / 3) - 1) < 0.01, "var %g", m.var);
}
END_TEST

START_TEST(test_init_symmetric) {
  ps_init_spec s;
  char err[512];
  const uint64_t mat[2] = {4, 5}, vec[1] = {5};
  psm_init_defaults(&s, PS_INIT_ZEROS);
  ck_assert_int_eq(psm_init_validate(&s, mat, 2, err, sizeof err), -1);
  ck_assert_msg(strstr(err, "symmetry") != NULL, "%s", err);
  ck_assert_msg(strstr(err, "zeros") != NULL, "%s", err);
  ck_assert_int_eq(psm_init_validate(&s, vec, 1, err, sizeof err), 0);
  s.allow_symmetric = 1;
  ck_assert_int_eq(psm_init_validate(&s, mat, 2, err, sizeof err), 0);

  psm_init_defaults(&s, PS_INIT_CONSTANT);
  s.value = 0.25;
  ck_assert_int_eq(psm_init_validate(&s, mat, 2, err, sizeof err), -1);
  ck_assert_msg(strstr(err, "constant") && strstr(err, "allow_symmetric"),
                "%s", err);
  ck_assert_int_eq(psm_init_validate(&s, vec, 1, err, sizeof err), 0);
  float x[5];
  psm_init_fill(&s, vec, 1, 1, 0, x, 5);
  for (int i = 0; i < 5; i++) ck_assert_float_eq(x[i], 0.25f);
  psm_init_defaults(&s, PS_INIT_ZEROS);
  psm_init_fill(&s, vec, 1, 1, 0, x, 5);
  for (int i = 0; i < 5; i++) ck_assert_float_eq(x[i], 0.0f);
}
END_TEST

START_TEST(test_init_validation) {
  ps_init_spec s;
  char err[256];
  const uint64_t mat[2] = {4, 5}, zero[2] = {4, 0};
  psm_init_defaults(&s, PS_INIT_HE_NORMAL);
  ck_assert_int_eq(psm_init_validate(&s, mat, 2, err, sizeof err), 0);
  ck_assert_int_eq(psm_init_validate(&s, mat, 0, err, sizeof err), -1);
  ck_assert_msg(strstr(err, "dimension") != NULL, "%s", err);
  ck_assert_int_eq(psm_init_validate(&s, zero, 2, err, sizeof err), -1);
  ck_assert_msg(strstr(err, "dimension 1") != NULL, "%s", err);
  const uint64_t huge[2] = {UINT64_C(1) << 40, UINT64_C(1) << 40};
  ck_assert_int_eq(psm_init_validate(&s, huge, 2, err, sizeof err), -1);
  psm_init_defaults(&s, PS_INIT_UNIFORM);
  ck_assert_int_eq(psm_init_validate(&s, mat, 2, err, sizeof err), 0);
  s.limit = 0;
  ck_assert_int_eq(psm_init_validate(&s, mat, 2, err, sizeof err), -1);
  ck_assert_msg(strstr(err, "limit") != NULL, "%s", err);
  psm_init_defaults(&s, PS_INIT_NORMAL);
  s.sigma = -1;
  ck_assert_int_eq(psm_init_validate(&s, mat, 2, err, sizeof err), -1);
  ck_assert_msg(strstr(err, "sigma") != NULL, "%s", err);
  s.sigma = NAN;
  ck_assert_int_eq(psm_init_validate(&s, mat, 2, err, sizeof err), -1);
  psm_init_defaults(&s, PS_INIT_TRUNCATED_NORMAL);
  s.sigma = INFINITY;
  ck_assert_int_eq(psm_init_validate(&s, mat, 2, err, sizeof err), -1);
  psm_init_defaults(&s, PS_INIT_CONSTANT);
  s.value = NAN;
  ck_assert_int_eq(psm_init_validate(&s, mat, 1, err, sizeof err), -1);
  s.kind = PS_INIT_COUNT_;
  ck_assert_int_eq(psm_init_validate(&s, mat, 2, err, sizeof err), -1);
  ck_assert_msg(strstr(err, "unknown") != NULL, "%s", err);
  /* err may be NULL. */
  ck_assert_int_eq(psm_init_validate(&s, mat, 2, NULL, 0), -1);
}
END_TEST

/* ---- determinism -------------------------------------------------------- */

static const ps_init_kind det_kinds[] = {PS_INIT_HE_NORMAL, PS_INIT_UNIFORM,
                                         PS_INIT_GLOROT_TRUNCATED_NORMAL};

START_TEST(test_determinism_chunks) {
  enum { N = 20011 };
  static float whole[N], parts[N];
  ps_init_spec s;
  psm_init_defaults(&s, det_kinds[_i]);
  s.seed = 77;
  const uint64_t shape[2] = {N, 1};
  uint64_t h = psm_hash_name("emb");
  psm_init_fill(&s, shape, 2, h, 0, whole, N);
  const uint64_t chunk[] = {1, 7, 4096};
  for (size_t c = 0; c < 3; c++) {
    memset(parts, 0xff, sizeof parts);
    for (uint64_t at = 0; at < N; at += chunk[c]) {
      uint64_t len = N - at < chunk[c] ? N - at : chunk[c];
      psm_init_fill(&s, shape, 2, h, at, parts + at, len);
    }
    ck_assert_msg(memcmp(whole, parts, sizeof whole) == 0,
                  "%s differs when filled in chunks of %d",
                  ps_init_name(s.kind), (int)chunk[c]);
  }
  /* Odd starting offsets cut Box-Muller pairs in half. */
  psm_init_fill(&s, shape, 2, h, 12345, parts, 3);
  ck_assert_int_eq(memcmp(parts, whole + 12345, 3 * sizeof(float)), 0);

  /* Another name or seed: (almost) nothing in common. */
  psm_init_fill(&s, shape, 2, psm_hash_name("emb2"), 0, parts, N);
  int same = 0;
  for (int i = 0; i < N; i++) same += parts[i] == whole[i];
  ck_assert_msg(same < 50, "%d equal elements for another name", same);
  s.seed = 78;
  psm_init_fill(&s, shape, 2, h, 0, parts, N);
  same = 0;
  for (int i = 0; i < N; i++) same += parts[i] == whole[i];
  ck_assert_msg(same < 50, "%d equal elements for another seed", same);
  /* Element i far into a huge tensor does not depend on the prefix. */
  s.seed = 77;
  float far[4], far1;
  const uint64_t big[2] = {UINT64_C(1) << 20, UINT64_C(1) << 20};
  psm_init_fill(&s, big, 2, h, (UINT64_C(1) << 40) - 2, far, 4);
  psm_init_fill(&s, big, 2, h, (UINT64_C(1) << 40) - 1, &far1, 1);
  ck_assert_int_eq(memcmp(&far[1], &far1, sizeof far1), 0);
}
END_TEST

/* The name hash and the first values of a stream are part of the format:
 * a server restored from a checkpoint or a new shard must draw the same
 * numbers. These constants pin them. */
START_TEST(test_stable_values) {
  ck_assert_uint_ne(psm_hash_name("a"), psm_hash_name("b"));
  ck_assert_uint_ne(psm_hash_name(""), 0);
  ck_assert_uint_eq(psm_hash_name("layer1.weight"),
                    psm_hash_name("layer1.weight"));
  uint64_t h = psm_hash_name("layer1.weight");
  ps_init_spec s;
  psm_init_defaults(&s, PS_INIT_HE_NORMAL);
  s.seed = 42;
  float x[4];
  psm_init_fill(&s, init_shape, 2, h, 0, x, 4);
  uint32_t bits[4];
  memcpy(bits, x, sizeof bits);
  ck_assert_uint_eq(h, UINT64_C(0xf75660348daa5048));
  ck_assert_uint_eq(bits[0], 0xbc9f019du);
  ck_assert_uint_eq(bits[1], 0xbb4ee12fu);
  ck_assert_uint_eq(bits[2], 0x3b44bc39u);
  ck_assert_uint_eq(bits[3], 0x3c3fd599u);
}
END_TEST

/* ---- sum of squares ----------------------------------------------------- */

START_TEST(test_sumsq) {
  float a[3] = {1, 2, 3};
  ck_assert_double_eq(psm_sumsq(a, 3), 14);
  ck_assert_double_eq(psm_sumsq(a, 0), 0);
  enum { N = 1003 };
  static float b[N];
  for (int i = 0; i < N; i++) b[i] = 0.5f;
  ck_assert_double_eq(psm_sumsq(b, N), N * 0.25);
  b[N - 1] = NAN; /* in the tail */
  ck_assert(isnan(psm_sumsq(b, N)));
  b[N - 1] = 0.5f;
  b[17] = NAN; /* in a chunk */
  ck_assert(isnan(psm_sumsq(b, N)));
  b[17] = INFINITY;
  ck_assert(isinf(psm_sumsq(b, N)));
  b[17] = -INFINITY;
  ck_assert(isinf(psm_sumsq(b, N)));
  b[17] = FLT_MAX; /* squares of finite floats never overflow a double */
  double s = psm_sumsq(b, N);
  ck_assert(isfinite(s));
  ck_assert(close_rel(s, (double)FLT_MAX * FLT_MAX + (N - 1) * 0.25, 1e-15));
}
END_TEST

/* ---- specs -------------------------------------------------------------- */

START_TEST(test_names_round_trip) {
  for (int k = 0; k < PS_INIT_COUNT_; k++) {
    ps_init_kind out = PS_INIT_COUNT_;
    ck_assert_int_eq(ps_init_from_name(ps_init_name(k), &out), 0);
    ck_assert_int_eq(out, k);
  }
  for (int k = 0; k < PS_OPT_COUNT_; k++) {
    ps_optim_kind out = PS_OPT_COUNT_;
    ck_assert_int_eq(ps_optim_from_name(ps_optim_name(k), &out), 0);
    ck_assert_int_eq(out, k);
  }
  for (int k = 0; k < PS_SCHED_COUNT_; k++) {
    ps_schedule_kind out = PS_SCHED_COUNT_;
    ck_assert_int_eq(ps_schedule_from_name(ps_schedule_name(k), &out), 0);
    ck_assert_int_eq(out, k);
  }
  ck_assert_str_eq(ps_init_name(PS_INIT_HE_NORMAL), "he_normal");
  ck_assert_str_eq(ps_init_name(PS_INIT_GLOROT_TRUNCATED_NORMAL),
                   "glorot_truncated_normal");
  ck_assert_str_eq(ps_init_name(PS_INIT_FAN_OUT_UNIFORM), "fan_out_uniform");
  ck_assert_str_eq(ps_optim_name(PS_OPT_ADAMW), "adamw");
  ck_assert_str_eq(ps_schedule_name(PS_SCHED_INVERSE_SQRT), "inverse_sqrt");
  ck_assert_str_eq(ps_init_name(PS_INIT_COUNT_), "unknown");
  ck_assert_str_eq(ps_optim_name((ps_optim_kind)-1), "unknown");
  ps_init_kind ik;
  ps_optim_kind ok;
  ps_schedule_kind sk;
  ck_assert_int_eq(ps_init_from_name("kaiming", &ik), PS_EINVAL);
  ck_assert_int_eq(ps_init_from_name("He_Normal", &ik), PS_EINVAL);
  ck_assert_int_eq(ps_init_from_name(NULL, &ik), PS_EINVAL);
  ck_assert_int_eq(ps_optim_from_name("adam ", &ok), PS_EINVAL);
  ck_assert_int_eq(ps_schedule_from_name("", &sk), PS_EINVAL);
}
END_TEST

START_TEST(test_defaults) {
  ps_tensor_spec t;
  ps_tensor_spec_init(&t, PS_INIT_HE_NORMAL, PS_OPT_ADAM);
  ck_assert_int_eq(t.init.kind, PS_INIT_HE_NORMAL);
  ck_assert_uint_eq(t.init.seed, 0);
  ck_assert_int_eq(t.optim.kind, PS_OPT_ADAM);
  ck_assert_double_eq(t.optim.lr, 0.001);
  ck_assert_double_eq(t.optim.beta1, 0.9);
  ck_assert_double_eq(t.optim.beta2, 0.999);
  ck_assert_double_eq(t.optim.eps, 1e-8);
  ck_assert_double_eq(t.optim.weight_decay, 0);
  ck_assert_int_eq(t.optim.schedule, PS_SCHED_CONSTANT);
  ck_assert_uint_eq(t.block_size, 0);
  ps_optim_spec o;
  psm_optim_defaults(&o, PS_OPT_ADAMW);
  ck_assert_double_eq(o.weight_decay, 0.01);
  psm_optim_defaults(&o, PS_OPT_RMSPROP);
  ck_assert_double_eq(o.lr, 0.01);
  ck_assert_double_eq(o.beta1, 0.99);
  ck_assert_double_eq(o.eps, 1e-8);
  psm_optim_defaults(&o, PS_OPT_ADAGRAD);
  ck_assert_double_eq(o.eps, 1e-10);
  psm_optim_defaults(&o, PS_OPT_MOMENTUM);
  ck_assert_double_eq(o.beta1, 0.9);
  ck_assert_int_eq(o.heavy_ball, 0);
  ps_init_spec i;
  psm_init_defaults(&i, PS_INIT_NORMAL);
  ck_assert_double_eq(i.sigma, 0.01);
  psm_init_defaults(&i, PS_INIT_UNIFORM);
  ck_assert_double_eq(i.limit, 0.05);
  char err[256];
  for (int k = 0; k < PS_OPT_COUNT_; k++) {
    psm_optim_defaults(&o, k);
    ck_assert_msg(psm_optim_validate(&o, err, sizeof err) == 0, "%s: %s",
                  ps_optim_name(k), err);
  }
}
END_TEST

/* Each broken field is refused with a sentence that names it. */
START_TEST(test_optim_validation) {
  ps_optim_spec o;
  char err[256];
#define REFUSED(kind, stmt, word)                                             \
  do {                                                                        \
    psm_optim_defaults(&o, kind);                                             \
    stmt;                                                                     \
    err[0] = 0;                                                               \
    ck_assert_msg(psm_optim_validate(&o, err, sizeof err) == -1,              \
                  "accepted: %s", #stmt);                                     \
    ck_assert_msg(strstr(err, word) != NULL, "%s: '%s' lacks '%s'", #stmt,    \
                  err, word);                                                 \
  } while (0)
  REFUSED(PS_OPT_SGD, o.lr = 0, "lr");
  REFUSED(PS_OPT_SGD, o.lr = -1, "lr");
  REFUSED(PS_OPT_SGD, o.lr = NAN, "lr");
  REFUSED(PS_OPT_SGD, o.lr = INFINITY, "lr");
  REFUSED(PS_OPT_MOMENTUM, o.beta1 = 1.0, "beta1");
  REFUSED(PS_OPT_ADAM, o.beta2 = -0.1, "beta2");
  REFUSED(PS_OPT_ADAM, o.beta2 = 1.0, "beta2");
  REFUSED(PS_OPT_ADAM, o.eps = 0, "eps");
  REFUSED(PS_OPT_ADAGRAD, o.eps = -1e-10, "eps");
  REFUSED(PS_OPT_SGD, o.weight_decay = -1, "weight_decay");
  REFUSED(PS_OPT_SGD, o.clip_norm = -1, "clip_norm");
  REFUSED(PS_OPT_SGD, o.gamma = NAN, "gamma");
  REFUSED(PS_OPT_MOMENTUM, o.nesterov = 1, "nesterov");
  REFUSED(PS_OPT_ADAM, o.heavy_ball = 1, "heavy_ball");
  REFUSED(PS_OPT_SGD, o.eps_inside_sqrt = 1, "eps_inside_sqrt");
  REFUSED(PS_OPT_SGD, (o.schedule = PS_SCHED_STEP, o.step_size = 0),
          "step_size");
  REFUSED(PS_OPT_SGD, (o.schedule = PS_SCHED_EXPONENTIAL, o.gamma = 1.5),
          "gamma");
  REFUSED(PS_OPT_SGD, (o.schedule = PS_SCHED_COSINE, o.total_steps = 0),
          "total_steps");
  REFUSED(PS_OPT_SGD,
          (o.schedule = PS_SCHED_COSINE, o.total_steps = 9, o.lr_min = 1),
          "lr_min");
  REFUSED(PS_OPT_SGD, (o.schedule = PS_SCHED_INVERSE_TIME, o.decay = -1),
          "decay");
  REFUSED(PS_OPT_SGD, o.kind = PS_OPT_COUNT_, "unknown");
  REFUSED(PS_OPT_SGD, o.schedule = PS_SCHED_COUNT_, "unknown");
#undef REFUSED
  psm_optim_defaults(&o, PS_OPT_MOMENTUM);
  o.heavy_ball = o.nesterov = 1;
  ck_assert_int_eq(psm_optim_validate(&o, err, sizeof err), 0);
  psm_optim_defaults(&o, PS_OPT_ADAMW);
  o.eps_inside_sqrt = 1;
  o.schedule = PS_SCHED_COSINE;
  o.total_steps = 1000;
  o.warmup = 100;
  ck_assert_int_eq(psm_optim_validate(&o, err, sizeof err), 0);
}
END_TEST

/* ---- valid ranges (docs/math.md, "Valid ranges") --------------------------- */

/* One refused value of one double field: the spec is the kind's defaults
 * with the schedule set (cosine gets total_steps 100), then the field. The
 * sentence must name the field, show the value and state the range. */
typedef struct {
  ps_optim_kind kind;
  ps_schedule_kind sched;
  size_t off; /* offsetof the double field in ps_optim_spec */
  double v;
  const char *field, *got, *range;
} optim_bad;

#define OFF(f) offsetof(ps_optim_spec, f)
#define C_ PS_SCHED_CONSTANT
static const optim_bad optim_bads[] = {
    /* lr in (0, 1e3] */
    {PS_OPT_SGD, C_, OFF(lr), 0, "optimizer lr", "got 0", "(0, 1000]"},
    {PS_OPT_SGD, C_, OFF(lr), -1, "optimizer lr", "got -1", "(0, 1000]"},
    {PS_OPT_SGD, C_, OFF(lr), 1e308, "optimizer lr", "got 1e+308", "(0, 1000]"},
    {PS_OPT_ADAM, C_, OFF(lr), 1e308, "optimizer lr", "got 1e+308", "(0, 1000]"},
    {PS_OPT_SGD, C_, OFF(lr), 1000.0000000000001, "optimizer lr", "got 1000.0000000000001",
     "(0, 1000]"},
    {PS_OPT_SGD, C_, OFF(lr), NAN, "optimizer lr", "got nan", "(0, 1000]"},
    {PS_OPT_SGD, C_, OFF(lr), INFINITY, "optimizer lr", "got inf", "(0, 1000]"},
    {PS_OPT_SGD, C_, OFF(lr), -INFINITY, "optimizer lr", "got -inf", "(0, 1000]"},
    /* weight_decay in [0, 1e3] */
    {PS_OPT_SGD, C_, OFF(weight_decay), -1, "optimizer weight_decay", "got -1", "[0, 1000]"},
    {PS_OPT_ADAMW, C_, OFF(weight_decay), 1e4, "optimizer weight_decay", "got 10000",
     "[0, 1000]"},
    {PS_OPT_ADAM, C_, OFF(weight_decay), NAN, "optimizer weight_decay", "got nan", "[0, 1000]"},
    {PS_OPT_SGD, C_, OFF(weight_decay), INFINITY, "optimizer weight_decay", "got inf",
     "[0, 1000]"},
    /* clip_norm in [0, inf) */
    {PS_OPT_SGD, C_, OFF(clip_norm), -1, "optimizer clip_norm", "got -1", "[0, inf)"},
    {PS_OPT_ADAM, C_, OFF(clip_norm), -1e-300, "optimizer clip_norm", "got -1e-300", "[0, inf)"},
    {PS_OPT_SGD, C_, OFF(clip_norm), INFINITY, "optimizer clip_norm", "got inf", "[0, inf)"},
    {PS_OPT_SGD, C_, OFF(clip_norm), NAN, "optimizer clip_norm", "got nan", "[0, inf)"},
    /* beta1 in [0, 1) where used */
    {PS_OPT_MOMENTUM, C_, OFF(beta1), 1, "optimizer beta1", "got 1", "[0, 1) for momentum"},
    {PS_OPT_MOMENTUM, C_, OFF(beta1), -0.1, "optimizer beta1", "got -0.1", "[0, 1)"},
    {PS_OPT_RMSPROP, C_, OFF(beta1), 1, "optimizer beta1", "got 1", "[0, 1) for rmsprop"},
    {PS_OPT_ADAM, C_, OFF(beta1), 1.5, "optimizer beta1", "got 1.5", "[0, 1) for adam"},
    {PS_OPT_ADAMW, C_, OFF(beta1), NAN, "optimizer beta1", "got nan", "[0, 1) for adamw"},
    {PS_OPT_ADAM, C_, OFF(beta1), -INFINITY, "optimizer beta1", "got -inf", "[0, 1)"},
    /* beta2 in [0, 1) where used */
    {PS_OPT_ADAM, C_, OFF(beta2), 1, "optimizer beta2", "got 1", "[0, 1) for adam"},
    {PS_OPT_ADAM, C_, OFF(beta2), -1e-9, "optimizer beta2", "got -1e-09", "[0, 1)"},
    {PS_OPT_ADAMW, C_, OFF(beta2), 1, "optimizer beta2", "got 1", "[0, 1) for adamw"},
    {PS_OPT_ADAM, C_, OFF(beta2), NAN, "optimizer beta2", "got nan", "[0, 1)"},
    /* eps in [1e-30, 1e3] where used */
    {PS_OPT_RMSPROP, C_, OFF(eps), 0, "optimizer eps", "got 0", "[1e-30, 1000] for rmsprop"},
    {PS_OPT_ADAM, C_, OFF(eps), 1e-31, "optimizer eps", "got 1e-31", "[1e-30, 1000] for adam"},
    {PS_OPT_ADAMW, C_, OFF(eps), -1e-8, "optimizer eps", "got -1e-08", "[1e-30, 1000]"},
    {PS_OPT_ADAGRAD, C_, OFF(eps), 0, "optimizer eps", "got 0", "[1e-30, 1000] for adagrad"},
    {PS_OPT_ADAGRAD, C_, OFF(eps), 1e4, "optimizer eps", "got 10000", "[1e-30, 1000]"},
    {PS_OPT_ADAM, C_, OFF(eps), INFINITY, "optimizer eps", "got inf", "[1e-30, 1000]"},
    {PS_OPT_ADAM, C_, OFF(eps), NAN, "optimizer eps", "got nan", "[1e-30, 1000]"},
    /* schedule parameters */
    {PS_OPT_SGD, PS_SCHED_STEP, OFF(gamma), 0, "optimizer gamma", "got 0",
     "(0, 1] for the step schedule"},
    {PS_OPT_SGD, PS_SCHED_STEP, OFF(gamma), 1.5, "optimizer gamma", "got 1.5", "(0, 1]"},
    {PS_OPT_ADAM, PS_SCHED_STEP, OFF(gamma), -0.5, "optimizer gamma", "got -0.5", "(0, 1]"},
    {PS_OPT_SGD, PS_SCHED_STEP, OFF(gamma), NAN, "optimizer gamma", "got nan", "(0, 1]"},
    {PS_OPT_SGD, PS_SCHED_EXPONENTIAL, OFF(gamma), 0, "optimizer gamma", "got 0",
     "(0, 1] for the exponential schedule"},
    {PS_OPT_SGD, PS_SCHED_EXPONENTIAL, OFF(gamma), 1.01, "optimizer gamma", "got 1.01",
     "(0, 1]"},
    {PS_OPT_SGD, PS_SCHED_INVERSE_TIME, OFF(decay), -1, "optimizer decay", "got -1",
     "[0, inf) for the inverse_time schedule"},
    {PS_OPT_SGD, PS_SCHED_INVERSE_TIME, OFF(decay), INFINITY, "optimizer decay", "got inf",
     "[0, inf)"},
    {PS_OPT_SGD, PS_SCHED_COSINE, OFF(lr_min), -1, "optimizer lr_min", "got -1",
     "[0, lr] = [0, 0.01] for the cosine schedule"},
    {PS_OPT_ADAM, PS_SCHED_COSINE, OFF(lr_min), 0.002, "optimizer lr_min", "got 0.002",
     "[0, lr] = [0, 0.001]"},
    {PS_OPT_SGD, PS_SCHED_COSINE, OFF(lr_min), NAN, "optimizer lr_min", "got nan", "[0, lr]"},
    /* fields the kind or schedule does not use must still be finite */
    {PS_OPT_SGD, C_, OFF(beta1), NAN, "optimizer beta1", "got nan", "finite"},
    {PS_OPT_SGD, C_, OFF(beta2), NAN, "optimizer beta2", "got nan", "finite"},
    {PS_OPT_MOMENTUM, C_, OFF(eps), INFINITY, "optimizer eps", "got inf", "finite"},
    {PS_OPT_SGD, C_, OFF(gamma), NAN, "optimizer gamma", "got nan", "finite"},
    {PS_OPT_SGD, PS_SCHED_STEP, OFF(decay), INFINITY, "optimizer decay", "got inf", "finite"},
    {PS_OPT_SGD, PS_SCHED_EXPONENTIAL, OFF(lr_min), -INFINITY, "optimizer lr_min", "got -inf",
     "finite"},
};
#undef C_
#undef OFF
#define N_OPTIM_BADS ((int)(sizeof optim_bads / sizeof optim_bads[0]))

static void optim_base(ps_optim_spec *o, ps_optim_kind kind, ps_schedule_kind sched) {
  psm_optim_defaults(o, kind);
  o->schedule = sched;
  if (sched == PS_SCHED_COSINE) o->total_steps = 100;
}

/* The sentence names the field, the value and the allowed range. */
static void assert_says(const char *err, const char *what, const char *a,
                        const char *b, const char *c) {
  ck_assert_msg(strstr(err, a) != NULL, "%s: '%s' lacks '%s'", what, err, a);
  ck_assert_msg(strstr(err, b) != NULL, "%s: '%s' lacks '%s'", what, err, b);
  ck_assert_msg(strstr(err, c) != NULL, "%s: '%s' lacks '%s'", what, err, c);
}

START_TEST(test_optim_range_refused) {
  const optim_bad *r = &optim_bads[_i];
  ps_optim_spec o;
  optim_base(&o, r->kind, r->sched);
  char err[512] = "", what[128];
  snprintf(what, sizeof what, "%s/%s %s = %g", ps_optim_name(r->kind),
           ps_schedule_name(r->sched), r->field, r->v);
  ck_assert_msg(psm_optim_validate(&o, err, sizeof err) == 0, "%s: base refused: %s", what, err);
  memcpy((char *)&o + r->off, &r->v, sizeof(double));
  ck_assert_msg(psm_optim_validate(&o, err, sizeof err) == -1, "%s: accepted", what);
  assert_says(err, what, r->field, r->got, r->range);
}
END_TEST

/* The integer fields, the product rule and the cosine warmup. */
START_TEST(test_optim_range_refused_other) {
  ps_optim_spec o;
  char err[512];
#define REFUSED(kind, sched, stmt, a, b, c)                                   \
  do {                                                                        \
    optim_base(&o, kind, sched);                                              \
    stmt;                                                                     \
    err[0] = 0;                                                               \
    ck_assert_msg(psm_optim_validate(&o, err, sizeof err) == -1,              \
                  "accepted: %s", #stmt);                                     \
    assert_says(err, #stmt, a, b, c);                                         \
  } while (0)
  REFUSED(PS_OPT_SGD, PS_SCHED_STEP, o.step_size = 0, "optimizer step_size", "got 0",
          "at least 1 for the step schedule");
  REFUSED(PS_OPT_SGD, PS_SCHED_COSINE, o.total_steps = 0, "optimizer total_steps", "got 0",
          "at least 1 for the cosine schedule");
  REFUSED(PS_OPT_SGD, PS_SCHED_COSINE, o.warmup = 100, "optimizer warmup", "got 100",
          "less than total_steps (100)");
  REFUSED(PS_OPT_ADAM, PS_SCHED_COSINE, (o.total_steps = 5, o.warmup = 7), "optimizer warmup",
          "got 7", "less than total_steps (5)");
  /* lr * weight_decay <= 1, for every kind. */
  REFUSED(PS_OPT_SGD, PS_SCHED_CONSTANT, (o.lr = 0.5, o.weight_decay = 3),
          "lr * weight_decay", "at most 1", "= 1.5");
  REFUSED(PS_OPT_ADAMW, PS_SCHED_CONSTANT, o.lr = 1000, "lr * weight_decay", "lr 1000",
          "weight_decay 0.01 = 10");
  REFUSED(PS_OPT_ADAM, PS_SCHED_CONSTANT, (o.lr = 1e-3, o.weight_decay = 1000.5),
          "weight_decay", "got 1000.5", "[0, 1000]");
  REFUSED(PS_OPT_MOMENTUM, PS_SCHED_CONSTANT, (o.lr = 1, o.weight_decay = 1.25),
          "lr * weight_decay", "weight_decay 1.25", "at most 1");
  /* Unknown kinds name the known range. */
  REFUSED(PS_OPT_SGD, PS_SCHED_CONSTANT, o.kind = PS_OPT_COUNT_, "unknown optimizer kind",
          "7", "0 to 6");
  REFUSED(PS_OPT_SGD, PS_SCHED_CONSTANT, o.schedule = (ps_schedule_kind)-1,
          "unknown schedule", "-1", "0 to 5");
#undef REFUSED
}
END_TEST

/* none: its defaults pass; whatever would shape an update is refused with a
 * sentence naming it; clip_norm is kept; zeros on a matrix need no
 * allow_symmetric (averaged gradients, not weights); the kernel stores the
 * gradient bit for bit (scaled when clipping). */
START_TEST(test_none_validation) {
  ps_optim_spec o;
  char err[512];
  psm_optim_defaults(&o, PS_OPT_NONE);
  ck_assert_msg(psm_optim_validate(&o, err, sizeof err) == 0, "%s", err);
  ck_assert_double_eq(o.lr, 0);
  ck_assert_uint_eq(psm_state_per_param(PS_OPT_NONE), 0);
  ck_assert_str_eq(ps_optim_name(PS_OPTIM_NONE), "none");
#define NONE_REFUSED(stmt, word)                                              \
  do {                                                                        \
    psm_optim_defaults(&o, PS_OPT_NONE);                                      \
    stmt;                                                                     \
    err[0] = 0;                                                               \
    ck_assert_msg(psm_optim_validate(&o, err, sizeof err) == -1, "accepted: %s", #stmt); \
    ck_assert_msg(strstr(err, word) != NULL && strstr(err, "none") != NULL,  \
                  "%s: '%s' lacks '%s'", #stmt, err, word);                   \
  } while (0)
  NONE_REFUSED(o.lr = 0.01, "lr must be 0");
  NONE_REFUSED(o.weight_decay = 0.1, "weight_decay must be 0");
  NONE_REFUSED(o.schedule = PS_SCHED_STEP, "schedule must be constant");
  NONE_REFUSED(o.warmup = 5, "warmup must be 0");
  NONE_REFUSED(o.heavy_ball = 1, "heavy_ball");
  NONE_REFUSED(o.eps_inside_sqrt = 1, "eps_inside_sqrt");
  NONE_REFUSED(o.clip_norm = -1, "clip_norm");
  NONE_REFUSED(o.beta1 = NAN, "beta1");
#undef NONE_REFUSED
  psm_optim_defaults(&o, PS_OPT_NONE);
  o.clip_norm = 1;
  ck_assert_int_eq(psm_optim_validate(&o, err, sizeof err), 0);

  ps_tensor_spec t;
  const uint64_t mat[2] = {3, 4};
  ps_tensor_spec_init(&t, PS_INIT_ZEROS, PS_OPT_NONE);
  ck_assert_msg(psm_spec_validate(&t, mat, 2, err, sizeof err) == 0, "%s", err);
  ps_tensor_spec_init(&t, PS_INIT_ZEROS, PS_OPT_SGD);
  ck_assert_int_eq(psm_spec_validate(&t, mat, 2, err, sizeof err), -1);
  ck_assert_ptr_nonnull(strstr(err, "symmetry"));

  psm_optim_defaults(&o, PS_OPT_NONE);
  float w[5] = {9, 9, 9, 9, 9}, g[5] = {0.1f, -3e-8f, 1e30f, -0.0f, 7.25f};
  psm_apply(&o, 7, w, NULL, g, 1.0f, 5);
  ck_assert_int_eq(memcmp(w, g, sizeof w), 0);
  psm_apply(&o, 8, w, NULL, g, 0.5f, 5);
  for (int i = 0; i < 5; i++) ck_assert_float_eq(w[i], 0.5f * g[i]);
}
END_TEST

/* Every optimizer's defaults pass with every schedule (cosine given the
 * total_steps it has no default for), and so does ps_create's NULL spec. */
START_TEST(test_optim_defaults_accepted) {
  char err[512];
  for (int k = 0; k < PS_OPT_COUNT_; k++)
    for (int sc = 0; sc < PS_SCHED_COUNT_; sc++) {
      /* none has no learning rate to schedule (test_none_validation). */
      if (k == PS_OPT_NONE && sc != PS_SCHED_CONSTANT) continue;
      ps_optim_spec o;
      optim_base(&o, (ps_optim_kind)k, (ps_schedule_kind)sc);
      ck_assert_msg(psm_optim_validate(&o, err, sizeof err) == 0, "%s/%s: %s",
                    ps_optim_name(k), ps_schedule_name(sc), err);
    }
  ps_tensor_spec t;
  ps_tensor_spec_init(&t, PS_INIT_HE_NORMAL, PS_OPT_ADAM);
  const uint64_t shape[2] = {3, 4};
  ck_assert_int_eq(psm_init_validate(&t.init, shape, 2, err, sizeof err), 0);
  ck_assert_int_eq(psm_optim_validate(&t.optim, err, sizeof err), 0);
}
END_TEST

/* The ends of every closed range are accepted, and values just inside the
 * open ends. */
START_TEST(test_optim_range_bounds_accepted) {
  ps_optim_spec o;
  char err[512];
#define ACCEPTED(kind, sched, stmt)                                           \
  do {                                                                        \
    optim_base(&o, kind, sched);                                              \
    stmt;                                                                     \
    ck_assert_msg(psm_optim_validate(&o, err, sizeof err) == 0, "%s: %s",     \
                  #stmt, err);                                                \
  } while (0)
  ACCEPTED(PS_OPT_SGD, PS_SCHED_CONSTANT, o.lr = 1000);
  ACCEPTED(PS_OPT_SGD, PS_SCHED_CONSTANT, o.lr = 1e-300);
  ACCEPTED(PS_OPT_ADAM, PS_SCHED_CONSTANT, o.lr = 1000);
  ACCEPTED(PS_OPT_MOMENTUM, PS_SCHED_CONSTANT, o.beta1 = 0);
  ACCEPTED(PS_OPT_MOMENTUM, PS_SCHED_CONSTANT, o.beta1 = nextafter(1.0, 0.0));
  ACCEPTED(PS_OPT_ADAM, PS_SCHED_CONSTANT, (o.beta1 = 0, o.beta2 = 0));
  ACCEPTED(PS_OPT_ADAMW, PS_SCHED_CONSTANT, o.beta2 = nextafter(1.0, 0.0));
  ACCEPTED(PS_OPT_RMSPROP, PS_SCHED_CONSTANT, o.eps = 1e-30);
  ACCEPTED(PS_OPT_ADAGRAD, PS_SCHED_CONSTANT, o.eps = 1000);
  ACCEPTED(PS_OPT_ADAM, PS_SCHED_CONSTANT, (o.eps = 1e-30, o.eps_inside_sqrt = 1));
  ACCEPTED(PS_OPT_SGD, PS_SCHED_CONSTANT, (o.lr = 1e-3, o.weight_decay = 1000));
  ACCEPTED(PS_OPT_SGD, PS_SCHED_CONSTANT, (o.lr = 0.5, o.weight_decay = 2));
  ACCEPTED(PS_OPT_ADAMW, PS_SCHED_CONSTANT, (o.lr = 100, o.weight_decay = 0.01));
  ACCEPTED(PS_OPT_SGD, PS_SCHED_CONSTANT, o.clip_norm = 0);
  ACCEPTED(PS_OPT_SGD, PS_SCHED_CONSTANT, o.clip_norm = 1e300);
  ACCEPTED(PS_OPT_SGD, PS_SCHED_STEP, (o.gamma = 1, o.step_size = 1));
  ACCEPTED(PS_OPT_SGD, PS_SCHED_EXPONENTIAL, o.gamma = 1e-300);
  ACCEPTED(PS_OPT_SGD, PS_SCHED_INVERSE_TIME, o.decay = 1e300);
  ACCEPTED(PS_OPT_SGD, PS_SCHED_COSINE, o.lr_min = o.lr);
  ACCEPTED(PS_OPT_SGD, PS_SCHED_COSINE, (o.total_steps = 1, o.warmup = 0));
  ACCEPTED(PS_OPT_SGD, PS_SCHED_COSINE, o.warmup = 99);
  ACCEPTED(PS_OPT_SGD, PS_SCHED_STEP, o.warmup = UINT64_MAX);
  ACCEPTED(PS_OPT_SGD, PS_SCHED_CONSTANT, (o.beta2 = -5, o.eps = -1, o.gamma = 7, o.decay = -2,
                                           o.lr_min = 50)); /* unused: finite is enough */
#undef ACCEPTED
}
END_TEST

/* No schedule gives a rate above lr (what makes lr's bounds and the
 * lr * weight_decay rule hold at every update), nor a negative one. */
START_TEST(test_lr_never_above_lr) {
  for (int sc = 0; sc < PS_SCHED_COUNT_; sc++)
    for (uint64_t w = 0; w <= 7; w += 7) {
      ps_optim_spec o;
      optim_base(&o, PS_OPT_SGD, (ps_schedule_kind)sc);
      o.lr = 1000;
      o.gamma = 1;
      o.step_size = 3;
      o.lr_min = 1000;
      o.warmup = w;
      char err[512];
      ck_assert_msg(psm_optim_validate(&o, err, sizeof err) == 0, "%s", err);
      for (uint64_t t = 1; t <= 300; t++) {
        double lr = psm_lr_at(&o, t);
        ck_assert_msg(lr >= 0 && lr <= o.lr, "%s warmup %d t %d: %g", ps_schedule_name(sc),
                      (int)w, (int)t, lr);
      }
      o.gamma = 0.5, o.lr_min = 0, o.decay = 0.25;
      for (uint64_t t = 1; t <= 300; t++) {
        double lr = psm_lr_at(&o, t);
        ck_assert_msg(lr >= 0 && lr <= o.lr, "%s warmup %d t %d: %g", ps_schedule_name(sc),
                      (int)w, (int)t, lr);
      }
    }
}
END_TEST

/* Init: one refused value of one double field, on a 4x5 tensor (zeros and
 * constant with allow_symmetric). */
typedef struct {
  ps_init_kind kind;
  size_t off; /* offsetof the double field in ps_init_spec */
  double v;
  const char *field, *got, *range;
} init_bad;

#define OFF(f) offsetof(ps_init_spec, f)
static const init_bad init_bads[] = {
    {PS_INIT_NORMAL, OFF(sigma), 0, "init sigma", "got 0", "[1e-30, 1000] for normal"},
    {PS_INIT_NORMAL, OFF(sigma), -1, "init sigma", "got -1", "[1e-30, 1000]"},
    {PS_INIT_NORMAL, OFF(sigma), 1e-31, "init sigma", "got 1e-31", "[1e-30, 1000]"},
    {PS_INIT_NORMAL, OFF(sigma), 1e4, "init sigma", "got 10000", "[1e-30, 1000]"},
    {PS_INIT_NORMAL, OFF(sigma), NAN, "init sigma", "got nan", "[1e-30, 1000]"},
    {PS_INIT_NORMAL, OFF(sigma), INFINITY, "init sigma", "got inf", "[1e-30, 1000]"},
    {PS_INIT_TRUNCATED_NORMAL, OFF(sigma), 1e-40, "init sigma", "got 1e-40",
     "[1e-30, 1000] for truncated_normal"},
    {PS_INIT_TRUNCATED_NORMAL, OFF(sigma), 2000, "init sigma", "got 2000", "[1e-30, 1000]"},
    {PS_INIT_UNIFORM, OFF(limit), 0, "init limit", "got 0", "[1e-30, 1000] for uniform"},
    {PS_INIT_UNIFORM, OFF(limit), -0.05, "init limit", "got -0.05", "[1e-30, 1000]"},
    {PS_INIT_UNIFORM, OFF(limit), 1e-31, "init limit", "got 1e-31", "[1e-30, 1000]"},
    {PS_INIT_UNIFORM, OFF(limit), 1e300, "init limit", "got 1e+300", "[1e-30, 1000]"},
    {PS_INIT_UNIFORM, OFF(limit), NAN, "init limit", "got nan", "[1e-30, 1000]"},
    {PS_INIT_UNIFORM, OFF(limit), INFINITY, "init limit", "got inf", "[1e-30, 1000]"},
    {PS_INIT_CONSTANT, OFF(value), 1e39, "init value", "got 1e+39", "[-1000, 1000] for constant"},
    {PS_INIT_CONSTANT, OFF(value), -1e4, "init value", "got -10000", "[-1000, 1000]"},
    {PS_INIT_CONSTANT, OFF(value), NAN, "init value", "got nan", "[-1000, 1000]"},
    {PS_INIT_CONSTANT, OFF(value), -INFINITY, "init value", "got -inf", "[-1000, 1000]"},
    /* fields the kind does not use must still be finite */
    {PS_INIT_HE_NORMAL, OFF(sigma), NAN, "init sigma", "got nan", "finite"},
    {PS_INIT_NORMAL, OFF(limit), INFINITY, "init limit", "got inf", "finite"},
    {PS_INIT_UNIFORM, OFF(value), NAN, "init value", "got nan", "finite"},
    {PS_INIT_ZEROS, OFF(sigma), -INFINITY, "init sigma", "got -inf", "finite"},
    {PS_INIT_GLOROT_UNIFORM, OFF(value), INFINITY, "init value", "got inf", "finite"},
};
#undef OFF
#define N_INIT_BADS ((int)(sizeof init_bads / sizeof init_bads[0]))

START_TEST(test_init_range_refused) {
  const init_bad *r = &init_bads[_i];
  const uint64_t mat[2] = {4, 5};
  ps_init_spec s;
  psm_init_defaults(&s, r->kind);
  s.allow_symmetric = 1;
  char err[512] = "", what[128];
  snprintf(what, sizeof what, "%s %s = %g", ps_init_name(r->kind), r->field, r->v);
  ck_assert_msg(psm_init_validate(&s, mat, 2, err, sizeof err) == 0, "%s: base refused: %s",
                what, err);
  memcpy((char *)&s + r->off, &r->v, sizeof(double));
  ck_assert_msg(psm_init_validate(&s, mat, 2, err, sizeof err) == -1, "%s: accepted", what);
  assert_says(err, what, r->field, r->got, r->range);
}
END_TEST

/* Every init kind's defaults pass on a vector, and on a matrix for every
 * kind but zeros and constant (the symmetry refusal); the ends of the
 * ranges pass too. */
START_TEST(test_init_defaults_and_bounds_accepted) {
  const uint64_t vec[1] = {7}, mat[2] = {4, 5}, conv[4] = {8, 3, 5, 5};
  char err[512];
  ps_init_spec s;
  for (int k = 0; k < PS_INIT_COUNT_; k++) {
    psm_init_defaults(&s, (ps_init_kind)k);
    ck_assert_msg(psm_init_validate(&s, vec, 1, err, sizeof err) == 0, "%s: %s",
                  ps_init_name(k), err);
    if (k == PS_INIT_ZEROS || k == PS_INIT_CONSTANT) continue;
    ck_assert_msg(psm_init_validate(&s, mat, 2, err, sizeof err) == 0, "%s: %s",
                  ps_init_name(k), err);
    ck_assert_msg(psm_init_validate(&s, conv, 4, err, sizeof err) == 0, "%s: %s",
                  ps_init_name(k), err);
  }
  const struct {
    ps_init_kind kind;
    size_t off;
    double v;
  } ok[] = {
      {PS_INIT_NORMAL, offsetof(ps_init_spec, sigma), 1e-30},
      {PS_INIT_NORMAL, offsetof(ps_init_spec, sigma), 1000},
      {PS_INIT_TRUNCATED_NORMAL, offsetof(ps_init_spec, sigma), 1000},
      {PS_INIT_UNIFORM, offsetof(ps_init_spec, limit), 1e-30},
      {PS_INIT_UNIFORM, offsetof(ps_init_spec, limit), 1000},
      {PS_INIT_CONSTANT, offsetof(ps_init_spec, value), 1000},
      {PS_INIT_CONSTANT, offsetof(ps_init_spec, value), -1000},
      {PS_INIT_CONSTANT, offsetof(ps_init_spec, value), -0.0},
      {PS_INIT_HE_NORMAL, offsetof(ps_init_spec, sigma), -5}, /* unused: finite is enough */
      {PS_INIT_GLOROT_UNIFORM, offsetof(ps_init_spec, value), 1e300},
  };
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    psm_init_defaults(&s, ok[i].kind);
    memcpy((char *)&s + ok[i].off, &ok[i].v, sizeof(double));
    ck_assert_msg(psm_init_validate(&s, vec, 1, err, sizeof err) == 0, "%s %g: %s",
                  ps_init_name(ok[i].kind), ok[i].v, err);
  }
  /* Explicit fans of any size: the rules' variance is at most 2. */
  psm_init_defaults(&s, PS_INIT_HE_UNIFORM);
  s.fan_in = UINT64_MAX;
  s.fan_in_includes_bias = 1;
  ck_assert_int_eq(psm_init_validate(&s, mat, 2, err, sizeof err), 0);
  s.fan_in = 1;
  ck_assert_int_eq(psm_init_validate(&s, mat, 2, err, sizeof err), 0);
}
END_TEST

START_TEST(test_spec_diff) {
  ps_tensor_spec a, b;
  char out[512];
  ps_tensor_spec_init(&a, PS_INIT_HE_NORMAL, PS_OPT_ADAM);
  ps_tensor_spec_init(&b, PS_INIT_HE_NORMAL, PS_OPT_ADAM);
  ck_assert_int_eq(psm_spec_diff(&a, &b, out, sizeof out), 0);
  ck_assert_str_eq(out, "");
  b.init.kind = PS_INIT_GLOROT_UNIFORM;
  b.optim.lr = 0.01;
  ck_assert_int_eq(psm_spec_diff(&a, &b, out, sizeof out), 1);
  ck_assert_str_eq(out,
                   "init kind: he_normal vs glorot_uniform; optimizer lr: "
                   "0.001 vs 0.01");
  /* Doubles print exactly, flags as booleans. */
  b = a;
  b.optim.beta2 = 0.1 + 0.2;
  b.optim.heavy_ball = 1;
  a.optim.heavy_ball = 0;
  b.block_size = 4096;
  b.init.seed = 7;
  b.optim.schedule = PS_SCHED_COSINE;
  ck_assert_int_eq(psm_spec_diff(&a, &b, out, sizeof out), 1);
  ck_assert_str_eq(out, "init seed: 0 vs 7; optimizer beta2: 0.999 vs "
                        "0.30000000000000004; optimizer heavy_ball: 0 vs 1; "
                        "optimizer schedule: constant vs cosine; block_size: "
                        "0 vs 4096");
  /* The same flag spelled 1 and 2 is the same spec. */
  b = a;
  a.init.allow_symmetric = 1;
  b.init.allow_symmetric = 2;
  ck_assert_int_eq(psm_spec_diff(&a, &b, out, sizeof out), 0);
  /* 0 and -0 are different constant tensors. */
  b = a;
  b.init.value = -0.0;
  ck_assert_int_eq(psm_spec_diff(&a, &b, out, sizeof out), 1);
  ck_assert_str_eq(out, "init value: 0 vs -0");
  /* Every field differs: every field is listed. */
  char big[4096];
  memset(&b, 0x11, sizeof b);
  b.init.kind = PS_INIT_LECUN_UNIFORM;
  b.optim.kind = PS_OPT_SGD;
  b.optim.schedule = PS_SCHED_STEP;
  b.init.allow_symmetric = 0;
  ck_assert_int_eq(psm_spec_diff(&a, &b, big, sizeof big), 1);
  int fields = 1;
  for (const char *p = big; (p = strstr(p, "; ")) != NULL; p++) fields++;
  ck_assert_int_eq(fields, 9 + 17 + 1);
  /* A short buffer is cut, not overrun. */
  char small[12];
  memset(small, 'x', sizeof small);
  ck_assert_int_eq(psm_spec_diff(&a, &b, small, 10), 1);
  ck_assert_uint_eq(strlen(small), 9);
  ck_assert_int_eq(small[10], 'x');
  ck_assert_int_eq(psm_spec_diff(&a, &b, NULL, 0), 1);
}
END_TEST

/* ---- suite -------------------------------------------------------------- */

/* ---- the update helper (common/helper.c) ----------------------------------- */

typedef struct {
  uint32_t job;
  uint32_t runs[8];
  uint32_t stamp[8]; /* the job each piece last ran for */
} helper_job;

static void count_piece(void *arg, uint32_t piece) {
  helper_job *j = arg;
  j->runs[piece]++;
  j->stamp[piece] = j->job;
}

/* Many small jobs with changing piece counts, back to back: every piece of
 * every job runs exactly once, for that job (a helper that woke late once
 * claimed a piece of the next job that did not exist). */
START_TEST(test_helper_every_piece_once) {
  psd_helper *h = helper_start();
  ck_assert_ptr_nonnull(h);
  helper_job j;
  memset(&j, 0, sizeof(j));
  for (uint32_t k = 1; k <= 100000; k++) {
    uint32_t n = 2 + (k * 5) % 7; /* 2..8 */
    j.job = k;
    memset(j.runs, 0, sizeof(j.runs));
    helper_run(h, count_piece, &j, n);
    for (uint32_t i = 0; i < 8; i++) {
      ck_assert_msg(j.runs[i] == (i < n ? 1u : 0u), "job %u (%u pieces): piece %u ran %u times",
                    k, n, i, j.runs[i]);
      if (i < n) ck_assert_uint_eq(j.stamp[i], k);
    }
  }
  helper_stop(h);
  /* No helper: everything runs on the caller. */
  memset(&j, 0, sizeof(j));
  helper_run(NULL, count_piece, &j, 5);
  for (uint32_t i = 0; i < 5; i++) ck_assert_uint_eq(j.runs[i], 1);
}
END_TEST

/* Pieces give exactly the bytes of one pass, on one thread or two. */
START_TEST(test_apply_range_pieces_equal_one_pass) {
  enum { N = 100003 };
  ps_tensor_spec s;
  ps_tensor_spec_init(&s, PS_INIT_ZEROS, PS_OPT_ADAM);
  float *w1 = calloc(N, 4), *w2 = calloc(N, 4), *s1 = calloc(2 * N, 4), *s2 = calloc(2 * N, 4);
  float *g = malloc(N * 4);
  for (int i = 0; i < N; i++) g[i] = 0.001f * (float)(i % 29) - 0.014f;
  for (uint64_t t = 1; t <= 3; t++) {
    psm_apply(&s.optim, t, w1, s1, g, 1.0f, N);
    for (uint64_t lo = 0; lo < N; lo += 16384)
      psm_apply_range(&s.optim, t, w2, s2, g, 1.0f, N, lo, lo + 16384 < N ? lo + 16384 : N);
  }
  ck_assert(memcmp(w1, w2, N * 4) == 0);
  ck_assert(memcmp(s1, s2, 2 * N * 4) == 0);
  float *c = malloc(N * 4);
  ck_assert(psm_copy_finite(c, g, N));
  ck_assert(memcmp(c, g, N * 4) == 0);
  g[N - 1] = INFINITY;
  ck_assert(!psm_copy_finite(c, g, N));
  ck_assert(!psm_all_finite(g, N));
  g[N - 1] = 0;
  g[5] = NAN;
  ck_assert(!psm_copy_finite(c, g, N));
  ck_assert(!psm_all_finite(g, N));
  g[5] = -FLT_MAX;
  ck_assert(psm_all_finite(g, N));
  free(w1), free(w2), free(s1), free(s2), free(g), free(c);
}
END_TEST

static Suite *math_suite(void) {
  Suite *s = suite_create("math");
  TCase *tc = tcase_create("optimizers");
  tcase_add_loop_test(tc, test_optimizer_vs_reference, 0, N_OPT_CASES);
  tcase_add_test(tc, test_optimizer_known_values);
  tcase_add_loop_test(tc, test_row_optimizer_vs_reference, 0, N_OPT_CASES);
  tcase_add_test(tc, test_row_memo_collisions);
  tcase_add_test(tc, test_row_init);
  tcase_add_test(tc, test_table_spec);
  tcase_add_test(tc, test_optimizer_chunks_match_scalar);
  suite_add_tcase(s, tc);

  tc = tcase_create("schedules");
  tcase_add_test(tc, test_schedules);
  tcase_add_test(tc, test_schedules_warmup);
  suite_add_tcase(s, tc);

  tc = tcase_create("initializers");
  tcase_set_timeout(tc, 300); /* 2^20 samples per kind, also under valgrind */
  tcase_add_loop_test(tc, test_init_moments, 0, N_INIT_CASES);
  tcase_add_test(tc, test_fans);
  tcase_add_test(tc, test_fan_in_includes_bias);
  tcase_add_test(tc, test_init_symmetric);
  tcase_add_test(tc, test_init_validation);
  suite_add_tcase(s, tc);

  tc = tcase_create("determinism");
  tcase_set_timeout(tc, 120);
  tcase_add_loop_test(tc, test_determinism_chunks, 0,
                      (int)(sizeof det_kinds / sizeof det_kinds[0]));
  tcase_add_test(tc, test_stable_values);
  suite_add_tcase(s, tc);

  tc = tcase_create("sumsq");
  tcase_add_test(tc, test_sumsq);
  suite_add_tcase(s, tc);

  tc = tcase_create("helper"); /* tests/run.sh also runs this under TSan */
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_helper_every_piece_once);
  tcase_add_test(tc, test_apply_range_pieces_equal_one_pass);
  suite_add_tcase(s, tc);

  tc = tcase_create("specs");
  tcase_add_test(tc, test_names_round_trip);
  tcase_add_test(tc, test_defaults);
  tcase_add_test(tc, test_optim_validation);
  tcase_add_test(tc, test_spec_diff);
  suite_add_tcase(s, tc);

  tc = tcase_create("ranges");
  tcase_add_loop_test(tc, test_optim_range_refused, 0, N_OPTIM_BADS);
  tcase_add_test(tc, test_optim_range_refused_other);
  tcase_add_test(tc, test_optim_defaults_accepted);
  tcase_add_test(tc, test_none_validation);
  tcase_add_test(tc, test_optim_range_bounds_accepted);
  tcase_add_test(tc, test_lr_never_above_lr);
  tcase_add_loop_test(tc, test_init_range_refused, 0, N_INIT_BADS);
  tcase_add_test(tc, test_init_defaults_and_bounds_accepted);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return check_run(math_suite()); }
