/*
 * call.c -- one libpsd call from Python: the memory it reads and writes,
 * submitting it, waiting for it, its result, and what happens to it when
 * nobody waits any more.
 *
 * Buffers. A call exports the buffers of its arguments (Py_buffer) from
 * before it is submitted until its ticket is collected: the exporting
 * object (a numpy array, the numpy view of a torch tensor) stays alive and
 * cannot be resized while libpsd may read or write it, even if the caller
 * dropped every reference or was interrupted. Only C-contiguous float32
 * memory is taken as is; anything else is a TypeError, or, with
 * convert=True, is copied once into a float32 array (and an output copied
 * back when the call completes).
 *
 * Waiting. The GIL is released around every libpsd call. A wait polls
 * ps_wait_timeout every PSPY_SLICE_MS and runs Python's signal handlers in
 * between, so Ctrl-C raises KeyboardInterrupt within about that time. The
 * interrupted call stays in flight: it becomes an orphan, collected (never
 * waited for) the next time the client is used, or freed by close(); its
 * buffers stay exported until then, so a late reply writes only into
 * memory that is still there.
 */
#include <math.h>
#include <string.h>
#include <time.h>

#include "psdpy.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

pspy_call *pspy_call_new(pspy_client *cl, pspy_kind kind, PyObject *name) {
  pspy_call *k = PyMem_RawCalloc(1, sizeof(*k));
  if (k == NULL) {
    PyErr_NoMemory();
    return NULL;
  }
  k->client = cl;
  k->kind = kind;
  Py_XINCREF(name);
  k->name = name;
  k->next = cl->calls;
  if (cl->calls) cl->calls->prev = k;
  cl->calls = k;
  return k;
}

/* Give back what libpsd wrote for a collected (or closed) call and the
 * buffers it held. */
static void release(pspy_call *k) {
  if (k->has_in) PyBuffer_Release(&k->in);
  if (k->has_out) PyBuffer_Release(&k->out);
  k->has_in = k->has_out = 0;
  ps_tensor_info_free(&k->info);
  ps_list_free(k->infos, k->ninfos);
  k->infos = NULL;
  k->ninfos = 0;
  free(k->json);
  k->json = NULL;
  Py_CLEAR(k->result);
  Py_CLEAR(k->finish);
  Py_CLEAR(k->staging);
}

void pspy_call_free(pspy_call *k) {
  pspy_client *cl = k->client;
  if (k->orphan) cl->norphans--;
  release(k);
  Py_CLEAR(k->name);
  if (k->prev) k->prev->next = k->next;
  else if (cl->calls == k) cl->calls = k->next;
  if (k->next) k->next->prev = k->prev;
  PyMem_RawFree(k);
}

/* ---- buffers ---------------------------------------------------------------- */

/* obj's memory as C-contiguous float32: 1, or 0 if it is not that (no
 * exception), or -1 with an exception that is not about the layout. */
static int float_view(PyObject *obj, int writable, Py_buffer *v) {
  if (!PyObject_CheckBuffer(obj)) return 0;
  int flags = PyBUF_FORMAT | PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
  if (PyObject_GetBuffer(obj, v, flags) < 0) {
    if (PyErr_ExceptionMatches(PyExc_BufferError) || PyErr_ExceptionMatches(PyExc_ValueError) ||
        PyErr_ExceptionMatches(PyExc_TypeError)) {
      PyErr_Clear();
      return 0;
    }
    return -1;
  }
  const char *f = v->format != NULL ? v->format : "B";
  if (v->itemsize == 4 && (f[0] == 'f' || ((f[0] == '<' || f[0] == '=' || f[0] == '@') &&
                                           f[1] == 'f')) &&
      f[f[0] == 'f' ? 1 : 2] == '\0')
    return 1;
  PyBuffer_Release(v);
  return 0;
}

/* A torch tensor's memory through its numpy() view (shares its storage;
 * the view keeps the tensor alive). NULL, with the error cleared, if it has
 * none (CUDA, bfloat16, sparse...). */
static PyObject *tensor_numpy(PyObject *t) {
  PyObject *d = PyObject_CallMethod(t, "detach", NULL);
  PyObject *a = d != NULL ? PyObject_CallMethod(d, "numpy", NULL) : NULL;
  Py_XDECREF(d);
  if (a == NULL) PyErr_Clear();
  return a;
}

static int refuse(pspy_call *k, PyObject *obj, const char *what, int writable) {
  PyObject *desc = PyObject_CallFunctionObjArgs(pspy_h.describe, obj, NULL);
  if (desc == NULL) return -1;
  PyErr_Format(PyExc_TypeError,
               "%s of '%U': %s must be C-contiguous float32%s (a numpy array or a CPU torch "
               "tensor), not %U; psd.Client(..., convert=True) converts it once per call",
               k->kind == K_PUSH ? "push" : k->kind == K_SET ? "set"
               : k->kind == K_PULL || k->kind == K_PULL_RANGE ? "pull" : "push_pull",
               k->name, what, writable ? " and writable" : "", desc);
  Py_DECREF(desc);
  return -1;
}

static int acquire(pspy_call *k, PyObject *obj, int writable, const char *what, Py_buffer *v) {
  PyObject *src = obj;
  Py_INCREF(src);
  if (!PyObject_CheckBuffer(obj) && pspy_is_tensor(obj)) {
    PyObject *a = tensor_numpy(obj);
    if (a != NULL) Py_SETREF(src, a);
  }
  int r = float_view(src, writable, v);
  Py_DECREF(src); /* the view holds its own reference */
  if (r != 0) return r > 0 ? 0 : -1;
  if (!k->client->convert) return refuse(k, obj, what, writable);
  if (!writable) {
    PyObject *a = PyObject_CallFunctionObjArgs(pspy_h.to_float32, obj, NULL);
    if (a == NULL) return -1;
    r = float_view(a, 0, v);
    Py_DECREF(a);
  } else {
    PyObject *pair = PyObject_CallFunctionObjArgs(pspy_h.staging, obj, NULL);
    if (pair == NULL) return -1;
    if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
      Py_DECREF(pair);
      PyErr_SetString(PyExc_TypeError, "psd: staging() must return (array, finish)");
      return -1;
    }
    k->staging = Py_NewRef(PyTuple_GET_ITEM(pair, 0));
    k->finish = Py_NewRef(PyTuple_GET_ITEM(pair, 1));
    Py_DECREF(pair);
    r = float_view(k->staging, 1, v);
  }
  if (r == 0) return refuse(k, obj, what, writable);
  return r > 0 ? 0 : -1;
}

int pspy_call_input(pspy_call *k, PyObject *obj, const char *what) {
  if (acquire(k, obj, 0, what, &k->in) < 0) return -1;
  k->has_in = 1;
  return 0;
}

int pspy_call_output(pspy_call *k, PyObject *obj, const char *what) {
  if (acquire(k, obj, 1, what, &k->out) < 0) return -1;
  k->has_out = 1;
  Py_INCREF(obj);
  Py_XSETREF(k->result, obj);
  return 0;
}

/* ---- submitting ------------------------------------------------------------- */

static int submit_locked(pspy_call *k, ps_client *c, const char *name) {
  float *out = k->has_out ? (float *)k->out.buf : NULL;
  const float *in = k->has_in ? (const float *)k->in.buf : NULL;
  uint64_t n = (uint64_t)(k->has_out ? k->out.len : k->has_in ? k->in.len : 0) / sizeof(float);
  ps_ticket *t = &k->ticket;
  switch (k->kind) {
    case K_PULL: return ps_pull_async(c, name, out, n, NULL, NULL, t);
    case K_PUSH: return ps_push_async(c, name, in, n, NULL, NULL, t);
    case K_PUSH_PULL: return ps_push_pull_async(c, name, in, out, n, NULL, NULL, t);
    case K_PULL_RANGE: return ps_pull_range_async(c, name, k->offset, out, n, NULL, NULL, t);
    case K_CREATE:
      return ps_create_async(c, name, k->shape, k->ndim, &k->spec, NULL, NULL, t);
    case K_LOOKUP: return ps_lookup_async(c, name, &k->info, NULL, NULL, t);
    case K_LIST: return ps_list_async(c, &k->infos, &k->ninfos, NULL, NULL, t);
    case K_STATS: return ps_stats_async(c, k->shard, &k->json, NULL, NULL, t);
    case K_PING: return ps_ping_async(c, NULL, NULL, t);
    case K_CHECKPOINT: return ps_checkpoint_async(c, NULL, NULL, t);
    case K_CLOCK: return ps_clock_async(c, &k->clock, NULL, NULL, t);
    case K_BARRIER: return ps_barrier_async(c, NULL, NULL, t);
    case K_SET: return ps_set_async(c, name, k->offset, in, n, k->flags, NULL, NULL, t);
  }
  return PS_EINVAL;
}

/* The call's checks before libpsd sees it; *name gets the tensor name's
 * UTF-8 (or NULL). -1 with an exception. */
static int prepare(pspy_call *k, const char **name) {
  *name = NULL;
  if (k->name != NULL) {
    Py_ssize_t len;
    *name = PyUnicode_AsUTF8AndSize(k->name, &len);
    if (*name == NULL) return -1;
    if ((size_t)len != strlen(*name)) {
      pspy_raise(PS_EINVAL, "the tensor name holds a NUL character");
      return -1;
    }
  }
  if (k->kind == K_PUSH_PULL && k->in.len != k->out.len) {
    PyErr_Format(PyExc_ValueError, "push_pull of '%U': grad has %zd elements but out has %zd",
                 k->name, k->in.len / 4, k->out.len / 4);
    return -1;
  }
  return 0;
}

int pspy_call_submit(pspy_call *k) {
  ps_client *c = k->client->c;
  const char *name;
  int rc;
  if (prepare(k, &name) < 0) goto fail;
  /* The gradient's NaN/Inf test runs here, on this thread: without the GIL
   * for a big one. */
  Py_BEGIN_ALLOW_THREADS
  rc = submit_locked(k, c, name);
  if (rc != 0) snprintf(k->errmsg, sizeof(k->errmsg), "%s", ps_errmsg(c));
  Py_END_ALLOW_THREADS
  if (rc != 0) {
    pspy_raise(rc, k->errmsg);
    goto fail;
  }
  k->submitted = 1;
  return 0;
fail:
  pspy_call_free(k);
  return -1;
}

/* ---- waiting ---------------------------------------------------------------- */

/* After ps_wait_timeout returned rc: 1 if the ticket was collected (status
 * and sentence kept in k), 0 if it is still in flight. Runs without the
 * GIL, on the waiting thread (ps_errmsg is per thread). A PS_ETIMEDOUT may
 * be the wait's or the call's own deadline: only the call's leaves the
 * ticket collected, which a second look with no wait tells apart. */
static int collect(ps_client *c, pspy_call *k, int rc, uint64_t v) {
  if (rc == PS_ETIMEDOUT) {
    snprintf(k->errmsg, sizeof(k->errmsg), "%s", ps_errmsg(c));
    int again = ps_wait_timeout(c, k->ticket, 0, &v);
    if (again == PS_ETIMEDOUT) return 0;
    if (again != PS_ETICKET) {
      rc = again;
      if (rc != 0) snprintf(k->errmsg, sizeof(k->errmsg), "%s", ps_errmsg(c));
    }
  } else if (rc != 0) {
    snprintf(k->errmsg, sizeof(k->errmsg), "%s", ps_errmsg(c));
  }
  k->status = rc;
  k->version = v;
  k->collected = 1;
  return 1;
}

static int wait_slices(pspy_call *k, double timeout_s) {
  pspy_client *cl = k->client;
  ps_client *c = cl->c;
  double end = timeout_s >= 0 ? now_s() + timeout_s : 0;
  for (;;) {
    int slice = PSPY_SLICE_MS, done;
    if (timeout_s >= 0) {
      double left = end - now_s();
      slice = left <= 0 ? 0 : left * 1000 < slice ? (int)ceil(left * 1000) : slice;
    }
    Py_BEGIN_ALLOW_THREADS
    uint64_t v = 0;
    int rc = ps_wait_timeout(c, k->ticket, slice, &v);
    done = collect(c, k, rc, v);
    Py_END_ALLOW_THREADS
    if (done) return 1;
    if (PyErr_CheckSignals() < 0) return -1;
    if (cl->closing) {
      pspy_raise(PS_ECLOSED, "the client was closed while this call was in flight");
      return -1;
    }
    if (timeout_s >= 0 && now_s() >= end) return 0;
  }
}

int pspy_call_wait(pspy_call *k, double timeout_s) {
  if (k->collected) return 1;
  k->client->waiting++;
  int r = wait_slices(k, timeout_s);
  k->client->waiting--;
  return r;
}

/* ---- results ---------------------------------------------------------------- */

static PyObject *shape_tuple(const uint64_t *shape, int ndim) {
  PyObject *t = PyTuple_New(ndim);
  for (int i = 0; t != NULL && i < ndim; i++) {
    PyObject *d = PyLong_FromUnsignedLongLong(shape[i]);
    if (d == NULL) Py_CLEAR(t);
    else PyTuple_SET_ITEM(t, i, d);
  }
  return t;
}

static int cache_shape(pspy_call *k, const uint64_t *shape, int ndim) {
  PyObject *t = shape_tuple(shape, ndim);
  if (t == NULL) return -1;
  int r = PyDict_SetItem(k->client->shapes, k->name, t);
  Py_DECREF(t);
  return r;
}

static PyObject *info_list(pspy_call *k) {
  PyObject *l = PyList_New((Py_ssize_t)k->ninfos);
  for (size_t i = 0; l != NULL && i < k->ninfos; i++) {
    PyObject *o = pspy_info_object(&k->infos[i]);
    if (o == NULL) Py_CLEAR(l);
    else PyList_SET_ITEM(l, (Py_ssize_t)i, o);
  }
  return l;
}

static PyObject *success(pspy_call *k) {
  switch (k->kind) {
    case K_PULL:
    case K_PUSH_PULL:
    case K_PULL_RANGE:
      if (k->finish != NULL) {
        /* convert=True: the values went to the staging array. */
        PyObject *r = PyObject_CallFunctionObjArgs(k->finish, k->staging, NULL);
        if (r == NULL) return NULL;
        Py_DECREF(r);
      }
      return Py_NewRef(k->result);
    case K_CREATE:
      if (cache_shape(k, k->shape, k->ndim) < 0) return NULL;
      Py_RETURN_NONE;
    case K_LOOKUP:
      if (cache_shape(k, k->info.shape, k->info.ndim) < 0) return NULL;
      return pspy_info_object(&k->info);
    case K_LIST:
      return info_list(k);
    case K_STATS:
      return PyObject_CallFunction(pspy_h.json_loads, "s", k->json ? k->json : "{}");
    case K_CLOCK:
      return PyLong_FromUnsignedLongLong(k->clock);
    default:
      Py_RETURN_NONE;
  }
}

PyObject *pspy_call_finish(pspy_call *k) {
  PyObject *res = NULL;
  if (k->status != 0) {
    /* A tensor gone or of another size than cached: look it up again. */
    if ((k->status == PS_ENOTFOUND || k->status == PS_ESHAPE) && k->name != NULL &&
        PyDict_DelItem(k->client->shapes, k->name) < 0)
      PyErr_Clear();
    pspy_raise(k->status, k->errmsg);
  } else {
    res = success(k);
  }
  pspy_call_free(k);
  return res;
}

/* Blocking: submitted and waited for in one release of the GIL (the hot
 * path of a trainer's push_pull), then in slices if it takes longer. */
PyObject *pspy_call_run(pspy_call *k) {
  ps_client *c = k->client->c;
  const char *name;
  int rc, done = 0;
  if (prepare(k, &name) < 0) {
    pspy_call_free(k);
    return NULL;
  }
  Py_BEGIN_ALLOW_THREADS
  rc = submit_locked(k, c, name);
  if (rc != 0) {
    snprintf(k->errmsg, sizeof(k->errmsg), "%s", ps_errmsg(c));
  } else {
    uint64_t v = 0;
    k->submitted = 1;
    done = collect(c, k, ps_wait_timeout(c, k->ticket, PSPY_SLICE_MS, &v), v);
  }
  Py_END_ALLOW_THREADS
  if (rc != 0) {
    pspy_raise(rc, k->errmsg);
    pspy_call_free(k);
    return NULL;
  }
  if (!done && (PyErr_CheckSignals() < 0 || pspy_call_wait(k, -1) < 0)) {
    pspy_call_orphan(k);
    return NULL;
  }
  return pspy_call_finish(k);
}

/* ---- orphans and close -------------------------------------------------- */

void pspy_call_orphan(pspy_call *k) {
  k->orphan = 1;
  k->client->norphans++;
  if (!k->submitted) pspy_call_free(k);
}

void pspy_orphans_drain(pspy_client *cl) {
  for (pspy_call *k = cl->calls, *next; k != NULL; k = next) {
    next = k->next;
    if (!k->orphan) continue;
    uint64_t v = 0;
    /* Never blocks (timeout 0), so the GIL may stay held. */
    if (k->collected || collect(cl->c, k, ps_wait_timeout(cl->c, k->ticket, 0, &v), v))
      pspy_call_free(k);
  }
}

void pspy_calls_release_all(pspy_client *cl) {
  for (pspy_call *k = cl->calls, *next; k != NULL; k = next) {
    next = k->next;
    if (k->orphan) {
      pspy_call_free(k);
      continue;
    }
    /* A future's call: ps_close failed and freed its ticket; nothing
     * touches its buffers any more. The future raises ClosedError. */
    if (!k->collected) {
      k->collected = 1;
      k->status = PS_ECLOSED;
      snprintf(k->errmsg, sizeof(k->errmsg), "the client was closed before this call was "
               "waited for");
    }
    release(k);
  }
}
