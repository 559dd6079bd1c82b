/*
 * store.h -- the tensor requests: create, lookup, list, pull and push.
 * Each checks its request, changes state through tensor, round, group,
 * apply and dedupe, and answers through the outbox.
 */
#ifndef PSD_STORE_H
#define PSD_STORE_H

#include "server.h"

/* Is name a valid tensor or table name (1..PSD_MAX_NAME bytes, no space or
 * control character)? 0, or -1 with a sentence. */
int store_name_check(const char *name, char *err, size_t errlen);
/* Answer a tensor request whose name is no tensor: a table's (the call is
 * the wrong kind: BAD_REQUEST), or nothing's (NOT_FOUND). */
void store_not_found(psd_server *srv, psd_conn *c, uint64_t id, const char *name);
/* Answer with t's TensorInfo (create, lookup, reset). */
void store_reply_info(psd_server *srv, psd_conn *c, uint64_t id, psd_tensor *t);
void store_create(psd_server *srv, psd_conn *c, uint64_t id, const Psd__Create *req);
void store_lookup(psd_server *srv, psd_conn *c, uint64_t id, const Psd__Lookup *req);
void store_list(psd_server *srv, psd_conn *c, uint64_t id);
void store_pull(psd_server *srv, psd_conn *c, uint64_t id, const Psd__Pull *req);
/* values/len: the gradient as it arrived in the frame (may be unaligned),
 * or NULL/0 when it is in the connection's lane. */
void store_push(psd_server *srv, psd_conn *c, uint64_t id, const Psd__Push *req,
                const uint8_t *values, size_t len);

/* The block a request names, materialized on first touch (reply_values:
 * the reply will carry its values, which must fit the memory ceiling too),
 * and its tensor in *tp; or NULL after answering the error (no such tensor
 * or block, another shard's, over the ceiling). */
psd_block *store_find_block(psd_server *srv, psd_conn *c, uint64_t id, const char *name,
                            uint64_t index, int reply_values, psd_tensor **tp);

#endif
