/*
 * lane.c -- shared-memory lanes: creating, attaching, slot allocation.
 * The why is in lane.h.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "lane.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

static const char lane_magic[8] = {'P', 'S', 'D', 'L', 'A', 'N', 'E', '1'};

static void lane_zero(psl_lane *l) {
  memset(l, 0, sizeof(*l));
  l->fd = -1;
}

static uint64_t lane_round(uint64_t bytes) {
  uint64_t body = (bytes + PSL_CHUNK - 1) / PSL_CHUNK * PSL_CHUNK;
  return PSL_HEADER + body;
}

int psl_create(psl_lane *l, uint64_t bytes, char *err, size_t errlen) {
  lane_zero(l);
  if (bytes == 0 || bytes > PSL_MAX_BYTES) {
    snprintf(err, errlen, "lane of %llu bytes refused", (unsigned long long)bytes);
    return -1;
  }
  uint64_t len = lane_round(bytes);
  int fd = memfd_create("psd-lane", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) {
    snprintf(err, errlen, "memfd_create: %s", strerror(errno));
    return -1;
  }
  /* Sealed at its size: a client that maps it cannot shrink it under the
   * daemon (which would turn the daemon's next access into SIGBUS). */
  if (ftruncate(fd, (off_t)len) != 0 ||
      fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    snprintf(err, errlen, "sizing and sealing the lane: %s", strerror(errno));
    close(fd);
    return -1;
  }
  void *p = mmap(NULL, (size_t)len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    snprintf(err, errlen, "mmap of a %llu-byte lane: %s", (unsigned long long)len,
             strerror(errno));
    close(fd);
    return -1;
  }
  uint8_t secret[PSL_COOKIE];
  if (getrandom(l->cookie, PSL_COOKIE, 0) != PSL_COOKIE ||
      getrandom(secret, PSL_COOKIE, 0) != PSL_COOKIE) {
    snprintf(err, errlen, "getrandom: %s", strerror(errno));
    munmap(p, (size_t)len);
    close(fd);
    return -1;
  }
  memcpy(p, lane_magic, sizeof(lane_magic));
  memcpy((uint8_t *)p + PSL_OFF_COOKIE, l->cookie, PSL_COOKIE);
  memcpy((uint8_t *)p + PSL_OFF_SECRET, secret, PSL_COOKIE);
  l->base = p;
  l->len = (size_t)len;
  l->fd = fd;
  return 0;
}

int psl_attach(psl_lane *l, uint32_t pid, int32_t fd, uint64_t bytes,
               const uint8_t *cookie, size_t cookie_len, char *err, size_t errlen) {
  lane_zero(l);
  if (cookie_len != PSL_COOKIE || bytes < PSL_HEADER + PSL_CHUNK || bytes > PSL_MAX_BYTES + PSL_HEADER ||
      (bytes - PSL_HEADER) % PSL_CHUNK != 0 || fd < 0) {
    snprintf(err, errlen, "malformed lane offer");
    return -1;
  }
  char path[64], self[64];
  snprintf(path, sizeof(path), "/proc/%u/fd/%d", pid, fd);
  /* Look before opening for real: in another pid namespace the path may
   * name any file of ours, a FIFO or a device, that opening would disturb. */
  int pfd = open(path, O_PATH | O_CLOEXEC);
  if (pfd < 0) {
    snprintf(err, errlen, "open %s: %s", path, strerror(errno));
    return -1;
  }
  struct stat st;
  if (fstat(pfd, &st) != 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size != bytes) {
    snprintf(err, errlen, "%s is not the lane offered (type or size)", path);
    close(pfd);
    return -1;
  }
  snprintf(self, sizeof(self), "/proc/self/fd/%d", pfd);
  int lfd = open(self, O_RDWR | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  close(pfd);
  if (lfd < 0) {
    snprintf(err, errlen, "open %s: %s", path, strerror(errno));
    return -1;
  }
  /* Only a sealed file: one that could shrink could fault us too. */
  int seals = fcntl(lfd, F_GET_SEALS);
  if (seals < 0 || !(seals & F_SEAL_SHRINK)) {
    snprintf(err, errlen, "%s is not a sealed lane", path);
    close(lfd);
    return -1;
  }
  void *p = mmap(NULL, (size_t)bytes, PROT_READ | PROT_WRITE, MAP_SHARED, lfd, 0);
  close(lfd); /* the mapping keeps the file */
  if (p == MAP_FAILED) {
    snprintf(err, errlen, "mmap %s: %s", path, strerror(errno));
    return -1;
  }
  if (memcmp(p, lane_magic, sizeof(lane_magic)) != 0 ||
      memcmp((uint8_t *)p + PSL_OFF_COOKIE, cookie, PSL_COOKIE) != 0) {
    snprintf(err, errlen, "%s is not the lane offered (cookie)", path);
    munmap(p, (size_t)bytes);
    return -1;
  }
  /* Prove to the creator that this process can read the lane. */
  memcpy((uint8_t *)p + PSL_OFF_PROOF, (uint8_t *)p + PSL_OFF_SECRET, PSL_COOKIE);
  size_t nchunks = (size_t)((bytes - PSL_HEADER) / PSL_CHUNK);
  l->used = calloc((nchunks + 63) / 64, sizeof(uint64_t));
  if (l->used == NULL) {
    snprintf(err, errlen, "out of memory");
    munmap(p, (size_t)bytes);
    return -1;
  }
  memcpy(l->cookie, cookie, PSL_COOKIE);
  l->base = p;
  l->len = (size_t)bytes;
  l->nchunks = l->nfree = nchunks;
  return 0;
}

void psl_close(psl_lane *l) {
  /* A zeroed psl_lane (fd 0, base NULL) is a closed one: only a mapped lane
   * may own a descriptor. */
  if (l->base != NULL) {
    munmap(l->base, l->len);
    if (l->fd >= 0) close(l->fd);
  }
  free(l->used);
  lane_zero(l);
}

int psl_proven(const psl_lane *l) {
  return l->base != NULL &&
         memcmp(l->base + PSL_OFF_PROOF, l->base + PSL_OFF_SECRET, PSL_COOKIE) == 0;
}

int psl_range_ok(const psl_lane *l, uint64_t off, uint64_t len) {
  return l->base != NULL && off >= PSL_HEADER && (off & 63) == 0 && off <= l->len &&
         len <= l->len - off;
}

static int bit_get(const uint64_t *m, size_t i) { return (int)((m[i / 64] >> (i % 64)) & 1); }

uint64_t psl_alloc(psl_lane *l, uint64_t len) {
  if (l->used == NULL || len == 0) return 0;
  size_t need = (size_t)((len + PSL_CHUNK - 1) / PSL_CHUNK);
  if (need > l->nfree) return 0;
  size_t run = 0;
  for (size_t i = 0; i < l->nchunks; i++) {
    if (run == 0 && (i % 64) == 0 && l->used[i / 64] == UINT64_MAX) {
      i += 63; /* a full word: skip it */
      continue;
    }
    if (bit_get(l->used, i)) {
      run = 0;
      continue;
    }
    if (++run == need) {
      size_t first = i + 1 - need;
      for (size_t k = first; k <= i; k++) l->used[k / 64] |= 1ull << (k % 64);
      l->nfree -= need;
      return PSL_HEADER + (uint64_t)first * PSL_CHUNK;
    }
  }
  return 0;
}

void psl_free(psl_lane *l, uint64_t off, uint64_t len) {
  if (l->used == NULL || off < PSL_HEADER || len == 0) return;
  size_t first = (size_t)((off - PSL_HEADER) / PSL_CHUNK);
  size_t need = (size_t)((len + PSL_CHUNK - 1) / PSL_CHUNK);
  for (size_t k = first; k < first + need && k < l->nchunks; k++) {
    uint64_t bit = 1ull << (k % 64);
    if (l->used[k / 64] & bit) {
      l->used[k / 64] &= ~bit;
      l->nfree++;
    }
  }
}
