/*
 * wire.h -- psd's framing, shared by the daemon and the client library.
 *
 * A frame is a 16-byte header (magic "PSD1", u16 version, u16 flags, u64
 * payload length, little-endian) and one protobuf message (proto/psd.proto).
 * Tensor values ride in the envelope's `values` bytes field, written last
 * and 64-byte aligned within the frame, so that neither end has to copy
 * them through protobuf-c (see the comment at the top of psd.proto).
 */
#ifndef PSD_WIRE_H
#define PSD_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "psd.pb-c.h"
#include "psd_types.h"

#define PSW_HEADER_SIZE 16
#define PSW_MAGIC "PSD1"
#define PSW_VERSION 1
/* Default hard maximum of a frame's payload (psd --max-frame). */
#define PSW_DEFAULT_MAX_FRAME (64u << 20)
/* Space reserved for a frame's head: header, packed envelope, pad and the
 * values field key. Envelopes are small; create with a rank-8 shape and a
 * long name stays far below this. */
#define PSW_HEAD_MAX 4096

/* ---- sending --------------------------------------------------------------- */

/* A frame ready to write: head[0..head_len) then values[0..values_len). */
typedef struct {
  uint8_t head[PSW_HEAD_MAX];
  size_t head_len;
  const void *values; /* not owned; NULL when the frame carries none */
  size_t values_len;
} psw_frame;

/* Encode msg (a Psd__Request or Psd__Response whose `values` field is NOT
 * set) followed by `values` as the envelope's values field. Returns 0, or
 * -1 if the envelope does not fit PSW_HEAD_MAX. The frame points at values;
 * the caller keeps them valid until the frame is written. */
int psw_encode(psw_frame *f, const ProtobufCMessage *msg, const void *values,
               size_t values_len);

/* Encode a message with no values into one malloc'd frame, whatever its
 * size (a list of many tensors, a large stats reply). Returns the frame and
 * its length in *len, or NULL if out of memory. The caller frees it. */
uint8_t *psw_encode_alloc(const ProtobufCMessage *msg, size_t *len);

/* ---- receiving ------------------------------------------------------------- */

/* Accumulate-and-drain input buffer (h2o's h2o_buffer idea): the read
 * callback only appends; complete frames are taken from the front; the rest
 * waits for the next read. The buffer only grows, and is reused for the
 * connection's lifetime, so a stream of 4 MB frames allocates once. */
typedef struct {
  uint8_t *data;
  size_t cap;
  size_t start; /* first unconsumed byte */
  size_t end;   /* one past the last received byte */
  uint64_t max_frame;
  int spare;    /* data came from the spare hooks (psw_rbuf_spares) */
} psw_rbuf;

void psw_rbuf_init(psw_rbuf *b, uint64_t max_frame);
void psw_rbuf_free(psw_rbuf *b);
/* A server's spare buffers, touched off its loop (server/spare.h): a
 * receive buffer of PSW_RBUF_BIG bytes or more is taken from `take` when
 * one of its size is ready (NULL: none), and `want` is asked for the next;
 * when freed, it goes back through `give`. Set once, before any buffer
 * grows. Other buffers are mapped memory of their own. */
#define PSW_RBUF_BIG (1u << 20)
/* The capacity an empty receive buffer grows to for one frame with a
 * payload of `payload` bytes. */
size_t psw_rbuf_cap_for(uint64_t payload);
void psw_rbuf_spares(void *(*take)(size_t bytes), void (*want)(size_t bytes),
                     void (*give)(void *buf, size_t bytes));

/* Space for the next read: at least `hint` bytes, or the rest of the frame
 * being received if that is larger (so a big frame is read straight into
 * place). Returns NULL on allocation failure. */
uint8_t *psw_rbuf_reserve(psw_rbuf *b, size_t hint, size_t *avail);
void psw_rbuf_commit(psw_rbuf *b, size_t n);
/* The capacity the buffer will have after psw_rbuf_reserve(b, hint): b->cap
 * when it need not grow (so a caller can account for, or refuse, the
 * growth first). */
size_t psw_rbuf_grow_to(const psw_rbuf *b, size_t hint);

enum { PSW_NEED_MORE = 0, PSW_FRAME = 1, PSW_EBADMAGIC = -1,
       PSW_EVERSION = -2, PSW_ETOOLARGE = -3, PSW_EFLAGS = -4 };

/* Look at the front of the buffer. PSW_FRAME: *payload and *len describe a
 * complete frame's payload (valid until psw_rbuf_consume). PSW_NEED_MORE:
 * wait for more bytes. Negative: the header is bad (checked before any
 * payload is buffered); the connection must be closed. */
int psw_rbuf_next(psw_rbuf *b, const uint8_t **payload, uint64_t *len);
void psw_rbuf_consume(psw_rbuf *b, uint64_t payload_len);

/* The frame at the front whose header has arrived but not all its payload
 * (and whose length is within max_frame): 1, with the payload's start in
 * *payload, the bytes of it received so far in *have and its whole length
 * in *len. 0 when the front is anything else. */
int psw_rbuf_partial(const psw_rbuf *b, const uint8_t **payload, size_t *have,
                     uint64_t *len);

/* Drop whatever the buffer holds (a lost connection, or a frame whose rest
 * is read elsewhere); its memory is kept for reuse. */
void psw_rbuf_clear(psw_rbuf *b);

/* Decode one payload as `desc` (psd__request__descriptor or
 * psd__response__descriptor). When the envelope's last field is `values`,
 * the floats are not copied: *values points into payload. Otherwise they
 * come from the unpacked message. Returns the message (free with
 * protobuf_c_message_free_unpacked(msg, NULL)) or NULL if the payload is not
 * a valid message. */
ProtobufCMessage *psw_decode(const ProtobufCMessageDescriptor *desc,
                             const uint8_t *payload, size_t len,
                             const uint8_t **values, size_t *values_len);

/* Walk the top-level fields of an envelope, buf[0..len) (a whole payload or
 * the part of one received so far), up to the first `values` field (15,
 * bytes). 0 when its key and length lie in buf: *key_off is where its key
 * starts (the envelope before it is buf[0..*key_off)), *val_off where its
 * bytes start and *val_len how many it declares (they may run past len).
 * -1 when no values key is found: absent, not received yet, or malformed. */
int psw_find_values(const uint8_t *buf, size_t len, size_t *key_off, size_t *val_off,
                    uint64_t *val_len);

/* Check every string field of a message as it is on the wire, buf[0..len),
 * nested messages included: protobuf-c copies a string up to its wire
 * length, but C sees it only up to its first NUL, so "w\0EVIL" would be
 * taken for "w". 0 when every string holds no NUL byte and is valid UTF-8;
 * -1 with a sentence naming the message, field and byte otherwise. Bytes
 * fields (values, cookies) are skipped in O(1). A malformed message gives 0:
 * the unpacking refuses it. */
int psw_check_strings(const ProtobufCMessageDescriptor *desc, const uint8_t *buf, size_t len,
                      char *err, size_t errlen);

/* A sentence for a negative psw_rbuf_next result. */
const char *psw_strerror(int err);

/* ---- error codes -------------------------------------------------------------
 * An Error reply carries a protocol Code (proto/psd.proto); the library
 * reports PS_E* codes (psd_types.h). Codes 1..19 are the same errors,
 * negated. */

/* The PS_E* code of a wire Code: -code for 1..19, PS_EINTERNAL for any
 * other number a peer sends (0 included: an Error is never OK). */
int psw_code_to_err(int code);

/* The wire Code of a PS_E* code: -err for PS_EBADFRAME..PS_EPERM, 0
 * for PS_OK, PSD__CODE__INTERNAL for the library's own codes (PS_EINVAL
 * and below), which no peer should be sent. */
int psw_err_to_code(int err);

#endif
