/*
 * harness.h -- helpers for integration tests: start a real psd on an
 * ephemeral loopback port, find its port, stop it by PID; one directory
 * for the files of the test program.
 *
 * Files: every program linking the harness gets one directory, made with
 * mkdtemp when it starts, inside $PSD_TEST_TMPDIR when tests/run.sh set it
 * (one directory per run of the suite), else inside ${TMPDIR:-/tmp}. The
 * daemons' logs go there, and tests put their data directories there
 * (th_tmpdir). It is removed when the program exits 0 and kept, its path
 * printed, when it exits otherwise.
 *
 * Waiting: no helper decides anything by elapsed time; the bounds below
 * only turn a hang into a failure and are far beyond what any machine
 * needs.
 */
#ifndef PSD_TEST_HARNESS_H
#define PSD_TEST_HARNESS_H

#include <stdio.h>
#include <sys/types.h>

typedef struct {
  pid_t pid;
  int port;
  char addr[64];     /* "127.0.0.1:PORT" */
  char log[512];     /* file holding the daemon's stderr */
} th_psd;

/* The program's directory for files (see above). */
const char *th_tmpdir(void);

/* Path of the psd binary: $PSD_BIN, else the build tree's server/psd. */
const char *th_psd_bin(void);

/* Start psd with extra arguments (NULL-terminated list, may be NULL) on
 * 127.0.0.1 port `port` (0: ephemeral). Waits until it listens (at most
 * TH_START_MS). 0 or -1. */
#define TH_START_MS 120000
int th_psd_start(th_psd *p, int port, const char *const *extra);
/* Send sig and wait for exit; returns the exit status as from waitpid, or
 * -1. Waits at most timeout_ms, then SIGKILLs. */
int th_psd_stop(th_psd *p, int sig, int timeout_ms);
/* Does the daemon's log contain `needle`? */
int th_log_contains(const th_psd *p, const char *needle);
/* Does a line of file `path` contain `needle`? 0 when it cannot be read. */
int th_file_contains(const char *path, const char *needle);
/* Connect a plain TCP socket to 127.0.0.1:port; -1 on failure. */
int th_connect(int port);
/* A process's memory figure from /proc/PID/status, in kB: field is the
 * line's name without its colon ("VmRSS", "VmPeak", "VmHWM"). -1 when the
 * process or the line is not there. */
long th_proc_kb(pid_t pid, const char *field);

#endif
