/* Zero-downtime upgrade for the example servers (SIGUSR2), on uvip's
 * re-exec hand-off: the new generation adopts the listeners, says it is
 * ready, receives the idle connections; the old one stops accepting, moves
 * what is idle, drains the rest and exits.
 * SPDX-License-Identifier: MIT */
#include "upgrade.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

static struct {
  uv_loop_t *loop;
  uvip_server_t *server;
  char **argv;
  char self[PATH_MAX];
  const char *pid_file;
  ex_upgrade_hooks_t hooks;
  uv_signal_t usr2;
  bool usr2_open;
  uvip_upgrade_t *up;
  uvip_moved_t *moved;
  pid_t older; /* the generation that started us, while it may drain */
  const char *handoff_path;
  uvip_handoff_t *handoff;
  int handoff_conn; /* to the process we took the listeners from */
  size_t taken;
  /* Probation (--upgrade-probation-ms): the old generation holds its
   * listeners until the new one has lived this long after ready. */
  uint64_t probation_ms;
  uv_poll_t watched; /* handoff_conn, while the older one watches us */
  bool watched_open;
} U = {.handoff_conn = -1, .probation_ms = EX_PROBATION_MS};

void ex_upgrade_set_probation(uint64_t ms) { U.probation_ms = ms; }

/* Whether the generation before us may still take the listeners back: it
 * has us on probation (or is moving connections to us). Upgrading now would
 * leave two generations behind us. */
static bool watched_by_older(void) {
  return U.moved != NULL || U.watched_open;
}

void ex_write_pid_file(const char *path) {
  FILE *f;
  char tmp[PATH_MAX + 8];
  U.pid_file = path;
  if (!U.pid_file)
    return;
  /* Renamed into place: a reader never sees a half-written file. */
  snprintf(tmp, sizeof(tmp), "%s.new", U.pid_file);
  f = fopen(tmp, "w");
  if (!f || fprintf(f, "%d\n", (int)getpid()) < 0 || fclose(f) != 0 ||
      rename(tmp, U.pid_file) != 0)
    fprintf(stderr, "%s: --pid-file %s: %s\n", ex_prog, U.pid_file,
            strerror(errno));
}

static void on_upgrade_closed(uvip_upgrade_t *u) {
  (void)u;
  U.up = NULL;
}

static void on_handed_over(uvip_upgrade_t *u, size_t moved, size_t kept) {
  printf("%s: upgrade: moved %zu connections, %zu drain here\n", ex_prog,
         moved, kept);
  fflush(stdout);
  uvip_upgrade_close(u, on_upgrade_closed);
  U.hooks.retire(kept);
}

static void on_probation_began(uvip_upgrade_t *u) {
  /* With reuseport workers the kernel goes on hashing connections to our
   * sockets: they are served here until the probation passes. */
  printf("%s: upgrade: generation %d ready; on probation for %llu ms, %s\n",
         ex_prog, uvip_upgrade_pid(u), (unsigned long long)U.probation_ms,
         U.hooks.serving ? "still accepting here (reuseport)"
                         : "not accepting here");
  fflush(stdout);
}

static void on_upgraded(uvip_upgrade_t *u, int status, const char *why) {
  int r;
  if (status != 0) {
    if (status == UV_ESRCH && strstr(why, "after ready"))
      /* It crashed on probation: we accept again on the same sockets. */
      fprintf(stderr, "%s: upgrade: %s\n", ex_prog, why);
    else
      fprintf(stderr, "%s: upgrade failed: %s; still serving\n", ex_prog,
              why);
    /* It may have written its pid there before it went. */
    ex_write_pid_file(U.pid_file);
    uvip_upgrade_close(u, on_upgrade_closed);
    return;
  }
  printf("%s: upgrade: generation %d ready; stopped accepting\n", ex_prog,
         uvip_upgrade_pid(u));
  fflush(stdout);
  uvip_server_stop(U.server);
  r = uvip_upgrade_handover(u, U.server, U.hooks.decide, on_handed_over);
  if (r != 0) {
    fprintf(stderr, "%s: upgrade: cannot move connections: %s\n", ex_prog,
            uv_strerror(r));
    on_handed_over(u, 0, SIZE_MAX);
  }
}

/* Running, not a zombie waiting for a parent that does not reap. */
static bool running(pid_t pid) {
  char path[64], buf[256], *p;
  FILE *f;
  size_t n;
  if (pid <= 0 || kill(pid, 0) != 0)
    return false;
  snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
  if (!(f = fopen(path, "r")))
    return false;
  n = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  buf[n] = 0;
  p = strrchr(buf, ')'); /* the state follows the command name */
  return p && p[1] == ' ' && p[2] != 'Z';
}

static void on_usr2(uv_signal_t *h, int signum) {
  int r;
  (void)h;
  (void)signum;
  if (U.up) {
    fprintf(stderr, "%s: upgrade already in progress\n", ex_prog);
    return;
  }
  if (watched_by_older()) {
    fprintf(stderr, "%s: upgrade: not now: the previous generation has this "
            "one on probation; try again when it has handed over\n", ex_prog);
    return;
  }
  if (U.hooks.serving ? !U.hooks.serving()
                      : !uvip_server_is_listening(U.server)) {
    fprintf(stderr, "%s: not listening: nothing to upgrade\n", ex_prog);
    return;
  }
  /* At most one old generation: the one that started us ends now if it is
   * still draining. */
  if (running(U.older)) {
    fprintf(stderr, "%s: upgrade: ending generation %d, still draining\n",
            ex_prog, (int)U.older);
    kill(U.older, SIGKILL);
  }
  U.older = 0;
  r = uvip_upgrade_start(U.loop, &U.server, 1, U.self, U.argv, 10000,
                         on_upgraded, &U.up);
  if (r != 0) {
    fprintf(stderr, "%s: upgrade: %s\n", ex_prog, uv_strerror(r));
    return;
  }
  if (U.probation_ms > 0)
    uvip_upgrade_probation(U.up, U.probation_ms, on_probation_began);
  printf("%s: upgrade: started generation %d\n", ex_prog,
         uvip_upgrade_pid(U.up));
  fflush(stdout);
}

int ex_handoff_take(uvip_server_t *server, const char *path) {
  int fds[4096], r;
  size_t n = 0, extra = 0;
  char err[256] = "";
  struct stat st;
  if (!path || stat(path, &st) != 0)
    return 0; /* nobody there: the first generation */
  r = uvip_handoff_fetch(path, 5000, fds, sizeof(fds) / sizeof(fds[0]), &n,
                         &U.handoff_conn, err, sizeof(err));
  if (r == UV_ECONNREFUSED)
    return 0; /* a socket file left behind by a process that is gone */
  if (r != 0) {
    fprintf(stderr, "%s: --handoff-socket: %s\n", ex_prog, err);
    return r;
  }
  r = uvip_server_adopt(server, fds, n, &extra, err, sizeof(err));
  if (r != 0) {
    fprintf(stderr, "%s: --handoff-socket: %s\n", ex_prog, err);
    for (size_t i = 0; i < n; i++)
      close(fds[i]);
    return r;
  }
  U.taken = n - extra;
  return 0;
}

static void on_handoff_closed(uvip_handoff_t *h) {
  /* A re-served hand-off may have taken its place already. */
  if (U.handoff == h)
    U.handoff = NULL;
}

static void on_handoff_taken(uvip_handoff_t *h, int status);

static void on_handoff_probation(uvip_handoff_t *h) {
  (void)h;
  printf("%s: handoff: a new process took the listeners; on probation for "
         "%llu ms, not accepting here\n",
         ex_prog, (unsigned long long)U.probation_ms);
  fflush(stdout);
}

static int handoff_serve(void) {
  int r = uvip_handoff_serve(U.loop, &U.server, 1, U.handoff_path,
                             on_handoff_taken, &U.handoff);
  if (r == 0 && U.probation_ms > 0)
    uvip_handoff_probation(U.handoff, U.probation_ms, on_handoff_probation);
  return r;
}

static void on_handoff_taken(uvip_handoff_t *h, int status) {
  if (status == UV_ESRCH) {
    int r;
    fprintf(stderr, "%s: handoff: the new process went away during its "
            "probation; serving again\n", ex_prog);
    ex_write_pid_file(U.pid_file);
    /* It served the path itself by then: serve it again, so that the next
     * process finds us there. */
    uvip_handoff_close(h, on_handoff_closed);
    U.handoff = NULL;
    if ((r = handoff_serve()) != 0)
      fprintf(stderr, "%s: --handoff-socket %s: %s\n", ex_prog,
              U.handoff_path, uv_strerror(r));
    return;
  }
  if (status != 0) {
    fprintf(stderr, "%s: handoff: a new process failed to take over: %s; "
            "still serving\n", ex_prog, uv_strerror(status));
    return;
  }
  printf("%s: handoff: a new process took the listeners; stopped accepting\n",
         ex_prog);
  fflush(stdout);
  uvip_server_stop(U.server);
  /* Idle connections move to it too, if it kept its connection to us. */
  if (!U.up && uvip_handoff_mover(h, &U.up) == 0) {
    uvip_handoff_close(h, on_handoff_closed);
    if (uvip_upgrade_handover(U.up, U.server, U.hooks.decide,
                              on_handed_over) != 0)
      on_handed_over(U.up, 0, SIZE_MAX);
    return;
  }
  uvip_handoff_close(h, on_handoff_closed);
  U.hooks.retire(SIZE_MAX);
}

static void on_moved_end(uvip_moved_t *m, int status, size_t received) {
  (void)m;
  U.moved = NULL;
  if (status != 0 && status != UV_ECANCELED)
    fprintf(stderr, "%s: upgrade: receiving connections: %s\n", ex_prog,
            uv_strerror(status));
  printf("%s: upgrade: received %zu connections\n", ex_prog, received);
  fflush(stdout);
}

static void watched_closed(uv_handle_t *h) {
  (void)h;
  close(U.handoff_conn);
  U.handoff_conn = -1;
}

static void end_watch(void) {
  if (U.watched_open) {
    U.watched_open = false;
    uv_close((uv_handle_t *)&U.watched, watched_closed);
  }
}

/* The older process sends the channel for its idle connections when our
 * probation is over, then closes the connection (as it does when it ends):
 * from then on it no longer watches us. */
static void on_watched(uv_poll_t *p, int status, int events) {
  int chan, r = 0;
  (void)p;
  (void)events;
  while (status == 0 &&
         (r = uvip_handoff_channel(U.handoff_conn, &chan)) != UV_EAGAIN) {
    if (r != 0)
      break;
    if (U.moved || (r = uvip_moved_start_fd(U.server, chan, U.hooks.moved,
                                            on_moved_end, &U.moved)) != 0) {
      fprintf(stderr, "%s: handoff: cannot receive connections: %s\n",
              ex_prog, uv_strerror(U.moved ? UV_EBUSY : r));
      close(chan);
    }
  }
  if (status == 0 && r == UV_EAGAIN)
    return;
  end_watch();
}

/* Ready, keeping the connection open while we serve: the older process
 * watches it for its probation. */
static int ready_watched(void) {
  int r = uvip_handoff_ready_keep(U.handoff_conn);
  if (r != 0 || uv_poll_init(U.loop, &U.watched, U.handoff_conn) != 0) {
    close(U.handoff_conn);
    U.handoff_conn = -1;
    return r;
  }
  U.watched_open = true;
  uv_poll_start(&U.watched, UV_READABLE | UV_DISCONNECT, on_watched);
  uv_unref((uv_handle_t *)&U.watched);
  return 0;
}

int ex_upgrade_setup(uv_loop_t *loop, uvip_server_t *server, char **argv,
                     const char *pid_file, const char *handoff_path,
                     const ex_upgrade_hooks_t *hooks) {
  ssize_t n;
  int r;
  U.loop = loop;
  U.server = server;
  U.argv = argv;
  U.pid_file = pid_file;
  U.hooks = *hooks;
  /* The path now, the file at upgrade time: replacing the binary and
   * sending SIGUSR2 runs the new one. */
  n = readlink("/proc/self/exe", U.self, sizeof(U.self) - 1);
  if (n <= 0)
    return -errno;
  U.self[n] = 0;
  /* Before anything says this process serves (the readiness message, the
   * pid file): SIGUSR2's default action would end it. */
  uv_signal_init(loop, &U.usr2);
  uv_signal_start(&U.usr2, on_usr2, SIGUSR2);
  uv_unref((uv_handle_t *)&U.usr2);
  U.usr2_open = true;
  if (getenv("UVIP_READY_FD")) {
    U.older = getppid();
    r = uvip_moved_start(server, hooks->moved, on_moved_end, &U.moved);
    if (r != 0)
      fprintf(stderr, "%s: upgrade: cannot receive connections: %s\n",
              ex_prog, uv_strerror(r));
    if ((r = uvip_upgrade_ready()) != 0)
      fprintf(stderr, "%s: upgrade: cannot say ready: %s\n", ex_prog,
              uv_strerror(r));
  }
  /* Serve at the path before the process we took over from hears we are
   * ready: when it closes its hand-off, the file there is already ours,
   * and it leaves it alone. */
  U.handoff_path = handoff_path;
  if (handoff_path) {
    r = handoff_serve();
    if (r != 0)
      fprintf(stderr, "%s: --handoff-socket %s: %s\n", ex_prog,
              handoff_path, uv_strerror(r));
  }
  if (U.handoff_conn >= 0) {
    printf("%s: handoff: took %zu listeners from the running process\n",
           ex_prog, U.taken);
    if ((r = ready_watched()) != 0)
      fprintf(stderr, "%s: handoff: cannot say ready: %s\n", ex_prog,
              uv_strerror(r));
  }
  ex_write_pid_file(pid_file);
  return 0;
}

void ex_upgrade_close(void) {
  if (U.usr2_open) {
    uv_close((uv_handle_t *)&U.usr2, NULL);
    U.usr2_open = false;
  }
  if (U.up)
    uvip_upgrade_close(U.up, on_upgrade_closed);
  if (U.moved)
    uvip_moved_close(U.moved);
  if (U.handoff)
    uvip_handoff_close(U.handoff, on_handoff_closed);
  end_watch();
}
