/* Faults the kernel rarely gives, on the restart paths: pipe2(),
 * socketpair() and fork() failing in uvip_upgrade_start(), sendmsg() full
 * (EAGAIN) or broken (EPIPE) while moving connections or serving listeners.
 * Linked with -Wl,--wrap so that the library's own calls go through the
 * wrappers below. This program is also the new generation ("gen2").
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

/* ---- Wrappers: fail the next `n` calls with `err` ---------------------- */

static struct {
  int n, err;
} f_fork, f_pipe2, f_socketpair, f_sendmsg;

pid_t __real_fork(void);
int __real_pipe2(int p[2], int flags);
int __real_socketpair(int d, int t, int p, int sv[2]);
ssize_t __real_sendmsg(int fd, const struct msghdr *m, int flags);
pid_t __wrap_fork(void);
int __wrap_pipe2(int p[2], int flags);
int __wrap_socketpair(int d, int t, int p, int sv[2]);
ssize_t __wrap_sendmsg(int fd, const struct msghdr *m, int flags);

#define FAIL_IF_ARMED(f)                                                       \
  do {                                                                         \
    if ((f).n > 0) {                                                           \
      (f).n--;                                                                 \
      errno = (f).err;                                                         \
      return -1;                                                               \
    }                                                                          \
  } while (0)

pid_t __wrap_fork(void) {
  FAIL_IF_ARMED(f_fork);
  return __real_fork();
}
int __wrap_pipe2(int p[2], int flags) {
  FAIL_IF_ARMED(f_pipe2);
  return __real_pipe2(p, flags);
}
int __wrap_socketpair(int d, int t, int p, int sv[2]) {
  FAIL_IF_ARMED(f_socketpair);
  return __real_socketpair(d, t, p, sv);
}
ssize_t __wrap_sendmsg(int fd, const struct msghdr *m, int flags) {
  FAIL_IF_ARMED(f_sendmsg);
  return __real_sendmsg(fd, m, flags);
}

static char self[4096];

/* ---- The new generation: adopt, receive moved connections, serve ------ */

static uvip_server_t *g2;
static int g2_moved;
static void g2_conn(uvip_server_t *s, uvip_conn_t *c) {
  (void)s;
  uvip_conn_close(c, NULL);
}
static void g2_on_moved(uvip_server_t *s, uvip_conn_t *c, const void *b,
                        size_t n) {
  (void)s;
  (void)b;
  (void)n;
  g2_moved++;
  uvip_conn_close(c, NULL);
}
static void g2_on_end(uvip_moved_t *m, int status, size_t received) {
  (void)m;
  (void)status;
  (void)received;
  uvip_server_close(g2, NULL);
}

static int gen2(int port) {
  uv_loop_t *loop = uv_default_loop();
  uvip_server_options_t o;
  uvip_addrs_t *a;
  uvip_moved_t *m;
  if (uvip_addrs_new(&a) != 0 ||
      uvip_addrs_parse(a, "127.0.0.1", port, NULL, 0) != 0)
    return 10;
  uvip_server_options_init(&o);
  o.flags = UVIP_SOCKET_ACTIVATION;
  if (uvip_server_new(loop, a, &o, &g2) != 0 ||
      uvip_server_listen(g2, g2_conn, NULL, 0) != 0)
    return 11;
  uvip_addrs_free(a);
  if (uvip_moved_start(g2, g2_on_moved, g2_on_end, &m) != 0 || !m)
    return 12;
  if (uvip_upgrade_ready() != 0)
    return 13;
  uv_run(loop, UV_RUN_DEFAULT);
  return 0;
}

/* ---- The old generation ------------------------------------------------ */

#define NC 4
static struct {
  uv_loop_t loop;
  uvip_server_t *s;
  uvip_upgrade_t *u;
  uvip_conn_t *conns[NC];
  int n, status, reports, answered;
  size_t moved, kept;
  bool done, closed;
} G;

static void on_alloc(uv_handle_t *h, size_t n, uv_buf_t *b) {
  static char buf[64];
  (void)h;
  (void)n;
  *b = uv_buf_init(buf, sizeof(buf));
}
static void on_written(uv_write_t *w, int st) {
  (void)st;
  free(w);
}
static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b) {
  (void)b;
  if (n < 0) {
    uvip_conn_close(uvip_conn_from_tcp((uv_tcp_t *)st), NULL);
    return;
  }
  if (n > 0) {
    uv_write_t *w = malloc(sizeof(*w));
    uv_buf_t ob = uv_buf_init("g1", 2);
    uv_write(w, st, &ob, 1, on_written);
    G.answered++;
  }
}
static void on_conn(uvip_server_t *s, uvip_conn_t *c) {
  (void)s;
  G.conns[G.n++] = c;
  uv_read_start(uvip_conn_stream(c), on_alloc, on_read);
}
static int decide(uvip_conn_t *c, void *blob, size_t *len) {
  (void)c;
  (void)blob;
  *len = 0;
  return UVIP_HANDOVER_MOVE;
}
static void on_done(uvip_upgrade_t *u, size_t moved, size_t kept) {
  (void)u;
  G.moved = moved;
  G.kept = kept;
  G.done = true;
}
static void on_upgraded(uvip_upgrade_t *u, int status, const char *why) {
  (void)why;
  G.reports++;
  G.status = status;
  if (status == 0)
    ck_assert_int_eq(uvip_upgrade_handover(u, G.s, decide, on_done), 0);
}
static void on_up_closed(uvip_upgrade_t *u) {
  (void)u;
  G.closed = true;
}

static int setup(int nconns, int *fds) {
  int port = th_free_port();
  uvip_addrs_t *a = th_addrs("127.0.0.1", port);
  struct sockaddr_storage sa;
  memset(&G, 0, sizeof(G));
  ck_assert_int_eq(uv_loop_init(&G.loop), 0);
  ck_assert_int_eq(uvip_server_new(&G.loop, a, NULL, &G.s), 0);
  uvip_addrs_free(a);
  ck_assert_int_eq(uvip_server_listen(G.s, on_conn, NULL, 0), 0);
  {
    /* libuv opens a loop's signal pipe with its first signal handle, and
     * its reserve descriptor with its first stream, and keeps both: opened
     * here, so that descriptor counts compare. */
    static uv_signal_t sig;
    static uv_pipe_t pipe;
    uv_signal_init(&G.loop, &sig);
    uv_close((uv_handle_t *)&sig, NULL);
    uv_pipe_init(&G.loop, &pipe, 0);
    uv_close((uv_handle_t *)&pipe, NULL);
    uv_run(&G.loop, UV_RUN_NOWAIT);
  }
  th_addr("127.0.0.1", port, &sa);
  for (int i = 0; i < nconns; i++) {
    fds[i] = th_connect((struct sockaddr *)&sa, NULL);
    for (int k = 0; G.n < i + 1 && k < 1000; k++)
      uv_run(&G.loop, UV_RUN_ONCE);
    ck_assert_int_eq(G.n, i + 1);
  }
  return port;
}

static void teardown(void) {
  if (G.u && !G.closed) {
    uvip_upgrade_close(G.u, on_up_closed);
    for (int i = 0; !G.closed && i < 1000; i++)
      uv_run(&G.loop, UV_RUN_ONCE);
  }
  uvip_server_close_conns(G.s);
  ck_assert_int_eq(uvip_server_close(G.s, NULL), 0);
  uv_run(&G.loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(uv_loop_close(&G.loop), 0);
}

static int open_fds(void) {
  int n = 0;
  for (int fd = 0; fd < 1024; fd++)
    n += fcntl(fd, F_GETFD) >= 0;
  return n;
}

/* Each failure of uvip_upgrade_start() before there is a child: its error,
 * no callback, no descriptor left open, the loop closes. */
START_TEST(test_start_faults) {
  int fds[1], before;
  char *argv[] = {self, NULL};
  struct {
    void *f;
    int err;
  } cases[] = {{&f_pipe2, EMFILE}, {&f_socketpair, ENFILE}, {&f_fork, EAGAIN}};
  setup(0, fds);
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    struct {
      int n, err;
    } *f = cases[i].f;
    before = open_fds();
    f->n = 1;
    f->err = cases[i].err;
    ck_assert_int_eq(uvip_upgrade_start(&G.loop, &G.s, 1, self, argv, 1000,
                                        on_upgraded, &G.u),
                     -cases[i].err);
    uv_run(&G.loop, UV_RUN_NOWAIT); /* handles made before the fault close */
    ck_assert_msg(open_fds() == before, "case %zu: %d open, %d before", i,
                  open_fds(), before);
    ck_assert_int_eq(G.reports, 0);
    ck_assert_int_eq(uvip_server_is_listening(G.s), 1);
  }
  G.u = NULL;
  teardown();
}
END_TEST

static void upgrade_and_move(int port, int *fds) {
  char ports[16];
  snprintf(ports, sizeof(ports), "%d", port);
  char *argv[] = {self, "gen2", ports, NULL};
  ck_assert_int_eq(uvip_upgrade_start(&G.loop, &G.s, 1, self, argv, 10000,
                                      on_upgraded, &G.u),
                   0);
  for (int i = 0; !G.done && i < 100000; i++)
    uv_run(&G.loop, UV_RUN_ONCE);
  ck_assert(G.done);
  (void)fds;
}

/* The channel is full twice: the hand-over waits for room on the loop and
 * still moves every connection. */
START_TEST(test_handover_channel_full) {
  int fds[NC], port = setup(NC, fds);
  f_sendmsg.n = 2;
  f_sendmsg.err = EAGAIN;
  upgrade_and_move(port, fds);
  ck_assert_uint_eq(G.moved, NC);
  ck_assert_uint_eq(G.kept, 0);
  teardown();
  for (int i = 0; i < NC; i++)
    close(fds[i]);
}
END_TEST

/* The channel breaks: nothing moves, every connection is given back and is
 * served here again (it reads and answers). */
START_TEST(test_handover_channel_broken) {
  int fds[NC], port = setup(NC, fds);
  f_sendmsg.n = 1;
  f_sendmsg.err = EPIPE;
  upgrade_and_move(port, fds);
  ck_assert_uint_eq(G.moved, 0);
  ck_assert_uint_eq(G.kept, NC);
  for (int i = 0; i < NC; i++) {
    char b[4] = "";
    struct timeval tv = {10, 0}; /* a bound, not a synchronisation */
    setsockopt(fds[i], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ck_assert_int_eq(write(fds[i], "?", 1), 1);
    while (G.answered < i + 1)
      uv_run(&G.loop, UV_RUN_ONCE);
    ck_assert_int_eq(read(fds[i], b, 2), 2);
    ck_assert_str_eq(b, "g1");
  }
  teardown();
  for (int i = 0; i < NC; i++)
    close(fds[i]);
}
END_TEST

/* Serving listeners: the first send fails: that client is told nothing
 * and the hand-off reports the error; the running process keeps serving
 * and a second client gets them. */
static int ho_status, ho_reports;
static void on_taken(uvip_handoff_t *h, int status) {
  (void)h;
  ho_status = status;
  ho_reports++;
}
static void ho_closed(uvip_handoff_t *h) {
  (void)h;
  G.closed = true;
}

START_TEST(test_handoff_send_fails) {
  int fds[1], conn, got[4];
  size_t n = 0;
  char path[64], err[256] = "";
  uvip_handoff_t *h;
  pid_t pid;
  setup(0, fds);
  snprintf(path, sizeof(path), "/tmp/uvip-rf-%d.sock", getpid());
  ck_assert_int_eq(uvip_handoff_serve(&G.loop, &G.s, 1, path, on_taken, &h),
                   0);
  f_sendmsg.n = 1;
  f_sendmsg.err = ENOBUFS;
  pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    f_sendmsg.n = 0;
    /* The server drops us without a word: a short read. */
    int r = uvip_handoff_fetch(path, 5000, got, 4, &n, &conn, err, sizeof(err));
    _exit(r == UV_ECONNRESET || r == UV_EPROTO ? 0 : 1);
  }
  for (int i = 0; ho_reports == 0 && i < 100000; i++)
    uv_run(&G.loop, UV_RUN_ONCE);
  ck_assert_int_eq(ho_status, UV_ENOBUFS);
  {
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  }
  ck_assert_int_eq(uvip_server_is_listening(G.s), 1);
  ck_assert_int_eq(uvip_handoff_close(h, ho_closed), 0);
  for (int i = 0; !G.closed && i < 1000; i++)
    uv_run(&G.loop, UV_RUN_ONCE);
  G.u = NULL;
  G.closed = false;
  teardown();
}
END_TEST

/* The channel for moving connections to an independent new process cannot
 * be made (socketpair() fails) or sent (sendmsg() fails): the take-over
 * still succeeds, only nothing can move (uvip_handoff_mover():
 * UV_ENOTCONN), and the new process sees its connection end without a
 * channel. */
static int keeper(const char *path, int told, int go) {
  int got[4], conn, chan;
  size_t n = 0;
  char b;
  if (uvip_handoff_fetch(path, 5000, got, 4, &n, &conn, NULL, 0) != 0)
    return 1;
  if (write(told, "f", 1) != 1 || read(go, &b, 1) != 1 ||
      uvip_handoff_ready_keep(conn) != 0)
    return 2;
  /* Blocking is fine here: one connection, nothing else to do. */
  for (;;) {
    struct pollfd p = {conn, POLLIN, 0};
    int r;
    if (poll(&p, 1, 10000) != 1) /* a bound, not a synchronisation */
      return 4;
    r = uvip_handoff_channel(conn, &chan);
    if (r == UV_EOF)
      return 0;
    if (r != UV_EAGAIN)
      return 3;
  }
}

START_TEST(test_handoff_channel_faults) {
  int fds[1], told[2], go[2];
  char path[64], x;
  uvip_handoff_t *h;
  uvip_upgrade_t *u;
  setup(0, fds);
  snprintf(path, sizeof(path), "/tmp/uvip-rf-ch-%d.sock", getpid());
  ck_assert_int_eq(uvip_handoff_serve(&G.loop, &G.s, 1, path, on_taken, &h),
                   0);
  for (int round = 0; round < 2; round++) {
    pid_t pid;
    int st;
    ho_reports = 0;
    ck_assert_int_eq(pipe2(told, O_NONBLOCK), 0);
    ck_assert_int_eq(pipe(go), 0);
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0)
      _exit(keeper(path, told[1], go[0]));
    /* Armed once the listeners went out, before it says ready. */
    for (long i = 0; read(told[0], &x, 1) != 1 && i < 100000000; i++)
      uv_run(&G.loop, UV_RUN_NOWAIT);
    if (round == 0) {
      f_socketpair.n = 1;
      f_socketpair.err = EMFILE;
    } else {
      f_sendmsg.n = 1;
      f_sendmsg.err = ENOBUFS;
    }
    ck_assert_int_eq(write(go[1], "g", 1), 1);
    for (int i = 0; ho_reports == 0 && i < 100000; i++)
      uv_run(&G.loop, UV_RUN_ONCE);
    ck_assert_int_eq(ho_status, 0);
    ck_assert_int_eq(f_socketpair.n + f_sendmsg.n, 0); /* the fault ran */
    ck_assert_int_eq(uvip_handoff_mover(h, &u), UV_ENOTCONN);
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "round %d: %d",
                  round, st);
    for (int i = 0; i < 2; i++) {
      close(told[i]);
      close(go[i]);
    }
  }
  ck_assert_int_eq(uvip_handoff_close(h, ho_closed), 0);
  for (int i = 0; !G.closed && i < 1000; i++)
    uv_run(&G.loop, UV_RUN_ONCE);
  G.closed = false;
  teardown();
}
END_TEST

int main(int argc, char **argv) {
  ssize_t n;
  if (argc == 3 && !strcmp(argv[1], "gen2"))
    return gen2(atoi(argv[2]));
  n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0)
    return 1;
  self[n] = 0;
  Suite *s = suite_create("restart-faults");
  TCase *tc = tcase_create("restart-faults");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_start_faults);
  tcase_add_test(tc, test_handover_channel_full);
  tcase_add_test(tc, test_handover_channel_broken);
  tcase_add_test(tc, test_handoff_send_fails);
  tcase_add_test(tc, test_handoff_channel_faults);
  suite_add_tcase(s, tc);
  return th_run_suite(s);
}
