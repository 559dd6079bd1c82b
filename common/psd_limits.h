/*
 * psd_limits.h -- the limits of a tensor and the defaults that the daemon
 * and the worker library must agree on, one value each. (Named so as not
 * to shadow the C library's <limits.h>: common/ is on the include path.)
 *
 * The daemon refuses what exceeds them (create), the library refuses a
 * call that would (before sending it) and any tensor description from a
 * shard that does (a reply it cannot trust to cut a tensor by).
 */
#ifndef PSD_LIMITS_H
#define PSD_LIMITS_H

#include <stddef.h>
#include <stdint.h>

/* Bytes of a tensor name, the NUL excluded; at least 1. */
#define PSD_MAX_NAME 256
/* Dimensions of a tensor: 1 to PSD_MAX_NDIM. */
#define PSD_MAX_NDIM 16
/* Elements of a tensor: at most PSD_MAX_NUMEL (each dimension at least 1). */
#define PSD_MAX_NUMEL (1ull << 62)
/* Blocks of a tensor, ceil(numel / block_size): at most PSD_MAX_BLOCKS. */
#define PSD_MAX_BLOCKS (1ull << 24)
/* Elements per block when neither the spec nor the shard's --block-size
 * says (1 MiB of float32). */
#define PSD_DEFAULT_BLOCK 262144u

/* The element count of shape[0..ndim), or 0 if a dimension is 0 or the
 * count exceeds PSD_MAX_NUMEL (ndim itself is the caller's to check). */
static inline uint64_t psd_numel(const uint64_t *shape, size_t ndim) {
  uint64_t n = 1;
  for (size_t i = 0; i < ndim; i++) {
    if (shape[i] == 0 || n > PSD_MAX_NUMEL / shape[i]) return 0;
    n *= shape[i];
  }
  return n;
}

#endif /* PSD_LIMITS_H */
