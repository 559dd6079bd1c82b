/*
 * placement.h -- where a block lives, and server-list parsing.
 *
 * Block b of tensor T lives on the shard whose address wins rendezvous
 * (highest-random-weight) hashing of (T, b): adding an (N+1)th shard moves
 * only the blocks it now wins, about 1/(N+1) of them. Server and client
 * share this file so they can never disagree.
 */
#ifndef PSD_PLACEMENT_H
#define PSD_PLACEMENT_H

#include <stddef.h>
#include <stdint.h>

#include "hash.h"

#define PSP_MAX_SHARDS 1024

typedef struct {
  int n;
  char **addr;        /* "host:port" exactly as given */
  uint64_t *addr_hash; /* psh_fnv1a(PSH_FNV_BASIS_LIST, addr[i]) */
  uint64_t list_hash;  /* the same of the whole normalized list */
  char *list;         /* normalized list: entries joined by ',' */
} psp_servers;

/* Parse "h1:7070,h2:7070" (spaces ignored). Returns 0, or -1 with a sentence
 * in err. Free with psp_servers_free. */
int psp_servers_parse(psp_servers *s, const char *list, char *err, size_t errlen);
void psp_servers_free(psp_servers *s);

/* Index of the shard owning block `block` of the tensor with name hash
 * name_hash. */
int psp_owner(const psp_servers *s, uint64_t name_hash, uint64_t block);

/* ---- table rows -------------------------------------------------------------
 * Row `key` of a table belongs to one of PSP_ROW_BUCKETS buckets, hashed
 * from (table name, key); a bucket lives on the shard that wins rendezvous
 * hashing of (table, bucket). Adding an (N+1)th shard moves the buckets it
 * now wins, about 1/(N+1) of them, and so about 1/(N+1) of the rows; a
 * table's bucket map (PSP_ROW_BUCKETS shard indexes) is computed once, so
 * placing a key costs one hash and one load. */
#define PSP_ROW_BUCKETS 4096
#define PSP_ROW_SALT UINT64_C(0x7AB1E5A17ED00001)

static inline uint32_t psp_row_bucket(uint64_t name_hash, uint64_t key) {
  /* The top 12 bits of a full-avalanche mix. */
  return (uint32_t)(psh_mix64(name_hash ^ psh_mix64(key ^ PSP_ROW_SALT)) >> 52);
}

/* Fill map[0..PSP_ROW_BUCKETS) with the shard index owning each bucket of
 * the table with name hash name_hash. */
void psp_row_map(const psp_servers *s, uint64_t name_hash, uint16_t *map);

/* ---- blocks ----------------------------------------------------------------
 * A tensor of numel elements is cut into blocks of block_size elements (the
 * last one holds the rest); the daemon and the library cut it the same way
 * with these. block_size must be at least 1. */

/* How many blocks: ceil(numel / block_size). */
static inline uint64_t psp_nblocks(uint64_t numel, uint64_t block_size) {
  return numel / block_size + (numel % block_size != 0);
}

/* Block `index` holds elements [*first, *first + return value). An index
 * past the last block holds none (*first = numel, 0 returned). */
static inline uint64_t psp_block_range(uint64_t numel, uint64_t block_size, uint64_t index,
                                       uint64_t *first) {
  if (index >= psp_nblocks(numel, block_size)) {
    *first = numel;
    return 0;
  }
  *first = index * block_size;
  return numel - *first < block_size ? numel - *first : block_size;
}

/* Split "host:port" or "[v6]:port" into host (without brackets) and port.
 * Returns 0 or -1. */
int psp_split_hostport(const char *addr, char *host, size_t hostlen, int *port);

#endif
