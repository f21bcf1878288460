/* Allocation failures in the address lists, provisioning, the address
 * watcher, the live pool and the connector. The library's malloc, calloc
 * and realloc go through the wrappers below (-Wl,--wrap, see
 * tests/meson.build; libuv and libc's own calls are not affected): each
 * sweep fails the first, then the second, ... allocation of one call until
 * the call no longer allocates more than that. Every failure must come
 * back as UV_ENOMEM with nothing changed and nothing leaked (ASan's leak
 * check in the sanitizer build), and the call then works.
 *
 * Each test runs in a network namespace of its own.
 * SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "helpers.h"

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t n);

/* While armed, allocation number fail_at (counted from arming) fails. */
static struct {
  bool armed, failed;
  int count, fail_at;
} al;

static bool fail_now(void) {
  if (!al.armed || ++al.count != al.fail_at)
    return false;
  al.failed = true;
  errno = ENOMEM;
  return true;
}

void *__wrap_malloc(size_t n) { return fail_now() ? NULL : __real_malloc(n); }

void *__wrap_calloc(size_t n, size_t size) {
  return fail_now() ? NULL : __real_calloc(n, size);
}

void *__wrap_realloc(void *p, size_t n) {
  return fail_now() ? NULL : __real_realloc(p, n);
}

static void arm(int k) {
  al.armed = true;
  al.failed = false;
  al.count = 0;
  al.fail_at = k;
}

/* Disarms; true when the armed call hit its failure. */
static bool disarm(void) {
  al.armed = false;
  return al.failed;
}

/* A sweep: for (int k = 1; ; k++) { arm(k); r = call; if (!disarm()) break;
 * ...check the failure... } then check the success. */
#define MAX_ALLOCS 64

static void on_conn(uvip_server_t *s, uvip_conn_t *c) {
  (void)s;
  uvip_conn_close(c, NULL);
}

static bool closed;
static void on_server_closed(uvip_server_t *s) {
  (void)s;
  closed = true;
}

/* ------------------------------------------------------------------------ */

START_TEST(test_addrs) {
  uvip_addrs_t *a = (uvip_addrs_t *)1;
  arm(1);
  ck_assert_int_eq(uvip_addrs_new(&a), UV_ENOMEM);
  ck_assert(disarm());
  ck_assert_ptr_null(a);
  ck_assert_int_eq(uvip_addrs_new(&a), 0);

  struct sockaddr_storage sa;
  th_addr("10.0.0.1", 80, &sa);
  int k, r;
  for (k = 1; k < MAX_ALLOCS; k++) {
    arm(k);
    r = uvip_addrs_add(a, (struct sockaddr *)&sa);
    if (!disarm())
      break;
    ck_assert_int_eq(r, UV_ENOMEM);
    ck_assert_uint_eq(uvip_addrs_count(a), 0);
    ck_assert_int_eq(uvip_addrs_find(a, (struct sockaddr *)&sa), UV_ENOENT);
  }
  ck_assert_int_eq(r, 0);
  ck_assert_int_ge(k, 3); /* the vector and the hash set */
  ck_assert_int_eq(uvip_addrs_find(a, (struct sockaddr *)&sa), 0);

  /* A prefix reserves room for all of it at once: the list is unchanged
   * by a failure, and the error says why. */
  char err[128];
  for (k = 1; k < MAX_ALLOCS; k++) {
    arm(k);
    r = uvip_addrs_parse(a, "10.1.0.0/24", 80, err, sizeof(err));
    if (!disarm())
      break;
    ck_assert_int_eq(r, UV_ENOMEM);
    ck_assert_msg(strstr(err, "out of memory") != NULL, "%s", err);
    ck_assert_uint_eq(uvip_addrs_count(a), 1);
  }
  ck_assert_int_eq(r, 0);
  ck_assert_int_gt(k, 1);
  ck_assert_uint_eq(uvip_addrs_count(a), 1 + 254); /* hosts of a /24 */
  uvip_addrs_free(a);
}
END_TEST

START_TEST(test_provision) {
  th_enter_netns();
  char *before = th_cmd_output("ip -j addr show dev lo");
  ck_assert_ptr_nonnull(before);
  uvip_addrs_t *pool = th_addrs("10.95.0.1-10.95.0.3", 0);
  uvip_provision_t *p = NULL;
  int k, r;
  for (k = 1; k < MAX_ALLOCS; k++) {
    p = (uvip_provision_t *)1;
    arm(k);
    r = uvip_provision_new("lo", pool, NULL, &p);
    if (!disarm())
      break;
    ck_assert_int_eq(r, UV_ENOMEM);
    ck_assert_ptr_null(p);
  }
  ck_assert_int_eq(r, 0);
  ck_assert_int_ge(k, 4);

  char err[256];
  for (k = 1; k < MAX_ALLOCS; k++) {
    arm(k);
    r = uvip_provision_apply(p, err, sizeof(err));
    if (!disarm())
      break;
    ck_assert_int_eq(r, UV_ENOMEM);
    for (size_t i = 0; i < uvip_provision_count(p); i++)
      ck_assert_int_eq(uvip_provision_state(p, i), UVIP_PROVISION_ABSENT);
    char *now = th_cmd_output("ip -j addr show dev lo");
    ck_assert_str_eq(now, before);
    free(now);
  }
  ck_assert_msg(r == 0, "%s", err);
  ck_assert_int_ge(k, 3); /* the dump buffer and the rollback list */
  for (size_t i = 0; i < uvip_provision_count(p); i++)
    ck_assert_int_eq(uvip_provision_state(p, i), UVIP_PROVISION_ADDED);
  uvip_provision_free(p);
  char *now = th_cmd_output("ip -j addr show dev lo");
  ck_assert_str_eq(now, before);
  free(now);
  free(before);
  uvip_addrs_free(pool);
}
END_TEST

START_TEST(test_provision_local_route) {
  th_enter_netns();
  uvip_prefix_t pfx;
  uvip_provision_t *p = NULL;
  int k, r;
  ck_assert_int_eq(uvip_prefix_parse("fd00:1::/64", &pfx, NULL, 0), 0);
  for (k = 1; k < MAX_ALLOCS; k++) {
    p = (uvip_provision_t *)1;
    arm(k);
    r = uvip_provision_new_local_route("lo", &pfx, NULL, &p);
    if (!disarm())
      break;
    ck_assert_int_eq(r, UV_ENOMEM);
    ck_assert_ptr_null(p);
  }
  ck_assert_int_eq(r, 0);
  ck_assert_int_ge(k, 4); /* the object, its entry, its index */
  ck_assert_int_eq(uvip_provision_apply(p, NULL, 0), 0);
  ck_assert_int_eq(uvip_provision_state(p, 0), UVIP_PROVISION_ADDED);
  uvip_provision_free(p);
}
END_TEST

/* The watcher and the live pool: no object, and the server is not left
 * attached (it closes). */
START_TEST(test_addrwatch_livepool) {
  th_enter_netns();
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  uvip_addrwatch_t *w = (uvip_addrwatch_t *)1;
  arm(1);
  ck_assert_int_eq(uvip_addrwatch_new(&loop, &w), UV_ENOMEM);
  ck_assert(disarm());
  ck_assert_ptr_null(w);

  uvip_server_options_t o;
  uvip_addrs_t *none = NULL;
  uvip_server_t *s = NULL;
  ck_assert_int_eq(uvip_server_options_init(&o), 0);
  o.flags |= UVIP_ALLOW_EMPTY;
  ck_assert_int_eq(uvip_addrs_new(&none), 0);
  ck_assert_int_eq(uvip_server_new(&loop, none, &o, &s), 0);
  ck_assert_int_eq(uvip_server_listen(s, on_conn, NULL, 0), 0);
  uvip_addrs_t *pool = th_addrs("127.0.0.2-127.0.0.3", th_free_port());
  uvip_livepool_t *lp = NULL;
  int k, r;
  for (k = 1; k < MAX_ALLOCS; k++) {
    lp = (uvip_livepool_t *)1;
    arm(k);
    r = uvip_livepool_new(s, pool, &lp);
    if (!disarm())
      break;
    ck_assert_int_eq(r, UV_ENOMEM);
    ck_assert_ptr_null(lp);
  }
  ck_assert_int_eq(r, 0);
  ck_assert_int_ge(k, 4);
  ck_assert_int_eq(uvip_server_close(s, on_server_closed), UV_EBUSY);
  ck_assert_int_eq(uvip_livepool_close(lp, NULL), 0);
  th_run_until_quiet(&loop, 100);
  closed = false;
  ck_assert_int_eq(uvip_server_close(s, on_server_closed), 0);
  th_run_until(&loop, &closed, 100);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  uvip_addrs_free(pool);
  uvip_addrs_free(none);
}
END_TEST

static bool cb_flag, connector_closed;
static int last_status;
static void on_connect(uvip_outconn_t *oc, int status,
                       const struct sockaddr *src) {
  (void)oc;
  (void)src;
  last_status = status;
  cb_flag = true;
}

static void on_connector_closed(uvip_connector_t *c) {
  (void)c;
  connector_closed = true;
}

/* uvip_connector_new, uvip_connect (the attempt and the destination entry;
 * a connect done at once needs no libuv request), uvip_connector_correct,
 * and the destination table's growth (a failure there only means longer
 * chains). */
START_TEST(test_connector) {
  th_enter_netns();
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  struct sockaddr_storage any;
  th_addr("0.0.0.0", 7000, &any);
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ck_assert_int_eq(bind(lfd, (struct sockaddr *)&any, sizeof(struct sockaddr_in)), 0);
  ck_assert_int_eq(listen(lfd, 128), 0);

  uvip_addrs_t *srcs = th_addrs("127.0.0.2,127.0.0.3", 0);
  uvip_connector_t *c = NULL;
  int k, r;
  for (k = 1; k < MAX_ALLOCS; k++) {
    arm(k);
    r = uvip_connector_new(&loop, srcs, NULL, &c);
    if (!disarm())
      break;
    ck_assert_int_eq(r, UV_ENOMEM);
  }
  ck_assert_int_eq(r, 0);
  ck_assert_int_ge(k, 4);
  uvip_addrs_free(srcs);

  struct sockaddr_storage d;
  th_addr("127.0.0.1", 7000, &d);
  uvip_connector_stats_t st;
  for (k = 1; k < MAX_ALLOCS; k++) {
    arm(k);
    r = uvip_connect(c, (struct sockaddr *)&d, NULL, on_connect, NULL);
    if (!disarm())
      break;
    ck_assert_int_eq(r, UV_ENOMEM);
    for (size_t i = 0; i < 2; i++) {
      ck_assert_int_eq(uvip_connector_stats(c, i, &st), 0);
      ck_assert_uint_eq(st.failed, 0); /* not the source's fault */
      ck_assert_uint_eq(st.in_use, 0);
    }
  }
  ck_assert_int_eq(r, 0);
  ck_assert_int_ge(k, 3);
  cb_flag = false;
  th_run_until(&loop, &cb_flag, 1000);
  ck_assert_int_eq(last_status, 0);

  struct sockaddr_storage src2, d2;
  th_addr("127.0.0.2", 0, &src2);
  th_addr("127.0.0.1", 7001, &d2);
  arm(1);
  ck_assert_int_eq(uvip_connector_correct(c, (struct sockaddr *)&src2,
                                          (struct sockaddr *)&d2, 3), UV_ENOMEM);
  ck_assert(disarm());
  uvip_connector_ports_t p;
  ck_assert_int_eq(uvip_connector_ports(c, (struct sockaddr *)&src2,
                                        (struct sockaddr *)&d2, &p), 0);
  ck_assert_uint_eq(p.others, 0);

  /* Fifteen more destinations fill the first table; the sixteenth grows
   * it. Failing the growth still connects, and every destination is
   * still found. */
  for (int i = 2; i <= 16; i++) {
    char ip[32];
    snprintf(ip, sizeof(ip), "127.0.1.%d", i);
    th_addr(ip, 7000, &d);
    cb_flag = false;
    ck_assert_int_eq(uvip_connect(c, (struct sockaddr *)&d, NULL, on_connect,
                                  NULL), 0);
    th_run_until(&loop, &cb_flag, 1000);
  }
  th_addr("127.0.1.99", 7000, &d);
  arm(2); /* 1: the entry, 2: the bigger table */
  r = uvip_connect(c, (struct sockaddr *)&d, NULL, on_connect, NULL);
  ck_assert(disarm());
  ck_assert_int_eq(r, 0);
  cb_flag = false;
  th_run_until(&loop, &cb_flag, 1000);
  ck_assert_int_eq(last_status, 0);
  for (int i = 2; i <= 16; i++) {
    char ip[32];
    snprintf(ip, sizeof(ip), "127.0.1.%d", i);
    th_addr(ip, 7000, &d);
    ck_assert_int_eq(uvip_connector_ports(c, NULL, (struct sockaddr *)&d, &p),
                     UV_ENOENT); /* named sources only */
    size_t used = 0;
    for (int s = 2; s <= 3; s++) {
      char sip[32];
      struct sockaddr_storage ss;
      snprintf(sip, sizeof(sip), "127.0.0.%d", s);
      th_addr(sip, 0, &ss);
      ck_assert_int_eq(uvip_connector_ports(c, (struct sockaddr *)&ss,
                                            (struct sockaddr *)&d, &p), 0);
      used += p.in_use;
    }
    ck_assert_uint_eq(used, 1);
  }
  ck_assert_int_eq(uvip_connector_close(c, on_connector_closed), 0);
  th_run_until(&loop, &connector_closed, 1000);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  close(lfd);
}
END_TEST

/* The prefix connector: its creation, a connect (the pair, the address
 * entry, the slot arrays), a correction, and the growth of its tables (a
 * failure there only means longer chains). */
START_TEST(test_connector_prefix) {
  th_enter_netns();
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  struct sockaddr_storage any, d, src;
  th_addr("0.0.0.0", 7000, &any);
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ck_assert_int_eq(bind(lfd, (struct sockaddr *)&any, sizeof(struct sockaddr_in)), 0);
  ck_assert_int_eq(listen(lfd, 256), 0);
  uvip_prefix_t pfx;
  ck_assert_int_eq(uvip_prefix_parse("127.0.0.0/8", &pfx, NULL, 0), 0);

  uvip_connector_t *c = NULL;
  char err[128];
  int k, r;
  for (k = 1; k < MAX_ALLOCS; k++) {
    arm(k);
    r = uvip_connector_new_prefix(&loop, &pfx, UVIP_PREFIX_LEAST_USED, NULL,
                                  err, sizeof(err), &c);
    if (!disarm())
      break;
    ck_assert_int_eq(r, UV_ENOMEM);
    ck_assert_ptr_null(c);
  }
  ck_assert_int_eq(r, 0);
  ck_assert_int_ge(k, 6);

  th_addr("127.0.0.1", 7000, &d);
  uvip_connector_stats_t st;
  for (k = 1; k < MAX_ALLOCS; k++) {
    arm(k);
    r = uvip_connect(c, (struct sockaddr *)&d, NULL, on_connect, NULL);
    if (!disarm())
      break;
    ck_assert_int_eq(r, UV_ENOMEM);
    ck_assert_int_eq(uvip_connector_stats(c, 0, &st), 0);
    ck_assert_uint_eq(st.in_use, 0);
    ck_assert_uint_eq(st.failed, 0);
    ck_assert_uint_eq(uvip_connector_prefix_in_use(c), 0);
  }
  ck_assert_int_eq(r, 0);
  /* The destination, the slot arrays (kept once grown), the pair, its
   * address and the connection (no libuv request: done at once). */
  ck_assert_int_ge(k, 5);
  cb_flag = false;
  th_run_until(&loop, &cb_flag, 1000);
  ck_assert_int_eq(last_status, 0);
  ck_assert_uint_eq(uvip_connector_prefix_in_use(c), 1);

  th_addr("127.0.9.9", 0, &src);
  for (k = 1; k < MAX_ALLOCS; k++) {
    arm(k);
    r = uvip_connector_correct(c, (struct sockaddr *)&src,
                               (struct sockaddr *)&d, 2);
    if (!disarm())
      break;
    ck_assert_int_eq(r, UV_ENOMEM);
    ck_assert_uint_eq(uvip_connector_prefix_in_use(c), 1);
  }
  ck_assert_int_eq(r, 0);
  ck_assert_uint_eq(uvip_connector_prefix_in_use(c), 2);
  ck_assert_int_eq(uvip_connector_correct(c, (struct sockaddr *)&src,
                                          (struct sockaddr *)&d, 0), 0);

  /* 63 more fill the first tables (64 entries); the 65th connection grows
   * the slot arrays (1, 2), makes its pair (3) and address (4), and grows
   * the address table (5) and the pair table (6). Failing the growth of a
   * table still connects. */
  for (int i = 2; i <= 64; i++)
    ck_assert_int_eq(uvip_connect(c, (struct sockaddr *)&d, NULL, on_connect, NULL), 0);
  arm(5);
  r = uvip_connect(c, (struct sockaddr *)&d, NULL, on_connect, NULL);
  ck_assert(disarm());
  ck_assert_int_eq(r, 0);
  arm(3); /* the next: slots have room; 1 pair, 2 address, 3 pair table */
  r = uvip_connect(c, (struct sockaddr *)&d, NULL, on_connect, NULL);
  ck_assert(disarm());
  ck_assert_int_eq(r, 0);
  th_run_until_quiet(&loop, 1000);
  ck_assert_int_eq(uvip_connector_stats(c, 0, &st), 0);
  ck_assert_uint_eq(st.connected, 66);
  ck_assert_uint_eq(uvip_connector_prefix_in_use(c), 66);
  ck_assert_int_eq(uvip_connector_close(c, on_connector_closed), 0);
  th_run_until(&loop, &connector_closed, 1000);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  close(lfd);
}
END_TEST

int main(void) {
  th_require_netns_or_skip();
  Suite *s = suite_create("cov-alloc");
  TCase *tc = tcase_create("cov-alloc");
  tcase_add_test(tc, test_addrs);
  tcase_add_test(tc, test_provision);
  tcase_add_test(tc, test_provision_local_route);
  tcase_add_test(tc, test_addrwatch_livepool);
  tcase_add_test(tc, test_connector);
  tcase_add_test(tc, test_connector_prefix);
  suite_add_tcase(s, tc);
  return th_run_suite(s);
}
