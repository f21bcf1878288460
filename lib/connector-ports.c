/* Connector port accounting: which source a connection to a destination
 * should come from. The kernel is the authority on free ports; this count
 * of ports per (source, destination) pair (ours, plus others reported by
 * uvip_connector_correct()) only orders the sources, and a pair is skipped
 * only after the kernel refused it. Kept apart from connector.c so that the
 * bookkeeping can be read without the libuv handle lifecycle around it.
 * SPDX-License-Identifier: MIT */
#include "connector-internal.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* What Linux uses when the sysctl cannot be read. */
#define DEFAULT_PORT_LO 32768
#define DEFAULT_PORT_HI 60999

static void read_port_range(uint32_t *lo, uint32_t *hi) {
  int64_t r[2];
  *lo = DEFAULT_PORT_LO;
  *hi = DEFAULT_PORT_HI;
  if (uvip__proc_ints("/proc/sys/net/ipv4/ip_local_port_range", r, 2) == 2 &&
      r[0] > 0 && r[0] <= r[1] && r[1] <= 65535) {
    *lo = (uint32_t)r[0];
    *hi = (uint32_t)r[1];
  }
}

/* Probed once per connector: kernels before 6.3 refuse the option. */
static bool probe_port_range(uint32_t lo, uint32_t hi) {
  uint32_t v = (hi << 16) | lo;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  bool ok;
  if (fd < 0)
    return false;
  ok = setsockopt(fd, IPPROTO_IP, IP_LOCAL_PORT_RANGE, &v, sizeof(v)) == 0;
  close(fd);
  return ok;
}

void uvip__cn_port_range(uvip_connector_t *c,
                         const uvip_connector_options_t *opts) {
  read_port_range(&c->port_lo, &c->port_hi);
  if (opts && opts->port_min != 0) {
    uint32_t lo = opts->port_min > c->port_lo ? opts->port_min : c->port_lo;
    uint32_t hi = opts->port_max < c->port_hi ? opts->port_max : c->port_hi;
    /* The kernel intersects the two ranges and falls back to the system
     * range when they do not overlap; count what it will really use. */
    if (lo <= hi && probe_port_range(lo, hi)) {
      c->port_lo = lo;
      c->port_hi = hi;
      c->set_port_range = true;
    }
  } else {
    c->set_port_range = probe_port_range(c->port_lo, c->port_hi);
  }
  c->range = (uint64_t)c->port_hi - c->port_lo + 1;
}

bool uvip__cn_valid_dest(const struct sockaddr *sa) {
  if (sa->sa_family == AF_INET)
    return ((const struct sockaddr_in *)sa)->sin_port != 0;
  if (sa->sa_family == AF_INET6)
    return ((const struct sockaddr_in6 *)sa)->sin6_port != 0;
  return false;
}

/* Address, port and (IPv6) scope; other fields such as padding are left
 * out because callers do not always zero them. */
static bool dest_equal(const uvip__cn_addr_t *a, const struct sockaddr *b) {
  if (a->sa.sa_family != b->sa_family)
    return false;
  if (b->sa_family == AF_INET) {
    const struct sockaddr_in *x = (const struct sockaddr_in *)b;
    return a->in.sin_port == x->sin_port &&
           a->in.sin_addr.s_addr == x->sin_addr.s_addr;
  }
  {
    const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)b;
    return a->in6.sin6_port == x->sin6_port &&
           a->in6.sin6_scope_id == x->sin6_scope_id &&
           memcmp(&a->in6.sin6_addr, &x->sin6_addr, 16) == 0;
  }
}

static size_t dest_hash(const struct sockaddr *sa) {
  const unsigned char *p;
  size_t n, i;
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  uint16_t port;
  if (sa->sa_family == AF_INET) {
    p = (const unsigned char *)&((const struct sockaddr_in *)sa)->sin_addr;
    n = 4;
    port = ((const struct sockaddr_in *)sa)->sin_port;
  } else {
    p = (const unsigned char *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
    n = 16;
    port = ((const struct sockaddr_in6 *)sa)->sin6_port;
  }
  for (i = 0; i < n; i++)
    h = (h ^ p[i]) * 1099511628211ull;
  h = (h ^ (port & 0xff)) * 1099511628211ull;
  h = (h ^ (port >> 8)) * 1099511628211ull;
  return (size_t)h;
}

int uvip__cn_dests_init(uvip_connector_t *c) {
  c->nbuckets = 16;
  c->buckets = calloc(c->nbuckets, sizeof(*c->buckets));
  return c->buckets ? 0 : UV_ENOMEM;
}

void uvip__cn_dests_free(uvip_connector_t *c) {
  size_t i;
  for (i = 0; i < c->nbuckets; i++) {
    uvip__cn_dest_t *d = c->buckets[i];
    while (d) {
      uvip__cn_dest_t *next = d->next;
      free(d);
      d = next;
    }
  }
  free(c->buckets);
}

static uvip__cn_dest_t *dest_find(const uvip_connector_t *c,
                                  const struct sockaddr *sa) {
  uvip__cn_dest_t *d;
  for (d = c->buckets[dest_hash(sa) & (c->nbuckets - 1)]; d; d = d->next)
    if (dest_equal(&d->addr, sa))
      return d;
  return NULL;
}

static void dest_grow(uvip_connector_t *c) {
  size_t n = c->nbuckets * 2, i;
  uvip__cn_dest_t **b = calloc(n, sizeof(*b));
  if (b == NULL)
    return; /* longer chains, still correct */
  for (i = 0; i < c->nbuckets; i++) {
    uvip__cn_dest_t *d = c->buckets[i];
    while (d) {
      uvip__cn_dest_t *next = d->next;
      size_t h = dest_hash(&d->addr.sa) & (n - 1);
      d->next = b[h];
      b[h] = d;
      d = next;
    }
  }
  free(c->buckets);
  c->buckets = b;
  c->nbuckets = n;
}

uvip__cn_dest_t *uvip__cn_dest_get(uvip_connector_t *c,
                                   const struct sockaddr *sa) {
  uvip__cn_dest_t *d = dest_find(c, sa);
  size_t h;
  if (c->pfx)
    uvip__cn_prefix_search_reset(c);
  if (d)
    return d;
  d = calloc(1, sizeof(*d) + (c->pfx ? 0 : c->nsrcs) * sizeof(uvip__cn_pair_t));
  if (d == NULL)
    return NULL;
  memcpy(&d->addr, sa, uvip__sa_len(sa));
  if (c->pfx)
    uvip__cn_prefix_dest_init(c, d);
  if (c->ndests >= c->nbuckets)
    dest_grow(c);
  h = dest_hash(sa) & (c->nbuckets - 1);
  d->next = c->buckets[h];
  c->buckets[h] = d;
  c->ndests++;
  return d;
}

void uvip__cn_dest_maybe_free(uvip_connector_t *c, uvip__cn_dest_t *d) {
  uvip__cn_dest_t **pp;
  if (c->pfx) /* a failed search ends here: its pairs go before d can */
    uvip__cn_prefix_search_reset(c);
  if (d->own != 0 || d->others != 0)
    return;
  for (pp = &c->buckets[dest_hash(&d->addr.sa) & (c->nbuckets - 1)]; *pp;
       pp = &(*pp)->next) {
    if (*pp == d) {
      *pp = d->next;
      c->ndests--;
      free(d);
      return;
    }
  }
}

static int64_t pair_free(const uvip_connector_t *c, const uvip__cn_pair_t *p) {
  return (int64_t)c->range - (int64_t)p->own - (int64_t)p->others;
}

long uvip__cn_next_source(uvip_connector_t *c, uvip__cn_dest_t *d,
                          int family) {
  long best = -1;
  int64_t best_free = INT64_MIN;
  size_t k;
  if (c->pfx)
    return uvip__cn_prefix_next(c, d);
  for (k = 0; k < c->nsrcs; k++) {
    size_t i = (d->rr + k) % c->nsrcs;
    int64_t f;
    if (d->pairs[i].exhausted)
      continue;
    if (c->srcs[i].family != AF_UNSPEC && c->srcs[i].family != family)
      continue;
    f = pair_free(c, &d->pairs[i]);
    if (f > best_free) {
      best_free = f;
      best = (long)i;
    }
  }
  if (best >= 0)
    d->rr = (uint32_t)(((size_t)best + 1) % c->nsrcs);
  return best;
}

void uvip__cn_take(uvip_connector_t *c, uvip__cn_dest_t *d, size_t i) {
  if (c->pfx) {
    uvip__cn_prefix_take(c, d, i);
    return;
  }
  d->pairs[i].own++;
  d->own++;
  c->srcs[i].stats.in_use++;
}

void uvip__cn_give_back(uvip_connector_t *c, uvip__cn_dest_t *d, size_t i,
                        bool had_port) {
  uvip__cn_pair_t *p;
  if (c->pfx) {
    uvip__cn_prefix_give_back(c, d, i, had_port);
    uvip__cn_dest_maybe_free(c, d);
    return;
  }
  p = &d->pairs[i];
  p->own--;
  /* The kernel has the port back (or in TIME_WAIT, which connect() may
   * reuse; a census correction covers the rest). An attempt the kernel
   * had no port for frees none: the mark it set stays. */
  if (had_port)
    p->exhausted = 0;
  d->own--;
  c->srcs[i].stats.in_use--;
  uvip__cn_dest_maybe_free(c, d);
}

uvip__cn_source_t *uvip__cn_src(uvip_connector_t *c, size_t i) {
  return &c->srcs[c->pfx ? 0 : i];
}

const struct sockaddr *uvip__cn_source_addr(const uvip_connector_t *c,
                                            size_t i) {
  return c->pfx ? uvip__cn_prefix_addr(c, i) : &c->srcs[i].addr.sa;
}

void uvip__cn_exhausted(uvip_connector_t *c, uvip__cn_dest_t *d, size_t i) {
  if (c->pfx) {
    uvip__cn_prefix_exhausted(c, i);
    return;
  }
  d->pairs[i].exhausted = 1;
  c->srcs[i].stats.exhausted++;
}

/* Index of a source by address (port ignored), or UV_ENOENT. */
static long find_source(const uvip_connector_t *c, const struct sockaddr *sa) {
  size_t i;
  if (sa == NULL)
    return c->bind_sources ? UV_ENOENT : 0;
  if (!c->bind_sources)
    return UV_ENOENT;
  for (i = 0; i < c->nsrcs; i++) {
    const uvip__cn_addr_t *a = &c->srcs[i].addr;
    if (a->sa.sa_family != sa->sa_family)
      continue;
    if (sa->sa_family == AF_INET &&
        a->in.sin_addr.s_addr ==
            ((const struct sockaddr_in *)sa)->sin_addr.s_addr)
      return (long)i;
    if (sa->sa_family == AF_INET6 &&
        memcmp(&a->in6.sin6_addr, &((const struct sockaddr_in6 *)sa)->sin6_addr,
               16) == 0)
      return (long)i;
  }
  return UV_ENOENT;
}

UVIP_EXPORT int uvip_connector_ports(const uvip_connector_t *c,
                                     const struct sockaddr *source,
                                     const struct sockaddr *dest,
                                     uvip_connector_ports_t *out) {
  const uvip__cn_dest_t *d;
  long i;
  UVIP_CHECK_ARG(c == NULL || dest == NULL || out == NULL);
  UVIP_CHECK_ARG(!uvip__cn_valid_dest(dest));
  if (c->pfx)
    return uvip__cn_prefix_ports(c, source, dest_find(c, dest), out);
  i = find_source(c, source);
  if (i < 0)
    return (int)i;
  memset(out, 0, sizeof(*out));
  out->range = c->range;
  d = dest_find(c, dest);
  if (d) {
    out->in_use = d->pairs[i].own;
    out->others = d->pairs[i].others;
    out->exhausted = d->pairs[i].exhausted;
  }
  return 0;
}

UVIP_EXPORT int uvip_connector_correct(uvip_connector_t *c,
                                       const struct sockaddr *source,
                                       const struct sockaddr *dest,
                                       uint64_t sockets) {
  uvip__cn_dest_t *d;
  uvip__cn_pair_t *p;
  uint64_t others;
  long i;
  UVIP_CHECK_ARG(c == NULL || dest == NULL || c->closing);
  UVIP_CHECK_ARG(!uvip__cn_valid_dest(dest));
  if (c->pfx) {
    int r;
    if ((d = uvip__cn_dest_get(c, dest)) == NULL)
      return UV_ENOMEM;
    r = uvip__cn_prefix_correct(c, source, d, sockets);
    uvip__cn_dest_maybe_free(c, d);
    return r;
  }
  i = find_source(c, source);
  if (i < 0)
    return (int)i;
  d = uvip__cn_dest_get(c, dest);
  if (d == NULL)
    return UV_ENOMEM;
  p = &d->pairs[i];
  others = sockets > p->own ? sockets - p->own : 0;
  if (others > c->range)
    others = c->range;
  d->others = d->others - p->others + others;
  p->others = (uint32_t)others;
  if (pair_free(c, p) > 0)
    p->exhausted = 0;
  uvip__cn_dest_maybe_free(c, d);
  return 0;
}
