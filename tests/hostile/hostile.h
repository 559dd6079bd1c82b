/*
 * hostile.h -- the hostile-client suite: attacks on real shards by clients
 * that speak the protocol correctly (tests/rawclient.h), each followed by
 * the same three checks (hostile.c):
 *   (a) the sentinel tensor, created before the first attack, is byte for
 *       byte what it was, at the same version;
 *   (b) the legitimate job (authenticated workers through the real
 *       library) still pushes and pulls, and its weights are exactly what
 *       its own gradients make of them (no gradient of anyone else's got
 *       in), within a generous liveness deadline, never a speed bound;
 *   (c) the shard's peak RSS (VmHWM) stays within --max-memory plus
 *       H_RSS_SLACK.
 * The shards run with tokens, a small --max-memory and --stall-log-ms 1:
 * every loop turn of 1 ms or more is in the shard's log, so the worst turn
 * of each attack is read there, and the shard's own stats give the worst
 * overall.
 *
 * Attacks live in attacks_job.c (identity, ranks, rounds, clocks, names,
 * lanes), attacks_memory.c (creates, big frames, readers that never read,
 * pipelined pulls, pushes to a vast tensor) and attacks_conns.c (idle
 * connections, slowloris, descriptors, re-hellos with barriers).
 *
 * Nothing is decided by time: a state is waited for (a stats figure, a log
 * line, a reply) with a bound (H_WAIT_MS) that only turns a hang into a
 * failure.
 */
#ifndef PSD_HOSTILE_H
#define PSD_HOSTILE_H

#include <stddef.h>
#include <stdint.h>

#include "harness.h"
#include "psd.h"
#include "rawclient.h"

/* Peak RSS allowed beyond --max-memory: the program and its libraries
 * (3.2 MiB at start), the helper thread and the allocator's own overhead,
 * none of which psd's account counts. The largest VmHWM seen over the suite
 * on this machine was 252 MiB, under the 256 MiB ceiling itself. */
#define H_RSS_SLACK (32ull << 20)
/* Bound on every wait: far beyond what any machine needs. */
#define H_WAIT_MS 300000

/* A shard under attack, with its sentinel and its legitimate job. */
typedef struct {
  const char *name;
  th_psd d;
  uint64_t max_memory;
  char data_dir[512];        /* "" = none */
  /* The legitimate job: ranks 0 and 1 of a job of nw workers. */
  int nw, staleness;
  int joined;
  ps_client *w[2];
  uint64_t w_sessions[2];    /* their session ids, from the shard's log */
  uint64_t steps;            /* steps the job has completed */
  ps_ticket pending[2];
  int has_pending[2];
  float *wbuf[2];
  /* The sentinel's bytes and version before the first attack. */
  float *sentinel;
  size_t sentinel_bytes;
  uint64_t sentinel_version;
} h_scene;

/* The legitimate job's tensor: SGD with lr 1 from zeros; rank 0 pushes 1,
 * rank 1 pushes 3 at every step. */
#define H_W "w"
#define H_W_N 1000
#define H_SENTINEL "sentinel"
#define H_SENTINEL_N 4096

/* ---- failing --------------------------------------------------------------------- */

/* Say what failed in which attack and exit 1 (the daemons are killed and
 * the logs kept). */
void h_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
#define H_CHECK(cond, ...) \
  do {                     \
    if (!(cond)) h_fail(__VA_ARGS__); \
  } while (0)
/* The reply is an Error with this code mentioning needle (NULL: any);
 * freed. `what` names the request in the failure. */
void h_expect_error(Psd__Response *resp, Psd__Code code, const char *needle, const char *what);
/* The reply has this body (an Error is a failure, its sentence shown); not
 * freed. */
void h_expect_body(Psd__Response *resp, Psd__Response__BodyCase body, const char *what);
/* The shard closed c: EOF after at most one more Error. */
void h_expect_closed(rc *c, const char *what);

/* ---- tokens and clients ---------------------------------------------------------- */

const char *h_token(int role);
const char *h_token_path(int role);
/* The next source address for an attacker's connections (127.0.0.20 and
 * up): failed authentications of one attack must not get the next one's
 * address refused by the limiter, nor the legitimate job's (127.0.0.1). */
const char *h_addr(void);
/* Connect from `from` (NULL: 127.0.0.1); failing to connect is a failure. */
void h_open(rc *c, const h_scene *s, const char *from);
/* A hello of `role` (-1: none and no proof) for `rank` of the scene's job. */
rc_hello_args h_args(const h_scene *s, int role, int rank);
/* A hello that must be accepted. */
void h_hello_ok(rc *c, const rc_hello_args *a, const char *what);
/* A connection with an accepted hello of `role` as a tool (rank -1). */
void h_tool(rc *c, const h_scene *s, int role, const char *from);

/* ---- the shard's figures ---------------------------------------------------------- */

/* The shard's stats (malloc'd), through an admin connection of its own. */
char *h_stats(const h_scene *s);
/* One figure of them ("obj" NULL: the first "key"). */
double h_stat(const h_scene *s, const char *obj, const char *key);
/* Wait until h_stat(...) >= want; its value. */
double h_wait_stat_ge(const h_scene *s, const char *obj, const char *key, double want);
/* Lines of the shard's log holding needle. */
int h_log_count(const h_scene *s, const char *needle);
/* Wait until at least n lines hold needle. */
void h_wait_log_count(const h_scene *s, const char *needle, int n);
/* The shard's peak RSS (VmHWM), bytes. */
uint64_t h_vmhwm(const h_scene *s);
/* Wait until the peer closes fd (EOF or reset), dropping what comes; 1 when
 * it did within H_WAIT_MS. */
int h_wait_closed(int fd);
void h_sleep_ms(int ms);

/* ---- the legitimate job ---------------------------------------------------------- */

/* Start rank r's push-pull of this step (rank 0 pushes 1, rank 1 pushes 3). */
void h_legit_push(h_scene *s, int r);
/* Wait for both ranks' push-pulls of this step (starting those not
 * started), check the values they got, advance the clock. */
void h_legit_finish(h_scene *s);
/* One whole step: check (b). */
void h_legit_step(h_scene *s);

/* ---- attacks ----------------------------------------------------------------------- */

typedef void (*h_attack_fn)(h_scene *s);

/* attacks_job.c (the sync scene) */
void attack_first_hello_65536(h_scene *s);
void attack_anonymous_writes(h_scene *s);
void attack_stranger_server_list(h_scene *s);
void attack_second_rank_1(h_scene *s);
void attack_impostor_dead_rank(h_scene *s);
void attack_clock_max(h_scene *s);
void attack_worker_id_seq_max(h_scene *s);
void attack_lane_requests(h_scene *s);
void attack_bad_names(h_scene *s);
/* attacks_memory.c (the async scene) */
void attack_huge_creates(h_scene *s);
void attack_stalled_64mib_frames(h_scene *s);
void attack_never_read(h_scene *s);
void attack_pipelined_16mib_pulls(h_scene *s);
void attack_vast_pushes(h_scene *s);
/* attacks_conns.c */
void attack_idle_2000(h_scene *s);
void attack_slowloris(h_scene *s);
void attack_rehello_4096_barriers(h_scene *s);
void attack_fd_exhaustion(h_scene *s);

#endif
