/* SPDX-License-Identifier: MIT */
#include "exproc.h"
#include "helpers.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

const char *tx_bin(const char *name) {
  static char path[2][4096];
  static int k;
  const char *dir = getenv("UVIP_BUILD_DIR");
  ck_assert_msg(dir != NULL, "UVIP_BUILD_DIR not set");
  k = !k;
  snprintf(path[k], sizeof(path[k]), "%s/examples/%s", dir, name);
  return path[k];
}

static FILE *pipe_reader(int fds[2]) {
  close(fds[1]);
  FILE *f = fdopen(fds[0], "r");
  ck_assert_ptr_nonnull(f);
  return f;
}

void tx_spawn(tx_proc_t *p, const char *const *argv) {
  int out[2], err[2];
  ck_assert_int_eq(pipe(out), 0);
  ck_assert_int_eq(pipe(err), 0);
  fflush(NULL);
  p->pid = fork();
  ck_assert_int_ge(p->pid, 0);
  if (p->pid == 0) {
    dup2(out[1], STDOUT_FILENO);
    dup2(err[1], STDERR_FILENO);
    close(out[0]);
    close(out[1]);
    close(err[0]);
    close(err[1]);
    execv(argv[0], (char *const *)argv);
    _exit(127);
  }
  p->out = pipe_reader(out);
  p->err = pipe_reader(err);
}

void tx_expect_line(FILE *f, const char *want, char *seen, size_t len) {
  char line[1024];
  while (fgets(line, sizeof(line), f) != NULL) {
    if (seen)
      strncat(seen, line, len - strlen(seen) - 1);
    if (strstr(line, want) != NULL)
      return;
  }
  ck_abort_msg("no line with '%s' before end of output; seen:\n%s", want,
               seen ? seen : "");
}

void tx_read_rest(FILE *f, char *seen, size_t len) {
  char line[1024];
  while (fgets(line, sizeof(line), f) != NULL)
    if (seen)
      strncat(seen, line, len - strlen(seen) - 1);
}

int tx_wait_exit(tx_proc_t *p) {
  int st;
  ck_assert_int_eq(waitpid(p->pid, &st, 0), p->pid);
  ck_assert_msg(WIFEXITED(st), "killed by signal %d", WTERMSIG(st));
  fclose(p->out);
  fclose(p->err);
  return WEXITSTATUS(st);
}

char *tx_run(const char *args, int *rc) {
  static const char tail[] = " 2>&1; echo \"rc=$?\"";
  size_t len = strlen(args) + sizeof(tail);
  char *cmd = malloc(len), *out, *p;
  ck_assert_ptr_nonnull(cmd);
  snprintf(cmd, len, "%s%s", args, tail);
  out = th_cmd_output(cmd);
  free(cmd);
  ck_assert_ptr_nonnull(out);
  p = strrchr(out, '\n');
  ck_assert_ptr_nonnull(p);
  *p = 0;
  p = strrchr(out, '\n');
  p = p ? p + 1 : out;
  ck_assert_msg(strncmp(p, "rc=", 3) == 0, "no exit status in: %s", out);
  *rc = atoi(p + 3);
  *p = 0;
  return out;
}

void tx_echo_check(int fd, const char *msg) {
  size_t n = strlen(msg), got = 0;
  char buf[256];
  ck_assert(n <= sizeof(buf));
  ck_assert_int_eq(write(fd, msg, n), (ssize_t)n);
  while (got < n) {
    ssize_t r = read(fd, buf + got, sizeof(buf) - got);
    ck_assert_msg(r > 0, "read: %zd (%s)", r, strerror(errno));
    got += (size_t)r;
  }
  ck_assert_uint_eq(got, n);
  ck_assert(memcmp(buf, msg, n) == 0);
}

void tx_expect_eof(int fd) {
  char c;
  ssize_t r;
  do
    r = read(fd, &c, 1);
  while (r < 0 && errno == EINTR);
  ck_assert_msg(r == 0 || (r < 0 && errno == ECONNRESET), "read: %zd", r);
}

unsigned long long tx_num_after(const char *s, const char *key) {
  const char *p = strstr(s, key);
  char *end;
  ck_assert_msg(p != NULL, "no '%s' in:\n%s", key, s);
  p += strlen(key);
  unsigned long long v = strtoull(p, &end, 10);
  ck_assert_msg(end != p, "no number after '%s' in:\n%s", key, s);
  return v;
}
