/*
 * test_table_age.c -- LFU aging of a table (server/table_age.c) driven
 * directly, without sockets: a pass halves every use count (never below
 * 1) and keeps the order of rows; it costs at most its budget per step
 * (one node halved or one row moved); uses during a pass keep the order
 * sorted; a pass starts after TABLE_AGE_PERIOD uses per row; and the state
 * a checkpoint keeps (table_age_save, the rows in order with their counts)
 * gives a table that goes on exactly as the one saved. Nothing here
 * depends on time: the steps are called by the test.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "check_main.h"
#include "job.h"
#include "server.h"
#include "table.h"

#define DIM 4
#define MAXR 512

static psd_server srv;
static psd_job *job;

static void setup(void) {
  char err[256];
  memset(&srv, 0, sizeof(srv));
  psd_link_init(&srv.jobs);
  job = job_alloc(PSD_JOB_DEFAULT);
  ck_assert_ptr_nonnull(job);
  job_adopt(&srv, job);
  ck_assert_int_eq(psp_servers_parse(&srv.servers, "127.0.0.1:7070", err, sizeof(err)), 0);
  srv.have_list = 1;
}

static void teardown(void) {
  jobs_free(&srv, &srv.jobs);
  table_buffers_free(&srv);
  psp_servers_free(&srv.servers);
}

static psd_table *lfu_table(const char *name) {
  ps_table_spec s;
  ps_table_spec_init(&s, PS_INIT_NORMAL, PS_OPT_SGD);
  s.max_rows = 100000;
  s.evict = PS_EVICT_LFU;
  psd_table *t = table_insert(&srv, job, name, DIM, &s, NULL);
  ck_assert_ptr_nonnull(t);
  return t;
}

/* The rows in eviction order, coldest first, with their counts. */
typedef struct {
  size_t n;
  uint64_t key[MAXR];
  uint32_t count[MAXR];
} order;

static void add_row(void *arg, const psd_rowhdr *h, const float *row, uint32_t count) {
  order *o = arg;
  (void)row;
  ck_assert_uint_lt(o->n, MAXR);
  o->key[o->n] = h->key;
  o->count[o->n++] = count;
}

static void order_of(psd_table *t, order *o) {
  o->n = 0;
  table_each_row(t, add_row, o);
}

/* Counts never go down along the order; equal neighbouring nodes only as
 * the two nodes of a merge in progress. */
static void ck_sorted(psd_table *t) {
  uint32_t prev = 0, last = 0;
  for (uint32_t id = t->node_first; id != 0; id = t->nodes[id - 1].next) {
    const psd_rnode *n = &t->nodes[id - 1];
    ck_assert_uint_ne(n->head, 0);
    if (prev != 0)
      ck_assert_msg(n->count > t->nodes[prev - 1].count ||
                        (n->count == t->nodes[prev - 1].count && prev == t->age.dst &&
                         id == t->age.src),
                    "node %u (count %u) after node %u (count %u)", id, n->count, prev,
                    t->nodes[prev - 1].count);
    prev = id;
    last = id;
  }
  ck_assert_uint_eq(last, t->node_last);
}

static void restore(psd_table *t, uint64_t key, uint32_t count) {
  float row[DIM * 1] = {0.5f, -0.25f, 1, 2};
  ck_assert_int_eq(table_restore_row(&srv, t, key, 0, count, row), 0);
}

/* Use keys[0..n) in one request, as a pull does. */
static void use(psd_table *t, const uint64_t *keys, size_t n) {
  psd_rowhdr **rows;
  uint64_t bad;
  ck_assert_int_eq(table_resolve(&srv, t, keys, n, 0, &rows, &bad), TR_OK);
  table_release(t, rows, n);
}

static uint32_t halved(uint32_t c) { return c > 1 ? c / 2 : 1; }

/* Counts 1, 2, 3, 4, 5, 8, 9, 100 (a few rows each): one pass, a step of
 * budget 1 at a time, halves every count and keeps the order; each step
 * halves one node or moves one row. */
START_TEST(pass_halves_every_count_in_order) {
  psd_table *t = lfu_table("emb");
  static const uint32_t counts[] = {1, 2, 3, 4, 5, 8, 9, 100};
  static const int per[] = {3, 2, 4, 1, 2, 5, 1, 2};
  uint64_t key = 1;
  for (size_t i = 0; i < sizeof(counts) / sizeof(*counts); i++)
    for (int r = 0; r < per[i]; r++) restore(t, key++, counts[i]);
  order before, after;
  order_of(t, &before);
  table_age_start(t);
  int steps = 0;
  table_age_state s0, s1;
  table_age_save(t, &s0);
  while (table_age_step(t, 1)) {
    steps++;
    table_age_save(t, &s1);
    /* A step of budget 1 moves at most one row of a merge. */
    if (s0.merge_count != 0 && s1.merge_count == s0.merge_count)
      ck_assert_uint_eq(s1.merge_rows + 1, s0.merge_rows);
    s0 = s1;
    ck_sorted(t);
    order_of(t, &after);
    ck_assert_uint_eq(after.n, before.n);
    ck_assert_int_eq(memcmp(after.key, before.key, before.n * sizeof(uint64_t)), 0);
    ck_assert_int_lt(steps, 1000);
  }
  /* 8 nodes halved; merges: 2 and 3 into 1 (2 + 4 rows), 5 into 4 (2), 9
   * into 8 (1): 8 + 9 steps of one unit. */
  ck_assert_int_eq(steps, 17);
  order_of(t, &after);
  ck_assert_int_eq(memcmp(after.key, before.key, before.n * sizeof(uint64_t)), 0);
  for (size_t i = 0; i < after.n; i++) ck_assert_uint_eq(after.count[i], halved(before.count[i]));
  ck_assert_uint_eq(t->age.passes, 1);
  ck_assert_int_eq(t->age.active, 0);
  ck_assert_uint_eq(t->age.src, 0);
  /* Nodes: 1, 2, 4, 50. */
  int nodes = 0;
  for (uint32_t id = t->node_first; id != 0; id = t->nodes[id - 1].next) nodes++;
  ck_assert_int_eq(nodes, 4);
}
END_TEST

/* An old hot row: without aging its count keeps it over every new row;
 * after passes it is the coldest and the one evicted. */
START_TEST(old_hot_row_becomes_coldest) {
  psd_table *t = lfu_table("hot");
  restore(t, 1, 1000); /* used 1000 times long ago */
  uint64_t fresh[3] = {2, 3, 4};
  for (int k = 0; k < 20; k++) use(t, fresh, 3);
  order o;
  order_of(t, &o);
  ck_assert_uint_eq(o.key[o.n - 1], 1); /* still the hottest */
  for (int pass = 0; pass < 8; pass++) {
    table_age_start(t);
    while (table_age_step(t, 1)) {
    }
    for (int k = 0; k < 4; k++) use(t, fresh, 3);
  }
  order_of(t, &o);
  ck_assert_uint_eq(o.key[0], 1); /* now the coldest */
  /* Never used since: halved once by every pass, those the uses started too. */
  ck_assert_uint_ge(t->age.passes, 8);
  uint32_t c = 1000;
  for (uint64_t p = 0; p < t->age.passes; p++) c = halved(c);
  ck_assert_uint_eq(o.count[0], c);
}
END_TEST

/* Uses during a pass: rows used while their node waits to be halved, or
 * after it was, or while it is being merged, keep the order sorted; at the
 * end every row holds its count halved once, plus the uses it had after
 * its node was halved. */
START_TEST(uses_during_a_pass_keep_order) {
  psd_table *t = lfu_table("mid");
  uint64_t key = 1;
  for (uint32_t c = 1; c <= 12; c++)
    for (int r = 0; r < 6; r++) restore(t, key++, c * 2);
  table_age_start(t);
  uint64_t k[2];
  int i = 0;
  while (table_age_step(t, 1)) {
    /* Use two rows, one cold and one hot, every step. */
    k[0] = 1 + (uint64_t)(i * 7) % 72;
    k[1] = 72 - (uint64_t)(i * 5) % 72;
    if (k[0] == k[1]) k[1] = k[1] % 72 + 1;
    use(t, k, 2);
    ck_sorted(t);
    i++;
    ck_assert_int_lt(i, 10000);
  }
  ck_sorted(t);
  ck_assert_uint_eq(t->age.passes, 1);
}
END_TEST

/* A pass starts when the uses since the last one began reach
 * TABLE_AGE_PERIOD per row, and ends within the budget of the requests. */
START_TEST(tick_starts_a_pass_per_period) {
  psd_table *t = lfu_table("tick");
  uint64_t keys[16];
  for (int i = 0; i < 16; i++) keys[i] = 100 + (uint64_t)i;
  use(t, keys, 16); /* 16 rows, 16 uses */
  ck_assert_uint_eq(t->age.passes, 0);
  ck_assert_int_eq(t->age.active, 0);
  for (int r = 1; r < TABLE_AGE_PERIOD - 1; r++) use(t, keys, 16);
  ck_assert_int_eq(t->age.active, 0); /* 7 x 16 uses */
  ck_assert_uint_eq(t->age.uses, (TABLE_AGE_PERIOD - 1) * 16);
  use(t, keys, 16); /* the 8th: due, and done within it (one node) */
  ck_assert_uint_eq(t->age.passes, 1);
  ck_assert_int_eq(t->age.active, 0);
  ck_assert_uint_eq(t->age.uses, 0);
  order o;
  order_of(t, &o);
  /* 8 uses each, halved once at the end of the 8th request. */
  for (size_t i = 0; i < o.n; i++) ck_assert_uint_eq(o.count[i], 4);
}
END_TEST

/* Save mid-pass (a merge half done), rebuild a table from what a
 * checkpoint holds (rows in order with counts, then the aging state): the
 * same uses and steps give the same order and counts on both. */
START_TEST(checkpoint_state_goes_on_identically) {
  psd_table *a = lfu_table("a");
  uint64_t key = 1;
  for (uint32_t c = 1; c <= 9; c++)
    for (int r = 0; r < 5; r++) restore(a, key++, c);
  table_age_start(a);
  /* Halve 1 and 2 (merge starts), then move two of 2's five rows. */
  table_age_step(a, 2);
  table_age_step(a, 2);
  table_age_state s;
  table_age_save(a, &s);
  ck_assert_uint_eq(s.merge_count, 1);
  ck_assert_uint_eq(s.merge_rows, 3);
  ck_assert_uint_eq(s.next_count, 3);

  psd_table *b = lfu_table("b");
  order o;
  order_of(a, &o);
  for (size_t i = 0; i < o.n; i++) restore(b, o.key[i], o.count[i]);
  ck_assert_int_eq(table_age_restore(b, &s), 0);
  ck_sorted(b);
  for (int round = 0; round < 40; round++) {
    uint64_t k[3] = {1 + (uint64_t)(round * 11) % 45, 1 + (uint64_t)(round * 17 + 3) % 45,
                     46 + (uint64_t)round}; /* a new row too */
    if (k[1] == k[0]) k[1] = k[1] % 45 + 1;
    use(a, k, 3);
    use(b, k, 3);
    table_age_step(a, 1);
    table_age_step(b, 1);
    order oa, ob;
    order_of(a, &oa);
    order_of(b, &ob);
    ck_assert_uint_eq(oa.n, ob.n);
    ck_assert_int_eq(memcmp(oa.key, ob.key, oa.n * sizeof(uint64_t)), 0);
    ck_assert_int_eq(memcmp(oa.count, ob.count, oa.n * sizeof(uint32_t)), 0);
    table_age_state sa, sb;
    table_age_save(a, &sa);
    table_age_save(b, &sb);
    ck_assert_int_eq(memcmp(&sa, &sb, sizeof(sa)), 0);
  }
  /* A state that does not fit the rows is refused. */
  psd_table *c = lfu_table("c");
  restore(c, 1, 1);
  restore(c, 2, 5);
  table_age_state bad = {.active = 1, .next_count = 4};
  ck_assert_int_eq(table_age_restore(c, &bad), -2);
  table_age_state bad2 = {.active = 1, .merge_count = 5, .merge_rows = 1};
  ck_assert_int_eq(table_age_restore(c, &bad2), -2); /* one row: nothing to split */
}
END_TEST

/* Emptying a table drops its aging with its rows. */
START_TEST(clear_drops_the_aging) {
  psd_table *t = lfu_table("clr");
  for (uint64_t k = 1; k <= 10; k++) restore(t, k, (uint32_t)k);
  table_age_start(t);
  table_age_step(t, 3);
  ck_assert_int_eq(t->age.active, 1);
  table_clear(t);
  ck_assert_int_eq(t->age.active, 0);
  ck_assert_uint_eq(t->nrows, 0);
  ck_assert_uint_eq(t->node_first, 0);
  uint64_t keys[2] = {5, 6};
  use(t, keys, 2);
  order o;
  order_of(t, &o);
  ck_assert_uint_eq(o.n, 2);
  ck_assert_uint_eq(o.count[0], 1);
}
END_TEST

static Suite *age_suite(void) {
  Suite *s = suite_create("table_age");
  TCase *tc = tcase_create("aging");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, pass_halves_every_count_in_order);
  tcase_add_test(tc, old_hot_row_becomes_coldest);
  tcase_add_test(tc, uses_during_a_pass_keep_order);
  tcase_add_test(tc, tick_starts_a_pass_per_period);
  tcase_add_test(tc, checkpoint_state_goes_on_identically);
  tcase_add_test(tc, clear_drops_the_aging);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return check_run(age_suite()); }
