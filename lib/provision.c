/* uvip_provision_t: add a pool's addresses to an interface, remove exactly
 * the ones added.
 * SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_addr.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rtnl.h"

typedef struct prov_entry_s {
  uvip__sa_t ip; /* port 0 */
  uvip_provision_state_t state;
  unsigned int prefixlen; /* the one it was added with */
  bool seen;              /* on the interface in the latest dump */
} prov_entry_t;

struct uvip_provision_s {
  char ifname[IF_NAMESIZE];
  /* A local-route provisioner: its one entry is the prefix (network
   * address and length) of a route in the local table. */
  bool route;
  unsigned int ifindex; /* where the ADDED addresses are */
  uvip_provision_options_t opts;
  prov_entry_t *entries; /* in the caller's order */
  prov_entry_t **sorted; /* by address, for matching a dump */
  size_t n;
};

UVIP_EXPORT int uvip_provision_options_init(uvip_provision_options_t *opts) {
  UVIP_CHECK_ARG(opts == NULL);
  memset(opts, 0, sizeof(*opts));
  opts->prefixlen4 = 32;
  opts->prefixlen6 = 128;
  return 0;
}

static int entry_cmp(const void *a, const void *b) {
  const prov_entry_t *x = *(prov_entry_t *const *)a;
  const prov_entry_t *y = *(prov_entry_t *const *)b;
  return uvip__ip_cmp(&x->ip.sa, &y->ip.sa);
}

static int sorted_index_cmp(const void *a, const void *b) {
  const prov_entry_t *x = *(prov_entry_t *const *)a;
  const prov_entry_t *y = *(prov_entry_t *const *)b;
  int c = uvip__ip_cmp(&x->ip.sa, &y->ip.sa);
  if (c != 0)
    return c;
  return x < y ? -1 : x > y;
}

static prov_entry_t *find_entry(const uvip_provision_t *p,
                                const struct sockaddr *sa) {
  prov_entry_t key, *kp = &key;
  memcpy(&key.ip, sa,
         sa->sa_family == AF_INET ? sizeof(key.ip.in) : sizeof(key.ip.in6));
  prov_entry_t **hit = bsearch(&kp, p->sorted, p->n, sizeof(*p->sorted),
                               entry_cmp);
  return hit ? *hit : NULL;
}

/* Addresses the kernel would refuse, or that would be meaningless as an
 * interface address, are caught before anything is changed. */
static int check_ip(const struct sockaddr *sa) {
  if (sa->sa_family == AF_INET) {
    uint32_t a = ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr);
    if (a == INADDR_ANY || a == INADDR_BROADCAST || IN_MULTICAST(a))
      return UV_EINVAL;
    return 0;
  }
  if (sa->sa_family == AF_INET6) {
    const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
    if (IN6_IS_ADDR_UNSPECIFIED(a) || IN6_IS_ADDR_MULTICAST(a) ||
        IN6_IS_ADDR_V4MAPPED(a))
      return UV_EINVAL;
    return 0;
  }
  return UV_EAFNOSUPPORT;
}

UVIP_EXPORT int uvip_provision_new(const char *ifname,
                                   const uvip_addrs_t *addrs,
                                   const uvip_provision_options_t *opts,
                                   uvip_provision_t **out) {
  UVIP_CHECK_ARG(out == NULL);
  *out = NULL;
  UVIP_CHECK_ARG(ifname == NULL || addrs == NULL);
  UVIP_CHECK_ARG(uvip_addrs_count(addrs) == 0);
  UVIP_CHECK_ARG(opts != NULL &&
                 (opts->prefixlen4 < 1 || opts->prefixlen4 > 32 ||
                  opts->prefixlen6 < 1 || opts->prefixlen6 > 128 ||
                  (opts->flags & ~(unsigned int)UVIP_PROVISION_DAD) != 0));

  unsigned int ifindex;
  int r = uvip__rtnl_ifindex(ifname, &ifindex);
  if (r != 0)
    return r;

  size_t count = uvip_addrs_count(addrs);
  uvip_provision_t *p = calloc(1, sizeof(*p));
  if (p == NULL)
    return UV_ENOMEM;
  p->entries = calloc(count, sizeof(*p->entries));
  p->sorted = calloc(count, sizeof(*p->sorted));
  if (p->entries == NULL || p->sorted == NULL) {
    r = UV_ENOMEM;
    goto fail;
  }
  snprintf(p->ifname, sizeof(p->ifname), "%s", ifname);
  p->ifindex = ifindex;
  if (opts != NULL)
    p->opts = *opts;
  else
    uvip_provision_options_init(&p->opts);

  /* Copy the addresses without ports, then drop repeats (the same address
   * with several ports), keeping the first occurrence so that the caller's
   * order survives. */
  for (size_t i = 0; i < count; i++) {
    const struct sockaddr *sa = uvip_addrs_at(addrs, i);
    if ((r = check_ip(sa)) != 0)
      goto fail;
    prov_entry_t *e = &p->entries[i];
    if (sa->sa_family == AF_INET) {
      e->ip.in.sin_family = AF_INET;
      e->ip.in.sin_addr = ((const struct sockaddr_in *)sa)->sin_addr;
      e->prefixlen = p->opts.prefixlen4;
    } else {
      e->ip.in6.sin6_family = AF_INET6;
      e->ip.in6.sin6_addr = ((const struct sockaddr_in6 *)sa)->sin6_addr;
      e->prefixlen = p->opts.prefixlen6;
    }
    e->state = UVIP_PROVISION_ABSENT;
    p->sorted[i] = e;
  }
  qsort(p->sorted, count, sizeof(*p->sorted), sorted_index_cmp);
  for (size_t i = 1; i < count; i++) {
    if (uvip__ip_cmp(&p->sorted[i]->ip.sa, &p->sorted[i - 1]->ip.sa) == 0)
      p->sorted[i]->ip.sa.sa_family = AF_UNSPEC; /* marks a repeat */
  }
  size_t n = 0;
  for (size_t i = 0; i < count; i++) {
    if (p->entries[i].ip.sa.sa_family != AF_UNSPEC)
      p->entries[n++] = p->entries[i];
  }
  p->n = n;
  for (size_t i = 0; i < n; i++)
    p->sorted[i] = &p->entries[i];
  qsort(p->sorted, n, sizeof(*p->sorted), entry_cmp);
  *out = p;
  return 0;

fail:
  free(p->entries);
  free(p->sorted);
  free(p);
  return r;
}

typedef struct {
  uvip_provision_t *p;
  unsigned int ifindex;
} mark_ctx_t;

static int mark_seen(void *arg, const uvip__ifaddr_t *a) {
  mark_ctx_t *ctx = arg;
  if (a == NULL) { /* the dump starts over */
    for (size_t i = 0; i < ctx->p->n; i++)
      ctx->p->entries[i].seen = false;
    return 0;
  }
  if (a->ifindex != ctx->ifindex)
    return 0;
  prov_entry_t *e = find_entry(ctx->p, &a->addr.sa);
  if (e != NULL)
    e->seen = true;
  return 0;
}

static void entry_ifaddr(const uvip_provision_t *p, const prov_entry_t *e,
                         unsigned int ifindex, uvip__ifaddr_t *a) {
  memset(a, 0, sizeof(*a));
  a->addr = e->ip;
  a->ifindex = ifindex;
  a->prefixlen = e->prefixlen;
  if (e->ip.sa.sa_family == AF_INET6 && !(p->opts.flags & UVIP_PROVISION_DAD))
    a->flags = IFA_F_NODAD;
}

static void format_error(char *errbuf, size_t errlen, const char *verb,
                         const prov_entry_t *e, const char *ifname, int err,
                         const char *kmsg) {
  if (errbuf == NULL || errlen == 0)
    return;
  char ip[UVIP_ADDRSTRLEN];
  const void *bytes = e->ip.sa.sa_family == AF_INET
                          ? (const void *)&e->ip.in.sin_addr
                          : (const void *)&e->ip.in6.sin6_addr;
  if (inet_ntop(e->ip.sa.sa_family, bytes, ip, sizeof(ip)) == NULL)
    snprintf(ip, sizeof(ip), "?");
  int len = snprintf(errbuf, errlen, "%s %s/%u %s %s: %s", verb, ip,
                     e->prefixlen, verb[0] == 'a' ? "to" : "from", ifname,
                     uv_strerror(err));
  if (kmsg != NULL && kmsg[0] && len > 0 && (size_t)len < errlen)
    snprintf(errbuf + len, errlen - (size_t)len, " (kernel: %s)", kmsg);
}

/* Gone already, whoever removed it (or with its interface). */
static bool is_gone_error(int err) {
  return err == UV_EADDRNOTAVAIL || err == UV_ENOENT || err == UV_ENODEV ||
         err == UV_ESRCH;
}

static void format_route_error(char *errbuf, size_t errlen, const char *verb,
                               const uvip_provision_t *p, int err,
                               const char *kmsg) {
  if (errbuf == NULL || errlen == 0)
    return;
  uvip_prefix_t pf;
  char txt[UVIP_PREFIXSTRLEN];
  const prov_entry_t *e = &p->entries[0];
  memset(&pf, 0, sizeof(pf));
  pf.family = e->ip.sa.sa_family;
  pf.len = e->prefixlen;
  if (pf.family == AF_INET)
    pf.addr.v4 = e->ip.in.sin_addr;
  else
    pf.addr.v6 = e->ip.in6.sin6_addr;
  uvip_prefix_format(&pf, txt, sizeof(txt));
  int len = snprintf(errbuf, errlen, "%s local route %s dev %s: %s", verb, txt,
                     p->ifname, uv_strerror(err));
  if (kmsg != NULL && kmsg[0] && len > 0 && (size_t)len < errlen)
    snprintf(errbuf + len, errlen - (size_t)len, " (kernel: %s)", kmsg);
}

static int route_change(uvip_provision_t *p, int add, unsigned int ifindex,
                        char *kmsg, size_t klen) {
  struct mnl_socket *nl;
  uvip_prefix_t pf;
  const prov_entry_t *e = &p->entries[0];
  int r = uvip__rtnl_open(0, 0, &nl);
  if (r != 0)
    return r;
  memset(&pf, 0, sizeof(pf));
  pf.family = e->ip.sa.sa_family;
  pf.len = e->prefixlen;
  if (pf.family == AF_INET)
    pf.addr.v4 = e->ip.in.sin_addr;
  else
    pf.addr.v6 = e->ip.in6.sin6_addr;
  r = uvip__rtnl_local_route(nl, add, &pf, ifindex, kmsg, klen);
  mnl_socket_close(nl);
  return r;
}

/* The route's apply: added with NLM_F_EXCL, so that a route that is
 * already there stays someone else's (or ours, from an earlier call). */
static int route_apply(uvip_provision_t *p, unsigned int ifindex,
                       char *errbuf, size_t errlen) {
  char kmsg[256] = "";
  prov_entry_t *e = &p->entries[0];
  int r = route_change(p, 1, ifindex, kmsg, sizeof(kmsg));
  if (r == 0) {
    e->state = UVIP_PROVISION_ADDED;
  } else if (r == UV_EEXIST) {
    if (e->state != UVIP_PROVISION_ADDED)
      e->state = UVIP_PROVISION_FOREIGN;
    r = 0;
  } else {
    format_route_error(errbuf, errlen, "add", p, r, kmsg);
  }
  return r;
}

static int route_release(uvip_provision_t *p, char *errbuf, size_t errlen) {
  char kmsg[256] = "";
  prov_entry_t *e = &p->entries[0];
  int r = route_change(p, 0, p->ifindex, kmsg, sizeof(kmsg));
  if (r == 0 || is_gone_error(r)) {
    e->state = UVIP_PROVISION_ABSENT;
    return 0;
  }
  format_route_error(errbuf, errlen, "remove", p, r, kmsg);
  return r;
}

UVIP_EXPORT int uvip_provision_new_local_route(
    const char *ifname, const uvip_prefix_t *prefix,
    const uvip_provision_options_t *opts, uvip_provision_t **out) {
  UVIP_CHECK_ARG(out == NULL);
  *out = NULL;
  UVIP_CHECK_ARG(ifname == NULL || !uvip__prefix_valid(prefix));
  /* A local route for everything (or all of IPv6) would take the host off
   * the network; multicast and v4-mapped prefixes mean nothing here. */
  UVIP_CHECK_ARG(prefix->len == 0);
  UVIP_CHECK_ARG(opts != NULL &&
                 (opts->flags & ~(unsigned int)UVIP_PROVISION_DAD) != 0);
  uvip_prefix_t pf = *prefix;
  uvip__prefix_mask(&pf);
  if (pf.family == AF_INET) {
    if (IN_MULTICAST(ntohl(pf.addr.v4.s_addr)))
      return UV_EINVAL;
  } else if (IN6_IS_ADDR_MULTICAST(&pf.addr.v6) ||
             (pf.len >= 96 && IN6_IS_ADDR_V4MAPPED(&pf.addr.v6))) {
    return UV_EINVAL;
  }
  unsigned int ifindex;
  int r = uvip__rtnl_ifindex(ifname, &ifindex);
  if (r != 0)
    return r;
  uvip_provision_t *p = calloc(1, sizeof(*p));
  if (p == NULL)
    return UV_ENOMEM;
  p->entries = calloc(1, sizeof(*p->entries));
  p->sorted = calloc(1, sizeof(*p->sorted));
  if (p->entries == NULL || p->sorted == NULL) {
    free(p->entries);
    free(p->sorted);
    free(p);
    return UV_ENOMEM;
  }
  snprintf(p->ifname, sizeof(p->ifname), "%s", ifname);
  p->ifindex = ifindex;
  p->route = true;
  uvip_provision_options_init(&p->opts);
  prov_entry_t *e = &p->entries[0];
  if (pf.family == AF_INET) {
    e->ip.in.sin_family = AF_INET;
    e->ip.in.sin_addr = pf.addr.v4;
  } else {
    e->ip.in6.sin6_family = AF_INET6;
    e->ip.in6.sin6_addr = pf.addr.v6;
  }
  e->prefixlen = pf.len;
  e->state = UVIP_PROVISION_ABSENT;
  p->sorted[0] = e;
  p->n = 1;
  *out = p;
  return 0;
}

UVIP_EXPORT int uvip_provision_apply(uvip_provision_t *p, char *errbuf,
                                     size_t errlen) {
  UVIP_CHECK_ARG(p == NULL);
  if (errbuf != NULL && errlen > 0)
    errbuf[0] = '\0';

  /* The interface may have been re-created under the same name since
   * uvip_provision_new(). */
  unsigned int ifindex;
  int r = uvip__rtnl_ifindex(p->ifname, &ifindex);
  if (r != 0) {
    if (errbuf != NULL)
      snprintf(errbuf, errlen, "interface %s: %s", p->ifname, uv_strerror(r));
    return r;
  }
  if (ifindex != p->ifindex) {
    /* Whatever we added went away with the old interface. */
    for (size_t i = 0; i < p->n; i++)
      if (p->entries[i].state == UVIP_PROVISION_ADDED)
        p->entries[i].state = UVIP_PROVISION_ABSENT;
    p->ifindex = ifindex;
  }
  if (p->route)
    return route_apply(p, ifindex, errbuf, errlen);

  struct mnl_socket *nl;
  if ((r = uvip__rtnl_open(0, 0, &nl)) != 0) {
    if (errbuf != NULL)
      snprintf(errbuf, errlen, "rtnetlink socket: %s", uv_strerror(r));
    return r;
  }
  mark_ctx_t ctx = {p, ifindex};
  mark_seen(&ctx, NULL);
  if ((r = uvip__rtnl_dump(nl, mark_seen, &ctx)) != 0) {
    if (errbuf != NULL)
      snprintf(errbuf, errlen, "list addresses of %s: %s", p->ifname,
               uv_strerror(r));
    mnl_socket_close(nl);
    return r;
  }

  /* Indexes of the entries this call added, for the rollback. */
  size_t *added = malloc((p->n ? p->n : 1) * sizeof(*added));
  size_t nadded = 0;
  if (added == NULL) {
    mnl_socket_close(nl);
    return UV_ENOMEM;
  }
  char kmsg[256];
  for (size_t i = 0; i < p->n && r == 0; i++) {
    prov_entry_t *e = &p->entries[i];
    if (e->seen) {
      if (e->state != UVIP_PROVISION_ADDED)
        e->state = UVIP_PROVISION_FOREIGN;
      continue;
    }
    uvip__ifaddr_t a;
    entry_ifaddr(p, e, ifindex, &a);
    int err = uvip__rtnl_change(nl, 1, &a, kmsg, sizeof(kmsg));
    if (err == 0) {
      added[nadded++] = i;
      e->state = UVIP_PROVISION_ADDED;
    } else if (err == UV_EEXIST) {
      /* Appeared between the dump and now: someone else's. */
      e->state = UVIP_PROVISION_FOREIGN;
    } else {
      format_error(errbuf, errlen, "add", e, p->ifname, err, kmsg);
      r = err;
    }
  }
  if (r != 0) {
    while (nadded > 0) {
      prov_entry_t *e = &p->entries[added[--nadded]];
      uvip__ifaddr_t a;
      entry_ifaddr(p, e, ifindex, &a);
      /* Best effort: a removal that fails here has nothing better to do
       * than leave the address marked ours, so release() retries it. */
      int err = uvip__rtnl_change(nl, 0, &a, NULL, 0);
      if (err == 0 || is_gone_error(err))
        e->state = UVIP_PROVISION_ABSENT;
    }
  }
  free(added);
  mnl_socket_close(nl);
  return r;
}

UVIP_EXPORT int uvip_provision_release(uvip_provision_t *p, char *errbuf,
                                       size_t errlen) {
  UVIP_CHECK_ARG(p == NULL);
  if (errbuf != NULL && errlen > 0)
    errbuf[0] = '\0';
  bool any = false;
  for (size_t i = 0; i < p->n; i++)
    any = any || p->entries[i].state == UVIP_PROVISION_ADDED;
  if (!any)
    return 0;
  if (p->route)
    return route_release(p, errbuf, errlen);

  struct mnl_socket *nl;
  int r = uvip__rtnl_open(0, 0, &nl);
  if (r != 0) {
    if (errbuf != NULL)
      snprintf(errbuf, errlen, "rtnetlink socket: %s", uv_strerror(r));
    return r;
  }
  char kmsg[256];
  int first = 0;
  for (size_t i = 0; i < p->n; i++) {
    prov_entry_t *e = &p->entries[i];
    if (e->state != UVIP_PROVISION_ADDED)
      continue;
    uvip__ifaddr_t a;
    entry_ifaddr(p, e, p->ifindex, &a);
    int err = uvip__rtnl_change(nl, 0, &a, kmsg, sizeof(kmsg));
    if (err == 0 || is_gone_error(err)) {
      e->state = UVIP_PROVISION_ABSENT;
    } else if (first == 0) {
      first = err;
      format_error(errbuf, errlen, "remove", e, p->ifname, err, kmsg);
    }
  }
  mnl_socket_close(nl);
  return first;
}

UVIP_EXPORT void uvip_provision_free(uvip_provision_t *p) {
  if (p == NULL)
    return;
  (void)uvip_provision_release(p, NULL, 0);
  free(p->entries);
  free(p->sorted);
  free(p);
}

UVIP_EXPORT size_t uvip_provision_count(const uvip_provision_t *p) {
  return p ? p->n : 0;
}

UVIP_EXPORT const struct sockaddr *
uvip_provision_addr(const uvip_provision_t *p, size_t i) {
  if (p == NULL || i >= p->n)
    return NULL;
  return &p->entries[i].ip.sa;
}

UVIP_EXPORT int uvip_provision_state(const uvip_provision_t *p, size_t i) {
  UVIP_CHECK_ARG(p == NULL || i >= p->n);
  return (int)p->entries[i].state;
}
