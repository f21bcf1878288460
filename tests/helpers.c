/* SPDX-License-Identifier: MIT */
#include "helpers.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
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

static bool loop_quiet(uv_loop_t *loop) {
  struct pollfd p = {.fd = uv_backend_fd(loop), .events = POLLIN};
  if (!uv_loop_alive(loop))
    return true; /* uv_run() would return at once */
  return uv_backend_timeout(loop) == -1 && poll(&p, 1, 0) == 0;
}

int th_run_until_quiet(uv_loop_t *loop, int max_turns) {
  int turns = 0, quiet = 0;
  while (quiet < 2 && turns < max_turns) {
    uv_run(loop, UV_RUN_NOWAIT);
    turns++;
    quiet = loop_quiet(loop) ? quiet + 1 : 0;
  }
  ck_assert_msg(quiet >= 2, "loop still busy after %d turns", turns);
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

void th_require_netns_or_skip(void) {
  if (geteuid() != 0) {
    fprintf(stderr, "skip: needs root\n");
    exit(77);
  }
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) {
    perror("fork");
    exit(EXIT_FAILURE);
  }
  if (pid == 0) {
    if (unshare(CLONE_NEWNET) != 0) {
      fprintf(stderr, "skip: unshare(CLONE_NEWNET): %s\n", strerror(errno));
      _exit(77);
    }
    if (system("ip link set lo up") != 0) {
      fprintf(stderr, "skip: cannot bring lo up\n");
      _exit(77);
    }
    _exit(0);
  }
  int status;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) {
      perror("waitpid");
      exit(EXIT_FAILURE);
    }
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    exit(77);
}

void th_enter_netns(void) {
  ck_assert_msg(unshare(CLONE_NEWNET) == 0, "unshare(CLONE_NEWNET): %s", strerror(errno));
  ck_assert_msg(system("ip link set lo up") == 0, "cannot bring lo up");
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

static char th_buf[65536];

static void th_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  (void)h;
  (void)hint;
  *buf = uv_buf_init(th_buf, sizeof(th_buf));
}

static th_track_t *track_of(uvip_conn_t *c) {
  return uvip_server_get_data(uvip_vip_server(uvip_conn_vip(c)));
}

void th_on_conn_closed(uvip_conn_t *c) {
  th_track_t *t = track_of(c);
  t->closed++;
  t->active--;
  for (int i = 0; i < t->nconns; i++)
    if (t->conns[i] == c)
      t->conns[i] = NULL;
}

static void th_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  uvip_conn_t *c = uvip_conn_from_tcp((uv_tcp_t *)s);
  if (n < 0) {
    uvip_conn_close(c, th_on_conn_closed);
    return;
  }
  if (n > 0) {
    uv_buf_t b = uv_buf_init(buf->base, (unsigned)n);
    /* Tests send a few bytes; loopback takes them at once. */
    ck_assert_int_eq(uv_try_write(s, &b, 1), n);
    track_of(c)->echoed_bytes += (int)n;
  }
}

void th_echo_on_connection(uvip_server_t *s, uvip_conn_t *c) {
  th_track_t *t = uvip_server_get_data(s);
  ck_assert_ptr_nonnull(t);
  ck_assert_int_lt(t->nconns, TH_MAX_CONNS);
  t->order[t->nconns] = uvip_conn_vip(c);
  t->conns[t->nconns++] = c;
  t->accepted++;
  t->active++;
  if (t->active > t->max_active)
    t->max_active = t->active;
  if (!t->hold)
    ck_assert_int_eq(uv_read_start(uvip_conn_stream(c), th_alloc, th_read), 0);
}

void th_close_conn(th_track_t *t, int i) {
  ck_assert_int_lt(i, t->nconns);
  if (t->conns[i]) {
    uvip_conn_close(t->conns[i], th_on_conn_closed);
    t->conns[i] = NULL;
  }
}

bool th_next_perm(int *a, int n) {
  int i = n - 2, j = n - 1, t;
  while (i >= 0 && a[i] >= a[i + 1])
    i--;
  if (i < 0)
    return false;
  while (a[j] <= a[i])
    j--;
  t = a[i];
  a[i] = a[j];
  a[j] = t;
  for (int l = i + 1, r = n - 1; l < r; l++, r--) {
    t = a[l];
    a[l] = a[r];
    a[r] = t;
  }
  return true;
}

void th_read_until(FILE *f, const char *want, char *log, size_t len) {
  char line[512];
  while (fgets(line, sizeof(line), f)) {
    strncat(log, line, len - strlen(log) - 1);
    if (strstr(line, want))
      return;
  }
  ck_abort_msg("EOF before '%s'; output:\n%s", want, log);
}

int th_count_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  struct dirent *e;
  int n = 0;
  ck_assert_ptr_nonnull(d);
  while ((e = readdir(d)) != NULL)
    if (e->d_name[0] != '.')
      n++;
  closedir(d);
  return n - 1; /* the directory's own descriptor */
}
