/*
 * test_e2e_math.c -- every initializer and every optimizer through real psd
 * shards and the real client library: create, push a known gradient
 * sequence, pull, and compare with a reference computed here in double
 * precision from docs/math.md's formulas (the unit tests in test_math.c check
 * the kernels alone; this checks that specs, versions, schedules and state
 * survive the trip through the protocol and the block split).
 */
#include <check.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "harness.h"
#include "psd.h"
#include "psmath.h"
#include "shards.h"

#define N 300 /* elements; block_size 128 cuts them over both shards */
#define STEPS 3

static char servers[160];
static ps_client *cl;

static void setup(void) {
  ts_start_cluster(2, NULL, servers, sizeof(servers));
  ck_assert_int_eq(ps_connect(&cl, servers, NULL), 0);
}

static void teardown(void) {
  ps_close(cl);
  ts_stop_all_clean();
}

/* ---- the reference --------------------------------------------------------------- */

static double grad(int step, int i) { return sin(0.37 * i + 1.3 * step) * (1.0 + 0.1 * step); }

static double lr_at(const ps_optim_spec *o, uint64_t t) {
  double lr = o->lr;
  if (o->warmup > 0 && t <= o->warmup) return lr * (double)t / (double)o->warmup;
  switch (o->schedule) {
    case PS_SCHED_STEP: return lr * pow(o->gamma, floor((double)t / (double)o->step_size));
    case PS_SCHED_EXPONENTIAL: return lr * pow(o->gamma, (double)t);
    case PS_SCHED_INVERSE_TIME: return lr / (1.0 + o->decay * (double)t);
    case PS_SCHED_INVERSE_SQRT: return lr / sqrt((double)t);
    case PS_SCHED_COSINE: {
      double tt = t < o->total_steps ? (double)t : (double)o->total_steps;
      return o->lr_min + 0.5 * (lr - o->lr_min) * (1 + cos(M_PI * tt / (double)o->total_steps));
    }
    default: return lr;
  }
}

/* Apply STEPS updates to w (double) with docs/math.md's rules. gscale per step
 * is clip_norm's factor from the whole gradient's norm. */
static void reference(const ps_optim_spec *o, double *w) {
  double *m = calloc(N, sizeof(double)), *v = calloc(N, sizeof(double));
  for (int step = 0; step < STEPS; step++) {
    uint64_t t = (uint64_t)step + 1;
    double lr = lr_at(o, t), scale = 1.0;
    if (o->clip_norm > 0) {
      double ss = 0;
      for (int i = 0; i < N; i++) ss += grad(step, i) * (double)(float)grad(step, i);
      double nrm = sqrt(ss);
      if (nrm > o->clip_norm) scale = o->clip_norm / nrm;
    }
    for (int i = 0; i < N; i++) {
      double g = (double)(float)grad(step, i) * scale;
      if (o->kind != PS_OPT_ADAMW) g += o->weight_decay * w[i];
      switch (o->kind) {
        case PS_OPT_SGD: w[i] -= lr * g; break;
        case PS_OPT_MOMENTUM:
          if (o->heavy_ball) {
            m[i] = o->beta1 * m[i] + g;
            w[i] -= lr * (o->nesterov ? g + o->beta1 * m[i] : m[i]);
          } else {
            m[i] = o->beta1 * m[i] + (1 - o->beta1) * g;
            w[i] -= lr * m[i];
          }
          break;
        case PS_OPT_RMSPROP:
          m[i] = o->beta1 * m[i] + (1 - o->beta1) * g * g;
          w[i] -= lr * g / (o->eps_inside_sqrt ? sqrt(m[i] + o->eps) : sqrt(m[i]) + o->eps);
          break;
        case PS_OPT_ADAGRAD:
          m[i] += g * g;
          w[i] -= lr * g / (sqrt(m[i]) + o->eps);
          break;
        case PS_OPT_ADAMW:
          w[i] -= lr * o->weight_decay * w[i];
          __attribute__((fallthrough)); /* then the Adam step without L2 */
        case PS_OPT_ADAM: {
          m[i] = o->beta1 * m[i] + (1 - o->beta1) * g;
          v[i] = o->beta2 * v[i] + (1 - o->beta2) * g * g;
          double mh = m[i] / (1 - pow(o->beta1, (double)t));
          double vh = v[i] / (1 - pow(o->beta2, (double)t));
          w[i] -= lr * mh / (o->eps_inside_sqrt ? sqrt(vh + o->eps) : sqrt(vh) + o->eps);
          break;
        }
        default: break;
      }
    }
  }
  free(m);
  free(v);
}

/* ---- optimizers ---------------------------------------------------------------- */

typedef struct {
  const char *label;
  ps_optim_kind kind;
  void (*tweak)(ps_optim_spec *);
} optim_case;

static void t_none(ps_optim_spec *o) { (void)o; }
static void t_heavy(ps_optim_spec *o) { o->heavy_ball = 1; }
static void t_nesterov(ps_optim_spec *o) { o->heavy_ball = 1, o->nesterov = 1; }
static void t_inside(ps_optim_spec *o) { o->eps_inside_sqrt = 1, o->eps = 1e-3; }
static void t_l2(ps_optim_spec *o) { o->weight_decay = 0.05; }
static void t_clip(ps_optim_spec *o) { o->clip_norm = 2.0; }
static void t_cosine(ps_optim_spec *o) {
  o->schedule = PS_SCHED_COSINE, o->total_steps = 4, o->lr_min = 1e-4, o->warmup = 1;
}
static void t_step(ps_optim_spec *o) { o->schedule = PS_SCHED_STEP, o->gamma = 0.5, o->step_size = 2; }
static void t_exp(ps_optim_spec *o) { o->schedule = PS_SCHED_EXPONENTIAL, o->gamma = 0.9; }
static void t_invt(ps_optim_spec *o) { o->schedule = PS_SCHED_INVERSE_TIME, o->decay = 0.5; }
static void t_isqrt(ps_optim_spec *o) { o->schedule = PS_SCHED_INVERSE_SQRT; }

static const optim_case optim_cases[] = {
    {"sgd", PS_OPT_SGD, t_none},
    {"sgd+l2", PS_OPT_SGD, t_l2},
    {"sgd+clip", PS_OPT_SGD, t_clip},
    {"sgd+step", PS_OPT_SGD, t_step},
    {"sgd+exponential", PS_OPT_SGD, t_exp},
    {"sgd+inverse_time", PS_OPT_SGD, t_invt},
    {"sgd+inverse_sqrt", PS_OPT_SGD, t_isqrt},
    {"momentum", PS_OPT_MOMENTUM, t_none},
    {"momentum heavy_ball", PS_OPT_MOMENTUM, t_heavy},
    {"momentum nesterov", PS_OPT_MOMENTUM, t_nesterov},
    {"rmsprop", PS_OPT_RMSPROP, t_none},
    {"rmsprop eps_inside_sqrt", PS_OPT_RMSPROP, t_inside},
    {"adam", PS_OPT_ADAM, t_none},
    {"adam eps_inside_sqrt", PS_OPT_ADAM, t_inside},
    {"adam+l2+cosine warmup", PS_OPT_ADAM, t_cosine},
    {"adamw", PS_OPT_ADAMW, t_none},
    {"adagrad", PS_OPT_ADAGRAD, t_none},
};

START_TEST(optimizer_through_psd) {
  const optim_case *oc = &optim_cases[_i];
  ps_tensor_spec s;
  ps_tensor_spec_init(&s, PS_INIT_GLOROT_UNIFORM, oc->kind);
  s.init.seed = 17;
  s.block_size = 128;
  oc->tweak(&s.optim);
  if (oc->tweak == t_cosine) s.optim.weight_decay = 0.01;
  char name[64];
  snprintf(name, sizeof(name), "opt%d", _i);
  uint64_t shape[2] = {20, 15};
  if (ps_create(cl, name, shape, 2, &s) != 0) ck_abort_msg("%s: %s", oc->label, ps_errmsg(cl));

  /* The resolved spec reads back as written. */
  ps_tensor_info info;
  ck_assert_int_eq(ps_lookup(cl, name, &info), 0);
  ck_assert(info.spec.optim.kind == oc->kind && info.spec.optim.lr == s.optim.lr);
  ck_assert(info.spec.optim.schedule == s.optim.schedule && info.spec.optim.warmup == s.optim.warmup);
  ck_assert(info.spec.optim.clip_norm == s.optim.clip_norm);
  ps_tensor_info_free(&info);

  float w0[N], g[N], got[N];
  ck_assert_int_eq(ps_pull(cl, name, w0, N, NULL), 0);
  double ref[N];
  for (int i = 0; i < N; i++) ref[i] = w0[i];
  for (int step = 0; step < STEPS; step++) {
    for (int i = 0; i < N; i++) g[i] = (float)grad(step, i);
    ck_assert_int_eq(ps_push(cl, name, g, N), 0);
  }
  uint64_t version;
  ck_assert_int_eq(ps_pull(cl, name, got, N, &version), 0);
  ck_assert_uint_eq(version, STEPS);
  reference(&s.optim, ref);
  for (int i = 0; i < N; i++) {
    double tol = 1e-5 * fmax(1.0, fabs(ref[i]));
    if (fabs(got[i] - ref[i]) > tol)
      ck_abort_msg("%s: element %d: psd %.9g, reference %.9g", oc->label, i, got[i], ref[i]);
  }
}
END_TEST

/* ---- initializers --------------------------------------------------------------- */

START_TEST(initializer_through_psd) {
  ps_init_kind k = (ps_init_kind)_i;
  ps_tensor_spec s;
  ps_tensor_spec_init(&s, k, PS_OPT_SGD);
  s.init.seed = 23;
  s.block_size = 4096;
  if (k == PS_INIT_CONSTANT) s.init.value = 0.25;
  if (k == PS_INIT_ZEROS || k == PS_INIT_CONSTANT) s.init.allow_symmetric = 1;
  char name[64];
  snprintf(name, sizeof(name), "init_%s", ps_init_name(k));
  const uint64_t rows = 256, cols = 400, n = rows * cols;
  uint64_t shape[2] = {rows, cols};
  if (ps_create(cl, name, shape, 2, &s) != 0) ck_abort_msg("%s: %s", name, ps_errmsg(cl));
  float *got = malloc(n * sizeof(float)), *want = malloc(n * sizeof(float));
  ck_assert_int_eq(ps_pull(cl, name, got, n, NULL), 0);
  /* The same bytes as the generator gives locally, cut into 4096-element
   * blocks over two shards. */
  psm_init_fill(&s.init, shape, 2, psm_hash_name(name), 0, want, n);
  ck_assert_int_eq(memcmp(got, want, n * sizeof(float)), 0);

  /* And the variance rule holds: d_in = 400, d_out = 256. */
  double sum = 0, sq = 0;
  for (uint64_t i = 0; i < n; i++) sum += got[i], sq += (double)got[i] * got[i];
  double mean = sum / (double)n, var = sq / (double)n - mean * mean;
  double target = -1;
  switch (k) {
    case PS_INIT_HE_NORMAL: case PS_INIT_HE_UNIFORM: case PS_INIT_HE_TRUNCATED_NORMAL:
      target = 2.0 / 400; break;
    case PS_INIT_LECUN_NORMAL: case PS_INIT_LECUN_UNIFORM: case PS_INIT_LECUN_TRUNCATED_NORMAL:
      target = 1.0 / 400; break;
    case PS_INIT_FAN_OUT_NORMAL: case PS_INIT_FAN_OUT_UNIFORM: case PS_INIT_FAN_OUT_TRUNCATED_NORMAL:
      target = 1.0 / 256; break;
    case PS_INIT_GLOROT_NORMAL: case PS_INIT_GLOROT_UNIFORM: case PS_INIT_GLOROT_TRUNCATED_NORMAL:
      target = 2.0 / (400 + 256); break;
    case PS_INIT_ZEROS: ck_assert(sq == 0); break;
    case PS_INIT_CONSTANT: ck_assert(fabs(mean - 0.25) < 1e-9 && var < 1e-12); break;
    case PS_INIT_UNIFORM: target = s.init.limit * s.init.limit / 3; break;
    default: target = s.init.sigma * s.init.sigma; break;
  }
  if (target > 0) {
    ck_assert_msg(fabs(var / target - 1) < 0.02, "%s: variance %.6g, rule %.6g", name, var, target);
    ck_assert_msg(fabs(mean) < 4 * sqrt(target / (double)n), "%s: mean %.3g", name, mean);
  }
  free(got);
  free(want);
}
END_TEST

START_TEST(symmetric_init_refused_on_matrix) {
  ps_tensor_spec s;
  ps_tensor_spec_init(&s, PS_INIT_ZEROS, PS_OPT_SGD);
  uint64_t shape[2] = {4, 4};
  ck_assert_int_eq(ps_create(cl, "sym", shape, 2, &s), PS_ESPEC);
  ck_assert_ptr_nonnull(strstr(ps_errmsg(cl), "symmetr"));
  uint64_t bias[1] = {4};
  ck_assert_int_eq(ps_create(cl, "symb", bias, 1, &s), 0);
}
END_TEST

START_TEST(nan_gradient_refused_weights_untouched) {
  ps_tensor_spec s;
  ps_tensor_spec_init(&s, PS_INIT_HE_NORMAL, PS_OPT_ADAM);
  s.block_size = 128;
  uint64_t shape[2] = {20, 15};
  ck_assert_int_eq(ps_create(cl, "nan", shape, 2, &s), 0);
  float before[N], after[N], g[N];
  ck_assert_int_eq(ps_pull(cl, "nan", before, N, NULL), 0);
  for (int i = 0; i < N; i++) g[i] = 0.5f;
  g[N - 1] = NAN;
  ck_assert_int_eq(ps_push(cl, "nan", g, N), PS_EGRADIENT);
  ck_assert_ptr_nonnull(strstr(ps_errmsg(cl), "NaN"));
  uint64_t v;
  ck_assert_int_eq(ps_pull(cl, "nan", after, N, &v), 0);
  /* The library refuses the whole gradient before any block leaves: every
   * block is untouched, not only the one holding the NaN. */
  ck_assert_uint_eq(v, 0);
  ck_assert_int_eq(memcmp(before, after, sizeof(before)), 0);
}
END_TEST

int main(void) {
  Suite *s = suite_create("e2e_math");
  TCase *tc = tcase_create("through_psd");
  tcase_add_unchecked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_loop_test(tc, optimizer_through_psd, 0,
                      (int)(sizeof(optim_cases) / sizeof(optim_cases[0])));
  tcase_add_loop_test(tc, initializer_through_psd, 0, PS_INIT_COUNT_);
  tcase_add_test(tc, symmetric_init_refused_on_matrix);
  tcase_add_test(tc, nan_gradient_refused_weights_untouched);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_set_fork_status(sr, CK_NOFORK);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
