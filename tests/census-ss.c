/* SPDX-License-Identifier: MIT */
#include "census-ss.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "helpers.h"

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

void cs_fresh_netns(void) {
  ck_assert_msg(unshare(CLONE_NEWNET) == 0, "unshare: %s", strerror(errno));
  ck_assert_int_eq(system("ip link set lo up"), 0);
}

void cs_fresh_netns_once(void) {
  static int done;
  if (!done)
    cs_fresh_netns();
  done = 1;
}

void cs_sysctl(const char *path, const char *value) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  ck_assert_msg(fd >= 0, "open %s: %s", path, strerror(errno));
  ck_assert_msg(write(fd, value, strlen(value)) == (ssize_t)strlen(value),
                "write %s: %s", path, strerror(errno));
  close(fd);
}

/* ss state names, in uvip_tcp_state_t order. */
static const char *const ss_states[UVIP_TCP_STATE_COUNT] = {
    "ESTAB",      "SYN-SENT", "SYN-RECV",   "FIN-WAIT-1",
    "FIN-WAIT-2", "TIME-WAIT", "UNCONN",    "CLOSE-WAIT",
    "LAST-ACK",   "LISTEN",   "CLOSING"};

typedef struct line {
  int state;
  char addr[64]; /* canonical, no port (as uvip_addr_format writes it) */
  int port;
  int fam;
  char peer[80]; /* canonical, with port */
  uint64_t rq, sq;
  int inbound;
} line_t;

/* "127.0.0.1:80", "[::1]:80", "[::ffff:1.2.3.4]:80", "*:80" -> canonical
 * address (IPv4-mapped as IPv4, as the census counts it) and port. */
static void canon(const char *s, char *addr, int *port, int *fam,
                  char *with_port) {
  char tmp[80];
  const char *colon = strrchr(s, ':');
  struct sockaddr_storage ss;
  ck_assert_ptr_nonnull(colon);
  *port = atoi(colon + 1);
  size_t n = (size_t)(colon - s);
  ck_assert_uint_lt(n, sizeof(tmp));
  memcpy(tmp, s, n);
  tmp[n] = 0;
  char *a = tmp;
  if (a[0] == '[') {
    a++;
    a[strlen(a) - 1] = 0;
  }
  char *pct = strchr(a, '%'); /* "addr%dev" */
  if (pct)
    *pct = 0;
  if (strcmp(a, "*") == 0)
    a = "::";
  if (strncmp(a, "::ffff:", 7) == 0 && strchr(a + 7, '.'))
    a += 7;
  th_addr(a, *port, &ss);
  *fam = ss.ss_family;
  ck_assert_int_eq(uvip_addr_format((struct sockaddr *)&ss, 0, addr, 64), 0);
  if (with_port)
    ck_assert_int_eq(uvip_addr_format((struct sockaddr *)&ss, 1, with_port, 80),
                     0);
}

static int parse_ss(line_t **out) {
  char *text = th_cmd_output("ss -tanH");
  ck_assert_ptr_nonnull(text);
  size_t cap = 64, n = 0;
  line_t *v = malloc(cap * sizeof(*v));
  char *save = NULL;
  for (char *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
    char st[32], loc[80], peer[80];
    unsigned long long rq, sq;
    if (sscanf(l, "%31s %llu %llu %79s %79s", st, &rq, &sq, loc, &peer[0]) != 5)
      continue;
    if (n == cap)
      v = realloc(v, (cap *= 2) * sizeof(*v));
    line_t *x = &v[n];
    memset(x, 0, sizeof(*x));
    x->state = -1;
    for (int s = 0; s < UVIP_TCP_STATE_COUNT; s++)
      if (strcmp(st, ss_states[s]) == 0)
        x->state = s;
    ck_assert_msg(x->state >= 0, "unknown ss state %s", st);
    x->rq = rq;
    x->sq = sq;
    canon(loc, x->addr, &x->port, &x->fam, NULL);
    if (x->state != UVIP_TCP_LISTEN) {
      char pa[64];
      int pp, pf;
      canon(peer, pa, &pp, &pf, x->peer);
    }
    n++;
  }
  free(text);
  /* Inbound: the local address and port (or the wildcard) listen. */
  for (size_t i = 0; i < n; i++) {
    if (v[i].state == UVIP_TCP_LISTEN) {
      v[i].inbound = 1;
      continue;
    }
    for (size_t j = 0; j < n; j++) {
      if (v[j].state != UVIP_TCP_LISTEN || v[j].port != v[i].port)
        continue;
      if (strcmp(v[j].addr, v[i].addr) == 0 ||
          strcmp(v[j].addr, v[i].fam == AF_INET ? "0.0.0.0" : "::") == 0 ||
          strcmp(v[j].addr, "::") == 0)
        v[i].inbound = 1;
    }
  }
  *out = v;
  return (int)n;
}

int cs_compare_with_ss(const uvip_census_t *c) {
  line_t *v;
  int n = parse_ss(&v);
  char a[UVIP_ADDRSTRLEN], b[UVIP_ADDRSTRLEN];
  uint64_t total = 0;

  /* Every census row equals the ss lines of its address... */
  for (size_t i = 0; i < uvip_census_vip_count(c); i++) {
    const uvip_census_vip_t *row = uvip_census_vip(c, i);
    ck_assert_int_eq(uvip_addr_format((const struct sockaddr *)&row->addr, 0,
                                      a, sizeof(a)), 0);
    for (int s = 0; s < UVIP_TCP_STATE_COUNT; s++) {
      uint64_t in = 0, out = 0;
      for (int k = 0; k < n; k++)
        if (v[k].state == s && strcmp(v[k].addr, a) == 0)
          *(v[k].inbound ? &in : &out) += 1;
      ck_assert_msg(row->counts.in[s] == in && row->counts.out[s] == out,
                    "%s %s: census in %llu out %llu, ss in %llu out %llu", a,
                    uvip_tcp_state_name(s),
                    (unsigned long long)row->counts.in[s],
                    (unsigned long long)row->counts.out[s],
                    (unsigned long long)in, (unsigned long long)out);
      total += in + out;
    }
  }
  /* ...and no ss line is missing from the rows. */
  ck_assert_uint_eq(total, (uint64_t)n);
  ck_assert_uint_eq(uvip_census_info(c)->sockets, (uint64_t)n);

  size_t listeners = 0;
  for (int k = 0; k < n; k++) {
    if (v[k].state != UVIP_TCP_LISTEN)
      continue;
    listeners++;
    int found = 0;
    for (size_t i = 0; i < uvip_census_listener_count(c); i++) {
      const uvip_census_listener_t *l = uvip_census_listener(c, i);
      int port = ntohs(((const struct sockaddr_in *)&l->addr)->sin_port);
      uvip_addr_format((const struct sockaddr *)&l->addr, 0, a, sizeof(a));
      if (port != v[k].port || strcmp(a, v[k].addr) != 0)
        continue;
      found = 1;
      ck_assert_msg(l->queue == v[k].rq && l->backlog == (int64_t)v[k].sq,
                    "listener %s:%d: census %llu/%lld, ss %llu/%llu", a, port,
                    (unsigned long long)l->queue, (long long)l->backlog,
                    (unsigned long long)v[k].rq, (unsigned long long)v[k].sq);
    }
    ck_assert_msg(found, "listener %s:%d missing", v[k].addr, v[k].port);
  }
  ck_assert_uint_eq(uvip_census_listener_count(c), listeners);

  /* Tuples: outbound sockets per (local, remote:port). */
  uint64_t tuple_sockets = 0;
  for (size_t i = 0; i < uvip_census_tuple_count(c); i++) {
    const uvip_census_tuple_t *t = uvip_census_tuple(c, i);
    uint64_t use = 0, tw = 0;
    uvip_addr_format((const struct sockaddr *)&t->local, 0, a, sizeof(a));
    uvip_addr_format((const struct sockaddr *)&t->remote, 1, b, sizeof(b));
    for (int k = 0; k < n; k++) {
      if (v[k].inbound || strcmp(v[k].addr, a) || strcmp(v[k].peer, b))
        continue;
      use++;
      tw += v[k].state == UVIP_TCP_TIME_WAIT;
    }
    ck_assert_msg(t->in_use == use && t->time_wait == tw,
                  "tuple %s -> %s: census %llu/%llu, ss %llu/%llu", a, b,
                  (unsigned long long)t->in_use,
                  (unsigned long long)t->time_wait, (unsigned long long)use,
                  (unsigned long long)tw);
    if (i > 0)
      ck_assert_uint_ge(uvip_census_tuple(c, i - 1)->in_use, t->in_use);
    tuple_sockets += use;
  }
  uint64_t outbound = 0;
  for (int k = 0; k < n; k++)
    outbound += !v[k].inbound;
  ck_assert_uint_eq(tuple_sockets, outbound);
  free(v);
  return n;
}

uint64_t cs_row(const uvip_census_t *c, const char *addr, int state,
                int inbound) {
  char a[UVIP_ADDRSTRLEN];
  for (size_t i = 0; i < uvip_census_vip_count(c); i++) {
    const uvip_census_vip_t *row = uvip_census_vip(c, i);
    uvip_addr_format((const struct sockaddr *)&row->addr, 0, a, sizeof(a));
    if (strcmp(a, addr) == 0)
      return inbound ? row->counts.in[state] : row->counts.out[state];
  }
  ck_abort_msg("no census row for %s", addr);
  return 0;
}

int cs_listen(const char *ip, int port, int backlog) {
  struct sockaddr_storage sa;
  int one = 1;
  th_addr(ip, port, &sa);
  int fd = socket(sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ck_assert_int_ge(fd, 0);
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  ck_assert_msg(bind(fd, (struct sockaddr *)&sa, sa.ss_family == AF_INET6
                                                     ? sizeof(struct sockaddr_in6)
                                                     : sizeof(struct sockaddr_in)) == 0,
                "bind %s:%d: %s", ip, port, strerror(errno));
  ck_assert_int_eq(listen(fd, backlog), 0);
  return fd;
}

int cs_connect_from(const char *src, const char *dst, int port, int nonblock) {
  struct sockaddr_storage s, d;
  int one = 1;
  th_addr(src, 0, &s);
  th_addr(dst, port, &d);
  socklen_t len = d.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                          : sizeof(struct sockaddr_in);
  int fd = socket(d.ss_family, SOCK_STREAM | SOCK_CLOEXEC |
                                   (nonblock ? SOCK_NONBLOCK : 0), 0);
  ck_assert_int_ge(fd, 0);
  setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
  ck_assert_msg(bind(fd, (struct sockaddr *)&s, len) == 0, "bind %s: %s", src,
                strerror(errno));
  if (connect(fd, (struct sockaddr *)&d, len) != 0 &&
      !(nonblock && errno == EINPROGRESS)) {
    int e = errno;
    close(fd);
    return -e;
  }
  return fd;
}

void cs_abort(int fd) {
  struct linger lg = {1, 0};
  ck_assert_int_eq(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)), 0);
  close(fd);
}

void cs_sample_settled(uvip_census_t *c, int max_tries) {
  static const int moving[] = {UVIP_TCP_FIN_WAIT1, UVIP_TCP_FIN_WAIT2,
                               UVIP_TCP_CLOSE_WAIT, UVIP_TCP_LAST_ACK,
                               UVIP_TCP_CLOSING};
  for (int i = 0; i < max_tries; i++) {
    ck_assert_int_eq(uvip_census_sample(c), 0);
    const uvip_census_counts_t *t = uvip_census_totals(c);
    uint64_t m = 0;
    for (size_t k = 0; k < sizeof(moving) / sizeof(moving[0]); k++)
      m += t->in[moving[k]] + t->out[moving[k]];
    if (m == 0)
      return;
    usleep(10000);
  }
  ck_abort_msg("sockets did not settle after %d samples", max_tries);
}
