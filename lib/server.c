/* Server and VIP objects: creation, listening, stopping, draining, closing
 * and counters. The accept path itself is in scheduler.c.
 * SPDX-License-Identifier: MIT */
#include "internal.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

UVIP_EXPORT int uvip_server_options_init(uvip_server_options_t *opts) {
  UVIP_CHECK_ARG(opts == NULL);
  memset(opts, 0, sizeof(*opts));
  /* HAProxy measured small per-listener batches to beat large ones. */
  opts->accept_budget = 4;
  opts->backoff_ms = 50;
  return 0;
}

static int vip_alloc(uvip_server_t *s, const struct sockaddr *sa,
                     uvip_vip_t **out) {
  uvip_vip_t *v;
  if (s->nvips == s->cap_vips) {
    size_t ncap = s->cap_vips ? s->cap_vips * 2 : 16;
    uvip_vip_t **nv = realloc(s->vips, ncap * sizeof(*nv));
    if (!nv)
      return UV_ENOMEM;
    s->vips = nv;
    s->cap_vips = ncap;
  }
  v = calloc(1, sizeof(*v));
  if (!v)
    return UV_ENOMEM;
  v->server = s;
  memcpy(&v->addr, sa, uvip__sa_len(sa));
  v->state = UVIP_VIP_IDLE;
  v->fd = -1;
  v->weight = 1;
  s->vips[s->nvips++] = v;
  *out = v;
  return 0;
}

static void free_vips(uvip_server_t *s) {
  for (size_t i = 0; i < s->nvips; i++) {
    /* An adopted socket of a server that never listened. */
    if (s->vips[i]->fd >= 0)
      close(s->vips[i]->fd);
    uvip__pfx_free(s->vips[i]->pfx);
    free(s->vips[i]);
  }
  free(s->vips);
}

static int port_of(const struct sockaddr *sa) {
  return sa->sa_family == AF_INET6
             ? ntohs(((const struct sockaddr_in6 *)sa)->sin6_port)
             : ntohs(((const struct sockaddr_in *)sa)->sin_port);
}

UVIP_EXPORT int uvip_server_new(uv_loop_t *loop, const uvip_addrs_t *addrs,
                                const uvip_server_options_t *opts,
                                uvip_server_t **out) {
  uvip_server_t *s;
  size_t n, i;
  int r;

  UVIP_CHECK_ARG(loop == NULL || addrs == NULL || out == NULL);
  if (opts) {
    UVIP_CHECK_ARG(opts->accept_budget < 1 || opts->accept_budget > 1024);
    UVIP_CHECK_ARG(opts->backlog < 0 || opts->defer_accept_secs < 0 ||
                   opts->fastopen_qlen < 0);
    UVIP_CHECK_ARG(opts->flags &
                   ~(unsigned)(UVIP_REUSEPORT | UVIP_FREEBIND |
                               UVIP_ALL_OR_NOTHING | UVIP_DUALSTACK |
                               UVIP_NODELAY | UVIP_ALLOW_EMPTY |
                               UVIP_SOCKET_ACTIVATION | UVIP_PROXY_PROTOCOL));
  }
  n = uvip_addrs_count(addrs);
  for (i = 0; i < n; i++)
    UVIP_CHECK_ARG(port_of(uvip_addrs_at(addrs, i)) == 0);

  s = calloc(1, sizeof(*s));
  if (!s)
    return UV_ENOMEM;
  s->loop = loop;
  s->epfd = -1;
  s->proxy_epfd = -1;
  if (opts)
    s->opts = *opts;
  else
    uvip_server_options_init(&s->opts);
  if (s->opts.backoff_ms == 0)
    s->opts.backoff_ms = 50;
  /* Read once: a pool can have tens of thousands of listeners. */
  if (s->opts.backlog == 0)
    s->opts.backlog = uvip__somaxconn();

  for (i = 0; i < n; i++) {
    uvip_vip_t *v;
    if ((r = vip_alloc(s, uvip_addrs_at(addrs, i), &v)) != 0) {
      free_vips(s);
      free(s);
      return r;
    }
  }
  *out = s;
  return 0;
}

static int vip_bind(uvip_vip_t *v) {
  int r;
  if (v->adopted && v->fd >= 0) {
    v->error = 0;
    v->state = UVIP_VIP_LISTENING;
    return 0;
  }
  r = v->pfx ? uvip__pfx_listen(v)
             : uvip__listen_socket(&v->addr.sa, &v->server->opts, &v->fd);
  v->error = r;
  v->state = r == 0 ? UVIP_VIP_LISTENING : UVIP_VIP_FAILED;
  if (r != 0)
    v->fd = -1;
  return r;
}

static void vip_unbind(uvip_vip_t *v, uvip_vip_state_t state) {
  /* Its sockets still waiting for a PROXY header go with the listener, as
   * the connections queued in the kernel do. First, while the VIP still
   * listens: giving their slots back must not end a drain now. */
  if (v->stats.proxy_pending > 0)
    uvip__proxy_drop(v->server, v);
  if (v->fd >= 0) {
    uvip__sched_remove(v->server, v);
    close(v->fd);
    v->fd = -1;
  }
  v->adopted = false;
  v->state = state;
}

/* Undoes a failed uvip_server_listen(): what it bound is closed, adopted
 * sockets stay with their VIPs (losing them would refuse connections the
 * next attempt could serve). */
static void vip_unlisten(uvip_vip_t *v) {
  if (v->adopted) {
    if (v->state == UVIP_VIP_LISTENING)
      uvip__sched_remove(v->server, v);
    v->state = UVIP_VIP_IDLE;
  } else if (v->state == UVIP_VIP_LISTENING) {
    vip_unbind(v, UVIP_VIP_IDLE);
  }
}

static void format_error(char *buf, size_t len, const uvip_vip_t *v, int r) {
  char a[UVIP_ADDRSTRLEN];
  if (!buf || len == 0)
    return;
  if (uvip_addr_format(&v->addr.sa, 1, a, sizeof(a)) != 0)
    strcpy(a, "?");
  snprintf(buf, len, "%s: %s", a, uv_strerror(r));
}

UVIP_EXPORT int uvip_server_listen(uvip_server_t *s, uvip_connection_cb cb,
                                   char *errbuf, size_t errlen) {
  size_t i, bound = 0;
  int first_err = 0, r;

  UVIP_CHECK_ARG(s == NULL || cb == NULL);
  if (s->listening || s->closing)
    return UV_EALREADY;
  if (s->nvips == 0 && !(s->opts.flags & UVIP_ALLOW_EMPTY))
    return UV_EINVAL;
  if ((s->opts.flags & UVIP_SOCKET_ACTIVATION) &&
      (r = uvip__adopt_activation(s, errbuf, errlen)) != 0)
    return r;

  for (i = 0; i < s->nvips; i++) {
    /* Removed before listening: only waits for its drain callback. */
    if (s->vips[i]->state == UVIP_VIP_DRAINING)
      continue;
    r = vip_bind(s->vips[i]);
    if (r == 0) {
      bound++;
    } else if (first_err == 0) {
      first_err = r;
      format_error(errbuf, errlen, s->vips[i], r);
      if (s->opts.flags & UVIP_ALL_OR_NOTHING)
        break;
    }
  }
  if ((bound == 0 && !(s->opts.flags & UVIP_ALLOW_EMPTY)) ||
      (first_err && (s->opts.flags & UVIP_ALL_OR_NOTHING))) {
    for (i = 0; i < s->nvips; i++)
      vip_unlisten(s->vips[i]);
    return first_err;
  }

  if ((r = uvip__sched_init(s)) != 0) {
    for (i = 0; i < s->nvips; i++)
      vip_unlisten(s->vips[i]);
    return r;
  }
  s->connection_cb = cb;
  s->listening = true;
  uvip__sched_keepalive(s, true);
  for (i = 0; i < s->nvips; i++) {
    uvip_vip_t *v = s->vips[i];
    if (v->state == UVIP_VIP_LISTENING && (r = uvip__sched_add(s, v)) != 0) {
      v->error = r;
      vip_unbind(v, UVIP_VIP_FAILED);
    }
  }
  return 0;
}

UVIP_EXPORT int uvip_server_stop(uvip_server_t *s) {
  UVIP_CHECK_ARG(s == NULL);
  if (s->stopped)
    return 0;
  s->stopped = true;
  if (s->remote_stop)
    s->remote_stop(s);
  if (s->pend_head)
    uvip__proxy_drop(s, NULL);
  for (size_t i = 0; i < s->nvips; i++) {
    uvip_vip_t *v = s->vips[i];
    if (v->state == UVIP_VIP_LISTENING)
      vip_unbind(v, UVIP_VIP_STOPPED);
  }
  if (s->epfd >= 0) {
    uv_poll_stop(&s->epoll_watch);
    uv_check_stop(&s->check);
    uv_idle_stop(&s->idle);
    uv_timer_stop(&s->backoff);
    s->watching = false;
    if (s->listening)
      uvip__sched_keepalive(s, false);
  }
  return 0;
}

UVIP_EXPORT int uvip_server_close_conns(uvip_server_t *s) {
  UVIP_CHECK_ARG(s == NULL);
  for (size_t i = 0; i < s->nvips; i++)
    uvip__conn_close_all(s->vips[i]->conns, s->opts.conn_close_cb);
  return s->remote_close_conns ? s->remote_close_conns(s) : 0;
}

void uvip__server_release(uvip_server_t *s, uvip_vip_t *v) {
  assert(v->stats.active > 0 && s->active > 0);
  v->stats.active--;
  v->stats.closed++;
  s->active--;
  uvip__sched_slot_freed(s, v);
  uvip__vip_maybe_finish_drain(v);
  uvip__server_try_finish(s);
}

void uvip__server_try_finish(uvip_server_t *s) {
  if (!s->closing || s->finishing || s->active > 0 || s->draining_vips > 0)
    return;
  /* uvip_server_close() refuses while anything is attached. */
  assert(s->attached == 0);
  s->finishing = true;
  uvip__sched_close(s);
}

void uvip__server_finish(uvip_server_t *s) {
  assert(s->finishing && s->handles_open == 0 && s->active == 0 &&
         s->draining_vips == 0);
  if (s->close_cb)
    s->close_cb(s);
  free_vips(s);
  free(s);
}

uvip_vip_t *uvip__server_find_vip(uvip_server_t *s, const struct sockaddr *sa) {
  for (size_t i = 0; i < s->nvips; i++)
    if (s->vips[i]->state != UVIP_VIP_DRAINING &&
        uvip__sa_equal(&s->vips[i]->addr.sa, sa))
      return s->vips[i];
  return NULL;
}

void uvip__server_attach(uvip_server_t *s) { s->attached++; }

void uvip__server_detach(uvip_server_t *s) {
  assert(s->attached > 0);
  s->attached--;
}

UVIP_EXPORT int uvip_server_close(uvip_server_t *s, uvip_server_close_cb cb) {
  UVIP_CHECK_ARG(s == NULL);
  if (s->closing)
    return UV_EALREADY;
  if (s->attached > 0)
    return UV_EBUSY;
  uvip_server_stop(s);
  s->closing = true;
  s->close_cb = cb;
  /* Connections and draining VIPs finish first; each end calls
   * uvip__server_try_finish() again. */
  uvip__server_try_finish(s);
  return 0;
}

static void on_drain_deadline(uv_timer_t *t) {
  uvip_server_t *s = UVIP_CONTAINER_OF(t, uvip_server_t, drain_deadline);
  uvip_server_close_conns(s);
}

UVIP_EXPORT int uvip_server_drain(uvip_server_t *s, uint64_t timeout_ms,
                                  uvip_conn_going_away_cb going_away) {
  UVIP_CHECK_ARG(s == NULL);
  if (s->finishing)
    return UV_ECANCELED;
  uvip_server_stop(s);
  if (going_away)
    for (size_t i = 0; i < s->nvips; i++) {
      uvip_conn_t *c, *next;
      /* A connection closed from the callback stays on the list until its
       * close callback: the walk is safe. */
      for (c = s->vips[i]->conns; c; c = next) {
        next = c->next;
        if (!uv_is_closing((uv_handle_t *)&c->tcp))
          going_away(c);
      }
    }
  if (timeout_ms > 0 && s->epfd >= 0)
    uv_timer_start(&s->drain_deadline, on_drain_deadline, timeout_ms, 0);
  return 0;
}

UVIP_EXPORT uv_loop_t *uvip_server_loop(const uvip_server_t *s) {
  return s ? s->loop : NULL;
}

UVIP_EXPORT void *uvip_server_get_data(const uvip_server_t *s) {
  return s ? s->data : NULL;
}

UVIP_EXPORT void uvip_server_set_data(uvip_server_t *s, void *data) {
  if (s)
    s->data = data;
}

UVIP_EXPORT size_t uvip_server_vip_count(const uvip_server_t *s) {
  return s ? s->nvips : 0;
}

UVIP_EXPORT uvip_vip_t *uvip_server_vip(const uvip_server_t *s, size_t i) {
  return s && i < s->nvips ? s->vips[i] : NULL;
}

UVIP_EXPORT int uvip_server_add_vip(uvip_server_t *s, const struct sockaddr *sa,
                                    uvip_vip_t **out) {
  UVIP_CHECK_ARG(s == NULL || sa == NULL);
  if (sa->sa_family != AF_INET && sa->sa_family != AF_INET6)
    return UV_EAFNOSUPPORT;
  UVIP_CHECK_ARG(port_of(sa) == 0);
  return uvip__server_add_vip(s, sa, NULL, out);
}

int uvip__server_add_vip(uvip_server_t *s, const struct sockaddr *sa,
                         struct uvip__pfx *pfx, uvip_vip_t **out) {
  uvip_vip_t *v;
  int r;

  if (s->closing)
    return UV_ECANCELED;
  for (size_t i = 0; i < s->nvips; i++)
    if (uvip__sa_equal(&s->vips[i]->addr.sa, sa) &&
        s->vips[i]->state != UVIP_VIP_DRAINING)
      return UV_EEXIST;
  if ((r = vip_alloc(s, sa, &v)) != 0)
    return r;
  /* Before binding: a prefix VIP binds its own way (uvip__pfx_listen()). */
  v->pfx = pfx;
  if (s->listening && !s->stopped) {
    r = vip_bind(v);
    if (r == 0 && (r = uvip__sched_add(s, v)) != 0)
      vip_unbind(v, UVIP_VIP_FAILED);
    if (r != 0) {
      s->nvips--;
      free(v);
      return r;
    }
  }
  if (out)
    *out = v;
  return 0;
}

/* The drain timer's close callback: the one place a drain ends. */
static void drain_closed(uv_handle_t *h) {
  uvip_vip_t *v = h->data;
  uvip_server_t *s = v->server;
  size_t i;
  assert(v->state == UVIP_VIP_DRAINING && v->drain_finishing &&
         v->stats.active == 0 && s->draining_vips > 0);
  free(h);
  for (i = 0; i < s->nvips && s->vips[i] != v; i++)
    ;
  assert(i < s->nvips);
  memmove(&s->vips[i], &s->vips[i + 1], (s->nvips - i - 1) * sizeof(v));
  s->nvips--;
  s->draining_vips--;
  if (v->drain_cb)
    v->drain_cb(v, v->drain_timed_out);
  uvip__pfx_free(v->pfx);
  free(v);
  uvip__server_try_finish(s);
}

void uvip__vip_maybe_finish_drain(uvip_vip_t *v) {
  if (v->state != UVIP_VIP_DRAINING || v->stats.active > 0 ||
      v->drain_finishing)
    return;
  v->drain_finishing = true;
  uv_close((uv_handle_t *)v->drain_timer, drain_closed);
}

static void on_drain_timer(uv_timer_t *t) {
  uvip_vip_t *v = t->data;
  assert(v->state == UVIP_VIP_DRAINING && v->stats.active > 0);
  v->drain_timed_out = true;
  uvip__conn_close_all(v->conns, v->server->opts.conn_close_cb);
}

UVIP_EXPORT int uvip_server_remove_vip(uvip_server_t *s, uvip_vip_t *v,
                                       uint64_t timeout_ms,
                                       uvip_vip_drain_cb cb) {
  UVIP_CHECK_ARG(s == NULL || v == NULL || v->server != s);
  if (v->state == UVIP_VIP_DRAINING)
    return UV_EALREADY;
  if (s->finishing)
    return UV_ECANCELED;
  v->drain_timer = malloc(sizeof(*v->drain_timer));
  if (!v->drain_timer)
    return UV_ENOMEM;
  uv_timer_init(s->loop, v->drain_timer);
  v->drain_timer->data = v;
  vip_unbind(v, UVIP_VIP_DRAINING);
  v->drain_cb = cb;
  s->draining_vips++;
  if (v->stats.active == 0)
    /* Ends from the loop, not inside this call. */
    uvip__vip_maybe_finish_drain(v);
  else if (timeout_ms > 0)
    uv_timer_start(v->drain_timer, on_drain_timer, timeout_ms, 0);
  return 0;
}

UVIP_EXPORT int uvip_server_stats(const uvip_server_t *s,
                                  uvip_vip_stats_t *out) {
  UVIP_CHECK_ARG(s == NULL || out == NULL);
  memset(out, 0, sizeof(*out));
  for (size_t i = 0; i < s->nvips; i++) {
    const uvip_vip_stats_t *v = &s->vips[i]->stats;
    out->accepted += v->accepted;
    out->active += v->active;
    out->closed += v->closed;
    out->deferred += v->deferred;
    out->err_emfile += v->err_emfile;
    out->err_enfile += v->err_enfile;
    out->err_enobufs += v->err_enobufs;
    out->err_enomem += v->err_enomem;
    out->err_aborted += v->err_aborted;
    out->err_other += v->err_other;
    out->backoffs += v->backoffs;
    out->proxy_pending += v->proxy_pending;
    out->proxy_local += v->proxy_local;
    out->proxy_missing += v->proxy_missing;
    out->proxy_malformed += v->proxy_malformed;
    out->proxy_oversized += v->proxy_oversized;
    out->proxy_timeout += v->proxy_timeout;
    out->proxy_eof += v->proxy_eof;
    out->proxy_dropped += v->proxy_dropped;
  }
  return 0;
}

UVIP_EXPORT const struct sockaddr *uvip_vip_addr(const uvip_vip_t *v) {
  return v ? &v->addr.sa : NULL;
}

UVIP_EXPORT uvip_vip_state_t uvip_vip_state(const uvip_vip_t *v) {
  return v ? v->state : UVIP_VIP_IDLE;
}

UVIP_EXPORT int uvip_vip_error(const uvip_vip_t *v) {
  UVIP_CHECK_ARG(v == NULL);
  return v->error;
}

UVIP_EXPORT int uvip_vip_stats(const uvip_vip_t *v, uvip_vip_stats_t *out) {
  UVIP_CHECK_ARG(v == NULL || out == NULL);
  *out = v->stats;
  return 0;
}

UVIP_EXPORT int uvip_vip_fd(const uvip_vip_t *v) {
  UVIP_CHECK_ARG(v == NULL);
  return v->fd >= 0 ? v->fd : UV_EBADF;
}

UVIP_EXPORT uvip_server_t *uvip_vip_server(const uvip_vip_t *v) {
  return v ? v->server : NULL;
}

UVIP_EXPORT int uvip_vip_set_weight(uvip_vip_t *v, unsigned int weight) {
  UVIP_CHECK_ARG(v == NULL || weight < 1 || weight > 64);
  v->weight = weight;
  return 0;
}

UVIP_EXPORT void *uvip_vip_get_data(const uvip_vip_t *v) {
  return v ? v->data : NULL;
}

UVIP_EXPORT void uvip_vip_set_data(uvip_vip_t *v, void *data) {
  if (v)
    v->data = data;
}

UVIP_EXPORT int uvip_vip_pause(uvip_vip_t *v) {
  UVIP_CHECK_ARG(v == NULL || v->state != UVIP_VIP_LISTENING);
  vip_unbind(v, UVIP_VIP_PAUSED);
  return 0;
}

UVIP_EXPORT int uvip_vip_resume(uvip_vip_t *v) {
  int r;
  UVIP_CHECK_ARG(v == NULL);
  UVIP_CHECK_ARG(v->state != UVIP_VIP_PAUSED && v->state != UVIP_VIP_FAILED);
  UVIP_CHECK_ARG(!uvip_server_is_listening(v->server));
  r = vip_bind(v);
  if (r == 0 && (r = uvip__sched_add(v->server, v)) != 0) {
    vip_unbind(v, UVIP_VIP_FAILED);
    v->error = r;
  }
  return r;
}

UVIP_EXPORT int uvip_server_is_listening(const uvip_server_t *s) {
  return s && s->listening && !s->stopped && !s->closing;
}

UVIP_EXPORT int uvip_server_hold(uvip_server_t *s) {
  UVIP_CHECK_ARG(s == NULL || !uvip_server_is_listening(s));
  /* Nothing is closed: the sockets' queues go on filling, for whichever
   * process shares them, or for this one once it accepts again. */
  s->held = true;
  uvip__sched_kick(s);
  return 0;
}

UVIP_EXPORT int uvip_server_unhold(uvip_server_t *s) {
  UVIP_CHECK_ARG(s == NULL);
  if (!s->held)
    return 0;
  s->held = false;
  /* Stopped or closing meanwhile: nothing left to accept on. */
  uvip__sched_rearm(s);
  return 0;
}

UVIP_EXPORT int uvip_server_is_held(const uvip_server_t *s) {
  return s && s->held && uvip_server_is_listening(s);
}
