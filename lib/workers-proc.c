/* Process workers, the acceptor's side: fork, hand-off over a libuv IPC
 * pipe (uv_write2() with the descriptor), reports of closed connections,
 * death and restart. The child's side is in workers-child.c.
 *
 * A worker's death is noticed by EOF on its pipe (and the process reaped on
 * SIGCHLD); every slot it held is given back at once from the per-VIP
 * counts the acceptor keeps, and hand-offs still queued for it are dropped
 * without being counted twice: each carries the incarnation (gen) of the
 * worker it was meant for.
 * SPDX-License-Identifier: MIT */
#include "workers-internal.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define READY_TIMEOUT_MS 10000

void uvip__wk_child_main(uvip__wk_t *wk, int fd) __attribute__((noreturn));

typedef struct {
  uv_write_t req;
  uv_tcp_t tcp; /* wraps the descriptor for uv_write2() */
  uvip__wk_t *wk;
  unsigned gen;
  uint32_t id;
  uvip__msg_t msg;
} handoff_t;

static void reap(uvip__wk_t *wk) {
  int st;
  if (wk->pid > 0 && !wk->reaped && waitpid(wk->pid, &st, WNOHANG) == wk->pid)
    wk->reaped = true;
}

static void proc_dead(uvip__wk_t *wk) {
  uvip_workers_t *ws = wk->ws;
  if (!wk->alive)
    return;
  if (wk->pipe) {
    wk->pipe->data = ws;
    uv_close((uv_handle_t *)wk->pipe, uvip__wk_handle_closed);
    ws->handles_open++;
    wk->pipe = NULL;
  }
  /* Hand-offs still queued are cancelled with the pipe; their slots are
   * among those given back now. */
  wk->gen++;
  wk->inflight = 0;
  reap(wk);
  uvip__wk_ended(wk);
}

void uvip__wk_proc_on_sigchld(uv_signal_t *h, int signum) {
  uvip_workers_t *ws = h->data;
  (void)signum;
  for (unsigned i = 0; i < ws->n; i++) {
    uvip__wk_t *wk = &ws->wk[i];
    reap(wk);
    /* Dead before its pipe reported EOF (a descendant may hold it). */
    if (wk->reaped && wk->alive)
      proc_dead(wk);
  }
}

static void on_report(uvip__wk_t *wk, const uvip__rep_t *r) {
  switch (r->kind) {
  case UVIP__REP_FAILED:
    wk->failed += r->a;
    /* fall through */
  case UVIP__REP_RELEASE:
    uvip__wk_release(wk, r->id, r->a);
    break;
  case UVIP__REP_STATS:
    wk->rp_active = r->a;
    wk->rp_handed = r->b;
    break;
  default:
    break;
  }
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  uvip__wk_t *wk = h->data;
  (void)hint;
  *buf = uv_buf_init(wk->ws->pbuf, sizeof(wk->ws->pbuf));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  uvip__wk_t *wk = s->data;
  const unsigned char *p = (const unsigned char *)buf->base;
  uvip__rep_t rep;
  if (n < 0) {
    proc_dead(wk);
    return;
  }
  while (n > 0) {
    size_t take = sizeof(rep) - wk->rlen;
    if ((size_t)n < take)
      take = (size_t)n;
    memcpy(wk->rbuf + wk->rlen, p, take);
    wk->rlen += take;
    p += take;
    n -= (ssize_t)take;
    if (wk->rlen == sizeof(rep)) {
      memcpy(&rep, wk->rbuf, sizeof(rep));
      wk->rlen = 0;
      on_report(wk, &rep);
      /* A report can end the workers (and free wk) only through
       * uvip__wk_maybe_finish(), which waits for this pipe's close. */
      if (!wk->alive)
        return;
    }
  }
}

/* Blocking: the child answers READY or ERROR right after it starts. */
static int wait_ready(int fd) {
  uvip__rep_t rep;
  size_t got = 0;
  while (got < sizeof(rep)) {
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    int r = poll(&pfd, 1, READY_TIMEOUT_MS);
    if (r < 0 && errno == EINTR)
      continue;
    if (r == 0)
      return UV_ETIMEDOUT;
    ssize_t k = read(fd, (char *)&rep + got, sizeof(rep) - got);
    if (k < 0 && errno == EINTR)
      continue;
    if (k <= 0)
      return k == 0 ? UV_EPIPE : -errno;
    got += (size_t)k;
  }
  if (rep.kind == UVIP__REP_ERROR)
    return rep.a ? -(int)rep.a : UV_EIO;
  return rep.kind == UVIP__REP_READY ? 0 : UV_EPROTO;
}

int uvip__wk_proc_start(uvip__wk_t *wk, char *errbuf, size_t errlen) {
  uvip_workers_t *ws = wk->ws;
  int sv[2], r;
  pid_t pid;
  struct sigaction sa;

  /* A worker that dies makes writes to its pipe fail with EPIPE; the
   * default SIGPIPE would kill the acceptor instead. */
  if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL)
    signal(SIGPIPE, SIG_IGN);
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    return -errno;
  /* Buffered output would be written twice, once by the child. */
  fflush(NULL);
  pid = fork();
  if (pid < 0) {
    r = -errno;
    close(sv[0]);
    close(sv[1]);
    return r;
  }
  if (pid == 0) {
    close(sv[0]);
    uvip__wk_child_main(wk, sv[1]);
  }
  close(sv[1]);
  wk->pid = pid;
  wk->reaped = false;
  if ((r = wait_ready(sv[0])) != 0)
    goto fail;
  if (!(wk->pipe = malloc(sizeof(*wk->pipe)))) {
    r = UV_ENOMEM;
    goto fail;
  }
  uv_pipe_init(ws->loop, wk->pipe, 1);
  wk->pipe->data = wk;
  if ((r = uv_pipe_open(wk->pipe, sv[0])) != 0 ||
      (r = uv_read_start((uv_stream_t *)wk->pipe, on_alloc, on_read)) != 0) {
    wk->pipe->data = ws;
    uv_close((uv_handle_t *)wk->pipe, uvip__wk_handle_closed);
    ws->handles_open++;
    wk->pipe = NULL;
    sv[0] = -1; /* the pipe handle owns it now */
    goto fail;
  }
  wk->gen++;
  wk->inflight = 0;
  wk->rlen = 0;
  wk->alive = wk->started = true;
  wk->exited = false;
  return 0;
fail:
  if (errbuf && errlen)
    snprintf(errbuf, errlen, "worker %u: %s", wk->index, uv_strerror(r));
  kill(pid, SIGKILL);
  while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
    ;
  wk->reaped = true;
  if (sv[0] >= 0)
    close(sv[0]);
  return r;
}

static void free_handoff(uv_handle_t *h) {
  free(UVIP_CONTAINER_OF(h, handoff_t, tcp));
}

static void on_written(uv_write_t *req, int status) {
  handoff_t *h = UVIP_CONTAINER_OF(req, handoff_t, req);
  uvip__wk_t *wk = h->wk;
  if (h->gen == wk->gen && wk->alive) {
    bool was_full = wk->inflight >= UVIP__WK_MAX_INFLIGHT;
    wk->inflight--;
    if (status < 0) {
      wk->failed++;
      uvip__wk_release(wk, h->id, 1);
    } else if (was_full) {
      uvip__sched_kick(wk->ws->server);
    }
  }
  /* The child has its own copy now (or never will): close ours. */
  uv_close((uv_handle_t *)&h->tcp, free_handoff);
}

static void on_unsent_closed(uv_handle_t *hd) {
  handoff_t *h = UVIP_CONTAINER_OF(hd, handoff_t, tcp);
  if (h->gen == h->wk->gen && h->wk->alive) {
    h->wk->failed++;
    uvip__wk_release(h->wk, h->id, 1);
  }
  free(h);
}

int uvip__wk_proc_dispatch(uvip__wk_t *wk, uvip_vip_t *vip, uint32_t id,
                           int fd) {
  handoff_t *h = malloc(sizeof(*h));
  uv_buf_t buf;
  int r;
  if (!h)
    return UV_ENOMEM;
  h->wk = wk;
  h->gen = wk->gen;
  h->id = id;
  memset(&h->msg, 0, sizeof(h->msg));
  h->msg.kind = UVIP__MSG_CONN;
  h->msg.id = id;
  memcpy(&h->msg.addr, &vip->addr, uvip__sa_len(&vip->addr.sa));
  uv_tcp_init(wk->ws->loop, &h->tcp);
  if ((r = uv_tcp_open(&h->tcp, fd)) != 0) {
    /* The descriptor is not the handle's: the caller closes it. */
    uv_close((uv_handle_t *)&h->tcp, free_handoff);
    return r;
  }
  buf = uv_buf_init((char *)&h->msg, sizeof(h->msg));
  if (uv_write2(&h->req, (uv_stream_t *)wk->pipe, &buf, 1,
                (uv_stream_t *)&h->tcp, on_written) != 0) {
    /* The handle owns the descriptor now; its slot is given back from the
     * close callback, after the scheduler has counted it. */
    uv_close((uv_handle_t *)&h->tcp, on_unsent_closed);
    return 0;
  }
  wk->inflight++;
  return 0;
}

typedef struct {
  uv_write_t req;
  uvip__msg_t msg;
} order_t;

static void free_order(uv_write_t *req, int status) {
  (void)status;
  free(UVIP_CONTAINER_OF(req, order_t, req));
}

int uvip__wk_proc_order(uvip__wk_t *wk, uint32_t kind) {
  order_t *o = calloc(1, sizeof(*o));
  uv_buf_t buf;
  int r = UV_ENOMEM;
  if (o) {
    o->msg.kind = kind;
    buf = uv_buf_init((char *)&o->msg, sizeof(o->msg));
    if ((r = uv_write(&o->req, (uv_stream_t *)wk->pipe, &buf, 1,
                      free_order)) == 0)
      return 0;
    free(o);
  }
  /* Cannot ask it to stop: stop it. Its pipe then reports EOF. A worker
   * that cannot be asked to close its connections keeps running: the
   * caller hears of it. */
  if (kind == UVIP__MSG_STOP)
    kill(wk->pid, SIGKILL);
  return r;
}

/* At the end: the child closed its pipe as its last act, so it is
 * exiting; give it a moment to flush its output, then insist. */
void uvip__wk_proc_reap(uvip__wk_t *wk) {
  for (int i = 0; i < 200 && !wk->reaped; i++) {
    reap(wk);
    if (!wk->reaped)
      usleep(5000);
  }
  if (!wk->reaped && wk->pid > 0) {
    kill(wk->pid, SIGKILL);
    while (waitpid(wk->pid, NULL, 0) < 0 && errno == EINTR)
      ;
    wk->reaped = true;
  }
}

/* Synchronous, for a start that failed half way. */
void uvip__wk_proc_kill(uvip__wk_t *wk) {
  kill(wk->pid, SIGKILL);
  while (waitpid(wk->pid, NULL, 0) < 0 && errno == EINTR)
    ;
  wk->reaped = true;
  proc_dead(wk);
}
