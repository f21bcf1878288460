/* Shared by upgrade.c and handover.c. Not installed.
 * SPDX-License-Identifier: MIT */
#ifndef UVIP_RESTART_INTERNAL_H
#define UVIP_RESTART_INTERNAL_H

#include "internal.h"

#include <sys/uio.h>

/* One message on the hand-over channel: this header, then the blob; the
 * connection's descriptor rides along (SCM_RIGHTS). */
typedef struct uvip__handover_msg {
  uint32_t magic; /* UVIP__HANDOVER_MAGIC */
  uint32_t blob_len;
  struct sockaddr_storage vip; /* the address it was accepted on */
} uvip__handover_msg_t;
#define UVIP__HANDOVER_MAGIC 0x75766970u /* "uvip" */

typedef struct uvip__handover_item {
  uvip_conn_t *conn;
  uv_alloc_cb alloc_cb; /* to read again if it cannot go */
  uv_read_cb read_cb;
  size_t len;
  unsigned char blob[];
} uvip__handover_item_t;

/* Sends queued connections over a hand-over channel on one loop, as the
 * channel has room (handover.c). Owned by the upgrade (the acceptor's own
 * connections) or by a worker (its connections, on its loop, over its own
 * copy of the channel). The owner starts and stops poll, which watches
 * chan, and forwards its events to uvip__mover_writable(). */
typedef struct uvip__mover {
  uv_poll_t *poll;
  int chan;
  uvip_conn_close_cb close_cb; /* the server's conn_close_cb */
  void *data; /* the owner's */
  uvip__handover_item_t **items;
  size_t n, cap, next, moved, kept;
  bool running;
  /* Runs once when every queued connection was sent or given back. */
  void (*done)(struct uvip__mover *m);
} uvip__mover_t;

/* Asks decide about every open connection of list (a VIP's or a worker's,
 * linked by next) and queues the idle ones chosen for moving. */
void uvip__mover_collect(uvip__mover_t *m, uvip_conn_t *list,
                         uvip_handover_decide_cb decide);
/* Starts sending (from the loop: done never runs inside this call); cb,
 * the owner's, forwards poll's events to uvip__mover_writable(). */
void uvip__mover_start(uvip__mover_t *m, uv_poll_cb cb);
void uvip__mover_writable(uvip__mover_t *m, int status);
/* Gives back what is still queued and runs done (if running). */
void uvip__mover_abort(uvip__mover_t *m);

struct uvip_upgrade_s {
  uv_loop_t *loop;
  pid_t pid;        /* 0 once reaped */
  uv_pipe_t ready;  /* read end of the readiness pipe */
  uv_timer_t timer; /* readiness deadline */
  uv_signal_t sigchld;
  uv_poll_t chan_poll; /* the hand-over channel, writable while sending */
  int chan;            /* our end of the channel, -1 once gone */
  uvip_upgrade_cb cb;
  uvip_upgrade_close_cb close_cb;
  uint64_t timeout_ms;
  bool reported, is_ready, closing;
  int handles_closing;
  char path[256];
  unsigned char msg[8]; /* 'R', or 'E' and the exec errno */
  size_t nmsg;

  /* Probation (probation.c): after 'R', the servers are held, not stopped,
   * until probation_ms pass with the new generation alive. */
  uvip_server_t **servers; /* those passed to uvip_upgrade_start() */
  size_t nservers;
  uint64_t probation_ms;
  uvip_upgrade_probation_cb probation_cb;
  bool on_probation;

  /* Hand-over in progress (handover.c): the server's own connections
   * (mover) and, with workers, theirs (each worker sends its own). */
  uvip__mover_t mover;
  uvip_server_t *ho_server;
  uvip_handover_done_cb ho_done;
  size_t ho_moved, ho_kept; /* the workers' part, as they report it */
  bool ho_running, ho_workers;
};

/* upgrade.c: the listening descriptors of every listening VIP of the
 * servers (malloc'd array; UV_ENOENT when there is none). */
int uvip__collect_listeners(uvip_server_t *const *servers, size_t n,
                            int **fds, size_t *nfds);

/* handoff.c: sends iov with n descriptors (1..UVIP__FDS_PER_MSG) by
 * SCM_RIGHTS, without waiting (MSG_DONTWAIT, no SIGPIPE; EINTR retried).
 * Returns the bytes sent or -errno. */
#define UVIP__FDS_PER_MSG 200 /* under the kernel's SCM_MAX_FD (253) */
ssize_t uvip__send_fds(int sock, struct iovec *iov, size_t iovcnt,
                       const int *fds, size_t n);

/* upgrade.c: the upgrade's callback, once (later calls do nothing). */
void uvip__upgrade_report(uvip_upgrade_t *u, int status, const char *why);

/* probation.c: on 'R', starts the probation (true) or not (false: none was
 * asked for); the new generation exited during it (st from waitpid());
 * the upgrade closes during it. */
bool uvip__probation_begin(uvip_upgrade_t *u);
void uvip__probation_failed(uvip_upgrade_t *u, int st);
void uvip__probation_cancel(uvip_upgrade_t *u);

/* handoff-move.c: makes the channel for moving connections and sends one
 * end over the hand-off connection conn; returns our end, or -1. */
int uvip__handoff_send_channel(int conn);

/* upgrade.c: an upgrade object with no new generation of its own, only the
 * channel chan (taken), for uvip_upgrade_handover() and
 * uvip_upgrade_close(). */
int uvip__upgrade_channel(uv_loop_t *loop, int chan, uvip_upgrade_t **out);

/* handover.c: ends a hand-over in progress (the upgrade closes). */
void uvip__handover_abort(uvip_upgrade_t *u);
/* handover.c: the workers' part of a hand-over ended (every worker asked
 * reported, died or was closed); moved and kept are their totals. */
void uvip__handover_workers_done(uvip_upgrade_t *u, size_t moved,
                                 size_t kept);

/* workers.c: asks every running worker of server to hand over its idle
 * connections over its own copy of chan (decide runs on the worker);
 * uvip__handover_workers_done(u, ...) follows once, from the loop, unless
 * uvip__wk_handover_detach() ran first. Returns how many workers were
 * asked (0: none runs, nothing follows) or an error (nothing asked). */
int uvip__wk_handover(uvip_server_t *server, uvip_upgrade_t *u, int chan,
                      uvip_handover_decide_cb decide);
void uvip__wk_handover_detach(uvip_server_t *server);

/* conn.c: a connection queued for moving cannot be closed by the
 * application (UV_EBUSY); the hand-over closes it once sent. */
void uvip__conn_set_moving(uvip_conn_t *c, bool moving);

#endif
