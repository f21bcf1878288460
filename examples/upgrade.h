/* Zero-downtime upgrade (SIGUSR2) for the example servers.
 * SPDX-License-Identifier: MIT */
#ifndef EX_UPGRADE_H
#define EX_UPGRADE_H

#include <uvip.h>

typedef struct {
  /* Per connection at hand-over: move it (with a blob) or keep it. */
  uvip_handover_decide_cb decide;
  /* In the new generation, per moved connection. */
  uvip_moved_cb moved;
  /* In the old generation once idle connections are moved: drain the
   * rest (--shutdown-timeout) and close the server. */
  void (*retire)(size_t kept);
  /* With workers that listen on sockets of their own (--balance
   * reuseport) the server itself never listens: whether this generation
   * still serves (may be upgraded). NULL: uvip_server_is_listening(). Set,
   * the workers accept on during the probation (see docs/restart.md). */
  int (*serving)(void);
} ex_upgrade_hooks_t;

/* After the server listens: if started by an upgrade, receives the moved
 * connections and tells the old generation it is ready (or the process
 * ex_handoff_take() took the listeners from); serves the listeners at
 * handoff_path (may be NULL) for the next process; writes pid_file (may be
 * NULL); SIGUSR2 then upgrades this generation. 0 or an error. */
int ex_upgrade_setup(uv_loop_t *loop, uvip_server_t *server, char **argv,
                     const char *pid_file, const char *handoff_path,
                     const ex_upgrade_hooks_t *hooks);

/* Before the server listens: if a running process serves its listeners at
 * path (--handoff-socket), fetches and adopts them; the running process is
 * told once ex_upgrade_setup() runs, and then drains. 0 also when nobody
 * serves there. */
int ex_handoff_take(uvip_server_t *server, const char *path);

/* The old generation's probation (--upgrade-probation-ms): once the new
 * one says ready, this one stops accepting but keeps its listening sockets
 * for ms; if the new one exits meanwhile, this one accepts again on them.
 * 0 = none (stop at once). Call before ex_upgrade_setup(). */
#define EX_PROBATION_MS 1000
void ex_upgrade_set_probation(uint64_t ms);

/* Writes the pid to path (NULL: nothing), atomically. */
void ex_write_pid_file(const char *path);

/* Closes the SIGUSR2 handle and anything an upgrade still holds. */
void ex_upgrade_close(void);

#endif
