/* Server, VIPs, caps, shutdown and draining on real loopback sockets.
 * SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "helpers.h"

static bool closed_flag;
static void on_server_closed(uvip_server_t *s) {
  (void)s;
  closed_flag = true;
}

/* Starts a tracking echo server on spec:port. */
static uvip_server_t *start(uv_loop_t *loop, const char *spec, int port,
                            uvip_server_options_t *opts, th_track_t *t) {
  uvip_addrs_t *a = th_addrs(spec, port);
  uvip_server_t *s = NULL;
  char err[256] = "";
  ck_assert_int_eq(uvip_server_new(loop, a, opts, &s), 0);
  uvip_addrs_free(a);
  uvip_server_set_data(s, t);
  int r = uvip_server_listen(s, th_echo_on_connection, err, sizeof(err));
  ck_assert_msg(r == 0, "listen: %s", err);
  return s;
}

static void finish(uv_loop_t *loop, uvip_server_t *s) {
  closed_flag = false;
  uvip_server_close_conns(s);
  ck_assert_int_eq(uvip_server_close(s, on_server_closed), 0);
  th_run_until(loop, &closed_flag, 100);
  ck_assert_int_eq(uv_loop_close(loop), 0);
}

static void echo_once(int fd, const char *msg) {
  char buf[64];
  size_t n = strlen(msg);
  ck_assert_int_eq(write(fd, msg, n), (ssize_t)n);
  /* The server echoes from its loop; drive it until the bytes arrive. */
  (void)buf;
}

START_TEST(test_args) {
  uv_loop_t loop;
  uvip_server_t *s = NULL;
  uvip_server_options_t o;
  uvip_addrs_t *a = th_addrs("127.0.0.1", 1);
  uvip_addrs_t *noport = th_addrs("127.0.0.1", 0);
  uv_loop_init(&loop);

  ck_assert_int_eq(uvip_server_options_init(NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_server_options_init(&o), 0);
  ck_assert_uint_eq(o.accept_budget, 4);
  ck_assert_int_eq(uvip_server_new(NULL, a, NULL, &s), UV_EINVAL);
  ck_assert_int_eq(uvip_server_new(&loop, NULL, NULL, &s), UV_EINVAL);
  ck_assert_int_eq(uvip_server_new(&loop, a, NULL, NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_server_new(&loop, noport, NULL, &s), UV_EINVAL);
  o.accept_budget = 0;
  ck_assert_int_eq(uvip_server_new(&loop, a, &o, &s), UV_EINVAL);
  o.accept_budget = 4;
  o.flags = 1u << 20;
  ck_assert_int_eq(uvip_server_new(&loop, a, &o, &s), UV_EINVAL);
  o.flags = 0;
  o.backlog = -1;
  ck_assert_int_eq(uvip_server_new(&loop, a, &o, &s), UV_EINVAL);
  ck_assert_ptr_null(s);

  ck_assert_int_eq(uvip_server_listen(NULL, th_echo_on_connection, NULL, 0), UV_EINVAL);
  ck_assert_int_eq(uvip_server_stop(NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_server_close(NULL, NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_server_close_conns(NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_server_stats(NULL, NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_server_add_vip(NULL, NULL, NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_server_remove_vip(NULL, NULL, 0, NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_vip_stats(NULL, NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_vip_error(NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_vip_fd(NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_vip_set_weight(NULL, 1), UV_EINVAL);
  ck_assert_int_eq(uvip_conn_close(NULL, NULL), UV_EINVAL);
  ck_assert_ptr_null(uvip_conn_tcp(NULL));
  ck_assert_ptr_null(uvip_server_vip(NULL, 0));
  ck_assert_ptr_null(uvip_server_loop(NULL));

  /* A server that never listened still closes through the loop. */
  ck_assert_int_eq(uvip_server_new(&loop, a, NULL, &s), 0);
  ck_assert_ptr_eq(uvip_server_loop(s), &loop);
  ck_assert_int_eq(uvip_server_listen(s, NULL, NULL, 0), UV_EINVAL);
  ck_assert_int_eq(uvip_vip_set_weight(uvip_server_vip(s, 0), 0), UV_EINVAL);
  ck_assert_int_eq(uvip_vip_set_weight(uvip_server_vip(s, 0), 65), UV_EINVAL);
  ck_assert_int_eq(uvip_vip_fd(uvip_server_vip(s, 0)), UV_EBADF);
  closed_flag = false;
  ck_assert_int_eq(uvip_server_close(s, on_server_closed), 0);
  ck_assert(!closed_flag);
  th_run_until(&loop, &closed_flag, 10);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  uvip_addrs_free(a);
  uvip_addrs_free(noport);
  ck_assert_uint_eq(uvip_version(), UVIP_VERSION_HEX);
  ck_assert_str_eq(uvip_version_string(), "0.1.0");
}
END_TEST

/* Bind 16 loopback VIPs, connect to each, echo, and check that every
 * connection knows the VIP it arrived on. */
START_TEST(test_echo_16_vips) {
  uv_loop_t loop;
  th_track_t t = {0};
  int port = th_free_port(), fds[16];
  uv_loop_init(&loop);
  uvip_server_t *s = start(&loop, "127.0.0.1-127.0.0.16", port, NULL, &t);
  ck_assert_uint_eq(uvip_server_vip_count(s), 16);

  for (int i = 0; i < 16; i++) {
    struct sockaddr_storage sa;
    char ip[32];
    snprintf(ip, sizeof(ip), "127.0.0.%d", i + 1);
    th_addr(ip, port, &sa);
    fds[i] = th_connect((struct sockaddr *)&sa, NULL);
    echo_once(fds[i], "ping");
  }
  bool done = false;
  for (int turn = 0; turn < 200 && !done; turn++) {
    uv_run(&loop, UV_RUN_NOWAIT);
    done = t.echoed_bytes == 16 * 4;
  }
  ck_assert_int_eq(t.echoed_bytes, 64);
  for (int i = 0; i < 16; i++) {
    char buf[8];
    ck_assert_int_eq(read(fds[i], buf, sizeof(buf)), 4);
    ck_assert(memcmp(buf, "ping", 4) == 0);
  }
  /* Each accepted connection names the VIP the client dialled. */
  for (int i = 0; i < t.nconns; i++) {
    struct sockaddr_storage local;
    int len = sizeof(local);
    ck_assert_int_eq(uv_tcp_getsockname(uvip_conn_tcp(t.conns[i]),
                                        (struct sockaddr *)&local, &len), 0);
    const struct sockaddr_in *vip =
        (const struct sockaddr_in *)uvip_vip_addr(uvip_conn_vip(t.conns[i]));
    ck_assert_uint_eq(vip->sin_addr.s_addr,
                      ((struct sockaddr_in *)&local)->sin_addr.s_addr);
  }
  for (size_t i = 0; i < 16; i++) {
    uvip_vip_stats_t st;
    uvip_vip_t *v = uvip_server_vip(s, i);
    ck_assert_int_eq(uvip_vip_state(v), UVIP_VIP_LISTENING);
    ck_assert_int_ge(uvip_vip_fd(v), 0);
    ck_assert_int_eq(uvip_vip_stats(v, &st), 0);
    ck_assert_uint_eq(st.accepted, 1);
    ck_assert_uint_eq(st.active, 1);
  }
  for (int i = 0; i < 16; i++)
    close(fds[i]);
  /* EOF closes each server side; the slots come back. */
  for (int turn = 0; turn < 200 && t.closed < 16; turn++)
    uv_run(&loop, UV_RUN_NOWAIT);
  uvip_vip_stats_t tot;
  uvip_server_stats(s, &tot);
  ck_assert_uint_eq(tot.accepted, 16);
  ck_assert_uint_eq(tot.active, 0);
  ck_assert_uint_eq(tot.closed, 16);
  finish(&loop, s);
}
END_TEST

START_TEST(test_ipv6) {
  uv_loop_t loop;
  th_track_t t = {0};
  int port = th_free_port();
  struct sockaddr_storage sa;
  uv_loop_init(&loop);
  uvip_addrs_t *a = th_addrs("[::1]", port);
  uvip_server_t *s = NULL;
  ck_assert_int_eq(uvip_server_new(&loop, a, NULL, &s), 0);
  uvip_addrs_free(a);
  uvip_server_set_data(s, &t);
  /* Registered only where the host has IPv6 on lo (see main()): here the
   * listener must bind. */
  char err[256] = "";
  int r = uvip_server_listen(s, th_echo_on_connection, err, sizeof(err));
  ck_assert_msg(r == 0, "listen on [::1]: %s", err);
  ck_assert_int_eq(uvip_vip_state(uvip_server_vip(s, 0)), UVIP_VIP_LISTENING);
  th_addr("::1", port, &sa);
  int fd = th_connect((struct sockaddr *)&sa, NULL);
  ck_assert_int_eq(write(fd, "v6", 2), 2);
  for (int turn = 0; turn < 100 && t.echoed_bytes < 2; turn++)
    uv_run(&loop, UV_RUN_NOWAIT);
  char buf[4];
  ck_assert_int_eq(read(fd, buf, sizeof(buf)), 2);
  ck_assert(memcmp(buf, "v6", 2) == 0);
  ck_assert_int_eq(t.accepted, 1);
  /* It arrived over IPv6. */
  struct sockaddr_storage local;
  int len = sizeof(local);
  ck_assert_int_eq(uv_tcp_getsockname(uvip_conn_tcp(t.conns[0]),
                                      (struct sockaddr *)&local, &len), 0);
  ck_assert_int_eq(local.ss_family, AF_INET6);
  close(fd);
  finish(&loop, s);
}
END_TEST

/* An address not on the host: serve what bound, or all or nothing. */
START_TEST(test_bind_failure) {
  uv_loop_t loop;
  th_track_t t = {0};
  int port = th_free_port();
  char err[256] = "";
  uvip_server_options_t o;
  uvip_server_t *s = NULL;
  /* 192.0.2.1 (TEST-NET-1) is never configured here; binding sends nothing. */
  uvip_addrs_t *a = th_addrs("127.0.0.1,192.0.2.1", port);
  uv_loop_init(&loop);

  ck_assert_int_eq(uvip_server_new(&loop, a, NULL, &s), 0);
  uvip_server_set_data(s, &t);
  ck_assert_int_eq(uvip_server_listen(s, th_echo_on_connection, err, sizeof(err)), 0);
  ck_assert_msg(strstr(err, "192.0.2.1") != NULL, "err: %s", err);
  ck_assert_int_eq(uvip_vip_state(uvip_server_vip(s, 0)), UVIP_VIP_LISTENING);
  ck_assert_int_eq(uvip_vip_state(uvip_server_vip(s, 1)), UVIP_VIP_FAILED);
  ck_assert_int_eq(uvip_vip_error(uvip_server_vip(s, 1)), UV_EADDRNOTAVAIL);
  ck_assert_int_eq(uvip_server_listen(s, th_echo_on_connection, NULL, 0), UV_EALREADY);
  finish(&loop, s);

  uv_loop_init(&loop);
  uvip_server_options_init(&o);
  o.flags = UVIP_ALL_OR_NOTHING;
  ck_assert_int_eq(uvip_server_new(&loop, a, &o, &s), 0);
  err[0] = 0;
  ck_assert_int_eq(uvip_server_listen(s, th_echo_on_connection, err, sizeof(err)),
                   UV_EADDRNOTAVAIL);
  ck_assert_msg(strstr(err, "192.0.2.1:") != NULL, "err: %s", err);
  /* Nothing stays bound: the first VIP's port is free again. */
  ck_assert_int_eq(uvip_vip_state(uvip_server_vip(s, 0)), UVIP_VIP_IDLE);
  struct sockaddr_storage sa;
  th_addr("127.0.0.1", port, &sa);
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(struct sockaddr_in)), 0);
  close(fd);
  closed_flag = false;
  uvip_server_close(s, on_server_closed);
  th_run_until(&loop, &closed_flag, 10);

  /* With IP_FREEBIND the missing address binds. */
  o.flags = UVIP_ALL_OR_NOTHING | UVIP_FREEBIND;
  ck_assert_int_eq(uvip_server_new(&loop, a, &o, &s), 0);
  uvip_server_set_data(s, &t);
  ck_assert_int_eq(uvip_server_listen(s, th_echo_on_connection, NULL, 0), 0);
  ck_assert_int_eq(uvip_vip_state(uvip_server_vip(s, 1)), UVIP_VIP_LISTENING);
  finish(&loop, s);
  uvip_addrs_free(a);
}
END_TEST

/* The global cap holds under churn, slots come back on close, and the
 * books balance at the end. */
START_TEST(test_cap_churn) {
  uv_loop_t loop;
  th_track_t t = {0};
  uvip_server_options_t o;
  int port = th_free_port(), fds[40];
  uv_loop_init(&loop);
  uvip_server_options_init(&o);
  o.max_conns = 5;
  uvip_server_t *s = start(&loop, "127.0.0.1-127.0.0.4", port, &o, &t);

  for (int i = 0; i < 40; i++) {
    struct sockaddr_storage sa;
    char ip[32];
    snprintf(ip, sizeof(ip), "127.0.0.%d", i % 4 + 1);
    th_addr(ip, port, &sa);
    fds[i] = th_connect((struct sockaddr *)&sa, NULL);
  }
  /* Every queued connection was seen and the server has nothing left to
   * do: exactly the cap was taken. */
  th_run_until_quiet(&loop, 100);
  ck_assert_int_eq(t.accepted, 5);
  uvip_vip_stats_t tot;
  uvip_server_stats(s, &tot);
  ck_assert_uint_eq(tot.active, 5);
  ck_assert_uint_gt(tot.deferred, 0);

  /* Churn: close two at a time until all 40 were served; each freed slot
   * is taken again at once while connections wait. */
  int next = 0;
  for (int round = 0; round < 200 && t.accepted < 40; round++) {
    th_close_conn(&t, next++);
    if (next < t.nconns)
      th_close_conn(&t, next++);
    th_run_until_quiet(&loop, 100);
    ck_assert_uint_le(t.max_active, 5);
    if (t.accepted < 40)
      ck_assert_uint_eq(t.active, 5);
  }
  ck_assert_int_eq(t.accepted, 40);
  ck_assert_uint_le(t.max_active, 5);
  for (int i = 0; i < t.nconns; i++)
    th_close_conn(&t, i);
  for (int turn = 0; turn < 20 && t.closed < 40; turn++)
    uv_run(&loop, UV_RUN_NOWAIT);
  uvip_server_stats(s, &tot);
  ck_assert_uint_eq(tot.accepted, 40);
  ck_assert_uint_eq(tot.closed, 40);
  ck_assert_uint_eq(tot.active, 0);
  for (int i = 0; i < 40; i++)
    close(fds[i]);
  finish(&loop, s);
}
END_TEST

START_TEST(test_per_vip_cap) {
  uv_loop_t loop;
  th_track_t t = {0};
  uvip_server_options_t o;
  int port = th_free_port(), fds[10];
  uv_loop_init(&loop);
  uvip_server_options_init(&o);
  o.max_conns_per_vip = 2;
  uvip_server_t *s = start(&loop, "127.0.0.1,127.0.0.2", port, &o, &t);
  for (int i = 0; i < 10; i++) {
    struct sockaddr_storage sa;
    th_addr(i < 5 ? "127.0.0.1" : "127.0.0.2", port, &sa);
    fds[i] = th_connect((struct sockaddr *)&sa, NULL);
  }
  th_run_until_quiet(&loop, 100);
  uvip_vip_stats_t a, b;
  uvip_vip_stats(uvip_server_vip(s, 0), &a);
  uvip_vip_stats(uvip_server_vip(s, 1), &b);
  ck_assert_uint_eq(a.active, 2);
  ck_assert_uint_eq(b.active, 2);
  ck_assert_uint_ge(a.deferred, 1);

  /* A slot freed on VIP 0 goes to VIP 0's queue only. */
  int i0 = uvip_conn_vip(t.conns[0]) == uvip_server_vip(s, 0) ? 0 : 1;
  th_close_conn(&t, i0);
  th_run_until_quiet(&loop, 100);
  uvip_vip_stats(uvip_server_vip(s, 0), &a);
  uvip_vip_stats(uvip_server_vip(s, 1), &b);
  ck_assert_uint_eq(a.accepted, 3);
  ck_assert_uint_eq(a.active, 2);
  ck_assert_uint_eq(b.accepted, 2);
  for (int i = 0; i < 10; i++)
    close(fds[i]);
  finish(&loop, s);
}
END_TEST

static int user_closed;
static void count_user_close(uvip_conn_t *c) {
  (void)c;
  user_closed++;
}

/* Closing waits for open connections; close_conns ends them and the
 * application hears of each. */
START_TEST(test_shutdown_with_open_conns) {
  uv_loop_t loop;
  th_track_t t = {0};
  uvip_server_options_t o;
  int port = th_free_port(), fds[6];
  uv_loop_init(&loop);
  uvip_server_options_init(&o);
  o.conn_close_cb = count_user_close;
  uvip_server_t *s = start(&loop, "127.0.0.1-127.0.0.3", port, &o, &t);
  for (int i = 0; i < 6; i++) {
    struct sockaddr_storage sa;
    char ip[32];
    snprintf(ip, sizeof(ip), "127.0.0.%d", i % 3 + 1);
    th_addr(ip, port, &sa);
    fds[i] = th_connect((struct sockaddr *)&sa, NULL);
  }
  for (int turn = 0; turn < 20 && t.accepted < 6; turn++)
    uv_run(&loop, UV_RUN_NOWAIT);
  ck_assert_int_eq(t.accepted, 6);

  closed_flag = false;
  user_closed = 0;
  ck_assert_int_eq(uvip_server_close(s, on_server_closed), 0);
  ck_assert_int_eq(uvip_server_close(s, on_server_closed), UV_EALREADY);
  th_run_until_quiet(&loop, 100);
  ck_assert(!closed_flag); /* connections still open and still echo */
  ck_assert_int_eq(write(fds[0], "x", 1), 1);
  for (int turn = 0; turn < 20 && t.echoed_bytes < 1; turn++)
    uv_run(&loop, UV_RUN_NOWAIT);
  char c;
  ck_assert_int_eq(read(fds[0], &c, 1), 1);
  /* New connections are refused once listeners are closed. */
  struct sockaddr_storage sa;
  th_addr("127.0.0.1", port, &sa);
  int nfd = socket(AF_INET, SOCK_STREAM, 0);
  ck_assert_int_ne(connect(nfd, (struct sockaddr *)&sa, sizeof(struct sockaddr_in)), 0);
  ck_assert_int_eq(errno, ECONNREFUSED);
  close(nfd);

  th_close_conn(&t, 0); /* the application closes one itself */
  uvip_server_close_conns(s);
  th_run_until(&loop, &closed_flag, 100);
  ck_assert_int_eq(user_closed, 5);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  for (int i = 0; i < 6; i++)
    close(fds[i]);
}
END_TEST

static uvip_vip_t *drained_vip;
static int drained_timeout = -1;
static void on_drained(uvip_vip_t *v, int by_timeout) {
  drained_vip = v;
  drained_timeout = by_timeout;
}

/* Removing a VIP closes its listener only; its connections run on until
 * they end (or the timeout ends them); other VIPs keep accepting. */
START_TEST(test_remove_and_add_vip) {
  uv_loop_t loop;
  th_track_t t = {0};
  uvip_server_options_t o;
  int port = th_free_port();
  struct sockaddr_storage sa1, sa2, sa3;
  uv_loop_init(&loop);
  uvip_server_options_init(&o);
  o.conn_close_cb = th_on_conn_closed;
  uvip_server_t *s = start(&loop, "127.0.0.1,127.0.0.2", port, &o, &t);
  th_addr("127.0.0.1", port, &sa1);
  th_addr("127.0.0.2", port, &sa2);
  th_addr("127.0.0.3", port, &sa3);
  int fd1 = th_connect((struct sockaddr *)&sa1, NULL);
  for (int turn = 0; turn < 20 && t.accepted < 1; turn++)
    uv_run(&loop, UV_RUN_NOWAIT);
  ck_assert_int_eq(t.accepted, 1);

  uvip_vip_t *v1 = uvip_server_vip(s, 0);
  drained_vip = NULL;
  ck_assert_int_eq(uvip_server_remove_vip(s, v1, 0, on_drained), 0);
  ck_assert_int_eq(uvip_server_remove_vip(s, v1, 0, on_drained), UV_EALREADY);
  ck_assert_int_eq(uvip_vip_state(v1), UVIP_VIP_DRAINING);
  int nfd = socket(AF_INET, SOCK_STREAM, 0);
  ck_assert_int_ne(connect(nfd, (struct sockaddr *)&sa1, sizeof(struct sockaddr_in)), 0);
  close(nfd);
  /* Its connection still echoes. */
  ck_assert_int_eq(write(fd1, "y", 1), 1);
  for (int turn = 0; turn < 20 && t.echoed_bytes < 1; turn++)
    uv_run(&loop, UV_RUN_NOWAIT);
  char c;
  ck_assert_int_eq(read(fd1, &c, 1), 1);
  /* The other VIP keeps accepting. */
  int fd2 = th_connect((struct sockaddr *)&sa2, NULL);
  for (int turn = 0; turn < 20 && t.accepted < 2; turn++)
    uv_run(&loop, UV_RUN_NOWAIT);
  ck_assert_int_eq(t.accepted, 2);
  ck_assert_ptr_null(drained_vip);
  close(fd1); /* EOF -> the server closes it -> the drain completes */
  for (int turn = 0; turn < 20 && !drained_vip; turn++)
    uv_run(&loop, UV_RUN_NOWAIT);
  ck_assert_ptr_eq(drained_vip, v1);
  ck_assert_int_eq(drained_timeout, 0);
  ck_assert_uint_eq(uvip_server_vip_count(s), 1);

  /* Add a VIP at run time, then drain it with a timeout. */
  uvip_vip_t *v3 = NULL;
  ck_assert_int_eq(uvip_server_add_vip(s, (struct sockaddr *)&sa3, &v3), 0);
  ck_assert_int_eq(uvip_server_add_vip(s, (struct sockaddr *)&sa3, NULL), UV_EEXIST);
  int fd3 = th_connect((struct sockaddr *)&sa3, NULL);
  for (int turn = 0; turn < 20 && t.accepted < 3; turn++)
    uv_run(&loop, UV_RUN_NOWAIT);
  ck_assert_int_eq(t.accepted, 3);
  ck_assert_ptr_eq(uvip_conn_vip(t.conns[2]), v3);
  drained_vip = NULL;
  ck_assert_int_eq(uvip_server_remove_vip(s, v3, 1, on_drained), 0);
  for (int turn = 0; turn < 1000 && !drained_vip; turn++)
    uv_run(&loop, UV_RUN_ONCE);
  ck_assert_ptr_eq(drained_vip, v3);
  ck_assert_int_eq(drained_timeout, 1);
  ck_assert_int_eq(read(fd3, &c, 1), 0); /* the library closed it */
  /* A VIP with no connections drains from the loop, not inside the call. */
  uvip_vip_t *v2 = uvip_server_vip(s, 0);
  close(fd2);
  for (int turn = 0; turn < 20 && t.closed < 3; turn++)
    uv_run(&loop, UV_RUN_NOWAIT);
  drained_vip = NULL;
  ck_assert_int_eq(uvip_server_remove_vip(s, v2, 0, on_drained), 0);
  ck_assert_ptr_null(drained_vip);
  for (int turn = 0; turn < 20 && !drained_vip; turn++)
    uv_run(&loop, UV_RUN_NOWAIT);
  ck_assert_ptr_eq(drained_vip, v2);
  ck_assert_uint_eq(uvip_server_vip_count(s), 0);
  close(fd3);
  finish(&loop, s);
}
END_TEST

/* Options set on the listener reach accepted connections. */
START_TEST(test_nodelay_inherited) {
  uv_loop_t loop;
  th_track_t t = {0};
  uvip_server_options_t o;
  int port = th_free_port();
  uv_loop_init(&loop);
  uvip_server_options_init(&o);
  o.flags = UVIP_NODELAY;
  t.hold = 1;
  uvip_server_t *s = start(&loop, "127.0.0.1", port, &o, &t);
  struct sockaddr_storage sa;
  th_addr("127.0.0.1", port, &sa);
  int fd = th_connect((struct sockaddr *)&sa, NULL);
  for (int turn = 0; turn < 20 && t.accepted < 1; turn++)
    uv_run(&loop, UV_RUN_NOWAIT);
  ck_assert_int_eq(t.accepted, 1);
  uv_os_fd_t cfd;
  int on = 0;
  socklen_t len = sizeof(on);
  ck_assert_int_eq(uv_fileno((uv_handle_t *)uvip_conn_tcp(t.conns[0]), &cfd), 0);
  ck_assert_int_eq(getsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &on, &len), 0);
  ck_assert_int_eq(on, 1);
  close(fd);
  finish(&loop, s);
}
END_TEST

/* Pause keeps the VIP, its counters and its connections; resume listens
 * again on the same VIP. An empty server may listen with UVIP_ALLOW_EMPTY. */
START_TEST(test_pause_resume_and_empty) {
  uv_loop_t loop;
  th_track_t t = {0};
  uvip_server_options_t o;
  int port = th_free_port();
  struct sockaddr_storage sa;
  uv_loop_init(&loop);
  uvip_server_options_init(&o);
  uvip_server_t *s = start(&loop, "127.0.0.1", port, &o, &t);
  uvip_vip_t *v = uvip_server_vip(s, 0);
  int x;
  ck_assert_int_eq(uvip_server_is_listening(s), 1);
  uvip_vip_set_data(v, &x);
  ck_assert_ptr_eq(uvip_vip_get_data(v), &x);
  th_addr("127.0.0.1", port, &sa);
  int fd = th_connect((struct sockaddr *)&sa, NULL);
  for (int turn = 0; turn < 20 && t.accepted < 1; turn++)
    uv_run(&loop, UV_RUN_NOWAIT);
  ck_assert_int_eq(t.accepted, 1);

  ck_assert_int_eq(uvip_vip_resume(v), UV_EINVAL); /* it is listening */
  ck_assert_int_eq(uvip_vip_pause(v), 0);
  ck_assert_int_eq(uvip_vip_pause(v), UV_EINVAL);
  ck_assert_int_eq(uvip_vip_state(v), UVIP_VIP_PAUSED);
  int nfd = socket(AF_INET, SOCK_STREAM, 0);
  ck_assert_int_ne(connect(nfd, (struct sockaddr *)&sa, sizeof(struct sockaddr_in)), 0);
  close(nfd);
  ck_assert_int_eq(write(fd, "p", 1), 1); /* its connection still echoes */
  for (int turn = 0; turn < 20 && t.echoed_bytes < 1; turn++)
    uv_run(&loop, UV_RUN_NOWAIT);
  char c;
  ck_assert_int_eq(read(fd, &c, 1), 1);

  ck_assert_int_eq(uvip_vip_resume(v), 0);
  ck_assert_int_eq(uvip_vip_state(v), UVIP_VIP_LISTENING);
  int fd2 = th_connect((struct sockaddr *)&sa, NULL);
  for (int turn = 0; turn < 20 && t.accepted < 2; turn++)
    uv_run(&loop, UV_RUN_NOWAIT);
  uvip_vip_stats_t st;
  uvip_vip_stats(v, &st);
  ck_assert_uint_eq(st.accepted, 2); /* one VIP, counters kept */
  ck_assert_uint_eq(st.active, 2);
  close(fd);
  close(fd2);
  finish(&loop, s);

  /* No VIPs at all: refused, unless UVIP_ALLOW_EMPTY. */
  uvip_addrs_t *none;
  uv_loop_init(&loop);
  ck_assert_int_eq(uvip_addrs_new(&none), 0);
  ck_assert_int_eq(uvip_server_new(&loop, none, &o, &s), 0);
  ck_assert_int_eq(uvip_server_listen(s, th_echo_on_connection, NULL, 0), UV_EINVAL);
  uvip_server_close(s, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  o.flags = UVIP_ALLOW_EMPTY;
  ck_assert_int_eq(uvip_server_new(&loop, none, &o, &s), 0);
  uvip_server_set_data(s, &t);
  ck_assert_int_eq(uvip_server_listen(s, th_echo_on_connection, NULL, 0), 0);
  ck_assert_int_eq(uvip_server_is_listening(s), 1);
  ck_assert_int_eq(uvip_server_add_vip(s, (struct sockaddr *)&sa, &v), 0);
  fd = th_connect((struct sockaddr *)&sa, NULL);
  for (int turn = 0; turn < 20 && t.accepted < 3; turn++)
    uv_run(&loop, UV_RUN_NOWAIT);
  ck_assert_int_eq(t.accepted, 3);
  close(fd);
  uvip_addrs_free(none);
  finish(&loop, s);
}
END_TEST

/* Whether the host has IPv6 on its loopback, decided before any test runs:
 * a kernel without IPv6 (no AF_INET6 sockets) or with IPv6 disabled on lo
 * has no [::1]. Any other failure to bind [::1] is a test failure. */
static bool host_has_ipv6_loopback(const char **why) {
  int fd = socket(AF_INET6, SOCK_STREAM, 0);
  if (fd < 0) {
    *why = "no AF_INET6 sockets";
    return false;
  }
  close(fd);
  FILE *f = fopen("/proc/sys/net/ipv6/conf/lo/disable_ipv6", "r");
  int disabled = 0;
  if (f) {
    if (fscanf(f, "%d", &disabled) != 1)
      disabled = 0;
    fclose(f);
  }
  if (disabled) {
    *why = "IPv6 disabled on lo";
    return false;
  }
  return true;
}

int main(void) {
  Suite *s = suite_create("server");
  TCase *tc = tcase_create("server");
  const char *why = "";
  tcase_add_test(tc, test_args);
  tcase_add_test(tc, test_echo_16_vips);
  if (host_has_ipv6_loopback(&why))
    tcase_add_test(tc, test_ipv6);
  else
    fprintf(stderr, "SKIP test_ipv6: %s\n", why);
  tcase_add_test(tc, test_bind_failure);
  tcase_add_test(tc, test_cap_churn);
  tcase_add_test(tc, test_per_vip_cap);
  tcase_add_test(tc, test_shutdown_with_open_conns);
  tcase_add_test(tc, test_remove_and_add_vip);
  tcase_add_test(tc, test_nodelay_inherited);
  tcase_add_test(tc, test_pause_resume_and_empty);
  suite_add_tcase(s, tc);
  return th_run_suite(s);
}
