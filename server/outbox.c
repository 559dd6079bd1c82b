/*
 * outbox.c -- the records of replies to send; see outbox.h. Records live in
 * one array that is reused, so a steady stream of pushes costs no
 * allocation here.
 */
#include "outbox.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "memory.h"

void outbox_init(psd_outbox *ob) { memset(ob, 0, sizeof(*ob)); }

void outbox_free(psd_outbox *ob) {
  outbox_clear(ob);
  free(ob->r);
  memset(ob, 0, sizeof(*ob));
}

/* A new zeroed record for (c, id), or NULL (counted as lost: the client's
 * deadline and resend recover it). */
static psd_ob_rec *rec_new(psd_outbox *ob, psd_conn *c, uint64_t id, psd_ob_kind kind) {
  if (ob->len == ob->cap) {
    size_t cap = ob->cap ? ob->cap * 2 : 64;
    psd_ob_rec *r = realloc(ob->r, cap * sizeof(*r));
    if (r == NULL) {
      ob->lost++;
      log_error("out of memory queueing a reply (request %llu); it is lost",
                (unsigned long long)id);
      return NULL;
    }
    ob->r = r;
    ob->cap = cap;
  }
  psd_ob_rec *r = &ob->r[ob->len++];
  memset(r, 0, sizeof(*r));
  r->kind = kind;
  r->conn = c;
  r->id = id;
  r->stamp = ob->stamp;
  return r;
}

void outbox_block(psd_outbox *ob, psd_conn *c, uint64_t id, psd_block *b, int want_values,
                  uint64_t lane_out, int flags) {
  psd_ob_rec *r = rec_new(ob, c, id, PSD_OB_BLOCK);
  if (r == NULL) return;
  r->version = b->version;
  r->n = b->n;
  r->want_values = want_values != 0;
  r->lane_out = lane_out;
  r->duplicate = (flags & PSD_REPLY_DUPLICATE) != 0;
  r->filled = (flags & PSD_REPLY_FILLED) != 0;
  if (r->want_values && !r->filled) {
    r->block = b;
    b->outbox_refs++;
  }
}

void outbox_rows(psd_outbox *ob, psd_conn *c, uint64_t id, float *vals, uint64_t rows,
                 uint64_t nfloats, uint64_t step, int flags) {
  psd_ob_rec *r = rec_new(ob, c, id, PSD_OB_ROWS);
  if (r == NULL) {
    if (vals != NULL) mem_release(PSD_MEM_OUTPUT, nfloats * sizeof(float));
    free(vals);
    return;
  }
  r->version = step;
  r->rows = rows;
  r->n = nfloats;
  r->snap = vals; /* released with the record, or adopted by the write (server.c) */
  r->want_values = vals != NULL;
  r->duplicate = (flags & PSD_REPLY_DUPLICATE) != 0;
}

void outbox_error(psd_outbox *ob, psd_conn *c, uint64_t id, int code, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  psd_ob_rec *r = rec_new(ob, c, id, PSD_OB_ERROR);
  if (r == NULL) return;
  r->code = code;
  r->msg = strdup(msg); /* NULL: sent without its sentence */
}

void outbox_ack(psd_outbox *ob, psd_conn *c, uint64_t id, const char *detail) {
  psd_ob_rec *r = rec_new(ob, c, id, PSD_OB_ACK);
  if (r != NULL && detail != NULL) r->msg = strdup(detail); /* NULL: sent without it */
}

void outbox_response(psd_outbox *ob, psd_conn *c, uint64_t id, Psd__Response *resp) {
  resp->id = id;
  size_t len;
  uint8_t *frame = psw_encode_alloc(&resp->base, &len);
  if (frame == NULL) {
    outbox_error(ob, c, id, PSD__CODE__INTERNAL, "out of memory encoding the reply");
    return;
  }
  psd_ob_rec *r = rec_new(ob, c, id, PSD_OB_FRAME);
  if (r == NULL) {
    free(frame);
    return;
  }
  r->frame = frame;
  r->frame_len = len;
  mem_charge(PSD_MEM_OUTPUT, len);
}

void outbox_detach(psd_outbox *ob, psd_block *b) {
  for (size_t i = 0; i < ob->len && b->outbox_refs > 0; i++) {
    psd_ob_rec *r = &ob->r[i];
    if (r->kind != PSD_OB_BLOCK || r->block != b) continue;
    r->block = NULL;
    b->outbox_refs--;
    if (r->conn == NULL) continue;
    r->snap = mem_alloc_data(b->n * sizeof(float));
    if (r->snap != NULL) {
      mem_charge(PSD_MEM_OUTPUT, b->n * sizeof(float)); /* an admitted reply */
      memcpy(r->snap, b->w, b->n * sizeof(float));
      continue;
    }
    /* Without a copy the reply would carry the wrong values: send an
     * error instead; the client's resend is answered as a duplicate. */
    r->kind = PSD_OB_ERROR;
    r->code = PSD__CODE__INTERNAL;
    r->msg = strdup("out of memory holding a reply's values");
  }
}

void outbox_forget_conn(psd_outbox *ob, psd_conn *c) {
  for (size_t i = 0; i < ob->len; i++)
    if (ob->r[i].conn == c) ob->r[i].conn = NULL;
}

void outbox_clear(psd_outbox *ob) {
  for (size_t i = 0; i < ob->len; i++) {
    psd_ob_rec *r = &ob->r[i];
    if (r->block != NULL) r->block->outbox_refs--;
    if (r->snap != NULL) mem_release(PSD_MEM_OUTPUT, r->n * sizeof(float));
    if (r->frame != NULL) mem_release(PSD_MEM_OUTPUT, r->frame_len);
    free(r->snap);
    free(r->msg);
    free(r->frame);
  }
  ob->len = 0;
}
