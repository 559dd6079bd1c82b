/*
 * helper.c -- one helper thread that shares large optimizer updates.
 *
 * The daemon is single-threaded: one libuv loop owns every tensor. An
 * update of a large block is the one piece of work long enough (a 1 MiB
 * Adam block is ~250 us of memory-bound work) to be worth a second core,
 * and it parallelizes trivially: every kernel is elementwise, so the pieces
 * of a block can run in any order, on any thread, and give exactly the
 * bytes of one pass.
 *
 * helper_run() is a fork-join with work sharing: the pieces of one job are
 * numbered, and the loop thread and the helper each take the next
 * unclaimed piece until none is left; the loop thread then waits for the
 * helper's last piece (at most one, ~15 us: it spins, then sleeps if the
 * helper was preempted) and returns. Nothing else in
 * the daemon ever runs concurrently with anything, so the rest of the code
 * stays single-threaded. If the helper does not get a CPU (the machine is
 * busy: on a small machine it is often the worker's own process that needs
 * it), the loop thread simply does every piece itself: a late helper never
 * delays a job. For the same reason the helper runs at a lower priority
 * than the loop thread and than the workers on the host.
 *
 * Claiming is lock-free: `next` packs the job's generation (high 32 bits)
 * and the next piece index (low 32 bits), and a piece is claimed with a
 * compare-and-swap, so a helper that wakes after its job ended can never
 * claim a piece of the next job by mistake. The helper reads a job's
 * generation, piece count, function and argument together, under the
 * mutex; the counter alone decides which pieces are left.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "helper.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

struct psd_helper {
  pthread_t th;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int quit;                  /* [mu] */
  uint32_t posted;           /* [mu] generation of the last job posted */
  /* The current job. Written by the loop thread before `next` publishes
   * its generation; stable while any piece of it is unfinished. */
  void (*fn)(void *arg, uint32_t piece); /* [mu] */
  void *arg;                 /* [mu] */
  uint32_t npieces;          /* [mu] */
  _Atomic uint64_t next;     /* generation << 32 | next piece */
  _Atomic uint32_t done;     /* pieces finished in this generation */
  _Atomic int waiting;       /* the loop thread sleeps on done_cv */
  pthread_cond_t done_cv;
};

/* Spins of the loop thread before it sleeps: ~20-50 us, about one piece. A
 * helper still running after that was preempted (by another process, or
 * because it runs at a lower priority): the loop thread then sleeps until it
 * finishes its piece, instead of burning the CPU it needs. */
#define SPINS 2000

/* Claim the next piece of generation gen, which has n pieces; UINT32_MAX
 * when there is none. The caller knows n from when it learned gen (under
 * the mutex, or as the poster): reading it here could see the next job's
 * count next to this job's counter and claim a piece that does not exist. */
static uint32_t claim(psd_helper *h, uint32_t gen, uint32_t n) {
  uint64_t v = atomic_load_explicit(&h->next, memory_order_acquire);
  for (;;) {
    if ((uint32_t)(v >> 32) != gen || (uint32_t)v >= n) return UINT32_MAX;
    if (atomic_compare_exchange_weak_explicit(&h->next, &v, v + 1, memory_order_acq_rel,
                                              memory_order_acquire))
      return (uint32_t)v;
  }
}

static void *helper_main(void *p) {
  psd_helper *h = p;
  /* Below the loop thread and the workers: see the top. */
  setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 10);
  uint32_t seen = 0;
  pthread_mutex_lock(&h->mu);
  for (;;) {
    while (h->posted == seen && !h->quit) pthread_cond_wait(&h->cv, &h->mu);
    if (h->quit) break;
    /* The job of generation `seen`; its fields stay as they are until all
     * of its pieces are done, which includes any piece claimed below. */
    seen = h->posted;
    uint32_t n = h->npieces;
    void (*fn)(void *, uint32_t) = h->fn;
    void *arg = h->arg;
    pthread_mutex_unlock(&h->mu);
    uint32_t i;
    while ((i = claim(h, seen, n)) != UINT32_MAX) {
      fn(arg, i);
      /* seq_cst on both sides (done here, waiting in helper_run): either
       * the loop thread sees this piece done or this thread sees it wait. */
      atomic_fetch_add(&h->done, 1);
      if (atomic_load(&h->waiting)) {
        pthread_mutex_lock(&h->mu);
        pthread_cond_signal(&h->done_cv);
        pthread_mutex_unlock(&h->mu);
      }
    }
    pthread_mutex_lock(&h->mu);
  }
  pthread_mutex_unlock(&h->mu);
  return NULL;
}

psd_helper *helper_start(void) {
  psd_helper *h = calloc(1, sizeof(*h));
  if (h == NULL) return NULL;
  pthread_mutex_init(&h->mu, NULL);
  pthread_cond_init(&h->cv, NULL);
  pthread_cond_init(&h->done_cv, NULL);
  atomic_init(&h->waiting, 0);
  atomic_init(&h->next, 0);
  atomic_init(&h->done, 0);
  if (pthread_create(&h->th, NULL, helper_main, h) != 0) {
    pthread_cond_destroy(&h->done_cv);
    pthread_cond_destroy(&h->cv);
    pthread_mutex_destroy(&h->mu);
    free(h);
    return NULL;
  }
  return h;
}

void helper_run(psd_helper *h, void (*fn)(void *arg, uint32_t piece), void *arg,
                uint32_t npieces) {
  if (h == NULL || npieces < 2) {
    for (uint32_t i = 0; i < npieces; i++) fn(arg, i);
    return;
  }
  pthread_mutex_lock(&h->mu);
  uint32_t gen = ++h->posted;
  h->fn = fn;
  h->arg = arg;
  h->npieces = npieces;
  atomic_store_explicit(&h->done, 0, memory_order_relaxed);
  atomic_store_explicit(&h->next, (uint64_t)gen << 32, memory_order_release);
  pthread_cond_signal(&h->cv);
  pthread_mutex_unlock(&h->mu);
  uint32_t i, mine = 0;
  while ((i = claim(h, gen, npieces)) != UINT32_MAX) {
    fn(arg, i);
    mine++;
  }
  /* Every piece is claimed; wait for the helper's (at most one running). */
  for (int spin = 0; atomic_load(&h->done) + mine < npieces; spin++) {
    if (spin < SPINS) {
      cpu_relax();
      continue;
    }
    pthread_mutex_lock(&h->mu);
    atomic_store(&h->waiting, 1);
    while (atomic_load(&h->done) + mine < npieces) pthread_cond_wait(&h->done_cv, &h->mu);
    atomic_store(&h->waiting, 0);
    pthread_mutex_unlock(&h->mu);
    break;
  }
}

void helper_stop(psd_helper *h) {
  if (h == NULL) return;
  pthread_mutex_lock(&h->mu);
  h->quit = 1;
  pthread_cond_signal(&h->cv);
  pthread_mutex_unlock(&h->mu);
  pthread_join(h->th, NULL);
  pthread_cond_destroy(&h->done_cv);
  pthread_cond_destroy(&h->cv);
  pthread_mutex_destroy(&h->mu);
  free(h);
}
