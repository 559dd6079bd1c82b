/*
 * train.h -- what psd-train's models share: the flags (train.c parses
 * them), the connection to the job, the optimizer the flags describe, and
 * the helpers of the training loop (shuffling, the gate, the CSV row, the
 * library's metrics line).
 *
 * train.c runs the MLP on Fashion-MNIST (--model mlp) and owns everything
 * declared here; train_sections.c runs the package-section classifier
 * (--model sections) on the same helpers.
 */
#ifndef PSD_TRAIN_TRAIN_H
#define PSD_TRAIN_TRAIN_H

#include <stdint.h>
#include <stdio.h>

#include "mlp.h"
#include "psd.h"

typedef enum { MODEL_MLP = 0, MODEL_SECTIONS } train_model;

typedef struct {
  train_model model;
  const char *servers;
  int rank, workers;
  int staleness;
  char mode[32];
  int epochs, batch;
  const char *optimizer, *schedule;
  double lr, gamma, decay, lr_min, weight_decay, clip_norm;
  double step_epochs, warmup_epochs;
  int sizes[MLP_MAX_SIZES], nsizes;
  const char *data_dir;
  long train_limit, test_limit;
  uint64_t seed;
  const char *csv;
  int quiet, progress, log_every, standardize;
  const char *job;       /* --job: the job's name (default: PS_JOB, else "default") */
  const char *gate_file; /* --gate-file: where the test opens the gate */
  long gate_step;        /* --gate-step: steps done before the gate (-1: none) */
  /* --model sections */
  const char *index;     /* --index: the package index file (NULL: apt-cache dumpavail) */
  long packages;         /* --packages: the first N packages only (0: all) */
  int dim;               /* --dim: embedding width */
  int rows_log2;         /* --rows-log2: the table's hashed rows are 2^this */
  double emb_sigma;      /* --emb-sigma: the rows' normal init */
} config;

/* Print "psd-train: rank R: " and the message on stderr, exit 1. psd-train
 * has nothing to clean up that the OS does not (the servers notice the
 * closed connections). */
void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

double now_s(void);

/* Connect to the job as cfg's worker; dies with the library's sentence. */
ps_client *train_connect(const config *cfg);

/* The optimizer the flags describe, on top of the defaults the spec's init
 * function set for its kind: lr, weight decay, clipping, schedule and
 * warmup, the epoch-based flags converted with updates_per_epoch (the
 * server's updates per epoch). Every worker must build the same spec, so it
 * depends on flags and on the data size only. */
void train_optim(const config *cfg, uint64_t updates_per_epoch, ps_optim_spec *o);
ps_optim_kind train_optim_kind(const config *cfg);

/* Shuffle perm[0..n) reproducibly from seed. */
void shuffle(int *perm, int n, uint64_t seed);

/* The steps every worker takes per epoch over a training set of `total`
 * examples (`what` names them in the error), and the server's updates per
 * epoch; dies when there are too few examples, or when --gate-step is past
 * the job's last step. */
int train_steps(const config *cfg, size_t total, const char *what,
                uint64_t *updates_per_epoch);

/* The epoch's shuffle seed of this worker. */
uint64_t epoch_seed(const config *cfg, int epoch);

/* Append an epoch's row to --csv (rank 0). */
void csv_row(const config *cfg, int epoch, double loss, double tacc, double acc,
             double sps, double elapsed);

/* One line of what the library counted (ps_metrics). */
void print_client_metrics(ps_client *c, int rank);

/* --gate-file/--gate-step: say so on stderr, then wait for the file. */
void gate_wait(const config *cfg, long done);

/* --model sections: the whole job of this worker; returns main's status. */
int sections_main(const config *cfg);

#endif /* PSD_TRAIN_TRAIN_H */
