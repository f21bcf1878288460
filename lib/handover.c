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

static void mover_finish(uvip__mover_t *m) {
  for (size_t i = m->next; i < m->n; i++) {
    give_back(m->items[i]);
    m->kept++;
  }
  for (size_t i = 0; i < m->n; i++)
    free(m->items[i]);
  free(m->items);
  m->items = NULL;
  m->n = m->next = m->cap = 0;
  m->running = false;
  if (m->chan >= 0)
    uv_poll_stop(m->poll);
  m->done(m);
}

/* 0 sent, UV_EAGAIN no room now, or the channel's error. */
static int send_one(int chan, uvip__handover_item_t *it) {
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
  r = uvip__send_fds(chan, iov, 2, &fd, 1);
  if (r < 0)
    return r == UV_EAGAIN || r == -EWOULDBLOCK ? UV_EAGAIN : (int)r;
  return 0;
}

static void pump(uvip__mover_t *m) {
  while (m->next < m->n) {
    uvip__handover_item_t *it = m->items[m->next];
    int r = send_one(m->chan, it);
    if (r == UV_EAGAIN)
      return; /* the poll stays on: writable again later */
    if (r != 0)
      break; /* the new generation is gone: the rest stay and drain here */
    m->next++;
    m->moved++;
    /* Sent: the new generation holds the socket; ours closes like any
     * connection (slot back, conn_close_cb). */
    uvip__conn_set_moving(it->conn, false);
    uvip_conn_close(it->conn, m->close_cb);
  }
  mover_finish(m);
}

void uvip__mover_writable(uvip__mover_t *m, int status) {
  if (!m->running)
    return;
  if (status < 0) {
    mover_finish(m);
    return;
  }
  pump(m);
}

void uvip__mover_abort(uvip__mover_t *m) {
  if (m->running)
    mover_finish(m);
}

void uvip__mover_collect(uvip__mover_t *m, uvip_conn_t *list,
                         uvip_handover_decide_cb decide) {
  uvip_conn_t *c, *next;
  for (c = list; c; c = next) {
    unsigned char blob[UVIP_HANDOVER_BLOB_MAX];
    size_t len = 0;
    int what;
    uvip__handover_item_t *it;
    next = c->next;
    if (uv_is_closing((uv_handle_t *)&c->tcp))
      continue;
    what = decide(c, blob, &len);
    if (what == UVIP_HANDOVER_CLOSE) {
      uvip_conn_close(c, m->close_cb);
      continue;
    }
    if (what != UVIP_HANDOVER_MOVE || len > sizeof(blob) || !is_idle(c)) {
      m->kept++;
      continue;
    }
    if (m->n == m->cap) {
      size_t ncap = m->cap ? m->cap * 2 : 64;
      uvip__handover_item_t **n = realloc(m->items, ncap * sizeof(*n));
      if (!n) {
        m->kept++;
        continue;
      }
      m->items = n;
      m->cap = ncap;
    }
    if (!(it = malloc(sizeof(*it) + len))) {
      m->kept++;
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
    m->items[m->n++] = it;
  }
}

void uvip__mover_start(uvip__mover_t *m, uv_poll_cb cb) {
  m->running = true;
  uv_poll_start(m->poll, UV_WRITABLE, cb);
}

/* ---- The upgrade's hand-over: the server's own connections and its
 * workers' ------------------------------------------------------------ */

static void maybe_done(uvip_upgrade_t *u) {
  uvip_handover_done_cb done = u->ho_done;
  if (!u->ho_running || u->mover.running || u->ho_workers)
    return;
  u->ho_running = false;
  if (done)
    done(u, u->mover.moved + u->ho_moved, u->mover.kept + u->ho_kept);
}

static void on_chan_writable(uv_poll_t *p, int status, int events) {
  uvip_upgrade_t *u = UVIP_CONTAINER_OF(p, uvip_upgrade_t, chan_poll);
  (void)events;
  uvip__mover_writable(&u->mover, status);
}

static void on_mover_done(uvip__mover_t *m) {
  maybe_done(UVIP_CONTAINER_OF(m, uvip_upgrade_t, mover));
}

void uvip__handover_workers_done(uvip_upgrade_t *u, size_t moved,
                                 size_t kept) {
  if (!u->ho_workers)
    return;
  u->ho_workers = false;
  u->ho_moved += moved;
  u->ho_kept += kept;
  maybe_done(u);
}

void uvip__handover_abort(uvip_upgrade_t *u) {
  if (!u->ho_running)
    return;
  /* The workers go on sending over their own copies of the channel; what
   * they report is no longer waited for. */
  if (u->ho_workers) {
    uvip__wk_handover_detach(u->ho_server);
    u->ho_workers = false;
  }
  if (u->mover.running)
    uvip__mover_abort(&u->mover); /* runs maybe_done() */
  else
    maybe_done(u);
}

UVIP_EXPORT int uvip_upgrade_handover(uvip_upgrade_t *u, uvip_server_t *s,
                                      uvip_handover_decide_cb decide,
                                      uvip_handover_done_cb done) {
  int r;
  UVIP_CHECK_ARG(u == NULL || s == NULL || decide == NULL || s->loop != u->loop);
  if (!u->is_ready || u->ho_running || u->closing)
    return UV_EBUSY;
  if (u->chan < 0)
    return UV_ENOTCONN;
  memset(&u->mover, 0, sizeof(u->mover));
  u->mover.poll = &u->chan_poll;
  u->mover.chan = u->chan;
  u->mover.close_cb = s->opts.conn_close_cb;
  u->mover.done = on_mover_done;
  u->ho_server = s;
  u->ho_done = done;
  u->ho_moved = u->ho_kept = 0;
  u->ho_workers = false;
  if (s->handoff_ctx) {
    /* Workers hold the connections, each on its own loop. */
    if ((r = uvip__wk_handover(s, u, u->chan, decide)) < 0)
      return r;
    u->ho_workers = r > 0;
  }
  for (size_t i = 0; i < s->nvips; i++)
    uvip__mover_collect(&u->mover, s->vips[i]->conns, decide);
  u->ho_running = true;
  /* Sent from the loop, so that done never runs inside this call. */
  uvip__mover_start(&u->mover, on_chan_writable);
  return 0;
}
