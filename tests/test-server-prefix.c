/* Inbound on a prefix (uvip_server_add_prefix()): one listener takes the
 * connections to 1,000 distinct addresses of a /64 under a local route,
 * accounts them to /112 groups with a cap per group, filters connections
 * to other addresses of the host; bad input (group longer or shorter than
 * it may be, a missing or partial local route, a port in use, PROXY
 * protocol, arguments) fails with a clear message and nothing set up.
 *
 * Every test runs in its own network namespace (check forks each test).
 * SPDX-License-Identifier: MIT */
#include "helpers.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/capability.h>
#include <sched.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define PORT 7100
#define N_GROUPS 100
#define PER_GROUP 10
#define NCONN (N_GROUPS * PER_GROUP)

static uv_loop_t loop;
static uv_timer_t poll_timer;
static uvip_server_t *server;
static uvip_vip_t *pvip;
static uvip_conn_t *conns[NCONN + 16];
static int nconns, client_fds[NCONN + 16], nclients;
static bool done, closed;

static void sh(const char *cmd) {
  ck_assert_msg(system(cmd) == 0, "command failed: %s", cmd);
}

static uvip_prefix_t prefix_of(const char *spec) {
  uvip_prefix_t p;
  ck_assert_int_eq(uvip_prefix_parse(spec, &p, NULL, 0), 0);
  return p;
}

static void setup_server(unsigned int flags) {
  uvip_server_options_t o;
  uvip_addrs_t *none;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  ck_assert_int_eq(uvip_addrs_new(&none), 0);
  uvip_server_options_init(&o);
  o.flags = flags | UVIP_ALLOW_EMPTY;
  ck_assert_int_eq(uvip_server_new(&loop, none, &o, &server), 0);
  uvip_addrs_free(none);
  nconns = nclients = 0;
  done = closed = false;
}

/* The address every accepted connection was sent to is inside the prefix,
 * and its group is that address cut to the group's length. */
static void on_conn(uvip_server_t *s, uvip_conn_t *c) {
  struct sockaddr_storage local;
  uvip_prefix_t g, want;
  char buf[UVIP_ADDRSTRLEN + 8];
  (void)s;
  ck_assert_int_lt(nconns, NCONN + 16);
  conns[nconns++] = c;
  ck_assert_ptr_eq(uvip_conn_vip(c), pvip);
  ck_assert_int_eq(uvip_conn_local(c, &local), 0);
  ck_assert_int_eq(uvip_conn_group(c, &g), 0);
  ck_assert_int_eq(uvip_addr_format((struct sockaddr *)&local, 0, buf,
                                    sizeof(buf) - 8), 0);
  strcat(buf, "/");
  snprintf(buf + strlen(buf), 8, "%u", g.len);
  want = prefix_of(buf); /* host bits cleared */
  ck_assert_int_eq(g.family, want.family);
  ck_assert_int_eq(memcmp(&g.addr, &want.addr, sizeof(g.addr)), 0);
  ck_assert_int_eq(uvip_prefix_contains(&g, (struct sockaddr *)&local), 1);
}

static uint64_t want_settled;

/* Polls the counters until the connections sent are all accepted or
 * refused: a condition, not a delay. */
static void on_poll(uv_timer_t *t) {
  uvip_vip_stats_t vs;
  uvip_prefix_stats_t ps;
  uvip_vip_stats(pvip, &vs);
  uvip_vip_prefix_stats(pvip, &ps);
  if (vs.accepted + ps.group_refused + ps.outside >= want_settled) {
    done = true;
    uv_timer_stop(t);
  }
}

static void settle(uint64_t n) {
  want_settled = n;
  done = false;
  uv_timer_start(&poll_timer, on_poll, 1, 1);
  th_run_until(&loop, &done, 1000000);
}

static void connect_to(const char *ip) {
  struct sockaddr_storage sa;
  th_addr(ip, PORT, &sa);
  ck_assert_int_lt(nclients, NCONN + 16);
  client_fds[nclients++] = th_connect_nb((struct sockaddr *)&sa);
}

/* The client of a refused connection is reset. */
static void assert_reset(int fd) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  char b;
  ck_assert_int_eq(poll(&p, 1, 10000), 1);
  ck_assert_int_eq(recv(fd, &b, 1, 0), -1);
  ck_assert_int_eq(errno, ECONNRESET);
}

static void group_active(const char *ip, uint64_t want) {
  struct sockaddr_storage sa;
  uint64_t n = 99;
  th_addr(ip, 0, &sa);
  ck_assert_int_eq(uvip_vip_group_active(pvip, (struct sockaddr *)&sa, &n), 0);
  ck_assert_msg(n == want, "%s: %llu open, want %llu", ip,
                (unsigned long long)n, (unsigned long long)want);
}

static void on_server_closed(uvip_server_t *s) {
  (void)s;
  closed = true;
}

static void teardown_server(void) {
  for (int i = 0; i < nconns; i++)
    uvip_conn_close(conns[i], NULL);
  for (int i = 0; i < nclients; i++)
    close(client_fds[i]);
  uv_close((uv_handle_t *)&poll_timer, NULL);
  ck_assert_int_eq(uvip_server_close(server, on_server_closed), 0);
  th_run_until(&loop, &closed, 100000);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
}

START_TEST(test_thousand_addresses) {
  uvip_prefix_listen_t o;
  uvip_prefix_stats_t ps;
  uvip_vip_stats_t vs;
  char err[256], ip[64];

  th_enter_netns();
  sh("ip -6 route add local fd00:1::/64 dev lo");
  setup_server(0);
  uv_timer_init(&loop, &poll_timer);
  ck_assert_int_eq(uvip_prefix_listen_init(&o), 0);
  o.prefix = prefix_of("fd00:1::/64");
  o.port = PORT;
  o.group_len = 112;
  o.max_conns_per_group = PER_GROUP;
  ck_assert_int_eq(uvip_server_add_prefix(server, &o, err, sizeof(err), &pvip),
                   0);
  ck_assert_int_eq(uvip_server_listen(server, on_conn, NULL, 0), 0);

  /* 100 groups (fd00:1::G:0/112) of 10 distinct addresses each. */
  for (int g = 1; g <= N_GROUPS; g++)
    for (int i = 1; i <= PER_GROUP; i++) {
      snprintf(ip, sizeof(ip), "fd00:1::%x:%x", g, i * 7);
      connect_to(ip);
    }
  settle(NCONN);
  ck_assert_int_eq(nconns, NCONN);
  ck_assert_int_eq(uvip_vip_prefix_stats(pvip, &ps), 0);
  ck_assert_uint_eq(ps.groups, N_GROUPS);
  ck_assert_uint_eq(ps.groups_peak, N_GROUPS);
  ck_assert_uint_eq(ps.group_refused, 0);
  ck_assert_uint_eq(ps.outside, 0);
  group_active("fd00:1::1:ffff", PER_GROUP);
  group_active("fd00:1::64:0", PER_GROUP);
  group_active("fd00:1::65:1", 0); /* no connection there */
  group_active("fd00:2::1", 0);    /* outside the prefix */

  /* Group 1 is full: the eleventh is refused, group 2's neighbour too,
   * while a connection to the host's other address on the port (::1)
   * reaches the wildcard socket and is closed as outside. */
  connect_to("fd00:1::1:abcd");
  connect_to("fd00:1::2:1");
  connect_to("::1");
  settle(NCONN + 3);
  assert_reset(client_fds[NCONN]);
  assert_reset(client_fds[NCONN + 1]);
  assert_reset(client_fds[NCONN + 2]);
  ck_assert_int_eq(uvip_vip_prefix_stats(pvip, &ps), 0);
  ck_assert_uint_eq(ps.group_refused, 2);
  ck_assert_uint_eq(ps.outside, 1);
  ck_assert_int_eq(nconns, NCONN);

  /* A slot freed in group 1 takes the next connection to it. */
  uvip_conn_close(conns[0], NULL);
  conns[0] = conns[--nconns];
  th_run_until_quiet(&loop, 1000);
  group_active("fd00:1::1:0", PER_GROUP - 1);
  connect_to("fd00:1::1:beef");
  settle(NCONN + 4);
  ck_assert_int_eq(nconns, NCONN);
  group_active("fd00:1::1:0", PER_GROUP);
  ck_assert_int_eq(uvip_vip_stats(pvip, &vs), 0);
  ck_assert_uint_eq(vs.accepted, NCONN + 1);
  ck_assert_uint_eq(vs.active, NCONN);

  /* Groups leave the table with their last connection. */
  for (int i = 0; i < nconns; i++)
    uvip_conn_close(conns[i], NULL);
  nconns = 0;
  th_run_until_quiet(&loop, 1000);
  ck_assert_int_eq(uvip_vip_prefix_stats(pvip, &ps), 0);
  ck_assert_uint_eq(ps.groups, 0);
  ck_assert_uint_eq(ps.groups_peak, N_GROUPS);
  group_active("fd00:1::1:0", 0);
  teardown_server();
}
END_TEST

static bool drained;

static void on_drained(uvip_vip_t *v, int by_timeout) {
  (void)v;
  ck_assert_int_eq(by_timeout, 0);
  drained = true;
}

/* IPv4, one group for the whole prefix (group_len 0), a listener added
 * while the server listens and then removed with its connections open. */
START_TEST(test_ipv4_one_group_drain) {
  uvip_prefix_listen_t o;
  uvip_prefix_t g;
  uvip_vip_t *plain;
  struct sockaddr_storage sa;

  th_enter_netns();
  sh("ip route add local 198.18.0.0/24 dev lo");
  setup_server(0);
  uv_timer_init(&loop, &poll_timer);
  th_addr("127.0.0.1", PORT + 1, &sa);
  ck_assert_int_eq(uvip_server_add_vip(server, (struct sockaddr *)&sa, &plain),
                   0);
  ck_assert_int_eq(uvip_server_listen(server, on_conn, NULL, 0), 0);
  uvip_prefix_listen_init(&o);
  o.prefix = prefix_of("198.18.0.0/24");
  o.port = PORT;
  o.max_conns_per_group = 2;
  ck_assert_int_eq(uvip_server_add_prefix(server, &o, NULL, 0, &pvip), 0);
  connect_to("198.18.0.5");
  connect_to("198.18.0.200");
  connect_to("198.18.0.9");
  settle(3);
  ck_assert_int_eq(nconns, 2);
  assert_reset(client_fds[2]);
  ck_assert_int_eq(uvip_conn_group(conns[0], &g), 0);
  ck_assert_int_eq(g.family, AF_INET);
  ck_assert_uint_eq(g.len, 24);
  ck_assert_uint_eq(ntohl(g.addr.v4.s_addr), 0xc6120000u);
  group_active("198.18.0.77", 2);

  /* The plain VIP is no prefix VIP. */
  {
    uvip_prefix_stats_t ps;
    uint64_t n;
    ck_assert_int_eq(uvip_vip_prefix_stats(plain, &ps), UV_EINVAL);
    ck_assert_int_eq(uvip_vip_group_active(plain, (struct sockaddr *)&sa, &n),
                     UV_EINVAL);
  }
  /* Drained with its connections: they close, the VIP and its groups go. */
  drained = false;
  ck_assert_int_eq(uvip_server_remove_vip(server, pvip, 0, on_drained), 0);
  for (int i = 0; i < nconns; i++)
    uvip_conn_close(conns[i], NULL);
  nconns = 0;
  th_run_until(&loop, &drained, 100000);
  ck_assert_uint_eq(uvip_server_vip_count(server), 1);
  teardown_server();
}
END_TEST

static void on_plain_conn(uvip_server_t *s, uvip_conn_t *c) {
  uvip_prefix_t g;
  (void)s;
  ck_assert_int_eq(uvip_conn_group(c, &g), UV_ENOENT);
  conns[nconns++] = c;
  done = true;
}

START_TEST(test_bad_input) {
  uvip_prefix_listen_t o;
  char err[256];
  int fd;
  struct sockaddr_storage sa;

  th_enter_netns();
  setup_server(0);

  /* No local route in a fresh namespace: the message names the route and
   * the command that adds it; nothing was added. */
  uvip_prefix_listen_init(&o);
  o.prefix = prefix_of("fd00:1::/64");
  o.port = PORT;
  o.group_len = 112;
  ck_assert_int_eq(uvip_server_add_prefix(server, &o, err, sizeof(err), NULL),
                   UV_EADDRNOTAVAIL);
  ck_assert_msg(strstr(err, "no local route for fd00:1::/64") &&
                    strstr(err, "'ip -6 route add local fd00:1::/64 dev lo'"),
                "%s", err);
  ck_assert_uint_eq(uvip_server_vip_count(server), 0);

  /* A route for the first half of the prefix: its middle address is not
   * local. */
  sh("ip -6 route add local fd00:1::/65 dev lo");
  ck_assert_int_eq(uvip_server_add_prefix(server, &o, err, sizeof(err), NULL),
                   UV_EADDRNOTAVAIL);
  ck_assert_msg(strstr(err, "(fd00:1:0:0:8000:: is not local)"), "%s", err);
  /* Three quarters: the last address is not local. */
  sh("ip -6 route add local fd00:1:0:0:8000::/66 dev lo");
  ck_assert_int_eq(uvip_server_add_prefix(server, &o, err, sizeof(err), NULL),
                   UV_EADDRNOTAVAIL);
  ck_assert_msg(strstr(err, "(fd00:1::ffff:ffff:ffff:ffff is not local)"),
                "%s", err);
  /* IPv4 names its own command. */
  o.prefix = prefix_of("198.18.0.0/24");
  o.group_len = 0;
  ck_assert_int_eq(uvip_server_add_prefix(server, &o, err, sizeof(err), NULL),
                   UV_EADDRNOTAVAIL);
  ck_assert_msg(strstr(err, "'ip route add local 198.18.0.0/24 dev lo'"), "%s",
                err);
  sh("ip -6 route add local fd00:1::/64 dev lo");

  /* The prefix too short for the group size, and the other way round. */
  o.prefix = prefix_of("fd00:1::/120");
  o.group_len = 112;
  ck_assert_int_eq(uvip_server_add_prefix(server, &o, err, sizeof(err), NULL),
                   UV_EINVAL);
  ck_assert_msg(strstr(err, "group /112 is shorter than the prefix "
                            "fd00:1::/120"),
                "%s", err);
  /* Families mixed: an IPv6 group length on an IPv4 prefix. */
  o.prefix = prefix_of("198.18.0.0/24");
  ck_assert_int_eq(uvip_server_add_prefix(server, &o, err, sizeof(err), NULL),
                   UV_EINVAL);
  ck_assert_msg(strstr(err, "group /112 does not fit IPv4 (at most /32)"),
                "%s", err);
  o.prefix = prefix_of("fd00:1::/64");
  o.group_len = 129;
  ck_assert_int_eq(uvip_server_add_prefix(server, &o, err, sizeof(err), NULL),
                   UV_EINVAL);
  ck_assert_msg(strstr(err, "does not fit IPv6"), "%s", err);
  o.group_len = 112;
  o.port = 0;
  ck_assert_int_eq(uvip_server_add_prefix(server, &o, err, sizeof(err), NULL),
                   UV_EINVAL);
  ck_assert_msg(strstr(err, "bad port 0 for fd00:1::/64"), "%s", err);
  o.port = PORT;
  o.mode = (uvip_prefix_mode_t)7;
  ck_assert_int_eq(uvip_server_add_prefix(server, &o, err, sizeof(err), NULL),
                   UV_EINVAL);
  ck_assert_msg(strstr(err, "unknown prefix mode 7"), "%s", err);
  o.mode = UVIP_PREFIX_WILDCARD;
  o.prefix.family = AF_UNIX;
  ck_assert_int_eq(uvip_server_add_prefix(server, &o, err, sizeof(err), NULL),
                   UV_EINVAL);
  ck_assert_msg(strstr(err, "invalid prefix"), "%s", err);
  o.prefix = prefix_of("fd00:1::/64");
  ck_assert_uint_eq(uvip_server_vip_count(server), 0);

  /* Arguments. */
  ck_assert_int_eq(uvip_server_add_prefix(NULL, &o, NULL, 0, NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_server_add_prefix(server, NULL, NULL, 0, NULL),
                   UV_EINVAL);
  ck_assert_int_eq(uvip_prefix_listen_init(NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_vip_prefix_stats(NULL, NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_vip_group_active(NULL, NULL, NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_conn_group(NULL, NULL), UV_EINVAL);

  /* The port's wildcard is taken by another socket: the bind error, with
   * the address, and no VIP left behind. */
  th_addr("::", PORT, &sa);
  fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(struct sockaddr_in6)),
                   0);
  ck_assert_int_eq(listen(fd, 1), 0);
  ck_assert_int_eq(uvip_server_listen(server, on_plain_conn, NULL, 0), 0);
  ck_assert_int_eq(uvip_server_add_prefix(server, &o, err, sizeof(err), NULL),
                   UV_EADDRINUSE);
  ck_assert_msg(strstr(err, "[::]:7100: address already in use"), "%s", err);
  ck_assert_uint_eq(uvip_server_vip_count(server), 0);
  close(fd);

  /* Twice on one port and family: the second finds the first. */
  ck_assert_int_eq(uvip_server_add_prefix(server, &o, err, sizeof(err), &pvip),
                   0);
  ck_assert_int_eq(uvip_server_add_prefix(server, &o, err, sizeof(err), NULL),
                   UV_EEXIST);
  ck_assert_msg(strstr(err, "[::]:7100 is already a VIP"), "%s", err);
  ck_assert_uint_eq(uvip_server_vip_count(server), 1);

  /* A connection of an ordinary VIP has no group. */
  th_addr("::1", PORT + 2, &sa);
  ck_assert_int_eq(uvip_server_add_vip(server, (struct sockaddr *)&sa, NULL),
                   0);
  client_fds[nclients++] = th_connect_nb((struct sockaddr *)&sa);
  th_run_until(&loop, &done, 100000);
  uv_timer_init(&loop, &poll_timer);
  teardown_server();
}
END_TEST

/* The address a client sent to is in the PROXY header, not the socket. */
START_TEST(test_proxy_protocol_refused) {
  uvip_prefix_listen_t o;
  char err[256];
  th_enter_netns();
  sh("ip -6 route add local fd00:1::/64 dev lo");
  setup_server(UVIP_PROXY_PROTOCOL);
  uvip_prefix_listen_init(&o);
  o.prefix = prefix_of("fd00:1::/64");
  o.port = PORT;
  ck_assert_int_eq(uvip_server_add_prefix(server, &o, err, sizeof(err), NULL),
                   UV_ENOTSUP);
  ck_assert_msg(strstr(err, "not with UVIP_PROXY_PROTOCOL"), "%s", err);
  ck_assert_uint_eq(uvip_server_vip_count(server), 0);
  uv_timer_init(&loop, &poll_timer);
  teardown_server();
}
END_TEST

/* A program of ours on the port's wildcard, as another service would be. */
static int other_service(int port) {
  struct sockaddr_storage sa;
  int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ck_assert_int_ge(fd, 0);
  th_addr("::", port, &sa);
  ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(struct sockaddr_in6)),
                   0);
  ck_assert_int_eq(listen(fd, 16), 0);
  return fd;
}

/* The other service gets a connection (waits for it: blocking). */
static void other_accepts(int fd) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  ck_assert_int_eq(poll(&p, 1, 10000), 1);
  int c = accept(fd, NULL, NULL);
  ck_assert_int_ge(c, 0);
  close(c);
}

/* sk_lookup: the prefix's connections come to our socket although another
 * service listens on the port's wildcard, which keeps the rest; once the
 * server is closed the program is gone and the prefix goes to the kernel's
 * own lookup (the other service) again. */
START_TEST(test_sk_lookup) {
  uvip_prefix_listen_t o;
  uvip_prefix_stats_t ps;
  char err[256], a[UVIP_ADDRSTRLEN];
  int other;

  th_enter_netns();
  sh("ip -6 route add local fd00:1::/64 dev lo");
  other = other_service(PORT);
  setup_server(0);
  uv_timer_init(&loop, &poll_timer);
  uvip_prefix_listen_init(&o);
  o.prefix = prefix_of("fd00:1::/64");
  o.port = PORT;
  o.mode = UVIP_PREFIX_SK_LOOKUP;
  o.group_len = 112;
  o.max_conns_per_group = 2;
  ck_assert_int_eq(uvip_server_add_prefix(server, &o, err, sizeof(err), &pvip),
                   0);
  ck_assert_int_eq(uvip_addr_format(uvip_vip_addr(pvip), 1, a, sizeof(a)), 0);
  ck_assert_str_eq(a, "[fd00:1::]:7100");
  ck_assert_int_eq(uvip_server_listen(server, on_conn, NULL, 0), 0);
  ck_assert_int_eq(uvip_vip_state(pvip), UVIP_VIP_LISTENING);
  connect_to("fd00:1::5:1");
  connect_to("fd00:1::5:2");
  connect_to("fd00:1::6:1");
  connect_to("fd00:1::5:3");
  settle(4);
  ck_assert_int_eq(nconns, 3);
  assert_reset(client_fds[3]);
  ck_assert_int_eq(uvip_vip_prefix_stats(pvip, &ps), 0);
  ck_assert_uint_eq(ps.groups, 2);
  ck_assert_uint_eq(ps.group_refused, 1);
  ck_assert_uint_eq(ps.outside, 0);
  /* Not the prefix: the other service's. */
  connect_to("::1");
  other_accepts(other);
  teardown_server();
  nclients = 0;
  connect_to("fd00:1::7:1");
  other_accepts(other);
  close(client_fds[0]);
  close(other);
}
END_TEST

/* Without CAP_BPF, CAP_SYS_ADMIN and CAP_NET_ADMIN the kernel refuses the
 * program: a clear error, no VIP, no descriptor left behind. */
START_TEST(test_sk_lookup_refused) {
  struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct d[2], saved[2];
  uvip_prefix_listen_t o;
  char err[256];
  int fds, r;

  th_enter_netns();
  sh("ip -6 route add local fd00:1::/64 dev lo");
  ck_assert_int_eq(syscall(SYS_capget, &h, d), 0);
  memcpy(saved, d, sizeof(saved));
  d[0].effective &= ~((1u << CAP_SYS_ADMIN) | (1u << CAP_NET_ADMIN));
  d[1].effective &= ~(1u << (CAP_BPF - 32));
  ck_assert_int_eq(syscall(SYS_capset, &h, d), 0);
  setup_server(0);
  uvip_prefix_listen_init(&o);
  o.prefix = prefix_of("fd00:1::/64");
  o.port = PORT;
  o.mode = UVIP_PREFIX_SK_LOOKUP;
  fds = th_count_fds();
  r = uvip_server_add_prefix(server, &o, err, sizeof(err), NULL);
  ck_assert_int_eq(r, UV_EPERM);
  ck_assert_msg(strstr(err, "BPF sk_lookup refused: bpf(") &&
                    strstr(err, "operation not permitted (needs CAP_BPF and "
                                "CAP_NET_ADMIN)"),
                "%s", err);
  ck_assert_int_eq(th_count_fds(), fds);
  ck_assert_uint_eq(uvip_server_vip_count(server), 0);
  /* The wildcard way needs no privilege. */
  o.mode = UVIP_PREFIX_WILDCARD;
  ck_assert_int_eq(uvip_server_add_prefix(server, &o, err, sizeof(err), NULL),
                   0);
  uv_timer_init(&loop, &poll_timer);
  teardown_server();
  /* Only the effective set was lowered: under valgrind (CK_FORK=no) the
   * next tests run in this process and need them back. */
  ck_assert_int_eq(syscall(SYS_capset, &h, saved), 0);
}
END_TEST

/* Whether the kernel here lets us attach an sk_lookup program (in a child
 * and a namespace of its own, before check forks). */
static bool sk_lookup_works(void) {
  pid_t pid;
  int st;
  fflush(NULL);
  if ((pid = fork()) == 0) {
    uvip_prefix_listen_t o;
    if (unshare(CLONE_NEWNET) != 0 ||
        system("ip link set lo up && ip -6 route add local fd00:1::/64 dev lo") != 0)
      _exit(1);
    uvip_addrs_t *none;
    if (uv_loop_init(&loop) != 0 || uvip_addrs_new(&none) != 0 ||
        uvip_server_new(&loop, none, NULL, &server) != 0)
      _exit(1);
    uvip_prefix_listen_init(&o);
    uvip_prefix_parse("fd00:1::/64", &o.prefix, NULL, 0);
    o.port = PORT;
    o.mode = UVIP_PREFIX_SK_LOOKUP;
    char err[256];
    if (uvip_server_add_prefix(server, &o, err, sizeof(err), NULL) == 0)
      _exit(0);
    fprintf(stderr, "%s\n", err);
    _exit(1);
  }
  return pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) &&
         WEXITSTATUS(st) == 0;
}

int main(void) {
  /* Every test enters a namespace of its own: skip them all here, before
   * check forks, when that is not permitted. */
  th_require_netns_or_skip();
  Suite *s = suite_create("server-prefix");
  TCase *tc = tcase_create("server-prefix");
  tcase_add_test(tc, test_thousand_addresses);
  tcase_add_test(tc, test_ipv4_one_group_drain);
  tcase_add_test(tc, test_bad_input);
  tcase_add_test(tc, test_proxy_protocol_refused);
  tcase_add_test(tc, test_sk_lookup_refused);
  if (sk_lookup_works())
    tcase_add_test(tc, test_sk_lookup);
  else
    fprintf(stderr, "test_sk_lookup not run: the kernel refuses BPF "
                    "sk_lookup here\n");
  suite_add_tcase(s, tc);
  return th_run_suite(s);
}
