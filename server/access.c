/* access.c -- tokens, the failed-authentication limiter and the role table;
 * see access.h. */
#include "access.h"

#include <stdio.h>
#include <string.h>

#include "log.h"

int auth_load_tokens(psd_config *cfg, char *err, size_t errlen) {
  cfg->tokens = 0;
  for (int r = 0; r < PSA_NROLES; r++) {
    cfg->token_len[r] = 0;
    if (cfg->token_path[r][0] == '\0') continue;
    char e[512], warn[512];
    if (psa_token_load(cfg->token_path[r], cfg->token[r], &cfg->token_len[r], e, sizeof(e),
                       warn, sizeof(warn)) != 0) {
      snprintf(err, errlen, "%s token: %s", psa_role_name(r), e);
      return -1;
    }
    if (warn[0]) log_warn("%s token: %s", psa_role_name(r), warn);
    cfg->tokens = 1;
  }
  /* The same token for two roles would let the lower one act as the
   * higher (it can compute the higher role's proof). */
  for (int a = 0; a < PSA_NROLES; a++)
    for (int b = a + 1; b < PSA_NROLES; b++)
      if (cfg->token_len[a] && cfg->token_len[a] == cfg->token_len[b] &&
          memcmp(cfg->token[a], cfg->token[b], cfg->token_len[a]) == 0) {
        snprintf(err, errlen, "the %s and %s tokens are the same; every role needs its own",
                 psa_role_name(a), psa_role_name(b));
        return -1;
      }
  return 0;
}

static psd_authfail *slot_find(psd_server *srv, const uint8_t addr[16]) {
  for (int i = 0; i < PSD_AUTH_SLOTS; i++)
    if (srv->authfail[i].used && memcmp(srv->authfail[i].addr, addr, 16) == 0)
      return &srv->authfail[i];
  return NULL;
}

uint64_t auth_refused_for(psd_server *srv, const uint8_t addr[16], uint64_t now) {
  psd_authfail *f = slot_find(srv, addr);
  return f != NULL && f->until_ms > now ? f->until_ms - now : 0;
}

uint32_t auth_banned_count(psd_server *srv, uint64_t now) {
  uint32_t n = 0;
  for (int i = 0; i < PSD_AUTH_SLOTS; i++)
    n += srv->authfail[i].used && srv->authfail[i].until_ms > now;
  return n;
}

void auth_failure(psd_server *srv, const uint8_t addr[16], const char *peer, uint64_t now) {
  srv->stats.auth_failed++;
  const psd_config *cfg = &srv->cfg;
  if (cfg->auth_fail_limit == 0) return; /* the limiter is off */
  uint64_t window_ms = (uint64_t)(cfg->auth_fail_window * 1000.0);
  uint64_t ban_ms = (uint64_t)(cfg->auth_ban * 1000.0);
  psd_authfail *f = slot_find(srv, addr);
  if (f == NULL) {
    /* A free slot, else the one heard from least recently (an address
     * being refused is kept while another one can go). */
    for (int i = 0; i < PSD_AUTH_SLOTS && f == NULL; i++)
      if (!srv->authfail[i].used) f = &srv->authfail[i];
    for (int pass = 0; f == NULL && pass < 2; pass++)
      for (int i = 0; i < PSD_AUTH_SLOTS; i++) {
        psd_authfail *s = &srv->authfail[i];
        if (pass == 0 && s->until_ms > now) continue;
        if (f == NULL || s->last_ms < f->last_ms) f = s;
      }
    memset(f, 0, sizeof(*f));
    memcpy(f->addr, addr, 16);
    f->used = 1;
    f->first_ms = now;
  }
  if (now - f->first_ms > window_ms) {
    f->first_ms = now;
    f->count = 0;
  }
  f->last_ms = now;
  if (++f->count >= cfg->auth_fail_limit && f->until_ms <= now) {
    f->until_ms = now + ban_ms;
    f->count = 0;
    f->first_ms = now;
    /* The address without the port: every connection from it is refused. */
    char host[64];
    snprintf(host, sizeof(host), "%s", peer);
    char *colon = strrchr(host, ':');
    if (colon != NULL) *colon = '\0';
    log_warn("%u failed authentications from %s within %g s: refusing its connections for "
             "%g s (--auth-fail-limit, --auth-fail-window, --auth-ban)",
             cfg->auth_fail_limit, host, cfg->auth_fail_window, cfg->auth_ban);
  }
}

int auth_min_role(int body_case) {
  switch (body_case) {
    case PSD__REQUEST__BODY_HELLO:
    case PSD__REQUEST__BODY_PING:
    case PSD__REQUEST__BODY_LOOKUP:
    case PSD__REQUEST__BODY_PULL:
    case PSD__REQUEST__BODY_LIST:
    case PSD__REQUEST__BODY_STATS:
    case PSD__REQUEST__BODY_GOODBYE:
    case PSD__REQUEST__BODY_JOBS:
    case PSD__REQUEST__BODY_LOOKUP_TABLE:
    case PSD__REQUEST__BODY_PULL_ROWS:
    case PSD__REQUEST__BODY_TABLES:
      return PSA_READER;
    /* Create is a worker's too: trainers create their own tensors,
     * idempotently, when they start (an existing tensor with the same spec
     * is left as it is; another spec is refused). */
    case PSD__REQUEST__BODY_CREATE:
    case PSD__REQUEST__BODY_PUSH:
    case PSD__REQUEST__BODY_CREATE_TABLE:
    case PSD__REQUEST__BODY_PUSH_ROWS:
    case PSD__REQUEST__BODY_CLOCK:
    case PSD__REQUEST__BODY_HEARTBEAT:
    case PSD__REQUEST__BODY_BARRIER:
      return PSA_WORKER;
    /* Set and tune are a worker's too: rank 0 broadcasts its initial values
     * with set before the others pull (a trainer keeping its module's own
     * init), and a trainer's LR scheduler tunes lr between epochs. A worker
     * reaches only its own job's tensors. Delete and reset destroy state
     * every worker of the job depends on: an operator's decision. */
    case PSD__REQUEST__BODY_SET:
    case PSD__REQUEST__BODY_TUNE:
      return PSA_WORKER;
    case PSD__REQUEST__BODY_DELETE:
    case PSD__REQUEST__BODY_RESET:
    case PSD__REQUEST__BODY_CHECKPOINT:
    default:
      return PSA_ADMIN;
  }
}

const char *auth_request_name(int body_case) {
  switch (body_case) {
    case PSD__REQUEST__BODY_HELLO: return "hello";
    case PSD__REQUEST__BODY_CREATE: return "create";
    case PSD__REQUEST__BODY_LOOKUP: return "lookup";
    case PSD__REQUEST__BODY_PULL: return "pull";
    case PSD__REQUEST__BODY_PUSH: return "push";
    case PSD__REQUEST__BODY_LIST: return "list";
    case PSD__REQUEST__BODY_STATS: return "stats";
    case PSD__REQUEST__BODY_CLOCK: return "clock";
    case PSD__REQUEST__BODY_HEARTBEAT: return "heartbeat";
    case PSD__REQUEST__BODY_BARRIER: return "barrier";
    case PSD__REQUEST__BODY_CHECKPOINT: return "checkpoint";
    case PSD__REQUEST__BODY_PING: return "ping";
    case PSD__REQUEST__BODY_GOODBYE: return "goodbye";
    case PSD__REQUEST__BODY_JOBS: return "list jobs";
    case PSD__REQUEST__BODY_JOB_END: return "end a job";
    case PSD__REQUEST__BODY_JOB_DROP: return "drop a job";
    case PSD__REQUEST__BODY_CREATE_TABLE: return "create a table";
    case PSD__REQUEST__BODY_LOOKUP_TABLE: return "look up a table";
    case PSD__REQUEST__BODY_PULL_ROWS: return "pull rows";
    case PSD__REQUEST__BODY_PUSH_ROWS: return "push rows";
    case PSD__REQUEST__BODY_TABLES: return "list tables";
    case PSD__REQUEST__BODY_DELETE: return "delete";
    case PSD__REQUEST__BODY_RESET: return "reset";
    case PSD__REQUEST__BODY_SET: return "set";
    case PSD__REQUEST__BODY_TUNE: return "tune";
    default: return "request";
  }
}
