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

/* The one number parser of the examples. A number is one or more ASCII
 * digits and nothing else: no sign, no space, no other base, no exponent
 * (strtoull() would take " -1" as 2^64-1). Returns 0 and sets *out, or
 * UV_EINVAL (not a number) or UV_ERANGE (outside [min, max], including
 * past 2^64-1); *out is untouched on error. */
int ex_num_parse(const char *s, uint64_t min, uint64_t max, uint64_t *out);

/* Seconds as digits with up to three decimals ("2", "0.5", "0.001"), into
 * milliseconds in [min_ms, max_ms]; "inf", "nan", "1e3" and signs are
 * refused. Same results as ex_num_parse(). */
int ex_secs_parse(const char *s, uint64_t min_ms, uint64_t max_ms,
                  uint64_t *out_ms);

/* Parses a decimal number in [min, max] for option `opt`, or exits 2 with
 * "PROG: OPT: expected a number from MIN to MAX, got 'VAL'". */
uint64_t ex_parse_num(const char *opt, const char *val, uint64_t min, uint64_t max);

/* Seconds (ex_secs_parse()) for option `opt` in milliseconds, or exits 2
 * with "PROG: OPT: expected seconds from MIN to MAX (up to 3 decimals),
 * got 'VAL'". */
uint64_t ex_parse_secs(const char *opt, const char *val, uint64_t min_ms,
                       uint64_t max_ms);

/* Appends the addresses of spec to addrs with default port `port`, or exits
 * 2 with "PROG: --listen: <parser message>". With a non-zero default port
 * (a server's or a target's), an address with port 0 is refused too. */
void ex_parse_spec(const char *opt, uvip_addrs_t *addrs, const char *spec, int port);

/* Calls cb once on the first SIGINT or SIGTERM (a second one exits at once).
 * The signal handles do not keep the loop alive. */
void ex_on_signal(uv_loop_t *loop, void (*cb)(int signum));
void ex_signals_close(void);

#endif
