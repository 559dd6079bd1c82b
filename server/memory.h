/*
 * memory.h -- what the shard holds, by category, against one ceiling
 * (psd --max-memory), as Redis's maxmemory.
 *
 * Every allocation a client can make psd perform is charged here: tensor
 * blocks with their optimizer state, sync round buffers, replies held for
 * later (their values are reserved when the request is held), output
 * queues (gathered small replies, write requests the socket did not take,
 * outbox copies), partial input frames (receive buffers), shared-memory
 * lanes, scratch buffers, and the bookkeeping (tensor records, block maps,
 * connections, waiters). One process-wide account, kept by the loop thread
 * alone: the update helper never allocates, and the spare thread's buffers
 * are charged by the loop when wanted (spare.h).
 *
 * A request that would cross the line is refused with RESOURCE_EXHAUSTED
 * and changes nothing (mem_take fails, the caller answers). What is already
 * promised is charged unconditionally (mem_charge): the copy of a reply
 * that was admitted, the bytes of a frame whose buffer was admitted.
 */
#ifndef PSD_MEMORY_H
#define PSD_MEMORY_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
  PSD_MEM_TENSORS = 0, /* block weights and optimizer state */
  PSD_MEM_ROUNDS,      /* sync round contributions and their arrays */
  PSD_MEM_HELD,        /* replies held for later: their reserved values */
  PSD_MEM_OUTPUT,      /* gathered replies, write queues, outbox copies */
  PSD_MEM_INPUT,       /* receive buffers (partial frames) */
  PSD_MEM_LANES,       /* shared-memory lanes */
  PSD_MEM_SCRATCH,     /* averaging, gradient and undo buffers */
  PSD_MEM_META,        /* tensor records, block maps, connections, waiters */
  PSD_MEM_TABLES,      /* sparse tables: row slabs (rows, optimizer state) and indexes */
  PSD_MEM_NCAT
} psd_mem_cat;

/* The ceiling in bytes (0: none, only for unit tests). */
void mem_set_limit(uint64_t bytes);
/* The serving reserve: what stays (new blocks, tensors, table rows, lanes)
 * may not use the last `bytes` under the ceiling, so that a shard full of
 * tensors still serves what it holds: replies, sync rounds, new
 * connections' buffers. */
void mem_set_reserve(uint64_t bytes);
uint64_t mem_reserve(void);
/* The default reserve: 1/16 of the ceiling, but at least the largest frame
 * (one reply of the largest block) up to a quarter of the ceiling. */
uint64_t mem_default_reserve(uint64_t limit, uint64_t max_frame);
uint64_t mem_limit(void);
uint64_t mem_used(void);
uint64_t mem_used_by(psd_mem_cat cat);
/* The most ever in use (the metrics). */
uint64_t mem_peak(void);
/* Would `bytes` more stay within the ceiling? When not, the reclaim hook
 * (mem_set_reclaim: the spare buffers, spare.h) is asked to give back what
 * it can at once, and the answer is looked at again: memory kept ahead of
 * need never refuses a request. The same for mem_fits_growth, mem_take and
 * mem_take_growth. */
int mem_fits(uint64_t bytes);
/* fn gives back what it can and returns how many bytes (loop thread). */
void mem_set_reclaim(uint64_t (*fn)(void));
/* Charge `bytes` to cat if they fit: 0, or -1 (nothing charged; counted as
 * a refusal). */
int mem_take(psd_mem_cat cat, uint64_t bytes);
/* The same for what stays until the shard stops (a new block, a tensor, a
 * lane): it must leave the reserve free. */
int mem_fits_growth(uint64_t bytes);
int mem_take_growth(psd_mem_cat cat, uint64_t bytes);
/* Charge unconditionally (already promised), or give back. */
void mem_charge(psd_mem_cat cat, uint64_t bytes);
void mem_release(psd_mem_cat cat, uint64_t bytes);
/* Requests refused for the ceiling so far. */
uint64_t mem_refusals(void);
void mem_count_refusal(void);

/* Has the account fallen far (max(32 MiB, 1/64 of the ceiling)) below its
 * highest point since the last mem_trimmed()? Then the allocator holds
 * freed pages the account no longer counts (glibc keeps freed heap memory
 * resident), and server.c gives them back to the system (malloc_trim). */
int mem_trim_due(void);
void mem_trimmed(void);

/* Memory for tensor data: 64-byte aligned. Not advised for transparent
 * huge pages: the first touch of a huge page zeroes 2 MiB in one fault,
 * which took 5-8 ms on a virtualized machine, inside one turn of the loop;
 * small pages fault a slice at a time as a block is made over turns
 * (tensor.h), and cost Adam no measurable speed (README, Benchmarks).
 * Free with free(). */
void *mem_alloc_data(size_t bytes);

/* The default ceiling: 3/4 of the machine's memory, or of the cgroup's
 * (memory.max, cgroup v2) when that is lower. `why` names the source. */
uint64_t mem_default_limit(char *why, size_t whylen);
/* "8G", "512M", "1048576", "64k", "1.5G": 0, or -1 if malformed. */
int mem_parse_size(const char *s, uint64_t *out);
/* {"limit":..,"reserve":..,"used":..,"peak":..,"mem_tensors":..,...,"mem_refused":..} */
void mem_json(char *buf, size_t len);

#endif
