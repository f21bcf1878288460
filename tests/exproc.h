/* Running the example programs from the end-to-end tests: a program on
 * pipes whose output lines are waited for, and one-shot command lines.
 * Every wait is for a line or an exit, never for time; a program that
 * hangs fails the test at check's timeout.
 * SPDX-License-Identifier: MIT */
#ifndef UVIP_TEST_EXPROC_H
#define UVIP_TEST_EXPROC_H

#include <stddef.h>
#include <stdio.h>
#include <sys/types.h>

/* The path of examples/NAME in the build (UVIP_BUILD_DIR); the two most
 * recent results stay valid. */
const char *tx_bin(const char *name);

/* A program started with its standard output and error on pipes. */
typedef struct {
  pid_t pid;
  FILE *out, *err;
} tx_proc_t;

/* Starts argv (argv[0] a path, NULL terminated). */
void tx_spawn(tx_proc_t *p, const char *const *argv);

/* Reads lines from f until one contains want; fails at end of file. The
 * lines read are appended to seen (may be NULL). */
void tx_expect_line(FILE *f, const char *want, char *seen, size_t len);

/* Reads what is left (until the program closes its end) into seen. */
void tx_read_rest(FILE *f, char *seen, size_t len);

/* Waits for the program's exit and returns its exit status; a death by
 * signal fails the test. Closes the pipes. */
int tx_wait_exit(tx_proc_t *p);

/* Runs a command line through the shell; returns its output (stdout and
 * stderr, malloc'd) and sets *rc to its exit status. */
char *tx_run(const char *args, int *rc);

/* Writes msg to fd and checks that the same bytes come back. */
void tx_echo_check(int fd, const char *msg);

/* The peer closed the connection: read() sees the end (or a reset). */
void tx_expect_eof(int fd);

/* The number that follows the first `key` in s (fails if none). */
unsigned long long tx_num_after(const char *s, const char *key);

#endif
