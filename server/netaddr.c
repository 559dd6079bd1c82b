/*
 * netaddr.c -- listen addresses for server.c and metrics.c (netaddr.h).
 */
#include "netaddr.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "placement.h"

int netaddr_resolve(uv_loop_t *loop, const char *flag, const char *hostport,
                    struct sockaddr_storage *addr) {
  char host[256];
  int port;
  if (psp_split_hostport(hostport, host, sizeof(host), &port) != 0) {
    log_error("%s '%s' is not HOST:PORT", flag, hostport);
    return -1;
  }
  memset(addr, 0, sizeof(*addr));
  if (uv_ip4_addr(host, port, (struct sockaddr_in *)addr) == 0 ||
      uv_ip6_addr(host, port, (struct sockaddr_in6 *)addr) == 0)
    return 0;
  uv_getaddrinfo_t gai;
  struct addrinfo hints = {0};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  int r = uv_getaddrinfo(loop, &gai, NULL, host, NULL, &hints);
  if (r != 0 || gai.addrinfo == NULL) {
    log_error("%s host '%s' does not resolve: %s", flag, host,
              r != 0 ? uv_strerror(r) : "no address");
    if (r == 0) uv_freeaddrinfo(gai.addrinfo);
    return -1;
  }
  /* The first answer, as a client connecting to the name would try first. */
  memcpy(addr, gai.addrinfo->ai_addr, gai.addrinfo->ai_addrlen);
  uv_freeaddrinfo(gai.addrinfo);
  if (addr->ss_family == AF_INET) ((struct sockaddr_in *)addr)->sin_port = htons((uint16_t)port);
  else ((struct sockaddr_in6 *)addr)->sin6_port = htons((uint16_t)port);
  return 0;
}

int netaddr_bound(const uv_tcp_t *tcp, char *buf, size_t len) {
  struct sockaddr_storage bound;
  int bl = sizeof(bound);
  char ip[INET6_ADDRSTRLEN];
  snprintf(buf, len, "?");
  if (uv_tcp_getsockname(tcp, (struct sockaddr *)&bound, &bl) != 0) return -1;
  if (bound.ss_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)&bound;
    if (uv_ip4_name(a, ip, sizeof(ip)) != 0) return -1;
    snprintf(buf, len, "%s:%d", ip, ntohs(a->sin_port));
    return ntohs(a->sin_port);
  }
  if (bound.ss_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&bound;
    if (uv_ip6_name(a, ip, sizeof(ip)) != 0) return -1;
    snprintf(buf, len, "[%s]:%d", ip, ntohs(a->sin6_port));
    return ntohs(a->sin6_port);
  }
  return -1;
}

int netaddr_is_loopback(const struct sockaddr *addr) {
  if (addr->sa_family == AF_INET)
    return (ntohl(((const struct sockaddr_in *)addr)->sin_addr.s_addr) >> 24) == 127;
  if (addr->sa_family == AF_INET6) {
    const struct in6_addr *a = &((const struct sockaddr_in6 *)addr)->sin6_addr;
    return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
  }
  return 0;
}
