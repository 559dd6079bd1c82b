/*
 * client.c -- the public API of the worker library (psd.h): connecting,
 * handing calls to the handle's loop thread, waiting for tickets, errors.
 *
 * A call from a trainer thread builds an op, takes a ticket and appends the
 * op to the handle's submission queue under c->mu, then wakes the loop
 * thread with uv_async_send. The loop thread (ops.c, conn.c) does all the
 * network work and marks the op done under c->mu; ps_wait sleeps on c->cv
 * until then and frees the op. The blocking calls are the asynchronous ones
 * followed by ps_wait.
 *
 * Error sentences are kept per calling thread (thread-local storage): the
 * op's sentence is copied out by the ps_wait that collects it, so
 * ps_errmsg(c) describes the last failure of a call this thread made.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "client_int.h"
#include "log.h"
#include "psmath.h"

static _Thread_local struct {
  const ps_client *c;
  char msg[PS__ERRMSG];
} tls_err;
static _Thread_local char tls_connect_err[PS__ERRMSG];

static int set_errv(const ps_client *c, int code, const char *fmt, va_list ap) {
  tls_err.c = c;
  vsnprintf(tls_err.msg, sizeof(tls_err.msg), fmt, ap);
  return code;
}

static int set_err(const ps_client *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int set_err(const ps_client *c, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  set_errv(c, code, fmt, ap);
  va_end(ap);
  return code;
}

const char *ps_strerror(int err) {
  switch (err) {
    case PS_OK: return "PS_OK: success";
    case PS_EBADFRAME: return "PS_EBADFRAME: malformed frame or message";
    case PS_ETOOLARGE: return "PS_ETOOLARGE: frame larger than the maximum";
    case PS_EVERSION: return "PS_EVERSION: protocol version mismatch";
    case PS_EUNKNOWN: return "PS_EUNKNOWN: unknown request";
    case PS_ENOTFOUND: return "PS_ENOTFOUND: no such tensor";
    case PS_EEXISTS: return "PS_EEXISTS: tensor exists with a different spec";
    case PS_ESHAPE: return "PS_ESHAPE: wrong element count or shape";
    case PS_ESPEC: return "PS_ESPEC: invalid initializer or optimizer spec";
    case PS_EGRADIENT: return "PS_EGRADIENT: gradient holds NaN or Inf";
    case PS_EWRONGSHARD: return "PS_EWRONGSHARD: server list mismatch";
    case PS_ENOTREADY: return "PS_ENOTREADY: request before the hello";
    case PS_EBUSY: return "PS_EBUSY: a push for this block is already pending in this round";
    case PS_ESHUTDOWN: return "PS_ESHUTDOWN: server shutting down";
    case PS_EIO: return "PS_EIO: server could not write a checkpoint";
    case PS_EINTERNAL: return "PS_EINTERNAL: internal server error";
    case PS_ERESOURCE: return "PS_ERESOURCE: a limit of the server was reached";
    case PS_EBADREQ: return "PS_EBADREQ: request not acceptable to the server";
    case PS_EAUTH: return "PS_EAUTH: the server did not accept this client's token";
    case PS_EPERM: return "PS_EPERM: this client's role may not make the request";
    case PS_EJOBENDED: return "PS_EJOBENDED: the job's run this worker joined has ended";
    case PS_EINVAL: return "PS_EINVAL: invalid argument";
    case PS_ENOMEM: return "PS_ENOMEM: out of memory";
    case PS_ECONNECT: return "PS_ECONNECT: could not connect to a server";
    case PS_ETIMEDOUT: return "PS_ETIMEDOUT: operation timed out";
    case PS_ECLOSED: return "PS_ECLOSED: handle closed while the call was in flight";
    case PS_ETICKET: return "PS_ETICKET: unknown or already collected ticket";
    default: return "PS_E?: unknown error code";
  }
}

const char *ps_errmsg(ps_client *c) { return tls_err.c == c ? tls_err.msg : ""; }

const char *ps_last_error(void) { return tls_connect_err; }

/* ---- options ----------------------------------------------------------- */

static int env_int(const char *name, int def) {
  const char *v = getenv(name);
  if (v == NULL || *v == '\0') return def;
  char *end;
  errno = 0;
  long x = strtol(v, &end, 10);
  if (errno != 0 || *end != '\0' || x < INT_MIN || x > INT_MAX) {
    log_warn("ignoring %s='%s': not an integer", name, v);
    return def;
  }
  return (int)x;
}

/* The first of two variables that is set decides: psd's own name, else the
 * launcher's (torchrun, and most launchers after it, export RANK and
 * WORLD_SIZE to every process they start). */
static int env_int2(const char *name, const char *fallback, int def) {
  const char *v = getenv(name);
  return env_int(v != NULL && *v != '\0' ? name : fallback, def);
}

void ps_options_init(ps_options *o) {
  memset(o, 0, sizeof(*o));
  o->identity = NULL; /* "pid N on HOST" */
  o->rank = env_int2("PS_WORKER_RANK", "RANK", -1);
  o->num_workers = env_int2("PS_NUM_WORKERS", "WORLD_SIZE", 1);
  o->staleness = env_int("PS_STALENESS", 0);
  o->connect_timeout_ms = 10000;
  o->op_timeout_ms = env_int("PS_TIMEOUT_MS", 60000);
  o->heartbeat_ms = 1000;
  o->lane_mb = env_int("PS_LANE_MB", 64);
  if (o->lane_mb < 0) o->lane_mb = 0;
  const char *tf = getenv("PS_TOKEN_FILE"), *role = getenv("PS_ROLE");
  o->token_file = tf != NULL && *tf != '\0' ? tf : NULL;
  o->role = role != NULL && *role != '\0' ? role : NULL;
  const char *job = getenv("PS_JOB");
  o->job = job != NULL && *job != '\0' ? job : NULL;
}

/* ---- ops: submitting and waiting --------------------------------------- */

static ps__op *op_new(ps__op_kind kind, const char *name) {
  ps__op *op = calloc(1, sizeof(*op));
  if (op == NULL) return NULL;
  op->kind = kind;
  op->version = UINT64_MAX;
  if (name != NULL && (op->name = strdup(name)) == NULL) {
    free(op);
    return NULL;
  }
  return op;
}

static void op_free(ps__op *op) {
  ps__plan_free(op->c, op->plan);
  free(op->name);
  free(op->shape);
  free(op);
}

/* Free every op of a ticket map, and the map. */
static void free_ops(u64map *tickets) {
  size_t it = 0;
  uint64_t t, op;
  while (u64map_next(tickets, &it, &t, &op)) op_free((ps__op *)(uintptr_t)op);
  u64map_free(tickets);
}

static int on_loop_thread(const ps_client *c) {
  return c->thread_started && pthread_equal(pthread_self(), c->thread);
}

/* Hand op to the loop thread. On success *t (if given) is its ticket; on
 * failure op is freed and no callback will ever run. */
static int submit_clock(ps_client *c, ps__op *op, ps_ticket *t, uint64_t *clock);

static int submit(ps_client *c, ps__op *op, ps_ticket *t) {
  return submit_clock(c, op, t, NULL);
}

/* Queue op for the loop thread; *t gets its ticket and *clock (may be NULL)
 * the clock it was given, both read under the lock. */
static int submit_clock(ps_client *c, ps__op *op, ps_ticket *t, uint64_t *clock) {
  pthread_mutex_lock(&c->mu);
  if (c->closing) {
    pthread_mutex_unlock(&c->mu);
    op_free(op);
    return set_err(c, PS_ECLOSED, "the handle is being closed");
  }
  op->c = c;
  op->t_submit = uv_hrtime();
  op->ticket = ++c->next_ticket;
  if (u64map_put_ptr(&c->tickets, op->ticket, op) != 0) {
    pthread_mutex_unlock(&c->mu);
    op_free(op);
    return set_err(c, PS_ENOMEM, "out of memory");
  }
  /* Clock and barrier generation advance in submission order, so two
   * threads calling ps_clock get distinct, increasing clocks. */
  if (op->kind == PS__OP_CLOCK) op->clock = ++c->clock;
  else if (op->kind == PS__OP_BARRIER) op->clock = ++c->barrier_gen;
  else op->clock = c->clock;
  c->nundone++;
  if (c->qtail) c->qtail->qnext = op;
  else c->qhead = op;
  c->qtail = op;
  /* Sent under the lock: ps_close cannot close the async handle between
   * our check of `closing` and this call. */
  uv_async_send(&c->async);
  /* Read under the lock: once it is released another thread's
   * ps_wait_all may collect and free the op. */
  if (t != NULL) *t = op->ticket;
  if (clock != NULL) *clock = op->clock;
  pthread_mutex_unlock(&c->mu);
  return 0;
}

/* The absolute CLOCK_MONOTONIC time timeout_ms from now (c->cv waits on
 * that clock, so a change of the wall clock does not stretch a wait). */
static struct timespec deadline_in(int timeout_ms) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  ts.tv_sec += timeout_ms / 1000;
  ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
  if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
  return ts;
}

int ps_wait(ps_client *c, ps_ticket t, uint64_t *version) {
  return ps_wait_timeout(c, t, -1, version);
}

int ps_wait_timeout(ps_client *c, ps_ticket t, int timeout_ms, uint64_t *version) {
  if (c == NULL) return PS_EINVAL;
  ps__op *op;
  int rc = 0;
  struct timespec until = deadline_in(timeout_ms > 0 ? timeout_ms : 0);
  pthread_mutex_lock(&c->mu);
  c->nwaiters++;
  for (;;) {
    op = u64map_get_ptr(&c->tickets, t);
    if (op == NULL || op->done) break;
    /* Not done within the limit: the ticket stays uncollected, for a
     * later ps_wait, ps_wait_timeout or ps_wait_all. */
    if (timeout_ms == 0) {
      rc = set_err(c, PS_ETIMEDOUT, "ticket %llu is not done yet", (unsigned long long)t);
      op = NULL;
      break;
    }
    if (on_loop_thread(c)) {
      rc = set_err(c, PS_EINVAL, "ps_wait on an unfinished ticket from a callback "
                   "would deadlock (callbacks must not block)");
      op = NULL;
      break;
    }
    if (timeout_ms < 0) {
      pthread_cond_wait(&c->cv, &c->mu);
    } else if (pthread_cond_timedwait(&c->cv, &c->mu, &until) == ETIMEDOUT) {
      timeout_ms = 0; /* look at the ticket once more, then give up */
    }
  }
  if (op != NULL) u64map_del(&c->tickets, t, NULL);
  else if (rc == 0)
    rc = set_err(c, PS_ETICKET, "ticket %llu is unknown or was already collected",
                 (unsigned long long)t);
  if (--c->nwaiters == 0 && c->closing) pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
  if (op == NULL) return rc;

  rc = op->status;
  if (version != NULL) *version = op->version;
  if (rc != 0) set_err(c, rc, "%s", op->errmsg);
  op_free(op);
  return rc;
}

int ps_wait_all(ps_client *c) {
  if (c == NULL) return PS_EINVAL;
  pthread_mutex_lock(&c->mu);
  c->nwaiters++;
  while (c->nundone > 0) {
    if (on_loop_thread(c)) {
      if (--c->nwaiters == 0 && c->closing) pthread_cond_broadcast(&c->cv);
      pthread_mutex_unlock(&c->mu);
      return set_err(c, PS_EINVAL, "ps_wait_all from a callback would deadlock");
    }
    pthread_cond_wait(&c->cv, &c->mu);
  }
  /* Every ticket is done: collect them all at once. */
  u64map all = c->tickets;
  memset(&c->tickets, 0, sizeof(c->tickets));
  if (--c->nwaiters == 0 && c->closing) pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);

  ps__op *first = NULL;
  size_t it = 0;
  uint64_t t, v;
  while (u64map_next(&all, &it, &t, &v)) {
    ps__op *op = (ps__op *)(uintptr_t)v;
    if (op->status != 0 && (first == NULL || op->ticket < first->ticket)) first = op;
  }
  int rc = first ? first->status : 0;
  if (first != NULL) set_err(c, rc, "%s", first->errmsg);
  free_ops(&all);
  return rc;
}

/* A blocking call is counted (nwaiters) from before it submits until after
 * it has collected its ticket, so a ps_close on another thread cannot free
 * the handle in between: ps_close waits for the count to drop to zero. */
static int call_begin(ps_client *c) {
  pthread_mutex_lock(&c->mu);
  if (c->closing) {
    pthread_mutex_unlock(&c->mu);
    return set_err(c, PS_ECLOSED, "the handle is being closed");
  }
  c->nwaiters++;
  pthread_mutex_unlock(&c->mu);
  return 0;
}

static int call_end(ps_client *c, int rc) {
  pthread_mutex_lock(&c->mu);
  if (--c->nwaiters == 0 && c->closing) pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
  return rc;
}

static int run(ps_client *c, ps__op *op, uint64_t *version) {
  ps_ticket t = 0;
  int rc = call_begin(c);
  if (rc != 0) {
    op_free(op);
    return rc;
  }
  rc = submit(c, op, &t);
  if (rc == 0) rc = ps_wait(c, t, version);
  return call_end(c, rc);
}

/* ---- connecting and closing -------------------------------------------- */

static pthread_once_t log_once = PTHREAD_ONCE_INIT;

static void log_init(void) {
  const char *lv = getenv("PS_LOG_LEVEL");
  int level = lv ? plog_parse_level(lv) : -1;
  plog_set_level(level >= 0 ? level : PLOG_WARN);
  plog_set_tag("psd-client");
}

static int connect_fail(int code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int connect_fail(int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(tls_connect_err, sizeof(tls_connect_err), fmt, ap);
  va_end(ap);
  return code;
}

/* Free a handle whose loop thread has ended (or never started). */
static void client_free(ps_client *c) {
  free_ops(&c->tickets);
  u64map_free(&c->noclip);
  ps__tables_free(c);
  ps__pool_free(c);
  ps__cache_free(c);
  for (int i = 0; i < c->servers.n; i++) ps__shard_free(&c->shards[i]);
  int r = uv_loop_close(&c->loop);
  if (r != 0) log_error("uv_loop_close: %s (a handle was left open)", uv_strerror(r));
  pthread_cond_destroy(&c->cv);
  pthread_mutex_destroy(&c->mu);
  psp_servers_free(&c->servers);
  free(c->shards);
  free(c->identity);
  free(c->job);
  psa_wipe(c->token, sizeof(c->token));
  free(c);
}

int ps_connect(ps_client **out, const char *servers, const ps_options *opts) {
  char err[512];
  pthread_once(&log_once, log_init);
  if (out == NULL) return connect_fail(PS_EINVAL, "ps_connect: out is NULL");
  *out = NULL;

  ps_options o;
  if (opts != NULL) o = *opts;
  else ps_options_init(&o);
  if (o.connect_timeout_ms <= 0 || o.op_timeout_ms <= 0 || o.heartbeat_ms <= 0 ||
      o.num_workers < 1 || o.rank < -1 || o.staleness < -1)
    return connect_fail(PS_EINVAL, "invalid options: timeouts and heartbeat must be "
                        "positive, num_workers >= 1, rank >= -1, staleness >= -1");
  int role = o.role != NULL ? psa_role_parse(o.role) : o.rank >= 0 ? PSA_WORKER : PSA_ADMIN;
  if (role < 0)
    return connect_fail(PS_EINVAL, "role '%s' (PS_ROLE or ps_options.role) is not admin, "
                        "worker or reader", o.role);
  if (psa_init() != 0) return connect_fail(PS_EINVAL, "libsodium could not be initialized");
  if (servers == NULL) servers = getenv("PS_SERVERS");
  if (servers == NULL || *servers == '\0') servers = "127.0.0.1:7070";

  ps_client *c = calloc(1, sizeof(*c));
  if (c == NULL) return connect_fail(PS_ENOMEM, "out of memory");
  if (psp_servers_parse(&c->servers, servers, err, sizeof(err)) != 0) {
    free(c);
    return connect_fail(PS_EINVAL, "bad server list '%s': %s", servers, err);
  }
  c->opts = o;
  c->role = role;
  if (o.token_file != NULL) {
    char warn[512];
    if (psa_token_load(o.token_file, c->token, &c->token_len, err, sizeof(err), warn,
                       sizeof(warn)) != 0) {
      psp_servers_free(&c->servers);
      free(c);
      return connect_fail(PS_EINVAL, "%s", err);
    }
    if (warn[0]) log_warn("%s", warn);
  }
  c->opts.token_file = NULL; /* not kept: the token is read once */
  c->opts.role = NULL;
  c->job = strdup(o.job != NULL && *o.job != '\0' ? o.job : "default");
  if (o.identity != NULL) {
    c->identity = strdup(o.identity);
  } else {
    char host[128] = "?";
    gethostname(host, sizeof(host) - 1);
    if (asprintf(&c->identity, "pid %d on %s", (int)getpid(), host) < 0)
      c->identity = NULL;
  }
  c->shards = calloc((size_t)c->servers.n, sizeof(*c->shards));
  if (c->identity == NULL || c->shards == NULL || c->job == NULL) {
    psa_wipe(c->token, sizeof(c->token));
    psp_servers_free(&c->servers);
    free(c->job);
    free(c->identity);
    free(c->shards);
    free(c);
    return connect_fail(PS_ENOMEM, "out of memory");
  }
  c->opts.identity = c->identity;
  c->opts.job = c->job;
  pthread_mutex_init(&c->mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&c->cv, &ca);
  pthread_condattr_destroy(&ca);

  /* Every handle is initialized here, before the loop thread exists; from
   * then on only that thread touches the loop. */
  uv_loop_init(&c->loop);
  uv_async_init(&c->loop, &c->async, ps__on_async);
  c->async.data = c;
  uv_timer_init(&c->loop, &c->tick);
  c->tick.data = c;
  uv_timer_init(&c->loop, &c->hb);
  c->hb.data = c;
  for (int i = 0; i < c->servers.n; i++) ps__shard_init(c, &c->shards[i], i);

  ps__op *op = op_new(PS__OP_CONNECT, NULL);
  ps_ticket t = 0;
  int rc = PS_ENOMEM;
  if (op != NULL) {
    op->hold = 1;
    rc = submit(c, op, &t);
  }
  if (rc == 0) {
    /* The loop thread takes no signals: a trainer's handlers run on its
     * own threads, and a write to a dropped connection raises a SIGPIPE
     * that stays blocked (and pending, harmlessly) on the loop thread. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&c->thread, NULL, ps__loop_main, c) == 0 ? 0 : PS_ENOMEM;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    c->thread_started = rc == 0;
  }
  if (rc == 0) rc = ps_wait(c, t, NULL);
  if (rc != 0) {
    connect_fail(rc, "%s", tls_err.c == c ? tls_err.msg : "could not start the client thread");
    ps_close(c);
    return rc;
  }
  *out = c;
  return 0;
}

int ps_close(ps_client *c) {
  if (c == NULL) return 0;
  if (on_loop_thread(c))
    return set_err(c, PS_EINVAL, "ps_close from a callback would deadlock");
  pthread_mutex_lock(&c->mu);
  c->closing = 1;
  if (c->thread_started) uv_async_send(&c->async);
  pthread_mutex_unlock(&c->mu);
  if (c->thread_started) {
    pthread_join(c->thread, NULL);
  } else {
    /* The thread never ran: close the handles here. */
    for (int i = 0; i < c->servers.n; i++) uv_close((uv_handle_t *)&c->shards[i].timer, NULL);
    uv_close((uv_handle_t *)&c->tick, NULL);
    uv_close((uv_handle_t *)&c->hb, NULL);
    uv_close((uv_handle_t *)&c->async, NULL);
    uv_run(&c->loop, UV_RUN_DEFAULT);
  }
  /* Threads still inside ps_wait collect their (now done) tickets first. */
  pthread_mutex_lock(&c->mu);
  while (c->nwaiters > 0) pthread_cond_wait(&c->cv, &c->mu);
  pthread_mutex_unlock(&c->mu);
  client_free(c);
  return 0;
}

/* ---- calls ------------------------------------------------------------- */

static int check_name(ps_client *c, const char *verb, const char *name) {
  if (name == NULL || *name == '\0')
    return set_err(c, PS_EINVAL, "%s: the tensor name is empty", verb);
  if (strlen(name) > PSD_MAX_NAME)
    return set_err(c, PS_EINVAL, "%s: tensor name longer than %d bytes", verb, PSD_MAX_NAME);
  return 0;
}

static int tensor_call(ps_client *c, ps__op_kind kind, const char *verb,
                       const char *name, const float *in, float *out,
                       uint64_t offset, uint64_t count, ps_done_cb cb, void *arg,
                       ps_ticket *t) {
  if (t != NULL) *t = 0;
  if (c == NULL) return PS_EINVAL;
  int rc = check_name(c, verb, name);
  if (rc != 0) return rc;
  if (count == 0) return set_err(c, PS_EINVAL, "%s of %s: count is 0", verb, name);
  if ((kind != PS__OP_PUSH && out == NULL) ||
      ((kind == PS__OP_PUSH || kind == PS__OP_PUSH_PULL) && in == NULL))
    return set_err(c, PS_EINVAL, "%s of %s: buffer is NULL", verb, name);
  ps__op *op = op_new(kind, name);
  if (op == NULL) return set_err(c, PS_ENOMEM, "out of memory");
  op->in = in;
  op->out = out;
  op->offset = offset;
  op->count = count;
  op->cb = cb;
  op->arg = arg;
  /* The NaN/Inf check of the whole gradient, on the caller's thread:
   * refusing here, before any block leaves, keeps every block untouched
   * (each shard also checks the blocks it receives, for clients that do
   * not). A tensor that may clip also needs the norm of the whole gradient,
   * once per push, for the shards to clip with whichever blocks they own;
   * the sum of squares is also the finiteness test then. */
  if (in != NULL) {
    pthread_mutex_lock(&c->mu);
    int noclip = u64map_get(&c->noclip, psm_hash_name(name), NULL);
    pthread_mutex_unlock(&c->mu);
    double ss = noclip ? 0 : psm_sumsq(in, count);
    if (noclip ? !psm_all_finite(in, count) : !isfinite(ss)) {
      op_free(op);
      return set_err(c, PS_EGRADIENT, "%s of %s: the gradient holds NaN or Inf; nothing was sent",
                     verb, name);
    }
    op->grad_norm = sqrt(ss);
    op->has_norm = !noclip;
  }
  return submit(c, op, t);
}

int ps_pull_async(ps_client *c, const char *name, float *out, uint64_t count,
                  ps_done_cb cb, void *arg, ps_ticket *t) {
  return tensor_call(c, PS__OP_PULL, "pull", name, NULL, out, 0, count, cb, arg, t);
}

int ps_push_async(ps_client *c, const char *name, const float *grad, uint64_t count,
                  ps_done_cb cb, void *arg, ps_ticket *t) {
  return tensor_call(c, PS__OP_PUSH, "push", name, grad, NULL, 0, count, cb, arg, t);
}

int ps_push_pull_async(ps_client *c, const char *name, const float *grad, float *out,
                       uint64_t count, ps_done_cb cb, void *arg, ps_ticket *t) {
  return tensor_call(c, PS__OP_PUSH_PULL, "push-pull", name, grad, out, 0, count, cb,
                     arg, t);
}

int ps_pull_range_async(ps_client *c, const char *name, uint64_t offset, float *out,
                        uint64_t count, ps_done_cb cb, void *arg, ps_ticket *t) {
  return tensor_call(c, PS__OP_PULL_RANGE, "pull", name, NULL, out, offset, count, cb,
                     arg, t);
}

int ps_pull(ps_client *c, const char *name, float *out, uint64_t count,
            uint64_t *version) {
  ps_ticket t = 0;
  if (c == NULL) return PS_EINVAL;
  int rc = call_begin(c);
  if (rc != 0) return rc;
  rc = ps_pull_async(c, name, out, count, NULL, NULL, &t);
  if (rc == 0) rc = ps_wait(c, t, version);
  return call_end(c, rc);
}

int ps_push(ps_client *c, const char *name, const float *grad, uint64_t count) {
  ps_ticket t = 0;
  if (c == NULL) return PS_EINVAL;
  int rc = call_begin(c);
  if (rc != 0) return rc;
  rc = ps_push_async(c, name, grad, count, NULL, NULL, &t);
  if (rc == 0) rc = ps_wait(c, t, NULL);
  return call_end(c, rc);
}

int ps_push_pull(ps_client *c, const char *name, const float *grad, float *out,
                 uint64_t count, uint64_t *version) {
  ps_ticket t = 0;
  if (c == NULL) return PS_EINVAL;
  int rc = call_begin(c);
  if (rc != 0) return rc;
  rc = ps_push_pull_async(c, name, grad, out, count, NULL, NULL, &t);
  if (rc == 0) rc = ps_wait(c, t, version);
  return call_end(c, rc);
}

int ps_pull_range(ps_client *c, const char *name, uint64_t offset, float *out,
                  uint64_t count, uint64_t *version) {
  ps_ticket t = 0;
  if (c == NULL) return PS_EINVAL;
  int rc = call_begin(c);
  if (rc != 0) return rc;
  rc = ps_pull_range_async(c, name, offset, out, count, NULL, NULL, &t);
  if (rc == 0) rc = ps_wait(c, t, version);
  return call_end(c, rc);
}

/* Submit op for an asynchronous call (cb, arg, *t as in psd.h), or run it
 * to completion when t is NULL (a blocking call). op is freed on failure. */
static int start(ps_client *c, ps__op *op, ps_done_cb cb, void *arg, ps_ticket *t) {
  if (t == NULL) return run(c, op, NULL);
  op->cb = cb;
  op->arg = arg;
  return submit(c, op, t);
}

static int create_call(ps_client *c, const char *name, const uint64_t *shape, int ndim,
                       const ps_tensor_spec *spec, ps_done_cb cb, void *arg, ps_ticket *t) {
  if (c == NULL) return PS_EINVAL;
  int rc = check_name(c, "create", name);
  if (rc != 0) return rc;
  if (ndim < 1 || ndim > PSD_MAX_NDIM || shape == NULL)
    return set_err(c, PS_EINVAL, "create of %s: rank %d is not in 1..%d", name, ndim,
                   PSD_MAX_NDIM);
  for (int i = 0; i < ndim; i++)
    if (shape[i] == 0)
      return set_err(c, PS_EINVAL, "create of %s: dimension %d is 0", name, i);
  if (psd_numel(shape, (size_t)ndim) == 0)
    return set_err(c, PS_EINVAL, "create of %s: more than 2^62 elements", name);
  ps__op *op = op_new(PS__OP_CREATE, name);
  if (op == NULL || (op->shape = malloc((size_t)ndim * sizeof(uint64_t))) == NULL) {
    if (op) op_free(op);
    return set_err(c, PS_ENOMEM, "out of memory");
  }
  memcpy(op->shape, shape, (size_t)ndim * sizeof(uint64_t));
  op->ndim = ndim;
  if (spec != NULL) op->spec = *spec;
  else ps_tensor_spec_init(&op->spec, PS_INIT_HE_NORMAL, PS_OPT_ADAM);
  return start(c, op, cb, arg, t);
}

int ps_create(ps_client *c, const char *name, const uint64_t *shape, int ndim,
              const ps_tensor_spec *spec) {
  return create_call(c, name, shape, ndim, spec, NULL, NULL, NULL);
}

int ps_create_async(ps_client *c, const char *name, const uint64_t *shape, int ndim,
                    const ps_tensor_spec *spec, ps_done_cb cb, void *arg, ps_ticket *t) {
  if (t == NULL) return PS_EINVAL;
  *t = 0;
  return create_call(c, name, shape, ndim, spec, cb, arg, t);
}

static int lookup_call(ps_client *c, const char *name, ps_tensor_info *info, ps_done_cb cb,
                       void *arg, ps_ticket *t) {
  if (c == NULL || info == NULL) return PS_EINVAL;
  memset(info, 0, sizeof(*info));
  int rc = check_name(c, "lookup", name);
  if (rc != 0) return rc;
  ps__op *op = op_new(PS__OP_LOOKUP, name);
  if (op == NULL) return set_err(c, PS_ENOMEM, "out of memory");
  op->info = info;
  return start(c, op, cb, arg, t);
}

int ps_lookup(ps_client *c, const char *name, ps_tensor_info *info) {
  return lookup_call(c, name, info, NULL, NULL, NULL);
}

int ps_lookup_async(ps_client *c, const char *name, ps_tensor_info *info, ps_done_cb cb,
                    void *arg, ps_ticket *t) {
  if (t == NULL) return PS_EINVAL;
  *t = 0;
  return lookup_call(c, name, info, cb, arg, t);
}

void ps_tensor_info_free(ps_tensor_info *info) {
  if (info == NULL) return;
  free(info->name);
  free(info->shape);
  memset(info, 0, sizeof(*info));
}

static int list_call(ps_client *c, ps_tensor_info **infos, size_t *n, ps_done_cb cb,
                     void *arg, ps_ticket *t) {
  if (c == NULL || infos == NULL || n == NULL) return PS_EINVAL;
  *infos = NULL;
  *n = 0;
  ps__op *op = op_new(PS__OP_LIST, NULL);
  if (op == NULL) return set_err(c, PS_ENOMEM, "out of memory");
  op->infos = infos;
  op->ninfos = n;
  return start(c, op, cb, arg, t);
}

int ps_list(ps_client *c, ps_tensor_info **infos, size_t *n) {
  return list_call(c, infos, n, NULL, NULL, NULL);
}

int ps_list_async(ps_client *c, ps_tensor_info **infos, size_t *n, ps_done_cb cb,
                  void *arg, ps_ticket *t) {
  if (t == NULL) return PS_EINVAL;
  *t = 0;
  return list_call(c, infos, n, cb, arg, t);
}

void ps_list_free(ps_tensor_info *infos, size_t n) {
  if (infos == NULL) return;
  for (size_t i = 0; i < n; i++) ps_tensor_info_free(&infos[i]);
  free(infos);
}

static int stats_call(ps_client *c, int shard, char **json, ps_done_cb cb, void *arg,
                      ps_ticket *t) {
  if (c == NULL || json == NULL) return PS_EINVAL;
  *json = NULL;
  if (shard < 0 || shard >= c->servers.n)
    return set_err(c, PS_EINVAL, "stats: shard %d is not in 0..%d", shard,
                   c->servers.n - 1);
  ps__op *op = op_new(PS__OP_STATS, NULL);
  if (op == NULL) return set_err(c, PS_ENOMEM, "out of memory");
  op->shard = shard;
  op->json = json;
  return start(c, op, cb, arg, t);
}

int ps_stats(ps_client *c, int shard, char **json) {
  return stats_call(c, shard, json, NULL, NULL, NULL);
}

int ps_stats_async(ps_client *c, int shard, char **json, ps_done_cb cb, void *arg,
                   ps_ticket *t) {
  if (t == NULL) return PS_EINVAL;
  *t = 0;
  return stats_call(c, shard, json, cb, arg, t);
}

int ps_jobs(ps_client *c, ps_job_info **jobs, size_t *n) {
  if (c == NULL || jobs == NULL || n == NULL) return PS_EINVAL;
  *jobs = NULL;
  *n = 0;
  ps__op *op = op_new(PS__OP_JOBS, NULL);
  if (op == NULL) return set_err(c, PS_ENOMEM, "out of memory");
  op->jobs = jobs;
  op->njobs = n;
  int rc = run(c, op, NULL);
  for (size_t i = 0; i < *n; i++) {
    if ((*jobs)[i].live == UINT32_MAX) (*jobs)[i].live = 0;
    if ((*jobs)[i].clock_min == UINT64_MAX) (*jobs)[i].clock_min = 0;
  }
  if (rc != 0) {
    ps_jobs_free(*jobs, *n);
    *jobs = NULL;
    *n = 0;
  }
  return rc;
}

void ps_jobs_free(ps_job_info *jobs, size_t n) {
  if (jobs == NULL) return;
  for (size_t i = 0; i < n; i++) free(jobs[i].name);
  free(jobs);
}

static int job_call(ps_client *c, ps__op_kind kind, const char *job) {
  if (c == NULL || job == NULL || *job == '\0') return PS_EINVAL;
  ps__op *op = op_new(kind, job);
  if (op == NULL) return set_err(c, PS_ENOMEM, "out of memory");
  return run(c, op, NULL);
}

int ps_job_end(ps_client *c, const char *job) { return job_call(c, PS__OP_JOB_END, job); }

int ps_job_drop(ps_client *c, const char *job) { return job_call(c, PS__OP_JOB_DROP, job); }

/* ---- tensor lifecycle and runtime control ------------------------------ */

static int named_call(ps_client *c, ps__op_kind kind, const char *verb, const char *name) {
  if (c == NULL) return PS_EINVAL;
  int rc = check_name(c, verb, name);
  if (rc != 0) return rc;
  ps__op *op = op_new(kind, name);
  if (op == NULL) return set_err(c, PS_ENOMEM, "out of memory");
  return run(c, op, NULL);
}

int ps_delete(ps_client *c, const char *name) {
  return named_call(c, PS__OP_DELETE, "delete", name);
}

int ps_reset(ps_client *c, const char *name) {
  return named_call(c, PS__OP_RESET, "reset", name);
}

int ps_delete_table(ps_client *c, const char *name) {
  return named_call(c, PS__OP_DELETE_TABLE, "delete table", name);
}

int ps_reset_table(ps_client *c, const char *name) {
  return named_call(c, PS__OP_RESET_TABLE, "reset table", name);
}

static int set_call(ps_client *c, const char *name, uint64_t offset, const float *values,
                    uint64_t count, int flags, ps_done_cb cb, void *arg, ps_ticket *t) {
  if (c == NULL) return PS_EINVAL;
  int rc = check_name(c, "set", name);
  if (rc != 0) return rc;
  if (count == 0) return set_err(c, PS_EINVAL, "set of %s: count is 0", name);
  if (values == NULL) return set_err(c, PS_EINVAL, "set of %s: values is NULL", name);
  if ((flags & ~PS_SET_ZERO_STATE) != 0)
    return set_err(c, PS_EINVAL, "set of %s: unknown flags 0x%x (PS_SET_ZERO_STATE is the "
                   "only one)", name, (unsigned)flags);
  /* Weights become these values as they are: a NaN would poison every
   * update after it. */
  if (!psm_all_finite(values, count))
    return set_err(c, PS_EINVAL, "set of %s: the values hold NaN or Inf; nothing was sent",
                   name);
  ps__op *op = op_new(PS__OP_SET, name);
  if (op == NULL) return set_err(c, PS_ENOMEM, "out of memory");
  op->in = values;
  op->offset = offset;
  op->count = count;
  op->flags = flags;
  return start(c, op, cb, arg, t);
}

int ps_set(ps_client *c, const char *name, uint64_t offset, const float *values,
           uint64_t count, int flags) {
  return set_call(c, name, offset, values, count, flags, NULL, NULL, NULL);
}

int ps_set_async(ps_client *c, const char *name, uint64_t offset, const float *values,
                 uint64_t count, int flags, ps_done_cb cb, void *arg, ps_ticket *t) {
  if (t == NULL) return PS_EINVAL;
  *t = 0;
  return set_call(c, name, offset, values, count, flags, cb, arg, t);
}

int ps_set_optim(ps_client *c, const char *name, const ps_optim_spec *o, uint64_t fields) {
  if (c == NULL) return PS_EINVAL;
  if (name != NULL) {
    int rc = check_name(c, "tune", name);
    if (rc != 0) return rc;
  }
  if (o == NULL) return set_err(c, PS_EINVAL, "tune: the optimizer spec is NULL");
  if (fields == 0 || (fields & ~(uint64_t)PS_OPTIM_F_ALL) != 0)
    return set_err(c, PS_EINVAL, "tune: fields 0x%llx name no member of ps_optim_spec (give "
                   "PS_OPTIM_F_* bits)", (unsigned long long)fields);
  if (((fields & PS_OPTIM_F_KIND) && (unsigned)o->kind >= PS_OPT_COUNT_) ||
      ((fields & PS_OPTIM_F_SCHEDULE) && (unsigned)o->schedule >= PS_SCHED_COUNT_))
    return set_err(c, PS_EINVAL, "tune: unknown optimizer kind or schedule");
  ps__op *op = op_new(PS__OP_TUNE, name);
  if (op == NULL) return set_err(c, PS_ENOMEM, "out of memory");
  op->spec.optim = *o;
  op->fields = fields;
  return run(c, op, NULL);
}

static int simple_call(ps_client *c, ps__op_kind kind, ps_done_cb cb, void *arg,
                       ps_ticket *t) {
  if (c == NULL) return PS_EINVAL;
  ps__op *op = op_new(kind, NULL);
  if (op == NULL) return set_err(c, PS_ENOMEM, "out of memory");
  return start(c, op, cb, arg, t);
}

int ps_ping(ps_client *c) { return simple_call(c, PS__OP_PING, NULL, NULL, NULL); }

int ps_checkpoint(ps_client *c) { return simple_call(c, PS__OP_CHECKPOINT, NULL, NULL, NULL); }

int ps_barrier(ps_client *c) { return simple_call(c, PS__OP_BARRIER, NULL, NULL, NULL); }

int ps_ping_async(ps_client *c, ps_done_cb cb, void *arg, ps_ticket *t) {
  if (t == NULL) return PS_EINVAL;
  *t = 0;
  return simple_call(c, PS__OP_PING, cb, arg, t);
}

int ps_checkpoint_async(ps_client *c, ps_done_cb cb, void *arg, ps_ticket *t) {
  if (t == NULL) return PS_EINVAL;
  *t = 0;
  return simple_call(c, PS__OP_CHECKPOINT, cb, arg, t);
}

int ps_barrier_async(ps_client *c, ps_done_cb cb, void *arg, ps_ticket *t) {
  if (t == NULL) return PS_EINVAL;
  *t = 0;
  return simple_call(c, PS__OP_BARRIER, cb, arg, t);
}

/* The clock advances when the call is made, even if a shard then fails to
 * acknowledge it: later pulls and pushes carry the new clock either way. */
int64_t ps_clock(ps_client *c) {
  if (c == NULL) return PS_EINVAL;
  ps__op *op = op_new(PS__OP_CLOCK, NULL);
  if (op == NULL) return set_err(c, PS_ENOMEM, "out of memory");
  ps_ticket t = 0;
  uint64_t clock = 0;
  int rc = call_begin(c);
  if (rc != 0) {
    op_free(op);
    return rc;
  }
  rc = submit_clock(c, op, &t, &clock);
  if (rc == 0) rc = ps_wait(c, t, NULL);
  rc = call_end(c, rc);
  return rc != 0 ? rc : (int64_t)clock;
}

int ps_clock_async(ps_client *c, uint64_t *clock, ps_done_cb cb, void *arg, ps_ticket *t) {
  if (c == NULL || t == NULL) return PS_EINVAL;
  *t = 0;
  ps__op *op = op_new(PS__OP_CLOCK, NULL);
  if (op == NULL) return set_err(c, PS_ENOMEM, "out of memory");
  op->cb = cb;
  op->arg = arg;
  return submit_clock(c, op, t, clock);
}

/* ---- tables ------------------------------------------------------------------ */

int ps_create_table(ps_client *c, const char *name, uint32_t dim, const ps_table_spec *spec) {
  if (c == NULL) return PS_EINVAL;
  int rc = check_name(c, "create table", name);
  if (rc != 0) return rc;
  if (dim < 1 || dim > PSM_TABLE_DIM_MAX)
    return set_err(c, PS_EINVAL, "create table %s: dim %u is not in 1..%d", name, dim,
                   PSM_TABLE_DIM_MAX);
  ps__op *op = op_new(PS__OP_CREATE_TABLE, name);
  if (op == NULL) return set_err(c, PS_ENOMEM, "out of memory");
  op->dim = dim;
  if (spec != NULL) op->tspec = *spec;
  else ps_table_spec_init(&op->tspec, PS_INIT_NORMAL, PS_OPT_ADAM);
  op->max_frame = UINT64_MAX;
  return run(c, op, NULL);
}

/* A rows call: its arguments checked, then planned here when the table is
 * known (the calling thread does the grouping, the summing of repeated
 * keys and the finiteness test), else by the loop thread after a lookup. */
static int rows_call(ps_client *c, ps__op_kind kind, const char *verb, const char *name,
                     const uint64_t *keys, size_t n, const float *grads, float *out,
                     ps_done_cb cb, void *arg, ps_ticket *t) {
  if (t != NULL) *t = 0;
  if (c == NULL) return PS_EINVAL;
  int rc = check_name(c, verb, name);
  if (rc != 0) return rc;
  int push = kind != PS__OP_PULL_ROWS;
  if (n > UINT32_MAX - 1)
    return set_err(c, PS_EINVAL, "%s of %s: %zu keys in one call (at most %u)", verb, name, n,
                   UINT32_MAX - 1);
  if (n > 0 && (keys == NULL || (push && grads == NULL) ||
                (kind != PS__OP_PUSH_ROWS && out == NULL)))
    return set_err(c, PS_EINVAL, "%s of %s: a buffer is NULL", verb, name);
  ps__op *op = op_new(kind, name);
  if (op == NULL) return set_err(c, PS_ENOMEM, "out of memory");
  op->keys = keys;
  op->nkeys = n;
  op->in = grads;
  op->out = kind != PS__OP_PUSH_ROWS ? out : NULL;
  op->cb = cb;
  op->arg = arg;
  const ps__table *tb = ps__table_get(c, name);
  if (tb != NULL) {
    char err[256];
    ps__plan *p = malloc(sizeof(*p));
    rc = p ? ps__plan_build(c, p, tb, keys, n, push, grads, op->out, err, sizeof(err))
           : PS_ENOMEM;
    if (rc != 0) {
      if (p == NULL) snprintf(err, sizeof(err), "out of memory");
      ps__plan_free(c, p);
      op_free(op);
      return set_err(c, rc, "%s of %s: %s", verb, name, err);
    }
    op->plan = p;
    op->table = tb;
  }
  return submit(c, op, t);
}

int ps_pull_rows_async(ps_client *c, const char *name, const uint64_t *keys, size_t n,
                       float *out, ps_done_cb cb, void *arg, ps_ticket *t) {
  return rows_call(c, PS__OP_PULL_ROWS, "pull rows", name, keys, n, NULL, out, cb, arg, t);
}

int ps_push_rows_async(ps_client *c, const char *name, const uint64_t *keys, size_t n,
                       const float *grads, ps_done_cb cb, void *arg, ps_ticket *t) {
  return rows_call(c, PS__OP_PUSH_ROWS, "push rows", name, keys, n, grads, NULL, cb, arg, t);
}

int ps_push_pull_rows_async(ps_client *c, const char *name, const uint64_t *keys, size_t n,
                            const float *grads, float *out, ps_done_cb cb, void *arg,
                            ps_ticket *t) {
  return rows_call(c, PS__OP_PUSH_PULL_ROWS, "push-pull rows", name, keys, n, grads, out, cb,
                   arg, t);
}


int ps_pull_rows(ps_client *c, const char *name, const uint64_t *keys, size_t n, float *out) {
  ps_ticket t = 0;
  if (c == NULL) return PS_EINVAL;
  int rc = call_begin(c);
  if (rc != 0) return rc;
  rc = ps_pull_rows_async(c, name, keys, n, out, NULL, NULL, &t);
  if (rc == 0) rc = ps_wait(c, t, NULL);
  return call_end(c, rc);
}

int ps_push_rows(ps_client *c, const char *name, const uint64_t *keys, size_t n,
                 const float *grads) {
  ps_ticket t = 0;
  if (c == NULL) return PS_EINVAL;
  int rc = call_begin(c);
  if (rc != 0) return rc;
  rc = ps_push_rows_async(c, name, keys, n, grads, NULL, NULL, &t);
  if (rc == 0) rc = ps_wait(c, t, NULL);
  return call_end(c, rc);
}

int ps_push_pull_rows(ps_client *c, const char *name, const uint64_t *keys, size_t n,
                      const float *grads, float *out) {
  ps_ticket t = 0;
  if (c == NULL) return PS_EINVAL;
  int rc = call_begin(c);
  if (rc != 0) return rc;
  rc = ps_push_pull_rows_async(c, name, keys, n, grads, out, NULL, NULL, &t);
  if (rc == 0) rc = ps_wait(c, t, NULL);
  return call_end(c, rc);
}

int ps_num_shards(const ps_client *c) { return c ? c->servers.n : 0; }

int ps_metrics(ps_client *c, ps_client_metrics *out) {
  if (c == NULL || out == NULL) return PS_EINVAL;
  const uint64_t *src = (const uint64_t *)&c->m;
  uint64_t *dst = (uint64_t *)out;
  for (size_t i = 0; i < sizeof(*out) / sizeof(uint64_t); i++)
    dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
  return 0;
}

const char *ps_call_name(int kind) {
  static const char *const names[PS_CALL_KINDS] = {
      "pull", "push", "push_pull", "pull_range", "create", "lookup",
      "list", "stats", "ping", "checkpoint", "clock", "barrier",
      "delete", "reset", "set", "set_optim", "pull_rows", "push_rows", "push_pull_rows",
      "create_table"};
  return kind >= 0 && kind < PS_CALL_KINDS ? names[kind] : "?";
}
