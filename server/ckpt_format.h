/*
 * ckpt_format.h -- the checkpoint file format (ckpt_format.c): sections with
 * a CRC32 each, every integer little-endian, floats little-endian IEEE-754;
 * a buffered writer and a streaming reader. It knows nothing of psd's
 * state (ckpt.h: what is saved, and where).
 *
 *   "PSDCKPT1" u64 seq
 *   sections: u32 type, u64 length, payload, u32 crc32(payload)
 *   the last section is END, whose payload is the number of sections before
 *   it; nothing follows it.
 */
#ifndef PSD_CKPT_FORMAT_H
#define PSD_CKPT_FORMAT_H

#include <stddef.h>
#include <stdint.h>

#define CKPT_MAGIC "PSDCKPT1"
enum { SEC_META = 1, SEC_WORKER = 2, SEC_SEQ = 3, SEC_TENSOR = 4, SEC_BLOCK = 5,
       SEC_SESSION = 6, SEC_JOB = 7, SEC_TABLE = 8, SEC_ROWS = 9, SEC_TROUND = 10,
       SEC_TAGE = 11, SEC_END = 99 };

/* ---- why reading a checkpoint failed ---------------------------------------- */

/* Only CK_CORRUPT proves a file bad (bad magic, checksum mismatch,
 * truncation, malformed structure): it may be moved aside and an older one
 * used. CK_SYSERR (out of memory, an I/O error, permissions, not a regular
 * file) says nothing about the file: it may be the newest valid state. */
enum { CK_OK = 0, CK_CORRUPT = 1, CK_SYSERR = 2 };

typedef struct {
  int kind;         /* CK_* */
  int err;          /* errno, for CK_SYSERR */
  char why[256];    /* a sentence; the first failure is kept */
} ck_status;

void ck_corrupt(ck_status *st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void ck_syserr(ck_status *st, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* ---- ckpt_format.c: writing ----------------------------------------------------- */

typedef struct ckw ckw;

/* Start a file on fd: magic and seq. NULL when out of memory. */
ckw *ckw_open(int fd, uint64_t seq);
/* A section of exactly len payload bytes (checked at ckw_end). */
void ckw_begin(ckw *w, uint32_t type, uint64_t len);
void ckw_u32(ckw *w, uint32_t v);
void ckw_u64(ckw *w, uint64_t v);
void ckw_bytes(ckw *w, const void *p, uint64_t n);
void ckw_str(ckw *w, const char *s);                 /* u32 length, bytes */
void ckw_f32s(ckw *w, const float *p, uint64_t n);   /* n floats */
void ckw_end(ckw *w);
/* Write END, flush, fsync fd, free w. 0 or an errno (EPROTO: a section's
 * contents did not match its declared length). */
int ckw_close(ckw *w);

/* ---- ckpt_format.c: reading ----------------------------------------------------- */

typedef struct ckr ckr;

/* Open a checkpoint and read its header. NULL with *st filled. */
ckr *ckr_open(const char *path, ck_status *st);
void ckr_close(ckr *r);
/* Next section: 1 with its type and payload length; 0 once END has been
 * read and checked (its count, nothing after it); -1 on failure (in st).
 * The previous section must have been read to its end (ckr_end). */
int ckr_next(ckr *r, uint32_t *type, uint64_t *len);
/* Payload fields. Reading past the section's end makes it CK_CORRUPT; after
 * any failure these return zeros and ckr_failed is true. */
uint32_t ckr_u32(ckr *r);
uint64_t ckr_u64(ckr *r);
void ckr_bytes(ckr *r, void *dst, uint64_t n);
void ckr_f32s(ckr *r, float *dst, uint64_t n);
/* A u32 length and that many bytes, as a malloc'd string (NULL on failure). */
char *ckr_str(ckr *r);
void ckr_skip(ckr *r, uint64_t n);
uint64_t ckr_left(const ckr *r);   /* payload bytes not yet read */
/* The section's end: every payload byte read and the checksum right. 0/-1. */
int ckr_end(ckr *r);
int ckr_failed(const ckr *r);
/* Mark the file malformed (a reader of its contents found it inconsistent). */
void ckr_malformed(ckr *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Record a failure that is not the file's (allocation). */
void ckr_syserr(ckr *r, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
uint64_t ckr_file_size(const ckr *r);
uint64_t ckr_sections(const ckr *r);

/* Read the whole file, checking every checksum and its END, keeping nothing.
 * 0, or -1 with st. */
int ckf_verify(const char *path, ck_status *st, uint64_t *size);

#endif
