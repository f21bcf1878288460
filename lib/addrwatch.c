/* uvip_addrwatch_t: RTM_NEWADDR / RTM_DELADDR events on a libuv loop.
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <linux/rtnetlink.h>
#include <stdlib.h>
#include <string.h>

#include "rtnl.h"

/* Room for any notification: the kernel sends one address per datagram,
 * well under a page. */
#define WATCH_BUFSIZE 8192

/* A burst of address changes (provisioning thousands of VIPs) produces one
 * notification per address; a bigger receive buffer makes overruns rarer.
 * The kernel caps it at net.core.rmem_max, which is fine: overruns are
 * reported, never silent. */
#define WATCH_RCVBUF (4 << 20)

struct uvip_addrwatch_s {
  uv_loop_t *loop;
  void *data;
  struct mnl_socket *nl;
  uv_poll_t poll;
  uvip_addrwatch_cb cb;
  uvip_addrwatch_close_cb close_cb;
  bool started, closing;
  _Alignas(8) char buf[WATCH_BUFSIZE]; /* holds nlmsghdr structs */
};

static void watch_readable(uv_poll_t *h, int status, int events);

UVIP_EXPORT int uvip_addrwatch_new(uv_loop_t *loop, uvip_addrwatch_t **out) {
  UVIP_CHECK_ARG(out == NULL);
  *out = NULL;
  UVIP_CHECK_ARG(loop == NULL);
  uvip_addrwatch_t *w = calloc(1, sizeof(*w));
  if (w == NULL)
    return UV_ENOMEM;
  int r = uvip__rtnl_open(RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR, 1, &w->nl);
  if (r != 0) {
    free(w);
    return r;
  }
  int size = WATCH_RCVBUF;
  /* A SOL_SOCKET option, which mnl_socket_setsockopt (SOL_NETLINK) cannot
   * set. */
  (void)setsockopt(mnl_socket_get_fd(w->nl), SOL_SOCKET, SO_RCVBUF, &size,
                   sizeof(size));
  r = uv_poll_init(loop, &w->poll, mnl_socket_get_fd(w->nl));
  if (r != 0) {
    mnl_socket_close(w->nl);
    free(w);
    return r;
  }
  w->loop = loop;
  w->poll.data = w;
  *out = w;
  return 0;
}

UVIP_EXPORT int uvip_addrwatch_start(uvip_addrwatch_t *w,
                                     uvip_addrwatch_cb cb) {
  UVIP_CHECK_ARG(w == NULL || cb == NULL || w->closing);
  if (w->started)
    return UV_EALREADY;
  int r = uv_poll_start(&w->poll, UV_READABLE, watch_readable);
  if (r != 0)
    return r;
  w->cb = cb;
  w->started = true;
  return 0;
}

UVIP_EXPORT int uvip_addrwatch_stop(uvip_addrwatch_t *w) {
  UVIP_CHECK_ARG(w == NULL);
  if (w->started && !w->closing)
    uv_poll_stop(&w->poll);
  w->started = false;
  return 0;
}

static void watch_closed(uv_handle_t *h) {
  uvip_addrwatch_t *w = h->data;
  /* The descriptor outlives the poll handle: libuv must stop watching it
   * before it is closed. */
  mnl_socket_close(w->nl);
  if (w->close_cb)
    w->close_cb(w);
  free(w);
}

UVIP_EXPORT int uvip_addrwatch_close(uvip_addrwatch_t *w,
                                     uvip_addrwatch_close_cb cb) {
  UVIP_CHECK_ARG(w == NULL);
  if (w->closing)
    return UV_EALREADY;
  uvip_addrwatch_stop(w);
  w->closing = true;
  w->close_cb = cb;
  uv_close((uv_handle_t *)&w->poll, watch_closed);
  return 0;
}

UVIP_EXPORT void *uvip_addrwatch_get_data(const uvip_addrwatch_t *w) {
  return w ? w->data : NULL;
}

UVIP_EXPORT void uvip_addrwatch_set_data(uvip_addrwatch_t *w, void *data) {
  if (w)
    w->data = data;
}

static void watch_readable(uv_poll_t *h, int status, int events) {
  uvip_addrwatch_t *w = h->data;
  (void)events;
  if (status < 0) {
    /* POLLERR: the kernel dropped notifications while we were not reading
     * (ENOBUFS in sk_err). libuv has stopped the handle; left like that
     * the watcher would never report anything again. Reading SO_ERROR
     * clears the error (or the next poll would fail the same way), the
     * application is told to re-read its state, and watching resumes
     * unless the callback stopped or closed the watcher. */
    int err = 0;
    socklen_t len = sizeof(err);
    (void)getsockopt(mnl_socket_get_fd(w->nl), SOL_SOCKET, SO_ERROR, &err,
                     &len);
    w->cb(w, UVIP_ADDR_OVERRUN, NULL, 0, 0, 0);
    if (!w->started || w->closing)
      return;
    /* Fails only without memory for the epoll entry: the watcher is then
     * stopped, as uvip_addrwatch_start() may be called again. */
    if (uv_poll_start(&w->poll, UV_READABLE, watch_readable) != 0) {
      w->started = false;
      return;
    }
  }
  /* Bounded, so that a storm of address changes cannot starve the rest of
   * the loop; level-triggered polling brings us back for the remainder. */
  for (int budget = 0; budget < 256 && w->started && !w->closing; budget++) {
    struct sockaddr_nl from;
    socklen_t fromlen = sizeof(from);
    ssize_t n = recvfrom(mnl_socket_get_fd(w->nl), w->buf, sizeof(w->buf),
                         MSG_DONTWAIT, (struct sockaddr *)&from, &fromlen);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      if (errno == ENOBUFS) {
        /* The kernel dropped notifications; the socket stays usable. */
        w->cb(w, UVIP_ADDR_OVERRUN, NULL, 0, 0, 0);
        continue;
      }
      return; /* EAGAIN: drained */
    }
    /* Only the kernel's messages: an unprivileged process can send to a
     * netlink socket but cannot take the kernel's port id 0. */
    if (fromlen != sizeof(from) || from.nl_pid != 0)
      continue;
    int left = (int)n;
    for (const struct nlmsghdr *nlh = (const struct nlmsghdr *)w->buf;
         mnl_nlmsg_ok(nlh, left) && w->started && !w->closing;
         nlh = mnl_nlmsg_next(nlh, &left)) {
      uvip__ifaddr_t a;
      if (uvip__rtnl_parse_addr(nlh, &a) != 0)
        continue;
      w->cb(w, nlh->nlmsg_type == RTM_NEWADDR ? UVIP_ADDR_NEW : UVIP_ADDR_DEL,
            &a.addr.sa, a.ifindex, a.prefixlen, a.flags);
    }
  }
}
