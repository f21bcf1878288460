/* Helpers shared by the example programs: argument parsing with one-line
 * errors (exit status 2) and signal handling.
 * SPDX-License-Identifier: MIT */
#ifndef UVIP_EXAMPLES_COMMON_H
#define UVIP_EXAMPLES_COMMON_H

#include <stdint.h>
#include <uvip.h>

/* The program name used in messages (set by ex_init). */
extern const char *ex_prog;

void ex_init(const char *argv0);

/* Prints "PROG: MESSAGE" to stderr and exits with status 2. */
void ex_usage_error(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

/* After getopt_long() returned '?': exits 2 with "PROG: option '--x' needs
 * a value" or "PROG: unknown option '--y'". */
void ex_bad_option(int argc, char **argv) __attribute__((noreturn));

/* Parses a decimal number in [min, max] for option `opt`, or exits 2 with
 * "PROG: OPT: expected a number from MIN to MAX, got 'VAL'". */
uint64_t ex_parse_num(const char *opt, const char *val, uint64_t min, uint64_t max);

/* Appends the addresses of spec to addrs with default port `port`, or exits
 * 2 with "PROG: --listen: <parser message>". */
void ex_parse_spec(const char *opt, uvip_addrs_t *addrs, const char *spec, int port);

/* Calls cb once on the first SIGINT or SIGTERM (a second one exits at once).
 * The signal handles do not keep the loop alive. */
void ex_on_signal(uv_loop_t *loop, void (*cb)(int signum));
void ex_signals_close(void);

#endif
