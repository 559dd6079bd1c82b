/*
 * psd_types.h -- what the psd daemon and the worker library share from the
 * public API: the version, the PS_E* error codes and the tensor specs (the
 * structs, their kinds and the functions that fill and name them, defined
 * in common/spec.c). Installed next to psd.h, which includes it; a trainer
 * includes psd.h, never this file alone.
 */
#ifndef PSD_TYPES_H
#define PSD_TYPES_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PS_VERSION_STRING "0.2.0"
#define PS_PROTOCOL_VERSION 2

/* Every public function is marked PS_EXTERN: libpsd is compiled with
 * -fvisibility=hidden, so only these symbols are exported. */
#if defined(__GNUC__) && __GNUC__ >= 4
#define PS_EXTERN __attribute__((visibility("default")))
#else
#define PS_EXTERN
#endif

/* Error codes. 1..19 mirror the protocol's Code enum (proto/psd.proto), negated
 * (common/wire.h converts: psw_code_to_err, psw_err_to_code). */
enum {
  PS_OK = 0,
  PS_EBADFRAME = -1,    /* malformed frame or message */
  PS_ETOOLARGE = -2,    /* frame larger than the maximum */
  PS_EVERSION = -3,     /* protocol version mismatch */
  PS_EUNKNOWN = -4,     /* unknown request */
  PS_ENOTFOUND = -5,    /* unknown tensor */
  PS_EEXISTS = -6,      /* tensor exists with a different spec */
  PS_ESHAPE = -7,       /* wrong element count / shape */
  PS_ESPEC = -8,        /* invalid init or optimizer spec */
  PS_EGRADIENT = -9,    /* gradient holds NaN or Inf */
  PS_EWRONGSHARD = -10, /* server list mismatch */
  PS_ENOTREADY = -11,
  PS_EBUSY = -12,       /* push already pending for this block in this round */
  PS_ESHUTDOWN = -13,   /* server shutting down */
  PS_EIO = -14,         /* server could not write a checkpoint */
  PS_EINTERNAL = -15,
  PS_ERESOURCE = -16,   /* a limit of the shard was reached (memory, connections) */
  PS_EBADREQ = -17,     /* a request the shard does not accept as formed */
  PS_EAUTH = -18,       /* the shard did not accept this client's proof of its token */
  PS_EPERM = -19,       /* this client's role or session may not make the request */
  PS_EJOBENDED = -20,   /* the job's run this worker joined ended (job end, or dropped) */
  PS_EINVAL = -100,     /* bad argument to a library call */
  PS_ENOMEM = -101,
  PS_ECONNECT = -102,   /* could not connect to a server */
  PS_ETIMEDOUT = -103,  /* deadline passed */
  PS_ECLOSED = -104,    /* handle closed while the call was in flight */
  PS_ETICKET = -105     /* unknown or already-collected ticket */
};

/* ---- Tensor specs --------------------------------------------------------
 * Every formula, default and valid range is defined in docs/math.md (in the
 * source tree; installed as share/doc/psd/math.md). The wire names
 * (he_normal, adam, cosine, ...) are given next to each enumerator, the
 * valid range next to each field: every double must be finite, also where
 * the kind does not use it, and ps_create refuses an out-of-range spec with
 * PS_ESPEC and a sentence naming the field, the value and the range. */

typedef enum {
  PS_INIT_ZEROS = 0,                /* zeros */
  PS_INIT_CONSTANT,                 /* constant (value) */
  PS_INIT_UNIFORM,                  /* uniform (limit) */
  PS_INIT_NORMAL,                   /* normal (sigma) */
  PS_INIT_TRUNCATED_NORMAL,         /* truncated_normal (sigma) */
  PS_INIT_HE_NORMAL,                /* he_normal: var 2/d_in */
  PS_INIT_HE_UNIFORM,               /* he_uniform */
  PS_INIT_HE_TRUNCATED_NORMAL,      /* he_truncated_normal */
  PS_INIT_LECUN_NORMAL,             /* lecun_normal: var 1/d_in */
  PS_INIT_LECUN_UNIFORM,            /* lecun_uniform */
  PS_INIT_LECUN_TRUNCATED_NORMAL,   /* lecun_truncated_normal */
  PS_INIT_FAN_OUT_NORMAL,           /* fan_out_normal: var 1/d_out */
  PS_INIT_FAN_OUT_UNIFORM,          /* fan_out_uniform */
  PS_INIT_FAN_OUT_TRUNCATED_NORMAL, /* fan_out_truncated_normal */
  PS_INIT_GLOROT_NORMAL,            /* glorot_normal: var 2/(d_in+d_out) */
  PS_INIT_GLOROT_UNIFORM,           /* glorot_uniform */
  PS_INIT_GLOROT_TRUNCATED_NORMAL,  /* glorot_truncated_normal */
  PS_INIT_COUNT_
} ps_init_kind;

typedef struct {
  ps_init_kind kind;
  uint64_t seed;            /* element i depends on (seed, name, i, spec) only */
  double sigma;             /* normal, truncated_normal (std after the cut): [1e-30, 1e3] */
  double limit;             /* uniform: [-limit, limit]; limit in [1e-30, 1e3] */
  double value;             /* constant: [-1e3, 1e3] */
  uint64_t fan_in;          /* 0: from the shape, as PyTorch computes it */
  uint64_t fan_out;         /* 0: from the shape */
  int fan_in_includes_bias; /* add 1 to d_in (the notes' sqrt(6/(1+d_in+d_out))) */
  int allow_symmetric;      /* permit zeros/constant on rank >= 2 */
} ps_init_spec;

typedef enum {
  PS_OPT_SGD = 0,   /* sgd */
  PS_OPT_MOMENTUM,  /* momentum (running average; heavy_ball, nesterov flags) */
  PS_OPT_RMSPROP,   /* rmsprop */
  PS_OPT_ADAM,      /* adam */
  PS_OPT_ADAMW,     /* adamw */
  PS_OPT_ADAGRAD,   /* adagrad */
  PS_OPT_NONE,      /* none: aggregation only. The shard keeps no optimizer state; a
                       push-pull returns the averaged gradient (sync: the round's
                       rank-ordered average; async: the last gradient applied), for
                       trainers that step their own optimizer. lr, weight_decay,
                       schedule and warmup must stay 0/constant (nothing uses them) */
  PS_OPT_COUNT_
} ps_optim_kind;

/* The same kind by the name the API plan gave it. */
#define PS_OPTIM_NONE PS_OPT_NONE

typedef enum {
  PS_SCHED_CONSTANT = 0, /* constant */
  PS_SCHED_STEP,         /* step: lr * gamma^floor(t/step_size) */
  PS_SCHED_EXPONENTIAL,  /* exponential: lr * gamma^t */
  PS_SCHED_INVERSE_TIME, /* inverse_time: lr / (1 + decay t) */
  PS_SCHED_INVERSE_SQRT, /* inverse_sqrt: lr / sqrt(t) */
  PS_SCHED_COSINE,       /* cosine: lr_min + (lr-lr_min)(1+cos(pi t/total_steps))/2 */
  PS_SCHED_COUNT_
} ps_schedule_kind;

typedef struct {
  ps_optim_kind kind;
  double lr;             /* (0, 1e3]; no schedule ever exceeds it */
  double beta1;          /* momentum beta (or mu with heavy_ball), rmsprop beta, adam beta1: [0, 1) */
  double beta2;          /* adam/adamw beta2: [0, 1) */
  double eps;            /* rmsprop, adam, adamw, adagrad: [1e-30, 1e3] */
  double weight_decay;   /* L2 (g += wd*w); decoupled in adamw: [0, 1e3], lr*wd <= 1 */
  int heavy_ball;        /* momentum: v = mu v + g */
  int nesterov;          /* momentum with heavy_ball: w -= lr (g + mu v) */
  int eps_inside_sqrt;   /* rmsprop, adam, adamw: sqrt(u + eps) */
  double clip_norm;      /* 0: off; else scale each pushed gradient to norm <= clip_norm (>= 0) */
  ps_schedule_kind schedule;
  double gamma;          /* step, exponential: (0, 1] */
  uint64_t step_size;    /* step: >= 1 */
  double decay;          /* inverse_time: >= 0 */
  uint64_t total_steps;  /* cosine: >= 1 */
  double lr_min;         /* cosine: [0, lr] */
  uint64_t warmup;       /* linear warmup over the first `warmup` updates (cosine: < total_steps) */
} ps_optim_spec;

/* Members of ps_optim_spec, one bit each: the fields ps_set_optim (psd.h)
 * changes. */
#define PS_OPTIM_F_KIND            (1u << 0)  /* must equal the tensor's own kind */
#define PS_OPTIM_F_LR              (1u << 1)
#define PS_OPTIM_F_BETA1           (1u << 2)
#define PS_OPTIM_F_BETA2           (1u << 3)
#define PS_OPTIM_F_EPS             (1u << 4)
#define PS_OPTIM_F_WEIGHT_DECAY    (1u << 5)
#define PS_OPTIM_F_HEAVY_BALL      (1u << 6)
#define PS_OPTIM_F_NESTEROV        (1u << 7)
#define PS_OPTIM_F_EPS_INSIDE_SQRT (1u << 8)
#define PS_OPTIM_F_CLIP_NORM       (1u << 9)
#define PS_OPTIM_F_SCHEDULE        (1u << 10)
#define PS_OPTIM_F_GAMMA           (1u << 11)
#define PS_OPTIM_F_STEP_SIZE       (1u << 12)
#define PS_OPTIM_F_DECAY           (1u << 13)
#define PS_OPTIM_F_TOTAL_STEPS     (1u << 14)
#define PS_OPTIM_F_LR_MIN          (1u << 15)
#define PS_OPTIM_F_WARMUP          (1u << 16)
#define PS_OPTIM_F_ALL             ((1u << 17) - 1)

typedef struct {
  ps_init_spec init;
  ps_optim_spec optim;
  uint64_t block_size;   /* elements per block; 0: server default (262144) */
} ps_tensor_spec;

/* Fill *spec with the defaults of the given kinds (docs/math.md: seed 0, lr
 * and betas of the optimizer, constant schedule, default block size). */
PS_EXTERN void ps_tensor_spec_init(ps_tensor_spec *spec, ps_init_kind init,
                                   ps_optim_kind optim);

/* Name <-> kind, using the wire names above. The *_from_name functions
 * return 0 and set *out, or PS_EINVAL for an unknown name. */
PS_EXTERN const char *ps_init_name(ps_init_kind k);
PS_EXTERN const char *ps_optim_name(ps_optim_kind k);
PS_EXTERN const char *ps_schedule_name(ps_schedule_kind k);
PS_EXTERN int ps_init_from_name(const char *name, ps_init_kind *out);
PS_EXTERN int ps_optim_from_name(const char *name, ps_optim_kind *out);
PS_EXTERN int ps_schedule_from_name(const char *name, ps_schedule_kind *out);

/* ---- Sparse tables -------------------------------------------------------
 * A table holds rows of `dim` floats keyed by uint64 ids, created on first
 * touch (see psd.h, "Sparse tables"). Its spec is a tensor's without the
 * block size, plus a row limit. */

typedef enum {
  PS_EVICT_NONE = 0, /* none: past max_rows new rows are refused (PS_ERESOURCE) */
  PS_EVICT_LRU,      /* lru: the least recently pulled or pushed row goes */
  PS_EVICT_LFU,      /* lfu: the least often pulled or pushed row goes (ties: least recent);
                      * every count is halved once per 8 uses a row of the table */
  PS_EVICT_COUNT_
} ps_evict_kind;

typedef struct {
  ps_init_spec init;      /* fan_in/fan_out from here, else dim */
  ps_optim_spec optim;    /* sgd, momentum, adagrad, adam (lazy), adamw (lazy), rmsprop */
  uint64_t max_rows;      /* 0: no limit; else rows over all shards (each keeps
                             ceil(max_rows / shards)) */
  ps_evict_kind evict;    /* which rows go past max_rows; needs max_rows > 0 */
} ps_table_spec;

/* Fill *spec with the defaults of the given kinds (as ps_tensor_spec_init;
 * no row limit, no eviction). */
PS_EXTERN void ps_table_spec_init(ps_table_spec *s, ps_init_kind init, ps_optim_kind optim);
/* "none", "lru", "lfu" <-> kind; *_from_name returns 0 or PS_EINVAL. */
PS_EXTERN const char *ps_evict_name(ps_evict_kind k);
PS_EXTERN int ps_evict_from_name(const char *name, ps_evict_kind *out);

#ifdef __cplusplus
}
#endif
#endif /* PSD_TYPES_H */
