/* Shared between workers.c (API, balance, slot accounting),
 * workers-thread.c and workers-proc.c (the two transports). Not installed.
 * SPDX-License-Identifier: MIT */
#ifndef UVIP_WORKERS_INTERNAL_H
#define UVIP_WORKERS_INTERNAL_H

#include <sys/types.h>

#include "restart-internal.h"

/* Hand-offs a worker process may have queued in the acceptor and not yet
 * written to its pipe: each holds a descriptor of the acceptor's. */
#define UVIP__WK_MAX_INFLIGHT 64
/* How often REUSEPORT workers report their own counts. */
#define UVIP__WK_REPORT_MS 200

/* A small map from pointers to dense ids (open addressing, no removal:
 * ids live as long as the workers). */
typedef struct uvip__idmap {
  const void **keys;
  uint32_t *vals;
  size_t cap, len;
} uvip__idmap_t;

int uvip__idmap_get(uvip__idmap_t *m, const void *key, uint32_t next_id,
                    uint32_t *id, bool *added);
void uvip__idmap_free(uvip__idmap_t *m);

typedef struct uvip__wk uvip__wk_t;

/* What a thread worker posts back to the acceptor. */
enum { UVIP__POST_RELEASE, UVIP__POST_FAILED, UVIP__POST_EXITED,
       UVIP__POST_READY, UVIP__POST_HANDOVER };
typedef struct {
  uint32_t kind;
  uint32_t worker;
  uvip_vip_t *vip;
  uint64_t a, b; /* HANDOVER: moved, kept */
} uvip__post_t;

/* A worker's part of an upgrade's hand-over, on the worker's loop: its
 * own copy of the channel, watched by poll. Freed by poll's close
 * callback (which closes the copy). */
typedef struct uvip__wk_ho {
  uvip__mover_t mover;
  uv_poll_t poll;
  void (*report)(size_t moved, size_t kept, void *arg);
  void *arg;
} uvip__wk_ho_t;

/* workers-handover.c: starts a worker's hand-over of the connections of
 * list and of own's VIPs (REUSEPORT: those it accepted itself; own may be
 * NULL) on loop over chan (taken: closed on every path). report runs once,
 * on loop, when it ends (possibly from uvip__wk_ho_abort()). *out is NULL
 * when it could not start (report has run then). */
void uvip__wk_ho_start(uv_loop_t *loop, int chan, uvip_conn_t *list,
                       uvip_server_t *own, uvip_handover_decide_cb decide,
                       uvip_conn_close_cb close_cb,
                       void (*report)(size_t moved, size_t kept, void *arg),
                       void *arg, uvip__wk_ho_t **out);
/* Gives back what is still queued (the worker stops). */
void uvip__wk_ho_abort(uvip__wk_ho_t *ho);

struct uvip__wk {
  uvip_workers_t *ws;
  unsigned index;

  /* Acceptor side. */
  uint64_t active, handed, refused, failed, restarts;
  uint64_t *vip_active; /* per VIP id: what to give back if it dies */
  size_t vip_cap;
  /* started: an incarnation was created; starting: it has not reported
   * ready yet (it gets nothing); alive: ready and taking connections;
   * exited: the incarnation is over (its slots were given back). */
  bool started, starting, alive, exited;
  unsigned gen; /* process incarnation, to ignore a dead one's leftovers */

  /* Threads. */
  uv_thread_t thread;
  uv_loop_t *loop;
  uv_async_t *async; /* wakes the worker: new descriptors or an order */
  uv_mutex_t lock;
  struct {
    uvip_vip_t *vip;
    int fd;
    uvip_moved_cb moved; /* a connection moved from the old generation */
    void *blob;          /* its blob (malloc'd) */
    size_t len;
  } *queue;
  size_t qlen, qcap;
  bool stop;
  /* An order to close the connections, to be carried out before queue
   * entry close_at: those handed over before the order are closed too,
   * those handed over after it are not. */
  bool close_order;
  size_t close_at;
  bool stop_listen; /* REUSEPORT: stop the worker's own listeners */
  uvip_conn_t *conns;    /* the worker's open connections */
  /* An order to hand over (upgrade): chan is the worker's copy of the
   * channel, -1 when none is pending. ho runs on the worker's loop. */
  int ho_chan;
  uvip_handover_decide_cb ho_decide;
  uvip__wk_ho_t *ho;
  uvip_server_t *own;    /* REUSEPORT: the worker's own server */
  uint64_t rp_active, rp_handed; /* REUSEPORT counts, under lock */
  uv_timer_t *rp_timer;
  bool joined;

  /* Processes. */
  pid_t pid;
  uv_pipe_t *pipe;
  bool reaped;
  int exit_status;         /* waitpid() status once reaped, else -1 */
  bool pending;            /* to be forked by the spawner */
  uint64_t ready_deadline; /* loop time; 0 once ready or given up */
  int start_err;           /* why a starting process ended, if known */
  unsigned inflight;
  bool ho_pending; /* asked to hand over, has not reported yet */
  unsigned char rbuf[32]; /* a partial report record */
  size_t rlen;
};

struct uvip_workers_s {
  uvip_server_t *server;
  uv_loop_t *loop;
  uvip_workers_options_t opts; /* opts.keep_fds points at our copy */
  uvip_connection_cb cb;
  unsigned n;
  uvip__wk_t *wk;
  unsigned rr;
  bool listening, closing, failed_start;
  bool finishing; /* the last handles are closing: finish() follows */
  uvip_workers_close_cb close_cb;

  /* VIP ids: VIP pointers may be reused after a VIP is freed, so an id
   * also remembers the address it was given for. */
  uvip__idmap_t vipmap;
  uvip_vip_t **vips;
  uvip__sa_t *vip_addrs;
  size_t nvips, cap_vips;

  /* Thread workers post here; the acceptor reads it in on_inbox. */
  uv_mutex_t lock;
  uv_async_t *inbox;
  uvip__post_t *posts;
  size_t nposts, cap_posts;

  /* Process workers: SIGCHLD reaps, the timer enforces the readiness
   * deadline and the closing grace period. Incarnations replaced or killed
   * before they were reaped wait in zombies. */
  uv_signal_t *sigchld;
  uv_timer_t *timer;
  uv_idle_t *spawner; /* forks the pending workers, one per loop turn */
  uint64_t kill_at; /* closing: loop time of the SIGKILL */
  bool killed;
  pid_t *zombies;
  size_t nzombies, cap_zombies;
  char pbuf[4096];      /* reads from worker pipes, consumed at once */
  uv_idle_t closer;     /* makes the close callback come from the loop */
  /* An upgrade's hand-over: the workers asked that have not reported. */
  uvip_upgrade_t *ho_upgrade;
  unsigned ho_waiting;
  size_t ho_moved, ho_kept;
  int handles_open;
};

/* What goes over a worker process's pipe. Parent to child. STOP and
 * CLOSE_CONNS are also the orders given to thread workers. */
/* HANDOVER carries the channel (a descriptor) and the decide callback;
 * MOVED a connection moved from the old generation, its moved callback,
 * and blob_len bytes of blob after the message. The callbacks are
 * addresses in the parent, valid in a child forked from it. */
enum { UVIP__MSG_CONN = 1, UVIP__MSG_STOP = 2, UVIP__MSG_CLOSE_CONNS = 3,
       UVIP__MSG_HANDOVER = 4, UVIP__MSG_MOVED = 5, UVIP__MSG_STOP_LISTEN = 6 };
typedef struct {
  uint32_t kind;
  uint32_t id; /* VIP id */
  union {
    struct sockaddr sa;
    struct sockaddr_in in;
    struct sockaddr_in6 in6;
  } addr;      /* the VIP's address, to build the child's mirror */
  uint32_t blob_len;
  uint32_t pad;
  uint64_t fn;
} uvip__msg_t;
/* Child to parent: */
enum {
  UVIP__REP_READY = 1, /* a = 0 */
  UVIP__REP_ERROR,     /* a = -error: could not start */
  UVIP__REP_RELEASE,   /* a connections of VIP id closed */
  UVIP__REP_FAILED,    /* a hand-offs of VIP id could not be taken */
  UVIP__REP_STATS,     /* REUSEPORT: a = active, b = accepted */
  UVIP__REP_HANDOVER   /* a moved, b kept */
};
typedef struct {
  uint32_t kind;
  uint32_t id;
  uint64_t a, b;
} uvip__rep_t;

/* workers.c */
/* The VIP id for vip (assigned on first sight), or UV_ENOMEM. */
int uvip__wk_vip_id(uvip_workers_t *ws, uvip_vip_t *vip, uint32_t *id);
/* Gives back `count` slots of VIP id held by worker wk. */
void uvip__wk_release(uvip__wk_t *wk, uint32_t id, uint64_t count);
/* `count` hand-offs of VIP id the worker could not take: counted as
 * failed instead of handed, and their slots given back. */
void uvip__wk_failed(uvip__wk_t *wk, uint32_t id, uint64_t count);
/* A worker ended (died or exited): give back everything it held. */
void uvip__wk_ended(uvip__wk_t *wk);
/* A handle of the workers closed; frees them once all have.
 * uvip__wk_handle_closed() is the close callback of a malloc'd handle
 * whose data is the workers; uvip__wk_closed() is for the others. */
void uvip__wk_handle_closed(uv_handle_t *h);
void uvip__wk_closed(uvip_workers_t *ws);
void uvip__wk_maybe_finish(uvip_workers_t *ws);
/* REUSEPORT: a worker's own server on loop, listening on the same VIPs
 * with SO_REUSEPORT and the per-worker cap. *out is set once created, even
 * when listening then fails (the caller closes it). */
int uvip__wk_own_server(uvip_workers_t *ws, uv_loop_t *loop,
                        uvip_server_t **out, char *errbuf, size_t errlen);

/* REUSEPORT: a worker's order to stop listening (STOP_LISTEN), on its
 * loop: accepts what is queued on its own listeners, then stops them. */
void uvip__wk_own_stop(uvip_server_t *own);

/* workers-thread.c */
int uvip__wk_thread_start(uvip__wk_t *wk, char *errbuf, size_t errlen);
int uvip__wk_thread_dispatch(uvip__wk_t *wk, uvip_vip_t *vip, int fd,
                             uvip_moved_cb moved, const void *blob,
                             size_t len);
/* Asks a thread worker to hand over (takes chan); false when it stops. */
bool uvip__wk_thread_handover(uvip__wk_t *wk, int chan,
                              uvip_handover_decide_cb decide);
/* kind: UVIP__MSG_STOP, UVIP__MSG_CLOSE_CONNS or UVIP__MSG_STOP_LISTEN. */
void uvip__wk_thread_order(uvip__wk_t *wk, uint32_t kind);
void uvip__wk_thread_remote_closed(uvip_conn_t *c);
void uvip__wk_thread_on_inbox(uv_async_t *a);
void uvip__wk_thread_free(uvip__wk_t *wk);

/* workers-proc.c */
int uvip__wk_proc_start(uvip__wk_t *wk, char *errbuf, size_t errlen);
int uvip__wk_proc_dispatch(uvip__wk_t *wk, uvip_vip_t *vip, uint32_t id,
                           int fd, uvip_moved_cb moved, const void *blob,
                           size_t len);
/* Sends a worker process the order to hand over with a copy of chan. */
int uvip__wk_proc_handover(uvip__wk_t *wk, int chan,
                           uvip_handover_decide_cb decide);
/* kind: UVIP__MSG_STOP (a worker that cannot be told is killed),
 * UVIP__MSG_CLOSE_CONNS or UVIP__MSG_STOP_LISTEN. Returns 0 or the error
 * of sending it. */
int uvip__wk_proc_order(uvip__wk_t *wk, uint32_t kind);
/* Kills a worker process at once (a start that failed half way); it is
 * reaped later, from SIGCHLD. */
void uvip__wk_proc_kill(uvip__wk_t *wk);
/* Before a restart: an old incarnation not reaped yet waits in zombies. */
void uvip__wk_proc_forget(uvip__wk_t *wk);
/* Closing: starts the grace period after which the rest are killed. */
void uvip__wk_proc_closing(uvip_workers_t *ws);
/* Every process of the workers has been reaped. */
bool uvip__wk_proc_all_reaped(const uvip_workers_t *ws);
void uvip__wk_proc_on_sigchld(uv_signal_t *h, int signum);
void uvip__wk_proc_on_timer(uv_timer_t *t);
/* A worker became ready (status 0) or could not start: tells the
 * application (workers.c). */
void uvip__wk_ready(uvip__wk_t *wk, int status);
/* A worker asked to hand over reported (or ended: 0, 0). */
void uvip__wk_ho_reported(uvip__wk_t *wk, uint64_t moved, uint64_t kept);

#endif
