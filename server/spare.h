/*
 * spare.h -- block-sized buffers whose pages were touched off the event
 * loop.
 *
 * The first touch of fresh memory costs a page fault per page. On a
 * virtualized machine that is 4-17 us a page: 17 ms for 4 MiB, all inside
 * one turn of the loop when a request needs it. Two things need megabytes
 * of fresh memory at once:
 * - an update of a block that slow readers are still being sent
 *   (block_unpin, tensor.h): the block moves to a copy. When a block of
 *   SPARE_MIN bytes or more gets its first pin, spare_want asks for a
 *   buffer of its size, and the update takes it (spare_take);
 * - a receive buffer grown for a big frame: the kernel fills it, and the
 *   request's first pass over it faults every page in again (on this kind
 *   of machine, the kernel's touch does not map the pages for user mode).
 *   The receive buffers take and want spares (psw_rbuf_spares, wire.h), so
 *   a connection's first big frame lands in memory already touched.
 * At most SPARE_SLOTS buffers of SPARE_MAX bytes or less are wanted or
 * ready at once, one per size; each is charged to PSD_MEM_SCRATCH (within
 * the serving reserve, memory.h) from the want until taken or dropped,
 * and dropped whenever the account needs the room for anything else
 * (spare_reclaim): a spare never makes a request be refused. A
 * receive buffer freed goes back as its size's spare (spare_give), so the
 * heap does not hold it for malloc_trim.
 *
 * The spare thread only allocates and touches; it never sees a block.
 * Without spare_start (unit tests), spare_want does nothing and spare_take
 * returns NULL.
 */
#ifndef PSD_SPARE_H
#define PSD_SPARE_H

#include <stddef.h>
#include <stdint.h>

#define SPARE_MIN (1u << 20)
#define SPARE_MAX (16u << 20)
#define SPARE_SLOTS 4

/* Start the spare thread: 0, or -1 (spares are then never made). */
int spare_start(void);
/* Stop it and free every buffer, giving back their charges. */
void spare_stop(void);
/* A buffer of `bytes` (a multiple of 64) should be ready soon. */
void spare_want(size_t bytes);
/* buf (from spare_take, `bytes` long, uncharged) is no longer needed: it
 * becomes the ready spare of its size when there is none (charged again,
 * if it fits), else it is freed. Its contents are left as they are: a
 * taker overwrites what it uses. */
void spare_give(void *buf, size_t bytes);
/* A ready buffer of exactly `bytes`, 64-byte aligned, its pages resident,
 * no longer charged (the caller's memory now; free with free()); NULL when
 * none is ready. */
void *spare_take(size_t bytes);
/* The account needs room (memory.h, mem_set_reclaim): drop every spare
 * ready or only wanted, giving their charges back; the bytes given back.
 * One being made keeps its charge until it is ready. */
uint64_t spare_reclaim(void);

#endif
