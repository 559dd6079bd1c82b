/*
 * checkpoint.h -- a shard's durable state in --data-dir: background saves
 * (fork, as Redis's BGSAVE) and the verified restore at start.
 */
#ifndef PSD_CHECKPOINT_H
#define PSD_CHECKPOINT_H

#include "server.h"

/* Restore the newest valid checkpoint of --data-dir. 0, or -1 when psd
 * must not start (the reason is logged). */
int ckpt_restore(psd_server *srv);
void ckpt_start(psd_server *srv);   /* timers */
/* A checkpoint request: answered (through the outbox) when a save that
 * started after it ends. */
void ckpt_request(psd_server *srv, psd_conn *c, uint64_t id);
/* Write synchronously (at exit). 0 or -1. */
int ckpt_write_now(psd_server *srv);
void ckpt_stop(psd_server *srv);
void ckpt_json(psd_server *srv, char *buf, size_t len);

#endif
