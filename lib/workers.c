/* Workers: the API, the choice of a worker (balance modes) and the slot
 * accounting on the acceptor. The transports are in workers-thread.c and
 * workers-proc.c.
 *
 * Every per-worker count used to balance and to give slots back is kept on
 * the acceptor's thread only: +1 at hand-off, -1 when the worker reports a
 * close. Per VIP as well, so that when a worker process dies the acceptor
 * knows exactly which slots it held without asking it.
 * SPDX-License-Identifier: MIT */
#include "workers-internal.h"

#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

UVIP_EXPORT int uvip_workers_options_init(uvip_workers_options_t *opts) {
  UVIP_CHECK_ARG(opts == NULL);
  memset(opts, 0, sizeof(*opts));
  opts->nworkers = 2;
  opts->mode = UVIP_WORKER_THREAD;
  opts->balance = UVIP_BALANCE_EXACT;
  opts->grace_ms = UVIP_WORKER_GRACE_MS;
  return 0;
}

static size_t ptr_hash(const void *p, size_t mask) {
  uint64_t x = (uint64_t)(uintptr_t)p;
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  return (size_t)x & mask;
}

static int idmap_grow(uvip__idmap_t *m) {
  size_t ncap = m->cap ? m->cap * 2 : 64;
  const void **keys = calloc(ncap, sizeof(*keys));
  uint32_t *vals = calloc(ncap, sizeof(*vals));
  if (!keys || !vals) {
    free(keys);
    free(vals);
    return UV_ENOMEM;
  }
  for (size_t i = 0; i < m->cap; i++) {
    size_t j;
    if (!m->keys[i])
      continue;
    for (j = ptr_hash(m->keys[i], ncap - 1); keys[j]; j = (j + 1) & (ncap - 1))
      ;
    keys[j] = m->keys[i];
    vals[j] = m->vals[i];
  }
  free(m->keys);
  free(m->vals);
  m->keys = keys;
  m->vals = vals;
  m->cap = ncap;
  return 0;
}

/* Finds key; when absent adds it with next_id. */
int uvip__idmap_get(uvip__idmap_t *m, const void *key, uint32_t next_id,
                    uint32_t *id, bool *added) {
  size_t j;
  if ((m->len + 1) * 2 > m->cap && idmap_grow(m) != 0)
    return UV_ENOMEM;
  for (j = ptr_hash(key, m->cap - 1); m->keys[j]; j = (j + 1) & (m->cap - 1))
    if (m->keys[j] == key) {
      *id = m->vals[j];
      *added = false;
      return 0;
    }
  m->keys[j] = key;
  m->vals[j] = next_id;
  m->len++;
  *id = next_id;
  *added = true;
  return 0;
}

/* Points an existing key at a new id. */
static void idmap_set(uvip__idmap_t *m, const void *key, uint32_t id) {
  for (size_t j = ptr_hash(key, m->cap - 1); m->keys[j]; j = (j + 1) & (m->cap - 1))
    if (m->keys[j] == key) {
      m->vals[j] = id;
      return;
    }
}

void uvip__idmap_free(uvip__idmap_t *m) {
  free(m->keys);
  free(m->vals);
  memset(m, 0, sizeof(*m));
}

/* Room for one more VIP id, made before the id map is touched: once the
 * map holds a key, its id must exist. */
static int reserve_vip_id(uvip_workers_t *ws) {
  size_t ncap;
  uvip_vip_t **nv;
  uvip__sa_t *na;
  if (ws->nvips < ws->cap_vips)
    return 0;
  ncap = ws->cap_vips ? ws->cap_vips * 2 : 16;
  if (!(nv = realloc(ws->vips, ncap * sizeof(*nv))))
    return UV_ENOMEM;
  ws->vips = nv;
  if (!(na = realloc(ws->vip_addrs, ncap * sizeof(*na))))
    return UV_ENOMEM; /* vips is bigger than needed: harmless */
  ws->vip_addrs = na;
  ws->cap_vips = ncap;
  return 0;
}

/* Cannot fail after reserve_vip_id(). */
static uint32_t new_vip_id(uvip_workers_t *ws, uvip_vip_t *vip) {
  uint32_t id = (uint32_t)ws->nvips++;
  ws->vips[id] = vip;
  memcpy(&ws->vip_addrs[id], &vip->addr, sizeof(vip->addr));
  return id;
}

static bool idmap_find(const uvip__idmap_t *m, const void *key,
                       uint32_t *id) {
  if (!m->cap)
    return false;
  for (size_t j = ptr_hash(key, m->cap - 1); m->keys[j]; j = (j + 1) & (m->cap - 1))
    if (m->keys[j] == key) {
      *id = m->vals[j];
      return true;
    }
  return false;
}

int uvip__wk_vip_id(uvip_workers_t *ws, uvip_vip_t *vip, uint32_t *id) {
  bool found = idmap_find(&ws->vipmap, vip, id), added;
  int r;
  /* Known: no allocation (the releases depend on it). */
  if (found && uvip__sa_equal(&ws->vip_addrs[*id].sa, &vip->addr.sa))
    return 0;
  if ((r = reserve_vip_id(ws)) != 0)
    return r;
  if (found) {
    /* A freed VIP's memory reused for another address: the old id may
     * still be known to worker processes, so this one gets a fresh id. */
    *id = new_vip_id(ws, vip);
    idmap_set(&ws->vipmap, vip, *id);
    return 0;
  }
  if ((r = uvip__idmap_get(&ws->vipmap, vip, (uint32_t)ws->nvips, id,
                           &added)) != 0)
    return r;
  *id = new_vip_id(ws, vip);
  return 0;
}

void uvip__wk_release(uvip__wk_t *wk, uint32_t id, uint64_t count) {
  uvip_workers_t *ws = wk->ws;
  /* A worker process is not trusted to count right. */
  if (id >= wk->vip_cap || id >= ws->nvips)
    return;
  if (count > wk->vip_active[id])
    count = wk->vip_active[id];
  wk->vip_active[id] -= count;
  wk->active -= count;
  while (count--)
    uvip__server_release(ws->server, ws->vips[id]);
}

void uvip__wk_failed(uvip__wk_t *wk, uint32_t id, uint64_t count) {
  /* Not handed after all; bounded like the release (a worker process is
   * not trusted to count right). */
  uint64_t n = count < wk->handed ? count : wk->handed;
  wk->handed -= n;
  wk->failed += n;
  uvip__wk_release(wk, id, count);
}

void uvip__wk_ready(uvip__wk_t *wk, int status) {
  uvip_workers_t *ws = wk->ws;
  /* A new worker with room: the scheduler may have stopped for lack of
   * one. */
  if (status == 0 && ws->listening && !ws->closing)
    uvip__sched_kick(ws->server);
  if (ws->opts.ready_cb && !ws->closing)
    ws->opts.ready_cb(ws, wk->index, status);
}

void uvip__wk_ended(uvip__wk_t *wk) {
  wk->alive = false;
  wk->exited = true;
  /* Dead mid hand-over: what it sent is in the new generation, what it
   * held is gone with it; its part is over. */
  uvip__wk_ho_reported(wk, 0, 0);
  for (uint32_t id = 0; id < wk->vip_cap; id++)
    if (wk->vip_active[id])
      uvip__wk_release(wk, id, wk->vip_active[id]);
  uvip__wk_maybe_finish(wk->ws);
}

/* Alive, not closing and below its connection limit. */
static bool can_take(const uvip_workers_t *ws, const uvip__wk_t *wk) {
  if (!wk->alive || ws->closing)
    return false;
  return !ws->opts.max_conns_per_worker ||
         wk->active < ws->opts.max_conns_per_worker;
}

/* A process worker whose pipe is backed up waits for it to drain. */
static bool pipe_free(const uvip_workers_t *ws, const uvip__wk_t *wk) {
  return ws->opts.mode != UVIP_WORKER_PROCESS ||
         wk->inflight < UVIP__WK_MAX_INFLIGHT;
}

/* Scans from the round-robin cursor so that ties rotate. EXACT takes the
 * least loaded of the workers that can take one, and when its pipe is
 * backed up (a slow process) waits for it rather than overload another:
 * counts stay within one of each other. ROUND_ROBIN takes the next one
 * that can take one and whose pipe is free. */
static uvip__wk_t *choose(uvip_workers_t *ws, bool count_refusals) {
  uvip__wk_t *best = NULL;
  for (unsigned k = 0; k < ws->n; k++) {
    uvip__wk_t *wk = &ws->wk[(ws->rr + k) % ws->n];
    if (!can_take(ws, wk)) {
      if (wk->alive && count_refusals)
        wk->refused++;
      continue;
    }
    if (ws->opts.balance == UVIP_BALANCE_ROUND_ROBIN) {
      if (pipe_free(ws, wk))
        return wk;
      continue;
    }
    if (!best || wk->active < best->active ||
        (wk->active == best->active && !pipe_free(ws, best) && pipe_free(ws, wk)))
      best = wk;
  }
  return best && pipe_free(ws, best) ? best : NULL;
}

static bool on_has_room(uvip_server_t *s) {
  return choose(s->handoff_ctx, false) != NULL;
}

static int grow_vip_active(uvip__wk_t *wk, uint32_t id) {
  size_t ncap;
  uint64_t *na;
  if (id < wk->vip_cap)
    return 0;
  ncap = wk->vip_cap ? wk->vip_cap : 16;
  while (ncap <= id)
    ncap *= 2;
  na = realloc(wk->vip_active, ncap * sizeof(*na));
  if (!na)
    return UV_ENOMEM;
  memset(na + wk->vip_cap, 0, (ncap - wk->vip_cap) * sizeof(*na));
  wk->vip_active = na;
  wk->vip_cap = ncap;
  return 0;
}

static int dispatch(uvip_server_t *s, uvip_vip_t *vip, int fd,
                    uvip_moved_cb moved, const void *blob, size_t len) {
  uvip_workers_t *ws = s->handoff_ctx;
  uvip__wk_t *wk = choose(ws, true);
  uint32_t id;
  int r;
  if (!wk)
    return UV_EAGAIN;
  ws->rr = (wk->index + 1) % ws->n;
  if ((r = uvip__wk_vip_id(ws, vip, &id)) != 0 ||
      (r = grow_vip_active(wk, id)) != 0)
    return r;
  /* Counted before the transport runs: a process transport that fails
   * later gives the slot back through uvip__wk_release(). */
  wk->vip_active[id]++;
  wk->active++;
  wk->handed++;
  r = ws->opts.mode == UVIP_WORKER_PROCESS
          ? uvip__wk_proc_dispatch(wk, vip, id, fd, moved, blob, len)
          : uvip__wk_thread_dispatch(wk, vip, fd, moved, blob, len);
  if (r != 0) {
    wk->vip_active[id]--;
    wk->active--;
    wk->handed--;
    wk->failed++;
  }
  return r;
}

static int on_dispatch(uvip_server_t *s, uvip_vip_t *vip, int fd) {
  return dispatch(s, vip, fd, NULL, NULL, 0);
}

/* A connection moved from the old generation (moved.c): to a worker like
 * an accepted one, and cb runs there with the blob. */
static int on_moved(uvip_server_t *s, uvip_vip_t *vip, int fd,
                    uvip_moved_cb cb, const void *blob, size_t len) {
  return dispatch(s, vip, fd, cb, blob, len);
}

/* Gives an order (UVIP__MSG_STOP or _CLOSE_CONNS) to every running worker;
 * returns the first error, the others still get theirs. */
static int order_all(uvip_workers_t *ws, uint32_t kind) {
  int r, first = 0;
  for (unsigned i = 0; i < ws->n; i++) {
    uvip__wk_t *wk = &ws->wk[i];
    if (!wk->started || wk->exited)
      continue;
    if (ws->opts.mode == UVIP_WORKER_THREAD)
      uvip__wk_thread_order(wk, kind);
    else if ((r = uvip__wk_proc_order(wk, kind)) != 0 && first == 0)
      first = r;
  }
  return first;
}

/* The server's remote_close_conns: the workers close what they hold on
 * their own loops, and give the slots back through the usual releases. */
static int close_conns(uvip_server_t *s) {
  uvip_workers_t *ws = s->handoff_ctx;
  /* Closing workers close everything anyway, and may be past hearing. */
  if (ws->closing)
    return 0;
  return order_all(ws, UVIP__MSG_CLOSE_CONNS);
}

/* The server's remote_stop (REUSEPORT): the acceptor never listened; the
 * workers' own listeners are what accepts. */
static void stop_listeners(uvip_server_t *s) {
  uvip_workers_t *ws = s->handoff_ctx;
  if (!ws->closing)
    order_all(ws, UVIP__MSG_STOP_LISTEN);
}

static uint64_t default_max(void) {
  struct rlimit rl;
  uint64_t hard = 1u << 20;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_max != RLIM_INFINITY &&
      rl.rlim_max < hard)
    hard = rl.rlim_max;
  return hard > 2 * UVIP_WORKER_FD_RESERVE ? hard - UVIP_WORKER_FD_RESERVE
                                           : UVIP_WORKER_FD_RESERVE;
}

UVIP_EXPORT int uvip_workers_new(uvip_server_t *server,
                                 const uvip_workers_options_t *opts,
                                 uvip_workers_t **out) {
  uvip_workers_t *ws;
  uvip_workers_options_t o;

  UVIP_CHECK_ARG(server == NULL || out == NULL);
  if (opts)
    o = *opts;
  else
    uvip_workers_options_init(&o);
  UVIP_CHECK_ARG(o.nworkers < 1 || o.nworkers > UVIP_WORKERS_MAX);
  UVIP_CHECK_ARG(o.mode != UVIP_WORKER_THREAD && o.mode != UVIP_WORKER_PROCESS);
  UVIP_CHECK_ARG(o.balance < UVIP_BALANCE_EXACT ||
                 o.balance > UVIP_BALANCE_REUSEPORT);
  UVIP_CHECK_ARG(server->listening || server->closing ||
                 server->handoff_ctx != NULL);
  UVIP_CHECK_ARG(o.nkeep_fds > 0 && o.keep_fds == NULL);
  UVIP_CHECK_ARG(o.nkeep_fds > (size_t)INT_MAX);
  for (size_t i = 0; i < o.nkeep_fds; i++)
    UVIP_CHECK_ARG(o.keep_fds[i] < 0);
  /* A handed-over descriptor would reach the worker before its PROXY
   * header is read, and its addresses with it: only workers that accept
   * on their own (REUSEPORT) read the header. */
  if ((server->opts.flags & UVIP_PROXY_PROTOCOL) &&
      o.balance != UVIP_BALANCE_REUSEPORT)
    return UV_ENOTSUP;
  if (o.mode == UVIP_WORKER_PROCESS && o.max_conns_per_worker == 0)
    o.max_conns_per_worker = default_max();

  ws = calloc(1, sizeof(*ws));
  if (!ws)
    return UV_ENOMEM;
  ws->wk = calloc(o.nworkers, sizeof(*ws->wk));
  if (!ws->wk) {
    free(ws);
    return UV_ENOMEM;
  }
  if (o.nkeep_fds) {
    int *keep = malloc(o.nkeep_fds * sizeof(*keep));
    if (!keep) {
      free(ws->wk);
      free(ws);
      return UV_ENOMEM;
    }
    memcpy(keep, o.keep_fds, o.nkeep_fds * sizeof(*keep));
    o.keep_fds = keep;
  } else {
    o.keep_fds = NULL;
  }
  ws->server = server;
  ws->loop = server->loop;
  ws->opts = o;
  ws->n = o.nworkers;
  uv_mutex_init(&ws->lock);
  for (unsigned i = 0; i < ws->n; i++) {
    ws->wk[i].ws = ws;
    ws->wk[i].index = i;
    ws->wk[i].ho_chan = -1;
    uv_mutex_init(&ws->wk[i].lock);
  }
  server->handoff_ctx = ws;
  server->remote_close_conns = close_conns;
  /* Until the close callback: the server must not be freed under us. */
  uvip__server_attach(server);
  *out = ws;
  return 0;
}

static int init_acceptor_handles(uvip_workers_t *ws) {
  int r;
  if (ws->opts.mode == UVIP_WORKER_THREAD) {
    if (!(ws->inbox = malloc(sizeof(*ws->inbox))))
      return UV_ENOMEM;
    if ((r = uv_async_init(ws->loop, ws->inbox, uvip__wk_thread_on_inbox)) != 0) {
      free(ws->inbox);
      ws->inbox = NULL;
      return r;
    }
    ws->inbox->data = ws;
  } else {
    struct sigaction sa;
    /* A worker that dies makes writes to its pipe fail with EPIPE; the
     * default SIGPIPE would kill the acceptor instead. Process-wide, and
     * left so (see <uvip/workers.h>). */
    if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL)
      signal(SIGPIPE, SIG_IGN);
    if (!(ws->sigchld = malloc(sizeof(*ws->sigchld))))
      return UV_ENOMEM;
    uv_signal_init(ws->loop, ws->sigchld);
    ws->sigchld->data = ws;
    if ((r = uv_signal_start(ws->sigchld, uvip__wk_proc_on_sigchld, SIGCHLD)) != 0) {
      uv_close((uv_handle_t *)ws->sigchld, uvip__wk_handle_closed);
      ws->handles_open++;
      ws->sigchld = NULL;
      return r;
    }
    /* Reaping children must not keep the application's loop alive (the
     * pipes do while workers run; closing refs these). */
    uv_unref((uv_handle_t *)ws->sigchld);
    if (!(ws->timer = malloc(sizeof(*ws->timer))))
      return UV_ENOMEM;
    uv_timer_init(ws->loop, ws->timer);
    ws->timer->data = ws;
    uv_unref((uv_handle_t *)ws->timer);
    if (!(ws->spawner = malloc(sizeof(*ws->spawner))))
      return UV_ENOMEM;
    uv_idle_init(ws->loop, ws->spawner);
    ws->spawner->data = ws;
  }
  return 0;
}

/* Forks the next pending worker process. One that cannot be created is
 * reported to ready_cb and stays dead, as if it had died. */
static void on_spawn(uv_idle_t *h) {
  uvip_workers_t *ws = h->data;
  for (unsigned i = 0; i < ws->n; i++) {
    uvip__wk_t *wk = &ws->wk[i];
    int r;
    if (!wk->pending)
      continue;
    wk->pending = false;
    if ((r = uvip__wk_proc_start(wk, NULL, 0)) != 0) {
      /* As if it had died: it may be restarted. */
      wk->starting = false;
      wk->exited = true;
      uvip__wk_ready(wk, r);
    }
    return;
  }
  uv_idle_stop(h);
}

/* When listening fails half way. Without waiting: a thread ends on its
 * own (and is joined once it said so), a process is killed and reaped
 * later; uvip_workers_close() waits for both. */
static void stop_started(uvip_workers_t *ws) {
  for (unsigned i = 0; i < ws->n; i++) {
    uvip__wk_t *wk = &ws->wk[i];
    if (!wk->started || wk->exited)
      continue;
    if (ws->opts.mode == UVIP_WORKER_THREAD) {
      uvip__wk_thread_order(wk, UVIP__MSG_STOP);
      wk->alive = wk->starting = false;
    } else {
      uvip__wk_proc_kill(wk);
    }
  }
}

UVIP_EXPORT int uvip_workers_listen(uvip_workers_t *ws, uvip_connection_cb cb,
                                    char *errbuf, size_t errlen) {
  uvip_server_t *s;
  int r;

  UVIP_CHECK_ARG(ws == NULL || cb == NULL);
  s = ws->server;
  if (ws->listening || ws->closing || ws->failed_start || s->listening)
    return UV_EALREADY;
  if (errbuf && errlen)
    errbuf[0] = 0;
  ws->cb = cb;
  if ((r = init_acceptor_handles(ws)) != 0)
    goto fail;
  if (ws->opts.balance == UVIP_BALANCE_REUSEPORT) {
    s->remote_stop = stop_listeners;
    /* Nothing is accepted here, but connections moved from the old
     * generation of an upgrade (moved.c) still come through the acceptor
     * and go to a worker as a hand-off would. */
    s->handoff_has_room = on_has_room;
    s->handoff_moved = on_moved;
    s->remote_closed = uvip__wk_thread_remote_closed;
  } else {
    s->handoff_has_room = on_has_room;
    s->handoff_dispatch = on_dispatch;
    s->handoff_moved = on_moved;
    s->remote_closed = uvip__wk_thread_remote_closed;
    /* Nothing is accepted before the loop runs, so the workers can start
     * after the listeners exist (process workers close their copies). */
    if ((r = uvip_server_listen(s, cb, errbuf, errlen)) != 0) {
      s->handoff_has_room = NULL;
      s->handoff_dispatch = NULL;
      s->handoff_moved = NULL;
      goto fail;
    }
  }
  for (unsigned i = 0; i < ws->n; i++) {
    uvip__wk_t *wk = &ws->wk[i];
    if (ws->opts.mode == UVIP_WORKER_PROCESS && i > 0) {
      /* A fork copies the page tables and makes the parent fault on
       * every page it then writes: one per loop turn keeps each stall
       * short. The first is forked here, so that an error that would hit
       * them all is returned now. */
      wk->pending = wk->starting = true;
      continue;
    }
    r = ws->opts.mode == UVIP_WORKER_THREAD
            ? uvip__wk_thread_start(wk, errbuf, errlen)
            : uvip__wk_proc_start(wk, errbuf, errlen);
    if (r != 0) {
      if (errbuf && errlen && !errbuf[0])
        snprintf(errbuf, errlen, "worker %u: %s", i, uv_strerror(r));
      stop_started(ws);
      if (s->listening)
        uvip_server_stop(s);
      goto fail;
    }
  }
  /* Each worker, once ready, tells the scheduler it has room. */
  ws->listening = true;
  if (ws->spawner && ws->n > 1)
    uv_idle_start(ws->spawner, on_spawn);
  return 0;
fail:
  ws->failed_start = true;
  return r;
}

UVIP_EXPORT unsigned int uvip_workers_count(const uvip_workers_t *ws) {
  return ws ? ws->n : 0;
}

UVIP_EXPORT uvip_server_t *uvip_workers_server(const uvip_workers_t *ws) {
  return ws ? ws->server : NULL;
}

UVIP_EXPORT int uvip_workers_stats(const uvip_workers_t *ws, unsigned int i,
                                   uvip_worker_stats_t *out) {
  UVIP_CHECK_ARG(ws == NULL || out == NULL || i >= ws->n);
  uvip__wk_t *wk = &ws->wk[i];
  memset(out, 0, sizeof(*out));
  out->active = wk->active;
  out->handed = wk->handed;
  out->refused = wk->refused;
  out->failed = wk->failed;
  out->restarts = wk->restarts;
  out->pid = wk->pid;
  out->alive = wk->alive;
  out->starting = wk->starting;
  out->exit_status = ws->opts.mode == UVIP_WORKER_PROCESS && wk->reaped
                         ? wk->exit_status
                         : -1;
  if (ws->opts.balance == UVIP_BALANCE_REUSEPORT) {
    /* What it accepted itself, as it last reported, and what it was given
     * by the acceptor (connections moved from an older generation). */
    uv_mutex_lock(&wk->lock);
    out->active = wk->rp_active + wk->active;
    out->handed = wk->rp_handed + wk->handed;
    uv_mutex_unlock(&wk->lock);
  }
  return 0;
}

UVIP_EXPORT int uvip_workers_restart(uvip_workers_t *ws, unsigned int i) {
  int r;
  UVIP_CHECK_ARG(ws == NULL || i >= ws->n || !ws->listening || ws->closing);
  if (ws->opts.mode != UVIP_WORKER_PROCESS)
    return UV_ENOTSUP;
  if (!ws->wk[i].exited)
    return UV_EBUSY;
  uvip__wk_proc_forget(&ws->wk[i]);
  if ((r = uvip__wk_proc_start(&ws->wk[i], NULL, 0)) != 0)
    return r;
  ws->wk[i].restarts++;
  return 0;
}

/* From the last handle's close callback: every worker has ended (threads
 * said so as their last act, so joining them does not wait) and every
 * process has been reaped. */
static void finish(uvip_workers_t *ws) {
  uvip_server_t *s = ws->server;
  for (unsigned i = 0; i < ws->n; i++)
    if (ws->opts.mode == UVIP_WORKER_THREAD)
      uvip__wk_thread_free(&ws->wk[i]);
  s->handoff_has_room = NULL;
  s->handoff_dispatch = NULL;
  s->handoff_moved = NULL;
  s->remote_closed = NULL;
  s->remote_close_conns = NULL;
  s->remote_stop = NULL;
  s->handoff_ctx = NULL;
  uvip__server_detach(s);
  /* The counters stay readable from the callback. */
  if (ws->close_cb)
    ws->close_cb(ws);
  for (unsigned i = 0; i < ws->n; i++) {
    free(ws->wk[i].vip_active);
    uv_mutex_destroy(&ws->wk[i].lock);
  }
  uv_mutex_destroy(&ws->lock);
  free(ws->posts);
  free(ws->zombies);
  free((void *)ws->opts.keep_fds);
  free(ws->vips);
  free(ws->vip_addrs);
  uvip__idmap_free(&ws->vipmap);
  free(ws->wk);
  free(ws);
}

/* The one place the workers finish: the close callback of their last
 * handle (every handle of theirs is counted in handles_open, hand-offs'
 * included), after uvip__wk_maybe_finish() closed the rest. */
void uvip__wk_closed(uvip_workers_t *ws) {
  ws->handles_open--;
  uvip__wk_maybe_finish(ws);
  if (ws->handles_open == 0 && ws->finishing)
    finish(ws);
}

void uvip__wk_handle_closed(uv_handle_t *h) {
  uvip_workers_t *ws = h->data;
  free(h);
  uvip__wk_closed(ws);
}

void uvip__wk_maybe_finish(uvip_workers_t *ws) {
  if (!ws->closing)
    return;
  if (ws->finishing)
    return;
  for (unsigned i = 0; i < ws->n; i++)
    if (ws->wk[i].started && !ws->wk[i].exited)
      return;
  if (ws->opts.mode == UVIP_WORKER_PROCESS && !uvip__wk_proc_all_reaped(ws))
    return;
  ws->finishing = true;
  if (ws->inbox) {
    uv_close((uv_handle_t *)ws->inbox, uvip__wk_handle_closed);
    ws->inbox = NULL;
    ws->handles_open++;
  }
  if (ws->sigchld) {
    uv_close((uv_handle_t *)ws->sigchld, uvip__wk_handle_closed);
    ws->sigchld = NULL;
    ws->handles_open++;
  }
  if (ws->timer) {
    uv_close((uv_handle_t *)ws->timer, uvip__wk_handle_closed);
    ws->timer = NULL;
    ws->handles_open++;
  }
  if (ws->spawner) {
    uv_close((uv_handle_t *)ws->spawner, uvip__wk_handle_closed);
    ws->spawner = NULL;
    ws->handles_open++;
  }
}

static void on_deferred(uv_handle_t *h) { uvip__wk_closed(h->data); }

UVIP_EXPORT int uvip_workers_close(uvip_workers_t *ws,
                                   uvip_workers_close_cb cb) {
  UVIP_CHECK_ARG(ws == NULL);
  if (ws->closing)
    return UV_EALREADY;
  ws->closing = true;
  ws->close_cb = cb;
  /* Workers not forked yet never will be. */
  for (unsigned i = 0; i < ws->n; i++)
    if (ws->wk[i].pending)
      ws->wk[i].pending = ws->wk[i].starting = false;
  uvip_server_stop(ws->server);
  order_all(ws, UVIP__MSG_STOP);
  uvip__wk_proc_closing(ws);
  /* The callback must come from the loop even when nothing is running. */
  uv_idle_init(ws->loop, &ws->closer);
  ws->closer.data = ws;
  ws->handles_open++;
  uv_close((uv_handle_t *)&ws->closer, on_deferred);
  return 0;
}

int uvip__wk_own_server(uvip_workers_t *ws, uv_loop_t *loop,
                        uvip_server_t **out, char *errbuf, size_t errlen) {
  uvip_server_options_t o = ws->server->opts;
  uvip_addrs_t *addrs;
  int r;
  if ((r = uvip_addrs_new(&addrs)) != 0)
    return r;
  for (size_t i = 0; i < ws->server->nvips && r == 0; i++)
    r = uvip_addrs_add(addrs, &ws->server->vips[i]->addr.sa);
  o.flags |= UVIP_REUSEPORT;
  /* Inherited listeners (LISTEN_FDS) are the acceptor's business: a
   * worker binds its own. An upgrade passes none to a REUSEPORT
   * generation (LISTEN_FDS=0), and in a worker process LISTEN_PID names
   * the acceptor, which would fail the listen. */
  o.flags &= ~(unsigned)UVIP_SOCKET_ACTIVATION;
  if (ws->opts.max_conns_per_worker &&
      (o.max_conns == 0 || o.max_conns > ws->opts.max_conns_per_worker))
    o.max_conns = ws->opts.max_conns_per_worker;
  if (r == 0)
    r = uvip_server_new(loop, addrs, &o, out);
  uvip_addrs_free(addrs);
  if (r != 0)
    return r;
  uvip_server_set_data(*out, ws->server->data);
  if ((r = uvip_server_listen(*out, ws->cb, errbuf, errlen)) != 0)
    return r;
  /* Started (or restarted) after the server was stopped: nothing to
   * accept. */
  if (ws->server->stopped)
    uvip_server_stop(*out);
  return 0;
}

void uvip__wk_own_stop(uvip_server_t *own) {
  /* What the kernel queued on our sockets is served here rather than
   * reset with them (with net.ipv4.tcp_migrate_req=1 the kernel would move
   * it to another socket of the group; without, it resets it). What
   * arrives between this and the close is still exposed: a few
   * microseconds instead of a whole queue. */
  uvip__sched_accept_queued(own);
  uvip_server_stop(own);
}
