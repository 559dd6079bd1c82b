/*
 * test_common.c -- unit tests of the small shared modules of common/ that
 * the daemon and the library must agree on bit for bit: the hash
 * primitives (hash.h, with the values placement and initialization were
 * built on pinned), how a tensor is cut into blocks (placement.h) and the
 * limits of a tensor (psd_limits.h); the u64map both use; the mapping
 * between the protocol's error codes and PS_E* (wire.h); how numbers are
 * written for people and JSON (numfmt.h).
 */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "hash.h"
#include "log.h"
#include "numfmt.h"
#include "placement.h"
#include "psd_limits.h"
#include "psmath.h"
#include "u64map.h"
#include "wire.h"

#include "check_main.h"

/* ---- hash.h ---------------------------------------------------------------- */

/* Values computed before the hashes were gathered into hash.h: placement,
 * the hello's servers_hash and every initial weight depend on them. */
START_TEST(hash_values_pinned) {
  ck_assert_uint_eq(psh_fnv1a(PSH_FNV_BASIS, ""), PSH_FNV_BASIS);
  ck_assert_uint_eq(psh_fnv1a(PSH_FNV_BASIS, "a"), UINT64_C(0xaf63dc4c8601ec8c));
  ck_assert_uint_eq(psh_fnv1a(PSH_FNV_BASIS_LIST, ""), UINT64_C(0x14650fb0739d0383));
  ck_assert_uint_eq(psh_fnv1a(PSH_FNV_BASIS_LIST, "a"), UINT64_C(0x44bd8ad473cd9906));
  ck_assert_uint_eq(psh_fnv1a(PSH_FNV_BASIS_LIST, "fc0.w"), UINT64_C(0xcdecca0f24464f83));
  ck_assert_uint_eq(psh_mix64(0), 0);
  ck_assert_uint_eq(psh_mix64(PSH_GOLDEN), UINT64_C(0xe220a8397b1dcdaf)); /* SplitMix64(0), 1st */

  ck_assert_uint_eq(psm_hash_name(""), UINT64_C(0xf52a15e9a9b5e89b));
  ck_assert_uint_eq(psm_hash_name(NULL), UINT64_C(0xf52a15e9a9b5e89b));
  ck_assert_uint_eq(psm_hash_name("a"), UINT64_C(0x02c0bdbf481420f8));
  ck_assert_uint_eq(psm_hash_name("fc0.w"), UINT64_C(0x95aab3e85c0a38be));
  ck_assert_uint_eq(psm_hash_name("layer3.bias"), UINT64_C(0x6a130887f7781e66));
}
END_TEST

START_TEST(hash_placement_and_init_pinned) {
  psp_servers s;
  char err[128];
  ck_assert_int_eq(psp_servers_parse(&s, "h1:7070, h2:7070,h3:7070", err, sizeof(err)), 0);
  ck_assert_uint_eq(s.list_hash, UINT64_C(0x6fa3d14a3c08d283));
  static const int owners[24] = {2, 2, 2, 1, 0, 0, 2, 0, 1, 1, 0, 2,
                                 0, 2, 1, 1, 0, 1, 0, 2, 2, 2, 0, 1};
  uint64_t h = psm_hash_name("fc0.w");
  for (int b = 0; b < 24; b++) ck_assert_int_eq(psp_owner(&s, h, (uint64_t)b), owners[b]);
  psp_servers_free(&s);

  ps_init_spec in;
  psm_init_defaults(&in, PS_INIT_HE_NORMAL);
  in.seed = 7;
  uint64_t shape[2] = {4, 8};
  float out[8];
  static const float want[8] = {0x1.c5b6p-1f,   0x1.ad03fep-3f,  0x1.fee8ap-2f, 0x1.479ccep-6f,
                                -0x1.55b83ap-4f, 0x1.73d5c4p-1f, -0x1.8e944p-1f, 0x1.db176p-1f};
  psm_init_fill(&in, shape, 2, h, 3, out, 8);
  ck_assert_int_eq(memcmp(out, want, sizeof(want)), 0);
}
END_TEST

/* ---- blocks (placement.h) ---------------------------------------------------- */

START_TEST(blocks_cover_the_tensor) {
  static const uint64_t sizes[][2] = {{1, 1}, {10, 3}, {12, 3}, {262144, 262144},
                                      {262145, 262144}, {(1ull << 31) + 7, 1ull << 18},
                                      {5, 1000}, {1ull << 62, 1ull << 40}};
  for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
    uint64_t numel = sizes[k][0], bs = sizes[k][1], nb = psp_nblocks(numel, bs);
    ck_assert_uint_eq(nb, (numel + bs - 1) / bs);
    /* Consecutive, full but the last, covering [0, numel) exactly. */
    uint64_t first, n, next = 0;
    for (uint64_t b = 0; b < nb; b += nb > 64 ? nb / 64 : 1) {
      n = psp_block_range(numel, bs, b, &first);
      ck_assert_uint_eq(first, b * bs);
      ck_assert_uint_eq(n, b + 1 < nb ? bs : numel - b * bs);
      if (nb <= 64) ck_assert_uint_eq(first, next);
      next = first + n;
    }
    n = psp_block_range(numel, bs, nb - 1, &first);
    ck_assert_uint_eq(first + n, numel);
    ck_assert_uint_ge(n, 1);
    ck_assert_uint_eq(psp_block_range(numel, bs, nb, &first), 0);
    ck_assert_uint_eq(first, numel);
    ck_assert_uint_eq(psp_block_range(numel, bs, UINT64_MAX, &first), 0);
  }
  ck_assert_uint_eq(psp_nblocks(0, 8), 0);
  ck_assert_uint_eq(psp_nblocks(UINT64_MAX, UINT64_MAX), 1);
}
END_TEST

START_TEST(limits_numel) {
  uint64_t shape[3] = {256, 784, 1};
  ck_assert_uint_eq(psd_numel(shape, 3), 256 * 784);
  ck_assert_uint_eq(psd_numel(shape, 0), 1);
  shape[2] = 0;
  ck_assert_uint_eq(psd_numel(shape, 3), 0);
  uint64_t edge[2] = {1ull << 31, 1ull << 31};
  ck_assert_uint_eq(psd_numel(edge, 2), PSD_MAX_NUMEL);
  edge[1]++;
  ck_assert_uint_eq(psd_numel(edge, 2), 0);
  uint64_t wrap[2] = {1ull << 32, 1ull << 32}; /* 2^64: must not wrap to 0 or pass */
  ck_assert_uint_eq(psd_numel(wrap, 2), 0);
  /* The block bound is its own limit: the largest tensor in default blocks
   * exceeds it, test_cluster's tensor of 2^31 + 7 elements does not. */
  ck_assert_uint_gt(psp_nblocks(PSD_MAX_NUMEL, PSD_DEFAULT_BLOCK), PSD_MAX_BLOCKS);
  ck_assert_uint_le(psp_nblocks((1ull << 31) + 7, PSD_DEFAULT_BLOCK), PSD_MAX_BLOCKS);
}
END_TEST

/* ---- u64map ---------------------------------------------------------------- */

static uint64_t rng_next(uint64_t *s) { return psh_mix64(*s += PSH_GOLDEN); }

/* Random puts, replacements, gets and deletes against a plain array, with
 * keys from a small range (so deletes hit, and runs in the table are long)
 * and key 0 among them. */
START_TEST(u64map_matches_a_reference) {
  enum { RANGE = 3000, OPS = 200000 };
  static uint64_t ref[RANGE];
  static unsigned char has[RANGE];
  memset(has, 0, sizeof(has));
  u64map m = U64MAP_INIT;
  uint64_t seed = 42, v;
  size_t n = 0;
  for (int op = 0; op < OPS; op++) {
    uint64_t r = rng_next(&seed), k = r % RANGE;
    /* Half the keys far apart (hashed), half sequential as request ids. */
    uint64_t key = (k & 1) ? psh_mix64(k) : k;
    switch ((r >> 32) % 4) {
      case 0:
      case 1:
        ck_assert_int_eq(u64map_put(&m, key, r), 0);
        n += !has[k];
        has[k] = 1;
        ref[k] = r;
        break;
      case 2:
        ck_assert_int_eq(u64map_del(&m, key, &v), has[k]);
        if (has[k]) ck_assert_uint_eq(v, ref[k]);
        n -= has[k];
        has[k] = 0;
        break;
      default:
        ck_assert_int_eq(u64map_get(&m, key, &v), has[k]);
        if (has[k]) ck_assert_uint_eq(v, ref[k]);
    }
    ck_assert_uint_eq(m.len, n);
  }
  for (uint64_t k = 0; k < RANGE; k++) {
    uint64_t key = (k & 1) ? psh_mix64(k) : k;
    ck_assert_int_eq(u64map_get(&m, key, NULL), has[k]);
  }
  /* Iteration visits every entry once. */
  static unsigned char seen[RANGE];
  memset(seen, 0, sizeof(seen));
  size_t it = 0, count = 0;
  uint64_t key;
  while (u64map_next(&m, &it, &key, &v)) {
    uint64_t k = key < RANGE ? key : RANGE;
    if (k == RANGE)
      for (uint64_t j = 1; j < RANGE; j += 2)
        if (psh_mix64(j) == key) k = j;
    ck_assert_uint_lt(k, RANGE);
    ck_assert(has[k] && !seen[k]);
    ck_assert_uint_eq(v, ref[k]);
    seen[k] = 1;
    count++;
  }
  ck_assert_uint_eq(count, n);
  ck_assert_int_eq(u64map_next(&m, &it, &key, &v), 0);
  u64map_free(&m);
  ck_assert_uint_eq(m.len, 0);
  ck_assert_int_eq(u64map_get(&m, 0, NULL), 0);
  ck_assert_int_eq(u64map_del(&m, 7, NULL), 0);
}
END_TEST

START_TEST(u64map_key_zero_and_pointers) {
  u64map m = U64MAP_INIT;
  uint64_t v = 1, k;
  size_t it = 0;
  ck_assert_int_eq(u64map_next(&m, &it, &k, &v), 0);
  ck_assert_int_eq(u64map_put(&m, 0, 5), 0);
  ck_assert_int_eq(u64map_put(&m, 0, 6), 0);
  ck_assert_uint_eq(m.len, 1);
  ck_assert_int_eq(u64map_get(&m, 0, &v), 1);
  ck_assert_uint_eq(v, 6);
  it = 0;
  ck_assert_int_eq(u64map_next(&m, &it, &k, &v), 1);
  ck_assert_uint_eq(k, 0);
  ck_assert_int_eq(u64map_next(&m, &it, &k, &v), 0);
  ck_assert_int_eq(u64map_del(&m, 0, &v), 1);
  ck_assert_uint_eq(v, 6);
  ck_assert_uint_eq(m.len, 0);

  int x, y;
  ck_assert_ptr_null(u64map_get_ptr(&m, 9));
  ck_assert_int_eq(u64map_put_ptr(&m, 9, &x), 0);
  ck_assert_int_eq(u64map_put_ptr(&m, UINT64_MAX, &y), 0);
  ck_assert_ptr_eq(u64map_get_ptr(&m, 9), &x);
  ck_assert_ptr_eq(u64map_del_ptr(&m, UINT64_MAX), &y);
  ck_assert_ptr_null(u64map_del_ptr(&m, UINT64_MAX));
  u64map_free(&m);
}
END_TEST

#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define NO_RLIMIT_AS 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define NO_RLIMIT_AS 1
#endif

/* A put that cannot grow the table fails and changes nothing. The test
 * runs in its own process (Check forks): it caps the address space. */
START_TEST(u64map_put_out_of_memory_changes_nothing) {
#ifdef NO_RLIMIT_AS
  return; /* sanitizers reserve more address space than any cap allows */
#else
  const char *fork = getenv("CK_FORK");
  if (fork != NULL && strcmp(fork, "no") == 0) return; /* the cap would outlive the test */
  /* 32 MiB above what the process maps now. */
  unsigned long pages = 0;
  FILE *f = fopen("/proc/self/statm", "r");
  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(fscanf(f, "%lu", &pages), 1);
  fclose(f);
  rlim_t limit = (rlim_t)pages * (rlim_t)sysconf(_SC_PAGESIZE) + (32u << 20);
  struct rlimit rl = {limit, limit};
  ck_assert_int_eq(setrlimit(RLIMIT_AS, &rl), 0);
  u64map m = U64MAP_INIT;
  uint64_t k;
  size_t len, cap;
  for (k = 1;; k++) {
    len = m.len, cap = m.cap;
    if (u64map_put(&m, k, k * 3) != 0) break;
  }
  ck_assert_uint_gt(len, 100000);
  ck_assert_uint_eq(m.len, len);
  ck_assert_uint_eq(m.cap, cap);
  ck_assert_int_eq(u64map_get(&m, k, NULL), 0);
  for (uint64_t j = 1; j < k; j += 997) {
    uint64_t v;
    ck_assert_int_eq(u64map_get(&m, j, &v), 1);
    ck_assert_uint_eq(v, j * 3);
  }
  /* Replacing a value needs no room. */
  ck_assert_int_eq(u64map_put(&m, 1, 11), 0);
  ck_assert_uint_eq(m.len, len);
  u64map_free(&m);
#endif
}
END_TEST

/* ---- error codes (wire.h) ------------------------------------------------------ */

START_TEST(error_codes_map_both_ways) {
  ck_assert_int_eq(psw_code_to_err(PSD__CODE__NOT_FOUND), PS_ENOTFOUND);
  ck_assert_int_eq(psw_code_to_err(PSD__CODE__WRONG_SHARD), PS_EWRONGSHARD);
  for (int e = PS_EJOBENDED; e <= PS_EBADFRAME; e++)
    ck_assert_int_eq(psw_code_to_err(psw_err_to_code(e)), e);
  /* What no valid Error carries becomes PS_EINTERNAL. */
  static const int odd[] = {PSD__CODE__OK, -1, 1000, -15};
  for (size_t i = 0; i < sizeof(odd) / sizeof(odd[0]); i++)
    ck_assert_int_eq(psw_code_to_err(odd[i]), PS_EINTERNAL);
  ck_assert_int_eq(psw_err_to_code(PS_OK), PSD__CODE__OK);
  ck_assert_int_eq(psw_err_to_code(PS_EIO), PSD__CODE__IO);
  ck_assert_int_eq(psw_code_to_err(PSD__CODE__RESOURCE_EXHAUSTED), PS_ERESOURCE);
  ck_assert_int_eq(psw_code_to_err(PSD__CODE__BAD_REQUEST), PS_EBADREQ);
  ck_assert_int_eq(psw_code_to_err(PSD__CODE__UNAUTHENTICATED), PS_EAUTH);
  ck_assert_int_eq(psw_code_to_err(PSD__CODE__PERMISSION_DENIED), PS_EPERM);
  ck_assert_int_eq(psw_code_to_err(PSD__CODE__JOB_ENDED), PS_EJOBENDED);
  ck_assert_int_eq(psw_err_to_code(PS_EAUTH), PSD__CODE__UNAUTHENTICATED);
  ck_assert_int_eq(psw_err_to_code(PS_EINVAL), PSD__CODE__INTERNAL);
  ck_assert_int_eq(psw_err_to_code(PS_ETICKET), PSD__CODE__INTERNAL);
  ck_assert_int_eq(psw_err_to_code(5), PSD__CODE__INTERNAL);
}
END_TEST
/* ---- log lines ------------------------------------------------------------ */

/* What plog writes to stderr for one call, in the given format. */
static char *log_line(int format, const char *const *fields, const char *msg) {
  static char buf[8192];
  FILE *tmp = tmpfile();
  ck_assert_ptr_nonnull(tmp);
  fflush(stderr);
  int saved = dup(STDERR_FILENO);
  dup2(fileno(tmp), STDERR_FILENO);
  plog_set_format(format);
  plog_write_kv(PLOG_WARN, fields, "%s", msg);
  plog_set_format(PLOG_TEXT);
  dup2(saved, STDERR_FILENO);
  close(saved);
  rewind(tmp);
  size_t n = fread(buf, 1, sizeof(buf) - 1, tmp);
  buf[n] = '\0';
  fclose(tmp);
  return buf;
}

/* JSON lines: one object per line, quotes and backslashes escaped, control
 * characters as \u00XX, bytes that are not UTF-8 as U+FFFD, valid UTF-8
 * kept; fields as members. Text: the message, then key=value. */
START_TEST(log_json_escaping) {
  const char *fields[] = {"tensor", "a\"b\\c", "bytes", "x\x01y\xff", NULL};
  char *l = log_line(PLOG_JSON, fields, "caf\xc3\xa9 \"q\"\n\ttab");
  ck_assert_msg(strncmp(l, "{\"time\":\"", 9) == 0, "%s", l);
  ck_assert_msg(strstr(l, "\",\"level\":\"warn\",\"component\":\"") != NULL, "%s", l);
  ck_assert_msg(strstr(l, ",\"msg\":\"caf\xc3\xa9 \\\"q\\\"\\n\\ttab\"") != NULL, "%s", l);
  ck_assert_msg(strstr(l, ",\"tensor\":\"a\\\"b\\\\c\"") != NULL, "%s", l);
  ck_assert_msg(strstr(l, ",\"bytes\":\"x\\u0001y\\ufffd\"}\n") != NULL, "%s", l);
  ck_assert_int_eq((int)strlen(l), (int)(strchr(l, '\n') - l) + 1); /* one line */
  /* A message far longer than a line still ends as an object. */
  static char big[3000];
  memset(big, '\x01', sizeof(big) - 1);
  l = log_line(PLOG_JSON, NULL, big);
  size_t n = strlen(l);
  ck_assert(n > 2 && l[n - 1] == '\n' && l[n - 2] == '}' && l[n - 3] == '"');
  l = log_line(PLOG_TEXT, fields, "plain");
  ck_assert_msg(strstr(l, " WARN  ") != NULL && strstr(l, "plain tensor=a\"b\\c bytes=") != NULL,
                "%s", l);
  ck_assert_int_eq(plog_parse_format("json"), PLOG_JSON);
  ck_assert_int_eq(plog_parse_format("TEXT"), PLOG_TEXT);
  ck_assert_int_eq(plog_parse_format("yaml"), -1);
}
END_TEST

/* ---- numfmt.h ---------------------------------------------------------------- */

/* Exact texts: the shortest digits, fixed-point from 1e-4 to 17 integer
 * digits, C's exponent form outside. */
START_TEST(numfmt_exact_strings) {
  static const struct {
    double x;
    const char *s;
  } cases[] = {
      {0.9, "0.9"},
      {0.1, "0.1"},
      {0.1 + 0.2, "0.30000000000000004"},
      {1.0 / 3.0, "0.3333333333333333"},
      {0.999, "0.999"},
      {1e-8, "1e-08"},
      {0.001, "0.001"},
      {0.0001, "0.0001"},
      {0.00001, "1e-05"},
      {0.000123, "0.000123"},
      {2.5e-5, "2.5e-05"},
      {0.0, "0"},
      {-0.0, "-0"},
      {1.0, "1"},
      {-2.5, "-2.5"},
      {10.0, "10"},
      {1000.0, "1000"},
      {262144.0, "262144"},
      {1.5e6, "1500000"},
      {123.456, "123.456"},
      {1e16, "10000000000000000"},
      {12345678901234568.0, "12345678901234568"},
      {1e17, "1e+17"},
      {1.5e300, "1.5e+300"},
      {DBL_MAX, "1.7976931348623157e+308"},
      {DBL_MIN, "2.2250738585072014e-308"},
      {5e-324, "5e-324"},
      {-1e-30, "-1e-30"},
      {INFINITY, "inf"},
      {-INFINITY, "-inf"},
      {NAN, "nan"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
    ck_assert_msg(strcmp(psn_num(cases[i].x).s, cases[i].s) == 0, "case %zu: '%s', want '%s'",
                  i, psn_num(cases[i].x).s, cases[i].s);
  /* A float prints its own shortest digits, not its double's. */
  ck_assert_str_eq(psn_num_float(0.1f).s, "0.1");
  ck_assert_str_eq(psn_num_float(0.9f).s, "0.9");
  ck_assert_str_eq(psn_num_float(-4.08526611f).s, "-4.085266");
  ck_assert_str_eq(psn_num_float(16777216.0f).s, "16777216");
  ck_assert_str_eq(psn_num_float(FLT_MAX).s, "3.4028235e+38");
  ck_assert_str_eq(psn_num_float(1e-45f).s, "1e-45");
  /* Rounded first, then the shortest text of the rounded value. */
  ck_assert_str_eq(psn_num_at(0.0049999999999999992, 4).s, "0.005");
  ck_assert_str_eq(psn_num_at(12.0, 1).s, "12");
  ck_assert_str_eq(psn_num_at(1.23456, 2).s, "1.23");
  ck_assert_str_eq(psn_num_at(1e-5 * 1e3, 3).s, "0.01");
  ck_assert_str_eq(psn_num_at(-0.0001, 3).s, "-0");
  ck_assert_str_eq(psn_num_at(INFINITY, 3).s, "inf");
  /* A short buffer gets the text cut, terminated; the full length is
   * returned. */
  char small[4];
  ck_assert_uint_eq(psn_format(small, sizeof(small), 0.125), 5);
  ck_assert_str_eq(small, "0.1");
}
END_TEST

/* Significant digits of a text psn wrote: leading and trailing zeros of
 * the digit string do not count ("0.00120" -> 2, "1000" -> 1). */
static int sig_digits(const char *t) {
  char d[64];
  int n = 0;
  for (const char *p = t; *p != '\0' && *p != 'e'; p++)
    if (*p >= '0' && *p <= '9') d[n++] = *p;
  int a = 0, b = n;
  while (a < b && d[a] == '0') a++;
  while (b > a && d[b - 1] == '0') b--;
  return b > a ? b - a : 1;
}

/* A JSON number: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
static int json_number(const char *t) {
  const char *p = t;
  if (*p == '-') p++;
  if (*p == '0') p++;
  else if (*p >= '1' && *p <= '9') while (*p >= '0' && *p <= '9') p++;
  else return 0;
  if (*p == '.') {
    if (!(*++p >= '0' && *p <= '9')) return 0;
    while (*p >= '0' && *p <= '9') p++;
  }
  if (*p == 'e' || *p == 'E') {
    p++;
    if (*p == '+' || *p == '-') p++;
    if (!(*p >= '0' && *p <= '9')) return 0;
    while (*p >= '0' && *p <= '9') p++;
  }
  return *p == '\0';
}

/* One finite double: reads back to the same bits, is a JSON number, and
 * one significant digit fewer would not read back (shortest). */
static void check_double(double x) {
  psn_str t = psn_num(x);
  double y = strtod(t.s, NULL);
  ck_assert_msg(memcmp(&x, &y, sizeof(x)) == 0, "%a printed '%s', read back %a", x, t.s, y);
  ck_assert_msg(json_number(t.s), "'%s' is no JSON number", t.s);
  int d = sig_digits(t.s);
  if (d > 1) {
    char e[64];
    snprintf(e, sizeof(e), "%.*e", d - 2, x);
    ck_assert_msg(strtod(e, NULL) != x, "%a printed '%s', yet '%s' reads back too", x, t.s, e);
  }
}

static void check_float(float x) {
  psn_str t = psn_num_float(x);
  float y = strtof(t.s, NULL);
  ck_assert_msg(memcmp(&x, &y, sizeof(x)) == 0, "%a printed '%s', read back %a", (double)x,
                t.s, (double)y);
  int d = sig_digits(t.s);
  if (d > 1) {
    char e[64];
    snprintf(e, sizeof(e), "%.*e", d - 2, (double)x);
    ck_assert_msg(strtof(e, NULL) != x, "%a printed '%s', yet '%s' reads back too",
                  (double)x, t.s, e);
  }
}

/* The round trip and the shortness over many values: random bit patterns
 * (every exponent, subnormals included), short decimals (the values people
 * type: 0.9, 3e-4) and their neighbours one ulp away, integers around
 * 2^53, and random floats. */
START_TEST(numfmt_round_trips_shortest) {
  uint64_t k = 12345;
  for (int i = 0; i < 20000; i++) {
    uint64_t bits = psh_mix64(k += PSH_GOLDEN);
    double x;
    memcpy(&x, &bits, sizeof(x));
    if (isfinite(x)) check_double(x);
    float f;
    uint32_t b32 = (uint32_t)(bits >> 16);
    memcpy(&f, &b32, sizeof(f));
    if (isfinite(f)) check_float(f);
  }
  for (int e = -320; e <= 308; e++)
    for (int m = 1; m < 1000; m += 61) {
      char s[32];
      snprintf(s, sizeof(s), "%de%d", m, e);
      double x = strtod(s, NULL);
      if (!isfinite(x)) continue;
      check_double(x);
      check_double(nextafter(x, 0));
      check_double(-nextafter(x, INFINITY));
      float f = strtof(s, NULL);
      if (isfinite(f)) check_float(f);
    }
  for (int64_t i = -100; i <= 100; i++) {
    double x = (double)((INT64_C(1) << 53) + i);
    check_double(x);
    check_double(x * 10);
  }
}
END_TEST

int main(void) {
  Suite *s = suite_create("common");
  TCase *tc = tcase_create("hash");
  tcase_add_test(tc, hash_values_pinned);
  tcase_add_test(tc, hash_placement_and_init_pinned);
  suite_add_tcase(s, tc);
  tc = tcase_create("blocks");
  tcase_add_test(tc, blocks_cover_the_tensor);
  tcase_add_test(tc, limits_numel);
  suite_add_tcase(s, tc);
  tc = tcase_create("u64map");
  tcase_add_test(tc, u64map_matches_a_reference);
  tcase_add_test(tc, u64map_key_zero_and_pointers);
  tcase_add_test(tc, u64map_put_out_of_memory_changes_nothing);
  suite_add_tcase(s, tc);
  tc = tcase_create("errors");
  tcase_add_test(tc, error_codes_map_both_ways);
  tcase_add_test(tc, log_json_escaping);
  suite_add_tcase(s, tc);
  tc = tcase_create("numfmt");
  tcase_add_test(tc, numfmt_exact_strings);
  tcase_add_test(tc, numfmt_round_trips_shortest);
  suite_add_tcase(s, tc);
  return check_run(s);
}
