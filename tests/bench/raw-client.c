/* raw-client: the floor uvip-loadgen is measured against (issue 13). No
 * libuv and no uvip on the data path (uvip only parses the address specs):
 * N processes, each opening its share of the connections one after the
 * other with a blocking connect() from a source bound with
 * IP_BIND_ADDRESS_NO_PORT (the kernel picks the port per 4-tuple), then,
 * with --echo, one byte sent and its echo read back. Connection g (over all
 * processes) uses source g % S and target (g / S) % T.
 *
 *   raw-client --target SPEC... --sources SPEC... [--port P] --conns N
 *              [--procs N] [--echo] [--hold S]
 *
 * Prints "established E failed F verified V in T s" once every process has
 * opened its share (T from the start to the last process done), then, with
 * --hold, keeps the connections S seconds (or until SIGTERM) and exits 0
 * when F is 0.
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uvip.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

static volatile sig_atomic_t stop;
static void on_signal(int sig) {
  (void)sig;
  stop = 1;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static socklen_t sa_len(const struct sockaddr *sa) {
  return sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                   : sizeof(struct sockaddr_in);
}

struct result {
  unsigned long long established, failed, verified;
};

static struct result run(unsigned p, unsigned procs, unsigned long long conns,
                         const uvip_addrs_t *targets, const uvip_addrs_t *sources,
                         int echo) {
  struct result res = {0, 0, 0};
  size_t nt = uvip_addrs_count(targets), ns = uvip_addrs_count(sources);
  int one = 1;
  for (unsigned long long g = p; g < conns && !stop; g += procs) {
    const struct sockaddr *dst = uvip_addrs_at(targets, (size_t)((g / (ns ? ns : 1)) % nt));
    int fd = socket(dst->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      res.failed++;
      continue;
    }
    if (ns) {
      const struct sockaddr *src = uvip_addrs_at(sources, (size_t)(g % ns));
      setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
      if (bind(fd, src, sa_len(src)) != 0) {
        close(fd);
        res.failed++;
        continue;
      }
    }
    if (connect(fd, dst, sa_len(dst)) != 0) {
      close(fd);
      res.failed++;
      continue;
    }
    res.established++;
    if (echo) {
      char c = 'x';
      if (write(fd, &c, 1) == 1 && read(fd, &c, 1) == 1 && c == 'x')
        res.verified++;
      else
        res.failed++;
    }
    /* The descriptor stays open: the connection is held until exit. */
  }
  return res;
}

int main(int argc, char **argv) {
  static const struct option longopts[] = {
      {"target", required_argument, 0, 't'}, {"sources", required_argument, 0, 's'},
      {"port", required_argument, 0, 'p'},   {"conns", required_argument, 0, 'c'},
      {"procs", required_argument, 0, 'n'},  {"echo", no_argument, 0, 'e'},
      {"hold", required_argument, 0, 'h'},   {0, 0, 0, 0}};
  const char *tspec[64], *sspec[64];
  size_t nts = 0, nss = 0;
  int port = 7000, echo = 0, opt;
  unsigned procs = 1, hold = 0;
  unsigned long long conns = 0;
  uvip_addrs_t *targets, *sources;
  char err[256];

  while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    switch (opt) {
    case 't': if (nts < 64) tspec[nts++] = optarg; break;
    case 's': if (nss < 64) sspec[nss++] = optarg; break;
    case 'p': port = atoi(optarg); break;
    case 'c': conns = strtoull(optarg, NULL, 10); break;
    case 'n': procs = (unsigned)strtoul(optarg, NULL, 10); break;
    case 'e': echo = 1; break;
    case 'h': hold = (unsigned)strtoul(optarg, NULL, 10); break;
    default:
      fprintf(stderr, "usage: raw-client --target SPEC... [--sources SPEC...] "
                      "[--port P] --conns N [--procs N] [--echo] [--hold S]\n");
      return 2;
    }
  }
  if (nts == 0 || conns == 0 || procs == 0 || procs > 1024 ||
      uvip_addrs_new(&targets) != 0 || uvip_addrs_new(&sources) != 0) {
    fprintf(stderr, "raw-client: need --target, --conns N > 0, --procs 1..1024\n");
    return 2;
  }
  for (size_t i = 0; i < nts; i++)
    if (uvip_addrs_parse(targets, tspec[i], port, err, sizeof(err)) != 0) {
      fprintf(stderr, "raw-client: --target %s: %s\n", tspec[i], err);
      return 2;
    }
  for (size_t i = 0; i < nss; i++)
    if (uvip_addrs_parse(sources, sspec[i], 0, err, sizeof(err)) != 0) {
      fprintf(stderr, "raw-client: --sources %s: %s\n", sspec[i], err);
      return 2;
    }
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_signal;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGALRM, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);

  int report[2], go[2];
  if (pipe(report) != 0 || pipe(go) != 0)
    return 1;
  pid_t *pids = calloc(procs, sizeof(*pids));
  if (!pids)
    return 1;
  double t0 = now_s();
  for (unsigned i = 0; i < procs; i++) {
    pids[i] = fork();
    if (pids[i] == 0) {
      close(report[0]);
      close(go[1]);
      struct result r = run(i, procs, conns, targets, sources, echo);
      (void)!write(report[1], &r, sizeof(r));
      /* Hold until the parent closes its end of go (or a signal). */
      char c;
      while (!stop && read(go[0], &c, 1) < 0 && errno == EINTR)
        ;
      _exit(0);
    }
    if (pids[i] < 0) {
      perror("raw-client: fork");
      return 1;
    }
  }
  close(report[1]);
  close(go[0]);
  struct result tot = {0, 0, 0};
  unsigned done = 0;
  while (done < procs) {
    struct result r;
    ssize_t n = read(report[0], &r, sizeof(r));
    if (n == (ssize_t)sizeof(r)) {
      tot.established += r.established;
      tot.failed += r.failed;
      tot.verified += r.verified;
      done++;
    } else if (n == 0 || (n < 0 && errno != EINTR)) {
      break;
    }
  }
  double t = now_s() - t0;
  printf("established %llu failed %llu verified %llu in %.3f s (%u of %u "
         "processes reported)\n",
         tot.established, tot.failed, tot.verified, t, done, procs);
  fflush(stdout);
  if (hold && !stop) {
    alarm(hold);
    while (!stop)
      pause();
  }
  close(go[1]); /* the children see the end and exit */
  for (unsigned i = 0; i < procs; i++) {
    kill(pids[i], SIGTERM);
    while (waitpid(pids[i], NULL, 0) < 0 && errno == EINTR)
      ;
  }
  free(pids);
  uvip_addrs_free(targets);
  uvip_addrs_free(sources);
  return tot.failed == 0 && done == procs ? 0 : 1;
}
