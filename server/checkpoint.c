/*
 * checkpoint.c -- a shard's durable state in --data-dir.
 *
 * What is saved: the server list and this shard's index; the job (worker
 * count, mode, each rank's clock and barrier generation); the exactly-once
 * table; every tensor's name, shape and resolved spec; every materialized
 * block's weights, optimizer state, version, and the contributions of a
 * sync round in progress. Together these make a restart exact.
 *
 * How: like Redis's BGSAVE, the event loop forks; the child writes the
 * snapshot it inherited (copy-on-write) to ckpt-SEQ.tmp, fsyncs, renames it
 * to ckpt-SEQ.psd and fsyncs the directory, then exits. The parent only
 * pays for fork() itself. At shutdown the same writer runs in-process.
 *
 * File format (all integers little-endian):
 *   "PSDCKPT1" u64 seq
 *   sections: u32 type, u64 length, payload, u32 crc32(payload)
 *   the last section is END, whose payload is the number of sections before it.
 * A file with a bad magic, a bad checksum, a short section or no END is
 * skipped with a log line, and the previous checkpoint is tried; nothing
 * is applied until the whole file has been read and checked.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include "log.h"
#include "memory.h"
#include "msg.h"
#include "psmath.h"
#include "checkpoint.h"
#include "dedupe.h"
#include "group.h"
#include "apply.h"
#include "outbox.h"
#include "round.h"
#include "tensor.h"
#include "waiter.h"

#define CKPT_MAGIC "PSDCKPT1"
enum { SEC_META = 1, SEC_WORKER = 2, SEC_SEQ = 3, SEC_TENSOR = 4, SEC_BLOCK = 5, SEC_END = 99 };

/* ---- writing -------------------------------------------------------------- */

typedef struct {
  int fd;
  uLong crc;
  uint64_t nsec;
  int err;
  char buf[1 << 16];
  size_t len;
} ckw;

static void w_flush(ckw *w) {
  size_t off = 0;
  while (off < w->len && !w->err) {
    ssize_t n = write(w->fd, w->buf + off, w->len - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      w->err = errno;
      break;
    }
    off += (size_t)n;
  }
  w->len = 0;
}

static void w_raw(ckw *w, const void *p, size_t n) {
  const char *s = p;
  while (n > 0 && !w->err) {
    if (w->len == 0 && n >= sizeof(w->buf)) {
      /* Large arrays go straight from tensor memory to the file. */
      size_t off = 0;
      while (off < n) {
        ssize_t k = write(w->fd, s + off, n - off);
        if (k < 0) {
          if (errno == EINTR) continue;
          w->err = errno;
          return;
        }
        off += (size_t)k;
      }
      return;
    }
    size_t k = sizeof(w->buf) - w->len;
    if (k > n) k = n;
    memcpy(w->buf + w->len, s, k);
    w->len += k;
    s += k;
    n -= k;
    if (w->len == sizeof(w->buf)) w_flush(w);
  }
}

/* Payload bytes: counted in the section's checksum. */
static void w_data(ckw *w, const void *p, size_t n) {
  /* zlib's crc32 takes a uInt length; feed it in pieces. */
  const Bytef *b = p;
  for (size_t off = 0; off < n;) {
    size_t k = n - off > (1u << 30) ? (1u << 30) : n - off;
    w->crc = crc32(w->crc, b + off, (uInt)k);
    off += k;
  }
  w_raw(w, p, n);
}

static void w_u32(ckw *w, uint32_t v) { w_data(w, &v, 4); }
static void w_u64(ckw *w, uint64_t v) { w_data(w, &v, 8); }

static void sec_begin(ckw *w, uint32_t type, uint64_t len) {
  w_raw(w, &type, 4);
  w_raw(w, &len, 8);
  w->crc = crc32(0L, Z_NULL, 0);
}

static void sec_end(ckw *w) {
  uint32_t c = (uint32_t)w->crc;
  w_raw(w, &c, 4);
  w->nsec++;
}

static void w_str(ckw *w, const char *s) {
  uint32_t n = (uint32_t)strlen(s);
  w_u32(w, n);
  w_data(w, s, n);
}

/* Write the whole state to fd. Returns 0 or an errno. This runs in the
 * forked child or at exit; it must not touch the event loop. */
static int ckpt_write_fd(psd_server *srv, int fd, uint64_t seq) {
  ckw *w = calloc(1, sizeof(*w));
  if (w == NULL) return ENOMEM;
  w->fd = fd;
  w_raw(w, CKPT_MAGIC, 8);
  w_raw(w, &seq, 8);

  psd_group *g = &srv->group;
  const char *list = srv->have_list ? srv->servers.list : "";
  sec_begin(w, SEC_META, 4 + strlen(list) + 4 + 4 + 4 + 4);
  w_str(w, list);
  w_u32(w, (uint32_t)srv->shard_index);
  w_u32(w, g->configured ? g->num_workers : 0);
  w_u32(w, (uint32_t)g->staleness);
  w_u32(w, (uint32_t)g->pending_expired);
  sec_end(w);

  for (uint32_t r = 0; g->configured && r < g->num_workers; r++) {
    sec_begin(w, SEC_WORKER, 4 + 4 + 8 + 8 + 8);
    w_u32(w, r);
    w_u32(w, (uint32_t)g->w[r].joined);
    w_u64(w, g->w[r].worker_id);
    w_u64(w, g->w[r].clock);
    w_u64(w, g->w[r].barrier_gen);
    sec_end(w);
  }

  sec_begin(w, SEC_SEQ, 8 + srv->seqs.len * 16);
  w_u64(w, srv->seqs.len);
  {
    size_t it = 0;
    uint64_t k, v;
    while (u64map_next(&srv->seqs, &it, &k, &v)) {
      w_u64(w, k);
      w_u64(w, v);
    }
  }
  sec_end(w);

  uint64_t tindex = 0;
  for (size_t i = 0; i < srv->table_cap; i++)
    for (psd_tensor *t = srv->table[i]; t; t = t->next, tindex++) {
      pmsg_spec_pb pb;
      pmsg_spec_to_pb(&pb, &t->spec, t->shape, t->ndim);
      size_t plen = protobuf_c_message_get_packed_size(&pb.ts.base);
      uint8_t *packed = malloc(plen ? plen : 1);
      if (packed == NULL) {
        free(w);
        return ENOMEM;
      }
      protobuf_c_message_pack(&pb.ts.base, packed);
      sec_begin(w, SEC_TENSOR, 8 + 4 + strlen(t->name) + 4 + plen);
      w_u64(w, tindex);
      w_str(w, t->name);
      w_u32(w, (uint32_t)plen);
      w_data(w, packed, plen);
      sec_end(w);
      free(packed);

      unsigned k = psm_state_per_param(t->spec.optim.kind);
      uint32_t nw = g->configured ? g->num_workers : 0;
      /* Only the blocks materialized here: an untouched one is recreated by
       * its init. */
      size_t it = 0;
      uint64_t bi, bv;
      while (u64map_next(&t->blocks, &it, &bi, &bv)) {
        psd_block *b = (psd_block *)(uintptr_t)bv;
        uint64_t nc = b->present ? b->ncontrib : 0;
        uint64_t len = 8 + 8 + 8 + 8 + b->n * 4 * (1 + k) + 8 + nc * (4 + 8 + 8 + b->n * 4);
        sec_begin(w, SEC_BLOCK, len);
        w_u64(w, tindex);
        w_u64(w, bi);
        w_u64(w, b->version);
        w_u64(w, b->n);
        w_data(w, b->w, b->n * 4);
        if (k) w_data(w, b->state, b->n * 4 * k);
        w_u64(w, nc);
        for (uint32_t r = 0; nc && r < nw; r++)
          if (b->present[r]) {
            w_u32(w, r);
            w_u64(w, b->contrib_seq[r]);
            w_u64(w, b->contrib_clock[r]);
            w_data(w, b->contrib[r], b->n * 4);
          }
        sec_end(w);
      }
    }

  uint64_t before = w->nsec;
  sec_begin(w, SEC_END, 8);
  w_u64(w, before);
  sec_end(w);
  w_flush(w);
  int err = w->err;
  free(w);
  if (err == 0 && fsync(fd) != 0) err = errno;
  return err;
}

static void ckpt_path(psd_server *srv, uint64_t seq, const char *ext, char *out, size_t len) {
  snprintf(out, len, "%s/ckpt-%016llu.%s", srv->cfg.data_dir, (unsigned long long)seq, ext);
}

/* Write checkpoint `seq` atomically: temporary file, fsync, rename, fsync of
 * the directory. Returns 0 or an errno. */
static int ckpt_write_file(psd_server *srv, uint64_t seq) {
  char tmp[1200], fin[1200];
  ckpt_path(srv, seq, "tmp", tmp, sizeof(tmp));
  ckpt_path(srv, seq, "psd", fin, sizeof(fin));
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return errno;
  int err = ckpt_write_fd(srv, fd, seq);
  if (close(fd) != 0 && err == 0) err = errno;
  if (err == 0 && rename(tmp, fin) != 0) err = errno;
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

/* ---- the checkpoint files in the directory --------------------------------- */

static int cmp_u64_desc(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? 1 : x > y ? -1 : 0;
}

/* Sequence numbers of the ckpt-*.psd files, newest first. Also removes
 * stale .tmp files left by a crash. */
static size_t ckpt_list(psd_server *srv, uint64_t **out) {
  DIR *d = opendir(srv->cfg.data_dir);
  *out = NULL;
  if (d == NULL) return 0;
  size_t n = 0, cap = 0;
  uint64_t *v = NULL;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    unsigned long long s;
    char ext[8];
    if (sscanf(e->d_name, "ckpt-%16llu.%7s", &s, ext) != 2) continue;
    if (strcmp(ext, "tmp") == 0 && srv->ckpt_child == 0) {
      char p[1400];
      snprintf(p, sizeof(p), "%s/%.255s", srv->cfg.data_dir, e->d_name);
      unlink(p);
      continue;
    }
    if (strcmp(ext, "psd") != 0) continue;
    if (n == cap) {
      cap = cap ? cap * 2 : 16;
      uint64_t *nv = realloc(v, cap * sizeof(*v));
      if (nv == NULL) break;
      v = nv;
    }
    v[n++] = s;
  }
  closedir(d);
  if (n > 1) qsort(v, n, sizeof(*v), cmp_u64_desc);
  *out = v;
  return n;
}

static void ckpt_prune(psd_server *srv) {
  uint64_t *v;
  size_t n = ckpt_list(srv, &v);
  for (size_t i = (size_t)srv->cfg.keep_checkpoints; i < n; i++) {
    char p[1200];
    ckpt_path(srv, v[i], "psd", p, sizeof(p));
    if (unlink(p) == 0) log_debug("removed old checkpoint %s", p);
  }
  free(v);
}

/* ---- reading ------------------------------------------------------------- */

typedef struct {
  const uint8_t *p, *end;
  int bad;
} rd;

static void r_get(rd *r, void *dst, size_t n) {
  if (r->bad || (size_t)(r->end - r->p) < n) {
    r->bad = 1;
    memset(dst, 0, n);
    return;
  }
  memcpy(dst, r->p, n);
  r->p += n;
}
static uint32_t r_u32(rd *r) { uint32_t v; r_get(r, &v, 4); return v; }
static uint64_t r_u64(rd *r) { uint64_t v; r_get(r, &v, 8); return v; }
static const uint8_t *r_ptr(rd *r, uint64_t n) {
  if (r->bad || (uint64_t)(r->end - r->p) < n) {
    r->bad = 1;
    return NULL;
  }
  const uint8_t *q = r->p;
  r->p += n;
  return q;
}

/* Read and check a whole file into memory; verify every section's checksum
 * and the END section. Returns the buffer or NULL with a reason. */
static uint8_t *ckpt_load_verified(const char *path, size_t *len, char *why, size_t whylen) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    snprintf(why, whylen, "cannot open: %s", strerror(errno));
    return NULL;
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || st.st_size < 16) {
    close(fd);
    snprintf(why, whylen, "truncated: %lld bytes", (long long)st.st_size);
    return NULL;
  }
  uint8_t *buf = malloc((size_t)st.st_size);
  size_t off = 0, size = (size_t)st.st_size;
  while (buf && off < size) {
    ssize_t n = read(fd, buf + off, size - off);
    if (n <= 0) {
      if (n < 0 && errno == EINTR) continue;
      break;
    }
    off += (size_t)n;
  }
  close(fd);
  if (buf == NULL || off != size) {
    free(buf);
    snprintf(why, whylen, "read failed");
    return NULL;
  }
  if (memcmp(buf, CKPT_MAGIC, 8) != 0) {
    free(buf);
    snprintf(why, whylen, "bad magic");
    return NULL;
  }
  rd r = {buf + 16, buf + size, 0};
  uint64_t nsec = 0;
  for (;;) {
    uint32_t type = r_u32(&r);
    uint64_t slen = r_u64(&r);
    const uint8_t *payload = r_ptr(&r, slen);
    uint32_t crc = r_u32(&r);
    if (r.bad) {
      snprintf(why, whylen, "truncated in section %llu", (unsigned long long)nsec + 1);
      break;
    }
    uLong c = crc32(0L, Z_NULL, 0);
    for (uint64_t o = 0; o < slen;) {
      uint64_t k = slen - o > (1u << 30) ? (1u << 30) : slen - o;
      c = crc32(c, payload + o, (uInt)k);
      o += k;
    }
    if ((uint32_t)c != crc) {
      snprintf(why, whylen, "checksum mismatch in section %llu (type %u)",
               (unsigned long long)nsec + 1, type);
      break;
    }
    if (type == SEC_END) {
      uint64_t count;
      if (slen != 8) break;
      memcpy(&count, payload, 8);
      if (count != nsec || r.p != r.end) {
        snprintf(why, whylen, "END section does not match the file");
        break;
      }
      *len = size;
      return buf;
    }
    nsec++;
  }
  if (why[0] == '\0') snprintf(why, whylen, "malformed");
  free(buf);
  return NULL;
}

/* Build the state from a verified buffer. Any inconsistency fails before
 * the server's state is touched: everything goes into local structures
 * that are swapped in at the end. */
static int ckpt_apply(psd_server *srv, const uint8_t *buf, size_t len, char *why, size_t whylen) {
  psd_server tmp;
  memset(&tmp, 0, sizeof(tmp));
  tmp.cfg = srv->cfg;
  tensor_table_init(&tmp);
  group_init(&tmp.group);
  psd_tensor **byindex = NULL;
  uint64_t ntens = 0;
  int ok = 0;

  rd r = {buf + 16, buf + len, 0};
  while (!r.bad) {
    uint32_t type = r_u32(&r);
    uint64_t slen = r_u64(&r);
    const uint8_t *payload = r_ptr(&r, slen);
    r_u32(&r);
    if (r.bad) break;
    rd s = {payload, payload + slen, 0};
    if (type == SEC_END) {
      ok = 1;
      break;
    } else if (type == SEC_META) {
      uint32_t ll = r_u32(&s);
      const uint8_t *lp = r_ptr(&s, ll);
      uint32_t idx = r_u32(&s), nw = r_u32(&s), st = r_u32(&s), pe = r_u32(&s);
      if (s.bad) goto bad;
      if (ll > 0) {
        char *list = strndup((const char *)lp, ll);
        char err[256];
        int rc = list ? psp_servers_parse(&tmp.servers, list, err, sizeof(err)) : -1;
        free(list);
        if (rc != 0 || (int)idx >= tmp.servers.n) goto bad;
        tmp.have_list = 1;
        tmp.shard_index = (int)idx;
      }
      if (nw > 0) {
        tmp.group.w = calloc(nw, sizeof(*tmp.group.w));
        if (tmp.group.w == NULL) goto bad;
        tmp.group.configured = 1;
        tmp.group.num_workers = nw;
        tmp.group.staleness = (int)st;
        tmp.group.pending_expired = (int)pe;
      }
    } else if (type == SEC_WORKER) {
      uint32_t rank = r_u32(&s), joined = r_u32(&s);
      uint64_t wid = r_u64(&s), clock = r_u64(&s), gen = r_u64(&s);
      if (s.bad || !tmp.group.configured || rank >= tmp.group.num_workers) goto bad;
      psd_worker *w = &tmp.group.w[rank];
      w->joined = (int)joined;
      w->worker_id = wid;
      w->clock = clock;
      w->barrier_gen = gen;
    } else if (type == SEC_SEQ) {
      uint64_t n = r_u64(&s);
      for (uint64_t i = 0; i < n && !s.bad; i++) {
        uint64_t k = r_u64(&s), v = r_u64(&s);
        if (!s.bad && dedupe_record(&tmp.seqs, k, v) != 0) goto bad;
      }
      if (s.bad) goto bad;
    } else if (type == SEC_TENSOR) {
      uint64_t ti = r_u64(&s);
      uint32_t nl = r_u32(&s);
      const uint8_t *np = r_ptr(&s, nl);
      uint32_t pl = r_u32(&s);
      const uint8_t *pp = r_ptr(&s, pl);
      if (s.bad || ti != ntens || !tmp.have_list) goto bad;
      Psd__TensorSpec *ps = psd__tensor_spec__unpack(NULL, pl, pp);
      if (ps == NULL) goto bad;
      ps_tensor_spec spec;
      char err[256];
      char *name = strndup((const char *)np, nl);
      int rc = name ? pmsg_spec_from_pb(ps, &spec, err, sizeof(err)) : -1;
      psd_tensor *t = NULL;
      if (rc == 0 && ps->n_shape >= 1 && ps->n_shape <= PSD_MAX_NDIM && spec.block_size > 0)
        t = tensor_insert(&tmp, name, ps->shape, (int)ps->n_shape, &spec, NULL);
      free(name);
      psd__tensor_spec__free_unpacked(ps, NULL);
      if (t == NULL) goto bad;
      psd_tensor **nb = realloc(byindex, (size_t)(ntens + 1) * sizeof(*nb));
      if (nb == NULL) goto bad;
      byindex = nb;
      byindex[ntens++] = t;
    } else if (type == SEC_BLOCK) {
      uint64_t ti = r_u64(&s), bi = r_u64(&s), ver = r_u64(&s), n = r_u64(&s);
      if (s.bad || ti >= ntens) goto bad;
      psd_tensor *t = byindex[ti];
      uint64_t first;
      psd_block *b = NULL;
      if (bi >= t->nblocks || psp_block_range(t->numel, t->spec.block_size, bi, &first) != n)
        goto bad;
      unsigned k = psm_state_per_param(t->spec.optim.kind);
      const uint8_t *wp = r_ptr(&s, n * 4);
      const uint8_t *sp = k ? r_ptr(&s, n * 4 * k) : NULL;
      uint64_t nc = r_u64(&s);
      if (s.bad || tensor_block_get(&tmp, t, bi, 0, &b) != TB_OK) goto bad;
      memcpy(b->w, wp, n * 4);
      if (k) memcpy(b->state, sp, n * 4 * k);
      block_set_version(&tmp, b, ver);
      block_measure(b);
      uint32_t nw = tmp.group.num_workers;
      if (nc > 0) {
        if (!tmp.group.configured || nc > nw) goto bad;
        if (round_alloc(b, nw) != 0) goto bad;
        for (uint64_t i = 0; i < nc; i++) {
          uint32_t rank = r_u32(&s);
          uint64_t seq = r_u64(&s);
          uint64_t clk = r_u64(&s);
          const uint8_t *gp = r_ptr(&s, n * 4);
          if (s.bad || rank >= nw || b->present[rank]) goto bad;
          b->contrib[rank] = aligned_alloc(64, (n * 4 + 63) & ~(size_t)63);
          if (b->contrib[rank] == NULL) goto bad;
          memcpy(b->contrib[rank], gp, n * 4);
          b->present[rank] = 1;
          b->contrib_seq[rank] = seq;
          b->contrib_clock[rank] = clk;
          b->ncontrib++;
        }
        psd_link_insert_tail(&tmp.rounds, &b->round_link);
      }
    }
  }
  if (!ok) goto bad;

  /* Swap in. Restored workers get a fresh worker-timeout to reconnect. */
  uint64_t now = psd_now_ms();
  for (uint32_t i = 0; i < tmp.group.num_workers; i++)
    if (tmp.group.w[i].joined) {
      tmp.group.w[i].live = 1;
      tmp.group.w[i].last_seen_ms = now;
      if (tmp.group.first_join_ms == 0) tmp.group.first_join_ms = now;
    }
  tensor_table_free(srv);
  dedupe_free(&srv->seqs);
  group_free(&srv->group);
  tensor_vstat_move(&srv->vstat, &tmp.vstat);
  srv->table = tmp.table;
  srv->table_cap = tmp.table_cap;
  srv->ntensors = tmp.ntensors;
  srv->seqs = tmp.seqs;
  srv->group = tmp.group;
  psd_link_init(&srv->group.pulls);
  psd_link_init(&srv->group.ready);
  psd_link_init(&srv->group.barriers);
  /* Move the rounds list head (its neighbours point at tmp.rounds). */
  psd_link_init(&srv->rounds);
  if (!psd_link_empty(&tmp.rounds)) {
    srv->rounds.next = tmp.rounds.next;
    srv->rounds.prev = tmp.rounds.prev;
    srv->rounds.next->prev = &srv->rounds;
    srv->rounds.prev->next = &srv->rounds;
  }
  srv->servers = tmp.servers;
  srv->have_list = tmp.have_list;
  srv->shard_index = tmp.shard_index;
  free(byindex);
  return 0;

bad:
  snprintf(why, whylen, "inconsistent contents");
  tensor_table_free(&tmp);
  dedupe_free(&tmp.seqs);
  group_free(&tmp.group);
  if (tmp.have_list) psp_servers_free(&tmp.servers);
  free(byindex);
  return -1;
}

int ckpt_restore(psd_server *srv) {
  if (mkdir(srv->cfg.data_dir, 0755) != 0 && errno != EEXIST) {
    log_error("cannot create --data-dir %s: %s", srv->cfg.data_dir, strerror(errno));
    return -1;
  }
  uint64_t *v;
  size_t n = ckpt_list(srv, &v);
  if (n > 0) srv->ckpt_seq = v[0];
  for (size_t i = 0; i < n; i++) {
    char path[1200], why[256] = "";
    size_t len;
    ckpt_path(srv, v[i], "psd", path, sizeof(path));
    uint64_t t0 = psd_now_ms();
    uint8_t *buf = ckpt_load_verified(path, &len, why, sizeof(why));
    /* What the shard held is restored whatever the ceiling (a restart with
     * a lower --max-memory must not lose the state); new blocks are then
     * refused until it fits. */
    uint64_t limit = mem_limit();
    mem_set_limit(0);
    int applied = buf != NULL && ckpt_apply(srv, buf, len, why, sizeof(why)) == 0;
    mem_set_limit(limit);
    if (applied) {
      free(buf);
      if (limit && mem_used() > limit)
        log_warn("the restored state holds %llu bytes, more than --max-memory %llu: new "
                 "blocks are refused until it fits",
                 (unsigned long long)mem_used(), (unsigned long long)limit);
      uint64_t vmin, vmax, vsum, nb;
      tensor_versions(srv, &vmin, &vmax, &vsum, &nb);
      log_info("restored checkpoint %s (%zu bytes, %zu tensors, %llu blocks at versions "
               "%llu..%llu sum %llu) in %.3f s",
               path, len, srv->ntensors, (unsigned long long)nb, (unsigned long long)vmin,
               (unsigned long long)vmax, (unsigned long long)vsum,
               (double)(psd_now_ms() - t0) / 1000.0);
      free(v);
      return 0;
    }
    free(buf);
    log_warn("skipping checkpoint %s: %s%s", path, why,
             i + 1 < n ? "; trying the previous one" : "; no older checkpoint");
  }
  if (n == 0) log_info("no checkpoint in %s; starting empty", srv->cfg.data_dir);
  else log_warn("no valid checkpoint in %s; starting empty", srv->cfg.data_dir);
  free(v);
  return 0;
}

/* ---- background saves -------------------------------------------------------- */

/* Answer the requests the save that just ended was started for. */
static void ckpt_finish(psd_server *srv, int ok, const char *msg) {
  while (!psd_link_empty(&srv->ckpt_inflight)) {
    psd_waiter *w = psd_link_entry(srv->ckpt_inflight.next, psd_waiter, wait_link);
    if (ok) outbox_ack(&srv->outbox, w->conn, w->id, msg);
    else outbox_error(&srv->outbox, w->conn, w->id, PSD__CODE__IO, "checkpoint failed: %s", msg);
    waiter_free(w);
  }
}

static double ckpt_started_ms;
static double ckpt_fork_ms;
static void ckpt_kick(psd_server *srv);

static void ckpt_begin(psd_server *srv) {
  if (srv->ckpt_child != 0 || !srv->cfg.data_dir[0]) return;
  uint64_t seq = ++srv->ckpt_seq;
  uint64_t t0 = uv_hrtime();
  /* The requests waiting now are answered by this save; any that arrive
   * while it runs wait for the next one (they may follow newer pushes). */
  while (!psd_link_empty(&srv->ckpt_waiters)) {
    psd_link *l = srv->ckpt_waiters.next;
    psd_link_remove(l);
    psd_link_insert_tail(&srv->ckpt_inflight, l);
  }
  pid_t pid = fork();
  if (pid == 0) {
    /* The child owns a frozen copy of the state: write it and leave
     * without running any of the parent's exit handlers. */
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    int err = ckpt_write_file(srv, seq);
    _exit(err == 0 ? 0 : 1);
  }
  double pause = (double)(uv_hrtime() - t0) / 1e6;
  if (pid < 0) {
    snprintf(srv->ckpt_last_error, sizeof(srv->ckpt_last_error), "fork: %s", strerror(errno));
    log_error("checkpoint: %s", srv->ckpt_last_error);
    ckpt_finish(srv, 0, srv->ckpt_last_error);
    return;
  }
  srv->ckpt_child = pid;
  ckpt_started_ms = (double)psd_now_ms();
  ckpt_fork_ms = pause;
  log_debug("checkpoint %llu: writer pid %d (fork took %.2f ms)", (unsigned long long)seq,
            (int)pid, pause);
}

static void sigchld_cb(uv_signal_t *h, int signum) {
  psd_server *srv = h->data;
  (void)signum;
  if (srv->ckpt_child == 0) return;
  int status;
  pid_t p = waitpid(srv->ckpt_child, &status, WNOHANG);
  if (p != srv->ckpt_child) return;
  srv->ckpt_child = 0;
  char msg[256];
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
    srv->ckpt_written++;
    srv->ckpt_last_ms = (double)psd_now_ms() - ckpt_started_ms;
    srv->ckpt_last_error[0] = '\0';
    snprintf(msg, sizeof(msg),
             "checkpoint %llu written in %.0f ms in the background (the event loop paused "
             "%.2f ms for fork)",
             (unsigned long long)srv->ckpt_seq, srv->ckpt_last_ms, ckpt_fork_ms);
    log_info("%s", msg);
    ckpt_prune(srv);
    ckpt_finish(srv, 1, msg);
  } else {
    snprintf(srv->ckpt_last_error, sizeof(srv->ckpt_last_error),
             "writer for checkpoint %llu failed", (unsigned long long)srv->ckpt_seq);
    log_error("%s", srv->ckpt_last_error);
    ckpt_finish(srv, 0, srv->ckpt_last_error);
  }
  /* Requests that came in during this save get a fresh one. */
  if (!psd_link_empty(&srv->ckpt_waiters) && !srv->stopping) ckpt_kick(srv);
}

static void ckpt_timer_cb(uv_timer_t *t) {
  server_turn_mark(t->data);
  ckpt_begin(t->data);
}

/* Fork from a timer callback, never from inside a request handler: the
 * child then inherits no half-handled request (and valgrind, following the
 * child, sees every allocation still reachable). */
static void ckpt_kick(psd_server *srv) {
  uv_timer_start(&srv->ckpt_kick, ckpt_timer_cb, 0, 0);
}

void ckpt_start(psd_server *srv) {
  if (!srv->cfg.data_dir[0]) return;
  uv_signal_init(srv->loop, &srv->sigchld);
  srv->sigchld.data = srv;
  uv_signal_start(&srv->sigchld, sigchld_cb, SIGCHLD);
  uv_timer_init(srv->loop, &srv->ckpt_timer);
  srv->ckpt_timer.data = srv;
  uv_timer_init(srv->loop, &srv->ckpt_kick);
  srv->ckpt_kick.data = srv;
  if (srv->cfg.checkpoint_every > 0) {
    uint64_t ms = (uint64_t)(srv->cfg.checkpoint_every * 1000.0);
    uv_timer_start(&srv->ckpt_timer, ckpt_timer_cb, ms, ms);
  }
}

void ckpt_request(psd_server *srv, psd_conn *c, uint64_t id) {
  if (!srv->cfg.data_dir[0]) {
    outbox_error(&srv->outbox, c, id, PSD__CODE__IO,
                 "this psd runs without --data-dir; nothing to write to");
    return;
  }
  psd_waiter *w = waiter_new(c, id, PSD_WAIT_CHECKPOINT, 0);
  if (w == NULL) {
    waiter_fail(srv, c, id);
    return;
  }
  psd_link_insert_tail(&srv->ckpt_waiters, &w->wait_link);
  /* A save already running holds an older snapshot; the waiter is served
   * by the next one, started when it ends. */
  if (srv->ckpt_child == 0) ckpt_kick(srv);
}

void ckpt_stop(psd_server *srv) {
  if (!srv->cfg.data_dir[0]) return;
  uv_timer_stop(&srv->ckpt_timer);
  uv_close((uv_handle_t *)&srv->ckpt_timer, NULL);
  uv_close((uv_handle_t *)&srv->ckpt_kick, NULL);
  uv_signal_stop(&srv->sigchld);
  uv_close((uv_handle_t *)&srv->sigchld, NULL);
}

int ckpt_write_now(psd_server *srv) {
  if (srv->ckpt_child != 0) {
    int status;
    waitpid(srv->ckpt_child, &status, 0);
    srv->ckpt_child = 0;
  }
  uint64_t seq = ++srv->ckpt_seq;
  uint64_t t0 = psd_now_ms();
  int err = ckpt_write_file(srv, seq);
  if (err != 0) {
    log_error("final checkpoint to %s failed: %s", srv->cfg.data_dir, strerror(err));
    return -1;
  }
  ckpt_prune(srv);
  log_info("final checkpoint %llu written in %.3f s", (unsigned long long)seq,
           (double)(psd_now_ms() - t0) / 1000.0);
  return 0;
}

void ckpt_json(psd_server *srv, char *buf, size_t len) {
  snprintf(buf, len,
           "{\"enabled\":%s,\"seq\":%llu,\"written\":%llu,\"in_progress\":%s,"
           "\"last_duration_ms\":%.0f,\"last_error\":\"%s\"}",
           srv->cfg.data_dir[0] ? "true" : "false", (unsigned long long)srv->ckpt_seq,
           (unsigned long long)srv->ckpt_written, srv->ckpt_child ? "true" : "false",
           srv->ckpt_last_ms, srv->ckpt_last_error);
}
