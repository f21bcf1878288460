/* Capacity report: what the pool and the kernel limits allow, which limit
 * binds first, and what to change.
 * SPDX-License-Identifier: MIT */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "census-internal.h"

/* Linux holds TIME_WAIT for TCP_TIMEWAIT_LEN, a compile-time 60 s. */
#define TIME_WAIT_SECS 60.0
#define DEFAULT_MEM_PER_CONN 8192
#define NO_BOUND UINT64_MAX

static const char *const bound_names[] = {"none", "ports", "fds", "time_wait",
                                          "memory"};

UVIP_EXPORT const char *uvip_bound_name(int bound) {
  if (bound < 0 || bound > UVIP_BOUND_MEMORY)
    return NULL;
  return bound_names[bound];
}

UVIP_EXPORT int uvip_capacity_input_init(uvip_capacity_input_t *in) {
  UVIP_CHECK_ARG(in == NULL);
  memset(in, 0, sizeof(*in));
  return 0;
}

static void advise(uvip_capacity_t *cap, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void advise(uvip_capacity_t *cap, const char *fmt, ...) {
  va_list ap;
  if (cap->advice_count == UVIP_ADVICE_MAX)
    return;
  va_start(ap, fmt);
  vsnprintf(cap->advice[cap->advice_count++], UVIP_ADVICE_LEN, fmt, ap);
  va_end(ap);
}

static uint64_t mul_sat(uint64_t a, uint64_t b) {
  if (a && b > UINT64_MAX / a)
    return UINT64_MAX;
  return a * b;
}

static uint64_t min_u64(uint64_t a, uint64_t b) { return a < b ? a : b; }

static uint64_t div_up(uint64_t a, uint64_t b) { return b ? (a + b - 1) / b : 0; }

UVIP_EXPORT int uvip_capacity_compute(const uvip_census_t *census,
                                      const uvip_capacity_input_t *input,
                                      uvip_capacity_t *cap) {
  uvip_capacity_input_t in;
  const uvip_limits_t *L;
  const uvip_census_counts_t *tot;
  const uvip_census_info_t *info;
  uint64_t vips = 0, sources = 0, tw = 0, procs, target;

  UVIP_CHECK_ARG(census == NULL || cap == NULL);
  L = uvip_census_limits(census);
  UVIP_CHECK_ARG(L == NULL);
  tot = uvip_census_totals(census);
  info = uvip_census_info(census);
  if (input) {
    in = *input;
  } else {
    uvip_capacity_input_init(&in);
  }
  memset(cap, 0, sizeof(*cap));

  for (size_t i = 0; i < uvip_census_vip_count(census); i++) {
    const uvip_census_counts_t *c = &uvip_census_vip(census, i)->counts;
    uint64_t out = 0;
    vips += c->in[UVIP_TCP_LISTEN] > 0;
    for (int s = 0; s < UVIP_TCP_STATE_COUNT; s++)
      out += c->out[s];
    sources += out > 0;
  }
  if (in.vips)
    vips = in.vips;
  if (in.sources)
    sources = in.sources;
  vips = vips ? vips : 1;
  sources = sources ? sources : 1;
  procs = in.processes ? in.processes : 1;
  target = in.target_conns;
  uint64_t ports_per_vip = in.listen_ports ? in.listen_ports : 1;
  uint64_t mem_per_conn = in.mem_per_conn ? in.mem_per_conn : DEFAULT_MEM_PER_CONN;
  int outbound = uvip_census_tuple_count(census) > 0 || in.sources > 0;

  int usable = L->usable_ports > 0 ? L->usable_ports : 0;
  cap->usable_ports = usable;
  /* A client address has one ephemeral range per destination address and
   * port; assume the client's range is as wide as ours. */
  cap->per_client_addr = mul_sat(mul_sat((uint64_t)usable, vips), ports_per_vip);
  cap->per_destination = mul_sat((uint64_t)usable, sources);
  /* Inbound connections use the clients' ports, not ours: only outbound
   * traffic makes our ports a bound on the whole. */
  cap->by_ports = outbound ? cap->per_destination : NO_BOUND;
  if (outbound && uvip_census_tuple_count(census) > 1) {
    /* Distinct destinations among the busiest tuples multiply the bound
     * (the scan is capped: this is an estimate, not a census). */
    size_t n = uvip_census_tuple_count(census);
    uint64_t dests = 0;
    n = n < 256 ? n : 256;
    for (size_t i = 0; i < n; i++) {
      const uvip_census_tuple_t *t = uvip_census_tuple(census, i);
      size_t j = 0;
      while (j < i && memcmp(&uvip_census_tuple(census, j)->remote,
                             &t->remote, sizeof(t->remote)) != 0)
        j++;
      dests += j == i;
    }
    cap->by_ports = mul_sat(cap->per_destination, dests);
  }

  uint64_t nofile = L->nofile_soft > 0 ? (uint64_t)L->nofile_soft : 0;
  cap->by_fds = mul_sat(nofile, procs);
  if (L->nr_open > 0)
    cap->by_fds = min_u64(cap->by_fds, mul_sat((uint64_t)L->nr_open, procs));
  if (L->file_max > 0)
    cap->by_fds = min_u64(cap->by_fds, (uint64_t)L->file_max);
  cap->by_memory = L->mem_total > 0 ? (uint64_t)L->mem_total / mem_per_conn
                                    : NO_BOUND;
  cap->by_time_wait = L->tcp_max_tw_buckets > 0
                          ? (uint64_t)L->tcp_max_tw_buckets : NO_BOUND;

  cap->overall = cap->by_ports;
  cap->binding = outbound ? UVIP_BOUND_PORTS : UVIP_BOUND_NONE;
  if (cap->by_fds < cap->overall) {
    cap->overall = cap->by_fds;
    cap->binding = UVIP_BOUND_FDS;
  }
  if (cap->by_memory < cap->overall) {
    cap->overall = cap->by_memory;
    cap->binding = UVIP_BOUND_MEMORY;
  }

  for (int s = 0; s < UVIP_TCP_STATE_COUNT; s++) {
    if (s == UVIP_TCP_TIME_WAIT || s == UVIP_TCP_LISTEN)
      continue;
    cap->conns_now += tot->in[s] + tot->out[s];
  }
  cap->headroom = cap->overall > cap->conns_now ? cap->overall - cap->conns_now : 0;
  cap->rate_per_tuple = usable / TIME_WAIT_SECS;
  if (uvip_census_tuple_count(census))
    cap->worst_tuple_use = uvip_census_tuple(census, 0)->utilisation;
  /* The bucket limit is per namespace: compare with the namespace count. */
  tw = L->sock_tw >= 0 ? (uint64_t)L->sock_tw
                       : tot->in[UVIP_TCP_TIME_WAIT] + tot->out[UVIP_TCP_TIME_WAIT];
  if (L->tcp_max_tw_buckets > 0)
    cap->time_wait_use = (double)tw / (double)L->tcp_max_tw_buckets;
  /* TIME_WAIT does not cap open connections, but once the buckets are
   * full the kernel drops new TIME_WAITs and counts TCPTimeWaitOverflow. */
  if (cap->time_wait_use >= 0.9 ||
      (info->has_netstat_delta && info->netstat_delta.tw_overflow > 0))
    cap->binding = UVIP_BOUND_TIME_WAIT;
  if (L->nofile_soft > 0 && L->open_fds >= 0)
    cap->fd_use = (double)L->open_fds / (double)L->nofile_soft;

  /* Advice, most urgent first. */
  if (target && cap->by_fds < target) {
    uint64_t per = div_up(target, procs) + 1024;
    if (L->nofile_soft >= 0 && per > (uint64_t)L->nofile_soft)
      advise(cap, "raise RLIMIT_NOFILE (ulimit -n, LimitNOFILE=) to %llu per "
                  "process: now %lld x %llu process(es) < %llu wanted",
             (unsigned long long)per, (long long)L->nofile_soft,
             (unsigned long long)procs, (unsigned long long)target);
    if (L->nr_open > 0 && per > (uint64_t)L->nr_open)
      advise(cap, "raise fs.nr_open to %llu (now %lld): RLIMIT_NOFILE cannot "
                  "exceed it", (unsigned long long)per, (long long)L->nr_open);
    if (L->file_max > 0 && target > (uint64_t)L->file_max)
      advise(cap, "raise fs.file-max to %llu (now %lld)",
             (unsigned long long)(target + target / 10), (long long)L->file_max);
  } else if (cap->fd_use >= 0.8) {
    advise(cap, "raise RLIMIT_NOFILE: this process uses %lld of %lld descriptors",
           (long long)L->open_fds, (long long)L->nofile_soft);
  }
  if (outbound && (cap->worst_tuple_use >= 0.5 ||
                   (target && cap->per_destination < target))) {
    /* No port at all: more source VIPs or a wider range do not help while
     * the reserved ports cover the range; an unreadable range (-1) gives
     * nothing to say about ports. */
    if (usable <= 0) {
      if (!(L->missing & UVIP_LIMIT_PORT_RANGE))
        advise(cap, "free ephemeral ports: net.ipv4.ip_local_reserved_ports "
                    "covers all of ip_local_port_range \"%d %d\"",
               L->port_lo, L->port_hi);
    } else {
      if (L->port_lo > 1024 || L->port_hi < 65535)
        advise(cap, "widen net.ipv4.ip_local_port_range to \"1024 65535\" "
                    "(now \"%d %d\": %d usable ports per tuple)",
               L->port_lo, L->port_hi, usable);
      if (target)
        advise(cap, "use %llu source VIPs per destination for %llu "
                    "connections to it (%d ports each; now %llu)",
               (unsigned long long)div_up(target, (uint64_t)usable),
               (unsigned long long)target, usable,
               (unsigned long long)sources);
      else
        advise(cap, "add source VIPs: the busiest tuple uses %.0f%% of its "
                    "%d ports", cap->worst_tuple_use * 100, usable);
    }
    if (L->has_bind_address_no_port)
      advise(cap, "bind source VIPs with IP_BIND_ADDRESS_NO_PORT so the port "
                  "is chosen per destination at connect()");
  }
  for (size_t i = 0; i < uvip_census_listener_count(census); i++) {
    const uvip_census_listener_t *l = uvip_census_listener(census, i);
    if (l->backlog > 0 && l->queue * 2 >= (uint64_t)l->backlog) {
      char a[UVIP_ADDRSTRLEN];
      uvip_addr_format((const struct sockaddr *)&l->addr, 1, a, sizeof(a));
      advise(cap, "accept faster or raise the backlog on %s (queue %llu of "
                  "%lld): net.core.somaxconn=%d caps it; try 4096 or more",
             a, (unsigned long long)l->queue, (long long)l->backlog,
             L->somaxconn);
      break;
    }
  }
  /* Two listeners on one address and port: a SO_REUSEPORT group. When one
   * of them closes (a restart, a worker ending), the connections queued on
   * it are reset unless the kernel may move them to the others. */
  if (L->tcp_migrate_req == 0)
    for (size_t i = 0; i < uvip_census_listener_count(census); i++) {
      const uvip_census_listener_t *l = uvip_census_listener(census, i);
      if (l->sockets > 1) {
        char a[UVIP_ADDRSTRLEN];
        uvip_addr_format((const struct sockaddr *)&l->addr, 1, a, sizeof(a));
        advise(cap, "set net.ipv4.tcp_migrate_req=1: %u listeners share %s "
                    "(SO_REUSEPORT); connections queued on one that closes "
                    "are reset otherwise", l->sockets, a);
        break;
      }
    }
  if (info->has_netstat_delta && (info->netstat_delta.listen_overflows ||
                                  info->netstat_delta.listen_drops))
    advise(cap, "listen queues overflowed (%llu overflows, %llu drops since "
                "the last sample): raise net.core.somaxconn (now %d) and the "
                "backlog, or accept faster",
           (unsigned long long)info->netstat_delta.listen_overflows,
           (unsigned long long)info->netstat_delta.listen_drops, L->somaxconn);
  if (info->has_netstat_delta && info->netstat_delta.syncookies_sent)
    advise(cap, "SYN queue full (syncookies sent): raise "
                "net.ipv4.tcp_max_syn_backlog (now %d)", L->tcp_max_syn_backlog);
  if (cap->time_wait_use >= 0.5 ||
      (info->has_netstat_delta && info->netstat_delta.tw_overflow))
    advise(cap, "raise net.ipv4.tcp_max_tw_buckets to %llu (now %lld, %llu in "
                "TIME_WAIT)", (unsigned long long)(tw * 2 + 65536),
           (long long)L->tcp_max_tw_buckets, (unsigned long long)tw);
  if (outbound && L->tcp_tw_reuse != 1 &&
      tot->out[UVIP_TCP_TIME_WAIT] * 4 >= (uint64_t)(usable > 0 ? usable : 1))
    advise(cap, "set net.ipv4.tcp_tw_reuse=1 (now %d) so outbound connects "
                "reuse TIME_WAIT ports older than 1 s", L->tcp_tw_reuse);
  if (target && cap->by_memory < target)
    advise(cap, "memory: %llu connections at ~%llu bytes need %.1f GiB; "
                "this host has %.1f GiB", (unsigned long long)target,
           (unsigned long long)mem_per_conn,
           (double)target * (double)mem_per_conn / (1 << 30),
           (double)L->mem_total / (1 << 30));
  if (L->tcp_mem[1] > 0 && L->sock_mem_pages >= L->tcp_mem[1])
    advise(cap, "TCP memory pressure: %lld pages in use >= tcp_mem pressure "
                "%lld; raise net.ipv4.tcp_mem or shrink socket buffers",
           (long long)L->sock_mem_pages, (long long)L->tcp_mem[1]);
  return 0;
}
