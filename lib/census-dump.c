/* The census's dumps: sock_diag netlink, one dump per family and shard
 * (shards on their own threads), and the /proc/net/tcp fallback. Sockets
 * are counted into a shard's tables as the messages stream in.
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <libmnl/libmnl.h>
#include <linux/inet_diag.h>
#include <linux/sock_diag.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "census-state.h"

/* ------------------------------------------------------------------------ */
/* Netlink                                                                  */

static int on_diag_msg(const struct nlmsghdr *nlh, void *data) {
  uvip__cshard_t *s = data;
  const struct inet_diag_msg *m = mnl_nlmsg_get_payload(nlh);
  if (nlh->nlmsg_type != SOCK_DIAG_BY_FAMILY ||
      nlh->nlmsg_len < NLMSG_LENGTH(sizeof(*m)))
    return MNL_CB_OK;
  uvip__census_count(s, m->idiag_family, m->idiag_state, m->id.idiag_src,
               ntohs(m->id.idiag_sport), m->id.idiag_dst,
               ntohs(m->id.idiag_dport), m->idiag_rqueue, m->idiag_wqueue);
  return MNL_CB_OK;
}

/* The bytecode of shard `shard` of nshards (1: no split) for fam. */
static size_t make_bytecode(uvip__cshard_t *s, int fam, int nshards,
                            int *with_addrs) {
  const uvip_census_t *c = s->c;
  uvip__bc_spec_t sp = {
      .fam = fam,
      .filter = c->filter,
      .nfilter = c->nfilter,
      .nshards = nshards,
      .shard = s->index,
      .port_lo = c->split_lo,
      .port_hi = c->split_hi,
  };
  return uvip__census_bytecode(&sp, s->bc, with_addrs);
}

/* One dump of family fam, kernel states `states`, into shard s, selecting
 * the shard's part of the sockets when nshards > 1. */
static int dump_family(uvip__cshard_t *s, int fam, unsigned int states,
                       int nshards, unsigned int seq) {
  const uvip_census_t *c = s->c;
  /* Large enough for any bytecode (UVIP__BC_CAP) and the request. */
  union {
    char b[UVIP__BC_CAP + 256];
    struct nlmsghdr align;
  } req;
  struct nlmsghdr *nlh;
  struct inet_diag_req_v2 *r;
  size_t bclen;
  ssize_t n;
  int rc;

  if (c->nfilter && fam == AF_INET && c->nfilter4 == 0)
    return 0; /* no IPv4 VIP: AF_INET sockets cannot match */
  if (states == 0)
    return 0;
  bclen = make_bytecode(s, fam, nshards, NULL);
  nlh = mnl_nlmsg_put_header(req.b);
  nlh->nlmsg_type = SOCK_DIAG_BY_FAMILY;
  nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  nlh->nlmsg_seq = seq;
  r = mnl_nlmsg_put_extra_header(nlh, sizeof(*r));
  r->sdiag_family = (uint8_t)fam;
  r->sdiag_protocol = IPPROTO_TCP;
  r->idiag_states = states;
  if (bclen)
    mnl_attr_put(nlh, INET_DIAG_REQ_BYTECODE, bclen, s->bc);
  if (mnl_socket_sendto(s->nl, nlh, nlh->nlmsg_len) < 0)
    return -errno;
  unsigned int portid = mnl_socket_get_portid(s->nl);
  for (;;) {
    n = mnl_socket_recvfrom(s->nl, s->buf, s->buflen);
    if (n < 0)
      return errno == ENOBUFS ? UV_ENOBUFS : -errno;
    s->reads++;
    s->bytes += (uint64_t)n;
    rc = mnl_cb_run(s->buf, (size_t)n, seq, portid, on_diag_msg, s);
    if (rc == MNL_CB_STOP)
      return 0;
    if (rc < 0)
      return errno ? -errno : UV_EIO;
  }
}

/* Reads "KEY N" after prefix from a /proc/net/sockstat* file; -1 if absent. */
static long long sockstat_field(const char *path, const char *prefix,
                                const char *key) {
  char buf[1024], *p;
  long long v = -1;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;
  if (fd >= 0)
    close(fd);
  if (n <= 0)
    return -1;
  buf[n] = 0;
  if ((p = strstr(buf, prefix)) != NULL && (p = strstr(p, key)) != NULL)
    v = strtoll(p + strlen(key), NULL, 10);
  return v;
}

/* Every family's dump walks the whole established hash, touching each
 * socket of the other family just to skip it: at a million IPv4 sockets
 * an empty IPv6 dump costs a large part of the census. It is skipped when
 * the namespace provably has no IPv6 socket: no TCP6 socket in use
 * (listeners, connections and IPv4-mapped ones all count there) and no
 * TIME_WAIT beyond those the IPv4 dump (all its shards) just returned,
 * which must not have been filtered by address. */
static int ipv6_empty(uvip_census_t *c, int nshards) {
  int addrs = 0;
  uint64_t tw_seen = 0;
  make_bytecode(&c->shards[0], AF_INET, 1, &addrs);
  if (addrs || (c->nfilter && c->nfilter4 == 0) ||
      !(c->kstates & (1u << (UVIP_TCP_TIME_WAIT + 1))) ||
      (c->opts.flags & UVIP_CENSUS_NO_IPV4))
    return 0;
  if (sockstat_field("/proc/net/sockstat6", "TCP6:", "inuse ") != 0)
    return 0;
  for (int i = 0; i < nshards; i++)
    tw_seen += c->shards[i].tw_seen;
  long long tw = sockstat_field("/proc/net/sockstat", "TCP:", " tw ");
  return tw >= 0 && (uint64_t)tw <= tw_seen;
}

/* How many shards an automatic census uses for this sample: 2 when a CPU
 * is idle right now, else 1. Measured, not assumed (docs/benchmarks.md,
 * "Census vs ss (issue 13)"): when both CPUs are free, 2 shards finish in
 * about two thirds of one dump's time; when the other CPU is busy (another
 * process, a CPU hog, a build) the second shard waits for it and 2 shards
 * take as long as one or longer, for 1.3-1.4x the CPU time. The
 * system's runnable tasks (the 4th field of /proc/loadavg, this thread
 * included) against the CPUs the census may use tell which case this is;
 * one read of a small file, about as cheap as a syscall. Unreadable: 1. */
static int shards_for_sample(const uvip_census_t *c) {
  char buf[128], *p = buf;
  long running;
  ssize_t n;
  int fd;
  if (!c->auto_shards || c->nshards < 2)
    return c->nshards;
  fd = open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
  n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;
  if (fd >= 0)
    close(fd);
  if (n <= 0)
    return 1;
  buf[n] = 0;
  for (int f = 0; f < 3 && p; f++) /* "0.52 0.58 0.59 RUNNING/TOTAL ..." */
    if ((p = strchr(p, ' ')) != NULL)
      p++;
  running = p ? strtol(p, NULL, 10) : 0;
  return running >= 1 && running < c->cpus ? 2 : 1;
}

static void *shard_thread(void *arg) {
  uvip__cshard_t *s = arg;
  s->rc = dump_family(s, s->fam, s->states, s->c->info.shards, s->seq);
  return NULL;
}

/* Dumps fam in every shard at once: shards 1.. on threads of their own
 * (every signal blocked: the process's handlers run elsewhere), shard 0 on
 * the calling thread. A thread that cannot be created is done here. */
static int dump_parallel(uvip_census_t *c, int nshards, int fam,
                         unsigned int states, unsigned int seq) {
  pthread_t tid[UVIP_CENSUS_SHARDS_MAX];
  int started[UVIP_CENSUS_SHARDS_MAX] = {0};
  sigset_t all, old;
  int rc = 0;

  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  for (int i = 0; i < nshards; i++) {
    uvip__cshard_t *s = &c->shards[i];
    s->fam = fam;
    s->states = states;
    s->seq = seq;
    s->rc = 0;
    if (i > 0)
      started[i] = pthread_create(&tid[i], NULL, shard_thread, s) == 0;
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  shard_thread(&c->shards[0]);
  for (int i = 1; i < nshards; i++) {
    if (started[i])
      pthread_join(tid[i], NULL);
    else
      shard_thread(&c->shards[i]);
  }
  for (int i = 0; i < nshards && rc == 0; i++)
    rc = c->shards[i].rc;
  return rc;
}

/* One shard: both families in one dump each, listeners first (the kernel
 * walks the listening hash before the established one), as ss does. Split:
 * per family, the listeners alone (shard 0: every shard needs them to tell
 * inbound from outbound), then the rest in parallel. */
int uvip__census_sample_netlink(uvip_census_t *c) {
  int n = 0, rc = 0, want = shards_for_sample(c);
  unsigned int rest = c->kstates & ~KSTATE_LISTEN_BIT;

  for (; n < want; n++) {
    struct mnl_socket *nl = mnl_socket_open2(NETLINK_SOCK_DIAG, SOCK_CLOEXEC);
    int err = nl ? 0 : errno;
    if (nl && mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0) {
      err = errno;
      mnl_socket_close(nl);
      nl = NULL;
    }
    if (!nl) {
      if (n == 0)
        rc = -err;
      break; /* fewer shards this time, if not none */
    }
    c->shards[n].nl = nl;
  }
  c->info.source = UVIP_CENSUS_SRC_NETLINK;
  c->info.shards = n;
  for (int fam = 0; rc == 0 && fam < 2; fam++) {
    int af = fam ? AF_INET6 : AF_INET;
    if (c->opts.flags & (fam ? UVIP_CENSUS_NO_IPV6 : UVIP_CENSUS_NO_IPV4))
      continue;
    if (af == AF_INET6 && ipv6_empty(c, n))
      continue;
    if (n == 1) {
      rc = dump_family(&c->shards[0], af, c->kstates, 1, 1 + fam);
    } else {
      rc = dump_family(&c->shards[0], af, KSTATE_LISTEN_BIT, 1, 1 + fam);
      if (rc == 0)
        rc = dump_parallel(c, n, af, rest, 3 + fam);
    }
  }
  for (int i = 0; i < n; i++) {
    mnl_socket_close(c->shards[i].nl);
    c->shards[i].nl = NULL;
  }
  return rc;
}

/* /proc/net/tcp fallback (census-proc.c): single threaded, shard 0. */
int uvip__census_sample_procfs(uvip_census_t *c) {
  uvip__cshard_t *s = &c->shards[0];
  c->info.source = UVIP_CENSUS_SRC_PROCFS;
  c->info.shards = 1;
  return uvip__census_procfs(s, c->kstates, c->opts.flags, s->buf,
                             s->buflen, &s->reads, &s->bytes);
}

