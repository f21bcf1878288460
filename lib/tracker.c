/* Tracker: a periodic census on a loop. The dump runs on the libuv
 * threadpool into one of two census buffers while the loop keeps the other
 * for the application and for comparing samples (threshold crossings).
 * SPDX-License-Identifier: MIT */
#include <stdlib.h>
#include <string.h>

#include "census-internal.h"

struct uvip_tracker_s {
  uv_loop_t *loop;
  void *data;
  uvip_tracker_options_t opts;
  uvip_census_t *buf[2];
  int shown;      /* buf[shown] holds the last good sample */
  int have_shown; /* a good sample exists */
  uv_timer_t timer;
  uv_work_t work;
  int work_rc;
  int running;  /* a sample is on the threadpool */
  int started;
  int closing;
  int timer_open;
  int tw_raised, overflow_raised;
  uint64_t samples, skipped;
  uvip_tracker_sample_cb sample_cb;
  uvip_tracker_event_cb event_cb;
  uvip_tracker_close_cb close_cb;
};

UVIP_EXPORT int uvip_tracker_options_init(uvip_tracker_options_t *o) {
  UVIP_CHECK_ARG(o == NULL);
  memset(o, 0, sizeof(*o));
  o->interval_ms = 5000;
  o->ports_use = 0.8;
  o->time_wait_use = 0.8;
  o->listen_queue_use = 0.8;
  o->overflow = 1;
  o->rearm = 0.9;
  return uvip_census_options_init(&o->census);
}

static int bad_fraction(double f) { return !(f >= 0 && f <= 1); }

UVIP_EXPORT int uvip_tracker_new(uv_loop_t *loop, const uvip_addrs_t *vips,
                                 const uvip_tracker_options_t *opts,
                                 uvip_tracker_t **out) {
  uvip_tracker_options_t o;
  uvip_tracker_t *t;
  int rc;

  UVIP_CHECK_ARG(loop == NULL || out == NULL);
  *out = NULL;
  if (opts) {
    o = *opts;
  } else {
    uvip_tracker_options_init(&o);
  }
  UVIP_CHECK_ARG(o.interval_ms < 10);
  UVIP_CHECK_ARG(bad_fraction(o.ports_use) || bad_fraction(o.time_wait_use) ||
                 bad_fraction(o.listen_queue_use));
  UVIP_CHECK_ARG(!(o.rearm > 0 && o.rearm <= 1));
  t = calloc(1, sizeof(*t));
  if (!t)
    return UV_ENOMEM;
  t->loop = loop;
  t->opts = o;
  if ((rc = uvip_census_new(vips, &o.census, &t->buf[0])) != 0 ||
      (rc = uvip_census_new(vips, &o.census, &t->buf[1])) != 0) {
    uvip_census_free(t->buf[0]);
    free(t);
    return rc;
  }
  if ((rc = uv_timer_init(loop, &t->timer)) != 0) {
    uvip_census_free(t->buf[0]);
    uvip_census_free(t->buf[1]);
    free(t);
    return rc;
  }
  t->timer.data = t;
  t->timer_open = 1;
  *out = t;
  return 0;
}

static void emit(uvip_tracker_t *t, uvip_event_kind_t kind, int raised,
                 double value, double thr, const uvip_census_tuple_t *tu,
                 const uvip_census_listener_t *l) {
  uvip_tracker_event_t ev;
  /* Stopped or closed from an earlier event of this sample: nothing more
   * is reported (uvip_tracker_stop(), like uv_close(), ends callbacks). */
  if (!t->event_cb || !t->started)
    return;
  memset(&ev, 0, sizeof(ev));
  ev.kind = kind;
  ev.raised = raised;
  ev.value = value;
  ev.threshold = thr;
  ev.tuple = tu;
  ev.listener = l;
  t->event_cb(t, &ev);
}

/* Tuples come worst first, so only a prefix can be at or above the re-arm
 * level, and a tuple raised before is within the previous prefix. */
static void check_ports(uvip_tracker_t *t, uvip_census_t *N, uvip_census_t *P) {
  double thr = t->opts.ports_use, lo = thr * t->opts.rearm;
  unsigned char *nf = uvip__census_tuple_flags(N);
  unsigned char *pf = P ? uvip__census_tuple_flags(P) : NULL;
  for (size_t i = 0; i < uvip_census_tuple_count(N); i++) {
    const uvip_census_tuple_t *tu = uvip_census_tuple(N, i);
    if (tu->utilisation < lo)
      break;
    long pi = P ? uvip__census_find_tuple(P, tu) : -1;
    int was = pi >= 0 && pf[pi];
    nf[i] = was || tu->utilisation >= thr;
    if (nf[i] && !was)
      emit(t, UVIP_EVENT_PORTS, 1, tu->utilisation, thr, tu, NULL);
  }
  for (size_t j = 0; P && j < uvip_census_tuple_count(P); j++) {
    const uvip_census_tuple_t *pt = uvip_census_tuple(P, j);
    if (pt->utilisation < lo)
      break;
    if (!pf[j])
      continue;
    long ni = uvip__census_find_tuple(N, pt);
    if (ni < 0)
      emit(t, UVIP_EVENT_PORTS, 0, 0, thr, pt, NULL);
    else if (!nf[ni])
      emit(t, UVIP_EVENT_PORTS, 0, uvip_census_tuple(N, (size_t)ni)->utilisation,
           thr, uvip_census_tuple(N, (size_t)ni), NULL);
  }
}

static double queue_use(const uvip_census_listener_t *l) {
  return l->backlog > 0 ? (double)l->queue / (double)l->backlog : 0;
}

static void check_listeners(uvip_tracker_t *t, uvip_census_t *N,
                            uvip_census_t *P) {
  double thr = t->opts.listen_queue_use, lo = thr * t->opts.rearm;
  unsigned char *nf = uvip__census_listener_flags(N);
  unsigned char *pf = P ? uvip__census_listener_flags(P) : NULL;
  for (size_t i = 0; i < uvip_census_listener_count(N); i++) {
    const uvip_census_listener_t *l = uvip_census_listener(N, i);
    double u = queue_use(l);
    long pi = P ? uvip__census_find_listener(P, l) : -1;
    int was = pi >= 0 && pf[pi];
    nf[i] = was ? u >= lo : u >= thr;
    if (nf[i] != was)
      emit(t, UVIP_EVENT_LISTEN_QUEUE, nf[i], u, thr, NULL, l);
  }
  for (size_t j = 0; P && j < uvip_census_listener_count(P); j++) {
    if (pf[j] && uvip__census_find_listener(N, uvip_census_listener(P, j)) < 0)
      emit(t, UVIP_EVENT_LISTEN_QUEUE, 0, 0, thr, NULL,
           uvip_census_listener(P, j));
  }
}

static void check_globals(uvip_tracker_t *t, uvip_census_t *N) {
  const uvip_limits_t *L = uvip_census_limits(N);
  const uvip_census_info_t *info = uvip_census_info(N);
  if (!L)
    return;
  if (t->opts.time_wait_use > 0 && L->tcp_max_tw_buckets > 0) {
    const uvip_census_counts_t *c = uvip_census_totals(N);
    double tw = L->sock_tw >= 0 ? (double)L->sock_tw
                                : (double)(c->in[UVIP_TCP_TIME_WAIT] +
                                           c->out[UVIP_TCP_TIME_WAIT]);
    double u = tw / (double)L->tcp_max_tw_buckets, thr = t->opts.time_wait_use;
    int now = t->tw_raised ? u >= thr * t->opts.rearm : u >= thr;
    if (now != t->tw_raised) {
      t->tw_raised = now;
      emit(t, UVIP_EVENT_TIME_WAIT, now, u, thr, NULL, NULL);
    }
  }
  if (t->opts.overflow && info->has_netstat_delta) {
    /* ListenDrops already includes ListenOverflows. */
    const uvip_netstat_t *d = &info->netstat_delta;
    uint64_t rise = d->listen_drops + d->tw_overflow;
    int now = rise > 0;
    if (now != t->overflow_raised) {
      t->overflow_raised = now;
      emit(t, UVIP_EVENT_OVERFLOW, now, (double)rise, 0, NULL, NULL);
    }
  }
}

static void free_tracker(uvip_tracker_t *t) {
  uvip_tracker_close_cb cb = t->close_cb;
  if (cb)
    cb(t);
  uvip_census_free(t->buf[0]);
  uvip_census_free(t->buf[1]);
  free(t);
}

static void work_cb(uv_work_t *req) {
  uvip_tracker_t *t = req->data;
  t->work_rc = uvip_census_sample(t->buf[!t->shown]);
}

static void after_work_cb(uv_work_t *req, int status) {
  uvip_tracker_t *t = req->data;
  uvip_census_t *N = t->buf[!t->shown];
  uvip_census_t *P = t->have_shown ? t->buf[t->shown] : NULL;
  int rc = status ? status : t->work_rc;

  t->running = 0;
  if (t->closing) {
    if (!t->timer_open)
      free_tracker(t);
    return;
  }
  if (!t->started)
    return;
  t->samples++;
  if (rc == 0) {
    if (t->opts.ports_use > 0)
      check_ports(t, N, P);
    if (t->opts.listen_queue_use > 0)
      check_listeners(t, N, P);
    check_globals(t, N);
    /* A failed sample is not shown as "everything cleared": only good
     * samples become the reference. */
    t->shown = !t->shown;
    t->have_shown = 1;
  }
  if (t->sample_cb && t->started)
    t->sample_cb(t, N, rc);
}

static void timer_cb(uv_timer_t *timer) {
  uvip_tracker_t *t = timer->data;
  uvip_census_t *next = t->buf[!t->shown];
  if (t->running) {
    t->skipped++;
    return;
  }
  if (t->have_shown) {
    const uvip_limits_t *L = uvip_census_limits(t->buf[t->shown]);
    if (L && !(L->missing & UVIP_LIMIT_NETSTAT))
      uvip__census_set_baseline(next, &L->netstat);
  }
  t->work.data = t;
  if (uv_queue_work(t->loop, &t->work, work_cb, after_work_cb) == 0)
    t->running = 1;
}

UVIP_EXPORT int uvip_tracker_start(uvip_tracker_t *t,
                                   uvip_tracker_sample_cb sample_cb,
                                   uvip_tracker_event_cb event_cb) {
  UVIP_CHECK_ARG(t == NULL || t->closing);
  if (t->started)
    return UV_EALREADY;
  t->sample_cb = sample_cb;
  t->event_cb = event_cb;
  int rc = uv_timer_start(&t->timer, timer_cb, 0, t->opts.interval_ms);
  if (rc == 0)
    t->started = 1;
  return rc;
}

UVIP_EXPORT int uvip_tracker_stop(uvip_tracker_t *t) {
  UVIP_CHECK_ARG(t == NULL);
  t->started = 0;
  if (t->timer_open)
    uv_timer_stop(&t->timer);
  return 0;
}

static void on_timer_close(uv_handle_t *h) {
  uvip_tracker_t *t = h->data;
  t->timer_open = 0;
  if (!t->running)
    free_tracker(t);
}

UVIP_EXPORT int uvip_tracker_close(uvip_tracker_t *t, uvip_tracker_close_cb cb) {
  UVIP_CHECK_ARG(t == NULL || t->closing);
  uvip_tracker_stop(t);
  t->closing = 1;
  t->close_cb = cb;
  uv_close((uv_handle_t *)&t->timer, on_timer_close);
  return 0;
}

UVIP_EXPORT int uvip_tracker_counts(const uvip_tracker_t *t, uint64_t *samples,
                                    uint64_t *skipped) {
  UVIP_CHECK_ARG(t == NULL);
  if (samples)
    *samples = t->samples;
  if (skipped)
    *skipped = t->skipped;
  return 0;
}

UVIP_EXPORT void *uvip_tracker_get_data(const uvip_tracker_t *t) {
  return t ? t->data : NULL;
}

UVIP_EXPORT void uvip_tracker_set_data(uvip_tracker_t *t, void *data) {
  if (t)
    t->data = data;
}
