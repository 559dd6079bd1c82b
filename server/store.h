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
void store_create(psd_server *srv, psd_conn *c, uint64_t id, const Psd__Create *req);
void store_lookup(psd_server *srv, psd_conn *c, uint64_t id, const Psd__Lookup *req);
void store_list(psd_server *srv, psd_conn *c, uint64_t id);
void store_pull(psd_server *srv, psd_conn *c, uint64_t id, const Psd__Pull *req);
/* values/len: the gradient as it arrived in the frame (may be unaligned),
 * or NULL/0 when it is in the connection's lane. */
void store_push(psd_server *srv, psd_conn *c, uint64_t id, const Psd__Push *req,
                const uint8_t *values, size_t len);

#endif
