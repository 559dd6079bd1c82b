/*
 * test_mlp.c -- Check tests for psd-train's math and data modules:
 * client/train/mlp.c (backward pass against finite differences, softmax and
 * cross-entropy sanity) and client/train/idx.c (a synthetic gzipped IDX
 * pair read back; corrupt files rejected with a reason).
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "check_main.h"
#include "../client/train/idx.h"
#include "../client/train/mlp.h"

/* ---- mlp: softmax and cross-entropy ------------------------------------ */

START_TEST(test_softmax_sums_to_one_and_is_stable) {
  /* Logits this large overflow expf() unless the maximum is subtracted. */
  float z[4] = {1000.0f, 999.0f, -1000.0f, 1000.0f};
  float p[4];
  mlp_softmax(z, p, 4);
  double sum = 0;
  for (int i = 0; i < 4; i++) {
    ck_assert(isfinite(p[i]));
    sum += p[i];
  }
  ck_assert_double_eq_tol(sum, 1.0, 1e-6);
  ck_assert_float_eq_tol(p[0], p[3], 1e-7f);
  /* p0 / p1 = e. */
  ck_assert_double_eq_tol(p[0] / p[1], exp(1.0), 1e-4);
  ck_assert_float_eq_tol(p[2], 0.0f, 1e-30f);
}
END_TEST

START_TEST(test_loss_uniform_and_extreme) {
  int sizes[2] = {3, 5};
  mlp m;
  ck_assert_int_eq(mlp_alloc(&m, sizes, 2, 4), 0);
  /* Zero weights and biases: uniform softmax, loss log(5). */
  float x[6] = {1, 2, 3, -1, 0.5f, 2};
  uint8_t y[2] = {0, 4};
  mlp_forward(&m, x, 2);
  int correct = -1;
  ck_assert_double_eq_tol(mlp_loss(&m, y, 2, &correct), log(5.0), 1e-6);
  /* A bias of 200 on class 2: the loss is ~200 for labels 0 and 4 (finite,
   * where exp-then-log would give inf), and 0 for label 2. */
  m.layer[0].b[2] = 200.0f;
  mlp_forward(&m, x, 2);
  double l = mlp_loss(&m, y, 2, &correct);
  ck_assert(isfinite(l));
  ck_assert_double_eq_tol(l, 200.0, 1e-3);
  ck_assert_int_eq(correct, 0);
  uint8_t y2[2] = {2, 2};
  ck_assert_double_eq_tol(mlp_loss(&m, y2, 2, &correct), 0.0, 1e-6);
  ck_assert_int_eq(correct, 2);
  mlp_free(&m);
}
END_TEST

START_TEST(test_parse_sizes) {
  int s[MLP_MAX_SIZES], n = 0;
  char err[256];
  ck_assert_int_eq(mlp_parse_sizes("784,256,128,10", s, MLP_MAX_SIZES, &n, err,
                                   sizeof err), 0);
  ck_assert_int_eq(n, 4);
  ck_assert_int_eq(s[0], 784);
  ck_assert_int_eq(s[3], 10);
  ck_assert_int_eq(mlp_parse_sizes("784", s, MLP_MAX_SIZES, &n, err,
                                   sizeof err), -1);
  ck_assert_int_eq(mlp_parse_sizes("784,,10", s, MLP_MAX_SIZES, &n, err,
                                   sizeof err), -1);
  ck_assert_int_eq(mlp_parse_sizes("784,0,10", s, MLP_MAX_SIZES, &n, err,
                                   sizeof err), -1);
  ck_assert_int_eq(mlp_parse_sizes("784,x", s, MLP_MAX_SIZES, &n, err,
                                   sizeof err), -1);
  ck_assert_ptr_nonnull(strstr(err, "x"));
}
END_TEST

/* ---- mlp: gradient check ------------------------------------------------ */

/* The ReLU pattern of every hidden unit for the current forward pass, so
 * that finite differences crossing a kink can be recognised and skipped
 * (the derivative does not exist there). */
static void relu_mask(const mlp *m, int n, unsigned char *mask) {
  size_t k = 0;
  for (int l = 0; l < m->nlayers - 1; l++)
    for (int i = 0; i < n * m->layer[l].out; i++)
      mask[k++] = m->act[l][i] > 0.0f;
}

static size_t mask_len(const mlp *m, int n) {
  size_t k = 0;
  for (int l = 0; l < m->nlayers - 1; l++) k += (size_t)n * m->layer[l].out;
  return k;
}

/* Central difference of the loss with respect to *p. Returns 0 if a ReLU
 * flipped between the two evaluations. */
static int numeric_grad(mlp *m, float *p, const float *x, const uint8_t *y,
                        int n, float h, double *g) {
  size_t ml = mask_len(m, n);
  unsigned char *m1 = malloc(ml + 1), *m2 = malloc(ml + 1);
  float saved = *p;
  *p = saved + h;
  mlp_forward(m, x, n);
  double lp = mlp_loss(m, y, n, NULL);
  relu_mask(m, n, m1);
  *p = saved - h;
  mlp_forward(m, x, n);
  double lm = mlp_loss(m, y, n, NULL);
  relu_mask(m, n, m2);
  *p = saved;
  /* The real step is the difference of the two floats actually stored. */
  double step = (double)(saved + h) - (double)(saved - h);
  *g = (lp - lm) / step;
  int ok = memcmp(m1, m2, ml) == 0;
  free(m1);
  free(m2);
  return ok;
}

static int done_calls[MLP_MAX_SIZES];
static int done_order;

static void on_layer_done(mlp *m, int l, void *arg) {
  (void)m;
  (void)arg;
  done_calls[l] = ++done_order;
}

static void gradient_check(const int *sizes, int nsizes, int n) {
  mlp m;
  ck_assert_int_eq(mlp_alloc(&m, sizes, nsizes, n), 0);
  mlp_init_random(&m, 42);
  /* Non-zero biases so their gradients are exercised too. */
  for (int l = 0; l < m.nlayers; l++)
    for (int o = 0; o < m.layer[l].out; o++)
      m.layer[l].b[o] = 0.1f * (float)((o % 3) - 1);
  float *x = malloc(sizeof(float) * (size_t)n * sizes[0]);
  uint8_t *y = malloc((size_t)n);
  for (int i = 0; i < n * sizes[0]; i++)
    x[i] = (float)sin(1.7 * i + 0.3) * 1.5f;
  for (int r = 0; r < n; r++) y[r] = (uint8_t)(r % sizes[nsizes - 1]);

  mlp_forward(&m, x, n);
  memset(done_calls, 0, sizeof done_calls);
  done_order = 0;
  mlp_backward(&m, x, y, n, on_layer_done, NULL);
  /* Layers are finished last to first, each exactly once. */
  for (int l = 0; l < m.nlayers; l++)
    ck_assert_int_eq(done_calls[l], m.nlayers - l);

  int checked = 0, skipped = 0;
  double worst = 0.0;
  for (int l = 0; l < m.nlayers; l++) {
    mlp_layer *L = &m.layer[l];
    int nw = L->in * L->out;
    for (int i = 0; i < nw + L->out; i++) {
      float *p = i < nw ? &L->w[i] : &L->b[i - nw];
      double analytic = i < nw ? L->gw[i] : L->gb[i - nw];
      double numeric;
      if (!numeric_grad(&m, p, x, y, n, 1e-2f, &numeric)) {
        skipped++;
        continue;
      }
      /* Relative error with a floor, so that gradients near zero are
       * compared absolutely (float forward passes carry ~1e-7 noise). */
      double denom = fmax(fabs(analytic) + fabs(numeric), 1e-3);
      double rel = fabs(analytic - numeric) / denom;
      if (rel > worst) worst = rel;
      ck_assert_msg(rel < 1e-2,
                    "layer %d param %d: analytic %.6g numeric %.6g (rel %.3g)",
                    l, i, analytic, numeric, rel);
      checked++;
    }
  }
  /* Kinks are rare; most parameters must actually have been compared. */
  ck_assert_int_gt(checked, 4 * skipped);
  free(x);
  free(y);
  mlp_free(&m);
}

START_TEST(test_gradient_small) {
  int sizes[3] = {5, 4, 3};
  gradient_check(sizes, 3, 6);
}
END_TEST

START_TEST(test_gradient_deeper) {
  int sizes[4] = {7, 6, 5, 4};
  gradient_check(sizes, 4, 9);
}
END_TEST

START_TEST(test_gradient_single_layer) {
  /* Softmax regression: no hidden layer, no ReLU. */
  int sizes[2] = {6, 3};
  gradient_check(sizes, 2, 5);
}
END_TEST

START_TEST(test_evaluate_chunks) {
  /* evaluate() over more rows than max_batch must agree with one pass. */
  int sizes[3] = {4, 5, 3};
  mlp a, b;
  ck_assert_int_eq(mlp_alloc(&a, sizes, 3, 3), 0);
  ck_assert_int_eq(mlp_alloc(&b, sizes, 3, 10), 0);
  mlp_init_random(&a, 7);
  mlp_init_random(&b, 7);
  float x[40];
  uint8_t y[10];
  for (int i = 0; i < 40; i++) x[i] = (float)cos(i * 0.9);
  for (int i = 0; i < 10; i++) y[i] = (uint8_t)(i % 3);
  double la, lb;
  double acc_a = mlp_evaluate(&a, x, y, 10, &la);
  double acc_b = mlp_evaluate(&b, x, y, 10, &lb);
  ck_assert_double_eq_tol(acc_a, acc_b, 1e-12);
  ck_assert_double_eq_tol(la, lb, 1e-5);
  mlp_free(&a);
  mlp_free(&b);
}
END_TEST

/* ---- idx ------------------------------------------------------------------ */

static char tmpdir[256];

static void tmpdir_setup(void) {
  const char *parent = getenv("PSD_TEST_TMPDIR");
  if (parent == NULL || parent[0] == '\0') parent = getenv("TMPDIR");
  if (parent == NULL || parent[0] == '\0') parent = "/tmp";
  snprintf(tmpdir, sizeof tmpdir, "%s/test_mlp.XXXXXX", parent);
  ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void tmpdir_teardown(void) {
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
}

/* Write bytes to dir/name through gzip (or plain when gz is 0). */
static void write_file(const char *name, const void *buf, size_t len, int gz) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", tmpdir, name);
  if (gz) {
    gzFile f = gzopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(gzwrite(f, buf, (unsigned)len), (int)len);
    ck_assert_int_eq(gzclose(f), Z_OK);
  } else {
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(buf, 1, len, f), len);
    fclose(f);
  }
}

/* An IDX pair of n images of 2x3 pixels: pixel j of image i = i*10 + j,
 * label of image i = i % 3. Returns the number of image bytes in buf. */
static size_t make_images(uint8_t *buf, int n) {
  uint8_t hdr[16] = {0, 0, 8, 3, 0, 0, 0, (uint8_t)n, 0, 0, 0, 2, 0, 0, 0, 3};
  memcpy(buf, hdr, 16);
  for (int i = 0; i < n; i++)
    for (int j = 0; j < 6; j++) buf[16 + i * 6 + j] = (uint8_t)(i * 10 + j);
  return 16 + (size_t)n * 6;
}

static size_t make_labels(uint8_t *buf, int n) {
  uint8_t hdr[8] = {0, 0, 8, 1, 0, 0, 0, (uint8_t)n};
  memcpy(buf, hdr, 8);
  for (int i = 0; i < n; i++) buf[8 + i] = (uint8_t)(i % 3);
  return 8 + (size_t)n;
}

static char *path_of(const char *name) {
  static char p[2][512];
  static int k;
  k ^= 1;
  snprintf(p[k], sizeof p[k], "%s/%s", tmpdir, name);
  return p[k];
}

START_TEST(test_idx_roundtrip) {
  uint8_t im[256], lb[64];
  write_file("train-images-idx3-ubyte.gz", im, make_images(im, 7), 1);
  write_file("train-labels-idx1-ubyte.gz", lb, make_labels(lb, 7), 1);
  char err[512] = "";
  idx_array a;
  ck_assert_msg(idx_read(path_of("train-images-idx3-ubyte.gz"), &a, 0, err,
                         sizeof err) == 0, "%s", err);
  ck_assert_int_eq(a.ndim, 3);
  ck_assert_uint_eq(a.dims[0], 7);
  ck_assert_uint_eq(a.item_size, 6);
  ck_assert_uint_eq(a.count, 7);
  ck_assert_uint_eq(a.data[6 * 4 + 5], 45);
  idx_free(&a);

  dataset ds;
  ck_assert_msg(dataset_load_split(&ds, tmpdir, "train", 0, 0, 1, err,
                                   sizeof err) == 0, "%s", err);
  ck_assert_int_eq(ds.n, 7);
  ck_assert_int_eq(ds.dim, 6);
  ck_assert_int_eq(ds.classes, 3);
  ck_assert_float_eq_tol(ds.x[3 * 6 + 2], 32.0f / 255.0f, 1e-7f);
  ck_assert_int_eq(ds.y[5], 2);
  /* Mean of all pixels (i*10+j over i<7, j<6) = 30 + 2.5 = 32.5. */
  ck_assert_double_eq_tol(ds.mean, 32.5 / 255.0, 1e-9);
  double mean = ds.mean, std = ds.std;
  dataset_free(&ds);

  /* Share 1 of 3 with a limit of 6: images 1 and 4, and the statistics
   * are those of the 6 images read, whatever the share. */
  ck_assert_msg(dataset_load_split(&ds, tmpdir, "train", 6, 1, 3, err,
                                   sizeof err) == 0, "%s", err);
  ck_assert_int_eq(ds.n, 2);
  ck_assert_float_eq_tol(ds.x[0], 10.0f / 255.0f, 1e-7f);
  ck_assert_float_eq_tol(ds.x[6], 40.0f / 255.0f, 1e-7f);
  ck_assert_int_eq(ds.y[1], 1);
  ck_assert_double_eq_tol(ds.mean, 27.5 / 255.0, 1e-9);
  (void)mean;
  dataset_standardize(&ds, ds.mean, std);
  ck_assert_float_eq_tol(ds.x[0], (float)((10.0 / 255.0 - ds.mean) / std),
                         1e-6f);
  dataset_free(&ds);
}
END_TEST

START_TEST(test_idx_plain_file) {
  /* gzread reads uncompressed files as they are. */
  uint8_t im[256], lb[64];
  write_file("t10k-images-idx3-ubyte", im, make_images(im, 4), 0);
  write_file("t10k-labels-idx1-ubyte", lb, make_labels(lb, 4), 0);
  char err[512] = "";
  dataset ds;
  ck_assert_msg(dataset_load_split(&ds, tmpdir, "t10k", 0, 0, 1, err,
                                   sizeof err) == 0, "%s", err);
  ck_assert_int_eq(ds.n, 4);
  dataset_free(&ds);
}
END_TEST

static void expect_rejected(const char *name, const char *needle) {
  char err[512] = "";
  idx_array a;
  ck_assert_int_eq(idx_read(path_of(name), &a, 0, err, sizeof err), -1);
  ck_assert_ptr_null(a.data);
  ck_assert_msg(strstr(err, needle) != NULL, "error \"%s\" lacks \"%s\"", err,
                needle);
  ck_assert_msg(strstr(err, name) != NULL, "error \"%s\" lacks the file", err);
}

START_TEST(test_idx_corrupt_rejected) {
  uint8_t im[256];
  size_t len = make_images(im, 7);

  write_file("short.gz", im, len - 5, 1);
  expect_rejected("short.gz", "truncated");

  uint8_t bad[256];
  memcpy(bad, im, len);
  bad[0] = 0x12;
  write_file("magic.gz", bad, len, 1);
  expect_rejected("magic.gz", "not an IDX file");

  memcpy(bad, im, len);
  bad[2] = 0x0d; /* float elements */
  write_file("type.gz", bad, len, 1);
  expect_rejected("type.gz", "not supported");

  memcpy(bad, im, len);
  bad[3] = 9;
  write_file("ndim.gz", bad, len, 1);
  expect_rejected("ndim.gz", "dimensions");

  memcpy(bad, im, len);
  bad[4] = 0xff; /* 4 billion items of 6 bytes */
  write_file("huge.gz", bad, len, 1);
  expect_rejected("huge.gz", "absurd");

  memcpy(bad, im, len);
  bad[len] = 1;
  write_file("trailing.gz", bad, len + 1, 1);
  expect_rejected("trailing.gz", "extra data");

  /* A gzip stream cut in the middle of its compressed data. */
  write_file("cut.gz", im, len, 1);
  FILE *f = fopen(path_of("cut.gz"), "rb");
  uint8_t raw[512];
  size_t rawlen = fread(raw, 1, sizeof raw, f);
  fclose(f);
  write_file("cut.gz", raw, rawlen / 2, 0);
  expect_rejected("cut.gz", "cut.gz");

  char err[512] = "";
  idx_array a;
  ck_assert_int_eq(idx_read(path_of("missing.gz"), &a, 0, err, sizeof err),
                   -1);
  ck_assert_ptr_nonnull(strstr(err, "No such file"));
}
END_TEST

START_TEST(test_dataset_mismatch_rejected) {
  uint8_t im[256], lb[64];
  write_file("train-images-idx3-ubyte.gz", im, make_images(im, 7), 1);
  write_file("train-labels-idx1-ubyte.gz", lb, make_labels(lb, 6), 1);
  char err[512] = "";
  dataset ds;
  ck_assert_int_eq(dataset_load_split(&ds, tmpdir, "train", 0, 0, 1, err,
                                      sizeof err), -1);
  ck_assert_msg(strstr(err, "7 images but") != NULL, "%s", err);
  ck_assert_ptr_null(ds.x);

  ck_assert_int_eq(dataset_load_split(&ds, tmpdir, "nosuch", 0, 0, 1, err,
                                      sizeof err), -1);
  ck_assert_msg(strstr(err, "nosuch-images-idx3-ubyte") != NULL, "%s", err);

  /* Labels file passed where images are expected: one dimension only. */
  ck_assert_int_eq(dataset_load(&ds, path_of("train-labels-idx1-ubyte.gz"),
                                path_of("train-labels-idx1-ubyte.gz"), 0, 0, 1,
                                err, sizeof err), -1);
  ck_assert_msg(strstr(err, "2 or more dimensions") != NULL, "%s", err);
}
END_TEST

static Suite *mlp_suite(void) {
  Suite *s = suite_create("mlp");
  TCase *t = tcase_create("softmax");
  tcase_add_test(t, test_softmax_sums_to_one_and_is_stable);
  tcase_add_test(t, test_loss_uniform_and_extreme);
  tcase_add_test(t, test_parse_sizes);
  suite_add_tcase(s, t);
  t = tcase_create("gradient");
  tcase_add_test(t, test_gradient_small);
  tcase_add_test(t, test_gradient_deeper);
  tcase_add_test(t, test_gradient_single_layer);
  tcase_add_test(t, test_evaluate_chunks);
  suite_add_tcase(s, t);
  t = tcase_create("idx");
  tcase_add_checked_fixture(t, tmpdir_setup, tmpdir_teardown);
  tcase_add_test(t, test_idx_roundtrip);
  tcase_add_test(t, test_idx_plain_file);
  tcase_add_test(t, test_idx_corrupt_rejected);
  tcase_add_test(t, test_dataset_mismatch_rejected);
  suite_add_tcase(s, t);
  return s;
}

int main(void) { return check_run(mlp_suite()); }
