/*
 * test_wire.c -- unit tests of common/: framing (split reads, several
 * frames in one read, oversized lengths, garbage), the zero-copy values
 * path (the envelope walker on partial frames too), message round trips,
 * placement and server-list parsing.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include <fcntl.h>
#include <unistd.h>

#include "lane.h"
#include "msg.h"
#include "placement.h"
#include "psmath.h"
#include "wire.h"

#include "check_main.h"

/* Encode a Push request carrying n floats into one contiguous buffer. */
static size_t make_push(uint8_t *out, uint64_t id, const float *v, size_t n) {
  Psd__Request r = PSD__REQUEST__INIT;
  Psd__Push p = PSD__PUSH__INIT;
  p.name = "w";
  p.block = 3;
  p.has_seq = 1;
  p.seq = 42;
  r.id = id;
  r.body_case = PSD__REQUEST__BODY_PUSH;
  r.push = &p;
  psw_frame f;
  ck_assert_int_eq(psw_encode(&f, &r.base, v, n * sizeof(float)), 0);
  memcpy(out, f.head, f.head_len);
  memcpy(out + f.head_len, v, f.values_len);
  return f.head_len + f.values_len;
}

static void check_push(const uint8_t *payload, uint64_t len, uint64_t id, const float *v,
                       size_t n) {
  const uint8_t *vals;
  size_t vlen;
  Psd__Request *r = (Psd__Request *)psw_decode(&psd__request__descriptor, payload, len,
                                               &vals, &vlen);
  ck_assert_ptr_nonnull(r);
  ck_assert_uint_eq(r->id, id);
  ck_assert_int_eq(r->body_case, PSD__REQUEST__BODY_PUSH);
  ck_assert_str_eq(r->push->name, "w");
  ck_assert_uint_eq(r->push->block, 3);
  ck_assert_uint_eq(r->push->seq, 42);
  ck_assert_uint_eq(vlen, n * sizeof(float));
  ck_assert_int_eq(memcmp(vals, v, vlen), 0);
  /* The values are read in place from the frame: inside the payload. */
  ck_assert(vals >= payload && vals + vlen <= payload + len);
  protobuf_c_message_free_unpacked(&r->base, NULL);
}

START_TEST(frame_values_aligned) {
  float v[100];
  for (int i = 0; i < 100; i++) v[i] = (float)i * 0.5f;
  uint8_t buf[8192];
  for (uint64_t id = 1; id < 300; id += 37) {
    size_t len = make_push(buf, id, v, 100);
    psw_rbuf b;
    psw_rbuf_init(&b, PSW_DEFAULT_MAX_FRAME);
    size_t avail;
    uint8_t *dst = psw_rbuf_reserve(&b, len, &avail);
    memcpy(dst, buf, len);
    psw_rbuf_commit(&b, len);
    const uint8_t *payload;
    uint64_t plen;
    ck_assert_int_eq(psw_rbuf_next(&b, &payload, &plen), PSW_FRAME);
    const uint8_t *vals;
    size_t vlen;
    Psd__Request *r = (Psd__Request *)psw_decode(&psd__request__descriptor, payload, plen,
                                                 &vals, &vlen);
    ck_assert_ptr_nonnull(r);
    /* Values start 64-byte aligned relative to the frame start. */
    ck_assert_uint_eq((size_t)(vals - (payload - PSW_HEADER_SIZE)) % 64, 0);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    psw_rbuf_free(&b);
  }
}
END_TEST

/* One byte at a time: the frame only appears with its last byte. Before
 * that, what the library looks at while a big reply arrives: the partial
 * frame at the front and where its values start (psw_find_values), at
 * every length it can have. */
START_TEST(frame_split_over_many_reads) {
  float v[1000];
  for (int i = 0; i < 1000; i++) v[i] = (float)i;
  uint8_t buf[8192];
  size_t len = make_push(buf, 7, v, 1000);
  psw_rbuf b;
  psw_rbuf_init(&b, PSW_DEFAULT_MAX_FRAME);
  const uint8_t *payload;
  size_t have, key_off, off, avail;
  uint64_t plen, n;
  int found = 0;
  for (size_t i = 0; i < len; i++) {
    ck_assert_int_eq(psw_rbuf_next(&b, &payload, &plen), PSW_NEED_MORE);
    int partial = psw_rbuf_partial(&b, &payload, &have, &plen);
    ck_assert_int_eq(partial, i >= PSW_HEADER_SIZE);
    if (partial) {
      ck_assert_uint_eq(have, i - PSW_HEADER_SIZE);
      ck_assert_uint_eq(plen, len - PSW_HEADER_SIZE);
      if (psw_find_values(payload, have, &key_off, &off, &n) == 0) {
        found = 1;
        ck_assert_uint_eq(n, sizeof(v));
        ck_assert_uint_eq(off + n, plen);
        ck_assert_uint_le(off, have);
        Psd__Request *r = (Psd__Request *)protobuf_c_message_unpack(
            &psd__request__descriptor, NULL, key_off, payload);
        ck_assert_ptr_nonnull(r);
        ck_assert_uint_eq(r->id, 7);
        protobuf_c_message_free_unpacked(&r->base, NULL);
      } else {
        ck_assert_int_eq(found, 0); /* once found, it stays found */
      }
    }
    uint8_t *dst = psw_rbuf_reserve(&b, 1, &avail);
    /* The rest of a frame whose header is in fits in what is offered. */
    ck_assert_uint_ge(avail, partial ? len - i : 1);
    *dst = buf[i];
    psw_rbuf_commit(&b, 1);
  }
  ck_assert_int_eq(found, 1);
  /* Complete, and the start of the next one behind it: not partial, and a
   * reserve asks for no more than its hint. */
  uint8_t *dst = psw_rbuf_reserve(&b, 4, &avail);
  ck_assert_ptr_nonnull(dst);
  memcpy(dst, buf, 4);
  psw_rbuf_commit(&b, 4);
  ck_assert_int_eq(psw_rbuf_partial(&b, &payload, &have, &plen), 0);
  ck_assert_ptr_nonnull(psw_rbuf_reserve(&b, 1, &avail));
  ck_assert_int_eq(psw_rbuf_next(&b, &payload, &plen), PSW_FRAME);
  check_push(payload, plen, 7, v, 1000);
  psw_rbuf_consume(&b, plen);
  ck_assert_int_eq(psw_rbuf_next(&b, &payload, &plen), PSW_NEED_MORE);
  psw_rbuf_clear(&b);
  ck_assert_int_eq(psw_rbuf_partial(&b, &payload, &have, &plen), 0);
  /* No values field: none found, however much is there. */
  const uint8_t env[] = {0x08, 0x07, 0x12, 0x01, 'w'};
  ck_assert_int_eq(psw_find_values(env, sizeof(env), &key_off, &off, &n), -1);
  psw_rbuf_free(&b);
}
END_TEST

START_TEST(frame_many_in_one_read) {
  float v[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  uint8_t *buf = malloc(1 << 20);
  size_t len = 0;
  for (int i = 0; i < 200; i++) len += make_push(buf + len, (uint64_t)i + 1, v, (size_t)(i % 10) + 1);
  psw_rbuf b;
  psw_rbuf_init(&b, PSW_DEFAULT_MAX_FRAME);
  /* Deliver in uneven chunks that straddle frame boundaries. */
  size_t off = 0, chunk = 1;
  int seen = 0;
  while (off < len) {
    size_t k = chunk < len - off ? chunk : len - off;
    size_t avail;
    uint8_t *dst = psw_rbuf_reserve(&b, k, &avail);
    memcpy(dst, buf + off, k);
    psw_rbuf_commit(&b, k);
    off += k;
    chunk = chunk * 3 % 997 + 1;
    const uint8_t *payload;
    uint64_t plen;
    while (psw_rbuf_next(&b, &payload, &plen) == PSW_FRAME) {
      check_push(payload, plen, (uint64_t)seen + 1, v, (size_t)(seen % 10) + 1);
      psw_rbuf_consume(&b, plen);
      seen++;
    }
  }
  ck_assert_int_eq(seen, 200);
  psw_rbuf_free(&b);
  free(buf);
}
END_TEST

START_TEST(frame_oversized_rejected_before_buffering) {
  uint8_t h[16] = {'P', 'S', 'D', '1', 1, 0, 0, 0};
  uint64_t huge = (uint64_t)1 << 40;
  memcpy(h + 8, &huge, 8);
  psw_rbuf b;
  psw_rbuf_init(&b, 1 << 20);
  size_t avail;
  uint8_t *dst = psw_rbuf_reserve(&b, 16, &avail);
  memcpy(dst, h, 16);
  psw_rbuf_commit(&b, 16);
  const uint8_t *payload;
  uint64_t plen;
  ck_assert_int_eq(psw_rbuf_next(&b, &payload, &plen), PSW_ETOOLARGE);
  /* Reserving more space must not follow the peer's length. */
  dst = psw_rbuf_reserve(&b, 100, &avail);
  ck_assert_ptr_nonnull(dst);
  ck_assert_uint_lt(b.cap, (size_t)1 << 21);
  psw_rbuf_free(&b);
}
END_TEST

START_TEST(frame_garbage_and_bad_headers) {
  psw_rbuf b;
  const uint8_t *payload;
  uint64_t plen;
  size_t avail;
  psw_rbuf_init(&b, 1 << 20);
  uint8_t *dst = psw_rbuf_reserve(&b, 3, &avail);
  memcpy(dst, "GET", 3);
  psw_rbuf_commit(&b, 3);
  /* Refused on the first bytes, not after a whole header. */
  ck_assert_int_eq(psw_rbuf_next(&b, &payload, &plen), PSW_EBADMAGIC);
  psw_rbuf_free(&b);

  uint8_t h[16] = {'P', 'S', 'D', '1', 9, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0};
  psw_rbuf_init(&b, 1 << 20);
  dst = psw_rbuf_reserve(&b, 16, &avail);
  memcpy(dst, h, 16);
  psw_rbuf_commit(&b, 16);
  ck_assert_int_eq(psw_rbuf_next(&b, &payload, &plen), PSW_EVERSION);
  psw_rbuf_free(&b);

  h[4] = 1;
  h[6] = 1; /* reserved flags */
  psw_rbuf_init(&b, 1 << 20);
  dst = psw_rbuf_reserve(&b, 16, &avail);
  memcpy(dst, h, 16);
  psw_rbuf_commit(&b, 16);
  ck_assert_int_eq(psw_rbuf_next(&b, &payload, &plen), PSW_EFLAGS);
  psw_rbuf_free(&b);

  /* A well-framed payload that is not protobuf. */
  uint8_t junk[8] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x07};
  const uint8_t *vals;
  size_t vlen;
  ck_assert_ptr_null(psw_decode(&psd__request__descriptor, junk, sizeof(junk), &vals, &vlen));
  ck_assert_ptr_nonnull(psw_strerror(PSW_ETOOLARGE));
}
END_TEST

START_TEST(message_values_not_last_still_decoded) {
  /* A foreign encoder may put `values` anywhere: the copy path handles it. */
  Psd__Response r = PSD__RESPONSE__INIT;
  Psd__BlockReply br = PSD__BLOCK_REPLY__INIT;
  float v[4] = {1.5f, -2.0f, 3.25f, 0};
  br.version = 9;
  r.id = 5;
  r.body_case = PSD__RESPONSE__BODY_BLOCK;
  r.block = &br;
  r.has_values = 1;
  r.values.data = (uint8_t *)v;
  r.values.len = sizeof(v);
  uint8_t buf[256];
  size_t n = psd__response__pack(&r, buf);
  const uint8_t *vals;
  size_t vlen;
  Psd__Response *d = (Psd__Response *)psw_decode(&psd__response__descriptor, buf, n, &vals, &vlen);
  ck_assert_ptr_nonnull(d);
  ck_assert_uint_eq(d->block->version, 9);
  ck_assert_uint_eq(vlen, sizeof(v));
  ck_assert_int_eq(memcmp(vals, v, sizeof(v)), 0);
  protobuf_c_message_free_unpacked(&d->base, NULL);
}
END_TEST

START_TEST(message_spec_round_trip) {
  ps_tensor_spec s, back;
  ps_tensor_spec_init(&s, PS_INIT_GLOROT_UNIFORM, PS_OPT_ADAMW);
  s.init.seed = 77;
  s.init.fan_in_includes_bias = 1;
  s.optim.lr = 0.003;
  s.optim.schedule = PS_SCHED_COSINE;
  s.optim.total_steps = 1000;
  s.optim.warmup = 10;
  s.optim.clip_norm = 1.5;
  s.block_size = 4096;
  uint64_t shape[2] = {256, 784};
  pmsg_spec_pb pb;
  pmsg_spec_to_pb(&pb, &s, shape, 2);
  uint8_t buf[1024];
  size_t n = psd__tensor_spec__pack(&pb.ts, buf);
  Psd__TensorSpec *d = psd__tensor_spec__unpack(NULL, n, buf);
  ck_assert_ptr_nonnull(d);
  char err[256];
  ck_assert_int_eq(pmsg_spec_from_pb(d, &back, err, sizeof(err)), 0);
  ck_assert_uint_eq(d->n_shape, 2);
  ck_assert_uint_eq(d->shape[1], 784);
  ck_assert_int_eq(psm_spec_diff(&s, &back, err, sizeof(err)), 0);
  psd__tensor_spec__free_unpacked(d, NULL);

  /* Absent fields take the defaults of the named kinds (docs/math.md). */
  Psd__TensorSpec empty = PSD__TENSOR_SPEC__INIT;
  Psd__OptimSpec o = PSD__OPTIM_SPEC__INIT;
  o.kind = "adam";
  empty.optim = &o;
  ck_assert_int_eq(pmsg_spec_from_pb(&empty, &back, err, sizeof(err)), 0);
  ck_assert(back.optim.kind == PS_OPT_ADAM);
  ck_assert(back.optim.lr == 0.001 && back.optim.beta1 == 0.9 && back.optim.beta2 == 0.999);
  ck_assert(back.optim.eps == 1e-8);
  o.kind = "adamax";
  ck_assert_int_eq(pmsg_spec_from_pb(&empty, &back, err, sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "adamax"));
}
END_TEST

START_TEST(placement_rendezvous) {
  char err[256];
  psp_servers s3, s4;
  ck_assert_int_eq(psp_servers_parse(&s3, "a:1, b:2,c:3", err, sizeof(err)), 0);
  ck_assert_int_eq(psp_servers_parse(&s4, "a:1,b:2,c:3,d:4", err, sizeof(err)), 0);
  ck_assert_str_eq(s3.list, "a:1,b:2,c:3");
  int counts[3] = {0, 0, 0}, moved = 0, n = 30000;
  uint64_t h = psm_hash_name("fc0.w");
  for (int b = 0; b < n; b++) {
    int o3 = psp_owner(&s3, h, (uint64_t)b), o4 = psp_owner(&s4, h, (uint64_t)b);
    counts[o3]++;
    if (o3 != o4) {
      moved++;
      ck_assert_int_eq(o4, 3); /* blocks only move to the new shard */
    }
  }
  for (int i = 0; i < 3; i++) ck_assert_int_gt(counts[i], n / 3 - n / 20);
  /* About 1/(N+1) of the blocks move from 3 to 4 shards. */
  ck_assert_int_gt(moved, n / 4 - n / 25);
  ck_assert_int_lt(moved, n / 4 + n / 25);
  ck_assert_uint_ne(s3.list_hash, s4.list_hash);
  psp_servers_free(&s3);
  psp_servers_free(&s4);

  ck_assert_int_eq(psp_servers_parse(&s3, "a:1,a:1", err, sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "twice"));
  ck_assert_int_eq(psp_servers_parse(&s3, "a:1,nocolon", err, sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "nocolon"));
  char host[64];
  int port;
  ck_assert_int_eq(psp_split_hostport("[::1]:7070", host, sizeof(host), &port), 0);
  ck_assert_str_eq(host, "::1");
  ck_assert_int_eq(port, 7070);
  ck_assert_int_eq(psp_split_hostport("h:99999", host, sizeof(host), &port), -1);
}
END_TEST

/* A lane made and attached in one process (through /proc/self's pid, as a
 * worker does with the shard's); a wrong cookie, fd or size is refused;
 * slots are first-fit, chunk-aligned, and come back when freed. */
START_TEST(lane_create_attach_alloc) {
  psl_lane s, c, bad;
  char err[256];
  ck_assert_int_eq(psl_create(&s, 10u * PSL_CHUNK + 1, err, sizeof(err)), 0);
  ck_assert_uint_eq(s.len, PSL_HEADER + 11u * PSL_CHUNK);
  uint8_t wrong[PSL_COOKIE];
  memcpy(wrong, s.cookie, PSL_COOKIE);
  wrong[3] ^= 1;
  ck_assert_int_eq(psl_attach(&bad, (uint32_t)getpid(), s.fd, s.len, wrong, PSL_COOKIE, err,
                              sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "cookie"));
  ck_assert_int_eq(psl_attach(&bad, (uint32_t)getpid(), s.fd, s.len - PSL_CHUNK, s.cookie,
                              PSL_COOKIE, err, sizeof(err)), -1);
  ck_assert_int_eq(psl_attach(&bad, (uint32_t)getpid(), 0, s.len, s.cookie, PSL_COOKIE, err,
                              sizeof(err)), -1);
  ck_assert_int_eq(psl_attach(&c, (uint32_t)getpid(), s.fd, s.len, s.cookie, PSL_COOKIE, err,
                              sizeof(err)), 0);
  ck_assert_uint_eq(c.nfree, 11);
  /* Both mappings see the same bytes. */
  c.base[PSL_HEADER] = 42;
  ck_assert_int_eq(s.base[PSL_HEADER], 42);

  uint64_t a = psl_alloc(&c, 1), b = psl_alloc(&c, 3 * PSL_CHUNK), d = psl_alloc(&c, PSL_CHUNK);
  ck_assert_uint_eq(a, PSL_HEADER);
  ck_assert_uint_eq(b, PSL_HEADER + PSL_CHUNK);
  ck_assert_uint_eq(d, PSL_HEADER + 4 * PSL_CHUNK);
  ck_assert_uint_eq(psl_alloc(&c, 7 * PSL_CHUNK), 0); /* 6 left */
  psl_free(&c, b, 3 * PSL_CHUNK);
  ck_assert_uint_eq(psl_alloc(&c, 2 * PSL_CHUNK), b); /* first fit */
  uint64_t e = psl_alloc(&c, 6 * PSL_CHUNK);
  ck_assert_uint_eq(e, PSL_HEADER + 5 * PSL_CHUNK);
  ck_assert_uint_eq(c.nfree, 1);
  ck_assert(psl_range_ok(&c, e, 6 * PSL_CHUNK));
  ck_assert(!psl_range_ok(&c, e, 6 * PSL_CHUNK + 1));
  ck_assert(!psl_range_ok(&c, 64, 4));
  ck_assert(!psl_range_ok(&c, e + 4, 4));
  psl_close(&c);
  psl_close(&s);
  psl_close(&s); /* closing twice is harmless */
  /* A lane never made owns no descriptor, whatever its fd field says (a
   * calloc'd struct says 0). */
  psl_lane z;
  memset(&z, 0, sizeof(z));
  z.fd = open("/dev/null", O_RDONLY);
  ck_assert_int_ge(z.fd, 0);
  int keep = z.fd;
  psl_close(&z);
  ck_assert_int_ge(fcntl(keep, F_GETFD), 0);
  close(keep);
}
END_TEST

/* Strings as they are on the wire: NUL bytes and invalid UTF-8 found, in
 * nested messages too; bytes fields and valid UTF-8 pass. */
START_TEST(strings_checked_on_the_wire) {
  char why[256];
  Psd__Request r = PSD__REQUEST__INIT;
  Psd__Lookup lk = PSD__LOOKUP__INIT;
  lk.name = "w-XYZ";
  r.id = 9;
  r.body_case = PSD__REQUEST__BODY_LOOKUP;
  r.lookup = &lk;
  uint8_t buf[256];
  size_t n = protobuf_c_message_pack(&r.base, buf);
  ck_assert_int_eq(psw_check_strings(&psd__request__descriptor, buf, n, why, sizeof(why)), 0);
  uint8_t *p = memmem(buf, n, "XYZ", 3);
  ck_assert_ptr_nonnull(p);
  static const struct { const char *bytes; const char *says; } bad[] = {
      {"X\0Y", "NUL"},       {"\xff\xfeY", "UTF-8"}, {"\xc0\xafY", "UTF-8"},
      {"\xed\xa0\x80", "UTF-8"}, {"Y\xe2\x82", "UTF-8"}};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    memcpy(p, bad[i].bytes, 3);
    ck_assert_int_eq(psw_check_strings(&psd__request__descriptor, buf, n, why, sizeof(why)),
                     -1);
    ck_assert_ptr_nonnull(strstr(why, bad[i].says));
    ck_assert_ptr_nonnull(strstr(why, "Lookup.name"));
  }
  memcpy(p, "\xc3\xa9Z", 3); /* U+00E9 */
  ck_assert_int_eq(psw_check_strings(&psd__request__descriptor, buf, n, why, sizeof(why)), 0);

  /* A kind string inside Create.spec.init, and values (bytes) skipped. */
  ps_tensor_spec s;
  ps_tensor_spec_init(&s, PS_INIT_ZEROS, PS_OPT_SGD);
  uint64_t shape[1] = {4};
  pmsg_spec_pb pb;
  pmsg_spec_to_pb(&pb, &s, shape, 1);
  pb.init.kind = "zerosXjunk";
  Psd__Create cr = PSD__CREATE__INIT;
  cr.name = "t";
  cr.spec = &pb.ts;
  Psd__Request q = PSD__REQUEST__INIT;
  q.body_case = PSD__REQUEST__BODY_CREATE;
  q.create = &cr;
  uint8_t vals[8] = {0, 0xff, 0, 0xfe, 0, 0, 0, 0};
  q.has_values = 1;
  q.values.data = vals;
  q.values.len = sizeof(vals);
  uint8_t big[1024];
  n = protobuf_c_message_pack(&q.base, big);
  ck_assert_int_eq(psw_check_strings(&psd__request__descriptor, big, n, why, sizeof(why)), 0);
  p = memmem(big, n, "zerosXjunk", 10);
  p[5] = 0;
  ck_assert_int_eq(psw_check_strings(&psd__request__descriptor, big, n, why, sizeof(why)), -1);
  ck_assert_ptr_nonnull(strstr(why, "InitSpec.kind"));
}
END_TEST

/* psw_rbuf_grow_to tells the capacity a reserve will reach. */
START_TEST(rbuf_grow_to_predicts_reserve) {
  psw_rbuf b;
  psw_rbuf_init(&b, 1u << 26);
  size_t avail;
  ck_assert_uint_eq(psw_rbuf_grow_to(&b, 100), 65536);
  psw_rbuf_reserve(&b, 100, &avail);
  ck_assert_uint_eq(b.cap, 65536);
  uint8_t head[16] = {'P', 'S', 'D', '1', 1, 0, 0, 0};
  uint64_t len = 3u << 20;
  for (int i = 0; i < 8; i++) head[8 + i] = (uint8_t)(len >> (8 * i));
  uint8_t *d = psw_rbuf_reserve(&b, 16, &avail);
  memcpy(d, head, 16);
  psw_rbuf_commit(&b, 16);
  size_t want = psw_rbuf_grow_to(&b, 65536);
  ck_assert_uint_ge(want, (3u << 20) + 16);
  psw_rbuf_reserve(&b, 65536, &avail);
  ck_assert_uint_eq(b.cap, want);
  ck_assert_uint_eq(psw_rbuf_grow_to(&b, 65536), b.cap); /* no further growth */
  psw_rbuf_free(&b);
}
END_TEST

int main(void) {
  Suite *s = suite_create("wire");
  TCase *tc = tcase_create("framing");
  tcase_add_test(tc, frame_values_aligned);
  tcase_add_test(tc, frame_split_over_many_reads);
  tcase_add_test(tc, frame_many_in_one_read);
  tcase_add_test(tc, frame_oversized_rejected_before_buffering);
  tcase_add_test(tc, frame_garbage_and_bad_headers);
  tcase_add_test(tc, strings_checked_on_the_wire);
  tcase_add_test(tc, rbuf_grow_to_predicts_reserve);
  suite_add_tcase(s, tc);
  tc = tcase_create("messages");
  tcase_add_test(tc, message_values_not_last_still_decoded);
  tcase_add_test(tc, message_spec_round_trip);
  suite_add_tcase(s, tc);
  tc = tcase_create("placement");
  tcase_add_test(tc, placement_rendezvous);
  suite_add_tcase(s, tc);
  tc = tcase_create("lane");
  tcase_add_test(tc, lane_create_attach_alloc);
  suite_add_tcase(s, tc);
  return check_run(s);
}
