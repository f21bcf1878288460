/* bench-baseline-server: the echo server a libuv user would write without
 * uvip, used as the peer of uvip-echo in tests/bench/run-accept-bench.sh.
 *
 *   bench-baseline-server [--listen SPEC]... [--port P] [--max-conns N]
 *                         [--backlog N]
 *
 * One uv_tcp_t per VIP: uv_tcp_bind() + uv_listen() with a connection_cb.
 *  - --max-conns 0 (the default): a plain libuv echo server, every
 *    connection is uv_accept()ed in the connection_cb. This is the peer for
 *    the echo-throughput and accept-rate benchmarks.
 *  - --max-conns N: accept while fewer than N connections are open. At the
 *    cap the connection_cb returns without uv_accept(), so libuv keeps that
 *    one connection pending and stops watching the listener. When a
 *    connection closes, the pending listeners are served in array order
 *    (the order of --listen), one uv_accept() per free slot; uv_accept()
 *    makes libuv watch the listener again.
 *
 * libuv 1.44 (Debian 12) accepts in a loop until EAGAIN (or until the
 * connection_cb leaves a connection pending); that is the behaviour this
 * baseline gets.
 *
 * The echo path is the same as uvip-echo's (one shared read buffer,
 * uv_try_write, a copy only for what the socket does not take), so the
 * benchmarks compare the accept paths, not two echo implementations.
 *
 * On SIGINT/SIGTERM it prints per-listener counters to stderr and exits.
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>
#include <uvip.h>

#include "common.h"

#define DEFAULT_SPEC "127.0.0.1-127.0.0.16"
#define READ_BUF 65536

typedef struct {
  uv_tcp_t tcp; /* first */
  size_t index;
  int pending; /* libuv holds one accepted fd we have not uv_accept()ed */
  uint64_t accepted, deferred, errors;
  char name[UVIP_ADDRSTRLEN];
} listener_t;

typedef struct {
  uv_write_t req;
  uv_tcp_t *tcp;
  char data[];
} pending_write_t;

static uv_loop_t *loop;
static listener_t *listeners;
static size_t nlisteners;
static uint64_t max_conns, active, max_active;
static char read_buf[READ_BUF];
static uv_signal_t sig_int, sig_term;


static int somaxconn(void) {
  int v = 0;
  FILE *f = fopen("/proc/sys/net/core/somaxconn", "re");
  if (f) {
    if (fscanf(f, "%d", &v) != 1)
      v = 0;
    fclose(f);
  }
  return v > 0 ? v : 4096;
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  (void)h;
  (void)hint;
  *buf = uv_buf_init(read_buf, sizeof(read_buf));
}

static void serve_pending(void);

static void on_conn_closed(uv_handle_t *h) {
  free(h);
  active--;
  serve_pending();
}

static void conn_close(uv_tcp_t *t) {
  if (!uv_is_closing((uv_handle_t *)t))
    uv_close((uv_handle_t *)t, on_conn_closed);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

static void on_written(uv_write_t *req, int status) {
  pending_write_t *w = (pending_write_t *)req;
  uv_tcp_t *t = w->tcp;
  free(w);
  if (status < 0) {
    if (status != UV_ECANCELED)
      conn_close(t);
    return;
  }
  if (!uv_is_closing((uv_handle_t *)t))
    uv_read_start((uv_stream_t *)t, on_alloc, on_read);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  uv_tcp_t *t = (uv_tcp_t *)s;
  if (n < 0) {
    conn_close(t);
    return;
  }
  if (n == 0)
    return;
  uv_buf_t out = uv_buf_init(buf->base, (unsigned)n);
  int w = uv_try_write(s, &out, 1);
  if (w == n)
    return;
  if (w < 0 && w != UV_EAGAIN) {
    conn_close(t);
    return;
  }
  if (w < 0)
    w = 0;
  size_t rest = (size_t)n - (size_t)w;
  pending_write_t *pw = malloc(sizeof(*pw) + rest);
  if (!pw) {
    conn_close(t);
    return;
  }
  pw->tcp = t;
  memcpy(pw->data, buf->base + w, rest);
  out = uv_buf_init(pw->data, (unsigned)rest);
  uv_read_stop(s);
  if (uv_write(&pw->req, s, &out, 1, on_written) != 0) {
    free(pw);
    conn_close(t);
  }
}

static void free_handle(uv_handle_t *h) { free(h); }

/* Takes the connection libuv holds for this listener. */
static void do_accept(listener_t *l) {
  uv_tcp_t *c = malloc(sizeof(*c));
  if (!c) {
    l->errors++;
    return;
  }
  uv_tcp_init(loop, c);
  if (uv_accept((uv_stream_t *)&l->tcp, (uv_stream_t *)c) != 0) {
    l->errors++;
    uv_close((uv_handle_t *)c, free_handle);
    return;
  }
  active++;
  if (active > max_active)
    max_active = active;
  l->accepted++;
  uv_tcp_nodelay(c, 1);
  if (uv_read_start((uv_stream_t *)c, on_alloc, on_read) != 0)
    conn_close(c);
}

static void on_connection(uv_stream_t *server, int status) {
  listener_t *l = (listener_t *)server;
  if (status < 0) {
    l->errors++;
    return;
  }
  if (max_conns && active >= max_conns) {
    /* Leave it pending: libuv stops watching this listener until we call
     * uv_accept(). */
    l->pending = 1;
    l->deferred++;
    return;
  }
  do_accept(l);
}

/* A slot freed: serve the pending listeners in array order. */
static void serve_pending(void) {
  for (size_t i = 0; i < nlisteners; i++) {
    if (max_conns && active >= max_conns)
      return;
    if (listeners[i].pending) {
      listeners[i].pending = 0;
      do_accept(&listeners[i]);
    }
  }
}

static void on_signal(uv_signal_t *h, int signum) {
  uint64_t acc = 0;
  (void)h;
  for (size_t i = 0; i < nlisteners; i++) {
    listener_t *l = &listeners[i];
    acc += l->accepted;
    fprintf(stderr, "%s: %s accepted=%llu deferred=%llu errors=%llu\n", ex_prog,
            l->name, (unsigned long long)l->accepted,
            (unsigned long long)l->deferred, (unsigned long long)l->errors);
  }
  fprintf(stderr, "%s: %s, accepted=%llu active=%llu max_active=%llu, exiting\n",
          ex_prog, signum == SIGINT ? "SIGINT" : "SIGTERM",
          (unsigned long long)acc, (unsigned long long)active,
          (unsigned long long)max_active);
  fflush(stderr);
  exit(0);
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: %s [options]\n"
          "  --listen SPEC   VIPs (repeatable; default " DEFAULT_SPEC ")\n"
          "  --port P        port for addresses without one (default 7000)\n"
          "  --max-conns N   connections open at once (0 = no cap: plain libuv echo)\n"
          "  --backlog N     listen backlog (default net.core.somaxconn)\n",
          ex_prog);
}

int main(int argc, char **argv) {
  ex_init("bench-baseline-server");
  enum { O_LISTEN = 256, O_PORT, O_MAX, O_BACKLOG, O_HELP };
  static const struct option longopts[] = {
      {"listen", required_argument, NULL, O_LISTEN},
      {"port", required_argument, NULL, O_PORT},
      {"max-conns", required_argument, NULL, O_MAX},
      {"backlog", required_argument, NULL, O_BACKLOG},
      {"help", no_argument, NULL, O_HELP},
      {NULL, 0, NULL, 0}};
  const char **specs = calloc((size_t)argc + 1, sizeof(*specs));
  size_t nspecs = 0, ok = 0;
  int port = 7000, backlog = 0, opt, r;
  uvip_addrs_t *addrs;
  char err[256];

  if (!specs)
    return 1;
  opterr = 0;
  while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    switch (opt) {
    case O_LISTEN: specs[nspecs++] = optarg; break;
    case O_PORT: port = (int)ex_parse_num("--port", optarg, 1, 65535); break;
    case O_MAX: max_conns = ex_parse_num("--max-conns", optarg, 0, UINT64_MAX / 2); break;
    case O_BACKLOG: backlog = (int)ex_parse_num("--backlog", optarg, 1, 1 << 30); break;
    case O_HELP: usage(stdout); return 0;
    default: ex_usage_error("unknown option or missing value: '%s'", argv[optind - 1]);
    }
  }
  if (optind < argc)
    ex_usage_error("unexpected argument '%s'", argv[optind]);
  if (nspecs == 0)
    specs[nspecs++] = DEFAULT_SPEC;
  if (backlog == 0)
    backlog = somaxconn();

  if (uvip_addrs_new(&addrs) != 0)
    return 1;
  for (size_t i = 0; i < nspecs; i++) {
    err[0] = '\0';
    r = uvip_addrs_parse(addrs, specs[i], port, err, sizeof(err));
    if (r != 0)
      ex_usage_error("--listen: %s", err[0] ? err : uv_strerror(r));
  }
  free(specs);

  loop = uv_default_loop();
  nlisteners = uvip_addrs_count(addrs);
  listeners = calloc(nlisteners, sizeof(*listeners));
  if (!listeners)
    return 1;
  for (size_t i = 0; i < nlisteners; i++) {
    listener_t *l = &listeners[i];
    const struct sockaddr *sa = uvip_addrs_at(addrs, i);
    l->index = i;
    uvip_addr_format(sa, 1, l->name, sizeof(l->name));
    uv_tcp_init(loop, &l->tcp);
    if ((r = uv_tcp_bind(&l->tcp, sa, 0)) != 0 ||
        (r = uv_listen((uv_stream_t *)&l->tcp, backlog, on_connection)) != 0) {
      fprintf(stderr, "%s: cannot listen on %s: %s\n", ex_prog, l->name,
              uv_strerror(r));
      continue;
    }
    printf("%s: listening on %s\n", ex_prog, l->name);
    ok++;
  }
  uvip_addrs_free(addrs);
  printf("%s: serving %zu of %zu VIPs\n", ex_prog, ok, nlisteners);
  fflush(stdout);
  if (ok == 0)
    return 1;

  uv_signal_init(loop, &sig_int);
  uv_signal_init(loop, &sig_term);
  uv_signal_start(&sig_int, on_signal, SIGINT);
  uv_signal_start(&sig_term, on_signal, SIGTERM);
  uv_run(loop, UV_RUN_DEFAULT);
  return 0;
}
