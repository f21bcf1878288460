/* Fairness of the accept scheduler: one VIP with a deep queue must not
 * starve the others, with or without a cap.
 * SPDX-License-Identifier: MIT */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "helpers.h"

#define NVIPS 16
#define HEAVY 200
#define LIGHT 2

static int fds[HEAVY + (NVIPS - 1) * LIGHT];
static int nfds;

/* Queues HEAVY connections on VIP 1 (the first in the ring, the worst
 * place for the others) and LIGHT on each other VIP, before the server
 * gets a single turn. */
static uvip_server_t *setup(uv_loop_t *loop, th_track_t *t,
                            uvip_server_options_t *o) {
  int port = th_free_port();
  uvip_addrs_t *a = th_addrs("127.0.0.1-127.0.0.16", port);
  uvip_server_t *s = NULL;
  ck_assert_int_eq(uvip_server_new(loop, a, o, &s), 0);
  uvip_addrs_free(a);
  uvip_server_set_data(s, t);
  ck_assert_int_eq(uvip_server_listen(s, th_echo_on_connection, NULL, 0), 0);
  nfds = 0;
  for (int v = 0; v < NVIPS; v++) {
    struct sockaddr_storage sa;
    char ip[32];
    snprintf(ip, sizeof(ip), "127.0.0.%d", v + 1);
    th_addr(ip, port, &sa);
    for (int i = 0; i < (v == 0 ? HEAVY : LIGHT); i++)
      fds[nfds++] = th_connect((struct sockaddr *)&sa, NULL);
  }
  return s;
}

static bool closed;
static void on_closed(uvip_server_t *s) {
  (void)s;
  closed = true;
}

static void teardown(uv_loop_t *loop, uvip_server_t *s) {
  for (int i = 0; i < nfds; i++)
    close(fds[i]);
  uvip_server_close_conns(s);
  closed = false;
  uvip_server_close(s, on_closed);
  th_run_until(loop, &closed, 100);
  ck_assert_int_eq(uv_loop_close(loop), 0);
}

/* Counts accepts on the heavy VIP made before the last light connection. */
static int heavy_before_lights_done(uvip_server_t *s, th_track_t *t) {
  const uvip_vip_t *heavy = uvip_server_vip(s, 0);
  int light_seen = 0, heavy_seen = 0;
  for (int i = 0; i < t->nconns && light_seen < (NVIPS - 1) * LIGHT; i++) {
    if (t->order[i] == heavy)
      heavy_seen++;
    else
      light_seen++;
  }
  ck_assert_int_eq(light_seen, (NVIPS - 1) * LIGHT);
  return heavy_seen;
}

/* Without a cap: the heavy VIP gets at most one budget per turn, so the
 * light VIPs are all served within the first turn or two. */
START_TEST(test_no_cap) {
  uv_loop_t loop;
  th_track_t t = {0};
  uvip_server_options_t o;
  uv_loop_init(&loop);
  uvip_server_options_init(&o);
  uvip_server_t *s = setup(&loop, &t, &o);
  int turns = 0;
  while (t.accepted < nfds && turns < 500) {
    uv_run(&loop, UV_RUN_NOWAIT);
    turns++;
  }
  ck_assert_int_eq(t.accepted, nfds);
  /* One budget (4) per turn for the heavy VIP; LIGHT <= budget, so every
   * light VIP is done after its first turn. */
  ck_assert_int_le(heavy_before_lights_done(s, &t), 4);
  /* And the heavy queue was not drained in one go either. */
  ck_assert_int_ge(turns, HEAVY / 4);
  teardown(&loop, s);
}
END_TEST

/* Under a cap far below the demand, connections held and released a few
 * per turn: freed slots go round-robin, so every light connection is served
 * after at most a couple of heavy ones, within a bounded number of turns. */
START_TEST(test_under_cap) {
  uv_loop_t loop;
  th_track_t t = {0};
  uvip_server_options_t o;
  uv_loop_init(&loop);
  uvip_server_options_init(&o);
  o.max_conns = 4;
  uvip_server_t *s = setup(&loop, &t, &o);
  int turns = 0, next_close = 0;
  while (t.accepted < (NVIPS - 1) * LIGHT + 8 && turns < 1000) {
    uv_run(&loop, UV_RUN_NOWAIT);
    ck_assert_uint_le(t.active, 4);
    /* Release two held connections per turn. */
    for (int k = 0; k < 2 && next_close < t.nconns; k++)
      th_close_conn(&t, next_close++);
    turns++;
  }
  /* Strict round-robin over the waiting queues gives the heavy VIP one
   * connection per round; LIGHT rounds serve every light connection. */
  ck_assert_int_le(heavy_before_lights_done(s, &t), LIGHT + 1);
  ck_assert_int_le(turns, 4 * ((NVIPS - 1) * LIGHT + 8));
  uvip_vip_stats_t st;
  uvip_vip_stats(uvip_server_vip(s, 0), &st);
  ck_assert_uint_gt(st.deferred, 0);
  teardown(&loop, s);
}
END_TEST

/* A per-VIP cap on the heavy VIP leaves the global capacity to the rest. */
START_TEST(test_per_vip_cap_isolates) {
  uv_loop_t loop;
  th_track_t t = {0};
  uvip_server_options_t o;
  uv_loop_init(&loop);
  uvip_server_options_init(&o);
  o.max_conns_per_vip = 3;
  o.max_conns = 40;
  t.hold = 1;
  uvip_server_t *s = setup(&loop, &t, &o);
  th_run_until_quiet(&loop, 200);
  uvip_vip_stats_t st;
  uvip_vip_stats(uvip_server_vip(s, 0), &st);
  ck_assert_uint_eq(st.active, 3);
  for (size_t i = 1; i < NVIPS; i++) {
    uvip_vip_stats(uvip_server_vip(s, i), &st);
    ck_assert_uint_eq(st.active, LIGHT);
  }
  teardown(&loop, s);
}
END_TEST

/* Weights: a weight-2 VIP gets twice the budget per turn. */
START_TEST(test_weight) {
  uv_loop_t loop;
  th_track_t t = {0};
  uvip_server_options_t o;
  uv_loop_init(&loop);
  uvip_server_options_init(&o);
  o.accept_budget = 1;
  t.hold = 1;
  uvip_server_t *s = setup(&loop, &t, &o);
  ck_assert_int_eq(uvip_vip_set_weight(uvip_server_vip(s, 0), 2), 0);
  uv_run(&loop, UV_RUN_NOWAIT);
  uvip_vip_stats_t st;
  uvip_vip_stats(uvip_server_vip(s, 0), &st);
  ck_assert_uint_eq(st.accepted, 2);
  uvip_vip_stats(uvip_server_vip(s, 1), &st);
  ck_assert_uint_eq(st.accepted, 1);
  teardown(&loop, s);
}
END_TEST

int main(void) {
  Suite *s = suite_create("fairness");
  TCase *tc = tcase_create("fairness");
  tcase_add_test(tc, test_no_cap);
  tcase_add_test(tc, test_under_cap);
  tcase_add_test(tc, test_per_vip_cap_isolates);
  tcase_add_test(tc, test_weight);
  suite_add_tcase(s, tc);
  return th_run_suite(s);
}
