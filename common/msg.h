/*
 * msg.h -- conversions between the C spec structs of psd.h and their wire
 * form (Psd__TensorSpec), shared by the daemon and the client library.
 */
#ifndef PSD_MSG_H
#define PSD_MSG_H

#include <stddef.h>
#include <stdint.h>

#include "psd_types.h"
#include "psd.pb-c.h"

/* A TensorSpec message with its sub-messages in one piece of storage. */
typedef struct {
  Psd__TensorSpec ts;
  Psd__InitSpec init;
  Psd__OptimSpec optim;
} pmsg_spec_pb;

/* Fill pb from spec and shape; every field is set explicitly. pb points at
 * shape and at static name strings: keep shape alive while pb is used. */
void pmsg_spec_to_pb(pmsg_spec_pb *pb, const ps_tensor_spec *spec,
                    const uint64_t *shape, int ndim);

/* Read a wire spec into *spec. Fields absent on the wire take the
 * defaults of the named kinds (docs/math.md) (a missing init kind is he_normal, a missing
 * optimizer adam). Returns 0, or -1 with a sentence in err for an unknown
 * name. Values are not validated here (see psm_init_validate and
 * psm_optim_validate). */
int pmsg_spec_from_pb(const Psd__TensorSpec *pb, ps_tensor_spec *spec,
                     char *err, size_t errlen);

/* The same for table specs (TableSpec): init, optimizer, max_rows, evict.
 * Absent fields take the defaults of the kinds named (he_normal, adam when
 * absent; no row limit, no eviction). */
typedef struct {
  Psd__TableSpec ts;
  Psd__InitSpec init;
  Psd__OptimSpec optim;
} pmsg_table_pb;
void pmsg_table_to_pb(pmsg_table_pb *pb, const ps_table_spec *spec);
int pmsg_table_from_pb(const Psd__TableSpec *pb, ps_table_spec *spec, char *err,
                       size_t errlen);
/* Copy the optimizer fields present in po onto *o (every field but the
 * kind, which the caller checks). 0, or -1 with a sentence in err for an
 * unknown schedule name (then *o may be half changed: use a copy). */
int pmsg_optim_overlay(const Psd__OptimSpec *po, ps_optim_spec *o, char *err, size_t errlen);

/* An OptimSpec holding only the members of o named by the PS_OPTIM_F_* bits
 * of `fields` (the others absent): the wire form of ps_set_optim. Points at
 * static name strings. */
void pmsg_optim_fields_to_pb(Psd__OptimSpec *po, const ps_optim_spec *o, uint64_t fields);

#endif
