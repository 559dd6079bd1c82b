/*
 * netaddr.h -- the daemon's listen addresses: HOST:PORT into a socket
 * address, a bound socket's address back into text, and whether an address
 * is loopback. The one owner of these for both of psd's listeners (server.c:
 * --listen; metrics.c: --metrics-listen), so they accept the same forms and
 * say the same things when an address is wrong.
 */
#ifndef PSD_NETADDR_H
#define PSD_NETADDR_H

#include <netinet/in.h>
#include <stddef.h>
#include <sys/socket.h>
#include <uv.h>

/* Room for "[IPv6]:PORT" and its NUL. */
#define NETADDR_NAME_MAX (INET6_ADDRSTRLEN + 8)

/* Resolves HOSTPORT ("1.2.3.4:7070", "[::1]:7070", "name:7070"; port 0
 * lets the kernel choose) into *addr. A literal is taken as it is; a name
 * (localhost, a pod's hostname) is resolved once, now, with a synchronous
 * getaddrinfo on LOOP: a listener is set up once, at start, before any
 * client is served. FLAG names the setting in the error sentence
 * ("--listen"). Returns 0, or -1 after logging why. */
int netaddr_resolve(uv_loop_t *loop, const char *flag, const char *hostport,
                    struct sockaddr_storage *addr);

/* Writes the address TCP is bound to as "IP:PORT" or "[IPv6]:PORT" into
 * buf (len >= NETADDR_NAME_MAX). Returns the port, or -1 (buf then "?")
 * when the socket has no address. */
int netaddr_bound(const uv_tcp_t *tcp, char *buf, size_t len);

/* 1 when ADDR (AF_INET or AF_INET6) is loopback: 127.0.0.0/8, ::1, or an
 * IPv4-mapped 127.x address; else 0. */
int netaddr_is_loopback(const struct sockaddr *addr);

#endif
