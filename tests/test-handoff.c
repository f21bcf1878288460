/* Listeners fetched over a UNIX socket by an independent new process
 * (uvip_handoff_serve / fetch / ready), and the bad cases: nobody serving,
 * a half-written message, a client that goes away without saying ready.
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

static char sock_path[108];

static struct {
  uv_loop_t loop;
  uvip_server_t *s;
  uvip_handoff_t *h;
  int taken, status, accepted, closes;
} G;

static void on_conn(uvip_server_t *s, uvip_conn_t *c) {
  (void)s;
  G.accepted++;
  uvip_conn_close(c, NULL);
}

static void on_taken(uvip_handoff_t *h, int status) {
  ck_assert_ptr_eq(h, G.h);
  G.taken++;
  G.status = status;
  if (status == 0)
    ck_assert_int_eq(uvip_server_stop(G.s), 0);
}

static void on_closed(uvip_handoff_t *h) {
  (void)h;
  G.closes++;
}

static void start(const char *spec, int port) {
  uvip_addrs_t *a = th_addrs(spec, port);
  memset(&G, 0, sizeof(G));
  snprintf(sock_path, sizeof(sock_path), "/tmp/uvip-handoff-%d.sock",
           getpid());
  ck_assert_int_eq(uv_loop_init(&G.loop), 0);
  ck_assert_int_eq(uvip_server_new(&G.loop, a, NULL, &G.s), 0);
  uvip_addrs_free(a);
  ck_assert_int_eq(uvip_server_listen(G.s, on_conn, NULL, 0), 0);
  ck_assert_int_eq(
      uvip_handoff_serve(&G.loop, &G.s, 1, sock_path, on_taken, &G.h), 0);
}

static void finish(void) {
  ck_assert_int_eq(uvip_handoff_close(G.h, on_closed), 0);
  ck_assert_int_eq(uvip_handoff_close(G.h, NULL), UV_EALREADY);
  ck_assert_int_eq(uvip_server_close(G.s, NULL), 0);
  uv_run(&G.loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(G.closes, 1);
  ck_assert_int_eq(access(sock_path, F_OK), -1); /* socket file removed */
  ck_assert_int_eq(uv_loop_close(&G.loop), 0);
}

/* The new process: fetch, adopt, say ready, serve `serve` connections with
 * "new", exit 0. Exit codes name the failing step. */
static int new_process(int port, int serve) {
  int fds[16], conn;
  size_t n = 0, extra = 9;
  char err[256] = "";
  uv_loop_t loop;
  uvip_server_t *s;
  uvip_addrs_t *a;
  if (uvip_handoff_fetch(sock_path, 10000, fds, 16, &n, &conn, err,
                         sizeof(err)) != 0 || n != 2) {
    fprintf(stderr, "fetch: %s\n", err);
    return 10;
  }
  uv_loop_init(&loop);
  if (uvip_addrs_new(&a) != 0 ||
      uvip_addrs_parse(a, "127.0.0.1-127.0.0.2", port, err, sizeof(err)) != 0 ||
      uvip_server_new(&loop, a, NULL, &s) != 0)
    return 11;
  uvip_addrs_free(a);
  if (uvip_server_adopt(s, fds, n, &extra, err, sizeof(err)) != 0 ||
      extra != 0)
    return 12;
  if (uvip_server_listen(s, on_conn, err, sizeof(err)) != 0 ||
      uvip_vip_adopted(uvip_server_vip(s, 0)) != 1 ||
      uvip_vip_adopted(uvip_server_vip(s, 1)) != 1)
    return 13;
  if (uvip_handoff_ready(conn) != 0)
    return 14;
  while (G.accepted < serve)
    uv_run(&loop, UV_RUN_ONCE);
  uvip_server_close(s, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  return uv_loop_close(&loop) == 0 ? 0 : 15;
}

static int reap(pid_t pid) {
  int st;
  ck_assert_int_eq(waitpid(pid, &st, 0), pid);
  return st;
}

/* The new process adopts the fetched listeners and says ready; the old one
 * stops; a connection made then is served by the new one. */
START_TEST(test_handoff_fetch_and_ready) {
  int port = th_free_port(), c2, st;
  struct sockaddr_storage sa;
  pid_t pid;
  start("127.0.0.1-127.0.0.2", port);
  /* It says ready and closes (uvip_handoff_ready()): it cannot be
   * watched, so no probation. */
  ck_assert_int_eq(uvip_handoff_probation(G.h, 600000, NULL), 0);
  th_addr("127.0.0.2", port, &sa);
  pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    /* Only the fetched copies: the ones fork() gave are closed. */
    for (size_t i = 0; i < uvip_server_vip_count(G.s); i++)
      close(uvip_vip_fd(uvip_server_vip(G.s, i)));
    G.accepted = 0;
    _exit(new_process(port, 1));
  }
  for (int i = 0; G.taken == 0 && i < 100000; i++)
    uv_run(&G.loop, UV_RUN_ONCE);
  ck_assert_int_eq(G.taken, 1);
  ck_assert_int_eq(G.status, 0);
  ck_assert_int_eq(uvip_server_is_listening(G.s), 0);
  c2 = th_connect((struct sockaddr *)&sa, NULL);
  st = reap(pid);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "new process: %d", st);
  ck_assert_int_eq(G.accepted, 0);
  close(c2);
  finish();
}
END_TEST

/* A client that takes the listeners and goes away without saying ready: the
 * old one is told, and keeps serving. */
START_TEST(test_handoff_client_gone) {
  int port = th_free_port(), c, st;
  struct sockaddr_storage sa;
  pid_t pid;
  start("127.0.0.1-127.0.0.2", port);
  pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    int fds[4], conn;
    size_t n;
    _exit(uvip_handoff_fetch(sock_path, 10000, fds, 4, &n, &conn, NULL, 0) ==
                  0 && n == 2
              ? 0
              : 1);
  }
  for (int i = 0; G.taken == 0 && i < 100000; i++)
    uv_run(&G.loop, UV_RUN_ONCE);
  ck_assert_int_eq(G.status, UV_ECONNRESET);
  st = reap(pid);
  ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  ck_assert_int_eq(uvip_server_is_listening(G.s), 1);
  th_addr("127.0.0.1", port, &sa);
  c = th_connect((struct sockaddr *)&sa, NULL);
  for (int i = 0; G.accepted < 1 && i < 1000; i++)
    uv_run(&G.loop, UV_RUN_ONCE);
  ck_assert_int_eq(G.accepted, 1);
  close(c);
  finish();
}
END_TEST

/* A server that sends half a header with two descriptors, then closes: the
 * fetch fails with UV_EPROTO, names the socket, and leaks nothing. */
START_TEST(test_fetch_half_message) {
  struct sockaddr_un un;
  int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), fds[4], conn, st;
  int before, after;
  size_t n = 7;
  char err[256] = "";
  pid_t pid;
  snprintf(sock_path, sizeof(sock_path), "/tmp/uvip-handoff-bad-%d.sock",
           getpid());
  unlink(sock_path);
  memset(&un, 0, sizeof(un));
  un.sun_family = AF_UNIX;
  strcpy(un.sun_path, sock_path);
  ck_assert_int_eq(bind(l, (struct sockaddr *)&un, sizeof(un)), 0);
  ck_assert_int_eq(listen(l, 1), 0);
  pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    int c = accept(l, NULL, NULL), two[2] = {0, 1};
    uint32_t half[2] = {0x75766c66u, 2};
    union {
      struct cmsghdr a;
      char b[CMSG_SPACE(sizeof(two))];
    } ctl;
    struct iovec iov = {half, sizeof(half)};
    struct msghdr m;
    struct cmsghdr *cm;
    memset(&m, 0, sizeof(m));
    memset(&ctl, 0, sizeof(ctl));
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = ctl.b;
    m.msg_controllen = sizeof(ctl.b);
    cm = CMSG_FIRSTHDR(&m);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(two));
    memcpy(CMSG_DATA(cm), two, sizeof(two));
    _exit(sendmsg(c, &m, 0) == (ssize_t)sizeof(half) ? 0 : 1);
  }
  /* Descriptors open before and after: the two received are closed. */
  before = 0;
  for (int fd = 0; fd < 256; fd++)
    before += fcntl(fd, F_GETFD) >= 0;
  ck_assert_int_eq(
      uvip_handoff_fetch(sock_path, 5000, fds, 4, &n, &conn, err, sizeof(err)),
      UV_EPROTO);
  after = 0;
  for (int fd = 0; fd < 256; fd++)
    after += fcntl(fd, F_GETFD) >= 0;
  ck_assert_int_eq(after, before);
  ck_assert_uint_eq(n, 0);
  ck_assert_int_eq(conn, -1);
  ck_assert_msg(strstr(err, sock_path) && strstr(err, "malformed"), "%s", err);
  st = reap(pid);
  ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  close(l);
  unlink(sock_path);
}
END_TEST

START_TEST(test_handoff_args) {
  int fds[2], conn;
  size_t n;
  char err[256] = "";
  uvip_server_t *s = NULL;
  uvip_handoff_t *h;
  {
    uv_loop_t l2;
    uv_loop_init(&l2);
    ck_assert_int_eq(uvip_handoff_serve(NULL, &s, 1, "/tmp/x", on_taken, &h),
                     UV_EINVAL);
    ck_assert_int_eq(uvip_handoff_serve(&l2, NULL, 1, "/tmp/x", on_taken, &h),
                     UV_EINVAL);
    ck_assert_int_eq(uvip_handoff_serve(&l2, &s, 0, "/tmp/x", on_taken, &h),
                     UV_EINVAL);
    ck_assert_int_eq(uvip_handoff_serve(&l2, &s, 1, NULL, on_taken, &h),
                     UV_EINVAL);
    ck_assert_int_eq(uvip_handoff_serve(&l2, &s, 1, "/tmp/x", NULL, &h),
                     UV_EINVAL);
    ck_assert_int_eq(uvip_handoff_serve(&l2, &s, 1, "/tmp/x", on_taken, NULL),
                     UV_EINVAL);
    /* s is NULL: refused too. */
    ck_assert_int_eq(uvip_handoff_serve(&l2, &s, 1, "/tmp/x", on_taken, &h),
                     UV_EINVAL);
    ck_assert_int_eq(uv_loop_close(&l2), 0);
  }
  ck_assert_int_eq(uvip_handoff_close(NULL, NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_handoff_ready(-1), UV_EINVAL);
  ck_assert_int_eq(uvip_handoff_fetch(NULL, 1, fds, 2, &n, &conn, NULL, 0),
                   UV_EINVAL);
  ck_assert_int_eq(uvip_handoff_fetch("/tmp/x", 0, fds, 2, &n, &conn, NULL, 0),
                   UV_EINVAL);
  ck_assert_int_eq(uvip_handoff_fetch("/tmp/x", 1, NULL, 2, &n, &conn, NULL, 0),
                   UV_EINVAL);
  ck_assert_int_eq(uvip_handoff_fetch("/tmp/x", 1, fds, 2, NULL, &conn, NULL, 0),
                   UV_EINVAL);
  ck_assert_int_eq(uvip_handoff_fetch("/tmp/x", 1, fds, 2, &n, NULL, NULL, 0),
                   UV_EINVAL);
  /* Nobody serves there. */
  ck_assert_int_eq(uvip_handoff_fetch("/nonexistent/uvip.sock", 100, fds, 2,
                                      &n, &conn, err, sizeof(err)),
                   UV_ENOENT);
  ck_assert_msg(strstr(err, "nobody serves there"), "%s", err);
  {
    /* A server that does not listen has nothing to serve. */
    uv_loop_t loop;
    uvip_addrs_t *a = th_addrs("127.0.0.1", th_free_port());
    uv_loop_init(&loop);
    ck_assert_int_eq(uvip_server_new(&loop, a, NULL, &s), 0);
    uvip_addrs_free(a);
    ck_assert_int_eq(
        uvip_handoff_serve(&loop, &s, 1, "/tmp/uvip-x.sock", on_taken, &h),
        UV_ENOENT);
    uvip_server_close(s, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
  }
}
END_TEST

/* A server that accepts and never answers: the fetch gives up at its
 * deadline; one with more listeners than room says so; a path that is too
 * long or a file that is not a socket is refused. */
START_TEST(test_fetch_limits) {
  int fds[1], conn, port = th_free_port(), st;
  size_t n;
  char err[256] = "", longp[200];
  struct sockaddr_un un;
  int l;
  pid_t pid;
  memset(longp, 'x', sizeof(longp) - 1);
  longp[0] = '/';
  longp[sizeof(longp) - 1] = 0;
  ck_assert_int_eq(uvip_handoff_fetch(longp, 100, fds, 1, &n, &conn, NULL, 0),
                   UV_ENAMETOOLONG);

  /* Silent server: accepted by the kernel (backlog), never served. */
  snprintf(sock_path, sizeof(sock_path), "/tmp/uvip-handoff-silent-%d.sock",
           getpid());
  unlink(sock_path);
  l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  memset(&un, 0, sizeof(un));
  un.sun_family = AF_UNIX;
  strcpy(un.sun_path, sock_path);
  ck_assert_int_eq(bind(l, (struct sockaddr *)&un, sizeof(un)), 0);
  ck_assert_int_eq(listen(l, 1), 0);
  ck_assert_int_eq(
      uvip_handoff_fetch(sock_path, 50, fds, 1, &n, &conn, err, sizeof(err)),
      UV_ETIMEDOUT);
  ck_assert_msg(strstr(err, "no answer in time"), "%s", err);
  close(l);
  unlink(sock_path);

  /* Two listeners, room for one. */
  start("127.0.0.1-127.0.0.2", port);
  pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    int r = uvip_handoff_fetch(sock_path, 5000, fds, 1, &n, &conn, err,
                               sizeof(err));
    _exit(r == UV_ENOBUFS && strstr(err, "more listeners than room") ? 0 : 1);
  }
  for (int i = 0; G.taken == 0 && i < 100000; i++)
    uv_run(&G.loop, UV_RUN_ONCE);
  ck_assert_int_eq(G.status, UV_ECONNRESET); /* it went away, not ready */
  ck_assert_int_eq(waitpid(pid, &st, 0), pid);
  ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  finish();

  /* Serving where a regular file is: bind fails, the file is left alone. */
  {
    uv_loop_t loop;
    uvip_server_t *s;
    uvip_handoff_t *h;
    uvip_addrs_t *a = th_addrs("127.0.0.1", th_free_port());
    char file[64];
    FILE *f;
    snprintf(file, sizeof(file), "/tmp/uvip-handoff-file-%d", getpid());
    f = fopen(file, "w");
    ck_assert_ptr_nonnull(f);
    fclose(f);
    uv_loop_init(&loop);
    ck_assert_int_eq(uvip_server_new(&loop, a, NULL, &s), 0);
    uvip_addrs_free(a);
    ck_assert_int_eq(uvip_server_listen(s, on_conn, NULL, 0), 0);
    ck_assert_int_eq(uvip_handoff_serve(&loop, &s, 1, file, on_taken, &h),
                     UV_EADDRINUSE);
    ck_assert_int_eq(uvip_handoff_serve(&loop, &s, 1, longp, on_taken, &h),
                     UV_ENAMETOOLONG);
    ck_assert_int_eq(access(file, F_OK), 0);
    unlink(file);
    uvip_server_close(s, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
  }
}
END_TEST

/* A new process on probation: fetch, adopt, listen (never accepting), say
 * ready keeping the connection, then wait on fd `go`: one byte makes it
 * exit 5 (a crash), end of file (the old side closed the watched
 * connection: the probation passed) exit 0. With serve, it first answers
 * one connection. */
static int probation_process(int port, int go, bool serve) {
  int fds[16], conn;
  size_t n = 0;
  char err[256] = "", b;
  uv_loop_t loop;
  uvip_server_t *s;
  uvip_addrs_t *a;
  /* Only the fetched copies: the ones fork() gave are closed. */
  for (size_t i = 0; i < uvip_server_vip_count(G.s); i++)
    close(uvip_vip_fd(uvip_server_vip(G.s, i)));
  G.accepted = 0;
  if (uvip_handoff_fetch(sock_path, 10000, fds, 16, &n, &conn, err,
                         sizeof(err)) != 0)
    return 10;
  uv_loop_init(&loop);
  if (uvip_addrs_new(&a) != 0 ||
      uvip_addrs_parse(a, "127.0.0.1", port, err, sizeof(err)) != 0 ||
      uvip_server_new(&loop, a, NULL, &s) != 0)
    return 11;
  uvip_addrs_free(a);
  if (uvip_server_adopt(s, fds, n, NULL, err, sizeof(err)) != 0 ||
      uvip_server_listen(s, on_conn, err, sizeof(err)) != 0)
    return 12;
  if (uvip_handoff_ready_keep(conn) != 0)
    return 13;
  while (serve && G.accepted < 1)
    uv_run(&loop, UV_RUN_ONCE);
  if (serve) {
    /* The channel for moving connections (unused here), then the end. */
    ssize_t k;
    while ((k = read(conn, &b, 1)) > 0)
      ;
    return k == 0 ? 0 : 14;
  }
  return read(go, &b, 1) == 1 ? 5 : 6;
}

static int began;
static void on_began(uvip_handoff_t *h) {
  ck_assert_ptr_eq(h, G.h);
  ck_assert_int_eq(uvip_server_is_held(G.s), 1);
  began++;
}

static void run_until_held(void) {
  for (int i = 0; !uvip_server_is_held(G.s) && G.taken == 0 && i < 100000;
       i++)
    uv_run(&G.loop, UV_RUN_ONCE);
  ck_assert_int_eq(uvip_server_is_held(G.s), 1);
  ck_assert_int_eq(G.taken, 0);
}

static void run_until_accepted(int n) {
  for (int i = 0; G.accepted < n && i < 100000; i++)
    uv_run(&G.loop, UV_RUN_ONCE);
  ck_assert_int_eq(G.accepted, n);
}

/* The new process goes away during its probation: the running one accepts
 * again on the sockets it held, first what queued meanwhile. Another fetch
 * during the probation is cut. */
START_TEST(test_handoff_probation_crash) {
  int port = th_free_port(), p[2], c1, c2, st;
  struct sockaddr_storage sa;
  pid_t pid, other;
  char b;
  start("127.0.0.1", port);
  ck_assert_int_eq(uvip_handoff_probation(NULL, 1, NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_handoff_ready_keep(-1), UV_EINVAL);
  began = 0;
  ck_assert_int_eq(uvip_handoff_probation(G.h, 600000, on_began), 0);
  ck_assert_int_eq(pipe(p), 0);
  pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    close(p[1]);
    _exit(probation_process(port, p[0], false));
  }
  close(p[0]);
  run_until_held();
  ck_assert_int_eq(began, 1);
  ck_assert_int_eq(uvip_handoff_probation(G.h, 1, NULL), UV_EBUSY);
  th_addr("127.0.0.1", port, &sa);
  c1 = th_connect((struct sockaddr *)&sa, NULL);
  other = fork();
  ck_assert_int_ge(other, 0);
  if (other == 0) {
    int fds[4], conn;
    size_t n;
    _exit(uvip_handoff_fetch(sock_path, 10000, fds, 4, &n, &conn, NULL, 0) ==
                  UV_ECONNRESET
              ? 0
              : 1);
  }
  for (long i = 0; waitpid(other, &st, WNOHANG) == 0 && i < 100000000; i++)
    uv_run(&G.loop, UV_RUN_NOWAIT);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "other fetch: %d", st);
  ck_assert_int_eq(G.taken, 0);
  ck_assert_int_eq(G.accepted, 0);
  ck_assert_int_eq(write(p[1], "x", 1), 1);
  for (int i = 0; G.taken == 0 && i < 100000; i++)
    uv_run(&G.loop, UV_RUN_ONCE);
  ck_assert_int_eq(G.taken, 1);
  ck_assert_int_eq(G.status, UV_ESRCH);
  ck_assert_int_eq(uvip_server_is_held(G.s), 0);
  ck_assert_int_eq(uvip_server_is_listening(G.s), 1);
  run_until_accepted(1);
  c2 = th_connect((struct sockaddr *)&sa, NULL);
  run_until_accepted(2);
  {
    struct timeval tv = {10, 0}; /* a bound, not a synchronisation */
    setsockopt(c1, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ck_assert_int_eq(read(c1, &b, 1), 0); /* served here, not reset */
  }
  st = reap(pid);
  ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 5);
  close(c1);
  close(c2);
  close(p[1]);
  finish();
}
END_TEST

/* A new process that lives through its probation: it alone accepts
 * meanwhile; then the callback says 0 and the watched connection closes. */
START_TEST(test_handoff_probation_passes) {
  int port = th_free_port(), c, st;
  struct sockaddr_storage sa;
  pid_t pid;
  char b;
  start("127.0.0.1", port);
  ck_assert_int_eq(uvip_handoff_probation(G.h, 50, NULL), 0);
  pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0)
    _exit(probation_process(port, -1, true));
  run_until_held();
  th_addr("127.0.0.1", port, &sa);
  c = th_connect((struct sockaddr *)&sa, NULL);
  {
    struct timeval tv = {10, 0}; /* a bound, not a synchronisation */
    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ck_assert_int_eq(read(c, &b, 1), 0); /* closed by the new process */
  }
  for (int i = 0; G.taken == 0 && i < 100000; i++)
    uv_run(&G.loop, UV_RUN_ONCE);
  ck_assert_int_eq(G.status, 0);
  ck_assert_int_eq(G.accepted, 0);
  ck_assert_int_eq(uvip_server_is_listening(G.s), 0);
  st = reap(pid);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "new process %d", st);
  close(c);
  finish();
}
END_TEST

/* Closing the hand-off during a probation: nothing would end the hold, so
 * the servers accept again. */
START_TEST(test_handoff_probation_closed) {
  int port = th_free_port(), p[2], c, st;
  struct sockaddr_storage sa;
  pid_t pid;
  start("127.0.0.1", port);
  ck_assert_int_eq(uvip_handoff_probation(G.h, 600000, NULL), 0);
  ck_assert_int_eq(pipe(p), 0);
  pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    close(p[1]);
    _exit(probation_process(port, p[0], false));
  }
  close(p[0]);
  run_until_held();
  ck_assert_int_eq(uvip_handoff_close(G.h, on_closed), 0);
  ck_assert_int_eq(uvip_handoff_probation(G.h, 1, NULL), UV_EBUSY);
  ck_assert_int_eq(uvip_server_is_held(G.s), 0);
  th_addr("127.0.0.1", port, &sa);
  c = th_connect((struct sockaddr *)&sa, NULL);
  run_until_accepted(1);
  ck_assert_int_eq(G.taken, 0); /* no callback once closing */
  ck_assert_int_eq(write(p[1], "x", 1), 1);
  st = reap(pid);
  ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 5);
  close(c);
  close(p[1]);
  ck_assert_int_eq(uvip_server_close(G.s, NULL), 0);
  uv_run(&G.loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(G.closes, 1);
  ck_assert_int_eq(uv_loop_close(&G.loop), 0);
}
END_TEST

/* Fetches, tells `told` it did, waits for a byte on `go`, says ready
 * keeping the connection, then: with `second`, expects the connection cut
 * at once (exit 0 on its end, nothing sent); else waits for another byte
 * on `go` and exits 5. */
static int racing_process(int port, int told, int go, bool second) {
  int fds[4], conn;
  size_t n = 0;
  char b;
  (void)port;
  for (size_t i = 0; i < uvip_server_vip_count(G.s); i++)
    close(uvip_vip_fd(uvip_server_vip(G.s, i)));
  if (uvip_handoff_fetch(sock_path, 10000, fds, 4, &n, &conn, NULL, 0) != 0)
    return 10;
  if (write(told, "f", 1) != 1 || read(go, &b, 1) != 1)
    return 11;
  if (uvip_handoff_ready_keep(conn) != 0)
    return 12;
  if (second)
    return read(conn, &b, 1) == 0 ? 0 : 13;
  return read(go, &b, 1) == 1 ? 5 : 14;
}

/* Two new processes fetched before either said ready: the first to say it
 * goes on probation, the other is cut when it says it (unreported). */
START_TEST(test_handoff_probation_one_at_a_time) {
  int port = th_free_port(), told[2], ga[2], gb[2], st, got = 0;
  pid_t a, b;
  char x;
  start("127.0.0.1", port);
  ck_assert_int_eq(uvip_handoff_probation(G.h, 600000, NULL), 0);
  ck_assert_int_eq(pipe2(told, O_NONBLOCK), 0);
  ck_assert_int_eq(pipe(ga), 0);
  ck_assert_int_eq(pipe(gb), 0);
  a = fork();
  ck_assert_int_ge(a, 0);
  if (a == 0)
    _exit(racing_process(port, told[1], ga[0], true));
  b = fork();
  ck_assert_int_ge(b, 0);
  if (b == 0)
    _exit(racing_process(port, told[1], gb[0], false));
  for (long i = 0; got < 2 && i < 100000000; i++) {
    uv_run(&G.loop, UV_RUN_NOWAIT);
    if (read(told[0], &x, 1) == 1)
      got++;
  }
  ck_assert_int_eq(got, 2);
  ck_assert_int_eq(write(gb[1], "g", 1), 1); /* b says ready first */
  run_until_held();
  ck_assert_int_eq(write(ga[1], "g", 1), 1); /* then a */
  for (long i = 0; waitpid(a, &st, WNOHANG) == 0 && i < 100000000; i++)
    uv_run(&G.loop, UV_RUN_NOWAIT);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "a: %d", st);
  ck_assert_int_eq(G.taken, 0);
  ck_assert_int_eq(uvip_server_is_held(G.s), 1);
  ck_assert_int_eq(write(gb[1], "g", 1), 1); /* b goes */
  for (int i = 0; G.taken == 0 && i < 100000; i++)
    uv_run(&G.loop, UV_RUN_ONCE);
  ck_assert_int_eq(G.status, UV_ESRCH);
  st = reap(b);
  ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 5);
  for (int i = 0; i < 2; i++) {
    close(told[i]);
    close(ga[i]);
    close(gb[i]);
  }
  finish();
}
END_TEST

/* ---- Moving idle connections to the new process ---- */

static uvip_conn_t *kept[4];
static int nkept, moved_here, move_done;
static size_t moved_n, kept_n;

static void keep_conn(uvip_server_t *s, uvip_conn_t *c) {
  (void)s;
  kept[nkept++] = c;
}

static int decide_move(uvip_conn_t *c, void *blob, size_t *len) {
  (void)c;
  memcpy(blob, "b", 1);
  *len = 1;
  return UVIP_HANDOVER_MOVE;
}

static void on_moved_done(uvip_upgrade_t *u, size_t moved, size_t kept_) {
  (void)u;
  moved_n = moved;
  kept_n = kept_;
  move_done++;
}

/* In the new process: each moved connection says "moved" + its blob and
 * closes. */
static void child_moved(uvip_server_t *s, uvip_conn_t *c, const void *blob,
                        size_t len) {
  char out[16];
  uv_buf_t b;
  (void)s;
  snprintf(out, sizeof(out), "moved%.*s", (int)len, (const char *)blob);
  b = uv_buf_init(out, (unsigned)strlen(out));
  if (uv_try_write(uvip_conn_stream(c), &b, 1) != (int)strlen(out))
    _exit(30);
  uvip_conn_close(c, NULL);
  moved_here++;
}

static int child_end_status = 1;
static void child_moved_end(uvip_moved_t *m, int status, size_t received) {
  (void)m;
  child_end_status = status == 0 && received == 2 ? 0 : 31;
}

/* Fetches, says ready keeping the connection, waits (blocking: it has
 * nothing else to do) for the channel, receives the moved connections. */
static int moving_process(int port) {
  int fds[16], conn, chan = -1, r;
  size_t n = 0;
  char err[256] = "";
  uv_loop_t loop;
  uvip_server_t *s;
  uvip_addrs_t *a;
  uvip_moved_t *m;
  struct pollfd p;
  for (size_t i = 0; i < uvip_server_vip_count(G.s); i++)
    close(uvip_vip_fd(uvip_server_vip(G.s, i)));
  if (uvip_handoff_fetch(sock_path, 10000, fds, 16, &n, &conn, err,
                         sizeof(err)) != 0)
    return 10;
  uv_loop_init(&loop);
  if (uvip_addrs_new(&a) != 0 ||
      uvip_addrs_parse(a, "127.0.0.1", port, err, sizeof(err)) != 0 ||
      uvip_server_new(&loop, a, NULL, &s) != 0)
    return 11;
  uvip_addrs_free(a);
  if (uvip_server_adopt(s, fds, n, NULL, err, sizeof(err)) != 0 ||
      uvip_server_listen(s, on_conn, err, sizeof(err)) != 0)
    return 12;
  if (uvip_handoff_ready_keep(conn) != 0)
    return 13;
  p.fd = conn;
  p.events = POLLIN;
  if (poll(&p, 1, 10000) != 1) /* a bound, not a synchronisation */
    return 14;
  if ((r = uvip_handoff_channel(conn, &chan)) != 0)
    return 15;
  if (uvip_moved_start_fd(s, chan, child_moved, child_moved_end, &m) != 0)
    return 16;
  /* Then the old side closes: nothing more will come. */
  if (poll(&p, 1, 10000) != 1 || uvip_handoff_channel(conn, &chan) != UV_EOF)
    return 17;
  close(conn);
  while (child_end_status == 1)
    uv_run(&loop, UV_RUN_ONCE);
  if (moved_here != 2)
    return 18;
  uvip_server_close(s, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  return child_end_status;
}

/* An independent new process that kept its connection gets the idle
 * connections too, over a channel sent on that connection. */
START_TEST(test_handoff_moves_idle) {
  int port = th_free_port(), c[2], st;
  struct sockaddr_storage sa;
  uvip_upgrade_t *u;
  pid_t pid;
  char buf[16];
  start("127.0.0.1", port);
  ck_assert_int_eq(uvip_server_close(G.s, NULL), 0);
  uv_run(&G.loop, UV_RUN_NOWAIT);
  {
    uvip_addrs_t *a = th_addrs("127.0.0.1", port);
    ck_assert_int_eq(uvip_handoff_close(G.h, NULL), 0);
    ck_assert_int_eq(uvip_server_new(&G.loop, a, NULL, &G.s), 0);
    uvip_addrs_free(a);
    ck_assert_int_eq(uvip_server_listen(G.s, keep_conn, NULL, 0), 0);
    ck_assert_int_eq(
        uvip_handoff_serve(&G.loop, &G.s, 1, sock_path, on_taken, &G.h), 0);
  }
  ck_assert_int_eq(uvip_handoff_mover(NULL, &u), UV_EINVAL);
  ck_assert_int_eq(uvip_handoff_mover(G.h, NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_handoff_mover(G.h, &u), UV_ENOTCONN); /* none yet */
  th_addr("127.0.0.1", port, &sa);
  for (int i = 0; i < 2; i++)
    c[i] = th_connect((struct sockaddr *)&sa, NULL);
  for (int i = 0; nkept < 2 && i < 100000; i++)
    uv_run(&G.loop, UV_RUN_ONCE);
  ck_assert_int_eq(nkept, 2);
  pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0)
    _exit(moving_process(port));
  for (int i = 0; G.taken == 0 && i < 100000; i++)
    uv_run(&G.loop, UV_RUN_ONCE);
  ck_assert_int_eq(G.status, 0); /* no probation: at once */
  ck_assert_int_eq(uvip_handoff_mover(G.h, &u), 0);
  ck_assert_int_eq(uvip_upgrade_pid(u), 0);
  ck_assert_int_eq(uvip_handoff_mover(G.h, &u), UV_ENOTCONN); /* taken */
  ck_assert_int_eq(uvip_upgrade_handover(u, G.s, decide_move, on_moved_done),
                   0);
  for (int i = 0; move_done == 0 && i < 100000; i++)
    uv_run(&G.loop, UV_RUN_ONCE);
  ck_assert_int_eq(moved_n, 2);
  ck_assert_int_eq(kept_n, 0);
  ck_assert_int_eq(uvip_upgrade_close(u, NULL), 0);
  for (int i = 0; i < 2; i++) {
    struct timeval tv = {10, 0}; /* a bound, not a synchronisation */
    ssize_t k;
    setsockopt(c[i], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    k = read(c[i], buf, sizeof(buf) - 1);
    ck_assert_int_eq(k, 6);
    buf[k] = 0;
    ck_assert_str_eq(buf, "movedb");
    close(c[i]);
  }
  st = reap(pid);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "new process: %d", st);
  finish();
}
END_TEST

/* What the new process may find on its kept connection. */
START_TEST(test_handoff_channel_bad) {
  int sp[2], chan = 7;
  uvip_server_t *s = NULL;
  uvip_moved_t *m;
  ck_assert_int_eq(uvip_handoff_channel(-1, &chan), UV_EINVAL);
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sp), 0);
  ck_assert_int_eq(uvip_handoff_channel(sp[0], NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_handoff_channel(sp[0], &chan), UV_EAGAIN);
  ck_assert_int_eq(chan, -1);
  /* Bytes without a descriptor. */
  ck_assert_int_eq(write(sp[1], "0123456789abcdef", 16), 16);
  ck_assert_int_eq(uvip_handoff_channel(sp[0], &chan), UV_EPROTO);
  /* The right size with a descriptor but the wrong magic: it is closed. */
  {
    int before = 0, after = 0, one = sp[1];
    union {
      struct cmsghdr a;
      char b[CMSG_SPACE(sizeof(int))];
    } ctl;
    char hdr[16] = "not-the-magic!!";
    struct iovec iov = {hdr, sizeof(hdr)};
    struct msghdr msg;
    struct cmsghdr *cm;
    memset(&msg, 0, sizeof(msg));
    memset(&ctl, 0, sizeof(ctl));
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctl.b;
    msg.msg_controllen = sizeof(ctl.b);
    cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &one, sizeof(int));
    ck_assert_int_eq(sendmsg(sp[1], &msg, 0), 16);
    for (int fd = 0; fd < 256; fd++)
      before += fcntl(fd, F_GETFD) >= 0;
    ck_assert_int_eq(uvip_handoff_channel(sp[0], &chan), UV_EPROTO);
    for (int fd = 0; fd < 256; fd++)
      after += fcntl(fd, F_GETFD) >= 0;
    ck_assert_int_eq(after, before);
  }
  close(sp[1]);
  ck_assert_int_eq(uvip_handoff_channel(sp[0], &chan), UV_EOF);
  close(sp[0]);
  ck_assert_int_eq(uvip_moved_start_fd(NULL, 3, child_moved, NULL, &m),
                   UV_EINVAL);
  {
    uv_loop_t loop;
    uvip_addrs_t *a = th_addrs("127.0.0.1", th_free_port());
    uv_loop_init(&loop);
    ck_assert_int_eq(uvip_server_new(&loop, a, NULL, &s), 0);
    uvip_addrs_free(a);
    ck_assert_int_eq(uvip_moved_start_fd(s, -1, child_moved, NULL, &m),
                     UV_EBADF);
    ck_assert_ptr_null(m);
    ck_assert_int_eq(uvip_moved_start_fd(s, 3, NULL, NULL, &m), UV_EINVAL);
    uvip_server_close(s, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
  }
}
END_TEST

int main(void) {
  Suite *s = suite_create("handoff");
  TCase *tc = tcase_create("handoff");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_handoff_fetch_and_ready);
  tcase_add_test(tc, test_handoff_client_gone);
  tcase_add_test(tc, test_fetch_half_message);
  tcase_add_test(tc, test_handoff_args);
  tcase_add_test(tc, test_fetch_limits);
  tcase_add_test(tc, test_handoff_probation_crash);
  tcase_add_test(tc, test_handoff_probation_passes);
  tcase_add_test(tc, test_handoff_probation_closed);
  tcase_add_test(tc, test_handoff_moves_idle);
  tcase_add_test(tc, test_handoff_probation_one_at_a_time);
  tcase_add_test(tc, test_handoff_channel_bad);
  suite_add_tcase(s, tc);
  return th_run_suite(s);
}
