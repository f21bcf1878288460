/* The outbound connector's edges: many destinations at once (the table
 * grows), failover across sources that are missing or misconfigured,
 * descriptor exhaustion, corrections larger than the range, and libuv
 * refusing the socket (uv_tcp_init/uv_tcp_open go through the wrappers
 * below: -Wl,--wrap, see tests/meson.build).
 *
 * Every test runs in its own network namespace with
 * net.ipv4.ip_local_port_range narrowed to four ports and a listener on
 * 0.0.0.0:7000 (and [::]:7000) that never accepts.
 * SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/un.h>
#include <unistd.h>

#include "helpers.h"

#define NPORTS 4
#define NDEST 40

int __real_uv_tcp_open(uv_tcp_t *h, uv_os_sock_t sock);
int __wrap_uv_tcp_open(uv_tcp_t *h, uv_os_sock_t sock);
int __real_uv_tcp_init(uv_loop_t *loop, uv_tcp_t *h);
int __wrap_uv_tcp_init(uv_loop_t *loop, uv_tcp_t *h);

static int tcp_open_err, tcp_init_err;

int __wrap_uv_tcp_open(uv_tcp_t *h, uv_os_sock_t sock) {
  if (tcp_open_err != 0) {
    int r = tcp_open_err;
    tcp_open_err = 0;
    return r;
  }
  return __real_uv_tcp_open(h, sock);
}

int __wrap_uv_tcp_init(uv_loop_t *loop, uv_tcp_t *h) {
  if (tcp_init_err != 0) {
    int r = tcp_init_err;
    tcp_init_err = 0;
    return r;
  }
  return __real_uv_tcp_init(loop, h);
}

static uv_loop_t loop;
static int lfd4 = -1, lfd6 = -1;
static int n_cb, n_ok, last_status;
static bool cb_flag, connector_closed;
static char last_source[UVIP_ADDRSTRLEN];

static int listener(const char *ip) {
  struct sockaddr_storage sa;
  th_addr(ip, 7000, &sa);
  int fd = socket(sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  ck_assert_int_ge(fd, 0);
  if (sa.ss_family == AF_INET6)
    ck_assert_int_eq(setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one,
                                sizeof(one)), 0);
  ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa,
                        sa.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                 : sizeof(struct sockaddr_in)),
                   0);
  ck_assert_int_eq(listen(fd, 1024), 0);
  return fd;
}

static void setup(void) {
  th_enter_netns();
  ck_assert_int_eq(system("sysctl -qw net.ipv6.conf.lo.disable_ipv6=0"), 0);
  FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "w");
  ck_assert_ptr_nonnull(f);
  fprintf(f, "40000 %d\n", 40000 + NPORTS - 1);
  ck_assert_int_eq(fclose(f), 0);
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  lfd4 = listener("0.0.0.0");
  lfd6 = listener("::");
  n_cb = n_ok = 0;
  cb_flag = connector_closed = false;
}

static void on_connect(uvip_outconn_t *oc, int status,
                       const struct sockaddr *source) {
  (void)oc;
  n_cb++;
  last_status = status;
  cb_flag = true;
  last_source[0] = 0;
  if (source)
    ck_assert_int_eq(uvip_addr_format(source, 0, last_source,
                                      sizeof(last_source)), 0);
  if (status == 0)
    n_ok++;
}

static void on_connector_closed(uvip_connector_t *c) {
  (void)c;
  connector_closed = true;
}

static void teardown(uvip_connector_t *c) {
  ck_assert_int_eq(uvip_connector_close(c, on_connector_closed), 0);
  th_run_until(&loop, &connector_closed, 1000);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  close(lfd4);
  close(lfd6);
}

/* Connects to ip:7000 and runs the loop until the callback. */
static int connect_to(uvip_connector_t *c, const char *ip,
                      uvip_outconn_t **out) {
  struct sockaddr_storage d;
  th_addr(ip, 7000, &d);
  cb_flag = false;
  int r = uvip_connect(c, (struct sockaddr *)&d, &loop, on_connect, out);
  if (r == 0)
    th_run_until(&loop, &cb_flag, 1000);
  return r;
}

static uvip_connector_ports_t ports(uvip_connector_t *c, const char *src,
                                   const char *dst) {
  struct sockaddr_storage s, d;
  uvip_connector_ports_t p;
  if (src)
    th_addr(src, 0, &s);
  th_addr(dst, 7000, &d);
  ck_assert_int_eq(uvip_connector_ports(c, src ? (struct sockaddr *)&s : NULL,
                                        (struct sockaddr *)&d, &p), 0);
  return p;
}

static uvip_connector_t *connector(const char *spec) {
  uvip_connector_t *c = NULL;
  uvip_addrs_t *a = NULL;
  if (spec)
    a = th_addrs(spec, 0);
  ck_assert_int_eq(uvip_connector_new(&loop, a, NULL, &c), 0);
  uvip_addrs_free(a);
  return c;
}

static int count_fds(void) { return th_count_fds(); }

static void reset_and_close(uvip_outconn_t *oc) {
  struct linger l = {1, 0};
  uv_os_fd_t fd;
  ck_assert_int_eq(uv_fileno((uv_handle_t *)uvip_outconn_tcp(oc), &fd), 0);
  ck_assert_int_eq(setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l)), 0);
  ck_assert_int_eq(uvip_outconn_close(oc, NULL), 0);
}

/* Forty destinations held at once: the table grows past its first sizes
 * and every destination keeps its own count through the growth; closing
 * gives each its port back. */
START_TEST(test_many_destinations) {
  setup();
  uvip_connector_t *c = connector(NULL);
  uvip_outconn_t *oc[NDEST];
  char ip[NDEST][32];
  for (int i = 0; i < NDEST; i++) {
    snprintf(ip[i], sizeof(ip[i]), "127.0.%d.%d", 1 + i / 200, 1 + i % 200);
    ck_assert_int_eq(connect_to(c, ip[i], &oc[i]), 0);
    ck_assert_int_eq(last_status, 0);
    /* The kernel's choice: no source to report. */
    ck_assert_ptr_null(uvip_outconn_source(oc[i]));
  }
  ck_assert_int_eq(n_ok, NDEST);
  for (int i = 0; i < NDEST; i++) {
    uvip_connector_ports_t p = ports(c, NULL, ip[i]);
    ck_assert_uint_eq(p.in_use, 1);
    ck_assert_uint_eq(p.range, NPORTS);
  }
  ck_assert_uint_eq(ports(c, NULL, "127.0.9.9").in_use, 0);
  uvip_connector_stats_t st;
  ck_assert_int_eq(uvip_connector_stats(c, 0, &st), 0);
  ck_assert_uint_eq(st.in_use, NDEST);
  ck_assert_uint_eq(st.connected, NDEST);

  /* Every other one closes: the rest keep their counts. */
  for (int i = 0; i < NDEST; i += 2)
    reset_and_close(oc[i]);
  th_run_until_quiet(&loop, 1000);
  for (int i = 0; i < NDEST; i++)
    ck_assert_uint_eq(ports(c, NULL, ip[i]).in_use, (uint64_t)(i % 2));
  ck_assert_int_eq(uvip_connector_stats(c, 0, &st), 0);
  ck_assert_uint_eq(st.in_use, NDEST / 2);
  for (int i = 1; i < NDEST; i += 2)
    reset_and_close(oc[i]);
  th_run_until_quiet(&loop, 1000);
  for (int i = 0; i < NDEST; i++)
    ck_assert_uint_eq(ports(c, NULL, ip[i]).in_use, 0);
  teardown(c);
}
END_TEST

/* A correction larger than the range counts as the whole range (the pair
 * has no free port left, so another source is preferred); corrections are
 * kept while the connector lives and freed with it; unknown sources are
 * UV_ENOENT. */
START_TEST(test_corrections) {
  setup();
  uvip_connector_t *c = connector("127.0.0.2,127.0.0.3");
  struct sockaddr_storage s2, d, unknown;
  th_addr("127.0.0.2", 0, &s2);
  th_addr("10.0.0.9", 0, &unknown);
  th_addr("127.0.0.1", 7000, &d);
  ck_assert_int_eq(uvip_connector_correct(c, (struct sockaddr *)&s2,
                                          (struct sockaddr *)&d, 100), 0);
  uvip_connector_ports_t p = ports(c, "127.0.0.2", "127.0.0.1");
  ck_assert_uint_eq(p.others, NPORTS);
  ck_assert_uint_eq(p.in_use, 0);
  ck_assert_int_eq(p.exhausted, 0);
  for (int i = 0; i < 2; i++) {
    ck_assert_int_eq(connect_to(c, "127.0.0.1", NULL), 0);
    ck_assert_int_eq(last_status, 0);
    ck_assert_str_eq(last_source, "127.0.0.3");
  }
  uvip_connector_ports_t q;
  ck_assert_int_eq(uvip_connector_ports(c, (struct sockaddr *)&unknown,
                                        (struct sockaddr *)&d, &q), UV_ENOENT);
  ck_assert_int_eq(uvip_connector_correct(c, (struct sockaddr *)&unknown,
                                          (struct sockaddr *)&d, 1), UV_ENOENT);
  ck_assert_int_eq(uvip_connector_ports(c, NULL, (struct sockaddr *)&d, &q),
                   UV_ENOENT);

  /* Other destinations with only a correction: still known at close. */
  for (int i = 2; i < 20; i++) {
    char ip[32];
    snprintf(ip, sizeof(ip), "127.0.1.%d", i);
    th_addr(ip, 7000, &d);
    ck_assert_int_eq(uvip_connector_correct(c, (struct sockaddr *)&s2,
                                            (struct sockaddr *)&d, 2), 0);
    ck_assert_uint_eq(ports(c, "127.0.0.2", ip).others, 2);
  }
  teardown(c);
}
END_TEST

/* A kernel's-choice connector knows no named sources. */
START_TEST(test_kernel_choice_sources) {
  setup();
  uvip_connector_t *c = connector(NULL);
  struct sockaddr_storage s, d;
  th_addr("127.0.0.1", 0, &s);
  th_addr("127.0.0.1", 7000, &d);
  uvip_connector_ports_t p;
  ck_assert_int_eq(uvip_connector_ports(c, (struct sockaddr *)&s,
                                        (struct sockaddr *)&d, &p), UV_ENOENT);
  ck_assert_ptr_null(uvip_connector_source(c, 0));
  ck_assert_uint_eq(uvip_connector_source_count(c), 1);
  /* Not an IP destination. */
  struct sockaddr_un un = {.sun_family = AF_UNIX};
  ck_assert_int_eq(uvip_connect(c, (struct sockaddr *)&un, &loop, on_connect,
                                NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_connector_ports(c, NULL, (struct sockaddr *)&un, &p),
                   UV_EINVAL);
  ck_assert_int_eq(n_cb, 0);
  teardown(c);
}
END_TEST

/* A source address the host does not have is refused by bind() like a
 * full pair: the connector moves on to the next source. With none left,
 * a clean UV_EADDRNOTAVAIL and no callback. */
START_TEST(test_missing_source) {
  setup();
  uvip_connector_t *c = connector("10.9.9.9,127.0.0.2");
  uvip_outconn_t *oc = NULL;
  ck_assert_int_eq(connect_to(c, "127.0.0.1", &oc), 0);
  ck_assert_int_eq(last_status, 0);
  ck_assert_str_eq(last_source, "127.0.0.2");
  uvip_connector_stats_t st;
  ck_assert_int_eq(uvip_connector_stats(c, 0, &st), 0);
  ck_assert_uint_eq(st.exhausted, 1);
  ck_assert_uint_eq(st.failed, 0);
  ck_assert_uint_eq(st.in_use, 0);
  ck_assert_int_eq(ports(c, "10.9.9.9", "127.0.0.1").exhausted, 1);
  ck_assert_int_eq(uvip_connector_stats(c, 1, &st), 0);
  ck_assert_uint_eq(st.in_use, 1);
  teardown(c);

  setup();
  c = connector("10.9.9.8,10.9.9.9");
  ck_assert_int_eq(connect_to(c, "127.0.0.1", NULL), UV_EADDRNOTAVAIL);
  ck_assert_int_eq(n_cb, 0);
  for (size_t i = 0; i < 2; i++) {
    ck_assert_int_eq(uvip_connector_stats(c, i, &st), 0);
    ck_assert_uint_eq(st.exhausted, 1);
    ck_assert_uint_eq(st.in_use, 0);
  }
  teardown(c);
}
END_TEST

/* Any other bind() error is not about ports: the attempt stops there with
 * it, counted as the source's failure, holding nothing. (A link-local
 * IPv6 source without its interface is EINVAL.) */
START_TEST(test_source_bind_error) {
  setup();
  uvip_connector_t *c = connector("fe80::1,::1");
  ck_assert_int_eq(connect_to(c, "::1", NULL), UV_EINVAL);
  ck_assert_int_eq(n_cb, 0);
  uvip_connector_stats_t st;
  ck_assert_int_eq(uvip_connector_stats(c, 0, &st), 0);
  ck_assert_uint_eq(st.failed, 1);
  ck_assert_uint_eq(st.exhausted, 0);
  ck_assert_uint_eq(st.in_use, 0);
  ck_assert_int_eq(uvip_connector_stats(c, 1, &st), 0);
  ck_assert_uint_eq(st.in_use, 0);
  ck_assert_uint_eq(ports(c, "::1", "::1").in_use, 0);
  teardown(c);
}
END_TEST

/* Out of descriptors is the process's problem, not the source's: the
 * error is returned, not counted as a failure, and nothing is held. */
START_TEST(test_out_of_descriptors) {
  setup();
  uvip_connector_t *c = connector("127.0.0.2");
  struct rlimit old, lim;
  ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &old), 0);
  int fd = dup(0);
  close(fd);
  lim = old;
  lim.rlim_cur = (rlim_t)fd;
  ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &lim), 0);
  int r = connect_to(c, "127.0.0.1", NULL);
  ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &old), 0);
  ck_assert_int_eq(r, UV_EMFILE);
  uvip_connector_stats_t st;
  ck_assert_int_eq(uvip_connector_stats(c, 0, &st), 0);
  ck_assert_uint_eq(st.failed, 0);
  ck_assert_uint_eq(st.exhausted, 0);
  ck_assert_uint_eq(st.in_use, 0);
  ck_assert_int_eq(n_cb, 0);
  /* With descriptors again, it connects. */
  ck_assert_int_eq(connect_to(c, "127.0.0.1", NULL), 0);
  ck_assert_int_eq(last_status, 0);
  teardown(c);
}
END_TEST

/* libuv refusing the socket (uv_tcp_init, uv_tcp_open): the error is
 * returned, the descriptor is closed, the handle (once it exists) goes
 * away through the loop, and the connector still closes. */
START_TEST(test_libuv_refuses) {
  setup();
  uvip_connector_t *c = connector("127.0.0.2");
  /* libuv keeps a spare descriptor per loop (for EMFILE on accept), opened
   * with the loop's first stream: open it now, not inside the count. */
  uv_tcp_t warm;
  ck_assert_int_eq(uv_tcp_init(&loop, &warm), 0);
  uv_close((uv_handle_t *)&warm, NULL);
  th_run_until_quiet(&loop, 100);
  int fds = count_fds();
  tcp_init_err = UV_ENOSYS;
  ck_assert_int_eq(connect_to(c, "127.0.0.1", NULL), UV_ENOSYS);
  ck_assert_int_eq(tcp_init_err, 0);
  ck_assert_int_eq(count_fds(), fds);
  tcp_open_err = UV_EBUSY;
  ck_assert_int_eq(connect_to(c, "127.0.0.1", NULL), UV_EBUSY);
  ck_assert_int_eq(tcp_open_err, 0);
  th_run_until_quiet(&loop, 100);
  ck_assert_int_eq(count_fds(), fds);
  uvip_connector_stats_t st;
  ck_assert_int_eq(uvip_connector_stats(c, 0, &st), 0);
  ck_assert_uint_eq(st.failed, 2);
  ck_assert_uint_eq(st.in_use, 0);
  ck_assert_int_eq(n_cb, 0);
  ck_assert_uint_eq(ports(c, "127.0.0.2", "127.0.0.1").in_use, 0);
  /* And works again. */
  ck_assert_int_eq(connect_to(c, "127.0.0.1", NULL), 0);
  ck_assert_int_eq(last_status, 0);
  teardown(c);
}
END_TEST

int main(void) {
  th_require_netns_or_skip();
  Suite *s = suite_create("cov-connector");
  TCase *tc = tcase_create("cov-connector");
  tcase_add_test(tc, test_many_destinations);
  tcase_add_test(tc, test_corrections);
  tcase_add_test(tc, test_kernel_choice_sources);
  tcase_add_test(tc, test_missing_source);
  tcase_add_test(tc, test_source_bind_error);
  tcase_add_test(tc, test_out_of_descriptors);
  tcase_add_test(tc, test_libuv_refuses);
  suite_add_tcase(s, tc);
  return th_run_suite(s);
}
