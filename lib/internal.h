/* Internal structures shared between lib/ files. Not installed.
 * SPDX-License-Identifier: MIT */
#ifndef UVIP_INTERNAL_H
#define UVIP_INTERNAL_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "uvip.h"

#define UVIP_EXPORT __attribute__((visibility("default")))

#define UVIP_CONTAINER_OF(ptr, type, field)                                    \
  ((type *)((char *)(ptr)-offsetof(type, field)))

/* Returns UV_EINVAL from the calling function when cond holds. */
#define UVIP_CHECK_ARG(cond)                                                   \
  do {                                                                         \
    if (cond)                                                                  \
      return UV_EINVAL;                                                        \
  } while (0)

/* Linux 4.2 and 6.3 options, for headers that predate them. */
#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif
#ifndef IP_LOCAL_PORT_RANGE
#define IP_LOCAL_PORT_RANGE 51
#endif

typedef union uvip__sa {
  struct sockaddr sa;
  struct sockaddr_in in;
  struct sockaddr_in6 in6;
  struct sockaddr_storage ss;
} uvip__sa_t;

/* addrs.c */
socklen_t uvip__sa_len(const struct sockaddr *sa);
int uvip__sa_equal(const struct sockaddr *a, const struct sockaddr *b);
/* For the spec parser (addrs-parse.c). Makes room for `need` entries in
 * total without changing the contents (0 or UV_ENOMEM). */
int uvip__addrs_reserve(uvip_addrs_t *l, size_t need);
/* Appends a normalized address, room reserved: 0 or UV_EEXIST. */
int uvip__addrs_push(uvip_addrs_t *l, const uvip__sa_t *a);
/* Drops the entries from index n on (undoes a failed parse). */
void uvip__addrs_truncate(uvip_addrs_t *l, size_t n);

/* prefix.c */
/* A known family and a length that fits it. */
bool uvip__prefix_valid(const uvip_prefix_t *p);
/* Clears the host bits of a valid prefix. */
void uvip__prefix_mask(uvip_prefix_t *p);

/* procfs.c */
/* Reads a small /proc file into buf, NUL terminated (empty on error). */
int uvip__proc_read(const char *path, char *buf, size_t len);
/* Reads up to max whitespace-separated integers; returns how many. */
int uvip__proc_ints(const char *path, int64_t *v, int max);

/* sockopt.c */
int uvip__somaxconn(void);
/* Creates, configures, binds and listens a non-blocking socket. */
int uvip__listen_socket(const struct sockaddr *sa,
                        const uvip_server_options_t *opts, int *fd_out);

/* The addresses of a PROXY header (proxy-accept.c). */
typedef union uvip__sa46 {
  struct sockaddr sa;
  struct sockaddr_in in;
  struct sockaddr_in6 in6;
} uvip__sa46_t;

typedef struct uvip__conn_proxy {
  uvip__sa46_t src, dst;
} uvip__conn_proxy_t;

/* conn->proxy of a connection whose header had no client's addresses. */
extern uvip__conn_proxy_t uvip__proxy_noaddrs;

struct uvip_conn_s {
  uv_tcp_t tcp; /* first: uvip_conn_from_tcp() relies on it */
  uvip_vip_t *vip;
  uvip_conn_close_cb close_cb;
  uvip_conn_t *prev, *next; /* the VIP's list of open connections */
  /* NULL without a PROXY header, &uvip__proxy_noaddrs for one without
   * addresses, else the header's addresses (owned). */
  uvip__conn_proxy_t *proxy;
  /* The group of a prefix VIP's connection (server-prefix.c), else NULL. */
  struct uvip__group *group;
};

/* A socket accepted with UVIP_PROXY_PROTOCOL, waiting for its header. */
typedef struct uvip__pending uvip__pending_t;

struct uvip_vip_s {
  uvip_server_t *server;
  uvip__sa_t addr;
  uvip_vip_state_t state;
  int error;
  int fd;
  unsigned int weight;
  void *data;
  uvip_vip_stats_t stats;
  bool adopted; /* fd was inherited (uvip_server_adopt()), not bound here */
  /* uvip_server_add_prefix(): the prefix, its groups (server-prefix.c). */
  struct uvip__pfx *pfx;

  /* Scheduler state. */
  bool in_ring;     /* queued in the server's ready ring */
  bool pending;     /* may have queued connections (parked at its cap) */
  uvip_vip_t *ring_next;

  uvip_conn_t *conns; /* open connections, for close_conns and draining */

  /* Draining. */
  uvip_vip_drain_cb drain_cb;
  /* Every removed VIP has one. Closing it is the one way a drain ends: its
   * close callback (a deferred point in the loop) runs drain_cb and frees
   * the VIP. */
  uv_timer_t *drain_timer;
  bool drain_timed_out;
  bool drain_finishing; /* drain_timer is closing */
};

struct uvip_server_s {
  uv_loop_t *loop;
  void *data;
  uvip_server_options_t opts;
  uvip_connection_cb connection_cb;
  uvip_server_close_cb close_cb;

  uvip_vip_t **vips;
  size_t nvips, cap_vips;

  /* Scheduler (scheduler.c). */
  int epfd;            /* edge-triggered epoll set of all listeners */
  uv_poll_t epoll_watch; /* watches epfd on the loop */
  uv_check_t check;    /* runs a scheduling pass after each poll phase */
  uv_idle_t idle;      /* keeps the loop from blocking while work remains */
  uv_timer_t backoff;  /* resource-exhaustion back-off */
  /* Never signalled: referenced while the server listens, so that the loop
   * stays alive when the poll handle is stopped at a cap (as a listening
   * uv_tcp_t keeps it alive). */
  uv_async_t keepalive;
  /* uvip_server_drain()'s deadline: closes the connections left. */
  uv_timer_t drain_deadline;
  unsigned int backoff_cur_ms;
  bool backing_off;
  bool watching;
  uvip_vip_t *ring_head, *ring_tail;

  uint64_t active; /* open connections over all VIPs */

  /* UVIP_PROXY_PROTOCOL (proxy-accept.c): sockets waiting for their
   * header, registered in an epoll set of their own (level-triggered, one
   * uv_poll_t for them all) and kept in accept order, which is also
   * deadline order, under one timer. */
  int proxy_epfd;
  uv_poll_t proxy_watch;
  uv_timer_t proxy_timer;
  uvip__pending_t *pend_head, *pend_tail;

  /* Hand-off of accepted descriptors to workers (workers.c). When
   * handoff_dispatch is set, the scheduler asks handoff_has_room() before
   * each accept (no room counts like a full global cap) and passes each
   * accepted descriptor to handoff_dispatch() instead of making a
   * connection on this loop. The slot stays taken until
   * uvip__server_release() is called for it on this loop. Connections made
   * on another loop (uvip__conn_new() with a worker's loop) close through
   * remote_closed() on that loop. */
  bool (*handoff_has_room)(uvip_server_t *server);
  /* Returns 0 when the descriptor was taken (it is then the worker's), or a
   * negative error (the scheduler closes the descriptor). */
  int (*handoff_dispatch)(uvip_server_t *server, uvip_vip_t *vip, int fd);
  /* A connection moved from the old generation (moved.c) goes to a
   * worker as handoff_dispatch() would send it, with its moved callback
   * and blob (copied), which run on the worker. */
  int (*handoff_moved)(uvip_server_t *server, uvip_vip_t *vip, int fd,
                       uvip_moved_cb cb, const void *blob, size_t len);
  /* A receiver of moved connections waiting for a worker with room:
   * uvip__sched_kick() and uvip__sched_slot_freed() wake it. */
  struct uvip_moved_s *moved_waiting;
  void (*remote_closed)(uvip_conn_t *conn);
  /* Set while the server has workers (any balance mode): their connections
   * are on no list of this server, so uvip_server_close_conns() asks the
   * workers to close them. Returns 0 or the first error. */
  int (*remote_close_conns)(uvip_server_t *server);
  /* Set while REUSEPORT workers listen on sockets of their own:
   * uvip_server_stop() asks them to stop accepting too. */
  void (*remote_stop)(uvip_server_t *server);
  void *handoff_ctx;
  /* Objects built on this server that must close before it (workers, live
   * pool): uvip_server_close() is UV_EBUSY while any is attached. */
  int attached;
  /* Closing: `closing` is set by uvip_server_close(); once nothing holds
   * the server (no connection, no draining VIP, nothing attached)
   * uvip__server_try_finish() sets `finishing` and closes the handles; the
   * close callback of the last one (libuv's closing queue, never a call
   * chain that still uses the server) runs the server's close callback and
   * frees it: uvip__server_finish(). */
  bool listening, stopped, closing, finishing;
  /* uvip_server_hold(): not accepting, listening sockets kept open. */
  bool held;
  int handles_open;     /* scheduler handles closing */
  size_t draining_vips; /* removed VIPs whose drain has not finished */
};

/* server.c */
/* Starts the server's final close if it is closing and nothing holds it any
 * more. Never runs a callback nor frees anything itself: safe anywhere. */
void uvip__server_try_finish(uvip_server_t *server);
/* From the last scheduler handle's close callback: the close callback, then
 * free. */
void uvip__server_finish(uvip_server_t *server);
/* An object that uses the server (workers, live pool) registers at its
 * creation and unregisters when its own close has finished, before its close
 * callback runs (so that the callback may close the server). */
void uvip__server_attach(uvip_server_t *server);
/* uvip_server_add_vip() with arguments checked; a prefix VIP's state
 * (server-prefix.c) is set before it binds. pfx stays the caller's on
 * error. */
int uvip__server_add_vip(uvip_server_t *server, const struct sockaddr *sa,
                         struct uvip__pfx *pfx, uvip_vip_t **out);
/* The VIP of sa that is not draining, or NULL. */
uvip_vip_t *uvip__server_find_vip(uvip_server_t *server,
                                  const struct sockaddr *sa);
void uvip__server_detach(uvip_server_t *server);
/* Gives back the slot of one connection of vip (accounting, caps, drains,
 * close). Only on the server's loop thread. */
void uvip__server_release(uvip_server_t *server, uvip_vip_t *vip);
void uvip__vip_maybe_finish_drain(uvip_vip_t *vip);

/* adopt.c */
/* LISTEN_FDS sockets adopted at uvip_server_listen() (UVIP_SOCKET_ACTIVATION). */
int uvip__adopt_activation(uvip_server_t *server, char *errbuf, size_t errlen);

/* scheduler.c */
int uvip__sched_init(uvip_server_t *server);
int uvip__sched_add(uvip_server_t *server, uvip_vip_t *vip);
void uvip__sched_remove(uvip_server_t *server, uvip_vip_t *vip);
/* A slot was given back (a connection closed): resume accepting. */
void uvip__sched_slot_freed(uvip_server_t *server, uvip_vip_t *vip);
/* Re-evaluates whether to accept (e.g. a worker has room again). */
void uvip__sched_kick(uvip_server_t *server);
/* Puts every listening VIP in the ready ring and kicks (accepting again
 * after uvip_server_hold()). */
void uvip__sched_rearm(uvip_server_t *server);
/* References the keep-alive handle while the server listens. */
void uvip__sched_keepalive(uvip_server_t *server, bool on);
/* Accepts everything queued on the listeners now, within the caps (a
 * REUSEPORT worker about to close its own listeners: what is queued on a
 * socket that closes is reset unless net.ipv4.tcp_migrate_req=1). Not with
 * UVIP_PROXY_PROTOCOL (the stop drops sockets still waiting for their
 * header anyway). */
void uvip__sched_accept_queued(uvip_server_t *server);
/* Closes the scheduler's handles; uvip__server_finish() follows from the
 * last close callback. A server that never listened gets one idle handle
 * for that, so that the callback still comes from the loop. */
void uvip__sched_close(uvip_server_t *server);

/* moved.c: a worker may have room again (moved_waiting). */
void uvip__moved_room(uvip_server_t *server);

/* proxy-accept.c */
/* Creates the epoll set and handles (at listen, with the option). */
int uvip__proxy_init(uvip_server_t *server);
/* Takes an accepted socket (already counted in accepted and active): reads
 * its header, then makes the connection and calls connection_cb, or closes
 * it. May call connection_cb before it returns. */
void uvip__proxy_accepted(uvip_server_t *server, uvip_vip_t *vip, int fd);
/* Closes the sockets of vip (all VIPs for NULL) still waiting. */
void uvip__proxy_drop(uvip_server_t *server, uvip_vip_t *vip);
/* Closes the handles (from uvip__sched_close()); returns how many. */
int uvip__proxy_close(uvip_server_t *server, uv_close_cb cb);

/* server-prefix.c */
/* Checks an accepted socket of a prefix VIP: returns true and, when group
 * is not NULL, takes a slot of its group in *group; or closes fd, counts
 * why and returns false. group NULL: filtered only (a worker's). */
bool uvip__pfx_admit(uvip_vip_t *vip, int fd, struct uvip__group **group);
/* Binds and listens a prefix VIP's socket into vip->fd, as its mode
 * wants (for vip_bind()). */
int uvip__pfx_listen(uvip_vip_t *vip);
/* Gives a group slot back (the connection closed). */
void uvip__pfx_release(uvip_vip_t *vip, struct uvip__group *group);
/* Frees a VIP's prefix state (NULL is fine). */
void uvip__pfx_free(struct uvip__pfx *pfx);

/* conn.c */
/* Wraps an accepted descriptor in a connection on `loop` (the server's loop
 * or a worker's). On the server's loop the connection joins vip->conns;
 * elsewhere it is linked into nothing (the worker keeps its own list with
 * uvip__conn_list_add/del). On error the descriptor is closed. */
int uvip__conn_new(uv_loop_t *loop, uvip_vip_t *vip, int fd, uvip_conn_t **out);
void uvip__conn_list_add(uvip_conn_t **head, uvip_conn_t *c);
void uvip__conn_list_del(uvip_conn_t **head, uvip_conn_t *c);
/* Closes every connection of a list that is not closing yet, with cb. */
void uvip__conn_close_all(uvip_conn_t *list, uvip_conn_close_cb cb);
/* The close callback given to uvip_conn_close(), for remote_closed(). */
uvip_conn_close_cb uvip__conn_user_close_cb(const uvip_conn_t *c);

#endif /* UVIP_INTERNAL_H */
