/* PROXY protocol v1/v2: parse what HAProxy's specification allows, refuse
 * the rest with a reason, never read past the bytes given, and round-trip
 * what uvip_proxy_write() makes. Plus every split of a header into two
 * reads, and byte flips of valid headers (bounded, deterministic).
 * SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"

static const unsigned char sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                      0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

static int parse_str(const char *s, uvip_proxy_info_t *info) {
  return uvip_proxy_parse(s, strlen(s), info);
}

static void addr_is(const struct sockaddr_storage *ss, const char *ip,
                    int port) {
  char a[UVIP_ADDRSTRLEN], want[UVIP_ADDRSTRLEN + 8];
  ck_assert_int_eq(uvip_addr_format((const struct sockaddr *)ss, 1, a,
                                    sizeof(a)),
                   0);
  if (strchr(ip, ':'))
    snprintf(want, sizeof(want), "[%s]:%d", ip, port);
  else
    snprintf(want, sizeof(want), "%s:%d", ip, port);
  ck_assert_str_eq(a, want);
}

START_TEST(test_v1_good) {
  uvip_proxy_info_t in;
  const char *h = "PROXY TCP4 192.0.2.1 198.18.0.5 56324 443\r\nGET /";
  ck_assert_int_eq(parse_str(h, &in), (int)(strstr(h, "GET") - h));
  ck_assert_int_eq(in.version, 1);
  ck_assert_int_eq(in.has_addrs, 1);
  addr_is(&in.src, "192.0.2.1", 56324);
  addr_is(&in.dst, "198.18.0.5", 443);
  h = "PROXY TCP6 fd00::1 fd00::2 65535 0\r\n";
  ck_assert_int_eq(parse_str(h, &in), (int)strlen(h));
  addr_is(&in.src, "fd00::1", 65535);
  addr_is(&in.dst, "fd00::2", 0);
  h = "PROXY UNKNOWN\r\n";
  ck_assert_int_eq(parse_str(h, &in), (int)strlen(h));
  ck_assert_int_eq(in.has_addrs, 0);
  h = "PROXY UNKNOWN ffff::1 ffff::2 1 2 and more\r\n";
  ck_assert_int_eq(parse_str(h, &in), (int)strlen(h));
  ck_assert_int_eq(in.has_addrs, 0);
  /* The longest allowed line: 107 bytes with CRLF. */
  h = "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
      "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
  ck_assert_int_eq(strlen(h), 104);
  ck_assert_int_eq(parse_str(h, &in), 104);
}
END_TEST

START_TEST(test_v1_bad) {
  static const struct {
    const char *h;
    int r;
  } bad[] = {
      {"GET / HTTP/1.1\r\n", UV_EPROTO},
      {"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", UV_EPROTO},  /* family */
      {"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", UV_EPROTO}, /* port */
      {"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", UV_EPROTO},  /* leading 0 */
      {"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", UV_EPROTO},
      {"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", UV_EPROTO},     /* address */
      {"PROXY TCP4 fd00::1 5.6.7.8 1 2\r\n", UV_EPROTO},   /* family mix */
      {"PROXY TCP6 1.2.3.4 fd00::1 1 2\r\n", UV_EPROTO},
      {"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", UV_EPROTO},  /* two spaces */
      {"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", UV_EPROTO},     /* too few */
      {"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", UV_EPROTO}, /* too many */
      {"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", UV_EPROTO},     /* LF only */
      {"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", UV_EPROTO},    /* CR alone */
      {"PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n", UV_EPROTO},  /* control */
      {"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", UV_EPROTO},
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    ck_assert_msg(parse_str(bad[i].h, NULL) == bad[i].r, "'%s': %d", bad[i].h,
                  parse_str(bad[i].h, NULL));
  /* 108 bytes: one too long, whatever comes after. */
  char line[200];
  memset(line, 'a', sizeof(line));
  memcpy(line, "PROXY UNKNOWN ", 14);
  memcpy(line + 106, "\r\n", 2);
  ck_assert_int_eq(uvip_proxy_parse(line, 108, NULL), UV_E2BIG);
  ck_assert_int_eq(uvip_proxy_parse(line, 107, NULL), UV_E2BIG);
  memcpy(line + 105, "\r\n", 2);
  ck_assert_int_eq(uvip_proxy_parse(line, 107, NULL), 107);
}
END_TEST

/* Every prefix of a valid header asks for more (0), never more than it
 * has, and never an error. */
static void all_prefixes(const unsigned char *h, size_t n) {
  for (size_t k = 0; k < n; k++) {
    unsigned char *copy = malloc(k ? k : 1);
    memcpy(copy, h, k);
    /* An exact-size heap copy: ASan catches a read past k. */
    ck_assert_msg(uvip_proxy_parse(copy, k, NULL) == 0, "prefix %zu of %zu",
                  k, n);
    free(copy);
  }
  ck_assert_int_eq(uvip_proxy_parse(h, n, NULL), (int)n);
}

START_TEST(test_split_reads) {
  unsigned char b[128];
  struct sockaddr_storage s, d;
  int n;
  const char *v1 = "PROXY TCP4 10.0.0.1 10.0.0.2 1000 2000\r\n";
  all_prefixes((const unsigned char *)v1, strlen(v1));
  th_addr("fd00::a", 1, &s);
  th_addr("fd00::b", 2, &d);
  n = uvip_proxy_write(2, (struct sockaddr *)&s, (struct sockaddr *)&d, b,
                       sizeof(b));
  ck_assert_int_eq(n, 52);
  all_prefixes(b, (size_t)n);
}
END_TEST

START_TEST(test_v2_good) {
  unsigned char b[256];
  uvip_proxy_info_t in;
  size_t off = 0, vlen;
  unsigned int type;
  const unsigned char *val;
  /* IPv4 PROXY with two TLVs (ALPN "h2", AUTHORITY "x"). */
  memcpy(b, sig, 12);
  b[12] = 0x21;
  b[13] = 0x11;
  b[14] = 0;
  b[15] = 12 + 5 + 4;
  memcpy(b + 16, (unsigned char[]){192, 0, 2, 1, 198, 18, 0, 5, 0xdc, 0x04,
                                   0x01, 0xbb},
         12);
  memcpy(b + 28, (unsigned char[]){0x01, 0, 2, 'h', '2', 0x02, 0, 1, 'x'}, 9);
  ck_assert_int_eq(uvip_proxy_parse(b, 37 + 3, &in), 37);
  ck_assert_int_eq(in.version, 2);
  ck_assert_int_eq(in.has_addrs, 1);
  ck_assert_int_eq(in.local, 0);
  addr_is(&in.src, "192.0.2.1", 56324);
  addr_is(&in.dst, "198.18.0.5", 443);
  ck_assert_int_eq(uvip_proxy_tlv_next(&in, &off, &type, &val, &vlen), 1);
  ck_assert_uint_eq(type, 1);
  ck_assert_uint_eq(vlen, 2);
  ck_assert_int_eq(memcmp(val, "h2", 2), 0);
  ck_assert_int_eq(uvip_proxy_tlv_next(&in, &off, &type, &val, &vlen), 1);
  ck_assert_uint_eq(type, 2);
  ck_assert_int_eq(uvip_proxy_tlv_next(&in, &off, &type, &val, &vlen), 0);
  /* A TLV that runs past the end. */
  b[15] = 12 + 3;
  memcpy(b + 28, (unsigned char[]){0x01, 0, 9}, 3);
  ck_assert_int_eq(uvip_proxy_parse(b, 31, &in), 31);
  off = 0;
  ck_assert_int_eq(uvip_proxy_tlv_next(&in, &off, &type, &val, &vlen),
                   UV_EPROTO);
  /* LOCAL (a health check): no client addresses even if some are sent. */
  b[12] = 0x20;
  b[15] = 12;
  ck_assert_int_eq(uvip_proxy_parse(b, 28, &in), 28);
  ck_assert_int_eq(in.local, 1);
  ck_assert_int_eq(in.has_addrs, 0);
  /* UNSPEC, empty. */
  b[12] = 0x21;
  b[13] = 0x00;
  b[15] = 0;
  ck_assert_int_eq(uvip_proxy_parse(b, 16, &in), 16);
  ck_assert_int_eq(in.has_addrs, 0);
  /* UNIX stream (family 3): parsed, no TCP client. */
  b[13] = 0x31;
  b[14] = 0;
  b[15] = 216;
  memset(b + 16, 0, 216 - 16 > 0 ? 200 : 0);
  {
    unsigned char big[16 + 216];
    memcpy(big, b, 16);
    memset(big + 16, 0, 216);
    ck_assert_int_eq(uvip_proxy_parse(big, sizeof(big), &in), 232);
    ck_assert_int_eq(in.has_addrs, 0);
  }
}
END_TEST

START_TEST(test_v2_bad) {
  unsigned char b[64];
  memcpy(b, sig, 12);
  b[12] = 0x21;
  b[13] = 0x11;
  b[14] = 0;
  b[15] = 12;
  memset(b + 16, 1, 12);
  ck_assert_int_eq(uvip_proxy_parse(b, 28, NULL), 28);
  b[3] = 0x0B; /* signature */
  ck_assert_int_eq(uvip_proxy_parse(b, 28, NULL), UV_EPROTO);
  b[3] = 0x0A;
  b[12] = 0x11; /* version 1 in a v2 header */
  ck_assert_int_eq(uvip_proxy_parse(b, 28, NULL), UV_EPROTO);
  b[12] = 0x22; /* command 2 */
  ck_assert_int_eq(uvip_proxy_parse(b, 28, NULL), UV_EPROTO);
  b[12] = 0x21;
  b[13] = 0x41; /* family 4 */
  ck_assert_int_eq(uvip_proxy_parse(b, 28, NULL), UV_EPROTO);
  b[13] = 0x13; /* transport 3 */
  ck_assert_int_eq(uvip_proxy_parse(b, 28, NULL), UV_EPROTO);
  b[13] = 0x21; /* IPv6 needs 36 bytes, the length says 12 */
  ck_assert_int_eq(uvip_proxy_parse(b, 28, NULL), UV_EPROTO);
  b[13] = 0x11;
  b[15] = 200; /* length beyond what arrived: wait for it */
  ck_assert_int_eq(uvip_proxy_parse(b, 28, NULL), 0);
}
END_TEST

START_TEST(test_write_round_trip) {
  unsigned char b[128];
  uvip_proxy_info_t in;
  struct sockaddr_storage s, d, s6;
  th_addr("203.0.113.9", 40000, &s);
  th_addr("198.18.1.1", 8080, &d);
  th_addr("fd00::9", 1, &s6);
  for (int v = 1; v <= 2; v++) {
    int n = uvip_proxy_write(v, (struct sockaddr *)&s, (struct sockaddr *)&d,
                             b, sizeof(b));
    ck_assert_int_gt(n, 0);
    ck_assert_int_eq(uvip_proxy_parse(b, (size_t)n, &in), n);
    ck_assert_int_eq(in.version, v);
    addr_is(&in.src, "203.0.113.9", 40000);
    addr_is(&in.dst, "198.18.1.1", 8080);
    n = uvip_proxy_write(v, NULL, NULL, b, sizeof(b));
    ck_assert_int_eq(uvip_proxy_parse(b, (size_t)n, &in), n);
    ck_assert_int_eq(in.has_addrs, 0);
    ck_assert_int_eq(uvip_proxy_write(v, (struct sockaddr *)&s, NULL, b, 128),
                     UV_EINVAL);
    ck_assert_int_eq(uvip_proxy_write(v, (struct sockaddr *)&s,
                                      (struct sockaddr *)&s6, b, 128),
                     UV_EINVAL);
    ck_assert_int_eq(uvip_proxy_write(v, (struct sockaddr *)&s,
                                      (struct sockaddr *)&d, b, 10),
                     UV_ENOBUFS);
  }
  ck_assert_int_eq(uvip_proxy_write(3, NULL, NULL, b, 128), UV_EINVAL);
  ck_assert_int_eq(uvip_proxy_write(1, NULL, NULL, NULL, 128), UV_EINVAL);
  ck_assert_int_eq(uvip_proxy_parse(NULL, 1, NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_proxy_parse(NULL, 0, NULL), 0);
  ck_assert_int_eq(uvip_proxy_tlv_next(NULL, NULL, NULL, NULL, NULL),
                   UV_EINVAL);
}
END_TEST

/* Every single-byte change of valid headers: an answer in range, never a
 * length past the input (ASan watches the reads). Deterministic. */
START_TEST(test_byte_flips) {
  unsigned char base[2][128], *b;
  struct sockaddr_storage s, d;
  int lens[2], checked = 0;
  th_addr("10.1.2.3", 1234, &s);
  th_addr("10.3.2.1", 4321, &d);
  for (int v = 0; v < 2; v++)
    lens[v] = uvip_proxy_write(v + 1, (struct sockaddr *)&s,
                               (struct sockaddr *)&d, base[v], 128);
  for (int v = 0; v < 2; v++)
    for (int i = 0; i < lens[v]; i++)
      for (int x = 0; x < 256; x += 7) {
        int r;
        b = malloc((size_t)lens[v]);
        memcpy(b, base[v], (size_t)lens[v]);
        b[i] = (unsigned char)x;
        r = uvip_proxy_parse(b, (size_t)lens[v], NULL);
        ck_assert_msg(r <= lens[v] &&
                          (r >= 0 || r == UV_EPROTO || r == UV_E2BIG),
                      "v%d byte %d = %d: %d", v + 1, i, x, r);
        free(b);
        checked++;
      }
  ck_assert_int_gt(checked, 1000);
}
END_TEST

int main(void) {
  Suite *s = suite_create("proxy");
  TCase *tc = tcase_create("proxy");
  tcase_add_test(tc, test_v1_good);
  tcase_add_test(tc, test_v1_bad);
  tcase_add_test(tc, test_split_reads);
  tcase_add_test(tc, test_v2_good);
  tcase_add_test(tc, test_v2_bad);
  tcase_add_test(tc, test_write_round_trip);
  tcase_add_test(tc, test_byte_flips);
  suite_add_tcase(s, tc);
  return th_run_suite(s);
}
