/*
 * attacks_conns.c -- attacks on connections and on the event loop: 2000
 * idle connections, a slowloris at one byte a second, one connection
 * re-helloing as 4094 ranks each with a barrier, and a shard out of file
 * descriptors.
 */
#include "hostile.h"

#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* 2000 connections that say nothing: 1000 never say hello (closed at
 * --hello-timeout), 1000 say hello as readers and fall silent (closed at
 * --idle-timeout). The job is served meanwhile. */
void attack_idle_2000(h_scene *s) {
  enum { N = 2000 };
  double hello0 = h_stat(s, "limits", "closed_hello");
  double idle0 = h_stat(s, "limits", "closed_idle");
  static rc c[N];
  for (int i = 0; i < N; i++) {
    if (i % 2) h_tool(&c[i], s, PSA_READER, h_addr());
    else h_open(&c[i], s, h_addr());
  }
  double conns = h_stat(s, NULL, "connections");
  printf("hostile:   %.0f connections open\n", conns);
  h_legit_step(s);
  /* Decided by the shard's own counters, whatever the timeouts' speed. */
  h_wait_stat_ge(s, "limits", "closed_hello", hello0 + N / 2);
  h_wait_stat_ge(s, "limits", "closed_idle", idle0 + N / 2);
  for (int i = 0; i < N; i++) {
    H_CHECK(h_wait_closed(c[i].fd), "idle connection %d was never closed", i);
    rc_close(&c[i]);
  }
}

/* "127.0.0.N:PORT" of a connected socket's local end: the peer the shard
 * names in its log. */
static void local_name(int fd, char *out, size_t len) {
  struct sockaddr_in a;
  socklen_t al = sizeof(a);
  char ip[INET_ADDRSTRLEN] = "?";
  getsockname(fd, (struct sockaddr *)&a, &al);
  inet_ntop(AF_INET, &a.sin_addr, ip, sizeof(ip));
  snprintf(out, len, "%s:%d", ip, ntohs(a.sin_port));
}

/* Read what has come (the challenge, an Error); 0 once the peer closed. */
static int still_open(int fd) {
  char buf[4096];
  for (;;) {
    ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n > 0) continue;
    if (n == 0) return 0;
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
  }
}

/* A slowloris: one byte a second, on a connection that never finishes its
 * hello's frame and on a reader that never finishes a request's. Each is
 * closed; decided by the shard's log line naming it (--frame-timeout 2). */
void attack_slowloris(h_scene *s) {
  rc a, b;
  h_open(&a, s, h_addr());
  h_tool(&b, s, PSA_READER, h_addr());
  char name_a[64], name_b[64], line_a[128], line_b[128];
  local_name(a.fd, name_a, sizeof(name_a));
  local_name(b.fd, name_b, sizeof(name_b));
  snprintf(line_a, sizeof(line_a), "closing %s: a frame started", name_a);
  snprintf(line_b, sizeof(line_b), "closing %s: a frame started", name_b);
  /* a: the bytes of a hello's frame; b: a frame of 1 KiB announced whole,
   * its payload a byte at a time. */
  uint8_t head[PSW_HEADER_SIZE];
  rc_header(head, 1024);
  H_CHECK(rc_send_all(b.fd, head, sizeof(head)) == 0, "send");
  int open_a = 1, open_b = 1, legit_done = 0;
  for (int sec = 0; (open_a || open_b) && sec < H_WAIT_MS / 1000; sec++) {
    if (open_a) open_a = rc_send_all(a.fd, &head[sec % PSW_HEADER_SIZE], 1) == 0;
    if (open_b) open_b = rc_send_all(b.fd, "x", 1) == 0;
    if (!legit_done) {
      h_legit_step(s); /* served while the slow frames trickle in */
      legit_done = 1;
    }
    /* Pacing: the attack's own rate, a byte a second; the wait ends early
     * when the shard writes or closes. */
    struct pollfd p[2] = {{a.fd, POLLIN, 0}, {b.fd, POLLIN, 0}};
    poll(p, 2, 1000);
    if (open_a) open_a = still_open(a.fd);
    if (open_b) open_b = still_open(b.fd);
  }
  rc_close(&a);
  rc_close(&b);
  /* The shard says it closed each for its unfinished frame (the one that
   * never said hello may have met --hello-timeout first). */
  char hello_a[128];
  snprintf(hello_a, sizeof(hello_a), "closing %s: no hello within", name_a);
  for (int waited = 0; !(h_log_count(s, line_a) || h_log_count(s, hello_a)); waited += 20) {
    H_CHECK(waited < H_WAIT_MS, "the shard never said it closed the slow pre-hello peer %s",
            name_a);
    h_sleep_ms(20);
  }
  h_wait_log_count(s, line_b, 1);
  printf("hostile:   both slow peers closed (the shard: '%s%s')\n", line_b, " ... not whole");
}

/* One worker connection says hello as rank 2, 3, ... 4095 of the 4096-
 * worker job, each followed by a barrier the job's live ranks 0 and 1 never
 * join: 4094 barriers held, each arrival O(1) in the waiters. */
void attack_rehello_4096_barriers(h_scene *s) {
  rc c;
  h_open(&c, s, h_addr());
  for (int rank = 2; rank < 4096; rank++) {
    rc_hello_args a = h_args(s, PSA_WORKER, rank);
    h_hello_ok(&c, &a, "a re-hello as another rank");
    Psd__Request r = PSD__REQUEST__INIT;
    Psd__Barrier ba = PSD__BARRIER__INIT;
    ba.gen = 1;
    r.body_case = PSD__REQUEST__BODY_BARRIER;
    r.barrier = &ba;
    H_CHECK(rc_post(&c, &r, NULL, 0) == 0, "send a barrier");
  }
  char *json = h_stats(s);
  double joins = rc_json_num(json, "group", "joins", NULL);
  free(json);
  printf("hostile:   %.0f ranks joined, 4094 barriers held on one connection\n", joins);
  H_CHECK(joins >= 4096, "only %.0f ranks joined", joins);
  h_legit_step(s);
  rc_reset(&c); /* its held barriers are dropped with it */
}

/* The shard runs with 64 descriptors (--max-clients 1000 above it): 150
 * connections exhaust them. The job, already connected, is served; the
 * shard logs it; once they close, new connections are served again. */
void attack_fd_exhaustion(h_scene *s) {
  enum { N = 150 };
  int fds[N];
  int logged0 = h_log_count(s, "out of file descriptors");
  for (int i = 0; i < N; i++) {
    rc c;
    h_open(&c, s, h_addr());
    fds[i] = c.fd;
    c.fd = -1; /* kept open; the buffer freed */
    rc_close(&c);
  }
  h_wait_log_count(s, "out of file descriptors", logged0 + 1);
  h_legit_step(s);
  for (int i = 0; i < N; i++) close(fds[i]);
  /* Served again once descriptors are back: polled, bounded. */
  int served = 0;
  for (int waited = 0; !served; waited += 20) {
    H_CHECK(waited < H_WAIT_MS, "no new connection served after the descriptors came back");
    rc c;
    h_open(&c, s, NULL);
    Psd__Response *first = NULL;
    if (rc_challenge(&c, &first) == 0) {
      rc_hello_args a = h_args(s, PSA_ADMIN, -1);
      h_hello_ok(&c, &a, "a hello after the exhaustion");
      served = 1;
    }
    if (first) psd__response__free_unpacked(first, NULL);
    rc_close(&c);
    if (!served) h_sleep_ms(20);
  }
  H_CHECK(h_stat(s, "limits", "accept_errors") >= 1, "no accept error counted");
}
