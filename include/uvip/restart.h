/* uvip: inherited listeners and socket activation. Included by <uvip.h>;
 * do not include directly.
 * SPDX-License-Identifier: MIT
 *
 * A restart that closes its listeners refuses every connection that comes
 * while no process listens. Handing the listening sockets to the next
 * process instead (systemd socket activation, a re-exec, a new process that
 * fetches them) keeps the kernel's accept queues alive across the restart:
 * nothing is refused. This part adopts such sockets into a server.
 */
#ifndef UVIP_RESTART_H
#define UVIP_RESTART_H

#ifdef __cplusplus
extern "C" {
#endif

/* systemd's socket activation protocol (sd_listen_fds(3)), implemented on
 * its three environment variables so that libsystemd is not needed: when
 * LISTEN_PID is this process, LISTEN_FDS descriptors starting at 3 were
 * passed to it, named by the colon-separated LISTEN_FDNAMES.
 *
 * Stores in *n the number of descriptors passed (0 when LISTEN_FDS is not
 * set: not socket-activated) and, when fds is not NULL, up to max of them.
 * Every passed descriptor gets FD_CLOEXEC. With unset_env the three
 * variables are removed, so that children do not take the descriptors for
 * theirs. Errors: UV_EINVAL (n NULL, or LISTEN_FDS / LISTEN_PID not a
 * number, or more than 65,536 descriptors), UV_ESRCH (LISTEN_PID names
 * another process: the descriptors are not ours; nothing is touched),
 * UV_EBADF (a passed descriptor is not open). */
int uvip_listen_fds(int unset_env, int *fds, size_t max, size_t *n);

/* Adopts listening sockets for the server's VIPs, before
 * uvip_server_listen(): a VIP whose address (getsockname()) equals an
 * adopted socket's listens on that socket instead of binding a new one;
 * VIPs without one are bound as usual. The server's caps, scheduler and
 * counters start fresh; socket options already set on the adopted sockets
 * are kept (uvip sets O_NONBLOCK and FD_CLOEXEC only).
 *
 * Every descriptor is checked first: it must be a socket (else
 * UV_ENOTSOCK), of type SOCK_STREAM (UV_EPROTOTYPE), of family AF_INET or
 * AF_INET6 (UV_EAFNOSUPPORT), and listening (UV_EINVAL). On any such error
 * nothing is taken (the caller still owns every descriptor) and errbuf, when
 * given, names the descriptor and the reason. On success the server owns
 * all of them: those that match no VIP, and second sockets for a VIP that
 * already has one, are closed, and their number is stored in *extra (extra
 * may be NULL). UV_EALREADY once the server listens. */
int uvip_server_adopt(uvip_server_t *server, const int *fds, size_t n,
                      size_t *extra, char *errbuf, size_t errlen);

/* 1 when the VIP listens (or will listen) on an adopted socket, 0 when uvip
 * bound it, UV_EINVAL for NULL. */
int uvip_vip_adopted(const uvip_vip_t *vip);

/* ---- Upgrade by re-exec: the old generation starts the new one ---------- */

typedef struct uvip_upgrade_s uvip_upgrade_t;

/* status 0: the new generation said it is ready (uvip_upgrade_ready()): the
 * old one should stop accepting now and drain. status < 0: it is not coming
 * (it exited or was killed before it was ready, could not be executed, or
 * was not ready in time: UV_ETIMEDOUT, after which it is killed); the old
 * generation keeps serving: UV_ESRCH (it exited or was killed before it was
 * ready), the exec error (UV_ENOENT, UV_EACCES...), UV_ETIMEDOUT, UV_EPROTO
 * (garbage on the readiness pipe) or UV_ECANCELED (uvip_upgrade_close()).
 * why says it in words (valid during the call).
 * Either way this is the last call about the upgrade except its close
 * callback; it may close the upgrade. */
typedef void (*uvip_upgrade_cb)(uvip_upgrade_t *upgrade, int status,
                                const char *why);
typedef void (*uvip_upgrade_close_cb)(uvip_upgrade_t *upgrade);

/* Starts the next generation: fork and exec of path (resolve it when the
 * program starts: the file may be replaced by then, which is the point)
 * with argv, the current environment, and the listening sockets of every
 * listening VIP of the n servers passed the way systemd passes them
 * (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES=uvip), so that a server with
 * UVIP_SOCKET_ACTIVATION adopts them. UVIP_READY_FD names a pipe on which
 * the new generation reports readiness (uvip_upgrade_ready()).
 *
 * Nothing blocks: readiness, exit and the timeout (timeout_ms, at least 1)
 * are watched on loop, and cb runs once. The old generation's servers are
 * not touched; stop them from cb. The child's exit is reaped from a SIGCHLD
 * handle (libuv's uv_signal_t, which coexists with uv_spawn()). Errors:
 * UV_EINVAL, UV_ENOENT (no listening socket to pass), UV_ENOMEM, or fork()'s
 * error; cb then never runs. A server whose workers (UVIP_BALANCE_REUSEPORT)
 * listen on sockets of their own has none to pass and is no UV_ENOENT: the
 * new generation gets LISTEN_FDS=0 and its workers bind their own. */
int uvip_upgrade_start(uv_loop_t *loop, uvip_server_t *const *servers,
                       size_t n, const char *path, char *const argv[],
                       uint64_t timeout_ms, uvip_upgrade_cb cb,
                       uvip_upgrade_t **out);

/* The new generation's process id (0 once reaped). */
int uvip_upgrade_pid(const uvip_upgrade_t *upgrade);

/* Closes the upgrade's handles. A new generation not ready yet is killed
 * (SIGKILL) and cb runs first with UV_ECANCELED; one that is ready runs on,
 * on its own. close_cb (may be NULL) runs once, from the loop. UV_EALREADY
 * when closing. */
int uvip_upgrade_close(uvip_upgrade_t *upgrade, uvip_upgrade_close_cb cb);

/* In the new generation: tells the old one that this one serves (call it
 * once its servers listen). Returns 0, also when the process was not started
 * by uvip_upgrade_start() (nothing to tell), or the write's error. Removes
 * UVIP_READY_FD from the environment. */
int uvip_upgrade_ready(void);

/* Probation: without it, status 0 comes as soon as the new generation says
 * ready, the old one stops (closing its copies of the listening sockets),
 * and a new generation that crashes right after leaves the listeners with
 * nobody. With probation_ms > 0 (call it after uvip_upgrade_start(), before
 * the new generation says ready), readiness holds the servers passed to
 * uvip_upgrade_start() instead (uvip_server_hold(): not accepting, sockets
 * kept open, so the new generation takes every connection from the shared
 * queues), and cb comes only when probation_ms have passed with the new
 * generation alive: status 0, with the servers still held (stop them and
 * hand over as without probation). If the new generation exits or is
 * killed during the probation, the servers accept again (uvip_server_unhold(),
 * connections queued meanwhile first) and cb says UV_ESRCH, why naming it:
 * "generation PID exited with status S after ready; serving again".
 * uvip_upgrade_close() during the probation also unholds them (cb:
 * UV_ECANCELED) and leaves the new generation running. The servers must
 * stay open while the upgrade is. 0 turns it off. Errors: UV_EINVAL,
 * UV_EBUSY (the new generation said ready already, or the upgrade closes).
 * began (may be NULL) runs when the probation begins (the servers are held
 * from then on), for logs; it is not a last call. A server whose
 * UVIP_BALANCE_REUSEPORT workers listen is not held: they accept on during
 * the probation (the kernel goes on hashing connections to their sockets,
 * and only they read those queues). */
typedef void (*uvip_upgrade_probation_cb)(uvip_upgrade_t *upgrade);
int uvip_upgrade_probation(uvip_upgrade_t *upgrade, uint64_t probation_ms,
                           uvip_upgrade_probation_cb began);

/* ---- Moving idle connections to the new generation ---------------------- */

/* What to do with one connection at hand-over time. */
enum {
  UVIP_HANDOVER_KEEP = 0, /* it stays and drains in this generation */
  UVIP_HANDOVER_MOVE = 1, /* move it (if idle) with the blob filled in */
  UVIP_HANDOVER_CLOSE = 2 /* close it now (uvip_conn_close()) */
};

/* Largest application blob moved with a connection. */
#define UVIP_HANDOVER_BLOB_MAX 1024

/* Asked once per open connection of the server. To move it, fill blob
 * (up to UVIP_HANDOVER_BLOB_MAX bytes) and *len and return
 * UVIP_HANDOVER_MOVE. */
typedef int (*uvip_handover_decide_cb)(uvip_conn_t *conn, void *blob,
                                       size_t *len);
/* Called once when every connection chosen for moving has been sent (or
 * kept because it was busy or the new generation stopped taking them):
 * moved and kept count them. */
typedef void (*uvip_handover_done_cb)(uvip_upgrade_t *upgrade, size_t moved,
                                      size_t kept);

/* After a successful upgrade (its callback had status 0), hands idle
 * connections of server to the new generation over the channel the upgrade
 * set up (a SOCK_SEQPACKET socket pair, UVIP_HANDOFF_FD in the new one).
 * decide runs for each connection at once; a connection chosen for moving
 * goes only if it is idle: nothing unread in its socket and nothing queued
 * in libuv for writing (else it is kept, and drains here). Moved ones are
 * sent on the loop as the channel has room; each is then closed here (the
 * socket lives on in the new generation), its slot given back and the
 * server's conn_close_cb run for it, as for a close.
 *
 * A server with workers (uvip_workers_new(), EXACT or ROUND_ROBIN balance)
 * hands over its workers' connections: each worker gets its own copy of
 * the channel and, on its own loop (thread) or in its own process, runs
 * decide for each of its connections and sends the idle ones chosen
 * itself; nothing passes through the server's loop, which only adds up
 * what the workers report. Busy ones stay in their worker and drain there
 * (close the workers, with their grace period, when they are done). done
 * runs once every worker has reported; a worker that dies on the way
 * counts as having moved and kept nothing (what it sent before is in the
 * new generation; what it held died with it). decide is called on the
 * worker, so it may only touch what that worker owns.
 *
 * Errors: UV_EINVAL, UV_EBUSY (the upgrade is not ready, or a hand-over
 * runs, also one whose workers have not all reported after
 * uvip_upgrade_close()), UV_ENOTCONN (the channel is gone), UV_ECANCELED
 * (the server's workers are closing). done never runs on error. */
int uvip_upgrade_handover(uvip_upgrade_t *upgrade, uvip_server_t *server,
                          uvip_handover_decide_cb decide,
                          uvip_handover_done_cb done);

typedef struct uvip_moved_s uvip_moved_t;

/* In the new generation, once per moved connection: conn is counted on
 * its VIP (matched by the address it was accepted on) and against the
 * caps, like an accepted one, with the application's blob (valid during
 * the call). The caps do not refuse it: it exists already. */
typedef void (*uvip_moved_cb)(uvip_server_t *server, uvip_conn_t *conn,
                              const void *blob, size_t len);
/* Called once the old generation has sent everything (it closed the
 * channel), or the channel failed (status < 0), or on uvip_moved_close()
 * (UV_ECANCELED); the receiver is freed right after. */
typedef void (*uvip_moved_end_cb)(uvip_moved_t *moved, int status,
                                  size_t received);

/* In the new generation: receives moved connections for server (which
 * must listen, so that every VIP exists) on the channel named by
 * UVIP_HANDOFF_FD, on the server's loop.
 *
 * A server with workers (EXACT or ROUND_ROBIN balance) hands each moved
 * connection to a worker, chosen as for an accepted one and counted
 * against its max_conns_per_worker, and cb runs on that worker (its
 * thread, or in its process: a process worker forked from this program
 * calls the same function) with a copy of the blob. While no worker can
 * take one (all full, or not ready yet: start receiving once ready_cb
 * said every one is), the rest wait in the channel, and the old
 * generation waits with them. *out is NULL and 0 is returned when
 * the process was not started by an upgrade. A connection for an address
 * that is not a VIP of server is closed and counted as dropped
 * (uvip_moved_dropped()). Errors: UV_EINVAL, UV_EBADF (UVIP_HANDOFF_FD is
 * not a descriptor), UV_ENOMEM. */
int uvip_moved_start(uvip_server_t *server, uvip_moved_cb cb,
                     uvip_moved_end_cb end, uvip_moved_t **out);

/* As uvip_moved_start(), on the channel fd (taken on success), e.g. the
 * one uvip_handoff_channel() received. Errors: UV_EINVAL, UV_EBADF (fd not
 * open), UV_ENOMEM. */
int uvip_moved_start_fd(uvip_server_t *server, int fd, uvip_moved_cb cb,
                        uvip_moved_end_cb end, uvip_moved_t **out);

/* Moved connections closed on arrival because no VIP matched. */
size_t uvip_moved_dropped(const uvip_moved_t *moved);

/* Stops receiving; end runs from the loop with UV_ECANCELED (unless it ran
 * already: UV_EALREADY). */
int uvip_moved_close(uvip_moved_t *moved);

/* ---- Listeners fetched by an independent new process -------------------- */

/* For a new generation started by someone else (a supervisor, a container
 * runtime), like HAProxy's -x: the running one serves its listening sockets
 * on a UNIX socket; the new one connects, fetches them (SCM_RIGHTS), adopts
 * them, and says it is ready on the same connection; the running one then
 * stops accepting and drains. */
typedef struct uvip_handoff_s uvip_handoff_t;

/* status 0: a new process took the listeners and said it is ready (and,
 * with a probation, lived through it: the servers are still held then):
 * stop accepting now. status < 0: a fetch failed part-way, or UV_ESRCH: the
 * new process went away during its probation (uvip_handoff_probation()) and
 * the servers accept again. Either way the running process keeps serving
 * and the hand-off keeps listening for another try. */
typedef void (*uvip_handoff_cb)(uvip_handoff_t *handoff, int status);
typedef void (*uvip_handoff_close_cb)(uvip_handoff_t *handoff);

/* Serves the listening sockets of every listening VIP of the n servers at
 * the UNIX socket path (created mode 0600; an existing socket file there is
 * replaced). cb runs for each completed or failed hand-off. Errors:
 * UV_EINVAL, UV_ENOENT (nothing listening), UV_ENAMETOOLONG, or the
 * bind/listen error; cb never runs then. */
int uvip_handoff_serve(uv_loop_t *loop, uvip_server_t *const *servers,
                       size_t n, const char *path, uvip_handoff_cb cb,
                       uvip_handoff_t **out);

/* Stops serving and removes the socket file if it is still the one it made
 * (a newer process may serve at the same path by then); close_cb (may be
 * NULL) runs once from the loop. */
int uvip_handoff_close(uvip_handoff_t *handoff, uvip_handoff_close_cb cb);

/* In the new process, at start-up (before its loop runs: it waits, for at
 * most timeout_ms): fetches the listening sockets served at path into fds
 * (up to max; *n receives how many) and leaves the connection open in
 * *conn, for uvip_handoff_ready(). Pass the descriptors to
 * uvip_server_adopt(). Errors: UV_EINVAL, UV_ENOENT / UV_ECONNREFUSED (no
 * one serves there), UV_ETIMEDOUT, UV_EPROTO (a malformed or half-written
 * message: every descriptor received so far is closed), UV_ENOBUFS (more
 * than max). errbuf, when given, says it in words. */
int uvip_handoff_fetch(const char *path, uint64_t timeout_ms, int *fds,
                       size_t max, size_t *n, int *conn, char *errbuf,
                       size_t errlen);

/* In the new process, once it listens: tells the old one (its hand-off
 * callback gets status 0) and closes conn. */
int uvip_handoff_ready(int conn);

/* As uvip_handoff_ready() but keeps conn open: keep it for as long as this
 * process serves (it is close-on-exec; the kernel closes it when the
 * process ends, however it ends), so that the old process, on probation
 * (uvip_handoff_probation()), sees this one go. Close it when done (or let
 * the process's end do it). */
int uvip_handoff_ready_keep(int conn);

/* In the running process, from its hand-off callback with status 0 (or
 * later, until uvip_handoff_close()): the new process that took over
 * keeping its connection (uvip_handoff_ready_keep()) was sent a channel
 * for moving connections (one end of a SOCK_SEQPACKET pair, by SCM_RIGHTS on
 * that connection); *out is an upgrade object with no process of its own
 * on the other end: move idle connections with uvip_upgrade_handover(),
 * then uvip_upgrade_close() it (closing the channel ends the new process's
 * receiver); uvip_upgrade_pid() is 0. Errors: UV_EINVAL, UV_ENOTCONN (no
 * such process: it said uvip_handoff_ready() and closed, or went, or the
 * channel was taken already), UV_ENOMEM. */
int uvip_handoff_mover(uvip_handoff_t *handoff, uvip_upgrade_t **out);

/* In the new process, on conn kept by uvip_handoff_ready_keep(), when it is
 * readable: 0 and *chan when the running process sent the channel for
 * moving connections (pass it to uvip_moved_start_fd()), UV_EAGAIN when
 * nothing came yet, UV_EOF when the running process closed the connection
 * (its probation passed or it ended; no more will come), UV_EPROTO for
 * anything else (descriptors that came with it are closed). */
int uvip_handoff_channel(int conn, int *chan);

/* The running process's side of a probation, as uvip_upgrade_probation()
 * for re-exec: when a new process says ready with uvip_handoff_ready_keep(),
 * the servers are held (uvip_server_hold()) rather than stopped, and cb
 * gets status 0 only once probation_ms have passed with the new process's
 * connection still open. If it closes first, the servers accept again
 * (uvip_server_unhold()) and cb gets UV_ESRCH. One new process at a time:
 * another fetch during a probation is cut (that fetch fails). A new process
 * that says uvip_handoff_ready() (closing its connection) cannot be watched:
 * status 0 at once, as without probation. uvip_handoff_close() during a
 * probation unholds the servers. 0 turns it off. began (may be NULL) runs
 * when a probation begins. Errors: UV_EINVAL, UV_EBUSY (closing, or a
 * probation runs). */
typedef void (*uvip_handoff_probation_cb)(uvip_handoff_t *handoff);
int uvip_handoff_probation(uvip_handoff_t *handoff, uint64_t probation_ms,
                           uvip_handoff_probation_cb began);

#ifdef __cplusplus
}
#endif

#endif /* UVIP_RESTART_H */
