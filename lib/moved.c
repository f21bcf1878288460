/* The new generation's side of moving connections: receives each message of
 * the hand-over channel (header, blob, one descriptor), finds the VIP by
 * the address, and makes a connection of it as the accept path would
 * (counted on the VIP and the server). One close path: the poll handle's
 * close callback runs the end callback and frees the receiver.
 * SPDX-License-Identifier: MIT */
#include "restart-internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct uvip_moved_s {
  uvip_server_t *server;
  uv_poll_t poll;
  int fd;
  uvip_moved_cb cb;
  uvip_moved_end_cb end;
  int status; /* for end */
  size_t received, dropped;
  bool closing;
  bool waiting; /* for a worker with room (the poll is stopped) */
};

static void on_closed(uv_handle_t *h) {
  uvip_moved_t *m = h->data;
  close(m->fd);
  if (m->end)
    m->end(m, m->status, m->received);
  free(m);
}

static void stop(uvip_moved_t *m, int status) {
  if (m->closing)
    return;
  m->closing = true;
  if (m->server->moved_waiting == m)
    m->server->moved_waiting = NULL;
  m->status = status;
  uv_close((uv_handle_t *)&m->poll, on_closed);
}

/* One message: 1 done, 0 nothing more now, < 0 the channel failed. */
static int receive_one(uvip_moved_t *m) {
  struct {
    uvip__handover_msg_t h;
    unsigned char blob[UVIP_HANDOVER_BLOB_MAX];
  } in;
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int))];
  } ctl;
  struct iovec iov = {&in, sizeof(in)};
  struct msghdr msg;
  struct cmsghdr *cm;
  uvip_server_t *s = m->server;
  uvip_vip_t *v;
  uvip_conn_t *c = NULL;
  int fd = -1;
  ssize_t n;

  memset(&msg, 0, sizeof(msg));
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = ctl.buf;
  msg.msg_controllen = sizeof(ctl.buf);
  do
    n = recvmsg(m->fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n < 0)
    return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
  if (n == 0)
    return UV_EOF;
  for (cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm))
    if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS &&
        cm->cmsg_len == CMSG_LEN(sizeof(int)))
      memcpy(&fd, CMSG_DATA(cm), sizeof(int));
  /* Anything malformed costs that one connection, not the channel: a
   * truncated or foreign message, or no descriptor (we were at our
   * descriptor limit: MSG_CTRUNC). */
  if (fd < 0 || (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) ||
      (size_t)n < sizeof(in.h) || in.h.magic != UVIP__HANDOVER_MAGIC ||
      in.h.blob_len > UVIP_HANDOVER_BLOB_MAX ||
      (size_t)n != sizeof(in.h) + in.h.blob_len ||
      !(v = uvip__server_find_vip(s, (struct sockaddr *)&in.h.vip))) {
    if (fd >= 0)
      close(fd);
    m->dropped++;
    return 1;
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  if (s->handoff_moved) {
    /* To a worker, like an accepted one; cb runs there. */
    if (s->handoff_moved(s, v, fd, m->cb, in.blob, in.h.blob_len) != 0) {
      close(fd);
      m->dropped++;
      return 1;
    }
  } else {
    if (uvip__conn_new(s->loop, v, fd, &c) != 0) {
      m->dropped++;
      return 1;
    }
  }
  /* As the accept path counts it. */
  v->stats.accepted++;
  v->stats.active++;
  s->active++;
  m->received++;
  if (!s->handoff_moved)
    m->cb(s, c, in.blob, in.h.blob_len);
  return 1;
}

static void on_readable(uv_poll_t *p, int status, int events) {
  uvip_moved_t *m = p->data;
  int r = 0;
  (void)events;
  if (status < 0) {
    stop(m, status);
    return;
  }
  /* A bounded batch per turn: the loop has other work. */
  for (int i = 0; i < 64 && !m->closing; i++) {
    uvip_server_t *s = m->server;
    /* With workers: only while one has room (below its cap, its pipe not
     * backed up); the rest wait in the channel, and the old generation
     * waits for room in it. */
    if (s->handoff_moved && !s->handoff_has_room(s)) {
      uv_poll_stop(&m->poll);
      m->waiting = true;
      s->moved_waiting = m;
      return;
    }
    r = receive_one(m);
    if (r <= 0)
      break;
  }
  if (r == UV_EOF)
    stop(m, 0);
  else if (r < 0)
    stop(m, r);
}

void uvip__moved_room(uvip_server_t *s) {
  uvip_moved_t *m = s->moved_waiting;
  if (!m->waiting || m->closing || !s->handoff_has_room(s))
    return;
  m->waiting = false;
  s->moved_waiting = NULL;
  /* Read on the next poll phase, not inside the caller. */
  uv_poll_start(&m->poll, UV_READABLE | UV_DISCONNECT, on_readable);
}

/* Receives on fd (taken on success). */
static int start_on(uvip_server_t *s, int fd, uvip_moved_cb cb,
                    uvip_moved_end_cb end, uvip_moved_t **out) {
  uvip_moved_t *m;
  int r;
  if (!(m = calloc(1, sizeof(*m))))
    return UV_ENOMEM;
  fcntl(fd, F_SETFD, FD_CLOEXEC);
  m->server = s;
  m->fd = fd;
  m->cb = cb;
  m->end = end;
  if ((r = uv_poll_init(s->loop, &m->poll, m->fd)) != 0) {
    free(m);
    return r;
  }
  m->poll.data = m;
  uv_poll_start(&m->poll, UV_READABLE | UV_DISCONNECT, on_readable);
  *out = m;
  return 0;
}

UVIP_EXPORT int uvip_moved_start(uvip_server_t *s, uvip_moved_cb cb,
                                 uvip_moved_end_cb end, uvip_moved_t **out) {
  const char *e = getenv("UVIP_HANDOFF_FD");
  char *endp;
  long fd;
  int r;
  UVIP_CHECK_ARG(s == NULL || cb == NULL || out == NULL);
  *out = NULL;
  if (!e)
    return 0;
  fd = strtol(e, &endp, 10);
  if (*endp || fd < 3 || fd > 1 << 24 || fcntl((int)fd, F_GETFD) < 0)
    return UV_EBADF;
  if ((r = start_on(s, (int)fd, cb, end, out)) == 0)
    unsetenv("UVIP_HANDOFF_FD");
  return r;
}

UVIP_EXPORT int uvip_moved_start_fd(uvip_server_t *s, int fd,
                                    uvip_moved_cb cb, uvip_moved_end_cb end,
                                    uvip_moved_t **out) {
  UVIP_CHECK_ARG(s == NULL || cb == NULL || out == NULL);
  *out = NULL;
  if (fd < 0 || fcntl(fd, F_GETFD) < 0)
    return UV_EBADF;
  return start_on(s, fd, cb, end, out);
}

UVIP_EXPORT size_t uvip_moved_dropped(const uvip_moved_t *m) {
  return m ? m->dropped : 0;
}

UVIP_EXPORT int uvip_moved_close(uvip_moved_t *m) {
  UVIP_CHECK_ARG(m == NULL);
  if (m->closing)
    return UV_EALREADY;
  stop(m, UV_ECANCELED);
  return 0;
}
