/*
 * spec.c -- tensor specs: names, defaults, validation and comparison.
 *
 * Defaults: the lecture notes' Adam numbers, PyTorch's elsewhere. The
 * defaults, the valid ranges and the reasons for both are written out in
 * docs/math.md; each choice is also noted next to the code that makes it.
 */
#include "numfmt.h"
#include "psmath.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- names -------------------------------------------------------------- */

static const char *const psm_init_names[PS_INIT_COUNT_] = {
    [PS_INIT_ZEROS] = "zeros",
    [PS_INIT_CONSTANT] = "constant",
    [PS_INIT_UNIFORM] = "uniform",
    [PS_INIT_NORMAL] = "normal",
    [PS_INIT_TRUNCATED_NORMAL] = "truncated_normal",
    [PS_INIT_HE_NORMAL] = "he_normal",
    [PS_INIT_HE_UNIFORM] = "he_uniform",
    [PS_INIT_HE_TRUNCATED_NORMAL] = "he_truncated_normal",
    [PS_INIT_LECUN_NORMAL] = "lecun_normal",
    [PS_INIT_LECUN_UNIFORM] = "lecun_uniform",
    [PS_INIT_LECUN_TRUNCATED_NORMAL] = "lecun_truncated_normal",
    [PS_INIT_FAN_OUT_NORMAL] = "fan_out_normal",
    [PS_INIT_FAN_OUT_UNIFORM] = "fan_out_uniform",
    [PS_INIT_FAN_OUT_TRUNCATED_NORMAL] = "fan_out_truncated_normal",
    [PS_INIT_GLOROT_NORMAL] = "glorot_normal",
    [PS_INIT_GLOROT_UNIFORM] = "glorot_uniform",
    [PS_INIT_GLOROT_TRUNCATED_NORMAL] = "glorot_truncated_normal",
};

static const char *const psm_optim_names[PS_OPT_COUNT_] = {
    [PS_OPT_SGD] = "sgd",         [PS_OPT_MOMENTUM] = "momentum",
    [PS_OPT_RMSPROP] = "rmsprop", [PS_OPT_ADAM] = "adam",
    [PS_OPT_ADAMW] = "adamw",     [PS_OPT_ADAGRAD] = "adagrad",
    [PS_OPT_NONE] = "none",
};

static const char *const psm_schedule_names[PS_SCHED_COUNT_] = {
    [PS_SCHED_CONSTANT] = "constant",
    [PS_SCHED_STEP] = "step",
    [PS_SCHED_EXPONENTIAL] = "exponential",
    [PS_SCHED_INVERSE_TIME] = "inverse_time",
    [PS_SCHED_INVERSE_SQRT] = "inverse_sqrt",
    [PS_SCHED_COSINE] = "cosine",
};

/* Out-of-range kinds get "unknown" rather than NULL so that a caller can
 * always print the result. */
const char *ps_init_name(ps_init_kind k) {
  return (unsigned)k < PS_INIT_COUNT_ ? psm_init_names[k] : "unknown";
}

const char *ps_optim_name(ps_optim_kind k) {
  return (unsigned)k < PS_OPT_COUNT_ ? psm_optim_names[k] : "unknown";
}

const char *ps_schedule_name(ps_schedule_kind k) {
  return (unsigned)k < PS_SCHED_COUNT_ ? psm_schedule_names[k] : "unknown";
}

/* Exact, case-sensitive match against a table: the wire names are the only
 * spelling, so that a spec prints and parses the same everywhere. */
static int psm_lookup(const char *const *table, int count, const char *name) {
  if (name == NULL) return -1;
  for (int k = 0; k < count; k++)
    if (strcmp(table[k], name) == 0) return k;
  return -1;
}

int ps_init_from_name(const char *name, ps_init_kind *out) {
  int k = psm_lookup(psm_init_names, PS_INIT_COUNT_, name);
  if (k < 0 || out == NULL) return PS_EINVAL;
  *out = (ps_init_kind)k;
  return 0;
}

int ps_optim_from_name(const char *name, ps_optim_kind *out) {
  int k = psm_lookup(psm_optim_names, PS_OPT_COUNT_, name);
  if (k < 0 || out == NULL) return PS_EINVAL;
  *out = (ps_optim_kind)k;
  return 0;
}

int ps_schedule_from_name(const char *name, ps_schedule_kind *out) {
  int k = psm_lookup(psm_schedule_names, PS_SCHED_COUNT_, name);
  if (k < 0 || out == NULL) return PS_EINVAL;
  *out = (ps_schedule_kind)k;
  return 0;
}

/* ---- defaults ----------------------------------------------------------- */

/* Contract: see psmath.h. Fields an optimizer does not use stay 0, so two
 * specs of the same kind compare equal field by field. The schedule fields
 * are filled for every kind: constant schedule; gamma 0.1 (torch StepLR's
 * default); step_size 1000; decay 0, total_steps 0 (cosine needs an
 * explicit total_steps; validation says so), lr_min 0, warmup 0. */
void psm_optim_defaults(ps_optim_spec *o, ps_optim_kind kind) {
  memset(o, 0, sizeof *o);
  o->kind = kind;
  o->schedule = PS_SCHED_CONSTANT;
  o->gamma = 0.1;
  o->step_size = 1000;
  switch (kind) {
  case PS_OPT_MOMENTUM:
    o->lr = 0.01;
    o->beta1 = 0.9;
    break;
  case PS_OPT_RMSPROP:
    o->lr = 0.01;
    o->beta1 = 0.99;
    o->eps = 1e-8;
    break;
  case PS_OPT_ADAM:
  case PS_OPT_ADAMW:
    o->lr = 0.001;
    o->beta1 = 0.9;
    o->beta2 = 0.999;
    o->eps = 1e-8;
    if (kind == PS_OPT_ADAMW) o->weight_decay = 0.01; /* torch AdamW */
    break;
  case PS_OPT_ADAGRAD:
    o->lr = 0.01;
    o->eps = 1e-10;
    break;
  case PS_OPT_NONE:
    break; /* no learning rate: the shard only averages */
  case PS_OPT_SGD:
  default:
    o->lr = 0.01;
    break;
  }
}

void psm_init_defaults(ps_init_spec *i, ps_init_kind kind) {
  memset(i, 0, sizeof *i);
  i->kind = kind;
  if (kind == PS_INIT_NORMAL || kind == PS_INIT_TRUNCATED_NORMAL)
    i->sigma = 0.01;
  if (kind == PS_INIT_UNIFORM) i->limit = 0.05;
}

/* block_size 0 means "the server's default" (262144 today), so a spec made
 * here stays valid if the server's default changes. */
void ps_tensor_spec_init(ps_tensor_spec *spec, ps_init_kind init,
                         ps_optim_kind optim) {
  memset(spec, 0, sizeof *spec);
  psm_init_defaults(&spec->init, init);
  psm_optim_defaults(&spec->optim, optim);
  spec->block_size = 0;
}

void ps_table_spec_init(ps_table_spec *s, ps_init_kind init, ps_optim_kind optim) {
  memset(s, 0, sizeof *s);
  psm_init_defaults(&s->init, init);
  psm_optim_defaults(&s->optim, optim);
  s->max_rows = 0;
  s->evict = PS_EVICT_NONE;
}

static const char *const psm_evict_names[PS_EVICT_COUNT_] = {
    [PS_EVICT_NONE] = "none", [PS_EVICT_LRU] = "lru", [PS_EVICT_LFU] = "lfu"};

const char *ps_evict_name(ps_evict_kind k) {
  return (unsigned)k < PS_EVICT_COUNT_ ? psm_evict_names[k] : "unknown";
}

int ps_evict_from_name(const char *name, ps_evict_kind *out) {
  int k = psm_lookup(psm_evict_names, PS_EVICT_COUNT_, name);
  if (k < 0 || out == NULL) return PS_EINVAL;
  *out = (ps_evict_kind)k;
  return 0;
}

/* ---- validation --------------------------------------------------------- */

/* Write a formatted sentence into err (if any) and return -1. */
__attribute__((format(printf, 3, 4))) static int
psm_fail(char *err, size_t errlen, const char *fmt, ...) {
  if (err != NULL && errlen > 0) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
  }
  return -1;
}

/* x must be finite and within the interval from lo to hi; lo_open and
 * hi_open make an end exclusive. what names the field ("optimizer lr"), for
 * adds the kind that uses it (" for adam", or ""). The sentence reads
 * "optimizer lr must be in (0, 1000] (got 1e+308)". */
static int psm_range(char *err, size_t errlen, const char *what, const char *for_,
                     double x, double lo, int lo_open, double hi, int hi_open) {
  if (isfinite(x) && (lo_open ? x > lo : x >= lo) && (hi_open ? x < hi : x <= hi)) return 0;
  return psm_fail(err, errlen, "%s must be in %c%s, %s%c%s (got %s)", what, lo_open ? '(' : '[',
                  psn_num(lo).s, psn_num(hi).s, hi_open ? ')' : ']', for_, psn_num(x).s);
}

/* A field the chosen kind does not use must still be finite: a NaN would
 * make two specs that print the same compare different, and a later change
 * of kind would start from garbage. */
static int psm_finite(char *err, size_t errlen, const char *what, const char *user,
                      double x) {
  if (isfinite(x)) return 0;
  return psm_fail(err, errlen, "%s must be finite, even though %s does not use it (got %s)",
                  what, user, psn_num(x).s);
}

/* Contract: see psmath.h. The ranges and the reasons for them are in
 * docs/math.md ("Valid ranges"): sigma and limit in [1e-30, 1e3] (a smaller
 * scale rounds every float32 draw to 0 or a subnormal, the symmetry problem
 * again; a larger one is no weight scale, and past float32's range the
 * values would be Inf), a constant value in [-1e3, 1e3]. */
int psm_init_validate(const ps_init_spec *s, const uint64_t *shape, int ndim,
                      char *err, size_t errlen) {
  if ((unsigned)s->kind >= PS_INIT_COUNT_)
    return psm_fail(err, errlen, "unknown init kind %d (known: 0 to %d)", (int)s->kind,
                    PS_INIT_COUNT_ - 1);
  if (ndim < 1 || shape == NULL)
    return psm_fail(err, errlen,
                    "a tensor needs at least one dimension (got rank %d)",
                    ndim);
  uint64_t numel = 1;
  for (int d = 0; d < ndim; d++) {
    if (shape[d] == 0)
      return psm_fail(err, errlen,
                      "dimension %d of the shape is 0; every dimension must "
                      "be at least 1",
                      d);
    if (numel > UINT64_MAX / shape[d])
      return psm_fail(err, errlen,
                      "the shape's element count overflows 64 bits");
    numel *= shape[d];
  }
  const char *name = ps_init_name(s->kind);
  char for_[48];
  snprintf(for_, sizeof for_, " for %s", name);
  switch (s->kind) {
  case PS_INIT_CONSTANT:
    if (psm_range(err, errlen, "init value", for_, s->value, -PSM_VALUE_MAX, 0, PSM_VALUE_MAX,
                  0))
      return -1;
    break;
  case PS_INIT_UNIFORM:
    if (psm_range(err, errlen, "init limit", for_, s->limit, PSM_SCALE_MIN, 0, PSM_SCALE_MAX, 0))
      return -1;
    break;
  case PS_INIT_NORMAL:
  case PS_INIT_TRUNCATED_NORMAL:
    if (psm_range(err, errlen, "init sigma", for_, s->sigma, PSM_SCALE_MIN, 0, PSM_SCALE_MAX, 0))
      return -1;
    break;
  default:
    break;
  }
  if (psm_finite(err, errlen, "init sigma", name, s->sigma) ||
      psm_finite(err, errlen, "init limit", name, s->limit) ||
      psm_finite(err, errlen, "init value", name, s->value))
    return -1;
  switch (s->kind) {
  case PS_INIT_ZEROS:
  case PS_INIT_CONSTANT:
    if (ndim >= 2 && !s->allow_symmetric)
      return psm_fail(
          err, errlen,
          "%s on a rank-%d tensor would leave every unit identical: units "
          "that start equal get equal gradients and stay equal (the "
          "symmetry problem); use a random initializer such as he_normal, "
          "or set allow_symmetric if this is really wanted",
          name, ndim);
    return 0;
  case PS_INIT_UNIFORM:
  case PS_INIT_NORMAL:
  case PS_INIT_TRUNCATED_NORMAL:
    return 0;
  default: {
    /* The variance rules: the fans they use must be positive. Shapes with
     * no zero dimension give positive fans, so only overrides can fail
     * here, but the check is cheap and keeps psm_init_fill safe. Fans of
     * at least 1 give a variance of at most 2, so the rules need no other
     * bound. */
    double fi, fo;
    psm_fans(s, shape, ndim, &fi, &fo);
    if (!(fi > 0) || !(fo > 0))
      return psm_fail(err, errlen,
                      "%s needs fan_in and fan_out > 0 (got %s and %s)",
                      name, psn_num(fi).s, psn_num(fo).s);
    return 0;
  }
  }
}

/* none applies no update: the shard stores the averaged gradient as it is.
 * What would shape an update (a learning rate, its schedule and warmup,
 * weight decay, the momentum and epsilon flags) belongs to the trainer's
 * own optimizer; given here it would say something the shard does not do,
 * so it is refused. clip_norm still applies (each pushed gradient is
 * clipped before it is averaged); unused doubles must be finite. */
static int psm_none_validate(const ps_optim_spec *s, char *err, size_t errlen) {
  static const char why[] =
      ": none applies no update, it returns the averaged gradient to the trainer, whose own "
      "optimizer has the learning rate";
  if (s->lr != 0 || s->weight_decay != 0)
    return psm_fail(err, errlen, "optimizer %s must be 0 for none (got %s)%s",
                    s->lr != 0 ? "lr" : "weight_decay",
                    psn_num(s->lr != 0 ? s->lr : s->weight_decay).s, why);
  if (s->schedule != PS_SCHED_CONSTANT || s->warmup != 0)
    return psm_fail(err, errlen, "optimizer %s for none (got %s)%s",
                    s->warmup != 0 ? "warmup must be 0" : "schedule must be constant",
                    s->warmup != 0 ? "a warmup" : ps_schedule_name(s->schedule), why);
  if (s->heavy_ball || s->nesterov || s->eps_inside_sqrt)
    return psm_fail(err, errlen, "%s applies to no update of none%s",
                    s->heavy_ball ? "heavy_ball" : s->nesterov ? "nesterov" : "eps_inside_sqrt",
                    why);
  if (psm_range(err, errlen, "optimizer clip_norm", " for none", s->clip_norm, 0, 0, HUGE_VAL,
                1))
    return -1;
  const struct {
    const char *name;
    double v;
  } all[] = {{"optimizer beta1", s->beta1}, {"optimizer beta2", s->beta2},
             {"optimizer eps", s->eps},     {"optimizer gamma", s->gamma},
             {"optimizer decay", s->decay}, {"optimizer lr_min", s->lr_min}};
  for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
    if (psm_finite(err, errlen, all[k].name, "none", all[k].v)) return -1;
  return 0;
}

/* Contract: see psmath.h; docs/math.md ("Valid ranges") gives the reasons.
 * Besides the ranges, flags that have no meaning for the chosen kind are
 * refused rather than ignored, so that a spec never says something the
 * server does not do: heavy_ball and nesterov only with momentum (nesterov
 * also needs heavy_ball, as torch requires momentum > 0 and dampening 0),
 * eps_inside_sqrt only with rmsprop, adam and adamw.
 *
 * No schedule ever gives a learning rate above lr (warmup rises to it, every
 * decay starts from it and only falls), so bounds stated on lr hold for
 * every update. */
int psm_optim_validate(const ps_optim_spec *s, char *err, size_t errlen) {
  if ((unsigned)s->kind >= PS_OPT_COUNT_)
    return psm_fail(err, errlen, "unknown optimizer kind %d (known: 0 to %d)", (int)s->kind,
                    PS_OPT_COUNT_ - 1);
  if ((unsigned)s->schedule >= PS_SCHED_COUNT_)
    return psm_fail(err, errlen, "unknown schedule %d (known: 0 to %d)", (int)s->schedule,
                    PS_SCHED_COUNT_ - 1);
  if (s->kind == PS_OPT_NONE) return psm_none_validate(s, err, errlen);
  const char *name = ps_optim_name(s->kind);
  const char *sched = ps_schedule_name(s->schedule);
  char for_[48];
  snprintf(for_, sizeof for_, " for %s", name);
  if (psm_range(err, errlen, "optimizer lr", "", s->lr, 0, 1, PSM_LR_MAX, 0) ||
      psm_range(err, errlen, "optimizer weight_decay", "", s->weight_decay, 0, 0, PSM_WD_MAX, 0) ||
      psm_range(err, errlen, "optimizer clip_norm", "", s->clip_norm, 0, 0, HUGE_VAL, 1))
    return -1;
  /* In sgd and adamw the decay alone multiplies w by 1 - lr*wd each update:
   * past 1 the weights would flip sign every update, past 2 grow without
   * bound. One rule for every kind (the others are stable under it too). */
  if (s->lr * s->weight_decay > 1)
    return psm_fail(err, errlen,
                    "optimizer lr * weight_decay must be at most 1 (got lr %s * weight_decay %s "
                    "= %s): the decay step lr * weight_decay * w would be larger than w itself",
                    psn_num(s->lr).s, psn_num(s->weight_decay).s,
                    psn_num(s->lr * s->weight_decay).s);
  int uses_beta1 = s->kind != PS_OPT_SGD && s->kind != PS_OPT_ADAGRAD;
  int uses_beta2 = s->kind == PS_OPT_ADAM || s->kind == PS_OPT_ADAMW;
  int uses_eps = s->kind == PS_OPT_RMSPROP || uses_beta2 ||
                 s->kind == PS_OPT_ADAGRAD;
  if (uses_beta1 && psm_range(err, errlen, "optimizer beta1", for_, s->beta1, 0, 0, 1, 1))
    return -1;
  if (uses_beta2 && psm_range(err, errlen, "optimizer beta2", for_, s->beta2, 0, 0, 1, 1))
    return -1;
  if (uses_eps &&
      psm_range(err, errlen, "optimizer eps", for_, s->eps, PSM_EPS_MIN, 0, PSM_EPS_MAX, 0))
    return -1;
  if (s->heavy_ball && s->kind != PS_OPT_MOMENTUM)
    return psm_fail(err, errlen,
                    "heavy_ball applies to the momentum optimizer only, not %s",
                    name);
  if (s->nesterov && !(s->kind == PS_OPT_MOMENTUM && s->heavy_ball))
    return psm_fail(err, errlen,
                    "nesterov needs the momentum optimizer with heavy_ball set");
  if (s->eps_inside_sqrt && !(s->kind == PS_OPT_RMSPROP || uses_beta2))
    return psm_fail(err, errlen,
                    "eps_inside_sqrt applies to rmsprop, adam and adamw only, "
                    "not %s",
                    name);
  char sfor[48];
  snprintf(sfor, sizeof sfor, " for the %s schedule", sched);
  switch (s->schedule) {
  case PS_SCHED_STEP:
    if (s->step_size == 0)
      return psm_fail(err, errlen,
                      "optimizer step_size must be at least 1 for the step schedule (got 0)");
    __attribute__((fallthrough));
  case PS_SCHED_EXPONENTIAL:
    /* gamma > 1 would make the rate grow without bound. */
    if (psm_range(err, errlen, "optimizer gamma", sfor, s->gamma, 0, 1, 1, 0)) return -1;
    break;
  case PS_SCHED_INVERSE_TIME:
    if (psm_range(err, errlen, "optimizer decay", sfor, s->decay, 0, 0, HUGE_VAL, 1)) return -1;
    break;
  case PS_SCHED_COSINE:
    if (s->total_steps == 0)
      return psm_fail(err, errlen,
                      "optimizer total_steps must be at least 1 for the cosine schedule "
                      "(got 0)");
    if (!(s->lr_min >= 0 && s->lr_min <= s->lr))
      return psm_fail(err, errlen,
                      "optimizer lr_min must be in [0, lr] = [0, %s] for the cosine schedule "
                      "(got %s)",
                      psn_num(s->lr).s, psn_num(s->lr_min).s);
    if (s->warmup >= s->total_steps)
      return psm_fail(err, errlen,
                      "optimizer warmup must be less than total_steps (%" PRIu64
                      ") for the cosine schedule (got %" PRIu64
                      "): the cosine would be over before the warmup ends",
                      s->total_steps, s->warmup);
    break;
  case PS_SCHED_CONSTANT:
  case PS_SCHED_INVERSE_SQRT:
  default:
    break;
  }
  /* Whatever the kind and schedule do not use must still be finite. */
  char users[64];
  snprintf(users, sizeof users, "%s with the %s schedule", name, sched);
  const struct {
    const char *name;
    double v;
  } all[] = {{"optimizer beta1", s->beta1}, {"optimizer beta2", s->beta2},
             {"optimizer eps", s->eps},     {"optimizer gamma", s->gamma},
             {"optimizer decay", s->decay}, {"optimizer lr_min", s->lr_min}};
  for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
    if (psm_finite(err, errlen, all[k].name, users, all[k].v)) return -1;
  return 0;
}

/* Contract: see psmath.h. A none tensor holds averaged gradients, not
 * weights: units that start equal are no symmetry problem there, so zeros
 * and constant inits need no allow_symmetric. */
int psm_spec_validate(const ps_tensor_spec *s, const uint64_t *shape, int ndim, char *err,
                      size_t errlen) {
  ps_init_spec init = s->init;
  if (s->optim.kind == PS_OPT_NONE) init.allow_symmetric = 1;
  if (psm_init_validate(&init, shape, ndim, err, errlen) != 0) return -1;
  return psm_optim_validate(&s->optim, err, errlen);
}

/* ---- comparison --------------------------------------------------------- */

/* An appender over a fixed buffer: keeps the text NUL-terminated and cuts
 * it (rather than overflowing) when the buffer is too small. */
typedef struct {
  char *buf;
  size_t len, cap;
  int diffs;
} psm_diff;

__attribute__((format(printf, 2, 3))) static void
psm_diff_add(psm_diff *d, const char *fmt, ...) {
  char item[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(item, sizeof item, fmt, ap);
  va_end(ap);
  if (d->buf != NULL && d->cap > 0) {
    int n = snprintf(d->buf + d->len, d->cap - d->len, "%s%s",
                     d->diffs ? "; " : "", item);
    if (n > 0) d->len += (size_t)n < d->cap - d->len ? (size_t)n : d->cap - d->len - 1;
  }
  d->diffs++;
}

/* Doubles are compared bit for bit: 0 and -0 fill different bits into a
 * constant tensor, and validation keeps NaN out. */
static void psm_diff_d(psm_diff *d, const char *what, double a, double b) {
  if (memcmp(&a, &b, sizeof a) != 0)
    psm_diff_add(d, "%s: %s vs %s", what, psn_num(a).s, psn_num(b).s);
}

static void psm_diff_u(psm_diff *d, const char *what, uint64_t a,
                       uint64_t b) {
  if (a != b) psm_diff_add(d, "%s: %" PRIu64 " vs %" PRIu64, what, a, b);
}

/* Flags are compared as booleans: 1 and 2 both mean "on". */
static void psm_diff_f(psm_diff *d, const char *what, int a, int b) {
  if (!a != !b) psm_diff_add(d, "%s: %d vs %d", what, !!a, !!b);
}

/* Contract: see psmath.h. Every differing field is listed, in declaration
 * order, separated by "; ", e.g. "init kind: he_normal vs glorot_uniform;
 * optimizer lr: 0.001 vs 0.01". */
int psm_spec_diff(const ps_tensor_spec *a, const ps_tensor_spec *b, char *out,
                  size_t outlen) {
  psm_diff d = {.buf = out, .len = 0, .cap = outlen, .diffs = 0};
  if (out != NULL && outlen > 0) out[0] = '\0';
  const ps_init_spec *ia = &a->init, *ib = &b->init;
  if (ia->kind != ib->kind)
    psm_diff_add(&d, "init kind: %s vs %s", ps_init_name(ia->kind),
                 ps_init_name(ib->kind));
  psm_diff_u(&d, "init seed", ia->seed, ib->seed);
  psm_diff_d(&d, "init sigma", ia->sigma, ib->sigma);
  psm_diff_d(&d, "init limit", ia->limit, ib->limit);
  psm_diff_d(&d, "init value", ia->value, ib->value);
  psm_diff_u(&d, "init fan_in", ia->fan_in, ib->fan_in);
  psm_diff_u(&d, "init fan_out", ia->fan_out, ib->fan_out);
  psm_diff_f(&d, "init fan_in_includes_bias", ia->fan_in_includes_bias,
             ib->fan_in_includes_bias);
  psm_diff_f(&d, "init allow_symmetric", ia->allow_symmetric,
             ib->allow_symmetric);
  const ps_optim_spec *oa = &a->optim, *ob = &b->optim;
  if (oa->kind != ob->kind)
    psm_diff_add(&d, "optimizer kind: %s vs %s", ps_optim_name(oa->kind),
                 ps_optim_name(ob->kind));
  psm_diff_d(&d, "optimizer lr", oa->lr, ob->lr);
  psm_diff_d(&d, "optimizer beta1", oa->beta1, ob->beta1);
  psm_diff_d(&d, "optimizer beta2", oa->beta2, ob->beta2);
  psm_diff_d(&d, "optimizer eps", oa->eps, ob->eps);
  psm_diff_d(&d, "optimizer weight_decay", oa->weight_decay, ob->weight_decay);
  psm_diff_f(&d, "optimizer heavy_ball", oa->heavy_ball, ob->heavy_ball);
  psm_diff_f(&d, "optimizer nesterov", oa->nesterov, ob->nesterov);
  psm_diff_f(&d, "optimizer eps_inside_sqrt", oa->eps_inside_sqrt,
             ob->eps_inside_sqrt);
  psm_diff_d(&d, "optimizer clip_norm", oa->clip_norm, ob->clip_norm);
  if (oa->schedule != ob->schedule)
    psm_diff_add(&d, "optimizer schedule: %s vs %s",
                 ps_schedule_name(oa->schedule), ps_schedule_name(ob->schedule));
  psm_diff_d(&d, "optimizer gamma", oa->gamma, ob->gamma);
  psm_diff_u(&d, "optimizer step_size", oa->step_size, ob->step_size);
  psm_diff_d(&d, "optimizer decay", oa->decay, ob->decay);
  psm_diff_u(&d, "optimizer total_steps", oa->total_steps, ob->total_steps);
  psm_diff_d(&d, "optimizer lr_min", oa->lr_min, ob->lr_min);
  psm_diff_u(&d, "optimizer warmup", oa->warmup, ob->warmup);
  psm_diff_u(&d, "block_size", a->block_size, b->block_size);
  return d.diffs ? 1 : 0;
}

/* ---- tables ------------------------------------------------------------- */

/* Contract: see psmath.h. A row is a rank-1 tensor of dim elements to the
 * init rules (fans = dim unless the spec says). */
int psm_table_validate(const ps_table_spec *s, uint64_t dim, char *err, size_t errlen) {
  if (dim < 1 || dim > PSM_TABLE_DIM_MAX)
    return psm_fail(err, errlen, "a table's dim must be in [1, %d] (got %llu)",
                    PSM_TABLE_DIM_MAX, (unsigned long long)dim);
  if ((unsigned)s->evict >= PS_EVICT_COUNT_)
    return psm_fail(err, errlen, "unknown eviction kind %d (none, lru, lfu)", (int)s->evict);
  if (s->evict != PS_EVICT_NONE && s->max_rows == 0)
    return psm_fail(err, errlen, "eviction %s needs max_rows > 0 (the rows to keep)",
                    ps_evict_name(s->evict));
  const uint64_t shape[1] = {dim};
  if (psm_init_validate(&s->init, shape, 1, err, errlen) != 0) return -1;
  return psm_optim_validate(&s->optim, err, errlen);
}

int psm_table_spec_diff(const ps_table_spec *a, const ps_table_spec *b, char *out,
                        size_t outlen) {
  ps_tensor_spec ta = {a->init, a->optim, 0}, tb = {b->init, b->optim, 0};
  int diff = psm_spec_diff(&ta, &tb, out, outlen);
  psm_diff d = {.buf = out, .len = out != NULL ? strlen(out) : 0, .cap = outlen,
                .diffs = diff};
  psm_diff_u(&d, "max_rows", a->max_rows, b->max_rows);
  if (a->evict != b->evict)
    psm_diff_add(&d, "evict: %s vs %s", ps_evict_name(a->evict), ps_evict_name(b->evict));
  return d.diffs ? 1 : 0;
}
