/* The network layer's edges: listening-socket options (lib/sockopt.c),
 * rtnetlink (lib/rtnl.c), provisioning (lib/provision.c) and address events
 * (lib/addrwatch.c). Each test runs in a network namespace of its own
 * (check forks every test) and is cross-checked with the kernel (`ip -j`,
 * getsockopt on the listeners).
 *
 * Where the kernel almost never fails, the library's own calls go through
 * the wrappers below (-Wl,--wrap=..., see tests/meson.build; the static
 * archive's references only, libuv is not affected): setsockopt, listen,
 * recvfrom and the libmnl calls. Every wrapper passes through unless a test
 * arms it.
 * SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <errno.h>
#include <libmnl/libmnl.h>
#include <linux/if_addr.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "helpers.h"
#include "rtnl.h"

/* ------------------------------------------------------------------------ */
/* Wrappers                                                                 */
/* ------------------------------------------------------------------------ */

int __real_setsockopt(int fd, int level, int name, const void *v,
                      socklen_t len);
int __wrap_setsockopt(int fd, int level, int name, const void *v,
                      socklen_t len);
int __real_listen(int fd, int backlog);
int __wrap_listen(int fd, int backlog);
ssize_t __real_recvfrom(int fd, void *buf, size_t len, int flags,
                        struct sockaddr *from, socklen_t *fromlen);
ssize_t __wrap_recvfrom(int fd, void *buf, size_t len, int flags,
                        struct sockaddr *from, socklen_t *fromlen);
struct mnl_socket *__real_mnl_socket_open2(int bus, int flags);
struct mnl_socket *__wrap_mnl_socket_open2(int bus, int flags);
int __real_mnl_socket_bind(struct mnl_socket *nl, unsigned int groups,
                           pid_t pid);
int __wrap_mnl_socket_bind(struct mnl_socket *nl, unsigned int groups,
                           pid_t pid);
int __real_mnl_socket_setsockopt(const struct mnl_socket *nl, int type,
                                 void *buf, socklen_t len);
int __wrap_mnl_socket_setsockopt(const struct mnl_socket *nl, int type,
                                 void *buf, socklen_t len);
ssize_t __real_mnl_socket_sendto(const struct mnl_socket *nl, const void *buf,
                                 size_t len);
ssize_t __wrap_mnl_socket_sendto(const struct mnl_socket *nl, const void *buf,
                                 size_t len);
ssize_t __real_mnl_socket_recvfrom(const struct mnl_socket *nl, void *buf,
                                   size_t size);
ssize_t __wrap_mnl_socket_recvfrom(const struct mnl_socket *nl, void *buf,
                                   size_t size);
int __real_uvip__rtnl_dump(struct mnl_socket *nl, uvip__rtnl_addr_cb cb,
                           void *arg);
int __wrap_uvip__rtnl_dump(struct mnl_socket *nl, uvip__rtnl_addr_cb cb,
                           void *arg);

int __real_uv_poll_init(uv_loop_t *loop, uv_poll_t *h, int fd);
int __wrap_uv_poll_init(uv_loop_t *loop, uv_poll_t *h, int fd);
int __real_uv_poll_start(uv_poll_t *h, int events, uv_poll_cb cb);
int __wrap_uv_poll_start(uv_poll_t *h, int events, uv_poll_cb cb);

/* libuv refusing the watcher's poll handle: fail the next call. */
static int poll_init_err, poll_start_err;

int __wrap_uv_poll_init(uv_loop_t *loop, uv_poll_t *h, int fd) {
  if (poll_init_err != 0) {
    int r = poll_init_err;
    poll_init_err = 0;
    return r;
  }
  return __real_uv_poll_init(loop, h, fd);
}

int __wrap_uv_poll_start(uv_poll_t *h, int events, uv_poll_cb cb) {
  if (poll_start_err != 0) {
    int r = poll_start_err;
    poll_start_err = 0;
    return r;
  }
  return __real_uv_poll_start(h, events, cb);
}

/* setsockopt(level, name) fails `count` times with `err`. */
static struct {
  int level, name, count, err, injected;
} so_fail;

int __wrap_setsockopt(int fd, int level, int name, const void *v,
                      socklen_t len) {
  if (so_fail.count > 0 && level == so_fail.level && name == so_fail.name) {
    so_fail.count--;
    so_fail.injected++;
    errno = so_fail.err;
    return -1;
  }
  return __real_setsockopt(fd, level, name, v, len);
}

static int listen_fail_err;
int __wrap_listen(int fd, int backlog) {
  if (listen_fail_err != 0) {
    errno = listen_fail_err;
    listen_fail_err = 0;
    return -1;
  }
  return __real_listen(fd, backlog);
}

/* The address watcher's reads: EINTR once, or a message of the test's
 * making delivered as if from the kernel. */
static int recvfrom_eintr, recvfrom_enobufs;
static const void *recvfrom_fake;
static size_t recvfrom_fake_len;
static int recvfrom_calls;

ssize_t __wrap_recvfrom(int fd, void *buf, size_t len, int flags,
                        struct sockaddr *from, socklen_t *fromlen) {
  recvfrom_calls++;
  if (recvfrom_eintr > 0) {
    recvfrom_eintr--;
    errno = EINTR;
    return -1;
  }
  if (recvfrom_enobufs > 0) {
    recvfrom_enobufs--;
    errno = ENOBUFS;
    return -1;
  }
  if (recvfrom_fake != NULL) {
    ck_assert_uint_le(recvfrom_fake_len, len);
    memcpy(buf, recvfrom_fake, recvfrom_fake_len);
    recvfrom_fake = NULL;
    struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
    memcpy(from, &kernel, sizeof(kernel));
    *fromlen = sizeof(kernel);
    return (ssize_t)recvfrom_fake_len;
  }
  return __real_recvfrom(fd, buf, len, flags, from, fromlen);
}

static int open_fail_err, bind_fail_err, sendto_fail_err;
static int ext_ack_off, cap_ack_off;

struct mnl_socket *__wrap_mnl_socket_open2(int bus, int flags) {
  if (open_fail_err != 0) {
    errno = open_fail_err;
    open_fail_err = 0;
    return NULL;
  }
  return __real_mnl_socket_open2(bus, flags);
}

int __wrap_mnl_socket_bind(struct mnl_socket *nl, unsigned int groups,
                           pid_t pid) {
  if (bind_fail_err != 0) {
    errno = bind_fail_err;
    bind_fail_err = 0;
    return -1;
  }
  return __real_mnl_socket_bind(nl, groups, pid);
}

/* As on a kernel without extended acks (or without capped acks). */
int __wrap_mnl_socket_setsockopt(const struct mnl_socket *nl, int type,
                                 void *buf, socklen_t len) {
  if ((type == NETLINK_EXT_ACK && ext_ack_off) ||
      (type == NETLINK_CAP_ACK && cap_ack_off)) {
    errno = ENOPROTOOPT;
    return -1;
  }
  return __real_mnl_socket_setsockopt(nl, type, buf, len);
}

ssize_t __wrap_mnl_socket_sendto(const struct mnl_socket *nl, const void *buf,
                                 size_t len) {
  if (sendto_fail_err != 0) {
    errno = sendto_fail_err;
    sendto_fail_err = 0;
    return -1;
  }
  return __real_mnl_socket_sendto(nl, buf, len);
}

/* Netlink reads of rtnl.c (dumps and acks). */
static struct {
  int eintr;        /* fail this many calls with EINTR */
  int err;          /* then fail one with this errno */
  int dump_intr;    /* mark this many dumps as interrupted */
  int dumps;        /* NLMSG_DONE seen */
  bool dump_error;  /* turn the next dump answer into an NLMSG_ERROR */
  bool stale_ack;   /* put a failed ack of another request before the next */
  bool short_ack;   /* truncate an ack... */
  int short_ack_skip; /* ...after letting this many through */
} rd;

static void mark_dump(struct nlmsghdr *nlh, int len) {
  for (; mnl_nlmsg_ok(nlh, len); nlh = mnl_nlmsg_next(nlh, &len)) {
    /* As the kernel does: every message from the change on, NLMSG_DONE
     * included. */
    if (rd.dump_intr > 0)
      nlh->nlmsg_flags |= NLM_F_DUMP_INTR;
    if (nlh->nlmsg_type == NLMSG_DONE) {
      rd.dumps++;
      if (rd.dump_intr > 0)
        rd.dump_intr--;
    }
  }
}

ssize_t __wrap_mnl_socket_recvfrom(const struct mnl_socket *nl, void *buf,
                                   size_t size) {
  if (rd.eintr > 0) {
    rd.eintr--;
    errno = EINTR;
    return -1;
  }
  if (rd.err != 0) {
    errno = rd.err;
    rd.err = 0;
    return -1;
  }
  ssize_t n = __real_mnl_socket_recvfrom(nl, buf, size);
  if (n <= 0)
    return n;
  struct nlmsghdr *nlh = buf;
  if (rd.dump_error && nlh->nlmsg_type == RTM_NEWADDR) {
    /* The kernel refuses the dump: one error message for its seq. */
    rd.dump_error = false;
    struct nlmsgerr *e = (struct nlmsgerr *)(nlh + 1);
    unsigned int seq = nlh->nlmsg_seq, pid = nlh->nlmsg_pid;
    memset(buf, 0, NLMSG_SPACE(sizeof(*e)));
    nlh->nlmsg_len = NLMSG_LENGTH(sizeof(*e));
    nlh->nlmsg_type = NLMSG_ERROR;
    nlh->nlmsg_flags = NLM_F_CAPPED;
    nlh->nlmsg_seq = seq;
    nlh->nlmsg_pid = pid;
    e->error = -EPERM;
    return (ssize_t)nlh->nlmsg_len;
  }
  if (nlh->nlmsg_type == NLMSG_ERROR && rd.short_ack &&
      rd.short_ack_skip-- <= 0) {
    rd.short_ack = false;
    nlh->nlmsg_len = NLMSG_HDRLEN;
    return NLMSG_HDRLEN;
  }
  if (nlh->nlmsg_type == NLMSG_ERROR && rd.stale_ack) {
    /* [a copy answering another seq, failed] [the real answer] */
    rd.stale_ack = false;
    size_t len = NLMSG_ALIGN(nlh->nlmsg_len);
    ck_assert_uint_le(2 * len, size);
    memmove((char *)buf + len, buf, (size_t)n);
    nlh->nlmsg_seq += 1000;
    ((struct nlmsgerr *)NLMSG_DATA(nlh))->error = -EPERM;
    return n + (ssize_t)len;
  }
  mark_dump(nlh, (int)n);
  return n;
}

/* After the address dump of uvip_provision_apply(): a command to run, and
 * reads to fail with EINTR. */
static const char *after_dump_cmd;
static int after_dump_eintr;

int __wrap_uvip__rtnl_dump(struct mnl_socket *nl, uvip__rtnl_addr_cb cb,
                           void *arg) {
  int r = __real_uvip__rtnl_dump(nl, cb, arg);
  if (after_dump_cmd != NULL) {
    ck_assert_int_eq(system(after_dump_cmd), 0);
    after_dump_cmd = NULL;
  }
  rd.eintr = after_dump_eintr;
  after_dump_eintr = 0;
  return r;
}

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

static void sh(const char *cmd) {
  int r = system(cmd);
  ck_assert_msg(r == 0, "'%s' failed (%d)", cmd, r);
}

static void enter_netns(void) {
  th_enter_netns();
  sh("sysctl -qw net.ipv6.conf.all.disable_ipv6=0");
  sh("sysctl -qw net.ipv6.conf.lo.disable_ipv6=0");
}

/* `ip -j addr show dev DEV` */
static char *ip_json(const char *dev) {
  char cmd[128];
  snprintf(cmd, sizeof(cmd), "ip -j addr show dev %s", dev);
  char *s = th_cmd_output(cmd);
  ck_assert_ptr_nonnull(s);
  return s;
}

/* How often dev lists ip (with prefix length plen, or any when plen < 0). */
static int ip_count(const char *dev, const char *ip, int plen) {
  char *json = ip_json(dev);
  char key[128];
  int n = 0;
  if (plen < 0)
    snprintf(key, sizeof(key), "\"local\":\"%s\"", ip);
  else
    snprintf(key, sizeof(key), "\"local\":\"%s\",\"prefixlen\":%d", ip, plen);
  for (const char *p = json; (p = strstr(p, key)) != NULL; p += strlen(key))
    n++;
  free(json);
  return n;
}

/* Whether ip's entry for the address on dev carries `flag`. */
static int addr_flag(const char *dev, const char *ip, const char *flag) {
  char *json = ip_json(dev);
  char key[128];
  snprintf(key, sizeof(key), "\"local\":\"%s\"", ip);
  char *at = strstr(json, key);
  ck_assert_msg(at != NULL, "%s not on %s: %s", ip, dev, json);
  char *end = strchr(at, '}');
  ck_assert_ptr_nonnull(end);
  *end = 0;
  int has = strstr(at, flag) != NULL;
  free(json);
  return has;
}

static int count_fds(void) { return th_count_fds(); }

/* The lowest free descriptor becomes the limit: the next one fails with
 * EMFILE. Returns the old limit. */
static struct rlimit limit_fds(void) {
  struct rlimit old, lim;
  ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &old), 0);
  int fd = dup(0);
  ck_assert_int_ge(fd, 0);
  close(fd);
  lim = old;
  lim.rlim_cur = (rlim_t)fd;
  ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &lim), 0);
  return old;
}

static void unlimit_fds(struct rlimit old) {
  ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &old), 0);
}

static uvip_provision_t *prov(const char *dev, const char *spec,
                              const uvip_provision_options_t *o) {
  uvip_addrs_t *pool = th_addrs(spec, 0);
  uvip_provision_t *p = NULL;
  ck_assert_int_eq(uvip_provision_new(dev, pool, o, &p), 0);
  uvip_addrs_free(pool);
  return p;
}

static int state_of(const uvip_provision_t *p, const char *ip) {
  struct sockaddr_storage sa;
  th_addr(ip, 0, &sa);
  for (size_t i = 0; i < uvip_provision_count(p); i++) {
    char got[UVIP_ADDRSTRLEN];
    ck_assert_int_eq(uvip_addr_format(uvip_provision_addr(p, i), 0, got,
                                      sizeof(got)), 0);
    if (strcmp(got, ip) == 0)
      return uvip_provision_state(p, i);
  }
  ck_abort_msg("%s is not in the pool", ip);
  return -1;
}

/* ------------------------------------------------------------------------ */
/* Listening sockets (lib/sockopt.c)                                        */
/* ------------------------------------------------------------------------ */

static void on_conn(uvip_server_t *s, uvip_conn_t *c) {
  (void)s;
  uvip_conn_close(c, NULL);
}

static bool server_closed;
static void on_server_closed(uvip_server_t *s) {
  (void)s;
  server_closed = true;
}

static void close_server(uv_loop_t *loop, uvip_server_t *s) {
  server_closed = false;
  ck_assert_int_eq(uvip_server_close(s, on_server_closed), 0);
  th_run_until(loop, &server_closed, 1000);
}

static uvip_server_t *server_on(uv_loop_t *loop, const char *spec, int port,
                                const uvip_server_options_t *o, int *rc) {
  uvip_addrs_t *a = th_addrs(spec, port);
  uvip_server_t *s = NULL;
  ck_assert_int_eq(uvip_server_new(loop, a, o, &s), 0);
  uvip_addrs_free(a);
  *rc = uvip_server_listen(s, on_conn, NULL, 0);
  return s;
}

static int sockopt_int(int fd, int level, int name) {
  int v = -1;
  socklen_t len = sizeof(v);
  ck_assert_int_eq(getsockopt(fd, level, name, &v, &len), 0);
  return v;
}

/* Every option the server asks for is on its listener, as the kernel
 * reports it. */
START_TEST(test_listen_options_applied) {
  enter_netns();
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  int port = th_free_port(), rc;
  uvip_server_options_t o;
  ck_assert_int_eq(uvip_server_options_init(&o), 0);
  o.flags |= UVIP_REUSEPORT | UVIP_NODELAY | UVIP_DUALSTACK | UVIP_FREEBIND;
  o.defer_accept_secs = 5;
  o.fastopen_qlen = 16;
  o.backlog = 7;
  uvip_server_t *s = server_on(&loop, "::", port, &o, &rc);
  ck_assert_int_eq(rc, 0);
  uvip_vip_t *v = uvip_server_vip(s, 0);
  int fd = uvip_vip_fd(v);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(sockopt_int(fd, SOL_SOCKET, SO_REUSEPORT), 1);
  ck_assert_int_eq(sockopt_int(fd, SOL_SOCKET, SO_REUSEADDR), 1);
  ck_assert_int_eq(sockopt_int(fd, IPPROTO_IPV6, IPV6_V6ONLY), 0);
  ck_assert_int_eq(sockopt_int(fd, IPPROTO_IP, IP_FREEBIND), 1);
  ck_assert_int_eq(sockopt_int(fd, IPPROTO_TCP, TCP_NODELAY), 1);
  ck_assert_int_gt(sockopt_int(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT), 0);
  ck_assert_int_eq(sockopt_int(fd, IPPROTO_TCP, TCP_FASTOPEN), 16);
  char *ss = th_cmd_output("ss -Hltn");
  ck_assert_ptr_nonnull(ss);
  char want[64];
  snprintf(want, sizeof(want), " 7 ");
  ck_assert_msg(strstr(ss, want) != NULL, "backlog 7 not in: %s", ss);
  free(ss);
  /* Dual stack: an IPv4 client reaches the [::] listener. */
  struct sockaddr_storage v4;
  th_addr("127.0.0.1", port, &v4);
  close(th_connect((struct sockaddr *)&v4, NULL));

  /* REUSEPORT: a second server shares the port. */
  uvip_server_t *s2 = server_on(&loop, "::", port, &o, &rc);
  ck_assert_int_eq(rc, 0);
  close_server(&loop, s2);
  close_server(&loop, s);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

/* Without the flags: IPv6-only, no FREEBIND (an address the host does not
 * have cannot be bound), no REUSEPORT (the port cannot be shared). */
START_TEST(test_listen_options_default) {
  enter_netns();
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  int port = th_free_port(), rc;
  uvip_server_t *s = server_on(&loop, "::1", port, NULL, &rc);
  ck_assert_int_eq(rc, 0);
  int fd = uvip_vip_fd(uvip_server_vip(s, 0));
  ck_assert_int_eq(sockopt_int(fd, IPPROTO_IPV6, IPV6_V6ONLY), 1);
  ck_assert_int_eq(sockopt_int(fd, SOL_SOCKET, SO_REUSEPORT), 0);
  ck_assert_int_eq(sockopt_int(fd, IPPROTO_TCP, TCP_NODELAY), 0);
  ck_assert_int_eq(sockopt_int(fd, IPPROTO_TCP, TCP_FASTOPEN), 0);

  uvip_server_t *s2 = server_on(&loop, "::1", port, NULL, &rc);
  ck_assert_int_eq(rc, UV_EADDRINUSE);
  ck_assert_int_eq(uvip_vip_state(uvip_server_vip(s2, 0)), UVIP_VIP_FAILED);
  close_server(&loop, s2);

  /* 10.99.0.1 is on no interface: refused, unless FREEBIND. */
  uvip_server_t *s3 = server_on(&loop, "10.99.0.1", port, NULL, &rc);
  ck_assert_int_eq(rc, UV_EADDRNOTAVAIL);
  close_server(&loop, s3);
  uvip_server_options_t o;
  ck_assert_int_eq(uvip_server_options_init(&o), 0);
  o.flags |= UVIP_FREEBIND;
  uvip_server_t *s4 = server_on(&loop, "10.99.0.1", port, &o, &rc);
  ck_assert_int_eq(rc, 0);
  ck_assert_int_eq(uvip_vip_state(uvip_server_vip(s4, 0)), UVIP_VIP_LISTENING);
  close_server(&loop, s4);
  close_server(&loop, s);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

/* Each option the kernel refuses fails the listener with the kernel's
 * error: the VIP is FAILED with it, and its socket is not leaked. */
START_TEST(test_listen_option_failures) {
  enter_netns();
  static const struct {
    int level, name;
  } opts[] = {
      {SOL_SOCKET, SO_REUSEADDR},   {SOL_SOCKET, SO_REUSEPORT},
      {IPPROTO_IPV6, IPV6_V6ONLY},  {IPPROTO_IP, IP_FREEBIND},
      {IPPROTO_TCP, TCP_DEFER_ACCEPT}, {IPPROTO_TCP, TCP_NODELAY},
      {IPPROTO_TCP, TCP_FASTOPEN},
  };
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  uvip_server_options_t o;
  ck_assert_int_eq(uvip_server_options_init(&o), 0);
  o.flags |= UVIP_REUSEPORT | UVIP_NODELAY | UVIP_FREEBIND;
  o.defer_accept_secs = 1;
  o.fastopen_qlen = 4;
  int fds = count_fds();
  for (size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++) {
    so_fail.level = opts[i].level;
    so_fail.name = opts[i].name;
    so_fail.count = 1;
    so_fail.err = ENOPROTOOPT;
    so_fail.injected = 0;
    int rc;
    uvip_server_t *s = server_on(&loop, "::1", th_free_port(), &o, &rc);
    ck_assert_int_eq(so_fail.injected, 1);
    ck_assert_msg(rc == UV_ENOPROTOOPT, "option %zu: %s", i, uv_strerror(rc));
    uvip_vip_t *v = uvip_server_vip(s, 0);
    ck_assert_int_eq(uvip_vip_state(v), UVIP_VIP_FAILED);
    ck_assert_int_eq(uvip_vip_error(v), UV_ENOPROTOOPT);
    ck_assert_int_lt(uvip_vip_fd(v), 0);
    close_server(&loop, s);
    ck_assert_int_eq(count_fds(), fds);
  }
  so_fail.count = 0;

  /* listen() itself. */
  listen_fail_err = EADDRINUSE;
  int rc;
  uvip_server_t *s = server_on(&loop, "127.0.0.1", th_free_port(), NULL, &rc);
  ck_assert_int_eq(rc, UV_EADDRINUSE);
  ck_assert_int_eq(listen_fail_err, 0);
  close_server(&loop, s);
  ck_assert_int_eq(count_fds(), fds);

  /* socket(): out of descriptors. */
  uvip_addrs_t *a = th_addrs("127.0.0.1", th_free_port());
  ck_assert_int_eq(uvip_server_new(&loop, a, NULL, &s), 0);
  uvip_addrs_free(a);
  struct rlimit old = limit_fds();
  rc = uvip_server_listen(s, on_conn, NULL, 0);
  unlimit_fds(old);
  ck_assert_int_eq(rc, UV_EMFILE);
  ck_assert_int_eq(uvip_vip_error(uvip_server_vip(s, 0)), UV_EMFILE);
  close_server(&loop, s);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* rtnetlink messages (lib/rtnl.c)                                          */
/* ------------------------------------------------------------------------ */

/* An address message: family, index, prefix, then attributes. */
static struct nlmsghdr *addr_msg(char *buf, int type, int family) {
  memset(buf, 0, MNL_SOCKET_BUFFER_SIZE);
  struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
  nlh->nlmsg_type = (uint16_t)type;
  struct ifaddrmsg *ifa = mnl_nlmsg_put_extra_header(nlh, sizeof(*ifa));
  ifa->ifa_family = (uint8_t)family;
  ifa->ifa_index = 7;
  ifa->ifa_prefixlen = 64;
  ifa->ifa_flags = IFA_F_NODAD;
  return nlh;
}

START_TEST(test_parse_addr) {
  _Alignas(8) char buf[MNL_SOCKET_BUFFER_SIZE];
  uvip__ifaddr_t a;
  struct in6_addr ll, peer;
  ck_assert_int_eq(inet_pton(AF_INET6, "fe80::7", &ll), 1);
  ck_assert_int_eq(inet_pton(AF_INET6, "2001:db8::9", &peer), 1);

  /* A link-local IPv6 address carries its interface; IFA_LOCAL wins over
   * IFA_ADDRESS (the peer); IFA_FLAGS replaces the 8-bit flags; an
   * attribute newer than this code is skipped. */
  struct nlmsghdr *nlh = addr_msg(buf, RTM_DELADDR, AF_INET6);
  mnl_attr_put(nlh, IFA_ADDRESS, 16, &peer);
  mnl_attr_put(nlh, IFA_LOCAL, 16, &ll);
  mnl_attr_put_u32(nlh, IFA_FLAGS, IFA_F_NODAD | IFA_F_NOPREFIXROUTE);
  mnl_attr_put_u32(nlh, IFA_MAX + 5, 1);
  ck_assert_int_eq(uvip__rtnl_parse_addr(nlh, &a), 0);
  char txt[UVIP_ADDRSTRLEN];
  ck_assert_int_eq(uvip_addr_format(&a.addr.sa, 0, txt, sizeof(txt)), 0);
  ck_assert_str_eq(txt, "fe80::7");
  ck_assert_uint_eq(a.addr.in6.sin6_scope_id, 7);
  ck_assert_uint_eq(a.ifindex, 7);
  ck_assert_uint_eq(a.prefixlen, 64);
  ck_assert_uint_eq(a.flags, IFA_F_NODAD | IFA_F_NOPREFIXROUTE);

  /* A global IPv6 address has no scope; a malformed IFA_FLAGS is ignored. */
  nlh = addr_msg(buf, RTM_NEWADDR, AF_INET6);
  mnl_attr_put(nlh, IFA_ADDRESS, 16, &peer);
  mnl_attr_put_u16(nlh, IFA_FLAGS, 0xffff);
  ck_assert_int_eq(uvip__rtnl_parse_addr(nlh, &a), 0);
  ck_assert_uint_eq(a.addr.in6.sin6_scope_id, 0);
  ck_assert_uint_eq(a.flags, IFA_F_NODAD);

  /* Not an address message. */
  nlh = addr_msg(buf, RTM_NEWLINK, AF_INET);
  ck_assert_int_eq(uvip__rtnl_parse_addr(nlh, &a), UV_EINVAL);
  /* Too short for its header. */
  nlh = mnl_nlmsg_put_header(buf);
  nlh->nlmsg_type = RTM_NEWADDR;
  ck_assert_int_eq(uvip__rtnl_parse_addr(nlh, &a), UV_EINVAL);
  /* Another family. */
  nlh = addr_msg(buf, RTM_NEWADDR, AF_PACKET);
  ck_assert_int_eq(uvip__rtnl_parse_addr(nlh, &a), UV_EAFNOSUPPORT);
  /* No address at all. */
  nlh = addr_msg(buf, RTM_NEWADDR, AF_INET);
  ck_assert_int_eq(uvip__rtnl_parse_addr(nlh, &a), UV_EINVAL);
  /* An IPv4 message with an IPv6-sized address. */
  nlh = addr_msg(buf, RTM_NEWADDR, AF_INET);
  mnl_attr_put(nlh, IFA_LOCAL, 16, &peer);
  ck_assert_int_eq(uvip__rtnl_parse_addr(nlh, &a), UV_EINVAL);
  /* An attribute running past the message (libmnl stops at it, so there
   * is no address). */
  nlh = addr_msg(buf, RTM_NEWADDR, AF_INET);
  struct nlattr *at = mnl_nlmsg_get_payload_tail(nlh);
  mnl_attr_put_u32(nlh, IFA_LOCAL, 0x0100000a);
  at->nla_len = 200;
  ck_assert_int_eq(uvip__rtnl_parse_addr(nlh, &a), UV_EINVAL);
}
END_TEST

START_TEST(test_rtnl_args) {
  enter_netns();
  unsigned int idx = 0;
  ck_assert_int_eq(uvip__rtnl_ifindex("", &idx), UV_EINVAL);
  ck_assert_int_eq(uvip__rtnl_ifindex("a/b", &idx), UV_EINVAL);
  ck_assert_int_eq(uvip__rtnl_ifindex("0123456789abcdef", &idx), UV_EINVAL);
  ck_assert_int_eq(uvip__rtnl_ifindex("nosuch0", &idx), UV_ENODEV);
  ck_assert_int_eq(uvip__rtnl_ifindex("lo", &idx), 0);
  ck_assert_uint_eq(idx, 1);

  struct mnl_socket *nl = NULL;
  ck_assert_int_eq(uvip__rtnl_open(0, 0, &nl), 0);
  uvip__ifaddr_t a;
  memset(&a, 0, sizeof(a));
  a.addr.sa.sa_family = AF_UNIX;
  a.ifindex = 1;
  char msg[64] = "x";
  ck_assert_int_eq(uvip__rtnl_change(nl, 1, &a, msg, sizeof(msg)),
                   UV_EAFNOSUPPORT);
  ck_assert_str_eq(msg, "");
  /* The request cannot be sent. */
  struct sockaddr_storage ss;
  th_addr("10.98.0.1", 0, &ss);
  memcpy(&a.addr, &ss, sizeof(struct sockaddr_in));
  a.prefixlen = 32;
  sendto_fail_err = ENOBUFS;
  ck_assert_int_eq(uvip__rtnl_change(nl, 1, &a, NULL, 0), UV_ENOBUFS);
  ck_assert_int_eq(ip_count("lo", "10.98.0.1", -1), 0);
  sendto_fail_err = ENOBUFS;
  ck_assert_int_eq(uvip__rtnl_dump(nl, NULL, NULL), UV_ENOBUFS);
  /* The socket is still usable: the same request goes through, with
   * flags beyond the 8-bit field (IFA_FLAGS). */
  a.flags = IFA_F_NOPREFIXROUTE;
  ck_assert_int_eq(uvip__rtnl_change(nl, 1, &a, NULL, 0), 0);
  ck_assert_int_eq(ip_count("lo", "10.98.0.1", 32), 1);
  ck_assert_int_eq(addr_flag("lo", "10.98.0.1", "\"noprefixroute\":true"), 1);
  mnl_socket_close(nl);

  /* Socket creation and binding failures are reported. */
  open_fail_err = EMFILE;
  ck_assert_int_eq(uvip__rtnl_open(0, 0, &nl), UV_EMFILE);
  bind_fail_err = EADDRINUSE;
  ck_assert_int_eq(uvip__rtnl_open(RTMGRP_IPV4_IFADDR, 1, &nl), UV_EADDRINUSE);
  ck_assert_int_eq(bind_fail_err, 0);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Provisioning (lib/provision.c)                                           */
/* ------------------------------------------------------------------------ */

/* The caller's prefix lengths are used and IPv6 addresses go through
 * duplicate address detection when asked (the kernel marks them
 * tentative). */
START_TEST(test_provision_options) {
  enter_netns();
  sh("ip link add cv0 type veth peer name cv1");
  sh("ip link set cv0 up && ip link set cv1 up");
  uvip_provision_options_t o;
  ck_assert_int_eq(uvip_provision_options_init(&o), 0);
  o.prefixlen4 = 24;
  o.prefixlen6 = 64;
  o.flags = UVIP_PROVISION_DAD;
  uvip_provision_t *p = prov("cv0", "10.97.0.5,2001:db8:97::5", &o);
  char err[256];
  ck_assert_int_eq(uvip_provision_apply(p, err, sizeof(err)), 0);
  ck_assert_int_eq(ip_count("cv0", "10.97.0.5", 24), 1);
  ck_assert_int_eq(ip_count("cv0", "2001:db8:97::5", 64), 1);
  ck_assert_int_eq(addr_flag("cv0", "2001:db8:97::5", "\"tentative\":true"), 1);
  ck_assert_int_eq(addr_flag("cv0", "2001:db8:97::5", "\"nodad\":true"), 0);
  /* Without the flag: no DAD, the address is usable at once. */
  uvip_provision_t *q = prov("cv1", "2001:db8:97::6", NULL);
  ck_assert_int_eq(uvip_provision_apply(q, err, sizeof(err)), 0);
  ck_assert_int_eq(addr_flag("cv1", "2001:db8:97::6", "\"nodad\":true"), 1);
  ck_assert_int_eq(addr_flag("cv1", "2001:db8:97::6", "\"tentative\":true"), 0);
  struct sockaddr_storage sa;
  th_addr("2001:db8:97::6", 0, &sa);
  int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(struct sockaddr_in6)),
                   0);
  close(fd);
  ck_assert_int_eq(uvip_provision_release(q, err, sizeof(err)), 0);
  ck_assert_int_eq(ip_count("cv1", "2001:db8:97::6", -1), 0);
  ck_assert_int_eq(uvip_provision_release(p, err, sizeof(err)), 0);
  ck_assert_int_eq(ip_count("cv0", "10.97.0.5", -1), 0);
  uvip_provision_free(q);
  uvip_provision_free(p);
}
END_TEST

/* An address that is on another interface is not ours on this one: it is
 * added here too, and release removes only that copy. */
START_TEST(test_provision_other_interface) {
  enter_netns();
  sh("ip link add cv0 type veth peer name cv1");
  sh("ip addr add 10.97.1.1/32 dev cv1");
  uvip_provision_t *p = prov("cv0", "10.97.1.1", NULL);
  ck_assert_int_eq(uvip_provision_apply(p, NULL, 0), 0);
  ck_assert_int_eq(state_of(p, "10.97.1.1"), UVIP_PROVISION_ADDED);
  ck_assert_int_eq(ip_count("cv0", "10.97.1.1", 32), 1);
  ck_assert_int_eq(uvip_provision_release(p, NULL, 0), 0);
  ck_assert_int_eq(ip_count("cv0", "10.97.1.1", -1), 0);
  ck_assert_int_eq(ip_count("cv1", "10.97.1.1", 32), 1);
  uvip_provision_free(p);
}
END_TEST

/* The interface is deleted and made again under the same name: what was
 * added went with the old one, so apply adds everything to the new one
 * (release would otherwise ask the kernel about a dead index). */
START_TEST(test_provision_interface_recreated) {
  enter_netns();
  sh("ip link add cv0 type veth peer name cv1");
  uvip_provision_t *p = prov("cv0", "10.97.2.1-10.97.2.3", NULL);
  char err[256];
  ck_assert_int_eq(uvip_provision_apply(p, err, sizeof(err)), 0);
  ck_assert_int_eq(ip_count("cv0", "10.97.2.3", 32), 1);

  /* Gone: apply says which interface and why. */
  sh("ip link del cv0");
  ck_assert_int_eq(uvip_provision_apply(p, err, sizeof(err)), UV_ENODEV);
  ck_assert_msg(strstr(err, "interface cv0") != NULL, "%s", err);
  /* Made again (a new index): everything is added again. */
  sh("ip link add cv0 type veth peer name cv1");
  ck_assert_int_eq(uvip_provision_apply(p, err, sizeof(err)), 0);
  for (int i = 1; i <= 3; i++) {
    char ip[32];
    snprintf(ip, sizeof(ip), "10.97.2.%d", i);
    ck_assert_int_eq(state_of(p, ip), UVIP_PROVISION_ADDED);
    ck_assert_int_eq(ip_count("cv0", ip, 32), 1);
  }
  ck_assert_int_eq(uvip_provision_release(p, err, sizeof(err)), 0);
  ck_assert_int_eq(ip_count("cv0", "10.97.2.1", -1), 0);
  uvip_provision_free(p);
}
END_TEST

/* An address that someone else adds between the dump and our request
 * (the kernel answers EEXIST) is theirs: FOREIGN, not an error, and left
 * in place by release. */
START_TEST(test_provision_race_eexist) {
  enter_netns();
  uvip_provision_t *p = prov("lo", "10.97.3.1-10.97.3.2", NULL);
  after_dump_cmd = "ip addr add 10.97.3.2/32 dev lo";
  char err[256];
  ck_assert_int_eq(uvip_provision_apply(p, err, sizeof(err)), 0);
  ck_assert_ptr_null(after_dump_cmd);
  ck_assert_int_eq(state_of(p, "10.97.3.1"), UVIP_PROVISION_ADDED);
  ck_assert_int_eq(state_of(p, "10.97.3.2"), UVIP_PROVISION_FOREIGN);
  ck_assert_int_eq(uvip_provision_release(p, err, sizeof(err)), 0);
  ck_assert_int_eq(ip_count("lo", "10.97.3.1", -1), 0);
  ck_assert_int_eq(ip_count("lo", "10.97.3.2", 32), 1);
  uvip_provision_free(p);
}
END_TEST

/* A dump that raced with a change is read again from the start; one that
 * keeps racing gives up with UV_EAGAIN and changes nothing. */
START_TEST(test_provision_dump_interrupted) {
  enter_netns();
  sh("ip addr add 10.97.4.2/32 dev lo");
  uvip_provision_t *p = prov("lo", "10.97.4.1-10.97.4.2", NULL);
  char err[256];
  rd.dump_intr = 1;
  rd.dumps = 0;
  ck_assert_int_eq(uvip_provision_apply(p, err, sizeof(err)), 0);
  ck_assert_int_eq(rd.dumps, 2);
  ck_assert_int_eq(state_of(p, "10.97.4.1"), UVIP_PROVISION_ADDED);
  ck_assert_int_eq(state_of(p, "10.97.4.2"), UVIP_PROVISION_FOREIGN);
  ck_assert_int_eq(uvip_provision_release(p, NULL, 0), 0);
  uvip_provision_free(p);

  p = prov("lo", "10.97.4.3", NULL);
  rd.dump_intr = 1000;
  rd.dumps = 0;
  ck_assert_int_eq(uvip_provision_apply(p, err, sizeof(err)), UV_EAGAIN);
  rd.dump_intr = 0;
  ck_assert_int_eq(rd.dumps, 8);
  ck_assert_msg(strstr(err, "list addresses of lo") != NULL, "%s", err);
  ck_assert_int_eq(state_of(p, "10.97.4.3"), UVIP_PROVISION_ABSENT);
  ck_assert_int_eq(ip_count("lo", "10.97.4.3", -1), 0);
  uvip_provision_free(p);
}
END_TEST

/* Read errors: EINTR is retried (in the dump and in the ack); anything
 * else ends the call with it; a refused dump and a malformed ack are
 * errors too, what this call added is taken back, and an answer to
 * another request is passed over. */
START_TEST(test_provision_read_errors) {
  enter_netns();
  uvip_provision_t *p = prov("lo", "10.97.5.1-10.97.5.2", NULL);
  char err[256];
  rd.eintr = 1;
  ck_assert_int_eq(uvip_provision_apply(p, err, sizeof(err)), 0);
  ck_assert_int_eq(rd.eintr, 0);
  ck_assert_int_eq(ip_count("lo", "10.97.5.2", 32), 1);
  ck_assert_int_eq(uvip_provision_release(p, NULL, 0), 0);

  /* EINTR while waiting for the first ack. */
  after_dump_eintr = 1;
  ck_assert_int_eq(uvip_provision_apply(p, err, sizeof(err)), 0);
  ck_assert_int_eq(rd.eintr, 0);
  ck_assert_int_eq(after_dump_eintr, 0);
  ck_assert_int_eq(ip_count("lo", "10.97.5.1", 32), 1);
  ck_assert_int_eq(uvip_provision_release(p, NULL, 0), 0);

  rd.err = ENOBUFS;
  ck_assert_int_eq(uvip_provision_apply(p, err, sizeof(err)), UV_ENOBUFS);
  ck_assert_msg(strstr(err, "list addresses of lo") != NULL, "%s", err);
  ck_assert_int_eq(ip_count("lo", "10.97.5.1", -1), 0);

  rd.dump_error = true;
  ck_assert_int_eq(uvip_provision_apply(p, err, sizeof(err)), UV_EPERM);
  ck_assert(!rd.dump_error);
  ck_assert_msg(strstr(err, "list addresses of lo") != NULL, "%s", err);
  ck_assert_int_eq(ip_count("lo", "10.97.5.1", -1), 0);

  rd.stale_ack = true;
  ck_assert_int_eq(uvip_provision_apply(p, err, sizeof(err)), 0);
  ck_assert(!rd.stale_ack);
  ck_assert_int_eq(state_of(p, "10.97.5.1"), UVIP_PROVISION_ADDED);
  ck_assert_int_eq(state_of(p, "10.97.5.2"), UVIP_PROVISION_ADDED);
  ck_assert_int_eq(ip_count("lo", "10.97.5.1", 32), 1);
  ck_assert_int_eq(uvip_provision_release(p, NULL, 0), 0);

  /* The second address's ack is cut short: UV_EIO naming it, and the
   * first address is taken back. */
  rd.short_ack_skip = 1;
  rd.short_ack = true;
  ck_assert_int_eq(uvip_provision_apply(p, err, sizeof(err)), UV_EIO);
  ck_assert(!rd.short_ack);
  ck_assert_msg(strstr(err, "add 10.97.5.2/32 to lo") != NULL, "%s", err);
  ck_assert_int_eq(state_of(p, "10.97.5.1"), UVIP_PROVISION_ABSENT);
  ck_assert_int_eq(state_of(p, "10.97.5.2"), UVIP_PROVISION_ABSENT);
  ck_assert_int_eq(ip_count("lo", "10.97.5.1", -1), 0);
  uvip_provision_free(p);
}
END_TEST

/* The kernel's own explanation reaches errbuf with capped acks and with
 * acks that echo the request; without extended acks there is none. */
START_TEST(test_provision_ext_ack) {
  enter_netns();
  sh("sysctl -qw net.ipv6.conf.lo.disable_ipv6=1");
  char err[256];
  for (int mode = 0; mode < 3; mode++) {
    cap_ack_off = mode == 1;
    ext_ack_off = mode == 2;
    uvip_provision_t *p = prov("lo", "fd97::1", NULL);
    int r = uvip_provision_apply(p, err, sizeof(err));
    ck_assert_int_lt(r, 0);
    ck_assert_msg(strstr(err, "add fd97::1/128 to lo") != NULL, "%s", err);
    if (mode == 2)
      ck_assert_msg(strstr(err, "(kernel:") == NULL, "%s", err);
    else
      ck_assert_msg(strstr(err, "(kernel: ") != NULL, "mode %d: %s", mode,
                    err);
    /* errbuf too small for the kernel's text: cut, still terminated. */
    char small[24];
    ck_assert_int_eq(uvip_provision_apply(p, small, sizeof(small)), r);
    ck_assert_uint_eq(strlen(small), sizeof(small) - 1);
    uvip_provision_free(p);
  }
  cap_ack_off = ext_ack_off = 0;
}
END_TEST

/* rtnetlink socket failures in apply and release are reported in errbuf;
 * release keeps what it could not remove as ours, and a release refused
 * by the kernel names the address. */
START_TEST(test_provision_socket_failures) {
  enter_netns();
  uvip_provision_t *p = prov("lo", "10.97.6.1", NULL);
  char err[256];
  open_fail_err = EMFILE;
  ck_assert_int_eq(uvip_provision_apply(p, err, sizeof(err)), UV_EMFILE);
  ck_assert_msg(strstr(err, "rtnetlink socket") != NULL, "%s", err);
  ck_assert_int_eq(state_of(p, "10.97.6.1"), UVIP_PROVISION_ABSENT);

  /* Out of descriptors: the interface cannot even be looked up (glibc's
   * if_nametoindex() needs a socket), which is not "no such device". */
  struct rlimit old = limit_fds();
  int r = uvip_provision_apply(p, err, sizeof(err));
  unlimit_fds(old);
  ck_assert_int_lt(r, 0);
  ck_assert_int_ne(r, UV_ENODEV);
  ck_assert_msg(strstr(err, "interface lo") != NULL, "%s", err);

  ck_assert_int_eq(uvip_provision_apply(p, err, sizeof(err)), 0);
  open_fail_err = EMFILE;
  ck_assert_int_eq(uvip_provision_release(p, err, sizeof(err)), UV_EMFILE);
  ck_assert_msg(strstr(err, "rtnetlink socket") != NULL, "%s", err);
  ck_assert_int_eq(state_of(p, "10.97.6.1"), UVIP_PROVISION_ADDED);
  ck_assert_int_eq(ip_count("lo", "10.97.6.1", 32), 1);

  /* The kernel refuses the removal (a failing send): still ours. */
  sendto_fail_err = ENOBUFS;
  ck_assert_int_eq(uvip_provision_release(p, err, sizeof(err)), UV_ENOBUFS);
  ck_assert_msg(strstr(err, "remove 10.97.6.1/32 from lo") != NULL, "%s",
                err);
  ck_assert_int_eq(state_of(p, "10.97.6.1"), UVIP_PROVISION_ADDED);
  ck_assert_int_eq(uvip_provision_release(p, NULL, 0), 0);
  ck_assert_int_eq(ip_count("lo", "10.97.6.1", -1), 0);
  uvip_provision_free(p);

  /* provision_new looks the interface up too. */
  uvip_addrs_t *pool = th_addrs("10.97.6.1", 0);
  uvip_provision_t *q = (uvip_provision_t *)1;
  old = limit_fds();
  r = uvip_provision_new("lo", pool, NULL, &q);
  unlimit_fds(old);
  ck_assert_int_lt(r, 0);
  ck_assert_int_ne(r, UV_ENODEV);
  ck_assert_ptr_null(q);
  uvip_addrs_free(pool);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Local routes and the prefix connector's route check                      */
/* ------------------------------------------------------------------------ */

static int local_route_count(const char *want) {
  char *out = th_cmd_output("ip -6 route show table local; ip route show table local");
  int n = 0;
  ck_assert_ptr_nonnull(out);
  for (const char *q = out; (q = strstr(q, want)) != NULL; q += strlen(want))
    n++;
  free(out);
  return n;
}

START_TEST(test_local_route_failures) {
  enter_netns();
  uvip_prefix_t p6, p4;
  uvip_provision_t *prov6, *prov4;
  char err[256];
  ck_assert_int_eq(uvip_prefix_parse("fd00:1::/64", &p6, NULL, 0), 0);
  ck_assert_int_eq(uvip_prefix_parse("198.18.0.0/24", &p4, NULL, 0), 0);
  ck_assert_int_eq(uvip_provision_new_local_route("lo", &p6, NULL, &prov6), 0);
  ck_assert_int_eq(uvip_provision_new_local_route("lo", &p4, NULL, &prov4), 0);

  open_fail_err = EMFILE;
  ck_assert_int_eq(uvip_provision_apply(prov6, err, sizeof(err)), UV_EMFILE);
  ck_assert_str_eq(err, "add local route fd00:1::/64 dev lo: too many open files");
  ck_assert_int_eq(uvip_provision_state(prov6, 0), UVIP_PROVISION_ABSENT);
  open_fail_err = EMFILE;
  ck_assert_int_eq(uvip_provision_apply(prov4, err, sizeof(err)), UV_EMFILE);
  ck_assert_str_eq(err, "add local route 198.18.0.0/24 dev lo: too many open files");
  ck_assert_int_eq(uvip_provision_apply(prov4, NULL, 0), 0);
  ck_assert_int_eq(local_route_count("local 198.18.0.0/24 dev lo"), 1);

  /* A release that fails keeps the route ours, to be retried. */
  sendto_fail_err = ENOBUFS;
  ck_assert_int_eq(uvip_provision_release(prov4, err, sizeof(err)), UV_ENOBUFS);
  ck_assert_msg(strstr(err, "remove local route 198.18.0.0/24 dev lo: ") != NULL,
                "%s", err);
  ck_assert_int_eq(uvip_provision_state(prov4, 0), UVIP_PROVISION_ADDED);
  ck_assert_int_eq(uvip_provision_release(prov4, NULL, 0), 0);
  ck_assert_int_eq(local_route_count("198.18.0.0/24"), 0);
  uvip_provision_free(prov4);

  /* The kernel's own explanation, when IPv6 is off on lo. */
  sh("sysctl -qw net.ipv6.conf.lo.disable_ipv6=1");
  int r = uvip_provision_apply(prov6, err, sizeof(err));
  ck_assert_int_lt(r, 0);
  ck_assert_msg(strstr(err, "add local route fd00:1::/64 dev lo: ") != NULL, "%s", err);
  ck_assert_msg(strstr(err, "(kernel: ") != NULL, "%s", err);
  ck_assert_int_eq(uvip_provision_state(prov6, 0), UVIP_PROVISION_ABSENT);
  uvip_provision_free(prov6);
}
END_TEST

START_TEST(test_prefix_route_check_failures) {
  enter_netns();
  uv_loop_t loop;
  uvip_connector_t *c = NULL;
  uvip_prefix_t lo, none;
  char err[256];
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  ck_assert_int_eq(uvip_prefix_parse("127.0.0.0/8", &lo, NULL, 0), 0);
  ck_assert_int_eq(uvip_prefix_parse("fd00:5::/64", &none, NULL, 0), 0);

  open_fail_err = EMFILE;
  ck_assert_int_eq(uvip_connector_new_prefix(&loop, &lo, 0, NULL, err, sizeof(err), &c),
                   UV_EMFILE);
  ck_assert_str_eq(err, "rtnetlink socket: too many open files");
  sendto_fail_err = ENOBUFS;
  ck_assert_int_eq(uvip_connector_new_prefix(&loop, &lo, 0, NULL, err, sizeof(err), &c),
                   UV_ENOBUFS);
  ck_assert_msg(strstr(err, "route lookup: ") != NULL, "%s", err);
  rd.err = ENOBUFS;
  ck_assert_int_eq(uvip_connector_new_prefix(&loop, &lo, 0, NULL, err, sizeof(err), &c),
                   UV_ENOBUFS);
  ck_assert_msg(strstr(err, "route lookup: ") != NULL, "%s", err);
  /* The kernel's "no route" answer cut short. */
  rd.short_ack_skip = 0;
  rd.short_ack = true;
  ck_assert_int_eq(uvip_connector_new_prefix(&loop, &none, 0, NULL, err, sizeof(err), &c),
                   UV_EIO);
  ck_assert(!rd.short_ack);
  ck_assert_ptr_null(c);
  /* EINTR is retried; an answer to another request is skipped. */
  rd.eintr = 1;
  ck_assert_int_eq(uvip_connector_new_prefix(&loop, &none, 0, NULL, err, sizeof(err), &c),
                   UV_EADDRNOTAVAIL);
  ck_assert_int_eq(rd.eintr, 0);
  rd.stale_ack = true;
  ck_assert_int_eq(uvip_connector_new_prefix(&loop, &none, 0, NULL, err, sizeof(err), &c),
                   UV_EADDRNOTAVAIL);
  ck_assert(!rd.stale_ack);
  ck_assert_msg(strstr(err, "no local route for fd00:5::/64") != NULL, "%s", err);
  ck_assert_int_eq(uvip_connector_new_prefix(&loop, &lo, 0, NULL, err, sizeof(err), &c), 0);
  ck_assert_int_eq(uvip_connector_close(c, NULL), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Address events (lib/addrwatch.c)                                         */
/* ------------------------------------------------------------------------ */

typedef struct {
  int n_new, n_del, n_overrun;
  char last[UVIP_ADDRSTRLEN];
  bool close_on_overrun;
} wlog_t;

static void on_watch_closed(uvip_addrwatch_t *w);

static void on_watch(uvip_addrwatch_t *w, uvip_addr_event_t ev,
                     const struct sockaddr *addr, unsigned int ifindex,
                     unsigned int prefixlen, unsigned int flags) {
  wlog_t *l = uvip_addrwatch_get_data(w);
  (void)ifindex;
  (void)prefixlen;
  (void)flags;
  if (ev == UVIP_ADDR_OVERRUN) {
    ck_assert_ptr_null(addr);
    l->n_overrun++;
    if (l->close_on_overrun)
      ck_assert_int_eq(uvip_addrwatch_close(w, on_watch_closed), 0);
    return;
  }
  ck_assert_int_eq(uvip_addr_format(addr, 0, l->last, sizeof(l->last)), 0);
  if (ev == UVIP_ADDR_NEW)
    l->n_new++;
  else
    l->n_del++;
}

static void wait_count(uv_loop_t *loop, const int *n, int want) {
  for (int turn = 0; turn < 1000 && *n < want; turn++)
    uv_run(loop, UV_RUN_ONCE);
  ck_assert_int_eq(*n, want);
}

static bool watch_closed;
static void on_watch_closed(uvip_addrwatch_t *w) {
  (void)w;
  watch_closed = true;
}

static int watch_fd(void) {
  int found = -1;
  for (int fd = 3; fd < 1024; fd++) {
    int domain = 0;
    socklen_t len = sizeof(domain);
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) == 0 &&
        domain == AF_NETLINK) {
      ck_assert_int_eq(found, -1);
      found = fd;
    }
  }
  ck_assert_int_ge(found, 0);
  return found;
}

/* Only the kernel is believed: a forged address message from another
 * process's netlink socket is dropped, a kernel message that is not about
 * an address is skipped, EINTR is retried, and real events still come. */
START_TEST(test_addrwatch_untrusted_input) {
  enter_netns();
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  uvip_addrwatch_t *w = NULL;
  ck_assert_int_eq(uvip_addrwatch_new(&loop, &w), 0);
  wlog_t log = {0};
  uvip_addrwatch_set_data(w, &log);
  ck_assert_int_eq(uvip_addrwatch_start(w, on_watch), 0);

  /* A forged RTM_NEWADDR sent straight to the watcher's port id. */
  struct sockaddr_nl me;
  socklen_t len = sizeof(me);
  ck_assert_int_eq(getsockname(watch_fd(), (struct sockaddr *)&me, &len), 0);
  _Alignas(8) char buf[MNL_SOCKET_BUFFER_SIZE];
  struct nlmsghdr *nlh = addr_msg(buf, RTM_NEWADDR, AF_INET);
  mnl_attr_put_u32(nlh, IFA_LOCAL, htonl(0x0a600001)); /* 10.96.0.1 */
  int forger = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  ck_assert_int_ge(forger, 0);
  struct sockaddr_nl to = {.nl_family = AF_NETLINK, .nl_pid = me.nl_pid};
  ck_assert_int_eq(sendto(forger, nlh, nlh->nlmsg_len, 0, (struct sockaddr *)&to,
                          sizeof(to)),
                   (ssize_t)nlh->nlmsg_len);
  close(forger);
  /* Then a kernel message about a link (skipped) followed by EINTR, then
   * the real event. The forged one was read first: it is queued first. */
  recvfrom_calls = 0;
  sh("ip addr add 10.96.0.2/32 dev lo");
  wait_count(&loop, &log.n_new, 1);
  ck_assert_str_eq(log.last, "10.96.0.2");
  ck_assert_int_ge(recvfrom_calls, 2);

  _Alignas(8) char fake[MNL_SOCKET_BUFFER_SIZE];
  struct nlmsghdr *link = addr_msg(fake, RTM_NEWLINK, AF_INET);
  recvfrom_fake = fake;
  recvfrom_fake_len = link->nlmsg_len;
  recvfrom_eintr = 1;
  sh("ip addr add 10.96.0.3/32 dev lo");
  wait_count(&loop, &log.n_new, 2);
  ck_assert_str_eq(log.last, "10.96.0.3");
  ck_assert_ptr_null(recvfrom_fake);
  ck_assert_int_eq(recvfrom_eintr, 0);
  ck_assert_int_eq(log.n_del, 0);
  ck_assert_int_eq(log.n_overrun, 0);

  ck_assert_int_eq(uvip_addrwatch_close(w, on_watch_closed), 0);
  ck_assert_int_eq(uvip_addrwatch_close(w, on_watch_closed), UV_EALREADY);
  ck_assert_int_eq(uvip_addrwatch_start(w, on_watch), UV_EINVAL);
  th_run_until(&loop, &watch_closed, 10);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

/* Notifications the kernel had to drop are reported as one overrun (the
 * application re-reads the table), and the watcher keeps working: libuv
 * stops a poll handle on POLLERR, and the watcher used to stay deaf from
 * then on. */
START_TEST(test_addrwatch_overrun) {
  enter_netns();
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  uvip_addrwatch_t *w = NULL;
  ck_assert_int_eq(uvip_addrwatch_new(&loop, &w), 0);
  wlog_t log = {0};
  uvip_addrwatch_set_data(w, &log);
  ck_assert_int_eq(uvip_addrwatch_start(w, on_watch), 0);
  int size = 1;
  ck_assert_int_eq(setsockopt(watch_fd(), SOL_SOCKET, SO_RCVBUF, &size,
                              sizeof(size)), 0);
  sh("for i in $(seq 1 60); do ip addr add 10.96.1.$i/32 dev lo; done");
  wait_count(&loop, &log.n_overrun, 1);
  ck_assert_int_lt(log.n_new, 60);
  /* Still watching. */
  int before = log.n_new;
  sh("ip addr del 10.96.1.60/32 dev lo");
  wait_count(&loop, &log.n_del, 1);
  ck_assert_str_eq(log.last, "10.96.1.60");
  ck_assert_int_ge(log.n_new, before);
  watch_closed = false;
  ck_assert_int_eq(uvip_addrwatch_close(w, on_watch_closed), 0);
  th_run_until(&loop, &watch_closed, 10);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

/* A watcher that cannot get its netlink socket is not made. */
START_TEST(test_addrwatch_new_failures) {
  enter_netns();
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  uvip_addrwatch_t *w = (uvip_addrwatch_t *)1;
  int fds = count_fds();
  open_fail_err = EMFILE;
  ck_assert_int_eq(uvip_addrwatch_new(&loop, &w), UV_EMFILE);
  ck_assert_ptr_null(w);
  bind_fail_err = EPERM;
  ck_assert_int_eq(uvip_addrwatch_new(&loop, &w), UV_EPERM);
  ck_assert_ptr_null(w);
  ck_assert_int_eq(count_fds(), fds);
  ck_assert_ptr_null(uvip_addrwatch_get_data(NULL));
  uvip_addrwatch_set_data(NULL, &loop); /* ignored */
  ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

/* An overrun while reading (ENOBUFS from recvfrom) is reported and the
 * reading goes on; one reported by poll (POLLERR) whose callback closes
 * the watcher ends there: closed once, nothing after. */
START_TEST(test_addrwatch_overrun_paths) {
  enter_netns();
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  uvip_addrwatch_t *w = NULL;
  ck_assert_int_eq(uvip_addrwatch_new(&loop, &w), 0);
  wlog_t log = {0};
  uvip_addrwatch_set_data(w, &log);
  ck_assert_int_eq(uvip_addrwatch_start(w, on_watch), 0);
  recvfrom_enobufs = 1;
  sh("ip addr add 10.96.2.1/32 dev lo");
  wait_count(&loop, &log.n_new, 1);
  ck_assert_int_eq(recvfrom_enobufs, 0);
  ck_assert_int_eq(log.n_overrun, 1);
  ck_assert_str_eq(log.last, "10.96.2.1");

  log.close_on_overrun = true;
  int size = 1;
  ck_assert_int_eq(setsockopt(watch_fd(), SOL_SOCKET, SO_RCVBUF, &size,
                              sizeof(size)), 0);
  sh("for i in $(seq 1 60); do ip addr add 10.96.3.$i/32 dev lo; done");
  watch_closed = false;
  th_run_until(&loop, &watch_closed, 100);
  ck_assert_int_eq(log.n_overrun, 2);
  ck_assert_int_eq(log.n_new, 1);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

/* libuv refusing the poll handle: no watcher (and no descriptor left
 * open) when uv_poll_init fails; a start that fails leaves it stopped, so
 * that a later start works; a restart that fails after an overrun stops
 * the watcher the same way. */
START_TEST(test_addrwatch_poll_failures) {
  enter_netns();
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  int fds = count_fds();
  uvip_addrwatch_t *w = (uvip_addrwatch_t *)1;
  poll_init_err = UV_ENOMEM;
  ck_assert_int_eq(uvip_addrwatch_new(&loop, &w), UV_ENOMEM);
  ck_assert_ptr_null(w);
  ck_assert_int_eq(count_fds(), fds);

  ck_assert_int_eq(uvip_addrwatch_new(&loop, &w), 0);
  wlog_t log = {0};
  uvip_addrwatch_set_data(w, &log);
  poll_start_err = UV_ENOMEM;
  ck_assert_int_eq(uvip_addrwatch_start(w, on_watch), UV_ENOMEM);
  ck_assert_int_eq(uvip_addrwatch_start(w, on_watch), 0);
  sh("ip addr add 10.96.4.1/32 dev lo");
  wait_count(&loop, &log.n_new, 1);

  int size = 1;
  ck_assert_int_eq(setsockopt(watch_fd(), SOL_SOCKET, SO_RCVBUF, &size,
                              sizeof(size)), 0);
  poll_start_err = UV_ENOMEM;
  sh("for i in $(seq 1 60); do ip addr add 10.96.5.$i/32 dev lo; done");
  wait_count(&loop, &log.n_overrun, 1);
  ck_assert_int_eq(poll_start_err, 0);
  /* Stopped, not started: starting again works and events come (once
   * what was queued is read: until then the kernel drops notifications,
   * the overrun having been reported). */
  ck_assert_int_eq(uvip_addrwatch_start(w, on_watch), 0);
  size = 1 << 20;
  ck_assert_int_eq(setsockopt(watch_fd(), SOL_SOCKET, SO_RCVBUF, &size,
                              sizeof(size)), 0);
  int queued = log.n_new;
  th_run_until_quiet(&loop, 100);
  ck_assert_int_gt(log.n_new, queued);
  sh("ip addr del 10.96.4.1/32 dev lo");
  wait_count(&loop, &log.n_del, 1);
  ck_assert_str_eq(log.last, "10.96.4.1");
  watch_closed = false;
  ck_assert_int_eq(uvip_addrwatch_close(w, on_watch_closed), 0);
  th_run_until(&loop, &watch_closed, 10);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

int main(void) {
  th_require_netns_or_skip();
  Suite *s = suite_create("cov-net");
  TCase *tc = tcase_create("cov-net");
  tcase_add_test(tc, test_listen_options_applied);
  tcase_add_test(tc, test_listen_options_default);
  tcase_add_test(tc, test_listen_option_failures);
  tcase_add_test(tc, test_parse_addr);
  tcase_add_test(tc, test_rtnl_args);
  tcase_add_test(tc, test_provision_options);
  tcase_add_test(tc, test_provision_other_interface);
  tcase_add_test(tc, test_provision_interface_recreated);
  tcase_add_test(tc, test_provision_race_eexist);
  tcase_add_test(tc, test_provision_dump_interrupted);
  tcase_add_test(tc, test_provision_read_errors);
  tcase_add_test(tc, test_provision_ext_ack);
  tcase_add_test(tc, test_provision_socket_failures);
  tcase_add_test(tc, test_addrwatch_untrusted_input);
  tcase_add_test(tc, test_addrwatch_overrun);
  tcase_add_test(tc, test_addrwatch_new_failures);
  tcase_add_test(tc, test_addrwatch_overrun_paths);
  tcase_add_test(tc, test_addrwatch_poll_failures);
  tcase_add_test(tc, test_local_route_failures);
  tcase_add_test(tc, test_prefix_route_check_failures);
  suite_add_tcase(s, tc);
  return th_run_suite(s);
}
