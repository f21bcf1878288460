/* uvip-echo and uvip-stat end to end: the installed programs, found
 * through UVIP_BUILD_DIR, on loopback VIPs. uvip-echo is started with its
 * standard output and error on pipes; every wait is for a line it prints
 * (its readiness, its shutdown) or for its exit, never for time.
 *
 * The VIPs are 127.X.Y.1-4 with X.Y taken from the process id, so that two
 * copies of the suite running at once use different addresses, and the
 * port is a free one.
 * SPDX-License-Identifier: MIT */
#include "helpers.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define NVIPS 4

static unsigned vip_x, vip_y;  /* the VIPs are 127.X.Y.1-4 */
static char vip_spec[64];       /* "127.X.Y.1-127.X.Y.4" */
static char vip_ip[NVIPS][20];  /* "127.X.Y.k" */
static int port;

static const char *bin(const char *name) {
  static char path[2][4096];
  static int k;
  const char *dir = getenv("UVIP_BUILD_DIR");
  ck_assert_msg(dir != NULL, "UVIP_BUILD_DIR not set");
  k = !k;
  snprintf(path[k], sizeof(path[k]), "%s/examples/%s", dir, name);
  return path[k];
}

static void pick_vips(void) {
  unsigned pid = (unsigned)getpid();
  vip_x = 1 + (pid >> 8) % 250;
  vip_y = pid & 0xff;
  snprintf(vip_spec, sizeof(vip_spec), "127.%u.%u.1-127.%u.%u.%d", vip_x,
           vip_y, vip_x, vip_y, NVIPS);
  for (int i = 0; i < NVIPS; i++)
    snprintf(vip_ip[i], sizeof(vip_ip[i]), "127.%u.%u.%d", vip_x, vip_y,
             i + 1);
  port = th_free_port();
}

/* ---- a running uvip-echo -------------------------------------------------- */

typedef struct {
  pid_t pid;
  FILE *out, *err;
} proc_t;

static FILE *pipe_reader(int fds[2]) {
  close(fds[1]);
  FILE *f = fdopen(fds[0], "r");
  ck_assert_ptr_nonnull(f);
  return f;
}

static void spawn(proc_t *p, const char *const *argv) {
  int out[2], err[2];
  ck_assert_int_eq(pipe(out), 0);
  ck_assert_int_eq(pipe(err), 0);
  fflush(NULL);
  p->pid = fork();
  ck_assert_int_ge(p->pid, 0);
  if (p->pid == 0) {
    dup2(out[1], STDOUT_FILENO);
    dup2(err[1], STDERR_FILENO);
    close(out[0]);
    close(out[1]);
    close(err[0]);
    close(err[1]);
    execv(argv[0], (char *const *)argv);
    _exit(127);
  }
  p->out = pipe_reader(out);
  p->err = pipe_reader(err);
}

/* Reads lines from f until one contains want; fails at end of file. The
 * lines read are appended to seen (may be NULL). */
static void expect_line(FILE *f, const char *want, char *seen, size_t len) {
  char line[1024];
  while (fgets(line, sizeof(line), f) != NULL) {
    if (seen)
      strncat(seen, line, len - strlen(seen) - 1);
    if (strstr(line, want) != NULL)
      return;
  }
  ck_abort_msg("no line with '%s' before end of output; seen:\n%s", want,
               seen ? seen : "");
}

/* Reads what is left (until the program closes its end). */
static void read_rest(FILE *f, char *seen, size_t len) {
  char line[1024];
  while (fgets(line, sizeof(line), f) != NULL)
    strncat(seen, line, len - strlen(seen) - 1);
}

/* Waits for the program's exit and returns its exit status; a death by
 * signal fails the test. */
static int wait_exit(proc_t *p) {
  int st;
  ck_assert_int_eq(waitpid(p->pid, &st, 0), p->pid);
  ck_assert_msg(WIFEXITED(st), "killed by signal %d", WTERMSIG(st));
  fclose(p->out);
  fclose(p->err);
  return WEXITSTATUS(st);
}

/* uvip-echo on the test's VIPs with extra arguments; returns once it has
 * said it serves all of them (after checking each "listening on" line). */
static void echo_start(proc_t *p, const char *a1, const char *a2) {
  char portbuf[16], seen[4096] = "", want[256];
  snprintf(portbuf, sizeof(portbuf), "%d", port);
  const char *argv[] = {bin("uvip-echo"), "--listen", vip_spec, "--port",
                        portbuf,          a1,         a2,       NULL};
  spawn(p, argv);
  snprintf(want, sizeof(want), "serving %d of %d VIPs", NVIPS, NVIPS);
  expect_line(p->out, want, seen, sizeof(seen));
  for (int i = 0; i < NVIPS; i++) {
    snprintf(want, sizeof(want), "uvip-echo: listening on %s:%d\n", vip_ip[i],
             port);
    ck_assert_msg(strstr(seen, want) != NULL, "no '%s' in:\n%s", want, seen);
  }
}

/* A client connection from 127.0.0.1, so that the VIPs' own sockets are
 * the server's only. */
static int client(int i) {
  struct sockaddr_storage dst, src;
  th_addr(vip_ip[i], port, &dst);
  th_addr("127.0.0.1", 0, &src);
  return th_connect((struct sockaddr *)&dst, (struct sockaddr *)&src);
}

static void echo_check(int fd, const char *msg) {
  size_t n = strlen(msg), got = 0;
  char buf[256];
  ck_assert_int_eq(write(fd, msg, n), (ssize_t)n);
  while (got < n) {
    ssize_t r = read(fd, buf + got, sizeof(buf) - got);
    ck_assert_msg(r > 0, "read: %zd (%s)", r, strerror(errno));
    got += (size_t)r;
  }
  ck_assert_uint_eq(got, n);
  ck_assert(memcmp(buf, msg, n) == 0);
}

/* The server closed the connection: read() sees the end. */
static void expect_eof(int fd) {
  char c;
  ssize_t r;
  do
    r = read(fd, &c, 1);
  while (r < 0 && errno == EINTR);
  ck_assert_msg(r == 0 || (r < 0 && errno == ECONNRESET), "read: %zd", r);
}

/* Runs a command line through the shell; returns its output (stdout and
 * stderr) and sets *rc to its exit status. */
static char *run(const char *args, int *rc) {
  char cmd[2048], *out, *p;
  snprintf(cmd, sizeof(cmd), "%s 2>&1; echo \"rc=$?\"", args);
  out = th_cmd_output(cmd);
  ck_assert_ptr_nonnull(out);
  p = strrchr(out, '\n');
  ck_assert_ptr_nonnull(p);
  *p = 0;
  p = strrchr(out, '\n');
  p = p ? p + 1 : out;
  ck_assert_msg(strncmp(p, "rc=", 3) == 0, "no exit status in: %s", out);
  *rc = atoi(p + 3);
  *p = 0;
  return out;
}

/* ---- tests ---------------------------------------------------------------- */

/* Echo on every VIP, uvip-stat sees the listeners and the connections, and
 * SIGTERM drains: uvip-echo waits for the clients to go and exits 0. */
START_TEST(echo_stat_sigterm) {
  proc_t p;
  int fds[NVIPS], rc;
  char cmd[1024], want[256], *out;

  pick_vips();
  echo_start(&p, "--shutdown-timeout", "60000");
  for (int i = 0; i < NVIPS; i++) {
    char msg[256];
    fds[i] = client(i);
    snprintf(msg, sizeof(msg), "hello %s\n", vip_ip[i]);
    echo_check(fds[i], msg);
  }

  /* The table: one row per VIP and its listener. */
  snprintf(cmd, sizeof(cmd), "%s --vips %s --top 0", bin("uvip-stat"),
           vip_spec);
  out = run(cmd, &rc);
  ck_assert_msg(rc == 0, "rc %d: %s", rc, out);
  ck_assert_msg(strstr(out, "LISTENER") != NULL, "%s", out);
  for (int i = 0; i < NVIPS; i++) {
    snprintf(want, sizeof(want), "\n%s:%d ", vip_ip[i], port);
    ck_assert_msg(strstr(out, want) != NULL, "no listener %s in:\n%s", want,
                  out);
    /* VIP row: ESTAB 1 ... LISTEN 1 */
    snprintf(want, sizeof(want), "\n%-24s %7d", vip_ip[i], 1);
    ck_assert_msg(strstr(out, want) != NULL, "no row '%s' in:\n%s", want, out);
  }
  free(out);

  /* JSON: exact counts per VIP (one inbound connection, one listener) and
   * the listeners with their queue empty (uvip-echo accepts them all). */
  snprintf(cmd, sizeof(cmd), "%s --vips %s --json", bin("uvip-stat"),
           vip_spec);
  out = run(cmd, &rc);
  ck_assert_msg(rc == 0, "rc %d: %s", rc, out);
  for (int i = 0; i < NVIPS; i++) {
    snprintf(want, sizeof(want),
             "{\"address\":\"%s\",\"established\":1,\"syn_sent\":0,",
             vip_ip[i]);
    ck_assert_msg(strstr(out, want) != NULL, "no '%s' in:\n%s", want, out);
    snprintf(want, sizeof(want), "{\"address\":\"%s:%d\",\"queue\":0,",
             vip_ip[i], port);
    ck_assert_msg(strstr(out, want) != NULL, "no '%s' in:\n%s", want, out);
  }
  ck_assert_msg(strstr(out, "\"totals\":{\"established\":4,") != NULL, "%s",
                out);
  free(out);

  /* SIGTERM: it stops accepting and waits for the 4 connections. */
  char err[4096] = "", rest[4096] = "";
  ck_assert_int_eq(kill(p.pid, SIGTERM), 0);
  expect_line(p.err, "SIGTERM, stopped accepting; waiting up to 60000 ms for 4 "
                     "connections", err, sizeof(err));
  /* Still serving the open ones while it drains. */
  echo_check(fds[0], "still there\n");
  for (int i = 0; i < NVIPS; i++)
    close(fds[i]);
  read_rest(p.out, rest, sizeof(rest));
  read_rest(p.err, err, sizeof(err));
  ck_assert_int_eq(wait_exit(&p), 0);
  ck_assert_msg(strstr(rest, "uvip-echo: bye\n") != NULL, "%s", rest);
  ck_assert_msg(strstr(err, "loop not empty") == NULL, "%s", err);
  ck_assert_msg(strstr(err, "closing") == NULL, "%s", err);
}
END_TEST

/* SIGINT with connections open and no grace period: uvip-echo closes them
 * itself (the clients see the end) and exits 0. */
START_TEST(echo_sigint_closes_conns) {
  proc_t p;
  int fds[NVIPS];
  char err[4096] = "", rest[4096] = "";

  pick_vips();
  echo_start(&p, "--shutdown-timeout", "0");
  for (int i = 0; i < NVIPS; i++) {
    fds[i] = client(i);
    echo_check(fds[i], "x");
  }
  ck_assert_int_eq(kill(p.pid, SIGINT), 0);
  expect_line(p.err, "SIGINT, stopped accepting", err, sizeof(err));
  expect_line(p.err, "closing 4 connections still open", err, sizeof(err));
  for (int i = 0; i < NVIPS; i++) {
    expect_eof(fds[i]);
    close(fds[i]);
  }
  read_rest(p.out, rest, sizeof(rest));
  read_rest(p.err, err, sizeof(err));
  ck_assert_int_eq(wait_exit(&p), 0);
  ck_assert_msg(strstr(rest, "uvip-echo: bye\n") != NULL, "%s", rest);
  ck_assert_msg(strstr(err, "loop not empty") == NULL, "%s", err);
}
END_TEST

/* SIGINT with nothing open: straight out, exit 0. A second signal during
 * a drain exits at once with status 1 and says so. */
START_TEST(echo_signals) {
  proc_t p;
  char err[4096] = "", rest[4096] = "";

  pick_vips();
  echo_start(&p, "--max-conns", "10");
  ck_assert_int_eq(kill(p.pid, SIGINT), 0);
  read_rest(p.out, rest, sizeof(rest));
  read_rest(p.err, err, sizeof(err));
  ck_assert_int_eq(wait_exit(&p), 0);
  ck_assert_msg(strstr(err, "SIGINT, stopped accepting; waiting up to 5000 ms "
                            "for 0 connections") != NULL, "%s", err);
  ck_assert_msg(strstr(rest, "uvip-echo: bye\n") != NULL, "%s", rest);

  err[0] = rest[0] = 0;
  echo_start(&p, "--shutdown-timeout", "60000");
  int fd = client(2);
  echo_check(fd, "y");
  ck_assert_int_eq(kill(p.pid, SIGTERM), 0);
  expect_line(p.err, "waiting up to 60000 ms for 1 connections", err,
              sizeof(err));
  ck_assert_int_eq(kill(p.pid, SIGTERM), 0);
  expect_line(p.err, "second signal, exiting now", err, sizeof(err));
  read_rest(p.out, rest, sizeof(rest));
  ck_assert_int_eq(wait_exit(&p), 1);
  ck_assert_msg(strstr(rest, "bye") == NULL, "%s", rest);
  expect_eof(fd);
  close(fd);
}
END_TEST

/* Bad arguments: a message naming the problem and a non-zero exit, for
 * uvip-echo (2 for usage, 1 when it cannot listen) and uvip-stat (2). */
START_TEST(bad_arguments) {
  static const struct {
    const char *prog, *args, *msg;
    int rc;
  } cases[] = {
      {"uvip-echo", "--port 0",
       "uvip-echo: --port: expected a number from 1 to 65535, got '0'", 2},
      {"uvip-echo", "--port",
       "uvip-echo: option '--port' needs a value; see --help", 2},
      {"uvip-echo", "--bogus", "uvip-echo: unknown option '--bogus'; see --help",
       2},
      {"uvip-echo", "stray", "uvip-echo: unexpected argument 'stray'", 2},
      {"uvip-echo", "--listen 300.1.2.3", "uvip-echo: --listen: ", 2},
      {"uvip-echo", "--max-conns -1",
       "uvip-echo: --max-conns: expected a number", 2},
      {"uvip-echo", "--worker-mode fork",
       "uvip-echo: --worker-mode: expected thread or process, got 'fork'", 2},
      {"uvip-echo", "--balance exact",
       "uvip-echo: --balance: needs --workers N", 2},
      /* TEST-NET-1 is on no interface of a test machine. */
      {"uvip-echo", "--listen 192.0.2.1 --port 7000",
       "uvip-echo: cannot listen: 192.0.2.1:7000: ", 1},
      {"uvip-stat", "--watch 0", "uvip-stat: bad --watch '0': seconds > 0", 2},
      {"uvip-stat", "--top many", "uvip-stat: bad number 'many'", 2},
      {"uvip-stat", "--vips 10.0.0.300", "uvip-stat: bad --vips '10.0.0.300': ",
       2},
      {"uvip-stat", "--json --prometheus", "usage: uvip-stat", 2},
      {"uvip-stat", "--bogus", "usage: uvip-stat", 2},
      {"uvip-stat", "stray", "usage: uvip-stat", 2},
  };
  char cmd[1024];
  int rc;
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    snprintf(cmd, sizeof(cmd), "%s %s", bin(cases[i].prog), cases[i].args);
    char *out = run(cmd, &rc);
    ck_assert_msg(rc == cases[i].rc, "%s %s: rc %d (want %d): %s",
                  cases[i].prog, cases[i].args, rc, cases[i].rc, out);
    ck_assert_msg(strstr(out, cases[i].msg) != NULL, "%s %s: no '%s' in: %s",
                  cases[i].prog, cases[i].args, cases[i].msg, out);
    free(out);
  }
  /* --help is not an error. */
  snprintf(cmd, sizeof(cmd), "%s --help", bin("uvip-echo"));
  char *out = run(cmd, &rc);
  ck_assert_msg(rc == 0 && strstr(out, "usage: uvip-echo") != NULL, "%s", out);
  free(out);
  snprintf(cmd, sizeof(cmd), "%s --help", bin("uvip-stat"));
  out = run(cmd, &rc);
  ck_assert_msg(rc == 0 && strstr(out, "usage: uvip-stat") != NULL, "%s", out);
  free(out);
}
END_TEST

/* uvip-stat's other modes against a live uvip-echo: --watch with --count
 * (the tracker) prints exactly that many samples and exits 0; Prometheus
 * and the capacity report name the VIPs. */
START_TEST(stat_modes) {
  proc_t p;
  char cmd[1024], want[256], *out;
  int rc;

  pick_vips();
  echo_start(&p, "--shutdown-timeout", "0");
  int fd = client(1);
  echo_check(fd, "z");

  snprintf(cmd, sizeof(cmd), "%s --vips %s --json --watch 0.01 --count 3",
           bin("uvip-stat"), vip_spec);
  out = run(cmd, &rc);
  ck_assert_msg(rc == 0, "rc %d: %s", rc, out);
  int objects = 0;
  for (char *s = out; (s = strstr(s, "{\"totals\":")) != NULL; s++)
    objects++;
  ck_assert_msg(objects == 3, "%d samples: %s", objects, out);
  free(out);

  snprintf(cmd, sizeof(cmd), "%s --vips %s --prometheus", bin("uvip-stat"),
           vip_spec);
  out = run(cmd, &rc);
  ck_assert_msg(rc == 0, "rc %d: %s", rc, out);
  snprintf(want, sizeof(want),
           "uvip_vip_sockets{vip=\"%s\",state=\"established\",direction=\"in\"} 1\n",
           vip_ip[1]);
  ck_assert_msg(strstr(out, want) != NULL, "no '%s' in:\n%s", want, out);
  snprintf(want, sizeof(want), "uvip_listen_queue{vip=\"%s:%d\"} 0\n",
           vip_ip[3], port);
  ck_assert_msg(strstr(out, want) != NULL, "no '%s' in:\n%s", want, out);
  free(out);

  snprintf(cmd, sizeof(cmd), "%s --vips %s --capacity --target 1000000 "
           "--procfs", bin("uvip-stat"), vip_spec);
  out = run(cmd, &rc);
  ck_assert_msg(rc == 0, "rc %d: %s", rc, out);
  ck_assert_msg(strstr(out, "(/proc/net/tcp)") != NULL, "%s", out);
  ck_assert_msg(strstr(out, "\ncapacity: overall ") != NULL, "%s", out);
  ck_assert_msg(strstr(out, "advice: ") != NULL, "%s", out);
  snprintf(want, sizeof(want), "\n%s:%d ", vip_ip[0], port);
  ck_assert_msg(strstr(out, want) != NULL, "no listener %s in:\n%s", want, out);
  free(out);

  close(fd);
  ck_assert_int_eq(kill(p.pid, SIGTERM), 0);
  char rest[4096] = "";
  read_rest(p.out, rest, sizeof(rest));
  ck_assert_int_eq(wait_exit(&p), 0);
  ck_assert_msg(strstr(rest, "uvip-echo: bye\n") != NULL, "%s", rest);
}
END_TEST

int main(void) {
  Suite *s = suite_create("examples");
  TCase *tc = tcase_create("examples");
  tcase_add_test(tc, echo_stat_sigterm);
  tcase_add_test(tc, echo_sigint_closes_conns);
  tcase_add_test(tc, echo_signals);
  tcase_add_test(tc, bad_arguments);
  tcase_add_test(tc, stat_modes);
  suite_add_tcase(s, tc);
  return th_run_suite(s);
}
