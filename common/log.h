/*
 * log.h -- leveled logging to stderr with a timestamp, shared by psd and the
 * client library. One line per call, written with a single write() so lines
 * from several threads or processes do not interleave.
 *
 * Two formats: text (the default),
 *   2024-05-01T12:00:00.123Z INFO  psd: message key=value ...
 * and JSON, one object per line, for log collectors:
 *   {"time":"2024-05-01T12:00:00.123Z","level":"info","component":"psd",
 *    "pid":42,"msg":"message","key":"value",...}
 * Strings are escaped as JSON requires (quotes, backslashes, control
 * characters as \uXXXX; bytes that are not UTF-8 as U+FFFD).
 */
#ifndef PSD_LOG_H
#define PSD_LOG_H

enum { PLOG_DEBUG = 0, PLOG_INFO, PLOG_WARN, PLOG_ERROR, PLOG_OFF };
enum { PLOG_TEXT = 0, PLOG_JSON = 1 };

/* Set the minimum level printed (default PLOG_INFO; the client library
 * defaults to PLOG_WARN). */
void plog_set_level(int level);
int plog_level(void);
/* Parse "debug", "info", "warn", "error", "off"; -1 if unknown. */
int plog_parse_level(const char *s);
/* Set a tag printed after the level, e.g. "psd:7070". */
void plog_set_tag(const char *tag);
/* PLOG_TEXT or PLOG_JSON; "text" / "json" parse to them (-1 if unknown). */
void plog_set_format(int format);
int plog_format(void);
int plog_parse_format(const char *s);

void plog_write(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A line with structured fields: `fields` is a NULL-terminated list of
 * key, value string pairs (text: appended as key=value; JSON: members of
 * the object). */
void plog_write_kv(int level, const char *const *fields, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_debug(...) do { if (plog_level() <= PLOG_DEBUG) plog_write(PLOG_DEBUG, __VA_ARGS__); } while (0)
#define log_info(...) plog_write(PLOG_INFO, __VA_ARGS__)
#define log_warn(...) plog_write(PLOG_WARN, __VA_ARGS__)
#define log_error(...) plog_write(PLOG_ERROR, __VA_ARGS__)

#endif
