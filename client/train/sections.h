/*
 * sections.h -- the Debian package index as a labelled text corpus: which
 * Section a package belongs to, from hashed features of its name, its short
 * description and what it depends on (psd-train --model sections).
 *
 * This module knows nothing about psd. It reads the index in the format
 * `apt-cache dumpavail` prints (RFC 822-style stanzas separated by blank
 * lines), turns every package into a bag of feature keys and a label, and
 * splits train from test. Everything is a pure function of the index's
 * bytes: the same file gives the same keys, labels and split on any machine.
 *
 * Features of a package (each hashed with its kind, so that the word "perl"
 * in a description and the dependency "perl" are different features):
 *   - the tokens of its name, split at '-', '.' and '+' ("python3-numpy":
 *     "python3", "numpy"), and the name's first and last token again as
 *     features of their own (a name's prefix and suffix carry its kind:
 *     "lib...", "...-dev", "...-doc");
 *   - the words of the short Description (lowercased, split at anything
 *     that is not a letter or a digit) and the bigrams of adjacent words;
 *   - the package names in Depends (every alternative, without versions or
 *     architecture qualifiers).
 * A feature's key is FNV-1a 64 of (kind, token), mixed by the SplitMix64
 * finalizer and cut to `rows_log2` bits: keys are rows of an embedding
 * table of 2^rows_log2 rows. Collisions are the hashing trick's, accepted.
 *
 * Labels: the Section field with any archive area cut off ("contrib/net" is
 * "net"), numbered in the byte order of the names found. Test split: the
 * packages whose name's CRC-32 (zlib's) is 0 mod 10; the rest train.
 */
#ifndef PSD_TRAIN_SECTIONS_H
#define PSD_TRAIN_SECTIONS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Labels are uint8_t (as mlp.h takes them): at most 256 sections. */
#define SECTIONS_MAX_CLASSES 256

typedef struct {
  size_t n;          /* packages kept */
  size_t ntrain;     /* of which in the training split */
  size_t ntest;      /* and in the test split */
  size_t skipped;    /* stanzas without a Package or a Section */
  int rows_log2;     /* keys are below 2^rows_log2 */
  /* Package i's keys are keys[off[i] .. off[i+1]), in the order listed
   * above (name, description words, bigrams, depends). */
  size_t *off;       /* [n + 1] */
  uint64_t *keys;    /* [off[n]] */
  uint8_t *label;    /* [n] */
  uint8_t *is_test;  /* [n] */
  size_t *train;     /* [ntrain] the training packages' indices, in index order */
  size_t *test;      /* [ntest] */
  int nclasses;
  char *classes[SECTIONS_MAX_CLASSES]; /* label -> section name */
} sections_data;

/* Read an index from f (dumpavail format) and extract every package's
 * features. limit > 0 keeps only the first `limit` packages (the rest of f
 * is still read, so that a pipe's writer finishes normally). rows_log2 in
 * [8, 40]. Returns 0, or -1 with a sentence in err (out of memory, a read
 * error, more than SECTIONS_MAX_CLASSES sections, no package at all). On
 * failure *d holds nothing to free. */
int sections_read(FILE *f, size_t limit, int rows_log2, sections_data *d,
                  char *err, size_t errlen);

/* Read the index from path, or, when path is NULL, from the output of
 * `apt-cache dumpavail` (the machine's own index, which `apt-get update`
 * fills). Same contract as sections_read; an empty index is an error whose
 * sentence says to run apt-get update. */
int sections_load(const char *path, size_t limit, int rows_log2,
                  sections_data *d, char *err, size_t errlen);

void sections_free(sections_data *d);

/* The key of one feature: kind is a small tag ('n' name token, 'p' name
 * prefix, 's' name suffix, 'w' word, 'b' bigram, 'd' dependency), the
 * token its bytes. Exposed for tests. */
uint64_t sections_key(char kind, const char *tok, size_t len, int rows_log2);

/* Whether a package of this name is in the test split (CRC-32 % 10 == 0). */
int sections_is_test(const char *name, size_t len);

/* The number of distinct keys among the training packages (a figure to
 * print: how many rows of the table training can touch). */
size_t sections_distinct_train_keys(const sections_data *d);

#endif /* PSD_TRAIN_SECTIONS_H */
