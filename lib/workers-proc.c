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
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define READY_TIMEOUT_MS 10000
/* After the SIGKILL, how often closing looks for children that SIGCHLD did
 * not report (an application that replaced the handler afterwards). */
#define REAP_POLL_MS 50

void uvip__wk_child_main(uvip__wk_t *wk, int fd) __attribute__((noreturn));

typedef struct {
  uv_write_t req;
  uv_tcp_t tcp; /* wraps the descriptor for uv_write2() */
  uvip__wk_t *wk;
  unsigned gen;
  uint32_t id;
  uvip__msg_t msg;
  unsigned char blob[]; /* MOVED: msg.blob_len bytes */
} handoff_t;

/* Never blocks; only our own pids (libuv's uv_spawn() and the application
 * reap theirs). ECHILD: someone reaped it with waitpid(-1); it is gone all
 * the same. */
static bool reap_pid(pid_t pid, int *status) {
  int st;
  pid_t r = waitpid(pid, &st, WNOHANG);
  if (r == pid && status)
    *status = st;
  return r == pid || (r < 0 && errno == ECHILD);
}

static void reap(uvip__wk_t *wk) {
  if (wk->pid > 0 && !wk->reaped && reap_pid(wk->pid, &wk->exit_status))
    wk->reaped = true;
}

/* An incarnation not yet reaped that is being replaced or abandoned. */
static void add_zombie(uvip_workers_t *ws, pid_t pid) {
  if (ws->nzombies == ws->cap_zombies) {
    size_t ncap = ws->cap_zombies ? ws->cap_zombies * 2 : 8;
    pid_t *nz = realloc(ws->zombies, ncap * sizeof(*nz));
    if (!nz)
      return; /* left to init, which adopts it once we exit */
    ws->zombies = nz;
    ws->cap_zombies = ncap;
  }
  ws->zombies[ws->nzombies++] = pid;
}

static void rearm(uvip_workers_t *ws);

static void proc_dead(uvip__wk_t *wk) {
  uvip_workers_t *ws = wk->ws;
  bool was_starting = wk->starting;
  if (!wk->started || wk->exited)
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
  wk->starting = false;
  wk->ready_deadline = 0;
  reap(wk);
  uvip__wk_ended(wk);
  /* After: the application may restart it from ready_cb. */
  if (was_starting)
    uvip__wk_ready(wk, wk->start_err ? wk->start_err : UV_EPIPE);
}

static void reap_all(uvip_workers_t *ws) {
  for (unsigned i = 0; i < ws->n; i++) {
    uvip__wk_t *wk = &ws->wk[i];
    reap(wk);
    /* Dead before its pipe reported EOF (a descendant may hold it). */
    if (wk->reaped && wk->started && !wk->exited)
      proc_dead(wk);
  }
  for (size_t i = 0; i < ws->nzombies;)
    if (reap_pid(ws->zombies[i], NULL))
      ws->zombies[i] = ws->zombies[--ws->nzombies];
    else
      i++;
}

bool uvip__wk_proc_all_reaped(const uvip_workers_t *ws) {
  if (ws->nzombies)
    return false;
  for (unsigned i = 0; i < ws->n; i++)
    if (ws->wk[i].started && !ws->wk[i].reaped)
      return false;
  return true;
}

void uvip__wk_proc_on_sigchld(uv_signal_t *h, int signum) {
  uvip_workers_t *ws = h->data;
  (void)signum;
  reap_all(ws);
  uvip__wk_maybe_finish(ws);
}

static void kill_pid(pid_t pid) {
  /* An unreaped pid is not reused: this cannot hit another process. */
  if (pid > 0)
    kill(pid, SIGKILL);
}

/* Readiness deadlines, and when closing the grace period then a slow poll
 * for what SIGCHLD did not report. */
void uvip__wk_proc_on_timer(uv_timer_t *t) {
  uvip_workers_t *ws = t->data;
  uint64_t now = uv_now(ws->loop);
  for (unsigned i = 0; i < ws->n; i++) {
    uvip__wk_t *wk = &ws->wk[i];
    if (wk->starting && wk->ready_deadline && wk->ready_deadline <= now) {
      /* Its EOF (or SIGCHLD) reports the failure. */
      wk->ready_deadline = 0;
      wk->start_err = UV_ETIMEDOUT;
      kill_pid(wk->pid);
    }
  }
  if (ws->closing && !ws->killed && ws->kill_at <= now) {
    ws->killed = true;
    for (unsigned i = 0; i < ws->n; i++)
      if (ws->wk[i].started && !ws->wk[i].reaped)
        kill_pid(ws->wk[i].pid);
    for (size_t i = 0; i < ws->nzombies; i++)
      kill_pid(ws->zombies[i]);
  }
  reap_all(ws);
  rearm(ws);
  uvip__wk_maybe_finish(ws);
}

static void rearm(uvip_workers_t *ws) {
  uint64_t now, next = UINT64_MAX;
  if (!ws->timer)
    return;
  now = uv_now(ws->loop);
  for (unsigned i = 0; i < ws->n; i++)
    if (ws->wk[i].starting && ws->wk[i].ready_deadline &&
        ws->wk[i].ready_deadline < next)
      next = ws->wk[i].ready_deadline;
  if (ws->closing && !uvip__wk_proc_all_reaped(ws)) {
    uint64_t at = ws->killed ? now + REAP_POLL_MS : ws->kill_at;
    if (at < next)
      next = at;
  }
  if (next == UINT64_MAX)
    uv_timer_stop(ws->timer);
  else
    uv_timer_start(ws->timer, uvip__wk_proc_on_timer,
                   next > now ? next - now : 0, 0);
}

void uvip__wk_proc_closing(uvip_workers_t *ws) {
  if (!ws->timer)
    return;
  uv_update_time(ws->loop);
  ws->kill_at = uv_now(ws->loop) + ws->opts.grace_ms;
  /* Closing must finish even when nothing else keeps the loop running. */
  uv_ref((uv_handle_t *)ws->timer);
  uv_ref((uv_handle_t *)ws->sigchld);
  rearm(ws);
}

static void on_report(uvip__wk_t *wk, const uvip__rep_t *r) {
  switch (r->kind) {
  case UVIP__REP_READY:
    if (!wk->starting)
      break;
    wk->starting = false;
    wk->ready_deadline = 0;
    wk->alive = true;
    rearm(wk->ws);
    uvip__wk_ready(wk, 0);
    break;
  case UVIP__REP_ERROR:
    /* It exits next; its EOF reports the failure. */
    if (wk->starting)
      wk->start_err = r->a ? -(int)r->a : UV_EIO;
    break;
  case UVIP__REP_FAILED:
    uvip__wk_failed(wk, r->id, r->a);
    break;
  case UVIP__REP_RELEASE:
    uvip__wk_release(wk, r->id, r->a);
    break;
  case UVIP__REP_STATS:
    wk->rp_active = r->a;
    wk->rp_handed = r->b;
    break;
  case UVIP__REP_HANDOVER:
    uvip__wk_ho_reported(wk, r->a, r->b);
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
  unsigned gen = wk->gen;
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
      /* The application's ready_cb may have ended this incarnation (the
       * workers themselves are freed only after this pipe's close). */
      if (wk->gen != gen || wk->exited)
        return;
    }
  }
}

int uvip__wk_proc_start(uvip__wk_t *wk, char *errbuf, size_t errlen) {
  uvip_workers_t *ws = wk->ws;
  uv_pipe_t *pipe;
  int sv[2], r;
  pid_t pid;

  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    r = -errno;
    goto fail;
  }
  /* The parent's end is set up before the fork, so that nothing can fail
   * once a child exists (the child closes its copy of sv[0]). */
  if (!(pipe = malloc(sizeof(*pipe)))) {
    close(sv[0]);
    close(sv[1]);
    r = UV_ENOMEM;
    goto fail;
  }
  uv_pipe_init(ws->loop, pipe, 1);
  pipe->data = wk;
  if ((r = uv_pipe_open(pipe, sv[0])) != 0) {
    /* uv_pipe_open() does not own a descriptor it refused. */
    close(sv[0]);
    close(sv[1]);
    pipe->data = ws;
    uv_close((uv_handle_t *)pipe, uvip__wk_handle_closed);
    ws->handles_open++;
    goto fail;
  }
  if ((r = uv_read_start((uv_stream_t *)pipe, on_alloc, on_read)) != 0) {
    close(sv[1]);
    pipe->data = ws;
    uv_close((uv_handle_t *)pipe, uvip__wk_handle_closed);
    ws->handles_open++;
    goto fail;
  }
  /* Buffered output would be written twice, once by the child. */
  fflush(NULL);
  pid = fork();
  if (pid < 0) {
    r = -errno;
    close(sv[1]);
    pipe->data = ws;
    uv_close((uv_handle_t *)pipe, uvip__wk_handle_closed);
    ws->handles_open++;
    goto fail;
  }
  if (pid == 0)
    uvip__wk_child_main(wk, sv[1]);
  close(sv[1]);
  uv_update_time(ws->loop);
  wk->pipe = pipe;
  wk->pid = pid;
  wk->reaped = false;
  wk->exit_status = -1;
  wk->gen++;
  wk->inflight = 0;
  wk->rlen = 0;
  wk->start_err = 0;
  wk->ready_deadline = uv_now(ws->loop) + READY_TIMEOUT_MS;
  wk->started = wk->starting = true;
  wk->alive = wk->exited = false;
  rearm(ws);
  return 0;
fail:
  if (errbuf && errlen)
    snprintf(errbuf, errlen, "worker %u: %s", wk->index, uv_strerror(r));
  return r;
}

/* A new incarnation for a worker that exited: the old one, if not reaped
 * yet, is reaped later. */
void uvip__wk_proc_forget(uvip__wk_t *wk) {
  if (wk->started && !wk->reaped) {
    kill_pid(wk->pid);
    add_zombie(wk->ws, wk->pid);
    wk->reaped = true;
  }
}

/* Each hand-off's handle counts among the workers' handles: its
 * callbacks use the worker, which must outlive them. */
static void free_handoff(uv_handle_t *hd) {
  handoff_t *h = UVIP_CONTAINER_OF(hd, handoff_t, tcp);
  uvip_workers_t *ws = h->wk->ws;
  free(h);
  uvip__wk_closed(ws);
}

static void on_written(uv_write_t *req, int status) {
  handoff_t *h = UVIP_CONTAINER_OF(req, handoff_t, req);
  uvip__wk_t *wk = h->wk;
  if (h->gen == wk->gen && wk->alive) {
    bool was_full = wk->inflight >= UVIP__WK_MAX_INFLIGHT;
    wk->inflight--;
    if (status < 0)
      uvip__wk_failed(wk, h->id, 1);
    else if (was_full)
      uvip__sched_kick(wk->ws->server);
  }
  /* The child has its own copy now (or never will): close ours. */
  uv_close((uv_handle_t *)&h->tcp, free_handoff);
}

static void on_unsent_closed(uv_handle_t *hd) {
  handoff_t *h = UVIP_CONTAINER_OF(hd, handoff_t, tcp);
  if (h->gen == h->wk->gen && h->wk->alive)
    uvip__wk_failed(h->wk, h->id, 1);
  free_handoff(hd);
}

int uvip__wk_proc_dispatch(uvip__wk_t *wk, uvip_vip_t *vip, uint32_t id,
                           int fd, uvip_moved_cb moved, const void *blob,
                           size_t len) {
  handoff_t *h = malloc(sizeof(*h) + (moved ? len : 0));
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
  if (moved) {
    h->msg.kind = UVIP__MSG_MOVED;
    h->msg.fn = (uint64_t)(uintptr_t)moved;
    h->msg.blob_len = (uint32_t)len;
    memcpy(h->blob, blob, len);
  }
  uv_tcp_init(wk->ws->loop, &h->tcp);
  wk->ws->handles_open++;
  if ((r = uv_tcp_open(&h->tcp, fd)) != 0) {
    /* The descriptor is not the handle's: the caller closes it. */
    uv_close((uv_handle_t *)&h->tcp, free_handoff);
    return r;
  }
  /* The message and its blob are contiguous: one buffer. */
  buf = uv_buf_init((char *)&h->msg, (unsigned)(sizeof(h->msg) + h->msg.blob_len));
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

/* The order to hand over: a pipe handle wraps the worker's copy of the
 * channel for uv_write2(), and closes it once the child has its own. */
typedef struct {
  uv_write_t req;
  uv_pipe_t pipe;
  uvip__wk_t *wk;
  unsigned gen;
  uvip__msg_t msg;
} ho_order_t;

static void free_ho_order(uv_handle_t *h) {
  ho_order_t *o = UVIP_CONTAINER_OF(h, ho_order_t, pipe);
  uvip_workers_t *ws = o->wk->ws;
  free(o);
  uvip__wk_closed(ws);
}

static void on_ho_order_written(uv_write_t *req, int status) {
  ho_order_t *o = UVIP_CONTAINER_OF(req, ho_order_t, req);
  /* Not delivered: the worker will not report its part (if it died, its
   * end has counted it already). */
  if (status < 0 && o->gen == o->wk->gen)
    uvip__wk_ho_reported(o->wk, 0, 0);
  uv_close((uv_handle_t *)&o->pipe, free_ho_order);
}

int uvip__wk_proc_handover(uvip__wk_t *wk, int chan,
                           uvip_handover_decide_cb decide) {
  uvip_workers_t *ws = wk->ws;
  ho_order_t *o;
  uv_buf_t buf;
  int copy, r;
  if (!wk->pipe)
    return UV_EPIPE;
  if ((copy = fcntl(chan, F_DUPFD_CLOEXEC, 3)) < 0)
    return -errno;
  if (!(o = calloc(1, sizeof(*o)))) {
    close(copy);
    return UV_ENOMEM;
  }
  o->wk = wk;
  o->gen = wk->gen;
  o->msg.kind = UVIP__MSG_HANDOVER;
  o->msg.fn = (uint64_t)(uintptr_t)decide;
  uv_pipe_init(ws->loop, &o->pipe, 0);
  ws->handles_open++;
  if ((r = uv_pipe_open(&o->pipe, copy)) != 0) {
    close(copy);
    uv_close((uv_handle_t *)&o->pipe, free_ho_order);
    return r;
  }
  buf = uv_buf_init((char *)&o->msg, sizeof(o->msg));
  if ((r = uv_write2(&o->req, (uv_stream_t *)wk->pipe, &buf, 1,
                     (uv_stream_t *)&o->pipe, on_ho_order_written)) != 0) {
    uv_close((uv_handle_t *)&o->pipe, free_ho_order);
    return r;
  }
  return 0;
}

/* Without waiting: SIGCHLD (or closing's poll) reaps it. */
void uvip__wk_proc_kill(uvip__wk_t *wk) {
  kill_pid(wk->pid);
  proc_dead(wk);
}
