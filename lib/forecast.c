/* Port-exhaustion forecast for one (source, destination) pair: smoothed
 * rates from successive samples of its ports in use and in TIME_WAIT, the
 * level they settle at, and the time until the range runs out. The model
 * and its limits are in docs/census.md ("Forecast").
 * SPDX-License-Identifier: MIT */
#include <math.h> /* isnan, isinf: macros */
#include <string.h>

#include "census-internal.h"

static const char *const state_names[] = {"unknown", "steady", "exhausting",
                                          "exhausted"};

UVIP_EXPORT const char *uvip_forecast_state_name(int state) {
  if (state < 0 || state > UVIP_FORECAST_EXHAUSTED)
    return NULL;
  return state_names[state];
}

UVIP_EXPORT int uvip_forecast_init(uvip_forecast_t *f, double tau) {
  UVIP_CHECK_ARG(f == NULL || !(tau > 0) || isinf(tau));
  memset(f, 0, sizeof(*f));
  f->tau = tau;
  f->eta = -1;
  f->hold = UVIP_TIME_WAIT_SECONDS;
  return 0;
}

static double dmax(double a, double b) { return a > b ? a : b; }
static double dmin(double a, double b) { return a < b ? a : b; }

/* Moves an average towards a measured rate. */
static void ewma(double *avg, double raw, double alpha) {
  *avg += alpha * (raw - *avg);
}

/* The forecast from the smoothed rates (the sample's counts in f). */
static void predict(uvip_forecast_t *f, int tw_reuse) {
  double tw = (double)f->time_wait, other = (double)(f->in_use - f->time_wait);
  double inflow, usable = (double)f->usable;

  /* New TIME_WAITs per second: counted by the kernel when known. Else
   * Little's law (TIME_WAIT = inflow x 60 s in a steady state) bounds it
   * from below once it has lasted a minute, and the growth of the count
   * during the first minute. */
  if (f->have_started)
    inflow = f->started_rate;
  else
    inflow = dmax(f->g_tw, tw / UVIP_TIME_WAIT_SECONDS);
  if (inflow < 0)
    inflow = 0;
  f->rate = inflow + dmax(f->g_other, 0);
  if (tw_reuse) {
    /* TIME_WAITs older than a second are reusable by connect(): only the
     * youngest block a port. */
    f->hold = 1;
    f->blocked = other + dmin(tw, inflow * f->hold);
    f->growth = f->g_other;
  } else {
    f->hold = UVIP_TIME_WAIT_SECONDS;
    f->blocked = (double)f->in_use;
    f->growth = f->g_tw + f->g_other;
  }
  f->steady = other + inflow * f->hold;
  f->eta = -1;
  if (f->samples < 2 || f->usable <= 0) {
    f->state = UVIP_FORECAST_UNKNOWN;
  } else if (f->blocked >= usable) {
    f->state = UVIP_FORECAST_EXHAUSTED;
    f->eta = 0;
  } else if (f->growth > 0 && (f->steady >= usable || f->g_other > 0)) {
    /* Growth holds until TIME_WAIT levels off, which is after the range is
     * gone when steady is beyond it: the first expiries come a hold time
     * after the first of the current TIME_WAITs. */
    f->state = UVIP_FORECAST_EXHAUSTING;
    f->eta = (usable - f->blocked) / f->growth;
  } else {
    f->state = UVIP_FORECAST_STEADY;
  }
}

UVIP_EXPORT int uvip_forecast_update(uvip_forecast_t *f,
                                     const uvip_forecast_sample_t *s) {
  UVIP_CHECK_ARG(f == NULL || s == NULL || isnan(s->t) || isnan(s->tw_started));
  UVIP_CHECK_ARG(s->time_wait > s->in_use || !(f->tau > 0));
  UVIP_CHECK_ARG(f->samples > 0 && !(s->t > f->t));
  if (f->samples > 0) {
    double dt = s->t - f->t;
    /* The first interval sets the averages; later ones move them. */
    /* dt / (tau + dt): close to 1 - exp(-dt / tau) for dt < tau, and no
     * libm. */
    double alpha = f->samples == 1 ? 1 : dt / (f->tau + dt);
    double dtw = ((double)s->time_wait - (double)f->time_wait) / dt;
    double dother = ((double)(s->in_use - s->time_wait) -
                     (double)(f->in_use - f->time_wait)) / dt;
    ewma(&f->g_tw, dtw, alpha);
    ewma(&f->g_other, dother, alpha);
    if (s->tw_started >= 0) {
      ewma(&f->started_rate, s->tw_started / dt, f->have_started ? alpha : 1);
      f->have_started = 1;
    } else {
      f->have_started = 0;
      f->started_rate = 0;
    }
  }
  f->t = s->t;
  f->in_use = s->in_use;
  f->time_wait = s->time_wait;
  f->usable = s->usable;
  f->samples++;
  predict(f, s->tw_reuse);
  return 0;
}
