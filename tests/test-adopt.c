/* Inherited listeners: uvip_listen_fds() (systemd's LISTEN_FDS protocol),
 * uvip_server_adopt(), and uvip-echo under Debian's real
 * systemd-socket-activate.
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

static int listener(const char *ip, int port) {
  struct sockaddr_storage sa;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
  th_addr(ip, port, &sa);
  ck_assert_int_ge(fd, 0);
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  ck_assert_msg(bind(fd, (struct sockaddr *)&sa, sizeof(struct sockaddr_in)) ==
                    0,
                "bind %s:%d: %s", ip, port, strerror(errno));
  ck_assert_int_eq(listen(fd, 128), 0);
  return fd;
}

static bool fd_open(int fd) { return fcntl(fd, F_GETFD) >= 0; }

static int accepted;
static uvip_vip_t *last_vip;
static void on_conn(uvip_server_t *s, uvip_conn_t *c) {
  (void)s;
  accepted++;
  last_vip = uvip_conn_vip(c);
  uvip_conn_close(c, NULL);
}

static bool closed;
static void on_closed(uvip_server_t *s) {
  (void)s;
  closed = true;
}

static void close_server(uv_loop_t *loop, uvip_server_t *s) {
  closed = false;
  ck_assert_int_eq(uvip_server_close(s, on_closed), 0);
  th_run_until(loop, &closed, 100);
  ck_assert_int_eq(uv_loop_close(loop), 0);
}

/* Two of three VIPs come as inherited sockets, one extra socket matches no
 * VIP. The two listen on the very sockets given (a connection queued on one
 * before the adoption is served), the third is bound, the extra closed. */
START_TEST(test_adopt_matches_and_binds_rest) {
  uv_loop_t loop;
  int port = th_free_port(), fds[3], cfd, turns;
  uvip_addrs_t *a = th_addrs("127.0.0.1-127.0.0.3", port);
  uvip_server_t *s;
  size_t extra = 99;
  struct sockaddr_storage sa;
  char err[256] = "";

  fds[0] = listener("127.0.0.1", port);
  fds[1] = listener("127.0.0.2", port);
  fds[2] = listener("127.0.0.9", port);
  /* Queued in the old socket's accept queue before anyone adopts it. */
  th_addr("127.0.0.2", port, &sa);
  cfd = th_connect((struct sockaddr *)&sa, NULL);

  uv_loop_init(&loop);
  ck_assert_int_eq(uvip_server_new(&loop, a, NULL, &s), 0);
  uvip_addrs_free(a);
  ck_assert_int_eq(uvip_server_adopt(s, fds, 3, &extra, err, sizeof(err)), 0);
  ck_assert_uint_eq(extra, 1);
  ck_assert(!fd_open(fds[2]));
  ck_assert_int_eq(uvip_server_listen(s, on_conn, err, sizeof(err)), 0);
  ck_assert_int_eq(uvip_vip_adopted(uvip_server_vip(s, 0)), 1);
  ck_assert_int_eq(uvip_vip_adopted(uvip_server_vip(s, 1)), 1);
  ck_assert_int_eq(uvip_vip_adopted(uvip_server_vip(s, 2)), 0);
  ck_assert_int_eq(uvip_vip_fd(uvip_server_vip(s, 0)), fds[0]);
  ck_assert_int_eq(uvip_vip_fd(uvip_server_vip(s, 1)), fds[1]);
  ck_assert_int_eq(uvip_vip_state(uvip_server_vip(s, 2)), UVIP_VIP_LISTENING);
  /* Adoption happens once: the server now listens. */
  ck_assert_int_eq(uvip_server_adopt(s, NULL, 0, NULL, NULL, 0), UV_EALREADY);

  for (turns = 0; accepted < 1 && turns < 1000; turns++)
    uv_run(&loop, UV_RUN_ONCE);
  ck_assert_int_eq(accepted, 1);
  ck_assert_ptr_eq(last_vip, uvip_server_vip(s, 1));
  close(cfd);
  for (int i = 0; i < 3; i++) {
    char ip[16];
    snprintf(ip, sizeof(ip), "127.0.0.%d", i + 1);
    th_addr(ip, port, &sa);
    cfd = th_connect((struct sockaddr *)&sa, NULL);
    for (turns = 0; accepted < 2 + i && turns < 1000; turns++)
      uv_run(&loop, UV_RUN_ONCE);
    ck_assert_int_eq(accepted, 2 + i);
    close(cfd);
  }
  ck_assert_int_eq(uvip_server_stop(s), 0);
  ck_assert(!fd_open(fds[0]) && !fd_open(fds[1]));
  close_server(&loop, s);
}
END_TEST

/* Each bad descriptor is refused with its reason, and nothing is taken:
 * the caller still owns every descriptor of the call. */
START_TEST(test_adopt_bad_input) {
  uv_loop_t loop;
  int port = th_free_port(), good, p[2], udp, idle, unx, fds[2];
  uvip_addrs_t *a = th_addrs("127.0.0.1", port);
  uvip_server_t *s;
  struct sockaddr_un un;
  char err[256];

  good = listener("127.0.0.1", port);
  ck_assert_int_eq(pipe(p), 0);
  udp = socket(AF_INET, SOCK_DGRAM, 0);
  idle = socket(AF_INET, SOCK_STREAM, 0);
  unx = socket(AF_UNIX, SOCK_STREAM, 0);
  memset(&un, 0, sizeof(un));
  un.sun_family = AF_UNIX;
  /* Abstract name: nothing on disk. */
  snprintf(un.sun_path + 1, sizeof(un.sun_path) - 1, "uvip-adopt-%d", getpid());
  ck_assert_int_eq(bind(unx, (struct sockaddr *)&un, sizeof(un)), 0);
  ck_assert_int_eq(listen(unx, 1), 0);

  uv_loop_init(&loop);
  ck_assert_int_eq(uvip_server_new(&loop, a, NULL, &s), 0);
  uvip_addrs_free(a);
  ck_assert_int_eq(uvip_server_adopt(NULL, fds, 1, NULL, NULL, 0), UV_EINVAL);
  ck_assert_int_eq(uvip_server_adopt(s, NULL, 1, NULL, NULL, 0), UV_EINVAL);
  ck_assert_int_eq(uvip_vip_adopted(NULL), UV_EINVAL);

  struct {
    int fd, err;
    const char *why;
  } bad[] = {{p[0], UV_ENOTSOCK, "not a socket"},
             {udp, UV_EPROTOTYPE, "not a stream"},
             {idle, UV_EINVAL, "not listening"},
             {unx, UV_EAFNOSUPPORT, "not an IPv4 or IPv6"},
             {1000, UV_EBADF, "not an open descriptor"}};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    char want[64];
    fds[0] = good;
    fds[1] = bad[i].fd;
    err[0] = 0;
    ck_assert_int_eq(uvip_server_adopt(s, fds, 2, NULL, err, sizeof(err)),
                     bad[i].err);
    snprintf(want, sizeof(want), "inherited descriptor %d: ", bad[i].fd);
    ck_assert_msg(strstr(err, want) && strstr(err, bad[i].why), "%s", err);
    ck_assert(fd_open(good));
    ck_assert_int_eq(uvip_vip_adopted(uvip_server_vip(s, 0)), 0);
  }
  ck_assert(fd_open(p[0]) && fd_open(udp) && fd_open(idle) && fd_open(unx));
  /* The good one alone is taken; closing the server that never listened
   * closes it. */
  ck_assert_int_eq(uvip_server_adopt(s, &good, 1, NULL, err, sizeof(err)), 0);
  ck_assert_int_eq(uvip_vip_adopted(uvip_server_vip(s, 0)), 1);
  close_server(&loop, s);
  ck_assert(!fd_open(good));
  close(p[0]);
  close(p[1]);
  close(udp);
  close(idle);
  close(unx);
}
END_TEST

/* A listen that fails (UVIP_ALL_OR_NOTHING, one VIP cannot be bound)
 * closes what it bound but keeps the adopted sockets: a later attempt
 * still has them, and no connection queued on them is lost. */
START_TEST(test_failed_listen_keeps_adopted) {
  uv_loop_t loop;
  int port = th_free_port(), fd, cfd, turns;
  uvip_addrs_t *a = th_addrs("127.0.0.1,192.0.2.1", port);
  uvip_server_options_t o;
  uvip_server_t *s;
  struct sockaddr_storage sa;
  char err[256] = "";

  fd = listener("127.0.0.1", port);
  th_addr("127.0.0.1", port, &sa);
  cfd = th_connect((struct sockaddr *)&sa, NULL);
  uv_loop_init(&loop);
  uvip_server_options_init(&o);
  o.flags = UVIP_ALL_OR_NOTHING;
  ck_assert_int_eq(uvip_server_new(&loop, a, &o, &s), 0);
  uvip_addrs_free(a);
  ck_assert_int_eq(uvip_server_adopt(s, &fd, 1, NULL, err, sizeof(err)), 0);
  ck_assert_int_eq(uvip_server_listen(s, on_conn, err, sizeof(err)),
                   UV_EADDRNOTAVAIL);
  ck_assert(fd_open(fd));
  ck_assert_int_eq(uvip_vip_adopted(uvip_server_vip(s, 0)), 1);
  ck_assert_int_eq(uvip_vip_state(uvip_server_vip(s, 0)), UVIP_VIP_IDLE);
  /* Without the address that cannot be bound, the same server serves the
   * queued connection from the adopted socket. */
  ck_assert_int_eq(
      uvip_server_remove_vip(s, uvip_server_vip(s, 1), 0, NULL), 0);
  ck_assert_int_eq(uvip_server_listen(s, on_conn, err, sizeof(err)), 0);
  accepted = 0;
  for (turns = 0; accepted < 1 && turns < 1000; turns++)
    uv_run(&loop, UV_RUN_ONCE);
  ck_assert_int_eq(accepted, 1);
  close(cfd);
  close_server(&loop, s);
}
END_TEST

/* Runs fn in a child with the given listeners moved to 3, 4, ... and the
 * LISTEN_* variables set; returns the child's exit status. */
static int in_activated_child(const int *ls, int n, const char *pid_override,
                              int (*fn)(void)) {
  pid_t pid = fork();
  int st;
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    char buf[32];
    int tmp[8];
    /* Move out of the way first: 3.. may be any of them. */
    for (int i = 0; i < n; i++)
      tmp[i] = fcntl(ls[i], F_DUPFD_CLOEXEC, 100);
    for (int i = 0; i < n; i++)
      if (dup2(tmp[i], 3 + i) != 3 + i)
        _exit(90);
    snprintf(buf, sizeof(buf), "%d", n);
    setenv("LISTEN_FDS", buf, 1);
    snprintf(buf, sizeof(buf), "%d", (int)getpid());
    setenv("LISTEN_PID", pid_override ? pid_override : buf, 1);
    setenv("LISTEN_FDNAMES", "a:b", 1);
    _exit(fn());
  }
  ck_assert_int_eq(waitpid(pid, &st, 0), pid);
  ck_assert(WIFEXITED(st));
  return WEXITSTATUS(st);
}

/* Exit codes name the step that failed. */
static int child_listen_fds(void) {
  int fds[4];
  size_t n = 0;
  if (uvip_listen_fds(0, fds, 4, &n) != 0 || n != 2 || fds[0] != 3 ||
      fds[1] != 4)
    return 10;
  if (!(fcntl(3, F_GETFD) & FD_CLOEXEC) || !(fcntl(4, F_GETFD) & FD_CLOEXEC))
    return 11;
  if (!getenv("LISTEN_FDS"))
    return 12; /* unset_env 0 keeps them */
  if (uvip_listen_fds(1, NULL, 0, &n) != 0 || n != 2)
    return 13;
  if (getenv("LISTEN_FDS") || getenv("LISTEN_PID") || getenv("LISTEN_FDNAMES"))
    return 14;
  if (uvip_listen_fds(1, NULL, 0, &n) != 0 || n != 0)
    return 15; /* not activated any more */
  return 0;
}

static int child_other_pid(void) {
  size_t n = 7;
  if (uvip_listen_fds(1, NULL, 0, &n) != UV_ESRCH || n != 0)
    return 20;
  if (!getenv("LISTEN_FDS"))
    return 21; /* not ours: left alone */
  return 0;
}

static int child_garbage(void) {
  size_t n;
  setenv("LISTEN_FDS", "2x", 1);
  if (uvip_listen_fds(0, NULL, 0, &n) != UV_EINVAL)
    return 30;
  setenv("LISTEN_FDS", "5", 1); /* 5..7 are not open */
  if (uvip_listen_fds(0, NULL, 0, &n) != UV_EBADF)
    return 31;
  if (uvip_listen_fds(0, NULL, 0, NULL) != UV_EINVAL)
    return 32;
  return 0;
}

/* The server option: listen adopts what LISTEN_FDS passed. */
static int child_server(void) {
  uv_loop_t loop;
  uvip_server_options_t o;
  uvip_server_t *s;
  char err[256];
  uvip_addrs_t *a;
  const char *port = getenv("TEST_PORT");
  if (!port || uvip_addrs_new(&a) != 0 ||
      uvip_addrs_parse(a, "127.0.0.1-127.0.0.3", atoi(port), err,
                       sizeof(err)) != 0)
    return 40;
  uv_loop_init(&loop);
  uvip_server_options_init(&o);
  o.flags = UVIP_SOCKET_ACTIVATION;
  if (uvip_server_new(&loop, a, &o, &s) != 0)
    return 41;
  if (uvip_server_listen(s, on_conn, err, sizeof(err)) != 0)
    return 42;
  if (uvip_vip_adopted(uvip_server_vip(s, 0)) != 1 ||
      uvip_vip_adopted(uvip_server_vip(s, 1)) != 1 ||
      uvip_vip_adopted(uvip_server_vip(s, 2)) != 0 ||
      uvip_vip_fd(uvip_server_vip(s, 0)) != 3 ||
      uvip_vip_fd(uvip_server_vip(s, 1)) != 4)
    return 43;
  if (getenv("LISTEN_FDS"))
    return 44;
  return 0;
}

START_TEST(test_listen_fds) {
  int port = th_free_port();
  int ls[2] = {listener("127.0.0.1", port), listener("127.0.0.2", port)};
  char buf[16];
  ck_assert_int_eq(in_activated_child(ls, 2, NULL, child_listen_fds), 0);
  ck_assert_int_eq(in_activated_child(ls, 2, "1", child_other_pid), 0);
  ck_assert_int_eq(in_activated_child(ls, 2, NULL, child_garbage), 0);
  snprintf(buf, sizeof(buf), "%d", port);
  setenv("TEST_PORT", buf, 1);
  ck_assert_int_eq(in_activated_child(ls, 2, NULL, child_server), 0);
  close(ls[0]);
  close(ls[1]);
}
END_TEST


static void echo_check(int fd) {
  char buf[8] = "";
  struct timeval tv = {10, 0}; /* a bound, not a synchronisation */
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ck_assert_int_eq(write(fd, "ping", 4), 4);
  ck_assert_int_eq(read(fd, buf, 4), 4);
  ck_assert_str_eq(buf, "ping");
}

/* Debian's systemd-socket-activate binds two of the three VIPs and execs
 * uvip-echo on the first connection: uvip-echo adopts both (the
 * connections queued on them meanwhile are served) and binds only the
 * third. */
START_TEST(test_systemd_socket_activate) {
  const char *bdir = getenv("UVIP_BUILD_DIR");
  char echo[512], portstr[16], l1[64], l2[64], log[8192] = "";
  int port = th_free_port(), pfd[2], c1, c2, st;
  struct sockaddr_storage sa;
  pid_t pid;
  FILE *out;

  ck_assert_ptr_nonnull(bdir);
  snprintf(echo, sizeof(echo), "%s/examples/uvip-echo", bdir);
  snprintf(portstr, sizeof(portstr), "%d", port);
  snprintf(l1, sizeof(l1), "127.0.0.1:%d", port);
  snprintf(l2, sizeof(l2), "127.0.0.2:%d", port);
  ck_assert_int_eq(pipe(pfd), 0);
  pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    dup2(pfd[1], 1);
    dup2(pfd[1], 2);
    execl("/usr/bin/systemd-socket-activate", "systemd-socket-activate", "-l",
          l1, "-l", l2, echo, "--listen", "127.0.0.1-127.0.0.3", "--port",
          portstr, (char *)NULL);
    _exit(127);
  }
  close(pfd[1]);
  out = fdopen(pfd[0], "r");
  th_read_until(out, "Listening on 127.0.0.1", log, sizeof(log));
  th_read_until(out, "Listening on 127.0.0.2", log, sizeof(log));
  /* Both connect before uvip-echo runs: they wait in the queues of
   * sockets it has not adopted yet. */
  th_addr("127.0.0.1", port, &sa);
  c1 = th_connect((struct sockaddr *)&sa, NULL);
  th_addr("127.0.0.2", port, &sa);
  c2 = th_connect((struct sockaddr *)&sa, NULL);
  th_read_until(out, "serving 3 of 3 VIPs", log, sizeof(log));
  ck_assert_msg(strstr(log, "listening on 127.0.0.1") &&
                    strstr(log, "(adopted)\nuvip-echo: listening on 127.0.0.2"),
                "%s", log);
  ck_assert_msg(strstr(log, "listening on 127.0.0.2") &&
                    !strstr(strstr(log, "listening on 127.0.0.3"), "adopted"),
                "%s", log);
  echo_check(c1);
  echo_check(c2);
  close(c1);
  close(c2);
  /* systemd-socket-activate exec'd uvip-echo in place: same pid. */
  ck_assert_int_eq(kill(pid, SIGTERM), 0);
  th_read_until(out, "bye", log, sizeof(log));
  ck_assert_int_eq(waitpid(pid, &st, 0), pid);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %d\n%s", st,
                log);
  fclose(out);
}
END_TEST

/* uvip-echo started with another process's LISTEN_PID says so and exits,
 * rather than binding over sockets that are not its own. */
START_TEST(test_echo_foreign_listen_pid) {
  const char *bdir = getenv("UVIP_BUILD_DIR");
  char cmd[1024], *outp;
  ck_assert_ptr_nonnull(bdir);
  snprintf(cmd, sizeof(cmd),
           "LISTEN_FDS=1 LISTEN_PID=1 %s/examples/uvip-echo --listen "
           "127.0.0.1 --port %d 2>&1; echo \"exit=$?\"",
           bdir, th_free_port());
  outp = th_cmd_output(cmd);
  ck_assert_ptr_nonnull(outp);
  ck_assert_msg(strstr(outp, "LISTEN_PID is another process") &&
                    strstr(outp, "exit=1"),
                "%s", outp);
  free(outp);
}
END_TEST

/* A new generation (socket-activated) passed a descriptor that is not a
 * listening TCP socket: uvip_server_listen() says which one and why, takes
 * none (both stay open, the good listener too: the queue on it is not
 * lost) and binds nothing in their place (no address open twice). */
static int child_activation_bad(int want, const char *why) {
  uv_loop_t loop;
  uvip_server_options_t o;
  uvip_server_t *s;
  char err[256] = "";
  uvip_addrs_t *a;
  const char *port = getenv("TEST_PORT");
  if (!port || uvip_addrs_new(&a) != 0 ||
      uvip_addrs_parse(a, "127.0.0.1", atoi(port), err, sizeof(err)) != 0)
    return 50;
  uv_loop_init(&loop);
  uvip_server_options_init(&o);
  o.flags = UVIP_SOCKET_ACTIVATION;
  if (uvip_server_new(&loop, a, &o, &s) != 0)
    return 51;
  uvip_addrs_free(a);
  if (uvip_server_listen(s, on_conn, err, sizeof(err)) != want)
    return 52;
  if (!strstr(err, "inherited descriptor 4: ") || !strstr(err, why))
    return 53;
  if (!fd_open(3) || !fd_open(4))
    return 54;
  if (uvip_server_is_listening(s) != 0 ||
      uvip_vip_state(uvip_server_vip(s, 0)) != UVIP_VIP_IDLE ||
      uvip_vip_adopted(uvip_server_vip(s, 0)) != 0)
    return 55;
  return 0;
}
static int child_activation_pipe(void) {
  return child_activation_bad(UV_ENOTSOCK, "not a socket");
}
static int child_activation_udp(void) {
  return child_activation_bad(UV_EPROTOTYPE, "not a stream");
}

START_TEST(test_activation_bad_descriptors) {
  int port = th_free_port(), p[2], ls[2];
  char buf[16];
  ck_assert_int_eq(pipe(p), 0);
  ls[0] = listener("127.0.0.1", port);
  snprintf(buf, sizeof(buf), "%d", port);
  setenv("TEST_PORT", buf, 1);
  ls[1] = p[0];
  ck_assert_int_eq(in_activated_child(ls, 2, NULL, child_activation_pipe), 0);
  ls[1] = socket(AF_INET, SOCK_DGRAM, 0);
  ck_assert_int_eq(in_activated_child(ls, 2, NULL, child_activation_udp), 0);
  close(ls[0]);
  close(ls[1]);
  close(p[0]);
  close(p[1]);
}
END_TEST

/* uvip-echo started (as an upgrade would start it) with a passed descriptor
 * that is not a socket says so and exits 1: an upgrading old generation
 * then hears "exited before it was ready" and keeps serving. */
START_TEST(test_echo_activation_not_a_socket) {
  const char *bdir = getenv("UVIP_BUILD_DIR");
  char cmd[1024], *outp;
  ck_assert_ptr_nonnull(bdir);
  snprintf(cmd, sizeof(cmd),
           "sh -c 'LISTEN_FDS=1 LISTEN_PID=$$ exec %s/examples/uvip-echo "
           "--listen 127.0.0.1 --port %d 3</dev/null' 2>&1; echo \"exit=$?\"",
           bdir, th_free_port());
  outp = th_cmd_output(cmd);
  ck_assert_ptr_nonnull(outp);
  ck_assert_msg(strstr(outp, "inherited descriptor 3: not a socket") &&
                    strstr(outp, "exit=1"),
                "%s", outp);
  free(outp);
}
END_TEST

int main(void) {
  Suite *s = suite_create("adopt");
  TCase *tc = tcase_create("adopt");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_adopt_matches_and_binds_rest);
  tcase_add_test(tc, test_adopt_bad_input);
  tcase_add_test(tc, test_failed_listen_keeps_adopted);
  tcase_add_test(tc, test_listen_fds);
  tcase_add_test(tc, test_systemd_socket_activate);
  tcase_add_test(tc, test_echo_foreign_listen_pid);
  tcase_add_test(tc, test_activation_bad_descriptors);
  tcase_add_test(tc, test_echo_activation_not_a_socket);
  suite_add_tcase(s, tc);
  return th_run_suite(s);
}
