/*
 * outbox.h -- replies decided by the state code, sent later by the network
 * edge (server.c), as Redis's command handlers append to a client's reply
 * buffer and never write to its socket.
 *
 * A record names the connection and request it answers. A block reply
 * keeps a pointer to the block, not a copy: it is sent from the block's own
 * memory when delivered, as zero-copy as before. If the block is about to
 * change first (another round of the same block completing in the same
 * request), block_apply calls outbox_detach, which copies the values the
 * reply was decided with.
 */
#ifndef PSD_OUTBOX_H
#define PSD_OUTBOX_H

#include "server.h"

void outbox_init(psd_outbox *ob);
/* Drop every record (their connections are gone) and free the outbox. */
void outbox_free(psd_outbox *ob);

/* Answer with block b's version, and its values when want_values (into the
 * connection's lane slot lane_out when not 0). */
enum { PSD_REPLY_DUPLICATE = 1, /* the push was a resend */
       PSD_REPLY_FILLED = 2 };  /* the values are in the lane slot already */
void outbox_block(psd_outbox *ob, psd_conn *c, uint64_t id, psd_block *b, int want_values,
                  uint64_t lane_out, int flags);
/* Answer with a RowsReply: the table's step and `rows` rows whose nfloats
 * values are in vals (owned from here, charged to PSD_MEM_OUTPUT by the
 * caller; NULL: no values). flags: PSD_REPLY_DUPLICATE. */
void outbox_rows(psd_outbox *ob, psd_conn *c, uint64_t id, float *vals, uint64_t rows,
                 uint64_t nfloats, uint64_t step, int flags);
/* Answer with an Error: a Psd__Code and a sentence. */
void outbox_error(psd_outbox *ob, psd_conn *c, uint64_t id, int code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* Answer with an Ack, with a detail string (copied) or NULL. */
void outbox_ack(psd_outbox *ob, psd_conn *c, uint64_t id, const char *detail);
/* Answer with this Response (its id is set here); encoded now. */
void outbox_response(psd_outbox *ob, psd_conn *c, uint64_t id, Psd__Response *resp);

/* Block b is about to change: records that will send its values get a
 * private copy of them now. */
void outbox_detach(psd_outbox *ob, psd_block *b);
/* Connection c is closing: its records are dropped at delivery. */
void outbox_forget_conn(psd_outbox *ob, psd_conn *c);
/* After delivery: release every record. */
void outbox_clear(psd_outbox *ob);

#endif
