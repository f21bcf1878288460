/* uvip-loadgen against uvip-echo, uvip-stat on their connections and
 * uvip-echo --provision, end to end, each test in a network namespace of
 * its own: the loopback addresses, the ephemeral port range and the
 * interface addresses are the test's, and two copies of the suite do not
 * meet. The programs are found through UVIP_BUILD_DIR; every wait is for a
 * line they print or for their exit, never for time.
 * SPDX-License-Identifier: MIT */
#include "exproc.h"
#include "helpers.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#define PORT 7000

/* The namespace's ephemeral port range (per namespace). */
static void set_port_range(int lo, int hi) {
  FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "w");
  ck_assert_ptr_nonnull(f);
  ck_assert_int_gt(fprintf(f, "%d %d\n", lo, hi), 0);
  ck_assert_int_eq(fclose(f), 0);
}

/* uvip-echo on spec, port PORT; returns once it serves every VIP. */
static void echo_up(tx_proc_t *p, const char *spec, int nvips) {
  char want[64];
  const char *argv[] = {tx_bin("uvip-echo"), "--listen", spec, "--port",
                        "7000", "--shutdown-timeout", "0", NULL};
  tx_spawn(p, argv);
  snprintf(want, sizeof(want), "serving %d of %d VIPs", nvips, nvips);
  tx_expect_line(p->out, want, NULL, 0);
}

static void echo_down(tx_proc_t *p) {
  char rest[4096] = "";
  ck_assert_int_eq(kill(p->pid, SIGTERM), 0);
  tx_read_rest(p->out, rest, sizeof(rest));
  tx_read_rest(p->err, NULL, 0);
  ck_assert_int_eq(tx_wait_exit(p), 0);
  ck_assert_msg(strstr(rest, "uvip-echo: bye\n") != NULL, "%s", rest);
}

/* uvip-loadgen with args, to its end; returns its output (both streams). */
static char *loadgen(const char *args, int *rc) {
  const char *bin = tx_bin("uvip-loadgen");
  size_t len = strlen(bin) + strlen(args) + 2;
  char *cmd = malloc(len);
  ck_assert_ptr_nonnull(cmd);
  snprintf(cmd, len, "%s %s", bin, args);
  char *out = tx_run(cmd, rc);
  free(cmd);
  return out;
}

static void loadgen_spawn(tx_proc_t *p, const char *const *args) {
  const char *argv[32];
  size_t n = 0;
  argv[n++] = tx_bin("uvip-loadgen");
  while (*args && n < 31)
    argv[n++] = *args++;
  argv[n] = NULL;
  tx_spawn(p, argv);
}

#define HAS(out, s) ck_assert_msg(strstr((out), (s)) != NULL, "no '%s' in:\n%s", (s), (out))

/* A listener of the test's own on 127.0.0.1:PORT, for peers that do not
 * echo. */
static int test_listener_backlog(int backlog) {
  struct sockaddr_storage sa;
  int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)), 0);
  th_addr("127.0.0.1", PORT, &sa);
  ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(struct sockaddr_in)), 0);
  ck_assert_int_eq(listen(fd, backlog), 0);
  return fd;
}

static int test_listener(void) { return test_listener_backlog(64); }

static int accept_one(int lfd) {
  int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
  ck_assert_msg(fd >= 0, "accept: %s", strerror(errno));
  return fd;
}

/* ---- uvip-loadgen --------------------------------------------------------- */

/* Every connection established and its byte echoed, over four VIPs; the
 * summary counts them; --json gives the same on stdout as JSON. */
START_TEST(loadgen_echo) {
  tx_proc_t e;
  int rc;
  th_enter_netns();
  echo_up(&e, "127.0.0.1-127.0.0.4", 4);

  char *out = loadgen("--target 127.0.0.1-127.0.0.4 --conns 200 --echo", &rc);
  ck_assert_msg(rc == 0, "rc %d: %s", rc, out);
  HAS(out, "uvip-loadgen: 200 connections to 4 targets, 0 sources, 1 process: "
           "established 200, verified 200, peak open 200, failed 0 in ");
  HAS(out, "uvip-loadgen: ok: every connection succeeded\n");
  HAS(out, "uvip-loadgen: connect latency p50 ");
  free(out);

  /* A soft descriptor limit below what the run needs is raised to the
   * hard one. */
  char cmd[1024];
  snprintf(cmd, sizeof(cmd), "ulimit -Sn 256 && %s --port 7000 --conns 300",
           tx_bin("uvip-loadgen"));
  out = tx_run(cmd, &rc);
  ck_assert_msg(rc == 0, "rc %d: %s", rc, out);
  HAS(out, "uvip-loadgen: 300 connections to 1 target, 0 sources, 1 process: "
           "established 300, verified 0, peak open 300, failed 0 in ");
  free(out);

  /* JSON on stdout only (the text goes to stderr, discarded here), from a
   * source address of our choice. */
  snprintf(cmd, sizeof(cmd),
           "%s --conns 10 --sources 127.0.0.9 --json 2>/dev/null | python3 -c "
           "'import json,sys; d=json.load(sys.stdin); "
           "print(d[\"ok\"], d[\"conns\"], d[\"attempted\"], d[\"established\"], "
           "d[\"verified\"], d[\"failed_total\"], d[\"failed\"], "
           "d[\"establish_seconds\"] is not None, d[\"procs\"], d[\"targets\"], "
           "d[\"sources\"], d[\"echo\"], d[\"hold\"], d[\"churn\"], "
           "d[\"exhausted\"])'",
           tx_bin("uvip-loadgen"));
  out = tx_run(cmd, &rc);
  ck_assert_msg(rc == 0, "rc %d: %s", rc, out);
  ck_assert_str_eq(out, "True 10 10 10 0 0 {} True 1 1 1 False False 0 []\n");
  free(out);
  echo_down(&e);
}
END_TEST

/* --hold keeps the connections: uvip-stat sees them on their source
 * address, as a tuple and in the VIP row; with the port range made small,
 * its --watch reports the tuple crossing the ports threshold. SIGINT ends
 * the run with everything counted as succeeded. */
START_TEST(loadgen_hold_stat) {
  tx_proc_t e, g;
  char err[8192] = "", want[256];
  int rc;
  th_enter_netns();
  set_port_range(40000, 40059); /* 50 of 60 ports: 83% >= 80% */
  echo_up(&e, "127.0.0.1", 1);
  const char *args[] = {"--hold", "--seconds", "60", "--conns", "50",
                        "--sources", "127.0.0.9", NULL};
  loadgen_spawn(&g, args);
  /* The progress line, once a second, shows all 50 open. */
  tx_expect_line(g.err, ", open 50, verified 0, pending 0, failed 0", err,
                 sizeof(err));
  HAS(err, "uvip-loadgen: 1s: established 50 (+50/s), open 50,");

  char cmd[1024];
  snprintf(cmd, sizeof(cmd), "%s --vips 127.0.0.9 --top 1", tx_bin("uvip-stat"));
  char *out = tx_run(cmd, &rc);
  ck_assert_msg(rc == 0, "rc %d: %s", rc, out);
  HAS(out, "ports 40000-40059: 60 usable per tuple");
  HAS(out, "(1 tuple, worst first)");
  snprintf(want, sizeof(want), "\n%-24s %-32s %8d %8d %6.2f%%\n", "127.0.0.9",
           "127.0.0.1:7000", 50, 0, 50 * 100.0 / 60);
  HAS(out, want);
  /* The VIP row: 50 established, all outbound. */
  snprintf(want, sizeof(want), "\n%-24s %7d", "127.0.0.9", 50);
  HAS(out, want);
  HAS(out, "       0       50\nTOTAL");
  free(out);

  /* Two table samples: the separator, the counters' delta, the event. */
  snprintf(cmd, sizeof(cmd), "%s --vips 127.0.0.9 --watch 0.01 --count 2",
           tx_bin("uvip-stat"));
  out = tx_run(cmd, &rc);
  ck_assert_msg(rc == 0, "rc %d: %s", rc, out);
  HAS(out, "\n----\n");
  HAS(out, "\nsince last sample: ListenOverflows +");
  HAS(out, "event: ports RAISED value 0.833 threshold 0.800 127.0.0.9 -> "
           "127.0.0.1:7000\n");
  free(out);

  ck_assert_int_eq(kill(g.pid, SIGINT), 0);
  char rest[4096] = "";
  tx_read_rest(g.out, rest, sizeof(rest));
  tx_read_rest(g.err, NULL, 0);
  ck_assert_int_eq(tx_wait_exit(&g), 0);
  HAS(rest, "uvip-loadgen: 50 connections to 1 target, 1 source, 1 process: "
            "established 50, verified 0, peak open 50, failed 0 in ");
  HAS(rest, "ok: every connection succeeded");
  echo_down(&e);
}
END_TEST

/* A source address runs out of ports: the failures are named, and so is
 * the (source, target) pair that ran out, in text and in JSON. */
START_TEST(loadgen_exhausted) {
  tx_proc_t e;
  int rc;
  th_enter_netns();
  set_port_range(40000, 40009);
  echo_up(&e, "127.0.0.1", 1);

  char *out = loadgen("--conns 20 --sources 127.0.0.9", &rc);
  ck_assert_msg(rc == 1, "rc %d: %s", rc, out);
  HAS(out, "20 connections to 1 target, 1 source, 1 process: established 10, "
           "verified 0, peak open 10, failed 10 (EADDRNOTAVAIL 10) in ");
  HAS(out, "uvip-loadgen: ports exhausted for 127.0.0.9 -> 127.0.0.1:7000: 10 "
           "of 10 ephemeral ports in use; add --sources or more --target "
           "VIPs\n");
  HAS(out, "uvip-loadgen: FAILED\n");
  free(out);

  /* Two sources: twice the ports. (Fresh ones: the ports of the run above
   * are in TIME_WAIT now, since uvip-loadgen closed first.) */
  out = loadgen("--conns 30 --sources 127.0.0.10 --sources 127.0.0.11", &rc);
  ck_assert_msg(rc == 1, "rc %d: %s", rc, out);
  HAS(out, "established 20, verified 0, peak open 20, failed 10 "
           "(EADDRNOTAVAIL 10)");
  HAS(out, "ports exhausted for 2 sources -> 127.0.0.1:7000: 20 of 20 "
           "ephemeral ports in use");
  free(out);

  /* The kernel's choice of source, in JSON. */
  char cmd[1024];
  snprintf(cmd, sizeof(cmd), "%s --conns 12 --json 2>/dev/null",
           tx_bin("uvip-loadgen"));
  out = tx_run(cmd, &rc);
  ck_assert_msg(rc == 1, "rc %d: %s", rc, out);
  HAS(out, "{\"ok\":false,\"conns\":12,\"attempted\":12,\"established\":10,"
           "\"verified\":0,\"peak_open\":10,\"failed_total\":2,\"failed\":{"
           "\"EADDRNOTAVAIL\":2},\"seconds\":");
  HAS(out, ",\"establish_seconds\":null,\"procs\":1,\"targets\":1,\"sources\":0,"
           "\"echo\":false,\"hold\":false,\"churn\":0,\"exhausted\":[{\"source\":"
           "\"127.0.0.1\",\"target\":\"127.0.0.1:7000\",\"in_use\":10,\"ports\":"
           "10}],\"connect_ms\":{\"p50\":");
  {
    /* The connect latencies of the 10 that connected, in order. */
    double p50, p90, p99, max;
    const char *lat = strstr(out, "\"connect_ms\":{");
    ck_assert_int_eq(sscanf(lat, "\"connect_ms\":{\"p50\":%lf,\"p90\":%lf,"
                                 "\"p99\":%lf,\"max\":%lf}}\n",
                            &p50, &p90, &p99, &max), 4);
    ck_assert(p50 <= p90 && p90 <= p99 && p99 <= max);
    ck_assert(max > 0);
  }
  free(out);
  echo_down(&e);
}
END_TEST

/* Nothing listens: every connection is refused, exit 1. A source of the
 * wrong family fails each attempt at once. */
START_TEST(loadgen_refused) {
  int rc;
  th_enter_netns();
  char *out = loadgen("--conns 5", &rc);
  ck_assert_msg(rc == 1, "rc %d: %s", rc, out);
  HAS(out, "uvip-loadgen: 5 connections to 1 target, 0 sources, 1 process: "
           "established 0, verified 0, peak open 0, failed 5 (ECONNREFUSED 5) "
           "in ");
  HAS(out, "uvip-loadgen: FAILED\n");
  /* No latencies without a connection. */
  ck_assert_ptr_null(strstr(out, "connect latency"));
  free(out);

  out = loadgen("--conns 2 --sources ::1", &rc);
  ck_assert_msg(rc == 1, "rc %d: %s", rc, out);
  HAS(out, "established 0, verified 0, peak open 0, failed 2 "
           "(EAFNOSUPPORT 2)");
  free(out);
}
END_TEST

/* --echo against a peer that answers wrong, closes, or answers right: one
 * failure of each kind, one verified. */
START_TEST(loadgen_bad_peer) {
  tx_proc_t g;
  char rest[4096] = "";
  th_enter_netns();
  int lfd = test_listener();
  const char *args[] = {"--echo", "--conns", "3", "--seconds", "60", NULL};
  loadgen_spawn(&g, args);
  int a = accept_one(lfd), b = accept_one(lfd), c = accept_one(lfd);
  char byte;
  ck_assert_int_eq(write(a, "x", 1), 1);
  /* Read first: closing with unread data would be a reset, not an end. */
  ck_assert_int_eq(read(b, &byte, 1), 1);
  ck_assert_int_eq(byte, 'u');
  close(b);
  ck_assert_int_eq(write(c, "u", 1), 1);
  tx_read_rest(g.out, rest, sizeof(rest));
  tx_read_rest(g.err, NULL, 0);
  ck_assert_int_eq(tx_wait_exit(&g), 1);
  HAS(rest, "3 connections to 1 target, 0 sources, 1 process: established 3, "
            "verified 1, peak open 3, failed 2 (");
  HAS(rest, "EPROTO 1");
  HAS(rest, "EOF 1");
  HAS(rest, "uvip-loadgen: FAILED\n");
  close(a);
  close(c);
  close(lfd);
}
END_TEST

/* --echo against a peer that never answers: the deadline fails what has
 * not been verified, with ETIMEDOUT. */
START_TEST(loadgen_deadline) {
  int rc;
  th_enter_netns();
  int lfd = test_listener();
  char *out = loadgen("--echo --conns 3 --seconds 1", &rc);
  ck_assert_msg(rc == 1, "rc %d: %s", rc, out);
  HAS(out, "3 connections to 1 target, 0 sources, 1 process: established 3, "
           "verified 0, peak open 3, failed 3 (ETIMEDOUT 3) in ");
  free(out);
  close(lfd);
}
END_TEST

/* --hold: stray bytes from the peer are ignored, a peer that closes a held
 * connection is a failure (seen on the next progress line), and the end of
 * the run closes the others. */
START_TEST(loadgen_hold_drop) {
  tx_proc_t g;
  char err[8192] = "", rest[4096] = "";
  th_enter_netns();
  int lfd = test_listener();
  const char *args[] = {"--hold", "--conns", "2", "--seconds", "60", NULL};
  loadgen_spawn(&g, args);
  int a = accept_one(lfd), b = accept_one(lfd);
  ck_assert_int_eq(write(a, "zz", 2), 2);
  close(b);
  tx_expect_line(g.err, "open 1, verified 0, pending 0, failed 1 (EOF 1)", err,
                 sizeof(err));
  ck_assert_int_eq(kill(g.pid, SIGTERM), 0);
  tx_read_rest(g.out, rest, sizeof(rest));
  tx_read_rest(g.err, NULL, 0);
  ck_assert_int_eq(tx_wait_exit(&g), 1);
  HAS(rest, "2 connections to 1 target, 0 sources, 1 process: established 2, "
            "verified 0, peak open 2, failed 1 (EOF 1) in ");
  tx_expect_eof(a);
  close(a);
  close(lfd);
}
END_TEST

/* The children of pid (its worker processes). */
static int children_of(pid_t pid, pid_t *out, int max) {
  char path[64], buf[256];
  int n = 0;
  snprintf(path, sizeof(path), "/proc/%d/task/%d/children", (int)pid, (int)pid);
  FILE *f = fopen(path, "r");
  ck_assert_ptr_nonnull(f);
  if (fgets(buf, sizeof(buf), f) != NULL)
    for (char *s = strtok(buf, " \n"); s && n < max; s = strtok(NULL, " \n"))
      out[n++] = (pid_t)atoi(s);
  fclose(f);
  return n;
}

/* --procs 2: the workers' reports add up on the parent's progress line and
 * in the summary; a signal to the parent reaches both workers. */
START_TEST(loadgen_procs) {
  tx_proc_t e, g;
  char err[8192] = "", rest[4096] = "";
  th_enter_netns();
  echo_up(&e, "127.0.0.1-127.0.0.4", 4);
  const char *args[] = {"--procs", "2", "--hold", "--echo", "--conns", "20",
                        "--target", "127.0.0.1-127.0.0.4", "--seconds", "60",
                        NULL};
  loadgen_spawn(&g, args);
  tx_expect_line(g.err, "open 20, verified 20, pending 0, failed 0", err,
                 sizeof(err));
  pid_t kids[4];
  ck_assert_int_eq(children_of(g.pid, kids, 4), 2);
  ck_assert_int_eq(kill(g.pid, SIGTERM), 0);
  tx_read_rest(g.out, rest, sizeof(rest));
  tx_read_rest(g.err, err, sizeof(err));
  ck_assert_int_eq(tx_wait_exit(&g), 0);
  HAS(rest, "uvip-loadgen: 20 connections to 4 targets, 0 sources, 2 "
            "processes: established 20, verified 20, peak open 20, failed 0 "
            "in ");
  HAS(rest, "ok: every connection succeeded");
  /* Both workers got the signal and ended: no child is left. */
  for (int i = 0; i < 2; i++)
    ck_assert_int_eq(kill(kids[i], 0), -1);
  echo_down(&e);
}
END_TEST

/* A worker process killed: the parent says which one and how, notes the
 * missing final report, and fails the run. */
START_TEST(loadgen_procs_worker_killed) {
  tx_proc_t e, g;
  char err[8192] = "", rest[4096] = "", want[128];
  th_enter_netns();
  echo_up(&e, "127.0.0.1", 1);
  const char *args[] = {"--procs", "2", "--hold", "--conns", "10",
                        "--seconds", "60", NULL};
  loadgen_spawn(&g, args);
  tx_expect_line(g.err, "open 10, verified 0, pending 0, failed 0", err,
                 sizeof(err));
  pid_t kids[4];
  ck_assert_int_eq(children_of(g.pid, kids, 4), 2);
  ck_assert_int_eq(kill(kids[0], SIGKILL), 0);
  ck_assert_int_eq(kill(g.pid, SIGTERM), 0);
  tx_read_rest(g.out, rest, sizeof(rest));
  tx_read_rest(g.err, err, sizeof(err));
  ck_assert_int_eq(tx_wait_exit(&g), 1);
  HAS(rest, "uvip-loadgen: a worker process ended without its final report\n");
  HAS(rest, "uvip-loadgen: FAILED\n");
  snprintf(want, sizeof(want), "(pid %d) killed by signal 9\n", (int)kids[0]);
  HAS(err, want);
  echo_down(&e);
}
END_TEST

/* Established client sockets connected to rem ("0100007F:1B58" is
 * 127.0.0.1:7000), from the namespace's /proc/net/tcp. */
static int established_to(const char *rem) {
  FILE *f = fopen("/proc/self/net/tcp", "r");
  char line[512], r[64];
  unsigned st;
  int n = 0;
  ck_assert_ptr_nonnull(f);
  while (fgets(line, sizeof(line), f))
    if (sscanf(line, " %*s %*s %63s %x", r, &st) == 2 && st == 1 &&
        strcmp(r, rem) == 0)
      n++;
  fclose(f);
  return n;
}

/* --procs: a worker that is done keeps its connections until every worker
 * is, so that their teardown does not slow the workers still connecting.
 * Worker 0's connections go to an echo server, worker 1's to a listener
 * that never answers: once worker 0 is done (its 8 verified), its
 * connections stay open while worker 1 still waits. */
START_TEST(loadgen_procs_hold_until_all_done) {
  tx_proc_t e, g;
  char err[8192] = "", rest[4096] = "";
  struct sockaddr_storage sa;
  int lfd;
  th_enter_netns();
  echo_up(&e, "127.0.0.1", 1);
  lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ck_assert_int_ge(lfd, 0);
  th_addr("127.0.0.2", PORT, &sa);
  ck_assert_int_eq(bind(lfd, (struct sockaddr *)&sa, sizeof(struct sockaddr_in)), 0);
  ck_assert_int_eq(listen(lfd, 64), 0);
  const char *args[] = {"--procs", "2", "--echo", "--conns", "16",
                        "--target", "127.0.0.1,127.0.0.2", "--seconds", "60",
                        NULL};
  loadgen_spawn(&g, args);
  tx_expect_line(g.err, "open 16, verified 8, pending 8, failed 0", err,
                 sizeof(err));
  ck_assert_int_eq(established_to("0100007F:1B58"), 8);
  ck_assert_int_eq(kill(g.pid, SIGTERM), 0);
  tx_read_rest(g.out, rest, sizeof(rest));
  tx_read_rest(g.err, err, sizeof(err));
  ck_assert_int_eq(tx_wait_exit(&g), 1);
  HAS(rest, "verified 8, peak open 16, failed 8 (ECANCELED 8)");
  close(lfd);
  echo_down(&e);
}
END_TEST

/* --churn: connections are replaced for --seconds, every one verified; the
 * run then waits for the replacements in flight and succeeds. */
START_TEST(loadgen_churn) {
  tx_proc_t e;
  int rc;
  th_enter_netns();
  echo_up(&e, "127.0.0.1-127.0.0.4", 4);
  char *out = loadgen("--target 127.0.0.1-127.0.0.4 --conns 20 --echo "
                      "--churn 200 --seconds 1 --json", &rc);
  ck_assert_msg(rc == 0, "rc %d: %s", rc, out);
  HAS(out, "ok: every connection succeeded");
  unsigned long long est = tx_num_after(out, "\"established\":");
  unsigned long long att = tx_num_after(out, "\"attempted\":");
  unsigned long long ver = tx_num_after(out, "\"verified\":");
  ck_assert_msg(est > 20, "no connection replaced:\n%s", out);
  ck_assert_uint_eq(att, est);
  ck_assert_uint_eq(ver, est);
  HAS(out, "\"failed_total\":0,");
  HAS(out, "\"churn\":200,");
  free(out);
  echo_down(&e);
}
END_TEST

/* Bad arguments: one line naming the problem, exit 2. */
START_TEST(loadgen_bad_arguments) {
  static const struct {
    const char *args, *msg;
  } cases[] = {
      {"--conns x", "uvip-loadgen: --conns: expected a number from 0 to "
                    "100000000, got 'x'"},
      {"--procs 0", "uvip-loadgen: --procs: expected a number from 1 to 1024, "
                    "got '0'"},
      {"--port", "uvip-loadgen: option '--port' needs a value or is unknown; "
                 "see --help"},
      {"--bogus", "uvip-loadgen: unknown option '--bogus'; see --help"},
      {"stray", "uvip-loadgen: unexpected argument 'stray'; see --help"},
      {"--target 300.1.1.1", "uvip-loadgen: --target: "},
      {"--sources 127.0.0.1:80", "uvip-loadgen: --sources: addresses take no "
                                 "port (the kernel picks it)"},
  };
  char cmd[2048];
  int rc;
  th_enter_netns();
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    char *out = loadgen(cases[i].args, &rc);
    ck_assert_msg(rc == 2, "%s: rc %d: %s", cases[i].args, rc, out);
    ck_assert_msg(strstr(out, cases[i].msg) != NULL, "%s: no '%s' in: %s",
                  cases[i].args, cases[i].msg, out);
    free(out);
  }
  /* 65 --target options. */
  size_t len = 0;
  for (int i = 0; i < 65; i++)
    len += (size_t)snprintf(cmd + len, sizeof(cmd) - len, "--target 127.0.0.%d ",
                            i + 1);
  char *out = loadgen(cmd, &rc);
  ck_assert_msg(rc == 2 && strstr(out, "too many --target options"), "rc %d: %s",
                rc, out);
  free(out);
  /* More connections than the descriptor limit allows in one process. */
  snprintf(cmd, sizeof(cmd), "ulimit -n 256 && %s --conns 1000",
           tx_bin("uvip-loadgen"));
  out = tx_run(cmd, &rc);
  ck_assert_msg(rc == 2, "rc %d: %s", rc, out);
  HAS(out, "uvip-loadgen: 1000 connections per process exceed the descriptor "
           "limit (256); use --procs 6 or more");
  free(out);
  out = loadgen("--help", &rc);
  ck_assert_msg(rc == 0, "rc %d: %s", rc, out);
  HAS(out, "usage: uvip-loadgen [options]\n");
  HAS(out, "  --churn RATE ");
  free(out);
}
END_TEST

/* ---- uvip-stat events ----------------------------------------------------- */

/* A listener whose accept queue is full: uvip-stat --watch says so, naming
 * the listener. */
START_TEST(stat_listen_queue_event) {
  int rc, fds[4];
  struct sockaddr_storage dst;
  th_enter_netns();
  int lfd = test_listener_backlog(4);
  th_addr("127.0.0.1", PORT, &dst);
  for (int i = 0; i < 4; i++)
    fds[i] = th_connect((struct sockaddr *)&dst, NULL);
  char cmd[1024];
  snprintf(cmd, sizeof(cmd), "%s --vips 127.0.0.1 --watch 0.01 --count 1 "
           "--json", tx_bin("uvip-stat"));
  char *out = tx_run(cmd, &rc);
  ck_assert_msg(rc == 0, "rc %d: %s", rc, out);
  HAS(out, "event: listen_queue RAISED value 1.000 threshold 0.800 "
           "127.0.0.1:7000\n");
  HAS(out, "{\"address\":\"127.0.0.1:7000\",\"queue\":4,\"backlog\":4,");
  free(out);
  for (int i = 0; i < 4; i++)
    close(fds[i]);
  close(lfd);
}
END_TEST

/* uvip-stat --watch on a churn workload that exhausts its range (100
 * ports, 10 connections replaced 20 times a second, each replacement
 * leaving a TIME_WAIT that holds its port 60 s): the forecast line says
 * when, and the exhaustion event comes before the last port is gone (a
 * positive number of seconds left; exhausted would be 0). */
START_TEST(stat_forecast_churn) {
  tx_proc_t e, st, g;
  char seen[65536] = "", line[512];
  th_enter_netns();
  set_port_range(40000, 40099);
  FILE *f = fopen("/proc/sys/net/ipv4/tcp_tw_reuse", "w");
  ck_assert_ptr_nonnull(f);
  fprintf(f, "0\n"); /* 2, loopback reuse, would recycle TIME_WAIT ports */
  ck_assert_int_eq(fclose(f), 0);
  echo_up(&e, "127.0.0.1", 1);
  const char *sargv[] = {tx_bin("uvip-stat"), "--vips", "127.0.0.1", "--watch",
                         "0.2", "--top", "1", "--exhaustion", "30", NULL};
  tx_spawn(&st, sargv);
  const char *gargs[] = {"--target", "127.0.0.1", "--conns", "10", "--churn",
                         "20", "--seconds", "60", "--echo", NULL};
  loadgen_spawn(&g, gargs);
  tx_expect_line(st.out, ": exhausted in ", seen, sizeof(seen));
  const char *l = strstr(seen, "127.0.0.1 -> 127.0.0.1:7000: 100 ports, ");
  ck_assert_msg(l != NULL, "%s", seen);
  ck_assert_msg(strstr(l, " new/s, TIME_WAIT 60 s: exhausted in ") != NULL,
                "%s", seen);
  line[0] = 0;
  tx_expect_line(st.err, "event: exhaustion RAISED value ", line, sizeof(line));
  double left = atof(strstr(line, "value ") + 6);
  ck_assert_msg(left > 0 && left <= 30, "%s", line);
  HAS(line, " threshold 30.000 127.0.0.1 -> 127.0.0.1:7000\n");
  ck_assert_int_eq(kill(g.pid, SIGTERM), 0);
  tx_read_rest(g.out, NULL, 0);
  tx_read_rest(g.err, NULL, 0);
  tx_wait_exit(&g);
  ck_assert_int_eq(kill(st.pid, SIGINT), 0);
  tx_read_rest(st.out, NULL, 0);
  tx_read_rest(st.err, NULL, 0);
  ck_assert_int_eq(tx_wait_exit(&st), 0);
  echo_down(&e);
}
END_TEST

/* ---- uvip-echo --provision ------------------------------------------------ */

static char *lo_addrs(void) {
  char *out = th_cmd_output("ip -4 -o addr show dev lo");
  ck_assert_ptr_nonnull(out);
  return out;
}

/* --provision adds the pool's missing addresses to the interface, serves
 * on them, and removes those it added (only those) when it exits. */
START_TEST(echo_provision) {
  tx_proc_t p;
  char out[4096] = "", rest[4096] = "";
  th_enter_netns();
  /* One of the four is there already: it is not ours to remove. */
  ck_assert_int_eq(system("ip addr add 10.77.0.2/32 dev lo"), 0);
  const char *argv[] = {tx_bin("uvip-echo"), "--listen", "10.77.0.1-10.77.0.4",
                        "--port", "7000", "--provision", "lo", NULL};
  tx_spawn(&p, argv);
  tx_expect_line(p.out, "serving 4 of 4 VIPs", out, sizeof(out));
  HAS(out, "uvip-echo: added 3 addresses to lo (1 were there already)\n");
  char *a = lo_addrs();
  for (int i = 1; i <= 4; i++) {
    char want[32];
    snprintf(want, sizeof(want), " 10.77.0.%d/", i);
    HAS(a, want);
  }
  free(a);
  struct sockaddr_storage dst;
  th_addr("10.77.0.3", PORT, &dst);
  int fd = th_connect((struct sockaddr *)&dst, NULL);
  tx_echo_check(fd, "on a provisioned address");
  close(fd);

  ck_assert_int_eq(kill(p.pid, SIGTERM), 0);
  tx_read_rest(p.out, rest, sizeof(rest));
  tx_read_rest(p.err, NULL, 0);
  ck_assert_int_eq(tx_wait_exit(&p), 0);
  HAS(rest, "uvip-echo: removed the 3 addresses it added\n");
  HAS(rest, "uvip-echo: bye\n");
  a = lo_addrs();
  ck_assert_msg(strstr(a, " 10.77.0.2/32") != NULL, "%s", a);
  for (int i = 1; i <= 4; i++) {
    char want[32];
    snprintf(want, sizeof(want), " 10.77.0.%d/", i);
    ck_assert_msg(i == 2 || strstr(a, want) == NULL, "%s still there:\n%s",
                  want, a);
  }
  free(a);

  /* An interface that does not exist: exit 1, nothing added. */
  int rc;
  char cmd[1024];
  snprintf(cmd, sizeof(cmd), "%s --listen 10.77.0.1 --provision nosuchif0",
           tx_bin("uvip-echo"));
  char *o = tx_run(cmd, &rc);
  ck_assert_msg(rc == 1, "rc %d: %s", rc, o);
  HAS(o, "uvip-echo: --provision nosuchif0: ");
  free(o);
}
END_TEST

int main(void) {
  /* Every test runs in a namespace of its own. */
  th_require_netns_or_skip();
  Suite *s = suite_create("examples-netns");
  TCase *tc = tcase_create("examples-netns");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, loadgen_echo);
  tcase_add_test(tc, loadgen_hold_stat);
  tcase_add_test(tc, loadgen_exhausted);
  tcase_add_test(tc, loadgen_refused);
  tcase_add_test(tc, loadgen_bad_peer);
  tcase_add_test(tc, loadgen_deadline);
  tcase_add_test(tc, loadgen_hold_drop);
  tcase_add_test(tc, loadgen_procs);
  tcase_add_test(tc, loadgen_procs_worker_killed);
  tcase_add_test(tc, loadgen_procs_hold_until_all_done);
  tcase_add_test(tc, loadgen_churn);
  tcase_add_test(tc, loadgen_bad_arguments);
  tcase_add_test(tc, stat_listen_queue_event);
  tcase_add_test(tc, stat_forecast_churn);
  tcase_add_test(tc, echo_provision);
  suite_add_tcase(s, tc);
  return th_run_suite(s);
}
