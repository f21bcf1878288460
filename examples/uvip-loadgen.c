/* uvip-loadgen: opens many TCP connections to a pool of server VIPs from a
 * pool of source addresses, through the uvip connector.
 *
 *   uvip-loadgen [--target SPEC]... [--port P] [--conns N]
 *                [--sources SPEC]... [--procs N] [--hold] [--seconds S]
 *                [--echo] [--churn RATE] [--json]
 *
 * Connections go to the targets round-robin. With --procs N the work is
 * split over N forked processes (one descriptor limit each); they send a
 * fixed-size report over a pipe every half second and the parent prints
 * the sums. A worker that is done keeps its connections until every worker
 * is (the parent closes the release pipe then): tearing down thousands of
 * connections costs as much CPU as opening them, and would slow the
 * workers still connecting. A held connection costs the connector's uvip_outconn_t and
 * nothing else: its state lives in the handle's data field, reads land in
 * one shared buffer and the echo byte goes out with uv_try_write.
 * SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"
#include "loadgen-report.h"

#define DEFAULT_TARGET "127.0.0.1"
/* Connects in flight (and echoes not yet back) per process: enough to keep
 * the kernel busy, few enough not to overflow the server's SYN queues. */
#define PENDING_MAX 1000
#define REPORT_MS 500
#define FD_SLACK 64 /* descriptors for everything that is not a connection */

typedef union {
  struct sockaddr sa;
  struct sockaddr_in in;
  struct sockaddr_in6 in6;
} lg_sa_t;

/* Connection state, kept in the uv_tcp_t's data field: these flags in the
 * low bits, and above them when the connect started (microseconds, modulo
 * the bits left: only differences are used). */
enum { C_SETTLED = 1, C_ESTABLISHED = 2, C_DROPPED = 4, C_FLAGS = 7 };
#define C_TIME_SHIFT 3

/* Options. */
static lg_opts_t opts = {.conns = 1000, .procs = 1};

/* Worker state. */
static uv_loop_t *loop;
static uvip_connector_t *connector;
static uv_timer_t report_timer, deadline_timer, churn_timer;
static uint64_t share;        /* this worker's part of --conns */
static uint64_t first_index;  /* its first global connection index */
static uint64_t started;      /* initial connections started */
static uint64_t churned;      /* replacements done */
static double churn_rate;     /* this worker's replacements per second */
static uint64_t churn_t0;     /* when replacing started; 0 = not yet */
static uint64_t t0;           /* uv_now() at start */
static int report_fd = -1;    /* -1: single process, report in-process */
static int release_fd = -1;   /* workers: EOF once every worker is done */
static uv_pipe_t release_pipe;
static int awaiting_release;
static int finishing;
static int draining; /* churn over: waiting for connects in flight */
static lg_report_t rep;
static uvip_outconn_t **ring; /* settled connections, oldest first (churn) */
static size_t ring_cap, ring_head, ring_len;
static char read_buf[64];

/* Parent (or single-process) aggregation. */
static lg_tally_t tally;

/* ------------------------------------------------------------------------ */

static void count_failure(int code) {
  rep.failed++;
  lg_add_err(&rep, code, 1);
}

static uintptr_t cstate(uvip_outconn_t *oc) {
  return (uintptr_t)uvip_outconn_tcp(oc)->data & C_FLAGS;
}

static void set_cstate(uvip_outconn_t *oc, uintptr_t s) {
  uintptr_t *d = (uintptr_t *)&uvip_outconn_tcp(oc)->data;
  *d = (*d & ~(uintptr_t)C_FLAGS) | s;
}

static uintptr_t now_us(void) {
  return (uintptr_t)(uv_hrtime() / 1000);
}

/* Microseconds since the connection's connect started. */
static uint64_t connect_us(uvip_outconn_t *oc) {
  uintptr_t start = (uintptr_t)uvip_outconn_tcp(oc)->data >> C_TIME_SHIFT;
  return (uint64_t)((now_us() - start) &
                    (UINTPTR_MAX >> C_TIME_SHIFT));
}

static void pump(void);
static void finish(int code);

static void on_conn_closed(uvip_outconn_t *oc) {
  if (cstate(oc) & C_ESTABLISHED)
    rep.open--;
}

static void settle(uvip_outconn_t *oc) {
  set_cstate(oc, cstate(oc) | C_SETTLED);
  rep.pending--;
  if (opts.echo)
    rep.verified++;
  if (ring && ring_len < ring_cap) {
    ring[(ring_head + ring_len) % ring_cap] = oc;
    ring_len++;
  }
  if (started == share && rep.pending == 0 && rep.settle_ms == 0 &&
      rep.failed == 0)
    rep.settle_ms = uv_now(loop) - t0 + 1;
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  (void)h;
  (void)hint;
  *buf = uv_buf_init(read_buf, sizeof(read_buf));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  uvip_outconn_t *oc = uvip_outconn_from_tcp((uv_tcp_t *)s);
  uintptr_t st = cstate(oc);
  if (n == 0)
    return;
  if (n > 0 && opts.echo && !(st & C_SETTLED)) {
    if (n == 1 && buf->base[0] == 'u') {
      settle(oc);
      pump();
      return;
    }
    n = UV_EPROTO; /* not our byte back */
  } else if (n > 0) {
    return; /* nothing else is expected; ignore */
  }
  /* The peer closed or reset: a failure whether or not it was settled. */
  if (finishing)
    return;
  count_failure((int)n);
  if (!(st & C_SETTLED)) {
    rep.pending--;
    pump();
  }
  uv_read_stop(s);
  if (ring && (st & C_SETTLED)) {
    /* Still in the ring: the churn closes it when its turn comes. */
    set_cstate(oc, st | C_DROPPED);
    return;
  }
  uvip_outconn_close(oc, on_conn_closed);
}

static void on_connect(uvip_outconn_t *oc, int status,
                       const struct sockaddr *source) {
  uv_buf_t b = uv_buf_init("u", 1);
  (void)source;
  if (status < 0) {
    if (finishing)
      return;
    rep.pending--;
    count_failure(status);
    pump();
    return;
  }
  lg_add_latency(&rep, connect_us(oc));
  rep.established++;
  rep.open++;
  if (rep.open > rep.peak_open)
    rep.peak_open = rep.open;
  set_cstate(oc, C_ESTABLISHED);
  if (uv_read_start(uvip_outconn_stream(oc), on_alloc, on_read) != 0) {
    rep.pending--;
    count_failure(UV_EIO);
    uvip_outconn_close(oc, on_conn_closed);
    pump();
    return;
  }
  if (!opts.echo) {
    settle(oc);
    pump();
    return;
  }
  /* One byte on a fresh socket always fits its send buffer. */
  status = uv_try_write(uvip_outconn_stream(oc), &b, 1);
  if (status != 1) {
    rep.pending--;
    count_failure(status < 0 ? status : UV_EIO);
    uv_read_stop(uvip_outconn_stream(oc));
    uvip_outconn_close(oc, on_conn_closed);
    pump();
  }
}

/* Starts connection number `index` (global, for the round-robin). */
static int start_one(uint64_t index) {
  const struct sockaddr *dst =
      uvip_addrs_at(opts.targets, index % opts.ntargets);
  int r;
  rep.attempted++;
  r = uvip_connect(connector, dst, (void *)(now_us() << C_TIME_SHIFT),
                   on_connect, NULL);
  if (r == 0) {
    rep.pending++;
    return 0;
  }
  count_failure(r);
  if (r == UV_EADDRNOTAVAIL && index % opts.ntargets < LG_MAX_TGT)
    rep.exhausted |= 1ull << (index % opts.ntargets);
  return r;
}

/* Keeps PENDING_MAX initial connections in flight until the share is
 * started; in plain mode, ends the run when everything has settled. */
static void pump(void) {
  while (!finishing && started < share && rep.pending < PENDING_MAX) {
    start_one(first_index + started * opts.procs);
    started++;
  }
  if (!finishing && started == share && rep.pending == 0 &&
      (draining || (!opts.hold && opts.churn == 0)))
    finish(0);
}

static void on_churn(uv_timer_t *t) {
  uint64_t due;
  int budget = 1000; /* a stalled loop does not turn into a burst */
  (void)t;
  if (churn_t0 == 0) {
    /* Replacing starts once the initial connections are all settled, so
     * that the population stays at --conns. */
    if (started < share || rep.pending > 0)
      return;
    churn_t0 = uv_now(loop);
  }
  due = (uint64_t)(churn_rate * (double)(uv_now(loop) - churn_t0) / 1000.0);
  while (churned < due && budget-- > 0 && rep.pending < PENDING_MAX &&
         !finishing) {
    if (ring_len > 0) {
      uvip_outconn_t *oc = ring[ring_head];
      ring_head = (ring_head + 1) % ring_cap;
      ring_len--;
      uv_read_stop(uvip_outconn_stream(oc));
      uvip_outconn_close(oc, on_conn_closed);
    }
    if (rep.open + rep.pending >= ring_cap)
      break;
    start_one(first_index + (share + churned) * opts.procs);
    churned++;
  }
}

/* A prefix pool knows its pairs in use only: the range is read on any
 * address of the prefix, and the connections in use are the total (per
 * target with one target). */
static void fill_report_prefix(void) {
  lg_sa_t a;
  uvip_connector_ports_t p;
  uvip_connector_stats_t st;
  size_t t;
  memset(&a, 0, sizeof(a));
  a.sa.sa_family = (sa_family_t)opts.prefix.family;
  if (opts.prefix.family == AF_INET)
    a.in.sin_addr = opts.prefix.addr.v4;
  else
    a.in6.sin6_addr = opts.prefix.addr.v6;
  uvip_connector_stats(connector, 0, &st);
  rep.src_addrs = uvip_connector_prefix_in_use(connector);
  for (t = 0; t < opts.ntargets && t < LG_MAX_TGT; t++) {
    if (uvip_connector_ports(connector, &a.sa,
                             uvip_addrs_at(opts.targets, t), &p) == 0)
      rep.range = p.range;
    rep.in_use[t] = opts.ntargets == 1 ? (uint32_t)st.in_use : 0;
  }
}

static void fill_report(void) {
  size_t t, i;
  const uvip_connector_ports_t zero = {0, 0, 0, 0};
  if (opts.has_prefix) {
    fill_report_prefix();
    return;
  }
  for (t = 0; t < opts.ntargets && t < LG_MAX_TGT; t++) {
    const struct sockaddr *ta = uvip_addrs_at(opts.targets, t);
    uint64_t n = 0;
    for (i = 0; i < uvip_connector_source_count(connector); i++) {
      uvip_connector_ports_t p = zero;
      const struct sockaddr *sa = uvip_connector_source(connector, i);
      if (sa == NULL || sa->sa_family == ta->sa_family)
        uvip_connector_ports(connector, sa, ta, &p);
      if (p.range)
        rep.range = p.range;
      n += p.in_use;
    }
    rep.in_use[t] = (uint32_t)n;
  }
}

static void emit_report(void) {
  fill_report();
  if (report_fd < 0) {
    tally.reps[0] = rep;
    return;
  }
  /* A full pipe means the parent is gone or stuck; a lost report is
   * better than a stalled worker. */
  if (write(report_fd, &rep, sizeof(rep)) != (ssize_t)sizeof(rep) &&
      errno != EAGAIN)
    report_fd = -2;
}

static void on_report_timer(uv_timer_t *t) {
  (void)t;
  emit_report();
  if (report_fd == -1)
    lg_print_progress(&tally, uv_now(loop) - t0);
}

static void on_connector_closed(uvip_connector_t *c) {
  (void)c;
  connector = NULL;
  uv_close((uv_handle_t *)&report_timer, NULL);
  uv_close((uv_handle_t *)&deadline_timer, NULL);
  uv_close((uv_handle_t *)&churn_timer, NULL);
  ex_signals_close();
}

/* The parent closed the release pipe (or died, or a signal came): every
 * worker is done, the connections can go. */
static void release(void) {
  if (!awaiting_release)
    return;
  awaiting_release = 0;
  uv_close((uv_handle_t *)&release_pipe, NULL);
  uvip_connector_close(connector, on_connector_closed);
}

static void on_release(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  (void)s;
  (void)buf;
  if (n < 0)
    release();
}

/* Ends the run: what has not settled by now counts as failed with `code`
 * (ETIMEDOUT for the deadline, ECANCELED for a signal). */
static void finish(int code) {
  uint64_t left;
  if (finishing)
    return;
  if (code != 0) {
    left = rep.pending + (share - started);
    if (left) {
      rep.failed += left;
      lg_add_err(&rep, code, left);
      rep.attempted += share - started;
    }
    rep.pending = 0;
  }
  finishing = 1;
  rep.done = 1;
  emit_report();
  uv_timer_stop(&report_timer);
  uv_timer_stop(&deadline_timer);
  uv_timer_stop(&churn_timer);
  if (release_fd >= 0 && uv_pipe_init(loop, &release_pipe, 0) == 0) {
    if (uv_pipe_open(&release_pipe, release_fd) == 0 &&
        uv_read_start((uv_stream_t *)&release_pipe, on_alloc,
                      on_release) == 0) {
      release_fd = -1;
      awaiting_release = 1;
      return;
    }
    uv_close((uv_handle_t *)&release_pipe, NULL); /* closes release_fd */
    release_fd = -1;
  }
  uvip_connector_close(connector, on_connector_closed);
}

static void on_deadline(uv_timer_t *t) {
  (void)t;
  if (opts.churn > 0 && !draining && started == share) {
    /* Replacements still connecting are not failures of the run: give
     * them a bounded grace period. */
    draining = 1;
    uv_timer_stop(&churn_timer);
    uv_timer_start(&deadline_timer, on_deadline, 5000, 0);
    pump();
    return;
  }
  finish(UV_ETIMEDOUT);
}

static void on_worker_signal(int signum) {
  (void)signum;
  finish(UV_ECANCELED);
  release();
}

/* Runs worker k of n. Returns 0, or 1 on a setup error. */
static int run_worker(uint64_t k, uint64_t n) {
  uvip_connector_t *c;
  int r;

  loop = uv_default_loop();
  share = opts.conns / n + (k < opts.conns % n ? 1 : 0);
  first_index = k;
  churn_rate = opts.churn / (double)n;
  if (opts.churn > 0) {
    ring_cap = share + PENDING_MAX + 1;
    ring = calloc(ring_cap, sizeof(*ring));
    if (ring == NULL) {
      fprintf(stderr, "%s: out of memory\n", ex_prog);
      return 1;
    }
  }
  if (opts.has_prefix) {
    char err[256];
    r = uvip_connector_new_prefix(loop, &opts.prefix, UVIP_PREFIX_SPREAD, NULL,
                                  err, sizeof(err), &c);
    if (r != 0) {
      fprintf(stderr, "%s: --sources: %s\n", ex_prog, err);
      return 1;
    }
  } else {
    r = uvip_connector_new(loop, opts.sources, NULL, &c);
    if (r != 0) {
      fprintf(stderr, "%s: connector: %s\n", ex_prog, uv_strerror(r));
      return 1;
    }
  }
  connector = c;
  t0 = uv_now(loop);
  uv_timer_init(loop, &report_timer);
  uv_timer_init(loop, &deadline_timer);
  uv_timer_init(loop, &churn_timer);
  uv_timer_start(&report_timer, on_report_timer,
                 report_fd == -1 ? 1000 : REPORT_MS,
                 report_fd == -1 ? 1000 : REPORT_MS);
  uv_timer_start(&deadline_timer, on_deadline, opts.seconds * 1000, 0);
  if (opts.churn > 0)
    uv_timer_start(&churn_timer, on_churn, 10, 10);
  ex_on_signal(loop, on_worker_signal);
  pump();
  uv_run(loop, UV_RUN_DEFAULT);
  free(ring);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Parent of --procs workers                                                */
/* ------------------------------------------------------------------------ */

typedef struct {
  uv_pipe_t pipe;
  pid_t pid;
  size_t idx;
  size_t have;
  int final;
  int gone; /* its report pipe closed */
  char buf[sizeof(lg_report_t)];
} child_t;

static child_t *children;
static size_t children_open;
static uv_timer_t progress_timer;
static int release_w = -1; /* closed once every worker is done */

/* Every worker sent its final report or is gone: let them all close. */
static void maybe_release(void) {
  size_t i;
  if (release_w < 0)
    return;
  for (i = 0; i < tally.nreps; i++)
    if (!children[i].final && !children[i].gone)
      return;
  close(release_w);
  release_w = -1;
}

static void on_child_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  child_t *ch = (child_t *)h;
  (void)hint;
  *buf = uv_buf_init(ch->buf + ch->have, (unsigned)(sizeof(ch->buf) - ch->have));
}

static void on_child_closed(uv_handle_t *h) {
  ((child_t *)h)->gone = 1;
  maybe_release();
  if (--children_open == 0) {
    size_t i;
    uv_close((uv_handle_t *)&progress_timer, NULL);
    ex_signals_close();
    tally.got_final_all = 1;
    for (i = 0; i < tally.nreps; i++)
      tally.got_final_all &= children[i].final;
  }
}

static void on_child_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  child_t *ch = (child_t *)s;
  (void)buf;
  if (n < 0) {
    uv_close((uv_handle_t *)s, on_child_closed);
    return;
  }
  ch->have += (size_t)n;
  if (ch->have == sizeof(lg_report_t)) {
    memcpy(&tally.reps[ch->idx], ch->buf, sizeof(lg_report_t));
    ch->final |= tally.reps[ch->idx].done != 0;
    ch->have = 0;
    maybe_release();
  }
}

static void on_progress(uv_timer_t *t) {
  (void)t;
  lg_print_progress(&tally, uv_now(loop) - t0);
}

static void on_parent_signal(int signum) {
  size_t i;
  for (i = 0; i < tally.nreps; i++)
    kill(children[i].pid, signum);
}

static int run_parent(void) {
  size_t i;
  int status, rc;
  pid_t parent = getpid();
  int rel[2];
  children = calloc(opts.procs, sizeof(*children));
  if (children == NULL)
    return 1;
  if (pipe2(rel, O_CLOEXEC) != 0) {
    fprintf(stderr, "%s: pipe: %s\n", ex_prog, strerror(errno));
    return 1;
  }
  release_w = rel[1];
  fflush(stdout);
  fflush(stderr);
  for (i = 0; i < opts.procs; i++) {
    int fds[2];
    pid_t pid;
    if (pipe2(fds, O_CLOEXEC) != 0) {
      fprintf(stderr, "%s: pipe: %s\n", ex_prog, strerror(errno));
      return 1;
    }
    pid = fork();
    if (pid < 0) {
      fprintf(stderr, "%s: fork: %s\n", ex_prog, strerror(errno));
      return 1;
    }
    if (pid == 0) {
      size_t j;
      /* Out of the terminal's process group, so that Ctrl-C reaches the
       * workers once (forwarded by the parent), not twice; and gone with
       * the parent if it dies. */
      setpgid(0, 0);
      prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (getppid() != parent)
        exit(1);
      close(fds[0]);
      close(rel[1]);
      release_fd = rel[0];
      for (j = 0; j < i; j++)
        close((int)(intptr_t)children[j].pipe.data);
      /* A full pipe must not stall the worker: see emit_report(). */
      fcntl(fds[1], F_SETFL, O_NONBLOCK);
      report_fd = fds[1];
      tally.nreps = 1;
      exit(run_worker(i, opts.procs));
    }
    close(fds[1]);
    children[i].pid = pid;
    children[i].idx = i;
    children[i].pipe.data = (void *)(intptr_t)fds[0];
  }
  close(rel[0]);
  loop = uv_default_loop();
  t0 = uv_now(loop);
  for (i = 0; i < opts.procs; i++) {
    int fd = (int)(intptr_t)children[i].pipe.data;
    uv_pipe_init(loop, &children[i].pipe, 0);
    uv_pipe_open(&children[i].pipe, fd);
    uv_read_start((uv_stream_t *)&children[i].pipe, on_child_alloc,
                  on_child_read);
    children_open++;
  }
  uv_timer_init(loop, &progress_timer);
  uv_timer_start(&progress_timer, on_progress, 1000, 1000);
  ex_on_signal(loop, on_parent_signal);
  uv_run(loop, UV_RUN_DEFAULT);
  rc = lg_print_summary(&tally, &opts, uv_now(loop) - t0);
  for (i = 0; i < opts.procs; i++) {
    if (waitpid(children[i].pid, &status, 0) == children[i].pid &&
        !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
      fprintf(stderr, "%s: worker %zu (pid %d) %s %d\n", ex_prog, i,
              (int)children[i].pid,
              WIFSIGNALED(status) ? "killed by signal" : "exited with",
              WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
      rc = 1;
    }
  }
  free(children);
  return rc;
}

/* ------------------------------------------------------------------------ */

static void usage(FILE *f) {
  fprintf(f,
          "usage: %s [options]\n"
          "  --target SPEC    server VIPs (repeatable; default " DEFAULT_TARGET ")\n"
          "  --port P         port for targets without one (default 7000)\n"
          "  --conns N        connections to open (default 1000)\n"
          "  --sources SPEC   source addresses (repeatable; default: the kernel's choice);\n"
          "                   one prefix A/N alone is a prefix pool: any address of it,\n"
          "                   never expanded (needs a local route, e.g. 'ip -6 route\n"
          "                   add local fd00:1::/64 dev lo')\n"
          "  --procs N        worker processes, each with its own descriptor limit (default 1)\n"
          "  --hold           keep the connections open until --seconds have passed\n"
          "  --seconds S      run length with --hold/--churn (default 10); otherwise\n"
          "                   the deadline for establishing (default 60)\n"
          "  --echo           send a byte on every connection and check its echo\n"
          "  --churn RATE     close the oldest and open a new connection RATE times a\n"
          "                   second, for --seconds\n"
          "  --json           print the summary as JSON on stdout (text goes to stderr)\n"
          "Exit status: 0 when every connection succeeded, 1 otherwise, 2 on usage errors.\n",
          ex_prog);
}

/* "A/N" alone: a prefix pool, never expanded. Anything else (addresses,
 * ranges, lists) is an address spec. */
static int is_prefix_spec(const char *spec) {
  return strchr(spec, '/') != NULL && strchr(spec, ',') == NULL &&
         strchr(spec, '-') == NULL;
}

static void parse_source_prefix(const char *spec, size_t nspecs) {
  char err[256];
  if (nspecs > 1)
    ex_usage_error("--sources: the prefix pool %s cannot be mixed with other "
                   "--sources",
                   spec);
  if (uvip_prefix_parse(spec, &opts.prefix, err, sizeof(err)) != 0)
    ex_usage_error("--sources: %s", err);
  opts.has_prefix = 1;
}

/* Every target must be of the prefix's family, and the prefix must be
 * local (a local route): told once here rather than by every worker. */
static void check_prefix_targets(void) {
  char pfx[UVIP_PREFIXSTRLEN], ta[UVIP_ADDRSTRLEN], err[256];
  uvip_connector_t *c;
  uv_loop_t l;
  size_t t;
  int r;
  uvip_prefix_format(&opts.prefix, pfx, sizeof(pfx));
  for (t = 0; t < opts.ntargets; t++) {
    const struct sockaddr *sa = uvip_addrs_at(opts.targets, t);
    if (sa->sa_family == opts.prefix.family)
      continue;
    uvip_addr_format(sa, 1, ta, sizeof(ta));
    ex_usage_error("--sources %s is %s but --target %s is not: mixing "
                   "families",
                   pfx, opts.prefix.family == AF_INET6 ? "IPv6" : "IPv4", ta);
  }
  uv_loop_init(&l);
  r = uvip_connector_new_prefix(&l, &opts.prefix, UVIP_PREFIX_SPREAD, NULL,
                                err, sizeof(err), &c);
  if (r == 0)
    uvip_connector_close(c, NULL);
  uv_run(&l, UV_RUN_DEFAULT);
  uv_loop_close(&l);
  if (r != 0) {
    fprintf(stderr, "%s: --sources: %s\n", ex_prog, err);
    exit(1);
  }
}

/* Raises the soft descriptor limit to the hard one and checks that a
 * worker's share fits under it. */
static void check_fd_limit(void) {
  struct rlimit rl;
  uint64_t per, need, usable;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
    return;
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  per = opts.conns / opts.procs + (opts.conns % opts.procs ? 1 : 0);
  need = per + (opts.churn > 0 ? PENDING_MAX : 0) + FD_SLACK;
  if (rl.rlim_cur == RLIM_INFINITY || need <= rl.rlim_cur)
    return;
  usable = rl.rlim_cur > FD_SLACK + (opts.churn > 0 ? PENDING_MAX : 0) + 1
               ? rl.rlim_cur - FD_SLACK - (opts.churn > 0 ? PENDING_MAX : 0)
               : 1;
  ex_usage_error("%llu connections per process exceed the descriptor limit "
                 "(%llu); use --procs %llu or more",
                 (unsigned long long)per, (unsigned long long)rl.rlim_cur,
                 (unsigned long long)((opts.conns + usable - 1) / usable));
}

int main(int argc, char **argv) {
  enum { O_TARGET = 256, O_PORT, O_CONNS, O_SOURCES, O_PROCS, O_HOLD,
         O_SECONDS, O_ECHO, O_CHURN, O_JSON, O_HELP };
  static const struct option longopts[] = {
      {"target", required_argument, NULL, O_TARGET},
      {"port", required_argument, NULL, O_PORT},
      {"conns", required_argument, NULL, O_CONNS},
      {"sources", required_argument, NULL, O_SOURCES},
      {"procs", required_argument, NULL, O_PROCS},
      {"hold", no_argument, NULL, O_HOLD},
      {"seconds", required_argument, NULL, O_SECONDS},
      {"echo", no_argument, NULL, O_ECHO},
      {"churn", required_argument, NULL, O_CHURN},
      {"json", no_argument, NULL, O_JSON},
      {"help", no_argument, NULL, O_HELP},
      {NULL, 0, NULL, 0}};
  const char *tspecs[64], *sspecs[64];
  size_t ntspecs = 0, nsspecs = 0, i;
  int port = 7000, opt, rc;

  ex_init(argv[0]);
  while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    switch (opt) {
    case O_TARGET:
    case O_SOURCES:
      if ((opt == O_TARGET ? ntspecs : nsspecs) == 64)
        ex_usage_error("too many --%s options",
                       opt == O_TARGET ? "target" : "sources");
      if (opt == O_TARGET)
        tspecs[ntspecs++] = optarg;
      else
        sspecs[nsspecs++] = optarg;
      break;
    case O_PORT: port = (int)ex_parse_num("--port", optarg, 1, 65535); break;
    case O_CONNS: opts.conns = ex_parse_num("--conns", optarg, 0, 100000000); break;
    case O_PROCS: opts.procs = ex_parse_num("--procs", optarg, 1, 1024); break;
    case O_HOLD: opts.hold = 1; break;
    case O_SECONDS: opts.seconds = ex_parse_num("--seconds", optarg, 1, 86400); break;
    case O_ECHO: opts.echo = 1; break;
    case O_CHURN: opts.churn = (double)ex_parse_num("--churn", optarg, 1, 10000000); break;
    case O_JSON: opts.json = 1; break;
    case O_HELP: usage(stdout); return 0;
    default:
      if (optopt)
        ex_usage_error("option '--%s' needs a value or is unknown; see --help",
                       argv[optind - 1] + 2);
      ex_usage_error("unknown option '%s'; see --help", argv[optind - 1]);
    }
  }
  if (optind < argc)
    ex_usage_error("unexpected argument '%s'; see --help", argv[optind]);
  if (opts.seconds == 0)
    opts.seconds = opts.hold || opts.churn > 0 ? 10 : 60;

  if (uvip_addrs_new(&opts.targets) != 0 || uvip_addrs_new(&opts.sources) != 0)
    ex_usage_error("out of memory");
  if (ntspecs == 0)
    tspecs[ntspecs++] = DEFAULT_TARGET;
  for (i = 0; i < ntspecs; i++)
    ex_parse_spec("--target", opts.targets, tspecs[i], port);
  for (i = 0; i < nsspecs; i++) {
    if (is_prefix_spec(sspecs[i])) {
      parse_source_prefix(sspecs[i], nsspecs);
      continue;
    }
    ex_parse_spec("--sources", opts.sources, sspecs[i], 0);
  }
  for (i = 0; i < uvip_addrs_count(opts.sources); i++) {
    const struct sockaddr *sa = uvip_addrs_at(opts.sources, i);
    if ((sa->sa_family == AF_INET &&
         ((const struct sockaddr_in *)sa)->sin_port != 0) ||
        (sa->sa_family == AF_INET6 &&
         ((const struct sockaddr_in6 *)sa)->sin6_port != 0))
      ex_usage_error("--sources: addresses take no port (the kernel picks it)");
  }
  opts.ntargets = uvip_addrs_count(opts.targets);
  if (opts.has_prefix)
    check_prefix_targets();
  check_fd_limit();
  signal(SIGPIPE, SIG_IGN);

  tally.nreps = opts.procs;
  tally.reps = calloc(tally.nreps, sizeof(*tally.reps));
  if (tally.reps == NULL)
    ex_usage_error("out of memory");
  if (opts.procs == 1) {
    rc = run_worker(0, 1);
    if (rc == 0) {
      tally.got_final_all = 1;
      rc = lg_print_summary(&tally, &opts, uv_now(loop) - t0);
    }
  } else {
    rc = run_parent();
  }
  uv_loop_close(uv_default_loop());
  uvip_addrs_free(opts.targets);
  uvip_addrs_free(opts.sources);
  free(tally.reps);
  return rc;
}
