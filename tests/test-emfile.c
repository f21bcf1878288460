/* Out of descriptors: the server survives, does not spin, keeps serving
 * its connections, and accepts the queued ones once descriptors free.
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

#define QUEUED 10

/* What the loop would wait for: its active handles by kind. */
typedef struct {
  int timers, idles, checks, polls;
  uint64_t max_due_ms;
} active_t;

static void count_active(uv_handle_t *h, void *arg) {
  active_t *a = arg;
  if (!uv_is_active(h) || uv_is_closing(h))
    return;
  switch (h->type) {
  case UV_TIMER: {
    uint64_t due = uv_timer_get_due_in((uv_timer_t *)h);
    a->timers++;
    if (due > a->max_due_ms)
      a->max_due_ms = due;
    break;
  }
  case UV_IDLE:
    a->idles++;
    break;
  case UV_CHECK:
    a->checks++;
    break;
  case UV_POLL:
    a->polls++;
    break;
  default: /* an async handle only wakes the loop when sent to */
    break;
  }
}

/* The server is backing off and the loop would sleep: the back-off timer
 * (at most the 1 s ceiling away) is all that is armed, no idle or check
 * handle would make the next turn return at once, and the listeners are
 * not polled meanwhile. A spinning server would keep its idle handle
 * running. */
static void assert_sleeping_backoff(uv_loop_t *loop) {
  active_t a = {0, 0, 0, 0, 0};
  uv_walk(loop, count_active, &a);
  ck_assert_int_eq(a.idles, 0);
  ck_assert_int_eq(a.checks, 0);
  ck_assert_int_eq(a.polls, 0);
  ck_assert_int_eq(a.timers, 1);
  ck_assert_uint_le(a.max_due_ms, 1000);
}

/* The client side lives in another process so that its descriptors do not
 * count against the server's limit. It writes one byte on each connection
 * and expects it back. */
static pid_t spawn_clients(int port, int ready_fd, const int *fill, int nfill) {
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    struct rlimit rl;
    for (int i = 0; i < nfill; i++) /* the child needs descriptors */
      close(fill[i]);
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    struct sockaddr_storage sa;
    int fds[QUEUED];
    struct timeval tv = {20, 0};
    th_addr("127.0.0.1", port, &sa);
    for (int i = 0; i < QUEUED; i++) {
      fds[i] = socket(AF_INET, SOCK_STREAM, 0);
      setsockopt(fds[i], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
      if (connect(fds[i], (struct sockaddr *)&sa, sizeof(struct sockaddr_in)))
        _exit(10);
      if (write(fds[i], "e", 1) != 1)
        _exit(11);
    }
    if (write(ready_fd, "r", 1) != 1)
      _exit(12);
    for (int i = 0; i < QUEUED; i++) {
      char c;
      if (read(fds[i], &c, 1) != 1 || c != 'e')
        _exit(20 + i);
    }
    _exit(0);
  }
  return pid;
}

START_TEST(test_emfile_backoff_and_recovery) {
  uv_loop_t loop;
  th_track_t t = {0};
  int port = th_free_port(), pipefd[2], fillers[512], nfill = 0;
  uvip_server_options_t o;
  uvip_vip_stats_t st;
  struct rlimit rl;

  ck_assert_int_eq(pipe(pipefd), 0);
  uv_loop_init(&loop);
  uvip_server_options_init(&o);
  o.backoff_ms = 2; /* short: the test waits for each retry */
  uvip_addrs_t *a = th_addrs("127.0.0.1", port);
  uvip_server_t *s = NULL;
  ck_assert_int_eq(uvip_server_new(&loop, a, &o, &s), 0);
  uvip_addrs_free(a);
  uvip_server_set_data(s, &t);
  ck_assert_int_eq(uvip_server_listen(s, th_echo_on_connection, NULL, 0), 0);

  /* Lower the limit to just above what is open, then use up the rest. */
  int highest = 0;
  for (int fd = 0; fd < 256; fd++)
    if (fcntl(fd, F_GETFD) != -1)
      highest = fd;
  ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
  rl.rlim_cur = (rlim_t)highest + 8; /* the hard limit stays, for the child */
  ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
  int fd;
  while (nfill < 512 && (fd = dup(0)) >= 0)
    fillers[nfill++] = fd;
  ck_assert_int_eq(errno, EMFILE);
  ck_assert_int_gt(nfill, 0);

  pid_t pid = spawn_clients(port, pipefd[1], fillers, nfill);
  close(pipefd[1]); /* so a dead client reads as EOF here */
  fillers[nfill] = dup(0); /* and take that descriptor back */
  ck_assert_int_ge(fillers[nfill], 0);
  nfill++;
  char c;
  ck_assert_int_eq(read(pipefd[0], &c, 1), 1); /* all queued and written */

  /* Without descriptors every attempt fails with EMFILE. After each one
   * the server backs off and the loop sleeps until the retry; four
   * attempts, each one loop turn or two apart. */
  uint64_t seen = 0;
  int turn;
  for (turn = 0; turn < 100 && seen < 4; turn++) {
    uv_run(&loop, UV_RUN_ONCE);
    uvip_vip_stats(uvip_server_vip(s, 0), &st);
    ck_assert_uint_eq(st.accepted, 0);
    ck_assert_uint_eq(st.backoffs, st.err_emfile);
    ck_assert_uint_le(st.err_emfile, seen + 1); /* one attempt per retry */
    if (st.err_emfile > seen) {
      seen = st.err_emfile;
      assert_sleeping_backoff(&loop);
    }
  }
  ck_assert_msg(seen == 4, "%d EMFILE attempts after %d turns", (int)seen,
                turn);

  /* Descriptors come back: every queued connection is accepted and echoed
   * by the next retry; none was lost. */
  for (int i = 0; i < nfill; i++)
    close(fillers[i]);
  rl.rlim_cur = rl.rlim_max;
  ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
  for (turn = 0; turn < 2000 && t.echoed_bytes < QUEUED; turn++)
    uv_run(&loop, UV_RUN_ONCE);
  ck_assert_int_eq(t.accepted, QUEUED);
  ck_assert_int_eq(t.echoed_bytes, QUEUED);

  int status = -1;
  ck_assert_int_eq(waitpid(pid, &status, 0), pid);
  ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                "client exit status %d", WEXITSTATUS(status));
  uvip_server_close_conns(s);
  uvip_server_close(s, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

/* A slot freed by a closing connection resumes accepting at once, without
 * waiting for the back-off timer. */
START_TEST(test_emfile_resume_on_close) {
  uv_loop_t loop;
  th_track_t t = {0};
  int port = th_free_port(), fillers[512], nfill = 0, pipefd[2], gofd[2];
  struct rlimit rl;
  uvip_server_options_t o;
  uvip_vip_stats_t st;

  ck_assert_int_eq(pipe(pipefd), 0);
  ck_assert_int_eq(pipe(gofd), 0);
  uv_loop_init(&loop);
  uvip_server_options_init(&o);
  o.backoff_ms = 1000; /* long, so only a close can resume in time */
  uvip_addrs_t *a = th_addrs("127.0.0.1", port);
  uvip_server_t *s = NULL;
  ck_assert_int_eq(uvip_server_new(&loop, a, &o, &s), 0);
  uvip_addrs_free(a);
  uvip_server_set_data(s, &t);
  t.hold = 1;
  ck_assert_int_eq(uvip_server_listen(s, th_echo_on_connection, NULL, 0), 0);

  int highest = 0;
  for (int fd = 0; fd < 256; fd++)
    if (fcntl(fd, F_GETFD) != -1)
      highest = fd;
  ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
  rl.rlim_cur = (rlim_t)highest + 1 + 3;
  ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
  int fd;
  while (nfill < 512 && (fd = dup(0)) >= 0)
    fillers[nfill++] = fd;
  /* Give back two descriptors: room for two connections. */
  close(fillers[--nfill]);
  close(fillers[--nfill]);

  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    struct sockaddr_storage sa;
    for (int i = 0; i < nfill; i++)
      close(fillers[i]);
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    th_addr("127.0.0.1", port, &sa);
    int cfd[3];
    for (int i = 0; i < 3; i++)
      cfd[i] = th_connect((struct sockaddr *)&sa, NULL);
    if (write(pipefd[1], "r", 1) != 1)
      _exit(1);
    char c;
    if (read(gofd[0], &c, 1) != 1) /* wait for the parent */
      _exit(2);
    (void)cfd;
    _exit(0);
  }
  close(pipefd[1]);
  char c;
  ck_assert_int_eq(read(pipefd[0], &c, 1), 1);
  /* All three are queued: the first pass takes two and the third attempt
   * fails with EMFILE. */
  for (int turn = 0; turn < 50; turn++) {
    uvip_vip_stats(uvip_server_vip(s, 0), &st);
    if (st.err_emfile > 0)
      break;
    uv_run(&loop, UV_RUN_NOWAIT);
  }
  ck_assert_uint_eq(st.accepted, 2);
  ck_assert_uint_eq(st.err_emfile, 1);
  ck_assert_uint_eq(st.backoffs, 1);
  assert_sleeping_backoff(&loop); /* the connections are held, not read */

  /* Closing one connection frees a descriptor: accepting resumes from the
   * close, not from the back-off timer. The turn that runs the close
   * callback has no timer phase after it, so right then the timer must
   * already be stopped and a pass scheduled. */
  th_close_conn(&t, 0);
  for (int turn = 0; turn < 20 && t.closed < 1; turn++)
    uv_run(&loop, UV_RUN_NOWAIT);
  ck_assert_int_eq(t.closed, 1);
  ck_assert_int_eq(t.accepted, 2); /* passes run in the check phase */
  active_t act = {0, 0, 0, 0, 0};
  uv_walk(&loop, count_active, &act);
  ck_assert_int_eq(act.timers, 0);
  ck_assert_int_eq(act.idles, 1);
  for (int turn = 0; turn < 20 && t.accepted < 3; turn++)
    uv_run(&loop, UV_RUN_NOWAIT);
  ck_assert_int_eq(t.accepted, 3);
  /* The third took the last descriptor, so the same pass's next attempt
   * failed too (the kernel checks the descriptor before the queue). */
  uvip_vip_stats(uvip_server_vip(s, 0), &st);
  ck_assert_uint_eq(st.err_emfile, 2);
  ck_assert_uint_eq(st.backoffs, 2);

  ck_assert_int_eq(write(gofd[1], "d", 1), 1);
  waitpid(pid, NULL, 0);
  for (int i = 0; i < nfill; i++)
    close(fillers[i]);
  uvip_server_close_conns(s);
  uvip_server_close(s, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

int main(void) {
  Suite *s = suite_create("emfile");
  TCase *tc = tcase_create("emfile");
  tcase_add_test(tc, test_emfile_backoff_and_recovery);
  tcase_add_test(tc, test_emfile_resume_on_close);
  suite_add_tcase(s, tc);
  return th_run_suite(s);
}
