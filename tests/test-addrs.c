/* Address specs and address lists.
 * SPDX-License-Identifier: MIT */
#include <check.h>

#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "helpers.h"
#include "internal.h"

/* Formats entry i of l with its port, for readable comparisons. */
static const char *fmt_at(const uvip_addrs_t *l, size_t i, char *buf) {
  const struct sockaddr *sa = uvip_addrs_at(l, i);
  ck_assert_ptr_nonnull(sa);
  ck_assert_int_eq(uvip_addr_format(sa, 1, buf, UVIP_ADDRSTRLEN), 0);
  return buf;
}

/* ------------------------------------------------------------------------ */
/* Valid specs                                                              */
/* ------------------------------------------------------------------------ */

static const struct {
  const char *spec;
  int port;
  size_t count;
  const char *first, *last;
} valid[] = {
    {"10.0.0.1", 80, 1, "10.0.0.1:80", "10.0.0.1:80"},
    {"10.0.0.1:8080", 80, 1, "10.0.0.1:8080", "10.0.0.1:8080"},
    {"10.0.0.1", 0, 1, "10.0.0.1:0", "10.0.0.1:0"},
    {"10.0.0.1:65535", 1, 1, "10.0.0.1:65535", "10.0.0.1:65535"},
    {"0.0.0.0", 1, 1, "0.0.0.0:1", "0.0.0.0:1"},
    {"255.255.255.255", 1, 1, "255.255.255.255:1", "255.255.255.255:1"},
    {"10.0.0.0/30", 80, 2, "10.0.0.1:80", "10.0.0.2:80"},
    {"10.0.0.0/31", 80, 2, "10.0.0.0:80", "10.0.0.1:80"},
    {"10.0.0.5/32", 80, 1, "10.0.0.5:80", "10.0.0.5:80"},
    {"10.0.0.7/30", 80, 2, "10.0.0.5:80", "10.0.0.6:80"},
    {"10.0.0.0/24", 80, 254, "10.0.0.1:80", "10.0.0.254:80"},
    {"10.0.0.0/30:81", 80, 2, "10.0.0.1:81", "10.0.0.2:81"},
    {"127.0.0.1-127.0.0.16", 7000, 16, "127.0.0.1:7000", "127.0.0.16:7000"},
    {"127.0.0.1-127.0.0.4:7000", 0, 4, "127.0.0.1:7000", "127.0.0.4:7000"},
    {"10.0.0.255-10.0.1.1", 1, 3, "10.0.0.255:1", "10.0.1.1:1"},
    {"10.0.0.9-10.0.0.9", 1, 1, "10.0.0.9:1", "10.0.0.9:1"},
    {"fd00::1", 80, 1, "[fd00::1]:80", "[fd00::1]:80"},
    {"[fd00::1]", 80, 1, "[fd00::1]:80", "[fd00::1]:80"},
    {"[fd00::1]:443", 80, 1, "[fd00::1]:443", "[fd00::1]:443"},
    {"::", 5, 1, "[::]:5", "[::]:5"},
    {"::ffff:1.2.3.4", 5, 1, "[::ffff:1.2.3.4]:5", "[::ffff:1.2.3.4]:5"},
    /* IPv6 prefixes below /127 leave out the all-zero host address (the
     * Subnet-Router anycast address), as IPv4 ones leave out the network
     * address; there is no broadcast to leave out. */
    {"fd00::/126", 80, 3, "[fd00::1]:80", "[fd00::3]:80"},
    {"fd00::7/126", 80, 3, "[fd00::5]:80", "[fd00::7]:80"},
    {"[fd00::/126]:80", 0, 3, "[fd00::1]:80", "[fd00::3]:80"},
    {"fd00::/127", 80, 2, "[fd00::]:80", "[fd00::1]:80"},
    {"fd00::-fd00::2", 80, 3, "[fd00::]:80", "[fd00::2]:80"},
    {"[fd00::1-fd00::4]:80", 0, 4, "[fd00::1]:80", "[fd00::4]:80"},
    {"fd00::1-fd00::4", 9, 4, "[fd00::1]:9", "[fd00::4]:9"},
    {"fd00::ffff:ffff:ffff:fffe-fd00:0:0:1::1", 9, 4,
     "[fd00::ffff:ffff:ffff:fffe]:9", "[fd00:0:0:1::1]:9"},
    {"::/128", 9, 1, "[::]:9", "[::]:9"},
    {"  10.0.0.1 , 10.0.0.2\t", 1, 2, "10.0.0.1:1", "10.0.0.2:1"},
    {"10.0.0.1,fd00::1,[fd00::2]:9", 1, 3, "10.0.0.1:1", "[fd00::2]:9"},
    {"10.0.0.1:80,10.0.0.1:81,10.0.0.1", 82, 3, "10.0.0.1:80",
     "10.0.0.1:82"},
};

START_TEST(test_valid_table) {
  char err[256], b1[UVIP_ADDRSTRLEN], b2[UVIP_ADDRSTRLEN];
  for (size_t i = 0; i < sizeof(valid) / sizeof(valid[0]); i++) {
    uvip_addrs_t *l = NULL;
    ck_assert_int_eq(uvip_addrs_new(&l), 0);
    int r = uvip_addrs_parse(l, valid[i].spec, valid[i].port, err, sizeof(err));
    ck_assert_msg(r == 0, "'%s': %s (%s)", valid[i].spec, uv_err_name(r), err);
    ck_assert_str_eq(err, "");
    ck_assert_msg(uvip_addrs_count(l) == valid[i].count, "'%s': count %zu",
                  valid[i].spec, uvip_addrs_count(l));
    ck_assert_str_eq(fmt_at(l, 0, b1), valid[i].first);
    ck_assert_str_eq(fmt_at(l, valid[i].count - 1, b2), valid[i].last);
    ck_assert_ptr_null(uvip_addrs_at(l, valid[i].count));
    uvip_addrs_free(l);
  }
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Invalid specs                                                            */
/* ------------------------------------------------------------------------ */

static const struct {
  const char *spec;
  int port;
  int code;
  const char *msg; /* substring of the message */
} invalid[] = {
    {"10.0.0.0/33", 80, UV_EINVAL, "bad prefix length '33' at offset 9"},
    {"127.0.0.1,10.0.0.0/33", 80, UV_EINVAL,
     "bad prefix length '33' at offset 19"},
    {"10.0.0.0/", 80, UV_EINVAL, "missing prefix length at offset 9"},
    {"10.0.0.0/x", 80, UV_EINVAL, "bad prefix length 'x' at offset 9"},
    {"10.0.0.0/-1", 80, UV_EINVAL, "bad prefix length '-1' at offset 9"},
    {"10.0.0.0/24/8", 80, UV_EINVAL, "bad prefix length '24/8' at offset 9"},
    {"fd00::/129", 80, UV_EINVAL, "bad prefix length '129' at offset 7"},
    {"10.0.0.5-10.0.0.1", 80, UV_EINVAL, "range start after end at offset 0"},
    {"fd00::5-fd00::1", 80, UV_EINVAL, "range start after end at offset 0"},
    {"10.0.0.1,10.0.0.256", 80, UV_EINVAL,
     "bad IPv4 address '10.0.0.256' at offset 9"},
    {"1.2.3", 80, UV_EINVAL, "bad IPv4 address '1.2.3' at offset 0"},
    {"10.0.0.1 - 10.0.0.2", 80, UV_EINVAL,
     "bad IPv4 address '10.0.0.1 ' at offset 0"},
    {"127.0.0.1:70000", 80, UV_EINVAL, "port '70000' out of range at offset 10"},
    {"10.0.0.1:99999999999999999999", 80, UV_EINVAL,
     "port '99999999999999999999' out of range at offset 9"},
    {"10.0.0.1:", 80, UV_EINVAL, "missing port at offset 9"},
    {"10.0.0.1:http", 80, UV_EINVAL, "bad port 'http' at offset 9"},
    {"10.0.0.1:-1", 80, UV_EINVAL, "bad port '-1' at offset 9"},
    {"10.0.0.1:80:90", 80, UV_EINVAL, "bad port '80:90' at offset 9"},
    {"[fd00::1]:", 80, UV_EINVAL, "missing port at offset 10"},
    {"1.1.1.1, 10.0.0.1-fd00::1", 80, UV_EINVAL,
     "mixed families in range at offset 9"},
    {"10.0.0.1,,10.0.0.2", 80, UV_EINVAL, "empty item at offset 9"},
    {"10.0.0.1,", 80, UV_EINVAL, "empty item at offset 9"},
    {"", 80, UV_EINVAL, "empty item at offset 0"},
    {"  ", 80, UV_EINVAL, "empty item at offset 0"},
    {"[fd00::1", 80, UV_EINVAL, "missing ']' in '[fd00::1' at offset 0"},
    {"[fd00::1]x", 80, UV_EINVAL, "unexpected 'x' after ']' at offset 9"},
    {"[10.0.0.1]", 80, UV_EINVAL, "bad IPv6 address '10.0.0.1' at offset 1"},
    {"[]", 80, UV_EINVAL, "missing address at offset 1"},
    {":80", 80, UV_EINVAL, "missing address at offset 0"},
    {"/24", 80, UV_EINVAL, "missing address at offset 0"},
    {"fd00::zz", 80, UV_EINVAL, "bad IPv6 address 'fd00::zz' at offset 0"},
    {"fe80::1%eth0", 80, UV_EINVAL, "bad IPv6 address 'fe80::1%eth0'"},
    {"10.0.0.1-", 80, UV_EINVAL, "missing range end at offset 9"},
    {"-10.0.0.1", 80, UV_EINVAL, "missing range start at offset 0"},
    {"\x01\x7f", 80, UV_EINVAL, "bad IPv4 address '?" "?' at offset 0"},
    {"10.0.0.0/8", 80, UV_E2BIG,
     "'10.0.0.0/8' expands to 16777214 addresses, more than 65536 at offset 0"},
    {"0.0.0.0/0", 80, UV_E2BIG, "expands to 4294967294 addresses"},
    {"fd00::/111", 80, UV_E2BIG, "expands to 131071 addresses"},
    {"1.1.1.1,fd00::/64", 80, UV_E2BIG,
     "expands to 18446744073709551615 addresses, more than 65536 at offset 8"},
    {"::/0", 80, UV_E2BIG,
     "expands to 340282366920938463463374607431768211455 addresses"},
    {"::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 80, UV_E2BIG,
     "expands to 340282366920938463463374607431768211456 addresses"},
    {"10.0.0.0-10.1.0.0", 80, UV_E2BIG, "expands to 65537 addresses"},
    {"10.0.0.1,10.0.0.1", 80, UV_EEXIST,
     "duplicate address 10.0.0.1:80 at offset 9"},
    {"127.0.0.1,127.0.0.1", 80, UV_EEXIST,
     "duplicate address 127.0.0.1:80 at offset 10"},
    {"10.0.0.0/30,10.0.0.2", 80, UV_EEXIST,
     "duplicate address 10.0.0.2:80 at offset 12"},
    {"10.0.0.1:80,10.0.0.1", 80, UV_EEXIST,
     "duplicate address 10.0.0.1:80 at offset 12"},
    {"fd00::1,[fd00::1]", 80, UV_EEXIST,
     "duplicate address [fd00::1]:80 at offset 8"},
    {"192.168.0.1:1", 80, UV_EEXIST,
     "duplicate address 192.168.0.1:1 at offset 0"},
    {"10.0.0.1", -1, UV_EINVAL, "default port -1 out of range"},
    {"10.0.0.1", 65536, UV_EINVAL, "default port 65536 out of range"},
};

START_TEST(test_invalid_table) {
  char err[256], b[UVIP_ADDRSTRLEN];
  for (size_t i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++) {
    /* A list that already holds one address: it must come out unchanged. */
    uvip_addrs_t *l = th_addrs("192.168.0.1:1", 0);
    int r = uvip_addrs_parse(l, invalid[i].spec, invalid[i].port, err,
                             sizeof(err));
    ck_assert_msg(r == invalid[i].code, "'%s': got %s want %s (%s)",
                  invalid[i].spec, uv_err_name(r),
                  uv_err_name(invalid[i].code), err);
    ck_assert_msg(strstr(err, invalid[i].msg) != NULL,
                  "'%s': message '%s' lacks '%s'", invalid[i].spec, err,
                  invalid[i].msg);
    ck_assert_ptr_null(strchr(err, '\n'));
    ck_assert_uint_eq(uvip_addrs_count(l), 1);
    ck_assert_str_eq(fmt_at(l, 0, b), "192.168.0.1:1");
    uvip_addrs_free(l);
  }
}
END_TEST

START_TEST(test_long_input_quoted_bounded) {
  char spec[1001], err[256];
  memset(spec, 'a', 1000);
  spec[1000] = '\0';
  uvip_addrs_t *l = th_addrs("10.0.0.1", 1);
  ck_assert_int_eq(uvip_addrs_parse(l, spec, 1, err, sizeof(err)), UV_EINVAL);
  ck_assert_ptr_nonnull(strstr(err, "aaa...' at offset 0"));
  ck_assert_uint_lt(strlen(err), 120);
  uvip_addrs_free(l);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Duplicates, limits, all or nothing                                       */
/* ------------------------------------------------------------------------ */

START_TEST(test_duplicates_across_calls) {
  char err[256], b[UVIP_ADDRSTRLEN];
  uvip_addrs_t *l = th_addrs("10.0.0.1-10.0.0.3", 80);
  ck_assert_int_eq(uvip_addrs_parse(l, "10.0.0.9,10.0.0.3", 80, err,
                                    sizeof(err)),
                   UV_EEXIST);
  ck_assert_str_eq(err, "duplicate address 10.0.0.3:80 at offset 9");
  ck_assert_uint_eq(uvip_addrs_count(l), 3);
  ck_assert_int_eq(uvip_addrs_parse(l, "10.0.0.3:81", 80, err, sizeof(err)),
                   0);
  ck_assert_uint_eq(uvip_addrs_count(l), 4);
  ck_assert_str_eq(fmt_at(l, 3, b), "10.0.0.3:81");
  /* The rolled-back 10.0.0.9 must not linger in the hash set. */
  ck_assert_int_eq(uvip_addrs_parse(l, "10.0.0.9", 80, err, sizeof(err)), 0);
  ck_assert_uint_eq(uvip_addrs_count(l), 5);
  uvip_addrs_free(l);
}
END_TEST

START_TEST(test_limit_ipv4_16) {
  char err[256], b[UVIP_ADDRSTRLEN];
  struct sockaddr_storage ss;
  uvip_addrs_t *l = th_addrs("10.0.0.0/16", 80);
  ck_assert_uint_eq(uvip_addrs_count(l), 65534);
  ck_assert_str_eq(fmt_at(l, 0, b), "10.0.0.1:80");
  ck_assert_str_eq(fmt_at(l, 65533, b), "10.0.255.254:80");
  ck_assert_int_eq(uvip_addrs_parse(l, "10.1.0.1-10.1.0.2", 80, err,
                                    sizeof(err)),
                   0);
  ck_assert_uint_eq(uvip_addrs_count(l), UVIP_ADDRS_MAX);
  ck_assert_int_eq(uvip_addrs_parse(l, "10.1.0.3", 80, err, sizeof(err)),
                   UV_E2BIG);
  ck_assert_str_eq(err, "'10.1.0.3' would make 65537 addresses, more than "
                        "65536 at offset 0");
  th_addr("10.2.0.1", 80, &ss);
  ck_assert_int_eq(uvip_addrs_add(l, (struct sockaddr *)&ss), UV_E2BIG);
  th_addr("10.0.0.1", 80, &ss);
  ck_assert_int_eq(uvip_addrs_add(l, (struct sockaddr *)&ss), UV_EEXIST);
  ck_assert_uint_eq(uvip_addrs_count(l), UVIP_ADDRS_MAX);
  uvip_addrs_free(l);
}
END_TEST

START_TEST(test_limit_ipv6_112) {
  char err[256], b[UVIP_ADDRSTRLEN];
  uvip_addrs_t *l = th_addrs("fd00::/112", 80);
  ck_assert_uint_eq(uvip_addrs_count(l), UVIP_ADDRS_MAX - 1);
  ck_assert_str_eq(fmt_at(l, 0, b), "[fd00::1]:80");
  uvip_addrs_free(l);
  l = th_addrs("fd00::-fd00::ffff", 80);
  ck_assert_uint_eq(uvip_addrs_count(l), UVIP_ADDRS_MAX);
  ck_assert_str_eq(fmt_at(l, 0, b), "[fd00::]:80");
  ck_assert_str_eq(fmt_at(l, 65535, b), "[fd00::ffff]:80");
  /* Every entry is found at its own index: the hash set agrees with the
   * array for a full list. */
  for (size_t i = 0; i < uvip_addrs_count(l); i++)
    ck_assert_int_eq(uvip_addrs_find(l, uvip_addrs_at(l, i)), (int)i);
  uvip_addrs_free(l);

  l = th_addrs("fd01::1", 80);
  ck_assert_int_eq(uvip_addrs_parse(l, "fd00::/111", 80, err, sizeof(err)),
                   UV_E2BIG);
  ck_assert_str_eq(err, "'fd00::/111' expands to 131071 addresses, more than "
                        "65536 at offset 0");
  ck_assert_uint_eq(uvip_addrs_count(l), 1);
  ck_assert_str_eq(fmt_at(l, 0, b), "[fd01::1]:80");
  uvip_addrs_free(l);
}
END_TEST

START_TEST(test_all_or_nothing_big_rollback) {
  char err[256], b[UVIP_ADDRSTRLEN];
  uvip_addrs_t *l = th_addrs("192.168.0.1", 80);
  /* 65534 appended, then a duplicate: all of them must go. */
  ck_assert_int_eq(uvip_addrs_parse(l, "10.0.0.0/16,10.0.0.1", 80, err,
                                    sizeof(err)),
                   UV_EEXIST);
  ck_assert_str_eq(err, "duplicate address 10.0.0.1:80 at offset 12");
  ck_assert_uint_eq(uvip_addrs_count(l), 1);
  ck_assert_str_eq(fmt_at(l, 0, b), "192.168.0.1:80");
  /* The same addresses can be added afterwards: the set was rolled back. */
  ck_assert_int_eq(uvip_addrs_parse(l, "10.0.0.0/16", 80, err, sizeof(err)),
                   0);
  ck_assert_uint_eq(uvip_addrs_count(l), 65535);
  /* Fails on the size of the whole list, before expanding anything. */
  ck_assert_int_eq(uvip_addrs_parse(l, "fd00::1-fd00::2", 80, err,
                                    sizeof(err)),
                   UV_E2BIG);
  ck_assert_uint_eq(uvip_addrs_count(l), 65535);
  ck_assert_int_eq(uvip_addrs_find(l, uvip_addrs_at(l, 65534)), 65534);
  uvip_addrs_free(l);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* add / find / at / format / argument checks                               */
/* ------------------------------------------------------------------------ */

START_TEST(test_add_find_at) {
  struct sockaddr_storage a4, a6, other;
  struct sockaddr_un un;
  uvip_addrs_t *l = NULL;
  ck_assert_int_eq(uvip_addrs_new(&l), 0);
  ck_assert_uint_eq(uvip_addrs_count(l), 0);
  ck_assert_ptr_null(uvip_addrs_at(l, 0));

  th_addr("10.0.0.1", 80, &a4);
  th_addr("fd00::1", 80, &a6);
  ck_assert_int_eq(uvip_addrs_find(l, (struct sockaddr *)&a4), UV_ENOENT);
  ck_assert_int_eq(uvip_addrs_add(l, (struct sockaddr *)&a4), 0);
  ck_assert_int_eq(uvip_addrs_add(l, (struct sockaddr *)&a6), 0);
  ck_assert_int_eq(uvip_addrs_add(l, (struct sockaddr *)&a4), UV_EEXIST);
  /* flowinfo is not part of the identity. */
  ((struct sockaddr_in6 *)&a6)->sin6_flowinfo = htonl(7);
  ck_assert_int_eq(uvip_addrs_add(l, (struct sockaddr *)&a6), UV_EEXIST);
  ck_assert_int_eq(uvip_addrs_find(l, (struct sockaddr *)&a6), 1);
  ck_assert_uint_eq(uvip_addrs_count(l), 2);
  ck_assert_int_eq(uvip_addrs_find(l, (struct sockaddr *)&a4), 0);

  th_addr("10.0.0.1", 81, &other); /* same address, other port */
  ck_assert_int_eq(uvip_addrs_find(l, (struct sockaddr *)&other), UV_ENOENT);
  ck_assert_int_eq(uvip_addrs_add(l, (struct sockaddr *)&other), 0);
  ck_assert_int_eq(uvip_addrs_find(l, (struct sockaddr *)&other), 2);

  const struct sockaddr *sa = uvip_addrs_at(l, 1);
  ck_assert_ptr_nonnull(sa);
  ck_assert_int_eq(sa->sa_family, AF_INET6);
  ck_assert_int_eq(uvip__sa_len(sa), sizeof(struct sockaddr_in6));
  ck_assert_int_eq(uvip__sa_len(uvip_addrs_at(l, 0)),
                   sizeof(struct sockaddr_in));
  ck_assert_int_eq(uvip__sa_len(NULL), 0);
  ck_assert(uvip__sa_equal(sa, (struct sockaddr *)&a6));
  ck_assert(!uvip__sa_equal(sa, (struct sockaddr *)&a4));
  ck_assert(!uvip__sa_equal(NULL, sa));
  ck_assert_ptr_null(uvip_addrs_at(l, 3));

  memset(&un, 0, sizeof(un));
  un.sun_family = AF_UNIX;
  ck_assert_int_eq(uvip_addrs_add(l, (struct sockaddr *)&un), UV_EAFNOSUPPORT);
  ck_assert_int_eq(uvip_addrs_find(l, (struct sockaddr *)&un), UV_ENOENT);
  ck_assert_int_eq(uvip__sa_len((struct sockaddr *)&un), 0);
  ck_assert_uint_eq(uvip_addrs_count(l), 3);
  uvip_addrs_free(l);
}
END_TEST

START_TEST(test_format) {
  struct sockaddr_storage ss;
  struct sockaddr_un un;
  char buf[UVIP_ADDRSTRLEN];

  th_addr("1.2.3.4", 80, &ss);
  ck_assert_int_eq(uvip_addr_format((struct sockaddr *)&ss, 1, buf,
                                    sizeof(buf)),
                   0);
  ck_assert_str_eq(buf, "1.2.3.4:80");
  ck_assert_int_eq(uvip_addr_format((struct sockaddr *)&ss, 0, buf,
                                    sizeof(buf)),
                   0);
  ck_assert_str_eq(buf, "1.2.3.4");
  ck_assert_int_eq(uvip_addr_format((struct sockaddr *)&ss, 1, buf, 11), 0);
  ck_assert_int_eq(uvip_addr_format((struct sockaddr *)&ss, 1, buf, 10),
                   UV_ENOSPC);
  ck_assert_str_eq(buf, "");
  ck_assert_int_eq(uvip_addr_format((struct sockaddr *)&ss, 1, buf, 0),
                   UV_ENOSPC);

  th_addr("fd00::1", 80, &ss);
  ck_assert_int_eq(uvip_addr_format((struct sockaddr *)&ss, 1, buf,
                                    sizeof(buf)),
                   0);
  ck_assert_str_eq(buf, "[fd00::1]:80");
  ck_assert_int_eq(uvip_addr_format((struct sockaddr *)&ss, 0, buf,
                                    sizeof(buf)),
                   0);
  ck_assert_str_eq(buf, "fd00::1");
  ck_assert_int_eq(uvip_addr_format((struct sockaddr *)&ss, 0, buf, 7),
                   UV_ENOSPC);

  /* The longest possible text fits in UVIP_ADDRSTRLEN. */
  th_addr("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255", 65535, &ss);
  ck_assert_int_eq(uvip_addr_format((struct sockaddr *)&ss, 1, buf,
                                    sizeof(buf)),
                   0);
  th_addr("1111:2222:3333:4444:5555:6666:7777:8888", 65535, &ss);
  ck_assert_int_eq(uvip_addr_format((struct sockaddr *)&ss, 1, buf,
                                    sizeof(buf)),
                   0);
  ck_assert_str_eq(buf, "[1111:2222:3333:4444:5555:6666:7777:8888]:65535");

  memset(&un, 0, sizeof(un));
  un.sun_family = AF_UNIX;
  ck_assert_int_eq(uvip_addr_format((struct sockaddr *)&un, 1, buf,
                                    sizeof(buf)),
                   UV_EINVAL);
  ck_assert_int_eq(uvip_addr_format(NULL, 1, buf, sizeof(buf)), UV_EINVAL);
  ck_assert_int_eq(uvip_addr_format((struct sockaddr *)&ss, 1, NULL, 10),
                   UV_EINVAL);
}
END_TEST

START_TEST(test_argument_checks) {
  char err[64];
  struct sockaddr_storage ss;
  uvip_addrs_t *l = NULL;
  th_addr("10.0.0.1", 80, &ss);

  ck_assert_int_eq(uvip_addrs_new(NULL), UV_EINVAL);
  uvip_addrs_free(NULL);
  ck_assert_uint_eq(uvip_addrs_count(NULL), 0);
  ck_assert_ptr_null(uvip_addrs_at(NULL, 0));
  ck_assert_int_eq(uvip_addrs_find(NULL, (struct sockaddr *)&ss), UV_EINVAL);
  ck_assert_int_eq(uvip_addrs_add(NULL, (struct sockaddr *)&ss), UV_EINVAL);
  ck_assert_int_eq(uvip_addrs_parse(NULL, "10.0.0.1", 80, err, sizeof(err)),
                   UV_EINVAL);
  ck_assert_str_ne(err, "");

  ck_assert_int_eq(uvip_addrs_new(&l), 0);
  ck_assert_int_eq(uvip_addrs_find(l, NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_addrs_add(l, NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_addrs_parse(l, NULL, 80, err, sizeof(err)),
                   UV_EINVAL);
  ck_assert_str_eq(err, "spec is NULL");
  ck_assert_int_eq(uvip_addrs_parse(l, NULL, 80, NULL, 0), UV_EINVAL);

  /* errbuf is optional, and a tiny one is truncated, never overrun. */
  ck_assert_int_eq(uvip_addrs_parse(l, "10.0.0.0/33", 80, NULL, 0),
                   UV_EINVAL);
  ck_assert_int_eq(uvip_addrs_parse(l, "10.0.0.0/33", 80, NULL, 100),
                   UV_EINVAL);
  memset(err, 'x', sizeof(err));
  ck_assert_int_eq(uvip_addrs_parse(l, "10.0.0.0/33", 80, err, 0), UV_EINVAL);
  ck_assert_int_eq(err[0], 'x');
  ck_assert_int_eq(uvip_addrs_parse(l, "10.0.0.0/33", 80, err, 1), UV_EINVAL);
  ck_assert_str_eq(err, "");
  ck_assert_int_eq(err[1], 'x');
  ck_assert_int_eq(uvip_addrs_parse(l, "10.0.0.0/33", 80, err, 8), UV_EINVAL);
  ck_assert_str_eq(err, "bad pre");
  ck_assert_int_eq(err[8], 'x');
  /* Truncated in the " at offset" suffix. */
  ck_assert_int_eq(uvip_addrs_parse(l, "10.0.0.0/33", 80, err, 26),
                   UV_EINVAL);
  ck_assert_str_eq(err, "bad prefix length '33' at");
  ck_assert_uint_eq(uvip_addrs_count(l), 0);
  uvip_addrs_free(l);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Randomized tests (fixed seeds: failures reproduce)                       */
/* ------------------------------------------------------------------------ */

static uint64_t rng_state;

static uint64_t rng(void) {
  /* xorshift64*: the same sequence on every libc, unlike rand(). */
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * 0x2545f4914f6cdd1dull;
}

static void random_addr(struct sockaddr_storage *ss, int port) {
  memset(ss, 0, sizeof(*ss));
  if (rng() % 2) {
    struct sockaddr_in *in = (struct sockaddr_in *)ss;
    in->sin_family = AF_INET;
    in->sin_port = htons((uint16_t)port);
    in->sin_addr.s_addr = (uint32_t)rng();
  } else {
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons((uint16_t)port);
    for (int i = 0; i < 16; i++) {
      /* Many zero bytes, so that "::" compression and the embedded IPv4
       * forms (::ffff:a.b.c.d) get exercised too. */
      in6->sin6_addr.s6_addr[i] = rng() % 3 == 0 ? (uint8_t)rng() : 0;
    }
    if (rng() % 8 == 0) {
      memset(in6->sin6_addr.s6_addr, 0, 10);
      in6->sin6_addr.s6_addr[10] = in6->sin6_addr.s6_addr[11] = 0xff;
    }
  }
}

START_TEST(test_random_round_trip) {
  enum { ROUNDS = 40, PER_ROUND = 300, DEFAULT_PORT = 4242 };
  rng_state = 0x5eed1234abcdull;
  char err[256];
  for (int round = 0; round < ROUNDS; round++) {
    uvip_addrs_t *want = NULL;
    ck_assert_int_eq(uvip_addrs_new(&want), 0);
    size_t cap = PER_ROUND * (UVIP_ADDRSTRLEN + 4) + 1, len = 0;
    char *spec = malloc(cap);
    ck_assert_ptr_nonnull(spec);
    spec[0] = '\0';
    for (int i = 0; i < PER_ROUND; i++) {
      struct sockaddr_storage ss;
      int default_form = rng() % 4 == 0;
      random_addr(&ss, default_form ? DEFAULT_PORT : (int)(rng() % 65536));
      if (uvip_addrs_add(want, (struct sockaddr *)&ss) != 0)
        continue; /* a repeat: the spec would rightly be refused */
      char one[UVIP_ADDRSTRLEN];
      ck_assert_int_eq(
          uvip_addr_format((struct sockaddr *)&ss, !default_form, one,
                           sizeof(one)),
          0);
      const char *sep = len == 0 ? "" : (rng() % 2 ? "," : " ,\t");
      int bracket = default_form && ss.ss_family == AF_INET6 && rng() % 2;
      len += (size_t)snprintf(spec + len, cap - len, bracket ? "%s[%s]" : "%s%s",
                              sep, one);
      ck_assert_uint_lt(len, cap);
    }
    uvip_addrs_t *got = NULL;
    ck_assert_int_eq(uvip_addrs_new(&got), 0);
    int r = uvip_addrs_parse(got, spec, DEFAULT_PORT, err, sizeof(err));
    ck_assert_msg(r == 0, "round %d: %s", round, err);
    ck_assert_uint_eq(uvip_addrs_count(got), uvip_addrs_count(want));
    for (size_t i = 0; i < uvip_addrs_count(want); i++) {
      char a[UVIP_ADDRSTRLEN], b[UVIP_ADDRSTRLEN];
      ck_assert_msg(uvip__sa_equal(uvip_addrs_at(got, i),
                                   uvip_addrs_at(want, i)),
                    "round %d entry %zu: got %s want %s", round, i,
                    fmt_at(got, i, a), fmt_at(want, i, b));
    }
    free(spec);
    uvip_addrs_free(got);
    uvip_addrs_free(want);
  }
}
END_TEST

START_TEST(test_random_prefixes) {
  /* A/N must equal the range it describes, written out by hand. */
  rng_state = 0xfeedfaceull;
  char err[256], spec[128];
  for (int i = 0; i < 300; i++) {
    uvip_addrs_t *a = NULL, *b = NULL;
    ck_assert_int_eq(uvip_addrs_new(&a), 0);
    ck_assert_int_eq(uvip_addrs_new(&b), 0);
    char lo[INET6_ADDRSTRLEN], hi[INET6_ADDRSTRLEN], base[INET6_ADDRSTRLEN];
    size_t want;
    if (i % 2) {
      unsigned int plen = 18 + (unsigned int)(rng() % 15); /* 18..32 */
      uint32_t ip = (uint32_t)rng();
      uint32_t host = plen == 32 ? 0 : (UINT32_C(1) << (32 - plen)) - 1;
      uint32_t first = ip & ~host, last = ip | host;
      if (plen < 31) {
        first++;
        last--;
      }
      want = (size_t)(last - first) + 1;
      struct in_addr x;
      x.s_addr = htonl(ip);
      inet_ntop(AF_INET, &x, base, sizeof(base));
      x.s_addr = htonl(first);
      inet_ntop(AF_INET, &x, lo, sizeof(lo));
      x.s_addr = htonl(last);
      inet_ntop(AF_INET, &x, hi, sizeof(hi));
      snprintf(spec, sizeof(spec), "%s/%u", base, plen);
    } else {
      unsigned int plen = 114 + (unsigned int)(rng() % 15); /* 114..128 */
      struct in6_addr x, f, l6;
      for (int k = 0; k < 16; k++)
        x.s6_addr[k] = (uint8_t)rng();
      f = l6 = x;
      unsigned int hostbits = 128 - plen; /* at most 14: last two bytes */
      uint16_t host = (uint16_t)((1u << hostbits) - 1);
      uint16_t tail = (uint16_t)((x.s6_addr[14] << 8) | x.s6_addr[15]);
      uint16_t ft = tail & (uint16_t)~host, lt = tail | host;
      /* Below /127 the all-zero host address is left out. */
      if (plen < 127)
        ft++;
      f.s6_addr[14] = (uint8_t)(ft >> 8);
      f.s6_addr[15] = (uint8_t)ft;
      l6.s6_addr[14] = (uint8_t)(lt >> 8);
      l6.s6_addr[15] = (uint8_t)lt;
      want = ((size_t)1 << hostbits) - (plen < 127);
      inet_ntop(AF_INET6, &x, base, sizeof(base));
      inet_ntop(AF_INET6, &f, lo, sizeof(lo));
      inet_ntop(AF_INET6, &l6, hi, sizeof(hi));
      snprintf(spec, sizeof(spec), "[%s/%u]:9", base, plen);
    }
    ck_assert_msg(uvip_addrs_parse(a, spec, 9, err, sizeof(err)) == 0,
                  "%s: %s", spec, err);
    char range[128];
    snprintf(range, sizeof(range), "%s-%s", lo, hi);
    ck_assert_msg(uvip_addrs_parse(b, range, 9, err, sizeof(err)) == 0,
                  "%s: %s", range, err);
    ck_assert_uint_eq(uvip_addrs_count(a), want);
    ck_assert_uint_eq(uvip_addrs_count(b), want);
    for (size_t k = 0; k < want; k++)
      ck_assert(uvip__sa_equal(uvip_addrs_at(a, k), uvip_addrs_at(b, k)));
    uvip_addrs_free(a);
    uvip_addrs_free(b);
  }
}
END_TEST

START_TEST(test_random_garbage) {
  static const char alphabet[] = "0123456789abcdef:.,/-[] \tx%";
  rng_state = 0xbadc0ffeeull;
  char spec[48], err[256], b[UVIP_ADDRSTRLEN];
  for (int i = 0; i < 20000; i++) {
    size_t n = (size_t)(rng() % 40);
    for (size_t k = 0; k < n; k++) {
      if (rng() % 50 == 0)
        spec[k] = (char)(1 + rng() % 255);
      else
        spec[k] = alphabet[rng() % (sizeof(alphabet) - 1)];
    }
    spec[n] = '\0';
    uvip_addrs_t *l = th_addrs("192.168.0.1:1", 0);
    err[0] = 'x';
    int r = uvip_addrs_parse(l, spec, (int)(rng() % 3), err, sizeof(err));
    if (r == 0) {
      ck_assert_str_eq(err, "");
      ck_assert_uint_gt(uvip_addrs_count(l), 1);
    } else {
      ck_assert_msg(r == UV_EINVAL || r == UV_EEXIST || r == UV_E2BIG,
                    "'%s': %s", spec, uv_err_name(r));
      ck_assert_uint_eq(uvip_addrs_count(l), 1);
      ck_assert_str_eq(fmt_at(l, 0, b), "192.168.0.1:1");
      ck_assert_ptr_null(strchr(err, '\n'));
      const char *at = strstr(err, " at offset ");
      ck_assert_msg(at != NULL, "'%s': message '%s'", spec, err);
      ck_assert_uint_le(strtoul(at + 11, NULL, 10), n);
    }
    uvip_addrs_free(l);
  }
}
END_TEST

static Suite *addrs_suite(void) {
  Suite *s = suite_create("addrs");
  TCase *tc = tcase_create("addrs");
  tcase_add_test(tc, test_valid_table);
  tcase_add_test(tc, test_invalid_table);
  tcase_add_test(tc, test_long_input_quoted_bounded);
  tcase_add_test(tc, test_duplicates_across_calls);
  tcase_add_test(tc, test_limit_ipv4_16);
  tcase_add_test(tc, test_limit_ipv6_112);
  tcase_add_test(tc, test_all_or_nothing_big_rollback);
  tcase_add_test(tc, test_add_find_at);
  tcase_add_test(tc, test_format);
  tcase_add_test(tc, test_argument_checks);
  tcase_add_test(tc, test_random_round_trip);
  tcase_add_test(tc, test_random_prefixes);
  tcase_add_test(tc, test_random_garbage);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return th_run_suite(addrs_suite()); }
