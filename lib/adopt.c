/* Inherited listening sockets: systemd's LISTEN_FDS protocol and adoption
 * of listeners into a server (matched to VIPs by address).
 * SPDX-License-Identifier: MIT */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* sd_listen_fds(3): passed descriptors start right after stderr. */
#define LISTEN_FDS_START 3
#define LISTEN_FDS_MAX 65536

/* A whole decimal number, nothing else around it. */
static int parse_count(const char *s, unsigned long long *out) {
  char *end;
  if (s == NULL || *s < '0' || *s > '9')
    return UV_EINVAL;
  errno = 0;
  *out = strtoull(s, &end, 10);
  return errno || *end ? UV_EINVAL : 0;
}

UVIP_EXPORT int uvip_listen_fds(int unset_env, int *fds, size_t max,
                                size_t *n) {
  const char *e_fds = getenv("LISTEN_FDS"), *e_pid = getenv("LISTEN_PID");
  unsigned long long count, pid;
  size_t i;

  UVIP_CHECK_ARG(n == NULL || (fds == NULL && max > 0));
  *n = 0;
  if (e_fds == NULL)
    return 0;
  if (parse_count(e_fds, &count) != 0 || count > LISTEN_FDS_MAX ||
      parse_count(e_pid, &pid) != 0)
    return UV_EINVAL;
  /* Another process's descriptors (the variables were inherited): not
   * ours to take or close. */
  if (pid != (unsigned long long)getpid())
    return UV_ESRCH;
  for (i = 0; i < count; i++) {
    int fd = LISTEN_FDS_START + (int)i, fl = fcntl(fd, F_GETFD);
    if (fl < 0)
      return UV_EBADF;
    if (!(fl & FD_CLOEXEC) && fcntl(fd, F_SETFD, fl | FD_CLOEXEC) != 0)
      return -errno;
    if (fds && i < max)
      fds[i] = fd;
  }
  if (unset_env) {
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
  }
  *n = (size_t)count;
  return 0;
}

/* Checks that fd is a listening TCP socket; fills its address. */
static int check_listener(int fd, uvip__sa_t *sa, const char **why) {
  int type = 0, acc = 0;
  socklen_t len = sizeof(type);
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0) {
    *why = errno == ENOTSOCK ? "not a socket" : "not an open descriptor";
    return errno == ENOTSOCK ? UV_ENOTSOCK : -errno;
  }
  if (type != SOCK_STREAM) {
    *why = "not a stream (TCP) socket";
    return UV_EPROTOTYPE;
  }
  len = sizeof(*sa);
  memset(sa, 0, sizeof(*sa));
  if (getsockname(fd, &sa->sa, &len) != 0) {
    *why = "getsockname failed";
    return -errno;
  }
  if (sa->sa.sa_family != AF_INET && sa->sa.sa_family != AF_INET6) {
    *why = "not an IPv4 or IPv6 socket";
    return UV_EAFNOSUPPORT;
  }
  len = sizeof(acc);
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &len) != 0 || !acc) {
    *why = "not listening";
    return UV_EINVAL;
  }
  return 0;
}

UVIP_EXPORT int uvip_server_adopt(uvip_server_t *s, const int *fds, size_t n,
                                  size_t *extra, char *errbuf, size_t errlen) {
  size_t i, nextra = 0;
  UVIP_CHECK_ARG(s == NULL || (fds == NULL && n > 0));
  if (s->listening || s->closing)
    return UV_EALREADY;
  /* Everything is checked before anything is taken. */
  for (i = 0; i < n; i++) {
    uvip__sa_t sa;
    const char *why = "";
    int r = check_listener(fds[i], &sa, &why);
    if (r != 0) {
      if (errbuf && errlen)
        snprintf(errbuf, errlen, "inherited descriptor %d: %s", fds[i], why);
      return r;
    }
  }
  for (i = 0; i < n; i++) {
    uvip__sa_t sa;
    socklen_t len = sizeof(sa);
    uvip_vip_t *v;
    int fl;
    memset(&sa, 0, sizeof(sa));
    getsockname(fds[i], &sa.sa, &len);
    v = uvip__server_find_vip(s, &sa.sa);
    if (v == NULL || v->fd >= 0) {
      close(fds[i]);
      nextra++;
      continue;
    }
    /* The scheduler relies on accept4() never blocking. */
    fl = fcntl(fds[i], F_GETFL);
    if (fl >= 0 && !(fl & O_NONBLOCK))
      fcntl(fds[i], F_SETFL, fl | O_NONBLOCK);
    fl = fcntl(fds[i], F_GETFD);
    if (fl >= 0 && !(fl & FD_CLOEXEC))
      fcntl(fds[i], F_SETFD, fl | FD_CLOEXEC);
    v->fd = fds[i];
    v->adopted = true;
  }
  if (extra)
    *extra = nextra;
  return 0;
}

/* For uvip_server_listen() with UVIP_SOCKET_ACTIVATION. */
int uvip__adopt_activation(uvip_server_t *s, char *errbuf, size_t errlen) {
  size_t n = 0, extra = 0;
  int *fds, r = uvip_listen_fds(0, NULL, 0, &n);
  if (r != 0) {
    if (errbuf && errlen)
      snprintf(errbuf, errlen, "socket activation: %s",
               r == UV_ESRCH ? "LISTEN_PID is another process"
                             : "bad LISTEN_FDS/LISTEN_PID");
    return r;
  }
  if (n == 0)
    return 0;
  if (!(fds = calloc(n, sizeof(*fds))))
    return UV_ENOMEM;
  r = uvip_listen_fds(1, fds, n, &n);
  if (r == 0)
    r = uvip_server_adopt(s, fds, n, &extra, errbuf, errlen);
  free(fds);
  return r;
}

UVIP_EXPORT int uvip_vip_adopted(const uvip_vip_t *v) {
  UVIP_CHECK_ARG(v == NULL);
  return v->adopted ? 1 : 0;
}
