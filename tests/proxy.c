/* proxy.c -- see proxy.h. */
#include "proxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"

static void close_pair(th_proxy *px) {
  if (px->cfd >= 0) close(px->cfd);
  if (px->sfd >= 0) close(px->sfd);
  px->cfd = px->sfd = -1;
}

static int write_all(int fd, const char *b, ssize_t n) {
  while (n > 0) {
    ssize_t w = write(fd, b, (size_t)n);
    if (w <= 0) return -1;
    b += w;
    n -= w;
  }
  return 0;
}

/* What the shard sent: swallowed, cut to the budget, or forwarded. */
static void forward_down(th_proxy *px, const char *buf, ssize_t n) {
  if (atomic_load(&px->drop_down)) return;
  long long budget = atomic_load(&px->down_budget);
  if (budget >= 0 && n > budget) n = (ssize_t)budget; /* the rest is dropped */
  if (budget >= 0) atomic_fetch_sub(&px->down_budget, n);
  /* Counted before the write: the client may act on these bytes before
   * write_all returns here. */
  atomic_fetch_add(&px->forwarded, n);
  if (n > 0 && write_all(px->cfd, buf, n) != 0) close_pair(px);
}

static void *proxy_main(void *arg) {
  th_proxy *px = arg;
  char buf[65536];
  while (!atomic_load(&px->stop)) {
    if (atomic_exchange(&px->cut, 0)) close_pair(px);
    struct pollfd f[3] = {{px->lfd, POLLIN, 0}, {px->cfd, POLLIN, 0}, {px->sfd, POLLIN, 0}};
    if (poll(f, 3, 20) <= 0) continue;
    if (f[0].revents & POLLIN) {
      int fd = accept(px->lfd, NULL, NULL);
      if (fd >= 0) {
        close_pair(px);
        px->cfd = fd;
        px->sfd = th_connect(px->upstream);
        atomic_fetch_add(&px->accepted, 1);
      }
      continue;
    }
    if (px->cfd >= 0 && (f[1].revents & (POLLIN | POLLHUP | POLLERR))) {
      ssize_t n = read(px->cfd, buf, sizeof(buf));
      if (n <= 0 || write_all(px->sfd, buf, n) != 0) close_pair(px);
    }
    if (px->sfd >= 0 && (f[2].revents & (POLLIN | POLLHUP | POLLERR))) {
      ssize_t n = read(px->sfd, buf, sizeof(buf));
      if (n <= 0) close_pair(px);
      else forward_down(px, buf, n);
    }
  }
  close_pair(px);
  close(px->lfd);
  return NULL;
}

int th_proxy_start(th_proxy *px, int upstream) {
  memset(px, 0, sizeof(*px));
  px->cfd = px->sfd = -1;
  atomic_store(&px->down_budget, -1);
  px->upstream = upstream;
  px->lfd = socket(AF_INET, SOCK_STREAM, 0);
  if (px->lfd < 0) return -1;
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  if (bind(px->lfd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(px->lfd, 8) != 0 ||
      getsockname(px->lfd, (struct sockaddr *)&a, &len) != 0) {
    close(px->lfd);
    return -1;
  }
  px->port = ntohs(a.sin_port);
  snprintf(px->addr, sizeof(px->addr), "127.0.0.1:%d", px->port);
  if (pthread_create(&px->th, NULL, proxy_main, px) != 0) {
    close(px->lfd);
    return -1;
  }
  return 0;
}

void th_proxy_stop(th_proxy *px) {
  atomic_store(&px->stop, 1);
  pthread_join(px->th, NULL);
}
