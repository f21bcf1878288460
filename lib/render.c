/* Renderers: JSON and Prometheus text exposition of a census.
 * SPDX-License-Identifier: MIT */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "census-internal.h"

/* Appends to a caller buffer; keeps counting past its end so that the
 * caller learns the size needed. */
typedef struct out {
  char *buf;
  size_t cap, len;
} out_t;

static void put(out_t *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void put(out_t *o, const char *fmt, ...) {
  va_list ap;
  size_t room = o->len < o->cap ? o->cap - o->len : 0;
  va_start(ap, fmt);
  int n = vsnprintf(room ? o->buf + o->len : NULL, room, fmt, ap);
  va_end(ap);
  if (n > 0)
    o->len += (size_t)n;
}

/* A JSON string's contents (the advice is the only free text rendered;
 * Prometheus labels hold addresses and names only). */
static void put_json_string(out_t *o, const char *s) {
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\')
      put(o, "\\%c", ch);
    else if (ch == '\n')
      put(o, "\\n");
    else if (ch < 0x20)
      put(o, "\\u%04x", ch);
    else
      put(o, "%c", ch);
  }
}

static void fmt_addr(const struct sockaddr_storage *ss, int port, char *b) {
  if (uvip_addr_format((const struct sockaddr *)ss, port, b, UVIP_ADDRSTRLEN))
    strcpy(b, "?");
}

static unsigned long long U(uint64_t v) { return (unsigned long long)v; }

/* ------------------------------------------------------------------------ */
/* JSON                                                                     */

static void json_states(out_t *o, const uint64_t *in, const uint64_t *outb) {
  for (int s = 0; s < UVIP_TCP_STATE_COUNT; s++)
    put(o, "%s\"%s\":%llu", s ? "," : "", uvip_tcp_state_name(s),
        U(in[s] + (outb ? outb[s] : 0)));
}

static void json_counts(out_t *o, const uvip_census_counts_t *c) {
  json_states(o, c->in, c->out);
  put(o, ",\"inbound\":{");
  json_states(o, c->in, NULL);
  put(o, "},\"outbound\":{");
  json_states(o, c->out, NULL);
  put(o, "}");
}

static void json_netstat(out_t *o, const uvip_netstat_t *n) {
  put(o, "{\"ListenOverflows\":%llu,\"ListenDrops\":%llu,"
         "\"TCPTimeWaitOverflow\":%llu,\"TWRecycled\":%llu,\"TW\":%llu,"
         "\"TWKilled\":%llu,\"SyncookiesSent\":%llu}",
      U(n->listen_overflows), U(n->listen_drops), U(n->tw_overflow),
      U(n->tw_recycled), U(n->tw), U(n->tw_killed), U(n->syncookies_sent));
}

static void json_limits(out_t *o, const uvip_limits_t *l) {
  put(o, "{\"ip_local_port_range\":[%d,%d],\"reserved_in_range\":%d,"
         "\"usable_ports\":%d,\"somaxconn\":%d,\"tcp_max_syn_backlog\":%d,"
         "\"tcp_max_tw_buckets\":%lld,\"tcp_tw_reuse\":%d,"
         "\"tcp_fin_timeout\":%d,\"tcp_mem\":[%lld,%lld,%lld],"
         "\"file_max\":%lld,\"file_nr\":%lld,\"nr_open\":%lld,"
         "\"nofile_soft\":%lld,\"nofile_hard\":%lld,\"open_fds\":%lld,"
         "\"mem_total\":%lld,\"sockstat\":{\"inuse\":%lld,\"orphan\":%lld,"
         "\"tw\":%lld,\"alloc\":%lld,\"mem_pages\":%lld},",
      l->port_lo, l->port_hi, l->reserved_in_range, l->usable_ports,
      l->somaxconn, l->tcp_max_syn_backlog, (long long)l->tcp_max_tw_buckets,
      l->tcp_tw_reuse, l->tcp_fin_timeout, (long long)l->tcp_mem[0],
      (long long)l->tcp_mem[1], (long long)l->tcp_mem[2],
      (long long)l->file_max, (long long)l->file_nr, (long long)l->nr_open,
      (long long)l->nofile_soft, (long long)l->nofile_hard,
      (long long)l->open_fds, (long long)l->mem_total,
      (long long)l->sock_inuse, (long long)l->sock_orphan,
      (long long)l->sock_tw, (long long)l->sock_alloc,
      (long long)l->sock_mem_pages);
  put(o, "\"netstat\":");
  json_netstat(o, &l->netstat);
  put(o, ",\"features\":{\"IP_BIND_ADDRESS_NO_PORT\":%s,"
         "\"IP_LOCAL_PORT_RANGE\":%s,\"tcp_migrate_req\":%s}}",
      l->has_bind_address_no_port ? "true" : "false",
      l->has_local_port_range ? "true" : "false",
      l->has_tcp_migrate_req ? "true" : "false");
}

static void json_capacity(out_t *o, const uvip_capacity_t *c) {
#define NUM(x) ((x) == UINT64_MAX ? -1.0 : (double)(x))
  put(o, "{\"usable_ports\":%d,\"per_client_addr\":%.0f,"
         "\"per_destination\":%.0f,\"by_ports\":%.0f,\"by_fds\":%.0f,"
         "\"by_memory\":%.0f,\"by_time_wait\":%.0f,\"overall\":%.0f,"
         "\"binding\":\"%s\",\"rate_per_tuple\":%.2f,\"conns_now\":%llu,"
         "\"headroom\":%.0f,\"worst_tuple_use\":%.6f,\"time_wait_use\":%.6f,"
         "\"fd_use\":%.6f,\"advice\":[",
      c->usable_ports, NUM(c->per_client_addr), NUM(c->per_destination),
      NUM(c->by_ports), NUM(c->by_fds), NUM(c->by_memory),
      NUM(c->by_time_wait), NUM(c->overall), uvip_bound_name(c->binding),
      c->rate_per_tuple, U(c->conns_now), NUM(c->headroom),
      c->worst_tuple_use, c->time_wait_use, c->fd_use);
#undef NUM
  for (size_t i = 0; i < c->advice_count; i++) {
    put(o, "%s\"", i ? "," : "");
    put_json_string(o, c->advice[i]);
    put(o, "\"");
  }
  put(o, "]}");
}

static void json_forecast(out_t *o, const uvip_forecast_t *f) {
  put(o, ",\"forecast\":{\"state\":\"%s\",\"rate\":%.3f,\"growth\":%.3f,"
         "\"steady\":%.1f,\"hold\":%.0f,\"blocked\":%.0f,",
      uvip_forecast_state_name((int)f->state), f->rate, f->growth, f->steady,
      f->hold, f->blocked);
  if (f->eta >= 0)
    put(o, "\"exhaustion_seconds\":%.3f}", f->eta);
  else
    put(o, "\"exhaustion_seconds\":null}");
}

static void render_json(out_t *o, const uvip_census_t *c,
                        const uvip_capacity_t *cap, size_t max_tuples,
                        const uvip_forecast_t *pf, const uvip_forecast_t *vf) {
  const uvip_census_info_t *info = uvip_census_info(c);
  const uvip_limits_t *lim = uvip_census_limits(c);
  char a[UVIP_ADDRSTRLEN], b[UVIP_ADDRSTRLEN];
  static const char *const src[] = {"none", "netlink", "procfs"};

  put(o, "{\"totals\":{");
  json_counts(o, uvip_census_totals(c));
  put(o, "},\"vips\":[");
  for (size_t i = 0; i < uvip_census_vip_count(c); i++) {
    const uvip_census_vip_t *v = uvip_census_vip(c, i);
    fmt_addr(&v->addr, 0, a);
    put(o, "%s{\"address\":\"%s\",", i ? "," : "", a);
    json_counts(o, &v->counts);
    if (vf)
      json_forecast(o, &vf[i]);
    put(o, "}");
  }
  put(o, "],\"listeners\":[");
  for (size_t i = 0; i < uvip_census_listener_count(c); i++) {
    const uvip_census_listener_t *l = uvip_census_listener(c, i);
    fmt_addr(&l->addr, 1, a);
    put(o, "%s{\"address\":\"%s\",\"queue\":%llu,\"backlog\":%lld,"
           "\"syn_recv\":%llu}", i ? "," : "", a, U(l->queue),
        (long long)l->backlog, U(l->syn_recv));
  }
  put(o, "],\"tuples\":[");
  for (size_t i = 0; i < uvip_census_tuple_count(c); i++) {
    const uvip_census_tuple_t *t = uvip_census_tuple(c, i);
    if (max_tuples && i == max_tuples)
      break;
    fmt_addr(&t->local, 0, a);
    fmt_addr(&t->remote, 1, b);
    put(o, "%s{\"local\":\"%s\",\"remote\":\"%s\",\"in_use\":%llu,"
           "\"time_wait\":%llu,\"usable\":%d,\"utilisation\":%.6f",
        i ? "," : "", a, b, U(t->in_use), U(t->time_wait), t->usable,
        t->utilisation);
    if (pf)
      json_forecast(o, &pf[i]);
    put(o, "}");
  }
  put(o, "],\"info\":{\"source\":\"%s\",\"sockets\":%llu,\"seen\":%llu,"
         "\"vips_overflow\":%llu,\"listeners_overflow\":%llu,"
         "\"tuples_overflow\":%llu,\"reads\":%llu,\"bytes\":%llu,"
         "\"duration_ms\":%.3f,\"tuples_total\":%llu}",
      src[info->source <= 2 ? info->source : 0], U(info->sockets),
      U(info->seen), U(info->vips_overflow), U(info->listeners_overflow),
      U(info->tuples_overflow), U(info->reads), U(info->bytes),
      (double)info->duration_ns / 1e6, U(uvip_census_tuple_count(c)));
  if (lim) {
    put(o, ",\"limits\":");
    json_limits(o, lim);
  }
  if (info->has_netstat_delta) {
    put(o, ",\"netstat_delta\":");
    json_netstat(o, &info->netstat_delta);
  }
  if (cap) {
    put(o, ",\"capacity\":");
    json_capacity(o, cap);
  }
  put(o, "}\n");
}

/* ------------------------------------------------------------------------ */
/* Prometheus                                                               */

static void head(out_t *o, const char *name, const char *type,
                 const char *help) {
  put(o, "# HELP uvip_%s %s\n# TYPE uvip_%s %s\n", name, help, name, type);
}

static void prom_states(out_t *o, const char *metric, const char *vip,
                        const uvip_census_counts_t *c, int skip_zero) {
  for (int d = 0; d < 2; d++) {
    const uint64_t *v = d ? c->out : c->in;
    for (int s = 0; s < UVIP_TCP_STATE_COUNT; s++) {
      if (skip_zero && v[s] == 0)
        continue;
      put(o, "uvip_%s{", metric);
      if (vip)
        put(o, "vip=\"%s\",", vip);
      put(o, "state=\"%s\",direction=\"%s\"} %llu\n", uvip_tcp_state_name(s),
          d ? "out" : "in", U(v[s]));
    }
  }
}

/* The seconds left: +Inf when the pair levels off, nothing when unknown. */
static void prom_eta(out_t *o, const char *metric, const char *labels,
                     const uvip_forecast_t *f) {
  if (f->state == UVIP_FORECAST_STEADY)
    put(o, "uvip_%s{%s} +Inf\n", metric, labels);
  else if (f->state != UVIP_FORECAST_UNKNOWN)
    put(o, "uvip_%s{%s} %.3f\n", metric, labels, f->eta);
}

static void prom_forecasts(out_t *o, const uvip_census_t *c, size_t max_tuples,
                           const uvip_forecast_t *pf, const uvip_forecast_t *vf) {
  char a[UVIP_ADDRSTRLEN], b[UVIP_ADDRSTRLEN];
  char lab[2 * UVIP_ADDRSTRLEN + 32];
  size_t nt = uvip_census_tuple_count(c);
  if (max_tuples && max_tuples < nt)
    nt = max_tuples;
  static const char *const pm[3][2] = {
      {"pair_ports_rate", "Ports taken per second per (vip, remote) pair "
                          "(smoothed)."},
      {"pair_ports_steady", "Ports the pair holds once TIME_WAIT levels off "
                            "at that rate."},
      {"pair_exhaustion_seconds", "Seconds until the pair has no port left at "
                                  "that rate (+Inf: levels off below the "
                                  "range)."}};
  for (int m = 0; pf && m < 3; m++) {
    head(o, pm[m][0], "gauge", pm[m][1]);
    for (size_t i = 0; i < nt; i++) {
      const uvip_census_tuple_t *t = uvip_census_tuple(c, i);
      fmt_addr(&t->local, 0, a);
      fmt_addr(&t->remote, 1, b);
      snprintf(lab, sizeof(lab), "vip=\"%s\",remote=\"%s\"", a, b);
      if (m == 2)
        prom_eta(o, pm[m][0], lab, &pf[i]);
      else if (pf[i].samples >= 2)
        put(o, "uvip_%s{%s} %.3f\n", pm[m][0], lab,
            m == 0 ? pf[i].rate : pf[i].steady);
    }
  }
  if (!vf)
    return;
  head(o, "vip_ports_rate", "gauge",
       "Ports taken per second over the VIP's outbound pairs.");
  for (size_t i = 0; i < uvip_census_vip_count(c); i++) {
    fmt_addr(&uvip_census_vip(c, i)->addr, 0, a);
    if (vf[i].samples >= 2)
      put(o, "uvip_vip_ports_rate{vip=\"%s\"} %.3f\n", a, vf[i].rate);
  }
  head(o, "vip_exhaustion_seconds", "gauge",
       "Seconds until the VIP's first pair has no port left.");
  for (size_t i = 0; i < uvip_census_vip_count(c); i++) {
    fmt_addr(&uvip_census_vip(c, i)->addr, 0, a);
    snprintf(lab, sizeof(lab), "vip=\"%s\"", a);
    prom_eta(o, "vip_exhaustion_seconds", lab, &vf[i]);
  }
}

static void render_prom(out_t *o, const uvip_census_t *c,
                        const uvip_capacity_t *cap, size_t max_tuples,
                        const uvip_forecast_t *pf, const uvip_forecast_t *vf) {
  const uvip_census_info_t *info = uvip_census_info(c);
  const uvip_limits_t *l = uvip_census_limits(c);
  char a[UVIP_ADDRSTRLEN], b[UVIP_ADDRSTRLEN];

  head(o, "sockets", "gauge", "TCP sockets by state and direction.");
  prom_states(o, "sockets", NULL, uvip_census_totals(c), 0);
  head(o, "vip_sockets", "gauge",
       "TCP sockets per local address (VIP), by state and direction; "
       "zero series omitted.");
  for (size_t i = 0; i < uvip_census_vip_count(c); i++) {
    const uvip_census_vip_t *v = uvip_census_vip(c, i);
    fmt_addr(&v->addr, 0, a);
    prom_states(o, "vip_sockets", a, &v->counts, 1);
  }
  head(o, "listen_queue", "gauge", "Connections waiting in the accept queue.");
  for (size_t i = 0; i < uvip_census_listener_count(c); i++) {
    const uvip_census_listener_t *L = uvip_census_listener(c, i);
    fmt_addr(&L->addr, 1, a);
    put(o, "uvip_listen_queue{vip=\"%s\"} %llu\n", a, U(L->queue));
  }
  head(o, "listen_backlog", "gauge", "Accept queue limit (listen backlog).");
  for (size_t i = 0; i < uvip_census_listener_count(c); i++) {
    const uvip_census_listener_t *L = uvip_census_listener(c, i);
    fmt_addr(&L->addr, 1, a);
    if (L->backlog >= 0)
      put(o, "uvip_listen_backlog{vip=\"%s\"} %lld\n", a, (long long)L->backlog);
  }
  static const char *const tm[3][2] = {
      {"port_tuple_in_use", "Local ports in use per (vip, remote) tuple."},
      {"port_tuple_time_wait", "Of those, ports in TIME_WAIT."},
      {"port_tuple_utilisation", "in_use / usable ephemeral ports."}};
  for (int m = 0; m < 3; m++) {
    head(o, tm[m][0], "gauge", tm[m][1]);
    for (size_t i = 0; i < uvip_census_tuple_count(c); i++) {
      const uvip_census_tuple_t *t = uvip_census_tuple(c, i);
      if (max_tuples && i == max_tuples)
        break;
      fmt_addr(&t->local, 0, a);
      fmt_addr(&t->remote, 1, b);
      put(o, "uvip_%s{vip=\"%s\",remote=\"%s\"} ", tm[m][0], a, b);
      if (m == 0)
        put(o, "%llu\n", U(t->in_use));
      else if (m == 1)
        put(o, "%llu\n", U(t->time_wait));
      else
        put(o, "%.6f\n", t->utilisation);
    }
  }
  prom_forecasts(o, c, max_tuples, pf, vf);
  head(o, "census_duration_seconds", "gauge", "Time the last census took.");
  put(o, "uvip_census_duration_seconds %.6f\n", (double)info->duration_ns / 1e9);
  head(o, "census_overflow", "gauge",
       "Sockets (or listeners) that found an aggregation table full.");
  put(o, "uvip_census_overflow{table=\"vips\"} %llu\n"
         "uvip_census_overflow{table=\"listeners\"} %llu\n"
         "uvip_census_overflow{table=\"tuples\"} %llu\n",
      U(info->vips_overflow), U(info->listeners_overflow),
      U(info->tuples_overflow));
  if (l) {
    head(o, "sysctl", "gauge", "Kernel limits read by the census.");
    put(o, "uvip_sysctl{name=\"net.ipv4.ip_local_port_range.low\"} %d\n"
           "uvip_sysctl{name=\"net.ipv4.ip_local_port_range.high\"} %d\n"
           "uvip_sysctl{name=\"net.core.somaxconn\"} %d\n"
           "uvip_sysctl{name=\"net.ipv4.tcp_max_syn_backlog\"} %d\n"
           "uvip_sysctl{name=\"net.ipv4.tcp_max_tw_buckets\"} %lld\n"
           "uvip_sysctl{name=\"net.ipv4.tcp_tw_reuse\"} %d\n"
           "uvip_sysctl{name=\"net.ipv4.tcp_fin_timeout\"} %d\n"
           "uvip_sysctl{name=\"fs.file-max\"} %lld\n"
           "uvip_sysctl{name=\"fs.nr_open\"} %lld\n",
        l->port_lo, l->port_hi, l->somaxconn, l->tcp_max_syn_backlog,
        (long long)l->tcp_max_tw_buckets, l->tcp_tw_reuse, l->tcp_fin_timeout,
        (long long)l->file_max, (long long)l->nr_open);
    head(o, "usable_ports", "gauge",
         "Ephemeral ports per tuple: the range minus reserved ports.");
    put(o, "uvip_usable_ports %d\n", l->usable_ports);
    head(o, "nofile", "gauge", "RLIMIT_NOFILE of this process.");
    put(o, "uvip_nofile{limit=\"soft\"} %lld\nuvip_nofile{limit=\"hard\"} "
           "%lld\n", (long long)l->nofile_soft, (long long)l->nofile_hard);
    head(o, "open_fds", "gauge", "Descriptors this process has open.");
    put(o, "uvip_open_fds %lld\n", (long long)l->open_fds);
    static const char *const ns[] = {"ListenOverflows", "ListenDrops",
                                     "TCPTimeWaitOverflow", "TWRecycled",
                                     "TW", "TWKilled", "SyncookiesSent"};
    const uvip_netstat_t *n = &l->netstat;
    const uint64_t v[] = {n->listen_overflows, n->listen_drops,
                          n->tw_overflow,      n->tw_recycled,
                          n->tw,               n->tw_killed,
                          n->syncookies_sent};
    head(o, "tcpext", "counter", "TcpExt counters from /proc/net/netstat.");
    for (size_t i = 0; i < sizeof(ns) / sizeof(ns[0]); i++)
      put(o, "uvip_tcpext{counter=\"%s\"} %llu\n", ns[i], U(v[i]));
  }
  if (cap) {
    static const char *const kinds[] = {"per_client_addr", "per_destination",
                                        "by_ports", "by_fds", "by_memory",
                                        "by_time_wait", "overall", "headroom"};
    const uint64_t vals[] = {cap->per_client_addr, cap->per_destination,
                             cap->by_ports, cap->by_fds, cap->by_memory,
                             cap->by_time_wait, cap->overall, cap->headroom};
    head(o, "capacity", "gauge",
         "Connections possible by each limit (absent: no bound).");
    for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++)
      if (vals[i] != UINT64_MAX)
        put(o, "uvip_capacity{kind=\"%s\"} %llu\n", kinds[i], U(vals[i]));
    head(o, "capacity_binding", "gauge", "1 for the limit that binds first.");
    put(o, "uvip_capacity_binding{limit=\"%s\"} 1\n",
        uvip_bound_name(cap->binding));
  }
}

UVIP_EXPORT int uvip_census_render(const uvip_census_t *census,
                                   const uvip_capacity_t *cap, int format,
                                   size_t max_tuples, char *buf, size_t *len) {
  return uvip__census_render(census, cap, format, max_tuples, NULL, NULL, buf,
                             len);
}

int uvip__census_render(const uvip_census_t *census,
                        const uvip_capacity_t *cap, int format,
                        size_t max_tuples, const uvip_forecast_t *pf,
                        const uvip_forecast_t *vf, char *buf, size_t *len) {
  out_t o;
  UVIP_CHECK_ARG(census == NULL || len == NULL || (buf == NULL && *len));
  UVIP_CHECK_ARG(format != UVIP_RENDER_JSON && format != UVIP_RENDER_PROMETHEUS);
  o.buf = buf;
  o.cap = *len;
  o.len = 0;
  if (format == UVIP_RENDER_JSON)
    render_json(&o, census, cap, max_tuples, pf, vf);
  else
    render_prom(&o, census, cap, max_tuples, pf, vf);
  if (o.len + 1 > o.cap) {
    *len = o.len + 1;
    return UV_ENOBUFS;
  }
  *len = o.len;
  return 0;
}
