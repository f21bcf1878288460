/* Worker threads and processes: hand-off, balance modes, backpressure, a
 * killed worker process, restart, closing the connections, closing.
 * Deterministic: loops are driven for a bounded number of turns; waits on
 * client sockets are bounded too and never asserted on.
 * SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

#define MAX_TURNS 2000

static int marker; /* the server's data: workers must see it */
static int nconns, nclosed; /* thread workers only; atomics */

/* Replies to each byte b with b, the last octet of the connection's VIP
 * and 'D' when the server data reached the worker. */
static _Thread_local char tbuf[256];

static void t_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  (void)h;
  (void)hint;
  *buf = uv_buf_init(tbuf, sizeof(tbuf));
}

static void t_closed(uvip_conn_t *c) {
  (void)c;
  __atomic_add_fetch(&nclosed, 1, __ATOMIC_SEQ_CST);
}

static void t_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  uvip_conn_t *c = uvip_conn_from_tcp((uv_tcp_t *)s);
  if (n < 0) {
    uvip_conn_close(c, t_closed);
    return;
  }
  for (ssize_t i = 0; i < n; i++) {
    const struct sockaddr_in *a =
        (const struct sockaddr_in *)uvip_vip_addr(uvip_conn_vip(c));
    uvip_server_t *srv = uvip_vip_server(uvip_conn_vip(c));
    char out[3] = {b->base[i], (char)(ntohl(a->sin_addr.s_addr) & 0xff),
                   uvip_server_get_data(srv) == &marker ? 'D' : '?'};
    uv_buf_t o = uv_buf_init(out, 3);
    uv_try_write(s, &o, 1);
  }
}

static void on_conn(uvip_server_t *s, uvip_conn_t *c) {
  (void)s;
  __atomic_add_fetch(&nconns, 1, __ATOMIC_SEQ_CST);
  if (uv_read_start(uvip_conn_stream(c), t_alloc, t_read) != 0)
    uvip_conn_close(c, t_closed);
}

/* ready_cb: calls per worker, and the last status. */
static int nready[8], ready_status[8];

static void on_ready(uvip_workers_t *w, unsigned int index, int status) {
  ck_assert_ptr_nonnull(w);
  ck_assert_uint_lt(index, 8);
  nready[index]++;
  ready_status[index] = status;
}

typedef struct {
  uv_loop_t loop;
  uvip_server_t *server;
  uvip_workers_t *workers;
  int port;
  bool closed;
  int exit_code; /* what the worker processes must exit with */
} fixture_t;

static bool all_ready(fixture_t *f) {
  for (unsigned i = 0; i < uvip_workers_count(f->workers); i++) {
    uvip_worker_stats_t st;
    ck_assert_int_eq(uvip_workers_stats(f->workers, i, &st), 0);
    if (!st.alive)
      return false;
  }
  return true;
}

/* Workers get ready asynchronously: the loop runs until each said so. */
static void run_until_ready(fixture_t *f) {
  for (int i = 0; i < MAX_TURNS && !all_ready(f); i++)
    uv_run(&f->loop, UV_RUN_ONCE);
  ck_assert(all_ready(f));
}

static void start(fixture_t *f, const char *spec, int mode, int balance,
                  unsigned n, uint64_t max_per_worker) {
  uvip_workers_options_t o;
  uvip_server_options_t so;
  char err[256] = "";
  uvip_addrs_t *a;
  memset(f, 0, sizeof(*f));
  f->port = th_free_port();
  a = th_addrs(spec, f->port);
  ck_assert_int_eq(uv_loop_init(&f->loop), 0);
  uvip_server_options_init(&so);
  so.conn_close_cb = t_closed; /* counts what the library closes too */
  ck_assert_int_eq(uvip_server_new(&f->loop, a, &so, &f->server), 0);
  uvip_addrs_free(a);
  uvip_server_set_data(f->server, &marker);
  uvip_workers_options_init(&o);
  o.nworkers = n;
  o.mode = mode;
  o.balance = balance;
  o.max_conns_per_worker = max_per_worker;
  o.ready_cb = on_ready;
  memset(nready, 0, sizeof(nready));
  ck_assert_int_eq(uvip_workers_new(f->server, &o, &f->workers), 0);
  int r = uvip_workers_listen(f->workers, on_conn, err, sizeof(err));
  ck_assert_msg(r == 0, "listen: %s (%s)", uv_strerror(r), err);
  run_until_ready(f);
  for (unsigned i = 0; i < n && i < 8; i++) {
    ck_assert_int_eq(nready[i], 1);
    ck_assert_int_eq(ready_status[i], 0);
  }
}

static void on_server_closed(uvip_server_t *s) { (void)s; }

static fixture_t *closing;
static void on_workers_closed(uvip_workers_t *w) {
  ck_assert_ptr_eq(uvip_workers_server(w), closing->server);
  /* Every worker process that ran ended by itself, cleanly: a sanitizer
   * report or a crash in a child shows here (its output alone would pass
   * unnoticed). */
  for (unsigned i = 0; i < uvip_workers_count(w); i++) {
    uvip_worker_stats_t st;
    ck_assert_int_eq(uvip_workers_stats(w, i, &st), 0);
    if (st.pid == 0)
      continue;
    ck_assert_msg(WIFEXITED(st.exit_status) &&
                      WEXITSTATUS(st.exit_status) == closing->exit_code,
                  "worker %u (pid %lld) ended with status 0x%x", i,
                  (long long)st.pid, (unsigned)st.exit_status);
  }
  /* Detached just before this callback: the server may close now. */
  ck_assert_int_eq(uvip_server_close(closing->server, on_server_closed), 0);
  closing->closed = true;
}

/* Every worker process was reaped before the close callback (each test
 * runs in a process of its own whose only children are workers). */
static void expect_no_children(void) {
  ck_assert_int_eq(waitpid(-1, NULL, WNOHANG), -1);
  ck_assert_int_eq(errno, ECHILD);
}

static void finish(fixture_t *f) {
  closing = f;
  /* The workers use the server until their close callback. */
  ck_assert_int_eq(uvip_server_close(f->server, NULL), UV_EBUSY);
  ck_assert_int_eq(uvip_workers_close(f->workers, on_workers_closed), 0);
  ck_assert_int_eq(uvip_workers_close(f->workers, NULL), UV_EALREADY);
  /* Stopping workers are not given the order (a stopped thread's async
   * handle is gone). */
  ck_assert_int_eq(uvip_server_close_conns(f->server), 0);
  th_run_until(&f->loop, &f->closed, MAX_TURNS);
  for (int i = 0; i < 100 && uv_loop_alive(&f->loop); i++)
    uv_run(&f->loop, UV_RUN_ONCE);
  ck_assert_int_eq(uv_loop_close(&f->loop), 0);
  expect_no_children();
}

static uint64_t accepted(fixture_t *f) {
  uvip_vip_stats_t st;
  ck_assert_int_eq(uvip_server_stats(f->server, &st), 0);
  return st.accepted;
}

static uint64_t active(fixture_t *f) {
  uvip_vip_stats_t st;
  ck_assert_int_eq(uvip_server_stats(f->server, &st), 0);
  return st.active;
}

static void run_until_accepted(fixture_t *f, uint64_t n) {
  for (int i = 0; i < MAX_TURNS && accepted(f) < n; i++)
    uv_run(&f->loop, UV_RUN_ONCE);
  ck_assert_uint_eq(accepted(f), n);
}

static void run_until_active(fixture_t *f, uint64_t n) {
  for (int i = 0; i < MAX_TURNS && active(f) != n; i++)
    uv_run(&f->loop, UV_RUN_ONCE);
  ck_assert_uint_eq(active(f), n);
}

static uvip_worker_stats_t wstats(fixture_t *f, unsigned i) {
  uvip_worker_stats_t st;
  ck_assert_int_eq(uvip_workers_stats(f->workers, i, &st), 0);
  return st;
}

/* Sends one byte and checks the worker's reply, turning the acceptor's
 * loop meanwhile (a hand-off may wait in it). */
static void echo(fixture_t *f, int fd, char byte, int vip_octet) {
  char in[3];
  size_t got = 0;
  ck_assert_int_eq(write(fd, &byte, 1), 1);
  for (int i = 0; i < 400 && got < 3; i++) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 50) == 1) {
      ssize_t k = read(fd, in + got, 3 - got);
      ck_assert_msg(k > 0, "read: %zd %s", k, strerror(errno));
      got += (size_t)k;
    } else {
      uv_run(&f->loop, UV_RUN_NOWAIT);
    }
  }
  ck_assert_uint_eq(got, 3);
  ck_assert_int_eq(in[0], byte);
  ck_assert_int_eq(in[1], vip_octet);
  ck_assert_int_eq(in[2], 'D');
}

static int connect_vip(fixture_t *f, int octet) {
  struct sockaddr_storage sa;
  char ip[32];
  snprintf(ip, sizeof(ip), "127.0.0.%d", octet);
  th_addr(ip, f->port, &sa);
  return th_connect((struct sockaddr *)&sa, NULL);
}

/* Sequential connections spread so that counts differ by at most one. */
static void exact_spread(int mode) {
  fixture_t f;
  int fds[10];
  start(&f, "127.0.0.1-127.0.0.4", mode, UVIP_BALANCE_EXACT, 3, 0);
  ck_assert_uint_eq(uvip_workers_count(f.workers), 3);
  for (int i = 0; i < 10; i++) {
    fds[i] = connect_vip(&f, 1 + i % 4);
    run_until_accepted(&f, (uint64_t)i + 1);
    uint64_t lo = UINT64_MAX, hi = 0;
    for (unsigned w = 0; w < 3; w++) {
      uint64_t a = wstats(&f, w).active;
      lo = a < lo ? a : lo;
      hi = a > hi ? a : hi;
    }
    ck_assert_uint_le(hi - lo, 1);
  }
  for (int i = 0; i < 10; i++)
    echo(&f, fds[i], (char)('a' + i), 1 + i % 4);
  /* Closing three on one worker unbalances it; new ones fill it first. */
  for (int i = 0; i < 10; i += 3)
    close(fds[i]);
  run_until_active(&f, 6);
  for (int i = 0; i < 10; i += 3)
    fds[i] = connect_vip(&f, 2);
  run_until_accepted(&f, 14);
  for (unsigned w = 0; w < 3; w++) {
    ck_assert_int_eq(wstats(&f, w).alive, 1);
    ck_assert_uint_ge(wstats(&f, w).active, 3);
    ck_assert_uint_le(wstats(&f, w).active, 4);
  }
  for (int i = 0; i < 10; i += 3)
    echo(&f, fds[i], 'z', 2);
  for (int i = 0; i < 10; i++)
    close(fds[i]);
  run_until_active(&f, 0);
  finish(&f);
}

START_TEST(test_thread_exact) {
  nconns = nclosed = 0;
  exact_spread(UVIP_WORKER_THREAD);
  ck_assert_int_eq(__atomic_load_n(&nconns, __ATOMIC_SEQ_CST), 14);
  ck_assert_int_eq(__atomic_load_n(&nclosed, __ATOMIC_SEQ_CST), 14);
}
END_TEST

START_TEST(test_process_exact) { exact_spread(UVIP_WORKER_PROCESS); }
END_TEST

static void round_robin(int mode) {
  fixture_t f;
  int fds[9];
  start(&f, "127.0.0.1-127.0.0.2", mode, UVIP_BALANCE_ROUND_ROBIN, 3, 0);
  for (int i = 0; i < 9; i++) {
    fds[i] = connect_vip(&f, 1 + i % 2);
    run_until_accepted(&f, (uint64_t)i + 1);
    /* Worker i % 3 got the i-th connection. */
    ck_assert_uint_eq(wstats(&f, (unsigned)i % 3).handed, (uint64_t)i / 3 + 1);
  }
  for (int i = 0; i < 9; i++)
    echo(&f, fds[i], 'r', 1 + i % 2);
  /* Round-robin ignores load: close worker 0's three, the next still go
   * in turn. */
  close(fds[0]);
  close(fds[3]);
  close(fds[6]);
  run_until_active(&f, 6);
  ck_assert_uint_eq(wstats(&f, 0).active, 0);
  fds[0] = connect_vip(&f, 1);
  run_until_accepted(&f, 10);
  ck_assert_uint_eq(wstats(&f, 0).active, 1);
  fds[3] = connect_vip(&f, 1);
  run_until_accepted(&f, 11);
  ck_assert_uint_eq(wstats(&f, 1).active, 4);
  echo(&f, fds[0], 'q', 1);
  echo(&f, fds[3], 'q', 1);
  for (int i = 0; i < 9; i++)
    if (i != 6)
      close(fds[i]);
  run_until_active(&f, 0);
  finish(&f);
}

START_TEST(test_thread_round_robin) { round_robin(UVIP_WORKER_THREAD); }
END_TEST

START_TEST(test_process_round_robin) { round_robin(UVIP_WORKER_PROCESS); }
END_TEST

/* A worker at its limit gets nothing more; with every worker full the
 * acceptor leaves connections queued in the kernel until a slot frees. */
static void backpressure(int mode) {
  fixture_t f;
  int fds[6];
  start(&f, "127.0.0.1", mode, UVIP_BALANCE_EXACT, 2, 2);
  for (int i = 0; i < 5; i++) {
    fds[i] = connect_vip(&f, 1); /* completes: the kernel queues it */
    if (i < 4)
      run_until_accepted(&f, (uint64_t)i + 1);
  }
  for (int t = 0; t < 20; t++)
    uv_run(&f.loop, UV_RUN_NOWAIT);
  ck_assert_uint_eq(accepted(&f), 4);
  ck_assert_uint_eq(wstats(&f, 0).active, 2);
  ck_assert_uint_eq(wstats(&f, 1).active, 2);
  ck_assert_uint_gt(wstats(&f, 0).refused + wstats(&f, 1).refused, 0);
  /* Closing one of worker 1's lets the queued one in, on worker 1. */
  close(fds[1]);
  run_until_accepted(&f, 5);
  ck_assert_uint_eq(wstats(&f, 1).active, 2);
  ck_assert_uint_eq(wstats(&f, 1).handed, 3);
  ck_assert_uint_eq(wstats(&f, 0).handed, 2);
  echo(&f, fds[4], 'b', 1);
  for (int i = 0; i < 5; i++)
    if (i != 1)
      close(fds[i]);
  run_until_active(&f, 0);
  finish(&f);
}

START_TEST(test_thread_backpressure) { backpressure(UVIP_WORKER_THREAD); }
END_TEST

START_TEST(test_process_backpressure) { backpressure(UVIP_WORKER_PROCESS); }
END_TEST

static void expect_closed(fixture_t *f, int fd);

/* kill -9 one worker process: noticed, its slots given back, the others
 * keep serving, and it can be restarted. */
START_TEST(test_process_kill_restart) {
  fixture_t f;
  int fds[8];
  start(&f, "127.0.0.1-127.0.0.2", UVIP_WORKER_PROCESS, UVIP_BALANCE_EXACT, 3, 0);
  for (int i = 0; i < 6; i++) {
    fds[i] = connect_vip(&f, 1 + i % 2);
    run_until_accepted(&f, (uint64_t)i + 1);
    echo(&f, fds[i], 'k', 1 + i % 2);
    /* Ties rotate: connection i is worker i % 3's. */
    ck_assert_uint_eq(wstats(&f, (unsigned)i % 3).handed, (uint64_t)i / 3 + 1);
  }
  uvip_worker_stats_t victim = wstats(&f, 1);
  ck_assert_int_eq(victim.alive, 1);
  ck_assert_int_gt(victim.pid, 0);
  ck_assert_uint_eq(victim.active, 2);
  ck_assert_int_eq(uvip_workers_restart(f.workers, 1), UV_EBUSY);
  ck_assert_int_eq(kill((pid_t)victim.pid, SIGKILL), 0);
  for (int i = 0; i < MAX_TURNS && wstats(&f, 1).alive; i++)
    uv_run(&f.loop, UV_RUN_ONCE);
  ck_assert_int_eq(wstats(&f, 1).alive, 0);
  ck_assert_uint_eq(wstats(&f, 1).active, 0);
  ck_assert_uint_eq(active(&f), 4);
  /* Its clients (connections 1 and 4) see the connection go: nothing in
   * the acceptor kept a copy of their descriptors. The others are still
   * served. */
  for (int i = 1; i < 6; i += 3) {
    expect_closed(&f, fds[i]);
    close(fds[i]);
    fds[i] = -1;
  }
  for (int i = 0; i < 6; i++)
    if (fds[i] >= 0)
      echo(&f, fds[i], 's', 1 + i % 2);
  /* New connections go to the living only. */
  fds[6] = connect_vip(&f, 1);
  run_until_accepted(&f, 7);
  echo(&f, fds[6], 'n', 1);
  ck_assert_uint_eq(wstats(&f, 1).handed, 2);
  /* Restarted, it is the least loaded and gets the next one. */
  ck_assert_int_eq(nready[1], 1);
  ck_assert_int_eq(uvip_workers_restart(f.workers, 1), 0);
  ck_assert_int_eq(uvip_workers_restart(f.workers, 1), UV_EBUSY);
  ck_assert_int_eq(wstats(&f, 1).starting, 1);
  ck_assert_int_eq(wstats(&f, 1).alive, 0);
  run_until_ready(&f);
  ck_assert_int_eq(nready[1], 2);
  ck_assert_int_eq(ready_status[1], 0);
  ck_assert_int_eq(wstats(&f, 1).alive, 1);
  ck_assert_int_eq(wstats(&f, 1).starting, 0);
  ck_assert_uint_eq(wstats(&f, 1).restarts, 1);
  ck_assert_int_ne(wstats(&f, 1).pid, victim.pid);
  fds[7] = connect_vip(&f, 2);
  run_until_accepted(&f, 8);
  ck_assert_uint_eq(wstats(&f, 1).active, 1);
  echo(&f, fds[7], 'm', 2);
  /* Workers close with connections still open: they are closed. */
  finish(&f);
  for (int i = 0; i < 8; i++)
    if (fds[i] >= 0)
      close(fds[i]);
}
END_TEST

START_TEST(test_args) {
  uv_loop_t loop;
  uvip_server_t *s;
  uvip_workers_t *w = NULL;
  uvip_workers_options_t o;
  uvip_worker_stats_t st;
  uvip_addrs_t *a = th_addrs("127.0.0.1", th_free_port());
  bool closed = false;
  uv_loop_init(&loop);
  ck_assert_int_eq(uvip_server_new(&loop, a, NULL, &s), 0);
  uvip_addrs_free(a);

  ck_assert_int_eq(uvip_workers_options_init(NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_workers_options_init(&o), 0);
  ck_assert_uint_eq(o.nworkers, 2);
  ck_assert_int_eq(uvip_workers_new(NULL, &o, &w), UV_EINVAL);
  ck_assert_int_eq(uvip_workers_new(s, &o, NULL), UV_EINVAL);
  o.nworkers = 0;
  ck_assert_int_eq(uvip_workers_new(s, &o, &w), UV_EINVAL);
  o.nworkers = UVIP_WORKERS_MAX + 1;
  ck_assert_int_eq(uvip_workers_new(s, &o, &w), UV_EINVAL);
  o.nworkers = 2;
  o.mode = 7;
  ck_assert_int_eq(uvip_workers_new(s, &o, &w), UV_EINVAL);
  o.mode = UVIP_WORKER_THREAD;
  o.balance = -1;
  ck_assert_int_eq(uvip_workers_new(s, &o, &w), UV_EINVAL);
  o.balance = UVIP_BALANCE_EXACT;
  ck_assert_ptr_null(w);
  ck_assert_int_eq(uvip_workers_listen(NULL, on_conn, NULL, 0), UV_EINVAL);
  ck_assert_int_eq(uvip_workers_stats(NULL, 0, &st), UV_EINVAL);
  ck_assert_int_eq(uvip_workers_restart(NULL, 0), UV_EINVAL);
  ck_assert_int_eq(uvip_workers_close(NULL, NULL), UV_EINVAL);
  ck_assert_uint_eq(uvip_workers_count(NULL), 0);
  ck_assert_ptr_null(uvip_workers_server(NULL));

  ck_assert_int_eq(uvip_workers_new(s, &o, &w), 0);
  ck_assert_int_eq(uvip_workers_new(s, &o, &w), UV_EINVAL); /* one per server */
  ck_assert_int_eq(uvip_server_close(s, NULL), UV_EBUSY);
  ck_assert_int_eq(uvip_workers_listen(w, NULL, NULL, 0), UV_EINVAL);
  ck_assert_int_eq(uvip_workers_stats(w, 2, &st), UV_EINVAL);
  ck_assert_int_eq(uvip_workers_stats(w, 0, NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_workers_stats(w, 1, &st), 0);
  ck_assert_int_eq(st.alive, 0);
  ck_assert_int_eq(uvip_workers_restart(w, 0), UV_EINVAL); /* not started */
  /* Never started: closes from the loop all the same. */
  closing = &(fixture_t){0};
  closing->server = s;
  ck_assert_int_eq(uvip_workers_close(w, on_workers_closed), 0);
  ck_assert(!closing->closed);
  th_run_until(&loop, &closing->closed, 10);
  (void)closed;
  for (int i = 0; i < 10 && uv_loop_alive(&loop); i++)
    uv_run(&loop, UV_RUN_ONCE);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

/* A bind failure leaves nothing running; the workers still close. */
START_TEST(test_listen_fails) {
  uv_loop_t loop;
  uvip_server_t *s;
  uvip_workers_t *w;
  uvip_workers_options_t o;
  char err[256] = "";
  int port = th_free_port();
  struct sockaddr_storage sa;
  th_addr("127.0.0.1", port, &sa);
  int busy = socket(AF_INET, SOCK_STREAM, 0);
  ck_assert_int_eq(bind(busy, (struct sockaddr *)&sa, sizeof(struct sockaddr_in)), 0);
  ck_assert_int_eq(listen(busy, 1), 0);
  uvip_addrs_t *a = th_addrs("127.0.0.1", port);
  uv_loop_init(&loop);
  ck_assert_int_eq(uvip_server_new(&loop, a, NULL, &s), 0);
  uvip_addrs_free(a);
  for (int mode = 0; mode < 2; mode++) {
    uvip_workers_options_init(&o);
    o.mode = mode;
    o.balance = mode ? UVIP_BALANCE_EXACT : UVIP_BALANCE_REUSEPORT;
    ck_assert_int_eq(uvip_workers_new(s, &o, &w), 0);
    ck_assert_int_eq(uvip_workers_listen(w, on_conn, err, sizeof(err)),
                     UV_EADDRINUSE);
    ck_assert_msg(strstr(err, "address already in use") != NULL, "%s", err);
    ck_assert_int_eq(uvip_workers_listen(w, on_conn, NULL, 0), UV_EALREADY);
    closing = &(fixture_t){0};
    closing->server = NULL;
    ck_assert_int_eq(uvip_workers_close(w, NULL), 0);
    for (int i = 0; i < 10 && uv_loop_alive(&loop); i++)
      uv_run(&loop, UV_RUN_ONCE);
  }
  bool done = false;
  closing = &(fixture_t){0};
  closing->server = s;
  uvip_server_close(s, NULL);
  for (int i = 0; i < 10 && uv_loop_alive(&loop); i++)
    uv_run(&loop, UV_RUN_ONCE);
  (void)done;
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  close(busy);
}
END_TEST

/* A worker process that cannot start reports it asynchronously: with
 * REUSEPORT each child binds its own listeners, and a port taken by a
 * socket without SO_REUSEPORT fails there. Nothing blocks: listen returns
 * 0, ready_cb hears of each failure, the workers are dead, close works. */
START_TEST(test_process_start_fails_async) {
  fixture_t f;
  uvip_workers_options_t o;
  uvip_addrs_t *a;
  struct sockaddr_storage sa;
  int busy = socket(AF_INET, SOCK_STREAM, 0);
  memset(&f, 0, sizeof(f));
  f.port = th_free_port();
  th_addr("127.0.0.1", f.port, &sa);
  ck_assert_int_eq(bind(busy, (struct sockaddr *)&sa, sizeof(struct sockaddr_in)), 0);
  ck_assert_int_eq(listen(busy, 1), 0);
  a = th_addrs("127.0.0.1", f.port);
  ck_assert_int_eq(uv_loop_init(&f.loop), 0);
  ck_assert_int_eq(uvip_server_new(&f.loop, a, NULL, &f.server), 0);
  uvip_addrs_free(a);
  uvip_workers_options_init(&o);
  o.nworkers = 2;
  o.mode = UVIP_WORKER_PROCESS;
  o.balance = UVIP_BALANCE_REUSEPORT;
  o.ready_cb = on_ready;
  memset(nready, 0, sizeof(nready));
  f.exit_code = 3; /* a child that could not start */
  ck_assert_int_eq(uvip_workers_new(f.server, &o, &f.workers), 0);
  ck_assert_int_eq(uvip_workers_listen(f.workers, on_conn, NULL, 0), 0);
  for (int i = 0; i < MAX_TURNS && (nready[0] == 0 || nready[1] == 0); i++)
    uv_run(&f.loop, UV_RUN_ONCE);
  for (unsigned i = 0; i < 2; i++) {
    ck_assert_int_eq(nready[i], 1);
    ck_assert_int_eq(ready_status[i], UV_EADDRINUSE);
    ck_assert_int_eq(wstats(&f, i).alive, 0);
    ck_assert_int_eq(wstats(&f, i).starting, 0);
  }
  finish(&f);
  close(busy);
}
END_TEST

/* Closing at once, while the workers are still starting (processes: most
 * not even forked yet): the close callback runs once, from the loop, no
 * worker is left behind and the loop ends. */
static int nclosed_cb;
static void count_closed(uvip_workers_t *w) {
  nclosed_cb++;
  ck_assert_int_eq(uvip_server_close(uvip_workers_server(w), on_server_closed), 0);
}

static void close_while_starting(int mode) {
  fixture_t f;
  uvip_workers_options_t o;
  uvip_addrs_t *a;
  memset(&f, 0, sizeof(f));
  f.port = th_free_port();
  a = th_addrs("127.0.0.1", f.port);
  ck_assert_int_eq(uv_loop_init(&f.loop), 0);
  ck_assert_int_eq(uvip_server_new(&f.loop, a, NULL, &f.server), 0);
  uvip_addrs_free(a);
  uvip_workers_options_init(&o);
  o.nworkers = 4;
  o.mode = mode;
  o.ready_cb = on_ready;
  memset(nready, 0, sizeof(nready));
  ck_assert_int_eq(uvip_workers_new(f.server, &o, &f.workers), 0);
  ck_assert_int_eq(uvip_workers_listen(f.workers, on_conn, NULL, 0), 0);
  nclosed_cb = 0;
  ck_assert_int_eq(uvip_workers_close(f.workers, count_closed), 0);
  ck_assert_int_eq(nclosed_cb, 0);
  for (int i = 0; i < MAX_TURNS && uv_loop_alive(&f.loop); i++)
    uv_run(&f.loop, UV_RUN_ONCE);
  ck_assert_int_eq(nclosed_cb, 1);
  ck_assert_int_eq(uv_loop_close(&f.loop), 0);
  expect_no_children();
  /* Not after the close. */
  for (int i = 0; i < 4; i++)
    ck_assert_int_eq(nready[i], 0);
}

START_TEST(test_thread_close_while_starting) {
  close_while_starting(UVIP_WORKER_THREAD);
}
END_TEST

START_TEST(test_process_close_while_starting) {
  close_while_starting(UVIP_WORKER_PROCESS);
}
END_TEST

/* keep_fds: a worker process closes the sockets it inherited except
 * those listed. Two socketpairs stand for the application's sockets (a
 * syslog socket, say); each child's init_cb writes a byte on each that is
 * still open in it. Every worker reports ready after its init_cb, so by
 * then the bytes are there: no waiting. */
static int kf_kept[2], kf_other[2];

static void kf_init(uv_loop_t *loop, unsigned int index, void *arg) {
  (void)loop;
  (void)index;
  (void)arg;
  if (fcntl(kf_kept[1], F_GETFD) != -1)
    (void)!write(kf_kept[1], "K", 1);
  if (fcntl(kf_other[1], F_GETFD) != -1)
    (void)!write(kf_other[1], "X", 1);
}

START_TEST(test_process_keep_fds) {
  fixture_t f;
  uvip_workers_options_t o;
  uvip_addrs_t *a;
  char buf[8];
  int keep[1];
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, kf_kept), 0);
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, kf_other), 0);
  keep[0] = kf_kept[1];
  memset(&f, 0, sizeof(f));
  f.port = th_free_port();
  a = th_addrs("127.0.0.1", f.port);
  ck_assert_int_eq(uv_loop_init(&f.loop), 0);
  ck_assert_int_eq(uvip_server_new(&f.loop, a, NULL, &f.server), 0);
  uvip_addrs_free(a);
  uvip_workers_options_init(&o);
  o.nworkers = 3;
  o.mode = UVIP_WORKER_PROCESS;
  o.init_cb = kf_init;
  o.nkeep_fds = 1;
  o.keep_fds = NULL;
  ck_assert_int_eq(uvip_workers_new(f.server, &o, &f.workers), UV_EINVAL);
  keep[0] = -1;
  o.keep_fds = keep;
  ck_assert_int_eq(uvip_workers_new(f.server, &o, &f.workers), UV_EINVAL);
  keep[0] = kf_kept[1];
  ck_assert_int_eq(uvip_workers_new(f.server, &o, &f.workers), 0);
  keep[0] = -1; /* copied: the caller's array may go */
  ck_assert_int_eq(uvip_workers_listen(f.workers, on_conn, NULL, 0), 0);
  run_until_ready(&f);
  ck_assert_int_eq(recv(kf_kept[0], buf, sizeof(buf), MSG_DONTWAIT), 3);
  ck_assert_int_eq(memcmp(buf, "KKK", 3), 0);
  ck_assert_int_eq(recv(kf_other[0], buf, sizeof(buf), MSG_DONTWAIT), -1);
  ck_assert_int_eq(errno, EAGAIN);
  finish(&f);
  for (int i = 0; i < 2; i++) {
    close(kf_kept[i]);
    close(kf_other[i]);
  }
}
END_TEST

static uint64_t workers_handed(fixture_t *f) {
  uint64_t n = 0;
  for (unsigned w = 0; w < uvip_workers_count(f->workers); w++)
    n += wstats(f, w).handed;
  return n;
}

/* REUSEPORT: every worker listens itself and the kernel spreads the
 * connections by a hash of the 4-tuple. 64 connections held open over 2
 * workers: each worker must get at least 8 (a quarter of its share; a
 * fair hash gives fewer with probability below 1e-10), the counts the
 * workers report add up, and connections on each echo. */
#define RP_CONNS 64
#define RP_WORKERS 2
static void reuseport(int mode) {
  fixture_t f;
  int fds[RP_CONNS];
  start(&f, "127.0.0.1", mode, UVIP_BALANCE_REUSEPORT, RP_WORKERS, 0);
  for (int i = 0; i < RP_CONNS; i++)
    fds[i] = connect_vip(&f, 1);
  /* Reported every 200 ms: bounded polling. */
  for (int i = 0; i < MAX_TURNS && workers_handed(&f) != RP_CONNS; i++) {
    uv_run(&f.loop, UV_RUN_NOWAIT);
    usleep(5000);
  }
  ck_assert_uint_eq(workers_handed(&f), RP_CONNS);
  for (unsigned w = 0; w < RP_WORKERS; w++) {
    ck_assert_msg(wstats(&f, w).handed >= RP_CONNS / (4 * RP_WORKERS),
                  "worker %u got %llu of %d", w,
                  (unsigned long long)wstats(&f, w).handed, RP_CONNS);
    ck_assert_uint_eq(wstats(&f, w).active, wstats(&f, w).handed);
  }
  for (int i = 0; i < 8; i++)
    echo(&f, fds[i], 'p', 1);
  for (int i = 0; i < RP_CONNS; i++)
    close(fds[i]);
  finish(&f);
}

/* 1 when a connection to 127.0.0.1:port is refused (nothing listens),
 * 0 when it is taken (then closed again) or reset: a probe whose SYN
 * reaches a listener that is closing at that moment is reset by the
 * kernel, which says the listener was still there (CI saw it once). */
static int refused(int port) {
  struct sockaddr_storage sa;
  int fd = socket(AF_INET, SOCK_STREAM, 0), r, err;
  th_addr("127.0.0.1", port, &sa);
  r = connect(fd, (struct sockaddr *)&sa, sizeof(struct sockaddr_in));
  err = r == 0 ? 0 : errno;
  ck_assert_msg(err == 0 || err == ECONNREFUSED || err == ECONNRESET,
                "connect: %s", strerror(err));
  close(fd);
  return err == ECONNREFUSED;
}

/* REUSEPORT: the acceptor never listens, the workers do. Stopping the
 * server stops the workers' listeners (a drain or an upgrade relies on
 * it); the connections they hold stay and still echo. */
static void reuseport_stop(int mode) {
  fixture_t f;
  int fd, gone = 0;
  start(&f, "127.0.0.1", mode, UVIP_BALANCE_REUSEPORT, RP_WORKERS, 0);
  fd = connect_vip(&f, 1);
  echo(&f, fd, 'a', 1);
  ck_assert_int_eq(refused(f.port), 0);
  ck_assert_int_eq(uvip_server_stop(f.server), 0);
  /* The workers carry the order out on their own loops: bounded polling. */
  for (int i = 0; i < 400 && !(gone = refused(f.port)); i++) {
    uv_run(&f.loop, UV_RUN_NOWAIT);
    usleep(5000);
  }
  ck_assert_int_eq(gone, 1);
  echo(&f, fd, 'b', 1);
  close(fd);
  finish(&f);
}

START_TEST(test_thread_reuseport_stop) { reuseport_stop(UVIP_WORKER_THREAD); }
END_TEST

START_TEST(test_process_reuseport_stop) {
  reuseport_stop(UVIP_WORKER_PROCESS);
}
END_TEST

/* EXACT and ROUND_ROBIN with connections arriving together (queued in the
 * kernel before the acceptor runs): the counts are exact, 60 over 3 is 20
 * each, for handed and active alike. */
#define EX_CONNS 60
#define EX_WORKERS 3
static void exact_counts(int mode, int balance) {
  fixture_t f;
  int fds[EX_CONNS];
  start(&f, "127.0.0.1-127.0.0.2", mode, balance, EX_WORKERS, 0);
  for (int i = 0; i < EX_CONNS; i++)
    fds[i] = connect_vip(&f, 1 + i % 2);
  run_until_accepted(&f, EX_CONNS);
  run_until_active(&f, EX_CONNS);
  for (unsigned w = 0; w < EX_WORKERS; w++) {
    ck_assert_uint_eq(wstats(&f, w).handed, EX_CONNS / EX_WORKERS);
    ck_assert_uint_eq(wstats(&f, w).active, EX_CONNS / EX_WORKERS);
  }
  for (int i = 0; i < EX_CONNS; i += 7)
    echo(&f, fds[i], 'x', 1 + i % 2);
  for (int i = 0; i < EX_CONNS; i++)
    close(fds[i]);
  run_until_active(&f, 0);
  finish(&f);
}

START_TEST(test_thread_exact_counts) {
  exact_counts(UVIP_WORKER_THREAD, UVIP_BALANCE_EXACT);
}
END_TEST

START_TEST(test_process_exact_counts) {
  exact_counts(UVIP_WORKER_PROCESS, UVIP_BALANCE_EXACT);
}
END_TEST

START_TEST(test_process_round_robin_counts) {
  exact_counts(UVIP_WORKER_PROCESS, UVIP_BALANCE_ROUND_ROBIN);
}
END_TEST

START_TEST(test_thread_reuseport) { reuseport(UVIP_WORKER_THREAD); }
END_TEST

START_TEST(test_process_reuseport) { reuseport(UVIP_WORKER_PROCESS); }
END_TEST

static uint64_t workers_active(fixture_t *f) {
  uint64_t n = 0;
  for (unsigned w = 0; w < uvip_workers_count(f->workers); w++)
    n += wstats(f, w).active;
  return n;
}

/* Without blocking in the acceptor's loop: in REUSEPORT mode nothing may
 * wake it, and the counts come from the workers' periodic reports. */
static void run_until_workers_hold(fixture_t *f, uint64_t n) {
  for (int i = 0; i < MAX_TURNS && workers_active(f) != n; i++) {
    uv_run(&f->loop, UV_RUN_NOWAIT);
    usleep(5000);
  }
  ck_assert_uint_eq(workers_active(f), n);
}

/* The server's end of fd went away: EOF, or a reset. */
static void expect_closed(fixture_t *f, int fd) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  char c;
  for (int i = 0; i < 200 && poll(&p, 1, 50) == 0; i++)
    uv_run(&f->loop, UV_RUN_NOWAIT);
  ssize_t k = recv(fd, &c, 1, MSG_DONTWAIT);
  ck_assert_msg(k == 0 || (k < 0 && errno == ECONNRESET), "recv: %zd %s", k,
                k < 0 ? strerror(errno) : "(data)");
}

/* uvip_server_close_conns() reaches the connections the workers hold: the
 * clients see them end, every slot comes back, and the workers keep
 * accepting and serving. */
#define NCLOSE 6
static void close_conns(int mode, int balance) {
  fixture_t f;
  int fds[NCLOSE + 1];
  bool reuseport = balance == UVIP_BALANCE_REUSEPORT;
  nconns = nclosed = 0;
  start(&f, "127.0.0.1-127.0.0.2", mode, balance, 2, 0);
  for (int i = 0; i < NCLOSE; i++) {
    fds[i] = connect_vip(&f, 1 + i % 2);
    echo(&f, fds[i], 'c', 1 + i % 2); /* a worker has it */
  }
  run_until_workers_hold(&f, NCLOSE);
  if (!reuseport)
    ck_assert_uint_eq(active(&f), NCLOSE);
  ck_assert_int_eq(uvip_server_close_conns(f.server), 0);
  for (int i = 0; i < NCLOSE; i++) {
    expect_closed(&f, fds[i]);
    close(fds[i]);
  }
  run_until_workers_hold(&f, 0);
  if (!reuseport) {
    uvip_vip_stats_t st;
    run_until_active(&f, 0);
    ck_assert_int_eq(uvip_server_stats(f.server, &st), 0);
    ck_assert_uint_eq(st.accepted, NCLOSE);
    ck_assert_uint_eq(st.closed, NCLOSE);
  }
  if (mode == UVIP_WORKER_THREAD)
    ck_assert_int_eq(__atomic_load_n(&nclosed, __ATOMIC_SEQ_CST), NCLOSE);
  uint64_t handed = 0;
  for (unsigned w = 0; w < 2; w++) {
    ck_assert_int_eq(wstats(&f, w).alive, 1);
    handed += wstats(&f, w).handed;
  }
  ck_assert_uint_eq(handed, NCLOSE);
  /* Not a stop: a new connection is still taken and served. */
  fds[NCLOSE] = connect_vip(&f, 2);
  echo(&f, fds[NCLOSE], 'n', 2);
  run_until_workers_hold(&f, 1);
  if (!reuseport)
    ck_assert_uint_eq(accepted(&f), NCLOSE + 1);
  close(fds[NCLOSE]);
  run_until_workers_hold(&f, 0);
  finish(&f);
  if (mode == UVIP_WORKER_THREAD)
    ck_assert_int_eq(__atomic_load_n(&nconns, __ATOMIC_SEQ_CST), NCLOSE + 1);
}

START_TEST(test_thread_exact_close_conns) {
  close_conns(UVIP_WORKER_THREAD, UVIP_BALANCE_EXACT);
}
END_TEST

START_TEST(test_thread_round_robin_close_conns) {
  close_conns(UVIP_WORKER_THREAD, UVIP_BALANCE_ROUND_ROBIN);
}
END_TEST

START_TEST(test_thread_reuseport_close_conns) {
  close_conns(UVIP_WORKER_THREAD, UVIP_BALANCE_REUSEPORT);
}
END_TEST

START_TEST(test_process_exact_close_conns) {
  close_conns(UVIP_WORKER_PROCESS, UVIP_BALANCE_EXACT);
}
END_TEST

START_TEST(test_process_round_robin_close_conns) {
  close_conns(UVIP_WORKER_PROCESS, UVIP_BALANCE_ROUND_ROBIN);
}
END_TEST

START_TEST(test_process_reuseport_close_conns) {
  close_conns(UVIP_WORKER_PROCESS, UVIP_BALANCE_REUSEPORT);
}
END_TEST


/* Loop liveness: nothing the workers do may stall the acceptor's loop. A
 * 10 ms tick on that loop records the longest gap between two ticks while
 * 16 process workers are started, one is killed and restarted, and all
 * are closed, one of them with a handle its exit_cb leaves open (so that
 * process does not end by itself). Every step is taken from a callback on
 * the loop, as an application would. Each worker's init_cb takes 150 ms:
 * waiting for readiness on the loop would show. */
#define LV_WORKERS 16
#define LV_STUCK 5     /* this worker's exit_cb leaves a handle open */
#define LV_VICTIM 3    /* this one is killed and restarted */
#define LV_MAX_GAP_MS 100

static uv_timer_t lv_left_open; /* in the child of worker LV_STUCK */

static void lv_noop_timer(uv_timer_t *t) { (void)t; }

static void lv_init(uv_loop_t *loop, unsigned int index, void *arg) {
  (void)arg;
  usleep(150 * 1000);
  if (index == LV_STUCK) {
    uv_timer_init(loop, &lv_left_open);
    uv_timer_start(&lv_left_open, lv_noop_timer, 1000, 1000);
  }
}

static void lv_exit(uv_loop_t *loop, unsigned int index, void *arg) {
  (void)loop;
  (void)index;
  (void)arg; /* lv_left_open stays: an application's slip */
}

typedef struct {
  fixture_t f;
  uv_timer_t tick;
  uint64_t last, last_wait, max_gap, gap[7]; /* the longest at each step */
  uint64_t max_raw; /* the same before taking out run-queue waits */
  int step;
  pid_t victim;
  bool workers_closed, server_closed;
  int fds[LV_WORKERS];
  unsigned ticks;
} lv_t;

static lv_t lv;

static bool lv_all_alive(void) {
  for (unsigned i = 0; i < LV_WORKERS; i++)
    if (!wstats(&lv.f, i).alive)
      return false;
  return true;
}

static void lv_server_closed(uvip_server_t *s) {
  (void)s;
  lv.server_closed = true;
}

static void lv_workers_closed(uvip_workers_t *w) {
  /* The stuck one was killed when the grace period ended; the others
   * exited by themselves. */
  for (unsigned i = 0; i < LV_WORKERS; i++) {
    int st = wstats(&lv.f, i).exit_status;
    if (i == LV_STUCK)
      ck_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    else
      ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0,
                    "worker %u: status 0x%x", i, (unsigned)st);
  }
  (void)w;
  lv.workers_closed = true;
  ck_assert_int_eq(uvip_server_close(lv.f.server, lv_server_closed), 0);
}

/* Nanoseconds this thread has spent runnable but waiting for a CPU
 * (/proc/thread-self/schedstat), or 0 if unknown. */
static uint64_t runqueue_wait(void) {
  unsigned long long oncpu = 0, wait = 0;
  FILE *f = fopen("/proc/thread-self/schedstat", "r");
  if (!f)
    return 0;
  if (fscanf(f, "%llu %llu", &oncpu, &wait) != 2)
    wait = 0;
  fclose(f);
  return wait;
}

/* Each tick measures, then takes the next step once the last one is done.
 * A gap counts the time the loop thread was blocked or busy, not the time
 * it was ready to run and the machine (shared with other jobs) gave it no
 * CPU: that is not the library's doing, and would make the check depend
 * on the load. */
static void lv_tick(uv_timer_t *t) {
  uint64_t now = uv_hrtime(), wait = runqueue_wait();
  char err[256] = "";
  int r;
  if (lv.last) {
    uint64_t raw = now - lv.last, waited = wait - lv.last_wait;
    uint64_t gap = raw > waited ? raw - waited : 0;
    if (raw > lv.max_raw)
      lv.max_raw = raw;
    if (gap > lv.max_gap)
      lv.max_gap = gap;
    if (gap > lv.gap[lv.step])
      lv.gap[lv.step] = gap;
  }
  lv.last = now;
  lv.last_wait = wait;
  lv.ticks++;
  ck_assert_msg(lv.ticks < 3000, "stuck at step %d", lv.step);
  switch (lv.step) {
  case 0:
    r = uvip_workers_listen(lv.f.workers, on_conn, err, sizeof(err));
    ck_assert_msg(r == 0, "listen: %s (%s)", uv_strerror(r), err);
    lv.step++;
    break;
  case 1: /* every worker ready and serving */
    if (!lv_all_alive())
      break;
    for (int i = 0; i < LV_WORKERS; i++)
      lv.fds[i] = connect_vip(&lv.f, 1);
    lv.step++;
    break;
  case 2:
    if (accepted(&lv.f) < LV_WORKERS)
      break;
    lv.victim = (pid_t)wstats(&lv.f, LV_VICTIM).pid;
    ck_assert_int_eq(kill(lv.victim, SIGKILL), 0);
    lv.step++;
    break;
  case 3: /* its death noticed */
    if (wstats(&lv.f, LV_VICTIM).alive)
      break;
    ck_assert_int_eq(uvip_workers_restart(lv.f.workers, LV_VICTIM), 0);
    lv.step++;
    break;
  case 4:
    if (!lv_all_alive())
      break;
    ck_assert_int_ne(wstats(&lv.f, LV_VICTIM).pid, lv.victim);
    ck_assert_int_eq(uvip_workers_close(lv.f.workers, lv_workers_closed), 0);
    lv.step++;
    break;
  case 5:
    if (!lv.server_closed)
      break;
    uv_close((uv_handle_t *)t, NULL);
    lv.step++;
    break;
  }
}

START_TEST(test_process_loop_liveness) {
  uvip_workers_options_t o;
  uvip_addrs_t *a;
  memset(&lv, 0, sizeof(lv));
  lv.f.port = th_free_port();
  a = th_addrs("127.0.0.1", lv.f.port);
  ck_assert_int_eq(uv_loop_init(&lv.f.loop), 0);
  ck_assert_int_eq(uvip_server_new(&lv.f.loop, a, NULL, &lv.f.server), 0);
  uvip_addrs_free(a);
  uvip_server_set_data(lv.f.server, &marker);
  uvip_workers_options_init(&o);
  o.nworkers = LV_WORKERS;
  o.mode = UVIP_WORKER_PROCESS;
  o.init_cb = lv_init;
  o.exit_cb = lv_exit;
  ck_assert_int_eq(uvip_workers_new(lv.f.server, &o, &lv.f.workers), 0);
  uv_timer_init(&lv.f.loop, &lv.tick);
  uv_timer_start(&lv.tick, lv_tick, 10, 10);
  while (lv.step < 6 && uv_run(&lv.f.loop, UV_RUN_ONCE) >= 0)
    ;
  for (int i = 0; i < 100 && uv_loop_alive(&lv.f.loop); i++)
    uv_run(&lv.f.loop, UV_RUN_ONCE);
  ck_assert_int_eq(uv_loop_close(&lv.f.loop), 0);
  expect_no_children();
  for (int i = 0; i < LV_WORKERS; i++)
    close(lv.fds[i]);
  fprintf(stderr, "liveness: longest gaps %.1f ms (listen %.1f, kill %.1f, "
          "restart %.1f, close %.1f); %.1f ms with run-queue waits\n",
          lv.max_gap / 1e6, lv.gap[1] / 1e6, lv.gap[3] / 1e6, lv.gap[4] / 1e6,
          lv.gap[5] / 1e6, lv.max_raw / 1e6);
  /* gap[s] follows the call made at step s - 1: 1 listen, 3 the kill,
   * 4 restart, 5 close. */
  ck_assert_msg(lv.max_gap < (uint64_t)LV_MAX_GAP_MS * 1000000,
                "the acceptor's loop stalled %.1f ms (by step: %.1f %.1f %.1f "
                "%.1f %.1f %.1f)", lv.max_gap / 1e6, lv.gap[1] / 1e6,
                lv.gap[2] / 1e6, lv.gap[3] / 1e6, lv.gap[4] / 1e6,
                lv.gap[5] / 1e6, lv.gap[6] / 1e6);
}
END_TEST

int main(void) {
  Suite *s = suite_create("workers");
  TCase *tc = tcase_create("workers");
  tcase_add_test(tc, test_args);
  tcase_add_test(tc, test_listen_fails);
  tcase_add_test(tc, test_thread_exact);
  tcase_add_test(tc, test_thread_round_robin);
  tcase_add_test(tc, test_thread_backpressure);
  tcase_add_test(tc, test_thread_reuseport);
  tcase_add_test(tc, test_process_exact);
  tcase_add_test(tc, test_process_round_robin);
  tcase_add_test(tc, test_process_backpressure);
  tcase_add_test(tc, test_process_kill_restart);
  tcase_add_test(tc, test_process_reuseport);
  tcase_add_test(tc, test_thread_exact_close_conns);
  tcase_add_test(tc, test_thread_round_robin_close_conns);
  tcase_add_test(tc, test_thread_reuseport_close_conns);
  tcase_add_test(tc, test_process_exact_close_conns);
  tcase_add_test(tc, test_process_round_robin_close_conns);
  tcase_add_test(tc, test_process_reuseport_close_conns);
  tcase_add_test(tc, test_process_loop_liveness);
  tcase_add_test(tc, test_process_start_fails_async);
  tcase_add_test(tc, test_process_keep_fds);
  tcase_add_test(tc, test_thread_close_while_starting);
  tcase_add_test(tc, test_process_close_while_starting);
  tcase_add_test(tc, test_thread_exact_counts);
  tcase_add_test(tc, test_process_exact_counts);
  tcase_add_test(tc, test_process_round_robin_counts);
  tcase_add_test(tc, test_thread_reuseport_stop);
  tcase_add_test(tc, test_process_reuseport_stop);
  suite_add_tcase(s, tc);
  return th_run_suite(s);
}
