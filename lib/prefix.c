/* Prefixes used whole (uvip_prefix_t): parse, format, membership. A prefix
 * pool is never expanded into a uvip_addrs_t, so it has none of the list's
 * 65,536-address cap; the connector picks addresses inside it on demand
 * (connector-prefix.c) and the provisioner makes it bindable with one local
 * route (provision.c). Apart from addrs-parse.c because that parser's job
 * is expansion; the messages follow its style (docs/address-specs.md).
 * SPDX-License-Identifier: MIT */
#include "internal.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

__attribute__((format(printf, 4, 5))) static int
perr(char *errbuf, size_t errlen, size_t off, const char *fmt, ...) {
  if (errbuf != NULL && errlen > 0) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(errbuf, errlen, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < errlen)
      snprintf(errbuf + n, errlen - (size_t)n, " at offset %zu", off);
  }
  return UV_EINVAL;
}

/* Copies s[b, e) for a message: at most 64 bytes, printable. */
static const char *quote(const char *s, size_t b, size_t e, char out[68]) {
  size_t j = 0;
  for (size_t i = b; i < e && j < 64; i++) {
    unsigned char ch = (unsigned char)s[i];
    out[j++] = (ch < 0x20 || ch >= 0x7f) ? '?' : (char)ch;
  }
  if (e - b > 64) {
    memcpy(out + j, "...", 3);
    j += 3;
  }
  out[j] = '\0';
  return out;
}

static int is_space(char ch) {
  return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r';
}

/* Clears the bits after the first len of the address bytes. */
static void mask_bytes(unsigned char *b, size_t n, unsigned int len) {
  for (size_t i = 0; i < n; i++) {
    unsigned int keep = len >= 8 * (i + 1) ? 8 : len > 8 * i ? len - 8 * i : 0;
    b[i] &= (unsigned char)(0xff00u >> keep);
  }
}

UVIP_EXPORT int uvip_prefix_parse(const char *spec, uvip_prefix_t *out,
                                  char *errbuf, size_t errlen) {
  char q[68], buf[INET6_ADDRSTRLEN];
  size_t b = 0, e, ab, ae, slash;
  if (errbuf != NULL && errlen > 0)
    errbuf[0] = '\0';
  if (spec == NULL || out == NULL) {
    if (errbuf != NULL && errlen > 0)
      snprintf(errbuf, errlen, "%s is NULL", spec ? "prefix" : "spec");
    return UV_EINVAL;
  }
  e = strlen(spec);
  while (b < e && is_space(spec[b]))
    b++;
  while (e > b && is_space(spec[e - 1]))
    e--;
  if (b == e)
    return perr(errbuf, errlen, b, "empty prefix");
  ab = b;
  ae = e;
  if (spec[b] == '[') {
    if (spec[e - 1] != ']')
      return perr(errbuf, errlen, b, "'%s' is not a prefix: a prefix pool "
                  "has no port, and brackets enclose it whole",
                  quote(spec, b, e, q));
    ab = b + 1;
    ae = e - 1;
  }
  if (memchr(spec + ab, ',', ae - ab) != NULL)
    return perr(errbuf, errlen, b, "'%s' is not one prefix",
                quote(spec, b, e, q));
  const char *sl = memchr(spec + ab, '/', ae - ab);
  if (sl == NULL)
    return perr(errbuf, errlen, b, "'%s' is not a prefix (A/N)",
                quote(spec, b, e, q));
  slash = (size_t)(sl - spec);
  if (slash == ab)
    return perr(errbuf, errlen, ab, "missing address");

  uvip_prefix_t p;
  memset(&p, 0, sizeof(p));
  int v6 = memchr(spec + ab, ':', slash - ab) != NULL;
  p.family = v6 ? AF_INET6 : AF_INET;
  if (spec[b] == '[' && !v6)
    return perr(errbuf, errlen, ab, "bad IPv6 address '%s'",
                quote(spec, ab, slash, q));
  if (slash - ab >= sizeof(buf) ||
      (memcpy(buf, spec + ab, slash - ab), buf[slash - ab] = '\0',
       inet_pton(p.family, buf, &p.addr) != 1))
    return perr(errbuf, errlen, ab, "bad %s address '%s'", v6 ? "IPv6" : "IPv4",
                quote(spec, ab, slash, q));

  unsigned int width = v6 ? 128 : 32;
  size_t lb = slash + 1;
  if (lb == ae)
    return perr(errbuf, errlen, lb, "missing prefix length");
  unsigned long len = 0;
  for (size_t i = lb; i < ae; i++) {
    if (spec[i] < '0' || spec[i] > '9' || len > width)
      return perr(errbuf, errlen, lb, "bad prefix length '%s'",
                  quote(spec, lb, ae, q));
    len = len * 10 + (unsigned long)(spec[i] - '0');
  }
  if (len > width)
    return perr(errbuf, errlen, lb, "bad prefix length '%s'",
                quote(spec, lb, ae, q));
  p.len = (unsigned int)len;
  mask_bytes((unsigned char *)&p.addr, width / 8, p.len);
  *out = p;
  return 0;
}

void uvip__prefix_mask(uvip_prefix_t *p) {
  mask_bytes((unsigned char *)&p->addr, p->family == AF_INET ? 4 : 16, p->len);
}

/* A prefix a caller filled in by hand may be anything. */
bool uvip__prefix_valid(const uvip_prefix_t *p) {
  return p != NULL && ((p->family == AF_INET && p->len <= 32) ||
                       (p->family == AF_INET6 && p->len <= 128));
}

UVIP_EXPORT int uvip_prefix_format(const uvip_prefix_t *p, char *buf,
                                   size_t len) {
  char ip[INET6_ADDRSTRLEN];
  UVIP_CHECK_ARG(!uvip__prefix_valid(p) || buf == NULL);
  /* The address as given: the text must show what the caller holds. */
  inet_ntop(p->family, &p->addr, ip, sizeof(ip));
  int n = snprintf(buf, len, "%s/%u", ip, p->len);
  if (n < 0 || (size_t)n >= len) {
    if (len > 0)
      buf[0] = '\0';
    return UV_ENOSPC;
  }
  return 0;
}

UVIP_EXPORT int uvip_prefix_contains(const uvip_prefix_t *p,
                                     const struct sockaddr *sa) {
  unsigned char a[16], net[16];
  size_t n;
  UVIP_CHECK_ARG(!uvip__prefix_valid(p) || sa == NULL);
  if (sa->sa_family != p->family)
    return 0;
  if (sa->sa_family == AF_INET) {
    n = 4;
    memcpy(a, &((const struct sockaddr_in *)sa)->sin_addr, 4);
  } else {
    n = 16;
    memcpy(a, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
  }
  memcpy(net, &p->addr, n);
  mask_bytes(a, n, p->len);
  mask_bytes(net, n, p->len);
  return memcmp(a, net, n) == 0;
}
