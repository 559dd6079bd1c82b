/*
 * numfmt.c -- shortest round-trip decimal text for doubles and floats; see
 * numfmt.h. The digits come from the C library's correctly rounded %e
 * conversion at 1, 2, ... significant digits until the text reads back as
 * the value; only the placement of the decimal point is done here.
 */
#include "numfmt.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Fixed-point notation for decimal exponents in [FIXED_MIN, FIXED_MAX]:
 * integers of up to 17 digits print whole, as %.17g would. */
#define FIXED_MIN (-4)
#define FIXED_MAX 16

/* Copy src into buf (cut to len - 1 bytes); return strlen(src). */
static size_t put(char *buf, size_t len, const char *src) {
  size_t n = strlen(src);
  if (len > 0) {
    size_t k = n < len ? n : len - 1;
    memcpy(buf, src, k);
    buf[k] = '\0';
  }
  return n;
}

/* Rewrite the %e text e ("-d.ddde+XX", p significant digits) in out
 * (PSN_MAX bytes): fixed-point when its exponent is within the bounds,
 * else e itself. */
static void place_point(const char *e, char *out) {
  const char *p = e;
  char digits[24];
  int nd = 0;
  int neg = *p == '-';
  if (neg) p++;
  for (; *p != 'e' && *p != '\0'; p++)
    if (*p >= '0' && *p <= '9' && nd < (int)sizeof(digits) - 1) digits[nd++] = *p;
  digits[nd] = '\0';
  int exp = *p == 'e' ? atoi(p + 1) : 0;
  if (exp < FIXED_MIN || exp > FIXED_MAX) {
    snprintf(out, PSN_MAX, "%s", e);
    return;
  }
  char *o = out;
  if (neg) *o++ = '-';
  if (exp < 0) {
    /* 0.000ddd */
    *o++ = '0';
    *o++ = '.';
    for (int i = -1; i > exp; i--) *o++ = '0';
    memcpy(o, digits, (size_t)nd + 1);
  } else if (exp + 1 >= nd) {
    /* ddd000: an integer */
    memcpy(o, digits, (size_t)nd);
    o += nd;
    for (int i = nd; i <= exp; i++) *o++ = '0';
    *o = '\0';
  } else {
    /* dd.ddd */
    memcpy(o, digits, (size_t)exp + 1);
    o += exp + 1;
    *o++ = '.';
    memcpy(o, digits + exp + 1, (size_t)(nd - exp - 1) + 1);
  }
}

/* The shortest text of x, tried at 1 to max_digits significant digits;
 * as_float: it must read back through strtof. */
static size_t shortest(char *buf, size_t len, double x, int max_digits, int as_float) {
  if (isnan(x)) return put(buf, len, "nan");
  if (isinf(x)) return put(buf, len, x < 0 ? "-inf" : "inf");
  char e[PSN_MAX], out[PSN_MAX];
  for (int p = 1; p <= max_digits; p++) {
    snprintf(e, sizeof(e), "%.*e", p - 1, x);
    int same = as_float ? strtof(e, NULL) == (float)x : strtod(e, NULL) == x;
    if (same || p == max_digits) break;
  }
  place_point(e, out);
  return put(buf, len, out);
}

size_t psn_format(char *buf, size_t len, double x) { return shortest(buf, len, x, 17, 0); }

size_t psn_format_float(char *buf, size_t len, float x) {
  return shortest(buf, len, (double)x, 9, 1);
}

psn_str psn_num(double x) {
  psn_str r;
  psn_format(r.s, sizeof(r.s), x);
  return r;
}

psn_str psn_num_at(double x, int decimals) {
  char t[400]; /* %.9f of the largest double: 309 digits and 9 decimals */
  if (decimals < 0) decimals = 0;
  if (decimals > 9) decimals = 9;
  if (isfinite(x)) {
    snprintf(t, sizeof(t), "%.*f", decimals, x);
    x = strtod(t, NULL);
  }
  return psn_num(x);
}

psn_str psn_num_float(float x) {
  psn_str r;
  psn_format_float(r.s, sizeof(r.s), x);
  return r;
}
