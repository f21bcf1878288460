/* census-hold: holds many loopback TCP connections (both ends) for the
 * census benchmark. Process IDX listens on 127.10.A.B:5000, connects CONNS
 * times to it from 127.20.A.B (IP_BIND_ADDRESS_NO_PORT), accepts each one
 * and keeps every descriptor: 2 x CONNS + 1 sockets. Prints "ready N" and
 * then holds them until stdin reaches EOF or MAX_SECS pass (default 900),
 * so that it always stops by itself. Run it only inside a network namespace
 * (tests/bench/census-bench.sh does).
 * SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif
#define BATCH 1000

static void addr(struct sockaddr_in *a, int net, int idx, int port) {
  memset(a, 0, sizeof(*a));
  a->sin_family = AF_INET;
  a->sin_port = htons((uint16_t)port);
  a->sin_addr.s_addr = htonl(127u << 24 | (unsigned)net << 16 |
                             (unsigned)(idx / 250) << 8 | (unsigned)(idx % 250 + 1));
}

static void die(const char *what) {
  fprintf(stderr, "census-hold: %s: %s\n", what, strerror(errno));
  exit(1);
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: census-hold IDX CONNS [MAX_SECS]\n");
    return 2;
  }
  int idx = atoi(argv[1]), conns = atoi(argv[2]);
  int max_secs = argc > 3 ? atoi(argv[3]) : 900;
  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
  if ((rlim_t)(2 * conns + 16) > rl.rlim_cur) {
    fprintf(stderr, "census-hold: %d connections need %d fds, limit %llu\n",
            conns, 2 * conns + 16, (unsigned long long)rl.rlim_cur);
    return 2;
  }
  alarm((unsigned)max_secs); /* stops itself whatever happens */

  struct sockaddr_in srv, src;
  int one = 1;
  addr(&srv, 10, idx, 5000);
  addr(&src, 20, idx, 0);
  int l = socket(AF_INET, SOCK_STREAM, 0);
  setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (l < 0 || bind(l, (struct sockaddr *)&srv, sizeof(srv)) != 0 ||
      listen(l, BATCH * 2) != 0)
    die("listen");
  int made = 0;
  while (made < conns) {
    int n = conns - made < BATCH ? conns - made : BATCH;
    for (int i = 0; i < n; i++) {
      int fd = socket(AF_INET, SOCK_STREAM, 0);
      if (fd < 0)
        die("socket");
      setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
      if (bind(fd, (struct sockaddr *)&src, sizeof(src)) != 0 ||
          connect(fd, (struct sockaddr *)&srv, sizeof(srv)) != 0)
        die("connect");
    }
    for (int i = 0; i < n; i++)
      if (accept(l, NULL, NULL) < 0)
        die("accept");
    made += n;
  }
  printf("ready %d\n", 2 * made + 1);
  fflush(stdout);
  struct pollfd p = {0, POLLIN, 0};
  char b[64];
  while (poll(&p, 1, -1) >= 0 || errno == EINTR)
    if ((p.revents & (POLLIN | POLLHUP)) && read(0, b, sizeof(b)) <= 0)
      break;
  return 0;
}
