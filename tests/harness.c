/* harness.c -- see harness.h. */
#include "harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef PSD_BUILD_DIR
#define PSD_BUILD_DIR "."
#endif

/* ---- the program's directory ------------------------------------------------- */

static char g_dir[400];
static pid_t g_owner;

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb, (void)flag, (void)ftw;
  remove(path);
  return 0;
}

/* Runs in the program's own process only: Check's forked test processes
 * exit too, and must leave the directory alone. */
static void dir_at_exit(int status, void *arg) {
  (void)arg;
  if (getpid() != g_owner || g_dir[0] == '\0') return;
  if (status == 0) nftw(g_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  else fprintf(stderr, "%s: logs kept in %s\n", program_invocation_short_name, g_dir);
}

/* Made before main, so that every forked test process shares it. */
__attribute__((constructor)) static void dir_init(void) {
  const char *parent = getenv("PSD_TEST_TMPDIR");
  if (parent == NULL || parent[0] == '\0') parent = getenv("TMPDIR");
  if (parent == NULL || parent[0] == '\0') parent = "/tmp";
  snprintf(g_dir, sizeof(g_dir), "%s/%s.XXXXXX", parent, program_invocation_short_name);
  if (mkdtemp(g_dir) == NULL) {
    fprintf(stderr, "harness: mkdtemp %s: %s\n", g_dir, strerror(errno));
    exit(2);
  }
  /* Others may traverse it: a test may run psd as another user (nobody)
   * on a data directory of its own inside. */
  chmod(g_dir, 0755);
  g_owner = getpid();
  on_exit(dir_at_exit, NULL);
}

const char *th_tmpdir(void) { return g_dir; }

/* ---- daemons --------------------------------------------------------------------- */

const char *th_psd_bin(void) {
  const char *b = getenv("PSD_BIN");
  return b && b[0] ? b : PSD_BUILD_DIR "/server/psd";
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* The daemon logs "listening on 127.0.0.1:PORT" once it accepts. */
static int read_port(const char *log) {
  FILE *f = fopen(log, "r");
  if (f == NULL) return -1;
  char line[1024];
  int port = -1;
  while (fgets(line, sizeof(line), f)) {
    char *p = strstr(line, "listening on 127.0.0.1:");
    if (p) port = atoi(p + strlen("listening on 127.0.0.1:"));
  }
  fclose(f);
  return port;
}

int th_psd_start(th_psd *p, int port, const char *const *extra) {
  memset(p, 0, sizeof(*p));
  /* A fresh file, created here before the fork: a log left by an earlier
   * run under a recycled pid must never be read for this daemon's port. */
  static int seq;
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  snprintf(p->log, sizeof(p->log), "%s/psd-%d-%d-%ld%09ld.log", g_dir, (int)getpid(), seq++,
           (long)now.tv_sec, now.tv_nsec);
  int lfd = open(p->log, O_WRONLY | O_CREAT | O_EXCL, 0644);
  if (lfd < 0) return -1;
  close(lfd);
  char listen[64];
  snprintf(listen, sizeof(listen), "127.0.0.1:%d", port);
  const char *argv[64];
  int n = 0;
  /* PSD_WRAPPER runs the daemon under a tool, e.g. valgrind: words split on
   * spaces. */
  char wrap[512] = "";
  const char *w = getenv("PSD_WRAPPER");
  if (w && w[0]) {
    snprintf(wrap, sizeof(wrap), "%s", w);
    for (char *tok = strtok(wrap, " "); tok && n < 32; tok = strtok(NULL, " ")) argv[n++] = tok;
  }
  argv[n++] = th_psd_bin();
  argv[n++] = "--listen";
  argv[n++] = listen;
  argv[n++] = "--log-level";
  argv[n++] = "info";
  for (int i = 0; extra && extra[i] && n < 62; i++) argv[n++] = extra[i];
  argv[n] = NULL;

  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    int fd = open(p->log, O_WRONLY | O_APPEND);
    if (fd >= 0) {
      dup2(fd, 2);
      close(fd);
    }
    execvp(argv[0], (char *const *)argv);
    _exit(127);
  }
  p->pid = pid;
  for (int i = 0; i < TH_START_MS / 10; i++) {
    int st;
    if (waitpid(pid, &st, WNOHANG) == pid) {
      p->pid = 0;
      return -1;
    }
    int got = read_port(p->log);
    if (got > 0) {
      p->port = got;
      snprintf(p->addr, sizeof(p->addr), "127.0.0.1:%d", got);
      return 0;
    }
    sleep_ms(10);
  }
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
  p->pid = 0;
  return -1;
}

int th_psd_stop(th_psd *p, int sig, int timeout_ms) {
  if (p->pid <= 0) return -1;
  kill(p->pid, sig);
  int st = -1;
  for (int waited = 0;; waited += 10) {
    pid_t r = waitpid(p->pid, &st, WNOHANG);
    if (r == p->pid) break;
    if (r < 0) {
      st = -1;
      break;
    }
    if (waited >= timeout_ms) {
      kill(p->pid, SIGKILL);
      waitpid(p->pid, &st, 0);
      st = -1;
      break;
    }
    sleep_ms(10);
  }
  p->pid = 0;
  return st;
}

int th_log_contains(const th_psd *p, const char *needle) { return th_file_contains(p->log, needle); }

int th_file_contains(const char *path, const char *needle) {
  FILE *f = fopen(path, "r");
  if (f == NULL) return 0;
  char line[2048];
  int found = 0;
  while (!found && fgets(line, sizeof(line), f)) found = strstr(line, needle) != NULL;
  fclose(f);
  return found;
}

int th_connect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
    close(fd);
    return -1;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

long th_proc_kb(pid_t pid, const char *field) {
  char path[64], line[256];
  snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
  FILE *f = fopen(path, "r");
  if (f == NULL) return -1;
  size_t n = strlen(field);
  long kb = -1;
  while (fgets(line, sizeof(line), f))
    if (strncmp(line, field, n) == 0 && line[n] == ':') kb = atol(line + n + 1);
  fclose(f);
  return kb;
}
