/* spare.c -- see spare.h. */
#include "spare.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "memory.h"

enum { SLOT_FREE = 0, SLOT_WANTED, SLOT_MAKING, SLOT_READY, SLOT_FAILED };

static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  pthread_t thread;
  int started, stop;
  int wanting; /* spare_want or spare_give is asking the account (loop thread) */
  struct {
    int state;
    size_t bytes;
    void *buf;
  } slot[SPARE_SLOTS];
} S;

static pthread_once_t spare_once = PTHREAD_ONCE_INIT;
static void spare_init(void) {
  pthread_mutex_init(&S.mu, NULL);
  pthread_cond_init(&S.cv, NULL);
}

static void *spare_main(void *arg) {
  (void)arg;
  pthread_mutex_lock(&S.mu);
  while (!S.stop) {
    int i = 0;
    while (i < SPARE_SLOTS && S.slot[i].state != SLOT_WANTED) i++;
    if (i == SPARE_SLOTS) {
      pthread_cond_wait(&S.cv, &S.mu);
      continue;
    }
    S.slot[i].state = SLOT_MAKING;
    size_t bytes = S.slot[i].bytes;
    pthread_mutex_unlock(&S.mu);
    void *buf = aligned_alloc(64, bytes);
    if (buf != NULL) memset(buf, 0, bytes); /* the page faults, here */
    pthread_mutex_lock(&S.mu);
    S.slot[i].buf = buf;
    S.slot[i].state = buf != NULL ? SLOT_READY : SLOT_FAILED;
  }
  pthread_mutex_unlock(&S.mu);
  return NULL;
}

int spare_start(void) {
  pthread_once(&spare_once, spare_init);
  S.stop = 0;
  if (pthread_create(&S.thread, NULL, spare_main, NULL) != 0) return -1;
  S.started = 1;
  return 0;
}

/* Under S.mu, on the loop thread: slot i is free again. */
static void slot_drop(int i) {
  if (S.slot[i].state != SLOT_FREE) mem_release(PSD_MEM_SCRATCH, S.slot[i].bytes);
  free(S.slot[i].buf);
  S.slot[i].buf = NULL;
  S.slot[i].bytes = 0;
  S.slot[i].state = SLOT_FREE;
}

void spare_stop(void) {
  if (!S.started) return;
  pthread_mutex_lock(&S.mu);
  S.stop = 1;
  pthread_cond_signal(&S.cv);
  pthread_mutex_unlock(&S.mu);
  pthread_join(S.thread, NULL);
  S.started = 0;
  for (int i = 0; i < SPARE_SLOTS; i++) slot_drop(i);
}

/* Under S.mu, on the loop thread: the slot for a new spare of `bytes`,
 * charged, or -1. A want (giving 0) is not needed when one of the size is
 * wanted, being made or ready; a buffer given back is not kept when one is
 * ready, and takes the place of one only wanted. Not mem_take_growth: a
 * spare not made is no client's refusal; nor room made by dropping other
 * spares (S.wanting: spare_reclaim passes). */
static int slot_claim(size_t bytes, int giving) {
  int at = -1;
  for (int i = 0; i < SPARE_SLOTS; i++) {
    if (S.slot[i].state == SLOT_FAILED) slot_drop(i);
    int st = S.slot[i].state;
    if (st == SLOT_FREE) {
      if (at < 0) at = i;
      continue;
    }
    if (S.slot[i].bytes != bytes || (giving && st == SLOT_MAKING)) continue;
    if (!giving || st == SLOT_READY) return -1;
    slot_drop(i); /* only wanted: the buffer given back serves it */
    at = i;
    break;
  }
  if (at < 0) return -1;
  S.wanting = 1;
  int fits = mem_fits_growth(bytes);
  S.wanting = 0;
  if (!fits) return -1;
  mem_charge(PSD_MEM_SCRATCH, bytes);
  S.slot[at].bytes = bytes;
  return at;
}

void spare_want(size_t bytes) {
  if (!S.started || bytes > SPARE_MAX) return;
  pthread_mutex_lock(&S.mu);
  int i = slot_claim(bytes, 0);
  if (i >= 0) {
    S.slot[i].state = SLOT_WANTED;
    pthread_cond_signal(&S.cv);
  }
  pthread_mutex_unlock(&S.mu);
}

void *spare_take(size_t bytes) {
  if (!S.started) return NULL;
  void *buf = NULL;
  pthread_mutex_lock(&S.mu);
  for (int i = 0; i < SPARE_SLOTS; i++) {
    if (S.slot[i].state == SLOT_READY && S.slot[i].bytes == bytes) {
      buf = S.slot[i].buf;
      S.slot[i].buf = NULL;
      slot_drop(i);
      break;
    }
  }
  pthread_mutex_unlock(&S.mu);
  return buf;
}

void spare_give(void *buf, size_t bytes) {
  if (buf == NULL) return;
  if (S.started && bytes <= SPARE_MAX) {
    pthread_mutex_lock(&S.mu);
    int i = slot_claim(bytes, 1);
    if (i >= 0) {
      S.slot[i].buf = buf;
      S.slot[i].state = SLOT_READY;
      buf = NULL;
    }
    pthread_mutex_unlock(&S.mu);
  }
  free(buf);
}

uint64_t spare_reclaim(void) {
  if (!S.started || S.wanting) return 0;
  uint64_t bytes = 0;
  pthread_mutex_lock(&S.mu);
  for (int i = 0; i < SPARE_SLOTS; i++) {
    int st = S.slot[i].state;
    if (st == SLOT_READY || st == SLOT_WANTED || st == SLOT_FAILED) {
      bytes += S.slot[i].bytes;
      slot_drop(i);
    }
  }
  pthread_mutex_unlock(&S.mu);
  return bytes;
}
