/*
 * rawclient.h -- a blocking client of psd's wire protocol for tests: the
 * one the protocol-level tests (test_server, test_limits, test_ckpt,
 * test_auth) and the hostile-client suite (tests/hostile/) share.
 *
 * It speaks the protocol through common/wire and common/auth, the daemon's
 * own framing and proofs, but leaves every choice to the test: a hello with
 * or without a proof, with another connection's nonce, any rank or job;
 * any Request; raw bytes and partial frames. Nothing here asserts: a
 * function that fails returns NULL or -1 and the test decides what that
 * means (a closed connection is NULL from rc_recv). The one exception is a
 * reply whose id is not the request's in rc_call: the shard broke the
 * protocol, and the program aborts saying so.
 *
 * Values (floats) are copied out of the receive buffer into a malloc'd
 * array the caller frees.
 */
#ifndef PSD_TEST_RAWCLIENT_H
#define PSD_TEST_RAWCLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "auth.h"
#include "psd.pb-c.h"
#include "psd_types.h"
#include "wire.h"

typedef struct {
  int fd;
  int port;
  psw_rbuf in;
  uint64_t next_id;
  uint8_t nonce[PSA_NONCE]; /* the connection's challenge, once read */
  int have_nonce;
  /* From the last accepted hello (rc_hello). */
  uint64_t session;
  uint8_t secret[PSA_SECRET];
  int have_secret;
} rc;

/* ---- connecting ---------------------------------------------------------------- */

/* Connect to 127.0.0.1:port (from source address `from`, e.g. "127.0.0.2";
 * NULL: the kernel's choice). Nothing is read. The fd, or -1. */
int rc_open(rc *c, int port);
int rc_open_from(rc *c, int port, const char *from);
/* Wrap an already connected socket. */
void rc_adopt(rc *c, int fd, int port);
void rc_close(rc *c);
/* Close with a reset (RST) instead of a FIN. */
void rc_reset(rc *c);

/* Read the shard's first frame: 0 when it is the challenge (its nonce is
 * kept), else -1 with *other the frame read instead (an Error: refused,
 * banned, out of descriptors), or NULL at EOF. other may be NULL. */
int rc_challenge(rc *c, Psd__Response **other);

/* ---- sending and receiving -------------------------------------------------------- */

/* Every byte of p, or -1 (the peer closed, or SO_SNDTIMEO ran out). */
int rc_send_all(int fd, const void *p, size_t n);
/* Send r as it is (its id included) with `values` as its values field. */
int rc_send(rc *c, Psd__Request *r, const void *values, size_t vlen);
/* Give r the connection's next id and send it; 0 or -1. */
int rc_post(rc *c, Psd__Request *r, const void *values, size_t vlen);
/* Send r n times (ids: the connection's next n) in one write: the shard's
 * first read of them holds many frames (loopback queues a write's segments
 * whole), so a pause after a few leaves the rest buffered in the shard, by
 * construction. No values. 0 or -1. */
int rc_post_many(rc *c, Psd__Request *r, int n);
/* Send n pulls of block 0 of `name` (at `clock`; 0: none) with ids first_id,
 * first_id + 1, ..., reading no reply; stops at the first send that fails
 * (the peer closed, or SO_SNDTIMEO ran out). How many were sent. */
int rc_send_pulls(rc *c, const char *name, int n, uint64_t first_id, uint64_t clock);
/* A frame header announcing `len` payload bytes (magic, version, flags). */
void rc_header(uint8_t head[PSW_HEADER_SIZE], uint64_t len);
/* Encode r (next id), then overwrite the first occurrence of `mark` in the
 * frame with `bytes` (same length n) and send it: strings holding NUL or
 * invalid UTF-8, which protobuf-c's packer would not send. 0 or -1. */
int rc_send_patched(rc *c, Psd__Request *r, const char *mark, const void *bytes, size_t n);

/* The next Response, or NULL at EOF (or a frame that is not a Response). A
 * challenge arriving here is remembered and skipped. When vals is given,
 * *vals receives a malloc'd copy of the values (NULL if none) and *vlen
 * their length in bytes. */
Psd__Response *rc_recv(rc *c, float **vals, size_t *vlen);
/* Send r with the next id and read its reply; NULL when the connection
 * closed first. */
Psd__Response *rc_call(rc *c, Psd__Request *r, const void *values, size_t vlen, float **out,
                       size_t *outlen);

/* ---- the hello ------------------------------------------------------------------- */

typedef struct {
  int role;                /* PSA_*; -1: no role field (the shard's default) */
  const char *token;       /* prove this token; NULL: no proof */
  const uint8_t *nonce;    /* prove for this nonce; NULL: the connection's own */
  int rank, nw, staleness;
  const char *servers;     /* NULL: "127.0.0.1:<port>" alone */
  uint32_t shard_index;
  uint64_t session;        /* resume this session... */
  const uint8_t *secret;   /* ...proving its secret (NULL: no session proof) */
  uint64_t worker_id;      /* protocol 1's client-chosen id (ignored by the shard) */
  uint64_t lane_bytes;     /* ask for a lane */
  const char *identity;
} rc_hello_args;

/* A tool's hello (rank -1) of a 1-worker async job, no role, no proof. */
rc_hello_args rc_hello_defaults(void);
/* Send a hello (reading the challenge first if it was not) and return the
 * reply; an accepted one's session id and secret are kept in c. The first
 * frame when it was not a challenge is returned as the reply. */
Psd__Response *rc_hello(rc *c, const rc_hello_args *a);

/* ---- requests ---------------------------------------------------------------------- */

Psd__Response *rc_create(rc *c, const char *name, const uint64_t *shape, int nd,
                         const ps_tensor_spec *s);
/* A pull of one block; values copied as in rc_recv. */
Psd__Response *rc_pull(rc *c, const char *name, uint64_t block, float **out, size_t *len);
/* Fill r and p for a push of one block (seq 0: none). Set more fields of p
 * (clock, lanes, want_values) before sending. */
void rc_push_init(Psd__Request *r, Psd__Push *p, const char *name, uint64_t block,
                  uint64_t seq);
void rc_pull_init(Psd__Request *r, Psd__Pull *p, const char *name, uint64_t block);
/* A push (push-pull when want) of n floats; values copied as in rc_recv. */
Psd__Response *rc_push(rc *c, const char *name, uint64_t block, uint64_t seq, const float *g,
                       size_t n, int want, float **out, size_t *outlen);
/* A request without fields of its own, or one number: clock (its value),
 * heartbeat (its clock, 0: none), barrier (its generation); ping, list,
 * stats, checkpoint and goodbye ignore arg. */
Psd__Response *rc_simple(rc *c, Psd__Request__BodyCase bc, uint64_t arg);

/* ---- stats ------------------------------------------------------------------------- */

/* The shard's stats JSON (malloc'd), or NULL when refused or closed. */
char *rc_stats(rc *c);
/* The number after "key": inside the object "obj": (NULL: the first "key"
 * anywhere); *found (may be NULL) says whether it was there. */
double rc_json_num(const char *json, const char *obj, const char *key, int *found);

/* Does this error reply have this code and mention needle (NULL: any)? On
 * a mismatch, a sentence saying what came instead is in why. */
int rc_is_error(const Psd__Response *resp, Psd__Code code, const char *needle, char *why,
                size_t whylen);

#endif
