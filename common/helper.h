/*
 * helper.h -- a helper thread that shares the pieces of large updates (see
 * helper.c for why this is the daemon's only other thread).
 */
#ifndef PSD_HELPER_H
#define PSD_HELPER_H

#include <stdint.h>

typedef struct psd_helper psd_helper;

/* Start the thread; NULL if it cannot be started (updates then run whole
 * on the caller's thread). */
psd_helper *helper_start(void);

/* Run fn(arg, i) for every piece i in [0, npieces), on this thread and the
 * helper, in any order; return when all are done. Pieces must be
 * independent. With h NULL everything runs here. */
void helper_run(psd_helper *h, void (*fn)(void *arg, uint32_t piece), void *arg,
                uint32_t npieces);

/* Stop and free the thread (h may be NULL). */
void helper_stop(psd_helper *h);

#endif
