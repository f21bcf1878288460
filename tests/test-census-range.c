/* Census in a namespace with narrowed limits: utilisation and capacity
 * follow the range; limits read back; tracker threshold crossings fire
 * once; renderers.
 * SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "census-ss.h"
#include "helpers.h"

#define RANGE "/proc/sys/net/ipv4/ip_local_port_range"
#define RESERVED "/proc/sys/net/ipv4/ip_local_reserved_ports"

static int has_advice(const uvip_capacity_t *cap, const char *word) {
  for (size_t i = 0; i < cap->advice_count; i++)
    if (strstr(cap->advice[i], word))
      return 1;
  return 0;
}

START_TEST(narrow_range_utilisation_and_capacity) {
  int fds[100], n = 0, fd;
  cs_fresh_netns();
  cs_sysctl(RANGE, "40000 40099");
  cs_sysctl(RESERVED, "40010-40019,50000");
  int l = cs_listen("127.77.0.1", 7600, 256);
  /* The kernel agrees that 90 ports are usable for the tuple. */
  while ((fd = cs_connect_from("127.77.0.2", "127.77.0.1", 7600, 0)) >= 0) {
    ck_assert_int_lt(n, 100);
    fds[n++] = fd;
  }
  ck_assert_int_eq(fd, -EADDRNOTAVAIL);
  ck_assert_int_eq(n, 90);

  uvip_census_t *c = NULL;
  ck_assert_int_eq(uvip_census_new(NULL, NULL, &c), 0);
  ck_assert_int_eq(uvip_census_sample(c), 0);
  cs_compare_with_ss(c);
  const uvip_limits_t *L = uvip_census_limits(c);
  ck_assert_int_eq(L->port_lo, 40000);
  ck_assert_int_eq(L->port_hi, 40099);
  ck_assert_int_eq(L->reserved_in_range, 10);
  ck_assert_int_eq(L->usable_ports, 90);
  ck_assert_uint_eq(uvip_census_tuple_count(c), 1);
  const uvip_census_tuple_t *t = uvip_census_tuple(c, 0);
  ck_assert_uint_eq(t->in_use, 90);
  ck_assert_int_eq(t->usable, 90);
  ck_assert(t->utilisation == 1.0);

  uvip_capacity_t cap;
  ck_assert_int_eq(uvip_capacity_compute(c, NULL, &cap), 0);
  ck_assert_int_eq(cap.usable_ports, 90);
  ck_assert_uint_eq(cap.per_destination, 90); /* one source address */
  ck_assert_uint_eq(cap.by_ports, 90);
  ck_assert(cap.rate_per_tuple == 1.5);     /* 90 ports / 60 s */
  ck_assert(cap.worst_tuple_use == 1.0);
  ck_assert_int_eq(cap.binding, UVIP_BOUND_PORTS);
  /* 90 client + 90 server sockets established (listener excluded). */
  ck_assert_uint_eq(cap.conns_now, 180);
  ck_assert_uint_eq(cap.headroom, 0);
  ck_assert(has_advice(&cap, "ip_local_port_range"));
  ck_assert(has_advice(&cap, "source VIPs"));
  /* One listening VIP, one listen port: a client address holds 90. */
  ck_assert_uint_eq(cap.per_client_addr, 90);

  /* A pool description changes the figures the way it should. */
  uvip_capacity_input_t in;
  uvip_capacity_input_init(&in);
  in.sources = 4;
  in.vips = 10;
  in.listen_ports = 2;
  in.target_conns = 1000;
  ck_assert_int_eq(uvip_capacity_compute(c, &in, &cap), 0);
  ck_assert_uint_eq(cap.per_destination, 360);
  ck_assert_uint_eq(cap.per_client_addr, 1800);
  ck_assert(has_advice(&cap, "use 12 source VIPs"));

  /* Wider range: the same sockets use less of it. */
  cs_sysctl(RANGE, "40000 40179");
  ck_assert_int_eq(uvip_census_sample(c), 0);
  t = uvip_census_tuple(c, 0);
  ck_assert_int_eq(t->usable, 170);
  ck_assert(t->utilisation == 90.0 / 170.0);
  uvip_census_free(c);
  for (int i = 0; i < n; i++)
    close(fds[i]);
  close(l);
}
END_TEST

static uint64_t netstat_awk(const char *name) {
  char cmd[256];
  snprintf(cmd, sizeof(cmd),
           "awk '/^TcpExt:/ { if (!h) { for (i = 2; i <= NF; i++) n[i] = $i; "
           "h = 1 } else { for (i = 2; i <= NF; i++) if (n[i] == \"%s\") "
           "print $i } }' /proc/net/netstat", name);
  char *out = th_cmd_output(cmd);
  ck_assert_ptr_nonnull(out);
  ck_assert_msg(out[0] >= '0' && out[0] <= '9', "no %s in netstat", name);
  uint64_t v = strtoull(out, NULL, 10);
  free(out);
  return v;
}

START_TEST(limits_read_back) {
  uvip_limits_t L;
  struct rlimit rl;
  cs_fresh_netns();
  cs_sysctl("/proc/sys/net/core/somaxconn", "1234");
  cs_sysctl("/proc/sys/net/ipv4/tcp_max_syn_backlog", "555");
  cs_sysctl("/proc/sys/net/ipv4/tcp_max_tw_buckets", "777");
  cs_sysctl("/proc/sys/net/ipv4/tcp_tw_reuse", "1");
  cs_sysctl("/proc/sys/net/ipv4/tcp_fin_timeout", "33");
  /* Overflow a listen queue so that the counters are not all zero. */
  int l = cs_listen("127.77.0.1", 7700, 0), fds[4];
  for (int i = 0; i < 4; i++)
    fds[i] = cs_connect_from("127.77.0.2", "127.77.0.1", 7700, 1);

  ck_assert_int_eq(uvip_limits_read(&L), 0);
  ck_assert_int_eq(L.somaxconn, 1234);
  ck_assert_int_eq(L.tcp_max_syn_backlog, 555);
  ck_assert_int_eq(L.tcp_max_tw_buckets, 777);
  ck_assert_int_eq(L.tcp_tw_reuse, 1);
  ck_assert_int_eq(L.tcp_fin_timeout, 33);
  /* tcp_mem is global: a child namespace does not show it. */
  if (access("/proc/sys/net/ipv4/tcp_mem", F_OK) == 0) {
    ck_assert_uint_eq(L.missing, 0);
    ck_assert_int_gt(L.tcp_mem[2], 0);
  } else {
    ck_assert_uint_eq(L.missing, UVIP_LIMIT_TCP_MEM);
    ck_assert_int_eq(L.tcp_mem[2], -1);
  }
  ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
  ck_assert_int_eq(L.nofile_soft, (int64_t)rl.rlim_cur);
  ck_assert_int_eq(L.nofile_hard, (int64_t)rl.rlim_max);
  ck_assert_uint_eq(L.netstat.listen_overflows, netstat_awk("ListenOverflows"));
  ck_assert_uint_eq(L.netstat.listen_drops, netstat_awk("ListenDrops"));
  ck_assert_uint_gt(L.netstat.listen_drops, 0);
  ck_assert_uint_eq(L.netstat.tw_overflow, netstat_awk("TCPTimeWaitOverflow"));
  ck_assert_uint_eq(L.netstat.tw_recycled, netstat_awk("TWRecycled"));
  char *s = th_cmd_output("cat /proc/sys/fs/nr_open");
  ck_assert_int_eq(L.nr_open, strtoll(s, NULL, 10));
  free(s);
  /* Opening descriptors shows in open_fds one for one. */
  int64_t before = L.open_fds;
  int extra[3];
  for (int i = 0; i < 3; i++)
    extra[i] = open("/dev/null", O_RDONLY | O_CLOEXEC);
  ck_assert_int_eq(uvip_limits_read(&L), 0);
  ck_assert_int_eq(L.open_fds, before + 3);
  /* Feature probes match this kernel (6.x): all present. */
  ck_assert_int_eq(L.has_bind_address_no_port, 1);
  ck_assert_int_eq(L.has_tcp_migrate_req,
                   access("/proc/sys/net/ipv4/tcp_migrate_req", F_OK) == 0);
  ck_assert_int_eq(uvip_limits_read(NULL), UV_EINVAL);
  for (int i = 0; i < 3; i++)
    close(extra[i]);
  for (int i = 0; i < 4; i++)
    close(fds[i]);
  close(l);
}
END_TEST

/* ---- tracker ------------------------------------------------------------ */

typedef struct ev_log {
  int kind[64], raised[64];
  int n;
  int step;
  int fds[16];
  int nfds;
  int lfd;
  bool done;
} ev_log_t;

static ev_log_t LOG;

static void on_event(uvip_tracker_t *t, const uvip_tracker_event_t *ev) {
  ck_assert_int_lt(LOG.n, 64);
  LOG.kind[LOG.n] = ev->kind;
  LOG.raised[LOG.n] = ev->raised;
  LOG.n++;
  if (ev->kind == UVIP_EVENT_PORTS)
    ck_assert_ptr_nonnull(ev->tuple);
  if (ev->kind == UVIP_EVENT_LISTEN_QUEUE)
    ck_assert_ptr_nonnull(ev->listener);
}

static void open_conns(int k) {
  for (int i = 0; i < k; i++) {
    int fd = cs_connect_from("127.77.0.2", "127.77.0.1", 7800, 0);
    ck_assert_int_ge(fd, 0);
    LOG.fds[LOG.nfds++] = fd;
  }
}

static void abort_conns(int k) {
  for (int i = 0; i < k; i++)
    cs_abort(LOG.fds[--LOG.nfds]);
}

static int count_events(int kind, int raised) {
  int c = 0;
  for (int i = 0; i < LOG.n; i++)
    c += LOG.kind[i] == kind && LOG.raised[i] == raised;
  return c;
}

/* The script: what changes before each sample, and the PORTS events seen
 * so far after it. Range: 10 usable ports; threshold 0.5, re-arm 0.8 (so
 * the condition ends below 0.4). */
static void on_sample(uvip_tracker_t *t, const uvip_census_t *c, int status) {
  ck_assert_int_eq(status, 0);
  ck_assert_ptr_nonnull(c);
  int up = count_events(UVIP_EVENT_PORTS, 1);
  int down = count_events(UVIP_EVENT_PORTS, 0);
  switch (LOG.step++) {
  case 0: /* nothing open */
    ck_assert_int_eq(up + down, 0);
    open_conns(6); /* 0.6 */
    break;
  case 1:
    ck_assert_int_eq(up, 1);
    ck_assert_int_eq(down, 0);
    break; /* unchanged */
  case 2:
    ck_assert_int_eq(up, 1); /* not again while it stays above */
    abort_conns(2);           /* 0.4: below the threshold, above re-arm */
    break;
  case 3:
    ck_assert_int_eq(up, 1);
    ck_assert_int_eq(down, 0); /* hysteresis */
    abort_conns(1);            /* 0.3 */
    break;
  case 4:
    ck_assert_int_eq(down, 1);
    open_conns(2); /* 0.5: crosses again */
    break;
  case 5:
    ck_assert_int_eq(up, 2);
    ck_assert_int_eq(down, 1);
    abort_conns(LOG.nfds); /* the tuple disappears */
    break;
  case 6:
    ck_assert_int_eq(down, 2);
    break;
  case 7:
    ck_assert_int_eq(up, 2);
    ck_assert_int_eq(down, 2);
    LOG.done = true;
    uvip_tracker_stop(t);
    break;
  default:
    ck_abort_msg("sample after stop");
  }
}

START_TEST(tracker_fires_once_per_crossing) {
  uv_loop_t loop;
  uvip_tracker_t *t = NULL;
  uvip_tracker_options_t o;
  cs_fresh_netns_once();
  cs_sysctl(RANGE, "40000 40009");
  memset(&LOG, 0, sizeof(LOG));
  LOG.lfd = cs_listen("127.77.0.1", 7800, 64);
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  ck_assert_int_eq(uvip_tracker_options_init(&o), 0);
  o.interval_ms = 10;
  o.ports_use = 0.5;
  o.rearm = 0.8;
  o.listen_queue_use = 0; /* the queue fills too: not this test's subject */
  o.time_wait_use = 0;
  o.overflow = 0;
  o.exhaustion_seconds = 0;
  ck_assert_int_eq(uvip_tracker_new(&loop, NULL, &o, &t), 0);
  ck_assert_int_eq(uvip_tracker_start(t, on_sample, on_event), 0);
  ck_assert_int_eq(uvip_tracker_start(t, on_sample, on_event), UV_EALREADY);
  th_run_until(&loop, &LOG.done, 100000);
  uint64_t samples = 0, skipped = 0;
  ck_assert_int_eq(uvip_tracker_counts(t, &samples, &skipped), 0);
  ck_assert_uint_eq(samples, 8);
  ck_assert_int_eq(LOG.n, 4); /* only PORTS events were enabled */
  bool closed = false;
  uvip_tracker_set_data(t, &closed);
  ck_assert_int_eq(uvip_tracker_close(t, NULL), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  close(LOG.lfd);
}
END_TEST

/* Listen queue, TIME_WAIT and overflow conditions: each raised once while
 * it holds, whatever the number of samples. */
typedef struct gstate {
  int samples;
  int lfd, fds[16], nfds;
  bool done;
  int ev[8][2];
} gstate_t;

static gstate_t G;

static void g_event(uvip_tracker_t *t, const uvip_tracker_event_t *ev) {
  G.ev[ev->kind][ev->raised]++;
}

static void g_sample(uvip_tracker_t *t, const uvip_census_t *c, int status) {
  ck_assert_int_eq(status, 0);
  if (++G.samples == 1) {
    /* backlog 2 holds 3: 3/2 >= 0.8. The 4th SYN overflows. */
    for (int i = 0; i < 3; i++)
      G.fds[G.nfds++] = cs_connect_from("127.77.0.2", "127.77.0.1", 7900, 0);
    G.fds[G.nfds++] = cs_connect_from("127.77.0.2", "127.77.0.1", 7900, 1);
    /* 8 TIME_WAITs against 10 buckets. */
    int l2 = cs_listen("127.77.0.3", 7901, 16);
    for (int i = 0; i < 8; i++) {
      int a = cs_connect_from("127.77.0.2", "127.77.0.3", 7901, 0);
      int b = accept4(l2, NULL, NULL, SOCK_CLOEXEC);
      char ch;
      close(a);
      ck_assert_int_eq(read(b, &ch, 1), 0);
      close(b);
    }
    close(l2);
  }
  if (G.samples == 6) {
    G.done = true;
    uvip_tracker_stop(t);
  }
}

static void g_closed(uvip_tracker_t *t) { *(bool *)uvip_tracker_get_data(t) = true; }

START_TEST(tracker_listen_time_wait_overflow) {
  uv_loop_t loop;
  uvip_tracker_t *t = NULL;
  uvip_tracker_options_t o;
  cs_fresh_netns_once();
  cs_sysctl(RANGE, "32768 60999");
  cs_sysctl("/proc/sys/net/ipv4/tcp_max_tw_buckets", "10");
  memset(&G, 0, sizeof(G));
  G.lfd = cs_listen("127.77.0.1", 7900, 2);
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  uvip_tracker_options_init(&o);
  o.interval_ms = 10;
  ck_assert_int_eq(uvip_tracker_new(&loop, NULL, &o, &t), 0);
  ck_assert_int_eq(uvip_tracker_start(t, g_sample, g_event), 0);
  th_run_until(&loop, &G.done, 100000);
  ck_assert_int_eq(G.ev[UVIP_EVENT_LISTEN_QUEUE][1], 1);
  ck_assert_int_eq(G.ev[UVIP_EVENT_LISTEN_QUEUE][0], 0);
  ck_assert_int_eq(G.ev[UVIP_EVENT_TIME_WAIT][1], 1);
  ck_assert_int_eq(G.ev[UVIP_EVENT_TIME_WAIT][0], 0);
  /* The overflow rose at least once; raised and cleared alternate (the
   * dropped SYN is retried, so more rises may follow). */
  ck_assert_int_ge(G.ev[UVIP_EVENT_OVERFLOW][1], 1);
  ck_assert_int_le(G.ev[UVIP_EVENT_OVERFLOW][1] - G.ev[UVIP_EVENT_OVERFLOW][0], 1);
  ck_assert_int_ge(G.ev[UVIP_EVENT_OVERFLOW][1] - G.ev[UVIP_EVENT_OVERFLOW][0], 0);
  ck_assert_int_eq(G.ev[UVIP_EVENT_PORTS][1], 0);
  bool closed = false;
  uvip_tracker_set_data(t, &closed);
  ck_assert_int_eq(uvip_tracker_close(t, g_closed), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert(closed);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  for (int i = 0; i < G.nfds; i++)
    close(G.fds[i]);
  close(G.lfd);
}
END_TEST

/* Closing while a sample runs on the threadpool waits for it: the close
 * callback runs once, after the sample's work has come back, and nothing
 * about the tracker runs after it (ASan would see the tracker used after
 * it was freed).
 *
 * The close happens from a prepare callback at the first loop turn where
 * the sample's uv_work_t is registered with the loop: the prepare phase
 * comes before the poll phase, and the work's completion (after_work) is
 * only delivered from the poll phase, so at that point the sample is
 * certainly in flight, whatever the threadpool has done meanwhile. The
 * loop's request count (libuv's public active_reqs) tells that the sample
 * was queued; the tracker makes no other request. */
static struct {
  uvip_tracker_t *t;
  uv_prepare_t prep;
  unsigned int reqs_at_close;
  int turns, closes, closed, samples, events;
  int samples_at_close, events_at_close;
} IF;

static void if_sample(uvip_tracker_t *t, const uvip_census_t *c, int status) {
  (void)t;
  (void)c;
  (void)status;
  ck_assert_int_eq(IF.closed, 0);
  IF.samples++;
}

static void if_event(uvip_tracker_t *t, const uvip_tracker_event_t *ev) {
  (void)t;
  (void)ev;
  ck_assert_int_eq(IF.closed, 0);
  IF.events++;
}

static void if_closed(uvip_tracker_t *t) {
  ck_assert_ptr_eq(t, IF.t);
  ck_assert_ptr_eq(uvip_tracker_get_data(t), &IF);
  IF.closed++;
  IF.samples_at_close = IF.samples;
  IF.events_at_close = IF.events;
}

static void if_prepare(uv_prepare_t *p) {
  IF.turns++;
  if (p->loop->active_reqs.count == 0)
    return; /* the first sample is not queued yet */
  IF.reqs_at_close = p->loop->active_reqs.count;
  IF.closes++;
  ck_assert_int_eq(uvip_tracker_close(IF.t, if_closed), 0);
  /* Still waiting for the sample: no callback from inside the close. */
  ck_assert_int_eq(IF.closed, 0);
  uv_close((uv_handle_t *)p, NULL);
}

START_TEST(tracker_close_in_flight) {
  uv_loop_t loop;
  uvip_tracker_options_t o;
  memset(&IF, 0, sizeof(IF));
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  ck_assert_int_eq(uvip_tracker_options_init(&o), 0);
  o.interval_ms = 10;
  ck_assert_int_eq(uvip_tracker_new(&loop, NULL, &o, &IF.t), 0);
  uvip_tracker_set_data(IF.t, &IF);
  ck_assert_int_eq(uv_prepare_init(&loop, &IF.prep), 0);
  ck_assert_int_eq(uv_prepare_start(&IF.prep, if_prepare), 0);
  ck_assert_int_eq(uvip_tracker_start(IF.t, if_sample, if_event), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(IF.closes, 1);
  ck_assert_uint_eq(IF.reqs_at_close, 1); /* the sample was in flight */
  ck_assert_int_eq(IF.closed, 1);
  /* No sample was delivered: the one in flight was dropped by the close,
   * and none came after the close callback. */
  ck_assert_int_eq(IF.samples, 0);
  ck_assert_int_eq(IF.events, 0);
  ck_assert_int_eq(IF.samples_at_close, 0);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

START_TEST(tracker_arguments) {
  uv_loop_t loop;
  uvip_tracker_t *t = NULL;
  uvip_tracker_options_t o;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  uvip_tracker_options_init(&o);
  o.interval_ms = 1;
  ck_assert_int_eq(uvip_tracker_new(&loop, NULL, &o, &t), UV_EINVAL);
  uvip_tracker_options_init(&o);
  o.rearm = 0;
  ck_assert_int_eq(uvip_tracker_new(&loop, NULL, &o, &t), UV_EINVAL);
  ck_assert_int_eq(uvip_tracker_new(NULL, NULL, NULL, &t), UV_EINVAL);
  ck_assert_int_eq(uvip_tracker_close(NULL, NULL), UV_EINVAL);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

/* ---- port-exhaustion forecast ------------------------------------------- */

/* 100 usable ports, no TIME_WAIT reuse. Pair A (127.77.0.2 -> .1:7950)
 * gains TIME_WAITs from sample to sample until the range is gone; pair B
 * (-> .1:7951) gets a few once. The EXHAUSTION event fires once, before the
 * range is gone, naming A; the forecasts and their renderings follow; with
 * tcp_tw_reuse turned on, the condition ends. */
static struct {
  int step, lfd[2];
  int raised, cleared;
  double raised_eta;
  uint64_t raised_in_use;
  bool done;
} FC;

static void fc_tw(int port, int k) {
  for (int i = 0; i < k; i++) {
    int a = cs_connect_from("127.77.0.2", "127.77.0.1", port, 0);
    int b = accept4(FC.lfd[port - 7950], NULL, NULL, SOCK_CLOEXEC);
    char ch;
    ck_assert_int_ge(b, 0);
    close(a); /* the client closes first: its port goes to TIME_WAIT */
    ck_assert_int_eq(read(b, &ch, 1), 0);
    close(b);
  }
}

static void fc_event(uvip_tracker_t *t, const uvip_tracker_event_t *ev) {
  char r[UVIP_ADDRSTRLEN];
  (void)t;
  ck_assert_int_eq(ev->kind, UVIP_EVENT_EXHAUSTION);
  ck_assert_ptr_nonnull(ev->tuple);
  ck_assert_ptr_nonnull(ev->forecast);
  ck_assert_int_eq(uvip_addr_format((const struct sockaddr *)&ev->tuple->remote,
                                    1, r, sizeof(r)), 0);
  ck_assert_str_eq(r, "127.77.0.1:7950");
  ck_assert(ev->threshold == 1e6);
  if (ev->raised) {
    FC.raised++;
    FC.raised_eta = ev->value;
    FC.raised_in_use = ev->tuple->in_use;
    ck_assert_int_eq(ev->forecast->state, UVIP_FORECAST_EXHAUSTING);
  } else {
    FC.cleared++;
    ck_assert_int_eq(ev->forecast->state, UVIP_FORECAST_STEADY);
  }
}

static char *fc_render(uvip_tracker_t *t, int format) {
  size_t len = 0;
  ck_assert_int_eq(uvip_tracker_render(t, NULL, format, 0, NULL, &len),
                   UV_ENOBUFS);
  char *buf = malloc(len);
  ck_assert_ptr_nonnull(buf);
  ck_assert_int_eq(uvip_tracker_render(t, NULL, format, 0, buf, &len), 0);
  return buf;
}

/* Index of the tuple whose remote port is port, or -1. */
static long fc_tuple(const uvip_census_t *c, int port) {
  for (size_t i = 0; i < uvip_census_tuple_count(c); i++) {
    const struct sockaddr_in *r =
        (const struct sockaddr_in *)&uvip_census_tuple(c, i)->remote;
    if (ntohs(r->sin_port) == port)
      return (long)i;
  }
  return -1;
}

static void fc_sample(uvip_tracker_t *t, const uvip_census_t *c, int status) {
  uvip_forecast_t fa, fb, fv;
  ck_assert_int_eq(status, 0);
  long a = fc_tuple(c, 7950), b = fc_tuple(c, 7951);
  switch (FC.step++) {
  case 0:
    ck_assert_int_eq(a, -1);
    ck_assert_int_eq(uvip_tracker_forecast(t, 0, &fa), UV_ENOENT);
    fc_tw(7950, 20);
    fc_tw(7951, 5);
    return;
  case 1: /* first sight of both pairs: nothing to compare yet */
    ck_assert_int_ge(a, 0);
    ck_assert_int_eq(uvip_tracker_forecast(t, (size_t)a, &fa), 0);
    ck_assert_int_eq(fa.state, UVIP_FORECAST_UNKNOWN);
    ck_assert_int_eq(FC.raised, 0);
    fc_tw(7950, 20);
    return;
  case 2: {
    ck_assert_int_eq(FC.raised, 1);
    ck_assert_uint_eq(FC.raised_in_use, 40);
    ck_assert_double_gt(FC.raised_eta, 0);
    ck_assert_int_eq(uvip_tracker_forecast(t, (size_t)a, &fa), 0);
    ck_assert_int_eq(uvip_tracker_forecast(t, (size_t)b, &fb), 0);
    ck_assert_int_eq(fa.state, UVIP_FORECAST_EXHAUSTING);
    ck_assert_double_gt(fa.rate, 0);
    ck_assert_int_eq(fa.usable, 100);
    ck_assert_int_eq(fb.state, UVIP_FORECAST_STEADY); /* not growing */
    ck_assert_int_eq(uvip_tracker_forecast(t, 99, &fa), UV_ENOENT);
    /* The source VIP: A's state, both pairs' counts. */
    long v = -1;
    for (size_t i = 0; i < uvip_census_vip_count(c); i++)
      if (cs_row(c, "127.77.0.2", UVIP_TCP_TIME_WAIT, 0) > 0 && v < 0) {
        char x[UVIP_ADDRSTRLEN];
        uvip_addr_format((const struct sockaddr *)&uvip_census_vip(c, i)->addr,
                         0, x, sizeof(x));
        if (strcmp(x, "127.77.0.2") == 0)
          v = (long)i;
      }
    ck_assert_int_ge(v, 0);
    ck_assert_int_eq(uvip_tracker_vip_forecast(t, (size_t)v, &fv), 0);
    ck_assert_int_eq(fv.state, UVIP_FORECAST_EXHAUSTING);
    ck_assert_double_eq_tol(fv.eta, fa.eta, 1e-9);
    ck_assert_uint_eq(fv.in_use, 45);
    ck_assert_int_eq(uvip_tracker_vip_forecast(t, 4096, &fv), UV_ENOENT);
    char *p = fc_render(t, UVIP_RENDER_PROMETHEUS);
    ck_assert_msg(strstr(p, "uvip_pair_exhaustion_seconds{vip=\"127.77.0.2\","
                            "remote=\"127.77.0.1:7950\"} ") != NULL, "%s", p);
    ck_assert_msg(strstr(p, "uvip_pair_exhaustion_seconds{vip=\"127.77.0.2\","
                            "remote=\"127.77.0.1:7951\"} +Inf\n") != NULL,
                  "%s", p);
    ck_assert_msg(strstr(p, "uvip_pair_ports_rate{vip=\"127.77.0.2\",") != NULL,
                  "%s", p);
    ck_assert_msg(strstr(p, "uvip_vip_exhaustion_seconds{vip=\"127.77.0.2\"} ")
                  != NULL, "%s", p);
    ck_assert_msg(strstr(p, "uvip_vip_ports_rate{vip=\"127.77.0.2\"} ") != NULL,
                  "%s", p);
    free(p);
    p = fc_render(t, UVIP_RENDER_JSON);
    ck_assert_msg(strstr(p, "\"forecast\":{\"state\":\"exhausting\",") != NULL,
                  "%s", p);
    ck_assert_msg(strstr(p, "\"forecast\":{\"state\":\"steady\",") != NULL,
                  "%s", p);
    free(p);
    fc_tw(7950, 60); /* 100: every port of the range is taken */
    return;
  }
  case 3:
    ck_assert_int_eq(uvip_tracker_forecast(t, (size_t)a, &fa), 0);
    ck_assert_int_eq(fa.state, UVIP_FORECAST_EXHAUSTED);
    ck_assert(fa.eta == 0);
    ck_assert_int_eq(FC.raised, 1); /* once per crossing */
    /* TIME_WAITs older than a second become reusable: the pair levels
     * off once the averaged inflow says fewer than its TIME_WAITs are
     * that young. */
    cs_sysctl("/proc/sys/net/ipv4/tcp_tw_reuse", "1");
    return;
  default:
    if (FC.cleared == 0)
      return; /* the averages decay sample by sample */
    ck_assert_int_eq(FC.cleared, 1);
    ck_assert_int_eq(uvip_tracker_forecast(t, (size_t)a, &fa), 0);
    ck_assert_double_eq_tol(fa.hold, 1, 1e-9);
    FC.done = true;
    uvip_tracker_stop(t);
  }
}

START_TEST(tracker_forecast_exhaustion) {
  uv_loop_t loop;
  uvip_tracker_t *t = NULL;
  uvip_tracker_options_t o;
  cs_fresh_netns_once();
  cs_sysctl(RANGE, "40000 40099");
  cs_sysctl("/proc/sys/net/ipv4/tcp_tw_reuse", "0");
  memset(&FC, 0, sizeof(FC));
  FC.lfd[0] = cs_listen("127.77.0.1", 7950, 64);
  FC.lfd[1] = cs_listen("127.77.0.1", 7951, 64);
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  uvip_tracker_options_init(&o);
  o.interval_ms = 10;
  o.ports_use = o.listen_queue_use = o.time_wait_use = 0;
  o.overflow = 0;
  o.exhaustion_seconds = 1e6; /* any finite forecast */
  ck_assert_int_eq(uvip_tracker_new(&loop, NULL, &o, &t), 0);
  ck_assert_int_eq(uvip_tracker_render(t, NULL, UVIP_RENDER_JSON, 0, NULL,
                                       &(size_t){0}), UV_ENOENT);
  ck_assert_int_eq(uvip_tracker_vip_forecast(t, 0, &(uvip_forecast_t){0}),
                   UV_ENOENT);
  ck_assert_int_eq(uvip_tracker_start(t, fc_sample, fc_event), 0);
  th_run_until(&loop, &FC.done, 100000);
  ck_assert_int_eq(FC.raised, 1);
  ck_assert_int_eq(uvip_tracker_close(t, NULL), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  close(FC.lfd[0]);
  close(FC.lfd[1]);
}
END_TEST

START_TEST(forecast_arguments) {
  uv_loop_t loop;
  uvip_tracker_t *t = NULL;
  uvip_tracker_options_t o;
  uvip_forecast_t f;
  size_t len = 0;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  uvip_tracker_options_init(&o);
  ck_assert(o.exhaustion_seconds == 300);
  o.exhaustion_seconds = -1;
  ck_assert_int_eq(uvip_tracker_new(&loop, NULL, &o, &t), UV_EINVAL);
  o.exhaustion_seconds = NAN;
  ck_assert_int_eq(uvip_tracker_new(&loop, NULL, &o, &t), UV_EINVAL);
  ck_assert_int_eq(uvip_tracker_forecast(NULL, 0, &f), UV_EINVAL);
  ck_assert_int_eq(uvip_tracker_vip_forecast(NULL, 0, &f), UV_EINVAL);
  ck_assert_int_eq(uvip_tracker_render(NULL, NULL, UVIP_RENDER_JSON, 0, NULL,
                                       &len), UV_EINVAL);
  uvip_tracker_options_init(&o);
  ck_assert_int_eq(uvip_tracker_new(&loop, NULL, &o, &t), 0);
  ck_assert_int_eq(uvip_tracker_forecast(t, 0, NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_tracker_vip_forecast(t, 0, NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_tracker_close(t, NULL), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

/* ---- renderers ---------------------------------------------------------- */

START_TEST(render_json_and_prometheus) {
  int fds[5];
  char small[16];
  cs_fresh_netns();
  int l = cs_listen("127.77.0.1", 8000, 16);
  for (int i = 0; i < 5; i++)
    fds[i] = cs_connect_from("127.77.0.2", "127.77.0.1", 8000, 0);
  uvip_census_t *c = NULL;
  ck_assert_int_eq(uvip_census_new(NULL, NULL, &c), 0);
  ck_assert_int_eq(uvip_census_sample(c), 0);
  uvip_capacity_t cap;
  ck_assert_int_eq(uvip_capacity_compute(c, NULL, &cap), 0);

  size_t len = sizeof(small);
  ck_assert_int_eq(uvip_census_render(c, &cap, UVIP_RENDER_JSON, 0, small, &len),
                   UV_ENOBUFS);
  char *buf = malloc(len);
  size_t need = len;
  ck_assert_int_eq(uvip_census_render(c, &cap, UVIP_RENDER_JSON, 0, buf, &len), 0);
  ck_assert_uint_eq(len + 1, need);
  ck_assert_uint_eq(strlen(buf), len);
  ck_assert_ptr_nonnull(strstr(buf, "{\"totals\":{\"established\":10,"));
  ck_assert_ptr_nonnull(strstr(
      buf, "{\"address\":\"127.77.0.1\",\"established\":5,\"syn_sent\":0,"));
  ck_assert_ptr_nonnull(strstr(buf, "\"listen\":1,\"closing\":0,\"inbound\":"));
  ck_assert_ptr_nonnull(strstr(buf, "\"remote\":\"127.77.0.1:8000\",\"in_use\":5,"));
  /* Well-formed, with the shape the issue mandates. */
  FILE *f = fopen("census.json", "w");
  ck_assert_ptr_nonnull(f);
  fputs(buf, f);
  fclose(f);
  if (access("/usr/bin/python3", X_OK) == 0) {
    char *py = th_cmd_output(
        "python3 -c 'import json; d = json.load(open(\"census.json\")); "
        "S = [\"established\", \"syn_sent\", \"syn_recv\", \"fin_wait1\", "
        "\"fin_wait2\", \"time_wait\", \"close\", \"close_wait\", "
        "\"last_ack\", \"listen\", \"closing\"]; "
        "assert all(isinstance(d[\"totals\"][s], int) for s in S); "
        "assert all(\"address\" in v and all(s in v for s in S) "
        "for v in d[\"vips\"]); print(\"ok\", len(d[\"vips\"]))' 2>&1");
    ck_assert_ptr_nonnull(py);
    ck_assert_str_eq(py, "ok 2\n");
    free(py);
  }
  unlink("census.json");
  free(buf);

  len = 0;
  ck_assert_int_eq(uvip_census_render(c, &cap, UVIP_RENDER_PROMETHEUS, 0, NULL,
                                      &len), UV_ENOBUFS);
  buf = malloc(len);
  ck_assert_int_eq(uvip_census_render(c, &cap, UVIP_RENDER_PROMETHEUS, 0, buf,
                                      &len), 0);
  ck_assert_ptr_nonnull(strstr(buf, "# TYPE uvip_vip_sockets gauge\n"));
  ck_assert_ptr_nonnull(strstr(buf,
      "uvip_vip_sockets{vip=\"127.77.0.1\",state=\"established\",direction=\"in\"} 5\n"));
  ck_assert_ptr_nonnull(strstr(buf,
      "uvip_vip_sockets{vip=\"127.77.0.2\",state=\"established\",direction=\"out\"} 5\n"));
  ck_assert_ptr_nonnull(strstr(buf, "uvip_listen_queue{vip=\"127.77.0.1:8000\"} 5\n"));
  ck_assert_ptr_nonnull(strstr(buf, "uvip_listen_backlog{vip=\"127.77.0.1:8000\"} 16\n"));
  ck_assert_ptr_nonnull(strstr(buf,
      "uvip_port_tuple_in_use{vip=\"127.77.0.2\",remote=\"127.77.0.1:8000\"} 5\n"));
  /* Every sample line is "name{labels} value" or "name value". */
  char *save = NULL;
  for (char *ln = strtok_r(buf, "\n", &save); ln; ln = strtok_r(NULL, "\n", &save)) {
    if (ln[0] == '#')
      continue;
    ck_assert_msg(strncmp(ln, "uvip_", 5) == 0, "bad line %s", ln);
    char *sp = strrchr(ln, ' ');
    ck_assert_ptr_nonnull(sp);
    char *end;
    strtod(sp + 1, &end);
    ck_assert_msg(*end == 0 && end != sp + 1, "bad value in %s", ln);
  }
  free(buf);
  len = 0;
  ck_assert_int_eq(uvip_census_render(c, NULL, 7, 0, NULL, &len), UV_EINVAL);
  uvip_census_free(c);
  for (int i = 0; i < 5; i++)
    close(fds[i]);
  close(l);
}
END_TEST

/* Two SO_REUSEPORT listeners on one address and port: with
 * tcp_migrate_req off the report advises it (connections queued on one that
 * closes would be reset), and says nothing once it is on. */
START_TEST(reuseport_group_advises_migrate_req) {
  struct sockaddr_in a;
  int fds[2], one = 1;
  uvip_census_t *c = NULL;
  uvip_capacity_t cap;
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_port = htons(7700);
  inet_pton(AF_INET, "127.77.0.9", &a.sin_addr);
  for (int i = 0; i < 2; i++) {
    fds[i] = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_eq(
        setsockopt(fds[i], SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)), 0);
    ck_assert_int_eq(bind(fds[i], (struct sockaddr *)&a, sizeof(a)), 0);
    ck_assert_int_eq(listen(fds[i], 16), 0);
  }
  cs_sysctl("/proc/sys/net/ipv4/tcp_migrate_req", "0");
  ck_assert_int_eq(uvip_census_new(NULL, NULL, &c), 0);
  ck_assert_int_eq(uvip_census_sample(c), 0);
  ck_assert_int_eq(uvip_census_limits(c)->tcp_migrate_req, 0);
  ck_assert_int_eq(uvip_capacity_compute(c, NULL, &cap), 0);
  ck_assert(has_advice(&cap, "tcp_migrate_req=1: 2 listeners share "
                             "127.77.0.9:7700"));
  cs_sysctl("/proc/sys/net/ipv4/tcp_migrate_req", "1");
  ck_assert_int_eq(uvip_census_sample(c), 0);
  ck_assert_int_eq(uvip_census_limits(c)->tcp_migrate_req, 1);
  ck_assert_int_eq(uvip_capacity_compute(c, NULL, &cap), 0);
  ck_assert(!has_advice(&cap, "tcp_migrate_req"));
  /* One listener alone is no group. */
  cs_sysctl("/proc/sys/net/ipv4/tcp_migrate_req", "0");
  close(fds[1]);
  ck_assert_int_eq(uvip_census_sample(c), 0);
  ck_assert_int_eq(uvip_capacity_compute(c, NULL, &cap), 0);
  ck_assert(!has_advice(&cap, "tcp_migrate_req"));
  uvip_census_free(c);
  close(fds[0]);
}
END_TEST

int main(void) {
  th_enter_netns_or_skip();
  Suite *s = suite_create("census-range");
  TCase *tc = tcase_create("census-range");
  tcase_add_test(tc, narrow_range_utilisation_and_capacity);
  tcase_add_test(tc, reuseport_group_advises_migrate_req);
  tcase_add_test(tc, limits_read_back);
  tcase_add_test(tc, tracker_fires_once_per_crossing);
  tcase_add_test(tc, tracker_listen_time_wait_overflow);
  tcase_add_test(tc, tracker_close_in_flight);
  tcase_add_test(tc, tracker_arguments);
  tcase_add_test(tc, render_json_and_prometheus);
  tcase_add_test(tc, tracker_forecast_exhaustion);
  tcase_add_test(tc, forecast_arguments);
  suite_add_tcase(s, tc);
  return th_run_suite(s);
}
