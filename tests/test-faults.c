/* Fault injection at the system-call boundary: accept4() and bind() fail on
 * demand. The program links with -Wl,--wrap=accept4 -Wl,--wrap=bind against
 * the library's static archive, so the library's own calls go through the
 * wrappers below (libuv, a shared library, is not affected).
 *
 * Every scenario runs the loop until its condition holds, bounded by a turn
 * count, and fails at once if the loop would wait forever with the
 * condition unmet (a stranded queue): no sleeps, no wall-clock windows.
 * SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "helpers.h"

/* ---- the wrappers ---- */

int __real_accept4(int fd, struct sockaddr *sa, socklen_t *len, int flags);
int __wrap_accept4(int fd, struct sockaddr *sa, socklen_t *len, int flags);
int __real_bind(int fd, const struct sockaddr *sa, socklen_t len);
int __wrap_bind(int fd, const struct sockaddr *sa, socklen_t len);

/* accept4() on listener `fd` (-1: any) lets `skip` calls through, then
 * fails `count` calls with `err`. Each test runs in its own process (check
 * forks), so plain statics are reset for every test. */
static struct {
  int fd, skip, count, err;
  int injected; /* failures injected so far */
} acc = {-1, 0, 0, 0, 0};

int __wrap_accept4(int fd, struct sockaddr *sa, socklen_t *len, int flags) {
  if (acc.count > 0 && (acc.fd < 0 || acc.fd == fd)) {
    if (acc.skip > 0) {
      acc.skip--;
    } else {
      acc.count--;
      acc.injected++;
      errno = acc.err;
      return -1;
    }
  }
  return __real_accept4(fd, sa, len, flags);
}

/* bind() to exactly `addr` fails `count` times with `err`. */
static struct {
  struct sockaddr_in addr;
  int count, err;
  int injected;
} bnd;

int __wrap_bind(int fd, const struct sockaddr *sa, socklen_t len) {
  if (bnd.count > 0 && sa->sa_family == AF_INET &&
      len >= (socklen_t)sizeof(struct sockaddr_in)) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
    if (in->sin_addr.s_addr == bnd.addr.sin_addr.s_addr &&
        in->sin_port == bnd.addr.sin_port) {
      bnd.count--;
      bnd.injected++;
      errno = bnd.err;
      return -1;
    }
  }
  return __real_bind(fd, sa, len);
}

/* ---- loop driving ---- */

/* True when the next UV_RUN_ONCE would block for good: libuv has no timer,
 * idle handle, pending callback or closing handle (backend timeout -1) and
 * none of the descriptors it watches is ready. Nothing but a new event
 * from outside (which these tests never send) could wake it. A watcher
 * started since the last poll is registered only by the next turn, so the
 * caller confirms with a non-blocking turn before concluding. */
static bool loop_stuck(uv_loop_t *loop) {
  struct pollfd p = {.fd = uv_backend_fd(loop), .events = POLLIN};
  return uv_backend_timeout(loop) == -1 && poll(&p, 1, 0) == 0;
}

/* Runs until *count reaches want. Fails if the loop stays stuck (see
 * loop_stuck) through two non-blocking turns, or after max_turns. */
static void run_until_count(uv_loop_t *loop, const int *count, int want,
                            int max_turns) {
  int turns = 0, stuck = 0;
  while (*count < want && turns < max_turns) {
    if (loop_stuck(loop)) {
      ck_assert_msg(++stuck < 3,
                    "stranded: %d of %d after %d turns and the loop would "
                    "wait forever", *count, want, turns);
      uv_run(loop, UV_RUN_NOWAIT);
    } else {
      stuck = 0;
      uv_run(loop, UV_RUN_ONCE);
    }
    turns++;
  }
  ck_assert_msg(*count == want, "%d of %d after %d turns", *count, want,
                turns);
}

/* ---- accept4 faults ---- */

/* A connection callback that closes every connection at once, so that
 * capped servers keep freeing slots; counts into a fault_run_t. */
typedef struct {
  int accepted, closed;
} fault_run_t;

static void on_conn_closed(uvip_conn_t *c) {
  fault_run_t *r = uvip_server_get_data(uvip_vip_server(uvip_conn_vip(c)));
  r->closed++;
}

static void on_conn(uvip_server_t *s, uvip_conn_t *c) {
  fault_run_t *r = uvip_server_get_data(s);
  r->accepted++;
  ck_assert_int_eq(uvip_conn_close(c, on_conn_closed), 0);
}

static bool server_closed;
static void on_server_closed(uvip_server_t *s) {
  (void)s;
  server_closed = true;
}

static void close_server(uv_loop_t *loop, uvip_server_t *s) {
  server_closed = false;
  ck_assert_int_eq(uvip_server_close(s, on_server_closed), 0);
  th_run_until(loop, &server_closed, 100);
  ck_assert_int_eq(uv_loop_close(loop), 0);
}

static const int errnos[] = {EMFILE, ENFILE,       ENOBUFS, ENOMEM,
                             EPROTO, ECONNABORTED, EIO};
#define NERRNOS ((int)(sizeof(errnos) / sizeof(errnos[0])))

typedef struct {
  const char *name;
  int nvips, per_vip;
  uint64_t max_conns, max_conns_per_vip;
  int target; /* VIP index whose listener fails, -1: any */
  int skip, count;
} scenario_t;

static const scenario_t scenarios[] = {
    {"one VIP", 1, 6, 0, 0, -1, 0, 3},
    {"one VIP, max_conns 2", 1, 6, 2, 0, -1, 1, 2},
    {"4 VIPs", 4, 5, 0, 0, -1, 2, 3},
    {"4 VIPs, max_conns 3, per VIP 1, VIP 2 fails", 4, 5, 3, 1, 2, 1, 2},
    {"4 VIPs, per VIP 2, VIP 0 fails", 4, 5, 0, 2, 0, 0, 4},
};
#define NSCENARIOS ((int)(sizeof(scenarios) / sizeof(scenarios[0])))

/* Every client connects before the server's first turn and no connection
 * arrives after that: a listener that left the ready ring with connections
 * queued would never be served again (its edge is spent). */
START_TEST(test_accept_fault) {
  const scenario_t *sc = &scenarios[_i / NERRNOS];
  int err = errnos[_i % NERRNOS];
  uv_loop_t loop;
  uvip_server_options_t o;
  uvip_server_t *s = NULL;
  fault_run_t run = {0, 0};
  int port = th_free_port(), fds[64], nfds = 0;
  char spec[64];

  ck_assert_int_eq(uv_loop_init(&loop), 0);
  uvip_server_options_init(&o);
  o.backoff_ms = 1; /* short: the test waits for real back-off timers */
  o.max_conns = sc->max_conns;
  o.max_conns_per_vip = sc->max_conns_per_vip;
  snprintf(spec, sizeof(spec), "127.0.0.1-127.0.0.%d", sc->nvips);
  uvip_addrs_t *a = th_addrs(spec, port);
  ck_assert_int_eq(uvip_server_new(&loop, a, &o, &s), 0);
  uvip_addrs_free(a);
  uvip_server_set_data(s, &run);
  ck_assert_int_eq(uvip_server_listen(s, on_conn, NULL, 0), 0);

  acc.err = err;
  acc.skip = sc->skip;
  acc.count = sc->count;
  acc.injected = 0;
  acc.fd = sc->target < 0 ? -1 : uvip_vip_fd(uvip_server_vip(s, (size_t)sc->target));
  ck_assert(sc->target < 0 || acc.fd >= 0);

  for (int v = 0; v < sc->nvips; v++) {
    struct sockaddr_storage sa;
    char ip[32];
    snprintf(ip, sizeof(ip), "127.0.0.%d", v + 1);
    th_addr(ip, port, &sa);
    for (int i = 0; i < sc->per_vip; i++)
      fds[nfds++] = th_connect((struct sockaddr *)&sa, NULL);
  }

  run_until_count(&loop, &run.accepted, nfds, 500);
  run_until_count(&loop, &run.closed, nfds, 50);

  uvip_vip_stats_t st;
  ck_assert_int_eq(uvip_server_stats(s, &st), 0);
  ck_assert_msg(acc.injected == sc->count, "%s, %s: injected %d of %d",
                sc->name, strerror(err), acc.injected, sc->count);
  uint64_t inj = (uint64_t)acc.injected;
  bool skipped = err == EPROTO || err == ECONNABORTED;
  ck_assert_uint_eq(st.accepted, (uint64_t)nfds);
  ck_assert_uint_eq(st.closed, (uint64_t)nfds);
  ck_assert_uint_eq(st.active, 0);
  ck_assert_uint_eq(st.err_emfile, err == EMFILE ? inj : 0);
  ck_assert_uint_eq(st.err_enfile, err == ENFILE ? inj : 0);
  ck_assert_uint_eq(st.err_enobufs, err == ENOBUFS ? inj : 0);
  ck_assert_uint_eq(st.err_enomem, err == ENOMEM ? inj : 0);
  ck_assert_uint_eq(st.err_aborted, skipped ? inj : 0);
  ck_assert_uint_eq(st.err_other, err == EIO ? inj : 0);
  /* A skipped connection needs no pause; any other failure backs off. */
  ck_assert_uint_eq(st.backoffs, skipped ? 0 : inj);
  if (sc->target >= 0) {
    /* The errors are counted on the VIP that had them. */
    uvip_vip_stats_t vs;
    uvip_vip_stats(uvip_server_vip(s, (size_t)sc->target), &vs);
    ck_assert_uint_eq(vs.err_emfile + vs.err_enfile + vs.err_enobufs +
                          vs.err_enomem + vs.err_aborted + vs.err_other,
                      inj);
    ck_assert_uint_eq(vs.accepted, (uint64_t)sc->per_vip);
  }
  for (int i = 0; i < nfds; i++)
    close(fds[i]);
  close_server(&loop, s);
}
END_TEST

/* A back-off that does not end keeps the queue stranded just the same:
 * backoff_ms = 2^31 (24 days, and 0 once doubled in 32 bits) must still
 * retry within the 1 s ceiling. Two faults in a row: both pauses are
 * bounded. A guard timer started before the faults, due 1.5 s after the
 * two 1 s ceilings, fails the test instead of hanging it (and stays under
 * check's default 4 s timeout); libuv runs timers in due order, so this is
 * an ordering between timers, not a window on how fast the test runs. */
static void on_guard(uv_timer_t *t) { *(bool *)t->data = true; }

START_TEST(test_huge_backoff_is_bounded) {
  uv_loop_t loop;
  uvip_server_options_t o;
  uvip_server_t *s = NULL;
  fault_run_t run = {0, 0};
  int port = th_free_port(), fds[2];
  uv_timer_t guard;
  bool guard_fired = false;
  struct sockaddr_storage sa;

  ck_assert_int_eq(uv_loop_init(&loop), 0);
  uvip_server_options_init(&o);
  o.backoff_ms = 1u << 31;
  uvip_addrs_t *a = th_addrs("127.0.0.1", port);
  ck_assert_int_eq(uvip_server_new(&loop, a, &o, &s), 0);
  uvip_addrs_free(a);
  uvip_server_set_data(s, &run);
  ck_assert_int_eq(uvip_server_listen(s, on_conn, NULL, 0), 0);
  th_addr("127.0.0.1", port, &sa);
  for (int i = 0; i < 2; i++)
    fds[i] = th_connect((struct sockaddr *)&sa, NULL);
  acc.fd = -1;
  acc.err = EMFILE;
  acc.skip = 0;
  acc.count = 2;
  acc.injected = 0;

  uv_timer_init(&loop, &guard);
  guard.data = &guard_fired;
  uv_timer_start(&guard, on_guard, 3500, 0);
  int turns = 0;
  while (run.accepted < 2 && !guard_fired && turns < 50) {
    uv_run(&loop, UV_RUN_ONCE);
    turns++;
  }
  ck_assert_msg(!guard_fired, "no retry within 3.5 s of two faults");
  ck_assert_int_eq(run.accepted, 2);
  ck_assert_int_eq(acc.injected, 2);
  uvip_vip_stats_t st;
  uvip_server_stats(s, &st);
  ck_assert_uint_eq(st.err_emfile, 2);
  ck_assert_uint_eq(st.backoffs, 2);
  uv_close((uv_handle_t *)&guard, NULL);
  for (int i = 0; i < 2; i++)
    close(fds[i]);
  close_server(&loop, s);
}
END_TEST

/* ---- bind faults ---- */

static void fault_bind(const char *ip, int port, int err, int count) {
  memset(&bnd.addr, 0, sizeof(bnd.addr));
  bnd.addr.sin_family = AF_INET;
  bnd.addr.sin_port = htons((uint16_t)port);
  ck_assert_int_eq(inet_pton(AF_INET, ip, &bnd.addr.sin_addr), 1);
  bnd.err = err;
  bnd.count = count;
  bnd.injected = 0;
}

/* Connects to ip:port; returns the fd, or -1 with errno if refused. */
static int try_connect(const char *ip, int port) {
  struct sockaddr_storage sa;
  th_addr(ip, port, &sa);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ck_assert_int_ge(fd, 0);
  if (connect(fd, (struct sockaddr *)&sa, sizeof(struct sockaddr_in)) != 0) {
    int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

/* The address was there when the application checked it, and bind() fails
 * anyway (taken or gone in between). Without UVIP_ALL_OR_NOTHING the other
 * VIPs serve and this one is FAILED with the error; once the cause is gone,
 * uvip_vip_resume() binds it. */
START_TEST(test_bind_fault_partial) {
  uv_loop_t loop;
  uvip_server_t *s = NULL;
  fault_run_t run = {0, 0};
  int port = th_free_port(), fd;
  char err[256] = "";

  ck_assert_int_eq(uv_loop_init(&loop), 0);
  uvip_addrs_t *a = th_addrs("127.0.0.1-127.0.0.3", port);
  ck_assert_int_eq(uvip_server_new(&loop, a, NULL, &s), 0);
  uvip_addrs_free(a);
  uvip_server_set_data(s, &run);
  fault_bind("127.0.0.2", port, EADDRINUSE, 2);
  ck_assert_int_eq(uvip_server_listen(s, on_conn, err, sizeof(err)), 0);
  ck_assert_int_eq(bnd.injected, 1);
  ck_assert_msg(strstr(err, "127.0.0.2:") != NULL, "err: %s", err);
  uvip_vip_t *v1 = uvip_server_vip(s, 1);
  ck_assert_int_eq(uvip_vip_state(uvip_server_vip(s, 0)), UVIP_VIP_LISTENING);
  ck_assert_int_eq(uvip_vip_state(v1), UVIP_VIP_FAILED);
  ck_assert_int_eq(uvip_vip_error(v1), UV_EADDRINUSE);
  ck_assert_int_eq(uvip_vip_fd(v1), UV_EBADF);
  ck_assert_int_eq(uvip_vip_state(uvip_server_vip(s, 2)), UVIP_VIP_LISTENING);

  /* The others serve; the failed one has no listener. */
  int c0 = try_connect("127.0.0.1", port), c2 = try_connect("127.0.0.3", port);
  ck_assert_int_ge(c0, 0);
  ck_assert_int_ge(c2, 0);
  ck_assert_int_eq(try_connect("127.0.0.2", port), -1);
  ck_assert_int_eq(errno, ECONNREFUSED);
  run_until_count(&loop, &run.accepted, 2, 50);

  /* Still failing: resume reports it and the VIP stays FAILED. */
  ck_assert_int_eq(uvip_vip_resume(v1), UV_EADDRINUSE);
  ck_assert_int_eq(bnd.injected, 2);
  ck_assert_int_eq(uvip_vip_state(v1), UVIP_VIP_FAILED);
  ck_assert_int_eq(uvip_vip_error(v1), UV_EADDRINUSE);

  /* The fault is lifted (count used up): resume binds it. */
  ck_assert_int_eq(uvip_vip_resume(v1), 0);
  ck_assert_int_eq(uvip_vip_state(v1), UVIP_VIP_LISTENING);
  ck_assert_int_eq(uvip_vip_error(v1), 0);
  fd = try_connect("127.0.0.2", port);
  ck_assert_int_ge(fd, 0);
  run_until_count(&loop, &run.accepted, 3, 50);
  uvip_vip_stats_t st;
  uvip_vip_stats(v1, &st);
  ck_assert_uint_eq(st.accepted, 1);

  /* A VIP added at run time whose bind fails is not added. */
  struct sockaddr_storage sa4;
  th_addr("127.0.0.4", port, &sa4);
  fault_bind("127.0.0.4", port, EADDRNOTAVAIL, 1);
  uvip_vip_t *v4 = NULL;
  ck_assert_int_eq(uvip_server_add_vip(s, (struct sockaddr *)&sa4, &v4),
                   UV_EADDRNOTAVAIL);
  ck_assert_ptr_null(v4);
  ck_assert_uint_eq(uvip_server_vip_count(s), 3);
  ck_assert_int_eq(uvip_server_add_vip(s, (struct sockaddr *)&sa4, &v4), 0);
  ck_assert_int_eq(uvip_vip_state(v4), UVIP_VIP_LISTENING);
  ck_assert_uint_eq(uvip_server_vip_count(s), 4);

  close(c0);
  close(c2);
  close(fd);
  run_until_count(&loop, &run.closed, 3, 50);
  close_server(&loop, s);
}
END_TEST

/* With UVIP_ALL_OR_NOTHING a bind failure on one VIP leaves nothing
 * listening and returns the error; a later listen, once the fault is gone,
 * binds them all. */
START_TEST(test_bind_fault_all_or_nothing) {
  uv_loop_t loop;
  uvip_server_options_t o;
  uvip_server_t *s = NULL;
  fault_run_t run = {0, 0};
  int port = th_free_port();
  char err[256] = "";

  ck_assert_int_eq(uv_loop_init(&loop), 0);
  uvip_server_options_init(&o);
  o.flags = UVIP_ALL_OR_NOTHING;
  uvip_addrs_t *a = th_addrs("127.0.0.1-127.0.0.3", port);
  ck_assert_int_eq(uvip_server_new(&loop, a, &o, &s), 0);
  uvip_addrs_free(a);
  uvip_server_set_data(s, &run);
  /* The last VIP fails: the first two were already bound and must be
   * given back. */
  fault_bind("127.0.0.3", port, EADDRINUSE, 1);
  ck_assert_int_eq(uvip_server_listen(s, on_conn, err, sizeof(err)),
                   UV_EADDRINUSE);
  ck_assert_int_eq(bnd.injected, 1);
  ck_assert_msg(strstr(err, "127.0.0.3:") != NULL, "err: %s", err);
  ck_assert_int_eq(uvip_server_is_listening(s), 0);
  for (size_t i = 0; i < 3; i++)
    ck_assert_int_eq(uvip_vip_fd(uvip_server_vip(s, i)), UV_EBADF);
  ck_assert_int_eq(uvip_vip_state(uvip_server_vip(s, 0)), UVIP_VIP_IDLE);
  ck_assert_int_eq(uvip_vip_state(uvip_server_vip(s, 1)), UVIP_VIP_IDLE);
  for (int i = 1; i <= 3; i++) {
    char ip[32];
    snprintf(ip, sizeof(ip), "127.0.0.%d", i);
    ck_assert_int_eq(try_connect(ip, port), -1);
    ck_assert_int_eq(errno, ECONNREFUSED);
  }

  ck_assert_int_eq(uvip_server_listen(s, on_conn, err, sizeof(err)), 0);
  ck_assert_int_eq(uvip_server_is_listening(s), 1);
  int fds[3];
  for (int i = 1; i <= 3; i++) {
    char ip[32];
    snprintf(ip, sizeof(ip), "127.0.0.%d", i);
    ck_assert_int_eq(uvip_vip_state(uvip_server_vip(s, (size_t)i - 1)),
                     UVIP_VIP_LISTENING);
    fds[i - 1] = try_connect(ip, port);
    ck_assert_int_ge(fds[i - 1], 0);
  }
  run_until_count(&loop, &run.accepted, 3, 50);
  run_until_count(&loop, &run.closed, 3, 50);
  for (int i = 0; i < 3; i++)
    close(fds[i]);
  close_server(&loop, s);
}
END_TEST

int main(void) {
  Suite *s = suite_create("faults");
  TCase *tc = tcase_create("faults");
  tcase_add_loop_test(tc, test_accept_fault, 0, NERRNOS * NSCENARIOS);
  tcase_add_test(tc, test_huge_backoff_is_bounded);
  tcase_add_test(tc, test_bind_fault_partial);
  tcase_add_test(tc, test_bind_fault_all_or_nothing);
  suite_add_tcase(s, tc);
  return th_run_suite(s);
}
