/* uvip-http end to end: the real binary, real clients (curl and raw
 * sockets) on loopback VIPs.
 * SPDX-License-Identifier: MIT */
#include "exproc.h"
#include "helpers.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* Upper bound for any single wait; a healthy run never comes near it. */
#define WAIT_MS 10000

static pid_t srv_pid;
static int srv_port;
/* The server's standard output, kept open: the tests wait for the lines it
 * prints (ready, census) rather than for time. */
static FILE *srv_out;
/* What it printed up to "ready" (the listeners, the workers). */
static char srv_banner[4096];

/* Reads the server's output until a line containing want; fails if the
 * server exits first. */
static void srv_wait_line(const char *want) {
  char line[1024];
  while (fgets(line, sizeof(line), srv_out) != NULL)
    if (strstr(line, want) != NULL)
      return;
  ck_abort_msg("uvip-http ended its output before '%s'", want);
}

static const char *http_bin(void) {
  static char path[4096];
  const char *dir = getenv("UVIP_BUILD_DIR");
  snprintf(path, sizeof(path), "%s/examples/uvip-http", dir ? dir : ".");
  return path;
}

/* Starts uvip-http on 127.0.0.1-127.0.0.2 with extra arguments and waits
 * for its "ready" line. */
static void srv_start(const char *const *extra) {
  int out[2];
  char portbuf[16], buf[4096];
  const char *argv[60];
  size_t n = 0, len = 0;

  srv_port = th_free_port();
  snprintf(portbuf, sizeof(portbuf), "%d", srv_port);
  /* UVIP_HTTP_WRAPPER="valgrind --error-exitcode=1 ..." runs the server
   * under a checker; srv_stop() then also checks the checker's verdict. */
  const char *wrap = getenv("UVIP_HTTP_WRAPPER");
  static char wrapbuf[1024];
  if (wrap && *wrap) {
    snprintf(wrapbuf, sizeof(wrapbuf), "%s", wrap);
    for (char *tok = strtok(wrapbuf, " "); tok && n < 16;
         tok = strtok(NULL, " "))
      argv[n++] = tok;
  }
  argv[n++] = http_bin();
  argv[n++] = "--listen";
  argv[n++] = "127.0.0.1-127.0.0.2";
  argv[n++] = "--port";
  argv[n++] = portbuf;
  while (extra && *extra && n < 58)
    argv[n++] = *extra++;
  argv[n] = NULL;

  ck_assert_int_eq(pipe(out), 0);
  srv_pid = fork();
  ck_assert_int_ge(srv_pid, 0);
  if (srv_pid == 0) {
    dup2(out[1], 1);
    close(out[0]);
    close(out[1]);
    execvp(argv[0], (char *const *)argv);
    _exit(127);
  }
  close(out[1]);
  srv_out = fdopen(out[0], "r");
  ck_assert_ptr_nonnull(srv_out);
  /* The lines before "ready" are the listeners. */
  while (fgets(buf + len, (int)(sizeof(buf) - len), srv_out) != NULL) {
    len += strlen(buf + len);
    if (strstr(buf, "ready\n"))
      break;
    ck_assert(len < sizeof(buf) - 1);
  }
  ck_assert_msg(strstr(buf, "ready\n") != NULL,
                "uvip-http exited before it was ready: '%s'", buf);
  snprintf(srv_banner, sizeof(srv_banner), "%s", buf);
  ck_assert_ptr_nonnull(strstr(buf, "listening on http://127.0.0.1:"));
  ck_assert_ptr_nonnull(strstr(buf, "listening on http://127.0.0.2:"));
}

/* SIGTERM, then the server must exit 0 on its own (graceful stop). Its
 * output is read to the end first (it closes it by exiting), then it is
 * reaped; a server that never stops fails the test at check's timeout. */
static void srv_stop(void) {
  int status = 0;
  char line[1024];
  ck_assert_int_eq(kill(srv_pid, SIGTERM), 0);
  while (fgets(line, sizeof(line), srv_out) != NULL)
    ;
  fclose(srv_out);
  srv_out = NULL;
  ck_assert_int_eq(waitpid(srv_pid, &status, 0), srv_pid);
  ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                "uvip-http exit status %d", status);
}

static int conn_to(const char *ip) {
  struct sockaddr_storage sa;
  th_addr(ip, srv_port, &sa);
  return th_connect((struct sockaddr *)&sa, NULL);
}

static void send_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    ck_assert_msg(w > 0, "send: %s", strerror(errno));
    p += w;
    n -= (size_t)w;
  }
}

static void send_str(int fd, const char *s) { send_all(fd, s, strlen(s)); }

/* Reads until EOF (returns 1) or until `until` appears in the data
 * (returns 0). Fails after WAIT_MS without progress. */
static int recv_until(int fd, char *buf, size_t cap, size_t *len,
                      const char *until) {
  for (;;) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    ssize_t r;
    buf[*len] = 0;
    if (until && strstr(buf, until))
      return 0;
    ck_assert_msg(poll(&p, 1, WAIT_MS) == 1, "no answer; so far: '%s'", buf);
    ck_assert(*len < cap - 1);
    r = recv(fd, buf + *len, cap - 1 - *len, 0);
    if (r == 0)
      return 1;
    if (r < 0 && errno == ECONNRESET)
      return 1;
    ck_assert_msg(r > 0, "recv: %s", strerror(errno));
    *len += (size_t)r;
  }
}

static size_t count_of(const char *hay, const char *needle) {
  size_t n = 0;
  for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
    n++;
  return n;
}

/* One request on an open keep-alive connection, checked. */
static void keepalive_roundtrip(int fd) {
  char buf[2048];
  size_t len = 0;
  send_str(fd, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  ck_assert_int_eq(recv_until(fd, buf, sizeof(buf), &len, "Hello from uvip\n"),
                   0);
  ck_assert_msg(strncmp(buf, "HTTP/1.1 200 OK\r\n", 17) == 0, "got '%s'", buf);
}

static char *curl(const char *args) {
  char cmd[1024];
  snprintf(cmd, sizeof(cmd), "curl -s --max-time 10 %s 2>&1", args);
  char *out = th_cmd_output(cmd);
  ck_assert_ptr_nonnull(out);
  return out;
}

static void curl_ok(const char *ip) {
  char args[256];
  snprintf(args, sizeof(args), "http://%s:%d/", ip, srv_port);
  char *out = curl(args);
  ck_assert_str_eq(out, "Hello from uvip\n");
  free(out);
}

/* ------------------------------------------------------------------------ */

START_TEST(test_curl_get) {
  char args[256];
  srv_start(NULL);
  snprintf(args, sizeof(args), "-i http://127.0.0.2:%d/", srv_port);
  char *out = curl(args);
  ck_assert_msg(strncmp(out, "HTTP/1.1 200 OK\r\n", 17) == 0, "%s", out);
  ck_assert_ptr_nonnull(strstr(out, "Content-Length: 16\r\n"));
  ck_assert_ptr_nonnull(strstr(out, "\r\nDate: "));
  ck_assert_ptr_nonnull(strstr(out, "\r\n\r\nHello from uvip\n"));
  free(out);
  snprintf(args, sizeof(args), "-i http://127.0.0.1:%d/nope", srv_port);
  out = curl(args);
  ck_assert_msg(strncmp(out, "HTTP/1.1 404 Not Found\r\n", 24) == 0, "%s", out);
  free(out);
  srv_stop();
}
END_TEST

START_TEST(test_curl_keepalive) {
  char args[256];
  srv_start(NULL);
  snprintf(args, sizeof(args), "-v http://127.0.0.1:%d/ http://127.0.0.1:%d/",
           srv_port, srv_port);
  char *out = curl(args);
  ck_assert_uint_eq(count_of(out, "Hello from uvip\n"), 2);
  ck_assert_uint_eq(count_of(out, "< HTTP/1.1 200 OK"), 2);
  ck_assert_msg(strstr(out, "Re-using existing connection"), "%s", out);
  free(out);
  /* The server saw one connection carry both requests. */
  snprintf(args, sizeof(args), "http://127.0.0.1:%d/stats.json", srv_port);
  out = curl(args);
  ck_assert_msg(strstr(out, "\"requests\":3,\"connections_total\":2,"), "%s",
                out);
  free(out);
  srv_stop();
}
END_TEST

START_TEST(test_head) {
  char args[256], buf[2048];
  size_t len = 0;
  srv_start(NULL);
  snprintf(args, sizeof(args), "-I http://127.0.0.1:%d/", srv_port);
  char *out = curl(args);
  ck_assert_msg(strncmp(out, "HTTP/1.1 200 OK\r\n", 17) == 0, "%s", out);
  ck_assert_ptr_nonnull(strstr(out, "Content-Length: 16\r\n"));
  free(out);
  /* Byte-exact: headers, no body, then the close. */
  int fd = conn_to("127.0.0.1");
  send_str(fd, "HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  ck_assert_int_eq(recv_until(fd, buf, sizeof(buf), &len, NULL), 1);
  ck_assert_ptr_nonnull(strstr(buf, "Content-Length: 16\r\n"));
  ck_assert_ptr_nonnull(strstr(buf, "Connection: close\r\n"));
  ck_assert_msg(len >= 4 && strcmp(buf + len - 4, "\r\n\r\n") == 0,
                "HEAD response has a body: '%s'", buf);
  close(fd);
  srv_stop();
}
END_TEST

START_TEST(test_metrics) {
  char args[256], series[128];
  srv_start(NULL);
  curl_ok("127.0.0.2");
  int held = conn_to("127.0.0.1");
  keepalive_roundtrip(held);
  snprintf(args, sizeof(args), "-i http://127.0.0.2:%d/metrics", srv_port);
  char *out = curl(args);
  ck_assert_ptr_nonnull(strstr(out, "Content-Type: text/plain; version=0.0.4"));
  snprintf(series, sizeof(series),
           "\nuvip_vip_accepted_total{vip=\"127.0.0.2:%d\"} 2\n", srv_port);
  ck_assert_msg(strstr(out, series), "no '%s' in %s", series, out);
  snprintf(series, sizeof(series),
           "\nuvip_vip_accepted_total{vip=\"127.0.0.1:%d\"} 1\n", srv_port);
  ck_assert_msg(strstr(out, series), "no '%s' in %s", series, out);
  snprintf(series, sizeof(series), "\nuvip_vip_active{vip=\"127.0.0.1:%d\"} 1\n",
           srv_port);
  ck_assert_msg(strstr(out, series), "no '%s' in %s", series, out);
  ck_assert_ptr_nonnull(strstr(out, "# TYPE uvip_vip_deferred_total counter"));
  ck_assert_ptr_nonnull(
      strstr(out, "uvip_http_responses_total{code=\"200\"} 2\n"));
  free(out);
  snprintf(args, sizeof(args), "http://127.0.0.1:%d/stats.json", srv_port);
  out = curl(args);
  snprintf(series, sizeof(series),
           "{\"vip\":\"127.0.0.2:%d\",\"state\":\"listening\",\"accepted\":2,",
           srv_port);
  ck_assert_msg(strstr(out, series), "no '%s' in %s", series, out);
  free(out);
  close(held);

  /* The census (sampled on the threadpool at start, then every interval)
   * adds socket states and listen queues once its first sample is in,
   * which the server says on its output. */
  srv_wait_line("census: first sample\n");
  snprintf(series, sizeof(series), "\nuvip_listen_queue{vip=\"127.0.0.2:%d\"} ",
           srv_port);
  snprintf(args, sizeof(args), "http://127.0.0.2:%d/metrics", srv_port);
  out = curl(args);
  ck_assert_msg(strstr(out, series) && strstr(out, "\nuvip_sockets{"),
                "no census series '%s' in /metrics: %s", series, out);
  free(out);
  /* /stats.json, census included, is valid JSON. */
  char cmd[256];
  snprintf(cmd, sizeof(cmd),
           "curl -s --max-time 10 http://127.0.0.1:%d/stats.json | python3 -c "
           "'import json,sys; d=json.load(sys.stdin); "
           "print(len(d[\"vips\"]), d[\"census\"] is not None)'",
           srv_port);
  out = th_cmd_output(cmd);
  ck_assert_ptr_nonnull(out);
  ck_assert_str_eq(out, "2 True\n");
  free(out);
  srv_stop();
}
END_TEST

START_TEST(test_pipelining) {
  char buf[8192];
  size_t len = 0;
  srv_start(NULL);
  int fd = conn_to("127.0.0.1");
  /* One write, three requests: the answers come in order. */
  send_str(fd, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"
               "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
               "HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  ck_assert_int_eq(recv_until(fd, buf, sizeof(buf), &len, NULL), 1);
  char *a = strstr(buf, "HTTP/1.1 200 OK\r\n");
  char *b = strstr(buf, "HTTP/1.1 404 Not Found\r\n");
  char *c = a ? strstr(a + 1, "HTTP/1.1 200 OK\r\n") : NULL;
  ck_assert_msg(a == buf && b && c && a < b && b < c, "got '%s'", buf);
  ck_assert_uint_eq(count_of(buf, "HTTP/1.1 "), 3);
  ck_assert_ptr_nonnull(strstr(c, "Connection: close\r\n"));
  close(fd);
  srv_stop();
}
END_TEST

/* A misbehaving client gets its status line and a close; a keep-alive
 * connection opened before it keeps working on the same socket. */
static void check_bad_client(const char *request, const char *status) {
  char buf[8192];
  size_t len = 0;
  int good = conn_to("127.0.0.2");
  keepalive_roundtrip(good);
  int fd = conn_to("127.0.0.1");
  send_str(fd, request);
  ck_assert_int_eq(recv_until(fd, buf, sizeof(buf), &len, NULL), 1);
  ck_assert_msg(strncmp(buf, status, strlen(status)) == 0,
                "expected '%s', got '%s'", status, buf);
  ck_assert_ptr_nonnull(strstr(buf, "Connection: close\r\n"));
  close(fd);
  keepalive_roundtrip(good);
  close(good);
  curl_ok("127.0.0.1");
}

START_TEST(test_malformed) {
  srv_start(NULL);
  check_bad_client("GET / HTTP/1.1\r\nHost: x\r\n\r\nBL\x01H / HTTP/1.1\r\n\r\n",
                   "HTTP/1.1 200 OK\r\n");
  check_bad_client("GET / HTTP/1.1\r\nBad Header\r\n\r\n",
                   "HTTP/1.1 400 Bad Request\r\n");
  check_bad_client("GET / HTTP/9.9\r\n\r\n", "HTTP/1.1 400 Bad Request\r\n");
  check_bad_client("GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: "
                   "2\r\n\r\nab",
                   "HTTP/1.1 400 Bad Request\r\n");
  srv_stop();
}
END_TEST

/* Request smuggling shapes a proxy in front may pass on differently: each
 * is answered 400 and closed, as nginx 1.22 answers them (docs/http.md
 * lists what nginx does for each). */
START_TEST(test_strict_parsing) {
  srv_start(NULL);
  /* CR not followed by LF ending the header block (CVE-2025-23167). */
  check_bad_client("GET / HTTP/1.1\r\nHost: a\r\n\rX\r\n\r\n",
                   "HTTP/1.1 400 Bad Request\r\n");
  /* Chunk data followed by two bytes that are not CRLF. */
  check_bad_client("GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: "
                   "chunked\r\n\r\n3\r\nabcXY0\r\n\r\n",
                   "HTTP/1.1 400 Bad Request\r\n");
  /* A space inside a header name, or before the colon. */
  check_bad_client("GET / HTTP/1.1\r\nHo st: a\r\n\r\n",
                   "HTTP/1.1 400 Bad Request\r\n");
  check_bad_client("GET / HTTP/1.1\r\nHost : a\r\n\r\n",
                   "HTTP/1.1 400 Bad Request\r\n");
  /* obs-fold (RFC 9112 5.2: reject or replace; nginx rejects). */
  check_bad_client("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
                   "HTTP/1.1 400 Bad Request\r\n");
  /* Transfer-Encoding on HTTP/1.0 (RFC 9112 6.1: treat as faulty). */
  check_bad_client("GET / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: "
                   "chunked\r\n\r\n0\r\n\r\n",
                   "HTTP/1.1 400 Bad Request\r\n");
  /* A CR alone inside a header value. */
  check_bad_client("GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
                   "HTTP/1.1 400 Bad Request\r\n");
  srv_stop();
}
END_TEST

/* What nginx accepts, kept: a bare LF ending the header block (RFC 9112
 * 2.2 allows LF as a line end), empty lines before a request (2.2: ignore
 * at least one) and a simple HTTP/0.9 GET, answered as nginx answers it:
 * the body alone, then close. */
START_TEST(test_lenient_kept) {
  char buf[4096];
  size_t len = 0;
  srv_start(NULL);
  int fd = conn_to("127.0.0.1");
  send_str(fd, "GET / HTTP/1.1\r\nHost: a\r\n\n"
               "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
  ck_assert_int_eq(recv_until(fd, buf, sizeof(buf), &len, NULL), 1);
  ck_assert_msg(count_of(buf, "HTTP/1.1 200 OK\r\n") == 2, "got '%s'", buf);
  close(fd);
  fd = conn_to("127.0.0.1");
  len = 0;
  send_str(fd, "GET /\r\n\r\n");
  ck_assert_int_eq(recv_until(fd, buf, sizeof(buf), &len, NULL), 1);
  ck_assert_str_eq(buf, "Hello from uvip\n");
  close(fd);
  fd = conn_to("127.0.0.1");
  len = 0;
  send_str(fd, "HEAD /\r\n\r\n");
  ck_assert_int_eq(recv_until(fd, buf, sizeof(buf), &len, NULL), 1);
  ck_assert_str_eq(buf, "Bad Request\n");
  close(fd);
  srv_stop();
}
END_TEST

static void expect_usage_error(const char *args, const char *name);

/* Sends `drip` one byte per 50 ms (waiting for an answer paces it) until
 * the server answers or closes; returns what it sent back. */
static void drip_until_answer(int fd, const char *drip, char *buf, size_t cap) {
  size_t len = 0, i;
  int readable = 0;
  for (i = 0; !readable; i++) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    send(fd, drip + (i % strlen(drip)), 1, MSG_NOSIGNAL);
    readable = poll(&p, 1, 50) == 1;
  }
  ck_assert_int_eq(recv_until(fd, buf, cap, &len, NULL), 1);
}

/* A body trickled in faster than any idle timeout still meets the request
 * deadline (first byte to complete request): 408, and the metrics say
 * which deadline it was. */
START_TEST(test_request_deadline) {
  const char *extra[] = {"--request-timeout-ms", "300", "--header-timeout-ms",
                         "3600000", "--keepalive-timeout-ms", "3600000", NULL};
  char buf[2048], args[128];
  srv_start(extra);
  int fd = conn_to("127.0.0.1");
  send_str(fd, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n");
  drip_until_answer(fd, "x", buf, sizeof(buf));
  ck_assert_msg(strncmp(buf, "HTTP/1.1 408 Request Timeout\r\n", 30) == 0,
                "got '%s'", buf);
  close(fd);
  snprintf(args, sizeof(args), "http://127.0.0.1:%d/metrics", srv_port);
  char *out = curl(args);
  ck_assert_msg(strstr(out, "uvip_http_timeouts_total{kind=\"request\"} 1\n"),
                "%s", out);
  free(out);
  srv_stop();
}
END_TEST

/* Empty lines between requests are the start of the next one (RFC 9112
 * 2.2 lets a server skip a few): a stream of them meets the header
 * timeout instead of refreshing the idle one for ever. */
START_TEST(test_crlf_stream) {
  const char *extra[] = {"--header-timeout-ms", "300", "--keepalive-timeout-ms",
                         "3600000", NULL};
  char buf[2048];
  srv_start(extra);
  int fd = conn_to("127.0.0.1");
  keepalive_roundtrip(fd);
  drip_until_answer(fd, "\r\n", buf, sizeof(buf));
  ck_assert_msg(strncmp(buf, "HTTP/1.1 408 Request Timeout\r\n", 30) == 0,
                "got '%s'", buf);
  close(fd);
  srv_stop();
}
END_TEST

/* --max-body-bytes: a declared length over it is refused before any body
 * byte, a chunked body when its chunks pass it; at the limit it is fine. */
START_TEST(test_body_limit) {
  const char *extra[] = {"--max-body-bytes", "100", NULL};
  char buf[2048], req[512];
  size_t len = 0;
  srv_start(extra);
  check_bad_client("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 101\r\n\r\n",
                   "HTTP/1.1 413 Content Too Large\r\n");
  snprintf(req, sizeof(req),
           "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
           "40\r\n%064d\r\n40\r\n%064d\r\n0\r\n\r\n", 0, 0);
  check_bad_client(req, "HTTP/1.1 413 Content Too Large\r\n");
  int fd = conn_to("127.0.0.1");
  snprintf(req, sizeof(req),
           "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n"
           "Connection: close\r\n\r\n%0100d", 0);
  send_str(fd, req);
  ck_assert_int_eq(recv_until(fd, buf, sizeof(buf), &len, NULL), 1);
  ck_assert_msg(strncmp(buf, "HTTP/1.1 405 ", 13) == 0, "got '%s'", buf);
  close(fd);
  expect_usage_error("--max-body-bytes x", "--max-body-bytes");
  expect_usage_error("--request-timeout-ms 0", "--request-timeout-ms");
  srv_stop();
}
END_TEST

/* The per-VIP part of /metrics and /stats.json is rendered once per
 * --stats-interval-ms and the same bytes served to every client; the HTTP
 * counters before it are fresh in every response. */
START_TEST(test_stats_cached) {
  const char *extra[] = {"--stats-interval-ms", "3600000",
                         "--census-interval-ms", "0", NULL};
  char args[128], series[128];
  srv_start(extra);
  snprintf(args, sizeof(args), "http://127.0.0.1:%d/metrics", srv_port);
  snprintf(series, sizeof(series),
           "\nuvip_vip_accepted_total{vip=\"127.0.0.1:%d\"} 1\n", srv_port);
  char *out = curl(args);
  ck_assert_msg(strstr(out, series), "no '%s' in %s", series, out);
  free(out);
  curl_ok("127.0.0.1");
  out = curl(args);
  /* Two more connections on 127.0.0.1, and still the cached count... */
  ck_assert_msg(strstr(out, series), "not cached: no '%s' in %s", series, out);
  /* ...while the request counter (fresh) has all three before this one. */
  ck_assert_msg(strstr(out, "\nuvip_http_requests_total 3\n"), "%s", out);
  free(out);
  snprintf(args, sizeof(args), "http://127.0.0.1:%d/stats.json", srv_port);
  out = curl(args);
  snprintf(series, sizeof(series), "{\"vip\":\"127.0.0.1:%d\",", srv_port);
  ck_assert_msg(strstr(out, series) && strstr(out, "\"requests\":4,"), "%s",
                out);
  free(out);
  srv_stop();
}
END_TEST

/* --admin-listen: /metrics and /stats.json there, describing the data
 * VIPs; the data VIPs answer them with 404. */
START_TEST(test_admin_listen) {
  const char *extra[] = {"--admin-listen", "127.0.0.3", NULL};
  char args[128], series[128];
  srv_start(extra);
  ck_assert_ptr_nonnull(strstr(srv_banner, "admin on 127.0.0.3"));
  curl_ok("127.0.0.2");
  snprintf(args, sizeof(args), "-i http://127.0.0.1:%d/metrics", srv_port);
  char *out = curl(args);
  ck_assert_msg(strncmp(out, "HTTP/1.1 404 ", 13) == 0, "%s", out);
  free(out);
  snprintf(args, sizeof(args), "http://127.0.0.3:%d/metrics", srv_port);
  out = curl(args);
  snprintf(series, sizeof(series),
           "\nuvip_vip_accepted_total{vip=\"127.0.0.2:%d\"} 1\n", srv_port);
  ck_assert_msg(strstr(out, series), "no '%s' in %s", series, out);
  ck_assert_msg(strstr(out, "uvip_http_responses_total{code=\"404\"} 1\n"),
                "%s", out);
  /* The admin listener is not one of the VIPs. */
  snprintf(series, sizeof(series), "{vip=\"127.0.0.3:%d\"}", srv_port);
  ck_assert_ptr_null(strstr(out, series));
  free(out);
  srv_stop();
}
END_TEST

/* A client that asks for a big response and never reads: once more than
 * --max-output-bytes would wait for it, the server resets it at once
 * (it used to keep it, and the kernel buffers, until the keepalive
 * timeout). Checked without reading: poll() reports the reset. */
START_TEST(test_output_limit) {
  const char *extra[] = {"--listen", "127.0.2.1-127.0.2.254",
                         "--max-output-bytes", "4096",
                         "--keepalive-timeout-ms", "3600000",
                         "--census-interval-ms", "0", NULL};
  struct sockaddr_storage sa;
  int small = 1;
  srv_start(extra);
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)),
                   0);
  th_addr("127.0.0.1", srv_port, &sa);
  ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(struct sockaddr_in)),
                   0);
  send_str(fd, "GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n");
  struct pollfd p = {.fd = fd, .events = POLLRDHUP};
  ck_assert_msg(poll(&p, 1, WAIT_MS) == 1 &&
                    (p.revents & (POLLHUP | POLLERR | POLLRDHUP)),
                "the server kept a client that does not read");
  close(fd);
  expect_usage_error("--max-output-bytes 100", "--max-output-bytes");
  srv_stop();
}
END_TEST

/* A client that reads a big /metrics slowly gets all of it: the part the
 * socket did not take waits in a write that references the shared body
 * (from an offset inside it), and a pipelined request after it is
 * answered after it. */
START_TEST(test_stats_slow_reader) {
  /* The socket holds about 128 KiB of the 185 KB body; the rest waits,
   * under the limit. */
  const char *extra[] = {"--listen", "127.0.2.1-127.0.2.254",
                         "--max-output-bytes", "131072",
                         "--census-interval-ms", "0", NULL};
  static char buf[1 << 20];
  struct sockaddr_storage sa;
  size_t len = 0;
  int small = 1;
  srv_start(extra);
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)),
                   0);
  th_addr("127.0.0.1", srv_port, &sa);
  ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(struct sockaddr_in)),
                   0);
  send_str(fd, "GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n"
               "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
  ck_assert_int_eq(recv_until(fd, buf, sizeof(buf), &len, NULL), 1);
  char *cl = strstr(buf, "Content-Length: ");
  char *body = strstr(buf, "\r\n\r\n");
  ck_assert_msg(cl && body, "got '%.200s'", buf);
  size_t n = strtoul(cl + 16, NULL, 10);
  body += 4;
  ck_assert_msg(n > 100000, "a small /metrics: %zu", n);
  ck_assert_uint_ge(len, (size_t)(body - buf) + n);
  ck_assert_msg(strncmp(body + n, "HTTP/1.1 200 OK\r\n", 17) == 0,
                "after the body: '%.100s'", body + n);
  ck_assert_ptr_nonnull(strstr(body + n, "Hello from uvip\n"));
  ck_assert_ptr_nonnull(strstr(body, "uvip_vip_state{vip=\"127.0.2.254:"));
  close(fd);
  char args[128];
  snprintf(args, sizeof(args), "http://127.0.0.1:%d/metrics", srv_port);
  char *out = curl(args);
  ck_assert_msg(!strstr(out, "\nuvip_http_write_stalls_total 0\n") &&
                    strstr(out, "\nuvip_http_output_overflows_total 0\n"),
                "no stall, or an overflow");
  free(out);
  srv_stop();
}
END_TEST

/* --admin-listen with workers: the acceptor's admin listener reads what
 * the workers and the acceptor publish (periodically: scraped until it
 * shows), without taking a worker's slot. */
START_TEST(test_admin_listen_workers) {
  const char *extra[] = {"--workers", "2", "--worker-mode", "process",
                         "--admin-listen", "127.0.0.3", NULL};
  char args[128], series[128];
  int i, found = 0;
  srv_start(extra);
  curl_ok("127.0.0.2");
  curl_ok("127.0.0.2");
  snprintf(args, sizeof(args), "-i http://127.0.0.1:%d/stats.json", srv_port);
  char *out = curl(args);
  ck_assert_msg(strncmp(out, "HTTP/1.1 404 ", 13) == 0, "%s", out);
  free(out);
  snprintf(args, sizeof(args), "http://127.0.0.3:%d/metrics", srv_port);
  snprintf(series, sizeof(series),
           "\nuvip_vip_accepted_total{vip=\"127.0.0.2:%d\"} 2\n", srv_port);
  for (i = 0; !found; i++) {
    out = curl(args);
    found = strstr(out, "\nuvip_http_requests_total 3\n") &&
            strstr(out, "uvip_http_responses_total{code=\"404\"} 1\n") &&
            strstr(out, series);
    if (!found && i % 100 == 99)
      fprintf(stderr, "/metrics after %d scrapes:\n%s\n", i + 1, out);
    free(out);
    if (!found) /* the next publish is at most 250 ms away */
      (void)poll(NULL, 0, 50);
  }
  srv_stop();
}
END_TEST

START_TEST(test_malformed_after_good) {
  char buf[8192];
  size_t len = 0;
  srv_start(NULL);
  int fd = conn_to("127.0.0.1");
  send_str(fd, "GET / HTTP/1.1\r\nHost: x\r\n\r\nBL\x01H / HTTP/1.1\r\n\r\n");
  ck_assert_int_eq(recv_until(fd, buf, sizeof(buf), &len, NULL), 1);
  char *bad = strstr(buf, "HTTP/1.1 400 Bad Request\r\n");
  ck_assert_msg(strncmp(buf, "HTTP/1.1 200 OK\r\n", 17) == 0 && bad,
                "got '%s'", buf);
  close(fd);
  srv_stop();
}
END_TEST

START_TEST(test_oversized_headers) {
  static char req[6000];
  const char *extra[] = {"--max-header-bytes", "1024", NULL};
  srv_start(extra);
  /* Just under the limit is fine. */
  snprintf(req, sizeof(req), "GET / HTTP/1.1\r\nX-Pad: %0900d\r\n\r\n", 0);
  int fd = conn_to("127.0.0.1");
  send_str(fd, req);
  char buf[2048];
  size_t len = 0;
  ck_assert_int_eq(recv_until(fd, buf, sizeof(buf), &len, "Hello from uvip\n"),
                   0);
  close(fd);
  /* Over it: 431, whether the padding is a value or whitespace. */
  snprintf(req, sizeof(req), "GET / HTTP/1.1\r\nX-Pad: %04000d\r\n\r\n", 0);
  check_bad_client(req, "HTTP/1.1 431 Request Header Fields Too Large\r\n");
  snprintf(req, sizeof(req), "GET / HTTP/1.1\r\nX-Pad:%4000s\r\n\r\n", "x");
  check_bad_client(req, "HTTP/1.1 431 Request Header Fields Too Large\r\n");
  srv_stop();
}
END_TEST

/* A client that has sent part of its headers holds only its own
 * connection: another one is served meanwhile. The header timeout is far
 * beyond the test's own limit, so the slow client is certainly still
 * waiting when the other is served and when it is checked. */
START_TEST(test_slow_sender_others_served) {
  const char *extra[] = {"--header-timeout-ms", "3600000", NULL};
  srv_start(extra);
  int good = conn_to("127.0.0.2");
  keepalive_roundtrip(good);
  int fd = conn_to("127.0.0.1");
  send_str(fd, "GET / HTTP/1.1\r\nHost: x\r\nX-Slow: 1");
  keepalive_roundtrip(good);
  curl_ok("127.0.0.1");
  keepalive_roundtrip(good);
  struct pollfd p = {.fd = fd, .events = POLLIN};
  ck_assert_int_eq(poll(&p, 1, 0), 0); /* no answer, no close */
  close(fd);
  close(good);
  srv_stop();
}
END_TEST

/* A client that drips its headers byte by byte, faster than the header
 * timeout, still gets 408: bytes arriving do not extend the deadline. The
 * drip goes on until the answer comes (check's timeout bounds it); a
 * server that extended the deadline would never answer. */
START_TEST(test_slow_sender) {
  const char *extra[] = {"--header-timeout-ms", "300", NULL};
  const char *drip = "X-Slow: 1234567890123456789012345678901234567890\r\n";
  char buf[2048];
  size_t len = 0, i;
  int readable = 0;
  srv_start(extra);
  int fd = conn_to("127.0.0.1");
  send_str(fd, "GET / HTTP/1.1\r\nHost: x\r\n");
  /* One byte per 50 ms (the wait for the answer paces the drip). */
  for (i = 0; !readable; i++) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    send(fd, drip + (i % strlen(drip)), 1, MSG_NOSIGNAL);
    readable = poll(&p, 1, 50) == 1;
  }
  ck_assert_int_eq(recv_until(fd, buf, sizeof(buf), &len, NULL), 1);
  ck_assert_msg(strncmp(buf, "HTTP/1.1 408 Request Timeout\r\n", 30) == 0,
                "got '%s'", buf);
  close(fd);
  char args[128];
  snprintf(args, sizeof(args), "http://127.0.0.1:%d/metrics", srv_port);
  char *out = curl(args);
  ck_assert_msg(strstr(out, "uvip_http_timeouts_total{kind=\"header\"} 1\n"),
                "%s", out);
  free(out);
  srv_stop();
}
END_TEST

START_TEST(test_idle_keepalive) {
  const char *extra[] = {"--keepalive-timeout-ms", "200", NULL};
  char buf[2048];
  size_t len = 0;
  srv_start(extra);
  int fd = conn_to("127.0.0.1");
  keepalive_roundtrip(fd);
  /* Nothing more is sent: the server closes without another byte. */
  ck_assert_int_eq(recv_until(fd, buf, sizeof(buf), &len, NULL), 1);
  ck_assert_uint_eq(len, 0);
  close(fd);
  char args[128];
  snprintf(args, sizeof(args), "http://127.0.0.1:%d/metrics", srv_port);
  char *out = curl(args);
  ck_assert_msg(strstr(out, "uvip_http_timeouts_total{kind=\"idle\"} 1\n"), "%s",
                out);
  free(out);
  srv_stop();
}
END_TEST

START_TEST(test_max_requests) {
  const char *extra[] = {"--max-requests", "3", NULL};
  char buf[8192];
  size_t len = 0;
  srv_start(extra);
  int fd = conn_to("127.0.0.1");
  send_str(fd, "GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n"
               "GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n");
  ck_assert_int_eq(recv_until(fd, buf, sizeof(buf), &len, NULL), 1);
  ck_assert_uint_eq(count_of(buf, "HTTP/1.1 200 OK\r\n"), 3);
  ck_assert_uint_eq(count_of(buf, "Connection: close\r\n"), 1);
  char *last = strstr(strstr(strstr(buf, "HTTP/") + 1, "HTTP/") + 1, "HTTP/");
  ck_assert_ptr_nonnull(strstr(last, "Connection: close\r\n"));
  close(fd);
  srv_stop();
}
END_TEST

START_TEST(test_http10) {
  char buf[4096];
  size_t len = 0;
  srv_start(NULL);
  int fd = conn_to("127.0.0.1");
  send_str(fd, "GET / HTTP/1.0\r\n\r\n");
  ck_assert_int_eq(recv_until(fd, buf, sizeof(buf), &len, NULL), 1);
  ck_assert_ptr_nonnull(strstr(buf, "Connection: close\r\n"));
  ck_assert_ptr_nonnull(strstr(buf, "\r\n\r\nHello from uvip\n"));
  close(fd);
  fd = conn_to("127.0.0.1");
  for (int i = 0; i < 2; i++) {
    len = 0;
    send_str(fd, "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    ck_assert_int_eq(recv_until(fd, buf, sizeof(buf), &len, "uvip\n"), 0);
    ck_assert_ptr_nonnull(strstr(buf, "Connection: keep-alive\r\n"));
  }
  close(fd);
  char args[128];
  snprintf(args, sizeof(args), "--http1.0 http://127.0.0.2:%d/", srv_port);
  char *out = curl(args);
  ck_assert_str_eq(out, "Hello from uvip\n");
  free(out);
  srv_stop();
}
END_TEST

/* glibc's struct tcp_info stops before the segment counters that Linux
 * (4.2 and later) appends; this is the kernel's layout up to them. */
struct tcp_info_segs {
  struct tcp_info base;
  uint64_t pacing_rate, max_pacing_rate, bytes_acked, bytes_received;
  uint32_t segs_out, segs_in;
};
_Static_assert(offsetof(struct tcp_info_segs, segs_in) == 140,
               "tcpi_segs_in is at offset 140 in the kernel's tcp_info");

static unsigned int segs_in(int fd) {
  struct tcp_info_segs ti;
  socklen_t len = sizeof(ti);
  memset(&ti, 0, sizeof(ti));
  ck_assert_int_eq(getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len), 0);
  ck_assert_uint_ge(len, offsetof(struct tcp_info_segs, segs_in) +
                             sizeof(ti.segs_in));
  return ti.segs_in;
}

/* The last response before the server closes carries the FIN in its own
 * segment: a fresh connection that asks for Connection: close receives no
 * more segments than one that stays open (same handshake, same answer).
 * A separate FIN would be one more segment for the client to process. */
START_TEST(test_close_fin_with_response) {
  char buf[2048];
  size_t len = 0;
  unsigned int keep, closed;
  srv_start(NULL);
  int fd = conn_to("127.0.0.1");
  keepalive_roundtrip(fd);
  keep = segs_in(fd);
  close(fd);
  fd = conn_to("127.0.0.1");
  send_str(fd, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  ck_assert_int_eq(recv_until(fd, buf, sizeof(buf), &len, NULL), 1);
  ck_assert_ptr_nonnull(strstr(buf, "\r\n\r\nHello from uvip\n"));
  closed = segs_in(fd);
  close(fd);
  ck_assert_msg(keep > 0 && closed == keep,
                "segments received: %u with Connection: close, %u without",
                closed, keep);
  srv_stop();
}
END_TEST

/* A client that pipelines far more than it reads: the server must stop
 * parsing (not buffer without bound) and still answer every request. */
START_TEST(test_backpressure) {
  const size_t nreq = 100000;
  const char *req = "GET / HTTP/1.1\r\n\r\n";
  const char *tail_pat = "Hello from uvip\n";
  size_t rlen = strlen(req), sent = 0, total, got = 0, responses = 0, i;
  char in[32], rbuf[65536], args[128];
  struct sockaddr_storage sa;
  int small = 16384;
  const char *extra[] = {"--max-requests", "0", NULL};

  srv_start(extra);
  /* A small receive window so that the responses (about 13 MB) cannot all
   * sit in socket buffers: the server has to wait for this client. */
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)),
                   0);
  th_addr("127.0.0.1", srv_port, &sa);
  ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(struct sockaddr_in)),
                   0);
  char *all = malloc(nreq * rlen + 64);
  for (i = 0; i < nreq - 1; i++)
    memcpy(all + i * rlen, req, rlen);
  strcpy(all + i * rlen, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
  total = strlen(all);
  /* Send what the socket takes without reading anything, until the server
   * reports a write it had to wait for: the responses (about 13 MB) exceed
   * any send buffer (tcp_wmem max is 4 MB) plus our receive buffer, so
   * that must happen. Checked through /metrics on another connection. */
  snprintf(args, sizeof(args), "http://127.0.0.2:%d/metrics", srv_port);
  for (;;) {
    ssize_t w;
    while (sent < total &&
           (w = send(fd, all + sent, total - sent,
                     MSG_NOSIGNAL | MSG_DONTWAIT)) > 0)
      sent += (size_t)w;
    char *out = curl(args);
    int stalled = !strstr(out, "uvip_http_write_stalls_total 0\n") &&
                  strstr(out, "uvip_http_write_stalls_total ");
    free(out);
    if (stalled)
      break;
    /* Not yet: wait until the server has taken more requests (the
     * stall counter only grows, so looking again after that, or after a
     * while without it, misses nothing; check's timeout bounds this). */
    struct pollfd pw = {.fd = fd, .events = sent < total ? POLLOUT : 0};
    (void)poll(&pw, 1, 100);
  }
  /* ...then read, sending the rest as the server lets us, up to EOF. */
  for (;;) {
    struct pollfd p = {.fd = fd,
                       .events = POLLIN | (sent < total ? POLLOUT : 0)};
    ck_assert_msg(poll(&p, 1, WAIT_MS) == 1, "stalled at %zu responses",
                  responses);
    if (p.revents & POLLOUT) {
      ssize_t w =
          send(fd, all + sent, total - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (w > 0)
        sent += (size_t)w;
    }
    if (p.revents & (POLLIN | POLLHUP)) {
      ssize_t r = recv(fd, rbuf, sizeof(rbuf), 0);
      ck_assert_msg(r >= 0, "recv after %zu responses, %zu/%zu sent: %s",
                    responses, sent, total, strerror(errno));
      if (r == 0)
        break;
      /* Count response bodies, across read boundaries. */
      for (i = 0; i < (size_t)r; i++) {
        in[got++] = rbuf[i];
        if (got == strlen(tail_pat)) {
          if (memcmp(in, tail_pat, got) == 0)
            responses++;
          memmove(in, in + 1, --got);
        }
      }
    }
  }
  ck_assert_uint_eq(sent, total);
  ck_assert_uint_eq(responses, nreq);
  free(all);
  close(fd);
  curl_ok("127.0.0.1");
  srv_stop();
}
END_TEST

START_TEST(test_graceful_stop) {
  srv_start(NULL);
  int fd = conn_to("127.0.0.1");
  keepalive_roundtrip(fd);
  /* An idle keep-alive connection must not hold the stop up. */
  srv_stop();
  char buf[64];
  size_t len = 0;
  ck_assert_int_eq(recv_until(fd, buf, sizeof(buf), &len, NULL), 1);
  close(fd);
}
END_TEST

/* With workers too, idle keep-alive connections must not hold the stop
 * up: with both timeouts at a minute, the server has to close them and exit
 * within srv_stop()'s bound. */
static void check_graceful_workers(const char *mode) {
  const char *extra[] = {"--workers", "2", "--worker-mode", mode,
                         "--shutdown-timeout-ms", "60000",
                         "--keepalive-timeout-ms", "60000", NULL};
  int held[4], i;
  srv_start(extra);
  for (i = 0; i < 4; i++) {
    held[i] = conn_to(i % 2 ? "127.0.0.2" : "127.0.0.1");
    keepalive_roundtrip(held[i]);
  }
  srv_stop();
  for (i = 0; i < 4; i++) {
    char buf[64];
    size_t len = 0;
    ck_assert_int_eq(recv_until(held[i], buf, sizeof(buf), &len, NULL), 1);
    ck_assert_uint_eq(len, 0);
    close(held[i]);
  }
}

START_TEST(test_graceful_stop_workers_thread) {
  check_graceful_workers("thread");
}
END_TEST

START_TEST(test_graceful_stop_workers_process) {
  check_graceful_workers("process");
}
END_TEST

/* Workers (threads or processes): every connection is served, and /metrics
 * from any worker shows all workers' connections and the acceptor's VIP
 * counters. Those are published periodically (the acceptor every 250 ms,
 * each worker on its tick), by design: /metrics is scraped until it shows
 * them, with no bound of its own (check's timeout is the bound). */
static void check_workers(const char *mode) {
  const char *extra[] = {"--workers", "2", "--worker-mode", mode,
                         "--shutdown-timeout-ms", "500", NULL};
  char args[128], series[128];
  int held[4], i, found = 0;
  srv_start(extra);
  for (i = 0; i < 4; i++) {
    held[i] = conn_to(i % 2 ? "127.0.0.2" : "127.0.0.1");
    keepalive_roundtrip(held[i]);
  }
  curl_ok("127.0.0.2");
  snprintf(args, sizeof(args), "http://127.0.0.1:%d/metrics", srv_port);
  snprintf(series, sizeof(series),
           "\nuvip_vip_accepted_total{vip=\"127.0.0.2:%d\"} 3\n", srv_port);
  for (i = 0; !found; i++) {
    char *out = curl(args);
    /* 4 held + this scrape, on both workers; 3 accepted on .2 (2 held,
     * the curl), counted by the acceptor. */
    found = strstr(out, "\nuvip_http_connections_active 5\n") &&
            strstr(out, series);
    if (!found && i % 100 == 99)
      fprintf(stderr, "/metrics after %d scrapes:\n%s\n", i + 1, out);
    free(out);
    if (!found) /* the next publish is at most 250 ms away */
      (void)poll(NULL, 0, 50);
  }
  for (i = 0; i < 4; i++) {
    keepalive_roundtrip(held[i]);
    close(held[i]);
  }
  srv_stop();
}

START_TEST(test_workers_thread) { check_workers("thread"); }
END_TEST

START_TEST(test_workers_process) { check_workers("process"); }
END_TEST

/* The listener and admission options are taken and the server serves
 * with them; past 16 VIPs the listing is summed up; without the census
 * /metrics and /stats.json carry none. */
START_TEST(test_options_many_vips) {
  const char *extra[] = {"--listen", "127.0.1.1-127.0.1.20", "--max-conns",
                         "100", "--max-conns-per-vip", "50", "--accept-budget",
                         "8", "--backlog", "64", "--reuseport",
                         "--defer-accept", "0", "--census-interval-ms", "0",
                         NULL};
  char args[256], want[128];
  srv_start(extra);
  ck_assert_msg(strstr(srv_banner, "uvip-http: ... 22 VIPs in all\n"), "%s",
                srv_banner);
  snprintf(want, sizeof(want), "listening on http://127.0.1.14:%d/\n",
           srv_port);
  ck_assert_msg(strstr(srv_banner, want), "no '%s' in %s", want, srv_banner);
  ck_assert_msg(!strstr(srv_banner, "listening on http://127.0.1.15:"), "%s",
                srv_banner);
  curl_ok("127.0.1.20");
  curl_ok("127.0.0.2");
  snprintf(args, sizeof(args), "http://127.0.1.20:%d/metrics", srv_port);
  char *out = curl(args);
  snprintf(want, sizeof(want),
           "\nuvip_vip_accepted_total{vip=\"127.0.1.20:%d\"} 2\n", srv_port);
  ck_assert_msg(strstr(out, want), "no '%s' in %s", want, out);
  ck_assert_msg(!strstr(out, "\nuvip_sockets{"), "%s", out);
  free(out);
  char cmd[256];
  snprintf(cmd, sizeof(cmd),
           "curl -s --max-time 10 http://127.0.0.1:%d/stats.json | python3 -c "
           "'import json,sys; d=json.load(sys.stdin); "
           "print(len(d[\"vips\"]), d[\"census\"])'",
           srv_port);
  out = th_cmd_output(cmd);
  ck_assert_ptr_nonnull(out);
  ck_assert_str_eq(out, "22 None\n");
  free(out);
  srv_stop();
}
END_TEST

/* The other balance modes serve on every VIP too. */
static void check_balance(const char *balance) {
  const char *extra[] = {"--workers", "2", "--balance", balance,
                         "--census-interval-ms", "0", NULL};
  srv_start(extra);
  ck_assert_msg(strstr(srv_banner, "uvip-http: 2 thread workers\n"), "%s",
                srv_banner);
  for (int i = 0; i < 4; i++)
    curl_ok(i % 2 ? "127.0.0.2" : "127.0.0.1");
  srv_stop();
}

START_TEST(test_workers_round_robin) { check_balance("round-robin"); }
END_TEST

START_TEST(test_workers_reuseport) { check_balance("reuseport"); }
END_TEST

/* A client in the middle of its request headers does not hold a stop up
 * past --shutdown-timeout-ms (the header timeout is a minute): it is
 * closed and the server exits 0. */
START_TEST(test_shutdown_timeout) {
  const char *extra[] = {"--shutdown-timeout-ms", "200", "--header-timeout-ms",
                         "60000", "--census-interval-ms", "0", NULL};
  char buf[256];
  size_t len = 0;
  srv_start(extra);
  int fd = conn_to("127.0.0.1");
  keepalive_roundtrip(fd);
  send_str(fd, "GET / HTTP/1.1\r\nHost: x\r\n");
  /* A full request on another connection: the partial one has been read
   * by then, in the same or an earlier loop turn. */
  curl_ok("127.0.0.2");
  srv_stop();
  ck_assert_int_eq(recv_until(fd, buf, sizeof(buf), &len, NULL), 1);
  close(fd);
}
END_TEST

/* A VIP that cannot be bound is named on stderr; the others serve. */
START_TEST(test_failed_vip) {
  tx_proc_t p;
  char portbuf[16], want[128], rest[4096] = "";
  srv_port = th_free_port();
  snprintf(portbuf, sizeof(portbuf), "%d", srv_port);
  /* TEST-NET-1 is on no interface of a test machine. */
  const char *argv[] = {http_bin(), "--listen", "127.0.0.1", "--listen",
                        "192.0.2.1", "--port", portbuf,
                        "--census-interval-ms", "0", NULL};
  tx_spawn(&p, argv);
  snprintf(want, sizeof(want), "uvip-http: 192.0.2.1:%d: ", srv_port);
  tx_expect_line(p.err, want, NULL, 0);
  tx_expect_line(p.out, "uvip-http: ready\n", NULL, 0);
  curl_ok("127.0.0.1");
  ck_assert_int_eq(kill(p.pid, SIGTERM), 0);
  tx_read_rest(p.out, rest, sizeof(rest));
  tx_read_rest(p.err, NULL, 0);
  ck_assert_int_eq(tx_wait_exit(&p), 0);
}
END_TEST

/* Reuseport worker processes that cannot bind (the test holds the port
 * without SO_REUSEPORT): uvip-http says so and exits 1, never "ready". */
START_TEST(test_reuseport_bind_error) {
  tx_proc_t p;
  char portbuf[16], out[4096] = "", err[4096] = "";
  int lfd[2];
  srv_port = th_free_port();
  snprintf(portbuf, sizeof(portbuf), "%d", srv_port);
  for (int i = 0; i < 2; i++) {
    struct sockaddr_storage sa;
    th_addr(i ? "127.0.0.2" : "127.0.0.1", srv_port, &sa);
    lfd[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(lfd[i], 0);
    ck_assert_int_eq(bind(lfd[i], (struct sockaddr *)&sa,
                          sizeof(struct sockaddr_in)), 0);
    ck_assert_int_eq(listen(lfd[i], 8), 0);
  }
  const char *argv[] = {http_bin(), "--listen", "127.0.0.1-127.0.0.2",
                        "--port", portbuf, "--workers", "2", "--worker-mode",
                        "process", "--balance", "reuseport",
                        "--census-interval-ms", "0", NULL};
  tx_spawn(&p, argv);
  tx_read_rest(p.out, out, sizeof(out));
  tx_read_rest(p.err, err, sizeof(err));
  ck_assert_int_eq(tx_wait_exit(&p), 1);
  ck_assert_msg(strstr(err, " cannot start: address already in use\n"), "%s",
                err);
  ck_assert_msg(strstr(out, "ready") == NULL, "%s", out);
  close(lfd[0]);
  close(lfd[1]);
}
END_TEST

START_TEST(test_version_help) {
  int rc;
  char cmd[4200];
  snprintf(cmd, sizeof(cmd), "%s --version", http_bin());
  char *out = tx_run(cmd, &rc);
  ck_assert_msg(rc == 0 && strncmp(out, "uvip-http ", 10) == 0 &&
                    strstr(out, " (libuv ") && strstr(out, ", llhttp "),
                "rc %d: %s", rc, out);
  free(out);
  snprintf(cmd, sizeof(cmd), "%s --help", http_bin());
  out = tx_run(cmd, &rc);
  ck_assert_msg(rc == 0 && strstr(out, "usage: uvip-http [options]\n") &&
                    strstr(out, "--census-interval-ms N"),
                "rc %d: %s", rc, out);
  free(out);
}
END_TEST

static void expect_usage_error(const char *args, const char *name) {
  char cmd[4096 + 512];
  snprintf(cmd, sizeof(cmd), "%s %s 2>&1; echo \"status=$?\"", http_bin(),
           args);
  char *out = th_cmd_output(cmd);
  ck_assert_ptr_nonnull(out);
  ck_assert_msg(strstr(out, "status=2\n"), "'%s': %s", args, out);
  ck_assert_msg(strstr(out, name), "'%s' does not name %s: %s", args, name,
                out);
  ck_assert_msg(count_of(out, "\n") == 2, "not one line: %s", out);
  free(out);
}

START_TEST(test_bad_args) {
  expect_usage_error("--port abc", "--port");
  expect_usage_error("--port 70000", "--port");
  expect_usage_error("--listen 10.0.0.1/33", "--listen");
  expect_usage_error("--accept-budget 0", "--accept-budget");
  expect_usage_error("--worker-mode fork", "--worker-mode");
  expect_usage_error("--worker-mode thread", "--workers");
  expect_usage_error("--workers 2 --balance best", "--balance");
  expect_usage_error("--bogus", "--bogus");
  expect_usage_error("--port", "--port");
  expect_usage_error("stray", "stray");
  expect_usage_error("--census-interval-ms 5", "--census-interval-ms");
  /* strtoull() would take ' -1' as 2^64-1. */
  expect_usage_error("--max-conns ' -1'", "--max-conns");
  expect_usage_error("--max-conns 99999999999999999999", "--max-conns");
  expect_usage_error("--listen 127.0.0.1:0", "port 0");
  char many[4096];
  size_t len = 0;
  for (int i = 0; i < 65; i++)
    len += (size_t)snprintf(many + len, sizeof(many) - len,
                            "--listen 127.0.0.%d ", i + 1);
  expect_usage_error(many, "--listen: at most 64 times");
}
END_TEST

int main(void) {
  Suite *s = suite_create("http");
  TCase *tc = tcase_create("http");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_curl_get);
  tcase_add_test(tc, test_curl_keepalive);
  tcase_add_test(tc, test_head);
  tcase_add_test(tc, test_metrics);
  tcase_add_test(tc, test_pipelining);
  tcase_add_test(tc, test_malformed);
  tcase_add_test(tc, test_malformed_after_good);
  tcase_add_test(tc, test_oversized_headers);
  tcase_add_test(tc, test_slow_sender);
  tcase_add_test(tc, test_slow_sender_others_served);
  tcase_add_test(tc, test_idle_keepalive);
  tcase_add_test(tc, test_max_requests);
  tcase_add_test(tc, test_http10);
  tcase_add_test(tc, test_close_fin_with_response);
  tcase_add_test(tc, test_backpressure);
  tcase_add_test(tc, test_graceful_stop);
  tcase_add_test(tc, test_bad_args);
  tcase_add_test(tc, test_workers_thread);
  tcase_add_test(tc, test_workers_process);
  tcase_add_test(tc, test_graceful_stop_workers_thread);
  tcase_add_test(tc, test_graceful_stop_workers_process);
  tcase_add_test(tc, test_options_many_vips);
  tcase_add_test(tc, test_workers_round_robin);
  tcase_add_test(tc, test_workers_reuseport);
  tcase_add_test(tc, test_shutdown_timeout);
  tcase_add_test(tc, test_failed_vip);
  tcase_add_test(tc, test_version_help);
  tcase_add_test(tc, test_reuseport_bind_error);
  suite_add_tcase(s, tc);
  /* Hardening for life behind a balancer (CK_RUN_CASE=harden). */
  tc = tcase_create("harden");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_strict_parsing);
  tcase_add_test(tc, test_lenient_kept);
  tcase_add_test(tc, test_request_deadline);
  tcase_add_test(tc, test_crlf_stream);
  tcase_add_test(tc, test_body_limit);
  tcase_add_test(tc, test_stats_cached);
  tcase_add_test(tc, test_admin_listen);
  tcase_add_test(tc, test_output_limit);
  tcase_add_test(tc, test_stats_slow_reader);
  tcase_add_test(tc, test_admin_listen_workers);
  suite_add_tcase(s, tc);
  return th_run_suite(s);
}
