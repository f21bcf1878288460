/* Outbound connector: connections from a pool of source addresses, with
 * port accounting per (source, destination) pair.
 * SPDX-License-Identifier: MIT */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* What Linux uses when the sysctl cannot be read. */
#define DEFAULT_PORT_LO 32768
#define DEFAULT_PORT_HI 60999

typedef union {
  struct sockaddr sa;
  struct sockaddr_in in;
  struct sockaddr_in6 in6;
} addr_t;

/* One (source, destination) pair. */
typedef struct {
  uint32_t own;    /* our connections, connecting or open */
  uint32_t others; /* other sockets, from the last correction */
  uint8_t exhausted;
} pair_t;

/* A destination with its pairs, one per source; kept while it has
 * connections or a correction, so its count is small. */
typedef struct dest_s {
  struct dest_s *next; /* hash chain */
  addr_t addr;
  uint64_t own;    /* sum of pairs' own */
  uint64_t others; /* sum of pairs' others */
  uint32_t rr;     /* where the next search starts: ties go round-robin */
  pair_t pairs[];
} dest_t;

typedef struct {
  addr_t addr;
  int family; /* AF_UNSPEC for the kernel's-choice pseudo-source */
  uvip_connector_stats_t stats;
} source_t;

enum { OC_CONNECTING, OC_OPEN, OC_CLOSING };

struct uvip_outconn_s {
  uv_tcp_t tcp; /* first: uvip_outconn_from_tcp() relies on it */
  uvip_connector_t *connector;
  dest_t *dest;  /* NULL for an attempt that never reached connect() */
  uint32_t src;
  uint8_t state;
  uvip_connect_cb connect_cb;
  uvip_outconn_close_cb close_cb;
  uvip_outconn_t *prev, *next; /* the connector's open connections */
};

struct uvip_connector_s {
  uv_loop_t *loop;
  source_t *srcs;
  size_t nsrcs;
  bool bind_sources; /* false: empty pool, the kernel chooses */
  uint32_t port_lo, port_hi;
  bool set_port_range; /* IP_LOCAL_PORT_RANGE works here */
  uint64_t range;

  dest_t **buckets;
  size_t nbuckets, ndests;

  uvip_outconn_t *conns;
  size_t handles; /* uv_tcp_t handles not yet closed */

  bool closing;
  bool closer_done;
  uv_idle_t closer; /* only ever closed: defers the close callback */
  uvip_connector_close_cb close_cb;
};

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

static size_t addr_len(const struct sockaddr *sa) {
  return sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                   : sizeof(struct sockaddr_in);
}

static bool valid_dest(const struct sockaddr *sa) {
  if (sa->sa_family == AF_INET)
    return ((const struct sockaddr_in *)sa)->sin_port != 0;
  if (sa->sa_family == AF_INET6)
    return ((const struct sockaddr_in6 *)sa)->sin6_port != 0;
  return false;
}

/* Address, port and (IPv6) scope; other fields such as padding are left
 * out because callers do not always zero them. */
static bool dest_equal(const addr_t *a, const struct sockaddr *b) {
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

static dest_t *dest_find(const uvip_connector_t *c, const struct sockaddr *sa) {
  dest_t *d;
  for (d = c->buckets[dest_hash(sa) & (c->nbuckets - 1)]; d; d = d->next)
    if (dest_equal(&d->addr, sa))
      return d;
  return NULL;
}

static void dest_grow(uvip_connector_t *c) {
  size_t n = c->nbuckets * 2, i;
  dest_t **b = calloc(n, sizeof(*b));
  if (b == NULL)
    return; /* longer chains, still correct */
  for (i = 0; i < c->nbuckets; i++) {
    dest_t *d = c->buckets[i];
    while (d) {
      dest_t *next = d->next;
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

static dest_t *dest_get(uvip_connector_t *c, const struct sockaddr *sa) {
  dest_t *d = dest_find(c, sa);
  size_t h;
  if (d)
    return d;
  d = calloc(1, sizeof(*d) + c->nsrcs * sizeof(pair_t));
  if (d == NULL)
    return NULL;
  memcpy(&d->addr, sa, addr_len(sa));
  if (c->ndests >= c->nbuckets)
    dest_grow(c);
  h = dest_hash(sa) & (c->nbuckets - 1);
  d->next = c->buckets[h];
  c->buckets[h] = d;
  c->ndests++;
  return d;
}

/* Drops a destination nothing refers to and nothing is known about. */
static void dest_maybe_free(uvip_connector_t *c, dest_t *d) {
  dest_t **pp;
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

static int64_t pair_free(const uvip_connector_t *c, const pair_t *p) {
  return (int64_t)c->range - (int64_t)p->own - (int64_t)p->others;
}

/* The usable source with the most free ports, or -1. */
static long pick_source(uvip_connector_t *c, dest_t *d, int family) {
  long best = -1;
  int64_t best_free = INT64_MIN;
  size_t k;
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
  return best;
}

static void conn_list_remove(uvip_connector_t *c, uvip_outconn_t *oc) {
  if (oc->prev)
    oc->prev->next = oc->next;
  else if (c->conns == oc)
    c->conns = oc->next;
  if (oc->next)
    oc->next->prev = oc->prev;
  oc->prev = oc->next = NULL;
}

static void maybe_finish_close(uvip_connector_t *c) {
  size_t i;
  if (!c->closing || !c->closer_done || c->handles != 0)
    return;
  if (c->close_cb)
    c->close_cb(c);
  for (i = 0; i < c->nbuckets; i++) {
    dest_t *d = c->buckets[i];
    while (d) {
      dest_t *next = d->next;
      free(d);
      d = next;
    }
  }
  free(c->buckets);
  free(c->srcs);
  free(c);
}

static void on_conn_closed(uv_handle_t *h) {
  uvip_outconn_t *oc = (uvip_outconn_t *)h;
  uvip_connector_t *c = oc->connector;
  if (oc->dest) {
    /* The kernel has the port back (or in TIME_WAIT, which connect() may
     * reuse; a census correction covers the rest). */
    dest_t *d = oc->dest;
    pair_t *p = &d->pairs[oc->src];
    p->own--;
    p->exhausted = 0;
    d->own--;
    c->srcs[oc->src].stats.in_use--;
    conn_list_remove(c, oc);
    dest_maybe_free(c, d);
    if (oc->close_cb)
      oc->close_cb(oc);
  }
  free(oc);
  c->handles--;
  maybe_finish_close(c);
}

static void on_connect(uv_connect_t *req, int status) {
  uvip_outconn_t *oc = (uvip_outconn_t *)req->handle;
  uvip_connector_t *c = oc->connector;
  source_t *s = &c->srcs[oc->src];
  const struct sockaddr *src = c->bind_sources ? &s->addr.sa : NULL;
  free(req);
  if (status == 0) {
    s->stats.connected++;
    if (oc->state == OC_CONNECTING)
      oc->state = OC_OPEN;
    oc->connect_cb(oc, 0, src);
    return;
  }
  if (status == UV_EADDRNOTAVAIL || status == UV_EADDRINUSE) {
    oc->dest->pairs[oc->src].exhausted = 1;
    s->stats.exhausted++;
  } else if (status != UV_ECANCELED) {
    s->stats.failed++;
  }
  if (oc->state != OC_CLOSING) {
    /* Marked before the callback so that a close from inside it is a
     * harmless UV_EALREADY instead of a double close. */
    oc->state = OC_CLOSING;
    oc->connect_cb(oc, status, src);
    uv_close((uv_handle_t *)&oc->tcp, on_conn_closed);
  } else {
    oc->connect_cb(oc, status, src);
  }
}

/* One attempt from source i. Returns 0 with the connect started, or the
 * error of socket(), bind() or connect(). */
static int attempt(uvip_connector_t *c, dest_t *d, size_t i,
                   const struct sockaddr *dest, uvip_outconn_t **out) {
  source_t *s = &c->srcs[i];
  uvip_outconn_t *oc;
  uv_connect_t *req;
  int fd, r, one = 1;

  oc = calloc(1, sizeof(*oc));
  req = malloc(sizeof(*req));
  if (oc == NULL || req == NULL) {
    free(oc);
    free(req);
    return UV_ENOMEM;
  }
  fd = socket(dest->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    r = uv_translate_sys_error(errno);
    goto fail_fd;
  }
  if (c->set_port_range) {
    uint32_t v = (c->port_hi << 16) | c->port_lo;
    (void)setsockopt(fd, IPPROTO_IP, IP_LOCAL_PORT_RANGE, &v, sizeof(v));
  }
  if (c->bind_sources) {
    /* Without it bind() reserves a port for the source address alone and
     * one address could hold only ~28k connections in total, not per
     * destination. Failing to set it only costs capacity. */
    (void)setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one,
                     sizeof(one));
    if (bind(fd, &s->addr.sa, (socklen_t)addr_len(&s->addr.sa)) != 0) {
      r = uv_translate_sys_error(errno);
      close(fd);
      goto fail_fd;
    }
  }

  r = uv_tcp_init(c->loop, &oc->tcp);
  if (r != 0) {
    close(fd);
    goto fail_fd;
  }
  oc->connector = c;
  oc->src = (uint32_t)i;
  c->handles++;
  r = uv_tcp_open(&oc->tcp, fd);
  if (r != 0) {
    close(fd);
  } else {
    r = uv_tcp_connect(req, &oc->tcp, dest, on_connect);
  }
  if (r != 0) {
    /* The handle exists now and can only go away through the loop; the
     * close callback sees dest == NULL and just frees it. */
    free(req);
    uv_close((uv_handle_t *)&oc->tcp, on_conn_closed);
    return r;
  }

  oc->dest = d;
  oc->state = OC_CONNECTING;
  d->pairs[i].own++;
  d->own++;
  s->stats.in_use++;
  oc->next = c->conns;
  if (c->conns)
    c->conns->prev = oc;
  c->conns = oc;
  *out = oc;
  return 0;

fail_fd:
  free(oc);
  free(req);
  return r;
}

UVIP_EXPORT int uvip_connector_options_init(uvip_connector_options_t *opts) {
  UVIP_CHECK_ARG(opts == NULL);
  memset(opts, 0, sizeof(*opts));
  return 0;
}

UVIP_EXPORT int uvip_connector_new(uv_loop_t *loop, const uvip_addrs_t *sources,
                                   const uvip_connector_options_t *opts,
                                   uvip_connector_t **out) {
  size_t n = uvip_addrs_count(sources), i;
  uvip_connector_t *c;

  UVIP_CHECK_ARG(loop == NULL || out == NULL);
  UVIP_CHECK_ARG(opts && (opts->port_min == 0) != (opts->port_max == 0));
  UVIP_CHECK_ARG(opts && opts->port_min > opts->port_max);
  UVIP_CHECK_ARG(n > UINT32_MAX);
  for (i = 0; i < n; i++) {
    const struct sockaddr *sa = uvip_addrs_at(sources, i);
    if (sa->sa_family == AF_INET)
      UVIP_CHECK_ARG(((const struct sockaddr_in *)sa)->sin_port != 0);
    else if (sa->sa_family == AF_INET6)
      UVIP_CHECK_ARG(((const struct sockaddr_in6 *)sa)->sin6_port != 0);
    else
      return UV_EINVAL;
  }

  c = calloc(1, sizeof(*c));
  if (c == NULL)
    return UV_ENOMEM;
  c->loop = loop;
  c->nsrcs = n ? n : 1;
  c->bind_sources = n > 0;
  c->nbuckets = 16;
  c->srcs = calloc(c->nsrcs, sizeof(*c->srcs));
  c->buckets = calloc(c->nbuckets, sizeof(*c->buckets));
  if (c->srcs == NULL || c->buckets == NULL) {
    free(c->srcs);
    free(c->buckets);
    free(c);
    return UV_ENOMEM;
  }
  for (i = 0; i < n; i++) {
    const struct sockaddr *sa = uvip_addrs_at(sources, i);
    memcpy(&c->srcs[i].addr, sa, addr_len(sa));
    c->srcs[i].family = sa->sa_family;
  }
  if (n == 0)
    c->srcs[0].family = AF_UNSPEC;

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
  *out = c;
  return 0;
}

UVIP_EXPORT int uvip_connect(uvip_connector_t *c, const struct sockaddr *dest,
                             void *data, uvip_connect_cb cb,
                             uvip_outconn_t **out) {
  uvip_outconn_t *oc = NULL;
  dest_t *d;
  long i;
  int r = UV_EADDRNOTAVAIL;
  bool any_family = false;
  size_t k;

  UVIP_CHECK_ARG(c == NULL || dest == NULL || cb == NULL);
  UVIP_CHECK_ARG(c->closing || !valid_dest(dest));

  for (k = 0; k < c->nsrcs && !any_family; k++)
    any_family = c->srcs[k].family == AF_UNSPEC ||
                 c->srcs[k].family == dest->sa_family;
  if (!any_family)
    return UV_EAFNOSUPPORT;

  d = dest_get(c, dest);
  if (d == NULL)
    return UV_ENOMEM;
  while ((i = pick_source(c, d, dest->sa_family)) >= 0) {
    d->rr = (uint32_t)(((size_t)i + 1) % c->nsrcs);
    r = attempt(c, d, (size_t)i, dest, &oc);
    if (r == 0)
      break;
    if (r != UV_EADDRNOTAVAIL && r != UV_EADDRINUSE) {
      if (r != UV_ENOMEM && r != UV_EMFILE && r != UV_ENFILE)
        c->srcs[i].stats.failed++;
      break;
    }
    d->pairs[i].exhausted = 1;
    c->srcs[i].stats.exhausted++;
  }
  if (r != 0) {
    /* Exhaustion is worth keeping only while our connections hold the
     * pair; an entry without any is dropped like an unused one. */
    dest_maybe_free(c, d);
    return r == UV_EADDRINUSE ? UV_EADDRNOTAVAIL : r;
  }
  oc->tcp.data = data;
  oc->connect_cb = cb;
  if (out)
    *out = oc;
  return 0;
}

UVIP_EXPORT int uvip_outconn_close(uvip_outconn_t *oc,
                                   uvip_outconn_close_cb cb) {
  UVIP_CHECK_ARG(oc == NULL);
  if (oc->state == OC_CLOSING)
    return UV_EALREADY;
  oc->state = OC_CLOSING;
  oc->close_cb = cb;
  uv_close((uv_handle_t *)&oc->tcp, on_conn_closed);
  return 0;
}

UVIP_EXPORT uv_tcp_t *uvip_outconn_tcp(uvip_outconn_t *oc) {
  return oc ? &oc->tcp : NULL;
}

UVIP_EXPORT uv_stream_t *uvip_outconn_stream(uvip_outconn_t *oc) {
  return oc ? (uv_stream_t *)&oc->tcp : NULL;
}

UVIP_EXPORT uvip_outconn_t *uvip_outconn_from_tcp(uv_tcp_t *tcp) {
  return (uvip_outconn_t *)tcp;
}

UVIP_EXPORT const struct sockaddr *
uvip_outconn_source(const uvip_outconn_t *oc) {
  if (oc == NULL || !oc->connector->bind_sources)
    return NULL;
  return &oc->connector->srcs[oc->src].addr.sa;
}

UVIP_EXPORT const struct sockaddr *uvip_outconn_dest(const uvip_outconn_t *oc) {
  if (oc == NULL || oc->dest == NULL)
    return NULL;
  return &oc->dest->addr.sa;
}

UVIP_EXPORT size_t uvip_connector_source_count(const uvip_connector_t *c) {
  return c ? c->nsrcs : 0;
}

UVIP_EXPORT const struct sockaddr *
uvip_connector_source(const uvip_connector_t *c, size_t i) {
  if (c == NULL || i >= c->nsrcs || !c->bind_sources)
    return NULL;
  return &c->srcs[i].addr.sa;
}

UVIP_EXPORT int uvip_connector_stats(const uvip_connector_t *c, size_t i,
                                     uvip_connector_stats_t *out) {
  UVIP_CHECK_ARG(c == NULL || out == NULL || i >= c->nsrcs);
  *out = c->srcs[i].stats;
  return 0;
}

/* Index of a source by address (port ignored), or UV_ENOENT. */
static long find_source(const uvip_connector_t *c, const struct sockaddr *sa) {
  size_t i;
  if (sa == NULL)
    return c->bind_sources ? UV_ENOENT : 0;
  if (!c->bind_sources)
    return UV_ENOENT;
  for (i = 0; i < c->nsrcs; i++) {
    const addr_t *a = &c->srcs[i].addr;
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
  const dest_t *d;
  long i;
  UVIP_CHECK_ARG(c == NULL || dest == NULL || out == NULL);
  UVIP_CHECK_ARG(!valid_dest(dest));
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
  dest_t *d;
  pair_t *p;
  uint64_t others;
  long i;
  UVIP_CHECK_ARG(c == NULL || dest == NULL || c->closing);
  UVIP_CHECK_ARG(!valid_dest(dest));
  i = find_source(c, source);
  if (i < 0)
    return (int)i;
  d = dest_get(c, dest);
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
  dest_maybe_free(c, d);
  return 0;
}

static void on_closer_closed(uv_handle_t *h) {
  uvip_connector_t *c = UVIP_CONTAINER_OF(h, uvip_connector_t, closer);
  c->closer_done = true;
  maybe_finish_close(c);
}

UVIP_EXPORT int uvip_connector_close(uvip_connector_t *c,
                                     uvip_connector_close_cb cb) {
  uvip_outconn_t *oc, *next;
  UVIP_CHECK_ARG(c == NULL);
  if (c->closing)
    return UV_EALREADY;
  c->closing = true;
  c->close_cb = cb;
  for (oc = c->conns; oc; oc = next) {
    next = oc->next;
    if (oc->state != OC_CLOSING)
      uvip_outconn_close(oc, NULL);
  }
  /* The callback must come from the loop even with nothing open; closing
   * a never-started handle is the cheapest way to get there. */
  uv_idle_init(c->loop, &c->closer);
  uv_close((uv_handle_t *)&c->closer, on_closer_closed);
  return 0;
}
