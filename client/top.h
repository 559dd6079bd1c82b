/*
 * top.h -- `psctl top`: a table of every shard refreshed each interval
 * from their `stats` (see top.c).
 */
#ifndef PSCTL_TOP_H
#define PSCTL_TOP_H

#include "psd.h"

/* Refresh every `interval` seconds: `count` tables (0: until killed), or
 * with `once` a single table from two samples one interval apart.
 * `servers` is the list c was connected with (for the addresses shown).
 * 0, or -1 (out of memory). */
int psctl_top(ps_client *c, const char *servers, double interval, int once, long count);

#endif
