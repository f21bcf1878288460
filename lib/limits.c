/* Kernel limits, counters and feature probes that bound how many
 * connections one machine (and one namespace) can hold.
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "census-internal.h"

static int64_t read_one(const char *path, unsigned int bit, unsigned int *missing) {
  int64_t v;
  if (uvip__proc_ints(path, &v, 1) != 1) {
    *missing |= bit;
    return -1;
  }
  return v;
}

/* Ports of "a-b,c,..." that fall in [lo, hi]. */
static int reserved_in(const char *list, int lo, int hi) {
  const char *p = list;
  char *end;
  int n = 0;
  while (*p) {
    long a = strtol(p, &end, 10), b;
    if (end == p)
      break;
    p = end;
    b = a;
    if (*p == '-') {
      b = strtol(p + 1, &end, 10);
      p = end;
    }
    if (a < lo)
      a = lo;
    if (b > hi)
      b = hi;
    if (b >= a)
      n += (int)(b - a + 1);
    while (*p == ',' || *p == ' ' || *p == '\n')
      p++;
  }
  return n;
}

int uvip__port_range(int *lo, int *hi, int *reserved) {
  int64_t r[2];
  char buf[4096];
  if (uvip__proc_ints("/proc/sys/net/ipv4/ip_local_port_range", r, 2) != 2)
    return UV_ENOENT;
  *lo = (int)r[0];
  *hi = (int)r[1];
  *reserved = 0;
  if (uvip__proc_read("/proc/sys/net/ipv4/ip_local_reserved_ports", buf,
                 sizeof(buf)) == 0)
    *reserved = reserved_in(buf, *lo, *hi);
  return 0;
}

/* TcpExt comes as a line of names then a line of values. */
int uvip__read_netstat(uvip_netstat_t *out) {
  static const struct {
    const char *name;
    size_t off;
  } want[] = {
      {"ListenOverflows", offsetof(uvip_netstat_t, listen_overflows)},
      {"ListenDrops", offsetof(uvip_netstat_t, listen_drops)},
      {"TCPTimeWaitOverflow", offsetof(uvip_netstat_t, tw_overflow)},
      {"TWRecycled", offsetof(uvip_netstat_t, tw_recycled)},
      {"TW", offsetof(uvip_netstat_t, tw)},
      {"TWKilled", offsetof(uvip_netstat_t, tw_killed)},
      {"SyncookiesSent", offsetof(uvip_netstat_t, syncookies_sent)},
  };
  char buf[16384];
  int rc = uvip__proc_read("/proc/net/netstat", buf, sizeof(buf));
  memset(out, 0, sizeof(*out));
  if (rc != 0)
    return rc;
  char *names = strstr(buf, "TcpExt:");
  char *vals = names ? strstr(names + 7, "TcpExt:") : NULL;
  if (!vals)
    return UV_EINVAL;
  char *nend = strchr(names, '\n');
  char *ns = NULL, *vs = NULL;
  if (nend)
    *nend = 0;
  char *vend = strchr(vals, '\n');
  if (vend)
    *vend = 0;
  char *n = strtok_r(names + 7, " ", &ns);
  char *v = strtok_r(vals + 7, " ", &vs);
  int found = 0;
  while (n && v) {
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
      if (strcmp(n, want[i].name) == 0) {
        *(uint64_t *)((char *)out + want[i].off) = strtoull(v, NULL, 10);
        found++;
      }
    }
    n = strtok_r(NULL, " ", &ns);
    v = strtok_r(NULL, " ", &vs);
  }
  return found ? 0 : UV_EINVAL;
}

static uint64_t sub0(uint64_t a, uint64_t b) { return a >= b ? a - b : 0; }

void uvip__netstat_delta(const uvip_netstat_t *prev, const uvip_netstat_t *cur,
                         uvip_netstat_t *out) {
  out->listen_overflows = sub0(cur->listen_overflows, prev->listen_overflows);
  out->listen_drops = sub0(cur->listen_drops, prev->listen_drops);
  out->tw_overflow = sub0(cur->tw_overflow, prev->tw_overflow);
  out->tw_recycled = sub0(cur->tw_recycled, prev->tw_recycled);
  out->tw = sub0(cur->tw, prev->tw);
  out->tw_killed = sub0(cur->tw_killed, prev->tw_killed);
  out->syncookies_sent = sub0(cur->syncookies_sent, prev->syncookies_sent);
}

static void read_sockstat(uvip_limits_t *l) {
  char buf[1024];
  long long inuse, orphan, tw, alloc, mem;
  l->sock_inuse = l->sock_orphan = l->sock_tw = l->sock_alloc =
      l->sock_mem_pages = -1;
  char *p = uvip__proc_read("/proc/net/sockstat", buf, sizeof(buf)) == 0
                ? strstr(buf, "TCP: ")
                : NULL;
  if (p && sscanf(p, "TCP: inuse %lld orphan %lld tw %lld alloc %lld mem %lld",
                  &inuse, &orphan, &tw, &alloc, &mem) == 5) {
    l->sock_inuse = inuse;
    l->sock_orphan = orphan;
    l->sock_tw = tw;
    l->sock_alloc = alloc;
    l->sock_mem_pages = mem;
  } else {
    l->missing |= UVIP_LIMIT_SOCKSTAT;
  }
}

static int64_t count_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  struct dirent *e;
  int64_t n = 0;
  if (!d)
    return -1;
  while ((e = readdir(d)) != NULL)
    if (e->d_name[0] != '.')
      n++;
  closedir(d);
  return n - 1; /* the directory's own descriptor */
}

static int64_t mem_total(void) {
  char buf[4096];
  long long kb;
  char *p = uvip__proc_read("/proc/meminfo", buf, sizeof(buf)) == 0
                ? strstr(buf, "MemTotal:")
                : NULL;
  if (p && sscanf(p, "MemTotal: %lld kB", &kb) == 1)
    return kb * 1024;
  return -1;
}

/* Probes a socket option by setting it on a throwaway socket: the running
 * kernel, not the headers, decides. */
static int probe_sockopt(int level, int name, const void *val, socklen_t len) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), ok;
  if (fd < 0)
    return 0;
  ok = setsockopt(fd, level, name, val, len) == 0;
  close(fd);
  return ok;
}

UVIP_EXPORT int uvip_limits_read(uvip_limits_t *l) {
  struct rlimit rl;
  int64_t v[3];
  int lo, hi, res;
  char buf[256];

  UVIP_CHECK_ARG(l == NULL);
  memset(l, 0, sizeof(*l));
  if (uvip__port_range(&lo, &hi, &res) == 0) {
    l->port_lo = lo;
    l->port_hi = hi;
    l->reserved_in_range = res;
    l->usable_ports = hi - lo + 1 - res;
  } else {
    l->port_lo = l->port_hi = l->reserved_in_range = l->usable_ports = -1;
    l->missing |= UVIP_LIMIT_PORT_RANGE;
  }
  if (uvip__proc_read("/proc/sys/net/ipv4/ip_local_reserved_ports", buf,
                 sizeof(buf)) != 0)
    l->missing |= UVIP_LIMIT_RESERVED_PORTS;
  l->somaxconn = (int)read_one("/proc/sys/net/core/somaxconn",
                               UVIP_LIMIT_SOMAXCONN, &l->missing);
  l->tcp_max_syn_backlog = (int)read_one(
      "/proc/sys/net/ipv4/tcp_max_syn_backlog", UVIP_LIMIT_SYN_BACKLOG,
      &l->missing);
  l->tcp_max_tw_buckets = read_one("/proc/sys/net/ipv4/tcp_max_tw_buckets",
                                   UVIP_LIMIT_TW_BUCKETS, &l->missing);
  l->tcp_tw_reuse = (int)read_one("/proc/sys/net/ipv4/tcp_tw_reuse",
                                  UVIP_LIMIT_TW_REUSE, &l->missing);
  l->tcp_fin_timeout = (int)read_one("/proc/sys/net/ipv4/tcp_fin_timeout",
                                     UVIP_LIMIT_FIN_TIMEOUT, &l->missing);
  if (uvip__proc_ints("/proc/sys/net/ipv4/tcp_mem", v, 3) == 3) {
    memcpy(l->tcp_mem, v, sizeof(v));
  } else {
    l->tcp_mem[0] = l->tcp_mem[1] = l->tcp_mem[2] = -1;
    l->missing |= UVIP_LIMIT_TCP_MEM;
  }
  l->page_size = sysconf(_SC_PAGESIZE);
  l->file_max = read_one("/proc/sys/fs/file-max", UVIP_LIMIT_FILE_MAX,
                         &l->missing);
  l->file_nr = uvip__proc_ints("/proc/sys/fs/file-nr", v, 1) == 1 ? v[0] : -1;
  l->nr_open = read_one("/proc/sys/fs/nr_open", UVIP_LIMIT_NR_OPEN,
                        &l->missing);
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    l->nofile_soft = rl.rlim_cur == RLIM_INFINITY ? INT64_MAX : (int64_t)rl.rlim_cur;
    l->nofile_hard = rl.rlim_max == RLIM_INFINITY ? INT64_MAX : (int64_t)rl.rlim_max;
  } else {
    l->nofile_soft = l->nofile_hard = -1;
  }
  l->open_fds = count_fds();
  l->mem_total = mem_total();
  read_sockstat(l);
  if (uvip__read_netstat(&l->netstat) != 0)
    l->missing |= UVIP_LIMIT_NETSTAT;

  int one = 1;
  l->has_bind_address_no_port =
      probe_sockopt(IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
  /* 0 means "no per-socket range": accepted by kernels that know it. */
  uint32_t range = 0;
  l->has_local_port_range =
      probe_sockopt(IPPROTO_IP, IP_LOCAL_PORT_RANGE, &range, sizeof(range));
  l->has_tcp_migrate_req =
      access("/proc/sys/net/ipv4/tcp_migrate_req", F_OK) == 0;
  l->tcp_migrate_req = (int)read_one("/proc/sys/net/ipv4/tcp_migrate_req",
                                     UVIP_LIMIT_MIGRATE_REQ, &l->missing);
  return 0;
}
