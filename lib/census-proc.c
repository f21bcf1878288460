/* Census: the /proc/net/tcp{,6} fallback, used when sock_diag netlink is
 * refused or not built in (or with UVIP_CENSUS_PROCFS). Single threaded;
 * the lines go through the same per-socket path as the netlink dump.
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "census-internal.h"

static int hexval(int ch) {
  if (ch >= '0' && ch <= '9')
    return ch - '0';
  if (ch >= 'A' && ch <= 'F')
    return ch - 'A' + 10;
  if (ch >= 'a' && ch <= 'f')
    return ch - 'a' + 10;
  return -1;
}

/* Parses up to max hex digits at *p into *v; returns digits read. */
static int hexnum(const char **p, const char *end, int max, uint32_t *v) {
  int n = 0, d;
  *v = 0;
  while (*p < end && n < max && (d = hexval(**p)) >= 0) {
    *v = (*v << 4) | (uint32_t)d;
    (*p)++;
    n++;
  }
  return n;
}

/* "sl: LOCAL:PORT REMOTE:PORT ST TXQ:RXQ ..." where an address is the
 * in-memory words printed with %08X. */
static void proc_line(uvip__cshard_t *s, unsigned int kstates, int fam,
                      const char *p, const char *end) {
  uint32_t a[2][4] = {{0}}, port[2], st, txq, rxq;
  int words = fam == AF_INET6 ? 4 : 1;
  while (p < end && *p != ':')
    p++;
  if (p == end || p[1] != ' ')
    return; /* the header line */
  p++;
  for (int side = 0; side < 2; side++) {
    while (p < end && *p == ' ')
      p++;
    for (int w = 0; w < words; w++)
      if (hexnum(&p, end, 8, &a[side][w]) != 8)
        return;
    if (p == end || *p++ != ':' || hexnum(&p, end, 4, &port[side]) != 4)
      return;
  }
  while (p < end && *p == ' ')
    p++;
  if (hexnum(&p, end, 2, &st) < 1 || p == end || *p++ != ' ')
    return;
  if (hexnum(&p, end, 8, &txq) < 1 || p == end || *p++ != ':' ||
      hexnum(&p, end, 8, &rxq) < 1)
    return;
  /* The words are already in memory (network) order. */
  if (st >= 32 || !(kstates & (1u << st)))
    return;
  uvip__census_count(s, fam, (int)st, a[0], (int)port[0], a[1], (int)port[1],
                     rxq, 0);
}

static int proc_file(uvip__cshard_t *s, unsigned int kstates,
                     const char *path, int fam, char *buf, size_t buflen,
                     uint64_t *reads, uint64_t *bytes) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  size_t have = 0;
  if (fd < 0)
    return errno == ENOENT ? 0 : -errno; /* no IPv6 in this kernel */
  for (;;) {
    ssize_t n = read(fd, buf + have, buflen - have);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      int e = -errno;
      close(fd);
      return e;
    }
    (*reads)++;
    *bytes += (uint64_t)n;
    have += (size_t)n;
    char *p = buf, *e = buf + have, *nl;
    while ((nl = memchr(p, '\n', (size_t)(e - p))) != NULL) {
      proc_line(s, kstates, fam, p, nl);
      p = nl + 1;
    }
    have = (size_t)(e - p);
    memmove(buf, p, have);
    if (n == 0 || have == buflen)
      break;
  }
  close(fd);
  return 0;
}

/* /proc lists listeners first too (listening hash, then established). */
int uvip__census_procfs(uvip__cshard_t *s, unsigned int kstates,
                        unsigned int flags, char *buf, size_t buflen,
                        uint64_t *reads, uint64_t *bytes) {
  int rc = 0;
  if (!(flags & UVIP_CENSUS_NO_IPV4))
    rc = proc_file(s, kstates, "/proc/net/tcp", AF_INET, buf, buflen, reads,
                   bytes);
  if (rc == 0 && !(flags & UVIP_CENSUS_NO_IPV6))
    rc = proc_file(s, kstates, "/proc/net/tcp6", AF_INET6, buf, buflen,
                   reads, bytes);
  return rc;
}
