/* Workers under injected faults (linked with -Wl,--wrap for realloc,
 * uv_pipe_open and uv_write2; the wrappers pass through unless armed):
 * a VIP id that could not be made, a pipe that cannot be opened, the
 * descriptor hand-off failing (at once, or when the write completes), and
 * a worker process at its descriptor limit. Nothing is lost silently: every
 * connection is counted, its slot given back and its descriptor closed.
 * SPDX-License-Identifier: MIT */
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"
#include "workers-internal.h" /* restart-internal.h too */

#define MAX_TURNS 2000

/* ---- the wrappers ---- */

void *__real_realloc(void *p, size_t n);
int __real_uv_pipe_open(uv_pipe_t *h, uv_file fd);
int __real_uv_write2(uv_write_t *req, uv_stream_t *h, const uv_buf_t bufs[],
                     unsigned int nbufs, uv_stream_t *send, uv_write_cb cb);

static int fail_realloc;   /* the next realloc() calls to fail */
static int fail_pipe_open; /* the next uv_pipe_open() calls to fail */
enum { W2_PASS, W2_FAIL_NOW, W2_FAIL_LATER };
static int fail_write2;    /* what the next hand-off does */

void *__wrap_realloc(void *p, size_t n);
void *__wrap_realloc(void *p, size_t n) {
  if (fail_realloc > 0) {
    fail_realloc--;
    return NULL;
  }
  return __real_realloc(p, n);
}

int __wrap_uv_pipe_open(uv_pipe_t *h, uv_file fd);
int __wrap_uv_pipe_open(uv_pipe_t *h, uv_file fd) {
  if (fail_pipe_open > 0) {
    fail_pipe_open--;
    return UV_ENOTSUP;
  }
  return __real_uv_pipe_open(h, fd);
}

/* The later failure is what libuv does when sendmsg() fails: the request
 * completes with the error on a later loop turn. */
static uv_timer_t later_timer;
static uv_write_t *later_req;
static uv_write_cb later_cb;

static void on_later(uv_timer_t *t) {
  later_cb(later_req, UV_EPIPE);
  uv_close((uv_handle_t *)t, NULL);
}

int __wrap_uv_write2(uv_write_t *req, uv_stream_t *h, const uv_buf_t bufs[],
                     unsigned int nbufs, uv_stream_t *send, uv_write_cb cb);
int __wrap_uv_write2(uv_write_t *req, uv_stream_t *h, const uv_buf_t bufs[],
                     unsigned int nbufs, uv_stream_t *send, uv_write_cb cb) {
  int mode = fail_write2;
  fail_write2 = W2_PASS;
  if (mode == W2_FAIL_NOW)
    return UV_ENOBUFS;
  if (mode == W2_FAIL_LATER) {
    later_req = req;
    later_cb = cb;
    uv_timer_init(h->loop, &later_timer);
    uv_timer_start(&later_timer, on_later, 0, 0);
    return 0;
  }
  return __real_uv_write2(req, h, bufs, nbufs, send, cb);
}

/* ---- a small fixture ---- */

static char rbuf[64];
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

typedef struct {
  uv_loop_t loop;
  uvip_server_t *server;
  uvip_workers_t *workers;
  int port;
  bool closed;
} fx_t;

static void on_server_closed(uvip_server_t *s) {
  (void)s;
}

static fx_t *closing;
static void on_workers_closed(uvip_workers_t *w) {
  uvip_worker_stats_t st;
  /* The worker process, if one ran, exited cleanly. */
  ck_assert_int_eq(uvip_workers_stats(w, 0, &st), 0);
  if (st.pid != 0)
    ck_assert_msg(WIFEXITED(st.exit_status) && WEXITSTATUS(st.exit_status) == 0,
                  "worker ended with status 0x%x", (unsigned)st.exit_status);
  ck_assert_int_eq(uvip_server_close(closing->server, on_server_closed), 0);
  closing->closed = true;
}

static void fx_new(fx_t *f, uvip_worker_cb init_cb) {
  uvip_workers_options_t o;
  uvip_addrs_t *a;
  memset(f, 0, sizeof(*f));
  f->port = th_free_port();
  a = th_addrs("127.0.0.1", f->port);
  ck_assert_int_eq(uv_loop_init(&f->loop), 0);
  ck_assert_int_eq(uvip_server_new(&f->loop, a, NULL, &f->server), 0);
  uvip_addrs_free(a);
  uvip_workers_options_init(&o);
  o.nworkers = 1;
  o.mode = UVIP_WORKER_PROCESS;
  o.init_cb = init_cb;
  ck_assert_int_eq(uvip_workers_new(f->server, &o, &f->workers), 0);
}

static uvip_worker_stats_t wstats(fx_t *f) {
  uvip_worker_stats_t st;
  ck_assert_int_eq(uvip_workers_stats(f->workers, 0, &st), 0);
  return st;
}

static uvip_vip_stats_t sstats(fx_t *f) {
  uvip_vip_stats_t st;
  ck_assert_int_eq(uvip_server_stats(f->server, &st), 0);
  return st;
}

static void fx_listen(fx_t *f) {
  char err[256] = "";
  int r = uvip_workers_listen(f->workers, on_conn, err, sizeof(err));
  ck_assert_msg(r == 0, "listen: %s (%s)", uv_strerror(r), err);
  for (int i = 0; i < MAX_TURNS && !wstats(f).alive; i++)
    uv_run(&f->loop, UV_RUN_ONCE);
  ck_assert_int_eq(wstats(f).alive, 1);
}

static void fx_close(fx_t *f) {
  closing = f;
  ck_assert_int_eq(uvip_workers_close(f->workers, on_workers_closed), 0);
  th_run_until(&f->loop, &f->closed, MAX_TURNS);
  for (int i = 0; i < 100 && uv_loop_alive(&f->loop); i++)
    uv_run(&f->loop, UV_RUN_ONCE);
  ck_assert_int_eq(uv_loop_close(&f->loop), 0);
}

static int fx_connect(fx_t *f) {
  struct sockaddr_storage sa;
  th_addr("127.0.0.1", f->port, &sa);
  return th_connect((struct sockaddr *)&sa, NULL);
}

/* Turns the loop until the server has accepted n and holds `active`. */
static void run_until(fx_t *f, uint64_t accepted, uint64_t active) {
  for (int i = 0; i < MAX_TURNS && (sstats(f).accepted != accepted ||
                                    sstats(f).active != active);
       i++)
    uv_run(&f->loop, UV_RUN_ONCE);
  ck_assert_uint_eq(sstats(f).accepted, accepted);
  ck_assert_uint_eq(sstats(f).active, active);
}

/* The server's end of fd went away: EOF or a reset (bounded wait). */
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

static int count_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  int n = 0;
  ck_assert_ptr_nonnull(d);
  while (readdir(d))
    n++;
  closedir(d);
  return n;
}

/* ---- the tests ---- */

/* A VIP id that could not be made (out of memory) leaves no trace: the
 * id map must not keep the VIP pointing at an id that does not exist (the
 * next lookup read past the VIP arrays). 16 ids fill the arrays, so the
 * 17th needs them to grow, and that fails. */
START_TEST(test_vip_id_enomem) {
  fx_t f;
  static uvip_vip_t fake[17]; /* only their addresses are read */
  uint32_t id = 99;
  fx_new(&f, NULL);
  for (int i = 0; i < 17; i++) {
    struct sockaddr_storage sa;
    char ip[32];
    snprintf(ip, sizeof(ip), "127.0.1.%d", i + 1);
    th_addr(ip, 80, &sa);
    memcpy(&fake[i].addr, &sa, sizeof(struct sockaddr_in));
  }
  for (uint32_t i = 0; i < 16; i++) {
    ck_assert_int_eq(uvip__wk_vip_id(f.workers, &fake[i], &id), 0);
    ck_assert_uint_eq(id, i);
  }
  fail_realloc = 1;
  ck_assert_int_eq(uvip__wk_vip_id(f.workers, &fake[16], &id), UV_ENOMEM);
  fail_realloc = 0;
  ck_assert_uint_eq(f.workers->nvips, 16);
  ck_assert_uint_eq(f.workers->vipmap.len, 16);
  ck_assert_int_eq(uvip__wk_vip_id(f.workers, &fake[16], &id), 0);
  ck_assert_uint_eq(id, 16);
  ck_assert_ptr_eq(f.workers->vips[16], &fake[16]);
  for (uint32_t i = 0; i < 17; i++) {
    ck_assert_int_eq(uvip__wk_vip_id(f.workers, &fake[i], &id), 0);
    ck_assert_uint_eq(id, i);
  }
  ck_assert_uint_eq(f.workers->nvips, 17);
  fx_close(&f);
}
END_TEST

static void on_sig(uv_signal_t *h, int signum) {
  (void)h;
  (void)signum;
}

/* A worker's pipe that cannot be opened: listen fails and no descriptor
 * is left behind (the socketpair's end was leaked). */
START_TEST(test_pipe_open_fails) {
  fx_t f;
  uv_loop_t l;
  uv_signal_t sig;
  int before;
  /* libuv opens a process-wide pipe for signals the first time one is
   * watched, and keeps it: open it before counting. */
  ck_assert_int_eq(uv_loop_init(&l), 0);
  uv_signal_init(&l, &sig);
  uv_signal_start(&sig, on_sig, SIGCHLD);
  uv_close((uv_handle_t *)&sig, NULL);
  uv_run(&l, UV_RUN_DEFAULT);
  ck_assert_int_eq(uv_loop_close(&l), 0);
  before = count_fds();
  fx_new(&f, NULL);
  fail_pipe_open = 1;
  ck_assert_int_eq(uvip_workers_listen(f.workers, on_conn, NULL, 0),
                   UV_ENOTSUP);
  fail_pipe_open = 0;
  fx_close(&f);
  ck_assert_int_eq(count_fds(), before);
}
END_TEST

/* The descriptor hand-off fails, at once or when the write completes: the
 * connection is counted as failed, its slot comes back, its descriptor is
 * closed (the client sees it go), and the worker goes on serving. */
START_TEST(test_handoff_fails) {
  fx_t f;
  int a, b, c;
  fx_new(&f, NULL);
  fx_listen(&f);
  fail_write2 = W2_FAIL_NOW;
  a = fx_connect(&f);
  run_until(&f, 1, 0);
  ck_assert_uint_eq(wstats(&f).failed, 1);
  expect_closed(&f, a);
  fail_write2 = W2_FAIL_LATER;
  b = fx_connect(&f);
  run_until(&f, 2, 0);
  ck_assert_uint_eq(wstats(&f).failed, 2);
  expect_closed(&f, b);
  c = fx_connect(&f);
  run_until(&f, 3, 1);
  expect_echo(&f, c);
  ck_assert_uint_eq(wstats(&f).active, 1);
  ck_assert_uint_eq(wstats(&f).handed, 1);
  ck_assert_int_eq(wstats(&f).alive, 1);
  close(c);
  run_until(&f, 3, 0);
  fx_close(&f);
  close(a);
  close(b);
}
END_TEST

/* In the child: no descriptor can be created any more (every number below
 * the soft limit is taken), so the kernel drops a descriptor sent to it
 * (recvmsg() reports MSG_CTRUNC). */
static void at_fd_limit(uv_loop_t *loop, unsigned int index, void *arg) {
  struct rlimit rl;
  int lowest = dup(0);
  (void)loop;
  (void)index;
  (void)arg;
  if (lowest < 0)
    return;
  close(lowest);
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    rl.rlim_cur = (rlim_t)lowest;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

/* A worker process at its descriptor limit: the hand-off reaches it
 * without the descriptor; it reports the failure, the slot comes back and
 * the client sees the connection go; the worker stays. */
START_TEST(test_worker_at_fd_limit) {
  fx_t f;
  int a, b;
  fx_new(&f, at_fd_limit);
  fx_listen(&f);
  a = fx_connect(&f);
  run_until(&f, 1, 0);
  ck_assert_uint_eq(wstats(&f).failed, 1);
  ck_assert_uint_eq(wstats(&f).handed, 0);
  ck_assert_uint_eq(wstats(&f).active, 0);
  expect_closed(&f, a);
  b = fx_connect(&f);
  run_until(&f, 2, 0);
  ck_assert_uint_eq(wstats(&f).failed, 2);
  expect_closed(&f, b);
  ck_assert_int_eq(wstats(&f).alive, 1);
  fx_close(&f);
  close(a);
  close(b);
}
END_TEST

/* The upgrade's hand-over order to a worker process that cannot be sent:
 * its pipe handle cannot be made, the write fails at once, or it fails
 * when it completes. The worker is not asked, or its part counts as
 * reported (moved 0), so the hand-over still ends; its connection stays
 * and echoes. Then one that goes through moves the connection: the
 * channel's message carries it, and the worker gives its slot back. */
static int move_all(uvip_conn_t *c, void *blob, size_t *len) {
  (void)c;
  (void)blob;
  *len = 0;
  return UVIP_HANDOVER_MOVE;
}

static void run_until_reported(fx_t *f, uvip_upgrade_t *u) {
  for (int i = 0; i < MAX_TURNS && u->ho_workers; i++)
    uv_run(&f->loop, UV_RUN_ONCE);
  ck_assert(!u->ho_workers);
}

START_TEST(test_handover_order_fails) {
  fx_t f;
  int a, chan[2], fd = -1;
  uvip_upgrade_t *u = calloc(1, sizeof(*u)); /* only the hand-over's part */
  uvip__handover_msg_t h;
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int))];
  } ctl;
  struct iovec iov = {&h, sizeof(h)};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1,
                       .msg_control = ctl.buf,
                       .msg_controllen = sizeof(ctl.buf)};
  char c;
  ck_assert_ptr_nonnull(u);
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK, 0,
                              chan), 0);
  fx_new(&f, NULL);
  fx_listen(&f);
  a = fx_connect(&f);
  run_until(&f, 1, 1);
  expect_echo(&f, a);

  u->ho_workers = true;
  fail_pipe_open = 1;
  ck_assert_int_eq(uvip__wk_handover(f.server, u, chan[0], move_all), 0);
  ck_assert_int_eq(fail_pipe_open, 0);
  fail_write2 = W2_FAIL_NOW;
  ck_assert_int_eq(uvip__wk_handover(f.server, u, chan[0], move_all), 0);
  fail_write2 = W2_FAIL_LATER;
  ck_assert_int_eq(uvip__wk_handover(f.server, u, chan[0], move_all), 1);
  ck_assert_int_eq(uvip__wk_handover(f.server, u, chan[0], move_all),
                   UV_EBUSY);
  run_until_reported(&f, u);
  ck_assert_uint_eq(u->ho_moved, 0);
  expect_echo(&f, a);
  ck_assert_uint_eq(wstats(&f).active, 1);

  u->ho_workers = true;
  ck_assert_int_eq(uvip__wk_handover(f.server, u, chan[0], move_all), 1);
  run_until_reported(&f, u);
  ck_assert_uint_eq(u->ho_moved, 1);
  ck_assert_int_eq(recvmsg(chan[1], &msg, MSG_DONTWAIT), (ssize_t)sizeof(h));
  ck_assert_uint_eq(h.magic, UVIP__HANDOVER_MAGIC);
  ck_assert_ptr_nonnull(CMSG_FIRSTHDR(&msg));
  memcpy(&fd, CMSG_DATA(CMSG_FIRSTHDR(&msg)), sizeof(fd));
  ck_assert_int_ge(fd, 0);
  /* The moved socket is the client's peer; the worker let go of it. */
  ck_assert_int_eq(write(fd, "m", 1), 1);
  ck_assert_int_eq(read(a, &c, 1), 1);
  ck_assert_int_eq(c, 'm');
  run_until(&f, 1, 0);
  ck_assert_uint_eq(wstats(&f).active, 0);
  fx_close(&f);
  close(fd);
  close(a);
  close(chan[0]);
  close(chan[1]);
  free(u);
}
END_TEST

int main(void) {
  Suite *s = suite_create("workers-faults");
  TCase *tc = tcase_create("workers-faults");
  tcase_add_test(tc, test_vip_id_enomem);
  tcase_add_test(tc, test_pipe_open_fails);
  tcase_add_test(tc, test_handoff_fails);
  tcase_add_test(tc, test_worker_at_fd_limit);
  tcase_add_test(tc, test_handover_order_fails);
  suite_add_tcase(s, tc);
  return th_run_suite(s);
}
