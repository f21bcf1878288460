/* uvip-http and uvip-echo with the PROXY protocol, end to end: the real
 * binaries, raw sockets, curl --haproxy-protocol (v1) and, run as
 * `test-http-proxy haproxy`, HAProxy with send-proxy-v2 in front. Also
 * /whoami without the option and /health (200, 503 while draining).
 * Every wait is for a line, a response or an exit, never for time.
 * SPDX-License-Identifier: MIT */
#include "exproc.h"
#include "helpers.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define HAPROXY "/usr/sbin/haproxy"
#define WAIT_MS 10000

static tx_proc_t srv;
static int srv_port;

/* Starts a server (uvip-http or uvip-echo) on 127.0.0.1 and waits for the
 * line that says it serves. */
static void srv_start(const char *prog, const char *ready, const char *a1,
                      const char *a2, const char *a3) {
  char port[16];
  srv_port = th_free_port();
  snprintf(port, sizeof(port), "%d", srv_port);
  const char *argv[] = {tx_bin(prog), "--listen", "127.0.0.1", "--port", port,
                        a1, a2, a3, NULL};
  tx_spawn(&srv, argv);
  tx_expect_line(srv.out, ready, NULL, 0);
}

static void srv_stop(void) {
  ck_assert_int_eq(kill(srv.pid, SIGTERM), 0);
  ck_assert_int_eq(tx_wait_exit(&srv), 0);
}

static int conn_from(const char *src_ip, int port) {
  struct sockaddr_storage dst, src;
  th_addr("127.0.0.1", port, &dst);
  th_addr(src_ip, 0, &src);
  return th_connect((struct sockaddr *)&dst, (struct sockaddr *)&src);
}

static void send_all(int fd, const void *p, size_t n) {
  ck_assert_int_eq(send(fd, p, n, MSG_NOSIGNAL), (ssize_t)n);
}

/* Reads until the peer closes, or until `until` is in the data. */
static size_t recv_until(int fd, char *buf, size_t cap, const char *until) {
  size_t len = 0;
  for (;;) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    ssize_t r;
    buf[len] = 0;
    if (until && strstr(buf, until))
      return len;
    ck_assert_msg(poll(&p, 1, WAIT_MS) == 1, "no answer; so far '%s'", buf);
    ck_assert(len < cap - 1);
    r = recv(fd, buf + len, cap - 1 - len, 0);
    if (r == 0 || (r < 0 && errno == ECONNRESET))
      return len;
    ck_assert_msg(r > 0, "recv: %s", strerror(errno));
    len += (size_t)r;
  }
}

/* The body of a complete response (after the blank line). */
static const char *body(const char *resp) {
  const char *b = strstr(resp, "\r\n\r\n");
  ck_assert_msg(b != NULL, "no header end in '%s'", resp);
  return b + 4;
}

static void local_addr(int fd, char *out, size_t len) {
  struct sockaddr_storage sa;
  socklen_t sl = sizeof(sa);
  ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
  ck_assert_int_eq(uvip_addr_format((struct sockaddr *)&sa, 1, out, len), 0);
}

/* GET path with Connection: close on fd (after whatever was sent). */
static void get_close(int fd, const char *path, char *resp, size_t cap) {
  char req[256];
  snprintf(req, sizeof(req),
           "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", path);
  send_all(fd, req, strlen(req));
  recv_until(fd, resp, cap, NULL);
}

/* ------------------------------------------------------------------------ */

/* Without the option: the peer as the socket says. */
START_TEST(test_whoami_direct) {
  char resp[2048], me[UVIP_ADDRSTRLEN + 2];
  srv_start("uvip-http", "ready", NULL, NULL, NULL);
  int fd = conn_from("127.0.0.5", srv_port);
  local_addr(fd, me, sizeof(me) - 1);
  strcat(me, "\n");
  get_close(fd, "/whoami", resp, sizeof(resp));
  ck_assert_msg(strncmp(resp, "HTTP/1.1 200 OK\r\n", 17) == 0, "'%s'", resp);
  ck_assert_str_eq(body(resp), me);
  close(fd);
  srv_stop();
}
END_TEST

/* Without the option a PROXY header is just bad HTTP: 400. */
START_TEST(test_header_without_option) {
  char resp[2048];
  unsigned char v2[16];
  srv_start("uvip-http", "ready", NULL, NULL, NULL);
  int fd = conn_from("127.0.0.1", srv_port);
  const char *v1 = "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n";
  send_all(fd, v1, strlen(v1));
  get_close(fd, "/whoami", resp, sizeof(resp));
  ck_assert_msg(strncmp(resp, "HTTP/1.1 400 ", 13) == 0, "'%s'", resp);
  close(fd);
  ck_assert_int_eq(uvip_proxy_write(2, NULL, NULL, v2, sizeof(v2)), 16);
  fd = conn_from("127.0.0.1", srv_port);
  send_all(fd, v2, sizeof(v2));
  get_close(fd, "/", resp, sizeof(resp));
  ck_assert_msg(strncmp(resp, "HTTP/1.1 400 ", 13) == 0, "'%s'", resp);
  close(fd);
  srv_stop();
}
END_TEST

/* --proxy-protocol: the header's client, v1 and v2; LOCAL gives the
 * socket's peer; a connection without a header gets nothing. */
START_TEST(test_whoami_proxy_raw) {
  char resp[2048], hdr[128], me[UVIP_ADDRSTRLEN + 2];
  unsigned char v2[64];
  struct sockaddr_storage src, dst;
  srv_start("uvip-http", "ready", "--proxy-protocol", NULL, NULL);

  int fd = conn_from("127.0.0.1", srv_port);
  snprintf(hdr, sizeof(hdr), "PROXY TCP4 198.51.100.23 127.0.0.1 4711 %d\r\n",
           srv_port);
  send_all(fd, hdr, strlen(hdr));
  get_close(fd, "/whoami", resp, sizeof(resp));
  ck_assert_str_eq(body(resp), "198.51.100.23:4711\n");
  close(fd);

  th_addr("2001:db8::5", 6000, &src);
  th_addr("2001:db8::1", 80, &dst);
  int n = uvip_proxy_write(2, (struct sockaddr *)&src, (struct sockaddr *)&dst,
                           v2, sizeof(v2));
  fd = conn_from("127.0.0.1", srv_port);
  send_all(fd, v2, (size_t)n);
  get_close(fd, "/whoami", resp, sizeof(resp));
  ck_assert_str_eq(body(resp), "[2001:db8::5]:6000\n");
  close(fd);

  fd = conn_from("127.0.0.6", srv_port);
  local_addr(fd, me, sizeof(me) - 1);
  strcat(me, "\n");
  n = uvip_proxy_write(2, NULL, NULL, v2, sizeof(v2));
  send_all(fd, v2, (size_t)n);
  get_close(fd, "/whoami", resp, sizeof(resp));
  ck_assert_str_eq(body(resp), me);
  close(fd);

  fd = conn_from("127.0.0.1", srv_port);
  get_close(fd, "/whoami", resp, sizeof(resp));
  ck_assert_str_eq(resp, "");
  close(fd);

  /* /metrics counts them by outcome, per VIP: the LOCAL header above and
   * the connection without one. */
  static char metrics[1 << 16];
  char want[160];
  fd = conn_from("127.0.0.1", srv_port);
  send_all(fd, hdr, strlen(hdr));
  get_close(fd, "/metrics", metrics, sizeof(metrics));
  snprintf(want, sizeof(want),
           "uvip_vip_proxy_headers_total{vip=\"127.0.0.1:%d\",outcome=\"local\"} 1\n",
           srv_port);
  ck_assert_msg(strstr(metrics, want) != NULL, "no '%s' in %s", want, metrics);
  snprintf(want, sizeof(want),
           "uvip_vip_proxy_headers_total{vip=\"127.0.0.1:%d\",outcome=\"missing\"} 1\n",
           srv_port);
  ck_assert_msg(strstr(metrics, want) != NULL, "no '%s' in %s", want, metrics);
  close(fd);
  srv_stop();
}
END_TEST

/* curl sends a v1 header with --haproxy-protocol. */
START_TEST(test_curl_haproxy_protocol) {
  char cmd[256];
  int rc;
  srv_start("uvip-http", "ready", "--proxy-protocol", NULL, NULL);
  snprintf(cmd, sizeof(cmd),
           "curl -s --max-time 10 --haproxy-protocol --interface 127.0.0.7 "
           "http://127.0.0.1:%d/whoami",
           srv_port);
  char *out = tx_run(cmd, &rc);
  ck_assert_int_eq(rc, 0);
  ck_assert_msg(strncmp(out, "127.0.0.7:", 10) == 0, "'%s'", out);
  free(out);
  /* The same request without the header is closed unanswered. */
  snprintf(cmd, sizeof(cmd),
           "curl -s --max-time 10 http://127.0.0.1:%d/whoami", srv_port);
  out = tx_run(cmd, &rc);
  ck_assert_int_ne(rc, 0);
  ck_assert_str_eq(out, "");
  free(out);
  srv_stop();
}
END_TEST

/* /health: 200; after a signal with --health-grace-ms, 503 on the open
 * connection while / is still served. */
START_TEST(test_health_grace) {
  char resp[2048];
  srv_start("uvip-http", "ready", "--health-grace-ms", "600000", NULL);
  int ka = conn_from("127.0.0.1", srv_port);
  const char *req = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
  send_all(ka, req, strlen(req));
  recv_until(ka, resp, sizeof(resp), "ok\n");
  ck_assert_msg(strncmp(resp, "HTTP/1.1 200 OK\r\n", 17) == 0, "'%s'", resp);
  ck_assert_int_eq(kill(srv.pid, SIGTERM), 0);
  tx_expect_line(srv.err, "/health answers 503", NULL, 0);
  send_all(ka, req, strlen(req));
  recv_until(ka, resp, sizeof(resp), "draining\n");
  ck_assert_msg(strncmp(resp, "HTTP/1.1 503 ", 13) == 0, "'%s'", resp);
  int fd = conn_from("127.0.0.1", srv_port);
  get_close(fd, "/", resp, sizeof(resp));
  ck_assert_str_eq(body(resp), "Hello from uvip\n");
  close(fd);
  close(ka);
  /* A second signal exits at once (examples/common.c), status 1. */
  ck_assert_int_eq(kill(srv.pid, SIGTERM), 0);
  tx_expect_line(srv.err, "second signal", NULL, 0);
  ck_assert_int_eq(tx_wait_exit(&srv), 1);
}
END_TEST

/* Once the grace is over the graceful stop follows on its own. */
START_TEST(test_health_grace_ends) {
  srv_start("uvip-http", "ready", "--health-grace-ms", "1", NULL);
  ck_assert_int_eq(kill(srv.pid, SIGTERM), 0);
  tx_expect_line(srv.err, "health grace over, stopping", NULL, 0);
  ck_assert_int_eq(tx_wait_exit(&srv), 0);
}
END_TEST

/* Without a grace: a request under way when the stop began is answered
 * 503 (with Connection: close). The first request and the start of the
 * second go in one segment, so the first's answer proves the server has
 * read the second's start. */
START_TEST(test_health_stopping) {
  char resp[2048];
  const char *two = "GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\n";
  srv_start("uvip-http", "ready", NULL, NULL, NULL);
  int fd = conn_from("127.0.0.1", srv_port);
  send_all(fd, two, strlen(two));
  recv_until(fd, resp, sizeof(resp), "Hello from uvip\n");
  ck_assert_int_eq(kill(srv.pid, SIGTERM), 0);
  tx_expect_line(srv.err, "stopping", NULL, 0);
  send_all(fd, "Host: x\r\n\r\n", 11);
  recv_until(fd, resp, sizeof(resp), NULL);
  ck_assert_msg(strncmp(resp, "HTTP/1.1 503 ", 13) == 0, "'%s'", resp);
  ck_assert_ptr_nonnull(strstr(resp, "Connection: close\r\n"));
  close(fd);
  ck_assert_int_eq(tx_wait_exit(&srv), 0);
}
END_TEST

/* uvip-echo --proxy-protocol echoes what follows the header only. */
START_TEST(test_echo_proxy) {
  char buf[256];
  srv_start("uvip-echo", "listening on", "--proxy-protocol", NULL, NULL);
  int fd = conn_from("127.0.0.1", srv_port);
  const char *h = "PROXY TCP4 10.1.1.1 10.2.2.2 1 2\r\nping";
  send_all(fd, h, strlen(h));
  recv_until(fd, buf, sizeof(buf), "ping");
  ck_assert_str_eq(buf, "ping");
  tx_echo_check(fd, "more");
  close(fd);
  fd = conn_from("127.0.0.1", srv_port);
  send_all(fd, "ping", 4);
  tx_expect_eof(fd);
  close(fd);
  srv_stop();
}
END_TEST

START_TEST(test_workers_refused) {
  int rc;
  char *out = tx_run("\"$UVIP_BUILD_DIR/examples/uvip-http\" --proxy-protocol "
                     "--workers 2",
                     &rc);
  ck_assert_int_eq(rc, 2);
  ck_assert_ptr_nonnull(strstr(out, "only --balance reuseport"));
  free(out);
  out = tx_run("\"$UVIP_BUILD_DIR/examples/uvip-echo\" --proxy-protocol "
               "--workers 2",
               &rc);
  ck_assert_int_ne(rc, 0);
  ck_assert_ptr_nonnull(strstr(out, "only --balance reuseport"));
  free(out);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* HAProxy with send-proxy-v2 in front of uvip-http                         */
/* ------------------------------------------------------------------------ */

/* HAProxy listens on a socket the test made (bind fd@3): clients can
 * connect before it runs, so nothing waits for it to be ready. */
START_TEST(test_haproxy_send_proxy_v2) {
  char cfg[] = "/tmp/uvip-haproxy-XXXXXX", text[1024], resp[2048];
  char me[UVIP_ADDRSTRLEN + 2];
  struct sockaddr_storage fe;
  int lfd, cfd, fe_port, status;
  pid_t hp;

  srv_start("uvip-http", "ready", "--proxy-protocol", NULL, NULL);
  fe_port = th_free_port();
  th_addr("127.0.0.1", fe_port, &fe);
  lfd = socket(AF_INET, SOCK_STREAM, 0);
  ck_assert_int_ge(lfd, 0);
  ck_assert_int_eq(bind(lfd, (struct sockaddr *)&fe, sizeof(struct sockaddr_in)),
                   0);
  ck_assert_int_eq(listen(lfd, 16), 0);
  cfd = mkstemp(cfg);
  ck_assert_int_ge(cfd, 0);
  snprintf(text, sizeof(text),
           "global\n  maxconn 100\n"
           "defaults\n  mode tcp\n  timeout connect 5s\n"
           "  timeout client 30s\n  timeout server 30s\n"
           "frontend fe\n  bind fd@3\n  default_backend be\n"
           "backend be\n  server s1 127.0.0.1:%d send-proxy-v2\n",
           srv_port);
  ck_assert_int_eq(write(cfd, text, strlen(text)), (ssize_t)strlen(text));
  close(cfd);
  hp = fork();
  ck_assert_int_ge(hp, 0);
  if (hp == 0) {
    dup2(lfd, 3);
    execl(HAPROXY, "haproxy", "-db", "-q", "-f", cfg, (char *)NULL);
    _exit(127);
  }
  close(lfd);

  for (int i = 0; i < 3; i++) {
    char src[32];
    snprintf(src, sizeof(src), "127.0.0.%d", 20 + i);
    int fd = conn_from(src, fe_port);
    local_addr(fd, me, sizeof(me) - 1);
    strcat(me, "\n");
    get_close(fd, "/whoami", resp, sizeof(resp));
    /* HAProxy connects from 127.0.0.1: only the header can say this. */
    ck_assert_msg(strncmp(resp, "HTTP/1.1 200 OK\r\n", 17) == 0, "'%s'", resp);
    ck_assert_str_eq(body(resp), me);
    close(fd);
  }
  ck_assert_int_eq(kill(hp, SIGTERM), 0);
  ck_assert_int_eq(waitpid(hp, &status, 0), hp);
  unlink(cfg);
  srv_stop();
}
END_TEST

int main(int argc, char **argv) {
  Suite *s = suite_create("http-proxy");
  TCase *tc = tcase_create("http-proxy");
  tcase_set_timeout(tc, 60);
  if (argc > 1 && strcmp(argv[1], "haproxy") == 0) {
    /* Decided before any test forks: a skip, not a failure. */
    if (access(HAPROXY, X_OK) != 0) {
      printf("no %s: skipped\n", HAPROXY);
      return 77;
    }
    tcase_add_test(tc, test_haproxy_send_proxy_v2);
  } else {
    tcase_add_test(tc, test_whoami_direct);
    tcase_add_test(tc, test_header_without_option);
    tcase_add_test(tc, test_whoami_proxy_raw);
    tcase_add_test(tc, test_curl_haproxy_protocol);
    tcase_add_test(tc, test_health_grace);
    tcase_add_test(tc, test_health_grace_ends);
    tcase_add_test(tc, test_health_stopping);
    tcase_add_test(tc, test_echo_proxy);
    tcase_add_test(tc, test_workers_refused);
  }
  suite_add_tcase(s, tc);
  return th_run_suite(s);
}
