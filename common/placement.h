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

/* Split "host:port" or "[v6]:port" into host (without brackets) and port.
 * Returns 0 or -1. */
int psp_split_hostport(const char *addr, char *host, size_t hostlen, int *port);

#endif
