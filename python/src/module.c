/*
 * module.c -- psd._core: the module object, the Python helpers that
 * psd/__init__.py registers (error classes, TensorInfo, numpy), and raising
 * a PS_E* code as its psd.Error subclass.
 *
 * numpy is reached through registered Python callables, not its C API: the
 * extension needs no numpy headers, and every array crosses through the
 * buffer protocol, which torch's numpy() views also speak.
 */
#include <pthread.h>

#include "psdpy.h"

pspy_helpers pspy_h;

static void on_fork_child(void) { pspy_fork_gen++; }

PyObject *pspy_raise(int code, const char *msg) {
  PyObject *cls = NULL, *key = PyLong_FromLong(code);
  if (key != NULL && pspy_h.errors != NULL) cls = PyDict_GetItemWithError(pspy_h.errors, key);
  Py_XDECREF(key);
  if (PyErr_Occurred()) return NULL;
  if (cls == NULL) cls = pspy_h.error_base ? pspy_h.error_base : PyExc_RuntimeError;
  if (msg == NULL || *msg == '\0') msg = ps_strerror(code);
  PyObject *exc = PyObject_CallFunction(cls, "si", msg, code);
  if (exc != NULL) {
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    Py_DECREF(exc);
  }
  return NULL;
}

PyObject *pspy_raise_c(ps_client *c, int code) {
  return pspy_raise(code, c != NULL ? ps_errmsg(c) : "");
}

int pspy_is_tensor(PyObject *obj) {
  if (pspy_h.torch_tensor == NULL) {
    /* Only once torch is imported can an object be one of its tensors. */
    PyObject *mods = PyImport_GetModuleDict();
    PyObject *torch = mods ? PyDict_GetItemString(mods, "torch") : NULL;
    if (torch == NULL) return 0;
    PyObject *t = PyObject_GetAttrString(torch, "Tensor");
    if (t == NULL || !PyType_Check(t)) {
      Py_XDECREF(t);
      PyErr_Clear();
      return 0;
    }
    pspy_h.torch_tensor = t;
  }
  return PyObject_TypeCheck(obj, (PyTypeObject *)pspy_h.torch_tensor);
}

static int set_helper(PyObject **slot, PyObject *v, int need_callable, const char *name) {
  if (need_callable && !PyCallable_Check(v)) {
    PyErr_Format(PyExc_TypeError, "_setup: %s must be callable", name);
    return -1;
  }
  Py_INCREF(v);
  Py_XSETREF(*slot, v);
  return 0;
}

static PyObject *mod_setup(PyObject *mod, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"errors", "error_base", "tensor_info", "empty", "to_float32",
                           "staging", "describe", "json_loads", NULL};
  PyObject *errors, *base, *info, *empty, *to32, *staging, *describe, *loads;
  (void)mod;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O!OOOOOOO:_setup", kwlist, &PyDict_Type, &errors,
                                   &base, &info, &empty, &to32, &staging, &describe, &loads))
    return NULL;
  if (set_helper(&pspy_h.errors, errors, 0, "errors") || set_helper(&pspy_h.error_base, base, 1, "error_base") ||
      set_helper(&pspy_h.tensor_info, info, 1, "tensor_info") ||
      set_helper(&pspy_h.empty, empty, 1, "empty") ||
      set_helper(&pspy_h.to_float32, to32, 1, "to_float32") ||
      set_helper(&pspy_h.staging, staging, 1, "staging") ||
      set_helper(&pspy_h.describe, describe, 1, "describe") ||
      set_helper(&pspy_h.json_loads, loads, 1, "json_loads"))
    return NULL;
  Py_RETURN_NONE;
}

static PyObject *mod_strerror(PyObject *mod, PyObject *arg) {
  (void)mod;
  int code = PyLong_AsLong(arg);
  if (code == -1 && PyErr_Occurred()) return NULL;
  return PyUnicode_FromString(ps_strerror(code));
}

static PyMethodDef mod_methods[] = {
    {"_setup", (PyCFunction)(void (*)(void))mod_setup, METH_VARARGS | METH_KEYWORDS,
     "Register the package's Python helpers (psd/__init__.py calls it once)."},
    {"strerror", mod_strerror, METH_O,
     "strerror(code) -> str: the name of a PS_E* code, e.g. 'PS_ENOTFOUND: no such tensor'."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef mod_def = {
    PyModuleDef_HEAD_INIT, "psd._core",
    "The C core of the psd package over libpsd. Use the psd package, not this module.", -1,
    mod_methods, NULL, NULL, NULL, NULL};

/* The PS_E* codes, exported as integers (psd/_errors.py names a class for
 * each, and a test checks them against psd_types.h). */
static const struct {
  const char *name;
  int code;
} codes[] = {
    {"PS_EBADFRAME", PS_EBADFRAME},   {"PS_ETOOLARGE", PS_ETOOLARGE},
    {"PS_EVERSION", PS_EVERSION},     {"PS_EUNKNOWN", PS_EUNKNOWN},
    {"PS_ENOTFOUND", PS_ENOTFOUND},   {"PS_EEXISTS", PS_EEXISTS},
    {"PS_ESHAPE", PS_ESHAPE},         {"PS_ESPEC", PS_ESPEC},
    {"PS_EGRADIENT", PS_EGRADIENT},   {"PS_EWRONGSHARD", PS_EWRONGSHARD},
    {"PS_ENOTREADY", PS_ENOTREADY},   {"PS_EBUSY", PS_EBUSY},
    {"PS_ESHUTDOWN", PS_ESHUTDOWN},   {"PS_EIO", PS_EIO},
    {"PS_EINTERNAL", PS_EINTERNAL},   {"PS_ERESOURCE", PS_ERESOURCE},
    {"PS_EBADREQ", PS_EBADREQ},       {"PS_EAUTH", PS_EAUTH},
    {"PS_EPERM", PS_EPERM},           {"PS_EJOBENDED", PS_EJOBENDED},
    {"PS_EINVAL", PS_EINVAL},
    {"PS_ENOMEM", PS_ENOMEM},         {"PS_ECONNECT", PS_ECONNECT},
    {"PS_ETIMEDOUT", PS_ETIMEDOUT},   {"PS_ECLOSED", PS_ECLOSED},
    {"PS_ETICKET", PS_ETICKET},
};

PyMODINIT_FUNC PyInit__core(void) {
  static int atfork_done;
  if (!atfork_done && pthread_atfork(NULL, NULL, on_fork_child) == 0) atfork_done = 1;
  if (PyType_Ready(&pspy_client_type) < 0 || PyType_Ready(&pspy_future_type) < 0) return NULL;
  PyObject *m = PyModule_Create(&mod_def);
  if (m == NULL) return NULL;
  PyObject *codemap = PyDict_New();
  if (codemap == NULL) goto fail;
  for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
    PyObject *v = PyLong_FromLong(codes[i].code);
    if (v == NULL || PyDict_SetItemString(codemap, codes[i].name, v) < 0) {
      Py_XDECREF(v);
      Py_DECREF(codemap);
      goto fail;
    }
    Py_DECREF(v);
  }
  if (PyModule_AddObject(m, "codes", codemap) < 0) {
    Py_DECREF(codemap);
    goto fail;
  }
  Py_INCREF(&pspy_client_type);
  if (PyModule_AddObject(m, "Client", (PyObject *)&pspy_client_type) < 0) {
    Py_DECREF(&pspy_client_type);
    goto fail;
  }
  Py_INCREF(&pspy_future_type);
  if (PyModule_AddObject(m, "Future", (PyObject *)&pspy_future_type) < 0) {
    Py_DECREF(&pspy_future_type);
    goto fail;
  }
  if (PyModule_AddStringConstant(m, "LIBPSD_VERSION", PS_VERSION_STRING) < 0) goto fail;
  return m;
fail:
  Py_DECREF(m);
  return NULL;
}
