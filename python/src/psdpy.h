/*
 * psdpy.h -- the psd._core extension module: Python over libpsd (psd.h).
 * Internal to the extension; the Python API is documented in
 * python/psd/_core.pyi and the README ("Python and PyTorch").
 *
 *   module.c  the module: registered Python helpers, psd.Error classes,
 *             raising a PS_E* code
 *   client.c  psd.Client: connecting, closing, the methods
 *   call.c    one call in flight: its buffers, submitting it, waiting for
 *             it with the GIL released and signals checked, its result;
 *             orphans (calls nobody waits for any more)
 *   future.c  psd.Future: what the *_async methods return
 *   spec.c    tensor specs <-> keyword arguments and dicts
 *
 * Threads: every field here is read and written with the GIL held. The
 * GIL is released only around libpsd calls, which touch the call's own
 * buffers (kept exported, so alive and unresizable, until the ticket is
 * collected) and the client handle (kept open by the pin count: close()
 * waits for it to drop to zero before ps_close frees the handle).
 */
#ifndef PSDPY_H
#define PSDPY_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <sys/types.h>

#include "psd.h"

/* A wait polls libpsd this often for Ctrl-C (the target is 100 ms). */
#define PSPY_SLICE_MS 20

typedef enum {
  K_PULL = 0,
  K_PUSH,
  K_PUSH_PULL,
  K_PULL_RANGE,
  K_CREATE,
  K_LOOKUP,
  K_LIST,
  K_STATS,
  K_PING,
  K_CHECKPOINT,
  K_CLOCK,
  K_BARRIER,
  K_SET
} pspy_kind;

typedef struct pspy_client pspy_client;

/* One call of libpsd, from its submission until its ticket is collected and
 * its result built (or, after close, until the handle is gone). It lives in
 * its client's list the whole time; libpsd writes into its buffers and
 * result fields until the ticket is collected. */
typedef struct pspy_call {
  struct pspy_call *prev, *next; /* the client's list */
  pspy_client *client;
  pspy_kind kind;
  ps_ticket ticket;
  int submitted;      /* ticket valid */
  int collected;      /* the ticket was collected (or freed by ps_close) */
  int orphan;         /* nobody waits: discard it once collected */
  int status;
  uint64_t version;
  char errmsg[512];

  PyObject *name;     /* str: tensor calls, create, lookup */
  uint64_t offset;    /* pull_range */
  Py_buffer in, out;  /* exported while in flight */
  int has_in, has_out;
  PyObject *result;   /* the object pull/push_pull return (out, or a new array) */
  PyObject *finish;   /* convert=True: copies the staging array into the user's */
  PyObject *staging;  /* ... the array libpsd wrote into */

  uint64_t shape[16]; /* create */
  int ndim;
  ps_tensor_spec spec;
  int shard;          /* stats */
  ps_tensor_info info;
  ps_tensor_info *infos;
  size_t ninfos;
  char *json;
  uint64_t clock;
  int flags;          /* set */
} pspy_call;

struct pspy_client {
  PyObject_HEAD
  ps_client *c;       /* NULL once closed */
  pid_t pid;          /* the process that connected: a forked child must not use c */
  int closing;        /* close() began: waits give up, calls are refused */
  long pins;          /* methods running on c (close waits for 0) */
  long waiting;       /* threads inside a wait (Client.waiting) */
  int convert;
  int rank, num_workers, staleness;
  PyObject *servers;  /* str */
  PyObject *job;      /* str */
  PyObject *shapes;   /* dict: tensor name -> shape tuple */
  pspy_call *calls;   /* every call in flight */
  long norphans;      /* of which nobody waits for */
  unsigned fork_gen;  /* pspy_fork_gen when it connected */
  PyObject *weakrefs;
};

/* Bumped in a child after fork(): a client connected before the fork has
 * no loop thread there and must not be used, nor closed, by the child. */
extern volatile unsigned pspy_fork_gen;

typedef struct {
  PyObject_HEAD
  pspy_client *client;
  pspy_call *call;    /* NULL once finished */
  PyObject *value;    /* the result, once finished */
  PyObject *error;    /* or the exception */
  uint64_t version;
  int busy;           /* a thread is waiting for it */
} pspy_future;

/* ---- module.c ------------------------------------------------------------ */

extern PyTypeObject pspy_client_type;
extern PyTypeObject pspy_future_type;

/* The helpers psd/__init__.py registers with _setup (borrowed, kept alive
 * by the module). */
typedef struct {
  PyObject *errors;      /* dict: code -> class */
  PyObject *error_base;  /* psd.Error */
  PyObject *tensor_info; /* psd.TensorInfo(name, shape, numel, version, spec) */
  PyObject *empty;       /* shape -> new float32 array */
  PyObject *to_float32;  /* obj -> contiguous float32 copy (convert=True) */
  PyObject *staging;     /* obj -> (array, finish) for an output (convert=True) */
  PyObject *describe;    /* obj -> "a float64 ndarray of shape (3,)" */
  PyObject *json_loads;
  PyObject *torch_tensor; /* torch.Tensor once torch is imported, else NULL */
} pspy_helpers;
extern pspy_helpers pspy_h;

/* Raise the psd.Error subclass of code with msg (or the code's name when
 * msg is empty). Returns NULL. */
PyObject *pspy_raise(int code, const char *msg);
/* Raise it with the last sentence of c for this thread. */
PyObject *pspy_raise_c(ps_client *c, int code);
/* Is torch.Tensor known and obj one? */
int pspy_is_tensor(PyObject *obj);

/* ---- call.c -------------------------------------------------------------- */

pspy_call *pspy_call_new(pspy_client *cl, pspy_kind kind, PyObject *name);
/* Acquire obj's memory as float32 elements for input (grad) or output. On
 * success the view is the call's in or out buffer; convert=True may make
 * it a converted copy. -1 with TypeError (or another exception). */
int pspy_call_input(pspy_call *k, PyObject *obj, const char *what);
int pspy_call_output(pspy_call *k, PyObject *obj, const char *what);
/* Hand the call to libpsd. -1 with the exception set; the call is freed. */
int pspy_call_submit(pspy_call *k);
/* Wait for it: 1 done, 0 not within timeout_s (>= 0; < 0 = no limit), -1
 * with an exception (KeyboardInterrupt from a signal handler, psd.ClosedError
 * when the client is being closed); the call is then still in flight. */
int pspy_call_wait(pspy_call *k, double timeout_s);
/* The result of a done call (or its exception); frees the call. */
PyObject *pspy_call_finish(pspy_call *k);
/* Nobody will wait for k: drop it when its ticket completes. */
void pspy_call_orphan(pspy_call *k);
/* Collect the orphans whose tickets are done (never blocks). */
void pspy_orphans_drain(pspy_client *cl);
/* After ps_close: every call is over; release them all (futures see
 * psd.ClosedError). */
void pspy_calls_release_all(pspy_client *cl);
/* Submit, then wait without limit: the blocking form of every method. */
PyObject *pspy_call_run(pspy_call *k);
void pspy_call_free(pspy_call *k);

/* ---- client.c ------------------------------------------------------------ */

/* Enter a method that uses the handle: refused (psd.ClosedError) once
 * closed or closing, or in a forked child; drains orphans. */
int pspy_enter(pspy_client *cl);
void pspy_leave(pspy_client *cl);

/* ---- future.c ------------------------------------------------------------ */

/* A new future owning k (already submitted). */
PyObject *pspy_future_new(pspy_call *k);

/* ---- spec.c -------------------------------------------------------------- */

/* Fill *spec from create()'s keyword arguments (init, optimizer, schedule,
 * lr, seed and every field of ps_tensor_spec by name). -1 with TypeError
 * for an unknown keyword, ValueError for an unknown kind. */
int pspy_spec_from_kwargs(PyObject *kwargs, ps_tensor_spec *spec);
/* tune()'s keyword arguments (optimizer fields only) into spec->optim and
 * the PS_OPTIM_F_* bits naming them. -1 with TypeError or ValueError. */
int pspy_tune_from_kwargs(PyObject *kwargs, ps_tensor_spec *spec, uint64_t *bits);
/* psd.TensorInfo of info. */
PyObject *pspy_info_object(const ps_tensor_info *info);
/* The spec as a dict of the same keywords create() takes. */
PyObject *pspy_spec_dict(const ps_tensor_spec *spec);

#endif /* PSDPY_H */
