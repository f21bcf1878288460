/* Prefixes used whole (uvip_prefix_t): parsing without expansion, errors
 * with offsets, formatting, membership.
 * SPDX-License-Identifier: MIT */
#include <check.h>

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include "helpers.h"

static const char *fmt(const uvip_prefix_t *p, char *buf) {
  ck_assert_int_eq(uvip_prefix_format(p, buf, UVIP_PREFIXSTRLEN), 0);
  return buf;
}

static const struct {
  const char *spec, *text;
  int family;
  unsigned int len;
} valid[] = {
    {"fd00::/64", "fd00::/64", AF_INET6, 64},
    {"fd00:1::/64", "fd00:1::/64", AF_INET6, 64},
    /* host bits are cleared, as in address specs */
    {"fd00:1::77/64", "fd00:1::/64", AF_INET6, 64},
    {" [fd00:1::/48] ", "fd00:1::/48", AF_INET6, 48},
    {"::/0", "::/0", AF_INET6, 0},
    {"fd00::1:2/127", "fd00::1:2/127", AF_INET6, 127},
    {"fd00::1:3/128", "fd00::1:3/128", AF_INET6, 128},
    {"fd00:1:2:3:4:5:6:7/61", "fd00:1:2:0:0:0:0:0/61", AF_INET6, 61},
    {"10.0.0.0/8", "10.0.0.0/8", AF_INET, 8},
    {"198.18.3.200/23", "198.18.2.0/23", AF_INET, 23},
    {"10.1.2.3/32", "10.1.2.3/32", AF_INET, 32},
    {"10.1.2.3/0", "0.0.0.0/0", AF_INET, 0},
};

START_TEST(test_valid) {
  for (size_t i = 0; i < sizeof(valid) / sizeof(valid[0]); i++) {
    uvip_prefix_t p, want;
    char buf[UVIP_PREFIXSTRLEN], err[128] = "x";
    memset(&p, 0xa5, sizeof(p));
    ck_assert_msg(uvip_prefix_parse(valid[i].spec, &p, err, sizeof(err)) == 0,
                  "'%s': %s", valid[i].spec, err);
    ck_assert_str_eq(err, "");
    ck_assert_int_eq(p.family, valid[i].family);
    ck_assert_uint_eq(p.len, valid[i].len);
    /* The expected text parsed by inet_pton: the canonical form. */
    memset(&want, 0, sizeof(want));
    want.family = valid[i].family;
    want.len = valid[i].len;
    char ip[64];
    snprintf(ip, sizeof(ip), "%s", valid[i].text);
    *strchr(ip, '/') = '\0';
    ck_assert_int_eq(inet_pton(want.family, ip, &want.addr), 1);
    ck_assert_mem_eq(&p.addr, &want.addr,
                     want.family == AF_INET ? 4 : 16);
    char canon[UVIP_PREFIXSTRLEN];
    ck_assert_int_eq(uvip_prefix_format(&want, canon, sizeof(canon)), 0);
    ck_assert_str_eq(fmt(&p, buf), canon);
  }
}
END_TEST

static const struct {
  const char *spec, *msg;
} invalid[] = {
    {"", "empty prefix at offset 0"},
    {"   ", "empty prefix at offset 3"},
    {"fd00::1", "'fd00::1' is not a prefix (A/N) at offset 0"},
    {"10.0.0.0/8,10.1.0.0/16", "'10.0.0.0/8,10.1.0.0/16' is not one prefix at offset 0"},
    {"[fd00::/64]:80",
     "'[fd00::/64]:80' is not a prefix: a prefix pool has no port, and "
     "brackets enclose it whole at offset 0"},
    {"/64", "missing address at offset 0"},
    {"fd00::/", "missing prefix length at offset 7"},
    {"fd00::/129", "bad prefix length '129' at offset 7"},
    {"10.0.0.0/33", "bad prefix length '33' at offset 9"},
    {"fd00::/6x", "bad prefix length '6x' at offset 7"},
    {"fd00::/99999999999999999999", "bad prefix length '99999999999999999999' at offset 7"},
    {"fd00::zz/64", "bad IPv6 address 'fd00::zz' at offset 0"},
    {"10.0.0.256/24", "bad IPv4 address '10.0.0.256' at offset 0"},
    {"[10.0.0.0/8]", "bad IPv6 address '10.0.0.0' at offset 1"},
    {"fd00::-fd00::5/64", "bad IPv6 address 'fd00::-fd00::5' at offset 0"},
    {"fd00:0000:0000:0000:0000:0000:0000:0000:0000:0000/64",
     "bad IPv6 address 'fd00:0000:0000:0000:0000:0000:0000:0000:0000:0000' at "
     "offset 0"},
};

START_TEST(test_invalid) {
  for (size_t i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++) {
    uvip_prefix_t p, before;
    char err[256];
    memset(&p, 0x5a, sizeof(p));
    before = p;
    ck_assert_int_eq(uvip_prefix_parse(invalid[i].spec, &p, err, sizeof(err)),
                     UV_EINVAL);
    ck_assert_str_eq(err, invalid[i].msg);
    /* Nothing half written. */
    ck_assert_mem_eq(&p, &before, sizeof(p));
    /* errbuf may be NULL or tiny. */
    ck_assert_int_eq(uvip_prefix_parse(invalid[i].spec, &p, NULL, 0), UV_EINVAL);
    ck_assert_int_eq(uvip_prefix_parse(invalid[i].spec, &p, err, 4), UV_EINVAL);
    ck_assert_uint_le(strlen(err), 3);
  }
}
END_TEST

START_TEST(test_arguments) {
  uvip_prefix_t p;
  char err[64], buf[UVIP_PREFIXSTRLEN];
  struct sockaddr_in in = {.sin_family = AF_INET};
  ck_assert_int_eq(uvip_prefix_parse(NULL, &p, err, sizeof(err)), UV_EINVAL);
  ck_assert_str_eq(err, "spec is NULL");
  ck_assert_int_eq(uvip_prefix_parse("fd00::/64", NULL, err, sizeof(err)),
                   UV_EINVAL);
  ck_assert_str_eq(err, "prefix is NULL");
  ck_assert_int_eq(uvip_prefix_parse(NULL, NULL, NULL, 0), UV_EINVAL);

  ck_assert_int_eq(uvip_prefix_parse("fd00:1::/64", &p, NULL, 0), 0);
  ck_assert_int_eq(uvip_prefix_format(NULL, buf, sizeof(buf)), UV_EINVAL);
  ck_assert_int_eq(uvip_prefix_format(&p, NULL, 0), UV_EINVAL);
  /* Too small: an empty string, never a truncated prefix. */
  ck_assert_int_eq(uvip_prefix_format(&p, buf, 11), UV_ENOSPC);
  ck_assert_str_eq(buf, "");
  ck_assert_int_eq(uvip_prefix_format(&p, buf, 0), UV_ENOSPC);
  ck_assert_int_eq(uvip_prefix_format(&p, buf, 12), 0);
  ck_assert_str_eq(buf, "fd00:1::/64");
  ck_assert_int_eq(uvip_prefix_contains(NULL, (struct sockaddr *)&in),
                   UV_EINVAL);
  ck_assert_int_eq(uvip_prefix_contains(&p, NULL), UV_EINVAL);
  /* A prefix filled in by hand is checked. */
  p.len = 129;
  ck_assert_int_eq(uvip_prefix_format(&p, buf, sizeof(buf)), UV_EINVAL);
  ck_assert_int_eq(uvip_prefix_contains(&p, (struct sockaddr *)&in), UV_EINVAL);
  p.family = AF_INET;
  p.len = 33;
  ck_assert_int_eq(uvip_prefix_format(&p, buf, sizeof(buf)), UV_EINVAL);
  p.family = AF_UNIX;
  p.len = 8;
  ck_assert_int_eq(uvip_prefix_format(&p, buf, sizeof(buf)), UV_EINVAL);
  /* The longest text fits UVIP_PREFIXSTRLEN. */
  ck_assert_int_eq(
      uvip_prefix_parse("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128", &p,
                        NULL, 0),
      0);
  ck_assert_int_eq(uvip_prefix_format(&p, buf, sizeof(buf)), 0);
  ck_assert_str_eq(buf, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128");
  ck_assert_int_eq(uvip_prefix_parse("255.255.255.255/32", &p, NULL, 0), 0);
  ck_assert_int_eq(uvip_prefix_format(&p, buf, sizeof(buf)), 0);
}
END_TEST

static int contains(const char *prefix, const char *ip) {
  uvip_prefix_t p;
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof(ss));
  ck_assert_int_eq(uvip_prefix_parse(prefix, &p, NULL, 0), 0);
  if (strchr(ip, ':')) {
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(80); /* ignored */
    ck_assert_int_eq(inet_pton(AF_INET6, ip, &in6->sin6_addr), 1);
  } else {
    struct sockaddr_in *in = (struct sockaddr_in *)&ss;
    in->sin_family = AF_INET;
    ck_assert_int_eq(inet_pton(AF_INET, ip, &in->sin_addr), 1);
  }
  return uvip_prefix_contains(&p, (struct sockaddr *)&ss);
}

START_TEST(test_contains) {
  ck_assert_int_eq(contains("fd00:1::/64", "fd00:1::1"), 1);
  ck_assert_int_eq(contains("fd00:1::/64", "fd00:1::ffff:ffff:ffff:ffff"), 1);
  ck_assert_int_eq(contains("fd00:1::/64", "fd00:1:0:1::"), 0);
  ck_assert_int_eq(contains("fd00:1::/64", "fd00::1"), 0);
  ck_assert_int_eq(contains("fd00:1::/61", "fd00:1:0:7::9"), 1);
  ck_assert_int_eq(contains("fd00:1::/61", "fd00:1:0:8::9"), 0);
  ck_assert_int_eq(contains("::/0", "2001:db8::1"), 1);
  ck_assert_int_eq(contains("fd00::5/128", "fd00::5"), 1);
  ck_assert_int_eq(contains("fd00::5/128", "fd00::4"), 0);
  ck_assert_int_eq(contains("198.18.0.0/15", "198.19.255.255"), 1);
  ck_assert_int_eq(contains("198.18.0.0/15", "198.20.0.0"), 0);
  ck_assert_int_eq(contains("10.1.2.3/32", "10.1.2.3"), 1);
  ck_assert_int_eq(contains("0.0.0.0/0", "1.2.3.4"), 1);
  /* Another family is never inside. */
  ck_assert_int_eq(contains("::/0", "1.2.3.4"), 0);
  ck_assert_int_eq(contains("0.0.0.0/0", "::1"), 0);
}
END_TEST

/* The expanding parser keeps its cap: a /64 is a prefix pool, not a list. */
START_TEST(test_lists_keep_their_cap) {
  uvip_addrs_t *l;
  uvip_prefix_t p;
  ck_assert_int_eq(uvip_addrs_new(&l), 0);
  ck_assert_int_eq(uvip_addrs_parse(l, "fd00::/64", 0, NULL, 0), UV_E2BIG);
  ck_assert_int_eq(uvip_prefix_parse("fd00::/64", &p, NULL, 0), 0);
  uvip_addrs_free(l);
}
END_TEST

int main(void) {
  Suite *s = suite_create("prefix");
  TCase *tc = tcase_create("prefix");
  tcase_add_test(tc, test_valid);
  tcase_add_test(tc, test_invalid);
  tcase_add_test(tc, test_arguments);
  tcase_add_test(tc, test_contains);
  tcase_add_test(tc, test_lists_keep_their_cap);
  suite_add_tcase(s, tc);
  return th_run_suite(s);
}
