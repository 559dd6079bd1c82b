/*
 * server.c -- psd's network edge: the listener, one psd_conn per client,
 * framing, backpressure, the dispatch of each request to store.c, group.c
 * or checkpoint.c, and the delivery of the replies they decided (the
 * outbox) once the request has been handled.
 *
 * Rules kept here: a frame's header is checked before its payload is
 * buffered; a connection that speaks garbage gets an Error and is closed;
 * a request that is merely wrong gets an Error and the connection stays.
 * A connection is freed only in its close callback, never inside the read
 * callback that may still be using it. This is the only file that writes
 * to sockets.
 */
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "access.h"
#include "apply.h"
#include "checkpoint.h"
#include "control.h"
#include "group.h"
#include "job.h"
#include "json.h"
#include "log.h"
#include "memory.h"
#include "metrics.h"
#include "netaddr.h"
#include "numfmt.h"
#include "outbox.h"
#include "psmath.h"
#include "round.h"
#include "rows.h"
#include "session.h"
#include "set.h"
#include "store.h"
#include "table.h"
#include "tensor.h"
#include "waiter.h"

static void conn_close(psd_conn *c);
static void handle_frames(psd_conn *c);

/* Until its hello is accepted, a connection may send only a hello or a
 * ping: small frames. A bigger one is refused from its header, so that no
 * one holds memory of the shard's without a token (Redis limits the
 * requests of unauthenticated clients the same way). */
#define PREAUTH_MAX_FRAME 65536u

static uint64_t conn_max_frame(const psd_conn *c) {
  uint64_t m = c->srv->cfg.max_frame;
  return c->hello_done || m < PREAUTH_MAX_FRAME ? m : PREAUTH_MAX_FRAME;
}
static void conn_start_reading(psd_conn *c);

/* What a connection has queued or reserved for output: replies the socket
 * has not taken, replies gathered for this turn, replies held for later. */
static uint64_t conn_queued(psd_conn *c) {
  return (uint64_t)uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) + c->olen +
         c->held_bytes;
}

/* Backpressure: a connection whose queued output is over --out-cap is
 * neither read from nor are its already-buffered requests handled, until
 * its output drains below half the cap (conn_maybe_resume). */
static void conn_pause(psd_conn *c) {
  c->yielded = 0;
  if (c->reading) {
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = 0;
  }
  if (!c->paused) {
    c->paused = 1;
    psd_link_insert_tail(&c->srv->paused, &c->paused_link);
    c->srv->stats.pauses++;
    log_debug("pausing %s: %llu bytes of replies unread or held", c->peer,
              (unsigned long long)conn_queued(c));
  }
}

/* A turn of the loop runs requests for at most TURN_BUDGET_NS; past it, a
 * connection with more requests buffered yields: it is set aside like a
 * paused one and goes on at the next turn (the idle handle keeps turns
 * coming without blocking in poll), after the others had theirs. */
#define TURN_BUDGET_NS 3000000ull

/* Is this turn's budget spent? Never before one request has run in it, so
 * that every turn makes progress. */
static int turn_over(psd_server *srv) {
  if (srv->turn_requests == 0) return 0;
  uint64_t now = uv_hrtime();
  if (srv->turn_deadline_ns == 0) srv->turn_deadline_ns = now + TURN_BUDGET_NS;
  return now > srv->turn_deadline_ns;
}

static void spread_cb(uv_idle_t *h);
static void bury(psd_server *srv, size_t budget);
/* Held replies dropped per turn: a peer that dies holding a million of them
 * (sync pushes to a million blocks) is cleaned up over many turns. */
#define WAITERS_PER_TURN 4096

/* Keep turns coming without blocking in poll (not once stopping: the
 * handle is closed then). */
static void spread_on(psd_server *srv) {
  if (!srv->stopping && !uv_is_closing((uv_handle_t *)&srv->spread))
    uv_idle_start(&srv->spread, spread_cb);
}

static void conn_yield(psd_conn *c) {
  psd_server *srv = c->srv;
  if (c->reading) {
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = 0;
  }
  if (!c->paused) {
    c->paused = 1;
    psd_link_insert_tail(&srv->paused, &c->paused_link);
  }
  c->yielded = 1;
  c->yield_turn = srv->loop_iter;
  srv->stats.yields++;
  spread_on(srv);
}

/* The connection's next request waits for a block being made (tensor.h):
 * neither read nor run until the block is ready (wake_parked). */
static void conn_park(psd_conn *c, psd_growing *g) {
  if (c->reading) {
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = 0;
  }
  if (!c->parked) psd_link_insert_tail(&g->waiting, &c->park_link);
  c->parked = 1;
}

/* Connections whose block is ready go on at the next turn, as those that
 * yielded (resume_paused runs their waiting request again). */
static void wake_parked(psd_server *srv) {
  while (!psd_link_empty(&srv->woken)) {
    psd_conn *c = psd_link_entry(srv->woken.next, psd_conn, park_link);
    psd_link_remove(&c->park_link);
    c->parked = 0;
    if (c->closing || c->paused) continue;
    c->paused = 1;
    c->yielded = 1;
    c->yield_turn = srv->loop_iter;
    psd_link_insert_tail(&srv->paused, &c->paused_link);
    spread_on(srv);
  }
}

/* ---- output ---------------------------------------------------------------- */

typedef struct {
  uv_write_t req;
  psd_conn *conn;
  size_t len;                /* bytes copied into data */
  size_t pinned;             /* bytes written from pin's memory */
  psd_pin *pin;              /* values written from a block's (or a copy's) memory */
  char data[];
} write_req;

/* Where a reply's values live, so that what the socket does not take at
 * once can be sent from there (pinned) instead of copied: the block's
 * memory, or an outbox copy whose ownership the write then takes. */
typedef struct {
  psd_block *block;
  float **snap;
  size_t snap_bytes;
} values_src;

static void conn_maybe_resume(psd_conn *c);
static void deliver(psd_server *srv);

static void write_cb(uv_write_t *req, int status) {
  write_req *wr = (write_req *)req;
  psd_conn *c = wr->conn;
  server_turn_mark(c->srv);
  c->srv->turn_wbytes += wr->len + wr->pinned;
  mem_release(PSD_MEM_OUTPUT, sizeof(*wr) + wr->len);
  if (wr->pin != NULL) pin_release(wr->pin);
  free(wr);
  if (c->closing) return;
  if (status < 0) {
    /* A reset seen by a write (a paused connection is not read, so this
     * may be the only sign): close now, and drop its queued requests. */
    log_info("connection from %s: write failed: %s; closing it", c->peer, uv_strerror(status));
    c->srv->stats.closed_write++;
    conn_close(c);
    return;
  }
  conn_maybe_resume(c);
}

/* Write bufs now. What the socket does not take at once is queued: the
 * values (the last buffer) from where they live when vs says where (a
 * pinned block: a later update moves the block to new memory, tensor.h),
 * everything else copied. */
static void conn_write_now(psd_conn *c, uv_buf_t *bufs, int nb, const values_src *vs) {
  size_t total = 0, done = 0;
  for (int i = 0; i < nb; i++) total += bufs[i].len;
  if (uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) == 0) {
    int r = uv_try_write((uv_stream_t *)&c->tcp, bufs, (unsigned)nb);
    if (r > 0) {
      done = (size_t)r;
      c->srv->turn_wbytes += done;
    } else if (r != UV_EAGAIN && r != UV_ENOSYS) {
      log_debug("write to %s failed: %s", c->peer, uv_strerror(r));
      conn_close(c);
      return;
    }
  }
  if (done == total) return;

  size_t last = bufs[nb - 1].len, before_last = total - last;
  int pin = vs != NULL && (vs->block != NULL || (vs->snap != NULL && *vs->snap != NULL)) &&
            last > 0;
  size_t last_done = done > before_last ? done - before_last : 0;
  size_t copy = pin ? (done < before_last ? before_last - done : 0) : total - done;
  write_req *wr = mem_alloc_data(sizeof(*wr) + copy);
  if (wr == NULL) {
    log_error("out of memory queueing %zu bytes to %s; closing it", total - done, c->peer);
    conn_close(c);
    return;
  }
  wr->conn = c;
  wr->len = copy;
  wr->pinned = 0;
  wr->pin = NULL;
  /* An admitted reply (its values were checked against the ceiling when the
   * request was handled, or reserved when it was held). */
  mem_charge(PSD_MEM_OUTPUT, sizeof(*wr) + copy);
  char *p = wr->data;
  size_t skip = done, left = copy;
  for (int i = 0; i < nb && left > 0; i++) {
    size_t l = bufs[i].len;
    if (skip >= l) {
      skip -= l;
      continue;
    }
    size_t k = l - skip < left ? l - skip : left;
    memcpy(p, bufs[i].base + skip, k);
    p += k;
    left -= k;
    skip = 0;
  }
  uv_buf_t ub[2];
  int nub = 0;
  if (copy > 0) ub[nub++] = uv_buf_init(wr->data, (unsigned)copy);
  if (pin) {
    if (vs->block != NULL) {
      wr->pin = block_pin(vs->block);
    } else {
      wr->pin = pin_adopt(*vs->snap, vs->snap_bytes);
      if (wr->pin != NULL) *vs->snap = NULL; /* the write owns it now */
    }
    if (wr->pin == NULL) {
      mem_release(PSD_MEM_OUTPUT, sizeof(*wr) + copy);
      free(wr);
      log_error("out of memory queueing a reply to %s; closing it", c->peer);
      conn_close(c);
      return;
    }
    ub[nub++] = uv_buf_init(bufs[nb - 1].base + last_done, (unsigned)(last - last_done));
    wr->pinned = last - last_done;
  }
  int r = uv_write(&wr->req, (uv_stream_t *)&c->tcp, ub, (unsigned)nub, write_cb);
  if (r != 0) {
    mem_release(PSD_MEM_OUTPUT, sizeof(*wr) + copy);
    if (wr->pin != NULL) pin_release(wr->pin);
    free(wr);
    conn_close(c);
    return;
  }
  /* Backpressure, whoever produced the reply (this connection's request, a
   * round completing, a held pull released). */
  if (conn_queued(c) > c->srv->cfg.out_cap) conn_pause(c);
}

/* Send what small replies have gathered in the connection's output buffer. */
static void conn_flush(psd_conn *c) {
  if (c->dirty) {
    psd_link_remove(&c->dirty_link);
    c->dirty = 0;
  }
  if (c->olen == 0 || c->closing) {
    c->olen = 0;
    return;
  }
  uv_buf_t b = uv_buf_init((char *)c->obuf, (unsigned)c->olen);
  c->olen = 0;
  conn_write_now(c, &b, 1, NULL);
}

/* Small replies are gathered and leave together, once per turn of the event
 * loop (flush_cb): a client pipelining 32 pulls gets one write of 32 replies,
 * not 32 system calls. A large reply flushes what is gathered, then goes out
 * from the tensor's own memory. */
#define SMALL_REPLY 65536

static void conn_write(psd_conn *c, const uint8_t *head, size_t hlen,
                       const void *values, size_t vlen, const values_src *vs) {
  if (c->closing) return;
  c->srv->stats.bytes_out += hlen + vlen;
  if (hlen + vlen <= SMALL_REPLY) {
    if (c->olen + hlen + vlen > c->ocap) {
      size_t cap = c->ocap ? c->ocap : 4096; /* an idle connection holds little */
      while (cap < c->olen + hlen + vlen) cap *= 2;
      uint8_t *nb = realloc(c->obuf, cap);
      if (nb == NULL) {
        log_error("out of memory buffering replies to %s; closing it", c->peer);
        conn_close(c);
        return;
      }
      mem_charge(PSD_MEM_OUTPUT, cap - c->ocap);
      c->obuf = nb;
      c->ocap = cap;
    }
    memcpy(c->obuf + c->olen, head, hlen);
    if (vlen) memcpy(c->obuf + c->olen + hlen, values, vlen);
    c->olen += hlen + vlen;
    if (!c->dirty) {
      c->dirty = 1;
      psd_link_insert_tail(&c->srv->dirty, &c->dirty_link);
    }
    if (c->olen >= 4 * SMALL_REPLY) conn_flush(c);
    return;
  }
  conn_flush(c);
  if (c->closing) return;
  uv_buf_t bufs[2] = {uv_buf_init((char *)head, (unsigned)hlen),
                      uv_buf_init((char *)values, (unsigned)vlen)};
  conn_write_now(c, bufs, vlen ? 2 : 1, vlen ? vs : NULL);
}

/* An active idle handle makes the loop poll without blocking: the next turn
 * comes at once while work is spread over turns. */
static void spread_cb(uv_idle_t *h) { (void)h; }

/* Paused connections whose output has drained (their writes completed, or
 * their held replies were answered or dropped) go on. The list is copied
 * first: resuming one may close others. Connections are freed only in
 * close callbacks, after this turn. */
static void resume_paused(psd_server *srv) {
  if (psd_link_empty(&srv->paused)) return;
  int yielded = 0;
  size_t n = 0, cap = 64;
  psd_conn *small[64], **v = small;
  for (psd_link *l = srv->paused.next; l != &srv->paused; l = l->next) {
    if (n == cap) {
      psd_conn **nv = malloc(cap * 2 * sizeof(*nv));
      if (nv == NULL) break;
      memcpy(nv, v, n * sizeof(*nv));
      if (v != small) free(v);
      v = nv;
      cap *= 2;
    }
    v[n++] = psd_link_entry(l, psd_conn, paused_link);
  }
  /* Within the turn's budget too: those left wait for the next turn (the
   * list is in pause order, and a resumed connection that pauses or yields
   * again goes to its end). */
  for (size_t i = 0; i < n; i++) {
    if (turn_over(srv)) {
      yielded = 1;
      break;
    }
    if (!v[i]->closing) conn_maybe_resume(v[i]);
  }
  if (v != small) free(v);
  for (psd_link *l = srv->paused.next; l != &srv->paused && !yielded; l = l->next)
    yielded = psd_link_entry(l, psd_conn, paused_link)->yielded;
  if (yielded) spread_on(srv);
}

/* A job with released SSP pulls to answer, or NULL. */
static psd_job *ready_job(psd_server *srv) {
  for (psd_link *l = srv->jobs.next; l != &srv->jobs; l = l->next) {
    psd_job *j = psd_link_entry(l, psd_job, link);
    if (!psd_link_empty(&j->group.ready)) return j;
  }
  return NULL;
}

/* Runs once per loop iteration, after the reads: flush every connection
 * that gathered replies. */
static void on_connection(uv_stream_t *server, int status);
static void scan_conns(psd_server *srv, uint64_t now);
#define ACCEPTS_PER_TURN 16
/* Time a turn gives to filling big new blocks (tensor_grow_step). */
#define GROW_BUDGET_NS 2000000ull

static void flush_cb(uv_check_t *h) {
  psd_server *srv = h->data;
  if (!psd_link_empty(&srv->dirty) || !psd_link_empty(&srv->paused) ||
      !psd_link_empty(&srv->graveyard) ||
      ready_job(srv) != NULL || srv->outbox.len > 0 || srv->scan_more ||
      srv->accept_deferred || !psd_link_empty(&srv->growing) || !psd_link_empty(&srv->woken))
    server_turn_mark(srv);
  deliver(srv); /* replies decided by timers and signals */
  /* SSP pulls released in numbers are answered a slice per turn, so that no
   * turn of the loop copies gigabytes. */
  psd_job *j = ready_job(srv);
  if (j != NULL) {
    group_answer_ready(srv, j, 8u << 20, 512);
    deliver(srv);
  }
  if (ready_job(srv) == NULL) uv_idle_stop(&srv->spread);
  else spread_on(srv);
  /* Big blocks being made: a slice of this turn (tensor.h). */
  if (!psd_link_empty(&srv->growing)) {
    uint64_t t0 = uv_hrtime();
    tensor_grow_step(srv, t0 + GROW_BUDGET_NS);
    srv->turn_grow_ns += uv_hrtime() - t0;
  }
  wake_parked(srv);
  resume_paused(srv); /* restarts the idle handle while some yielded */
  bury(srv, WAITERS_PER_TURN);
  if (srv->scan_more) scan_conns(srv, psd_now_ms());
  if (srv->accept_deferred && srv->accept_defer_iter != srv->loop_iter &&
      !uv_is_closing((uv_handle_t *)&srv->listener)) {
    srv->accept_deferred = 0;
    on_connection((uv_stream_t *)&srv->listener, 0);
  }
  /* Turns keep coming while either waits (the idle handle was stopped
   * above when no held pull was ready). */
  if (srv->scan_more || srv->accept_deferred || !psd_link_empty(&srv->growing))
    spread_on(srv);
  while (!psd_link_empty(&srv->dirty)) {
    psd_conn *c = psd_link_entry(srv->dirty.next, psd_conn, dirty_link);
    conn_flush(c);
  }
}

static void conn_send_v(psd_conn *c, Psd__Response *resp, const void *values, size_t len,
                        const values_src *vs) {
  if (psd_m.reply.type != PSD_RT_NONE) {
    /* A reply sent directly while its request is handled (deliver counts
     * the outbox's own). */
    metrics_reply(&psd_m.reply, c->closing ? PSD_RES_DROPPED
                                : resp->body_case == PSD__RESPONSE__BODY_ERROR ? PSD_RES_ERROR
                                                                               : PSD_RES_OK);
    psd_m.reply.type = PSD_RT_NONE;
  }
  if (c->closing) return;
  psw_frame f;
  if (psw_encode(&f, &resp->base, values, len) == 0) {
    conn_write(c, f.head, f.head_len, f.values, f.values_len, vs);
    return;
  }
  /* A big envelope (a list of many tensors, the stats of a big job): build
   * the frame on the heap. Replies with values always fit the fast path. */
  size_t flen;
  uint8_t *frame = values == NULL ? psw_encode_alloc(&resp->base, &flen) : NULL;
  if (frame == NULL) {
    log_error("reply to %s could not be encoded; closing it", c->peer);
    conn_close(c);
    return;
  }
  conn_write(c, frame, flen, NULL, 0, NULL);
  free(frame);
}

static void conn_send(psd_conn *c, Psd__Response *resp, const void *values, size_t len) {
  conn_send_v(c, resp, values, len, NULL);
}

static void conn_send_error(psd_conn *c, uint64_t id, Psd__Code code, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  Psd__Response r = PSD__RESPONSE__INIT;
  Psd__Error e = PSD__ERROR__INIT;
  e.code = code;
  e.message = msg;
  r.id = id;
  r.body_case = PSD__RESPONSE__BODY_ERROR;
  r.error = &e;
  log_debug("error to %s (request %llu): %s", c->peer, (unsigned long long)id, msg);
  conn_send(c, &r, NULL, 0);
}

static void conn_send_ack(psd_conn *c, uint64_t id, const char *detail) {
  Psd__Response r = PSD__RESPONSE__INIT;
  Psd__Ack a = PSD__ACK__INIT;
  a.detail = (char *)detail;
  r.id = id;
  r.body_case = PSD__RESPONSE__BODY_ACK;
  r.ack = &a;
  conn_send(c, &r, NULL, 0);
}

/* ---- delivering the outbox ------------------------------------------------ */

/* A block reply: its version, and its values as they were when the reply
 * was decided (from the block, or from the outbox's copy if the block has
 * changed since), in the frame or in the connection's lane slot. */
static void send_block(psd_conn *c, psd_ob_rec *r) {
  Psd__Response resp = PSD__RESPONSE__INIT;
  Psd__BlockReply br = PSD__BLOCK_REPLY__INIT;
  br.version = r->version;
  if (r->duplicate) br.has_duplicate = 1, br.duplicate = 1;
  resp.id = r->id;
  resp.body_case = PSD__RESPONSE__BODY_BLOCK;
  resp.block = &br;
  const float *values = r->snap ? r->snap : r->block ? r->block->w : NULL;
  size_t len = r->n * sizeof(float);
  if (r->want_values && r->lane_out != 0) {
    /* The slot was checked against this connection's lane when the request
     * came, and the lane lives as long as the connection. */
    if (!r->filled) memcpy(c->lane.base + r->lane_out, values, len);
    br.has_in_lane = 1, br.in_lane = 1;
    c->srv->stats.lane_ops++;
    c->srv->stats.lane_bytes += len;
    conn_send(c, &resp, NULL, 0);
    /* The client can copy the values out while this shard works on. */
    conn_flush(c);
  } else if (r->want_values) {
    values_src vs = {r->snap ? NULL : r->block, r->snap ? &r->snap : NULL, len};
    conn_send_v(c, &resp, values, len, &vs);
  } else {
    conn_send(c, &resp, NULL, 0);
  }
}

/* A table's rows reply: its step, and the rows gathered when it was decided
 * (owned by the record; a write that the socket does not take at once
 * adopts them instead of copying). */
static void send_rows(psd_conn *c, psd_ob_rec *r) {
  Psd__Response resp = PSD__RESPONSE__INIT;
  Psd__RowsReply rr = PSD__ROWS_REPLY__INIT;
  rr.step = r->version;
  rr.n = r->rows;
  if (r->duplicate) rr.has_duplicate = 1, rr.duplicate = 1;
  resp.id = r->id;
  resp.body_case = PSD__RESPONSE__BODY_ROWS;
  resp.rows = &rr;
  if (r->snap != NULL) {
    size_t len = r->n * sizeof(float);
    values_src vs = {NULL, &r->snap, len};
    conn_send_v(c, &resp, r->snap, len, &vs);
  } else {
    conn_send(c, &resp, NULL, 0);
  }
}

/* Send every reply the state code decided, in order, then empty the
 * outbox. Records of connections that closed meanwhile are dropped. */
static void deliver(psd_server *srv) {
  psd_outbox *ob = &srv->outbox;
  psd_m.now_ns = 0;
  psd_m.reply.type = PSD_RT_NONE;
  for (size_t i = 0; i < ob->len; i++) {
    psd_ob_rec *r = &ob->r[i];
    psd_conn *c = r->conn;
    if (c == NULL || c->closing) {
      metrics_dropped(&r->stamp);
      continue;
    }
    metrics_reply(&r->stamp, r->kind == PSD_OB_ERROR ? PSD_RES_ERROR
                             : r->duplicate          ? PSD_RES_DUPLICATE
                                                     : PSD_RES_OK);
    switch (r->kind) {
      case PSD_OB_BLOCK:
        send_block(c, r);
        break;
      case PSD_OB_ERROR:
        conn_send_error(c, r->id, (Psd__Code)r->code, "%s",
                        r->msg ? r->msg : "(out of memory formatting the error)");
        break;
      case PSD_OB_ACK:
        conn_send_ack(c, r->id, r->msg);
        break;
      case PSD_OB_FRAME:
        conn_write(c, r->frame, r->frame_len, NULL, 0, NULL);
        break;
      case PSD_OB_ROWS:
        send_rows(c, r);
        break;
    }
  }
  outbox_clear(ob);
}

/* ---- connection lifetime ------------------------------------------------------ */

/* The last of a connection: its record and its job reference. */
static void conn_free(psd_conn *c) {
  if (c->job != NULL) job_unref(c->srv, c->job);
  mem_release(PSD_MEM_META, sizeof(*c));
  free(c);
}

static void conn_close_cb(uv_handle_t *h) {
  psd_conn *c = h->data;
  free(c->list);
  free(c->obuf);
  mem_release(PSD_MEM_OUTPUT, c->ocap);
  psw_rbuf_free(&c->in);
  mem_release(PSD_MEM_INPUT, c->in_charged);
  if (c->lane.base != NULL) {
    c->srv->stats.lanes--;
    mem_release(PSD_MEM_LANES, c->lane.len);
  }
  psl_close(&c->lane);
  if (c->in_grave) {
    c->close_done = 1; /* freed once its last held reply is dropped (bury) */
    return;
  }
  conn_free(c);
}

/* Drop up to *budget of c's held replies; 1 when none is left. */
static int conn_drop_waiters(psd_conn *c, size_t *budget) {
  while (!psd_link_empty(&c->waiters) && *budget > 0) {
    psd_waiter *w = psd_link_entry(c->waiters.next, psd_waiter, conn_link);
    if (w->kind == PSD_WAIT_PUSH) round_drop_waiter(w);
    else if (w->kind == PSD_WAIT_SET) set_drop_waiter(w);
    waiter_free(w);
    (*budget)--;
  }
  return psd_link_empty(&c->waiters);
}

/* Drop the held replies of closed connections, up to budget. A closed
 * connection's record lives until then: its waiters point at it, and a
 * reply decided for one of them meanwhile is skipped (it is closing). */
static void bury(psd_server *srv, size_t budget) {
  while (!psd_link_empty(&srv->graveyard) && budget > 0) {
    psd_conn *c = psd_link_entry(srv->graveyard.next, psd_conn, grave_link);
    if (!conn_drop_waiters(c, &budget)) break;
    psd_link_remove(&c->grave_link);
    c->in_grave = 0;
    if (c->close_done) conn_free(c);
  }
  if (!psd_link_empty(&srv->graveyard)) spread_on(srv);
}

/* Complete requests still buffered (never run: their peer is gone). */
static uint64_t buffered_frames(const psw_rbuf *in) {
  psw_rbuf b = *in;
  const uint8_t *p;
  uint64_t len, n = 0;
  while (n < 100000 && psw_rbuf_next(&b, &p, &len) == PSW_FRAME) {
    psw_rbuf_consume(&b, len);
    n++;
  }
  return n;
}

static void conn_close(psd_conn *c) {
  if (c->closing) return;
  /* Gathered replies (often the error that explains the close) get one
   * best-effort write. */
  if (c->olen > 0) {
    uv_buf_t b = uv_buf_init((char *)c->obuf, (unsigned)c->olen);
    uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    c->olen = 0;
  }
  c->closing = 1;
  c->srv->turn_closes++;
  /* Requests it sent that were not run yet are dropped, not run. */
  uint64_t dropped = buffered_frames(&c->in);
  if (dropped > 0) {
    c->srv->stats.dropped_requests += dropped;
    log_info("connection from %s closed with %llu requests not run; they are dropped", c->peer,
             (unsigned long long)dropped);
  }
  psd_link_remove(&c->paused_link);
  c->paused = 0;
  if (c->parked) { /* its waiting request is dropped with the others */
    psd_link_remove(&c->park_link);
    c->parked = 0;
  }
  /* Held replies die with the connection; a client that reconnects resends
   * its requests and the sequence numbers sort out what was applied. Many
   * are dropped over several turns (bury). */
  size_t budget = c->srv->stopping ? SIZE_MAX : WAITERS_PER_TURN;
  if (!conn_drop_waiters(c, &budget)) {
    c->in_grave = 1;
    psd_link_insert_tail(&c->srv->graveyard, &c->grave_link);
    spread_on(c->srv);
  }
  outbox_forget_conn(&c->srv->outbox, c);
  psd_link_remove(&c->link);
  if (c->dirty) {
    psd_link_remove(&c->dirty_link);
    c->dirty = 0;
  }
  c->srv->nconns--;
  session_detach(c->srv, c->worker_id, psd_now_ms());
  log_debug("connection from %s closed", c->peer);
  uv_close((uv_handle_t *)&c->tcp, conn_close_cb);
}

static void conn_maybe_resume(psd_conn *c) {
  if (!c->paused || c->closing || c->srv->stopping) return;
  if (c->yielded) {
    if (c->yield_turn == c->srv->loop_iter) return; /* next turn */
  } else if (conn_queued(c) > c->srv->cfg.out_cap / 2) {
    return;
  }
  c->yielded = 0;
  c->paused = 0;
  psd_link_remove(&c->paused_link);
  handle_frames(c); /* frames that arrived before the pause */
  if (!c->closing && !c->paused && !c->parked && !c->reading) conn_start_reading(c);
}

/* The receive buffer grows to hold a whole frame once its header has come
 * (a big frame is read straight into place); that memory is charged when
 * it is reserved, so a frame announced and never finished counts against
 * the ceiling, and one that would cross it is refused (read_cb closes). */
static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  psd_conn *c = h->data;
  size_t avail = 0, hint = suggested < 65536 ? 65536 : suggested;
  size_t want = psw_rbuf_grow_to(&c->in, hint), took = 0;
  buf->base = NULL;
  buf->len = 0;
  if (want > c->in.cap) {
    /* The old and the new buffer both exist while the bytes move. */
    if (mem_take(PSD_MEM_INPUT, want) != 0) {
      c->input_refused = 1;
      return;
    }
    took = want;
  }
  uint8_t *p = psw_rbuf_reserve(&c->in, hint, &avail);
  if (took) {
    mem_release(PSD_MEM_INPUT, took + c->in_charged);
    mem_charge(PSD_MEM_INPUT, c->in.cap);
    c->in_charged = c->in.cap;
  }
  if (p == NULL) return;
  /* libuv's buffer length is an unsigned int on some platforms. */
  if (avail > (1u << 30)) avail = 1u << 30;
  *buf = uv_buf_init((char *)p, (unsigned)avail);
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  psd_conn *c = s->data;
  server_turn_mark(c->srv);
  (void)buf;
  if (c->input_refused) {
    const uint8_t *pl;
    size_t have = 0;
    uint64_t flen = 0;
    psw_rbuf_partial(&c->in, &pl, &have, &flen);
    c->srv->stats.closed_input++;
    log_warn("closing %s: buffering its frame of %llu bytes would cross the memory ceiling "
             "(--max-memory %llu bytes, %llu in use)",
             c->peer, (unsigned long long)flen, (unsigned long long)mem_limit(),
             (unsigned long long)mem_used());
    conn_send_error(c, 0, PSD__CODE__RESOURCE_EXHAUSTED,
                    "a frame of %llu bytes would cross this shard's memory ceiling; closing "
                    "the connection",
                    (unsigned long long)flen);
    psw_rbuf_clear(&c->in); /* nothing of it was run */
    conn_close(c);
    return;
  }
  if (nread < 0) {
    if (nread != UV_EOF)
      log_info("connection from %s: %s", c->peer, uv_strerror((int)nread));
    if (c->in.end > c->in.start)
      log_info("connection from %s cut mid-frame (%zu bytes pending)", c->peer,
               c->in.end - c->in.start);
    conn_close(c);
    return;
  }
  if (nread == 0) return;
  if (buf->base == NULL) {
    log_error("out of memory reading from %s; closing it", c->peer);
    conn_close(c);
    return;
  }
  psw_rbuf_commit(&c->in, (size_t)nread);
  c->srv->stats.bytes_in += (uint64_t)nread;
  c->srv->turn_rbytes += (uint64_t)nread;
  /* The turn's start (server_turn_mark above: when the loop found work),
   * not a clock read of its own: the request's time from then on counts. */
  c->t_read = c->srv->turn_start_ns;
  handle_frames(c);
}

static void conn_start_reading(psd_conn *c) {
  if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb) == 0) c->reading = 1;
}

/* ---- requests -------------------------------------------------------------- */

/* A hello's proof was not good: one Error, a log line naming the peer, a
 * failure counted against its address. The caller closes the connection. */
static void auth_refuse(psd_conn *c, uint64_t id, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void auth_refuse(psd_conn *c, uint64_t id, const char *fmt, ...) {
  char msg[384];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  log_warn("authentication of %s failed: %s; closing the connection", c->peer, msg);
  auth_failure(c->srv, c->peer_addr, c->peer, psd_now_ms());
  conn_send_error(c, id, PSD__CODE__UNAUTHENTICATED, "%s; closing the connection", msg);
}

/* The checks of a proven hello that may still refuse it, in order: the
 * rank's form and role, the session's rank and job, room for a new
 * session, and for a worker the job's run (job.h) and its group
 * (group.h). 0, or -1 after answering the refusal; nothing of the
 * connection has changed then (a worker's hello may have started a new
 * run of an ended job: that stands). */
static int hello_admit(psd_conn *c, uint64_t id, psd_job *job, int rank, int role,
                       psd_session *sess, uint64_t sid, const Psd__Hello *h, uint64_t now) {
  psd_server *srv = c->srv;
  char err[512];
  if (rank < -1) {
    conn_send_error(c, id, PSD__CODE__WRONG_SHARD, "rank %d: workers have ranks >= 0, tools -1",
                    rank);
    return -1;
  }
  if (rank >= 0 && role < PSA_WORKER) {
    srv->stats.denied++;
    conn_send_error(c, id, PSD__CODE__PERMISSION_DENIED,
                    "role %s may not join the job as worker rank %d; that takes the worker "
                    "role", psa_role_name(role), rank);
    return -1;
  }
  if (sess != NULL && (sess->rank != rank || sess->job != job)) {
    srv->stats.denied++;
    conn_send_error(c, id, PSD__CODE__PERMISSION_DENIED,
                    "session %016llx was opened for rank %d of job '%s'; this hello says "
                    "rank %d of job '%s'",
                    (unsigned long long)sess->id, sess->rank, sess->job->name, rank, job->name);
    return -1;
  }
  if (role >= PSA_WORKER && sess == NULL && session_room(srv, now) != 0) {
    conn_send_error(c, id, PSD__CODE__RESOURCE_EXHAUSTED,
                    "this shard holds %zu sessions, all in use; no new one can be opened",
                    srv->sessions.len);
    return -1;
  }
  if (rank < 0) return 0;
  job_maybe_restart(srv, job, sess != NULL);
  int g = group_hello(srv, job, rank, h->num_workers, h->staleness, sid, now, err, sizeof(err));
  if (g < 0) {
    if (g == -2) srv->stats.denied++;
    conn_send_error(c, id, g == -2 ? PSD__CODE__PERMISSION_DENIED : PSD__CODE__WRONG_SHARD,
                    "%s", err);
    return -1;
  }
  return 0;
}

/* The hello proves the client's role (common/auth.h), names the client and, for
 * workers, the job, and opens or resumes the connection's session. The
 * server-list check is deferred to the first request that touches tensor
 * data, so that operators' tools (psctl ping, stats) work whatever list
 * they hold. Returns -1 when the connection must close (a failed proof). */
static int handle_hello(psd_conn *c, uint64_t id, const Psd__Hello *h) {
  psd_server *srv = c->srv;
  char err[256];
  psa_ctx ctx;
  uint64_t now = psd_now_ms();
  if (h->protocol != PS_PROTOCOL_VERSION) {
    conn_send_error(c, id, PSD__CODE__BAD_VERSION,
                    "client speaks protocol %u, this psd speaks %d", h->protocol,
                    PS_PROTOCOL_VERSION);
    return 0;
  }
  /* Check everything first; change the connection only when the whole
   * hello is accepted (a refused second hello leaves the first in force). */
  int rank = h->rank;
  int role = h->role != NULL && h->role[0] ? psa_role_parse(h->role)
             : rank >= 0                   ? PSA_WORKER
                                           : PSA_ADMIN;
  if (role < 0) {
    auth_refuse(c, id, "unknown role '%.40s' (admin, worker or reader)", h->role);
    return -1;
  }
  psp_servers s;
  int have_servers = h->servers != NULL && h->servers[0] != '\0';
  if (have_servers && psp_servers_parse(&s, h->servers, err, sizeof(err)) != 0) {
    conn_send_error(c, id, PSD__CODE__WRONG_SHARD, "bad server list: %s", err);
    return 0;
  }
  uint32_t idx = h->has_shard_index ? h->shard_index : 0;
  uint64_t sid_asked = h->has_session_id ? h->session_id : 0;
  if (srv->cfg.tokens) {
    psa_hello_context(&ctx, c->nonce, role, rank, h->num_workers, h->staleness,
                      have_servers ? s.list_hash : 0, idx, sid_asked);
    const char *why = NULL;
    if (srv->cfg.token_len[role] == 0)
      why = "this shard has no token for that role";
    else if (!h->has_proof)
      why = "the hello carries no proof of the role's token";
    else if (!psa_mac_ok(h->proof.data, h->proof.len, srv->cfg.token[role],
                         srv->cfg.token_len[role], &ctx))
      why = "wrong proof (another token, or a proof made for another connection)";
    if (why != NULL) {
      if (have_servers) psp_servers_free(&s);
      auth_refuse(c, id, "role %s refused: %s", psa_role_name(role), why);
      return -1;
    }
  } else {
    /* Protected mode: only loopback peers (or anyone with --insecure) got
     * this far, and each of them is the single user of the machine. */
    role = PSA_ADMIN;
  }
  /* A session to resume must be proven with its secret, whatever the
   * role's token says: no client can take another's session. */
  psd_session *sess = NULL;
  if (sid_asked != 0 && role >= PSA_WORKER && (sess = session_find(srv, sid_asked)) != NULL) {
    psa_resume_context(&ctx, c->nonce, sid_asked, rank);
    if (!h->has_session_proof || !psa_mac_ok(h->session_proof.data, h->session_proof.len,
                                             sess->secret, sizeof(sess->secret), &ctx)) {
      if (have_servers) psp_servers_free(&s);
      auth_refuse(c, id, "session %016llx refused: wrong or missing proof of its secret",
                  (unsigned long long)sid_asked);
      return -1;
    }
  }

  char *list = NULL;
  uint64_t list_hash = 0;
  if (have_servers) {
    int bad = idx >= (uint32_t)s.n || (h->has_servers_hash && h->servers_hash != s.list_hash);
    if (!bad) {
      list = strdup(s.list);
      list_hash = s.list_hash;
    }
    psp_servers_free(&s);
    if (bad || list == NULL) {
      conn_send_error(c, id, PSD__CODE__WRONG_SHARD,
                      "shard index %u or hash does not match the server list sent", idx);
      return 0;
    }
  }
  /* The job the connection acts in: a reference held from here; every
   * refusal below drops it (an empty job made for this hello goes too). */
  const char *jname = h->job != NULL && h->job[0] ? h->job : PSD_JOB_DEFAULT;
  int jcode;
  psd_job *job = job_get(srv, jname, &jcode, err, sizeof(err));
  if (job == NULL) {
    free(list);
    conn_send_error(c, id, jcode, "%s", err);
    return 0;
  }
  job_ref(job);
  uint64_t sid = role < PSA_WORKER ? 0 : sess != NULL ? sess->id : session_new_id(srv);
  if (hello_admit(c, id, job, rank, role, sess, sid, h, now) != 0) {
    free(list);
    job_unref(srv, job);
    return 0;
  }
  uint8_t *secret = NULL;
  if (role >= PSA_WORKER) {
    /* Readers have no session: they cannot push. Others resume theirs or
     * get a new one (also when the shard no longer knows the one they
     * name). hello_admit made room for it. */
    if (sess == NULL) {
      sess = session_open(srv, job, sid, rank, role, now);
      if (sess == NULL) {
        free(list);
        job_unref(srv, job);
        conn_send_error(c, id, PSD__CODE__INTERNAL, "out of memory opening a session");
        return 0;
      }
      secret = sess->secret;
      log_info("%s: new session %016llx (%s, rank %d, job '%s')", c->peer,
               (unsigned long long)sid, psa_role_name(role), rank, job->name);
    } else {
      log_info("%s: resumed session %016llx (%s, rank %d, job '%s')", c->peer,
               (unsigned long long)sid, psa_role_name(role), rank, job->name);
    }
  }
  if (c->worker_id != sid) {
    session_detach(srv, c->worker_id, now);
    session_attach(srv, sid, now);
  }
  if (c->job != NULL) job_unref(srv, c->job); /* a second hello may name another job */
  c->job = job;
  c->incarnation = job->incarnation;
  srv->stats.auth_ok++;
  c->hello_done = 1;
  c->in.max_frame = conn_max_frame(c); /* authenticated: frames up to --max-frame */
  c->role = role;
  c->rank = rank;
  c->worker_id = sid;
  if (list != NULL) {
    free(c->list);
    c->list = list;
    c->list_index = (int)idx;
    c->list_hash = list_hash;
  }
  log_debug("hello from %s: identity '%s' rank %d", c->peer,
            h->identity ? h->identity : "", c->rank);

  Psd__Response r = PSD__RESPONSE__INIT;
  Psd__HelloReply hr = PSD__HELLO_REPLY__INIT;
  Psd__LaneOffer lo = PSD__LANE_OFFER__INIT;
  /* A lane for a worker (or admin) on this host that asks for one
   * (common/lane.h); never for a reader, whose pulls need none and whose
   * token a monitoring script holds. A lane that cannot be made costs
   * nothing: the client stays on TCP. */
  if (h->has_lane_bytes && h->lane_bytes > 0 && c->peer_local && srv->cfg.lane_max > 0 &&
      c->lane.base == NULL && role >= PSA_WORKER) {
    uint64_t want = h->lane_bytes < srv->cfg.lane_max ? h->lane_bytes : srv->cfg.lane_max;
    /* Within the memory ceiling, or not at all (the client stays on TCP). */
    if (mem_take_growth(PSD_MEM_LANES, want) != 0) {
      log_warn("%s asked for a shared-memory lane of %llu bytes: that would cross the memory "
               "ceiling; it stays on TCP", c->peer, (unsigned long long)want);
    } else if (psl_create(&c->lane, want, err, sizeof(err)) != 0) {
      mem_release(PSD_MEM_LANES, want);
      log_warn("%s asked for a shared-memory lane: %s; it stays on TCP", c->peer, err);
    } else {
      mem_release(PSD_MEM_LANES, want);
      mem_charge(PSD_MEM_LANES, c->lane.len);
      srv->stats.lanes++;
      log_debug("%s: shared-memory lane of %zu bytes (fd %d)", c->peer, c->lane.len,
                c->lane.fd);
    }
  }
  if (c->lane.base != NULL) {
    lo.pid = (uint32_t)getpid();
    lo.fd = c->lane.fd;
    lo.bytes = c->lane.len;
    lo.cookie.data = c->lane.cookie;
    lo.cookie.len = PSL_COOKIE;
    hr.lane = &lo;
  }
  hr.protocol = PS_PROTOCOL_VERSION;
  hr.server_version = PS_VERSION_STRING;
  hr.role = (char *)psa_role_name(role);
  if (sid != 0) {
    hr.has_session_id = 1, hr.session_id = sid;
    hr.has_resumed = 1, hr.resumed = secret == NULL;
    if (secret != NULL) {
      hr.has_session_secret = 1;
      hr.session_secret.data = secret;
      hr.session_secret.len = PSA_SECRET;
    }
  }
  if (srv->have_list) {
    hr.has_servers_hash = 1;
    hr.servers_hash = srv->servers.list_hash;
    hr.has_shard_index = 1;
    hr.shard_index = (uint32_t)srv->shard_index;
  }
  if (job->group.configured) {
    hr.has_staleness = 1;
    hr.staleness = job->group.staleness;
    hr.has_num_workers = 1;
    hr.num_workers = job->group.num_workers;
  }
  hr.job = job->name;
  hr.has_incarnation = 1;
  hr.incarnation = job->incarnation;
  r.id = id;
  r.body_case = PSD__RESPONSE__BODY_HELLO;
  r.hello = &hr;
  conn_send(c, &r, NULL, 0);
  return 0;
}

/* Blocks being made over turns (tensor.h). */
static size_t growing_count(psd_server *srv) {
  size_t n = 0;
  for (psd_link *l = srv->growing.next; l != &srv->growing; l = l->next) n++;
  return n;
}

static void handle_stats(psd_conn *c, uint64_t id) {
  psd_server *srv = c->srv;
  psd_job *job = c->job;
  size_t glen = 1024 + (size_t)job->group.num_workers * 160;
  size_t jlen = 256 + (size_t)srv->njobs * (PSD_JOB_NAME_MAX + 256);
  size_t tlen = tables_json_size(srv);
  size_t cap = 8192 + glen + 6 * sizeof(srv->cfg.servers);
  char *lat = metrics_stats_json();
  if (lat != NULL) cap += strlen(lat);
  cap += jlen + tlen;
  char *json = malloc(cap);
  char *grp = malloc(glen);
  char *jobs = malloc(jlen);
  char *tabs = malloc(tlen);
  char ck[512];
  if (json == NULL || grp == NULL || lat == NULL || jobs == NULL || tabs == NULL) {
    free(json);
    free(grp);
    free(jobs);
    free(tabs);
    free(lat);
    conn_send_error(c, id, PSD__CODE__INTERNAL, "out of memory");
    return;
  }
  uint64_t blocks = 0, vmin, vmax, vsum;
  tensor_versions(srv, &vmin, &vmax, &vsum, &blocks);
  uint64_t bytes = mem_used_by(PSD_MEM_TENSORS), pending = rounds_pending(srv);
  group_json(job, psd_now_ms(), grp, glen);
  jobs_json(srv, jobs, jlen);
  tables_json(srv, tabs, tlen);
  ckpt_json(srv, ck, sizeof(ck));
  char mem[512], loop[512], lim[1024];
  mem_json(mem, sizeof(mem));
  static const char *const edges[9] = {"<1", "<2", "<5", "<10", "<20", "<50", "<100", "<1000",
                                       ">=1000"};
  size_t ln = (size_t)snprintf(loop, sizeof(loop),
                               "{\"turns\":%llu,\"worst_stall_ms\":%s,"
                               "\"worst_stall_cpu_ms\":%s,\"stall_ms\":{",
                               (unsigned long long)srv->loop_turns,
                               psn_num((double)srv->loop_worst_us / 1000.0).s,
                               psn_num((double)srv->loop_worst_cpu_us / 1000.0).s);
  for (int i = 0; i < 9 && ln < sizeof(loop); i++)
    ln += (size_t)snprintf(loop + ln, sizeof(loop) - ln, "%s\"%s\":%llu", i ? "," : "",
                           edges[i], (unsigned long long)srv->loop_hist[i]);
  if (ln < sizeof(loop)) snprintf(loop + ln, sizeof(loop) - ln, "}}");
  uint64_t npaused = 0; /* for their output (not those that only yielded a turn) */
  for (psd_link *l = srv->paused.next; l != &srv->paused; l = l->next)
    npaused += !psd_link_entry(l, psd_conn, paused_link)->yielded;
  snprintf(lim, sizeof(lim),
           "{\"max_clients\":%llu,\"out_cap\":%llu,\"max_frame\":%llu,"
           "\"frame_timeout_s\":%s,\"hello_timeout_s\":%s,\"idle_timeout_s\":%s,"
           "\"paused\":%llu,\"pauses\":%llu,\"yields\":%llu,\"clients_refused\":%llu,"
           "\"accept_errors\":%llu,\"closed_hello\":%llu,\"closed_idle\":%llu,"
           "\"closed_frame\":%llu,\"closed_input\":%llu,\"closed_write\":%llu,"
           "\"dropped_requests\":%llu}",
           (unsigned long long)srv->cfg.max_clients, (unsigned long long)srv->cfg.out_cap,
           (unsigned long long)srv->cfg.max_frame, psn_num(srv->cfg.frame_timeout).s,
           psn_num(srv->cfg.hello_timeout).s, psn_num(srv->cfg.idle_timeout).s,
           (unsigned long long)npaused,
           (unsigned long long)srv->stats.pauses, (unsigned long long)srv->stats.yields, (unsigned long long)srv->stats.clients_refused,
           (unsigned long long)srv->stats.accept_errors,
           (unsigned long long)srv->stats.closed_hello, (unsigned long long)srv->stats.closed_idle,
           (unsigned long long)srv->stats.closed_frame,
           (unsigned long long)srv->stats.closed_input,
           (unsigned long long)srv->stats.closed_write,
           (unsigned long long)srv->stats.dropped_requests);
  /* The list came from a configuration, a checkpoint or an admin's hello:
   * escaped, whatever it holds. */
  static char list[6 * sizeof(srv->cfg.servers) + 8];
  json_escape(list, sizeof(list), srv->have_list ? srv->servers.list : "");
  char auth[384];
  snprintf(auth, sizeof(auth),
           "{\"tokens\":%s,\"roles\":[%s%s%s%s%s],\"accepted\":%llu,\"failed\":%llu,"
           "\"refused\":%llu,\"denied\":%llu,\"addresses_refused\":%u,\"sessions\":%zu,"
           "\"fail_limit\":%u,\"fail_window_s\":%g,\"ban_s\":%g}",
           srv->cfg.tokens ? "true" : "false",
           srv->cfg.token_len[PSA_ADMIN] ? "\"admin\"" : "",
           srv->cfg.token_len[PSA_ADMIN] && srv->cfg.token_len[PSA_WORKER] ? "," : "",
           srv->cfg.token_len[PSA_WORKER] ? "\"worker\"" : "",
           (srv->cfg.token_len[PSA_ADMIN] || srv->cfg.token_len[PSA_WORKER]) &&
                   srv->cfg.token_len[PSA_READER] ? "," : "",
           srv->cfg.token_len[PSA_READER] ? "\"reader\"" : "",
           (unsigned long long)srv->stats.auth_ok, (unsigned long long)srv->stats.auth_failed,
           (unsigned long long)srv->stats.auth_refused, (unsigned long long)srv->stats.denied,
           auth_banned_count(srv, psd_now_ms()), srv->sessions.len, srv->cfg.auth_fail_limit,
           srv->cfg.auth_fail_window, srv->cfg.auth_ban);
  snprintf(json, cap,
           "{\"version\":\"%s\",\"uptime_s\":%s,\"shard_index\":%d,\"servers\":\"%s\","
           "\"connections\":%llu,\"tensors\":%zu,\"version_min\":%llu,\"version_max\":%llu,"
           "\"version_sum\":%llu,\"blocks_touched\":%llu,"
           "\"bytes\":%llu,\"pushes\":%llu,\"pulls\":%llu,\"duplicates\":%llu,"
           "\"rejected\":%llu,\"bad_frames\":%llu,\"rounds\":%llu,"
           "\"rounds_pending\":%llu,\"held_pulls\":%llu,\"held_sets\":%llu,\"bytes_in\":%llu,"
           "\"bytes_out\":%llu,\"lanes\":%llu,\"lane_ops\":%llu,\"lane_bytes\":%llu,"
           "\"nonfinite_refused\":%llu,\"replies_lost\":%llu,\"blocks_growing\":%zu,"
           "\"row_pulls\":%llu,\"row_pushes\":%llu,\"rows_updated\":%llu,\"tables\":%s,"
           "\"job\":\"%s\",\"incarnation\":%llu,\"group\":%s,\"jobs\":%s,\"checkpoint\":%s,\"auth\":%s,\"memory\":%s,\"loop\":%s,"
           "\"limits\":%s,\"latency\":%s}",
           PS_VERSION_STRING, psn_num((double)(psd_now_ms() - srv->start_ms) / 1000.0).s,
           srv->have_list ? srv->shard_index : -1,
           list, (unsigned long long)srv->nconns,
           srv->ntensors, (unsigned long long)vmin, (unsigned long long)vmax,
           (unsigned long long)vsum, (unsigned long long)blocks, (unsigned long long)bytes,
           (unsigned long long)srv->stats.pushes, (unsigned long long)srv->stats.pulls,
           (unsigned long long)srv->stats.duplicates, (unsigned long long)srv->stats.rejected,
           (unsigned long long)srv->stats.bad_frames, (unsigned long long)srv->stats.rounds,
           (unsigned long long)pending, (unsigned long long)srv->stats.held_pulls,
           (unsigned long long)srv->stats.held_sets,
           (unsigned long long)srv->stats.bytes_in, (unsigned long long)srv->stats.bytes_out,
           (unsigned long long)srv->stats.lanes, (unsigned long long)srv->stats.lane_ops,
           (unsigned long long)srv->stats.lane_bytes, (unsigned long long)srv->stats.nonfinite,
           (unsigned long long)srv->outbox.lost, growing_count(srv),
           (unsigned long long)srv->stats.row_pulls, (unsigned long long)srv->stats.row_pushes,
           (unsigned long long)srv->stats.rows_updated, tabs, job->name,
           (unsigned long long)job->incarnation, grp, jobs, ck, auth, mem, loop, lim, lat);
  Psd__Response r = PSD__RESPONSE__INIT;
  Psd__StatsReply sr = PSD__STATS_REPLY__INIT;
  sr.json = json;
  r.id = id;
  r.body_case = PSD__RESPONSE__BODY_STATS;
  r.stats = &sr;
  conn_send(c, &r, NULL, 0);
  free(json);
  free(grp);
  free(jobs);
  free(tabs);
  free(lat);
}

/* Requests that read or write tensor data need a hello whose server list
 * agrees with this shard's, or blocks would land on the wrong shard. */
static int require_list(psd_conn *c, uint64_t id) {
  psd_server *srv = c->srv;
  if (!c->hello_done) {
    conn_send_error(c, id, PSD__CODE__NOT_READY, "send a hello before any other request");
    return -1;
  }
  if (c->list == NULL) {
    conn_send_error(c, id, PSD__CODE__WRONG_SHARD,
                    "the hello carried no server list; tensor requests need one");
    return -1;
  }
  if (!srv->have_list) {
    /* The shard's identity is its configuration's (--servers, --index), or
     * an admin's: a worker or reader cannot decide where blocks live. */
    if (c->role < PSA_ADMIN) {
      srv->stats.denied++;
      conn_send_error(c, id, PSD__CODE__WRONG_SHARD,
                      "this shard has no server list yet and role %s may not set it: start "
                      "it with --servers LIST --index N (PSD_SERVERS, PSD_INDEX), or let an "
                      "admin's first tensor request set it", psa_role_name(c->role));
      return -1;
    }
    char err[256];
    if (psp_servers_parse(&srv->servers, c->list, err, sizeof(err)) != 0) {
      conn_send_error(c, id, PSD__CODE__INTERNAL, "%s", err);
      return -1;
    }
    srv->have_list = 1;
    srv->shard_index = c->list_index;
    log_info("joined server list '%s' as shard %d of %d (set by admin %s)",
             srv->servers.list, srv->shard_index, srv->servers.n, c->peer);
  }
  if (c->list_hash != srv->servers.list_hash || c->list_index != srv->shard_index) {
    conn_send_error(c, id, PSD__CODE__WRONG_SHARD,
                    "server list mismatch: this shard is entry %d of '%s' but the client "
                    "says entry %d of '%s'; every client must use the same list, in the "
                    "same order",
                    srv->shard_index, srv->servers.list, c->list_index, c->list);
    return -1;
  }
  return 0;
}

/* A worker's clock advanced or the live set changed: sync rounds may stop
 * waiting. */
static void group_changed(psd_server *srv, psd_job *j, int changed) {
  if ((changed & GROUP_CHANGED) && j->group.staleness == 0) rounds_recheck(srv, j);
}

/* The connection's session ends: its rank departs now, its exactly-once
 * record goes, and the connection goes on as a tool without a session. */
static void handle_goodbye(psd_conn *c, uint64_t id) {
  psd_server *srv = c->srv;
  if (c->worker_id != 0) {
    session_detach(srv, c->worker_id, psd_now_ms());
    group_changed(srv, c->job, session_end(srv, c->worker_id));
    c->worker_id = 0;
  }
  c->rank = -1;
  outbox_ack(&srv->outbox, c, id, "goodbye");
}

static void handle_jobs(psd_conn *c, uint64_t id) {
  Psd__Response r = PSD__RESPONSE__INIT;
  Psd__JobList jl;
  if (jobs_reply(c->srv, &r, &jl) != 0) {
    conn_send_error(c, id, PSD__CODE__INTERNAL, "out of memory listing jobs");
    return;
  }
  r.id = id;
  conn_send(c, &r, NULL, 0);
  jobs_reply_free(&jl);
}

/* psctl job end NAME / job drop NAME (admin). */
static void handle_job_control(psd_conn *c, uint64_t id, const char *name, int drop) {
  psd_server *srv = c->srv;
  psd_job *j = job_find(srv, name);
  if (j == NULL) {
    conn_send_error(c, id, PSD__CODE__NOT_FOUND, "no job named '%s' on this shard", name);
    return;
  }
  char why[128], detail[256];
  snprintf(why, sizeof(why), "ended by admin %s", c->peer);
  uint64_t run = j->incarnation;
  int was_ended = j->ended;
  if (drop) {
    snprintf(detail, sizeof(detail), "job '%s' dropped (%zu tensors freed)", name, j->ntensors);
    job_drop(srv, j); /* j may be gone now */
  } else {
    job_end(srv, j, why);
    snprintf(detail, sizeof(detail), "job '%s' run %llu %s", name, (unsigned long long)run,
             was_ended ? "had already ended" : "ended");
  }
  outbox_ack(&srv->outbox, c, id, detail);
}

/* Requests that act in the connection's job (its tensors, its group). */
static int job_scoped(int bc) {
  switch (bc) {
    case PSD__REQUEST__BODY_CREATE:
    case PSD__REQUEST__BODY_LOOKUP:
    case PSD__REQUEST__BODY_LIST:
    case PSD__REQUEST__BODY_PULL:
    case PSD__REQUEST__BODY_PUSH:
    case PSD__REQUEST__BODY_CLOCK:
    case PSD__REQUEST__BODY_HEARTBEAT:
    case PSD__REQUEST__BODY_BARRIER:
    case PSD__REQUEST__BODY_DELETE:
    case PSD__REQUEST__BODY_RESET:
    case PSD__REQUEST__BODY_SET:
    case PSD__REQUEST__BODY_TUNE:
    case PSD__REQUEST__BODY_CREATE_TABLE:
    case PSD__REQUEST__BODY_LOOKUP_TABLE:
    case PSD__REQUEST__BODY_PULL_ROWS:
    case PSD__REQUEST__BODY_PUSH_ROWS:
    case PSD__REQUEST__BODY_TABLES:
      return 1;
    default:
      return 0;
  }
}

/* Dispatch one decoded request. Returns -1 if the connection must close.
 * The replies it decides are in the outbox; the caller delivers them. */
static int handle_request(psd_conn *c, Psd__Request *req, const uint8_t *values,
                          size_t vlen) {
  psd_server *srv = c->srv;
  uint64_t id = req->id;
  if (req->body_case != PSD__REQUEST__BODY_HELLO && req->body_case != PSD__REQUEST__BODY_PING &&
      !c->hello_done) {
    conn_send_error(c, id, PSD__CODE__NOT_READY, "send a hello before any other request");
    return 0;
  }
  int bc = (int)req->body_case;
  if (bc != PSD__REQUEST__BODY_HELLO && c->hello_done && c->role < auth_min_role(bc)) {
    /* Nothing is looked at, nothing changes. */
    srv->stats.denied++;
    const char *what = auth_request_name(bc);
    conn_send_error(c, id, PSD__CODE__PERMISSION_DENIED,
                    "role %s may not %s%s; that takes the %s role", psa_role_name(c->role),
                    what, bc == PSD__REQUEST__BODY_CHECKPOINT ? " (write a checkpoint)"
                          : bc == PSD__REQUEST__BODY_CREATE   ? " (create a tensor)"
                          : bc == PSD__REQUEST__BODY_PUSH ||
                                  bc == PSD__REQUEST__BODY_PUSH_ROWS ? " (a gradient)"
                          : bc == PSD__REQUEST__BODY_DELETE
                              ? (req->delete_->table ? " (a table)" : " (a tensor)")
                          : bc == PSD__REQUEST__BODY_RESET
                              ? (req->reset->table ? " (empty a table)" : " (reinitialize a tensor)")
                          : bc == PSD__REQUEST__BODY_SET      ? " (write a tensor's values)"
                          : bc == PSD__REQUEST__BODY_TUNE     ? " (change optimizer settings)"
                                                              : "",
                    psa_role_name(auth_min_role(bc)));
    return 0;
  }
  /* A job's requests come from members of its running incarnation (a
   * worker that joined an ended run says hello again), and never from a
   * connection whose job was dropped. */
  if (job_scoped(bc) && !job_member(c)) {
    psd_job *j = c->job;
    if (j->dropped)
      conn_send_error(c, id, PSD__CODE__JOB_ENDED,
                      "%s refused: job '%s' was dropped; say hello again to start it anew",
                      auth_request_name(bc), j->name);
    else
      conn_send_error(c, id, PSD__CODE__JOB_ENDED,
                      "%s refused: the run of job '%s' this worker joined (run %llu) ended; "
                      "say hello again to join its next run",
                      auth_request_name(bc), j->name, (unsigned long long)c->incarnation);
    return 0;
  }
  /* Only the session that holds a rank speaks for it: its pushes, clocks,
   * barriers and heartbeats. A connection whose session lost the rank
   * (it departed and another session took it) is refused those. */
  int holder = 1;
  if (c->rank >= 0 && bc != PSD__REQUEST__BODY_HELLO && bc != PSD__REQUEST__BODY_GOODBYE)
    holder = session_find(srv, c->worker_id) != NULL && /* not ended by a goodbye */
             group_seen(c->job, c->rank, c->worker_id, psd_now_ms()) >= 0;
  if (!holder && (bc == PSD__REQUEST__BODY_PUSH || bc == PSD__REQUEST__BODY_SET ||
                  bc == PSD__REQUEST__BODY_PUSH_ROWS ||
                  bc == PSD__REQUEST__BODY_CLOCK ||
                  bc == PSD__REQUEST__BODY_HEARTBEAT || bc == PSD__REQUEST__BODY_BARRIER)) {
    srv->stats.denied++;
    conn_send_error(c, id, PSD__CODE__PERMISSION_DENIED,
                    "%s refused: worker rank %d is not held by this connection's session "
                    "(%016llx): another live session holds it, or this session ended",
                    auth_request_name(bc), c->rank, (unsigned long long)c->worker_id);
    return 0;
  }

  switch (req->body_case) {
    case PSD__REQUEST__BODY_HELLO:
      return handle_hello(c, id, req->hello);
    case PSD__REQUEST__BODY_GOODBYE:
      handle_goodbye(c, id);
      break;
    case PSD__REQUEST__BODY_PING:
      conn_send_ack(c, id, "pong");
      break;
    case PSD__REQUEST__BODY_CREATE:
      if (require_list(c, id) == 0) store_create(srv, c, id, req->create);
      break;
    case PSD__REQUEST__BODY_LOOKUP:
      store_lookup(srv, c, id, req->lookup);
      break;
    case PSD__REQUEST__BODY_LIST:
      store_list(srv, c, id);
      break;
    case PSD__REQUEST__BODY_PULL:
      if (require_list(c, id) == 0) store_pull(srv, c, id, req->pull);
      break;
    case PSD__REQUEST__BODY_PUSH:
      if (require_list(c, id) == 0) store_push(srv, c, id, req->push, values, vlen);
      break;
    case PSD__REQUEST__BODY_CREATE_TABLE:
      if (require_list(c, id) == 0) rows_create_table(srv, c, id, req->create_table);
      break;
    case PSD__REQUEST__BODY_LOOKUP_TABLE:
      rows_lookup_table(srv, c, id, req->lookup_table);
      break;
    case PSD__REQUEST__BODY_TABLES:
      rows_list_tables(srv, c, id);
      break;
    case PSD__REQUEST__BODY_PULL_ROWS:
      if (require_list(c, id) == 0) rows_pull(srv, c, id, req->pull_rows, values, vlen);
      break;
    case PSD__REQUEST__BODY_PUSH_ROWS:
      if (require_list(c, id) == 0) rows_push(srv, c, id, req->push_rows, values, vlen);
      break;
    case PSD__REQUEST__BODY_STATS:
      handle_stats(c, id);
      break;
    case PSD__REQUEST__BODY_DELETE:
      if (req->delete_->table) rows_delete_table(srv, c, id, req->delete_->name);
      else control_delete(srv, c, id, req->delete_);
      break;
    case PSD__REQUEST__BODY_RESET:
      if (req->reset->table) rows_reset_table(srv, c, id, req->reset->name);
      else control_reset(srv, c, id, req->reset);
      break;
    case PSD__REQUEST__BODY_SET:
      if (require_list(c, id) == 0) control_set(srv, c, id, req->set, values, vlen);
      break;
    case PSD__REQUEST__BODY_TUNE:
      control_tune(srv, c, id, req->tune);
      break;
    case PSD__REQUEST__BODY_CLOCK:
      if (c->rank >= 0)
        group_changed(srv, c->job, group_clock(c->job, c->rank, req->clock->clock));
      outbox_ack(&srv->outbox, c, id, NULL);
      break;
    case PSD__REQUEST__BODY_HEARTBEAT:
      if (c->rank >= 0 && req->heartbeat->has_clock)
        group_changed(srv, c->job, group_clock(c->job, c->rank, req->heartbeat->clock));
      outbox_ack(&srv->outbox, c, id, NULL);
      break;
    case PSD__REQUEST__BODY_BARRIER:
      if (c->rank < 0) {
        conn_send_error(c, id, PSD__CODE__NOT_READY, "only workers (rank >= 0) join barriers");
        break;
      }
      group_barrier(srv, c->job, c, id, req->barrier->gen);
      break;
    case PSD__REQUEST__BODY_CHECKPOINT:
      ckpt_request(srv, c, id);
      break;
    case PSD__REQUEST__BODY_JOBS:
      handle_jobs(c, id);
      break;
    case PSD__REQUEST__BODY_JOB_END:
      handle_job_control(c, id, req->job_end->job, 0);
      break;
    case PSD__REQUEST__BODY_JOB_DROP:
      handle_job_control(c, id, req->job_drop->job, 1);
      break;
    default:
      conn_send_error(c, id, PSD__CODE__UNKNOWN_REQUEST,
                      "unknown request type %d; closing the connection", (int)req->body_case);
      return -1;
  }
  return 0;
}

/* Take every complete frame from the input buffer and act on it. Stops
 * early when the connection is paused or closing; the remaining frames wait
 * in the buffer. */
static void handle_frames(psd_conn *c) {
  psd_server *srv = c->srv;
  while (!c->closing && !c->paused && !c->parked) {
    /* Within the turn's budget (one request at least per turn). */
    if (turn_over(srv)) {
      const uint8_t *pl;
      uint64_t l;
      psw_rbuf tmp = c->in;
      if (psw_rbuf_next(&tmp, &pl, &l) == PSW_FRAME) conn_yield(c);
      break;
    }
    /* Backpressure: with its output over the cap, not even the requests
     * already buffered are run (each may queue a reply). */
    if (conn_queued(c) > srv->cfg.out_cap) {
      conn_pause(c);
      break;
    }
    const uint8_t *payload;
    uint64_t len;
    int r = psw_rbuf_next(&c->in, &payload, &len);
    if (r == PSW_NEED_MORE) {
      /* A frame still arriving must be whole within --frame-timeout. */
      if (c->in.end > c->in.start) {
        if (c->frame_start_ms == 0) c->frame_start_ms = psd_now_ms();
      } else {
        c->frame_start_ms = 0;
      }
      break;
    }
    c->frame_start_ms = 0;
    if (r < 0) {
      srv->stats.bad_frames++;
      const char *why = r == PSW_ETOOLARGE && !c->hello_done
                            ? " (before its hello is accepted, a connection may send frames of "
                              "at most 65536 bytes)"
                        : r == PSW_ETOOLARGE ? " (see psd --max-frame)"
                                             : "";
      log_warn("closing %s: %s%s", c->peer, psw_strerror(r), why);
      conn_send_error(c, 0, r == PSW_ETOOLARGE ? PSD__CODE__TOO_LARGE
                            : r == PSW_EVERSION ? PSD__CODE__BAD_VERSION
                                                : PSD__CODE__BAD_FRAME,
                      "%s%s; closing the connection", psw_strerror(r), why);
      conn_close(c);
      break;
    }
    const uint8_t *values;
    size_t vlen;
    Psd__Request *req = (Psd__Request *)psw_decode(&psd__request__descriptor, payload,
                                                   (size_t)len, &values, &vlen);
    if (req == NULL) {
      srv->stats.bad_frames++;
      log_warn("closing %s: frame of %llu bytes is not a valid Request message", c->peer,
               (unsigned long long)len);
      conn_send_error(c, 0, PSD__CODE__BAD_FRAME,
                      "payload is not a valid psd.Request protobuf; closing the connection");
      conn_close(c);
      break;
    }
    psd_stamp st = {c->t_read, metrics_type(req)};
    srv->outbox.stamp = psd_m.reply = st;
    psd_m.now_ns = 0;
    c->last_active_ms = psd_now_ms();
    if (srv->turn_requests++ == 0) srv->turn_deadline_ns = uv_hrtime() + TURN_BUDGET_NS;
    char why[256];
    int rc = 0;
    srv->park_on = NULL;
    if (psw_check_strings(&psd__request__descriptor, payload, (size_t)len, why, sizeof(why)) !=
        0) {
      /* Names that alias ("w\0EVIL" read as "w") or are not text. */
      srv->stats.rejected++;
      conn_send_error(c, req->id, PSD__CODE__BAD_REQUEST,
                      "%s: names and kind strings must be UTF-8 without NUL bytes; nothing "
                      "was done",
                      why);
    } else {
      rc = handle_request(c, req, values, vlen);
    }
    srv->outbox.stamp.type = PSD_RT_NONE;
    /* Replies go out before the frame's bytes are released: a reply may
     * not, but nothing else may still point into the receive buffer. */
    deliver(srv);
    protobuf_c_message_free_unpacked(&req->base, NULL);
    if (srv->park_on != NULL) {
      /* Its block is being made over turns (tensor.h): the frame stays,
       * and runs again when the block is ready. */
      conn_park(c, srv->park_on);
      srv->park_on = NULL;
      break;
    }
    psw_rbuf_consume(&c->in, len);
    if (rc != 0) {
      conn_close(c);
      break;
    }
  }
}

/* ---- listener --------------------------------------------------------------- */

/* Accept errors are logged at most once a second, with a count. */
static void log_accept_error(psd_server *srv, const char *what) {
  uint64_t now = psd_now_ms();
  srv->accept_unlogged++;
  if (srv->accept_log_ms != 0 && now - srv->accept_log_ms < 1000) return;
  log_warn("%s (%llu such events in the last %s s; %llu connections open)", what,
           (unsigned long long)srv->accept_unlogged,
           psn_num(srv->accept_log_ms ? (double)(now - srv->accept_log_ms) / 1000.0 : 0.0).s,
           (unsigned long long)srv->nconns);
  srv->accept_log_ms = now;
  srv->accept_unlogged = 0;
}

static void reserve_fd_open(psd_server *srv) {
  if (srv->reserve_fd < 0) srv->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

/* Out of file descriptors: the pending connections would stay in the
 * backlog, and libuv would call back at once, forever. Give up the reserve
 * descriptor, accept each pending connection and close it at once, then take
 * the reserve back (as nginx and libuv users do). */
static void shed_pending(psd_server *srv) {
  int lfd = -1;
  if (uv_fileno((uv_handle_t *)&srv->listener, &lfd) != 0 || lfd < 0) return;
  if (srv->reserve_fd >= 0) {
    close(srv->reserve_fd);
    srv->reserve_fd = -1;
  }
  for (int i = 0; i < 4096; i++) {
    int fd = accept(lfd, NULL, NULL);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      break;
    }
    close(fd);
    srv->stats.clients_refused++;
  }
  reserve_fd_open(srv);
}

/* Past --max-clients (or with almost no descriptor left): accept, say why
 * in one Error frame, close. */
static void refuse_connection(psd_server *srv, uv_stream_t *server, int out_of_fds) {
  uv_tcp_t *t = malloc(sizeof(*t));
  if (t == NULL) {
    shed_pending(srv);
    return;
  }
  uv_tcp_init(srv->loop, t);
  if (uv_accept(server, (uv_stream_t *)t) == 0) {
    char msg[160];
    if (out_of_fds)
      snprintf(msg, sizeof(msg), "this shard is out of file descriptors; closing");
    else
      snprintf(msg, sizeof(msg), "this shard serves at most %llu connections (--max-clients); "
               "closing", (unsigned long long)srv->cfg.max_clients);
    Psd__Response r = PSD__RESPONSE__INIT;
    Psd__Error e = PSD__ERROR__INIT;
    e.code = PSD__CODE__RESOURCE_EXHAUSTED;
    e.message = msg;
    r.body_case = PSD__RESPONSE__BODY_ERROR;
    r.error = &e;
    psw_frame f;
    if (psw_encode(&f, &r.base, NULL, 0) == 0) {
      uv_buf_t b = uv_buf_init((char *)f.head, (unsigned)f.head_len);
      uv_try_write((uv_stream_t *)t, &b, 1);
    }
  }
  srv->stats.clients_refused++;
  if (out_of_fds) srv->stats.accept_errors++;
  log_accept_error(srv, out_of_fds ? "refusing a connection: out of file descriptors (see "
                                     "ulimit -n)"
                                   : "refusing a connection: --max-clients reached");
  uv_close((uv_handle_t *)t, (uv_close_cb)free);
}

/* Before anything is read: refuse an address that failed to authenticate
 * too often (access.h), and a peer beyond loopback when the shard has no
 * tokens (protected mode, unless --insecure); else send the challenge,
 * the connection's first frame. -1: close it (its one Error is queued). */
static int conn_greet(psd_conn *c) {
  psd_server *srv = c->srv;
  uint64_t left = auth_refused_for(srv, c->peer_addr, psd_now_ms());
  if (left > 0) {
    srv->stats.auth_refused++;
    log_debug("refusing %s: too many failed authentications from its address", c->peer);
    conn_send_error(c, 0, PSD__CODE__UNAUTHENTICATED,
                    "too many failed authentications from this address; its connections "
                    "are refused for %llu more seconds",
                    (unsigned long long)((left + 999) / 1000));
    return -1;
  }
  if (!srv->cfg.tokens && !srv->cfg.insecure && !c->peer_local) {
    srv->stats.auth_refused++;
    log_warn("refusing %s: this shard has no tokens (protected mode) and serves loopback "
             "peers only", c->peer);
    conn_send_error(c, 0, PSD__CODE__UNAUTHENTICATED,
                    "this psd has no tokens and serves connections from loopback only "
                    "(protected mode); give it --token-file ROLE=PATH");
    return -1;
  }
  psa_random(c->nonce, sizeof(c->nonce));
  Psd__Response r = PSD__RESPONSE__INIT;
  Psd__Challenge ch = PSD__CHALLENGE__INIT;
  ch.nonce.data = c->nonce;
  ch.nonce.len = sizeof(c->nonce);
  ch.protocol = PS_PROTOCOL_VERSION;
  ch.server_version = PS_VERSION_STRING;
  ch.has_tokens = 1, ch.tokens = srv->cfg.tokens;
  r.id = 0;
  r.body_case = PSD__RESPONSE__BODY_CHALLENGE;
  r.challenge = &ch;
  conn_send(c, &r, NULL, 0);
  return 0;
}

static void on_connection(uv_stream_t *server, int status) {
  psd_server *srv = server->data;
  server_turn_mark(srv);
  /* A flood of connections is accepted ACCEPTS_PER_TURN (16, a few system
   * calls each) a turn: left
   * unaccepted, the pending one keeps libuv from polling the listener until
   * flush_cb accepts it at the next turn. */
  if (status == 0 && srv->turn_accepts >= ACCEPTS_PER_TURN) {
    srv->accept_deferred = 1;
    srv->accept_defer_iter = srv->loop_iter;
    spread_on(srv);
    return;
  }
  if (status == 0) srv->turn_accepts++;
  if (status < 0) {
    char what[128];
    srv->stats.accept_errors++;
    snprintf(what, sizeof(what), "accept failed: %s", uv_strerror(status));
    log_accept_error(srv, what);
    if (status == UV_EMFILE || status == UV_ENFILE || status == UV_ENOBUFS ||
        status == UV_ENOMEM)
      shed_pending(srv);
    return;
  }
  if (srv->nconns >= srv->cfg.max_clients) {
    refuse_connection(srv, server, 0);
    return;
  }
  /* libuv sheds connections by itself at EMFILE, silently (its own reserve
   * descriptor); keep a few descriptors spare (lanes, checkpoints) and say
   * so: descriptors are given lowest first, so a high one means few left. */
  if (srv->fd_limit > 0 && server->accepted_fd >= 0 && server->accepted_fd >= srv->fd_limit - 8) {
    refuse_connection(srv, server, 1);
    return;
  }
  psd_conn *c = calloc(1, sizeof(*c));
  if (c == NULL) {
    /* Accept and close at once: a pending connection left unaccepted
     * would make libuv stop polling the listener for good. */
    uv_tcp_t *t = malloc(sizeof(*t));
    log_error("out of memory accepting a connection; refusing it");
    if (t == NULL) return; /* nothing left to accept it with */
    uv_tcp_init(srv->loop, t);
    if (uv_accept(server, (uv_stream_t *)t) != 0) log_warn("accept failed");
    uv_close((uv_handle_t *)t, (uv_close_cb)free);
    return;
  }
  mem_charge(PSD_MEM_META, sizeof(*c)); /* bounded by --max-clients */
  c->srv = srv;
  c->rank = -1;
  c->accepted_ms = c->last_active_ms = psd_now_ms();
  c->role = -1;
  psd_link_init(&c->waiters);
  psd_link_init(&c->dirty_link);
  psd_link_init(&c->paused_link);
  psd_link_init(&c->park_link);
  psw_rbuf_init(&c->in, conn_max_frame(c));
  uv_tcp_init(srv->loop, &c->tcp);
  c->tcp.data = c;
  psd_link_insert_tail(&srv->conns, &c->link);
  srv->nconns++;
  psd_m.conns_accepted++;
  if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
    conn_close(c);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  /* The send buffer bounds what one write copies into the kernel, so one
   * turn of the loop: with 4 MiB (8 MiB granted), a 4 MiB reply's copy
   * took 10-13 ms here. 512 KiB (1 MiB granted) copies at most 1 MiB per
   * write, covers 40 Gb/s at 0.2 ms RTT, and measured faster too: a 4 MB
   * push-pull over loopback TCP at 1.29-1.87 GB/s against 1.01-1.08
   * (README, Benchmarks). The rest of a reply is sent from the block's
   * memory (pinned) as the peer reads. */
  int sndbuf = 512 << 10;
  uv_send_buffer_size((uv_handle_t *)&c->tcp, &sndbuf);
  struct sockaddr_storage ss;
  int sl = sizeof(ss);
  snprintf(c->peer, sizeof(c->peer), "?");
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) == 0) {
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (ss.ss_family == AF_INET) {
      const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
      uv_ip4_name(a, ip, sizeof(ip));
      port = ntohs(a->sin_port);
      c->peer_addr[10] = c->peer_addr[11] = 0xff;
      memcpy(c->peer_addr + 12, &a->sin_addr, 4);
    } else {
      const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
      uv_ip6_name(a, ip, sizeof(ip));
      port = ntohs(a->sin6_port);
      memcpy(c->peer_addr, &a->sin6_addr, 16);
    }
    c->peer_local = netaddr_is_loopback((struct sockaddr *)&ss);
    snprintf(c->peer, sizeof(c->peer), "%s:%d", ip, port);
  }
  log_debug("connection from %s", c->peer);
  if (conn_greet(c) != 0) {
    conn_close(c);
    return;
  }
  conn_start_reading(c);
}

/* Deadlines, checked by one periodic scan over the connections (O(n) a
 * few times a second), not a timer per connection:
 * - a connection that has not completed its hello within --hello-timeout;
 * - a frame started and not whole within --frame-timeout (slowloris), while
 *   the connection is being read (a paused one is waiting for us);
 * - a non-worker connection silent for --idle-timeout, with nothing held.
 * Idle receive and reply buffers are given back here too. */
/* Connections closed by one scan: thousands expiring together (a flood of
 * idle connections) are closed over several turns, not one. A close is a
 * few system calls and a log line: 32 took ~6 ms of CPU on this project's
 * VM, 128 took 25. */
#define CLOSES_PER_SCAN 32

static void scan_conns(psd_server *srv, uint64_t now) {
  const psd_config *cfg = &srv->cfg;
  int closes = 0;
  srv->scan_more = 0;
  uint64_t hello_ms = (uint64_t)(cfg->hello_timeout * 1000.0);
  uint64_t frame_ms = (uint64_t)(cfg->frame_timeout * 1000.0);
  uint64_t idle_ms = (uint64_t)(cfg->idle_timeout * 1000.0);
  reserve_fd_open(srv);
  psd_link *l = srv->conns.next;
  while (l != &srv->conns) {
    psd_conn *c = psd_link_entry(l, psd_conn, link);
    l = l->next;
    if (c->closing) continue;
    if (closes >= CLOSES_PER_SCAN) {
      /* The rest at the next turn (flush_cb). */
      srv->scan_more = 1;
      spread_on(srv);
      break;
    }
    if (!c->hello_done && hello_ms && now - c->accepted_ms > hello_ms) {
      closes++;
      srv->stats.closed_hello++;
      log_info("closing %s: no hello within %s s (--hello-timeout)", c->peer,
               psn_num(cfg->hello_timeout).s);
      conn_send_error(c, 0, PSD__CODE__NOT_READY, "no hello within %s s; closing the connection",
                      psn_num(cfg->hello_timeout).s);
      conn_close(c);
      continue;
    }
    if (c->reading && c->frame_start_ms && frame_ms && now - c->frame_start_ms > frame_ms) {
      closes++;
      srv->stats.closed_frame++;
      log_warn("closing %s: a frame started %s s ago is still not whole (%zu bytes came; "
               "--frame-timeout %s s)",
               c->peer, psn_num((double)(now - c->frame_start_ms) / 1000.0).s,
               c->in.end - c->in.start, psn_num(cfg->frame_timeout).s);
      conn_send_error(c, 0, PSD__CODE__BAD_FRAME,
                      "a frame did not arrive whole within %s s; closing the connection",
                      psn_num(cfg->frame_timeout).s);
      psw_rbuf_clear(&c->in);
      conn_close(c);
      continue;
    }
    if (idle_ms && c->rank < 0 && now - c->last_active_ms > idle_ms &&
        psd_link_empty(&c->waiters) && conn_queued(c) == 0) {
      closes++;
      srv->stats.closed_idle++;
      log_info("closing %s: idle for %s s (--idle-timeout)", c->peer,
               psn_num(cfg->idle_timeout).s);
      conn_close(c);
      continue;
    }
    /* A buffer grown for a big frame is given back once the connection has
     * been quiet a while (a steady stream keeps its buffer). */
    if (now - c->last_active_ms > 1000) {
      if (c->in.cap > (1u << 20) && c->in.start == c->in.end && c->frame_start_ms == 0) {
        psw_rbuf_free(&c->in);
        psw_rbuf_init(&c->in, conn_max_frame(c));
        mem_release(PSD_MEM_INPUT, c->in_charged);
        c->in_charged = 0;
      }
      if (c->ocap > (256u << 10) && c->olen == 0) {
        free(c->obuf);
        c->obuf = NULL;
        mem_release(PSD_MEM_OUTPUT, c->ocap);
        c->ocap = 0;
      }
    }
  }
}

static void tick_cb(uv_timer_t *t) {
  psd_server *srv = t->data;
  server_turn_mark(srv);
  uint64_t now = psd_now_ms();
  for (psd_link *l = srv->jobs.next; l != &srv->jobs; l = l->next) {
    psd_job *j = psd_link_entry(l, psd_job, link);
    group_changed(srv, j, group_tick(srv, j, now));
  }
  if (now >= srv->next_scan_ms) {
    scan_conns(srv, now);
    srv->next_scan_ms = now + 200;
  }
  /* Much was freed (connections' buffers, a big frame's): glibc keeps
   * freed heap pages resident, and the shard's RSS would stay above what
   * it holds. Give them back, at most once a second. */
  if (mem_trim_due() && now >= srv->next_trim_ms) {
    uint64_t t0 = uv_hrtime();
    malloc_trim(0);
    srv->turn_trim_ns += uv_hrtime() - t0;
    mem_trimmed();
    srv->next_trim_ms = now + 1000;
  }
  deliver(srv);
}

/* ---- the loop's turns ---------------------------------------------------------- */

/* The loop thread's CPU time (a system call, ~0.2 us: only read when
 * --stall-log-ms asks for a diagnosis). */
static uint64_t thread_cpu_ns(void) {
  struct timespec ts;
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0) return 0;
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* A turn's busy time runs from the first callback of psd's after the loop
 * stopped waiting (server_turn_mark: reads, writes, accepts, timers, the
 * flush) to the prepare callback, just before the loop waits again: the
 * longest a client could have waited for its request to be looked at.
 * (uv_metrics_idle_time would give it too, but makes libuv poll twice per
 * turn: an extra system call that cost a 4 KB round trip ~8 us here.) */
void server_turn_mark(psd_server *srv) {
  if (srv->turn_start_ns == 0) {
    srv->turn_start_ns = uv_hrtime();
    if (srv->turn_cpu) srv->turn_cpu_start_ns = thread_cpu_ns();
  }
}

static void prepare_cb(uv_prepare_t *h) {
  psd_server *srv = h->data;
  srv->loop_iter++;
  srv->turn_deadline_ns = 0;
  uint64_t nreq = srv->turn_requests;
  uint32_t naccepts = srv->turn_accepts, ncloses = srv->turn_closes;
  uint64_t rbytes = srv->turn_rbytes, wbytes = srv->turn_wbytes;
  uint64_t grow_ns = srv->turn_grow_ns, trim_ns = srv->turn_trim_ns;
  srv->turn_requests = 0;
  srv->turn_accepts = srv->turn_closes = 0;
  srv->turn_rbytes = srv->turn_wbytes = srv->turn_grow_ns = srv->turn_trim_ns = 0;
  if (srv->turn_start_ns != 0) {
    uint64_t now = uv_hrtime();
    uint64_t busy_us = (now - srv->turn_start_ns) / 1000;
    srv->turn_start_ns = 0;
    static const uint64_t edges_us[8] = {1000, 2000, 5000, 10000, 20000, 50000, 100000,
                                         1000000};
    int i = 0;
    while (i < 8 && busy_us >= edges_us[i]) i++;
    srv->loop_hist[i]++;
    srv->loop_turns++;
    if (busy_us > srv->loop_worst_us) srv->loop_worst_us = busy_us;
    srv->loop_busy_us_sum += busy_us;
    uint64_t cpu_us = 0;
    if (srv->turn_cpu) {
      cpu_us = (thread_cpu_ns() - srv->turn_cpu_start_ns) / 1000;
      if (cpu_us > srv->loop_worst_cpu_us) srv->loop_worst_cpu_us = cpu_us;
    }
    /* --stall-log-ms (as Redis's latency-monitor-threshold): a warning from
     * 100 ms on, information below (an operator or a test asked for it). */
    if ((double)busy_us >= srv->cfg.stall_log_ms * 1000.0) {
      char cpu[64] = "", what[256];
      if (srv->turn_cpu)
        snprintf(cpu, sizeof(cpu), " (%s ms of it on the CPU)",
                 psn_num((double)cpu_us / 1000.0).s);
      /* What the turn did: where to look first. */
      snprintf(what, sizeof(what),
               "%llu requests, %llu bytes read, %llu bytes written, %u accepted, %u closed, "
               "%s ms making blocks, %s ms trimming the heap",
               (unsigned long long)nreq, (unsigned long long)rbytes,
               (unsigned long long)wbytes, naccepts, ncloses,
               psn_num((double)(grow_ns / 1000) / 1000.0).s,
               psn_num((double)(trim_ns / 1000) / 1000.0).s);
      if (busy_us >= 100000)
        log_warn("the event loop was busy for %s ms in one turn%s: %s",
                 psn_num((double)busy_us / 1000.0).s, cpu, what);
      else
        log_info("the event loop was busy for %s ms in one turn%s: %s",
                 psn_num((double)busy_us / 1000.0).s, cpu, what);
    }
  }
}

/* Are we in a Docker, Podman or Kubernetes container? */
static int in_container(void) {
  if (access("/.dockerenv", F_OK) == 0 || access("/run/.containerenv", F_OK) == 0) return 1;
  if (getenv("KUBERNETES_SERVICE_HOST") != NULL) return 1;
  FILE *f = fopen("/proc/1/cgroup", "r");
  if (f == NULL) return 0;
  char line[512];
  int found = 0;
  while (!found && fgets(line, sizeof(line), f))
    found = strstr(line, "docker") || strstr(line, "kubepods") || strstr(line, "containerd");
  fclose(f);
  return found;
}

int server_start(psd_server *srv) {
  struct sockaddr_storage addr;
  if (netaddr_resolve(srv->loop, "--listen", srv->cfg.listen, &addr) != 0) return -1;
  /* Protected mode (as Redis has it): without tokens, every peer would be
   * an admin, so psd listens on loopback only unless told --insecure. */
  if (!netaddr_is_loopback((struct sockaddr *)&addr) && !srv->cfg.tokens) {
    if (!srv->cfg.insecure) {
      log_error("refusing to listen on %s without tokens: every client could read, change "
                "and checkpoint every tensor; give --token-file ROLE=PATH (PSD_TOKEN_FILE), "
                "listen on loopback, or accept that with --insecure",
                srv->cfg.listen);
      return -1;
    }
    log_warn("--insecure: listening on %s without tokens; any peer that reaches this port "
             "is an admin", srv->cfg.listen);
  }
  psd_link_init(&srv->conns);
  psd_link_init(&srv->dirty);
  uv_tcp_init(srv->loop, &srv->listener);
  srv->listener.data = srv;
  int r = uv_tcp_bind(&srv->listener, (struct sockaddr *)&addr, 0);
  if (r == 0) r = uv_listen((uv_stream_t *)&srv->listener, 511, on_connection);
  if (r != 0) {
    log_error("cannot listen on %s: %s", srv->cfg.listen, uv_strerror(r));
    uv_close((uv_handle_t *)&srv->listener, NULL);
    return -1;
  }
  char where[NETADDR_NAME_MAX];
  int port = netaddr_bound(&srv->listener, where, sizeof(where));
  log_info("psd %s listening on %s", PS_VERSION_STRING, where);
  /* The classic container mistake: a shard bound to loopback inside a
   * container is unreachable from every other container. Say so. */
  if (netaddr_is_loopback((struct sockaddr *)&addr) && in_container())
    log_warn("listening on loopback inside a container: other containers and hosts cannot "
             "reach this shard; use --listen 0.0.0.0:%d (PSD_LISTEN)", port);

  srv->reserve_fd = -1;
  reserve_fd_open(srv);
  struct rlimit rl;
  srv->fd_limit = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
                          rl.rlim_cur < INT32_MAX
                      ? (int)rl.rlim_cur
                      : 0;
  psd_link_init(&srv->paused);
  psd_link_init(&srv->graveyard);
  srv->turn_cpu = srv->cfg.stall_log_ms < 100.0;
  srv->grow_spread = 1;
  uv_prepare_init(srv->loop, &srv->loop_prepare);
  srv->loop_prepare.data = srv;
  uv_prepare_start(&srv->loop_prepare, prepare_cb);
  uv_idle_init(srv->loop, &srv->spread);
  srv->spread.data = srv;
  uv_timer_init(srv->loop, &srv->tick);
  srv->tick.data = srv;
  uv_timer_start(&srv->tick, tick_cb, 100, 100);
  uv_check_init(srv->loop, &srv->flush);
  srv->flush.data = srv;
  uv_check_start(&srv->flush, flush_cb);
  return 0;
}

static void shutdown_cb(uv_shutdown_t *req, int status) {
  psd_conn *c = req->data;
  (void)status;
  free(req);
  conn_close(c);
}

/* Stop accepting, let replies already queued drain (uv_shutdown runs after
 * pending writes), then close every connection. Held replies (sync pushes,
 * SSP pulls, barriers) are not answered: their clients resend after the
 * restart and exactly-once sequence numbers keep that safe. */
/* Replies still unsent 2 s after SIGTERM go to peers that do not read;
 * close those connections so that shutdown (and the final checkpoint)
 * cannot be held hostage. */
static void stop_timer_cb(uv_timer_t *t) {
  psd_server *srv = t->data;
  psd_link *l = srv->conns.next;
  while (l != &srv->conns) {
    psd_conn *c = psd_link_entry(l, psd_conn, link);
    l = l->next;
    if (!c->closing) {
      log_warn("closing %s: its replies were not read within 2 s of shutdown", c->peer);
      conn_close(c);
    }
  }
  uv_close((uv_handle_t *)t, NULL);
}

void server_stop(psd_server *srv) {
  bury(srv, SIZE_MAX);
  if (!uv_is_closing((uv_handle_t *)&srv->listener))
    uv_close((uv_handle_t *)&srv->listener, NULL);
  uv_timer_stop(&srv->tick);
  uv_close((uv_handle_t *)&srv->tick, NULL);
  uv_close((uv_handle_t *)&srv->loop_prepare, NULL);
  uv_close((uv_handle_t *)&srv->spread, NULL);
  if (srv->reserve_fd >= 0) close(srv->reserve_fd);
  srv->reserve_fd = -1;
  flush_cb(&srv->flush);
  uv_check_stop(&srv->flush);
  uv_close((uv_handle_t *)&srv->flush, NULL);
  uv_timer_init(srv->loop, &srv->stop_timer);
  srv->stop_timer.data = srv;
  uv_timer_start(&srv->stop_timer, stop_timer_cb, 2000, 0);
  uv_unref((uv_handle_t *)&srv->stop_timer); /* does not hold the loop open by itself */
  psd_link *l = srv->conns.next;
  while (l != &srv->conns) {
    psd_conn *c = psd_link_entry(l, psd_conn, link);
    l = l->next;
    if (c->closing) continue;
    if (c->reading) uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = 0;
    c->paused = 1;
    uv_shutdown_t *req = malloc(sizeof(*req));
    if (req == NULL || uv_shutdown(req, (uv_stream_t *)&c->tcp, shutdown_cb) != 0) {
      free(req);
      conn_close(c);
      continue;
    }
    req->data = c;
  }
}
