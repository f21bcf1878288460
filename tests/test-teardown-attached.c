/* The teardown matrix with the objects attached to a server: thread
 * workers, a live pool and a tracker, closed with the server in every order
 * (24), from the top level, a timer and each of their callbacks. Closing the
 * server while workers or a live pool are still attached is UV_EBUSY with
 * nothing changed (defect 6); the test then closes it from the last one's
 * close callback, as the documentation says. Each close callback runs once,
 * the server's last, the loop ends, uv_loop_close() succeeds. Run under
 * ASan in CI.
 * SPDX-License-Identifier: MIT */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "helpers.h"

enum obj { SERVER, WORKERS, LIVEPOOL, TRACKER, NOBJ };
static const char *const obj_name[NOBJ] = {"server", "workers", "livepool",
                                           "tracker"};
enum where { AT_TOP, AT_TIMER, AT_READY, AT_LIVE, AT_SAMPLE, NWHERE };
static const char *const where_name[NWHERE] = {
    "top", "timer", "worker ready cb", "livepool cb", "sample cb"};

#define NWORKERS 2
#define NCONNS 4

static struct {
  uv_loop_t loop;
  uvip_server_t *s;
  uvip_workers_t *w;
  uvip_livepool_t *lp;
  uvip_tracker_t *t;
  enum obj order[NOBJ];
  enum where where;
  int ready, ups, samples, accepted;
  bool ops_done, server_pending, started;
  int closes[NOBJ];
  int busy; /* UV_EBUSY answers to the server's close */
  char desc[160];
  uv_timer_t timer;
} M;

static void check_alive(enum obj o) {
  ck_assert_msg(M.closes[o] == 0, "%s: a %s callback after its close",
                M.desc, obj_name[o]);
}

static void on_server_closed(uvip_server_t *s) {
  (void)s;
  check_alive(SERVER);
  /* Last: everything attached closed before. */
  ck_assert_msg(M.closes[WORKERS] == 1 && M.closes[LIVEPOOL] == 1,
                "%s: server closed before what was attached to it", M.desc);
  M.closes[SERVER]++;
}

static void close_server_if_free(void) {
  if (M.server_pending && M.closes[WORKERS] && M.closes[LIVEPOOL]) {
    M.server_pending = false;
    ck_assert_int_eq(uvip_server_close(M.s, on_server_closed), 0);
  }
}

static void on_workers_closed(uvip_workers_t *w) {
  (void)w;
  check_alive(WORKERS);
  M.closes[WORKERS]++;
  close_server_if_free();
}

static void on_livepool_closed(uvip_livepool_t *lp) {
  (void)lp;
  check_alive(LIVEPOOL);
  M.closes[LIVEPOOL]++;
  close_server_if_free();
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
    int r;
    switch (M.order[i]) {
    case SERVER: {
      int listening = uvip_server_is_listening(M.s);
      r = uvip_server_close(M.s, on_server_closed);
      if (!M.closes[WORKERS] || !M.closes[LIVEPOOL]) {
        /* Still attached (their close may be under way): refused, and
         * nothing changed. */
        ck_assert_msg(r == UV_EBUSY, "%s: server close: %s", M.desc,
                      uv_strerror(r));
        ck_assert_int_eq(uvip_server_is_listening(M.s), listening);
        M.busy++;
        M.server_pending = true;
      } else {
        ck_assert_int_eq(r, 0);
      }
      break;
    }
    case WORKERS:
      ck_assert_int_eq(uvip_workers_close(M.w, on_workers_closed), 0);
      break;
    case LIVEPOOL:
      ck_assert_int_eq(uvip_livepool_close(M.lp, on_livepool_closed), 0);
      break;
    case TRACKER:
      ck_assert_int_eq(uvip_tracker_close(M.t, on_tracker_closed), 0);
      break;
    default:
      ck_abort();
    }
  }
}

static bool all_started(void) {
  return M.ready == NWORKERS && M.ups == 2 && M.samples >= 1 &&
         M.accepted == NCONNS;
}

static void on_ready(uvip_workers_t *w, unsigned int i, int status) {
  (void)w;
  (void)i;
  check_alive(WORKERS);
  ck_assert_int_eq(status, 0);
  M.ready++;
  if (M.where == AT_READY && M.ready == NWORKERS)
    run_ops();
}

static void on_live(uvip_livepool_t *lp, uvip_live_event_t ev,
                    const struct sockaddr *a, uvip_vip_t *v, int status) {
  (void)lp;
  (void)a;
  (void)v;
  (void)status;
  check_alive(LIVEPOOL);
  if (ev == UVIP_LIVE_UP)
    M.ups++;
  if (M.where == AT_LIVE && M.ups == 2)
    run_ops();
}

static void on_sample(uvip_tracker_t *t, const uvip_census_t *c, int st) {
  (void)t;
  (void)c;
  (void)st;
  check_alive(TRACKER);
  M.samples++;
  if (M.where == AT_SAMPLE && M.started)
    run_ops();
}

/* On a worker's thread. */
static void on_conn(uvip_server_t *s, uvip_conn_t *c) {
  (void)s;
  __atomic_add_fetch(&M.accepted, 1, __ATOMIC_SEQ_CST);
  (void)c; /* kept open: the workers' close closes it */
}

static void on_timer(uv_timer_t *t) {
  (void)t;
  run_ops();
}

static void one_case(const enum obj *order, enum where where, int port) {
  uvip_addrs_t *a = th_addrs("127.0.0.1-127.0.0.2", port);
  uvip_workers_options_t wo;
  uvip_tracker_options_t to;
  uvip_server_options_t so;
  int fds[NCONNS], turns, len;
  char err[256] = "";

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
  so.flags = UVIP_ALLOW_EMPTY;
  ck_assert_int_eq(uvip_server_new(&M.loop, a, &so, &M.s), 0);
  uvip_workers_options_init(&wo);
  wo.nworkers = NWORKERS;
  wo.ready_cb = on_ready;
  ck_assert_int_eq(uvip_workers_new(M.s, &wo, &M.w), 0);
  ck_assert_msg(uvip_workers_listen(M.w, on_conn, err, sizeof(err)) == 0,
                "%s", err);
  ck_assert_int_eq(uvip_livepool_new(M.s, a, &M.lp), 0);
  ck_assert_int_eq(uvip_livepool_start(M.lp, on_live), 0);
  uvip_tracker_options_init(&to);
  to.interval_ms = 10;
  ck_assert_int_eq(uvip_tracker_new(&M.loop, a, &to, &M.t), 0);
  ck_assert_int_eq(uvip_tracker_start(M.t, on_sample, NULL), 0);
  uvip_addrs_free(a);
  for (int i = 0; i < NCONNS; i++) {
    struct sockaddr_storage sa;
    th_addr(i % 2 ? "127.0.0.2" : "127.0.0.1", port, &sa);
    fds[i] = th_connect((struct sockaddr *)&sa, NULL);
  }
  if (where == AT_TIMER) {
    uv_timer_init(&M.loop, &M.timer);
  }
  for (turns = 0; !M.ops_done && turns < 100000; turns++) {
    uv_run(&M.loop, UV_RUN_ONCE);
    if (all_started() && !M.started) {
      M.started = true;
      /* AT_SAMPLE: the next sample runs them. */
      if (where == AT_TOP)
        run_ops();
      else if (where == AT_TIMER)
        uv_timer_start(&M.timer, on_timer, 0, 0);
    }
  }
  ck_assert_msg(M.ops_done, "%s: never ran (ready %d, up %d, samples %d, "
                "accepted %d)", M.desc, M.ready, M.ups, M.samples,
                __atomic_load_n(&M.accepted, __ATOMIC_SEQ_CST));
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
  /* Every close in one go: the workers' and live pool's closes are still
   * under way when the server's comes, whatever the order, so it is
   * refused once and done from their close callback. */
  ck_assert_int_eq(M.busy, 1);
  ck_assert_msg(uv_loop_close(&M.loop) == 0, "%s: handles left", M.desc);
  for (int i = 0; i < NCONNS; i++)
    close(fds[i]);
}


START_TEST(test_attached_matrix) {
  int port = th_free_port(), cases = 0, busy = 0;
  for (int w = 0; w < NWHERE; w++) {
    int perm[NOBJ] = {SERVER, WORKERS, LIVEPOOL, TRACKER};
    do {
      enum obj order[NOBJ];
      for (int i = 0; i < NOBJ; i++)
        order[i] = (enum obj)perm[i];
      one_case(order, (enum where)w, port);
      busy += M.busy;
      cases++;
    } while (th_next_perm(perm, NOBJ));
  }
  ck_assert_int_eq(busy, cases);
  printf("teardown matrix: %d cases over server, workers, live pool and "
         "tracker (%d refused with UV_EBUSY)\n",
         cases, busy);
}
END_TEST

int main(void) {
  Suite *s = suite_create("teardown-attached");
  TCase *tc = tcase_create("teardown-attached");
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_attached_matrix);
  suite_add_tcase(s, tc);
  return th_run_suite(s);
}
