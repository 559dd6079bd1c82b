/*
 * access.h -- who may connect to a shard and what each role may ask.
 *
 *  - Tokens: one per role, read from files at start (--token-file
 *    ROLE=PATH, PSD_TOKEN_FILE). With none the shard is in protected mode:
 *    loopback peers only, each one an admin.
 *  - The limiter: an address whose authentication failed --auth-fail-limit
 *    times (default 5) within --auth-fail-window seconds (60) has its new
 *    connections closed at once for --auth-ban seconds (30). The table is
 *    bounded (PSD_AUTH_SLOTS); when it is full the address heard from least
 *    recently is forgotten.
 *  - The role table: reader < worker < admin, each allowed what the lower
 *    ones are.
 *
 * The proofs themselves are common/auth.h's; the hello that carries them
 * is handled in server.c.
 */
#ifndef PSD_ACCESS_H
#define PSD_ACCESS_H

#include "server.h"

/* The limiter's defaults (psd_config: auth_fail_limit, auth_fail_window,
 * auth_ban). */
#define AUTH_FAIL_LIMIT 5
#define AUTH_FAIL_WINDOW_S 60.0
#define AUTH_BAN_S 30.0

/* Read every configured token file into cfg (cfg->tokens says whether
 * any). 0, or -1 with a sentence in err; warnings are logged. */
int auth_load_tokens(psd_config *cfg, char *err, size_t errlen);

/* Milliseconds this address is still refused for, or 0. */
uint64_t auth_refused_for(psd_server *srv, const uint8_t addr[16], uint64_t now);
/* An authentication from addr (peer names it in logs) failed. */
void auth_failure(psd_server *srv, const uint8_t addr[16], const char *peer, uint64_t now);
/* Addresses refused now. */
uint32_t auth_banned_count(psd_server *srv, uint64_t now);

/* The least role a request needs (a Psd__Request body case); PSA_READER for
 * hello and ping. */
int auth_min_role(int body_case);
/* "push", "checkpoint", ... */
const char *auth_request_name(int body_case);

#endif
