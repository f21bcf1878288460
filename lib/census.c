/* Census: one sock_diag dump per family, aggregated while streaming into
 * fixed-size hash tables (no allocation per socket or per sample).
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <libmnl/libmnl.h>
#include <linux/inet_diag.h>
#include <linux/sock_diag.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "census-internal.h"

/* The kernel's TCP_NEW_SYN_RECV: a request socket, shown by ss as SYN-RECV. */
#define KSTATE_NEW_SYN_RECV 12
/* Kernel states 1..12; bit 13 (TCP_BOUND_INACTIVE) is left out as ss does. */
#define KSTATES_ALL 0x1ffeu
/* Bytecode filters cost the kernel a pass over every condition per socket;
 * past this many addresses a userspace hash lookup is cheaper. */
#define BC_MAX_ADDRS 64
#define RCVBUF_MIN 32768
#define PROC_CHUNK 65536

/* A compact address key: family, port, 16 address bytes (IPv4 in the first
 * four). Hashing and comparing it is what the per-socket path costs. */
typedef struct akey {
  uint8_t fam;
  uint8_t pad;
  uint16_t port; /* host order */
  uint32_t a[4];
} akey_t;

typedef struct tkey {
  akey_t l, r;
} tkey_t;

/* Open addressing over a dense key array. A slot is live when its
 * generation equals the table's, so a reset is O(1). */
typedef struct tbl {
  char *keys;
  size_t ksize, n, cap;
  uint32_t *slot, *sgen;
  uint32_t mask, gen;
  uint32_t *order; /* accessor index -> dense index */
  uint32_t *rank;  /* dense index -> accessor index */
} tbl_t;

struct uvip_census_s {
  uvip_census_options_t opts;
  unsigned int kstates; /* kernel state bitmask requested */
  size_t nfilter;       /* distinct filter addresses (0 = no filter) */
  akey_t *filter;       /* in list order */
  int nfilter4;         /* of them IPv4 */
  tbl_t vips, lst, tup;
  uvip_census_vip_t *vip_rows;
  uvip_census_listener_t *lst_rows;
  uvip_census_tuple_t *tup_rows;
  unsigned char *tup_flags, *lst_flags;
  uvip_census_counts_t totals;
  uvip_census_info_t info;
  uvip_limits_t limits;
  uvip_netstat_t baseline;
  int has_baseline;
  int has_limits;
  int usable;
  uint64_t tw_seen; /* TIME_WAIT sockets received, before any filter */
  char *buf;
  size_t buflen;
  char *bc; /* bytecode scratch */
  size_t bccap;
};

static uint32_t hash_words(const uint32_t *w, size_t n) {
  uint64_t h = 0x9e3779b97f4a7c15ull;
  for (size_t i = 0; i < n; i++) {
    h ^= w[i];
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 32;
  }
  return (uint32_t)h;
}

static int tbl_init(tbl_t *t, size_t ksize, size_t cap) {
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
  t->order = calloc(cap ? cap : 1, sizeof(uint32_t));
  t->rank = calloc(cap ? cap : 1, sizeof(uint32_t));
  if (!t->keys || !t->slot || !t->sgen || !t->order || !t->rank)
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
 * is room; -1 when absent or full. *added tells a fresh insert. */
static long tbl_get(tbl_t *t, const void *key, int insert, int *added) {
  uint32_t i = hash_words(key, t->ksize / 4) & t->mask;
  for (;;) {
    if (t->sgen[i] != t->gen) {
      if (!insert || t->n == t->cap)
        return -1;
      t->sgen[i] = t->gen;
      t->slot[i] = (uint32_t)t->n;
      memcpy(t->keys + t->n * t->ksize, key, t->ksize);
      if (added)
        *added = 1;
      return (long)t->n++;
    }
    if (memcmp(t->keys + (size_t)t->slot[i] * t->ksize, key, t->ksize) == 0)
      return t->slot[i];
    i = (i + 1) & t->mask;
  }
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

static int is_listening(uvip_census_t *c, const akey_t *l) {
  akey_t w;
  if (c->lst.n == 0)
    return 0;
  if (tbl_get(&c->lst, l, 0, NULL) >= 0)
    return 1;
  memset(&w, 0, sizeof(w));
  w.port = l->port;
  w.fam = l->fam;
  if (tbl_get(&c->lst, &w, 0, NULL) >= 0)
    return 1;
  /* An IPv4 connection accepted by a dual-stack "::" listener. */
  w.fam = AF_INET6;
  return l->fam == AF_INET && tbl_get(&c->lst, &w, 0, NULL) >= 0;
}

static int is_wildcard(const akey_t *k) {
  return !k->a[0] && !k->a[1] && !k->a[2] && !k->a[3];
}

/* The per-socket path. kstate is the kernel's state number. */
static void count_socket(uvip_census_t *c, int fam, int kstate,
                         const uint32_t *src, int sport, const uint32_t *dst,
                         int dport, uint32_t rq, uint32_t wq) {
  akey_t lk;
  int state, inbound, added = 0;
  long v, li;

  c->info.seen++;
  c->tw_seen += kstate == UVIP_TCP_TIME_WAIT + 1;
  if (kstate == KSTATE_NEW_SYN_RECV)
    kstate = UVIP_TCP_SYN_RECV + 1;
  if (kstate < 1 || kstate > UVIP_TCP_STATE_COUNT)
    return;
  state = kstate - 1;
  akey_from_raw(&lk, fam, src, 0);

  v = tbl_get(&c->vips, &lk, c->nfilter == 0, &added);
  if (added) { /* rows are cleared on insert: a reset is O(1) */
    memset(&c->vip_rows[v], 0, sizeof(c->vip_rows[v]));
    akey_to_sa(&lk, &c->vip_rows[v].addr);
  }

  lk.port = (uint16_t)sport;
  if (state == UVIP_TCP_LISTEN) {
    if (v < 0 && c->nfilter && !is_wildcard(&lk))
      return; /* another address's listener: not needed to classify ours */
    added = 0;
    li = tbl_get(&c->lst, &lk, 1, &added);
    if (li < 0) {
      c->info.listeners_overflow++;
    } else {
      uvip_census_listener_t *L = &c->lst_rows[li];
      if (added) {
        memset(L, 0, sizeof(*L));
        akey_to_sa(&lk, &L->addr);
      }
      L->queue = rq;
      L->backlog = c->info.source == UVIP_CENSUS_SRC_PROCFS ? -1 : (int64_t)wq;
    }
    if (v < 0 && c->nfilter)
      return; /* a wildcard listener kept only to classify our sockets */
    inbound = 1;
  } else {
    if (v < 0 && c->nfilter)
      return;
    inbound = is_listening(c, &lk);
    if (inbound && state == UVIP_TCP_SYN_RECV) {
      li = tbl_get(&c->lst, &lk, 0, NULL);
      if (li < 0) {
        akey_t w = lk;
        memset(w.a, 0, sizeof(w.a));
        li = tbl_get(&c->lst, &w, 0, NULL);
      }
      if (li >= 0)
        c->lst_rows[li].syn_recv++;
    }
  }
  if (!(c->opts.states & (1u << state)))
    return;
  c->info.sockets++;
  if (inbound)
    c->totals.in[state]++;
  else
    c->totals.out[state]++;
  if (v < 0) {
    c->info.vips_overflow++;
  } else if (inbound) {
    c->vip_rows[v].counts.in[state]++;
  } else {
    c->vip_rows[v].counts.out[state]++;
  }
  if (inbound)
    return;

  tkey_t tk;
  lk.port = 0;
  tk.l = lk;
  akey_from_raw(&tk.r, fam, dst, dport);
  added = 0;
  long ti = tbl_get(&c->tup, &tk, 1, &added);
  if (ti < 0) {
    c->info.tuples_overflow++;
    return;
  }
  uvip_census_tuple_t *T = &c->tup_rows[ti];
  if (added) {
    memset(T, 0, sizeof(*T));
    akey_to_sa(&tk.l, &T->local);
    akey_to_sa(&tk.r, &T->remote);
  }
  T->in_use++;
  if (state == UVIP_TCP_TIME_WAIT)
    T->time_wait++;
}

/* ------------------------------------------------------------------------ */
/* Netlink                                                                  */

static int on_diag_msg(const struct nlmsghdr *nlh, void *data) {
  uvip_census_t *c = data;
  const struct inet_diag_msg *m = mnl_nlmsg_get_payload(nlh);
  if (nlh->nlmsg_type != SOCK_DIAG_BY_FAMILY ||
      nlh->nlmsg_len < NLMSG_LENGTH(sizeof(*m)))
    return MNL_CB_OK;
  count_socket(c, m->idiag_family, m->idiag_state, m->id.idiag_src,
               ntohs(m->id.idiag_sport), m->id.idiag_dst,
               ntohs(m->id.idiag_dport), m->idiag_rqueue, m->idiag_wqueue);
  return MNL_CB_OK;
}

/* Appends one S_COND op; the JMP glue is added by build_bytecode(). */
static size_t put_cond(char *p, const akey_t *k) {
  struct inet_diag_bc_op *op = (struct inet_diag_bc_op *)p;
  struct inet_diag_hostcond *hc = (struct inet_diag_hostcond *)(op + 1);
  size_t alen = k->fam == AF_INET6 ? 16 : 4;
  size_t len = sizeof(*op) + sizeof(*hc) + alen;
  memset(p, 0, len); /* hostcond has padding: send no stray bytes */
  op->code = INET_DIAG_BC_S_COND;
  op->yes = (unsigned char)len;
  op->no = (unsigned short)(len + 4);
  hc->family = k->fam;
  hc->prefix_len = (uint8_t)(alen * 8);
  hc->port = -1;
  memcpy(hc + 1, k->a, alen);
  return len;
}

/* "local address is one of the filter's, or a wildcard", as an OR chain
 * built the way ss builds one: COND, JMP over the rest on a match. Returns
 * the length, 0 when no bytecode is worth sending. */
static size_t build_bytecode(uvip_census_t *c, int fam) {
  akey_t wild;
  size_t n = 0, conds = 0;
  const akey_t *list[BC_MAX_ADDRS + 1];

  if (c->nfilter == 0 || c->nfilter > BC_MAX_ADDRS)
    return 0;
  for (size_t i = 0; i < c->nfilter; i++) {
    /* IPv4 conditions also match IPv4-mapped sockets in the IPv6 dump. */
    if (c->filter[i].fam == fam || fam == AF_INET6)
      list[conds++] = &c->filter[i];
  }
  memset(&wild, 0, sizeof(wild));
  wild.fam = (uint8_t)fam;
  list[conds++] = &wild;

  /* Right-nested: cond_0 JMP (cond_1 JMP (... cond_k)). Each JMP skips to
   * the end (accept); a failed cond skips its JMP; the last one's "no"
   * jumps past the end (reject). Sizes: op 4, hostcond 8, address. */
  size_t total = 0;
  for (size_t i = 0; i < conds; i++)
    total += 12 + (list[i]->fam == AF_INET6 ? 16 : 4) + (i + 1 < conds ? 4 : 0);
  if (total > c->bccap)
    return 0;
  for (size_t i = 0; i < conds; i++) {
    n += put_cond(c->bc + n, list[i]);
    if (i + 1 < conds) {
      struct inet_diag_bc_op *j = (struct inet_diag_bc_op *)(c->bc + n);
      j->code = INET_DIAG_BC_JMP;
      j->yes = 4;
      j->no = (unsigned short)(total - n);
      n += 4;
    }
  }
  return n;
}

static int dump_family(uvip_census_t *c, struct mnl_socket *nl, int fam,
                       unsigned int seq) {
  char req[MNL_SOCKET_BUFFER_SIZE];
  struct nlmsghdr *nlh;
  struct inet_diag_req_v2 *r;
  size_t bclen;
  ssize_t n;
  int rc;

  if (c->nfilter && fam == AF_INET && c->nfilter4 == 0)
    return 0; /* no IPv4 VIP: AF_INET sockets cannot match */
  bclen = build_bytecode(c, fam);
  if (bclen + 64 > sizeof(req))
    bclen = 0;
  nlh = mnl_nlmsg_put_header(req);
  nlh->nlmsg_type = SOCK_DIAG_BY_FAMILY;
  nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  nlh->nlmsg_seq = seq;
  r = mnl_nlmsg_put_extra_header(nlh, sizeof(*r));
  r->sdiag_family = (uint8_t)fam;
  r->sdiag_protocol = IPPROTO_TCP;
  r->idiag_states = c->kstates;
  if (bclen)
    mnl_attr_put(nlh, INET_DIAG_REQ_BYTECODE, bclen, c->bc);
  if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0)
    return -errno;
  unsigned int portid = mnl_socket_get_portid(nl);
  for (;;) {
    n = mnl_socket_recvfrom(nl, c->buf, c->buflen);
    if (n < 0)
      return errno == ENOBUFS ? UV_ENOBUFS : -errno;
    c->info.reads++;
    c->info.bytes += (uint64_t)n;
    rc = mnl_cb_run(c->buf, (size_t)n, seq, portid, on_diag_msg, c);
    if (rc == MNL_CB_STOP)
      return 0;
    if (rc < 0)
      return errno ? -errno : UV_EIO;
  }
}

/* Reads "KEY N" after prefix from a /proc/net/sockstat* file; -1 if absent. */
static long long sockstat_field(const char *path, const char *prefix,
                                const char *key) {
  char buf[1024], *p;
  long long v = -1;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;
  if (fd >= 0)
    close(fd);
  if (n <= 0)
    return -1;
  buf[n] = 0;
  if ((p = strstr(buf, prefix)) != NULL && (p = strstr(p, key)) != NULL)
    v = strtoll(p + strlen(key), NULL, 10);
  return v;
}

/* Every family's dump walks the whole established hash, touching each
 * socket of the other family just to skip it: at a million IPv4 sockets
 * an empty IPv6 dump costs a large part of the census. It is skipped when
 * the namespace provably has no IPv6 socket: no TCP6 socket in use
 * (listeners, connections and IPv4-mapped ones all count there) and no
 * TIME_WAIT beyond those the unfiltered IPv4 dump just returned. */
static int ipv6_empty(const uvip_census_t *c, size_t bclen4) {
  if (bclen4 || (c->nfilter && c->nfilter4 == 0) ||
      !(c->kstates & (1u << (UVIP_TCP_TIME_WAIT + 1))) ||
      (c->opts.flags & UVIP_CENSUS_NO_IPV4))
    return 0;
  if (sockstat_field("/proc/net/sockstat6", "TCP6:", "inuse ") != 0)
    return 0;
  long long tw = sockstat_field("/proc/net/sockstat", "TCP:", " tw ");
  return tw >= 0 && (uint64_t)tw <= c->tw_seen;
}

static int sample_netlink(uvip_census_t *c) {
  struct mnl_socket *nl = mnl_socket_open2(NETLINK_SOCK_DIAG, SOCK_CLOEXEC);
  int rc = 0;
  if (!nl)
    return -errno;
  if (mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0) {
    rc = -errno;
    mnl_socket_close(nl);
    return rc;
  }
  c->info.source = UVIP_CENSUS_SRC_NETLINK;
  c->tw_seen = 0;
  if (!(c->opts.flags & UVIP_CENSUS_NO_IPV4))
    rc = dump_family(c, nl, AF_INET, 1);
  if (rc == 0 && !(c->opts.flags & UVIP_CENSUS_NO_IPV6) &&
      !ipv6_empty(c, build_bytecode(c, AF_INET)))
    rc = dump_family(c, nl, AF_INET6, 2);
  mnl_socket_close(nl);
  return rc;
}

/* ------------------------------------------------------------------------ */
/* /proc/net/tcp fallback                                                   */

static int hexval(int ch) {
  if (ch >= '0' && ch <= '9')
    return ch - '0';
  if (ch >= 'A' && ch <= 'F')
    return ch - 'A' + 10;
  if (ch >= 'a' && ch <= 'f')
    return ch - 'a' + 10;
  return -1;
}

/* Parses up to max hex digits at *p into *v; returns digits read. */
static int hexnum(const char **p, const char *end, int max, uint32_t *v) {
  int n = 0, d;
  *v = 0;
  while (*p < end && n < max && (d = hexval(**p)) >= 0) {
    *v = (*v << 4) | (uint32_t)d;
    (*p)++;
    n++;
  }
  return n;
}

/* "sl: LOCAL:PORT REMOTE:PORT ST TXQ:RXQ ..." where an address is the
 * in-memory words printed with %08X. */
static void proc_line(uvip_census_t *c, int fam, const char *p,
                      const char *end) {
  uint32_t a[2][4] = {{0}}, port[2], st, txq, rxq;
  int words = fam == AF_INET6 ? 4 : 1;
  while (p < end && *p != ':')
    p++;
  if (p == end || p[1] != ' ')
    return; /* the header line */
  p++;
  for (int side = 0; side < 2; side++) {
    while (p < end && *p == ' ')
      p++;
    for (int w = 0; w < words; w++)
      if (hexnum(&p, end, 8, &a[side][w]) != 8)
        return;
    if (p == end || *p++ != ':' || hexnum(&p, end, 4, &port[side]) != 4)
      return;
  }
  while (p < end && *p == ' ')
    p++;
  if (hexnum(&p, end, 2, &st) < 1 || p == end || *p++ != ' ')
    return;
  if (hexnum(&p, end, 8, &txq) < 1 || p == end || *p++ != ':' ||
      hexnum(&p, end, 8, &rxq) < 1)
    return;
  /* The words are already in memory (network) order. */
  if (!(c->kstates & (1u << st)))
    return;
  count_socket(c, fam, (int)st, a[0], (int)port[0], a[1], (int)port[1], rxq,
               0);
}

static int proc_file(uvip_census_t *c, const char *path, int fam) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  size_t have = 0;
  if (fd < 0)
    return errno == ENOENT ? 0 : -errno; /* no IPv6 in this kernel */
  for (;;) {
    ssize_t n = read(fd, c->buf + have, c->buflen - have);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      int e = -errno;
      close(fd);
      return e;
    }
    c->info.reads++;
    c->info.bytes += (uint64_t)n;
    have += (size_t)n;
    char *s = c->buf, *e = c->buf + have, *nl;
    while ((nl = memchr(s, '\n', (size_t)(e - s))) != NULL) {
      proc_line(c, fam, s, nl);
      s = nl + 1;
    }
    have = (size_t)(e - s);
    memmove(c->buf, s, have);
    if (n == 0 || have == c->buflen)
      break;
  }
  close(fd);
  return 0;
}

/* /proc lists listeners first too (listening hash, then established). */
static int sample_procfs(uvip_census_t *c) {
  int rc = 0;
  c->info.source = UVIP_CENSUS_SRC_PROCFS;
  if (!(c->opts.flags & UVIP_CENSUS_NO_IPV4))
    rc = proc_file(c, "/proc/net/tcp", AF_INET);
  if (rc == 0 && !(c->opts.flags & UVIP_CENSUS_NO_IPV6))
    rc = proc_file(c, "/proc/net/tcp6", AF_INET6);
  return rc;
}

/* ------------------------------------------------------------------------ */
/* Public API                                                               */

static const char *const state_names[UVIP_TCP_STATE_COUNT] = {
    "established", "syn_sent",   "syn_recv", "fin_wait1",
    "fin_wait2",   "time_wait",  "close",    "close_wait",
    "last_ack",    "listen",     "closing"};

UVIP_EXPORT const char *uvip_tcp_state_name(int state) {
  if (state < 0 || state >= UVIP_TCP_STATE_COUNT)
    return NULL;
  return state_names[state];
}

UVIP_EXPORT int uvip_census_options_init(uvip_census_options_t *opts) {
  UVIP_CHECK_ARG(opts == NULL);
  memset(opts, 0, sizeof(*opts));
  opts->max_vips = 4096;
  opts->max_listeners = 4096;
  opts->max_tuples = 16384;
  opts->rcvbuf = 65536;
  return 0;
}

UVIP_EXPORT void uvip_census_free(uvip_census_t *c) {
  if (!c)
    return;
  tbl_free(&c->vips);
  tbl_free(&c->lst);
  tbl_free(&c->tup);
  free(c->vip_rows);
  free(c->lst_rows);
  free(c->tup_rows);
  free(c->tup_flags);
  free(c->lst_flags);
  free(c->filter);
  free(c->buf);
  free(c->bc);
  free(c);
}

UVIP_EXPORT int uvip_census_new(const uvip_addrs_t *vips,
                                const uvip_census_options_t *opts,
                                uvip_census_t **out) {
  uvip_census_options_t o;
  uvip_census_t *c;
  size_t nv = vips ? uvip_addrs_count(vips) : 0;
  int rc;

  UVIP_CHECK_ARG(out == NULL);
  *out = NULL;
  if (opts) {
    o = *opts;
  } else {
    uvip_census_options_init(&o);
  }
  UVIP_CHECK_ARG(o.max_vips < 1 || o.max_vips > UVIP_ADDRS_MAX);
  UVIP_CHECK_ARG(o.max_listeners < 1 || o.max_listeners > UVIP_ADDRS_MAX);
  UVIP_CHECK_ARG(o.max_tuples < 1 || o.max_tuples > (1u << 20));
  UVIP_CHECK_ARG(o.states >> UVIP_TCP_STATE_COUNT);
  UVIP_CHECK_ARG(o.flags & ~0xfu);
  if (o.rcvbuf < RCVBUF_MIN)
    o.rcvbuf = RCVBUF_MIN;
  if (o.states == 0)
    o.states = (1u << UVIP_TCP_STATE_COUNT) - 1;

  c = calloc(1, sizeof(*c));
  if (!c)
    return UV_ENOMEM;
  c->opts = o;
  /* Ask the kernel only for the states counted, plus listeners (they
   * classify) and request sockets when SYN_RECV is wanted. */
  c->kstates = (unsigned int)o.states << 1 | (1u << (UVIP_TCP_LISTEN + 1));
  if (o.states & (1u << UVIP_TCP_SYN_RECV))
    c->kstates |= 1u << KSTATE_NEW_SYN_RECV;
  c->kstates &= KSTATES_ALL;
  c->buflen = o.rcvbuf > PROC_CHUNK ? o.rcvbuf : PROC_CHUNK;
  c->buf = malloc(c->buflen);
  c->bccap = (BC_MAX_ADDRS + 1) * 32;
  c->bc = malloc(c->bccap);
  c->filter = calloc(nv ? nv : 1, sizeof(akey_t));
  c->vip_rows = calloc(o.max_vips, sizeof(*c->vip_rows));
  c->lst_rows = calloc(o.max_listeners, sizeof(*c->lst_rows));
  c->tup_rows = calloc(o.max_tuples, sizeof(*c->tup_rows));
  c->lst_flags = calloc(o.max_listeners, 1);
  c->tup_flags = calloc(o.max_tuples, 1);
  if (!c->buf || !c->bc || !c->filter || !c->vip_rows || !c->lst_rows ||
      !c->tup_rows || !c->lst_flags || !c->tup_flags) {
    uvip_census_free(c);
    return UV_ENOMEM;
  }
  if ((rc = tbl_init(&c->vips, sizeof(akey_t), o.max_vips)) != 0 ||
      (rc = tbl_init(&c->lst, sizeof(akey_t), o.max_listeners)) != 0 ||
      (rc = tbl_init(&c->tup, sizeof(tkey_t), o.max_tuples)) != 0) {
    uvip_census_free(c);
    return rc;
  }
  /* The filter: distinct addresses, ports dropped, list order kept. */
  for (size_t i = 0; i < nv; i++) {
    akey_t k;
    int added = 0;
    akey_from_sa(&k, uvip_addrs_at(vips, i), 0);
    if (tbl_get(&c->vips, &k, 1, &added) < 0) {
      uvip_census_free(c);
      return UV_E2BIG;
    }
    if (added) {
      c->filter[c->nfilter++] = k;
      c->nfilter4 += k.fam == AF_INET;
    }
  }
  *out = c;
  return 0;
}

UVIP_EXPORT int uvip_census_new_for_server(const uvip_server_t *server,
                                           const uvip_census_options_t *opts,
                                           uvip_census_t **out) {
  uvip_addrs_t *a;
  int rc;
  UVIP_CHECK_ARG(server == NULL || out == NULL);
  if ((rc = uvip_addrs_new(&a)) != 0)
    return rc;
  for (size_t i = 0; i < uvip_server_vip_count(server); i++) {
    rc = uvip_addrs_add(a, uvip_vip_addr(uvip_server_vip(server, i)));
    if (rc != 0 && rc != UV_EEXIST)
      break;
    rc = 0;
  }
  if (rc == 0)
    rc = uvip_census_new(a, opts, out);
  uvip_addrs_free(a);
  return rc;
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

static void clear_results(uvip_census_t *c) {
  tbl_reset(&c->vips);
  tbl_reset(&c->lst);
  tbl_reset(&c->tup);
  memset(&c->totals, 0, sizeof(c->totals));
  memset(&c->info, 0, sizeof(c->info));
  /* The filter's rows exist (with zero counts) in every sample. */
  for (size_t i = 0; i < c->nfilter; i++) {
    long v = tbl_get(&c->vips, &c->filter[i], 1, NULL);
    memset(&c->vip_rows[v], 0, sizeof(c->vip_rows[v]));
    akey_to_sa(&c->filter[i], &c->vip_rows[v].addr);
  }
}

UVIP_EXPORT int uvip_census_sample(uvip_census_t *c) {
  uint64_t t0 = uv_hrtime();
  int rc, lo, hi, res;

  UVIP_CHECK_ARG(c == NULL);
  clear_results(c);

  int use_proc = (c->opts.flags & UVIP_CENSUS_PROCFS) != 0;
  rc = 0;
  if (!use_proc) {
    rc = sample_netlink(c);
    /* Refused or not built into this kernel: the documented fallback. */
    if (rc == UV_EPROTONOSUPPORT || rc == UV_EACCES || rc == UV_EPERM ||
        rc == UV_ENOENT || rc == UV_EAFNOSUPPORT) {
      clear_results(c);
      use_proc = 1;
    }
  }
  if (use_proc)
    rc = sample_procfs(c);
  if (rc != 0) {
    clear_results(c);
    c->info.status = rc;
    return rc;
  }

  c->usable = -1;
  if (uvip__port_range(&lo, &hi, &res) == 0)
    c->usable = hi - lo + 1 - res;
  if (!(c->opts.flags & UVIP_CENSUS_NO_LIMITS)) {
    c->info.limits_status = uvip_limits_read(&c->limits);
    c->has_limits = c->info.limits_status == 0;
    if (c->has_limits && !(c->limits.missing & UVIP_LIMIT_NETSTAT)) {
      if (c->has_baseline) {
        uvip__netstat_delta(&c->baseline, &c->limits.netstat,
                            &c->info.netstat_delta);
        c->info.has_netstat_delta = 1;
      }
      c->baseline = c->limits.netstat;
      c->has_baseline = 1;
    }
  }

  for (size_t i = 0; i < c->tup.n; i++) {
    uvip_census_tuple_t *t = &c->tup_rows[i];
    t->usable = c->usable;
    t->utilisation = c->usable > 0 ? (double)t->in_use / c->usable : 0;
  }
  make_order(&c->vips, c->nfilter == 0, cmp_vip, &c->vips);
  make_order(&c->lst, 1, cmp_vip, &c->lst);
  make_order(&c->tup, 1, cmp_tuple, c);
  memset(c->lst_flags, 0, c->lst.n);
  memset(c->tup_flags, 0, c->tup.n);
  c->info.duration_ns = uv_hrtime() - t0;
  c->info.sampled_at_ms = uv_hrtime() / 1000000;
  return 0;
}

UVIP_EXPORT const uvip_census_info_t *uvip_census_info(const uvip_census_t *c) {
  return c ? &c->info : NULL;
}

UVIP_EXPORT const uvip_limits_t *uvip_census_limits(const uvip_census_t *c) {
  if (!c || (c->opts.flags & UVIP_CENSUS_NO_LIMITS) || !c->has_limits)
    return NULL;
  return &c->limits;
}

UVIP_EXPORT const uvip_census_counts_t *uvip_census_totals(
    const uvip_census_t *c) {
  return c ? &c->totals : NULL;
}

UVIP_EXPORT size_t uvip_census_vip_count(const uvip_census_t *c) {
  return c ? c->vips.n : 0;
}

UVIP_EXPORT const uvip_census_vip_t *uvip_census_vip(const uvip_census_t *c,
                                                     size_t i) {
  if (!c || i >= c->vips.n)
    return NULL;
  return &c->vip_rows[c->vips.order[i]];
}

UVIP_EXPORT size_t uvip_census_listener_count(const uvip_census_t *c) {
  return c ? c->lst.n : 0;
}

UVIP_EXPORT const uvip_census_listener_t *uvip_census_listener(
    const uvip_census_t *c, size_t i) {
  if (!c || i >= c->lst.n)
    return NULL;
  return &c->lst_rows[c->lst.order[i]];
}

UVIP_EXPORT size_t uvip_census_tuple_count(const uvip_census_t *c) {
  return c ? c->tup.n : 0;
}

UVIP_EXPORT const uvip_census_tuple_t *uvip_census_tuple(
    const uvip_census_t *c, size_t i) {
  if (!c || i >= c->tup.n)
    return NULL;
  return &c->tup_rows[c->tup.order[i]];
}

/* ------------------------------------------------------------------------ */
/* For the tracker                                                          */

void uvip__census_set_baseline(uvip_census_t *c, const uvip_netstat_t *prev) {
  c->baseline = *prev;
  c->has_baseline = 1;
}

unsigned char *uvip__census_tuple_flags(uvip_census_t *c) {
  return c->tup_flags;
}

unsigned char *uvip__census_listener_flags(uvip_census_t *c) {
  return c->lst_flags;
}

long uvip__census_find_tuple(const uvip_census_t *c,
                             const uvip_census_tuple_t *t) {
  tkey_t k;
  akey_from_sa(&k.l, (const struct sockaddr *)&t->local, 0);
  akey_from_sa(&k.r, (const struct sockaddr *)&t->remote, 1);
  long d = tbl_get((tbl_t *)&c->tup, &k, 0, NULL);
  return d < 0 ? -1 : (long)c->tup.rank[d];
}

long uvip__census_find_listener(const uvip_census_t *c,
                                const uvip_census_listener_t *l) {
  akey_t k;
  akey_from_sa(&k, (const struct sockaddr *)&l->addr, 1);
  long d = tbl_get((tbl_t *)&c->lst, &k, 0, NULL);
  return d < 0 ? -1 : (long)c->lst.rank[d];
}
