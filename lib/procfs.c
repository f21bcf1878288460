/* Small /proc readers shared by the listener, connector and census code.
 * SPDX-License-Identifier: MIT */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

int uvip__proc_read(const char *path, char *buf, size_t len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  size_t have = 0;
  ssize_t n;
  if (len == 0)
    return UV_EINVAL;
  if (fd < 0) {
    buf[0] = 0;
    return -errno;
  }
  while (have + 1 < len) {
    n = read(fd, buf + have, len - 1 - have);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    have += (size_t)n;
  }
  close(fd);
  buf[have] = 0;
  return 0;
}

int uvip__proc_ints(const char *path, int64_t *v, int max) {
  char buf[256], *p = buf, *end;
  int n = 0;
  if (uvip__proc_read(path, buf, sizeof(buf)) != 0)
    return 0;
  while (n < max) {
    long long x = strtoll(p, &end, 10);
    if (end == p)
      break;
    v[n++] = x;
    p = end;
  }
  return n;
}
