/* uvip-http's connection layer (examples/http/http_server.c) in process,
 * for what a real client cannot make happen on demand: a response the
 * socket does not take, from a peer that never reads.
 *
 * uv_try_write() and uv_write() are wrapped (-Wl,--wrap): a 408 is "not
 * taken at once" and its uv_write() is held, as a write to a client that
 * never reads would be. uvip_conn_close() is wrapped to complete the held
 * write with UV_ECANCELED first, as libuv does for a closing stream.
 *
 * SPDX-License-Identifier: MIT */
#include "helpers.h"
#include "http.h"

#include <string.h>
#include <unistd.h>

int __real_uv_try_write(uv_stream_t *h, const uv_buf_t bufs[], unsigned n);
int __real_uv_write(uv_write_t *req, uv_stream_t *h, const uv_buf_t bufs[],
                    unsigned n, uv_write_cb cb);
int __real_uvip_conn_close(uvip_conn_t *c, void (*cb)(uvip_conn_t *));
int __wrap_uv_try_write(uv_stream_t *h, const uv_buf_t bufs[], unsigned n);
int __wrap_uv_write(uv_write_t *req, uv_stream_t *h, const uv_buf_t bufs[],
                    unsigned n, uv_write_cb cb);
int __wrap_uvip_conn_close(uvip_conn_t *c, void (*cb)(uvip_conn_t *));

static uv_write_t *held_req;
static uv_write_cb held_cb;
static uv_stream_t *held_stream;
static int held_count;

static int is_408(const uv_buf_t bufs[], unsigned n) {
  return n > 0 && bufs[0].len >= 12 &&
         memcmp(bufs[0].base, "HTTP/1.1 408", 12) == 0;
}

int __wrap_uv_try_write(uv_stream_t *h, const uv_buf_t bufs[], unsigned n) {
  if (is_408(bufs, n))
    return UV_EAGAIN;
  return __real_uv_try_write(h, bufs, n);
}

int __wrap_uv_write(uv_write_t *req, uv_stream_t *h, const uv_buf_t bufs[],
                    unsigned n, uv_write_cb cb) {
  if (!is_408(bufs, n))
    return __real_uv_write(req, h, bufs, n, cb);
  ck_assert_ptr_null(held_req);
  req->handle = h;
  held_req = req;
  held_cb = cb;
  held_stream = h;
  held_count++;
  return 0;
}

int __wrap_uvip_conn_close(uvip_conn_t *c, void (*cb)(uvip_conn_t *)) {
  if (held_req && uvip_conn_stream(c) == held_stream) {
    uv_write_t *req = held_req;
    held_req = NULL;
    held_cb(req, UV_ECANCELED);
  }
  return __real_uvip_conn_close(c, cb);
}

static int done;
static void on_done(http_server_t *hs) {
  (void)hs;
  done = 1;
}

/* A 408 that cannot be written at once waits like any stalled write, with
 * the idle timeout: the connection closes without the client doing
 * anything (it used to stay on no timeout queue until the client acted). */
START_TEST(test_408_stalled) {
  uv_loop_t loop;
  uvip_server_t *server;
  uvip_server_options_t opts;
  http_server_config_t cfg;
  http_server_t *hs;
  char err[256] = "";
  int port = th_free_port(), turns;
  uvip_addrs_t *addrs = th_addrs("127.0.0.1", port);
  struct sockaddr_storage sa;
  const http_counters_t *c;

  ck_assert_int_eq(uv_loop_init(&loop), 0);
  uvip_server_options_init(&opts);
  opts.conn_close_cb = http_on_lib_close;
  memset(&cfg, 0, sizeof(cfg));
  cfg.limits.max_header_bytes = 8192;
  cfg.limits.max_pending_out = 65536;
  cfg.header_timeout_ms = 20;
  cfg.request_timeout_ms = 3600000;
  cfg.keepalive_timeout_ms = 100;
  cfg.linger_ms = 3600000;
  cfg.shutdown_timeout_ms = 1000;
  ck_assert_int_eq(uvip_server_new(&loop, addrs, &opts, &server), 0);
  ck_assert_int_eq(http_server_new(&loop, server, NULL, 0, &cfg, &hs), 0);
  ck_assert_int_eq(uvip_server_listen(server, http_on_connection, err,
                                      sizeof(err)),
                   0);
  c = &http_server_ctx(hs)->c;

  th_addr("127.0.0.1", port, &sa);
  int fd = th_connect((struct sockaddr *)&sa, NULL);
  ck_assert_int_eq(write(fd, "GET / HTTP/1.1\r\nX: ", 19), 19);
  /* Accepted, then 408 held, then closed: at most 10 s of 10 ms ticks. */
  for (turns = 0; turns < 1000 && c->conns_total == 0; turns++)
    uv_run(&loop, UV_RUN_ONCE);
  ck_assert_uint_eq(c->conns_total, 1);
  for (turns = 0; turns < 1000 && held_count == 0; turns++)
    uv_run(&loop, UV_RUN_ONCE);
  ck_assert_int_eq(held_count, 1);
  ck_assert_uint_eq(c->timeouts_header, 1);
  for (turns = 0; turns < 1000 && c->conns_active > 0; turns++)
    uv_run(&loop, UV_RUN_ONCE);
  ck_assert_msg(c->conns_active == 0,
                "the connection with a stalled 408 stayed open");
  ck_assert_uint_eq(c->timeouts_idle, 1);
  ck_assert_ptr_null(held_req);
  close(fd);

  http_server_shutdown(hs, on_done);
  for (turns = 0; turns < 1000 && !done; turns++)
    uv_run(&loop, UV_RUN_ONCE);
  ck_assert(done);
  http_server_free(hs);
  ck_assert_int_eq(th_run_until_quiet(&loop, 100) >= 0, 1);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  uvip_addrs_free(addrs);
}
END_TEST

int main(void) {
  Suite *s = suite_create("http-server");
  TCase *tc = tcase_create("http-server");
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, test_408_stalled);
  suite_add_tcase(s, tc);
  return th_run_suite(s);
}
