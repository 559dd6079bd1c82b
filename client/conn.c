/*
 * conn.c -- one TCP connection per shard: connect, hello, reconnect with
 * exponential backoff, the zero-copy write path, the read path (framing,
 * decoding, matching replies to sub-requests, big values read in place) and
 * the shard's shared-memory lane (slots). Everything here runs on the
 * handle's loop thread; what a reply means is ops.c's business (through
 * the ps__sub_* calls of client_int.h).
 *
 * A shard's un-answered subs stay in its pending list, in creation order,
 * across connections: after every (re)connect the hello goes first and the
 * pending subs follow it in their original order with their original ids
 * and push sequence numbers, so the server can drop a push it already
 * applied (exactly-once).
 */
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "client_int.h"
#include "log.h"

/* One frame in a pending uv_write. The frame's head lives here; its values
 * (a push gradient) are the user's buffer, kept alive by sub->writing. */
typedef struct {
  uv_write_t req;
  ps__shard *sh;
  ps__sub *sub; /* NULL for the hello and heartbeats */
  psw_frame f;
} wreq;

static void shard_connect(ps__shard *sh);

/* ---- writing ----------------------------------------------------------- */

static int connected(const ps__shard *sh) {
  return sh->state == PS__SH_HELLO || sh->state == PS__SH_READY;
}

static void on_write(uv_write_t *req, int status) {
  wreq *w = (wreq *)req;
  ps__shard *sh = w->sh;
  ps__sub *sub = w->sub;
  free(w);
  /* UV_ECANCELED: the connection is being closed; the sub, if still
   * un-answered, is resent after the reconnect. */
  if (status < 0 && status != UV_ECANCELED)
    ps__shard_disconnect(sh, uv_strerror(status));
  if (sub != NULL) ps__sub_written(sub);
}

/* Write w's frame: its head, then the values straight from where they are. */
static int write_frame(ps__shard *sh, wreq *w) {
  uv_buf_t b[2];
  unsigned n = 1;
  b[0] = uv_buf_init((char *)w->f.head, (unsigned)w->f.head_len);
  if (w->f.values_len > 0) {
    b[1].base = (char *)w->f.values;
    b[1].len = w->f.values_len;
    n = 2;
  }
  w->sh = sh;
  if (w->sub != NULL) w->sub->writing++, PS__COUNT(sh->c, requests_sent, 1);
  PS__COUNT(sh->c, bytes_sent, w->f.head_len + w->f.values_len);
  int r = uv_write(&w->req, (uv_stream_t *)&sh->tcp, b, n, on_write);
  if (r < 0) {
    if (w->sub != NULL) w->sub->writing--;
    free(w);
    ps__shard_disconnect(sh, uv_strerror(r));
    return -1;
  }
  return 0;
}

static int write_sub(ps__shard *sh, ps__sub *sub) {
  wreq *w = malloc(sizeof(*w));
  if (w == NULL) {
    ps__sub_fail(sub, PS_ENOMEM, "out of memory for a request frame");
    return -1;
  }
  w->sub = sub;
  if (ps__sub_encode(sub, &w->f) != 0) {
    sub->lane_sent = 0; /* nothing names its slot: free it with the sub */
    free(w);
    ps__sub_fail(sub, PS_EINVAL, "request does not fit a frame (name too long?)");
    return -1;
  }
  return write_frame(sh, w);
}

static int write_ctl(ps__shard *sh, Psd__Request *req) {
  wreq *w = malloc(sizeof(*w));
  if (w == NULL) {
    ps__shard_disconnect(sh, "out of memory");
    return -1;
  }
  w->sub = NULL;
  if (psw_encode(&w->f, &req->base, NULL, 0) != 0) {
    free(w);
    ps__shard_disconnect(sh, "control frame too large");
    return -1;
  }
  return write_frame(sh, w);
}

/* The hello: the role, the proof of its token over this connection's
 * nonce and the identity claimed, and the session to resume with the proof
 * of its secret (common/auth.h). */
static int send_hello(ps__shard *sh) {
  ps_client *c = sh->c;
  Psd__Request req = PSD__REQUEST__INIT;
  Psd__Hello h = PSD__HELLO__INIT;
  uint8_t proof[PSA_MAC], sproof[PSA_MAC];
  psa_ctx ctx;
  h.protocol = PS_PROTOCOL_VERSION;
  h.identity = c->identity;
  h.job = c->job;
  h.role = (char *)psa_role_name(c->role);
  if (c->token_len > 0) {
    psa_hello_context(&ctx, sh->nonce, c->role, c->opts.rank, (uint32_t)c->opts.num_workers,
                      c->opts.staleness, c->servers.list_hash, (uint32_t)sh->index,
                      sh->session_id);
    psa_mac(proof, c->token, c->token_len, &ctx);
    h.has_proof = 1, h.proof.data = proof, h.proof.len = PSA_MAC;
  }
  if (sh->session_id != 0) {
    psa_resume_context(&ctx, sh->nonce, sh->session_id, c->opts.rank);
    psa_mac(sproof, sh->session_secret, PSA_SECRET, &ctx);
    h.has_session_id = 1, h.session_id = sh->session_id;
    h.has_session_proof = 1, h.session_proof.data = sproof, h.session_proof.len = PSA_MAC;
  }
  h.has_rank = 1, h.rank = c->opts.rank;
  h.has_num_workers = 1, h.num_workers = (uint32_t)c->opts.num_workers;
  h.has_staleness = 1, h.staleness = c->opts.staleness;
  h.servers = c->servers.list;
  h.has_shard_index = 1, h.shard_index = (uint32_t)sh->index;
  h.has_servers_hash = 1, h.servers_hash = c->servers.list_hash;
  if (c->opts.lane_mb > 0) h.has_lane_bytes = 1, h.lane_bytes = (uint64_t)c->opts.lane_mb << 20;
  sh->hello_id = ps__next_id(c);
  req.id = sh->hello_id;
  req.body_case = PSD__REQUEST__BODY_HELLO;
  req.hello = &h;
  return write_ctl(sh, &req);
}

static void on_goodbye_timeout(uv_timer_t *t) {
  ps__shard *sh = t->data;
  log_debug("%s did not answer the goodbye; closing", sh->addr);
  ps__shard_shutdown(sh);
}

int ps__shard_goodbye(ps__shard *sh) {
  if (sh->state != PS__SH_READY || sh->session_id == 0) return 0;
  Psd__Request req = PSD__REQUEST__INIT;
  Psd__Goodbye gb = PSD__GOODBYE__INIT;
  req.id = ps__next_id(sh->c);
  req.body_case = PSD__REQUEST__BODY_GOODBYE;
  req.goodbye = &gb;
  /* Queued behind the frames already being written (a goodbye written
   * beside them, or cut by the close, would be lost, and the shard would
   * wait out its worker timeout); the connection closes when the shard
   * answers, so that the shard reads it before any reset. */
  if (write_ctl(sh, &req) != 0) return 0; /* it closed the connection */
  sh->goodbye_id = req.id;
  unsigned wait = (unsigned)sh->c->opts.op_timeout_ms < PS__GOODBYE_MS
                      ? (unsigned)sh->c->opts.op_timeout_ms : PS__GOODBYE_MS;
  uv_timer_start(&sh->timer, on_goodbye_timeout, wait, 0);
  return 1;
}

void ps__shard_heartbeat(ps__shard *sh, uint64_t clock) {
  if (sh->state != PS__SH_READY) return;
  Psd__Request req = PSD__REQUEST__INIT;
  Psd__Heartbeat hb = PSD__HEARTBEAT__INIT;
  hb.has_clock = 1, hb.clock = clock;
  /* Not tracked: the Ack's id is unknown to us and is ignored. */
  req.id = ps__next_id(sh->c);
  req.body_case = PSD__REQUEST__BODY_HEARTBEAT;
  req.heartbeat = &hb;
  write_ctl(sh, &req);
}

/* ---- the pending list -------------------------------------------------- */

int ps__shard_submit(ps__shard *sh, ps__sub *sub) {
  if (sh->state == PS__SH_FATAL) return sh->fatal_code;
  if (u64map_put_ptr(&sh->inflight, sub->id, sub) != 0) return PS_ENOMEM;
  sub->live = 1;
  if (sub->kind == PS__SUB_PULL) PS__COUNT(sh->c, pull_requests, 1);
  else if (sub->kind == PS__SUB_PUSH && sub->op->kind == PS__OP_PUSH_PULL)
    PS__COUNT(sh->c, push_pull_requests, 1);
  else if (sub->kind == PS__SUB_PUSH) PS__COUNT(sh->c, push_requests, 1);
  sub->prev = sh->tail;
  sub->next = NULL;
  if (sh->tail) sh->tail->next = sub;
  else sh->head = sub;
  sh->tail = sub;
  if (connected(sh)) write_sub(sh, sub);
  return 0;
}

void ps__shard_unlink(ps__sub *sub) {
  ps__shard *sh = sub->sh;
  if (!sub->live) return;
  /* Dropped before its reply (its op failed): set its slot aside now, so
   * that a reply coming before the sub is freed still finds it. */
  if (sub->lane_off != 0 && sub->lane_sent && !sub->lane_answered) ps__lane_release(sub);
  u64map_del(&sh->inflight, sub->id, NULL);
  if (sub->prev) sub->prev->next = sub->next;
  else sh->head = sub->next;
  if (sub->next) sub->next->prev = sub->prev;
  else sh->tail = sub->prev;
  sub->prev = sub->next = NULL;
  sub->live = 0;
}

/* ---- the shared-memory lane ----------------------------------------------
 *
 * A shard on this host may grant a lane in its hello reply (lane.h). Slots
 * belong to subs: a push's gradient is copied into its slot when its frame
 * is encoded, and the shard writes a pull's (or push-pull's) values into it
 * before it replies. A slot is reused only once the shard is done with it:
 * after the reply, or, for a sub dropped before its reply (a deadline, a
 * sibling's error), after the late reply arrives; a lost connection drops
 * its whole lane, and the subs it had not answered take slots of the next
 * connection's lane when they are resent. */

static void lane_attach(ps__shard *sh, const Psd__LaneOffer *lo) {
  char err[256];
  if (psl_attach(&sh->lane, lo->pid, lo->fd, lo->bytes, lo->cookie.data, lo->cookie.len, err,
                 sizeof(err)) != 0) {
    /* Expected across containers and users: say it once, stay on TCP. */
    if (!sh->lane_warned)
      log_info("shard %d (%s) offered a shared-memory lane; using TCP instead (%s)",
               sh->index, sh->addr, err);
    sh->lane_warned = 1;
    return;
  }
  log_debug("shard %d (%s): shared-memory lane of %zu bytes", sh->index, sh->addr,
            sh->lane.len);
}

static void lane_drop(ps__shard *sh) {
  size_t it = 0;
  uint64_t id, o;
  while (u64map_next(&sh->lane_orphans, &it, &id, &o)) free((void *)(uintptr_t)o);
  u64map_free(&sh->lane_orphans);
  psl_close(&sh->lane);
  sh->lane_gen++;
}

uint64_t ps__lane_slot(ps__sub *sub, uint64_t len) {
  ps__shard *sh = sub->sh;
  sub->lane_off = 0;
  if (sh->lane.base == NULL || len < PS__LANE_MIN) return 0;
  uint64_t off = psl_alloc(&sh->lane, len);
  if (off == 0) return 0; /* full: this one goes in the frame */
  sub->lane_off = off;
  sub->lane_len = len;
  sub->lane_gen = sh->lane_gen;
  sub->lane_sent = 1;
  sub->lane_answered = 0;
  return off;
}

typedef struct {
  uint64_t off, len;
} lane_orphan;

void ps__lane_release(ps__sub *sub) {
  ps__shard *sh = sub->sh;
  if (sub->lane_off == 0 || sub->lane_gen != sh->lane_gen) return;
  if (sub->lane_sent && !sub->lane_answered) {
    /* The shard may still write there: free it when its reply comes. */
    lane_orphan *o = malloc(sizeof(*o));
    if (o != NULL) {
      o->off = sub->lane_off;
      o->len = sub->lane_len;
      if (u64map_put_ptr(&sh->lane_orphans, sub->id, o) != 0) free(o);
    } /* else the slot stays taken until the connection ends */
  } else {
    psl_free(&sh->lane, sub->lane_off, sub->lane_len);
  }
  sub->lane_off = 0;
}

/* ---- connecting -------------------------------------------------------- */

static void on_timer(uv_timer_t *t) {
  ps__shard *sh = t->data;
  if (sh->state == PS__SH_IDLE) {
    shard_connect(sh);
  } else if (sh->state == PS__SH_CONNECTING) {
    snprintf(sh->last_err, sizeof(sh->last_err), "connect timed out after %d ms",
             PS__ATTEMPT_TIMEOUT_MS);
    ps__shard_disconnect(sh, sh->last_err);
  } else if (sh->state == PS__SH_CHALLENGE) {
    snprintf(sh->last_err, sizeof(sh->last_err),
             "connected, but no challenge came within %d ms (is it a psd of protocol %d?)",
             PS__ATTEMPT_TIMEOUT_MS, PS_PROTOCOL_VERSION);
    ps__shard_disconnect(sh, sh->last_err);
  }
}

static void schedule_reconnect(ps__shard *sh) {
  ps_client *c = sh->c;
  sh->state = PS__SH_IDLE;
  if (c->shutting) return;
  unsigned delay = sh->backoff_ms;
  sh->backoff_ms = sh->backoff_ms * 2 > PS__BACKOFF_MAX_MS ? PS__BACKOFF_MAX_MS
                                                           : sh->backoff_ms * 2;
  /* A lost connection was logged by ps__shard_disconnect. A failed attempt
   * is said at warn once the shard had been up, then at most every 30 s
   * while it stays down; before the first hello ps_connect reports it. */
  uint64_t now = uv_now(&c->loop);
  int lost = sh->lost;
  sh->lost = 0;
  if (lost) {
    log_debug("reconnecting to %s in %u ms", sh->addr, delay);
  } else if (sh->was_ready &&
             (sh->last_warn_ms == 0 || now - sh->last_warn_ms >= 30000)) {
    log_warn("cannot reach shard %d (%s): %s; retrying every %u ms at most",
             sh->index, sh->addr, sh->last_err, PS__BACKOFF_MAX_MS);
    sh->last_warn_ms = now;
  } else {
    log_debug("cannot reach %s: %s; retrying in %u ms", sh->addr, sh->last_err, delay);
  }
  uv_timer_start(&sh->timer, on_timer, delay, 0);
}

static void direct_abort(ps__shard *sh);

static void on_tcp_closed(uv_handle_t *h) {
  ps__shard *sh = h->data;
  sh->tcp_open = 0;
  /* A partial frame of the old connection means nothing on the next one. */
  psw_rbuf_clear(&sh->rbuf);
  direct_abort(sh);
  lane_drop(sh);
  /* Lost while its goodbye waited for an answer: nothing more to wait for. */
  if (sh->goodbye_id != 0) ps__shard_shutdown(sh);
  if (sh->state == PS__SH_FATAL || sh->c->shutting) return;
  schedule_reconnect(sh);
}

void ps__shard_disconnect(ps__shard *sh, const char *why) {
  if (!sh->tcp_open || uv_is_closing((uv_handle_t *)&sh->tcp)) return;
  if (sh->state == PS__SH_READY || sh->state == PS__SH_HELLO) {
    sh->lost = 1;
    if (!sh->c->shutting)
      log_warn("lost connection to shard %d (%s): %s; reconnecting", sh->index,
               sh->addr, why);
    snprintf(sh->last_err, sizeof(sh->last_err), "%s", why);
  }
  uv_timer_stop(&sh->timer);
  if (sh->state != PS__SH_FATAL) sh->state = PS__SH_CLOSING;
  /* Pending writes are cancelled: their callbacks run with UV_ECANCELED
   * before on_tcp_closed. */
  uv_close((uv_handle_t *)&sh->tcp, on_tcp_closed);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  ps__shard *sh = h->data;
  size_t avail = 0;
  (void)suggested;
  if (sh->direct.sub != NULL) {
    buf->base = (char *)sh->direct.dst;
    buf->len = sh->direct.left;
    return;
  }
  uint8_t *p = psw_rbuf_reserve(&sh->rbuf, PS__READ_HINT, &avail);
  buf->base = (char *)p;
  buf->len = p ? avail : 0; /* 0: libuv reports UV_ENOBUFS to on_read */
}

/* Never try the shard again: fail what is queued for it with code and
 * sh->fatal_msg, and close the connection. */
static void give_up(ps__shard *sh, int code) {
  sh->fatal_code = code;
  sh->state = PS__SH_FATAL; /* before the close: no reconnect */
  ps__shard_disconnect(sh, sh->fatal_msg);
  /* Failing an op unlinks every live sub of it, so take from the head. */
  while (sh->head != NULL) ps__sub_fail(sh->head, code, sh->fatal_msg);
  ps__shard_event(sh->c, sh);
}

static void fatal(ps__shard *sh, int code, const char *msg) {
  snprintf(sh->fatal_msg, sizeof(sh->fatal_msg), "%s: %s", sh->addr, msg);
  log_error("shard %d refused this client: %s", sh->index, sh->fatal_msg);
  give_up(sh, code);
}

static void on_hello_reply(ps__shard *sh, const Psd__Response *r) {
  if (r->body_case == PSD__RESPONSE__BODY_ERROR) {
    fatal(sh, psw_code_to_err(r->error->code), r->error->message);
    return;
  }
  if (r->body_case != PSD__RESPONSE__BODY_HELLO) {
    ps__shard_disconnect(sh, "server answered the hello with something else");
    return;
  }
  const Psd__HelloReply *hr = r->hello;
  if (hr->has_session_id && hr->session_id != 0) {
    if (hr->has_session_secret && hr->session_secret.len == PSA_SECRET) {
      if (sh->session_id != 0)
        log_warn("shard %d (%s) no longer knew session %016llx; it opened session %016llx "
                 "(pushes it had not answered are sent again and apply once there)",
                 sh->index, sh->addr, (unsigned long long)sh->session_id,
                 (unsigned long long)hr->session_id);
      memcpy(sh->session_secret, hr->session_secret.data, PSA_SECRET);
      sh->session_id = hr->session_id;
    } else if (hr->session_id != sh->session_id) {
      ps__shard_disconnect(sh, "the shard named a session without giving its secret");
      return;
    }
  }
  if (hr->lane != NULL && sh->lane.base == NULL) lane_attach(sh, hr->lane);
  sh->state = PS__SH_READY;
  sh->backoff_ms = PS__BACKOFF_MIN_MS;
  sh->last_warn_ms = 0;
  if (sh->was_ready) {
    sh->reconnects++;
    PS__COUNT(sh->c, reconnects, 1);
    log_warn("reconnected to shard %d (%s); %zu un-answered requests were resent",
             sh->index, sh->addr, sh->inflight.len);
  }
  sh->was_ready = 1;
  ps__shard_event(sh->c, sh);
}

static void send_hello_and_pending(ps__shard *sh);

/* The shard's first frame: the challenge (or an Error: refused at once,
 * e.g. protected mode or too many failed attempts from this address). */
static void on_challenge(ps__shard *sh, const Psd__Response *r) {
  if (r->body_case == PSD__RESPONSE__BODY_ERROR) {
    fatal(sh, psw_code_to_err(r->error->code), r->error->message);
    return;
  }
  if (r->body_case != PSD__RESPONSE__BODY_CHALLENGE || r->id != 0 ||
      r->challenge->nonce.len != PSA_NONCE) {
    ps__shard_disconnect(sh, "the server's first frame is not a challenge (a psd older than "
                             "protocol 2?)");
    return;
  }
  if (r->challenge->protocol != PS_PROTOCOL_VERSION) {
    char msg[128];
    snprintf(msg, sizeof(msg), "the server speaks protocol %u, this library %d",
             r->challenge->protocol, PS_PROTOCOL_VERSION);
    fatal(sh, PS_EVERSION, msg);
    return;
  }
  memcpy(sh->nonce, r->challenge->nonce.data, PSA_NONCE);
  uv_timer_stop(&sh->timer);
  sh->state = PS__SH_HELLO;
  send_hello_and_pending(sh);
}

/* Handle one complete frame. Returns 0, -1 if it is not a Response, -2 if
 * it says values are in a lane slot its request did not name. */
static int dispatch(ps__shard *sh, const uint8_t *payload, uint64_t len) {
  const uint8_t *vals;
  size_t vlen;
  Psd__Response *r = (Psd__Response *)psw_decode(&psd__response__descriptor, payload,
                                                 (size_t)len, &vals, &vlen);
  if (r == NULL) return -1;
  if (sh->state == PS__SH_CHALLENGE) {
    on_challenge(sh, r);
  } else if (sh->goodbye_id != 0 && r->id == sh->goodbye_id) {
    /* The shard ended the session: the handle is done with it. */
    ps__shard_shutdown(sh);
  } else if (r->id == sh->hello_id && sh->state == PS__SH_HELLO) {
    on_hello_reply(sh, r);
  } else if (r->id == 0 && r->body_case == PSD__RESPONSE__BODY_ERROR) {
    log_warn("shard %d (%s) reports: %s", sh->index, sh->addr, r->error->message);
  } else {
    ps__sub *sub = u64map_get_ptr(&sh->inflight, r->id);
    lane_orphan *o;
    if (sub != NULL) {
      if (sub->lane_off != 0 && sub->lane_gen == sh->lane_gen) sub->lane_answered = 1;
      if (r->body_case == PSD__RESPONSE__BODY_BLOCK && r->block->in_lane) {
        if (sub->lane_off == 0 || sub->lane_gen != sh->lane_gen || vlen != 0) {
          protobuf_c_message_free_unpacked(&r->base, NULL);
          return -2;
        }
        vals = sh->lane.base + sub->lane_off;
        vlen = (size_t)sub->lane_len;
        PS__COUNT(sh->c, lane_bytes, vlen);
      }
      ps__shard_unlink(sub);
      ps__sub_reply(sub, r, vals, vlen);
    } else if ((o = u64map_del_ptr(&sh->lane_orphans, r->id)) != NULL) {
      /* The late reply of a dropped sub: the shard is done with its slot. */
      log_debug("%s: late reply to request %llu; its lane slot is free again", sh->addr,
                (unsigned long long)r->id);
      psl_free(&sh->lane, o->off, o->len);
      free(o);
    } else {
      /* A late reply to a request that timed out, or a heartbeat's Ack. */
      log_debug("%s: ignoring reply to unknown request %llu", sh->addr,
                (unsigned long long)r->id);
    }
  }
  protobuf_c_message_free_unpacked(&r->base, NULL);
  return 0;
}

/* ---- direct reads ---------------------------------------------------------
 *
 * A pull reply carries up to a block of floats (1 MiB by default) behind a
 * small envelope. Going through the receive buffer costs a memcpy into the
 * caller's array, and moving partial frames to the buffer's front; for big
 * replies both cost more than the kernel's own copy. So once the envelope of
 * an incomplete reply has arrived, and it is a whole block for a sub that
 * wants values, the rest of the values is read straight into the caller's
 * array: on_alloc hands libuv that memory until the frame ends.
 *
 * The sub stays live meanwhile (a lost connection resends it) and is marked
 * reading, so its op cannot complete under the read; a deadline passing
 * closes the connection, as for a pending write. */

/* Called when the front of the buffer is an incomplete frame (with a valid
 * header: psw_rbuf_next said PSW_NEED_MORE). Returns 1 if direct mode began. */
static int direct_try(ps__shard *sh) {
  const uint8_t *pay;
  size_t got, key_off, off;
  uint64_t plen, n;
  if (!psw_rbuf_partial(&sh->rbuf, &pay, &got, &plen) ||
      psw_find_values(pay, got, &key_off, &off, &n) != 0)
    return 0;
  /* The values last, with enough of them still to come. */
  size_t have = got - off;
  if (off + n != plen || n - have < PS__DIRECT_MIN) return 0;
  Psd__Response *r = (Psd__Response *)protobuf_c_message_unpack(&psd__response__descriptor,
                                                                NULL, key_off, pay);
  if (r == NULL) return 0; /* the normal path reports it once complete */
  ps__sub *sub = u64map_get_ptr(&sh->inflight, r->id);
  uint8_t *dst = sub ? ps__sub_direct_dst(sub, r, (size_t)n) : NULL;
  if (dst == NULL) {
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return 0;
  }
  log_debug("%s: reading %llu value bytes of request %llu in place", sh->addr,
            (unsigned long long)n, (unsigned long long)r->id);
  memcpy(dst, pay + off, have);
  sub->reading = 1;
  sh->direct.sub = sub;
  sh->direct.r = r;
  sh->direct.dst = dst + have;
  sh->direct.left = (size_t)n - have;
  sh->direct.len = (size_t)n;
  /* The incomplete frame was all the buffer held. */
  psw_rbuf_clear(&sh->rbuf);
  return 1;
}

static void direct_end(ps__shard *sh, int complete) {
  ps__sub *sub = sh->direct.sub;
  Psd__Response *r = sh->direct.r;
  size_t len = sh->direct.len;
  memset(&sh->direct, 0, sizeof(sh->direct));
  if (complete && sub->live) {
    sub->reading = 0;
    ps__shard_unlink(sub);
    ps__sub_reply(sub, r, NULL, len);
  } else {
    /* Aborted: a live sub is resent after the reconnect. Or its op failed
     * meanwhile: the read only kept it alive. */
    log_debug("%s: in-place read of request %llu aborted", sh->addr,
              (unsigned long long)r->id);
    ps__sub_read_done(sub);
  }
  protobuf_c_message_free_unpacked(&r->base, NULL);
}

static void direct_abort(ps__shard *sh) {
  if (sh->direct.sub != NULL) direct_end(sh, 0);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  ps__shard *sh = s->data;
  (void)buf;
  if (nread < 0) {
    ps__shard_disconnect(sh, nread == UV_EOF ? "server closed the connection"
                                             : uv_strerror((int)nread));
    return;
  }
  PS__COUNT(sh->c, bytes_received, nread);
  if (sh->direct.sub != NULL) {
    sh->direct.dst += nread;
    sh->direct.left -= (size_t)nread;
    if (sh->direct.left == 0) direct_end(sh, 1);
    return;
  }
  psw_rbuf_commit(&sh->rbuf, (size_t)nread);
  /* A handler may close the connection (a fatal hello reply); stop then. */
  while ((connected(sh) || sh->state == PS__SH_CHALLENGE) &&
         !uv_is_closing((uv_handle_t *)&sh->tcp)) {
    const uint8_t *payload;
    uint64_t len;
    int r = psw_rbuf_next(&sh->rbuf, &payload, &len);
    if (r == PSW_NEED_MORE) {
      direct_try(sh);
      break;
    }
    if (r < 0) {
      ps__shard_disconnect(sh, psw_strerror(r));
      return;
    }
    int d = dispatch(sh, payload, len);
    if (d != 0) {
      ps__shard_disconnect(sh, d == -2 ? "the server put values in a lane slot that was not "
                                         "asked for"
                                       : "undecodable response from the server");
      return;
    }
    psw_rbuf_consume(&sh->rbuf, len);
  }
}

static void set_keepalive(ps__shard *sh) {
  /* Notice a vanished server (a half-open connection) within ~25 s rather
   * than the kernel's default of two hours. */
  uv_tcp_keepalive(&sh->tcp, 1, 10);
  uv_os_fd_t fd;
  if (uv_fileno((uv_handle_t *)&sh->tcp, &fd) == 0) {
    int intvl = 5, cnt = 3;
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
  }
}

static void give_up(ps__shard *sh, int code);

static void on_connect(uv_connect_t *req, int status) {
  ps__shard *sh = req->data;
  if (status < 0) {
    if (status != UV_ECANCELED)
      snprintf(sh->last_err, sizeof(sh->last_err), "%s", uv_strerror(status));
    /* Nothing listens there. A tool (psctl, a script) is told so at once
     * rather than after its whole connect timeout; a worker keeps trying,
     * as its shards may be starting, and so does a tool whose shard was up
     * once (it may be restarting). */
    if (status == UV_ECONNREFUSED && sh->c->opts.rank < 0 && !sh->was_ready) {
      snprintf(sh->fatal_msg, sizeof(sh->fatal_msg),
               "could not connect to shard %d (%s): connection refused: nothing listens "
               "there (is psd running, on that port?)",
               sh->index, sh->addr);
      log_error("%s", sh->fatal_msg);
      give_up(sh, PS_ECONNECT);
      return;
    }
    ps__shard_disconnect(sh, sh->last_err);
    return;
  }
  /* The attempt's timer runs on until the challenge comes. */
  uv_tcp_nodelay(&sh->tcp, 1);
  set_keepalive(sh);
  sh->state = PS__SH_CHALLENGE;
  int r = uv_read_start((uv_stream_t *)&sh->tcp, on_alloc, on_read);
  if (r < 0) {
    ps__shard_disconnect(sh, uv_strerror(r));
    return;
  }
}

static void send_hello_and_pending(ps__shard *sh) {
  if (send_hello(sh) != 0) return;
  /* Pipeline every un-answered request right behind the hello, oldest
   * first, with its original id and seq. The list is in id order; if a
   * write fails its op (which unlinks that op's other subs, perhaps the
   * next one), find the successor again by id. */
  for (ps__sub *sub = sh->head; sub != NULL && sh->state == PS__SH_HELLO;) {
    uint64_t id = sub->id;
    ps__sub *next = sub->next;
    PS__COUNT(sh->c, resends, 1);
    if (write_sub(sh, sub) != 0)
      for (next = sh->head; next != NULL && next->id <= id; next = next->next) {}
    sub = next;
  }
}

static void connect_addr(ps__shard *sh, const struct sockaddr *sa) {
  ps_client *c = sh->c;
  int r = uv_tcp_init(&c->loop, &sh->tcp);
  if (r < 0) {
    snprintf(sh->last_err, sizeof(sh->last_err), "%s", uv_strerror(r));
    schedule_reconnect(sh);
    return;
  }
  sh->tcp.data = sh;
  sh->tcp_open = 1;
  sh->creq.data = sh;
  sh->state = PS__SH_CONNECTING;
  r = uv_tcp_connect(&sh->creq, &sh->tcp, sa, on_connect);
  if (r < 0) {
    snprintf(sh->last_err, sizeof(sh->last_err), "%s", uv_strerror(r));
    ps__shard_disconnect(sh, sh->last_err);
    return;
  }
  uv_timer_start(&sh->timer, on_timer, PS__ATTEMPT_TIMEOUT_MS, 0);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  ps__shard *sh = req->data;
  sh->resolving = 0;
  if (sh->c->shutting || status == UV_ECANCELED) {
    uv_freeaddrinfo(res);
    return;
  }
  if (status < 0 || res == NULL) {
    snprintf(sh->last_err, sizeof(sh->last_err), "cannot resolve '%.200s': %s",
             sh->host, uv_strerror(status));
    uv_freeaddrinfo(res);
    schedule_reconnect(sh);
    return;
  }
  connect_addr(sh, res->ai_addr);
  uv_freeaddrinfo(res);
}

/* One connection attempt. Numeric addresses skip the resolver; names are
 * resolved again on every attempt, so a server that comes back at a new
 * address is found. */
static void shard_connect(ps__shard *sh) {
  struct sockaddr_storage ss;
  if (uv_ip4_addr(sh->host, sh->port, (struct sockaddr_in *)&ss) == 0 ||
      uv_ip6_addr(sh->host, sh->port, (struct sockaddr_in6 *)&ss) == 0) {
    connect_addr(sh, (const struct sockaddr *)&ss);
    return;
  }
  char port[16];
  struct addrinfo hints;
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  snprintf(port, sizeof(port), "%d", sh->port);
  sh->gai.data = sh;
  sh->state = PS__SH_RESOLVING;
  int r = uv_getaddrinfo(&sh->c->loop, &sh->gai, on_resolved, sh->host, port, &hints);
  if (r < 0) {
    snprintf(sh->last_err, sizeof(sh->last_err), "cannot resolve '%.200s': %s",
             sh->host, uv_strerror(r));
    schedule_reconnect(sh);
    return;
  }
  sh->resolving = 1;
}

/* ---- life cycle -------------------------------------------------------- */

int ps__shard_init(ps_client *c, ps__shard *sh, int index) {
  memset(sh, 0, sizeof(*sh));
  sh->c = c;
  sh->index = index;
  sh->addr = c->servers.addr[index];
  sh->backoff_ms = PS__BACKOFF_MIN_MS;
  snprintf(sh->last_err, sizeof(sh->last_err), "no answer yet");
  if (psp_split_hostport(sh->addr, sh->host, sizeof(sh->host), &sh->port) != 0)
    return -1;
  psw_rbuf_init(&sh->rbuf, PS__MAX_REPLY_FRAME);
  uv_timer_init(&c->loop, &sh->timer);
  sh->timer.data = sh;
  return 0;
}

void ps__shard_start(ps__shard *sh) { shard_connect(sh); }

/* Close every handle of the shard; the loop ends once their close callbacks
 * and a cancelled resolver request have run. */
void ps__shard_shutdown(ps__shard *sh) {
  if (sh->shut) return;
  sh->shut = 1;
  sh->goodbye_id = 0;
  uv_timer_stop(&sh->timer);
  uv_close((uv_handle_t *)&sh->timer, NULL);
  if (sh->resolving) uv_cancel((uv_req_t *)&sh->gai);
  ps__shard_disconnect(sh, "handle closed");
}

void ps__shard_free(ps__shard *sh) {
  lane_drop(sh);
  psw_rbuf_free(&sh->rbuf);
  u64map_free(&sh->inflight);
}
