/*
 * attacks_job.c -- attacks on who a client is and what it may do to the
 * job: anonymous writes, a stranger's server list, a job announced first,
 * ranks taken, a dead rank revived, clocks, exactly-once records, lanes,
 * names that alias. Run against the sync shard (hostile.c): a job of 3
 * workers whose ranks 0 and 1 are live and rank 2 said goodbye.
 */
#include "hostile.h"
#include "msg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A hello refused, and the connection closed (a failed authentication). */
static void hello_unauthenticated(const h_scene *s, rc_hello_args *a, const char *needle,
                                  const char *what) {
  rc c;
  h_open(&c, s, h_addr());
  h_expect_error(rc_hello(&c, a), PSD__CODE__UNAUTHENTICATED, needle, what);
  h_expect_closed(&c, what);
  rc_close(&c);
}

/* The job announced first: before the legitimate job says hello, nobody
 * locks it out by announcing a job of 65536 sync workers. */
void attack_first_hello_65536(h_scene *s) {
  rc_hello_args a = h_args(s, -1, 0);
  a.nw = 65536;
  hello_unauthenticated(s, &a, "no proof", "an anonymous hello of a 65536-worker job");
  rc c;
  h_open(&c, s, h_addr());
  a = h_args(s, PSA_READER, 0);
  a.nw = 65536;
  h_expect_error(rc_hello(&c, &a), PSD__CODE__PERMISSION_DENIED, "may not join the job",
                 "a reader's hello as rank 0 of 65536");
  rc_close(&c);
  h_open(&c, s, h_addr());
  a = h_args(s, PSA_WORKER, 0);
  a.nw = 65536;
  h_expect_error(rc_hello(&c, &a), PSD__CODE__WRONG_SHARD, "--max-workers 1024",
                 "a worker's hello of a 65536-worker job");
  rc_close(&c);
  char *json = h_stats(s);
  H_CHECK(strstr(json, "\"group\":{\"configured\":false") != NULL,
          "a refused hello configured a job: %.200s", strstr(json, "\"group\""));
  free(json);
  /* The legitimate job of 3 then joins (hostile.c, after this attack). */
}

/* Writes, creates and checkpoints from clients without the role. */
void attack_anonymous_writes(h_scene *s) {
  float g[H_SENTINEL_N];
  for (int i = 0; i < H_SENTINEL_N; i++) g[i] = -999.7f;
  double written = h_stat(s, "checkpoint", "written");
  ps_tensor_spec spec;
  ps_tensor_spec_init(&spec, PS_INIT_ZEROS, PS_OPT_SGD);
  uint64_t shape[1] = {16};

  /* No hello at all: nothing but hello and ping is served. */
  rc c;
  h_open(&c, s, h_addr());
  h_expect_error(rc_push(&c, H_SENTINEL, 0, 1, g, H_SENTINEL_N, 0, NULL, NULL),
                 PSD__CODE__NOT_READY, "hello", "a push before any hello");
  h_expect_error(rc_create(&c, "evil", shape, 1, &spec), PSD__CODE__NOT_READY, "hello",
                 "a create before any hello");
  h_expect_error(rc_simple(&c, PSD__REQUEST__BODY_CHECKPOINT, 0), PSD__CODE__NOT_READY,
                 "hello", "a checkpoint before any hello");
  rc_close(&c);

  /* A hello without a proof, and one with a made-up admin token. */
  rc_hello_args a = h_args(s, PSA_ADMIN, -1);
  a.token = NULL;
  hello_unauthenticated(s, &a, "no proof", "an admin hello without a proof");
  a.token = "a-made-up-admin-token-0123456789";
  hello_unauthenticated(s, &a, "wrong proof", "an admin hello with a made-up token");

  /* A reader: no writes, creates or checkpoints. */
  h_tool(&c, s, PSA_READER, h_addr());
  h_expect_error(rc_push(&c, H_SENTINEL, 0, 1, g, H_SENTINEL_N, 0, NULL, NULL),
                 PSD__CODE__PERMISSION_DENIED, "role reader may not push", "a reader's push");
  h_expect_error(rc_create(&c, "evil", shape, 1, &spec), PSD__CODE__PERMISSION_DENIED,
                 "role reader may not create", "a reader's create");
  for (int i = 0; i < 10; i++)
    h_expect_error(rc_simple(&c, PSD__REQUEST__BODY_CHECKPOINT, 0),
                   PSD__CODE__PERMISSION_DENIED, "may not checkpoint", "a reader's checkpoint");
  rc_close(&c);

  /* A worker's token, as a tool: no checkpoint, and in a sync job no push
   * outside the rounds (an admin's neither). */
  h_tool(&c, s, PSA_WORKER, h_addr());
  h_expect_error(rc_simple(&c, PSD__REQUEST__BODY_CHECKPOINT, 0), PSD__CODE__PERMISSION_DENIED,
                 "may not checkpoint", "a worker's checkpoint");
  h_expect_error(rc_push(&c, H_SENTINEL, 0, 1, g, H_SENTINEL_N, 0, NULL, NULL),
                 PSD__CODE__PERMISSION_DENIED, "push from a tool", "a worker tool's push");
  rc_close(&c);
  h_tool(&c, s, PSA_ADMIN, NULL);
  h_expect_error(rc_push(&c, H_SENTINEL, 0, 1, g, H_SENTINEL_N, 0, NULL, NULL),
                 PSD__CODE__PERMISSION_DENIED, "push from a tool", "an admin tool's push");
  Psd__Request r = PSD__REQUEST__INIT;
  Psd__Lookup lk = PSD__LOOKUP__INIT;
  lk.name = "evil";
  r.body_case = PSD__REQUEST__BODY_LOOKUP;
  r.lookup = &lk;
  h_expect_error(rc_call(&c, &r, NULL, 0, NULL, NULL), PSD__CODE__NOT_FOUND, NULL,
                 "the lookup of a tensor nobody may have created");
  rc_close(&c);
  H_CHECK(h_stat(s, "checkpoint", "written") == written,
          "a checkpoint was written by someone without the admin role");
}

/* A stranger's server list: it is not adopted, and it cannot break stats. */
void attack_stranger_server_list(h_scene *s) {
  char mine[64];
  snprintf(mine, sizeof(mine), "\"servers\":\"127.0.0.1:%d\"", s->d.port);
  const char *list = "10.6.6.6:7070,evil\"host\\:1";
  rc_hello_args a = h_args(s, -1, -1);
  a.servers = list;
  hello_unauthenticated(s, &a, "no proof", "an anonymous hello with a stranger's list");
  for (int role = PSA_READER; role <= PSA_WORKER; role++) {
    rc c;
    h_open(&c, s, h_addr());
    a = h_args(s, role, -1);
    a.servers = "10.6.6.6:7070,10.6.6.7:7070";
    a.shard_index = 1;
    h_hello_ok(&c, &a, "a hello with another list");
    float *v = NULL;
    size_t n;
    h_expect_error(rc_pull(&c, H_SENTINEL, 0, &v, &n), PSD__CODE__WRONG_SHARD,
                   "the client says entry 1 of '10.6.6.6:7070,10.6.6.7:7070'",
                   "a pull with another list");
    free(v);
    rc_close(&c);
  }
  char *json = h_stats(s);
  H_CHECK(strstr(json, mine) != NULL, "the shard's list changed: %.200s",
          strstr(json, "\"servers\""));
  free(json);
}

/* A second rank 1 while the real one is live. */
void attack_second_rank_1(h_scene *s) {
  rc_hello_args a = h_args(s, -1, 1);
  hello_unauthenticated(s, &a, "no proof", "an anonymous hello as rank 1");
  rc c;
  h_open(&c, s, h_addr());
  a = h_args(s, PSA_WORKER, 1);
  h_expect_error(rc_hello(&c, &a), PSD__CODE__PERMISSION_DENIED,
                 "worker rank 1 is held by another live session", "a second rank 1");
  /* Nothing it sends counts for rank 1: its hello was refused. */
  float g[H_W_N];
  for (int i = 0; i < H_W_N; i++) g[i] = 1000.0f;
  Psd__Request r;
  Psd__Push p;
  rc_push_init(&r, &p, H_W, 0, 1);
  p.has_clock = 1, p.clock = s->steps;
  h_expect_error(rc_call(&c, &r, g, sizeof(g), NULL, NULL), PSD__CODE__NOT_READY, "hello",
                 "the refused rank 1's push");
  rc_close(&c);
  /* Claiming rank 1's session without its secret. */
  a = h_args(s, PSA_WORKER, 1);
  a.session = s->w_sessions[1];
  hello_unauthenticated(s, &a, "wrong or missing proof of its secret",
                        "rank 1's session without its secret");
  /* The round of this step has the real rank 1's gradient (the check after
   * this attack proves the values). */
}

/* An impostor speaking for the dead rank 2. */
void attack_impostor_dead_rank(h_scene *s) {
  rc c;
  h_open(&c, s, h_addr());
  h_expect_error(rc_simple(&c, PSD__REQUEST__BODY_HEARTBEAT, 5), PSD__CODE__NOT_READY, "hello",
                 "a heartbeat before any hello");
  rc_close(&c);
  rc_hello_args a = h_args(s, -1, 2);
  hello_unauthenticated(s, &a, "no proof", "an anonymous hello as rank 2");
  h_open(&c, s, h_addr());
  a = h_args(s, PSA_READER, 2);
  h_expect_error(rc_hello(&c, &a), PSD__CODE__PERMISSION_DENIED, "may not join the job",
                 "a reader's hello as rank 2");
  a = h_args(s, PSA_READER, -1);
  h_hello_ok(&c, &a, "a reader's hello");
  for (int i = 0; i < 20; i++)
    h_expect_error(rc_simple(&c, PSD__REQUEST__BODY_HEARTBEAT, 5), PSD__CODE__PERMISSION_DENIED,
                   "may not heartbeat", "a reader's heartbeat");
  rc_close(&c);
  /* An admin tool's heartbeat speaks for no rank. */
  h_tool(&c, s, PSA_ADMIN, NULL);
  for (int i = 0; i < 20; i++) {
    Psd__Response *resp = rc_simple(&c, PSD__REQUEST__BODY_HEARTBEAT, 5);
    h_expect_body(resp, PSD__RESPONSE__BODY_ACK, "an admin tool's heartbeat");
    psd__response__free_unpacked(resp, NULL);
  }
  rc_close(&c);
  char *json = h_stats(s);
  H_CHECK(strstr(json, "{\"rank\":2,\"joined\":true,\"live\":false") != NULL,
          "rank 2 is live again: %.400s", strstr(json, "\"workers\""));
  free(json);
  /* The step after this attack completes without rank 2. */
}

/* Clock(2^64-1) from everyone who is not rank 1 while rank 0's push of
 * this step waits for rank 1's: the round stays pending. */
void attack_clock_max(h_scene *s) {
  double pending = h_stat(s, NULL, "rounds_pending");
  h_legit_push(s, 0);
  h_wait_stat_ge(s, NULL, "rounds_pending", pending + 1);
  rc c;
  h_open(&c, s, h_addr());
  h_expect_error(rc_simple(&c, PSD__REQUEST__BODY_CLOCK, UINT64_MAX), PSD__CODE__NOT_READY,
                 "hello", "a clock before any hello");
  rc_close(&c);
  h_tool(&c, s, PSA_READER, h_addr());
  h_expect_error(rc_simple(&c, PSD__REQUEST__BODY_CLOCK, UINT64_MAX),
                 PSD__CODE__PERMISSION_DENIED, "may not clock", "a reader's clock");
  rc_close(&c);
  for (int role = PSA_WORKER; role <= PSA_ADMIN; role++) {
    h_tool(&c, s, role, role == PSA_ADMIN ? NULL : h_addr());
    Psd__Response *resp = rc_simple(&c, PSD__REQUEST__BODY_CLOCK, UINT64_MAX);
    h_expect_body(resp, PSD__RESPONSE__BODY_ACK, "a tool's clock (it has no rank)");
    psd__response__free_unpacked(resp, NULL);
    resp = rc_simple(&c, PSD__REQUEST__BODY_HEARTBEAT, UINT64_MAX);
    h_expect_body(resp, PSD__RESPONSE__BODY_ACK, "a tool's heartbeat");
    psd__response__free_unpacked(resp, NULL);
    rc_close(&c);
  }
  /* The round still waits for rank 1, and no rank's clock moved. */
  char *json = h_stats(s);
  H_CHECK(rc_json_num(json, NULL, "rounds_pending", NULL) == pending + 1,
          "the pending round was released without rank 1");
  const char *wk = strstr(json, "\"workers\":[");
  const char *end = wk ? strchr(wk, ']') : NULL;
  H_CHECK(wk && end, "no workers in the stats");
  const char *max = strstr(wk, "\"clock\":18446744073709551615");
  H_CHECK(max == NULL || max > end, "a clock of 2^64-1 was taken: %.*s", (int)(end - wk), wk);
  free(json);
  /* Rank 1 pushes (hostile.c): the round completes with both gradients. */
}

/* Another worker's id (protocol 1's worker_id) with sequence 2^64-1. */
void attack_worker_id_seq_max(h_scene *s) {
  rc c;
  h_open(&c, s, h_addr());
  rc_hello_args a = h_args(s, PSA_WORKER, -1);
  a.worker_id = s->w_sessions[0];
  h_hello_ok(&c, &a, "a hello naming rank 0's id");
  H_CHECK(c.session != 0 && c.session != s->w_sessions[0] && c.session != s->w_sessions[1],
          "the shard gave the attacker session %016llx (rank 0 holds %016llx)",
          (unsigned long long)c.session, (unsigned long long)s->w_sessions[0]);
  float g[H_W_N] = {0};
  h_expect_error(rc_push(&c, H_W, 0, UINT64_MAX, g, H_W_N, 0, NULL, NULL),
                 PSD__CODE__PERMISSION_DENIED, "push from a tool",
                 "a tool's push with sequence 2^64-1");
  rc_close(&c);
  /* Rank 0's session by its id, without (or with a guessed) secret. */
  a = h_args(s, PSA_WORKER, 0);
  a.session = s->w_sessions[0];
  hello_unauthenticated(s, &a, "wrong or missing proof", "rank 0's session without a proof");
  uint8_t guess[PSA_SECRET];
  memset(guess, 0x5a, sizeof(guess));
  a.secret = guess;
  hello_unauthenticated(s, &a, "wrong or missing proof", "rank 0's session, a guessed secret");
  /* The job's next pushes are applied, not "duplicates" (the check after
   * this attack sees their values). */
}

/* Lanes: never before authentication, never to a reader, within the
 * ceiling for workers, and given back with their connection. */
void attack_lane_requests(h_scene *s) {
  double lanes0 = h_stat(s, NULL, "lanes"), mem0 = h_stat(s, "memory", "mem_lanes");
  rc_hello_args a = h_args(s, -1, -1);
  a.lane_bytes = 256u << 20;
  hello_unauthenticated(s, &a, "no proof", "an anonymous hello asking for a lane");
  rc c;
  h_open(&c, s, h_addr());
  a = h_args(s, PSA_READER, -1);
  a.lane_bytes = 256u << 20;
  Psd__Response *resp = rc_hello(&c, &a);
  h_expect_body(resp, PSD__RESPONSE__BODY_HELLO, "a reader's hello asking for a lane");
  H_CHECK(resp->hello->lane == NULL, "a reader was granted a lane of %llu bytes",
          (unsigned long long)resp->hello->lane->bytes);
  psd__response__free_unpacked(resp, NULL);
  rc_close(&c);
  H_CHECK(h_stat(s, NULL, "lanes") == lanes0, "a lane was made for a refused or reader hello");
  /* Workers asking for 64 MiB each: granted while they fit, never past the
   * ceiling, and given back when they close. */
  enum { NL = 12 };
  rc w[NL];
  int granted = 0;
  for (int i = 0; i < NL; i++) {
    h_open(&w[i], s, h_addr());
    a = h_args(s, PSA_WORKER, -1);
    a.lane_bytes = 64u << 20;
    resp = rc_hello(&w[i], &a);
    h_expect_body(resp, PSD__RESPONSE__BODY_HELLO, "a worker's hello asking for a lane");
    granted += resp->hello->lane != NULL;
    psd__response__free_unpacked(resp, NULL);
  }
  char *json = h_stats(s);
  double used = rc_json_num(json, "memory", "used", NULL);
  double lanes_mem = rc_json_num(json, "memory", "mem_lanes", NULL);
  free(json);
  printf("hostile:   %d of %d lanes of 64 MiB granted; memory in use %.1f MiB (lanes %.1f)\n",
         granted, NL, used / 1048576.0, lanes_mem / 1048576.0);
  H_CHECK(granted < NL, "every lane was granted: %d x 64 MiB within a 256 MiB ceiling", NL);
  H_CHECK(used <= (double)s->max_memory, "memory in use %.0f is over the ceiling", used);
  /* The job goes on meanwhile. */
  h_legit_step(s);
  for (int i = 0; i < NL; i++) rc_close(&w[i]);
  for (int waited = 0; h_stat(s, "memory", "mem_lanes") > mem0; waited += 20) {
    H_CHECK(waited < H_WAIT_MS, "the lanes were not given back");
    h_sleep_ms(20);
  }
}

/* Names and kind strings holding NUL or invalid UTF-8: refused with
 * BAD_REQUEST, nothing done, nothing aliased. */
void attack_bad_names(h_scene *s) {
  double tensors = h_stat(s, NULL, "tensors");
  rc c;
  h_tool(&c, s, PSA_WORKER, h_addr());
  Psd__Request r;
  Psd__Pull pl;
  /* "sentinel\0x" must not answer for the sentinel. */
  rc_pull_init(&r, &pl, "sentinelXx", 0);
  H_CHECK(rc_send_patched(&c, &r, "sentinelXx", "sentinel\0x", 10) == 0, "send");
  h_expect_error(rc_recv(&c, NULL, NULL), PSD__CODE__BAD_REQUEST, "NUL",
                 "a pull of \"sentinel\\0x\"");
  Psd__Request lr = PSD__REQUEST__INIT;
  Psd__Lookup lk = PSD__LOOKUP__INIT;
  lk.name = "wXEVIL";
  lr.body_case = PSD__REQUEST__BODY_LOOKUP;
  lr.lookup = &lk;
  H_CHECK(rc_send_patched(&c, &lr, "wXEVIL", "w\0EVIL", 6) == 0, "send");
  h_expect_error(rc_recv(&c, NULL, NULL), PSD__CODE__BAD_REQUEST, "NUL",
                 "a lookup of \"w\\0EVIL\"");
  /* A push to "w\0": not a push to the job's tensor. */
  float g[H_W_N];
  for (int i = 0; i < H_W_N; i++) g[i] = 1000.0f;
  Psd__Push p;
  rc_push_init(&r, &p, "wQ", 0, 1);
  psw_frame f;
  r.id = c.next_id++;
  H_CHECK(psw_encode(&f, &r.base, g, sizeof(g)) == 0, "encode");
  uint8_t *at = memmem(f.head, f.head_len, "wQ", 2);
  H_CHECK(at != NULL, "no name in the frame");
  at[1] = '\0';
  H_CHECK(rc_send_all(c.fd, f.head, f.head_len) == 0 && rc_send_all(c.fd, g, sizeof(g)) == 0,
          "send");
  h_expect_error(rc_recv(&c, NULL, NULL), PSD__CODE__BAD_REQUEST, "NUL", "a push to \"w\\0\"");
  /* Creates: an init kind "zeros\0junk", a name not UTF-8, an overlong '/'. */
  ps_tensor_spec spec;
  ps_tensor_spec_init(&spec, PS_INIT_ZEROS, PS_OPT_SGD);
  uint64_t shape[1] = {8};
  static const struct {
    const char *name, *kind, *mark, *bytes;
    size_t n;
    const char *says;
  } creates[] = {
      {"fine", "zerosXjunk", "zerosXjunk", "zeros\0junk", 10, "InitSpec.kind"},
      {"bad-XX", "zeros", "bad-XX", "bad-\xff\xfe", 6, "UTF-8"},
      {"aXXb", "zeros", "aXXb", "a\xc0\xafz", 4, "UTF-8"},
      {"okname", "zeros", "okname", "ok\xed\xa0\x80n", 6, "UTF-8"}, /* a UTF-16 surrogate */
  };
  for (size_t i = 0; i < sizeof(creates) / sizeof(creates[0]); i++) {
    pmsg_spec_pb pb;
    pmsg_spec_to_pb(&pb, &spec, shape, 1);
    pb.init.kind = (char *)creates[i].kind;
    Psd__Request cr = PSD__REQUEST__INIT;
    Psd__Create cc = PSD__CREATE__INIT;
    cc.name = (char *)creates[i].name;
    cc.spec = &pb.ts;
    cr.body_case = PSD__REQUEST__BODY_CREATE;
    cr.create = &cc;
    H_CHECK(rc_send_patched(&c, &cr, creates[i].mark, creates[i].bytes, creates[i].n) == 0,
            "send");
    h_expect_error(rc_recv(&c, NULL, NULL), PSD__CODE__BAD_REQUEST, creates[i].says,
                   "a create with a bad string");
  }
  /* The connection is still usable. */
  Psd__Response *resp = rc_simple(&c, PSD__REQUEST__BODY_PING, 0);
  h_expect_body(resp, PSD__RESPONSE__BODY_ACK, "a ping after the bad names");
  psd__response__free_unpacked(resp, NULL);
  rc_close(&c);
  /* A hello whose role and identity are not text, before authentication. */
  h_open(&c, s, h_addr());
  H_CHECK(rc_challenge(&c, NULL) == 0, "no challenge");
  Psd__Request hr = PSD__REQUEST__INIT;
  Psd__Hello h = PSD__HELLO__INIT;
  h.protocol = PS_PROTOCOL_VERSION;
  h.role = "adminX";
  h.identity = "idXX";
  hr.body_case = PSD__REQUEST__BODY_HELLO;
  hr.hello = &h;
  H_CHECK(rc_send_patched(&c, &hr, "adminX", "admin\0", 6) == 0, "send");
  h_expect_error(rc_recv(&c, NULL, NULL), PSD__CODE__BAD_REQUEST, "NUL",
                 "a hello with role \"admin\\0\"");
  H_CHECK(rc_send_patched(&c, &hr, "idXX", "id\xc3\x28", 4) == 0, "send");
  h_expect_error(rc_recv(&c, NULL, NULL), PSD__CODE__BAD_REQUEST, "UTF-8",
                 "a hello with an identity that is not UTF-8");
  rc_close(&c);
  H_CHECK(h_stat(s, NULL, "tensors") == tensors, "a tensor was created from a bad name");
}
