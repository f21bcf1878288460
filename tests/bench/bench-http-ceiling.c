/* The cheapest server wrk can talk to: one epoll loop, no parser, no
 * timers, no limits, the fewest system calls per request and the same
 * response bytes as uvip-http (151 bytes with Connection: close, 132
 * without). It answers every read with one response, which is right only
 * for clients like wrk that send one small request at a time. It is not a
 * server anyone should run; it is the reference point for
 * tests/bench/http-vs-nginx.sh. When uvip-http's requests/s match this
 * program's, the client is the limit and no server could show more on that
 * machine with that client.
 *
 *   bench-http-ceiling PORT
 *
 * Listens on 127.0.0.1:PORT with the options uvip-http uses by default
 * (TCP_DEFER_ACCEPT 1 s, TCP_NODELAY) and runs until killed.
 * SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static char resp[2][256]; /* [0] keep-alive, [1] Connection: close */
static int resp_len[2];
static time_t resp_sec = -1;
static char buf[64 * 1024];

static void build_responses(time_t now) {
  char date[40];
  struct tm tm;
  int i;
  gmtime_r(&now, &tm);
  strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
  for (i = 0; i < 2; i++)
    resp_len[i] = snprintf(resp[i], sizeof(resp[i]),
                           "HTTP/1.1 200 OK\r\nServer: uvip\r\nDate: %s\r\n"
                           "Content-Type: text/plain\r\nContent-Length: 16\r\n"
                           "%s\r\nHello from uvip\n",
                           date, i ? "Connection: close\r\n" : "");
  resp_sec = now;
}

/* Reads what is there and answers it. Returns 1 to keep the connection,
 * 0 if it was closed, -1 if nothing was there yet. */
static int serve(int fd) {
  ssize_t n = read(fd, buf, sizeof(buf) - 1);
  int close_it;
  time_t now;
  if (n < 0 && errno == EAGAIN)
    return -1;
  if (n <= 0) {
    close(fd);
    return 0;
  }
  buf[n] = 0;
  now = time(NULL);
  if (now != resp_sec)
    build_responses(now);
  close_it = strstr(buf, "Connection: close") != NULL;
  /* As uvip-http: the FIN rides in the last response's segment. */
  if (send(fd, resp[close_it], (size_t)resp_len[close_it],
           MSG_NOSIGNAL | (close_it ? MSG_MORE : 0)) < 0 ||
      close_it) {
    close(fd);
    return 0;
  }
  return 1;
}

int main(int argc, char **argv) {
  struct sockaddr_in sa = {.sin_family = AF_INET};
  struct epoll_event ev = {.events = EPOLLIN}, evs[256];
  int one = 1, defer = 1, port, lfd, ep;

  if (argc != 2 || (port = atoi(argv[1])) <= 0 || port > 65535) {
    fprintf(stderr, "usage: %s PORT\n", argv[0]);
    return 2;
  }
  sa.sin_port = htons((uint16_t)port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  ep = epoll_create1(EPOLL_CLOEXEC);
  ev.data.fd = lfd;
  if (lfd < 0 || ep < 0 ||
      setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
      setsockopt(lfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0 ||
      setsockopt(lfd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &defer, sizeof(defer)) !=
          0 ||
      bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
      listen(lfd, 4096) != 0 || epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) != 0) {
    fprintf(stderr, "bench-http-ceiling: 127.0.0.1:%d: %s\n", port,
            strerror(errno));
    return 1;
  }
  for (;;) {
    int n = epoll_wait(ep, evs, 256, -1), i;
    for (i = 0; i < n; i++) {
      int fd = evs[i].data.fd;
      if (fd != lfd) {
        (void)serve(fd); /* close() takes it out of the epoll set */
        continue;
      }
      /* The request has usually arrived with the connection (deferred
       * accept): answer it at once, poll only when it has not. */
      while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >=
             0) {
        struct epoll_event cev = {.events = EPOLLIN, .data.fd = fd};
        if (serve(fd) != 0 && epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev) != 0)
          close(fd);
      }
    }
  }
}
