/*
 * test_spare.c -- server/spare.c, buffers touched off the event loop: a
 * wanted buffer becomes ready and is taken with its charge given back, one
 * per size, none past SPARE_MAX or the ceiling, a given-back buffer serves
 * the next taker, receive buffers take and give them (wire.h), and stopping
 * frees every one. The spare thread is real; a test waits for it by polling
 * what it makes (a liveness wait: the ctest timeout bounds it), never by
 * timing it.
 */
#include <check.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check_main.h"
#include "memory.h"
#include "spare.h"
#include "wire.h"

static void setup(void) {
  mem_set_limit(256u << 20);
  mem_set_reserve(0);
  ck_assert_int_eq(spare_start(), 0);
}
static void teardown(void) {
  spare_stop();
  ck_assert_uint_eq(mem_used_by(PSD_MEM_SCRATCH), 0);
}

/* The ready buffer of `bytes`, once the spare thread has made it. */
static void *take_when_ready(size_t bytes) {
  void *p;
  while ((p = spare_take(bytes)) == NULL) sched_yield();
  return p;
}

static int all_zero(const uint8_t *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (p[i] != 0) return 0;
  return 1;
}

START_TEST(wanted_becomes_ready_and_taken_uncharged) {
  const size_t n = 4u << 20;
  spare_want(n);
  ck_assert_uint_eq(mem_used_by(PSD_MEM_SCRATCH), n);
  uint8_t *p = take_when_ready(n);
  ck_assert_uint_eq((uintptr_t)p % 64, 0);
  ck_assert(all_zero(p, n));
  ck_assert_uint_eq(mem_used_by(PSD_MEM_SCRATCH), 0);
  ck_assert_ptr_null(spare_take(n)); /* there was one */
  free(p);
}
END_TEST

START_TEST(one_per_size_within_limits) {
  spare_want(1u << 20);
  spare_want(1u << 20);
  ck_assert_uint_eq(mem_used_by(PSD_MEM_SCRATCH), 1u << 20);
  spare_want(2u << 20);
  ck_assert_uint_eq(mem_used_by(PSD_MEM_SCRATCH), 3u << 20);
  spare_want((size_t)SPARE_MAX * 2); /* too big to keep */
  ck_assert_uint_eq(mem_used_by(PSD_MEM_SCRATCH), 3u << 20);
  /* No size is taken for another. */
  free(take_when_ready(2u << 20));
  ck_assert_ptr_null(spare_take(3u << 20));
  free(take_when_ready(1u << 20));
  ck_assert_uint_eq(mem_used_by(PSD_MEM_SCRATCH), 0);
}
END_TEST

START_TEST(within_the_ceiling) {
  mem_set_limit(8u << 20);
  mem_set_reserve(2u << 20);
  spare_want(8u << 20); /* would eat the reserve */
  ck_assert_uint_eq(mem_used_by(PSD_MEM_SCRATCH), 0);
  ck_assert_uint_eq(mem_refusals(), 0); /* no client was refused anything */
  spare_want(4u << 20);
  ck_assert_uint_eq(mem_used_by(PSD_MEM_SCRATCH), 4u << 20);
  free(take_when_ready(4u << 20));
}
END_TEST

/* Spares give way: what a request needs is found by dropping them. */
START_TEST(dropped_when_the_account_needs_room) {
  mem_set_reclaim(spare_reclaim);
  mem_set_limit(16u << 20);
  mem_set_reserve(0);
  spare_want(4u << 20);
  free(take_when_ready(4u << 20));
  spare_want(4u << 20); /* ready, or still wanted: either is dropped */
  spare_want(8u << 20);
  ck_assert_uint_eq(mem_used_by(PSD_MEM_SCRATCH), 12u << 20);
  /* 10 MiB of blocks fit only without the spares. */
  ck_assert_int_eq(mem_take_growth(PSD_MEM_TENSORS, 10u << 20), 0);
  ck_assert_uint_eq(mem_refusals(), 0);
  ck_assert_uint_le(mem_used_by(PSD_MEM_SCRATCH), 6u << 20);
  /* Whatever was being made when asked keeps its charge until ready, and
   * goes at the next need. */
  while (mem_used_by(PSD_MEM_SCRATCH) > 0) {
    ck_assert(mem_fits(16u << 20) == 0);
    sched_yield();
  }
  mem_release(PSD_MEM_TENSORS, 10u << 20);
  mem_set_reclaim(NULL);
}
END_TEST

START_TEST(given_back_serves_the_next) {
  const size_t n = 2u << 20;
  spare_want(n);
  uint8_t *p = take_when_ready(n);
  memset(p, 7, n);
  spare_give(p, n);
  ck_assert_uint_eq(mem_used_by(PSD_MEM_SCRATCH), n);
  ck_assert_ptr_eq(spare_take(n), p); /* the same memory, as it was left */
  ck_assert_uint_eq(p[n - 1], 7);
  free(p);
  /* A second give of a size already ready is freed, not kept. */
  spare_want(n);
  uint8_t *q = take_when_ready(n);
  spare_want(n);
  uint8_t *r = take_when_ready(n);
  spare_give(q, n);
  spare_give(r, n);
  ck_assert_uint_eq(mem_used_by(PSD_MEM_SCRATCH), n);
  free(spare_take(n));
}
END_TEST

/* Receive buffers for big frames come from the spares and go back to them
 * (wire.h): a second connection's big frame lands in memory the first one
 * touched. */
START_TEST(receive_buffers_take_and_give) {
  psw_rbuf_spares(spare_take, spare_want, spare_give);
  const size_t frame = 3u << 20;
  const size_t cap = psw_rbuf_cap_for(frame);
  ck_assert_uint_eq(cap, 4u << 20);
  spare_want(cap);
  void *ready = take_when_ready(cap);
  spare_give(ready, cap);

  psw_rbuf a;
  psw_rbuf_init(&a, PSW_DEFAULT_MAX_FRAME);
  size_t avail = 0;
  uint8_t *dst = psw_rbuf_reserve(&a, PSW_HEADER_SIZE + frame, &avail);
  ck_assert_ptr_nonnull(dst);
  ck_assert_int_eq(a.spare, 1);
  ck_assert_ptr_eq(a.data, ready);
  ck_assert_uint_ge(avail, PSW_HEADER_SIZE + frame);
  /* Taking it asked for the next one of its size. */
  ck_assert_uint_eq(mem_used_by(PSD_MEM_SCRATCH), cap);
  free(take_when_ready(cap));
  psw_rbuf_free(&a); /* back to the spares */
  ck_assert_uint_eq(mem_used_by(PSD_MEM_SCRATCH), cap);

  /* Small buffers are the connection's own mapped memory. */
  psw_rbuf b;
  psw_rbuf_init(&b, PSW_DEFAULT_MAX_FRAME);
  ck_assert_ptr_nonnull(psw_rbuf_reserve(&b, 100, &avail));
  ck_assert_int_eq(b.spare, 0);
  psw_rbuf_free(&b);
  psw_rbuf_spares(NULL, NULL, NULL);
}
END_TEST

START_TEST(stop_frees_ready_and_wanted) {
  spare_want(1u << 20);
  spare_want(2u << 20);
  free(take_when_ready(2u << 20));
  spare_want(2u << 20);
  /* teardown: spare_stop gives every charge back, made or not */
}
END_TEST

START_TEST(not_started_does_nothing) {
  spare_stop();
  spare_want(1u << 20);
  ck_assert_uint_eq(mem_used_by(PSD_MEM_SCRATCH), 0);
  ck_assert_ptr_null(spare_take(1u << 20));
  void *p = aligned_alloc(64, 1u << 20);
  spare_give(p, 1u << 20); /* freed */
  ck_assert_uint_eq(mem_used_by(PSD_MEM_SCRATCH), 0);
  ck_assert_int_eq(spare_start(), 0); /* for teardown */
}
END_TEST

int main(void) {
  Suite *s = suite_create("spare");
  TCase *tc = tcase_create("spare");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, wanted_becomes_ready_and_taken_uncharged);
  tcase_add_test(tc, one_per_size_within_limits);
  tcase_add_test(tc, within_the_ceiling);
  tcase_add_test(tc, dropped_when_the_account_needs_room);
  tcase_add_test(tc, given_back_serves_the_next);
  tcase_add_test(tc, receive_buffers_take_and_give);
  tcase_add_test(tc, stop_frees_ready_and_wanted);
  tcase_add_test(tc, not_started_does_nothing);
  suite_add_tcase(s, tc);
  return check_run(s);
}
