/* Workers' error paths, with the library's calls to malloc, calloc,
 * realloc, fork, socketpair, uv_thread_create, uv_async_init,
 * uv_signal_start and uv_read_start going through the wrappers below
 * (-Wl,--wrap; they pass through unless armed): out of memory at each
 * allocation of uvip_workers_new() and uvip_workers_listen(), a worker that
 * cannot be forked (the first, a later one, a restart), a hand-off that
 * cannot be allocated, an order that cannot be sent. Each checks what the
 * caller sees: the error, the counters, the client's connection, the
 * callbacks, and that the workers still close once, leaving no process.
 * SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"
#include "workers-internal.h"

#define MAX_TURNS 2000

/* ---- the wrappers: each fails its (skip + 1)-th call from arming on ---- */

typedef struct {
  int skip, fail, err;
} fault_t;
static fault_t f_malloc, f_calloc, f_realloc, f_fork, f_socketpair, f_thread,
    f_async, f_signal, f_read, f_tcp_open;

/* Atomics: a thread worker's calls go through the wrappers too. */
static bool hit(fault_t *f) {
  if (__atomic_load_n(&f->fail, __ATOMIC_SEQ_CST) <= 0)
    return false;
  if (f->skip > 0) {
    f->skip--;
    return false;
  }
  __atomic_store_n(&f->fail, 0, __ATOMIC_SEQ_CST);
  return true;
}

static void arm(fault_t *f, int skip, int err) {
  f->skip = skip;
  f->err = err;
  __atomic_store_n(&f->fail, 1, __ATOMIC_SEQ_CST);
}

static void disarm_all(void) {
  fault_t *all[] = {&f_malloc, &f_calloc, &f_realloc, &f_fork, &f_socketpair,
                    &f_thread, &f_async, &f_signal, &f_read, &f_tcp_open};
  for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
    memset(all[i], 0, sizeof(*all[i]));
}

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t m);
void *__real_realloc(void *p, size_t n);
pid_t __real_fork(void);
int __real_socketpair(int d, int t, int p, int sv[2]);
int __real_uv_thread_create(uv_thread_t *t, uv_thread_cb cb, void *arg);
int __real_uv_async_init(uv_loop_t *l, uv_async_t *a, uv_async_cb cb);
int __real_uv_signal_start(uv_signal_t *h, uv_signal_cb cb, int signum);
int __real_uv_read_start(uv_stream_t *s, uv_alloc_cb a, uv_read_cb r);
int __real_uv_tcp_open(uv_tcp_t *h, uv_os_sock_t sock);

void *__wrap_malloc(size_t n);
void *__wrap_malloc(size_t n) {
  return hit(&f_malloc) ? NULL : __real_malloc(n);
}
void *__wrap_calloc(size_t n, size_t m);
void *__wrap_calloc(size_t n, size_t m) {
  return hit(&f_calloc) ? NULL : __real_calloc(n, m);
}
void *__wrap_realloc(void *p, size_t n);
void *__wrap_realloc(void *p, size_t n) {
  return hit(&f_realloc) ? NULL : __real_realloc(p, n);
}
pid_t __wrap_fork(void);
pid_t __wrap_fork(void) {
  if (hit(&f_fork)) {
    errno = EAGAIN;
    return -1;
  }
  return __real_fork();
}
int __wrap_socketpair(int d, int t, int p, int sv[2]);
int __wrap_socketpair(int d, int t, int p, int sv[2]) {
  if (hit(&f_socketpair)) {
    errno = EMFILE;
    return -1;
  }
  return __real_socketpair(d, t, p, sv);
}
int __wrap_uv_thread_create(uv_thread_t *t, uv_thread_cb cb, void *arg);
int __wrap_uv_thread_create(uv_thread_t *t, uv_thread_cb cb, void *arg) {
  return hit(&f_thread) ? UV_EAGAIN : __real_uv_thread_create(t, cb, arg);
}
int __wrap_uv_async_init(uv_loop_t *l, uv_async_t *a, uv_async_cb cb);
int __wrap_uv_async_init(uv_loop_t *l, uv_async_t *a, uv_async_cb cb) {
  return hit(&f_async) ? UV_EMFILE : __real_uv_async_init(l, a, cb);
}
int __wrap_uv_signal_start(uv_signal_t *h, uv_signal_cb cb, int signum);
int __wrap_uv_signal_start(uv_signal_t *h, uv_signal_cb cb, int signum) {
  return hit(&f_signal) ? UV_EINVAL : __real_uv_signal_start(h, cb, signum);
}
int __wrap_uv_read_start(uv_stream_t *s, uv_alloc_cb a, uv_read_cb r);
int __wrap_uv_read_start(uv_stream_t *s, uv_alloc_cb a, uv_read_cb r) {
  return hit(&f_read) ? UV_ENOTCONN : __real_uv_read_start(s, a, r);
}

int __wrap_uv_tcp_open(uv_tcp_t *h, uv_os_sock_t sock);
int __wrap_uv_tcp_open(uv_tcp_t *h, uv_os_sock_t sock) {
  return hit(&f_tcp_open) ? UV_EBADF : __real_uv_tcp_open(h, sock);
}

/* ---- a fixture: one server on 127.0.0.1, echo on the workers ---- */

static _Thread_local char rbuf[64];
static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  (void)h;
  (void)hint;
  *buf = uv_buf_init(rbuf, sizeof(rbuf));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  if (n < 0) {
    uvip_conn_close(uvip_conn_from_tcp((uv_tcp_t *)s), NULL);
    return;
  }
  uv_buf_t o = uv_buf_init(b->base, (unsigned)n);
  uv_try_write(s, &o, 1);
}

static void on_conn(uvip_server_t *s, uvip_conn_t *c) {
  (void)s;
  if (uv_read_start(uvip_conn_stream(c), on_alloc, on_read) != 0)
    uvip_conn_close(c, NULL);
}

static int nready[4], ready_status[4];
static void on_ready(uvip_workers_t *w, unsigned int index, int status) {
  (void)w;
  ck_assert_uint_lt(index, 4);
  nready[index]++;
  ready_status[index] = status;
}

typedef struct {
  uv_loop_t loop;
  uvip_server_t *server;
  uvip_workers_t *workers;
  int port;
  bool closed;
  int ncloses;
} fx_t;

static fx_t *cur;

static void fx_server_spec(fx_t *f, const char *spec) {
  uvip_addrs_t *a;
  memset(f, 0, sizeof(*f));
  cur = f;
  f->port = th_free_port();
  a = th_addrs(spec, f->port);
  ck_assert_int_eq(uv_loop_init(&f->loop), 0);
  ck_assert_int_eq(uvip_server_new(&f->loop, a, NULL, &f->server), 0);
  uvip_addrs_free(a);
  memset(nready, 0, sizeof(nready));
  memset(ready_status, 0, sizeof(ready_status));
}

static void fx_server(fx_t *f) { fx_server_spec(f, "127.0.0.1"); }

static void fx_new(fx_t *f, int mode, unsigned n) {
  uvip_workers_options_t o;
  fx_server(f);
  uvip_workers_options_init(&o);
  o.nworkers = n;
  o.mode = mode;
  o.ready_cb = on_ready;
  ck_assert_int_eq(uvip_workers_new(f->server, &o, &f->workers), 0);
}

static uvip_worker_stats_t wstats(fx_t *f, unsigned i) {
  uvip_worker_stats_t st;
  ck_assert_int_eq(uvip_workers_stats(f->workers, i, &st), 0);
  return st;
}

static uvip_vip_stats_t sstats(fx_t *f) {
  uvip_vip_stats_t st;
  ck_assert_int_eq(uvip_server_stats(f->server, &st), 0);
  return st;
}

static bool all_alive(fx_t *f) {
  for (unsigned i = 0; i < uvip_workers_count(f->workers); i++)
    if (!wstats(f, i).alive)
      return false;
  return true;
}

static void run_until_alive(fx_t *f) {
  for (int i = 0; i < MAX_TURNS && !all_alive(f); i++)
    uv_run(&f->loop, UV_RUN_ONCE);
  ck_assert(all_alive(f));
}

static void fx_listen(fx_t *f) {
  char err[256] = "";
  int r = uvip_workers_listen(f->workers, on_conn, err, sizeof(err));
  ck_assert_msg(r == 0, "listen: %s (%s)", uv_strerror(r), err);
  run_until_alive(f);
}

static void on_server_closed(uvip_server_t *s) { (void)s; }

static void on_workers_closed(uvip_workers_t *w) {
  ck_assert_ptr_eq(uvip_workers_server(w), cur->server);
  cur->ncloses++;
  cur->closed = true;
}

/* Closes the workers, then the server; the close callback runs once, the
 * loop ends and no worker process is left. */
static void fx_close(fx_t *f) {
  ck_assert_int_eq(uvip_workers_close(f->workers, on_workers_closed), 0);
  th_run_until(&f->loop, &f->closed, MAX_TURNS);
  ck_assert_int_eq(f->ncloses, 1);
  ck_assert_int_eq(uvip_server_close(f->server, on_server_closed), 0);
  for (int i = 0; i < 100 && uv_loop_alive(&f->loop); i++)
    uv_run(&f->loop, UV_RUN_ONCE);
  ck_assert_int_eq(uv_loop_close(&f->loop), 0);
  ck_assert_int_eq(waitpid(-1, NULL, WNOHANG), -1);
  ck_assert_int_eq(errno, ECHILD);
  ck_assert_int_eq(f->ncloses, 1);
}

static int fx_connect(fx_t *f) {
  struct sockaddr_storage sa;
  th_addr("127.0.0.1", f->port, &sa);
  return th_connect((struct sockaddr *)&sa, NULL);
}

static void expect_closed(fx_t *f, int fd) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  char c;
  for (int i = 0; i < 200 && poll(&p, 1, 20) == 0; i++)
    uv_run(&f->loop, UV_RUN_NOWAIT);
  ssize_t k = recv(fd, &c, 1, MSG_DONTWAIT);
  ck_assert_msg(k == 0 || (k < 0 && errno == ECONNRESET), "recv: %zd %s", k,
                k < 0 ? strerror(errno) : "(data)");
}

static void expect_echo(fx_t *f, int fd) {
  char c = 'e', in = 0;
  struct pollfd p = {.fd = fd, .events = POLLIN};
  ck_assert_int_eq(write(fd, &c, 1), 1);
  for (int i = 0; i < 200 && poll(&p, 1, 20) == 0; i++)
    uv_run(&f->loop, UV_RUN_NOWAIT);
  ck_assert_int_eq(read(fd, &in, 1), 1);
  ck_assert_int_eq(in, 'e');
}

/* Turns the loop until the armed fault fired (no check assertion
 * meanwhile: libcheck is linked statically and allocates through the same
 * wrappers), then disarms; the test fails if it never fired. */
static void run_until_fired(fx_t *f, fault_t *ft) {
  for (int i = 0; i < MAX_TURNS && __atomic_load_n(&ft->fail, __ATOMIC_SEQ_CST) > 0; i++)
    uv_run(&f->loop, UV_RUN_ONCE);
  bool fired = __atomic_load_n(&ft->fail, __ATOMIC_SEQ_CST) == 0;
  disarm_all();
  ck_assert_msg(fired, "the fault was not reached");
}

/* Until the server has accepted `accepted` and counts err_other. */
static void run_until_stats(fx_t *f, uint64_t accepted, uint64_t active,
                            uint64_t err_other) {
  for (int i = 0; i < MAX_TURNS &&
                  (sstats(f).accepted != accepted || sstats(f).active != active ||
                   sstats(f).err_other != err_other);
       i++)
    uv_run(&f->loop, UV_RUN_ONCE);
  ck_assert_uint_eq(sstats(f).accepted, accepted);
  ck_assert_uint_eq(sstats(f).active, active);
  ck_assert_uint_eq(sstats(f).err_other, err_other);
}

/* ---- options and uvip_workers_new() ---- */

/* Every argument uvip_workers_new() refuses, and its defaults for NULL
 * options. */
START_TEST(test_new_args) {
  fx_t f;
  uvip_workers_options_t o;
  int keep[1] = {0};
  fx_server(&f);
  uvip_workers_options_init(&o);
  o.nkeep_fds = (size_t)INT_MAX + 1;
  o.keep_fds = keep;
  ck_assert_int_eq(uvip_workers_new(f.server, &o, &f.workers), UV_EINVAL);
  ck_assert_ptr_null(f.workers);
  /* NULL options: the defaults (2 thread workers). */
  ck_assert_int_eq(uvip_workers_new(f.server, NULL, &f.workers), 0);
  ck_assert_uint_eq(uvip_workers_count(f.workers), 2);
  ck_assert_int_eq(wstats(&f, 1).pid, 0);
  ck_assert_int_eq(wstats(&f, 1).exit_status, -1);
  ck_assert_int_eq(uvip_workers_stats(f.workers, 2, &(uvip_worker_stats_t){0}),
                   UV_EINVAL);
  fx_close(&f);
  /* A server that listens already cannot be given workers. */
  fx_server(&f);
  ck_assert_int_eq(uvip_server_listen(f.server, th_echo_on_connection, NULL, 0), 0);
  uvip_workers_options_init(&o);
  ck_assert_int_eq(uvip_workers_new(f.server, &o, &f.workers), UV_EINVAL);
  ck_assert_ptr_null(f.workers);
  ck_assert_int_eq(uvip_server_close(f.server, on_server_closed), 0);
  for (int i = 0; i < 100 && uv_loop_alive(&f.loop); i++)
    uv_run(&f.loop, UV_RUN_ONCE);
  ck_assert_int_eq(uv_loop_close(&f.loop), 0);
}
END_TEST

/* Out of memory at each allocation of uvip_workers_new(): UV_ENOMEM and
 * nothing attached to the server (it closes at once, not UV_EBUSY). */
START_TEST(test_new_enomem) {
  fx_t f;
  uvip_workers_options_t o;
  int keep[1] = {5};
  fx_server(&f);
  uvip_workers_options_init(&o);
  o.keep_fds = keep;
  o.nkeep_fds = 1;
  for (int k = 0; k < 3; k++) {
    f.workers = NULL;
    if (k < 2)
      arm(&f_calloc, k, 0); /* the workers, then their array */
    else
      arm(&f_malloc, 0, 0); /* the copy of keep_fds */
    int r = uvip_workers_new(f.server, &o, &f.workers);
    disarm_all();
    ck_assert_int_eq(r, UV_ENOMEM);
    ck_assert_ptr_null(f.workers);
  }
  ck_assert_int_eq(uvip_server_close(f.server, on_server_closed), 0);
  for (int i = 0; i < 100 && uv_loop_alive(&f.loop); i++)
    uv_run(&f.loop, UV_RUN_ONCE);
  ck_assert_int_eq(uv_loop_close(&f.loop), 0);
}
END_TEST

/* ---- uvip_workers_listen() failing ---- */

/* A listen that failed: the error, nothing listening, a second listen is
 * UV_EALREADY, and the workers still close once. */
static void expect_failed_listen(fx_t *f, int want, const char *errpart) {
  char err[256] = "";
  int r = uvip_workers_listen(f->workers, on_conn, err, sizeof(err));
  disarm_all();
  ck_assert_msg(r == want, "listen: %s, want %s (%s)", uv_strerror(r),
                uv_strerror(want), err);
  if (errpart)
    ck_assert_msg(strstr(err, errpart) != NULL, "errbuf: %s", err);
  ck_assert_int_eq(uvip_server_is_listening(f->server), 0);
  ck_assert_int_eq(uvip_workers_listen(f->workers, on_conn, NULL, 0),
                   UV_EALREADY);
  fx_close(f);
  for (int i = 0; i < 4; i++)
    ck_assert_int_eq(nready[i], 0);
}

/* The acceptor's handles cannot be allocated (threads: the inbox;
 * processes: SIGCHLD, the timer, the spawner). */
START_TEST(test_listen_handles_enomem) {
  fx_t f;
  fx_new(&f, UVIP_WORKER_THREAD, 2);
  arm(&f_malloc, 0, 0);
  expect_failed_listen(&f, UV_ENOMEM, NULL);
  for (int k = 0; k < 3; k++) {
    fx_new(&f, UVIP_WORKER_PROCESS, 2);
    arm(&f_malloc, k, 0);
    expect_failed_listen(&f, UV_ENOMEM, NULL);
  }
}
END_TEST

/* The inbox's async handle or the SIGCHLD watch cannot be started. */
START_TEST(test_listen_handle_init_fails) {
  fx_t f;
  fx_new(&f, UVIP_WORKER_THREAD, 2);
  arm(&f_async, 0, 0);
  expect_failed_listen(&f, UV_EMFILE, NULL);
  fx_new(&f, UVIP_WORKER_PROCESS, 2);
  arm(&f_signal, 0, 0);
  expect_failed_listen(&f, UV_EINVAL, NULL);
}
END_TEST

/* The first worker process cannot be created: no socket pair, its pipe
 * cannot be read, no fork. The error names the worker. */
START_TEST(test_listen_first_process_fails) {
  fx_t f;
  fx_new(&f, UVIP_WORKER_PROCESS, 2);
  arm(&f_socketpair, 0, 0);
  expect_failed_listen(&f, UV_EMFILE, "worker 0: too many open files");
  fx_new(&f, UVIP_WORKER_PROCESS, 2);
  arm(&f_read, 0, 0);
  expect_failed_listen(&f, UV_ENOTCONN, "worker 0:");
  fx_new(&f, UVIP_WORKER_PROCESS, 2);
  arm(&f_fork, 0, 0);
  expect_failed_listen(&f, UV_EAGAIN, "worker 0: resource temporarily unavailable");
  /* After SIGCHLD's handle, the timer and the spawner: the pipe. */
  fx_new(&f, UVIP_WORKER_PROCESS, 2);
  arm(&f_malloc, 3, 0);
  expect_failed_listen(&f, UV_ENOMEM, "worker 0: not enough memory");
}
END_TEST

/* The second thread cannot be created: the first, already running, is
 * stopped; listen fails naming worker 1 and the workers close. Also out
 * of memory for the first worker's loop. */
START_TEST(test_listen_thread_fails) {
  fx_t f;
  fx_new(&f, UVIP_WORKER_THREAD, 2);
  arm(&f_thread, 1, 0);
  expect_failed_listen(&f, UV_EAGAIN, "worker 1: resource temporarily unavailable");
  fx_new(&f, UVIP_WORKER_THREAD, 2);
  arm(&f_malloc, 1, 0); /* after the inbox: the worker's loop */
  expect_failed_listen(&f, UV_ENOMEM, "worker 0:");
}
END_TEST

/* ---- forks after listen, restarts ---- */

/* The second worker process cannot be forked (it is forked from the loop,
 * after listen returned): ready_cb hears UV_EAGAIN, the worker is dead and
 * every connection goes to the first. A restart that cannot fork either
 * returns the error and counts no restart; the next one starts it. */
START_TEST(test_process_later_fork_fails) {
  fx_t f;
  int a, b;
  fx_new(&f, UVIP_WORKER_PROCESS, 2);
  arm(&f_fork, 1, 0);
  ck_assert_int_eq(uvip_workers_listen(f.workers, on_conn, NULL, 0), 0);
  for (int i = 0; i < MAX_TURNS && (nready[0] == 0 || nready[1] == 0); i++)
    uv_run(&f.loop, UV_RUN_ONCE);
  disarm_all();
  ck_assert_int_eq(nready[0], 1);
  ck_assert_int_eq(ready_status[0], 0);
  ck_assert_int_eq(nready[1], 1);
  ck_assert_int_eq(ready_status[1], UV_EAGAIN);
  ck_assert_int_eq(wstats(&f, 1).alive, 0);
  ck_assert_int_eq(wstats(&f, 1).starting, 0);
  ck_assert_int_eq(wstats(&f, 1).pid, 0);
  a = fx_connect(&f);
  b = fx_connect(&f);
  run_until_stats(&f, 2, 2, 0);
  ck_assert_uint_eq(wstats(&f, 0).handed, 2);
  ck_assert_uint_eq(wstats(&f, 1).handed, 0);
  expect_echo(&f, a);
  /* Restarts: of a live worker, of a dead one that cannot fork, then one
   * that works. */
  ck_assert_int_eq(uvip_workers_restart(f.workers, 0), UV_EBUSY);
  ck_assert_int_eq(uvip_workers_restart(f.workers, 2), UV_EINVAL);
  arm(&f_fork, 0, 0);
  int r = uvip_workers_restart(f.workers, 1);
  disarm_all();
  ck_assert_int_eq(r, UV_EAGAIN);
  ck_assert_uint_eq(wstats(&f, 1).restarts, 0);
  arm(&f_socketpair, 0, 0);
  r = uvip_workers_restart(f.workers, 1);
  disarm_all();
  ck_assert_int_eq(r, UV_EMFILE);
  ck_assert_int_eq(uvip_workers_restart(f.workers, 1), 0);
  ck_assert_uint_eq(wstats(&f, 1).restarts, 1);
  ck_assert_int_eq(wstats(&f, 1).starting, 1);
  run_until_alive(&f);
  ck_assert_int_eq(nready[1], 2);
  ck_assert_int_eq(ready_status[1], 0);
  /* EXACT: the restarted worker, holding none, gets the next one. */
  int c = fx_connect(&f);
  run_until_stats(&f, 3, 3, 0);
  ck_assert_uint_eq(wstats(&f, 1).handed, 1);
  expect_echo(&f, c);
  fx_close(&f);
  close(a);
  close(b);
  close(c);
}
END_TEST

/* Thread workers cannot be restarted; nor can workers that do not
 * listen. */
START_TEST(test_thread_restart_not_supported) {
  fx_t f;
  fx_new(&f, UVIP_WORKER_THREAD, 1);
  ck_assert_int_eq(uvip_workers_restart(f.workers, 0), UV_EINVAL);
  fx_listen(&f);
  ck_assert_int_eq(uvip_workers_restart(f.workers, 0), UV_ENOTSUP);
  ck_assert_uint_eq(wstats(&f, 0).restarts, 0);
  fx_close(&f);
}
END_TEST

/* ---- hand-offs that cannot be made ---- */

/* The worker's per-VIP counts cannot grow (the third realloc of the first
 * hand-off, after the two VIP arrays): the connection is closed and counted
 * as the server's err_other, no slot stays taken, and the next connection
 * is handed over (the VIP's id was kept). */
static void vip_active_enomem(int mode) {
  fx_t f;
  int a, b;
  fx_new(&f, mode, 1);
  fx_listen(&f);
  a = fx_connect(&f);
  arm(&f_realloc, 2, 0);
  run_until_fired(&f, &f_realloc);
  run_until_stats(&f, 0, 0, 1);
  ck_assert_uint_eq(wstats(&f, 0).handed, 0);
  ck_assert_uint_eq(wstats(&f, 0).active, 0);
  expect_closed(&f, a);
  b = fx_connect(&f);
  run_until_stats(&f, 1, 1, 1);
  expect_echo(&f, b);
  ck_assert_uint_eq(wstats(&f, 0).handed, 1);
  ck_assert_uint_eq(f.workers->nvips, 1);
  fx_close(&f);
  close(a);
  close(b);
}

START_TEST(test_thread_vip_active_enomem) {
  vip_active_enomem(UVIP_WORKER_THREAD);
}
END_TEST

START_TEST(test_process_vip_active_enomem) {
  vip_active_enomem(UVIP_WORKER_PROCESS);
}
END_TEST

/* The transport cannot take the descriptor (a process: the hand-off
 * record cannot be allocated; a thread: its queue cannot grow): counted as
 * the worker's failed, not handed, the slot is given back, the client sees
 * the connection go; the next one is served. */
static void transport_enomem(int mode) {
  fx_t f;
  int a, b;
  fx_new(&f, mode, 1);
  fx_listen(&f);
  a = fx_connect(&f);
  if (mode == UVIP_WORKER_PROCESS) {
    arm(&f_malloc, 0, 0);
    run_until_fired(&f, &f_malloc);
  } else {
    arm(&f_realloc, 3, 0); /* VIP arrays, per-VIP counts, then the queue */
    run_until_fired(&f, &f_realloc);
  }
  run_until_stats(&f, 0, 0, 1);
  ck_assert_uint_eq(wstats(&f, 0).failed, 1);
  ck_assert_uint_eq(wstats(&f, 0).handed, 0);
  ck_assert_uint_eq(wstats(&f, 0).active, 0);
  expect_closed(&f, a);
  b = fx_connect(&f);
  run_until_stats(&f, 1, 1, 1);
  expect_echo(&f, b);
  ck_assert_uint_eq(wstats(&f, 0).handed, 1);
  ck_assert_uint_eq(wstats(&f, 0).failed, 1);
  fx_close(&f);
  close(a);
  close(b);
}

START_TEST(test_process_handoff_enomem) {
  transport_enomem(UVIP_WORKER_PROCESS);
}
END_TEST

START_TEST(test_thread_queue_enomem) {
  transport_enomem(UVIP_WORKER_THREAD);
}
END_TEST

/* ---- orders that cannot be sent ---- */

/* uvip_server_close_conns() cannot reach a worker process (its order
 * cannot be allocated): the error is returned and the connection stays;
 * asked again, it is closed. */
START_TEST(test_process_close_conns_enomem) {
  fx_t f;
  int a;
  fx_new(&f, UVIP_WORKER_PROCESS, 1);
  fx_listen(&f);
  a = fx_connect(&f);
  run_until_stats(&f, 1, 1, 0);
  arm(&f_calloc, 0, 0);
  int r = uvip_server_close_conns(f.server);
  disarm_all();
  ck_assert_int_eq(r, UV_ENOMEM);
  expect_echo(&f, a);
  ck_assert_uint_eq(sstats(&f).active, 1);
  ck_assert_int_eq(uvip_server_close_conns(f.server), 0);
  expect_closed(&f, a);
  run_until_stats(&f, 1, 0, 0);
  ck_assert_uint_eq(wstats(&f, 0).active, 0);
  fx_close(&f);
  close(a);
}
END_TEST

static void on_closed_killed(uvip_workers_t *w) {
  uvip_worker_stats_t st;
  ck_assert_int_eq(uvip_workers_stats(w, 0, &st), 0);
  ck_assert_msg(WIFSIGNALED(st.exit_status) && WTERMSIG(st.exit_status) == SIGKILL,
                "status 0x%x", (unsigned)st.exit_status);
  ck_assert_int_eq(st.active, 0);
  on_workers_closed(w);
}

/* The order to stop cannot be sent: the worker is killed instead, its
 * slots come back, and the close completes with a grace period that would
 * otherwise have lasted a minute. */
START_TEST(test_process_stop_order_enomem) {
  fx_t f;
  uvip_workers_options_t o;
  int a;
  fx_server(&f);
  uvip_workers_options_init(&o);
  o.nworkers = 1;
  o.mode = UVIP_WORKER_PROCESS;
  o.grace_ms = 60000;
  ck_assert_int_eq(uvip_workers_new(f.server, &o, &f.workers), 0);
  fx_listen(&f);
  a = fx_connect(&f);
  run_until_stats(&f, 1, 1, 0);
  arm(&f_calloc, 0, 0);
  int r = uvip_workers_close(f.workers, on_closed_killed);
  disarm_all();
  ck_assert_int_eq(r, 0);
  th_run_until(&f.loop, &f.closed, MAX_TURNS);
  ck_assert_int_eq(f.ncloses, 1);
  ck_assert_uint_eq(sstats(&f).active, 0);
  expect_closed(&f, a);
  ck_assert_int_eq(uvip_server_close(f.server, on_server_closed), 0);
  for (int i = 0; i < 100 && uv_loop_alive(&f.loop); i++)
    uv_run(&f.loop, UV_RUN_ONCE);
  ck_assert_int_eq(uv_loop_close(&f.loop), 0);
  close(a);
}
END_TEST

/* ---- VIP ids ---- */

/* The id map grows (rehashing every key: each keeps its id), and a map
 * that cannot grow leaves the VIP without an id until it can. A VIP whose
 * memory is reused for another address gets a new id, and lookups then
 * find the new one. */
START_TEST(test_vip_ids) {
  fx_t f;
  static uvip_vip_t fake[40];
  uint32_t id = 99;
  fx_new(&f, UVIP_WORKER_THREAD, 1);
  for (int i = 0; i < 40; i++) {
    struct sockaddr_storage sa;
    char ip[32];
    snprintf(ip, sizeof(ip), "127.0.2.%d", i + 1);
    th_addr(ip, 80, &sa);
    memcpy(&fake[i].addr, &sa, sizeof(struct sockaddr_in));
  }
  for (uint32_t i = 0; i < 32; i++) {
    ck_assert_int_eq(uvip__wk_vip_id(f.workers, &fake[i], &id), 0);
    ck_assert_uint_eq(id, i);
  }
  /* The 33rd key needs the map (64 slots, kept at most half full) to
   * grow: its two arrays are calloc'd. */
  for (int k = 0; k < 2; k++) {
    arm(&f_calloc, k, 0);
    int r = uvip__wk_vip_id(f.workers, &fake[32], &id);
    disarm_all();
    ck_assert_int_eq(r, UV_ENOMEM);
    ck_assert_uint_eq(f.workers->vipmap.len, 32);
    ck_assert_uint_eq(f.workers->vipmap.cap, 64);
  }
  for (uint32_t i = 32; i < 40; i++) {
    ck_assert_int_eq(uvip__wk_vip_id(f.workers, &fake[i], &id), 0);
    ck_assert_uint_eq(id, i);
  }
  ck_assert_uint_eq(f.workers->vipmap.cap, 128);
  for (uint32_t i = 0; i < 40; i++) {
    ck_assert_int_eq(uvip__wk_vip_id(f.workers, &fake[i], &id), 0);
    ck_assert_uint_eq(id, i);
  }
  /* fake[3] now stands for another address. */
  fake[3].addr.in.sin_port = htons(81);
  ck_assert_int_eq(uvip__wk_vip_id(f.workers, &fake[3], &id), 0);
  ck_assert_uint_eq(id, 40);
  ck_assert_ptr_eq(f.workers->vips[40], &fake[3]);
  ck_assert_int_eq(uvip__wk_vip_id(f.workers, &fake[3], &id), 0);
  ck_assert_uint_eq(id, 40);
  ck_assert_uint_eq(f.workers->vipmap.len, 40);
  /* The VIP arrays (32 entries now) cannot grow: the second of their two
   * reallocs fails; the map is not touched. */
  for (int i = 0; i < 40; i++)
    fake[i].addr.in.sin_port = htons(82);
  for (uint32_t i = 0; i < 23; i++)
    ck_assert_int_eq(uvip__wk_vip_id(f.workers, &fake[i], &id), 0);
  ck_assert_uint_eq(f.workers->nvips, 64);
  arm(&f_realloc, 1, 0);
  int r = uvip__wk_vip_id(f.workers, &fake[23], &id);
  disarm_all();
  ck_assert_int_eq(r, UV_ENOMEM);
  ck_assert_uint_eq(f.workers->nvips, 64);
  ck_assert_int_eq(uvip__wk_vip_id(f.workers, &fake[23], &id), 0);
  ck_assert_uint_eq(id, 64);
  fx_close(&f);
}
END_TEST

/* A worker is not trusted to count right: releases and failures for an id
 * it was never given, or more than it holds, change nothing beyond what it
 * holds. */
START_TEST(test_release_bounds) {
  fx_t f;
  int a;
  fx_new(&f, UVIP_WORKER_PROCESS, 1);
  fx_listen(&f);
  a = fx_connect(&f);
  run_until_stats(&f, 1, 1, 0);
  uvip__wk_t *wk = &f.workers->wk[0];
  uvip__wk_release(wk, 7, 1); /* no such id */
  uvip__wk_release(wk, (uint32_t)wk->vip_cap + 1, 1);
  ck_assert_uint_eq(sstats(&f).active, 1);
  ck_assert_uint_eq(wstats(&f, 0).active, 1);
  uvip__wk_failed(wk, 0, 5); /* holds one: one comes back */
  ck_assert_uint_eq(wstats(&f, 0).active, 0);
  ck_assert_uint_eq(wstats(&f, 0).handed, 0);
  ck_assert_uint_eq(wstats(&f, 0).failed, 1);
  ck_assert_uint_eq(sstats(&f).active, 0);
  /* Its real close, when the workers close, finds nothing to give back. */
  fx_close(&f);
  close(a);
}
END_TEST


/* ---- init and exit callbacks of thread workers ---- */

/* init_cb opens a handle on the worker's loop and exit_cb closes it: each
 * runs once per worker, on that worker's loop, with the application's arg.
 * Were exit_cb not called, the handle would keep the worker's loop (and
 * the close) from ending. */
static int ie_init[3], ie_exit[3];
static uv_timer_t ie_timer[3];
static int ie_arg;

static void ie_init_cb(uv_loop_t *loop, unsigned int index, void *arg) {
  if (index < 3 && arg == &ie_arg && loop->data != NULL) {
    __atomic_add_fetch(&ie_init[index], 1, __ATOMIC_SEQ_CST);
    uv_timer_init(loop, &ie_timer[index]);
  }
}

static void ie_exit_cb(uv_loop_t *loop, unsigned int index, void *arg) {
  if (index < 3 && arg == &ie_arg && ie_timer[index].loop == loop) {
    __atomic_add_fetch(&ie_exit[index], 1, __ATOMIC_SEQ_CST);
    uv_close((uv_handle_t *)&ie_timer[index], NULL);
  }
}

START_TEST(test_thread_init_exit_cb) {
  fx_t f;
  uvip_workers_options_t o;
  int a;
  fx_server(&f);
  uvip_workers_options_init(&o);
  o.nworkers = 3;
  o.init_cb = ie_init_cb;
  o.exit_cb = ie_exit_cb;
  o.arg = &ie_arg;
  ck_assert_int_eq(uvip_workers_new(f.server, &o, &f.workers), 0);
  fx_listen(&f);
  /* Ready is posted after init_cb. */
  for (int i = 0; i < 3; i++) {
    ck_assert_int_eq(__atomic_load_n(&ie_init[i], __ATOMIC_SEQ_CST), 1);
    ck_assert_int_eq(__atomic_load_n(&ie_exit[i], __ATOMIC_SEQ_CST), 0);
  }
  a = fx_connect(&f);
  run_until_stats(&f, 1, 1, 0);
  expect_echo(&f, a);
  fx_close(&f);
  for (int i = 0; i < 3; i++) {
    ck_assert_int_eq(ie_init[i], 1);
    ck_assert_int_eq(ie_exit[i], 1);
  }
  expect_closed(&f, a);
  close(a);
}
END_TEST

/* ---- a worker process whose pipe ends before the process ---- */

/* In the child of the first incarnation: once its pipe is open (the first
 * loop turn), it shuts down its writing side. The acceptor reads EOF while
 * the process still runs. */
static bool shut_pipe_in_child;
static uv_timer_t sp_timer;

static void sp_fire(uv_timer_t *t) {
  (void)t;
  /* After the acceptor's sockets were closed, the pipe is our only
   * socket. */
  for (int fd = 3; fd < 1024; fd++) {
    int type;
    socklen_t len = sizeof(type);
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0)
      shutdown(fd, SHUT_WR);
  }
  /* A wedged worker: it must still be there when the acceptor has seen
   * its pipe end (left to its loop, it read the acceptor's close of the
   * pipe and exited, sometimes before the test looked). Only the restart's
   * SIGKILL ends it. */
  for (;;)
    pause();
}

static void sp_init(uv_loop_t *loop, unsigned int index, void *arg) {
  (void)index;
  (void)arg;
  if (!shut_pipe_in_child)
    return;
  uv_timer_init(loop, &sp_timer);
  uv_timer_start(&sp_timer, sp_fire, 0, 0);
}

/* The worker is dead to the acceptor (its slots come back, it is not
 * alive, not yet reaped); restarting it then kills the old process, which
 * is reaped later, and the new one serves. */
START_TEST(test_process_pipe_ends_first) {
  fx_t f;
  uvip_workers_options_t o;
  int a, b;
  fx_server(&f);
  uvip_workers_options_init(&o);
  o.nworkers = 1;
  o.mode = UVIP_WORKER_PROCESS;
  o.init_cb = sp_init;
  o.ready_cb = on_ready;
  ck_assert_int_eq(uvip_workers_new(f.server, &o, &f.workers), 0);
  shut_pipe_in_child = true;
  ck_assert_int_eq(uvip_workers_listen(f.workers, on_conn, NULL, 0), 0);
  shut_pipe_in_child = false;
  for (int i = 0; i < MAX_TURNS && nready[0] == 0; i++)
    uv_run(&f.loop, UV_RUN_ONCE);
  ck_assert_int_eq(ready_status[0], 0);
  int64_t old = wstats(&f, 0).pid;
  for (int i = 0; i < MAX_TURNS && wstats(&f, 0).alive; i++)
    uv_run(&f.loop, UV_RUN_ONCE);
  ck_assert_int_eq(wstats(&f, 0).alive, 0);
  /* Still running: nothing reaped it. */
  ck_assert_int_eq(kill((pid_t)old, 0), 0);
  ck_assert_int_eq(wstats(&f, 0).exit_status, -1);
  /* Nobody to hand to: a connection waits in the queue. */
  a = fx_connect(&f);
  th_run_until_quiet(&f.loop, MAX_TURNS);
  ck_assert_uint_eq(sstats(&f).accepted, 0);
  ck_assert_int_eq(uvip_workers_restart(f.workers, 0), 0);
  ck_assert(wstats(&f, 0).pid != old);
  run_until_alive(&f);
  run_until_stats(&f, 1, 1, 0);
  expect_echo(&f, a);
  b = fx_connect(&f);
  run_until_stats(&f, 2, 2, 0);
  expect_echo(&f, b);
  /* The old process was killed and gets reaped: none is left after the
   * close (fx_close checks). */
  fx_close(&f);
  ck_assert_int_eq(kill((pid_t)old, 0), -1);
  close(a);
  close(b);
}
END_TEST

/* ---- the readiness deadline ---- */

/* In the child: init_cb waits for the test (a pipe that is never
 * written), so the worker never gets ready. */
static int hold_pipe[2];
static void hold_init(uv_loop_t *loop, unsigned int index, void *arg) {
  char c;
  (void)loop;
  (void)index;
  (void)arg;
  (void)!read(hold_pipe[0], &c, 1);
}

/* A worker process that does not get ready by its deadline is killed and
 * ready_cb hears UV_ETIMEDOUT. The deadline (10 s) is brought forward
 * through the internals rather than waited for. */
START_TEST(test_process_ready_timeout) {
  fx_t f;
  uvip_workers_options_t o;
  ck_assert_int_eq(pipe(hold_pipe), 0);
  fx_server(&f);
  uvip_workers_options_init(&o);
  o.nworkers = 1;
  o.mode = UVIP_WORKER_PROCESS;
  o.init_cb = hold_init;
  o.ready_cb = on_ready;
  ck_assert_int_eq(uvip_workers_new(f.server, &o, &f.workers), 0);
  ck_assert_int_eq(uvip_workers_listen(f.workers, on_conn, NULL, 0), 0);
  ck_assert_int_eq(wstats(&f, 0).starting, 1);
  uv_update_time(&f.loop);
  f.workers->wk[0].ready_deadline = uv_now(&f.loop);
  uv_timer_start(f.workers->timer, uvip__wk_proc_on_timer, 0, 0);
  for (int i = 0; i < MAX_TURNS && nready[0] == 0; i++)
    uv_run(&f.loop, UV_RUN_ONCE);
  ck_assert_int_eq(nready[0], 1);
  ck_assert_int_eq(ready_status[0], UV_ETIMEDOUT);
  ck_assert_int_eq(wstats(&f, 0).alive, 0);
  ck_assert_int_eq(wstats(&f, 0).starting, 0);
  fx_close(&f);
  close(hold_pipe[0]);
  close(hold_pipe[1]);
}
END_TEST

/* ---- the worker process's side ---- */

/* Each connection first gets the last octet of its VIP's address, as the
 * worker sees it (its mirror of the acceptor's VIP), then its echo. */
static void on_conn_octet(uvip_server_t *s, uvip_conn_t *c) {
  const struct sockaddr_in *a =
      (const struct sockaddr_in *)uvip_vip_addr(uvip_conn_vip(c));
  char o = (char)(ntohl(a->sin_addr.s_addr) & 0xff);
  uv_buf_t b = uv_buf_init(&o, 1);
  uv_try_write(uvip_conn_stream(c), &b, 1);
  on_conn(s, c);
}

static int connect_ip(fx_t *f, const char *ip) {
  struct sockaddr_storage sa;
  th_addr(ip, f->port, &sa);
  return th_connect((struct sockaddr *)&sa, NULL);
}

static char read_byte(fx_t *f, int fd) {
  char c = 0;
  struct pollfd p = {.fd = fd, .events = POLLIN};
  for (int i = 0; i < 200 && poll(&p, 1, 20) == 0; i++)
    uv_run(&f->loop, UV_RUN_NOWAIT);
  ck_assert_int_eq(read(fd, &c, 1), 1);
  return c;
}

/* 20 VIPs on one worker process: VIP ids past the first 16 make the
 * worker's tables (and the acceptor's per-worker counts) grow; every
 * connection still arrives under its own VIP. */
#define NV 20
START_TEST(test_process_many_vips) {
  fx_t f;
  uvip_workers_options_t o;
  int fds[NV];
  char err[256] = "";
  fx_server_spec(&f, "127.0.0.1-127.0.0.20");
  uvip_workers_options_init(&o);
  o.nworkers = 1;
  o.mode = UVIP_WORKER_PROCESS;
  ck_assert_int_eq(uvip_workers_new(f.server, &o, &f.workers), 0);
  ck_assert_int_eq(uvip_workers_listen(f.workers, on_conn_octet, err, sizeof(err)), 0);
  run_until_alive(&f);
  for (int i = 0; i < NV; i++) {
    char ip[32];
    snprintf(ip, sizeof(ip), "127.0.0.%d", NV - i);
    fds[i] = connect_ip(&f, ip);
    ck_assert_int_eq(read_byte(&f, fds[i]), NV - i);
  }
  run_until_stats(&f, NV, NV, 0);
  ck_assert_uint_eq(wstats(&f, 0).active, NV);
  ck_assert_uint_eq(f.workers->wk[0].vip_cap, 32);
  expect_echo(&f, fds[NV - 1]);
  for (int i = 0; i < NV; i++)
    close(fds[i]);
  run_until_stats(&f, NV, 0, 0);
  for (size_t i = 0; i < uvip_server_vip_count(f.server); i++) {
    uvip_vip_stats_t st;
    ck_assert_int_eq(uvip_vip_stats(uvip_server_vip(f.server, i), &st), 0);
    ck_assert_uint_eq(st.accepted, 1);
    ck_assert_uint_eq(st.active, 0);
  }
  fx_close(&f);
}
END_TEST

/* A worker process raises its soft descriptor limit to the hard one
 * (it is told the result through a socket it keeps). */
static int nf_pair[2];
static void nf_init(uv_loop_t *loop, unsigned int index, void *arg) {
  struct rlimit rl;
  char c = '?';
  (void)loop;
  (void)index;
  (void)arg;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
    c = rl.rlim_cur == rl.rlim_max ? 'R' : 'L';
  (void)!write(nf_pair[1], &c, 1);
}

START_TEST(test_process_raises_nofile) {
  fx_t f;
  uvip_workers_options_t o;
  struct rlimit rl, low;
  char c = 0;
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, nf_pair), 0);
  ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
  ck_assert_msg(rl.rlim_max > 256, "hard limit %llu", (unsigned long long)rl.rlim_max);
  low = rl;
  low.rlim_cur = 256;
  ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &low), 0);
  fx_server(&f);
  uvip_workers_options_init(&o);
  o.nworkers = 1;
  o.mode = UVIP_WORKER_PROCESS;
  o.init_cb = nf_init;
  o.keep_fds = &nf_pair[1];
  o.nkeep_fds = 1;
  ck_assert_int_eq(uvip_workers_new(f.server, &o, &f.workers), 0);
  fx_listen(&f);
  ck_assert_int_eq(recv(nf_pair[0], &c, 1, MSG_DONTWAIT), 1);
  ck_assert_int_eq(c, 'R');
  /* Not the acceptor's own. */
  ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &low), 0);
  ck_assert_uint_eq(low.rlim_cur, 256);
  fx_close(&f);
  ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
  close(nf_pair[0]);
  close(nf_pair[1]);
}
END_TEST

static int want_status = -1;
static void on_closed_status(uvip_workers_t *w) {
  uvip_worker_stats_t st;
  ck_assert_int_eq(uvip_workers_stats(w, 0, &st), 0);
  ck_assert_msg(WIFEXITED(st.exit_status) && WEXITSTATUS(st.exit_status) == want_status,
                "status 0x%x", (unsigned)st.exit_status);
  on_workers_closed(w);
}

/* The worker process cannot read its pipe (its uv_read_start() fails: the
 * wrapper's state is copied by the fork after the acceptor's own call
 * passed): it exits with status 3 after reporting ready; the acceptor
 * sees it die. */
START_TEST(test_process_child_cannot_read) {
  fx_t f;
  fx_new(&f, UVIP_WORKER_PROCESS, 1);
  arm(&f_read, 1, 0);
  int r = uvip_workers_listen(f.workers, on_conn, NULL, 0);
  disarm_all();
  ck_assert_int_eq(r, 0);
  for (int i = 0; i < MAX_TURNS && (nready[0] == 0 || wstats(&f, 0).alive ||
                                    wstats(&f, 0).exit_status == -1);
       i++)
    uv_run(&f.loop, UV_RUN_ONCE);
  ck_assert_int_eq(nready[0], 1);
  ck_assert_int_eq(ready_status[0], 0);
  ck_assert_int_eq(wstats(&f, 0).alive, 0);
  want_status = 3;
  ck_assert_int_eq(uvip_workers_close(f.workers, on_closed_status), 0);
  th_run_until(&f.loop, &f.closed, MAX_TURNS);
  ck_assert_int_eq(uvip_server_close(f.server, on_server_closed), 0);
  for (int i = 0; i < 100 && uv_loop_alive(&f.loop); i++)
    uv_run(&f.loop, UV_RUN_ONCE);
  ck_assert_int_eq(uv_loop_close(&f.loop), 0);
}
END_TEST

/* A VIP drained (its connection still open) and its address added again
 * as a new VIP: the worker process keeps the two apart (the new VIP has a
 * new id and a mirror of its own), each close is given back to its own
 * VIP, and the old one's drain ends when its connection closes. */
static int ndrained;
static void on_drained(uvip_vip_t *v, int by_timeout) {
  (void)v;
  ck_assert_int_eq(by_timeout, 0);
  ndrained++;
}

START_TEST(test_process_vip_readded) {
  fx_t f;
  int a, b;
  uvip_vip_t *old, *nv;
  struct sockaddr_storage sa;
  fx_new(&f, UVIP_WORKER_PROCESS, 1);
  fx_listen(&f);
  old = uvip_server_vip(f.server, 0);
  a = fx_connect(&f);
  run_until_stats(&f, 1, 1, 0);
  expect_echo(&f, a);
  ndrained = 0;
  ck_assert_int_eq(uvip_server_remove_vip(f.server, old, 0, on_drained), 0);
  th_addr("127.0.0.1", f.port, &sa);
  ck_assert_int_eq(uvip_server_add_vip(f.server, (struct sockaddr *)&sa, &nv), 0);
  ck_assert_ptr_ne(nv, old);
  b = fx_connect(&f);
  for (int i = 0; i < MAX_TURNS && wstats(&f, 0).active != 2; i++)
    uv_run(&f.loop, UV_RUN_ONCE);
  ck_assert_uint_eq(wstats(&f, 0).active, 2);
  expect_echo(&f, b);
  expect_echo(&f, a);
  ck_assert_uint_eq(f.workers->nvips, 2);
  close(a);
  for (int i = 0; i < MAX_TURNS && ndrained == 0; i++)
    uv_run(&f.loop, UV_RUN_ONCE);
  ck_assert_int_eq(ndrained, 1);
  uvip_vip_stats_t st;
  ck_assert_int_eq(uvip_vip_stats(nv, &st), 0);
  ck_assert_uint_eq(st.active, 1);
  ck_assert_uint_eq(wstats(&f, 0).active, 1);
  expect_echo(&f, b);
  close(b);
  for (int i = 0; i < MAX_TURNS && wstats(&f, 0).active != 0; i++)
    uv_run(&f.loop, UV_RUN_ONCE);
  ck_assert_int_eq(uvip_vip_stats(nv, &st), 0);
  ck_assert_uint_eq(st.active, 0);
  ck_assert_uint_eq(st.closed, 1);
  fx_close(&f);
}
END_TEST

/* ---- the accept path without workers, and with a failing handle ---- */

/* A connection that cannot be given its memory or its handle: it is
 * closed, counted (err_enomem) and accepting backs off (backoff_ms, on
 * the loop's timer) then resumes: the next connection is served. */
START_TEST(test_server_conn_new_fails) {
  fx_t f;
  uvip_server_options_t so;
  uvip_addrs_t *a;
  int c1, c2, c3;
  memset(&f, 0, sizeof(f));
  cur = &f;
  f.port = th_free_port();
  a = th_addrs("127.0.0.1", f.port);
  ck_assert_int_eq(uv_loop_init(&f.loop), 0);
  uvip_server_options_init(&so);
  so.backoff_ms = 5;
  ck_assert_int_eq(uvip_server_new(&f.loop, a, &so, &f.server), 0);
  uvip_addrs_free(a);
  ck_assert_int_eq(uvip_server_listen(f.server, on_conn, NULL, 0), 0);
  c1 = fx_connect(&f);
  arm(&f_malloc, 0, 0);
  run_until_fired(&f, &f_malloc);
  ck_assert_uint_eq(sstats(&f).err_enomem, 1);
  ck_assert_uint_eq(sstats(&f).backoffs, 1);
  ck_assert_uint_eq(sstats(&f).accepted, 0);
  expect_closed(&f, c1);
  c2 = fx_connect(&f);
  arm(&f_tcp_open, 0, 0);
  run_until_fired(&f, &f_tcp_open);
  ck_assert_uint_eq(sstats(&f).err_enomem, 2);
  ck_assert_uint_eq(sstats(&f).backoffs, 2);
  expect_closed(&f, c2);
  c3 = fx_connect(&f);
  run_until_stats(&f, 1, 1, 0);
  expect_echo(&f, c3);
  close(c3);
  run_until_stats(&f, 1, 0, 0);
  ck_assert_int_eq(uvip_server_close(f.server, on_server_closed), 0);
  for (int i = 0; i < 100 && uv_loop_alive(&f.loop); i++)
    uv_run(&f.loop, UV_RUN_ONCE);
  ck_assert_int_eq(uv_loop_close(&f.loop), 0);
  close(c1);
  close(c2);
}
END_TEST

/* A worker cannot wrap the descriptor in a handle (a process: for the
 * hand-off, on the acceptor; a thread: for the connection, on the worker):
 * counted as a failed hand-off, the slot comes back, the client sees the
 * connection go, the next one is served. */
static void handle_fails(int mode) {
  fx_t f;
  int a, b;
  fx_new(&f, mode, 1);
  fx_listen(&f);
  a = fx_connect(&f);
  arm(&f_tcp_open, 0, 0);
  run_until_fired(&f, &f_tcp_open);
  expect_closed(&f, a);
  for (int i = 0; i < MAX_TURNS && (wstats(&f, 0).failed != 1 || sstats(&f).active != 0); i++)
    uv_run(&f.loop, UV_RUN_ONCE);
  ck_assert_uint_eq(wstats(&f, 0).failed, 1);
  ck_assert_uint_eq(wstats(&f, 0).handed, 0);
  ck_assert_uint_eq(wstats(&f, 0).active, 0);
  ck_assert_uint_eq(sstats(&f).active, 0);
  b = fx_connect(&f);
  for (int i = 0; i < MAX_TURNS && wstats(&f, 0).active != 1; i++)
    uv_run(&f.loop, UV_RUN_ONCE);
  expect_echo(&f, b);
  ck_assert_uint_eq(wstats(&f, 0).handed, 1);
  fx_close(&f);
  close(a);
  close(b);
}

START_TEST(test_process_handoff_handle_fails) {
  handle_fails(UVIP_WORKER_PROCESS);
}
END_TEST

START_TEST(test_thread_conn_handle_fails) {
  handle_fails(UVIP_WORKER_THREAD);
}
END_TEST

/* A VIP at its own cap that sees a new connection arrive: the connection
 * waits (counted as deferred), and is accepted as soon as the VIP's
 * connection closes. */
START_TEST(test_vip_cap_new_edge) {
  fx_t f;
  uvip_server_options_t so;
  uvip_addrs_t *a;
  int c1, c2;
  memset(&f, 0, sizeof(f));
  cur = &f;
  f.port = th_free_port();
  a = th_addrs("127.0.0.1", f.port);
  ck_assert_int_eq(uv_loop_init(&f.loop), 0);
  uvip_server_options_init(&so);
  so.max_conns_per_vip = 1;
  so.accept_budget = 1;
  ck_assert_int_eq(uvip_server_new(&f.loop, a, &so, &f.server), 0);
  uvip_addrs_free(a);
  ck_assert_int_eq(uvip_server_listen(f.server, on_conn, NULL, 0), 0);
  c1 = fx_connect(&f);
  for (int i = 0; i < MAX_TURNS && sstats(&f).accepted != 1; i++)
    uv_run(&f.loop, UV_RUN_ONCE);
  c2 = fx_connect(&f);
  th_run_until_quiet(&f.loop, MAX_TURNS);
  ck_assert_uint_eq(sstats(&f).accepted, 1);
  ck_assert_uint_ge(sstats(&f).deferred, 1);
  expect_echo(&f, c1);
  close(c1);
  run_until_stats(&f, 2, 1, 0);
  expect_echo(&f, c2);
  close(c2);
  run_until_stats(&f, 2, 0, 0);
  ck_assert_int_eq(uvip_server_close(f.server, on_server_closed), 0);
  for (int i = 0; i < 100 && uv_loop_alive(&f.loop); i++)
    uv_run(&f.loop, UV_RUN_ONCE);
  ck_assert_int_eq(uv_loop_close(&f.loop), 0);
}
END_TEST

/* Calls in the wrong state: an unknown balance mode, a closing server,
 * a server that listens by itself, listen and restart once closing. */
START_TEST(test_state_errors) {
  fx_t f;
  uvip_workers_options_t o;
  fx_server(&f);
  uvip_workers_options_init(&o);
  o.balance = UVIP_BALANCE_REUSEPORT + 1;
  ck_assert_int_eq(uvip_workers_new(f.server, &o, &f.workers), UV_EINVAL);
  /* Workers, then the server made to listen without them. */
  ck_assert_int_eq(uvip_workers_new(f.server, NULL, &f.workers), 0);
  ck_assert_int_eq(uvip_server_listen(f.server, on_conn, NULL, 0), 0);
  ck_assert_int_eq(uvip_workers_listen(f.workers, on_conn, NULL, 0), UV_EALREADY);
  fx_close(&f);

  /* A closing server takes no workers. */
  fx_server(&f);
  ck_assert_int_eq(uvip_server_close(f.server, on_server_closed), 0);
  ck_assert_int_eq(uvip_workers_new(f.server, NULL, &f.workers), UV_EINVAL);
  ck_assert_ptr_null(f.workers);
  for (int i = 0; i < 100 && uv_loop_alive(&f.loop); i++)
    uv_run(&f.loop, UV_RUN_ONCE);
  ck_assert_int_eq(uv_loop_close(&f.loop), 0);

  /* Closing workers: no listen, no restart (errbuf of length 0 is not
   * written). */
  char err[4] = "x";
  fx_new(&f, UVIP_WORKER_PROCESS, 1);
  fx_listen(&f);
  ck_assert_int_eq(uvip_workers_close(f.workers, on_workers_closed), 0);
  ck_assert_int_eq(uvip_workers_listen(f.workers, on_conn, err, 0), UV_EALREADY);
  ck_assert_int_eq(err[0], 'x');
  ck_assert_int_eq(uvip_workers_restart(f.workers, 0), UV_EINVAL);
  th_run_until(&f.loop, &f.closed, MAX_TURNS);
  ck_assert_int_eq(uvip_server_close(f.server, on_server_closed), 0);
  for (int i = 0; i < 100 && uv_loop_alive(&f.loop); i++)
    uv_run(&f.loop, UV_RUN_ONCE);
  ck_assert_int_eq(uv_loop_close(&f.loop), 0);
}
END_TEST

/* ---- the server's API edges ---- */

/* Arguments and states the server refuses, getters on NULL, and
 * allocation failures when a VIP is added: each is refused with its error
 * and leaves the server as it was. */
START_TEST(test_server_args) {
  fx_t f;
  uvip_server_options_t so;
  uvip_addrs_t *a = th_addrs("127.0.0.1", th_free_port());
  uvip_server_t *s2 = NULL;
  uvip_vip_t *v, *v2;
  struct sockaddr_storage sa;
  struct sockaddr un = {.sa_family = AF_UNIX};
  uvip_vip_stats_t st;
  int busy;
  fx_server_spec(&f, "127.0.0.1-127.0.0.16"); /* the VIP array is full */
  uvip_server_options_init(&so);
  so.accept_budget = 1025;
  ck_assert_int_eq(uvip_server_new(&f.loop, a, &so, &s2), UV_EINVAL);
  uvip_server_options_init(&so);
  so.defer_accept_secs = -1;
  ck_assert_int_eq(uvip_server_new(&f.loop, a, &so, &s2), UV_EINVAL);
  uvip_server_options_init(&so);
  so.fastopen_qlen = -1;
  ck_assert_int_eq(uvip_server_new(&f.loop, a, &so, &s2), UV_EINVAL);
  arm(&f_calloc, 0, 0);
  int r = uvip_server_new(&f.loop, a, NULL, &s2);
  disarm_all();
  ck_assert_int_eq(r, UV_ENOMEM);
  ck_assert_ptr_null(s2);
  uvip_addrs_free(a);

  ck_assert_ptr_null(uvip_server_get_data(NULL));
  uvip_server_set_data(NULL, &f);
  ck_assert_uint_eq(uvip_server_vip_count(NULL), 0);
  ck_assert_ptr_null(uvip_server_vip(NULL, 0));
  ck_assert_ptr_null(uvip_server_vip(f.server, 16));
  ck_assert_ptr_null(uvip_vip_addr(NULL));
  ck_assert_int_eq(uvip_vip_state(NULL), UVIP_VIP_IDLE);
  ck_assert_ptr_null(uvip_vip_server(NULL));
  ck_assert_ptr_null(uvip_vip_get_data(NULL));
  uvip_vip_set_data(NULL, &f);
  ck_assert_int_eq(uvip_server_is_listening(NULL), 0);
  ck_assert_int_eq(uvip_server_stats(f.server, NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_vip_stats(NULL, &st), UV_EINVAL);
  ck_assert_int_eq(uvip_vip_pause(NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_vip_resume(NULL), UV_EINVAL);
  v = uvip_server_vip(f.server, 0);
  /* Not listening yet: neither paused nor resumed. */
  ck_assert_int_eq(uvip_vip_pause(v), UV_EINVAL);
  ck_assert_int_eq(uvip_vip_resume(v), UV_EINVAL);

  /* add_vip: refused addresses, then no memory for the array or the VIP. */
  ck_assert_int_eq(uvip_server_add_vip(NULL, &un, NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_server_add_vip(f.server, NULL, NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_server_add_vip(f.server, &un, NULL), UV_EAFNOSUPPORT);
  th_addr("127.0.0.17", 0, &sa);
  ck_assert_int_eq(uvip_server_add_vip(f.server, (struct sockaddr *)&sa, NULL), UV_EINVAL);
  th_addr("127.0.0.17", f.port, &sa);
  arm(&f_realloc, 0, 0);
  r = uvip_server_add_vip(f.server, (struct sockaddr *)&sa, &v2);
  disarm_all();
  ck_assert_int_eq(r, UV_ENOMEM);
  arm(&f_calloc, 0, 0);
  r = uvip_server_add_vip(f.server, (struct sockaddr *)&sa, &v2);
  disarm_all();
  ck_assert_int_eq(r, UV_ENOMEM);
  ck_assert_uint_eq(uvip_server_vip_count(f.server), 16);
  /* Without out. */
  ck_assert_int_eq(uvip_server_add_vip(f.server, (struct sockaddr *)&sa, NULL), 0);
  ck_assert_uint_eq(uvip_server_vip_count(f.server), 17);
  v2 = uvip_server_vip(f.server, 16);
  ck_assert_int_eq(uvip_server_add_vip(f.server, (struct sockaddr *)&sa, NULL), UV_EEXIST);

  /* A bind failure without an error buffer: the error all the same. */
  busy = socket(AF_INET, SOCK_STREAM, 0);
  ck_assert_int_eq(bind(busy, (struct sockaddr *)&sa, sizeof(struct sockaddr_in)), 0);
  ck_assert_int_eq(listen(busy, 1), 0);
  ck_assert_int_eq(uvip_server_listen(f.server, on_conn, NULL, 0), 0);
  ck_assert_int_eq(uvip_vip_state(v2), UVIP_VIP_FAILED);
  ck_assert_int_eq(uvip_vip_resume(v2), UV_EADDRINUSE);
  close(busy);
  ck_assert_int_eq(uvip_vip_resume(v2), 0);
  ck_assert_int_eq(uvip_vip_state(v2), UVIP_VIP_LISTENING);
  ck_assert_int_eq(uvip_server_listen(f.server, on_conn, NULL, 0), UV_EALREADY);
  /* Removing a VIP of another server, or none. */
  ck_assert_int_eq(uvip_server_remove_vip(f.server, NULL, 0, NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_server_remove_vip(NULL, v2, 0, NULL), UV_EINVAL);

  ck_assert_int_eq(uvip_server_close(f.server, on_server_closed), 0);
  ck_assert_int_eq(uvip_server_add_vip(f.server, (struct sockaddr *)&sa, NULL),
                   UV_ECANCELED);
  ck_assert_int_eq(uvip_server_listen(f.server, on_conn, NULL, 0), UV_EALREADY);
  ck_assert_int_eq(uvip_server_is_listening(f.server), 0);
  for (int i = 0; i < 100 && uv_loop_alive(&f.loop); i++)
    uv_run(&f.loop, UV_RUN_ONCE);
  ck_assert_int_eq(uv_loop_close(&f.loop), 0);
}
END_TEST

int main(void) {
  Suite *s = suite_create("cov-workers");
  TCase *tc = tcase_create("cov-workers");
  tcase_add_test(tc, test_new_args);
  tcase_add_test(tc, test_new_enomem);
  tcase_add_test(tc, test_listen_handles_enomem);
  tcase_add_test(tc, test_listen_handle_init_fails);
  tcase_add_test(tc, test_listen_first_process_fails);
  tcase_add_test(tc, test_listen_thread_fails);
  tcase_add_test(tc, test_process_later_fork_fails);
  tcase_add_test(tc, test_thread_restart_not_supported);
  tcase_add_test(tc, test_thread_vip_active_enomem);
  tcase_add_test(tc, test_process_vip_active_enomem);
  tcase_add_test(tc, test_process_handoff_enomem);
  tcase_add_test(tc, test_thread_queue_enomem);
  tcase_add_test(tc, test_process_close_conns_enomem);
  tcase_add_test(tc, test_process_stop_order_enomem);
  tcase_add_test(tc, test_vip_ids);
  tcase_add_test(tc, test_release_bounds);
  tcase_add_test(tc, test_thread_init_exit_cb);
  tcase_add_test(tc, test_process_pipe_ends_first);
  tcase_add_test(tc, test_process_ready_timeout);
  tcase_add_test(tc, test_process_many_vips);
  tcase_add_test(tc, test_process_raises_nofile);
  tcase_add_test(tc, test_process_child_cannot_read);
  tcase_add_test(tc, test_process_vip_readded);
  tcase_add_test(tc, test_server_conn_new_fails);
  tcase_add_test(tc, test_process_handoff_handle_fails);
  tcase_add_test(tc, test_thread_conn_handle_fails);
  tcase_add_test(tc, test_vip_cap_new_edge);
  tcase_add_test(tc, test_state_errors);
  tcase_add_test(tc, test_server_args);
  suite_add_tcase(s, tc);
  return th_run_suite(s);
}
