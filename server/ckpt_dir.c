/*
 * ckpt_dir.c -- the checkpoint files in --data-dir.
 *
 * Names: ckpt-SEQ.psd (SEQ: 16 decimal digits), written as ckpt-SEQ.tmp and
 * renamed; a file proven corrupt is renamed ckpt-SEQ.psd.corrupt (or
 * .corrupt.2, ...), never deleted. A new checkpoint takes a SEQ above every
 * ckpt-SEQ.* name found at start, and is never renamed over an existing
 * file.
 *
 * Restore (at start) tries the newest ckpt-*.psd first. A file proven
 * corrupt is moved aside and the previous one is tried. Any other failure
 * (out of memory, an I/O error, permissions, a directory in a file's place)
 * stops psd with a sentence saying what to do: the file may hold the newest
 * state, and starting empty would be written over it by the next save.
 *
 * Pruning keeps --keep files at or below the newest checkpoint this process
 * wrote or restored (ckpt_good_seq); it never touches a newer file or a
 * *.corrupt one.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "memory.h"
#include "ckpt.h"
#include "tensor.h"
#include "log.h"
#include "numfmt.h"

static void ckpt_path(psd_server *srv, uint64_t seq, const char *ext, char *out, size_t len) {
  snprintf(out, len, "%s/ckpt-%016llu.%s", srv->cfg.data_dir, (unsigned long long)seq, ext);
}

static void fsync_dir(psd_server *srv) {
  int dfd = open(srv->cfg.data_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
}

/* rename(2) that never replaces an existing file. 0 or an errno. */
static int rename_noreplace(const char *from, const char *to) {
  if (renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) == 0) return 0;
  if (errno != EINVAL && errno != ENOSYS) return errno;
  /* A filesystem without RENAME_NOREPLACE: look, then rename (a race only
   * with another process writing this directory, which psd does not do). */
  struct stat sb;
  if (lstat(to, &sb) == 0) return EEXIST;
  return rename(from, to) == 0 ? 0 : errno;
}

/* ---- writing ------------------------------------------------------------------ */

int ckpt_write_file(psd_server *srv, uint64_t seq) {
  char tmp[1200], fin[1200];
  ckpt_path(srv, seq, "tmp", tmp, sizeof(tmp));
  ckpt_path(srv, seq, "psd", fin, sizeof(fin));
  /* 0600: the file holds the sessions' secrets. */
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return errno;
  int err = ckpt_state_write(srv, fd, seq);
  if (close(fd) != 0 && err == 0) err = errno;
  if (err == 0) err = rename_noreplace(tmp, fin);
  if (err != 0) {
    unlink(tmp);
    return err;
  }
  int dfd = open(srv->cfg.data_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    if (fsync(dfd) != 0) err = errno;
    close(dfd);
  }
  return err;
}

/* ---- the directory's listing ---------------------------------------------------- */

typedef struct {
  uint64_t *seq;     /* ckpt-SEQ.psd, newest first */
  size_t n;
  uint64_t max_seq;  /* largest SEQ of any ckpt-SEQ.* name */
} ck_listing;

static int cmp_u64_desc(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? 1 : x > y ? -1 : 0;
}

/* "ckpt-" 16 digits "." suffix: the SEQ and the suffix, or -1. */
static int parse_name(const char *name, uint64_t *seq, const char **suffix) {
  if (strncmp(name, "ckpt-", 5) != 0) return -1;
  uint64_t v = 0;
  for (int i = 5; i < 21; i++) {
    if (name[i] < '0' || name[i] > '9') return -1;
    v = v * 10 + (uint64_t)(name[i] - '0');
  }
  if (name[21] != '.') return -1;
  *seq = v;
  *suffix = name + 22;
  return 0;
}

static int listing_add(ck_listing *l, size_t *cap, uint64_t seq) {
  if (l->n == *cap) {
    size_t nc = *cap ? *cap * 2 : 16;
    uint64_t *v = realloc(l->seq, nc * sizeof(*v));
    if (v == NULL) return -1;
    l->seq = v;
    *cap = nc;
  }
  l->seq[l->n++] = seq;
  return 0;
}

/* List the directory. With remove_tmp, delete the ckpt-*.tmp files a crash
 * left (only at start: no writer runs then). 0, or -1 with st. */
static int ckpt_scan(psd_server *srv, ck_listing *l, int remove_tmp, ck_status *st) {
  memset(l, 0, sizeof(*l));
  DIR *d = opendir(srv->cfg.data_dir);
  if (d == NULL) {
    ck_syserr(st, errno, "cannot open the directory: %s", strerror(errno));
    return -1;
  }
  size_t cap = 0;
  for (;;) {
    errno = 0;
    struct dirent *e = readdir(d);
    if (e == NULL) {
      if (errno != 0) ck_syserr(st, errno, "cannot read the directory: %s", strerror(errno));
      break;
    }
    uint64_t seq;
    const char *suffix;
    if (parse_name(e->d_name, &seq, &suffix) != 0) continue;
    if (seq > l->max_seq) l->max_seq = seq;
    if (strcmp(suffix, "tmp") == 0 && remove_tmp) {
      char p[1400];
      snprintf(p, sizeof(p), "%s/%.255s", srv->cfg.data_dir, e->d_name);
      if (unlink(p) == 0) log_info("removed %s, left by a save that did not finish", p);
    } else if (strcmp(suffix, "psd") == 0 && listing_add(l, &cap, seq) != 0) {
      ck_syserr(st, ENOMEM, "out of memory listing the directory");
      break;
    }
  }
  closedir(d);
  if (st->kind != CK_OK) {
    free(l->seq);
    l->seq = NULL;
    return -1;
  }
  if (l->n > 1) qsort(l->seq, l->n, sizeof(*l->seq), cmp_u64_desc);
  return 0;
}

/* ---- restore -------------------------------------------------------------------- */

/* Rename a corrupt checkpoint to ckpt-SEQ.psd.corrupt[.N], never over a file.
 * 0 or an errno; the new name in out. */
static int move_aside(const char *path, char *out, size_t len) {
  for (int i = 1; i < 1000; i++) {
    if (i == 1) snprintf(out, len, "%s.corrupt", path);
    else snprintf(out, len, "%s.corrupt.%d", path, i);
    int err = rename_noreplace(path, out);
    if (err != EEXIST) return err;
  }
  return EEXIST;
}

/* What an operator can do about a failure that does not prove the file bad. */
static const char *advice(int err) {
  switch (err) {
    case ENOMEM:
      return "psd has not enough memory to hold it: raise its memory limit (ulimit -v, the "
             "container's or the unit's memory limit) and restart";
    case EACCES:
    case EPERM:
      return "give the user psd runs as read access to the file (and write access to the "
             "directory) and restart";
    case EISDIR:
    case EINVAL:
      return "move it out of the directory and restart";
    case ENOTSUP:
      return "it was probably written by a newer psd: run one that knows it, or move the file "
             "out of the directory to start from an older checkpoint";
    case EMFILE:
    case ENFILE:
      return "raise the open-file limit and restart";
    default:
      return "check the disk and the filesystem (dmesg), then restart; to start from an older "
             "checkpoint instead, move this file out of the directory";
  }
}

/* Try checkpoint seq. 0 restored; 1 corrupt and moved aside; -1 psd must stop. */
static int restore_one(psd_server *srv, uint64_t seq, int older) {
  char path[1200], aside[1300];
  ckpt_path(srv, seq, "psd", path, sizeof(path));
  ck_status st = {0};
  uint64_t size = 0, t0 = psd_now_ms();
  /* What the shard held is restored whatever the ceiling (a restart with a
   * lower --max-memory must not lose the state); new blocks are then
   * refused until it fits. */
  uint64_t limit = mem_limit();
  mem_set_limit(0);
  int loaded = ckf_verify(path, &st, &size) == 0 && ckpt_state_load(srv, path, &st) == 0;
  mem_set_limit(limit);
  if (loaded) {
    if (limit && mem_used() > limit)
      log_warn("the restored state holds %llu bytes, more than --max-memory %llu: new "
               "blocks are refused until it fits",
               (unsigned long long)mem_used(), (unsigned long long)limit);
    uint64_t vmin, vmax, vsum, nb;
    tensor_versions(srv, &vmin, &vmax, &vsum, &nb);
    log_info("restored checkpoint %s (%llu bytes, %zu tensors, %llu blocks at versions "
             "%llu..%llu sum %llu, %zu tables) in %s s",
             path, (unsigned long long)size, srv->ntensors, (unsigned long long)nb,
             (unsigned long long)vmin, (unsigned long long)vmax, (unsigned long long)vsum,
             srv->ntables, psn_num((double)(psd_now_ms() - t0) / 1000.0).s);
    srv->ckpt_good_seq = seq;
    return 0;
  }
  if (st.kind == CK_CORRUPT) {
    int err = move_aside(path, aside, sizeof(aside));
    if (err != 0) {
      log_error("checkpoint %s is corrupt (%s) but cannot be renamed aside: %s; psd stops so "
                "as not to write over it: fix the directory's permissions and restart",
                path, st.why, strerror(err));
      return -1;
    }
    fsync_dir(srv);
    log_warn("skipping checkpoint %s: %s; renamed it %s%s", path, st.why, aside,
             older ? "; trying the previous one" : "; no older checkpoint");
    return 1;
  }
  char sz[64] = "";
  if (size > 0) snprintf(sz, sizeof(sz), " (%llu bytes)", (unsigned long long)size);
  const char *stop = st.err == EISDIR || st.err == EINVAL
                         ? "psd does not start while something else has a checkpoint's name"
                     : st.err == ENOTSUP
                         ? "psd does not start over a checkpoint it cannot read in full"
                         : "It may hold the newest state, so psd does not start without it";
  log_error("cannot restore checkpoint %s%s: %s. %s: %s. The files in %s are untouched.", path,
            sz, st.why, stop, advice(st.err), srv->cfg.data_dir);
  return -1;
}

int ckpt_restore(psd_server *srv) {
  const char *dir = srv->cfg.data_dir;
  if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
    log_error("cannot create --data-dir %s: %s", dir, strerror(errno));
    return -1;
  }
  ck_listing l;
  ck_status st = {0};
  if (ckpt_scan(srv, &l, 1, &st) != 0) {
    log_error("cannot list --data-dir %s: %s; psd does not start without knowing whether it "
              "holds a checkpoint: %s",
              dir, st.why, advice(st.err));
    return -1;
  }
  srv->ckpt_seq = l.max_seq;
  int rc = 1;
  size_t i;
  for (i = 0; i < l.n && rc == 1; i++) rc = restore_one(srv, l.seq[i], i + 1 < l.n);
  if (rc == 1) {
    if (l.n == 0) log_info("no checkpoint in %s; starting empty", dir);
    else log_warn("no valid checkpoint in %s (%zu corrupt, renamed *.corrupt); starting empty",
                  dir, l.n);
  }
  free(l.seq);
  return rc < 0 ? -1 : 0;
}

/* ---- pruning -------------------------------------------------------------------- */

void ckpt_prune(psd_server *srv) {
  if (srv->ckpt_good_seq == 0) return;
  ck_listing l;
  ck_status st = {0};
  if (ckpt_scan(srv, &l, 0, &st) != 0) {
    log_warn("cannot prune old checkpoints in %s: %s", srv->cfg.data_dir, st.why);
    return;
  }
  int kept = 0;
  for (size_t i = 0; i < l.n; i++) {
    if (l.seq[i] > srv->ckpt_good_seq) continue; /* not known valid: not ours to remove */
    if (kept < srv->cfg.keep_checkpoints) {
      kept++;
      continue;
    }
    char p[1200];
    ckpt_path(srv, l.seq[i], "psd", p, sizeof(p));
    if (unlink(p) == 0) log_debug("removed old checkpoint %s", p);
    else log_warn("cannot remove old checkpoint %s: %s", p, strerror(errno));
  }
  free(l.seq);
}
