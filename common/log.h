/*
 * log.h -- leveled logging to stderr with a timestamp, shared by psd and the
 * client library. One line per call, written with a single write() so lines
 * from several threads or processes do not interleave.
 */
#ifndef PSD_LOG_H
#define PSD_LOG_H

enum { PLOG_DEBUG = 0, PLOG_INFO, PLOG_WARN, PLOG_ERROR, PLOG_OFF };

/* Set the minimum level printed (default PLOG_INFO; the client library
 * defaults to PLOG_WARN). */
void plog_set_level(int level);
int plog_level(void);
/* Parse "debug", "info", "warn", "error", "off"; -1 if unknown. */
int plog_parse_level(const char *s);
/* Set a tag printed after the level, e.g. "psd:7070". */
void plog_set_tag(const char *tag);

void plog_write(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) do { if (plog_level() <= PLOG_DEBUG) plog_write(PLOG_DEBUG, __VA_ARGS__); } while (0)
#define log_info(...) plog_write(PLOG_INFO, __VA_ARGS__)
#define log_warn(...) plog_write(PLOG_WARN, __VA_ARGS__)
#define log_error(...) plog_write(PLOG_ERROR, __VA_ARGS__)

#endif
