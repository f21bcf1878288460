/* uvip-http's connections: reads into one per-loop buffer, parses with the
 * session, writes responses with uv_try_write() and falls back to
 * uv_write() only for what the socket would not take.
 *
 * Memory per idle connection is the uvip connection plus one http_conn_t
 * (about 230 bytes): no read buffer, no write buffer, no timer. Timeouts
 * live in FIFO queues, one per timeout length, so a deadline update is a
 * move to the tail and a per-loop tick only looks at the heads. A
 * connection is in one phase queue (header, idle, linger) and, while a
 * request is in progress, also in the request queue: that deadline runs
 * from the request's first byte to its end, whatever the phase.
 *
 * SPDX-License-Identifier: MIT */
#include "http.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

enum {
  TQ_HEADER = 0,
  TQ_IDLE,
  TQ_LINGER,
  TQ_REQUEST, /* the only queue of link slot 1 */
  TQ_COUNT,
  TQ_NONE = 255
};

enum {
  CF_READING = 1u << 0,
  CF_WRITING = 1u << 1,     /* a uv_write() is in flight; reading stopped */
  CF_CLOSE_AFTER = 1u << 2, /* close when the write completes */
  CF_LINGER_AFTER = 1u << 3,
  CF_CLOSING = 1u << 4,
  CF_LINGERING = 1u << 5, /* shut down for writing, discarding input */
  CF_SNDBUF_CAPPED = 1u << 6, /* SO_SNDBUF set (a large response came) */
};

enum { AFTER_NONE = 0, AFTER_CLOSE, AFTER_LINGER };

typedef struct http_conn_s http_conn_t;

/* A connection's place in one timeout queue. */
typedef struct tlink_s {
  http_conn_t *prev, *next;
  uint64_t deadline;
  uint8_t tq; /* TQ_NONE when in none */
} tlink_t;

struct http_conn_s {
  tlink_t t[2]; /* [0]: a phase queue, [1]: the request queue */
  uvip_conn_t *conn;
  http_server_t *hs;
  char *in; /* input not parsed yet while output drains (backpressure) */
  size_t inlen;
  uint8_t flags;
  http_session_t s;
};

typedef struct wreq_s {
  uv_write_t req;
  http_blob_t *blob; /* the shared body this write ends with, or NULL */
  char data[];
} wreq_t;

typedef struct tqueue_s {
  http_conn_t *head, *tail;
  uint64_t timeout;
} tqueue_t;

struct http_server_s {
  uv_loop_t *loop;
  uvip_server_t *server;
  http_server_config_t cfg;
  http_ctx_t ctx;
  http_buf_t out; /* responses of one read, before they go to the socket */
  tqueue_t tq[TQ_COUNT];
  uv_timer_t tick, grace;
  int handles_open;
  int sndbuf; /* SO_SNDBUF for each connection, 0 = the kernel's */
  int shutting_down;
  int exiting; /* worker exit: free once handles and connections are gone */
  void (*done_cb)(http_server_t *hs);
  /* One read buffer per loop: a read is parsed before the next starts. */
  char rbuf[64 * 1024];
};

static void conn_input(http_conn_t *hc, const char *data, size_t len);
static void maybe_free(http_server_t *hs);

/* A worker's HTTP layer: the connection callback's server argument is the
 * acceptor's (or a mirror of it), so its data cannot tell workers apart. */
static __thread http_server_t *tls_hs;

/* ------------------------------------------------------------------------ */
/* Timeout queues                                                           */
/* ------------------------------------------------------------------------ */

static int slot_of(int which) { return which == TQ_REQUEST; }

static void tq_unlink(http_server_t *hs, http_conn_t *hc, int slot) {
  tlink_t *l = &hc->t[slot];
  tqueue_t *q;
  if (l->tq == TQ_NONE)
    return;
  q = &hs->tq[l->tq];
  if (l->prev)
    l->prev->t[slot].next = l->next;
  else
    q->head = l->next;
  if (l->next)
    l->next->t[slot].prev = l->prev;
  else
    q->tail = l->prev;
  l->prev = l->next = NULL;
  l->tq = TQ_NONE;
}

/* Out of its phase queue. */
static void tq_remove(http_server_t *hs, http_conn_t *hc) {
  tq_unlink(hs, hc, 0);
}

/* Every queue holds one timeout length, so appending keeps it sorted. */
static void tq_push(http_server_t *hs, http_conn_t *hc, int which) {
  tqueue_t *q = &hs->tq[which];
  int slot = slot_of(which);
  tlink_t *l = &hc->t[slot];
  l->deadline = uv_now(hs->loop) + q->timeout;
  if (l->tq == which && q->tail == hc)
    return;
  tq_unlink(hs, hc, slot);
  l->tq = (uint8_t)which;
  l->prev = q->tail;
  l->next = NULL;
  if (q->tail)
    q->tail->t[slot].next = hc;
  else
    q->head = hc;
  q->tail = hc;
}

/* ------------------------------------------------------------------------ */
/* Connection lifecycle                                                     */
/* ------------------------------------------------------------------------ */

static uv_stream_t *conn_stream(http_conn_t *hc) {
  return uvip_conn_stream(hc->conn);
}

static void conn_free(http_conn_t *hc) {
  http_server_t *hs = hc->hs;
  tq_remove(hs, hc);
  tq_unlink(hs, hc, 1);
  free(hc->in);
  hs->ctx.c.conns_active--;
  free(hc);
  if (hs->exiting)
    maybe_free(hs);
}

static void on_conn_closed(uvip_conn_t *conn) {
  conn_free(uvip_conn_tcp(conn)->data);
}

void http_on_lib_close(uvip_conn_t *conn) {
  http_conn_t *hc = uvip_conn_tcp(conn)->data;
  if (hc)
    conn_free(hc);
}

static void conn_close(http_conn_t *hc) {
  if (hc->flags & CF_CLOSING)
    return;
  hc->flags |= CF_CLOSING;
  tq_remove(hc->hs, hc);
  tq_unlink(hc->hs, hc, 1);
  if (uv_is_closing((uv_handle_t *)conn_stream(hc)))
    return; /* the library is closing it: http_on_lib_close() frees */
  if (uvip_conn_close(hc->conn, on_conn_closed) != 0)
    return;
}

static void conn_read_stop(http_conn_t *hc) {
  if (hc->flags & CF_READING) {
    uv_read_stop(conn_stream(hc));
    hc->flags &= (uint8_t)~CF_READING;
  }
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  http_conn_t *hc = h->data;
  (void)hint;
  buf->base = hc->hs->rbuf;
  buf->len = sizeof(hc->hs->rbuf);
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  http_conn_t *hc = st->data;
  if (nread > 0) {
    if (!(hc->flags & CF_LINGERING))
      conn_input(hc, buf->base, (size_t)nread);
  } else if (nread < 0) {
    /* EOF or error. Everything that arrived before it has been answered
     * (reading stops while a write is pending), so nothing is lost. */
    conn_close(hc);
  }
}

static int conn_read_start(http_conn_t *hc) {
  if (hc->flags & CF_READING)
    return 0;
  if (uv_read_start(conn_stream(hc), on_alloc, on_read) != 0) {
    conn_close(hc);
    return -1;
  }
  hc->flags |= CF_READING;
  return 0;
}

/* After an error response: send FIN and read until the client closes or
 * linger_ms passes. Closing at once would reset the connection if more
 * input arrives, and the reset can destroy the response before the client
 * reads it. */
static void conn_linger(http_conn_t *hc) {
  uv_os_fd_t fd;
  hc->flags |= CF_LINGERING;
  tq_unlink(hc->hs, hc, 1); /* answered: no request in progress */
  free(hc->in);
  hc->in = NULL;
  hc->inlen = 0;
  if (uv_fileno((uv_handle_t *)conn_stream(hc), &fd) != 0 ||
      shutdown(fd, SHUT_WR) != 0 || conn_read_start(hc) != 0) {
    conn_close(hc);
    return;
  }
  tq_push(hc->hs, hc, TQ_LINGER);
}

static void conn_set_timeout(http_conn_t *hc) {
  if (hc->flags & (CF_CLOSING | CF_LINGERING))
    return;
  if (hc->flags & CF_WRITING)
    tq_push(hc->hs, hc, TQ_IDLE);
  else if (http_session_in_headers(&hc->s) ||
           (http_session_in_request(&hc->s) &&
            !http_session_in_message(&hc->s))) {
    /* Not refreshed while headers (or empty lines before them) trickle
     * in: that is what stops a slowloris client. */
    if (hc->t[0].tq != TQ_HEADER)
      tq_push(hc->hs, hc, TQ_HEADER);
  } else
    tq_push(hc->hs, hc, TQ_IDLE);
}

/* The request deadline: set when a request starts (its first byte came in
 * the read just parsed, which also holds when a request completed in it),
 * kept while it goes on, dropped once no request is in progress. */
static void conn_set_deadline(http_conn_t *hc, uint32_t nreq_before) {
  if (hc->flags & (CF_CLOSING | CF_LINGERING))
    return;
  if (!http_session_in_request(&hc->s))
    tq_unlink(hc->hs, hc, 1);
  else if (hc->t[1].tq == TQ_NONE || hc->s.nreq != nreq_before)
    tq_push(hc->hs, hc, TQ_REQUEST);
}

/* Returns 1 if the connection is open and ready for more input. */
static int conn_after_write(http_conn_t *hc, int after) {
  if (after == AFTER_CLOSE) {
    conn_close(hc);
    return 0;
  }
  if (after == AFTER_LINGER) {
    conn_linger(hc);
    return 0;
  }
  return !(hc->flags & CF_CLOSING);
}

static void on_write(uv_write_t *req, int status) {
  http_conn_t *hc = req->handle->data;
  wreq_t *w = (wreq_t *)(void *)req;
  int after = (hc->flags & CF_CLOSE_AFTER)    ? AFTER_CLOSE
              : (hc->flags & CF_LINGER_AFTER) ? AFTER_LINGER
                                              : AFTER_NONE;
  http_blob_unref(w->blob);
  free(w);
  hc->flags &= (uint8_t)~(CF_WRITING | CF_CLOSE_AFTER | CF_LINGER_AFTER);
  if (status < 0) {
    conn_close(hc);
    return;
  }
  if (!conn_after_write(hc, after))
    return;
  if (hc->in)
    conn_input(hc, hc->in, hc->inlen);
  else if (conn_read_start(hc) == 0)
    conn_set_timeout(hc);
}

/* The last response before close() goes out with MSG_MORE: the kernel
 * holds it for a moment and close() then sends the FIN in the same segment.
 * The client sees data and end of stream at once, in one wakeup, instead
 * of a second packet that may reach it while it is already closing (which
 * costs both ends a backlog pass). No uv_write() can be queued here (reading
 * stopped while one was), so writing around libuv keeps the order. */
static int send_last(http_conn_t *hc, const http_buf_t *out) {
  uv_os_fd_t fd;
  ssize_t n;
  if (uv_fileno((uv_handle_t *)conn_stream(hc), &fd) != 0)
    return UV_EBADF;
  do
    n = send(fd, out->base, out->len, MSG_MORE | MSG_NOSIGNAL | MSG_DONTWAIT);
  while (n < 0 && errno == EINTR);
  if (n >= 0)
    return (int)n;
  return errno == EAGAIN || errno == EWOULDBLOCK ? UV_EAGAIN : -errno;
}

/* Responses up to this size (or up to the cap, if smaller) go out without
 * capping the send buffer: what the kernel holds for them is small, and
 * once a write stalls the connection reads no more requests. */
#define SNDBUF_CAP_FROM (256 * 1024)

/* One client that never reads pins at most max_output_bytes here (and its
 * kernel send buffer, capped at accept): past it, reset. The reset (an
 * abortive close) also frees what the kernel holds for it at once. */
static void conn_overflow(http_conn_t *hc) {
  uv_os_fd_t fd;
  struct linger lg = {1, 0};
  hc->hs->ctx.c.output_overflows++;
  if (uv_fileno((uv_handle_t *)conn_stream(hc), &fd) == 0)
    (void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
  conn_close(hc);
}

/* Writes out, then the shared body blob if any (the reference is taken);
 * returns 1 when it all went out and the connection can take more input
 * at once. What the socket does not take waits in a uv_write(): the rest
 * of out copied, the body referenced, never copied. */
static int conn_flush(http_conn_t *hc, http_buf_t *out, http_blob_t *blob,
                      int after) {
  uv_stream_t *st = conn_stream(hc);
  size_t off = 0, total = out->len + (blob ? blob->len : 0);
  if (total) {
    uv_buf_t b[2];
    unsigned int nb = 0;
    int n;
    wreq_t *w;
    if (out->len)
      b[nb++] = uv_buf_init(out->base, (unsigned int)out->len);
    if (blob)
      b[nb++] = uv_buf_init(blob->data, (unsigned int)blob->len);
    /* Caps what the kernel holds for a client that does not read at about
     * max_output_bytes (it clamps the value to net.core.wmem_max), before
     * the first large response (a /metrics of many VIPs) goes out. Only
     * then: a setsockopt() on every connection cost a syscall per request
     * with Connection: close, and turned off autotuning for all of them. */
    if (hc->hs->sndbuf > 0 &&
        (total > SNDBUF_CAP_FROM || total > (size_t)hc->hs->sndbuf) &&
        !(hc->flags & CF_SNDBUF_CAPPED)) {
      uv_os_fd_t fd;
      hc->flags |= CF_SNDBUF_CAPPED;
      if (uv_fileno((uv_handle_t *)st, &fd) == 0)
        (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &hc->hs->sndbuf,
                         sizeof(hc->hs->sndbuf));
    }
    if (after == AFTER_CLOSE && !blob)
      n = send_last(hc, out);
    else
      n = uv_try_write(st, b, nb);
    if (n < 0 && n != UV_EAGAIN) {
      http_blob_unref(blob);
      conn_close(hc);
      return 0;
    }
    if (n > 0)
      off = (size_t)n;
    if (off < total) {
      size_t rest = total - off;
      size_t copy = off < out->len ? out->len - off : 0;
      uint64_t max = hc->hs->cfg.max_output_bytes;
      if (max && rest > max) {
        http_blob_unref(blob);
        conn_overflow(hc);
        return 0;
      }
      w = malloc(sizeof(*w) + copy);
      if (!w) {
        http_blob_unref(blob);
        conn_close(hc);
        return 0;
      }
      memcpy(w->data, out->base + off, copy);
      w->blob = blob;
      nb = 0;
      if (copy)
        b[nb++] = uv_buf_init(w->data, (unsigned int)copy);
      if (blob) {
        size_t boff = off > out->len ? off - out->len : 0;
        b[nb++] = uv_buf_init(blob->data + boff,
                              (unsigned int)(blob->len - boff));
      }
      if (uv_write(&w->req, st, b, nb, on_write) != 0) {
        http_blob_unref(blob);
        free(w);
        conn_close(hc);
        return 0;
      }
      hc->flags |= CF_WRITING;
      hc->hs->ctx.c.write_stalls++;
      if (after == AFTER_CLOSE)
        hc->flags |= CF_CLOSE_AFTER;
      else if (after == AFTER_LINGER)
        hc->flags |= CF_LINGER_AFTER;
      /* Backpressure: no more requests until the client reads. */
      conn_read_stop(hc);
      return 0;
    }
  }
  http_blob_unref(blob);
  return conn_after_write(hc, after);
}

/* Keeps the unparsed rest of the input for after the output drained. */
static int conn_keep_input(http_conn_t *hc, const char *p, size_t n) {
  if (hc->in && p >= hc->in && p < hc->in + hc->inlen) {
    memmove(hc->in, p, n);
  } else {
    char *in = malloc(n);
    if (!in)
      return -1;
    memcpy(in, p, n);
    free(hc->in);
    hc->in = in;
  }
  hc->inlen = n;
  return 0;
}

static void conn_input(http_conn_t *hc, const char *data, size_t len) {
  http_server_t *hs = hc->hs;
  http_buf_t *out = &hs->out;
  uint32_t nreq = hc->s.nreq;
  hs->ctx.now_ms = uv_now(hs->loop);
  for (;;) {
    size_t used = 0;
    int r, after;
    http_blob_t *blob;
    out->len = 0;
    hs->ctx.conn = hc->conn;
    r = http_session_feed(&hc->s, data, len, out, &used);
    hs->ctx.conn = NULL;
    blob = hs->ctx.attach;
    hs->ctx.attach = NULL;
    if (r == HTTP_FEED_PAUSED) {
      if (conn_keep_input(hc, data + used, len - used) != 0) {
        http_blob_unref(blob);
        conn_close(hc);
        return;
      }
      conn_read_stop(hc);
    } else if (hc->in) {
      free(hc->in);
      hc->in = NULL;
      hc->inlen = 0;
    }
    after = r != HTTP_FEED_CLOSE       ? AFTER_NONE
            : http_session_lingers(&hc->s) ? AFTER_LINGER
                                           : AFTER_CLOSE;
    if (!conn_flush(hc, out, blob, after))
      break;
    if (!hc->in)
      break;
    data = hc->in;
    len = hc->inlen;
  }
  if (hc->flags & (CF_CLOSING | CF_LINGERING))
    return;
  if (!hc->in && !(hc->flags & CF_WRITING) && conn_read_start(hc) != 0)
    return;
  /* No uv_tcp_nodelay() here: uvip-http sets UVIP_NODELAY on the
   * listeners, so every connection inherits TCP_NODELAY for free. */
  conn_set_timeout(hc);
  conn_set_deadline(hc, nreq);
}

void http_on_connection(uvip_server_t *server, uvip_conn_t *conn) {
  http_server_t *hs = tls_hs ? tls_hs : uvip_server_get_data(server);
  http_conn_t *hc = malloc(sizeof(*hc));
  uv_os_fd_t fd;
  if (!hc) {
    uvip_conn_close(conn, NULL);
    return;
  }
  memset(hc->t, 0, sizeof(hc->t));
  hc->t[0].tq = hc->t[1].tq = TQ_NONE;
  hc->conn = conn;
  hc->hs = hs;
  hc->in = NULL;
  hc->inlen = 0;
  hc->flags = 0;
  http_session_init(&hc->s, &hs->ctx);
  uvip_conn_tcp(conn)->data = hc;
  hs->ctx.c.conns_total++;
  hs->ctx.c.conns_active++;
  tq_push(hs, hc, TQ_HEADER);
  /* Clients send their request right after connecting, so by the time the
   * connection is accepted it has usually arrived: reading it now saves a
   * poll round trip, and a one-request connection then never registers
   * with epoll at all. conn_input() starts reading if more is needed. */
  if (uv_fileno((uv_handle_t *)uvip_conn_tcp(conn), &fd) == 0) {
    ssize_t n;
    do
      n = read(fd, hs->rbuf, sizeof(hs->rbuf));
    while (n < 0 && errno == EINTR);
    if (n > 0) {
      conn_input(hc, hs->rbuf, (size_t)n);
      return;
    }
    if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
      conn_close(hc);
      return;
    }
  }
  (void)conn_read_start(hc);
}

int http_conn_idle(uvip_conn_t *conn) {
  http_conn_t *hc = uvip_conn_tcp(conn)->data;
  return hc && !http_session_in_message(&hc->s) &&
         !(hc->flags & (CF_WRITING | CF_CLOSING)) && !hc->in;
}

/* From now on every response says Connection: close. Connections between
 * requests close now; the others close after their response, or at the
 * grace timeout (without workers) or when the workers are closed. */
static void stop_gracefully(http_server_t *hs) {
  int i;
  hs->ctx.stopping = 1;
  /* Every open connection is in a phase queue. */
  for (i = 0; i < TQ_REQUEST; i++) {
    http_conn_t *hc = hs->tq[i].head, *next;
    for (; hc; hc = next) {
      next = hc->t[0].next;
      if (!http_session_in_message(&hc->s) && !(hc->flags & CF_WRITING) &&
          !hc->in)
        conn_close(hc);
    }
  }
}

/* ------------------------------------------------------------------------ */
/* Timeouts                                                                 */
/* ------------------------------------------------------------------------ */

static void expire(http_server_t *hs, http_conn_t *hc, int which) {
  if (which == TQ_REQUEST && (hc->flags & CF_WRITING)) {
    /* The client is not reading what it asked for either. */
    hs->ctx.c.timeouts_request++;
    conn_close(hc);
    return;
  }
  if (which == TQ_HEADER || which == TQ_REQUEST) {
    if (which == TQ_HEADER)
      hs->ctx.c.timeouts_header++;
    else
      hs->ctx.c.timeouts_request++;
    tq_remove(hs, hc);
    tq_unlink(hs, hc, 1);
    hs->out.len = 0;
    (void)http_session_timeout(&hc->s, &hs->out);
    (void)conn_flush(hc, &hs->out, NULL,
                     http_session_lingers(&hc->s) ? AFTER_LINGER
                                                  : AFTER_CLOSE);
    /* A 408 the socket did not take at once waits in a write: that wait
     * has the idle timeout, like any stalled write, or the connection
     * (and its descriptor and --max-conns slot) would stay until the
     * client acts. */
    conn_set_timeout(hc);
    return;
  }
  if (which == TQ_IDLE)
    hs->ctx.c.timeouts_idle++;
  conn_close(hc);
}

static void on_tick(uv_timer_t *t) {
  http_server_t *hs = t->data;
  uint64_t now = uv_now(hs->loop);
  int i;
  http_ctx_set_time(&hs->ctx, time(NULL));
  if (hs->ctx.shared) {
    /* A worker learns of a stop here: the workers API has no per-worker
     * graceful stop, only the final close. */
    if (!hs->ctx.stopping && http_shared_stopping(hs->ctx.shared))
      stop_gracefully(hs);
    /* The acceptor's admin listener reads the mapping; it has no slot. */
    if (hs->ctx.routes != HTTP_ROUTES_ADMIN)
      http_shared_publish_worker(hs->ctx.shared, hs->ctx.worker, &hs->ctx.c);
  }
  for (i = 0; i < TQ_COUNT; i++) {
    http_conn_t *hc;
    /* A connection taken from a queue goes back to a queue only with a
     * deadline in the future (timeouts are at least 1 ms), so this ends. */
    while ((hc = hs->tq[i].head) &&
           hc->t[slot_of(i)].deadline <= now) {
      tq_unlink(hs, hc, slot_of(i));
      expire(hs, hc, i);
    }
  }
}

/* ------------------------------------------------------------------------ */
/* Server                                                                   */
/* ------------------------------------------------------------------------ */

static uint64_t at_least_1(uint64_t v) { return v ? v : 1; }

int http_server_new(uv_loop_t *loop, uvip_server_t *server,
                    http_shared_t *shared, unsigned int worker,
                    const http_server_config_t *cfg, http_server_t **out) {
  http_server_t *hs;
  uint64_t tick;
  if (!loop || !cfg || !out || (!server && !shared))
    return UV_EINVAL;
  hs = calloc(1, sizeof(*hs));
  if (!hs)
    return UV_ENOMEM;
  hs->loop = loop;
  hs->server = server;
  hs->cfg = *cfg;
  http_ctx_init(&hs->ctx, &cfg->limits);
  hs->ctx.server = server;
  hs->ctx.shared = shared;
  hs->ctx.worker = worker;
  hs->ctx.stats_ms = cfg->stats_interval_ms;
  hs->ctx.routes = cfg->routes;
  /* The kernel doubles SO_SNDBUF for its bookkeeping: half of the limit
   * lets it hold about the limit. */
  hs->sndbuf = cfg->max_output_bytes / 2 > INT_MAX
                   ? INT_MAX
                   : (int)(cfg->max_output_bytes / 2);
  hs->tq[TQ_HEADER].timeout = at_least_1(cfg->header_timeout_ms);
  hs->tq[TQ_IDLE].timeout = at_least_1(cfg->keepalive_timeout_ms);
  hs->tq[TQ_LINGER].timeout = at_least_1(cfg->linger_ms);
  hs->tq[TQ_REQUEST].timeout = at_least_1(cfg->request_timeout_ms);
  /* A quarter of the shortest timeout, 10..250 ms: deadlines are met
   * within that, and an idle server wakes at most four times a second. */
  tick = hs->tq[TQ_HEADER].timeout;
  if (hs->tq[TQ_IDLE].timeout < tick)
    tick = hs->tq[TQ_IDLE].timeout;
  if (hs->tq[TQ_LINGER].timeout < tick)
    tick = hs->tq[TQ_LINGER].timeout;
  if (hs->tq[TQ_REQUEST].timeout < tick)
    tick = hs->tq[TQ_REQUEST].timeout;
  tick /= 4;
  tick = tick < 10 ? 10 : tick > 250 ? 250 : tick;
  uv_timer_init(loop, &hs->tick);
  uv_timer_init(loop, &hs->grace);
  hs->tick.data = hs->grace.data = hs;
  hs->handles_open = 2;
  uv_timer_start(&hs->tick, on_tick, tick, tick);
  if (server)
    uvip_server_set_data(server, hs);
  else
    tls_hs = hs;
  *out = hs;
  return 0;
}

http_ctx_t *http_server_ctx(http_server_t *hs) { return &hs->ctx; }

http_server_t *http_server_current(void) { return tls_hs; }

static void maybe_free(http_server_t *hs) {
  if (hs->handles_open == 0 && hs->ctx.c.conns_active == 0) {
    if (tls_hs == hs)
      tls_hs = NULL;
    http_server_free(hs);
  }
}

static void on_handle_closed(uv_handle_t *h) {
  http_server_t *hs = h->data;
  if (--hs->handles_open == 0 && hs->done_cb)
    hs->done_cb(hs);
  if (hs->exiting)
    maybe_free(hs);
}

void http_server_exit(http_server_t *hs) {
  if (!hs || hs->exiting)
    return;
  hs->exiting = 1;
  hs->ctx.stopping = 1;
  if (hs->ctx.shared)
    http_shared_publish_worker(hs->ctx.shared, hs->ctx.worker, &hs->ctx.c);
  uv_close((uv_handle_t *)&hs->tick, on_handle_closed);
  uv_close((uv_handle_t *)&hs->grace, on_handle_closed);
}

static void on_uvip_closed(uvip_server_t *server) {
  http_server_t *hs = uvip_server_get_data(server);
  hs->server = NULL;
  hs->ctx.server = NULL;
  uv_close((uv_handle_t *)&hs->tick, on_handle_closed);
  uv_close((uv_handle_t *)&hs->grace, on_handle_closed);
}

static void on_grace(uv_timer_t *t) {
  http_server_t *hs = t->data;
  if (hs->server)
    uvip_server_close_conns(hs->server);
}

void http_server_shutdown(http_server_t *hs, void (*cb)(http_server_t *hs)) {
  if (hs->shutting_down)
    return;
  hs->shutting_down = 1;
  hs->done_cb = cb;
  stop_gracefully(hs);
  uv_timer_start(&hs->grace, on_grace, at_least_1(hs->cfg.shutdown_timeout_ms),
                 0);
  if (uvip_server_close(hs->server, on_uvip_closed) != 0)
    on_uvip_closed(hs->server);
}

void http_server_free(http_server_t *hs) {
  if (!hs)
    return;
  http_ctx_free(&hs->ctx);
  http_buf_free(&hs->out);
  free(hs);
}
