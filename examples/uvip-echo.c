/* uvip-echo: a TCP echo server over a pool of VIPs.
 *
 *   uvip-echo [--listen SPEC]... [--port P] [--max-conns N]
 *             [--max-conns-per-vip N] [--accept-budget N] [--backlog N]
 *             [--shutdown-timeout MS] [--all-or-nothing] [--provision IFACE]
 *             [--workers N] [--worker-mode thread|process]
 *             [--balance exact|round-robin|reuseport]
 *             [--max-conns-per-worker N]
 *
 * An idle connection costs only the library's uvip_conn_t: reads land in
 * one buffer per loop thread and are written straight back with
 * uv_try_write; only bytes the socket cannot take at once are copied into
 * a write request.
 * SPDX-License-Identifier: MIT */
#include <getopt.h>
#include <stdio.h>
#include <sys/resource.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "loopgap.h"
#include "upgrade.h"

#define DEFAULT_SPEC "127.0.0.1-127.0.0.16"
#define READ_BUF 65536

typedef struct {
  uv_write_t req;
  uvip_conn_t *conn;
  char data[];
} pending_write_t;

static uv_loop_t *loop;
static uvip_server_t *server;
static uv_timer_t shutdown_timer;
static uint64_t shutdown_ms = 5000;
/* Thread workers each run a loop of their own. */
static _Thread_local char read_buf[READ_BUF];
static uvip_workers_t *workers; /* --workers */
static uv_signal_t usr1;        /* --workers: SIGUSR1 prints their counts */
static uint64_t drain_waited_ms;
static uvip_provision_t *prov; /* --provision: the addresses we added */
static uvip_workers_options_t wcfg; /* --workers: as given */
static unsigned workers_reported;   /* workers that reported their start */
static int stopping;                /* the workers are being closed */
static int exit_status;

/* Runs at any exit, including exit() on a second signal, so that the
 * addresses this run added never outlive it. */
static void unprovision(void) {
  char err[256] = "";
  size_t added = 0;
  if (!prov)
    return;
  for (size_t i = 0; i < uvip_provision_count(prov); i++)
    added += uvip_provision_state(prov, i) == UVIP_PROVISION_ADDED;
  int r = uvip_provision_release(prov, err, sizeof(err));
  if (r != 0)
    fprintf(stderr, "%s: cannot remove addresses: %s\n", ex_prog, err);
  else if (added > 0)
    printf("%s: removed the %zu addresses it added\n", ex_prog, added);
  uvip_provision_free(prov);
  prov = NULL;
}

/* Adds the missing addresses of the pool to ifname. */
static void provision(const char *ifname, const uvip_addrs_t *addrs) {
  char err[256] = "";
  size_t added = 0;
  int r = uvip_provision_new(ifname, addrs, NULL, &prov);
  if (r != 0) {
    fprintf(stderr, "%s: --provision %s: %s\n", ex_prog, ifname,
            uv_strerror(r));
    exit(1);
  }
  if ((r = uvip_provision_apply(prov, err, sizeof(err))) != 0) {
    fprintf(stderr, "%s: cannot provision: %s\n", ex_prog, err);
    exit(1);
  }
  atexit(unprovision);
  for (size_t i = 0; i < uvip_provision_count(prov); i++)
    added += uvip_provision_state(prov, i) == UVIP_PROVISION_ADDED;
  printf("%s: added %zu addresses to %s (%zu were there already)\n", ex_prog,
         added, ifname, uvip_provision_count(prov) - added);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  (void)h;
  (void)hint;
  /* Each read is consumed before the next alloc on this thread. */
  *buf = uv_buf_init(read_buf, sizeof(read_buf));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

static void on_written(uv_write_t *req, int status) {
  pending_write_t *w = (pending_write_t *)req;
  uvip_conn_t *c = w->conn;
  free(w);
  if (status < 0) {
    if (status != UV_ECANCELED)
      uvip_conn_close(c, NULL);
    return;
  }
  if (!uv_is_closing((uv_handle_t *)uvip_conn_tcp(c)))
    uv_read_start(uvip_conn_stream(c), on_alloc, on_read);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  uvip_conn_t *c = uvip_conn_from_tcp((uv_tcp_t *)s);
  if (n < 0) {
    uvip_conn_close(c, NULL);
    return;
  }
  if (n == 0)
    return;
  uv_buf_t out = uv_buf_init(buf->base, (unsigned)n);
  int w = uv_try_write(s, &out, 1);
  if (w == n)
    return;
  if (w < 0 && w != UV_EAGAIN) {
    uvip_conn_close(c, NULL);
    return;
  }
  if (w < 0)
    w = 0;
  /* The peer reads slower than it writes: keep the rest and stop reading
   * until it is gone, so memory stays bounded per connection. */
  size_t rest = (size_t)n - (size_t)w;
  pending_write_t *pw = malloc(sizeof(*pw) + rest);
  if (!pw) {
    uvip_conn_close(c, NULL);
    return;
  }
  pw->conn = c;
  memcpy(pw->data, buf->base + w, rest);
  out = uv_buf_init(pw->data, (unsigned)rest);
  uv_read_stop(s);
  if (uv_write(&pw->req, s, &out, 1, on_written) != 0) {
    free(pw);
    uvip_conn_close(c, NULL);
  }
}

static void on_connection(uvip_server_t *srv, uvip_conn_t *c) {
  (void)srv;
  if (uv_read_start(uvip_conn_stream(c), on_alloc, on_read) != 0)
    uvip_conn_close(c, NULL);
}

static void on_server_closed(uvip_server_t *srv) {
  (void)srv;
  server = NULL;
  ex_upgrade_close();
  uv_close((uv_handle_t *)&shutdown_timer, NULL);
  if (uv_is_active((uv_handle_t *)&usr1))
    uv_close((uv_handle_t *)&usr1, NULL);
  ex_signals_close();
}

static void on_shutdown_timeout(uv_timer_t *t) {
  (void)t;
  uvip_vip_stats_t st;
  uvip_server_stats(server, &st);
  fprintf(stderr, "%s: closing %llu connections still open\n", ex_prog,
          (unsigned long long)st.active);
  uvip_server_close_conns(server);
}

static void print_workers(uvip_workers_t *w, int final) {
  for (unsigned i = 0; i < uvip_workers_count(w); i++) {
    uvip_worker_stats_t ws;
    uvip_workers_stats(w, i, &ws);
    if (final)
      printf("%s: worker %u: handed %llu, refused %llu, failed %llu, "
             "restarts %llu\n", ex_prog, i, (unsigned long long)ws.handed,
             (unsigned long long)ws.refused, (unsigned long long)ws.failed,
             (unsigned long long)ws.restarts);
    else
      printf("%s: worker %u: active %llu%s\n", ex_prog, i,
             (unsigned long long)ws.active, ws.alive ? "" : " (dead)");
  }
  fflush(stdout);
}

static void on_usr1(uv_signal_t *h, int signum) {
  (void)h;
  (void)signum;
  if (workers)
    print_workers(workers, 0);
}

static void on_workers_closed(uvip_workers_t *w) {
  print_workers(w, 1);
  workers = NULL;
  uvip_server_close(server, on_server_closed);
}

/* The connections the workers hold. Not the server's own count: with
 * reuseport the workers accept on listeners of their own and the server's
 * count stays 0 (their counts are then the ones they last reported). */
static uint64_t workers_active(void) {
  uint64_t n = 0;
  for (unsigned i = 0; i < uvip_workers_count(workers); i++) {
    uvip_worker_stats_t ws;
    if (uvip_workers_stats(workers, i, &ws) == 0)
      n += ws.active;
  }
  return n;
}

/* With workers the connections live elsewhere: poll the count until they
 * are gone or the grace period is over, then close the workers (which
 * closes what is left). */
static void on_drain_tick(uv_timer_t *t) {
  uint64_t active = workers_active();
  drain_waited_ms += 100;
  if (active > 0 && drain_waited_ms < shutdown_ms)
    return;
  if (active > 0)
    fprintf(stderr, "%s: closing %llu connections still open\n", ex_prog,
            (unsigned long long)active);
  else
    printf("%s: drained: no connection left\n", ex_prog);
  uv_timer_stop(t);
  uvip_workers_close(workers, on_workers_closed);
}

/* Stops accepting and lets the workers' connections drain (at most
 * shutdown_ms), then closes the workers and the server. */
static void workers_drain(void) {
  stopping = 1;
  print_workers(workers, 0);
  uvip_server_stop(server);
  uv_timer_start(&shutdown_timer, on_drain_tick, 0, 100);
  uv_unref((uv_handle_t *)&shutdown_timer);
}

static void on_signal(int signum) {
  uvip_vip_stats_t st;
  uvip_server_stats(server, &st);
  if (workers && stopping)
    return; /* a worker could not start, or an upgrade: closing already */
  if (workers) {
    fprintf(stderr, "%s: %s, stopped accepting; waiting up to %llu ms for "
            "%llu connections\n", ex_prog, signum == SIGINT ? "SIGINT" : "SIGTERM",
            (unsigned long long)shutdown_ms,
            (unsigned long long)workers_active());
    workers_drain();
    return;
  }
  fprintf(stderr,
          "%s: %s, stopped accepting; waiting up to %llu ms for %llu "
          "connections\n",
          ex_prog, signum == SIGINT ? "SIGINT" : "SIGTERM",
          (unsigned long long)shutdown_ms, (unsigned long long)st.active);
  uvip_server_close(server, on_server_closed);
  uv_timer_start(&shutdown_timer, on_shutdown_timeout, shutdown_ms, 0);
  uv_unref((uv_handle_t *)&shutdown_timer);
}

/* The listeners, and "serving N of M VIPs" (what whoever started us waits
 * for). With workers, once every one of them is ready: before that a
 * reuseport VIP has no listener yet. */
static void announce(void) {
  size_t ok = 0, n = uvip_server_vip_count(server);
  if (workers) {
    printf("%s: %u %s workers, balance %s\n", ex_prog, wcfg.nworkers,
           wcfg.mode == UVIP_WORKER_PROCESS ? "process" : "thread",
           wcfg.balance == UVIP_BALANCE_EXACT         ? "exact"
           : wcfg.balance == UVIP_BALANCE_ROUND_ROBIN ? "round-robin"
                                                       : "reuseport");
  }
  /* With reuseport the workers hold the listeners. */
  if (workers && wcfg.balance == UVIP_BALANCE_REUSEPORT) {
    printf("%s: every worker listens on the %zu VIPs with SO_REUSEPORT\n",
           ex_prog, n);
    ok = n = 0;
  }
  for (size_t i = 0; i < n; i++) {
    uvip_vip_t *v = uvip_server_vip(server, i);
    char a[UVIP_ADDRSTRLEN];
    uvip_addr_format(uvip_vip_addr(v), 1, a, sizeof(a));
    if (uvip_vip_state(v) == UVIP_VIP_LISTENING) {
      printf("%s: listening on %s%s\n", ex_prog, a,
             uvip_vip_adopted(v) ? " (adopted)" : "");
      ok++;
    } else {
      fprintf(stderr, "%s: cannot listen on %s: %s\n", ex_prog, a,
              uv_strerror(uvip_vip_error(v)));
    }
  }
  if (n)
    printf("%s: serving %zu of %zu VIPs\n", ex_prog, ok, n);
  fflush(stdout);
}

/* Upgrade hooks: an echo connection carries no state, so every idle one
 * moves with an empty blob. */
static int upgrade_decide(uvip_conn_t *c, void *blob, size_t *len) {
  (void)c;
  (void)blob;
  *len = 0;
  return UVIP_HANDOVER_MOVE;
}

static void upgrade_moved(uvip_server_t *srv, uvip_conn_t *c,
                          const void *blob, size_t len) {
  (void)blob;
  (void)len;
  on_connection(srv, c);
}

static void upgrade_retire(size_t kept) {
  if (kept != SIZE_MAX)
    printf("%s: old generation: draining %zu connections (up to %llu ms)\n",
           ex_prog, kept, (unsigned long long)shutdown_ms);
  fflush(stdout);
  if (workers) {
    /* The workers moved what was idle; the rest drain in them. */
    if (!stopping)
      workers_drain();
    return;
  }
  uvip_server_drain(server, shutdown_ms, NULL);
  uvip_server_close(server, on_server_closed);
}

static const char *pid_file, *handoff_path;
static char **args;

/* With reuseport the workers hold the listeners: this generation serves
 * until it stops. */
static int workers_serving(void) { return !stopping; }

/* The pid file, readiness to the generation that started us, and SIGUSR2,
 * before "serving": whoever waits for that line may read the one and
 * count on the others. With workers, once every one is ready: moved
 * connections go to them. With reuseport the workers hold the listeners:
 * nothing is passed on, the next generation's workers bind their own. */
static void setup_upgrade(void) {
  static const ex_upgrade_hooks_t hooks = {upgrade_decide, upgrade_moved,
                                           upgrade_retire, NULL};
  static const ex_upgrade_hooks_t rp_hooks = {upgrade_decide, upgrade_moved,
                                              upgrade_retire, workers_serving};
  int rp = workers && wcfg.balance == UVIP_BALANCE_REUSEPORT;
  int r;
  /* A hand-off passes listening sockets, and reuseport workers have none
   * to pass from here. */
  if ((r = ex_upgrade_setup(loop, server, args, pid_file,
                            rp ? NULL : handoff_path,
                            rp ? &rp_hooks : &hooks)) != 0)
    fprintf(stderr, "%s: upgrade: %s\n", ex_prog, uv_strerror(r));
}

/* Workers report their start asynchronously; one that cannot start (a
 * reuseport bind error, a failed fork) ends the run with status 1. */
static void on_worker_ready(uvip_workers_t *w, unsigned int i, int status) {
  if (status < 0) {
    fprintf(stderr, "%s: worker %u cannot start: %s\n", ex_prog, i,
            uv_strerror(status));
    exit_status = 1;
  }
  if (++workers_reported < uvip_workers_count(w) || stopping)
    return; /* more to come, or a signal is closing them already */
  if (exit_status == 0) {
    setup_upgrade();
    announce();
  } else {
    stopping = 1;
    uvip_workers_close(w, on_workers_closed);
  }
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: %s [options]\n"
          "  --listen SPEC            VIPs to serve (repeatable; default " DEFAULT_SPEC ")\n"
          "  --port P                 port for addresses without one (default 7000)\n"
          "  --max-conns N            connections open at once, all VIPs (0 = no cap)\n"
          "  --max-conns-per-vip N    connections open at once per VIP (0 = no cap)\n"
          "  --accept-budget N        accepts per VIP per loop turn (default 4)\n"
          "  --backlog N              listen backlog (default net.core.somaxconn)\n"
          "  --shutdown-timeout MS    grace period for open connections on exit (5000)\n"
          "  --pid-file PATH          write the pid once serving (rewritten by an upgrade)\n"
          "  --handoff-socket PATH    serve the listeners there to the next process; at\n"
          "                           start, take them from the process serving there\n"
          "  --upgrade-probation-ms N after the next generation says ready, keep the\n"
          "                           listeners (not accepting) for N ms and serve again\n"
          "                           if it exits meanwhile (1000, 0 = none)\n"
          "  --all-or-nothing         fail unless every VIP can be bound\n"
          "  --provision IFACE        add the missing --listen addresses to IFACE;\n"
          "                           remove those it added on exit\n"
          "  --workers N              hand connections to N workers (0 = none)\n"
          "  --worker-mode MODE       thread (default) or process\n"
          "  --balance MODE           exact (default), round-robin or reuseport\n"
          "  --max-conns-per-worker N connections per worker (0 = default: none for\n"
          "                           threads, the descriptor limit for processes)\n"
          "  --proxy-protocol         require a PROXY header (v1 or v2) first on every\n"
          "                           connection; it is not echoed\n"
          "With --workers, SIGUSR1 prints the connections each worker holds.\n"
          "SIGUSR2 upgrades: a new generation of this binary takes over the\n"
          "listeners and the idle connections (with workers, each worker hands over\n"
          "its own, to the new generation's workers); this one drains and exits.\n"
          "With --balance reuseport nothing is passed: the new generation's workers\n"
          "bind their own listeners and the old ones close theirs (set\n"
          "net.ipv4.tcp_migrate_req=1 so that what is queued on them moves);\n"
          "--handoff-socket is ignored there.\n",
          ex_prog);
}

int main(int argc, char **argv) {
  enum { O_LISTEN = 256, O_PORT, O_MAX, O_MAXVIP, O_BUDGET, O_BACKLOG,
         O_SHUTDOWN, O_ALL, O_HELP, O_PROVISION, O_WORKERS, O_WMODE,
         O_BALANCE, O_MAXWK, O_PIDFILE, O_HANDOFF, O_PROBATION, O_PROXY };
  static const struct option longopts[] = {
      {"listen", required_argument, NULL, O_LISTEN},
      {"port", required_argument, NULL, O_PORT},
      {"max-conns", required_argument, NULL, O_MAX},
      {"max-conns-per-vip", required_argument, NULL, O_MAXVIP},
      {"accept-budget", required_argument, NULL, O_BUDGET},
      {"backlog", required_argument, NULL, O_BACKLOG},
      {"shutdown-timeout", required_argument, NULL, O_SHUTDOWN},
      {"all-or-nothing", no_argument, NULL, O_ALL},
      {"help", no_argument, NULL, O_HELP},
      {"provision", required_argument, NULL, O_PROVISION},
      {"workers", required_argument, NULL, O_WORKERS},
      {"worker-mode", required_argument, NULL, O_WMODE},
      {"balance", required_argument, NULL, O_BALANCE},
      {"max-conns-per-worker", required_argument, NULL, O_MAXWK},
      {"pid-file", required_argument, NULL, O_PIDFILE},
      {"handoff-socket", required_argument, NULL, O_HANDOFF},
      {"upgrade-probation-ms", required_argument, NULL, O_PROBATION},
      {"proxy-protocol", no_argument, NULL, O_PROXY},
      {NULL, 0, NULL, 0}};
  uvip_server_options_t opts;
  uvip_workers_options_t wopts;
  const char *wopt_given = NULL;
  /* Static: a usage error exits with it still allocated, and a leak
   * checker must not count that. */
  static const char **specs;
  specs = calloc((size_t)argc + 1, sizeof(*specs));
  if (specs == NULL)
    return 1;
  size_t nspecs = 0;
  const char *prov_ifname = NULL;
  int port = 7000, opt, r;
  char err[512] = "";

  ex_init(argv[0]);
  uvip_server_options_init(&opts);
  opts.flags |= UVIP_NODELAY; /* set once on the listeners, inherited */
  uvip_workers_options_init(&wopts);
  wopts.nworkers = 0;
  opterr = 0;
  while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    switch (opt) {
    case O_LISTEN: specs[nspecs++] = optarg; break;
    case O_PORT: port = (int)ex_parse_num("--port", optarg, 1, 65535); break;
    case O_PIDFILE: pid_file = optarg; break;
    case O_HANDOFF: handoff_path = optarg; break;
    case O_PROBATION:
      ex_upgrade_set_probation(
          ex_parse_num("--upgrade-probation-ms", optarg, 0, 86400000));
      break;
    case O_PROXY: opts.flags |= UVIP_PROXY_PROTOCOL; break;
    case O_MAX: opts.max_conns = ex_parse_num("--max-conns", optarg, 0, UINT64_MAX / 2); break;
    case O_MAXVIP:
      opts.max_conns_per_vip = ex_parse_num("--max-conns-per-vip", optarg, 0, UINT64_MAX / 2);
      break;
    case O_BUDGET:
      opts.accept_budget = (unsigned)ex_parse_num("--accept-budget", optarg, 1, 1024);
      break;
    case O_BACKLOG: opts.backlog = (int)ex_parse_num("--backlog", optarg, 1, 1 << 30); break;
    case O_SHUTDOWN: shutdown_ms = ex_parse_num("--shutdown-timeout", optarg, 0, 86400000); break;
    case O_ALL: opts.flags |= UVIP_ALL_OR_NOTHING; break;
    case O_HELP: usage(stdout); return 0;
    case O_PROVISION: prov_ifname = optarg; break;
    case O_WORKERS:
      wopts.nworkers = (unsigned)ex_parse_num("--workers", optarg, 0, UVIP_WORKERS_MAX);
      break;
    case O_WMODE:
      wopt_given = "--worker-mode";
      if (strcmp(optarg, "thread") == 0)
        wopts.mode = UVIP_WORKER_THREAD;
      else if (strcmp(optarg, "process") == 0)
        wopts.mode = UVIP_WORKER_PROCESS;
      else
        ex_usage_error("--worker-mode: expected thread or process, got '%s'", optarg);
      break;
    case O_BALANCE:
      wopt_given = "--balance";
      if (strcmp(optarg, "exact") == 0)
        wopts.balance = UVIP_BALANCE_EXACT;
      else if (strcmp(optarg, "round-robin") == 0)
        wopts.balance = UVIP_BALANCE_ROUND_ROBIN;
      else if (strcmp(optarg, "reuseport") == 0)
        wopts.balance = UVIP_BALANCE_REUSEPORT;
      else
        ex_usage_error("--balance: expected exact, round-robin or reuseport, got '%s'",
                       optarg);
      break;
    case O_MAXWK:
      wopt_given = "--max-conns-per-worker";
      wopts.max_conns_per_worker =
          ex_parse_num("--max-conns-per-worker", optarg, 0, UINT64_MAX / 2);
      break;
    default:
      ex_bad_option(argc, argv);
    }
  }
  if (optind < argc)
    ex_usage_error("unexpected argument '%s'; see --help", argv[optind]);
  if (nspecs == 0)
    specs[nspecs++] = DEFAULT_SPEC;
  if (wopt_given && wopts.nworkers == 0)
    ex_usage_error("%s: needs --workers N", wopt_given);
  /* A descriptor handed to a worker would arrive before its header. */
  if ((opts.flags & UVIP_PROXY_PROTOCOL) && wopts.nworkers &&
      wopts.balance != UVIP_BALANCE_REUSEPORT)
    ex_usage_error("--proxy-protocol: with --workers, only --balance reuseport");

  uvip_addrs_t *addrs;
  if (uvip_addrs_new(&addrs) != 0)
    return 1;
  for (size_t i = 0; i < nspecs; i++)
    ex_parse_spec("--listen", addrs, specs[i], port);
  free(specs);
  if (prov_ifname)
    provision(prov_ifname, addrs);

  /* Started by systemd (or systemd-socket-activate): serve on the sockets
   * it bound, bind only the VIPs it did not pass. */
  if (getenv("LISTEN_FDS"))
    opts.flags |= UVIP_SOCKET_ACTIVATION;
  loop = uv_default_loop();
  ex_loopgap_start(loop);
  if ((r = uvip_server_new(loop, addrs, &opts, &server)) != 0) {
    fprintf(stderr, "%s: %s\n", ex_prog, uv_strerror(r));
    return 1;
  }
  uvip_addrs_free(addrs);
  if (wopts.nworkers) {
    struct rlimit rl;
    /* Hand-offs in flight hold descriptors of this process too. */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
      rl.rlim_cur = rl.rlim_max;
      setrlimit(RLIMIT_NOFILE, &rl);
    }
    wopts.ready_cb = on_worker_ready;
    wcfg = wopts;
    if ((r = uvip_workers_new(server, &wopts, &workers)) != 0) {
      fprintf(stderr, "%s: workers: %s\n", ex_prog, uv_strerror(r));
      return 1;
    }
    if (wopts.balance != UVIP_BALANCE_REUSEPORT && handoff_path &&
        ex_handoff_take(server, handoff_path) != 0)
      return 1;
    r = uvip_workers_listen(workers, on_connection, err, sizeof(err));
  } else {
    if (handoff_path && ex_handoff_take(server, handoff_path) != 0)
      return 1;
    r = uvip_server_listen(server, on_connection, err, sizeof(err));
  }
  if (r != 0) {
    fprintf(stderr, "%s: cannot listen: %s\n", ex_prog, err[0] ? err : uv_strerror(r));
    return 1;
  }

  /* Before the lines below: whoever waits for "serving" may signal at once. */
  uv_timer_init(loop, &shutdown_timer);
  ex_on_signal(loop, on_signal);
  if (workers) {
    uv_signal_init(loop, &usr1);
    uv_signal_start(&usr1, on_usr1, SIGUSR1);
    uv_unref((uv_handle_t *)&usr1);
  }

  /* With workers, once they are ready (on_worker_ready). */
  args = argv;
  if (!workers) {
    setup_upgrade();
    announce();
  }

  uv_run(loop, UV_RUN_DEFAULT);
  uv_run(loop, UV_RUN_DEFAULT); /* let the last close callbacks run */
  ex_loopgap_stop(loop);
  r = uv_loop_close(loop);
  if (r != 0)
    fprintf(stderr, "%s: loop not empty at exit: %s\n", ex_prog, uv_strerror(r));
  printf("%s: bye\n", ex_prog);
  return exit_status;
}
