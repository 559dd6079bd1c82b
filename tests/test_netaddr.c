/*
 * test_netaddr.c -- server/netaddr.c, the listen addresses of both of psd's
 * listeners: the HOST:PORT forms taken and refused, names resolved, the
 * bound address named, loopback told apart. Real sockets on loopback only.
 */
#include <arpa/inet.h>
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check_main.h"
#include "log.h"
#include "netaddr.h"

static uv_loop_t loop;

static void setup(void) { ck_assert_int_eq(uv_loop_init(&loop), 0); }
static void teardown(void) {
  uv_run(&loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
}

static int port_of(const struct sockaddr_storage *a) {
  return a->ss_family == AF_INET ? ntohs(((const struct sockaddr_in *)a)->sin_port)
                                 : ntohs(((const struct sockaddr_in6 *)a)->sin6_port);
}

START_TEST(literals) {
  struct sockaddr_storage a;
  ck_assert_int_eq(netaddr_resolve(&loop, "--listen", "127.0.0.1:7070", &a), 0);
  ck_assert_int_eq(a.ss_family, AF_INET);
  ck_assert_int_eq(port_of(&a), 7070);
  ck_assert_int_eq(netaddr_is_loopback((struct sockaddr *)&a), 1);

  ck_assert_int_eq(netaddr_resolve(&loop, "--listen", "0.0.0.0:0", &a), 0);
  ck_assert_int_eq(a.ss_family, AF_INET);
  ck_assert_int_eq(port_of(&a), 0);
  ck_assert_int_eq(netaddr_is_loopback((struct sockaddr *)&a), 0);

  ck_assert_int_eq(netaddr_resolve(&loop, "--metrics-listen", "[::1]:9070", &a), 0);
  ck_assert_int_eq(a.ss_family, AF_INET6);
  ck_assert_int_eq(port_of(&a), 9070);
  ck_assert_int_eq(netaddr_is_loopback((struct sockaddr *)&a), 1);

  ck_assert_int_eq(netaddr_resolve(&loop, "--listen", "[::]:65535", &a), 0);
  ck_assert_int_eq(a.ss_family, AF_INET6);
  ck_assert_int_eq(port_of(&a), 65535);
  ck_assert_int_eq(netaddr_is_loopback((struct sockaddr *)&a), 0);
}
END_TEST

/* A name is resolved once, at start: "localhost" is in every /etc/hosts. */
START_TEST(names) {
  struct sockaddr_storage a;
  ck_assert_int_eq(netaddr_resolve(&loop, "--listen", "localhost:1234", &a), 0);
  ck_assert(a.ss_family == AF_INET || a.ss_family == AF_INET6);
  ck_assert_int_eq(port_of(&a), 1234);
  ck_assert_int_eq(netaddr_is_loopback((struct sockaddr *)&a), 1);
  /* .invalid never resolves (RFC 6761). */
  ck_assert_int_eq(netaddr_resolve(&loop, "--listen", "psd-test.invalid:7070", &a), -1);
}
END_TEST

START_TEST(refused_forms) {
  static const char *bad[] = {"",          "7070",         "127.0.0.1",      "127.0.0.1:",
                              ":7070",     "127.0.0.1:x",  "127.0.0.1:70000", "127.0.0.1:-1",
                              "::1:7070",  "[::1]7070",    "[::1:7070",       "[]:7070",
                              "a:b:7070"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    struct sockaddr_storage a;
    ck_assert_msg(netaddr_resolve(&loop, "--listen", bad[i], &a) == -1, "'%s' taken", bad[i]);
  }
}
END_TEST

START_TEST(loopback) {
  struct sockaddr_in6 a6 = {.sin6_family = AF_INET6};
  ck_assert_int_eq(inet_pton(AF_INET6, "::ffff:127.0.0.9", &a6.sin6_addr), 1);
  ck_assert_int_eq(netaddr_is_loopback((struct sockaddr *)&a6), 1);
  ck_assert_int_eq(inet_pton(AF_INET6, "::ffff:10.0.0.1", &a6.sin6_addr), 1);
  ck_assert_int_eq(netaddr_is_loopback((struct sockaddr *)&a6), 0);
  ck_assert_int_eq(inet_pton(AF_INET6, "fe80::1", &a6.sin6_addr), 1);
  ck_assert_int_eq(netaddr_is_loopback((struct sockaddr *)&a6), 0);
  struct sockaddr_in a4 = {.sin_family = AF_INET};
  ck_assert_int_eq(inet_pton(AF_INET, "127.255.0.1", &a4.sin_addr), 1);
  ck_assert_int_eq(netaddr_is_loopback((struct sockaddr *)&a4), 1);
  ck_assert_int_eq(inet_pton(AF_INET, "128.0.0.1", &a4.sin_addr), 1);
  ck_assert_int_eq(netaddr_is_loopback((struct sockaddr *)&a4), 0);
  struct sockaddr other = {.sa_family = AF_UNIX};
  ck_assert_int_eq(netaddr_is_loopback(&other), 0);
}
END_TEST

/* The bound name is what a log line shows and tests read the port from. */
START_TEST(bound_name) {
  struct sockaddr_storage a;
  uv_tcp_t tcp;
  char where[NETADDR_NAME_MAX];
  ck_assert_int_eq(uv_tcp_init(&loop, &tcp), 0);
  ck_assert_int_eq(netaddr_bound(&tcp, where, sizeof(where)), -1); /* not bound yet */
  ck_assert_str_eq(where, "?");
  ck_assert_int_eq(netaddr_resolve(&loop, "--listen", "127.0.0.1:0", &a), 0);
  ck_assert_int_eq(uv_tcp_bind(&tcp, (struct sockaddr *)&a, 0), 0);
  int port = netaddr_bound(&tcp, where, sizeof(where));
  ck_assert_int_gt(port, 0);
  char want[NETADDR_NAME_MAX];
  snprintf(want, sizeof(want), "127.0.0.1:%d", port);
  ck_assert_str_eq(where, want);
  uv_close((uv_handle_t *)&tcp, NULL);

  /* IPv6 in brackets, where the machine has ::1. */
  uv_tcp_t tcp6;
  ck_assert_int_eq(netaddr_resolve(&loop, "--listen", "[::1]:0", &a), 0);
  ck_assert_int_eq(uv_tcp_init(&loop, &tcp6), 0);
  if (uv_tcp_bind(&tcp6, (struct sockaddr *)&a, 0) == 0 &&
      (port = netaddr_bound(&tcp6, where, sizeof(where))) > 0) {
    snprintf(want, sizeof(want), "[::1]:%d", port);
    ck_assert_str_eq(where, want);
  }
  uv_close((uv_handle_t *)&tcp6, NULL);
  uv_run(&loop, UV_RUN_DEFAULT); /* both close callbacks, while the handles live */
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("netaddr");
  TCase *t = tcase_create("resolve");
  tcase_add_checked_fixture(t, setup, teardown);
  tcase_add_test(t, literals);
  tcase_add_test(t, names);
  tcase_add_test(t, refused_forms);
  suite_add_tcase(s, t);
  t = tcase_create("names");
  tcase_add_checked_fixture(t, setup, teardown);
  tcase_add_test(t, loopback);
  tcase_add_test(t, bound_name);
  suite_add_tcase(s, t);
  return s;
}

int main(void) {
  plog_set_level(PLOG_OFF);
  return check_run(suite());
}
