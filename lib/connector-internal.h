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
  uint64_t pos;    /* prefix connectors: this destination's place in the
                      sequence of source addresses (connector-prefix.c) */
  uvip__cn_pair_t pairs[]; /* none for prefix connectors */
} uvip__cn_dest_t;

typedef struct {
  uvip__cn_addr_t addr;
  int family; /* AF_UNSPEC for the kernel's-choice pseudo-source */
  uvip_connector_stats_t stats;
} uvip__cn_source_t;

/* Sources inside a prefix (connector-prefix.c). */
typedef struct uvip__cn_prefix_s uvip__cn_prefix_t;

struct uvip_connector_s {
  uv_loop_t *loop;
  /* Not NULL for a prefix connector: srcs then has one entry, which only
   * carries the family and the totals, and a source index is a slot of the
   * prefix's table of pairs in use. */
  uvip__cn_prefix_t *pfx;
  uvip__cn_source_t *srcs;
  size_t nsrcs;
  bool bind_sources; /* false: empty pool, the kernel chooses */
  uint32_t port_lo, port_hi;
  bool set_port_range; /* IP_LOCAL_PORT_RANGE works here */
  int proxy_version;   /* PROXY header on every connection: 0, 1 or 2 */
  uint64_t range;

  uvip__cn_dest_t **buckets;
  size_t nbuckets, ndests;

  uvip_outconn_t *conns;
  size_t handles; /* uv_tcp_t handles not yet closed */

  /* Connects that completed inside uvip_connect() (connector.c): their
   * callbacks are due, from the loop, in this order. `due_idle` runs them
   * (initialised on first use); `slow` scores how often our own connect()
   * had to wait, to fall back on libuv's connect where most do. */
  uvip_outconn_t *due_head, *due_tail;
  uv_idle_t due_idle;
  bool due_idle_init;
  uint8_t slow;
  uint32_t probe;

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

/* The counters a connection from source i adds to (a prefix connector
 * keeps totals only) and the address it binds. */
uvip__cn_source_t *uvip__cn_src(uvip_connector_t *c, size_t i);
const struct sockaddr *uvip__cn_source_addr(const uvip_connector_t *c,
                                            size_t i);

/* connector-prefix.c: the prefix versions of the functions above, which
 * dispatch to them when c->pfx is set. */
/* The prefix's state, the route checked; 0 or an error with errbuf set. */
int uvip__cn_prefix_new(uvip_connector_t *c, const uvip_prefix_t *prefix,
                        uvip_prefix_policy_t policy, char *errbuf,
                        size_t errlen);
void uvip__cn_prefix_free(uvip_connector_t *c);
/* Socket options of a prefix source (FREEBIND) on a new socket. */
void uvip__cn_prefix_sockopts(const uvip_connector_t *c, int fd);
/* A new destination entry gets its place in the sequence. */
void uvip__cn_prefix_dest_init(uvip_connector_t *c, uvip__cn_dest_t *d);
/* A new search begins (or one has ended): pairs picked but not taken are
 * dropped and the budget of tries is reset. */
void uvip__cn_prefix_search_reset(uvip_connector_t *c);
/* A slot for a connection to d, -1 when the budget ran out without a
 * usable pair, or UV_ENOMEM. */
long uvip__cn_prefix_next(uvip_connector_t *c, uvip__cn_dest_t *d);
void uvip__cn_prefix_take(uvip_connector_t *c, uvip__cn_dest_t *d, size_t i);
void uvip__cn_prefix_give_back(uvip_connector_t *c, uvip__cn_dest_t *d,
                               size_t i, bool had_port);
void uvip__cn_prefix_exhausted(uvip_connector_t *c, size_t i);
const struct sockaddr *uvip__cn_prefix_addr(const uvip_connector_t *c,
                                            size_t i);
/* uvip_connector_ports() and uvip_connector_correct() for an address of
 * the prefix (UV_ENOENT outside it). d may be NULL for ports. */
int uvip__cn_prefix_ports(const uvip_connector_t *c,
                          const struct sockaddr *source,
                          const uvip__cn_dest_t *d,
                          uvip_connector_ports_t *out);
int uvip__cn_prefix_correct(uvip_connector_t *c, const struct sockaddr *source,
                            uvip__cn_dest_t *d, uint64_t sockets);

#endif /* UVIP_CONNECTOR_INTERNAL_H */
