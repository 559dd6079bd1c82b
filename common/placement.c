/* placement.c -- see placement.h. */
#include "placement.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hash.h"

int psp_owner(const psp_servers *s, uint64_t name_hash, uint64_t block) {
  uint64_t key = psh_mix64(name_hash ^ psh_mix64(block + PSH_GOLDEN));
  int best = 0;
  uint64_t best_w = 0;
  for (int i = 0; i < s->n; i++) {
    uint64_t w = psh_mix64(s->addr_hash[i] ^ key);
    if (i == 0 || w > best_w) {
      best = i;
      best_w = w;
    }
  }
  return best;
}

void psp_row_map(const psp_servers *s, uint64_t name_hash, uint16_t *map) {
  /* Another salt than blocks': bucket b of a table is not block b of a
   * tensor of the same name. */
  for (uint32_t b = 0; b < PSP_ROW_BUCKETS; b++)
    map[b] = (uint16_t)psp_owner(s, name_hash ^ PSP_ROW_SALT, b);
}

int psp_split_hostport(const char *addr, char *host, size_t hostlen, int *port) {
  const char *colon;
  size_t hl;
  if (addr[0] == '[') {
    const char *rb = strchr(addr, ']');
    if (rb == NULL || rb[1] != ':') return -1;
    hl = (size_t)(rb - addr - 1);
    addr++;
    colon = rb + 1;
  } else {
    colon = strrchr(addr, ':');
    if (colon == NULL || strchr(addr, ':') != colon) return -1;
    hl = (size_t)(colon - addr);
  }
  if (hl == 0 || hl >= hostlen) return -1;
  char *endp;
  long p = strtol(colon + 1, &endp, 10);
  if (*endp != '\0' || colon[1] == '\0' || p < 0 || p > 65535) return -1;
  memcpy(host, addr, hl);
  host[hl] = '\0';
  *port = (int)p;
  return 0;
}

void psp_servers_free(psp_servers *s) {
  for (int i = 0; i < s->n; i++) free(s->addr[i]);
  free(s->addr);
  free(s->addr_hash);
  free(s->list);
  memset(s, 0, sizeof(*s));
}

int psp_servers_parse(psp_servers *s, const char *list, char *err, size_t errlen) {
  memset(s, 0, sizeof(*s));
  size_t len = strlen(list);
  char *norm = malloc(len + 1);
  if (norm == NULL) goto nomem;
  size_t k = 0;
  for (size_t i = 0; i < len; i++)
    if (list[i] != ' ' && list[i] != '\t' && list[i] != '\n') norm[k++] = list[i];
  norm[k] = '\0';
  s->list = norm;

  int n = 1;
  for (size_t i = 0; i < k; i++) n += norm[i] == ',';
  if (n > PSP_MAX_SHARDS) {
    snprintf(err, errlen, "server list has %d entries, more than %d", n, PSP_MAX_SHARDS);
    goto fail;
  }
  s->addr = calloc((size_t)n, sizeof(*s->addr));
  s->addr_hash = calloc((size_t)n, sizeof(*s->addr_hash));
  if (s->addr == NULL || s->addr_hash == NULL) goto nomem;

  const char *p = norm;
  for (int i = 0; i < n; i++) {
    const char *comma = strchr(p, ',');
    size_t l = comma ? (size_t)(comma - p) : strlen(p);
    char host[256];
    int port;
    s->addr[i] = strndup(p, l);
    if (s->addr[i] == NULL) goto nomem;
    s->n = i + 1;
    if (psp_split_hostport(s->addr[i], host, sizeof(host), &port) != 0) {
      snprintf(err, errlen, "server list entry %d '%s' is not HOST:PORT", i + 1, s->addr[i]);
      goto fail;
    }
    for (int j = 0; j < i; j++)
      if (strcmp(s->addr[j], s->addr[i]) == 0) {
        snprintf(err, errlen, "server list names '%s' twice", s->addr[i]);
        goto fail;
      }
    s->addr_hash[i] = psh_fnv1a(PSH_FNV_BASIS_LIST, s->addr[i]);
    p = comma ? comma + 1 : p + l;
  }
  s->list_hash = psh_fnv1a(PSH_FNV_BASIS_LIST, norm);
  return 0;

nomem:
  snprintf(err, errlen, "out of memory");
fail:
  psp_servers_free(s);
  return -1;
}
