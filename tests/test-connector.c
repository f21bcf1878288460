/* Outbound connector: source choice, failover on exhausted pairs, clean
 * exhaustion error, accounting given back on close, closing.
 *
 * Every test runs in its own network namespace (check forks each test) with
 * net.ipv4.ip_local_port_range narrowed to four ports, so that a
 * (source, destination) pair runs out after four connections.
 * SPDX-License-Identifier: MIT */
#include "helpers.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define PORT_LO 40000
#define PORT_HI 40003
#define NPORTS (PORT_HI - PORT_LO + 1)
#define MAXC 64

static uv_loop_t loop;
static int listen_fd = -1;
static struct sockaddr_storage dest;

/* What the callbacks saw. */
static int n_cb, n_ok, n_err, last_status, n_closed;
static bool cb_flag, closed_flag, connector_closed;
static struct sockaddr_storage last_source;
static bool last_source_null;
static uvip_outconn_t *conns[MAXC];
static int nconns;

/* Linux reports a pair without a free port from connect() itself, and
 * the connector passes that back from uvip_connect(); it also handles the
 * same errors reported when the connect completes (another kernel, a later
 * libuv). To reach that path this test program defines getsockopt() and
 * connect(): the library's calls (and libuv's) resolve to these, so while
 * async_error is set, whatever tells that a connect completed says it
 * failed with async_error: the SO_ERROR query made after a wait, or the
 * connector's second connect() that asks whether the handshake is done. */
static int async_error;
static int async_error_used;

int getsockopt(int fd, int level, int name, void *val, socklen_t *len) {
  if (async_error != 0 && level == SOL_SOCKET && name == SO_ERROR &&
      val != NULL && len != NULL && *len >= sizeof(int)) {
    *(int *)val = async_error;
    *len = sizeof(int);
    async_error_used++;
    return 0;
  }
  return (int)syscall(SYS_getsockopt, fd, level, name, val, len);
}

int connect(int fd, const struct sockaddr *sa, socklen_t len) {
  int r = (int)syscall(SYS_connect, fd, sa, len);
  /* A first connect() on a non-blocking socket says EINPROGRESS; only a
   * later one says 0 (done), EALREADY or EISCONN. */
  if (async_error != 0 && (r == 0 || errno == EALREADY || errno == EISCONN)) {
    async_error_used++;
    errno = async_error;
    return -1;
  }
  return r;
}

static void set_port_range(void) {
  FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "w");
  ck_assert_ptr_nonnull(f);
  fprintf(f, "%d %d\n", PORT_LO, PORT_HI);
  ck_assert_int_eq(fclose(f), 0);
}

/* A plain listening socket that never accepts: the kernel completes the
 * handshakes into its queue, which is all the connector needs. */
static void setup(void) {
  th_enter_netns();
  set_port_range();
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  /* A fixed port outside the range: an ephemeral one would take one of
   * the four ports away from every pair. */
  th_addr("127.0.0.1", 7000, &dest);
  listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ck_assert_int_ge(listen_fd, 0);
  ck_assert_int_eq(bind(listen_fd, (struct sockaddr *)&dest, sizeof(struct sockaddr_in)), 0);
  ck_assert_int_eq(listen(listen_fd, 1024), 0);
  n_cb = n_ok = n_err = n_closed = nconns = 0;
  cb_flag = closed_flag = connector_closed = false;
}

static void on_connect(uvip_outconn_t *oc, int status,
                       const struct sockaddr *source) {
  n_cb++;
  last_status = status;
  cb_flag = true;
  last_source_null = source == NULL;
  if (source)
    memcpy(&last_source, source,
           source->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                         : sizeof(struct sockaddr_in));
  if (status == 0)
    n_ok++;
  else
    n_err++;
  ck_assert_ptr_eq(uvip_outconn_tcp(oc)->data, &loop);
  /* Every test connects to dest: the connection reports it. */
  char got[UVIP_ADDRSTRLEN], want[UVIP_ADDRSTRLEN];
  ck_assert_int_eq(uvip_addr_format(uvip_outconn_dest(oc), 1, got, sizeof(got)), 0);
  ck_assert_int_eq(uvip_addr_format((struct sockaddr *)&dest, 1, want, sizeof(want)), 0);
  ck_assert_str_eq(got, want);
  ck_assert_ptr_null(uvip_outconn_dest(NULL));
}

static void on_closed(uvip_outconn_t *oc) {
  n_closed++;
  closed_flag = true;
}

static void on_connector_closed(uvip_connector_t *c) {
  connector_closed = true;
}

/* Starts one connection and runs the loop until its callback; returns
 * uvip_connect()'s result. */
static int connect_one(uvip_connector_t *c) {
  uvip_outconn_t *oc = NULL;
  int r;
  cb_flag = false;
  r = uvip_connect(c, (struct sockaddr *)&dest, &loop, on_connect, &oc);
  if (r != 0) {
    ck_assert_ptr_null(oc);
    return r;
  }
  ck_assert_ptr_nonnull(oc);
  th_run_until(&loop, &cb_flag, 1000);
  ck_assert_int_lt(nconns, MAXC);
  conns[nconns++] = oc;
  return 0;
}

static void source_is(const char *ip) {
  char buf[UVIP_ADDRSTRLEN];
  ck_assert(!last_source_null);
  ck_assert_int_eq(uvip_addr_format((struct sockaddr *)&last_source, 0, buf, sizeof(buf)), 0);
  ck_assert_str_eq(buf, ip);
}

static uvip_connector_ports_t ports_of(uvip_connector_t *c, const char *src) {
  struct sockaddr_storage sa;
  uvip_connector_ports_t p;
  if (src)
    th_addr(src, 0, &sa);
  ck_assert_int_eq(uvip_connector_ports(c, src ? (struct sockaddr *)&sa : NULL,
                                        (struct sockaddr *)&dest, &p), 0);
  return p;
}

/* Fills source -> dest from outside the connector, the way another process
 * would, so that the connector's own count knows nothing about it. */
static void fill_pair_behind_its_back(const char *src, int *fds, int n) {
  struct sockaddr_storage sa;
  int i, one = 1;
  th_addr(src, 0, &sa);
  for (i = 0; i < n; i++) {
    fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(fds[i], 0);
    ck_assert_int_eq(setsockopt(fds[i], IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one)), 0);
    ck_assert_int_eq(bind(fds[i], (struct sockaddr *)&sa, sizeof(struct sockaddr_in)), 0);
    ck_assert_msg(connect(fds[i], (struct sockaddr *)&dest, sizeof(struct sockaddr_in)) == 0,
                  "connect %d: %s", i, strerror(errno));
  }
}

/* Closing with a reset leaves no TIME_WAIT, whose reuse on loopback would
 * depend on the clock. */
static void reset_on_close(uvip_outconn_t *oc) {
  struct linger l = {1, 0};
  uv_os_fd_t fd;
  ck_assert_int_eq(uv_fileno((uv_handle_t *)uvip_outconn_tcp(oc), &fd), 0);
  ck_assert_int_eq(setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l)), 0);
}

static void close_connector(uvip_connector_t *c) {
  ck_assert_int_eq(uvip_connector_close(c, on_connector_closed), 0);
  ck_assert_int_eq(uvip_connector_close(c, on_connector_closed), UV_EALREADY);
  th_run_until(&loop, &connector_closed, 1000);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  if (listen_fd >= 0)
    close(listen_fd);
}

START_TEST(test_failover_then_exhaustion) {
  uvip_addrs_t *srcs;
  uvip_connector_t *c;
  uvip_connector_stats_t st;
  uvip_connector_ports_t p;
  int outside[NPORTS], i;

  setup();
  srcs = th_addrs("127.0.0.2-127.0.0.4", 0);
  ck_assert_int_eq(uvip_connector_new(&loop, srcs, NULL, &c), 0);
  uvip_addrs_free(srcs);
  ck_assert_uint_eq(uvip_connector_source_count(c), 3);
  ck_assert_uint_eq(ports_of(c, "127.0.0.2").range, NPORTS);

  /* 127.0.0.2 is the first choice (all equal, round-robin from 0) but
   * another socket owner holds every port of its pair: the kernel refuses
   * and the connector moves to the next source. */
  fill_pair_behind_its_back("127.0.0.2", outside, NPORTS);
  ck_assert_int_eq(connect_one(c), 0);
  ck_assert_int_eq(last_status, 0);
  source_is("127.0.0.3");
  p = ports_of(c, "127.0.0.2");
  ck_assert_int_eq(p.exhausted, 1);
  ck_assert_uint_eq(p.in_use, 0);
  ck_assert_int_eq(uvip_connector_stats(c, 0, &st), 0);
  ck_assert_uint_eq(st.exhausted, 1);
  ck_assert_uint_eq(st.in_use, 0);

  /* The remaining 7 ports of .3 and .4 fill up, alternating. */
  for (i = 0; i < 2 * NPORTS - 1; i++) {
    ck_assert_int_eq(connect_one(c), 0);
    ck_assert_int_eq(last_status, 0);
  }
  ck_assert_int_eq(n_ok, 2 * NPORTS);
  for (i = 1; i <= 2; i++) {
    ck_assert_int_eq(uvip_connector_stats(c, (size_t)i, &st), 0);
    ck_assert_uint_eq(st.in_use, NPORTS);
    ck_assert_uint_eq(st.connected, NPORTS);
  }

  /* Every pair is full: a clean error, no callback. */
  ck_assert_int_eq(connect_one(c), UV_EADDRNOTAVAIL);
  ck_assert_int_eq(connect_one(c), UV_EADDRNOTAVAIL);
  ck_assert_int_eq(n_cb, 2 * NPORTS);
  p = ports_of(c, "127.0.0.4");
  ck_assert_uint_eq(p.in_use, NPORTS);
  ck_assert_int_eq(p.exhausted, 1);

  /* Closing one connection of .4 gives its port back. */
  for (i = 0; i < nconns; i++) {
    const struct sockaddr *s = uvip_outconn_source(conns[i]);
    if (((const struct sockaddr_in *)s)->sin_addr.s_addr == htonl(0x7f000004))
      break;
  }
  ck_assert_int_lt(i, nconns);
  reset_on_close(conns[i]);
  ck_assert_int_eq(uvip_outconn_close(conns[i], on_closed), 0);
  ck_assert_int_eq(uvip_outconn_close(conns[i], on_closed), UV_EALREADY);
  th_run_until(&loop, &closed_flag, 1000);
  conns[i] = conns[--nconns];
  p = ports_of(c, "127.0.0.4");
  ck_assert_uint_eq(p.in_use, NPORTS - 1);
  ck_assert_int_eq(p.exhausted, 0);

  ck_assert_int_eq(connect_one(c), 0);
  ck_assert_int_eq(last_status, 0);
  source_is("127.0.0.4");
  ck_assert_int_eq(connect_one(c), UV_EADDRNOTAVAIL);

  close_connector(c);
  ck_assert_int_eq(n_closed, 1); /* the connector closes the rest silently */
  for (i = 0; i < NPORTS; i++)
    close(outside[i]);
}
END_TEST

/* An attempt whose connect completes with "no free port" (EADDRNOTAVAIL)
 * marks its pair exhausted, and the mark stays when that attempt's handle
 * closes: it never held a port, so closing it gives none back. The mark
 * goes only when one of the pair's connections that did hold a port
 * closes. */
START_TEST(test_exhausted_on_completion) {
  uvip_addrs_t *srcs;
  uvip_connector_t *c;
  uvip_connector_stats_t st;
  uvip_outconn_t *oc = NULL;
  int i, turns;

  setup();
  srcs = th_addrs("127.0.0.2,127.0.0.3", 0);
  ck_assert_int_eq(uvip_connector_new(&loop, srcs, NULL, &c), 0);
  uvip_addrs_free(srcs);
  /* One connection on each pair. */
  ck_assert_int_eq(connect_one(c), 0);
  source_is("127.0.0.2");
  ck_assert_int_eq(connect_one(c), 0);
  source_is("127.0.0.3");
  ck_assert_int_eq(n_ok, 2);

  /* The next choice is .2 again (equal free ports, round-robin). */
  async_error = EADDRNOTAVAIL;
  async_error_used = 0;
  cb_flag = false;
  ck_assert_int_eq(uvip_connect(c, (struct sockaddr *)&dest, &loop,
                                on_connect, &oc), 0);
  th_run_until(&loop, &cb_flag, 1000);
  async_error = 0;
  ck_assert_int_eq(async_error_used, 1);
  ck_assert_int_eq(last_status, UV_EADDRNOTAVAIL);
  source_is("127.0.0.2");
  /* The library closes the attempt after its callback; wait until its
   * handle has closed (the pair's count is back to one). */
  for (turns = 0; turns < 100 && ports_of(c, "127.0.0.2").in_use != 1; turns++)
    uv_run(&loop, UV_RUN_ONCE);
  ck_assert_uint_eq(ports_of(c, "127.0.0.2").in_use, 1);
  ck_assert_int_eq(ports_of(c, "127.0.0.2").exhausted, 1);
  ck_assert_int_eq(uvip_connector_stats(c, 0, &st), 0);
  ck_assert_uint_eq(st.exhausted, 1);
  ck_assert_uint_eq(st.failed, 0);

  /* So the connector keeps away from .2 while .3 has ports. */
  for (i = 0; i < 2; i++) {
    ck_assert_int_eq(connect_one(c), 0);
    ck_assert_int_eq(last_status, 0);
    source_is("127.0.0.3");
  }
  ck_assert_uint_eq(ports_of(c, "127.0.0.3").in_use, 3);

  /* Closing .2's real connection gives a port back: usable again. */
  reset_on_close(conns[0]);
  closed_flag = false;
  ck_assert_int_eq(uvip_outconn_close(conns[0], on_closed), 0);
  th_run_until(&loop, &closed_flag, 1000);
  conns[0] = NULL;
  ck_assert_uint_eq(ports_of(c, "127.0.0.2").in_use, 0);
  ck_assert_int_eq(ports_of(c, "127.0.0.2").exhausted, 0);
  ck_assert_int_eq(connect_one(c), 0);
  source_is("127.0.0.2");
  close_connector(c);
}
END_TEST

/* No sources: the kernel picks the address, and one destination gets as
 * many connections as there are ports, the small version of the 28,232
 * wall. */
START_TEST(test_kernel_choice_wall) {
  uvip_connector_t *c;
  uvip_connector_ports_t p;
  uvip_connector_stats_t st;
  uvip_addrs_t *empty;
  int i;

  setup();
  ck_assert_int_eq(uvip_addrs_new(&empty), 0);
  ck_assert_int_eq(uvip_connector_new(&loop, empty, NULL, &c), 0);
  uvip_addrs_free(empty);
  ck_assert_uint_eq(uvip_connector_source_count(c), 1);
  ck_assert_ptr_null(uvip_connector_source(c, 0));
  for (i = 0; i < NPORTS; i++) {
    ck_assert_int_eq(connect_one(c), 0);
    ck_assert_int_eq(last_status, 0);
    ck_assert(last_source_null);
  }
  ck_assert_int_eq(connect_one(c), UV_EADDRNOTAVAIL);
  p = ports_of(c, NULL);
  ck_assert_uint_eq(p.in_use, NPORTS);
  ck_assert_uint_eq(p.range, NPORTS);
  ck_assert_int_eq(p.exhausted, 1);
  ck_assert_int_eq(uvip_connector_stats(c, 0, &st), 0);
  ck_assert_uint_eq(st.in_use, NPORTS);
  ck_assert_uint_eq(st.exhausted, 1);

  /* The ports really come from the narrowed range. */
  for (i = 0; i < nconns; i++) {
    struct sockaddr_storage local;
    int len = sizeof(local);
    int port;
    ck_assert_int_eq(uv_tcp_getsockname(uvip_outconn_tcp(conns[i]), (struct sockaddr *)&local, &len), 0);
    port = ntohs(((struct sockaddr_in *)&local)->sin_port);
    ck_assert_int_ge(port, PORT_LO);
    ck_assert_int_le(port, PORT_HI);
  }

  for (i = 0; i < nconns; i++) {
    reset_on_close(conns[i]);
    ck_assert_int_eq(uvip_outconn_close(conns[i], on_closed), 0);
  }
  while (n_closed < nconns)
    uv_run(&loop, UV_RUN_ONCE);
  p = ports_of(c, NULL);
  ck_assert_uint_eq(p.in_use, 0);
  ck_assert_int_eq(p.exhausted, 0);
  ck_assert_int_eq(uvip_connector_stats(c, 0, &st), 0);
  ck_assert_uint_eq(st.in_use, 0);
  close_connector(c);
}
END_TEST

/* A census correction steers the choice away from a pair that others use. */
START_TEST(test_correction) {
  uvip_addrs_t *srcs;
  uvip_connector_t *c;
  uvip_connector_ports_t p;
  struct sockaddr_storage s2, s9;
  int i;

  setup();
  srcs = th_addrs("127.0.0.2,127.0.0.3", 0);
  ck_assert_int_eq(uvip_connector_new(&loop, srcs, NULL, &c), 0);
  uvip_addrs_free(srcs);
  th_addr("127.0.0.2", 0, &s2);
  th_addr("127.0.0.9", 0, &s9);
  ck_assert_int_eq(uvip_connector_correct(c, (struct sockaddr *)&s9, (struct sockaddr *)&dest, 1), UV_ENOENT);
  ck_assert_int_eq(uvip_connector_correct(c, NULL, (struct sockaddr *)&dest, 1), UV_ENOENT);
  ck_assert_int_eq(uvip_connector_correct(c, (struct sockaddr *)&s2, (struct sockaddr *)&dest, 3), 0);
  p = ports_of(c, "127.0.0.2");
  ck_assert_uint_eq(p.others, 3);
  ck_assert_uint_eq(p.in_use, 0);

  /* .3 has 4 free, .2 has 1: .3 three times. */
  for (i = 0; i < 3; i++) {
    ck_assert_int_eq(connect_one(c), 0);
    source_is("127.0.0.3");
  }
  ck_assert_uint_eq(ports_of(c, "127.0.0.3").in_use, 3);

  /* The others went away: .2 has 4 free, .3 has 1. */
  ck_assert_int_eq(uvip_connector_correct(c, (struct sockaddr *)&s2, (struct sockaddr *)&dest, 0), 0);
  ck_assert_uint_eq(ports_of(c, "127.0.0.2").others, 0);
  ck_assert_int_eq(connect_one(c), 0);
  source_is("127.0.0.2");
  close_connector(c);
}
END_TEST

/* Failures after uvip_connect() returned 0 reach the callback, and the
 * library closes the connection itself. */
START_TEST(test_refused) {
  uvip_connector_t *c;
  uvip_connector_stats_t st;
  uvip_outconn_t *oc;

  setup();
  ck_assert_int_eq(uvip_connector_new(&loop, NULL, NULL, &c), 0);
  close(listen_fd); /* nobody listens on dest any more */
  listen_fd = -1;
  cb_flag = false;
  ck_assert_int_eq(uvip_connect(c, (struct sockaddr *)&dest, &loop, on_connect, &oc), 0);
  ck_assert_int_eq(uvip_connector_stats(c, 0, &st), 0);
  ck_assert_uint_eq(st.in_use, 1);
  th_run_until(&loop, &cb_flag, 1000);
  ck_assert_int_eq(last_status, UV_ECONNREFUSED);
  /* Closed by the library after the callback: accounting back to zero
   * once the loop has run the close. */
  uv_run(&loop, UV_RUN_NOWAIT);
  ck_assert_int_eq(uvip_connector_stats(c, 0, &st), 0);
  ck_assert_uint_eq(st.in_use, 0);
  ck_assert_uint_eq(st.failed, 1);
  ck_assert_uint_eq(st.connected, 0);
  ck_assert_uint_eq(ports_of(c, NULL).in_use, 0);
  close_connector(c);
}
END_TEST

/* Closing the connector closes open connections and cancels pending ones. */
START_TEST(test_close_with_pending) {
  uvip_addrs_t *srcs;
  uvip_connector_t *c;
  uvip_outconn_t *a = NULL, *b = NULL;

  setup();
  srcs = th_addrs("127.0.0.2,127.0.0.3", 0);
  ck_assert_int_eq(uvip_connector_new(&loop, srcs, NULL, &c), 0);
  uvip_addrs_free(srcs);
  ck_assert_int_eq(connect_one(c), 0);
  ck_assert_int_eq(last_status, 0);
  ck_assert_int_eq(uvip_connect(c, (struct sockaddr *)&dest, &loop, on_connect, &a), 0);
  ck_assert_int_eq(uvip_connect(c, (struct sockaddr *)&dest, &loop, on_connect, &b), 0);
  ck_assert_int_eq(uvip_outconn_close(b, on_closed), 0);
  ck_assert_int_eq(uvip_connector_close(c, on_connector_closed), 0);
  ck_assert_int_eq(uvip_connect(c, (struct sockaddr *)&dest, &loop, on_connect, NULL), UV_EINVAL);
  th_run_until(&loop, &connector_closed, 1000);
  /* 1 connected before; a and b cancelled before the loop ran. */
  ck_assert_int_eq(n_cb, 3);
  ck_assert_int_eq(n_ok, 1);
  ck_assert_int_eq(n_err, 2);
  ck_assert_int_eq(last_status, UV_ECANCELED);
  ck_assert_int_eq(n_closed, 1);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  close(listen_fd);
}
END_TEST

/* Does this kernel have IP_LOCAL_PORT_RANGE (Linux 6.3)? Asked here, not
 * of the library, so that the expectations below do not come from the code
 * under test. */
static bool kernel_has_port_range(void) {
  uint32_t v = ((uint32_t)PORT_HI << 16) | PORT_LO;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ck_assert_int_ge(fd, 0);
  bool ok = setsockopt(fd, IPPROTO_IP, 51 /* IP_LOCAL_PORT_RANGE */, &v,
                       sizeof(v)) == 0;
  close(fd);
  return ok;
}

/* A connector with port_min..port_max in the namespace's PORT_LO..PORT_HI:
 * it counts exactly want ports, gets exactly want connections to one
 * destination, all with local ports in lo..hi, and then a clean
 * UV_EADDRNOTAVAIL. */
static void port_range_case(uint32_t port_min, uint32_t port_max,
                            uint64_t want, int lo, int hi) {
  uvip_connector_options_t opts;
  uvip_connector_t *c;
  int i;

  ck_assert_int_eq(uvip_connector_options_init(&opts), 0);
  opts.port_min = port_min;
  opts.port_max = port_max;
  ck_assert_int_eq(uvip_connector_new(&loop, NULL, &opts, &c), 0);
  ck_assert_uint_eq(ports_of(c, NULL).range, want);
  for (i = 0; i < (int)want; i++) {
    struct sockaddr_storage local;
    int len = sizeof(local), port;
    ck_assert_int_eq(connect_one(c), 0);
    ck_assert_int_eq(last_status, 0);
    ck_assert_int_eq(uv_tcp_getsockname(uvip_outconn_tcp(conns[nconns - 1]),
                                        (struct sockaddr *)&local, &len), 0);
    port = ntohs(((struct sockaddr_in *)&local)->sin_port);
    ck_assert_int_ge(port, lo);
    ck_assert_int_le(port, hi);
  }
  ck_assert_int_eq(connect_one(c), UV_EADDRNOTAVAIL);
  ck_assert_int_eq(n_ok, (int)want);
  close_connector(c);
}

/* A narrower per-connector range is what the kernel enforces when it has
 * IP_LOCAL_PORT_RANGE: exactly the 2 ports asked for (PORT_LO+1 and +2,
 * both inside the namespace's four). Without the option nothing can
 * narrow the kernel's choice, so the connector counts the system's 4;
 * counting the 2 asked for would leave it blind to the other two. */
START_TEST(test_option_port_range) {
  setup();
  if (kernel_has_port_range())
    port_range_case(PORT_LO + 1, PORT_LO + 2, 2, PORT_LO + 1, PORT_LO + 2);
  else
    port_range_case(PORT_LO + 1, PORT_LO + 2, NPORTS, PORT_LO, PORT_HI);
}
END_TEST

/* A range that only partly overlaps the system's is the intersection the
 * kernel uses (PORT_HI-1..PORT_HI: 2 ports). */
START_TEST(test_option_port_range_overlap) {
  setup();
  if (kernel_has_port_range())
    port_range_case(PORT_HI - 1, PORT_HI + 10, 2, PORT_HI - 1, PORT_HI);
  else
    port_range_case(PORT_HI - 1, PORT_HI + 10, NPORTS, PORT_LO, PORT_HI);
}
END_TEST

/* One that does not overlap it at all: the kernel falls back to the
 * system range, so 4, with or without the option. */
START_TEST(test_option_port_range_disjoint) {
  setup();
  port_range_case(PORT_HI + 100, PORT_HI + 101, NPORTS, PORT_LO, PORT_HI);
}
END_TEST

START_TEST(test_arguments) {
  uvip_connector_t *c;
  uvip_addrs_t *bad;
  uvip_connector_options_t opts;
  struct sockaddr_storage v6, zero_port;

  setup();
  bad = th_addrs("127.0.0.2:5", 0);
  ck_assert_int_eq(uvip_connector_new(&loop, bad, NULL, &c), UV_EINVAL);
  uvip_addrs_free(bad);
  ck_assert_int_eq(uvip_connector_new(NULL, NULL, NULL, &c), UV_EINVAL);
  ck_assert_int_eq(uvip_connector_new(&loop, NULL, NULL, NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_connector_options_init(NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_connector_options_init(&opts), 0);
  opts.port_min = 5000;
  ck_assert_int_eq(uvip_connector_new(&loop, NULL, &opts, &c), UV_EINVAL);
  opts.port_max = 4000;
  ck_assert_int_eq(uvip_connector_new(&loop, NULL, &opts, &c), UV_EINVAL);

  bad = th_addrs("127.0.0.2", 0);
  ck_assert_int_eq(uvip_connector_new(&loop, bad, NULL, &c), 0);
  uvip_addrs_free(bad);
  th_addr("::1", 80, &v6);
  th_addr("127.0.0.1", 0, &zero_port);
  ck_assert_int_eq(uvip_connect(c, (struct sockaddr *)&v6, NULL, on_connect, NULL), UV_EAFNOSUPPORT);
  ck_assert_int_eq(uvip_connect(c, (struct sockaddr *)&zero_port, NULL, on_connect, NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_connect(c, (struct sockaddr *)&dest, NULL, NULL, NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_connect(NULL, (struct sockaddr *)&dest, NULL, on_connect, NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_connector_stats(c, 1, &(uvip_connector_stats_t){0}), UV_EINVAL);
  ck_assert_int_eq(uvip_outconn_close(NULL, NULL), UV_EINVAL);
  ck_assert_ptr_null(uvip_connector_source(c, 1));
  ck_assert_int_eq(n_cb, 0);
  close_connector(c);
}
END_TEST

/* uvip-loadgen against the same four-port namespace: the wall and its
 * message, a source pool over two processes, and the descriptor check. */
static char *run_loadgen(const char *args, int *rc) {
  const char *dir = getenv("UVIP_BUILD_DIR");
  char cmd[1024], *out, *p;
  ck_assert_msg(dir != NULL, "UVIP_BUILD_DIR not set");
  snprintf(cmd, sizeof(cmd), "%s/examples/uvip-loadgen %s 2>&1; echo \"rc=$?\"",
           dir, args);
  out = th_cmd_output(cmd);
  ck_assert_ptr_nonnull(out);
  p = strstr(out, "rc=");
  ck_assert_msg(p != NULL, "no exit status in: %s", out);
  *rc = atoi(p + 3);
  return out;
}

START_TEST(test_loadgen_wall) {
  int rc;
  char *out;
  setup();
  out = run_loadgen("--target 127.0.0.1 --port 7000 --conns 6 --json", &rc);
  ck_assert_msg(rc == 1, "rc %d: %s", rc, out);
  ck_assert_msg(strstr(out, "\"established\":4,") != NULL, "%s", out);
  ck_assert_msg(strstr(out, "\"EADDRNOTAVAIL\":2") != NULL, "%s", out);
  ck_assert_msg(strstr(out, "ports exhausted for 127.0.0.1 -> 127.0.0.1:7000: "
                            "4 of 4 ephemeral ports in use; add --sources or "
                            "more --target VIPs") != NULL, "%s", out);
  free(out);

  /* Two sources hold twice as many; two processes share the pairs. */
  out = run_loadgen("--target 127.0.0.1 --sources 127.0.0.2-127.0.0.3 "
                    "--conns 8 --procs 2 --json", &rc);
  ck_assert_msg(rc == 0, "rc %d: %s", rc, out);
  ck_assert_msg(strstr(out, "\"ok\":true") != NULL, "%s", out);
  ck_assert_msg(strstr(out, "\"established\":8,") != NULL, "%s", out);
  ck_assert_msg(strstr(out, "\"failed_total\":0,") != NULL, "%s", out);
  free(out);

  out = run_loadgen("--conns 100000000", &rc);
  ck_assert_msg(rc == 2, "rc %d: %s", rc, out);
  ck_assert_msg(strstr(out, "exceed the descriptor limit") != NULL, "%s", out);
  free(out);
  close(listen_fd);
  uv_loop_close(&loop);
}
END_TEST

/* Each destination only uses sources of its own family. */
START_TEST(test_families) {
  uvip_addrs_t *srcs;
  uvip_connector_t *c;
  uvip_connector_stats_t st;
  struct sockaddr_storage v4dest;
  int fd6, i;

  setup();
  memcpy(&v4dest, &dest, sizeof(dest));
  th_addr("::1", 7000, &dest);
  fd6 = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ck_assert_int_ge(fd6, 0);
  ck_assert_int_eq(bind(fd6, (struct sockaddr *)&dest, sizeof(struct sockaddr_in6)), 0);
  ck_assert_int_eq(listen(fd6, 1024), 0);

  srcs = th_addrs("127.0.0.2,::1", 0);
  ck_assert_int_eq(uvip_connector_new(&loop, srcs, NULL, &c), 0);
  uvip_addrs_free(srcs);
  for (i = 0; i < NPORTS; i++) {
    ck_assert_int_eq(connect_one(c), 0);
    ck_assert_int_eq(last_status, 0);
    source_is("::1");
  }
  ck_assert_int_eq(connect_one(c), UV_EADDRNOTAVAIL);
  ck_assert_int_eq(uvip_connector_stats(c, 1, &st), 0);
  ck_assert_uint_eq(st.in_use, NPORTS);
  ck_assert_int_eq(uvip_connector_stats(c, 0, &st), 0);
  ck_assert_uint_eq(st.in_use, 0);
  ck_assert_uint_eq(ports_of(c, "::1").in_use, NPORTS);

  memcpy(&dest, &v4dest, sizeof(dest));
  ck_assert_int_eq(connect_one(c), 0);
  source_is("127.0.0.2");
  close_connector(c);
  close(fd6);
}
END_TEST

int main(void) {
  /* Every test enters a namespace of its own: skip them all here, before
   * check forks, when that is not permitted. */
  th_require_netns_or_skip();
  Suite *s = suite_create("connector");
  TCase *tc = tcase_create("connector");
  tcase_add_test(tc, test_failover_then_exhaustion);
  tcase_add_test(tc, test_exhausted_on_completion);
  tcase_add_test(tc, test_kernel_choice_wall);
  tcase_add_test(tc, test_correction);
  tcase_add_test(tc, test_refused);
  tcase_add_test(tc, test_close_with_pending);
  tcase_add_test(tc, test_option_port_range);
  tcase_add_test(tc, test_option_port_range_overlap);
  tcase_add_test(tc, test_option_port_range_disjoint);
  tcase_add_test(tc, test_arguments);
  tcase_add_test(tc, test_families);
  tcase_add_test(tc, test_loadgen_wall);
  suite_add_tcase(s, tc);
  return th_run_suite(s);
}
