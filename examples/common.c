/* SPDX-License-Identifier: MIT */
#include "common.h"

#include <errno.h>
#include <getopt.h>
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

uint64_t ex_parse_num(const char *opt, const char *val, uint64_t min, uint64_t max) {
  char *end = NULL;
  unsigned long long v;
  if (!val || !*val || *val == '-' || *val == '+')
    goto bad;
  errno = 0;
  v = strtoull(val, &end, 10);
  if (errno || *end || v < min || v > max)
    goto bad;
  return v;
bad:
  ex_usage_error("%s: expected a number from %llu to %llu, got '%s'", opt,
                 (unsigned long long)min, (unsigned long long)max,
                 val ? val : "");
}

void ex_parse_spec(const char *opt, uvip_addrs_t *addrs, const char *spec, int port) {
  char err[256] = "";
  int r = uvip_addrs_parse(addrs, spec, port, err, sizeof(err));
  if (r != 0)
    ex_usage_error("%s: %s", opt, err[0] ? err : uv_strerror(r));
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
