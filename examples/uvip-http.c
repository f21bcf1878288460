/* uvip-http: an HTTP/1.1 server on a pool of VIPs.
 *
 *   uvip-http --listen 127.0.0.1-127.0.0.16 --port 8080
 *   curl http://127.0.0.1:8080/          small fixed body
 *   curl http://127.0.0.1:8080/metrics   Prometheus text
 *   curl http://127.0.0.1:8080/stats.json
 *   curl http://127.0.0.1:8080/whoami    the client's ADDR:PORT
 *   curl http://127.0.0.1:8080/health    200, or 503 once draining
 *
 * SPDX-License-Identifier: MIT */
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <uvip.h>

#include "common.h"
#include "http/http.h"
#include "loopgap.h"
#include "upgrade.h"

static http_server_t *g_http; /* without workers */
/* --admin-listen: /metrics and /stats.json there, not on the VIPs. */
static http_server_t *g_admin;
static uvip_tracker_t *g_tracker;
static char *g_census_prom, *g_census_json;

/* With workers. */
static uvip_server_t *g_server;
static uvip_workers_t *g_workers;
static http_shared_t *g_shared;
static http_server_config_t g_cfg;
static uv_timer_t g_publish, g_drain;
static uint64_t g_drain_deadline;
static unsigned int g_reported; /* workers that reported their start */
static int g_stopping, g_exit;
static uint64_t g_census_ms;
static const uvip_addrs_t *g_addrs;
static uint64_t g_health_grace_ms;
static uv_timer_t *g_grace;

static void usage(FILE *f) {
  fprintf(f,
          "usage: %s [options]\n"
          "  --listen SPEC            VIPs to serve (repeatable; default "
          "127.0.0.1)\n"
          "  --port P                 default port (default 8080)\n"
          "  --max-conns N            connections open at once (0 = no cap)\n"
          "  --max-conns-per-vip N    per VIP (0 = no cap)\n"
          "  --accept-budget N        accepts per listener per turn (1..1024)\n"
          "  --backlog N              listen backlog (0 = somaxconn)\n"
          "  --reuseport              SO_REUSEPORT on the listeners\n"
          "  --defer-accept SECS      TCP_DEFER_ACCEPT: accept once the request\n"
          "                           has arrived (default 1, 0 = off)\n"
          "  --workers N              serve on N worker loops (0 = none)\n"
          "  --worker-mode MODE       thread (default) or process\n"
          "  --balance MODE           exact (default), round-robin or "
          "reuseport\n"
          "  --max-header-bytes N     request line + headers (default 8192)\n"
          "  --max-requests N         per connection (default 10000, 0 = no "
          "limit)\n"
          "  --header-timeout-ms N    to receive a request's headers (10000)\n"
          "  --request-timeout-ms N   a request's first byte to its end (60000)\n"
          "  --max-body-bytes N       request body; over it: 413 (1048576, 0 = "
          "no limit)\n"
          "  --keepalive-timeout-ms N idle between requests (30000)\n"
          "  --shutdown-timeout-ms N  graceful stop before closing (5000)\n"
          "  --pid-file PATH          write the pid once ready (rewritten by an "
          "upgrade)\n"
          "  --handoff-socket PATH    serve the listeners to the next process there;\n"
          "                           at start, take them from the one serving there\n"
          "  --upgrade-probation-ms N after the next generation says ready, keep the\n"
          "                           listeners for N ms, serve again if it exits (1000)\n"
          "  --census-interval-ms N   socket census for /metrics (5000, 0 = "
          "off)\n"
          "  --stats-interval-ms N    /metrics and /stats.json per-VIP part and\n"
          "                           census rendered at most this often (1000)\n"
          "  --admin-listen SPEC      serve /metrics and /stats.json there only\n"
          "                           (not on the VIPs); default port: --port\n"
          "  --max-output-bytes N     per connection: kernel send buffer cap, and\n"
          "                           more unsent than this resets it (4194304,\n"
          "                           0 = no limit)\n"
          "  --proxy-protocol         require a PROXY header (v1 or v2) on every\n"
          "                           connection; /whoami shows its client\n"
          "  --health-grace-ms N      on SIGTERM/SIGINT, /health answers 503 for N ms\n"
          "                           while serving as usual, then the graceful\n"
          "                           stop (default 0; not with --workers)\n"
          "  --version, --help\n",
          ex_prog);
}

enum {
  O_LISTEN = 256,
  O_PORT,
  O_MAX_CONNS,
  O_MAX_PER_VIP,
  O_BUDGET,
  O_BACKLOG,
  O_REUSEPORT,
  O_DEFER_ACCEPT,
  O_WORKERS,
  O_WORKER_MODE,
  O_BALANCE,
  O_MAX_HDR,
  O_MAX_REQ,
  O_HDR_TIMEOUT,
  O_KA_TIMEOUT,
  O_SHUT_TIMEOUT,
  O_CENSUS,
  O_PIDFILE,
  O_HANDOFF,
  O_PROXY,
  O_HEALTH_GRACE,
  O_VERSION,
  O_HELP,
  O_REQ_TIMEOUT,
  O_MAX_BODY,
  O_STATS_INTERVAL,
  O_ADMIN,
  O_MAX_OUTPUT,
  O_PROBATION
};

static const struct option long_opts[] = {
    {"listen", required_argument, NULL, O_LISTEN},
    {"port", required_argument, NULL, O_PORT},
    {"max-conns", required_argument, NULL, O_MAX_CONNS},
    {"max-conns-per-vip", required_argument, NULL, O_MAX_PER_VIP},
    {"accept-budget", required_argument, NULL, O_BUDGET},
    {"backlog", required_argument, NULL, O_BACKLOG},
    {"reuseport", no_argument, NULL, O_REUSEPORT},
    {"defer-accept", required_argument, NULL, O_DEFER_ACCEPT},
    {"workers", required_argument, NULL, O_WORKERS},
    {"worker-mode", required_argument, NULL, O_WORKER_MODE},
    {"balance", required_argument, NULL, O_BALANCE},
    {"max-header-bytes", required_argument, NULL, O_MAX_HDR},
    {"max-requests", required_argument, NULL, O_MAX_REQ},
    {"header-timeout-ms", required_argument, NULL, O_HDR_TIMEOUT},
    {"keepalive-timeout-ms", required_argument, NULL, O_KA_TIMEOUT},
    {"shutdown-timeout-ms", required_argument, NULL, O_SHUT_TIMEOUT},
    {"census-interval-ms", required_argument, NULL, O_CENSUS},
    {"pid-file", required_argument, NULL, O_PIDFILE},
    {"handoff-socket", required_argument, NULL, O_HANDOFF},
    {"proxy-protocol", no_argument, NULL, O_PROXY},
    {"health-grace-ms", required_argument, NULL, O_HEALTH_GRACE},
    {"version", no_argument, NULL, O_VERSION},
    {"help", no_argument, NULL, O_HELP},
    {"request-timeout-ms", required_argument, NULL, O_REQ_TIMEOUT},
    {"max-body-bytes", required_argument, NULL, O_MAX_BODY},
    {"stats-interval-ms", required_argument, NULL, O_STATS_INTERVAL},
    {"admin-listen", required_argument, NULL, O_ADMIN},
    {"max-output-bytes", required_argument, NULL, O_MAX_OUTPUT},
    {"upgrade-probation-ms", required_argument, NULL, O_PROBATION},
    {NULL, 0, NULL, 0}};

static void raise_nofile(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    (void)setrlimit(RLIMIT_NOFILE, &rl);
  }
}

/* Renders a census in one format into a new string (NULL on failure). */
static char *render(const uvip_census_t *c, int format) {
  size_t len = 0;
  char *buf = NULL;
  int r = uvip_census_render(c, NULL, format, 64, NULL, &len);
  if (r == UV_ENOBUFS && (buf = malloc(len)) != NULL &&
      uvip_census_render(c, NULL, format, 64, buf, &len) != 0) {
    free(buf);
    buf = NULL;
  }
  return buf;
}

/* The census runs on the threadpool; only the rendered text is kept, and
 * /metrics appends it as it is, so a request never waits for a dump. */
static void on_census(uvip_tracker_t *t, const uvip_census_t *c, int status) {
  (void)t;
  free(g_census_prom);
  free(g_census_json);
  g_census_prom = status == 0 ? render(c, UVIP_RENDER_PROMETHEUS) : NULL;
  g_census_json = status == 0 ? render(c, UVIP_RENDER_JSON) : NULL;
  if (g_http) {
    http_server_ctx(g_http)->census_prom = g_census_prom;
    http_server_ctx(g_http)->census_json = g_census_json;
    http_ctx_drop_cache(http_server_ctx(g_http));
  }
  if (g_admin)
    http_ctx_drop_cache(http_server_ctx(g_admin));
  /* Workers read it from the shared mapping: put it there now rather
   * than at the next periodic publish. */
  if (g_shared)
    http_shared_publish_server(g_shared, g_server, g_census_prom,
                               g_census_json);
  /* Said once, for whoever waits for /metrics to carry the census (the
   * tests do, instead of polling). */
  static int announced;
  if (status == 0 && !announced) {
    announced = 1;
    printf("%s: census: first sample\n", ex_prog);
    fflush(stdout);
  }
}

/* Workers: each gets an HTTP layer of its own on its own loop. */
static void worker_init(uv_loop_t *loop, unsigned int index, void *arg) {
  http_server_t *hs;
  int r = http_server_new(loop, NULL, g_shared, index, &g_cfg, &hs);
  (void)arg;
  if (r != 0) {
    fprintf(stderr, "%s: worker %u: %s\n", ex_prog, index, uv_strerror(r));
    abort();
  }
}

static void worker_exit(uv_loop_t *loop, unsigned int index, void *arg) {
  (void)loop;
  (void)index;
  (void)arg;
  http_server_exit(http_server_current());
}

/* The acceptor copies what workers may not read themselves. */
static void on_publish(uv_timer_t *t) {
  (void)t;
  http_shared_publish_server(g_shared, g_server, g_census_prom,
                             g_census_json);
}

static void on_server_closed(uvip_server_t *server) {
  (void)server;
  ex_signals_close();
  ex_upgrade_close();
}

static void on_workers_closed(uvip_workers_t *w) {
  (void)w;
  g_workers = NULL;
  uv_close((uv_handle_t *)&g_publish, NULL);
  uv_close((uv_handle_t *)&g_drain, NULL);
  uvip_server_close(g_server, on_server_closed);
}

/* A graceful stop with workers: the acceptor stops accepting and raises
 * the shared stop flag; each worker, on its next tick, closes its idle
 * connections and answers the rest with Connection: close. The acceptor
 * waits until their connections are gone or the shutdown timeout passes,
 * then closes the workers. */
static void on_drain(uv_timer_t *t) {
  uint64_t active = 0;
  for (unsigned int i = 0; i < uvip_workers_count(g_workers); i++) {
    uvip_worker_stats_t ws;
    if (uvip_workers_stats(g_workers, i, &ws) == 0)
      active += ws.active;
  }
  if (active && uv_now(t->loop) < g_drain_deadline)
    return;
  uv_timer_stop(t);
  uvip_workers_close(g_workers, on_workers_closed);
}

static int census_start(uv_loop_t *loop, const uvip_addrs_t *addrs,
                        uint64_t interval_ms) {
  uvip_tracker_options_t to;
  int r;
  uvip_tracker_options_init(&to);
  to.interval_ms = interval_ms;
  r = uvip_tracker_new(loop, addrs, &to, &g_tracker);
  if (r == 0)
    r = uvip_tracker_start(g_tracker, on_census, NULL);
  if (r != 0 && g_tracker) {
    uvip_tracker_close(g_tracker, NULL);
    g_tracker = NULL;
  }
  return r;
}

/* The census samples on the threadpool. With process workers it starts
 * once they are all forked: a fork while a threadpool thread holds a lock
 * (an allocator's, under ASan) leaves the child stuck on it. */
static void start_census(uv_loop_t *loop) {
  int r;
  if (g_census_ms && (r = census_start(loop, g_addrs, g_census_ms)) != 0)
    fprintf(stderr, "%s: census: %s (serving /metrics without it)\n",
            ex_prog, uv_strerror(r));
}

static void on_done(http_server_t *hs) {
  (void)hs;
  ex_signals_close();
  ex_upgrade_close();
}

static void on_admin_done(http_server_t *hs) { (void)hs; }

static void admin_shutdown(void) {
  if (g_admin)
    http_server_shutdown(g_admin, on_admin_done);
}

static void drop_census(void) {
  if (g_http) {
    http_server_ctx(g_http)->census_prom =
        http_server_ctx(g_http)->census_json = NULL;
    http_ctx_drop_cache(http_server_ctx(g_http));
  }
  if (g_admin)
    http_ctx_drop_cache(http_server_ctx(g_admin));
}

/* The admin listener: its own uvip server and HTTP layer on the main
 * loop, where /metrics and /stats.json describe the data plane (the VIPs
 * answer them with 404). SO_REUSEPORT so that an upgrade's next generation can bind
 * it while this one still serves. */
static int admin_start(uv_loop_t *loop, const char *spec, int port,
                       const http_server_config_t *cfg, char *err,
                       size_t errlen) {
  uvip_server_options_t ao;
  http_server_config_t acfg = *cfg;
  uvip_addrs_t *aaddrs = NULL;
  uvip_server_t *as = NULL;
  int r;
  if ((r = uvip_addrs_new(&aaddrs)) != 0)
    return r;
  ex_parse_spec("--admin-listen", aaddrs, spec, port);
  uvip_server_options_init(&ao);
  ao.flags |= UVIP_NODELAY | UVIP_REUSEPORT;
  ao.max_conns = 64;
  ao.conn_close_cb = http_on_lib_close;
  acfg.routes = HTTP_ROUTES_ADMIN;
  r = uvip_server_new(loop, aaddrs, &ao, &as);
  uvip_addrs_free(aaddrs);
  if (r == 0)
    r = http_server_new(loop, as, g_shared, 0, &acfg, &g_admin);
  if (r == 0 && !g_shared)
    http_server_ctx(g_admin)->stats_of = http_server_ctx(g_http);
  if (r == 0)
    r = uvip_server_listen(as, http_on_connection, err, errlen);
  if (r == 0)
    printf("%s: admin on %s\n", ex_prog, spec);
  return r;
}

/* Upgrade hooks: a keep-alive connection between requests moves as it is
 * (an HTTP/1.1 connection carries no state from one request to the next);
 * one in the middle of a request stays and finishes here, with Connection:
 * close. With workers, decide and moved run on the workers. */
static int upgrade_decide(uvip_conn_t *c, void *blob, size_t *len) {
  (void)blob;
  *len = 0;
  return http_conn_idle(c) ? UVIP_HANDOVER_MOVE : UVIP_HANDOVER_KEEP;
}

static void upgrade_moved(uvip_server_t *srv, uvip_conn_t *c,
                          const void *blob, size_t len) {
  (void)blob;
  (void)len;
  http_on_connection(srv, c);
}

static void stop(void);

static void upgrade_retire(size_t kept) {
  if (kept != SIZE_MAX)
    printf("%s: old generation: %zu connections finish here\n", ex_prog,
           kept);
  fflush(stdout);
  if (g_workers) {
    /* The workers moved what was idle; the rest finish in them. */
    stop();
    return;
  }
  if (g_tracker) {
    drop_census();
    uvip_tracker_close(g_tracker, NULL);
    g_tracker = NULL;
  }
  admin_shutdown();
  http_server_shutdown(g_http, on_done);
}

static void free_handle(uv_handle_t *h) { free(h); }

static void stop(void) {
  if (g_grace) {
    uv_close((uv_handle_t *)g_grace, free_handle);
    g_grace = NULL;
  }
  if (g_stopping)
    return;
  g_stopping = 1;
  if (g_tracker) {
    drop_census();
    uvip_tracker_close(g_tracker, NULL);
    g_tracker = NULL;
  }
  admin_shutdown();
  if (g_workers) {
    uvip_server_stop(g_server);
    http_shared_set_stopping(g_shared);
    g_drain_deadline = uv_now(g_drain.loop) + g_cfg.shutdown_timeout_ms;
    uv_timer_start(&g_drain, on_drain, 0, 50);
    return;
  }
  http_server_shutdown(g_http, on_done);
}

static void on_grace(uv_timer_t *t) {
  (void)t;
  fprintf(stderr, "%s: health grace over, stopping\n", ex_prog);
  stop();
}

static void on_signal(int signum) {
  /* First the balancer is told (/health 503) while everything is served
   * as usual; the graceful stop follows. A second signal stops at once. */
  if (g_health_grace_ms && g_http && !g_grace && !g_stopping &&
      !http_server_ctx(g_http)->health_down &&
      (g_grace = malloc(sizeof(*g_grace)))) {
    http_server_ctx(g_http)->health_down = 1;
    uv_timer_init(uvip_server_loop(g_server), g_grace);
    uv_timer_start(g_grace, on_grace, g_health_grace_ms, 0);
    fprintf(stderr, "%s: signal %d, /health answers 503 for %llu ms\n",
            ex_prog, signum, (unsigned long long)g_health_grace_ms);
    return;
  }
  fprintf(stderr, "%s: signal %d, stopping\n", ex_prog, signum);
  stop();
}

static char **g_argv;
static const char *g_pid_file;
static const char *g_handoff_path; /* --handoff-socket, with workers */
static int g_reuseport; /* workers with --balance reuseport */

static int workers_serving(void) { return !g_stopping; }

/* Workers report their start asynchronously: "ready" once all have (a
 * reuseport VIP has no listener before); one that cannot start (a
 * reuseport bind error, a failed fork) stops the server, exit status 1. */
static void on_worker_ready(uvip_workers_t *w, unsigned int i, int status) {
  if (status < 0) {
    fprintf(stderr, "%s: worker %u cannot start: %s\n", ex_prog, i,
            uv_strerror(status));
    g_exit = 1;
  }
  if (++g_reported < uvip_workers_count(w) || g_stopping)
    return;
  if (g_exit) {
    stop();
    return;
  }
  /* Readiness to the generation that started us once every worker takes
   * connections: the moved ones go to them. */
  if (g_argv) {
    static const ex_upgrade_hooks_t hooks = {upgrade_decide, upgrade_moved,
                                             upgrade_retire, NULL};
    /* With reuseport the workers hold the listeners: nothing is passed,
     * the next generation's workers bind their own. */
    static const ex_upgrade_hooks_t rp_hooks = {
        upgrade_decide, upgrade_moved, upgrade_retire, workers_serving};
    /* Reuseport workers hold the listeners: none to hand off from here. */
    int r = ex_upgrade_setup(uv_default_loop(), g_server, g_argv, g_pid_file,
                             g_reuseport ? NULL : g_handoff_path,
                             g_reuseport ? &rp_hooks : &hooks);
    if (r != 0)
      fprintf(stderr, "%s: upgrade: %s\n", ex_prog, uv_strerror(r));
  }
  printf("%s: ready\n", ex_prog);
  fflush(stdout);
  start_census(uv_default_loop());
}

int main(int argc, char **argv) {
  const char *specs[64];
  size_t nspecs = 0, i, n;
  int port = 8080, c, r;
  const char *wopt = NULL, *pid_file = NULL, *handoff_path = NULL;
  const char *admin_spec = NULL;
  uvip_workers_options_t wo;
  uint64_t census_ms = 5000;
  uvip_server_options_t opts;
  http_server_config_t cfg;
  uvip_addrs_t *addrs = NULL;
  uvip_server_t *server = NULL;
  uv_loop_t *loop = uv_default_loop();
  char err[256] = "";
  char addr[UVIP_ADDRSTRLEN];

  ex_init(argv[0]);
  uvip_server_options_init(&opts);
  /* HTTP clients speak first: accepting once the request is there saves a
   * wake-up and a failed read per connection. TCP_NODELAY is set once on
   * the listeners and inherited by every connection. */
  opts.defer_accept_secs = 1;
  opts.flags |= UVIP_NODELAY;
  uvip_workers_options_init(&wo);
  wo.nworkers = 0;
  memset(&cfg, 0, sizeof(cfg));
  cfg.limits.max_header_bytes = 8192;
  cfg.limits.max_requests = 10000;
  cfg.limits.max_pending_out = 64 * 1024;
  cfg.header_timeout_ms = 10000;
  cfg.request_timeout_ms = 60000;
  cfg.limits.max_body_bytes = 1024 * 1024;
  cfg.keepalive_timeout_ms = 30000;
  cfg.linger_ms = 2000;
  cfg.shutdown_timeout_ms = 5000;
  cfg.stats_interval_ms = 1000;
  cfg.max_output_bytes = 4 * 1024 * 1024;

  opterr = 0;
  while ((c = getopt_long(argc, argv, "", long_opts, NULL)) != -1) {
    switch (c) {
    case O_LISTEN:
      if (nspecs == sizeof(specs) / sizeof(specs[0]))
        ex_usage_error("--listen: at most %zu times", nspecs);
      specs[nspecs++] = optarg;
      break;
    case O_PORT:
      port = (int)ex_parse_num("--port", optarg, 1, 65535);
      break;
    case O_MAX_CONNS:
      opts.max_conns = ex_parse_num("--max-conns", optarg, 0, UINT64_MAX);
      break;
    case O_MAX_PER_VIP:
      opts.max_conns_per_vip =
          ex_parse_num("--max-conns-per-vip", optarg, 0, UINT64_MAX);
      break;
    case O_BUDGET:
      opts.accept_budget =
          (unsigned int)ex_parse_num("--accept-budget", optarg, 1, 1024);
      break;
    case O_BACKLOG:
      opts.backlog = (int)ex_parse_num("--backlog", optarg, 0, 1 << 20);
      break;
    case O_REUSEPORT:
      opts.flags |= UVIP_REUSEPORT;
      break;
    case O_DEFER_ACCEPT:
      opts.defer_accept_secs =
          (int)ex_parse_num("--defer-accept", optarg, 0, 3600);
      break;
    case O_WORKERS:
      wo.nworkers = (unsigned int)ex_parse_num("--workers", optarg, 0,
                                               UVIP_WORKERS_MAX);
      break;
    case O_WORKER_MODE:
      wopt = "--worker-mode";
      if (strcmp(optarg, "thread") == 0)
        wo.mode = UVIP_WORKER_THREAD;
      else if (strcmp(optarg, "process") == 0)
        wo.mode = UVIP_WORKER_PROCESS;
      else
        ex_usage_error("--worker-mode: expected 'thread' or 'process', "
                       "got '%s'",
                       optarg);
      break;
    case O_BALANCE:
      wopt = "--balance";
      if (strcmp(optarg, "exact") == 0)
        wo.balance = UVIP_BALANCE_EXACT;
      else if (strcmp(optarg, "round-robin") == 0)
        wo.balance = UVIP_BALANCE_ROUND_ROBIN;
      else if (strcmp(optarg, "reuseport") == 0)
        wo.balance = UVIP_BALANCE_REUSEPORT;
      else
        ex_usage_error("--balance: expected 'exact', 'round-robin' or "
                       "'reuseport', got '%s'",
                       optarg);
      break;
    case O_MAX_HDR:
      cfg.limits.max_header_bytes = (uint32_t)ex_parse_num(
          "--max-header-bytes", optarg, 256, 1 << 20);
      break;
    case O_MAX_REQ:
      cfg.limits.max_requests =
          (uint32_t)ex_parse_num("--max-requests", optarg, 0, UINT32_MAX);
      break;
    case O_HDR_TIMEOUT:
      cfg.header_timeout_ms =
          ex_parse_num("--header-timeout-ms", optarg, 1, 86400000);
      break;
    case O_REQ_TIMEOUT:
      cfg.request_timeout_ms =
          ex_parse_num("--request-timeout-ms", optarg, 1, 86400000);
      break;
    case O_MAX_BODY:
      cfg.limits.max_body_bytes =
          ex_parse_num("--max-body-bytes", optarg, 0, UINT64_MAX);
      break;
    case O_STATS_INTERVAL:
      cfg.stats_interval_ms =
          ex_parse_num("--stats-interval-ms", optarg, 1, 86400000);
      break;
    case O_ADMIN:
      admin_spec = optarg;
      break;
    case O_MAX_OUTPUT:
      cfg.max_output_bytes =
          ex_parse_num("--max-output-bytes", optarg, 0, UINT64_MAX);
      if (cfg.max_output_bytes && cfg.max_output_bytes < 4096)
        ex_usage_error("--max-output-bytes: expected 0 or at least 4096, "
                       "got '%s'",
                       optarg);
      break;
    case O_KA_TIMEOUT:
      cfg.keepalive_timeout_ms =
          ex_parse_num("--keepalive-timeout-ms", optarg, 1, 86400000);
      break;
    case O_SHUT_TIMEOUT:
      cfg.shutdown_timeout_ms =
          ex_parse_num("--shutdown-timeout-ms", optarg, 1, 86400000);
      break;
    case O_PIDFILE:
      pid_file = optarg;
      break;
    case O_HANDOFF:
      handoff_path = optarg;
      break;
    case O_PROBATION:
      ex_upgrade_set_probation(
          ex_parse_num("--upgrade-probation-ms", optarg, 0, 86400000));
      break;
    case O_PROXY:
      opts.flags |= UVIP_PROXY_PROTOCOL;
      break;
    case O_HEALTH_GRACE:
      g_health_grace_ms =
          ex_parse_num("--health-grace-ms", optarg, 0, 86400000);
      break;
    case O_CENSUS:
      census_ms = ex_parse_num("--census-interval-ms", optarg, 0, 86400000);
      if (census_ms > 0 && census_ms < 10)
        ex_usage_error("--census-interval-ms: expected 0 or at least 10, "
                       "got '%s'",
                       optarg);
      break;
    case O_VERSION:
      printf("uvip-http %s (libuv %s, llhttp %d.%d.%d)\n",
             uvip_version_string(), uv_version_string(), LLHTTP_VERSION_MAJOR,
             LLHTTP_VERSION_MINOR, LLHTTP_VERSION_PATCH);
      return 0;
    case O_HELP:
      usage(stdout);
      return 0;
    default:
      if (optopt)
        ex_usage_error("%s: missing or unexpected value", argv[optind - 1]);
      ex_usage_error("%s: unknown option", argv[optind - 1]);
    }
  }
  if (optind < argc)
    ex_usage_error("%s: unexpected argument", argv[optind]);
  if (wopt && wo.nworkers == 0)
    ex_usage_error("%s: needs --workers N", wopt);
  if (g_health_grace_ms && wo.nworkers)
    ex_usage_error("--health-grace-ms: not with --workers");
  /* The library reads the header before the application; a descriptor
   * handed to a worker would arrive without it. */
  if ((opts.flags & UVIP_PROXY_PROTOCOL) && wo.nworkers &&
      wo.balance != UVIP_BALANCE_REUSEPORT)
    ex_usage_error("--proxy-protocol: with --workers, only --balance "
                   "reuseport");

  if (uvip_addrs_new(&addrs) != 0) {
    fprintf(stderr, "%s: out of memory\n", ex_prog);
    return 1;
  }
  if (nspecs == 0)
    ex_parse_spec("--listen", addrs, "127.0.0.1", port);
  for (i = 0; i < nspecs; i++)
    ex_parse_spec("--listen", addrs, specs[i], port);

  raise_nofile();
  signal(SIGPIPE, SIG_IGN);
  opts.conn_close_cb = http_on_lib_close;
  /* Under systemd socket activation, serve on the sockets it bound. */
  if (getenv("LISTEN_FDS"))
    opts.flags |= UVIP_SOCKET_ACTIVATION;
  if (admin_spec)
    cfg.routes = HTTP_ROUTES_DATA;
  g_cfg = cfg;
  r = uvip_server_new(loop, addrs, &opts, &server);
  g_server = server;
  if (r == 0 && wo.nworkers == 0) {
    r = http_server_new(loop, server, NULL, 0, &cfg, &g_http);
    if (r == 0 && handoff_path)
      r = ex_handoff_take(server, handoff_path);
    if (r == 0)
      r = uvip_server_listen(server, http_on_connection, err, sizeof(err));
    if (r == 0 && admin_spec)
      r = admin_start(loop, admin_spec, port, &cfg, err, sizeof(err));
  } else if (r == 0) {
    wo.init_cb = worker_init;
    wo.exit_cb = worker_exit;
    wo.ready_cb = on_worker_ready;
    r = http_shared_new(uvip_addrs_count(addrs), wo.nworkers, &g_shared);
    if (r == 0)
      r = uvip_workers_new(server, &wo, &g_workers);
    if (r == 0 && handoff_path && wo.balance != UVIP_BALANCE_REUSEPORT)
      r = ex_handoff_take(server, handoff_path);
    if (r == 0)
      r = uvip_workers_listen(g_workers, http_on_connection, err,
                              sizeof(err));
    if (r == 0 && admin_spec)
      r = admin_start(loop, admin_spec, port, &cfg, err, sizeof(err));
    if (r == 0) {
      uv_timer_init(loop, &g_publish);
      uv_timer_init(loop, &g_drain);
      uv_timer_start(&g_publish, on_publish, 0, 250);
      printf("%s: %u %s workers\n", ex_prog, wo.nworkers,
             wo.mode == UVIP_WORKER_PROCESS ? "process" : "thread");
    }
  }
  if (r != 0) {
    fprintf(stderr, "%s: %s\n", ex_prog, err[0] ? err : uv_strerror(r));
    return 1;
  }

  n = uvip_server_vip_count(server);
  for (i = 0; i < n; i++) {
    uvip_vip_t *vip = uvip_server_vip(server, i);
    if (uvip_addr_format(uvip_vip_addr(vip), 1, addr, sizeof(addr)) != 0)
      continue;
    if (uvip_vip_state(vip) == UVIP_VIP_FAILED)
      fprintf(stderr, "%s: %s: %s\n", ex_prog, addr,
              uv_strerror(uvip_vip_error(vip)));
    else if (i < 16)
      printf("%s: listening on http://%s/%s\n", ex_prog, addr,
             uvip_vip_adopted(vip) ? " (adopted)" : "");
  }
  if (n > 16)
    printf("%s: ... %zu VIPs in all\n", ex_prog, n);
  /* Before "ready": whoever waits for it may signal at once (and read the
   * pid file). */
  ex_on_signal(loop, on_signal);
  if (!g_workers) {
    static const ex_upgrade_hooks_t hooks = {upgrade_decide, upgrade_moved,
                                             upgrade_retire, NULL};
    if ((r = ex_upgrade_setup(loop, server, argv, pid_file, handoff_path,
                              &hooks)) != 0)
      fprintf(stderr, "%s: upgrade: %s\n", ex_prog, uv_strerror(r));
    printf("%s: ready\n", ex_prog);
    fflush(stdout);
  } else {
    /* SIGUSR2 and readiness once the workers are ready. */
    g_argv = argv;
    g_pid_file = pid_file;
    g_handoff_path = handoff_path;
    g_reuseport = wo.balance == UVIP_BALANCE_REUSEPORT;
  }

  g_census_ms = census_ms;
  g_addrs = addrs;
  if (!g_workers)
    start_census(loop);

  ex_loopgap_start(loop);
  uv_run(loop, UV_RUN_DEFAULT);
  ex_loopgap_stop(loop);
  http_server_free(g_http);
  http_server_free(g_admin);
  http_shared_free(g_shared);
  free(g_census_prom);
  free(g_census_json);
  uvip_addrs_free(addrs);
  r = uv_loop_close(loop);
  if (r != 0)
    fprintf(stderr, "%s: loop close: %s\n", ex_prog, uv_strerror(r));
  return g_exit;
}
