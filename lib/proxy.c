/* The PROXY protocol, versions 1 and 2 (HAProxy's proxy-protocol.txt):
 * parsing and writing headers. Pure functions over buffers: the server's
 * accept path and the connector use them on their sockets.
 * SPDX-License-Identifier: MIT */
#include "internal.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

static const unsigned char v2sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                        0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

/* How many leading bytes of buf agree with s (a prefix check that works on
 * partial input). */
static int prefix_ok(const unsigned char *buf, size_t len, const void *s,
                     size_t slen) {
  size_t n = len < slen ? len : slen;
  return memcmp(buf, s, n) == 0;
}

/* A decimal port: 1 to 5 digits, no leading zero unless "0", <= 65535. */
static int parse_port(const char *s, size_t n, uint16_t *out) {
  unsigned long v = 0;
  if (n == 0 || n > 5 || (n > 1 && s[0] == '0'))
    return UV_EPROTO;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9')
      return UV_EPROTO;
    v = v * 10 + (unsigned long)(s[i] - '0');
  }
  if (v > 65535)
    return UV_EPROTO;
  *out = (uint16_t)v;
  return 0;
}

static int parse_addr(int v6, const char *s, size_t n, uint16_t port,
                      struct sockaddr_storage *out) {
  char tmp[INET6_ADDRSTRLEN];
  if (n == 0 || n >= sizeof(tmp))
    return UV_EPROTO;
  memcpy(tmp, s, n);
  tmp[n] = 0;
  memset(out, 0, sizeof(*out));
  if (v6) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)out;
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(port);
    return inet_pton(AF_INET6, tmp, &a->sin6_addr) == 1 ? 0 : UV_EPROTO;
  }
  struct sockaddr_in *a = (struct sockaddr_in *)out;
  a->sin_family = AF_INET;
  a->sin_port = htons(port);
  /* inet_pton takes only dotted quads: no "1", no octal, no hex. */
  return inet_pton(AF_INET, tmp, &a->sin_addr) == 1 ? 0 : UV_EPROTO;
}

/* "PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n" or "PROXY UNKNOWN...\r\n". */
static int parse_v1(const unsigned char *buf, size_t len,
                    uvip_proxy_info_t *out) {
  const char *p = (const char *)buf, *f[6];
  size_t flen[6], end, nf = 0, i, start;
  uint16_t sport, dport;
  int v6, r;
  /* The CRLF must end within 107 bytes: CR at index 105 at most. */
  for (end = 0; end < len && end < UVIP_PROXY_V1_MAX - 1; end++)
    if (buf[end] == '\r')
      break;
  if (end == UVIP_PROXY_V1_MAX - 1)
    return UV_E2BIG;
  if (end == len || end + 1 == len) {
    /* No CR yet, or nothing after it yet: more may come, unless a byte
     * that cannot be in the line already came. */
    for (i = 0; i < end; i++)
      if (buf[i] == '\n' || buf[i] == 0)
        return UV_EPROTO;
    return 0;
  }
  if (buf[end + 1] != '\n')
    return UV_EPROTO;
  /* The same bytes are refused in a complete line as in a partial one
   * (found by fuzzing: a NUL after UNKNOWN was refused while the line was
   * incomplete and accepted once complete). */
  for (i = 0; i < end; i++)
    if (buf[i] == '\n' || buf[i] == 0)
      return UV_EPROTO;
  out->version = 1;
  /* Whatever follows UNKNOWN up to the CRLF is ignored. */
  if (end >= 13 && memcmp(p, "PROXY UNKNOWN", 13) == 0 &&
      (end == 13 || p[13] == ' '))
    return (int)(end + 2);
  /* Fields split by single spaces. */
  for (i = 0, start = 0; i <= end; i++) {
    if (i == end || p[i] == ' ') {
      if (nf == 6)
        return UV_EPROTO;
      f[nf] = p + start;
      flen[nf++] = i - start;
      start = i + 1;
    } else if (p[i] < 0x21 || p[i] > 0x7e) {
      return UV_EPROTO;
    }
  }
  if (nf != 6 || flen[1] != 4 || memcmp(f[1], "TCP", 3) != 0 ||
      (f[1][3] != '4' && f[1][3] != '6'))
    return UV_EPROTO;
  v6 = f[1][3] == '6';
  if ((r = parse_port(f[4], flen[4], &sport)) != 0 ||
      (r = parse_port(f[5], flen[5], &dport)) != 0 ||
      (r = parse_addr(v6, f[2], flen[2], sport, &out->src)) != 0 ||
      (r = parse_addr(v6, f[3], flen[3], dport, &out->dst)) != 0)
    return r;
  out->has_addrs = 1;
  return (int)(end + 2);
}

static int parse_v2(const unsigned char *buf, size_t len,
                    uvip_proxy_info_t *out) {
  size_t body, need;
  unsigned int cmd, fam, proto;
  if (len < 16)
    return 0;
  if ((buf[12] >> 4) != 2)
    return UV_EPROTO;
  cmd = buf[12] & 0x0F;
  fam = buf[13] >> 4;
  proto = buf[13] & 0x0F;
  body = ((size_t)buf[14] << 8) | buf[15];
  if (cmd > 1)
    return UV_EPROTO;
  if (len < 16 + body)
    return 0;
  out->version = 2;
  out->local = cmd == 0;
  need = fam == 1 ? 12 : fam == 2 ? 36 : fam == 3 ? 216 : 0;
  if (fam > 3 || proto > 2 || body < need)
    return UV_EPROTO;
  out->tlvs = buf + 16 + need;
  out->tlvs_len = body - need;
  /* LOCAL: the balancer's own connection (a health check); its addresses,
   * if any, are not the client's. UNSPEC, UNIX and UDP carry no TCP
   * client. */
  if (cmd == 0 || proto != 1 || (fam != 1 && fam != 2))
    return (int)(16 + body);
  memset(&out->src, 0, sizeof(out->src));
  memset(&out->dst, 0, sizeof(out->dst));
  if (fam == 1) {
    struct sockaddr_in *s = (struct sockaddr_in *)&out->src,
                       *d = (struct sockaddr_in *)&out->dst;
    s->sin_family = d->sin_family = AF_INET;
    memcpy(&s->sin_addr, buf + 16, 4);
    memcpy(&d->sin_addr, buf + 20, 4);
    memcpy(&s->sin_port, buf + 24, 2);
    memcpy(&d->sin_port, buf + 26, 2);
  } else {
    struct sockaddr_in6 *s = (struct sockaddr_in6 *)&out->src,
                        *d = (struct sockaddr_in6 *)&out->dst;
    s->sin6_family = d->sin6_family = AF_INET6;
    memcpy(&s->sin6_addr, buf + 16, 16);
    memcpy(&d->sin6_addr, buf + 32, 16);
    memcpy(&s->sin6_port, buf + 48, 2);
    memcpy(&d->sin6_port, buf + 50, 2);
  }
  out->has_addrs = 1;
  return (int)(16 + body);
}

UVIP_EXPORT int uvip_proxy_parse(const void *buf, size_t len,
                                 uvip_proxy_info_t *out) {
  const unsigned char *b = buf;
  uvip_proxy_info_t scratch;
  UVIP_CHECK_ARG(buf == NULL && len > 0);
  if (!out)
    out = &scratch;
  memset(out, 0, sizeof(*out));
  if (len == 0)
    return 0;
  if (b[0] == 0x0D) {
    if (!prefix_ok(b, len, v2sig, sizeof(v2sig)))
      return UV_EPROTO;
    return len < sizeof(v2sig) ? 0 : parse_v2(b, len, out);
  }
  if (!prefix_ok(b, len, "PROXY ", 6))
    return UV_EPROTO;
  return len < 6 ? 0 : parse_v1(b, len, out);
}

UVIP_EXPORT int uvip_proxy_tlv_next(const uvip_proxy_info_t *info,
                                    size_t *off, unsigned int *type,
                                    const unsigned char **value,
                                    size_t *vlen) {
  size_t o, n;
  UVIP_CHECK_ARG(info == NULL || off == NULL || type == NULL ||
                 value == NULL || vlen == NULL);
  o = *off;
  if (o >= info->tlvs_len)
    return 0;
  if (info->tlvs_len - o < 3)
    return UV_EPROTO;
  n = ((size_t)info->tlvs[o + 1] << 8) | info->tlvs[o + 2];
  if (info->tlvs_len - o - 3 < n)
    return UV_EPROTO;
  *type = info->tlvs[o];
  *value = info->tlvs + o + 3;
  *vlen = n;
  *off = o + 3 + n;
  return 1;
}

UVIP_EXPORT int uvip_proxy_write(int version, const struct sockaddr *src,
                                 const struct sockaddr *dst, void *buf,
                                 size_t len) {
  unsigned char *b = buf;
  UVIP_CHECK_ARG(buf == NULL || (version != 1 && version != 2));
  UVIP_CHECK_ARG((src == NULL) != (dst == NULL));
  if (src) {
    UVIP_CHECK_ARG(src->sa_family != dst->sa_family);
    UVIP_CHECK_ARG(src->sa_family != AF_INET && src->sa_family != AF_INET6);
  }
  if (version == 1) {
    char line[UVIP_PROXY_V1_MAX + 1], a[INET6_ADDRSTRLEN], d[INET6_ADDRSTRLEN];
    int n;
    if (!src) {
      n = snprintf(line, sizeof(line), "PROXY UNKNOWN\r\n");
    } else if (src->sa_family == AF_INET) {
      const struct sockaddr_in *s = (const void *)src, *t = (const void *)dst;
      inet_ntop(AF_INET, &s->sin_addr, a, sizeof(a));
      inet_ntop(AF_INET, &t->sin_addr, d, sizeof(d));
      n = snprintf(line, sizeof(line), "PROXY TCP4 %s %s %u %u\r\n", a, d,
                   ntohs(s->sin_port), ntohs(t->sin_port));
    } else {
      const struct sockaddr_in6 *s = (const void *)src, *t = (const void *)dst;
      inet_ntop(AF_INET6, &s->sin6_addr, a, sizeof(a));
      inet_ntop(AF_INET6, &t->sin6_addr, d, sizeof(d));
      n = snprintf(line, sizeof(line), "PROXY TCP6 %s %s %u %u\r\n", a, d,
                   ntohs(s->sin6_port), ntohs(t->sin6_port));
    }
    if ((size_t)n > len)
      return UV_ENOBUFS;
    memcpy(b, line, (size_t)n);
    return n;
  }
  {
    size_t body = !src ? 0 : src->sa_family == AF_INET ? 12 : 36;
    if (len < 16 + body)
      return UV_ENOBUFS;
    memcpy(b, v2sig, sizeof(v2sig));
    b[12] = src ? 0x21 : 0x20; /* version 2, PROXY or LOCAL */
    b[13] = !src ? 0x00 : src->sa_family == AF_INET ? 0x11 : 0x21;
    b[14] = 0;
    b[15] = (unsigned char)body;
    if (src && src->sa_family == AF_INET) {
      const struct sockaddr_in *s = (const void *)src, *t = (const void *)dst;
      memcpy(b + 16, &s->sin_addr, 4);
      memcpy(b + 20, &t->sin_addr, 4);
      memcpy(b + 24, &s->sin_port, 2);
      memcpy(b + 26, &t->sin_port, 2);
    } else if (src) {
      const struct sockaddr_in6 *s = (const void *)src,
                                *t = (const void *)dst;
      memcpy(b + 16, &s->sin6_addr, 16);
      memcpy(b + 32, &t->sin6_addr, 16);
      memcpy(b + 48, &s->sin6_port, 2);
      memcpy(b + 50, &t->sin6_port, 2);
    }
    return (int)(16 + body);
  }
}
