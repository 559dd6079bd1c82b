/* msg.c -- see msg.h. */
#include "msg.h"

#include <stdio.h>
#include <string.h>

#include "psmath.h"

/* The init and optimizer parts, shared by tensor and table specs. */
static void init_to_pb(Psd__InitSpec *pi, const ps_init_spec *i) {
  psd__init_spec__init(pi);
  pi->kind = (char *)ps_init_name(i->kind);
  pi->has_seed = 1, pi->seed = i->seed;
  pi->has_sigma = 1, pi->sigma = i->sigma;
  pi->has_limit = 1, pi->limit = i->limit;
  pi->has_value = 1, pi->value = i->value;
  pi->has_fan_in = 1, pi->fan_in = i->fan_in;
  pi->has_fan_out = 1, pi->fan_out = i->fan_out;
  pi->has_fan_in_includes_bias = 1, pi->fan_in_includes_bias = i->fan_in_includes_bias != 0;
  pi->has_allow_symmetric = 1, pi->allow_symmetric = i->allow_symmetric != 0;
}

static void optim_to_pb(Psd__OptimSpec *po, const ps_optim_spec *o) {
  psd__optim_spec__init(po);
  po->kind = (char *)ps_optim_name(o->kind);
  po->has_lr = 1, po->lr = o->lr;
  po->has_beta1 = 1, po->beta1 = o->beta1;
  po->has_beta2 = 1, po->beta2 = o->beta2;
  po->has_eps = 1, po->eps = o->eps;
  po->has_weight_decay = 1, po->weight_decay = o->weight_decay;
  po->has_heavy_ball = 1, po->heavy_ball = o->heavy_ball != 0;
  po->has_nesterov = 1, po->nesterov = o->nesterov != 0;
  po->has_eps_inside_sqrt = 1, po->eps_inside_sqrt = o->eps_inside_sqrt != 0;
  po->has_clip_norm = 1, po->clip_norm = o->clip_norm;
  po->schedule = (char *)ps_schedule_name(o->schedule);
  po->has_gamma = 1, po->gamma = o->gamma;
  po->has_step_size = 1, po->step_size = o->step_size;
  po->has_decay = 1, po->decay = o->decay;
  po->has_total_steps = 1, po->total_steps = o->total_steps;
  po->has_lr_min = 1, po->lr_min = o->lr_min;
  po->has_warmup = 1, po->warmup = o->warmup;
}

void pmsg_spec_to_pb(pmsg_spec_pb *pb, const ps_tensor_spec *spec,
                    const uint64_t *shape, int ndim) {
  Psd__InitSpec *pi = &pb->init;
  Psd__OptimSpec *po = &pb->optim;
  init_to_pb(pi, &spec->init);
  optim_to_pb(po, &spec->optim);
  psd__tensor_spec__init(&pb->ts);
  pb->ts.n_shape = (size_t)ndim;
  pb->ts.shape = (uint64_t *)shape;
  pb->ts.init = pi;
  pb->ts.optim = po;
  pb->ts.has_block_size = 1;
  pb->ts.block_size = spec->block_size;
}

/* Read the init and optimizer parts into *i0 and *o0 (defaults of the kinds
 * named, he_normal and adam when absent). 0, or -1 for an unknown name. */
static int parts_from_pb(const Psd__InitSpec *pi, const Psd__OptimSpec *po, ps_init_spec *i0,
                         ps_optim_spec *o0, char *err, size_t errlen) {
  ps_init_kind ik = PS_INIT_HE_NORMAL;
  ps_optim_kind ok = PS_OPT_ADAM;

  if (pi != NULL && pi->kind != NULL && ps_init_from_name(pi->kind, &ik) != 0) {
    snprintf(err, errlen, "unknown initializer '%s'", pi->kind);
    return -1;
  }
  if (po != NULL && po->kind != NULL && ps_optim_from_name(po->kind, &ok) != 0) {
    snprintf(err, errlen, "unknown optimizer '%s'", po->kind);
    return -1;
  }
  psm_init_defaults(i0, ik);
  psm_optim_defaults(o0, ok);
  if (pi != NULL) {
    ps_init_spec *i = i0;
    if (pi->has_seed) i->seed = pi->seed;
    if (pi->has_sigma) i->sigma = pi->sigma;
    if (pi->has_limit) i->limit = pi->limit;
    if (pi->has_value) i->value = pi->value;
    if (pi->has_fan_in) i->fan_in = pi->fan_in;
    if (pi->has_fan_out) i->fan_out = pi->fan_out;
    if (pi->has_fan_in_includes_bias) i->fan_in_includes_bias = pi->fan_in_includes_bias;
    if (pi->has_allow_symmetric) i->allow_symmetric = pi->allow_symmetric;
  }
  return po != NULL ? pmsg_optim_overlay(po, o0, err, errlen) : 0;
}

int pmsg_spec_from_pb(const Psd__TensorSpec *pb, ps_tensor_spec *spec,
                     char *err, size_t errlen) {
  ps_tensor_spec_init(spec, PS_INIT_HE_NORMAL, PS_OPT_ADAM);
  spec->block_size = pb->has_block_size ? pb->block_size : 0;
  return parts_from_pb(pb->init, pb->optim, &spec->init, &spec->optim, err, errlen);
}

void pmsg_table_to_pb(pmsg_table_pb *pb, const ps_table_spec *spec) {
  init_to_pb(&pb->init, &spec->init);
  optim_to_pb(&pb->optim, &spec->optim);
  psd__table_spec__init(&pb->ts);
  pb->ts.init = &pb->init;
  pb->ts.optim = &pb->optim;
  pb->ts.has_max_rows = 1;
  pb->ts.max_rows = spec->max_rows;
  pb->ts.evict = (char *)ps_evict_name(spec->evict);
}

int pmsg_table_from_pb(const Psd__TableSpec *pb, ps_table_spec *spec, char *err,
                       size_t errlen) {
  ps_table_spec_init(spec, PS_INIT_HE_NORMAL, PS_OPT_ADAM);
  spec->max_rows = pb->has_max_rows ? pb->max_rows : 0;
  if (pb->evict != NULL && ps_evict_from_name(pb->evict, &spec->evict) != 0) {
    snprintf(err, errlen, "unknown eviction '%s' (none, lru, lfu)", pb->evict);
    return -1;
  }
  return parts_from_pb(pb->init, pb->optim, &spec->init, &spec->optim, err, errlen);
}

int pmsg_optim_overlay(const Psd__OptimSpec *po, ps_optim_spec *o, char *err, size_t errlen) {
  if (po->schedule != NULL && ps_schedule_from_name(po->schedule, &o->schedule) != 0) {
    snprintf(err, errlen, "unknown learning-rate schedule '%s'", po->schedule);
    return -1;
  }
  if (po->has_lr) o->lr = po->lr;
  if (po->has_beta1) o->beta1 = po->beta1;
  if (po->has_beta2) o->beta2 = po->beta2;
  if (po->has_eps) o->eps = po->eps;
  if (po->has_weight_decay) o->weight_decay = po->weight_decay;
  if (po->has_heavy_ball) o->heavy_ball = po->heavy_ball;
  if (po->has_nesterov) o->nesterov = po->nesterov;
  if (po->has_eps_inside_sqrt) o->eps_inside_sqrt = po->eps_inside_sqrt;
  if (po->has_clip_norm) o->clip_norm = po->clip_norm;
  if (po->has_gamma) o->gamma = po->gamma;
  if (po->has_step_size) o->step_size = po->step_size;
  if (po->has_decay) o->decay = po->decay;
  if (po->has_total_steps) o->total_steps = po->total_steps;
  if (po->has_lr_min) o->lr_min = po->lr_min;
  if (po->has_warmup) o->warmup = po->warmup;
  return 0;
}

void pmsg_optim_fields_to_pb(Psd__OptimSpec *po, const ps_optim_spec *o, uint64_t f) {
  psd__optim_spec__init(po);
  if (f & PS_OPTIM_F_KIND) po->kind = (char *)ps_optim_name(o->kind);
  if (f & PS_OPTIM_F_SCHEDULE) po->schedule = (char *)ps_schedule_name(o->schedule);
/* Flags go as booleans (protobuf-c's are 0 or 1). */
#define PMSG_F(bit, field) \
  if (f & (bit)) po->has_##field = 1, po->field = _Generic(o->field, int: o->field != 0, \
                                                           default: o->field)
  PMSG_F(PS_OPTIM_F_LR, lr);
  PMSG_F(PS_OPTIM_F_BETA1, beta1);
  PMSG_F(PS_OPTIM_F_BETA2, beta2);
  PMSG_F(PS_OPTIM_F_EPS, eps);
  PMSG_F(PS_OPTIM_F_WEIGHT_DECAY, weight_decay);
  PMSG_F(PS_OPTIM_F_HEAVY_BALL, heavy_ball);
  PMSG_F(PS_OPTIM_F_NESTEROV, nesterov);
  PMSG_F(PS_OPTIM_F_EPS_INSIDE_SQRT, eps_inside_sqrt);
  PMSG_F(PS_OPTIM_F_CLIP_NORM, clip_norm);
  PMSG_F(PS_OPTIM_F_GAMMA, gamma);
  PMSG_F(PS_OPTIM_F_STEP_SIZE, step_size);
  PMSG_F(PS_OPTIM_F_DECAY, decay);
  PMSG_F(PS_OPTIM_F_TOTAL_STEPS, total_steps);
  PMSG_F(PS_OPTIM_F_LR_MIN, lr_min);
  PMSG_F(PS_OPTIM_F_WARMUP, warmup);
#undef PMSG_F
}
