/*
 * client.c -- psd.Client: one libpsd handle (ps_client) and its methods.
 *
 * Every method that talks to the shards builds a call (call.c), submits it
 * and either waits for it (the blocking form) or returns a psd.Future (the
 * *_async form). A method pins the handle while it runs; close() refuses
 * new calls, makes waits give up (psd.ClosedError), waits for the pins to
 * drop, and only then lets ps_close free the handle.
 *
 * Connecting may wait up to connect_timeout for every shard, so ps_connect
 * runs on a thread of its own while the caller waits for it in slices,
 * running signal handlers: Ctrl-C during a connect raises at once, and the
 * thread closes the handle it gets, if any, when ps_connect returns.
 */
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "psdpy.h"

volatile unsigned pspy_fork_gen;

int pspy_enter(pspy_client *cl) {
  if (cl->c == NULL || cl->closing) {
    pspy_raise(PS_ECLOSED, "the client is closed");
    return -1;
  }
  if (cl->fork_gen != pspy_fork_gen) {
    pspy_raise(PS_ECLOSED, "this client was connected before a fork(): a child process must "
               "make its own psd.Client");
    return -1;
  }
  cl->pins++;
  if (cl->norphans > 0) pspy_orphans_drain(cl);
  return 0;
}

void pspy_leave(pspy_client *cl) { cl->pins--; }

/* ---- connecting ------------------------------------------------------------ */

typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done, abandoned, rc;
  ps_client *c;
  char err[512];
  char *servers, *identity, *token_file, *role, *job;
  ps_options o;
} connect_job;

static void job_free(connect_job *j) {
  pthread_mutex_destroy(&j->mu);
  pthread_cond_destroy(&j->cv);
  free(j->servers);
  free(j->identity);
  free(j->token_file);
  free(j->role);
  free(j->job);
  free(j);
}

static void *connect_main(void *arg) {
  connect_job *j = arg;
  ps_client *c = NULL;
  int rc = ps_connect(&c, j->servers, &j->o);
  pthread_mutex_lock(&j->mu);
  j->rc = rc;
  j->c = c;
  if (rc != 0) snprintf(j->err, sizeof(j->err), "%s", ps_last_error());
  j->done = 1;
  int abandoned = j->abandoned;
  pthread_cond_signal(&j->cv);
  pthread_mutex_unlock(&j->mu);
  if (abandoned) { /* the caller was interrupted: nobody takes the handle */
    if (c != NULL) ps_close(c);
    job_free(j);
  }
  return NULL;
}

/* Run ps_connect for j, interruptibly. 0 with j's result (j then belongs to
 * the caller), or -1 with an exception (j belongs to the thread). */
static int connect_wait(connect_job *j) {
  pthread_t th;
  pthread_attr_t attr;
  sigset_t all, old;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  sigfillset(&all); /* signals are the Python thread's to take */
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int r = pthread_create(&th, &attr, connect_main, j);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&attr);
  if (r != 0) {
    job_free(j);
    PyErr_SetString(PyExc_OSError, "psd: cannot start a thread to connect");
    return -1;
  }
  for (;;) {
    int done;
    Py_BEGIN_ALLOW_THREADS
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += PSPY_SLICE_MS * 1000000L;
    if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
    pthread_mutex_lock(&j->mu);
    if (!j->done) pthread_cond_timedwait(&j->cv, &j->mu, &ts);
    done = j->done;
    pthread_mutex_unlock(&j->mu);
    Py_END_ALLOW_THREADS
    if (done) return 0;
    if (PyErr_CheckSignals() < 0) {
      pthread_mutex_lock(&j->mu);
      done = j->done;
      j->abandoned = !done;
      pthread_mutex_unlock(&j->mu);
      if (done) { /* it finished meanwhile: undo it here */
        if (j->c != NULL) {
          Py_BEGIN_ALLOW_THREADS
          ps_close(j->c);
          Py_END_ALLOW_THREADS
        }
        job_free(j);
      }
      return -1;
    }
  }
}

static char *opt_str(PyObject *o, const char *what, int *err) {
  *err = 0;
  if (o == NULL || o == Py_None) return NULL;
  PyObject *s = PyOS_FSPath(o);
  const char *u = s && PyUnicode_Check(s) ? PyUnicode_AsUTF8(s) : NULL;
  char *r = u ? strdup(u) : NULL;
  if (u == NULL && !PyErr_Occurred())
    PyErr_Format(PyExc_TypeError, "%s must be a str", what);
  Py_XDECREF(s);
  if (r == NULL) *err = 1;
  return r;
}

static int opt_int(PyObject *o, int *dst, const char *what) {
  if (o == NULL || o == Py_None) return 0;
  long v = PyLong_AsLong(o);
  if (v == -1 && PyErr_Occurred()) return -1;
  if (v < -1000000 || v > 1000000000) {
    PyErr_Format(PyExc_ValueError, "%s is out of range", what);
    return -1;
  }
  *dst = (int)v;
  return 0;
}

static int opt_ms(PyObject *o, int *dst, const char *what) {
  if (o == NULL || o == Py_None) return 0;
  double s = PyFloat_AsDouble(o);
  if (s == -1 && PyErr_Occurred()) return -1;
  if (!(s > 0 && s < 2e6)) {
    PyErr_Format(PyExc_ValueError, "%s must be a positive number of seconds", what);
    return -1;
  }
  *dst = s * 1000 < 1 ? 1 : (int)(s * 1000);
  return 0;
}

static int client_init(pspy_client *cl, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"servers", "rank", "num_workers", "staleness", "job", "timeout",
                           "convert", "identity", "token_file", "role", "lane_mb",
                           "connect_timeout", NULL};
  PyObject *servers = Py_None, *rank = NULL, *nw = NULL, *st = NULL, *job = NULL,
           *timeout = NULL, *identity = NULL, *token = NULL, *role = NULL, *lane = NULL,
           *cto = NULL;
  int convert = 0, err;
  if (cl->c != NULL) {
    PyErr_SetString(PyExc_RuntimeError, "psd.Client is already connected");
    return -1;
  }
  if (!PyArg_ParseTupleAndKeywords(args, kw, "|O$OOOOOpOOOOO:Client", kwlist, &servers, &rank,
                                   &nw, &st, &job, &timeout, &convert, &identity, &token, &role,
                                   &lane, &cto))
    return -1;
  connect_job *j = calloc(1, sizeof(*j));
  if (j == NULL) {
    PyErr_NoMemory();
    return -1;
  }
  pthread_mutex_init(&j->mu, NULL);
  pthread_cond_init(&j->cv, NULL);
  ps_options_init(&j->o);
  j->servers = opt_str(servers, "servers", &err);
  if (!err) j->identity = opt_str(identity, "identity", &err);
  if (!err) j->token_file = opt_str(token, "token_file", &err);
  if (!err) j->role = opt_str(role, "role", &err);
  if (!err) j->job = opt_str(job, "job", &err);
  if (err || opt_int(rank, &j->o.rank, "rank") < 0 ||
      opt_int(nw, &j->o.num_workers, "num_workers") < 0 ||
      opt_int(st, &j->o.staleness, "staleness") < 0 ||
      opt_int(lane, &j->o.lane_mb, "lane_mb") < 0 ||
      opt_ms(timeout, &j->o.op_timeout_ms, "timeout") < 0 ||
      opt_ms(cto, &j->o.connect_timeout_ms, "connect_timeout") < 0) {
    job_free(j);
    return -1;
  }
  if (j->identity) j->o.identity = j->identity;
  if (j->token_file) j->o.token_file = j->token_file;
  if (j->role) j->o.role = j->role;
  if (j->job) j->o.job = j->job;

  if (connect_wait(j) < 0) return -1;
  if (j->rc != 0) {
    pspy_raise(j->rc, j->err);
    job_free(j);
    return -1;
  }
  cl->c = j->c;
  cl->fork_gen = pspy_fork_gen;
  cl->convert = convert;
  cl->rank = j->o.rank;
  cl->num_workers = j->o.num_workers;
  cl->staleness = j->o.staleness;
  cl->job = PyUnicode_FromString(j->o.job ? j->o.job : "default");
  if (cl->job == NULL) {
    job_free(j);
    return -1;
  }
  const char *sv = j->servers ? j->servers : getenv("PS_SERVERS");
  cl->servers = PyUnicode_FromString(sv && *sv ? sv : "127.0.0.1:7070");
  job_free(j);
  return cl->servers != NULL ? 0 : -1;
}

static PyObject *client_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
  (void)args;
  (void)kw;
  pspy_client *cl = (pspy_client *)type->tp_alloc(type, 0);
  if (cl == NULL) return NULL;
  cl->shapes = PyDict_New();
  if (cl->shapes == NULL) {
    Py_DECREF(cl);
    return NULL;
  }
  return (PyObject *)cl;
}

/* ---- closing --------------------------------------------------------------- */

static void do_close(pspy_client *cl) {
  if (cl->c == NULL) return;
  if (cl->fork_gen != pspy_fork_gen) {
    /* A forked child: the handle's thread lives in the parent. Forget it;
     * the buffers of its calls are this process's copies. */
    cl->c = NULL;
    pspy_calls_release_all(cl);
    return;
  }
  cl->closing = 1;
  /* Waits in other threads notice `closing` within a slice and leave. */
  while (cl->pins > 0) {
    Py_BEGIN_ALLOW_THREADS
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
    Py_END_ALLOW_THREADS
  }
  ps_client *c = cl->c;
  Py_BEGIN_ALLOW_THREADS
  ps_close(c);
  Py_END_ALLOW_THREADS
  cl->c = NULL;
  pspy_calls_release_all(cl);
}

static PyObject *client_close(pspy_client *cl, PyObject *unused) {
  (void)unused;
  do_close(cl);
  Py_RETURN_NONE;
}

static void client_dealloc(pspy_client *cl) {
  if (cl->weakrefs != NULL) PyObject_ClearWeakRefs((PyObject *)cl);
  do_close(cl);
  /* Futures hold the client, so only orphans can be left, all released. */
  while (cl->calls != NULL) pspy_call_free(cl->calls);
  Py_CLEAR(cl->shapes);
  Py_CLEAR(cl->servers);
  Py_CLEAR(cl->job);
  Py_TYPE(cl)->tp_free((PyObject *)cl);
}

static PyObject *client_enter_ctx(pspy_client *cl, PyObject *unused) {
  (void)unused;
  return Py_NewRef((PyObject *)cl);
}

static PyObject *client_exit_ctx(pspy_client *cl, PyObject *args) {
  (void)args;
  do_close(cl);
  Py_RETURN_FALSE;
}

/* ---- arguments --------------------------------------------------------------- */

/* Positional-or-keyword arguments names[0..n), the first nreq required;
 * out[i] is borrowed or NULL. The hot methods take METH_FASTCALL. */
static int parse(const char *fn, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                 const char *const *names, int n, int nreq, PyObject **out) {
  for (int i = 0; i < n; i++) out[i] = NULL;
  if (nargs > n) {
    PyErr_Format(PyExc_TypeError, "%s() takes at most %d arguments (%zd given)", fn, n, nargs);
    return -1;
  }
  for (Py_ssize_t i = 0; i < nargs; i++) out[i] = args[i];
  Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
  for (Py_ssize_t j = 0; j < nkw; j++) {
    const char *k = PyUnicode_AsUTF8(PyTuple_GET_ITEM(kwnames, j));
    if (k == NULL) return -1;
    int i = 0;
    while (i < n && strcmp(names[i], k) != 0) i++;
    if (i == n) {
      PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%s'", fn, k);
      return -1;
    }
    if (out[i] != NULL) {
      PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'", fn, k);
      return -1;
    }
    out[i] = args[nargs + j];
  }
  for (int i = 0; i < nreq; i++)
    if (out[i] == NULL) {
      PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", fn, names[i]);
      return -1;
    }
  if (out[0] != NULL && !PyUnicode_Check(out[0]) && strcmp(names[0], "name") == 0) {
    PyErr_Format(PyExc_TypeError, "%s(): the tensor name must be a str, not %s", fn,
                 Py_TYPE(out[0])->tp_name);
    return -1;
  }
  return 0;
}

/* ---- tensor calls ------------------------------------------------------------ */

/* The tensor's shape: cached by create() and lookup(), else looked up. */
static PyObject *shape_of(pspy_client *cl, PyObject *name) {
  PyObject *s = PyDict_GetItemWithError(cl->shapes, name);
  if (s != NULL || PyErr_Occurred()) return Py_XNewRef(s);
  pspy_call *k = pspy_call_new(cl, K_LOOKUP, name);
  PyObject *info = k ? pspy_call_run(k) : NULL;
  if (info == NULL) return NULL;
  Py_DECREF(info);
  s = PyDict_GetItemWithError(cl->shapes, name);
  if (s == NULL && !PyErr_Occurred()) PyErr_SetString(PyExc_RuntimeError, "psd: no shape");
  return Py_XNewRef(s);
}

static PyObject *new_output(pspy_client *cl, PyObject *name, PyObject *count) {
  PyObject *shape = count != NULL ? PyTuple_Pack(1, count) : shape_of(cl, name);
  if (shape == NULL) return NULL;
  PyObject *a = PyObject_CallFunctionObjArgs(pspy_h.empty, shape, NULL);
  Py_DECREF(shape);
  return a;
}

/* pull, push, push_pull, pull_range and their _async forms. */
static PyObject *tensor_call(pspy_client *cl, pspy_kind kind, int async, PyObject *name,
                             PyObject *grad, PyObject *out, PyObject *offset,
                             PyObject *count) {
  if (pspy_enter(cl) < 0) return NULL;
  PyObject *res = NULL;
  pspy_call *k = pspy_call_new(cl, kind, name);
  if (k == NULL) goto done;
  if (offset != NULL) {
    unsigned long long off = PyLong_AsUnsignedLongLong(offset);
    if (off == (unsigned long long)-1 && PyErr_Occurred()) goto drop;
    k->offset = off;
  }
  if (grad != NULL && pspy_call_input(k, grad, "grad") < 0) goto drop;
  if (kind != K_PUSH) {
    if (out == NULL || out == Py_None) {
      PyObject *fresh = new_output(cl, name, count);
      if (fresh == NULL) goto drop;
      int r = pspy_call_output(k, fresh, "out");
      Py_DECREF(fresh);
      if (r < 0) goto drop;
    } else if (pspy_call_output(k, out, "out") < 0) {
      goto drop;
    }
  }
  if (!async) {
    res = pspy_call_run(k);
  } else if (pspy_call_submit(k) == 0) {
    res = pspy_future_new(k);
  }
  goto done;
drop:
  pspy_call_free(k);
done:
  pspy_leave(cl);
  return res;
}

#define TENSOR_METHOD(fn, kind, async, nreq, ...)                                           \
  static PyObject *m_##fn(pspy_client *cl, PyObject *const *args, Py_ssize_t nargs,        \
                          PyObject *kwnames) {                                              \
    static const char *const names[] = {__VA_ARGS__};                                       \
    enum { N = sizeof(names) / sizeof(names[0]) };                                          \
    PyObject *a[N];                                                                          \
    if (parse(#fn, args, nargs, kwnames, names, N, nreq, a) < 0) return NULL;              \
    return tensor_dispatch(cl, kind, async, a);                                             \
  }

static PyObject *tensor_dispatch(pspy_client *cl, pspy_kind kind, int async, PyObject **a) {
  switch (kind) {
    case K_PULL: return tensor_call(cl, kind, async, a[0], NULL, a[1], NULL, NULL);
    case K_PUSH: return tensor_call(cl, kind, async, a[0], a[1], NULL, NULL, NULL);
    case K_PUSH_PULL: return tensor_call(cl, kind, async, a[0], a[1], a[2], NULL, NULL);
    case K_PULL_RANGE:
      if ((a[2] == NULL || a[2] == Py_None) == (a[3] == NULL || a[3] == Py_None)) {
        PyErr_SetString(PyExc_TypeError, "pull_range(): give either count or out");
        return NULL;
      }
      return tensor_call(cl, kind, async, a[0], NULL, a[3], a[1],
                         a[2] == Py_None ? NULL : a[2]);
    default: return NULL;
  }
}

TENSOR_METHOD(pull, K_PULL, 0, 1, "name", "out")
TENSOR_METHOD(pull_async, K_PULL, 1, 1, "name", "out")
TENSOR_METHOD(push, K_PUSH, 0, 2, "name", "grad")
TENSOR_METHOD(push_async, K_PUSH, 1, 2, "name", "grad")
TENSOR_METHOD(push_pull, K_PUSH_PULL, 0, 2, "name", "grad", "out")
TENSOR_METHOD(push_pull_async, K_PUSH_PULL, 1, 2, "name", "grad", "out")
TENSOR_METHOD(pull_range, K_PULL_RANGE, 0, 2, "name", "offset", "count", "out")
TENSOR_METHOD(pull_range_async, K_PULL_RANGE, 1, 2, "name", "offset", "count", "out")

/* set(name, values, offset=0, zero_state=False): the values are read from
 * the caller's buffer (kept exported until the set completes). */
static PyObject *set_impl(pspy_client *cl, PyObject *const *args, Py_ssize_t nargs,
                          PyObject *kwnames, int async) {
  static const char *const names[] = {"name", "values", "offset", "zero_state"};
  PyObject *a[4];
  if (parse(async ? "set_async" : "set", args, nargs, kwnames, names, 4, 2, a) < 0) return NULL;
  int zero = a[3] != NULL ? PyObject_IsTrue(a[3]) : 0;
  if (zero < 0 || pspy_enter(cl) < 0) return NULL;
  PyObject *res = NULL;
  pspy_call *k = pspy_call_new(cl, K_SET, a[0]);
  if (k == NULL) goto done;
  k->flags = zero ? PS_SET_ZERO_STATE : 0;
  if (a[2] != NULL && a[2] != Py_None) {
    unsigned long long off = PyLong_AsUnsignedLongLong(a[2]);
    if (off == (unsigned long long)-1 && PyErr_Occurred()) goto drop;
    k->offset = off;
  }
  if (pspy_call_input(k, a[1], "values") < 0) goto drop;
  if (!async) res = pspy_call_run(k);
  else if (pspy_call_submit(k) == 0) res = pspy_future_new(k);
  goto done;
drop:
  pspy_call_free(k);
done:
  pspy_leave(cl);
  return res;
}

static PyObject *m_set(pspy_client *cl, PyObject *const *args, Py_ssize_t nargs,
                       PyObject *kwnames) {
  return set_impl(cl, args, nargs, kwnames, 0);
}
static PyObject *m_set_async(pspy_client *cl, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames) {
  return set_impl(cl, args, nargs, kwnames, 1);
}

/* ---- the other calls --------------------------------------------------------- */

static PyObject *start(pspy_call *k, int async) {
  if (!async) return pspy_call_run(k);
  return pspy_call_submit(k) == 0 ? pspy_future_new(k) : NULL;
}

static PyObject *plain_call(pspy_client *cl, pspy_kind kind, int async, PyObject *name,
                            int shard) {
  if (pspy_enter(cl) < 0) return NULL;
  pspy_call *k = pspy_call_new(cl, kind, name);
  PyObject *res = NULL;
  if (k != NULL) {
    k->shard = shard;
    res = start(k, async);
  }
  pspy_leave(cl);
  return res;
}

static int shape_arg(PyObject *o, pspy_call *k) {
  if (PyLong_Check(o)) {
    o = PyTuple_Pack(1, o);
  } else {
    o = PySequence_Tuple(o);
  }
  if (o == NULL) return -1;
  Py_ssize_t n = PyTuple_GET_SIZE(o);
  if (n < 1 || n > 16) {
    Py_DECREF(o);
    pspy_raise(PS_EINVAL, "create: a shape has 1 to 16 dimensions");
    return -1;
  }
  for (Py_ssize_t i = 0; i < n; i++) {
    long long d = PyLong_AsLongLong(PyTuple_GET_ITEM(o, i));
    if (d == -1 && PyErr_Occurred()) {
      Py_DECREF(o);
      return -1;
    }
    if (d < 1) {
      Py_DECREF(o);
      pspy_raise(PS_EINVAL, "create: every dimension must be at least 1");
      return -1;
    }
    k->shape[i] = (uint64_t)d;
  }
  k->ndim = (int)n;
  Py_DECREF(o);
  return 0;
}

static PyObject *create_impl(pspy_client *cl, PyObject *args, PyObject *kw, int async) {
  PyObject *name, *shape;
  if (!PyArg_ParseTuple(args, "UO:create", &name, &shape)) return NULL;
  if (pspy_enter(cl) < 0) return NULL;
  PyObject *res = NULL;
  pspy_call *k = pspy_call_new(cl, K_CREATE, name);
  if (k == NULL) goto done;
  if (shape_arg(shape, k) < 0 || pspy_spec_from_kwargs(kw, &k->spec) < 0) {
    pspy_call_free(k);
    goto done;
  }
  res = start(k, async);
done:
  pspy_leave(cl);
  return res;
}

static PyObject *m_create(pspy_client *cl, PyObject *args, PyObject *kw) {
  return create_impl(cl, args, kw, 0);
}
static PyObject *m_create_async(pspy_client *cl, PyObject *args, PyObject *kw) {
  return create_impl(cl, args, kw, 1);
}

static PyObject *lookup_impl(pspy_client *cl, PyObject *name, int async) {
  if (!PyUnicode_Check(name)) {
    PyErr_SetString(PyExc_TypeError, "lookup(): the tensor name must be a str");
    return NULL;
  }
  return plain_call(cl, K_LOOKUP, async, name, 0);
}
static PyObject *m_lookup(pspy_client *cl, PyObject *name) { return lookup_impl(cl, name, 0); }
static PyObject *m_lookup_async(pspy_client *cl, PyObject *name) {
  return lookup_impl(cl, name, 1);
}

static PyObject *stats_impl(pspy_client *cl, PyObject *args, int async) {
  int shard = 0;
  if (!PyArg_ParseTuple(args, "|i:stats", &shard)) return NULL;
  return plain_call(cl, K_STATS, async, NULL, shard);
}
static PyObject *m_stats(pspy_client *cl, PyObject *args) { return stats_impl(cl, args, 0); }
static PyObject *m_stats_async(pspy_client *cl, PyObject *args) {
  return stats_impl(cl, args, 1);
}

#define PLAIN_METHOD(fn, kind, async)                                   \
  static PyObject *m_##fn(pspy_client *cl, PyObject *unused) {         \
    (void)unused;                                                       \
    return plain_call(cl, kind, async, NULL, 0);                        \
  }
PLAIN_METHOD(list, K_LIST, 0)
PLAIN_METHOD(list_async, K_LIST, 1)
PLAIN_METHOD(ping, K_PING, 0)
PLAIN_METHOD(ping_async, K_PING, 1)
PLAIN_METHOD(checkpoint, K_CHECKPOINT, 0)
PLAIN_METHOD(checkpoint_async, K_CHECKPOINT, 1)
PLAIN_METHOD(clock, K_CLOCK, 0)
PLAIN_METHOD(clock_async, K_CLOCK, 1)
PLAIN_METHOD(barrier, K_BARRIER, 0)
PLAIN_METHOD(barrier_async, K_BARRIER, 1)

static PyObject *m_metrics(pspy_client *cl, PyObject *unused) {
  (void)unused;
  if (pspy_enter(cl) < 0) return NULL;
  ps_client_metrics m;
  ps_metrics(cl->c, &m);
  pspy_leave(cl);
  PyObject *calls = PyDict_New(), *d = NULL;
  for (int i = 0; calls != NULL && i < PS_CALL_KINDS; i++) {
    PyObject *e = Py_BuildValue("{sKsKsKsK}", "calls", (unsigned long long)m.calls[i].calls,
                                "errors", (unsigned long long)m.calls[i].errors,
                                "latency_sum_ns", (unsigned long long)m.calls[i].latency_sum_ns,
                                "latency_max_ns", (unsigned long long)m.calls[i].latency_max_ns);
    if (e == NULL || PyDict_SetItemString(calls, ps_call_name(i), e) < 0) Py_CLEAR(calls);
    Py_XDECREF(e);
  }
  if (calls != NULL)
    d = Py_BuildValue("{sNsKsKsKsKsKsKsKsKsK}", "calls", calls, "pull_requests",
                      (unsigned long long)m.pull_requests, "push_requests",
                      (unsigned long long)m.push_requests, "push_pull_requests",
                      (unsigned long long)m.push_pull_requests, "requests_sent",
                      (unsigned long long)m.requests_sent, "bytes_sent",
                      (unsigned long long)m.bytes_sent, "bytes_received",
                      (unsigned long long)m.bytes_received, "lane_bytes",
                      (unsigned long long)m.lane_bytes, "reconnects",
                      (unsigned long long)m.reconnects, "resends",
                      (unsigned long long)m.resends);
  return d;
}

/* ---- jobs (admin calls: quick, so blocking, the GIL released) ------------- */

static PyObject *m_jobs(pspy_client *cl, PyObject *unused) {
  (void)unused;
  if (pspy_enter(cl) < 0) return NULL;
  ps_job_info *jobs = NULL;
  size_t n = 0;
  int rc;
  char msg[512] = "";
  Py_BEGIN_ALLOW_THREADS
  rc = ps_jobs(cl->c, &jobs, &n);
  if (rc != 0) snprintf(msg, sizeof(msg), "%s", ps_errmsg(cl->c));
  Py_END_ALLOW_THREADS
  pspy_leave(cl);
  if (rc != 0) return pspy_raise(rc, msg);
  PyObject *l = PyList_New((Py_ssize_t)n);
  for (size_t i = 0; l != NULL && i < n; i++) {
    const ps_job_info *j = &jobs[i];
    PyObject *d = Py_BuildValue(
        "{sssKsOsIsisIsKsKsKsKsKsKsi}", "name", j->name, "incarnation",
        (unsigned long long)j->incarnation, "ended", j->ended ? Py_True : Py_False,
        "num_workers", j->num_workers, "staleness", j->staleness, "live", j->live,
        "clock_min", (unsigned long long)j->clock_min, "clock_max",
        (unsigned long long)j->clock_max, "tensors", (unsigned long long)j->tensors, "blocks",
        (unsigned long long)j->blocks, "bytes", (unsigned long long)j->bytes,
        "rounds_pending", (unsigned long long)j->rounds_pending, "shards", j->shards);
    if (d == NULL) Py_CLEAR(l);
    else PyList_SET_ITEM(l, (Py_ssize_t)i, d);
  }
  ps_jobs_free(jobs, n);
  return l;
}

static PyObject *job_call(pspy_client *cl, PyObject *name, int drop) {
  const char *job = PyUnicode_Check(name) ? PyUnicode_AsUTF8(name) : NULL;
  if (job == NULL) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "the job name must be a str");
    return NULL;
  }
  if (pspy_enter(cl) < 0) return NULL;
  int rc;
  char msg[512] = "";
  Py_BEGIN_ALLOW_THREADS
  rc = drop ? ps_job_drop(cl->c, job) : ps_job_end(cl->c, job);
  if (rc != 0) snprintf(msg, sizeof(msg), "%s", ps_errmsg(cl->c));
  Py_END_ALLOW_THREADS
  pspy_leave(cl);
  if (rc != 0) return pspy_raise(rc, msg);
  Py_RETURN_NONE;
}

/* ---- a tensor's or table's life (admin calls, quick: blocking, the GIL released) */

typedef enum { LIFE_DELETE, LIFE_RESET, LIFE_TUNE, LIFE_DELETE_TABLE, LIFE_RESET_TABLE } life_kind;

static PyObject *life_call(pspy_client *cl, life_kind kind, const char *name,
                           const ps_optim_spec *o, uint64_t bits) {
  if (pspy_enter(cl) < 0) return NULL;
  int rc;
  char msg[512] = "";
  Py_BEGIN_ALLOW_THREADS
  rc = kind == LIFE_DELETE         ? ps_delete(cl->c, name)
       : kind == LIFE_RESET        ? ps_reset(cl->c, name)
       : kind == LIFE_DELETE_TABLE ? ps_delete_table(cl->c, name)
       : kind == LIFE_RESET_TABLE  ? ps_reset_table(cl->c, name)
                                   : ps_set_optim(cl->c, name, o, bits);
  if (rc != 0) snprintf(msg, sizeof(msg), "%s", ps_errmsg(cl->c));
  Py_END_ALLOW_THREADS
  pspy_leave(cl);
  if (rc != 0) return pspy_raise(rc, msg);
  Py_RETURN_NONE;
}

static const char *name_arg(PyObject *name, const char *fn) {
  const char *s = PyUnicode_Check(name) ? PyUnicode_AsUTF8(name) : NULL;
  if (s == NULL && !PyErr_Occurred())
    PyErr_Format(PyExc_TypeError, "%s(): the name must be a str", fn);
  return s;
}

static PyObject *m_delete(pspy_client *cl, PyObject *name) {
  const char *s = name_arg(name, "delete");
  PyObject *r = s ? life_call(cl, LIFE_DELETE, s, NULL, 0) : NULL;
  if (r != NULL && PyDict_DelItem(cl->shapes, name) < 0) PyErr_Clear();
  return r;
}

static PyObject *m_reset(pspy_client *cl, PyObject *name) {
  const char *s = name_arg(name, "reset");
  return s ? life_call(cl, LIFE_RESET, s, NULL, 0) : NULL;
}

static PyObject *m_delete_table(pspy_client *cl, PyObject *name) {
  const char *s = name_arg(name, "delete_table");
  return s ? life_call(cl, LIFE_DELETE_TABLE, s, NULL, 0) : NULL;
}

static PyObject *m_reset_table(pspy_client *cl, PyObject *name) {
  const char *s = name_arg(name, "reset_table");
  return s ? life_call(cl, LIFE_RESET_TABLE, s, NULL, 0) : NULL;
}

static PyObject *m_tune(pspy_client *cl, PyObject *args, PyObject *kw) {
  PyObject *name = Py_None;
  if (!PyArg_ParseTuple(args, "|O:tune", &name)) return NULL;
  const char *s = name == Py_None ? NULL : name_arg(name, "tune");
  if (s == NULL && name != Py_None) return NULL;
  ps_tensor_spec spec;
  uint64_t bits;
  if (pspy_tune_from_kwargs(kw, &spec, &bits) < 0) return NULL;
  return life_call(cl, LIFE_TUNE, s, &spec.optim, bits);
}

static PyObject *m_job_end(pspy_client *cl, PyObject *name) { return job_call(cl, name, 0); }
static PyObject *m_job_drop(pspy_client *cl, PyObject *name) { return job_call(cl, name, 1); }

/* ---- the type ------------------------------------------------------------------ */

static PyObject *g_closed(pspy_client *cl, void *u) {
  (void)u;
  return PyBool_FromLong(cl->c == NULL || cl->closing);
}
static PyObject *g_num_shards(pspy_client *cl, void *u) {
  (void)u;
  if (cl->c == NULL) return pspy_raise(PS_ECLOSED, "the client is closed");
  return PyLong_FromLong(ps_num_shards(cl->c));
}
static PyObject *g_rank(pspy_client *cl, void *u) {
  (void)u;
  return PyLong_FromLong(cl->rank);
}
static PyObject *g_num_workers(pspy_client *cl, void *u) {
  (void)u;
  return PyLong_FromLong(cl->num_workers);
}
static PyObject *g_staleness(pspy_client *cl, void *u) {
  (void)u;
  return PyLong_FromLong(cl->staleness);
}
static PyObject *g_servers(pspy_client *cl, void *u) {
  (void)u;
  return Py_XNewRef(cl->servers ? cl->servers : Py_None);
}
static PyObject *g_job(pspy_client *cl, void *u) {
  (void)u;
  return Py_XNewRef(cl->job ? cl->job : Py_None);
}
static PyObject *g_waiting(pspy_client *cl, void *u) {
  (void)u;
  return PyLong_FromLong(cl->waiting);
}
static PyObject *g_convert(pspy_client *cl, void *u) {
  (void)u;
  return PyBool_FromLong(cl->convert);
}

static PyObject *client_repr(pspy_client *cl) {
  if (cl->c == NULL) return PyUnicode_FromString("<psd.Client closed>");
  return PyUnicode_FromFormat("<psd.Client servers='%U' job='%U' rank=%d num_workers=%d "
                              "staleness=%d>", cl->servers, cl->job, cl->rank, cl->num_workers,
                              cl->staleness);
}

#define FAST (METH_FASTCALL | METH_KEYWORDS)
#define M(fn, flags, doc) {#fn, (PyCFunction)(void (*)(void))m_##fn, flags, doc}

static PyMethodDef client_methods[] = {
    M(create, METH_VARARGS | METH_KEYWORDS,
      "create(name, shape, *, init='he_normal', optimizer='adam', lr=None, seed=None, "
      "schedule=None, **spec)\n--\n\nCreate tensor `name` on every shard (idempotent: the "
      "same spec again changes nothing; another spec raises psd.ExistsError saying what "
      "differs). Keywords name the fields of the spec (docs/math.md): seed, sigma, limit, "
      "value, fan_in, fan_out, fan_in_includes_bias, allow_symmetric, lr, beta1, beta2, eps, "
      "weight_decay, heavy_ball, nesterov, eps_inside_sqrt, clip_norm, schedule, gamma, "
      "step_size, decay, total_steps, lr_min, warmup, block_size; None keeps the default."),
    M(create_async, METH_VARARGS | METH_KEYWORDS, "create_async(name, shape, **spec) -> Future"),
    M(pull, FAST,
      "pull(name, out=None)\n--\n\nRead the whole tensor into `out` (C-contiguous float32, "
      "any shape of the same size) or into a new numpy array of the tensor's shape; return "
      "it."),
    M(pull_async, FAST, "pull_async(name, out=None) -> Future"),
    M(push, FAST,
      "push(name, grad)\n--\n\nPush a gradient (C-contiguous float32 of the tensor's size). "
      "In sync mode it returns once the round is applied."),
    M(push_async, FAST, "push_async(name, grad) -> Future"),
    M(push_pull, FAST,
      "push_pull(name, grad, out=None)\n--\n\nPush a gradient and receive the updated values "
      "in the same round trip, into `out` (may be `grad` itself) or a new array; return it."),
    M(push_pull_async, FAST, "push_pull_async(name, grad, out=None) -> Future"),
    M(pull_range, FAST,
      "pull_range(name, offset, count=None, out=None)\n--\n\nRead elements [offset, "
      "offset+n) of the flattened tensor (n = count, or the size of out)."),
    M(pull_range_async, FAST, "pull_range_async(name, offset, count=None, out=None) -> Future"),
    M(lookup, METH_O, "lookup(name)\n--\n\nThe tensor's psd.TensorInfo."),
    M(lookup_async, METH_O, "lookup_async(name) -> Future"),
    M(list, METH_NOARGS, "list()\n--\n\nEvery tensor, as a list of psd.TensorInfo."),
    M(list_async, METH_NOARGS, "list_async() -> Future"),
    M(stats, METH_VARARGS, "stats(shard=0)\n--\n\nStatistics of one shard, as a dict."),
    M(stats_async, METH_VARARGS, "stats_async(shard=0) -> Future"),
    M(ping, METH_NOARGS, "ping()\n--\n\nCheck that every shard answers."),
    M(ping_async, METH_NOARGS, "ping_async() -> Future"),
    M(checkpoint, METH_NOARGS,
      "checkpoint()\n--\n\nAsk every shard to write a checkpoint now (needs psd --data-dir)."),
    M(checkpoint_async, METH_NOARGS, "checkpoint_async() -> Future"),
    M(clock, METH_NOARGS,
      "clock()\n--\n\nEnd this worker's iteration: advance its clock, tell every shard, "
      "return the new clock."),
    M(clock_async, METH_NOARGS, "clock_async() -> Future"),
    M(barrier, METH_NOARGS,
      "barrier()\n--\n\nWait until every live worker of the job has called barrier() as "
      "often."),
    M(barrier_async, METH_NOARGS, "barrier_async() -> Future"),
    M(metrics, METH_NOARGS,
      "metrics()\n--\n\nThe library's counters for this client (ps_metrics), as a dict."),
    M(set, FAST,
      "set(name, values, offset=0, zero_state=False)\n--\n\nWrite `values` (float32) into "
      "elements [offset, offset+len) of the tensor: pretrained weights, or rank 0's initial "
      "values before the others pull. zero_state=True also zeroes the optimizer state of those "
      "elements. In sync mode it waits for a round in progress on a block (psd.BusyError if "
      "that round waits for this worker's own push)."),
    M(set_async, FAST, "set_async(name, values, offset=0, zero_state=False) -> Future"),
    M(delete, METH_O, "delete(name)\n--\n\nDelete the tensor on every shard (admin)."),
    M(reset, METH_O,
      "reset(name)\n--\n\nReinitialize the tensor from its spec: values, optimizer state and "
      "step counts (admin)."),
    M(delete_table, METH_O,
      "delete_table(name)\n--\n\nDelete the sparse table on every shard: its rows are freed "
      "and the name is free again. Calls waiting on it (a sync push of its rows, an SSP pull) "
      "raise psd.NotFoundError; psd.BadRequestError if the name is a tensor's (admin)."),
    M(reset_table, METH_O,
      "reset_table(name)\n--\n\nEmpty the sparse table on every shard: every row goes (made "
      "again from the init rule when touched), its step, evictions and LFU counts go back to "
      "0, the spec stays (admin)."),
    M(tune, METH_VARARGS | METH_KEYWORDS,
      "tune(name=None, **optimizer_fields)\n--\n\nChange optimizer fields (lr, beta1, "
      "schedule, warmup, ...) of one tensor, or of every tensor of the job when name is None, "
      "from their next update; validated on every tensor before any changes."),
    M(jobs, METH_NOARGS,
      "jobs()\n--\n\nEvery job the shards serve (ps_jobs), as a list of dicts."),
    M(job_end, METH_O,
      "job_end(job)\n--\n\nEnd the job's current run on every shard: its workers' held "
      "calls fail with psd.JobEndedError (admin)."),
    M(job_drop, METH_O,
      "job_drop(job)\n--\n\nDelete the job's state on every shard: tensors, sessions, "
      "exactly-once records (admin)."),
    {"close", (PyCFunction)client_close, METH_NOARGS,
     "close()\n--\n\nEnd the session on every shard and free the handle. Calls in flight "
     "fail with psd.ClosedError. Idempotent."},
    {"__enter__", (PyCFunction)client_enter_ctx, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)client_exit_ctx, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef client_getset[] = {
    {"closed", (getter)g_closed, NULL, "True once close() began.", NULL},
    {"num_shards", (getter)g_num_shards, NULL, "The number of shards in the server list.", NULL},
    {"rank", (getter)g_rank, NULL, "This worker's rank (-1 for a tool).", NULL},
    {"num_workers", (getter)g_num_workers, NULL, "The job's worker count.", NULL},
    {"staleness", (getter)g_staleness, NULL, "-1 async, 0 sync, s > 0 SSP.", NULL},
    {"servers", (getter)g_servers, NULL, "The server list.", NULL},
    {"job", (getter)g_job, NULL, "The job this client acts in.", NULL},
    {"waiting", (getter)g_waiting, NULL,
     "How many threads are waiting for a call of this client right now (diagnostics; the "
     "tests use it to interrupt a call known to be blocked).", NULL},
    {"convert", (getter)g_convert, NULL, "Whether other dtypes and layouts are converted.",
     NULL},
    {NULL, NULL, NULL, NULL, NULL}};

PyTypeObject pspy_client_type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "psd.Client",
    .tp_basicsize = sizeof(pspy_client),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc =
        "Client(servers=None, *, rank=None, num_workers=None, staleness=None, job=None, "
        "timeout=None, convert=False, identity=None, token_file=None, role=None, lane_mb=None, "
        "connect_timeout=None)\n--\n\n"
        "A connection to every shard of a psd job (one libpsd handle, thread-safe).\n\n"
        "None takes the default, from the environment as in C: PS_SERVERS, PS_WORKER_RANK, "
        "PS_NUM_WORKERS, PS_STALENESS, PS_TIMEOUT_MS, PS_LANE_MB, PS_TOKEN_FILE, PS_ROLE, PS_JOB. "
        "timeout and connect_timeout are in seconds. convert=True converts arrays of other "
        "dtypes or layouts once per call instead of raising TypeError. A context manager; "
        "close() ends it.",
    .tp_new = client_new,
    .tp_init = (initproc)client_init,
    .tp_dealloc = (destructor)client_dealloc,
    .tp_repr = (reprfunc)client_repr,
    .tp_methods = client_methods,
    .tp_getset = client_getset,
    .tp_weaklistoffset = offsetof(pspy_client, weakrefs),
};
