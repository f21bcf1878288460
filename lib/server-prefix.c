/* Inbound on a prefix: one listening socket takes the connections addressed
 * to every address of a prefix under a local route, and accounts them by
 * group (the destination address cut to group_len bits) so that a cap per
 * group holds between the clients of, say, every /112 of a /64.
 *
 * The socket is bound to the wildcard address: on Linux a listener bound to
 * one address only matches connections to that very address, whatever
 * IP_TRANSPARENT, IP_FREEBIND or ip_nonlocal_bind say (they let it bind an
 * address that is not local; the lookup still wants an exact match unless
 * TPROXY or a BPF sk_lookup program steers it), so the wildcard listener is
 * the one way without privilege. It also receives connections to the port
 * on the host's other addresses: those are filtered here by the address
 * they were sent to (getsockname()) and closed. docs/prefix-pools.md has
 * the trade-offs and the measurements.
 *
 * Groups live in a hash table that holds only the groups with open
 * connections (a /64 in /112 groups has 2^48 of them): a group is made by
 * its first connection and freed with its last.
 * SPDX-License-Identifier: MIT */
#include "internal.h"
#include "rtnl.h"
#include "sklookup.h"

#include <arpa/inet.h>
#include <linux/rtnetlink.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MIN_BUCKETS 64

struct uvip__group {
  uint8_t key[16]; /* the destination cut to group_len bits, zero padded */
  uint64_t active;
  struct uvip__group *next;
};

struct uvip__pfx {
  uvip_prefix_t prefix;
  uvip_prefix_mode_t mode;
  int port;
  uvip__sklookup_t sk; /* UVIP_PREFIX_SK_LOOKUP */
  unsigned int group_len;
  uint64_t cap;
  uvip_prefix_stats_t stats;
  struct uvip__group **buckets;
  size_t nbuckets; /* a power of two */
};

static unsigned int width_of(int family) { return family == AF_INET ? 32 : 128; }

/* The address bytes of sa cut to len bits, into a zeroed 16-byte key. */
static void make_key(const struct sockaddr *sa, unsigned int len,
                     uint8_t key[16]) {
  const uint8_t *b =
      sa->sa_family == AF_INET
          ? (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr
          : (const uint8_t *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
  unsigned int nb = width_of(sa->sa_family) / 8, i;
  memset(key, 0, 16);
  for (i = 0; i < nb && i * 8 < len; i++) {
    unsigned int keep = len - i * 8 >= 8 ? 8 : len - i * 8;
    key[i] = b[i] & (uint8_t)(0xff00u >> keep);
  }
}

static size_t hash_key(const uint8_t key[16]) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (int i = 0; i < 16; i++)
    h = (h ^ key[i]) * 1099511628211ull;
  return (size_t)(h ^ (h >> 32));
}

static struct uvip__group **find_slot(struct uvip__pfx *p,
                                      const uint8_t key[16]) {
  struct uvip__group **pp = &p->buckets[hash_key(key) & (p->nbuckets - 1)];
  while (*pp && memcmp((*pp)->key, key, 16) != 0)
    pp = &(*pp)->next;
  return pp;
}

/* Doubles the table when it holds as many groups as buckets. Without
 * memory the chains just grow longer. */
static void maybe_grow(struct uvip__pfx *p) {
  size_t n = p->nbuckets * 2;
  struct uvip__group **nb;
  if (p->stats.groups < p->nbuckets || !(nb = calloc(n, sizeof(*nb))))
    return;
  for (size_t i = 0; i < p->nbuckets; i++)
    for (struct uvip__group *g = p->buckets[i], *next; g; g = next) {
      next = g->next;
      g->next = nb[hash_key(g->key) & (n - 1)];
      nb[hash_key(g->key) & (n - 1)] = g;
    }
  free(p->buckets);
  p->buckets = nb;
  p->nbuckets = n;
}

/* A refused connection is reset rather than closed gracefully: the client
 * learns at once, and no FIN_WAIT socket stays behind. */
static void refuse(int fd) {
  struct linger l = {1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
  close(fd);
}

bool uvip__pfx_admit(uvip_vip_t *v, int fd, struct uvip__group **group) {
  struct uvip__pfx *p = v->pfx;
  struct uvip__group **slot, *g;
  uvip__sa_t a;
  socklen_t len = sizeof(a);
  uint8_t key[16];

  /* getsockname() fails only on a descriptor that is no socket: the
   * connection is outside anything we serve either way. */
  if (getsockname(fd, &a.sa, &len) != 0 ||
      uvip_prefix_contains(&p->prefix, &a.sa) != 1) {
    p->stats.outside++;
    refuse(fd);
    return false;
  }
  if (group == NULL)
    return true;
  make_key(&a.sa, p->group_len, key);
  slot = find_slot(p, key);
  if ((g = *slot) != NULL && p->cap && g->active >= p->cap) {
    p->stats.group_refused++;
    refuse(fd);
    return false;
  }
  if (g == NULL) {
    if ((g = calloc(1, sizeof(*g))) == NULL) {
      v->stats.err_enomem++;
      refuse(fd);
      return false;
    }
    memcpy(g->key, key, 16);
    *slot = g;
    if (++p->stats.groups > p->stats.groups_peak)
      p->stats.groups_peak = p->stats.groups;
    maybe_grow(p);
  }
  g->active++;
  *group = g;
  return true;
}

void uvip__pfx_release(uvip_vip_t *v, struct uvip__group *g) {
  struct uvip__pfx *p = v->pfx;
  struct uvip__group **slot;
  if (--g->active > 0)
    return;
  slot = find_slot(p, g->key);
  *slot = g->next;
  free(g);
  p->stats.groups--;
}

void uvip__pfx_free(struct uvip__pfx *p) {
  if (p == NULL)
    return;
  /* Groups outlive no connection, so the chains are empty by now. */
  uvip__sklookup_free(&p->sk);
  free(p->buckets);
  free(p);
}

/* ------------------------------------------------------------------------ */
/* Adding the listener                                                      */
/* ------------------------------------------------------------------------ */

__attribute__((format(printf, 4, 5))) static int
fail(int r, char *errbuf, size_t errlen, const char *fmt, ...) {
  va_list ap;
  if (errbuf != NULL && errlen > 0) {
    va_start(ap, fmt);
    vsnprintf(errbuf, errlen, fmt, ap);
    va_end(ap);
  }
  return r;
}

static int check_opts(const uvip_server_t *s, const uvip_prefix_listen_t *o,
                      unsigned int *group_len, char *errbuf, size_t errlen) {
  char pfx[UVIP_PREFIXSTRLEN];
  if (!uvip__prefix_valid(&o->prefix))
    return fail(UV_EINVAL, errbuf, errlen, "invalid prefix (family or length)");
  uvip_prefix_format(&o->prefix, pfx, sizeof(pfx));
  if (o->port < 1 || o->port > 65535)
    return fail(UV_EINVAL, errbuf, errlen, "bad port %d for %s", o->port, pfx);
  if (o->mode != UVIP_PREFIX_WILDCARD && o->mode != UVIP_PREFIX_SK_LOOKUP)
    return fail(UV_EINVAL, errbuf, errlen, "unknown prefix mode %d for %s",
                (int)o->mode, pfx);
  *group_len = o->group_len ? o->group_len : o->prefix.len;
  if (*group_len > width_of(o->prefix.family))
    return fail(UV_EINVAL, errbuf, errlen,
                "group /%u does not fit %s (at most /%u): %s", *group_len,
                o->prefix.family == AF_INET ? "IPv4" : "IPv6",
                width_of(o->prefix.family), pfx);
  if (*group_len < o->prefix.len)
    return fail(UV_EINVAL, errbuf, errlen,
                "group /%u is shorter than the prefix %s: a group must lie "
                "inside it",
                *group_len, pfx);
  if (s->opts.flags & UVIP_PROXY_PROTOCOL)
    return fail(UV_ENOTSUP, errbuf, errlen,
                "prefix %s: not with UVIP_PROXY_PROTOCOL", pfx);
  /* Workers' sockets would take the prefix's connections unfiltered
   * (REUSEPORT) or ungrouped (hand-off). */
  if (s->handoff_dispatch || s->remote_stop)
    return fail(UV_ENOTSUP, errbuf, errlen,
                "prefix %s: not while workers are attached", pfx);
  return 0;
}

/* The prefix's first, middle and last addresses must be local: a route
 * for a part of it would refuse clients later, one address at a time. */
static int check_route(const uvip_prefix_t *p, char *errbuf, size_t errlen) {
  unsigned int nb = width_of(p->family) / 8, type = 0;
  struct mnl_socket *nl;
  int r = uvip__rtnl_open(0, 0, &nl);
  if (r != 0)
    return fail(r, errbuf, errlen, "rtnetlink socket: %s", uv_strerror(r));
  for (int k = 0; k < 3 && r == 0; k++) {
    uint8_t b[16];
    memcpy(b, &p->addr, nb);
    /* Host bits: none (first), the top one (middle), all (last). */
    for (unsigned int bit = p->len; bit < nb * 8 && k > 0; bit++)
      if (k == 2 || bit == p->len)
        b[bit / 8] |= (uint8_t)(0x80u >> (bit % 8));
    r = uvip__rtnl_route_type(nl, p->family, b, &type);
    if (r != 0) {
      fail(r, errbuf, errlen, "route lookup: %s", uv_strerror(r));
    } else if (type != RTN_LOCAL) {
      char pfx[UVIP_PREFIXSTRLEN], ip[INET6_ADDRSTRLEN];
      uvip_prefix_format(p, pfx, sizeof(pfx));
      inet_ntop(p->family, b, ip, sizeof(ip));
      r = UV_EADDRNOTAVAIL;
      if (errbuf != NULL && errlen > 0)
        snprintf(errbuf, errlen,
                 "no local route for %s (%s is not local): add it with "
                 "'ip%s route add local %s dev lo' (or "
                 "uvip_provision_new_local_route())",
                 pfx, ip, p->family == AF_INET6 ? " -6" : "", pfx);
    }
  }
  mnl_socket_close(nl);
  return r;
}

int uvip__pfx_listen(uvip_vip_t *v) {
  struct uvip__pfx *p = v->pfx;
  uvip_server_options_t o = v->server->opts;
  uvip__sa_t sa = v->addr;
  int r;
  if (p->mode == UVIP_PREFIX_WILDCARD)
    return uvip__listen_socket(&v->addr.sa, &o, &v->fd);
  /* The prefix's first address, which is not local (a local route does
   * not make its addresses bindable), and a port the kernel picks: the
   * program steers the prefix's port to the socket whatever it is bound
   * to, and a wildcard socket of another program on that port (which
   * would refuse our bind) keeps the rest of the port's traffic. */
  o.flags |= UVIP_FREEBIND;
  if (sa.sa.sa_family == AF_INET)
    sa.in.sin_port = 0;
  else
    sa.in6.sin6_port = 0;
  if ((r = uvip__listen_socket(&sa.sa, &o, &v->fd)) != 0)
    return r;
  if ((r = uvip__sklookup_set(&p->sk, v->fd)) != 0) {
    close(v->fd);
    v->fd = -1;
  }
  return r;
}

UVIP_EXPORT int uvip_prefix_listen_init(uvip_prefix_listen_t *opts) {
  UVIP_CHECK_ARG(opts == NULL);
  memset(opts, 0, sizeof(*opts));
  opts->prefix.family = AF_UNSPEC;
  opts->mode = UVIP_PREFIX_WILDCARD;
  return 0;
}

UVIP_EXPORT int uvip_server_add_prefix(uvip_server_t *s,
                                       const uvip_prefix_listen_t *o,
                                       char *errbuf, size_t errlen,
                                       uvip_vip_t **out) {
  struct uvip__pfx *p;
  uvip__sa_t sa;
  uvip_vip_t *v;
  unsigned int group_len = 0;
  int r;

  UVIP_CHECK_ARG(s == NULL || o == NULL);
  if (errbuf != NULL && errlen > 0)
    errbuf[0] = '\0';
  if ((r = check_opts(s, o, &group_len, errbuf, errlen)) != 0 ||
      (r = check_route(&o->prefix, errbuf, errlen)) != 0)
    return r;
  p = calloc(1, sizeof(*p));
  if (p == NULL || !(p->buckets = calloc(MIN_BUCKETS, sizeof(*p->buckets)))) {
    free(p);
    return UV_ENOMEM;
  }
  p->nbuckets = MIN_BUCKETS;
  p->prefix = o->prefix;
  uvip__prefix_mask(&p->prefix);
  p->mode = o->mode;
  p->port = o->port;
  uvip__sklookup_init(&p->sk);
  if (o->mode == UVIP_PREFIX_SK_LOOKUP &&
      (r = uvip__sklookup_new(&p->sk, &p->prefix, o->port, errbuf,
                              errlen)) != 0) {
    uvip__pfx_free(p);
    return r;
  }
  p->group_len = group_len;
  p->cap = o->max_conns_per_group;

  /* The wildcard, or for sk_lookup the prefix's first address. */
  memset(&sa, 0, sizeof(sa));
  if (o->prefix.family == AF_INET) {
    sa.in.sin_family = AF_INET;
    sa.in.sin_port = htons((uint16_t)o->port);
    if (o->mode == UVIP_PREFIX_SK_LOOKUP)
      sa.in.sin_addr = p->prefix.addr.v4;
  } else {
    sa.in6.sin6_family = AF_INET6;
    sa.in6.sin6_port = htons((uint16_t)o->port);
    if (o->mode == UVIP_PREFIX_SK_LOOKUP)
      sa.in6.sin6_addr = p->prefix.addr.v6;
  }
  /* Binds now if the server listens, with its prefix state already set. */
  if ((r = uvip__server_add_vip(s, &sa.sa, p, &v)) != 0) {
    char a[UVIP_ADDRSTRLEN];
    uvip__pfx_free(p);
    uvip_addr_format(&sa.sa, 1, a, sizeof(a));
    if (r == UV_EEXIST)
      return fail(r, errbuf, errlen, "%s is already a VIP of the server", a);
    return fail(r, errbuf, errlen, "%s: %s", a, uv_strerror(r));
  }
  if (out != NULL)
    *out = v;
  return 0;
}

UVIP_EXPORT int uvip_vip_prefix_stats(const uvip_vip_t *v,
                                      uvip_prefix_stats_t *out) {
  UVIP_CHECK_ARG(v == NULL || out == NULL || v->pfx == NULL);
  *out = v->pfx->stats;
  return 0;
}

UVIP_EXPORT int uvip_vip_group_active(const uvip_vip_t *v,
                                      const struct sockaddr *sa,
                                      uint64_t *out) {
  struct uvip__group *g;
  uint8_t key[16];
  UVIP_CHECK_ARG(v == NULL || sa == NULL || out == NULL || v->pfx == NULL);
  *out = 0;
  if (uvip_prefix_contains(&v->pfx->prefix, sa) != 1)
    return 0;
  make_key(sa, v->pfx->group_len, key);
  if ((g = *find_slot(v->pfx, key)) != NULL)
    *out = g->active;
  return 0;
}

UVIP_EXPORT int uvip_conn_group(const uvip_conn_t *c, uvip_prefix_t *out) {
  UVIP_CHECK_ARG(c == NULL || out == NULL);
  if (c->group == NULL)
    return UV_ENOENT;
  memset(out, 0, sizeof(*out));
  out->family = c->vip->pfx->prefix.family;
  out->len = c->vip->pfx->group_len;
  memcpy(&out->addr, c->group->key, out->family == AF_INET ? 4 : 16);
  return 0;
}
