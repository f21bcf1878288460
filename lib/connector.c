/* Outbound connector: the API and the connect path. uvip_connect() asks
 * connector-ports.c for the source with the most free ports, makes the
 * socket itself so that it can bind the source with IP_BIND_ADDRESS_NO_PORT,
 * hands it to libuv and fails over to the next source when the kernel has
 * no port left for the pair. Every uv_tcp_t it opens goes away only through
 * the loop, so this file also owns the close order: a connection's port is
 * given back when its handle has closed, and the connector is freed only
 * after the last handle.
 *
 * The connect itself is ours, not uv_tcp_connect()'s, while it pays: on
 * loopback and fast LANs the handshake has usually completed by the time
 * connect() returns EINPROGRESS (the SYN-ACK is processed when connect()
 * releases the socket), which a second connect() returning 0 tells. Such a
 * connection skips libuv's epoll round trip (a watcher added, a wakeup, a
 * getsockopt(SO_ERROR), a failing EPOLL_CTL_ADD and a MOD when reading
 * starts); its callback is still deferred, to an idle handle that runs
 * every callback due in one loop turn. A connect still in progress waits
 * on a uv_poll_t instead, which costs more than libuv's own wait, so a
 * connector whose connects mostly wait goes back to uv_tcp_connect() and
 * tries its own again once in a while.
 * SPDX-License-Identifier: MIT */
#include "connector-internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { OC_CONNECTING, OC_OPEN, OC_CLOSING };

struct uvip_outconn_s {
  uv_tcp_t tcp; /* first: uvip_outconn_from_tcp() relies on it */
  uvip_connector_t *connector;
  uvip__cn_dest_t *dest; /* NULL for an attempt that never reached connect() */
  uv_poll_t *poll;       /* our own connect() still in progress waits here */
  uint32_t src;
  int due_status;        /* what the deferred callback will say */
  uint8_t state;
  /* The kernel found no port for this attempt: it holds none, so closing
   * it must not clear the pair's exhausted mark it set. */
  bool no_port;
  bool due;     /* on the connector's due list (not conns): callback pending */
  bool cb_done; /* the connect callback has run */
  uvip_connect_cb connect_cb;
  uvip_outconn_close_cb close_cb;
  uvip_outconn_t *prev, *next; /* the connector's open connections */
  /* The PROXY header's addresses (uvip_outconn_set_proxy()): NULL for the
   * connection's own, &uvip__proxy_noaddrs for none, else owned. */
  uvip__conn_proxy_t *proxy;
};

/* A connection is on one of two lists: due (its callback is pending, in
 * order) or conns (the others), so that closing the connector finds all. */
static void conn_list_remove(uvip_connector_t *c, uvip_outconn_t *oc) {
  uvip_outconn_t **head = oc->due ? &c->due_head : &c->conns;
  if (oc->prev)
    oc->prev->next = oc->next;
  else if (*head == oc)
    *head = oc->next;
  if (oc->next)
    oc->next->prev = oc->prev;
  else if (oc->due && c->due_tail == oc)
    c->due_tail = oc->prev;
  oc->prev = oc->next = NULL;
  oc->due = false;
}

static void conn_list_push(uvip_connector_t *c, uvip_outconn_t *oc) {
  oc->prev = NULL;
  oc->next = c->conns;
  if (c->conns)
    c->conns->prev = oc;
  c->conns = oc;
}

static void maybe_finish_close(uvip_connector_t *c) {
  if (!c->closing || !c->closer_done || c->handles != 0)
    return;
  if (c->close_cb)
    c->close_cb(c);
  uvip__cn_dests_free(c);
  if (c->pfx)
    uvip__cn_prefix_free(c);
  free(c->srcs);
  free(c);
}

static const struct sockaddr *cb_source(const uvip_outconn_t *oc) {
  const uvip_connector_t *c = oc->connector;
  return c->bind_sources ? uvip__cn_source_addr(c, oc->src) : NULL;
}

static void on_conn_closed(uv_handle_t *h) {
  uvip_outconn_t *oc = (uvip_outconn_t *)h;
  uvip_connector_t *c = oc->connector;
  if (oc->proxy != &uvip__proxy_noaddrs)
    free(oc->proxy);
  if (oc->dest) {
    conn_list_remove(c, oc);
    /* Our own connect closed before its callback: cancelled, just before
     * the close callback, as libuv does for a uv_connect_t. */
    if (!oc->cb_done) {
      oc->cb_done = true;
      oc->connect_cb(oc, UV_ECANCELED, cb_source(oc));
    }
    uvip__cn_give_back(c, oc->dest, oc->src, !oc->no_port);
    if (oc->close_cb)
      oc->close_cb(oc);
  }
  free(oc);
  c->handles--;
  maybe_finish_close(c);
}

typedef struct {
  uv_write_t req;
  char buf[UVIP_PROXY_V1_MAX + 1]; /* v1 at most 107, v2 here at most 52 */
} proxy_write_t;

static void on_proxy_written(uv_write_t *req, int status) {
  /* A failed write shows on the application's next read or write. */
  (void)status;
  free(req);
}

/* Queues the PROXY header first on a connection that just connected. */
static int send_proxy(uvip_outconn_t *oc) {
  uvip_connector_t *c = oc->connector;
  const struct sockaddr *src = NULL, *dst = NULL;
  struct sockaddr_storage me;
  int len = sizeof(me), n, r;
  proxy_write_t *w;
  uv_buf_t b;

  if (!oc->proxy) {
    if ((r = uv_tcp_getsockname(&oc->tcp, (struct sockaddr *)&me, &len)) != 0)
      return r;
    src = (const struct sockaddr *)&me;
    dst = &oc->dest->addr.sa;
  } else if (oc->proxy != &uvip__proxy_noaddrs) {
    src = &oc->proxy->src.sa;
    dst = &oc->proxy->dst.sa;
  }
  if (!(w = malloc(sizeof(*w))))
    return UV_ENOMEM;
  /* Same families (checked, or the socket's own): cannot fail. */
  n = uvip_proxy_write(c->proxy_version, src, dst, w->buf, sizeof(w->buf));
  b = uv_buf_init(w->buf, (unsigned int)n);
  if ((r = uv_write(&w->req, (uv_stream_t *)&oc->tcp, &b, 1,
                    on_proxy_written)) != 0)
    free(w);
  return r;
}

/* The connect's outcome, from the loop: counted, reported, and a failed
 * connection closed. */
static void complete(uvip_outconn_t *oc, int status) {
  uvip_connector_t *c = oc->connector;
  uvip__cn_source_t *s = uvip__cn_src(c, oc->src);
  const struct sockaddr *src = cb_source(oc);
  oc->cb_done = true;
  if (status == 0 && c->proxy_version && oc->state == OC_CONNECTING)
    status = send_proxy(oc);
  if (status == 0) {
    s->stats.connected++;
    if (oc->state == OC_CONNECTING)
      oc->state = OC_OPEN;
    oc->connect_cb(oc, 0, src);
    return;
  }
  if (status == UV_EADDRNOTAVAIL || status == UV_EADDRINUSE) {
    oc->no_port = true;
    uvip__cn_exhausted(c, oc->dest, oc->src);
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

static void on_connect(uv_connect_t *req, int status) {
  uvip_outconn_t *oc = (uvip_outconn_t *)req->handle;
  free(req);
  complete(oc, status);
}

/* Runs the callbacks due when this turn began; those that come due while
 * they run wait for the next turn, so the loop keeps turning. */
static void on_due(uv_idle_t *h) {
  uvip_connector_t *c = UVIP_CONTAINER_OF(h, uvip_connector_t, due_idle);
  uvip_outconn_t *last = c->due_tail, *oc;
  bool end = false;
  while (!end && (oc = c->due_head) != NULL) {
    end = oc == last;
    conn_list_remove(c, oc);
    conn_list_push(c, oc);
    /* Closed meanwhile: on_conn_closed() says UV_ECANCELED. */
    if (oc->state != OC_CLOSING)
      complete(oc, oc->due_status);
  }
  if (c->due_head == NULL)
    uv_idle_stop(h);
}

static void on_due_closed(uv_handle_t *h) {
  uvip_connector_t *c = UVIP_CONTAINER_OF(h, uvip_connector_t, due_idle);
  c->handles--;
  maybe_finish_close(c);
}

/* oc's callback comes from the loop with status. */
static void defer(uvip_connector_t *c, uvip_outconn_t *oc, int status) {
  if (!c->due_idle_init) {
    uv_idle_init(c->loop, &c->due_idle); /* cannot fail on Unix */
    c->due_idle_init = true;
    c->handles++;
  }
  oc->due_status = status;
  oc->due = true;
  oc->next = NULL;
  oc->prev = c->due_tail;
  if (c->due_tail)
    c->due_tail->next = oc;
  else
    c->due_head = oc;
  c->due_tail = oc;
  uv_idle_start(&c->due_idle, on_due);
}

static void on_poll_closed(uv_handle_t *h) {
  uvip_connector_t *c = h->data;
  free(h);
  c->handles--;
  maybe_finish_close(c);
}

/* Before the connection's handle: the poll's EPOLL_CTL_DEL needs the
 * descriptor still open. */
static void poll_close(uvip_outconn_t *oc) {
  oc->poll->data = oc->connector;
  uv_close((uv_handle_t *)oc->poll, on_poll_closed);
  oc->poll = NULL;
}

static void on_poll(uv_poll_t *p, int status, int events) {
  uvip_outconn_t *oc = p->data;
  int err = 0;
  socklen_t len = sizeof(err);
  uv_os_fd_t fd = -1;
  (void)events;
  /* Writable, or an error (which uv_poll_t reports as UV_EBADF): the
   * socket's own error says which. */
  uv_fileno((uv_handle_t *)&oc->tcp, &fd);
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
    err = errno;
  if (err != 0)
    status = uv_translate_sys_error(err);
  poll_close(oc);
  complete(oc, status);
}

/* Scores of our own connects that had to wait (+4) or not (-1): at
 * SLOW_OFF and above, connects go through libuv, except one in PROBE. */
#define SLOW_MAX 16
#define SLOW_OFF 8
#define PROBE 32

static bool own_connect_pays(uvip_connector_t *c) {
  return c->slow < SLOW_OFF || ++c->probe % PROBE == 0;
}

static void own_connect_waited(uvip_connector_t *c, bool waited) {
  if (waited)
    c->slow = c->slow + 4 > SLOW_MAX ? SLOW_MAX : (uint8_t)(c->slow + 4);
  else if (c->slow > 0)
    c->slow--;
}

/* connect() on the opened handle's socket: 0 with the callback deferred or
 * a wait started, or connect()'s error (nothing deferred or started). */
static int own_connect(uvip_connector_t *c, uvip_outconn_t *oc, int fd,
                       const struct sockaddr *dest) {
  socklen_t len = uvip__sa_len(dest);
  int r;
  if (connect(fd, dest, len) == 0) {
    defer(c, oc, 0);
    return 0;
  }
  if (errno == ECONNREFUSED) { /* reported later, as libuv does */
    defer(c, oc, UV_ECONNREFUSED);
    return 0;
  }
  if (errno != EINPROGRESS)
    return uv_translate_sys_error(errno);
  /* Done already? 0 once established, EALREADY while in progress, the
   * connect's error if it failed. */
  r = connect(fd, dest, len) == 0 || errno == EISCONN ? 0 : errno;
  if (r != EALREADY && r != EINPROGRESS) {
    own_connect_waited(c, false);
    defer(c, oc, r ? uv_translate_sys_error(r) : 0);
    return 0;
  }
  own_connect_waited(c, true);
  oc->poll = malloc(sizeof(*oc->poll));
  if (oc->poll == NULL)
    return UV_ENOMEM;
  r = uv_poll_init(c->loop, oc->poll, fd);
  if (r != 0) {
    free(oc->poll);
    oc->poll = NULL;
    return r;
  }
  c->handles++;
  oc->poll->data = oc;
  return uv_poll_start(oc->poll, UV_WRITABLE, on_poll);
}

/* One attempt from source i. Returns 0 with the connect started, or the
 * error of socket(), bind() or connect(). */
static int attempt(uvip_connector_t *c, uvip__cn_dest_t *d, size_t i,
                   const struct sockaddr *dest, uvip_outconn_t **out) {
  const struct sockaddr *src = uvip__cn_source_addr(c, i);
  uvip_outconn_t *oc;
  uv_connect_t *req = NULL;
  int fd, r, one = 1;

  oc = calloc(1, sizeof(*oc));
  if (oc == NULL)
    return UV_ENOMEM;
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
    if (c->pfx)
      uvip__cn_prefix_sockopts(c, fd);
    if (bind(fd, src, uvip__sa_len(src)) != 0) {
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
  } else if (own_connect_pays(c)) {
    r = own_connect(c, oc, fd, dest);
  } else if ((req = malloc(sizeof(*req))) == NULL) {
    r = UV_ENOMEM;
  } else {
    r = uv_tcp_connect(req, &oc->tcp, dest, on_connect);
  }
  if (r != 0) {
    /* The handle exists now and can only go away through the loop; the
     * close callback sees dest == NULL and just frees it. */
    free(req);
    if (oc->poll)
      poll_close(oc);
    uv_close((uv_handle_t *)&oc->tcp, on_conn_closed);
    return r;
  }

  oc->dest = d;
  oc->state = OC_CONNECTING;
  uvip__cn_take(c, d, i);
  if (!oc->due)
    conn_list_push(c, oc);
  *out = oc;
  return 0;

fail_fd:
  free(oc);
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
  UVIP_CHECK_ARG(opts && (opts->proxy_version < 0 || opts->proxy_version > 2));
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
  c->proxy_version = opts ? opts->proxy_version : 0;
  c->nsrcs = n ? n : 1;
  c->bind_sources = n > 0;
  c->srcs = calloc(c->nsrcs, sizeof(*c->srcs));
  if (c->srcs == NULL || uvip__cn_dests_init(c) != 0) {
    free(c->srcs);
    free(c);
    return UV_ENOMEM;
  }
  for (i = 0; i < n; i++) {
    const struct sockaddr *sa = uvip_addrs_at(sources, i);
    memcpy(&c->srcs[i].addr, sa, uvip__sa_len(sa));
    c->srcs[i].family = sa->sa_family;
  }
  if (n == 0)
    c->srcs[0].family = AF_UNSPEC;

  uvip__cn_port_range(c, opts);
  *out = c;
  return 0;
}

UVIP_EXPORT int uvip_connect(uvip_connector_t *c, const struct sockaddr *dest,
                             void *data, uvip_connect_cb cb,
                             uvip_outconn_t **out) {
  uvip_outconn_t *oc = NULL;
  uvip__cn_dest_t *d;
  long i;
  int r = UV_EADDRNOTAVAIL;
  bool any_family = false;
  size_t k;

  UVIP_CHECK_ARG(c == NULL || dest == NULL || cb == NULL);
  UVIP_CHECK_ARG(c->closing || !uvip__cn_valid_dest(dest));

  for (k = 0; k < c->nsrcs && !any_family; k++)
    any_family = c->srcs[k].family == AF_UNSPEC ||
                 c->srcs[k].family == dest->sa_family;
  if (!any_family)
    return UV_EAFNOSUPPORT;

  d = uvip__cn_dest_get(c, dest);
  if (d == NULL)
    return UV_ENOMEM;
  while ((i = uvip__cn_next_source(c, d, dest->sa_family)) >= 0) {
    r = attempt(c, d, (size_t)i, dest, &oc);
    if (r == 0)
      break;
    if (r != UV_EADDRNOTAVAIL && r != UV_EADDRINUSE) {
      if (r != UV_ENOMEM && r != UV_EMFILE && r != UV_ENFILE)
        uvip__cn_src(c, (size_t)i)->stats.failed++;
      break;
    }
    uvip__cn_exhausted(c, d, (size_t)i);
  }
  if (i < -1) /* a prefix connector without memory for a new pair */
    r = (int)i;
  if (r != 0) {
    /* Exhaustion is worth keeping only while our connections hold the
     * pair; an entry without any is dropped like an unused one. */
    uvip__cn_dest_maybe_free(c, d);
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
  if (oc->poll)
    poll_close(oc);
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
  return uvip__cn_source_addr(oc->connector, oc->src);
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
  if (c == NULL || i >= c->nsrcs || !c->bind_sources || c->pfx)
    return NULL;
  return &c->srcs[i].addr.sa;
}

UVIP_EXPORT int uvip_connector_stats(const uvip_connector_t *c, size_t i,
                                     uvip_connector_stats_t *out) {
  UVIP_CHECK_ARG(c == NULL || out == NULL || i >= c->nsrcs);
  *out = c->srcs[i].stats;
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
  for (oc = c->due_head; oc; oc = next) {
    next = oc->next;
    if (oc->state != OC_CLOSING)
      uvip_outconn_close(oc, NULL);
  }
  if (c->due_idle_init)
    uv_close((uv_handle_t *)&c->due_idle, on_due_closed);
  /* The callback must come from the loop even with nothing open; closing
   * a never-started handle is the cheapest way to get there. */
  uv_idle_init(c->loop, &c->closer);
  uv_close((uv_handle_t *)&c->closer, on_closer_closed);
  return 0;
}

UVIP_EXPORT int uvip_outconn_set_proxy(uvip_outconn_t *conn,
                                       const struct sockaddr *src,
                                       const struct sockaddr *dst) {
  uvip__conn_proxy_t *p = &uvip__proxy_noaddrs;
  UVIP_CHECK_ARG(conn == NULL || (src == NULL) != (dst == NULL));
  UVIP_CHECK_ARG(conn->connector->proxy_version == 0 ||
                 conn->state != OC_CONNECTING);
  if (src) {
    UVIP_CHECK_ARG(src->sa_family != dst->sa_family ||
                   (src->sa_family != AF_INET && src->sa_family != AF_INET6));
    if (!(p = malloc(sizeof(*p))))
      return UV_ENOMEM;
    memcpy(&p->src, src, uvip__sa_len(src));
    memcpy(&p->dst, dst, uvip__sa_len(dst));
  }
  if (conn->proxy != &uvip__proxy_noaddrs)
    free(conn->proxy);
  conn->proxy = p;
  return 0;
}
