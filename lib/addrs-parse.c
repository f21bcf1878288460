/* The address-spec parser, uvip_addrs_parse(): single addresses, CIDR
 * prefixes and ranges, IPv4 and IPv6, with ports and errors that quote the
 * spec (docs/address-specs.md). It is apart from addrs.c because it is a
 * concern of its own, with its own 128-bit arithmetic; it reaches the list
 * only through uvip__addrs_reserve/push/truncate.
 * SPDX-License-Identifier: MIT */
#include "internal.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* 128-bit arithmetic, enough for IPv6 prefixes and ranges                  */
/* ------------------------------------------------------------------------ */

/* A portable unsigned 128-bit value (unsigned __int128 is missing on 32-bit
 * targets). IPv4 addresses use lo only. */
typedef struct {
  uint64_t hi, lo;
} u128_t;

static int u128_cmp(u128_t a, u128_t b) {
  if (a.hi != b.hi)
    return a.hi < b.hi ? -1 : 1;
  if (a.lo != b.lo)
    return a.lo < b.lo ? -1 : 1;
  return 0;
}

static u128_t u128_sub(u128_t a, u128_t b) {
  u128_t r;
  r.lo = a.lo - b.lo;
  r.hi = a.hi - b.hi - (a.lo < b.lo);
  return r;
}

static u128_t u128_add64(u128_t a, uint64_t b) {
  u128_t r;
  r.lo = a.lo + b;
  r.hi = a.hi + (r.lo < a.lo);
  return r;
}

/* The lowest `bits` bits set (0..128). */
static u128_t u128_low_mask(unsigned int bits) {
  u128_t m = {0, 0};
  if (bits >= 128) {
    m.hi = m.lo = UINT64_MAX;
  } else if (bits >= 64) {
    m.lo = UINT64_MAX;
    m.hi = bits == 64 ? 0 : (UINT64_C(1) << (bits - 64)) - 1;
  } else if (bits > 0) {
    m.lo = (UINT64_C(1) << bits) - 1;
  }
  return m;
}

/* Decimal text of a + extra (extra is 0 or 1: a count is often "last minus
 * first, plus one", which may not fit in 128 bits). */
static void u128_to_dec(u128_t a, int plus_one, char *out, size_t len) {
  if (plus_one && a.hi == UINT64_MAX && a.lo == UINT64_MAX) {
    snprintf(out, len, "340282366920938463463374607431768211456");
    return;
  }
  if (plus_one)
    a = u128_add64(a, 1);
  uint32_t limb[4] = {(uint32_t)(a.hi >> 32), (uint32_t)a.hi,
                      (uint32_t)(a.lo >> 32), (uint32_t)a.lo};
  char tmp[48];
  size_t n = 0;
  do {
    uint64_t rem = 0;
    for (int i = 0; i < 4; i++) {
      uint64_t cur = (rem << 32) | limb[i];
      limb[i] = (uint32_t)(cur / 10);
      rem = cur % 10;
    }
    tmp[n++] = (char)('0' + rem);
  } while ((limb[0] | limb[1] | limb[2] | limb[3]) != 0);
  size_t j = 0;
  while (n > 0 && j + 1 < len)
    out[j++] = tmp[--n];
  if (len > 0)
    out[j] = '\0';
}

static void sa_from_u128(int family, u128_t v, unsigned int port,
                         uvip__sa_t *out) {
  memset(out, 0, sizeof(*out));
  if (family == AF_INET) {
    out->in.sin_family = AF_INET;
    out->in.sin_port = htons((uint16_t)port);
    out->in.sin_addr.s_addr = htonl((uint32_t)v.lo);
  } else {
    out->in6.sin6_family = AF_INET6;
    out->in6.sin6_port = htons((uint16_t)port);
    for (int i = 0; i < 8; i++) {
      out->in6.sin6_addr.s6_addr[i] = (uint8_t)(v.hi >> (56 - 8 * i));
      out->in6.sin6_addr.s6_addr[8 + i] = (uint8_t)(v.lo >> (56 - 8 * i));
    }
  }
}

/* ------------------------------------------------------------------------ */
/* Spec parser                                                              */
/* ------------------------------------------------------------------------ */

typedef struct {
  const char *spec;
  char *errbuf;
  size_t errlen;
} parse_ctx_t;

/* Longest piece of user input quoted in a message. */
#define QUOTE_MAX 64

/* Quotes spec[b, e) for a message: bounded, and with control and non-ASCII
 * bytes replaced so the message stays one printable line. */
static const char *quote(const parse_ctx_t *c, size_t b, size_t e,
                         char out[QUOTE_MAX + 4]) {
  size_t j = 0;
  for (size_t i = b; i < e && j < QUOTE_MAX; i++) {
    unsigned char ch = (unsigned char)c->spec[i];
    out[j++] = (ch < 0x20 || ch >= 0x7f) ? '?' : (char)ch;
  }
  if (e - b > QUOTE_MAX) {
    memcpy(out + j, "...", 3);
    j += 3;
  }
  out[j] = '\0';
  return out;
}

/* For errors about the call rather than a place in the spec. */
#define NO_OFFSET ((size_t)-1)

__attribute__((format(printf, 4, 5))) static int
perr(const parse_ctx_t *c, int code, size_t off, const char *fmt, ...) {
  if (c->errbuf == NULL || c->errlen == 0)
    return code;
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(c->errbuf, c->errlen, fmt, ap);
  va_end(ap);
  if (n >= 0 && (size_t)n < c->errlen && off != NO_OFFSET)
    snprintf(c->errbuf + n, c->errlen - (size_t)n, " at offset %zu", off);
  return code;
}

static int is_space(char ch) {
  return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r';
}

static int is_digit(char ch) { return ch >= '0' && ch <= '9'; }

/* Parses decimal digits in spec[b, e); returns -1 when empty or not all
 * digits, and saturates at `max + 1` so huge numbers cannot overflow. */
static long parse_uint(const char *s, size_t b, size_t e, long max) {
  if (b == e)
    return -1;
  long v = 0;
  for (size_t i = b; i < e; i++) {
    if (!is_digit(s[i]))
      return -1;
    if (v <= max)
      v = v * 10 + (s[i] - '0');
  }
  return v > max ? max + 1 : v;
}

static int parse_port(const parse_ctx_t *c, size_t b, size_t e,
                      unsigned int *port) {
  char q[QUOTE_MAX + 4];
  if (b == e)
    return perr(c, UV_EINVAL, b, "missing port");
  long v = parse_uint(c->spec, b, e, 65535);
  if (v < 0)
    return perr(c, UV_EINVAL, b, "bad port '%s'", quote(c, b, e, q));
  if (v > 65535)
    return perr(c, UV_EINVAL, b, "port '%s' out of range", quote(c, b, e, q));
  *port = (unsigned int)v;
  return 0;
}

/* Parses one address in spec[b, e). With only6 (inside brackets) IPv4 is
 * refused. */
static int parse_ip(const parse_ctx_t *c, size_t b, size_t e, int only6,
                    const char *what, int *family, u128_t *v) {
  char q[QUOTE_MAX + 4];
  if (b == e)
    return perr(c, UV_EINVAL, b, "missing %s", what);
  int v6 = only6 || memchr(c->spec + b, ':', e - b) != NULL;
  char buf[INET6_ADDRSTRLEN];
  unsigned char bytes[16];
  if (e - b >= sizeof(buf) ||
      (memcpy(buf, c->spec + b, e - b), buf[e - b] = '\0',
       inet_pton(v6 ? AF_INET6 : AF_INET, buf, bytes) != 1)) {
    return perr(c, UV_EINVAL, b, "bad %s address '%s'", v6 ? "IPv6" : "IPv4",
                quote(c, b, e, q));
  }
  v->hi = v->lo = 0;
  if (v6) {
    for (int i = 0; i < 8; i++) {
      v->hi = (v->hi << 8) | bytes[i];
      v->lo = (v->lo << 8) | bytes[8 + i];
    }
    *family = AF_INET6;
  } else {
    v->lo = ((uint64_t)bytes[0] << 24) | ((uint64_t)bytes[1] << 16) |
            ((uint64_t)bytes[2] << 8) | bytes[3];
    *family = AF_INET;
  }
  return 0;
}

/* Parses and appends one item, spec[b, e), already trimmed and not empty. */
static int parse_item(const parse_ctx_t *c, uvip_addrs_t *l, size_t b,
                      size_t e, unsigned int port) {
  const char *s = c->spec;
  char q[QUOTE_MAX + 4];
  size_t ab = b, ae = e; /* the address part, without brackets or port */
  int only6 = 0;
  int r;

  if (s[b] == '[') {
    const char *close = memchr(s + b, ']', e - b);
    if (close == NULL)
      return perr(c, UV_EINVAL, b, "missing ']' in '%s'", quote(c, b, e, q));
    only6 = 1;
    ab = b + 1;
    ae = (size_t)(close - s);
    size_t after = ae + 1;
    if (after < e) {
      if (s[after] != ':')
        return perr(c, UV_EINVAL, after, "unexpected '%s' after ']'",
                    quote(c, after, e, q));
      if ((r = parse_port(c, after + 1, e, &port)) != 0)
        return r;
    }
  } else {
    /* Without brackets a colon is a port separator only for IPv4: an IPv6
     * address always has two or more colons, and an IPv4 address (a dot)
     * right before the first colon means IPv4 followed by a possibly
     * malformed port, which deserves a port error, not an IPv6 one. */
    const char *colon = memchr(s + b, ':', e - b);
    if (colon != NULL) {
      size_t ci = (size_t)(colon - s);
      int more = memchr(colon + 1, ':', e - ci - 1) != NULL;
      size_t tb = ci;
      while (tb > b && s[tb - 1] != '-' && s[tb - 1] != '/')
        tb--;
      if (!more || memchr(s + tb, '.', ci - tb) != NULL) {
        ae = ci;
        if ((r = parse_port(c, ci + 1, e, &port)) != 0)
          return r;
      }
    }
  }
  if (ab == ae)
    return perr(c, UV_EINVAL, ab, "missing address");

  int family, family2;
  u128_t first, last;
  const char *slash = memchr(s + ab, '/', ae - ab);
  const char *dash = memchr(s + ab, '-', ae - ab);
  if (slash != NULL) {
    size_t si = (size_t)(slash - s);
    if ((r = parse_ip(c, ab, si, only6, "address", &family, &first)) != 0)
      return r;
    unsigned int width = family == AF_INET ? 32 : 128;
    if (si + 1 == ae)
      return perr(c, UV_EINVAL, si + 1, "missing prefix length");
    long plen = parse_uint(s, si + 1, ae, (long)width);
    if (plen < 0 || plen > (long)width)
      return perr(c, UV_EINVAL, si + 1, "bad prefix length '%s'",
                  quote(c, si + 1, ae, q));
    u128_t host = u128_low_mask(width - (unsigned int)plen);
    /* Host bits in A are allowed: the prefix is what counts. */
    first.hi &= ~host.hi;
    first.lo &= ~host.lo;
    last.hi = first.hi | host.hi;
    last.lo = first.lo | host.lo;
    /* A prefix means the addresses a host may own on that subnet. The
     * all-zero host address is never one: IPv4's network address, IPv6's
     * Subnet-Router anycast address (RFC 4291 2.6.1). IPv4 also leaves out
     * broadcast; IPv6 has none. Point-to-point prefixes (/31, RFC 3021;
     * /127, RFC 6164) and single addresses keep every address, and so do
     * ranges: they are taken as written. */
    if (family == AF_INET) {
      last.hi = 0;
      last.lo &= 0xffffffffu;
      if (plen < 31) {
        first = u128_add64(first, 1);
        last = u128_sub(last, (u128_t){0, 1});
      }
    } else if (plen < 127) {
      first = u128_add64(first, 1);
    }
  } else if (dash != NULL) {
    size_t di = (size_t)(dash - s);
    if ((r = parse_ip(c, ab, di, only6, "range start", &family, &first)) != 0)
      return r;
    if ((r = parse_ip(c, di + 1, ae, only6, "range end", &family2, &last)) !=
        0)
      return r;
    if (family != family2)
      return perr(c, UV_EINVAL, ab, "mixed families in range");
    if (u128_cmp(first, last) > 0)
      return perr(c, UV_EINVAL, ab, "range start after end");
  } else {
    if ((r = parse_ip(c, ab, ae, only6, "address", &family, &first)) != 0)
      return r;
    last = first;
  }

  /* Count before expanding: a /8 or an IPv6 /64 must be refused without
   * allocating anything. */
  u128_t span = u128_sub(last, first); /* count - 1 */
  if (span.hi != 0 || span.lo >= UVIP_ADDRS_MAX) {
    char num[48];
    u128_to_dec(span, 1, num, sizeof(num));
    return perr(c, UV_E2BIG, b, "'%s' expands to %s addresses, more than %d",
                quote(c, b, e, q), num, UVIP_ADDRS_MAX);
  }
  size_t count = (size_t)span.lo + 1;
  size_t n = uvip_addrs_count(l);
  if (n + count > UVIP_ADDRS_MAX)
    return perr(c, UV_E2BIG, b,
                "'%s' would make %zu addresses, more than %d",
                quote(c, b, e, q), n + count, UVIP_ADDRS_MAX);
  if ((r = uvip__addrs_reserve(l, n + count)) != 0)
    return perr(c, r, b, "out of memory");

  u128_t cur = first;
  for (size_t i = 0; i < count; i++, cur = u128_add64(cur, 1)) {
    uvip__sa_t a;
    sa_from_u128(family, cur, port, &a);
    if (uvip__addrs_push(l, &a) != 0) {
      char txt[UVIP_ADDRSTRLEN];
      uvip_addr_format(&a.sa, 1, txt, sizeof(txt));
      return perr(c, UV_EEXIST, b, "duplicate address %s", txt);
    }
  }
  return 0;
}

UVIP_EXPORT int uvip_addrs_parse(uvip_addrs_t *addrs, const char *spec,
                                 int default_port, char *errbuf,
                                 size_t errlen) {
  if (errbuf != NULL && errlen > 0)
    errbuf[0] = '\0';
  parse_ctx_t c = {spec, errbuf, errlen};
  if (addrs == NULL || spec == NULL) {
    c.spec = "";
    return perr(&c, UV_EINVAL, NO_OFFSET, "%s is NULL", addrs ? "spec" : "list");
  }
  if (default_port < 0 || default_port > 65535)
    return perr(&c, UV_EINVAL, NO_OFFSET, "default port %d out of range",
                default_port);

  size_t n0 = uvip_addrs_count(addrs);
  size_t pos = 0;
  for (;;) {
    size_t start = pos;
    size_t end = start;
    while (spec[end] != '\0' && spec[end] != ',')
      end++;
    size_t b = start, e = end;
    while (b < e && is_space(spec[b]))
      b++;
    while (e > b && is_space(spec[e - 1]))
      e--;
    int r;
    if (b == e)
      r = perr(&c, UV_EINVAL, start, "empty item");
    else
      r = parse_item(&c, addrs, b, e, (unsigned int)default_port);
    if (r != 0) {
      uvip__addrs_truncate(addrs, n0);
      return r;
    }
    if (spec[end] == '\0')
      break;
    pos = end + 1;
  }
  return 0;
}
