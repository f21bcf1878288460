/* Internal interfaces between the census files (census.c, census-table.c,
 * census-dump.c, census-filter.c, census-proc.c, limits.c, capacity.c,
 * render.c, tracker.c). Not installed.
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
/* census-table.c */
/* Index (as for the accessors) of the row with the same key, or -1. */
long uvip__census_find_tuple(const uvip_census_t *census,
                             const uvip_census_tuple_t *t);
long uvip__census_find_listener(const uvip_census_t *census,
                                const uvip_census_listener_t *l);
/* Index of the VIP row of addr (port ignored), or -1. */
long uvip__census_find_vip(const uvip_census_t *census,
                           const struct sockaddr_storage *addr);

/* render.c: uvip_census_render() with forecasts (indexed as the tuples and
 * the VIP rows; either may be NULL). */
int uvip__census_render(const uvip_census_t *census,
                        const uvip_capacity_t *cap, int format,
                        size_t max_tuples, const uvip_forecast_t *pair_fc,
                        const uvip_forecast_t *vip_fc, char *buf, size_t *len);

/* Between census.c, census-table.c, census-dump.c, census-filter.c and
 * census-proc.c only. */

/* A compact address key: family, port, 16 address bytes (IPv4 in the first
 * four). Hashing and comparing it is what the per-socket path costs. */
typedef struct uvip__akey_s {
  uint8_t fam;
  uint8_t pad;
  uint16_t port; /* host order */
  uint32_t a[4];
} uvip__akey_t;

/* Bytecode filters cost the kernel a pass over every condition per socket;
 * past this many addresses a userspace hash lookup is cheaper. */
#define UVIP__BC_MAX_ADDRS 64
/* Bytes of bytecode a census may need: the address chain plus the shard
 * split (at most 4 port comparisons and a jump per shard). */
#define UVIP__BC_CAP                                                        \
  ((UVIP__BC_MAX_ADDRS + 1) * 32 + UVIP_CENSUS_SHARDS_MAX * 40)

/* census-filter.c: one dump's inet_diag bytecode. */
typedef struct uvip__bc_spec_s {
  int fam;                    /* AF_INET or AF_INET6 */
  const uvip__akey_t *filter; /* the census's VIP list, or NULL */
  size_t nfilter;
  int nshards;                /* 1: no split */
  int shard;                  /* 0 .. nshards - 1 */
  int port_lo, port_hi;       /* ephemeral range the split divides */
} uvip__bc_spec_t;
/* Writes the bytecode selecting shard `shard` of `nshards` (a partition of
 * every socket by source and destination port) AND, when the list is short
 * enough, "local address in the list or a wildcard". Returns its length, 0
 * when there is nothing to send. *with_addrs (may be NULL) tells whether
 * the address part was included. out holds UVIP__BC_CAP bytes. */
size_t uvip__census_bytecode(const uvip__bc_spec_t *spec, char *out,
                             int *with_addrs);

/* census-table.c: the per-socket path, for one shard of a census. */
typedef struct uvip__cshard_s uvip__cshard_t;
void uvip__census_count(uvip__cshard_t *s, int fam, int kstate,
                        const uint32_t *src, int sport, const uint32_t *dst,
                        int dport, uint32_t rq, uint32_t wq);

/* census-table.c: a census's tables, for census.c. */
/* Allocates the result tables and every shard's (c->shards and the result
 * rows are allocated by the caller). */
int uvip__census_tables_init(uvip_census_t *c);
/* Frees what uvip__census_tables_init() allocated, also when it failed. */
void uvip__census_tables_free(uvip_census_t *c);
/* Records the VIP filter (vips may be NULL: no filter): distinct
 * addresses, ports dropped, list order kept. UV_E2BIG past max_vips. */
int uvip__census_filter_init(uvip_census_t *c, const uvip_addrs_t *vips);
/* Empties the results and every shard for a sample; the filter's rows
 * exist, with zero counts, in every sample. */
void uvip__census_clear(uvip_census_t *c);
/* Adds the shards that ran (info.shards) into the results. */
void uvip__census_merge(uvip_census_t *c);
/* The accessors' order: VIPs in filter order (by address without a
 * filter), listeners by address, tuples busiest first. */
void uvip__census_order(uvip_census_t *c);

/* census-proc.c: the /proc/net/tcp{,6} fallback into one shard (single
 * threaded). kstates is the kernel state bitmask to keep; flags the
 * census flags (NO_IPV4, NO_IPV6). buf is scratch of buflen bytes; reads
 * and bytes are added to. Returns 0 or a negative errno. */
int uvip__census_procfs(uvip__cshard_t *s, unsigned int kstates,
                        unsigned int flags, char *buf, size_t buflen,
                        uint64_t *reads, uint64_t *bytes);

#endif /* UVIP_CENSUS_INTERNAL_H */
