/* UVIP_PROXY_PROTOCOL on the accept path, on real loopback sockets: headers
 * of every kind read before connection_cb, the addresses they carry, not a
 * byte after the header consumed, every bad input closing only its own
 * connection with a counted reason, the caps, and stop/pause/remove/close
 * while headers are pending.
 *
 * The library's recv() and epoll_ctl() go through the wrappers below
 * (-Wl,--wrap, static archive only): they count the reads that consume
 * header bytes, so that a header split over many reads is proven to be read
 * in that many pieces, and inject failures. No sleeps: every wait runs the
 * loop until a condition holds, bounded by a turn count.
 * SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "helpers.h"

/* ---- the wrappers ---- */

ssize_t __real_recv(int fd, void *buf, size_t len, int flags);
ssize_t __wrap_recv(int fd, void *buf, size_t len, int flags);
int __real_epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev);
int __wrap_epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev);

static struct {
  int consumed_reads;  /* recv() without MSG_PEEK that returned > 0 */
  bool consumed_flag;  /* set at each of them */
  int eintr_peek, eintr_take; /* inject EINTR on the next such calls */
  int short_take;      /* the next consuming recv returns one byte less */
  int fail_add;        /* EPOLL_CTL_ADD of a socket fails (ENOMEM) */
} w;

ssize_t __wrap_recv(int fd, void *buf, size_t len, int flags) {
  ssize_t n;
  if ((flags & MSG_PEEK) && w.eintr_peek > 0) {
    w.eintr_peek--;
    errno = EINTR;
    return -1;
  }
  if (!(flags & MSG_PEEK) && w.eintr_take > 0) {
    w.eintr_take--;
    errno = EINTR;
    return -1;
  }
  if (!(flags & MSG_PEEK) && w.short_take > 0 && len > 1) {
    w.short_take--;
    len--;
  }
  n = __real_recv(fd, buf, len, flags);
  if (!(flags & MSG_PEEK) && n > 0) {
    w.consumed_reads++;
    w.consumed_flag = true;
  }
  return n;
}

int __wrap_epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev) {
  /* Only the waiting sockets are added with EPOLLRDHUP. */
  if (op == EPOLL_CTL_ADD && w.fail_add > 0 && ev &&
      (ev->events & EPOLLRDHUP)) {
    w.fail_add--;
    errno = ENOMEM;
    return -1;
  }
  return __real_epoll_ctl(epfd, op, fd, ev);
}

/* ---- the server ---- */

#define MAXC 16

typedef struct {
  uvip_conn_t *c;
  int proxy;
  struct sockaddr_storage peer, local;
  char data[256];
  size_t ndata;
  bool open;
} rec_t;

static struct {
  rec_t r[MAXC];
  int n;          /* connections delivered */
  bool delivered; /* set at each delivery */
  bool got_data;  /* set when any bytes arrive */
  bool closed;    /* server closed */
  int close_cbs;
  int drained;
  uvip_vip_stats_t at_close; /* the server's counters in its close cb */
} g;

static char rbuf[4096];
static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  (void)h;
  (void)hint;
  *b = uv_buf_init(rbuf, sizeof(rbuf));
}

static void on_conn_closed(uvip_conn_t *c) {
  rec_t *r = uvip_conn_tcp(c)->data;
  r->open = false;
}

static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b) {
  rec_t *r = st->data;
  if (n < 0) {
    uvip_conn_close(r->c, on_conn_closed);
    return;
  }
  if (n > 0 && r->ndata + (size_t)n <= sizeof(r->data)) {
    memcpy(r->data + r->ndata, b->base, (size_t)n);
    r->ndata += (size_t)n;
    g.got_data = true;
  }
}

static void on_connection(uvip_server_t *s, uvip_conn_t *c) {
  rec_t *r;
  (void)s;
  ck_assert_int_lt(g.n, MAXC);
  r = &g.r[g.n++];
  r->c = c;
  r->open = true;
  r->proxy = uvip_conn_proxy(c);
  ck_assert_int_eq(uvip_conn_peer(c, &r->peer), 0);
  ck_assert_int_eq(uvip_conn_local(c, &r->local), 0);
  uvip_conn_tcp(c)->data = r;
  ck_assert_int_eq(uv_read_start(uvip_conn_stream(c), on_alloc, on_read), 0);
  g.delivered = true;
}

static void on_closed(uvip_server_t *s) {
  uvip_server_stats(s, &g.at_close);
  g.close_cbs++;
  g.closed = true;
}

static uv_loop_t loop;
static uvip_server_t *srv;
static struct sockaddr_storage vip_addr;

/* Before each test: with CK_FORK=no (valgrind) the tests share one
 * process, and the records and injections of the last one must not leak
 * into the next. */
static void reset_state(void) {
  memset(&g, 0, sizeof(g));
  memset(&w, 0, sizeof(w));
}

static void start(unsigned int timeout_ms, uint64_t max_conns) {
  uvip_server_options_t o;
  uvip_addrs_t *a;
  char err[128] = "";
  int port = th_free_port();
  uv_loop_init(&loop);
  uvip_server_options_init(&o);
  o.flags = UVIP_PROXY_PROTOCOL;
  o.proxy_timeout_ms = timeout_ms;
  o.max_conns = max_conns;
  a = th_addrs("127.0.0.1", port);
  ck_assert_int_eq(uvip_server_new(&loop, a, &o, &srv), 0);
  uvip_addrs_free(a);
  ck_assert_msg(uvip_server_listen(srv, on_connection, err, sizeof(err)) == 0,
                "%s", err);
  th_addr("127.0.0.1", port, &vip_addr);
}

static void finish(void) {
  g.closed = false;
  uvip_server_close_conns(srv);
  ck_assert_int_eq(uvip_server_close(srv, on_closed), 0);
  th_run_until(&loop, &g.closed, 200);
  ck_assert_int_eq(g.close_cbs, 1);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
}

static uvip_vip_stats_t stats(void) {
  uvip_vip_stats_t st;
  ck_assert_int_eq(uvip_server_stats(srv, &st), 0);
  return st;
}

/* Runs the loop until the server's counter at offset `field` reaches v. */
#define RUN_UNTIL_STAT(field, v)                                               \
  do {                                                                         \
    int turns_ = 0;                                                            \
    while (stats().field < (uint64_t)(v)) {                                    \
      ck_assert_msg(turns_++ < 2000, #field " stuck at %llu",                  \
                    (unsigned long long)stats().field);                        \
      uv_run(&loop, UV_RUN_ONCE);                                              \
    }                                                                          \
  } while (0)

static int client(void) { return th_connect((struct sockaddr *)&vip_addr, NULL); }

static void send_all(int fd, const void *b, size_t n) {
  ck_assert_int_eq(send(fd, b, n, MSG_NOSIGNAL), (ssize_t)n);
}

/* The client sees its connection end (EOF or reset) without reading data. */
static void expect_closed(int fd) {
  char b[16];
  ssize_t n;
  struct pollfd p = {fd, POLLIN, 0};
  /* The server already closed it (the counter said so): no waiting. */
  ck_assert_int_eq(poll(&p, 1, 0), 1);
  n = recv(fd, b, sizeof(b), MSG_DONTWAIT);
  ck_assert_msg(n == 0 || (n < 0 && errno == ECONNRESET), "read %zd", n);
  close(fd);
}

static const char *fmt(const struct sockaddr_storage *sa) {
  static char b[2][UVIP_ADDRSTRLEN];
  static int i;
  i ^= 1;
  ck_assert_int_eq(uvip_addr_format((const struct sockaddr *)sa, 1, b[i],
                                    sizeof(b[i])),
                   0);
  return b[i];
}

static void wait_delivered(int n) {
  int turns = 0;
  while (g.n < n) {
    ck_assert_msg(turns++ < 2000, "delivered %d of %d", g.n, n);
    uv_run(&loop, UV_RUN_ONCE);
  }
}

static void wait_data(rec_t *r, size_t n) {
  int turns = 0;
  while (r->ndata < n) {
    ck_assert_msg(turns++ < 2000, "got %zu of %zu bytes", r->ndata, n);
    uv_run(&loop, UV_RUN_ONCE);
  }
}

/* ---- good headers ---- */

START_TEST(test_v1_addresses_and_no_byte_after) {
  const char h[] = "PROXY TCP4 203.0.113.7 198.51.100.1 4242 80\r\nhello";
  start(0, 0);
  int fd = client();
  send_all(fd, h, strlen(h));
  wait_delivered(1);
  ck_assert_int_eq(g.r[0].proxy, 1);
  ck_assert_str_eq(fmt(&g.r[0].peer), "203.0.113.7:4242");
  ck_assert_str_eq(fmt(&g.r[0].local), "198.51.100.1:80");
  /* The application's first bytes are exactly those after the header. */
  wait_data(&g.r[0], 5);
  ck_assert_uint_eq(g.r[0].ndata, 5);
  ck_assert_int_eq(memcmp(g.r[0].data, "hello", 5), 0);
  uvip_vip_stats_t st = stats();
  ck_assert_uint_eq(st.accepted, 1);
  ck_assert_uint_eq(st.active, 1);
  ck_assert_uint_eq(st.proxy_pending, 0);
  ck_assert_uint_eq(st.proxy_local, 0);
  close(fd);
  finish();
}
END_TEST

START_TEST(test_v2_ipv6_with_tlvs) {
  unsigned char h[256];
  struct sockaddr_storage src, dst;
  int n;
  th_addr("2001:db8::7", 5555, &src);
  th_addr("2001:db8::1", 443, &dst);
  start(0, 0);
  n = uvip_proxy_write(2, (struct sockaddr *)&src, (struct sockaddr *)&dst, h,
                       sizeof(h));
  ck_assert_int_eq(n, 52);
  /* Two TLVs (ALPN "h2", a NOOP of 20 bytes): skipped. */
  const unsigned char tlvs[] = {0x01, 0, 2, 'h', '2', 0x04, 0, 20};
  memcpy(h + n, tlvs, sizeof(tlvs));
  memset(h + n + sizeof(tlvs), 0, 20);
  size_t body = 36 + sizeof(tlvs) + 20;
  h[14] = (unsigned char)(body >> 8);
  h[15] = (unsigned char)body;
  size_t total = 16 + body;
  memcpy(h + total, "GET", 3);
  int fd = client();
  send_all(fd, h, total + 3);
  wait_delivered(1);
  ck_assert_int_eq(g.r[0].proxy, 1);
  ck_assert_str_eq(fmt(&g.r[0].peer), "[2001:db8::7]:5555");
  ck_assert_str_eq(fmt(&g.r[0].local), "[2001:db8::1]:443");
  wait_data(&g.r[0], 3);
  ck_assert_uint_eq(g.r[0].ndata, 3);
  ck_assert_int_eq(memcmp(g.r[0].data, "GET", 3), 0);
  close(fd);
  finish();
}
END_TEST

/* v2 LOCAL (a balancer's health check), v2 UNSPEC and v1 UNKNOWN: the
 * connection is delivered with the socket's own addresses. */
START_TEST(test_local_unspec_unknown) {
  unsigned char local[16], unspec[16];
  const char *unknown = "PROXY UNKNOWN\r\n";
  struct sockaddr_storage me;
  socklen_t len = sizeof(me);
  ck_assert_int_eq(uvip_proxy_write(2, NULL, NULL, local, sizeof(local)), 16);
  memcpy(unspec, local, 16);
  unspec[12] = 0x21; /* PROXY command, family UNSPEC */
  start(0, 0);
  int fds[3] = {client(), client(), client()};
  send_all(fds[0], local, 16);
  send_all(fds[1], unspec, 16);
  send_all(fds[2], unknown, strlen(unknown));
  wait_delivered(3);
  for (int i = 0; i < 3; i++) {
    ck_assert_int_eq(g.r[i].proxy, 2);
    ck_assert_str_eq(fmt(&g.r[i].local), fmt(&vip_addr));
  }
  /* Delivered in some order: each one's peer is one of the clients. */
  for (int i = 0; i < 3; i++) {
    bool found = false;
    ck_assert_int_eq(getsockname(fds[i], (struct sockaddr *)&me, &len), 0);
    for (int j = 0; j < 3; j++)
      found |= strcmp(fmt(&g.r[j].peer), fmt(&me)) == 0;
    ck_assert_msg(found, "client %d not a peer", i);
  }
  ck_assert_uint_eq(stats().proxy_local, 3);
  for (int i = 0; i < 3; i++)
    close(fds[i]);
  finish();
}
END_TEST

/* Sent one byte at a time, each byte read on its own (the wrapper counts
 * the consuming reads): the header still ends where it ends. */
START_TEST(test_split_over_many_reads) {
  const char h[] = "PROXY TCP4 192.0.2.1 192.0.2.2 1 65535\r\n";
  size_t n = strlen(h);
  start(0, 0);
  int fd = client();
  RUN_UNTIL_STAT(proxy_pending, 1);
  for (size_t i = 0; i < n; i++) {
    w.consumed_flag = false;
    send_all(fd, h + i, 1);
    th_run_until(&loop, &w.consumed_flag, 100);
  }
  ck_assert_int_eq(w.consumed_reads, (int)n);
  wait_delivered(1);
  ck_assert_str_eq(fmt(&g.r[0].peer), "192.0.2.1:1");
  ck_assert_str_eq(fmt(&g.r[0].local), "192.0.2.2:65535");
  send_all(fd, "x", 1);
  wait_data(&g.r[0], 1);
  ck_assert_int_eq(g.r[0].data[0], 'x');
  close(fd);
  finish();
}
END_TEST

/* A v2 header split after its fixed part, then a body longer than the
 * inline buffer (TLVs), with EINTR on both kinds of read. */
START_TEST(test_v2_long_split) {
  unsigned char h[16 + 12 + 600];
  struct sockaddr_storage src, dst;
  th_addr("192.0.2.9", 9, &src);
  th_addr("192.0.2.10", 10, &dst);
  ck_assert_int_eq(uvip_proxy_write(2, (struct sockaddr *)&src,
                                    (struct sockaddr *)&dst, h, sizeof(h)),
                   28);
  h[28] = 0x04; /* NOOP TLV of 597 bytes */
  h[29] = 597 >> 8;
  h[30] = 597 & 0xff;
  memset(h + 31, 0xAA, 597);
  h[14] = (12 + 600) >> 8;
  h[15] = (12 + 600) & 0xff;
  start(0, 0);
  int fd = client();
  RUN_UNTIL_STAT(proxy_pending, 1);
  w.eintr_peek = 1;
  w.eintr_take = 1;
  w.consumed_flag = false;
  send_all(fd, h, 16);
  th_run_until(&loop, &w.consumed_flag, 100);
  send_all(fd, h + 16, sizeof(h) - 16);
  send_all(fd, "tail", 4);
  wait_delivered(1);
  ck_assert_str_eq(fmt(&g.r[0].peer), "192.0.2.9:9");
  wait_data(&g.r[0], 4);
  ck_assert_uint_eq(g.r[0].ndata, 4);
  ck_assert_int_eq(memcmp(g.r[0].data, "tail", 4), 0);
  ck_assert_int_eq(w.eintr_peek + w.eintr_take, 0);
  close(fd);
  finish();
}
END_TEST

/* ---- bad input: each closes only its own connection ---- */

/* One good connection open next to each bad one, still served after. */
static int good_fd;
static void open_good(void) {
  const char h[] = "PROXY TCP4 10.9.9.9 10.8.8.8 999 80\r\n";
  good_fd = client();
  send_all(good_fd, h, strlen(h));
  wait_delivered(1);
}

static void check_good(void) {
  size_t before = g.r[0].ndata;
  ck_assert(g.r[0].open);
  send_all(good_fd, "ok", 2);
  wait_data(&g.r[0], before + 2);
  ck_assert_uint_eq(stats().active, 1);
  ck_assert_uint_eq(stats().proxy_pending, 0);
  close(good_fd);
}

enum { MISSING, MALFORMED, OVERSIZED, TIMEOUT, EOF_, NREASONS };

static uint64_t reason(const uvip_vip_stats_t *st, int r) {
  const uint64_t v[] = {st->proxy_missing, st->proxy_malformed,
                        st->proxy_oversized, st->proxy_timeout,
                        st->proxy_eof};
  return v[r];
}

static void wait_reason(int r, uint64_t n) {
  int turns = 0;
  uvip_vip_stats_t st;
  for (;;) {
    st = stats();
    if (reason(&st, r) >= n)
      break;
    ck_assert_msg(turns++ < 2000, "reason %d stuck", r);
    uv_run(&loop, UV_RUN_ONCE);
  }
  for (int i = 0; i < NREASONS; i++)
    ck_assert_uint_eq(reason(&st, i), i == r ? n : 0);
  ck_assert_uint_eq(st.proxy_dropped, 0);
}

/* Sends bad bytes on a fresh connection next to a good one and checks that
 * only it is closed, for `why`. */
static void bad(const void *b, size_t n, int why) {
  start(0, 0);
  open_good();
  int fd = client();
  send_all(fd, b, n);
  wait_reason(why, 1);
  expect_closed(fd);
  ck_assert_int_eq(g.n, 1);
  check_good();
  ck_assert_uint_eq(stats().closed, 1); /* the bad one */
  finish();
}

START_TEST(test_bad_v1_too_long) {
  char b[200];
  memcpy(b, "PROXY TCP4 ", 11);
  memset(b + 11, '1', sizeof(b) - 11);
  bad(b, sizeof(b), OVERSIZED);
}
END_TEST

START_TEST(test_bad_family) {
  const char *b = "PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n";
  bad(b, strlen(b), MALFORMED);
}
END_TEST

START_TEST(test_bad_v2_family) {
  unsigned char h[16 + 12];
  struct sockaddr_storage a;
  th_addr("1.2.3.4", 1, &a);
  uvip_proxy_write(2, (struct sockaddr *)&a, (struct sockaddr *)&a, h,
                   sizeof(h));
  h[13] = 0x41; /* family 4 does not exist */
  bad(h, sizeof(h), MALFORMED);
}
END_TEST

START_TEST(test_bad_port) {
  const char *b = "PROXY TCP4 1.2.3.4 5.6.7.8 65536 80\r\n";
  bad(b, strlen(b), MALFORMED);
}
END_TEST

/* A v2 length beyond what a waiting socket may hold. */
START_TEST(test_bad_v2_too_long) {
  unsigned char h[16];
  uvip_proxy_write(2, NULL, NULL, h, sizeof(h));
  h[14] = (UVIP_PROXY_RECV_MAX - 16 + 1) >> 8;
  h[15] = (UVIP_PROXY_RECV_MAX - 16 + 1) & 0xff;
  bad(h, sizeof(h), OVERSIZED);
}
END_TEST

/* A v2 length beyond the bytes sent, then the peer closes. */
START_TEST(test_bad_v2_short_then_eof) {
  unsigned char h[40];
  uvip_proxy_write(2, NULL, NULL, h, sizeof(h));
  h[15] = 100;
  memset(h + 16, 0, sizeof(h) - 16);
  start(0, 0);
  open_good();
  int fd = client();
  send_all(fd, h, sizeof(h));
  shutdown(fd, SHUT_WR);
  wait_reason(EOF_, 1);
  expect_closed(fd);
  check_good();
  finish();
}
END_TEST

START_TEST(test_bad_signature) {
  unsigned char h[16];
  uvip_proxy_write(2, NULL, NULL, h, sizeof(h));
  h[7] ^= 1;
  bad(h, sizeof(h), MISSING);
}
END_TEST

START_TEST(test_missing_header) {
  const char *b = "GET / HTTP/1.1\r\n\r\n";
  bad(b, strlen(b), MISSING);
}
END_TEST

/* Begun, never finished: closed at the deadline; the good one stays. The
 * good one's header is read as it is accepted (it was sent at once), well
 * within 200 ms. */
START_TEST(test_never_finished) {
  const char *b = "PROXY TCP4 1.2.";
  start(200, 0);
  open_good();
  int fd = client();
  send_all(fd, b, strlen(b));
  wait_reason(TIMEOUT, 1);
  expect_closed(fd);
  check_good();
  finish();
}
END_TEST

/* Trickled in, too slowly: a byte, then the deadline. And a
 * silent connection. Both time out from one timer, in accept order. */
START_TEST(test_slow_and_silent) {
  start(200, 0);
  open_good();
  int slow = client();
  send_all(slow, "P", 1);
  int silent = client();
  RUN_UNTIL_STAT(proxy_pending, 2);
  wait_reason(TIMEOUT, 2);
  expect_closed(slow);
  expect_closed(silent);
  check_good();
  finish();
}
END_TEST

/* A reset between the peek and the read that consumes. */
START_TEST(test_short_consume) {
  const char *b = "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n";
  w.short_take = 1;
  start(0, 0);
  int fd = client();
  send_all(fd, b, strlen(b));
  wait_reason(EOF_, 1);
  expect_closed(fd);
  ck_assert_int_eq(g.n, 0);
  finish();
}
END_TEST

/* The epoll set refuses a socket: it is closed and counted as dropped. */
START_TEST(test_epoll_add_fails) {
  w.fail_add = 1;
  start(0, 0);
  int fd = client();
  RUN_UNTIL_STAT(proxy_dropped, 1);
  expect_closed(fd);
  ck_assert_uint_eq(stats().active, 0);
  ck_assert_uint_eq(stats().closed, 1);
  finish();
}
END_TEST

/* ---- caps and teardown ---- */

/* Waiting sockets hold slots: at max_conns 2 with three silent clients
 * queued, only two are accepted; a slot freed lets the third in. */
START_TEST(test_pending_count_against_cap) {
  const char h[] = "PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n";
  start(0, 2);
  int a = client(), b = client(), c = client();
  RUN_UNTIL_STAT(proxy_pending, 2);
  /* All three were queued before the loop ran: a pass that ignored the
   * cap would have taken them together. */
  ck_assert_uint_eq(stats().accepted, 2);
  ck_assert_uint_eq(stats().active, 2);
  send_all(a, h, strlen(h));
  send_all(b, h, strlen(h));
  send_all(c, h, strlen(h));
  wait_delivered(2);
  ck_assert_uint_eq(stats().accepted, 2);
  uvip_conn_close(g.r[0].c, on_conn_closed);
  wait_delivered(3);
  ck_assert_uint_eq(stats().accepted, 3);
  ck_assert_uint_le(stats().active, 2);
  close(a);
  close(b);
  close(c);
  finish();
}
END_TEST

START_TEST(test_close_with_pending) {
  start(0, 0);
  int a = client(), b = client();
  RUN_UNTIL_STAT(proxy_pending, 2);
  send_all(a, "PROXY ", 6);
  g.closed = false;
  ck_assert_int_eq(uvip_server_close(srv, on_closed), 0);
  th_run_until(&loop, &g.closed, 100);
  ck_assert_int_eq(g.close_cbs, 1);
  ck_assert_uint_eq(g.at_close.proxy_dropped, 2);
  ck_assert_uint_eq(g.at_close.proxy_pending, 0);
  ck_assert_uint_eq(g.at_close.active, 0);
  ck_assert_int_eq(g.n, 0);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  expect_closed(a);
  expect_closed(b);
}
END_TEST

static void on_drained(uvip_vip_t *v, int by_timeout) {
  (void)v;
  ck_assert_int_eq(by_timeout, 0);
  g.drained++;
}

/* Pause drops the VIP's waiting sockets; so does a removal, whose drain
 * then ends (nothing of it is left). */
START_TEST(test_pause_and_remove_with_pending) {
  start(0, 0);
  uvip_vip_t *v = uvip_server_vip(srv, 0);
  int a = client();
  RUN_UNTIL_STAT(proxy_pending, 1);
  ck_assert_int_eq(uvip_vip_pause(v), 0);
  ck_assert_uint_eq(stats().proxy_dropped, 1);
  ck_assert_uint_eq(stats().active, 0);
  expect_closed(a);
  ck_assert_int_eq(uvip_vip_resume(v), 0);
  int b = client();
  RUN_UNTIL_STAT(proxy_pending, 1);
  ck_assert_int_eq(uvip_server_remove_vip(srv, v, 0, on_drained), 0);
  int turns = 0;
  while (g.drained == 0) {
    ck_assert(turns++ < 100);
    uv_run(&loop, UV_RUN_ONCE);
  }
  expect_closed(b);
  finish();
}
END_TEST

/* Drain while a header is pending and a connection is open: the pending
 * one goes, the open one is told and stays until closed. */
static int going;
static void on_going_away(uvip_conn_t *c) {
  (void)c;
  going++;
}

START_TEST(test_drain_with_pending) {
  start(0, 0);
  open_good();
  int a = client();
  RUN_UNTIL_STAT(proxy_pending, 1);
  ck_assert_int_eq(uvip_server_drain(srv, 0, on_going_away), 0);
  ck_assert_int_eq(going, 1);
  ck_assert_uint_eq(stats().proxy_dropped, 1);
  expect_closed(a);
  check_good();
  finish();
}
END_TEST

START_TEST(test_args) {
  uvip_conn_t *none = NULL;
  struct sockaddr_storage sa;
  ck_assert_int_eq(uvip_conn_peer(none, &sa), UV_EINVAL);
  ck_assert_int_eq(uvip_conn_local(none, &sa), UV_EINVAL);
  ck_assert_int_eq(uvip_conn_proxy(none), UV_EINVAL);
  start(0, 0);
  open_good();
  ck_assert_int_eq(uvip_conn_peer(g.r[0].c, NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_conn_local(g.r[0].c, NULL), UV_EINVAL);
  close(good_fd);
  finish();
}
END_TEST

/* Without the option nothing is read: the application gets the header. */
START_TEST(test_option_off) {
  const char h[] = "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n";
  uvip_addrs_t *a;
  int port = th_free_port();
  uv_loop_init(&loop);
  a = th_addrs("127.0.0.1", port);
  ck_assert_int_eq(uvip_server_new(&loop, a, NULL, &srv), 0);
  uvip_addrs_free(a);
  ck_assert_int_eq(uvip_server_listen(srv, on_connection, NULL, 0), 0);
  th_addr("127.0.0.1", port, &vip_addr);
  int fd = client();
  send_all(fd, h, strlen(h));
  wait_delivered(1);
  ck_assert_int_eq(g.r[0].proxy, 0);
  ck_assert_str_eq(fmt(&g.r[0].local), fmt(&vip_addr));
  wait_data(&g.r[0], strlen(h));
  ck_assert_int_eq(memcmp(g.r[0].data, h, strlen(h)), 0);
  close(fd);
  finish();
}
END_TEST

/* ---- the connector's side ---- */

static struct {
  uvip_outconn_t *oc;
  int status;
  bool connected, closed;
  struct sockaddr_storage me;
} cn;

static void on_written(uv_write_t *req, int status) {
  (void)status;
  free(req);
}

static void on_out_connected(uvip_outconn_t *oc, int status,
                             const struct sockaddr *src) {
  int len = sizeof(cn.me);
  uv_buf_t b = uv_buf_init((char *)"hi", 2);
  uv_write_t *wr;
  (void)src;
  cn.status = status;
  cn.connected = true;
  if (status != 0)
    return;
  ck_assert_int_eq(uv_tcp_getsockname(uvip_outconn_tcp(oc),
                                      (struct sockaddr *)&cn.me, &len),
                   0);
  /* After the header, whatever the application writes at once. */
  wr = malloc(sizeof(*wr));
  ck_assert_ptr_nonnull(wr);
  ck_assert_int_eq(uv_write(wr, uvip_outconn_stream(oc), &b, 1, on_written),
                   0);
  /* Too late once connected. */
  ck_assert_int_eq(uvip_outconn_set_proxy(oc, NULL, NULL), UV_EINVAL);
}

static void on_connector_closed(uvip_connector_t *c) {
  (void)c;
  cn.closed = true;
}

/* Connects with a header of `version`; set: 0 own addresses, 1 given, 2
 * none. Returns the server's record of the connection. */
static rec_t *connect_proxied(uvip_connector_t *c, int set) {
  struct sockaddr_storage src, dst;
  th_addr("203.0.113.50", 1234, &src);
  th_addr("198.51.100.9", 443, &dst);
  int n = g.n; /* may be delivered while the connect completes */
  memset(&cn, 0, sizeof(cn));
  ck_assert_int_eq(uvip_connect(c, (struct sockaddr *)&vip_addr, NULL,
                                on_out_connected, &cn.oc),
                   0);
  if (set == 1) {
    ck_assert_int_eq(uvip_outconn_set_proxy(cn.oc, (struct sockaddr *)&dst,
                                            (struct sockaddr *)&dst),
                     0); /* replaced below: the last call wins */
    ck_assert_int_eq(uvip_outconn_set_proxy(cn.oc, (struct sockaddr *)&src,
                                            (struct sockaddr *)&dst),
                     0);
  } else if (set == 2) {
    ck_assert_int_eq(uvip_outconn_set_proxy(cn.oc, NULL, NULL), 0);
  }
  th_run_until(&loop, &cn.connected, 100);
  ck_assert_int_eq(cn.status, 0);
  wait_delivered(n + 1);
  wait_data(&g.r[n], 2);
  ck_assert_uint_eq(g.r[n].ndata, 2);
  ck_assert_int_eq(memcmp(g.r[n].data, "hi", 2), 0);
  return &g.r[n];
}

static void connector_test(int version) {
  uvip_connector_options_t o;
  uvip_connector_t *c;
  rec_t *r;
  start(0, 0);
  uvip_connector_options_init(&o);
  o.proxy_version = version;
  ck_assert_int_eq(uvip_connector_new(&loop, NULL, &o, &c), 0);
  r = connect_proxied(c, 0);
  ck_assert_int_eq(r->proxy, 1);
  ck_assert_str_eq(fmt(&r->peer), fmt(&cn.me));
  ck_assert_str_eq(fmt(&r->local), fmt(&vip_addr));
  r = connect_proxied(c, 1);
  ck_assert_int_eq(r->proxy, 1);
  ck_assert_str_eq(fmt(&r->peer), "203.0.113.50:1234");
  ck_assert_str_eq(fmt(&r->local), "198.51.100.9:443");
  r = connect_proxied(c, 2);
  ck_assert_int_eq(r->proxy, 2);
  ck_assert_str_eq(fmt(&r->peer), fmt(&cn.me));
  ck_assert_uint_eq(stats().proxy_local, 1);
  ck_assert_int_eq(uvip_connector_close(c, on_connector_closed), 0);
  th_run_until(&loop, &cn.closed, 100);
  finish();
}

START_TEST(test_connector_v1) { connector_test(1); }
END_TEST

START_TEST(test_connector_v2) { connector_test(2); }
END_TEST

START_TEST(test_connector_args) {
  uvip_connector_options_t o;
  uvip_connector_t *c;
  uvip_outconn_t *oc;
  struct sockaddr_storage v4, v6;
  th_addr("192.0.2.1", 1, &v4);
  th_addr("2001:db8::1", 1, &v6);
  start(0, 0);
  uvip_connector_options_init(&o);
  o.proxy_version = 3;
  ck_assert_int_eq(uvip_connector_new(&loop, NULL, &o, &c), UV_EINVAL);
  o.proxy_version = -1;
  ck_assert_int_eq(uvip_connector_new(&loop, NULL, &o, &c), UV_EINVAL);
  ck_assert_int_eq(uvip_outconn_set_proxy(NULL, NULL, NULL), UV_EINVAL);
  /* Without proxy_version there is no header to set. */
  ck_assert_int_eq(uvip_connector_new(&loop, NULL, NULL, &c), 0);
  ck_assert_int_eq(uvip_connect(c, (struct sockaddr *)&vip_addr, NULL,
                                on_out_connected, &oc),
                   0);
  ck_assert_int_eq(uvip_outconn_set_proxy(oc, NULL, NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_connector_close(c, on_connector_closed), 0);
  th_run_until(&loop, &cn.closed, 100);
  cn.closed = false;
  o.proxy_version = 2;
  ck_assert_int_eq(uvip_connector_new(&loop, NULL, &o, &c), 0);
  ck_assert_int_eq(uvip_connect(c, (struct sockaddr *)&vip_addr, NULL,
                                on_out_connected, &oc),
                   0);
  ck_assert_int_eq(uvip_outconn_set_proxy(oc, (struct sockaddr *)&v4, NULL),
                   UV_EINVAL);
  ck_assert_int_eq(uvip_outconn_set_proxy(oc, (struct sockaddr *)&v4,
                                          (struct sockaddr *)&v6),
                   UV_EINVAL);
  ck_assert_int_eq(uvip_connector_close(c, on_connector_closed), 0);
  th_run_until(&loop, &cn.closed, 100);
  finish();
}
END_TEST

/* ---- workers ---- */

/* On a worker's thread: answers the peer as the worker's server sees it. */
static void on_wk_conn(uvip_server_t *s, uvip_conn_t *c) {
  struct sockaddr_storage sa;
  char a[UVIP_ADDRSTRLEN + 1];
  uv_buf_t b;
  (void)s;
  if (uvip_conn_peer(c, &sa) != 0 ||
      uvip_addr_format((struct sockaddr *)&sa, 1, a, sizeof(a) - 1) != 0)
    strcpy(a, "?");
  strcat(a, "\n");
  b = uv_buf_init(a, (unsigned int)strlen(a));
  uv_try_write(uvip_conn_stream(c), &b, 1);
  uvip_conn_close(c, NULL);
}

static bool wk_closed;
static void on_wk_closed(uvip_workers_t *ws) {
  (void)ws;
  wk_closed = true;
}

/* REUSEPORT workers run servers of their own with the same options: each
 * reads the header on its own loop. A hand-off mode is refused. */
START_TEST(test_workers_reuseport) {
  uvip_workers_options_t wo;
  uvip_workers_t *ws;
  char buf[128];
  const char *h = "PROXY TCP4 192.0.2.77 192.0.2.1 7777 80\r\n";
  start(0, 0);
  /* start() listened already: workers need a server that does not. */
  ck_assert_int_eq(uvip_server_close(srv, NULL), 0);
  th_run_until_quiet(&loop, 100);
  uvip_server_options_t o;
  uvip_addrs_t *a;
  uvip_server_options_init(&o);
  o.flags = UVIP_PROXY_PROTOCOL;
  ck_assert_int_eq(uvip_addrs_new(&a), 0);
  ck_assert_int_eq(uvip_addrs_add(a, (struct sockaddr *)&vip_addr), 0);
  ck_assert_int_eq(uvip_server_new(&loop, a, &o, &srv), 0);
  uvip_addrs_free(a);
  uvip_workers_options_init(&wo);
  wo.nworkers = 1;
  wo.mode = UVIP_WORKER_THREAD;
  wo.balance = UVIP_BALANCE_EXACT;
  ck_assert_int_eq(uvip_workers_new(srv, &wo, &ws), UV_ENOTSUP);
  wo.balance = UVIP_BALANCE_ROUND_ROBIN;
  ck_assert_int_eq(uvip_workers_new(srv, &wo, &ws), UV_ENOTSUP);
  wo.balance = UVIP_BALANCE_REUSEPORT;
  ck_assert_int_eq(uvip_workers_new(srv, &wo, &ws), 0);
  ck_assert_int_eq(uvip_workers_listen(ws, on_wk_conn, NULL, 0), 0);
  for (int i = 0; i < 1000; i++) {
    uvip_worker_stats_t st;
    ck_assert_int_eq(uvip_workers_stats(ws, 0, &st), 0);
    if (st.alive)
      break;
    uv_run(&loop, UV_RUN_ONCE);
  }
  /* The worker's thread serves it; this thread only waits for the bytes. */
  int fd = client();
  send_all(fd, h, strlen(h));
  struct pollfd p = {fd, POLLIN, 0};
  size_t len = 0;
  while (len == 0 || buf[len - 1] != '\n') {
    ck_assert_int_eq(poll(&p, 1, 10000), 1);
    ssize_t n = recv(fd, buf + len, sizeof(buf) - 1 - len, 0);
    ck_assert_int_gt(n, 0);
    len += (size_t)n;
  }
  buf[len] = 0;
  ck_assert_str_eq(buf, "192.0.2.77:7777\n");
  close(fd);
  ck_assert_int_eq(uvip_workers_close(ws, on_wk_closed), 0);
  th_run_until(&loop, &wk_closed, 1000);
  finish();
}
END_TEST

int main(void) {
  Suite *s = suite_create("proxy-server");
  TCase *tc = tcase_create("proxy-server");
  tcase_add_checked_fixture(tc, reset_state, NULL);
  tcase_add_test(tc, test_v1_addresses_and_no_byte_after);
  tcase_add_test(tc, test_v2_ipv6_with_tlvs);
  tcase_add_test(tc, test_local_unspec_unknown);
  tcase_add_test(tc, test_split_over_many_reads);
  tcase_add_test(tc, test_v2_long_split);
  tcase_add_test(tc, test_bad_v1_too_long);
  tcase_add_test(tc, test_bad_family);
  tcase_add_test(tc, test_bad_v2_family);
  tcase_add_test(tc, test_bad_port);
  tcase_add_test(tc, test_bad_v2_too_long);
  tcase_add_test(tc, test_bad_v2_short_then_eof);
  tcase_add_test(tc, test_bad_signature);
  tcase_add_test(tc, test_missing_header);
  tcase_add_test(tc, test_never_finished);
  tcase_add_test(tc, test_slow_and_silent);
  tcase_add_test(tc, test_short_consume);
  tcase_add_test(tc, test_epoll_add_fails);
  tcase_add_test(tc, test_pending_count_against_cap);
  tcase_add_test(tc, test_close_with_pending);
  tcase_add_test(tc, test_pause_and_remove_with_pending);
  tcase_add_test(tc, test_drain_with_pending);
  tcase_add_test(tc, test_args);
  tcase_add_test(tc, test_option_off);
  tcase_add_test(tc, test_connector_v1);
  tcase_add_test(tc, test_connector_v2);
  tcase_add_test(tc, test_connector_args);
  tcase_add_test(tc, test_workers_reuseport);
  suite_add_tcase(s, tc);
  return th_run_suite(s);
}
