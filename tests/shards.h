/*
 * shards.h -- for the Check programs that test through the library (psd.h):
 * the test's shards, started on ephemeral loopback ports and killed when
 * the test process exits, passed or not; clients connected to them with
 * bounds far beyond need; the shards' counters read and waited for.
 *
 * Everything here asserts with Check: a shard that does not start, a
 * connect or a call that fails ends the test with a sentence saying what
 * failed. Nothing decides by elapsed time: WAIT_MS only turns a hang into
 * a failure.
 */
#ifndef PSD_TEST_SHARDS_H
#define PSD_TEST_SHARDS_H

#include <check.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "harness.h"
#include "psd.h"

/* How long a test waits for a state before calling it a hang. */
#define WAIT_MS 120000

/* ---- the test's shards ---------------------------------------------------------- */

/* At most this many shards per test. */
#define TS_MAX_SHARDS 8

/* Start a shard on 127.0.0.1:port (0: ephemeral) with extra arguments
 * (NULL-terminated, may be NULL). It is killed when the process exits. */
th_psd *ts_start(int port, const char *const *extra);
/* Start n shards with the same extra arguments; their addresses go to
 * list, comma-separated, in order. Returns the first (the others follow it
 * in memory: ts_start_cluster(...)[i] is shard i). */
th_psd *ts_start_cluster(int n, const char *const *extra, char *list, size_t len);
/* Stop one shard with SIGTERM: it must exit 0 (under PSD_WRAPPER=valgrind,
 * a leak or a bad access makes that exit 99). */
void ts_stop_clean(th_psd *p);
/* ts_stop_clean every shard still running. */
void ts_stop_all_clean(void);
/* Kill every shard (SIGCONT first: a test may have stopped one). A checked
 * fixture's teardown; the exit of the process does it too. */
void ts_kill_all(void);

/* ---- clients --------------------------------------------------------------------- */

/* A call on c must succeed; else the test fails naming the call, the code
 * and the handle's message. */
#define CK_PS(c, call)                                                              \
  do {                                                                              \
    int rc_ = (call);                                                               \
    ck_assert_msg(rc_ == 0, "%s: %s: %s", #call, ps_strerror(rc_), ps_errmsg(c));   \
  } while (0)

/* The call fails with `code` and a sentence holding `words`. */
#define CK_FAILS(c, call, code, words)                                               \
  do {                                                                               \
    int rc_ = (call);                                                                \
    ck_assert_msg(rc_ == (code), "%s: %s (%s), expected %s", #call, ps_strerror(rc_), \
                  ps_errmsg(c), ps_strerror(code));                                  \
    ck_assert_msg(strstr(ps_errmsg(c), (words)) != NULL, "%s: '%s' lacks '%s'", #call, \
                  ps_errmsg(c), (words));                                            \
  } while (0)

/* Options for rank (-1: a tool) of a job of nw workers with staleness,
 * connect and operation timeouts WAIT_MS; the rest the library's defaults. */
void ts_options(ps_options *o, int rank, int nw, int staleness);
/* ps_connect to list with o, which must succeed. */
ps_client *ts_connect(const char *list, const ps_options *o);
/* ts_connect with ts_options(rank, nw, staleness). */
ps_client *ts_connect_as(const char *list, int rank, int nw, int staleness);
/* A tool (rank -1) of a 1-worker async job. */
ps_client *ts_connect_tool(const char *list);

/* ---- the shards' counters --------------------------------------------------------- */

/* The number after the first "key": in shard `shard`'s stats JSON, or -1. */
long long ts_stat(ps_client *c, int shard, const char *key);
/* Poll ts_stat until it is at least want (at most WAIT_MS). */
void ts_wait_stat(ps_client *c, int shard, const char *key, long long want);
/* Field `field` of table `name`'s object in shard's stats, or -1 when the
 * shard has no such table. */
long long ts_table_stat(ps_client *c, int shard, const char *name, const char *field);

/* ---- placement -------------------------------------------------------------------- */

/* A tensor name, `base` or `base` plus a number, whose blocks [0, nblocks)
 * land on every shard of `list`. Placement hashes the addresses, and the
 * ports are free ones picked at random: with a fixed name a shard would now
 * and then own none of the blocks a test counts on it. */
void ts_spread_name(const char *list, const char *base, uint64_t nblocks, char *out,
                    size_t len);

#endif
