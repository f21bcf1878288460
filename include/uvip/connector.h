/* uvip: connector API. Included by <uvip.h>; do not include directly.
 * SPDX-License-Identifier: MIT
 *
 * The outbound half: open many connections to a few destinations from a
 * pool of source addresses. One source address can hold at most as many
 * connections to one destination (address and port) as there are ephemeral
 * ports, 28,232 with the default net.ipv4.ip_local_port_range; a pool of N
 * sources raises that to N times as many. The connector keeps its own count
 * of ports in use per (source, destination) pair, picks the source with the
 * most free ports for each connection, lets the kernel choose the port at
 * connect() time (IP_BIND_ADDRESS_NO_PORT) and moves on to the next source
 * when the kernel has no port left for a pair.
 */
#ifndef UVIP_CONNECTOR_H
#define UVIP_CONNECTOR_H

#ifdef __cplusplus
extern "C" {
#endif

typedef struct uvip_connector_s uvip_connector_t;

/* One outbound connection. Allocated by the library in uvip_connect() and
 * freed by it after the connection is closed (see uvip_outconn_close()). */
typedef struct uvip_outconn_s uvip_outconn_t;

typedef struct uvip_connector_options_s {
  /* Ephemeral ports to use, inclusive; both 0 (the default) = the whole
   * net.ipv4.ip_local_port_range. A narrower range is applied per socket
   * with IP_LOCAL_PORT_RANGE (Linux 6.3 and later) and is ignored, with the
   * system range counted instead, on kernels without it. It lets processes
   * that share source addresses split the ports between them. */
  uint16_t port_min;
  uint16_t port_max;
  /* 1 or 2: every connection starts with a PROXY protocol header of that
   * version (<uvip/proxy.h>), written before the connect callback runs, so
   * that it precedes anything the application writes. It carries the
   * addresses given with uvip_outconn_set_proxy(), or else the connection's
   * own (its source address and port, and dest). 0 (the default): none. */
  int proxy_version;
} uvip_connector_options_t;

/* Fills the options with their defaults. Returns 0 or UV_EINVAL. */
int uvip_connector_options_init(uvip_connector_options_t *opts);

/* Creates a connector on loop with the source addresses of `sources`
 * (copied; every port must be 0). An empty list (or NULL) means one
 * pseudo-source: no bind, the kernel chooses the source address. opts may be
 * NULL for defaults. The usable port range is read from
 * /proc/sys/net/ipv4/ip_local_port_range of the caller's network namespace
 * now. Errors: UV_EINVAL, UV_ENOMEM. */
int uvip_connector_new(uv_loop_t *loop, const uvip_addrs_t *sources,
                       const uvip_connector_options_t *opts,
                       uvip_connector_t **out);

/* How a prefix connector picks a source address inside its prefix. */
typedef enum {
  /* The next address of the destination's own sequence: a full-period walk
   * of the prefix that starts at a hash of the destination and moves by a
   * fixed stride (about 0.618 of the prefix) per connection, so sources
   * spread evenly and a /64 practically never repeats one. O(1). */
  UVIP_PREFIX_SPREAD = 0,
  /* The least used address (fewest of the connector's connections, to any
   * destination) among the next 16 of that sequence (all of them for
   * smaller prefixes); an address not in use is taken at once. */
  UVIP_PREFIX_LEAST_USED = 1
} uvip_prefix_policy_t;

/* Creates a connector whose sources are every address of prefix (IPv4 or
 * IPv6), without listing them. IPv4 prefixes shorter than /31 leave out
 * the network and broadcast addresses, IPv6 prefixes shorter than /127 the
 * all-zero host (the subnet-router anycast address), as address specs do.
 * The prefix must be local to the host through a local route ("AnyIP":
 * "ip -6 route add local fd00:1::/64 dev lo", or
 * uvip_provision_new_local_route()); sockets bind their source with
 * IP_FREEBIND/IPV6_FREEBIND and IP_BIND_ADDRESS_NO_PORT. Port accounting is
 * per (source, destination) pair as for a list, but only pairs in use are
 * kept: memory grows with the connections, not with the prefix.
 *
 * The route is checked now (RTM_GETROUTE for an address of the prefix):
 * without one, UV_EADDRNOTAVAIL and errbuf (when not NULL) says which
 * route is missing and the command that adds it. Other errors: UV_EINVAL
 * (bad argument; errbuf says which), UV_ENOMEM, or the netlink socket's.
 *
 * For such a connector uvip_connector_source_count() is 1,
 * uvip_connector_source() NULL and uvip_connector_stats(c, 0, ...) the
 * totals over the prefix; uvip_connector_ports() and
 * uvip_connector_correct() take any address of the prefix (UV_ENOENT
 * outside it). The `source` given to the connect callback and returned by
 * uvip_outconn_source() is valid while the connection is open. */
int uvip_connector_new_prefix(uv_loop_t *loop, const uvip_prefix_t *prefix,
                              uvip_prefix_policy_t policy,
                              const uvip_connector_options_t *opts,
                              char *errbuf, size_t errlen,
                              uvip_connector_t **out);

/* The connector's source prefix: 0, or UV_ENOENT for a connector made by
 * uvip_connector_new() (UV_EINVAL for NULL arguments). */
int uvip_connector_prefix(const uvip_connector_t *connector,
                          uvip_prefix_t *out);

/* The number of distinct source addresses of a prefix connector that hold
 * a connection or a correction now (0 for a list connector). */
size_t uvip_connector_prefix_in_use(const uvip_connector_t *connector);

/* Called once per uvip_connect() that returned 0, on the loop thread and
 * never from inside uvip_connect(). `source` is the pool address the
 * connection was made from (port 0), or NULL for the kernel's choice; it
 * stays valid while the connector lives.
 *
 * status 0: connected. The connection is the application's until it calls
 * uvip_outconn_close().
 * status < 0: the connect failed (UV_ECONNREFUSED, UV_ETIMEDOUT, ...) or
 * was cancelled (UV_ECANCELED: uvip_outconn_close() or
 * uvip_connector_close() before it completed). The library closes and
 * frees the connection right after this callback returns; the application
 * must not close it. */
typedef void (*uvip_connect_cb)(uvip_outconn_t *conn, int status,
                                const struct sockaddr *source);

/* Starts a connection to dest (IPv4 or IPv6, port not 0).
 *
 * The source is the pool address of dest's family with the most free ports
 * for dest (ties go round-robin). Its socket is bound with
 * IP_BIND_ADDRESS_NO_PORT, so the kernel picks the port per 4-tuple at
 * connect() time. When bind() or connect() fails with EADDRNOTAVAIL or
 * EADDRINUSE the pair is marked exhausted and the next source is tried; a
 * pair stays exhausted until one of the connector's connections on it that
 * had a port closes (or uvip_connector_correct() reports free ports). Finding a source
 * costs O(number of sources).
 *
 * `data` is stored in the uv_tcp_t's data field before cb runs. *out (out
 * may be NULL) receives the connection at once, so that it can be closed
 * before it completes.
 *
 * Errors (cb will not run, nothing is left open): UV_EINVAL (bad argument,
 * or the connector is closing), UV_EAFNOSUPPORT (no source of dest's
 * family), UV_EADDRNOTAVAIL (every source of the pool is exhausted for
 * dest: no ephemeral port is left for any (source, dest) pair, or no source
 * address can be bound), UV_EMFILE, UV_ENFILE, UV_ENOMEM, or another error
 * of socket()/bind()/connect(), which is not failed over. */
int uvip_connect(uvip_connector_t *connector, const struct sockaddr *dest,
                 void *data, uvip_connect_cb cb, uvip_outconn_t **out);

/* With proxy_version set: the addresses the connection's PROXY header
 * carries, typically those of the client a proxy relays (src) and of the
 * address that client addressed (dst); both IPv4 or both IPv6. Both NULL
 * sends a header without addresses (v2 LOCAL, v1 UNKNOWN). Call it after
 * uvip_connect() and before the connection completes (the header is
 * written then). UV_EINVAL for bad arguments, a connector without
 * proxy_version, or a connection that is no longer connecting; UV_ENOMEM. */
int uvip_outconn_set_proxy(uvip_outconn_t *conn, const struct sockaddr *src,
                           const struct sockaddr *dst);

typedef void (*uvip_outconn_close_cb)(uvip_outconn_t *conn);

/* Closes a connection. Its port is given back to the accounting once the
 * handle is closed, then cb (if any) runs, then the memory is freed. A
 * connection still connecting gets its connect callback with UV_ECANCELED
 * first. UV_EALREADY if it is already closing (or failed: the library
 * closes failed connections itself). */
int uvip_outconn_close(uvip_outconn_t *conn, uvip_outconn_close_cb cb);

/* The connection's libuv handle, for uv_read_start(), uv_write()... Its
 * `data` field belongs to the application. Never uv_close() it directly:
 * that would leak the port accounting; use uvip_outconn_close(). */
uv_tcp_t *uvip_outconn_tcp(uvip_outconn_t *conn);
uv_stream_t *uvip_outconn_stream(uvip_outconn_t *conn);

/* The connection that owns a handle from uvip_outconn_tcp(). */
uvip_outconn_t *uvip_outconn_from_tcp(uv_tcp_t *tcp);

/* The pool address the connection uses (port 0), NULL for the kernel's
 * choice, and its destination. Valid while the connection is open. */
const struct sockaddr *uvip_outconn_source(const uvip_outconn_t *conn);
const struct sockaddr *uvip_outconn_dest(const uvip_outconn_t *conn);

/* The number of sources: the pool's size, or 1 (the kernel's-choice
 * pseudo-source) for an empty pool. */
size_t uvip_connector_source_count(const uvip_connector_t *connector);

/* The i-th source address (port 0). NULL when out of range and for the
 * kernel's-choice pseudo-source. */
const struct sockaddr *uvip_connector_source(const uvip_connector_t *connector,
                                             size_t i);

/* Per-source counters. */
typedef struct uvip_connector_stats_s {
  uint64_t in_use;    /* connections open or connecting now */
  uint64_t connected; /* connects that succeeded */
  uint64_t failed;    /* attempts that failed for another reason than a
                         lack of ports (refused, timed out, ...) */
  uint64_t exhausted; /* times the kernel had no port left for a pair (or
                         could not bind the address) and the connector
                         moved on */
} uvip_connector_stats_t;

/* Counters of the i-th source. UV_EINVAL when i is out of range. */
int uvip_connector_stats(const uvip_connector_t *connector, size_t i,
                         uvip_connector_stats_t *out);

/* Port accounting of one (source, destination) pair. */
typedef struct uvip_connector_ports_s {
  uint64_t range;  /* usable ephemeral ports */
  uint64_t in_use; /* this connector's connections on the pair */
  uint64_t others; /* other sockets on the pair, per uvip_connector_correct() */
  int exhausted;   /* 1 after the kernel refused a port for the pair, until
                      one of the connector's connections on it that had a
                      port closes */
} uvip_connector_ports_t;

/* Accounting for source -> dest. source is a pool address (its port is
 * ignored) or NULL for the kernel's-choice pseudo-source. A pair the
 * connector never used reads as all free. UV_ENOENT when source is not in
 * the pool. */
int uvip_connector_ports(const uvip_connector_t *connector,
                         const struct sockaddr *source,
                         const struct sockaddr *dest,
                         uvip_connector_ports_t *out);

/* Corrects the accounting with a count from outside, typically a sock_diag
 * census: `sockets` is the number of TCP sockets of every owner (any state,
 * TIME_WAIT included) using source -> dest now. What exceeds the connector's
 * own count is charged to others until the next correction; when it leaves
 * ports free the pair stops being exhausted. Arguments as for
 * uvip_connector_ports(). Returns 0, UV_EINVAL, UV_ENOENT or UV_ENOMEM. */
int uvip_connector_correct(uvip_connector_t *connector,
                           const struct sockaddr *source,
                           const struct sockaddr *dest, uint64_t sockets);

typedef void (*uvip_connector_close_cb)(uvip_connector_t *connector);

/* Closes every connection still open (as uvip_outconn_close() without a
 * callback would; connects in progress complete with UV_ECANCELED), then,
 * once they are all closed, calls cb (may be NULL) from the loop and frees
 * the connector. uvip_connect() fails with UV_EINVAL from now on. Call it
 * once; UV_EALREADY after that. */
int uvip_connector_close(uvip_connector_t *connector,
                         uvip_connector_close_cb cb);

#ifdef __cplusplus
}
#endif

#endif /* UVIP_CONNECTOR_H */
