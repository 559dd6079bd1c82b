/*
 * rawcheck.h -- Check assertions over tests/rawclient.h's replies, for the
 * Check programs that speak the raw protocol.
 */
#ifndef PSD_TEST_RAWCHECK_H
#define PSD_TEST_RAWCHECK_H

#include <check.h>

#include "rawclient.h"

/* resp is an Error with this code mentioning needle (NULL: any); freed. */
static inline void expect_error(Psd__Response *resp, Psd__Code code, const char *needle) {
  char why[700];
  int ok = rc_is_error(resp, code, needle, why, sizeof(why));
  if (resp != NULL) psd__response__free_unpacked(resp, NULL);
  ck_assert_msg(ok, "expected error %d: %s", (int)code, why);
}

/* The shard closed the connection: EOF, nothing more. */
static inline void expect_closed(rc *c) {
  Psd__Response *resp = rc_recv(c, NULL, NULL);
  int body = resp ? (int)resp->body_case : 0;
  if (resp != NULL) psd__response__free_unpacked(resp, NULL);
  ck_assert_msg(body == 0, "expected the connection closed, got a reply (body %d)", body);
}

#endif
