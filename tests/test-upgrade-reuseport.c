/* Upgrades with REUSEPORT workers (uvip-echo --balance reuseport, thread
 * and process workers), each test in a network namespace of its own with
 * net.ipv4.tcp_migrate_req set there: SIGUSR2 starts a generation whose
 * workers bind listeners of their own into the same groups, the old
 * workers close theirs and move their idle connections, which echo on in
 * the new generation's workers; exactly one generation is left. And the
 * old workers' last act before closing a listener: what is queued on it is
 * accepted and served, not reset (tcp_migrate_req=0 there, so that nothing
 * else could save it).
 * Needs root and CLONE_NEWNET (else exit 77, before any check fork).
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

#define PORT 7000
#define MIGRATE "/proc/sys/net/ipv4/tcp_migrate_req"

static void set_migrate(const char *v) {
  FILE *f = fopen(MIGRATE, "w");
  ck_assert_msg(f != NULL, MIGRATE ": %s", strerror(errno));
  ck_assert_int_ge(fputs(v, f), 0);
  ck_assert_int_eq(fclose(f), 0);
}

static void echo_roundtrip(int fd, const char *msg) {
  char buf[32] = "";
  struct timeval tv = {10, 0}; /* a bound, not a synchronisation */
  size_t n = strlen(msg);
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ck_assert_int_eq(write(fd, msg, n), (ssize_t)n);
  ck_assert_int_eq(read(fd, buf, n), (ssize_t)n);
  ck_assert_str_eq(buf, msg);
}

static pid_t read_pid_file(const char *path) {
  FILE *f = fopen(path, "r");
  int pid = 0;
  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(fscanf(f, "%d", &pid), 1);
  fclose(f);
  return pid;
}

/* Our children, as the kernel lists them (the test process has one
 * thread). */
static void children(char *out, size_t len) {
  char path[64];
  FILE *f;
  size_t n;
  snprintf(path, sizeof(path), "/proc/self/task/%d/children", (int)getpid());
  f = fopen(path, "r");
  ck_assert_msg(f != NULL, "%s: %s", path, strerror(errno));
  n = fread(out, 1, len - 1, f);
  out[n] = 0;
  fclose(f);
}

/* uvip-echo --workers 2 --balance reuseport, five long-lived connections
 * on two VIPs: one SIGUSR2 moves all five to the new generation's workers;
 * they echo on after the old generation has exited, a new connection is
 * served, and the new generation is our only child. */
static void echo_reuseport(const char *mode) {
  const char *bdir = getenv("UVIP_BUILD_DIR");
  char echo[512], portstr[16], pidf[64], log[16384] = "", kids[256], want[32];
  int pfd[2], fds[5], st;
  struct sockaddr_storage sa;
  pid_t first, second;
  FILE *out;

  ck_assert_ptr_nonnull(bdir);
  th_enter_netns();
  set_migrate("1");
  ck_assert_int_eq(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
  snprintf(echo, sizeof(echo), "%s/examples/uvip-echo", bdir);
  snprintf(portstr, sizeof(portstr), "%d", PORT);
  snprintf(pidf, sizeof(pidf), "/tmp/uvip-test-upgrade-rp-%d.pid", getpid());
  ck_assert_int_eq(pipe(pfd), 0);
  first = fork();
  ck_assert_int_ge(first, 0);
  if (first == 0) {
    dup2(pfd[1], 1);
    dup2(pfd[1], 2);
    execl(echo, echo, "--listen", "127.0.0.1-127.0.0.2", "--port", portstr,
          "--pid-file", pidf, "--shutdown-timeout", "3000", "--workers", "2",
          "--worker-mode", mode, "--balance", "reuseport",
          "--upgrade-probation-ms", "200", (char *)NULL);
    _exit(127);
  }
  close(pfd[1]);
  out = fdopen(pfd[0], "r");
  th_read_until(out, "every worker listens on the 2 VIPs", log, sizeof(log));
  ck_assert_int_eq(read_pid_file(pidf), first);
  for (int i = 0; i < 5; i++) {
    th_addr(i % 2 ? "127.0.0.2" : "127.0.0.1", PORT, &sa);
    fds[i] = th_connect((struct sockaddr *)&sa, NULL);
    echo_roundtrip(fds[i], "one");
  }
  log[0] = 0;
  ck_assert_int_eq(kill(first, SIGUSR2), 0);
  th_read_until(out, "drained: no connection left", log, sizeof(log));
  th_read_until(out, "bye", log, sizeof(log));
  ck_assert_int_eq(waitpid(first, &st, 0), first);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s", log);
  if (!strstr(log, "received 5 connections"))
    th_read_until(out, "received 5 connections", log, sizeof(log));
  ck_assert_msg(strstr(log, "still accepting here (reuseport)"), "%s", log);
  ck_assert_msg(strstr(log, "upgrade: moved 5 connections, 0 drain here"),
                "%s", log);
  second = read_pid_file(pidf);
  ck_assert_int_ne(second, first);
  /* The old generation and its workers are gone (it reaped them before
   * "bye"): the new one, reparented to us, is all that is left. */
  children(kids, sizeof(kids));
  snprintf(want, sizeof(want), "%d ", (int)second);
  ck_assert_msg(!strcmp(kids, want), "children '%s', want '%s'", kids, want);
  for (int i = 0; i < 5; i++)
    echo_roundtrip(fds[i], "two");
  for (int i = 0; i < 4; i++) {
    int c;
    th_addr(i % 2 ? "127.0.0.2" : "127.0.0.1", PORT, &sa);
    c = th_connect((struct sockaddr *)&sa, NULL);
    echo_roundtrip(c, "new");
    close(c);
  }
  for (int i = 0; i < 5; i++)
    close(fds[i]);
  ck_assert_int_eq(kill(second, SIGTERM), 0);
  th_read_until(out, "bye", log, sizeof(log));
  ck_assert_int_eq(waitpid(second, &st, 0), second);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s", log);
  fclose(out);
  unlink(pidf);
}

START_TEST(test_echo_thread_workers_reuseport_sigusr2) {
  echo_reuseport("thread");
}
END_TEST

START_TEST(test_echo_process_workers_reuseport_sigusr2) {
  echo_reuseport("process");
}
END_TEST

/* The pid in the old generation's "upgrade: started generation N". */
static pid_t started_pid(const char *log) {
  const char *p = strstr(log, "upgrade: started generation ");
  int pid = 0;
  ck_assert_msg(p != NULL, "%s", log);
  ck_assert_int_eq(sscanf(p, "upgrade: started generation %d", &pid), 1);
  return pid;
}

/* The new generation killed during its probation (long enough that the
 * kill comes within it): the old one never stopped accepting, serves new
 * connections and its own on, and can be upgraded again. */
START_TEST(test_echo_reuseport_probation_crash) {
  const char *bdir = getenv("UVIP_BUILD_DIR");
  char echo[512], portstr[16], pidf[64], log[16384] = "", want[96];
  int pfd[2], fd, st;
  struct sockaddr_storage sa;
  pid_t first, second;
  FILE *out;

  ck_assert_ptr_nonnull(bdir);
  th_enter_netns();
  set_migrate("1");
  ck_assert_int_eq(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
  snprintf(echo, sizeof(echo), "%s/examples/uvip-echo", bdir);
  snprintf(portstr, sizeof(portstr), "%d", PORT);
  snprintf(pidf, sizeof(pidf), "/tmp/uvip-test-rp-crash-%d.pid", getpid());
  ck_assert_int_eq(pipe(pfd), 0);
  first = fork();
  ck_assert_int_ge(first, 0);
  if (first == 0) {
    dup2(pfd[1], 1);
    dup2(pfd[1], 2);
    execl(echo, echo, "--listen", "127.0.0.1", "--port", portstr,
          "--pid-file", pidf, "--workers", "2", "--worker-mode", "process",
          "--balance", "reuseport", "--upgrade-probation-ms", "600000",
          (char *)NULL);
    _exit(127);
  }
  close(pfd[1]);
  out = fdopen(pfd[0], "r");
  th_read_until(out, "every worker listens on the 1 VIPs", log, sizeof(log));
  th_addr("127.0.0.1", PORT, &sa);
  fd = th_connect((struct sockaddr *)&sa, NULL);
  echo_roundtrip(fd, "one");
  log[0] = 0;
  ck_assert_int_eq(kill(first, SIGUSR2), 0);
  th_read_until(out, "still accepting here (reuseport)", log, sizeof(log));
  second = started_pid(log);
  ck_assert_int_eq(kill(second, SIGKILL), 0);
  snprintf(want, sizeof(want),
           "generation %d was killed by signal 9 after ready; serving again",
           (int)second);
  th_read_until(out, want, log, sizeof(log));
  /* Only the old generation's sockets are left in the group. */
  for (int i = 0; i < 4; i++) {
    int c = th_connect((struct sockaddr *)&sa, NULL);
    echo_roundtrip(c, "new");
    close(c);
  }
  echo_roundtrip(fd, "two");
  /* Upgradable again; that generation ends (SIGTERM) on probation too,
   * then the old one. */
  log[0] = 0;
  ck_assert_int_eq(kill(first, SIGUSR2), 0);
  th_read_until(out, "still accepting here (reuseport)", log, sizeof(log));
  second = started_pid(log);
  ck_assert_int_eq(kill(second, SIGTERM), 0);
  snprintf(want, sizeof(want),
           "generation %d exited with status 0 after ready; serving again",
           (int)second);
  th_read_until(out, want, log, sizeof(log));
  echo_roundtrip(fd, "three");
  close(fd);
  ck_assert_int_eq(kill(first, SIGTERM), 0);
  th_read_until(out, "bye", log, sizeof(log));
  ck_assert_int_eq(waitpid(first, &st, 0), first);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s", log);
  fclose(out);
  unlink(pidf);
}
END_TEST

/* One keep-alive GET: the whole response on the same connection. */
static void http_get(int fd) {
  const char *req = "GET / HTTP/1.1\r\nHost: t\r\n\r\n";
  char buf[2048];
  size_t got = 0;
  struct timeval tv = {10, 0}; /* a bound, not a synchronisation */
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ck_assert_int_eq(write(fd, req, strlen(req)), (ssize_t)strlen(req));
  for (;;) {
    ssize_t n = read(fd, buf + got, sizeof(buf) - 1 - got);
    char *h;
    ck_assert_msg(n > 0, "connection ended after %zu bytes", got);
    got += (size_t)n;
    buf[got] = 0;
    if ((h = strstr(buf, "\r\n\r\n")) && strchr(h + 4, '\n'))
      break;
  }
  ck_assert_msg(!strncmp(buf, "HTTP/1.1 200", 12), "%s", buf);
  ck_assert_msg(!strstr(buf, "Connection: close"), "%s", buf);
}

/* uvip-http --workers 2 --worker-mode process --balance reuseport:
 * SIGUSR2 moves the keep-alive connections between requests to the new
 * generation's workers; they go on answering after the old one exited. */
START_TEST(test_http_process_workers_reuseport_sigusr2) {
  const char *bdir = getenv("UVIP_BUILD_DIR");
  char http[512], portstr[16], pidf[64], log[16384] = "";
  int pfd[2], fds[3], st;
  struct sockaddr_storage sa;
  pid_t first, second;
  FILE *out;
  ck_assert_ptr_nonnull(bdir);
  th_enter_netns();
  set_migrate("1");
  ck_assert_int_eq(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
  snprintf(http, sizeof(http), "%s/examples/uvip-http", bdir);
  snprintf(portstr, sizeof(portstr), "%d", PORT);
  snprintf(pidf, sizeof(pidf), "/tmp/uvip-test-http-rp-%d.pid", getpid());
  ck_assert_int_eq(pipe(pfd), 0);
  first = fork();
  ck_assert_int_ge(first, 0);
  if (first == 0) {
    dup2(pfd[1], 1);
    dup2(pfd[1], 2);
    execl(http, http, "--listen", "127.0.0.1", "--port", portstr,
          "--pid-file", pidf, "--census-interval-ms", "0", "--workers", "2",
          "--worker-mode", "process", "--balance", "reuseport",
          "--upgrade-probation-ms", "200", (char *)NULL);
    _exit(127);
  }
  close(pfd[1]);
  out = fdopen(pfd[0], "r");
  th_read_until(out, "ready", log, sizeof(log));
  th_addr("127.0.0.1", PORT, &sa);
  for (int i = 0; i < 3; i++) {
    fds[i] = th_connect((struct sockaddr *)&sa, NULL);
    http_get(fds[i]);
  }
  ck_assert_int_eq(kill(first, SIGUSR2), 0);
  th_read_until(out, "moved 3 connections, 0 drain here", log, sizeof(log));
  ck_assert_int_eq(waitpid(first, &st, 0), first);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s", log);
  if (!strstr(log, "received 3 connections"))
    th_read_until(out, "received 3 connections", log, sizeof(log));
  second = read_pid_file(pidf);
  ck_assert_int_ne(second, first);
  for (int i = 0; i < 3; i++) {
    http_get(fds[i]);
    close(fds[i]);
  }
  ck_assert_int_eq(kill(second, SIGTERM), 0);
  ck_assert_int_eq(waitpid(second, &st, 0), second);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s", log);
  fclose(out);
  unlink(pidf);
}
END_TEST

/* ---- Queued connections are served before a worker's listener closes -- */

static int entered[2], release_pipe[2];
static int nconns; /* on the worker thread */

/* On the worker: the first connection stalls the worker (as a busy one
 * would) until the test has queued more and ordered the stop; each is
 * answered "hi" and closed. */
static void q_conn(uvip_server_t *s, uvip_conn_t *c) {
  int fd;
  char b;
  (void)s;
  if (nconns++ == 0) {
    ck_assert_int_eq(write(entered[1], "e", 1), 1);
    ck_assert_int_eq(read(release_pipe[0], &b, 1), 1);
  }
  ck_assert_int_eq(uv_fileno((uv_handle_t *)uvip_conn_tcp(c), &fd), 0);
  ck_assert_int_eq(write(fd, "hi", 2), 2);
  uvip_conn_close(c, NULL);
}

static bool q_ready, q_closed;
static void q_ready_cb(uvip_workers_t *w, unsigned int i, int status) {
  (void)w;
  (void)i;
  ck_assert_int_eq(status, 0);
  q_ready = true;
}
static void q_server_closed(uvip_server_t *s) {
  (void)s;
  q_closed = true;
}
static void q_workers_closed(uvip_workers_t *w) {
  uvip_server_close(uvip_workers_server(w), q_server_closed);
}

START_TEST(test_stop_listen_serves_queued) {
  uv_loop_t loop;
  uvip_server_t *s;
  uvip_workers_t *w;
  uvip_server_options_t o;
  uvip_workers_options_t wo;
  uvip_addrs_t *a;
  struct sockaddr_storage sa;
  int first, queued[3];
  char e;

  th_enter_netns();
  /* Nothing but the worker can save what is queued on its socket. */
  set_migrate("0");
  ck_assert_int_eq(pipe(entered), 0);
  ck_assert_int_eq(pipe(release_pipe), 0);
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  a = th_addrs("127.0.0.1", PORT);
  uvip_server_options_init(&o);
  o.accept_budget = 1; /* the stall ends the worker's accepting pass */
  ck_assert_int_eq(uvip_server_new(&loop, a, &o, &s), 0);
  uvip_addrs_free(a);
  uvip_workers_options_init(&wo);
  wo.nworkers = 1;
  wo.balance = UVIP_BALANCE_REUSEPORT;
  wo.ready_cb = q_ready_cb;
  ck_assert_int_eq(uvip_workers_new(s, &wo, &w), 0);
  ck_assert_int_eq(uvip_workers_listen(w, q_conn, NULL, 0), 0);
  th_run_until(&loop, &q_ready, 1000);

  th_addr("127.0.0.1", PORT, &sa);
  first = th_connect((struct sockaddr *)&sa, NULL);
  ck_assert_int_eq(read(entered[0], &e, 1), 1); /* the worker stalls */
  /* Handshakes complete in the kernel: these wait in the worker's queue. */
  for (int i = 0; i < 3; i++)
    queued[i] = th_connect((struct sockaddr *)&sa, NULL);
  /* The order reaches the worker before its next accepting pass. */
  ck_assert_int_eq(uvip_server_stop(s), 0);
  ck_assert_int_eq(write(release_pipe[1], "r", 1), 1);
  for (int i = 0; i < 4; i++) {
    char buf[4] = "";
    int fd = i ? queued[i - 1] : first;
    struct timeval tv = {10, 0}; /* a bound, not a synchronisation */
    ssize_t n;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    n = read(fd, buf, 2);
    ck_assert_msg(n == 2, "connection %d: %zd (%s)", i, n,
                  n < 0 ? strerror(errno) : "closed");
    ck_assert_str_eq(buf, "hi");
    close(fd);
  }
  ck_assert_int_eq(uvip_workers_close(w, q_workers_closed), 0);
  th_run_until(&loop, &q_closed, 1000);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

int main(void) {
  /* Before any check fork: without root, namespaces or the sysctl (Linux
   * 5.14), nothing here can run. */
  th_require_netns_or_skip();
  if (access(MIGRATE, F_OK) != 0) {
    fprintf(stderr, "skip: no " MIGRATE "\n");
    return 77;
  }
  Suite *s = suite_create("upgrade-reuseport");
  TCase *tc = tcase_create("upgrade-reuseport");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_stop_listen_serves_queued);
  tcase_add_test(tc, test_echo_thread_workers_reuseport_sigusr2);
  tcase_add_test(tc, test_echo_process_workers_reuseport_sigusr2);
  tcase_add_test(tc, test_http_process_workers_reuseport_sigusr2);
  tcase_add_test(tc, test_echo_reuseport_probation_crash);
  suite_add_tcase(s, tc);
  return th_run_suite(s);
}
