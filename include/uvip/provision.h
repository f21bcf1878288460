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

#ifdef __cplusplus
}
#endif

#endif /* UVIP_PROVISION_H */
