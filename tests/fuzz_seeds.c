/*
 * fuzz_seeds.c -- writes valid frames into a directory, as the starting
 * corpus of fuzz_wire: a hello with a server list, creates with every
 * optimizer, pushes (values in the frame, or lane slots), pulls, and the
 * replies a client decodes. Each file starts with the fuzzer's read-size
 * byte.
 *
 *   fuzz_seeds DIR
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "msg.h"
#include "psmath.h"
#include "wire.h"

static int nfile;

static void put(const char *dir, const ProtobufCMessage *m, const void *vals, size_t vlen) {
  psw_frame f;
  if (psw_encode(&f, m, vals, vlen) != 0) return;
  char path[512];
  snprintf(path, sizeof(path), "%s/seed-%03d", dir, nfile++);
  FILE *fp = fopen(path, "wb");
  if (fp == NULL) return;
  uint8_t step = (uint8_t)(nfile * 37);
  fwrite(&step, 1, 1, fp);
  fwrite(f.head, 1, f.head_len, fp);
  if (vlen) fwrite(vals, 1, vlen, fp);
  fclose(fp);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: fuzz_seeds DIR\n");
    return 2;
  }
  const char *dir = argv[1];
  float vals[64];
  for (int i = 0; i < 64; i++) vals[i] = 0.5f * (float)i - 3.0f;

  Psd__Request r = PSD__REQUEST__INIT;
  Psd__Hello h = PSD__HELLO__INIT;
  h.protocol = PS_PROTOCOL_VERSION;
  h.servers = "127.0.0.1:7070,[::1]:7071,psd-2.psd:7070";
  h.has_shard_index = 1, h.shard_index = 1;
  h.has_rank = 1, h.rank = 0;
  h.has_num_workers = 1, h.num_workers = 4;
  h.has_lane_bytes = 1, h.lane_bytes = 1 << 20;
  r.id = 1, r.body_case = PSD__REQUEST__BODY_HELLO, r.hello = &h;
  put(dir, &r.base, NULL, 0);
  /* Protocol 2: a role, its proof, a session to resume. */
  uint8_t mac[32];
  for (int i = 0; i < 32; i++) mac[i] = (uint8_t)(i * 7);
  h.role = "worker";
  h.has_proof = 1, h.proof.data = mac, h.proof.len = sizeof(mac);
  h.has_session_id = 1, h.session_id = 0x1234567890abcdefull;
  h.has_session_proof = 1, h.session_proof.data = mac, h.session_proof.len = sizeof(mac);
  put(dir, &r.base, NULL, 0);
  Psd__Request gr = PSD__REQUEST__INIT;
  Psd__Goodbye gb = PSD__GOODBYE__INIT;
  gr.id = 9, gr.body_case = PSD__REQUEST__BODY_GOODBYE, gr.goodbye = &gb;
  put(dir, &gr.base, NULL, 0);

  for (int k = 0; k < PS_OPT_COUNT_; k++) {
    ps_tensor_spec s;
    ps_tensor_spec_init(&s, (ps_init_kind)(k % PS_INIT_COUNT_), (ps_optim_kind)k);
    s.optim.schedule = (ps_schedule_kind)(k % PS_SCHED_COUNT_);
    s.optim.clip_norm = 1;
    uint64_t shape[2] = {64, 3};
    pmsg_spec_pb pb;
    pmsg_spec_to_pb(&pb, &s, shape, 2);
    Psd__Create c = PSD__CREATE__INIT;
    c.name = "layer0.weight";
    c.spec = &pb.ts;
    Psd__Request q = PSD__REQUEST__INIT;
    q.id = 2, q.body_case = PSD__REQUEST__BODY_CREATE, q.create = &c;
    put(dir, &q.base, NULL, 0);
    Psd__Response resp = PSD__RESPONSE__INIT;
    Psd__TensorInfo ti = PSD__TENSOR_INFO__INIT;
    ti.name = "layer0.weight";
    ti.spec = &pb.ts;
    resp.id = 2, resp.body_case = PSD__RESPONSE__BODY_INFO, resp.info = &ti;
    put(dir, &resp.base, NULL, 0);
  }

  Psd__Push p = PSD__PUSH__INIT;
  p.name = "w";
  p.block = 0;
  p.has_seq = 1, p.seq = 7;
  p.has_want_values = 1, p.want_values = 1;
  p.has_grad_norm = 1, p.grad_norm = 2.5;
  r.id = 3, r.body_case = PSD__REQUEST__BODY_PUSH, r.push = &p;
  put(dir, &r.base, vals, sizeof(vals));
  p.has_lane_in = 1, p.lane_in = 4096;
  p.has_lane_out = 1, p.lane_out = 4096;
  p.has_lane_len = 1, p.lane_len = sizeof(vals);
  put(dir, &r.base, NULL, 0);

  Psd__Pull pl = PSD__PULL__INIT;
  pl.name = "w";
  pl.block = 1;
  pl.has_clock = 1, pl.clock = 3;
  r.id = 4, r.body_case = PSD__REQUEST__BODY_PULL, r.pull = &pl;
  put(dir, &r.base, NULL, 0);

  Psd__Response resp = PSD__RESPONSE__INIT;
  Psd__BlockReply br = PSD__BLOCK_REPLY__INIT;
  br.version = 9;
  resp.id = 4, resp.body_case = PSD__RESPONSE__BODY_BLOCK, resp.block = &br;
  put(dir, &resp.base, vals, sizeof(vals));
  printf("fuzz_seeds: %d frames in %s\n", nfile, dir);
  return 0;
}
