/* The scale upgrade's client: opens CONNS connections to the NVIPS
 * addresses 127.0.0.1.. 127.0.0.NVIPS on PORT (round robin), checks that
 * each echoes 8 bytes, holds them idle, and on SIGUSR1 checks each once
 * more (after the server's upgrade: the new generation must answer on every
 * one). Each round prints one line:
 *
 *   round=N ok=N failed=N ms=N
 *
 * (failed: refused, reset, closed, wrong or no echo within the deadline;
 * ms: how long the round took). Exits after round 2, with status 0 when
 * nothing failed. Several run side by side, each under its own descriptor
 * limit.
 *
 *   hold-echo PORT NVIPS CONNS
 * SPDX-License-Identifier: MIT */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define DEADLINE_MS 60000
#define OPENING_AT_ONCE 256 /* connects in progress at a time */

typedef struct {
  uv_tcp_t tcp;
  uv_connect_t creq;
  uv_write_t wreq;
  char buf[8];
  int got, round, dead;
} conn_t;

static uv_loop_t *loop;
static conn_t *conns;
static int port, nvips, nconns, opened, in_progress, done_round, failed;
static int round_no;
static uint64_t round_start;
static uv_timer_t deadline;
static uv_signal_t usr1;
static const char msg[8] = "pingpong";


static void finish_one(conn_t *c, int ok) {
  if (c->round == round_no)
    return;
  c->round = round_no;
  if (!ok) {
    failed++;
    if (!c->dead) {
      c->dead = 1;
      uv_close((uv_handle_t *)&c->tcp, NULL);
    }
  }
  if (++done_round == nconns) {
    printf("round=%d ok=%d failed=%d ms=%llu\n", round_no, nconns - failed,
           failed, (unsigned long long)(uv_now(loop) - round_start));
    fflush(stdout);
    uv_timer_stop(&deadline);
    if (round_no == 2) {
      uv_close((uv_handle_t *)&deadline, NULL);
      uv_close((uv_handle_t *)&usr1, NULL);
      for (int i = 0; i < nconns; i++)
        if (!conns[i].dead) {
          conns[i].dead = 1;
          uv_close((uv_handle_t *)&conns[i].tcp, NULL);
        }
    }
  }
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  conn_t *c = h->data;
  (void)hint;
  *b = uv_buf_init(c->buf + c->got, (unsigned)(sizeof(c->buf) - c->got));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  conn_t *c = s->data;
  (void)b;
  if (n < 0) {
    uv_read_stop(s);
    finish_one(c, 0);
    return;
  }
  c->got += (int)n;
  if (c->got < (int)sizeof(c->buf))
    return;
  uv_read_stop(s);
  finish_one(c, memcmp(c->buf, msg, sizeof(msg)) == 0);
}

static void on_written(uv_write_t *w, int status) {
  if (status < 0)
    finish_one(w->data, 0);
}

static void ping(conn_t *c) {
  uv_buf_t b = uv_buf_init((char *)msg, sizeof(msg));
  c->got = 0;
  c->wreq.data = c;
  if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_written) != 0 ||
      uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0)
    finish_one(c, 0);
}

static void open_more(void);

static void on_connect(uv_connect_t *r, int status) {
  conn_t *c = r->data;
  in_progress--;
  if (status < 0)
    finish_one(c, 0);
  else
    ping(c);
  open_more();
}

static void open_more(void) {
  while (opened < nconns && in_progress < OPENING_AT_ONCE) {
    conn_t *c = &conns[opened];
    struct sockaddr_in sa;
    char ip[32];
    snprintf(ip, sizeof(ip), "127.0.0.%d", 1 + opened % nvips);
    uv_ip4_addr(ip, port, &sa);
    opened++;
    uv_tcp_init(loop, &c->tcp);
    c->tcp.data = c;
    c->creq.data = c;
    if (uv_tcp_connect(&c->creq, &c->tcp, (struct sockaddr *)&sa,
                       on_connect) != 0) {
      finish_one(c, 0);
      continue;
    }
    in_progress++;
  }
}

static void on_deadline(uv_timer_t *t) {
  (void)t;
  for (int i = 0; i < nconns; i++)
    if (conns[i].round != round_no)
      finish_one(&conns[i], 0);
}

static void start_round(void) {
  round_no++;
  done_round = failed = 0;
  round_start = uv_now(loop);
  uv_timer_start(&deadline, on_deadline, DEADLINE_MS, 0);
  /* Already failed ones count as failed again. */
  for (int i = 0; i < nconns && round_no > 1; i++)
    if (conns[i].dead)
      finish_one(&conns[i], 0);
    else
      ping(&conns[i]);
}

static void on_usr1(uv_signal_t *h, int signum) {
  (void)h;
  (void)signum;
  if (round_no == 1 && done_round == nconns)
    start_round();
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s PORT NVIPS CONNS\n", argv[0]);
    return 2;
  }
  port = atoi(argv[1]);
  nvips = atoi(argv[2]);
  nconns = atoi(argv[3]);
  if (port <= 0 || nvips <= 0 || nvips > 250 || nconns <= 0)
    return 2;
  signal(SIGPIPE, SIG_IGN);
  conns = calloc((size_t)nconns, sizeof(*conns));
  if (!conns)
    return 1;
  loop = uv_default_loop();
  uv_timer_init(loop, &deadline);
  uv_signal_init(loop, &usr1);
  uv_signal_start(&usr1, on_usr1, SIGUSR1);
  start_round();
  open_more();
  uv_run(loop, UV_RUN_DEFAULT);
  uv_loop_close(loop);
  free(conns);
  return failed ? 1 : 0;
}
