/*
 * bag.h -- an embedding bag for psd-train --model sections: every example
 * is a list of row keys of an embedding table, and its input to the dense
 * layers is the mean of those rows (fastText's, and PyTorch's
 * nn.EmbeddingBag(mode="mean")).
 *
 * This module knows nothing about psd. Per minibatch it lists the distinct
 * keys the examples use (the rows to fetch, in first-seen order, so the
 * list is the same on every run), takes the rows' values from the caller,
 * computes the means, and turns the gradient with respect to the means into
 * one gradient per distinct row (a row used twice gets both shares).
 */
#ifndef PSD_TRAIN_BAG_H
#define PSD_TRAIN_BAG_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
  int dim;
  size_t max_keys;   /* key occurrences a batch may hold (capacity) */
  /* The batch's distinct keys, in first-seen order, and for each of them
   * dim values (filled by the caller) and dim gradients (bag_backward). */
  size_t nuniq;
  uint64_t *uniq;    /* [max_keys] */
  float *rows;       /* [max_keys, dim] */
  float *grads;      /* [max_keys, dim] */
  /* The batch's examples: example r's occurrences are occ[start[r] ..
   * start[r+1]), each the index of its key in uniq. */
  int n;
  size_t *start;     /* [max_batch + 1] */
  uint32_t *occ;     /* [max_keys] */
  int max_batch;
  /* Open addressing from key to its index in uniq, cleared per batch by
   * walking uniq (never the whole table). */
  size_t cap;        /* a power of two >= 2 * max_keys */
  uint64_t *slot_key;
  uint32_t *slot_val; /* index + 1; 0 is empty */
  size_t *where;     /* [max_keys] the slot of uniq[i] */
} bag;

/* Capacity for batches of up to max_batch examples holding up to max_keys
 * key occurrences in all. Returns 0, or -1 when memory runs out (then *b
 * needs no bag_free). */
int bag_alloc(bag *b, int dim, int max_batch, size_t max_keys);
void bag_free(bag *b);

/* Start a batch of n examples: example r's keys are keys[off[ex[r]] ..
 * off[ex[r]+1]). Lists the distinct keys in b->uniq[0..b->nuniq). Returns 0,
 * or -1 when n exceeds max_batch or the occurrences exceed max_keys. */
int bag_gather(bag *b, const uint64_t *keys, const size_t *off,
               const size_t *ex, int n);

/* x[r, :] = the mean of example r's rows (zeros for an example with no
 * key), from b->rows as the caller filled them for b->uniq. */
void bag_mean(const bag *b, float *x);

/* From dx[n, dim], the gradient of the loss with respect to the means,
 * fill b->grads[0..nuniq, dim]: each row's gradient is the sum over its
 * occurrences of dx of that example divided by the example's key count. */
void bag_backward(bag *b, const float *dx);

#endif /* PSD_TRAIN_BAG_H */
