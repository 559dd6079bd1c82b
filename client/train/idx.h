/*
 * idx.h -- reading IDX files (the MNIST / Fashion-MNIST format), gzipped or
 * not, and turning an images + labels pair into a float dataset.
 *
 * IDX: two zero bytes, an element type (0x08 = unsigned byte, the only one
 * read here), the number of dimensions, then each dimension as a big-endian
 * uint32, then the elements in row-major order.
 */
#ifndef PSD_TRAIN_IDX_H
#define PSD_TRAIN_IDX_H

#include <stddef.h>
#include <stdint.h>

#define IDX_MAX_DIMS 4

typedef struct {
  int ndim;
  uint32_t dims[IDX_MAX_DIMS]; /* dims[0] is the item count */
  size_t item_size;            /* product of dims[1..ndim) (1 for labels) */
  size_t count;                /* items actually read (<= dims[0]) */
  uint8_t *data;               /* count * item_size bytes */
} idx_array;

/* Read an unsigned-byte IDX file through zlib (gzread also reads plain
 * files). max_items > 0 reads only the first max_items items; 0 reads all.
 * Returns 0, or -1 with a sentence naming the file and the problem in err
 * (bad magic, unsupported type, absurd dimensions, truncated data, zlib
 * error). On failure *a holds nothing to free. */
int idx_read(const char *path, idx_array *a, size_t max_items, char *err,
             size_t errlen);
void idx_free(idx_array *a);

typedef struct {
  int n;         /* examples held (this share) */
  size_t total;  /* examples read from the files, before sharding */
  int dim;       /* features per example */
  int classes;   /* 1 + the largest label in the file(s) read */
  float *x;      /* [n, dim] */
  uint8_t *y;    /* [n] */
  /* Pixel mean and standard deviation (after scaling to [0,1]) over every
   * example read from the file, before any sharding: the same numbers on
   * every worker, so all of them standardize alike. */
  double mean, std;
} dataset;

/* Load images and labels, keeping the first `limit` examples of the files
 * (0: all) and, of those, the ones whose index i has i % nshards == shard
 * (a strided share; nshards = 1 keeps all). Pixels are scaled to [0, 1].
 * Checks that both files agree on the count and that images have at least
 * one dimension past the count. Returns 0, or -1 with a sentence in err. */
int dataset_load(dataset *ds, const char *images_path, const char *labels_path,
                 size_t limit, int shard, int nshards, char *err,
                 size_t errlen);

/* Load the Fashion-MNIST split "train" or "t10k" from dir, accepting the
 * files gzipped (NAME-idx3-ubyte.gz, as Debian's dataset-fashion-mnist
 * installs them) or not. Same contract as dataset_load. */
int dataset_load_split(dataset *ds, const char *dir, const char *split,
                       size_t limit, int shard, int nshards, char *err,
                       size_t errlen);

/* x = (x - mean) / std for every pixel. */
void dataset_standardize(dataset *ds, double mean, double std);
void dataset_free(dataset *ds);

#endif /* PSD_TRAIN_IDX_H */
