/* The fair accept scheduler.
 *
 * Every listening socket sits in one epoll set of our own, registered
 * edge-triggered. libuv watches only that set's descriptor (one uv_poll_t),
 * so a flood on one VIP cannot make libuv call us once per ready listener in
 * an order we do not control, and while we refuse to accept (at a cap, out
 * of descriptors) nothing stays level-triggered: the loop sleeps instead of
 * spinning on listeners it will not serve.
 *
 * Listeners known to have queued connections wait in a FIFO ring. Each pass
 * (one per loop turn, in the check phase, right after I/O polling) takes the
 * listeners present at its start, in order, and accepts at most `budget`
 * connections from each; a listener that still has work goes back to the
 * tail, one that returned EAGAIN leaves the ring until the next edge. A
 * listener leaves the ring only on EAGAIN, so no wake-up can be lost.
 *
 * SPDX-License-Identifier: MIT */
#include "internal.h"

#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>

#define MAX_BACKOFF_MS 1000

static void ring_push_tail(uvip_server_t *s, uvip_vip_t *v) {
  if (v->in_ring)
    return;
  v->in_ring = true;
  v->ring_next = NULL;
  if (s->ring_tail)
    s->ring_tail->ring_next = v;
  else
    s->ring_head = v;
  s->ring_tail = v;
}

static void ring_push_head(uvip_server_t *s, uvip_vip_t *v) {
  if (v->in_ring)
    return;
  v->in_ring = true;
  v->ring_next = s->ring_head;
  s->ring_head = v;
  if (!s->ring_tail)
    s->ring_tail = v;
}

static uvip_vip_t *ring_pop(uvip_server_t *s) {
  uvip_vip_t *v = s->ring_head;
  if (!v)
    return NULL;
  s->ring_head = v->ring_next;
  if (!s->ring_head)
    s->ring_tail = NULL;
  v->ring_next = NULL;
  v->in_ring = false;
  return v;
}

static void ring_unlink(uvip_server_t *s, uvip_vip_t *v) {
  uvip_vip_t **pp = &s->ring_head, *prev = NULL;
  if (!v->in_ring)
    return;
  while (*pp && *pp != v) {
    prev = *pp;
    pp = &(*pp)->ring_next;
  }
  if (*pp) {
    *pp = v->ring_next;
    if (s->ring_tail == v)
      s->ring_tail = prev;
  }
  v->in_ring = false;
  v->ring_next = NULL;
}

static size_t ring_len(const uvip_server_t *s) {
  size_t n = 0;
  for (const uvip_vip_t *v = s->ring_head; v; v = v->ring_next)
    n++;
  return n;
}

static bool global_capped(const uvip_server_t *s) {
  if (s->opts.max_conns && s->active >= s->opts.max_conns)
    return true;
  /* Every worker full: the same as a cap, the queues wait in the kernel. */
  return s->handoff_has_room && !s->handoff_has_room((uvip_server_t *)s);
}

static bool vip_capped(const uvip_server_t *s, const uvip_vip_t *v) {
  return s->opts.max_conns_per_vip &&
         v->stats.active >= s->opts.max_conns_per_vip;
}

static bool can_accept(const uvip_server_t *s) {
  return s->listening && !s->stopped && !s->held && !s->backing_off &&
         !global_capped(s);
}

static void on_epoll(uv_poll_t *handle, int status, int events);

/* Watch the listeners only while we are willing to accept: edges that come
 * meanwhile wait in the epoll set and are collected when we start again. */
static void update_watch(uvip_server_t *s) {
  bool want = can_accept(s);
  if (want && !s->watching) {
    if (uv_poll_start(&s->epoll_watch, UV_READABLE, on_epoll) == 0)
      s->watching = true;
  } else if (!want && s->watching) {
    uv_poll_stop(&s->epoll_watch);
    s->watching = false;
  }
}

static void on_check(uv_check_t *handle);
static void on_idle(uv_idle_t *handle) { (void)handle; }

/* Schedule a pass for the next check phase when there is work we may do.
 * The idle handle only keeps libuv's poll from blocking meanwhile. */
static void kick(uvip_server_t *s) {
  update_watch(s);
  if (s->ring_head && can_accept(s)) {
    uv_check_start(&s->check, on_check);
    uv_idle_start(&s->idle, on_idle);
  } else {
    uv_check_stop(&s->check);
    uv_idle_stop(&s->idle);
  }
}

static void mark_ready(uvip_server_t *s, uvip_vip_t *v) {
  if (v->state != UVIP_VIP_LISTENING)
    return;
  if (vip_capped(s, v)) {
    /* Served again as soon as one of its own slots frees. */
    if (!v->pending)
      v->stats.deferred++;
    v->pending = true;
    return;
  }
  ring_push_tail(s, v);
}

static void on_epoll(uv_poll_t *handle, int status, int events) {
  uvip_server_t *s = UVIP_CONTAINER_OF(handle, uvip_server_t, epoll_watch);
  struct epoll_event ev[64];
  int n, i;
  (void)events;
  if (status < 0)
    return;
  do {
    n = epoll_wait(s->epfd, ev, 64, 0);
    for (i = 0; i < n; i++)
      mark_ready(s, ev[i].data.ptr);
  } while (n == 64);
  kick(s);
}

static void on_backoff(uv_timer_t *t) {
  uvip_server_t *s = UVIP_CONTAINER_OF(t, uvip_server_t, backoff);
  s->backing_off = false;
  kick(s);
}

/* Pauses accepting for the current back-off, then doubles it. The delay is
 * kept within 1..MAX_BACKOFF_MS whatever backoff_ms the application gave:
 * an unbounded one would park the queues for days (2^31 ms) or, doubled in
 * 32 bits, wrap to 0 and spin. */
static void start_backoff(uvip_server_t *s) {
  unsigned int ms = s->backoff_cur_ms;
  if (ms < 1)
    ms = 1;
  else if (ms > MAX_BACKOFF_MS)
    ms = MAX_BACKOFF_MS;
  s->backing_off = true;
  uv_timer_start(&s->backoff, on_backoff, ms, 0);
  /* ms <= MAX_BACKOFF_MS, so doubling cannot overflow. */
  s->backoff_cur_ms = ms * 2 > MAX_BACKOFF_MS ? MAX_BACKOFF_MS : ms * 2;
}

enum accept_result { ACC_DRAINED, ACC_MORE, ACC_STOP };

/* Accepts up to `budget` connections from one listener. */
static enum accept_result accept_some(uvip_server_t *s, uvip_vip_t *v,
                                      unsigned budget, bool *got_one) {
  unsigned done = 0;
  *got_one = false;
  while (done < budget) {
    struct uvip__group *group = NULL;
    uvip_conn_t *c;
    int fd;

    if (global_capped(s))
      return ACC_STOP;
    if (vip_capped(s, v)) {
      v->stats.deferred++;
      v->pending = true;
      return ACC_DRAINED; /* parked until one of its slots frees */
    }
    fd = accept4(v->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      switch (errno) {
      case EAGAIN:
        return ACC_DRAINED;
      case EINTR:
        continue;
      case EMFILE:
      case ENFILE:
      case ENOBUFS:
      case ENOMEM:
        if (errno == EMFILE)
          v->stats.err_emfile++;
        else if (errno == ENFILE)
          v->stats.err_enfile++;
        else if (errno == ENOBUFS)
          v->stats.err_enobufs++;
        else
          v->stats.err_enomem++;
        /* The connection stays queued in the kernel; retry later rather
         * than spin or drop it. */
        v->stats.backoffs++;
        start_backoff(s);
        return ACC_STOP;
      case ECONNABORTED:
      case EPROTO:
      case EPERM:
      case ENETDOWN:
      case ENOPROTOOPT:
      case EHOSTDOWN:
      case ENONET:
      case EHOSTUNREACH:
      case EOPNOTSUPP:
      case ENETUNREACH:
        /* That one connection is gone; the queue behind it is fine. */
        v->stats.err_aborted++;
        done++;
        continue;
      default:
        /* Unknown trouble: neither spin on it nor drop the listener from
         * the ring. Its edge is spent, so a listener that left the ring
         * here would leave its queued connections waiting for the next new
         * one; it keeps its place and is retried after the back-off. */
        v->stats.err_other++;
        v->stats.backoffs++;
        start_backoff(s);
        return ACC_STOP;
      }
    }
    s->backoff_cur_ms = s->opts.backoff_ms;
    /* A prefix VIP (server-prefix.c): outside the prefix or a full group
     * is closed here; a worker's connection is filtered, not grouped. */
    if (v->pfx &&
        !uvip__pfx_admit(v, fd, s->handoff_dispatch ? NULL : &group)) {
      done++;
      continue;
    }
    if (s->handoff_dispatch) {
      if (s->handoff_dispatch(s, v, fd) != 0) {
        close(fd);
        v->stats.err_other++;
        done++;
        continue;
      }
      done++;
      *got_one = true;
      v->stats.accepted++;
      v->stats.active++;
      s->active++;
      continue;
    }
    if (s->opts.flags & UVIP_PROXY_PROTOCOL) {
      /* The application sees it once its header is read. */
      done++;
      *got_one = true;
      v->stats.accepted++;
      v->stats.active++;
      s->active++;
      uvip__proxy_accepted(s, v, fd);
      /* The callback may have run, as below. */
      if (s->stopped)
        return ACC_STOP;
      if (v->state != UVIP_VIP_LISTENING)
        return ACC_DRAINED;
      continue;
    }
    if (uvip__conn_new(s->loop, v, fd, &c) != 0) {
      if (group)
        uvip__pfx_release(v, group);
      v->stats.err_enomem++;
      v->stats.backoffs++;
      start_backoff(s);
      return ACC_STOP;
    }
    c->group = group;
    done++;
    *got_one = true;
    v->stats.accepted++;
    v->stats.active++;
    s->active++;
    s->connection_cb(s, c);
    /* The callback may have stopped or held the server or removed this
     * VIP. */
    if (s->stopped || s->held)
      return ACC_STOP;
    if (v->state != UVIP_VIP_LISTENING)
      return ACC_DRAINED;
  }
  return ACC_MORE;
}

static void on_check(uv_check_t *handle) {
  uvip_server_t *s = UVIP_CONTAINER_OF(handle, uvip_server_t, check);
  size_t n = ring_len(s), i;
  unsigned budget = s->opts.accept_budget;

  /* With fewer free slots than the waiting listeners could take, hand out
   * one connection per listener in ring order, so that each freed slot
   * goes to the next waiting queue. */
  if (s->opts.max_conns) {
    uint64_t free_slots =
        s->active < s->opts.max_conns ? s->opts.max_conns - s->active : 0;
    if (free_slots < (uint64_t)n * budget)
      budget = 1;
  }
  for (i = 0; i < n && can_accept(s); i++) {
    uvip_vip_t *v = ring_pop(s);
    bool got;
    enum accept_result r;
    if (!v)
      break;
    r = accept_some(s, v, budget * v->weight, &got);
    if (s->stopped)
      break;
    if (v->state != UVIP_VIP_LISTENING)
      continue;
    if (r == ACC_MORE)
      ring_push_tail(s, v);
    else if (r == ACC_STOP) {
      /* A listener that did not get its slot keeps its place. */
      if (got)
        ring_push_tail(s, v);
      else
        ring_push_head(s, v);
      break;
    }
  }
  /* Every listener still waiting when the global cap hit is held back. */
  if (global_capped(s))
    for (uvip_vip_t *v = s->ring_head; v; v = v->ring_next)
      v->stats.deferred++;
  if (!s->stopped)
    kick(s);
}

void uvip__sched_slot_freed(uvip_server_t *s, uvip_vip_t *v) {
  if (s->moved_waiting)
    uvip__moved_room(s);
  if (!s->listening || s->stopped)
    return;
  if (v->pending && v->state == UVIP_VIP_LISTENING && !vip_capped(s, v)) {
    v->pending = false;
    ring_push_tail(s, v);
  }
  /* A closed connection gave a descriptor back. */
  if (s->backing_off) {
    uv_timer_stop(&s->backoff);
    s->backing_off = false;
  }
  kick(s);
}

void uvip__sched_kick(uvip_server_t *s) {
  if (s->moved_waiting)
    uvip__moved_room(s);
  if (s->listening && !s->stopped)
    kick(s);
}

void uvip__sched_rearm(uvip_server_t *s) {
  if (!s->listening || s->stopped)
    return;
  /* Each listener is tried once: an edge collected (or spent by another
   * process sharing the socket) while we were not accepting must not leave
   * a queued connection waiting for the next new one. accept4()'s EAGAIN
   * takes those with nothing queued off the ring again. */
  for (size_t i = 0; i < s->nvips; i++)
    mark_ready(s, s->vips[i]);
  kick(s);
}

void uvip__sched_accept_queued(uvip_server_t *s) {
  bool got;
  if (!s->listening || s->stopped || s->held ||
      (s->opts.flags & UVIP_PROXY_PROTOCOL))
    return;
  /* The caps and the errors as in a scheduled pass; a callback that stops
   * the server ends it. */
  for (size_t i = 0; i < s->nvips && !s->stopped; i++)
    if (s->vips[i]->state == UVIP_VIP_LISTENING &&
        accept_some(s, s->vips[i], UINT_MAX, &got) == ACC_STOP)
      break;
}

static void on_keepalive(uv_async_t *handle) { (void)handle; }

void uvip__sched_keepalive(uvip_server_t *s, bool on) {
  if (s->epfd < 0)
    return;
  if (on)
    uv_ref((uv_handle_t *)&s->keepalive);
  else
    uv_unref((uv_handle_t *)&s->keepalive);
}

int uvip__sched_init(uvip_server_t *s) {
  int r;
  if ((s->opts.flags & UVIP_PROXY_PROTOCOL) && (r = uvip__proxy_init(s)) != 0)
    return r;
  s->epfd = epoll_create1(EPOLL_CLOEXEC);
  r = s->epfd < 0 ? -errno : uv_poll_init(s->loop, &s->epoll_watch, s->epfd);
  if (r != 0) {
    if (s->epfd >= 0)
      close(s->epfd);
    s->epfd = -1;
    /* Its handles close before anything can free the server: a server
     * closes from the loop, after them. */
    uvip__proxy_close(s, NULL);
    return r;
  }
  uv_check_init(s->loop, &s->check);
  uv_idle_init(s->loop, &s->idle);
  uv_timer_init(s->loop, &s->backoff);
  uv_async_init(s->loop, &s->keepalive, on_keepalive);
  uv_timer_init(s->loop, &s->drain_deadline);
  uv_unref((uv_handle_t *)&s->keepalive);
  s->backoff_cur_ms = s->opts.backoff_ms;
  return 0;
}

int uvip__sched_add(uvip_server_t *s, uvip_vip_t *v) {
  struct epoll_event ev;
  ev.events = EPOLLIN | EPOLLET;
  ev.data.ptr = v;
  if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, v->fd, &ev) != 0)
    return -errno;
  /* Connections may have queued between listen() and now. */
  mark_ready(s, v);
  kick(s);
  return 0;
}

void uvip__sched_remove(uvip_server_t *s, uvip_vip_t *v) {
  if (v->fd >= 0 && s->epfd >= 0)
    epoll_ctl(s->epfd, EPOLL_CTL_DEL, v->fd, NULL);
  ring_unlink(s, v);
  v->pending = false;
  if (!s->closing && s->epfd >= 0)
    kick(s);
}

static void on_handle_closed(uv_handle_t *h) {
  uvip_server_t *s = h->data;
  assert(s->finishing && s->handles_open > 0);
  if (--s->handles_open == 0)
    uvip__server_finish(s);
}

void uvip__sched_close(uvip_server_t *s) {
  assert(s->finishing && s->handles_open == 0);
  if (s->epfd < 0) {
    /* Never listened. */
    uv_idle_init(s->loop, &s->idle);
    s->idle.data = s;
    s->handles_open = 1;
    uv_close((uv_handle_t *)&s->idle, on_handle_closed);
    return;
  }
  s->handles_open = 6 + uvip__proxy_close(s, on_handle_closed);
  s->epoll_watch.data = s;
  s->drain_deadline.data = s;
  s->check.data = s;
  s->idle.data = s;
  s->backoff.data = s;
  s->keepalive.data = s;
  uv_close((uv_handle_t *)&s->epoll_watch, on_handle_closed);
  uv_close((uv_handle_t *)&s->check, on_handle_closed);
  uv_close((uv_handle_t *)&s->idle, on_handle_closed);
  uv_close((uv_handle_t *)&s->backoff, on_handle_closed);
  uv_close((uv_handle_t *)&s->keepalive, on_handle_closed);
  uv_close((uv_handle_t *)&s->drain_deadline, on_handle_closed);
  /* The poll handle no longer watches it. */
  close(s->epfd);
  s->epfd = -1;
  s->watching = false;
}
