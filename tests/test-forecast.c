/* The port-exhaustion forecast model (lib/forecast.c) on synthetic samples:
 * no sockets, no clock; every expected figure follows from the model in
 * docs/census.md ("Forecast").
 * SPDX-License-Identifier: MIT */
#include <math.h>
#include <string.h>

#include "helpers.h"

#define EPS 1e-9

static uvip_forecast_sample_t S(double t, uint64_t in_use, uint64_t tw,
                                int64_t usable, double started) {
  uvip_forecast_sample_t s;
  memset(&s, 0, sizeof(s));
  s.t = t;
  s.in_use = in_use;
  s.time_wait = tw;
  s.usable = usable;
  s.tw_started = started;
  return s;
}

/* Churn from no TIME_WAIT: 100 established, 40 new connections a second,
 * each leaving a TIME_WAIT; 2000 ports. The range goes at
 * (2000 - 100) / 40 = 47.5 s; TIME_WAIT would level off at 40 x 60 = 2400. */
START_TEST(churn_ramp_counted) {
  uvip_forecast_t f;
  ck_assert_int_eq(uvip_forecast_init(&f, 5), 0);
  uvip_forecast_sample_t s = S(0, 100, 0, 2000, -1);
  ck_assert_int_eq(uvip_forecast_update(&f, &s), 0);
  ck_assert_int_eq(f.state, UVIP_FORECAST_UNKNOWN);
  ck_assert(f.eta == -1);
  for (int k = 1; k <= 10; k++) {
    s = S(k, 100 + 40 * (uint64_t)k, 40 * (uint64_t)k, 2000, 40);
    ck_assert_int_eq(uvip_forecast_update(&f, &s), 0);
    ck_assert_int_eq(f.state, UVIP_FORECAST_EXHAUSTING);
    ck_assert_double_eq_tol(f.rate, 40, EPS);
    ck_assert_double_eq_tol(f.growth, 40, EPS);
    ck_assert_double_eq_tol(f.steady, 100 + 40 * 60, EPS);
    ck_assert_double_eq_tol(f.hold, 60, EPS);
    /* Counted from any sample: the same instant, 47.5 s. */
    ck_assert_double_eq_tol(k + f.eta, 47.5, 1e-6);
  }
  /* The last port goes: exhausted, eta 0. */
  s = S(47.5, 2000, 1900, 2000, 40 * 37.5);
  ck_assert_int_eq(uvip_forecast_update(&f, &s), 0);
  ck_assert_int_eq(f.state, UVIP_FORECAST_EXHAUSTED);
  ck_assert(f.eta == 0);
}
END_TEST

/* The same ramp without the kernel's counter: the growth of TIME_WAIT is
 * the inflow during the first minute. */
START_TEST(churn_ramp_uncounted) {
  uvip_forecast_t f;
  uvip_forecast_init(&f, 5);
  for (int k = 0; k <= 4; k++) {
    uvip_forecast_sample_t s = S(2 * k, 100 + 80 * (uint64_t)k,
                                 80 * (uint64_t)k, 2000, -1);
    ck_assert_int_eq(uvip_forecast_update(&f, &s), 0);
  }
  ck_assert_int_eq(f.state, UVIP_FORECAST_EXHAUSTING);
  ck_assert_double_eq_tol(f.rate, 40, EPS);
  ck_assert_double_eq_tol(8 + f.eta, 47.5, 1e-6);
}
END_TEST

/* Steady churn that fits: 10 a second hold 600 TIME_WAITs, plus 100
 * established: 700 of 2000, whether the inflow is counted or taken from
 * Little's law (600 / 60 s). */
START_TEST(steady_below_range) {
  for (int counted = 0; counted < 2; counted++) {
    uvip_forecast_t f;
    uvip_forecast_init(&f, 5);
    for (int k = 0; k < 5; k++) {
      uvip_forecast_sample_t s = S(k, 700, 600, 2000, counted ? 10 : -1);
      ck_assert_int_eq(uvip_forecast_update(&f, &s), 0);
    }
    ck_assert_int_eq(f.state, UVIP_FORECAST_STEADY);
    ck_assert_double_eq_tol(f.rate, 10, EPS);
    ck_assert_double_eq_tol(f.steady, 700, EPS);
    ck_assert(f.eta == -1);
  }
}
END_TEST

/* TIME_WAIT growing towards a level that fits is not exhaustion: 10 a
 * second from zero levels off at 100 + 600 of 2000. */
START_TEST(ramp_that_levels_off) {
  uvip_forecast_t f;
  uvip_forecast_init(&f, 5);
  for (int k = 0; k < 5; k++) {
    uvip_forecast_sample_t s = S(k, 100 + 10 * (uint64_t)k, 10 * (uint64_t)k,
                                 2000, k ? 10 : -1);
    uvip_forecast_update(&f, &s);
  }
  ck_assert_int_eq(f.state, UVIP_FORECAST_STEADY);
  ck_assert_double_eq_tol(f.growth, 10, EPS);
  ck_assert_double_eq_tol(f.steady, 700, EPS);
}
END_TEST

/* A pool that keeps growing runs out whatever TIME_WAIT does: 10 more
 * established a second, 1000 of 2000 in use: 100 s. */
START_TEST(established_growth) {
  uvip_forecast_t f;
  uvip_forecast_init(&f, 5);
  for (int k = 0; k < 3; k++) {
    uvip_forecast_sample_t s = S(k, 980 + 10 * (uint64_t)k, 0, 2000, 0);
    uvip_forecast_update(&f, &s);
  }
  ck_assert_int_eq(f.state, UVIP_FORECAST_EXHAUSTING);
  ck_assert_double_eq_tol(f.rate, 10, EPS);
  ck_assert_double_eq_tol(f.eta, 100, 1e-6);
}
END_TEST

/* With tcp_tw_reuse, TIME_WAITs older than a second do not block: 40 a
 * second blocks 100 + 40 ports, far below 2000, though TIME_WAIT grows. */
START_TEST(tw_reuse) {
  uvip_forecast_t f;
  uvip_forecast_init(&f, 5);
  for (int k = 0; k < 5; k++) {
    uvip_forecast_sample_t s = S(k, 100 + 40 * (uint64_t)k, 40 * (uint64_t)k,
                                 2000, k ? 40 : -1);
    s.tw_reuse = 1;
    uvip_forecast_update(&f, &s);
  }
  ck_assert_int_eq(f.state, UVIP_FORECAST_STEADY);
  ck_assert_double_eq_tol(f.hold, 1, EPS);
  ck_assert_double_eq_tol(f.blocked, 140, EPS);
  ck_assert_double_eq_tol(f.steady, 140, EPS);
  ck_assert_double_eq_tol(f.growth, 0, EPS);
}
END_TEST

/* Smoothing: after a steady rate r1, one interval at r2 moves the average
 * by dt / (tau + dt) of the way. */
START_TEST(smoothing) {
  uvip_forecast_t f;
  uvip_forecast_init(&f, 3);
  uvip_forecast_sample_t s = S(0, 0, 0, 100000, -1);
  uvip_forecast_update(&f, &s);
  s = S(1, 10, 10, 100000, 10); /* sets the averages: 10/s */
  uvip_forecast_update(&f, &s);
  ck_assert_double_eq_tol(f.rate, 10, EPS);
  s = S(2, 60, 60, 100000, 50); /* 50/s over one second, tau 3: a quarter */
  uvip_forecast_update(&f, &s);
  ck_assert_double_eq_tol(f.rate, 20, EPS);
  ck_assert_double_eq_tol(f.growth, 20, EPS);
  /* The counter goes away: Little's law and the growth take over. */
  s = S(3, 60, 60, 100000, -1);
  uvip_forecast_update(&f, &s);
  ck_assert_double_eq_tol(f.growth, 15, EPS);
  ck_assert_double_eq_tol(f.rate, 15, EPS);
}
END_TEST

/* Unknown until two samples, and without a range. */
START_TEST(unknown) {
  uvip_forecast_t f;
  uvip_forecast_init(&f, 5);
  uvip_forecast_sample_t s = S(0, 10, 0, 0, -1);
  uvip_forecast_update(&f, &s);
  s = S(1, 50, 40, 0, 40);
  uvip_forecast_update(&f, &s);
  ck_assert_int_eq(f.state, UVIP_FORECAST_UNKNOWN);
  ck_assert_double_eq_tol(f.rate, 40, EPS); /* still measured */
  ck_assert(f.eta == -1);
}
END_TEST

/* Bad input: UV_EINVAL and the forecast unchanged. */
START_TEST(arguments) {
  uvip_forecast_t f, keep;
  uvip_forecast_sample_t s = S(5, 10, 0, 100, -1);
  ck_assert_int_eq(uvip_forecast_init(NULL, 1), UV_EINVAL);
  ck_assert_int_eq(uvip_forecast_init(&f, 0), UV_EINVAL);
  ck_assert_int_eq(uvip_forecast_init(&f, -1), UV_EINVAL);
  ck_assert_int_eq(uvip_forecast_init(&f, NAN), UV_EINVAL);
  ck_assert_int_eq(uvip_forecast_init(&f, INFINITY), UV_EINVAL);
  ck_assert_int_eq(uvip_forecast_init(&f, 1), 0);
  ck_assert_int_eq(uvip_forecast_update(&f, &s), 0);
  keep = f;
  ck_assert_int_eq(uvip_forecast_update(NULL, &s), UV_EINVAL);
  ck_assert_int_eq(uvip_forecast_update(&f, NULL), UV_EINVAL);
  s = S(5, 10, 0, 100, -1); /* same time */
  ck_assert_int_eq(uvip_forecast_update(&f, &s), UV_EINVAL);
  s = S(4, 10, 0, 100, -1); /* earlier */
  ck_assert_int_eq(uvip_forecast_update(&f, &s), UV_EINVAL);
  s = S(6, 10, 11, 100, -1); /* more TIME_WAIT than in use */
  ck_assert_int_eq(uvip_forecast_update(&f, &s), UV_EINVAL);
  s = S(NAN, 10, 0, 100, -1);
  ck_assert_int_eq(uvip_forecast_update(&f, &s), UV_EINVAL);
  s = S(6, 10, 0, 100, NAN);
  ck_assert_int_eq(uvip_forecast_update(&f, &s), UV_EINVAL);
  ck_assert_mem_eq(&f, &keep, sizeof(f));
  memset(&f, 0, sizeof(f)); /* never initialised: tau 0 */
  s = S(6, 10, 0, 100, -1);
  ck_assert_int_eq(uvip_forecast_update(&f, &s), UV_EINVAL);
  ck_assert_str_eq(uvip_forecast_state_name(UVIP_FORECAST_UNKNOWN), "unknown");
  ck_assert_str_eq(uvip_forecast_state_name(UVIP_FORECAST_STEADY), "steady");
  ck_assert_str_eq(uvip_forecast_state_name(UVIP_FORECAST_EXHAUSTING),
                   "exhausting");
  ck_assert_str_eq(uvip_forecast_state_name(UVIP_FORECAST_EXHAUSTED),
                   "exhausted");
  ck_assert_ptr_null(uvip_forecast_state_name(-1));
  ck_assert_ptr_null(uvip_forecast_state_name(UVIP_FORECAST_EXHAUSTED + 1));
}
END_TEST

int main(void) {
  Suite *s = suite_create("forecast");
  TCase *tc = tcase_create("forecast");
  tcase_add_test(tc, churn_ramp_counted);
  tcase_add_test(tc, churn_ramp_uncounted);
  tcase_add_test(tc, steady_below_range);
  tcase_add_test(tc, ramp_that_levels_off);
  tcase_add_test(tc, established_growth);
  tcase_add_test(tc, tw_reuse);
  tcase_add_test(tc, smoothing);
  tcase_add_test(tc, unknown);
  tcase_add_test(tc, arguments);
  suite_add_tcase(s, tc);
  return th_run_suite(s);
}
