/* Upgrades with workers: the old generation's workers hand their idle
 * connections to the new generation themselves, each on its own loop and
 * over its own copy of the upgrade's channel (a duplicate descriptor: the
 * SOCK_SEQPACKET channel keeps every message whole whoever sends it). The
 * acceptor only gives the orders and adds up what the workers report; no
 * connection passes through it. The new generation sees the channel end
 * once the acceptor and every worker have closed their copies, so a worker
 * that dies mid-way ends its part by dying.
 * SPDX-License-Identifier: MIT */
#include "workers-internal.h"

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

/* ---- On the worker's loop -------------------------------------------- */

static void on_ho_closed(uv_handle_t *h) {
  uvip__wk_ho_t *ho = UVIP_CONTAINER_OF(h, uvip__wk_ho_t, poll);
  close(ho->mover.chan);
  free(ho);
}

static void on_ho_writable(uv_poll_t *p, int status, int events) {
  uvip__wk_ho_t *ho = UVIP_CONTAINER_OF(p, uvip__wk_ho_t, poll);
  (void)events;
  uvip__mover_writable(&ho->mover, status);
}

/* The mover's end: report, then the one close of the poll (and the copy
 * of the channel with it). */
static void on_ho_done(uvip__mover_t *m) {
  uvip__wk_ho_t *ho = UVIP_CONTAINER_OF(m, uvip__wk_ho_t, mover);
  ho->report(m->moved, m->kept, ho->arg);
  uv_close((uv_handle_t *)&ho->poll, on_ho_closed);
}

void uvip__wk_ho_start(uv_loop_t *loop, int chan, uvip_conn_t *list,
                       uvip_server_t *own, uvip_handover_decide_cb decide,
                       uvip_conn_close_cb close_cb,
                       void (*report)(size_t moved, size_t kept, void *arg),
                       void *arg, uvip__wk_ho_t **out) {
  uvip__wk_ho_t *ho = calloc(1, sizeof(*ho));
  *out = NULL;
  if (!ho || uv_poll_init(loop, &ho->poll, chan) != 0) {
    /* Nothing moves from this worker: its connections drain here. */
    free(ho);
    close(chan);
    report(0, 0, arg);
    return;
  }
  ho->report = report;
  ho->arg = arg;
  ho->mover.poll = &ho->poll;
  ho->mover.chan = chan;
  ho->mover.close_cb = close_cb;
  ho->mover.done = on_ho_done;
  uvip__mover_collect(&ho->mover, list, decide);
  /* REUSEPORT: what the worker accepted on its own listeners. */
  for (size_t i = 0; own && i < own->nvips; i++)
    uvip__mover_collect(&ho->mover, own->vips[i]->conns, decide);
  uvip__mover_start(&ho->mover, on_ho_writable);
  *out = ho;
}

void uvip__wk_ho_abort(uvip__wk_ho_t *ho) { uvip__mover_abort(&ho->mover); }

/* ---- On the acceptor -------------------------------------------------- */

void uvip__wk_ho_reported(uvip__wk_t *wk, uint64_t moved, uint64_t kept) {
  uvip_workers_t *ws = wk->ws;
  uvip_upgrade_t *u;
  if (!wk->ho_pending)
    return;
  wk->ho_pending = false;
  ws->ho_moved += moved;
  ws->ho_kept += kept;
  if (--ws->ho_waiting > 0 || !(u = ws->ho_upgrade))
    return;
  ws->ho_upgrade = NULL;
  uvip__handover_workers_done(u, ws->ho_moved, ws->ho_kept);
}

int uvip__wk_handover(uvip_server_t *s, uvip_upgrade_t *u, int chan,
                      uvip_handover_decide_cb decide) {
  uvip_workers_t *ws = s->handoff_ctx;
  unsigned asked = 0;
  if (ws->closing)
    return UV_ECANCELED;
  if (ws->ho_waiting)
    return UV_EBUSY;
  ws->ho_moved = ws->ho_kept = 0;
  for (unsigned i = 0; i < ws->n; i++) {
    uvip__wk_t *wk = &ws->wk[i];
    int copy;
    if (!wk->started || wk->exited)
      continue;
    if (ws->opts.mode == UVIP_WORKER_THREAD) {
      /* A copy per worker: each closes its own when done. */
      if ((copy = fcntl(chan, F_DUPFD_CLOEXEC, 3)) < 0 ||
          !uvip__wk_thread_handover(wk, copy, decide))
        continue; /* that worker's connections drain in it */
    } else if (uvip__wk_proc_handover(wk, chan, decide) != 0) {
      continue;
    }
    wk->ho_pending = true;
    asked++;
  }
  ws->ho_waiting = asked;
  ws->ho_upgrade = asked ? u : NULL;
  return (int)asked;
}

void uvip__wk_handover_detach(uvip_server_t *s) {
  uvip_workers_t *ws = s->handoff_ctx;
  if (ws)
    ws->ho_upgrade = NULL;
}
