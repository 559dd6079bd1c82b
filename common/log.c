/* log.c -- see log.h. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static int log_min_level = PLOG_INFO;
static int log_fmt = PLOG_TEXT;
static char log_tag[64] = "psd";

void plog_set_level(int level) { log_min_level = level; }
int plog_level(void) { return log_min_level; }
void plog_set_format(int format) { log_fmt = format == PLOG_JSON ? PLOG_JSON : PLOG_TEXT; }
int plog_format(void) { return log_fmt; }

void plog_set_tag(const char *tag) {
  snprintf(log_tag, sizeof(log_tag), "%s", tag);
}

int plog_parse_level(const char *s) {
  static const char *names[] = {"debug", "info", "warn", "error", "off"};
  for (int i = 0; i < 5; i++)
    if (strcasecmp(s, names[i]) == 0) return i;
  return -1;
}

int plog_parse_format(const char *s) {
  if (strcasecmp(s, "text") == 0) return PLOG_TEXT;
  if (strcasecmp(s, "json") == 0) return PLOG_JSON;
  return -1;
}

/* A line being built in a fixed buffer; what does not fit is cut (the
 * JSON form keeps room to close its string and object). */
typedef struct {
  char *p;
  size_t len, cap;
} lbuf;

static void put(lbuf *b, const char *s, size_t n) {
  if (b->len + n > b->cap) n = b->cap - b->len;
  memcpy(b->p + b->len, s, n);
  b->len += n;
}

static void puts_(lbuf *b, const char *s) { put(b, s, strlen(s)); }

/* Length of the valid UTF-8 sequence at s (n bytes left), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n) {
  unsigned c = s[0];
  size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
  if (len == 0 || len > n || (len == 2 && c < 0xc2) || (len == 4 && c > 0xf4)) return 0;
  for (size_t i = 1; i < len; i++)
    if ((s[i] & 0xc0) != 0x80) return 0;
  if (len == 3 && ((c == 0xe0 && s[1] < 0xa0) || (c == 0xed && s[1] >= 0xa0))) return 0;
  if (len == 4 && ((c == 0xf0 && s[1] < 0x90) || (c == 0xf4 && s[1] >= 0x90))) return 0;
  return len;
}

/* s as a JSON string, quotes included; whole characters or nothing. */
static void put_json(lbuf *b, const char *s) {
  const unsigned char *p = (const unsigned char *)s;
  size_t n = strlen(s);
  put(b, "\"", 1);
  while (n > 0 && b->len + 8 < b->cap) {
    unsigned c = *p;
    char e[8];
    size_t l = 1;
    if (c == '"' || c == '\\') {
      e[0] = '\\', e[1] = (char)c;
      put(b, e, 2);
    } else if (c == '\n') {
      put(b, "\\n", 2);
    } else if (c == '\t') {
      put(b, "\\t", 2);
    } else if (c == '\r') {
      put(b, "\\r", 2);
    } else if (c < 0x20 || c == 0x7f) {
      snprintf(e, sizeof(e), "\\u%04x", c);
      put(b, e, 6);
    } else if ((l = utf8_len(p, n)) == 0) {
      put(b, "\\ufffd", 6);
      l = 1;
    } else {
      put(b, (const char *)p, l);
    }
    p += l, n -= l;
  }
  put(b, "\"", 1);
}

static void vwrite(int level, const char *const *fields, const char *fmt, va_list ap) {
  static const char *names[] = {"DEBUG", "INFO", "WARN", "ERROR"};
  static const char *lower[] = {"debug", "info", "warn", "error"};
  if (level < log_min_level || level >= PLOG_OFF) return;

  char msg[1024], line[4096], ts_s[96];
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  snprintf(ts_s, sizeof(ts_s), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
           tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);
  int m = vsnprintf(msg, sizeof(msg), fmt, ap);
  if (m < 0) msg[0] = '\0';

  lbuf b = {line, 0, sizeof(line) - 2}; /* room for the closing brace and newline */
  if (log_fmt == PLOG_JSON) {
    char pid[64];
    puts_(&b, "{\"time\":\"");
    puts_(&b, ts_s);
    puts_(&b, "\",\"level\":\"");
    puts_(&b, lower[level]);
    puts_(&b, "\",\"component\":");
    put_json(&b, log_tag);
    snprintf(pid, sizeof(pid), ",\"pid\":%ld,\"msg\":", (long)getpid());
    puts_(&b, pid);
    put_json(&b, msg);
    for (int i = 0; fields && fields[i] && fields[i + 1] && b.len + 64 < b.cap; i += 2) {
      put(&b, ",", 1);
      put_json(&b, fields[i]);
      put(&b, ":", 1);
      put_json(&b, fields[i + 1]);
    }
    /* A cut line still ends as an object (its last string may be cut
     * short of its closing quote only if the buffer ran out inside it). */
    line[b.len++] = '}';
  } else {
    char head[256];
    snprintf(head, sizeof(head), "%s %-5s %s: ", ts_s, names[level], log_tag);
    puts_(&b, head);
    puts_(&b, msg);
    for (int i = 0; fields && fields[i] && fields[i + 1]; i += 2) {
      put(&b, " ", 1);
      puts_(&b, fields[i]);
      put(&b, "=", 1);
      puts_(&b, fields[i + 1]);
    }
  }
  line[b.len++] = '\n';
  ssize_t w = write(STDERR_FILENO, line, b.len);
  (void)w;
}

void plog_write(int level, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vwrite(level, NULL, fmt, ap);
  va_end(ap);
}

void plog_write_kv(int level, const char *const *fields, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vwrite(level, fields, fmt, ap);
  va_end(ap);
}
