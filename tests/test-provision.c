/* Provisioning (rtnetlink) and the live pool, inside a network namespace
 * that each test creates (check forks every test). Cross-checked with
 * `ip -j addr`.
 * SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/capability.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

#define POOL_SPEC "10.77.0.1-10.77.0.16,fd77::1-fd77::10"
#define POOL_SIZE 32

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

static void sh(const char *cmd) {
  int r = system(cmd);
  ck_assert_msg(r == 0, "'%s' failed (%d)", cmd, r);
}

/* A fresh netns with lo up and IPv6 on; the pool lives on lo (dummy
 * interfaces need a kernel module that may not be loadable). */
static void enter_netns(void) {
  th_enter_netns();
  sh("sysctl -qw net.ipv6.conf.all.disable_ipv6=0");
  sh("sysctl -qw net.ipv6.conf.lo.disable_ipv6=0");
}

static char *ip_json(void) {
  char *s = th_cmd_output("ip -j addr show dev lo");
  ck_assert_ptr_nonnull(s);
  ck_assert_msg(strstr(s, "\"ifname\":\"lo\"") != NULL, "ip -j: %s", s);
  return s;
}

/* How many times ip -j lists ip as a local address. */
static int ip_json_count(const char *json, const char *ip) {
  char key[96];
  int n = 0;
  snprintf(key, sizeof(key), "\"local\":\"%s\"", ip);
  for (const char *p = json; (p = strstr(p, key)) != NULL; p += strlen(key))
    n++;
  return n;
}

static void pool_ip(int i, char *buf, size_t len) {
  if (i < 16)
    snprintf(buf, len, "10.77.0.%d", i + 1);
  else
    snprintf(buf, len, "fd77::%x", i - 16 + 1);
}

static int find_prov(const uvip_provision_t *p, const char *ip) {
  struct sockaddr_storage sa;
  th_addr(ip, 0, &sa);
  for (size_t i = 0; i < uvip_provision_count(p); i++) {
    const struct sockaddr *a = uvip_provision_addr(p, i);
    if (a->sa_family != sa.ss_family)
      continue;
    if (a->sa_family == AF_INET &&
        ((const struct sockaddr_in *)a)->sin_addr.s_addr ==
            ((struct sockaddr_in *)&sa)->sin_addr.s_addr)
      return (int)i;
    if (a->sa_family == AF_INET6 &&
        memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
               &((struct sockaddr_in6 *)&sa)->sin6_addr, 16) == 0)
      return (int)i;
  }
  return -1;
}

/* Sends msg on fd and drives the loop until the echo comes back. */
static void echo_check(uv_loop_t *loop, int fd, const char *msg) {
  size_t n = strlen(msg);
  char buf[64];
  ck_assert_int_eq(write(fd, msg, n), (ssize_t)n);
  size_t got = 0;
  for (int turn = 0; turn < 2000 && got < n; turn++) {
    uv_run(loop, UV_RUN_NOWAIT);
    struct pollfd pfd = {fd, POLLIN, 0};
    if (poll(&pfd, 1, 5) == 1) {
      ssize_t r = read(fd, buf + got, sizeof(buf) - got);
      ck_assert_msg(r > 0, "read: %s", r < 0 ? strerror(errno) : "EOF");
      got += (size_t)r;
    }
  }
  ck_assert_uint_eq(got, n);
  ck_assert(memcmp(buf, msg, n) == 0);
}

static bool closed_flag;
static void on_server_closed(uvip_server_t *s) {
  (void)s;
  closed_flag = true;
}

static void close_server(uv_loop_t *loop, uvip_server_t *s) {
  closed_flag = false;
  uvip_server_close_conns(s);
  ck_assert_int_eq(uvip_server_close(s, on_server_closed), 0);
  th_run_until(loop, &closed_flag, 1000);
}

/* ------------------------------------------------------------------------ */
/* Provisioning                                                             */
/* ------------------------------------------------------------------------ */

START_TEST(test_args) {
  uvip_provision_t *p = (uvip_provision_t *)1;
  uvip_provision_options_t o;
  uvip_addrs_t *a = th_addrs("127.0.0.1", 0);
  uvip_addrs_t *empty = NULL;
  ck_assert_int_eq(uvip_addrs_new(&empty), 0);

  ck_assert_int_eq(uvip_provision_options_init(NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_provision_options_init(&o), 0);
  ck_assert_uint_eq(o.prefixlen4, 32);
  ck_assert_uint_eq(o.prefixlen6, 128);
  ck_assert_uint_eq(o.flags, 0);

  ck_assert_int_eq(uvip_provision_new("lo", a, NULL, NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_provision_new(NULL, a, NULL, &p), UV_EINVAL);
  ck_assert_ptr_null(p);
  ck_assert_int_eq(uvip_provision_new("lo", NULL, NULL, &p), UV_EINVAL);
  ck_assert_int_eq(uvip_provision_new("lo", empty, NULL, &p), UV_EINVAL);
  o.prefixlen4 = 33;
  ck_assert_int_eq(uvip_provision_new("lo", a, &o, &p), UV_EINVAL);
  uvip_provision_options_init(&o);
  o.prefixlen6 = 0;
  ck_assert_int_eq(uvip_provision_new("lo", a, &o, &p), UV_EINVAL);
  uvip_provision_options_init(&o);
  o.flags = 1u << 7;
  ck_assert_int_eq(uvip_provision_new("lo", a, &o, &p), UV_EINVAL);
  const char *bad[] = {"0.0.0.0", "224.0.0.1", "255.255.255.255", "::",
                       "ff02::1", "::ffff:10.0.0.1"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    uvip_addrs_t *b = th_addrs(bad[i], 0);
    ck_assert_msg(uvip_provision_new("lo", b, NULL, &p) == UV_EINVAL, "%s",
                  bad[i]);
    uvip_addrs_free(b);
  }
  ck_assert_int_eq(uvip_provision_new("", a, NULL, &p), UV_EINVAL);
  ck_assert_int_eq(uvip_provision_new("a-name-far-too-long", a, NULL, &p),
                   UV_EINVAL);

  ck_assert_int_eq(uvip_provision_apply(NULL, NULL, 0), UV_EINVAL);
  ck_assert_int_eq(uvip_provision_release(NULL, NULL, 0), UV_EINVAL);
  ck_assert_int_eq(uvip_provision_state(NULL, 0), UV_EINVAL);
  ck_assert_uint_eq(uvip_provision_count(NULL), 0);
  ck_assert_ptr_null(uvip_provision_addr(NULL, 0));
  uvip_provision_free(NULL);

  /* The same address with several ports is one address to provision. */
  uvip_addrs_t *ports = th_addrs("10.1.0.2:80,10.1.0.1:80,10.1.0.2:81", 0);
  ck_assert_int_eq(uvip_provision_new("lo", ports, NULL, &p), 0);
  ck_assert_uint_eq(uvip_provision_count(p), 2);
  char buf[UVIP_ADDRSTRLEN];
  ck_assert_int_eq(uvip_addr_format(uvip_provision_addr(p, 0), 0, buf,
                                    sizeof(buf)), 0);
  ck_assert_str_eq(buf, "10.1.0.2");
  ck_assert_int_eq(uvip_addr_format(uvip_provision_addr(p, 1), 0, buf,
                                    sizeof(buf)), 0);
  ck_assert_str_eq(buf, "10.1.0.1");
  ck_assert_ptr_null(uvip_provision_addr(p, 2));
  ck_assert_int_eq(uvip_provision_state(p, 0), UVIP_PROVISION_ABSENT);
  ck_assert_int_eq(uvip_provision_state(p, 2), UV_EINVAL);
  /* Nothing was added: freeing changes nothing. */
  uvip_provision_free(p);
  uvip_addrs_free(ports);
  uvip_addrs_free(a);
  uvip_addrs_free(empty);
}
END_TEST

START_TEST(test_unknown_interface) {
  uvip_addrs_t *a = th_addrs("10.77.0.1", 0);
  uvip_provision_t *p = NULL;
  ck_assert_int_eq(uvip_provision_new("nosuchif0", a, NULL, &p), UV_ENODEV);
  ck_assert_ptr_null(p);
  uvip_addrs_free(a);
}
END_TEST

/* Provision 16 IPv4 + 16 IPv6 addresses with one of each already present,
 * serve on all of them, release, and check that exactly uvip's addresses
 * went away. */
START_TEST(test_provision_serve_release) {
  enter_netns();
  sh("ip addr add 10.77.0.3/32 dev lo");
  sh("ip addr add fd77::3/128 dev lo nodad");
  char *before = ip_json();

  int port = th_free_port();
  uvip_addrs_t *pool = th_addrs(POOL_SPEC, port);
  uvip_provision_t *p = NULL;
  char err[256] = "";
  ck_assert_int_eq(uvip_provision_new("lo", pool, NULL, &p), 0);
  ck_assert_uint_eq(uvip_provision_count(p), POOL_SIZE);
  for (size_t i = 0; i < POOL_SIZE; i++)
    ck_assert_int_eq(uvip_provision_state(p, i), UVIP_PROVISION_ABSENT);

  int r = uvip_provision_apply(p, err, sizeof(err));
  ck_assert_msg(r == 0, "apply: %s (%s)", uv_strerror(r), err);
  char *json = ip_json();
  for (int i = 0; i < POOL_SIZE; i++) {
    char ip[64];
    pool_ip(i, ip, sizeof(ip));
    ck_assert_msg(ip_json_count(json, ip) == 1, "%s not on lo once", ip);
    int idx = find_prov(p, ip);
    ck_assert_int_ge(idx, 0);
    bool pre = strcmp(ip, "10.77.0.3") == 0 || strcmp(ip, "fd77::3") == 0;
    ck_assert_msg(uvip_provision_state(p, (size_t)idx) ==
                      (pre ? UVIP_PROVISION_FOREIGN : UVIP_PROVISION_ADDED),
                  "%s state %d", ip, uvip_provision_state(p, (size_t)idx));
  }
  free(json);

  /* Idempotent: a second apply adds nothing and keeps what it knows. */
  ck_assert_int_eq(uvip_provision_apply(p, err, sizeof(err)), 0);
  json = ip_json();
  for (int i = 0; i < POOL_SIZE; i++) {
    char ip[64];
    pool_ip(i, ip, sizeof(ip));
    ck_assert_int_eq(ip_json_count(json, ip), 1);
  }
  free(json);
  ck_assert_int_eq(uvip_provision_state(p, (size_t)find_prov(p, "10.77.0.1")),
                   UVIP_PROVISION_ADDED);
  ck_assert_int_eq(uvip_provision_state(p, (size_t)find_prov(p, "fd77::3")),
                   UVIP_PROVISION_FOREIGN);

  /* Serve on every address, connect to each, echo. */
  uv_loop_t loop;
  uv_loop_init(&loop);
  th_track_t t = {0};
  uvip_server_t *s = NULL;
  uvip_server_options_t so;
  uvip_server_options_init(&so);
  so.flags = UVIP_ALL_OR_NOTHING;
  ck_assert_int_eq(uvip_server_new(&loop, pool, &so, &s), 0);
  uvip_server_set_data(s, &t);
  r = uvip_server_listen(s, th_echo_on_connection, err, sizeof(err));
  ck_assert_msg(r == 0, "listen: %s", err);
  int fds[POOL_SIZE];
  for (int i = 0; i < POOL_SIZE; i++) {
    char ip[64];
    struct sockaddr_storage sa;
    pool_ip(i, ip, sizeof(ip));
    th_addr(ip, port, &sa);
    fds[i] = th_connect((struct sockaddr *)&sa, NULL);
    echo_check(&loop, fds[i], "hi");
  }
  ck_assert_int_eq(t.accepted, POOL_SIZE);
  for (size_t i = 0; i < POOL_SIZE; i++) {
    uvip_vip_stats_t st;
    uvip_vip_stats(uvip_server_vip(s, i), &st);
    ck_assert_uint_eq(st.accepted, 1);
  }
  for (int i = 0; i < POOL_SIZE; i++)
    close(fds[i]);
  close_server(&loop, s);
  ck_assert_int_eq(uv_loop_close(&loop), 0);

  /* Someone else removes one of ours first: it still counts as removed. */
  sh("ip addr del 10.77.0.16/32 dev lo");
  r = uvip_provision_release(p, err, sizeof(err));
  ck_assert_msg(r == 0, "release: %s (%s)", uv_strerror(r), err);
  for (size_t i = 0; i < POOL_SIZE; i++)
    ck_assert_int_ne(uvip_provision_state(p, i), UVIP_PROVISION_ADDED);
  json = ip_json();
  for (int i = 0; i < POOL_SIZE; i++) {
    char ip[64];
    pool_ip(i, ip, sizeof(ip));
    bool pre = strcmp(ip, "10.77.0.3") == 0 || strcmp(ip, "fd77::3") == 0;
    ck_assert_msg(ip_json_count(json, ip) == (pre ? 1 : 0), "%s", ip);
  }
  ck_assert_int_eq(ip_json_count(json, "127.0.0.1"), 1);
  ck_assert_int_eq(ip_json_count(json, "::1"), 1);
  /* The interface is exactly as it was before uvip touched it. */
  ck_assert_str_eq(json, before);
  free(json);

  /* Release twice, then free: nothing more to remove. */
  ck_assert_int_eq(uvip_provision_release(p, err, sizeof(err)), 0);
  uvip_provision_free(p);
  json = ip_json();
  ck_assert_str_eq(json, before);
  free(json);
  free(before);
  uvip_addrs_free(pool);
}
END_TEST

/* free() removes what was added, like release(). */
START_TEST(test_free_releases) {
  enter_netns();
  char *before = ip_json();
  uvip_addrs_t *pool = th_addrs("10.77.1.1-10.77.1.4,fd77:1::1", 0);
  uvip_provision_t *p = NULL;
  ck_assert_int_eq(uvip_provision_new("lo", pool, NULL, &p), 0);
  ck_assert_int_eq(uvip_provision_apply(p, NULL, 0), 0);
  char *json = ip_json();
  ck_assert_int_eq(ip_json_count(json, "10.77.1.4"), 1);
  ck_assert_int_eq(ip_json_count(json, "fd77:1::1"), 1);
  free(json);
  uvip_provision_free(p);
  json = ip_json();
  ck_assert_str_eq(json, before);
  free(json);
  free(before);
  uvip_addrs_free(pool);
}
END_TEST

/* The kernel refuses one address halfway: what this call added is taken
 * back, the pre-existing address stays, and the error names the address. */
START_TEST(test_rollback) {
  enter_netns();
  sh("ip addr add 10.77.2.2/32 dev lo");
  char *before = ip_json();
  /* IPv6 off on lo: the kernel refuses the IPv6 address after the IPv4
   * ones went in. */
  sh("sysctl -qw net.ipv6.conf.lo.disable_ipv6=1");
  char *before_v4 = ip_json();
  uvip_addrs_t *pool = th_addrs("10.77.2.1-10.77.2.4,fd77:2::9,10.77.2.5", 0);
  uvip_provision_t *p = NULL;
  char err[256] = "";
  ck_assert_int_eq(uvip_provision_new("lo", pool, NULL, &p), 0);
  int r = uvip_provision_apply(p, err, sizeof(err));
  ck_assert_int_lt(r, 0);
  ck_assert_msg(strstr(err, "fd77:2::9/128") != NULL, "errbuf: %s", err);
  ck_assert_msg(strstr(err, "lo") != NULL, "errbuf: %s", err);
  char *json = ip_json();
  ck_assert_str_eq(json, before_v4);
  ck_assert_int_eq(ip_json_count(json, "10.77.2.2"), 1);
  ck_assert_int_eq(ip_json_count(json, "10.77.2.1"), 0);
  free(json);
  for (size_t i = 0; i < uvip_provision_count(p); i++)
    ck_assert_int_ne(uvip_provision_state(p, i), UVIP_PROVISION_ADDED);
  ck_assert_int_eq(uvip_provision_state(p, (size_t)find_prov(p, "10.77.2.2")),
                   UVIP_PROVISION_FOREIGN);

  /* Once the kernel accepts it, a retry adds everything. */
  sh("sysctl -qw net.ipv6.conf.lo.disable_ipv6=0");
  free(before);
  before = ip_json();
  r = uvip_provision_apply(p, err, sizeof(err));
  ck_assert_msg(r == 0, "apply: %s", err);
  json = ip_json();
  ck_assert_int_eq(ip_json_count(json, "10.77.2.5"), 1);
  ck_assert_int_eq(ip_json_count(json, "fd77:2::9"), 1);
  free(json);
  ck_assert_int_eq(uvip_provision_release(p, err, sizeof(err)), 0);
  json = ip_json();
  ck_assert_str_eq(json, before);
  free(json);
  uvip_provision_free(p);
  uvip_addrs_free(pool);
  free(before);
  free(before_v4);
}
END_TEST

static int drop_net_admin(void) {
  struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct d[_LINUX_CAPABILITY_U32S_3];
  if (syscall(SYS_capget, &h, d) != 0)
    return -1;
  unsigned int bit = 1u << (CAP_NET_ADMIN % 32);
  d[CAP_NET_ADMIN / 32].effective &= ~bit;
  d[CAP_NET_ADMIN / 32].permitted &= ~bit;
  d[CAP_NET_ADMIN / 32].inheritable &= ~bit;
  return (int)syscall(SYS_capset, &h, d);
}

/* Without CAP_NET_ADMIN: UV_EPERM naming the address, and nothing changes. */
START_TEST(test_eperm) {
  enter_netns();
  char *before = ip_json();
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    /* Plain exit codes: check's assertions do not work in a grandchild. */
    free(before); /* the parent's copy: keeps leak checkers quiet */
    if (drop_net_admin() != 0)
      _exit(10);
    uvip_addrs_t *pool = NULL;
    uvip_provision_t *p = NULL;
    char err[256] = "";
    if (uvip_addrs_new(&pool) != 0 ||
        uvip_addrs_parse(pool, POOL_SPEC, 0, NULL, 0) != 0)
      _exit(11);
    if (uvip_provision_new("lo", pool, NULL, &p) != 0)
      _exit(12);
    if (uvip_provision_apply(p, err, sizeof(err)) != UV_EPERM)
      _exit(13);
    if (strstr(err, "10.77.0.1/32") == NULL ||
        strstr(err, uv_strerror(UV_EPERM)) == NULL)
      _exit(14);
    for (size_t i = 0; i < uvip_provision_count(p); i++)
      if (uvip_provision_state(p, i) != UVIP_PROVISION_ABSENT)
        _exit(15);
    uvip_provision_free(p);
    uvip_addrs_free(pool);
    _exit(0);
  }
  int status;
  ck_assert_int_eq(waitpid(pid, &status, 0), pid);
  ck_assert(WIFEXITED(status));
  ck_assert_msg(WEXITSTATUS(status) == 0, "child failed at step %d",
                WEXITSTATUS(status));
  char *after = ip_json();
  ck_assert_str_eq(after, before);
  free(after);
  free(before);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Address events and the live pool                                         */
/* ------------------------------------------------------------------------ */

typedef struct {
  int n;
  uvip_addr_event_t ev[64];
  char addr[64][UVIP_ADDRSTRLEN];
  unsigned int ifindex[64], prefixlen[64];
} watch_log_t;

static void on_watch(uvip_addrwatch_t *w, uvip_addr_event_t ev,
                     const struct sockaddr *addr, unsigned int ifindex,
                     unsigned int prefixlen, unsigned int flags) {
  watch_log_t *log = uvip_addrwatch_get_data(w);
  (void)flags;
  ck_assert_int_lt(log->n, 64);
  log->ev[log->n] = ev;
  log->addr[log->n][0] = 0;
  if (addr)
    ck_assert_int_eq(uvip_addr_format(addr, 0, log->addr[log->n],
                                      UVIP_ADDRSTRLEN), 0);
  log->ifindex[log->n] = ifindex;
  log->prefixlen[log->n] = prefixlen;
  log->n++;
}

static bool watch_closed;
static void on_watch_closed(uvip_addrwatch_t *w) {
  (void)w;
  watch_closed = true;
}

/* Runs the loop until the log holds want entries. */
static void watch_wait(uv_loop_t *loop, watch_log_t *log, int want) {
  for (int turn = 0; turn < 1000 && log->n < want; turn++)
    uv_run(loop, UV_RUN_ONCE);
  ck_assert_int_eq(log->n, want);
}

START_TEST(test_addrwatch) {
  enter_netns();
  uv_loop_t loop;
  uv_loop_init(&loop);
  uvip_addrwatch_t *w = (uvip_addrwatch_t *)1;
  ck_assert_int_eq(uvip_addrwatch_new(NULL, &w), UV_EINVAL);
  ck_assert_ptr_null(w);
  ck_assert_int_eq(uvip_addrwatch_new(&loop, NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_addrwatch_new(&loop, &w), 0);
  ck_assert_int_eq(uvip_addrwatch_start(w, NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_addrwatch_start(NULL, on_watch), UV_EINVAL);
  ck_assert_int_eq(uvip_addrwatch_stop(NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_addrwatch_close(NULL, NULL), UV_EINVAL);
  watch_log_t log = {0};
  uvip_addrwatch_set_data(w, &log);
  ck_assert_ptr_eq(uvip_addrwatch_get_data(w), &log);
  ck_assert_int_eq(uvip_addrwatch_start(w, on_watch), 0);
  ck_assert_int_eq(uvip_addrwatch_start(w, on_watch), UV_EALREADY);

  sh("ip addr add 10.77.4.1/32 dev lo");
  watch_wait(&loop, &log, 1);
  ck_assert_int_eq(log.ev[0], UVIP_ADDR_NEW);
  ck_assert_str_eq(log.addr[0], "10.77.4.1");
  ck_assert_uint_eq(log.ifindex[0], 1);
  ck_assert_uint_eq(log.prefixlen[0], 32);
  sh("ip addr add fd77:4::1/128 dev lo nodad");
  watch_wait(&loop, &log, 2);
  ck_assert_int_eq(log.ev[1], UVIP_ADDR_NEW);
  ck_assert_str_eq(log.addr[1], "fd77:4::1");
  ck_assert_uint_eq(log.prefixlen[1], 128);
  sh("ip addr del 10.77.4.1/32 dev lo");
  watch_wait(&loop, &log, 3);
  ck_assert_int_eq(log.ev[2], UVIP_ADDR_DEL);
  ck_assert_str_eq(log.addr[2], "10.77.4.1");

  /* Stopped: nothing is reported; the kernel keeps the event until start. */
  ck_assert_int_eq(uvip_addrwatch_stop(w), 0);
  sh("ip addr del fd77:4::1/128 dev lo");
  for (int i = 0; i < 10; i++)
    uv_run(&loop, UV_RUN_NOWAIT);
  ck_assert_int_eq(log.n, 3);
  ck_assert_int_eq(uvip_addrwatch_start(w, on_watch), 0);
  watch_wait(&loop, &log, 4);
  ck_assert_int_eq(log.ev[3], UVIP_ADDR_DEL);
  ck_assert_str_eq(log.addr[3], "fd77:4::1");

  watch_closed = false;
  ck_assert_int_eq(uvip_addrwatch_close(w, on_watch_closed), 0);
  ck_assert(!watch_closed); /* the callback comes from the loop */
  th_run_until(&loop, &watch_closed, 10);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

typedef struct {
  int up, down, failed;
  uvip_live_event_t last_ev;
  char last_addr[UVIP_ADDRSTRLEN];
  uvip_vip_t *last_vip;
} live_log_t;

static void on_live(uvip_livepool_t *lp, uvip_live_event_t ev,
                    const struct sockaddr *addr, uvip_vip_t *vip,
                    int status) {
  live_log_t *log = uvip_livepool_get_data(lp);
  ck_assert_ptr_nonnull(addr);
  ck_assert_int_eq(uvip_addr_format(addr, 1, log->last_addr,
                                    sizeof(log->last_addr)), 0);
  log->last_ev = ev;
  log->last_vip = vip;
  switch (ev) {
  case UVIP_LIVE_UP:
    ck_assert_int_eq(status, 0);
    ck_assert_int_eq(uvip_vip_state(vip), UVIP_VIP_LISTENING);
    log->up++;
    break;
  case UVIP_LIVE_DOWN:
    ck_assert_int_eq(status, 0);
    ck_assert_int_eq(uvip_vip_state(vip), UVIP_VIP_PAUSED);
    log->down++;
    break;
  case UVIP_LIVE_FAILED:
    ck_assert_int_lt(status, 0);
    if (vip != NULL)
      ck_assert_int_eq(uvip_vip_state(vip), UVIP_VIP_FAILED);
    log->failed++;
    break;
  }
}

static bool live_closed;
static void on_live_closed(uvip_livepool_t *lp) {
  (void)lp;
  live_closed = true;
}

/* Runs the loop until *counter reaches want. */
static void live_wait(uv_loop_t *loop, const int *counter, int want) {
  for (int turn = 0; turn < 1000 && *counter < want; turn++)
    uv_run(loop, UV_RUN_ONCE);
  ck_assert_int_eq(*counter, want);
}

/* The server's VIP for ip:port (NULL if none). */
static uvip_vip_t *vip_of(uvip_server_t *s, const char *ip, int port) {
  struct sockaddr_storage sa;
  char want[UVIP_ADDRSTRLEN], got[UVIP_ADDRSTRLEN];
  th_addr(ip, port, &sa);
  ck_assert_int_eq(uvip_addr_format((struct sockaddr *)&sa, 1, want,
                                    sizeof(want)), 0);
  for (size_t i = 0; i < uvip_server_vip_count(s); i++) {
    uvip_vip_t *v = uvip_server_vip(s, i);
    ck_assert_int_eq(uvip_addr_format(uvip_vip_addr(v), 1, got, sizeof(got)),
                     0);
    if (strcmp(got, want) == 0)
      return v;
  }
  return NULL;
}

static uint64_t vip_accepted(const uvip_vip_t *v) {
  uvip_vip_stats_t st;
  ck_assert_int_eq(uvip_vip_stats(v, &st), 0);
  return st.accepted;
}

static uint64_t vip_active(const uvip_vip_t *v) {
  uvip_vip_stats_t st;
  ck_assert_int_eq(uvip_vip_stats(v, &st), 0);
  return st.active;
}

static int try_connect(const char *ip, int port) {
  struct sockaddr_storage sa;
  th_addr(ip, port, &sa);
  int fd = socket(sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ck_assert_int_ge(fd, 0);
  int r = connect(fd, (struct sockaddr *)&sa,
                  sa.ss_family == AF_INET ? sizeof(struct sockaddr_in)
                                          : sizeof(struct sockaddr_in6));
  int err = errno;
  close(fd);
  return r == 0 ? 0 : -err;
}

/* Cross-check with ss(8): is a TCP socket listening on ip:port? */
static bool has_listener(const char *ip, int port) {
  char cmd[128], want[96];
  snprintf(cmd, sizeof(cmd), "ss -Hltn 'sport = :%d'", port);
  snprintf(want, sizeof(want), " %s:%d ", ip, port);
  char *out = th_cmd_output(cmd);
  ck_assert_ptr_nonnull(out);
  bool found = strstr(out, want) != NULL;
  free(out);
  return found;
}

static int tcp_state(int fd) {
  struct tcp_info ti;
  socklen_t len = sizeof(ti);
  ck_assert_int_eq(getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len), 0);
  return ti.tcpi_state;
}

static int connect_ip(const char *ip, int port) {
  struct sockaddr_storage sa;
  th_addr(ip, port, &sa);
  return th_connect((struct sockaddr *)&sa, NULL);
}

/* Addresses come and go under a live server: the listener of a deleted
 * address closes (its VIP is paused), its connection stays up and echoes,
 * other VIPs keep accepting; the address comes back and the same VIP
 * serves again, its counters going on; an address that was missing when
 * the server started is served once it appears, by the VIP that failed to
 * bind at uvip_server_listen(). The server never gets a second VIP. */
START_TEST(test_livepool) {
  enter_netns();
  /* Once an address is removed the kernel stops delivering packets to it, so
   * its connections would stall whatever uvip does. These "local" routes
   * keep loopback packets to the pool flowing, so that a connection to a
   * removed address is refused (no listener) rather than unroutable, and
   * IPv6 connections keep echoing. They live in a table of their own:
   * bind() consults only the local table (and, for IPv6, the address
   * list), so a removed address still cannot be bound. IPv4 sockets whose
   * own address is gone cannot send at all (the kernel checks the source
   * address on output), so the IPv4 connection is checked to stay
   * established and to echo again once its address is back. */
  sh("ip rule add to 10.77.3.0/24 lookup 100 pref 100");
  sh("ip route add local 10.77.3.0/24 dev lo table 100 src 127.0.0.1");
  sh("ip -6 rule add to fd77:3::/64 lookup 100 pref 100");
  sh("ip -6 route add local fd77:3::/64 dev lo table 100");

  int port = th_free_port();
  uvip_addrs_t *prov_addrs =
      th_addrs("10.77.3.1-10.77.3.4,fd77:3::1-fd77:3::4", port);
  uvip_provision_t *p = NULL;
  char err[256] = "";
  ck_assert_int_eq(uvip_provision_new("lo", prov_addrs, NULL, &p), 0);
  ck_assert_msg(uvip_provision_apply(p, err, sizeof(err)) == 0, "%s", err);

  /* The pool has one more address, not on the host yet. */
  uvip_addrs_t *pool =
      th_addrs("10.77.3.1-10.77.3.4,fd77:3::1-fd77:3::4,10.77.3.9", port);
  uv_loop_t loop;
  uv_loop_init(&loop);
  th_track_t t = {0};
  uvip_server_t *s = NULL;
  ck_assert_int_eq(uvip_server_new(&loop, pool, NULL, &s), 0);
  uvip_server_set_data(s, &t);

  uvip_livepool_t *lp = (uvip_livepool_t *)1;
  ck_assert_int_eq(uvip_livepool_new(NULL, pool, &lp), UV_EINVAL);
  ck_assert_ptr_null(lp);
  ck_assert_int_eq(uvip_livepool_new(s, NULL, &lp), UV_EINVAL);
  uvip_addrs_t *noport = th_addrs("10.77.3.1", 0);
  ck_assert_int_eq(uvip_livepool_new(s, noport, &lp), UV_EINVAL);
  uvip_addrs_free(noport);
  ck_assert_int_eq(uvip_livepool_new(s, pool, &lp), 0);
  live_log_t log = {0};
  uvip_livepool_set_data(lp, &log);
  /* The server must be listening first. */
  ck_assert_int_eq(uvip_livepool_start(lp, on_live), UV_EINVAL);
  ck_assert_int_eq(uvip_server_listen(s, th_echo_on_connection, NULL, 0), 0);
  ck_assert_int_eq(uvip_livepool_start(lp, NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_livepool_start(lp, on_live), 0);
  ck_assert_int_eq(uvip_livepool_start(lp, on_live), UV_EALREADY);
  ck_assert_int_eq(log.up, 0); /* events come from the loop */

  /* The first sync reports the 8 listening VIPs; 10.77.3.9 is absent. */
  live_wait(&loop, &log.up, 8);
  ck_assert_uint_eq(uvip_livepool_up_count(lp), 8);
  ck_assert_int_eq(log.failed, 0);
  ck_assert(!has_listener("10.77.3.9", port));
  ck_assert(has_listener("10.77.3.1", port));
  ck_assert(has_listener("[fd77:3::4]", port));
  /* 10.77.3.9 keeps the VIP that failed to bind at listen. */
  ck_assert_uint_eq(uvip_server_vip_count(s), 9);
  uvip_vip_t *v9 = vip_of(s, "10.77.3.9", port);
  ck_assert_ptr_nonnull(v9);
  ck_assert_int_eq(uvip_vip_state(v9), UVIP_VIP_FAILED);
  ck_assert_int_eq(uvip_vip_error(v9), UV_EADDRNOTAVAIL);
  /* Both data pointers stay the application's. */
  ck_assert_ptr_eq(uvip_server_get_data(s), &t);
  ck_assert_ptr_null(uvip_vip_get_data(v9));

  int a = connect_ip("10.77.3.2", port);
  int b = connect_ip("fd77:3::2", port);
  echo_check(&loop, a, "a1");
  echo_check(&loop, b, "b1");
  ck_assert_int_eq(t.accepted, 2);
  uvip_vip_t *va = uvip_conn_vip(t.conns[0]);
  uvip_vip_t *vb = uvip_conn_vip(t.conns[1]);
  ck_assert_ptr_eq(va, vip_of(s, "10.77.3.2", port));
  ck_assert_ptr_eq(vb, vip_of(s, "fd77:3::2", port));
  ck_assert_uint_eq(vip_accepted(va), 1);
  ck_assert_uint_eq(vip_accepted(vb), 1);
  int app_data;
  uvip_vip_set_data(va, &app_data);

  /* Delete an IPv4 and an IPv6 address under the live server. */
  char want[UVIP_ADDRSTRLEN];
  sh("ip addr del 10.77.3.2/32 dev lo");
  live_wait(&loop, &log.down, 1);
  snprintf(want, sizeof(want), "10.77.3.2:%d", port);
  ck_assert_str_eq(log.last_addr, want);
  ck_assert_ptr_eq(log.last_vip, va);
  sh("ip addr del fd77:3::2/128 dev lo");
  live_wait(&loop, &log.down, 2);
  snprintf(want, sizeof(want), "[fd77:3::2]:%d", port);
  ck_assert_str_eq(log.last_addr, want);
  ck_assert_ptr_eq(log.last_vip, vb);
  ck_assert_uint_eq(uvip_livepool_up_count(lp), 6);

  /* Their VIPs are paused, not replaced. */
  ck_assert_uint_eq(uvip_server_vip_count(s), 9);
  ck_assert_ptr_eq(vip_of(s, "10.77.3.2", port), va);
  ck_assert_ptr_eq(vip_of(s, "fd77:3::2", port), vb);
  ck_assert_ptr_eq(uvip_vip_get_data(va), &app_data);
  /* Their listeners are closed: a new connection is refused... */
  ck_assert_int_eq(uvip_vip_state(va), UVIP_VIP_PAUSED);
  ck_assert_int_eq(uvip_vip_state(vb), UVIP_VIP_PAUSED);
  ck_assert_int_eq(uvip_vip_fd(va), UV_EBADF);
  ck_assert_int_eq(uvip_vip_fd(vb), UV_EBADF);
  ck_assert(!has_listener("10.77.3.2", port));
  ck_assert(!has_listener("[fd77:3::2]", port));
  ck_assert(has_listener("10.77.3.1", port));
  ck_assert_int_eq(try_connect("fd77:3::2", port), -ECONNREFUSED);
  /* ...their established connections stay up (IPv6 still echoes)... */
  ck_assert_int_eq(tcp_state(a), TCP_ESTABLISHED);
  ck_assert_int_eq(tcp_state(b), TCP_ESTABLISHED);
  echo_check(&loop, b, "b2");
  ck_assert_int_eq(t.closed, 0);
  ck_assert_ptr_nonnull(t.conns[0]);
  ck_assert_ptr_eq(uvip_conn_vip(t.conns[0]), va);
  uvip_vip_stats_t st;
  ck_assert_int_eq(uvip_vip_stats(va, &st), 0);
  ck_assert_uint_eq(st.active, 1);
  ck_assert_uint_eq(st.accepted, 1);
  ck_assert_uint_eq(vip_active(vb), 1);
  ck_assert_ptr_eq(uvip_conn_vip(t.conns[1]), vb);
  ck_assert_int_eq(tcp_state(a), TCP_ESTABLISHED);
  /* ...and the other VIPs keep accepting. */
  int c = connect_ip("10.77.3.1", port);
  int d = connect_ip("fd77:3::4", port);
  echo_check(&loop, c, "c1");
  echo_check(&loop, d, "d1");
  ck_assert_int_eq(t.accepted, 4);
  ck_assert_int_eq(log.up, 8);
  ck_assert_int_eq(uvip_vip_state(va), UVIP_VIP_PAUSED);

  /* The addresses come back: the same VIPs listen again, with the
   * connections they kept. */
  sh("ip addr add 10.77.3.2/32 dev lo");
  live_wait(&loop, &log.up, 9);
  snprintf(want, sizeof(want), "10.77.3.2:%d", port);
  ck_assert_str_eq(log.last_addr, want);
  ck_assert_ptr_eq(log.last_vip, va);
  ck_assert_int_eq(uvip_vip_state(va), UVIP_VIP_LISTENING);
  sh("ip addr add fd77:3::2/128 dev lo nodad");
  live_wait(&loop, &log.up, 10);
  ck_assert_ptr_eq(log.last_vip, vb);
  ck_assert_int_eq(uvip_vip_state(vb), UVIP_VIP_LISTENING);
  ck_assert_uint_eq(uvip_livepool_up_count(lp), 8);
  ck_assert_uint_eq(uvip_server_vip_count(s), 9);
  ck_assert_ptr_eq(vip_of(s, "10.77.3.2", port), va);
  ck_assert_ptr_eq(vip_of(s, "fd77:3::2", port), vb);
  ck_assert_ptr_eq(uvip_vip_get_data(va), &app_data);
  ck_assert(has_listener("10.77.3.2", port));
  ck_assert(has_listener("[fd77:3::2]", port));
  int a2 = connect_ip("10.77.3.2", port);
  int b2 = connect_ip("fd77:3::2", port);
  echo_check(&loop, a2, "a3");
  echo_check(&loop, b2, "b3");
  ck_assert_int_eq(t.accepted, 6);
  /* The new connections land on the same VIPs, whose counters go on. */
  ck_assert_ptr_eq(uvip_conn_vip(t.conns[4]), va);
  ck_assert_ptr_eq(uvip_conn_vip(t.conns[5]), vb);
  ck_assert_int_eq(uvip_vip_stats(va, &st), 0);
  ck_assert_uint_eq(st.accepted, 2);
  ck_assert_uint_eq(st.active, 2);
  ck_assert_uint_eq(vip_accepted(vb), 2);
  ck_assert_uint_eq(vip_active(vb), 2);
  echo_check(&loop, a, "a4");
  echo_check(&loop, b, "b4");

  /* The kept connections close like any other, on the same VIPs, which
   * keep listening. */
  close(a);
  live_wait(&loop, &t.closed, 1);
  ck_assert_int_eq(uvip_vip_stats(va, &st), 0);
  ck_assert_uint_eq(st.active, 1);
  ck_assert_uint_eq(st.closed, 1);
  close(b);
  live_wait(&loop, &t.closed, 2);
  ck_assert_uint_eq(vip_active(vb), 1);
  ck_assert_int_eq(uvip_vip_state(va), UVIP_VIP_LISTENING);
  ck_assert_int_eq(uvip_vip_state(vb), UVIP_VIP_LISTENING);

  /* An address missing at start is served once it appears, by the VIP
   * that failed at listen (resumed, not added). */
  sh("ip addr add 10.77.3.9/32 dev lo");
  live_wait(&loop, &log.up, 11);
  snprintf(want, sizeof(want), "10.77.3.9:%d", port);
  ck_assert_str_eq(log.last_addr, want);
  ck_assert_ptr_eq(log.last_vip, v9);
  ck_assert_uint_eq(uvip_livepool_up_count(lp), 9);
  ck_assert_uint_eq(uvip_server_vip_count(s), 9);
  int e = connect_ip("10.77.3.9", port);
  echo_check(&loop, e, "e1");
  ck_assert_ptr_eq(uvip_conn_vip(t.conns[6]), v9);
  ck_assert_uint_eq(vip_accepted(v9), 1);
  ck_assert_int_eq(log.failed, 0);

  live_closed = false;
  ck_assert_int_eq(uvip_livepool_close(lp, on_live_closed), 0);
  ck_assert_int_eq(uvip_livepool_close(lp, on_live_closed), UV_EALREADY);
  th_run_until(&loop, &live_closed, 100);
  /* Closed: the server is left as it was, and events no longer matter. */
  sh("ip addr del 10.77.3.9/32 dev lo");
  for (int i = 0; i < 10; i++)
    uv_run(&loop, UV_RUN_NOWAIT);
  ck_assert_int_eq(log.down, 2);
  ck_assert_int_eq(uvip_vip_state(uvip_conn_vip(t.conns[6])),
                   UVIP_VIP_LISTENING);

  close(a2);
  close(b2);
  close(c);
  close(d);
  close(e);
  close_server(&loop, s);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  ck_assert_msg(uvip_provision_release(p, err, sizeof(err)) == 0, "%s", err);
  uvip_provision_free(p);
  uvip_addrs_free(pool);
  uvip_addrs_free(prov_addrs);
}
END_TEST

/* Runs a few loop turns without blocking (the first sync is a 0 ms timer). */
static void spin(uv_loop_t *loop) {
  for (int i = 0; i < 20; i++) {
    uv_run(loop, UV_RUN_NOWAIT);
    usleep(1000);
  }
}

/* None of the pool's addresses exists when the server starts: with
 * UVIP_ALLOW_EMPTY the server listens with no VIP bound, the live pool
 * starts, and each address is served by its own VIP once it appears. */
START_TEST(test_livepool_empty_start) {
  enter_netns();
  int port = th_free_port();
  uvip_addrs_t *pool = th_addrs("10.77.8.1-10.77.8.2,fd77:8::1", port);
  uv_loop_t loop;
  uv_loop_init(&loop);
  th_track_t t = {0};
  uvip_server_t *s = NULL;

  /* Without UVIP_ALLOW_EMPTY the server cannot listen, so the live pool
   * cannot start. */
  ck_assert_int_eq(uvip_server_new(&loop, pool, NULL, &s), 0);
  ck_assert_int_eq(uvip_server_listen(s, th_echo_on_connection, NULL, 0),
                   UV_EADDRNOTAVAIL);
  ck_assert_int_eq(uvip_server_is_listening(s), 0);
  uvip_livepool_t *lp = NULL;
  ck_assert_int_eq(uvip_livepool_new(s, pool, &lp), 0);
  ck_assert_int_eq(uvip_livepool_start(lp, on_live), UV_EINVAL);
  live_closed = false;
  ck_assert_int_eq(uvip_livepool_close(lp, on_live_closed), 0);
  th_run_until(&loop, &live_closed, 100);
  close_server(&loop, s);

  uvip_server_options_t so;
  uvip_server_options_init(&so);
  so.flags = UVIP_ALLOW_EMPTY;
  ck_assert_int_eq(uvip_server_new(&loop, pool, &so, &s), 0);
  uvip_server_set_data(s, &t);
  ck_assert_int_eq(uvip_server_listen(s, th_echo_on_connection, NULL, 0), 0);
  ck_assert_int_eq(uvip_server_is_listening(s), 1);
  uvip_vip_t *v1 = vip_of(s, "10.77.8.1", port);
  uvip_vip_t *v6 = vip_of(s, "fd77:8::1", port);
  ck_assert_ptr_nonnull(v1);
  ck_assert_ptr_nonnull(v6);
  ck_assert_int_eq(uvip_vip_state(v1), UVIP_VIP_FAILED);

  live_log_t log = {0};
  ck_assert_int_eq(uvip_livepool_new(s, pool, &lp), 0);
  uvip_livepool_set_data(lp, &log);
  ck_assert_int_eq(uvip_livepool_start(lp, on_live), 0);
  spin(&loop);
  /* Nothing to serve, and absence is no failure. */
  ck_assert_int_eq(log.up, 0);
  ck_assert_int_eq(log.down, 0);
  ck_assert_int_eq(log.failed, 0);
  ck_assert_uint_eq(uvip_livepool_up_count(lp), 0);
  ck_assert(!has_listener("10.77.8.1", port));

  sh("ip addr add 10.77.8.1/32 dev lo");
  live_wait(&loop, &log.up, 1);
  char want[UVIP_ADDRSTRLEN];
  snprintf(want, sizeof(want), "10.77.8.1:%d", port);
  ck_assert_str_eq(log.last_addr, want);
  ck_assert_ptr_eq(log.last_vip, v1);
  ck_assert_int_eq(uvip_vip_state(v1), UVIP_VIP_LISTENING);
  ck_assert(has_listener("10.77.8.1", port));
  int fd = connect_ip("10.77.8.1", port);
  echo_check(&loop, fd, "x1");
  ck_assert_uint_eq(vip_accepted(v1), 1);

  sh("ip addr add fd77:8::1/128 dev lo nodad");
  live_wait(&loop, &log.up, 2);
  ck_assert_ptr_eq(log.last_vip, v6);
  int fd6 = connect_ip("fd77:8::1", port);
  echo_check(&loop, fd6, "x2");
  ck_assert_uint_eq(vip_accepted(v6), 1);
  ck_assert_uint_eq(uvip_livepool_up_count(lp), 2);
  ck_assert_uint_eq(uvip_server_vip_count(s), 3);
  ck_assert_int_eq(log.failed, 0);

  close(fd);
  close(fd6);
  live_closed = false;
  ck_assert_int_eq(uvip_livepool_close(lp, on_live_closed), 0);
  th_run_until(&loop, &live_closed, 100);
  close_server(&loop, s);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  uvip_addrs_free(pool);
}
END_TEST

/* A server with no VIPs at all (UVIP_ALLOW_EMPTY): an address never seen
 * before gets a VIP from uvip_server_add_vip(); when it goes and comes
 * back, that VIP is paused and resumed, never added again. */
START_TEST(test_livepool_no_vips) {
  enter_netns();
  int port = th_free_port();
  uvip_addrs_t *pool = th_addrs("10.77.9.1", port);
  uvip_addrs_t *none = NULL;
  ck_assert_int_eq(uvip_addrs_new(&none), 0);
  uv_loop_t loop;
  uv_loop_init(&loop);
  th_track_t t = {0};
  uvip_server_t *s = NULL;
  uvip_server_options_t so;
  uvip_server_options_init(&so);
  so.flags = UVIP_ALLOW_EMPTY;
  ck_assert_int_eq(uvip_server_new(&loop, none, &so, &s), 0);
  uvip_server_set_data(s, &t);
  ck_assert_int_eq(uvip_server_listen(s, th_echo_on_connection, NULL, 0), 0);
  uvip_livepool_t *lp = NULL;
  live_log_t log = {0};
  ck_assert_int_eq(uvip_livepool_new(s, pool, &lp), 0);
  uvip_livepool_set_data(lp, &log);
  ck_assert_int_eq(uvip_livepool_start(lp, on_live), 0);
  spin(&loop);
  ck_assert_int_eq(log.up + log.down + log.failed, 0);
  ck_assert_uint_eq(uvip_server_vip_count(s), 0);

  sh("ip addr add 10.77.9.1/32 dev lo");
  live_wait(&loop, &log.up, 1);
  ck_assert_uint_eq(uvip_server_vip_count(s), 1);
  uvip_vip_t *v = uvip_server_vip(s, 0);
  ck_assert_ptr_eq(log.last_vip, v);
  int fd = connect_ip("10.77.9.1", port);
  echo_check(&loop, fd, "y1");
  ck_assert_uint_eq(vip_accepted(v), 1);

  sh("ip addr del 10.77.9.1/32 dev lo");
  live_wait(&loop, &log.down, 1);
  ck_assert_ptr_eq(log.last_vip, v);
  ck_assert_int_eq(uvip_vip_state(v), UVIP_VIP_PAUSED);
  ck_assert_int_eq(tcp_state(fd), TCP_ESTABLISHED);
  ck_assert_uint_eq(vip_active(v), 1);

  sh("ip addr add 10.77.9.1/32 dev lo");
  live_wait(&loop, &log.up, 2);
  ck_assert_ptr_eq(log.last_vip, v);
  ck_assert_uint_eq(uvip_server_vip_count(s), 1);
  int fd2 = connect_ip("10.77.9.1", port);
  echo_check(&loop, fd2, "y2");
  echo_check(&loop, fd, "y3");
  ck_assert_uint_eq(vip_accepted(v), 2);
  ck_assert_uint_eq(vip_active(v), 2);
  ck_assert_int_eq(log.failed, 0);

  close(fd);
  close(fd2);
  live_closed = false;
  ck_assert_int_eq(uvip_livepool_close(lp, on_live_closed), 0);
  th_run_until(&loop, &live_closed, 100);
  close_server(&loop, s);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  uvip_addrs_free(pool);
  uvip_addrs_free(none);
}
END_TEST

/* The only netlink socket the process holds: the live pool's watcher. */
static int find_netlink_fd(void) {
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

/* Lost events: with a tiny receive buffer the kernel drops the deletions;
 * the overrun makes the live pool probe every address and still close the
 * listeners of the ones that went. */
START_TEST(test_livepool_overrun) {
  enter_netns();
  int port = th_free_port();
  uvip_addrs_t *pool = th_addrs("10.77.5.1-10.77.5.4", port);
  uvip_provision_t *p = NULL;
  ck_assert_int_eq(uvip_provision_new("lo", pool, NULL, &p), 0);
  ck_assert_int_eq(uvip_provision_apply(p, NULL, 0), 0);
  uv_loop_t loop;
  uv_loop_init(&loop);
  th_track_t t = {0};
  uvip_server_t *s = NULL;
  ck_assert_int_eq(uvip_server_new(&loop, pool, NULL, &s), 0);
  uvip_server_set_data(s, &t);
  ck_assert_int_eq(uvip_server_listen(s, th_echo_on_connection, NULL, 0), 0);
  uvip_livepool_t *lp = NULL;
  live_log_t log = {0};
  ck_assert_int_eq(uvip_livepool_new(s, pool, &lp), 0);
  uvip_livepool_set_data(lp, &log);
  ck_assert_int_eq(uvip_livepool_start(lp, on_live), 0);
  live_wait(&loop, &log.up, 4);

  int fd = find_netlink_fd();
  int size = 1; /* the kernel rounds it up to its minimum */
  ck_assert_int_eq(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size)),
                   0);
  /* While the loop does not run, unrelated changes fill the buffer; the
   * deletions that follow are dropped. */
  sh("for i in $(seq 1 40); do ip addr add 10.77.6.$i/32 dev lo; done");
  sh("ip addr del 10.77.5.2/32 dev lo");
  sh("ip addr del 10.77.5.3/32 dev lo");
  live_wait(&loop, &log.down, 2);
  ck_assert_uint_eq(uvip_livepool_up_count(lp), 2);
  ck_assert(!has_listener("10.77.5.2", port));
  ck_assert(!has_listener("10.77.5.3", port));
  ck_assert(has_listener("10.77.5.1", port));
  ck_assert(has_listener("10.77.5.4", port));

  live_closed = false;
  ck_assert_int_eq(uvip_livepool_close(lp, on_live_closed), 0);
  th_run_until(&loop, &live_closed, 100);
  close_server(&loop, s);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  uvip_provision_free(p);
  uvip_addrs_free(pool);
}
END_TEST

/* An address appears but its port is taken: UVIP_LIVE_FAILED with the
 * error (once), and served at the next event once the port is free. */
START_TEST(test_livepool_failed) {
  enter_netns();
  int port = th_free_port();
  uvip_addrs_t *pool = th_addrs("10.77.7.1-10.77.7.2", port);
  sh("ip addr add 10.77.7.1/32 dev lo");
  uv_loop_t loop;
  uv_loop_init(&loop);
  th_track_t t = {0};
  uvip_server_t *s = NULL;
  ck_assert_int_eq(uvip_server_new(&loop, pool, NULL, &s), 0);
  uvip_server_set_data(s, &t);
  ck_assert_int_eq(uvip_server_listen(s, th_echo_on_connection, NULL, 0), 0);
  uvip_livepool_t *lp = NULL;
  live_log_t log = {0};
  ck_assert_int_eq(uvip_livepool_new(s, pool, &lp), 0);
  uvip_livepool_set_data(lp, &log);
  ck_assert_int_eq(uvip_livepool_start(lp, on_live), 0);
  live_wait(&loop, &log.up, 1);

  /* Another socket holds 10.77.7.2:port before the address exists. */
  struct sockaddr_storage sa;
  th_addr("10.77.7.2", port, &sa);
  int blocker = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  ck_assert_int_eq(setsockopt(blocker, IPPROTO_IP, IP_FREEBIND, &one,
                              sizeof(one)), 0);
  ck_assert_int_eq(bind(blocker, (struct sockaddr *)&sa,
                        sizeof(struct sockaddr_in)), 0);
  ck_assert_int_eq(listen(blocker, 1), 0);
  sh("ip addr add 10.77.7.2/32 dev lo");
  live_wait(&loop, &log.failed, 1);
  ck_assert_int_eq(log.last_ev, UVIP_LIVE_FAILED);
  char want[UVIP_ADDRSTRLEN];
  snprintf(want, sizeof(want), "10.77.7.2:%d", port);
  ck_assert_str_eq(log.last_addr, want);
  uvip_vip_t *v2 = vip_of(s, "10.77.7.2", port);
  ck_assert_ptr_nonnull(v2);
  ck_assert_ptr_eq(log.last_vip, v2);
  ck_assert_int_eq(uvip_vip_error(v2), UV_EADDRINUSE);
  ck_assert_uint_eq(uvip_livepool_up_count(lp), 1);

  /* The port is freed; the next event for the address brings it up. */
  close(blocker);
  sh("ip addr del 10.77.7.2/32 dev lo");
  sh("ip addr add 10.77.7.2/32 dev lo");
  live_wait(&loop, &log.up, 2);
  ck_assert_str_eq(log.last_addr, want);
  ck_assert_ptr_eq(log.last_vip, v2); /* the failed VIP, resumed */
  ck_assert_uint_eq(uvip_server_vip_count(s), 2);
  ck_assert_int_eq(log.failed, 1);
  ck_assert_uint_eq(uvip_livepool_up_count(lp), 2);
  int fd = connect_ip("10.77.7.2", port);
  echo_check(&loop, fd, "f1");
  close(fd);

  live_closed = false;
  ck_assert_int_eq(uvip_livepool_close(lp, on_live_closed), 0);
  th_run_until(&loop, &live_closed, 100);
  close_server(&loop, s);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  uvip_addrs_free(pool);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Local routes for prefix pools                                            */
/* ------------------------------------------------------------------------ */

static uvip_prefix_t prefix_of(const char *spec) {
  uvip_prefix_t p;
  ck_assert_int_eq(uvip_prefix_parse(spec, &p, NULL, 0), 0);
  return p;
}

/* How many lines of `ip [-6] route show table local` contain want. */
static int local_routes(int v6, const char *want) {
  char *out = th_cmd_output(v6 ? "ip -6 route show table local"
                               : "ip route show table local");
  int n = 0;
  ck_assert_ptr_nonnull(out);
  for (const char *q = out; (q = strstr(q, want)) != NULL; q += strlen(want))
    n++;
  free(out);
  return n;
}

START_TEST(test_local_route) {
  uvip_prefix_t p = prefix_of("fd00:1::5/64");
  uvip_provision_t *prov;
  uvip_connector_t *c;
  uv_loop_t loop;
  char err[256], ip[UVIP_ADDRSTRLEN];

  enter_netns();
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  ck_assert_int_eq(uvip_provision_new_local_route("lo", &p, NULL, &prov), 0);
  ck_assert_uint_eq(uvip_provision_count(prov), 1);
  ck_assert_int_eq(uvip_addr_format(uvip_provision_addr(prov, 0), 0, ip, sizeof(ip)), 0);
  ck_assert_str_eq(ip, "fd00:1::");
  ck_assert_int_eq(uvip_provision_state(prov, 0), UVIP_PROVISION_ABSENT);
  ck_assert_int_eq(uvip_connector_new_prefix(&loop, &p, UVIP_PREFIX_SPREAD, NULL,
                                             err, sizeof(err), &c),
                   UV_EADDRNOTAVAIL);

  /* Added: the prefix is usable as a connector's sources. */
  ck_assert_int_eq(uvip_provision_apply(prov, err, sizeof(err)), 0);
  ck_assert_int_eq(uvip_provision_state(prov, 0), UVIP_PROVISION_ADDED);
  ck_assert_int_eq(local_routes(1, "local fd00:1::/64 dev lo proto static"), 1);
  ck_assert_int_eq(uvip_connector_new_prefix(&loop, &p, UVIP_PREFIX_SPREAD, NULL,
                                             err, sizeof(err), &c),
                   0);
  ck_assert_int_eq(uvip_connector_close(c, NULL), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  /* Again: still ours, still one route. */
  ck_assert_int_eq(uvip_provision_apply(prov, err, sizeof(err)), 0);
  ck_assert_int_eq(uvip_provision_state(prov, 0), UVIP_PROVISION_ADDED);
  ck_assert_int_eq(local_routes(1, "fd00:1::/64"), 1);
  ck_assert_int_eq(uvip_provision_release(prov, err, sizeof(err)), 0);
  ck_assert_int_eq(uvip_provision_state(prov, 0), UVIP_PROVISION_ABSENT);
  ck_assert_int_eq(local_routes(1, "fd00:1::/64"), 0);
  ck_assert_int_eq(uvip_provision_release(prov, err, sizeof(err)), 0);

  /* Someone removed ours: released all the same. */
  ck_assert_int_eq(uvip_provision_apply(prov, err, sizeof(err)), 0);
  sh("ip -6 route del local fd00:1::/64 dev lo table local");
  ck_assert_int_eq(uvip_provision_release(prov, err, sizeof(err)), 0);
  ck_assert_int_eq(uvip_provision_state(prov, 0), UVIP_PROVISION_ABSENT);
  /* free() removes what it added. */
  ck_assert_int_eq(uvip_provision_apply(prov, err, sizeof(err)), 0);
  ck_assert_int_eq(local_routes(1, "fd00:1::/64"), 1);
  uvip_provision_free(prov);
  ck_assert_int_eq(local_routes(1, "fd00:1::/64"), 0);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

/* A route that is already there is someone else's: never removed. */
START_TEST(test_local_route_foreign) {
  uvip_prefix_t p = prefix_of("198.18.8.0/24");
  uvip_provision_t *prov;
  char err[256];

  enter_netns();
  sh("ip route add local 198.18.8.0/24 dev lo proto static");
  ck_assert_int_eq(uvip_provision_new_local_route("lo", &p, NULL, &prov), 0);
  ck_assert_int_eq(uvip_provision_apply(prov, err, sizeof(err)), 0);
  ck_assert_int_eq(uvip_provision_state(prov, 0), UVIP_PROVISION_FOREIGN);
  ck_assert_int_eq(uvip_provision_release(prov, err, sizeof(err)), 0);
  uvip_provision_free(prov);
  ck_assert_int_eq(local_routes(0, "local 198.18.8.0/24 dev lo"), 1);
}
END_TEST

START_TEST(test_local_route_args) {
  uvip_prefix_t p = prefix_of("fd00:1::/64"), q;
  uvip_provision_t *prov = (uvip_provision_t *)&p;
  uvip_provision_options_t o;

  enter_netns();
  ck_assert_int_eq(uvip_provision_new_local_route("lo", &p, NULL, NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_provision_new_local_route(NULL, &p, NULL, &prov), UV_EINVAL);
  ck_assert_ptr_null(prov);
  ck_assert_int_eq(uvip_provision_new_local_route("lo", NULL, NULL, &prov), UV_EINVAL);
  q = p;
  q.len = 129;
  ck_assert_int_eq(uvip_provision_new_local_route("lo", &q, NULL, &prov), UV_EINVAL);
  const char *refused[] = {"::/0", "0.0.0.0/0", "ff02::/16", "224.0.0.0/4",
                           "::ffff:10.0.0.0/104"};
  for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
    q = prefix_of(refused[i]);
    ck_assert_msg(uvip_provision_new_local_route("lo", &q, NULL, &prov) == UV_EINVAL,
                  "%s", refused[i]);
  }
  uvip_provision_options_init(&o);
  o.flags = 1u << 7;
  ck_assert_int_eq(uvip_provision_new_local_route("lo", &p, &o, &prov), UV_EINVAL);
  ck_assert_int_eq(uvip_provision_new_local_route("nosuch0", &p, NULL, &prov),
                   UV_ENODEV);
  ck_assert_ptr_null(prov);
}
END_TEST

/* Without CAP_NET_ADMIN: the error names the route, nothing is left. */
START_TEST(test_local_route_eperm) {
  enter_netns();
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    uvip_prefix_t p;
    uvip_provision_t *prov;
    char err[256] = "";
    if (drop_net_admin() != 0)
      _exit(10);
    if (uvip_prefix_parse("fd00:1::/64", &p, NULL, 0) != 0 ||
        uvip_provision_new_local_route("lo", &p, NULL, &prov) != 0)
      _exit(11);
    if (uvip_provision_apply(prov, err, sizeof(err)) != UV_EPERM)
      _exit(12);
    if (strstr(err, "add local route fd00:1::/64 dev lo: ") == NULL ||
        strstr(err, uv_strerror(UV_EPERM)) == NULL)
      _exit(13);
    if (uvip_provision_state(prov, 0) != UVIP_PROVISION_ABSENT)
      _exit(14);
    uvip_provision_free(prov);
    _exit(0);
  }
  int status;
  ck_assert_int_eq(waitpid(pid, &status, 0), pid);
  ck_assert(WIFEXITED(status));
  ck_assert_msg(WEXITSTATUS(status) == 0, "child failed at step %d",
                WEXITSTATUS(status));
  ck_assert_int_eq(local_routes(1, "fd00:1::/64"), 0);
}
END_TEST

int main(void) {
  /* Every test enters a namespace of its own: skip them all here, before
   * check forks, when that is not permitted. */
  th_require_netns_or_skip();
  Suite *s = suite_create("provision");
  TCase *tc = tcase_create("provision");
  tcase_add_test(tc, test_args);
  tcase_add_test(tc, test_unknown_interface);
  tcase_add_test(tc, test_provision_serve_release);
  tcase_add_test(tc, test_free_releases);
  tcase_add_test(tc, test_rollback);
  tcase_add_test(tc, test_eperm);
  tcase_add_test(tc, test_addrwatch);
  tcase_add_test(tc, test_livepool);
  tcase_add_test(tc, test_livepool_empty_start);
  tcase_add_test(tc, test_livepool_no_vips);
  tcase_add_test(tc, test_livepool_overrun);
  tcase_add_test(tc, test_livepool_failed);
  tcase_add_test(tc, test_local_route);
  tcase_add_test(tc, test_local_route_foreign);
  tcase_add_test(tc, test_local_route_args);
  tcase_add_test(tc, test_local_route_eperm);
  suite_add_tcase(s, tc);
  return th_run_suite(s);
}
