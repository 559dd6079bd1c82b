/*
 * helper.c -- one helper thread that takes half of a large optimizer update.
 *
 * The daemon is single-threaded: one libuv loop owns every tensor. An
 * update of a large block is the one piece of work long enough (a 1 MiB
 * Adam block is ~200 us of memory-bound work) to be worth a second core,
 * and it parallelizes trivially: every kernel is elementwise, so [lo, mid)
 * and [mid, hi) can run at once and give exactly the bytes of one pass.
 * helper_split() is a fork-join: the loop thread hands the upper half to the
 * helper, runs the lower half itself and waits for the helper before it
 * returns, so nothing else in the daemon ever runs concurrently with
 * anything: the rest of the code stays single-threaded.
 */
#include "helper.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

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
  int quit;                 /* [mu] */
  int has_work;             /* [mu] */
  void (*fn)(void *arg, uint64_t lo, uint64_t hi);
  void *arg;
  uint64_t lo, hi;
  atomic_int done;          /* the helper finished the current half */
};

static void *helper_main(void *p) {
  psd_helper *h = p;
  pthread_mutex_lock(&h->mu);
  for (;;) {
    while (!h->has_work && !h->quit) pthread_cond_wait(&h->cv, &h->mu);
    if (h->quit) break;
    h->has_work = 0;
    pthread_mutex_unlock(&h->mu);
    h->fn(h->arg, h->lo, h->hi);
    atomic_store_explicit(&h->done, 1, memory_order_release);
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
  if (pthread_create(&h->th, NULL, helper_main, h) != 0) {
    pthread_cond_destroy(&h->cv);
    pthread_mutex_destroy(&h->mu);
    free(h);
    return NULL;
  }
  return h;
}

void helper_split(psd_helper *h, void (*fn)(void *arg, uint64_t lo, uint64_t hi), void *arg,
                  uint64_t lo, uint64_t hi, uint64_t align) {
  uint64_t mid = lo + (hi - lo) / 2;
  if (align > 1) mid -= (mid - lo) % align;
  if (h == NULL || mid == lo) {
    fn(arg, lo, hi);
    return;
  }
  pthread_mutex_lock(&h->mu);
  h->fn = fn;
  h->arg = arg;
  h->lo = mid;
  h->hi = hi;
  atomic_store_explicit(&h->done, 0, memory_order_relaxed);
  h->has_work = 1;
  pthread_cond_signal(&h->cv);
  pthread_mutex_unlock(&h->mu);
  fn(arg, lo, mid);
  /* The halves take about as long: the helper is nearly done, so spin. */
  while (!atomic_load_explicit(&h->done, memory_order_acquire)) cpu_relax();
}

void helper_stop(psd_helper *h) {
  if (h == NULL) return;
  pthread_mutex_lock(&h->mu);
  h->quit = 1;
  pthread_cond_signal(&h->cv);
  pthread_mutex_unlock(&h->mu);
  pthread_join(h->th, NULL);
  pthread_cond_destroy(&h->cv);
  pthread_mutex_destroy(&h->mu);
  free(h);
}
