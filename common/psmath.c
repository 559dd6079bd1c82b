/*
 * psmath.c -- initializers, optimizers and learning-rate schedules.
 *
 * The exact definitions are in docs/math.md; this file is written so
 * that every formula there can be found here line for line.
 *
 * Two properties shape the code:
 *
 *  - Initialization is a pure function of (seed, name hash, element index,
 *    spec). It uses a counter-based generator (the SplitMix64 output
 *    function applied to key + counter) and its own polynomial log, sin and
 *    cos instead of libm, so that the values do not depend on the libm of
 *    the machine, on how a tensor is cut into blocks, or on call order.
 *    Determinism across builds assumes no fused multiply-add contraction
 *    in the double code: GCC's default under -std=c11, and a pragma below
 *    for clang. With GCC and -std=gnu11, add -ffp-contract=off.
 *
 *  - Optimizer updates are memory-bound: one pass over w, the state and g.
 *    Every per-call constant (bias corrections, learning rate) is computed
 *    once in double; each variant then has its own branch-free float loop
 *    over restrict pointers, which GCC vectorizes at -O2 (sqrtf becomes
 *    sqrtps because the build uses -fno-math-errno).
 */
#include "psmath.h"

#include <math.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h> /* psm_sumsq */
#endif

#include "hash.h"

/* The generator's double arithmetic must not be contracted into fused
 * multiply-adds, or builds for FMA machines would draw other numbers.
 * GCC does not contract under -std=c11 (CMake's C_EXTENSIONS OFF); clang
 * needs to be told. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

/* ---- hashing ------------------------------------------------------------ */

/* The generator's helpers must be inlined into the fill loops for those to
 * vectorize; GCC's -O2 heuristics would leave the larger ones out of line. */
#define PSM_INLINE static inline __attribute__((always_inline))

/* Counters are spaced by PSH_GOLDEN before psh_mix64 (hash.h), exactly as
 * SplitMix64 spaces its states: key + i*GOLDEN mixed is the i-th output of
 * a SplitMix64 stream seeded with key, which passes BigCrush. */

/* FNV-1a over the bytes of the name, then the SplitMix64 finalizer: FNV-1a
 * alone mixes its last bytes poorly into the high bits, which placement and
 * the init key both use. */
uint64_t psm_hash_name(const char *name) {
  return psh_mix64(psh_fnv1a(PSH_FNV_BASIS, name != NULL ? name : ""));
}

/* ---- fans --------------------------------------------------------------- */

void psm_fans(const ps_init_spec *s, const uint64_t *shape, int ndim,
              double *fan_in, double *fan_out) {
  double in = 0, out = 0;
  if (ndim == 1) {
    in = out = (double)shape[0];
  } else if (ndim >= 2) {
    /* torch.nn.init._calculate_fan_in_and_fan_out: shape is [out, in, k...]. */
    double receptive = 1;
    for (int d = 2; d < ndim; d++) receptive *= (double)shape[d];
    in = (double)shape[1] * receptive;
    out = (double)shape[0] * receptive;
  }
  if (s->fan_in != 0) in = (double)s->fan_in;
  if (s->fan_out != 0) out = (double)s->fan_out;
  if (s->fan_in_includes_bias) in += 1; /* the constant input x_0 = 1 */
  *fan_in = in;
  *fan_out = out;
}

/* ---- branch-free double helpers for the generator ------------------------ */

typedef union {
  double d;
  uint64_t u;
} psm_bits;

/* Exact conversion of a 32-bit unsigned integer to double using only
 * integer OR and one subtraction, which vectorizes without AVX-512. */
PSM_INLINE double psm_u32_to_double(uint64_t k) {
  psm_bits b = {.u = UINT64_C(0x4330000000000000) | (k & 0xFFFFFFFFu)};
  return b.d - 4503599627370496.0; /* 2^52 */
}

/* Natural log of a positive, normal, finite double, to about 1e-14
 * absolute error. x = 2^e * m with m in [sqrt(1/2), sqrt(2)); then
 * ln m = 2 atanh(f), f = (m-1)/(m+1), |f| <= 0.1716, series to f^15.
 * Written with integer adds and shifts instead of compares and selects so
 * that the fill loops stay straight-line code the vectorizer accepts. */
PSM_INLINE double psm_log(double x) {
  psm_bits b = {.d = x};
  const uint64_t mant = b.u & UINT64_C(0x000FFFFFFFFFFFFF);
  /* big = 1 when the mantissa is >= sqrt(2) - 1 (0x6A09E667F3BCD): the
   * add carries into bit 52 exactly then. */
  const uint64_t big = (mant + (UINT64_C(0x0010000000000000) -
                                UINT64_C(0x0006A09E667F3BCD))) >> 52;
  psm_bits e = {.u = UINT64_C(0x4330000000000000) + (b.u >> 52) + big};
  double ed = e.d - (4503599627370496.0 + 1023.0);
  psm_bits m = {.u = mant | ((UINT64_C(0x3FF) - big) << 52)};
  double f = (m.d - 1.0) / (m.d + 1.0);
  double f2 = f * f;
  double p = 1.0 / 15;
  p = p * f2 + 1.0 / 13;
  p = p * f2 + 1.0 / 11;
  p = p * f2 + 1.0 / 9;
  p = p * f2 + 1.0 / 7;
  p = p * f2 + 1.0 / 5;
  p = p * f2 + 1.0 / 3;
  p = p * f2 + 1.0;
  return ed * 0.69314718055994531 + 2.0 * f * p;
}

/* Box-Muller on one 64-bit random word: the high 32 bits give the radius
 * u1 = (k1 + 1/2) / 2^32 in (0, 1), the low 32 bits the angle
 * theta = 2 pi (k2 + 1/2) / 2^32. Returns the two independent standard
 * normals r cos(theta) and r sin(theta). sin and cos are Taylor series on
 * |psi| <= pi/4 (error below 1e-14), rotated into the right quadrant by
 * swapping and flipping signs with bit masks, so there is no libm call
 * and no branch. */
PSM_INLINE void psm_box_muller(uint64_t z, double *z0, double *z1) {
  double k1 = psm_u32_to_double(z >> 32);
  /* -2 ln u1 = 2 (32 ln 2 - ln(k1 + 1/2)) */
  double r = sqrt(2.0 * (22.18070977791824990 - psm_log(k1 + 0.5)));
  uint64_t k2 = z & 0xFFFFFFFFu;
  uint64_t q = k2 >> 30; /* quadrant of theta */
  double j = psm_u32_to_double(k2 & 0x3FFFFFFFu);
  /* phi = (j + 1/2) * (pi/2) / 2^30 in (0, pi/2); psi = phi - pi/4. */
  double psi = (j + 0.5) * 1.4629180792671596e-09 - 0.78539816339744831;
  double p2 = psi * psi;
  double sp = -1.0 / 6227020800.0;             /* -1/13! */
  sp = sp * p2 + 1.0 / 39916800.0;             /* 1/11! */
  sp = sp * p2 - 1.0 / 362880.0;               /* -1/9! */
  sp = sp * p2 + 1.0 / 5040.0;
  sp = sp * p2 - 1.0 / 120.0;
  sp = sp * p2 + 1.0 / 6.0;
  sp = psi - psi * p2 * sp;                    /* sin(psi) */
  double cp = 1.0 / 87178291200.0;             /* 1/14! */
  cp = cp * p2 - 1.0 / 479001600.0;            /* -1/12! */
  cp = cp * p2 + 1.0 / 3628800.0;
  cp = cp * p2 - 1.0 / 40320.0;
  cp = cp * p2 + 1.0 / 720.0;
  cp = cp * p2 - 1.0 / 24.0;
  cp = cp * p2 + 0.5;
  cp = 1.0 - p2 * cp;                          /* cos(psi) */
  /* phi = psi + pi/4: cos phi = (c - s)/sqrt2, sin phi = (s + c)/sqrt2. */
  psm_bits cphi = {.d = (cp - sp) * 0.70710678118654752};
  psm_bits sphi = {.d = (sp + cp) * 0.70710678118654752};
  /* theta = phi + q pi/2: quadrants 1 and 3 swap cos and sin; cos is
   * negative in quadrants 1, 2 and sin in quadrants 2, 3. */
  const uint64_t swap = (uint64_t)0 - (q & 1);
  psm_bits c = {.u = (sphi.u & swap) | (cphi.u & ~swap)};
  psm_bits s = {.u = (cphi.u & swap) | (sphi.u & ~swap)};
  c.u ^= ((q ^ (q >> 1)) & 1) << 63;
  s.u ^= (q >> 1) << 63;
  *z0 = r * c.d;
  *z1 = r * s.d;
}

/* ---- vectorizable loops ----------------------------------------------- */

/* GCC 12 at -O2 vectorizes with the "very cheap" cost model, which refuses
 * any loop whose trip count is not known to be a multiple of the vector
 * width. PSM_FOR therefore runs the body over chunks of PSM_CHUNK
 * consecutive elements (a constant trip count, vectorized at -O2 as at -O3
 * and for any vector width up to 512 bits) and finishes the tail with the
 * same body in a scalar loop. */
#define PSM_CHUNK 16
#define PSM_FOR(i, n, ...)                                                    \
  do {                                                                        \
    size_t i##_chunk = 0;                                                     \
    for (; i##_chunk + PSM_CHUNK <= (n); i##_chunk += PSM_CHUNK)              \
      for (size_t i = i##_chunk; i < i##_chunk + PSM_CHUNK; i++) {            \
        __VA_ARGS__                                                           \
      }                                                                       \
    for (size_t i = i##_chunk; i < (n); i++) {                                \
      __VA_ARGS__                                                             \
    }                                                                         \
  } while (0)

/* The running magnitude the kernels return (psm_apply_range): the largest
 * |x| over what they write. One accumulator per lane of a PSM_FOR chunk,
 * maxed element by element: `a > m ? a : m` is exactly x86's maxps, so it
 * costs two instructions per value (and, max) where a running scalar
 * maximum would not vectorize at all. A NaN compares false and is not
 * seen: the caller proves its updates finite beforehand, or checks them
 * with psm_absmax_bits (server/apply.c). PSM_LANES(mb) declares the lanes,
 * PSM_TRACK(mb, i, x) takes x written at index i of a PSM_FOR(i, ...)
 * body, psm_lanes_max(mb##_l) folds them into float bits. */
#define PSM_LANES(mb) float mb##_l[PSM_CHUNK] = {0}
#define PSM_TRACK(mb, i, x)                                                   \
  do {                                                                        \
    float a_ = fabsf(x), m_ = mb##_l[(i) - i##_chunk];                        \
    mb##_l[(i) - i##_chunk] = a_ > m_ ? a_ : m_;                              \
  } while (0)

static uint32_t psm_lanes_max(const float *l) {
  float m = 0;
  for (int j = 0; j < PSM_CHUNK; j++)
    if (l[j] > m) m = l[j];
  uint32_t bits;
  memcpy(&bits, &m, sizeof(bits));
  return bits;
}

/* ---- initializers ------------------------------------------------------- */

/* The standard deviation of a standard normal cut at +-2 (docs/math.md). */
#define PSM_TRUNC_SD 0.87962566103423978

/* The stream key of a tensor: the seed and the name hash, each mixed so
 * that nearby seeds or hashes give unrelated streams. */
static uint64_t psm_init_key(uint64_t seed, uint64_t name_hash) {
  return psh_mix64(seed ^ psh_mix64(name_hash + PSH_GOLDEN));
}

/* Both continuous families draw elements in pairs: elements 2p and 2p+1
 * come from the 64-bit word hashed from counter p.
 *  - normal (uniform = 0): the cos and sin halves of Box-Muller, times a;
 *  - uniform (uniform = 1): the high and low 32 bits k each give
 *    u = (k + 1/2) / 2^31 - 1 in (-1, 1), symmetric about 0, and the value
 *    fl(L u) = fl(k a + b) with a = L / 2^31, b = L (1/2^32 - 1). Rounding
 *    is monotone, so |value| <= fl(L) exactly.
 * The flag is a constant at each (inlined) call, so each family gets its
 * own straight-line loop. */
PSM_INLINE void psm_pair(uint64_t z, int uniform, double a, double b,
                         float *o0, float *o1) {
  if (uniform) {
    *o0 = (float)(psm_u32_to_double(z >> 32) * a + b);
    *o1 = (float)(psm_u32_to_double(z & 0xFFFFFFFFu) * a + b);
  } else {
    double z0, z1;
    psm_box_muller(z, &z0, &z1);
    *o0 = (float)(a * z0);
    *o1 = (float)(a * z1);
  }
}

/* Fill out[0..n) with elements [first, first+n). A call starting or ending
 * at an odd index recomputes its edge pair and keeps only the half it
 * owns, so the values never depend on how a tensor is cut. */
PSM_INLINE void psm_fill_pairs(uint64_t key, int uniform, double a, double b,
                               uint64_t first, float *restrict out,
                               uint64_t n) {
  float h0, h1;
  uint64_t i = first, end = first + n;
  if (n == 0) return;
  if (i & 1) {
    psm_pair(psh_mix64(key + (i >> 1) * PSH_GOLDEN), uniform, a, b, &h0, &h1);
    *out++ = h1;
    i++;
  }
  const uint64_t pairs = (end - i) >> 1, p0 = i >> 1;
  PSM_FOR(k, pairs, {
    psm_pair(psh_mix64(key + (p0 + k) * PSH_GOLDEN), uniform, a, b,
             &out[2 * k], &out[2 * k + 1]);
  });
  i += 2 * pairs;
  out += 2 * pairs;
  if (i < end) {
    psm_pair(psh_mix64(key + (i >> 1) * PSH_GOLDEN), uniform, a, b, &h0, &h1);
    *out = h0;
  }
}

static void psm_fill_normal(uint64_t key, double scale, uint64_t first,
                            float *restrict out, uint64_t n) {
  psm_fill_pairs(key, 0, scale, 0.0, first, out, n);
}

static void psm_fill_uniform(uint64_t key, double limit, uint64_t first,
                             float *restrict out, uint64_t n) {
  psm_fill_pairs(key, 1, limit * (1.0 / 2147483648.0),
                 limit * (0.5 / 2147483648.0) - limit, first, out, n);
}

/* Truncated normal: fill with N(0, s^2), then redraw every element outside
 * the bound. An element is kept when |fl(s z)| <= fl(2 s), i.e. the test is
 * made on the float that is stored, so the bound holds exactly. Redraw c
 * (c = 1, 2, ...) of element i uses the cos half of a Box-Muller pair drawn
 * from a second stream hashed from (i, c): element i still depends on i
 * alone. The 4.55% redraw rate makes the branch in the scan harmless. */
static void psm_fill_truncated(uint64_t key, double s, uint64_t first,
                               float *restrict out, uint64_t n) {
  const float bound = (float)(2.0 * s);
  const uint64_t key2 = psh_mix64(key ^ UINT64_C(0x5851F42D4C957F2D));
  psm_fill_normal(key, s, first, out, n);
  for (uint64_t k = 0; k < n; k++) {
    if (fabsf(out[k]) <= bound) continue;
    uint64_t base = psh_mix64(key2 + (first + k) * PSH_GOLDEN);
    float v = 0.0f;
    /* P(1000 rejections in a row) = 0.0455^1000: the cap only guarantees
     * termination; the fallback 0 is never reached in practice. */
    for (uint64_t c = 1; c <= 1000; c++) {
      double z0, z1;
      psm_box_muller(psh_mix64(base + c * PSH_GOLDEN), &z0, &z1);
      float cand = (float)(s * z0);
      if (fabsf(cand) <= bound) {
        v = cand;
        break;
      }
    }
    out[k] = v;
  }
}

/* The variance of a rule-based kind (docs/math.md's table), from the fans. */
static double psm_rule_variance(ps_init_kind k, double fan_in, double fan_out) {
  switch (k) {
  case PS_INIT_HE_NORMAL:
  case PS_INIT_HE_UNIFORM:
  case PS_INIT_HE_TRUNCATED_NORMAL:
    return 2.0 / fan_in;
  case PS_INIT_LECUN_NORMAL:
  case PS_INIT_LECUN_UNIFORM:
  case PS_INIT_LECUN_TRUNCATED_NORMAL:
    return 1.0 / fan_in;
  case PS_INIT_FAN_OUT_NORMAL:
  case PS_INIT_FAN_OUT_UNIFORM:
  case PS_INIT_FAN_OUT_TRUNCATED_NORMAL:
    return 1.0 / fan_out;
  case PS_INIT_GLOROT_NORMAL:
  case PS_INIT_GLOROT_UNIFORM:
  case PS_INIT_GLOROT_TRUNCATED_NORMAL:
    return 2.0 / (fan_in + fan_out);
  default:
    return 0.0;
  }
}

/* Which of the three shapes a kind draws from. */
typedef enum { PSM_D_NORMAL, PSM_D_UNIFORM, PSM_D_TRUNC } psm_dist;

static psm_dist psm_kind_dist(ps_init_kind k) {
  switch (k) {
  case PS_INIT_UNIFORM:
  case PS_INIT_HE_UNIFORM:
  case PS_INIT_LECUN_UNIFORM:
  case PS_INIT_FAN_OUT_UNIFORM:
  case PS_INIT_GLOROT_UNIFORM:
    return PSM_D_UNIFORM;
  case PS_INIT_TRUNCATED_NORMAL:
  case PS_INIT_HE_TRUNCATED_NORMAL:
  case PS_INIT_LECUN_TRUNCATED_NORMAL:
  case PS_INIT_FAN_OUT_TRUNCATED_NORMAL:
  case PS_INIT_GLOROT_TRUNCATED_NORMAL:
    return PSM_D_TRUNC;
  default:
    return PSM_D_NORMAL;
  }
}

/* Contract: see psmath.h. The spec's sigma is always the standard deviation
 * of the result, also for the plain truncated_normal kind (so the pre-cut
 * deviation is sigma / 0.8796...); uniform uses limit as L. */
void psm_init_fill(const ps_init_spec *s, const uint64_t *shape, int ndim,
                   uint64_t name_hash, uint64_t first, float *out,
                   uint64_t n) {
  if (s->kind == PS_INIT_ZEROS || s->kind == PS_INIT_CONSTANT) {
    const float v = s->kind == PS_INIT_ZEROS ? 0.0f : (float)s->value;
    for (uint64_t k = 0; k < n; k++) out[k] = v;
    return;
  }
  double sigma; /* standard deviation of the result; for uniform, L */
  psm_dist dist = psm_kind_dist(s->kind);
  if (s->kind == PS_INIT_UNIFORM) {
    sigma = s->limit;
  } else if (s->kind == PS_INIT_NORMAL || s->kind == PS_INIT_TRUNCATED_NORMAL) {
    sigma = s->sigma;
  } else {
    double fi, fo;
    psm_fans(s, shape, ndim, &fi, &fo);
    sigma = sqrt(psm_rule_variance(s->kind, fi, fo));
    if (dist == PSM_D_UNIFORM) sigma *= sqrt(3.0); /* L = sqrt(3) sigma */
  }
  const uint64_t key = psm_init_key(s->seed, name_hash);
  switch (dist) {
  case PSM_D_UNIFORM:
    psm_fill_uniform(key, sigma, first, out, n);
    break;
  case PSM_D_TRUNC:
    psm_fill_truncated(key, sigma / PSM_TRUNC_SD, first, out, n);
    break;
  case PSM_D_NORMAL:
    psm_fill_normal(key, sigma, first, out, n);
    break;
  }
}

/* Contract: see psmath.h. The row's stream is that of a rank-1 tensor whose
 * name hash mixes the table's with the key, so rows never share draws and
 * element j of row `key` depends on (seed, name, key, j) alone. */
void psm_row_init(const ps_init_spec *s, uint32_t dim, uint64_t name_hash, uint64_t key,
                  float *out) {
  const uint64_t shape[1] = {dim};
  uint64_t row_hash = psh_mix64(name_hash ^ psh_mix64(key + PSH_GOLDEN));
  psm_init_fill(s, shape, 1, row_hash, 0, out, dim);
}

/* ---- learning-rate schedules ---------------------------------------------- */

/* Contract: see psmath.h. t = 0 is treated as t = 1. Warmup (W = s->warmup
 * > 0): for t <= W, lr_t = lr * t / W, ignoring the schedule; for t > W the
 * schedule is evaluated at t itself (not at t - W), so the decay clock
 * counts the warmup updates too. A schedule that has already decayed by W
 * therefore steps down right after the warmup. */
double psm_lr_at(const ps_optim_spec *s, uint64_t t) {
  if (t == 0) t = 1;
  const double lr = s->lr;
  const double td = (double)t;
  if (s->warmup > 0 && t <= s->warmup) return lr * td / (double)s->warmup;
  switch (s->schedule) {
  case PS_SCHED_STEP:
    if (s->step_size == 0) return lr;
    return lr * pow(s->gamma, (double)(t / s->step_size));
  case PS_SCHED_EXPONENTIAL:
    return lr * pow(s->gamma, td);
  case PS_SCHED_INVERSE_TIME:
    return lr / (1.0 + s->decay * td);
  case PS_SCHED_INVERSE_SQRT:
    return lr / sqrt(td);
  case PS_SCHED_COSINE: {
    if (s->total_steps == 0) return lr;
    double tc = t < s->total_steps ? td : (double)s->total_steps;
    const double pi = 3.14159265358979323846;
    return s->lr_min +
           0.5 * (lr - s->lr_min) * (1.0 + cos(pi * tc / (double)s->total_steps));
  }
  case PS_SCHED_CONSTANT:
  default:
    return lr;
  }
}

/* ---- optimizers --------------------------------------------------------- */

unsigned psm_state_per_param(ps_optim_kind k) {
  switch (k) {
  case PS_OPT_MOMENTUM:
  case PS_OPT_RMSPROP:
  case PS_OPT_ADAGRAD:
    return 1;
  case PS_OPT_ADAM:
  case PS_OPT_ADAMW:
    return 2;
  case PS_OPT_SGD:
  default:
    return 0;
  }
}

/* Each kernel below is one pass, branch-free, over restrict pointers. The
 * gradient is always formed as gs*g + wd*w: with wd = 0 that is exactly
 * gs*g for finite w, and the extra multiply is free in a memory-bound loop,
 * so there is no separate no-decay variant. */

static uint32_t psm_k_sgd(float *restrict w, const float *restrict g, size_t n,
                      float gs, float wd, float lr) {
  PSM_LANES(mb);
  PSM_FOR(i, n, {
    float gi = gs * g[i] + wd * w[i];
    w[i] -= lr * gi;
    PSM_TRACK(mb, i, w[i]);
  });
  return psm_lanes_max(mb_l);
}

/* The notes' running average: v = b v + (1-b) g; w -= lr v. */
static uint32_t psm_k_momentum(float *restrict w, float *restrict v,
                           const float *restrict g, size_t n, float gs,
                           float wd, float lr, float b, float omb) {
  PSM_LANES(mb);
  PSM_FOR(i, n, {
    float gi = gs * g[i] + wd * w[i];
    float vi = b * v[i] + omb * gi;
    v[i] = vi;
    w[i] -= lr * vi;
    PSM_TRACK(mb, i, vi);
    PSM_TRACK(mb, i, w[i]);
  });
  return psm_lanes_max(mb_l);
}

/* Heavy ball (torch SGD, dampening 0): v = mu v + g; w -= lr v. */
static uint32_t psm_k_heavy(float *restrict w, float *restrict v,
                        const float *restrict g, size_t n, float gs, float wd,
                        float lr, float mu) {
  PSM_LANES(mb);
  PSM_FOR(i, n, {
    float gi = gs * g[i] + wd * w[i];
    float vi = mu * v[i] + gi;
    v[i] = vi;
    w[i] -= lr * vi;
    PSM_TRACK(mb, i, vi);
    PSM_TRACK(mb, i, w[i]);
  });
  return psm_lanes_max(mb_l);
}

/* Nesterov (torch SGD nesterov=True): v = mu v + g; w -= lr (g + mu v). */
static uint32_t psm_k_nesterov(float *restrict w, float *restrict v,
                           const float *restrict g, size_t n, float gs,
                           float wd, float lr, float mu) {
  PSM_LANES(mb);
  PSM_FOR(i, n, {
    float gi = gs * g[i] + wd * w[i];
    float vi = mu * v[i] + gi;
    v[i] = vi;
    w[i] -= lr * (gi + mu * vi);
    PSM_TRACK(mb, i, vi);
    PSM_TRACK(mb, i, w[i]);
  });
  return psm_lanes_max(mb_l);
}

/* RMSProp: u = b u + (1-b) g^2; w -= lr g / (sqrt(u) + eps). */
static uint32_t psm_k_rmsprop(float *restrict w, float *restrict u,
                          const float *restrict g, size_t n, float gs,
                          float wd, float lr, float b, float omb, float eps) {
  PSM_LANES(mb);
  PSM_FOR(i, n, {
    float gi = gs * g[i] + wd * w[i];
    float ui = b * u[i] + omb * gi * gi;
    u[i] = ui;
    w[i] -= lr * gi / (sqrtf(ui) + eps);
    PSM_TRACK(mb, i, ui);
    PSM_TRACK(mb, i, w[i]);
  });
  return psm_lanes_max(mb_l);
}

/* RMSProp with eps inside the root (the notes): w -= lr g / sqrt(u + eps). */
static uint32_t psm_k_rmsprop_in(float *restrict w, float *restrict u,
                             const float *restrict g, size_t n, float gs,
                             float wd, float lr, float b, float omb,
                             float eps) {
  PSM_LANES(mb);
  PSM_FOR(i, n, {
    float gi = gs * g[i] + wd * w[i];
    float ui = b * u[i] + omb * gi * gi;
    u[i] = ui;
    w[i] -= lr * gi / sqrtf(ui + eps);
    PSM_TRACK(mb, i, ui);
    PSM_TRACK(mb, i, w[i]);
  });
  return psm_lanes_max(mb_l);
}

/* Constants of one Adam/AdamW call, computed in double by the caller. */
typedef struct {
  float gs;    /* gradient scale (clipping) */
  float l2;    /* L2 weight decay added to g (adam); 0 for adamw */
  float keep;  /* adamw's decoupled decay factor 1 - lr*wd; 1 for adam */
  float b1, omb1, b2, omb2;
  float step;  /* lr / (1 - b1^t) */
  float rs;    /* 1 / sqrt(1 - b2^t): sqrt(vhat) = sqrt(v) * rs */
  float ibc2;  /* 1 / (1 - b2^t): vhat = v * ibc2 */
  float eps;
} psm_adam_c;

/* Adam as torch.optim.Adam: w -= (lr/bc1) m / (sqrt(v)/sqrt(bc2) + eps);
 * with keep != 1 it is AdamW (decay applied to w before the step). */
static uint32_t psm_k_adam(float *restrict w, float *restrict m,
                       float *restrict v, const float *restrict g, size_t n,
                       const psm_adam_c *c) {
  const float gs = c->gs, l2 = c->l2, keep = c->keep, b1 = c->b1,
              omb1 = c->omb1, b2 = c->b2, omb2 = c->omb2, step = c->step,
              rs = c->rs, eps = c->eps;
  PSM_LANES(mb);
  PSM_FOR(i, n, {
    float wi = w[i];
    float gi = gs * g[i] + l2 * wi;
    float mi = b1 * m[i] + omb1 * gi;
    float vi = b2 * v[i] + omb2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    w[i] = wi * keep - step * mi / (sqrtf(vi) * rs + eps);
    PSM_TRACK(mb, i, mi);
    PSM_TRACK(mb, i, vi);
    PSM_TRACK(mb, i, w[i]);
  });
  return psm_lanes_max(mb_l);
}

/* Adam with eps inside the root: w -= (lr/bc1) m / sqrt(v/bc2 + eps). */
static uint32_t psm_k_adam_in(float *restrict w, float *restrict m,
                          float *restrict v, const float *restrict g, size_t n,
                          const psm_adam_c *c) {
  const float gs = c->gs, l2 = c->l2, keep = c->keep, b1 = c->b1,
              omb1 = c->omb1, b2 = c->b2, omb2 = c->omb2, step = c->step,
              ibc2 = c->ibc2, eps = c->eps;
  PSM_LANES(mb);
  PSM_FOR(i, n, {
    float wi = w[i];
    float gi = gs * g[i] + l2 * wi;
    float mi = b1 * m[i] + omb1 * gi;
    float vi = b2 * v[i] + omb2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    w[i] = wi * keep - step * mi / sqrtf(vi * ibc2 + eps);
    PSM_TRACK(mb, i, mi);
    PSM_TRACK(mb, i, vi);
    PSM_TRACK(mb, i, w[i]);
  });
  return psm_lanes_max(mb_l);
}

/* Adagrad: s += g^2; w -= lr g / (sqrt(s) + eps). */
static uint32_t psm_k_adagrad(float *restrict w, float *restrict s,
                          const float *restrict g, size_t n, float gs,
                          float wd, float lr, float eps) {
  PSM_LANES(mb);
  PSM_FOR(i, n, {
    float gi = gs * g[i] + wd * w[i];
    float si = s[i] + gi * gi;
    s[i] = si;
    w[i] -= lr * gi / (sqrtf(si) + eps);
    PSM_TRACK(mb, i, si);
    PSM_TRACK(mb, i, w[i]);
  });
  return psm_lanes_max(mb_l);
}

/* none: the block holds the (averaged) gradient itself. */
static uint32_t psm_k_none(float *restrict w, const float *restrict g, size_t n, float gs) {
  PSM_LANES(mb);
  PSM_FOR(i, n, {
    w[i] = gs * g[i];
    PSM_TRACK(mb, i, w[i]);
  });
  return psm_lanes_max(mb_l);
}

/* Contract: see psmath.h. t = 0 is treated as t = 1 (the bias corrections
 * would divide by zero). eps_inside_sqrt applies to rmsprop, adam and adamw
 * (the Adam step of adamw); the other kinds have no such form. */
uint32_t psm_apply(const ps_optim_spec *s, uint64_t t, float *w, float *state,
                   const float *g, float gscale, uint64_t n) {
  return psm_apply_range(s, t, w, state, g, gscale, n, 0, n);
}

/* The kernel of s's kind over len elements with rate lr; for adam and adamw
 * c holds the call's constants (bias corrections of update tb included). */
static uint32_t psm_kernel(const ps_optim_spec *s, double lr, const psm_adam_c *c, float *w,
                           float *state, float *s2, const float *g, float gscale, size_t len) {
  const float flr = (float)lr, wd = (float)s->weight_decay;
  const float b1 = (float)s->beta1, omb1 = (float)(1.0 - s->beta1);
  const float eps = (float)s->eps;
  uint32_t mb = PSM_NONFINITE; /* an unknown kind (refused by psm_optim_validate) */
  switch (s->kind) {
  case PS_OPT_SGD:
    mb = psm_k_sgd(w, g, len, gscale, wd, flr);
    break;
  case PS_OPT_MOMENTUM:
    if (!s->heavy_ball)
      mb = psm_k_momentum(w, state, g, len, gscale, wd, flr, b1, omb1);
    else if (s->nesterov)
      mb = psm_k_nesterov(w, state, g, len, gscale, wd, flr, b1);
    else
      mb = psm_k_heavy(w, state, g, len, gscale, wd, flr, b1);
    break;
  case PS_OPT_RMSPROP:
    if (s->eps_inside_sqrt)
      mb = psm_k_rmsprop_in(w, state, g, len, gscale, wd, flr, b1, omb1, eps);
    else
      mb = psm_k_rmsprop(w, state, g, len, gscale, wd, flr, b1, omb1, eps);
    break;
  case PS_OPT_ADAM:
  case PS_OPT_ADAMW:
    if (s->eps_inside_sqrt)
      mb = psm_k_adam_in(w, state, s2, g, len, c);
    else
      mb = psm_k_adam(w, state, s2, g, len, c);
    break;
  case PS_OPT_ADAGRAD:
    mb = psm_k_adagrad(w, state, g, len, gscale, wd, flr, eps);
    break;
  case PS_OPT_NONE:
    mb = psm_k_none(w, g, len, gscale);
    break;
  default:
    break;
  }
  return mb;
}

/* Adam's and AdamW's constants for rate lr and bias-correction step tb. */
static psm_adam_c psm_adam_consts(const ps_optim_spec *s, double lr, uint64_t tb,
                                  float gscale) {
  const double bc1 = 1.0 - pow(s->beta1, (double)tb);
  const double bc2 = 1.0 - pow(s->beta2, (double)tb);
  const int decoupled = s->kind == PS_OPT_ADAMW;
  psm_adam_c c = {
      .gs = gscale,
      .l2 = decoupled ? 0.0f : (float)s->weight_decay,
      .keep = decoupled ? (float)(1.0 - lr * s->weight_decay) : 1.0f,
      .b1 = (float)s->beta1,
      .omb1 = (float)(1.0 - s->beta1),
      .b2 = (float)s->beta2,
      .omb2 = (float)(1.0 - s->beta2),
      .step = (float)(lr / bc1),
      .rs = (float)(1.0 / sqrt(bc2)),
      .ibc2 = (float)(1.0 / bc2),
      .eps = (float)s->eps,
  };
  return c;
}

/* The same from bias corrections already computed (psm_row_apply's memo). */
static psm_adam_c psm_adam_consts_cached(const ps_optim_spec *s, double lr, float gscale,
                                         float step, float rs, float ibc2) {
  const int decoupled = s->kind == PS_OPT_ADAMW;
  psm_adam_c c = {
      .gs = gscale,
      .l2 = decoupled ? 0.0f : (float)s->weight_decay,
      .keep = decoupled ? (float)(1.0 - lr * s->weight_decay) : 1.0f,
      .b1 = (float)s->beta1,
      .omb1 = (float)(1.0 - s->beta1),
      .b2 = (float)s->beta2,
      .omb2 = (float)(1.0 - s->beta2),
      .step = step,
      .rs = rs,
      .ibc2 = ibc2,
      .eps = (float)s->eps,
  };
  return c;
}

static int psm_is_adam(ps_optim_kind k) { return k == PS_OPT_ADAM || k == PS_OPT_ADAMW; }

uint32_t psm_apply_range(const ps_optim_spec *s, uint64_t t, float *w, float *state,
                         const float *g, float gscale, uint64_t n, uint64_t lo, uint64_t hi) {
  if (t == 0) t = 1;
  const size_t len = (size_t)(hi - lo);
  /* The state arrays stay n floats apart; this call sees [lo, hi) of each. */
  float *const s2 = state != NULL ? state + n + lo : NULL;
  w += lo;
  g += lo;
  if (state != NULL) state += lo;
  const double lr = psm_lr_at(s, t);
  psm_adam_c c = {0};
  if (psm_is_adam(s->kind)) c = psm_adam_consts(s, lr, t, gscale);
  return psm_kernel(s, lr, &c, w, state, s2, g, gscale, len);
}

/* ---- row-wise updates ------------------------------------------------------ */

void psm_row_begin(psm_row_ctx *x, const ps_optim_spec *s, uint64_t t) {
  x->s = s;
  x->lr = psm_lr_at(s, t == 0 ? 1 : t);
  memset(x->memo_t, 0, sizeof(x->memo_t));
}

uint32_t psm_row_apply(psm_row_ctx *x, uint64_t row_t, float *row, const float *g,
                       float gscale, uint32_t dim) {
  const ps_optim_spec *s = x->s;
  if (row_t == 0) row_t = 1;
  float *state = psm_state_per_param(s->kind) ? row + dim : NULL;
  float *s2 = state != NULL ? state + dim : NULL;
  psm_adam_c c = {0};
  if (psm_is_adam(s->kind)) {
    /* Only step, rs and ibc2 depend on the row's step; the rest is the
     * update's. Computed in double once per distinct step (pow is dear). */
    unsigned m = (unsigned)(row_t % PSM_ROW_MEMO);
    if (x->memo_t[m] != row_t) {
      psm_adam_c f = psm_adam_consts(s, x->lr, row_t, 1.0f);
      x->memo_t[m] = row_t;
      x->memo_step[m] = f.step;
      x->memo_rs[m] = f.rs;
      x->memo_ibc2[m] = f.ibc2;
    }
    c = psm_adam_consts_cached(s, x->lr, gscale, x->memo_step[m], x->memo_rs[m],
                               x->memo_ibc2[m]);
  }
  return psm_kernel(s, x->lr, &c, row, state, s2, g, gscale, dim);
}

/* Contract: see psmath.h. The summation order is fixed (so the result is
 * deterministic) but spread over independent accumulators that hide the
 * latency of the additions. A NaN or Inf element makes the sum NaN or Inf;
 * squares of finite floats cannot overflow a double. On x86-64 the
 * float-to-double widening is written with SSE2 intrinsics: GCC does not
 * vectorize it by itself, and the scalar loop is then compute-bound at a
 * third of memory bandwidth. */
#if defined(__SSE2__)
/* Widen four floats at p to doubles, square them and add them to lo, hi. */
#define PSM_SQ4(lo, hi, p)                                                    \
  do {                                                                        \
    __m128 f_ = _mm_loadu_ps(p);                                              \
    __m128d l_ = _mm_cvtps_pd(f_), h_ = _mm_cvtps_pd(_mm_movehl_ps(f_, f_));  \
    lo = _mm_add_pd(lo, _mm_mul_pd(l_, l_));                                  \
    hi = _mm_add_pd(hi, _mm_mul_pd(h_, h_));                                  \
  } while (0)

double psm_sumsq(const float *g, uint64_t n) {
  __m128d a0 = _mm_setzero_pd(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0,
          a6 = a0, a7 = a0;
  uint64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    PSM_SQ4(a0, a1, g + i);
    PSM_SQ4(a2, a3, g + i + 4);
    PSM_SQ4(a4, a5, g + i + 8);
    PSM_SQ4(a6, a7, g + i + 12);
  }
  __m128d a = _mm_add_pd(_mm_add_pd(_mm_add_pd(a0, a1), _mm_add_pd(a2, a3)),
                         _mm_add_pd(_mm_add_pd(a4, a5), _mm_add_pd(a6, a7)));
  double lanes[2];
  _mm_storeu_pd(lanes, a);
  double sum = lanes[0] + lanes[1];
  for (; i < n; i++) {
    double x = (double)g[i];
    sum += x * x;
  }
  return sum;
}
#else
double psm_sumsq(const float *g, uint64_t n) {
  double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  uint64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    double x0 = g[i], x1 = g[i + 1], x2 = g[i + 2], x3 = g[i + 3];
    a0 += x0 * x0;
    a1 += x1 * x1;
    a2 += x2 * x2;
    a3 += x3 * x3;
  }
  double sum = (a0 + a1) + (a2 + a3);
  for (; i < n; i++) {
    double x = (double)g[i];
    sum += x * x;
  }
  return sum;
}
#endif

/* Contract: see psmath.h. An element is NaN or Inf exactly when its
 * exponent bits are all ones; that is tested with integer operations
 * (and, compare, or), four elements per instruction on x86-64. */
#if defined(__SSE2__)
/* acc |= all-ones in each lane of the four floats f whose exponent bits are
 * all ones (NaN or Inf); e holds the exponent mask. */
#define PSM_BAD4(acc, f, e) \
  acc = _mm_or_si128(acc, _mm_cmpeq_epi32(_mm_and_si128(_mm_castps_si128(f), e), e))
#endif

int psm_all_finite(const float *g, uint64_t n) {
  uint64_t i = 0;
  uint32_t bad = 0;
#if defined(__SSE2__)
  const __m128i e = _mm_set1_epi32(0x7f800000);
  __m128i a0 = _mm_setzero_si128(), a1 = a0, a2 = a0, a3 = a0;
  for (; i + 16 <= n; i += 16) {
    PSM_BAD4(a0, _mm_loadu_ps(g + i), e);
    PSM_BAD4(a1, _mm_loadu_ps(g + i + 4), e);
    PSM_BAD4(a2, _mm_loadu_ps(g + i + 8), e);
    PSM_BAD4(a3, _mm_loadu_ps(g + i + 12), e);
  }
  __m128i a = _mm_or_si128(_mm_or_si128(a0, a1), _mm_or_si128(a2, a3));
  bad = (uint32_t)_mm_movemask_epi8(a);
#endif
  for (; i < n; i++) {
    uint32_t b;
    memcpy(&b, g + i, sizeof(b));
    bad |= (b & 0x7f800000u) == 0x7f800000u;
  }
  return bad == 0;
}

/* Contract: see psmath.h. The same test as psm_all_finite, on the values as
 * they are stored. */
int psm_copy_finite(float *restrict dst, const float *restrict src, uint64_t n) {
  uint64_t i = 0;
  uint32_t bad = 0;
#if defined(__SSE2__)
  const __m128i e = _mm_set1_epi32(0x7f800000);
  __m128i a0 = _mm_setzero_si128(), a1 = a0, a2 = a0, a3 = a0;
  for (; i + 16 <= n; i += 16) {
    __m128 f0 = _mm_loadu_ps(src + i), f1 = _mm_loadu_ps(src + i + 4);
    __m128 f2 = _mm_loadu_ps(src + i + 8), f3 = _mm_loadu_ps(src + i + 12);
    _mm_storeu_ps(dst + i, f0);
    _mm_storeu_ps(dst + i + 4, f1);
    _mm_storeu_ps(dst + i + 8, f2);
    _mm_storeu_ps(dst + i + 12, f3);
    PSM_BAD4(a0, f0, e);
    PSM_BAD4(a1, f1, e);
    PSM_BAD4(a2, f2, e);
    PSM_BAD4(a3, f3, e);
  }
  __m128i a = _mm_or_si128(_mm_or_si128(a0, a1), _mm_or_si128(a2, a3));
  bad = (uint32_t)_mm_movemask_epi8(a);
#endif
  for (; i < n; i++) {
    uint32_t b;
    /* src may be misaligned (values in a receive buffer, behind a frame of
     * any length): read it bytewise, as the vector loop does. */
    memcpy(dst + i, (const char *)src + i * sizeof(float), sizeof(float));
    memcpy(&b, dst + i, sizeof(b));
    bad |= (b & 0x7f800000u) == 0x7f800000u;
  }
  return bad == 0;
}

/* Contract: see psmath.h. With the sign bit cleared, a float's bits are a
 * non-negative int32 ordered as its magnitude (Inf above every finite
 * value, NaN above Inf), so a signed integer maximum finds the largest
 * magnitude; SSE2 has no 32-bit max, so it is a compare and a select. */
#if defined(__SSE2__)
#define PSM_MAX4(acc, f, m)                                                   \
  do {                                                                        \
    __m128i v_ = _mm_and_si128(_mm_castps_si128(f), m);                       \
    __m128i gt_ = _mm_cmpgt_epi32(v_, acc);                                   \
    acc = _mm_or_si128(_mm_and_si128(gt_, v_), _mm_andnot_si128(gt_, acc));   \
  } while (0)

static uint32_t psm_max_lanes(__m128i a0, __m128i a1, __m128i a2, __m128i a3) {
  uint32_t l[16], m = 0;
  _mm_storeu_si128((__m128i *)l, a0);
  _mm_storeu_si128((__m128i *)(l + 4), a1);
  _mm_storeu_si128((__m128i *)(l + 8), a2);
  _mm_storeu_si128((__m128i *)(l + 12), a3);
  for (int i = 0; i < 16; i++)
    if (l[i] > m) m = l[i];
  return m;
}
#endif

uint32_t psm_absmax_bits(const float *x, uint64_t n) {
  uint64_t i = 0;
  uint32_t m = 0;
#if defined(__SSE2__)
  const __m128i mask = _mm_set1_epi32(0x7fffffff);
  __m128i a0 = _mm_setzero_si128(), a1 = a0, a2 = a0, a3 = a0;
  for (; i + 16 <= n; i += 16) {
    PSM_MAX4(a0, _mm_loadu_ps(x + i), mask);
    PSM_MAX4(a1, _mm_loadu_ps(x + i + 4), mask);
    PSM_MAX4(a2, _mm_loadu_ps(x + i + 8), mask);
    PSM_MAX4(a3, _mm_loadu_ps(x + i + 12), mask);
  }
  m = psm_max_lanes(a0, a1, a2, a3);
#endif
  for (; i < n; i++) {
    uint32_t b;
    memcpy(&b, x + i, sizeof(b));
    b &= 0x7fffffffu;
    if (b > m) m = b;
  }
  return m;
}

uint32_t psm_copy_absmax_bits(float *restrict dst, const float *restrict src, uint64_t n) {
  uint64_t i = 0;
  uint32_t m = 0;
#if defined(__SSE2__)
  const __m128i mask = _mm_set1_epi32(0x7fffffff);
  __m128i a0 = _mm_setzero_si128(), a1 = a0, a2 = a0, a3 = a0;
  for (; i + 16 <= n; i += 16) {
    __m128 f0 = _mm_loadu_ps(src + i), f1 = _mm_loadu_ps(src + i + 4);
    __m128 f2 = _mm_loadu_ps(src + i + 8), f3 = _mm_loadu_ps(src + i + 12);
    _mm_storeu_ps(dst + i, f0);
    _mm_storeu_ps(dst + i + 4, f1);
    _mm_storeu_ps(dst + i + 8, f2);
    _mm_storeu_ps(dst + i + 12, f3);
    PSM_MAX4(a0, f0, mask);
    PSM_MAX4(a1, f1, mask);
    PSM_MAX4(a2, f2, mask);
    PSM_MAX4(a3, f3, mask);
  }
  m = psm_max_lanes(a0, a1, a2, a3);
#endif
  for (; i < n; i++) {
    uint32_t b;
    /* src may be misaligned (values in a receive buffer, behind a frame of
     * any length): read it bytewise, as the vector loop does. */
    memcpy(dst + i, (const char *)src + i * sizeof(float), sizeof(float));
    memcpy(&b, dst + i, sizeof(b));
    b &= 0x7fffffffu;
    if (b > m) m = b;
  }
  return m;
}

float psm_bits_float(uint32_t bits) {
  float f;
  memcpy(&f, &bits, sizeof(f));
  return f;
}
