/* auth.c -- see auth.h. The crypto is libsodium's; nothing here is
 * hand-written crypto. */
#include "auth.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

static const char *const role_names[PSA_NROLES] = {"reader", "worker", "admin"};

const char *psa_role_name(int role) {
  return role >= 0 && role < PSA_NROLES ? role_names[role] : "?";
}

int psa_role_parse(const char *name) {
  for (int r = 0; name != NULL && r < PSA_NROLES; r++)
    if (strcmp(name, role_names[r]) == 0) return r;
  return -1;
}

static void put(psa_ctx *c, const void *p, size_t n) {
  /* Every caller's total is far below the buffer; never overflow it. */
  if (c->len + n > sizeof(c->b)) n = sizeof(c->b) - c->len;
  memcpy(c->b + c->len, p, n);
  c->len += n;
}

static void put_u32(psa_ctx *c, uint32_t v) {
  uint8_t b[4];
  for (int i = 0; i < 4; i++) b[i] = (uint8_t)(v >> (8 * i));
  put(c, b, 4);
}

static void put_u64(psa_ctx *c, uint64_t v) {
  uint8_t b[8];
  for (int i = 0; i < 8; i++) b[i] = (uint8_t)(v >> (8 * i));
  put(c, b, 8);
}

void psa_hello_context(psa_ctx *ctx, const uint8_t nonce[PSA_NONCE], int role, int32_t rank,
                       uint32_t num_workers, int32_t staleness, uint64_t servers_hash,
                       uint32_t shard_index, uint64_t session_id) {
  static const char label[] = "psd-hello-v2"; /* with its NUL: 13 bytes */
  const char *rn = psa_role_name(role);
  uint8_t rl = (uint8_t)strlen(rn);
  ctx->len = 0;
  put(ctx, label, sizeof(label));
  put(ctx, nonce, PSA_NONCE);
  put(ctx, &rl, 1);
  put(ctx, rn, rl);
  put_u32(ctx, (uint32_t)rank);
  put_u32(ctx, num_workers);
  put_u32(ctx, (uint32_t)staleness);
  put_u64(ctx, servers_hash);
  put_u32(ctx, shard_index);
  put_u64(ctx, session_id);
}

void psa_resume_context(psa_ctx *ctx, const uint8_t nonce[PSA_NONCE], uint64_t session_id,
                        int32_t rank) {
  static const char label[] = "psd-resume-v2"; /* with its NUL: 14 bytes */
  ctx->len = 0;
  put(ctx, label, sizeof(label));
  put(ctx, nonce, PSA_NONCE);
  put_u64(ctx, session_id);
  put_u32(ctx, (uint32_t)rank);
}

int psa_init(void) { return sodium_init() < 0 ? -1 : 0; }

void psa_mac(uint8_t out[PSA_MAC], const uint8_t *key, size_t keylen, const psa_ctx *ctx) {
  crypto_auth_hmacsha256_state st;
  crypto_auth_hmacsha256_init(&st, key, keylen);
  crypto_auth_hmacsha256_update(&st, ctx->b, ctx->len);
  crypto_auth_hmacsha256_final(&st, out);
  sodium_memzero(&st, sizeof(st));
}

int psa_mac_ok(const uint8_t *mac, size_t maclen, const uint8_t *key, size_t keylen,
               const psa_ctx *ctx) {
  uint8_t want[PSA_MAC];
  if (mac == NULL || maclen != PSA_MAC) return 0;
  psa_mac(want, key, keylen, ctx);
  int ok = sodium_memcmp(want, mac, PSA_MAC) == 0;
  sodium_memzero(want, sizeof(want));
  return ok;
}

void psa_random(void *buf, size_t n) { randombytes_buf(buf, n); }

void psa_wipe(void *buf, size_t n) { sodium_memzero(buf, n); }

int psa_token_load(const char *path, uint8_t tok[PSA_TOKEN_MAX], size_t *len, char *err,
                   size_t errlen, char *warn, size_t warnlen) {
  if (warnlen) warn[0] = '\0';
  *len = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    snprintf(err, errlen, "token file %s: %s", path, strerror(errno));
    return -1;
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    snprintf(err, errlen, "token file %s is not a regular file", path);
    return -1;
  }
  if (st.st_mode & S_IROTH) {
    close(fd);
    snprintf(err, errlen,
             "token file %s is readable by every user (mode %04o); make it readable by its "
             "owner only (chmod 600)",
             path, (unsigned)(st.st_mode & 07777));
    return -1;
  }
  if (st.st_mode & S_IRGRP)
    snprintf(warn, warnlen,
             "token file %s is readable by its group (mode %04o); every member of group %u "
             "can act with this token",
             path, (unsigned)(st.st_mode & 07777), (unsigned)st.st_gid);
  uint8_t buf[PSA_TOKEN_MAX + 2];
  size_t n = 0;
  while (n < sizeof(buf)) {
    ssize_t k = read(fd, buf + n, sizeof(buf) - n);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0) {
      snprintf(err, errlen, "token file %s: %s", path, strerror(errno));
      close(fd);
      psa_wipe(buf, sizeof(buf));
      return -1;
    }
    if (k == 0) break;
    n += (size_t)k;
  }
  close(fd);
  while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ' ||
                   buf[n - 1] == '\t'))
    n--;
  int rc = -1;
  if (n == 0)
    snprintf(err, errlen, "token file %s is empty", path);
  else if (n < PSA_TOKEN_MIN)
    snprintf(err, errlen,
             "token in %s has %zu bytes; at least %d are needed (e.g. the output of "
             "`head -c 32 /dev/urandom | base64`)",
             path, n, PSA_TOKEN_MIN);
  else if (n > PSA_TOKEN_MAX)
    snprintf(err, errlen, "token file %s holds more than %d bytes", path, PSA_TOKEN_MAX);
  else {
    memcpy(tok, buf, n);
    *len = n;
    rc = 0;
  }
  psa_wipe(buf, sizeof(buf));
  return rc;
}
