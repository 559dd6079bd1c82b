/*
 * test_jobs.c -- named jobs through the library against real shards: names
 * per job, a job's run ended by an admin (held requests and stale workers
 * get PS_EJOBENDED, the next worker starts run 2), the job mismatch
 * sentence, --max-jobs, bad names. The end-to-end training runs are
 * tests/jobs_test.sh.
 *
 * A held request is held by construction (a sync round that waits for a
 * rank that has not pushed), never by timing.
 */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check_main.h"
#include "harness.h"
#include "psd.h"
#include "shards.h"

/* The test's one shard (tests/shards.h). */
static th_psd *daemon_;

static void start(const char *const *extra) { daemon_ = ts_start(0, extra); }

/* A client of job `job` (NULL: the default). With rc_out, a connect that
 * fails is the test's to judge: its code goes there. */
static ps_client *client(const char *job, int rank, int nw, int staleness, int *rc_out) {
  ps_options o;
  ts_options(&o, rank, nw, staleness);
  o.job = job;
  o.lane_mb = 0;
  if (rc_out == NULL) return ts_connect(daemon_->addr, &o);
  ps_client *c = NULL;
  *rc_out = ps_connect(&c, daemon_->addr, &o);
  return c;
}

static void create(ps_client *c, const char *name, uint64_t n, double lr) {
  ps_tensor_spec s;
  ps_tensor_spec_init(&s, PS_INIT_ZEROS, PS_OPT_SGD);
  s.optim.lr = lr;
  uint64_t shape[1] = {n};
  CK_PS(c, ps_create(c, name, shape, 1, &s));
}

static const ps_job_info *find_job(const ps_job_info *jobs, size_t n, const char *name) {
  for (size_t i = 0; i < n; i++)
    if (strcmp(jobs[i].name, name) == 0) return &jobs[i];
  return NULL;
}

/* Two jobs with a tensor of the same name: each sees its own. */
START_TEST(names_are_per_job) {
  start(NULL);
  ps_client *a = client("alpha", -1, 1, 0, NULL), *b = client("beta", -1, 1, 0, NULL);
  create(a, "w", 4, 1.0);
  create(b, "w", 8, 1.0); /* another shape: no conflict, another job */
  ps_tensor_info ia, ib;
  CK_PS(a, ps_lookup(a, "w", &ia));
  CK_PS(b, ps_lookup(b, "w", &ib));
  ck_assert_uint_eq(ia.numel, 4);
  ck_assert_uint_eq(ib.numel, 8);
  ps_tensor_info_free(&ia);
  ps_tensor_info_free(&ib);
  /* The default job has no "w". */
  ps_client *d = client(NULL, -1, 1, 0, NULL);
  ps_tensor_info id;
  ck_assert_int_eq(ps_lookup(d, "w", &id), PS_ENOTFOUND);
  ps_job_info *jobs;
  size_t n;
  CK_PS(d, ps_jobs(d, &jobs, &n));
  ck_assert_ptr_nonnull(find_job(jobs, n, "alpha"));
  ck_assert_ptr_nonnull(find_job(jobs, n, "beta"));
  ck_assert_ptr_null(find_job(jobs, n, "default")); /* nothing in it: not listed */
  ck_assert_uint_eq(find_job(jobs, n, "beta")->tensors, 1);
  ps_jobs_free(jobs, n);
  ps_close(a);
  ps_close(b);
  ps_close(d);
}
END_TEST

/* An admin ends a sync job's run while rank 0's push waits for rank 1:
 * the push fails with PS_EJOBENDED, rank 0's next push too (its run is
 * over), and a new rank 0 starts run 2. */
START_TEST(job_end_fails_held_and_starts_a_new_run) {
  start(NULL);
  ps_client *adm = client("j", -1, 1, 0, NULL);
  create(adm, "w", 4, 1.0);
  ps_client *w0 = client("j", 0, 2, 0, NULL);
  float g[4] = {1, 2, 3, 4}, out[4];
  ps_ticket t;
  CK_PS(w0, ps_push_pull_async(w0, "w", g, out, 4, NULL, NULL, &t));
  /* Held: rank 1 has not pushed (it has not even joined). */
  ps_job_info *jobs;
  size_t n;
  for (;;) {
    CK_PS(adm, ps_jobs(adm, &jobs, &n));
    const ps_job_info *j = find_job(jobs, n, "j");
    ck_assert_ptr_nonnull(j);
    int pending = j->rounds_pending == 1;
    ck_assert_uint_eq(j->incarnation, 1);
    ck_assert_uint_eq(j->num_workers, 2);
    ps_jobs_free(jobs, n);
    if (pending) break;
  }
  CK_PS(adm, ps_job_end(adm, "j"));
  ck_assert_int_eq(ps_wait(w0, t, NULL), PS_EJOBENDED);
  ck_assert_ptr_nonnull(strstr(ps_errmsg(w0), "job 'j' run 1 ended: ended by admin"));
  ck_assert_int_eq(ps_push(w0, "w", g, 4), PS_EJOBENDED);
  ck_assert_ptr_nonnull(strstr(ps_errmsg(w0), "say hello again"));
  /* Nothing was applied. */
  float v[4];
  CK_PS(adm, ps_pull(adm, "w", v, 4, NULL));
  for (int i = 0; i < 4; i++) ck_assert_float_eq(v[i], 0.0f);
  CK_PS(adm, ps_jobs(adm, &jobs, &n));
  ck_assert(find_job(jobs, n, "j")->ended);
  ps_jobs_free(jobs, n);
  ck_assert_int_eq(ps_job_end(adm, "nosuch"), PS_ENOTFOUND);

  /* A new worker (1 of 1, async this time: a new run may choose) starts
   * run 2; the tensor is kept. */
  ps_client *n0 = client("j", 0, 1, -1, NULL);
  CK_PS(n0, ps_push(n0, "w", g, 4));
  CK_PS(adm, ps_pull(adm, "w", v, 4, NULL));
  ck_assert_float_eq(v[3], -4.0f);
  CK_PS(adm, ps_jobs(adm, &jobs, &n));
  const ps_job_info *j = find_job(jobs, n, "j");
  ck_assert_uint_eq(j->incarnation, 2);
  ck_assert(!j->ended);
  ck_assert_int_eq(j->staleness, -1);
  ck_assert_uint_eq(j->live, 1);
  ps_jobs_free(jobs, n);
  ck_assert(th_log_contains(daemon_, "job 'j': run 2 begins (tensors kept: 1)"));
  /* While run 2 is live, another size is refused with a sentence naming
   * the job. */
  int rc;
  ps_client *bad = client("j", 1, 3, 0, &rc);
  ck_assert_ptr_null(bad);
  ck_assert_int_eq(rc, PS_EWRONGSHARD);
  ck_assert_ptr_nonnull(strstr(ps_last_error(), "job mismatch: job 'j' runs 1 workers in async "
                                                 "mode (run 2)"));
  ps_close(n0); /* its goodbye ends run 2 */
  CK_PS(adm, ps_jobs(adm, &jobs, &n));
  ck_assert(find_job(jobs, n, "j")->ended);
  ps_jobs_free(jobs, n);
  ck_assert(th_log_contains(daemon_, "job 'j' run 2 ended: every worker left"));
  ps_close(w0);
  ps_close(adm);
}
END_TEST

/* --max-jobs bounds the jobs; a bad name is refused; a dropped job's slot
 * is free again. */
START_TEST(job_limits_and_names) {
  const char *extra[] = {"--max-jobs", "2", NULL};
  start(extra);
  ps_client *a = client("a", -1, 1, 0, NULL), *b = client("b", -1, 1, 0, NULL);
  create(a, "w", 4, 1.0);
  create(b, "w", 4, 1.0);
  int rc;
  ps_client *c = client("c", -1, 1, 0, &rc);
  ck_assert_ptr_null(c);
  ck_assert_int_eq(rc, PS_ERESOURCE);
  ck_assert_ptr_nonnull(strstr(ps_last_error(), "--max-jobs 2"));
  c = client("no spaces", -1, 1, 0, &rc);
  ck_assert_ptr_null(c);
  ck_assert_int_eq(rc, PS_EBADREQ);
  ck_assert_ptr_nonnull(strstr(ps_last_error(), "letters, digits"));
  CK_PS(a, ps_job_drop(a, "b"));
  ps_tensor_info info;
  ck_assert_int_eq(ps_lookup(b, "w", &info), PS_EJOBENDED); /* its job is gone */
  ck_assert_ptr_nonnull(strstr(ps_errmsg(b), "job 'b' was dropped"));
  ps_close(b);
  c = client("c", -1, 1, 0, NULL);
  create(c, "w", 4, 1.0);
  ps_close(c);
  ps_close(a);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("jobs");
  TCase *tc = tcase_create("jobs");
  tcase_set_timeout(tc, 240);
  tcase_add_test(tc, names_are_per_job);
  tcase_add_test(tc, job_end_fails_held_and_starts_a_new_run);
  tcase_add_test(tc, job_limits_and_names);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return check_run(suite()); }
