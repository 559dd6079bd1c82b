/*
 * numfmt.h -- how psd writes a number for a person or a JSON reader: the
 * shortest decimal text that reads back as the same value ("0.9", not
 * %.17g's "0.90000000000000002"), yet every digit a value needs ("0.1"
 * and "0.10000000000000002" are different doubles and print differently).
 * The one owner of that choice: psctl's output, the shard's stats JSON, its
 * logs and the error sentences that name a value all print through here.
 *
 * The notation is fixed-point for decimal exponents from -4 to 16 ("0.001",
 * "1000", "12345678901234568") and C's exponent form outside ("1e-05",
 * "1.5e+300"); Inf and NaN print as "inf", "-inf" and "nan" (never in JSON:
 * its callers print finite values only).
 */
#ifndef PSD_NUMFMT_H
#define PSD_NUMFMT_H

#include <stddef.h>

/* Longest text either function writes, with its NUL. */
#define PSN_MAX 32

/* Write x (a double) into buf of len bytes (PSN_MAX is always enough) and
 * return the text's length; strtod reads the text back as exactly x (the
 * sign of zero included). A shorter buf gets the text cut, NUL-terminated. */
size_t psn_format(char *buf, size_t len, double x);

/* The same for a float32 value: the shortest text strtof reads back as x
 * ("0.1", where the double of that float would print "0.10000000149011612"). */
size_t psn_format_float(char *buf, size_t len, float x);

/* The text as a value, for use inside one printf call:
 *   printf("lr %s\n", psn_num(lr).s);
 * Valid until the end of the full expression that calls it (C11 temporary
 * lifetime). */
typedef struct {
  char s[PSN_MAX];
} psn_str;

psn_str psn_num(double x);
psn_str psn_num_float(float x);

/* A measurement or an estimate (a latency quantile, a duration) rounded to
 * `decimals` decimal places (0 to 9) first, then written as above: "0.005",
 * not %.4f's "0.0050" nor the unrounded "0.0049999999999999992". */
psn_str psn_num_at(double x, int decimals);

#endif
