/* Private state of a census, shared by census.c (the public API),
 * census-table.c (tables, aggregation, merge) and census-dump.c (the
 * netlink and procfs dumps). Not installed.
 * SPDX-License-Identifier: MIT */
#ifndef UVIP_CENSUS_STATE_H
#define UVIP_CENSUS_STATE_H

#include "census-internal.h"

/* The kernel's TCP_NEW_SYN_RECV: a request socket, shown by ss as SYN-RECV. */
#define KSTATE_NEW_SYN_RECV 12
/* Kernel states 1..12; bit 13 (TCP_BOUND_INACTIVE) is left out as ss does. */
#define KSTATES_ALL 0x1ffeu
#define KSTATE_LISTEN_BIT (1u << (UVIP_TCP_LISTEN + 1))
#define RCVBUF_MIN 32768
#define PROC_CHUNK 65536
/* The split when ip_local_port_range cannot be read (the kernel default). */
#define SPLIT_LO_DEFAULT 32768
#define SPLIT_HI_DEFAULT 60999

typedef uvip__akey_t akey_t;

typedef struct tkey {
  akey_t l, r;
} tkey_t;

/* Open addressing over a dense key array. A slot is live when its
 * generation equals the table's, so a reset is O(1). */
typedef struct tbl {
  char *keys;
  size_t ksize, n, cap;
  uint32_t *slot, *sgen;
  uint32_t mask, gen;
  uint32_t *order; /* accessor index -> dense index (result tables only) */
  uint32_t *rank;  /* dense index -> accessor index */
} tbl_t;

typedef struct tcount {
  uint64_t in_use, time_wait;
} tcount_t;

/* One shard: what one dump aggregates into. Its tables have the census's
 * caps; rows hold counts only (keys are in the tables). Listeners are
 * recorded in the census's own table (by shard 0, before the other shards
 * run); a shard counts request sockets per listener in lsyn. */
struct uvip__cshard_s {
  uvip_census_t *c;
  tbl_t vips, tup;
  uvip_census_counts_t *vcnt; /* per vips dense index */
  tcount_t *tcnt;             /* per tup dense index */
  uint64_t *lsyn;             /* per census listener dense index */
  uvip_census_counts_t totals;
  uint64_t seen, sockets, vips_overflow, listeners_overflow,
      tuples_overflow, reads, bytes;
  uint64_t tw_seen; /* TIME_WAIT sockets received, before any filter */
  char *buf;
  size_t buflen;
  char *bc; /* bytecode scratch, UVIP__BC_CAP bytes */
  struct mnl_socket *nl;
  /* The job of a parallel dump. */
  int fam;
  unsigned int states, seq;
  int rc;
  int index;
};

struct uvip_census_s {
  uvip_census_options_t opts;
  unsigned int kstates; /* kernel state bitmask requested */
  size_t nfilter;       /* distinct filter addresses (0 = no filter) */
  akey_t *filter;       /* in list order */
  int nfilter4;         /* of them IPv4 */
  int nshards;          /* shards allocated (opts.shards resolved) */
  int auto_shards;      /* opts.shards was 0: each sample picks 1..nshards */
  int cpus;             /* CPUs the process could use at creation */
  int split_lo, split_hi; /* the port range this sample splits */
  uvip__cshard_t *shards;
  /* Merged results; listeners are recorded here directly. */
  tbl_t vips, lst, tup;
  /* Bit p set: some listener in lst has port p. Most sockets that are not
   * inbound (a client's ephemeral ports) are told apart with one bit test
   * instead of three listener lookups. Written with lst (shard 0, before
   * the other shards start), read by every shard. */
  uint64_t lports[65536 / 64];
  uvip_census_vip_t *vip_rows;
  uvip_census_listener_t *lst_rows;
  uvip_census_tuple_t *tup_rows;
  unsigned char *tup_flags, *lst_flags;
  uvip_census_counts_t totals;
  uvip_census_info_t info;
  uvip_limits_t limits;
  uvip_netstat_t baseline;
  int has_baseline;
  int has_limits;
  int usable;
};

/* census-dump.c: one sample into the shards' tables (merged by
 * census-table.c). */
int uvip__census_sample_netlink(uvip_census_t *c);
int uvip__census_sample_procfs(uvip_census_t *c);

#endif /* UVIP_CENSUS_STATE_H */
