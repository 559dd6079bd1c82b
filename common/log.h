/*
 * log.h -- leveled logging to stderr with a timestamp, shared by psd and the
 * client library. One line per call, written with a single write() so lines
 * from several threads or processes do not interleave.
 */
#ifndef PSD_LOG_H
#define PSD_LOG_H

enum { PSL_DEBUG = 0, PSL_INFO, PSL_WARN, PSL_ERROR, PSL_OFF };

/* Set the minimum level printed (default PSL_INFO; the client library
 * defaults to PSL_WARN). */
void psl_set_level(int level);
int psl_level(void);
/* Parse "debug", "info", "warn", "error", "off"; -1 if unknown. */
int psl_parse_level(const char *s);
/* Set a tag printed after the level, e.g. "psd:7070". */
void psl_set_tag(const char *tag);

void psl_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) do { if (psl_level() <= PSL_DEBUG) psl_log(PSL_DEBUG, __VA_ARGS__); } while (0)
#define log_info(...) psl_log(PSL_INFO, __VA_ARGS__)
#define log_warn(...) psl_log(PSL_WARN, __VA_ARGS__)
#define log_error(...) psl_log(PSL_ERROR, __VA_ARGS__)

#endif
