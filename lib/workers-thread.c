/* Thread workers: one thread and one uv_loop_t each. Descriptors go to a
 * worker through a mutex-protected queue and a uv_async_t; closes come back
 * to the acceptor the same way (ws->posts and ws->inbox).
 *
 * Every uv_async_send() is made while holding the lock that protects what
 * it announces: the receiver may close the async handle as soon as it has
 * seen the last message, and the sender must be done with the handle by
 * then.
 * SPDX-License-Identifier: MIT */
#include "workers-internal.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void free_handle(uv_handle_t *h) { free(h); }

static void post2(uvip_workers_t *ws, uint32_t kind, unsigned worker,
                  uvip_vip_t *vip, uint64_t a, uint64_t b) {
  uv_mutex_lock(&ws->lock);
  if (ws->nposts == ws->cap_posts) {
    size_t ncap = ws->cap_posts ? ws->cap_posts * 2 : 64;
    uvip__post_t *np = realloc(ws->posts, ncap * sizeof(*np));
    if (!np) {
      /* Out of memory: the slot stays taken (a smaller evil than losing
       * the message that the worker is gone). */
      uv_mutex_unlock(&ws->lock);
      return;
    }
    ws->posts = np;
    ws->cap_posts = ncap;
  }
  ws->posts[ws->nposts].kind = kind;
  ws->posts[ws->nposts].worker = worker;
  ws->posts[ws->nposts].vip = vip;
  ws->posts[ws->nposts].a = a;
  ws->posts[ws->nposts].b = b;
  ws->nposts++;
  uv_async_send(ws->inbox);
  uv_mutex_unlock(&ws->lock);
}

static void post(uvip_workers_t *ws, uint32_t kind, unsigned worker,
                 uvip_vip_t *vip) {
  post2(ws, kind, worker, vip, 0, 0);
}

/* On the acceptor. */
void uvip__wk_thread_on_inbox(uv_async_t *a) {
  uvip_workers_t *ws = a->data;
  uvip__post_t *posts;
  size_t n;

  uv_mutex_lock(&ws->lock);
  posts = ws->posts;
  n = ws->nposts;
  ws->posts = NULL;
  ws->nposts = ws->cap_posts = 0;
  uv_mutex_unlock(&ws->lock);

  for (size_t i = 0; i < n; i++) {
    uvip__wk_t *wk = &ws->wk[posts[i].worker];
    uint32_t id;
    switch (posts[i].kind) {
    case UVIP__POST_FAILED:
    case UVIP__POST_RELEASE:
      /* The VIP got its id at hand-off, so this cannot allocate. */
      if (uvip__wk_vip_id(ws, posts[i].vip, &id) != 0)
        break;
      if (posts[i].kind == UVIP__POST_FAILED)
        uvip__wk_failed(wk, id, 1);
      else
        uvip__wk_release(wk, id, 1);
      break;
    case UVIP__POST_EXITED:
      wk->alive = wk->starting = false;
      wk->exited = true;
      uvip__wk_ho_reported(wk, 0, 0);
      break;
    case UVIP__POST_HANDOVER:
      uvip__wk_ho_reported(wk, posts[i].a, posts[i].b);
      break;
    case UVIP__POST_READY:
      if (!wk->starting)
        break; /* stopped before it was ready */
      wk->starting = false;
      wk->alive = true;
      uvip__wk_ready(wk, 0);
      break;
    }
  }
  free(posts);
  uvip__wk_maybe_finish(ws);
}

/* On the worker: a connection of ours closed (conn.c calls this for a
 * connection whose loop is not the server's). */
void uvip__wk_thread_remote_closed(uvip_conn_t *c) {
  uvip__wk_t *wk = c->tcp.loop->data;
  uvip_conn_close_cb cb = uvip__conn_user_close_cb(c);
  uvip_vip_t *vip = c->vip;
  uvip__conn_list_del(&wk->conns, c);
  if (cb)
    cb(c);
  free(c);
  post(wk->ws, UVIP__POST_RELEASE, wk->index, vip);
}

static void publish(uvip__wk_t *wk) {
  uvip_vip_stats_t st;
  if (uvip_server_stats(wk->own, &st) != 0)
    return;
  uv_mutex_lock(&wk->lock);
  wk->rp_active = st.active;
  wk->rp_handed = st.accepted;
  uv_mutex_unlock(&wk->lock);
}

static void on_publish(uv_timer_t *t) { publish(t->data); }

static void on_own_closed(uvip_server_t *s) { (void)s; }

/* Both orders close everything the worker holds: handed-over connections
 * are on its list, REUSEPORT ones on its own server. */
static void close_conns(uvip__wk_t *wk) {
  uvip__conn_close_all(wk->conns, wk->ws->server->opts.conn_close_cb);
  if (wk->own)
    uvip_server_close_conns(wk->own);
}

/* On the worker: its hand-over ended. */
static void ho_report(size_t moved, size_t kept, void *arg) {
  uvip__wk_t *wk = arg;
  wk->ho = NULL;
  post2(wk->ws, UVIP__POST_HANDOVER, wk->index, NULL, moved, kept);
}

static void do_stop(uvip__wk_t *wk) {
  uvip_workers_t *ws = wk->ws;
  /* Connections queued for moving go back, so that they close below. */
  if (wk->ho)
    uvip__wk_ho_abort(wk->ho);
  /* The last counts reported are those from before the stop. */
  if (wk->own)
    publish(wk);
  close_conns(wk);
  if (wk->own) {
    uvip_server_close(wk->own, on_own_closed);
    wk->own = NULL;
    uv_close((uv_handle_t *)wk->rp_timer, free_handle);
    wk->rp_timer = NULL;
  }
  if (ws->opts.exit_cb)
    ws->opts.exit_cb(wk->loop, wk->index, ws->opts.arg);
  uv_close((uv_handle_t *)wk->async, free_handle);
}

static void take(uvip__wk_t *wk, __typeof__(wk->queue) items, size_t from,
                 size_t to) {
  uvip_workers_t *ws = wk->ws;
  for (size_t i = from; i < to; i++) {
    uvip_conn_t *c;
    if (uvip__conn_new(wk->loop, items[i].vip, items[i].fd, &c) != 0) {
      free(items[i].blob);
      items[i].blob = NULL;
      post(ws, UVIP__POST_FAILED, wk->index, items[i].vip);
      continue;
    }
    uvip__conn_list_add(&wk->conns, c);
    if (items[i].moved) {
      items[i].moved(ws->server, c, items[i].blob, items[i].len);
      free(items[i].blob);
      items[i].blob = NULL;
    } else {
      ws->cb(ws->server, c);
    }
  }
}

/* On the worker: new descriptors, or orders. */
static void on_wk_async(uv_async_t *a) {
  uvip__wk_t *wk = a->data;
  size_t n, close_at, from = 0;
  bool stop, close_now, stop_listen;
  int ho_chan;
  uvip_handover_decide_cb ho_decide;
  __typeof__(wk->queue) items;

  uv_mutex_lock(&wk->lock);
  items = wk->queue;
  n = wk->qlen;
  wk->queue = NULL;
  wk->qlen = wk->qcap = 0;
  stop = wk->stop;
  close_now = wk->close_order;
  close_at = wk->close_at;
  wk->close_order = false;
  stop_listen = wk->stop_listen;
  wk->stop_listen = false;
  ho_chan = wk->ho_chan;
  ho_decide = wk->ho_decide;
  wk->ho_chan = -1;
  uv_mutex_unlock(&wk->lock);

  if (stop_listen && wk->own)
    uvip__wk_own_stop(wk->own);
  /* In the order they were given, as a worker process reads them. */
  if (close_now) {
    take(wk, items, 0, close_at);
    close_conns(wk);
    from = close_at;
  }
  take(wk, items, from, n);
  free(items);
  /* After what was handed over before the order: those may move too. */
  if (ho_chan >= 0)
    uvip__wk_ho_start(wk->loop, ho_chan, wk->conns, wk->own, ho_decide,
                      wk->ws->server->opts.conn_close_cb, ho_report, wk,
                      &wk->ho);
  if (stop && !uv_is_closing((uv_handle_t *)a))
    do_stop(wk);
}

static void thread_main(void *arg) {
  uvip__wk_t *wk = arg;
  uvip_workers_t *ws = wk->ws;
  if (ws->opts.init_cb)
    ws->opts.init_cb(wk->loop, wk->index, ws->opts.arg);
  if (wk->rp_timer)
    uv_timer_start(wk->rp_timer, on_publish, UVIP__WK_REPORT_MS,
                   UVIP__WK_REPORT_MS);
  /* The acceptor does not wait for this: it hands nothing over until it
   * reads it. */
  post(ws, UVIP__POST_READY, wk->index, NULL);
  uv_run(wk->loop, UV_RUN_DEFAULT);
  /* Handles the application left open (exit_cb should have closed them)
   * keep the loop's memory: leaked rather than freed under them. */
  if (uv_loop_close(wk->loop) != 0)
    wk->loop = NULL;
  post(ws, UVIP__POST_EXITED, wk->index, NULL);
}

/* REUSEPORT: the worker's own server on the same VIPs, not shared. */
static int own_server(uvip__wk_t *wk, char *errbuf, size_t errlen) {
  int r = uvip__wk_own_server(wk->ws, wk->loop, &wk->own, errbuf, errlen);
  if (r != 0)
    return r;
  if (!(wk->rp_timer = malloc(sizeof(*wk->rp_timer))))
    return UV_ENOMEM;
  uv_timer_init(wk->loop, wk->rp_timer);
  wk->rp_timer->data = wk;
  return 0;
}

/* Undoes a start that failed, on the calling thread: no thread runs the
 * loop yet. */
static void discard(uvip__wk_t *wk) {
  if (wk->own)
    uvip_server_close(wk->own, NULL);
  if (wk->rp_timer)
    uv_close((uv_handle_t *)wk->rp_timer, free_handle);
  if (wk->async)
    uv_close((uv_handle_t *)wk->async, free_handle);
  uv_run(wk->loop, UV_RUN_DEFAULT);
  uv_loop_close(wk->loop);
  free(wk->loop);
  wk->loop = NULL;
  wk->own = NULL;
  wk->rp_timer = NULL;
  wk->async = NULL;
}

int uvip__wk_thread_start(uvip__wk_t *wk, char *errbuf, size_t errlen) {
  int r;
  if (!(wk->loop = malloc(sizeof(*wk->loop))))
    return UV_ENOMEM;
  if ((r = uv_loop_init(wk->loop)) != 0) {
    free(wk->loop);
    wk->loop = NULL;
    return r;
  }
  wk->loop->data = wk;
  if (!(wk->async = malloc(sizeof(*wk->async)))) {
    discard(wk);
    return UV_ENOMEM;
  }
  uv_async_init(wk->loop, wk->async, on_wk_async);
  wk->async->data = wk;
  if (wk->ws->opts.balance == UVIP_BALANCE_REUSEPORT &&
      (r = own_server(wk, errbuf, errlen)) != 0) {
    discard(wk);
    return r;
  }
  wk->started = wk->starting = true;
  if ((r = uv_thread_create(&wk->thread, thread_main, wk)) != 0) {
    wk->started = wk->starting = false;
    discard(wk);
    return r;
  }
  return 0;
}

/* On the acceptor. */
int uvip__wk_thread_dispatch(uvip__wk_t *wk, uvip_vip_t *vip, int fd,
                             uvip_moved_cb moved, const void *blob,
                             size_t len) {
  void *copy = NULL;
  if (moved && len && !(copy = malloc(len)))
    return UV_ENOMEM;
  if (copy)
    memcpy(copy, blob, len);
  uv_mutex_lock(&wk->lock);
  if (wk->qlen == wk->qcap) {
    size_t ncap = wk->qcap ? wk->qcap * 2 : 64;
    __typeof__(wk->queue) nq = realloc(wk->queue, ncap * sizeof(*nq));
    if (!nq) {
      uv_mutex_unlock(&wk->lock);
      free(copy);
      return UV_ENOMEM;
    }
    wk->queue = nq;
    wk->qcap = ncap;
  }
  wk->queue[wk->qlen].vip = vip;
  wk->queue[wk->qlen].fd = fd;
  wk->queue[wk->qlen].moved = moved;
  wk->queue[wk->qlen].blob = copy;
  wk->queue[wk->qlen].len = len;
  wk->qlen++;
  uv_async_send(wk->async);
  uv_mutex_unlock(&wk->lock);
  return 0;
}

void uvip__wk_thread_order(uvip__wk_t *wk, uint32_t kind) {
  uv_mutex_lock(&wk->lock);
  /* A stopped worker closes its async handle: nothing may follow. */
  if (!wk->stop) {
    if (kind == UVIP__MSG_STOP) {
      wk->stop = true;
    } else if (kind == UVIP__MSG_STOP_LISTEN) {
      wk->stop_listen = true;
    } else {
      wk->close_order = true;
      wk->close_at = wk->qlen;
    }
    uv_async_send(wk->async);
  }
  uv_mutex_unlock(&wk->lock);
}

bool uvip__wk_thread_handover(uvip__wk_t *wk, int chan,
                              uvip_handover_decide_cb decide) {
  bool ok;
  uv_mutex_lock(&wk->lock);
  ok = !wk->stop && wk->ho_chan < 0;
  if (ok) {
    wk->ho_chan = chan;
    wk->ho_decide = decide;
    uv_async_send(wk->async);
  }
  uv_mutex_unlock(&wk->lock);
  if (!ok)
    close(chan);
  return ok;
}

/* Stops (if needed), joins and frees a worker's thread and loop. */
void uvip__wk_thread_free(uvip__wk_t *wk) {
  if (wk->started && !wk->joined) {
    uvip__wk_thread_order(wk, UVIP__MSG_STOP);
    uv_thread_join(&wk->thread);
    wk->joined = true;
    free(wk->loop);
    wk->loop = NULL;
  }
  for (size_t i = 0; i < wk->qlen; i++) {
    close(wk->queue[i].fd);
    free(wk->queue[i].blob);
  }
  /* A hand-over order the worker never saw. */
  if (wk->ho_chan >= 0) {
    close(wk->ho_chan);
    wk->ho_chan = -1;
  }
  free(wk->queue);
  wk->queue = NULL;
  wk->qlen = wk->qcap = 0;
}
