/* uvip_livepool_t: keeps a server's listeners in step with the pool
 * addresses present on the host, driven by address events.
 *
 * Each pool address has at most one VIP for the life of the live pool: it
 * is taken over from the server or added with uvip_server_add_vip() the
 * first time the address is seen, paused (uvip_vip_pause()) when the
 * address goes and resumed (uvip_vip_resume()) when it comes back, so its
 * counters, weight, data and connections stay on one VIP object. Only the
 * public server API is used; the live pool needs no way back from a VIP or
 * a server to itself (nothing calls it back through them), so the server's
 * and the VIPs' data pointers stay the application's.
 *
 * The truth about an address is a bind probe, not the event alone: an
 * RTM_NEWADDR can reach us before the kernel has installed the address's
 * local route (the notification is sent first), and an address removed from
 * one interface may still be on another. So every event is acted on at once
 * and the address is probed again a little later (10 ms, 100 ms, 1 s).
 * SPDX-License-Identifier: MIT */
#include <assert.h>
#include <errno.h>
#include <linux/if_addr.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* For uvip__ip_cmp(), the shared sockaddr helpers (uvip__sa_t,
 * uvip__sa_len(), uvip__sa_equal(), UVIP_EXPORT, UVIP_CHECK_ARG) and
 * uvip__server_attach()/detach(); no server or VIP field is read here. */
#include "rtnl.h"

#define RECHECKS 3
#define RECHECK_FIRST_MS 10
#define RECHECK_MAX_MS 1000

typedef struct live_entry_s {
  uvip__sa_t sa;     /* pool address, with its port */
  /* Its VIP once the address has been seen (listening, paused or failed);
   * NULL until then, or while a first uvip_server_add_vip() keeps
   * failing. Never freed by the live pool. */
  uvip_vip_t *vip;
  int last_err;      /* the last UVIP_LIVE_FAILED status, 0 if none */
  unsigned int rechecks; /* probes still due */
  bool queued;
  bool announced; /* UVIP_LIVE_UP reported since vip last listened */
} live_entry_t;

struct uvip_livepool_s {
  uvip_server_t *server;
  void *data;
  uvip_livepool_cb cb;
  uvip_livepool_close_cb close_cb;
  live_entry_t *entries; /* sorted by address, then port */
  size_t n;
  uvip_addrwatch_t *watch;
  uv_timer_t timer; /* first sync, re-syncs, rechecks */
  uint64_t delay_ms;
  size_t *queue; /* entries due for a recheck */
  size_t nqueue;
  bool started, closing, sync_all;
  int closes_pending;
};

static int port_of(const uvip__sa_t *sa) {
  return ntohs(sa->sa.sa_family == AF_INET ? sa->in.sin_port
                                           : sa->in6.sin6_port);
}

static int entry_cmp(const void *a, const void *b) {
  const live_entry_t *x = a, *y = b;
  int c = uvip__ip_cmp(&x->sa.sa, &y->sa.sa);
  if (c != 0)
    return c;
  return port_of(&x->sa) - port_of(&y->sa);
}

/* The first entry whose address is not below sa (ports ignored). */
static size_t lower_bound(const uvip_livepool_t *lp,
                          const struct sockaddr *sa) {
  size_t lo = 0, hi = lp->n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (uvip__ip_cmp(&lp->entries[mid].sa.sa, sa) < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

static live_entry_t *find_exact(const uvip_livepool_t *lp,
                                const struct sockaddr *sa) {
  for (size_t i = lower_bound(lp, sa);
       i < lp->n && uvip__ip_cmp(&lp->entries[i].sa.sa, sa) == 0; i++)
    if (uvip__sa_equal(&lp->entries[i].sa.sa, sa))
      return &lp->entries[i];
  return NULL;
}

static bool vip_listening(const uvip_vip_t *v) {
  return v != NULL && uvip_vip_state(v) == UVIP_VIP_LISTENING;
}

/* Can a socket be bound to the address right now? Only EADDRNOTAVAIL means
 * "not on this host"; anything else is left for the listener to report. */
static bool probe_present(const live_entry_t *e) {
  uvip__sa_t sa = e->sa;
  socklen_t len;
  if (sa.sa.sa_family == AF_INET) {
    sa.in.sin_port = 0;
    len = sizeof(sa.in);
  } else {
    sa.in6.sin6_port = 0;
    len = sizeof(sa.in6);
  }
  int fd = socket(sa.sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return true;
  int r = bind(fd, &sa.sa, len);
  int err = errno;
  close(fd);
  return r == 0 || err != EADDRNOTAVAIL;
}

/* Queues a probe of e; the caller (an event, or the timer itself) makes
 * sure the timer runs. The queue has room for every entry once: e->queued
 * is true exactly while e's index is in lp->queue, so an entry already
 * there only gets its rechecks renewed. */
static void enqueue(uvip_livepool_t *lp, live_entry_t *e) {
  e->rechecks = RECHECKS;
  if (!e->queued) {
    assert(lp->nqueue < lp->n);
    e->queued = true;
    lp->queue[lp->nqueue++] = (size_t)(e - lp->entries);
  }
}

/* The server's VIP for e's address and port that is not draining, or NULL:
 * one that someone else added while the live pool runs (it is adopted). */
static uvip_vip_t *find_server_vip(const uvip_livepool_t *lp,
                                   const live_entry_t *e) {
  size_t nv = uvip_server_vip_count(lp->server);
  for (size_t i = 0; i < nv; i++) {
    uvip_vip_t *v = uvip_server_vip(lp->server, i);
    if (uvip_vip_state(v) != UVIP_VIP_DRAINING &&
        uvip__sa_equal(uvip_vip_addr(v), &e->sa.sa))
      return v;
  }
  return NULL;
}

/* The address is present: make its VIP listen. The first time, the VIP is
 * added; after that the same VIP is resumed (from PAUSED, or from FAILED
 * when an earlier bind failed). */
static void entry_up(uvip_livepool_t *lp, live_entry_t *e) {
  if (!uvip_server_is_listening(lp->server))
    return;
  if (vip_listening(e->vip)) {
    if (!e->announced) { /* taken over from the server: tell once */
      e->announced = true;
      lp->cb(lp, UVIP_LIVE_UP, &e->sa.sa, e->vip, 0);
    }
    return;
  }
  int r;
  if (e->vip != NULL) {
    r = uvip_vip_resume(e->vip);
  } else {
    uvip_vip_t *v = NULL;
    r = uvip_server_add_vip(lp->server, &e->sa.sa, &v);
    if (r == UV_EEXIST && (v = find_server_vip(lp, e)) != NULL) {
      e->vip = v;
      r = vip_listening(v) ? 0 : uvip_vip_resume(v);
    } else if (r == 0) {
      e->vip = v;
    }
  }
  if (r == 0 && vip_listening(e->vip)) {
    e->last_err = 0;
    e->announced = true;
    lp->cb(lp, UVIP_LIVE_UP, &e->sa.sa, e->vip, 0);
  } else if (r == UV_EADDRNOTAVAIL) {
    /* Not usable yet (or gone again): the recheck decides. */
    enqueue(lp, e);
  } else if (r != 0 && r != e->last_err) {
    e->last_err = r;
    lp->cb(lp, UVIP_LIVE_FAILED, &e->sa.sa, e->vip, r);
  }
}

/* The address has gone: pause its VIP. The listener closes; the VIP, its
 * counters and its connections stay, ready for entry_up(). */
static void entry_down(uvip_livepool_t *lp, live_entry_t *e) {
  e->last_err = 0;
  if (!vip_listening(e->vip) || !uvip_server_is_listening(lp->server))
    return;
  if (uvip_vip_pause(e->vip) != 0)
    return;
  e->announced = false;
  lp->cb(lp, UVIP_LIVE_DOWN, &e->sa.sa, e->vip, 0);
}

static void check_entry(uvip_livepool_t *lp, live_entry_t *e) {
  if (probe_present(e))
    entry_up(lp, e);
  else
    entry_down(lp, e);
}

static void on_timer(uv_timer_t *t) {
  uvip_livepool_t *lp = t->data;
  if (lp->sync_all) {
    lp->sync_all = false;
    for (size_t i = 0; i < lp->n && !lp->closing; i++)
      check_entry(lp, &lp->entries[i]);
  } else {
    size_t kept = 0;
    /* e stays queued while it is checked: when entry_up() finds the address
     * gone again between the probe and the listener's bind it calls
     * enqueue(), which then only renews e's rechecks. (Marking e unqueued
     * first made enqueue() append a second copy of e, past the end of the
     * queue when it was full.) Only e can be queued from here, so nothing
     * lands after nqueue while this runs. */
    for (size_t i = 0; i < lp->nqueue && !lp->closing; i++) {
      live_entry_t *e = &lp->entries[lp->queue[i]];
      check_entry(lp, e);
      if (e->rechecks > 0)
        e->rechecks--;
      if (e->rechecks > 0)
        lp->queue[kept++] = lp->queue[i];
      else
        e->queued = false;
    }
    if (lp->closing)
      return;
    lp->nqueue = kept;
  }
  if (lp->closing)
    return;
  if (lp->nqueue > 0) {
    lp->delay_ms =
        lp->delay_ms * 10 > RECHECK_MAX_MS ? RECHECK_MAX_MS : lp->delay_ms * 10;
    uv_timer_start(&lp->timer, on_timer, lp->delay_ms, 0);
  } else {
    lp->delay_ms = RECHECK_FIRST_MS;
  }
}

static void schedule(uvip_livepool_t *lp, uint64_t ms) {
  uv_timer_start(&lp->timer, on_timer, ms, 0);
}

static void on_addr_event(uvip_addrwatch_t *w, uvip_addr_event_t ev,
                          const struct sockaddr *addr, unsigned int ifindex,
                          unsigned int prefixlen, unsigned int flags) {
  uvip_livepool_t *lp = uvip_addrwatch_get_data(w);
  (void)prefixlen;
  if (ev == UVIP_ADDR_OVERRUN) {
    lp->sync_all = true;
    schedule(lp, 0);
    return;
  }
  /* A tentative address cannot be bound yet; the kernel sends another
   * RTM_NEWADDR once duplicate address detection has finished. */
  if (ev == UVIP_ADDR_NEW && (flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED)))
    return;
  for (size_t i = lower_bound(lp, addr);
       i < lp->n && uvip__ip_cmp(&lp->entries[i].sa.sa, addr) == 0 &&
       !lp->closing;
       i++) {
    live_entry_t *e = &lp->entries[i];
    if (e->sa.sa.sa_family == AF_INET6 && e->sa.in6.sin6_scope_id != 0 &&
        e->sa.in6.sin6_scope_id != ifindex)
      continue;
    if (ev == UVIP_ADDR_NEW) {
      entry_up(lp, e);
    } else {
      entry_down(lp, e);
      enqueue(lp, e);
    }
  }
  /* New work starts the recheck schedule from its shortest delay. */
  if (!lp->closing && lp->nqueue > 0 && !lp->sync_all) {
    lp->delay_ms = RECHECK_FIRST_MS;
    schedule(lp, lp->delay_ms);
  }
}

UVIP_EXPORT int uvip_livepool_new(uvip_server_t *server,
                                  const uvip_addrs_t *pool,
                                  uvip_livepool_t **out) {
  UVIP_CHECK_ARG(out == NULL);
  *out = NULL;
  UVIP_CHECK_ARG(server == NULL || pool == NULL);
  size_t n = uvip_addrs_count(pool);
  UVIP_CHECK_ARG(n == 0);
  for (size_t i = 0; i < n; i++) {
    const struct sockaddr *sa = uvip_addrs_at(pool, i);
    UVIP_CHECK_ARG((sa->sa_family == AF_INET
                        ? ((const struct sockaddr_in *)sa)->sin_port
                        : ((const struct sockaddr_in6 *)sa)->sin6_port) == 0);
  }

  uvip_livepool_t *lp = calloc(1, sizeof(*lp));
  if (lp == NULL)
    return UV_ENOMEM;
  lp->server = server;
  lp->entries = calloc(n, sizeof(*lp->entries));
  lp->queue = calloc(n, sizeof(*lp->queue));
  int r = UV_ENOMEM;
  if (lp->entries == NULL || lp->queue == NULL)
    goto fail;
  for (size_t i = 0; i < n; i++) {
    const struct sockaddr *sa = uvip_addrs_at(pool, i);
    memcpy(&lp->entries[i].sa, sa, uvip__sa_len(sa));
  }
  lp->n = n;
  qsort(lp->entries, n, sizeof(*lp->entries), entry_cmp);
  lp->delay_ms = RECHECK_FIRST_MS;

  /* Subscribed from now on: the kernel queues what happens before start. */
  uv_loop_t *loop = uvip_server_loop(server);
  if ((r = uvip_addrwatch_new(loop, &lp->watch)) != 0)
    goto fail;
  uvip_addrwatch_set_data(lp->watch, lp);
  uv_timer_init(loop, &lp->timer);
  lp->timer.data = lp;
  /* The server refuses to close (UV_EBUSY) until the live pool, which
   * keeps using it, has closed. */
  uvip__server_attach(server);
  *out = lp;
  return 0;

fail:
  free(lp->entries);
  free(lp->queue);
  free(lp);
  return r;
}

UVIP_EXPORT int uvip_livepool_start(uvip_livepool_t *lp, uvip_livepool_cb cb) {
  UVIP_CHECK_ARG(lp == NULL || cb == NULL || lp->closing);
  if (lp->started)
    return UV_EALREADY;
  UVIP_CHECK_ARG(!uvip_server_is_listening(lp->server));
  int r = uvip_addrwatch_start(lp->watch, on_addr_event);
  if (r != 0)
    return r;
  /* Take over the server's VIPs for pool addresses, whatever their state
   * (listening, failed: absent at uvip_server_listen(), paused), except
   * those draining: they are on their way out. */
  size_t nv = uvip_server_vip_count(lp->server);
  for (size_t i = 0; i < nv; i++) {
    uvip_vip_t *v = uvip_server_vip(lp->server, i);
    if (uvip_vip_state(v) == UVIP_VIP_DRAINING)
      continue;
    live_entry_t *e = find_exact(lp, uvip_vip_addr(v));
    if (e != NULL)
      e->vip = v;
  }
  lp->cb = cb;
  lp->started = true;
  lp->sync_all = true;
  schedule(lp, 0);
  return 0;
}

static void maybe_free(uvip_livepool_t *lp) {
  if (--lp->closes_pending > 0)
    return;
  /* Done with the server: its close callback may close it. */
  uvip__server_detach(lp->server);
  if (lp->close_cb)
    lp->close_cb(lp);
  free(lp->entries);
  free(lp->queue);
  free(lp);
}

static void on_watch_closed(uvip_addrwatch_t *w) {
  maybe_free(uvip_addrwatch_get_data(w));
}

static void on_timer_closed(uv_handle_t *h) { maybe_free(h->data); }

UVIP_EXPORT int uvip_livepool_close(uvip_livepool_t *lp,
                                    uvip_livepool_close_cb cb) {
  UVIP_CHECK_ARG(lp == NULL);
  if (lp->closing)
    return UV_EALREADY;
  lp->closing = true;
  lp->close_cb = cb;
  lp->closes_pending = 2;
  uvip_addrwatch_close(lp->watch, on_watch_closed);
  uv_close((uv_handle_t *)&lp->timer, on_timer_closed);
  return 0;
}

UVIP_EXPORT size_t uvip_livepool_up_count(const uvip_livepool_t *lp) {
  size_t up = 0;
  for (size_t i = 0; lp != NULL && i < lp->n; i++)
    up += vip_listening(lp->entries[i].vip);
  return up;
}

UVIP_EXPORT void *uvip_livepool_get_data(const uvip_livepool_t *lp) {
  return lp ? lp->data : NULL;
}

UVIP_EXPORT void uvip_livepool_set_data(uvip_livepool_t *lp, void *data) {
  if (lp)
    lp->data = data;
}
