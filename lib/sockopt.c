/* Listening sockets. The library creates them itself (instead of uv_listen)
 * so that it can set options libuv does not expose and own the accept path.
 * SPDX-License-Identifier: MIT */
#include "internal.h"

#include <errno.h>
#include <netinet/tcp.h>
#include <unistd.h>

int uvip__somaxconn(void) {
  int64_t v = 0;
  /* 4096 is the kernel's default since 5.4; used when /proc is missing. */
  if (uvip__proc_ints("/proc/sys/net/core/somaxconn", &v, 1) != 1 || v <= 0 ||
      v > INT32_MAX)
    return 4096;
  return (int)v;
}

static int set_int(int fd, int level, int name, int value) {
  if (setsockopt(fd, level, name, &value, sizeof(value)) != 0)
    return -errno;
  return 0;
}

int uvip__listen_socket(const struct sockaddr *sa,
                        const uvip_server_options_t *opts, int *fd_out) {
  int fd, r;
  int v6 = sa->sa_family == AF_INET6;

  fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -errno;

  /* Restarting a server must not wait for old connections in TIME_WAIT. */
  if ((r = set_int(fd, SOL_SOCKET, SO_REUSEADDR, 1)) != 0)
    goto fail;
  if ((opts->flags & UVIP_REUSEPORT) &&
      (r = set_int(fd, SOL_SOCKET, SO_REUSEPORT, 1)) != 0)
    goto fail;
  if (v6 && (r = set_int(fd, IPPROTO_IPV6, IPV6_V6ONLY,
                         (opts->flags & UVIP_DUALSTACK) ? 0 : 1)) != 0)
    goto fail;
  /* IP_FREEBIND applies to IPv6 sockets as well (one inet flag). */
  if ((opts->flags & UVIP_FREEBIND) &&
      (r = set_int(fd, IPPROTO_IP, IP_FREEBIND, 1)) != 0)
    goto fail;

  if (bind(fd, sa, uvip__sa_len(sa)) != 0) {
    r = -errno;
    goto fail;
  }
  if (opts->defer_accept_secs > 0 &&
      (r = set_int(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT,
                   opts->defer_accept_secs)) != 0)
    goto fail;
  if ((opts->flags & UVIP_NODELAY) &&
      (r = set_int(fd, IPPROTO_TCP, TCP_NODELAY, 1)) != 0)
    goto fail;
  if (opts->fastopen_qlen > 0 &&
      (r = set_int(fd, IPPROTO_TCP, TCP_FASTOPEN, opts->fastopen_qlen)) != 0)
    goto fail;
  if (listen(fd, opts->backlog > 0 ? opts->backlog : uvip__somaxconn()) != 0) {
    r = -errno;
    goto fail;
  }
  *fd_out = fd;
  return 0;

fail:
  close(fd);
  return r;
}
