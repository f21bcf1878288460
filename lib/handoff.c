/* Listeners fetched over a UNIX socket by an independent new process (like
 * HAProxy's -x). The running process serves them on the loop: for each
 * client, a few messages (header + up to UVIP__FDS_PER_MSG descriptors by
 * SCM_RIGHTS), then it waits for the client's 'R' (ready) on the same
 * connection. The fetch side is synchronous: it runs at the new process's
 * start-up, before its loop.
 *
 * One close path: uvip_handoff_close() closes the listening pipe and every
 * client pipe; the last close callback runs close_cb and frees.
 * SPDX-License-Identifier: MIT */
#include "restart-internal.h"

#include <assert.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define HANDOFF_MAGIC 0x75766c66u /* "uvlf" */

typedef struct {
  uint32_t magic;
  uint32_t total; /* descriptors in the whole hand-off */
  uint32_t count; /* descriptors in this message */
  uint32_t reserved;
} handoff_hdr_t;

typedef struct client_s {
  uv_pipe_t pipe;
  uvip_handoff_t *h;
  struct client_s *next;
  bool reported;
} client_t;

struct uvip_handoff_s {
  uv_loop_t *loop;
  uv_pipe_t listener;
  uvip_server_t **servers;
  size_t nservers;
  uvip_handoff_cb cb;
  uvip_handoff_close_cb close_cb;
  client_t *clients;
  char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
  dev_t dev; /* the socket file we made, to remove only that one */
  ino_t ino;
  bool closing;
  int handles_open;
  /* Probation: the client that said ready-and-watch ('K'), while the
   * servers are held and the timer runs. */
  uint64_t probation_ms;
  uvip_handoff_probation_cb probation_cb;
  uv_timer_t probation;
  client_t *probing;
  /* Our end of the channel for moving connections to the last new process
   * that took over keeping its connection (handoff-move.c), -1 if none. */
  int move_chan;
};

static void on_handle_closed(uv_handle_t *hd) {
  uvip_handoff_t *h = hd->data;
  if (hd != (uv_handle_t *)&h->listener &&
      hd != (uv_handle_t *)&h->probation) {
    client_t *c = (client_t *)hd, **pp = &h->clients;
    while (*pp && *pp != c)
      pp = &(*pp)->next;
    if (*pp)
      *pp = c->next;
    free(c);
  }
  if (--h->handles_open > 0 || !h->closing)
    return;
  if (h->move_chan >= 0)
    close(h->move_chan); /* not taken: the new process's receiver ends */
  if (h->close_cb)
    h->close_cb(h);
  free(h->servers);
  free(h);
}

static void client_end(client_t *c, int status) {
  uvip_handoff_t *h = c->h;
  if (!c->reported) {
    c->reported = true;
    if (!h->closing)
      h->cb(h, status);
  }
  if (!uv_is_closing((uv_handle_t *)&c->pipe))
    uv_close((uv_handle_t *)&c->pipe, on_handle_closed);
}

static void on_alloc(uv_handle_t *hd, size_t hint, uv_buf_t *b) {
  static char buf[16];
  (void)hd;
  (void)hint;
  *b = uv_buf_init(buf, sizeof(buf));
}

static void hold_all(uvip_handoff_t *h, bool hold) {
  for (size_t i = 0; i < h->nservers; i++)
    if (hold) {
      if (uvip_server_is_listening(h->servers[i]))
        uvip_server_hold(h->servers[i]);
    } else {
      uvip_server_unhold(h->servers[i]);
    }
}

/* A new process that keeps its connection gets a channel for moving
 * connections on it, before its success is reported. */
static void client_took_over(client_t *c) {
  uvip_handoff_t *h = c->h;
  int fd;
  if (!h->closing && uv_fileno((uv_handle_t *)&c->pipe, &fd) == 0) {
    if (h->move_chan >= 0)
      close(h->move_chan);
    h->move_chan = uvip__handoff_send_channel(fd);
  }
  client_end(c, 0);
}

/* Survived its probation: now the application stops accepting. */
static void on_probation_passed(uv_timer_t *t) {
  uvip_handoff_t *h = t->data;
  client_t *c = h->probing;
  h->probing = NULL;
  client_took_over(c);
}

/* Its connection closed after it said ready: it is gone (a process's
 * descriptors close when it ends, however it ends). The very sockets it
 * took accept here again. */
static void probation_failed(uvip_handoff_t *h) {
  client_t *c = h->probing;
  h->probing = NULL;
  uv_timer_stop(&h->probation);
  hold_all(h, false);
  client_end(c, UV_ESRCH);
}

static void on_client_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  client_t *c = (client_t *)s;
  uvip_handoff_t *h = c->h;
  if (n < 0) {
    if (c == h->probing)
      probation_failed(h);
    else
      /* Gone without saying ready: the fetch failed on its side. */
      client_end(c, UV_ECONNRESET);
    return;
  }
  if (n == 0 || c == h->probing)
    return; /* nothing more is expected on probation */
  if (h->probing) {
    /* Fetched before the other one went on probation, ready after: one
     * probation at a time, so it is cut, unreported (it serves on its
     * own, unwatched). */
    c->reported = true;
    client_end(c, UV_EBUSY);
    return;
  }
  if (b->base[0] == 'K' && h->probation_ms > 0) {
    /* Ready, and it keeps the connection open while it lives. */
    h->probing = c;
    hold_all(h, true);
    uv_timer_start(&h->probation, on_probation_passed, h->probation_ms, 0);
    if (h->probation_cb)
      h->probation_cb(h);
    return;
  }
  if (b->base[0] == 'K')
    client_took_over(c);
  else
    client_end(c, b->base[0] == 'R' ? 0 : UV_EPROTO);
}

/* One new process on probation at a time: another fetch meanwhile is cut
 * (its fetch fails; nothing is reported here). */
static int refuse_while_probing(client_t *c) {
  if (!c->h->probing)
    return 0;
  c->reported = true;
  return UV_EBUSY;
}

ssize_t uvip__send_fds(int sock, struct iovec *iov, size_t iovcnt,
                       const int *fds, size_t n) {
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int) * UVIP__FDS_PER_MSG)];
  } ctl;
  struct msghdr m;
  struct cmsghdr *cm;
  ssize_t r;
  assert(n > 0 && n <= UVIP__FDS_PER_MSG);
  memset(&m, 0, sizeof(m));
  memset(&ctl, 0, sizeof(ctl));
  m.msg_iov = iov;
  m.msg_iovlen = iovcnt;
  m.msg_control = ctl.buf;
  m.msg_controllen = CMSG_SPACE(sizeof(int) * n);
  cm = CMSG_FIRSTHDR(&m);
  cm->cmsg_level = SOL_SOCKET;
  cm->cmsg_type = SCM_RIGHTS;
  cm->cmsg_len = CMSG_LEN(sizeof(int) * n);
  memcpy(CMSG_DATA(cm), fds, sizeof(int) * n);
  do
    r = sendmsg(sock, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
  while (r < 0 && errno == EINTR);
  return r < 0 ? -errno : r;
}

/* Sends every listener in messages of up to UVIP__FDS_PER_MSG. A fresh
 * connection's buffer takes these small messages at once; one that does
 * not is a client to drop, not a loop to block. */
static int send_all(int fd, const int *fds, size_t nfds) {
  for (size_t off = 0; off < nfds; off += UVIP__FDS_PER_MSG) {
    size_t k = nfds - off < UVIP__FDS_PER_MSG ? nfds - off : UVIP__FDS_PER_MSG;
    handoff_hdr_t hdr = {HANDOFF_MAGIC, (uint32_t)nfds, (uint32_t)k, 0};
    struct iovec iov = {&hdr, sizeof(hdr)};
    ssize_t r = uvip__send_fds(fd, &iov, 1, fds + off, k);
    if (r != (ssize_t)sizeof(hdr))
      return r < 0 ? (int)r : UV_EPROTO;
  }
  return 0;
}

static void on_connection(uv_stream_t *l, int status) {
  uvip_handoff_t *h = UVIP_CONTAINER_OF(l, uvip_handoff_t, listener);
  client_t *c;
  int *fds = NULL, fd, r;
  size_t nfds = 0;
  if (status < 0 || h->closing)
    return;
  if (!(c = calloc(1, sizeof(*c))))
    return;
  c->h = h;
  uv_pipe_init(h->loop, &c->pipe, 0);
  c->pipe.data = h;
  c->next = h->clients;
  h->clients = c;
  h->handles_open++;
  if ((r = uv_accept(l, (uv_stream_t *)&c->pipe)) != 0 ||
      (r = refuse_while_probing(c)) != 0 ||
      (r = uv_fileno((uv_handle_t *)&c->pipe, &fd)) != 0 ||
      (r = uvip__collect_listeners(h->servers, h->nservers, &fds, &nfds)) !=
          0 ||
      (r = send_all(fd, fds, nfds)) != 0 ||
      (r = uv_read_start((uv_stream_t *)&c->pipe, on_alloc,
                         on_client_read)) != 0)
    client_end(c, r);
  free(fds);
}

UVIP_EXPORT int uvip_handoff_serve(uv_loop_t *loop,
                                   uvip_server_t *const *servers, size_t n,
                                   const char *path, uvip_handoff_cb cb,
                                   uvip_handoff_t **out) {
  uvip_handoff_t *h;
  int *fds = NULL, r;
  size_t nfds;
  mode_t old;
  UVIP_CHECK_ARG(loop == NULL || servers == NULL || n == 0 || path == NULL ||
                 cb == NULL || out == NULL);
  for (size_t i = 0; i < n; i++)
    UVIP_CHECK_ARG(servers[i] == NULL || servers[i]->loop != loop);
  if (strlen(path) >= sizeof(h->path))
    return UV_ENAMETOOLONG;
  if ((r = uvip__collect_listeners(servers, n, &fds, &nfds)) != 0) {
    free(fds);
    return r;
  }
  free(fds);
  if (!(h = calloc(1, sizeof(*h))) ||
      !(h->servers = malloc(n * sizeof(*h->servers)))) {
    free(h);
    return UV_ENOMEM;
  }
  memcpy(h->servers, servers, n * sizeof(*servers));
  h->nservers = n;
  h->loop = loop;
  h->move_chan = -1;
  h->cb = cb;
  strcpy(h->path, path);
  uv_pipe_init(loop, &h->listener, 0);
  h->listener.data = h;
  uv_timer_init(loop, &h->probation);
  h->probation.data = h;
  h->handles_open = 2;
  /* A socket file left by an earlier run is replaced; anything else at
   * that path makes bind fail. */
  {
    struct stat st;
    if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
      unlink(path);
  }
  /* Bound here rather than with uv_pipe_bind(): libuv would unlink the
   * path when the handle closes, removing the socket file of the process
   * that took over from us by then. Listening sockets are powerful: only
   * this user may connect. */
  {
    struct sockaddr_un sa;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    strcpy(sa.sun_path, path);
    old = umask(077);
    r = fd < 0 ? -errno
        : bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ? -errno
                                                            : 0;
    umask(old);
    if (r == 0 && listen(fd, 8) != 0)
      r = -errno;
    if (r == 0)
      r = uv_pipe_open(&h->listener, fd);
    if (r != 0 && fd >= 0)
      close(fd);
  }
  if (r == 0) {
    struct stat st;
    if (lstat(path, &st) == 0) {
      h->dev = st.st_dev;
      h->ino = st.st_ino;
    }
    r = uv_listen((uv_stream_t *)&h->listener, 8, on_connection);
  }
  if (r != 0) {
    h->closing = true;
    uv_close((uv_handle_t *)&h->listener, on_handle_closed);
    uv_close((uv_handle_t *)&h->probation, on_handle_closed);
    return r;
  }
  *out = h;
  return 0;
}

UVIP_EXPORT int uvip_handoff_close(uvip_handoff_t *h,
                                   uvip_handoff_close_cb cb) {
  UVIP_CHECK_ARG(h == NULL);
  if (h->closing)
    return UV_EALREADY;
  h->closing = true;
  h->close_cb = cb;
  if (h->probing) {
    /* Nobody would end the hold: accept again. */
    h->probing = NULL;
    hold_all(h, false);
  }
  uv_close((uv_handle_t *)&h->probation, on_handle_closed);
  {
    /* A newer process may have put its own socket there since. */
    struct stat st;
    if (lstat(h->path, &st) == 0 && st.st_dev == h->dev && st.st_ino == h->ino)
      unlink(h->path);
  }
  for (client_t *c = h->clients; c; c = c->next)
    if (!uv_is_closing((uv_handle_t *)&c->pipe))
      uv_close((uv_handle_t *)&c->pipe, on_handle_closed);
  uv_close((uv_handle_t *)&h->listener, on_handle_closed);
  return 0;
}

/* One message per failure, naming the socket. */
#define SAY(fmt, a)                                                            \
  do {                                                                         \
    if (errbuf && errlen)                                                      \
      snprintf(errbuf, errlen, fmt, a);                                        \
  } while (0)

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

UVIP_EXPORT int uvip_handoff_fetch(const char *path, uint64_t timeout_ms,
                                   int *fds, size_t max, size_t *n, int *conn,
                                   char *errbuf, size_t errlen) {
  struct sockaddr_un sa;
  uint64_t deadline;
  size_t got = 0, total = SIZE_MAX;
  int fd, r = 0;

  UVIP_CHECK_ARG(path == NULL || fds == NULL || n == NULL || conn == NULL ||
                 timeout_ms == 0);
  *n = 0;
  *conn = -1;
  if (strlen(path) >= sizeof(sa.sun_path))
    return UV_ENAMETOOLONG;
  memset(&sa, 0, sizeof(sa));
  sa.sun_family = AF_UNIX;
  strcpy(sa.sun_path, path);
  fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -errno;
  if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
    r = -errno;
    SAY("hand-off socket %s: nobody serves there", path);
    close(fd);
    return r;
  }
  deadline = now_ms() + timeout_ms;
  while (got < total) {
    union {
      struct cmsghdr align;
      char buf[CMSG_SPACE(sizeof(int) * UVIP__FDS_PER_MSG)];
    } ctl;
    handoff_hdr_t hdr;
    struct iovec iov = {&hdr, sizeof(hdr)};
    struct msghdr m;
    struct cmsghdr *cm;
    struct pollfd p = {fd, POLLIN, 0};
    uint64_t now = now_ms();
    size_t k = 0;
    ssize_t rd;
    if (now >= deadline || poll(&p, 1, (int)(deadline - now)) == 0) {
      r = UV_ETIMEDOUT;
      SAY("hand-off socket %s: no answer in time", path);
      break;
    }
    memset(&m, 0, sizeof(m));
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = ctl.buf;
    m.msg_controllen = sizeof(ctl.buf);
    rd = recvmsg(fd, &m, MSG_CMSG_CLOEXEC | MSG_WAITALL);
    if (rd < 0 && errno == EINTR)
      continue;
    /* Whatever descriptors came with this message are ours to close if it
     * turns out malformed. */
    for (cm = CMSG_FIRSTHDR(&m); cm; cm = CMSG_NXTHDR(&m, cm))
      if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
        size_t c = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < c; i++) {
          int x;
          memcpy(&x, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
          if (got + k < max)
            fds[got + k] = x;
          else
            close(x);
          k++;
        }
      }
    if (rd != (ssize_t)sizeof(hdr) || hdr.magic != HANDOFF_MAGIC ||
        hdr.count != k || hdr.count == 0 || hdr.count > UVIP__FDS_PER_MSG ||
        (total != SIZE_MAX && hdr.total != total) ||
        (m.msg_flags & MSG_CTRUNC)) {
      for (size_t i = 0; i < k && got + i < max; i++)
        close(fds[got + i]);
      r = rd == 0 ? UV_ECONNRESET : UV_EPROTO;
      SAY("hand-off socket %s: malformed or cut message",
          path);
      break;
    }
    total = hdr.total;
    if (got + k > max || total > max) {
      for (size_t i = 0; i < k && got + i < max; i++)
        close(fds[got + i]);
      r = UV_ENOBUFS;
      SAY("hand-off socket %s: more listeners than room",
          path);
      break;
    }
    got += k;
  }
  if (r != 0) {
    for (size_t i = 0; i < got; i++)
      close(fds[i]);
    close(fd);
    return r;
  }
  *n = got;
  *conn = fd;
  return 0;
}

UVIP_EXPORT int uvip_handoff_ready(int conn) {
  ssize_t w;
  UVIP_CHECK_ARG(conn < 0);
  do
    w = send(conn, "R", 1, MSG_NOSIGNAL);
  while (w < 0 && errno == EINTR);
  w = w == 1 ? 0 : -errno;
  close(conn);
  return (int)w;
}

UVIP_EXPORT int uvip_handoff_ready_keep(int conn) {
  ssize_t w;
  UVIP_CHECK_ARG(conn < 0);
  do
    w = send(conn, "K", 1, MSG_NOSIGNAL);
  while (w < 0 && errno == EINTR);
  return w == 1 ? 0 : -errno;
}

UVIP_EXPORT int uvip_handoff_probation(uvip_handoff_t *h,
                                       uint64_t probation_ms,
                                       uvip_handoff_probation_cb began) {
  UVIP_CHECK_ARG(h == NULL);
  if (h->closing || h->probing)
    return UV_EBUSY;
  h->probation_ms = probation_ms;
  h->probation_cb = began;
  return 0;
}

UVIP_EXPORT int uvip_handoff_mover(uvip_handoff_t *h, uvip_upgrade_t **out) {
  int r;
  UVIP_CHECK_ARG(h == NULL || out == NULL);
  if (h->closing || h->move_chan < 0)
    return UV_ENOTCONN;
  if ((r = uvip__upgrade_channel(h->loop, h->move_chan, out)) != 0)
    return r;
  h->move_chan = -1; /* the upgrade object's now */
  return 0;
}
