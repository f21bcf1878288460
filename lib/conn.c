/* Accepted connections. A connection holds a slot of its VIP's and the
 * server's caps from accept until its handle is closed through
 * uvip_conn_close(); the slot is given back in the close callback, so it can
 * be neither leaked nor given back twice.
 *
 * Memory matters here (a worker may hold a million of these): a connection
 * is the uv_tcp_t plus six pointers, with no per-connection buffers (the
 * addresses of a PROXY header, 56 bytes, only with one; the sixth pointer
 * is the group of a prefix VIP's connection, server-prefix.c).
 * SPDX-License-Identifier: MIT */
#include "internal.h"
#include "restart-internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void uvip__conn_list_add(uvip_conn_t **head, uvip_conn_t *c) {
  c->prev = NULL;
  c->next = *head;
  if (*head)
    (*head)->prev = c;
  *head = c;
}

void uvip__conn_list_del(uvip_conn_t **head, uvip_conn_t *c) {
  if (c->prev)
    c->prev->next = c->next;
  else
    *head = c->next;
  if (c->next)
    c->next->prev = c->prev;
  c->prev = c->next = NULL;
}

static void free_unopened(uv_handle_t *h) { free(h); }

int uvip__conn_new(uv_loop_t *loop, uvip_vip_t *vip, int fd,
                   uvip_conn_t **out) {
  uvip_conn_t *c = malloc(sizeof(*c));
  int r;
  if (!c) {
    close(fd);
    return UV_ENOMEM;
  }
  uv_tcp_init(loop, &c->tcp);
  r = uv_tcp_open(&c->tcp, fd);
  if (r != 0) {
    close(fd);
    uv_close((uv_handle_t *)&c->tcp, free_unopened);
    return r;
  }
  c->tcp.data = NULL;
  c->vip = vip;
  c->close_cb = NULL;
  c->prev = c->next = NULL;
  c->proxy = NULL;
  c->group = NULL;
  if (loop == vip->server->loop)
    uvip__conn_list_add(&vip->conns, c);
  *out = c;
  return 0;
}

static void on_closed(uv_handle_t *h) {
  uvip_conn_t *c = (uvip_conn_t *)h;
  uvip_vip_t *v = c->vip;
  uvip_server_t *s = v->server;

  if (c->tcp.loop != s->loop) {
    /* A worker's connection: its slot goes back through the worker. */
    s->remote_closed(c);
    return;
  }
  uvip__conn_list_del(&v->conns, c);
  if (c->group)
    uvip__pfx_release(v, c->group);
  /* The slot first, so that the callback sees the server as it now is. What
   * the release may end (a drain, the server) ends from the loop later, so
   * the VIP and the server outlive the callback. */
  uvip__server_release(s, v);
  if (c->close_cb)
    c->close_cb(c);
  if (c->proxy != &uvip__proxy_noaddrs)
    free(c->proxy);
  free(c);
}

uvip_conn_close_cb uvip__conn_user_close_cb(const uvip_conn_t *c) {
  return c->close_cb;
}

/* uv_close() called on the connection's handle instead of uvip_conn_close()
 * (an easy slip when porting a libuv server): the slot cannot be given back
 * and the server cannot finish closing. Said loudly, once per connection. */
static void reported(uvip_conn_t *c) { (void)c; }

static int closed_behind_our_back(uvip_conn_t *c) {
  if (c->close_cb != reported) {
    c->close_cb = reported; /* never called: marks it reported */
    fprintf(stderr,
            "uvip: connection %p was closed with uv_close(); close "
            "connections with uvip_conn_close(), or its slot is never given "
            "back\n",
            (void *)c);
  }
  return UV_EINVAL;
}

static bool closing_by_us(const uvip_conn_t *c) {
  return c->tcp.close_cb == on_closed;
}

/* Marks a connection queued for moving to a new generation (handover.c):
 * the close callback slot is free until uvip_conn_close() runs, so it holds
 * the mark and costs the connection no memory. */
static void moving(uvip_conn_t *c) { (void)c; }

void uvip__conn_set_moving(uvip_conn_t *c, bool on) {
  c->close_cb = on ? moving : NULL;
}

UVIP_EXPORT int uvip_conn_close(uvip_conn_t *conn, uvip_conn_close_cb cb) {
  UVIP_CHECK_ARG(conn == NULL);
  if (uv_is_closing((uv_handle_t *)&conn->tcp))
    return closing_by_us(conn) ? UV_EALREADY : closed_behind_our_back(conn);
  if (conn->close_cb == moving)
    return UV_EBUSY;
  conn->close_cb = cb;
  uv_close((uv_handle_t *)&conn->tcp, on_closed);
  return 0;
}

void uvip__conn_close_all(uvip_conn_t *list, uvip_conn_close_cb cb) {
  uvip_conn_t *c, *next;
  for (c = list; c; c = next) {
    next = c->next;
    if (!uv_is_closing((uv_handle_t *)&c->tcp))
      uvip_conn_close(c, cb);
    else if (!closing_by_us(c))
      closed_behind_our_back(c);
  }
}

UVIP_EXPORT uv_tcp_t *uvip_conn_tcp(uvip_conn_t *conn) {
  return conn ? &conn->tcp : NULL;
}

UVIP_EXPORT uv_stream_t *uvip_conn_stream(uvip_conn_t *conn) {
  return conn ? (uv_stream_t *)&conn->tcp : NULL;
}

UVIP_EXPORT uvip_conn_t *uvip_conn_from_tcp(uv_tcp_t *tcp) {
  return tcp ? UVIP_CONTAINER_OF(tcp, uvip_conn_t, tcp) : NULL;
}

UVIP_EXPORT uvip_vip_t *uvip_conn_vip(const uvip_conn_t *conn) {
  return conn ? conn->vip : NULL;
}

UVIP_EXPORT int uvip_conn_peer(const uvip_conn_t *conn,
                               struct sockaddr_storage *out) {
  int len = sizeof(*out);
  UVIP_CHECK_ARG(conn == NULL || out == NULL);
  if (conn->proxy && conn->proxy != &uvip__proxy_noaddrs) {
    memset(out, 0, sizeof(*out));
    memcpy(out, &conn->proxy->src, uvip__sa_len(&conn->proxy->src.sa));
    return 0;
  }
  return uv_tcp_getpeername(&conn->tcp, (struct sockaddr *)out, &len);
}

UVIP_EXPORT int uvip_conn_local(const uvip_conn_t *conn,
                                struct sockaddr_storage *out) {
  int len = sizeof(*out);
  UVIP_CHECK_ARG(conn == NULL || out == NULL);
  if (conn->proxy && conn->proxy != &uvip__proxy_noaddrs) {
    memset(out, 0, sizeof(*out));
    memcpy(out, &conn->proxy->dst, uvip__sa_len(&conn->proxy->dst.sa));
    return 0;
  }
  return uv_tcp_getsockname(&conn->tcp, (struct sockaddr *)out, &len);
}

UVIP_EXPORT int uvip_conn_proxy(const uvip_conn_t *conn) {
  UVIP_CHECK_ARG(conn == NULL);
  return !conn->proxy ? 0 : conn->proxy == &uvip__proxy_noaddrs ? 2 : 1;
}
