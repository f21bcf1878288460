/* Connector sources inside a prefix: which address of a (possibly 2^64
 * address) prefix a connection comes from, and the port accounting of the
 * (source, destination) pairs actually in use. A list connector keeps an
 * array of pairs per destination, one per source; that cannot work for a
 * /64, so here pairs live in a hash table and exist only while they hold
 * a connection or a correction (or were tried during the current
 * uvip_connect()). A source index (outconn->src) is a slot of that table.
 *
 * Addresses are visited in a full-period sequence per destination:
 * index(k+1) = index(k) + stride mod n, stride coprime with n and about
 * 0.618 n (a Weyl sequence), starting at a hash of the destination. It
 * needs no state per address and no 128-bit arithmetic: prefixes with more
 * than 64 host bits take the bits above 64 from the destination's hash.
 * SPDX-License-Identifier: MIT */
#include "connector-internal.h"
#include "rtnl.h"

#include <arpa/inet.h>
#include <linux/rtnetlink.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef IPV6_FREEBIND
#define IPV6_FREEBIND 78
#endif

/* Pairs looked at per uvip_connect() before giving up with
 * UV_EADDRNOTAVAIL: bounds the work when the pairs met are exhausted. */
#define PICK_TRIES 64
/* Candidates compared by UVIP_PREFIX_LEAST_USED. */
#define LEAST_USED_K 16

typedef struct hnode {
  struct hnode *next;
  uint64_t hash;
} hnode_t;

typedef struct {
  hnode_t **b;
  size_t nb, n; /* nb: a power of two */
} htab_t;

typedef struct {
  hnode_t h; /* first: the table links it */
  uvip__cn_addr_t sa;
  uint32_t uses;   /* our connections from it, to any destination */
  uint32_t npairs; /* pairs that refer to it */
} pf_addr_t;

typedef struct {
  hnode_t h;
  pf_addr_t *a;
  uvip__cn_dest_t *d;
  uvip__cn_pair_t p;
  uint32_t slot;
} pf_pair_t;

struct uvip__cn_prefix_s {
  uvip_prefix_t prefix; /* host bits cleared */
  uvip_prefix_policy_t policy;
  unsigned int hostbits;
  uint64_t n;      /* usable addresses (of the low 64 host bits) */
  uint64_t first;  /* host value of index 0: 1 when the zero host is out */
  uint64_t stride; /* coprime with n */
  htab_t addrs, pairs;
  pf_pair_t **slots;
  uint32_t *free_slots;
  size_t nslots, nfree, cap;
  /* Pairs handed out by this search with nothing of theirs yet; dropped
   * when the search ends unless a connection took them. */
  pf_pair_t *spent[PICK_TRIES];
  unsigned int nspent, tries;
};

static uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

static uint64_t bytes_hash(const void *p, size_t n, uint64_t seed) {
  const unsigned char *b = p;
  uint64_t h = seed;
  for (size_t i = 0; i < n; i++)
    h = (h ^ b[i]) * 1099511628211ull;
  return mix64(h);
}

static uint64_t addr_hash(const uvip__cn_addr_t *a) {
  if (a->sa.sa_family == AF_INET)
    return bytes_hash(&a->in.sin_addr, 4, 1469598103934665603ull);
  return bytes_hash(&a->in6.sin6_addr, 16, 1469598103934665603ull);
}

static uint64_t dest_hash(const uvip__cn_dest_t *d) {
  const uvip__cn_addr_t *a = &d->addr;
  if (a->sa.sa_family == AF_INET)
    return bytes_hash(&a->in.sin_port, 2,
                      bytes_hash(&a->in.sin_addr, 4, 7));
  return bytes_hash(&a->in6.sin6_port, 2,
                    bytes_hash(&a->in6.sin6_addr, 16, 7));
}

static bool addr_eq(const uvip__cn_addr_t *a, const uvip__cn_addr_t *b) {
  if (a->sa.sa_family != b->sa.sa_family)
    return false;
  if (a->sa.sa_family == AF_INET)
    return a->in.sin_addr.s_addr == b->in.sin_addr.s_addr;
  return memcmp(&a->in6.sin6_addr, &b->in6.sin6_addr, 16) == 0;
}

/* ------------------------------------------------------------------------ */
/* A chained hash table of nodes that embed hnode_t                         */
/* ------------------------------------------------------------------------ */

static int ht_init(htab_t *t) {
  t->nb = 64;
  t->n = 0;
  t->b = calloc(t->nb, sizeof(*t->b));
  return t->b ? 0 : UV_ENOMEM;
}

static void ht_insert(htab_t *t, hnode_t *x) {
  if (t->n >= t->nb) {
    size_t nb = t->nb * 2;
    hnode_t **b = calloc(nb, sizeof(*b));
    if (b != NULL) { /* else longer chains, still correct */
      for (size_t i = 0; i < t->nb; i++) {
        hnode_t *y = t->b[i];
        while (y) {
          hnode_t *next = y->next;
          y->next = b[y->hash & (nb - 1)];
          b[y->hash & (nb - 1)] = y;
          y = next;
        }
      }
      free(t->b);
      t->b = b;
      t->nb = nb;
    }
  }
  x->next = t->b[x->hash & (t->nb - 1)];
  t->b[x->hash & (t->nb - 1)] = x;
  t->n++;
}

static void ht_remove(htab_t *t, hnode_t *x) {
  hnode_t **pp = &t->b[x->hash & (t->nb - 1)];
  while (*pp != x)
    pp = &(*pp)->next;
  *pp = x->next;
  t->n--;
}

/* ------------------------------------------------------------------------ */
/* Addresses and pairs in use                                               */
/* ------------------------------------------------------------------------ */

static pf_addr_t *addr_find(const uvip__cn_prefix_t *x,
                            const uvip__cn_addr_t *sa, uint64_t h) {
  for (hnode_t *n = x->addrs.b[h & (x->addrs.nb - 1)]; n; n = n->next)
    if (n->hash == h && addr_eq(&((pf_addr_t *)n)->sa, sa))
      return (pf_addr_t *)n;
  return NULL;
}

static uint64_t pair_hash(const pf_addr_t *a, const uvip__cn_dest_t *d) {
  return mix64(a->h.hash ^ (uint64_t)(uintptr_t)d);
}

static pf_pair_t *pair_find(const uvip__cn_prefix_t *x, const pf_addr_t *a,
                            const uvip__cn_dest_t *d) {
  uint64_t h = pair_hash(a, d);
  for (hnode_t *n = x->pairs.b[h & (x->pairs.nb - 1)]; n; n = n->next)
    if (n->hash == h && ((pf_pair_t *)n)->a == a && ((pf_pair_t *)n)->d == d)
      return (pf_pair_t *)n;
  return NULL;
}

static void addr_maybe_free(uvip__cn_prefix_t *x, pf_addr_t *a) {
  if (a->uses != 0 || a->npairs != 0)
    return;
  ht_remove(&x->addrs, &a->h);
  free(a);
}

/* The pair (sa, d), created on first use; NULL without memory. */
static pf_pair_t *pair_get(uvip__cn_prefix_t *x, const uvip__cn_addr_t *sa,
                           uvip__cn_dest_t *d) {
  uint64_t h = addr_hash(sa);
  pf_addr_t *a = addr_find(x, sa, h);
  pf_pair_t *p;
  if (a != NULL && (p = pair_find(x, a, d)) != NULL)
    return p;
  if (x->nfree == 0 && x->nslots == x->cap) {
    size_t cap = x->cap ? x->cap * 2 : 64;
    pf_pair_t **s;
    uint32_t *f;
    if (cap > UINT32_MAX)
      return NULL;
    if ((s = realloc(x->slots, cap * sizeof(*s))) == NULL)
      return NULL;
    x->slots = s;
    if ((f = realloc(x->free_slots, cap * sizeof(*f))) == NULL)
      return NULL;
    x->free_slots = f;
    x->cap = cap;
  }
  p = calloc(1, sizeof(*p));
  if (p == NULL)
    return NULL;
  if (a == NULL) {
    if ((a = calloc(1, sizeof(*a))) == NULL) {
      free(p);
      return NULL;
    }
    a->sa = *sa;
    a->h.hash = h;
    ht_insert(&x->addrs, &a->h);
  }
  a->npairs++;
  p->a = a;
  p->d = d;
  p->h.hash = pair_hash(a, d);
  p->slot = (uint32_t)(x->nfree ? x->free_slots[--x->nfree] : x->nslots++);
  x->slots[p->slot] = p;
  ht_insert(&x->pairs, &p->h);
  return p;
}

/* Drops a pair that holds nothing. */
static void pair_maybe_free(uvip__cn_prefix_t *x, pf_pair_t *p) {
  if (p->p.own != 0 || p->p.others != 0)
    return;
  ht_remove(&x->pairs, &p->h);
  x->slots[p->slot] = NULL;
  x->free_slots[x->nfree++] = p->slot;
  p->a->npairs--;
  addr_maybe_free(x, p->a);
  free(p);
}

/* ------------------------------------------------------------------------ */
/* The sequence of addresses                                                */
/* ------------------------------------------------------------------------ */

static uint64_t gcd64(uint64_t a, uint64_t b) {
  while (b != 0) {
    uint64_t t = a % b;
    a = b;
    b = t;
  }
  return a;
}

/* The address of index k (0..n-1); dh fills host bits above 64. */
static void addr_at(const uvip__cn_prefix_t *x, uint64_t k, uint64_t dh,
                    uvip__cn_addr_t *out) {
  uint64_t h = x->first + k;
  memset(out, 0, sizeof(*out));
  if (x->prefix.family == AF_INET) {
    out->in.sin_family = AF_INET;
    out->in.sin_addr.s_addr = x->prefix.addr.v4.s_addr | htonl((uint32_t)h);
    return;
  }
  unsigned char *b = out->in6.sin6_addr.s6_addr;
  out->in6.sin6_family = AF_INET6;
  memcpy(b, &x->prefix.addr.v6, 16);
  for (int i = 0; i < 8; i++)
    b[15 - i] |= (unsigned char)(h >> (8 * i));
  if (x->hostbits > 64) {
    unsigned int up = x->hostbits - 64;
    uint64_t v = up >= 64 ? dh : dh & ((UINT64_C(1) << up) - 1);
    for (int i = 0; i < 8; i++)
      b[7 - i] |= (unsigned char)(v >> (8 * i));
  }
}

static uint64_t step(const uvip__cn_prefix_t *x, uint64_t pos) {
  return pos >= x->n - x->stride ? pos - (x->n - x->stride) : pos + x->stride;
}

static bool pair_usable(const uvip_connector_t *c, const pf_pair_t *p) {
  return !p->p.exhausted && (uint64_t)p->p.own + p->p.others < c->range;
}

/* ------------------------------------------------------------------------ */
/* The connector's side                                                     */
/* ------------------------------------------------------------------------ */

static int route_error(const uvip__cn_prefix_t *x, const uvip__cn_addr_t *a,
                       char *errbuf, size_t errlen) {
  char pfx[UVIP_PREFIXSTRLEN], ip[UVIP_ADDRSTRLEN];
  if (errbuf == NULL || errlen == 0)
    return UV_EADDRNOTAVAIL;
  uvip_prefix_format(&x->prefix, pfx, sizeof(pfx));
  uvip_addr_format(&a->sa, 0, ip, sizeof(ip));
  snprintf(errbuf, errlen,
           "no local route for %s (%s is not local): add it with "
           "'ip%s route add local %s dev lo' (or "
           "uvip_provision_new_local_route())",
           pfx, ip, x->prefix.family == AF_INET6 ? " -6" : "", pfx);
  return UV_EADDRNOTAVAIL;
}

/* Both ends of the prefix and a middle address must be local: a route for
 * part of it would fail later, one connection at a time. */
static int check_route(const uvip__cn_prefix_t *x, char *errbuf,
                       size_t errlen) {
  uint64_t ks[3] = {0, x->n / 2, x->n - 1};
  struct mnl_socket *nl;
  int r = uvip__rtnl_open(0, 0, &nl);
  if (r != 0) {
    if (errbuf != NULL && errlen > 0)
      snprintf(errbuf, errlen, "rtnetlink socket: %s", uv_strerror(r));
    return r;
  }
  for (int i = 0; i < 3 && r == 0; i++) {
    uvip__cn_addr_t a;
    unsigned int type;
    addr_at(x, ks[i], (uint64_t)i * 0x9e3779b97f4a7c15ull, &a);
    const void *bytes = x->prefix.family == AF_INET
                            ? (const void *)&a.in.sin_addr
                            : (const void *)&a.in6.sin6_addr;
    r = uvip__rtnl_route_type(nl, x->prefix.family, bytes, &type);
    if (r != 0) {
      if (errbuf != NULL && errlen > 0)
        snprintf(errbuf, errlen, "route lookup: %s", uv_strerror(r));
    } else if (type != RTN_LOCAL) {
      r = route_error(x, &a, errbuf, errlen);
    }
  }
  mnl_socket_close(nl);
  return r;
}

int uvip__cn_prefix_new(uvip_connector_t *c, const uvip_prefix_t *prefix,
                        uvip_prefix_policy_t policy, char *errbuf,
                        size_t errlen) {
  uvip__cn_prefix_t *x = calloc(1, sizeof(*x));
  unsigned int width = prefix->family == AF_INET ? 32 : 128;
  int r;
  if (x == NULL)
    return UV_ENOMEM;
  x->prefix = *prefix;
  uvip__prefix_mask(&x->prefix);
  x->policy = policy;
  x->hostbits = width - prefix->len;
  x->first = x->hostbits >= 2 ? 1 : 0;
  if (x->hostbits < 2)
    x->n = UINT64_C(1) << x->hostbits;
  else if (prefix->family == AF_INET)
    x->n = (UINT64_C(1) << x->hostbits) - 2;
  else
    x->n = x->hostbits >= 64 ? UINT64_MAX : (UINT64_C(1) << x->hostbits) - 1;
  /* Golden ratio steps: consecutive connections land far apart. */
  x->stride = (uint64_t)((double)x->n * 0.6180339887498949);
  if (x->stride == 0 || x->stride >= x->n)
    x->stride = 1;
  while (gcd64(x->stride, x->n) != 1)
    x->stride++;
  if ((r = ht_init(&x->addrs)) != 0 || (r = ht_init(&x->pairs)) != 0 ||
      (r = check_route(x, errbuf, errlen)) != 0) {
    if (r == UV_ENOMEM && errbuf != NULL && errlen > 0)
      snprintf(errbuf, errlen, "out of memory");
    free(x->addrs.b);
    free(x->pairs.b);
    free(x);
    return r;
  }
  c->pfx = x;
  return 0;
}

void uvip__cn_prefix_free(uvip_connector_t *c) {
  uvip__cn_prefix_t *x = c->pfx;
  for (size_t i = 0; i < x->nslots; i++)
    free(x->slots[i]);
  for (size_t i = 0; i < x->addrs.nb; i++) {
    hnode_t *n = x->addrs.b[i];
    while (n) {
      hnode_t *next = n->next;
      free(n);
      n = next;
    }
  }
  free(x->addrs.b);
  free(x->pairs.b);
  free(x->slots);
  free(x->free_slots);
  free(x);
}

void uvip__cn_prefix_sockopts(const uvip_connector_t *c, int fd) {
  int one = 1;
  /* IPv6 binds only addresses on an interface, even under a local route;
   * FREEBIND lets it bind the prefix's. Harmless for IPv4, whose bind does
   * honour local routes. A failure shows as bind()'s error. */
  if (c->pfx->prefix.family == AF_INET6)
    (void)setsockopt(fd, IPPROTO_IPV6, IPV6_FREEBIND, &one, sizeof(one));
  (void)setsockopt(fd, IPPROTO_IP, IP_FREEBIND, &one, sizeof(one));
}

void uvip__cn_prefix_dest_init(uvip_connector_t *c, uvip__cn_dest_t *d) {
  d->pos = dest_hash(d) % c->pfx->n;
}

/* Every pair in the table holds a connection or a correction, or is in
 * spent[] (made by the current search); spent[] is empty between
 * searches, so no pair outlives the destination it points to. */
void uvip__cn_prefix_search_reset(uvip_connector_t *c) {
  uvip__cn_prefix_t *x = c->pfx;
  while (x->nspent > 0)
    pair_maybe_free(x, x->spent[--x->nspent]);
  x->tries = 0;
}

long uvip__cn_prefix_next(uvip_connector_t *c, uvip__cn_dest_t *d) {
  uvip__cn_prefix_t *x = c->pfx;
  uint64_t dh = dest_hash(d);
  uint64_t k = x->policy == UVIP_PREFIX_LEAST_USED
                   ? (x->n < LEAST_USED_K ? x->n : LEAST_USED_K)
                   : 1;
  while (x->tries < PICK_TRIES) {
    pf_pair_t *best = NULL;
    uint32_t best_uses = UINT32_MAX;
    for (uint64_t j = 0; j < k && x->tries < PICK_TRIES; j++) {
      uvip__cn_addr_t sa;
      pf_pair_t *p;
      addr_at(x, d->pos, dh, &sa);
      d->pos = step(x, d->pos);
      x->tries++;
      pf_addr_t *a = addr_find(x, &sa, addr_hash(&sa));
      uint32_t uses = a ? a->uses : 0;
      if (a != NULL && (p = pair_find(x, a, d)) != NULL) {
        if (pair_usable(c, p) && uses < best_uses) {
          best = p;
          best_uses = uses;
        }
      } else if (uses < best_uses) {
        /* Unknown pair: all its ports are free. Only now is it made, so
         * that a search never holds more than one pair per try. */
        if ((p = pair_get(x, &sa, d)) == NULL)
          return UV_ENOMEM;
        /* At most one new pair per try: spent[] has room. */
        x->spent[x->nspent++] = p;
        best = p;
        best_uses = uses;
      }
      if (best != NULL && best_uses == 0)
        break;
    }
    if (best != NULL)
      return (long)best->slot;
  }
  return -1;
}

void uvip__cn_prefix_take(uvip_connector_t *c, uvip__cn_dest_t *d, size_t i) {
  pf_pair_t *p = c->pfx->slots[i];
  p->p.own++;
  p->a->uses++;
  d->own++;
  c->srcs[0].stats.in_use++;
  /* The search is over: what it tried and did not take goes. */
  uvip__cn_prefix_search_reset(c);
}

void uvip__cn_prefix_give_back(uvip_connector_t *c, uvip__cn_dest_t *d,
                               size_t i, bool had_port) {
  pf_pair_t *p = c->pfx->slots[i];
  p->p.own--;
  p->a->uses--;
  if (had_port)
    p->p.exhausted = 0;
  d->own--;
  c->srcs[0].stats.in_use--;
  pair_maybe_free(c->pfx, p);
}

void uvip__cn_prefix_exhausted(uvip_connector_t *c, size_t i) {
  c->pfx->slots[i]->p.exhausted = 1;
  c->srcs[0].stats.exhausted++;
}

const struct sockaddr *uvip__cn_prefix_addr(const uvip_connector_t *c,
                                            size_t i) {
  return &c->pfx->slots[i]->a->sa.sa;
}

/* The pool address of source, or UV_ENOENT. */
static int source_key(const uvip_connector_t *c, const struct sockaddr *sa,
                      uvip__cn_addr_t *out) {
  if (sa == NULL || uvip_prefix_contains(&c->pfx->prefix, sa) != 1)
    return UV_ENOENT;
  memset(out, 0, sizeof(*out));
  out->sa.sa_family = sa->sa_family;
  if (sa->sa_family == AF_INET)
    out->in.sin_addr = ((const struct sockaddr_in *)sa)->sin_addr;
  else
    out->in6.sin6_addr = ((const struct sockaddr_in6 *)sa)->sin6_addr;
  return 0;
}

int uvip__cn_prefix_ports(const uvip_connector_t *c,
                          const struct sockaddr *source,
                          const uvip__cn_dest_t *d,
                          uvip_connector_ports_t *out) {
  uvip__cn_addr_t sa;
  int r = source_key(c, source, &sa);
  if (r != 0)
    return r;
  memset(out, 0, sizeof(*out));
  out->range = c->range;
  pf_addr_t *a = addr_find(c->pfx, &sa, addr_hash(&sa));
  const pf_pair_t *p = a && d ? pair_find(c->pfx, a, d) : NULL;
  if (p != NULL) {
    out->in_use = p->p.own;
    out->others = p->p.others;
    out->exhausted = p->p.exhausted;
  }
  return 0;
}

int uvip__cn_prefix_correct(uvip_connector_t *c, const struct sockaddr *source,
                            uvip__cn_dest_t *d, uint64_t sockets) {
  uvip__cn_addr_t sa;
  pf_pair_t *p;
  uint64_t others;
  int r = source_key(c, source, &sa);
  if (r != 0)
    return r;
  if ((p = pair_get(c->pfx, &sa, d)) == NULL)
    return UV_ENOMEM;
  others = sockets > p->p.own ? sockets - p->p.own : 0;
  if (others > c->range)
    others = c->range;
  d->others = d->others - p->p.others + others;
  p->p.others = (uint32_t)others;
  if ((int64_t)c->range - p->p.own - (int64_t)others > 0)
    p->p.exhausted = 0;
  pair_maybe_free(c->pfx, p);
  return 0;
}

UVIP_EXPORT int uvip_connector_prefix(const uvip_connector_t *c,
                                      uvip_prefix_t *out) {
  UVIP_CHECK_ARG(c == NULL || out == NULL);
  if (c->pfx == NULL)
    return UV_ENOENT;
  *out = c->pfx->prefix;
  return 0;
}

UVIP_EXPORT size_t uvip_connector_prefix_in_use(const uvip_connector_t *c) {
  return c && c->pfx ? c->pfx->addrs.n : 0;
}

__attribute__((format(printf, 3, 4))) static int
arg_error(char *errbuf, size_t errlen, const char *fmt, ...) {
  if (errbuf != NULL && errlen > 0) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errbuf, errlen, fmt, ap);
    va_end(ap);
  }
  return UV_EINVAL;
}

UVIP_EXPORT int uvip_connector_new_prefix(uv_loop_t *loop,
                                          const uvip_prefix_t *prefix,
                                          uvip_prefix_policy_t policy,
                                          const uvip_connector_options_t *opts,
                                          char *errbuf, size_t errlen,
                                          uvip_connector_t **out) {
  uvip_connector_t *c;
  int r;
  if (errbuf != NULL && errlen > 0)
    errbuf[0] = '\0';
  if (loop == NULL || out == NULL || prefix == NULL)
    return arg_error(errbuf, errlen, "%s is NULL",
                     loop == NULL ? "loop" : out == NULL ? "out" : "prefix");
  if (!uvip__prefix_valid(prefix))
    return arg_error(errbuf, errlen, "not an IPv4 or IPv6 prefix");
  if (policy != UVIP_PREFIX_SPREAD && policy != UVIP_PREFIX_LEAST_USED)
    return arg_error(errbuf, errlen, "unknown policy %d", (int)policy);
  if (opts && ((opts->port_min == 0) != (opts->port_max == 0) ||
               opts->port_min > opts->port_max))
    return arg_error(errbuf, errlen, "bad port range %u-%u",
                     (unsigned int)opts->port_min,
                     (unsigned int)opts->port_max);

  c = calloc(1, sizeof(*c));
  if (c == NULL)
    return UV_ENOMEM;
  c->loop = loop;
  c->nsrcs = 1;
  c->bind_sources = true;
  c->srcs = calloc(1, sizeof(*c->srcs));
  if (c->srcs == NULL || uvip__cn_dests_init(c) != 0) {
    free(c->srcs);
    free(c);
    return UV_ENOMEM;
  }
  c->srcs[0].family = prefix->family;
  if ((r = uvip__cn_prefix_new(c, prefix, policy, errbuf, errlen)) != 0) {
    uvip__cn_dests_free(c);
    free(c->srcs);
    free(c);
    return r;
  }
  uvip__cn_port_range(c, opts);
  *out = c;
  return 0;
}
