/*
 * test_sections.c -- Check tests for psd-train's sections model, the parts
 * that know nothing about psd: client/train/sections.c (an index read into
 * keys, labels and the split), client/train/bag.c (distinct rows, means,
 * their gradient) and the whole model's gradient (bag, then mlp.c's dense
 * softmax layer through mlp_backward_dx) against finite differences.
 *
 * The expected keys and CRC-32 figures were computed apart from this code
 * (Python's zlib.crc32, FNV-1a and SplitMix64 written out), so a change to
 * the features, which would change the workload, fails here.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "../client/train/bag.h"
#include "../client/train/mlp.h"
#include "../client/train/sections.h"
#include "check_main.h"

/* Four stanzas as apt-cache dumpavail prints them: a folded Depends with
 * versions, an architecture qualifier and an alternative; an archive area
 * before a section; a stanza without a Section (skipped); a test-split
 * package (CRC-32 of "bash" is 3188032220, 0 mod 10). */
static const char INDEX[] =
    "Package: python3-foo\n"
    "Version: 1.0-1\n"
    "Depends: python3 (>= 3.11~), python3:any, libc6 (>= 2.34) | libc6-compat,\n"
    " libbar1\n"
    "Description: Foo bindings, for Python 3\n"
    " The long description is not a feature.\n"
    "Description-md5: 0123\n"
    "Section: python\n"
    "\n"
    "Package: libbar1\n"
    "Section: contrib/libs\n"
    "Description: the Bar library\n"
    "\n"
    "Package: nosection\n"
    "Description: no section here\n"
    "\n"
    "Package: bash\n"
    "Description: GNU Bourne Again SHell\n"
    "Section: shells\n";

static int read_index(const char *text, size_t limit, sections_data *d, char *err,
                      size_t errlen) {
  FILE *f = fmemopen((void *)text, strlen(text), "r");
  ck_assert_ptr_nonnull(f);
  int rc = sections_read(f, limit, 20, d, err, errlen);
  fclose(f);
  return rc;
}

static uint64_t K(char kind, const char *tok) {
  return sections_key(kind, tok, strlen(tok), 20);
}

static void assert_keys(const sections_data *d, size_t pkg, const uint64_t *want,
                        size_t n) {
  ck_assert_uint_eq(d->off[pkg + 1] - d->off[pkg], n);
  for (size_t i = 0; i < n; i++)
    ck_assert_msg(d->keys[d->off[pkg] + i] == want[i], "package %zu key %zu: %llu, want %llu",
                  pkg, i, (unsigned long long)d->keys[d->off[pkg] + i],
                  (unsigned long long)want[i]);
}

START_TEST(test_key_pinned) {
  /* Values from an independent implementation: a change of the hash would
   * silently change every figure of the workload. */
  ck_assert_uint_eq(sections_key('w', "python", 6, 20), 333474);
  ck_assert_uint_eq(sections_key('d', "python", 6, 20), 736215);
  ck_assert_uint_eq(sections_key('n', "python3", 7, 40), 308469418194ULL);
  ck_assert(sections_is_test("bash", 4));
  ck_assert(!sections_is_test("python3-foo", 11));
  ck_assert(!sections_is_test("libbar1", 7));
}
END_TEST

START_TEST(test_read_features_labels_split) {
  sections_data d;
  char err[256];
  ck_assert_int_eq(read_index(INDEX, 0, &d, err, sizeof err), 0);
  ck_assert_uint_eq(d.n, 3);
  ck_assert_uint_eq(d.skipped, 1);
  ck_assert_int_eq(d.nclasses, 3);
  /* Labels in byte order of the names; the area is cut off. */
  ck_assert_str_eq(d.classes[0], "libs");
  ck_assert_str_eq(d.classes[1], "python");
  ck_assert_str_eq(d.classes[2], "shells");
  ck_assert_int_eq(d.label[0], 1);
  ck_assert_int_eq(d.label[1], 0);
  ck_assert_int_eq(d.label[2], 2);
  ck_assert_uint_eq(d.ntrain, 2);
  ck_assert_uint_eq(d.ntest, 1);
  ck_assert_uint_eq(d.train[0], 0);
  ck_assert_uint_eq(d.train[1], 1);
  ck_assert_uint_eq(d.test[0], 2);

  const uint64_t foo[] = {
      K('n', "python3"), K('n', "foo"), K('p', "python3"), K('s', "foo"),
      K('w', "foo"), K('w', "bindings"), K('b', "foo bindings"), K('w', "for"),
      K('b', "bindings for"), K('w', "python"), K('b', "for python"), K('w', "3"),
      K('b', "python 3"), K('d', "python3"), K('d', "python3"), K('d', "libc6"),
      K('d', "libc6-compat"), K('d', "libbar1")};
  assert_keys(&d, 0, foo, sizeof foo / sizeof foo[0]);
  const uint64_t bar[] = {K('n', "libbar1"), K('p', "libbar1"), K('s', "libbar1"),
                          K('w', "the"), K('w', "bar"), K('b', "the bar"),
                          K('w', "library"), K('b', "bar library")};
  assert_keys(&d, 1, bar, sizeof bar / sizeof bar[0]);
  /* 18 + 8 keys, d:python3 twice. */
  ck_assert_uint_eq(sections_distinct_train_keys(&d), 17 + 8);
  sections_free(&d);
}
END_TEST

START_TEST(test_read_limit_and_errors) {
  sections_data d;
  char err[256];
  ck_assert_int_eq(read_index(INDEX, 2, &d, err, sizeof err), 0);
  ck_assert_uint_eq(d.n, 2);
  ck_assert_int_eq(d.nclasses, 2);
  sections_free(&d);

  ck_assert_int_eq(read_index("Package: x\n\n", 0, &d, err, sizeof err), -1);
  ck_assert_msg(strstr(err, "no package") != NULL, "%s", err);
  FILE *f = fmemopen((void *)INDEX, strlen(INDEX), "r");
  ck_assert_int_eq(sections_read(f, 0, 7, &d, err, sizeof err), -1);
  ck_assert_msg(strstr(err, "rows_log2") != NULL, "%s", err);
  fclose(f);
  ck_assert_int_eq(sections_load("/nonexistent/index", 0, 20, &d, err, sizeof err), -1);
  ck_assert_msg(strstr(err, "/nonexistent/index") != NULL, "%s", err);
}
END_TEST

/* ---- the bag ------------------------------------------------------------ */

START_TEST(test_bag_gather_mean_backward) {
  /* Three examples over keys 7, 9, 7, 4 / 9 / (none). */
  const uint64_t keys[] = {7, 9, 7, 4, 9};
  const size_t off[] = {0, 4, 5, 5};
  const size_t ex[] = {0, 1, 2};
  bag b;
  ck_assert_int_eq(bag_alloc(&b, 2, 3, 5), 0);
  ck_assert_int_eq(bag_gather(&b, keys, off, ex, 3), 0);
  ck_assert_uint_eq(b.nuniq, 3);
  ck_assert_uint_eq(b.uniq[0], 7);
  ck_assert_uint_eq(b.uniq[1], 9);
  ck_assert_uint_eq(b.uniq[2], 4);
  const float rows[] = {1, 2, 10, 20, 100, 200}; /* 7, 9, 4 */
  memcpy(b.rows, rows, sizeof rows);
  float x[6];
  bag_mean(&b, x);
  ck_assert_float_eq(x[0], (1 + 10 + 1 + 100) / 4.0f);
  ck_assert_float_eq(x[1], (2 + 20 + 2 + 200) / 4.0f);
  ck_assert_float_eq(x[2], 10);
  ck_assert_float_eq(x[3], 20);
  ck_assert_float_eq(x[4], 0);
  ck_assert_float_eq(x[5], 0);
  const float dx[] = {4, 8, 1, 2, 5, 5};
  bag_backward(&b, dx);
  /* Key 7 twice in example 0 (2 * dx0 / 4), key 9 once in 0 and in 1. */
  ck_assert_float_eq(b.grads[0], 2);
  ck_assert_float_eq(b.grads[1], 4);
  ck_assert_float_eq(b.grads[2], 1 + 1);
  ck_assert_float_eq(b.grads[3], 2 + 2);
  ck_assert_float_eq(b.grads[4], 1);
  ck_assert_float_eq(b.grads[5], 2);

  /* The next batch forgets the last one's keys. */
  const size_t ex2[] = {1};
  ck_assert_int_eq(bag_gather(&b, keys, off, ex2, 1), 0);
  ck_assert_uint_eq(b.nuniq, 1);
  ck_assert_uint_eq(b.uniq[0], 9);
  /* Over capacity: refused. */
  const size_t ex4[] = {0, 0};
  ck_assert_int_eq(bag_gather(&b, keys, off, ex4, 2), -1);
  bag_free(&b);
}
END_TEST

START_TEST(test_bag_many_batches_consistent) {
  /* Batches over colliding slots, each checked against a linear scan:
   * emptying the table between batches must leave no stale entry. */
  enum { N = 300, PER = 5 };
  uint64_t keys[N * PER];
  size_t off[N + 1], ex[N];
  for (int i = 0; i < N * PER; i++) keys[i] = (uint64_t)((i * 37) % 211) << 20;
  for (int i = 0; i <= N; i++) off[i] = (size_t)i * PER;
  bag b;
  ck_assert_int_eq(bag_alloc(&b, 1, 16, 16 * PER), 0);
  for (int start = 0; start + 16 <= N; start += 7) {
    for (int r = 0; r < 16; r++) ex[r] = (size_t)((start + r * 13) % N);
    ck_assert_int_eq(bag_gather(&b, keys, off, ex, 16), 0);
    size_t distinct = 0;
    for (int r = 0; r < 16; r++)
      for (size_t j = off[ex[r]]; j < off[ex[r] + 1]; j++) {
        int seen = 0;
        for (int q = 0; q <= r && !seen; q++)
          for (size_t i = off[ex[q]]; i < (q < r ? off[ex[q] + 1] : j); i++)
            if (keys[i] == keys[j]) seen = 1;
        distinct += !seen;
        ck_assert_uint_eq(b.uniq[b.occ[b.start[r] + (j - off[ex[r]])]], keys[j]);
      }
    ck_assert_uint_eq(b.nuniq, distinct);
  }
  bag_free(&b);
}
END_TEST

/* ---- the whole model's gradient ----------------------------------------- */

static double model_loss(bag *b, mlp *m, float *x, const uint8_t *y) {
  bag_mean(b, x);
  mlp_forward(m, x, b->n);
  return mlp_loss(m, y, b->n, NULL);
}

START_TEST(test_model_gradient_finite_differences) {
  enum { DIM = 4, CLASSES = 3, N = 3 };
  const uint64_t keys[] = {1, 2, 3, 2, 5, 1, 1, 6};
  const size_t off[] = {0, 3, 5, 8};
  const size_t ex[] = {0, 1, 2};
  const uint8_t y[N] = {2, 0, 1};
  int sizes[2] = {DIM, CLASSES};
  mlp m;
  bag b;
  ck_assert_int_eq(mlp_alloc(&m, sizes, 2, N), 0);
  mlp_init_random(&m, 7);
  ck_assert_int_eq(bag_alloc(&b, DIM, N, 8), 0);
  ck_assert_int_eq(bag_gather(&b, keys, off, ex, N), 0);
  for (size_t i = 0; i < b.nuniq * DIM; i++) b.rows[i] = (float)sin(0.9 * i + 0.2);
  float x[N * DIM], dx[N * DIM];
  model_loss(&b, &m, x, y);
  mlp_backward_dx(&m, x, y, N, dx, NULL, NULL);
  bag_backward(&b, dx);
  for (size_t i = 0; i < b.nuniq * DIM; i++) {
    float saved = b.rows[i];
    b.rows[i] = saved + 1e-2f;
    double lp = model_loss(&b, &m, x, y);
    b.rows[i] = saved - 1e-2f;
    double lm = model_loss(&b, &m, x, y);
    b.rows[i] = saved;
    double step = (double)(saved + 1e-2f) - (double)(saved - 1e-2f);
    double numeric = (lp - lm) / step, analytic = b.grads[i];
    double rel = fabs(analytic - numeric) / fmax(fabs(analytic) + fabs(numeric), 1e-3);
    ck_assert_msg(rel < 1e-2, "row value %zu: analytic %.6g numeric %.6g", i, analytic,
                  numeric);
  }
  bag_free(&b);
  mlp_free(&m);
}
END_TEST

static Suite *sections_suite(void) {
  Suite *s = suite_create("sections");
  TCase *t = tcase_create("index");
  tcase_add_test(t, test_key_pinned);
  tcase_add_test(t, test_read_features_labels_split);
  tcase_add_test(t, test_read_limit_and_errors);
  suite_add_tcase(s, t);
  t = tcase_create("bag");
  tcase_add_test(t, test_bag_gather_mean_backward);
  tcase_add_test(t, test_bag_many_batches_consistent);
  tcase_add_test(t, test_model_gradient_finite_differences);
  suite_add_tcase(s, t);
  return s;
}

int main(void) { return check_run(sections_suite()); }
