/* SPDX-License-Identifier: MIT */
#include "helpers.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int th_run_until(uv_loop_t *loop, const bool *flag, int max_turns) {
  int turns = 0;
  while (!*flag && turns < max_turns) {
    uv_run(loop, UV_RUN_ONCE);
    turns++;
  }
  ck_assert_msg(*flag, "condition not reached after %d loop turns", turns);
  return turns;
}

void th_addr(const char *ip, int port, struct sockaddr_storage *sa) {
  memset(sa, 0, sizeof(*sa));
  if (strchr(ip, ':')) {
    ck_assert_int_eq(uv_ip6_addr(ip, port, (struct sockaddr_in6 *)sa), 0);
  } else {
    ck_assert_int_eq(uv_ip4_addr(ip, port, (struct sockaddr_in *)sa), 0);
  }
}

static socklen_t sa_len(const struct sockaddr *sa) {
  return sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                   : sizeof(struct sockaddr_in);
}

int th_connect(const struct sockaddr *dst, const struct sockaddr *src) {
  int fd = socket(dst->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ck_assert_int_ge(fd, 0);
  if (src)
    ck_assert_msg(bind(fd, src, sa_len(src)) == 0, "bind: %s", strerror(errno));
  ck_assert_msg(connect(fd, dst, sa_len(dst)) == 0, "connect: %s",
                strerror(errno));
  return fd;
}

int th_connect_nb(const struct sockaddr *dst) {
  int fd = socket(dst->sa_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  ck_assert_int_ge(fd, 0);
  int r = connect(fd, dst, sa_len(dst));
  ck_assert_msg(r == 0 || errno == EINPROGRESS, "connect: %s", strerror(errno));
  return fd;
}

int th_free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a;
  socklen_t len = sizeof(a);
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
  ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
  close(fd);
  return ntohs(a.sin_port);
}

uvip_addrs_t *th_addrs(const char *spec, int port) {
  uvip_addrs_t *a = NULL;
  char err[256] = "";
  ck_assert_int_eq(uvip_addrs_new(&a), 0);
  int r = uvip_addrs_parse(a, spec, port, err, sizeof(err));
  ck_assert_msg(r == 0, "parse '%s': %s (%s)", spec, uv_strerror(r), err);
  return a;
}

void th_enter_netns_or_skip(void) {
  if (geteuid() != 0) {
    fprintf(stderr, "skip: needs root\n");
    exit(77);
  }
  if (unshare(CLONE_NEWNET) != 0) {
    fprintf(stderr, "skip: unshare(CLONE_NEWNET): %s\n", strerror(errno));
    exit(77);
  }
  if (system("ip link set lo up") != 0) {
    fprintf(stderr, "skip: cannot bring lo up\n");
    exit(77);
  }
}

char *th_cmd_output(const char *cmd) {
  FILE *p = popen(cmd, "r");
  if (!p)
    return NULL;
  size_t cap = 4096, len = 0;
  char *buf = malloc(cap);
  size_t n;
  while (buf && (n = fread(buf + len, 1, cap - len - 1, p)) > 0) {
    len += n;
    if (cap - len < 2) {
      cap *= 2;
      char *nb = realloc(buf, cap);
      if (!nb) {
        free(buf);
        buf = NULL;
      }
      buf = nb;
    }
  }
  if (pclose(p) == -1 || !buf) {
    free(buf);
    return NULL;
  }
  buf[len] = 0;
  return buf;
}

int th_run_suite(Suite *s) {
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
