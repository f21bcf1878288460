/* uvip-stat: TCP socket census per VIP, listen queues, ephemeral port use
 * and capacity, from sock_diag netlink. Runs standalone (no server).
 * SPDX-License-Identifier: MIT */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uvip.h>

#include "common.h"

typedef struct opts {
  const char *vips;
  int json, prom, capacity, procfs;
  uint64_t watch_ms;
  double exhaustion_s;
  uint64_t count;
  size_t top;
  uvip_capacity_input_t in;
} opts_t;

static opts_t O;
static uint64_t printed;

static void usage(FILE *f) {
  fprintf(f,
          "usage: uvip-stat [options]\n"
          "  --vips SPEC        only these local addresses (uvip address spec)\n"
          "  --json             one JSON object: totals, vips, listeners, tuples,\n"
          "                     limits, capacity\n"
          "  --prometheus       Prometheus text exposition (metrics uvip_*)\n"
          "  --capacity         the full capacity report with advice\n"
          "  --watch SECS       sample every SECS seconds (threshold events on\n"
          "                     stderr) until interrupted\n"
          "  --count N          with --watch: stop after N samples\n"
          "  --exhaustion SECS  with --watch: event when a pair's ports run\n"
          "                     out within SECS at its current rate (default\n"
          "                     300, 0 = no event); the forecast lines need\n"
          "                     two samples, so --watch\n"
          "  --top N            port tuples to list (default 10, 0 = all)\n"
          "  --target N         connections wanted (capacity advice)\n"
          "  --sources N        outbound source VIPs (capacity)\n"
          "  --processes N      processes sharing the load (capacity)\n"
          "  --procfs           read /proc/net/tcp{,6} instead of netlink\n"
          "  -h, --help\n");
}

static const char *short_state[UVIP_TCP_STATE_COUNT] = {
    "ESTAB", "SYN-S", "SYN-R", "FIN-W1", "FIN-W2", "T-WAIT",
    "CLOSE", "C-WAIT", "L-ACK", "LISTEN", "CLOSNG"};

static void fmt(const struct sockaddr_storage *ss, int port, char *b) {
  if (uvip_addr_format((const struct sockaddr *)ss, port, b, UVIP_ADDRSTRLEN))
    strcpy(b, "?");
}

static void print_row(const char *name, const uvip_census_counts_t *c) {
  uint64_t in = 0, out = 0;
  printf("%-24s", name);
  for (int s = 0; s < UVIP_TCP_STATE_COUNT; s++) {
    printf(" %7llu", (unsigned long long)(c->in[s] + c->out[s]));
    in += c->in[s];
    out += c->out[s];
  }
  printf(" %8llu %8llu\n", (unsigned long long)in, (unsigned long long)out);
}

static const char *num(uint64_t v, char *b) {
  if (v == UINT64_MAX)
    return "unbounded";
  snprintf(b, 32, "%llu", (unsigned long long)v);
  return b;
}

static void print_capacity(const uvip_capacity_t *cap, int full) {
  char b[8][32];
  printf("\ncapacity: overall %s connections, binding limit: %s, now %llu, "
         "headroom %s\n",
         num(cap->overall, b[0]), uvip_bound_name(cap->binding),
         (unsigned long long)cap->conns_now, num(cap->headroom, b[1]));
  if (!full)
    return;
  printf("  usable ports per tuple   %d\n"
         "  per client address       %s\n"
         "  per destination          %s\n"
         "  bound by ports           %s\n"
         "  bound by descriptors     %s\n"
         "  bound by memory          %s\n"
         "  TIME_WAIT buckets        %s (%.1f%% used)\n"
         "  new conns/s per tuple    %.1f (TIME_WAIT 60 s)\n"
         "  worst tuple use          %.1f%%\n"
         "  descriptors used         %.1f%% (this process)\n",
         cap->usable_ports, num(cap->per_client_addr, b[2]),
         num(cap->per_destination, b[3]), num(cap->by_ports, b[4]),
         num(cap->by_fds, b[5]), num(cap->by_memory, b[6]),
         num(cap->by_time_wait, b[7]), cap->time_wait_use * 100,
         cap->rate_per_tuple, cap->worst_tuple_use * 100, cap->fd_use * 100);
  if (cap->advice_count == 0)
    printf("advice: none, no limit is close\n");
  for (size_t i = 0; i < cap->advice_count; i++)
    printf("advice: %s\n", cap->advice[i]);
}

/* 28232 -> "28,232". */
static const char *grouped(double v, char *b) {
  char d[32];
  int n = snprintf(d, sizeof(d), "%.0f", v < 0 ? 0 : v), k = 0;
  for (int i = 0; i < n; i++) {
    if (i && (n - i) % 3 == 0)
      b[k++] = ',';
    b[k++] = d[i];
  }
  b[k] = 0;
  return b;
}

/* One line per pair listed: "a -> r: N ports, R new/s, TIME_WAIT 60 s:
 * exhausted in S s" (or what it levels off at). */
static void print_forecasts(const uvip_census_t *c, const uvip_tracker_t *t) {
  char a[UVIP_ADDRSTRLEN], r[UVIP_ADDRSTRLEN], b[3][40];
  size_t nt = uvip_census_tuple_count(c);
  if (nt)
    printf("\nforecast (ports per pair at the current rate):\n");
  for (size_t i = 0; i < nt && (O.top == 0 || i < O.top); i++) {
    const uvip_census_tuple_t *tu = uvip_census_tuple(c, i);
    uvip_forecast_t f;
    if (uvip_tracker_forecast(t, i, &f) != 0)
      continue;
    fmt(&tu->local, 0, a);
    fmt(&tu->remote, 1, r);
    printf("%s -> %s: %s ports, %s in use, %s new/s, TIME_WAIT %.0f s: ", a, r,
           tu->usable > 0 ? grouped(tu->usable, b[0]) : "?",
           grouped((double)tu->in_use, b[1]), grouped(f.rate, b[2]), f.hold);
    switch (f.state) {
    case UVIP_FORECAST_EXHAUSTED:
      printf("exhausted now\n");
      break;
    case UVIP_FORECAST_EXHAUSTING:
      printf("exhausted in %.0f s\n", f.eta);
      break;
    case UVIP_FORECAST_STEADY:
      printf("levels off at %s (%.1f%%)\n", grouped(f.steady, b[0]),
             tu->usable > 0 ? 100 * f.steady / tu->usable : 0);
      break;
    default:
      printf("unknown yet\n");
    }
  }
}

static void print_table(const uvip_census_t *c, const uvip_capacity_t *cap,
                        const uvip_tracker_t *tr) {
  const uvip_census_info_t *info = uvip_census_info(c);
  const uvip_limits_t *L = uvip_census_limits(c);
  char a[UVIP_ADDRSTRLEN], r[UVIP_ADDRSTRLEN];

  printf("%llu sockets in %.1f ms (%s)", (unsigned long long)info->sockets,
         (double)info->duration_ns / 1e6,
         info->source == UVIP_CENSUS_SRC_PROCFS ? "/proc/net/tcp" : "netlink");
  if (L)
    printf(", ports %d-%d: %d usable per tuple", L->port_lo, L->port_hi,
           L->usable_ports);
  printf("\n\n%-24s", "VIP");
  for (int s = 0; s < UVIP_TCP_STATE_COUNT; s++)
    printf(" %7s", short_state[s]);
  printf(" %8s %8s\n", "IN", "OUT");
  for (size_t i = 0; i < uvip_census_vip_count(c); i++) {
    const uvip_census_vip_t *v = uvip_census_vip(c, i);
    fmt(&v->addr, 0, a);
    print_row(a, &v->counts);
  }
  print_row("TOTAL", uvip_census_totals(c));
  if (info->vips_overflow || info->listeners_overflow || info->tuples_overflow)
    printf("(tables full: %llu sockets without a VIP row, %llu listeners and "
           "%llu tuple sockets not listed)\n",
           (unsigned long long)info->vips_overflow,
           (unsigned long long)info->listeners_overflow,
           (unsigned long long)info->tuples_overflow);

  printf("\n%-32s %8s %8s %8s\n", "LISTENER", "QUEUE", "BACKLOG", "SYN-RECV");
  for (size_t i = 0; i < uvip_census_listener_count(c); i++) {
    const uvip_census_listener_t *l = uvip_census_listener(c, i);
    fmt(&l->addr, 1, a);
    printf("%-32s %8llu %8lld %8llu\n", a, (unsigned long long)l->queue,
           (long long)l->backlog, (unsigned long long)l->syn_recv);
  }

  size_t nt = uvip_census_tuple_count(c);
  printf("\n%-24s %-32s %8s %8s %7s   (%zu tuple%s, worst first)\n", "LOCAL",
         "REMOTE", "IN-USE", "T-WAIT", "USE%", nt, nt == 1 ? "" : "s");
  for (size_t i = 0; i < nt && (O.top == 0 || i < O.top); i++) {
    const uvip_census_tuple_t *t = uvip_census_tuple(c, i);
    fmt(&t->local, 0, a);
    fmt(&t->remote, 1, r);
    printf("%-24s %-32s %8llu %8llu %6.2f%%\n", a, r,
           (unsigned long long)t->in_use, (unsigned long long)t->time_wait,
           t->utilisation * 100);
  }
  if (info->has_netstat_delta)
    printf("\nsince last sample: ListenOverflows +%llu, ListenDrops +%llu, "
           "TCPTimeWaitOverflow +%llu, TWRecycled +%llu\n",
           (unsigned long long)info->netstat_delta.listen_overflows,
           (unsigned long long)info->netstat_delta.listen_drops,
           (unsigned long long)info->netstat_delta.tw_overflow,
           (unsigned long long)info->netstat_delta.tw_recycled);
  if (tr)
    print_forecasts(c, tr);
  if (cap)
    print_capacity(cap, O.capacity);
}

/* Prints one sample in the chosen format, with the tracker's forecasts
 * when t is not NULL. Returns 0 or an error. */
static int report(const uvip_census_t *c, const uvip_tracker_t *t) {
  uvip_capacity_t cap;
  const uvip_capacity_t *capp =
      uvip_capacity_compute(c, &O.in, &cap) == 0 ? &cap : NULL;
  if (O.json || O.prom) {
    size_t len = 0;
    int fmtid = O.json ? UVIP_RENDER_JSON : UVIP_RENDER_PROMETHEUS;
    int rc = t ? uvip_tracker_render(t, capp, fmtid, O.top, NULL, &len)
               : uvip_census_render(c, capp, fmtid, O.top, NULL, &len);
    char *buf = rc == UV_ENOBUFS ? malloc(len) : NULL;
    if (!buf)
      return rc == UV_ENOBUFS ? UV_ENOMEM : rc;
    rc = t ? uvip_tracker_render(t, capp, fmtid, O.top, buf, &len)
           : uvip_census_render(c, capp, fmtid, O.top, buf, &len);
    if (rc == 0)
      fwrite(buf, 1, len, stdout);
    free(buf);
    fflush(stdout);
    return rc;
  }
  print_table(c, capp, t);
  fflush(stdout);
  return 0;
}

/* --watch: a tracker on a loop. */

static uv_signal_t sigint;
static int watch_rc;

static void on_closed(uvip_tracker_t *t) { (void)t; }

static void stop_watch(uvip_tracker_t *t) {
  uvip_tracker_close(t, on_closed);
  uv_close((uv_handle_t *)&sigint, NULL);
}

static void on_sample(uvip_tracker_t *t, const uvip_census_t *c, int status) {
  if (status < 0) {
    fprintf(stderr, "uvip-stat: census failed: %s\n", uv_strerror(status));
    watch_rc = 1;
    stop_watch(t);
    return;
  }
  if (!O.json && !O.prom && printed)
    printf("\n----\n");
  if (report(c, t) != 0)
    watch_rc = 1;
  if (O.count && ++printed >= O.count)
    stop_watch(t);
  else if (!O.count)
    printed++;
}

static void on_event(uvip_tracker_t *t, const uvip_tracker_event_t *ev) {
  const char *kind = uvip_event_kind_name((int)ev->kind);
  char a[UVIP_ADDRSTRLEN] = "", r[UVIP_ADDRSTRLEN] = "";
  (void)t;
  if (ev->tuple) {
    fmt(&ev->tuple->local, 0, a);
    fmt(&ev->tuple->remote, 1, r);
  } else if (ev->listener) {
    fmt(&ev->listener->addr, 1, a);
  }
  fprintf(stderr, "event: %s %s value %.3f threshold %.3f %s%s%s\n",
          kind ? kind : "?",
          ev->raised ? "RAISED" : "cleared", ev->value, ev->threshold, a,
          r[0] ? " -> " : "", r);
}

static void on_sigint(uv_signal_t *h, int sig) {
  (void)sig;
  stop_watch(h->data);
}

static int watch(const uvip_addrs_t *vips, const uvip_census_options_t *co) {
  uv_loop_t *loop = uv_default_loop();
  uvip_tracker_options_t to;
  uvip_tracker_t *t;
  uvip_tracker_options_init(&to);
  to.census = *co;
  to.interval_ms = O.watch_ms;
  to.exhaustion_seconds = O.exhaustion_s;
  if (to.interval_ms < 10)
    to.interval_ms = 10;
  int rc = uvip_tracker_new(loop, vips, &to, &t);
  if (rc == 0)
    rc = uvip_tracker_start(t, on_sample, on_event);
  if (rc != 0) {
    fprintf(stderr, "uvip-stat: tracker: %s\n", uv_strerror(rc));
    return 1;
  }
  uv_signal_init(loop, &sigint);
  sigint.data = t;
  uv_signal_start(&sigint, on_sigint, SIGINT);
  uv_run(loop, UV_RUN_DEFAULT);
  uv_loop_close(loop);
  return watch_rc;
}

int main(int argc, char **argv) {
  static const struct option lo[] = {
      {"vips", required_argument, 0, 'v'},   {"json", no_argument, 0, 'j'},
      {"prometheus", no_argument, 0, 'p'},   {"capacity", no_argument, 0, 'c'},
      {"watch", required_argument, 0, 'w'},  {"count", required_argument, 0, 'n'},
      {"top", required_argument, 0, 't'},    {"target", required_argument, 0, 'T'},
      {"sources", required_argument, 0, 'S'},
      {"processes", required_argument, 0, 'P'},
      {"procfs", no_argument, 0, 'f'},       {"help", no_argument, 0, 'h'},
      {"exhaustion", required_argument, 0, 'X'},
      {0, 0, 0, 0}};
  int ch;
  ex_init(argv[0]);
  O.top = 10;
  O.exhaustion_s = 300;
  uvip_capacity_input_init(&O.in);
  while ((ch = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
    switch (ch) {
    case 'v': O.vips = optarg; break;
    case 'j': O.json = 1; break;
    case 'p': O.prom = 1; break;
    case 'c': O.capacity = 1; break;
    case 'f': O.procfs = 1; break;
    case 'w':
      /* A day at most: the interval is milliseconds on a uv timer. */
      O.watch_ms = ex_parse_secs("--watch", optarg, 1, 86400000);
      break;
    case 'X':
      O.exhaustion_s =
          (double)ex_parse_secs("--exhaustion", optarg, 0, 86400000) / 1000.0;
      break;
    case 'n': O.count = ex_parse_num("--count", optarg, 0, INT64_MAX); break;
    case 't': O.top = (size_t)ex_parse_num("--top", optarg, 0, SIZE_MAX); break;
    case 'T':
      O.in.target_conns = ex_parse_num("--target", optarg, 0, UINT64_MAX);
      break;
    case 'S': O.in.sources = ex_parse_num("--sources", optarg, 0, UINT64_MAX); break;
    case 'P':
      O.in.processes = ex_parse_num("--processes", optarg, 0, UINT64_MAX);
      break;
    case 'h': usage(stdout); return 0;
    default: usage(stderr); return 2;
    }
  }
  if (optind < argc || (O.json && O.prom)) {
    usage(stderr);
    return 2;
  }

  uvip_addrs_t *vips = NULL;
  if (O.vips) {
    char err[256] = "";
    int rc = uvip_addrs_new(&vips);
    if (rc == 0)
      rc = uvip_addrs_parse(vips, O.vips, 0, err, sizeof(err));
    if (rc != 0) {
      fprintf(stderr, "uvip-stat: bad --vips '%s': %s\n", O.vips,
              err[0] ? err : uv_strerror(rc));
      uvip_addrs_free(vips);
      return 2;
    }
  }
  uvip_census_options_t co;
  uvip_census_options_init(&co);
  if (O.procfs)
    co.flags |= UVIP_CENSUS_PROCFS;
  if (vips && uvip_addrs_count(vips) > co.max_vips)
    co.max_vips = uvip_addrs_count(vips);

  int rc = 0;
  if (O.watch_ms > 0) {
    rc = watch(vips, &co);
  } else {
    uvip_census_t *c = NULL;
    int r = uvip_census_new(vips, &co, &c);
    if (r == 0)
      r = uvip_census_sample(c);
    if (r != 0) {
      fprintf(stderr, "uvip-stat: census failed: %s (%s)\n", uv_strerror(r),
              uv_err_name(r));
      rc = 1;
    } else if (report(c, NULL) != 0) {
      fprintf(stderr, "uvip-stat: cannot render the census\n");
      rc = 1;
    }
    uvip_census_free(c);
  }
  uvip_addrs_free(vips);
  return rc;
}
