/* uvip-loadgen's reports summed over the workers and printed: a progress
 * line a second, and the summary (text, or JSON with --json) at the end.
 * SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common.h"
#include "loadgen-report.h"

void lg_add_err(lg_report_t *r, int code, uint64_t n) {
  uint32_t i;
  for (i = 0; i < r->nerrs; i++)
    if (r->errs[i].code == code)
      break;
  if (i == r->nerrs) {
    if (r->nerrs == LG_MAX_ERRS)
      i = LG_MAX_ERRS - 1; /* lumped with the last kind; rare */
    else
      r->errs[r->nerrs++].code = code;
  }
  r->errs[i].count += n;
}

static size_t lat_bucket(uint64_t us) {
  unsigned e = 63 - (unsigned)__builtin_clzll(us | 1);
  if (us < 16)
    return (size_t)us;
  if (e > 31)
    return LG_LAT_BUCKETS - 1;
  return 16 + (e - 4) * 8 + (size_t)((us >> (e - 3)) & 7);
}

/* The largest value of bucket b. */
static uint64_t lat_bucket_top(size_t b) {
  size_t e, sub;
  if (b < 16)
    return b;
  e = (b - 16) / 8 + 4;
  sub = (b - 16) % 8;
  return ((8 + (uint64_t)sub + 1) << (e - 3)) - 1;
}

void lg_add_latency(lg_report_t *r, uint64_t us) {
  r->lat[lat_bucket(us)]++;
  if (us > r->lat_max_us)
    r->lat_max_us = us;
}

uint64_t lg_latency_quantile(const lg_report_t *r, double q) {
  uint64_t n = 0, want, seen = 0, top;
  size_t b;
  for (b = 0; b < LG_LAT_BUCKETS; b++)
    n += r->lat[b];
  if (n == 0)
    return 0;
  want = (uint64_t)(q * (double)n + 0.999999);
  if (want == 0)
    want = 1;
  for (b = 0; b < LG_LAT_BUCKETS; b++) {
    seen += r->lat[b];
    if (seen >= want)
      break;
  }
  top = lat_bucket_top(b < LG_LAT_BUCKETS ? b : LG_LAT_BUCKETS - 1);
  return top < r->lat_max_us ? top : r->lat_max_us;
}

static const char *err_name(int code) {
  return code == 0 ? "OTHER" : uv_err_name(code);
}

static void sum_reports(const lg_tally_t *tally, lg_report_t *s) {
  size_t i, t;
  uint32_t e;
  memset(s, 0, sizeof(*s));
  for (i = 0; i < tally->nreps; i++) {
    const lg_report_t *r = &tally->reps[i];
    s->attempted += r->attempted;
    s->established += r->established;
    s->verified += r->verified;
    s->open += r->open;
    s->peak_open += r->peak_open;
    s->pending += r->pending;
    s->failed += r->failed;
    s->exhausted |= r->exhausted;
    s->src_addrs += r->src_addrs;
    if (r->range)
      s->range = r->range;
    if (r->settle_ms > s->settle_ms)
      s->settle_ms = r->settle_ms;
    for (t = 0; t < LG_MAX_TGT; t++)
      s->in_use[t] += r->in_use[t];
    for (t = 0; t < LG_LAT_BUCKETS; t++)
      s->lat[t] += r->lat[t];
    if (r->lat_max_us > s->lat_max_us)
      s->lat_max_us = r->lat_max_us;
    for (e = 0; e < r->nerrs; e++)
      lg_add_err(s, r->errs[e].code, r->errs[e].count);
  }
}

static void format_errs(const lg_report_t *s, char *buf, size_t len) {
  size_t off = 0;
  uint32_t e;
  buf[0] = 0;
  for (e = 0; e < s->nerrs && off < len; e++)
    off += (size_t)snprintf(buf + off, len - off, "%s%s %llu",
                            e ? ", " : " (", err_name(s->errs[e].code),
                            (unsigned long long)s->errs[e].count);
  if (s->nerrs && off < len)
    snprintf(buf + off, len - off, ")");
}

void lg_print_progress(lg_tally_t *tally, uint64_t ms) {
  lg_report_t s;
  char errs[512];
  uint64_t secs = (ms + 500) / 1000;
  sum_reports(tally, &s);
  format_errs(&s, errs, sizeof(errs));
  fprintf(stderr,
          "%s: %llus: established %llu (+%llu/s), open %llu, verified %llu, "
          "pending %llu, failed %llu%s\n",
          ex_prog, (unsigned long long)secs,
          (unsigned long long)s.established,
          (unsigned long long)(s.established - tally->last_established),
          (unsigned long long)s.open, (unsigned long long)s.verified,
          (unsigned long long)s.pending, (unsigned long long)s.failed, errs);
  tally->last_established = s.established;
}

/* The sources a target's connections came from, for messages. */
static void source_label(const uvip_addrs_t *sources,
                         const struct sockaddr *dst, char *buf, size_t len) {
  size_t i, n = 0;
  const struct sockaddr *one = NULL;
  for (i = 0; i < uvip_addrs_count(sources); i++) {
    const struct sockaddr *sa = uvip_addrs_at(sources, i);
    if (sa->sa_family == dst->sa_family) {
      one = sa;
      n++;
    }
  }
  if (n == 1) {
    uvip_addr_format(one, 0, buf, len);
  } else if (n > 1) {
    snprintf(buf, len, "%zu sources", n);
  } else {
    /* The kernel's choice: ask the routing table the same way. */
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    int fd = socket(dst->sa_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    snprintf(buf, len, "the kernel's choice");
    if (fd >= 0 &&
        connect(fd, dst, dst->sa_family == AF_INET6
                             ? sizeof(struct sockaddr_in6)
                             : sizeof(struct sockaddr_in)) == 0 &&
        getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
      uvip_addr_format((struct sockaddr *)&ss, 0, buf, len);
    if (fd >= 0)
      close(fd);
  }
}

static size_t sources_for(const uvip_addrs_t *sources,
                          const struct sockaddr *dst) {
  size_t i, n = 0;
  for (i = 0; i < uvip_addrs_count(sources); i++)
    n += uvip_addrs_at(sources, i)->sa_family == dst->sa_family;
  return n ? n : 1;
}

static void json_str(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    if (*s == '"' || *s == '\\')
      fputc('\\', f);
    fputc(*s, f);
  }
  fputc('"', f);
}

/* A target that ran out of ports, named the same in the text and the JSON. */
typedef struct {
  char src[UVIP_ADDRSTRLEN + 32], dst[UVIP_ADDRSTRLEN];
  uint64_t in_use, ports;
} wall_t;

static int wall_at(const lg_opts_t *o, const lg_report_t *s, size_t t,
                   wall_t *w) {
  const struct sockaddr *ta = uvip_addrs_at(o->targets, t);
  if (!(s->exhausted & (1ull << t)))
    return 0;
  uvip_addr_format(ta, 1, w->dst, sizeof(w->dst));
  w->in_use = s->in_use[t];
  if (o->has_prefix) {
    /* Only the pairs in use are known: the wall is the pairs tried. */
    uvip_prefix_format(&o->prefix, w->src, sizeof(w->src));
    w->ports = s->in_use[t];
    return 1;
  }
  source_label(o->sources, ta, w->src, sizeof(w->src));
  w->ports = s->range * sources_for(o->sources, ta);
  return 1;
}

int lg_print_summary(const lg_tally_t *tally, const lg_opts_t *o,
                     uint64_t ms) {
  lg_report_t s;
  char errs[512], srcs[UVIP_PREFIXSTRLEN + 64];
  wall_t w;
  double secs = (double)ms / 1000.0;
  uint64_t expected;
  size_t t;
  int ok, first = 1;
  const uvip_addrs_t *sources = o->sources;
  size_t ntargets = o->ntargets;
  FILE *out = o->json ? stderr : stdout;

  sum_reports(tally, &s);
  format_errs(&s, errs, sizeof(errs));
  expected = s.attempted;
  ok = tally->got_final_all && s.failed == 0 && s.established == expected &&
       (!o->echo || s.verified == expected);

  if (o->has_prefix) {
    char pfx[UVIP_PREFIXSTRLEN];
    uvip_prefix_format(&o->prefix, pfx, sizeof(pfx));
    snprintf(srcs, sizeof(srcs), "sources %s (%llu addresses in use)", pfx,
             (unsigned long long)s.src_addrs);
  } else {
    snprintf(srcs, sizeof(srcs), "%zu source%s", uvip_addrs_count(sources),
             uvip_addrs_count(sources) == 1 ? "" : "s");
  }
  fprintf(out,
          "%s: %llu connections to %zu target%s, %s, %llu "
          "process%s: established %llu, verified %llu, peak open %llu, "
          "failed %llu%s in %.1f s\n",
          ex_prog, (unsigned long long)expected, ntargets,
          ntargets == 1 ? "" : "s", srcs,
          (unsigned long long)o->procs, o->procs == 1 ? "" : "es",
          (unsigned long long)s.established, (unsigned long long)s.verified,
          (unsigned long long)s.peak_open, (unsigned long long)s.failed, errs,
          secs);
  for (t = 0; t < ntargets && t < LG_MAX_TGT; t++) {
    if (!wall_at(o, &s, t, &w))
      continue;
    fprintf(out,
            "%s: ports exhausted for %s -> %s: %llu of %llu ephemeral ports "
            "in use; add --sources or more --target VIPs\n",
            ex_prog, w.src, w.dst, (unsigned long long)w.in_use,
            (unsigned long long)w.ports);
  }
  if (s.established > 0)
    fprintf(out,
            "%s: connect latency p50 %.3f ms, p90 %.3f ms, p99 %.3f ms, "
            "max %.3f ms\n",
            ex_prog, (double)lg_latency_quantile(&s, 0.5) / 1000.0,
            (double)lg_latency_quantile(&s, 0.9) / 1000.0,
            (double)lg_latency_quantile(&s, 0.99) / 1000.0,
            (double)s.lat_max_us / 1000.0);
  if (!tally->got_final_all)
    fprintf(out, "%s: a worker process ended without its final report\n",
            ex_prog);
  fprintf(out, "%s: %s\n", ex_prog,
          ok ? "ok: every connection succeeded" : "FAILED");

  if (o->json) {
    uint32_t e;
    printf("{\"ok\":%s,\"conns\":%llu,\"attempted\":%llu,\"established\":%llu,"
           "\"verified\":%llu,\"peak_open\":%llu,\"failed_total\":%llu,"
           "\"failed\":{",
           ok ? "true" : "false", (unsigned long long)o->conns,
           (unsigned long long)expected, (unsigned long long)s.established,
           (unsigned long long)s.verified, (unsigned long long)s.peak_open,
           (unsigned long long)s.failed);
    for (e = 0; e < s.nerrs; e++)
      printf("%s\"%s\":%llu", e ? "," : "", err_name(s.errs[e].code),
             (unsigned long long)s.errs[e].count);
    printf("},\"seconds\":%.3f,\"establish_seconds\":", secs);
    if (s.settle_ms && ok)
      printf("%.3f", (double)(s.settle_ms - 1) / 1000.0);
    else
      printf("null");
    printf(",\"procs\":%llu,\"targets\":%zu,\"sources\":%zu,",
           (unsigned long long)o->procs, ntargets, uvip_addrs_count(sources));
    if (o->has_prefix) {
      char pfx[UVIP_PREFIXSTRLEN];
      uvip_prefix_format(&o->prefix, pfx, sizeof(pfx));
      printf("\"source_prefix\":\"%s\",\"source_addrs_in_use\":%llu,", pfx,
             (unsigned long long)s.src_addrs);
    }
    printf("\"echo\":%s,\"hold\":%s,\"churn\":%g,\"exhausted\":[",
           o->echo ? "true" : "false", o->hold ? "true" : "false", o->churn);
    for (t = 0; t < ntargets && t < LG_MAX_TGT; t++) {
      if (!wall_at(o, &s, t, &w))
        continue;
      printf("%s{\"source\":", first ? "" : ",");
      json_str(stdout, w.src);
      printf(",\"target\":");
      json_str(stdout, w.dst);
      printf(",\"in_use\":%llu,\"ports\":%llu}", (unsigned long long)w.in_use,
             (unsigned long long)w.ports);
      first = 0;
    }
    /* Of the connects that succeeded; 0 when none did. */
    printf("],\"connect_ms\":{\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,"
           "\"max\":%.3f}}\n",
           (double)lg_latency_quantile(&s, 0.5) / 1000.0,
           (double)lg_latency_quantile(&s, 0.9) / 1000.0,
           (double)lg_latency_quantile(&s, 0.99) / 1000.0,
           (double)s.lat_max_us / 1000.0);
  }
  fflush(stdout);
  return ok ? 0 : 1;
}
