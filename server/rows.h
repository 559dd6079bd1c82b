/*
 * rows.h -- the sparse-table requests: create, lookup and list tables, pull
 * rows, push rows, delete and reset a table. As store.c for tensors: each request is checked whole
 * before anything changes (a refusal is answered with a sentence and
 * changes nothing), then changes state through table, table_round, group,
 * apply and dedupe, and answers through the outbox.
 */
#ifndef PSD_ROWS_H
#define PSD_ROWS_H

#include "server.h"

void rows_create_table(psd_server *srv, psd_conn *c, uint64_t id, const Psd__CreateTable *req);
void rows_lookup_table(psd_server *srv, psd_conn *c, uint64_t id, const Psd__LookupTable *req);
void rows_list_tables(psd_server *srv, psd_conn *c, uint64_t id);
/* values/len: the keys (and, for a push, the gradients) as they arrived in
 * the frame (may be unaligned). */
void rows_pull(psd_server *srv, psd_conn *c, uint64_t id, const Psd__PullRows *req,
               const uint8_t *values, size_t len);
void rows_push(psd_server *srv, psd_conn *c, uint64_t id, const Psd__PushRows *req,
               const uint8_t *values, size_t len);
/* Delete (Delete with `table`) and reset (Reset with `table`) table
 * `name`, as control.h does for tensors: a delete frees the table and
 * answers what waits on it (its round's held pushes, SSP pulls of its
 * rows) with NOT_FOUND and a sentence; a reset empties it (table_clear),
 * and what waits on it completes on the emptied table. */
void rows_delete_table(psd_server *srv, psd_conn *c, uint64_t id, const char *name);
void rows_reset_table(psd_server *srv, psd_conn *c, uint64_t id, const char *name);

#endif
