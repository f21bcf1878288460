/* Prefix connector: sources picked inside a prefix under a local route
 * (AnyIP), pairs tracked only while in use, both policies, the missing
 * route error, corrections and arguments; uvip-loadgen --sources PREFIX.
 *
 * Every test runs in its own network namespace (check forks each test)
 * with net.ipv4.ip_local_port_range narrowed to four ports, so that a
 * (source, destination) pair runs out after four connections.
 * SPDX-License-Identifier: MIT */
#include "helpers.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define NPORTS 4
#define MAXC 256

static uv_loop_t loop;
static int listen_fd = -1;
static struct sockaddr_storage dest;
static int n_ok, n_err, last_status;
static bool cb_flag, connector_closed;
static uvip_outconn_t *conns[MAXC];
static int nconns;

static void sh(const char *cmd) {
  ck_assert_msg(system(cmd) == 0, "command failed: %s", cmd);
}

/* A namespace with four ephemeral ports and a listener that never accepts
 * (the kernel completes the handshakes into its queue) on ip:7000. */
static void setup(const char *ip) {
  th_enter_netns();
  sh("echo '40000 40003' > /proc/sys/net/ipv4/ip_local_port_range");
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  th_addr(ip, 7000, &dest);
  if (dest.ss_family == AF_INET6) {
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "ip -6 addr add %s/128 dev lo nodad", ip);
    sh(cmd);
  }
  listen_fd = socket(dest.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ck_assert_int_ge(listen_fd, 0);
  ck_assert_int_eq(bind(listen_fd, (struct sockaddr *)&dest,
                        dest.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                   : sizeof(struct sockaddr_in)),
                   0);
  ck_assert_int_eq(listen(listen_fd, 4096), 0);
  n_ok = n_err = nconns = 0;
  connector_closed = false;
}

static uvip_prefix_t prefix_of(const char *spec) {
  uvip_prefix_t p;
  ck_assert_int_eq(uvip_prefix_parse(spec, &p, NULL, 0), 0);
  return p;
}

static void on_connect(uvip_outconn_t *oc, int status,
                       const struct sockaddr *source) {
  cb_flag = true;
  last_status = status;
  ck_assert_ptr_nonnull(source);
  ck_assert_ptr_eq(source, uvip_outconn_source(oc));
  if (status == 0)
    n_ok++;
  else
    n_err++;
}

static void on_connector_closed(uvip_connector_t *c) { connector_closed = true; }

static int connect_one(uvip_connector_t *c) {
  uvip_outconn_t *oc = NULL;
  int r;
  cb_flag = false;
  r = uvip_connect(c, (struct sockaddr *)&dest, NULL, on_connect, &oc);
  if (r != 0)
    return r;
  th_run_until(&loop, &cb_flag, 1000);
  ck_assert_int_lt(nconns, MAXC);
  conns[nconns++] = oc;
  return last_status;
}

/* The source the kernel really used for conns[i]. */
static void local_addr(int i, struct sockaddr_storage *ss) {
  uv_os_fd_t fd;
  socklen_t len = sizeof(*ss);
  ck_assert_int_eq(uv_fileno((uv_handle_t *)uvip_outconn_tcp(conns[i]), &fd), 0);
  ck_assert_int_eq(getsockname(fd, (struct sockaddr *)ss, &len), 0);
}

static const char *ip_of(const struct sockaddr *sa, char *buf) {
  ck_assert_int_eq(uvip_addr_format(sa, 0, buf, UVIP_ADDRSTRLEN), 0);
  return buf;
}

/* Closing with a reset leaves no TIME_WAIT, whose reuse on loopback would
 * depend on the clock. */
static void close_conn(int i) {
  struct linger l = {1, 0};
  uv_os_fd_t fd;
  ck_assert_int_eq(uv_fileno((uv_handle_t *)uvip_outconn_tcp(conns[i]), &fd), 0);
  ck_assert_int_eq(setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l)), 0);
  ck_assert_int_eq(uvip_outconn_close(conns[i], NULL), 0);
  conns[i] = NULL;
  th_run_until_quiet(&loop, 100);
}

static void close_connector(uvip_connector_t *c) {
  ck_assert_int_eq(uvip_connector_close(c, on_connector_closed), 0);
  th_run_until(&loop, &connector_closed, 1000);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  close(listen_fd);
}

static uvip_connector_ports_t ports_of(uvip_connector_t *c, const char *src) {
  struct sockaddr_storage sa;
  uvip_connector_ports_t p;
  th_addr(src, 0, &sa);
  ck_assert_int_eq(
      uvip_connector_ports(c, (struct sockaddr *)&sa, (struct sockaddr *)&dest, &p),
      0);
  return p;
}

/* A /64: every connection from its own address, each the one the kernel
 * used, and the table empty again once they close. */
START_TEST(test_spread_ipv6_64) {
  uvip_prefix_t p = prefix_of("fd00:1::/64"), got;
  uvip_connector_t *c;
  uvip_connector_stats_t st;
  char err[256], a[UVIP_ADDRSTRLEN], b[UVIP_ADDRSTRLEN];
  int i, j, n = 200;

  setup("fd00::1");
  sh("ip -6 route add local fd00:1::/64 dev lo");
  ck_assert_int_eq(uvip_connector_new_prefix(&loop, &p, UVIP_PREFIX_SPREAD,
                                             NULL, err, sizeof(err), &c),
                   0);
  ck_assert_int_eq(uvip_connector_prefix(c, &got), 0);
  ck_assert_mem_eq(&got, &p, sizeof(p));
  ck_assert_uint_eq(uvip_connector_source_count(c), 1);
  ck_assert_ptr_null(uvip_connector_source(c, 0));
  for (i = 0; i < n; i++)
    ck_assert_int_eq(connect_one(c), 0);
  ck_assert_int_eq(n_ok, n);
  for (i = 0; i < n; i++) {
    struct sockaddr_storage ss;
    const struct sockaddr *src = uvip_outconn_source(conns[i]);
    local_addr(i, &ss);
    ck_assert_str_eq(ip_of((struct sockaddr *)&ss, a), ip_of(src, b));
    ck_assert_int_eq(uvip_prefix_contains(&p, src), 1);
    /* Never the all-zero host (subnet-router anycast). */
    ck_assert_str_ne(a, "fd00:1::");
    for (j = 0; j < i; j++)
      ck_assert_str_ne(a, ip_of(uvip_outconn_source(conns[j]), b));
  }
  ck_assert_uint_eq(uvip_connector_prefix_in_use(c), (size_t)n);
  ck_assert_int_eq(uvip_connector_stats(c, 0, &st), 0);
  ck_assert_uint_eq(st.in_use, (uint64_t)n);
  ck_assert_uint_eq(st.connected, (uint64_t)n);
  ck_assert_uint_eq(ports_of(c, ip_of(uvip_outconn_source(conns[7]), a)).in_use, 1);
  for (i = 0; i < n; i++)
    close_conn(i);
  /* Only addresses in use are kept. */
  ck_assert_uint_eq(uvip_connector_prefix_in_use(c), 0);
  ck_assert_int_eq(uvip_connector_stats(c, 0, &st), 0);
  ck_assert_uint_eq(st.in_use, 0);
  close_connector(c);
}
END_TEST

/* An IPv4 /30 under a local route: two usable sources (the network and
 * broadcast addresses are left out), four ports each, then the wall. */
START_TEST(test_ipv4_small_prefix_wall) {
  uvip_prefix_t p = prefix_of("198.18.0.0/30");
  uvip_connector_t *c;
  uvip_connector_stats_t st;
  char a[UVIP_ADDRSTRLEN];
  int i, from1 = 0, from2 = 0;

  setup("127.0.0.1");
  sh("ip route add local 198.18.0.0/30 dev lo");
  ck_assert_int_eq(uvip_connector_new_prefix(&loop, &p, UVIP_PREFIX_SPREAD,
                                             NULL, NULL, 0, &c),
                   0);
  for (i = 0; i < 2 * NPORTS; i++) {
    ck_assert_int_eq(connect_one(c), 0);
    ip_of(uvip_outconn_source(conns[i]), a);
    if (strcmp(a, "198.18.0.1") == 0)
      from1++;
    else if (strcmp(a, "198.18.0.2") == 0)
      from2++;
    else
      ck_abort_msg("source %s", a);
  }
  ck_assert_int_eq(from1, NPORTS);
  ck_assert_int_eq(from2, NPORTS);
  ck_assert_uint_eq(ports_of(c, "198.18.0.1").in_use, NPORTS);
  /* Full: a clean error, nothing left open, the count unchanged. */
  ck_assert_int_eq(uvip_connect(c, (struct sockaddr *)&dest, NULL, on_connect,
                                NULL),
                   UV_EADDRNOTAVAIL);
  ck_assert_uint_eq(uvip_connector_prefix_in_use(c), 2);
  ck_assert_int_eq(uvip_connector_stats(c, 0, &st), 0);
  ck_assert_uint_eq(st.in_use, 2 * NPORTS);
  /* A port back on .2: the next connection gets it. */
  ip_of(uvip_outconn_source(conns[1]), a);
  close_conn(1);
  ck_assert_int_eq(connect_one(c), 0);
  ck_assert_str_eq(ip_of(uvip_outconn_source(conns[nconns - 1]), a + 0), a);
  close_connector(c);
}
END_TEST

/* Pairs the kernel refuses (ports taken behind the connector's back) are
 * skipped, and corrections count as others. */
START_TEST(test_exhausted_and_correct) {
  uvip_prefix_t p = prefix_of("198.18.0.0/30");
  uvip_connector_t *c;
  uvip_connector_stats_t st;
  struct sockaddr_storage s1;
  char a[UVIP_ADDRSTRLEN];
  int fds[NPORTS], i, one = 1;

  setup("127.0.0.1");
  sh("ip route add local 198.18.0.0/30 dev lo");
  th_addr("198.18.0.1", 0, &s1);
  for (i = 0; i < NPORTS; i++) {
    fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_eq(setsockopt(fds[i], IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one)), 0);
    ck_assert_int_eq(bind(fds[i], (struct sockaddr *)&s1, sizeof(struct sockaddr_in)), 0);
    ck_assert_int_eq(connect(fds[i], (struct sockaddr *)&dest, sizeof(struct sockaddr_in)), 0);
  }
  ck_assert_int_eq(uvip_connector_new_prefix(&loop, &p, UVIP_PREFIX_LEAST_USED,
                                             NULL, NULL, 0, &c),
                   0);
  for (i = 0; i < NPORTS; i++) {
    ck_assert_int_eq(connect_one(c), 0);
    ck_assert_str_eq(ip_of(uvip_outconn_source(conns[i]), a), "198.18.0.2");
  }
  ck_assert_int_eq(uvip_connect(c, (struct sockaddr *)&dest, NULL, on_connect,
                                NULL),
                   UV_EADDRNOTAVAIL);
  ck_assert_int_eq(uvip_connector_stats(c, 0, &st), 0);
  ck_assert_uint_ge(st.exhausted, 1);
  /* The refused pair is not kept once the search is over. */
  ck_assert_uint_eq(uvip_connector_prefix_in_use(c), 1);

  /* A census says .1 has its four: others, and .1 is skipped without
   * asking the kernel. Then they go, and .1 is usable again. */
  ck_assert_int_eq(uvip_connector_correct(c, (struct sockaddr *)&s1,
                                          (struct sockaddr *)&dest, NPORTS),
                   0);
  ck_assert_uint_eq(ports_of(c, "198.18.0.1").others, NPORTS);
  ck_assert_uint_eq(uvip_connector_prefix_in_use(c), 2);
  for (i = 0; i < NPORTS; i++) {
    struct linger l = {1, 0}; /* no TIME_WAIT: the ports are free at once */
    ck_assert_int_eq(setsockopt(fds[i], SOL_SOCKET, SO_LINGER, &l, sizeof(l)), 0);
    close(fds[i]);
  }
  ck_assert_int_eq(uvip_connector_correct(c, (struct sockaddr *)&s1,
                                          (struct sockaddr *)&dest, 0),
                   0);
  ck_assert_uint_eq(ports_of(c, "198.18.0.1").others, 0);
  ck_assert_uint_eq(uvip_connector_prefix_in_use(c), 1);
  ck_assert_int_eq(connect_one(c), 0);
  ck_assert_str_eq(ip_of(uvip_outconn_source(conns[nconns - 1]), a), "198.18.0.1");
  close_connector(c);
}
END_TEST

/* Least used: a freed address is the next one taken; sources stay level. */
START_TEST(test_least_used) {
  uvip_prefix_t p = prefix_of("fd00:2::/126"); /* ::1, ::2, ::3 */
  uvip_connector_t *c;
  char a[UVIP_ADDRSTRLEN], freed[UVIP_ADDRSTRLEN];
  int i, round;

  setup("fd00::1");
  sh("ip -6 route add local fd00:2::/126 dev lo");
  ck_assert_int_eq(uvip_connector_new_prefix(&loop, &p, UVIP_PREFIX_LEAST_USED,
                                             NULL, NULL, 0, &c),
                   0);
  for (i = 0; i < 3; i++)
    ck_assert_int_eq(connect_one(c), 0);
  ck_assert_uint_eq(uvip_connector_prefix_in_use(c), 3);
  /* Free one address; the next connection must use it. The last one
   * first: the sequence (what UVIP_PREFIX_LEAST_USED follows) is back at the
   * first. */
  for (round = 0; round < 3; round++) {
    int k = (round + 2) % 3;
    ip_of(uvip_outconn_source(conns[k]), freed);
    close_conn(k);
    ck_assert_int_eq(connect_one(c), 0);
    ck_assert_str_eq(ip_of(uvip_outconn_source(conns[nconns - 1]), a), freed);
  }
  /* Three more: one on each. */
  for (i = 0; i < 3; i++)
    ck_assert_int_eq(connect_one(c), 0);
  ck_assert_uint_eq(ports_of(c, "fd00:2::1").in_use, 2);
  ck_assert_uint_eq(ports_of(c, "fd00:2::2").in_use, 2);
  ck_assert_uint_eq(ports_of(c, "fd00:2::3").in_use, 2);
  close_connector(c);
}
END_TEST

/* No local route: a clear error naming the route and the command, and
 * nothing made. A route for part of the prefix is not enough. */
START_TEST(test_missing_route) {
  uvip_prefix_t p6 = prefix_of("fd00:9::/64"), p4 = prefix_of("198.18.4.0/24");
  uvip_connector_t *c = NULL;
  char err[256];

  setup("127.0.0.1");
  ck_assert_int_eq(uvip_connector_new_prefix(&loop, &p6, UVIP_PREFIX_SPREAD,
                                             NULL, err, sizeof(err), &c),
                   UV_EADDRNOTAVAIL);
  ck_assert_ptr_null(c);
  ck_assert_msg(strstr(err, "no local route for fd00:9::/64") != NULL, "%s", err);
  ck_assert_msg(strstr(err, "'ip -6 route add local fd00:9::/64 dev lo'") != NULL,
                "%s", err);
  sh("ip -6 route add local fd00:9::/65 dev lo");
  ck_assert_int_eq(uvip_connector_new_prefix(&loop, &p6, UVIP_PREFIX_SPREAD,
                                             NULL, err, sizeof(err), &c),
                   UV_EADDRNOTAVAIL);
  ck_assert_msg(strstr(err, "(fd00:9:0:0:8000:: is not local)") != NULL, "%s", err);
  ck_assert_int_eq(uvip_connector_new_prefix(&loop, &p4, UVIP_PREFIX_SPREAD,
                                             NULL, err, sizeof(err), &c),
                   UV_EADDRNOTAVAIL);
  ck_assert_msg(strstr(err, "'ip route add local 198.18.4.0/24 dev lo'") != NULL,
                "%s", err);
  ck_assert_int_eq(uvip_connector_new_prefix(&loop, &p4, UVIP_PREFIX_SPREAD,
                                             NULL, NULL, 0, &c),
                   UV_EADDRNOTAVAIL);
  /* The host's own addresses are local: 127.0.0.0/8 has its route. */
  uvip_prefix_t lo = prefix_of("127.0.0.0/8");
  ck_assert_int_eq(uvip_connector_new_prefix(&loop, &lo, UVIP_PREFIX_SPREAD,
                                             NULL, err, sizeof(err), &c),
                   0);
  close_connector(c);
}
END_TEST

START_TEST(test_arguments) {
  uvip_prefix_t p = prefix_of("127.0.0.0/8"), bad = p, got;
  uvip_connector_t *c = NULL, *lc;
  uvip_connector_options_t o;
  struct sockaddr_storage out6, in;
  uvip_connector_ports_t ports;
  char err[128];

  setup("127.0.0.1");
  ck_assert_int_eq(uvip_connector_new_prefix(NULL, &p, 0, NULL, err, sizeof(err), &c),
                   UV_EINVAL);
  ck_assert_str_eq(err, "loop is NULL");
  ck_assert_int_eq(uvip_connector_new_prefix(&loop, NULL, 0, NULL, err, sizeof(err), &c),
                   UV_EINVAL);
  ck_assert_str_eq(err, "prefix is NULL");
  ck_assert_int_eq(uvip_connector_new_prefix(&loop, &p, 0, NULL, err, sizeof(err), NULL),
                   UV_EINVAL);
  ck_assert_str_eq(err, "out is NULL");
  bad.len = 33;
  ck_assert_int_eq(uvip_connector_new_prefix(&loop, &bad, 0, NULL, err, sizeof(err), &c),
                   UV_EINVAL);
  ck_assert_str_eq(err, "not an IPv4 or IPv6 prefix");
  ck_assert_int_eq(uvip_connector_new_prefix(&loop, &p, 7, NULL, err, sizeof(err), &c),
                   UV_EINVAL);
  ck_assert_str_eq(err, "unknown policy 7");
  uvip_connector_options_init(&o);
  o.port_min = 5;
  ck_assert_int_eq(uvip_connector_new_prefix(&loop, &p, 0, &o, err, sizeof(err), &c),
                   UV_EINVAL);
  ck_assert_str_eq(err, "bad port range 5-0");
  o.port_max = 4;
  ck_assert_int_eq(uvip_connector_new_prefix(&loop, &p, 0, &o, NULL, 0, &c),
                   UV_EINVAL);
  ck_assert_ptr_null(c);

  /* Host bits are cleared; an address outside is UV_ENOENT. */
  p.addr.v4.s_addr = htonl(0x7f000105);
  ck_assert_int_eq(uvip_connector_new_prefix(&loop, &p, 0, NULL, NULL, 0, &c), 0);
  ck_assert_int_eq(uvip_connector_prefix(c, &got), 0);
  ck_assert_uint_eq(ntohl(got.addr.v4.s_addr), 0x7f000000);
  ck_assert_int_eq(uvip_connector_prefix(NULL, &got), UV_EINVAL);
  ck_assert_int_eq(uvip_connector_prefix(c, NULL), UV_EINVAL);
  ck_assert_uint_eq(uvip_connector_prefix_in_use(NULL), 0);
  th_addr("fd00::7", 0, &out6);
  th_addr("10.0.0.1", 0, &in);
  ck_assert_int_eq(uvip_connector_ports(c, (struct sockaddr *)&in,
                                        (struct sockaddr *)&dest, &ports),
                   UV_ENOENT);
  ck_assert_int_eq(uvip_connector_ports(c, NULL, (struct sockaddr *)&dest, &ports),
                   UV_ENOENT);
  ck_assert_int_eq(uvip_connector_correct(c, (struct sockaddr *)&out6,
                                          (struct sockaddr *)&dest, 1),
                   UV_ENOENT);
  /* Mixing families: an IPv6 destination for an IPv4 prefix. */
  th_addr("fd00::7", 80, &out6);
  ck_assert_int_eq(uvip_connect(c, (struct sockaddr *)&out6, NULL, on_connect, NULL),
                   UV_EAFNOSUPPORT);
  /* A correction left in place is freed with the connector. */
  th_addr("127.0.0.9", 0, &in);
  ck_assert_int_eq(uvip_connector_correct(c, (struct sockaddr *)&in,
                                          (struct sockaddr *)&dest, 2),
                   0);
  ck_assert_uint_eq(uvip_connector_prefix_in_use(c), 1);
  /* A list connector has no prefix. */
  ck_assert_int_eq(uvip_connector_new(&loop, NULL, NULL, &lc), 0);
  ck_assert_int_eq(uvip_connector_prefix(lc, &got), UV_ENOENT);
  ck_assert_uint_eq(uvip_connector_prefix_in_use(lc), 0);
  ck_assert_int_eq(uvip_connector_close(lc, NULL), 0);
  close_connector(c);
}
END_TEST

static char *run_loadgen(const char *args, int *rc) {
  char cmd[1024], *out, *p;
  snprintf(cmd, sizeof(cmd), "%s/examples/uvip-loadgen %s 2>&1; echo rc=$?",
           getenv("UVIP_BUILD_DIR"), args);
  out = th_cmd_output(cmd);
  ck_assert_ptr_nonnull(out);
  p = strstr(out, "rc=");
  ck_assert_msg(p != NULL, "no exit status in: %s", out);
  *rc = atoi(p + 3);
  return out;
}

/* uvip-loadgen --sources fd00:1::/64: past the four-port wall of one
 * source, from two processes; and its errors. */
START_TEST(test_loadgen_prefix) {
  int rc;
  char *out;
  setup("fd00::1");
  out = run_loadgen("--target '[fd00::1]:7000' --sources fd00:1::/64 --conns 50 "
                    "--procs 2 --json", &rc);
  ck_assert_msg(rc == 1, "rc %d: %s", rc, out);
  ck_assert_msg(strstr(out, "no local route for fd00:1::/64") != NULL, "%s", out);
  free(out);
  sh("ip -6 route add local fd00:1::/64 dev lo");
  out = run_loadgen("--target '[fd00::1]:7000' --sources fd00:1::/64 --conns 50 "
                    "--procs 2 --json", &rc);
  ck_assert_msg(rc == 0, "rc %d: %s", rc, out);
  ck_assert_msg(strstr(out, "\"established\":50,") != NULL, "%s", out);
  ck_assert_msg(strstr(out, "\"source_prefix\":\"fd00:1::/64\"") != NULL, "%s", out);
  ck_assert_msg(strstr(out, "sources fd00:1::/64 (") != NULL, "%s", out);
  free(out);
  out = run_loadgen("--target 127.0.0.1:7000 --sources fd00:1::/64 --conns 1", &rc);
  ck_assert_msg(rc == 2, "rc %d: %s", rc, out);
  ck_assert_msg(strstr(out, "--sources fd00:1::/64 is IPv6 but --target "
                            "127.0.0.1:7000 is not: mixing families") != NULL,
                "%s", out);
  free(out);
  out = run_loadgen("--target '[fd00::1]:7000' --sources fd00:1::/64 "
                    "--sources fd00::1 --conns 1", &rc);
  ck_assert_msg(rc == 2, "rc %d: %s", rc, out);
  ck_assert_msg(strstr(out, "cannot be mixed with other --sources") != NULL, "%s", out);
  free(out);
  out = run_loadgen("--target '[fd00::1]:7000' --sources fd00:1::/6x --conns 1", &rc);
  ck_assert_msg(rc == 2, "rc %d: %s", rc, out);
  ck_assert_msg(strstr(out, "--sources: bad prefix length '6x' at offset 9") != NULL,
                "%s", out);
  free(out);
  close(listen_fd);
  uv_loop_close(&loop);
}
END_TEST

/* More than 64 host bits: the bits above 64 come from the destination's
 * hash, the low 64 from the sequence; every source is inside the /48. */
START_TEST(test_short_ipv6_prefix) {
  uvip_prefix_t p = prefix_of("fd00:3::/48");
  uvip_connector_t *c;
  char a[UVIP_ADDRSTRLEN], b[UVIP_ADDRSTRLEN];
  int i, j;

  setup("fd00::1");
  sh("ip -6 route add local fd00:3::/48 dev lo");
  ck_assert_int_eq(uvip_connector_new_prefix(&loop, &p, UVIP_PREFIX_SPREAD,
                                             NULL, NULL, 0, &c),
                   0);
  for (i = 0; i < 20; i++) {
    struct sockaddr_storage ss;
    ck_assert_int_eq(connect_one(c), 0);
    local_addr(i, &ss);
    ck_assert_str_eq(ip_of((struct sockaddr *)&ss, a),
                     ip_of(uvip_outconn_source(conns[i]), b));
    ck_assert_int_eq(uvip_prefix_contains(&p, (struct sockaddr *)&ss), 1);
    for (j = 0; j < i; j++)
      ck_assert_str_ne(a, ip_of(uvip_outconn_source(conns[j]), b));
  }
  close_connector(c);
}
END_TEST

int main(void) {
  /* Every test enters a namespace of its own: skip them all here, before
   * check forks, when that is not permitted. */
  th_require_netns_or_skip();
  Suite *s = suite_create("connector-prefix");
  TCase *tc = tcase_create("connector-prefix");
  tcase_add_test(tc, test_spread_ipv6_64);
  tcase_add_test(tc, test_ipv4_small_prefix_wall);
  tcase_add_test(tc, test_exhausted_and_correct);
  tcase_add_test(tc, test_least_used);
  tcase_add_test(tc, test_missing_route);
  tcase_add_test(tc, test_arguments);
  tcase_add_test(tc, test_loadgen_prefix);
  tcase_add_test(tc, test_short_ipv6_prefix);
  suite_add_tcase(s, tc);
  return th_run_suite(s);
}
