/*
 * rawcheck.h -- Check assertions over tests/rawclient.h's replies, for the
 * Check programs that speak the raw protocol.
 */
#ifndef PSD_TEST_RAWCHECK_H
#define PSD_TEST_RAWCHECK_H

#include <check.h>
#include <stdio.h>

#include "rawclient.h"

/* resp is an Error with this code mentioning needle (NULL: any); freed. */
static inline void expect_error(Psd__Response *resp, Psd__Code code, const char *needle) {
  char why[700];
  int ok = rc_is_error(resp, code, needle, why, sizeof(why));
  if (resp != NULL) psd__response__free_unpacked(resp, NULL);
  ck_assert_msg(ok, "expected error %d: %s", (int)code, why);
}

/* resp is a reply with this body; else the test fails saying `what` and
 * what came instead (an error's sentence, or no reply at all). */
static inline void expect_body(const Psd__Response *resp, Psd__Response__BodyCase body,
                               const char *what) {
  ck_assert_msg(resp != NULL, "%s: no reply (the connection closed)", what);
  ck_assert_msg(resp->body_case == body, "%s: %s", what,
                resp->body_case == PSD__RESPONSE__BODY_ERROR ? resp->error->message : "?");
}

/* Create a tensor (or find it with the same spec): it must succeed. */
static inline void create_ok(rc *c, const char *name, const uint64_t *shape, int nd,
                             const ps_tensor_spec *s) {
  Psd__Response *resp = rc_create(c, name, shape, nd, s);
  char what[300];
  snprintf(what, sizeof(what), "create '%s'", name);
  expect_body(resp, PSD__RESPONSE__BODY_INFO, what);
  psd__response__free_unpacked(resp, NULL);
}

/* The shard closed the connection: EOF, nothing more. */
static inline void expect_closed(rc *c) {
  Psd__Response *resp = rc_recv(c, NULL, NULL);
  int body = resp ? (int)resp->body_case : 0;
  if (resp != NULL) psd__response__free_unpacked(resp, NULL);
  ck_assert_msg(body == 0, "expected the connection closed, got a reply (body %d)", body);
}

#endif
