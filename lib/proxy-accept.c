/* The PROXY protocol on the accept path (UVIP_PROXY_PROTOCOL): an accepted
 * socket waits here, counted against the caps, until its header is read;
 * then it becomes a connection and the application sees it.
 *
 * Not one byte after the header is consumed: each read first peeks, the
 * parser says where the header ends (or that everything so far is a prefix
 * of it), and only that much is then received. Everything peeked belongs to
 * the header when the parser asks for more, so it is consumed and the
 * socket's readiness clears: no spinning on a partial header.
 *
 * The waiting sockets sit in one epoll set of our own (level-triggered),
 * watched by one uv_poll_t, so a waiting socket costs no libuv handle and is
 * freed at once when it is done. They are kept in accept order; every one
 * gets the same timeout, so that is also deadline order, and one timer set
 * to the oldest deadline covers them all.
 * SPDX-License-Identifier: MIT */
#include "internal.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#define DEFAULT_TIMEOUT_MS 3000
/* Waiting sockets served per readiness callback: a long queue of ready
 * ones is served over several loop turns rather than in one. */
#define BATCH 64

uvip__conn_proxy_t uvip__proxy_noaddrs;

struct uvip__pending {
  uvip__pending_t *prev, *next;
  uvip_vip_t *vip;
  int fd;
  uint64_t deadline;
  size_t have; /* header bytes consumed so far */
  size_t cap;  /* room in buf */
  unsigned char *buf; /* inl, or the heap for a long v2 header */
  unsigned char inl[UVIP_PROXY_V1_MAX + 1];
};

enum reason { R_MISSING, R_MALFORMED, R_OVERSIZED, R_TIMEOUT, R_EOF, R_DROP };

static const unsigned char v2sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                        0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

static void on_ready(uv_poll_t *h, int status, int events);
static void on_timer(uv_timer_t *t);
static void serve(uvip_server_t *s, uvip__pending_t *p);

static unsigned int timeout_ms(const uvip_server_t *s) {
  return s->opts.proxy_timeout_ms ? s->opts.proxy_timeout_ms
                                  : DEFAULT_TIMEOUT_MS;
}

int uvip__proxy_init(uvip_server_t *s) {
  int r;
  s->proxy_epfd = epoll_create1(EPOLL_CLOEXEC);
  if (s->proxy_epfd < 0)
    return -errno;
  /* Fails before initialising the handle. */
  if ((r = uv_poll_init(s->loop, &s->proxy_watch, s->proxy_epfd)) != 0) {
    close(s->proxy_epfd);
    s->proxy_epfd = -1;
    return r;
  }
  /* Cannot fail on a handle that is not closing. */
  uv_poll_start(&s->proxy_watch, UV_READABLE, on_ready);
  /* Waiting sockets exist only while the server listens, which keeps the
   * loop alive, and their timer runs meanwhile. */
  uv_unref((uv_handle_t *)&s->proxy_watch);
  uv_timer_init(s->loop, &s->proxy_timer);
  return 0;
}

int uvip__proxy_close(uvip_server_t *s, uv_close_cb cb) {
  if (s->proxy_epfd < 0)
    return 0;
  assert(s->pend_head == NULL);
  s->proxy_watch.data = s;
  s->proxy_timer.data = s;
  uv_close((uv_handle_t *)&s->proxy_watch, cb);
  uv_close((uv_handle_t *)&s->proxy_timer, cb);
  close(s->proxy_epfd);
  s->proxy_epfd = -1;
  return 2;
}

static void unlink_pending(uvip_server_t *s, uvip__pending_t *p) {
  if (p->prev)
    p->prev->next = p->next;
  else
    s->pend_head = p->next;
  if (p->next)
    p->next->prev = p->prev;
  else
    s->pend_tail = p->prev;
  epoll_ctl(s->proxy_epfd, EPOLL_CTL_DEL, p->fd, NULL);
  assert(p->vip->stats.proxy_pending > 0);
  p->vip->stats.proxy_pending--;
  if (!s->pend_head)
    uv_timer_stop(&s->proxy_timer);
}

static void free_pending(uvip__pending_t *p) {
  if (p->buf != p->inl)
    free(p->buf);
  free(p);
}

/* Closes a waiting socket and gives its slot back. */
static void reject(uvip_server_t *s, uvip__pending_t *p, enum reason why) {
  uvip_vip_t *v = p->vip;
  uvip_vip_stats_t *st = &v->stats;
  unlink_pending(s, p);
  close(p->fd);
  free_pending(p);
  switch (why) {
  case R_MISSING:
    st->proxy_missing++;
    break;
  case R_MALFORMED:
    st->proxy_malformed++;
    break;
  case R_OVERSIZED:
    st->proxy_oversized++;
    break;
  case R_TIMEOUT:
    st->proxy_timeout++;
    break;
  case R_EOF:
    st->proxy_eof++;
    break;
  case R_DROP:
    st->proxy_dropped++;
    break;
  }
  uvip__server_release(s, v);
}

void uvip__proxy_accepted(uvip_server_t *s, uvip_vip_t *v, int fd) {
  uvip__pending_t *p = malloc(sizeof(*p));
  struct epoll_event ev;
  if (!p) {
    close(fd);
    v->stats.proxy_dropped++;
    uvip__server_release(s, v);
    return;
  }
  p->vip = v;
  p->fd = fd;
  p->have = 0;
  p->cap = sizeof(p->inl);
  p->buf = p->inl;
  p->deadline = uv_now(s->loop) + timeout_ms(s);
  ev.events = EPOLLIN | EPOLLRDHUP;
  ev.data.ptr = p;
  if (epoll_ctl(s->proxy_epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
    free(p);
    close(fd);
    v->stats.proxy_dropped++;
    uvip__server_release(s, v);
    return;
  }
  p->next = NULL;
  p->prev = s->pend_tail;
  if (s->pend_tail)
    s->pend_tail->next = p;
  else
    s->pend_head = p;
  s->pend_tail = p;
  v->stats.proxy_pending++;
  if (p == s->pend_head)
    uv_timer_start(&s->proxy_timer, on_timer, timeout_ms(s), 0);
  /* The header usually came with the handshake's last packet (always with
   * TCP_DEFER_ACCEPT): read it now rather than a loop turn later. */
  serve(s, p);
}

void uvip__proxy_drop(uvip_server_t *s, uvip_vip_t *v) {
  uvip__pending_t *p, *next;
  for (p = s->pend_head; p; p = next) {
    next = p->next;
    if (!v || p->vip == v)
      reject(s, p, R_DROP);
  }
}

static void on_timer(uv_timer_t *t) {
  uvip_server_t *s = UVIP_CONTAINER_OF(t, uvip_server_t, proxy_timer);
  uint64_t now = uv_now(s->loop);
  while (s->pend_head && s->pend_head->deadline <= now)
    reject(s, s->pend_head, R_TIMEOUT);
  if (s->pend_head)
    uv_timer_start(t, on_timer, s->pend_head->deadline - now, 0);
}

/* Whether buf (len > 0) can still begin a PROXY header of either version:
 * tells a missing header from a malformed one. */
static bool looks_like_proxy(const unsigned char *buf, size_t len) {
  size_t n1 = len < 6 ? len : 6, n2 = len < 12 ? len : 12;
  return memcmp(buf, "PROXY ", n1) == 0 || memcmp(buf, v2sig, n2) == 0;
}

/* The header is complete: the socket becomes a connection. */
static void deliver(uvip_server_t *s, uvip__pending_t *p,
                    const uvip_proxy_info_t *info) {
  uvip_vip_t *v = p->vip;
  uvip__conn_proxy_t *addrs = &uvip__proxy_noaddrs;
  uvip_conn_t *c;
  int fd = p->fd;

  if (info->has_addrs && !(addrs = malloc(sizeof(*addrs)))) {
    reject(s, p, R_DROP);
    return;
  }
  if (info->has_addrs) {
    memcpy(&addrs->src, &info->src, uvip__sa_len((const void *)&info->src));
    memcpy(&addrs->dst, &info->dst, uvip__sa_len((const void *)&info->dst));
  } else {
    v->stats.proxy_local++;
  }
  unlink_pending(s, p);
  free_pending(p);
  /* Closes fd on error. */
  if (uvip__conn_new(s->loop, v, fd, &c) != 0) {
    if (addrs != &uvip__proxy_noaddrs)
      free(addrs);
    v->stats.err_enomem++;
    uvip__server_release(s, v);
    return;
  }
  c->proxy = addrs;
  s->connection_cb(s, c);
}

/* Reads what the socket has of its header. */
static void serve(uvip_server_t *s, uvip__pending_t *p) {
  for (;;) {
    uvip_proxy_info_t info;
    size_t take;
    ssize_t n;
    int r;

    n = recv(p->fd, p->buf + p->have, p->cap - p->have, MSG_PEEK);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      return;
    if (n <= 0) {
      /* The peer closed or reset the connection first. */
      reject(s, p, R_EOF);
      return;
    }
    r = uvip_proxy_parse(p->buf, p->have + (size_t)n, &info);
    if (r < 0) {
      reject(s, p,
             !looks_like_proxy(p->buf, p->have + (size_t)n) ? R_MISSING
             : r == UV_E2BIG                               ? R_OVERSIZED
                                                           : R_MALFORMED);
      return;
    }
    /* Up to the header's end, or all of it: it is all header so far. */
    take = r > 0 ? (size_t)r - p->have : (size_t)n;
    do
      n = recv(p->fd, p->buf + p->have, take, 0);
    while (n < 0 && errno == EINTR);
    if (n != (ssize_t)take) {
      /* What a peek showed is there to receive, unless the connection was
       * reset in between. */
      reject(s, p, R_EOF);
      return;
    }
    p->have += take;
    if (r > 0) {
      deliver(s, p, &info);
      return;
    }
    if (p->have >= 16 && p->buf[0] == v2sig[0]) {
      /* A v2 header says its length: make room for exactly that much. */
      size_t total = 16 + (((size_t)p->buf[14] << 8) | p->buf[15]);
      unsigned char *nb;
      if (total > UVIP_PROXY_RECV_MAX) {
        reject(s, p, R_OVERSIZED);
        return;
      }
      if (total > p->cap) {
        if (!(nb = malloc(total))) {
          reject(s, p, R_DROP);
          return;
        }
        memcpy(nb, p->buf, p->have);
        p->buf = nb;
        p->cap = total;
      }
    }
  }
}

static void on_ready(uv_poll_t *h, int status, int events) {
  uvip_server_t *s = UVIP_CONTAINER_OF(h, uvip_server_t, proxy_watch);
  struct epoll_event ev;
  (void)events;
  if (status < 0)
    return;
  /* One event at a time: delivering a connection runs the application,
   * which may stop the server or pause a VIP and so free waiting sockets
   * that a batch of events would still point to. */
  for (int i = 0; i < BATCH && s->pend_head; i++) {
    if (epoll_wait(s->proxy_epfd, &ev, 1, 0) != 1)
      return;
    serve(s, ev.data.ptr);
  }
}
