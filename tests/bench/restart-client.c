/* The restart scenario's client: SHORT loops of connect, send 8 bytes, read
 * them back, close; LONG long-lived connections that send 8 bytes every
 * second and expect them back. Runs for SECONDS and counts every failed
 * exchange by kind (refused, reset, closed early, timed out) and every
 * long-lived connection lost. Speaks echo, or with --http a GET answered
 * with a body that ends in "\n" (nginx's return 200 "ok\n").
 *
 *   restart-client HOST PORT SHORT LONG SECONDS [--http]
 *
 * Prints one line: exchanges=N refused=N reset=N early=N timeout=N
 * long_lost=N (idle_closed=N) long_pings=N. A long-lived connection the
 * server closes between pings counts as lost, not as a failed exchange.
 * SPDX-License-Identifier: MIT */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define TIMEOUT_MS 3000

typedef struct conn_s {
  uv_tcp_t tcp;
  uv_connect_t creq;
  uv_write_t wreq;
  uv_timer_t timer; /* exchange deadline */
  int is_long, got, want, closing, dead, in_flight;
  char buf[512];
} conn_t;

static struct sockaddr_storage dst;
static int http;
static uint64_t exchanges, refused, reset, early, timedout, long_lost,
    long_pings, idle_closed;
static uv_loop_t *loop;
static int stopping;
static const char *ping_echo = "pingpong";
static const char *ping_http = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";

static void start_short(void);

static void on_closed(uv_handle_t *h) {
  conn_t *c = h->data;
  if (++c->dead == 2) {
    int again = !c->is_long && !stopping;
    free(c);
    if (again)
      start_short();
  }
}

static void finish(conn_t *c) {
  if (c->closing)
    return;
  c->closing = 1;
  uv_timer_stop(&c->timer);
  uv_close((uv_handle_t *)&c->tcp, on_closed);
  uv_close((uv_handle_t *)&c->timer, on_closed);
}

static void fail(conn_t *c, int status) {
  if (c->closing)
    return;
  if (status == UV_ECONNREFUSED)
    refused++;
  else if (status == UV_ECONNRESET || status == UV_EPIPE)
    reset++;
  else if (status == UV_ETIMEDOUT)
    timedout++;
  else
    early++;
  if (c->is_long)
    long_lost++;
  finish(c);
}

static void on_timeout(uv_timer_t *t) { fail(t->data, UV_ETIMEDOUT); }

static void send_ping(conn_t *c);

static void on_alloc(uv_handle_t *h, size_t n, uv_buf_t *b) {
  conn_t *c = h->data;
  (void)n;
  *b = uv_buf_init(c->buf + c->got, (unsigned)(sizeof(c->buf) - 1 - c->got));
}

static int complete(conn_t *c) {
  c->buf[c->got] = 0;
  if (!http)
    return c->got >= c->want;
  /* A whole response with its body: headers end, then "ok\n". */
  char *h = strstr(c->buf, "\r\n\r\n");
  return h && strchr(h + 4, '\n');
}

static void on_long_tick(uv_timer_t *t);

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  conn_t *c = s->data;
  (void)b;
  if (n < 0) {
    if (c->is_long && !c->in_flight && !c->closing) {
      /* Closed by the server between pings (an HTTP server may close an
       * idle keep-alive connection): no exchange failed, the connection
       * is lost all the same. */
      idle_closed++;
      long_lost++;
      finish(c);
      return;
    }
    fail(c, n == UV_EOF ? UV_EOF : (int)n);
    return;
  }
  if (!c->in_flight)
    return; /* unexpected bytes while idle: ignored */
  c->got += (int)n;
  if (!complete(c))
    return;
  uv_timer_stop(&c->timer);
  c->in_flight = 0;
  if (c->is_long) {
    long_pings++;
    if (!stopping)
      uv_timer_start(&c->timer, on_long_tick, 1000, 0);
    else
      finish(c);
    return;
  }
  exchanges++;
  finish(c);
}

static void on_written(uv_write_t *w, int status) {
  conn_t *c = w->data;
  if (status < 0)
    fail(c, status);
}

static void send_ping(conn_t *c) {
  const char *msg = http ? ping_http : ping_echo;
  uv_buf_t b = uv_buf_init((char *)msg, (unsigned)strlen(msg));
  c->got = 0;
  c->in_flight = 1;
  c->want = (int)strlen(msg);
  c->wreq.data = c;
  uv_timer_start(&c->timer, on_timeout, TIMEOUT_MS, 0);
  if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_written) != 0)
    fail(c, UV_EPIPE);
}

static void on_long_tick(uv_timer_t *t) {
  conn_t *c = t->data;
  if (stopping) {
    finish(c);
    return;
  }
  send_ping(c);
}

static void on_connect(uv_connect_t *r, int status) {
  conn_t *c = r->data;
  if (status < 0) {
    fail(c, status);
    return;
  }
  /* Read all along, so that a close between pings is seen when it
   * happens. */
  if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
    fail(c, UV_EPIPE);
    return;
  }
  send_ping(c);
}

static conn_t *start(int is_long) {
  conn_t *c = calloc(1, sizeof(*c));
  c->is_long = is_long;
  uv_tcp_init(loop, &c->tcp);
  uv_timer_init(loop, &c->timer);
  c->tcp.data = c->timer.data = c->creq.data = c;
  uv_timer_start(&c->timer, on_timeout, TIMEOUT_MS, 0);
  if (uv_tcp_connect(&c->creq, &c->tcp, (struct sockaddr *)&dst, on_connect))
    fail(c, UV_EINVAL);
  return c;
}

static void start_short(void) { start(0); }

static void on_stop(uv_timer_t *t) {
  stopping = 1;
  uv_close((uv_handle_t *)t, NULL);
}

int main(int argc, char **argv) {
  uv_timer_t stop;
  int nshort, nlong, secs;
  if (argc < 6) {
    fprintf(stderr, "usage: %s HOST PORT SHORT LONG SECONDS [--http]\n",
            argv[0]);
    return 2;
  }
  if (uv_ip4_addr(argv[1], atoi(argv[2]), (struct sockaddr_in *)&dst) != 0)
    return 2;
  nshort = atoi(argv[3]);
  nlong = atoi(argv[4]);
  secs = atoi(argv[5]);
  http = argc > 6 && !strcmp(argv[6], "--http");
  loop = uv_default_loop();
  for (int i = 0; i < nlong; i++)
    start(1);
  for (int i = 0; i < nshort; i++)
    start_short();
  uv_timer_init(loop, &stop);
  uv_timer_start(&stop, on_stop, (uint64_t)secs * 1000, 0);
  uv_run(loop, UV_RUN_DEFAULT);
  printf("exchanges=%llu refused=%llu reset=%llu early=%llu timeout=%llu "
         "long_lost=%llu (idle_closed=%llu) long_pings=%llu\n",
         (unsigned long long)exchanges, (unsigned long long)refused,
         (unsigned long long)reset, (unsigned long long)early,
         (unsigned long long)timedout, (unsigned long long)long_lost,
         (unsigned long long)idle_closed, (unsigned long long)long_pings);
  return 0;
}
