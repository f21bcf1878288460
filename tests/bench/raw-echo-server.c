/* raw-echo-server: the floor uvip-echo is measured against (issue 13). No
 * libuv and no uvip on the data path (uvip only parses the address spec):
 * N processes, each with one SO_REUSEPORT listener per VIP, an
 * edge-triggered epoll set, accept4() until EAGAIN, and an echo of what
 * each connection sends. The kernel spreads the connections over the
 * processes by its reuseport hash.
 *
 *   raw-echo-server --listen SPEC [--listen SPEC]... [--port P] [--procs N]
 *                   [--backlog N]
 *
 * Prints "ready N processes" once every process listens; SIGTERM (or
 * SIGINT) ends every process, and each prints "proc I: peak P accepted A"
 * (the most connections it held at once and its total) before exiting.
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uvip.h>

static volatile sig_atomic_t stop;
static void on_signal(int sig) {
  (void)sig;
  stop = 1;
}

/* Listener descriptors are below this mark; anything above is a client. */
static int nlisten;
static int listen_fds[UVIP_ADDRS_MAX];

static int listen_one(const struct sockaddr *sa, int backlog) {
  int one = 1;
  int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
  socklen_t len = sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                            : sizeof(struct sockaddr_in);
  if (bind(fd, sa, len) != 0 || listen(fd, backlog) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

static int serve(unsigned index, const uvip_addrs_t *addrs, int backlog,
                 int ready_fd) {
  struct epoll_event ev, evs[256];
  unsigned long long active = 0, peak = 0, accepted = 0;
  int ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0)
    return 1;
  nlisten = (int)uvip_addrs_count(addrs);
  for (int i = 0; i < nlisten; i++) {
    listen_fds[i] = listen_one(uvip_addrs_at(addrs, (size_t)i), backlog);
    if (listen_fds[i] < 0) {
      perror("raw-echo-server: listen");
      return 1;
    }
    ev.events = EPOLLIN;
    ev.data.u64 = (uint64_t)i;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, listen_fds[i], &ev) != 0)
      return 1;
  }
  (void)!write(ready_fd, "r", 1);
  close(ready_fd);
  while (!stop) {
    int n = epoll_wait(ep, evs, 256, -1);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return 1;
    }
    for (int k = 0; k < n; k++) {
      uint64_t id = evs[k].data.u64;
      if (id < (uint64_t)nlisten) {
        for (;;) {
          int c = accept4(listen_fds[id], NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (c < 0)
            break; /* EAGAIN, or out of descriptors (a floor program: it
                      * retries on the next wake-up, no back-off) */
          ev.events = EPOLLIN | EPOLLRDHUP | EPOLLET;
          ev.data.u64 = (uint64_t)c + (uint64_t)UVIP_ADDRS_MAX;
          if (epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev) != 0) {
            close(c);
            continue;
          }
          accepted++;
          if (++active > peak)
            peak = active;
        }
        continue;
      }
      int c = (int)(id - UVIP_ADDRS_MAX);
      char buf[4096];
      for (;;) {
        ssize_t r = read(c, buf, sizeof(buf));
        if (r > 0) {
          /* Echo payloads are a few bytes: the socket buffer takes them. */
          (void)!write(c, buf, (size_t)r);
          continue;
        }
        if (r < 0 && (errno == EAGAIN || errno == EINTR))
          break;
        close(c); /* end of stream or an error */
        active--;
        break;
      }
    }
  }
  printf("proc %u: peak %llu accepted %llu\n", index, peak, accepted);
  fflush(stdout);
  return 0;
}

int main(int argc, char **argv) {
  static const struct option longopts[] = {{"listen", required_argument, 0, 'l'},
                                           {"port", required_argument, 0, 'p'},
                                           {"procs", required_argument, 0, 'n'},
                                           {"backlog", required_argument, 0, 'b'},
                                           {0, 0, 0, 0}};
  const char *specs[64];
  size_t nspecs = 0;
  int port = 7000, backlog = 65535, opt;
  unsigned procs = 1;
  uvip_addrs_t *addrs;
  char err[256];

  while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    switch (opt) {
    case 'l':
      if (nspecs < 64)
        specs[nspecs++] = optarg;
      break;
    case 'p': port = atoi(optarg); break;
    case 'n': procs = (unsigned)strtoul(optarg, NULL, 10); break;
    case 'b': backlog = atoi(optarg); break;
    default:
      fprintf(stderr, "usage: raw-echo-server --listen SPEC... [--port P] "
                      "[--procs N] [--backlog N]\n");
      return 2;
    }
  }
  if (nspecs == 0 || procs == 0 || procs > 1024 || port <= 0 || port > 65535 ||
      uvip_addrs_new(&addrs) != 0) {
    fprintf(stderr, "raw-echo-server: need --listen, --procs 1..1024, --port 1..65535\n");
    return 2;
  }
  for (size_t i = 0; i < nspecs; i++) {
    if (uvip_addrs_parse(addrs, specs[i], port, err, sizeof(err)) != 0) {
      fprintf(stderr, "raw-echo-server: --listen %s: %s\n", specs[i], err);
      return 2;
    }
  }
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_signal; /* no SA_RESTART: epoll_wait returns EINTR */
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);

  int ready[2];
  if (pipe(ready) != 0)
    return 1;
  pid_t *pids = calloc(procs, sizeof(*pids));
  if (!pids)
    return 1;
  for (unsigned i = 0; i < procs; i++) {
    pids[i] = fork();
    if (pids[i] == 0) {
      close(ready[0]);
      _exit(serve(i, addrs, backlog, ready[1]));
    }
    if (pids[i] < 0) {
      perror("raw-echo-server: fork");
      stop = 1;
      procs = i;
      break;
    }
  }
  close(ready[1]);
  unsigned up = 0;
  char c;
  while (!stop && up < procs) {
    ssize_t r = read(ready[0], &c, 1);
    if (r == 1)
      up++;
    else if (r == 0 || errno != EINTR)
      break;
  }
  int rc = 0;
  if (up == procs && !stop) {
    printf("ready %u processes\n", procs);
    fflush(stdout);
    while (!stop)
      pause();
  } else {
    fprintf(stderr, "raw-echo-server: %u of %u processes listening\n", up, procs);
    rc = 1;
  }
  for (unsigned i = 0; i < procs; i++)
    kill(pids[i], SIGTERM);
  for (unsigned i = 0; i < procs; i++) {
    int st;
    while (waitpid(pids[i], &st, 0) < 0 && errno == EINTR)
      ;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
      rc = 1;
  }
  free(pids);
  uvip_addrs_free(addrs);
  return rc;
}
