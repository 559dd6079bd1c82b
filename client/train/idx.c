/*
 * idx.c -- IDX files through zlib, and the images + labels dataset built
 * from a pair of them (see idx.h).
 */
#include "idx.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

/* No IDX file psd reads comes near this; a header claiming more is corrupt
 * and must not make us try to allocate it. */
#define IDX_MAX_BYTES ((uint64_t)1 << 33)

/* Read exactly len bytes, looping because gzread takes an unsigned int
 * length. Returns the number of bytes read (< len at end of file), or -1
 * on a zlib error. */
static int64_t gz_read_full(gzFile f, uint8_t *buf, size_t len) {
  size_t done = 0;
  while (done < len) {
    size_t want = len - done;
    if (want > (1u << 30)) want = 1u << 30;
    int r = gzread(f, buf + done, (unsigned)want);
    if (r < 0) return -1;
    if (r == 0) break;
    done += (size_t)r;
  }
  return (int64_t)done;
}

/* The message zlib holds for f, or the C library's for errno. */
static const char *gz_why(gzFile f) {
  int zerr = Z_OK;
  const char *msg = gzerror(f, &zerr);
  if (zerr == Z_ERRNO) return strerror(errno);
  return msg != NULL && *msg ? msg : "unexpected end of file";
}

int idx_read(const char *path, idx_array *a, size_t max_items, char *err,
             size_t errlen) {
  uint8_t hdr[4 + 4 * IDX_MAX_DIMS];
  memset(a, 0, sizeof *a);
  gzFile f = gzopen(path, "rb");
  if (f == NULL) {
    snprintf(err, errlen, "%s: %s", path,
             errno ? strerror(errno) : "cannot open");
    return -1;
  }
  int64_t r = gz_read_full(f, hdr, 4);
  if (r < 0) {
    snprintf(err, errlen, "%s: %s", path, gz_why(f));
    goto fail;
  }
  if (r < 4) {
    snprintf(err, errlen, "%s: too short to be an IDX file (%lld bytes)", path,
             (long long)r);
    goto fail;
  }
  if (hdr[0] != 0 || hdr[1] != 0) {
    snprintf(err, errlen,
             "%s: not an IDX file (magic %02x %02x %02x %02x, want 00 00 "
             "<type> <ndim>)",
             path, hdr[0], hdr[1], hdr[2], hdr[3]);
    goto fail;
  }
  if (hdr[2] != 0x08) {
    snprintf(err, errlen,
             "%s: element type 0x%02x is not supported (only 0x08, unsigned "
             "byte)",
             path, hdr[2]);
    goto fail;
  }
  a->ndim = hdr[3];
  if (a->ndim < 1 || a->ndim > IDX_MAX_DIMS) {
    snprintf(err, errlen, "%s: %d dimensions (want 1 to %d)", path, a->ndim,
             IDX_MAX_DIMS);
    goto fail;
  }
  r = gz_read_full(f, hdr + 4, 4 * (size_t)a->ndim);
  if (r != 4 * a->ndim) {
    snprintf(err, errlen, "%s: truncated header (%s)", path,
             r < 0 ? gz_why(f) : "unexpected end of file");
    goto fail;
  }
  uint64_t item = 1;
  for (int d = 0; d < a->ndim; d++) {
    const uint8_t *p = hdr + 4 + 4 * d;
    a->dims[d] = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
                 (uint32_t)p[2] << 8 | p[3];
    if (a->dims[d] == 0) {
      snprintf(err, errlen, "%s: dimension %d is zero", path, d);
      goto fail;
    }
    if (d > 0) item *= a->dims[d];
  }
  /* dims are < 2^32 and at most 3 multiply into item, so check each step
   * against the byte cap rather than trusting 64-bit headroom blindly. */
  if (item > IDX_MAX_BYTES || (uint64_t)a->dims[0] * item > IDX_MAX_BYTES) {
    snprintf(err, errlen, "%s: header claims an absurd size (%u items of %llu "
             "bytes)", path, a->dims[0], (unsigned long long)item);
    goto fail;
  }
  a->item_size = (size_t)item;
  a->count = a->dims[0];
  if (max_items > 0 && max_items < a->count) a->count = max_items;
  size_t bytes = a->count * a->item_size;
  a->data = malloc(bytes > 0 ? bytes : 1);
  if (a->data == NULL) {
    snprintf(err, errlen, "%s: out of memory for %zu bytes", path, bytes);
    goto fail;
  }
  r = gz_read_full(f, a->data, bytes);
  if (r < 0 || (size_t)r != bytes) {
    snprintf(err, errlen,
             "%s: truncated or corrupt: expected %zu bytes of data, got %lld "
             "(%s)",
             path, bytes, (long long)(r < 0 ? 0 : r),
             r < 0 ? gz_why(f) : "unexpected end of file");
    goto fail;
  }
  if (a->count == a->dims[0]) {
    /* The whole file was read: anything after the declared data means the
     * header and the contents disagree. */
    uint8_t extra;
    r = gz_read_full(f, &extra, 1);
    if (r != 0) {
      snprintf(err, errlen, "%s: %s after the %zu bytes the header declares",
               path, r < 0 ? gz_why(f) : "extra data", bytes);
      goto fail;
    }
  }
  gzclose(f);
  return 0;
fail:
  gzclose(f);
  free(a->data);
  memset(a, 0, sizeof *a);
  return -1;
}

void idx_free(idx_array *a) {
  free(a->data);
  memset(a, 0, sizeof *a);
}

int dataset_load(dataset *ds, const char *images_path, const char *labels_path,
                 size_t limit, int shard, int nshards, char *err,
                 size_t errlen) {
  idx_array im, lb;
  memset(ds, 0, sizeof *ds);
  if (nshards < 1 || shard < 0 || shard >= nshards) {
    snprintf(err, errlen, "share %d of %d does not exist", shard, nshards);
    return -1;
  }
  if (idx_read(images_path, &im, limit, err, errlen) != 0) return -1;
  if (idx_read(labels_path, &lb, limit, err, errlen) != 0) {
    idx_free(&im);
    return -1;
  }
  if (im.ndim < 2) {
    snprintf(err, errlen, "%s: images need 2 or more dimensions, found %d",
             images_path, im.ndim);
    goto fail;
  }
  if (lb.ndim != 1) {
    snprintf(err, errlen, "%s: labels need 1 dimension, found %d",
             labels_path, lb.ndim);
    goto fail;
  }
  if (im.dims[0] != lb.dims[0]) {
    snprintf(err, errlen, "%s holds %u images but %s holds %u labels",
             images_path, im.dims[0], labels_path, lb.dims[0]);
    goto fail;
  }
  if (im.item_size > (1u << 24)) {
    snprintf(err, errlen, "%s: images of %zu pixels are too large",
             images_path, im.item_size);
    goto fail;
  }
  size_t total = im.count;
  size_t mine = total / (size_t)nshards +
                ((size_t)shard < total % (size_t)nshards ? 1 : 0);
  if (mine > INT_MAX) {
    snprintf(err, errlen, "%zu examples are more than psd-train handles",
             mine);
    goto fail;
  }
  if (mine == 0) {
    snprintf(err, errlen, "no examples left for share %d of %d (%zu in all)",
             shard, nshards, total);
    goto fail;
  }
  ds->n = (int)mine;
  ds->total = total;
  ds->dim = (int)im.item_size;
  ds->x = malloc(mine * im.item_size * sizeof(float));
  ds->y = malloc(mine);
  if (ds->x == NULL || ds->y == NULL) {
    snprintf(err, errlen, "out of memory for %zu examples", mine);
    goto fail;
  }
  /* Statistics over everything read, so that they do not depend on the
   * share; accumulated per pixel value through a histogram, which is exact
   * and cheap. */
  uint64_t hist[256] = {0};
  size_t pixels = total * im.item_size;
  for (size_t i = 0; i < pixels; i++) hist[im.data[i]]++;
  double s1 = 0.0, s2 = 0.0;
  for (int v = 0; v < 256; v++) {
    double x = v / 255.0;
    s1 += (double)hist[v] * x;
    s2 += (double)hist[v] * x * x;
  }
  ds->mean = s1 / (double)pixels;
  double var = s2 / (double)pixels - ds->mean * ds->mean;
  ds->std = var > 0.0 ? sqrt(var) : 1.0;
  int maxlab = 0;
  for (size_t i = 0; i < total; i++)
    if (lb.data[i] > maxlab) maxlab = lb.data[i];
  ds->classes = maxlab + 1;
  size_t k = 0;
  for (size_t i = (size_t)shard; i < total; i += (size_t)nshards, k++) {
    const uint8_t *src = im.data + i * im.item_size;
    float *dst = ds->x + k * im.item_size;
    for (size_t j = 0; j < im.item_size; j++) dst[j] = src[j] * (1.0f / 255.0f);
    ds->y[k] = lb.data[i];
  }
  idx_free(&im);
  idx_free(&lb);
  return 0;
fail:
  idx_free(&im);
  idx_free(&lb);
  dataset_free(ds);
  return -1;
}

int dataset_load_split(dataset *ds, const char *dir, const char *split,
                       size_t limit, int shard, int nshards, char *err,
                       size_t errlen) {
  char im[4096], lb[4096];
  FILE *probe;
  snprintf(im, sizeof im, "%s/%s-images-idx3-ubyte.gz", dir, split);
  snprintf(lb, sizeof lb, "%s/%s-labels-idx1-ubyte.gz", dir, split);
  /* Fall back to the unpacked names when the gzipped images are absent
   * (gzread reads an uncompressed file as is). */
  if ((probe = fopen(im, "rb")) != NULL) {
    fclose(probe);
  } else {
    snprintf(im, sizeof im, "%s/%s-images-idx3-ubyte", dir, split);
    snprintf(lb, sizeof lb, "%s/%s-labels-idx1-ubyte", dir, split);
    if ((probe = fopen(im, "rb")) == NULL) {
      snprintf(err, errlen,
               "no %s-images-idx3-ubyte[.gz] in %s (install "
               "dataset-fashion-mnist or pass --data DIR)",
               split, dir);
      return -1;
    }
    fclose(probe);
  }
  return dataset_load(ds, im, lb, limit, shard, nshards, err, errlen);
}

void dataset_standardize(dataset *ds, double mean, double std) {
  float m = (float)mean, inv = (float)(1.0 / std);
  size_t cnt = (size_t)ds->n * (size_t)ds->dim;
  for (size_t i = 0; i < cnt; i++) ds->x[i] = (ds->x[i] - m) * inv;
}

void dataset_free(dataset *ds) {
  free(ds->x);
  free(ds->y);
  memset(ds, 0, sizeof *ds);
}
