/* uvip: hold very many TCP connections on one machine with libuv and a pool
 * of virtual IP addresses (VIPs).
 *
 * SPDX-License-Identifier: MIT
 *
 * Conventions (the same as libuv's):
 *  - Every function that can fail returns 0 or a negative libuv error code
 *    (UV_EINVAL, UV_EADDRNOTAVAIL, ...), so uv_strerror() and uv_err_name()
 *    work on it.
 *  - Objects are opaque and created by uvip_x_new(..., uvip_x_t **out).
 *  - Every function checks its arguments first and returns UV_EINVAL for a
 *    NULL object or an out-of-range value.
 *  - Objects bound to a uv_loop_t must only be used from that loop's thread.
 *  - If a function that takes a callback fails, the callback never runs.
 *  - Closing is asynchronous: the close callback is the last call the library
 *    makes about an object; the object's memory is released right after that
 *    callback returns, so the pointer must not be used from then on.
 */
#ifndef UVIP_H
#define UVIP_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#ifdef __cplusplus
extern "C" {
#endif

#define UVIP_VERSION_MAJOR 0
#define UVIP_VERSION_MINOR 1
#define UVIP_VERSION_PATCH 0
#define UVIP_VERSION_HEX                                                       \
  ((UVIP_VERSION_MAJOR << 16) | (UVIP_VERSION_MINOR << 8) | UVIP_VERSION_PATCH)

/* The version of the library linked at run time, as UVIP_VERSION_HEX. */
unsigned int uvip_version(void);

/* The version of the library linked at run time, as "MAJOR.MINOR.PATCH". */
const char *uvip_version_string(void);

/* ------------------------------------------------------------------------ */
/* Address lists and address specs                                          */
/* ------------------------------------------------------------------------ */

/* The most addresses one spec (and one list) may expand to. */
#define UVIP_ADDRS_MAX 65536

/* Room for any address uvip_addr_format() writes, with its NUL. */
#define UVIP_ADDRSTRLEN 56

/* An ordered list of distinct socket addresses (IPv4 or IPv6 plus port). */
typedef struct uvip_addrs_s uvip_addrs_t;

/* Creates an empty list. Returns 0, UV_EINVAL or UV_ENOMEM. */
int uvip_addrs_new(uvip_addrs_t **out);

/* Frees a list. NULL is allowed and ignored. */
void uvip_addrs_free(uvip_addrs_t *addrs);

/* Parses an address spec and appends its addresses to the list.
 *
 * A spec is a comma-separated list of items; each item is one of
 *   A            one address, IPv4 ("10.0.0.1") or IPv6 ("fd00::1")
 *   A/N          the addresses a host may own on the prefix: the all-zero
 *                host address is left out (IPv4 network address, IPv6
 *                Subnet-Router anycast), and for IPv4 the broadcast one,
 *                except on /31 and /127 (point to point) and /32, /128
 *   A-B          every address from A to B inclusive, same family, A <= B
 *   A:PORT       IPv4 with a port
 *   [V6]         IPv6 in brackets, [V6]:PORT with a port
 * A port written in the item wins over default_port (0..65535). A trailing
 * ":PORT" applies to prefixes and ranges too ("10.0.0.0/30:80").
 *
 * All or nothing: on any error the list is left exactly as it was. Errors:
 * UV_EINVAL (malformed spec), UV_EEXIST (an address:port is already in the
 * list or repeated in the spec), UV_E2BIG (the list would exceed
 * UVIP_ADDRS_MAX addresses), UV_ENOMEM. When errbuf is not NULL it receives a
 * one-line message naming the offending part and its byte offset, e.g.
 * "bad prefix length '33' at offset 12".
 */
int uvip_addrs_parse(uvip_addrs_t *addrs, const char *spec, int default_port,
                     char *errbuf, size_t errlen);

/* Appends one address (AF_INET or AF_INET6). UV_EEXIST if already present,
 * UV_EAFNOSUPPORT for another family, UV_E2BIG when full. */
int uvip_addrs_add(uvip_addrs_t *addrs, const struct sockaddr *sa);

/* The number of addresses in the list (0 for NULL). */
size_t uvip_addrs_count(const uvip_addrs_t *addrs);

/* The i-th address (sockaddr_in or sockaddr_in6), or NULL when out of
 * range. The pointer stays valid until the list is changed or freed. */
const struct sockaddr *uvip_addrs_at(const uvip_addrs_t *addrs, size_t i);

/* Index of an address (address and port must match), or UV_ENOENT. */
int uvip_addrs_find(const uvip_addrs_t *addrs, const struct sockaddr *sa);

/* Writes "1.2.3.4:80" or "[fd00::1]:80" (port left out when with_port is 0).
 * Returns 0, UV_EINVAL or UV_ENOSPC. */
int uvip_addr_format(const struct sockaddr *sa, int with_port, char *buf,
                     size_t len);

/* ------------------------------------------------------------------------ */
/* Prefixes used whole, as pools (never expanded into a list)               */
/* ------------------------------------------------------------------------ */

/* An IP prefix: every address that starts with len bits of addr. Used as a
 * pool of source addresses by uvip_connector_new_prefix() and as the
 * destination of a local route by uvip_provision_new_local_route(), so that
 * a whole IPv6 /64 (2^64 addresses) can be used without listing it. */
typedef struct uvip_prefix_s {
  int family;       /* AF_INET or AF_INET6 */
  unsigned int len; /* 0..32 (IPv4) or 0..128 (IPv6) */
  union {
    struct in_addr v4;
    struct in6_addr v6;
  } addr; /* network byte order, the host bits zero */
} uvip_prefix_t;

/* Room for any prefix uvip_prefix_format() writes, with its NUL. */
#define UVIP_PREFIXSTRLEN 52

/* Parses one prefix "A/N" (IPv4 or IPv6, also "[V6/N]"; whitespace around
 * it is ignored). Host bits set in A are allowed and cleared, as in address
 * specs. Unlike uvip_addrs_parse() nothing is expanded, so any length is
 * fine ("fd00::/64", "10.0.0.0/8"). No port and no list. Errors: UV_EINVAL
 * with a one-line message in errbuf (when not NULL) naming the offending
 * part and its offset, e.g. "bad prefix length '65x' at offset 8". */
int uvip_prefix_parse(const char *spec, uvip_prefix_t *out, char *errbuf,
                      size_t errlen);

/* Writes "10.0.0.0/24" or "fd00:1::/64". Returns 0, UV_EINVAL or UV_ENOSPC
 * (the buffer is then an empty string). */
int uvip_prefix_format(const uvip_prefix_t *prefix, char *buf, size_t len);

/* 1 when sa (sockaddr_in or sockaddr_in6; the port is ignored) is inside
 * the prefix, 0 when not (or another family), UV_EINVAL for a NULL
 * argument or an invalid prefix. */
int uvip_prefix_contains(const uvip_prefix_t *prefix,
                         const struct sockaddr *sa);

/* ------------------------------------------------------------------------ */
/* Server: one listening socket per VIP, a fair accept scheduler            */
/* ------------------------------------------------------------------------ */

typedef struct uvip_server_s uvip_server_t;
typedef struct uvip_vip_s uvip_vip_t;
typedef struct uvip_conn_s uvip_conn_t;

/* Listener flags (uvip_server_options_t.flags). */
enum {
  /* SO_REUSEPORT on every listening socket. */
  UVIP_REUSEPORT = 1u << 0,
  /* IP_FREEBIND: bind a VIP even before the address exists on the host. */
  UVIP_FREEBIND = 1u << 1,
  /* Fail uvip_server_listen() if any VIP cannot be bound (nothing stays
   * bound). Without it the server serves the VIPs that bound. */
  UVIP_ALL_OR_NOTHING = 1u << 2,
  /* Leave IPV6_V6ONLY off on IPv6 listeners (it is on by default so that
   * "::" and "0.0.0.0" can both be VIPs). */
  UVIP_DUALSTACK = 1u << 3,
  /* TCP_NODELAY on the listening sockets: Linux gives it to every accepted
   * connection, which saves the application a system call per connection
   * (uv_tcp_nodelay()). */
  UVIP_NODELAY = 1u << 4,
  /* Let uvip_server_listen() succeed with no VIP bound (or none at all):
   * for pools whose addresses come later (uvip_server_add_vip(),
   * uvip_vip_resume(), the live pool). */
  UVIP_ALLOW_EMPTY = 1u << 5,
  /* systemd socket activation: uvip_server_listen() first adopts the
   * sockets passed by LISTEN_FDS/LISTEN_PID (uvip_listen_fds(),
   * uvip_server_adopt() in <uvip/restart.h>) and binds only the VIPs they
   * do not cover. Not activated (no LISTEN_FDS): binds as usual. */
  UVIP_SOCKET_ACTIVATION = 1u << 6,
  /* Require a PROXY protocol header (v1 or v2, <uvip/proxy.h>) at the start
   * of every accepted connection. The library reads it, without reading a
   * byte past it, before connection_cb runs; uvip_conn_peer() and
   * uvip_conn_local() then give the addresses it carries. A connection
   * whose header is missing, malformed, oversized, or not complete within
   * proxy_timeout_ms is closed (the application never sees it) and counted
   * in its VIP's proxy_* counters. Sockets waiting for their header hold a
   * slot of the caps. Not with workers that hand descriptors over
   * (uvip_workers_new() returns UV_ENOTSUP); UVIP_BALANCE_REUSEPORT workers
   * read the header on their own loops. See docs/proxy.md. */
  UVIP_PROXY_PROTOCOL = 1u << 7
};

typedef struct uvip_server_options_s {
  /* Accepts per listener per loop turn (default 4, 1..1024). */
  unsigned int accept_budget;
  /* Connections open at once over all VIPs; 0 = no cap. */
  uint64_t max_conns;
  /* Connections open at once on one VIP; 0 = no cap. */
  uint64_t max_conns_per_vip;
  /* listen() backlog; 0 = the value of net.core.somaxconn. */
  int backlog;
  /* UVIP_REUSEPORT | UVIP_FREEBIND | UVIP_ALL_OR_NOTHING | UVIP_DUALSTACK |
   * UVIP_NODELAY | UVIP_ALLOW_EMPTY | UVIP_SOCKET_ACTIVATION |
   * UVIP_PROXY_PROTOCOL */
  unsigned int flags;
  /* TCP_DEFER_ACCEPT seconds; 0 = off. */
  int defer_accept_secs;
  /* TCP_FASTOPEN queue length; 0 = off. */
  int fastopen_qlen;
  /* First back-off after EMFILE/ENFILE/ENOBUFS/ENOMEM (or an accept error
   * the library does not know) on accept, doubled up to 1 s while the error
   * persists (default 50 ms; 0 = the default; values above 1000 act as
   * 1000). Accepting also resumes as soon as one of the server's
   * connections closes. */
  unsigned int backoff_ms;
  /* Called, if set, for every connection the library closes on its own
   * (uvip_server_close_conns(), a drain timeout) so that the application
   * can free what it hung on the connection. It runs like a close callback
   * given to uvip_conn_close(). */
  void (*conn_close_cb)(uvip_conn_t *conn);
  /* UVIP_PROXY_PROTOCOL: the time a connection has from its accept to send
   * a complete header (default 3000 ms; 0 = the default). */
  unsigned int proxy_timeout_ms;
} uvip_server_options_t;

/* Fills the options with their defaults. Returns 0 or UV_EINVAL. */
int uvip_server_options_init(uvip_server_options_t *opts);

/* Called for every accepted connection, on the loop thread. The connection
 * is already counted against the caps; it stays counted until the
 * application closes it with uvip_conn_close(). */
typedef void (*uvip_connection_cb)(uvip_server_t *server, uvip_conn_t *conn);

/* Called once the server and all its connections are closed. */
typedef void (*uvip_server_close_cb)(uvip_server_t *server);

/* Creates a server for every address of addrs (which is copied; addresses
 * with port 0 are an error) on loop. opts may be NULL for defaults. Nothing
 * is bound yet. Errors: UV_EINVAL, UV_ENOMEM. */
int uvip_server_new(uv_loop_t *loop, const uvip_addrs_t *addrs,
                    const uvip_server_options_t *opts, uvip_server_t **out);

/* Binds and listens on every VIP and starts accepting; cb runs for each
 * connection. A VIP that fails keeps its error (uvip_vip_error()).
 * Returns 0 when at least one VIP listens (all of them with
 * UVIP_ALL_OR_NOTHING); otherwise the first VIP's error, with nothing left
 * bound. When errbuf is given it receives "ADDRESS: error" for the first
 * failure. UV_EALREADY if called twice. */
int uvip_server_listen(uvip_server_t *server, uvip_connection_cb cb,
                       char *errbuf, size_t errlen);

/* Stops accepting and closes every listening socket; open connections keep
 * running and stay counted. Queued, not yet accepted connections are reset
 * by the kernel. With workers in UVIP_BALANCE_REUSEPORT mode (which accept
 * on sockets of their own) each worker is told to stop its listeners, on
 * its own loop: asynchronously, after this returns; it first accepts what
 * is queued on them (within its caps), so that only what arrives in
 * between is reset (or moved to another socket of the SO_REUSEPORT group
 * with net.ipv4.tcp_migrate_req=1). Idempotent. */
int uvip_server_stop(uvip_server_t *server);

/* Stops accepting but keeps every listening socket open, unlike
 * uvip_server_stop() and uvip_vip_pause() (which close them): connections
 * go on queueing in the kernel, for another process that shares the sockets
 * (a new generation on probation, <uvip/restart.h>) or for this one once
 * uvip_server_unhold() is called. VIPs stay UVIP_VIP_LISTENING, open
 * connections run on, and the server keeps its loop alive. Workers in
 * UVIP_BALANCE_REUSEPORT mode accept on sockets of their own, which are not
 * held. Idempotent. UV_EINVAL unless the server listens
 * (uvip_server_is_listening()). */
int uvip_server_hold(uvip_server_t *server);

/* Accepts again after uvip_server_hold(), starting with what queued
 * meanwhile (each listener is tried at once). 0 also when the server is not
 * held; on a server stopped or closed meanwhile it only clears the hold.
 * UV_EINVAL for NULL. */
int uvip_server_unhold(uvip_server_t *server);

/* 1 while the server listens but is held (uvip_server_hold()), else 0. */
int uvip_server_is_held(const uvip_server_t *server);

/* Closes every open connection of the server (as uvip_conn_close() with no
 * callback would). Connection close callbacks still run. With workers
 * (<uvip/workers.h>), every running worker is also told to close the
 * connections it holds (those handed to it, or in REUSEPORT mode accepted
 * by it), with the server's conn_close_cb, on its own loop: this returns
 * before they are closed, their close callbacks run on their worker, and
 * their slots come back to the caps and to uvip_workers_stats() as the
 * closes are reported. The workers keep accepting new connections. Not
 * needed once uvip_workers_close() was called (it closes them all).
 * Returns 0; UV_EINVAL for NULL; or the first error met telling a worker
 * process (the other workers are still told; that one keeps its
 * connections). */
int uvip_server_close_conns(uvip_server_t *server);

/* Told, during a drain, that a connection is going away: an HTTP server
 * adds "Connection: close" to its next response, a protocol with a goodbye
 * message sends it. The connection may be closed from the callback. */
typedef void (*uvip_conn_going_away_cb)(uvip_conn_t *conn);

/* Drains the server: stops accepting (uvip_server_stop()), calls
 * going_away (if not NULL) once for every open connection, and after
 * timeout_ms (0 = no deadline) closes those still open (as
 * uvip_server_close_conns() would, with the server's conn_close_cb). Then
 * uvip_server_close() completes as the connections end. Connections held by
 * workers are not walked (uvip_server_close_conns() reaches them). Calling
 * it again walks again and restarts the deadline. UV_ECANCELED once the
 * server is finishing its close. */
int uvip_server_drain(uvip_server_t *server, uint64_t timeout_ms,
                      uvip_conn_going_away_cb going_away);

/* Stops the server (uvip_server_stop()) and, once every connection has been
 * closed by the application (or by uvip_server_close_conns()) and every
 * removed VIP has finished draining (its drain callback ran), calls cb from
 * the loop and frees the server and its VIPs. It may be called from any
 * callback, in any order with remove_vip/close_conns/stop; cb runs exactly
 * once and is the last call about the server. Call it once (UV_EALREADY
 * after that). A listening server keeps its loop alive (also while parked
 * at a cap), as a listening uv_tcp_t does; a stopped one does not.
 * UV_EBUSY, with nothing changed, while workers (<uvip/workers.h>) or a live
 * pool (<uvip/provision.h>) are still attached to the server: close those
 * first, and close the server from their close callback. */
int uvip_server_close(uvip_server_t *server, uvip_server_close_cb cb);

uv_loop_t *uvip_server_loop(const uvip_server_t *server);
void *uvip_server_get_data(const uvip_server_t *server);
void uvip_server_set_data(uvip_server_t *server, void *data);

/* The number of VIPs and the i-th VIP (NULL when out of range). */
size_t uvip_server_vip_count(const uvip_server_t *server);
uvip_vip_t *uvip_server_vip(const uvip_server_t *server, size_t i);

/* Adds one VIP to a server (listening at once if the server listens).
 * UV_EEXIST if it is already a VIP. On a bind failure the VIP is not
 * added and the error is returned. *out may be NULL. */
int uvip_server_add_vip(uvip_server_t *server, const struct sockaddr *sa,
                        uvip_vip_t **out);

/* Called from the loop (never from inside uvip_server_remove_vip() nor from
 * inside a connection's close callback) when a removed VIP has no
 * connections left (or its timeout ran out and the rest were closed); the
 * VIP has left the server's list and is freed right after. */
typedef void (*uvip_vip_drain_cb)(uvip_vip_t *vip, int closed_by_timeout);

/* Drains a VIP: closes its listener now, lets its connections finish, closes
 * those still open after timeout_ms (0 = wait for ever), then calls cb and
 * removes the VIP from the server. Other VIPs are not touched. Allowed while
 * the server is closing (its close then waits for this drain). UV_EALREADY
 * if the VIP is already draining; UV_ECANCELED once the server has
 * nothing left to wait for and is finishing its close. */
int uvip_server_remove_vip(uvip_server_t *server, uvip_vip_t *vip,
                           uint64_t timeout_ms, uvip_vip_drain_cb cb);

/* Per-VIP (or, for uvip_server_stats(), summed) counters. */
typedef struct uvip_vip_stats_s {
  uint64_t accepted;  /* connections accepted */
  uint64_t active;    /* open now */
  uint64_t closed;    /* closed through uvip_conn_close() */
  uint64_t deferred;  /* turns this queue had work but a cap held it back */
  uint64_t err_emfile, err_enfile, err_enobufs, err_enomem;
  uint64_t err_aborted; /* ECONNABORTED, EPROTO, EPERM...: skipped */
  uint64_t err_other;
  uint64_t backoffs; /* times accepting paused for lack of resources */
  /* UVIP_PROXY_PROTOCOL. A socket waiting for its header is counted in
   * accepted and active; one closed for a bad or late header is counted in
   * closed and in one of the proxy_* reasons below, and never reaches the
   * application. */
  uint64_t proxy_pending;   /* waiting for their header now */
  uint64_t proxy_local;     /* headers without a client's addresses (v2
                               LOCAL or UNSPEC, v1 UNKNOWN): delivered with
                               the socket's own addresses */
  uint64_t proxy_missing;   /* the first bytes were not a PROXY header */
  uint64_t proxy_malformed; /* a PROXY header with a bad field */
  uint64_t proxy_oversized; /* a v1 line over 107 bytes, a v2 header over
                               UVIP_PROXY_RECV_MAX */
  uint64_t proxy_timeout;   /* not complete within proxy_timeout_ms */
  uint64_t proxy_eof;       /* closed or reset by the peer before the end of
                               the header */
  uint64_t proxy_dropped;   /* waiting when its VIP stopped listening
                               (server stopped or drained, VIP paused or
                               removed), or out of memory */
} uvip_vip_stats_t;

int uvip_server_stats(const uvip_server_t *server, uvip_vip_stats_t *out);

/* VIP state. */
typedef enum {
  UVIP_VIP_IDLE = 0,  /* not listening yet */
  UVIP_VIP_LISTENING, /* accepting */
  UVIP_VIP_FAILED,    /* bind or listen failed: see uvip_vip_error() */
  UVIP_VIP_DRAINING,  /* removed, waiting for its connections */
  UVIP_VIP_STOPPED,   /* listener closed (server stopped) */
  UVIP_VIP_PAUSED     /* listener closed by uvip_vip_pause() */
} uvip_vip_state_t;

/* The state's name, for logs, metrics labels and JSON: "idle", "listening",
 * "failed", "draining", "stopped", "paused"; NULL when state is none of
 * uvip_vip_state_t. */
const char *uvip_vip_state_name(int state);

const struct sockaddr *uvip_vip_addr(const uvip_vip_t *vip);
uvip_vip_state_t uvip_vip_state(const uvip_vip_t *vip);
int uvip_vip_error(const uvip_vip_t *vip);
int uvip_vip_stats(const uvip_vip_t *vip, uvip_vip_stats_t *out);
/* The listening socket's descriptor, or UV_EBADF when not listening. */
int uvip_vip_fd(const uvip_vip_t *vip);
uvip_server_t *uvip_vip_server(const uvip_vip_t *vip);

/* Accept weight of a VIP (1..64, default 1): a weight-w VIP gets w times
 * the accept budget per turn. */
int uvip_vip_set_weight(uvip_vip_t *vip, unsigned int weight);

/* Application data hung on a VIP (NULL at first). */
void *uvip_vip_get_data(const uvip_vip_t *vip);
void uvip_vip_set_data(uvip_vip_t *vip, void *data);

/* Closes a listening VIP's socket but keeps the VIP, its counters and its
 * connections (for an address that went away and may come back). Queued,
 * not yet accepted connections are reset by the kernel. UV_EINVAL unless
 * the VIP is listening. */
int uvip_vip_pause(uvip_vip_t *vip);

/* Binds and listens again on a paused or failed VIP of a listening server.
 * On failure the VIP is UVIP_VIP_FAILED with that error, which is returned.
 * UV_EINVAL in any other state or when the server does not listen. */
int uvip_vip_resume(uvip_vip_t *vip);

/* 1 while the server listens (uvip_server_listen() succeeded and it was
 * neither stopped nor closed), else 0. */
int uvip_server_is_listening(const uvip_server_t *server);

/* ------------------------------------------------------------------------ */
/* Inbound on a prefix: one listener for every address of a prefix          */
/* ------------------------------------------------------------------------ */

/* How the listener of uvip_server_add_prefix() takes the prefix's
 * connections (docs/prefix-pools.md weighs them). */
typedef enum {
  /* One socket on the wildcard address ([::]:PORT, 0.0.0.0:PORT) of the
   * prefix's family: with a local route for the prefix, the kernel hands
   * it the connections to every address of the prefix. Those addressed to
   * any other local address on the port are closed as they are accepted
   * (counted in uvip_prefix_stats_t.outside). Needs no privilege, but
   * takes the port on every address of the host. */
  UVIP_PREFIX_WILDCARD = 0,
  /* One socket bound (IP_FREEBIND) to the prefix's first address and a
   * port the kernel picks, and a BPF sk_lookup program attached to the
   * caller's network namespace that steers the TCP connections to any
   * address of the prefix on the port to it, before the kernel's own
   * lookup: the port stays free on the host's other addresses (another
   * program may even listen on its wildcard: it keeps the rest of the
   * port's connections). The VIP's address is the prefix's first address
   * with the port served, not the socket's own port. Needs CAP_BPF and
   * CAP_NET_ADMIN (Linux 5.9 or later); where the kernel refuses,
   * uvip_server_add_prefix() fails with its error (UV_EPERM...) and a
   * message saying which step was refused, with nothing set up. The
   * program stays attached until the VIP is freed (server closed, VIP
   * removed); while the VIP is paused or stopped, connections to the prefix
   * go to the kernel's own lookup. A local route is still needed. */
  UVIP_PREFIX_SK_LOOKUP = 1
} uvip_prefix_mode_t;

typedef struct uvip_prefix_listen_s {
  /* The prefix served; a local route must cover it ("ip -6 route add local
   * fd00:1::/64 dev lo", uvip_provision_new_local_route()). */
  uvip_prefix_t prefix;
  int port; /* 1..65535 */
  uvip_prefix_mode_t mode;
  /* Connections are accounted by group: the address they were sent to
   * with its first group_len bits kept (e.g. 112 on a /64: 2^48 groups of
   * 65,536 addresses). prefix.len..32 or ..128; 0 = prefix.len (the whole
   * prefix is one group). */
  unsigned int group_len;
  /* Connections open at once in one group; 0 = no cap. A connection to a
   * group at its cap is closed as soon as it is accepted (the listener has
   * one queue for all groups, so it cannot wait there without holding up
   * the others) and counted in group_refused. */
  uint64_t max_conns_per_group;
} uvip_prefix_listen_t;

/* Fills the options with their defaults (no prefix: set it). 0 or
 * UV_EINVAL. */
int uvip_prefix_listen_init(uvip_prefix_listen_t *opts);

/* Adds a VIP that serves every address of opts->prefix on opts->port; the
 * VIP's address (uvip_vip_addr()) is the socket's: the wildcard address,
 * or the prefix's first address (UVIP_PREFIX_SK_LOOKUP).
 * The VIP is otherwise an ordinary one: the server's caps, max_conns_per_vip
 * (for the whole prefix), weights, counters, pause/resume and drains apply.
 * It listens at once if the server listens, else at uvip_server_listen().
 * Checks first, with nothing set up on any error, and a one-line message in
 * errbuf (when not NULL):
 *  - UV_EINVAL: an invalid prefix or port, a group_len shorter than the
 *    prefix ("group /48 is shorter than the prefix fd00:1::/64") or longer
 *    than its family's addresses ("group /112 does not fit IPv4"), an
 *    unknown mode;
 *  - UV_EADDRNOTAVAIL: no local route covers the prefix (the message names
 *    the address found not local and the command that adds the route);
 *  - UV_EEXIST: the port's wildcard address is already a VIP of the server
 *    (another prefix listener of the family on that port, say);
 *  - UV_ENOTSUP: with UVIP_PROXY_PROTOCOL (the address a client addressed
 *    is then in the header, not the socket), or while workers
 *    (<uvip/workers.h>) are attached;
 *  - UVIP_PREFIX_SK_LOOKUP: the kernel's error where it refused the BPF
 *    map, program or link ("BPF sk_lookup refused: bpf(BPF_MAP_CREATE):
 *    operation not permitted (needs CAP_BPF and CAP_NET_ADMIN)");
 *  - a bind() or listen() error, UV_ENOMEM.
 * Connections reach connection_cb as for any VIP; uvip_conn_local() gives
 * the address the client addressed and uvip_conn_group() its group. Not
 * meant for servers with workers: hand-off workers attached later receive
 * the prefix's connections filtered but not grouped (group caps apply on
 * the server's loop only), and REUSEPORT workers bind the wildcard without
 * the filter. *out may be NULL. */
int uvip_server_add_prefix(uvip_server_t *server,
                           const uvip_prefix_listen_t *opts, char *errbuf,
                           size_t errlen, uvip_vip_t **out);

/* Counters of a prefix VIP. */
typedef struct uvip_prefix_stats_s {
  uint64_t outside;       /* addressed outside the prefix: closed */
  uint64_t group_refused; /* their group was at max_conns_per_group: closed */
  uint64_t groups;        /* groups with open connections now */
  uint64_t groups_peak;   /* the most groups open at once */
} uvip_prefix_stats_t;

/* UV_EINVAL for NULL or a VIP not made by uvip_server_add_prefix(). */
int uvip_vip_prefix_stats(const uvip_vip_t *vip, uvip_prefix_stats_t *out);

/* Sets *out to the number of open connections of the group of sa (its
 * port ignored) on a prefix VIP: 0 for a group without any, or for an
 * address outside the prefix. UV_EINVAL for NULL or a VIP that is not a
 * prefix VIP. */
int uvip_vip_group_active(const uvip_vip_t *vip, const struct sockaddr *sa,
                          uint64_t *out);

/* The group a connection of a prefix VIP is accounted to, as a prefix of
 * group_len bits. UV_ENOENT for a connection of another VIP (or one a
 * worker holds), UV_EINVAL for NULL. */
int uvip_conn_group(const uvip_conn_t *conn, uvip_prefix_t *out);

/* ------------------------------------------------------------------------ */
/* Connections                                                              */
/* ------------------------------------------------------------------------ */

typedef void (*uvip_conn_close_cb)(uvip_conn_t *conn);

/* The connection's libuv handle: use it with uv_read_start(), uv_write(),
 * uv_tcp_nodelay()... Its `data` field belongs to the application. Never
 * uv_close() it directly: close it with uvip_conn_close(). A connection
 * closed with uv_close() keeps its slot for ever (the server can then not
 * finish closing); the library reports it on stderr, and uvip_conn_close()
 * on it returns UV_EINVAL. */
uv_tcp_t *uvip_conn_tcp(uvip_conn_t *conn);
uv_stream_t *uvip_conn_stream(uvip_conn_t *conn);

/* The connection that owns a handle from uvip_conn_tcp(). */
uvip_conn_t *uvip_conn_from_tcp(uv_tcp_t *tcp);

/* The VIP the connection arrived on (valid while the connection is open). */
uvip_vip_t *uvip_conn_vip(const uvip_conn_t *conn);

/* The connection's peer and local addresses. With UVIP_PROXY_PROTOCOL and
 * a header that carries addresses, those of the header: the real client
 * (peer) and the address the client addressed (local), which usually is
 * the balancer's VIP rather than this socket's. Otherwise the socket's own
 * (getpeername(), getsockname()). Returns 0, UV_EINVAL, or the error of the
 * system call. */
int uvip_conn_peer(const uvip_conn_t *conn, struct sockaddr_storage *out);
int uvip_conn_local(const uvip_conn_t *conn, struct sockaddr_storage *out);

/* Whether a PROXY header was read for the connection: 0 no (the option is
 * off, or the connection came from a worker hand-off or a previous
 * generation, which keep no header), 1 yes with the client's addresses, 2
 * yes without (v2 LOCAL: the balancer's own health check; v2 UNSPEC, v1
 * UNKNOWN): uvip_conn_peer() is then the balancer. UV_EINVAL for NULL. */
int uvip_conn_proxy(const uvip_conn_t *conn);

/* Closes the connection. Its slot is given back to the caps once the handle
 * is closed (the server's and VIP's counters already show it closed when cb
 * runs), then cb (if any) runs, then the memory is freed. Calling it twice
 * is UV_EALREADY; UV_EINVAL if the handle was closed with uv_close(). */
int uvip_conn_close(uvip_conn_t *conn, uvip_conn_close_cb cb);

#ifdef __cplusplus
}
#endif

#include "uvip/census.h"
#include "uvip/provision.h"
#include "uvip/workers.h"
#include "uvip/connector.h"
#include "uvip/restart.h"
#include "uvip/proxy.h"

#endif /* UVIP_H */
