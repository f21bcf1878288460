/* Upgrade by re-exec with workers (thread and process): the old
 * generation's workers hand their idle connections to the new generation,
 * whose own workers take them with the application's blob; a busy one
 * drains in its old worker; a worker process that dies mid hand-over costs
 * only its own connections (the listeners are already the new
 * generation's). This program is also the new generation ("gen2 MODE PORT
 * QUOTA").
 * SPDX-License-Identifier: MIT */
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

#define NCONN 6

static char self[4096];

/* ---- Worker side, both generations (a worker thread or process) -------- */

static __thread unsigned my_index;
static int die_at_decide; /* process workers: the fault */

typedef struct {
  char tag[32];
  int gen;   /* 1 old, 2 new */
  bool held; /* reading stopped: input waits unread */
} cdata_t;

static void wk_init(uv_loop_t *loop, unsigned int index, void *arg) {
  (void)loop;
  (void)arg;
  my_index = index;
}

static void c_alloc(uv_handle_t *h, size_t n, uv_buf_t *b) {
  static __thread char buf[64];
  (void)h;
  (void)n;
  *b = uv_buf_init(buf, sizeof(buf) - 1);
}

static void c_written(uv_write_t *w, int status) {
  (void)status;
  free(w);
}

static void reply(uv_stream_t *st, const char *text) {
  struct {
    uv_write_t w;
    char text[64];
  } *r = malloc(sizeof(*r));
  snprintf(r->text, sizeof(r->text), "%s", text);
  uv_buf_t b = uv_buf_init(r->text, (unsigned)strlen(r->text));
  uv_write(&r->w, st, &b, 1, c_written);
}

static void free_cdata(uvip_conn_t *c) {
  free(uv_handle_get_data((uv_handle_t *)uvip_conn_tcp(c)));
}

static void c_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b) {
  uvip_conn_t *c = uvip_conn_from_tcp((uv_tcp_t *)st);
  cdata_t *d = uv_handle_get_data((uv_handle_t *)st);
  char out[64];
  if (n < 0) {
    uvip_conn_close(c, free_cdata);
    return;
  }
  if (n == 0)
    return;
  b->base[n] = 0;
  if (d->gen == 2) {
    snprintf(out, sizeof(out), "g2:%s", d->tag[0] ? d->tag : "new");
    reply(st, out);
    return;
  }
  if (!strcmp(b->base, "die")) {
    die_at_decide = 1;
    reply(st, "dying");
    return;
  }
  if (!d->tag[0]) {
    snprintf(d->tag, sizeof(d->tag), "%s", b->base);
    if (!strcmp(b->base, "hold")) {
      d->held = true;
      uv_read_stop(st);
      reply(st, "held");
      return;
    }
  }
  snprintf(out, sizeof(out), "g1:%s:%u", b->base, my_index);
  reply(st, out);
}

static void wk_conn(uvip_server_t *s, uvip_conn_t *c, int gen) {
  cdata_t *d = calloc(1, sizeof(*d));
  (void)s;
  d->gen = gen;
  uv_handle_set_data((uv_handle_t *)uvip_conn_tcp(c), d);
  uv_read_start(uvip_conn_stream(c), c_alloc, c_read);
}

static void old_conn(uvip_server_t *s, uvip_conn_t *c) { wk_conn(s, c, 1); }
static void new_conn(uvip_server_t *s, uvip_conn_t *c) { wk_conn(s, c, 2); }

/* Runs on the old generation's worker. Every connection is to move; the
 * held one is read again (its input waits unread, so it is busy and
 * stays). */
static int decide(uvip_conn_t *c, void *blob, size_t *len) {
  cdata_t *d = uv_handle_get_data((uv_handle_t *)uvip_conn_tcp(c));
  if (die_at_decide)
    _exit(9);
  if (d->held) {
    d->held = false;
    uv_read_start(uvip_conn_stream(c), c_alloc, c_read);
  }
  *len = strlen(d->tag);
  memcpy(blob, d->tag, *len);
  return UVIP_HANDOVER_MOVE;
}

/* Runs on the new generation's worker. */
static void on_moved(uvip_server_t *s, uvip_conn_t *c, const void *blob,
                     size_t len) {
  cdata_t *d;
  wk_conn(s, c, 2);
  d = uv_handle_get_data((uv_handle_t *)uvip_conn_tcp(c));
  memcpy(d->tag, blob, len < sizeof(d->tag) - 1 ? len : sizeof(d->tag) - 1);
}

/* ---- The new generation ------------------------------------------------ */

static struct {
  uvip_server_t *s;
  uvip_workers_t *w;
  uvip_moved_t *m;
  uv_timer_t t;
  int ready, quota, status;
  bool ended;
} N;

static void n_end(uvip_moved_t *m, int status, size_t received) {
  (void)m;
  N.ended = true;
  if (status != 0)
    N.status = 21;
  else if (N.quota >= 0 && (int)received != N.quota)
    N.status = 22;
}

static void n_closed(uvip_workers_t *w) {
  (void)w;
  uvip_server_close(N.s, NULL);
}

/* Done once the old generation sent everything and the moved ones (and
 * any other) have closed. */
static void n_tick(uv_timer_t *t) {
  uint64_t active = 0;
  uvip_worker_stats_t st;
  if (!N.ended)
    return;
  for (unsigned i = 0; i < uvip_workers_count(N.w); i++)
    if (uvip_workers_stats(N.w, i, &st) == 0)
      active += st.active;
  if (active)
    return;
  uv_close((uv_handle_t *)t, NULL);
  uvip_workers_close(N.w, n_closed);
}

static void n_ready(uvip_workers_t *w, unsigned int i, int status) {
  (void)i;
  if (status != 0)
    exit(23);
  if (++N.ready < (int)uvip_workers_count(w))
    return;
  /* Every worker takes connections: receive the moved ones, then say so. */
  if (uvip_moved_start(N.s, on_moved, n_end, &N.m) != 0 || !N.m)
    exit(24);
  if (uvip_upgrade_ready() != 0)
    exit(25);
}

static int gen2(const char *mode, const char *port, const char *quota) {
  uvip_server_options_t o;
  uvip_workers_options_t wo;
  uvip_addrs_t *a;
  char err[256];
  uv_loop_t *loop = uv_default_loop();
  if (uvip_addrs_new(&a) != 0 ||
      uvip_addrs_parse(a, "127.0.0.1-127.0.0.2", atoi(port), err,
                       sizeof(err)) != 0)
    return 10;
  uvip_server_options_init(&o);
  o.flags = UVIP_SOCKET_ACTIVATION;
  o.conn_close_cb = free_cdata;
  if (uvip_server_new(loop, a, &o, &N.s) != 0)
    return 11;
  uvip_addrs_free(a);
  uvip_workers_options_init(&wo);
  wo.nworkers = 2;
  wo.mode = strncmp(mode, "process", 7) ? UVIP_WORKER_THREAD
                                         : UVIP_WORKER_PROCESS;
  /* "-cap": room for 2 connections per worker, so that moved ones wait
   * for room. */
  if (strstr(mode, "-cap"))
    wo.max_conns_per_worker = 2;
  wo.init_cb = wk_init;
  wo.ready_cb = n_ready;
  if (uvip_workers_new(N.s, &wo, &N.w) != 0 ||
      uvip_workers_listen(N.w, new_conn, err, sizeof(err)) != 0)
    return 12;
  if (uvip_vip_adopted(uvip_server_vip(N.s, 0)) != 1 ||
      uvip_vip_adopted(uvip_server_vip(N.s, 1)) != 1)
    return 13;
  N.quota = atoi(quota);
  uv_timer_init(loop, &N.t);
  uv_timer_start(&N.t, n_tick, 10, 10);
  uv_run(loop, UV_RUN_DEFAULT);
  if (!N.ended)
    return 26;
  return N.status;
}

/* ---- The old generation ------------------------------------------------ */

static struct {
  uv_loop_t loop;
  uvip_server_t *s;
  uvip_workers_t *w;
  uvip_upgrade_t *u;
  uv_timer_t turn; /* keeps the loop turning while the test pumps it */
  int ready, status;
  size_t moved, kept;
  bool upgraded, done, wclosed;
  int port;
} G;

static void g_ready(uvip_workers_t *w, unsigned int i, int status) {
  (void)w;
  (void)i;
  ck_assert_int_eq(status, 0);
  G.ready++;
}

static void g_turn(uv_timer_t *t) { (void)t; }

static void g_done(uvip_upgrade_t *u, size_t moved, size_t kept) {
  (void)u;
  G.moved = moved;
  G.kept = kept;
  G.done = true;
}

static void g_upgraded(uvip_upgrade_t *u, int status, const char *why) {
  G.upgraded = true;
  G.status = status;
  ck_assert_msg(status == 0, "%s", why);
  ck_assert_int_eq(uvip_server_stop(G.s), 0);
  ck_assert_int_eq(uvip_upgrade_handover(u, G.s, decide, g_done), 0);
  ck_assert_int_eq(uvip_upgrade_handover(u, G.s, decide, g_done), UV_EBUSY);
}

static void g_wclosed(uvip_workers_t *w) {
  (void)w;
  G.wclosed = true;
}

static void pump_until(const bool *flag) {
  for (int i = 0; !*flag && i < 20000; i++)
    uv_run(&G.loop, UV_RUN_ONCE);
  ck_assert(*flag);
}

/* Reads a reply while the old generation's loop runs (its acceptor may be
 * what the reply waits for). */
static void expect(int fd, const char *msg, const char *want_prefix,
                   char *got, size_t len) {
  struct pollfd p = {fd, POLLIN, 0};
  ssize_t n;
  int i;
  if (msg)
    ck_assert_int_eq(write(fd, msg, strlen(msg)), (ssize_t)strlen(msg));
  for (i = 0; i < 20000 && poll(&p, 1, 0) == 0; i++)
    uv_run(&G.loop, UV_RUN_ONCE);
  n = read(fd, got, len - 1);
  ck_assert_int_gt(n, 0);
  got[n] = 0;
  ck_assert_msg(!strncmp(got, want_prefix, strlen(want_prefix)),
                "got '%s', want '%s...'", got, want_prefix);
}

static void old_start(int mode) {
  uvip_addrs_t *a;
  uvip_server_options_t o;
  uvip_workers_options_t wo;
  char err[256] = "";
  memset(&G, 0, sizeof(G));
  G.port = th_free_port();
  a = th_addrs("127.0.0.1-127.0.0.2", G.port);
  ck_assert_int_eq(uv_loop_init(&G.loop), 0);
  uvip_server_options_init(&o);
  o.conn_close_cb = free_cdata;
  ck_assert_int_eq(uvip_server_new(&G.loop, a, &o, &G.s), 0);
  uvip_addrs_free(a);
  uvip_workers_options_init(&wo);
  wo.nworkers = 2;
  wo.mode = mode;
  wo.init_cb = wk_init;
  wo.ready_cb = g_ready;
  ck_assert_int_eq(uvip_workers_new(G.s, &wo, &G.w), 0);
  ck_assert_msg(uvip_workers_listen(G.w, old_conn, err, sizeof(err)) == 0,
                "%s", err);
  uv_timer_init(&G.loop, &G.turn);
  uv_timer_start(&G.turn, g_turn, 2, 2);
  for (int i = 0; G.ready < 2 && i < 20000; i++)
    uv_run(&G.loop, UV_RUN_ONCE);
  ck_assert_int_eq(G.ready, 2);
}

/* Connection i, tagged "c<i>", on alternate VIPs; returns its worker. */
static int open_conn(int i, int *fd) {
  struct sockaddr_storage sa;
  char msg[16], want[32], got[64];
  th_addr(i % 2 ? "127.0.0.2" : "127.0.0.1", G.port, &sa);
  *fd = th_connect((struct sockaddr *)&sa, NULL);
  snprintf(msg, sizeof(msg), "c%d", i);
  snprintf(want, sizeof(want), "g1:c%d:", i);
  expect(*fd, msg, want, got, sizeof(got));
  return atoi(got + strlen(want));
}

static void start_upgrade(const char *mode, int quota, pid_t *pid) {
  char ports[16], quotas[16];
  snprintf(ports, sizeof(ports), "%d", G.port);
  snprintf(quotas, sizeof(quotas), "%d", quota);
  char *argv[] = {self, "gen2", (char *)mode, ports, quotas, NULL};
  ck_assert_int_eq(uvip_upgrade_start(&G.loop, &G.s, 1, self, argv, 10000,
                                      g_upgraded, &G.u),
                   0);
  *pid = uvip_upgrade_pid(G.u);
  pump_until(&G.done);
}

/* The listeners are the new generation's: new connections on both VIPs
 * are its own. */
static void new_ones_served_by_gen2(void) {
  for (int i = 0; i < 2; i++) {
    struct sockaddr_storage sa;
    char got[64];
    int fd;
    th_addr(i ? "127.0.0.2" : "127.0.0.1", G.port, &sa);
    fd = th_connect((struct sockaddr *)&sa, NULL);
    expect(fd, "x", "g2:new", got, sizeof(got));
    close(fd);
  }
}

static void old_finish(pid_t pid, int *fds, int n) {
  int st;
  ck_assert_int_eq(uvip_upgrade_close(G.u, NULL), 0);
  for (int i = 0; i < n; i++)
    if (fds[i] >= 0)
      close(fds[i]);
  ck_assert_int_eq(uvip_workers_close(G.w, g_wclosed), 0);
  pump_until(&G.wclosed);
  uv_close((uv_handle_t *)&G.turn, NULL);
  ck_assert_int_eq(uvip_server_close(G.s, NULL), 0);
  uv_run(&G.loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(uv_loop_close(&G.loop), 0);
  ck_assert_int_eq(waitpid(pid, &st, 0), pid);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "gen2 status %d", st);
}

static void moves_idle(int mode, const char *modename) {
  int fds[NCONN + 1], held;
  char got[64], want[32];
  uint64_t active = 0;
  pid_t pid;
  old_start(mode);
  for (int i = 0; i < NCONN; i++)
    open_conn(i, &fds[i]);
  /* A busy one: input the worker has not read. */
  {
    struct sockaddr_storage sa;
    th_addr("127.0.0.1", G.port, &sa);
    held = fds[NCONN] = th_connect((struct sockaddr *)&sa, NULL);
    expect(held, "hold", "held", got, sizeof(got));
    ck_assert_int_eq(write(held, "x", 1), 1);
  }
  start_upgrade(modename, NCONN, &pid);
  ck_assert_uint_eq(G.moved, NCONN);
  ck_assert_uint_eq(G.kept, 1);
  /* Moved ones were given back by the old workers: only the busy one is
   * held there. */
  for (int k = 0; k < 20000; k++) {
    uvip_worker_stats_t st;
    active = 0;
    for (unsigned i = 0; i < 2; i++)
      if (uvip_workers_stats(G.w, i, &st) == 0)
        active += st.active;
    if (active == 1)
      break;
    uv_run(&G.loop, UV_RUN_ONCE);
  }
  ck_assert_uint_eq(active, 1);
  /* The busy one drains in its old worker: its input is answered there. */
  expect(held, NULL, "g1:x:", got, sizeof(got));
  /* The moved ones answer from the new generation, with their blob. */
  for (int i = 0; i < NCONN; i++) {
    snprintf(want, sizeof(want), "g2:c%d", i);
    expect(fds[i], "?", want, got, sizeof(got));
  }
  new_ones_served_by_gen2();
  old_finish(pid, fds, NCONN + 1);
}

START_TEST(test_threads_move_idle) { moves_idle(UVIP_WORKER_THREAD, "thread"); }
END_TEST

START_TEST(test_processes_move_idle) {
  moves_idle(UVIP_WORKER_PROCESS, "process");
}
END_TEST

/* A worker process dies in the middle of its hand-over: the other
 * worker's connections still move, the hand-over still ends (the dead
 * one's part with it), and no listener is lost. */
START_TEST(test_process_dies_mid_handover) {
  int fds[NCONN], on1 = 0, dying = -1;
  int where[NCONN];
  char got[64], want[32];
  pid_t pid;
  uvip_worker_stats_t st;
  old_start(UVIP_WORKER_PROCESS);
  for (int i = 0; i < NCONN; i++)
    where[i] = open_conn(i, &fds[i]);
  /* Worker 1 gets the order to die at its first decide. */
  for (int i = 0; i < NCONN; i++)
    if (where[i] == 1) {
      on1++;
      dying = i;
    }
  ck_assert_int_gt(on1, 0);
  ck_assert_int_lt(on1, NCONN);
  expect(fds[dying], "die", "dying", got, sizeof(got));
  start_upgrade("process", NCONN - on1, &pid);
  ck_assert_uint_eq(G.moved, (size_t)(NCONN - on1));
  ck_assert_uint_eq(G.kept, 0);
  ck_assert_int_eq(uvip_workers_stats(G.w, 1, &st), 0);
  ck_assert_int_eq(st.alive, 0);
  for (int i = 0; i < NCONN; i++)
    if (where[i] == 0) {
      snprintf(want, sizeof(want), "g2:c%d", i);
      expect(fds[i], "?", want, got, sizeof(got));
    }
  new_ones_served_by_gen2();
  old_finish(pid, fds, NCONN);
}
END_TEST

/* The new generation's workers hold 2 connections each: of 6 moved ones,
 * 4 are taken at once and the others wait in the channel until one of
 * those closes; every one is served in the end. */
static void moved_wait_for_room(int mode, const char *modename) {
  int fds[NCONN], answered = 0;
  bool done[NCONN] = {false};
  pid_t pid;
  old_start(mode);
  for (int i = 0; i < NCONN; i++)
    open_conn(i, &fds[i]);
  start_upgrade(modename, NCONN, &pid);
  ck_assert_uint_eq(G.moved, NCONN);
  for (int i = 0; i < NCONN; i++)
    ck_assert_int_eq(write(fds[i], "?", 1), 1);
  while (answered < NCONN) {
    struct pollfd p[NCONN];
    int n;
    for (int i = 0; i < NCONN; i++) {
      p[i].fd = done[i] ? -1 : fds[i];
      p[i].events = POLLIN;
      p[i].revents = 0;
    }
    n = poll(p, NCONN, 10000); /* a bound, not a synchronisation */
    ck_assert_int_gt(n, 0);
    /* At most 4 can be answered before one of them closes. */
    ck_assert_int_le(n, 4);
    for (int i = 0; i < NCONN; i++)
      if (p[i].revents & POLLIN) {
        char got[32] = "", want[32];
        ck_assert_int_gt(read(fds[i], got, sizeof(got) - 1), 0);
        snprintf(want, sizeof(want), "g2:c%d", i);
        ck_assert_str_eq(got, want);
        close(fds[i]); /* room for the next one */
        fds[i] = -1;
        done[i] = true;
        answered++;
      }
  }
  old_finish(pid, fds, NCONN);
}

START_TEST(test_threads_moved_wait_for_room) {
  moved_wait_for_room(UVIP_WORKER_THREAD, "thread-cap");
}
END_TEST

START_TEST(test_processes_moved_wait_for_room) {
  moved_wait_for_room(UVIP_WORKER_PROCESS, "process-cap");
}
END_TEST

/* Teardown in the middle: the upgrade and the workers are closed from
 * the upgrade's callback, right after the hand-over began. done runs once,
 * the workers close (giving back what they had queued for moving), and
 * every connection is either moved or closed. */
static int td_done;
static bool td_workers_first; /* close the workers only; the upgrade from done */
static void td_done_cb(uvip_upgrade_t *u, size_t moved, size_t kept) {
  (void)moved;
  (void)kept;
  td_done++;
  if (td_workers_first)
    ck_assert_int_eq(uvip_upgrade_close(u, NULL), 0);
}

static void td_upgraded(uvip_upgrade_t *u, int status, const char *why) {
  ck_assert_msg(status == 0, "%s", why);
  G.upgraded = true;
  ck_assert_int_eq(uvip_server_stop(G.s), 0);
  ck_assert_int_eq(uvip_upgrade_handover(u, G.s, decide, td_done_cb), 0);
  if (!td_workers_first) {
    ck_assert_int_eq(uvip_upgrade_close(u, NULL), 0);
    ck_assert_int_eq(td_done, 1);
  }
  ck_assert_int_eq(uvip_workers_close(G.w, g_wclosed), 0);
  /* Workers closing: no second hand-over. */
  if (td_workers_first)
    ck_assert_int_eq(td_done, 0);
}

static void teardown_mid_handover(int mode, const char *modename,
                                  bool workers_first) {
  int fds[NCONN], st;
  char ports[16];
  pid_t pid;
  td_done = 0;
  td_workers_first = workers_first;
  old_start(mode);
  for (int i = 0; i < NCONN; i++)
    open_conn(i, &fds[i]);
  snprintf(ports, sizeof(ports), "%d", G.port);
  char *argv[] = {self, "gen2", (char *)modename, ports, "-1", NULL};
  ck_assert_int_eq(uvip_upgrade_start(&G.loop, &G.s, 1, self, argv, 10000,
                                      td_upgraded, &G.u),
                   0);
  pid = uvip_upgrade_pid(G.u);
  pump_until(&G.wclosed);
  ck_assert_int_eq(td_done, 1);
  uv_close((uv_handle_t *)&G.turn, NULL);
  ck_assert_int_eq(uvip_server_close(G.s, NULL), 0);
  uv_run(&G.loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(uv_loop_close(&G.loop), 0);
  /* Each connection was moved (and answers there) or closed here. */
  for (int i = 0; i < NCONN; i++) {
    char want[16], buf[32] = "";
    struct timeval tv = {10, 0}; /* a bound, not a synchronisation */
    ssize_t n;
    setsockopt(fds[i], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    snprintf(want, sizeof(want), "g2:c%d", i);
    if (write(fds[i], "?", 1) == 1 &&
        (n = read(fds[i], buf, sizeof(buf) - 1)) > 0)
      ck_assert_str_eq(buf, want);
    close(fds[i]);
  }
  ck_assert_int_eq(waitpid(pid, &st, 0), pid);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "gen2 status %d", st);
}

START_TEST(test_threads_teardown_mid_handover) {
  teardown_mid_handover(UVIP_WORKER_THREAD, "thread", false);
  teardown_mid_handover(UVIP_WORKER_THREAD, "thread", true);
}
END_TEST

START_TEST(test_processes_teardown_mid_handover) {
  teardown_mid_handover(UVIP_WORKER_PROCESS, "process", false);
  teardown_mid_handover(UVIP_WORKER_PROCESS, "process", true);
}
END_TEST

/* ---- uvip-echo --workers: SIGUSR2 ------------------------------------- */

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

/* uvip-echo with two workers, five long-lived connections: one SIGUSR2
 * moves all five to the new generation's workers; they keep echoing after
 * the old generation has exited; the logs of each generation say what
 * happened. */
static void echo_workers(const char *mode) {
  const char *bdir = getenv("UVIP_BUILD_DIR");
  char echo[512], portstr[16], pidf[64], log[16384] = "", want[64];
  int port = th_free_port(), pfd[2], fds[5], st;
  struct sockaddr_storage sa;
  pid_t first, second;
  FILE *out;

  ck_assert_ptr_nonnull(bdir);
  ck_assert_int_eq(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
  snprintf(echo, sizeof(echo), "%s/examples/uvip-echo", bdir);
  snprintf(portstr, sizeof(portstr), "%d", port);
  snprintf(pidf, sizeof(pidf), "/tmp/uvip-test-upgrade-wk-%d.pid", getpid());
  ck_assert_int_eq(pipe(pfd), 0);
  first = fork();
  ck_assert_int_ge(first, 0);
  if (first == 0) {
    dup2(pfd[1], 1);
    dup2(pfd[1], 2);
    execl(echo, echo, "--listen", "127.0.0.1-127.0.0.2", "--port", portstr,
          "--pid-file", pidf, "--shutdown-timeout", "3000", "--workers", "2",
          "--worker-mode", mode, (char *)NULL);
    _exit(127);
  }
  close(pfd[1]);
  out = fdopen(pfd[0], "r");
  th_read_until(out, "serving 2 of 2 VIPs", log, sizeof(log));
  ck_assert_int_eq(read_pid_file(pidf), first);
  for (int i = 0; i < 5; i++) {
    th_addr(i % 2 ? "127.0.0.2" : "127.0.0.1", port, &sa);
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
  snprintf(want, sizeof(want), "listening on 127.0.0.2:%d (adopted)", port);
  ck_assert_msg(strstr(log, want), "%s", log);
  ck_assert_msg(strstr(log, "upgrade: moved 5 connections, 0 drain here"),
                "%s", log);
  second = read_pid_file(pidf);
  ck_assert_int_ne(second, first);
  /* The old generation is gone: the new one's workers echo. */
  for (int i = 0; i < 5; i++)
    echo_roundtrip(fds[i], "two");
  th_addr("127.0.0.2", port, &sa);
  {
    int c = th_connect((struct sockaddr *)&sa, NULL);
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

/* uvip-echo --workers 2 --worker-mode process --handoff-socket: a second
 * process started the same way takes the listeners and, after its
 * probation, the first one's workers move their idle connections to its
 * workers; they keep echoing once the first has exited. */
START_TEST(test_echo_workers_handoff_socket) {
  const char *bdir = getenv("UVIP_BUILD_DIR");
  char echo[512], portstr[16], sock[64], log[16384] = "";
  int port = th_free_port(), pfd[2], fds[4], st;
  struct sockaddr_storage sa;
  pid_t pid[2];
  FILE *out;
  ck_assert_ptr_nonnull(bdir);
  snprintf(echo, sizeof(echo), "%s/examples/uvip-echo", bdir);
  snprintf(portstr, sizeof(portstr), "%d", port);
  snprintf(sock, sizeof(sock), "/tmp/uvip-test-wk-ho-%d.sock", getpid());
  unlink(sock);
  ck_assert_int_eq(pipe(pfd), 0);
  out = fdopen(pfd[0], "r");
  for (int k = 0; k < 2; k++) {
    pid[k] = fork();
    ck_assert_int_ge(pid[k], 0);
    if (pid[k] == 0) {
      dup2(pfd[1], 1);
      dup2(pfd[1], 2);
      execl(echo, echo, "--listen", "127.0.0.1-127.0.0.2", "--port", portstr,
            "--handoff-socket", sock, "--shutdown-timeout", "3000",
            "--workers", "2", "--worker-mode", "process", (char *)NULL);
      _exit(127);
    }
    th_read_until(out, "serving 2 of 2 VIPs", log, sizeof(log));
    if (k == 1)
      break;
    for (int i = 0; i < 4; i++) {
      th_addr(i % 2 ? "127.0.0.2" : "127.0.0.1", port, &sa);
      fds[i] = th_connect((struct sockaddr *)&sa, NULL);
      echo_roundtrip(fds[i], "one");
    }
  }
  close(pfd[1]);
  th_read_until(out, "drained: no connection left", log, sizeof(log));
  ck_assert_int_eq(waitpid(pid[0], &st, 0), pid[0]);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s", log);
  if (!strstr(log, "received 4 connections"))
    th_read_until(out, "received 4 connections", log, sizeof(log));
  ck_assert_msg(strstr(log, "upgrade: moved 4 connections, 0 drain here"),
                "%s", log);
  for (int i = 0; i < 4; i++) {
    echo_roundtrip(fds[i], "two");
    close(fds[i]);
  }
  ck_assert_int_eq(kill(pid[1], SIGTERM), 0);
  ck_assert_int_eq(waitpid(pid[1], &st, 0), pid[1]);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s", log);
  fclose(out);
  unlink(sock);
}
END_TEST

START_TEST(test_echo_thread_workers_sigusr2) { echo_workers("thread"); }
END_TEST

START_TEST(test_echo_process_workers_sigusr2) { echo_workers("process"); }
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

/* uvip-http --workers 2 --worker-mode process: SIGUSR2 moves the
 * keep-alive connections between requests to the new generation's
 * workers; they go on answering after the old generation exited. */
START_TEST(test_http_process_workers_sigusr2) {
  const char *bdir = getenv("UVIP_BUILD_DIR");
  char http[512], portstr[16], pidf[64], log[16384] = "";
  int port = th_free_port(), pfd[2], fds[3], st;
  struct sockaddr_storage sa;
  pid_t first, second;
  FILE *out;
  ck_assert_ptr_nonnull(bdir);
  snprintf(http, sizeof(http), "%s/examples/uvip-http", bdir);
  ck_assert_int_eq(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
  snprintf(portstr, sizeof(portstr), "%d", port);
  snprintf(pidf, sizeof(pidf), "/tmp/uvip-test-http-wk-%d.pid", getpid());
  ck_assert_int_eq(pipe(pfd), 0);
  first = fork();
  ck_assert_int_ge(first, 0);
  if (first == 0) {
    dup2(pfd[1], 1);
    dup2(pfd[1], 2);
    execl(http, http, "--listen", "127.0.0.1", "--port", portstr,
          "--pid-file", pidf, "--census-interval-ms", "0", "--workers", "2",
          "--worker-mode", "process", (char *)NULL);
    _exit(127);
  }
  close(pfd[1]);
  out = fdopen(pfd[0], "r");
  th_read_until(out, "ready", log, sizeof(log));
  th_addr("127.0.0.1", port, &sa);
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

/* uvip-http --workers 2 --worker-mode process --handoff-socket: a second
 * process takes the listeners from the first over the socket and, after
 * the probation, the first one's workers move their keep-alive
 * connections to its workers; they go on answering once the first exited. */
START_TEST(test_http_workers_handoff_socket) {
  const char *bdir = getenv("UVIP_BUILD_DIR");
  char http[512], portstr[16], sock[64], log[16384] = "";
  int port = th_free_port(), pfd[2], fds[3], st;
  struct sockaddr_storage sa;
  pid_t pid[2];
  FILE *out;
  ck_assert_ptr_nonnull(bdir);
  snprintf(http, sizeof(http), "%s/examples/uvip-http", bdir);
  snprintf(portstr, sizeof(portstr), "%d", port);
  snprintf(sock, sizeof(sock), "/tmp/uvip-test-http-ho-%d.sock", getpid());
  unlink(sock);
  ck_assert_int_eq(pipe(pfd), 0);
  out = fdopen(pfd[0], "r");
  th_addr("127.0.0.1", port, &sa);
  for (int k = 0; k < 2; k++) {
    pid[k] = fork();
    ck_assert_int_ge(pid[k], 0);
    if (pid[k] == 0) {
      dup2(pfd[1], 1);
      dup2(pfd[1], 2);
      execl(http, http, "--listen", "127.0.0.1", "--port", portstr,
            "--handoff-socket", sock, "--census-interval-ms", "0",
            "--workers", "2", "--worker-mode", "process", (char *)NULL);
      _exit(127);
    }
    th_read_until(out, "ready", log, sizeof(log));
    if (k == 1)
      break;
    for (int i = 0; i < 3; i++) {
      fds[i] = th_connect((struct sockaddr *)&sa, NULL);
      http_get(fds[i]);
    }
  }
  close(pfd[1]);
  th_read_until(out, "moved 3 connections, 0 drain here", log, sizeof(log));
  ck_assert_int_eq(waitpid(pid[0], &st, 0), pid[0]);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s", log);
  if (!strstr(log, "received 3 connections"))
    th_read_until(out, "received 3 connections", log, sizeof(log));
  for (int i = 0; i < 3; i++) {
    http_get(fds[i]);
    close(fds[i]);
  }
  ck_assert_int_eq(kill(pid[1], SIGTERM), 0);
  ck_assert_int_eq(waitpid(pid[1], &st, 0), pid[1]);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s", log);
  fclose(out);
  unlink(sock);
}
END_TEST

int main(int argc, char **argv) {
  ssize_t n;
  if (argc == 5 && !strcmp(argv[1], "gen2"))
    return gen2(argv[2], argv[3], argv[4]);
  n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0)
    return 1;
  self[n] = 0;
  Suite *s = suite_create("upgrade-workers");
  TCase *tc = tcase_create("upgrade-workers");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_threads_move_idle);
  tcase_add_test(tc, test_processes_move_idle);
  tcase_add_test(tc, test_process_dies_mid_handover);
  tcase_add_test(tc, test_threads_moved_wait_for_room);
  tcase_add_test(tc, test_processes_moved_wait_for_room);
  tcase_add_test(tc, test_threads_teardown_mid_handover);
  tcase_add_test(tc, test_processes_teardown_mid_handover);
  tcase_add_test(tc, test_echo_thread_workers_sigusr2);
  tcase_add_test(tc, test_echo_process_workers_sigusr2);
  tcase_add_test(tc, test_http_process_workers_sigusr2);
  tcase_add_test(tc, test_echo_workers_handoff_socket);
  tcase_add_test(tc, test_http_workers_handoff_socket);
  suite_add_tcase(s, tc);
  return th_run_suite(s);
}
