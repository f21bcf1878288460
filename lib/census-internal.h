/* Internal interfaces between the census files (census.c, limits.c,
 * capacity.c, render.c, tracker.c). Not installed.
 * SPDX-License-Identifier: MIT */
#ifndef UVIP_CENSUS_INTERNAL_H
#define UVIP_CENSUS_INTERNAL_H

#include "internal.h"

/* limits.c */
/* The namespace's ephemeral range and the reserved ports inside it; the
 * census needs them even when it does not read the other limits. */
int uvip__port_range(int *lo, int *hi, int *reserved_in_range);
int uvip__read_netstat(uvip_netstat_t *out);
/* Writes cur - prev per counter (0 where a counter went backwards). */
void uvip__netstat_delta(const uvip_netstat_t *prev, const uvip_netstat_t *cur,
                         uvip_netstat_t *out);

/* census.c */
/* Seeds the netstat baseline for the next sample, so that two census
 * objects used alternately (the tracker's double buffer) give deltas over
 * consecutive samples. */
void uvip__census_set_baseline(uvip_census_t *census,
                               const uvip_netstat_t *prev);
/* Per-row flag bytes owned by the tracker, indexed by the i of the public
 * accessors; zeroed by every sample. */
unsigned char *uvip__census_tuple_flags(uvip_census_t *census);
unsigned char *uvip__census_listener_flags(uvip_census_t *census);
/* Index (as for the accessors) of the row with the same key, or -1. */
long uvip__census_find_tuple(const uvip_census_t *census,
                             const uvip_census_tuple_t *t);
long uvip__census_find_listener(const uvip_census_t *census,
                                const uvip_census_listener_t *l);

#endif /* UVIP_CENSUS_INTERNAL_H */
