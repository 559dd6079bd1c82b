/*
 * json.h -- strings put into the stats JSON are escaped here: whatever a
 * configuration, a checkpoint or a client put in them, `stats` stays valid
 * JSON.
 */
#ifndef PSD_JSON_H
#define PSD_JSON_H

#include <stddef.h>
#include <stdio.h>

/* Write s into out[0..cap) as the inside of a JSON string ("\" and "\\"
 * escaped, control bytes as \u00XX); stops before an escape that would not
 * fit. out is always terminated (cap >= 1). Returns the bytes written. */
static inline size_t json_escape(char *out, size_t cap, const char *s) {
  size_t n = 0;
  for (; s != NULL && *s; s++) {
    unsigned char ch = (unsigned char)*s;
    char esc[8];
    size_t k;
    if (ch == '"' || ch == '\\') {
      esc[0] = '\\', esc[1] = (char)ch, k = 2;
    } else if (ch < 0x20 || ch == 0x7f) {
      k = (size_t)snprintf(esc, sizeof(esc), "\\u%04x", ch);
    } else {
      esc[0] = (char)ch, k = 1;
    }
    if (n + k + 1 > cap) break;
    for (size_t i = 0; i < k; i++) out[n++] = esc[i];
  }
  out[n] = '\0';
  return n;
}

#endif
