/* uvip: census API. Included by <uvip.h>; do not include directly.
 *
 * A census counts the TCP sockets of the network namespace the process runs
 * in, per local address (VIP), by state, inbound vs outbound, and reports
 * listen queues, ephemeral port use per (local, remote:port) tuple, the
 * kernel limits that bound all of it, and a capacity report with advice.
 * It uses sock_diag netlink (one dump per family, aggregated while
 * streaming, split into parallel shards when a second CPU is idle);
 * /proc/net/tcp{,6} is read only when netlink is unavailable.
 *
 * A census does not need a server: uvip-stat runs it standalone. Memory is
 * allocated once when the census is created and is bounded by the table
 * caps in uvip_census_options_t, whatever the number of sockets; sockets
 * that find a table full are still counted in the totals and in the
 * *_overflow counters.
 *
 * SPDX-License-Identifier: MIT */
#ifndef UVIP_CENSUS_H
#define UVIP_CENSUS_H

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* TCP states                                                               */
/* ------------------------------------------------------------------------ */

/* The TCP states a census counts, in kernel order. Request sockets
 * (half-open connections waiting in a SYN queue) count as SYN_RECV, as ss
 * shows them. */
typedef enum {
  UVIP_TCP_ESTABLISHED = 0,
  UVIP_TCP_SYN_SENT,
  UVIP_TCP_SYN_RECV,
  UVIP_TCP_FIN_WAIT1,
  UVIP_TCP_FIN_WAIT2,
  UVIP_TCP_TIME_WAIT,
  UVIP_TCP_CLOSE,
  UVIP_TCP_CLOSE_WAIT,
  UVIP_TCP_LAST_ACK,
  UVIP_TCP_LISTEN,
  UVIP_TCP_CLOSING,
  UVIP_TCP_STATE_COUNT
} uvip_tcp_state_t;

/* The state's name as used in JSON keys and Prometheus labels
 * ("established", "syn_sent", ..., "closing"), or NULL when out of range. */
const char *uvip_tcp_state_name(int state);

/* ------------------------------------------------------------------------ */
/* Kernel limits and counters                                               */
/* ------------------------------------------------------------------------ */

/* TcpExt counters from /proc/net/netstat (absolute, or deltas). */
typedef struct uvip_netstat_s {
  uint64_t listen_overflows;  /* accept queue full: handshake dropped */
  uint64_t listen_drops;      /* any SYN or ACK dropped on a listener */
  uint64_t tw_overflow;       /* TCPTimeWaitOverflow: tw_buckets reached */
  uint64_t tw_recycled;       /* TWRecycled: TIME_WAIT reused (tw_reuse) */
  uint64_t tw;                /* TW: sockets put in TIME_WAIT (counted
                                 when the timer is armed, Linux >= 4.1) */
  uint64_t tw_killed;         /* TWKilled: the same, with a timer of 4 s
                                 or less */
  uint64_t syncookies_sent;   /* SYN queue full: cookies used */
} uvip_netstat_t;

/* What the kernel lets this process and namespace do. A value that could
 * not be read is -1 (the `missing` bitmask has UVIP_LIMIT_* bits for the
 * sysctls that were absent). */
typedef struct uvip_limits_s {
  int port_lo, port_hi;   /* net.ipv4.ip_local_port_range */
  int reserved_in_range;  /* ip_local_reserved_ports inside that range */
  int usable_ports;       /* port_hi - port_lo + 1 - reserved_in_range */
  int somaxconn;          /* net.core.somaxconn */
  int tcp_max_syn_backlog;
  int64_t tcp_max_tw_buckets;
  int tcp_tw_reuse;       /* 0 off, 1 on, 2 loopback only */
  int tcp_fin_timeout;    /* seconds in FIN_WAIT2 for orphans */
  int64_t tcp_mem[3];     /* pages: min, pressure, max */
  int64_t page_size;
  int64_t file_max;       /* fs.file-max */
  int64_t file_nr;        /* fs.file-nr: descriptors allocated system-wide */
  int64_t nr_open;        /* fs.nr_open */
  int64_t nofile_soft, nofile_hard; /* RLIMIT_NOFILE of this process */
  int64_t open_fds;       /* descriptors this process has open */
  int64_t mem_total;      /* bytes of RAM (MemTotal) */
  /* /proc/net/sockstat: TCP line, this namespace. */
  int64_t sock_inuse, sock_orphan, sock_tw, sock_alloc, sock_mem_pages;
  uvip_netstat_t netstat; /* absolute counter values */
  /* Feature probes: 1 usable, 0 not. */
  int has_bind_address_no_port; /* IP_BIND_ADDRESS_NO_PORT (4.2) */
  int has_local_port_range;     /* IP_LOCAL_PORT_RANGE socket option (6.3) */
  int has_tcp_migrate_req;      /* net.ipv4.tcp_migrate_req (5.14) */
  unsigned int missing;         /* UVIP_LIMIT_* bits of unreadable values */
  /* net.ipv4.tcp_migrate_req: 1 moves connections queued on a closing
   * SO_REUSEPORT listener to another one of its group instead of resetting
   * them (a restart or a worker ending with UVIP_REUSEPORT). -1 unknown. */
  int tcp_migrate_req;
} uvip_limits_t;

enum {
  UVIP_LIMIT_PORT_RANGE = 1u << 0,
  UVIP_LIMIT_RESERVED_PORTS = 1u << 1,
  UVIP_LIMIT_SOMAXCONN = 1u << 2,
  UVIP_LIMIT_SYN_BACKLOG = 1u << 3,
  UVIP_LIMIT_TW_BUCKETS = 1u << 4,
  UVIP_LIMIT_TW_REUSE = 1u << 5,
  UVIP_LIMIT_FIN_TIMEOUT = 1u << 6,
  UVIP_LIMIT_TCP_MEM = 1u << 7,
  UVIP_LIMIT_FILE_MAX = 1u << 8,
  UVIP_LIMIT_NR_OPEN = 1u << 9,
  UVIP_LIMIT_SOCKSTAT = 1u << 10,
  UVIP_LIMIT_NETSTAT = 1u << 11,
  UVIP_LIMIT_MIGRATE_REQ = 1u << 12
};

/* Reads every limit, counter and feature probe of the calling process and
 * its network namespace. Blocking (a few small /proc reads). Values that
 * cannot be read are -1 and flagged in `missing`; that is not an error.
 * Returns 0 or UV_EINVAL. */
int uvip_limits_read(uvip_limits_t *out);

/* ------------------------------------------------------------------------ */
/* Census                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct uvip_census_s uvip_census_t;

/* Census flags (uvip_census_options_t.flags). */
enum {
  UVIP_CENSUS_NO_IPV4 = 1u << 0, /* skip the AF_INET dump */
  UVIP_CENSUS_NO_IPV6 = 1u << 1, /* skip the AF_INET6 dump */
  /* Read /proc/net/tcp and tcp6 instead of netlink (the fallback used
   * anyway when sock_diag is refused). Listen backlogs are then unknown
   * (reported as -1). */
  UVIP_CENSUS_PROCFS = 1u << 2,
  UVIP_CENSUS_NO_LIMITS = 1u << 3 /* do not read uvip_limits_t per sample */
};

typedef struct uvip_census_options_s {
  unsigned int flags;
  /* Table caps (memory is allocated for them once, at creation). */
  size_t max_vips;      /* local-address rows (default 4096, max 65536) */
  size_t max_listeners; /* listening sockets (default 4096, max 65536) */
  size_t max_tuples;    /* outbound (local, remote:port) tuples
                           (default 16384, max 1048576) */
  /* Netlink receive buffer in bytes (default 64 KiB; at least 32 KiB). The
   * kernel fills up to 32 KiB per read, so more rarely helps. */
  size_t rcvbuf;
  /* Bitmask of (1u << UVIP_TCP_x): states to count; 0 = all. The kernel
   * skips the other states. Listeners are always fetched (they tell
   * inbound from outbound) but only counted when LISTEN is in the mask. */
  unsigned int states;
  /* Parallel dumps (netlink only): 0 (the default) = automatic: each
   * sample uses 2 when the process may run on 2 or more CPUs and one of
   * them is idle when the sample starts (fewer runnable tasks in
   * /proc/loadavg than such CPUs), else 1 (2 shards cost about 1.3x the
   * CPU of one dump and are slower than it when the other CPU is busy);
   * 1 = one dump per family on the calling thread, at most
   * UVIP_CENSUS_SHARDS_MAX. With N > 1, each family's listeners
   * are dumped first, then N netlink sockets dump the other sockets at
   * once, shard 0 on the calling thread and the others on threads of their
   * own, each keeping the sockets a kernel bytecode filter gives it (a
   * partition by source and destination port: shard (b(sport) + b(dport))
   * mod N, b() the port's Nth of ip_local_port_range; for N = 2, shard 0
   * has the sockets whose ports are both below or both at/above the
   * middle of the range) into its own tables (the table caps apply per
   * shard; memory is about N times the tables'), merged at the end.
   * Results equal one dump's unless a table overflows (which rows are kept
   * may then differ; the totals and overflow counters stay exact). Each
   * shard's kernel dump still walks the whole established hash: the gain
   * is the rest of the kernel's work (message building) and the
   * aggregation, split over CPUs; the CPU time grows a little. */
  unsigned int shards;
} uvip_census_options_t;

/* Most parallel dumps a census makes (uvip_census_options_t.shards). */
#define UVIP_CENSUS_SHARDS_MAX 16

/* Fills the options with their defaults. Returns 0 or UV_EINVAL. */
int uvip_census_options_init(uvip_census_options_t *opts);

/* Creates a census. vips, when not NULL and not empty, restricts it to those local
 * addresses (ports in the list are ignored; duplicates collapse): only
 * their sockets are counted, every one of them gets a row even when it has
 * no sockets, in list order, and sockets on wildcard listeners serving them
 * are classified correctly. With vips NULL or empty every local address in the
 * namespace gets a row (up to max_vips), sorted by address. The list is
 * copied. opts may be NULL. Errors: UV_EINVAL, UV_E2BIG (more VIPs than
 * max_vips), UV_ENOMEM. Nothing is read until uvip_census_sample(). */
int uvip_census_new(const uvip_addrs_t *vips,
                    const uvip_census_options_t *opts, uvip_census_t **out);

/* Convenience: a census restricted to the current VIPs of server. Uses only
 * the server's public accessors; the census stays independent of the
 * server afterwards (VIPs added later are not followed). */
int uvip_census_new_for_server(const uvip_server_t *server,
                               const uvip_census_options_t *opts,
                               uvip_census_t **out);

/* Frees a census and everything its accessors returned. NULL is ignored. */
void uvip_census_free(uvip_census_t *census);

/* Takes a census now: one sock_diag dump per family plus, unless
 * UVIP_CENSUS_NO_LIMITS, uvip_limits_read(). Blocking (about a second per
 * million sockets): from a loop thread use uvip_tracker_t, which runs it
 * on the libuv threadpool. Replaces the previous results; allocates nothing
 * that depends on the number of sockets (only the short-lived netlink
 * sockets and, with shards > 1, shards - 1 short-lived threads, which
 * inherit the calling thread's network namespace). One thread at a time
 * per census object. Errors: UV_EINVAL,
 * a negative errno from netlink or /proc when neither source can be read
 * (e.g. UV_EACCES); the previous results are then cleared. */
int uvip_census_sample(uvip_census_t *census);

/* Socket counts by state, split inbound/outbound. A socket is inbound
 * when its local address and port are those of a listening socket in the
 * namespace at the time of the census (or its wildcard); anything else is
 * outbound. Listening sockets themselves count as inbound LISTEN. */
typedef struct uvip_census_counts_s {
  uint64_t in[UVIP_TCP_STATE_COUNT];
  uint64_t out[UVIP_TCP_STATE_COUNT];
} uvip_census_counts_t;

/* One row per local address. IPv4-mapped IPv6 sockets count under their
 * IPv4 address. Port is 0. */
typedef struct uvip_census_vip_s {
  struct sockaddr_storage addr;
  uvip_census_counts_t counts;
} uvip_census_vip_t;

/* One listening socket: what ss shows as Recv-Q and Send-Q. */
typedef struct uvip_census_listener_s {
  struct sockaddr_storage addr; /* address and port */
  /* Over every listening socket on addr (more than one: a SO_REUSEPORT
   * group, e.g. workers with UVIP_BALANCE_REUSEPORT): */
  uint64_t queue;   /* connections waiting in the accept queues */
  int64_t backlog;  /* the accept queues' limits, -1 when unknown (procfs) */
  uint64_t syn_recv; /* request sockets (SYN queue) on this listener */
  uint32_t sockets; /* listening sockets on addr */
} uvip_census_listener_t;

/* Outbound sockets of one (local address, remote address:port) tuple. */
typedef struct uvip_census_tuple_s {
  struct sockaddr_storage local;  /* port 0 */
  struct sockaddr_storage remote; /* with port */
  uint64_t in_use;    /* outbound sockets of the tuple, TIME_WAIT included:
                         each holds one local port for this tuple */
  uint64_t time_wait; /* of those, in TIME_WAIT */
  int usable;         /* usable ephemeral ports (the namespace's range
                         minus reserved ports), -1 when unknown */
  double utilisation; /* in_use / usable (0 when usable is unknown) */
} uvip_census_tuple_t;

/* How a census went. */
typedef struct uvip_census_info_s {
  int source;              /* UVIP_CENSUS_SRC_NETLINK or _PROCFS */
  int status;              /* the last uvip_census_sample() result */
  uint64_t sockets;        /* sockets counted (after the VIP filter) */
  uint64_t seen;           /* sockets received from the kernel */
  uint64_t vips_overflow;  /* sockets that found no VIP row (table full) */
  uint64_t listeners_overflow; /* listeners not recorded (table full) */
  uint64_t tuples_overflow;    /* outbound sockets with no tuple row */
  uint64_t reads;          /* recv() calls (or /proc reads) */
  uint64_t bytes;          /* bytes received */
  uint64_t duration_ns;    /* wall time of the sample */
  uint64_t sampled_at_ms;  /* uv_hrtime() / 1e6 when it finished */
  int limits_status;       /* result of the limits read (0 when skipped) */
  /* TcpExt counter increases since this census object's previous sample
   * (all zero after the first one). */
  uvip_netstat_t netstat_delta;
  int has_netstat_delta;   /* 1 when netstat_delta covers an interval */
  int shards;              /* parallel dumps made (1 with procfs; fewer
                              than asked when netlink sockets ran out) */
} uvip_census_info_t;

enum { UVIP_CENSUS_SRC_NONE = 0, UVIP_CENSUS_SRC_NETLINK, UVIP_CENSUS_SRC_PROCFS };

/* Results of the last sample. Pointers stay valid until the next
 * uvip_census_sample() or uvip_census_free() of that census; NULL (or 0)
 * for a NULL census or an index out of range. */
const uvip_census_info_t *uvip_census_info(const uvip_census_t *census);
const uvip_limits_t *uvip_census_limits(const uvip_census_t *census);
/* Sums over every counted socket (all VIP rows plus overflowed ones). */
const uvip_census_counts_t *uvip_census_totals(const uvip_census_t *census);
size_t uvip_census_vip_count(const uvip_census_t *census);
const uvip_census_vip_t *uvip_census_vip(const uvip_census_t *census,
                                         size_t i);
/* Listeners, sorted by address then port. */
size_t uvip_census_listener_count(const uvip_census_t *census);
const uvip_census_listener_t *uvip_census_listener(
    const uvip_census_t *census, size_t i);
/* Tuples, worst utilisation first (ties by address). */
size_t uvip_census_tuple_count(const uvip_census_t *census);
const uvip_census_tuple_t *uvip_census_tuple(const uvip_census_t *census,
                                             size_t i);

/* ------------------------------------------------------------------------ */
/* Capacity report                                                          */
/* ------------------------------------------------------------------------ */

/* What the pool looks like; zeros are filled from the census. */
typedef struct uvip_capacity_input_s {
  uint64_t vips;         /* inbound VIPs (0 = addresses with a listener) */
  uint64_t listen_ports; /* listening ports per VIP (0 = 1) */
  uint64_t sources;      /* outbound source VIPs (0 = local addresses seen
                            in outbound tuples, at least 1) */
  uint64_t processes;    /* processes sharing the load, each with its own
                            RLIMIT_NOFILE (0 = 1) */
  uint64_t target_conns; /* connections wanted (0 = none): advice says what
                            to change to reach it */
  uint64_t mem_per_conn; /* kernel bytes per connection assumed for the
                            memory bound (0 = 8192: socket, file, epoll
                            and a little buffer) */
} uvip_capacity_input_t;

/* The limits that can bind. */
typedef enum {
  UVIP_BOUND_NONE = 0,
  UVIP_BOUND_PORTS,       /* ephemeral ports x addresses */
  UVIP_BOUND_FDS,         /* RLIMIT_NOFILE / nr_open / file-max */
  UVIP_BOUND_TIME_WAIT,   /* tcp_max_tw_buckets */
  UVIP_BOUND_MEMORY       /* RAM and tcp_mem */
} uvip_bound_t;

#define UVIP_ADVICE_MAX 12
#define UVIP_ADVICE_LEN 200

typedef struct uvip_capacity_s {
  int usable_ports;           /* per tuple */
  uint64_t per_client_addr;   /* inbound: connections one client address
                                 can hold over all VIPs and ports */
  uint64_t per_destination;   /* outbound: connections to one remote
                                 address:port over all source VIPs */
  uint64_t by_ports;          /* outbound: per_destination x destinations
                                 in use; UINT64_MAX without outbound
                                 traffic (clients bring their own ports) */
  uint64_t by_fds;            /* descriptors: min(nofile, nr_open) x
                                 processes, and file-max; one per
                                 connection */
  uint64_t by_memory;         /* RAM / mem_per_conn */
  uint64_t by_time_wait;      /* tcp_max_tw_buckets: TIME_WAITs held at
                                 once; beyond it the kernel skips TIME_WAIT
                                 and counts TCPTimeWaitOverflow */
  uint64_t overall;           /* min of ports, fds and memory */
  uvip_bound_t binding;       /* which of ports, fds, memory is smallest;
                                 TIME_WAIT when 90% of the buckets are
                                 used or they overflowed since the last
                                 sample */
  double rate_per_tuple;      /* sustainable new connections per second per
                                 tuple with TIME_WAIT held 60 s */
  uint64_t conns_now;         /* established + handshaking sockets */
  uint64_t headroom;          /* overall - conns_now (0 when past it) */
  double worst_tuple_use;     /* highest tuple utilisation, 0..1 */
  double time_wait_use;       /* TIME_WAIT sockets / tcp_max_tw_buckets */
  double fd_use;              /* this process: open fds / nofile soft */
  size_t advice_count;
  char advice[UVIP_ADVICE_MAX][UVIP_ADVICE_LEN]; /* "raise X to N: why" */
} uvip_capacity_t;

/* Fills the input with zeros (every field derived from the census). */
int uvip_capacity_input_init(uvip_capacity_input_t *in);

/* Computes the report from a sampled census (which must have read its
 * limits) and the pool description (in may be NULL). Pure computation.
 * Errors: UV_EINVAL (NULL census or out; census without limits). */
int uvip_capacity_compute(const uvip_census_t *census,
                          const uvip_capacity_input_t *in,
                          uvip_capacity_t *out);

/* "ports", "fds", "time_wait", "memory" or "none"; NULL out of range. */
const char *uvip_bound_name(int bound);

/* ------------------------------------------------------------------------ */
/* Port-exhaustion forecast                                                 */
/* ------------------------------------------------------------------------ */

/* How long a TIME_WAIT socket holds its port on Linux (TCP_TIMEWAIT_LEN,
 * fixed; tcp_fin_timeout is the FIN_WAIT2 time, not this). */
#define UVIP_TIME_WAIT_SECONDS 60.0

/* What a pair's port use is heading for (docs/census.md, "Forecast"). */
typedef enum {
  UVIP_FORECAST_UNKNOWN = 0, /* fewer than two samples, or range unknown */
  UVIP_FORECAST_STEADY,      /* levels off below the range at this rate */
  UVIP_FORECAST_EXHAUSTING,  /* runs out in eta seconds at this rate */
  UVIP_FORECAST_EXHAUSTED    /* no usable port left now */
} uvip_forecast_state_t;

/* "unknown", "steady", "exhausting", "exhausted"; NULL out of range. */
const char *uvip_forecast_state_name(int state);

/* One observation of a (source, destination) pair. */
typedef struct uvip_forecast_sample_s {
  double t;           /* seconds on a monotonic clock */
  uint64_t in_use;    /* local ports the pair holds, TIME_WAIT included */
  uint64_t time_wait; /* of those, in TIME_WAIT (at most in_use) */
  int64_t usable;     /* ports the pair may use; <= 0 when unknown */
  /* Connections of the pair that entered TIME_WAIT (or an orphaned
   * FIN_WAIT2, which becomes one) since the previous sample; < 0 when
   * unknown (the model then bounds the inflow from the TIME_WAIT count,
   * see the docs). The tracker shares the namespace's TcpExt TW and
   * TWKilled increases out over the pairs. */
  double tw_started;
  /* 1 when connect() may reuse a TIME_WAIT port older than a second
   * (net.ipv4.tcp_tw_reuse 1, or 2 on a loopback pair): TIME_WAIT then
   * blocks a port for about a second instead of 60. */
  int tw_reuse;
} uvip_forecast_sample_t;

/* A pair's forecast and the smoothed state behind it. The results are
 * valid after uvip_forecast_update(); the rest is the model's. */
typedef struct uvip_forecast_s {
  uvip_forecast_state_t state;
  double rate;     /* ports taken per second: TIME_WAIT inflow plus the
                      growth of the other states (smoothed) */
  double growth;   /* blocked ports: change per second (smoothed) */
  double steady;   /* ports blocked once TIME_WAIT levels off at rate:
                      other states + rate x hold */
  double hold;     /* seconds a closed connection blocks its port (60,
                      or 1 with tw_reuse) */
  double blocked;  /* ports unavailable now (in_use, or with tw_reuse the
                      other states plus TIME_WAITs under a second old) */
  double eta;      /* EXHAUSTING: seconds until no port is left at this
                      growth; EXHAUSTED: 0; otherwise -1 */
  int64_t usable;  /* from the last sample */
  /* Model state. */
  double tau;      /* smoothing time constant, seconds */
  double t;        /* time of the last sample */
  uint64_t samples;
  uint64_t in_use, time_wait;
  double g_tw, g_other, started_rate;
  int have_started;
} uvip_forecast_t;

/* Starts a forecast with smoothing time constant tau seconds (> 0): each
 * sample dt seconds after the previous one moves the averaged rates by
 * dt / (tau + dt) of the way to the rates it measured (the first interval
 * sets them). Returns 0 or UV_EINVAL. */
int uvip_forecast_init(uvip_forecast_t *f, double tau);

/* Feeds one sample and recomputes the forecast. Pure computation: tests
 * and applications with their own counters can drive it. Errors: UV_EINVAL
 * (NULL argument, time not after the previous sample's, time_wait >
 * in_use, NaN); the forecast is then unchanged. */
int uvip_forecast_update(uvip_forecast_t *f, const uvip_forecast_sample_t *s);

/* ------------------------------------------------------------------------ */
/* Rendering                                                                */
/* ------------------------------------------------------------------------ */

enum {
  /* One JSON object: {"totals": {state: n, ...}, "vips": [{"address": ..,
   * state: n, ..., "inbound": {...}, "outbound": {...}}], "listeners",
   * "tuples", "limits", "info", and "capacity" when given}. */
  UVIP_RENDER_JSON = 1,
  /* Prometheus text exposition format 0.0.4, metrics prefixed uvip_,
   * labels vip, state, direction, remote. */
  UVIP_RENDER_PROMETHEUS = 2
};

/* Renders a sampled census (and cap, when not NULL) into buf. *len is the
 * buffer size on input; on success the length written (a NUL follows) and
 * 0 is returned; when buf is too small UV_ENOBUFS is returned and *len is
 * set to the size needed (NUL included), and buf holds no usable output.
 * max_tuples limits the tuples listed (0 = all).
 *
 * Size query: with buf NULL and *len 0, nothing is written, UV_ENOBUFS is
 * returned and *len is the size needed; allocate that and call again with
 * the same census, cap, format and max_tuples (the size holds until the
 * census is sampled again):
 *
 *   size_t len = 0;
 *   char *buf = NULL;
 *   int r = uvip_census_render(c, NULL, UVIP_RENDER_JSON, 0, NULL, &len);
 *   if (r == UV_ENOBUFS && (buf = malloc(len)) != NULL)
 *     r = uvip_census_render(c, NULL, UVIP_RENDER_JSON, 0, buf, &len);
 *
 * Errors: UV_EINVAL (census or len NULL, buf NULL with *len not 0, unknown
 * format), UV_ENOBUFS. */
int uvip_census_render(const uvip_census_t *census,
                       const uvip_capacity_t *cap, int format,
                       size_t max_tuples, char *buf, size_t *len);

/* ------------------------------------------------------------------------ */
/* Tracker: a periodic census on a loop                                     */
/* ------------------------------------------------------------------------ */

typedef struct uvip_tracker_s uvip_tracker_t;

/* Threshold events. */
typedef enum {
  /* A tuple's port utilisation reached ports_use (detail: the tuple). */
  UVIP_EVENT_PORTS = 1,
  /* TIME_WAIT sockets reached time_wait_use x tcp_max_tw_buckets. */
  UVIP_EVENT_TIME_WAIT,
  /* A listener's accept queue reached listen_queue_use x backlog
   * (detail: the listener). */
  UVIP_EVENT_LISTEN_QUEUE,
  /* ListenOverflows, ListenDrops or TCPTimeWaitOverflow rose since the
   * previous sample (value: the increase of ListenDrops, which includes
   * ListenOverflows, plus that of TCPTimeWaitOverflow). Ends on the first
   * sample where none rose. */
  UVIP_EVENT_OVERFLOW,
  /* A pair's forecast says its ports run out within exhaustion_seconds
   * (value: the seconds left, 0 when exhausted; detail: the tuple and its
   * forecast). Ends when the forecast is above exhaustion_seconds / rearm
   * (value: the seconds left), or levels off, is unknown or the pair is
   * gone (value -1). */
  UVIP_EVENT_EXHAUSTION
} uvip_event_kind_t;

/* The kind's name, for logs and metrics labels: "ports", "time_wait",
 * "listen_queue", "overflow", "exhaustion"; NULL when kind is none of uvip_event_kind_t
 * (0 included). */
const char *uvip_event_kind_name(int kind);

typedef struct uvip_tracker_event_s {
  uvip_event_kind_t kind;
  /* 1 when the threshold was crossed upwards, 0 when the condition ended:
   * below rearm x the threshold, the entry is gone, or no counter rose. */
  int raised;
  double value;      /* utilisation (0..1) or, for OVERFLOW, the increase */
  double threshold;
  const uvip_census_tuple_t *tuple;       /* PORTS, else NULL */
  const uvip_census_listener_t *listener; /* LISTEN_QUEUE, else NULL */
  const uvip_forecast_t *forecast;        /* EXHAUSTION, else NULL */
} uvip_tracker_event_t;

typedef struct uvip_tracker_options_s {
  uint64_t interval_ms;  /* between samples (default 5000, at least 10) */
  /* Thresholds as fractions in (0, 1]; 0 turns the check off. */
  double ports_use;        /* default 0.8 */
  double time_wait_use;    /* default 0.8 */
  double listen_queue_use; /* default 0.8 */
  int overflow;            /* 1 = report overflow counters rising (default) */
  /* A raised condition ends when the value falls below rearm x threshold
   * (default 0.9, in (0, 1]); hysteresis so that a value sitting on the
   * threshold does not fire on every sample. */
  double rearm;
  /* Port-exhaustion forecast per pair: raise UVIP_EVENT_EXHAUSTION when a
   * pair runs out within this many seconds at its current rate (default
   * 300; 0 turns the event off, the forecast is still kept). */
  double exhaustion_seconds;
  /* Smoothing time constant of the forecast's rates in milliseconds
   * (default 0 = 3 x interval_ms). */
  uint64_t forecast_tau_ms;
  uvip_census_options_t census; /* see uvip_census_options_init() */
} uvip_tracker_options_t;

/* Fills the options with their defaults. Returns 0 or UV_EINVAL. */
int uvip_tracker_options_init(uvip_tracker_options_t *opts);

/* Called on the loop thread after every sample (status 0) or failed sample
 * (status < 0, census then holds no rows). census stays valid until the
 * next sample callback or the close callback returns. */
typedef void (*uvip_tracker_sample_cb)(uvip_tracker_t *tracker,
                                       const uvip_census_t *census,
                                       int status);
/* Called on the loop thread once per crossing, before the sample callback
 * of the sample that saw it. event and what it points to are valid during
 * the call only. */
typedef void (*uvip_tracker_event_cb)(uvip_tracker_t *tracker,
                                      const uvip_tracker_event_t *event);
typedef void (*uvip_tracker_close_cb)(uvip_tracker_t *tracker);

/* Creates a tracker on loop for vips (copied; NULL = every address).
 * opts may be NULL. Errors: UV_EINVAL, UV_E2BIG, UV_ENOMEM. */
int uvip_tracker_new(uv_loop_t *loop, const uvip_addrs_t *vips,
                     const uvip_tracker_options_t *opts,
                     uvip_tracker_t **out);

/* Samples at once, then every interval_ms, each on the libuv threadpool:
 * the loop never waits for a dump. The census is of the network namespace
 * of the threadpool's threads (the process's namespace when the pool
 * started). A tick that comes while a sample is
 * still running is skipped. Either callback may be NULL. UV_EALREADY when
 * started. */
int uvip_tracker_start(uvip_tracker_t *tracker, uvip_tracker_sample_cb
                       sample_cb, uvip_tracker_event_cb event_cb);

/* Stops sampling; a sample in flight completes but reports nothing.
 * Idempotent. */
int uvip_tracker_stop(uvip_tracker_t *tracker);

/* Stops the tracker and, once its timer is closed and no sample runs on
 * the threadpool, calls cb (may be NULL) and frees it with both census
 * buffers. Call it once. */
int uvip_tracker_close(uvip_tracker_t *tracker, uvip_tracker_close_cb cb);

/* Samples completed and ticks skipped because a sample was running. */
int uvip_tracker_counts(const uvip_tracker_t *tracker, uint64_t *samples,
                        uint64_t *skipped);

/* The forecast of tuple i of the census last given to the sample
 * callback (same index as uvip_census_tuple()). Errors: UV_EINVAL (NULL
 * argument), UV_ENOENT (no good sample yet, or i out of range). */
int uvip_tracker_forecast(const uvip_tracker_t *tracker, size_t i,
                          uvip_forecast_t *out);

/* The forecast of VIP row i of that census (same index as
 * uvip_census_vip()) over its pairs: rate, in-use and steady ports summed,
 * the state and eta of the pair that runs out first (UNKNOWN with no
 * pair). Errors as uvip_tracker_forecast(). */
int uvip_tracker_vip_forecast(const uvip_tracker_t *tracker, size_t i,
                              uvip_forecast_t *out);

/* uvip_census_render() of the census last given to the sample callback,
 * with the forecasts: JSON "forecast" objects in each tuple and VIP,
 * Prometheus gauges uvip_pair_ports_rate, uvip_pair_exhaustion_seconds,
 * uvip_pair_ports_steady, uvip_vip_ports_rate and
 * uvip_vip_exhaustion_seconds (seconds: +Inf when steady, absent when
 * unknown). Errors as uvip_census_render(), and UV_ENOENT before the first
 * good sample. */
int uvip_tracker_render(const uvip_tracker_t *tracker,
                        const uvip_capacity_t *cap, int format,
                        size_t max_tuples, char *buf, size_t *len);

void *uvip_tracker_get_data(const uvip_tracker_t *tracker);
void uvip_tracker_set_data(uvip_tracker_t *tracker, void *data);

#ifdef __cplusplus
}
#endif

#endif /* UVIP_CENSUS_H */
