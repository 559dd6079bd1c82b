/*
 * future.c -- psd.Future, what every *_async method returns: one call in
 * flight. wait() returns its result (or raises its error) once, and again
 * on every later wait(); done() says whether it has completed without
 * waiting. A future dropped before completion leaves its call to the
 * client as an orphan: its buffers stay exported until the reply comes.
 */
#include <time.h>

#include "psdpy.h"

PyObject *pspy_future_new(pspy_call *k) {
  pspy_future *f = PyObject_GC_New(pspy_future, &pspy_future_type);
  if (f == NULL) {
    pspy_call_orphan(k);
    return NULL;
  }
  f->client = (pspy_client *)Py_NewRef((PyObject *)k->client);
  f->call = k;
  f->value = f->error = NULL;
  f->version = 0;
  f->busy = 0;
  PyObject_GC_Track(f);
  return (PyObject *)f;
}

/* The call is collected: keep its result or its exception. */
static void settle(pspy_future *f) {
  pspy_call *k = f->call;
  f->version = k->version;
  f->call = NULL;
  PyObject *v = pspy_call_finish(k);
  if (v != NULL) {
    f->value = v;
    return;
  }
  PyObject *t, *e, *tb;
  PyErr_Fetch(&t, &e, &tb);
  PyErr_NormalizeException(&t, &e, &tb);
  if (tb != NULL) PyException_SetTraceback(e, tb);
  f->error = e;
  Py_XDECREF(t);
  Py_XDECREF(tb);
}

static PyObject *deliver(pspy_future *f) {
  if (f->error != NULL) {
    PyErr_SetObject((PyObject *)Py_TYPE(f->error), f->error);
    return NULL;
  }
  return Py_NewRef(f->value);
}

/* 1 settled, 0 not within timeout_s, -1 exception (signal, closed). */
static int advance(pspy_future *f, double timeout_s) {
  if (f->call == NULL) return 1;
  /* Another thread is waiting for it: let that one collect it. */
  while (f->busy) {
    Py_BEGIN_ALLOW_THREADS
    struct timespec ts = {0, 2000000};
    nanosleep(&ts, NULL);
    Py_END_ALLOW_THREADS
    if (PyErr_CheckSignals() < 0) return -1;
    if (f->call == NULL) return 1;
    if (timeout_s == 0) return 0;
  }
  if (!f->call->collected) {
    pspy_client *cl = f->client;
    if (pspy_enter(cl) < 0) {
      /* Closed: close() marked the call collected (PS_ECLOSED) unless it
       * is being closed right now. */
      if (!f->call->collected) return -1;
      PyErr_Clear();
    } else {
      f->busy = 1;
      int r = pspy_call_wait(f->call, timeout_s);
      f->busy = 0;
      pspy_leave(cl);
      if (r <= 0) return r;
    }
  }
  settle(f);
  return 1;
}

static double timeout_arg(PyObject *o, int *err) {
  *err = 0;
  if (o == NULL || o == Py_None) return -1;
  double t = PyFloat_AsDouble(o);
  if (t == -1 && PyErr_Occurred()) {
    *err = 1;
    return 0;
  }
  if (t < 0 || t != t) {
    PyErr_SetString(PyExc_ValueError, "timeout must be None or a number of seconds >= 0");
    *err = 1;
  }
  return t;
}

static PyObject *fut_wait(pspy_future *f, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"timeout", NULL};
  PyObject *to = NULL;
  int err;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "|O:wait", kwlist, &to)) return NULL;
  double timeout = timeout_arg(to, &err);
  if (err) return NULL;
  int r = advance(f, timeout);
  if (r < 0) return NULL;
  if (r == 0) {
    PyErr_Format(PyExc_TimeoutError, "the call is not done after %g s (it is still in flight; "
                 "wait again)", timeout);
    return NULL;
  }
  return deliver(f);
}

static PyObject *fut_done(pspy_future *f, PyObject *unused) {
  (void)unused;
  int r = advance(f, 0);
  if (r < 0) return NULL;
  return PyBool_FromLong(r);
}

static PyObject *fut_version(pspy_future *f, void *unused) {
  (void)unused;
  if (f->call != NULL) Py_RETURN_NONE;
  return PyLong_FromUnsignedLongLong(f->version);
}

static PyObject *fut_repr(pspy_future *f) {
  const char *state = f->call != NULL ? "pending" : f->error != NULL ? "failed" : "done";
  return PyUnicode_FromFormat("<psd.Future %s>", state);
}

static int fut_traverse(pspy_future *f, visitproc visit, void *arg) {
  Py_VISIT(f->value);
  Py_VISIT(f->error);
  Py_VISIT((PyObject *)f->client);
  return 0;
}

/* The client is not cleared: it owns the call's memory and must outlive
 * the future. */
static int fut_clear(pspy_future *f) {
  Py_CLEAR(f->value);
  Py_CLEAR(f->error);
  return 0;
}

static void fut_dealloc(pspy_future *f) {
  PyObject_GC_UnTrack(f);
  if (f->call != NULL) {
    if (f->call->collected) pspy_call_free(f->call);
    else pspy_call_orphan(f->call);
    f->call = NULL;
  }
  fut_clear(f);
  Py_CLEAR(f->client);
  PyObject_GC_Del(f);
}

static PyMethodDef fut_methods[] = {
    {"wait", (PyCFunction)(void (*)(void))fut_wait, METH_VARARGS | METH_KEYWORDS,
     "wait(timeout=None)\n--\n\n"
     "Wait for the call and return its result (the output array, the tensor info, ...), or "
     "raise its psd.Error. The GIL is released while waiting and Ctrl-C interrupts it "
     "(KeyboardInterrupt; the call stays in flight and can be waited for again). With a "
     "timeout in seconds, raises the built-in TimeoutError if the call is not done by then "
     "(also still in flight)."},
    {"result", (PyCFunction)(void (*)(void))fut_wait, METH_VARARGS | METH_KEYWORDS,
     "result(timeout=None)\n--\n\nThe same as wait()."},
    {"done", (PyCFunction)fut_done, METH_NOARGS,
     "done()\n--\n\nTrue once the call has completed (successfully or not); never waits."},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef fut_getset[] = {
    {"version", (getter)fut_version, NULL,
     "The smallest version of the blocks the call touched (the number of updates applied), "
     "once done; None before.", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

PyTypeObject pspy_future_type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "psd.Future",
    .tp_basicsize = sizeof(pspy_future),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A call in flight, returned by the *_async methods of psd.Client.\n\n"
              "The buffers given to the call belong to psd until it completes: psd keeps them "
              "alive (even if the future is dropped) and may write into an output until then.",
    .tp_dealloc = (destructor)fut_dealloc,
    .tp_traverse = (traverseproc)fut_traverse,
    .tp_clear = (inquiry)fut_clear,
    .tp_repr = (reprfunc)fut_repr,
    .tp_methods = fut_methods,
    .tp_getset = fut_getset,
};
