/* uvip: workers API. Included by <uvip.h>; do not include directly.
 * SPDX-License-Identifier: MIT
 *
 * Spreads a server's connections over N workers, each with its own libuv
 * loop: threads of this process, or forked processes (each with its own
 * descriptor limit, which is what lets one machine hold a million
 * connections when a process may hold only tens of thousands).
 *
 * With UVIP_BALANCE_EXACT and UVIP_BALANCE_ROUND_ROBIN the server's loop
 * (the acceptor) keeps accepting with its fair scheduler and hands every
 * accepted descriptor to a worker: threads through a queue, processes over
 * a libuv IPC pipe (uv_write2()). A worker at max_conns_per_worker gets
 * nothing more; when every worker is full the acceptor stops accepting as at
 * a global cap, and the kernel's queues of every VIP wait in fair order.
 *
 * With UVIP_BALANCE_REUSEPORT every worker runs a server of its own on the
 * same VIPs with SO_REUSEPORT: the kernel spreads connections by a hash of
 * the 4-tuple and there is no hand-off at all. Known weakness: the hash
 * does not look at load, so a worker that is full or stalled keeps being
 * sent its share, which waits in (or overflows) its own accept queue while
 * the others are idle; and a dead process worker's queued connections are
 * reset. Prefer EXACT unless the acceptor itself is the bottleneck.
 *
 * Usage: uvip_server_new(); uvip_workers_new(server, ...) instead of
 * uvip_server_listen(): uvip_workers_listen() starts the workers and
 * listens. To finish: uvip_workers_close(), and from its callback
 * uvip_server_close(). The workers object must be closed before the server
 * (uvip_server_close() is UV_EBUSY until then).
 *
 * Upgrades (<uvip/restart.h>): uvip_upgrade_start() passes the acceptor's
 * listeners; uvip_upgrade_handover() on the server has every worker hand
 * its idle connections to the new generation, and uvip_moved_start() in
 * the new one gives them to its workers. With UVIP_BALANCE_REUSEPORT
 * nothing is passed: the new generation's workers bind listeners of their
 * own into the same SO_REUSEPORT groups (same user), the old workers go on
 * accepting until uvip_server_stop() (also during a probation), then accept
 * what is queued on their sockets and close them, and hand over as above;
 * moved connections reach the new workers through the new acceptor. See
 * docs/restart.md for net.ipv4.tcp_migrate_req.
 *
 * Nothing here blocks the server's loop. A worker starts asynchronously:
 * uvip_workers_listen() and uvip_workers_restart() return once it is
 * created, and it counts as ready (takes connections, `alive` in its
 * stats) when it reports so after its init_cb; the options' ready_cb says
 * when. Until a worker is ready it gets nothing; while none is, the
 * acceptor leaves connections queued in the kernel as at a global cap.
 * Closing asks each worker to finish, gives worker processes a grace
 * period (grace_ms) on a timer and then kills them with SIGKILL; the close
 * callback comes once every process has been reaped.
 *
 * Inside a worker, the connection callback's server argument is the
 * acceptor's server (threads), a local copy of it that only mirrors its
 * VIPs (processes) or the worker's own server (REUSEPORT); in every case
 * uvip_server_get_data() returns the acceptor server's data, and
 * uvip_conn_vip() / uvip_vip_addr() tell the VIP a connection came in on.
 * Call no other uvip_server_* or uvip_vip_* function from a worker. The
 * worker loop's `data` field belongs to the library. The server's
 * conn_close_cb runs, on the worker, for the connections closed when the
 * workers are closed or by uvip_server_close_conns() on the acceptor's
 * loop, which reaches the workers' connections asynchronously (see
 * <uvip.h>).
 *
 * Side effects of process workers (UVIP_WORKER_PROCESS), on the whole
 * process:
 * - fork() without exec: the child is a copy of the parent taken from the
 *   loop thread. Only that thread exists in the child; a lock another
 *   thread held at the fork (libuv's threadpool running a getaddrinfo or
 *   a file operation, an application thread inside malloc or stdio) stays
 *   held there forever. Start process workers before starting other
 *   threads or threadpool work where possible; in init_cb, exit_cb and the
 *   connection callback use only what was not shared with such threads.
 *   stdio buffers are flushed before each fork so output is not doubled.
 * - The child closes every socket it inherited (the acceptor's listeners,
 *   other workers' pipes, descriptors in flight), including the
 *   application's own sockets such as syslog's (openlog() with
 *   LOG_NDELAY): list the sockets a worker must keep in
 *   uvip_workers_options_t.keep_fds. Other descriptors (files, pipes) are
 *   left open. The child resets every signal to its default and unblocks
 *   all; it ignores SIGINT (the acceptor decides when workers stop) and
 *   SIGPIPE.
 * - PR_SET_PDEATHSIG: a worker process is killed when the thread that
 *   forked it ends (Linux ties it to the thread, not the process): start
 *   and restart workers from the loop's thread, which lives as long as the
 *   process serves.
 * - SIGPIPE is set to ignored in the parent (when it was at its default):
 *   a write to a worker that just died must fail with EPIPE rather than
 *   kill the acceptor. It is not restored.
 * - A uv_signal_t for SIGCHLD runs on the server's loop from
 *   uvip_workers_listen() until the close callback: it replaces a handler
 *   the application installed with sigaction()/signal() (libuv keeps one
 *   handler per signal and runs every uv_signal_t watching it, so the
 *   application's own uv_signal_t for SIGCHLD and libuv's uv_spawn() keep
 *   working). The workers reap only their own children (waitpid() on each
 *   of their pids, never waitpid(-1)); an application that reaps with
 *   waitpid(-1) takes their exit status away, which the workers tolerate.
 */
#ifndef UVIP_WORKERS_H
#define UVIP_WORKERS_H

#ifdef __cplusplus
extern "C" {
#endif

/* uvip_workers_options_t.mode */
enum { UVIP_WORKER_THREAD = 0, UVIP_WORKER_PROCESS = 1 };

/* uvip_workers_options_t.balance */
enum {
  UVIP_BALANCE_EXACT = 0,       /* the worker with the fewest connections */
  UVIP_BALANCE_ROUND_ROBIN = 1, /* the next worker with room, in turn */
  UVIP_BALANCE_REUSEPORT = 2    /* the kernel, per worker listeners */
};

#define UVIP_WORKERS_MAX 1024

/* Descriptors a worker process keeps for itself when max_conns_per_worker
 * is left to its default. */
#define UVIP_WORKER_FD_RESERVE 64

/* Called on a worker's own thread (or in its process) with its loop:
 * init_cb before its first connection, exit_cb when the workers close,
 * after its connections were asked to close; exit_cb must close every
 * handle the application opened on that loop. */
typedef void (*uvip_worker_cb)(uv_loop_t *loop, unsigned int index,
                               void *arg);

typedef struct uvip_workers_s uvip_workers_t;
/* Called on the server's loop when worker `index` is ready (status 0: it
 * ran its init_cb and takes connections) or could not start (status < 0:
 * UV_ETIMEDOUT when a process did not get ready within 10 s, UV_EPIPE when
 * it ended first, the error it reported, e.g. a REUSEPORT bind error, or
 * the error of forking it).
 * Once per start and per successful uvip_workers_restart(); not after
 * uvip_workers_close(). A worker that could not start stays dead (restart
 * it, or close the workers). */
typedef void (*uvip_worker_ready_cb)(uvip_workers_t *workers,
                                     unsigned int index, int status);

/* Default of uvip_workers_options_t.grace_ms. */
#define UVIP_WORKER_GRACE_MS 2000

typedef struct uvip_workers_options_s {
  /* Number of workers, 1..UVIP_WORKERS_MAX (default 2). */
  unsigned int nworkers;
  /* UVIP_WORKER_THREAD (default) or UVIP_WORKER_PROCESS. */
  int mode;
  /* UVIP_BALANCE_EXACT (default), _ROUND_ROBIN or _REUSEPORT. */
  int balance;
  /* Connections one worker holds at most; 0 = the default: no limit for
   * threads, and for processes the hard RLIMIT_NOFILE (to which a worker
   * process raises its soft limit) minus UVIP_WORKER_FD_RESERVE. */
  uint64_t max_conns_per_worker;
  uvip_worker_cb init_cb; /* may be NULL */
  uvip_worker_cb exit_cb; /* may be NULL */
  void *arg;              /* passed to init_cb and exit_cb */
  uvip_worker_ready_cb ready_cb; /* may be NULL */
  /* Processes: how long uvip_workers_close() lets a worker process finish
   * (close its connections, run its exit_cb, exit) before it is killed
   * with SIGKILL, in ms (default UVIP_WORKER_GRACE_MS; 0 kills at once). */
  unsigned int grace_ms;
  /* Processes: sockets a worker process keeps open (it closes every other
   * socket it inherited), e.g. the application's syslog socket. Copied by
   * uvip_workers_new(); NULL when nkeep_fds is 0. */
  const int *keep_fds;
  size_t nkeep_fds;
} uvip_workers_options_t;

/* Fills the options with their defaults. Returns 0 or UV_EINVAL. */
int uvip_workers_options_init(uvip_workers_options_t *opts);

/* Creates the workers of a server that does not listen yet. Nothing runs
 * until uvip_workers_listen(). opts may be NULL for defaults. Errors:
 * UV_EINVAL (bad option, e.g. a negative descriptor in keep_fds or
 * keep_fds NULL with nkeep_fds > 0; server NULL, listening, closing or
 * already given workers), UV_ENOMEM. */
int uvip_workers_new(uvip_server_t *server, const uvip_workers_options_t *opts,
                     uvip_workers_t **out);

/* Starts the workers and listens (in place of uvip_server_listen(), with
 * the same arguments and errors); cb runs on a worker for each connection.
 * Returns without waiting for any worker to be ready: each becomes ready
 * asynchronously (ready_cb). Thread workers and the first worker process
 * are created by the call; the other processes are forked on the
 * following loop turns, one per turn (a fork stalls the loop while the
 * page tables are copied), and one that cannot be forked is reported to
 * ready_cb. On failure nothing is left running or bound and cb never runs;
 * the workers must still be closed with uvip_workers_close(). Also
 * UV_EALREADY when called twice, UV_EAGAIN or another
 * fork()/thread/socketpair() error when a worker cannot be created. */
int uvip_workers_listen(uvip_workers_t *workers, uvip_connection_cb cb,
                        char *errbuf, size_t errlen);

/* The number of workers (0 for NULL) and the server they serve. */
unsigned int uvip_workers_count(const uvip_workers_t *workers);
uvip_server_t *uvip_workers_server(const uvip_workers_t *workers);

typedef struct uvip_worker_stats_s {
  uint64_t active;   /* connections the worker holds now */
  uint64_t handed;   /* connections handed to (REUSEPORT: accepted by) it */
  uint64_t refused;  /* times it was passed over because it was full */
  uint64_t failed;   /* hand-offs it could not take (connection closed,
                      * slot given back; not counted in handed) */
  uint64_t restarts; /* uvip_workers_restart() calls that succeeded */
  int64_t pid;       /* process id of a worker process, else 0 */
  int alive;         /* 1 while ready and running; 0 after it died or closed */
  int starting;      /* 1 from its creation until ready (or failed) */
  /* Processes: the waitpid() status (WIFEXITED() etc. apply) of its current
   * process once that was reaped; -1 before, for threads, or when the
   * application reaped it first (waitpid(-1)). A worker process that
   * finishes normally exits with status 0; one still running when the
   * grace period ends is killed by SIGKILL. Readable in the close
   * callback. */
  int exit_status;
} uvip_worker_stats_t;

/* Counters of worker i, read on the server's loop. Exact in EXACT and
 * ROUND_ROBIN modes (kept by the acceptor); in REUSEPORT mode `active` and
 * `handed` are the worker's own counts as last reported (every 200 ms),
 * plus the connections moved to it from an older generation (exact). */
int uvip_workers_stats(const uvip_workers_t *workers, unsigned int i,
                       uvip_worker_stats_t *out);

/* Starts a new process for worker i after it died (its connections were
 * given back to the caps when the death was noticed). Returns 0 once the
 * new process exists; it takes connections once ready (ready_cb). UV_EBUSY
 * if the worker is alive or still starting, UV_ENOTSUP for thread workers,
 * UV_EINVAL for a bad index, workers not listening or closing, or a
 * fork()/socketpair() error. */
int uvip_workers_restart(uvip_workers_t *workers, unsigned int i);

typedef void (*uvip_workers_close_cb)(uvip_workers_t *workers);

/* Stops the server (uvip_server_stop()), closes every worker connection
 * (the server's conn_close_cb runs for each, on its worker), calls each
 * exit_cb, waits for the workers to end (threads end and are joined;
 * processes get grace_ms to exit, are then killed, and are reaped) and for
 * all their slots to be given back, then calls cb (may be NULL) on the
 * server's loop, once, from a handle's close callback; the server may be
 * closed from cb. uvip_workers_stats() still works inside cb, and the
 * workers' memory is freed right after it returns. UV_EALREADY the second
 * time. */
int uvip_workers_close(uvip_workers_t *workers, uvip_workers_close_cb cb);

#ifdef __cplusplus
}
#endif

#endif /* UVIP_WORKERS_H */
