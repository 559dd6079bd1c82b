/*
 * spec.c -- tensor specs in Python: create()'s keyword arguments to a
 * ps_tensor_spec, and a spec back to the same keywords (TensorInfo.spec),
 * so that client.create(name, info.shape, **info.spec) makes the same
 * tensor. One table names every field once; the ranges and defaults are
 * libpsd's (docs/math.md): a value out of range is psd.SpecError with the
 * library's sentence.
 */
#include <stddef.h>
#include <string.h>

#include "psdpy.h"

typedef enum { F_DOUBLE, F_U64, F_FLAG } ftype;

static const struct {
  const char *name;
  size_t off;
  ftype type;
  uint64_t tune; /* the PS_OPTIM_F_* bit of an optimizer field (tune), else 0 */
} fields[] = {
    {"seed", offsetof(ps_tensor_spec, init.seed), F_U64, 0},
    {"sigma", offsetof(ps_tensor_spec, init.sigma), F_DOUBLE, 0},
    {"limit", offsetof(ps_tensor_spec, init.limit), F_DOUBLE, 0},
    {"value", offsetof(ps_tensor_spec, init.value), F_DOUBLE, 0},
    {"fan_in", offsetof(ps_tensor_spec, init.fan_in), F_U64, 0},
    {"fan_out", offsetof(ps_tensor_spec, init.fan_out), F_U64, 0},
    {"fan_in_includes_bias", offsetof(ps_tensor_spec, init.fan_in_includes_bias), F_FLAG, 0},
    {"allow_symmetric", offsetof(ps_tensor_spec, init.allow_symmetric), F_FLAG, 0},
    {"lr", offsetof(ps_tensor_spec, optim.lr), F_DOUBLE, PS_OPTIM_F_LR},
    {"beta1", offsetof(ps_tensor_spec, optim.beta1), F_DOUBLE, PS_OPTIM_F_BETA1},
    {"beta2", offsetof(ps_tensor_spec, optim.beta2), F_DOUBLE, PS_OPTIM_F_BETA2},
    {"eps", offsetof(ps_tensor_spec, optim.eps), F_DOUBLE, PS_OPTIM_F_EPS},
    {"weight_decay", offsetof(ps_tensor_spec, optim.weight_decay), F_DOUBLE,
     PS_OPTIM_F_WEIGHT_DECAY},
    {"heavy_ball", offsetof(ps_tensor_spec, optim.heavy_ball), F_FLAG, PS_OPTIM_F_HEAVY_BALL},
    {"nesterov", offsetof(ps_tensor_spec, optim.nesterov), F_FLAG, PS_OPTIM_F_NESTEROV},
    {"eps_inside_sqrt", offsetof(ps_tensor_spec, optim.eps_inside_sqrt), F_FLAG,
     PS_OPTIM_F_EPS_INSIDE_SQRT},
    {"clip_norm", offsetof(ps_tensor_spec, optim.clip_norm), F_DOUBLE, PS_OPTIM_F_CLIP_NORM},
    {"gamma", offsetof(ps_tensor_spec, optim.gamma), F_DOUBLE, PS_OPTIM_F_GAMMA},
    {"step_size", offsetof(ps_tensor_spec, optim.step_size), F_U64, PS_OPTIM_F_STEP_SIZE},
    {"decay", offsetof(ps_tensor_spec, optim.decay), F_DOUBLE, PS_OPTIM_F_DECAY},
    {"total_steps", offsetof(ps_tensor_spec, optim.total_steps), F_U64,
     PS_OPTIM_F_TOTAL_STEPS},
    {"lr_min", offsetof(ps_tensor_spec, optim.lr_min), F_DOUBLE, PS_OPTIM_F_LR_MIN},
    {"warmup", offsetof(ps_tensor_spec, optim.warmup), F_U64, PS_OPTIM_F_WARMUP},
    {"block_size", offsetof(ps_tensor_spec, block_size), F_U64, 0},
};
#define NFIELDS (sizeof(fields) / sizeof(fields[0]))

static int set_field(ps_tensor_spec *spec, size_t i, PyObject *v) {
  char *p = (char *)spec + fields[i].off;
  switch (fields[i].type) {
    case F_DOUBLE: {
      double d = PyFloat_AsDouble(v);
      if (d == -1 && PyErr_Occurred()) return -1;
      memcpy(p, &d, sizeof(d));
      return 0;
    }
    case F_U64: {
      if (!PyLong_Check(v) || PyBool_Check(v)) {
        PyErr_Format(PyExc_TypeError, "create: %s must be an int, not %s", fields[i].name,
                     Py_TYPE(v)->tp_name);
        return -1;
      }
      unsigned long long u = PyLong_AsUnsignedLongLong(v);
      if (u == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Format(PyExc_ValueError, "create: %s must be an int in 0..2^64-1",
                     fields[i].name);
        return -1;
      }
      uint64_t x = u;
      memcpy(p, &x, sizeof(x));
      return 0;
    }
    case F_FLAG: {
      int b = PyObject_IsTrue(v);
      if (b < 0) return -1;
      memcpy(p, &b, sizeof(b));
      return 0;
    }
  }
  return -1;
}

/* kw[key] as a str, or NULL (absent or None; an exception if not a str). */
static const char *kind_arg(PyObject *kw, const char *key, int *err) {
  *err = 0;
  PyObject *v = kw ? PyDict_GetItemString(kw, key) : NULL;
  if (v == NULL || v == Py_None) return NULL;
  const char *s = PyUnicode_Check(v) ? PyUnicode_AsUTF8(v) : NULL;
  if (s == NULL) {
    if (!PyErr_Occurred())
      PyErr_Format(PyExc_TypeError, "create: %s must be a str, not %s", key,
                   Py_TYPE(v)->tp_name);
    *err = 1;
  }
  return s;
}

static int unknown_kind(const char *what, const char *name) {
  PyErr_Format(PyExc_ValueError, "create: unknown %s '%s' (see docs/math.md for the names)",
               what, name);
  return -1;
}

int pspy_spec_from_kwargs(PyObject *kw, ps_tensor_spec *spec) {
  int err;
  const char *init = kind_arg(kw, "init", &err);
  if (err) return -1;
  const char *optim = kind_arg(kw, "optimizer", &err);
  if (err) return -1;
  const char *sched = kind_arg(kw, "schedule", &err);
  if (err) return -1;
  ps_init_kind ik = PS_INIT_HE_NORMAL;
  ps_optim_kind ok = PS_OPT_ADAM;
  ps_schedule_kind sk = PS_SCHED_CONSTANT;
  if (init != NULL && ps_init_from_name(init, &ik) != 0) return unknown_kind("init", init);
  if (optim != NULL && ps_optim_from_name(optim, &ok) != 0)
    return unknown_kind("optimizer", optim);
  if (sched != NULL && ps_schedule_from_name(sched, &sk) != 0)
    return unknown_kind("schedule", sched);
  ps_tensor_spec_init(spec, ik, ok);
  spec->optim.schedule = sk;
  if (kw == NULL) return 0;

  PyObject *key, *v;
  Py_ssize_t pos = 0;
  while (PyDict_Next(kw, &pos, &key, &v)) {
    const char *k = PyUnicode_AsUTF8(key);
    if (k == NULL) return -1;
    if (!strcmp(k, "init") || !strcmp(k, "optimizer") || !strcmp(k, "schedule")) continue;
    if (v == Py_None) continue; /* the default */
    size_t i = 0;
    while (i < NFIELDS && strcmp(fields[i].name, k) != 0) i++;
    if (i == NFIELDS) {
      PyErr_Format(PyExc_TypeError, "create() got an unexpected keyword argument '%s'", k);
      return -1;
    }
    if (set_field(spec, i, v) < 0) return -1;
  }
  return 0;
}

int pspy_tune_from_kwargs(PyObject *kw, ps_tensor_spec *spec, uint64_t *bits) {
  memset(spec, 0, sizeof(*spec));
  *bits = 0;
  if (kw == NULL) return 0;
  PyObject *key, *v;
  Py_ssize_t pos = 0;
  while (PyDict_Next(kw, &pos, &key, &v)) {
    const char *k = PyUnicode_AsUTF8(key);
    if (k == NULL) return -1;
    if (!strcmp(k, "optimizer") || !strcmp(k, "schedule")) {
      int err;
      const char *name = kind_arg(kw, k, &err);
      if (err) return -1;
      if (name == NULL) continue;
      if (k[0] == 'o') {
        if (ps_optim_from_name(name, &spec->optim.kind) != 0)
          return unknown_kind("optimizer", name);
        *bits |= PS_OPTIM_F_KIND;
      } else {
        if (ps_schedule_from_name(name, &spec->optim.schedule) != 0)
          return unknown_kind("schedule", name);
        *bits |= PS_OPTIM_F_SCHEDULE;
      }
      continue;
    }
    size_t i = 0;
    while (i < NFIELDS && (fields[i].tune == 0 || strcmp(fields[i].name, k) != 0)) i++;
    if (i == NFIELDS) {
      PyErr_Format(PyExc_TypeError, "tune() got an unexpected keyword argument '%s' (only "
                   "optimizer fields can be tuned)", k);
      return -1;
    }
    if (set_field(spec, i, v) < 0) return -1;
    *bits |= fields[i].tune;
  }
  return 0;
}

static int put(PyObject *d, const char *k, PyObject *v) {
  if (v == NULL) return -1;
  int r = PyDict_SetItemString(d, k, v);
  Py_DECREF(v);
  return r;
}

PyObject *pspy_spec_dict(const ps_tensor_spec *spec) {
  PyObject *d = PyDict_New();
  if (d == NULL) return NULL;
  if (put(d, "init", PyUnicode_FromString(ps_init_name(spec->init.kind))) < 0 ||
      put(d, "optimizer", PyUnicode_FromString(ps_optim_name(spec->optim.kind))) < 0 ||
      put(d, "schedule", PyUnicode_FromString(ps_schedule_name(spec->optim.schedule))) < 0)
    goto fail;
  for (size_t i = 0; i < NFIELDS; i++) {
    const char *p = (const char *)spec + fields[i].off;
    PyObject *v;
    if (fields[i].type == F_DOUBLE) {
      double x;
      memcpy(&x, p, sizeof(x));
      v = PyFloat_FromDouble(x);
    } else if (fields[i].type == F_U64) {
      uint64_t x;
      memcpy(&x, p, sizeof(x));
      v = PyLong_FromUnsignedLongLong(x);
    } else {
      int x;
      memcpy(&x, p, sizeof(x));
      v = PyBool_FromLong(x);
    }
    if (put(d, fields[i].name, v) < 0) goto fail;
  }
  return d;
fail:
  Py_DECREF(d);
  return NULL;
}

PyObject *pspy_info_object(const ps_tensor_info *info) {
  PyObject *shape = PyTuple_New(info->ndim);
  if (shape == NULL) return NULL;
  for (int i = 0; i < info->ndim; i++) {
    PyObject *x = PyLong_FromUnsignedLongLong(info->shape[i]);
    if (x == NULL) {
      Py_DECREF(shape);
      return NULL;
    }
    PyTuple_SET_ITEM(shape, i, x);
  }
  PyObject *spec = pspy_spec_dict(&info->spec);
  if (spec == NULL) {
    Py_DECREF(shape);
    return NULL;
  }
  PyObject *o = PyObject_CallFunction(pspy_h.tensor_info, "sNKKN", info->name ? info->name : "",
                                      shape, (unsigned long long)info->numel,
                                      (unsigned long long)info->version, spec);
  return o;
}
