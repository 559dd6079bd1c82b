/*
 * ops.c -- the loop thread's side of every call: starting an op (cutting a
 * tensor into per-block sub-requests to their owners), encoding requests,
 * applying replies, deadlines, heartbeats, the tensor cache and shutdown.
 *
 * Everything in this file runs on the handle's loop thread, except
 * ps__cache_free (after the thread ended). The only shared state it touches
 * is the submission queue and an op's `done` flag, under c->mu.
 *
 * Completion discipline: op_fail() only records the failure and cancels the
 * op's live subs; it never completes the op. Every entry point from libuv
 * ends with op_check_done(op), which completes the op once its last sub is
 * freed. After that call the op may already be freed by its waiter, so it
 * is always the last thing done with an op.
 */
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_int.h"
#include "log.h"
#include "msg.h"
#include "psmath.h"

uint64_t ps__next_id(ps_client *c) { return ++c->next_id; }

static const char *op_verb(ps__op_kind k) {
  static const char *verbs[] = {"connect", "create", "lookup", "pull", "push",
                                "push-pull", "pull", "list", "stats", "ping",
                                "checkpoint", "clock", "barrier", "jobs",
                                "job end", "job drop", "delete", "reset", "set",
                                "tune", "create table", "pull rows", "push rows",
                                "push-pull rows", "delete table", "reset table"};
  return verbs[k];
}

static void op_what(const ps__op *op, char *buf, size_t n) {
  if (op->name != NULL)
    snprintf(buf, n, "%s of %s", op_verb(op->kind), op->name);
  else
    snprintf(buf, n, "%s", op_verb(op->kind));
}

/* ---- the tensor cache -------------------------------------------------- */

static ps__tensor *cache_get(ps_client *c, const char *name, uint64_t hash) {
  for (ps__tensor *t = u64map_get_ptr(&c->tensors, hash); t != NULL; t = t->next)
    if (strcmp(t->name, name) == 0) return t;
  return NULL;
}

static void cache_evict(ps_client *c, const char *name) {
  uint64_t hash = psm_hash_name(name);
  /* It may come back with another spec: pushes compute the norm again
   * until its description is known. */
  pthread_mutex_lock(&c->mu);
  u64map_del(&c->noclip, hash, NULL);
  pthread_mutex_unlock(&c->mu);
  ps__tensor *head = u64map_get_ptr(&c->tensors, hash), **pp = &head;
  while (*pp != NULL && strcmp((*pp)->name, name) != 0) pp = &(*pp)->next;
  if (*pp == NULL) return;
  ps__tensor *t = *pp;
  *pp = t->next;
  if (head != NULL) u64map_put_ptr(&c->tensors, hash, head); /* a replacement: cannot fail */
  else u64map_del(&c->tensors, hash, NULL);
  free(t->name);
  free(t);
}

/* Remember what a TensorInfo says about `name`. Returns the entry, or NULL
 * with a sentence in err. */
static ps__tensor *cache_put(ps_client *c, const char *name,
                             const Psd__TensorInfo *ti, char *err, size_t errlen) {
  ps_tensor_spec spec;
  if (ti->spec == NULL || pmsg_spec_from_pb(ti->spec, &spec, err, errlen) != 0) {
    if (ti->spec == NULL) snprintf(err, errlen, "tensor description without a spec");
    return NULL;
  }
  size_t ndim = ti->spec->n_shape;
  if (ndim > PSD_MAX_NDIM) {
    snprintf(err, errlen, "tensor of rank %zu (at most %d supported)", ndim, PSD_MAX_NDIM);
    return NULL;
  }
  uint64_t numel = ti->has_numel ? ti->numel : psd_numel(ti->spec->shape, ndim);
  uint64_t block_size = spec.block_size ? spec.block_size : PSD_DEFAULT_BLOCK;
  /* What the shard says is what ops are cut by: refuse what no shard
   * would have created. */
  if (numel == 0 || numel > PSD_MAX_NUMEL || psp_nblocks(numel, block_size) > PSD_MAX_BLOCKS) {
    snprintf(err, errlen, "tensor of %" PRIu64 " elements in blocks of %" PRIu64
             " is outside psd's limits", numel, block_size);
    return NULL;
  }
  uint64_t hash = psm_hash_name(name);
  ps__tensor *t = cache_get(c, name, hash);
  if (t == NULL) {
    t = calloc(1, sizeof(*t));
    char *nm = strdup(name);
    if (t == NULL || nm == NULL) goto nomem;
    t->name = nm;
    t->hash = hash;
    t->next = u64map_get_ptr(&c->tensors, hash);
    if (u64map_put_ptr(&c->tensors, hash, t) != 0) {
      free(nm);
      goto nomem;
    }
  }
  /* Tell the submitting threads whether pushes need the gradient's norm. */
  pthread_mutex_lock(&c->mu);
  if (spec.optim.clip_norm > 0) u64map_del(&c->noclip, hash, NULL);
  else u64map_put(&c->noclip, hash, 1); /* no memory: the norm is computed */
  pthread_mutex_unlock(&c->mu);
  t->numel = numel;
  t->block_size = block_size;
  t->ndim = (int)ndim;
  for (size_t i = 0; i < ndim; i++) t->shape[i] = ti->spec->shape[i];
  return t;

nomem:
  free(t);
  snprintf(err, errlen, "out of memory");
  return NULL;
}

void ps__cache_free(ps_client *c) {
  size_t it = 0;
  uint64_t hash, v;
  while (u64map_next(&c->tensors, &it, &hash, &v)) {
    ps__tensor *t = (ps__tensor *)(uintptr_t)v;
    while (t != NULL) {
      ps__tensor *next = t->next;
      free(t->name);
      free(t);
      t = next;
    }
  }
  u64map_free(&c->tensors);
}

/* ---- completing ops ---------------------------------------------------- */

/* The public call kind of an op, or -1 (connect). */
static int call_kind(ps__op_kind k) {
  switch (k) {
    case PS__OP_PULL: return PS_CALL_PULL;
    case PS__OP_PUSH: return PS_CALL_PUSH;
    case PS__OP_PUSH_PULL: return PS_CALL_PUSH_PULL;
    case PS__OP_PULL_RANGE: return PS_CALL_PULL_RANGE;
    case PS__OP_CREATE: return PS_CALL_CREATE;
    case PS__OP_LOOKUP: return PS_CALL_LOOKUP;
    case PS__OP_LIST: return PS_CALL_LIST;
    case PS__OP_STATS: return PS_CALL_STATS;
    case PS__OP_PING: return PS_CALL_PING;
    case PS__OP_CHECKPOINT: return PS_CALL_CHECKPOINT;
    case PS__OP_CLOCK: return PS_CALL_CLOCK;
    case PS__OP_BARRIER: return PS_CALL_BARRIER;
    case PS__OP_DELETE:
    case PS__OP_DELETE_TABLE: return PS_CALL_DELETE;
    case PS__OP_RESET:
    case PS__OP_RESET_TABLE: return PS_CALL_RESET;
    case PS__OP_SET: return PS_CALL_SET;
    case PS__OP_TUNE: return PS_CALL_SET_OPTIM;
    case PS__OP_PULL_ROWS: return PS_CALL_PULL_ROWS;
    case PS__OP_PUSH_ROWS: return PS_CALL_PUSH_ROWS;
    case PS__OP_PUSH_PULL_ROWS: return PS_CALL_PUSH_PULL_ROWS;
    case PS__OP_CREATE_TABLE: return PS_CALL_CREATE_TABLE;
    default: return -1;
  }
}

static void op_count(ps__op *op) {
  ps_client *c = op->c;
  int k = call_kind(op->kind);
  if (k < 0) return;
  uint64_t ns = uv_hrtime() - op->t_submit;
  ps_call_metrics *m = &c->m.calls[k];
  __atomic_fetch_add(&m->calls, 1, __ATOMIC_RELAXED);
  if (op->status != 0) __atomic_fetch_add(&m->errors, 1, __ATOMIC_RELAXED);
  __atomic_fetch_add(&m->latency_sum_ns, ns, __ATOMIC_RELAXED);
  /* Only this thread writes it. */
  if (ns > __atomic_load_n(&m->latency_max_ns, __ATOMIC_RELAXED))
    __atomic_store_n(&m->latency_max_ns, ns, __ATOMIC_RELAXED);
}

/* Lookup and list: every shard has answered (or the op failed). */
static void finish_info(ps__op *op) {
  if (op->kind == PS__OP_LOOKUP && op->status == 0)
    op->info->version = ps__vacc_version(&op->vacc, op->info);
  else if (op->kind == PS__OP_LOOKUP)
    ps_tensor_info_free(op->info); /* a shard answered before another failed */
  else if (op->status == 0)
    ps__infolist_finish(&op->list, op->infos, op->ninfos);
  else
    ps__infolist_free(&op->list);
}

static void op_complete(ps__op *op) {
  ps_client *c = op->c;
  /* A delete that some shard did not know still deleted it elsewhere (a
   * resend of a delete already done, a shard restored from an older
   * checkpoint): only a name no shard knew fails. */
  if ((op->kind == PS__OP_DELETE || op->kind == PS__OP_DELETE_TABLE) && op->status == 0 &&
      op->notfound == c->servers.n) {
    op->status = PS_ENOTFOUND;
    snprintf(op->errmsg, sizeof(op->errmsg), "%s of %s: no shard knows a %s of that name",
             op_verb(op->kind), op->name, op->kind == PS__OP_DELETE ? "tensor" : "table");
  }
  op->completed = 1;
  op_count(op);
  if (op->prev) op->prev->next = op->next;
  else if (c->active == op) c->active = op->next;
  if (op->next) op->next->prev = op->prev;
  if (c->connect_op == op) c->connect_op = NULL;
  if (op->version == UINT64_MAX) op->version = 0;
  /* A rows call's replies, in the order of its keys. */
  if (op->status == 0 && op->plan != NULL) ps__plan_scatter(op->plan, op->out);
  if (op->kind == PS__OP_LOOKUP || op->kind == PS__OP_LIST) finish_info(op);
  if (op->cb != NULL) op->cb(c, op->ticket, op->status, op->version, op->arg);
  pthread_mutex_lock(&c->mu);
  op->done = 1; /* from here on the waiter owns (and may free) op */
  c->nundone--;
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
}

static void op_check_done(ps__op *op) {
  if (op->completed || op->starting || op->subs != NULL) return;
  if (op->hold && op->status == 0) return;
  op_complete(op);
}

static void sub_free(ps__sub *s) {
  ps__op *op = s->op;
  ps__lane_release(s);
  if (s->oprev) s->oprev->onext = s->onext;
  else op->subs = s->onext;
  if (s->onext) s->onext->oprev = s->oprev;
  free(s);
}

/* A sub that is no longer live goes once its frame left the write queue. */
static void sub_release(ps__sub *s) {
  ps__shard_unlink(s);
  if (s->writing == 0 && !s->reading) sub_free(s);
}

/* Record the first failure of op and drop its un-answered subs: their late
 * replies will be ignored. Does not complete op (see the top). */
static void op_fail(ps__op *op, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void op_fail(ps__op *op, int code, const char *fmt, ...) {
  if (op->completed) return;
  if (op->status == 0) {
    va_list ap;
    va_start(ap, fmt);
    op->status = code;
    vsnprintf(op->errmsg, sizeof(op->errmsg), fmt, ap);
    va_end(ap);
  }
  for (ps__sub *s = op->subs, *next; s != NULL; s = next) {
    next = s->onext;
    if (s->live) sub_release(s);
  }
}

void ps__sub_fail(ps__sub *sub, int code, const char *msg) {
  ps__op *op = sub->op;
  op_fail(op, code, "%s", msg);
  op_check_done(op);
}

void ps__sub_written(ps__sub *sub) {
  sub->writing--;
  if (!sub->live && sub->writing == 0 && !sub->reading) {
    ps__op *op = sub->op;
    sub_free(sub);
    op_check_done(op);
  }
}

void ps__sub_read_done(ps__sub *sub) {
  sub->reading = 0;
  if (!sub->live && sub->writing == 0) {
    ps__op *op = sub->op;
    sub_free(sub);
    op_check_done(op);
  }
}

/* ---- starting ops ------------------------------------------------------ */

/* Add a sub to op and queue it on sh. NULL if op failed meanwhile. */
static ps__sub *sub_add(ps__op *op, ps__shard *sh, ps__sub_kind kind, uint64_t block) {
  if (op->status != 0) return NULL;
  ps__sub *s = calloc(1, sizeof(*s));
  if (s == NULL) {
    op_fail(op, PS_ENOMEM, "out of memory");
    return NULL;
  }
  s->op = op;
  s->sh = sh;
  s->kind = kind;
  s->block = block;
  s->id = ps__next_id(op->c);
  if (kind == PS__SUB_PUSH || kind == PS__SUB_SET || kind == PS__SUB_PUSH_ROWS)
    s->seq = ++sh->seq;
  s->onext = op->subs;
  if (op->subs) op->subs->oprev = s;
  op->subs = s;
  int r = ps__shard_submit(sh, s);
  if (r != 0) {
    sub_free(s);
    op_fail(op, r, "%s", r == PS_ENOMEM ? "out of memory" : sh->fatal_msg);
    return NULL;
  }
  return op->status == 0 ? s : NULL;
}

static void fmt_shape(const ps__tensor *t, char *buf, size_t n) {
  size_t k = 0;
  buf[0] = '\0';
  for (int i = 0; i < t->ndim && k < n; i++)
    k += (size_t)snprintf(buf + k, n - k, i ? ",%" PRIu64 : "%" PRIu64, t->shape[i]);
}

/* Cut a tensor op into one sub per block it touches, each to its owner. */
static void expand(ps__op *op, const ps__tensor *t) {
  ps_client *c = op->c;
  char what[PSD_MAX_NAME + 32], shape[256];
  op->numel = t->numel;
  op->block_size = t->block_size;
  op->name_hash = t->hash;
  op_what(op, what, sizeof(what));
  fmt_shape(t, shape, sizeof(shape));
  if (op->kind == PS__OP_PULL_RANGE || op->kind == PS__OP_SET) {
    if (op->offset > t->numel || op->count > t->numel - op->offset) {
      op_fail(op, PS_ESHAPE, "%s: elements [%" PRIu64 ", %" PRIu64 ") are outside "
              "the tensor's %" PRIu64 " elements (shape [%s])", what, op->offset,
              op->offset + op->count, t->numel, shape);
      return;
    }
  } else if (op->count != t->numel) {
    op_fail(op, PS_ESHAPE, "%s: count %" PRIu64 " does not match the tensor's %"
            PRIu64 " elements (shape [%s])", what, op->count, t->numel, shape);
    return;
  }
  ps__sub_kind kind = op->kind == PS__OP_SET ? PS__SUB_SET
                      : (op->kind == PS__OP_PUSH || op->kind == PS__OP_PUSH_PULL)
                          ? PS__SUB_PUSH : PS__SUB_PULL;
  uint64_t first = op->offset / t->block_size;
  uint64_t last = (op->offset + op->count - 1) / t->block_size;
  for (uint64_t b = first; b <= last; b++) {
    ps__shard *sh = &c->shards[psp_owner(&c->servers, t->hash, b)];
    if (sub_add(op, sh, kind, b) == NULL) return;
  }
}

static int is_rows(const ps__op *op) {
  return op->kind == PS__OP_PULL_ROWS || op->kind == PS__OP_PUSH_ROWS ||
         op->kind == PS__OP_PUSH_PULL_ROWS;
}

/* A rows call, planned: one sub per frame, each to its shard. */
static void expand_rows(ps__op *op) {
  ps_client *c = op->c;
  ps__sub_kind kind = op->kind == PS__OP_PULL_ROWS ? PS__SUB_PULL_ROWS : PS__SUB_PUSH_ROWS;
  for (size_t f = 0; f < op->plan->nframes; f++)
    if (sub_add(op, &c->shards[op->plan->frames[f].shard], kind, f) == NULL) return;
}

/* The table of a rows call became known (a lookup's reply): plan it here. */
static void plan_rows(ps__op *op, const ps__table *t) {
  char err[256];
  ps__plan *p = malloc(sizeof(*p));
  int rc = p ? ps__plan_build(op->c, p, t, op->keys, op->nkeys, op->kind != PS__OP_PULL_ROWS,
                              op->in, op->out, err, sizeof(err))
             : PS_ENOMEM;
  if (rc != 0) {
    if (p == NULL) snprintf(err, sizeof(err), "out of memory");
    ps__plan_free(op->c, p);
    char what[PSD_MAX_NAME + 32];
    op_what(op, what, sizeof(what));
    op_fail(op, rc, "%s: %s", what, err);
    return;
  }
  op->plan = p;
  op->table = t;
  expand_rows(op);
}

static void op_link(ps_client *c, ps__op *op) {
  op->deadline = uv_now(&c->loop) + (uint64_t)(op->kind == PS__OP_CONNECT
                                                   ? c->opts.connect_timeout_ms
                                                   : c->opts.op_timeout_ms);
  op->next = c->active;
  if (c->active) c->active->prev = op;
  c->active = op;
}

static void op_start(ps_client *c, ps__op *op) {
  op_link(c, op);
  op->starting = 1;
  int n = c->servers.n;
  switch (op->kind) {
    case PS__OP_CONNECT:
      c->connect_op = op;
      break;
    case PS__OP_CREATE:
    case PS__OP_DELETE:
    case PS__OP_RESET:
    case PS__OP_TUNE:
    case PS__OP_DELETE_TABLE:
    case PS__OP_RESET_TABLE: {
      /* Every shard holds every tensor's (and table's) description. */
      ps__sub_kind k = op->kind == PS__OP_CREATE         ? PS__SUB_CREATE
                       : op->kind == PS__OP_DELETE       ? PS__SUB_DELETE
                       : op->kind == PS__OP_RESET        ? PS__SUB_RESET
                       : op->kind == PS__OP_DELETE_TABLE ? PS__SUB_DELETE_TABLE
                       : op->kind == PS__OP_RESET_TABLE  ? PS__SUB_RESET_TABLE
                                                         : PS__SUB_TUNE;
      for (int i = 0; i < n; i++)
        if (sub_add(op, &c->shards[i], k, 0) == NULL) break;
      break;
    }
    case PS__OP_LOOKUP:
      /* Every shard: each knows only its own blocks' versions (info.c). */
      ps__vacc_init(&op->vacc);
      for (int i = 0; i < n; i++)
        if (sub_add(op, &c->shards[i], PS__SUB_LOOKUP, 0) == NULL) break;
      break;
    case PS__OP_PULL:
    case PS__OP_PUSH:
    case PS__OP_PUSH_PULL:
    case PS__OP_PULL_RANGE:
    case PS__OP_SET: {
      ps__tensor *t = cache_get(c, op->name, psm_hash_name(op->name));
      if (t != NULL) expand(op, t);
      else sub_add(op, &c->shards[0], PS__SUB_LOOKUP, 0);
      break;
    }
    case PS__OP_LIST:
      for (int i = 0; i < n; i++)
        if (sub_add(op, &c->shards[i], PS__SUB_LIST, 0) == NULL) break;
      break;
    case PS__OP_CREATE_TABLE:
      for (int i = 0; i < n; i++)
        if (sub_add(op, &c->shards[i], PS__SUB_CREATE_TABLE, 0) == NULL) break;
      break;
    case PS__OP_PULL_ROWS:
    case PS__OP_PUSH_ROWS:
    case PS__OP_PUSH_PULL_ROWS:
      if (op->plan != NULL) expand_rows(op);
      else sub_add(op, &c->shards[0], PS__SUB_LOOKUP_TABLE, 0);
      break;
    case PS__OP_STATS:
      sub_add(op, &c->shards[op->shard], PS__SUB_STATS, 0);
      break;
    case PS__OP_PING:
    case PS__OP_CHECKPOINT:
    case PS__OP_CLOCK: {
      ps__sub_kind k = op->kind == PS__OP_PING ? PS__SUB_PING
                       : op->kind == PS__OP_CHECKPOINT ? PS__SUB_CHECKPOINT
                                                       : PS__SUB_CLOCK;
      for (int i = 0; i < n; i++)
        if (sub_add(op, &c->shards[i], k, 0) == NULL) break;
      break;
    }
    case PS__OP_BARRIER:
      sub_add(op, &c->shards[0], PS__SUB_BARRIER, 0);
      break;
    case PS__OP_JOBS:
    case PS__OP_JOB_END:
    case PS__OP_JOB_DROP: {
      ps__sub_kind k = op->kind == PS__OP_JOBS      ? PS__SUB_JOBS
                       : op->kind == PS__OP_JOB_END ? PS__SUB_JOB_END
                                                    : PS__SUB_JOB_DROP;
      for (int i = 0; i < n; i++)
        if (sub_add(op, &c->shards[i], k, 0) == NULL) break;
      break;
    }
  }
  op->starting = 0;
  if (op->kind == PS__OP_CONNECT) ps__shard_event(c, NULL);
  else op_check_done(op);
}

/* ---- requests and replies ---------------------------------------------- */

/* Block b of a tensor op: its elements [*first, *first + return value). */
static uint64_t block_range(const ps__op *op, uint64_t b, uint64_t *first) {
  return psp_block_range(op->numel, op->block_size, b, first);
}

static uint64_t block_len(const ps__op *op, uint64_t b) {
  uint64_t first;
  return block_range(op, b, &first);
}

int ps__sub_encode(ps__sub *sub, psw_frame *f) {
  const ps__op *op = sub->op;
  Psd__Request req = PSD__REQUEST__INIT;
  pmsg_spec_pb spec;
  Psd__Create create = PSD__CREATE__INIT;
  Psd__Lookup lookup = PSD__LOOKUP__INIT;
  Psd__Pull pull = PSD__PULL__INIT;
  Psd__Push push = PSD__PUSH__INIT;
  Psd__List list = PSD__LIST__INIT;
  Psd__Stats stats = PSD__STATS__INIT;
  Psd__Ping ping = PSD__PING__INIT;
  Psd__Checkpoint ckpt = PSD__CHECKPOINT__INIT;
  Psd__Clock clock = PSD__CLOCK__INIT;
  Psd__Barrier barrier = PSD__BARRIER__INIT;
  Psd__Jobs jobs = PSD__JOBS__INIT;
  Psd__JobEnd job_end = PSD__JOB_END__INIT;
  Psd__JobDrop job_drop = PSD__JOB_DROP__INIT;
  Psd__Delete del = PSD__DELETE__INIT;
  Psd__Reset reset = PSD__RESET__INIT;
  Psd__Set set = PSD__SET__INIT;
  Psd__Tune tune = PSD__TUNE__INIT;
  Psd__OptimSpec optim;
  Psd__CreateTable create_table = PSD__CREATE_TABLE__INIT;
  Psd__LookupTable lookup_table = PSD__LOOKUP_TABLE__INIT;
  Psd__PullRows pull_rows = PSD__PULL_ROWS__INIT;
  Psd__PushRows push_rows = PSD__PUSH_ROWS__INIT;
  pmsg_table_pb tspec;
  const ps__frame *fr = NULL;
  const void *vals = NULL;
  size_t vlen = 0;

  req.id = sub->id;
  switch (sub->kind) {
    case PS__SUB_CREATE:
      pmsg_spec_to_pb(&spec, &op->spec, op->shape, op->ndim);
      create.name = op->name;
      create.spec = &spec.ts;
      req.body_case = PSD__REQUEST__BODY_CREATE, req.create = &create;
      break;
    case PS__SUB_LOOKUP:
      lookup.name = op->name;
      req.body_case = PSD__REQUEST__BODY_LOOKUP, req.lookup = &lookup;
      break;
    case PS__SUB_PULL:
      pull.name = op->name;
      pull.block = sub->block;
      pull.has_clock = 1, pull.clock = op->clock;
      pull.lane_out = ps__lane_slot(sub, block_len(op, sub->block) * sizeof(float));
      pull.has_lane_out = pull.lane_out != 0;
      pull.has_lane_len = pull.has_lane_out, pull.lane_len = sub->lane_len;
      req.body_case = PSD__REQUEST__BODY_PULL, req.pull = &pull;
      break;
    case PS__SUB_PUSH:
      push.name = op->name;
      push.block = sub->block;
      push.has_seq = 1, push.seq = sub->seq;
      push.has_grad_norm = op->has_norm, push.grad_norm = op->grad_norm;
      push.has_want_values = 1, push.want_values = op->kind == PS__OP_PUSH_PULL;
      push.has_clock = 1, push.clock = op->clock;
      req.body_case = PSD__REQUEST__BODY_PUSH, req.push = &push;
      /* Zero copy: the frame points at the caller's gradient. Or, on a
       * lane, one copy into shared memory and none through the kernel. */
      uint64_t first, n = block_range(op, sub->block, &first);
      vals = op->in + first;
      vlen = (size_t)n * sizeof(float);
      uint64_t slot = ps__lane_slot(sub, vlen);
      if (slot != 0) {
        memcpy(sub->sh->lane.base + slot, vals, vlen);
        PS__COUNT(op->c, lane_bytes, vlen);
        push.has_lane_in = 1, push.lane_in = slot;
        push.has_lane_len = 1, push.lane_len = vlen;
        if (push.want_values) push.has_lane_out = 1, push.lane_out = slot;
        vals = NULL;
        vlen = 0;
      }
      break;
    case PS__SUB_LIST:
      req.body_case = PSD__REQUEST__BODY_LIST, req.list = &list;
      break;
    case PS__SUB_STATS:
      req.body_case = PSD__REQUEST__BODY_STATS, req.stats = &stats;
      break;
    case PS__SUB_PING:
      req.body_case = PSD__REQUEST__BODY_PING, req.ping = &ping;
      break;
    case PS__SUB_CHECKPOINT:
      req.body_case = PSD__REQUEST__BODY_CHECKPOINT, req.checkpoint = &ckpt;
      break;
    case PS__SUB_CLOCK:
      clock.clock = op->clock;
      req.body_case = PSD__REQUEST__BODY_CLOCK, req.clock = &clock;
      break;
    case PS__SUB_BARRIER:
      barrier.gen = op->clock;
      req.body_case = PSD__REQUEST__BODY_BARRIER, req.barrier = &barrier;
      break;
    case PS__SUB_JOBS:
      req.body_case = PSD__REQUEST__BODY_JOBS, req.jobs = &jobs;
      break;
    case PS__SUB_JOB_END:
      job_end.job = op->name;
      req.body_case = PSD__REQUEST__BODY_JOB_END, req.job_end = &job_end;
      break;
    case PS__SUB_JOB_DROP:
      job_drop.job = op->name;
      req.body_case = PSD__REQUEST__BODY_JOB_DROP, req.job_drop = &job_drop;
      break;
    case PS__SUB_DELETE:
    case PS__SUB_DELETE_TABLE:
      del.name = op->name;
      if (sub->kind == PS__SUB_DELETE_TABLE) del.has_table = 1, del.table = 1;
      req.body_case = PSD__REQUEST__BODY_DELETE, req.delete_ = &del;
      break;
    case PS__SUB_RESET:
    case PS__SUB_RESET_TABLE:
      reset.name = op->name;
      if (sub->kind == PS__SUB_RESET_TABLE) reset.has_table = 1, reset.table = 1;
      req.body_case = PSD__REQUEST__BODY_RESET, req.reset = &reset;
      break;
    case PS__SUB_SET: {
      /* The part of the caller's range in this block, from the caller's
       * buffer (zero copy). */
      uint64_t blo, bn = block_range(op, sub->block, &blo);
      uint64_t lo = op->offset > blo ? op->offset : blo;
      uint64_t hi = op->offset + op->count < blo + bn ? op->offset + op->count : blo + bn;
      set.name = op->name;
      set.block = sub->block;
      set.has_offset = 1, set.offset = lo - blo;
      set.has_zero_state = 1, set.zero_state = (op->flags & PS_SET_ZERO_STATE) != 0;
      set.has_seq = 1, set.seq = sub->seq;
      req.body_case = PSD__REQUEST__BODY_SET, req.set = &set;
      vals = op->in + (lo - op->offset);
      vlen = (size_t)(hi - lo) * sizeof(float);
      break;
    }
    case PS__SUB_TUNE:
      pmsg_optim_fields_to_pb(&optim, &op->spec.optim, op->fields);
      tune.name = op->name; /* NULL: every tensor of the job */
      tune.optim = &optim;
      req.body_case = PSD__REQUEST__BODY_TUNE, req.tune = &tune;
      break;
    case PS__SUB_CREATE_TABLE:
      pmsg_table_to_pb(&tspec, &op->tspec);
      create_table.name = op->name;
      create_table.dim = op->dim;
      create_table.spec = &tspec.ts;
      req.body_case = PSD__REQUEST__BODY_CREATE_TABLE, req.create_table = &create_table;
      break;
    case PS__SUB_LOOKUP_TABLE:
      lookup_table.name = op->name;
      req.body_case = PSD__REQUEST__BODY_LOOKUP_TABLE, req.lookup_table = &lookup_table;
      break;
    case PS__SUB_PULL_ROWS:
      /* Zero copy: the frame points at the plan's keys. */
      fr = &op->plan->frames[sub->block];
      pull_rows.name = op->name;
      pull_rows.n = fr->n;
      pull_rows.has_clock = 1, pull_rows.clock = op->clock;
      req.body_case = PSD__REQUEST__BODY_PULL_ROWS, req.pull_rows = &pull_rows;
      vals = op->plan->buf + fr->off;
      vlen = fr->len;
      break;
    case PS__SUB_PUSH_ROWS:
      fr = &op->plan->frames[sub->block];
      push_rows.name = op->name;
      push_rows.n = fr->n;
      push_rows.has_seq = 1, push_rows.seq = sub->seq;
      push_rows.has_grad_norm = op->plan->has_norm, push_rows.grad_norm = op->plan->grad_norm;
      push_rows.has_want_values = 1;
      push_rows.want_values = op->kind == PS__OP_PUSH_PULL_ROWS;
      push_rows.has_clock = 1, push_rows.clock = op->clock;
      req.body_case = PSD__REQUEST__BODY_PUSH_ROWS, req.push_rows = &push_rows;
      vals = op->plan->buf + fr->off;
      vlen = fr->len;
      break;
  }
  /* An empty frame still says how many values it carries (none). */
  if (vals != NULL && vlen == 0) vals = "";
  return psw_encode(f, &req.base, vals, vlen);
}

/* Add one shard's job list to op's: a job's blocks, bytes and pending
 * rounds are summed over the shards; its run, size, workers and clocks are
 * the shards' (they agree once every worker has said hello everywhere: the
 * latest run, the fewest live workers, the widest clock range are kept). */
static int jobs_merge(ps__op *op, const Psd__JobList *jl) {
  for (size_t i = 0; i < jl->n_jobs; i++) {
    const Psd__JobInfo *ji = jl->jobs[i];
    ps_job_info *j = NULL;
    for (size_t k = 0; k < *op->njobs; k++)
      if (strcmp((*op->jobs)[k].name, ji->name) == 0) j = &(*op->jobs)[k];
    if (j == NULL) {
      ps_job_info *nj = realloc(*op->jobs, (*op->njobs + 1) * sizeof(*nj));
      if (nj == NULL) return -1;
      *op->jobs = nj;
      j = &nj[(*op->njobs)++];
      memset(j, 0, sizeof(*j));
      if ((j->name = strdup(ji->name)) == NULL) {
        (*op->njobs)--;
        return -1;
      }
      j->ended = 1;
      j->live = UINT32_MAX;
      j->clock_min = UINT64_MAX;
      j->staleness = -1;
    }
    j->shards++;
    if (ji->incarnation > j->incarnation) j->incarnation = ji->incarnation;
    j->ended = j->ended && ji->ended;
    if (ji->configured) {
      j->num_workers = ji->num_workers;
      j->staleness = ji->staleness;
    }
    if (ji->live < j->live) j->live = ji->live;
    if (ji->has_clock_min && ji->clock_min < j->clock_min) j->clock_min = ji->clock_min;
    if (ji->has_clock_max && ji->clock_max > j->clock_max) j->clock_max = ji->clock_max;
    if (ji->tensors > j->tensors) j->tensors = ji->tensors;
    j->blocks += ji->blocks_here;
    j->bytes += ji->bytes_here;
    j->rounds_pending += ji->rounds_pending;
  }
  return 0;
}

/* Copy the part of block b's values that op asked for into its buffer. */
static void copy_block(ps__op *op, uint64_t b, const uint8_t *vals) {
  uint64_t blo, n = block_range(op, b, &blo);
  uint64_t bhi = blo + n;
  uint64_t lo = op->offset > blo ? op->offset : blo;
  uint64_t hi = op->offset + op->count < bhi ? op->offset + op->count : bhi;
  memcpy(op->out + (lo - op->offset), vals + (lo - blo) * sizeof(float),
         (size_t)(hi - lo) * sizeof(float));
}

uint8_t *ps__sub_direct_dst(ps__sub *sub, const Psd__Response *r, size_t vlen) {
  ps__op *op = sub->op;
  if ((sub->kind == PS__SUB_PULL_ROWS || sub->kind == PS__SUB_PUSH_ROWS) && op->status == 0 &&
      op->out != NULL && r->body_case == PSD__RESPONSE__BODY_ROWS) {
    /* The rows of a frame land in the plan's place for them (the gradients
     * were copied into the plan: out may alias them). */
    const ps__frame *fr = &op->plan->frames[sub->block];
    if (vlen != fr->n * op->plan->dim * sizeof(float)) return NULL;
    return (uint8_t *)(op->plan->vals + fr->first * op->plan->dim);
  }
  if (op->status != 0 || op->out == NULL || r->body_case != PSD__RESPONSE__BODY_BLOCK ||
      (sub->kind != PS__SUB_PULL && sub->kind != PS__SUB_PUSH))
    return NULL;
  uint64_t blo, n = block_range(op, sub->block, &blo);
  /* Whole blocks only: a range that cuts a block goes through copy_block. */
  if (vlen != n * sizeof(float) || op->offset > blo || op->offset + op->count < blo + n)
    return NULL;
  /* A push-pull whose output overlaps its gradient (grad == out is allowed)
   * must not read in place: a connection cut mid-reply would leave the
   * gradient half overwritten, and the resend would carry that. Such
   * replies are copied only once complete. */
  if (sub->kind == PS__SUB_PUSH && op->in != NULL &&
      (const float *)op->out < op->in + op->offset + op->count &&
      op->in < (const float *)op->out + op->count)
    return NULL;
  return (uint8_t *)(op->out + (blo - op->offset));
}

static void reply_ok(ps__sub *sub, const Psd__Response *r, const uint8_t *vals,
                     size_t vlen) {
  ps__op *op = sub->op;
  ps_client *c = op->c;
  const char *addr = sub->sh->addr;
  char err[256];
  int want;

  switch (sub->kind) {
    case PS__SUB_CREATE:
    case PS__SUB_LOOKUP:
    case PS__SUB_RESET: {
      want = PSD__RESPONSE__BODY_INFO;
      if (r->body_case != PSD__RESPONSE__BODY_INFO) break;
      ps__tensor *t = cache_put(c, op->name, r->info, err, sizeof(err));
      if (t == NULL) {
        op_fail(op, PS_EBADFRAME, "%s: %s", addr, err);
      } else if (op->kind == PS__OP_CREATE && op->block_size != 0 &&
                 op->block_size != t->block_size) {
        /* Shards that cut a tensor differently would place its blocks
         * inconsistently: refuse rather than write to the wrong place. */
        op_fail(op, PS_ESPEC, "%s: shards disagree on the block size of %s (%" PRIu64
                " vs %" PRIu64 "): start every shard with the same --block-size, or set "
                "block_size in the spec", addr, op->name, op->block_size, t->block_size);
      } else if (op->kind == PS__OP_CREATE || op->kind == PS__OP_RESET) {
        op->block_size = t->block_size;
      } else if (op->kind == PS__OP_LOOKUP) {
        /* The first answer describes the tensor; every one adds its
         * blocks' versions. */
        if (op->info->name == NULL &&
            ps__info_from_pb(r->info, op->info, err, sizeof(err)) != 0)
          op_fail(op, PS_EBADFRAME, "%s: %s", addr, err);
        ps__vacc_add(&op->vacc, r->info);
      } else if (op->kind != PS__OP_CREATE) {
        op->starting = 1;
        expand(op, t);
        op->starting = 0;
      }
      return;
    }
    case PS__SUB_PULL:
    case PS__SUB_PUSH:
    case PS__SUB_SET: {
      want = PSD__RESPONSE__BODY_BLOCK;
      if (r->body_case != PSD__RESPONSE__BODY_BLOCK) break;
      if (op->kind == PS__OP_SET) {
        /* No values come back. */
      } else if (op->kind != PS__OP_PUSH && vals == NULL && vlen > 0) {
        /* Read into place by conn.c after ps__sub_direct_dst said where. */
      } else if (op->kind != PS__OP_PUSH) {
        uint64_t n = block_len(op, sub->block);
        if (vlen != n * sizeof(float)) {
          op_fail(op, PS_EBADFRAME, "%s: block %" PRIu64 " of %s came with %zu bytes of "
                  "values, expected %" PRIu64, addr, sub->block, op->name, vlen,
                  n * sizeof(float));
          return;
        }
        copy_block(op, sub->block, vals);
      }
      if (r->block->version < op->version) op->version = r->block->version;
      if (r->block->duplicate)
        log_debug("%s: push of %s block %" PRIu64 " seq %" PRIu64 " was a duplicate",
                  addr, op->name, sub->block, sub->seq);
      return;
    }
    case PS__SUB_CREATE_TABLE:
    case PS__SUB_LOOKUP_TABLE: {
      want = PSD__RESPONSE__BODY_TABLES;
      if (r->body_case != PSD__RESPONSE__BODY_TABLES || r->tables->n_tables < 1) break;
      const Psd__TableInfo *ti = r->tables->tables[0];
      uint64_t mf = ti->has_max_frame ? ti->max_frame : PSW_DEFAULT_MAX_FRAME;
      if (op->kind == PS__OP_CREATE_TABLE && op->max_frame < mf) mf = op->max_frame;
      op->max_frame = mf;
      /* Frames stay below every shard's limit: a create learns them all;
       * a lookup asks one shard (every shard of a job should have the same). */
      const ps__table *t = ps__table_put(c, op->name, ti, mf, err, sizeof(err));
      if (t == NULL) op_fail(op, PS_EBADFRAME, "%s: %s", addr, err);
      else if (op->kind != PS__OP_CREATE_TABLE) {
        op->starting = 1;
        plan_rows(op, t);
        op->starting = 0;
      }
      return;
    }
    case PS__SUB_PULL_ROWS:
    case PS__SUB_PUSH_ROWS: {
      want = PSD__RESPONSE__BODY_ROWS;
      if (r->body_case != PSD__RESPONSE__BODY_ROWS) break;
      const ps__frame *fr = &op->plan->frames[sub->block];
      size_t bytes = fr->n * op->plan->dim * sizeof(float);
      if (op->out != NULL && vals == NULL && vlen > 0) {
        /* Read into place by conn.c after ps__sub_direct_dst said where. */
      } else if (op->out != NULL) {
        if (r->rows->n != fr->n || vlen != bytes) {
          op_fail(op, PS_EBADFRAME, "%s: %zu rows of %s asked for, the reply carries %llu "
                  "(%zu bytes)", addr, fr->n, op->name, (unsigned long long)r->rows->n, vlen);
          return;
        }
        if (bytes > 0) memcpy(op->plan->vals + fr->first * op->plan->dim, vals, bytes);
      }
      if (r->rows->step < op->version) op->version = r->rows->step;
      return;
    }
    case PS__SUB_LIST: {
      want = PSD__RESPONSE__BODY_LIST;
      if (r->body_case != PSD__RESPONSE__BODY_LIST) break;
      int rc = ps__infolist_merge(&op->list, r->list, err, sizeof(err));
      if (rc != 0) op_fail(op, rc, "list: %s: %s", addr, err);
      return;
    }
    case PS__SUB_TUNE: {
      /* The specs as tuned: pushes learn whether they must send the norm
       * (clip_norm may have changed). */
      want = PSD__RESPONSE__BODY_LIST;
      if (r->body_case != PSD__RESPONSE__BODY_LIST) break;
      for (size_t i = 0; i < r->list->n_tensors; i++) {
        const Psd__TensorInfo *ti = r->list->tensors[i];
        if (ti->name != NULL && cache_put(c, ti->name, ti, err, sizeof(err)) == NULL) {
          op_fail(op, PS_EBADFRAME, "%s: %s", addr, err);
          return;
        }
      }
      return;
    }
    case PS__SUB_DELETE:
      want = PSD__RESPONSE__BODY_ACK;
      if (r->body_case != PSD__RESPONSE__BODY_ACK) break;
      cache_evict(c, op->name);
      return;
    case PS__SUB_DELETE_TABLE:
      /* A table made again under this name may have another dim: the next
       * rows call looks it up. */
      want = PSD__RESPONSE__BODY_ACK;
      if (r->body_case != PSD__RESPONSE__BODY_ACK) break;
      ps__table_forget(c, op->name);
      return;
    case PS__SUB_RESET_TABLE:
      want = PSD__RESPONSE__BODY_TABLES;
      if (r->body_case != PSD__RESPONSE__BODY_TABLES || r->tables->n_tables < 1) break;
      return;
    case PS__SUB_STATS:
      want = PSD__RESPONSE__BODY_STATS;
      if (r->body_case != PSD__RESPONSE__BODY_STATS) break;
      *op->json = strdup(r->stats->json ? r->stats->json : "{}");
      if (*op->json == NULL) op_fail(op, PS_ENOMEM, "stats: out of memory");
      return;
    case PS__SUB_JOBS:
      want = PSD__RESPONSE__BODY_JOB_LIST;
      if (r->body_case != PSD__RESPONSE__BODY_JOB_LIST) break;
      if (jobs_merge(op, r->job_list) != 0) op_fail(op, PS_ENOMEM, "jobs: out of memory");
      return;
    default:
      want = PSD__RESPONSE__BODY_ACK;
      if (r->body_case != PSD__RESPONSE__BODY_ACK) break;
      return;
  }
  char what[PSD_MAX_NAME + 32];
  op_what(op, what, sizeof(what));
  op_fail(op, PS_EBADFRAME, "%s: %s answered with reply type %d, expected %d", what,
          addr, (int)r->body_case, want);
}

void ps__sub_reply(ps__sub *sub, const Psd__Response *r, const uint8_t *vals,
                   size_t vlen) {
  ps__op *op = sub->op;
  if (op->status == 0) {
    if (r->body_case == PSD__RESPONSE__BODY_ERROR &&
        (sub->kind == PS__SUB_DELETE || sub->kind == PS__SUB_DELETE_TABLE) &&
        r->error->code == PSD__CODE__NOT_FOUND) {
      op->notfound++; /* decided when the op completes (op_complete) */
      if (sub->kind == PS__SUB_DELETE) cache_evict(op->c, op->name);
      else ps__table_forget(op->c, op->name);
    } else if (r->body_case == PSD__RESPONSE__BODY_ERROR) {
      int code = psw_code_to_err(r->error->code);
      /* The tensor may be gone (a server restarted without its data): the
       * next call looks it up again. */
      if (code == PS_ENOTFOUND && op->name != NULL) {
        if (is_rows(op) || op->kind == PS__OP_RESET_TABLE) ps__table_forget(op->c, op->name);
        else cache_evict(op->c, op->name);
      }
      op_fail(op, code, "%s: %s", sub->sh->addr, r->error->message);
    } else {
      reply_ok(sub, r, vals, vlen);
    }
  }
  sub_release(sub);
  op_check_done(op);
}

/* ---- shards, deadlines, heartbeats ------------------------------------- */

void ps__shard_event(ps_client *c, ps__shard *sh) {
  ps__op *op = c->connect_op;
  (void)sh;
  if (op == NULL) return;
  int ready = 0;
  for (int i = 0; i < c->servers.n; i++) {
    ps__shard *s = &c->shards[i];
    if (s->state == PS__SH_FATAL) {
      op_fail(op, s->fatal_code, "%s", s->fatal_msg);
      break;
    }
    ready += s->state == PS__SH_READY;
  }
  if (ready == c->servers.n) op->hold = 0;
  op_check_done(op);
}

static void timeout_fail(ps_client *c, ps__op *op) {
  char what[PSD_MAX_NAME + 32];
  if (op->kind == PS__OP_CONNECT) {
    int down = 0;
    ps__shard *first = NULL;
    for (int i = 0; i < c->servers.n; i++)
      if (c->shards[i].state != PS__SH_READY) {
        if (first == NULL) first = &c->shards[i];
        down++;
      }
    if (first == NULL) return;
    const char *why = first->state == PS__SH_HELLO
                          ? "connected, but the server did not answer the hello"
                      : first->state == PS__SH_CHALLENGE
                          ? "connected, but the server sent no challenge"
                          : first->last_err;
    op_fail(op, PS_ECONNECT, "could not connect to shard %d (%s) within %d ms: %s%s",
            first->index, first->addr, c->opts.connect_timeout_ms, why,
            down > 1 ? " (and other shards)" : "");
    return;
  }
  op_what(op, what, sizeof(what));
  const ps__sub *s = op->subs;
  while (s != NULL && !s->live) s = s->onext;
  if (s != NULL)
    op_fail(op, PS_ETIMEDOUT, "%s timed out after %d ms waiting for %s", what,
            c->opts.op_timeout_ms, s->sh->addr);
  else
    op_fail(op, PS_ETIMEDOUT, "%s timed out after %d ms writing to %s", what,
            c->opts.op_timeout_ms, op->subs ? op->subs->sh->addr : "the servers");
}

static void on_tick(uv_timer_t *t) {
  ps_client *c = t->data;
  uint64_t now = uv_now(&c->loop);
  for (ps__op *op = c->active, *next; op != NULL; op = next) {
    next = op->next;
    if (now < op->deadline) continue;
    if (op->status == 0) timeout_fail(c, op);
    /* A frame still being written points at the caller's buffer: the op
     * cannot complete before the write is cancelled, so close that
     * connection (its un-answered requests are resent after reconnect). */
    for (ps__sub *s = op->subs; s != NULL; s = s->onext)
      if (s->writing || s->reading)
        ps__shard_disconnect(s->sh, "a request's deadline passed mid-transfer");
    op_check_done(op);
  }
}

static void on_heartbeat(uv_timer_t *t) {
  ps_client *c = t->data;
  pthread_mutex_lock(&c->mu);
  uint64_t clock = c->clock;
  pthread_mutex_unlock(&c->mu);
  for (int i = 0; i < c->servers.n; i++) ps__shard_heartbeat(&c->shards[i], clock);
}

/* ---- the loop thread --------------------------------------------------- */

static void shutdown_loop(ps_client *c) {
  if (c->shutting) return;
  c->shutting = 1;
  for (ps__op *op = c->active, *next; op != NULL; op = next) {
    char what[PSD_MAX_NAME + 32];
    next = op->next;
    op_what(op, what, sizeof(what));
    op_fail(op, PS_ECLOSED, "%s: the handle was closed while the call was in flight", what);
    op_check_done(op);
  }
  /* Each shard is shut down once its goodbye is answered (or at once when
   * there is none to say); the loop ends when every handle is closed. */
  for (int i = 0; i < c->servers.n; i++)
    if (!ps__shard_goodbye(&c->shards[i])) ps__shard_shutdown(&c->shards[i]);
  uv_close((uv_handle_t *)&c->tick, NULL);
  uv_close((uv_handle_t *)&c->hb, NULL);
  uv_close((uv_handle_t *)&c->async, NULL);
}

void ps__on_async(uv_async_t *a) {
  ps_client *c = a->data;
  pthread_mutex_lock(&c->mu);
  ps__op *q = c->qhead;
  c->qhead = c->qtail = NULL;
  int closing = c->closing;
  pthread_mutex_unlock(&c->mu);
  if (c->shutting) return;
  while (q != NULL) {
    ps__op *op = q;
    q = q->qnext;
    if (closing) op_link(c, op); /* failed with PS_ECLOSED just below */
    else op_start(c, op);
  }
  if (closing) shutdown_loop(c);
}

void *ps__loop_main(void *arg) {
  ps_client *c = arg;
  for (int i = 0; i < c->servers.n; i++) ps__shard_start(&c->shards[i]);
  uv_timer_start(&c->tick, on_tick, PS__TICK_MS, PS__TICK_MS);
  if (c->opts.rank >= 0)
    uv_timer_start(&c->hb, on_heartbeat, (uint64_t)c->opts.heartbeat_ms,
                   (uint64_t)c->opts.heartbeat_ms);
  ps__on_async(&c->async); /* ops submitted before the thread started */
  uv_run(&c->loop, UV_RUN_DEFAULT);
  return NULL;
}
