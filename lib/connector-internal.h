/* Shared between connector.c (the API, connect attempts and failover, the
 * libuv handles) and connector-ports.c (the destination table, the choice
 * of source and the port accounting per (source, destination) pair). The
 * connector object is here because both sides work on it; the outbound
 * connection stays private to connector.c. Not installed.
 * SPDX-License-Identifier: MIT */
#ifndef UVIP_CONNECTOR_INTERNAL_H
#define UVIP_CONNECTOR_INTERNAL_H

#include "internal.h"

typedef union {
  struct sockaddr sa;
  struct sockaddr_in in;
  struct sockaddr_in6 in6;
} uvip__cn_addr_t;

/* One (source, destination) pair. */
typedef struct {
  uint32_t own;    /* our connections, connecting or open */
  uint32_t others; /* other sockets, from the last correction */
  uint8_t exhausted;
} uvip__cn_pair_t;

/* A destination with its pairs, one per source; kept while it has
 * connections or a correction, so its count is small. */
typedef struct uvip__cn_dest {
  struct uvip__cn_dest *next; /* hash chain */
  uvip__cn_addr_t addr;
  uint64_t own;    /* sum of pairs' own */
  uint64_t others; /* sum of pairs' others */
  uint32_t rr;     /* where the next search starts: ties go round-robin */
  uvip__cn_pair_t pairs[];
} uvip__cn_dest_t;

typedef struct {
  uvip__cn_addr_t addr;
  int family; /* AF_UNSPEC for the kernel's-choice pseudo-source */
  uvip_connector_stats_t stats;
} uvip__cn_source_t;

struct uvip_connector_s {
  uv_loop_t *loop;
  uvip__cn_source_t *srcs;
  size_t nsrcs;
  bool bind_sources; /* false: empty pool, the kernel chooses */
  uint32_t port_lo, port_hi;
  bool set_port_range; /* IP_LOCAL_PORT_RANGE works here */
  uint64_t range;

  uvip__cn_dest_t **buckets;
  size_t nbuckets, ndests;

  uvip_outconn_t *conns;
  size_t handles; /* uv_tcp_t handles not yet closed */

  bool closing;
  bool closer_done;
  uv_idle_t closer; /* only ever closed: defers the close callback */
  uvip_connector_close_cb close_cb;
};

/* connector-ports.c */
/* Sets port_lo, port_hi, set_port_range and range from the namespace's
 * ephemeral range, narrowed by opts (may be NULL) where the kernel can. */
void uvip__cn_port_range(uvip_connector_t *c,
                         const uvip_connector_options_t *opts);
/* IPv4 or IPv6 with a port. */
bool uvip__cn_valid_dest(const struct sockaddr *sa);
/* The empty destination table, or UV_ENOMEM with nothing allocated. */
int uvip__cn_dests_init(uvip_connector_t *c);
/* Frees every destination and the table. */
void uvip__cn_dests_free(uvip_connector_t *c);
/* The destination's entry, created on first use; NULL without memory. */
uvip__cn_dest_t *uvip__cn_dest_get(uvip_connector_t *c,
                                   const struct sockaddr *sa);
/* Drops a destination nothing refers to and nothing is known about. */
void uvip__cn_dest_maybe_free(uvip_connector_t *c, uvip__cn_dest_t *d);
/* The usable source of `family` with the most free ports for d, or -1;
 * the search after this one starts past it (ties go round-robin). */
long uvip__cn_next_source(uvip_connector_t *c, uvip__cn_dest_t *d,
                          int family);
/* A connection from source i to d started: charge its port. */
void uvip__cn_take(uvip_connector_t *c, uvip__cn_dest_t *d, size_t i);
/* Such a connection closed and d may be freed. When it had a port (the
 * kernel did not refuse it one), that port is back and the pair is usable
 * again. */
void uvip__cn_give_back(uvip_connector_t *c, uvip__cn_dest_t *d, size_t i,
                        bool had_port);
/* The kernel had no port for source i to d. */
void uvip__cn_exhausted(uvip_connector_t *c, uvip__cn_dest_t *d, size_t i);

#endif /* UVIP_CONNECTOR_INTERNAL_H */
