/*
 * fuzz_wire.c -- libFuzzer target over everything psd parses from a peer
 * before any tensor is touched: the frame header and the accumulate-and-
 * drain buffer (fed in pieces whose sizes the input chooses), protobuf
 * decoding of Requests and Responses with the in-place values path, the
 * envelope walker on partial frames, tensor specs (conversion and validation, as a create is
 * checked), server lists (as a hello is checked) and lane slot ranges.
 *
 * Built only with -DPSD_FUZZ=ON and clang (tests/run.sh runs it for a fixed
 * number of inputs). A crash, a sanitizer report or a leak is a finding.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lane.h"
#include "msg.h"
#include "placement.h"
#include "psmath.h"
#include "wire.h"

static void check_spec(const Psd__TensorSpec *pb) {
  ps_tensor_spec spec;
  char err[256];
  if (pb == NULL || pmsg_spec_from_pb(pb, &spec, err, sizeof(err)) != 0) return;
  uint64_t shape[16];
  int nd = pb->n_shape > 16 ? 16 : (int)pb->n_shape;
  for (int i = 0; i < nd; i++) shape[i] = pb->shape[i];
  psm_init_validate(&spec.init, shape, nd, err, sizeof(err));
  psm_optim_validate(&spec.optim, err, sizeof(err));
}

static void check_request(const uint8_t *payload, uint64_t len) {
  const uint8_t *vals;
  size_t vlen;
  Psd__Request *r = (Psd__Request *)psw_decode(&psd__request__descriptor, payload, (size_t)len,
                                               &vals, &vlen);
  if (r == NULL) return;
  if (vlen > 0 && ((uintptr_t)vals & 3) == 0) (void)psm_all_finite((const float *)vals, vlen / 4);
  switch (r->body_case) {
    case PSD__REQUEST__BODY_CREATE:
      check_spec(r->create->spec);
      break;
    case PSD__REQUEST__BODY_HELLO:
      if (r->hello->servers != NULL) {
        psp_servers s;
        char err[256];
        if (psp_servers_parse(&s, r->hello->servers, err, sizeof(err)) == 0) {
          if (s.n > 0) (void)psp_owner(&s, s.list_hash, r->hello->shard_index);
          psp_servers_free(&s);
        }
      }
      break;
    case PSD__REQUEST__BODY_PUSH: {
      /* The shard's slot check, against a lane-sized range with no lane. */
      static uint8_t dummy;
      psl_lane l;
      memset(&l, 0, sizeof(l));
      l.base = &dummy; /* psl_range_ok never dereferences it */
      l.len = PSL_HEADER + (16u << 20);
      (void)psl_range_ok(&l, r->push->lane_in, r->push->lane_len);
      (void)psl_range_ok(&l, r->push->lane_out, r->push->lane_len);
      break;
    }
    default:
      break;
  }
  protobuf_c_message_free_unpacked(&r->base, NULL);
}

static void check_response(const uint8_t *payload, uint64_t len) {
  const uint8_t *vals;
  size_t vlen;
  Psd__Response *r = (Psd__Response *)psw_decode(&psd__response__descriptor, payload,
                                                 (size_t)len, &vals, &vlen);
  if (r == NULL) return;
  if (r->body_case == PSD__RESPONSE__BODY_INFO) check_spec(r->info->spec);
  protobuf_c_message_free_unpacked(&r->base, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  /* First byte: the read size pattern (1..256 bytes per read). */
  size_t step = (size_t)data[0] + 1;
  data++, size--;

  /* The envelope walker the client uses on partial frames, over the input
   * and every part of it. */
  for (size_t n = size; n > 0; n = n > 64 ? n / 2 : n - 1) {
    size_t key_off, off;
    uint64_t vlen;
    if (psw_find_values(data, n, &key_off, &off, &vlen) == 0 && (key_off >= off || off > n))
      __builtin_trap();
  }

  psw_rbuf b;
  psw_rbuf_init(&b, 1u << 20);
  size_t off = 0;
  int dead = 0;
  while (off < size && !dead) {
    size_t avail;
    /* What the daemon charges to its memory ceiling before it reserves. */
    size_t grow = psw_rbuf_grow_to(&b, step);
    uint8_t *dst = psw_rbuf_reserve(&b, step, &avail);
    if (dst != NULL && b.cap != grow) __builtin_trap();
    if (dst == NULL) break;
    size_t n = size - off < step ? size - off : step;
    if (n > avail) n = avail;
    memcpy(dst, data + off, n);
    psw_rbuf_commit(&b, n);
    off += n;
    for (;;) {
      const uint8_t *payload;
      uint64_t len;
      int r = psw_rbuf_next(&b, &payload, &len);
      if (r == PSW_NEED_MORE) {
        /* What the library looks at before reading a reply in place. */
        const uint8_t *pay;
        size_t have, key_off, voff;
        uint64_t plen, vlen;
        if (psw_rbuf_partial(&b, &pay, &have, &plen) &&
            psw_find_values(pay, have, &key_off, &voff, &vlen) == 0 && voff > have)
          __builtin_trap();
        break;
      }
      if (r < 0) {
        (void)psw_strerror(r);
        dead = 1; /* the connection would be closed */
        break;
      }
      char why[256];
      (void)psw_check_strings(&psd__request__descriptor, payload, (size_t)len, why,
                              sizeof(why));
      check_request(payload, len);
      check_response(payload, len);
      psw_rbuf_consume(&b, len);
    }
  }
  psw_rbuf_free(&b);
  return 0;
}
