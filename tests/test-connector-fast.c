/* The connector's own connect (issue 13): a connect that completed inside
 * uvip_connect() skips libuv's epoll round trip but its callback still
 * comes from the loop; one still in progress waits on a uv_poll_t; a
 * connector whose connects keep waiting goes back to uv_tcp_connect().
 *
 * connect() and getsockopt() are defined here, so the library's calls (and
 * libuv's) come through them: they count, and can make the second
 * connect() say EALREADY (the handshake not done yet), make the first one
 * fail, or make the SO_ERROR read after a wait report an error.
 * uv_poll_init/uv_poll_start go through link-time wrappers (see
 * tests/meson.build).
 *
 * Every test runs in its own network namespace with four ephemeral ports
 * and a listener on 127.0.0.1:7000 that never accepts.
 * SPDX-License-Identifier: MIT */
#include "helpers.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAXC 16

static uv_loop_t loop;
static int listen_fd = -1;
static struct sockaddr_storage dest;

/* What the hooks saw and what they are told to do. */
static int n_connect, n_so_error;
static int force_wait;  /* second connect() calls that say EALREADY */
static int fail_first;  /* errno for the next connect() call, 0 = none */
static int so_error;    /* what the next SO_ERROR read says, 0 = the truth */
static int poll_init_err, poll_start_err;

int connect(int fd, const struct sockaddr *sa, socklen_t len) {
  int r;
  n_connect++;
  if (fail_first != 0) {
    errno = fail_first;
    fail_first = 0;
    return -1;
  }
  r = (int)syscall(SYS_connect, fd, sa, len);
  /* A first connect() on a non-blocking socket says EINPROGRESS; only a
   * later one says 0 (done), EALREADY or EISCONN. */
  if (force_wait > 0 && (r == 0 || errno == EALREADY || errno == EISCONN)) {
    force_wait--;
    errno = EALREADY;
    return -1;
  }
  return r;
}

int getsockopt(int fd, int level, int name, void *val, socklen_t *len) {
  if (level == SOL_SOCKET && name == SO_ERROR) {
    n_so_error++;
    if (so_error != 0 && val != NULL && len != NULL && *len >= sizeof(int)) {
      *(int *)val = so_error;
      so_error = 0;
      return 0;
    }
  }
  return (int)syscall(SYS_getsockopt, fd, level, name, val, len);
}

int __real_uv_poll_init(uv_loop_t *l, uv_poll_t *h, int fd);
int __wrap_uv_poll_init(uv_loop_t *l, uv_poll_t *h, int fd);
int __real_uv_poll_start(uv_poll_t *h, int events, uv_poll_cb cb);
int __wrap_uv_poll_start(uv_poll_t *h, int events, uv_poll_cb cb);

int __wrap_uv_poll_init(uv_loop_t *l, uv_poll_t *h, int fd) {
  if (poll_init_err != 0) {
    int r = poll_init_err;
    poll_init_err = 0;
    return r;
  }
  return __real_uv_poll_init(l, h, fd);
}

int __wrap_uv_poll_start(uv_poll_t *h, int events, uv_poll_cb cb) {
  if (poll_start_err != 0) {
    int r = poll_start_err;
    poll_start_err = 0;
    return r;
  }
  return __real_uv_poll_start(h, events, cb);
}

/* Callbacks, in the order they ran: which connection (its index, from the
 * data field) and the status; close callbacks as status 1. */
#define MAXSEQ 256
static int seq_id[MAXSEQ], seq_status[MAXSEQ], nseq;
static uvip_outconn_t *conns[MAXC];
static int ids[MAXC];
static bool cb_flag, closed_flag, connector_closed;
static uvip_connector_t *conn_c;
/* In on_connect: the connection whose callback closes conns[close_other]
 * (-1: none), and the one whose callback closes the connector. */
static int closer_of_other = -1, close_other = -1, closer_of_connector = -1;

static void on_connector_closed(uvip_connector_t *c);

static int id_of(uvip_outconn_t *oc) {
  return *(int *)uvip_outconn_tcp(oc)->data;
}

static void record(int id, int status) {
  ck_assert_int_lt(nseq, MAXSEQ);
  seq_id[nseq] = id;
  seq_status[nseq] = status;
  nseq++;
}

static void on_connect(uvip_outconn_t *oc, int status,
                       const struct sockaddr *source) {
  int id = id_of(oc);
  (void)source;
  record(id, status);
  cb_flag = true;
  if (id == closer_of_other)
    ck_assert_int_eq(uvip_outconn_close(conns[close_other], NULL), 0);
  if (id == closer_of_connector)
    ck_assert_int_eq(uvip_connector_close(conn_c, on_connector_closed), 0);
}

static char read_buf[16];

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  (void)h;
  (void)hint;
  *buf = uv_buf_init(read_buf, sizeof(read_buf));
}

/* The listener never accepts, so never writes: nothing to read. */
static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  (void)s;
  (void)buf;
  ck_assert_int_eq(n, 0);
}

static void on_closed(uvip_outconn_t *oc) {
  record(id_of(oc), 1);
  closed_flag = true;
}

static void on_connector_closed(uvip_connector_t *c) {
  (void)c;
  connector_closed = true;
}

static void setup(void) {
  FILE *f;
  int i;
  th_enter_netns();
  f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "w");
  ck_assert_ptr_nonnull(f);
  fprintf(f, "40000 40003\n");
  ck_assert_int_eq(fclose(f), 0);
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  th_addr("127.0.0.1", 7000, &dest);
  listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ck_assert_int_ge(listen_fd, 0);
  ck_assert_int_eq(bind(listen_fd, (struct sockaddr *)&dest,
                        sizeof(struct sockaddr_in)), 0);
  ck_assert_int_eq(listen(listen_fd, 1024), 0);
  /* Fresh state per test, also when check does not fork (valgrind). */
  for (i = 0; i < MAXC; i++) {
    ids[i] = i;
    conns[i] = NULL;
  }
  n_connect = n_so_error = nseq = 0;
  force_wait = fail_first = so_error = poll_init_err = poll_start_err = 0;
  cb_flag = closed_flag = connector_closed = false;
  closer_of_other = close_other = closer_of_connector = -1;
}

static uvip_connector_t *new_connector(const char *sources) {
  uvip_connector_t *c;
  uvip_addrs_t *srcs = sources ? th_addrs(sources, 0) : NULL;
  ck_assert_int_eq(uvip_connector_new(&loop, srcs, NULL, &c), 0);
  uvip_addrs_free(srcs);
  conn_c = c;
  return c;
}

static int start(uvip_connector_t *c, int i) {
  return uvip_connect(c, (struct sockaddr *)&dest, &ids[i], on_connect,
                      &conns[i]);
}

static void finish(uvip_connector_t *c) {
  if (!connector_closed) {
    ck_assert_int_eq(uvip_connector_close(c, on_connector_closed), 0);
    th_run_until(&loop, &connector_closed, 1000);
  }
  th_run_until_quiet(&loop, 100);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  close(listen_fd);
}

/* Closing with a reset gives the port back at once (no TIME_WAIT). */
static void close_with_reset(uvip_outconn_t *oc) {
  struct linger l = {1, 0};
  uv_os_fd_t fd;
  ck_assert_int_eq(uv_fileno((uv_handle_t *)uvip_outconn_tcp(oc), &fd), 0);
  ck_assert_int_eq(setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l)), 0);
  closed_flag = false;
  ck_assert_int_eq(uvip_outconn_close(oc, on_closed), 0);
  th_run_until(&loop, &closed_flag, 1000);
}

/* On loopback the handshake is done when connect() returns: a second
 * connect() says so, the connection is usable at once, and no SO_ERROR
 * query (libuv's, after an epoll wakeup) is made. The callback still waits
 * for the loop. */
START_TEST(test_immediate_completion_deferred) {
  uvip_connector_t *c;
  uvip_connector_stats_t st;
  uv_buf_t b = uv_buf_init("x", 1);

  setup();
  c = new_connector("127.0.0.2");
  ck_assert_int_eq(start(c, 0), 0);
  ck_assert_int_eq(nseq, 0); /* never from inside uvip_connect() */
  ck_assert_int_eq(n_connect, 2);
  ck_assert_int_eq(uvip_connector_stats(c, 0, &st), 0);
  ck_assert_uint_eq(st.in_use, 1);
  ck_assert_uint_eq(st.connected, 0);
  th_run_until(&loop, &cb_flag, 1000);
  ck_assert_int_eq(nseq, 1);
  ck_assert_int_eq(seq_status[0], 0);
  ck_assert_int_eq(n_so_error, 0);
  ck_assert_int_eq(uvip_connector_stats(c, 0, &st), 0);
  ck_assert_uint_eq(st.connected, 1);
  ck_assert_int_eq(uv_try_write(uvip_outconn_stream(conns[0]), &b, 1), 1);
  finish(c);
}
END_TEST

/* Callbacks due in one turn run in order. One that closes a later one
 * makes it UV_ECANCELED (before its close callback); one that closes the
 * connector cancels the rest, and everything still closes cleanly. */
START_TEST(test_due_batch_closes) {
  uvip_connector_t *c;
  int i;

  setup();
  c = new_connector("127.0.0.2,127.0.0.3");
  for (i = 0; i < 5; i++)
    ck_assert_int_eq(start(c, i), 0);
  closer_of_other = 0;
  close_other = 1;
  closer_of_connector = 2;
  ck_assert_int_eq(nseq, 0);
  ck_assert_int_eq(n_so_error, 0);
  th_run_until(&loop, &cb_flag, 1000);
  th_run_until_quiet(&loop, 100);
  /* 0 and 2 connected, in that order, then 1 cancelled (closed by 0's
   * callback) and 3 and 4 (by the connector's close); each cancelled one
   * gets its connect callback just before its close callback. */
  ck_assert_int_ge(nseq, 5);
  ck_assert_int_eq(seq_id[0], 0);
  ck_assert_int_eq(seq_status[0], 0);
  ck_assert_int_eq(seq_id[1], 2);
  ck_assert_int_eq(seq_status[1], 0);
  {
    int cancelled = 0, j;
    for (j = 2; j < nseq; j++) {
      ck_assert_int_ne(seq_id[j], 0);
      ck_assert_int_ne(seq_id[j], 2);
      if (seq_status[j] == UV_ECANCELED)
        cancelled++;
      else
        ck_assert_int_eq(seq_status[j], 1); /* 1's close callback */
    }
    ck_assert_int_eq(cancelled, 3);
  }
  finish(c);
}
END_TEST

/* Closing the connection whose callback is due, before the loop runs:
 * UV_ECANCELED, then the close callback. */
START_TEST(test_close_while_due) {
  uvip_connector_t *c;
  uvip_connector_stats_t st;

  setup();
  c = new_connector("127.0.0.2");
  ck_assert_int_eq(start(c, 0), 0);
  ck_assert_int_eq(uvip_outconn_close(conns[0], on_closed), 0);
  ck_assert_int_eq(uvip_outconn_close(conns[0], on_closed), UV_EALREADY);
  th_run_until(&loop, &closed_flag, 1000);
  ck_assert_int_eq(nseq, 2);
  ck_assert_int_eq(seq_status[0], UV_ECANCELED);
  ck_assert_int_eq(seq_status[1], 1);
  ck_assert_int_eq(uvip_connector_stats(c, 0, &st), 0);
  ck_assert_uint_eq(st.in_use, 0);
  ck_assert_uint_eq(st.failed, 0);
  finish(c);
}
END_TEST

/* A connect still in progress after connect() waits for writability, then
 * reads the socket's error: 0, or the failure it reports. Closed while
 * waiting, it is cancelled. */
START_TEST(test_wait_path) {
  uvip_connector_t *c;
  uvip_connector_stats_t st;

  setup();
  c = new_connector("127.0.0.2");
  force_wait = 1;
  ck_assert_int_eq(start(c, 0), 0);
  ck_assert_int_eq(force_wait, 0);
  th_run_until(&loop, &cb_flag, 1000);
  ck_assert_int_eq(seq_status[0], 0);
  ck_assert_int_eq(n_so_error, 1);
  /* The poll handle let go of the descriptor: libuv can watch it now. */
  ck_assert_int_eq(uv_read_start(uvip_outconn_stream(conns[0]), on_alloc,
                                 on_read), 0);
  th_run_until_quiet(&loop, 10);

  force_wait = 1;
  so_error = ETIMEDOUT;
  cb_flag = false;
  ck_assert_int_eq(start(c, 1), 0);
  th_run_until(&loop, &cb_flag, 1000);
  ck_assert_int_eq(seq_status[1], UV_ETIMEDOUT);
  th_run_until_quiet(&loop, 100);
  ck_assert_int_eq(uvip_connector_stats(c, 0, &st), 0);
  ck_assert_uint_eq(st.failed, 1);
  ck_assert_uint_eq(st.in_use, 1);

  force_wait = 1;
  ck_assert_int_eq(start(c, 2), 0);
  ck_assert_int_eq(uvip_outconn_close(conns[2], on_closed), 0);
  closed_flag = false;
  th_run_until(&loop, &closed_flag, 1000);
  ck_assert_int_eq(seq_id[nseq - 2], 2);
  ck_assert_int_eq(seq_status[nseq - 2], UV_ECANCELED);
  ck_assert_int_eq(seq_status[nseq - 1], 1);

  /* The connector closes one that is waiting too. */
  force_wait = 1;
  ck_assert_int_eq(start(c, 3), 0);
  finish(c);
  ck_assert_int_eq(seq_id[nseq - 1], 3);
  ck_assert_int_eq(seq_status[nseq - 1], UV_ECANCELED);
}
END_TEST

/* After connects that had to wait, the connector goes back to libuv's
 * connect (one connect() call per connection), trying its own again on
 * one connection in 32; an immediate completion there brings it back. */
START_TEST(test_falls_back_to_libuv) {
  uvip_connector_t *c;
  int i, calls;

  setup();
  c = new_connector(NULL);
  for (i = 0; i < 2; i++) {
    force_wait = 1;
    cb_flag = false;
    ck_assert_int_eq(start(c, 0), 0);
    th_run_until(&loop, &cb_flag, 1000);
    ck_assert_int_eq(seq_status[nseq - 1], 0);
    close_with_reset(conns[0]);
  }
  for (i = 0; i < 40; i++) {
    n_connect = 0;
    cb_flag = false;
    ck_assert_int_eq(start(c, 0), 0);
    calls = n_connect;
    th_run_until(&loop, &cb_flag, 1000);
    ck_assert_int_eq(seq_status[nseq - 1], 0);
    close_with_reset(conns[0]);
    /* 31 through libuv, then the probe and the ones after it: own. */
    ck_assert_msg(calls == (i < 31 ? 1 : 2), "connect %d: %d calls", i, calls);
  }
  finish(c);
}
END_TEST

/* connect() itself failing: ECONNREFUSED comes through the callback (as
 * libuv reports it); another error is uvip_connect()'s, with nothing left
 * open and no callback. So is libuv refusing the wait. */
START_TEST(test_connect_errors) {
  uvip_connector_t *c;
  uvip_connector_stats_t st;

  setup();
  c = new_connector("127.0.0.2");
  fail_first = ECONNREFUSED;
  ck_assert_int_eq(start(c, 0), 0);
  th_run_until(&loop, &cb_flag, 1000);
  ck_assert_int_eq(seq_status[0], UV_ECONNREFUSED);

  fail_first = ENETUNREACH;
  ck_assert_ptr_nonnull(conns[0]);
  conns[1] = NULL;
  ck_assert_int_eq(start(c, 1), UV_ENETUNREACH);
  ck_assert_ptr_null(conns[1]);

  force_wait = 1;
  poll_init_err = UV_ENOMEM;
  ck_assert_int_eq(start(c, 2), UV_ENOMEM);
  force_wait = 1;
  poll_start_err = UV_EBADF;
  ck_assert_int_eq(start(c, 3), UV_EBADF);
  th_run_until_quiet(&loop, 100);
  ck_assert_int_eq(nseq, 1);
  ck_assert_int_eq(uvip_connector_stats(c, 0, &st), 0);
  ck_assert_uint_eq(st.in_use, 0);
  ck_assert_uint_eq(st.failed, 3); /* refused, unreachable, EBADF */
  finish(c);
}
END_TEST

int main(void) {
  th_require_netns_or_skip();
  Suite *s = suite_create("connector-fast");
  TCase *tc = tcase_create("connector-fast");
  tcase_add_test(tc, test_immediate_completion_deferred);
  tcase_add_test(tc, test_due_batch_closes);
  tcase_add_test(tc, test_close_while_due);
  tcase_add_test(tc, test_wait_path);
  tcase_add_test(tc, test_falls_back_to_libuv);
  tcase_add_test(tc, test_connect_errors);
  suite_add_tcase(s, tc);
  return th_run_suite(s);
}
