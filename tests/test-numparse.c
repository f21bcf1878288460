/* The examples' one number parser (examples/common.c): digits only, no
 * sign, no space, no wrap, and seconds with at most three decimals.
 * SPDX-License-Identifier: MIT */
#include "common.h"

#include <check.h>
#include <stdint.h>
#include <stdlib.h>

START_TEST(test_num) {
  uint64_t v = 7;
  ck_assert_int_eq(ex_num_parse("0", 0, 10, &v), 0);
  ck_assert_uint_eq(v, 0);
  ck_assert_int_eq(ex_num_parse("18446744073709551615", 0, UINT64_MAX, &v), 0);
  ck_assert_uint_eq(v, UINT64_MAX);
  ck_assert_int_eq(ex_num_parse("007", 0, 10, &v), 0);
  ck_assert_uint_eq(v, 7);
  /* Wraps, signs, spaces, other bases and words are refused. */
  static const char *const bad[] = {
      "", " 1", "1 ", " -1", "-1", "+1", "0x10", "1e3", "inf", "nan",
      "1.5", "abc", "\t2", "1\n"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    v = 7;
    ck_assert_msg(ex_num_parse(bad[i], 0, UINT64_MAX, &v) == UV_EINVAL,
                  "'%s' accepted", bad[i]);
    ck_assert_uint_eq(v, 7);
  }
  ck_assert_int_eq(ex_num_parse(NULL, 0, 1, &v), UV_EINVAL);
  ck_assert_int_eq(ex_num_parse("18446744073709551616", 0, UINT64_MAX, &v),
                   UV_ERANGE);
  ck_assert_int_eq(ex_num_parse("99999999999999999999", 0, UINT64_MAX, &v),
                   UV_ERANGE);
  ck_assert_int_eq(ex_num_parse("11", 0, 10, &v), UV_ERANGE);
  ck_assert_int_eq(ex_num_parse("4", 5, 10, &v), UV_ERANGE);
  ck_assert_uint_eq(v, 7);
}
END_TEST

START_TEST(test_secs) {
  uint64_t ms = 7;
  ck_assert_int_eq(ex_secs_parse("1", 1, 86400000, &ms), 0);
  ck_assert_uint_eq(ms, 1000);
  ck_assert_int_eq(ex_secs_parse("0.5", 1, 86400000, &ms), 0);
  ck_assert_uint_eq(ms, 500);
  ck_assert_int_eq(ex_secs_parse("2.25", 1, 86400000, &ms), 0);
  ck_assert_uint_eq(ms, 2250);
  ck_assert_int_eq(ex_secs_parse("0.001", 1, 86400000, &ms), 0);
  ck_assert_uint_eq(ms, 1);
  static const char *const bad[] = {"", "inf", "nan", "-1", " 1", "1.",
                                    ".5", "0.0001", "1e3", "1,5", "0x1"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    ms = 7;
    ck_assert_msg(ex_secs_parse(bad[i], 1, 86400000, &ms) == UV_EINVAL,
                  "'%s' accepted", bad[i]);
    ck_assert_uint_eq(ms, 7);
  }
  ck_assert_int_eq(ex_secs_parse("0", 1, 86400000, &ms), UV_ERANGE);
  ck_assert_int_eq(ex_secs_parse("86400.001", 1, 86400000, &ms), UV_ERANGE);
  ck_assert_int_eq(ex_secs_parse("99999999999999999999", 1, 86400000, &ms),
                   UV_ERANGE);
  ck_assert_uint_eq(ms, 7);
}
END_TEST

int main(void) {
  Suite *s = suite_create("numparse");
  TCase *tc = tcase_create("numparse");
  tcase_add_test(tc, test_num);
  tcase_add_test(tc, test_secs);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
