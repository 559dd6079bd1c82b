/*
 * checkpoint.c -- background saves of a shard's state to --data-dir.
 *
 * Like Redis's BGSAVE, the event loop forks; the child writes the snapshot
 * it inherited (copy-on-write) to ckpt-SEQ.tmp, fsyncs, renames it to
 * ckpt-SEQ.psd and fsyncs the directory, then exits. The parent only pays
 * for fork() itself. At shutdown the same writer runs in-process.
 *
 * Right after fork the child closes every descriptor but stdin, stdout and
 * stderr (the first two on /dev/null): the listening socket, the clients'
 * sockets, lanes' memfds (their mappings stay) and libuv's own. A child
 * that kept them would hold the port after psd is killed (a restart would
 * find it in use) and keep connections the parent closed open. It also dies
 * with its parent (PR_SET_PDEATHSIG): after a kill -9 no orphan goes on
 * writing into a directory a restarted psd owns.
 *
 * The format, what is saved, restore and pruning: ckpt.h and ckpt_*.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "checkpoint.h"
#include "json.h"
#include "ckpt.h"
#include "outbox.h"
#include "waiter.h"
#include "log.h"
#include "numfmt.h"
#include "metrics.h"

/* ---- background saves -------------------------------------------------------- */

/* Answer the requests the save that just ended was started for. */
static void ckpt_finish(psd_server *srv, int ok, const char *msg) {
  while (!psd_link_empty(&srv->ckpt_inflight)) {
    psd_waiter *w = psd_link_entry(srv->ckpt_inflight.next, psd_waiter, wait_link);
    if (ok) outbox_ack(&srv->outbox, w->conn, w->id, msg);
    else outbox_error(&srv->outbox, w->conn, w->id, PSD__CODE__IO, "checkpoint failed: %s", msg);
    waiter_free(w);
  }
}

/* In the forked writer, first thing: die with the parent, close every
 * inherited descriptor but stderr (stdin and stdout go to /dev/null, so
 * that no file the child opens takes their numbers), default signals. */
static void child_detach(pid_t parent) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(1); /* the parent died before prctl */
  if (close_range(3, ~0U, 0) != 0) {
    struct rlimit rl;
    rlim_t max = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY
                     ? rl.rlim_cur : 65536;
    for (rlim_t fd = 3; fd < max; fd++) close((int)fd);
  }
  int null = open("/dev/null", O_RDWR);
  if (null >= 0) {
    dup2(null, STDIN_FILENO);
    dup2(null, STDOUT_FILENO);
    if (null > STDERR_FILENO) close(null);
  }
  signal(SIGTERM, SIG_DFL);
  signal(SIGINT, SIG_DFL);
  signal(SIGCHLD, SIG_DFL);
}

static double ckpt_started_ms;
static double ckpt_fork_ms;
static void ckpt_kick(psd_server *srv);

static void ckpt_begin(psd_server *srv) {
  if (srv->ckpt_child != 0 || !srv->cfg.data_dir[0]) return;
  uint64_t seq = ++srv->ckpt_seq;
  uint64_t t0 = uv_hrtime();
  /* The requests waiting now are answered by this save; any that arrive
   * while it runs wait for the next one (they may follow newer pushes). */
  while (!psd_link_empty(&srv->ckpt_waiters)) {
    psd_link *l = srv->ckpt_waiters.next;
    psd_link_remove(l);
    psd_link_insert_tail(&srv->ckpt_inflight, l);
  }
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid == 0) {
    /* The child owns a frozen copy of the state: write it and leave
     * without running any of the parent's exit handlers. */
    child_detach(parent);
    int err = ckpt_write_file(srv, seq);
    if (err != 0) log_error("checkpoint %llu: %s", (unsigned long long)seq, strerror(err));
    _exit(err == 0 ? 0 : 1);
  }
  double pause = (double)(uv_hrtime() - t0) / 1e6;
  if (pid < 0) {
    snprintf(srv->ckpt_last_error, sizeof(srv->ckpt_last_error), "fork: %s", strerror(errno));
    log_error("checkpoint: %s", srv->ckpt_last_error);
    metrics_ckpt_done(srv, seq, 0);
    ckpt_finish(srv, 0, srv->ckpt_last_error);
    return;
  }
  srv->ckpt_child = pid;
  ckpt_started_ms = (double)psd_now_ms();
  ckpt_fork_ms = pause;
  log_debug("checkpoint %llu: writer pid %d (fork took %s ms)", (unsigned long long)seq,
            (int)pid, psn_num_at(pause, 3).s);
}

static void sigchld_cb(uv_signal_t *h, int signum) {
  psd_server *srv = h->data;
  (void)signum;
  if (srv->ckpt_child == 0) return;
  int status;
  pid_t p = waitpid(srv->ckpt_child, &status, WNOHANG);
  if (p != srv->ckpt_child) return;
  srv->ckpt_child = 0;
  char msg[256];
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
    srv->ckpt_written++;
    srv->ckpt_last_ms = (double)psd_now_ms() - ckpt_started_ms;
    srv->ckpt_last_error[0] = '\0';
    snprintf(msg, sizeof(msg),
             "checkpoint %llu written in %s ms in the background (the event loop paused "
             "%s ms for fork)",
             (unsigned long long)srv->ckpt_seq, psn_num(srv->ckpt_last_ms).s,
             psn_num_at(ckpt_fork_ms, 3).s);
    log_info("%s", msg);
    srv->ckpt_good_seq = srv->ckpt_seq;
    metrics_ckpt_done(srv, srv->ckpt_seq, 1);
    ckpt_prune(srv);
    ckpt_finish(srv, 1, msg);
  } else {
    snprintf(srv->ckpt_last_error, sizeof(srv->ckpt_last_error),
             "writer for checkpoint %llu failed", (unsigned long long)srv->ckpt_seq);
    log_error("%s", srv->ckpt_last_error);
    metrics_ckpt_done(srv, srv->ckpt_seq, 0);
    ckpt_finish(srv, 0, srv->ckpt_last_error);
  }
  /* Requests that came in during this save get a fresh one. */
  if (!psd_link_empty(&srv->ckpt_waiters) && !srv->stopping) ckpt_kick(srv);
}

static void ckpt_timer_cb(uv_timer_t *t) {
  server_turn_mark(t->data);
  ckpt_begin(t->data);
}

/* Fork from a timer callback, never from inside a request handler: the
 * child then inherits no half-handled request (and valgrind, following the
 * child, sees every allocation still reachable). */
static void ckpt_kick(psd_server *srv) {
  uv_timer_start(&srv->ckpt_kick, ckpt_timer_cb, 0, 0);
}

void ckpt_start(psd_server *srv) {
  if (!srv->cfg.data_dir[0]) return;
  uv_signal_init(srv->loop, &srv->sigchld);
  srv->sigchld.data = srv;
  uv_signal_start(&srv->sigchld, sigchld_cb, SIGCHLD);
  uv_timer_init(srv->loop, &srv->ckpt_timer);
  srv->ckpt_timer.data = srv;
  uv_timer_init(srv->loop, &srv->ckpt_kick);
  srv->ckpt_kick.data = srv;
  if (srv->cfg.checkpoint_every > 0) {
    uint64_t ms = (uint64_t)(srv->cfg.checkpoint_every * 1000.0);
    uv_timer_start(&srv->ckpt_timer, ckpt_timer_cb, ms, ms);
  }
}

void ckpt_request(psd_server *srv, psd_conn *c, uint64_t id) {
  if (!srv->cfg.data_dir[0]) {
    outbox_error(&srv->outbox, c, id, PSD__CODE__IO,
                 "this psd runs without --data-dir; nothing to write to");
    return;
  }
  psd_waiter *w = waiter_new(c, id, PSD_WAIT_CHECKPOINT, 0);
  if (w == NULL) {
    waiter_fail(srv, c, id);
    return;
  }
  psd_link_insert_tail(&srv->ckpt_waiters, &w->wait_link);
  /* A save already running holds an older snapshot; the waiter is served
   * by the next one, started when it ends. */
  if (srv->ckpt_child == 0) ckpt_kick(srv);
}

void ckpt_stop(psd_server *srv) {
  if (!srv->cfg.data_dir[0]) return;
  uv_timer_stop(&srv->ckpt_timer);
  uv_close((uv_handle_t *)&srv->ckpt_timer, NULL);
  uv_close((uv_handle_t *)&srv->ckpt_kick, NULL);
  uv_signal_stop(&srv->sigchld);
  uv_close((uv_handle_t *)&srv->sigchld, NULL);
}

int ckpt_write_now(psd_server *srv) {
  if (srv->ckpt_child != 0) {
    int status;
    if (waitpid(srv->ckpt_child, &status, 0) == srv->ckpt_child && WIFEXITED(status) &&
        WEXITSTATUS(status) == 0)
      srv->ckpt_good_seq = srv->ckpt_seq;
    srv->ckpt_child = 0;
  }
  uint64_t seq = ++srv->ckpt_seq;
  uint64_t t0 = psd_now_ms();
  int err = ckpt_write_file(srv, seq);
  if (err != 0) {
    log_error("final checkpoint to %s failed: %s", srv->cfg.data_dir, strerror(err));
    return -1;
  }
  srv->ckpt_good_seq = seq;
  ckpt_prune(srv);
  log_info("final checkpoint %llu written in %s s", (unsigned long long)seq,
           psn_num((double)(psd_now_ms() - t0) / 1000.0).s);
  return 0;
}

void ckpt_json(psd_server *srv, char *buf, size_t len) {
  char err[sizeof(srv->ckpt_last_error)];
  json_escape(err, sizeof(err), srv->ckpt_last_error);
  snprintf(buf, len,
           "{\"enabled\":%s,\"seq\":%llu,\"written\":%llu,\"in_progress\":%s,"
           "\"last_duration_ms\":%s,\"last_error\":\"%s\"}",
           srv->cfg.data_dir[0] ? "true" : "false", (unsigned long long)srv->ckpt_seq,
           (unsigned long long)srv->ckpt_written, srv->ckpt_child ? "true" : "false",
           psn_num(srv->ckpt_last_ms).s, err);
}
