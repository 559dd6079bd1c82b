/*
 * mlp.c -- forward and backward passes of a ReLU MLP with a softmax
 * cross-entropy output, on top of CBLAS (see mlp.h for the layout).
 *
 * Every matrix product goes through cblas_sgemm/cblas_sgemv: the loops
 * written here are only element-wise (bias broadcast, ReLU, softmax).
 */
#include "mlp.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int mlp_parse_sizes(const char *s, int *sizes, int max, int *n, char *err,
                    size_t errlen) {
  int k = 0;
  const char *p = s;
  if (s == NULL || *s == '\0') {
    snprintf(err, errlen, "empty layer list");
    return -1;
  }
  for (;;) {
    char *end;
    errno = 0;
    long v = strtol(p, &end, 10);
    if (end == p || errno != 0 || v < 1 || v > (1L << 20)) {
      snprintf(err, errlen,
               "bad layer size at \"%s\" (want integers in [1, %ld] "
               "separated by commas, e.g. 784,256,128,10)",
               p, 1L << 20);
      return -1;
    }
    if (k == max) {
      snprintf(err, errlen, "too many layers (at most %d sizes)", max);
      return -1;
    }
    sizes[k++] = (int)v;
    if (*end == '\0') break;
    if (*end != ',') {
      snprintf(err, errlen, "unexpected '%c' in layer list \"%s\"", *end, s);
      return -1;
    }
    p = end + 1;
  }
  if (k < 2) {
    snprintf(err, errlen,
             "a network needs at least an input and an output size, got \"%s\"",
             s);
    return -1;
  }
  *n = k;
  return 0;
}

int mlp_alloc(mlp *m, const int *sizes, int nsizes, int max_batch) {
  memset(m, 0, sizeof *m);
  if (nsizes < 2 || nsizes > MLP_MAX_SIZES || max_batch < 1) return -1;
  int widest = 0;
  for (int i = 0; i < nsizes; i++) {
    if (sizes[i] < 1) return -1;
    if (sizes[i] > widest) widest = sizes[i];
  }
  m->nlayers = nsizes - 1;
  m->max_batch = max_batch;
  m->layer = calloc((size_t)m->nlayers, sizeof *m->layer);
  m->act = calloc((size_t)m->nlayers, sizeof *m->act);
  if (m->layer == NULL || m->act == NULL) goto fail;
  for (int l = 0; l < m->nlayers; l++) {
    mlp_layer *L = &m->layer[l];
    size_t nw = (size_t)sizes[l] * (size_t)sizes[l + 1];
    L->in = sizes[l];
    L->out = sizes[l + 1];
    L->w = calloc(nw, sizeof(float));
    L->gw = calloc(nw, sizeof(float));
    L->b = calloc((size_t)L->out, sizeof(float));
    L->gb = calloc((size_t)L->out, sizeof(float));
    m->act[l] = calloc((size_t)max_batch * (size_t)L->out, sizeof(float));
    if (!L->w || !L->gw || !L->b || !L->gb || !m->act[l]) goto fail;
  }
  for (int i = 0; i < 2; i++) {
    m->delta[i] = calloc((size_t)max_batch * (size_t)widest, sizeof(float));
    if (m->delta[i] == NULL) goto fail;
  }
  m->ones = malloc((size_t)max_batch * sizeof(float));
  if (m->ones == NULL) goto fail;
  for (int i = 0; i < max_batch; i++) m->ones[i] = 1.0f;
  return 0;
fail:
  mlp_free(m);
  return -1;
}

void mlp_free(mlp *m) {
  if (m->layer != NULL) {
    for (int l = 0; l < m->nlayers; l++) {
      free(m->layer[l].w);
      free(m->layer[l].gw);
      free(m->layer[l].b);
      free(m->layer[l].gb);
    }
  }
  if (m->act != NULL) {
    for (int l = 0; l < m->nlayers; l++) free(m->act[l]);
  }
  free(m->layer);
  free(m->act);
  free(m->delta[0]);
  free(m->delta[1]);
  free(m->ones);
  memset(m, 0, sizeof *m);
}

/* splitmix64: small, seedable, and good enough to draw test weights. */
static uint64_t splitmix64(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/* A uniform double in (0, 1): never 0, so that log() below is finite. */
static double unit_open(uint64_t *s) {
  return ((double)(splitmix64(s) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

void mlp_init_random(mlp *m, uint64_t seed) {
  uint64_t s = seed;
  for (int l = 0; l < m->nlayers; l++) {
    mlp_layer *L = &m->layer[l];
    double sigma = sqrt(2.0 / L->in);
    size_t nw = (size_t)L->in * (size_t)L->out;
    for (size_t i = 0; i < nw; i++) {
      /* Box-Muller; one of the pair is enough here. */
      double u1 = unit_open(&s), u2 = unit_open(&s);
      L->w[i] = (float)(sigma * sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
    }
    memset(L->b, 0, (size_t)L->out * sizeof(float));
  }
}

size_t mlp_num_params(const mlp *m) {
  size_t n = 0;
  for (int l = 0; l < m->nlayers; l++)
    n += (size_t)m->layer[l].out * ((size_t)m->layer[l].in + 1);
  return n;
}

const float *mlp_logits(const mlp *m) { return m->act[m->nlayers - 1]; }

int mlp_classes(const mlp *m) { return m->layer[m->nlayers - 1].out; }

void mlp_forward(mlp *m, const float *x, int n) {
  const float *in = x;
  for (int l = 0; l < m->nlayers; l++) {
    mlp_layer *L = &m->layer[l];
    float *z = m->act[l];
    /* Start every row at the bias so the GEMM can accumulate onto it
     * (beta = 1) instead of needing a second pass to add it. */
    for (int r = 0; r < n; r++)
      memcpy(z + (size_t)r * L->out, L->b, (size_t)L->out * sizeof(float));
    /* Z[n, out] += X[n, in] * W[out, in]^T */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, L->out, L->in,
                1.0f, in, L->in, L->w, L->in, 1.0f, z, L->out);
    if (l < m->nlayers - 1) {
      size_t cnt = (size_t)n * (size_t)L->out;
      for (size_t i = 0; i < cnt; i++)
        if (!(z[i] > 0.0f)) z[i] = 0.0f;
    }
    in = z;
  }
}

void mlp_softmax(const float *z, float *p, int k) {
  float mx = z[0];
  for (int j = 1; j < k; j++)
    if (z[j] > mx) mx = z[j];
  double sum = 0.0;
  for (int j = 0; j < k; j++) {
    float e = expf(z[j] - mx);
    p[j] = e;
    sum += e;
  }
  /* sum >= 1 because the largest logit contributes exp(0). */
  float inv = (float)(1.0 / sum);
  for (int j = 0; j < k; j++) p[j] *= inv;
}

double mlp_loss(const mlp *m, const uint8_t *labels, int n, int *correct) {
  const float *z = mlp_logits(m);
  int k = mlp_classes(m);
  double total = 0.0;
  int ok = 0;
  for (int r = 0; r < n; r++) {
    const float *row = z + (size_t)r * k;
    int arg = 0;
    for (int j = 1; j < k; j++)
      if (row[j] > row[arg]) arg = j;
    double mx = row[arg], sum = 0.0;
    for (int j = 0; j < k; j++) sum += exp((double)row[j] - mx);
    total += log(sum) + mx - (double)row[labels[r]];
    if (arg == labels[r]) ok++;
  }
  if (correct != NULL) *correct = ok;
  return n > 0 ? total / n : 0.0;
}

void mlp_backward(mlp *m, const float *x, const uint8_t *labels, int n,
                  mlp_layer_done_fn done, void *arg) {
  mlp_backward_dx(m, x, labels, n, NULL, done, arg);
}

void mlp_backward_dx(mlp *m, const float *x, const uint8_t *labels, int n,
                     float *dx, mlp_layer_done_fn done, void *arg) {
  int last = m->nlayers - 1;
  int k = mlp_classes(m);
  float *dz = m->delta[0];
  /* Output layer: d(mean CE)/dz = (softmax(z) - onehot(y)) / n. */
  const float *z = mlp_logits(m);
  float inv_n = 1.0f / (float)n;
  for (int r = 0; r < n; r++) {
    float *d = dz + (size_t)r * k;
    mlp_softmax(z + (size_t)r * k, d, k);
    d[labels[r]] -= 1.0f;
    for (int j = 0; j < k; j++) d[j] *= inv_n;
  }
  for (int l = last; l >= 0; l--) {
    mlp_layer *L = &m->layer[l];
    const float *in = l > 0 ? m->act[l - 1] : x;
    /* gW[out, in] = dZ[n, out]^T * X[n, in] */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, L->out, L->in, n,
                1.0f, dz, L->out, in, L->in, 0.0f, L->gw, L->in);
    /* gb[out] = dZ^T * ones: the column sums of dZ. */
    cblas_sgemv(CblasRowMajor, CblasTrans, n, L->out, 1.0f, dz, L->out,
                m->ones, 1, 0.0f, L->gb, 1);
    float *next = NULL;
    if (l > 0) {
      /* dA[n, in] = dZ[n, out] * W[out, in], then through the ReLU: its
       * derivative is 1 where the stored (post-ReLU) activation is > 0. */
      next = m->delta[(last - l + 1) & 1];
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, L->in, L->out,
                  1.0f, dz, L->out, L->w, L->in, 0.0f, next, L->in);
      size_t cnt = (size_t)n * (size_t)L->in;
      for (size_t i = 0; i < cnt; i++)
        if (!(in[i] > 0.0f)) next[i] = 0.0f;
    } else if (dx != NULL) {
      /* dX[n, in] = dZ[n, out] * W[out, in]: no ReLU below the input. */
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, L->in, L->out,
                  1.0f, dz, L->out, L->w, L->in, 0.0f, dx, L->in);
    }
    /* Layer l's weights have been read for the last time in this pass. */
    if (done != NULL) done(m, l, arg);
    dz = next;
  }
}

double mlp_evaluate(mlp *m, const float *x, const uint8_t *labels, int count,
                    double *loss) {
  int in = m->layer[0].in;
  long ok = 0;
  double total = 0.0;
  for (int off = 0; off < count; off += m->max_batch) {
    int n = count - off < m->max_batch ? count - off : m->max_batch;
    int c = 0;
    mlp_forward(m, x + (size_t)off * in, n);
    total += mlp_loss(m, labels + off, n, &c) * n;
    ok += c;
  }
  if (loss != NULL) *loss = count > 0 ? total / count : 0.0;
  return count > 0 ? (double)ok / count : 0.0;
}
