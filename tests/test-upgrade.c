/* Upgrade by re-exec (uvip_upgrade_start()): this program is also the new
 * generation (run with "gen2 MODE PORT"). The old generation's connections
 * queued before and during the upgrade are served by the new one, the old
 * one's loop never stalls, and every way the new one can fail leaves the
 * old one serving with a clear reason.
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"
#include "restart-internal.h" /* the channel's message format */

static char self[4096];

/* ---- The new generation ------------------------------------------------ */

static void gen2_alloc(uv_handle_t *h, size_t n, uv_buf_t *b) {
  static char buf[64];
  (void)h;
  (void)n;
  *b = uv_buf_init(buf, sizeof(buf));
}

static int gen2_served, gen2_quota;
static uvip_server_t *gen2_server;

static void gen2_write_done(uv_write_t *w, int status) {
  uvip_conn_t *c = w->data;
  (void)status;
  free(w);
  uvip_conn_close(c, NULL);
  if (++gen2_served == gen2_quota)
    uvip_server_close(gen2_server, NULL);
}

/* Answers "gen2" and closes: the client knows who served it. */
static void gen2_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b) {
  uvip_conn_t *c = uvip_conn_from_tcp((uv_tcp_t *)st);
  (void)b;
  if (n < 0) {
    uvip_conn_close(c, NULL);
    return;
  }
  if (n > 0) {
    uv_write_t *w = malloc(sizeof(*w));
    uv_buf_t out = uv_buf_init("gen2", 4);
    w->data = c;
    uv_read_stop(st);
    uv_write(w, st, &out, 1, gen2_write_done);
  }
}

static void gen2_conn(uvip_server_t *s, uvip_conn_t *c) {
  (void)s;
  uv_read_start(uvip_conn_stream(c), gen2_alloc, gen2_read);
}

/* "move" mode: serves moved connections, answering "g2" and the blob the
 * old generation sent with each; ends when quota of them have closed. */
static int moved_closed, moved_ends;
static void moved_conn_closed(uvip_conn_t *c) {
  free(uv_handle_get_data((uv_handle_t *)uvip_conn_tcp(c)));
  if (++moved_closed == gen2_quota)
    uvip_server_close(gen2_server, NULL);
}

static void moved_write_done(uv_write_t *w, int status) {
  (void)status;
  free(w);
}

static void moved_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b) {
  char *blob = uv_handle_get_data((uv_handle_t *)st);
  (void)b;
  if (n < 0) {
    uvip_conn_close(uvip_conn_from_tcp((uv_tcp_t *)st), moved_conn_closed);
    return;
  }
  if (n > 0) {
    uv_write_t *w = malloc(sizeof(*w) + 16);
    char *out = (char *)(w + 1);
    uv_buf_t ob;
    snprintf(out, 16, "g2%s", blob);
    ob = uv_buf_init(out, (unsigned)strlen(out));
    uv_write(w, st, &ob, 1, moved_write_done);
  }
}

static void on_moved(uvip_server_t *s, uvip_conn_t *c, const void *blob,
                     size_t len) {
  char *copy = calloc(1, len + 1);
  uvip_vip_stats_t st;
  memcpy(copy, blob, len);
  uv_handle_set_data((uv_handle_t *)uvip_conn_tcp(c), copy);
  uv_read_start(uvip_conn_stream(c), gen2_alloc, moved_read);
  /* Counted like an accepted connection. */
  if (uvip_server_stats(s, &st) != 0 || st.active == 0)
    exit(20);
}

static void on_moved_end(uvip_moved_t *m, int status, size_t received) {
  (void)m;
  moved_ends++;
  if (status != 0 || (int)received != gen2_quota)
    exit(21);
}

static int gen2(const char *mode, const char *port, const char *quota) {
  uvip_server_options_t o;
  uvip_addrs_t *a;
  char err[256];
  uv_loop_t *loop = uv_default_loop();
  if (!strcmp(mode, "die"))
    return 3;
  if (!strcmp(mode, "hang"))
    for (;;)
      pause();
  if (!strcmp(mode, "garbage"))
    return write(atoi(getenv("UVIP_READY_FD")), "xxxxxxxxx", 9) == 9 ? 0 : 4;
  if (uvip_addrs_new(&a) != 0 ||
      uvip_addrs_parse(a, "127.0.0.1-127.0.0.2", atoi(port), err,
                       sizeof(err)) != 0)
    return 10;
  /* One name per passed socket, as systemd writes them. */
  if (!getenv("LISTEN_FDNAMES") || strcmp(getenv("LISTEN_FDNAMES"), "uvip:uvip"))
    return 19;
  uvip_server_options_init(&o);
  o.flags = UVIP_SOCKET_ACTIVATION;
  if (uvip_server_new(loop, a, &o, &gen2_server) != 0)
    return 11;
  uvip_addrs_free(a);
  if (uvip_server_listen(gen2_server, gen2_conn, err, sizeof(err)) != 0) {
    fprintf(stderr, "gen2: %s\n", err);
    return 12;
  }
  /* Nothing may have been bound anew: both came from the old one. */
  if (uvip_vip_adopted(uvip_server_vip(gen2_server, 0)) != 1 ||
      uvip_vip_adopted(uvip_server_vip(gen2_server, 1)) != 1)
    return 13;
  if (getenv("LISTEN_FDS") || getenv("LISTEN_PID"))
    return 14;
  gen2_quota = atoi(quota);
  if (!strcmp(mode, "move")) {
    uvip_moved_t *m;
    if (uvip_moved_start(gen2_server, on_moved, on_moved_end, &m) != 0 || !m)
      return 17;
  }
  if (uvip_upgrade_ready() != 0 || getenv("UVIP_READY_FD"))
    return 15;
  if (!strcmp(mode, "crash")) {
    /* Ready, but never accepts: exits 5 when the test writes to the pipe
     * (its descriptor in place of the quota). Whatever queued meanwhile is
     * the old generation's to serve. */
    char b;
    return read(atoi(quota), &b, 1) == 1 ? 5 : 6;
  }
  uv_run(loop, UV_RUN_DEFAULT);
  if (!strcmp(mode, "move") && moved_ends != 1)
    return 18;
  return uv_loop_close(loop) == 0 ? 0 : 16;
}

/* ---- The old generation ------------------------------------------------ */

static struct {
  uv_loop_t loop;
  uvip_server_t *s;
  uvip_upgrade_t *u;
  int status, reports, closes, accepted;
  char why[256];
  uv_timer_t tick;
  uint64_t last_tick, max_gap;
  bool done;
} G;

static void on_tick(uv_timer_t *t) {
  uint64_t now = uv_now(t->loop);
  if (G.last_tick && now - G.last_tick > G.max_gap)
    G.max_gap = now - G.last_tick;
  G.last_tick = now;
}

static void old_conn(uvip_server_t *s, uvip_conn_t *c) {
  (void)s;
  G.accepted++;
  uvip_conn_close(c, NULL);
}

static void on_upgrade(uvip_upgrade_t *u, int status, const char *why) {
  ck_assert_ptr_eq(u, G.u);
  G.reports++;
  G.status = status;
  snprintf(G.why, sizeof(G.why), "%s", why);
  /* The new generation serves: stop accepting here. */
  if (status == 0)
    ck_assert_int_eq(uvip_server_stop(G.s), 0);
}

static void on_upgrade_closed(uvip_upgrade_t *u) {
  (void)u;
  G.closes++;
  G.done = true;
}

static int old_start(const char *spec, int port) {
  uvip_addrs_t *a = th_addrs(spec, port);
  char err[256] = "";
  memset(&G, 0, sizeof(G));
  G.status = 1;
  ck_assert_int_eq(uv_loop_init(&G.loop), 0);
  ck_assert_int_eq(uvip_server_new(&G.loop, a, NULL, &G.s), 0);
  uvip_addrs_free(a);
  ck_assert_msg(uvip_server_listen(G.s, old_conn, err, sizeof(err)) == 0, "%s",
                err);
  uv_timer_init(&G.loop, &G.tick);
  uv_timer_start(&G.tick, on_tick, 10, 10);
  return port;
}

static void old_finish(void) {
  bool closed = false;
  (void)closed;
  uv_close((uv_handle_t *)&G.tick, NULL);
  ck_assert_int_eq(uvip_server_close(G.s, NULL), 0);
  uv_run(&G.loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(uv_loop_close(&G.loop), 0);
}

static void run_until_reported(void) {
  for (int i = 0; G.reports == 0 && i < 100000; i++)
    uv_run(&G.loop, UV_RUN_ONCE);
  ck_assert_int_eq(G.reports, 1);
}

static void close_upgrade(void) {
  int r = uvip_upgrade_close(G.u, on_upgrade_closed);
  ck_assert_int_eq(r, 0);
  ck_assert_int_eq(uvip_upgrade_close(G.u, NULL), UV_EALREADY);
  for (int i = 0; !G.done && i < 1000; i++)
    uv_run(&G.loop, UV_RUN_ONCE);
  ck_assert_int_eq(G.closes, 1);
}

static void expect_reply(int fd, const char *want) {
  char buf[8] = "";
  struct timeval tv = {10, 0}; /* a bound, not a synchronisation */
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ck_assert_int_eq(write(fd, "hi", 2), 2);
  ck_assert_int_eq(read(fd, buf, 4), (ssize_t)strlen(want));
  ck_assert_str_eq(buf, want);
}

static int reap(pid_t pid) {
  int st;
  ck_assert_int_eq(waitpid(pid, &st, 0), pid);
  return st;
}

START_TEST(test_upgrade_hands_over) {
  int port = old_start("127.0.0.1-127.0.0.2", th_free_port()), c[3], st;
  char ports[16];
  struct sockaddr_storage sa1, sa2;
  pid_t pid;
  snprintf(ports, sizeof(ports), "%d", port);
  char *argv[] = {self, "gen2", "serve", ports, "3", NULL};
  th_addr("127.0.0.1", port, &sa1);
  th_addr("127.0.0.2", port, &sa2);
  /* Queued before the upgrade starts; the old one has not accepted it
   * (its loop has not run). */
  c[0] = th_connect((struct sockaddr *)&sa1, NULL);
  ck_assert_int_eq(
      uvip_upgrade_start(&G.loop, &G.s, 1, self, argv, 10000, on_upgrade, &G.u),
      0);
  pid = uvip_upgrade_pid(G.u);
  ck_assert_int_gt(pid, 0);
  run_until_reported();
  ck_assert_msg(G.status == 0, "%s", G.why);
  ck_assert_int_eq(uvip_server_is_listening(G.s), 0);
  /* After the old one stopped: only the new one can answer. */
  c[1] = th_connect((struct sockaddr *)&sa1, NULL);
  c[2] = th_connect((struct sockaddr *)&sa2, NULL);
  /* c[0] was either accepted by the old one before the hand-over (and
   * closed: it counts in G.accepted) or is served by the new one. */
  if (G.accepted == 0)
    expect_reply(c[0], "gen2");
  expect_reply(c[1], "gen2");
  expect_reply(c[2], "gen2");
  close_upgrade();
  ck_assert_int_le(G.max_gap, 100);
  old_finish();
  if (G.accepted == 1) {
    /* The quota of 3 was not reached: one more for the new generation. */
    int c3 = th_connect((struct sockaddr *)&sa2, NULL);
    expect_reply(c3, "gen2");
    close(c3);
  }
  st = reap(pid);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "gen2 status %d", st);
  for (int i = 0; i < 3; i++)
    close(c[i]);
}
END_TEST

/* Each failure: the reason, and the old generation still serves. */
static void failing(const char *path, const char *mode, uint64_t timeout,
                    int want, const char *why_part) {
  int port = old_start("127.0.0.1", th_free_port()), fd;
  char ports[16];
  struct sockaddr_storage sa;
  snprintf(ports, sizeof(ports), "%d", port);
  char *argv[] = {self, "gen2", (char *)mode, ports, "1", NULL};
  ck_assert_int_eq(uvip_upgrade_start(&G.loop, &G.s, 1, path, argv, timeout,
                                      on_upgrade, &G.u),
                   0);
  run_until_reported();
  ck_assert_msg(G.status == want, "status %s, want %s: %s",
                uv_err_name(G.status), uv_err_name(want), G.why);
  ck_assert_msg(strstr(G.why, why_part), "'%s' lacks '%s'", G.why, why_part);
  ck_assert_int_eq(uvip_server_is_listening(G.s), 1);
  th_addr("127.0.0.1", port, &sa);
  fd = th_connect((struct sockaddr *)&sa, NULL);
  for (int i = 0; G.accepted < 1 && i < 1000; i++)
    uv_run(&G.loop, UV_RUN_ONCE);
  ck_assert_int_eq(G.accepted, 1);
  close(fd);
  /* A killed child is reaped on the loop. */
  for (int i = 0; uvip_upgrade_pid(G.u) != 0 && i < 100000; i++)
    uv_run(&G.loop, UV_RUN_ONCE);
  ck_assert_int_eq(uvip_upgrade_pid(G.u), 0);
  close_upgrade();
  ck_assert_int_le(G.max_gap, 100);
  old_finish();
}

START_TEST(test_upgrade_bad_binary) {
  failing("/nonexistent/uvip-next", "serve", 10000, UV_ENOENT,
          "cannot execute /nonexistent/uvip-next");
}
END_TEST

START_TEST(test_upgrade_exits_before_ready) {
  failing(self, "die", 10000, UV_ESRCH, "exited with status 3");
}
END_TEST

START_TEST(test_upgrade_times_out) {
  failing(self, "hang", 200, UV_ETIMEDOUT, "not ready within 200 ms");
}
END_TEST

START_TEST(test_upgrade_garbage) {
  failing(self, "garbage", 10000, UV_EPROTO, "garbage");
}
END_TEST

/* Closed before it is ready: the callback says so first, the child is
 * killed, and the close callback comes once. */
START_TEST(test_upgrade_closed_early) {
  int port = old_start("127.0.0.1", th_free_port()), st;
  char ports[16];
  pid_t pid;
  snprintf(ports, sizeof(ports), "%d", port);
  char *argv[] = {self, "gen2", "hang", ports, "1", NULL};
  ck_assert_int_eq(uvip_upgrade_start(&G.loop, &G.s, 1, self, argv, 10000,
                                      on_upgrade, &G.u),
                   0);
  pid = uvip_upgrade_pid(G.u);
  close_upgrade();
  ck_assert_int_eq(G.reports, 1);
  ck_assert_int_eq(G.status, UV_ECANCELED);
  st = reap(pid);
  ck_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
  ck_assert_int_eq(uvip_server_is_listening(G.s), 1);
  old_finish();
}
END_TEST

/* ---- Moving ---- */

#define NMOVE 10
static struct {
  uvip_conn_t *conns[NMOVE + 1];
  int n, answered;
  size_t moved, kept;
  bool done;
  int held; /* index of the busy one */
} MV;

static void mv_alloc(uv_handle_t *h, size_t n, uv_buf_t *b) {
  static char buf[64];
  (void)h;
  (void)n;
  *b = uv_buf_init(buf, sizeof(buf));
}

static void mv_write_done(uv_write_t *w, int status) {
  (void)status;
  free(w);
}

static void mv_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b) {
  (void)b;
  if (n < 0) {
    uvip_conn_close(uvip_conn_from_tcp((uv_tcp_t *)st), NULL);
    return;
  }
  if (n > 0) {
    uv_write_t *w = malloc(sizeof(*w));
    uv_buf_t ob = uv_buf_init("g1", 2);
    uv_write(w, st, &ob, 1, mv_write_done);
    MV.answered++;
  }
}

static void mv_conn(uvip_server_t *s, uvip_conn_t *c) {
  (void)s;
  ck_assert_int_lt(MV.n, NMOVE + 1);
  MV.conns[MV.n++] = c;
  uv_read_start(uvip_conn_stream(c), mv_alloc, mv_read);
}

static int mv_decide(uvip_conn_t *c, void *blob, size_t *len) {
  for (int i = 0; i < MV.n; i++)
    if (MV.conns[i] == c) {
      *len = (size_t)snprintf(blob, 16, "c%d", i);
      return UVIP_HANDOVER_MOVE;
    }
  ck_abort_msg("unknown connection");
  return UVIP_HANDOVER_KEEP;
}

static void mv_done(uvip_upgrade_t *u, size_t moved, size_t kept) {
  (void)u;
  MV.moved = moved;
  MV.kept = kept;
  MV.done = true;
  /* The busy one drains here: read what it sent. */
  uv_read_start(uvip_conn_stream(MV.conns[MV.held]), mv_alloc, mv_read);
}

static void mv_upgraded(uvip_upgrade_t *u, int status, const char *why) {
  G.reports++;
  G.status = status;
  snprintf(G.why, sizeof(G.why), "%s", why);
  if (status == 0) {
    ck_assert_int_eq(uvip_server_stop(G.s), 0);
    ck_assert_int_eq(uvip_upgrade_handover(u, G.s, mv_decide, mv_done), 0);
    ck_assert_int_eq(uvip_upgrade_handover(u, G.s, mv_decide, mv_done),
                     UV_EBUSY);
  }
}

static void ask(int fd, const char *want) {
  char buf[16] = "";
  struct timeval tv = {10, 0}; /* a bound, not a synchronisation */
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ck_assert_int_eq(write(fd, "?", 1), 1);
  ck_assert_int_eq(read(fd, buf, sizeof(buf) - 1), (ssize_t)strlen(want));
  ck_assert_str_eq(buf, want);
}

/* Idle connections move to the new generation with their blob and keep
 * working there; the busy one (unread input) stays and drains here. */
START_TEST(test_upgrade_moves_idle) {
  int port = old_start("127.0.0.1-127.0.0.2", th_free_port()), fds[NMOVE + 1];
  char ports[16], quota[16];
  struct sockaddr_storage sa;
  pid_t pid;
  int st;

  memset(&MV, 0, sizeof(MV));
  uvip_server_close(G.s, NULL); /* old_start's, with another callback */
  uv_run(&G.loop, UV_RUN_NOWAIT);
  {
    uvip_addrs_t *a = th_addrs("127.0.0.1-127.0.0.2", port);
    ck_assert_int_eq(uvip_server_new(&G.loop, a, NULL, &G.s), 0);
    uvip_addrs_free(a);
    ck_assert_int_eq(uvip_server_listen(G.s, mv_conn, NULL, 0), 0);
  }
  /* One at a time, so that conns[i] is the server side of fds[i]. */
  for (int i = 0; i <= NMOVE; i++) {
    th_addr(i % 2 ? "127.0.0.2" : "127.0.0.1", port, &sa);
    fds[i] = th_connect((struct sockaddr *)&sa, NULL);
    for (int k = 0; MV.n < i + 1 && k < 1000; k++)
      uv_run(&G.loop, UV_RUN_ONCE);
    ck_assert_int_eq(MV.n, i + 1);
  }
  /* The last one is busy: it sent a byte the server has not read. */
  MV.held = NMOVE;
  uv_read_stop(uvip_conn_stream(MV.conns[MV.held]));
  for (int i = 0; i < NMOVE; i++) {
    ck_assert_int_eq(write(fds[i], "?", 1), 1);
    while (MV.answered < i + 1)
      uv_run(&G.loop, UV_RUN_ONCE);
    char b[4] = "";
    ck_assert_int_eq(read(fds[i], b, 2), 2);
  }
  ck_assert_int_eq(write(fds[NMOVE], "?", 1), 1);

  snprintf(ports, sizeof(ports), "%d", port);
  snprintf(quota, sizeof(quota), "%d", NMOVE);
  char *argv[] = {self, "gen2", "move", ports, quota, NULL};
  ck_assert_int_eq(uvip_upgrade_start(&G.loop, &G.s, 1, self, argv, 10000,
                                      mv_upgraded, &G.u),
                   0);
  pid = uvip_upgrade_pid(G.u);
  for (int i = 0; !MV.done && i < 100000; i++)
    uv_run(&G.loop, UV_RUN_ONCE);
  ck_assert_msg(G.status == 0, "%s", G.why);
  ck_assert(MV.done);
  ck_assert_uint_eq(MV.moved, NMOVE);
  ck_assert_uint_eq(MV.kept, 1);
  {
    uvip_vip_stats_t s;
    /* Moved ones were given back here, like closed ones. */
    for (int i = 0; i < 1000; i++) {
      uvip_server_stats(G.s, &s);
      if (s.active == 1)
        break;
      uv_run(&G.loop, UV_RUN_ONCE);
    }
    ck_assert_uint_eq(s.active, 1);
  }
  /* The moved ones now answer from the new generation, with their blob. */
  for (int i = 0; i < NMOVE; i++) {
    char want[16];
    snprintf(want, sizeof(want), "g2c%d", i);
    ask(fds[i], want);
  }
  /* The busy one is still served here. */
  {
    char b[4] = "";
    struct timeval tv = {10, 0};
    setsockopt(fds[NMOVE], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    while (MV.answered < NMOVE + 1)
      uv_run(&G.loop, UV_RUN_ONCE);
    ck_assert_int_eq(read(fds[NMOVE], b, 2), 2);
    ck_assert_str_eq(b, "g1");
  }
  close_upgrade();
  for (int i = 0; i <= NMOVE; i++)
    close(fds[i]);
  st = reap(pid);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "gen2 status %d", st);
  ck_assert_int_le(G.max_gap, 100);
  old_finish();
}
END_TEST

/* ---- The receiving side with bad messages ---- */

static int mb_moved, mb_ends, mb_status;
static void mb_on_moved(uvip_server_t *s, uvip_conn_t *c, const void *blob,
                        size_t len) {
  (void)s;
  (void)blob;
  (void)len;
  mb_moved++;
  uvip_conn_close(c, NULL);
}
static void mb_on_end(uvip_moved_t *m, int status, size_t received) {
  (void)m;
  (void)received;
  mb_ends++;
  mb_status = status;
}

static void send_msg(int chan, const void *data, size_t len, int fd) {
  struct iovec iov = {(void *)data, len};
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int))];
  } ctl;
  struct msghdr m;
  memset(&m, 0, sizeof(m));
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  if (fd >= 0) {
    struct cmsghdr *cm;
    memset(&ctl, 0, sizeof(ctl));
    m.msg_control = ctl.buf;
    m.msg_controllen = sizeof(ctl.buf);
    cm = CMSG_FIRSTHDR(&m);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &fd, sizeof(int));
  }
  ck_assert_int_eq(sendmsg(chan, &m, 0), (ssize_t)len);
}

/* Each malformed message costs that one connection (closed, counted as
 * dropped), not the channel; a good one after them still arrives. */
START_TEST(test_moved_bad_messages) {
  int port = old_start("127.0.0.1", th_free_port()), sp[2], c;
  uvip_moved_t *m;
  uvip__handover_msg_t h;
  struct sockaddr_storage sa;
  char env[32];
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp),
                   0);
  snprintf(env, sizeof(env), "%d", sp[1]);
  setenv("UVIP_HANDOFF_FD", env, 1);
  ck_assert_int_eq(uvip_moved_start(G.s, mb_on_moved, mb_on_end, &m), 0);
  ck_assert_ptr_nonnull(m);
  ck_assert_ptr_null(getenv("UVIP_HANDOFF_FD"));

  th_addr("127.0.0.1", port, &sa);
  c = th_connect((struct sockaddr *)&sa, NULL);
  memset(&h, 0, sizeof(h));
  h.magic = UVIP__HANDOVER_MAGIC;
  memcpy(&h.vip, &sa, sizeof(sa));
  /* Half a header. */
  send_msg(sp[0], &h, sizeof(h) / 2, c);
  /* A header without a descriptor. */
  send_msg(sp[0], &h, sizeof(h), -1);
  /* A blob length that does not match. */
  h.blob_len = 5;
  send_msg(sp[0], &h, sizeof(h), c);
  h.blob_len = 0;
  /* Wrong magic. */
  h.magic = 1;
  send_msg(sp[0], &h, sizeof(h), c);
  h.magic = UVIP__HANDOVER_MAGIC;
  /* No such VIP. */
  th_addr("127.0.0.9", port, (struct sockaddr_storage *)&h.vip);
  send_msg(sp[0], &h, sizeof(h), c);
  /* A good one. */
  memcpy(&h.vip, &sa, sizeof(sa));
  send_msg(sp[0], &h, sizeof(h), c);
  for (int i = 0; mb_moved < 1 && i < 1000; i++)
    uv_run(&G.loop, UV_RUN_ONCE);
  ck_assert_int_eq(mb_moved, 1);
  ck_assert_uint_eq(uvip_moved_dropped(m), 5);
  ck_assert_int_eq(uvip_moved_close(m), 0);
  ck_assert_int_eq(uvip_moved_close(m), UV_EALREADY);
  for (int i = 0; mb_ends < 1 && i < 1000; i++)
    uv_run(&G.loop, UV_RUN_ONCE);
  ck_assert_int_eq(mb_ends, 1);
  ck_assert_int_eq(mb_status, UV_ECANCELED);
  close(sp[0]);
  close(c);
  old_finish();
}
END_TEST

START_TEST(test_upgrade_args) {
  char *argv[] = {self, NULL};
  uvip_upgrade_t *u;
  uvip_server_t *none = NULL;
  uvip_addrs_t *a = th_addrs("127.0.0.1", th_free_port());
  uv_loop_t loop;
  uv_loop_init(&loop);
  ck_assert_int_eq(uvip_server_new(&loop, a, NULL, &none), 0);
  uvip_addrs_free(a);
  ck_assert_int_eq(uvip_upgrade_start(NULL, &none, 1, self, argv, 1, on_upgrade, &u), UV_EINVAL);
  ck_assert_int_eq(uvip_upgrade_start(&loop, NULL, 1, self, argv, 1, on_upgrade, &u), UV_EINVAL);
  ck_assert_int_eq(uvip_upgrade_start(&loop, &none, 0, self, argv, 1, on_upgrade, &u), UV_EINVAL);
  ck_assert_int_eq(uvip_upgrade_start(&loop, &none, 1, NULL, argv, 1, on_upgrade, &u), UV_EINVAL);
  ck_assert_int_eq(uvip_upgrade_start(&loop, &none, 1, self, NULL, 1, on_upgrade, &u), UV_EINVAL);
  ck_assert_int_eq(uvip_upgrade_start(&loop, &none, 1, self, argv, 0, on_upgrade, &u), UV_EINVAL);
  ck_assert_int_eq(uvip_upgrade_start(&loop, &none, 1, self, argv, 1, NULL, &u), UV_EINVAL);
  ck_assert_int_eq(uvip_upgrade_start(&loop, &none, 1, self, argv, 1, on_upgrade, NULL), UV_EINVAL);
  /* Not listening: nothing to pass. */
  ck_assert_int_eq(uvip_upgrade_start(&loop, &none, 1, self, argv, 1, on_upgrade, &u), UV_ENOENT);
  ck_assert_int_eq(uvip_upgrade_close(NULL, NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_upgrade_handover(NULL, none, mv_decide, NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_moved_close(NULL), UV_EINVAL);
  ck_assert_uint_eq(uvip_moved_dropped(NULL), 0);
  {
    uvip_moved_t *m = (uvip_moved_t *)&loop;
    unsetenv("UVIP_HANDOFF_FD");
    ck_assert_int_eq(uvip_moved_start(none, mb_on_moved, NULL, &m), 0);
    ck_assert_ptr_null(m);
    setenv("UVIP_HANDOFF_FD", "999", 1);
    ck_assert_int_eq(uvip_moved_start(none, mb_on_moved, NULL, &m), UV_EBADF);
    unsetenv("UVIP_HANDOFF_FD");
  }
  ck_assert_int_eq(uvip_upgrade_pid(NULL), 0);
  /* Not started by an upgrade: nothing to tell. */
  unsetenv("UVIP_READY_FD");
  ck_assert_int_eq(uvip_upgrade_ready(), 0);
  setenv("UVIP_READY_FD", "x", 1);
  ck_assert_int_eq(uvip_upgrade_ready(), UV_EINVAL);
  ck_assert_int_eq(uvip_server_close(none, NULL), 0);
  uv_run(&loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST


static pid_t read_pid_file(const char *path) {
  FILE *f = fopen(path, "r");
  int pid = 0;
  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(fscanf(f, "%d", &pid), 1);
  fclose(f);
  return pid;
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

/* Two SIGUSR2 upgrades of uvip-echo with long-lived connections open:
 * every one of them keeps echoing across both, served by the newest
 * generation; the pid file follows; each old generation exits 0. */
START_TEST(test_echo_sigusr2) {
  const char *bdir = getenv("UVIP_BUILD_DIR");
  char echo[512], portstr[16], pidf[64], log[16384] = "";
  int port = th_free_port(), pfd[2], fds[5], st;
  struct sockaddr_storage sa;
  pid_t first, second, third;
  FILE *out;

  ck_assert_ptr_nonnull(bdir);
  /* The generations re-parent to us when their parent exits: we reap. */
  ck_assert_int_eq(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
  snprintf(echo, sizeof(echo), "%s/examples/uvip-echo", bdir);
  snprintf(portstr, sizeof(portstr), "%d", port);
  snprintf(pidf, sizeof(pidf), "/tmp/uvip-test-upgrade-%d.pid", getpid());
  ck_assert_int_eq(pipe(pfd), 0);
  first = fork();
  ck_assert_int_ge(first, 0);
  if (first == 0) {
    dup2(pfd[1], 1);
    dup2(pfd[1], 2);
    execl(echo, echo, "--listen", "127.0.0.1-127.0.0.2", "--port", portstr,
          "--pid-file", pidf, "--shutdown-timeout", "3000", (char *)NULL);
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

  ck_assert_int_eq(kill(first, SIGUSR2), 0);
  th_read_until(out, "upgrade: moved 5 connections, 0 drain here", log,
             sizeof(log));
  th_read_until(out, "received 5 connections", log, sizeof(log));
  ck_assert_int_eq(waitpid(first, &st, 0), first);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s", log);
  second = read_pid_file(pidf);
  ck_assert_int_ne(second, first);
  for (int i = 0; i < 5; i++)
    echo_roundtrip(fds[i], "two");

  ck_assert_int_eq(kill(second, SIGUSR2), 0);
  th_read_until(out, "received 5 connections", log, sizeof(log));
  ck_assert_int_eq(waitpid(second, &st, 0), second);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s", log);
  third = read_pid_file(pidf);
  ck_assert_int_ne(third, second);
  for (int i = 0; i < 5; i++)
    echo_roundtrip(fds[i], "three");
  /* New connections reach the newest generation. */
  th_addr("127.0.0.2", port, &sa);
  {
    int c = th_connect((struct sockaddr *)&sa, NULL);
    echo_roundtrip(c, "new");
    close(c);
  }
  for (int i = 0; i < 5; i++)
    close(fds[i]);
  ck_assert_int_eq(kill(third, SIGTERM), 0);
  th_read_until(out, "bye", log, sizeof(log));
  ck_assert_int_eq(waitpid(third, &st, 0), third);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s", log);
  fclose(out);
  unlink(pidf);
}
END_TEST

static pid_t spawn_echo(const char *portstr, const char *sock, FILE **out) {
  const char *bdir = getenv("UVIP_BUILD_DIR");
  char echo[512];
  int pfd[2];
  pid_t pid;
  snprintf(echo, sizeof(echo), "%s/examples/uvip-echo", bdir);
  ck_assert_int_eq(pipe(pfd), 0);
  pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    dup2(pfd[1], 1);
    dup2(pfd[1], 2);
    execl(echo, echo, "--listen", "127.0.0.1-127.0.0.2", "--port", portstr,
          "--handoff-socket", sock, "--shutdown-timeout", "200", (char *)NULL);
    _exit(127);
  }
  close(pfd[1]);
  *out = fdopen(pfd[0], "r");
  return pid;
}

/* An independent second uvip-echo takes the listeners of the running one
 * over --handoff-socket: after the probation the first stops accepting,
 * moves its idle long-lived connection to the second and exits 0; the
 * second serves both. The first's exit leaves the second's socket file in
 * place. */
START_TEST(test_echo_handoff_socket) {
  char portstr[16], sock[64], loga[8192] = "", logb[8192] = "";
  int port = th_free_port(), l, c, st;
  struct sockaddr_storage sa;
  pid_t a, bpid;
  FILE *oa, *ob;
  ck_assert_ptr_nonnull(getenv("UVIP_BUILD_DIR"));
  snprintf(portstr, sizeof(portstr), "%d", port);
  snprintf(sock, sizeof(sock), "/tmp/uvip-test-handoff-%d.sock", getpid());
  unlink(sock);
  a = spawn_echo(portstr, sock, &oa);
  th_read_until(oa, "serving 2 of 2 VIPs", loga, sizeof(loga));
  th_addr("127.0.0.1", port, &sa);
  l = th_connect((struct sockaddr *)&sa, NULL);
  echo_roundtrip(l, "long");

  bpid = spawn_echo(portstr, sock, &ob);
  th_read_until(ob, "took 2 listeners", logb, sizeof(logb));
  th_read_until(ob, "serving 2 of 2 VIPs", logb, sizeof(logb));
  ck_assert_msg(strstr(logb, "127.0.0.1:") && strstr(logb, "(adopted)"), "%s",
                logb);
  th_read_until(oa, "a new process took the listeners", loga, sizeof(loga));
  /* The idle long-lived connection moves to the second one, over a channel
   * sent on the hand-off connection, and goes on echoing there. */
  th_read_until(oa, "moved 1 connections, 0 drain here", loga, sizeof(loga));
  th_read_until(ob, "received 1 connections", logb, sizeof(logb));
  echo_roundtrip(l, "moved");
  th_read_until(oa, "bye", loga, sizeof(loga));
  ck_assert_int_eq(waitpid(a, &st, 0), a);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s", loga);
  ck_assert_int_eq(access(sock, F_OK), 0);
  c = th_connect((struct sockaddr *)&sa, NULL);
  echo_roundtrip(c, "new");
  close(c);
  close(l);
  ck_assert_int_eq(kill(bpid, SIGTERM), 0);
  th_read_until(ob, "bye", logb, sizeof(logb));
  ck_assert_int_eq(waitpid(bpid, &st, 0), bpid);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s", logb);
  ck_assert_int_eq(access(sock, F_OK), -1);
  fclose(oa);
  fclose(ob);
}
END_TEST

/* One keep-alive GET: the whole response (headers, then a body ending in
 * a newline) on the same connection. */
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

/* uvip-http's SIGUSR2: keep-alive connections between requests move to the
 * new generation and go on answering there. */
START_TEST(test_http_sigusr2) {
  const char *bdir = getenv("UVIP_BUILD_DIR");
  char http[512], portstr[16], pidf[64], log[16384] = "";
  int port = th_free_port(), pfd[2], fds[3], st;
  struct sockaddr_storage sa;
  pid_t first, second;
  FILE *out;
  ck_assert_ptr_nonnull(bdir);
  snprintf(http, sizeof(http), "%s/examples/uvip-http", bdir);
  if (access(http, X_OK) != 0)
    ck_abort_msg("%s not built", http);
  ck_assert_int_eq(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
  snprintf(portstr, sizeof(portstr), "%d", port);
  snprintf(pidf, sizeof(pidf), "/tmp/uvip-test-http-upgrade-%d.pid", getpid());
  ck_assert_int_eq(pipe(pfd), 0);
  first = fork();
  ck_assert_int_ge(first, 0);
  if (first == 0) {
    dup2(pfd[1], 1);
    dup2(pfd[1], 2);
    execl(http, http, "--listen", "127.0.0.1", "--port", portstr,
          "--pid-file", pidf, "--census-interval-ms", "0", (char *)NULL);
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
  th_read_until(out, "received 3 connections", log, sizeof(log));
  ck_assert_int_eq(waitpid(first, &st, 0), first);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s", log);
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

/* ---- Probation ---- */

/* The read end of a pipe for a "crash" new generation, out of the way of
 * the descriptors the upgrade puts at 3..; *w is the end that lets it go. */
static int crash_pipe(int *w) {
  int p[2], r;
  ck_assert_int_eq(pipe2(p, O_CLOEXEC), 0);
  r = fcntl(p[0], F_DUPFD, 100); /* without FD_CLOEXEC: it crosses exec */
  ck_assert_int_ge(r, 100);
  close(p[0]);
  *w = p[1];
  return r;
}

static int began;
static void on_began(uvip_upgrade_t *u) {
  ck_assert_ptr_eq(u, G.u);
  /* Held from here on; nothing reported yet. */
  ck_assert_int_eq(uvip_server_is_held(G.s), 1);
  ck_assert_int_eq(G.reports, 0);
  began++;
}

static void run_until_held(void) {
  for (int i = 0; !uvip_server_is_held(G.s) && G.reports == 0 && i < 100000;
       i++)
    uv_run(&G.loop, UV_RUN_ONCE);
  ck_assert_msg(uvip_server_is_held(G.s), "not held: %s", G.why);
}

static void run_until_accepted(int n) {
  for (int i = 0; G.accepted < n && i < 100000; i++)
    uv_run(&G.loop, UV_RUN_ONCE);
  ck_assert_int_eq(G.accepted, n);
}

/* Closed by the old generation's old_conn: an orderly end, not a reset. */
static void expect_closed(int fd) {
  char b[4];
  struct timeval tv = {10, 0}; /* a bound, not a synchronisation */
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ck_assert_int_eq(read(fd, b, sizeof(b)), 0);
}

/* The new generation says ready and exits during its probation: the old
 * one, which held its listening sockets instead of closing them, accepts
 * again, first the connection queued while nobody accepted, then new ones;
 * the callback says which generation exited, how, and that it serves. */
START_TEST(test_upgrade_probation_crash) {
  int port = old_start("127.0.0.1-127.0.0.2", th_free_port()), w, r, c1, c2;
  char ports[16], fdarg[16], want[96];
  struct sockaddr_storage sa;
  pid_t pid;
  int fd0 = uvip_vip_fd(uvip_server_vip(G.s, 0));
  int fd1 = uvip_vip_fd(uvip_server_vip(G.s, 1));
  r = crash_pipe(&w);
  snprintf(ports, sizeof(ports), "%d", port);
  snprintf(fdarg, sizeof(fdarg), "%d", r);
  char *argv[] = {self, "gen2", "crash", ports, fdarg, NULL};
  ck_assert_int_eq(uvip_upgrade_start(&G.loop, &G.s, 1, self, argv, 10000,
                                      on_upgrade, &G.u),
                   0);
  close(r);
  began = 0;
  ck_assert_int_eq(uvip_upgrade_probation(G.u, 600000, on_began), 0);
  pid = uvip_upgrade_pid(G.u);
  run_until_held();
  ck_assert_int_eq(began, 1);
  ck_assert_int_eq(G.reports, 0);
  ck_assert_int_eq(uvip_server_is_listening(G.s), 1);
  /* Too late to change once it said ready. */
  ck_assert_int_eq(uvip_upgrade_probation(G.u, 1, NULL), UV_EBUSY);
  /* Queued: this one holds, the new one never accepts. */
  th_addr("127.0.0.1", port, &sa);
  c1 = th_connect((struct sockaddr *)&sa, NULL);
  for (int i = 0; i < 10; i++)
    uv_run(&G.loop, UV_RUN_NOWAIT);
  ck_assert_int_eq(G.accepted, 0);
  ck_assert_int_eq(write(w, "x", 1), 1); /* it exits 5 */
  run_until_reported();
  ck_assert_msg(G.status == UV_ESRCH, "%s: %s", uv_err_name(G.status), G.why);
  snprintf(want, sizeof(want),
           "generation %d exited with status 5 after ready; serving again",
           (int)pid);
  ck_assert_msg(!strcmp(G.why, want), "'%s', want '%s'", G.why, want);
  ck_assert_int_eq(uvip_upgrade_pid(G.u), 0);
  /* The very sockets it had: none closed, none bound anew. */
  ck_assert_int_eq(uvip_vip_fd(uvip_server_vip(G.s, 0)), fd0);
  ck_assert_int_eq(uvip_vip_fd(uvip_server_vip(G.s, 1)), fd1);
  ck_assert_int_eq(uvip_server_is_held(G.s), 0);
  ck_assert_int_eq(uvip_server_is_listening(G.s), 1);
  run_until_accepted(1);
  expect_closed(c1);
  c2 = th_connect((struct sockaddr *)&sa, NULL);
  run_until_accepted(2);
  expect_closed(c2);
  close_upgrade();
  ck_assert_int_eq(G.reports, 1); /* nothing more on close */
  old_finish();
  close(c1);
  close(c2);
  close(w);
}
END_TEST

/* A new generation that lives through its probation: meanwhile it alone
 * accepts (this one holds), then the callback says 0 and this one stops. */
START_TEST(test_upgrade_probation_passes) {
  int port = old_start("127.0.0.1-127.0.0.2", th_free_port()), c1, c2, st;
  char ports[16];
  struct sockaddr_storage sa;
  pid_t pid;
  snprintf(ports, sizeof(ports), "%d", port);
  char *argv[] = {self, "gen2", "serve", ports, "2", NULL};
  ck_assert_int_eq(uvip_upgrade_start(&G.loop, &G.s, 1, self, argv, 10000,
                                      on_upgrade, &G.u),
                   0);
  ck_assert_int_eq(uvip_upgrade_probation(G.u, 50, NULL), 0);
  pid = uvip_upgrade_pid(G.u);
  run_until_held();
  th_addr("127.0.0.2", port, &sa);
  c1 = th_connect((struct sockaddr *)&sa, NULL);
  expect_reply(c1, "gen2");
  run_until_reported();
  ck_assert_msg(G.status == 0, "%s", G.why);
  ck_assert_msg(strstr(G.why, "through its 50 ms probation"), "%s", G.why);
  ck_assert_int_eq(uvip_server_is_listening(G.s), 0);
  c2 = th_connect((struct sockaddr *)&sa, NULL);
  expect_reply(c2, "gen2");
  ck_assert_int_eq(G.accepted, 0);
  close_upgrade();
  old_finish();
  st = reap(pid);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "gen2 status %d", st);
  close(c1);
  close(c2);
}
END_TEST

/* Closing the upgrade during the probation: the old generation accepts
 * again, the new one (ready, serving) is left running. */
START_TEST(test_upgrade_probation_closed) {
  int port = old_start("127.0.0.1-127.0.0.2", th_free_port()), w, r, c, st;
  char ports[16], fdarg[16];
  struct sockaddr_storage sa;
  pid_t pid;
  r = crash_pipe(&w);
  snprintf(ports, sizeof(ports), "%d", port);
  snprintf(fdarg, sizeof(fdarg), "%d", r);
  char *argv[] = {self, "gen2", "crash", ports, fdarg, NULL};
  ck_assert_int_eq(uvip_upgrade_start(&G.loop, &G.s, 1, self, argv, 10000,
                                      on_upgrade, &G.u),
                   0);
  close(r);
  ck_assert_int_eq(uvip_upgrade_probation(NULL, 1, NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_upgrade_probation(G.u, 600000, NULL), 0);
  pid = uvip_upgrade_pid(G.u);
  run_until_held();
  close_upgrade();
  ck_assert_int_eq(G.reports, 1);
  ck_assert_int_eq(G.status, UV_ECANCELED);
  ck_assert_msg(strstr(G.why, "probation; serving again"), "%s", G.why);
  ck_assert_int_eq(uvip_server_is_held(G.s), 0);
  ck_assert_int_eq(kill(pid, 0), 0); /* not killed */
  th_addr("127.0.0.1", port, &sa);
  c = th_connect((struct sockaddr *)&sa, NULL);
  run_until_accepted(1);
  expect_closed(c);
  ck_assert_int_eq(write(w, "x", 1), 1);
  st = reap(pid);
  ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 5);
  old_finish();
  close(c);
  close(w);
}
END_TEST

/* uvip_server_hold() keeps the sockets: what queues while held is accepted
 * on uvip_server_unhold(); a hold from the connection callback ends the
 * pass at once. */
static void hold_conn(uvip_server_t *s, uvip_conn_t *c) {
  G.accepted++;
  uvip_conn_close(c, NULL);
  ck_assert_int_eq(uvip_server_hold(s), 0);
}

START_TEST(test_server_hold) {
  int port = old_start("127.0.0.1", th_free_port()), c[3], fd;
  uvip_server_t *s2;
  struct sockaddr_storage sa;
  uvip_vip_t *v = uvip_server_vip(G.s, 0);
  ck_assert_int_eq(uvip_server_hold(NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_server_unhold(NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_server_is_held(NULL), 0);
  ck_assert_int_eq(uvip_server_unhold(G.s), 0); /* not held: nothing */
  fd = uvip_vip_fd(v);
  ck_assert_int_eq(uvip_server_hold(G.s), 0);
  ck_assert_int_eq(uvip_server_hold(G.s), 0);
  ck_assert_int_eq(uvip_server_is_held(G.s), 1);
  ck_assert_int_eq(uvip_server_is_listening(G.s), 1);
  ck_assert_int_eq(uvip_vip_state(v), UVIP_VIP_LISTENING);
  ck_assert_int_eq(uvip_vip_fd(v), fd);
  th_addr("127.0.0.1", port, &sa);
  for (int i = 0; i < 3; i++)
    c[i] = th_connect((struct sockaddr *)&sa, NULL);
  for (int i = 0; i < 10; i++)
    uv_run(&G.loop, UV_RUN_NOWAIT);
  ck_assert_int_eq(G.accepted, 0);
  ck_assert_int_eq(uvip_server_unhold(G.s), 0);
  ck_assert_int_eq(uvip_server_is_held(G.s), 0);
  run_until_accepted(3);
  for (int i = 0; i < 3; i++) {
    expect_closed(c[i]);
    close(c[i]);
  }
  ck_assert_int_eq(uvip_server_stop(G.s), 0);
  ck_assert_int_eq(uvip_server_hold(G.s), UV_EINVAL); /* nothing to hold */
  old_finish();

  /* Held from the callback: one of the three queued, then no more. */
  old_start("127.0.0.1", th_free_port());
  port = th_free_port();
  {
    uvip_addrs_t *a = th_addrs("127.0.0.1", port);
    ck_assert_int_eq(uvip_server_new(&G.loop, a, NULL, &s2), 0);
    uvip_addrs_free(a);
    ck_assert_int_eq(uvip_server_hold(s2), UV_EINVAL); /* not listening */
    ck_assert_int_eq(uvip_server_listen(s2, hold_conn, NULL, 0), 0);
  }
  th_addr("127.0.0.1", port, &sa);
  for (int i = 0; i < 3; i++)
    c[i] = th_connect((struct sockaddr *)&sa, NULL);
  run_until_accepted(1);
  for (int i = 0; i < 10; i++)
    uv_run(&G.loop, UV_RUN_NOWAIT);
  ck_assert_int_eq(G.accepted, 1);
  ck_assert_int_eq(uvip_server_is_held(s2), 1);
  ck_assert_int_eq(uvip_server_unhold(s2), 0);
  /* One per pass now, each callback holding again. */
  for (int k = 2; k <= 3; k++) {
    run_until_accepted(k);
    ck_assert_int_eq(uvip_server_unhold(s2), 0);
  }
  ck_assert_int_eq(uvip_server_stop(s2), 0);
  ck_assert_int_eq(uvip_server_is_held(s2), 0);
  ck_assert_int_eq(uvip_server_unhold(s2), 0);
  ck_assert_int_eq(uvip_server_close(s2, NULL), 0);
  old_finish();
  for (int i = 0; i < 3; i++)
    close(c[i]);
}
END_TEST

/* The pid in the last "upgrade: generation N ready" line of log. */
static pid_t logged_generation(const char *log) {
  const char *p = NULL, *q = log;
  int pid = 0;
  while ((q = strstr(q, "upgrade: generation ")))
    p = q++;
  ck_assert_ptr_nonnull(p);
  ck_assert_int_eq(sscanf(p, "upgrade: generation %d", &pid), 1);
  return pid;
}

/* uvip-echo's new generation is killed during its probation: the old one
 * says so, serves again on the same listeners (new connections and the
 * long-lived one it kept: connections move only after the probation), and
 * the pid file names it again. Meanwhile the new generation refused to be
 * upgraded itself. */
START_TEST(test_echo_probation_crash) {
  const char *bdir = getenv("UVIP_BUILD_DIR");
  char echo[512], portstr[16], pidf[64], log[16384] = "", want[128];
  int port = th_free_port(), pfd[2], l, c, st;
  struct sockaddr_storage sa;
  pid_t first, second;
  FILE *out;
  ck_assert_ptr_nonnull(bdir);
  ck_assert_int_eq(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
  snprintf(echo, sizeof(echo), "%s/examples/uvip-echo", bdir);
  snprintf(portstr, sizeof(portstr), "%d", port);
  snprintf(pidf, sizeof(pidf), "/tmp/uvip-test-probation-%d.pid", getpid());
  ck_assert_int_eq(pipe(pfd), 0);
  first = fork();
  ck_assert_int_ge(first, 0);
  if (first == 0) {
    dup2(pfd[1], 1);
    dup2(pfd[1], 2);
    execl(echo, echo, "--listen", "127.0.0.1-127.0.0.2", "--port", portstr,
          "--pid-file", pidf, "--upgrade-probation-ms", "600000", (char *)NULL);
    _exit(127);
  }
  close(pfd[1]);
  out = fdopen(pfd[0], "r");
  th_read_until(out, "serving 2 of 2 VIPs", log, sizeof(log));
  th_addr("127.0.0.1", port, &sa);
  l = th_connect((struct sockaddr *)&sa, NULL);
  echo_roundtrip(l, "one");

  ck_assert_int_eq(kill(first, SIGUSR2), 0);
  th_read_until(out, "on probation for 600000 ms, not accepting here", log,
                sizeof(log));
  second = logged_generation(log);
  ck_assert_int_ne(second, first);
  /* Upgrading it now would leave two generations behind it. */
  ck_assert_int_eq(kill(second, SIGUSR2), 0);
  th_read_until(out, "not now: the previous generation has this one on "
                "probation", log, sizeof(log));
  ck_assert_int_eq(kill(second, SIGKILL), 0);
  snprintf(want, sizeof(want),
           "generation %d was killed by signal 9 after ready; serving again",
           (int)second);
  th_read_until(out, want, log, sizeof(log));
  echo_roundtrip(l, "two");
  c = th_connect((struct sockaddr *)&sa, NULL);
  echo_roundtrip(c, "new");
  close(c);
  ck_assert_int_eq(read_pid_file(pidf), first);
  close(l);
  ck_assert_int_eq(kill(first, SIGTERM), 0);
  th_read_until(out, "bye", log, sizeof(log));
  ck_assert_int_eq(waitpid(first, &st, 0), first);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s", log);
  fclose(out);
  unlink(pidf);
}
END_TEST

static pid_t spawn_echo_probation(const char *portstr, const char *sock,
                                  FILE **out) {
  const char *bdir = getenv("UVIP_BUILD_DIR");
  char echo[512];
  int pfd[2];
  pid_t pid;
  snprintf(echo, sizeof(echo), "%s/examples/uvip-echo", bdir);
  ck_assert_int_eq(pipe(pfd), 0);
  pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    dup2(pfd[1], 1);
    dup2(pfd[1], 2);
    execl(echo, echo, "--listen", "127.0.0.1-127.0.0.2", "--port", portstr,
          "--handoff-socket", sock, "--upgrade-probation-ms", "600000",
          (char *)NULL);
    _exit(127);
  }
  close(pfd[1]);
  *out = fdopen(pfd[0], "r");
  return pid;
}

/* Over --handoff-socket: the new process is killed during its probation;
 * the running one serves again and serves the hand-off path again, so the
 * next process takes the listeners from it. */
START_TEST(test_echo_handoff_probation_crash) {
  char portstr[16], sock[64], loga[16384] = "", logb[8192] = "",
                              logc[8192] = "";
  int port = th_free_port(), l, c, st;
  struct sockaddr_storage sa;
  pid_t a, b, cpid;
  FILE *oa, *ob, *oc;
  ck_assert_ptr_nonnull(getenv("UVIP_BUILD_DIR"));
  snprintf(portstr, sizeof(portstr), "%d", port);
  snprintf(sock, sizeof(sock), "/tmp/uvip-test-hprob-%d.sock", getpid());
  unlink(sock);
  a = spawn_echo_probation(portstr, sock, &oa);
  th_read_until(oa, "serving 2 of 2 VIPs", loga, sizeof(loga));
  th_addr("127.0.0.1", port, &sa);
  l = th_connect((struct sockaddr *)&sa, NULL);
  echo_roundtrip(l, "one");

  b = spawn_echo_probation(portstr, sock, &ob);
  th_read_until(ob, "took 2 listeners", logb, sizeof(logb));
  th_read_until(oa, "on probation for 600000 ms, not accepting here", loga,
                sizeof(loga));
  ck_assert_int_eq(kill(b, SIGUSR2), 0);
  th_read_until(ob, "not now", logb, sizeof(logb));
  ck_assert_int_eq(kill(b, SIGKILL), 0);
  th_read_until(oa, "went away during its probation; serving again", loga,
                sizeof(loga));
  ck_assert_int_eq(waitpid(b, &st, 0), b);
  echo_roundtrip(l, "two");
  c = th_connect((struct sockaddr *)&sa, NULL);
  echo_roundtrip(c, "new");
  close(c);

  /* The next one finds the first one at the path again. */
  cpid = spawn_echo_probation(portstr, sock, &oc);
  th_read_until(oc, "took 2 listeners", logc, sizeof(logc));
  th_read_until(oa, "on probation for 600000 ms", loga, sizeof(loga));
  ck_assert_int_eq(kill(cpid, SIGTERM), 0);
  th_read_until(oc, "bye", logc, sizeof(logc));
  ck_assert_int_eq(waitpid(cpid, &st, 0), cpid);
  th_read_until(oa, "went away during its probation; serving again", loga,
                sizeof(loga));
  echo_roundtrip(l, "three");
  close(l);
  ck_assert_int_eq(kill(a, SIGTERM), 0);
  th_read_until(oa, "bye", loga, sizeof(loga));
  ck_assert_int_eq(waitpid(a, &st, 0), a);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s", loga);
  fclose(oa);
  fclose(ob);
  fclose(oc);
}
END_TEST

int main(int argc, char **argv) {
  ssize_t n;
  if (argc == 5 && !strcmp(argv[1], "gen2"))
    return gen2(argv[2], argv[3], argv[4]);
  /* Resolved at start, as an upgrading server would. */
  n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0)
    return 1;
  self[n] = 0;
  Suite *s = suite_create("upgrade");
  TCase *tc = tcase_create("upgrade");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_upgrade_hands_over);
  tcase_add_test(tc, test_upgrade_bad_binary);
  tcase_add_test(tc, test_upgrade_exits_before_ready);
  tcase_add_test(tc, test_upgrade_times_out);
  tcase_add_test(tc, test_upgrade_garbage);
  tcase_add_test(tc, test_upgrade_closed_early);
  tcase_add_test(tc, test_upgrade_args);
  tcase_add_test(tc, test_upgrade_moves_idle);
  tcase_add_test(tc, test_moved_bad_messages);
  tcase_add_test(tc, test_echo_sigusr2);
  tcase_add_test(tc, test_echo_handoff_socket);
  tcase_add_test(tc, test_http_sigusr2);
  tcase_add_test(tc, test_upgrade_probation_crash);
  tcase_add_test(tc, test_upgrade_probation_passes);
  tcase_add_test(tc, test_upgrade_probation_closed);
  tcase_add_test(tc, test_server_hold);
  tcase_add_test(tc, test_echo_probation_crash);
  tcase_add_test(tc, test_echo_handoff_probation_crash);
  suite_add_tcase(s, tc);
  return th_run_suite(s);
}
