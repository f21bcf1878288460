/* The live pool without a network namespace: loopback addresses
 * (127.0.0.0/8 is all local, so the bind probe always finds them) and a
 * bind() wrapped at link time (-Wl,--wrap=bind, see tests/meson.build) to
 * make the listener's bind fail as if the address had gone between the
 * probe and the bind. Also the close order between a live pool and its
 * server.
 * SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "helpers.h"

/* Pool 127.0.0.2 .. 127.0.0.(1 + NADDR) */
#define NADDR 8
#define FIRST_ADDR 0x7f000002u

/* ------------------------------------------------------------------------ */
/* bind() shim                                                              */
/* ------------------------------------------------------------------------ */

int __real_bind(int fd, const struct sockaddr *sa, socklen_t len);
int __wrap_bind(int fd, const struct sockaddr *sa, socklen_t len);

/* Binds to a pool address on fail_port (the listener's bind; the live
 * pool's probe binds port 0 and is never failed) fail with EADDRNOTAVAIL
 * while fail_left[i] > 0. */
static int fail_port;
static int fail_left[NADDR];
static int listener_binds[NADDR];

int __wrap_bind(int fd, const struct sockaddr *sa, socklen_t len) {
  if (fail_port != 0 && sa != NULL && sa->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
    uint32_t a = ntohl(in->sin_addr.s_addr);
    if (ntohs(in->sin_port) == fail_port && a >= FIRST_ADDR &&
        a < FIRST_ADDR + NADDR) {
      size_t i = a - FIRST_ADDR;
      listener_binds[i]++;
      if (fail_left[i] > 0) {
        fail_left[i]--;
        errno = EADDRNOTAVAIL;
        return -1;
      }
    }
  }
  return __real_bind(fd, sa, len);
}

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

typedef struct {
  int up, down, failed;
  int server_closed, live_closed;
  int close_in_cb; /* uvip_server_close() from the live pool's close cb */
  uvip_server_t *server;
  uvip_vip_t *up_vip[NADDR]; /* the VIP of each UVIP_LIVE_UP, in order */
  int failed_status;
  bool close_on_up; /* uvip_livepool_close() from the first UP */
} state_t;

static state_t st;

static void on_conn(uvip_server_t *s, uvip_conn_t *c) {
  (void)s;
  uvip_conn_close(c, NULL);
}

static void on_live_closed(uvip_livepool_t *lp);

static void on_live(uvip_livepool_t *lp, uvip_live_event_t ev,
                    const struct sockaddr *addr, uvip_vip_t *vip,
                    int status) {
  (void)addr;
  ck_assert_int_eq(st.live_closed, 0);
  switch (ev) {
  case UVIP_LIVE_UP:
    ck_assert_int_eq(uvip_vip_state(vip), UVIP_VIP_LISTENING);
    {
      char a[UVIP_ADDRSTRLEN], b[UVIP_ADDRSTRLEN];
      ck_assert_int_eq(uvip_addr_format(uvip_vip_addr(vip), 1, a, sizeof(a)), 0);
      ck_assert_int_eq(uvip_addr_format(addr, 1, b, sizeof(b)), 0);
      ck_assert_str_eq(a, b);
    }
    ck_assert_int_lt(st.up, NADDR);
    st.up_vip[st.up++] = vip;
    if (st.close_on_up)
      ck_assert_int_eq(uvip_livepool_close(lp, on_live_closed), 0);
    break;
  case UVIP_LIVE_DOWN:
    st.down++;
    break;
  case UVIP_LIVE_FAILED:
    ck_assert_int_lt(status, 0);
    st.failed_status = status;
    st.failed++;
    break;
  }
}

static void on_server_closed(uvip_server_t *s) {
  (void)s;
  st.server_closed++;
}

static void on_live_closed(uvip_livepool_t *lp) {
  (void)lp;
  st.live_closed++;
  ck_assert_int_eq(st.server_closed, 0);
  /* The live pool is finished with the server by now: closing the server
   * from here is the natural order and must be accepted. */
  st.close_in_cb = uvip_server_close(st.server, on_server_closed);
}

static uvip_server_t *empty_server(uv_loop_t *loop) {
  uvip_server_options_t o;
  uvip_addrs_t *none = NULL;
  uvip_server_t *s = NULL;
  ck_assert_int_eq(uvip_server_options_init(&o), 0);
  o.flags |= UVIP_ALLOW_EMPTY;
  ck_assert_int_eq(uvip_addrs_new(&none), 0);
  ck_assert_int_eq(uvip_server_new(loop, none, &o, &s), 0);
  uvip_addrs_free(none);
  ck_assert_int_eq(uvip_server_listen(s, on_conn, NULL, 0), 0);
  return s;
}

static void run_until_count(uv_loop_t *loop, const int *counter, int want) {
  for (int turn = 0; turn < 1000 && *counter < want; turn++)
    uv_run(loop, UV_RUN_ONCE);
  ck_assert_int_eq(*counter, want);
}

/* ------------------------------------------------------------------------ */
/* Tests                                                                    */
/* ------------------------------------------------------------------------ */

/* Every pool address is present for the probe but its listener cannot bind
 * (EADDRNOTAVAIL: gone again) at the first sync and at the first recheck.
 * Each failure queues the address for another recheck, from inside the
 * timer that is working through the queue: the queue holds every entry at
 * most once (it used to append a second copy past the end of the array,
 * a heap overflow ASan reports). The second recheck binds them all. */
START_TEST(test_bind_fails_after_probe) {
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  memset(&st, 0, sizeof(st));
  int port = th_free_port();
  char spec[64];
  snprintf(spec, sizeof(spec), "127.0.0.2-127.0.0.%d", 1 + NADDR);
  uvip_addrs_t *pool = th_addrs(spec, port);
  ck_assert_uint_eq(uvip_addrs_count(pool), NADDR);

  st.server = empty_server(&loop);
  for (int i = 0; i < NADDR; i++)
    fail_left[i] = 2;
  memset(listener_binds, 0, sizeof(listener_binds));
  fail_port = port;

  uvip_livepool_t *lp = NULL;
  ck_assert_int_eq(uvip_livepool_new(st.server, pool, &lp), 0);
  ck_assert_int_eq(uvip_livepool_start(lp, on_live), 0);
  run_until_count(&loop, &st.up, NADDR);
  /* Three binds each: the sync, the failing recheck, the one that worked.
   * A VIP never failed visibly: EADDRNOTAVAIL only means "recheck". */
  for (int i = 0; i < NADDR; i++) {
    ck_assert_int_eq(listener_binds[i], 3);
    ck_assert_int_eq(fail_left[i], 0);
  }
  ck_assert_int_eq(st.failed, 0);
  ck_assert_int_eq(st.down, 0);
  ck_assert_uint_eq(uvip_livepool_up_count(lp), NADDR);
  ck_assert_uint_eq(uvip_server_vip_count(st.server), NADDR);
  fail_port = 0;

  /* They really listen. */
  for (int i = 0; i < NADDR; i++) {
    char ip[32];
    struct sockaddr_storage sa;
    snprintf(ip, sizeof(ip), "127.0.0.%d", 2 + i);
    th_addr(ip, port, &sa);
    close(th_connect((struct sockaddr *)&sa, NULL));
  }

  ck_assert_int_eq(uvip_livepool_close(lp, on_live_closed), 0);
  run_until_count(&loop, &st.server_closed, 1);
  ck_assert_int_eq(st.close_in_cb, 0);
  ck_assert_int_eq(st.live_closed, 1);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(st.live_closed, 1);
  ck_assert_int_eq(st.server_closed, 1);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  uvip_addrs_free(pool);
}
END_TEST

/* A server with a live pool attached cannot be closed (UV_EBUSY): the live
 * pool would go on using it. It stays attached until the live pool's close
 * has finished, and the live pool's close callback may close the server. */
START_TEST(test_close_order) {
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  memset(&st, 0, sizeof(st));
  uvip_addrs_t *pool = th_addrs("127.0.0.2", th_free_port());
  st.server = empty_server(&loop);

  uvip_livepool_t *lp = NULL;
  ck_assert_int_eq(uvip_livepool_new(st.server, pool, &lp), 0);
  /* Attached from creation, started or not. */
  ck_assert_int_eq(uvip_server_close(st.server, on_server_closed), UV_EBUSY);
  ck_assert_int_eq(uvip_livepool_start(lp, on_live), 0);
  run_until_count(&loop, &st.up, 1);
  ck_assert_int_eq(uvip_server_close(st.server, on_server_closed), UV_EBUSY);

  /* Closing, but not closed yet: still attached. */
  ck_assert_int_eq(uvip_livepool_close(lp, on_live_closed), 0);
  ck_assert_int_eq(uvip_server_close(st.server, on_server_closed), UV_EBUSY);
  ck_assert_int_eq(st.live_closed, 0);

  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(st.live_closed, 1);
  ck_assert_int_eq(st.close_in_cb, 0);
  ck_assert_int_eq(st.server_closed, 1);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  uvip_addrs_free(pool);
}
END_TEST

/* A live pool closed before it was ever started detaches too. */
START_TEST(test_close_unstarted) {
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  memset(&st, 0, sizeof(st));
  uvip_addrs_t *pool = th_addrs("127.0.0.2", th_free_port());
  st.server = empty_server(&loop);
  uvip_livepool_t *lp = NULL;
  ck_assert_int_eq(uvip_livepool_new(st.server, pool, &lp), 0);
  ck_assert_int_eq(uvip_livepool_close(lp, on_live_closed), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(st.live_closed, 1);
  ck_assert_int_eq(st.close_in_cb, 0);
  ck_assert_int_eq(st.server_closed, 1);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  uvip_addrs_free(pool);
}
END_TEST

/* A VIP for a pool address that the application adds between the live
 * pool's start and its first sync (or adds and pauses) is taken over, not
 * duplicated: the live pool's add finds it (UV_EEXIST) and uses it,
 * resuming it if paused. */
START_TEST(test_adopts_vip_added_after_start) {
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  memset(&st, 0, sizeof(st));
  int port = th_free_port();
  uvip_addrs_t *pool = th_addrs("127.0.0.2-127.0.0.3", port);
  st.server = empty_server(&loop);
  uvip_livepool_t *lp = NULL;
  ck_assert_int_eq(uvip_livepool_new(st.server, pool, &lp), 0);
  ck_assert_int_eq(uvip_livepool_start(lp, on_live), 0);
  uvip_vip_t *mine = NULL, *paused = NULL;
  ck_assert_int_eq(uvip_server_add_vip(st.server, uvip_addrs_at(pool, 0),
                                       &mine), 0);
  ck_assert_int_eq(uvip_server_add_vip(st.server, uvip_addrs_at(pool, 1),
                                       &paused), 0);
  ck_assert_int_eq(uvip_vip_pause(paused), 0);
  run_until_count(&loop, &st.up, 2);
  ck_assert_uint_eq(uvip_server_vip_count(st.server), 2);
  ck_assert_ptr_eq(st.up_vip[0], mine);
  ck_assert_ptr_eq(st.up_vip[1], paused);
  ck_assert_int_eq(uvip_vip_state(paused), UVIP_VIP_LISTENING);
  ck_assert_uint_eq(uvip_livepool_up_count(lp), 2);
  ck_assert_int_eq(st.failed, 0);
  ck_assert_int_eq(uvip_livepool_close(lp, on_live_closed), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(st.server_closed, 1);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  uvip_addrs_free(pool);
}
END_TEST

/* One address with two ports is two entries (two VIPs); the server's VIP
 * for the same address on a port outside the pool is not the live pool's
 * and is left alone. */
START_TEST(test_same_address_two_ports) {
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  memset(&st, 0, sizeof(st));
  int p1 = th_free_port(), p2 = th_free_port(), p3 = th_free_port();
  uvip_addrs_t *pool = th_addrs("127.0.0.2", p2);
  struct sockaddr_storage a1, a3;
  th_addr("127.0.0.2", p1, &a1);
  th_addr("127.0.0.2", p3, &a3);
  ck_assert_int_eq(uvip_addrs_add(pool, (struct sockaddr *)&a1), 0);
  st.server = empty_server(&loop);
  uvip_vip_t *other = NULL;
  ck_assert_int_eq(uvip_server_add_vip(st.server, (struct sockaddr *)&a3,
                                       &other), 0);
  uvip_livepool_t *lp = NULL;
  ck_assert_int_eq(uvip_livepool_new(st.server, pool, &lp), 0);
  ck_assert_int_eq(uvip_livepool_start(lp, on_live), 0);
  run_until_count(&loop, &st.up, 2);
  ck_assert_ptr_ne(st.up_vip[0], st.up_vip[1]);
  ck_assert_ptr_ne(st.up_vip[0], other);
  ck_assert_ptr_ne(st.up_vip[1], other);
  ck_assert_uint_eq(uvip_server_vip_count(st.server), 3);
  ck_assert_uint_eq(uvip_livepool_up_count(lp), 2);
  for (int port = 0; port < 3; port++) {
    struct sockaddr_storage sa;
    th_addr("127.0.0.2", port == 0 ? p1 : port == 1 ? p2 : p3, &sa);
    close(th_connect((struct sockaddr *)&sa, NULL));
  }
  ck_assert_int_eq(uvip_livepool_close(lp, on_live_closed), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(st.server_closed, 1);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  uvip_addrs_free(pool);
}
END_TEST

/* Closing the live pool from its own callback stops the sync (or the
 * recheck) it was called from: no event after the close, and the close
 * callback once. */
static void close_from_callback(int fail_first) {
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  memset(&st, 0, sizeof(st));
  int port = th_free_port();
  char spec[64];
  snprintf(spec, sizeof(spec), "127.0.0.2-127.0.0.%d", 1 + NADDR);
  uvip_addrs_t *pool = th_addrs(spec, port);
  st.server = empty_server(&loop);
  for (int i = 0; i < NADDR; i++)
    fail_left[i] = fail_first;
  memset(listener_binds, 0, sizeof(listener_binds));
  fail_port = port;
  st.close_on_up = true;
  uvip_livepool_t *lp = NULL;
  ck_assert_int_eq(uvip_livepool_new(st.server, pool, &lp), 0);
  ck_assert_int_eq(uvip_livepool_start(lp, on_live), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  fail_port = 0;
  ck_assert_int_eq(st.up, 1);
  ck_assert_int_eq(st.live_closed, 1);
  ck_assert_int_eq(st.server_closed, 1);
  ck_assert_int_eq(st.failed, 0);
  /* Nothing was tried after the close: the first entry's bind worked,
   * the others were not rechecked (or, in the sync, not even bound). */
  ck_assert_int_eq(listener_binds[0], 1 + fail_first);
  for (int i = 1; i < NADDR; i++)
    ck_assert_int_eq(listener_binds[i], fail_first);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  uvip_addrs_free(pool);
}

START_TEST(test_close_from_callback_in_sync) { close_from_callback(0); }
END_TEST

START_TEST(test_close_from_callback_in_recheck) { close_from_callback(1); }
END_TEST

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

/* Out of descriptors: the bind probe cannot tell whether the address is
 * there, so the listener is tried and its error (UV_EMFILE) reported as a
 * failure, never mistaken for "address absent". A live pool that cannot
 * get its netlink socket is not made, and leaves the server closable. */
START_TEST(test_out_of_descriptors) {
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  memset(&st, 0, sizeof(st));
  uvip_addrs_t *pool = th_addrs("127.0.0.2-127.0.0.3", th_free_port());
  st.server = empty_server(&loop);
  uvip_livepool_t *lp = (uvip_livepool_t *)1;
  struct rlimit old = limit_fds();
  int r = uvip_livepool_new(st.server, pool, &lp);
  ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &old), 0);
  ck_assert_int_eq(r, UV_EMFILE);
  ck_assert_ptr_null(lp);

  ck_assert_int_eq(uvip_livepool_new(st.server, pool, &lp), 0);
  ck_assert_int_eq(uvip_livepool_start(lp, on_live), 0);
  old = limit_fds();
  /* The first sync is a 0 ms timer and nothing follows the failures: a
   * blocking turn would wait for ever after running it. */
  for (int turn = 0; turn < 100 && st.failed < 2; turn++)
    uv_run(&loop, UV_RUN_NOWAIT);
  ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &old), 0);
  ck_assert_int_eq(st.failed, 2);
  ck_assert_int_eq(st.failed_status, UV_EMFILE);
  ck_assert_int_eq(st.up, 0);
  ck_assert_int_eq(st.down, 0);
  ck_assert_uint_eq(uvip_livepool_up_count(lp), 0);
  ck_assert_int_eq(uvip_livepool_close(lp, on_live_closed), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(st.server_closed, 1);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  uvip_addrs_free(pool);
}
END_TEST

int main(void) {
  Suite *s = suite_create("livepool");
  TCase *tc = tcase_create("livepool");
  tcase_add_test(tc, test_bind_fails_after_probe);
  tcase_add_test(tc, test_close_order);
  tcase_add_test(tc, test_close_unstarted);
  tcase_add_test(tc, test_adopts_vip_added_after_start);
  tcase_add_test(tc, test_same_address_two_ports);
  tcase_add_test(tc, test_close_from_callback_in_sync);
  tcase_add_test(tc, test_close_from_callback_in_recheck);
  tcase_add_test(tc, test_out_of_descriptors);
  suite_add_tcase(s, tc);
  return th_run_suite(s);
}
