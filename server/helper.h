/*
 * helper.h -- a helper thread for the upper half of large updates (see
 * helper.c for why this is the daemon's only other thread).
 */
#ifndef PSD_HELPER_H
#define PSD_HELPER_H

#include <stdint.h>

typedef struct psd_helper psd_helper;

/* Start the thread; NULL if it cannot be started (updates then run whole
 * on the caller's thread). */
psd_helper *helper_start(void);

/* Run fn(arg, lo, mid) here and fn(arg, mid, hi) on the helper, mid being
 * the middle of [lo, hi) rounded down to a multiple of align past lo, and
 * return when both are done. With h NULL, fn(arg, lo, hi) runs here. */
void helper_split(psd_helper *h, void (*fn)(void *arg, uint64_t lo, uint64_t hi), void *arg,
                  uint64_t lo, uint64_t hi, uint64_t align);

/* Stop and free the thread (h may be NULL). */
void helper_stop(psd_helper *h);

#endif
