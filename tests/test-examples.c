/* uvip-echo and uvip-stat end to end: the installed programs, found
 * through UVIP_BUILD_DIR, on loopback VIPs. uvip-echo is started with its
 * standard output and error on pipes; every wait is for a line it prints
 * (its readiness, its shutdown) or for its exit, never for time.
 *
 * The VIPs are 127.X.Y.1-4 with X.Y taken from the process id, so that two
 * copies of the suite running at once use different addresses, and the
 * port is a free one.
 * SPDX-License-Identifier: MIT */
#include "exproc.h"
#include "helpers.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
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

/* Starts uvip-echo on the test's VIPs with extra arguments (NULL
 * terminated). */
static void echo_spawn(tx_proc_t *p, const char *const *extra) {
  static char portbuf[16];
  const char *argv[32];
  size_t n = 0;
  snprintf(portbuf, sizeof(portbuf), "%d", port);
  argv[n++] = tx_bin("uvip-echo");
  argv[n++] = "--listen";
  argv[n++] = vip_spec;
  argv[n++] = "--port";
  argv[n++] = portbuf;
  while (*extra && n < 31)
    argv[n++] = *extra++;
  argv[n] = NULL;
  tx_spawn(p, argv);
}

/* Reads uvip-echo's output up to "serving N of N VIPs" and checks each
 * "listening on" line before it. */
static void echo_wait_serving(tx_proc_t *p) {
  char seen[4096] = "", want[256];
  snprintf(want, sizeof(want), "serving %d of %d VIPs", NVIPS, NVIPS);
  tx_expect_line(p->out, want, seen, sizeof(seen));
  for (int i = 0; i < NVIPS; i++) {
    snprintf(want, sizeof(want), "uvip-echo: listening on %s:%d\n", vip_ip[i],
             port);
    ck_assert_msg(strstr(seen, want) != NULL, "no '%s' in:\n%s", want, seen);
  }
}

/* uvip-echo on the test's VIPs with extra arguments; returns once it has
 * said it serves all of them. */
static void echo_start(tx_proc_t *p, const char *a1, const char *a2) {
  const char *extra[] = {a1, a2, NULL};
  echo_spawn(p, extra);
  echo_wait_serving(p);
}

/* A client connection from 127.0.0.1, so that the VIPs' own sockets are
 * the server's only. */
static int client(int i) {
  struct sockaddr_storage dst, src;
  th_addr(vip_ip[i], port, &dst);
  th_addr("127.0.0.1", 0, &src);
  return th_connect((struct sockaddr *)&dst, (struct sockaddr *)&src);
}

/* ---- tests ---------------------------------------------------------------- */

/* Echo on every VIP, uvip-stat sees the listeners and the connections, and
 * SIGTERM drains: uvip-echo waits for the clients to go and exits 0. */
START_TEST(echo_stat_sigterm) {
  tx_proc_t p;
  int fds[NVIPS], rc;
  char cmd[1024], want[256], *out;

  pick_vips();
  echo_start(&p, "--shutdown-timeout", "60000");
  for (int i = 0; i < NVIPS; i++) {
    char msg[256];
    fds[i] = client(i);
    snprintf(msg, sizeof(msg), "hello %s\n", vip_ip[i]);
    tx_echo_check(fds[i], msg);
  }

  /* The table: one row per VIP and its listener. */
  snprintf(cmd, sizeof(cmd), "%s --vips %s --top 0", tx_bin("uvip-stat"),
           vip_spec);
  out = tx_run(cmd, &rc);
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
  snprintf(cmd, sizeof(cmd), "%s --vips %s --json", tx_bin("uvip-stat"),
           vip_spec);
  out = tx_run(cmd, &rc);
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
  tx_expect_line(p.err, "SIGTERM, stopped accepting; waiting up to 60000 ms for 4 "
                     "connections", err, sizeof(err));
  /* Still serving the open ones while it drains. */
  tx_echo_check(fds[0], "still there\n");
  for (int i = 0; i < NVIPS; i++)
    close(fds[i]);
  tx_read_rest(p.out, rest, sizeof(rest));
  tx_read_rest(p.err, err, sizeof(err));
  ck_assert_int_eq(tx_wait_exit(&p), 0);
  ck_assert_msg(strstr(rest, "uvip-echo: bye\n") != NULL, "%s", rest);
  ck_assert_msg(strstr(err, "loop not empty") == NULL, "%s", err);
  ck_assert_msg(strstr(err, "closing") == NULL, "%s", err);
}
END_TEST

/* SIGINT with connections open and no grace period: uvip-echo closes them
 * itself (the clients see the end) and exits 0. */
START_TEST(echo_sigint_closes_conns) {
  tx_proc_t p;
  int fds[NVIPS];
  char err[4096] = "", rest[4096] = "";

  pick_vips();
  echo_start(&p, "--shutdown-timeout", "0");
  for (int i = 0; i < NVIPS; i++) {
    fds[i] = client(i);
    tx_echo_check(fds[i], "x");
  }
  ck_assert_int_eq(kill(p.pid, SIGINT), 0);
  tx_expect_line(p.err, "SIGINT, stopped accepting", err, sizeof(err));
  tx_expect_line(p.err, "closing 4 connections still open", err, sizeof(err));
  for (int i = 0; i < NVIPS; i++) {
    tx_expect_eof(fds[i]);
    close(fds[i]);
  }
  tx_read_rest(p.out, rest, sizeof(rest));
  tx_read_rest(p.err, err, sizeof(err));
  ck_assert_int_eq(tx_wait_exit(&p), 0);
  ck_assert_msg(strstr(rest, "uvip-echo: bye\n") != NULL, "%s", rest);
  ck_assert_msg(strstr(err, "loop not empty") == NULL, "%s", err);
}
END_TEST

/* SIGINT with nothing open: straight out, exit 0. A second signal during
 * a drain exits at once with status 1 and says so. */
START_TEST(echo_signals) {
  tx_proc_t p;
  char err[4096] = "", rest[4096] = "";

  pick_vips();
  echo_start(&p, "--max-conns", "10");
  ck_assert_int_eq(kill(p.pid, SIGINT), 0);
  tx_read_rest(p.out, rest, sizeof(rest));
  tx_read_rest(p.err, err, sizeof(err));
  ck_assert_int_eq(tx_wait_exit(&p), 0);
  ck_assert_msg(strstr(err, "SIGINT, stopped accepting; waiting up to 5000 ms "
                            "for 0 connections") != NULL, "%s", err);
  ck_assert_msg(strstr(rest, "uvip-echo: bye\n") != NULL, "%s", rest);

  err[0] = rest[0] = 0;
  echo_start(&p, "--shutdown-timeout", "60000");
  int fd = client(2);
  tx_echo_check(fd, "y");
  ck_assert_int_eq(kill(p.pid, SIGTERM), 0);
  tx_expect_line(p.err, "waiting up to 60000 ms for 1 connections", err,
              sizeof(err));
  ck_assert_int_eq(kill(p.pid, SIGTERM), 0);
  tx_expect_line(p.err, "second signal, exiting now", err, sizeof(err));
  tx_read_rest(p.out, rest, sizeof(rest));
  ck_assert_int_eq(tx_wait_exit(&p), 1);
  ck_assert_msg(strstr(rest, "bye") == NULL, "%s", rest);
  tx_expect_eof(fd);
  close(fd);
}
END_TEST

/* UVIP_LOOP_GAP=1 (what the benchmarks set) makes uvip-echo report the
 * longest gap of its tick timer at exit; without it nothing is said. */
START_TEST(echo_loop_gap_report) {
  tx_proc_t p;
  char rest[4096] = "";

  pick_vips();
  ck_assert_int_eq(setenv("UVIP_LOOP_GAP", "1", 1), 0);
  echo_start(&p, "--shutdown-timeout", "0");
  ck_assert_int_eq(unsetenv("UVIP_LOOP_GAP"), 0);
  int fd = client(0);
  tx_echo_check(fd, "g");
  ck_assert_int_eq(kill(p.pid, SIGTERM), 0);
  tx_read_rest(p.out, rest, sizeof(rest));
  ck_assert_int_eq(tx_wait_exit(&p), 0);
  close(fd);
  ck_assert_msg(strstr(rest, "uvip-echo: longest loop gap ") != NULL, "%s", rest);
  (void)tx_num_after(rest, "longest loop gap ");

  rest[0] = 0;
  echo_start(&p, "--shutdown-timeout", "0");
  ck_assert_int_eq(kill(p.pid, SIGTERM), 0);
  tx_read_rest(p.out, rest, sizeof(rest));
  ck_assert_int_eq(tx_wait_exit(&p), 0);
  ck_assert_msg(strstr(rest, "loop gap") == NULL, "%s", rest);
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
      /* One strict number parser: no sign after a space, no wrap. */
      {"uvip-echo", "--max-conns ' -1'",
       "uvip-echo: --max-conns: expected a number from 0 to ", 2},
      {"uvip-echo", "--listen 127.0.0.1:0",
       "uvip-echo: --listen: 127.0.0.1:0: port 0", 2},
      {"uvip-stat", "--watch 0",
       "uvip-stat: --watch: expected seconds from 0.001 to 86400", 2},
      {"uvip-stat", "--watch inf",
       "uvip-stat: --watch: expected seconds from 0.001 to 86400", 2},
      {"uvip-stat", "--watch 1 --count 99999999999999999999",
       "uvip-stat: --count: expected a number from 0 to ", 2},
      {"uvip-stat", "--top many", "uvip-stat: --top: expected a number", 2},
      {"uvip-stat", "--vips 10.0.0.300", "uvip-stat: bad --vips '10.0.0.300': ",
       2},
      {"uvip-stat", "--json --prometheus", "usage: uvip-stat", 2},
      {"uvip-stat", "--bogus", "usage: uvip-stat", 2},
      {"uvip-stat", "stray", "usage: uvip-stat", 2},
  };
  char cmd[1024];
  int rc;
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    snprintf(cmd, sizeof(cmd), "%s %s", tx_bin(cases[i].prog), cases[i].args);
    char *out = tx_run(cmd, &rc);
    ck_assert_msg(rc == cases[i].rc, "%s %s: rc %d (want %d): %s",
                  cases[i].prog, cases[i].args, rc, cases[i].rc, out);
    ck_assert_msg(strstr(out, cases[i].msg) != NULL, "%s %s: no '%s' in: %s",
                  cases[i].prog, cases[i].args, cases[i].msg, out);
    free(out);
  }
  /* --help is not an error. */
  snprintf(cmd, sizeof(cmd), "%s --help", tx_bin("uvip-echo"));
  char *out = tx_run(cmd, &rc);
  ck_assert_msg(rc == 0 && strstr(out, "usage: uvip-echo") != NULL, "%s", out);
  free(out);
  snprintf(cmd, sizeof(cmd), "%s --help", tx_bin("uvip-stat"));
  out = tx_run(cmd, &rc);
  ck_assert_msg(rc == 0 && strstr(out, "usage: uvip-stat") != NULL, "%s", out);
  free(out);
}
END_TEST

/* uvip-stat's other modes against a live uvip-echo: --watch with --count
 * (the tracker) prints exactly that many samples and exits 0; Prometheus
 * and the capacity report name the VIPs. */
START_TEST(stat_modes) {
  tx_proc_t p;
  char cmd[1024], want[256], *out;
  int rc;

  pick_vips();
  echo_start(&p, "--shutdown-timeout", "0");
  int fd = client(1);
  tx_echo_check(fd, "z");

  snprintf(cmd, sizeof(cmd), "%s --vips %s --json --watch 0.01 --count 3",
           tx_bin("uvip-stat"), vip_spec);
  out = tx_run(cmd, &rc);
  ck_assert_msg(rc == 0, "rc %d: %s", rc, out);
  int objects = 0;
  for (char *s = out; (s = strstr(s, "{\"totals\":")) != NULL; s++)
    objects++;
  ck_assert_msg(objects == 3, "%d samples: %s", objects, out);
  free(out);

  snprintf(cmd, sizeof(cmd), "%s --vips %s --prometheus", tx_bin("uvip-stat"),
           vip_spec);
  out = tx_run(cmd, &rc);
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
           "--procfs", tx_bin("uvip-stat"), vip_spec);
  out = tx_run(cmd, &rc);
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
  tx_read_rest(p.out, rest, sizeof(rest));
  ck_assert_int_eq(tx_wait_exit(&p), 0);
  ck_assert_msg(strstr(rest, "uvip-echo: bye\n") != NULL, "%s", rest);
}
END_TEST

/* Reads the per-worker lines SIGUSR1 (or a shutdown) prints, "worker I:
 * KEY N", for workers 0 and 1, and returns the sum of N; each count goes to
 * n[i] when n is not NULL. */
static unsigned long long worker_lines(FILE *out, const char *key,
                                       unsigned long long n[2]) {
  unsigned long long sum = 0;
  for (int i = 0; i < 2; i++) {
    char want[64], seen[1024] = "";
    snprintf(want, sizeof(want), "uvip-echo: worker %d: %s ", i, key);
    tx_expect_line(out, want, seen, sizeof(seen));
    unsigned long long v = tx_num_after(strstr(seen, want), want);
    if (n)
      n[i] = v;
    sum += v;
  }
  return sum;
}

/* uvip-echo with 2 workers: echo on every VIP through them, SIGUSR1 reports
 * who holds the connections (exactly 4 each when the acceptor balances:
 * exact and round-robin alternate for connections made one after another),
 * SIGTERM drains and the final report counts every hand-off. */
static void check_echo_workers(const char *mode, const char *balance) {
  enum { NCONN = 8 };
  tx_proc_t p;
  int fds[NCONN];
  int reuseport = strcmp(balance, "reuseport") == 0;
  char want[256], err[4096] = "", rest[4096] = "";
  unsigned long long n[2];

  pick_vips();
  const char *extra[] = {"--workers", "2", "--worker-mode", mode, "--balance",
                         balance, "--shutdown-timeout", "60000", NULL};
  echo_spawn(&p, extra);
  snprintf(want, sizeof(want), "uvip-echo: 2 %s workers, balance %s\n", mode,
           balance);
  tx_expect_line(p.out, want, NULL, 0);
  if (reuseport) {
    tx_expect_line(p.out, "uvip-echo: every worker listens on the 4 VIPs with "
                          "SO_REUSEPORT\n", NULL, 0);
    /* Said once they do: each VIP has both workers' listeners (its row
     * counts them; the listener table merges equal addresses). */
    char cmd[1024];
    int rc;
    snprintf(cmd, sizeof(cmd), "%s --vips %s --json", tx_bin("uvip-stat"),
             vip_spec);
    char *out = tx_run(cmd, &rc);
    ck_assert_msg(rc == 0, "rc %d: %s", rc, out);
    for (int i = 0; i < NVIPS; i++) {
      snprintf(want, sizeof(want), "{\"address\":\"%s\",", vip_ip[i]);
      const char *row = strstr(out, want);
      ck_assert_msg(row != NULL, "no row %s in:\n%s", want, out);
      ck_assert_uint_eq(tx_num_after(row, "\"listen\":"), 2);
    }
    free(out);
  } else {
    echo_wait_serving(&p);
  }
  for (int i = 0; i < NCONN; i++) {
    char msg[64];
    fds[i] = client(i % NVIPS);
    snprintf(msg, sizeof(msg), "through a worker %d\n", i);
    tx_echo_check(fds[i], msg);
  }

  /* The acceptor's counts are exact at once; reuseport workers report
   * theirs every 200 ms, so those are asked for until they are in (20 ms
   * apart, at most 10 s). */
  unsigned long long active = 0;
  for (int tries = 0; active != NCONN; tries++) {
    ck_assert_msg(tries < 500, "workers report %llu connections", active);
    if (tries > 0)
      (void)poll(NULL, 0, 20);
    ck_assert_int_eq(kill(p.pid, SIGUSR1), 0);
    active = worker_lines(p.out, "active", n);
    ck_assert_msg(reuseport || active == NCONN, "%llu", active);
  }
  if (!reuseport) {
    ck_assert_uint_eq(n[0], NCONN / 2);
    ck_assert_uint_eq(n[1], NCONN / 2);
  }

  ck_assert_int_eq(kill(p.pid, SIGTERM), 0);
  snprintf(want, sizeof(want), "SIGTERM, stopped accepting; waiting up to "
                               "60000 ms for %d connections", NCONN);
  tx_expect_line(p.err, want, err, sizeof(err));
  /* The state at the signal, then the drain waits for the clients. */
  ck_assert_uint_eq(worker_lines(p.out, "active", NULL), NCONN);
  tx_echo_check(fds[0], "still served while draining\n");
  for (int i = 0; i < NCONN; i++)
    close(fds[i]);
  ck_assert_uint_eq(worker_lines(p.out, "handed", n), NCONN);
  if (!reuseport)
    ck_assert_uint_eq(n[0], NCONN / 2);
  tx_read_rest(p.out, rest, sizeof(rest));
  tx_read_rest(p.err, err, sizeof(err));
  ck_assert_int_eq(tx_wait_exit(&p), 0);
  ck_assert_msg(strstr(rest, "uvip-echo: bye\n") != NULL, "%s", rest);
  ck_assert_msg(strstr(err, "closing") == NULL, "%s", err);
  ck_assert_msg(strstr(err, "loop not empty") == NULL, "%s", err);
}

START_TEST(echo_workers_thread_exact) { check_echo_workers("thread", "exact"); }
END_TEST

START_TEST(echo_workers_thread_rr) {
  check_echo_workers("thread", "round-robin");
}
END_TEST

START_TEST(echo_workers_process_exact) {
  check_echo_workers("process", "exact");
}
END_TEST

START_TEST(echo_workers_process_rr) {
  check_echo_workers("process", "round-robin");
}
END_TEST

START_TEST(echo_workers_thread_reuseport) {
  check_echo_workers("thread", "reuseport");
}
END_TEST

START_TEST(echo_workers_process_reuseport) {
  check_echo_workers("process", "reuseport");
}
END_TEST

/* Workers and no grace period: SIGINT closes the connections the workers
 * hold (the clients see the end), says how many, and exits 0. */
START_TEST(echo_workers_no_grace) {
  tx_proc_t p;
  int fds[NVIPS];
  char err[4096] = "", rest[4096] = "";

  pick_vips();
  const char *extra[] = {"--workers", "2", "--worker-mode", "process",
                         "--max-conns-per-worker", "100",
                         "--shutdown-timeout", "0", NULL};
  echo_spawn(&p, extra);
  echo_wait_serving(&p);
  for (int i = 0; i < NVIPS; i++) {
    fds[i] = client(i);
    tx_echo_check(fds[i], "held");
  }
  ck_assert_int_eq(kill(p.pid, SIGINT), 0);
  tx_expect_line(p.err, "SIGINT, stopped accepting; waiting up to 0 ms for 4 "
                        "connections", err, sizeof(err));
  tx_expect_line(p.err, "closing 4 connections still open", err, sizeof(err));
  for (int i = 0; i < NVIPS; i++) {
    tx_expect_eof(fds[i]);
    close(fds[i]);
  }
  tx_read_rest(p.out, rest, sizeof(rest));
  tx_read_rest(p.err, err, sizeof(err));
  ck_assert_int_eq(tx_wait_exit(&p), 0);
  ck_assert_msg(strstr(rest, "uvip-echo: bye\n") != NULL, "%s", rest);
}
END_TEST

/* A client that writes much more than it reads: uvip-echo keeps what the
 * socket cannot take, stops reading until it is written, and every byte
 * comes back in order once the client reads. Phase 1 writes without
 * reading until the client's own socket is full (which needs the server to
 * have stopped reading); phase 2 reads and writes the rest. */
START_TEST(echo_slow_reader) {
  enum { TOTAL = 64 << 20 };
  tx_proc_t p;
  char rest[4096] = "";
  static unsigned char wbuf[65536], rbuf[65536];
  size_t sent = 0, got = 0;

  pick_vips();
  echo_start(&p, "--shutdown-timeout", "0");
  int fd = client(0);
  ck_assert_int_eq(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK), 0);
  for (;;) {
    size_t n = sizeof(wbuf) < TOTAL - sent ? sizeof(wbuf) : TOTAL - sent;
    for (size_t i = 0; i < n; i++)
      wbuf[i] = (unsigned char)((sent + i) * 7 / 3);
    ssize_t w = write(fd, wbuf, n);
    if (w < 0) {
      ck_assert_msg(errno == EAGAIN, "write: %s", strerror(errno));
      break;
    }
    sent += (size_t)w;
    ck_assert_msg(sent < TOTAL, "%d bytes written and the socket never "
                                "filled", TOTAL);
  }
  while (got < TOTAL) {
    struct pollfd pf = {.fd = fd, .events = POLLIN | (sent < TOTAL ? POLLOUT : 0)};
    ck_assert_int_eq(poll(&pf, 1, 10000), 1);
    if (pf.revents & POLLOUT) {
      size_t n = sizeof(wbuf) < TOTAL - sent ? sizeof(wbuf) : TOTAL - sent;
      for (size_t i = 0; i < n; i++)
        wbuf[i] = (unsigned char)((sent + i) * 7 / 3);
      ssize_t w = write(fd, wbuf, n);
      ck_assert_msg(w > 0 || errno == EAGAIN, "write: %s", strerror(errno));
      if (w > 0)
        sent += (size_t)w;
    }
    if (pf.revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t r = read(fd, rbuf, sizeof(rbuf));
      ck_assert_msg(r > 0 || (r < 0 && errno == EAGAIN), "read: %zd (%s)", r,
                    strerror(errno));
      /* One check per read: check's assertions are slow per byte. */
      ssize_t bad = -1;
      for (ssize_t i = 0; i < r && bad < 0; i++)
        if (rbuf[i] != (unsigned char)((got + (size_t)i) * 7 / 3))
          bad = i;
      ck_assert_msg(bad < 0, "byte %zu differs", got + (size_t)bad);
      if (r > 0)
        got += (size_t)r;
    }
  }
  ck_assert_uint_eq(got, TOTAL);
  close(fd);
  ck_assert_int_eq(kill(p.pid, SIGTERM), 0);
  tx_read_rest(p.out, rest, sizeof(rest));
  tx_read_rest(p.err, NULL, 0);
  ck_assert_int_eq(tx_wait_exit(&p), 0);
  ck_assert_msg(strstr(rest, "uvip-echo: bye\n") != NULL, "%s", rest);
}
END_TEST

/* A VIP that cannot be bound is named and the others are served; with
 * --all-or-nothing it is fatal (exit 1). */
START_TEST(echo_partial_listen) {
  tx_proc_t p;
  char want[256], err[4096] = "", rest[4096] = "";
  int rc;

  pick_vips();
  /* TEST-NET-1 is on no interface of a test machine. */
  const char *extra[] = {"--listen", "192.0.2.1", NULL};
  echo_spawn(&p, extra);
  snprintf(want, sizeof(want), "uvip-echo: cannot listen on 192.0.2.1:%d: ",
           port);
  tx_expect_line(p.err, want, err, sizeof(err));
  snprintf(want, sizeof(want), "serving %d of %d VIPs", NVIPS, NVIPS + 1);
  tx_expect_line(p.out, want, rest, sizeof(rest));
  int fd = client(3);
  tx_echo_check(fd, "the others serve");
  close(fd);
  ck_assert_int_eq(kill(p.pid, SIGTERM), 0);
  tx_read_rest(p.out, rest, sizeof(rest));
  tx_read_rest(p.err, err, sizeof(err));
  ck_assert_int_eq(tx_wait_exit(&p), 0);

  char cmd[1024];
  snprintf(cmd, sizeof(cmd), "%s --listen %s --listen 192.0.2.1 --port %d "
           "--all-or-nothing", tx_bin("uvip-echo"), vip_spec, port);
  char *out = tx_run(cmd, &rc);
  ck_assert_msg(rc == 1, "rc %d: %s", rc, out);
  snprintf(want, sizeof(want), "uvip-echo: cannot listen: 192.0.2.1:%d: ",
           port);
  ck_assert_msg(strstr(out, want) != NULL, "no '%s' in: %s", want, out);
  free(out);
}
END_TEST

/* --max-conns-per-vip 1: a second client of a VIP waits in the listen
 * queue (uvip-stat sees it there, with the --backlog given) while another
 * VIP still serves, and is served once the first one leaves. */
START_TEST(echo_per_vip_cap) {
  tx_proc_t p;
  char cmd[1024], want[256], rest[4096] = "";
  int rc;

  pick_vips();
  const char *extra[] = {"--max-conns-per-vip", "1", "--backlog", "16",
                         "--accept-budget", "2", "--max-conns", "100", NULL};
  echo_spawn(&p, extra);
  echo_wait_serving(&p);
  int a = client(0);
  tx_echo_check(a, "first");
  int b = client(0);
  ck_assert_int_eq(write(b, "second", 6), 6);
  /* Another VIP's connection goes through the same loop after b's. */
  int c = client(1);
  tx_echo_check(c, "other VIP");

  snprintf(cmd, sizeof(cmd), "%s --vips %s --json", tx_bin("uvip-stat"),
           vip_ip[0]);
  char *out = tx_run(cmd, &rc);
  ck_assert_msg(rc == 0, "rc %d: %s", rc, out);
  snprintf(want, sizeof(want), "{\"address\":\"%s:%d\",\"queue\":1,"
           "\"backlog\":16,", vip_ip[0], port);
  ck_assert_msg(strstr(out, want) != NULL, "no '%s' in:\n%s", want, out);
  free(out);

  close(a);
  char buf[16];
  size_t got = 0;
  while (got < 6) {
    ssize_t r = read(b, buf + got, sizeof(buf) - got);
    ck_assert_msg(r > 0, "read: %zd", r);
    got += (size_t)r;
  }
  ck_assert(memcmp(buf, "second", 6) == 0);
  close(b);
  close(c);
  ck_assert_int_eq(kill(p.pid, SIGTERM), 0);
  tx_read_rest(p.out, rest, sizeof(rest));
  tx_read_rest(p.err, NULL, 0);
  ck_assert_int_eq(tx_wait_exit(&p), 0);
}
END_TEST

/* uvip-stat --watch without --count runs until SIGINT, then exits 0; an
 * interval below 10 ms is taken as 10 ms. */
START_TEST(stat_watch_sigint) {
  tx_proc_t p;
  char seen[8192] = "";
  pick_vips();
  const char *argv[] = {tx_bin("uvip-stat"), "--vips", "127.0.0.1",
                        "--watch", "0.001", "--prometheus", NULL};
  tx_spawn(&p, argv);
  /* Two samples, then the signal. */
  tx_expect_line(p.out, "# TYPE uvip_sockets gauge", seen, sizeof(seen));
  tx_expect_line(p.out, "# TYPE uvip_sockets gauge", seen, sizeof(seen));
  ck_assert_int_eq(kill(p.pid, SIGINT), 0);
  tx_read_rest(p.out, NULL, 0);
  tx_read_rest(p.err, NULL, 0);
  ck_assert_int_eq(tx_wait_exit(&p), 0);
}
END_TEST

/* --vips beyond the census's default table size (4096) is taken: every
 * address gets its row. */
START_TEST(stat_many_vips) {
  char cmd[1024];
  int rc;
  snprintf(cmd, sizeof(cmd), "%s --vips 10.123.0.1-10.123.32.0 --top 0 | "
           "grep -c '^10\\.123\\.'", tx_bin("uvip-stat"));
  char *out = tx_run(cmd, &rc);
  ck_assert_str_eq(out, "8192\n");
  free(out);
}
END_TEST

/* The capacity inputs: --sources multiplies the ports per destination,
 * --processes the descriptors. */
START_TEST(stat_capacity_inputs) {
  char cmd[1024];
  int rc;
  snprintf(cmd, sizeof(cmd), "%s --vips 127.0.0.1 --json --sources 2 "
           "--processes 3 | python3 -c 'import json,sys; d=json.load(sys.stdin); "
           "c=d[\"capacity\"]; l=d[\"limits\"]; "
           "print(c[\"per_destination\"] == 2 * c[\"usable_ports\"], "
           "c[\"by_fds\"] == 3 * l[\"nofile_soft\"])'", tx_bin("uvip-stat"));
  char *out = tx_run(cmd, &rc);
  ck_assert_msg(rc == 0, "rc %d: %s", rc, out);
  ck_assert_str_eq(out, "True True\n");
  free(out);
}
END_TEST

/* Reuseport workers that cannot bind (the test holds the VIPs' port
 * without SO_REUSEPORT): uvip-echo says so and exits 1, without claiming
 * to serve. */
static void check_reuseport_bind_error(const char *mode) {
  tx_proc_t p;
  int lfd[NVIPS];
  char out[4096] = "", err[4096] = "";
  pick_vips();
  for (int i = 0; i < NVIPS; i++) {
    struct sockaddr_storage sa;
    th_addr(vip_ip[i], port, &sa);
    lfd[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(lfd[i], 0);
    ck_assert_int_eq(bind(lfd[i], (struct sockaddr *)&sa,
                          sizeof(struct sockaddr_in)), 0);
    ck_assert_int_eq(listen(lfd[i], 8), 0);
  }
  const char *extra[] = {"--workers", "2", "--worker-mode", mode, "--balance",
                         "reuseport", NULL};
  echo_spawn(&p, extra);
  tx_read_rest(p.out, out, sizeof(out));
  tx_read_rest(p.err, err, sizeof(err));
  ck_assert_int_eq(tx_wait_exit(&p), 1);
  /* Threads bind within uvip_workers_listen(); a process reports it. */
  if (strcmp(mode, "thread") == 0) {
    ck_assert_msg(strstr(err, "uvip-echo: cannot listen: ") &&
                  strstr(err, ": address already in use\n"), "%s", err);
  } else {
    ck_assert_msg(strstr(err, " cannot start: address already in use\n"),
                  "%s", err);
    ck_assert_msg(strstr(out, "uvip-echo: bye\n") != NULL, "%s", out);
  }
  ck_assert_msg(strstr(out, "every worker listens") == NULL, "%s", out);
  for (int i = 0; i < NVIPS; i++)
    close(lfd[i]);
}

START_TEST(echo_reuseport_bind_error_thread) {
  check_reuseport_bind_error("thread");
}
END_TEST

START_TEST(echo_reuseport_bind_error_process) {
  check_reuseport_bind_error("process");
}
END_TEST

int main(void) {
  Suite *s = suite_create("examples");
  TCase *tc = tcase_create("examples");
  tcase_add_test(tc, echo_stat_sigterm);
  tcase_add_test(tc, echo_sigint_closes_conns);
  tcase_add_test(tc, echo_signals);
  tcase_add_test(tc, echo_loop_gap_report);
  tcase_add_test(tc, bad_arguments);
  tcase_add_test(tc, stat_modes);
  tcase_add_test(tc, echo_workers_thread_exact);
  tcase_add_test(tc, echo_workers_thread_rr);
  tcase_add_test(tc, echo_workers_process_exact);
  tcase_add_test(tc, echo_workers_process_rr);
  tcase_add_test(tc, echo_workers_thread_reuseport);
  tcase_add_test(tc, echo_workers_process_reuseport);
  tcase_add_test(tc, echo_workers_no_grace);
  tcase_add_test(tc, echo_slow_reader);
  tcase_add_test(tc, echo_partial_listen);
  tcase_add_test(tc, echo_per_vip_cap);
  tcase_add_test(tc, stat_watch_sigint);
  tcase_add_test(tc, stat_many_vips);
  tcase_add_test(tc, stat_capacity_inputs);
  tcase_add_test(tc, echo_reuseport_bind_error_thread);
  tcase_add_test(tc, echo_reuseport_bind_error_process);
  suite_add_tcase(s, tc);
  return th_run_suite(s);
}
