/* Tracker: a periodic census on a loop. The dump runs on the libuv
 * threadpool into one of two census buffers while the loop keeps the other
 * for the application and for comparing samples (threshold crossings).
 * SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
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
  /* Forecasts per tuple row of each buffer, and raised EXHAUSTION flags;
   * grown (on the loop) to the most tuples a sample has had. fc_n[b] rows
   * of buffer b are valid. VIP forecasts of the shown buffer. */
  uvip_forecast_t *fc[2];
  unsigned char *fc_raised[2];
  size_t fc_cap[2], fc_n[2];
  uvip_forecast_t *vfc;
  size_t vfc_cap, vfc_n;
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
  o->exhaustion_seconds = 300;
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
  UVIP_CHECK_ARG(!(o.exhaustion_seconds >= 0 && o.exhaustion_seconds < 1e12));
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
                 const uvip_census_listener_t *l, const uvip_forecast_t *f) {
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
  ev.forecast = f;
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
      emit(t, UVIP_EVENT_PORTS, 1, tu->utilisation, thr, tu, NULL, NULL);
  }
  for (size_t j = 0; P && j < uvip_census_tuple_count(P); j++) {
    const uvip_census_tuple_t *pt = uvip_census_tuple(P, j);
    if (pt->utilisation < lo)
      break;
    if (!pf[j])
      continue;
    long ni = uvip__census_find_tuple(N, pt);
    if (ni < 0)
      emit(t, UVIP_EVENT_PORTS, 0, 0, thr, pt, NULL, NULL);
    else if (!nf[ni])
      emit(t, UVIP_EVENT_PORTS, 0, uvip_census_tuple(N, (size_t)ni)->utilisation,
           thr, uvip_census_tuple(N, (size_t)ni), NULL, NULL);
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
      emit(t, UVIP_EVENT_LISTEN_QUEUE, nf[i], u, thr, NULL, l, NULL);
  }
  for (size_t j = 0; P && j < uvip_census_listener_count(P); j++) {
    if (pf[j] && uvip__census_find_listener(N, uvip_census_listener(P, j)) < 0)
      emit(t, UVIP_EVENT_LISTEN_QUEUE, 0, 0, thr, NULL,
           uvip_census_listener(P, j), NULL);
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
      emit(t, UVIP_EVENT_TIME_WAIT, now, u, thr, NULL, NULL, NULL);
    }
  }
  if (t->opts.overflow && info->has_netstat_delta) {
    /* ListenDrops already includes ListenOverflows. */
    const uvip_netstat_t *d = &info->netstat_delta;
    uint64_t rise = d->listen_drops + d->tw_overflow;
    int now = rise > 0;
    if (now != t->overflow_raised) {
      t->overflow_raised = now;
      emit(t, UVIP_EVENT_OVERFLOW, now, (double)rise, 0, NULL, NULL, NULL);
    }
  }
}


/* ------------------------------------------------------------------------ */
/* Forecasts                                                                */

/* Grows buffer b's rows to n (on the loop, only when a sample has more
 * tuples than any before). */
static int fc_reserve(uvip_tracker_t *t, int b, size_t n) {
  if (n <= t->fc_cap[b])
    return 0;
  uvip_forecast_t *f = realloc(t->fc[b], n * sizeof(*f));
  if (!f)
    return UV_ENOMEM;
  t->fc[b] = f;
  unsigned char *r = realloc(t->fc_raised[b], n);
  if (!r)
    return UV_ENOMEM;
  t->fc_raised[b] = r;
  t->fc_cap[b] = n;
  return 0;
}

static int is_loopback(const struct sockaddr_storage *ss) {
  if (ss->ss_family == AF_INET)
    return (ntohl(((const struct sockaddr_in *)ss)->sin_addr.s_addr) >> 24) ==
           127;
  return ss->ss_family == AF_INET6 &&
         IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)ss)->sin6_addr);
}

/* Whether connect() reuses the pair's TIME_WAIT ports (tcp_twsk_unique():
 * tcp_tw_reuse 1, or 2 with a loopback address on either side). */
static int pair_reuse(const uvip_limits_t *L, const uvip_census_tuple_t *tu) {
  if (!L || L->tcp_tw_reuse <= 0)
    return 0;
  return L->tcp_tw_reuse == 1 || is_loopback(&tu->local) ||
         is_loopback(&tu->remote);
}

static double tw_total(const uvip_census_t *c) {
  const uvip_limits_t *L = uvip_census_limits(c);
  const uvip_census_counts_t *n = uvip_census_totals(c);
  if (L && L->sock_tw >= 0)
    return (double)L->sock_tw;
  return (double)(n->in[UVIP_TCP_TIME_WAIT] + n->out[UVIP_TCP_TIME_WAIT]);
}

/* Is the forecast worse (closer to running out) than the other? */
static int worse(const uvip_forecast_t *a, const uvip_forecast_t *b) {
  if (a->state != b->state)
    return a->state > b->state;
  return a->state == UVIP_FORECAST_EXHAUSTING && a->eta < b->eta;
}

/* Per VIP: the pairs' sums, and the state and eta of the worst pair. */
static void vip_forecasts(uvip_tracker_t *t, uvip_census_t *N, int b) {
  size_t nv = uvip_census_vip_count(N);
  t->vfc_n = 0;
  if (nv > t->vfc_cap) {
    uvip_forecast_t *v = realloc(t->vfc, nv * sizeof(*v));
    if (!v)
      return;
    t->vfc = v;
    t->vfc_cap = nv;
  }
  if (nv == 0)
    return; /* vfc may still be NULL: memset(NULL, 0, 0) is undefined */
  memset(t->vfc, 0, nv * sizeof(*t->vfc));
  for (size_t i = 0; i < nv; i++)
    t->vfc[i].eta = -1;
  for (size_t i = 0; i < t->fc_n[b]; i++) {
    const uvip_forecast_t *f = &t->fc[b][i];
    long vi = uvip__census_find_vip(N, &uvip_census_tuple(N, i)->local);
    if (vi < 0)
      continue;
    uvip_forecast_t *v = &t->vfc[vi];
    if (v->samples == 0 || worse(f, v)) {
      v->state = f->state;
      v->eta = f->eta;
      v->hold = f->hold;
      v->usable = f->usable;
      v->samples = f->samples;
    }
    v->rate += f->rate;
    v->growth += f->growth;
    v->steady += f->steady;
    v->blocked += f->blocked;
    v->in_use += f->in_use;
    v->time_wait += f->time_wait;
  }
  t->vfc_n = nv;
}

/* Updates the forecast of every tuple of N from its row in P. */
static void update_forecasts(uvip_tracker_t *t, uvip_census_t *N,
                             uvip_census_t *P) {
  int b = !t->shown, pb = t->shown;
  size_t n = uvip_census_tuple_count(N);
  const uvip_census_info_t *info = uvip_census_info(N);
  const uvip_limits_t *L = uvip_census_limits(N);
  double now = ((double)info->sampled_at_ms - (double)info->duration_ns / 2e6) / 1e3;
  double tau = t->opts.forecast_tau_ms ? (double)t->opts.forecast_tau_ms / 1e3
                                       : 3 * (double)t->opts.interval_ms / 1e3;
  double started = -1, tw_now = tw_total(N);

  t->fc_n[b] = 0;
  t->vfc_n = 0; /* N becomes the shown census: no VIP rows of P's */
  if (fc_reserve(t, b, n) != 0)
    return;
  /* Sockets that entered TIME_WAIT in the namespace since P (the kernel
   * counts TW and TWKilled when it arms the timer), shared out over the
   * pairs in proportion to their TIME_WAITs now: in a steady state each
   * pair's count is its inflow x 60 s. */
  if (P && info->has_netstat_delta) {
    const uvip_netstat_t *d = &info->netstat_delta;
    started = (double)(d->tw + d->tw_killed);
  }
  for (size_t i = 0; i < n; i++) {
    const uvip_census_tuple_t *tu = uvip_census_tuple(N, i);
    uvip_forecast_t *f = &t->fc[b][i];
    long pi = P ? uvip__census_find_tuple(P, tu) : -1;
    uvip_forecast_sample_t smp;
    if (pi >= 0 && (size_t)pi < t->fc_n[pb]) {
      *f = t->fc[pb][pi];
      t->fc_raised[b][i] = t->fc_raised[pb][pi];
    } else {
      uvip_forecast_init(f, tau);
      t->fc_raised[b][i] = 0;
    }
    memset(&smp, 0, sizeof(smp));
    smp.t = now;
    smp.in_use = tu->in_use;
    smp.time_wait = tu->time_wait;
    smp.usable = tu->usable;
    smp.tw_started = started < 0  ? -1
                     : tw_now > 0 ? started * (double)tu->time_wait / tw_now
                                  : 0;
    smp.tw_reuse = pair_reuse(L, tu);
    /* A clock that did not move keeps the previous forecast. */
    (void)uvip_forecast_update(f, &smp);
  }
  t->fc_n[b] = n;
  vip_forecasts(t, N, b);
}

/* UVIP_EVENT_EXHAUSTION: raised when a pair runs out within the threshold,
 * ended past threshold / rearm, when steady, or when the pair is gone. */
static void check_exhaustion(uvip_tracker_t *t, uvip_census_t *N,
                             uvip_census_t *P) {
  int b = !t->shown, pb = t->shown;
  double thr = t->opts.exhaustion_seconds, hi = thr / t->opts.rearm;
  for (size_t i = 0; i < t->fc_n[b]; i++) {
    const uvip_forecast_t *f = &t->fc[b][i];
    int was = t->fc_raised[b][i];
    int soon = f->state == UVIP_FORECAST_EXHAUSTED ||
               f->state == UVIP_FORECAST_EXHAUSTING;
    int now = soon && f->eta <= (was ? hi : thr);
    t->fc_raised[b][i] = (unsigned char)now;
    if (now != was)
      emit(t, UVIP_EVENT_EXHAUSTION, now, f->eta, thr, uvip_census_tuple(N, i),
           NULL, f);
  }
  for (size_t j = 0; P && j < t->fc_n[pb]; j++) {
    if (t->fc_raised[pb][j] &&
        uvip__census_find_tuple(N, uvip_census_tuple(P, j)) < 0)
      emit(t, UVIP_EVENT_EXHAUSTION, 0, -1, thr, uvip_census_tuple(P, j), NULL,
           &t->fc[pb][j]);
  }
}

static void free_tracker(uvip_tracker_t *t) {
  uvip_tracker_close_cb cb = t->close_cb;
  if (cb)
    cb(t);
  for (int b = 0; b < 2; b++) {
    free(t->fc[b]);
    free(t->fc_raised[b]);
  }
  free(t->vfc);
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
    update_forecasts(t, N, P);
    if (t->opts.exhaustion_seconds > 0)
      check_exhaustion(t, N, P);
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

/* The shown buffer's rows (the census the sample callback got), or NULL
 * before the first good sample. */
static const uvip_census_t *shown(const uvip_tracker_t *t) {
  return t->have_shown ? t->buf[t->shown] : NULL;
}

UVIP_EXPORT int uvip_tracker_forecast(const uvip_tracker_t *t, size_t i,
                                      uvip_forecast_t *out) {
  UVIP_CHECK_ARG(t == NULL || out == NULL);
  if (!shown(t) || i >= t->fc_n[t->shown])
    return UV_ENOENT;
  *out = t->fc[t->shown][i];
  return 0;
}

UVIP_EXPORT int uvip_tracker_vip_forecast(const uvip_tracker_t *t, size_t i,
                                          uvip_forecast_t *out) {
  UVIP_CHECK_ARG(t == NULL || out == NULL);
  if (!shown(t) || i >= t->vfc_n)
    return UV_ENOENT;
  *out = t->vfc[i];
  return 0;
}

UVIP_EXPORT int uvip_tracker_render(const uvip_tracker_t *t,
                                    const uvip_capacity_t *cap, int format,
                                    size_t max_tuples, char *buf, size_t *len) {
  UVIP_CHECK_ARG(t == NULL);
  const uvip_census_t *c = shown(t);
  if (!c)
    return UV_ENOENT;
  return uvip__census_render(c, cap, format, max_tuples,
                             t->fc_n[t->shown] ? t->fc[t->shown] : NULL,
                             t->vfc_n ? t->vfc : NULL, buf, len);
}

UVIP_EXPORT void *uvip_tracker_get_data(const uvip_tracker_t *t) {
  return t ? t->data : NULL;
}

UVIP_EXPORT void uvip_tracker_set_data(uvip_tracker_t *t, void *data) {
  if (t)
    t->data = data;
}
