/* Upgrade by re-exec: the running generation forks and execs the next one
 * with its listening sockets (systemd's LISTEN_FDS protocol, so the same
 * adoption code serves socket activation and upgrades) and waits, on its
 * loop, for a readiness byte on a pipe. Only then does the application stop
 * accepting in the old one; if the new one fails first, the old one never
 * stopped.
 *
 * One close path: uvip_upgrade_close() marks the object closing and closes
 * its three handles; the last close callback runs close_cb and frees it.
 * SPDX-License-Identifier: MIT */
#include "internal.h"
#include "restart-internal.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;
#ifdef UVIP_COVERAGE
void __gcov_dump(void);
#endif

static void report(uvip_upgrade_t *u, int status, const char *why) {
  if (u->reported)
    return;
  u->reported = true;
  uv_timer_stop(&u->timer);
  uv_read_stop((uv_stream_t *)&u->ready);
  u->cb(u, status, why);
}

static void on_sigchld(uv_signal_t *h, int signum) {
  uvip_upgrade_t *u = UVIP_CONTAINER_OF(h, uvip_upgrade_t, sigchld);
  char why[160];
  int st;
  (void)signum;
  /* Only our own child: other children belong to the application (or to
   * libuv's uv_spawn(), which reaps its own). */
  if (u->pid <= 0 || waitpid(u->pid, &st, WNOHANG) != u->pid)
    return;
  if (u->on_probation) {
    uvip__probation_failed(u, st);
    return;
  }
  u->pid = 0;
  if (WIFEXITED(st))
    snprintf(why, sizeof(why),
             "new generation exited with status %d before it was ready",
             WEXITSTATUS(st));
  else
    snprintf(why, sizeof(why),
             "new generation was killed by signal %d before it was ready",
             WIFSIGNALED(st) ? WTERMSIG(st) : 0);
  report(u, UV_ESRCH, why);
}

static void on_timeout(uv_timer_t *t) {
  uvip_upgrade_t *u = UVIP_CONTAINER_OF(t, uvip_upgrade_t, timer);
  char why[160];
  if (u->pid > 0)
    kill(u->pid, SIGKILL); /* reaped by on_sigchld */
  snprintf(why, sizeof(why),
           "new generation not ready within %llu ms (killed)",
           (unsigned long long)u->timeout_ms);
  report(u, UV_ETIMEDOUT, why);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  uvip_upgrade_t *u = UVIP_CONTAINER_OF(h, uvip_upgrade_t, ready);
  (void)hint;
  *buf = uv_buf_init((char *)u->msg + u->nmsg,
                     (unsigned)(sizeof(u->msg) - u->nmsg));
}

static void on_ready_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  uvip_upgrade_t *u = UVIP_CONTAINER_OF(s, uvip_upgrade_t, ready);
  char why[320];
  (void)buf;
  if (n < 0) {
    /* EOF without a word: the child is gone or closed the pipe; its exit
     * (or the deadline) will say which. */
    uv_read_stop(s);
    return;
  }
  u->nmsg += (size_t)n;
  if (u->nmsg >= 1 && u->msg[0] == 'R') {
    if (uvip__probation_begin(u))
      return;
    u->is_ready = true;
    report(u, 0, "new generation ready");
  } else if (u->nmsg >= 1 + sizeof(int) && u->msg[0] == 'E') {
    int e;
    memcpy(&e, u->msg + 1, sizeof(e));
    snprintf(why, sizeof(why), "cannot execute %s: %s", u->path, strerror(e));
    report(u, -e, why);
  } else if (u->nmsg == sizeof(u->msg)) {
    report(u, UV_EPROTO, "new generation wrote garbage on the readiness pipe");
  }
}

static void on_handle_closed(uv_handle_t *h) {
  uvip_upgrade_t *u = h->data;
  assert(u->closing && u->handles_closing > 0);
  if (--u->handles_closing > 0)
    return;
  if (u->close_cb)
    u->close_cb(u);
  free(u->servers);
  free(u);
}

/* The one way the upgrade's handles close; the last close callback ends
 * it. The new generation sees the channel end: nothing more will come. */
static void close_handles(uvip_upgrade_t *u) {
  assert(u->closing);
  u->handles_closing = 4;
  uv_close((uv_handle_t *)&u->ready, on_handle_closed);
  uv_close((uv_handle_t *)&u->timer, on_handle_closed);
  uv_close((uv_handle_t *)&u->sigchld, on_handle_closed);
  uv_close((uv_handle_t *)&u->chan_poll, on_handle_closed);
  close(u->chan);
  u->chan = -1;
}

/* Collects the listening descriptors of every listening VIP. */
int uvip__collect_listeners(uvip_server_t *const *servers, size_t n,
                            int **fds, size_t *nfds) {
  size_t total = 0, k = 0;
  for (size_t i = 0; i < n; i++)
    total += servers[i]->nvips;
  *fds = calloc(total ? total : 1, sizeof(int));
  if (!*fds)
    return UV_ENOMEM;
  for (size_t i = 0; i < n; i++)
    for (size_t j = 0; j < servers[i]->nvips; j++) {
      const uvip_vip_t *v = servers[i]->vips[j];
      if (v->state == UVIP_VIP_LISTENING && v->fd >= 0)
        (*fds)[k++] = v->fd;
    }
  *nfds = k;
  return k ? 0 : UV_ENOENT;
}

/* A server whose REUSEPORT workers accept on listeners of their own (the
 * server's remote_stop is set while they do) and that was not stopped. */
static bool reuseport_workers(uvip_server_t *const *servers, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (servers[i]->remote_stop && !servers[i]->stopped &&
        !servers[i]->closing)
      return true;
  return false;
}

static bool is_ours(const char *e) {
  return !strncmp(e, "LISTEN_FDS=", 11) || !strncmp(e, "LISTEN_PID=", 11) ||
         !strncmp(e, "LISTEN_FDNAMES=", 15) || !strncmp(e, "UVIP_READY_FD=", 14) ||
         !strncmp(e, "UVIP_HANDOFF_FD=", 16);
}

/* The child's environment: the current one without LISTEN_* and
 * UVIP_READY_FD, plus ours. LISTEN_PID's digits are written by the child
 * (only it knows its pid), in room left here. */
static char **make_env(size_t nfds, int ready_fd, char **pidvar) {
  size_t ne = 0, k = 0;
  char **env, *names, *nf, *rf, *hf, *pv;
  while (environ[ne])
    ne++;
  env = calloc(ne + 6, sizeof(*env));
  names = malloc(nfds * 5 + 16);
  nf = malloc(32);
  rf = malloc(32);
  hf = malloc(32);
  pv = calloc(1, 32);
  if (!env || !names || !nf || !rf || !hf || !pv) {
    free(env);
    free(names);
    free(nf);
    free(rf);
    free(hf);
    free(pv);
    return NULL;
  }
  for (size_t i = 0; i < ne; i++)
    if (!is_ours(environ[i]))
      env[k++] = environ[i];
  /* Ours come last, LISTEN_FDNAMES first of them (free_env relies on it). */
  {
    /* Appended in place: strcat() would rescan the string for every one
     * of up to 65,536 names. */
    char *p = names + strlen(strcpy(names, "LISTEN_FDNAMES="));
    for (size_t i = 0; i < nfds; i++) {
      memcpy(p, i ? ":uvip" : "uvip", i ? 5 : 4);
      p += i ? 5 : 4;
    }
    *p = 0;
  }
  snprintf(nf, 32, "LISTEN_FDS=%zu", nfds);
  snprintf(rf, 32, "UVIP_READY_FD=%d", ready_fd);
  /* The hand-over channel comes right after the readiness pipe. */
  snprintf(hf, 32, "UVIP_HANDOFF_FD=%d", ready_fd + 1);
  env[k++] = names;
  env[k++] = nf;
  env[k++] = rf;
  env[k++] = hf;
  env[k++] = pv;
  env[k] = NULL;
  *pidvar = pv;
  return env;
}

static void free_env(char **env) {
  size_t i = 0;
  while (env[i] && strncmp(env[i], "LISTEN_FDNAMES=", 15) != 0)
    i++;
  for (; env[i]; i++)
    free(env[i]);
  free(env);
}

/* In the child, between fork and exec: only async-signal-safe calls. */
static void child(const int *fds, size_t nfds, int ready_w, int chan,
                  const char *path, char *const argv[], char **env,
                  char *pidvar) {
  int top = 3 + (int)nfds + 2, e;
  sigset_t all;
  /* Out of the way of the targets 3..3+nfds first, then into place (dup2
   * clears FD_CLOEXEC on the copy, so exactly these survive exec). */
  int moved_ready = fcntl(ready_w, F_DUPFD_CLOEXEC, top);
  int moved_chan = fcntl(chan, F_DUPFD_CLOEXEC, top);
  for (size_t i = 0; i < nfds; i++) {
    int m = fcntl(fds[i], F_DUPFD_CLOEXEC, top);
    if (m < 0 || dup2(m, 3 + (int)i) < 0)
      goto fail;
  }
  if (moved_ready < 0 || dup2(moved_ready, 3 + (int)nfds) < 0 ||
      moved_chan < 0 || dup2(moved_chan, 3 + (int)nfds + 1) < 0)
    goto fail;
  ready_w = 3 + (int)nfds;
  /* The new program starts as a program does: default signal handling
   * (the old one may ignore SIGPIPE), nothing blocked. */
  for (int s = 1; s < 32; s++)
    if (s != SIGKILL && s != SIGSTOP)
      signal(s, SIG_DFL);
  sigemptyset(&all);
  sigprocmask(SIG_SETMASK, &all, NULL);
  {
    /* "LISTEN_PID=" and the pid, without stdio. */
    char digits[16];
    int n = 0;
    pid_t p = getpid();
    memcpy(pidvar, "LISTEN_PID=", 11);
    do
      digits[n++] = (char)('0' + p % 10);
    while ((p /= 10) > 0);
    for (int i = 0; i < n; i++)
      pidvar[11 + i] = digits[n - 1 - i];
    pidvar[11 + n] = 0;
  }
#ifdef UVIP_COVERAGE
  /* exec() drops the counters of what the child ran (coverage builds). */
  __gcov_dump();
#endif
  execve(path, argv, env);
fail:
  e = errno;
  {
    unsigned char m[1 + sizeof(int)];
    m[0] = 'E';
    memcpy(m + 1, &e, sizeof(e));
    if (write(ready_w, m, sizeof(m)) < 0)
      _exit(126);
  }
  _exit(127);
}

UVIP_EXPORT int uvip_upgrade_start(uv_loop_t *loop,
                                   uvip_server_t *const *servers, size_t n,
                                   const char *path, char *const argv[],
                                   uint64_t timeout_ms, uvip_upgrade_cb cb,
                                   uvip_upgrade_t **out) {
  uvip_upgrade_t *u;
  int *fds = NULL, p[2], sp[2], r;
  size_t nfds = 0;
  char **env, *pidvar = NULL;
  pid_t pid;

  UVIP_CHECK_ARG(loop == NULL || servers == NULL || n == 0 || path == NULL ||
                 argv == NULL || argv[0] == NULL || timeout_ms == 0 ||
                 cb == NULL || out == NULL);
  for (size_t i = 0; i < n; i++)
    UVIP_CHECK_ARG(servers[i] == NULL || servers[i]->loop != loop);
  UVIP_CHECK_ARG(strlen(path) >= sizeof(u->path));
  r = uvip__collect_listeners(servers, n, &fds, &nfds);
  if (r == UV_ENOENT && reuseport_workers(servers, n))
    r = 0; /* nothing to pass: the new generation's workers bind their own */
  if (r != 0) {
    free(fds);
    return r;
  }
  u = calloc(1, sizeof(*u));
  if (!u) {
    free(fds);
    return UV_ENOMEM;
  }
  if (pipe2(p, O_CLOEXEC) != 0) {
    r = -errno;
    free(fds);
    free(u);
    return r;
  }
  /* Message boundaries kept by the kernel: one connection per message. */
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0,
                 sp) != 0) {
    r = -errno;
    close(p[0]);
    close(p[1]);
    free(fds);
    free(u);
    return r;
  }
  env = make_env(nfds, 3 + (int)nfds, &pidvar);
  /* Kept for the probation, which holds them. */
  u->servers = env ? malloc(n * sizeof(*u->servers)) : NULL;
  if (!u->servers) {
    if (env)
      free_env(env);
    env = NULL;
  }
  if (!env) {
    close(p[0]);
    close(p[1]);
    close(sp[0]);
    close(sp[1]);
    free(fds);
    free(u);
    return UV_ENOMEM;
  }
  memcpy(u->servers, servers, n * sizeof(*servers));
  u->nservers = n;
  u->loop = loop;
  u->cb = cb;
  u->timeout_ms = timeout_ms;
  strcpy(u->path, path);
  /* Set up everything that can fail before there is a child to undo. */
  uv_pipe_init(loop, &u->ready, 0);
  uv_timer_init(loop, &u->timer);
  uv_signal_init(loop, &u->sigchld);
  u->chan = sp[0];
  uv_poll_init(loop, &u->chan_poll, u->chan);
  u->ready.data = u->timer.data = u->sigchld.data = u->chan_poll.data = u;
  if ((r = uv_pipe_open(&u->ready, p[0])) != 0) {
    close(p[0]);
    goto undo;
  }
  if ((r = uv_signal_start(&u->sigchld, on_sigchld, SIGCHLD)) != 0)
    goto undo;
  pid = fork();
  if (pid < 0) {
    r = -errno;
    goto undo;
  }
  if (pid == 0)
    child(fds, nfds, p[1], sp[1], path, argv, env, pidvar);
  close(p[1]);
  close(sp[1]);
  free_env(env);
  free(fds);
  u->pid = pid;
  uv_read_start((uv_stream_t *)&u->ready, on_alloc, on_ready_read);
  uv_timer_start(&u->timer, on_timeout, timeout_ms, 0);
  *out = u;
  return 0;

undo:
  close(p[1]);
  close(sp[1]);
  free_env(env);
  free(fds);
  /* The handles exist: they close like any others, callback-free. */
  u->closing = true;
  u->reported = true;
  close_handles(u);
  return r;
}

UVIP_EXPORT int uvip_upgrade_pid(const uvip_upgrade_t *u) {
  return u ? (int)u->pid : 0;
}

UVIP_EXPORT int uvip_upgrade_close(uvip_upgrade_t *u, uvip_upgrade_close_cb cb) {
  UVIP_CHECK_ARG(u == NULL);
  if (u->closing)
    return UV_EALREADY;
  u->closing = true;
  u->close_cb = cb;
  if (!u->is_ready && !u->on_probation && u->pid > 0)
    /* Not ready: it never served and must not start now. Its exit can no
     * longer be waited for on the loop; SIGKILL makes it short. */
    kill(u->pid, SIGKILL);
  /* On probation it serves already: it runs on, and so does this one. */
  uvip__probation_cancel(u);
  report(u, UV_ECANCELED, "upgrade closed before the new generation was ready");
  /* Connections still queued for moving stay here (and can be read and
   * closed again); done runs for them now. */
  uvip__handover_abort(u);
  close_handles(u);
  return 0;
}

UVIP_EXPORT int uvip_upgrade_ready(void) {
  const char *e = getenv("UVIP_READY_FD");
  char *end;
  long fd;
  ssize_t w;
  if (!e)
    return 0;
  fd = strtol(e, &end, 10);
  unsetenv("UVIP_READY_FD");
  if (*end || fd < 3 || fd > 1 << 24)
    return UV_EINVAL;
  do
    w = write((int)fd, "R", 1);
  while (w < 0 && errno == EINTR);
  close((int)fd);
  return w == 1 ? 0 : -errno;
}

void uvip__upgrade_report(uvip_upgrade_t *u, int status, const char *why) {
  report(u, status, why);
}

int uvip__upgrade_channel(uv_loop_t *loop, int chan, uvip_upgrade_t **out) {
  uvip_upgrade_t *u = calloc(1, sizeof(*u));
  int r;
  if (!u)
    return UV_ENOMEM;
  u->loop = loop;
  /* Ready, and nothing will be reported: the hand-over and the close are
   * all it is for. The handles exist so that the one close path holds. */
  u->is_ready = true;
  u->reported = true;
  uv_pipe_init(loop, &u->ready, 0);
  uv_timer_init(loop, &u->timer);
  uv_signal_init(loop, &u->sigchld);
  u->ready.data = u->timer.data = u->sigchld.data = u->chan_poll.data = u;
  if ((r = uv_poll_init(loop, &u->chan_poll, chan)) != 0) {
    /* chan stays the caller's; the three handles close, callback-free. */
    u->closing = true;
    u->handles_closing = 3;
    u->chan = -1;
    uv_close((uv_handle_t *)&u->ready, on_handle_closed);
    uv_close((uv_handle_t *)&u->timer, on_handle_closed);
    uv_close((uv_handle_t *)&u->sigchld, on_handle_closed);
    return r;
  }
  u->chan = chan;
  *out = u;
  return 0;
}
