/* Inbound on a prefix (issue 14): a server takes PER connections to each of
 * ADDRS distinct addresses of fd00:1::/64, in a network namespace of its
 * own, through one of three mechanisms:
 *   prefix    uvip_server_add_prefix(): one wildcard socket, local route,
 *             connections grouped by /GROUP with CAP per group
 *   sklookup  the same through a BPF sk_lookup program (needs CAP_BPF)
 *   wildcard  one plain VIP on [::]:PORT with the same local route (no
 *             filter, no groups): what the prefix's bookkeeping costs
 *   vips      ADDRS addresses on lo and one listening socket each (the
 *             pre-prefix way)
 * A forked client connects to every address in turn (blocking connects,
 * kept open); the server counts accepts. Prints one JSON line: setup time
 * (addresses, routes, binds), time until every connection was accepted or
 * refused, and the server's counters and peak RSS.
 *
 *   sudo build/tests/bench/bench-inprefix MODE [ADDRS [PER [GROUP [CAP]]]]
 *
 * SPDX-License-Identifier: MIT */
#include <uvip.h>

#include <arpa/inet.h>
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#define PORT 7100

static uvip_server_t *server;
static uvip_vip_t *pvip;
static uint64_t want, accepted;
static uv_timer_t poll_timer;
static const char *mode;

static void on_conn(uvip_server_t *s, uvip_conn_t *c) {
  (void)s;
  (void)c; /* held open until exit */
  accepted++;
}

static void on_poll(uv_timer_t *t) {
  uvip_prefix_stats_t ps = {0};
  if (pvip)
    uvip_vip_prefix_stats(pvip, &ps);
  if (accepted + ps.group_refused + ps.outside >= want) {
    uv_timer_stop(t);
    uvip_server_stop(server);
  }
}

static void addr_of(int a, char *buf, size_t len) {
  /* Spread over /112 groups: 16 addresses per group. */
  snprintf(buf, len, "fd00:1::%x:%x", a / 16 + 1, a % 16 + 1);
}

static int client(int naddrs, int per) {
  int *fds = malloc(sizeof(int) * (size_t)naddrs * (size_t)per), n = 0;
  struct rlimit rl = {20000, 20000};
  setrlimit(RLIMIT_NOFILE, &rl);
  for (int a = 0; a < naddrs; a++) {
    struct sockaddr_in6 sa = {.sin6_family = AF_INET6, .sin6_port = htons(PORT)};
    char ip[64];
    addr_of(a, ip, sizeof(ip));
    inet_pton(AF_INET6, ip, &sa.sin6_addr);
    for (int k = 0; k < per; k++) {
      int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (fd < 0)
        return 1;
      if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        /* Refused at its group's cap: reset, maybe before connect()
         * returned. */
        if (errno != ECONNRESET) {
          perror("client connect");
          return 1;
        }
        close(fd);
        continue;
      }
      fds[n++] = fd;
    }
  }
  /* Hold them until the server has counted them all (it kills us). */
  pause();
  return 0;
}

static int sh(const char *cmd) {
  int r = system(cmd);
  if (r != 0)
    fprintf(stderr, "bench-inprefix: failed: %s\n", cmd);
  return r;
}

int main(int argc, char **argv) {
  int naddrs = argc > 2 ? atoi(argv[2]) : 1000;
  int per = argc > 3 ? atoi(argv[3]) : 1;
  unsigned group = argc > 4 ? (unsigned)atoi(argv[4]) : 112;
  uint64_t cap = argc > 5 ? strtoull(argv[5], NULL, 10) : 0;
  uvip_server_options_t o;
  uvip_addrs_t *addrs;
  uv_loop_t *loop = uv_default_loop();
  char err[256];
  uint64_t t0, t_setup, t_run;
  pid_t pid;
  struct rusage ru;
  int r;

  mode = argc > 1 ? argv[1] : "prefix";
  if (naddrs < 1 || per < 1 || (long)naddrs * per > 19000) {
    fprintf(stderr, "ADDRS x PER must be 1..19000\n");
    return 2;
  }
  if (unshare(CLONE_NEWNET) != 0) {
    perror("unshare (needs root)");
    return 77;
  }
  struct rlimit rl = {20000, 20000};
  setrlimit(RLIMIT_NOFILE, &rl);
  if (sh("ip link set lo up") != 0)
    return 1;
  want = (uint64_t)naddrs * (uint64_t)per;

  t0 = uv_hrtime();
  uvip_addrs_new(&addrs);
  uvip_server_options_init(&o);
  o.flags = UVIP_ALLOW_EMPTY;
  if (strcmp(mode, "vips") == 0) {
    FILE *f = popen("ip -6 -batch -", "w");
    for (int a = 0; a < naddrs; a++) {
      char ip[64];
      addr_of(a, ip, sizeof(ip));
      fprintf(f, "addr add %s/128 dev lo nodad\n", ip);
      struct sockaddr_in6 sa = {.sin6_family = AF_INET6,
                                .sin6_port = htons(PORT)};
      inet_pton(AF_INET6, ip, &sa.sin6_addr);
      uvip_addrs_add(addrs, (struct sockaddr *)&sa);
    }
    if (pclose(f) != 0)
      return 1;
  } else if (sh("ip -6 route add local fd00:1::/64 dev lo") != 0) {
    return 1;
  }
  if (strcmp(mode, "wildcard") == 0)
    uvip_addrs_parse(addrs, "[::]", PORT, NULL, 0);
  uvip_server_new(loop, addrs, &o, &server);
  uvip_addrs_free(addrs);
  if (strcmp(mode, "prefix") == 0 || strcmp(mode, "sklookup") == 0) {
    uvip_prefix_listen_t po;
    uvip_prefix_listen_init(&po);
    uvip_prefix_parse("fd00:1::/64", &po.prefix, NULL, 0);
    po.port = PORT;
    if (strcmp(mode, "sklookup") == 0)
      po.mode = UVIP_PREFIX_SK_LOOKUP;
    po.group_len = group;
    po.max_conns_per_group = cap;
    if ((r = uvip_server_add_prefix(server, &po, err, sizeof(err), &pvip))) {
      fprintf(stderr, "add_prefix: %s\n", err);
      return 1;
    }
  }
  if ((r = uvip_server_listen(server, on_conn, err, sizeof(err))) != 0) {
    fprintf(stderr, "listen: %s\n", err);
    return 1;
  }
  t_setup = uv_hrtime() - t0;

  t0 = uv_hrtime();
  if ((pid = fork()) == 0)
    _exit(client(naddrs, per));
  uv_timer_init(loop, &poll_timer);
  uv_timer_start(&poll_timer, on_poll, 1, 1);
  uv_run(loop, UV_RUN_DEFAULT);
  t_run = uv_hrtime() - t0;
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);

  uvip_prefix_stats_t ps = {0};
  if (pvip)
    uvip_vip_prefix_stats(pvip, &ps);
  getrusage(RUSAGE_SELF, &ru);
  printf("{\"mode\":\"%s\",\"addrs\":%d,\"per_addr\":%d,\"group_len\":%u,"
         "\"cap\":%llu,\"setup_ms\":%.1f,\"accept_all_ms\":%.1f,"
         "\"accepted\":%llu,\"refused\":%llu,\"outside\":%llu,"
         "\"groups\":%llu,\"listeners\":%zu,\"maxrss_kb\":%ld}\n",
         mode, naddrs, per, group, (unsigned long long)cap, t_setup / 1e6,
         t_run / 1e6, (unsigned long long)accepted,
         (unsigned long long)ps.group_refused,
         (unsigned long long)ps.outside, (unsigned long long)ps.groups,
         uvip_server_vip_count(server), ru.ru_maxrss);
  return 0;
}
