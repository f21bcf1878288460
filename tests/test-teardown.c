/* The teardown matrix: every order of remove_vip (with and without a
 * timeout), close_conns, stop and close, run from the top level and from
 * inside each kind of callback. In every case each close callback runs
 * exactly once, nothing runs after the server's close callback, the loop
 * ends and uv_loop_close() succeeds. Meant to run under ASan (CI does), which
 * turns a use after free in any order into a failure.
 * SPDX-License-Identifier: MIT */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "helpers.h"

enum op {
  OP_REMOVE0,
  OP_REMOVE_T,
  OP_CLOSE_CONNS,
  OP_STOP,
  OP_CLOSE,
  OP_DRAIN,
  NOPS
};
static const char *const op_name[NOPS] = {
    "remove(v1,0)", "remove(v2,1ms)", "close_conns", "stop", "close",
    "drain(1ms)"};

/* Where the sequence of operations runs. */
enum where {
  AT_TOP,        /* between loop turns */
  AT_TIMER,      /* in a timer callback */
  AT_CONNECTION, /* in the connection callback of the last accept */
  AT_CONN_CLOSE, /* in a connection's close callback */
  AT_DRAIN,      /* in a drain callback (v0 removed with a timeout) */
  NWHERE
};
static const char *const where_name[NWHERE] = {"top", "timer", "connection cb",
                                               "conn close cb", "drain cb"};

#define NVIPS 3
#define PER_VIP 2
#define NCONNS (NVIPS * PER_VIP)

typedef struct {
  int closes; /* close callbacks run for this connection */
  int going_away;
  bool open;
} rec_t;

static struct {
  uv_loop_t loop;
  uvip_server_t *s;
  uvip_vip_t *v[NVIPS];
  rec_t rec[NCONNS];
  uvip_conn_t *conn[NCONNS];
  int nrec;
  enum op ops[NOPS];
  int nops;
  enum where where;
  bool ops_done;
  int server_closes;
  int drains[NVIPS];
  bool server_gone;
  char desc[256];
  uv_timer_t timer;
} M;

static void on_server_closed(uvip_server_t *s) {
  (void)s;
  ck_assert_msg(!M.server_gone, "%s: server close callback twice", M.desc);
  M.server_closes++;
  M.server_gone = true;
}

static int vip_index(const uvip_vip_t *v) {
  for (int i = 0; i < NVIPS; i++)
    if (M.v[i] == v)
      return i;
  ck_abort_msg("%s: unknown VIP", M.desc);
  return -1;
}

static int open_count(void) {
  int n = 0;
  for (int i = 0; i < M.nrec; i++)
    n += M.rec[i].open;
  return n;
}

static void run_ops(void);

static void on_drain(uvip_vip_t *v, int timed_out) {
  int i = vip_index(v);
  (void)timed_out;
  ck_assert_msg(!M.server_gone, "%s: drain callback after server close",
                M.desc);
  ck_assert_msg(M.drains[i] == 0, "%s: drain callback of v%d twice", M.desc, i);
  M.drains[i]++;
  if (i == 0 && M.where == AT_DRAIN)
    run_ops();
}

static void on_conn_closed(uvip_conn_t *c) {
  rec_t *r = uv_handle_get_data((uv_handle_t *)uvip_conn_tcp(c));
  uvip_vip_stats_t st;
  ck_assert_msg(!M.server_gone, "%s: connection closed after the server",
                M.desc);
  ck_assert_msg(r->closes == 0, "%s: connection close callback twice", M.desc);
  r->closes++;
  r->open = false;
  /* The slot is given back before the callback runs (uvip.h). */
  ck_assert_int_eq(uvip_server_stats(M.s, &st), 0);
  /* Sockets waiting for a PROXY header hold slots too. */
  ck_assert_msg(st.active == (uint64_t)open_count() + st.proxy_pending,
                "%s: %llu active in a close callback, %d open", M.desc,
                (unsigned long long)st.active, open_count());
  if (M.where == AT_CONN_CLOSE && !M.ops_done)
    run_ops();
}

static void on_alloc(uv_handle_t *h, size_t n, uv_buf_t *b) {
  static char buf[256];
  (void)h;
  (void)n;
  *b = uv_buf_init(buf, sizeof(buf));
}

static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b) {
  (void)b;
  if (n < 0)
    uvip_conn_close(uvip_conn_from_tcp((uv_tcp_t *)st), on_conn_closed);
}

static void on_connection(uvip_server_t *s, uvip_conn_t *c) {
  rec_t *r;
  (void)s;
  ck_assert_int_lt(M.nrec, NCONNS);
  M.conn[M.nrec] = c;
  r = &M.rec[M.nrec++];
  r->open = true;
  uv_handle_set_data((uv_handle_t *)uvip_conn_tcp(c), r);
  ck_assert_int_eq(uv_read_start(uvip_conn_stream(c), on_alloc, on_read), 0);
  if (M.nrec == NCONNS && M.where == AT_CONNECTION)
    run_ops();
}

static void on_going_away(uvip_conn_t *c) {
  rec_t *r = uv_handle_get_data((uv_handle_t *)uvip_conn_tcp(c));
  ck_assert_msg(!M.server_gone, "%s: going away after the server closed",
                M.desc);
  ck_assert_msg(r->open && r->closes == 0,
                "%s: going away for a closed connection", M.desc);
  r->going_away++;
}

static bool proxy_mode;

static void run_ops(void) {
  ck_assert(!M.ops_done);
  M.ops_done = true;
  if (proxy_mode) {
    /* Removing v0 first (AT_DRAIN) dropped its waiting socket. */
    uint64_t want = NVIPS - (M.where == AT_DRAIN);
    uvip_vip_stats_t st;
    ck_assert_int_eq(uvip_server_stats(M.s, &st), 0);
    ck_assert_msg(st.proxy_pending == want, "%s: %llu pending", M.desc,
                  (unsigned long long)st.proxy_pending);
  }
  for (int i = 0; i < M.nops; i++) {
    int r = 0;
    switch (M.ops[i]) {
    case OP_REMOVE0:
      r = uvip_server_remove_vip(M.s, M.v[1], 0, on_drain);
      break;
    case OP_REMOVE_T:
      r = uvip_server_remove_vip(M.s, M.v[2], 1, on_drain);
      break;
    case OP_CLOSE_CONNS:
      r = uvip_server_close_conns(M.s);
      break;
    case OP_STOP:
      r = uvip_server_stop(M.s);
      break;
    case OP_CLOSE:
      r = uvip_server_close(M.s, on_server_closed);
      break;
    case OP_DRAIN:
      r = uvip_server_drain(M.s, 1, on_going_away);
      break;
    default:
      ck_abort();
    }
    ck_assert_msg(r == 0, "%s: %s: %s", M.desc, op_name[M.ops[i]],
                  uv_strerror(r));
  }
}

static void on_timer(uv_timer_t *t) {
  (void)t;
  run_ops();
}

/* proxy_mode (above) is set for the PROXY protocol matrix: the server
 * requires the header, every connection sends one, and one more client per
 * VIP sends half of one, so that the operations meet sockets still waiting
 * for their header. */

static void one_case(const enum op *ops, int nops, enum where where, int port) {
  const char *ips[NVIPS] = {"127.0.0.1", "127.0.0.2", "127.0.0.3"};
  const char hdr[] = "PROXY TCP4 192.0.2.1 192.0.2.2 1000 80\r\n";
  int fds[NCONNS + NVIPS], nfd = 0, turns;
  uvip_addrs_t *a = th_addrs("127.0.0.1-127.0.0.3", port);
  uvip_server_options_t o;
  char err[256] = "";

  memset(&M, 0, sizeof(M));
  memcpy(M.ops, ops, sizeof(*ops) * (size_t)nops);
  M.nops = nops;
  M.where = where;
  int len = snprintf(M.desc, sizeof(M.desc), "[%s:", where_name[where]);
  for (int i = 0; i < nops; i++)
    len += snprintf(M.desc + len, sizeof(M.desc) - (size_t)len, " %s",
                    op_name[ops[i]]);
  snprintf(M.desc + len, sizeof(M.desc) - (size_t)len, "]");

  ck_assert_int_eq(uv_loop_init(&M.loop), 0);
  uvip_server_options_init(&o);
  o.conn_close_cb = on_conn_closed;
  if (proxy_mode)
    o.flags |= UVIP_PROXY_PROTOCOL;
  ck_assert_int_eq(uvip_server_new(&M.loop, a, &o, &M.s), 0);
  uvip_addrs_free(a);
  for (int i = 0; i < NVIPS; i++)
    M.v[i] = uvip_server_vip(M.s, (size_t)i);
  ck_assert_msg(uvip_server_listen(M.s, on_connection, err, sizeof(err)) == 0,
                "listen: %s", err);

  for (int i = 0; i < NVIPS; i++) {
    struct sockaddr_storage sa;
    th_addr(ips[i], port, &sa);
    /* Queued first: accepted before the last connection is delivered. */
    if (proxy_mode) {
      fds[nfd] = th_connect((struct sockaddr *)&sa, NULL);
      ck_assert_int_eq(write(fds[nfd++], hdr, 10), 10);
    }
    for (int j = 0; j < PER_VIP; j++) {
      fds[nfd] = th_connect((struct sockaddr *)&sa, NULL);
      if (proxy_mode)
        ck_assert_int_eq(write(fds[nfd], hdr, strlen(hdr)),
                         (ssize_t)strlen(hdr));
      nfd++;
    }
  }
  for (turns = 0; M.nrec < NCONNS && turns < 1000; turns++)
    uv_run(&M.loop, UV_RUN_ONCE);
  ck_assert_msg(M.nrec == NCONNS, "%s: %d of %d accepted", M.desc, M.nrec,
                NCONNS);

  switch (where) {
  case AT_TOP:
    run_ops();
    break;
  case AT_TIMER:
    uv_timer_init(&M.loop, &M.timer);
    uv_timer_start(&M.timer, on_timer, 0, 0);
    break;
  case AT_CONNECTION:
    break; /* ran at the last accept */
  case AT_CONN_CLOSE:
    ck_assert_int_eq(uvip_conn_close(M.conn[0], on_conn_closed), 0);
    break;
  case AT_DRAIN:
    ck_assert_int_eq(uvip_server_remove_vip(M.s, M.v[0], 1, on_drain), 0);
    break;
  default:
    ck_abort();
  }
  /* The client side goes away once the operations ran, so that every case
   * ends even when no operation closes the connections. */
  for (turns = 0; !M.ops_done && turns < 1000; turns++)
    uv_run(&M.loop, UV_RUN_ONCE);
  ck_assert_msg(M.ops_done, "%s: the operations never ran", M.desc);
  for (int i = 0; i < nfd; i++)
    close(fds[i]);
  for (turns = 0; uv_run(&M.loop, UV_RUN_ONCE) != 0 && turns < 10000; turns++)
    ;
  ck_assert_msg(!uv_loop_alive(&M.loop), "%s: loop still alive", M.desc);
  if (where == AT_TIMER) {
    uv_close((uv_handle_t *)&M.timer, NULL);
    uv_run(&M.loop, UV_RUN_DEFAULT);
  }
  ck_assert_msg(M.server_closes == 1, "%s: server close callback ran %d times",
                M.desc, M.server_closes);
  for (int i = 0; i < M.nrec; i++) {
    ck_assert_msg(M.rec[i].closes == 1, "%s: connection %d closed %d times",
                  M.desc, i, M.rec[i].closes);
    ck_assert_msg(M.rec[i].going_away <= 1, "%s: going away %d times",
                  M.desc, M.rec[i].going_away);
  }
  for (int i = 0; i < NVIPS; i++) {
    bool removed = (i == 0 && where == AT_DRAIN);
    for (int k = 0; k < nops; k++)
      removed |= (i == 1 && ops[k] == OP_REMOVE0) ||
                 (i == 2 && ops[k] == OP_REMOVE_T);
    ck_assert_msg(M.drains[i] == (removed ? 1 : 0),
                  "%s: drain callback of v%d ran %d times", M.desc, i,
                  M.drains[i]);
  }
  ck_assert_msg(uv_loop_close(&M.loop) == 0, "%s: handles left on the loop",
                M.desc);
}


/* Every permutation of the given operations, from every place. */
static int matrix(const enum op *set, int n) {
  enum op ops[NOPS];
  int perm[NOPS], port = th_free_port(), cases = 0;
  for (int w = 0; w < NWHERE; w++) {
    for (int i = 0; i < n; i++)
      perm[i] = (int)set[i];
    do {
      for (int i = 0; i < n; i++)
        ops[i] = (enum op)perm[i];
      one_case(ops, n, (enum where)w, port);
      cases++;
    } while (th_next_perm(perm, n));
  }
  return cases;
}

START_TEST(test_matrix_all) {
  const enum op all[] = {OP_REMOVE0, OP_REMOVE_T, OP_CLOSE_CONNS, OP_STOP,
                         OP_CLOSE};
  int n = matrix(all, 5);
  ck_assert_int_eq(n, 120 * NWHERE);
  printf("teardown matrix: %d cases with close_conns\n", n);
}
END_TEST

/* Without close_conns the connections end from the client side. */
START_TEST(test_matrix_no_close_conns) {
  const enum op some[] = {OP_REMOVE0, OP_REMOVE_T, OP_STOP, OP_CLOSE};
  int n = matrix(some, 4);
  ck_assert_int_eq(n, 24 * NWHERE);
  printf("teardown matrix: %d cases without close_conns\n", n);
}
END_TEST

/* The same with headers pending when the operations run (stop, drain,
 * remove and close drop them). */
START_TEST(test_matrix_proxy_pending) {
  const enum op all[] = {OP_REMOVE0, OP_REMOVE_T, OP_CLOSE_CONNS, OP_STOP,
                         OP_CLOSE};
  proxy_mode = true;
  int n = matrix(all, 5);
  ck_assert_int_eq(n, 120 * NWHERE);
  printf("teardown matrix: %d cases with PROXY headers pending\n", n);
}
END_TEST

static void count_accept(uvip_server_t *s, uvip_conn_t *c) {
  int *n = uvip_server_get_data(s);
  (*n)++;
  uv_handle_set_data((uv_handle_t *)uvip_conn_tcp(c), NULL);
  M.conn[M.nrec++] = c;
}

static void on_closed_flag(uvip_server_t *s) {
  (void)s;
  M.server_closes++;
}

/* A server parked at its cap still listens, so it keeps the loop alive the
 * way a listening uv_tcp_t does; once stopped it no longer does. */
START_TEST(test_cap_keeps_loop_alive) {
  int port = th_free_port(), accepted = 0, fds[2], turns;
  uvip_addrs_t *a = th_addrs("127.0.0.1", port);
  uvip_server_options_t o;
  struct sockaddr_storage sa;
  memset(&M, 0, sizeof(M));
  ck_assert_int_eq(uv_loop_init(&M.loop), 0);
  uvip_server_options_init(&o);
  o.max_conns = 1;
  ck_assert_int_eq(uvip_server_new(&M.loop, a, &o, &M.s), 0);
  uvip_addrs_free(a);
  uvip_server_set_data(M.s, &accepted);
  ck_assert_int_eq(uvip_server_listen(M.s, count_accept, NULL, 0), 0);
  th_addr("127.0.0.1", port, &sa);
  fds[0] = th_connect((struct sockaddr *)&sa, NULL);
  fds[1] = th_connect((struct sockaddr *)&sa, NULL);
  /* The accepted connection is not read from: its handle is inactive, so
   * only the server can keep the loop alive. */
  for (turns = 0; accepted < 1 && turns < 1000; turns++)
    uv_run(&M.loop, UV_RUN_ONCE);
  ck_assert_int_eq(accepted, 1);
  ck_assert_int_eq(uv_run(&M.loop, UV_RUN_NOWAIT), 1);
  ck_assert_int_eq(uvip_server_is_listening(M.s), 1);
  ck_assert_msg(uv_loop_alive(&M.loop), "a listening server at its cap let "
                                        "the loop end");
  /* The slot frees: the queued one is accepted. */
  ck_assert_int_eq(uvip_conn_close(M.conn[0], NULL), 0);
  for (turns = 0; accepted < 2 && turns < 1000; turns++)
    uv_run(&M.loop, UV_RUN_ONCE);
  ck_assert_int_eq(accepted, 2);
  ck_assert_int_eq(uvip_server_stop(M.s), 0);
  ck_assert_msg(!uv_loop_alive(&M.loop), "a stopped server kept the loop");
  ck_assert_int_eq(uvip_conn_close(M.conn[1], NULL), 0);
  ck_assert_int_eq(uvip_server_close(M.s, on_closed_flag), 0);
  uv_run(&M.loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(M.server_closes, 1);
  ck_assert_int_eq(uv_loop_close(&M.loop), 0);
  close(fds[0]);
  close(fds[1]);
}
END_TEST

static void on_raw_closed(uv_handle_t *h) { (void)h; }

/* uv_close() on a connection's handle instead of uvip_conn_close() is
 * reported when the connection is touched again, not silently ignored. */
START_TEST(test_uv_close_misuse_reported) {
  int port = th_free_port(), accepted = 0, fd, turns;
  uvip_addrs_t *a = th_addrs("127.0.0.1", port);
  struct sockaddr_storage sa;
  uvip_vip_stats_t st;
  memset(&M, 0, sizeof(M));
  ck_assert_int_eq(uv_loop_init(&M.loop), 0);
  ck_assert_int_eq(uvip_server_new(&M.loop, a, NULL, &M.s), 0);
  uvip_addrs_free(a);
  uvip_server_set_data(M.s, &accepted);
  ck_assert_int_eq(uvip_server_listen(M.s, count_accept, NULL, 0), 0);
  th_addr("127.0.0.1", port, &sa);
  fd = th_connect((struct sockaddr *)&sa, NULL);
  for (turns = 0; accepted < 1 && turns < 1000; turns++)
    uv_run(&M.loop, UV_RUN_ONCE);
  ck_assert_int_eq(accepted, 1);
  uv_close((uv_handle_t *)uvip_conn_tcp(M.conn[0]), on_raw_closed);
  uv_run(&M.loop, UV_RUN_NOWAIT);
  ck_assert_int_eq(uvip_conn_close(M.conn[0], NULL), UV_EINVAL);
  /* Still reported, not taken for a close in progress. */
  ck_assert_int_eq(uvip_conn_close(M.conn[0], NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_server_stats(M.s, &st), 0);
  ck_assert_uint_eq(st.active, 1); /* the slot is lost, as documented */
  close(fd);
  /* No clean way out for the server (its slot is gone): the test process
   * ends here, and its leak is the point. */
  ck_assert_int_eq(uvip_server_stop(M.s), 0);
}
END_TEST

/* A drain (going away, deadline) in place of close_conns. */
START_TEST(test_matrix_drain) {
  const enum op some[] = {OP_REMOVE0, OP_REMOVE_T, OP_STOP, OP_CLOSE,
                          OP_DRAIN};
  int n = matrix(some, 5);
  ck_assert_int_eq(n, 120 * NWHERE);
  printf("teardown matrix: %d cases with drain\n", n);
}
END_TEST

/* Every open connection is told once, then the deadline closes them. */
START_TEST(test_drain_going_away_then_deadline) {
  const enum op ops[] = {OP_DRAIN, OP_CLOSE};
  int going = 0;
  one_case(ops, 2, AT_TOP, th_free_port());
  for (int i = 0; i < M.nrec; i++)
    going += M.rec[i].going_away;
  ck_assert_int_eq(going, NCONNS);
}
END_TEST

int main(void) {
  Suite *s = suite_create("teardown");
  TCase *tc = tcase_create("teardown");
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_matrix_all);
  tcase_add_test(tc, test_matrix_no_close_conns);
  tcase_add_test(tc, test_matrix_proxy_pending);
  tcase_add_test(tc, test_matrix_drain);
  tcase_add_test(tc, test_drain_going_away_then_deadline);
  tcase_add_test(tc, test_cap_keeps_loop_alive);
  tcase_add_test(tc, test_uv_close_misuse_reported);
  suite_add_tcase(s, tc);
  return th_run_suite(s);
}
