/* The teardown matrix across objects: a server, a connector with
 * connections to it, and a tracker sampling them, closed in every order,
 * from the top level and from inside each kind of callback any of them
 * makes. Each close callback runs exactly once, no callback about an object
 * comes after its close callback (nor, for the tracker, after its close was
 * asked for), the loop ends and uv_loop_close() succeeds. Run under ASan in
 * CI. (test-teardown.c has the matrix of one server's own operations.)
 * SPDX-License-Identifier: MIT */
#include <stdio.h>
#include <string.h>

#include "helpers.h"

enum obj { SERVER, CONNECTOR, TRACKER, NOBJ };
static const char *const obj_name[NOBJ] = {"server", "connector", "tracker"};

enum where {
  AT_TOP,
  AT_TIMER,
  AT_ACCEPT,        /* server connection callback (last accept) */
  AT_CONN_CLOSE,    /* a server connection's close callback */
  AT_CONNECT,       /* connector connect callback (last connect) */
  AT_OUTCONN_CLOSE, /* an outbound connection's close callback */
  AT_SAMPLE,        /* tracker sample callback */
  AT_EVENT,         /* tracker event callback */
  NWHERE
};
static const char *const where_name[NWHERE] = {
    "top",      "timer",              "accept cb",  "conn close cb",
    "connect cb", "outconn close cb", "sample cb", "event cb"};

#define NCONNS 6

static struct {
  uv_loop_t loop;
  uvip_server_t *s;
  uvip_connector_t *c;
  uvip_tracker_t *t;
  uvip_conn_t *in[NCONNS];
  uvip_outconn_t *out[NCONNS];
  int nin, nconnected, nout_closed, nin_closed;
  enum obj order[NOBJ];
  enum where where;
  bool ops_done, close_asked[NOBJ];
  int closes[NOBJ];
  int samples, events;
  char desc[160];
  uv_timer_t timer;
} M;

static void check_alive(enum obj o) {
  ck_assert_msg(M.closes[o] == 0, "%s: a %s callback after its close callback",
                M.desc, obj_name[o]);
}

static void on_server_closed(uvip_server_t *s) {
  (void)s;
  check_alive(SERVER);
  M.closes[SERVER]++;
}
static void on_connector_closed(uvip_connector_t *c) {
  (void)c;
  check_alive(CONNECTOR);
  M.closes[CONNECTOR]++;
}
static void on_tracker_closed(uvip_tracker_t *t) {
  (void)t;
  check_alive(TRACKER);
  M.closes[TRACKER]++;
}

static void run_ops(void) {
  if (M.ops_done)
    return;
  M.ops_done = true;
  for (int i = 0; i < NOBJ; i++) {
    enum obj o = M.order[i];
    M.close_asked[o] = true;
    switch (o) {
    case SERVER:
      ck_assert_int_eq(uvip_server_close_conns(M.s), 0);
      ck_assert_int_eq(uvip_server_close(M.s, on_server_closed), 0);
      break;
    case CONNECTOR:
      ck_assert_int_eq(uvip_connector_close(M.c, on_connector_closed), 0);
      break;
    case TRACKER:
      ck_assert_int_eq(uvip_tracker_close(M.t, on_tracker_closed), 0);
      break;
    default:
      ck_abort();
    }
  }
}

static void on_alloc(uv_handle_t *h, size_t n, uv_buf_t *b) {
  static char buf[256];
  (void)h;
  (void)n;
  *b = uv_buf_init(buf, sizeof(buf));
}

static void on_in_closed(uvip_conn_t *conn) {
  (void)conn;
  check_alive(SERVER);
  M.nin_closed++;
  if (M.where == AT_CONN_CLOSE)
    run_ops();
}

static void on_in_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b) {
  (void)b;
  if (n < 0)
    uvip_conn_close(uvip_conn_from_tcp((uv_tcp_t *)st), on_in_closed);
}

static void on_accept(uvip_server_t *s, uvip_conn_t *conn) {
  (void)s;
  check_alive(SERVER);
  ck_assert_int_lt(M.nin, NCONNS);
  M.in[M.nin++] = conn;
  ck_assert_int_eq(uv_read_start(uvip_conn_stream(conn), on_alloc, on_in_read),
                   0);
  if (M.nin == NCONNS && M.where == AT_ACCEPT)
    run_ops();
}

static void on_out_closed(uvip_outconn_t *oc) {
  (void)oc;
  check_alive(CONNECTOR);
  M.nout_closed++;
  if (M.where == AT_OUTCONN_CLOSE)
    run_ops();
}

static void on_out_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b) {
  (void)b;
  if (n < 0)
    uvip_outconn_close(uvip_outconn_from_tcp((uv_tcp_t *)st), on_out_closed);
}

static void on_connect(uvip_outconn_t *oc, int status,
                       const struct sockaddr *src) {
  (void)src;
  check_alive(CONNECTOR);
  if (status != 0) {
    /* Only a close can cancel a connect here. */
    ck_assert_msg(status == UV_ECANCELED, "%s: connect: %s", M.desc,
                  uv_strerror(status));
    M.nout_closed++;
    return;
  }
  M.nconnected++;
  ck_assert_int_eq(
      uv_read_start(uvip_outconn_stream(oc), on_alloc, on_out_read), 0);
  if (M.nconnected == NCONNS && M.where == AT_CONNECT)
    run_ops();
}

static void on_sample(uvip_tracker_t *t, const uvip_census_t *c, int status) {
  (void)t;
  (void)c;
  check_alive(TRACKER);
  ck_assert_msg(!M.close_asked[TRACKER], "%s: sample callback after close",
                M.desc);
  ck_assert_msg(status == 0, "%s: sample: %s", M.desc, uv_strerror(status));
  M.samples++;
  if (M.where == AT_SAMPLE)
    run_ops();
}

static void on_event(uvip_tracker_t *t, const uvip_tracker_event_t *e) {
  (void)t;
  (void)e;
  check_alive(TRACKER);
  ck_assert_msg(!M.close_asked[TRACKER], "%s: event callback after close",
                M.desc);
  M.events++;
  if (M.where == AT_EVENT)
    run_ops();
}

static void on_timer(uv_timer_t *t) {
  (void)t;
  run_ops();
}

static void one_case(const enum obj *order, enum where where, int port) {
  uvip_addrs_t *a = th_addrs("127.0.0.1-127.0.0.3", port);
  uvip_tracker_options_t to;
  uvip_server_options_t so;
  char err[256] = "";
  int turns, len;

  memset(&M, 0, sizeof(M));
  memcpy(M.order, order, sizeof(M.order));
  M.where = where;
  len = snprintf(M.desc, sizeof(M.desc), "[%s: close", where_name[where]);
  for (int i = 0; i < NOBJ; i++)
    len += snprintf(M.desc + len, sizeof(M.desc) - (size_t)len, " %s",
                    obj_name[order[i]]);
  snprintf(M.desc + len, sizeof(M.desc) - (size_t)len, "]");

  ck_assert_int_eq(uv_loop_init(&M.loop), 0);
  uvip_server_options_init(&so);
  so.conn_close_cb = on_in_closed;
  ck_assert_int_eq(uvip_server_new(&M.loop, a, &so, &M.s), 0);
  ck_assert_msg(uvip_server_listen(M.s, on_accept, err, sizeof(err)) == 0,
                "listen: %s", err);
  ck_assert_int_eq(uvip_connector_new(&M.loop, NULL, NULL, &M.c), 0);
  uvip_tracker_options_init(&to);
  to.interval_ms = 10;
  /* Any port in use crosses it: the first sample raises an event. */
  to.ports_use = 1e-9;
  ck_assert_int_eq(uvip_tracker_new(&M.loop, a, &to, &M.t), 0);
  uvip_addrs_free(a);

  for (int i = 0; i < NCONNS; i++) {
    struct sockaddr_storage sa;
    char ip[32];
    snprintf(ip, sizeof(ip), "127.0.0.%d", 1 + i % 3);
    th_addr(ip, port, &sa);
    ck_assert_int_eq(uvip_connect(M.c, (struct sockaddr *)&sa, NULL,
                                  on_connect, &M.out[i]),
                     0);
  }
  for (turns = 0; !M.ops_done && (M.nin < NCONNS || M.nconnected < NCONNS) &&
                  turns < 1000;
       turns++)
    uv_run(&M.loop, UV_RUN_ONCE);
  ck_assert_msg(M.ops_done || (M.nin == NCONNS && M.nconnected == NCONNS),
                "%s: %d accepted, %d connected", M.desc, M.nin, M.nconnected);
  /* Sampling starts once the connections exist, so that its first sample
   * sees their ports and raises an event. */
  if (!M.ops_done) /* the accept and connect cases closed it already */
    ck_assert_int_eq(uvip_tracker_start(M.t, on_sample, on_event), 0);

  switch (where) {
  case AT_TOP:
    run_ops();
    break;
  case AT_TIMER:
    uv_timer_init(&M.loop, &M.timer);
    uv_timer_start(&M.timer, on_timer, 0, 0);
    break;
  case AT_CONN_CLOSE:
    ck_assert_int_eq(uvip_conn_close(M.in[0], on_in_closed), 0);
    break;
  case AT_OUTCONN_CLOSE:
    ck_assert_int_eq(uvip_outconn_close(M.out[0], on_out_closed), 0);
    break;
  default:
    break; /* AT_ACCEPT and AT_CONNECT ran; the tracker's come */
  }
  for (turns = 0; !M.ops_done && turns < 100000; turns++)
    uv_run(&M.loop, UV_RUN_ONCE);
  ck_assert_msg(M.ops_done, "%s: the operations never ran", M.desc);
  for (turns = 0; uv_run(&M.loop, UV_RUN_ONCE) != 0 && turns < 100000; turns++)
    ;
  ck_assert_msg(!uv_loop_alive(&M.loop), "%s: loop still alive", M.desc);
  if (where == AT_TIMER) {
    uv_close((uv_handle_t *)&M.timer, NULL);
    uv_run(&M.loop, UV_RUN_DEFAULT);
  }
  for (int o = 0; o < NOBJ; o++)
    ck_assert_msg(M.closes[o] == 1, "%s: %s close callback ran %d times",
                  M.desc, obj_name[o], M.closes[o]);
  ck_assert_msg(M.nin_closed == M.nin, "%s: %d of %d server connections "
                "closed", M.desc, M.nin_closed, M.nin);
  /* Outbound connections closed by uvip_connector_close() have no close
   * callback; uv_loop_close() below shows their handles are gone. */
  if (where == AT_EVENT)
    ck_assert_int_eq(M.events, 1);
  ck_assert_msg(uv_loop_close(&M.loop) == 0, "%s: handles left on the loop",
                M.desc);
}

START_TEST(test_objects_matrix) {
  static const enum obj orders[6][NOBJ] = {
      {SERVER, CONNECTOR, TRACKER}, {SERVER, TRACKER, CONNECTOR},
      {CONNECTOR, SERVER, TRACKER}, {CONNECTOR, TRACKER, SERVER},
      {TRACKER, SERVER, CONNECTOR}, {TRACKER, CONNECTOR, SERVER}};
  int port = th_free_port(), cases = 0;
  for (int w = 0; w < NWHERE; w++)
    for (int i = 0; i < 6; i++) {
      one_case(orders[i], (enum where)w, port);
      cases++;
    }
  printf("teardown matrix: %d cases over server, connector and tracker\n",
         cases);
}
END_TEST

int main(void) {
  Suite *s = suite_create("teardown-objects");
  TCase *tc = tcase_create("teardown-objects");
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_objects_matrix);
  suite_add_tcase(s, tc);
  return th_run_suite(s);
}
