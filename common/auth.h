/*
 * auth.h -- what the shard and the worker library share to authenticate a
 * connection (protocol 2, see proto/psd.proto): the roles, the bytes a proof
 * is computed over, the HMAC itself (libsodium's HMAC-SHA256, compared in
 * constant time) and the reading of token files.
 *
 * A token never crosses the wire: the client proves it holds its role's
 * token with HMAC-SHA256(token, hello context), the context binding the
 * shard's per-connection nonce, the role and the identity the hello claims.
 * A session (issued by the shard) is resumed the same way with its secret.
 */
#ifndef PSD_AUTH_H
#define PSD_AUTH_H

#include <stddef.h>
#include <stdint.h>

#define PSA_NONCE 32     /* bytes of a Challenge's nonce */
#define PSA_MAC 32       /* bytes of a proof (HMAC-SHA256) */
#define PSA_SECRET 32    /* bytes of a session secret */
#define PSA_TOKEN_MIN 16 /* a token shorter than this is refused */
#define PSA_TOKEN_MAX 4096

/* Roles, each with its own token; a higher role may do what a lower one
 * may (server/auth.c has the table). */
enum { PSA_READER = 0, PSA_WORKER = 1, PSA_ADMIN = 2, PSA_NROLES = 3 };

/* "reader", "worker", "admin" (or "?"). */
const char *psa_role_name(int role);
/* The role of a name, or -1. */
int psa_role_parse(const char *name);

/* The bytes a proof is computed over (proto/psd.proto spells them out). */
typedef struct {
  uint8_t b[128];
  size_t len;
} psa_ctx;

void psa_hello_context(psa_ctx *ctx, const uint8_t nonce[PSA_NONCE], int role, int32_t rank,
                       uint32_t num_workers, int32_t staleness, uint64_t servers_hash,
                       uint32_t shard_index, uint64_t session_id);
void psa_resume_context(psa_ctx *ctx, const uint8_t nonce[PSA_NONCE], uint64_t session_id,
                        int32_t rank);

/* Initialize libsodium (idempotent, thread-safe). 0 or -1. */
int psa_init(void);
/* out = HMAC-SHA256(key, ctx). */
void psa_mac(uint8_t out[PSA_MAC], const uint8_t *key, size_t keylen, const psa_ctx *ctx);
/* 1 when mac (of maclen bytes) is HMAC-SHA256(key, ctx), compared in
 * constant time; 0 otherwise (a wrong length included). */
int psa_mac_ok(const uint8_t *mac, size_t maclen, const uint8_t *key, size_t keylen,
               const psa_ctx *ctx);
/* n random bytes from the kernel's generator (through libsodium). */
void psa_random(void *buf, size_t n);
/* Overwrite n bytes in a way the compiler keeps. */
void psa_wipe(void *buf, size_t n);

/* Read a token file: the token is the file's bytes, trailing whitespace
 * (a final newline) removed. Refused, with a sentence in err: a file that
 * cannot be read or is not a regular file, a file every user may read
 * (mode o+r), an empty token, one shorter than PSA_TOKEN_MIN or longer than
 * PSA_TOKEN_MAX bytes. A group-readable file is accepted with a sentence
 * in warn (warn[0] == '\0' otherwise). 0 or -1. */
int psa_token_load(const char *path, uint8_t tok[PSA_TOKEN_MAX], size_t *len, char *err,
                   size_t errlen, char *warn, size_t warnlen);

#endif
