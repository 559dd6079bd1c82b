/*
 * proxy.h -- a one-connection TCP proxy on loopback, for the tests that
 * need a connection to misbehave on demand: replies swallowed (the shard
 * applied a request whose answer never arrives), a reply cut after so many
 * bytes, the connection closed under the client.
 *
 * It forwards one client connection at a time to 127.0.0.1:upstream; a new
 * connection replaces the old one. The switches are atomics the test sets
 * from its own thread; the proxy's thread acts on them at its next turn.
 */
#ifndef PSD_TEST_PROXY_H
#define PSD_TEST_PROXY_H

#include <pthread.h>
#include <stdatomic.h>

typedef struct {
  int port;                 /* where clients connect */
  char addr[64];            /* "127.0.0.1:PORT" */
  atomic_int drop_down;     /* set: what the shard sends is swallowed */
  atomic_int cut;           /* set: close both sides once (then cleared) */
  atomic_int accepted;      /* connections accepted so far */
  atomic_llong down_budget; /* bytes still forwarded to the client; < 0: all */
  atomic_llong forwarded;   /* bytes forwarded to the client */
  /* The proxy's own. */
  int lfd, upstream, cfd, sfd;
  atomic_int stop;
  pthread_t th;
} th_proxy;

/* Listen on an ephemeral loopback port and start forwarding to upstream;
 * 0 or -1. */
int th_proxy_start(th_proxy *px, int upstream);
/* Stop the thread and close every socket. */
void th_proxy_stop(th_proxy *px);

#endif
