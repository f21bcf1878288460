/* bench-load: load client for the issue-2 benchmarks (epoll, one thread).
 *
 *   bench-load --mode starve|throughput|rate [options]
 *
 * starve      16 VIPs (--target), one of them (--heavy-vip, index into the
 *             target list, default 0) with --heavy concurrent connection
 *             attempts (400), every other VIP with --light (4). Each
 *             connection: connect, send one byte, wait for the echo
 *             (connect-to-first-echo latency), hold --hold-ms (20), close,
 *             reconnect. Reports per-VIP connections served, latency
 *             p50/p99/max for the light VIPs and for the heavy VIP, and
 *             Jain's fairness index over the light VIPs' served counts.
 *             Connections still waiting for their echo when the run ends are
 *             counted as "unfinished" and their wait so far is included in
 *             the latency samples (a lower bound), so a starved VIP cannot
 *             look fast by never finishing.
 * throughput  --conns (100) connections spread over the VIPs, each sending
 *             --size (4096) bytes and waiting for all of them to come back,
 *             in a loop. Reports echoed MB/s (10^6 bytes/s, one direction).
 * rate        --conns (100) concurrent connection loops: connect, send one
 *             byte, read the echo, close, reconnect. Reports connections/s.
 *
 * Every run is bounded by --duration-ms and --max-total (completed
 * exchanges). throughput and rate discard the first --warmup-ms.
 *
 * Source addresses: every client socket binds to the next address of --src
 * (default 127.0.1.1-127.0.1.64) with IP_BIND_ADDRESS_NO_PORT, so the
 * kernel picks the port at connect() time from the full 4-tuple space, and
 * TIME_WAIT (the client closes first) is spread over 64 x 16 address pairs.
 * --linger0 closes with SO_LINGER 0 instead (RST, no TIME_WAIT).
 *
 * Output: human-readable lines, then one "RESULT key=value ..." line.
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <uvip.h>

#include "common.h"

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define MAX_CONNS 20000
#define MAX_MSG (1 << 20)

enum mode { M_STARVE, M_THROUGHPUT, M_RATE };
enum state { S_IDLE, S_CONNECTING, S_SENDING, S_WAITING, S_HOLD };

typedef struct {
  int fd;
  int vip;
  int heavy;
  enum state state;
  uint64_t t0;       /* connect start, ns */
  uint64_t deadline; /* S_IDLE/S_HOLD: when to act, ns */
  size_t sent, got;
} conn_t;

typedef struct {
  uint32_t *v; /* microseconds */
  size_t n, cap;
} samples_t;

static enum mode mode = M_STARVE;
static uvip_addrs_t *targets, *sources;
static size_t ntargets, nsources, next_src;
static int heavy_vip = 0, heavy_n = 400, light_n = 4, nconns = 100;
static uint64_t hold_ns = 20 * 1000000ull, duration_ns = 10000 * 1000000ull;
static uint64_t warmup_ns = 500 * 1000000ull, max_total = 10000000;
static size_t msg_size = 4096;
static int linger0 = 0;

static int epfd;
static conn_t *conns;
static size_t nconn;
static char *msg, *rbuf;
static uint64_t *served; /* per VIP */
static samples_t lat_light, lat_heavy;
static uint64_t completed, completed_measured, bytes_measured;
static uint64_t err_connect, err_io, err_eof, err_socket;
static uint64_t unfinished_light, unfinished_heavy;
static uint64_t t_start, t_measure;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}


static void sample_add(samples_t *s, uint64_t ns) {
  uint64_t us = ns / 1000;
  if (s->n == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 4096;
    uint32_t *v;
    if (cap > (size_t)64 << 20)
      return; /* bounded: drop beyond 64 Mi samples */
    v = realloc(s->v, cap * sizeof(*v));
    if (!v)
      return;
    s->v = v;
    s->cap = cap;
  }
  s->v[s->n++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

/* Nearest-rank percentile, milliseconds. */
static double pct_ms(const samples_t *s, double p) {
  size_t k;
  if (s->n == 0)
    return -1;
  k = (size_t)(p / 100.0 * (double)s->n + 0.999999);
  if (k < 1)
    k = 1;
  if (k > s->n)
    k = s->n;
  return s->v[k - 1] / 1000.0;
}

static void conn_stop(conn_t *c) {
  if (c->fd >= 0) {
    if (linger0) {
      struct linger lg = {1, 0};
      setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
    close(c->fd); /* also leaves the epoll set */
    c->fd = -1;
  }
}

/* Closes and schedules a reconnect after delay_ns. */
static void conn_restart(conn_t *c, uint64_t now, uint64_t delay_ns) {
  conn_stop(c);
  c->state = S_IDLE;
  c->deadline = now + delay_ns;
}

static int conn_start(conn_t *c, uint64_t now) {
  const struct sockaddr *dst = uvip_addrs_at(targets, (size_t)c->vip);
  const struct sockaddr *src = uvip_addrs_at(sources, next_src++ % nsources);
  struct epoll_event ev;
  int one = 1, fd;

  c->t0 = now;
  c->sent = c->got = 0;
  fd = socket(dst->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    err_socket++;
    conn_restart(c, now, 10000000ull);
    return -1;
  }
  c->fd = fd;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (src && src->sa_family == dst->sa_family) {
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
    if (bind(fd, src, src->sa_family == AF_INET ? sizeof(struct sockaddr_in)
                                                : sizeof(struct sockaddr_in6)) != 0) {
      err_socket++;
      conn_restart(c, now, 10000000ull);
      return -1;
    }
  }
  if (connect(fd, dst, dst->sa_family == AF_INET ? sizeof(struct sockaddr_in)
                                                 : sizeof(struct sockaddr_in6)) != 0 &&
      errno != EINPROGRESS) {
    err_connect++;
    conn_restart(c, now, 10000000ull);
    return -1;
  }
  c->state = S_CONNECTING;
  ev.events = EPOLLOUT;
  ev.data.ptr = c;
  if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
    err_socket++;
    conn_restart(c, now, 10000000ull);
    return -1;
  }
  return 0;
}

static size_t exchange_size(void) { return mode == M_THROUGHPUT ? msg_size : 1; }

static void set_events(conn_t *c, uint32_t events) {
  struct epoll_event ev;
  ev.events = events;
  ev.data.ptr = c;
  epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Writes what is left of the message; then waits for the echo. */
static void conn_send(conn_t *c, uint64_t now) {
  size_t want = exchange_size();
  while (c->sent < want) {
    ssize_t n = send(c->fd, msg + c->sent, want - c->sent, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EAGAIN) {
        if (c->state != S_SENDING) {
          c->state = S_SENDING;
          set_events(c, EPOLLOUT);
        }
        return;
      }
      if (errno == EINTR)
        continue;
      err_io++;
      conn_restart(c, now, mode == M_STARVE ? 1000000ull : 0);
      return;
    }
    c->sent += (size_t)n;
  }
  c->state = S_WAITING;
  set_events(c, EPOLLIN);
}

static void on_exchange_done(conn_t *c, uint64_t now) {
  completed++;
  if (mode == M_STARVE) {
    served[c->vip]++;
    sample_add(c->heavy ? &lat_heavy : &lat_light, now - c->t0);
    /* Hold the connection open, then close and reconnect. */
    set_events(c, 0);
    c->state = S_HOLD;
    c->deadline = now + hold_ns;
    return;
  }
  if (now >= t_measure) {
    completed_measured++;
    bytes_measured += exchange_size();
  }
  if (mode == M_RATE) {
    conn_restart(c, now, 0);
    conn_start(c, now);
    return;
  }
  c->sent = c->got = 0;
  conn_send(c, now);
}

static void on_event(conn_t *c, uint32_t events, uint64_t now) {
  if (c->fd < 0)
    return;
  switch (c->state) {
  case S_CONNECTING: {
    int err = 0;
    socklen_t len = sizeof(err);
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err || (events & EPOLLERR)) {
      err_connect++;
      conn_restart(c, now, 10000000ull);
      return;
    }
    conn_send(c, now);
    return;
  }
  case S_SENDING:
    conn_send(c, now);
    return;
  case S_WAITING: {
    size_t want = exchange_size();
    for (;;) {
      ssize_t n = recv(c->fd, rbuf, MAX_MSG, 0);
      if (n > 0) {
        c->got += (size_t)n;
        if (c->got >= want) {
          on_exchange_done(c, now);
          return;
        }
        continue;
      }
      if (n == 0) {
        err_eof++;
        conn_restart(c, now, mode == M_STARVE ? 1000000ull : 0);
        return;
      }
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN)
        return;
      err_io++;
      conn_restart(c, now, mode == M_STARVE ? 1000000ull : 0);
      return;
    }
  }
  case S_HOLD:
    /* Reset by the peer while held: stop reporting it until the hold ends. */
    if (events & (EPOLLERR | EPOLLHUP))
      epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    return;
  default:
    return;
  }
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: %s --mode starve|throughput|rate [options]\n"
          "  --target SPEC     server VIPs (default 127.0.0.1-127.0.0.16)\n"
          "  --port P          port for targets without one (default 7000)\n"
          "  --src SPEC        client source addresses (default 127.0.1.1-127.0.1.64)\n"
          "  --duration-ms N   run length (default 10000)\n"
          "  --max-total N     stop after N completed exchanges (default 10000000)\n"
          "  --linger0         close with SO_LINGER 0 (RST, no TIME_WAIT)\n"
          " starve:\n"
          "  --heavy-vip I     index of the flooded VIP in --target (default 0)\n"
          "  --heavy N         concurrent connections to it (default 400)\n"
          "  --light N         concurrent connections to every other VIP (default 4)\n"
          "  --hold-ms N       hold each connection after its echo (default 20)\n"
          " throughput, rate:\n"
          "  --conns N         concurrent connections (default 100)\n"
          "  --size N          bytes per ping-pong message, throughput (default 4096)\n"
          "  --warmup-ms N     not measured at the start (default 500)\n",
          ex_prog);
}

static void raise_nofile(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

int main(int argc, char **argv) {
  ex_init("bench-load");
  enum { O_MODE = 256, O_TARGET, O_PORT, O_SRC, O_DUR, O_MAXT, O_LINGER,
         O_HVIP, O_HEAVY, O_LIGHT, O_HOLD, O_CONNS, O_SIZE, O_WARM, O_HELP };
  static const struct option longopts[] = {
      {"mode", required_argument, NULL, O_MODE},
      {"target", required_argument, NULL, O_TARGET},
      {"port", required_argument, NULL, O_PORT},
      {"src", required_argument, NULL, O_SRC},
      {"duration-ms", required_argument, NULL, O_DUR},
      {"max-total", required_argument, NULL, O_MAXT},
      {"linger0", no_argument, NULL, O_LINGER},
      {"heavy-vip", required_argument, NULL, O_HVIP},
      {"heavy", required_argument, NULL, O_HEAVY},
      {"light", required_argument, NULL, O_LIGHT},
      {"hold-ms", required_argument, NULL, O_HOLD},
      {"conns", required_argument, NULL, O_CONNS},
      {"size", required_argument, NULL, O_SIZE},
      {"warmup-ms", required_argument, NULL, O_WARM},
      {"help", no_argument, NULL, O_HELP},
      {NULL, 0, NULL, 0}};
  const char *target_spec = "127.0.0.1-127.0.0.16";
  const char *src_spec = "127.0.1.1-127.0.1.64";
  int port = 7000, opt, r;
  char err[256] = "";
  struct epoll_event evs[256];
  uint64_t now, t_end;

  opterr = 0;
  while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    switch (opt) {
    case O_MODE:
      if (!strcmp(optarg, "starve"))
        mode = M_STARVE;
      else if (!strcmp(optarg, "throughput"))
        mode = M_THROUGHPUT;
      else if (!strcmp(optarg, "rate"))
        mode = M_RATE;
      else
        ex_usage_error("--mode: expected starve, throughput or rate, got '%s'", optarg);
      break;
    case O_TARGET: target_spec = optarg; break;
    case O_PORT: port = (int)ex_parse_num("--port", optarg, 1, 65535); break;
    case O_SRC: src_spec = optarg; break;
    case O_DUR: duration_ns = ex_parse_num("--duration-ms", optarg, 1, 600000) * 1000000ull; break;
    case O_MAXT: max_total = ex_parse_num("--max-total", optarg, 1, UINT64_MAX / 2); break;
    case O_LINGER: linger0 = 1; break;
    case O_HVIP: heavy_vip = (int)ex_parse_num("--heavy-vip", optarg, 0, 65535); break;
    case O_HEAVY: heavy_n = (int)ex_parse_num("--heavy", optarg, 0, MAX_CONNS); break;
    case O_LIGHT: light_n = (int)ex_parse_num("--light", optarg, 0, MAX_CONNS); break;
    case O_HOLD: hold_ns = ex_parse_num("--hold-ms", optarg, 0, 60000) * 1000000ull; break;
    case O_CONNS: nconns = (int)ex_parse_num("--conns", optarg, 1, MAX_CONNS); break;
    case O_SIZE: msg_size = ex_parse_num("--size", optarg, 1, MAX_MSG); break;
    case O_WARM: warmup_ns = ex_parse_num("--warmup-ms", optarg, 0, 600000) * 1000000ull; break;
    case O_HELP: usage(stdout); return 0;
    default: ex_usage_error("unknown option or missing value: '%s'; see --help", argv[optind - 1]);
    }
  }
  if (optind < argc)
    ex_usage_error("unexpected argument '%s'", argv[optind]);

  if (uvip_addrs_new(&targets) != 0 || uvip_addrs_new(&sources) != 0)
    return 1;
  if ((r = uvip_addrs_parse(targets, target_spec, port, err, sizeof(err))) != 0)
    ex_usage_error("--target: %s", err[0] ? err : uv_strerror(r));
  if (*src_spec &&
      (r = uvip_addrs_parse(sources, src_spec, 0, err, sizeof(err))) != 0)
    ex_usage_error("--src: %s", err[0] ? err : uv_strerror(r));
  ntargets = uvip_addrs_count(targets);
  nsources = uvip_addrs_count(sources);
  if (nsources == 0)
    nsources = 1; /* uvip_addrs_at() returns NULL: no bind */
  if (mode == M_STARVE && (size_t)heavy_vip >= ntargets)
    ex_usage_error("--heavy-vip: index %d is not in --target", heavy_vip);
  if (mode != M_STARVE && warmup_ns >= duration_ns)
    ex_usage_error("--warmup-ms must be shorter than --duration-ms");

  raise_nofile();
  msg = malloc(MAX_MSG);
  rbuf = malloc(MAX_MSG);
  served = calloc(ntargets, sizeof(*served));
  if (mode == M_STARVE)
    nconn = (size_t)heavy_n + (size_t)light_n * (ntargets - 1);
  else
    nconn = (size_t)nconns;
  if (nconn > MAX_CONNS)
    ex_usage_error("--heavy/--light/--conns: more than %d connections", MAX_CONNS);
  conns = calloc(nconn, sizeof(*conns));
  if (!msg || !rbuf || !served || !conns)
    return 1;
  memset(msg, 'x', MAX_MSG);
  epfd = epoll_create1(EPOLL_CLOEXEC);
  if (epfd < 0)
    return 1;

  /* Assign connections to VIPs. Starve: interleave so the heavy VIP's
   * connections are not all started before the light ones. */
  {
    size_t i = 0;
    if (mode == M_STARVE) {
      int round;
      int maxn = heavy_n > light_n ? heavy_n : light_n;
      for (round = 0; round < maxn; round++)
        for (size_t v = 0; v < ntargets; v++) {
          int want = (int)v == heavy_vip ? heavy_n : light_n;
          if (round < want) {
            conns[i].vip = (int)v;
            conns[i].heavy = (int)v == heavy_vip;
            i++;
          }
        }
    } else {
      for (i = 0; i < nconn; i++)
        conns[i].vip = (int)(i % ntargets);
    }
  }

  t_start = now_ns();
  t_measure = mode == M_STARVE ? t_start : t_start + warmup_ns;
  t_end = t_start + duration_ns;
  for (size_t i = 0; i < nconn; i++) {
    conns[i].fd = -1;
    conn_start(&conns[i], t_start);
  }

  for (;;) {
    int n, timeout_ms = 10;
    now = now_ns();
    if (now >= t_end || completed >= max_total)
      break;
    /* Timers: reconnects and holds. */
    {
      uint64_t next = t_end;
      for (size_t i = 0; i < nconn; i++) {
        conn_t *c = &conns[i];
        if (c->state == S_HOLD || c->state == S_IDLE) {
          if (c->deadline <= now) {
            if (c->state == S_HOLD)
              conn_stop(c);
            conn_start(c, now);
          } else if (c->deadline < next) {
            next = c->deadline;
          }
        }
      }
      if (next < now + 10000000ull)
        timeout_ms = next > now ? (int)((next - now + 999999) / 1000000) : 0;
    }
    n = epoll_wait(epfd, evs, 256, timeout_ms);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      perror("epoll_wait");
      return 1;
    }
    now = now_ns();
    for (int i = 0; i < n; i++)
      on_event(evs[i].data.ptr, evs[i].events, now);
  }
  now = now_ns();

  /* Connections still waiting for their first echo: censored samples. */
  if (mode == M_STARVE) {
    for (size_t i = 0; i < nconn; i++) {
      conn_t *c = &conns[i];
      if (c->state == S_CONNECTING || c->state == S_SENDING ||
          c->state == S_WAITING) {
        sample_add(c->heavy ? &lat_heavy : &lat_light, now - c->t0);
        if (c->heavy)
          unfinished_heavy++;
        else
          unfinished_light++;
      }
    }
  }
  for (size_t i = 0; i < nconn; i++) {
    int save = linger0;
    linger0 = 1; /* do not leave 460 TIME_WAITs per run behind */
    conn_stop(&conns[i]);
    linger0 = save;
  }

  double secs = (double)(now - t_measure) / 1e9;
  if (mode == M_STARVE) {
    double sum = 0, sumsq = 0, jain;
    uint64_t light_total = 0, heavy_total = 0;
    size_t nlight = 0;
    for (size_t v = 0; v < ntargets; v++) {
      char a[UVIP_ADDRSTRLEN];
      uvip_addr_format(uvip_addrs_at(targets, v), 1, a, sizeof(a));
      printf("vip %-22s %-5s served %llu\n", a,
             (int)v == heavy_vip ? "heavy" : "light",
             (unsigned long long)served[v]);
      if ((int)v == heavy_vip) {
        heavy_total += served[v];
        continue;
      }
      light_total += served[v];
      sum += (double)served[v];
      sumsq += (double)served[v] * (double)served[v];
      nlight++;
    }
    jain = sumsq > 0 ? sum * sum / ((double)nlight * sumsq) : 0;
    qsort(lat_light.v, lat_light.n, sizeof(uint32_t), cmp_u32);
    qsort(lat_heavy.v, lat_heavy.n, sizeof(uint32_t), cmp_u32);
    printf("light: served %llu, unfinished %llu, latency ms p50 %.2f p99 %.2f max %.2f\n",
           (unsigned long long)light_total, (unsigned long long)unfinished_light,
           pct_ms(&lat_light, 50), pct_ms(&lat_light, 99), pct_ms(&lat_light, 100));
    printf("heavy: served %llu, unfinished %llu, latency ms p50 %.2f p99 %.2f max %.2f\n",
           (unsigned long long)heavy_total, (unsigned long long)unfinished_heavy,
           pct_ms(&lat_heavy, 50), pct_ms(&lat_heavy, 99), pct_ms(&lat_heavy, 100));
    printf("jain(light) %.4f  errors connect %llu io %llu eof %llu socket %llu  %.2f s\n",
           jain, (unsigned long long)err_connect, (unsigned long long)err_io,
           (unsigned long long)err_eof, (unsigned long long)err_socket, secs);
    printf("RESULT mode=starve secs=%.3f served=%llu light_served=%llu "
           "heavy_served=%llu light_p50_ms=%.3f light_p99_ms=%.3f "
           "light_max_ms=%.3f heavy_p50_ms=%.3f heavy_p99_ms=%.3f "
           "heavy_max_ms=%.3f jain_light=%.4f light_unfinished=%llu "
           "heavy_unfinished=%llu errors=%llu\n",
           secs, (unsigned long long)completed, (unsigned long long)light_total,
           (unsigned long long)heavy_total, pct_ms(&lat_light, 50),
           pct_ms(&lat_light, 99), pct_ms(&lat_light, 100),
           pct_ms(&lat_heavy, 50), pct_ms(&lat_heavy, 99),
           pct_ms(&lat_heavy, 100), jain, (unsigned long long)unfinished_light,
           (unsigned long long)unfinished_heavy,
           (unsigned long long)(err_connect + err_io + err_eof + err_socket));
  } else if (mode == M_THROUGHPUT) {
    double mbs = (double)bytes_measured / secs / 1e6;
    printf("throughput: %llu messages of %zu bytes in %.2f s: %.1f MB/s "
           "(errors connect %llu io %llu eof %llu)\n",
           (unsigned long long)completed_measured, msg_size, secs, mbs,
           (unsigned long long)err_connect, (unsigned long long)err_io,
           (unsigned long long)err_eof);
    printf("RESULT mode=throughput secs=%.3f mbps=%.2f msgs=%llu total=%llu "
           "errors=%llu\n",
           secs, mbs, (unsigned long long)completed_measured,
           (unsigned long long)completed,
           (unsigned long long)(err_connect + err_io + err_eof + err_socket));
  } else {
    double cps = (double)completed_measured / secs;
    printf("rate: %llu connections in %.2f s: %.0f conn/s "
           "(errors connect %llu io %llu eof %llu socket %llu)\n",
           (unsigned long long)completed_measured, secs, cps,
           (unsigned long long)err_connect, (unsigned long long)err_io,
           (unsigned long long)err_eof, (unsigned long long)err_socket);
    printf("RESULT mode=rate secs=%.3f cps=%.1f conns=%llu total=%llu errors=%llu\n",
           secs, cps, (unsigned long long)completed_measured,
           (unsigned long long)completed,
           (unsigned long long)(err_connect + err_io + err_eof + err_socket));
  }
  close(epfd);
  uvip_addrs_free(targets);
  uvip_addrs_free(sources);
  free(conns);
  free(served);
  free(msg);
  free(rbuf);
  free(lat_light.v);
  free(lat_heavy.v);
  return 0;
}
