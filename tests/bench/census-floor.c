/* census-floor: the kernel's share of a census. One sock_diag dump of the
 * current namespace's IPv4 TCP sockets (every state, no extensions, as the
 * census asks), each message counted and discarded: what any sock_diag
 * reader (the census, ss) pays before doing anything with a socket.
 * With --reject the request carries a bytecode that rejects every socket:
 * the kernel still walks the hash and runs the filter on each socket but
 * builds no message (the walk's cost alone).
 *   census-floor [--reject]
 * Prints "WALL_S CPU_S SOCKETS READS BYTES_PER_SOCKET".
 * SPDX-License-Identifier: MIT */
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double secs(struct timeval t) { return t.tv_sec + t.tv_usec / 1e6; }

int main(int argc, char **argv) {
  int reject = argc > 1 && strcmp(argv[1], "--reject") == 0;
  struct {
    struct nlmsghdr h;
    struct inet_diag_req_v2 r;
    struct nlattr a;
    struct inet_diag_bc_op op[2];
  } req;
  static char buf[65536];
  long socks = 0, reads = 0, bytes = 0;
  struct timespec t0, t1;
  struct rusage ru;
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
  if (fd < 0) {
    perror("census-floor: socket");
    return 1;
  }
  memset(&req, 0, sizeof(req));
  req.h.nlmsg_len = reject ? sizeof(req) : NLMSG_LENGTH(sizeof(req.r));
  req.h.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  req.h.nlmsg_seq = 1;
  req.r.sdiag_family = AF_INET;
  req.r.sdiag_protocol = IPPROTO_TCP;
  req.r.idiag_states = 0x1ffe;
  req.a.nla_len = sizeof(req.a) + sizeof(req.op);
  req.a.nla_type = INET_DIAG_REQ_BYTECODE;
  req.op[0].code = INET_DIAG_BC_JMP; /* past the end: reject */
  req.op[0].yes = 4;
  req.op[0].no = 12;
  req.op[1].code = INET_DIAG_BC_NOP;
  req.op[1].yes = 4;
  req.op[1].no = 4;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  if (send(fd, &req, req.h.nlmsg_len, 0) < 0) {
    perror("census-floor: send");
    return 1;
  }
  for (int done = 0; !done;) {
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) {
      perror("census-floor: recv");
      return 1;
    }
    reads++;
    bytes += n;
    for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, n);
         h = NLMSG_NEXT(h, n)) {
      if (h->nlmsg_type == NLMSG_DONE) {
        done = 1;
        break;
      }
      if (h->nlmsg_type == NLMSG_ERROR) {
        fprintf(stderr, "census-floor: dump refused\n");
        return 1;
      }
      socks++;
    }
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  getrusage(RUSAGE_SELF, &ru);
  printf("%.6f %.6f %ld %ld %.1f\n",
         (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9,
         secs(ru.ru_utime) + secs(ru.ru_stime), socks, reads,
         socks ? (double)bytes / socks : 0.0);
  close(fd);
  return 0;
}
