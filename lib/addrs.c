/* Address lists (uvip_addrs_t: a vector with a hash set for O(1) duplicate
 * checks) and the socket address helpers: length, equality, formatting.
 * The spec parser that fills lists is in addrs-parse.c.
 * SPDX-License-Identifier: MIT */
#include "internal.h"

#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct uvip_addrs_s {
  uvip__sa_t *v;
  size_t n, cap;
  /* Open-addressing hash set of indices into v, stored as index + 1 so that
   * 0 marks an empty slot. Kept at most half full so probes stay short and
   * duplicate checks stay O(1) even for UVIP_ADDRS_MAX entries. */
  uint32_t *slots;
  size_t nslots; /* 0 or a power of two */
};

/* ------------------------------------------------------------------------ */
/* Socket address helpers                                                   */
/* ------------------------------------------------------------------------ */

socklen_t uvip__sa_len(const struct sockaddr *sa) {
  if (sa == NULL)
    return 0;
  if (sa->sa_family == AF_INET)
    return sizeof(struct sockaddr_in);
  if (sa->sa_family == AF_INET6)
    return sizeof(struct sockaddr_in6);
  return 0;
}

int uvip__sa_equal(const struct sockaddr *a, const struct sockaddr *b) {
  if (a == NULL || b == NULL || a->sa_family != b->sa_family)
    return 0;
  if (a->sa_family == AF_INET) {
    const struct sockaddr_in *x = (const struct sockaddr_in *)a;
    const struct sockaddr_in *y = (const struct sockaddr_in *)b;
    return x->sin_port == y->sin_port &&
           x->sin_addr.s_addr == y->sin_addr.s_addr;
  }
  if (a->sa_family == AF_INET6) {
    const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a;
    const struct sockaddr_in6 *y = (const struct sockaddr_in6 *)b;
    /* The scope is part of the identity: fe80::1 on two interfaces are two
     * different places to bind. */
    return x->sin6_port == y->sin6_port &&
           x->sin6_scope_id == y->sin6_scope_id &&
           memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
  }
  return 0;
}

static uint64_t mix64(uint64_t x) {
  /* splitmix64 finalizer: consecutive addresses (the common case, from
   * prefixes and ranges) must not land in consecutive slots. */
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

static uint64_t sa_hash(const struct sockaddr *sa) {
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
    return mix64(((uint64_t)in->sin_addr.s_addr << 16) ^ in->sin_port);
  }
  const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
  uint64_t a, b;
  memcpy(&a, in6->sin6_addr.s6_addr, 8);
  memcpy(&b, in6->sin6_addr.s6_addr + 8, 8);
  return mix64(mix64(a ^ 0x6666) ^ b ^ ((uint64_t)in6->sin6_port << 48));
}

/* ------------------------------------------------------------------------ */
/* The list and its hash set                                                */
/* ------------------------------------------------------------------------ */

static long set_lookup(const uvip_addrs_t *l, const struct sockaddr *sa) {
  if (l->nslots == 0)
    return -1;
  size_t mask = l->nslots - 1;
  size_t i = (size_t)sa_hash(sa) & mask;
  for (;;) {
    uint32_t s = l->slots[i];
    if (s == 0)
      return -1;
    if (uvip__sa_equal(&l->v[s - 1].sa, sa))
      return (long)(s - 1);
    i = (i + 1) & mask;
  }
}

static void set_insert(uvip_addrs_t *l, size_t idx) {
  size_t mask = l->nslots - 1;
  size_t i = (size_t)sa_hash(&l->v[idx].sa) & mask;
  while (l->slots[i] != 0)
    i = (i + 1) & mask;
  l->slots[i] = (uint32_t)(idx + 1);
}

static void set_rebuild(uvip_addrs_t *l) {
  if (l->nslots == 0)
    return;
  memset(l->slots, 0, l->nslots * sizeof(*l->slots));
  for (size_t i = 0; i < l->n; i++)
    set_insert(l, i);
}

/* Makes room for `need` entries in total. Never changes the contents, so a
 * failure here leaves the list as it was. */
int uvip__addrs_reserve(uvip_addrs_t *l, size_t need) {
  if (need > l->cap) {
    size_t cap = l->cap ? l->cap : 16;
    while (cap < need)
      cap *= 2;
    if (cap > UVIP_ADDRS_MAX && need <= UVIP_ADDRS_MAX)
      cap = UVIP_ADDRS_MAX;
    uvip__sa_t *v = realloc(l->v, cap * sizeof(*v));
    if (v == NULL)
      return UV_ENOMEM;
    l->v = v;
    l->cap = cap;
  }
  if (need * 2 > l->nslots) {
    size_t ns = l->nslots ? l->nslots : 64;
    while (ns < need * 2)
      ns *= 2;
    uint32_t *slots = calloc(ns, sizeof(*slots));
    if (slots == NULL)
      return UV_ENOMEM;
    free(l->slots);
    l->slots = slots;
    l->nslots = ns;
    set_rebuild(l);
  }
  return 0;
}

/* Appends a normalized address; room must have been reserved. */
int uvip__addrs_push(uvip_addrs_t *l, const uvip__sa_t *a) {
  if (set_lookup(l, &a->sa) >= 0)
    return UV_EEXIST;
  l->v[l->n] = *a;
  set_insert(l, l->n);
  l->n++;
  return 0;
}

void uvip__addrs_truncate(uvip_addrs_t *l, size_t n) {
  if (l->n == n)
    return;
  l->n = n;
  set_rebuild(l);
}

UVIP_EXPORT int uvip_addrs_new(uvip_addrs_t **out) {
  UVIP_CHECK_ARG(out == NULL);
  *out = NULL;
  uvip_addrs_t *l = calloc(1, sizeof(*l));
  if (l == NULL)
    return UV_ENOMEM;
  *out = l;
  return 0;
}

UVIP_EXPORT void uvip_addrs_free(uvip_addrs_t *addrs) {
  if (addrs == NULL)
    return;
  free(addrs->v);
  free(addrs->slots);
  free(addrs);
}

UVIP_EXPORT size_t uvip_addrs_count(const uvip_addrs_t *addrs) {
  return addrs ? addrs->n : 0;
}

UVIP_EXPORT const struct sockaddr *uvip_addrs_at(const uvip_addrs_t *addrs,
                                                 size_t i) {
  if (addrs == NULL || i >= addrs->n)
    return NULL;
  return &addrs->v[i].sa;
}

UVIP_EXPORT int uvip_addrs_find(const uvip_addrs_t *addrs,
                                const struct sockaddr *sa) {
  UVIP_CHECK_ARG(addrs == NULL || sa == NULL);
  if (sa->sa_family != AF_INET && sa->sa_family != AF_INET6)
    return UV_ENOENT;
  long i = set_lookup(addrs, sa);
  return i < 0 ? UV_ENOENT : (int)i;
}

/* Copies only the fields that identify the address, so that stray
 * flowinfo or padding never makes two equal addresses look different. */
static void sa_normalize(const struct sockaddr *sa, uvip__sa_t *out) {
  memset(out, 0, sizeof(*out));
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
    out->in.sin_family = AF_INET;
    out->in.sin_port = in->sin_port;
    out->in.sin_addr = in->sin_addr;
  } else {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
    out->in6.sin6_family = AF_INET6;
    out->in6.sin6_port = in6->sin6_port;
    out->in6.sin6_addr = in6->sin6_addr;
    out->in6.sin6_scope_id = in6->sin6_scope_id;
  }
}

UVIP_EXPORT int uvip_addrs_add(uvip_addrs_t *addrs, const struct sockaddr *sa) {
  UVIP_CHECK_ARG(addrs == NULL || sa == NULL);
  if (sa->sa_family != AF_INET && sa->sa_family != AF_INET6)
    return UV_EAFNOSUPPORT;
  uvip__sa_t a;
  sa_normalize(sa, &a);
  if (set_lookup(addrs, &a.sa) >= 0)
    return UV_EEXIST;
  if (addrs->n >= UVIP_ADDRS_MAX)
    return UV_E2BIG;
  int r = uvip__addrs_reserve(addrs, addrs->n + 1);
  if (r != 0)
    return r;
  return uvip__addrs_push(addrs, &a);
}

UVIP_EXPORT int uvip_addr_format(const struct sockaddr *sa, int with_port,
                                 char *buf, size_t len) {
  UVIP_CHECK_ARG(sa == NULL || buf == NULL);
  char ip[INET6_ADDRSTRLEN];
  unsigned int port;
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
    if (inet_ntop(AF_INET, &in->sin_addr, ip, sizeof(ip)) == NULL)
      return UV_EINVAL;
    port = ntohs(in->sin_port);
  } else if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
    if (inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof(ip)) == NULL)
      return UV_EINVAL;
    port = ntohs(in6->sin6_port);
  } else {
    return UV_EINVAL;
  }
  int n;
  if (!with_port)
    n = snprintf(buf, len, "%s", ip);
  else if (sa->sa_family == AF_INET6)
    n = snprintf(buf, len, "[%s]:%u", ip, port);
  else
    n = snprintf(buf, len, "%s:%u", ip, port);
  if (n < 0 || (size_t)n >= len) {
    /* A truncated address would look valid and be wrong. */
    if (len > 0)
      buf[0] = '\0';
    return UV_ENOSPC;
  }
  return 0;
}
