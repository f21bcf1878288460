/* Census tables: fixed-size hash tables that the dumps (census-dump.c)
 * count sockets into while streaming (no allocation per socket or per
 * sample), one set per shard so that parallel dumps share nothing, and the
 * merge of the shards' tables into the census's results. census.c drives a
 * sample through these and serves the results.
 * SPDX-License-Identifier: MIT */
#include <stdlib.h>
#include <string.h>

#include "census-state.h"

/* Keys are 20 (akey_t) or 40 (tkey_t) bytes, multiples of 4. Hashing them
 * eight bytes at a time and comparing them with word loads (the size is a
 * constant once tbl_get_k() is inlined) keeps the per-socket lookups, two to
 * five per socket, a small part of the census next to the kernel's dump. */
static inline uint32_t hash_key(const void *key, size_t ksize) {
  const char *p = key;
  uint64_t h = 0x9e3779b97f4a7c15ull, w;
  size_t i = 0;
  for (; i + 8 <= ksize; i += 8) {
    memcpy(&w, p + i, 8);
    h = (h ^ w) * 0xff51afd7ed558ccdull;
    h ^= h >> 29;
  }
  if (i < ksize) {
    uint32_t t;
    memcpy(&t, p + i, 4);
    h = (h ^ t) * 0xff51afd7ed558ccdull;
  }
  h ^= h >> 32;
  return (uint32_t)h;
}

static inline int key_eq(const void *a, const void *b, size_t ksize) {
  const char *x = a, *y = b;
  uint64_t d = 0, u, v;
  size_t i = 0;
  for (; i + 8 <= ksize; i += 8) {
    memcpy(&u, x + i, 8);
    memcpy(&v, y + i, 8);
    d |= u ^ v;
  }
  if (i < ksize) {
    uint32_t s, t;
    memcpy(&s, x + i, 4);
    memcpy(&t, y + i, 4);
    d |= s ^ t;
  }
  return d == 0;
}

static int tbl_init(tbl_t *t, size_t ksize, size_t cap, int ordered) {
  size_t slots = 16;
  while (slots < cap * 2)
    slots <<= 1;
  memset(t, 0, sizeof(*t));
  t->ksize = ksize;
  t->cap = cap;
  t->mask = (uint32_t)(slots - 1);
  t->gen = 1;
  t->keys = calloc(cap ? cap : 1, ksize);
  t->slot = calloc(slots, sizeof(uint32_t));
  t->sgen = calloc(slots, sizeof(uint32_t));
  if (ordered) {
    t->order = calloc(cap ? cap : 1, sizeof(uint32_t));
    t->rank = calloc(cap ? cap : 1, sizeof(uint32_t));
  }
  if (!t->keys || !t->slot || !t->sgen ||
      (ordered && (!t->order || !t->rank)))
    return UV_ENOMEM;
  return 0;
}

static void tbl_free(tbl_t *t) {
  free(t->keys);
  free(t->slot);
  free(t->sgen);
  free(t->order);
  free(t->rank);
}

static void tbl_reset(tbl_t *t) {
  t->n = 0;
  if (++t->gen == 0) { /* wrapped: stale generations could match again */
    memset(t->sgen, 0, (t->mask + 1) * sizeof(uint32_t));
    t->gen = 1;
  }
}

/* Returns the dense index of key, inserting it when insert is set and there
 * is room; -1 when absent or full. *added tells a fresh insert. Inlined
 * with ksize a constant: see hash_key(). */
static inline __attribute__((always_inline)) long
tbl_get_k(tbl_t *t, const void *key, int insert, int *added, size_t ksize) {
  uint32_t i = hash_key(key, ksize) & t->mask;
  for (;;) {
    if (t->sgen[i] != t->gen) {
      if (!insert || t->n == t->cap)
        return -1;
      t->sgen[i] = t->gen;
      t->slot[i] = (uint32_t)t->n;
      memcpy(t->keys + t->n * ksize, key, ksize);
      if (added)
        *added = 1;
      return (long)t->n++;
    }
    if (key_eq(t->keys + (size_t)t->slot[i] * ksize, key, ksize))
      return t->slot[i];
    i = (i + 1) & t->mask;
  }
}

/* An address table (akey_t keys) or the tuple table (tkey_t keys). */
static long aget(tbl_t *t, const akey_t *key, int insert, int *added) {
  return tbl_get_k(t, key, insert, added, sizeof(akey_t));
}

static long tget(tbl_t *t, const tkey_t *key, int insert, int *added) {
  return tbl_get_k(t, key, insert, added, sizeof(tkey_t));
}

static void akey_from_raw(akey_t *k, int fam, const uint32_t *a, int port) {
  memset(k, 0, sizeof(*k));
  k->port = (uint16_t)port;
  /* IPv4-mapped IPv6 (a dual-stack listener's sockets) counts as IPv4. */
  if (fam == AF_INET6 && a[0] == 0 && a[1] == 0 && a[2] == htonl(0xffff)) {
    k->fam = AF_INET;
    k->a[0] = a[3];
  } else if (fam == AF_INET6) {
    k->fam = AF_INET6;
    memcpy(k->a, a, 16);
  } else {
    k->fam = AF_INET;
    k->a[0] = a[0];
  }
}

static void akey_from_sa(akey_t *k, const struct sockaddr *sa, int with_port) {
  if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
    uint32_t a[4];
    memcpy(a, &s6->sin6_addr, 16);
    akey_from_raw(k, AF_INET6, a, with_port ? ntohs(s6->sin6_port) : 0);
  } else {
    const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
    akey_from_raw(k, AF_INET, &s4->sin_addr.s_addr,
                  with_port ? ntohs(s4->sin_port) : 0);
  }
}

static void akey_to_sa(const akey_t *k, struct sockaddr_storage *ss) {
  memset(ss, 0, sizeof(*ss));
  if (k->fam == AF_INET6) {
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons(k->port);
    memcpy(&s6->sin6_addr, k->a, 16);
  } else {
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    s4->sin_family = AF_INET;
    s4->sin_port = htons(k->port);
    s4->sin_addr.s_addr = k->a[0];
  }
}

static int akey_cmp(const akey_t *a, const akey_t *b) {
  if (a->fam != b->fam)
    return a->fam < b->fam ? -1 : 1;
  int r = memcmp(a->a, b->a, 16); /* network order: numeric order */
  if (r)
    return r;
  return a->port < b->port ? -1 : a->port > b->port;
}

/* ------------------------------------------------------------------------ */

static int is_listening(const uvip_census_t *c, const akey_t *l) {
  akey_t w;
  tbl_t *lst = (tbl_t *)&c->lst; /* lookups only: safe from every shard */
  if (!(c->lports[l->port / 64] >> (l->port % 64) & 1))
    return 0; /* no listener on this port, whatever the address */
  if (aget(lst, l, 0, NULL) >= 0)
    return 1;
  memset(&w, 0, sizeof(w));
  w.port = l->port;
  w.fam = l->fam;
  if (aget(lst, &w, 0, NULL) >= 0)
    return 1;
  /* An IPv4 connection accepted by a dual-stack "::" listener. */
  w.fam = AF_INET6;
  return l->fam == AF_INET && aget(lst, &w, 0, NULL) >= 0;
}

static int is_wildcard(const akey_t *k) {
  return !k->a[0] && !k->a[1] && !k->a[2] && !k->a[3];
}

/* The per-socket path. kstate is the kernel's state number. Listeners go
 * into the census's table: only one shard sees them (shard 0, while no
 * other runs). */
static void count_socket(uvip__cshard_t *s, int fam, int kstate,
                         const uint32_t *src, int sport, const uint32_t *dst,
                         int dport, uint32_t rq, uint32_t wq) {
  uvip_census_t *c = s->c;
  akey_t lk;
  int state, inbound, added = 0;
  long v, li;

  s->seen++;
  s->tw_seen += kstate == UVIP_TCP_TIME_WAIT + 1;
  if (kstate == KSTATE_NEW_SYN_RECV)
    kstate = UVIP_TCP_SYN_RECV + 1;
  if (kstate < 1 || kstate > UVIP_TCP_STATE_COUNT)
    return;
  state = kstate - 1;
  akey_from_raw(&lk, fam, src, 0);

  v = aget(&s->vips, &lk, c->nfilter == 0, &added);
  if (added) /* rows are cleared on insert: a reset is O(1) */
    memset(&s->vcnt[v], 0, sizeof(s->vcnt[v]));

  lk.port = (uint16_t)sport;
  if (state == UVIP_TCP_LISTEN) {
    if (v < 0 && c->nfilter && !is_wildcard(&lk))
      return; /* another address's listener: not needed to classify ours */
    added = 0;
    li = aget(&c->lst, &lk, 1, &added);
    if (li < 0) {
      s->listeners_overflow++;
    } else {
      uvip_census_listener_t *L = &c->lst_rows[li];
      if (added) {
        memset(L, 0, sizeof(*L));
        akey_to_sa(&lk, &L->addr);
        c->lports[lk.port / 64] |= 1ull << (lk.port % 64);
      }
      /* A SO_REUSEPORT group shows as one listener: its queues add up. */
      L->sockets++;
      L->queue += rq;
      L->backlog = c->info.source == UVIP_CENSUS_SRC_PROCFS
                       ? -1
                       : L->backlog + (int64_t)wq;
    }
    if (v < 0 && c->nfilter)
      return; /* a wildcard listener kept only to classify our sockets */
    inbound = 1;
  } else {
    if (v < 0 && c->nfilter)
      return;
    inbound = is_listening(c, &lk);
    if (inbound && state == UVIP_TCP_SYN_RECV) {
      li = aget(&c->lst, &lk, 0, NULL);
      if (li < 0) {
        akey_t w = lk;
        memset(w.a, 0, sizeof(w.a));
        li = aget(&c->lst, &w, 0, NULL);
        /* An IPv4 handshake on a dual-stack "::" listener is an IPv4
         * request socket: the same listeners as is_listening(). */
        if (li < 0 && lk.fam == AF_INET) {
          w.fam = AF_INET6;
          li = aget(&c->lst, &w, 0, NULL);
        }
      }
      if (li >= 0)
        s->lsyn[li]++;
    }
  }
  if (!(c->opts.states & (1u << state)))
    return;
  s->sockets++;
  if (inbound)
    s->totals.in[state]++;
  else
    s->totals.out[state]++;
  if (v < 0) {
    s->vips_overflow++;
  } else if (inbound) {
    s->vcnt[v].in[state]++;
  } else {
    s->vcnt[v].out[state]++;
  }
  if (inbound)
    return;

  tkey_t tk;
  lk.port = 0;
  tk.l = lk;
  akey_from_raw(&tk.r, fam, dst, dport);
  added = 0;
  long ti = tget(&s->tup, &tk, 1, &added);
  if (ti < 0) {
    s->tuples_overflow++;
    return;
  }
  tcount_t *T = &s->tcnt[ti];
  if (added)
    memset(T, 0, sizeof(*T));
  T->in_use++;
  if (state == UVIP_TCP_TIME_WAIT)
    T->time_wait++;
}

void uvip__census_count(uvip__cshard_t *s, int fam, int kstate,
                        const uint32_t *src, int sport, const uint32_t *dst,
                        int dport, uint32_t rq, uint32_t wq) {
  count_socket(s, fam, kstate, src, sport, dst, dport, rq, wq);
}

/* ------------------------------------------------------------------------ */
/* Shards                                                                   */

static void shard_free(uvip__cshard_t *s) {
  tbl_free(&s->vips);
  tbl_free(&s->tup);
  free(s->vcnt);
  free(s->tcnt);
  free(s->lsyn);
  free(s->buf);
  free(s->bc);
}

static int shard_init(uvip_census_t *c, uvip__cshard_t *s, int index) {
  const uvip_census_options_t *o = &c->opts;
  int rc;
  s->c = c;
  s->index = index;
  s->buflen = o->rcvbuf > PROC_CHUNK ? o->rcvbuf : PROC_CHUNK;
  s->buf = malloc(s->buflen);
  s->bc = malloc(UVIP__BC_CAP);
  s->vcnt = calloc(o->max_vips, sizeof(*s->vcnt));
  s->tcnt = calloc(o->max_tuples, sizeof(*s->tcnt));
  s->lsyn = calloc(o->max_listeners, sizeof(*s->lsyn));
  if (!s->buf || !s->bc || !s->vcnt || !s->tcnt || !s->lsyn)
    return UV_ENOMEM;
  if ((rc = tbl_init(&s->vips, sizeof(akey_t), o->max_vips, 0)) != 0 ||
      (rc = tbl_init(&s->tup, sizeof(tkey_t), o->max_tuples, 0)) != 0)
    return rc;
  return 0;
}

/* Empties a shard; the filter's rows exist (with zero counts) in every
 * sample, in list order. lsyn is indexed like the census's listener table,
 * which is reset at the same time. */
static void shard_reset(uvip__cshard_t *s) {
  uvip_census_t *c = s->c;
  tbl_reset(&s->vips);
  tbl_reset(&s->tup);
  memset(&s->totals, 0, sizeof(s->totals));
  s->seen = s->sockets = s->vips_overflow = s->listeners_overflow = 0;
  s->tuples_overflow = s->reads = s->bytes = s->tw_seen = 0;
  s->rc = 0;
  for (size_t i = 0; i < c->nfilter; i++) {
    long v = aget(&s->vips, &c->filter[i], 1, NULL);
    memset(&s->vcnt[v], 0, sizeof(s->vcnt[v]));
  }
  memset(s->lsyn, 0, c->opts.max_listeners * sizeof(*s->lsyn));
}

/* Adds a shard's results into the census's. The census's tables have the
 * same caps; what finds them full is counted as overflow, as a socket
 * would be. */
static void shard_merge(uvip_census_t *c, const uvip__cshard_t *s) {
  for (int st = 0; st < UVIP_TCP_STATE_COUNT; st++) {
    c->totals.in[st] += s->totals.in[st];
    c->totals.out[st] += s->totals.out[st];
  }
  c->info.seen += s->seen;
  c->info.sockets += s->sockets;
  c->info.vips_overflow += s->vips_overflow;
  c->info.listeners_overflow += s->listeners_overflow;
  c->info.tuples_overflow += s->tuples_overflow;
  c->info.reads += s->reads;
  c->info.bytes += s->bytes;

  for (size_t i = 0; i < s->vips.n; i++) {
    const akey_t *k = (const akey_t *)(s->vips.keys + i * s->vips.ksize);
    const uvip_census_counts_t *n = &s->vcnt[i];
    int added = 0;
    long v = aget(&c->vips, k, c->nfilter == 0, &added);
    if (v < 0) {
      for (int st = 0; st < UVIP_TCP_STATE_COUNT; st++)
        c->info.vips_overflow += n->in[st] + n->out[st];
      continue;
    }
    uvip_census_vip_t *V = &c->vip_rows[v];
    if (added) {
      memset(V, 0, sizeof(*V));
      akey_to_sa(k, &V->addr);
    }
    for (int st = 0; st < UVIP_TCP_STATE_COUNT; st++) {
      V->counts.in[st] += n->in[st];
      V->counts.out[st] += n->out[st];
    }
  }
  for (size_t i = 0; i < s->tup.n; i++) {
    const tkey_t *k = (const tkey_t *)(s->tup.keys + i * s->tup.ksize);
    int added = 0;
    long t = tget(&c->tup, k, 1, &added);
    if (t < 0) {
      c->info.tuples_overflow += s->tcnt[i].in_use;
      continue;
    }
    uvip_census_tuple_t *T = &c->tup_rows[t];
    if (added) {
      memset(T, 0, sizeof(*T));
      akey_to_sa(&k->l, &T->local);
      akey_to_sa(&k->r, &T->remote);
    }
    T->in_use += s->tcnt[i].in_use;
    T->time_wait += s->tcnt[i].time_wait;
  }
  for (size_t i = 0; i < c->lst.n; i++)
    c->lst_rows[i].syn_recv += s->lsyn[i];
}

/* ------------------------------------------------------------------------ */
/* Results                                                                  */

int uvip__census_tables_init(uvip_census_t *c) {
  const uvip_census_options_t *o = &c->opts;
  int rc;
  if ((rc = tbl_init(&c->vips, sizeof(akey_t), o->max_vips, 1)) != 0 ||
      (rc = tbl_init(&c->lst, sizeof(akey_t), o->max_listeners, 1)) != 0 ||
      (rc = tbl_init(&c->tup, sizeof(tkey_t), o->max_tuples, 1)) != 0)
    return rc;
  for (int i = 0; i < c->nshards; i++) {
    if ((rc = shard_init(c, &c->shards[i], i)) != 0)
      return rc;
  }
  return 0;
}

void uvip__census_tables_free(uvip_census_t *c) {
  for (int i = 0; c->shards && i < c->nshards; i++)
    shard_free(&c->shards[i]);
  tbl_free(&c->vips);
  tbl_free(&c->lst);
  tbl_free(&c->tup);
}

int uvip__census_filter_init(uvip_census_t *c, const uvip_addrs_t *vips) {
  size_t nv = vips ? uvip_addrs_count(vips) : 0;
  for (size_t i = 0; i < nv; i++) {
    akey_t k;
    int added = 0;
    akey_from_sa(&k, uvip_addrs_at(vips, i), 0);
    if (aget(&c->vips, &k, 1, &added) < 0)
      return UV_E2BIG;
    if (added) {
      c->filter[c->nfilter++] = k;
      c->nfilter4 += k.fam == AF_INET;
    }
  }
  return 0;
}

static int cmp_vip(const void *x, const void *y, void *arg) {
  const tbl_t *t = arg;
  return akey_cmp((const akey_t *)(t->keys + *(const uint32_t *)x * t->ksize),
                  (const akey_t *)(t->keys + *(const uint32_t *)y * t->ksize));
}

static int cmp_tuple(const void *x, const void *y, void *arg) {
  const uvip_census_t *c = arg;
  uint32_t i = *(const uint32_t *)x, j = *(const uint32_t *)y;
  const tkey_t *a = (const tkey_t *)c->tup.keys + i;
  const tkey_t *b = (const tkey_t *)c->tup.keys + j;
  if (c->tup_rows[i].in_use != c->tup_rows[j].in_use)
    return c->tup_rows[i].in_use > c->tup_rows[j].in_use ? -1 : 1;
  int r = akey_cmp(&a->l, &b->l);
  return r ? r : akey_cmp(&a->r, &b->r);
}

static void make_order(tbl_t *t, int sort,
                       int (*cmp)(const void *, const void *, void *),
                       void *arg) {
  for (size_t i = 0; i < t->n; i++)
    t->order[i] = (uint32_t)i;
  if (sort && t->n > 1)
    qsort_r(t->order, t->n, sizeof(uint32_t), cmp, arg);
  for (size_t i = 0; i < t->n; i++)
    t->rank[t->order[i]] = (uint32_t)i;
}

void uvip__census_clear(uvip_census_t *c) {
  tbl_reset(&c->vips);
  tbl_reset(&c->lst);
  memset(c->lports, 0, sizeof(c->lports));
  tbl_reset(&c->tup);
  memset(&c->totals, 0, sizeof(c->totals));
  memset(&c->info, 0, sizeof(c->info));
  /* The filter's rows exist (with zero counts) in every sample. */
  for (size_t i = 0; i < c->nfilter; i++) {
    long v = aget(&c->vips, &c->filter[i], 1, NULL);
    memset(&c->vip_rows[v], 0, sizeof(c->vip_rows[v]));
    akey_to_sa(&c->filter[i], &c->vip_rows[v].addr);
  }
  for (int i = 0; i < c->nshards; i++)
    shard_reset(&c->shards[i]);
}

void uvip__census_merge(uvip_census_t *c) {
  for (int i = 0; i < c->info.shards; i++)
    shard_merge(c, &c->shards[i]);
}

void uvip__census_order(uvip_census_t *c) {
  make_order(&c->vips, c->nfilter == 0, cmp_vip, &c->vips);
  make_order(&c->lst, 1, cmp_vip, &c->lst);
  make_order(&c->tup, 1, cmp_tuple, c);
}

/* ------------------------------------------------------------------------ */
/* For the tracker                                                          */

long uvip__census_find_tuple(const uvip_census_t *c,
                             const uvip_census_tuple_t *t) {
  tkey_t k;
  akey_from_sa(&k.l, (const struct sockaddr *)&t->local, 0);
  akey_from_sa(&k.r, (const struct sockaddr *)&t->remote, 1);
  long d = tget((tbl_t *)&c->tup, &k, 0, NULL);
  return d < 0 ? -1 : (long)c->tup.rank[d];
}

long uvip__census_find_listener(const uvip_census_t *c,
                                const uvip_census_listener_t *l) {
  akey_t k;
  akey_from_sa(&k, (const struct sockaddr *)&l->addr, 1);
  long d = aget((tbl_t *)&c->lst, &k, 0, NULL);
  return d < 0 ? -1 : (long)c->lst.rank[d];
}

long uvip__census_find_vip(const uvip_census_t *c,
                           const struct sockaddr_storage *addr) {
  akey_t k;
  akey_from_sa(&k, (const struct sockaddr *)addr, 0);
  long d = aget((tbl_t *)&c->vips, &k, 0, NULL);
  return d < 0 ? -1 : (long)c->vips.rank[d];
}
