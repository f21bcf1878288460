/* Census counts equal `ss` on workloads built here, each test in its own
 * network namespace (nothing else is counted).
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "census-ss.h"
#include "helpers.h"

static uvip_census_t *census_all(void) {
  uvip_census_t *c = NULL;
  ck_assert_int_eq(uvip_census_new(NULL, NULL, &c), 0);
  return c;
}

/* Accepts one pending connection (it is already queued). */
static int accept1(int lfd) {
  int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
  ck_assert_int_ge(fd, 0);
  return fd;
}

/* Graceful close, `first` closing actively (it ends in TIME_WAIT). */
static void close_pair(int first, int second) {
  char b;
  close(first);
  ck_assert_int_eq(read(second, &b, 1), 0); /* the FIN arrived */
  close(second);
}

START_TEST(established_time_wait_v4_v6_mapped) {
  int cl[20], sv[20], v6c[3], v6s[3], mc[2], ms[2];
  cs_fresh_netns();
  int l4 = cs_listen("127.77.0.1", 7000, 64);
  int l6 = cs_listen("::1", 7001, 64);
  int ld = cs_listen("::", 7002, 64); /* dual-stack by default */

  for (int i = 0; i < 20; i++) {
    cl[i] = cs_connect_from("127.77.0.2", "127.77.0.1", 7000, 0);
    ck_assert_int_ge(cl[i], 0);
    sv[i] = accept1(l4);
  }
  for (int i = 0; i < 3; i++) {
    v6c[i] = cs_connect_from("::1", "::1", 7001, 0);
    ck_assert_int_ge(v6c[i], 0);
    v6s[i] = accept1(l6);
  }
  for (int i = 0; i < 2; i++) {
    mc[i] = cs_connect_from("127.77.0.3", "127.77.0.1", 7002, 0);
    ck_assert_int_ge(mc[i], 0);
    ms[i] = accept1(ld);
  }
  for (int i = 0; i < 6; i++) /* clients close first: outbound TIME_WAIT */
    close_pair(cl[i], sv[i]);
  for (int i = 6; i < 10; i++) /* server closes first: inbound TIME_WAIT */
    close_pair(sv[i], cl[i]);

  uvip_census_t *c = census_all();
  cs_sample_settled(c, 200);
  ck_assert_int_eq(cs_compare_with_ss(c), 3 + 10 * 2 + 6 + 4 + 3 * 2 + 2 * 2);
  ck_assert_int_eq(uvip_census_info(c)->source, UVIP_CENSUS_SRC_NETLINK);

  /* And the figures the workload was built to have. */
  ck_assert_uint_eq(cs_row(c, "127.77.0.1", UVIP_TCP_ESTABLISHED, 1), 10 + 2);
  ck_assert_uint_eq(cs_row(c, "127.77.0.1", UVIP_TCP_TIME_WAIT, 1), 4);
  ck_assert_uint_eq(cs_row(c, "127.77.0.1", UVIP_TCP_LISTEN, 1), 1);
  ck_assert_uint_eq(cs_row(c, "127.77.0.2", UVIP_TCP_ESTABLISHED, 0), 10);
  ck_assert_uint_eq(cs_row(c, "127.77.0.2", UVIP_TCP_TIME_WAIT, 0), 6);
  ck_assert_uint_eq(cs_row(c, "127.77.0.3", UVIP_TCP_ESTABLISHED, 0), 2);
  ck_assert_uint_eq(cs_row(c, "::1", UVIP_TCP_ESTABLISHED, 1), 3);
  ck_assert_uint_eq(cs_row(c, "::1", UVIP_TCP_ESTABLISHED, 0), 3);
  ck_assert_uint_eq(cs_row(c, "::", UVIP_TCP_LISTEN, 1), 1);
  const uvip_census_counts_t *t = uvip_census_totals(c);
  ck_assert_uint_eq(t->in[UVIP_TCP_TIME_WAIT] + t->out[UVIP_TCP_TIME_WAIT], 10);
  uvip_census_free(c);
  for (int i = 0; i < 3; i++) {
    close(v6c[i]);
    close(v6s[i]);
  }
  for (int i = 0; i < 2; i++) {
    close(mc[i]);
    close(ms[i]);
  }
  close(l4);
  close(l6);
  close(ld);
}
END_TEST

START_TEST(listen_queue_filled) {
  int fds[8];
  cs_fresh_netns();
  int l = cs_listen("127.77.0.1", 7100, 4);
  uvip_census_t *c = census_all();
  ck_assert_int_eq(uvip_census_sample(c), 0); /* netstat baseline */
  ck_assert_int_eq(uvip_census_info(c)->has_netstat_delta, 0);

  /* backlog 4 holds 5 (the kernel's "full" is queue > backlog)... */
  for (int i = 0; i < 5; i++) {
    fds[i] = cs_connect_from("127.77.0.2", "127.77.0.1", 7100, 0);
    ck_assert_int_ge(fds[i], 0);
  }
  /* ...then SYNs are dropped and the clients stay in SYN_SENT. */
  for (int i = 5; i < 8; i++) {
    fds[i] = cs_connect_from("127.77.0.2", "127.77.0.1", 7100, 1);
    ck_assert_int_ge(fds[i], 0);
  }
  ck_assert_int_eq(uvip_census_sample(c), 0);
  ck_assert_int_eq(cs_compare_with_ss(c), 1 + 5 + 5 + 3);
  ck_assert_uint_eq(uvip_census_listener_count(c), 1);
  const uvip_census_listener_t *L = uvip_census_listener(c, 0);
  ck_assert_uint_eq(L->queue, 5);
  ck_assert_int_eq(L->backlog, 4);
  ck_assert_uint_eq(cs_row(c, "127.77.0.1", UVIP_TCP_ESTABLISHED, 1), 5);
  ck_assert_uint_eq(cs_row(c, "127.77.0.2", UVIP_TCP_SYN_SENT, 0), 3);
  ck_assert_uint_eq(cs_row(c, "127.77.0.2", UVIP_TCP_ESTABLISHED, 0), 5);
  const uvip_census_info_t *info = uvip_census_info(c);
  ck_assert_int_eq(info->has_netstat_delta, 1);
  ck_assert_uint_ge(info->netstat_delta.listen_overflows, 3);
  ck_assert_uint_ge(info->netstat_delta.listen_drops,
                    info->netstat_delta.listen_overflows);

  uvip_capacity_t cap;
  ck_assert_int_eq(uvip_capacity_compute(c, NULL, &cap), 0);
  int found = 0;
  for (size_t i = 0; i < cap.advice_count; i++)
    found |= strstr(cap.advice[i], "somaxconn") != NULL;
  ck_assert_msg(found, "no listen-queue advice");
  for (int i = 0; i < 8; i++)
    close(fds[i]);
  close(l);
  uvip_census_free(c);
}
END_TEST

START_TEST(outbound_tuples) {
  int fds[64], n = 0;
  cs_fresh_netns();
  int l1 = cs_listen("127.77.0.1", 7200, 128);
  int l2 = cs_listen("127.77.0.1", 7201, 128);
  for (int i = 0; i < 7; i++)
    fds[n++] = cs_connect_from("127.77.0.2", "127.77.0.1", 7200, 0);
  for (int i = 0; i < 3; i++)
    fds[n++] = cs_connect_from("127.77.0.2", "127.77.0.1", 7201, 0);
  for (int i = 0; i < 5; i++)
    fds[n++] = cs_connect_from("127.77.0.3", "127.77.0.1", 7200, 0);
  for (int i = 0; i < n; i++)
    ck_assert_int_ge(fds[i], 0);

  uvip_census_t *c = census_all();
  ck_assert_int_eq(uvip_census_sample(c), 0);
  cs_compare_with_ss(c);
  ck_assert_uint_eq(uvip_census_tuple_count(c), 3);
  const uvip_census_tuple_t *t0 = uvip_census_tuple(c, 0);
  const uvip_census_tuple_t *t1 = uvip_census_tuple(c, 1);
  const uvip_census_tuple_t *t2 = uvip_census_tuple(c, 2);
  char a[UVIP_ADDRSTRLEN], b[UVIP_ADDRSTRLEN];
  uvip_addr_format((struct sockaddr *)&t0->local, 0, a, sizeof(a));
  uvip_addr_format((struct sockaddr *)&t0->remote, 1, b, sizeof(b));
  ck_assert_str_eq(a, "127.77.0.2");
  ck_assert_str_eq(b, "127.77.0.1:7200");
  ck_assert_uint_eq(t0->in_use, 7);
  ck_assert_uint_eq(t1->in_use, 5);
  uvip_addr_format((struct sockaddr *)&t1->local, 0, a, sizeof(a));
  ck_assert_str_eq(a, "127.77.0.3");
  ck_assert_uint_eq(t2->in_use, 3);
  uvip_addr_format((struct sockaddr *)&t2->remote, 1, b, sizeof(b));
  ck_assert_str_eq(b, "127.77.0.1:7201");
  const uvip_limits_t *L = uvip_census_limits(c);
  ck_assert_ptr_nonnull(L);
  ck_assert_int_eq(t0->usable, L->usable_ports);
  ck_assert(t0->utilisation == 7.0 / L->usable_ports);
  uvip_census_free(c);
  for (int i = 0; i < n; i++)
    close(fds[i]);
  close(l1);
  close(l2);
}
END_TEST

/* Rows of c2 for addr equal those of c1. */
static void same_row(const uvip_census_t *c1, const uvip_census_t *c2,
                     const char *addr) {
  for (int s = 0; s < UVIP_TCP_STATE_COUNT; s++)
    for (int d = 0; d < 2; d++)
      ck_assert_uint_eq(cs_row(c1, addr, s, d), cs_row(c2, addr, s, d));
}

START_TEST(filter_bytecode_userspace_and_procfs) {
  int fds[32], n = 0;
  cs_fresh_netns();
  int lw = cs_listen("0.0.0.0", 7300, 64);
  int l9 = cs_listen("127.77.0.9", 7301, 64);
  for (int i = 0; i < 4; i++)
    fds[n++] = cs_connect_from("127.77.0.2", "127.77.0.1", 7300, 0);
  for (int i = 0; i < 3; i++)
    fds[n++] = cs_connect_from("127.77.0.2", "127.77.0.9", 7300, 0);
  for (int i = 0; i < 2; i++)
    fds[n++] = cs_connect_from("127.77.0.1", "127.77.0.9", 7301, 0);
  for (int i = 0; i < n; i++)
    ck_assert_int_ge(fds[i], 0);

  uvip_census_t *all = census_all();
  ck_assert_int_eq(uvip_census_sample(all), 0);
  cs_compare_with_ss(all);

  /* One VIP: bytecode filter in the kernel. Sockets accepted by the
   * wildcard listener still count as inbound. */
  uvip_addrs_t *one = th_addrs("127.77.0.1", 0);
  uvip_census_t *f1 = NULL;
  ck_assert_int_eq(uvip_census_new(one, NULL, &f1), 0);
  ck_assert_int_eq(uvip_census_sample(f1), 0);
  ck_assert_uint_eq(uvip_census_vip_count(f1), 1);
  same_row(all, f1, "127.77.0.1");
  ck_assert_uint_eq(cs_row(f1, "127.77.0.1", UVIP_TCP_ESTABLISHED, 1), 4);
  ck_assert_uint_eq(cs_row(f1, "127.77.0.1", UVIP_TCP_ESTABLISHED, 0), 2);
  const uvip_census_counts_t *t = uvip_census_totals(f1);
  ck_assert_uint_eq(t->in[UVIP_TCP_ESTABLISHED], 4);
  ck_assert_uint_eq(t->out[UVIP_TCP_ESTABLISHED], 2);
  ck_assert_uint_eq(uvip_census_info(f1)->sockets, 6);
  /* Only the outbound 127.77.0.1 tuple. */
  ck_assert_uint_eq(uvip_census_tuple_count(f1), 1);
  ck_assert_uint_eq(uvip_census_tuple(f1, 0)->in_use, 2);

  /* 127 VIPs: past the bytecode cap, filtered in userspace; empty VIPs
   * get rows too. */
  uvip_addrs_t *many = th_addrs("127.77.1.0/25,127.77.0.1", 0);
  uvip_census_t *fm = NULL;
  ck_assert_int_eq(uvip_census_new(many, NULL, &fm), 0);
  ck_assert_int_eq(uvip_census_sample(fm), 0);
  ck_assert_uint_eq(uvip_census_vip_count(fm), 127);
  same_row(all, fm, "127.77.0.1");
  ck_assert_uint_eq(cs_row(fm, "127.77.1.1", UVIP_TCP_ESTABLISHED, 1), 0);
  ck_assert_uint_eq(uvip_census_info(fm)->sockets, 6);

  /* The /proc/net/tcp fallback agrees, except that backlogs are unknown. */
  uvip_census_options_t o;
  uvip_census_options_init(&o);
  o.flags = UVIP_CENSUS_PROCFS;
  uvip_census_t *pf = NULL;
  ck_assert_int_eq(uvip_census_new(NULL, &o, &pf), 0);
  ck_assert_int_eq(uvip_census_sample(pf), 0);
  ck_assert_int_eq(uvip_census_info(pf)->source, UVIP_CENSUS_SRC_PROCFS);
  ck_assert_uint_eq(uvip_census_vip_count(pf), uvip_census_vip_count(all));
  for (size_t i = 0; i < uvip_census_vip_count(all); i++) {
    const uvip_census_vip_t *a = uvip_census_vip(all, i);
    const uvip_census_vip_t *p = uvip_census_vip(pf, i);
    ck_assert_int_eq(memcmp(&a->addr, &p->addr, sizeof(a->addr)), 0);
    ck_assert_int_eq(memcmp(&a->counts, &p->counts, sizeof(a->counts)), 0);
  }
  ck_assert_uint_eq(uvip_census_listener_count(pf), 2);
  ck_assert_int_eq(uvip_census_listener(pf, 0)->backlog, -1);
  ck_assert_uint_eq(uvip_census_listener(pf, 0)->queue,
                    uvip_census_listener(all, 0)->queue);
  ck_assert_uint_eq(uvip_census_tuple_count(pf), uvip_census_tuple_count(all));

  uvip_census_free(all);
  uvip_census_free(f1);
  uvip_census_free(fm);
  uvip_census_free(pf);
  uvip_addrs_free(one);
  uvip_addrs_free(many);
  for (int i = 0; i < n; i++)
    close(fds[i]);
  close(lw);
  close(l9);
}
END_TEST

START_TEST(bounded_tables_count_overflow) {
  int fds[32], n = 0;
  cs_fresh_netns();
  int l1 = cs_listen("127.77.0.1", 7400, 64);
  int l2 = cs_listen("127.77.0.1", 7401, 64);
  const char *src[] = {"127.77.0.2", "127.77.0.3", "127.77.0.4"};
  for (int s = 0; s < 3; s++)
    for (int i = 0; i <= s; i++) {
      fds[n++] = cs_connect_from(src[s], "127.77.0.1", 7400, 0);
      fds[n++] = cs_connect_from(src[s], "127.77.0.1", 7401, 0);
    }
  uvip_census_t *all = census_all();
  ck_assert_int_eq(uvip_census_sample(all), 0);
  cs_compare_with_ss(all);

  uvip_census_options_t o;
  uvip_census_options_init(&o);
  o.max_vips = 2;
  o.max_listeners = 1;
  o.max_tuples = 2;
  uvip_census_t *b = NULL;
  ck_assert_int_eq(uvip_census_new(NULL, &o, &b), 0);
  ck_assert_int_eq(uvip_census_sample(b), 0);
  /* Totals by state do not depend on the caps (the direction does: the
   * sockets of a listener that found no room count as outbound). */
  for (int s = 0; s < UVIP_TCP_STATE_COUNT; s++)
    ck_assert_uint_eq(uvip_census_totals(b)->in[s] + uvip_census_totals(b)->out[s],
                      uvip_census_totals(all)->in[s] + uvip_census_totals(all)->out[s]);
  ck_assert_uint_eq(uvip_census_info(b)->sockets, uvip_census_info(all)->sockets);
  ck_assert_uint_eq(uvip_census_vip_count(b), 2);
  ck_assert_uint_eq(uvip_census_listener_count(b), 1);
  ck_assert_uint_eq(uvip_census_info(b)->listeners_overflow, 1);
  uint64_t in_rows = 0;
  for (size_t i = 0; i < 2; i++)
    for (int s = 0; s < UVIP_TCP_STATE_COUNT; s++)
      in_rows += uvip_census_vip(b, i)->counts.in[s] +
                 uvip_census_vip(b, i)->counts.out[s];
  ck_assert_uint_eq(in_rows + uvip_census_info(b)->vips_overflow,
                    uvip_census_info(b)->sockets);
  ck_assert_uint_gt(uvip_census_info(b)->vips_overflow, 0);
  ck_assert_uint_eq(uvip_census_tuple_count(b), 2);
  uint64_t tup = uvip_census_tuple(b, 0)->in_use + uvip_census_tuple(b, 1)->in_use;
  uint64_t outbound = 0;
  for (int s = 0; s < UVIP_TCP_STATE_COUNT; s++)
    outbound += uvip_census_totals(b)->out[s];
  /* 12 client sockets plus the 6 accepted on the listener left out. */
  ck_assert_uint_eq(outbound, 18);
  ck_assert_uint_eq(tup + uvip_census_info(b)->tuples_overflow, outbound);
  uvip_census_free(all);
  uvip_census_free(b);
  for (int i = 0; i < n; i++)
    close(fds[i]);
  close(l1);
  close(l2);
}
END_TEST

START_TEST(arguments) {
  uvip_census_t *c = NULL;
  uvip_census_options_t o;
  ck_assert_int_eq(uvip_census_new(NULL, NULL, NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_census_options_init(NULL), UV_EINVAL);
  uvip_census_options_init(&o);
  o.max_vips = 0;
  ck_assert_int_eq(uvip_census_new(NULL, &o, &c), UV_EINVAL);
  ck_assert_ptr_null(c);
  uvip_census_options_init(&o);
  o.states = 1u << UVIP_TCP_STATE_COUNT;
  ck_assert_int_eq(uvip_census_new(NULL, &o, &c), UV_EINVAL);
  uvip_census_options_init(&o);
  o.max_vips = 3;
  uvip_addrs_t *a = th_addrs("127.77.2.1-127.77.2.4", 0);
  ck_assert_int_eq(uvip_census_new(a, &o, &c), UV_E2BIG);
  ck_assert_ptr_null(c);
  /* Ports are ignored: the same address twice is one row. */
  uvip_addrs_free(a);
  a = th_addrs("127.77.2.1:80,127.77.2.1:81", 0);
  ck_assert_int_eq(uvip_census_new(a, NULL, &c), 0);
  ck_assert_int_eq(uvip_census_sample(c), 0);
  ck_assert_uint_eq(uvip_census_vip_count(c), 1);
  ck_assert_ptr_null(uvip_census_vip(c, 1));
  ck_assert_ptr_null(uvip_census_tuple(c, 0));
  uvip_census_free(c);
  uvip_addrs_free(a);
  ck_assert_int_eq(uvip_census_sample(NULL), UV_EINVAL);
  ck_assert_ptr_null(uvip_census_totals(NULL));
  ck_assert_uint_eq(uvip_census_vip_count(NULL), 0);
  ck_assert_ptr_null(uvip_tcp_state_name(UVIP_TCP_STATE_COUNT));
  ck_assert_str_eq(uvip_tcp_state_name(UVIP_TCP_CLOSE_WAIT), "close_wait");
  ck_assert_int_eq(uvip_census_new_for_server(NULL, NULL, &c), UV_EINVAL);
  uvip_census_free(NULL);
}
END_TEST

/* The state mask is applied: only LISTEN and TIME_WAIT are counted. */
START_TEST(state_mask) {
  int fds[4];
  cs_fresh_netns();
  int l = cs_listen("127.77.0.1", 7500, 8);
  for (int i = 0; i < 4; i++)
    fds[i] = cs_connect_from("127.77.0.2", "127.77.0.1", 7500, 0);
  int s0 = accept1(l);
  close_pair(fds[0], s0);
  uvip_census_options_t o;
  uvip_census_options_init(&o);
  o.states = 1u << UVIP_TCP_TIME_WAIT;
  uvip_census_t *all = census_all(), *m = NULL;
  cs_sample_settled(all, 200);
  cs_compare_with_ss(all);
  ck_assert_int_eq(uvip_census_new(NULL, &o, &m), 0);
  ck_assert_int_eq(uvip_census_sample(m), 0);
  ck_assert_uint_eq(uvip_census_info(m)->sockets, 1);
  ck_assert_uint_eq(cs_row(m, "127.77.0.2", UVIP_TCP_TIME_WAIT, 0), 1);
  ck_assert_uint_eq(uvip_census_totals(m)->out[UVIP_TCP_ESTABLISHED], 0);
  /* The listener is still known (it classifies) though not counted. */
  ck_assert_uint_eq(uvip_census_listener_count(m), 1);
  uvip_census_free(all);
  uvip_census_free(m);
  for (int i = 1; i < 4; i++)
    close(fds[i]);
  close(l);
}
END_TEST

/* Every result of b equals a's (rows, listeners, tuples, totals, counts). */
static void same_census(const uvip_census_t *a, const uvip_census_t *b) {
  const uvip_census_info_t *ia = uvip_census_info(a), *ib = uvip_census_info(b);
  ck_assert_int_eq(memcmp(uvip_census_totals(a), uvip_census_totals(b),
                          sizeof(uvip_census_counts_t)), 0);
  ck_assert_uint_eq(ia->sockets, ib->sockets);
  ck_assert_uint_eq(ia->seen, ib->seen);
  ck_assert_uint_eq(ia->vips_overflow, ib->vips_overflow);
  ck_assert_uint_eq(ia->listeners_overflow, ib->listeners_overflow);
  ck_assert_uint_eq(ia->tuples_overflow, ib->tuples_overflow);
  ck_assert_uint_eq(uvip_census_vip_count(a), uvip_census_vip_count(b));
  for (size_t i = 0; i < uvip_census_vip_count(a); i++) {
    const uvip_census_vip_t *x = uvip_census_vip(a, i), *y = uvip_census_vip(b, i);
    ck_assert_int_eq(memcmp(&x->addr, &y->addr, sizeof(x->addr)), 0);
    ck_assert_int_eq(memcmp(&x->counts, &y->counts, sizeof(x->counts)), 0);
  }
  ck_assert_uint_eq(uvip_census_listener_count(a), uvip_census_listener_count(b));
  for (size_t i = 0; i < uvip_census_listener_count(a); i++) {
    const uvip_census_listener_t *x = uvip_census_listener(a, i);
    const uvip_census_listener_t *y = uvip_census_listener(b, i);
    ck_assert_int_eq(memcmp(&x->addr, &y->addr, sizeof(x->addr)), 0);
    ck_assert_uint_eq(x->queue, y->queue);
    ck_assert_int_eq(x->backlog, y->backlog);
    ck_assert_uint_eq(x->syn_recv, y->syn_recv);
  }
  ck_assert_uint_eq(uvip_census_tuple_count(a), uvip_census_tuple_count(b));
  for (size_t i = 0; i < uvip_census_tuple_count(a); i++) {
    const uvip_census_tuple_t *x = uvip_census_tuple(a, i);
    const uvip_census_tuple_t *y = uvip_census_tuple(b, i);
    ck_assert_int_eq(memcmp(&x->local, &y->local, sizeof(x->local)), 0);
    ck_assert_int_eq(memcmp(&x->remote, &y->remote, sizeof(x->remote)), 0);
    ck_assert_uint_eq(x->in_use, y->in_use);
    ck_assert_uint_eq(x->time_wait, y->time_wait);
    ck_assert_int_eq(x->usable, y->usable);
  }
}

static uvip_census_t *census_shards(const uvip_addrs_t *vips,
                                    unsigned int shards, unsigned int flags) {
  uvip_census_options_t o;
  uvip_census_t *c = NULL;
  uvip_census_options_init(&o);
  o.shards = shards;
  o.flags = flags;
  ck_assert_int_eq(uvip_census_new(vips, &o, &c), 0);
  ck_assert_int_eq(uvip_census_sample(c), 0);
  return c;
}

/* The same census with 1, 2, 3 and 16 parallel dumps, and the default. */
static void shards_agree(const uvip_addrs_t *vips, int with_ss) {
  static const unsigned int counts[] = {2, 3, 16, 0};
  uvip_census_t *one = census_shards(vips, 1, 0);
  ck_assert_int_eq(uvip_census_info(one)->shards, 1);
  if (with_ss)
    cs_compare_with_ss(one);
  for (size_t i = 0; i < sizeof(counts) / sizeof(counts[0]); i++) {
    uvip_census_t *n = census_shards(vips, counts[i], 0);
    if (counts[i])
      ck_assert_int_eq(uvip_census_info(n)->shards, (int)counts[i]);
    same_census(one, n);
    if (with_ss)
      cs_compare_with_ss(n);
    uvip_census_free(n);
  }
  uvip_census_free(one);
}

/* Client and server sockets on ports below and above the middle of the
 * ephemeral range, both directions of TIME_WAIT, IPv6 and IPv4-mapped, a
 * filled listen queue: shards = 1 and shards = N give the same census
 * (and the one ss shows), unfiltered, with a VIP list (bytecode) and with
 * a narrow port range (the split follows it). */
START_TEST(shards_equal_one_dump) {
  enum { PER = 40 };
  int fds[8 * PER + 16], n = 0;
  uvip_census_options_t o;
  uvip_census_t *c = NULL;
  cs_fresh_netns();
  uvip_census_options_init(&o);
  ck_assert_uint_eq(o.shards, 0);
  o.shards = UVIP_CENSUS_SHARDS_MAX + 1;
  ck_assert_int_eq(uvip_census_new(NULL, &o, &c), UV_EINVAL);
  ck_assert_ptr_null(c);

  int llo = cs_listen("127.77.0.1", 7600, 4 * PER);  /* below the range */
  int lhi = cs_listen("127.77.0.1", 50000, 4 * PER); /* inside, high half */
  int l6 = cs_listen("::", 7601, 4 * PER);           /* dual stack */
  int lq = cs_listen("127.77.0.4", 7602, 2);         /* left unaccepted */
  for (int i = 0; i < PER; i++) {
    int port = i % 2 ? 50000 : 7600, lfd = i % 2 ? lhi : llo;
    int cl = cs_connect_from("127.77.0.2", "127.77.0.1", port, 0);
    ck_assert_int_ge(cl, 0);
    int sv = accept1(lfd);
    if (i % 4 == 0) {
      close_pair(cl, sv); /* outbound TIME_WAIT */
    } else if (i % 4 == 1) {
      close_pair(sv, cl); /* inbound TIME_WAIT */
    } else {
      fds[n++] = cl;
      fds[n++] = sv;
    }
  }
  for (int i = 0; i < PER / 4; i++) {
    int cl = cs_connect_from("::1", "::1", 7601, 0);
    ck_assert_int_ge(cl, 0);
    fds[n++] = cl;
    fds[n++] = accept1(l6);
    cl = cs_connect_from("127.77.0.3", "127.77.0.1", 7601, 0);
    ck_assert_int_ge(cl, 0);
    fds[n++] = cl;
    fds[n++] = accept1(l6);
  }
  for (int i = 0; i < 3; i++)
    fds[n++] = cs_connect_from("127.77.0.3", "127.77.0.4", 7602, 0);
  uvip_census_t *settle = census_all();
  cs_sample_settled(settle, 200);
  uvip_census_free(settle);

  shards_agree(NULL, 1);
  uvip_addrs_t *some = th_addrs("127.77.0.1,127.77.0.4,::1", 0);
  shards_agree(some, 0);

  /* The /proc fallback stays single threaded and agrees too. */
  uvip_census_t *one = census_shards(NULL, 1, 0);
  uvip_census_t *pf = census_shards(NULL, 2, UVIP_CENSUS_PROCFS);
  ck_assert_int_eq(uvip_census_info(pf)->shards, 1);
  ck_assert_uint_eq(uvip_census_info(pf)->sockets, uvip_census_info(one)->sockets);
  ck_assert_int_eq(memcmp(uvip_census_totals(pf), uvip_census_totals(one),
                          sizeof(uvip_census_counts_t)), 0);
  uvip_census_free(pf);
  uvip_census_free(one);

  /* A narrow range: new client ports all fall in it, on both sides of
   * its middle. */
  cs_sysctl("/proc/sys/net/ipv4/ip_local_port_range", "40000 40063");
  for (int i = 0; i < 12; i++) {
    int cl = cs_connect_from("127.77.0.5", "127.77.0.1", 7600, 0);
    ck_assert_int_ge(cl, 0);
    fds[n++] = cl;
    fds[n++] = accept1(llo);
  }
  shards_agree(NULL, 1);
  shards_agree(some, 0);

  uvip_addrs_free(some);
  for (int i = 0; i < n; i++)
    close(fds[i]);
  close(llo);
  close(lhi);
  close(l6);
  close(lq);
}
END_TEST

int main(void) {
  th_enter_netns_or_skip();
  Suite *s = suite_create("census");
  TCase *tc = tcase_create("census");
  tcase_add_test(tc, established_time_wait_v4_v6_mapped);
  tcase_add_test(tc, listen_queue_filled);
  tcase_add_test(tc, outbound_tuples);
  tcase_add_test(tc, filter_bytecode_userspace_and_procfs);
  tcase_add_test(tc, bounded_tables_count_overflow);
  tcase_add_test(tc, arguments);
  tcase_add_test(tc, state_mask);
  tcase_add_test(tc, shards_equal_one_dump);
  suite_add_tcase(s, tc);
  return th_run_suite(s);
}
