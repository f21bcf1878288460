/* Names of the public enums: every value has its documented name, anything
 * else NULL. */
#include <check.h>
#include <stdlib.h>
#include <uvip.h>
#include <uvip/census.h>

#include "helpers.h"

START_TEST(test_vip_state_name) {
  ck_assert_str_eq(uvip_vip_state_name(UVIP_VIP_IDLE), "idle");
  ck_assert_str_eq(uvip_vip_state_name(UVIP_VIP_LISTENING), "listening");
  ck_assert_str_eq(uvip_vip_state_name(UVIP_VIP_FAILED), "failed");
  ck_assert_str_eq(uvip_vip_state_name(UVIP_VIP_DRAINING), "draining");
  ck_assert_str_eq(uvip_vip_state_name(UVIP_VIP_STOPPED), "stopped");
  ck_assert_str_eq(uvip_vip_state_name(UVIP_VIP_PAUSED), "paused");
  ck_assert_ptr_null(uvip_vip_state_name(-1));
  ck_assert_ptr_null(uvip_vip_state_name(UVIP_VIP_PAUSED + 1));
}
END_TEST

START_TEST(test_event_kind_name) {
  ck_assert_str_eq(uvip_event_kind_name(UVIP_EVENT_PORTS), "ports");
  ck_assert_str_eq(uvip_event_kind_name(UVIP_EVENT_TIME_WAIT), "time_wait");
  ck_assert_str_eq(uvip_event_kind_name(UVIP_EVENT_LISTEN_QUEUE), "listen_queue");
  ck_assert_str_eq(uvip_event_kind_name(UVIP_EVENT_OVERFLOW), "overflow");
  ck_assert_str_eq(uvip_event_kind_name(UVIP_EVENT_EXHAUSTION), "exhaustion");
  ck_assert_ptr_null(uvip_event_kind_name(0));
  ck_assert_ptr_null(uvip_event_kind_name(-1));
  ck_assert_ptr_null(uvip_event_kind_name(UVIP_EVENT_EXHAUSTION + 1));
}
END_TEST

START_TEST(test_tcp_state_name) {
  ck_assert_str_eq(uvip_tcp_state_name(UVIP_TCP_ESTABLISHED), "established");
  ck_assert_str_eq(uvip_tcp_state_name(UVIP_TCP_CLOSING), "closing");
  ck_assert_ptr_null(uvip_tcp_state_name(-1));
  ck_assert_ptr_null(uvip_tcp_state_name(UVIP_TCP_STATE_COUNT));
}
END_TEST

int main(void) {
  Suite *s = suite_create("names");
  TCase *tc = tcase_create("names");
  tcase_add_test(tc, test_vip_state_name);
  tcase_add_test(tc, test_event_kind_name);
  tcase_add_test(tc, test_tcp_state_name);
  suite_add_tcase(s, tc);
  return th_run_suite(s);
}
