/* Moving idle connections to the next generation. The old side queues the
 * connections the application chose and sends each (its descriptor by
 * SCM_RIGHTS, its VIP's address and the application's blob) over the
 * upgrade's SOCK_SEQPACKET channel as the channel has room, on the loop;
 * the new side (moved.c) wraps them as if it had accepted them.
 *
 * A queued connection is the hand-over's: it is not read from, and
 * uvip_conn_close() refuses it (UV_EBUSY), until it is sent (then closed
 * here: the socket lives on in the new process) or given back (reading
 * again as before).
 * SPDX-License-Identifier: MIT */
#include "restart-internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

/* Idle: nothing the application has not read, nothing libuv still has to
 * write. Bytes the kernel holds for sending are fine: the socket moves
 * with them. */
static bool is_idle(uvip_conn_t *c) {
  int unread = 0, fd;
  if (uv_is_closing((uv_handle_t *)&c->tcp) ||
      uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) > 0 ||
      uv_fileno((uv_handle_t *)&c->tcp, &fd) != 0)
    return false;
  return ioctl(fd, FIONREAD, &unread) == 0 && unread == 0;
}

static void give_back(uvip__handover_item_t *it) {
  uvip__conn_set_moving(it->conn, false);
  if (it->read_cb)
    uv_read_start((uv_stream_t *)&it->conn->tcp, it->alloc_cb, it->read_cb);
}

static void finish(uvip_upgrade_t *u) {
  uvip_handover_done_cb done = u->ho_done;
  size_t moved = u->ho_moved, kept = u->ho_kept;
  for (size_t i = u->ho_next; i < u->ho_n; i++) {
    give_back(u->ho_items[i]);
    kept++;
  }
  for (size_t i = 0; i < u->ho_n; i++)
    free(u->ho_items[i]);
  free(u->ho_items);
  u->ho_items = NULL;
  u->ho_n = u->ho_next = 0;
  u->ho_running = false;
  if (u->chan >= 0)
    uv_poll_stop(&u->chan_poll);
  if (done)
    done(u, moved, kept);
}

/* 0 sent, UV_EAGAIN no room now, or the channel's error. */
static int send_one(uvip_upgrade_t *u, uvip__handover_item_t *it) {
  uvip__handover_msg_t h;
  struct iovec iov[2];
  int fd;
  ssize_t r;

  if (uv_fileno((uv_handle_t *)&it->conn->tcp, &fd) != 0)
    return UV_EBADF;
  memset(&h, 0, sizeof(h));
  h.magic = UVIP__HANDOVER_MAGIC;
  h.blob_len = (uint32_t)it->len;
  memcpy(&h.vip, &it->conn->vip->addr, sizeof(it->conn->vip->addr));
  iov[0].iov_base = &h;
  iov[0].iov_len = sizeof(h);
  iov[1].iov_base = it->blob;
  iov[1].iov_len = it->len;
  r = uvip__send_fds(u->chan, iov, 2, &fd, 1);
  if (r < 0)
    return r == UV_EAGAIN || r == -EWOULDBLOCK ? UV_EAGAIN : (int)r;
  return 0;
}

static void on_chan_writable(uv_poll_t *p, int status, int events);

static void pump(uvip_upgrade_t *u) {
  while (u->ho_next < u->ho_n) {
    uvip__handover_item_t *it = u->ho_items[u->ho_next];
    int r = send_one(u, it);
    if (r == UV_EAGAIN) {
      uv_poll_start(&u->chan_poll, UV_WRITABLE, on_chan_writable);
      return;
    }
    if (r != 0) {
      /* The new generation is gone: the rest stay and drain here. */
      finish(u);
      return;
    }
    u->ho_next++;
    u->ho_moved++;
    /* Sent: the new generation holds the socket; ours closes like any
     * connection (slot back, conn_close_cb). */
    uvip__conn_set_moving(it->conn, false);
    uvip_conn_close(it->conn, u->ho_server->opts.conn_close_cb);
  }
  finish(u);
}

static void on_chan_writable(uv_poll_t *p, int status, int events) {
  uvip_upgrade_t *u = p->data;
  (void)events;
  if (!u->ho_running)
    return;
  if (status < 0) {
    finish(u);
    return;
  }
  pump(u);
}

void uvip__handover_abort(uvip_upgrade_t *u) {
  if (u->ho_running)
    finish(u);
}

UVIP_EXPORT int uvip_upgrade_handover(uvip_upgrade_t *u, uvip_server_t *s,
                                      uvip_handover_decide_cb decide,
                                      uvip_handover_done_cb done) {
  size_t cap = 0;
  UVIP_CHECK_ARG(u == NULL || s == NULL || decide == NULL || s->loop != u->loop);
  if (!u->is_ready || u->ho_running || u->closing)
    return UV_EBUSY;
  if (u->chan < 0)
    return UV_ENOTCONN;
  u->ho_server = s;
  u->ho_done = done;
  u->ho_moved = u->ho_kept = 0;
  u->ho_items = NULL;
  u->ho_n = u->ho_next = 0;
  for (size_t i = 0; i < s->nvips; i++) {
    uvip_conn_t *c, *next;
    for (c = s->vips[i]->conns; c; c = next) {
      unsigned char blob[UVIP_HANDOVER_BLOB_MAX];
      size_t len = 0;
      int what;
      uvip__handover_item_t *it;
      next = c->next;
      if (uv_is_closing((uv_handle_t *)&c->tcp))
        continue;
      what = decide(c, blob, &len);
      if (what == UVIP_HANDOVER_CLOSE) {
        uvip_conn_close(c, s->opts.conn_close_cb);
        continue;
      }
      if (what != UVIP_HANDOVER_MOVE || len > sizeof(blob) || !is_idle(c)) {
        u->ho_kept++;
        continue;
      }
      if (u->ho_n == cap) {
        size_t ncap = cap ? cap * 2 : 64;
        uvip__handover_item_t **n =
            realloc(u->ho_items, ncap * sizeof(*n));
        if (!n) {
          u->ho_kept++;
          continue;
        }
        u->ho_items = n;
        cap = ncap;
      }
      if (!(it = malloc(sizeof(*it) + len))) {
        u->ho_kept++;
        continue;
      }
      it->conn = c;
      it->len = len;
      memcpy(it->blob, blob, len);
      /* Not read from while it waits: a byte read here would not move. */
      it->read_cb = uv_is_active((uv_handle_t *)&c->tcp) ? c->tcp.read_cb
                                                          : NULL;
      it->alloc_cb = c->tcp.alloc_cb;
      uv_read_stop((uv_stream_t *)&c->tcp);
      uvip__conn_set_moving(c, true);
      u->ho_items[u->ho_n++] = it;
    }
  }
  u->ho_running = true;
  /* Sent from the loop, so that done never runs inside this call. */
  uv_poll_start(&u->chan_poll, UV_WRITABLE, on_chan_writable);
  return 0;
}
