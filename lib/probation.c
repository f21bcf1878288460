/* Probation of a new generation (re-exec upgrade): once it says ready, the
 * old generation stops accepting but keeps its listening sockets
 * (uvip_server_hold()), so that the kernel's queues, shared by both, feed
 * the new one alone. If the new generation exits before the probation ends,
 * the old one accepts again on the very same sockets, starting with what
 * queued meanwhile: no listener was ever closed, none is open twice. Only
 * when the probation passes does the upgrade's callback say status 0, and
 * the application stops its servers and moves its connections as without
 * probation (moving them earlier would lose them with a crashing new
 * generation).
 *
 * The probation reuses the upgrade's readiness timer (idle once 'R' came)
 * and its SIGCHLD handle, so the upgrade's one close path covers it.
 * SPDX-License-Identifier: MIT */
#include "restart-internal.h"

#include <assert.h>
#include <stdio.h>
#include <sys/wait.h>

static void hold_all(uvip_upgrade_t *u, bool hold) {
  for (size_t i = 0; i < u->nservers; i++)
    if (hold) {
      /* A server the application stopped already has nothing to hold.
       * Nor has one whose REUSEPORT workers listen (it never listens
       * itself): their sockets are in the same groups as the new
       * generation's, so the kernel goes on sending them their share, and
       * holding them would only let it wait; they accept on until the
       * application stops the server after the probation. */
      if (uvip_server_is_listening(u->servers[i]))
        uvip_server_hold(u->servers[i]);
    } else {
      uvip_server_unhold(u->servers[i]);
    }
}

static void on_probation_passed(uv_timer_t *t) {
  uvip_upgrade_t *u = t->data;
  char why[160];
  assert(u->on_probation);
  u->on_probation = false;
  u->is_ready = true;
  snprintf(why, sizeof(why),
           "new generation ready and through its %llu ms probation",
           (unsigned long long)u->probation_ms);
  uvip__upgrade_report(u, 0, why);
}

bool uvip__probation_begin(uvip_upgrade_t *u) {
  assert(!u->on_probation && !u->reported);
  if (u->probation_ms == 0)
    return false;
  u->on_probation = true;
  uv_read_stop((uv_stream_t *)&u->ready);
  hold_all(u, true);
  /* The readiness deadline is over: the same timer counts the probation. */
  uv_timer_start(&u->timer, on_probation_passed, u->probation_ms, 0);
  if (u->probation_cb)
    u->probation_cb(u);
  return true;
}

void uvip__probation_failed(uvip_upgrade_t *u, int st) {
  char why[160];
  int pid = (int)u->pid;
  assert(u->on_probation);
  u->pid = 0;
  u->on_probation = false;
  hold_all(u, false);
  if (WIFEXITED(st))
    snprintf(why, sizeof(why),
             "generation %d exited with status %d after ready; serving again",
             pid, WEXITSTATUS(st));
  else
    snprintf(why, sizeof(why),
             "generation %d was killed by signal %d after ready; serving "
             "again",
             pid, WIFSIGNALED(st) ? WTERMSIG(st) : 0);
  uvip__upgrade_report(u, UV_ESRCH, why);
}

void uvip__probation_cancel(uvip_upgrade_t *u) {
  if (!u->on_probation)
    return;
  u->on_probation = false;
  hold_all(u, false);
  uvip__upgrade_report(u, UV_ECANCELED,
                       "upgrade closed while the new generation was on "
                       "probation; serving again");
}

UVIP_EXPORT int uvip_upgrade_probation(uvip_upgrade_t *u,
                                       uint64_t probation_ms,
                                       uvip_upgrade_probation_cb began) {
  UVIP_CHECK_ARG(u == NULL);
  /* Too late once the new generation has said ready. */
  if (u->closing || u->reported || u->on_probation)
    return UV_EBUSY;
  u->probation_ms = probation_ms;
  u->probation_cb = began;
  return 0;
}
