/* rawclient.c -- a blocking client of psd's wire protocol for tests; see
 * rawclient.h. */
#include "rawclient.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "msg.h"
#include "placement.h"

/* Replies are read into a buffer that grows to the largest frame (a 16 MiB
 * block and more). */
#define RC_MAX_FRAME (1ull << 30)

/* ---- connecting ---------------------------------------------------------------- */

static void rc_init(rc *c, int fd, int port) {
  memset(c, 0, sizeof(*c));
  c->fd = fd;
  c->port = port;
  c->next_id = 1;
  psw_rbuf_init(&c->in, RC_MAX_FRAME);
}

void rc_adopt(rc *c, int fd, int port) { rc_init(c, fd, port); }

int rc_open_from(rc *c, int port, const char *from) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  if (fd >= 0 && from != NULL) {
    inet_pton(AF_INET, from, &a.sin_addr);
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
      close(fd);
      fd = -1;
    }
  }
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
    close(fd);
    fd = -1;
  }
  if (fd >= 0) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  }
  rc_init(c, fd, port);
  return fd;
}

int rc_open(rc *c, int port) { return rc_open_from(c, port, NULL); }

void rc_close(rc *c) {
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
  psw_rbuf_free(&c->in);
  psa_wipe(c->secret, sizeof(c->secret));
}

void rc_reset(rc *c) {
  struct linger lg = {1, 0};
  if (c->fd >= 0) setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
  rc_close(c);
}

/* One frame of any kind (a challenge included), or NULL at EOF. */
static Psd__Response *recv_frame(rc *c, float **vals, size_t *vlen) {
  if (vals) *vals = NULL, *vlen = 0;
  for (;;) {
    const uint8_t *payload;
    uint64_t len;
    int r = psw_rbuf_next(&c->in, &payload, &len);
    if (r == PSW_FRAME) {
      const uint8_t *v;
      size_t vl;
      Psd__Response *resp =
          (Psd__Response *)psw_decode(&psd__response__descriptor, payload, len, &v, &vl);
      if (resp != NULL && vals != NULL && vl > 0) {
        *vals = malloc(vl);
        if (*vals != NULL) memcpy(*vals, v, vl);
        *vlen = vl;
      }
      psw_rbuf_consume(&c->in, len);
      return resp;
    }
    if (r < 0 || c->fd < 0) return NULL;
    size_t avail;
    uint8_t *dst = psw_rbuf_reserve(&c->in, 65536, &avail);
    if (dst == NULL) return NULL;
    ssize_t n = recv(c->fd, dst, avail, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return NULL;
    psw_rbuf_commit(&c->in, (size_t)n);
  }
}

static int keep_challenge(rc *c, Psd__Response *resp) {
  if (resp == NULL || resp->body_case != PSD__RESPONSE__BODY_CHALLENGE) return 0;
  if (resp->challenge->nonce.len == PSA_NONCE) {
    memcpy(c->nonce, resp->challenge->nonce.data, PSA_NONCE);
    c->have_nonce = 1;
  }
  return 1;
}

int rc_challenge(rc *c, Psd__Response **other) {
  if (other) *other = NULL;
  Psd__Response *resp = recv_frame(c, NULL, NULL);
  if (keep_challenge(c, resp)) {
    psd__response__free_unpacked(resp, NULL);
    return c->have_nonce ? 0 : -1;
  }
  if (other) *other = resp;
  else if (resp) psd__response__free_unpacked(resp, NULL);
  return -1;
}

/* ---- sending and receiving -------------------------------------------------------- */

int rc_send_all(int fd, const void *p, size_t n) {
  const char *s = p;
  while (n > 0) {
    ssize_t k = send(fd, s, n, MSG_NOSIGNAL);
    if (k < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    s += k;
    n -= (size_t)k;
  }
  return 0;
}

int rc_send(rc *c, Psd__Request *r, const void *values, size_t vlen) {
  psw_frame f;
  if (c->fd < 0 || psw_encode(&f, &r->base, values, vlen) != 0) return -1;
  if (rc_send_all(c->fd, f.head, f.head_len) != 0) return -1;
  return vlen ? rc_send_all(c->fd, values, vlen) : 0;
}

int rc_post(rc *c, Psd__Request *r, const void *values, size_t vlen) {
  r->id = c->next_id++;
  return rc_send(c, r, values, vlen);
}

int rc_post_many(rc *c, Psd__Request *r, int n) {
  if (c->fd < 0 || n <= 0) return -1;
  uint8_t *buf = malloc((size_t)n * PSW_HEAD_MAX);
  if (buf == NULL) return -1;
  size_t len = 0;
  for (int k = 0; k < n; k++) {
    psw_frame f;
    r->id = c->next_id++;
    if (psw_encode(&f, &r->base, NULL, 0) != 0) {
      free(buf);
      return -1;
    }
    memcpy(buf + len, f.head, f.head_len);
    len += f.head_len;
  }
  int rc = rc_send_all(c->fd, buf, len);
  free(buf);
  return rc;
}

int rc_send_pulls(rc *c, const char *name, int n, uint64_t first_id, uint64_t clock) {
  int sent = 0;
  for (; sent < n; sent++) {
    Psd__Request r;
    Psd__Pull p;
    rc_pull_init(&r, &p, name, 0);
    if (clock) p.has_clock = 1, p.clock = clock;
    r.id = first_id + (uint64_t)sent;
    if (rc_send(c, &r, NULL, 0) != 0) break;
  }
  return sent;
}

void rc_header(uint8_t head[PSW_HEADER_SIZE], uint64_t len) {
  memcpy(head, PSW_MAGIC, 4);
  head[4] = PSW_VERSION, head[5] = 0; /* u16 version, little-endian */
  head[6] = 0, head[7] = 0;           /* u16 flags */
  for (int i = 0; i < 8; i++) head[8 + i] = (uint8_t)(len >> (8 * i));
}

int rc_send_patched(rc *c, Psd__Request *r, const char *mark, const void *bytes, size_t n) {
  psw_frame f;
  r->id = c->next_id++;
  if (psw_encode(&f, &r->base, NULL, 0) != 0) return -1;
  uint8_t *p = memmem(f.head, f.head_len, mark, n);
  if (p == NULL) return -1;
  memcpy(p, bytes, n);
  return rc_send_all(c->fd, f.head, f.head_len);
}

Psd__Response *rc_recv(rc *c, float **vals, size_t *vlen) {
  for (;;) {
    Psd__Response *resp = recv_frame(c, vals, vlen);
    if (!keep_challenge(c, resp)) return resp;
    psd__response__free_unpacked(resp, NULL);
    if (vals) free(*vals), *vals = NULL;
  }
}

Psd__Response *rc_call(rc *c, Psd__Request *r, const void *values, size_t vlen, float **out,
                       size_t *outlen) {
  if (rc_post(c, r, values, vlen) != 0) return NULL;
  Psd__Response *resp = rc_recv(c, out, outlen);
  if (resp != NULL && resp->id != r->id && resp->id != 0) {
    /* An Error with id 0 is the shard's about the connection (it is closing
     * it); any other id is a reply to something else: a protocol bug. */
    fprintf(stderr, "rawclient: the reply to request %llu carries id %llu\n",
            (unsigned long long)r->id, (unsigned long long)resp->id);
    abort();
  }
  return resp;
}

/* ---- the hello ------------------------------------------------------------------- */

rc_hello_args rc_hello_defaults(void) {
  rc_hello_args a;
  memset(&a, 0, sizeof(a));
  a.role = -1;
  a.rank = -1;
  a.nw = 1;
  a.staleness = -1;
  return a;
}

Psd__Response *rc_hello(rc *c, const rc_hello_args *a) {
  if (!c->have_nonce) {
    Psd__Response *other;
    if (rc_challenge(c, &other) != 0) return other;
  }
  char list[64];
  const char *servers = a->servers;
  if (servers == NULL) {
    snprintf(list, sizeof(list), "127.0.0.1:%d", c->port);
    servers = list;
  }
  /* The proof covers the list's hash; a list that does not parse is sent
   * as it is (the shard refuses it), proven over hash 0. */
  uint64_t list_hash = 0;
  psp_servers s;
  char err[256];
  if (psp_servers_parse(&s, servers, err, sizeof(err)) == 0) {
    list_hash = s.list_hash;
    psp_servers_free(&s);
  }
  Psd__Request r = PSD__REQUEST__INIT;
  Psd__Hello h = PSD__HELLO__INIT;
  h.protocol = PS_PROTOCOL_VERSION;
  h.identity = (char *)(a->identity ? a->identity : "rawclient");
  h.has_rank = 1, h.rank = a->rank;
  h.has_num_workers = 1, h.num_workers = (uint32_t)a->nw;
  h.has_staleness = 1, h.staleness = a->staleness;
  h.servers = (char *)servers;
  h.has_shard_index = 1, h.shard_index = a->shard_index;
  if (a->worker_id) h.has_worker_id = 1, h.worker_id = a->worker_id;
  if (a->lane_bytes) h.has_lane_bytes = 1, h.lane_bytes = a->lane_bytes;
  if (a->role >= 0) h.role = (char *)psa_role_name(a->role);
  const uint8_t *nonce = a->nonce ? a->nonce : c->nonce;
  uint8_t proof[PSA_MAC], sproof[PSA_MAC];
  psa_ctx ctx;
  if (a->token != NULL) {
    /* The role the shard will check: the hello's, else its default. */
    int role = a->role >= 0 ? a->role : a->rank >= 0 ? PSA_WORKER : PSA_ADMIN;
    psa_hello_context(&ctx, nonce, role, a->rank, (uint32_t)a->nw, a->staleness, list_hash,
                      a->shard_index, a->session);
    psa_mac(proof, (const uint8_t *)a->token, strlen(a->token), &ctx);
    h.has_proof = 1, h.proof.data = proof, h.proof.len = PSA_MAC;
  }
  if (a->session) {
    h.has_session_id = 1, h.session_id = a->session;
    if (a->secret) {
      psa_resume_context(&ctx, nonce, a->session, a->rank);
      psa_mac(sproof, a->secret, PSA_SECRET, &ctx);
      h.has_session_proof = 1, h.session_proof.data = sproof, h.session_proof.len = PSA_MAC;
    }
  }
  r.body_case = PSD__REQUEST__BODY_HELLO;
  r.hello = &h;
  Psd__Response *resp = rc_call(c, &r, NULL, 0, NULL, NULL);
  if (resp != NULL && resp->body_case == PSD__RESPONSE__BODY_HELLO &&
      resp->hello->has_session_id) {
    c->session = resp->hello->session_id;
    if (resp->hello->has_session_secret && resp->hello->session_secret.len == PSA_SECRET) {
      memcpy(c->secret, resp->hello->session_secret.data, PSA_SECRET);
      c->have_secret = 1;
    }
  }
  return resp;
}

/* ---- requests ---------------------------------------------------------------------- */

Psd__Response *rc_create(rc *c, const char *name, const uint64_t *shape, int nd,
                         const ps_tensor_spec *s) {
  pmsg_spec_pb pb;
  pmsg_spec_to_pb(&pb, s, shape, nd);
  Psd__Request r = PSD__REQUEST__INIT;
  Psd__Create cr = PSD__CREATE__INIT;
  cr.name = (char *)name;
  cr.spec = &pb.ts;
  r.body_case = PSD__REQUEST__BODY_CREATE;
  r.create = &cr;
  return rc_call(c, &r, NULL, 0, NULL, NULL);
}

void rc_pull_init(Psd__Request *r, Psd__Pull *p, const char *name, uint64_t block) {
  psd__request__init(r);
  psd__pull__init(p);
  p->name = (char *)name;
  p->block = block;
  r->body_case = PSD__REQUEST__BODY_PULL;
  r->pull = p;
}

Psd__Response *rc_pull(rc *c, const char *name, uint64_t block, float **out, size_t *len) {
  Psd__Request r;
  Psd__Pull p;
  rc_pull_init(&r, &p, name, block);
  return rc_call(c, &r, NULL, 0, out, len);
}

void rc_push_init(Psd__Request *r, Psd__Push *p, const char *name, uint64_t block,
                  uint64_t seq) {
  psd__request__init(r);
  psd__push__init(p);
  p->name = (char *)name;
  p->block = block;
  if (seq) p->has_seq = 1, p->seq = seq;
  r->body_case = PSD__REQUEST__BODY_PUSH;
  r->push = p;
}

Psd__Response *rc_push(rc *c, const char *name, uint64_t block, uint64_t seq, const float *g,
                       size_t n, int want, float **out, size_t *outlen) {
  Psd__Request r;
  Psd__Push p;
  rc_push_init(&r, &p, name, block, seq);
  if (want) p.has_want_values = 1, p.want_values = 1;
  return rc_call(c, &r, g, n * sizeof(float), out, outlen);
}

Psd__Response *rc_simple(rc *c, Psd__Request__BodyCase bc, uint64_t arg) {
  Psd__Request r = PSD__REQUEST__INIT;
  Psd__Clock ck = PSD__CLOCK__INIT;
  Psd__Heartbeat hb = PSD__HEARTBEAT__INIT;
  Psd__Barrier ba = PSD__BARRIER__INIT;
  Psd__Checkpoint cp = PSD__CHECKPOINT__INIT;
  Psd__Ping pi = PSD__PING__INIT;
  Psd__List li = PSD__LIST__INIT;
  Psd__Stats st = PSD__STATS__INIT;
  Psd__Goodbye gb = PSD__GOODBYE__INIT;
  r.body_case = bc;
  switch (bc) {
    case PSD__REQUEST__BODY_CLOCK: ck.clock = arg; r.clock = &ck; break;
    case PSD__REQUEST__BODY_HEARTBEAT:
      if (arg) hb.has_clock = 1, hb.clock = arg;
      r.heartbeat = &hb;
      break;
    case PSD__REQUEST__BODY_BARRIER: ba.gen = arg; r.barrier = &ba; break;
    case PSD__REQUEST__BODY_CHECKPOINT: r.checkpoint = &cp; break;
    case PSD__REQUEST__BODY_PING: r.ping = &pi; break;
    case PSD__REQUEST__BODY_LIST: r.list = &li; break;
    case PSD__REQUEST__BODY_STATS: r.stats = &st; break;
    case PSD__REQUEST__BODY_GOODBYE: r.goodbye = &gb; break;
    default:
      fprintf(stderr, "rc_simple: request body %d has fields of its own\n", (int)bc);
      abort();
  }
  return rc_call(c, &r, NULL, 0, NULL, NULL);
}

/* ---- stats ------------------------------------------------------------------------- */

char *rc_stats(rc *c) {
  Psd__Response *resp = rc_simple(c, PSD__REQUEST__BODY_STATS, 0);
  char *json = NULL;
  if (resp != NULL && resp->body_case == PSD__RESPONSE__BODY_STATS)
    json = strdup(resp->stats->json);
  if (resp) psd__response__free_unpacked(resp, NULL);
  return json;
}

double rc_json_num(const char *json, const char *obj, const char *key, int *found) {
  char pat[160];
  const char *p = json;
  if (found) *found = 0;
  if (json == NULL) return 0;
  if (obj) {
    snprintf(pat, sizeof(pat), "\"%s\":{", obj);
    p = strstr(json, pat);
    if (p == NULL) return 0;
  }
  snprintf(pat, sizeof(pat), "\"%s\":", key);
  const char *q = strstr(p, pat);
  if (q == NULL) return 0;
  if (found) *found = 1;
  return strtod(q + strlen(pat), NULL);
}

int rc_is_error(const Psd__Response *resp, Psd__Code code, const char *needle, char *why,
                size_t whylen) {
  if (resp == NULL) {
    snprintf(why, whylen, "no reply (the connection closed)");
    return 0;
  }
  if (resp->body_case != PSD__RESPONSE__BODY_ERROR) {
    snprintf(why, whylen, "reply body %d, not an error", (int)resp->body_case);
    return 0;
  }
  if (resp->error->code != code) {
    snprintf(why, whylen, "error code %d (%s), not %d", (int)resp->error->code,
             resp->error->message, (int)code);
    return 0;
  }
  if (needle != NULL && strstr(resp->error->message, needle) == NULL) {
    snprintf(why, whylen, "error '%s' does not mention '%s'", resp->error->message, needle);
    return 0;
  }
  return 1;
}
