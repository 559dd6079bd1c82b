/*
 * ckpt_format.c -- the checkpoint file format (see ckpt_format.h): little-endian
 * fields, sections with a CRC32 each, a buffered writer and a streaming
 * reader.
 *
 * Every integer is encoded and decoded byte by byte, so a file means the
 * same on any host. Float arrays are IEEE-754 little-endian: copied as they
 * are on a little-endian host, byte-swapped on a big-endian one.
 *
 * The reader holds one bounded buffer of the file; an array larger than it
 * is read straight into its destination. It knows the file's size from the
 * start, so a section claiming more bytes than remain is found truncated
 * before anything is allocated for it.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "ckpt_format.h"

/* GCC says how floats are stored (__FLOAT_WORD_ORDER__); clang does not,
 * and stores them in the integers' byte order on every target it has. */
#if !defined(__BYTE_ORDER__)
#error "checkpoint byte order: __BYTE_ORDER__ is not defined"
#endif
#if defined(__FLOAT_WORD_ORDER__) && __BYTE_ORDER__ != __FLOAT_WORD_ORDER__
#error "checkpoint floats assume the byte order of integers and floats agree"
#endif
#define CK_HOST_LE (__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__)

/* ---- status ------------------------------------------------------------------ */

static void ck_vset(ck_status *st, int kind, int err, const char *fmt, va_list ap) {
  if (st->kind != CK_OK) return; /* the first failure is the cause */
  st->kind = kind;
  st->err = err;
  vsnprintf(st->why, sizeof(st->why), fmt, ap);
}

void ck_corrupt(ck_status *st, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  ck_vset(st, CK_CORRUPT, 0, fmt, ap);
  va_end(ap);
}

void ck_syserr(ck_status *st, int err, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  ck_vset(st, CK_SYSERR, err, fmt, ap);
  va_end(ap);
}

/* ---- little-endian fields ----------------------------------------------------- */

static void put_le(uint8_t *p, uint64_t v, int n) {
  for (int i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le(const uint8_t *p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; i++) v |= (uint64_t)p[i] << (8 * i);
  return v;
}

/* Convert n floats between host order and little-endian (its own inverse). */
static void f32_swap_le(void *p, uint64_t n) {
#if CK_HOST_LE
  (void)p;
  (void)n;
#else
  uint32_t *u = p;
  for (uint64_t i = 0; i < n; i++) u[i] = __builtin_bswap32(u[i]);
#endif
}

static uLong crc_update(uLong crc, const void *p, uint64_t n) {
  /* zlib's crc32 takes a uInt length; feed it in pieces. */
  const Bytef *b = p;
  for (uint64_t off = 0; off < n;) {
    uint64_t k = n - off > (1u << 30) ? (1u << 30) : n - off;
    crc = crc32(crc, b + off, (uInt)k);
    off += k;
  }
  return crc;
}

/* ---- writing ------------------------------------------------------------------ */

struct ckw {
  int fd;
  int err;
  uLong crc;
  uint64_t nsec;
  uint64_t declared, written;  /* the open section's length, and its bytes so far */
  size_t len;
  uint8_t buf[1 << 16];
};

static void w_write(ckw *w, const uint8_t *p, size_t n) {
  while (n > 0 && !w->err) {
    ssize_t k = write(w->fd, p, n);
    if (k < 0) {
      if (errno == EINTR) continue;
      w->err = errno;
      return;
    }
    p += k;
    n -= (size_t)k;
  }
}

static void w_flush(ckw *w) {
  w_write(w, w->buf, w->len);
  w->len = 0;
}

/* Bytes outside any checksum (headers, checksums). */
static void w_raw(ckw *w, const void *p, uint64_t n) {
  const uint8_t *s = p;
  while (n > 0 && !w->err) {
    if (w->len == 0 && n >= sizeof(w->buf)) {
      w_write(w, s, n); /* large arrays go straight from memory to the file */
      return;
    }
    size_t k = sizeof(w->buf) - w->len;
    if (k > n) k = (size_t)n;
    memcpy(w->buf + w->len, s, k);
    w->len += k;
    s += k;
    n -= k;
    if (w->len == sizeof(w->buf)) w_flush(w);
  }
}

ckw *ckw_open(int fd, uint64_t seq) {
  ckw *w = calloc(1, sizeof(*w));
  if (w == NULL) return NULL;
  w->fd = fd;
  uint8_t head[16];
  memcpy(head, CKPT_MAGIC, 8);
  put_le(head + 8, seq, 8);
  w_raw(w, head, 16);
  return w;
}

void ckw_begin(ckw *w, uint32_t type, uint64_t len) {
  uint8_t h[12];
  put_le(h, type, 4);
  put_le(h + 4, len, 8);
  w_raw(w, h, 12);
  w->crc = crc32(0L, Z_NULL, 0);
  w->declared = len;
  w->written = 0;
}

void ckw_bytes(ckw *w, const void *p, uint64_t n) {
  w->crc = crc_update(w->crc, p, n);
  w->written += n;
  w_raw(w, p, n);
}

void ckw_u32(ckw *w, uint32_t v) {
  uint8_t b[4];
  put_le(b, v, 4);
  ckw_bytes(w, b, 4);
}

void ckw_u64(ckw *w, uint64_t v) {
  uint8_t b[8];
  put_le(b, v, 8);
  ckw_bytes(w, b, 8);
}

void ckw_str(ckw *w, const char *s) {
  size_t n = strlen(s);
  ckw_u32(w, (uint32_t)n);
  ckw_bytes(w, s, n);
}

void ckw_f32s(ckw *w, const float *p, uint64_t n) {
#if CK_HOST_LE
  ckw_bytes(w, p, n * 4);
#else
  uint32_t tmp[4096];
  for (uint64_t off = 0; off < n;) {
    uint64_t k = n - off < 4096 ? n - off : 4096;
    memcpy(tmp, p + off, k * 4);
    f32_swap_le(tmp, k);
    ckw_bytes(w, tmp, k * 4);
    off += k;
  }
#endif
}

void ckw_end(ckw *w) {
  if (w->written != w->declared && !w->err) w->err = EPROTO; /* a reader would refuse it */
  uint8_t b[4];
  put_le(b, (uint32_t)w->crc, 4);
  w_raw(w, b, 4);
  w->nsec++;
}

int ckw_close(ckw *w) {
  uint64_t before = w->nsec;
  ckw_begin(w, SEC_END, 8);
  ckw_u64(w, before);
  ckw_end(w);
  w_flush(w);
  int err = w->err;
  if (err == 0 && fsync(w->fd) != 0) err = errno;
  free(w);
  return err;
}

/* ---- reading ------------------------------------------------------------------ */

#define CKR_BUF (1u << 20)

struct ckr {
  int fd;
  ck_status *st;
  char name[64];        /* the file's base name, for messages */
  uint64_t size;        /* at open */
  uint64_t pos;         /* file offset of the next byte handed out */
  uint8_t *buf;         /* buffered bytes buf[boff..blen) start at pos */
  size_t boff, blen;
  uint64_t nsec;        /* sections read before END */
  int in_section;
  uint32_t type;
  uint64_t left;        /* payload bytes of the open section not yet read */
  uLong crc;
};

int ckr_failed(const ckr *r) { return r->st->kind != CK_OK; }
uint64_t ckr_file_size(const ckr *r) { return r->size; }
uint64_t ckr_sections(const ckr *r) { return r->nsec; }
uint64_t ckr_left(const ckr *r) { return r->left; }

void ckr_malformed(ckr *r, const char *fmt, ...) {
  char what[200];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof(what), fmt, ap);
  va_end(ap);
  ck_corrupt(r->st, "malformed section %llu (type %u): %s", (unsigned long long)r->nsec + 1,
             r->type, what);
}

void ckr_syserr(ckr *r, int err, const char *fmt, ...) {
  char what[200];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof(what), fmt, ap);
  va_end(ap);
  ck_syserr(r->st, err, "%s", what);
}

/* n bytes of the file at pos into dst: from the buffer, or straight from the
 * file for a large read. A short file is a truncation (the file shrank
 * since it was measured); a failed read is an I/O error. */
static int r_read(ckr *r, void *dst, uint64_t n) {
  uint8_t *d = dst;
  while (n > 0) {
    if (ckr_failed(r)) return -1;
    if (r->boff < r->blen) {
      size_t k = r->blen - r->boff;
      if (k > n) k = (size_t)n;
      memcpy(d, r->buf + r->boff, k);
      r->boff += k;
      r->pos += k;
      d += k;
      n -= k;
      continue;
    }
    int direct = n >= CKR_BUF;
    uint8_t *into = direct ? d : r->buf;
    size_t want = direct ? (n > (1u << 30) ? (1u << 30) : (size_t)n) : CKR_BUF;
    ssize_t got = read(r->fd, into, want);
    if (got < 0) {
      if (errno == EINTR) continue;
      ck_syserr(r->st, errno, "cannot read %s at byte %llu: %s", r->name,
                (unsigned long long)r->pos, strerror(errno));
      return -1;
    }
    if (got == 0) {
      ck_corrupt(r->st, "truncated: %s ends at byte %llu", r->name, (unsigned long long)r->pos);
      return -1;
    }
    if (direct) {
      r->pos += (uint64_t)got;
      d += got;
      n -= (uint64_t)got;
    } else {
      r->boff = 0;
      r->blen = (size_t)got;
    }
  }
  return 0;
}

ckr *ckr_open(const char *path, ck_status *st) {
  const char *base = strrchr(path, '/');
  base = base ? base + 1 : path;
  /* O_NONBLOCK: a FIFO in a checkpoint's place must not hang the start. */
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    ck_syserr(st, errno, "cannot open %s: %s", base, strerror(errno));
    return NULL;
  }
  struct stat sb;
  if (fstat(fd, &sb) != 0) {
    ck_syserr(st, errno, "cannot stat %s: %s", base, strerror(errno));
    close(fd);
    return NULL;
  }
  if (!S_ISREG(sb.st_mode)) {
    int e = S_ISDIR(sb.st_mode) ? EISDIR : EINVAL;
    ck_syserr(st, e, "%s is %s, not a regular file", base,
              S_ISDIR(sb.st_mode) ? "a directory" : "a special file");
    close(fd);
    return NULL;
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  ckr *r = calloc(1, sizeof(*r));
  uint8_t *buf = malloc(CKR_BUF);
  if (r == NULL || buf == NULL) {
    ck_syserr(st, ENOMEM, "out of memory opening %s", base);
    free(r);
    free(buf);
    close(fd);
    return NULL;
  }
  r->fd = fd;
  r->st = st;
  r->buf = buf;
  r->size = (uint64_t)sb.st_size;
  snprintf(r->name, sizeof(r->name), "%.63s", base);
  uint8_t head[16];
  if (r->size < 16) {
    ck_corrupt(st, "truncated: %llu bytes, shorter than the header", (unsigned long long)r->size);
  } else if (r_read(r, head, 16) == 0 && memcmp(head, CKPT_MAGIC, 8) != 0) {
    ck_corrupt(st, "bad magic");
  }
  if (ckr_failed(r)) {
    ckr_close(r);
    return NULL;
  }
  return r;
}

void ckr_close(ckr *r) {
  if (r == NULL) return;
  close(r->fd);
  free(r->buf);
  free(r);
}

/* Payload bytes of the open section, counted in its checksum. */
static int r_payload(ckr *r, void *dst, uint64_t n) {
  if (ckr_failed(r)) return -1;
  if (!r->in_section || n > r->left) {
    ckr_malformed(r, "its contents run past its length");
    return -1;
  }
  if (r_read(r, dst, n) != 0) return -1;
  r->crc = crc_update(r->crc, dst, n);
  r->left -= n;
  return 0;
}

uint32_t ckr_u32(ckr *r) {
  uint8_t b[4];
  return r_payload(r, b, 4) == 0 ? (uint32_t)get_le(b, 4) : 0;
}

uint64_t ckr_u64(ckr *r) {
  uint8_t b[8];
  return r_payload(r, b, 8) == 0 ? get_le(b, 8) : 0;
}

void ckr_bytes(ckr *r, void *dst, uint64_t n) {
  if (r_payload(r, dst, n) != 0) memset(dst, 0, n);
}

void ckr_f32s(ckr *r, float *dst, uint64_t n) {
  if (n > UINT64_MAX / 4) {
    ckr_malformed(r, "an array of %llu floats", (unsigned long long)n);
    return;
  }
  if (r_payload(r, dst, n * 4) == 0) f32_swap_le(dst, n);
}

char *ckr_str(ckr *r) {
  uint32_t n = ckr_u32(r);
  if (ckr_failed(r)) return NULL;
  if (n > r->left) {
    ckr_malformed(r, "a string of %u bytes in %llu", n, (unsigned long long)r->left);
    return NULL;
  }
  char *s = malloc((size_t)n + 1);
  if (s == NULL) {
    ckr_syserr(r, ENOMEM, "out of memory for a string of %u bytes", n);
    return NULL;
  }
  if (r_payload(r, s, n) != 0) {
    free(s);
    return NULL;
  }
  s[n] = '\0';
  return s;
}

void ckr_skip(ckr *r, uint64_t n) {
  uint8_t chunk[1 << 14];
  while (n > 0 && !ckr_failed(r)) {
    uint64_t k = n < sizeof(chunk) ? n : sizeof(chunk);
    /* Through the buffer: r_payload reads large pieces straight into dst,
     * and chunk is smaller than the buffer. */
    if (r_payload(r, chunk, k) != 0) return;
    n -= k;
  }
}

int ckr_end(ckr *r) {
  if (ckr_failed(r)) return -1;
  if (r->left != 0) {
    ckr_malformed(r, "%llu bytes left unread", (unsigned long long)r->left);
    return -1;
  }
  uint8_t b[4];
  if (r_read(r, b, 4) != 0) return -1;
  uint32_t want = (uint32_t)get_le(b, 4);
  if ((uint32_t)r->crc != want) {
    ck_corrupt(r->st, "checksum mismatch in section %llu (type %u)",
               (unsigned long long)r->nsec + 1, r->type);
    return -1;
  }
  r->in_section = 0;
  if (r->type != SEC_END) r->nsec++;
  return 0;
}

/* END: the number of sections before it, and nothing after it. */
static int r_check_end(ckr *r) {
  uint64_t count = ckr_u64(r);
  if (ckr_end(r) != 0) return -1;
  if (count != r->nsec || r->pos != r->size) {
    ck_corrupt(r->st, "END section does not match the file (%llu sections counted, %llu "
               "read; %llu bytes after it)",
               (unsigned long long)count, (unsigned long long)r->nsec,
               (unsigned long long)(r->size - r->pos));
    return -1;
  }
  return 0;
}

int ckr_next(ckr *r, uint32_t *type, uint64_t *len) {
  if (ckr_failed(r)) return -1;
  if (r->in_section) {
    ckr_malformed(r, "not read to its end");
    return -1;
  }
  uint64_t rest = r->size - r->pos;
  if (rest < 12 + 4) {
    ck_corrupt(r->st, "truncated after section %llu: no END section",
               (unsigned long long)r->nsec);
    return -1;
  }
  uint8_t h[12];
  if (r_read(r, h, 12) != 0) return -1;
  r->type = (uint32_t)get_le(h, 4);
  r->left = get_le(h + 4, 8);
  if (r->left > rest - 12 - 4) {
    ck_corrupt(r->st, "truncated in section %llu (type %u): %llu bytes announced, %llu left",
               (unsigned long long)r->nsec + 1, r->type, (unsigned long long)r->left,
               (unsigned long long)(rest - 16));
    return -1;
  }
  r->in_section = 1;
  r->crc = crc32(0L, Z_NULL, 0);
  if (r->type == SEC_END) {
    if (r->left != 8) {
      ckr_malformed(r, "END of %llu bytes", (unsigned long long)r->left);
      return -1;
    }
    return r_check_end(r) == 0 ? 0 : -1;
  }
  *type = r->type;
  *len = r->left;
  return 1;
}

int ckf_verify(const char *path, ck_status *st, uint64_t *size) {
  ckr *r = ckr_open(path, st);
  if (r == NULL) return -1;
  uint32_t type;
  uint64_t len;
  int rc;
  while ((rc = ckr_next(r, &type, &len)) == 1) {
    ckr_skip(r, len);
    if (ckr_end(r) != 0) break;
  }
  if (size) *size = r->size;
  ckr_close(r);
  return st->kind == CK_OK && rc == 0 ? 0 : -1;
}
