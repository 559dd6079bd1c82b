/*
 * attacks_memory.c -- attacks on the shard's memory: creates of millions
 * of blocks, frames announced and never finished, clients that never read
 * their replies, thousands of pipelined pulls of a big block (then a
 * reset), and pushes to ever new blocks of a vast tensor until the ceiling
 * (run last: the shard stays full, since nobody deletes them). Run against
 * the async shard (hostile.c), whose ceiling is 256 MiB.
 */
#include "hostile.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static void create_as(h_scene *s, int role, const char *name, uint64_t n, uint64_t block,
                      ps_optim_kind opt) {
  rc c;
  h_tool(&c, s, role, NULL);
  ps_tensor_spec spec;
  ps_tensor_spec_init(&spec, PS_INIT_NORMAL, opt);
  spec.block_size = block;
  uint64_t shape[1] = {n};
  Psd__Response *resp = rc_create(&c, name, shape, 1, &spec);
  h_expect_body(resp, PSD__RESPONSE__BODY_INFO, "a create");
  H_CHECK(resp->info->blocks_here == 0, "a create materialized %llu blocks",
          (unsigned long long)resp->info->blocks_here);
  psd__response__free_unpacked(resp, NULL);
  rc_close(&c);
}

/* Three creates of [2^24] with block_size 1 (2^24 blocks each), by a
 * worker: O(1) each, no block held. */
void attack_huge_creates(h_scene *s) {
  rc c;
  h_open(&c, s, h_addr());
  ps_tensor_spec spec;
  ps_tensor_spec_init(&spec, PS_INIT_NORMAL, PS_OPT_ADAM);
  spec.block_size = 1;
  uint64_t shape[1] = {1ull << 24};
  h_expect_error(rc_create(&c, "huge", shape, 1, &spec), PSD__CODE__NOT_READY, "hello",
                 "an anonymous create");
  rc_close(&c);
  double used = h_stat(s, "memory", "used");
  for (int i = 0; i < 3; i++) {
    char name[16];
    snprintf(name, sizeof(name), "huge%d", i);
    create_as(s, PSA_WORKER, name, 1ull << 24, 1, PS_OPT_ADAM);
  }
  char *json = h_stats(s);
  double grew = rc_json_num(json, "memory", "used", NULL) - used;
  free(json);
  printf("hostile:   3 creates of 2^24 blocks: memory grew by %.0f bytes\n", grew);
  H_CHECK(grew < 64 * 1024, "three creates of 2^24 blocks took %.0f bytes", grew);
  /* Touching a few blocks makes those few. */
  h_tool(&c, s, PSA_READER, h_addr());
  for (uint64_t b = 0; b < 5; b++) {
    float *v = NULL;
    size_t n = 0;
    Psd__Response *resp = rc_pull(&c, "huge1", b * 3000017, &v, &n);
    h_expect_body(resp, PSD__RESPONSE__BODY_BLOCK, "a pull of one block of huge1");
    H_CHECK(n == sizeof(float), "a block of %zu bytes", n);
    psd__response__free_unpacked(resp, NULL);
    free(v);
  }
  rc_close(&c);
}

/* 40 connections announce frames of almost 64 MiB (--max-frame), send
 * 60 MiB and stop: 20 before authenticating, 20 as readers. */
void attack_stalled_64mib_frames(h_scene *s) {
  enum { N = 40, SENT = 60 << 20 };
  static uint8_t chunk[1 << 20];
  memset(chunk, 0x08, sizeof(chunk));
  uint8_t head[PSW_HEADER_SIZE];
  rc_header(head, (64u << 20) - 4096);
  double input0 = h_stat(s, "memory", "mem_input");
  rc c[N];
  int stalled = 0;
  for (int i = 0; i < N; i++) {
    if (i < N / 2) {
      h_open(&c[i], s, h_addr());
    } else {
      h_tool(&c[i], s, PSA_READER, h_addr());
    }
    int ok = rc_send_all(c[i].fd, head, sizeof(head)) == 0;
    for (size_t sent = 0; ok && sent < SENT; sent += sizeof(chunk))
      ok = rc_send_all(c[i].fd, chunk, sizeof(chunk)) == 0;
    stalled += ok;
  }
  /* Those the shard took are held, within the ceiling; the job goes on. */
  char *json = h_stats(s);
  double used = rc_json_num(json, "memory", "used", NULL);
  double input = rc_json_num(json, "memory", "mem_input", NULL);
  free(json);
  printf("hostile:   %d of %d connections sent 60 MiB of a frame; input buffers %.0f MiB, "
         "memory in use %.0f MiB\n",
         stalled, N, input / 1048576.0, used / 1048576.0);
  H_CHECK(used <= (double)s->max_memory, "memory in use %.0f over the ceiling", used);
  h_legit_step(s);
  /* Every one is closed: refused at once, or at --frame-timeout. */
  for (int i = 0; i < N; i++) {
    H_CHECK(h_wait_closed(c[i].fd), "connection %d of the stalled frames was never closed", i);
    rc_close(&c[i]);
  }
  for (int waited = 0; h_stat(s, "memory", "mem_input") > input0 + (1 << 20); waited += 20) {
    H_CHECK(waited < H_WAIT_MS, "the stalled frames' buffers were not given back");
    h_sleep_ms(20);
  }
}

/* Pipelined pulls of `name` on c, ids from 1, without reading. */
/* In one write (rc_post_many): the shard pauses a connection after a few
 * with the rest buffered, so a reset meets queued requests. */
static void send_pulls(rc *c, const char *name, int n) {
  Psd__Request r;
  Psd__Pull p;
  rc_pull_init(&r, &p, name, 0);
  rc_post_many(c, &r, n);
}

static void small_rcvbuf(rc *c) {
  int small = 4096;
  setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
}

/* 24 readers pull a 4 MiB block again and again and never read, while a
 * worker keeps updating the block they are being sent from. */
void attack_never_read(h_scene *s) {
  enum { NR = 24, NPULL = 200 };
  create_as(s, PSA_ADMIN, "big4", 1u << 20, 1u << 20, PS_OPT_SGD);
  double paused0 = h_stat(s, "limits", "paused");
  rc r[NR];
  for (int i = 0; i < NR; i++) {
    h_tool(&r[i], s, PSA_READER, h_addr());
    small_rcvbuf(&r[i]);
    send_pulls(&r[i], "big4", NPULL);
  }
  h_wait_stat_ge(s, "limits", "paused", paused0 + NR);
  /* The block they are sent from changes under them. */
  rc w;
  h_tool(&w, s, PSA_WORKER, h_addr());
  float *g = calloc(1u << 20, sizeof(float));
  for (int k = 0; k < 3; k++) {
    for (size_t i = 0; i < (1u << 20); i++) g[i] = (float)k;
    Psd__Response *resp = rc_push(&w, "big4", 0, 0, g, 1u << 20, 0, NULL, NULL);
    h_expect_body(resp, PSD__RESPONSE__BODY_BLOCK, "a push to the block being sent");
    psd__response__free_unpacked(resp, NULL);
  }
  free(g);
  rc_close(&w);
  char *json = h_stats(s);
  double used = rc_json_num(json, "memory", "used", NULL);
  double out = rc_json_num(json, "memory", "mem_output", NULL);
  free(json);
  printf("hostile:   %d readers paused; output held %.1f MiB, memory in use %.1f MiB\n", NR,
         out / 1048576.0, used / 1048576.0);
  H_CHECK(used <= (double)s->max_memory, "memory in use %.0f over the ceiling", used);
  h_legit_step(s);
  for (int i = 0; i < NR; i++) rc_reset(&r[i]);
  for (int waited = 0; h_stat(s, "limits", "paused") > paused0; waited += 20) {
    H_CHECK(waited < H_WAIT_MS, "the readers that never read are still paused after closing");
    h_sleep_ms(20);
  }
}

/* 2000 pipelined pulls of a 16 MiB block (80 KB of requests) from a reader
 * that never reads, then a reset with most of them queued. */
void attack_pipelined_16mib_pulls(h_scene *s) {
  enum { NPULL = 2000 };
  create_as(s, PSA_ADMIN, "big16", 4u << 20, 4u << 20, PS_OPT_SGD);
  double paused0 = h_stat(s, "limits", "paused");
  double dropped0 = h_stat(s, "limits", "dropped_requests");
  double pulls0 = h_stat(s, NULL, "pulls");
  rc bad;
  h_tool(&bad, s, PSA_READER, h_addr());
  small_rcvbuf(&bad);
  send_pulls(&bad, "big16", NPULL);
  h_wait_stat_ge(s, "limits", "paused", paused0 + 1);
  double run = h_stat(s, NULL, "pulls") - pulls0;
  printf("hostile:   paused after %.0f of %d pulls of 16 MiB\n", run, NPULL);
  /* --out-cap (64 MiB): a handful of replies, not 2000. */
  H_CHECK(run < 16, "%.0f pulls of 16 MiB were run for a client that reads nothing", run);
  h_legit_step(s);
  double pulls1 = h_stat(s, NULL, "pulls");
  rc_reset(&bad);
  h_wait_stat_ge(s, "limits", "dropped_requests", dropped0 + 1);
  H_CHECK(h_stat(s, NULL, "pulls") == pulls1,
          "pulls queued by a client that reset were run after it left");
  for (int waited = 0; h_stat(s, "memory", "mem_output") > (4 << 20); waited += 20) {
    H_CHECK(waited < H_WAIT_MS, "the reset client's replies were not given back");
    h_sleep_ms(20);
  }
}

/* Pushes of `bs` floats to ever new blocks of `name` (created with
 * n elements in blocks of bs) until the ceiling refuses one, then `more`
 * refused pushes; the blocks made. */
static int fill_with(h_scene *s, const char *name, uint64_t n, uint64_t bs, int more) {
  create_as(s, PSA_WORKER, name, n, bs, PS_OPT_SGD);
  rc w;
  h_tool(&w, s, PSA_WORKER, h_addr());
  float *g = calloc(bs, sizeof(float));
  for (uint64_t i = 0; i < bs; i++) g[i] = 0.001f;
  int applied = 0, refused = 0;
  for (uint64_t k = 0; refused < more && k < 1000000; k++) {
    Psd__Response *resp = rc_push(&w, name, (k * 7919) % (n / bs), 0, g, bs, 0, NULL, NULL);
    H_CHECK(resp != NULL, "the shard closed the pushing worker's connection");
    if (resp->body_case == PSD__RESPONSE__BODY_BLOCK) {
      H_CHECK(refused == 0, "a push to '%s' was applied after the ceiling refused one", name);
      applied++;
      psd__response__free_unpacked(resp, NULL);
    } else {
      h_expect_error(resp, PSD__CODE__RESOURCE_EXHAUSTED, "memory ceiling",
                     "a push past the ceiling");
      refused++;
    }
  }
  free(g);
  rc_close(&w);
  H_CHECK(applied > 0 && refused == more, "'%s': %d pushes applied, %d refused", name, applied,
          refused);
  return applied;
}

/* Pushes to ever new blocks of a [2^44] tensor (blocks of 4 MiB) until the
 * ceiling refuses them, then more; then pushes of 4 KiB blocks of another
 * tensor until even those are refused: the shard is as full as blocks can
 * make it. Reads of new blocks are refused too. Run last: the shard stays
 * full (no admin deletes the attacker's tensors). */
void attack_vast_pushes(h_scene *s) {
  int big = fill_with(s, "vast", 1ull << 44, 1u << 20, 100);
  int dust = fill_with(s, "dust", 1ull << 34, 1024, 100);
  rc r;
  h_tool(&r, s, PSA_READER, h_addr());
  for (uint64_t k = 0; k < 50; k++) {
    float *v = NULL;
    size_t n;
    h_expect_error(rc_pull(&r, "vast", (1ull << 22) + k, &v, &n), PSD__CODE__RESOURCE_EXHAUSTED,
                   "memory ceiling", "a pull of a new block past the ceiling");
    free(v);
  }
  rc_close(&r);
  char *json = h_stats(s);
  double used = rc_json_num(json, "memory", "used", NULL);
  free(json);
  printf("hostile:   %d blocks of 4 MiB and %d of 4 KiB made, then 200 pushes and 50 pulls "
         "refused; memory in use %.2f MiB of 256\n",
         big, dust, used / 1048576.0);
  H_CHECK(used <= (double)s->max_memory, "memory in use %.0f over the ceiling", used);
  /* The full shard still serves what it holds: the job's step and the
   * sentinel through new connections (the checks after this attack). */
}
