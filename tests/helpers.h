/* Shared helpers for the check test programs.
 * SPDX-License-Identifier: MIT */
#ifndef UVIP_TEST_HELPERS_H
#define UVIP_TEST_HELPERS_H

#include <check.h>
#include <stdbool.h>
#include <stdio.h>
#include <sys/socket.h>
#include <uvip.h>

/* Runs the loop (UV_RUN_ONCE) until *flag is true or max_turns turns ran.
 * Returns the number of turns used; fails the test if the flag stayed false. */
int th_run_until(uv_loop_t *loop, const bool *flag, int max_turns);

/* Runs non-blocking turns until the loop has nothing left to do without an
 * event from outside: no timer, idle handle, pending callback or closing
 * handle (uv_backend_timeout() is -1, or the loop is not alive) and no
 * watched descriptor ready, seen twice with a turn in between (a watcher
 * started late in a turn is registered by the next). Fails the test after
 * max_turns. Use it before asserting that something did NOT happen: every
 * event the test caused before the call has been processed. Not for loops
 * with timers armed. Returns the turns used. */
int th_run_until_quiet(uv_loop_t *loop, int max_turns);

/* Blocking connect from a fresh socket; returns the fd (fails the test on
 * error). src may be NULL. */
int th_connect(const struct sockaddr *dst, const struct sockaddr *src);

/* Non-blocking connect started; returns the fd. */
int th_connect_nb(const struct sockaddr *dst);

/* Fills sa with ip:port. */
void th_addr(const char *ip, int port, struct sockaddr_storage *sa);

/* A free TCP port on 127.0.0.1 (bound then released). */
int th_free_port(void);

/* Makes an address list from a spec; fails the test on error. */
uvip_addrs_t *th_addrs(const char *spec, int port);

/* Exits 77 (skip) unless running as root with permission to unshare a
 * network namespace; on success the process is in a fresh netns with lo up. */
void th_enter_netns_or_skip(void);

/* For suites whose tests each enter a namespace of their own: exits 77
 * (skip) unless running as root and a child can unshare a network namespace
 * and bring its lo up. The caller stays in its namespace. Call it in main()
 * before the runner: an exit inside a test that check forked is reported as
 * that test's failure, not as a skip. */
void th_require_netns_or_skip(void);

/* Enters a fresh network namespace with lo up; fails the test if it cannot
 * (main() has checked with th_require_netns_or_skip() that it may). */
void th_enter_netns(void);

/* Runs a command through /bin/sh and returns its stdout (malloc'd, NUL
 * terminated) or NULL if it could not run. */
char *th_cmd_output(const char *cmd);

/* The number of descriptors this process has open, read in-process from
 * /proc/self/fd (a shell's `ls /proc/$PPID/fd` raced with popen(): it could
 * see both ends of its own pipe). */
int th_count_fds(void);

/* Steps a[0..n) to its next permutation in lexicographic order; false
 * after the last (start from the sorted array to visit them all). */
bool th_next_perm(int *a, int n);

/* Reads lines from f, appending them to log (len bytes), until one contains
 * want; fails the test (with the output so far) at EOF. */
void th_read_until(FILE *f, const char *want, char *log, size_t len);

/* Builds a suite with one tcase named after it; adds a test per call. */
int th_run_suite(Suite *s);

#endif

/* A tracking echo server for tests: set a th_track_t as the server's data
 * and pass th_echo_on_connection to uvip_server_listen. */
#define TH_MAX_CONNS 4096
typedef struct {
  int accepted, closed, echoed_bytes;
  uint64_t active, max_active;
  int hold;            /* when set, connections are not read from */
  uvip_conn_t *conns[TH_MAX_CONNS];
  int nconns;
  const uvip_vip_t *order[TH_MAX_CONNS]; /* VIP of each accept, in order */
} th_track_t;

void th_echo_on_connection(uvip_server_t *s, uvip_conn_t *c);
/* Close callback that counts into the server's th_track_t. */
void th_on_conn_closed(uvip_conn_t *c);
/* Closes the i-th accepted connection (if still open). */
void th_close_conn(th_track_t *t, int i);
