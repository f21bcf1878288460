/* Census, limits, capacity, renderers and tracker: the paths the other
 * census tests do not reach. Real sockets in a namespace of their own where
 * the kernel can produce the situation (request sockets, closed listeners,
 * IPv6-only lists, shards, reserved ports, TIME_WAIT buckets, descriptor
 * exhaustion); link-time wrappers where it cannot on demand:
 *   - open64: /proc files replaced by files the test writes (missing or
 *     malformed limits, huge values, a FIFO that holds a sample);
 *   - mnl_socket_*, mnl_cb_run: sock_diag refused or failing part-way;
 *   - pthread_create: a shard thread that cannot be created;
 *   - malloc, calloc, realloc: each allocation of a census or tracker
 *     failing in turn.
 * Every wrapper passes through unless a test arms it (libuv and libmnl are
 * shared libraries: their own calls are not affected).
 * SPDX-License-Identifier: MIT */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libmnl/libmnl.h>
#include <linux/netlink.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "census-ss.h"
#include "helpers.h"

#define RANGE "/proc/sys/net/ipv4/ip_local_port_range"
#define RESERVED "/proc/sys/net/ipv4/ip_local_reserved_ports"
#define TW_BUCKETS "/proc/sys/net/ipv4/tcp_max_tw_buckets"

/* ---- the wrappers -------------------------------------------------------- */

#define MAX_REDIR 24
static struct {
  /* open64(from[i]) opens to[i] instead. Set before the code under test
   * runs (threadpool threads read the table; nothing changes it then). */
  int nredir;
  char from[MAX_REDIR][96];
  char to[MAX_REDIR][256];
  /* mnl_socket_open2(NETLINK_SOCK_DIAG): calls numbered >= open2_from
   * (from 1) fail with open2_errno. */
  int open2_errno, open2_from, open2_calls;
  int bind_errno, sendto_errno, recv_errno;
  int cbrun_fail, cbrun_errno; /* mnl_cb_run returns -1, errno cbrun_errno */
  int thread_errno;            /* pthread_create returns it */
  long alloc_fail_at;          /* the allocation numbered so fails */
  long allocs;
} F;

int __real_open64(const char *path, int flags, ...);
int __wrap_open64(const char *path, int flags, ...);
struct mnl_socket *__real_mnl_socket_open2(int bus, int flags);
struct mnl_socket *__wrap_mnl_socket_open2(int bus, int flags);
int __real_mnl_socket_bind(struct mnl_socket *nl, unsigned int groups, pid_t pid);
int __wrap_mnl_socket_bind(struct mnl_socket *nl, unsigned int groups, pid_t pid);
ssize_t __real_mnl_socket_sendto(const struct mnl_socket *nl, const void *b, size_t n);
ssize_t __wrap_mnl_socket_sendto(const struct mnl_socket *nl, const void *b, size_t n);
ssize_t __real_mnl_socket_recvfrom(const struct mnl_socket *nl, void *b, size_t n);
ssize_t __wrap_mnl_socket_recvfrom(const struct mnl_socket *nl, void *b, size_t n);
int __real_mnl_cb_run(const void *buf, size_t n, unsigned int seq,
                      unsigned int portid, mnl_cb_t cb, void *data);
int __wrap_mnl_cb_run(const void *buf, size_t n, unsigned int seq,
                      unsigned int portid, mnl_cb_t cb, void *data);
int __real_pthread_create(pthread_t *t, const pthread_attr_t *a,
                          void *(*fn)(void *), void *arg);
int __wrap_pthread_create(pthread_t *t, const pthread_attr_t *a,
                          void *(*fn)(void *), void *arg);
void *__real_malloc(size_t n);
void *__wrap_malloc(size_t n);
void *__real_calloc(size_t n, size_t m);
void *__wrap_calloc(size_t n, size_t m);
void *__real_realloc(void *p, size_t n);
void *__wrap_realloc(void *p, size_t n);

int __wrap_open64(const char *path, int flags, ...) {
  mode_t mode = 0;
  if (flags & (O_CREAT | O_TMPFILE)) {
    va_list ap;
    va_start(ap, flags);
    mode = (mode_t)va_arg(ap, int);
    va_end(ap);
  }
  for (int i = 0; i < F.nredir; i++)
    if (strcmp(path, F.from[i]) == 0) {
      path = F.to[i];
      break;
    }
  return __real_open64(path, flags, mode);
}

struct mnl_socket *__wrap_mnl_socket_open2(int bus, int flags) {
  if (bus == NETLINK_SOCK_DIAG && F.open2_errno &&
      ++F.open2_calls >= F.open2_from) {
    errno = F.open2_errno;
    return NULL;
  }
  return __real_mnl_socket_open2(bus, flags);
}

int __wrap_mnl_socket_bind(struct mnl_socket *nl, unsigned int groups, pid_t pid) {
  if (F.bind_errno) {
    errno = F.bind_errno;
    return -1;
  }
  return __real_mnl_socket_bind(nl, groups, pid);
}

ssize_t __wrap_mnl_socket_sendto(const struct mnl_socket *nl, const void *b,
                                 size_t n) {
  if (F.sendto_errno) {
    errno = F.sendto_errno;
    return -1;
  }
  return __real_mnl_socket_sendto(nl, b, n);
}

ssize_t __wrap_mnl_socket_recvfrom(const struct mnl_socket *nl, void *b,
                                   size_t n) {
  if (F.recv_errno) {
    errno = F.recv_errno;
    return -1;
  }
  return __real_mnl_socket_recvfrom(nl, b, n);
}

int __wrap_mnl_cb_run(const void *buf, size_t n, unsigned int seq,
                      unsigned int portid, mnl_cb_t cb, void *data) {
  if (F.cbrun_fail) {
    errno = F.cbrun_errno;
    return -1;
  }
  return __real_mnl_cb_run(buf, n, seq, portid, cb, data);
}

int __wrap_pthread_create(pthread_t *t, const pthread_attr_t *a,
                          void *(*fn)(void *), void *arg) {
  if (F.thread_errno)
    return F.thread_errno;
  return __real_pthread_create(t, a, fn, arg);
}

static int alloc_fails(void) {
  if (!F.alloc_fail_at)
    return 0;
  return __atomic_add_fetch(&F.allocs, 1, __ATOMIC_RELAXED) == F.alloc_fail_at;
}

void *__wrap_malloc(size_t n) { return alloc_fails() ? NULL : __real_malloc(n); }
void *__wrap_calloc(size_t n, size_t m) {
  return alloc_fails() ? NULL : __real_calloc(n, m);
}
void *__wrap_realloc(void *p, size_t n) {
  return alloc_fails() ? NULL : __real_realloc(p, n);
}

/* ---- replaced /proc files ------------------------------------------------ */

static char fake_dir[64];

static const char *fake_path(const char *name) {
  static char p[8][256];
  static int k;
  if (!fake_dir[0]) {
    strcpy(fake_dir, "/tmp/uvip-cov-census-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(fake_dir));
  }
  char *s = p[k++ % 8];
  snprintf(s, 256, "%s/%s", fake_dir, name);
  return s;
}

static void redirect(const char *from, const char *to) {
  for (int i = 0; i < F.nredir; i++)
    if (strcmp(F.from[i], from) == 0) {
      snprintf(F.to[i], sizeof(F.to[i]), "%s", to);
      return;
    }
  ck_assert_int_lt(F.nredir, MAX_REDIR);
  snprintf(F.from[F.nredir], sizeof(F.from[0]), "%s", from);
  snprintf(F.to[F.nredir], sizeof(F.to[0]), "%s", to);
  F.nredir++;
}

/* Reads of proc_path see content from now on; NULL: the file is missing. */
static void fake(const char *proc_path, const char *content) {
  char name[96];
  snprintf(name, sizeof(name), "%s", proc_path + 1);
  for (char *c = name; *c; c++)
    if (*c == '/')
      *c = '_';
  const char *p = fake_path(name);
  if (!content) {
    unlink(p);
    redirect(proc_path, p);
    return;
  }
  char tmp[300];
  snprintf(tmp, sizeof(tmp), "%s.new", p);
  FILE *f = fopen(tmp, "w");
  ck_assert_ptr_nonnull(f);
  fputs(content, f);
  ck_assert_int_eq(fclose(f), 0);
  ck_assert_int_eq(rename(tmp, p), 0); /* readers see old or new, whole */
  redirect(proc_path, p);
}

static void fake_end(void) {
  char cmd[128];
  F.nredir = 0;
  if (fake_dir[0]) {
    snprintf(cmd, sizeof(cmd), "rm -rf %s", fake_dir);
    ck_assert_int_eq(system(cmd), 0);
    fake_dir[0] = 0;
  }
}

/* ---- small helpers ------------------------------------------------------- */

static int has_advice(const uvip_capacity_t *cap, const char *word) {
  for (size_t i = 0; i < cap->advice_count; i++)
    if (strstr(cap->advice[i], word))
      return 1;
  return 0;
}

static int accept1(int lfd) {
  int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
  ck_assert_int_ge(fd, 0);
  return fd;
}

/* A connection from src:sport (a fixed port) to dst:dport. */
static int connect_port(const char *src, int sport, const char *dst, int dport) {
  struct sockaddr_storage s, d;
  int one = 1;
  th_addr(src, sport, &s);
  th_addr(dst, dport, &d);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ck_assert_int_ge(fd, 0);
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  ck_assert_int_eq(bind(fd, (struct sockaddr *)&s, sizeof(struct sockaddr_in)), 0);
  ck_assert_int_eq(connect(fd, (struct sockaddr *)&d, sizeof(struct sockaddr_in)), 0);
  return fd;
}

/* One outbound TIME_WAIT on src's side: src closes first, the server
 * answers EOF with its own close. */
static void make_time_wait(const char *src, int lfd, const char *dst, int port) {
  char ch;
  int c = cs_connect_from(src, dst, port, 0);
  ck_assert_int_ge(c, 0);
  int s = accept1(lfd);
  close(c);
  ck_assert_int_eq(read(s, &ch, 1), 0);
  close(s);
}

/* Descriptors this process has open. */
static int open_fd_count(void) {
  DIR *d = opendir("/proc/self/fd");
  struct dirent *e;
  int n = 0;
  ck_assert_ptr_nonnull(d);
  while ((e = readdir(d)) != NULL)
    n += e->d_name[0] != '.';
  closedir(d);
  return n - 1; /* the directory's own */
}

static uvip_census_t *sampled(unsigned int flags, unsigned int shards) {
  uvip_census_options_t o;
  uvip_census_t *c = NULL;
  uvip_census_options_init(&o);
  o.flags = flags;
  o.shards = shards;
  ck_assert_int_eq(uvip_census_new(NULL, &o, &c), 0);
  ck_assert_int_eq(uvip_census_sample(c), 0);
  return c;
}

/* Every row, listener, tuple and total of b equals a's. */
static void same_census(const uvip_census_t *a, const uvip_census_t *b) {
  ck_assert_int_eq(memcmp(uvip_census_totals(a), uvip_census_totals(b),
                          sizeof(uvip_census_counts_t)), 0);
  ck_assert_uint_eq(uvip_census_vip_count(a), uvip_census_vip_count(b));
  for (size_t i = 0; i < uvip_census_vip_count(a); i++)
    ck_assert_int_eq(memcmp(uvip_census_vip(a, i), uvip_census_vip(b, i),
                            sizeof(uvip_census_vip_t)), 0);
  ck_assert_uint_eq(uvip_census_listener_count(a), uvip_census_listener_count(b));
  for (size_t i = 0; i < uvip_census_listener_count(a); i++) {
    const uvip_census_listener_t *x = uvip_census_listener(a, i);
    const uvip_census_listener_t *y = uvip_census_listener(b, i);
    ck_assert_int_eq(memcmp(&x->addr, &y->addr, sizeof(x->addr)), 0);
    ck_assert_uint_eq(x->queue, y->queue);
  }
  ck_assert_uint_eq(uvip_census_tuple_count(a), uvip_census_tuple_count(b));
  for (size_t i = 0; i < uvip_census_tuple_count(a); i++) {
    const uvip_census_tuple_t *x = uvip_census_tuple(a, i);
    const uvip_census_tuple_t *y = uvip_census_tuple(b, i);
    ck_assert_int_eq(memcmp(&x->local, &y->local, sizeof(x->local)), 0);
    ck_assert_int_eq(memcmp(&x->remote, &y->remote, sizeof(x->remote)), 0);
    ck_assert_uint_eq(x->in_use, y->in_use);
  }
}

static const char *addr_of(const struct sockaddr_storage *ss, int port) {
  static char b[4][UVIP_ADDRSTRLEN];
  static int k;
  char *s = b[k++ % 4];
  ck_assert_int_eq(uvip_addr_format((const struct sockaddr *)ss, port, s,
                                    UVIP_ADDRSTRLEN), 0);
  return s;
}

static char *render(const uvip_census_t *c, const uvip_capacity_t *cap, int fmt) {
  size_t len = 0;
  ck_assert_int_eq(uvip_census_render(c, cap, fmt, 0, NULL, &len), UV_ENOBUFS);
  char *buf = malloc(len);
  ck_assert_ptr_nonnull(buf);
  size_t need = len;
  ck_assert_int_eq(uvip_census_render(c, cap, fmt, 0, buf, &len), 0);
  ck_assert_uint_eq(len + 1, need);
  return buf;
}

/* ---- census: what the kernel shows --------------------------------------- */

/* Request sockets (a handshake whose last ACK a TCP_DEFER_ACCEPT listener
 * holds back) count as inbound SYN_RECV, per listener, also on a wildcard
 * listener, from netlink and from /proc alike. */
START_TEST(syn_recv_per_listener) {
  int defer = 600, fds[3];
  cs_fresh_netns();
  int l1 = cs_listen("127.77.0.1", 7100, 16);
  int lw = cs_listen("0.0.0.0", 7101, 16);
  ck_assert_int_eq(setsockopt(l1, IPPROTO_TCP, TCP_DEFER_ACCEPT, &defer, sizeof(defer)), 0);
  ck_assert_int_eq(setsockopt(lw, IPPROTO_TCP, TCP_DEFER_ACCEPT, &defer, sizeof(defer)), 0);
  fds[0] = cs_connect_from("127.77.0.2", "127.77.0.1", 7100, 0);
  fds[1] = cs_connect_from("127.77.0.2", "127.77.0.1", 7100, 0);
  fds[2] = cs_connect_from("127.77.0.2", "127.77.0.5", 7101, 0);
  for (int i = 0; i < 3; i++)
    ck_assert_int_ge(fds[i], 0);
  for (int p = 0; p < 2; p++) {
    uvip_census_t *c = sampled(p ? UVIP_CENSUS_PROCFS : 0, 0);
    if (!p)
      cs_compare_with_ss(c);
    ck_assert_uint_eq(uvip_census_totals(c)->in[UVIP_TCP_SYN_RECV], 3);
    ck_assert_uint_eq(cs_row(c, "127.77.0.1", UVIP_TCP_SYN_RECV, 1), 2);
    ck_assert_uint_eq(cs_row(c, "127.77.0.5", UVIP_TCP_SYN_RECV, 1), 1);
    ck_assert_uint_eq(cs_row(c, "127.77.0.2", UVIP_TCP_ESTABLISHED, 0), 3);
    ck_assert_uint_eq(uvip_census_listener_count(c), 2);
    /* Sorted by address: the wildcard first. */
    const uvip_census_listener_t *w = uvip_census_listener(c, 0);
    const uvip_census_listener_t *s = uvip_census_listener(c, 1);
    ck_assert_str_eq(addr_of(&w->addr, 1), "0.0.0.0:7101");
    ck_assert_str_eq(addr_of(&s->addr, 1), "127.77.0.1:7100");
    ck_assert_uint_eq(w->syn_recv, 1);
    ck_assert_uint_eq(s->syn_recv, 2);
    ck_assert_uint_eq(s->queue, 0); /* not accepted: not in the queue */
    uvip_census_free(c);
  }
  for (int i = 0; i < 3; i++)
    close(fds[i]);
  close(l1);
  close(lw);
}
END_TEST

/* A dual-stack [::] listener's IPv4 handshakes are IPv4 request sockets:
 * they are its SYN_RECV all the same. */
START_TEST(syn_recv_dual_stack_listener) {
  int defer = 600, off = 0, fds[2];
  struct sockaddr_storage sa;
  cs_fresh_netns();
  th_addr("::", 7120, &sa);
  int l = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ck_assert_int_ge(l, 0);
  ck_assert_int_eq(setsockopt(l, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof(off)), 0);
  ck_assert_int_eq(bind(l, (struct sockaddr *)&sa, sizeof(struct sockaddr_in6)), 0);
  ck_assert_int_eq(listen(l, 16), 0);
  ck_assert_int_eq(setsockopt(l, IPPROTO_TCP, TCP_DEFER_ACCEPT, &defer, sizeof(defer)), 0);
  fds[0] = cs_connect_from("127.77.0.2", "127.77.0.1", 7120, 0);
  fds[1] = cs_connect_from("::1", "::1", 7120, 0);
  ck_assert_int_ge(fds[0], 0);
  ck_assert_int_ge(fds[1], 0);
  for (int p = 0; p < 2; p++) {
    uvip_census_t *c = sampled(p ? UVIP_CENSUS_PROCFS : 0, 0);
    if (!p)
      cs_compare_with_ss(c);
    ck_assert_uint_eq(uvip_census_totals(c)->in[UVIP_TCP_SYN_RECV], 2);
    ck_assert_uint_eq(cs_row(c, "127.77.0.1", UVIP_TCP_SYN_RECV, 1), 1);
    ck_assert_uint_eq(cs_row(c, "::1", UVIP_TCP_SYN_RECV, 1), 1);
    ck_assert_uint_eq(uvip_census_listener_count(c), 1);
    ck_assert_str_eq(addr_of(&uvip_census_listener(c, 0)->addr, 1), "[::]:7120");
    ck_assert_uint_eq(uvip_census_listener(c, 0)->syn_recv, 2);
    uvip_census_free(c);
  }
  close(fds[0]);
  close(fds[1]);
  close(l);
}
END_TEST

/* Inbound means "a listener has this address and port now": once the
 * listener is closed, the connections it accepted count as outbound, each
 * a tuple of its own. */
START_TEST(closed_listener_leaves_outbound) {
  int c[2], s[2];
  cs_fresh_netns();
  int l = cs_listen("127.77.0.1", 7150, 16);
  for (int i = 0; i < 2; i++) {
    c[i] = cs_connect_from("127.77.0.2", "127.77.0.1", 7150, 0);
    s[i] = accept1(l);
  }
  uvip_census_t *before = sampled(0, 0);
  ck_assert_uint_eq(cs_row(before, "127.77.0.1", UVIP_TCP_ESTABLISHED, 1), 2);
  ck_assert_uint_eq(uvip_census_tuple_count(before), 1);
  close(l);
  uvip_census_t *after = sampled(0, 0);
  cs_compare_with_ss(after);
  ck_assert_uint_eq(uvip_census_listener_count(after), 0);
  ck_assert_uint_eq(cs_row(after, "127.77.0.1", UVIP_TCP_ESTABLISHED, 1), 0);
  ck_assert_uint_eq(cs_row(after, "127.77.0.1", UVIP_TCP_ESTABLISHED, 0), 2);
  ck_assert_uint_eq(cs_row(after, "127.77.0.2", UVIP_TCP_ESTABLISHED, 0), 2);
  ck_assert_uint_eq(uvip_census_totals(after)->out[UVIP_TCP_ESTABLISHED], 4);
  /* (.2, .1:7150) with 2, and (.1, .2:port) once per client port. */
  ck_assert_uint_eq(uvip_census_tuple_count(after), 3);
  ck_assert_uint_eq(uvip_census_tuple(after, 0)->in_use, 2);
  ck_assert_str_eq(addr_of(&uvip_census_tuple(after, 0)->remote, 1), "127.77.0.1:7150");
  uvip_census_free(before);
  uvip_census_free(after);
  for (int i = 0; i < 2; i++) {
    close(c[i]);
    close(s[i]);
  }
}
END_TEST

/* An IPv6-only VIP list skips the IPv4 dump altogether (an IPv4 wildcard
 * listener would otherwise come back from it); the family flags skip one
 * family's dump. */
START_TEST(families) {
  int v6[2], v4[2];
  cs_fresh_netns();
  int l6 = cs_listen("::1", 7200, 16);
  int l4 = cs_listen("0.0.0.0", 7201, 16);
  for (int i = 0; i < 2; i++) {
    v6[i] = cs_connect_from("::1", "::1", 7200, 0);
    v4[i] = cs_connect_from("127.77.0.2", "127.77.0.1", 7201, 0);
    ck_assert_int_ge(v6[i], 0);
    ck_assert_int_ge(v4[i], 0);
  }
  uvip_addrs_t *a = th_addrs("::1", 0);
  uvip_census_t *c = NULL;
  ck_assert_int_eq(uvip_census_new(a, NULL, &c), 0);
  ck_assert_int_eq(uvip_census_sample(c), 0);
  ck_assert_uint_eq(uvip_census_vip_count(c), 1);
  /* Kernel-side: the listener and 2 x 2 connection ends, nothing else. */
  ck_assert_uint_eq(uvip_census_info(c)->seen, 5);
  ck_assert_uint_eq(cs_row(c, "::1", UVIP_TCP_LISTEN, 1), 1);
  ck_assert_uint_eq(cs_row(c, "::1", UVIP_TCP_ESTABLISHED, 1), 2);
  ck_assert_uint_eq(cs_row(c, "::1", UVIP_TCP_ESTABLISHED, 0), 2);
  uvip_census_free(c);
  uvip_addrs_free(a);

  uvip_census_t *only6 = sampled(UVIP_CENSUS_NO_IPV4, 0);
  ck_assert_uint_eq(uvip_census_info(only6)->sockets, 5);
  ck_assert_uint_eq(uvip_census_vip_count(only6), 1);
  uvip_census_t *only4 = sampled(UVIP_CENSUS_NO_IPV6, 0);
  ck_assert_uint_eq(uvip_census_info(only4)->sockets, 5);
  ck_assert_uint_eq(uvip_census_totals(only4)->in[UVIP_TCP_LISTEN], 1);
  ck_assert_uint_eq(uvip_census_vip_count(only4), 3); /* 0.0.0.0, .1, .2 */
  uvip_census_t *both = sampled(0, 0);
  ck_assert_uint_eq(uvip_census_info(both)->sockets, 10);
  uvip_census_free(only6);
  uvip_census_free(only4);
  uvip_census_free(both);

  /* Listeners only, in 2 shards: the parallel part has nothing to ask. */
  uvip_census_options_t o;
  uvip_census_options_init(&o);
  o.states = 1u << UVIP_TCP_LISTEN;
  o.shards = 2;
  ck_assert_int_eq(uvip_census_new(NULL, &o, &c), 0);
  ck_assert_int_eq(uvip_census_sample(c), 0);
  ck_assert_int_eq(uvip_census_info(c)->shards, 2);
  ck_assert_uint_eq(uvip_census_info(c)->sockets, 2);
  ck_assert_uint_eq(uvip_census_totals(c)->in[UVIP_TCP_LISTEN], 2);
  ck_assert_uint_eq(uvip_census_totals(c)->in[UVIP_TCP_ESTABLISHED], 0);
  uvip_census_free(c);
  for (int i = 0; i < 2; i++) {
    close(v6[i]);
    close(v4[i]);
  }
  close(l6);
  close(l4);
}
END_TEST

/* Two shards each within max_vips can hold more addresses together than
 * the result table: the merge counts what finds it full as overflow. The
 * documented split puts a connection whose ports are both below the
 * middle of the range in shard 0 and one with a single port above it in
 * shard 1. */
START_TEST(merge_overflow_across_shards) {
  cs_fresh_netns();
  cs_sysctl(RANGE, "40000 40999");
  int l = cs_listen("127.77.0.1", 7000, 16);
  int a = connect_port("127.77.0.2", 40001, "127.77.0.1", 7000);
  int b = connect_port("127.77.0.3", 40600, "127.77.0.1", 7000);
  uvip_census_options_t o;
  uvip_census_options_init(&o);
  o.max_vips = 2;
  o.shards = 2;
  uvip_census_t *c = NULL;
  ck_assert_int_eq(uvip_census_new(NULL, &o, &c), 0);
  ck_assert_int_eq(uvip_census_sample(c), 0);
  const uvip_census_info_t *info = uvip_census_info(c);
  ck_assert_int_eq(info->shards, 2);
  ck_assert_uint_eq(uvip_census_vip_count(c), 2);
  ck_assert_uint_eq(info->vips_overflow, 1); /* 127.77.0.3's connection */
  ck_assert_uint_eq(info->sockets, 5);
  ck_assert_uint_eq(cs_row(c, "127.77.0.1", UVIP_TCP_ESTABLISHED, 1), 2);
  ck_assert_uint_eq(cs_row(c, "127.77.0.2", UVIP_TCP_ESTABLISHED, 0), 1);
  ck_assert_uint_eq(uvip_census_totals(c)->out[UVIP_TCP_ESTABLISHED], 2);
  uvip_census_free(c);
  /* One shard: its own table of 2 overflows, by the same one socket. */
  o.shards = 1;
  ck_assert_int_eq(uvip_census_new(NULL, &o, &c), 0);
  ck_assert_int_eq(uvip_census_sample(c), 0);
  ck_assert_uint_eq(uvip_census_info(c)->vips_overflow, 1);
  uvip_census_free(c);
  close(a);
  close(b);
  close(l);
}
END_TEST

/* shards 0 (automatic): per sample, 2 when the system's runnable tasks
 * (4th field of /proc/loadavg, the sampling thread included) leave one of
 * the process's CPUs idle, else 1; 1 when the file cannot be read or
 * parsed, and always 1 when the process may use one CPU only. An explicit
 * shards is kept whatever the load. */
START_TEST(default_shards_follow_idle_cpus) {
  cpu_set_t all, one;
  cs_fresh_netns();
  ck_assert_int_eq(sched_getaffinity(0, sizeof(all), &all), 0);
  int cpus = CPU_COUNT(&all);
  struct {
    const char *loadavg;
    int want;
  } cases[] = {
      {"0.10 0.20 0.30 1/300 4242\n", cpus >= 2 ? 2 : 1},
      {"0.10 0.20 0.30 2/300 4242\n", cpus >= 3 ? 2 : 1},
      {"9.99 9.99 9.99 25/300 4242\n", 1},
      {"0.10 0.20 0.30 0/300 4242\n", 1}, /* nonsense: not even us */
      {"0.10 0.20\n", 1},                 /* truncated */
      {"", 1},
      {NULL, 1}, /* missing */
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    fake("/proc/loadavg", cases[i].loadavg);
    uvip_census_t *c = sampled(0, 0);
    ck_assert_msg(uvip_census_info(c)->shards == cases[i].want,
                  "case %zu: %d shards", i, uvip_census_info(c)->shards);
    /* Each sample measures again: the same census follows the load. */
    fake("/proc/loadavg", "0.10 0.20 0.30 1/300 4242\n");
    ck_assert_int_eq(uvip_census_sample(c), 0);
    ck_assert_int_eq(uvip_census_info(c)->shards, cpus >= 2 ? 2 : 1);
    uvip_census_free(c);
  }
  /* Explicit shard counts ignore the load. */
  fake("/proc/loadavg", "9.99 9.99 9.99 25/300 4242\n");
  uvip_census_t *c = sampled(0, 2);
  ck_assert_int_eq(uvip_census_info(c)->shards, 2);
  uvip_census_free(c);
  /* One CPU allowed: one shard even on an idle machine. */
  fake("/proc/loadavg", "0.00 0.00 0.00 1/300 4242\n");
  CPU_ZERO(&one);
  for (int i = 0; i < CPU_SETSIZE; i++)
    if (CPU_ISSET(i, &all)) {
      CPU_SET(i, &one);
      break;
    }
  ck_assert_int_eq(sched_setaffinity(0, sizeof(one), &one), 0);
  c = sampled(0, 0);
  ck_assert_int_eq(uvip_census_info(c)->shards, 1);
  uvip_census_free(c);
  ck_assert_int_eq(sched_setaffinity(0, sizeof(all), &all), 0);
  fake_end();
}
END_TEST

static bool server_closed;
static void on_server_closed(uvip_server_t *s) {
  (void)s;
  server_closed = true;
}

/* A census of a server's VIPs: one row per address, in the server's order,
 * other addresses not counted. */
START_TEST(census_for_server) {
  uv_loop_t loop;
  uvip_server_t *s = NULL;
  cs_fresh_netns();
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  uvip_addrs_t *a = th_addrs("127.77.0.9:7300,127.77.0.1:7300,127.77.0.1:7301", 0);
  ck_assert_int_eq(uvip_server_new(&loop, a, NULL, &s), 0);
  uvip_census_t *c = NULL;
  ck_assert_int_eq(uvip_census_new_for_server(s, NULL, &c), 0);
  ck_assert_int_eq(uvip_census_new_for_server(s, NULL, NULL), UV_EINVAL);
  int l = cs_listen("127.77.0.1", 7400, 16);
  int fd = cs_connect_from("127.77.0.3", "127.77.0.1", 7400, 0);
  ck_assert_int_eq(uvip_census_sample(c), 0);
  ck_assert_uint_eq(uvip_census_vip_count(c), 2);
  ck_assert_str_eq(addr_of(&uvip_census_vip(c, 0)->addr, 0), "127.77.0.9");
  ck_assert_str_eq(addr_of(&uvip_census_vip(c, 1)->addr, 0), "127.77.0.1");
  ck_assert_uint_eq(cs_row(c, "127.77.0.1", UVIP_TCP_LISTEN, 1), 1);
  ck_assert_uint_eq(cs_row(c, "127.77.0.1", UVIP_TCP_ESTABLISHED, 1), 1);
  ck_assert_uint_eq(uvip_census_info(c)->sockets, 2); /* not 127.77.0.3's */

  /* Every allocation failing in turn: UV_ENOMEM, nothing returned (and,
   * under ASan, nothing leaked). */
  uvip_census_t *d = NULL;
  int rc = UV_ENOMEM;
  long n;
  for (n = 1; rc == UV_ENOMEM && n < 10000; n++) {
    F.allocs = 0;
    F.alloc_fail_at = n;
    d = (uvip_census_t *)1;
    rc = uvip_census_new_for_server(s, NULL, &d);
    F.alloc_fail_at = 0;
    if (rc == UV_ENOMEM)
      ck_assert_msg(d == NULL || d == (uvip_census_t *)1, "census returned on failure");
  }
  ck_assert_int_eq(rc, 0);
  ck_assert_int_gt(n, 10); /* the failures above did happen */
  ck_assert_uint_eq(uvip_census_vip_count(d), 2);
  uvip_census_free(d);

  uvip_census_free(c);
  close(fd);
  close(l);
  ck_assert_int_eq(uvip_server_close(s, on_server_closed), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert(server_closed);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  uvip_addrs_free(a);
}
END_TEST

/* ---- allocation failures --------------------------------------------------- */

START_TEST(census_and_tracker_allocation_failures) {
  uvip_census_options_t o;
  uvip_census_options_init(&o);
  o.shards = 3;
  o.rcvbuf = 1; /* raised to the minimum */
  uvip_addrs_t *a = th_addrs("127.77.0.1,::1", 0);
  int rc = UV_ENOMEM;
  long n;
  for (n = 1; rc == UV_ENOMEM; n++) {
    uvip_census_t *c = (uvip_census_t *)1;
    F.allocs = 0;
    F.alloc_fail_at = n;
    rc = uvip_census_new(a, &o, &c);
    F.alloc_fail_at = 0;
    if (rc == UV_ENOMEM) {
      ck_assert_ptr_null(c);
    } else {
      ck_assert_int_eq(rc, 0);
      ck_assert_int_eq(uvip_census_sample(c), 0);
      ck_assert_uint_eq(uvip_census_vip_count(c), 2);
      uvip_census_free(c);
    }
  }
  /* Today: the census, 7 arrays, 3 ordered tables of 5 blocks, 3 shards
   * of 5 arrays and 2 tables of 3 (56); each failed in turn. */
  ck_assert_int_ge(n - 1, 40);

  uv_loop_t loop;
  uvip_tracker_options_t to;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  uvip_tracker_options_init(&to);
  to.census.shards = 1;
  rc = UV_ENOMEM;
  for (n = 1; rc == UV_ENOMEM; n++) {
    uvip_tracker_t *t = (uvip_tracker_t *)1;
    F.allocs = 0;
    F.alloc_fail_at = n;
    rc = uvip_tracker_new(&loop, a, &to, &t);
    F.alloc_fail_at = 0;
    if (rc == UV_ENOMEM) {
      ck_assert_ptr_null(t);
    } else {
      ck_assert_int_eq(rc, 0);
      ck_assert_int_eq(uvip_tracker_close(t, NULL), 0);
    }
  }
  /* The tracker and two censuses (69 today). */
  ck_assert_int_ge(n - 1, 50);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  uvip_addrs_free(a);
}
END_TEST

/* ---- netlink refused or failing ------------------------------------------ */

START_TEST(netlink_faults) {
  int fds[3];
  cs_fresh_netns();
  int l = cs_listen("127.77.0.1", 7500, 16);
  for (int i = 0; i < 3; i++)
    fds[i] = cs_connect_from("127.77.0.2", "127.77.0.1", 7500, 0);
  uvip_census_t *ref = sampled(0, 1);
  ck_assert_int_eq(uvip_census_info(ref)->source, UVIP_CENSUS_SRC_NETLINK);

  /* Refused (seccomp, an LSM, no sock_diag module): /proc instead. */
  static const int refused[] = {EPROTONOSUPPORT, EACCES, EPERM, ENOENT, EAFNOSUPPORT};
  for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
    F.open2_errno = refused[i];
    F.open2_from = 1;
    F.open2_calls = 0;
    uvip_census_t *c = sampled(0, 1);
    F.open2_errno = 0;
    ck_assert_int_eq(uvip_census_info(c)->source, UVIP_CENSUS_SRC_PROCFS);
    same_census(ref, c);
    uvip_census_free(c);
  }
  /* Binding the socket refused, or the request: the same fallback. */
  F.bind_errno = EPERM;
  uvip_census_t *c = sampled(0, 2);
  F.bind_errno = 0;
  ck_assert_int_eq(uvip_census_info(c)->source, UVIP_CENSUS_SRC_PROCFS);
  same_census(ref, c);
  uvip_census_free(c);
  F.sendto_errno = EACCES;
  c = sampled(0, 2);
  F.sendto_errno = 0;
  ck_assert_int_eq(uvip_census_info(c)->source, UVIP_CENSUS_SRC_PROCFS);
  same_census(ref, c);

  /* Other errors are the sample's: results cleared, status kept. */
  struct {
    int *knob, value, *knob2, value2, want;
  } fail[] = {
      {&F.open2_errno, EMFILE, &F.open2_from, 1, UV_EMFILE},
      {&F.recv_errno, ENOBUFS, NULL, 0, UV_ENOBUFS},
      {&F.recv_errno, EIO, NULL, 0, UV_EIO},
      {&F.cbrun_fail, 1, &F.cbrun_errno, 0, UV_EIO},
      {&F.cbrun_fail, 1, &F.cbrun_errno, EINVAL, UV_EINVAL},
  };
  for (size_t i = 0; i < sizeof(fail) / sizeof(fail[0]); i++) {
    ck_assert_int_eq(uvip_census_sample(c), 0);
    ck_assert_uint_gt(uvip_census_vip_count(c), 0);
    F.open2_calls = 0;
    *fail[i].knob = fail[i].value;
    if (fail[i].knob2)
      *fail[i].knob2 = fail[i].value2;
    ck_assert_int_eq(uvip_census_sample(c), fail[i].want);
    *fail[i].knob = 0;
    ck_assert_int_eq(uvip_census_info(c)->status, fail[i].want);
    ck_assert_uint_eq(uvip_census_vip_count(c), 0);
    ck_assert_uint_eq(uvip_census_listener_count(c), 0);
    ck_assert_uint_eq(uvip_census_info(c)->sockets, 0);
  }
  uvip_census_free(c);

  /* Sockets run out after the first two shards: fewer shards, same
   * results. */
  F.open2_errno = EMFILE;
  F.open2_from = 3;
  F.open2_calls = 0;
  c = sampled(0, 4);
  F.open2_errno = 0;
  ck_assert_int_eq(uvip_census_info(c)->shards, 2);
  same_census(ref, c);
  uvip_census_free(c);
  /* No thread for shards 1 and 2: done on the calling thread. */
  F.thread_errno = EAGAIN;
  c = sampled(0, 3);
  F.thread_errno = 0;
  ck_assert_int_eq(uvip_census_info(c)->shards, 3);
  same_census(ref, c);
  uvip_census_free(c);

  uvip_census_free(ref);
  for (int i = 0; i < 3; i++)
    close(fds[i]);
  close(l);
}
END_TEST

/* ---- /proc/net/tcp parsing --------------------------------------------------- */

#define TCP_HEAD "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when\n"
#define REST " 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0\n"

START_TEST(procfs_lines) {
  /* 127.0.0.1 is 0100007F; ports 7000 = 1B58, 40000 = 9C40. */
  fake("/proc/net/tcp", TCP_HEAD
       "   0: 0100007F:1B58 00000000:0000 0A 00000000:00000003" REST
       "   1: 0100007F:1B58 0200007F:9C40 01 00000000:00000000" REST
       "   2: 0200007f:9c40 0100007f:1b58 01 00000000:00000000" REST
       "   3: 0200007F:9C41 0100007F:1B58 06 00000000:00000000" REST
       /* malformed or not wanted: none of these counts */
       "   4: 0100007:1B58 0200007F:9C42 01 00000000:00000000" REST
       "   5: 0100007F-1B58 0200007F:9C42 01 00000000:00000000" REST
       "   6: 0100007F:1B5 0200007F:9C42 01 00000000:00000000" REST
       "   7: 0100007F:1B58 0200007F:9C42 XX 00000000:00000000" REST
       "   8: 0100007F:1B58 0200007F:9C42 01:00000000:00000000" REST
       "   9: 0100007F:1B58 0200007F:9C42 01 G0000000:00000000" REST
       "  10: 0100007F:1B58 0200007F:9C42 01 00000000-00000000" REST
       "  11: 0100007F:1B58 0200007F:9C42 01 00000000:\n"
       "  12: 0100007F:1B58 0200007F:9C42 20 00000000:00000000" REST
       "  13: 0100007F:1B58 0200007F:9C42 1F 00000000:00000000" REST
       "  14:X0100007F:1B58 0200007F:9C42 01 00000000:00000000" REST
       "  15:\n"
       "  16: 0100007F:1B58\n"
       "  17: 0100007F:1B58 0200007F:9C42 01\n"
       "  18: 0100007F:1B58 0200007F:9C42 01 00000001\n"
       "  19: 0100007F:1B58 0200007F:9C42 01 00000001:00000000"); /* no \n */
  /* ::1 is 00000000 00000000 00000000 01000000; ::ffff:127.0.0.2 is
   * 00000000 00000000 FFFF0000 0200007F. */
  fake("/proc/net/tcp6", TCP_HEAD
       "   0: 00000000000000000000000001000000:1B59 "
       "00000000000000000000000000000000:0000 0A 00000000:00000000" REST
       "   1: 0000000000000000FFFF00000200007F:9C50 "
       "0000000000000000FFFF00000100007F:1B58 01 00000000:00000000" REST
       "   2: 00000000000000000000000001000000:1B59 "
       "00000000000000000000000001000000:C350 01 00000000:00000000" REST
       "   3: 000000000000000000000000010000:1B59 "
       "00000000000000000000000001000000:C351 01 00000000:00000000" REST);
  uvip_census_t *c = sampled(UVIP_CENSUS_PROCFS, 0);
  const uvip_census_info_t *info = uvip_census_info(c);
  ck_assert_int_eq(info->source, UVIP_CENSUS_SRC_PROCFS);
  ck_assert_int_eq(info->shards, 1);
  ck_assert_uint_eq(info->seen, 7);
  ck_assert_uint_eq(info->sockets, 7);
  ck_assert_uint_eq(uvip_census_vip_count(c), 3);
  ck_assert_str_eq(addr_of(&uvip_census_vip(c, 0)->addr, 0), "127.0.0.1");
  ck_assert_str_eq(addr_of(&uvip_census_vip(c, 1)->addr, 0), "127.0.0.2");
  ck_assert_str_eq(addr_of(&uvip_census_vip(c, 2)->addr, 0), "::1");
  ck_assert_uint_eq(cs_row(c, "127.0.0.1", UVIP_TCP_LISTEN, 1), 1);
  ck_assert_uint_eq(cs_row(c, "127.0.0.1", UVIP_TCP_ESTABLISHED, 1), 1);
  ck_assert_uint_eq(cs_row(c, "127.0.0.2", UVIP_TCP_ESTABLISHED, 0), 2);
  ck_assert_uint_eq(cs_row(c, "127.0.0.2", UVIP_TCP_TIME_WAIT, 0), 1);
  ck_assert_uint_eq(cs_row(c, "::1", UVIP_TCP_LISTEN, 1), 1);
  ck_assert_uint_eq(cs_row(c, "::1", UVIP_TCP_ESTABLISHED, 1), 1);
  ck_assert_uint_eq(uvip_census_listener_count(c), 2);
  const uvip_census_listener_t *L = uvip_census_listener(c, 0);
  ck_assert_str_eq(addr_of(&L->addr, 1), "127.0.0.1:7000");
  ck_assert_uint_eq(L->queue, 3);
  ck_assert_int_eq(L->backlog, -1);
  ck_assert_uint_eq(uvip_census_tuple_count(c), 1);
  const uvip_census_tuple_t *t = uvip_census_tuple(c, 0);
  ck_assert_str_eq(addr_of(&t->local, 0), "127.0.0.2");
  ck_assert_str_eq(addr_of(&t->remote, 1), "127.0.0.1:7000");
  ck_assert_uint_eq(t->in_use, 3);
  ck_assert_uint_eq(t->time_wait, 1);

  /* A listener's backlog is unknown from /proc: no backlog series. */
  char *prom = render(c, NULL, UVIP_RENDER_PROMETHEUS);
  ck_assert_ptr_nonnull(strstr(prom, "uvip_listen_queue{vip=\"127.0.0.1:7000\"} 3\n"));
  ck_assert_ptr_null(strstr(prom, "uvip_listen_backlog{"));
  free(prom);
  uvip_census_free(c);

  /* One family at a time. */
  c = sampled(UVIP_CENSUS_PROCFS | UVIP_CENSUS_NO_IPV6, 0);
  ck_assert_uint_eq(uvip_census_info(c)->sockets, 4);
  uvip_census_free(c);
  c = sampled(UVIP_CENSUS_PROCFS | UVIP_CENSUS_NO_IPV4, 0);
  ck_assert_uint_eq(uvip_census_info(c)->sockets, 3);
  uvip_census_free(c);
  /* A kernel without IPv4 in /proc (or without IPv6): what is there. */
  fake("/proc/net/tcp", NULL);
  c = sampled(UVIP_CENSUS_PROCFS, 0);
  ck_assert_uint_eq(uvip_census_info(c)->sockets, 3);
  uvip_census_free(c);
  /* Unreadable: the sample fails with the read's error. */
  redirect("/proc/net/tcp", "/tmp");
  uvip_census_options_t o;
  uvip_census_options_init(&o);
  o.flags = UVIP_CENSUS_PROCFS;
  ck_assert_int_eq(uvip_census_new(NULL, &o, &c), 0);
  ck_assert_int_eq(uvip_census_sample(c), UV_EISDIR);
  ck_assert_int_eq(uvip_census_info(c)->status, UV_EISDIR);
  ck_assert_uint_eq(uvip_census_vip_count(c), 0);
  uvip_census_free(c);
  fake_end();
}
END_TEST

/* ---- limits ------------------------------------------------------------------ */

static const char *const limit_files[] = {
    RANGE, RESERVED, "/proc/sys/net/core/somaxconn",
    "/proc/sys/net/ipv4/tcp_max_syn_backlog", TW_BUCKETS,
    "/proc/sys/net/ipv4/tcp_tw_reuse", "/proc/sys/net/ipv4/tcp_fin_timeout",
    "/proc/sys/net/ipv4/tcp_mem", "/proc/sys/fs/file-max", "/proc/sys/fs/file-nr",
    "/proc/sys/fs/nr_open", "/proc/net/sockstat", "/proc/net/netstat",
    "/proc/meminfo", "/proc/sys/net/ipv4/tcp_migrate_req"};

/* Every limit unreadable: -1 and its bit, not an error; the census and the
 * capacity report carry on with what they know. */
START_TEST(limits_missing) {
  uvip_limits_t L;
  char ch;
  cs_fresh_netns();
  int l = cs_listen("127.77.0.1", 7600, 16);
  int c1 = cs_connect_from("127.77.0.2", "127.77.0.1", 7600, 0);
  int s1 = accept1(l);
  make_time_wait("127.77.0.2", l, "127.77.0.1", 7600);
  for (size_t i = 0; i < sizeof(limit_files) / sizeof(limit_files[0]); i++)
    fake(limit_files[i], NULL);
  ck_assert_int_eq(uvip_limits_read(&L), 0);
  ck_assert_uint_eq(L.missing, 0x1fffu);
  ck_assert_int_eq(L.port_lo, -1);
  ck_assert_int_eq(L.usable_ports, -1);
  ck_assert_int_eq(L.somaxconn, -1);
  ck_assert_int_eq(L.tcp_max_tw_buckets, -1);
  ck_assert_int_eq(L.tcp_mem[1], -1);
  ck_assert_int_eq(L.file_max, -1);
  ck_assert_int_eq(L.file_nr, -1);
  ck_assert_int_eq(L.nr_open, -1);
  ck_assert_int_eq(L.mem_total, -1);
  ck_assert_int_eq(L.sock_tw, -1);
  ck_assert_uint_eq(L.netstat.listen_drops, 0);
  ck_assert_int_gt(L.nofile_soft, 0);

  uvip_census_t *c = sampled(0, 0);
  ck_assert_int_eq(uvip_census_sample(c), 0);
  ck_assert_int_eq(uvip_census_info(c)->has_netstat_delta, 0);
  ck_assert_ptr_nonnull(uvip_census_limits(c));
  ck_assert_uint_eq(uvip_census_tuple_count(c), 1);
  ck_assert_int_eq(uvip_census_tuple(c, 0)->usable, -1);
  ck_assert(uvip_census_tuple(c, 0)->utilisation == 0);
  uvip_capacity_t cap;
  uvip_capacity_input_t in;
  uvip_capacity_input_init(&in);
  in.target_conns = 100;
  ck_assert_int_eq(uvip_capacity_compute(c, &in, &cap), 0);
  ck_assert_int_eq(cap.usable_ports, 0);
  ck_assert_uint_eq(cap.by_ports, 0);
  ck_assert_uint_eq(cap.by_fds, (uint64_t)L.nofile_soft);
  ck_assert_uint_eq(cap.by_memory, UINT64_MAX);
  ck_assert_uint_eq(cap.by_time_wait, UINT64_MAX);
  ck_assert(cap.time_wait_use == 0);
  ck_assert_int_eq(cap.binding, UVIP_BOUND_PORTS);
  /* Nothing is said about a range that could not be read, nor about
   * nr_open and file-max; RLIMIT_NOFILE is known. */
  ck_assert(!has_advice(&cap, "ip_local_port_range"));
  in.target_conns = 1u << 30;
  ck_assert_int_eq(uvip_capacity_compute(c, &in, &cap), 0);
  ck_assert(has_advice(&cap, "raise RLIMIT_NOFILE (ulimit -n"));
  ck_assert(!has_advice(&cap, "nr_open"));
  ck_assert(!has_advice(&cap, "file-max"));
  ck_assert(!has_advice(&cap, "memory"));
  in.target_conns = 100;
  ck_assert_int_eq(uvip_capacity_compute(c, &in, &cap), 0);
  ck_assert(!has_advice(&cap, "add source VIPs"));
  ck_assert(!has_advice(&cap, "source VIPs per destination"));
  char *json = render(c, &cap, UVIP_RENDER_JSON);
  ck_assert_ptr_nonnull(strstr(json, "\"ip_local_port_range\":[-1,-1]"));
  ck_assert_ptr_nonnull(strstr(json, "\"by_memory\":-1,\"by_time_wait\":-1,"));
  ck_assert_ptr_nonnull(strstr(json, "\"usable\":-1,\"utilisation\":0.000000"));
  free(json);
  char *prom = render(c, &cap, UVIP_RENDER_PROMETHEUS);
  ck_assert_ptr_null(strstr(prom, "kind=\"by_memory\""));
  ck_assert_ptr_nonnull(strstr(prom, "uvip_capacity{kind=\"by_ports\"} 0\n"));
  free(prom);
  uvip_census_free(c);
  fake_end();
  close(c1);
  ck_assert_int_eq(read(s1, &ch, 1), 0);
  close(s1);
  close(l);
}
END_TEST

/* What a malformed or partial file gives. */
START_TEST(limits_malformed) {
  uvip_limits_t L;
  fake(RANGE, "40000\n");
  fake("/proc/net/netstat", "TcpExt: ListenOverflows ListenDrops\n");
  fake("/proc/net/sockstat", "sockets: used 3\nTCP: inuse x\n");
  fake("/proc/meminfo", "MemFree: 1 kB\n");
  fake("/proc/sys/net/core/somaxconn", "");
  fake("/proc/sys/net/ipv4/tcp_mem", "1 2 3\n"); /* absent in a child netns */
  ck_assert_int_eq(uvip_limits_read(&L), 0);
  ck_assert_uint_eq(L.missing, UVIP_LIMIT_PORT_RANGE | UVIP_LIMIT_NETSTAT |
                                   UVIP_LIMIT_SOCKSTAT | UVIP_LIMIT_SOMAXCONN);
  ck_assert_int_eq(L.mem_total, -1);
  ck_assert_int_eq(L.sock_inuse, -1);
  /* Names without a line of values; names none of which is known. */
  fake("/proc/net/netstat", "TcpExt: Foo Bar\nTcpExt: 1 2");
  ck_assert_int_eq(uvip_limits_read(&L), 0);
  ck_assert(L.missing & UVIP_LIMIT_NETSTAT);
  /* Known names, last line unterminated: read. */
  fake("/proc/net/netstat", "IpExt: A\nIpExt: 1\nTcpExt: Foo ListenDrops TW "
                            "SyncookiesSent\nTcpExt: 5 7 9 11");
  ck_assert_int_eq(uvip_limits_read(&L), 0);
  ck_assert(!(L.missing & UVIP_LIMIT_NETSTAT));
  ck_assert_uint_eq(L.netstat.listen_drops, 7);
  ck_assert_uint_eq(L.netstat.tw, 9);
  ck_assert_uint_eq(L.netstat.syncookies_sent, 11);
  ck_assert_uint_eq(L.netstat.listen_overflows, 0);
  /* Reserved ports count only inside the range, ranges clipped to it. */
  fake(RANGE, "40000\t40099\n");
  fake(RESERVED, "1000-40004,40050 40090-50000,60000\n");
  ck_assert_int_eq(uvip_limits_read(&L), 0);
  ck_assert_int_eq(L.port_lo, 40000);
  ck_assert_int_eq(L.port_hi, 40099);
  ck_assert_int_eq(L.reserved_in_range, 5 + 1 + 10);
  ck_assert_int_eq(L.usable_ports, 100 - 16);
  /* No reserved-ports file: none reserved, and flagged. */
  fake(RESERVED, NULL);
  ck_assert_int_eq(uvip_limits_read(&L), 0);
  ck_assert(L.missing & UVIP_LIMIT_RESERVED_PORTS);
  ck_assert_int_eq(L.reserved_in_range, 0);
  ck_assert_int_eq(L.usable_ports, 100);
  /* No TcpExt at all; more names than values (the rest unread). */
  fake("/proc/net/netstat", "IpExt: A\nIpExt: 1\n");
  ck_assert_int_eq(uvip_limits_read(&L), 0);
  ck_assert(L.missing & UVIP_LIMIT_NETSTAT);
  fake("/proc/net/netstat", "TcpExt: ListenDrops TW\nTcpExt: 7\n");
  ck_assert_int_eq(uvip_limits_read(&L), 0);
  ck_assert(!(L.missing & UVIP_LIMIT_NETSTAT));
  ck_assert_uint_eq(L.netstat.listen_drops, 7);
  ck_assert_uint_eq(L.netstat.tw, 0);
  fake("/proc/meminfo", "MemTotal: lots kB\n");
  ck_assert_int_eq(uvip_limits_read(&L), 0);
  ck_assert_int_eq(L.mem_total, -1);
  fake("/proc/meminfo", "MemTotal:       2048 kB\n");
  ck_assert_int_eq(uvip_limits_read(&L), 0);
  ck_assert_int_eq(L.mem_total, 2048 * 1024);
  fake_end();
}
END_TEST

/* A range the kernel would not give (above 65535): the census still
 * counts usable ports from it, and splits the shards its own way. */
START_TEST(range_out_of_bounds) {
  cs_fresh_netns();
  int l = cs_listen("127.77.0.1", 7650, 16);
  int fd = cs_connect_from("127.77.0.2", "127.77.0.1", 7650, 0);
  uvip_census_t *ref = sampled(0, 2);
  fake(RANGE, "70000 80000\n");
  fake(RESERVED, "");
  uvip_census_t *c = sampled(0, 2);
  ck_assert_int_eq(uvip_census_tuple(c, 0)->usable, 10001);
  ck_assert_int_eq(uvip_census_info(c)->shards, 2);
  same_census(ref, c);
  uvip_census_free(c);
  uvip_census_free(ref);
  fake_end();
  close(fd);
  close(l);
}
END_TEST

/* Out of descriptors: the sample fails (netlink cannot open), the limits
 * read reports every file missing, no descriptor count and no option
 * probe. */
START_TEST(out_of_descriptors) {
  struct rlimit old, rl;
  int fill[64], n = 0, fd;
  cs_fresh_netns();
  ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &old), 0);
  rl = old;
  rl.rlim_cur = (rlim_t)open_fd_count() + 16;
  ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
  uvip_census_t *c = sampled(0, 1);
  while ((fd = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0) {
    ck_assert_int_lt(n, 64);
    fill[n++] = fd;
  }
  ck_assert_int_eq(errno, EMFILE);
  ck_assert_int_eq(uvip_census_sample(c), UV_EMFILE);
  uvip_census_t *p = NULL;
  uvip_census_options_t o;
  uvip_census_options_init(&o);
  o.flags = UVIP_CENSUS_PROCFS;
  ck_assert_int_eq(uvip_census_new(NULL, &o, &p), 0);
  ck_assert_int_eq(uvip_census_sample(p), UV_EMFILE);
  uvip_census_free(p);
  uvip_limits_t L;
  ck_assert_int_eq(uvip_limits_read(&L), 0);
  ck_assert_uint_eq(L.missing, 0x1fffu);
  ck_assert_int_eq(L.open_fds, -1);
  ck_assert_int_eq(L.has_bind_address_no_port, 0);
  ck_assert_int_eq(L.has_local_port_range, 0);
  for (int i = 0; i < n; i++)
    close(fill[i]);
  ck_assert_int_eq(uvip_census_sample(c), 0);
  ck_assert_int_eq(uvip_census_limits(c)->has_bind_address_no_port, 1);
  uvip_census_free(c);
  ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &old), 0);
}
END_TEST

/* A read of /proc interrupted by a signal (a handler without SA_RESTART,
 * as an application may install) is retried: no value is lost. The file
 * is a FIFO the test holds open, so the reading thread is certainly
 * blocked in read() when the signal comes; the test sees that in
 * /proc/self/task/TID/syscall. */
static volatile sig_atomic_t usr1_seen;
static void on_usr1(int sig) {
  (void)sig;
  usr1_seen++;
}

typedef struct reader {
  pid_t tid;
  int procfs; /* 0: uvip_limits_read(); 1: a /proc census sample */
  int rc;
  uvip_limits_t L;
  uvip_census_t *c;
} reader_t;

static void *reader_main(void *arg) {
  reader_t *r = arg;
  __atomic_store_n(&r->tid, (pid_t)syscall(SYS_gettid), __ATOMIC_RELEASE);
  r->rc = r->procfs ? uvip_census_sample(r->c) : uvip_limits_read(&r->L);
  return NULL;
}

/* Waits until thread tid sleeps in read() on a descriptor (other than
 * own_fd) open on path. */
static void wait_reading(pid_t tid, const char *path, int own_fd) {
  char p[64], link[256], sc[128];
  for (int tries = 0; tries < 20000; tries++) {
    for (int fd = 0; fd < 1024; fd++) {
      if (fd == own_fd)
        continue;
      snprintf(p, sizeof(p), "/proc/self/fd/%d", fd);
      ssize_t n = readlink(p, link, sizeof(link) - 1);
      if (n <= 0)
        continue;
      link[n] = 0;
      if (strcmp(link, path) != 0)
        continue;
      snprintf(p, sizeof(p), "/proc/self/task/%d/syscall", (int)tid);
      int sfd = open(p, O_RDONLY | O_CLOEXEC);
      ck_assert_int_ge(sfd, 0);
      n = read(sfd, sc, sizeof(sc) - 1);
      close(sfd);
      char want[32];
      snprintf(want, sizeof(want), "%d 0x%x ", (int)SYS_read, fd);
      if (n > 0 && strncmp(sc, want, strlen(want)) == 0)
        return;
    }
    usleep(500);
  }
  ck_abort_msg("the reader never blocked in read()");
}

static void interrupted_read(const char *proc_path, int procfs,
                             const char *content) {
  struct sigaction sa, old;
  reader_t r;
  pthread_t th;
  memset(&r, 0, sizeof(r));
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_usr1; /* no SA_RESTART: read() returns EINTR */
  ck_assert_int_eq(sigaction(SIGUSR1, &sa, &old), 0);
  const char *fifo = fake_path(procfs ? "tcp-fifo" : "range-fifo");
  ck_assert_int_eq(mkfifo(fifo, 0600), 0);
  int wfd = open(fifo, O_RDWR | O_CLOEXEC); /* the reader's open won't wait */
  ck_assert_int_ge(wfd, 0);
  redirect(proc_path, fifo);
  if (procfs) {
    uvip_census_options_t o;
    uvip_census_options_init(&o);
    o.flags = UVIP_CENSUS_PROCFS | UVIP_CENSUS_NO_IPV6 | UVIP_CENSUS_NO_LIMITS;
    ck_assert_int_eq(uvip_census_new(NULL, &o, &r.c), 0);
  }
  r.procfs = procfs;
  usr1_seen = 0;
  ck_assert_int_eq(pthread_create(&th, NULL, reader_main, &r), 0);
  while (__atomic_load_n(&r.tid, __ATOMIC_ACQUIRE) == 0)
    sched_yield();
  wait_reading(r.tid, fifo, wfd);
  ck_assert_int_eq(pthread_kill(th, SIGUSR1), 0);
  /* The handler ran on the reader (and its read() returned EINTR). */
  for (int i = 0; i < 20000 && !usr1_seen; i++)
    usleep(500);
  ck_assert_int_eq(usr1_seen, 1);
  wait_reading(r.tid, fifo, wfd); /* reading again */
  ck_assert_int_eq(write(wfd, content, strlen(content)), (ssize_t)strlen(content));
  close(wfd);
  ck_assert_int_eq(pthread_join(th, NULL), 0);
  ck_assert_int_eq(r.rc, 0);
  if (procfs) {
    ck_assert_uint_eq(uvip_census_listener_count(r.c), 1);
    ck_assert_uint_eq(uvip_census_listener(r.c, 0)->queue, 5);
    uvip_census_free(r.c);
  } else {
    ck_assert_int_eq(r.L.port_lo, 40000);
    ck_assert_int_eq(r.L.port_hi, 40099);
  }
  ck_assert_int_eq(sigaction(SIGUSR1, &old, NULL), 0);
  fake_end();
}

START_TEST(proc_reads_survive_signals) {
  interrupted_read(RANGE, 0, "40000\t40099\n");
  interrupted_read("/proc/net/tcp", 1, TCP_HEAD
                   "   0: 0100007F:1B58 00000000:0000 0A 00000000:00000005" REST);
}
END_TEST

/* A file longer than the reader's buffer: its beginning is read. */
START_TEST(proc_file_longer_than_buffer) {
  char big[1024];
  uvip_limits_t L;
  memset(big, ' ', sizeof(big));
  memcpy(big, "1000", 4);
  big[sizeof(big) - 1] = 0;
  fake("/proc/sys/fs/file-max", big);
  ck_assert_int_eq(uvip_limits_read(&L), 0);
  ck_assert_int_eq(L.file_max, 1000);
  fake_end();
}
END_TEST

/* ---- capacity ------------------------------------------------------------------ */

START_TEST(capacity_arguments) {
  uvip_capacity_t cap;
  ck_assert_int_eq(uvip_capacity_input_init(NULL), UV_EINVAL);
  ck_assert_ptr_null(uvip_bound_name(-1));
  ck_assert_ptr_null(uvip_bound_name(UVIP_BOUND_MEMORY + 1));
  ck_assert_str_eq(uvip_bound_name(UVIP_BOUND_TIME_WAIT), "time_wait");
  ck_assert_int_eq(uvip_capacity_compute(NULL, NULL, &cap), UV_EINVAL);
  uvip_census_t *c = sampled(UVIP_CENSUS_NO_LIMITS, 1);
  ck_assert_int_eq(uvip_capacity_compute(c, NULL, NULL), UV_EINVAL);
  /* Without limits there is nothing to compute from. */
  ck_assert_ptr_null(uvip_census_limits(c));
  ck_assert_int_eq(uvip_capacity_compute(c, NULL, &cap), UV_EINVAL);
  /* And nothing to render about them. */
  char *json = render(c, NULL, UVIP_RENDER_JSON);
  ck_assert_ptr_null(strstr(json, "\"limits\""));
  ck_assert_ptr_null(strstr(json, "\"capacity\""));
  free(json);
  char *prom = render(c, NULL, UVIP_RENDER_PROMETHEUS);
  ck_assert_ptr_null(strstr(prom, "uvip_sysctl"));
  ck_assert_ptr_null(strstr(prom, "uvip_capacity"));
  free(prom);
  uvip_census_free(c);
}
END_TEST

/* Several destinations multiply the port bound; pool figures saturate
 * instead of wrapping; the memory bound binds when it is the smallest. */
START_TEST(capacity_destinations_and_saturation) {
  int fds[4];
  cs_fresh_netns();
  cs_sysctl(RANGE, "40000 40009");
  int l1 = cs_listen("127.77.0.1", 7700, 16);
  int l3 = cs_listen("127.77.0.3", 7701, 16);
  fds[0] = cs_connect_from("127.77.0.2", "127.77.0.1", 7700, 0);
  fds[1] = cs_connect_from("127.77.0.2", "127.77.0.1", 7700, 0);
  fds[2] = cs_connect_from("127.77.0.2", "127.77.0.3", 7701, 0);
  fds[3] = cs_connect_from("127.77.0.4", "127.77.0.1", 7700, 0);
  uvip_census_t *c = sampled(0, 0);
  ck_assert_uint_eq(uvip_census_tuple_count(c), 3);
  const uvip_limits_t *L = uvip_census_limits(c);
  uvip_capacity_t cap;
  ck_assert_int_eq(uvip_capacity_compute(c, NULL, &cap), 0);
  /* Sources .2 and .4: 20 per destination, 2 destinations. */
  ck_assert_uint_eq(cap.per_destination, 20);
  ck_assert_uint_eq(cap.by_ports, 40);
  /* Listening VIPs .1 and .3. */
  ck_assert_uint_eq(cap.per_client_addr, 20);
  ck_assert_uint_eq(cap.overall, 40);
  ck_assert_int_eq(cap.binding, UVIP_BOUND_PORTS);
  ck_assert_uint_eq(cap.conns_now, 8);
  ck_assert_uint_eq(cap.headroom, 32);
  ck_assert(cap.worst_tuple_use == 0.2);

  uvip_capacity_input_t in;
  uvip_capacity_input_init(&in);
  in.vips = UINT64_MAX;
  in.sources = UINT64_MAX / 4;
  in.processes = UINT64_MAX;
  ck_assert_int_eq(uvip_capacity_compute(c, &in, &cap), 0);
  ck_assert_uint_eq(cap.per_client_addr, UINT64_MAX);
  ck_assert_uint_eq(cap.per_destination, UINT64_MAX);
  ck_assert_uint_eq(cap.by_ports, UINT64_MAX);
  ck_assert_uint_eq(cap.by_fds, (uint64_t)L->file_max);
  char *json = render(c, &cap, UVIP_RENDER_JSON);
  ck_assert_ptr_nonnull(strstr(json, "\"per_client_addr\":-1,\"per_destination\":-1,"
                                     "\"by_ports\":-1,"));
  free(json);

  uvip_capacity_input_init(&in);
  in.mem_per_conn = (uint64_t)L->mem_total / 5;
  ck_assert_int_eq(uvip_capacity_compute(c, &in, &cap), 0);
  ck_assert_uint_eq(cap.by_memory, 5);
  ck_assert_uint_eq(cap.overall, 5);
  ck_assert_int_eq(cap.binding, UVIP_BOUND_MEMORY);
  ck_assert_uint_eq(cap.headroom, 0);
  char *prom = render(c, &cap, UVIP_RENDER_PROMETHEUS);
  ck_assert_ptr_nonnull(strstr(prom, "uvip_capacity{kind=\"by_memory\"} 5\n"));
  ck_assert_ptr_nonnull(strstr(prom, "uvip_capacity_binding{limit=\"memory\"} 1\n"));
  free(prom);
  uvip_census_free(c);
  for (int i = 0; i < 4; i++)
    close(fds[i]);
  close(l1);
  close(l3);
}
END_TEST

/* Only inbound traffic (a census of the listening VIP): clients bring
 * their own ports, so ports bound nothing and descriptors bind; a pool
 * description with outbound sources makes ports a bound again. */
START_TEST(capacity_inbound_only) {
  int fds[2];
  cs_fresh_netns();
  cs_sysctl(RANGE, "40000 40099");
  int l = cs_listen("127.77.0.1", 7720, 16);
  for (int i = 0; i < 2; i++)
    fds[i] = cs_connect_from("127.77.0.2", "127.77.0.1", 7720, 0);
  uvip_addrs_t *a = th_addrs("127.77.0.1", 0);
  uvip_census_t *c = NULL;
  ck_assert_int_eq(uvip_census_new(a, NULL, &c), 0);
  ck_assert_int_eq(uvip_census_sample(c), 0);
  ck_assert_uint_eq(uvip_census_tuple_count(c), 0);
  uvip_capacity_t cap;
  ck_assert_int_eq(uvip_capacity_compute(c, NULL, &cap), 0);
  ck_assert_uint_eq(cap.by_ports, UINT64_MAX);
  ck_assert_uint_eq(cap.per_client_addr, 100);
  ck_assert_int_eq(cap.binding, UVIP_BOUND_FDS);
  ck_assert_uint_eq(cap.overall, cap.by_fds);
  ck_assert_uint_eq(cap.conns_now, 2);
  ck_assert(cap.worst_tuple_use == 0);
  ck_assert(!has_advice(&cap, "ip_local_port_range"));
  uvip_capacity_input_t in;
  uvip_capacity_input_init(&in);
  in.sources = 3;
  in.listen_ports = 4;
  ck_assert_int_eq(uvip_capacity_compute(c, &in, &cap), 0);
  ck_assert_uint_eq(cap.per_destination, 300);
  ck_assert_uint_eq(cap.by_ports, 300);
  ck_assert_uint_eq(cap.per_client_addr, 400);
  ck_assert_int_eq(cap.binding, UVIP_BOUND_PORTS);
  uvip_census_free(c);
  uvip_addrs_free(a);
  for (int i = 0; i < 2; i++)
    close(fds[i]);
  close(l);
}
END_TEST

/* Every port of the range reserved: no port to give, and advice that says
 * so rather than "add source VIPs". */
START_TEST(capacity_zero_usable_ports) {
  int fds[3];
  cs_fresh_netns();
  cs_sysctl(RANGE, "40000 40009");
  int l = cs_listen("127.77.0.1", 7750, 16);
  for (int i = 0; i < 3; i++)
    fds[i] = cs_connect_from("127.77.0.2", "127.77.0.1", 7750, 0);
  cs_sysctl(RESERVED, "40000-40009");
  uvip_census_t *c = sampled(0, 0);
  const uvip_census_tuple_t *t = uvip_census_tuple(c, 0);
  ck_assert_int_eq(t->usable, 0);
  ck_assert_uint_eq(t->in_use, 3);
  ck_assert(t->utilisation == 0);
  uvip_capacity_input_t in;
  uvip_capacity_t cap;
  uvip_capacity_input_init(&in);
  in.target_conns = 100;
  ck_assert_int_eq(uvip_capacity_compute(c, &in, &cap), 0);
  ck_assert_int_eq(cap.usable_ports, 0);
  ck_assert_uint_eq(cap.per_destination, 0);
  ck_assert_uint_eq(cap.per_client_addr, 0);
  ck_assert_uint_eq(cap.by_ports, 0);
  ck_assert_uint_eq(cap.overall, 0);
  ck_assert_uint_eq(cap.headroom, 0);
  ck_assert(cap.rate_per_tuple == 0);
  ck_assert_int_eq(cap.binding, UVIP_BOUND_PORTS);
  ck_assert(has_advice(&cap, "ip_local_reserved_ports"));
  ck_assert(!has_advice(&cap, "add source VIPs"));
  ck_assert(!has_advice(&cap, "source VIPs per destination"));
  uvip_census_free(c);
  for (int i = 0; i < 3; i++)
    close(fds[i]);
  close(l);
}
END_TEST

/* TIME_WAIT buckets 90% used: TIME_WAIT binds, and the advice says how
 * many buckets to allow. */
START_TEST(capacity_time_wait_binds) {
  cs_fresh_netns();
  cs_sysctl(TW_BUCKETS, "3");
  int l = cs_listen("127.77.0.3", 7800, 16);
  for (int i = 0; i < 3; i++)
    make_time_wait("127.77.0.2", l, "127.77.0.3", 7800);
  uvip_census_t *c = sampled(0, 0);
  cs_sample_settled(c, 200);
  ck_assert_int_eq(uvip_census_limits(c)->sock_tw, 3);
  uvip_capacity_t cap;
  ck_assert_int_eq(uvip_capacity_compute(c, NULL, &cap), 0);
  ck_assert(cap.time_wait_use == 1.0);
  ck_assert_uint_eq(cap.by_time_wait, 3);
  ck_assert_int_eq(cap.binding, UVIP_BOUND_TIME_WAIT);
  ck_assert(has_advice(&cap, "raise net.ipv4.tcp_max_tw_buckets to 65542 (now 3, "
                             "3 in TIME_WAIT)"));
  uvip_census_free(c);
  close(l);
}
END_TEST

/* This process close to its descriptor limit: advice to raise it. */
START_TEST(capacity_fd_use) {
  struct rlimit old, rl;
  int fill[64], n = 0;
  cs_fresh_netns();
  ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &old), 0);
  int have = open_fd_count();
  ck_assert_int_lt(have, 30);
  rl = old;
  rl.rlim_cur = 40;
  ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
  while (have + n < 34)
    ck_assert_int_ge(fill[n++] = open("/dev/null", O_RDONLY | O_CLOEXEC), 0);
  uvip_census_t *c = sampled(0, 1);
  ck_assert_int_eq(uvip_census_limits(c)->open_fds, 34);
  uvip_capacity_t cap;
  ck_assert_int_eq(uvip_capacity_compute(c, NULL, &cap), 0);
  ck_assert(cap.fd_use == 34.0 / 40.0);
  ck_assert(has_advice(&cap, "raise RLIMIT_NOFILE: this process uses 34 of 40 descriptors"));
  /* Below 80% (31 of 40): nothing to say. */
  for (int i = 0; i < 3; i++)
    close(fill[--n]);
  ck_assert_int_eq(uvip_census_sample(c), 0);
  ck_assert_int_eq(uvip_capacity_compute(c, NULL, &cap), 0);
  ck_assert(!has_advice(&cap, "RLIMIT_NOFILE"));
  uvip_census_free(c);
  while (n)
    close(fill[--n]);
  ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &old), 0);
}
END_TEST

#define NETSTAT(lo, ld, two, sc)                                              \
  "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPTimeWaitOverflow "  \
  "TW TWRecycled TWKilled\nTcpExt: " sc " " lo " " ld " " two " 0 0 0\n"

/* Everything at once: twelve pieces of advice (the most a report holds),
 * most urgent first; the thirteenth is dropped. Kernel-wide limits come
 * from replaced files; the sockets are real. */
START_TEST(capacity_all_advice) {
  struct rlimit old, rl;
  int q[2];
  cs_fresh_netns();
  cs_sysctl(RANGE, "40000 40009");
  cs_sysctl(TW_BUCKETS, "100");
  cs_sysctl("/proc/sys/net/ipv4/tcp_tw_reuse", "0");
  int l1 = cs_listen("127.77.0.1", 7900, 1);
  for (int i = 0; i < 2; i++) /* queued, never accepted: 2 of 1 */
    ck_assert_int_ge(q[i] = cs_connect_from("127.77.0.2", "127.77.0.1", 7900, 0), 0);
  int l3 = cs_listen("127.77.0.3", 7901, 16);
  for (int i = 0; i < 3; i++)
    make_time_wait("127.77.0.2", l3, "127.77.0.3", 7901);
  ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &old), 0);
  rl = old;
  rl.rlim_cur = 1024;
  ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
  fake("/proc/sys/fs/file-max", "1000\n");
  fake("/proc/sys/fs/nr_open", "500\n");
  fake("/proc/sys/net/ipv4/tcp_mem", "10\t20\t30\n");
  fake("/proc/net/sockstat", "sockets: used 9\nTCP: inuse 5 orphan 0 tw 3 alloc 6 mem 25\n");
  fake("/proc/net/netstat", NETSTAT("0", "0", "0", "0"));
  uvip_census_t *c = sampled(0, 0);
  cs_sample_settled(c, 200); /* counters unchanged: no rise */
  ck_assert_uint_eq(uvip_census_info(c)->netstat_delta.listen_drops, 0);
  fake("/proc/net/netstat", NETSTAT("1", "2", "4", "5"));
  ck_assert_int_eq(uvip_census_sample(c), 0);
  const uvip_census_info_t *info = uvip_census_info(c);
  ck_assert_int_eq(info->has_netstat_delta, 1);
  ck_assert_uint_eq(info->netstat_delta.syncookies_sent, 5);
  ck_assert_uint_eq(info->netstat_delta.tw_overflow, 4);
  /* Counters that went backwards (a namespace's reset) rise by 0. */
  uvip_census_t *back = sampled(0, 0);
  fake("/proc/net/netstat", NETSTAT("0", "0", "3", "0"));
  ck_assert_int_eq(uvip_census_sample(back), 0);
  ck_assert_int_eq(uvip_census_info(back)->has_netstat_delta, 1);
  ck_assert_uint_eq(uvip_census_info(back)->netstat_delta.listen_drops, 0);
  ck_assert_uint_eq(uvip_census_info(back)->netstat_delta.tw_overflow, 0);
  ck_assert_uint_eq(uvip_census_info(back)->netstat_delta.syncookies_sent, 0);
  uvip_census_free(back);
  uvip_capacity_input_t in;
  uvip_capacity_t cap;
  uvip_capacity_input_init(&in);
  in.target_conns = 2000;
  in.mem_per_conn = (uint64_t)uvip_census_limits(c)->mem_total / 100;
  ck_assert_int_eq(uvip_capacity_compute(c, &in, &cap), 0);
  ck_assert_uint_eq(cap.by_fds, 500);
  ck_assert_int_eq(cap.binding, UVIP_BOUND_TIME_WAIT); /* it overflowed */
  static const char *const want[] = {
      "raise RLIMIT_NOFILE (ulimit -n, LimitNOFILE=) to 3024 per process: now "
      "1024 x 1 process(es) < 2000 wanted",
      "raise fs.nr_open to 3024 (now 500): RLIMIT_NOFILE cannot exceed it",
      "raise fs.file-max to 2200 (now 1000)",
      "widen net.ipv4.ip_local_port_range to \"1024 65535\" (now \"40000 "
      "40009\": 10 usable ports per tuple)",
      "use 200 source VIPs per destination for 2000 connections to it (10 "
      "ports each; now 1)",
      "bind source VIPs with IP_BIND_ADDRESS_NO_PORT",
      "accept faster or raise the backlog on 127.77.0.1:7900 (queue 2 of 1)",
      "listen queues overflowed (1 overflows, 2 drops since the last sample)",
      "SYN queue full (syncookies sent)",
      "raise net.ipv4.tcp_max_tw_buckets to 65542 (now 100, 3 in TIME_WAIT)",
      "set net.ipv4.tcp_tw_reuse=1 (now 0)",
      "memory: 2000 connections at ~"};
  ck_assert_uint_eq(cap.advice_count, UVIP_ADVICE_MAX);
  for (size_t i = 0; i < UVIP_ADVICE_MAX; i++)
    ck_assert_msg(strncmp(cap.advice[i], want[i], strlen(want[i])) == 0,
                  "advice %zu: %s", i, cap.advice[i]);
  /* Without the memory shortfall the TCP memory pressure one fits. */
  in.mem_per_conn = 0;
  ck_assert_int_eq(uvip_capacity_compute(c, &in, &cap), 0);
  ck_assert_uint_eq(cap.advice_count, UVIP_ADVICE_MAX);
  ck_assert_str_eq(cap.advice[11], "TCP memory pressure: 25 pages in use >= "
                                   "tcp_mem pressure 20; raise net.ipv4.tcp_mem "
                                   "or shrink socket buffers");

  /* JSON escapes the advice: quotes here, anything a caller puts in. */
  snprintf(cap.advice[0], UVIP_ADVICE_LEN, "a\\b\nc\td\001e/");
  char *json = render(c, &cap, UVIP_RENDER_JSON);
  ck_assert_ptr_nonnull(strstr(json, "\"advice\":[\"a\\\\b\\nc\\u0009d\\u0001e/\","));
  ck_assert_ptr_nonnull(strstr(json, "\"widen net.ipv4.ip_local_port_range to "
                                     "\\\"1024 65535\\\" (now \\\"40000 40009\\\""));
  ck_assert_ptr_nonnull(strstr(json, "\"netstat_delta\":{\"ListenOverflows\":1,"
                                     "\"ListenDrops\":2,\"TCPTimeWaitOverflow\":4,"));
  ck_assert_ptr_nonnull(strstr(json, "\"binding\":\"time_wait\""));
  FILE *f = fopen("cov-census.json", "w");
  ck_assert_ptr_nonnull(f);
  fputs(json, f);
  fclose(f);
  free(json);
  if (access("/usr/bin/python3", X_OK) == 0) {
    char *py = th_cmd_output(
        "python3 -c 'import json; d = json.load(open(\"cov-census.json\")); "
        "a = d[\"capacity\"][\"advice\"]; "
        "print(len(a), a[0] == \"a\\\\b\\nc\\td\\x01e/\", "
        "d[\"limits\"][\"tcp_mem\"])' 2>&1");
    ck_assert_ptr_nonnull(py);
    ck_assert_str_eq(py, "12 True [10, 20, 30]\n");
    free(py);
  }
  unlink("cov-census.json");
  uvip_census_free(c);
  fake_end();
  ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &old), 0);
  close(q[0]);
  close(q[1]);
  close(l1);
  close(l3);
}
END_TEST

/* ---- renderer and accessor arguments --------------------------------------------- */

START_TEST(render_and_accessor_arguments) {
  char buf[8];
  size_t len = 5;
  uvip_census_t *c = sampled(0, 1);
  ck_assert_int_eq(uvip_census_render(NULL, NULL, UVIP_RENDER_JSON, 0, buf, &len),
                   UV_EINVAL);
  ck_assert_int_eq(uvip_census_render(c, NULL, UVIP_RENDER_JSON, 0, buf, NULL),
                   UV_EINVAL);
  ck_assert_int_eq(uvip_census_render(c, NULL, UVIP_RENDER_JSON, 0, NULL, &len),
                   UV_EINVAL);
  ck_assert_int_eq(uvip_census_render(c, NULL, 0, 0, buf, &len), UV_EINVAL);
  ck_assert_uint_eq(len, 5);
  len = sizeof(buf);
  ck_assert_int_eq(uvip_census_render(c, NULL, UVIP_RENDER_PROMETHEUS, 0, buf, &len),
                   UV_ENOBUFS);
  ck_assert_uint_gt(len, sizeof(buf));
  ck_assert_ptr_null(uvip_census_info(NULL));
  ck_assert_ptr_null(uvip_census_limits(NULL));
  ck_assert_uint_eq(uvip_census_listener_count(NULL), 0);
  ck_assert_uint_eq(uvip_census_tuple_count(NULL), 0);
  ck_assert_ptr_null(uvip_census_listener(NULL, 0));
  ck_assert_ptr_null(uvip_census_listener(c, uvip_census_listener_count(c)));
  ck_assert_ptr_null(uvip_census_tuple(NULL, 0));
  ck_assert_ptr_null(uvip_census_vip(NULL, 0));
  uvip_census_options_t o;
  uvip_census_options_init(&o);
  o.max_listeners = 0;
  uvip_census_t *d = NULL;
  ck_assert_int_eq(uvip_census_new(NULL, &o, &d), UV_EINVAL);
  uvip_census_options_init(&o);
  o.max_tuples = (1u << 20) + 1;
  ck_assert_int_eq(uvip_census_new(NULL, &o, &d), UV_EINVAL);
  uvip_census_options_init(&o);
  o.flags = 1u << 4;
  ck_assert_int_eq(uvip_census_new(NULL, &o, &d), UV_EINVAL);
  uvip_census_options_init(&o);
  o.shards = UVIP_CENSUS_SHARDS_MAX + 1;
  ck_assert_int_eq(uvip_census_new(NULL, &o, &d), UV_EINVAL);
  ck_assert_ptr_null(d);
  uvip_census_free(c);
}
END_TEST

/* ---- tracker ------------------------------------------------------------------ */

typedef struct tstate {
  int step;
  int ev[8][2];
  double last_value[8];
  char last_listener[UVIP_ADDRSTRLEN];
  int statuses[16];
  int fds[16], nfds, lfd;
  bool done;
  uvip_tracker_t *t;
} tstate_t;

static tstate_t T;

static void t_event(uvip_tracker_t *t, const uvip_tracker_event_t *ev) {
  (void)t;
  ck_assert(ev->kind >= UVIP_EVENT_PORTS && ev->kind <= UVIP_EVENT_EXHAUSTION);
  T.ev[ev->kind][ev->raised]++;
  T.last_value[ev->kind] = ev->value;
  if (ev->listener)
    snprintf(T.last_listener, sizeof(T.last_listener), "%s",
             addr_of(&ev->listener->addr, 1));
}

static void t_finish(uvip_tracker_t *t) {
  T.done = true;
  ck_assert_int_eq(uvip_tracker_stop(t), 0);
}

static void t_run(uv_loop_t *loop, uvip_tracker_t *t, uvip_tracker_sample_cb s,
                  uvip_tracker_event_cb e) {
  T.t = t;
  ck_assert_int_eq(uvip_tracker_start(t, s, e), 0);
  th_run_until(loop, &T.done, 1000000);
}

static void t_close(uv_loop_t *loop, uvip_tracker_t *t) {
  ck_assert_int_eq(uvip_tracker_close(t, NULL), 0);
  ck_assert_int_eq(uv_run(loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(uv_loop_close(loop), 0);
}

static uvip_tracker_t *t_new(uv_loop_t *loop, uvip_tracker_options_t *o) {
  uvip_tracker_t *t = NULL;
  memset(&T, 0, sizeof(T));
  ck_assert_int_eq(uv_loop_init(loop), 0);
  o->interval_ms = 10;
  ck_assert_int_eq(uvip_tracker_new(loop, NULL, o, &t), 0);
  return t;
}

static void only(uvip_tracker_options_t *o, int kind) {
  uvip_tracker_options_init(o);
  o->ports_use = kind == UVIP_EVENT_PORTS ? 0.5 : 0;
  o->time_wait_use = kind == UVIP_EVENT_TIME_WAIT ? 0.8 : 0;
  o->listen_queue_use = kind == UVIP_EVENT_LISTEN_QUEUE ? 0.5 : 0;
  o->overflow = kind == UVIP_EVENT_OVERFLOW;
  o->exhaustion_seconds = 0; /* tests/test-census-range.c has its own */
  o->rearm = 0.8;
}

static void d_sample(uvip_tracker_t *t, const uvip_census_t *c, int status) {
  ck_assert_int_eq(status, 0);
  ck_assert_ptr_nonnull(c);
  t_finish(t);
}

START_TEST(tracker_defaults_and_arguments) {
  uv_loop_t loop;
  uvip_tracker_t *t = NULL;
  uvip_tracker_options_t o;
  cs_fresh_netns_once();
  memset(&T, 0, sizeof(T));
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  ck_assert_int_eq(uvip_tracker_options_init(NULL), UV_EINVAL);
  uvip_tracker_options_init(&o);
  o.ports_use = 1.5;
  ck_assert_int_eq(uvip_tracker_new(&loop, NULL, &o, &t), UV_EINVAL);
  uvip_tracker_options_init(&o);
  o.time_wait_use = NAN;
  ck_assert_int_eq(uvip_tracker_new(&loop, NULL, &o, &t), UV_EINVAL);
  uvip_tracker_options_init(&o);
  o.listen_queue_use = -0.1;
  ck_assert_int_eq(uvip_tracker_new(&loop, NULL, &o, &t), UV_EINVAL);
  uvip_tracker_options_init(&o);
  o.rearm = 1.01;
  ck_assert_int_eq(uvip_tracker_new(&loop, NULL, &o, &t), UV_EINVAL);
  ck_assert_int_eq(uvip_tracker_new(&loop, NULL, NULL, NULL), UV_EINVAL);
  /* The census options are the census's: too many VIPs for its table. */
  uvip_tracker_options_init(&o);
  o.census.max_vips = 1;
  uvip_addrs_t *a = th_addrs("127.77.0.1,127.77.0.2", 0);
  ck_assert_int_eq(uvip_tracker_new(&loop, a, &o, &t), UV_E2BIG);
  ck_assert_ptr_null(t);
  uvip_addrs_free(a);
  ck_assert_int_eq(uvip_tracker_start(NULL, NULL, NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_tracker_stop(NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_tracker_counts(NULL, NULL, NULL), UV_EINVAL);
  ck_assert_ptr_null(uvip_tracker_get_data(NULL));
  uvip_tracker_set_data(NULL, &o); /* ignored */

  /* Defaults (opts NULL): the first sample comes at once. */
  ck_assert_int_eq(uvip_tracker_new(&loop, NULL, NULL, &t), 0);
  ck_assert_int_eq(uvip_tracker_counts(t, NULL, NULL), 0);
  t_run(&loop, t, d_sample, NULL);
  uint64_t samples = 0;
  ck_assert_int_eq(uvip_tracker_counts(t, &samples, NULL), 0);
  ck_assert_uint_eq(samples, 1);
  ck_assert_int_eq(uvip_tracker_close(t, NULL), 0);
  /* Closing: neither start nor a second close. */
  ck_assert_int_eq(uvip_tracker_start(t, d_sample, NULL), UV_EINVAL);
  ck_assert_int_eq(uvip_tracker_close(t, NULL), UV_EINVAL);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

/* A raised listener that disappears ends its condition (value 0). */
static void lg_sample(uvip_tracker_t *t, const uvip_census_t *c, int status) {
  (void)c;
  ck_assert_int_eq(status, 0);
  switch (T.step++) {
  case 0:
    ck_assert_int_eq(T.ev[UVIP_EVENT_LISTEN_QUEUE][1], 1);
    ck_assert(T.last_value[UVIP_EVENT_LISTEN_QUEUE] == 1.0);
    ck_assert_str_eq(T.last_listener, "127.77.0.1:8000");
    close(T.lfd);
    break;
  case 1:
    ck_assert_int_eq(T.ev[UVIP_EVENT_LISTEN_QUEUE][0], 1);
    ck_assert(T.last_value[UVIP_EVENT_LISTEN_QUEUE] == 0);
    ck_assert_str_eq(T.last_listener, "127.77.0.1:8000");
    ck_assert_uint_eq(uvip_census_listener_count(c), 0);
    t_finish(t);
    break;
  }
}

START_TEST(tracker_listener_gone) {
  uv_loop_t loop;
  uvip_tracker_options_t o;
  cs_fresh_netns_once();
  only(&o, UVIP_EVENT_LISTEN_QUEUE);
  uvip_tracker_t *t = t_new(&loop, &o);
  T.lfd = cs_listen("127.77.0.1", 8000, 2);
  for (int i = 0; i < 2; i++)
    T.fds[T.nfds++] = cs_connect_from("127.77.0.2", "127.77.0.1", 8000, 0);
  t_run(&loop, t, lg_sample, t_event);
  ck_assert_int_eq(T.ev[UVIP_EVENT_LISTEN_QUEUE][1], 1);
  ck_assert_int_eq(T.ev[UVIP_EVENT_LISTEN_QUEUE][0], 1);
  t_close(&loop, t);
  for (int i = 0; i < T.nfds; i++)
    close(T.fds[i]);
}
END_TEST

/* A tuple between the re-arm level and the threshold that never crossed it
 * raises nothing, however many samples see it; crossing then raises once. */
static void pb_sample(uvip_tracker_t *t, const uvip_census_t *c, int status) {
  ck_assert_int_eq(status, 0);
  ck_assert(uvip_census_tuple(c, 0)->utilisation >= 0.4);
  switch (T.step++) {
  case 0:
  case 1:
    ck_assert_int_eq(T.ev[UVIP_EVENT_PORTS][1] + T.ev[UVIP_EVENT_PORTS][0], 0);
    break;
  case 2:
    ck_assert_int_eq(T.ev[UVIP_EVENT_PORTS][1] + T.ev[UVIP_EVENT_PORTS][0], 0);
    T.fds[T.nfds++] = cs_connect_from("127.77.0.2", "127.77.0.1", 8100, 0);
    break;
  case 3:
    ck_assert_int_eq(T.ev[UVIP_EVENT_PORTS][1], 1);
    ck_assert(T.last_value[UVIP_EVENT_PORTS] == 0.5);
    t_finish(t);
    break;
  }
}

START_TEST(tracker_ports_between_levels) {
  uv_loop_t loop;
  uvip_tracker_options_t o;
  cs_fresh_netns_once();
  cs_sysctl(RANGE, "40000 40009");
  only(&o, UVIP_EVENT_PORTS);
  uvip_tracker_t *t = t_new(&loop, &o);
  T.lfd = cs_listen("127.77.0.1", 8100, 64);
  for (int i = 0; i < 4; i++) /* 0.4: the re-arm level, under 0.5 */
    T.fds[T.nfds++] = cs_connect_from("127.77.0.2", "127.77.0.1", 8100, 0);
  t_run(&loop, t, pb_sample, t_event);
  ck_assert_int_eq(T.step, 4);
  t_close(&loop, t);
  for (int i = 0; i < T.nfds; i++)
    cs_abort(T.fds[i]);
  close(T.lfd);
  cs_sysctl(RANGE, "32768 60999");
}
END_TEST

/* Without limits (NO_LIMITS) there is no TIME_WAIT or overflow check, even
 * with the buckets full. */
static void nl_sample(uvip_tracker_t *t, const uvip_census_t *c, int status) {
  ck_assert_int_eq(status, 0);
  ck_assert_ptr_null(uvip_census_limits(c));
  ck_assert_uint_eq(uvip_census_totals(c)->out[UVIP_TCP_TIME_WAIT], 4);
  if (++T.step == 3)
    t_finish(t);
}

static void tw_stop_event(uvip_tracker_t *t, const uvip_tracker_event_t *ev) {
  t_event(t, ev);
  if (ev->kind == UVIP_EVENT_TIME_WAIT)
    t_finish(t);
}

static void nl_sample_limits(uvip_tracker_t *t, const uvip_census_t *c, int status) {
  ck_assert_int_eq(status, 0);
  ck_assert_int_eq(uvip_census_limits(c)->tcp_max_tw_buckets, -1);
  ck_assert_uint_eq(uvip_census_totals(c)->out[UVIP_TCP_TIME_WAIT], 4);
  if (++T.step == 3)
    t_finish(t);
}

/* With sockstat unreadable, TIME_WAITs are the census's own count. */
static void tc_sample(uvip_tracker_t *t, const uvip_census_t *c, int status) {
  ck_assert_int_eq(status, 0);
  ck_assert_int_eq(uvip_census_limits(c)->sock_tw, -1);
  ck_assert_int_eq(T.ev[UVIP_EVENT_TIME_WAIT][1], 1);
  ck_assert(T.last_value[UVIP_EVENT_TIME_WAIT] == 1.0);
  t_finish(t);
}

START_TEST(tracker_time_wait_sources) {
  uv_loop_t loop;
  uvip_tracker_options_t o;
  cs_fresh_netns_once();
  cs_sysctl(TW_BUCKETS, "4");
  int l = cs_listen("127.77.0.3", 8200, 16);
  for (int i = 0; i < 4; i++)
    make_time_wait("127.77.0.2", l, "127.77.0.3", 8200);
  close(l);
  uvip_census_t *c = sampled(0, 0);
  cs_sample_settled(c, 200);
  uvip_census_free(c);

  only(&o, UVIP_EVENT_TIME_WAIT);
  o.overflow = 1;
  o.census.flags = UVIP_CENSUS_NO_LIMITS;
  uvip_tracker_t *t = t_new(&loop, &o);
  t_run(&loop, t, nl_sample, t_event);
  ck_assert_int_eq(T.ev[UVIP_EVENT_TIME_WAIT][1], 0);
  ck_assert_int_eq(T.ev[UVIP_EVENT_OVERFLOW][1], 0);
  t_close(&loop, t);

  fake("/proc/net/sockstat", "sockets: used 4\n");
  only(&o, UVIP_EVENT_TIME_WAIT);
  t = t_new(&loop, &o);
  t_run(&loop, t, tc_sample, t_event);
  t_close(&loop, t);

  /* No sample callback: the event alone says it. */
  t = t_new(&loop, &o);
  t_run(&loop, t, NULL, tw_stop_event);
  ck_assert_int_eq(T.ev[UVIP_EVENT_TIME_WAIT][1], 1);
  t_close(&loop, t);

  /* Buckets unknown: no TIME_WAIT check. */
  fake(TW_BUCKETS, "");
  t = t_new(&loop, &o);
  t_run(&loop, t, nl_sample_limits, t_event);
  ck_assert_int_eq(T.ev[UVIP_EVENT_TIME_WAIT][1], 0);
  t_close(&loop, t);
  fake_end();
}
END_TEST

/* Stopped from inside the first event of a sample that has two: the
 * second is not reported, nor the sample. */
static void se_sample(uvip_tracker_t *t, const uvip_census_t *c, int status) {
  (void)t;
  (void)c;
  (void)status;
  ck_abort_msg("sample reported after stop");
}

static void se_event(uvip_tracker_t *t, const uvip_tracker_event_t *ev) {
  t_event(t, ev);
  ck_assert_int_eq(uvip_tracker_stop(t), 0);
}

START_TEST(tracker_stop_from_event) {
  uv_loop_t loop;
  uvip_tracker_options_t o;
  cs_fresh_netns_once();
  cs_sysctl(RANGE, "40000 40009");
  uvip_tracker_options_init(&o);
  o.ports_use = 0.5;
  o.listen_queue_use = 0.5;
  uvip_tracker_t *t = t_new(&loop, &o);
  T.lfd = cs_listen("127.77.0.1", 8400, 8);
  for (int i = 0; i < 6; i++) /* 6 of 10 ports; 6 queued of 8 */
    T.fds[T.nfds++] = cs_connect_from("127.77.0.2", "127.77.0.1", 8400, 0);
  ck_assert_int_eq(uvip_tracker_start(t, se_sample, se_event), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  int n = 0;
  for (int k = 0; k < 5; k++)
    n += T.ev[k][0] + T.ev[k][1];
  ck_assert_int_eq(n, 1);
  ck_assert_int_eq(T.ev[UVIP_EVENT_PORTS][1], 1); /* tuples come first */
  uint64_t samples = 0;
  ck_assert_int_eq(uvip_tracker_counts(t, &samples, NULL), 0);
  ck_assert_uint_eq(samples, 1);
  t_close(&loop, t);
  for (int i = 0; i < T.nfds; i++)
    cs_abort(T.fds[i]);
  close(T.lfd);
  cs_sysctl(RANGE, "32768 60999");
}
END_TEST

/* TcpExt unreadable: no deltas, so no overflow events, however the
 * listen queue overflows. */
static void nn_sample(uvip_tracker_t *t, const uvip_census_t *c, int status) {
  ck_assert_int_eq(status, 0);
  ck_assert_int_eq(uvip_census_info(c)->has_netstat_delta, 0);
  ck_assert(uvip_census_limits(c)->missing & UVIP_LIMIT_NETSTAT);
  /* backlog 0 holds one; the others' SYNs overflow it */
  T.fds[T.nfds++] = cs_connect_from("127.77.0.2", "127.77.0.1", 8500, 1);
  if (++T.step == 3)
    t_finish(t);
}

START_TEST(tracker_without_netstat) {
  uv_loop_t loop;
  uvip_tracker_options_t o;
  cs_fresh_netns_once();
  fake("/proc/net/netstat", NULL);
  only(&o, UVIP_EVENT_OVERFLOW);
  uvip_tracker_t *t = t_new(&loop, &o);
  T.lfd = cs_listen("127.77.0.1", 8500, 0);
  t_run(&loop, t, nn_sample, t_event);
  ck_assert_int_eq(T.ev[UVIP_EVENT_OVERFLOW][1], 0);
  t_close(&loop, t);
  for (int i = 0; i < T.nfds; i++)
    close(T.fds[i]);
  close(T.lfd);
  fake_end();
}
END_TEST

/* A failed sample is reported with its status and no events, and is not
 * the reference for the next: a condition that holds across it is neither
 * cleared nor raised again. */
static void fs_sample(uvip_tracker_t *t, const uvip_census_t *c, int status) {
  T.statuses[T.step] = status;
  switch (T.step++) {
  case 0:
    ck_assert_int_eq(status, 0);
    ck_assert_int_eq(T.ev[UVIP_EVENT_PORTS][1], 1);
    F.open2_errno = EMFILE;
    F.open2_from = 1;
    break;
  case 1:
    F.open2_errno = 0;
    ck_assert_int_eq(status, UV_EMFILE);
    ck_assert_uint_eq(uvip_census_tuple_count(c), 0);
    ck_assert_int_eq(T.ev[UVIP_EVENT_PORTS][0], 0);
    break;
  case 2:
    ck_assert_int_eq(status, 0);
    ck_assert_uint_eq(uvip_census_tuple_count(c), 1);
    ck_assert_int_eq(T.ev[UVIP_EVENT_PORTS][1], 1);
    ck_assert_int_eq(T.ev[UVIP_EVENT_PORTS][0], 0);
    t_finish(t);
    break;
  }
}

START_TEST(tracker_failed_sample) {
  uv_loop_t loop;
  uvip_tracker_options_t o;
  cs_fresh_netns_once();
  cs_sysctl(RANGE, "40000 40009");
  only(&o, UVIP_EVENT_PORTS);
  uvip_tracker_t *t = t_new(&loop, &o);
  T.lfd = cs_listen("127.77.0.1", 8300, 64);
  for (int i = 0; i < 6; i++)
    T.fds[T.nfds++] = cs_connect_from("127.77.0.2", "127.77.0.1", 8300, 0);
  t_run(&loop, t, fs_sample, t_event);
  uint64_t samples;
  ck_assert_int_eq(uvip_tracker_counts(t, &samples, NULL), 0);
  ck_assert_uint_eq(samples, 3);
  t_close(&loop, t);
  for (int i = 0; i < T.nfds; i++)
    cs_abort(T.fds[i]);
  close(T.lfd);
  cs_sysctl(RANGE, "32768 60999");
}
END_TEST

/* Stopped while a sample runs: that sample completes but reports nothing
 * (and does not count); started again, sampling resumes. The stop comes
 * from a prepare callback at the first turn where the sample is queued:
 * its completion can only be delivered later in that turn's poll phase. */
static uv_prepare_t sp_prep;
static int sp_samples;

static void sp_sample(uvip_tracker_t *t, const uvip_census_t *c, int status) {
  (void)c;
  ck_assert_int_eq(status, 0);
  sp_samples++;
  t_finish(t);
}

static void sp_prepare(uv_prepare_t *p) {
  if (p->loop->active_reqs.count == 0)
    return;
  ck_assert_int_eq(uvip_tracker_stop(T.t), 0);
  ck_assert_int_eq(uvip_tracker_stop(T.t), 0); /* idempotent */
  uv_close((uv_handle_t *)p, NULL);
}

START_TEST(tracker_stop_in_flight) {
  uv_loop_t loop;
  uvip_tracker_options_t o;
  uint64_t samples = 9;
  cs_fresh_netns_once();
  uvip_tracker_options_init(&o);
  uvip_tracker_t *t = t_new(&loop, &o);
  sp_samples = 0;
  T.t = t;
  ck_assert_int_eq(uv_prepare_init(&loop, &sp_prep), 0);
  ck_assert_int_eq(uv_prepare_start(&sp_prep, sp_prepare), 0);
  ck_assert_int_eq(uvip_tracker_start(t, sp_sample, t_event), 0);
  /* Returns once the sample's work came back: nothing else is active. */
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(sp_samples, 0);
  ck_assert_int_eq(uvip_tracker_counts(t, &samples, NULL), 0);
  ck_assert_uint_eq(samples, 0);
  t_run(&loop, t, sp_sample, t_event);
  ck_assert_int_eq(sp_samples, 1);
  ck_assert_int_eq(uvip_tracker_counts(t, &samples, NULL), 0);
  ck_assert_uint_eq(samples, 1);
  t_close(&loop, t);
}
END_TEST

/* Ticks that come while a sample runs are skipped, not queued. The sample
 * reads /proc/net/tcp from a FIFO that the test holds open: it cannot end
 * before the test writes and closes, however many ticks pass. */
static uv_check_t sk_check;
static int sk_wfd = -1;

static void sk_on_check(uv_check_t *h) {
  uint64_t skipped = 0;
  ck_assert_int_eq(uvip_tracker_counts(T.t, NULL, &skipped), 0);
  if (skipped < 2 || sk_wfd < 0)
    return;
  static const char line[] = TCP_HEAD
      "   0: 0100007F:1B58 00000000:0000 0A 00000000:00000000" REST;
  ck_assert_int_eq(write(sk_wfd, line, sizeof(line) - 1), (ssize_t)sizeof(line) - 1);
  close(sk_wfd);
  sk_wfd = -1;
  uv_close((uv_handle_t *)h, NULL);
}

static void sk_sample(uvip_tracker_t *t, const uvip_census_t *c, int status) {
  uint64_t skipped = 0;
  ck_assert_int_eq(status, 0);
  ck_assert_int_eq(uvip_tracker_counts(t, NULL, &skipped), 0);
  ck_assert_uint_ge(skipped, 2);
  ck_assert_uint_eq(uvip_census_listener_count(c), 1);
  ck_assert_str_eq(addr_of(&uvip_census_listener(c, 0)->addr, 1), "127.0.0.1:7000");
  t_finish(t);
}

START_TEST(tracker_skips_ticks_while_sampling) {
  uv_loop_t loop;
  uvip_tracker_options_t o;
  cs_fresh_netns_once();
  const char *fifo = fake_path("tcp-fifo");
  ck_assert_int_eq(mkfifo(fifo, 0600), 0);
  /* Read-write: the census's open does not wait for a writer. */
  sk_wfd = open(fifo, O_RDWR | O_CLOEXEC);
  ck_assert_int_ge(sk_wfd, 0);
  redirect("/proc/net/tcp", fifo);
  uvip_tracker_options_init(&o);
  o.census.flags = UVIP_CENSUS_PROCFS | UVIP_CENSUS_NO_IPV6;
  uvip_tracker_t *t = t_new(&loop, &o);
  T.t = t;
  ck_assert_int_eq(uv_check_init(&loop, &sk_check), 0);
  ck_assert_int_eq(uv_check_start(&sk_check, sk_on_check), 0);
  t_run(&loop, t, sk_sample, NULL);
  uint64_t samples = 0;
  ck_assert_int_eq(uvip_tracker_counts(t, &samples, NULL), 0);
  ck_assert_uint_eq(samples, 1);
  t_close(&loop, t);
  fake_end();
}
END_TEST

/* ---- forecast: allocation failures, a raised pair that goes -------------- */

/* Established connections grow from sample to sample (a pool that keeps
 * opening runs out whatever TIME_WAIT does): the EXHAUSTION event is
 * raised; aborted (no TIME_WAIT), the pair goes and the event ends with it.
 * Meanwhile the forecast arrays fail to grow, one after the other: the
 * forecasts of that sample are missing (UV_ENOENT), nothing else. */
static void fg_sample(uvip_tracker_t *t, const uvip_census_t *c, int status) {
  uvip_forecast_t f;
  ck_assert_int_eq(status, 0);
  F.alloc_fail_at = 0;
  switch (T.step++) {
  case 0: /* no pair yet */
    for (int i = 0; i < 3; i++)
      T.fds[T.nfds++] = cs_connect_from("127.77.0.2", "127.77.0.1", 8600, 0);
    F.allocs = 0;
    F.alloc_fail_at = 1; /* the next sample's pair forecasts */
    return;
  case 1:
    ck_assert_uint_eq(uvip_census_tuple_count(c), 1);
    ck_assert_int_eq(uvip_tracker_forecast(t, 0, &f), UV_ENOENT);
    ck_assert_int_eq(uvip_tracker_vip_forecast(t, 0, &f), UV_ENOENT);
    F.allocs = 0;
    F.alloc_fail_at = 2; /* their raised flags */
    return;
  case 2:
    ck_assert_int_eq(uvip_tracker_forecast(t, 0, &f), UV_ENOENT);
    for (int i = 0; i < 3; i++)
      T.fds[T.nfds++] = cs_connect_from("127.77.0.2", "127.77.0.1", 8600, 0);
    F.allocs = 0;
    F.alloc_fail_at = 3; /* the VIP forecasts */
    return;
  case 3: /* the pair's first forecast: new to the model */
    ck_assert_int_eq(uvip_tracker_forecast(t, 0, &f), 0);
    ck_assert_int_eq(f.state, UVIP_FORECAST_UNKNOWN);
    ck_assert_int_eq(uvip_tracker_vip_forecast(t, 0, &f), UV_ENOENT);
    for (int i = 0; i < 3; i++)
      T.fds[T.nfds++] = cs_connect_from("127.77.0.2", "127.77.0.1", 8600, 0);
    return;
  case 4:
    ck_assert_int_eq(T.ev[UVIP_EVENT_EXHAUSTION][1], 1);
    ck_assert_int_eq(uvip_tracker_forecast(t, 0, &f), 0);
    ck_assert_int_eq(f.state, UVIP_FORECAST_EXHAUSTING);
    while (T.nfds > 0)
      cs_abort(T.fds[--T.nfds]);
    return;
  default:
    if (uvip_census_tuple_count(c) > 0)
      return; /* the aborted sockets are still going */
    ck_assert_int_eq(T.ev[UVIP_EVENT_EXHAUSTION][0], 1);
    ck_assert(T.last_value[UVIP_EVENT_EXHAUSTION] == -1);
    t_finish(t);
  }
}

START_TEST(tracker_forecast_alloc_and_gone) {
  uv_loop_t loop;
  uvip_tracker_options_t o;
  cs_fresh_netns_once();
  cs_sysctl(RANGE, "40000 40099");
  only(&o, 0);
  o.exhaustion_seconds = 1e6;
  o.census.shards = 1;
  uvip_tracker_t *t = t_new(&loop, &o);
  T.lfd = cs_listen("127.77.0.1", 8600, 64);
  t_run(&loop, t, fg_sample, t_event);
  t_close(&loop, t);
  close(T.lfd);
}
END_TEST

int main(void) {
  th_enter_netns_or_skip();
  Suite *s = suite_create("cov-census");
  TCase *tc = tcase_create("cov-census");
  tcase_add_test(tc, syn_recv_per_listener);
  tcase_add_test(tc, syn_recv_dual_stack_listener);
  tcase_add_test(tc, closed_listener_leaves_outbound);
  tcase_add_test(tc, families);
  tcase_add_test(tc, merge_overflow_across_shards);
  tcase_add_test(tc, default_shards_follow_idle_cpus);
  tcase_add_test(tc, census_for_server);
  tcase_add_test(tc, census_and_tracker_allocation_failures);
  tcase_add_test(tc, netlink_faults);
  tcase_add_test(tc, procfs_lines);
  tcase_add_test(tc, limits_missing);
  tcase_add_test(tc, limits_malformed);
  tcase_add_test(tc, range_out_of_bounds);
  tcase_add_test(tc, out_of_descriptors);
  tcase_add_test(tc, proc_reads_survive_signals);
  tcase_add_test(tc, proc_file_longer_than_buffer);
  tcase_add_test(tc, capacity_arguments);
  tcase_add_test(tc, capacity_destinations_and_saturation);
  tcase_add_test(tc, capacity_inbound_only);
  tcase_add_test(tc, capacity_zero_usable_ports);
  tcase_add_test(tc, capacity_time_wait_binds);
  tcase_add_test(tc, capacity_fd_use);
  tcase_add_test(tc, capacity_all_advice);
  tcase_add_test(tc, render_and_accessor_arguments);
  tcase_add_test(tc, tracker_defaults_and_arguments);
  tcase_add_test(tc, tracker_listener_gone);
  tcase_add_test(tc, tracker_ports_between_levels);
  tcase_add_test(tc, tracker_time_wait_sources);
  tcase_add_test(tc, tracker_stop_from_event);
  tcase_add_test(tc, tracker_without_netstat);
  tcase_add_test(tc, tracker_failed_sample);
  tcase_add_test(tc, tracker_stop_in_flight);
  tcase_add_test(tc, tracker_skips_ticks_while_sampling);
  tcase_add_test(tc, tracker_forecast_alloc_and_gone);
  suite_add_tcase(s, tc);
  return th_run_suite(s);
}
