/* Process workers, the child's side. Runs in the forked process only and
 * never touches the parent's loop: it builds a loop of its own, closes the
 * sockets it inherited (the acceptor's listeners, other workers' pipes,
 * descriptors being handed to others) so that they do not stay open
 * because of it, receives descriptors with uv_accept() on its IPC pipe and
 * reports closed connections in batches, once per loop turn.
 *
 * Connections hang on a local server that only mirrors the acceptor's VIPs
 * (it never listens; its loop is NULL so that conn.c hands every close to
 * child_closed()). One mirror VIP per VIP id, so a close always finds the
 * id it came in under.
 * SPDX-License-Identifier: MIT */
#include "workers-internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

void uvip__wk_child_main(uvip__wk_t *wk, int fd) __attribute__((noreturn));

static struct {
  uvip__wk_t *wk;
  uvip_workers_t *ws;
  uv_loop_t loop;
  uv_pipe_t pipe;
  uv_check_t check; /* flushes reports once per turn */
  uv_idle_t idle;   /* keeps the poll from blocking while reports wait */
  uv_timer_t timer; /* REUSEPORT: periodic counts */
  uvip_server_t *shell, *own;
  uvip_conn_t *conns;
  uint64_t active;
  uvip_vip_t **mirror; /* by VIP id */
  size_t nmirror;
  uvip__idmap_t ids;           /* mirror VIP -> id */
  uint64_t *released, *failed; /* by id, not yet reported */
  uint32_t *dirty;             /* ids with something to report */
  size_t ndirty;
  unsigned writes;
  bool stopping, own_closed, done;
  uvip_conn_t *free_conns; /* connection slabs: see conn_alloc() */
  char *slab;
  size_t slab_left;
  unsigned char part[sizeof(uvip__msg_t) + UVIP_HANDOVER_BLOB_MAX];
  size_t plen;
  uvip__wk_ho_t *ho; /* a hand-over in progress */
  char rbuf[4096];
} ch;

/* Connections come from slabs of our own: a worker process may hold tens
 * of thousands, and malloc's header and 16-byte rounding would add 8 bytes
 * to each 280-byte uvip_conn_t. Slabs are never given back (a worker's
 * peak stays its own); freed connections are reused first. Pages of a slab
 * are touched only as connections are carved from it. */
#define SLAB_CONNS 1024

static uvip_conn_t *conn_alloc(void) {
  uvip_conn_t *c = ch.free_conns;
  if (c) {
    memcpy(&ch.free_conns, (const void *)c, sizeof(uvip_conn_t *));
    return c;
  }
  if (ch.slab_left == 0) {
    if (!(ch.slab = malloc(SLAB_CONNS * sizeof(uvip_conn_t))))
      return NULL;
    ch.slab_left = SLAB_CONNS;
  }
  c = (uvip_conn_t *)ch.slab;
  ch.slab += sizeof(uvip_conn_t);
  ch.slab_left--;
  return c;
}

static void conn_free(uvip_conn_t *c) {
  memcpy((void *)c, &ch.free_conns, sizeof(uvip_conn_t *));
  ch.free_conns = c;
}

static void send_blocking(int fd, uint32_t kind, int64_t a) {
  uvip__rep_t rep = {.kind = kind, .a = (uint64_t)a};
  ssize_t k;
  size_t off = 0;
  while (off < sizeof(rep) &&
         ((k = write(fd, (char *)&rep + off, sizeof(rep) - off)) > 0 ||
          (k < 0 && errno == EINTR)))
    if (k > 0)
      off += (size_t)k;
}

#ifdef UVIP_COVERAGE
void __gcov_dump(void);
#endif

/* _exit() skips atexit handlers, which is right for a forked copy of the
 * application; coverage builds write their counters first, or nothing a
 * worker process runs would be measured. */
__attribute__((noreturn)) static void child_exit(int code) {
#ifdef UVIP_COVERAGE
  __gcov_dump();
#endif
  _exit(code);
}

static void die(int fd, int err) {
  send_blocking(fd, UVIP__REP_ERROR, -(int64_t)err);
  child_exit(3);
}

static void reset_signals(void) {
  sigset_t all;
  /* libuv's handlers copied from the parent would write to the parent's
   * signal pipe. Ctrl-C reaches the whole process group: the acceptor
   * decides how workers stop. */
  for (int sig = 1; sig < NSIG; sig++)
    if (sig != SIGKILL && sig != SIGSTOP)
      signal(sig, SIG_DFL);
  signal(SIGINT, SIG_IGN);
  signal(SIGPIPE, SIG_IGN);
  sigemptyset(&all);
  sigprocmask(SIG_SETMASK, &all, NULL);
}

static bool kept(const uvip_workers_t *ws, int fd) {
  for (size_t i = 0; i < ws->opts.nkeep_fds; i++)
    if (ws->opts.keep_fds[i] == fd)
      return true;
  return false;
}

/* keep: our pipe; the application's keep_fds stay too. */
static void close_inherited_sockets(uvip_workers_t *ws, int keep) {
  DIR *d = opendir("/proc/self/fd");
  struct dirent *e;
  int fds[256], n;
  if (!d) {
    /* At least the listeners. */
    for (size_t i = 0; i < ws->server->nvips; i++)
      if (ws->server->vips[i]->fd >= 0)
        close(ws->server->vips[i]->fd);
    return;
  }
  do {
    n = 0;
    rewinddir(d);
    while ((e = readdir(d)) && n < 256) {
      int fd = atoi(e->d_name);
      struct stat st;
      if (fd > 2 && fd != keep && fd != dirfd(d) && !kept(ws, fd) &&
          fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode))
        fds[n++] = fd;
    }
    for (int i = 0; i < n; i++)
      close(fds[i]);
  } while (n == 256);
  closedir(d);
}

static void raise_nofile(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

static void on_check(uv_check_t *h);
static void on_idle(uv_idle_t *h) { (void)h; }

static void want_flush(void) {
  uv_check_start(&ch.check, on_check);
  uv_idle_start(&ch.idle, on_idle);
}

static void note(uint32_t id, bool failed) {
  if (id >= ch.nmirror)
    return;
  if (!ch.released[id] && !ch.failed[id])
    ch.dirty[ch.ndirty++] = id;
  if (failed)
    ch.failed[id]++;
  else
    ch.released[id]++;
  want_flush();
}

static void on_sent(uv_write_t *req, int status) {
  (void)status;
  free(req);
  ch.writes--;
  want_flush(); /* may be the last thing stopping waited for */
}

static void send_reports(uvip__rep_t *reps, size_t n) {
  uv_write_t *req = malloc(sizeof(*req) + n * sizeof(*reps));
  uv_buf_t buf;
  if (!req)
    return; /* the parent gives the slots back when we exit */
  memcpy(req + 1, reps, n * sizeof(*reps));
  buf = uv_buf_init((char *)(req + 1), (unsigned)(n * sizeof(*reps)));
  if (uv_write(req, (uv_stream_t *)&ch.pipe, &buf, 1, on_sent) == 0)
    ch.writes++;
  else
    free(req);
}

static void send_stats(void) {
  uvip_vip_stats_t st;
  if (ch.own && uvip_server_stats(ch.own, &st) == 0) {
    uvip__rep_t rep = {.kind = UVIP__REP_STATS, .a = st.active, .b = st.accepted};
    send_reports(&rep, 1);
  }
}

static void on_timer(uv_timer_t *t) {
  (void)t;
  send_stats();
}

static void finish(void) {
  ch.done = true;
  uv_close((uv_handle_t *)&ch.pipe, NULL);
  uv_close((uv_handle_t *)&ch.check, NULL);
  uv_close((uv_handle_t *)&ch.idle, NULL);
  uv_close((uv_handle_t *)&ch.timer, NULL);
}

static void on_check(uv_check_t *h) {
  uvip__rep_t reps[256];
  size_t n = 0;
  (void)h;
  for (size_t i = 0; i < ch.ndirty; i++) {
    uint32_t id = ch.dirty[i];
    if (ch.released[id])
      reps[n++] = (uvip__rep_t){UVIP__REP_RELEASE, id, ch.released[id], 0};
    if (ch.failed[id])
      reps[n++] = (uvip__rep_t){UVIP__REP_FAILED, id, ch.failed[id], 0};
    ch.released[id] = ch.failed[id] = 0;
    if (n >= 254) {
      send_reports(reps, n);
      n = 0;
    }
  }
  ch.ndirty = 0;
  if (n)
    send_reports(reps, n);
  uv_check_stop(&ch.check);
  uv_idle_stop(&ch.idle);
  if (ch.stopping && !ch.done && ch.active == 0 && ch.writes == 0 &&
      (!ch.own || ch.own_closed))
    finish();
}

/* conn.c calls this for every close (the shell's loop is not ours). */
static void child_closed(uvip_conn_t *c) {
  uvip_vip_t *v = c->vip;
  uvip_conn_close_cb cb = uvip__conn_user_close_cb(c);
  uint32_t id = 0;
  bool added;
  uvip__conn_list_del(&ch.conns, c);
  if (cb)
    cb(c);
  conn_free(c);
  v->stats.active--;
  v->stats.closed++;
  ch.shell->active--;
  ch.active--;
  if (uvip__idmap_get(&ch.ids, v, 0, &id, &added) == 0 && !added)
    note(id, false);
}

static int grow_mirror(uint32_t id) {
  size_t n = ch.nmirror ? ch.nmirror : 16;
  while (n <= id)
    n *= 2;
  uvip_vip_t **m = realloc(ch.mirror, n * sizeof(*m));
  if (!m)
    return UV_ENOMEM;
  ch.mirror = m;
  uint64_t *r = realloc(ch.released, n * sizeof(*r));
  if (r)
    ch.released = r;
  uint64_t *f = realloc(ch.failed, n * sizeof(*f));
  if (f)
    ch.failed = f;
  uint32_t *d = realloc(ch.dirty, n * sizeof(*d));
  if (d)
    ch.dirty = d;
  if (!r || !f || !d)
    return UV_ENOMEM;
  for (size_t i = ch.nmirror; i < n; i++) {
    ch.mirror[i] = NULL;
    ch.released[i] = ch.failed[i] = 0;
  }
  ch.nmirror = n;
  return 0;
}

static uvip_vip_t *mirror_vip(uint32_t id, const struct sockaddr *sa) {
  uvip_vip_t *v;
  uint32_t got;
  bool added;
  if (id < ch.nmirror && ch.mirror[id])
    return ch.mirror[id];
  if (id >= ch.nmirror && grow_mirror(id) != 0)
    return NULL;
  /* Another id with this address: the acceptor's old VIP of that address
   * is draining. Marking ours so lets the shell add a second one. */
  for (size_t i = 0; i < ch.shell->nvips; i++)
    if (uvip__sa_equal(&ch.shell->vips[i]->addr.sa, sa))
      ch.shell->vips[i]->state = UVIP_VIP_DRAINING;
  if (uvip_server_add_vip(ch.shell, sa, &v) != 0)
    return NULL;
  if (uvip__idmap_get(&ch.ids, v, id, &got, &added) != 0)
    return NULL;
  ch.mirror[id] = v;
  return v;
}

static void free_conn(uv_handle_t *h) { conn_free((uvip_conn_t *)h); }

static void take_conn(const uvip__msg_t *m, const void *blob) {
  uvip_vip_t *v = mirror_vip(m->id, &m->addr.sa);
  uvip_conn_t *c;
  /* A descriptor lost on the way (the kernel drops what does not fit
   * under our limit) leaves a message without one; out of memory, the
   * descriptor waits and goes with the next message. */
  if (uv_pipe_pending_count(&ch.pipe) == 0 || !(c = conn_alloc())) {
    note(m->id, true);
    return;
  }
  /* As uvip__conn_new() does, but the descriptor comes from uv_accept(). */
  uv_tcp_init(&ch.loop, &c->tcp);
  if (uv_accept((uv_stream_t *)&ch.pipe, (uv_stream_t *)&c->tcp) != 0 || !v) {
    uv_close((uv_handle_t *)&c->tcp, free_conn);
    note(m->id, true);
    return;
  }
  c->tcp.data = NULL;
  c->vip = v;
  c->close_cb = NULL;
  c->proxy = NULL; /* no header read here: the socket's own addresses */
  c->group = NULL;
  uvip__conn_list_add(&ch.conns, c);
  v->stats.accepted++;
  v->stats.active++;
  ch.shell->active++;
  ch.active++;
  if (m->kind == UVIP__MSG_MOVED)
    ((uvip_moved_cb)(uintptr_t)m->fn)(ch.shell, c, blob, m->blob_len);
  else
    ch.ws->cb(ch.shell, c);
}

static void free_handle(uv_handle_t *h) { free(h); }

static void ho_report(size_t moved, size_t kept, void *arg) {
  uvip__rep_t rep = {.kind = UVIP__REP_HANDOVER, .a = moved, .b = kept};
  (void)arg;
  ch.ho = NULL;
  send_reports(&rep, 1);
}

/* The order to hand over: the channel comes as a pipe handle, whose
 * descriptor we keep (a copy: the handle closes its own). */
static void take_handover(const uvip__msg_t *m) {
  uv_pipe_t *p;
  int fd = -1;
  /* The descriptor is taken off the pipe whatever happens next, so that
   * the next message's is the next one. libuv names a SOCK_SEQPACKET
   * socket no type of its own. */
  if (uv_pipe_pending_count(&ch.pipe) > 0 &&
      uv_pipe_pending_type(&ch.pipe) != UV_TCP &&
      (p = malloc(sizeof(*p)))) {
    uv_pipe_init(&ch.loop, p, 0);
    if (uv_accept((uv_stream_t *)&ch.pipe, (uv_stream_t *)p) == 0 &&
        uv_fileno((uv_handle_t *)p, &fd) == 0)
      fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    uv_close((uv_handle_t *)p, free_handle);
  }
  if (fd >= 0 && ch.ho) {
    close(fd); /* one hand-over at a time */
    fd = -1;
  }
  if (fd < 0) {
    ho_report(0, 0, NULL);
    return;
  }
  uvip__wk_ho_start(&ch.loop, fd, ch.conns, ch.own,
                    (uvip_handover_decide_cb)(uintptr_t)m->fn,
                    ch.ws->server->opts.conn_close_cb, ho_report, NULL,
                    &ch.ho);
}

/* Both orders close everything we hold: handed-over connections are on
 * our list, REUSEPORT ones on our own server. Their releases go out with
 * the next flush. */
static void close_conns(void) {
  uvip__conn_close_all(ch.conns, ch.ws->server->opts.conn_close_cb);
  if (ch.own)
    uvip_server_close_conns(ch.own);
}

static void on_own_closed(uvip_server_t *s) {
  (void)s;
  /* Freed after this returns: nothing may read it any more. */
  ch.own = NULL;
  ch.own_closed = true;
  want_flush();
}

static void stop(void) {
  uvip_workers_t *ws = ch.ws;
  if (ch.stopping)
    return;
  ch.stopping = true;
  /* Connections queued for moving go back, so that they close below. */
  if (ch.ho)
    uvip__wk_ho_abort(ch.ho);
  /* The last counts reported are those from before the stop; the
   * periodic report ends with it (its server is being closed). */
  send_stats();
  uv_timer_stop(&ch.timer);
  close_conns();
  if (ch.own)
    uvip_server_close(ch.own, on_own_closed);
  if (ws->opts.exit_cb)
    ws->opts.exit_cb(&ch.loop, ch.wk->index, ws->opts.arg);
  want_flush();
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  (void)h;
  (void)hint;
  *buf = uv_buf_init(ch.rbuf, sizeof(ch.rbuf));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  const char *p = buf->base;
  (void)s;
  if (n < 0) {
    /* The acceptor is gone: nobody will hand us anything or count what we
     * hold. */
    fflush(NULL);
    child_exit(0);
  }
  while (n > 0 && !ch.done) {
    size_t need = sizeof(uvip__msg_t), take;
    uvip__msg_t m;
    /* A MOVED message's blob follows it. */
    if (ch.plen >= sizeof(m)) {
      memcpy(&m, ch.part, sizeof(m));
      if (m.kind == UVIP__MSG_MOVED && m.blob_len <= UVIP_HANDOVER_BLOB_MAX)
        need += m.blob_len;
    }
    take = need - ch.plen;
    if ((size_t)n < take)
      take = (size_t)n;
    memcpy(ch.part + ch.plen, p, take);
    ch.plen += take;
    p += take;
    n -= (ssize_t)take;
    if (ch.plen < need)
      continue;
    memcpy(&m, ch.part, sizeof(m));
    if (m.kind == UVIP__MSG_MOVED && m.blob_len <= UVIP_HANDOVER_BLOB_MAX &&
        need == sizeof(m) && m.blob_len > 0)
      continue; /* the header only: now the blob */
    ch.plen = 0;
    if (m.kind == UVIP__MSG_STOP)
      stop();
    else if (ch.stopping)
      continue; /* everything is closing already */
    else if (m.kind == UVIP__MSG_CONN ||
             (m.kind == UVIP__MSG_MOVED && m.blob_len <= UVIP_HANDOVER_BLOB_MAX))
      take_conn(&m, ch.part + sizeof(m));
    else if (m.kind == UVIP__MSG_HANDOVER)
      take_handover(&m);
    else if (m.kind == UVIP__MSG_CLOSE_CONNS)
      close_conns();
    else if (m.kind == UVIP__MSG_STOP_LISTEN && ch.own)
      uvip__wk_own_stop(ch.own);
  }
}

static int start_own(void) {
  int r = uvip__wk_own_server(ch.ws, &ch.loop, &ch.own, NULL, 0);
  if (r == 0)
    uv_timer_start(&ch.timer, on_timer, UVIP__WK_REPORT_MS, UVIP__WK_REPORT_MS);
  return r;
}

void uvip__wk_child_main(uvip__wk_t *wk, int fd) {
  uvip_workers_t *ws = wk->ws;
  uvip_addrs_t *none;
  pid_t parent = getppid();
  int r;

  /* The parent's death must not leave a million connections behind. */
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent)
    child_exit(0);
  reset_signals();
  close_inherited_sockets(ws, fd);
  raise_nofile();

  memset(&ch, 0, sizeof(ch));
  ch.wk = wk;
  ch.ws = ws;
  if ((r = uv_loop_init(&ch.loop)) != 0)
    die(fd, r);
  ch.loop.data = wk;
  uv_check_init(&ch.loop, &ch.check);
  uv_idle_init(&ch.loop, &ch.idle);
  uv_timer_init(&ch.loop, &ch.timer);
  if ((r = uvip_addrs_new(&none)) != 0 ||
      (r = uvip_server_new(&ch.loop, none, NULL, &ch.shell)) != 0)
    die(fd, r);
  uvip_addrs_free(none);
  ch.shell->loop = NULL;
  ch.shell->remote_closed = child_closed;
  ch.shell->data = ws->server->data;
  if (ws->opts.balance == UVIP_BALANCE_REUSEPORT && (r = start_own()) != 0)
    die(fd, r);
  if (ws->opts.init_cb)
    ws->opts.init_cb(&ch.loop, wk->index, ws->opts.arg);
  send_blocking(fd, UVIP__REP_READY, 0);
  uv_pipe_init(&ch.loop, &ch.pipe, 1);
  if ((r = uv_pipe_open(&ch.pipe, fd)) != 0 ||
      (r = uv_read_start((uv_stream_t *)&ch.pipe, on_alloc, on_read)) != 0)
    child_exit(3);
  uv_run(&ch.loop, UV_RUN_DEFAULT);
  fflush(NULL);
  child_exit(0);
}
