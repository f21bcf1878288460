/* uvip-http internals: the request path (http_session.c), the responses and
 * routes (http_routes.c) and the libuv glue (http_server.c).
 *
 * The request path never touches a socket: bytes go into
 * http_session_feed() and response bytes come out in an http_buf_t, so the
 * fuzzer and the server drive exactly the same code.
 *
 * SPDX-License-Identifier: MIT */
#ifndef UVIP_HTTP_H
#define UVIP_HTTP_H

#include <llhttp.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <uvip.h>

/* ------------------------------------------------------------------------ */
/* Growable byte buffer                                                     */
/* ------------------------------------------------------------------------ */

typedef struct http_buf_s {
  char *base;
  size_t len;
  size_t cap;
} http_buf_t;

int http_buf_grow(http_buf_t *b, size_t extra);
int http_buf_append(http_buf_t *b, const void *p, size_t n);
int http_buf_printf(http_buf_t *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void http_buf_free(http_buf_t *b);

static inline int http_buf_reserve(http_buf_t *b, size_t extra) {
  return b->cap - b->len >= extra ? 0 : http_buf_grow(b, extra);
}

/* A reference-counted byte block: a rendered /metrics or /stats.json body
 * shared by every response that sends it, held by each write in flight
 * until it completes (one loop's; not thread-safe). */
typedef struct http_blob_s {
  unsigned int refs;
  size_t len;
  char data[];
} http_blob_t;

http_blob_t *http_blob_new(const void *p, size_t len); /* refs = 1 */
http_blob_t *http_blob_ref(http_blob_t *b);
void http_blob_unref(http_blob_t *b); /* NULL is fine */

/* ------------------------------------------------------------------------ */
/* Per-loop context: limits, the cached Date header, prebuilt responses     */
/* ------------------------------------------------------------------------ */

typedef struct http_limits_s {
  uint32_t max_header_bytes; /* request line + headers; over it: 431 */
  uint32_t max_requests;     /* per connection, 0 = unlimited */
  /* The parser pauses at the next request boundary once this much output
   * is waiting, so a pipelining client that does not read cannot make the
   * server buffer without bound. */
  size_t max_pending_out;
  /* Request body bytes (Content-Length or the sum of the chunks); over
   * it: 413. 0 = no limit. */
  uint64_t max_body_bytes;
} http_limits_t;

/* Status codes the server answers with; index into the response counters. */
enum {
  HTTP_S200 = 0,
  HTTP_S400,
  HTTP_S404,
  HTTP_S405,
  HTTP_S408,
  HTTP_S413,
  HTTP_S431,
  HTTP_S500,
  HTTP_S503,
  HTTP_NSTATUS
};

typedef struct http_counters_s {
  uint64_t requests;
  uint64_t responses[HTTP_NSTATUS];
  uint64_t conns_total, conns_active;
  uint64_t timeouts_header, timeouts_idle, timeouts_request;
  uint64_t write_stalls; /* responses the socket did not take at once */
  uint64_t output_overflows; /* closed: more than max_output_bytes waiting */
} http_counters_t;

typedef struct http_shared_s http_shared_t;

/* The `/` response in its three connection variants. */
enum { HTTP_V_KEEP11 = 0, HTTP_V_KEEP10, HTTP_V_CLOSE, HTTP_NVARIANT };

typedef struct http_ctx_s {
  http_limits_t limits;
  uvip_server_t *server; /* for /metrics and /stats.json; may be NULL */
  const char *census_prom; /* latest census renderings, may be NULL */
  const char *census_json;
  int stopping;          /* answer with Connection: close from now on */
  int health_down;       /* /health answers 503 (so does stopping) */
  /* Transient, set by the server around http_session_feed(): the
   * connection being served (for /whoami); NULL in the fuzzer. */
  uvip_conn_t *conn;

  time_t date_sec;
  char date[40]; /* "Sun, 06 Nov 1994 08:49:37 GMT" */
  char hello[HTTP_NVARIANT][256];
  uint16_t hello_len[HTTP_NVARIANT], hello_hdr_len[HTTP_NVARIANT];

  /* Transient, valid during one http_session_feed(). */
  http_buf_t *out;
  const char *mark; /* where the current header block starts in this feed */
  const char *feed_end; /* end of this feed's data */

  http_buf_t scratch; /* body rendering for /metrics and /stats.json */

  /* /metrics and /stats.json: the per-VIP part and the census are
   * rendered at most once per stats_ms (and again when the census
   * changes: http_ctx_drop_cache()), and the same bytes go to every
   * client; the small HTTP counters part is rendered per response. */
  uint64_t stats_ms;
  uint64_t now_ms;            /* set by the server before each feed */
  http_blob_t *cache[2];      /* [0] Prometheus, [1] JSON */
  uint64_t cache_at[2];
  /* Transient: a blob the last response ends with, for the server to send
   * after out (it takes the reference). The feed pauses after it. */
  http_blob_t *attach;
  /* 0: every route. HTTP_ROUTES_DATA: no /metrics, /stats.json (they are
   * on an admin listener). HTTP_ROUTES_ADMIN: the admin listener. */
  int routes;
  /* Where /metrics reads counters and VIPs when they are not this
   * context's own (the admin listener's: the data plane's); NULL = own. */
  const struct http_ctx_s *stats_of;

  http_counters_t c; /* this loop's counters */
  /* With workers: /metrics renders from here, and this loop is worker
   * `worker` (its counters go to that slot). NULL without workers. */
  http_shared_t *shared;
  unsigned int worker;
} http_ctx_t;

enum { HTTP_ROUTES_DATA = 1, HTTP_ROUTES_ADMIN = 2 };

int http_ctx_init(http_ctx_t *ctx, const http_limits_t *limits);
/* The census or the VIPs changed: render /metrics and /stats.json anew. */
void http_ctx_drop_cache(http_ctx_t *ctx);
void http_ctx_free(http_ctx_t *ctx);
/* Refreshes the Date header and the prebuilt responses if the second
 * changed. */
void http_ctx_set_time(http_ctx_t *ctx, time_t now);

/* ------------------------------------------------------------------------ */
/* Session: one connection's parser state                                   */
/* ------------------------------------------------------------------------ */

#define HTTP_URL_MAX 32

enum {
  HTTP_SF_IN_MSG = 1u << 0,     /* a request has begun and is not complete */
  HTTP_SF_IN_HEADERS = 1u << 1, /* ... and its headers are not complete */
  HTTP_SF_URL_LONG = 1u << 2,   /* the URL did not fit url[] */
  HTTP_SF_KEEPALIVE = 1u << 3,  /* llhttp_should_keep_alive() at headers */
  HTTP_SF_DONE = 1u << 4,       /* last response written: close after it */
  HTTP_SF_LINGER = 1u << 5,     /* closing on an error: input may follow */
  HTTP_SF_TOO_BIG = 1u << 6,    /* header limit hit inside a callback */
  HTTP_SF_VALUE_CR = 1u << 7,   /* a header value ended at its CR */
  HTTP_SF_BODY_BIG = 1u << 8,   /* body limit hit inside a callback */
  /* Bytes of the next request arrived (empty lines before it count: a
   * stream of bare CRLFs must not look idle). */
  HTTP_SF_STARTED = 1u << 9
};

typedef struct http_session_s {
  llhttp_t parser;
  http_ctx_t *ctx;
  uint32_t hdr_bytes; /* header bytes of the current request before mark */
  uint32_t nreq;      /* requests answered */
  uint64_t body_bytes; /* of the current request */
  uint16_t flags;
  uint8_t url_len;
  char url[HTTP_URL_MAX];
} http_session_t;

/* http_session_feed() results. */
enum {
  HTTP_FEED_OK = 0,   /* all input consumed, connection stays open */
  HTTP_FEED_PAUSED,   /* output is over max_pending_out: flush it, then feed
                         the unconsumed rest */
  HTTP_FEED_CLOSE     /* the last response is in out: flush it and close
                         (lingering when http_session_lingers()) */
};

void http_session_init(http_session_t *s, http_ctx_t *ctx);

/* Parses data and appends the responses to out. *consumed receives how many
 * bytes were parsed. Returns one of HTTP_FEED_*. Any input is safe: errors
 * become 400/431 responses and HTTP_FEED_CLOSE. Out of memory makes it
 * return HTTP_FEED_CLOSE with whatever responses fit. */
int http_session_feed(http_session_t *s, const char *data, size_t len,
                      http_buf_t *out, size_t *consumed);

/* The header timeout ran out: appends a 408 and returns HTTP_FEED_CLOSE if
 * part of a request arrived; otherwise appends nothing and returns
 * HTTP_FEED_CLOSE too (nothing to answer). */
int http_session_timeout(http_session_t *s, http_buf_t *out);

static inline int http_session_in_headers(const http_session_t *s) {
  return (s->flags & HTTP_SF_IN_HEADERS) != 0;
}
static inline int http_session_in_message(const http_session_t *s) {
  return (s->flags & HTTP_SF_IN_MSG) != 0;
}
/* A request has begun (even if only with empty lines) and is not
 * complete: the request deadline runs. */
static inline int http_session_in_request(const http_session_t *s) {
  return (s->flags & (HTTP_SF_IN_MSG | HTTP_SF_STARTED)) != 0;
}
static inline int http_session_lingers(const http_session_t *s) {
  return (s->flags & HTTP_SF_LINGER) != 0;
}

/* ------------------------------------------------------------------------ */
/* Responses and routes (http_routes.c)                                     */
/* ------------------------------------------------------------------------ */

enum {
  HTTP_RF_HEAD = 1u << 0,  /* no body */
  HTTP_RF_CLOSE = 1u << 1, /* Connection: close */
  HTTP_RF_HTTP10 = 1u << 2, /* keep-alive must be announced */
  HTTP_RF_HTTP09 = 1u << 3  /* HTTP/0.9: the body alone, no status line */
};

/* Appends the response to a complete request. Returns 0 or UV_ENOMEM. */
int http_route(http_ctx_t *ctx, http_buf_t *out, int method, const char *url,
               size_t url_len, int url_long, unsigned int rflags);

/* Appends an error response (always with Connection: close). */
int http_respond_error(http_ctx_t *ctx, http_buf_t *out, int status_idx,
                       unsigned int rflags);

/* The bodies of /metrics and /stats.json, appended to b. */
int http_render_metrics(http_ctx_t *ctx, http_buf_t *b);
int http_render_json(http_ctx_t *ctx, http_buf_t *b);

/* ------------------------------------------------------------------------ */
/* Shared statistics for workers (http_shared.c)                            */
/* ------------------------------------------------------------------------ */

typedef struct http_shared_vip_s {
  char addr[UVIP_ADDRSTRLEN]; /* "" when the VIP could not be read */
  uvip_vip_state_t state;
  uvip_vip_stats_t stats;
} http_shared_vip_t;

/* A MAP_SHARED mapping for nvips VIPs and nworkers workers: create it
 * before the workers start (forked workers inherit it). */
int http_shared_new(size_t nvips, unsigned int nworkers, http_shared_t **out);
void http_shared_free(http_shared_t *sh);
void http_shared_lock(http_shared_t *sh);
void http_shared_unlock(http_shared_t *sh);
/* Acceptor: copies the VIP counters and the census renderings (either may
 * be NULL). */
void http_shared_publish_server(http_shared_t *sh, uvip_server_t *server,
                                const char *prom, const char *json);
/* Worker: copies its counters into its slot. */
void http_shared_publish_worker(http_shared_t *sh, unsigned int worker,
                                const http_counters_t *c);
/* Acceptor: asks every worker to stop gracefully (http_server_tick()
 * notices it). Worker: whether that was asked. No lock needed. */
void http_shared_set_stopping(http_shared_t *sh);
int http_shared_stopping(http_shared_t *sh);
/* Readers, with the lock held. */
size_t http_shared_vip_count(const http_shared_t *sh);
const http_shared_vip_t *http_shared_vip(const http_shared_t *sh, size_t i);
const char *http_shared_census(const http_shared_t *sh, int json);
void http_shared_counters(const http_shared_t *sh, http_counters_t *sum);

/* ------------------------------------------------------------------------ */
/* Server: connections on a uvip_server_t (http_server.c)                   */
/* ------------------------------------------------------------------------ */

typedef struct http_server_config_s {
  http_limits_t limits;
  uint64_t header_timeout_ms;    /* request start to end of headers: 408 */
  uint64_t request_timeout_ms;   /* request start to its end: 408 */
  uint64_t keepalive_timeout_ms; /* idle between requests, stalled writes */
  uint64_t linger_ms;            /* reading after an error response */
  uint64_t shutdown_timeout_ms;  /* graceful stop, then connections close */
  uint64_t stats_interval_ms;    /* /metrics re-rendered at most this often */
  /* Per connection: its kernel send buffer holds about this much
   * (SO_SNDBUF), and a write that would leave more than this waiting
   * beyond it (a shared body counted in full) resets the connection
   * instead. So a response up to about twice this reaches a client that
   * reads, and one that never reads pins at most about twice this. 0 = no
   * limit. */
  uint64_t max_output_bytes;
  int routes; /* http_ctx_t.routes */
} http_server_config_t;

typedef struct http_server_s http_server_t;

/* Creates the HTTP layer on loop. Without workers, server is the uvip
 * server (not yet listening) and the HTTP layer becomes its data: give
 * http_on_connection to uvip_server_listen() and http_on_lib_close as
 * uvip_server_options_t.conn_close_cb. In a worker, server is NULL, shared
 * and worker say where /metrics reads and writes, and the HTTP layer is
 * found through a thread-local pointer set here (so call it on the
 * worker's thread, from its init_cb). */
int http_server_new(uv_loop_t *loop, uvip_server_t *server,
                    http_shared_t *shared, unsigned int worker,
                    const http_server_config_t *cfg, http_server_t **out);
/* Worker exit: closes the HTTP layer's handles and frees it once they and
 * the connections (closed by the library) are gone. */
void http_server_exit(http_server_t *hs);
void http_on_connection(uvip_server_t *server, uvip_conn_t *conn);
/* For an upgrade's hand-over: 1 when the connection is between requests
 * (nothing parsed or buffered, nothing being written), so it can move to
 * the next generation as it is. */
int http_conn_idle(uvip_conn_t *conn);
void http_on_lib_close(uvip_conn_t *conn);
http_ctx_t *http_server_ctx(http_server_t *hs);
/* The worker HTTP layer of the calling thread (NULL outside workers). */
http_server_t *http_server_current(void);

/* Graceful stop: closes the uvip server (no more accepts), closes idle
 * connections, lets requests in progress finish with Connection: close,
 * closes the rest after shutdown_timeout_ms; then calls cb. The uvip server
 * is freed by then. */
void http_server_shutdown(http_server_t *hs, void (*cb)(http_server_t *hs));
void http_server_free(http_server_t *hs);

#endif /* UVIP_HTTP_H */
