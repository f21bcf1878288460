/* SPDX-License-Identifier: MIT */
#include "common.h"

#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *ex_prog = "uvip";

void ex_init(const char *argv0) {
  const char *slash = argv0 ? strrchr(argv0, '/') : NULL;
  ex_prog = slash ? slash + 1 : (argv0 ? argv0 : "uvip");
}

void ex_usage_error(const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "%s: ", ex_prog);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  exit(2);
}

void ex_bad_option(int argc, char **argv) {
  const char *arg = optind > 0 && optind <= argc ? argv[optind - 1] : "?";
  /* getopt_long sets optopt to the option's value when only its argument
   * is missing (the examples give long options values above 255), to the
   * character for an unknown short option and to 0 for an unknown long
   * option. */
  if (optopt && optopt > 255)
    ex_usage_error("option '%s' needs a value; see --help", arg);
  ex_usage_error("unknown option '%s'; see --help", arg);
}

int ex_num_parse(const char *s, uint64_t min, uint64_t max, uint64_t *out) {
  uint64_t v = 0;
  const char *p = s;
  if (!s || *s < '0' || *s > '9')
    return UV_EINVAL;
  for (; *p >= '0' && *p <= '9'; p++) {
    unsigned d = (unsigned)(*p - '0');
    if (v > (UINT64_MAX - d) / 10) {
      /* Past 2^64-1: still a number, out of any range. */
      while (*p >= '0' && *p <= '9')
        p++;
      return *p ? UV_EINVAL : UV_ERANGE;
    }
    v = v * 10 + d;
  }
  if (*p)
    return UV_EINVAL;
  if (v < min || v > max)
    return UV_ERANGE;
  *out = v;
  return 0;
}

int ex_secs_parse(const char *s, uint64_t min_ms, uint64_t max_ms,
                  uint64_t *out_ms) {
  /* Kept below 2^64 / 1000 so that the milliseconds cannot wrap; a value
   * past it is out of any range. */
  const uint64_t lim = UINT64_MAX / 1000 - 1;
  uint64_t secs = 0, frac = 0, ms;
  const char *p = s;
  int big = 0, nd = 0;
  if (!s || *s < '0' || *s > '9')
    return UV_EINVAL;
  for (; *p >= '0' && *p <= '9'; p++) {
    unsigned d = (unsigned)(*p - '0');
    if (secs > (lim - d) / 10)
      big = 1;
    else
      secs = secs * 10 + d;
  }
  if (*p == '.')
    for (p++; *p >= '0' && *p <= '9'; p++, nd++)
      if (nd < 3)
        frac = frac * 10 + (unsigned)(*p - '0');
  if (*p || (s[strcspn(s, ".")] == '.' && (nd == 0 || nd > 3)))
    return UV_EINVAL;
  for (; nd < 3; nd++)
    frac *= 10;
  if (big)
    return UV_ERANGE;
  ms = secs * 1000 + frac;
  if (ms < min_ms || ms > max_ms)
    return UV_ERANGE;
  *out_ms = ms;
  return 0;
}

uint64_t ex_parse_num(const char *opt, const char *val, uint64_t min, uint64_t max) {
  uint64_t v;
  if (ex_num_parse(val, min, max, &v) != 0)
    ex_usage_error("%s: expected a number from %llu to %llu, got '%s'", opt,
                   (unsigned long long)min, (unsigned long long)max,
                   val ? val : "");
  return v;
}

uint64_t ex_parse_secs(const char *opt, const char *val, uint64_t min_ms,
                       uint64_t max_ms) {
  uint64_t ms;
  if (ex_secs_parse(val, min_ms, max_ms, &ms) != 0)
    ex_usage_error("%s: expected seconds from %llu.%03llu to %llu (up to 3 "
                   "decimals), got '%s'",
                   opt, (unsigned long long)(min_ms / 1000),
                   (unsigned long long)(min_ms % 1000),
                   (unsigned long long)(max_ms / 1000), val ? val : "");
  return ms;
}

void ex_parse_spec(const char *opt, uvip_addrs_t *addrs, const char *spec, int port) {
  char err[256] = "";
  size_t i, n0 = uvip_addrs_count(addrs);
  int r = uvip_addrs_parse(addrs, spec, port, err, sizeof(err));
  if (r != 0)
    ex_usage_error("%s: %s", opt, err[0] ? err : uv_strerror(r));
  /* The library takes port 0 (a source address may have it); a server
   * or a target may not, and would only learn it as "invalid argument". */
  for (i = n0; port != 0 && i < uvip_addrs_count(addrs); i++) {
    const struct sockaddr *sa = uvip_addrs_at(addrs, i);
    char txt[UVIP_ADDRSTRLEN];
    uint16_t p = sa->sa_family == AF_INET
                     ? ((const struct sockaddr_in *)(const void *)sa)->sin_port
                     : ((const struct sockaddr_in6 *)(const void *)sa)->sin6_port;
    if (p == 0) {
      if (uvip_addr_format(sa, 1, txt, sizeof(txt)) != 0)
        txt[0] = '\0';
      ex_usage_error("%s: %s: port 0 is not a port to listen or connect on",
                     opt, txt);
    }
  }
}

static uv_signal_t sig_int, sig_term;
static void (*sig_cb)(int);
static int sig_seen, sig_started;

static void on_signal(uv_signal_t *h, int signum) {
  (void)h;
  if (sig_seen++) {
    fprintf(stderr, "%s: second signal, exiting now\n", ex_prog);
    exit(1);
  }
  sig_cb(signum);
}

void ex_on_signal(uv_loop_t *loop, void (*cb)(int signum)) {
  sig_cb = cb;
  uv_signal_init(loop, &sig_int);
  uv_signal_init(loop, &sig_term);
  uv_signal_start(&sig_int, on_signal, SIGINT);
  uv_signal_start(&sig_term, on_signal, SIGTERM);
  uv_unref((uv_handle_t *)&sig_int);
  uv_unref((uv_handle_t *)&sig_term);
  sig_started = 1;
}

void ex_signals_close(void) {
  if (!sig_started)
    return;
  sig_started = 0;
  uv_close((uv_handle_t *)&sig_int, NULL);
  uv_close((uv_handle_t *)&sig_term, NULL);
}
