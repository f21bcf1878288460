/* Census: the public API. Options and their defaults, a census's lifetime,
 * one sample from start to end (the dumps in census-dump.c with the
 * documented fallback to /proc, the merge, the kernel limits, the order
 * the accessors show) and the accessors, whose rows stay valid until the
 * next sample. The tables and the counting are in census-table.c.
 * SPDX-License-Identifier: MIT */
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "census-state.h"

/* CPUs this process may run on. */
static int usable_cpus(void) {
  cpu_set_t set;
  long n = 0;
  if (sched_getaffinity(0, sizeof(set), &set) == 0)
    n = CPU_COUNT(&set);
  if (n < 1)
    n = sysconf(_SC_NPROCESSORS_ONLN);
  return n < 1 ? 1 : (int)n;
}

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
  opts->shards = 0; /* automatic: 1 or 2, chosen by each sample */
  return 0;
}

UVIP_EXPORT void uvip_census_free(uvip_census_t *c) {
  if (!c)
    return;
  uvip__census_tables_free(c);
  free(c->shards);
  free(c->vip_rows);
  free(c->lst_rows);
  free(c->tup_rows);
  free(c->tup_flags);
  free(c->lst_flags);
  free(c->filter);
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
  UVIP_CHECK_ARG(o.shards > UVIP_CENSUS_SHARDS_MAX);
  if (o.rcvbuf < RCVBUF_MIN)
    o.rcvbuf = RCVBUF_MIN;
  if (o.states == 0)
    o.states = (1u << UVIP_TCP_STATE_COUNT) - 1;
  /* Automatic: up to 2 shards when the process may use 2 CPUs; each
   * sample picks 1 or 2 from the CPUs idle at its start (census-dump.c). */
  int auto_shards = o.shards == 0, cpus = usable_cpus();
  if (auto_shards)
    o.shards = cpus >= 2 ? 2 : 1;

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
  c->nshards = (int)o.shards;
  c->auto_shards = auto_shards;
  c->cpus = cpus;
  c->shards = calloc(o.shards, sizeof(*c->shards));
  c->filter = calloc(nv ? nv : 1, sizeof(akey_t));
  c->vip_rows = calloc(o.max_vips, sizeof(*c->vip_rows));
  c->lst_rows = calloc(o.max_listeners, sizeof(*c->lst_rows));
  c->tup_rows = calloc(o.max_tuples, sizeof(*c->tup_rows));
  c->lst_flags = calloc(o.max_listeners, 1);
  c->tup_flags = calloc(o.max_tuples, 1);
  if (!c->shards || !c->filter || !c->vip_rows || !c->lst_rows ||
      !c->tup_rows || !c->lst_flags || !c->tup_flags) {
    uvip_census_free(c);
    return UV_ENOMEM;
  }
  if ((rc = uvip__census_tables_init(c)) != 0 ||
      (rc = uvip__census_filter_init(c, vips)) != 0) {
    uvip_census_free(c);
    return rc;
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

UVIP_EXPORT int uvip_census_sample(uvip_census_t *c) {
  uint64_t t0 = uv_hrtime();
  int rc, lo, hi, res;

  UVIP_CHECK_ARG(c == NULL);
  uvip__census_clear(c);
  /* The ephemeral range: usable ports per tuple, and where the shards
   * split (any split is exact; the range only balances it). */
  c->usable = -1;
  c->split_lo = SPLIT_LO_DEFAULT;
  c->split_hi = SPLIT_HI_DEFAULT;
  if (uvip__port_range(&lo, &hi, &res) == 0) {
    c->usable = hi - lo + 1 - res;
    if (lo > 0 && hi >= lo && hi < 65536) {
      c->split_lo = lo;
      c->split_hi = hi;
    }
  }

  int use_proc = (c->opts.flags & UVIP_CENSUS_PROCFS) != 0;
  rc = 0;
  if (!use_proc) {
    rc = uvip__census_sample_netlink(c);
    /* Refused or not built into this kernel: the documented fallback. */
    if (rc == UV_EPROTONOSUPPORT || rc == UV_EACCES || rc == UV_EPERM ||
        rc == UV_ENOENT || rc == UV_EAFNOSUPPORT) {
      uvip__census_clear(c);
      use_proc = 1;
    }
  }
  if (use_proc)
    rc = uvip__census_sample_procfs(c);
  if (rc != 0) {
    uvip__census_clear(c);
    c->info.status = rc;
    return rc;
  }

  uvip__census_merge(c);
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
  uvip__census_order(c);
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
