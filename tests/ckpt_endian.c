/*
 * ckpt_endian.c -- the checkpoint format on a big-endian host: built natively
 * and for s390x (run under qemu) by ckpt_endian.sh, which compares what the
 * two write and read. Prints what it writes, reads back, and finds in
 * tests/data/ckpt-v1.psd (written on x86 by an older psd).
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h> /* the script puts a stand-in first on the include path */
#include "ckpt_format.h"

/* zlib's CRC-32, bit by bit: no zlib is needed for the cross build. */
uLong crc32(uLong crc, const Bytef *buf, uInt len) {
  if (buf == NULL) return 0;
  crc = ~crc & 0xffffffffUL;
  for (uInt i = 0; i < len; i++) {
    crc ^= buf[i];
    for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xEDB88320UL & (0UL - (crc & 1)));
  }
  return ~crc & 0xffffffffUL;
}

int main(int argc, char **argv) {
  printf("host: %s-endian\n", __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ ? "little" : "big");
  /* 1. write a small file */
  const char *out = argv[1];
  int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ckw *w = ckw_open(fd, 0x0102030405060708ull);
  float f[3] = {1.5f, -2.25f, 3.0e-7f};
  ckw_begin(w, 7, 4 + 8 + 12 + 4 + 2);
  ckw_u32(w, 0x11223344u);
  ckw_u64(w, 0x5566778899aabbccull);
  ckw_f32s(w, f, 3);
  ckw_str(w, "ab");
  ckw_end(w);
  printf("close: %d\n", ckw_close(w));
  close(fd);
  /* 2. read it back */
  ck_status st = {0};
  ckr *r = ckr_open(out, &st);
  uint32_t type; uint64_t len;
  int rc = ckr_next(r, &type, &len);
  uint32_t a = ckr_u32(r); uint64_t b = ckr_u64(r); float g[3]; ckr_f32s(r, g, 3);
  char *s = ckr_str(r);
  int e = ckr_end(r);
  int rc2 = ckr_next(r, &type, &len);
  printf("read: rc=%d type=%u a=%08x b=%016llx f=%g %g %g s=%s end=%d next=%d why=%s\n", rc, type, a,
         (unsigned long long)b, g[0], g[1], g[2], s, e, rc2, st.why);
  free(s);
  ckr_close(r);
  /* 3. walk the fixture (written on x86 by the older psd) */
  st = (ck_status){0};
  uint64_t size;
  printf("verify %s: %d %s\n", argv[2], ckf_verify(argv[2], &st, &size), st.why);
  st = (ck_status){0};
  r = ckr_open(argv[2], &st);
  while (ckr_next(r, &type, &len) == 1) {
    printf("section %u len %llu:", type, (unsigned long long)len);
    if (type == 5) { /* BLOCK: ti, bi, version, n, weights */
      uint64_t ti = ckr_u64(r), bi = ckr_u64(r), ver = ckr_u64(r), n = ckr_u64(r);
      float v[8]; ckr_f32s(r, v, n < 8 ? n : 8);
      printf(" t%llu b%llu v%llu n%llu w0=%.9g w1=%.9g", (unsigned long long)ti, (unsigned long long)bi,
             (unsigned long long)ver, (unsigned long long)n, v[0], v[1]);
      ckr_skip(r, ckr_left(r));
    } else if (type == 2) {
      uint32_t rank = ckr_u32(r), j = ckr_u32(r); uint64_t wid = ckr_u64(r);
      printf(" rank %u joined %u wid %llx", rank, j, (unsigned long long)wid);
      ckr_skip(r, ckr_left(r));
    } else {
      ckr_skip(r, ckr_left(r));
    }
    printf(" end=%d\n", ckr_end(r));
  }
  printf("done: %s\n", st.why[0] ? st.why : "ok");
  ckr_close(r);
  return 0;
}
