/*
 * ckpt.h -- checkpoints' internals, shared by the four files that make them
 * (server.h declares what the rest of the daemon calls):
 *
 *   ckpt_format.c  the file format: little-endian fields, sections with a
 *                  CRC32 each, a buffered writer and a streaming reader that
 *                  never holds more than a bounded buffer of the file
 *   ckpt_state.c   what a checkpoint holds: the shard's state written as
 *                  sections, and sections read into a temporary state that
 *                  is swapped in at the end (the only file that touches the
 *                  store's and the group's structures)
 *   ckpt_dir.c     the files in --data-dir: names, atomic writes, choosing
 *                  the checkpoint to restore, corrupt files moved aside,
 *                  pruning
 *   checkpoint.c   background saves (fork), requests, timers, stats
 *
 * The file format is in ckpt_format.h.
 */
#ifndef PSD_CKPT_H
#define PSD_CKPT_H

#include <stdint.h>

#include "ckpt_format.h"
#include "server.h"

/* ---- ckpt_state.c ----------------------------------------------------------- */

/* Write the whole state to fd (and fsync it). 0 or an errno. Runs in the
 * forked child or at exit: it must not touch the event loop. */
int ckpt_state_write(psd_server *srv, int fd, uint64_t seq);
/* Read a checkpoint into a temporary state and, if every section is right,
 * swap it in; srv is untouched on failure. 0 or -1 with st. */
int ckpt_state_load(psd_server *srv, const char *path, ck_status *st);

/* ---- ckpt_dir.c ------------------------------------------------------------- */

/* Write checkpoint seq atomically. 0 or an errno. */
int ckpt_write_file(psd_server *srv, uint64_t seq);
/* Remove checkpoints older than the newest valid one this process wrote or
 * restored (srv->ckpt_good_seq), keeping --keep in all. */
void ckpt_prune(psd_server *srv);

#endif
