/* uvip: provision API. Included by <uvip.h>; do not include directly.
 *
 * Two parts:
 *  - uvip_provision_t adds a pool's addresses to a network interface through
 *    rtnetlink and later removes exactly the ones it added. It is not bound
 *    to a loop: its calls are synchronous (a few netlink round trips to the
 *    local kernel) and may be made from any one thread at a time.
 *  - uvip_addrwatch_t (address events on a loop) and uvip_livepool_t (keeps
 *    a server's listeners in step with the addresses present on the host).
 *
 * Adding or removing addresses needs CAP_NET_ADMIN in the network namespace
 * of the calling thread. See docs/provisioning.md.
 *
 * SPDX-License-Identifier: MIT */
#ifndef UVIP_PROVISION_H
#define UVIP_PROVISION_H

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Provisioning: add and remove a pool's addresses on an interface          */
/* ------------------------------------------------------------------------ */

typedef struct uvip_provision_s uvip_provision_t;

/* Provisioning flags (uvip_provision_options_t.flags). */
enum {
  /* Run IPv6 duplicate address detection. By default IPv6 addresses are
   * added with IFA_F_NODAD so that they can be bound at once; with DAD they
   * stay "tentative" (not bindable) for about a second. */
  UVIP_PROVISION_DAD = 1u << 0
};

typedef struct uvip_provision_options_s {
  /* Prefix length of added IPv4 addresses (default 32, 1..32). */
  unsigned int prefixlen4;
  /* Prefix length of added IPv6 addresses (default 128, 1..128). */
  unsigned int prefixlen6;
  /* UVIP_PROVISION_DAD */
  unsigned int flags;
} uvip_provision_options_t;

/* What a provisioner knows about one of its addresses. */
typedef enum {
  /* Not on the interface as far as uvip knows (before uvip_provision_apply(),
   * after uvip_provision_release(), or rolled back). */
  UVIP_PROVISION_ABSENT = 0,
  /* Added by this provisioner: uvip_provision_release() removes it. */
  UVIP_PROVISION_ADDED = 1,
  /* Was already on the interface: left alone, never removed by uvip. */
  UVIP_PROVISION_FOREIGN = 2
} uvip_provision_state_t;

/* Fills the options with their defaults. Returns 0 or UV_EINVAL. */
int uvip_provision_options_init(uvip_provision_options_t *opts);

/* Creates a provisioner for the distinct IP addresses of addrs (ports are
 * ignored; the list is copied) on the interface named ifname. Nothing is
 * changed on the host yet. opts may be NULL for the defaults.
 * Errors: UV_EINVAL (bad argument, empty list, or an address that cannot be
 * an interface address: unspecified, multicast, IPv4-mapped), UV_ENODEV (no
 * such interface), UV_ENOMEM. */
int uvip_provision_new(const char *ifname, const uvip_addrs_t *addrs,
                       const uvip_provision_options_t *opts,
                       uvip_provision_t **out);

/* Creates a provisioner for one local route: "ip route add local PREFIX
 * dev IFNAME" (table local, type local, proto static), which makes every
 * address of the prefix bindable without adding any ("AnyIP"); see
 * uvip_connector_new_prefix(). The other calls work on it as on addresses:
 * uvip_provision_apply() adds the route unless it is there already (then
 * it is UVIP_PROVISION_FOREIGN and never removed; one this provisioner
 * added and still finds stays UVIP_PROVISION_ADDED), release() and free()
 * remove it only when this provisioner added it, count() is 1, addr(0) is
 * the prefix's network address. Errors of apply() name the route, e.g.
 * "add local route fd00:1::/64 dev lo: operation not permitted".
 * Errors here: UV_EINVAL (bad argument, a /0, a multicast or IPv4-mapped
 * prefix), UV_ENODEV (no such interface), UV_ENOMEM. opts may be NULL;
 * its prefix lengths do not apply. */
int uvip_provision_new_local_route(const char *ifname,
                                   const uvip_prefix_t *prefix,
                                   const uvip_provision_options_t *opts,
                                   uvip_provision_t **out);

/* Adds the addresses that are missing from the interface. Addresses already
 * on it (with any prefix length) are recorded as UVIP_PROVISION_FOREIGN and
 * left alone; addresses added by an earlier call stay UVIP_PROVISION_ADDED.
 * Calling it again re-adds addresses that have gone away since.
 *
 * All or nothing for this call: if the kernel refuses one address, the
 * addresses this call added are removed again and the error is returned:
 * UV_EPERM (no CAP_NET_ADMIN), UV_ENODEV (the interface has gone), or
 * whatever the kernel said. When errbuf is not NULL it receives a one-line
 * message naming the address, e.g. "add 10.0.0.7/32 to eth0: operation not
 * permitted". */
int uvip_provision_apply(uvip_provision_t *prov, char *errbuf, size_t errlen);

/* Removes the addresses this provisioner added (UVIP_PROVISION_ADDED) and
 * only those. An address someone else already removed counts as removed.
 * Goes on after an error and returns the first one (errbuf as above); the
 * addresses that could not be removed stay UVIP_PROVISION_ADDED, so the call
 * can be retried. */
int uvip_provision_release(uvip_provision_t *prov, char *errbuf,
                           size_t errlen);

/* Releases (as uvip_provision_release(), ignoring errors: call that first to
 * see them) and frees the provisioner at once. NULL is ignored. */
void uvip_provision_free(uvip_provision_t *prov);

/* The number of distinct addresses, and the i-th one (port 0), in the order
 * of the list given to uvip_provision_new(). NULL when out of range. */
size_t uvip_provision_count(const uvip_provision_t *prov);
const struct sockaddr *uvip_provision_addr(const uvip_provision_t *prov,
                                           size_t i);

/* The state of the i-th address (a uvip_provision_state_t), or UV_EINVAL. */
int uvip_provision_state(const uvip_provision_t *prov, size_t i);

/* ------------------------------------------------------------------------ */
/* Address events                                                           */
/* ------------------------------------------------------------------------ */

typedef struct uvip_addrwatch_s uvip_addrwatch_t;

typedef enum {
  /* An address was added or changed (flags changed, e.g. an IPv6 address
   * finished duplicate address detection). */
  UVIP_ADDR_NEW = 1,
  /* An address was removed. */
  UVIP_ADDR_DEL = 2,
  /* The kernel dropped events (socket buffer overrun): the receiver must
   * re-read the state it cares about. addr is NULL. */
  UVIP_ADDR_OVERRUN = 3
} uvip_addr_event_t;

/* Called on the loop thread for each address event. addr is a sockaddr_in
 * or sockaddr_in6 with port 0 (an IPv6 link-local address carries ifindex
 * in sin6_scope_id), valid during the call only. flags are the kernel's IFA_F_* flags (an
 * address with IFA_F_TENTATIVE cannot be bound yet). */
typedef void (*uvip_addrwatch_cb)(uvip_addrwatch_t *watch,
                                  uvip_addr_event_t event,
                                  const struct sockaddr *addr,
                                  unsigned int ifindex, unsigned int prefixlen,
                                  unsigned int flags);

typedef void (*uvip_addrwatch_close_cb)(uvip_addrwatch_t *watch);

/* Opens an rtnetlink socket subscribed to IPv4 and IPv6 address events and
 * attaches it to loop (nothing is reported before uvip_addrwatch_start()).
 * Needs no privilege. Errors: UV_EINVAL, UV_ENOMEM, or the socket's error. */
int uvip_addrwatch_new(uv_loop_t *loop, uvip_addrwatch_t **out);

/* Starts reporting events to cb. UV_EALREADY if already started. */
int uvip_addrwatch_start(uvip_addrwatch_t *watch, uvip_addrwatch_cb cb);

/* Stops reporting. Events that happen while stopped are queued by the
 * kernel (up to its buffer size; then UVIP_ADDR_OVERRUN). Idempotent. */
int uvip_addrwatch_stop(uvip_addrwatch_t *watch);

/* Stops, closes the socket, then calls cb (may be NULL) from the loop and
 * frees the watcher right after. Call it once. */
int uvip_addrwatch_close(uvip_addrwatch_t *watch, uvip_addrwatch_close_cb cb);

void *uvip_addrwatch_get_data(const uvip_addrwatch_t *watch);
void uvip_addrwatch_set_data(uvip_addrwatch_t *watch, void *data);

/* ------------------------------------------------------------------------ */
/* Live pool: a server's listeners follow the addresses present on the host */
/* ------------------------------------------------------------------------ */

typedef struct uvip_livepool_s uvip_livepool_t;

typedef enum {
  /* The address is present and its VIP listens (state UVIP_VIP_LISTENING).
   * vip is the address's VIP: the same object every time the address comes
   * back, with its counters, weight, data and connections. */
  UVIP_LIVE_UP = 1,
  /* The address is present but its listener could not be bound (status is
   * the error, e.g. UV_EADDRINUSE); reported once per distinct error and
   * retried at the next event for the address. vip is the address's VIP
   * (now UVIP_VIP_FAILED), or NULL when the address never had one (the
   * first uvip_server_add_vip() for it failed). */
  UVIP_LIVE_FAILED = 2,
  /* The address has gone: its VIP is paused (uvip_vip_pause(), state
   * UVIP_VIP_PAUSED). Its listener is closed; the VIP, its counters and its
   * established connections stay, and the same VIP is resumed (UVIP_LIVE_UP)
   * when the address comes back. Its connections close only when the
   * application (or the peer) closes them; uvip_vip_stats() tells how many
   * are still open. */
  UVIP_LIVE_DOWN = 3
  /* 4 was UVIP_LIVE_DRAINED while a gone address's VIP was removed and
   * drained; VIPs are paused now and never removed by the live pool. */
} uvip_live_event_t;

/* Called on the loop thread. addr is the pool address (with its port). */
typedef void (*uvip_livepool_cb)(uvip_livepool_t *pool,
                                 uvip_live_event_t event,
                                 const struct sockaddr *addr, uvip_vip_t *vip,
                                 int status);

typedef void (*uvip_livepool_close_cb)(uvip_livepool_t *pool);

/* Creates a live pool for server over the addresses of pool (copied; ports
 * must be set). The server may have VIPs for some, all or none of them;
 * those that exist are taken over at start, and a pool address that has no
 * VIP gets one with uvip_server_add_vip() when it first appears. While the
 * live pool runs it pauses and resumes the VIPs of pool addresses: do not
 * remove, pause or resume them yourself. Give an address to one live pool
 * only. The live pool is attached to the server from here until its close
 * has finished: uvip_server_close() returns UV_EBUSY until then, so close
 * the live pool first and the server from the live pool's close callback.
 *
 * The live pool uses neither uvip_server_set_data() nor
 * uvip_vip_set_data(): both data pointers stay the application's.
 *
 * Errors: UV_EINVAL, UV_ENOMEM, or the netlink socket's error. */
int uvip_livepool_new(uvip_server_t *server, const uvip_addrs_t *pool,
                      uvip_livepool_t **out);

/* Starts following address events. On the next loop turn every pool
 * address is checked (a bind probe): present ones get a listening VIP
 * (UVIP_LIVE_UP, also for VIPs already listening), absent ones are left
 * without a listener. From then on: an address that appears gets its
 * listener (UVIP_LIVE_UP or UVIP_LIVE_FAILED); one that disappears has its
 * VIP paused (UVIP_LIVE_DOWN) and resumed when it comes back. Every event
 * is checked again by bind probes about 10 ms, 100 ms and 1 s later, and
 * all addresses are after UVIP_ADDR_OVERRUN.
 *
 * The server must be listening (uvip_server_is_listening()): UV_EINVAL
 * otherwise. uvip_server_listen() fails when no VIP can be bound, so for a
 * pool whose addresses may all be absent at start (or a server created
 * with no VIPs at all) create the server with UVIP_ALLOW_EMPTY.
 * UV_EALREADY if already started. */
int uvip_livepool_start(uvip_livepool_t *pool, uvip_livepool_cb cb);

/* Stops following events and calls cb (may be NULL) from the loop; the live
 * pool is freed right after. The server's VIPs are left as they are: VIPs
 * of absent addresses stay paused (or failed) with their connections, for
 * the application to resume, remove or close with the server. */
int uvip_livepool_close(uvip_livepool_t *pool, uvip_livepool_close_cb cb);

/* The number of pool addresses that have a listening VIP right now. */
size_t uvip_livepool_up_count(const uvip_livepool_t *pool);

void *uvip_livepool_get_data(const uvip_livepool_t *pool);
void uvip_livepool_set_data(uvip_livepool_t *pool, void *data);

#ifdef __cplusplus
}
#endif

#endif /* UVIP_PROVISION_H */
