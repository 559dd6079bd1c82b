/*
 * store.c -- the tensor requests; see store.h. A request is checked whole
 * before anything changes: a refused request changes nothing and is
 * answered with an Error carrying a sentence.
 */
#include "store.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "apply.h"
#include "dedupe.h"
#include "group.h"
#include "log.h"
#include "numfmt.h"
#include "memory.h"
#include "msg.h"
#include "outbox.h"
#include "psmath.h"
#include "round.h"
#include "table.h"
#include "tensor.h"


void store_reply_info(psd_server *srv, psd_conn *c, uint64_t id, psd_tensor *t) {
  Psd__Response r = PSD__RESPONSE__INIT;
  Psd__TensorInfo ti;
  pmsg_spec_pb pb;
  tensor_info_fill(t, &ti, &pb);
  r.body_case = PSD__RESPONSE__BODY_INFO;
  r.info = &ti;
  outbox_response(&srv->outbox, c, id, &r);
}

/* The lane slot a request names for block b (has/off from the message), or
 * 0 when it names none. A slot outside the connection's lane is answered
 * with an error and gives -1. */
static int lane_slot(psd_server *srv, psd_conn *c, uint64_t id, const psd_block *b, int has, uint64_t off,
                     int has_len, uint64_t lane_len, const char *field, uint64_t *slot) {
  *slot = 0;
  if (!has) return 0;
  uint64_t len = b->n * sizeof(float);
  if (c->lane.base == NULL) {
    srv->stats.rejected++;
    outbox_error(&srv->outbox, c, id, PSD__CODE__BAD_FRAME,
                    "%s names a lane slot, but this connection has no lane", field);
    return -1;
  }
  if (!has_len || lane_len != len) {
    /* Slots are sized by the client: a client that cuts the tensor
     * differently must not make this shard read or write past its slot. */
    srv->stats.rejected++;
    outbox_error(&srv->outbox, c, id, PSD__CODE__BAD_SHAPE,
                    "block %llu of '%s' has %llu elements (%llu bytes); %s names a slot of "
                    "%llu bytes",
                    (unsigned long long)b->index, b->tensor->name, (unsigned long long)b->n,
                    (unsigned long long)len, field,
                    has_len ? (unsigned long long)lane_len : 0ull);
    return -1;
  }
  if (!c->lane_proven) {
    if (!psl_proven(&c->lane)) {
      srv->stats.rejected++;
      outbox_error(&srv->outbox, c, id, PSD__CODE__BAD_FRAME,
                      "%s names a lane slot, but the lane was never attached (no proof in "
                      "its header)", field);
      return -1;
    }
    c->lane_proven = 1;
  }
  if (!psl_range_ok(&c->lane, off, len)) {
    srv->stats.rejected++;
    outbox_error(&srv->outbox, c, id, PSD__CODE__BAD_FRAME,
                    "%s = %llu: a slot of %llu bytes there is not inside the %zu-byte lane "
                    "(slots start at %u, 64-byte aligned)",
                    field, (unsigned long long)off, (unsigned long long)len, c->lane.len,
                    PSL_HEADER);
    return -1;
  }
  *slot = off;
  return 0;
}

int store_name_check(const char *name, char *err, size_t errlen) {
  size_t n = strlen(name);
  if (n == 0 || n > PSD_MAX_NAME) {
    snprintf(err, errlen, "tensor names have 1 to %d bytes", PSD_MAX_NAME);
    return -1;
  }
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)name[i] < 0x21 || (unsigned char)name[i] == 0x7f) {
      snprintf(err, errlen, "the name holds a space or control character at byte %zu", i);
      return -1;
    }
  return 0;
}

void store_create(psd_server *srv, psd_conn *c, uint64_t id, const Psd__Create *req) {
  char err[512];
  const Psd__TensorSpec *ps = req->spec;
  ps_tensor_spec spec;

  if (store_name_check(req->name, err, sizeof(err)) != 0) {
    outbox_error(&srv->outbox, c, id, PSD__CODE__BAD_SPEC, "%s", err);
    return;
  }
  if (table_find(c->job, req->name) != NULL) {
    outbox_error(&srv->outbox, c, id, PSD__CODE__EXISTS,
                 "a table named '%s' exists in job '%s'; a name is a tensor or a table, "
                 "never both", req->name, c->job->name);
    return;
  }
  if (ps->n_shape == 0 || ps->n_shape > PSD_MAX_NDIM) {
    outbox_error(&srv->outbox, c, id, PSD__CODE__BAD_SHAPE, "tensor '%s': shape has %zu dimensions; 1 to %d allowed",
                    req->name, ps->n_shape, PSD_MAX_NDIM);
    return;
  }
  uint64_t numel = psd_numel(ps->shape, ps->n_shape);
  if (numel == 0) {
    outbox_error(&srv->outbox, c, id, PSD__CODE__BAD_SHAPE,
                 "tensor '%s': dimensions must be >= 1 and their product at most 2^62",
                 req->name);
    return;
  }
  if (pmsg_spec_from_pb(ps, &spec, err, sizeof(err)) != 0) {
    outbox_error(&srv->outbox, c, id, PSD__CODE__BAD_SPEC, "tensor '%s': %s", req->name, err);
    return;
  }
  uint64_t max_block = (srv->cfg.max_frame - PSW_HEAD_MAX) / sizeof(float);
  psd_tensor *t = tensor_find(c->job, req->name);
  /* block_size 0 means "the tensor's own, else this shard's default": a
   * worker that did not choose one joins a tensor created with one. */
  if (spec.block_size == 0) spec.block_size = t ? t->spec.block_size : srv->cfg.default_block;
  if (spec.block_size > max_block) {
    outbox_error(&srv->outbox, c, id, PSD__CODE__BAD_SPEC,
                    "tensor '%s': block_size %llu does not fit the maximum frame (at most %llu)",
                    req->name, (unsigned long long)spec.block_size, (unsigned long long)max_block);
    return;
  }
  if (psp_nblocks(numel, spec.block_size) > PSD_MAX_BLOCKS) {
    outbox_error(&srv->outbox, c, id, PSD__CODE__BAD_SPEC,
                    "tensor '%s': %llu elements in blocks of %llu make more than %llu blocks",
                    req->name, (unsigned long long)numel, (unsigned long long)spec.block_size,
                    PSD_MAX_BLOCKS);
    return;
  }
  if (psm_spec_validate(&spec, ps->shape, (int)ps->n_shape, err, sizeof(err)) != 0) {
    outbox_error(&srv->outbox, c, id, PSD__CODE__BAD_SPEC, "tensor '%s': %s", req->name, err);
    return;
  }

  if (t != NULL) {
    /* Idempotent create: every worker may call it at start-up. */
    int same_shape = t->ndim == (int)ps->n_shape;
    for (int i = 0; same_shape && i < t->ndim; i++) same_shape = t->shape[i] == ps->shape[i];
    if (!same_shape) {
      char a[256] = "", b[256] = "";
      for (int i = 0; i < t->ndim; i++)
        snprintf(a + strlen(a), sizeof(a) - strlen(a), "%s%llu", i ? "," : "",
                 (unsigned long long)t->shape[i]);
      for (size_t i = 0; i < ps->n_shape; i++)
        snprintf(b + strlen(b), sizeof(b) - strlen(b), "%s%llu", i ? "," : "",
                 (unsigned long long)ps->shape[i]);
      outbox_error(&srv->outbox, c, id, PSD__CODE__EXISTS,
                      "tensor '%s' exists with a different spec: shape: [%s] vs [%s]",
                      req->name, a, b);
      return;
    }
    /* Against the spec as created: tunings (ps_set_optim) do not make the
     * job's own workers, restarting with the spec they created, strangers. */
    if (psm_spec_diff(&t->created, &spec, err, sizeof(err)) != 0) {
      outbox_error(&srv->outbox, c, id, PSD__CODE__EXISTS,
                      "tensor '%s' exists with a different spec: %s (existing vs requested)",
                      req->name, err);
      return;
    }
    store_reply_info(srv, c, id, t);
    return;
  }
  int over;
  t = tensor_insert(srv, c->job, req->name, ps->shape, (int)ps->n_shape, &spec, &over);
  if (t == NULL && over) {
    outbox_error(&srv->outbox, c, id, PSD__CODE__RESOURCE_EXHAUSTED,
                 "creating '%s' would cross this shard's memory ceiling (--max-memory %llu "
                 "bytes, %llu in use; tensors stop %llu bytes below it); nothing changed",
                 req->name, (unsigned long long)mem_limit(), (unsigned long long)mem_used(),
                 (unsigned long long)mem_reserve());
    return;
  }
  if (t == NULL) {
    outbox_error(&srv->outbox, c, id, PSD__CODE__INTERNAL, "out of memory creating '%s'", req->name);
    return;
  }
  log_info("created tensor '%s' in job '%s': %llu elements in %llu blocks (materialized on "
           "first touch), init %s, optimizer %s",
           t->name, c->job->name, (unsigned long long)t->numel, (unsigned long long)t->nblocks, ps_init_name(spec.init.kind),
           ps_optim_name(spec.optim.kind));
  store_reply_info(srv, c, id, t);
}

void store_not_found(psd_server *srv, psd_conn *c, uint64_t id, const char *name) {
  const psd_table *t = table_find(c->job, name);
  if (t != NULL)
    outbox_error(&srv->outbox, c, id, PSD__CODE__BAD_REQUEST,
                 "'%s' is a table (rows of %u floats), not a tensor: read and write it with "
                 "ps_pull_rows and ps_push_rows", name, t->dim);
  else
    outbox_error(&srv->outbox, c, id, PSD__CODE__NOT_FOUND, "no tensor named '%s'", name);
}

void store_lookup(psd_server *srv, psd_conn *c, uint64_t id, const Psd__Lookup *req) {
  psd_tensor *t = tensor_find(c->job, req->name);
  if (t == NULL) {
    store_not_found(srv, c, id, req->name);
    return;
  }
  store_reply_info(srv, c, id, t);
}

void store_list(psd_server *srv, psd_conn *c, uint64_t id) {
  psd_job *job = c->job;
  size_t n = job->ntensors, k = 0;
  Psd__TensorInfo *tis = calloc(n ? n : 1, sizeof(*tis));
  Psd__TensorInfo **ptrs = calloc(n ? n : 1, sizeof(*ptrs));
  pmsg_spec_pb *pbs = calloc(n ? n : 1, sizeof(*pbs));
  if (tis == NULL || ptrs == NULL || pbs == NULL) {
    outbox_error(&srv->outbox, c, id, PSD__CODE__INTERNAL, "out of memory listing tensors");
    goto out;
  }
  for (size_t i = 0; i < job->table_cap; i++)
    for (psd_tensor *t = job->table[i]; t; t = t->next) {
      tensor_info_fill(t, &tis[k], &pbs[k]);
      ptrs[k] = &tis[k];
      k++;
    }
  Psd__Response r = PSD__RESPONSE__INIT;
  Psd__TensorList tl = PSD__TENSOR_LIST__INIT;
  tl.n_tensors = k;
  tl.tensors = ptrs;
  r.body_case = PSD__RESPONSE__BODY_LIST;
  r.list = &tl;
  outbox_response(&srv->outbox, c, id, &r);
out:
  free(tis);
  free(ptrs);
  free(pbs);
}

psd_block *store_find_block(psd_server *srv, psd_conn *c, uint64_t id, const char *name,
                            uint64_t index, int reply_values, psd_tensor **tp) {
  psd_tensor *t = tensor_find(c->job, name);
  if (t == NULL) {
    store_not_found(srv, c, id, name);
    return NULL;
  }
  if (index >= t->nblocks) {
    outbox_error(&srv->outbox, c, id, PSD__CODE__BAD_SHAPE, "tensor '%s' has %llu blocks; block %llu does not exist",
                    name, (unsigned long long)t->nblocks, (unsigned long long)index);
    return NULL;
  }
  psd_block *b = NULL;
  /* A reply carrying values may have to be queued: it must fit too. */
  uint64_t extra = reply_values ? t->spec.block_size * sizeof(float) + 4096 : 0;
  switch (tensor_block_get(srv, t, index, extra, &b)) {
    case TB_OK:
      break;
    case TB_PENDING:
      /* Being made over turns: the request runs again once it is, nothing
       * answered now (server.c parks the connection on srv->park_on). */
      return NULL;
    case TB_NOT_OWNED:
      outbox_error(&srv->outbox, c, id, PSD__CODE__WRONG_SHARD,
                   "block %llu of '%s' belongs to shard %d, not this one (%d)",
                   (unsigned long long)index, name,
                   psp_owner(&srv->servers, t->name_hash, index), srv->shard_index);
      return NULL;
    case TB_OVER:
      outbox_error(&srv->outbox, c, id, PSD__CODE__RESOURCE_EXHAUSTED,
                   "block %llu of '%s'%s would cross this shard's memory ceiling "
                   "(--max-memory %llu bytes, %llu in use%s); nothing changed",
                   (unsigned long long)index, name,
                   tensor_block(t, index) ? ": the reply's values" : " and its reply",
                   (unsigned long long)mem_limit(), (unsigned long long)mem_used(),
                   tensor_block(t, index) ? "" : "; new blocks stop short of it by the serving "
                                                 "reserve");
      return NULL;
    default:
      outbox_error(&srv->outbox, c, id, PSD__CODE__INTERNAL,
                   "out of memory materializing block %llu of '%s'",
                   (unsigned long long)index, name);
      return NULL;
  }
  *tp = t;
  return b;
}

void store_pull(psd_server *srv, psd_conn *c, uint64_t id, const Psd__Pull *req) {
  psd_tensor *t;
  psd_block *b = store_find_block(srv, c, id, req->name, req->block, !req->has_lane_out, &t);
  if (b == NULL) return;
  uint64_t out;
  if (lane_slot(srv, c, id, b, req->has_lane_out, req->lane_out, req->has_lane_len,
                req->lane_len, "pull.lane_out", &out) != 0)
    return;
  if (req->has_clock && c->rank >= 0 && group_pull_blocked(&c->job->group, c->rank, req->clock)) {
    group_hold_pull(srv, c->job, c, id, b, req->clock, out);
    return;
  }
  srv->stats.pulls++;
  outbox_block(&srv->outbox, c, id, b, 1, out, 0);
}

/* The gradient of a push, checked: where it is (aligned floats) and its
 * largest magnitude. */
typedef struct {
  const float *g;
  uint32_t gmax;       /* psm_absmax_bits(g) */
  float gscale;        /* clipping */
  uint64_t in, out;    /* lane slots, 0 = none */
} push_grad;

/* Check the lane slots a push names and locate its values. 0, or -1 after
 * answering the error. */
static int push_locate(psd_server *srv, psd_conn *c, uint64_t id, const Psd__Push *req,
                       psd_block *b, const uint8_t **values, size_t *len, push_grad *pg) {
  uint64_t in, out, bytes = b->n * sizeof(float);
  if (lane_slot(srv, c, id, b, req->has_lane_in, req->lane_in, req->has_lane_len, req->lane_len,
                "push.lane_in", &in) != 0 ||
      lane_slot(srv, c, id, b, req->has_lane_out, req->lane_out, req->has_lane_len,
                req->lane_len, "push.lane_out", &out) != 0)
    return -1;
  if (in != 0 && out != 0 && in != out && in < out + bytes && out < in + bytes) {
    srv->stats.rejected++;
    outbox_error(&srv->outbox, c, id, PSD__CODE__BAD_FRAME,
                 "push.lane_in and push.lane_out overlap without being the same slot");
    return -1;
  }
  if (in != 0) {
    if (*len != 0) {
      srv->stats.rejected++;
      outbox_error(&srv->outbox, c, id, PSD__CODE__BAD_FRAME,
                   "push carries values and names a lane slot; send one or the other");
      return -1;
    }
    *values = c->lane.base + in;
    *len = bytes;
    srv->stats.lane_ops++;
    srv->stats.lane_bytes += bytes;
  }
  if (*len != bytes) {
    srv->stats.rejected++;
    outbox_error(&srv->outbox, c, id, PSD__CODE__BAD_SHAPE,
                 "block %llu of '%s' has %llu elements; the push carries %zu bytes (%zu floats)",
                 (unsigned long long)b->index, b->tensor->name, (unsigned long long)b->n, *len,
                 *len / sizeof(float));
    return -1;
  }
  pg->in = in;
  pg->out = out;
  return 0;
}

/* Take the gradient as aligned floats and check it: finite, and clipped
 * to the tensor's clip_norm. Values sit in the receive buffer, and the
 * kernels want aligned floats. A gradient in a lane is shared memory
 * another process can write while this one reads: it is copied out first
 * (and measured on the way), so what is checked is what is applied. 0, or
 * -1 after answering the error. */
static int push_check(psd_server *srv, psd_conn *c, uint64_t id, const Psd__Push *req,
                      psd_block *b, const uint8_t *values, push_grad *pg) {
  const ps_optim_spec *o = &b->tensor->spec.optim;
  const float *g = (const float *)values;
  int measured = 0;
  if (pg->in != 0 || ((uintptr_t)values & (sizeof(float) - 1)) != 0) {
    float *s = apply_gradbuf(srv, b->n);
    if (s == NULL) {
      outbox_error(&srv->outbox, c, id, PSD__CODE__INTERNAL, "out of memory");
      return -1;
    }
    pg->gmax = psm_copy_absmax_bits(s, g, b->n);
    measured = 1;
    g = s;
  }
  if (!measured) pg->gmax = psm_absmax_bits(g, b->n);
  if (pg->gmax >= PSM_NONFINITE) {
    srv->stats.rejected++;
    outbox_error(&srv->outbox, c, id, PSD__CODE__BAD_GRADIENT,
                 "gradient for block %llu of '%s' holds NaN or Inf; weights left untouched",
                 (unsigned long long)b->index, b->tensor->name);
    return -1;
  }
  /* Clipping needs the norm of the whole tensor's gradient: the client
   * sends it; a block's own norm stands in when it does not. */
  pg->gscale = 1.0f;
  if (o->clip_norm > 0) {
    double norm = req->has_grad_norm ? req->grad_norm : sqrt(psm_sumsq(g, b->n));
    if (norm > o->clip_norm) pg->gscale = (float)(o->clip_norm / norm);
  }
  pg->g = g;
  return 0;
}

/* A push whose sequence number is not above the last one taken from this
 * worker is a resend: answered, never applied twice. 1 if it was one. */
static int push_resend(psd_server *srv, psd_conn *c, uint64_t id, psd_block *b, uint64_t seq,
                       int sync, int want, uint64_t out) {
  uint64_t last;
  if (!seq || !dedupe_last(&c->job->seqs, c->worker_id, &last) || seq > last) return 0;
  /* Still waiting for its round: this request gets the round's reply. */
  if (sync && round_resend(srv, c, id, b, seq, want, out)) return 1;
  srv->stats.duplicates++;
  outbox_block(&srv->outbox, c, id, b, want, out, PSD_REPLY_DUPLICATE);
  return 1;
}

/* Apply an async (or SSP) push now and answer it. */
static void push_apply(psd_server *srv, psd_conn *c, uint64_t id, psd_block *b, uint64_t seq,
                       int want, const push_grad *pg) {
  if (seq && dedupe_reserve(&c->job->seqs) != 0) {
    outbox_error(&srv->outbox, c, id, PSD__CODE__INTERNAL,
                 "out of memory recording the push for exactly-once delivery; not applied");
    return;
  }
  float *fill = want && pg->out != 0 ? (float *)(c->lane.base + pg->out) : NULL;
  int rc = block_apply(srv, b, pg->g, pg->gmax, pg->gscale, fill);
  if (rc != 0) {
    srv->stats.rejected++;
    if (rc == -2)
      outbox_error(&srv->outbox, c, id, PSD__CODE__INTERNAL,
                   "out of memory saving block %llu of '%s' before a large update; not applied",
                   (unsigned long long)b->index, b->tensor->name);
    else
      outbox_error(&srv->outbox, c, id, PSD__CODE__BAD_GRADIENT,
                   "this update would make block %llu of '%s' Inf or NaN (gradient up to %s, "
                   "learning rate %s); the block is left untouched",
                   (unsigned long long)b->index, b->tensor->name,
                   psn_num((double)psm_bits_float(pg->gmax) * pg->gscale).s,
                   psn_num(psm_lr_at(&b->tensor->spec.optim, b->version + 1)).s);
    return;
  }
  if (seq) dedupe_record(&c->job->seqs, c->worker_id, seq);
  outbox_block(&srv->outbox, c, id, b, want, pg->out, fill != NULL ? PSD_REPLY_FILLED : 0);
}

void store_push(psd_server *srv, psd_conn *c, uint64_t id, const Psd__Push *req,
                const uint8_t *values, size_t len) {
  psd_tensor *t;
  psd_block *b = store_find_block(srv, c, id, req->name, req->block,
                            req->has_want_values && req->want_values && !req->has_lane_out, &t);
  if (b == NULL) return;
  push_grad pg;
  if (push_locate(srv, c, id, req, b, &values, &len, &pg) != 0) return;
  psd_group *g = &c->job->group;
  if (c->rank >= 0 && (!g->configured || (uint32_t)c->rank >= g->num_workers)) {
    /* Cannot happen while the connection is a member of the job's running
     * incarnation (server.c checks); kept as a guard. */
    outbox_error(&srv->outbox, c, id, PSD__CODE__JOB_ENDED,
                 "rank %d is not part of job '%s' (%u workers); send a new hello", c->rank,
                 c->job->name, g->num_workers);
    return;
  }
  if (g->configured && g->staleness == 0 && c->rank < 0) {
    /* A sync job's blocks change only by its rounds; a tool's gradient
     * would be applied outside them (an admin's `set` will write values). */
    srv->stats.rejected++;
    outbox_error(&srv->outbox, c, id, PSD__CODE__PERMISSION_DENIED,
                 "push to '%s' refused: job '%s' is a sync job, and a push from a tool "
                 "(rank -1) would be applied outside its rounds; only the job's workers push",
                 req->name, c->job->name);
    return;
  }
  int sync = g->configured && g->staleness == 0 && c->rank >= 0;
  int want = req->has_want_values && req->want_values;
  uint64_t seq = req->has_seq ? req->seq : 0;
  if (c->worker_id == 0) seq = 0; /* no id: no exactly-once */
  if (push_resend(srv, c, id, b, seq, sync, want, pg.out)) return;
  if (push_check(srv, c, id, req, b, values, &pg) != 0) return;
  if (sync) {
    uint64_t clock = req->has_clock ? req->clock : 0;
    if (group_clock(c->job, c->rank, clock) & GROUP_CHANGED) rounds_recheck(srv, c->job);
    round_add(srv, c, id, b, pg.g, pg.gscale, seq, clock, want, pg.out);
    return;
  }
  push_apply(srv, c, id, b, seq, want, &pg);
}
