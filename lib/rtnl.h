/* rtnetlink primitives shared by provision.c, addrwatch.c and livepool.c.
 * Not installed.
 * SPDX-License-Identifier: MIT */
#ifndef UVIP_RTNL_H
#define UVIP_RTNL_H

#include <libmnl/libmnl.h>

#include "internal.h"

/* One interface address as the kernel reports it. addr has port 0; an IPv6
 * link-local address carries its interface in sin6_scope_id. */
typedef struct uvip__ifaddr_s {
  uvip__sa_t addr;
  unsigned int ifindex;
  unsigned int prefixlen;
  unsigned int flags; /* IFA_F_* (the 32-bit IFA_FLAGS when present) */
} uvip__ifaddr_t;

/* if_nametoindex(): UV_ENODEV for an unknown name, UV_EINVAL for a name
 * that cannot be an interface name. */
int uvip__rtnl_ifindex(const char *ifname, unsigned int *out);

/* Opens a NETLINK_ROUTE socket (close-on-exec) bound to an automatic port
 * id, with extended acks asked for. groups: RTMGRP_* bits to join, 0 for
 * none. nonblock: O_NONBLOCK for use on a loop. */
int uvip__rtnl_open(unsigned int groups, int nonblock, struct mnl_socket **out);

/* Parses an RTM_NEWADDR/RTM_DELADDR message. UV_EINVAL when it is not one
 * or is malformed, UV_EAFNOSUPPORT for families other than IPv4/IPv6. */
int uvip__rtnl_parse_addr(const struct nlmsghdr *nlh, uvip__ifaddr_t *out);

/* Called for each address of a dump; a NULL address means "start over"
 * (the dump was interrupted by a change and is being redone). A non-zero
 * return stops the dump and is returned by uvip__rtnl_dump(). */
typedef int (*uvip__rtnl_addr_cb)(void *arg, const uvip__ifaddr_t *a);

/* Dumps every IPv4 and IPv6 address of the namespace. */
int uvip__rtnl_dump(struct mnl_socket *nl, uvip__rtnl_addr_cb cb, void *arg);

/* Adds (RTM_NEWADDR with NLM_F_CREATE | NLM_F_EXCL) or removes
 * (RTM_DELADDR) one address and waits for the kernel's answer. Returns 0 or
 * the kernel's error as a UV_E* code; when the kernel explains itself
 * (extended ack), the text goes into msg (msg[0] = 0 otherwise). */
int uvip__rtnl_change(struct mnl_socket *nl, int add, const uvip__ifaddr_t *a,
                      char *msg, size_t msglen);

/* Compares two addresses (family, then address bytes; ports and scope ids
 * are ignored) for sorting and searching. */
int uvip__ip_cmp(const struct sockaddr *a, const struct sockaddr *b);

/* The type (RTN_LOCAL, RTN_UNICAST, ...) of the route the kernel would use
 * for addr (4 or 16 bytes of family): RTM_GETROUTE, no privilege needed.
 * No route at all reads as RTN_UNREACHABLE. */
int uvip__rtnl_route_type(struct mnl_socket *nl, int family, const void *addr,
                          unsigned int *type);

/* Adds (NLM_F_CREATE | NLM_F_EXCL: UV_EEXIST when there is one) or removes
 * the local route for prefix p on ifindex in the local table, as "ip route
 * add local P dev IF" does ("AnyIP": every address of p can be bound).
 * Returns 0 or the kernel's error; msg as for uvip__rtnl_change(). */
int uvip__rtnl_local_route(struct mnl_socket *nl, int add,
                           const uvip_prefix_t *p, unsigned int ifindex,
                           char *msg, size_t msglen);

#endif /* UVIP_RTNL_H */
