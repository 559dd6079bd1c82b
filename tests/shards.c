/* shards.c -- see shards.h. */
#include "shards.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "placement.h"
#include "psmath.h"

/* ---- the test's shards ---------------------------------------------------------- */

static th_psd shards[TS_MAX_SHARDS];
static int nshards;

void ts_kill_all(void) {
  for (int i = 0; i < nshards; i++)
    if (shards[i].pid > 0) {
      kill(shards[i].pid, SIGCONT);
      th_psd_stop(&shards[i], SIGKILL, 2000);
    }
  nshards = 0;
}

/* Check runs each test in a forked process: the kill at exit is registered
 * there, by the first start, so that no shard outlives its test whether it
 * passed or a ck_assert ended it. */
static void kill_at_exit(void) {
  static pid_t registered;
  if (registered == getpid()) return;
  registered = getpid();
  atexit(ts_kill_all);
}

th_psd *ts_start(int port, const char *const *extra) {
  kill_at_exit();
  ck_assert_int_lt(nshards, TS_MAX_SHARDS);
  th_psd *p = &shards[nshards];
  ck_assert_msg(th_psd_start(p, port, extra) == 0, "cannot start %s", th_psd_bin());
  nshards++;
  return p;
}

th_psd *ts_start_cluster(int n, const char *const *extra, char *list, size_t len) {
  th_psd *first = NULL;
  list[0] = '\0';
  for (int i = 0; i < n; i++) {
    th_psd *p = ts_start(0, extra);
    if (i == 0) first = p;
    size_t k = strlen(list);
    snprintf(list + k, len - k, "%s%s", i ? "," : "", p->addr);
  }
  return first;
}

void ts_stop_clean(th_psd *p) {
  int st = th_psd_stop(p, SIGTERM, WAIT_MS);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "psd on %s did not exit cleanly (%d)",
                p->addr, st);
}

void ts_stop_all_clean(void) {
  for (int i = 0; i < nshards; i++)
    if (shards[i].pid > 0) ts_stop_clean(&shards[i]);
  nshards = 0;
}

/* ---- clients --------------------------------------------------------------------- */

void ts_options(ps_options *o, int rank, int nw, int staleness) {
  ps_options_init(o);
  o->rank = rank;
  o->num_workers = nw;
  o->staleness = staleness;
  o->op_timeout_ms = WAIT_MS;
  o->connect_timeout_ms = WAIT_MS;
}

ps_client *ts_connect(const char *list, const ps_options *o) {
  ps_client *c = NULL;
  int rc = ps_connect(&c, list, o);
  ck_assert_msg(rc == 0, "ps_connect(%s) job %s rank %d: %s: %s", list,
                o->job ? o->job : "(default)", o->rank, ps_strerror(rc), ps_last_error());
  return c;
}

ps_client *ts_connect_as(const char *list, int rank, int nw, int staleness) {
  ps_options o;
  ts_options(&o, rank, nw, staleness);
  return ts_connect(list, &o);
}

ps_client *ts_connect_tool(const char *list) { return ts_connect_as(list, -1, 1, -1); }

/* ---- the shards' counters --------------------------------------------------------- */

long long ts_stat(ps_client *c, int shard, const char *key) {
  char *json, pat[64];
  CK_PS(c, ps_stats(c, shard, &json));
  snprintf(pat, sizeof(pat), "\"%s\":", key);
  const char *p = strstr(json, pat);
  long long v = p ? atoll(p + strlen(pat)) : -1;
  free(json);
  return v;
}

void ts_wait_stat(ps_client *c, int shard, const char *key, long long want) {
  long long v = -1;
  for (int i = 0; i < WAIT_MS / 10; i++) {
    if ((v = ts_stat(c, shard, key)) >= want) return;
    struct timespec ts = {0, 10 * 1000000L};
    nanosleep(&ts, NULL);
  }
  ck_abort_msg("shard %d: %s stayed at %lld, below %lld", shard, key, v, want);
}

long long ts_table_stat(ps_client *c, int shard, const char *name, const char *field) {
  char *json = NULL, pat[300];
  CK_PS(c, ps_stats(c, shard, &json));
  snprintf(pat, sizeof(pat), "\"name\":\"%s\"", name);
  const char *p = strstr(json, "\"tables\":[");
  p = p ? strstr(p, pat) : NULL;
  long long v = -1;
  if (p != NULL) {
    const char *end = strchr(p, '}');
    snprintf(pat, sizeof(pat), "\"%s\":", field);
    const char *f = strstr(p, pat);
    if (f != NULL && f < end) v = strtoll(f + strlen(pat), NULL, 10);
  }
  free(json);
  return v;
}

/* ---- placement -------------------------------------------------------------------- */

void ts_spread_name(const char *list, const char *base, uint64_t nblocks, char *out,
                    size_t len) {
  psp_servers sv;
  char err[128];
  ck_assert_int_eq(psp_servers_parse(&sv, list, err, sizeof(err)), 0);
  ck_assert_int_le(sv.n, 64);
  for (int k = 0; k < 100000; k++) {
    if (k) snprintf(out, len, "%s%d", base, k);
    else snprintf(out, len, "%s", base);
    int owned[64] = {0}, all = 1;
    for (uint64_t b = 0; b < nblocks; b++) owned[psp_owner(&sv, psm_hash_name(out), b)]++;
    for (int i = 0; i < sv.n; i++) all &= owned[i] > 0;
    if (all) {
      psp_servers_free(&sv);
      return;
    }
  }
  ck_abort_msg("no name spreads %llu blocks over %s", (unsigned long long)nblocks, list);
}
