/*
 * bench_math.c -- throughput of psd's math core on one core.
 *
 * Prints, for one buffer size N:
 *  - a STREAM-style triad a[i] = b[i] + s*c[i] on float buffers of N
 *    elements (12 bytes moved per element), the memory-bandwidth yardstick;
 *  - every optimizer kernel's throughput in parameters/s and in effective
 *    GB/s (bytes read + written per parameter: sgd 12, momentum, rmsprop
 *    and adagrad 20, adam and adamw 28), and its ratio to the triad;
 *  - psm_sumsq and psm_all_finite (4 bytes per parameter);
 *  - every initializer's throughput in parameters/s.
 * Each figure is the best of --reps runs (CLOCK_MONOTONIC); the memory
 * kernels are timed round-robin, one run of each per round.
 *
 * Usage: bench_math [--n N] [--reps R] [--quick]
 *   --n N     elements per buffer (default 4194304 = 2^22)
 *   --reps R  runs per measurement, best reported (default 10)
 *   --quick   tiny sizes and few runs, for CI: checks that it runs
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "psd_types.h"
#include "psmath.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static float *alloc_floats(size_t n, float fill) {
  size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
  float *p = aligned_alloc(64, bytes ? bytes : 64);
  if (p == NULL) {
    fprintf(stderr, "bench_math: out of memory for %zu floats\n", n);
    exit(1);
  }
  /* Touch every page now so that page faults are not timed. */
  for (size_t i = 0; i < n; i++) p[i] = fill;
  return p;
}

/* The triad lives in its own non-inlined function so that the compiler
 * cannot fold repeated runs together. It is written in chunks of 16, like
 * psmath.c's kernels, so that GCC vectorizes it at -O2 too and the
 * comparison is between equally vectorized loops. */
__attribute__((noinline)) static void triad(float *restrict a,
                                            const float *restrict b,
                                            const float *restrict c, float s,
                                            size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (size_t j = i; j < i + 16; j++) a[j] = b[j] + s * c[j];
  for (; i < n; i++) a[i] = b[i] + s * c[i];
}

typedef struct {
  const char *name;
  ps_optim_kind kind;
  int heavy, nesterov, eps_in;
  double bytes; /* read + written per parameter */
} bench_opt;

static const bench_opt opts[] = {
    {"sgd", PS_OPT_SGD, 0, 0, 0, 12},
    {"momentum", PS_OPT_MOMENTUM, 0, 0, 0, 20},
    {"momentum heavy_ball", PS_OPT_MOMENTUM, 1, 0, 0, 20},
    {"momentum nesterov", PS_OPT_MOMENTUM, 1, 1, 0, 20},
    {"rmsprop", PS_OPT_RMSPROP, 0, 0, 0, 20},
    {"rmsprop eps_inside", PS_OPT_RMSPROP, 0, 0, 1, 20},
    {"adam", PS_OPT_ADAM, 0, 0, 0, 28},
    {"adam eps_inside", PS_OPT_ADAM, 0, 0, 1, 28},
    {"adamw", PS_OPT_ADAMW, 0, 0, 0, 28},
    {"adagrad", PS_OPT_ADAGRAD, 0, 0, 0, 20},
};

int main(int argc, char **argv) {
  size_t n = (size_t)1 << 22;
  int reps = 10, quick = 0;
  for (int a = 1; a < argc; a++) {
    if (strcmp(argv[a], "--quick") == 0) {
      quick = 1;
    } else if (strcmp(argv[a], "--n") == 0 && a + 1 < argc) {
      char *end;
      unsigned long long v = strtoull(argv[++a], &end, 0);
      if (*end != '\0' || v == 0) {
        fprintf(stderr, "bench_math: --n needs a positive integer\n");
        return 2;
      }
      n = (size_t)v;
    } else if (strcmp(argv[a], "--reps") == 0 && a + 1 < argc) {
      reps = atoi(argv[++a]);
      if (reps < 1) {
        fprintf(stderr, "bench_math: --reps needs a positive integer\n");
        return 2;
      }
    } else {
      fprintf(stderr, "usage: %s [--n N] [--reps R] [--quick]\n", argv[0]);
      return 2;
    }
  }
  if (quick) {
    n = 4099; /* not a multiple of the vector chunk: the tail runs too */
    reps = 2;
  }

  float *w = alloc_floats(n, 0.5f), *g = alloc_floats(n, 1e-3f);
  float *st = alloc_floats(2 * n, 0.0f);
  float *ta = alloc_floats(n, 0.0f), *tb = alloc_floats(n, 1.0f),
        *tc = alloc_floats(n, 2.0f);

  printf("bench_math: N = %zu floats (%.1f MiB per buffer), best of %d "
         "runs, one core\n",
         n, (double)n * 4 / 1048576.0, reps);

  /* Rounds go over every memory kernel in turn and each keeps its best
   * time, so that a burst of load from other processes on the machine hits
   * all of them alike instead of spoiling one kernel's figure. State is
   * zeroed (untimed) before each optimizer run: kernels share the buffer
   * and must not read each other's state. */
  enum { NOPT = sizeof opts / sizeof opts[0] };
  double t_triad = 1e30, t_sumsq = 1e30, t_finite = 1e30, t_opt[NOPT];
  for (int k = 0; k < NOPT; k++) t_opt[k] = 1e30;
  volatile double sink = 0;
  for (int r = 0; r < reps; r++) {
    double t0 = now_s();
    triad(ta, tb, tc, 3.0f, n);
    double dt = now_s() - t0;
    if (dt < t_triad) t_triad = dt;
    for (int k = 0; k < NOPT; k++) {
      ps_optim_spec s;
      psm_optim_defaults(&s, opts[k].kind);
      s.heavy_ball = opts[k].heavy;
      s.nesterov = opts[k].nesterov;
      s.eps_inside_sqrt = opts[k].eps_in;
      memset(st, 0, 2 * n * sizeof *st);
      t0 = now_s();
      psm_apply(&s, (uint64_t)r + 1, w, st, g, 1.0f, n);
      dt = now_s() - t0;
      if (dt < t_opt[k]) t_opt[k] = dt;
    }
    t0 = now_s();
    sink += psm_sumsq(g, n);
    dt = now_s() - t0;
    if (dt < t_sumsq) t_sumsq = dt;
    t0 = now_s();
    sink += psm_all_finite(g, n);
    dt = now_s() - t0;
    if (dt < t_finite) t_finite = dt;
  }
  const double triad_gbs = 12.0 * (double)n / t_triad / 1e9;
  printf("%-22s %10s %9s %9s\n", "kernel", "Mparam/s", "GB/s", "/triad");
  printf("%-22s %10.1f %9.2f %9s\n", "triad a=b+s*c",
         (double)n / t_triad / 1e6, triad_gbs, "1.00");
  for (int k = 0; k < NOPT; k++) {
    double gbs = opts[k].bytes * (double)n / t_opt[k] / 1e9;
    printf("%-22s %10.1f %9.2f %9.2f\n", opts[k].name,
           (double)n / t_opt[k] / 1e6, gbs, gbs / triad_gbs);
  }
  double gbs = 4.0 * (double)n / t_sumsq / 1e9;
  printf("%-22s %10.1f %9.2f %9.2f\n", "sumsq", (double)n / t_sumsq / 1e6,
         gbs, gbs / triad_gbs);
  gbs = 4.0 * (double)n / t_finite / 1e9;
  printf("%-22s %10.1f %9.2f %9.2f\n", "all_finite", (double)n / t_finite / 1e6,
         gbs, gbs / triad_gbs);

  printf("%-26s %10s\n", "initializer", "Mparam/s");
  const uint64_t shape[2] = {n, 1};
  uint64_t h = psm_hash_name("bench.weight");
  for (int kind = 0; kind < PS_INIT_COUNT_; kind++) {
    ps_init_spec s;
    psm_init_defaults(&s, (ps_init_kind)kind);
    s.allow_symmetric = 1;
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
      s.seed = (uint64_t)r;
      double t0 = now_s();
      psm_init_fill(&s, shape, 2, h, 0, w, n);
      double dt = now_s() - t0;
      if (dt < best) best = dt;
    }
    printf("%-26s %10.1f\n", ps_init_name((ps_init_kind)kind),
           (double)n / best / 1e6);
  }
  (void)sink;
  free(w);
  free(g);
  free(st);
  free(ta);
  free(tb);
  free(tc);
  return 0;
}
