/*
 * check_main.h -- the end of every Check test program's main().
 */
#ifndef PSD_CHECK_MAIN_H
#define PSD_CHECK_MAIN_H

#include <check.h>

/* Run every test of s; the exit status: 0 if all passed, else 1. */
static inline int check_run(Suite *s) {
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}

#endif
