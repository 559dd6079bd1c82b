/*
 * test_table_ctl.c -- a sparse table deleted and reset while its shards
 * run, and LFU aging, against real psd shards on loopback through the
 * library only:
 *
 *   delete      every shard gives its memory back (mem_tables as before the
 *               create), the rows are gone (NOT_FOUND with a sentence, also
 *               for a client that still knew the table), the name is free
 *               for a table of another dim; a tensor call on a table and a
 *               table call on a tensor are refused with the right call named
 *   reset       the spec is kept, no row is left, step 0, mem_tables as
 *               right after the create, and the next push is the first
 *               push again, bit for bit
 *   waiting     a sync push short of its round and an SSP pull ahead of the
 *               slowest worker are answered with NOT_FOUND and a sentence
 *               by a delete; a reset lets the round complete on the emptied
 *               table
 *   restart     after SIGTERM (its final checkpoint) a deleted table stays
 *               deleted and a reset one comes back empty
 *   roles       a reader and a worker are refused (PERMISSION_DENIED),
 *               nothing changes; an admin may
 *   aging       an old hot row of an LFU table is evicted once traffic has
 *               moved to other rows, which it would outlive without aging
 *
 * Nothing depends on the machine's speed: a held request is seen held in
 * the shard's own counters (polled with a bound far beyond need, WAIT_MS)
 * before the test acts; aging counts uses, not time.
 */
#include <check.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "auth.h"
#include "check_main.h"
#include "harness.h"
#include "placement.h"
#include "psd.h"
#include "psmath.h"
#include "shards.h"

/* ---- shards and clients (tests/shards.h) ------------------------------------------ */

/* A client with a role proven by a token file (NULL: none). */
static ps_client *client_as(const char *list, int rank, int nw, int staleness,
                            const char *role, const char *token_file) {
  ps_options o;
  ts_options(&o, rank, nw, staleness);
  o.role = role;
  o.token_file = token_file;
  return ts_connect(list, &o);
}

/* A deterministic gradient value. */
static float grad_at(uint64_t k, int step, uint32_t j) {
  uint64_t h = k * 0x9e3779b97f4a7c15ull ^ (uint64_t)step * 0xbf58476d1ce4e5b9ull ^ j;
  h ^= h >> 29;
  h *= 0x94d049bb133111ebull;
  h ^= h >> 32;
  return (float)(h & 0xffff) / 65536.0f - 0.5f;
}

static void grads(float *g, const uint64_t *keys, size_t n, uint32_t dim, int step) {
  for (size_t i = 0; i < n; i++)
    for (uint32_t j = 0; j < dim; j++) g[i * dim + j] = grad_at(keys[i], step, j);
}

/* keys[0..n) of a table land on every shard of list (the test asks). */
static void ck_spread(const char *list, const char *name, const uint64_t *keys, uint64_t n) {
  psp_servers sv;
  char err[128];
  ck_assert_int_eq(psp_servers_parse(&sv, list, err, sizeof(err)), 0);
  uint16_t owner[PSP_ROW_BUCKETS];
  psp_row_map(&sv, psm_hash_name(name), owner);
  int seen[16] = {0};
  for (uint64_t k = 0; k < n; k++) seen[owner[psp_row_bucket(psm_hash_name(name), keys[k])]]++;
  for (int i = 0; i < sv.n; i++) ck_assert_msg(seen[i] > 0, "no key of %s on shard %d", name, i);
  psp_servers_free(&sv);
}

static void table_spec(ps_table_spec *s, ps_optim_kind kind, double lr) {
  ps_table_spec_init(s, PS_INIT_NORMAL, kind);
  s->init.sigma = 0.1;
  s->optim.lr = lr;
}

/* ---- delete ------------------------------------------------------------------------ */

#define DN 200

START_TEST(delete_frees_every_shard) {
  char list[256];
  ts_start_cluster(2, NULL, list, sizeof(list));
  ps_client *c = ts_connect_as(list, -1, 1, -1), *other = ts_connect_as(list, -1, 1, -1);
  long long before[2];
  for (int s = 0; s < 2; s++) before[s] = ts_stat(c, s, "mem_tables");
  ps_table_spec s;
  table_spec(&s, PS_OPT_ADAM, 0.01);
  CK_PS(c, ps_create_table(c, "emb", 8, &s));
  static uint64_t keys[DN];
  static float rows[DN * 8], g[DN * 8];
  for (uint64_t k = 0; k < DN; k++) keys[k] = k;
  ck_spread(list, "emb", keys, DN);
  grads(g, keys, DN, 8, 0);
  CK_PS(c, ps_push_pull_rows(c, "emb", keys, DN, g, rows));
  CK_PS(other, ps_pull_rows(other, "emb", keys, 4, rows)); /* it knows the table too */
  for (int i = 0; i < 2; i++) {
    ck_assert_int_gt(ts_stat(c, i, "mem_tables"), before[i]);
    ck_assert_int_gt(ts_table_stat(c, i, "emb", "rows"), 0);
  }
  CK_PS(c, ps_delete_table(c, "emb"));
  for (int i = 0; i < 2; i++) {
    ck_assert_int_eq(ts_stat(c, i, "mem_tables"), before[i]);
    ck_assert_int_eq(ts_table_stat(c, i, "emb", "rows"), -1); /* no such table */
  }
  CK_FAILS(c, ps_pull_rows(c, "emb", keys, 4, rows), PS_ENOTFOUND, "no table named 'emb'");
  CK_FAILS(other, ps_pull_rows(other, "emb", keys, 4, rows), PS_ENOTFOUND,
           "no table named 'emb'");
  CK_FAILS(other, ps_push_rows(other, "emb", keys, 4, g), PS_ENOTFOUND, "no table named 'emb'");
  CK_FAILS(c, ps_delete_table(c, "emb"), PS_ENOTFOUND, "no shard knows a table");
  CK_FAILS(c, ps_reset_table(c, "emb"), PS_ENOTFOUND, "no table named 'emb'");

  /* The name is free again: a table of another dim, its rows fresh. */
  table_spec(&s, PS_OPT_SGD, 0.5);
  CK_PS(c, ps_create_table(c, "emb", 3, &s));
  float r3[4 * 3], want[3];
  CK_PS(other, ps_pull_rows(other, "emb", keys, 4, r3));
  for (int i = 0; i < 4; i++) {
    psm_row_init(&s.init, 3, psm_hash_name("emb"), keys[i], want);
    ck_assert_int_eq(memcmp(r3 + i * 3, want, sizeof(want)), 0);
  }

  /* Each call on its own kind of name. */
  uint64_t shape[1] = {5};
  ps_tensor_spec ts;
  ps_tensor_spec_init(&ts, PS_INIT_ZEROS, PS_OPT_SGD);
  CK_PS(c, ps_create(c, "dense", shape, 1, &ts));
  CK_FAILS(c, ps_delete(c, "emb"), PS_EBADREQ, "delete it with ps_delete_table");
  CK_FAILS(c, ps_reset(c, "emb"), PS_EBADREQ, "empty it with ps_reset_table");
  CK_FAILS(c, ps_delete_table(c, "dense"), PS_EBADREQ, "delete it with ps_delete (psctl rm)");
  CK_FAILS(c, ps_reset_table(c, "dense"), PS_EBADREQ, "reset it with ps_reset");
  CK_PS(c, ps_pull_rows(c, "emb", keys, 4, r3)); /* both still there */
  float d[5];
  CK_PS(c, ps_pull(c, "dense", d, 5, NULL));
  ps_close(other);
  ps_close(c);
  ts_stop_all_clean();
}
END_TEST

/* ---- reset -------------------------------------------------------------------------- */

#define RN 60
#define RD 6

START_TEST(reset_is_a_fresh_table) {
  char list[256];
  ts_start_cluster(2, NULL, list, sizeof(list));
  ps_client *c = ts_connect_as(list, -1, 1, -1);
  ps_table_spec s;
  table_spec(&s, PS_OPT_ADAM, 0.05);
  s.max_rows = 1000;
  s.evict = PS_EVICT_LFU;
  CK_PS(c, ps_create_table(c, "r", RD, &s));
  long long created[2];
  for (int i = 0; i < 2; i++) created[i] = ts_stat(c, i, "mem_tables");
  static uint64_t keys[RN];
  static float v0[RN * RD], w1[RN * RD], out[RN * RD], g[RN * RD];
  for (uint64_t k = 0; k < RN; k++) keys[k] = 1000 + k * 7;
  ck_spread(list, "r", keys, RN);
  CK_PS(c, ps_pull_rows(c, "r", keys, RN, v0));
  grads(g, keys, RN, RD, 0);
  CK_PS(c, ps_push_pull_rows(c, "r", keys, RN, g, w1));
  for (int step = 1; step < 4; step++) {
    grads(g, keys, RN, RD, step);
    CK_PS(c, ps_push_rows(c, "r", keys, RN, g));
  }
  for (int i = 0; i < 2; i++) {
    ck_assert_int_eq(ts_table_stat(c, i, "r", "step"), 4);
    ck_assert_int_gt(ts_stat(c, i, "mem_tables"), created[i]);
  }
  CK_PS(c, ps_reset_table(c, "r"));
  for (int i = 0; i < 2; i++) {
    ck_assert_int_eq(ts_table_stat(c, i, "r", "rows"), 0);
    ck_assert_int_eq(ts_table_stat(c, i, "r", "step"), 0);
    ck_assert_int_eq(ts_table_stat(c, i, "r", "evictions"), 0);
    ck_assert_int_eq(ts_stat(c, i, "mem_tables"), created[i]);
  }
  /* The spec is kept: the same create is welcome, another is refused. */
  CK_PS(c, ps_create_table(c, "r", RD, &s));
  ps_table_spec s2 = s;
  s2.optim.lr = 0.1;
  CK_FAILS(c, ps_create_table(c, "r", RD, &s2), PS_EEXISTS, "lr");
  /* Fresh rows, and the next push is the first push again. */
  CK_PS(c, ps_pull_rows(c, "r", keys, RN, out));
  ck_assert_int_eq(memcmp(out, v0, sizeof(out)), 0);
  grads(g, keys, RN, RD, 0);
  CK_PS(c, ps_push_pull_rows(c, "r", keys, RN, g, out));
  ck_assert_int_eq(memcmp(out, w1, sizeof(out)), 0);
  for (int i = 0; i < 2; i++) ck_assert_int_eq(ts_table_stat(c, i, "r", "step"), 1);
  ps_close(c);
  ts_stop_all_clean();
}
END_TEST

/* ---- what waits on a table ---------------------------------------------------------- */

START_TEST(delete_answers_what_waits) {
  char list[128];
  ts_start_cluster(1, NULL, list, sizeof(list));
  ps_client *admin = ts_connect_as(list, -1, 1, -1);
  ps_client *w0 = ts_connect_as(list, 0, 2, 0), *w1 = ts_connect_as(list, 1, 2, 0);
  ps_table_spec s;
  table_spec(&s, PS_OPT_SGD, 0.5);
  CK_PS(w0, ps_create_table(w0, "t", 4, &s));
  uint64_t keys[3] = {1, 2, 3};
  float g[12], out[12];
  grads(g, keys, 3, 4, 0);
  ps_ticket t0;
  CK_PS(w0, ps_push_pull_rows_async(w0, "t", keys, 3, g, out, NULL, NULL, &t0));
  ts_wait_stat(admin, 0, "rounds_pending", 1); /* rank 0's push waits for rank 1 */
  CK_PS(admin, ps_delete_table(admin, "t"));
  ck_assert_int_eq(ps_wait(w0, t0, NULL), PS_ENOTFOUND);
  ck_assert_ptr_nonnull(strstr(ps_errmsg(w0), "table 't' was deleted while this push waited"));
  ck_assert_int_eq(ts_stat(admin, 0, "rounds_pending"), 0);
  CK_FAILS(w1, ps_push_rows(w1, "t", keys, 3, g), PS_ENOTFOUND, "no table named 't'");

  /* A reset lets the round complete, on the emptied table: step 1, and the
   * rows one update from their init. */
  CK_PS(w0, ps_create_table(w0, "u", 4, &s));
  ps_ticket ta;
  CK_PS(w0, ps_push_rows_async(w0, "u", keys, 3, g, NULL, NULL, &ta));
  ts_wait_stat(admin, 0, "rounds_pending", 1); /* it waits for rank 1 */
  CK_PS(w1, ps_push_rows(w1, "u", keys, 3, g)); /* round 1 applied: step 1 */
  CK_PS(w0, ps_wait(w0, ta, NULL));
  ck_assert_int_eq(ts_table_stat(admin, 0, "u", "step"), 1);
  CK_PS(w0, ps_push_pull_rows_async(w0, "u", keys, 3, g, out, NULL, NULL, &t0));
  ts_wait_stat(admin, 0, "rounds_pending", 1);
  CK_PS(admin, ps_reset_table(admin, "u"));
  float o1[12];
  CK_PS(w1, ps_push_pull_rows(w1, "u", keys, 3, g, o1));
  CK_PS(w0, ps_wait(w0, t0, NULL));
  ck_assert_int_eq(memcmp(out, o1, sizeof(out)), 0);
  ck_assert_int_eq(ts_table_stat(admin, 0, "u", "step"), 1);
  float want[4];
  for (int i = 0; i < 3; i++) {
    psm_row_init(&s.init, 4, psm_hash_name("u"), keys[i], want);
    for (int j = 0; j < 4; j++)
      ck_assert_float_eq_tol(o1[i * 4 + j], want[j] - 0.5f * g[i * 4 + j], 1e-6f);
  }
  ps_close(w0);
  ps_close(w1);
  ps_close(admin);

  /* SSP: rank 0 three clocks ahead of rank 1 with staleness 1. */
  char list2[128];
  ts_start_cluster(1, NULL, list2, sizeof(list2));
  admin = ts_connect_as(list2, -1, 1, -1);
  w0 = ts_connect_as(list2, 0, 2, 1);
  w1 = ts_connect_as(list2, 1, 2, 1);
  CK_PS(w0, ps_create_table(w0, "p", 4, &s));
  for (int i = 0; i < 3; i++) ck_assert_int_eq(ps_clock(w0), i + 1);
  CK_PS(w0, ps_pull_rows_async(w0, "p", keys, 3, out, NULL, NULL, &t0));
  ts_wait_stat(admin, 0, "held_pulls", 1);
  CK_PS(admin, ps_delete_table(admin, "p"));
  ck_assert_int_eq(ps_wait(w0, t0, NULL), PS_ENOTFOUND);
  ck_assert_ptr_nonnull(strstr(ps_errmsg(w0), "the table was deleted while this pull waited"));
  ps_close(w0);
  ps_close(w1);
  ps_close(admin);
  ts_stop_all_clean();
}
END_TEST

/* ---- restart ------------------------------------------------------------------------ */

/* A checkpoint taken with both tables, then a delete and a reset: the
 * shard's final checkpoint (SIGTERM) has neither, and the restart brings
 * back neither the deleted table nor the reset one's rows. */
START_TEST(delete_and_reset_survive_restart) {
  char dir[600];
  snprintf(dir, sizeof(dir), "%s/ctl-data", th_tmpdir());
  ck_assert_int_eq(mkdir(dir, 0700), 0);
  const char *extra[] = {"--data-dir", dir, NULL};
  th_psd *p = ts_start(0, extra);
  int port = p->port;
  char list[64];
  snprintf(list, sizeof(list), "%s", p->addr);
  ps_client *c = ts_connect_as(list, -1, 1, -1);
  ps_table_spec s;
  table_spec(&s, PS_OPT_ADAGRAD, 0.1);
  s.max_rows = 100;
  s.evict = PS_EVICT_LFU;
  CK_PS(c, ps_create_table(c, "gone", 4, &s));
  CK_PS(c, ps_create_table(c, "kept", 4, &s));
  uint64_t keys[5] = {1, 2, 3, 4, 5};
  float g[20], v0[20], out[20];
  grads(g, keys, 5, 4, 0);
  CK_PS(c, ps_pull_rows(c, "kept", keys, 5, v0));
  CK_PS(c, ps_push_rows(c, "gone", keys, 5, g));
  CK_PS(c, ps_push_rows(c, "kept", keys, 5, g));
  CK_PS(c, ps_checkpoint(c));
  CK_PS(c, ps_delete_table(c, "gone"));
  CK_PS(c, ps_reset_table(c, "kept"));
  ps_close(c);
  ts_stop_clean(p);
  ck_assert(th_log_contains(p, "deleted table 'gone'"));
  ck_assert(th_log_contains(p, "reset table 'kept'"));

  p = ts_start(port, extra);
  c = ts_connect_as(list, -1, 1, -1);
  CK_FAILS(c, ps_pull_rows(c, "gone", keys, 5, out), PS_ENOTFOUND, "no table named 'gone'");
  ck_assert_int_eq(ts_table_stat(c, 0, "kept", "rows"), 0);
  ck_assert_int_eq(ts_table_stat(c, 0, "kept", "step"), 0);
  CK_PS(c, ps_create_table(c, "kept", 4, &s)); /* its spec, kept */
  CK_PS(c, ps_pull_rows(c, "kept", keys, 5, out));
  ck_assert_int_eq(memcmp(out, v0, sizeof(out)), 0);
  ps_close(c);
  ts_stop_all_clean();
}
END_TEST

/* ---- roles -------------------------------------------------------------------------- */

static char tpath[PSA_NROLES][700];

static void make_tokens(char *args[PSA_NROLES], char buf[PSA_NROLES][800]) {
  static const char *const val[PSA_NROLES] = {"reader-token-0123456789abcdef",
                                              "worker-token-0123456789abcdef",
                                              "admin-token-0123456789abcdef"};
  char dir[600];
  snprintf(dir, sizeof(dir), "%s/tokens-XXXXXX", th_tmpdir());
  ck_assert_ptr_nonnull(mkdtemp(dir));
  for (int r = 0; r < PSA_NROLES; r++) {
    int n = snprintf(tpath[r], sizeof(tpath[r]), "%s/%s.token", dir, psa_role_name(r));
    ck_assert_int_lt(n, (int)sizeof(tpath[r]));
    int fd = open(tpath[r], O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, val[r], strlen(val[r])), (ssize_t)strlen(val[r]));
    close(fd);
    n = snprintf(buf[r], sizeof(buf[r]), "%s=%s", psa_role_name(r), tpath[r]);
    ck_assert_int_lt(n, (int)sizeof(buf[r]));
    args[r] = buf[r];
  }
}

START_TEST(only_an_admin_deletes_or_resets) {
  char *tok[PSA_NROLES], buf[PSA_NROLES][800];
  make_tokens(tok, buf);
  const char *extra[] = {"--token-file", tok[0], "--token-file", tok[1],
                         "--token-file", tok[2], NULL};
  th_psd *p = ts_start(0, extra);
  ps_client *admin = client_as(p->addr, -1, 1, -1, "admin", tpath[PSA_ADMIN]);
  ps_table_spec s;
  table_spec(&s, PS_OPT_SGD, 0.5);
  CK_PS(admin, ps_create_table(admin, "t", 4, &s));
  uint64_t keys[2] = {7, 8};
  float rows[8];
  CK_PS(admin, ps_pull_rows(admin, "t", keys, 2, rows));
  ps_client *worker = client_as(p->addr, 0, 1, -1, "worker", tpath[PSA_WORKER]);
  ps_client *reader = client_as(p->addr, -1, 1, -1, "reader", tpath[PSA_READER]);
  CK_FAILS(worker, ps_delete_table(worker, "t"), PS_EPERM,
           "role worker may not delete (a table); that takes the admin role");
  CK_FAILS(worker, ps_reset_table(worker, "t"), PS_EPERM,
           "role worker may not reset (empty a table)");
  CK_FAILS(reader, ps_delete_table(reader, "t"), PS_EPERM, "role reader may not delete");
  CK_FAILS(reader, ps_reset_table(reader, "t"), PS_EPERM, "role reader may not reset");
  ck_assert_int_eq(ts_table_stat(admin, 0, "t", "rows"), 2); /* nothing changed */
  CK_PS(reader, ps_pull_rows(reader, "t", keys, 2, rows));
  CK_PS(admin, ps_reset_table(admin, "t"));
  ck_assert_int_eq(ts_table_stat(admin, 0, "t", "rows"), 0);
  CK_PS(admin, ps_delete_table(admin, "t"));
  ck_assert_int_eq(ts_table_stat(admin, 0, "t", "rows"), -1);
  ps_close(reader);
  ps_close(worker);
  ps_close(admin);
  ts_stop_all_clean();
}
END_TEST

/* ---- LFU aging ---------------------------------------------------------------------- */

/* Is row key of table `name` (dim 4, normal init sigma 0.1) as initialized? */
static int is_initial(ps_client *c, const char *name, uint64_t key) {
  ps_table_spec s;
  table_spec(&s, PS_OPT_SGD, 1.0);
  float got[4], want[4];
  CK_PS(c, ps_pull_rows(c, name, &key, 1, got));
  psm_row_init(&s.init, 4, psm_hash_name(name), key, want);
  return memcmp(got, want, sizeof(got)) == 0;
}

/* Four rows kept. Row 1 is used 400 times, then traffic moves to rows 2-5,
 * one request each in turn, 100 times: five rows want four places. Without
 * aging row 1's count of 400 would stay above every other row's (a row
 * evicted comes back with 1; none of 2-5 reaches 400 in 100 turns), and
 * rows 2-5 would evict each other forever. With aging, row 1's count is
 * halved every 32 uses of the table until it is the coldest: it is
 * evicted, and rows 2-5 then stay, with no eviction more. */
START_TEST(aging_evicts_an_old_hot_row) {
  char list[64];
  ts_start_cluster(1, NULL, list, sizeof(list));
  ps_client *c = ts_connect_as(list, -1, 1, -1);
  ps_table_spec s;
  table_spec(&s, PS_OPT_SGD, 1.0);
  s.max_rows = 4;
  s.evict = PS_EVICT_LFU;
  CK_PS(c, ps_create_table(c, "lfu", 4, &s));
  uint64_t k1 = 1;
  float g[4] = {1, 1, 1, 1}, row[4];
  CK_PS(c, ps_push_rows(c, "lfu", &k1, 1, g)); /* row 1 marked: not as initialized */
  for (int i = 1; i < 400; i++) CK_PS(c, ps_pull_rows(c, "lfu", &k1, 1, row));
  for (int turn = 0; turn < 100; turn++)
    for (uint64_t k = 2; k <= 5; k++) CK_PS(c, ps_pull_rows(c, "lfu", &k, 1, row));
  ck_assert_int_gt(ts_table_stat(c, 0, "lfu", "lfu_halvings"), 10);
  long long ev = ts_table_stat(c, 0, "lfu", "evictions");
  ck_assert_int_gt(ev, 0);
  for (uint64_t k = 2; k <= 5; k++) CK_PS(c, ps_pull_rows(c, "lfu", &k, 1, row));
  ck_assert_int_eq(ts_table_stat(c, 0, "lfu", "evictions"), ev); /* 2-5 all held */
  ck_assert(is_initial(c, "lfu", 1)); /* evicted, made again */
  ps_close(c);
  ts_stop_all_clean();
}
END_TEST

static Suite *table_ctl_suite(void) {
  Suite *s = suite_create("table_ctl");
  TCase *tc = tcase_create("lifecycle");
  tcase_add_checked_fixture(tc, NULL, ts_kill_all);
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, delete_frees_every_shard);
  tcase_add_test(tc, reset_is_a_fresh_table);
  tcase_add_test(tc, delete_answers_what_waits);
  tcase_add_test(tc, delete_and_reset_survive_restart);
  tcase_add_test(tc, only_an_admin_deletes_or_resets);
  suite_add_tcase(s, tc);
  tc = tcase_create("aging");
  tcase_add_checked_fixture(tc, NULL, ts_kill_all);
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, aging_evicts_an_old_hot_row);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return check_run(table_ctl_suite()); }
