/* uvip-loadgen's reports: what a worker counts, and the sums the parent
 * prints from them while the run goes and at its end.
 * SPDX-License-Identifier: MIT */
#ifndef UVIP_EXAMPLES_LOADGEN_REPORT_H
#define UVIP_EXAMPLES_LOADGEN_REPORT_H

#include <stddef.h>
#include <stdint.h>
#include <uvip.h>

#define LG_MAX_ERRS 16
#define LG_MAX_TGT 64 /* targets whose counts a report carries */
/* Connect latencies: a log-linear histogram of microseconds, exact below
 * 16 us, then 8 buckets per power of two (12.5 % wide) up to 2^32 us. */
#define LG_LAT_BUCKETS (16 + 28 * 8)

typedef struct {
  int32_t code;
  uint32_t pad;
  uint64_t count;
} lg_err_count_t;

/* What a worker tells the parent; fixed size, below PIPE_BUF, so that each
 * write arrives whole. */
typedef struct {
  uint32_t done;       /* final report: the worker is finishing */
  uint32_t nerrs;
  uint64_t attempted;  /* connections started or failed at once */
  uint64_t established;
  uint64_t verified;
  uint64_t open;
  uint64_t peak_open;
  uint64_t pending;
  uint64_t failed;
  uint64_t settle_ms;  /* when its share was all settled; 0 = not (yet) */
  uint64_t range;      /* usable ports per (source, target) pair */
  uint64_t exhausted;  /* bit t: target t ran out of ports */
  uint64_t src_addrs;  /* prefix pool: distinct source addresses in use */
  uint64_t lat_max_us; /* slowest connect */
  uint32_t in_use[LG_MAX_TGT];
  lg_err_count_t errs[LG_MAX_ERRS];
  uint32_t lat[LG_LAT_BUCKETS]; /* connects that succeeded, by latency */
} lg_report_t;

_Static_assert(sizeof(lg_report_t) <= 4096, "report must fit in PIPE_BUF");

/* The command line; the summary repeats it. */
typedef struct {
  uvip_addrs_t *targets, *sources;
  /* --sources A/N: a prefix pool (sources stays empty) */
  int has_prefix;
  uvip_prefix_t prefix;
  size_t ntargets;
  uint64_t conns, procs, seconds;
  double churn;
  int hold, echo, json;
} lg_opts_t;

/* The parent's (or the single process's) latest report of each worker. */
typedef struct {
  lg_report_t *reps;
  size_t nreps;
  uint64_t last_established; /* at the previous progress line */
  int got_final_all;         /* every worker sent its final report */
} lg_tally_t;

void lg_add_err(lg_report_t *r, int code, uint64_t n);

/* Counts one connect that took us microseconds. */
void lg_add_latency(lg_report_t *r, uint64_t us);

/* The latency under which a fraction q (0..1) of the counted connects
 * fall (the upper edge of its bucket, at most the maximum); 0 when none
 * were counted. */
uint64_t lg_latency_quantile(const lg_report_t *r, double q);

/* The progress line on stderr, `ms` into the run. */
void lg_print_progress(lg_tally_t *tally, uint64_t ms);

/* The end-of-run summary (and the JSON of --json). Returns the exit
 * status: 0 when every connection succeeded, 1 otherwise. */
int lg_print_summary(const lg_tally_t *tally, const lg_opts_t *opts,
                     uint64_t ms);

#endif
