/*
 * ckpt_state.c -- what a checkpoint holds, and how it becomes the shard's
 * state again.
 *
 * Saved: the server list and this shard's index; then for every job, its
 * name and run (incarnation), its group (worker count, mode, each rank's
 * clock and barrier generation), its exactly-once table and sessions,
 * every tensor's name, shape and resolved spec, every materialized block's
 * weights, optimizer state, version, and the contributions of a sync round
 * in progress. Together these make a restart exact.
 *
 * Sections, in this order (payload fields, all little-endian):
 *   META    str server_list, u32 shard_index, u32 num_workers, u32 staleness,
 *           u32 pending_expired (the last three: 0, 0, 0 since jobs; a file
 *           from before them describes its one job here)
 *   then for each job:
 *   JOB     str name, u64 incarnation, u32 ended, u32 num_workers (0: no
 *           worker yet), u32 staleness, u32 pending_expired
 *   and the job's sections, which a file from before jobs has without a
 *   JOB section (they are the job "default's"):
 *   WORKER  u32 rank, u32 joined, u64 worker_id, u64 clock, u64 barrier_gen
 *           (one per rank)
 *   SEQ     u64 n, n x (u64 worker_id, u64 last_seq)
 *   SESSION u64 n, n x (u64 id, 32 bytes secret, i32 rank, u32 role)
 *           (session.h: the ids and secrets the shard issued; the files
 *           are mode 0600)
 *   TENSOR  u64 index, str name, u32 len, TensorSpec (protobuf, shape inside:
 *           the spec as tuned), and only when it was tuned: u32 len,
 *           TensorSpec (the spec as created, what a create is compared with)
 *   BLOCK   u64 tensor_index, u64 block, u64 version, u64 n, f32[n] weights,
 *           f32[n * state_per_param] optimizer state, u64 ncontrib,
 *           ncontrib x (u32 rank, u64 seq, u64 clock, f32[n] gradient),
 *           and only when sets wait for its round (set.h): u64 nsets,
 *           nsets x (u64 worker_id, u64 seq, u64 offset, u64 n, u32 zero_state,
 *           f32[n] values)
 *           (one per materialized block, after its tensor)
 *   TABLE   u64 table_index, str name, u32 dim, u32 len, TableSpec (protobuf),
 *           u64 step, u64 evictions, u64 rows (after the job's tensors)
 *   ROWS    u64 table_index, u64 n, n x (u64 key, u32 step, u32 count,
 *           f32[dim] row, f32[dim * state_per_param] state): the table's rows
 *           in eviction order, coldest first, with their use counts (LFU),
 *           at most 65536 per section, after their table
 *   TAGE    u64 table_index, u64 uses, u64 passes, u32 active, u32 next_count,
 *           u32 merge_count, u64 merge_rows: an LFU table's aging (table.h,
 *           table_age_state), after its rows
 *   TROUND  u64 table_index, u32 rank, u64 seq, u64 clock, u64 n, u64[n] keys,
 *           f32[n * dim] gradients (a pending sync-round contribution)
 * (TABLE, ROWS and TROUND came with sparse tables: a file from before them
 * has none, and reads as before. TAGE came with LFU aging: a file without
 * it restores its LFU tables with no pass in progress and no uses counted
 * towards the next; a psd from before it skips the section.)
 *
 * The optional tails keep a file without tunings or held sets readable by
 * a psd from before them, and such older files load here as they are.
 *
 * Loading reads the file once more, section by section, into a temporary
 * psd_server; nothing of the live state is touched until END has been read
 * and checked, then the temporary state is swapped in. A failure tells a
 * malformed file (CK_CORRUPT) from a lack of memory (CK_SYSERR): only the
 * first proves the file bad.
 *
 * The store's and the group's structures are touched here only: by the
 * writer, and by the load_* functions below through tensor_insert,
 * block_materialize, block_measure, round_alloc, dedupe_record,
 * job_alloc/job_adopt/jobs_free and the fields of psd_job and psd_group.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt.h"
#include "apply.h"
#include "dedupe.h"
#include "group.h"
#include "job.h"
#include "memory.h"
#include "round.h"
#include "session.h"
#include "set.h"
#include "table.h"
#include "table_round.h"
#include "tensor.h"
#include "msg.h"
#include "psmath.h"

/* ---- writing ------------------------------------------------------------------ */

static void write_meta(ckw *w, psd_server *srv) {
  const char *list = srv->have_list ? srv->servers.list : "";
  ckw_begin(w, SEC_META, 4 + strlen(list) + 4 + 4 + 4 + 4);
  ckw_str(w, list);
  ckw_u32(w, (uint32_t)srv->shard_index);
  ckw_u32(w, 0); /* the jobs' groups are in their JOB sections */
  ckw_u32(w, 0);
  ckw_u32(w, 0);
  ckw_end(w);
}

static void write_job(ckw *w, psd_job *j) {
  psd_group *g = &j->group;
  ckw_begin(w, SEC_JOB, 4 + strlen(j->name) + 8 + 4 + 4 + 4 + 4);
  ckw_str(w, j->name);
  ckw_u64(w, j->incarnation);
  ckw_u32(w, (uint32_t)j->ended);
  ckw_u32(w, g->configured ? g->num_workers : 0);
  ckw_u32(w, (uint32_t)g->staleness);
  ckw_u32(w, (uint32_t)g->pending_expired);
  ckw_end(w);
}

static void write_workers(ckw *w, psd_group *g) {
  for (uint32_t r = 0; g->configured && r < g->num_workers; r++) {
    ckw_begin(w, SEC_WORKER, 4 + 4 + 8 + 8 + 8);
    ckw_u32(w, r);
    ckw_u32(w, (uint32_t)g->w[r].joined);
    ckw_u64(w, g->w[r].worker_id);
    ckw_u64(w, g->w[r].clock);
    ckw_u64(w, g->w[r].barrier_gen);
    ckw_end(w);
  }
}

static void write_seqs(ckw *w, psd_seqmap *m) {
  size_t it = 0;
  uint64_t k, v;
  ckw_begin(w, SEC_SEQ, 8 + m->len * 16);
  ckw_u64(w, m->len);
  while (u64map_next(m, &it, &k, &v)) {
    ckw_u64(w, k);
    ckw_u64(w, v);
  }
  ckw_end(w);
}

/* ---- sessions (session.h): a self-contained pair ------------------------------- */

/* The sessions of job j. */
static void write_sessions(ckw *w, psd_server *srv, psd_job *j) {
  size_t it = 0, n = 0;
  uint64_t k, v;
  while (u64map_next(&srv->sessions, &it, &k, &v))
    n += ((const psd_session *)(uintptr_t)v)->job == j;
  if (n == 0) return; /* a file without sessions is as before them */
  ckw_begin(w, SEC_SESSION, 8 + n * (8 + PSA_SECRET + 4 + 4));
  ckw_u64(w, n);
  it = 0;
  while (u64map_next(&srv->sessions, &it, &k, &v)) {
    const psd_session *s = (const psd_session *)(uintptr_t)v;
    if (s->job != j) continue;
    ckw_u64(w, s->id);
    ckw_bytes(w, s->secret, PSA_SECRET);
    ckw_u32(w, (uint32_t)s->rank);
    ckw_u32(w, (uint32_t)s->role);
  }
  ckw_end(w);
}

/* Into tmp's table, in job j. Restored sessions have no connection and a
 * fresh last-seen time; their ranks are held as the WORKER sections say. */
static int read_sessions(ckr *r, psd_server *tmp, psd_job *j) {
  uint64_t n = ckr_u64(r), now = psd_now_ms();
  if (!ckr_failed(r) && n > ckr_left(r) / (8 + PSA_SECRET + 4 + 4)) {
    ckr_malformed(r, "%llu sessions announced", (unsigned long long)n);
    return -1;
  }
  for (uint64_t i = 0; i < n && !ckr_failed(r); i++) {
    uint8_t secret[PSA_SECRET];
    uint64_t id = ckr_u64(r);
    ckr_bytes(r, secret, PSA_SECRET);
    int32_t rank = (int32_t)ckr_u32(r);
    uint32_t role = ckr_u32(r);
    if (ckr_failed(r)) break;
    if (id == 0 || rank < -1 || role >= PSA_NROLES || session_find(tmp, id) != NULL) {
      ckr_malformed(r, "session %llu (rank %d, role %u)", (unsigned long long)id, rank, role);
      return -1;
    }
    if (session_restore(tmp, j, id, secret, rank, (int)role, now) != 0) {
      ckr_syserr(r, ENOMEM, "out of memory for the sessions");
      return -1;
    }
  }
  return ckr_failed(r) ? -1 : 0;
}

/* A spec packed as a TensorSpec message: malloc'd, or NULL. */
static uint8_t *pack_spec(const psd_tensor *t, const ps_tensor_spec *spec, size_t *len) {
  pmsg_spec_pb pb;
  pmsg_spec_to_pb(&pb, spec, t->shape, t->ndim);
  *len = protobuf_c_message_get_packed_size(&pb.ts.base);
  uint8_t *packed = malloc(*len ? *len : 1);
  if (packed != NULL) protobuf_c_message_pack(&pb.ts.base, packed);
  return packed;
}

static int write_tensor(ckw *w, psd_tensor *t, uint64_t tindex) {
  size_t plen, clen = 0;
  int tuned = psm_spec_diff(&t->spec, &t->created, NULL, 0) != 0;
  uint8_t *packed = pack_spec(t, &t->spec, &plen);
  uint8_t *created = tuned ? pack_spec(t, &t->created, &clen) : NULL;
  if (packed == NULL || (tuned && created == NULL)) {
    free(packed);
    free(created);
    return ENOMEM;
  }
  ckw_begin(w, SEC_TENSOR, 8 + 4 + strlen(t->name) + 4 + plen + (tuned ? 4 + clen : 0));
  ckw_u64(w, tindex);
  ckw_str(w, t->name);
  ckw_u32(w, (uint32_t)plen);
  ckw_bytes(w, packed, plen);
  if (tuned) {
    ckw_u32(w, (uint32_t)clen);
    ckw_bytes(w, created, clen);
  }
  ckw_end(w);
  free(packed);
  free(created);
  return 0;
}

static void write_block(ckw *w, psd_tensor *t, psd_block *b, uint64_t tindex, uint32_t nw) {
  unsigned k = psm_state_per_param(t->spec.optim.kind);
  uint64_t nc = b->present ? b->ncontrib : 0, nsets = 0, sets_len = 0;
  for (psd_link *l = b->sets.next; l != &b->sets; l = l->next, nsets++)
    sets_len += 8 + 8 + 8 + 8 + 4 + psd_link_entry(l, psd_heldset, link)->n * 4;
  ckw_begin(w, SEC_BLOCK,
            8 + 8 + 8 + 8 + b->n * 4 * (1 + k) + 8 + nc * (4 + 8 + 8 + b->n * 4) +
                (nsets ? 8 + sets_len : 0));
  ckw_u64(w, tindex);
  ckw_u64(w, b->index);
  ckw_u64(w, b->version);
  ckw_u64(w, b->n);
  ckw_f32s(w, b->w, b->n);
  if (k) ckw_f32s(w, b->state, b->n * k);
  ckw_u64(w, nc);
  for (uint32_t r = 0; nc && r < nw; r++)
    if (b->present[r]) {
      ckw_u32(w, r);
      ckw_u64(w, b->contrib_seq[r]);
      ckw_u64(w, b->contrib_clock[r]);
      ckw_f32s(w, b->contrib[r], b->n);
    }
  if (nsets) ckw_u64(w, nsets);
  for (psd_link *l = b->sets.next; l != &b->sets; l = l->next) {
    psd_heldset *h = psd_link_entry(l, psd_heldset, link);
    ckw_u64(w, h->worker_id);
    ckw_u64(w, h->seq);
    ckw_u64(w, h->off);
    ckw_u64(w, h->n);
    ckw_u32(w, (uint32_t)(h->zero_state != 0));
    ckw_f32s(w, h->vals, h->n);
  }
  ckw_end(w);
}

/* ---- tables ------------------------------------------------------------------- */

#define ROWS_PER_SECTION 65536

static int write_table(ckw *w, psd_table *t, uint64_t tindex) {
  pmsg_table_pb pb;
  pmsg_table_to_pb(&pb, &t->spec);
  size_t plen = protobuf_c_message_get_packed_size(&pb.ts.base);
  uint8_t *packed = malloc(plen ? plen : 1);
  if (packed == NULL) return ENOMEM;
  protobuf_c_message_pack(&pb.ts.base, packed);
  ckw_begin(w, SEC_TABLE, 8 + 4 + strlen(t->name) + 4 + 4 + plen + 8 + 8 + 8);
  ckw_u64(w, tindex);
  ckw_str(w, t->name);
  ckw_u32(w, t->dim);
  ckw_u32(w, (uint32_t)plen);
  ckw_bytes(w, packed, plen);
  ckw_u64(w, t->step);
  ckw_u64(w, t->evictions);
  ckw_u64(w, t->nrows);
  ckw_end(w);
  free(packed);
  return 0;
}

/* Rows go out in sections of at most ROWS_PER_SECTION. */
typedef struct {
  ckw *w;
  const psd_table *t;
  uint64_t tindex, left, in_section, section_n;
} rows_writer;

static void write_row(void *arg, const psd_rowhdr *h, const float *row, uint32_t count) {
  rows_writer *rw = arg;
  uint64_t per = (uint64_t)rw->t->dim * (1 + rw->t->k);
  if (rw->in_section == 0) {
    rw->section_n = rw->left < ROWS_PER_SECTION ? rw->left : ROWS_PER_SECTION;
    ckw_begin(rw->w, SEC_ROWS, 8 + 8 + rw->section_n * (8 + 4 + 4 + per * 4));
    ckw_u64(rw->w, rw->tindex);
    ckw_u64(rw->w, rw->section_n);
  }
  ckw_u64(rw->w, h->key);
  ckw_u32(rw->w, h->step);
  ckw_u32(rw->w, count);
  ckw_f32s(rw->w, row, per);
  if (++rw->in_section == rw->section_n) {
    ckw_end(rw->w);
    rw->left -= rw->section_n;
    rw->in_section = 0;
  }
}

static void write_tround(ckw *w, const psd_table *t, uint64_t tindex) {
  const psd_tround *r = t->round;
  for (uint32_t i = 0; r != NULL && i < r->nw; i++) {
    const psd_tcontrib *c = &r->c[i];
    if (!c->present) continue;
    ckw_begin(w, SEC_TROUND, 8 + 4 + 8 + 8 + 8 + c->n * 8 + c->n * t->dim * 4);
    ckw_u64(w, tindex);
    ckw_u32(w, i);
    ckw_u64(w, c->seq);
    ckw_u64(w, c->clock);
    ckw_u64(w, c->n);
    for (uint64_t j = 0; j < c->n; j++) ckw_u64(w, c->keys[j]);
    ckw_f32s(w, c->g, c->n * t->dim);
    ckw_end(w);
  }
}

static void write_tage(ckw *w, const psd_table *t, uint64_t tindex) {
  table_age_state s;
  table_age_save(t, &s);
  ckw_begin(w, SEC_TAGE, 8 + 8 + 8 + 4 + 4 + 4 + 8);
  ckw_u64(w, tindex);
  ckw_u64(w, s.uses);
  ckw_u64(w, s.passes);
  ckw_u32(w, s.active);
  ckw_u32(w, s.next_count);
  ckw_u32(w, s.merge_count);
  ckw_u64(w, s.merge_rows);
  ckw_end(w);
}

static int write_tables(ckw *w, psd_job *j, uint64_t *tindex) {
  size_t it = 0;
  uint64_t k, v;
  while (u64map_next(&j->tables, &it, &k, &v))
    for (psd_table *t = (psd_table *)(uintptr_t)v; t != NULL; t = t->next, (*tindex)++) {
      int err = write_table(w, t, *tindex);
      if (err) return err;
      rows_writer rw = {w, t, *tindex, t->nrows, 0, 0};
      table_each_row(t, write_row, &rw);
      if (t->spec.evict == PS_EVICT_LFU) write_tage(w, t, *tindex);
      write_tround(w, t, *tindex);
    }
  return 0;
}

int ckpt_state_write(psd_server *srv, int fd, uint64_t seq) {
  ckw *w = ckw_open(fd, seq);
  if (w == NULL) return ENOMEM;
  write_meta(w, srv);
  uint64_t tindex = 0, table_index = 0;
  int err = 0;
  for (psd_link *l = srv->jobs.next; l != &srv->jobs && !err; l = l->next) {
    psd_job *j = psd_link_entry(l, psd_job, link);
    psd_group *g = &j->group;
    write_job(w, j);
    write_workers(w, g);
    write_seqs(w, &j->seqs);
    write_sessions(w, srv, j);
    uint32_t nw = g->configured ? g->num_workers : 0;
    for (size_t i = 0; i < j->table_cap && !err; i++)
      for (psd_tensor *t = j->table[i]; t && !err; t = t->next, tindex++) {
        err = write_tensor(w, t, tindex);
        /* Only the blocks materialized here: an untouched one is recreated
         * by its init. */
        size_t it = 0;
        uint64_t bi, bv;
        while (!err && u64map_next(&t->blocks, &it, &bi, &bv))
          write_block(w, t, (psd_block *)(uintptr_t)bv, tindex, nw);
      }
    if (!err) err = write_tables(w, j, &table_index);
  }
  int cerr = ckw_close(w);
  return err ? err : cerr;
}

/* ---- loading ------------------------------------------------------------------ */

typedef struct {
  ckr *r;
  psd_server tmp;          /* the state being built */
  psd_tensor **byindex;    /* tensors in file order */
  uint64_t ntens;
  psd_table **tables;      /* tables in file order */
  uint64_t ntables;
  float *rowbuf;           /* one row and its state, read from a ROWS section */
  int have_meta;
  psd_job *cur;            /* the job whose sections are being read */
} ck_load;

static int nomem(ckr *r, const char *what) {
  ckr_syserr(r, ENOMEM, "out of memory for %s", what);
  return -1;
}

/* The job the next sections belong to: the last JOB section's, or (a file
 * from before jobs) "default". NULL when out of memory. */
static psd_job *cur_job(ck_load *L) {
  if (L->cur == NULL && (L->cur = job_alloc(PSD_JOB_DEFAULT)) != NULL)
    job_adopt(&L->tmp, L->cur);
  return L->cur;
}

/* The group of job j from its description. -1 when out of memory or over
 * this psd's --max-workers (not the file's fault: it was started with a
 * lower limit). */
static int load_group(ck_load *L, psd_job *j, uint32_t nw, uint32_t st, uint32_t pe) {
  ckr *r = L->r;
  uint32_t mw = L->tmp.cfg.max_workers ? L->tmp.cfg.max_workers : PSD_DEFAULT_MAX_WORKERS;
  if (nw > mw) {
    ckr_syserr(r, ERANGE, "job '%s' of %u workers is larger than --max-workers %u", j->name,
               nw, mw);
    return -1;
  }
  if (nw == 0) return 0;
  j->group.w = calloc(nw, sizeof(*j->group.w));
  if (j->group.w == NULL) return nomem(r, "a job's workers");
  j->group.configured = 1;
  j->group.num_workers = nw;
  j->group.staleness = (int)st;
  j->group.pending_expired = (int)pe;
  return 0;
}

/* protobuf-c allocations that can tell a lack of memory from a bad message. */
static void *pb_alloc(void *data, size_t size) {
  void *p = malloc(size);
  if (p == NULL) *(int *)data = 1;
  return p;
}
static void pb_free(void *data, void *p) {
  (void)data;
  free(p);
}

static int load_meta(ck_load *L) {
  ckr *r = L->r;
  char *list = ckr_str(r);
  uint32_t idx = ckr_u32(r), nw = ckr_u32(r), st = ckr_u32(r), pe = ckr_u32(r);
  if (ckr_failed(r) || L->have_meta) {
    if (!ckr_failed(r)) ckr_malformed(r, "a second META section");
    free(list);
    return -1;
  }
  L->have_meta = 1;
  psd_server *t = &L->tmp;
  if (list[0] != '\0') {
    char err[256] = "";
    errno = 0;
    int rc = psp_servers_parse(&t->servers, list, err, sizeof(err));
    int oom = rc != 0 && errno == ENOMEM;
    free(list);
    if (oom) return nomem(r, "the server list");
    if (rc != 0) {
      ckr_malformed(r, "server list: %s", err);
      return -1;
    }
    t->have_list = 1;
    if ((int)idx < 0 || (int)idx >= t->servers.n) {
      ckr_malformed(r, "shard index %u of a list of %d", idx, t->servers.n);
      return -1;
    }
    t->shard_index = (int)idx;
  } else {
    free(list);
  }
  if (nw == 0) return 0;
  /* A file from before jobs: its one job is "default". */
  psd_job *j = cur_job(L);
  if (j == NULL) return nomem(r, "a job");
  return load_group(L, j, nw, st, pe);
}

static int load_job(ck_load *L) {
  ckr *r = L->r;
  char *name = ckr_str(r);
  uint64_t inc = ckr_u64(r);
  uint32_t ended = ckr_u32(r), nw = ckr_u32(r), st = ckr_u32(r), pe = ckr_u32(r);
  char err[160];
  if (ckr_failed(r)) {
    free(name);
    return -1;
  }
  if (job_name_check(name, err, sizeof(err)) != 0 || job_find(&L->tmp, name) != NULL ||
      inc == 0) {
    ckr_malformed(r, "job '%.64s' (run %llu): a bad or repeated name", name,
                  (unsigned long long)inc);
    free(name);
    return -1;
  }
  uint32_t mj = L->tmp.cfg.max_jobs ? L->tmp.cfg.max_jobs : PSD_DEFAULT_MAX_JOBS;
  if (L->tmp.njobs >= mj) {
    ckr_syserr(r, ERANGE, "it holds more jobs than --max-jobs %u", mj);
    free(name);
    return -1;
  }
  psd_job *j = job_alloc(name);
  free(name);
  if (j == NULL) return nomem(r, "a job");
  job_adopt(&L->tmp, j);
  j->incarnation = inc;
  j->ended = ended != 0;
  L->cur = j;
  return load_group(L, j, nw, st, pe);
}

static int load_worker(ck_load *L) {
  ckr *r = L->r;
  uint32_t rank = ckr_u32(r), joined = ckr_u32(r);
  uint64_t wid = ckr_u64(r), clock = ckr_u64(r), gen = ckr_u64(r);
  if (ckr_failed(r)) return -1;
  psd_group *g = L->cur ? &L->cur->group : NULL;
  if (g == NULL || !g->configured || rank >= g->num_workers) {
    ckr_malformed(r, "worker rank %u outside the job", rank);
    return -1;
  }
  psd_worker *w = &g->w[rank];
  w->joined = (int)joined;
  w->worker_id = wid;
  w->clock = clock;
  w->barrier_gen = gen;
  return 0;
}

static int load_seqs(ck_load *L) {
  ckr *r = L->r;
  uint64_t n = ckr_u64(r);
  if (!ckr_failed(r) && n > ckr_left(r) / 16) {
    ckr_malformed(r, "%llu entries announced", (unsigned long long)n);
    return -1;
  }
  psd_job *j = cur_job(L);
  if (j == NULL) return nomem(r, "a job");
  for (uint64_t i = 0; i < n && !ckr_failed(r); i++) {
    uint64_t k = ckr_u64(r), v = ckr_u64(r);
    if (!ckr_failed(r) && dedupe_record(&j->seqs, k, v) != 0)
      return nomem(r, "the exactly-once table");
  }
  return ckr_failed(r) ? -1 : 0;
}

/* The spec of a TENSOR section: a TensorSpec message of pl bytes. */
static int load_spec(ckr *r, uint32_t pl, ps_tensor_spec *spec, uint64_t *shape, int *ndim) {
  if (pl > ckr_left(r)) {
    ckr_malformed(r, "a spec of %u bytes", pl);
    return -1;
  }
  uint8_t *pp = malloc(pl ? pl : 1);
  if (pp == NULL) return nomem(r, "a tensor spec");
  ckr_bytes(r, pp, pl);
  if (ckr_failed(r)) {
    free(pp);
    return -1;
  }
  int oom = 0;
  ProtobufCAllocator a = {pb_alloc, pb_free, &oom};
  Psd__TensorSpec *ps = psd__tensor_spec__unpack(&a, pl, pp);
  free(pp);
  if (ps == NULL) {
    if (oom) return nomem(r, "a tensor spec");
    ckr_malformed(r, "the tensor spec does not decode");
    return -1;
  }
  char err[256] = "";
  int rc = pmsg_spec_from_pb(ps, spec, err, sizeof(err));
  int unknown = rc != 0; /* its only failure: a name it does not know */
  if (rc == 0 && (ps->n_shape < 1 || ps->n_shape > PSD_MAX_NDIM || spec->block_size == 0)) {
    rc = -1;
    snprintf(err, sizeof(err), "%zu dimensions, block size %llu", ps->n_shape,
             (unsigned long long)spec->block_size);
  }
  if (rc == 0) {
    *ndim = (int)ps->n_shape;
    memcpy(shape, ps->shape, ps->n_shape * sizeof(*shape));
  }
  psd__tensor_spec__free_unpacked(ps, &a);
  /* A spec that decodes but names an initializer or optimizer this psd does
   * not know may come from a newer psd: not proof that the file is bad. */
  if (rc != 0 && unknown)
    ckr_syserr(r, ENOTSUP, "a tensor spec names what this psd does not know (%s)", err);
  else if (rc != 0)
    ckr_malformed(r, "tensor spec: %s", err);
  return rc;
}

static int load_tensor(ck_load *L) {
  ckr *r = L->r;
  uint64_t ti = ckr_u64(r);
  char *name = ckr_str(r);
  uint32_t pl = ckr_u32(r);
  if (ckr_failed(r)) goto fail;
  if (ti != L->ntens || !L->tmp.have_list) {
    ckr_malformed(r, "tensor %llu out of order, or before the server list",
                  (unsigned long long)ti);
    goto fail;
  }
  ps_tensor_spec spec, created;
  uint64_t shape[PSD_MAX_NDIM], cshape[PSD_MAX_NDIM];
  int ndim = 0, cndim = 0;
  if (load_spec(r, pl, &spec, shape, &ndim) != 0) goto fail;
  created = spec;
  if (ckr_left(r) > 0) {
    /* Tuned: the spec as created follows. */
    uint32_t cl = ckr_u32(r);
    if (ckr_failed(r) || load_spec(r, cl, &created, cshape, &cndim) != 0) goto fail;
    if (cndim != ndim || memcmp(cshape, shape, (size_t)ndim * sizeof(*shape)) != 0 ||
        created.optim.kind != spec.optim.kind) {
      ckr_malformed(r, "tensor '%s': its spec as created has another shape or optimizer",
                    name);
      goto fail;
    }
  }
  psd_job *j = cur_job(L);
  if (j == NULL) goto oom;
  if (tensor_find(j, name) != NULL) {
    ckr_malformed(r, "tensor '%s' twice", name);
    goto fail;
  }
  psd_tensor **nb = realloc(L->byindex, (size_t)(L->ntens + 1) * sizeof(*nb));
  if (nb == NULL) goto oom;
  L->byindex = nb;
  psd_tensor *t = tensor_insert(&L->tmp, j, name, shape, ndim, &spec, NULL);
  if (t == NULL) goto oom;
  t->created = created;
  L->byindex[L->ntens++] = t;
  free(name);
  return 0;
oom:
  nomem(r, "a tensor");
fail:
  free(name);
  return -1;
}

/* The pending sync-round contributions of a block: nc of them. */
static int load_contribs(ck_load *L, psd_block *b, uint64_t nc) {
  ckr *r = L->r;
  psd_group *g = &b->tensor->job->group;
  if (!g->configured || nc > g->num_workers) {
    ckr_malformed(r, "%llu contributions in a job of %u workers", (unsigned long long)nc,
                  g->num_workers);
    return -1;
  }
  if (round_alloc(b, g->num_workers) != 0) return nomem(r, "a sync round");
  psd_link_insert_tail(&b->tensor->job->rounds, &b->round_link);
  for (uint64_t i = 0; i < nc; i++) {
    uint32_t rank = ckr_u32(r);
    uint64_t seq = ckr_u64(r), clk = ckr_u64(r);
    if (ckr_failed(r)) return -1;
    if (rank >= g->num_workers || b->present[rank]) {
      ckr_malformed(r, "contribution of rank %u", rank);
      return -1;
    }
    b->contrib[rank] = mem_alloc_data((b->n * 4 + 63) & ~(size_t)63);
    if (b->contrib[rank] == NULL) return nomem(r, "a sync contribution");
    mem_charge(PSD_MEM_ROUNDS, (b->n * 4 + 63) & ~(uint64_t)63);
    ckr_f32s(r, b->contrib[rank], b->n);
    b->present[rank] = 1;
    b->contrib_seq[rank] = seq;
    b->contrib_clock[rank] = clk;
    b->ncontrib++;
  }
  return ckr_failed(r) ? -1 : 0;
}

/* The sets held for a block's round (the optional tail of BLOCK). */
static int load_sets(ck_load *L, psd_block *b) {
  ckr *r = L->r;
  uint64_t nsets = ckr_u64(r);
  for (uint64_t i = 0; i < nsets && !ckr_failed(r); i++) {
    uint64_t wid = ckr_u64(r), seq = ckr_u64(r), off = ckr_u64(r), n = ckr_u64(r);
    uint32_t zero = ckr_u32(r);
    if (ckr_failed(r)) return -1;
    if (n == 0 || off >= b->n || n > b->n - off || ckr_left(r) < n * 4) {
      ckr_malformed(r, "a held set of %llu values at %llu in block %llu of '%s'",
                    (unsigned long long)n, (unsigned long long)off,
                    (unsigned long long)b->index, b->tensor->name);
      return -1;
    }
    psd_heldset *h = calloc(1, sizeof(*h));
    uint64_t bytes = (n * 4 + 63) & ~(uint64_t)63;
    float *vals = mem_alloc_data(bytes);
    if (h == NULL || vals == NULL) {
      free(h);
      free(vals);
      return nomem(r, "a held set");
    }
    mem_charge(PSD_MEM_ROUNDS, bytes);
    ckr_f32s(r, vals, n);
    *h = (psd_heldset){.worker_id = wid, .seq = seq, .off = off, .n = n,
                       .zero_state = zero != 0, .vals = vals};
    psd_link_insert_tail(&b->sets, &h->link);
  }
  if (ckr_failed(r)) return -1;
  /* Held for a round no longer in progress: they land now. */
  if (b->ncontrib == 0) set_release(&L->tmp, b);
  return 0;
}

static int load_block(ck_load *L) {
  ckr *r = L->r;
  uint64_t ti = ckr_u64(r), bi = ckr_u64(r), ver = ckr_u64(r), n = ckr_u64(r);
  if (ckr_failed(r)) return -1;
  if (ti >= L->ntens) {
    ckr_malformed(r, "block of unknown tensor %llu", (unsigned long long)ti);
    return -1;
  }
  psd_tensor *t = L->byindex[ti];
  uint64_t first;
  int ok = bi < t->nblocks && tensor_block(t, bi) == NULL &&
           psp_block_range(t->numel, t->spec.block_size, bi, &first) == n &&
           psp_owner(&L->tmp.servers, t->name_hash, bi) == L->tmp.shard_index;
  if (!ok) {
    ckr_malformed(r, "block %llu of '%s' (%llu elements) is not one of this shard's, or twice",
                  (unsigned long long)bi, t->name, (unsigned long long)n);
    return -1;
  }
  unsigned k = psm_state_per_param(t->spec.optim.kind);
  if (ckr_left(r) < n * 4 * (1 + k) + 8) {
    ckr_malformed(r, "block %llu of '%s' is short", (unsigned long long)bi, t->name);
    return -1;
  }
  psd_block *b = NULL;
  if (tensor_block_get(&L->tmp, t, bi, 0, &b) != TB_OK) return nomem(r, "a block");
  ckr_f32s(r, b->w, n);
  if (k) ckr_f32s(r, b->state, n * k);
  block_set_version(&L->tmp, b, ver);
  block_measure(b);
  uint64_t nc = ckr_u64(r);
  if (ckr_failed(r)) return -1;
  if (nc > 0 && load_contribs(L, b, nc) != 0) return -1;
  return ckr_left(r) > 0 ? load_sets(L, b) : 0;
}

static int load_table(ck_load *L) {
  ckr *r = L->r;
  uint64_t ti = ckr_u64(r);
  char *name = ckr_str(r);
  uint32_t dim = ckr_u32(r), pl = ckr_u32(r);
  uint8_t *pp = NULL;
  Psd__TableSpec *ps = NULL;
  int oom = 0;
  ProtobufCAllocator a = {pb_alloc, pb_free, &oom};
  if (ckr_failed(r)) goto fail;
  if (ti != L->ntables || !L->tmp.have_list || pl > ckr_left(r)) {
    ckr_malformed(r, "table %llu out of order, before the server list, or a spec of %u bytes",
                  (unsigned long long)ti, pl);
    goto fail;
  }
  if ((pp = malloc(pl ? pl : 1)) == NULL) goto oom;
  ckr_bytes(r, pp, pl);
  uint64_t step = ckr_u64(r), evictions = ckr_u64(r);
  (void)ckr_u64(r); /* its rows: the ROWS sections say */
  if (ckr_failed(r)) goto fail;
  ps = psd__table_spec__unpack(&a, pl, pp);
  if (ps == NULL) {
    if (oom) goto oom;
    ckr_malformed(r, "the spec of table '%s' does not decode", name);
    goto fail;
  }
  ps_table_spec spec;
  char err[256] = "";
  if (pmsg_table_from_pb(ps, &spec, err, sizeof(err)) != 0) {
    /* A newer psd's kind: not proof that the file is bad. */
    ckr_syserr(r, ENOTSUP, "table '%s' names what this psd does not know (%s)", name, err);
    goto fail;
  }
  if (psm_table_validate(&spec, dim, err, sizeof(err)) != 0) {
    ckr_malformed(r, "table '%s': %s", name, err);
    goto fail;
  }
  psd_job *j = cur_job(L);
  if (j == NULL) goto oom;
  if (table_find(j, name) != NULL || tensor_find(j, name) != NULL) {
    ckr_malformed(r, "table '%s' twice, or also a tensor", name);
    goto fail;
  }
  psd_table **nt = realloc(L->tables, (size_t)(L->ntables + 1) * sizeof(*nt));
  if (nt == NULL) goto oom;
  L->tables = nt;
  psd_table *t = table_insert(&L->tmp, j, name, dim, &spec, NULL);
  if (t == NULL) goto oom;
  t->step = step;
  t->evictions = evictions;
  L->tables[L->ntables++] = t;
  psd__table_spec__free_unpacked(ps, &a);
  free(pp);
  free(name);
  return 0;
oom:
  nomem(r, "a table");
fail:
  if (ps != NULL) psd__table_spec__free_unpacked(ps, &a);
  free(pp);
  free(name);
  return -1;
}

static int load_rows(ck_load *L) {
  ckr *r = L->r;
  uint64_t ti = ckr_u64(r), n = ckr_u64(r);
  if (ckr_failed(r)) return -1;
  if (ti >= L->ntables) {
    ckr_malformed(r, "rows of unknown table %llu", (unsigned long long)ti);
    return -1;
  }
  psd_table *t = L->tables[ti];
  uint64_t per = (uint64_t)t->dim * (1 + t->k);
  if (n > ckr_left(r) / (16 + per * 4)) {
    ckr_malformed(r, "%llu rows of table '%s' announced", (unsigned long long)n, t->name);
    return -1;
  }
  float *row = realloc(L->rowbuf, per * sizeof(float));
  if (row == NULL) return nomem(r, "a row");
  L->rowbuf = row;
  for (uint64_t i = 0; i < n; i++) {
    uint64_t key = ckr_u64(r);
    uint32_t step = ckr_u32(r), count = ckr_u32(r);
    ckr_f32s(r, row, per);
    if (ckr_failed(r)) return -1;
    if (!table_owns(&L->tmp, t, key)) {
      ckr_malformed(r, "row %llu of table '%s' is not one of this shard's",
                    (unsigned long long)key, t->name);
      return -1;
    }
    int rc = table_restore_row(&L->tmp, t, key, step, count, row);
    if (rc == -1) return nomem(r, "the rows of a table");
    if (rc != 0) {
      ckr_malformed(r, "row %llu of table '%s' twice, or out of order", (unsigned long long)key,
                    t->name);
      return -1;
    }
  }
  return 0;
}

static int load_tage(ck_load *L) {
  ckr *r = L->r;
  table_age_state s;
  uint64_t ti = ckr_u64(r);
  s.uses = ckr_u64(r);
  s.passes = ckr_u64(r);
  s.active = ckr_u32(r);
  s.next_count = ckr_u32(r);
  s.merge_count = ckr_u32(r);
  s.merge_rows = ckr_u64(r);
  if (ckr_failed(r)) return -1;
  if (ti >= L->ntables) {
    ckr_malformed(r, "aging of unknown table %llu", (unsigned long long)ti);
    return -1;
  }
  psd_table *t = L->tables[ti];
  int rc = table_age_restore(t, &s);
  if (rc == -1) return nomem(r, "a table's aging");
  if (rc != 0) {
    ckr_malformed(r, "the LFU aging of table '%s' does not fit its rows (a pass at count %u, "
                  "a merge of %llu rows at count %u)",
                  t->name, s.next_count, (unsigned long long)s.merge_rows, s.merge_count);
    return -1;
  }
  return 0;
}

static int load_tround(ck_load *L) {
  ckr *r = L->r;
  uint64_t ti = ckr_u64(r);
  uint32_t rank = ckr_u32(r);
  uint64_t seq = ckr_u64(r), clock = ckr_u64(r), n = ckr_u64(r);
  if (ckr_failed(r)) return -1;
  psd_table *t = ti < L->ntables ? L->tables[ti] : NULL;
  psd_group *g = t ? &t->job->group : NULL;
  if (t == NULL || !g->configured || rank >= g->num_workers ||
      n > ckr_left(r) / (8 + (uint64_t)t->dim * 4)) {
    ckr_malformed(r, "a sync contribution of rank %u to table %llu", rank,
                  (unsigned long long)ti);
    return -1;
  }
  uint64_t *keys = malloc((n ? n : 1) * sizeof(*keys));
  float *g2 = malloc((n ? n : 1) * (size_t)t->dim * sizeof(float));
  if (keys == NULL || g2 == NULL) {
    free(keys);
    free(g2);
    return nomem(r, "a sync contribution");
  }
  for (uint64_t i = 0; i < n; i++) keys[i] = ckr_u64(r);
  ckr_f32s(r, g2, n * t->dim);
  int rc = ckr_failed(r) ? -3 : trow_restore(t, g->num_workers, rank, seq, clock, keys, g2, n);
  free(keys);
  free(g2);
  if (rc == -1) return nomem(r, "a sync contribution");
  if (rc == -2) ckr_malformed(r, "rank %u's contribution to table '%s' twice", rank, t->name);
  return rc == 0 ? 0 : -1;
}

static int load_section(ck_load *L, uint32_t type, uint64_t len) {
  switch (type) {
    case SEC_META: return load_meta(L);
    case SEC_WORKER: return load_worker(L);
    case SEC_SEQ: return load_seqs(L);
    case SEC_TENSOR: return load_tensor(L);
    case SEC_BLOCK: return load_block(L);
    case SEC_JOB: return load_job(L);
    case SEC_TABLE: return load_table(L);
    case SEC_ROWS: return load_rows(L);
    case SEC_TROUND: return load_tround(L);
    case SEC_TAGE: return load_tage(L);
    case SEC_SESSION:
      if (cur_job(L) == NULL) return nomem(L->r, "a job");
      return read_sessions(L->r, &L->tmp, L->cur);
    default: ckr_skip(L->r, len); return ckr_failed(L->r) ? -1 : 0; /* a later version's */
  }
}

static int load_init(ck_load *L, psd_server *srv) {
  memset(L, 0, sizeof(*L));
  L->tmp.cfg = srv->cfg;
  psd_link_init(&L->tmp.jobs);
  return 0;
}

static void load_discard(ck_load *L) {
  sessions_free(&L->tmp);
  jobs_free(NULL, &L->tmp.jobs);
  tensor_vstat_free(&L->tmp);
  if (L->tmp.have_list) psp_servers_free(&L->tmp.servers);
  free(L->byindex);
  free(L->tables);
  free(L->rowbuf);
}

/* Swap the loaded state in. Restored workers get a fresh worker-timeout to
 * reconnect. */
static void load_swap_in(ck_load *L, psd_server *srv) {
  psd_server *tmp = &L->tmp;
  uint64_t now = psd_now_ms();
  sessions_free(srv);
  jobs_free(NULL, &srv->jobs);
  tensor_vstat_free(srv);
  if (srv->have_list) psp_servers_free(&srv->servers);
  tensor_vstat_move(&srv->vstat, &tmp->vstat);
  srv->sessions = tmp->sessions;
  /* Move the jobs (their own lists live in them; only the head moves). */
  psd_link_init(&srv->jobs);
  if (!psd_link_empty(&tmp->jobs)) {
    srv->jobs.next = tmp->jobs.next;
    srv->jobs.prev = tmp->jobs.prev;
    srv->jobs.next->prev = &srv->jobs;
    srv->jobs.prev->next = &srv->jobs;
  }
  srv->njobs = tmp->njobs;
  srv->ntensors = tmp->ntensors;
  srv->ntables = tmp->ntables;
  for (psd_link *l = srv->jobs.next; l != &srv->jobs; l = l->next) {
    psd_job *j = psd_link_entry(l, psd_job, link);
    psd_group *g = &j->group;
    j->started_ms = now;
    for (uint32_t i = 0; i < g->num_workers; i++) {
      /* Restored workers of a running job get a fresh worker-timeout to
       * reconnect. A rank held by an id that is no restored session (a
       * file from before sessions: protocol 1's client-chosen ids) has no
       * holder that could resume it: it stays live, and the first session
       * to say hello with it takes it (group.h). */
      if (!g->w[i].joined || j->ended) continue;
      g->w[i].live = 1;
      g->w[i].last_seen_ms = now;
      if (g->first_join_ms == 0) g->first_join_ms = now;
      g->w[i].orphan = session_find(srv, g->w[i].worker_id) == NULL;
    }
  }
  srv->servers = tmp->servers;
  srv->have_list = tmp->have_list;
  srv->shard_index = tmp->shard_index;
  free(L->byindex);
  free(L->tables);
  free(L->rowbuf);
}

int ckpt_state_load(psd_server *srv, const char *path, ck_status *st) {
  ck_load L;
  if (load_init(&L, srv) != 0) {
    load_discard(&L);
    ck_syserr(st, ENOMEM, "out of memory");
    return -1;
  }
  L.r = ckr_open(path, st);
  if (L.r == NULL) {
    load_discard(&L);
    return -1;
  }
  uint32_t type;
  uint64_t len;
  int rc;
  while ((rc = ckr_next(L.r, &type, &len)) == 1)
    if (load_section(&L, type, len) != 0 || ckr_end(L.r) != 0) {
      rc = -1;
      break;
    }
  ckr_close(L.r);
  if (rc != 0) {
    load_discard(&L);
    return -1;
  }
  load_swap_in(&L, srv);
  return 0;
}
