/*
 * lane.h -- the shared-memory lane between a worker and a shard on the same
 * host, shared by the daemon (which creates lanes) and the client library
 * (which attaches to them and hands out slots).
 *
 * Over loopback TCP a 4 MB push-pull costs four kernel copies (gradient in
 * and out of the socket, weights in and out). A lane replaces them: it is
 * a memfd the shard creates for one connection when the client's hello asks
 * for one, sealed against shrinking (so no client can make the daemon fault
 * on it) and mapped by both. The client copies a gradient into a slot of the
 * lane and sends a small frame naming the slot; the shard reads the
 * gradient there, applies it, writes the new weights into the slot and
 * answers with a small frame. Control stays on the TCP connection, so
 * ordering, ids, exactly-once and reconnects work as before; a lane lives
 * and dies with its connection.
 *
 * The client reaches the memfd through /proc/<shard pid>/fd/<fd>: that only
 * works on the same host, in the same pid namespace, for a process allowed
 * to look at the shard (same user, or root). The lane's header carries a
 * random cookie the hello reply also carries, so a /proc path that happens
 * to exist on another host is never taken for the lane. When any of this
 * fails the client simply keeps using TCP.
 */
#ifndef PSD_LANE_H
#define PSD_LANE_H

#include <stddef.h>
#include <stdint.h>

#define PSL_HEADER 4096u          /* bytes before the first slot */
#define PSL_CHUNK 65536u          /* slot granularity and alignment */
#define PSL_COOKIE 16
/* Header layout: magic [0, 8), cookie [8, 24) (also in the hello reply),
 * secret [24, 40) (in no message), proof [40, 56) (the client copies the
 * secret here once it has mapped the lane). */
#define PSL_OFF_COOKIE 8
#define PSL_OFF_SECRET 24
#define PSL_OFF_PROOF 40
#define PSL_MAX_BYTES (1ull << 34) /* 16 GiB: a sanity bound on what a hello may ask */

typedef struct {
  uint8_t *base;   /* mapping, or NULL */
  size_t len;      /* bytes mapped */
  int fd;          /* the memfd (creator) or -1 */
  uint8_t cookie[PSL_COOKIE];
  /* Slot allocator (client side): one bit per chunk after the header. */
  uint64_t *used;
  size_t nchunks;
  size_t nfree;
} psl_lane;

/* Creator (the shard): a sealed memfd of `bytes` (rounded up to whole
 * chunks plus the header), mapped, with a fresh cookie in its header.
 * Returns 0, or -1 with a sentence in err. */
int psl_create(psl_lane *l, uint64_t bytes, char *err, size_t errlen);

/* Attacher (the worker): open /proc/<pid>/fd/<fd>, check its size and the
 * cookie, map it. Returns 0, or -1 with a sentence in err. */
int psl_attach(psl_lane *l, uint32_t pid, int32_t fd, uint64_t bytes,
               const uint8_t *cookie, size_t cookie_len, char *err, size_t errlen);

/* Creator: whether the attacher has proved it mapped the lane (the proof
 * field holds the secret). Until then the creator must not write slots: a
 * peer that only sent offsets would otherwise make it dirty the whole lane. */
int psl_proven(const psl_lane *l);

/* Unmap and close; l is zeroed (fd -1). Safe on a closed lane and on an
 * all-zero one (a calloc'd struct holding a lane that was never made). */
void psl_close(psl_lane *l);

/* Whether [off, off+len) is a valid slot range: past the header, aligned
 * to 64 bytes, inside the lane. */
int psl_range_ok(const psl_lane *l, uint64_t off, uint64_t len);

/* Allocate a slot of len bytes (lowest address first, which keeps the
 * lane's working set small and warm). Returns its offset, or 0 when the
 * lane has no room (0 is never a slot: the header is there). */
uint64_t psl_alloc(psl_lane *l, uint64_t len);
void psl_free(psl_lane *l, uint64_t off, uint64_t len);

#endif
