/* wire.c -- see wire.h. */
#include "wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* Field keys of the envelope's trailing fields (proto/psd.proto). */
#define KEY_PAD ((14u << 3) | 2u)
#define KEY_VALUES ((15u << 3) | 2u)

static void put_le16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
}

static void put_le64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}

static size_t put_varint(uint8_t *p, uint64_t v) {
  size_t n = 0;
  while (v >= 0x80) {
    p[n++] = (uint8_t)(v | 0x80);
    v >>= 7;
  }
  p[n++] = (uint8_t)v;
  return n;
}

static size_t varint_len(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    n++;
  }
  return n;
}

int psw_encode(psw_frame *f, const ProtobufCMessage *msg, const void *values,
               size_t values_len) {
  size_t packed = protobuf_c_message_get_packed_size(msg);
  /* Worst case of what follows the envelope: pad (2 + 63) and values key. */
  if (PSW_HEADER_SIZE + packed + 66 + 10 > PSW_HEAD_MAX) return -1;

  uint8_t *p = f->head + PSW_HEADER_SIZE;
  p += protobuf_c_message_pack(msg, p);
  if (values != NULL) {
    /* Pad so that the floats start 64-byte aligned within the frame: the
     * receiver then hands them to the optimizer kernels in place. */
    size_t base = (size_t)(p - f->head) + 1 + varint_len(values_len);
    size_t padlen = (64 - (base + 2) % 64) % 64;
    *p++ = KEY_PAD;
    *p++ = (uint8_t)padlen;
    memset(p, 0, padlen);
    p += padlen;
    *p++ = KEY_VALUES;
    p += put_varint(p, values_len);
  }
  f->head_len = (size_t)(p - f->head);
  f->values = values;
  f->values_len = values != NULL ? values_len : 0;

  memcpy(f->head, PSW_MAGIC, 4);
  put_le16(f->head + 4, PSW_VERSION);
  put_le16(f->head + 6, 0);
  put_le64(f->head + 8, f->head_len - PSW_HEADER_SIZE + f->values_len);
  return 0;
}

uint8_t *psw_encode_alloc(const ProtobufCMessage *msg, size_t *len) {
  size_t packed = protobuf_c_message_get_packed_size(msg);
  uint8_t *f = malloc(PSW_HEADER_SIZE + packed);
  if (f == NULL) return NULL;
  protobuf_c_message_pack(msg, f + PSW_HEADER_SIZE);
  memcpy(f, PSW_MAGIC, 4);
  put_le16(f + 4, PSW_VERSION);
  put_le16(f + 6, 0);
  put_le64(f + 8, packed);
  *len = PSW_HEADER_SIZE + packed;
  return f;
}

void psw_rbuf_init(psw_rbuf *b, uint64_t max_frame) {
  memset(b, 0, sizeof(*b));
  b->max_frame = max_frame;
}

/* A receive buffer is mapped memory of its own, not heap (unless a
 * server's spare, below): a closed connection's buffer goes back to the system at once
 * (munmap, a few pages' TLB shootdown), where a freed heap buffer would
 * stay resident until malloc_trim, whose cost grows with all that is free
 * (2000 closed connections' 64 KiB buffers: a 21 ms trim, in one turn of a
 * server's loop). Under AddressSanitizer the heap is kept, for its red
 * zones. */
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PSW_RBUF_HEAP 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define PSW_RBUF_HEAP 1
#endif

static void *(*spare_take_fn)(size_t);
static void (*spare_want_fn)(size_t);
static void (*spare_give_fn)(void *, size_t);

void psw_rbuf_spares(void *(*take)(size_t bytes), void (*want)(size_t bytes),
                     void (*give)(void *buf, size_t bytes)) {
  spare_take_fn = take;
  spare_want_fn = want;
  spare_give_fn = give;
}

/* The capacity a buffer of `cap` (0: none yet) holding `pending` bytes
 * grows to for `need` more: powers of two from 64 KiB. */
static size_t grown_cap(size_t cap, size_t pending, size_t need) {
  if (cap == 0) cap = 65536;
  while (cap - pending < need) cap *= 2;
  return cap;
}

size_t psw_rbuf_cap_for(uint64_t payload) {
  return grown_cap(0, 0, PSW_HEADER_SIZE + (size_t)payload);
}

static uint8_t *rbuf_alloc(size_t cap, int *spare) {
  *spare = 0;
  if (cap >= PSW_RBUF_BIG && spare_take_fn != NULL) {
    void *p = spare_take_fn(cap);
    spare_want_fn(cap);
    if (p != NULL) {
      *spare = 1;
      return p;
    }
  }
#ifdef PSW_RBUF_HEAP
  return aligned_alloc(64, cap);
#else
  void *p = mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? NULL : p;
#endif
}

static void rbuf_release(uint8_t *p, size_t cap, int spare) {
  if (p == NULL) return;
  if (spare) {
    spare_give_fn(p, cap);
    return;
  }
#ifdef PSW_RBUF_HEAP
  (void)cap;
  free(p);
#else
  munmap(p, cap);
#endif
}

void psw_rbuf_free(psw_rbuf *b) {
  rbuf_release(b->data, b->cap, b->spare);
  memset(b, 0, sizeof(*b));
}

/* Make room for `need` bytes after b->end, moving pending bytes to the front
 * of the buffer first (this also puts a large frame at a 64-byte aligned
 * address) and growing only when that is not enough. */
static int rbuf_make_room(psw_rbuf *b, size_t need) {
  if (b->cap - b->end >= need) return 0;
  size_t pending = b->end - b->start;
  if (b->start > 0) {
    memmove(b->data, b->data + b->start, pending);
    b->start = 0;
    b->end = pending;
    if (b->cap - b->end >= need) return 0;
  }
  size_t cap = grown_cap(b->cap, pending, need);
  /* Caps are powers of two from 64 KiB: whole pages. No transparent huge
   * pages: faulting one in can take milliseconds on a busy or virtualized
   * machine, all in one turn of a server's loop; 4 KiB faults spread over
   * the reads that fill the buffer. */
  int spare;
  uint8_t *d = rbuf_alloc(cap, &spare);
  if (d == NULL) return -1;
  if (pending) memcpy(d, b->data, pending);
  rbuf_release(b->data, b->cap, b->spare);
  b->spare = spare;
  b->data = d;
  b->cap = cap;
  return 0;
}

int psw_rbuf_partial(const psw_rbuf *b, const uint8_t **payload, size_t *have,
                     uint64_t *len) {
  size_t pending = b->end - b->start;
  if (pending < PSW_HEADER_SIZE) return 0; /* b->data may still be NULL */
  const uint8_t *h = b->data + b->start;
  if (memcmp(h, PSW_MAGIC, 4) != 0) return 0;
  uint64_t l = get_le64(h + 8);
  if (l > b->max_frame || pending - PSW_HEADER_SIZE >= l) return 0;
  *payload = h + PSW_HEADER_SIZE;
  *have = pending - PSW_HEADER_SIZE;
  *len = l;
  return 1;
}

void psw_rbuf_clear(psw_rbuf *b) { b->start = b->end = 0; }

uint8_t *psw_rbuf_reserve(psw_rbuf *b, size_t hint, size_t *avail) {
  size_t need = hint, have;
  const uint8_t *payload;
  uint64_t len;
  if (psw_rbuf_partial(b, &payload, &have, &len) && len - have > need)
    need = (size_t)(len - have);
  if (rbuf_make_room(b, need) != 0) return NULL;
  *avail = b->cap - b->end;
  return b->data + b->end;
}

void psw_rbuf_commit(psw_rbuf *b, size_t n) { b->end += n; }

size_t psw_rbuf_grow_to(const psw_rbuf *b, size_t hint) {
  size_t need = hint, have;
  const uint8_t *payload;
  uint64_t len;
  if (psw_rbuf_partial(b, &payload, &have, &len) && len - have > need)
    need = (size_t)(len - have);
  if (b->cap - b->end >= need) return b->cap;
  size_t pending = b->end - b->start;
  if (b->cap - pending >= need) return b->cap;
  return grown_cap(b->cap, pending, need);
}

int psw_rbuf_next(psw_rbuf *b, const uint8_t **payload, uint64_t *len) {
  size_t pending = b->end - b->start;
  const uint8_t *h = b->data + b->start;
  /* Check the magic as soon as its bytes arrive, so garbage is refused
   * without waiting for a whole header. */
  size_t m = pending < 4 ? pending : 4;
  if (m > 0 && memcmp(h, PSW_MAGIC, m) != 0) return PSW_EBADMAGIC;
  if (pending < PSW_HEADER_SIZE) return PSW_NEED_MORE;
  if (h[4] != PSW_VERSION || h[5] != 0) return PSW_EVERSION;
  if (h[6] != 0 || h[7] != 0) return PSW_EFLAGS;
  uint64_t l = get_le64(h + 8);
  if (l > b->max_frame) return PSW_ETOOLARGE;
  if (pending - PSW_HEADER_SIZE < l) return PSW_NEED_MORE;
  *payload = h + PSW_HEADER_SIZE;
  *len = l;
  return PSW_FRAME;
}

void psw_rbuf_consume(psw_rbuf *b, uint64_t payload_len) {
  b->start += PSW_HEADER_SIZE + (size_t)payload_len;
  if (b->start == b->end) b->start = b->end = 0;
}

/* The two enumerations mirror each other; psd_types.h says so, this checks. */
_Static_assert(PS_EBADFRAME == -PSD__CODE__BAD_FRAME && PS_ETOOLARGE == -PSD__CODE__TOO_LARGE &&
                   PS_EVERSION == -PSD__CODE__BAD_VERSION &&
                   PS_EUNKNOWN == -PSD__CODE__UNKNOWN_REQUEST &&
                   PS_ENOTFOUND == -PSD__CODE__NOT_FOUND && PS_EEXISTS == -PSD__CODE__EXISTS &&
                   PS_ESHAPE == -PSD__CODE__BAD_SHAPE && PS_ESPEC == -PSD__CODE__BAD_SPEC &&
                   PS_EGRADIENT == -PSD__CODE__BAD_GRADIENT &&
                   PS_EWRONGSHARD == -PSD__CODE__WRONG_SHARD &&
                   PS_ENOTREADY == -PSD__CODE__NOT_READY && PS_EBUSY == -PSD__CODE__BUSY &&
                   PS_ESHUTDOWN == -PSD__CODE__SHUTTING_DOWN && PS_EIO == -PSD__CODE__IO &&
                   PS_EINTERNAL == -PSD__CODE__INTERNAL &&
                   PS_ERESOURCE == -PSD__CODE__RESOURCE_EXHAUSTED &&
                   PS_EBADREQ == -PSD__CODE__BAD_REQUEST &&
                   PS_EAUTH == -PSD__CODE__UNAUTHENTICATED &&
                   PS_EPERM == -PSD__CODE__PERMISSION_DENIED &&
                   PS_EJOBENDED == -PSD__CODE__JOB_ENDED,
               "PS_E* codes 1..20 must mirror the protocol's Code enum");

int psw_code_to_err(int code) {
  return code >= PSD__CODE__BAD_FRAME && code <= PSD__CODE__JOB_ENDED ? -code
                                                                        : PS_EINTERNAL;
}

int psw_err_to_code(int err) {
  if (err == PS_OK) return PSD__CODE__OK;
  return err <= PS_EBADFRAME && err >= PS_EJOBENDED ? -err : PSD__CODE__INTERNAL;
}

const char *psw_strerror(int err) {
  switch (err) {
    case PSW_EBADMAGIC: return "bad frame magic (not a psd client?)";
    case PSW_EVERSION: return "unsupported protocol version in frame header";
    case PSW_ETOOLARGE: return "frame larger than the maximum frame size";
    case PSW_EFLAGS: return "reserved frame header flags are not zero";
    default: return "frame error";
  }
}

/* Read a protobuf varint at *p, not past end; advance *p. 0, or -1 if it is
 * truncated or longer than 10 bytes. */
static int get_varint(const uint8_t **p, const uint8_t *end, uint64_t *out) {
  uint64_t v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (*p >= end) return -1;
    uint8_t c = *(*p)++;
    v |= (uint64_t)(c & 0x7f) << shift;
    if (!(c & 0x80)) {
      *out = v;
      return 0;
    }
  }
  return -1;
}

int psw_find_values(const uint8_t *buf, size_t len, size_t *key_off, size_t *val_off,
                    uint64_t *val_len) {
  const uint8_t *p = buf, *end = buf + len;
  while (p < end) {
    const uint8_t *field = p;
    uint64_t key, n;
    if (get_varint(&p, end, &key) != 0) return -1;
    switch (key & 7) {
      case 0:
        if (get_varint(&p, end, &n) != 0) return -1;
        break;
      case 1:
        if ((size_t)(end - p) < 8) return -1;
        p += 8;
        break;
      case 5:
        if ((size_t)(end - p) < 4) return -1;
        p += 4;
        break;
      case 2:
        if (get_varint(&p, end, &n) != 0) return -1;
        if (key == KEY_VALUES) {
          *key_off = (size_t)(field - buf);
          *val_off = (size_t)(p - buf);
          *val_len = n;
          return 0;
        }
        if (n > (uint64_t)(end - p)) return -1;
        p += n;
        break;
      default:
        return -1;
    }
  }
  return -1;
}

/* Length of the valid UTF-8 sequence at p (at most n bytes), 0 if none. */
static size_t utf8_seq(const uint8_t *p, size_t n) {
  uint8_t c = p[0];
  if (c < 0x80) return 1;
  size_t k;
  uint32_t min, cp;
  if ((c & 0xe0) == 0xc0) k = 2, min = 0x80, cp = c & 0x1f;
  else if ((c & 0xf0) == 0xe0) k = 3, min = 0x800, cp = c & 0x0f;
  else if ((c & 0xf8) == 0xf0) k = 4, min = 0x10000, cp = c & 0x07;
  else return 0;
  if (n < k) return 0;
  for (size_t i = 1; i < k; i++) {
    if ((p[i] & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (p[i] & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return k;
}

static int check_strings(const ProtobufCMessageDescriptor *desc, const uint8_t *buf,
                         size_t len, int depth, char *err, size_t errlen) {
  const uint8_t *p = buf, *end = buf + len;
  while (p < end) {
    uint64_t key, n;
    if (get_varint(&p, end, &key) != 0) return 0;
    switch (key & 7) {
      case 0:
        if (get_varint(&p, end, &n) != 0) return 0;
        continue;
      case 1:
        if ((size_t)(end - p) < 8) return 0;
        p += 8;
        continue;
      case 5:
        if ((size_t)(end - p) < 4) return 0;
        p += 4;
        continue;
      case 2:
        break;
      default:
        return 0;
    }
    if (get_varint(&p, end, &n) != 0 || n > (uint64_t)(end - p)) return 0;
    const ProtobufCFieldDescriptor *fd =
        key >> 3 <= 0xffffffffu ? protobuf_c_message_descriptor_get_field(desc, (unsigned)(key >> 3))
                                : NULL;
    if (fd != NULL && fd->type == PROTOBUF_C_TYPE_STRING) {
      for (size_t i = 0; i < n;) {
        if (p[i] == 0) {
          snprintf(err, errlen, "%s.%s holds a NUL byte at byte %zu of its %llu", desc->short_name,
                   fd->name, i, (unsigned long long)n);
          return -1;
        }
        size_t k = utf8_seq(p + i, (size_t)n - i);
        if (k == 0) {
          snprintf(err, errlen, "%s.%s is not valid UTF-8 (byte %zu of its %llu)",
                   desc->short_name, fd->name, i, (unsigned long long)n);
          return -1;
        }
        i += k;
      }
    } else if (fd != NULL && fd->type == PROTOBUF_C_TYPE_MESSAGE && depth < 16) {
      if (check_strings(fd->descriptor, p, (size_t)n, depth + 1, err, errlen) != 0) return -1;
    }
    p += n;
  }
  return 0;
}

int psw_check_strings(const ProtobufCMessageDescriptor *desc, const uint8_t *buf, size_t len,
                      char *err, size_t errlen) {
  return check_strings(desc, buf, len, 0, err, errlen);
}

ProtobufCMessage *psw_decode(const ProtobufCMessageDescriptor *desc,
                             const uint8_t *payload, size_t len,
                             const uint8_t **values, size_t *values_len) {
  size_t prefix, off;
  uint64_t vl;
  *values = NULL;
  *values_len = 0;
  /* The values field last, as psw_encode writes it: unpack what precedes
   * it and point into the payload. */
  if (psw_find_values(payload, len, &prefix, &off, &vl) == 0 && vl == len - off) {
    ProtobufCMessage *m = protobuf_c_message_unpack(desc, NULL, prefix, payload);
    if (m != NULL) {
      *values = payload + off;
      *values_len = (size_t)vl;
    }
    return m;
  }
  ProtobufCMessage *m = protobuf_c_message_unpack(desc, NULL, len, payload);
  if (m == NULL) return NULL;
  /* Both envelopes keep `values` at the same place; reach it by descriptor
   * so this works for Request and Response alike. */
  const ProtobufCFieldDescriptor *fd =
      protobuf_c_message_descriptor_get_field(desc, 15);
  if (fd != NULL) {
    const ProtobufCBinaryData *bd =
        (const ProtobufCBinaryData *)((const char *)m + fd->offset);
    int has = *(const protobuf_c_boolean *)((const char *)m + fd->quantifier_offset);
    if (has) {
      *values = bd->data;
      *values_len = bd->len;
    }
  }
  return m;
}
