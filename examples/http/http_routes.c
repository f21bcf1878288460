/* Responses, routes, and the /metrics and /stats.json renderings.
 * SPDX-License-Identifier: MIT */
#include "http.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HELLO_BODY "Hello from uvip\n"

int http_buf_grow(http_buf_t *b, size_t extra) {
  size_t cap = b->cap ? b->cap : 4096;
  char *nb;
  if (extra > SIZE_MAX / 2 - b->len)
    return UV_ENOMEM;
  while (cap - b->len < extra)
    cap *= 2;
  nb = realloc(b->base, cap);
  if (!nb)
    return UV_ENOMEM;
  b->base = nb;
  b->cap = cap;
  return 0;
}

int http_buf_append(http_buf_t *b, const void *p, size_t n) {
  if (http_buf_reserve(b, n) != 0)
    return UV_ENOMEM;
  memcpy(b->base + b->len, p, n);
  b->len += n;
  return 0;
}

int http_buf_printf(http_buf_t *b, const char *fmt, ...) {
  va_list ap;
  int n;
  for (;;) {
    size_t room = b->cap - b->len;
    va_start(ap, fmt);
    n = vsnprintf(b->base ? b->base + b->len : NULL, room, fmt, ap);
    va_end(ap);
    if (n < 0)
      return UV_EINVAL;
    if ((size_t)n < room) {
      b->len += (size_t)n;
      return 0;
    }
    if (http_buf_grow(b, (size_t)n + 1) != 0)
      return UV_ENOMEM;
  }
}

void http_buf_free(http_buf_t *b) {
  free(b->base);
  b->base = NULL;
  b->len = b->cap = 0;
}

static const struct {
  const char *line; /* status line with its CRLF */
  const char *body;
} statuses[HTTP_NSTATUS] = {
    [HTTP_S200] = {"HTTP/1.1 200 OK\r\n", ""},
    [HTTP_S400] = {"HTTP/1.1 400 Bad Request\r\n", "Bad Request\n"},
    [HTTP_S404] = {"HTTP/1.1 404 Not Found\r\n", "Not Found\n"},
    [HTTP_S405] = {"HTTP/1.1 405 Method Not Allowed\r\n",
                   "Method Not Allowed\n"},
    [HTTP_S408] = {"HTTP/1.1 408 Request Timeout\r\n", "Request Timeout\n"},
    [HTTP_S413] = {"HTTP/1.1 413 Content Too Large\r\n",
                   "Content Too Large\n"},
    [HTTP_S431] = {"HTTP/1.1 431 Request Header Fields Too Large\r\n",
                   "Request Header Fields Too Large\n"},
    [HTTP_S500] = {"HTTP/1.1 500 Internal Server Error\r\n",
                   "Internal Server Error\n"},
    [HTTP_S503] = {"HTTP/1.1 503 Service Unavailable\r\n", "draining\n"},
};

static const char *conn_header(unsigned int rflags) {
  if (rflags & HTTP_RF_CLOSE)
    return "Connection: close\r\n";
  if (rflags & HTTP_RF_HTTP10)
    return "Connection: keep-alive\r\n";
  return "";
}

static int respond(http_ctx_t *ctx, http_buf_t *out, int status_idx,
                   const char *ctype, const char *extra, const char *body,
                   size_t blen, unsigned int rflags) {
  int r;
  ctx->c.responses[status_idx]++;
  /* HTTP/0.9 has no status line and no headers: the body is all. */
  if (rflags & HTTP_RF_HTTP09)
    return (rflags & HTTP_RF_HEAD) ? 0 : http_buf_append(out, body, blen);
  r = http_buf_printf(out,
                      "%sServer: uvip\r\nDate: %s\r\nContent-Type: %s\r\n"
                      "Content-Length: %zu\r\n%s%s\r\n",
                      statuses[status_idx].line, ctx->date, ctype, blen, extra,
                      conn_header(rflags));
  if (r == 0 && !(rflags & HTTP_RF_HEAD))
    r = http_buf_append(out, body, blen);
  return r;
}

int http_respond_error(http_ctx_t *ctx, http_buf_t *out, int status_idx,
                       unsigned int rflags) {
  const char *body = statuses[status_idx].body;
  return respond(ctx, out, status_idx, "text/plain", "", body, strlen(body),
                 rflags | HTTP_RF_CLOSE);
}

static void build_hello(http_ctx_t *ctx, int v, unsigned int rflags) {
  int n = snprintf(ctx->hello[v], sizeof(ctx->hello[v]),
                   "HTTP/1.1 200 OK\r\nServer: uvip\r\nDate: %s\r\n"
                   "Content-Type: text/plain\r\nContent-Length: %zu\r\n%s\r\n"
                   "%s",
                   ctx->date, sizeof(HELLO_BODY) - 1, conn_header(rflags),
                   HELLO_BODY);
  /* The buffer is sized for the longest variant; n cannot be negative. */
  ctx->hello_len[v] = (uint16_t)n;
  ctx->hello_hdr_len[v] = (uint16_t)(n - (int)(sizeof(HELLO_BODY) - 1));
}

void http_ctx_set_time(http_ctx_t *ctx, time_t now) {
  struct tm tm;
  if (now == ctx->date_sec && ctx->date[0])
    return;
  ctx->date_sec = now;
  gmtime_r(&now, &tm);
  strftime(ctx->date, sizeof(ctx->date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
  build_hello(ctx, HTTP_V_KEEP11, 0);
  build_hello(ctx, HTTP_V_KEEP10, HTTP_RF_HTTP10);
  build_hello(ctx, HTTP_V_CLOSE, HTTP_RF_CLOSE);
}

int http_ctx_init(http_ctx_t *ctx, const http_limits_t *limits) {
  memset(ctx, 0, sizeof(*ctx));
  ctx->limits = *limits;
  http_ctx_set_time(ctx, time(NULL));
  return 0;
}

void http_ctx_drop_cache(http_ctx_t *ctx) {
  for (int k = 0; k < 2; k++) {
    http_blob_unref(ctx->cache[k]);
    ctx->cache[k] = NULL;
  }
}

void http_ctx_free(http_ctx_t *ctx) {
  http_ctx_drop_cache(ctx);
  http_blob_unref(ctx->attach);
  ctx->attach = NULL;
  http_buf_free(&ctx->scratch);
}

http_blob_t *http_blob_new(const void *p, size_t len) {
  http_blob_t *b = malloc(sizeof(*b) + len);
  if (!b)
    return NULL;
  b->refs = 1;
  b->len = len;
  memcpy(b->data, p, len);
  return b;
}

http_blob_t *http_blob_ref(http_blob_t *b) {
  b->refs++;
  return b;
}

void http_blob_unref(http_blob_t *b) {
  if (b && --b->refs == 0)
    free(b);
}

static int path_is(const char *url, size_t len, const char *path) {
  size_t n = strlen(path);
  return len >= n && memcmp(url, path, n) == 0 &&
         (len == n || url[n] == '?' || url[n] == '#');
}

static int render_stats(http_ctx_t *ctx, int json, http_buf_t *fresh,
                        http_blob_t **cached);

/* /metrics or /stats.json: a 200 whose body is the HTTP counters, rendered
 * now, then the cached rest, which the server sends from the shared blob
 * (ctx->attach) instead of copying it into out. */
static int respond_stats(http_ctx_t *ctx, http_buf_t *out, int json,
                         unsigned int rflags) {
  http_blob_t *blob;
  size_t blen;
  int r = 0;
  ctx->scratch.len = 0;
  if (render_stats(ctx, json, &ctx->scratch, &blob) != 0)
    return UV_ENOMEM;
  blen = ctx->scratch.len + blob->len;
  ctx->c.responses[HTTP_S200]++;
  if (!(rflags & HTTP_RF_HTTP09))
    r = http_buf_printf(out,
                        "HTTP/1.1 200 OK\r\nServer: uvip\r\nDate: %s\r\n"
                        "Content-Type: %s\r\nContent-Length: %zu\r\n%s\r\n",
                        ctx->date,
                        json ? "application/json" : "text/plain; version=0.0.4",
                        blen, conn_header(rflags));
  if (r == 0 && !(rflags & HTTP_RF_HEAD))
    r = http_buf_append(out, ctx->scratch.base, ctx->scratch.len);
  if (r == 0 && !(rflags & HTTP_RF_HEAD))
    ctx->attach = http_blob_ref(blob);
  return r;
}

int http_route(http_ctx_t *ctx, http_buf_t *out, int method, const char *url,
               size_t url_len, int url_long, unsigned int rflags) {
  if (method != HTTP_GET && method != HTTP_HEAD)
    return respond(ctx, out, HTTP_S405, "text/plain",
                   "Allow: GET, HEAD\r\n", statuses[HTTP_S405].body,
                   strlen(statuses[HTTP_S405].body), rflags);
  if (!url_long && path_is(url, url_len, "/")) {
    int v = (rflags & HTTP_RF_CLOSE)    ? HTTP_V_CLOSE
            : (rflags & HTTP_RF_HTTP10) ? HTTP_V_KEEP10
                                        : HTTP_V_KEEP11;
    ctx->c.responses[HTTP_S200]++;
    if (rflags & HTTP_RF_HTTP09)
      return http_buf_append(out, ctx->hello[v] + ctx->hello_hdr_len[v],
                             (size_t)(ctx->hello_len[v] -
                                      ctx->hello_hdr_len[v]));
    return http_buf_append(out, ctx->hello[v],
                           (rflags & HTTP_RF_HEAD) ? ctx->hello_hdr_len[v]
                                                   : ctx->hello_len[v]);
  }
  if (!url_long && path_is(url, url_len, "/health")) {
    /* 503 from the start of a drain: the balancer stops sending here
     * before the connections close. */
    if (ctx->stopping || ctx->health_down)
      return respond(ctx, out, HTTP_S503, "text/plain", "",
                     statuses[HTTP_S503].body,
                     strlen(statuses[HTTP_S503].body), rflags);
    return respond(ctx, out, HTTP_S200, "text/plain", "", "ok\n", 3, rflags);
  }
  if (!url_long && path_is(url, url_len, "/whoami")) {
    /* The client as the server sees it: with the PROXY protocol the real
     * client, not the balancer. */
    struct sockaddr_storage sa;
    char a[UVIP_ADDRSTRLEN + 1];
    if (!ctx->conn || uvip_conn_peer(ctx->conn, &sa) != 0 ||
        uvip_addr_format((struct sockaddr *)&sa, 1, a, sizeof(a) - 1) != 0)
      strcpy(a, "unknown");
    strcat(a, "\n");
    return respond(ctx, out, HTTP_S200, "text/plain", "", a, strlen(a),
                   rflags);
  }
  if (!url_long && ctx->routes != HTTP_ROUTES_DATA &&
      path_is(url, url_len, "/metrics"))
    return respond_stats(ctx, out, 0, rflags);
  if (!url_long && ctx->routes != HTTP_ROUTES_DATA &&
      path_is(url, url_len, "/stats.json"))
    return respond_stats(ctx, out, 1, rflags);
  return respond(ctx, out, HTTP_S404, "text/plain", "",
                 statuses[HTTP_S404].body, strlen(statuses[HTTP_S404].body),
                 rflags);
}

/* ------------------------------------------------------------------------ */
/* /metrics and /stats.json                                                 */
/* ------------------------------------------------------------------------ */

static const char *vip_state_name(uvip_vip_state_t st) {
  const char *name = uvip_vip_state_name((int)st);
  return name ? name : "unknown";
}

enum { F_ACCEPTED, F_ACTIVE, F_CLOSED, F_DEFERRED, F_BACKOFFS, F_NFIELDS };

static const struct {
  const char *name, *type, *help;
} vip_families[F_NFIELDS] = {
    [F_ACCEPTED] = {"uvip_vip_accepted_total", "counter",
                    "Connections accepted on the VIP."},
    [F_ACTIVE] = {"uvip_vip_active", "gauge", "Connections open on the VIP."},
    [F_CLOSED] = {"uvip_vip_closed_total", "counter",
                  "Connections of the VIP closed."},
    [F_DEFERRED] = {"uvip_vip_deferred_total", "counter",
                    "Scheduler turns the VIP had work but a cap held it back."},
    [F_BACKOFFS] = {"uvip_vip_backoffs_total", "counter",
                    "Times accepting paused for lack of resources."},
};

static uint64_t vip_field(const uvip_vip_stats_t *st, int f) {
  switch (f) {
  case F_ACCEPTED:
    return st->accepted;
  case F_ACTIVE:
    return st->active;
  case F_CLOSED:
    return st->closed;
  case F_DEFERRED:
    return st->deferred;
  default:
    return st->backoffs;
  }
}

static const char *const err_kinds[] = {"emfile", "enfile",  "enobufs",
                                        "enomem", "aborted", "other"};

static uint64_t vip_err(const uvip_vip_stats_t *st, int k) {
  const uint64_t v[] = {st->err_emfile, st->err_enfile, st->err_enobufs,
                        st->err_enomem, st->err_aborted, st->err_other};
  return v[k];
}

/* PROXY protocol outcomes ([0] unused: pending is a gauge of its own). */
static const char *const proxy_kinds[] = {"pending", "local",   "missing",
                                          "malformed", "oversized", "timeout",
                                          "eof",     "dropped"};

/* k = 0..6: local, missing, malformed, oversized, timeout, eof, dropped. */
static uint64_t vip_proxy(const uvip_vip_stats_t *st, int k) {
  const uint64_t v[] = {st->proxy_local,     st->proxy_missing,
                        st->proxy_malformed, st->proxy_oversized,
                        st->proxy_timeout,   st->proxy_eof,
                        st->proxy_dropped};
  return v[k];
}

/* The context whose server, workers mapping, census and counters the
 * statistics come from: the data plane's for the admin listener. */
static const http_ctx_t *src_of(const http_ctx_t *ctx) {
  return ctx->stats_of ? ctx->stats_of : ctx;
}

static size_t vip_count(const http_ctx_t *ctx) {
  const http_ctx_t *src = src_of(ctx);
  if (src->shared)
    return http_shared_vip_count(src->shared);
  return src->server ? uvip_server_vip_count(src->server) : 0;
}

/* Formats the i-th VIP's address and reads its counters. */
static int vip_get(const http_ctx_t *ctx, size_t i, char *addr,
                   uvip_vip_stats_t *st, uvip_vip_state_t *state) {
  const http_ctx_t *src = src_of(ctx);
  uvip_vip_t *vip;
  if (src->shared) {
    const http_shared_vip_t *v = http_shared_vip(src->shared, i);
    if (!v || !v->addr[0])
      return -1;
    memcpy(addr, v->addr, UVIP_ADDRSTRLEN);
    *st = v->stats;
    *state = v->state;
    return 0;
  }
  vip = uvip_server_vip(src->server, i);
  if (!vip || uvip_addr_format(uvip_vip_addr(vip), 1, addr,
                               UVIP_ADDRSTRLEN) != 0 ||
      uvip_vip_stats(vip, st) != 0)
    return -1;
  *state = uvip_vip_state(vip);
  return 0;
}

static const char *const status_codes[HTTP_NSTATUS] = {
    "200", "400", "404", "405", "408", "413", "431", "500", "503"};

/* With workers, every worker's counters summed (this one's fresh). */
static const http_counters_t *counters(const http_ctx_t *ctx,
                                       http_counters_t *sum) {
  const http_ctx_t *src = src_of(ctx);
  if (!src->shared)
    return &src->c;
  http_shared_counters(src->shared, sum);
  return sum;
}

static const char *census(const http_ctx_t *ctx, int json) {
  const http_ctx_t *src = src_of(ctx);
  if (src->shared)
    return http_shared_census(src->shared, json);
  return json ? src->census_json : src->census_prom;
}

static int render_metrics_http(const http_ctx_t *ctx, http_buf_t *b);
static int render_metrics_vips(const http_ctx_t *ctx, http_buf_t *b);
static int render_json_http(const http_ctx_t *ctx, http_buf_t *b);
static int render_json_vips(const http_ctx_t *ctx, http_buf_t *b);

/* The counters part into fresh; the per-VIP part and the census from the
 * cache, rendered again if it is older than stats_ms. Workers read the
 * shared mapping under its lock (and put their own counters there first,
 * unless this is the acceptor's admin listener, which has no slot). */
static int render_stats(http_ctx_t *ctx, int json, http_buf_t *fresh,
                        http_blob_t **cached) {
  const http_ctx_t *src = src_of(ctx);
  http_blob_t *blob = ctx->cache[json];
  int r;
  if (src->shared && ctx->routes != HTTP_ROUTES_ADMIN)
    http_shared_publish_worker(src->shared, ctx->worker, &ctx->c);
  if (src->shared)
    http_shared_lock(src->shared);
  r = json ? render_json_http(ctx, fresh) : render_metrics_http(ctx, fresh);
  if (r == 0 && (!blob || ctx->now_ms - ctx->cache_at[json] >= ctx->stats_ms)) {
    http_buf_t b = {NULL, 0, 0};
    r = json ? render_json_vips(ctx, &b) : render_metrics_vips(ctx, &b);
    if (r == 0 && !(blob = http_blob_new(b.base, b.len)))
      r = UV_ENOMEM;
    http_buf_free(&b);
    if (r == 0) {
      /* Writes in flight keep the old one until they complete. */
      http_blob_unref(ctx->cache[json]);
      ctx->cache[json] = blob;
      ctx->cache_at[json] = ctx->now_ms;
    }
  }
  if (src->shared)
    http_shared_unlock(src->shared);
  *cached = blob;
  return r;
}

int http_render_metrics(http_ctx_t *ctx, http_buf_t *b) {
  http_blob_t *blob;
  int r = render_stats(ctx, 0, b, &blob);
  return r ? r : http_buf_append(b, blob->data, blob->len);
}

int http_render_json(http_ctx_t *ctx, http_buf_t *b) {
  http_blob_t *blob;
  int r = render_stats(ctx, 1, b, &blob);
  return r ? r : http_buf_append(b, blob->data, blob->len);
}

static int render_metrics_vips(const http_ctx_t *ctx, http_buf_t *b) {
  const char *cen = census(ctx, 0);
  size_t n = vip_count(ctx), i;
  char addr[UVIP_ADDRSTRLEN];
  uvip_vip_stats_t st;
  uvip_vip_state_t state;
  int f, k, r = 0;

  for (f = 0; f < F_NFIELDS && r == 0; f++) {
    r = http_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n",
                        vip_families[f].name, vip_families[f].help,
                        vip_families[f].name, vip_families[f].type);
    for (i = 0; i < n && r == 0; i++)
      if (vip_get(ctx, i, addr, &st, &state) == 0)
        r = http_buf_printf(b, "%s{vip=\"%s\"} %llu\n", vip_families[f].name,
                            addr, (unsigned long long)vip_field(&st, f));
  }
  if (r == 0)
    r = http_buf_printf(b, "# HELP uvip_vip_accept_errors_total Accept "
                           "errors on the VIP by kind.\n"
                           "# TYPE uvip_vip_accept_errors_total counter\n");
  for (i = 0; i < n && r == 0; i++)
    if (vip_get(ctx, i, addr, &st, &state) == 0)
      for (k = 0; k < 6 && r == 0; k++)
        r = http_buf_printf(
            b, "uvip_vip_accept_errors_total{vip=\"%s\",kind=\"%s\"} %llu\n",
            addr, err_kinds[k], (unsigned long long)vip_err(&st, k));
  /* PROXY protocol: once any VIP has seen a header (or a connection
   * without one while it was required), every VIP gets its series. */
  int proxied = 0;
  for (i = 0; i < n && !proxied; i++)
    if (vip_get(ctx, i, addr, &st, &state) == 0)
      for (k = 0, proxied = st.proxy_pending != 0; k < 7; k++)
        proxied |= vip_proxy(&st, k) != 0;
  if (r == 0 && proxied)
    r = http_buf_printf(b, "# HELP uvip_vip_proxy_pending Connections waiting "
                           "for their PROXY header.\n"
                           "# TYPE uvip_vip_proxy_pending gauge\n");
  for (i = 0; i < n && r == 0 && proxied; i++)
    if (vip_get(ctx, i, addr, &st, &state) == 0)
      r = http_buf_printf(b, "uvip_vip_proxy_pending{vip=\"%s\"} %llu\n", addr,
                          (unsigned long long)st.proxy_pending);
  if (r == 0 && proxied)
    r = http_buf_printf(b, "# HELP uvip_vip_proxy_headers_total PROXY headers "
                           "by outcome (local: no client address; the others "
                           "closed the connection).\n"
                           "# TYPE uvip_vip_proxy_headers_total counter\n");
  for (i = 0; i < n && r == 0 && proxied; i++)
    if (vip_get(ctx, i, addr, &st, &state) == 0)
      for (k = 1; k < 8 && r == 0; k++)
        r = http_buf_printf(
            b, "uvip_vip_proxy_headers_total{vip=\"%s\",outcome=\"%s\"} %llu\n",
            addr, proxy_kinds[k], (unsigned long long)vip_proxy(&st, k - 1));
  if (r == 0)
    r = http_buf_printf(b, "# HELP uvip_vip_state The VIP's listener state "
                           "(1 for the current one).\n"
                           "# TYPE uvip_vip_state gauge\n");
  for (i = 0; i < n && r == 0; i++)
    if (vip_get(ctx, i, addr, &st, &state) == 0)
      r = http_buf_printf(b, "uvip_vip_state{vip=\"%s\",state=\"%s\"} 1\n",
                          addr, vip_state_name(state));
  if (r == 0 && cen)
    r = http_buf_append(b, cen, strlen(cen));
  return r;
}

static int render_metrics_http(const http_ctx_t *ctx, http_buf_t *b) {
  http_counters_t sum;
  const http_counters_t *c = counters(ctx, &sum);
  int k, r;
  r = http_buf_printf(
      b,
      "# HELP uvip_http_requests_total Requests parsed.\n"
      "# TYPE uvip_http_requests_total counter\n"
      "uvip_http_requests_total %llu\n"
      "# HELP uvip_http_connections_total Connections served.\n"
      "# TYPE uvip_http_connections_total counter\n"
      "uvip_http_connections_total %llu\n"
      "# HELP uvip_http_connections_active Connections open.\n"
      "# TYPE uvip_http_connections_active gauge\n"
      "uvip_http_connections_active %llu\n"
      "# HELP uvip_http_timeouts_total Connections closed by a timeout.\n"
      "# TYPE uvip_http_timeouts_total counter\n"
      "uvip_http_timeouts_total{kind=\"header\"} %llu\n"
      "uvip_http_timeouts_total{kind=\"idle\"} %llu\n"
      "uvip_http_timeouts_total{kind=\"request\"} %llu\n"
      "# HELP uvip_http_write_stalls_total Writes the socket did not take "
      "at once (the client reads slower than it asks).\n"
      "# TYPE uvip_http_write_stalls_total counter\n"
      "uvip_http_write_stalls_total %llu\n"
      "# HELP uvip_http_output_overflows_total Connections reset for "
      "leaving more than --max-output-bytes unsent.\n"
      "# TYPE uvip_http_output_overflows_total counter\n"
      "uvip_http_output_overflows_total %llu\n"
      "# HELP uvip_http_responses_total Responses by status code.\n"
      "# TYPE uvip_http_responses_total counter\n",
      (unsigned long long)c->requests, (unsigned long long)c->conns_total,
      (unsigned long long)c->conns_active,
      (unsigned long long)c->timeouts_header,
      (unsigned long long)c->timeouts_idle,
      (unsigned long long)c->timeouts_request,
      (unsigned long long)c->write_stalls,
      (unsigned long long)c->output_overflows);
  for (k = 0; k < HTTP_NSTATUS && r == 0; k++)
    r = http_buf_printf(b, "uvip_http_responses_total{code=\"%s\"} %llu\n",
                        status_codes[k], (unsigned long long)c->responses[k]);
  return r;
}

/* {"http":{...}, then render_json_vips()'s "vips":[...],...} */
static int render_json_http(const http_ctx_t *ctx, http_buf_t *b) {
  http_counters_t sum;
  const http_counters_t *c = counters(ctx, &sum);
  int k, r;
  r = http_buf_printf(
      b,
      "{\"http\":{\"requests\":%llu,"
      "\"connections_total\":%llu,\"connections_active\":%llu,"
      "\"timeouts\":{\"header\":%llu,\"idle\":%llu,\"request\":%llu},"
      "\"write_stalls\":%llu,\"output_overflows\":%llu,\"responses\":{",
      (unsigned long long)c->requests, (unsigned long long)c->conns_total,
      (unsigned long long)c->conns_active,
      (unsigned long long)c->timeouts_header,
      (unsigned long long)c->timeouts_idle,
      (unsigned long long)c->timeouts_request,
      (unsigned long long)c->write_stalls,
      (unsigned long long)c->output_overflows);
  for (k = 0; k < HTTP_NSTATUS && r == 0; k++)
    r = http_buf_printf(b, "%s\"%s\":%llu", k ? "," : "", status_codes[k],
                        (unsigned long long)c->responses[k]);
  if (r == 0)
    r = http_buf_printf(b, "}},");
  return r;
}

static int render_json_vips(const http_ctx_t *ctx, http_buf_t *b) {
  const http_ctx_t *src = src_of(ctx);
  const char *cen = census(ctx, 1);
  size_t n = vip_count(ctx), i;
  char addr[UVIP_ADDRSTRLEN];
  uvip_vip_stats_t st, tot;
  uvip_vip_state_t state;
  int k, r, first = 1;

  memset(&tot, 0, sizeof(tot));
  if (src->server && !src->shared)
    (void)uvip_server_stats(src->server, &tot);
  for (i = 0; src->shared && i < n; i++)
    if (vip_get(ctx, i, addr, &st, &state) == 0) {
      tot.accepted += st.accepted;
      tot.active += st.active;
      tot.closed += st.closed;
      tot.deferred += st.deferred;
      tot.backoffs += st.backoffs;
    }
  r = http_buf_printf(b, "\"vips\":[");
  for (i = 0; i < n && r == 0; i++) {
    if (vip_get(ctx, i, addr, &st, &state) != 0)
      continue;
    r = http_buf_printf(
        b,
        "%s{\"vip\":\"%s\",\"state\":\"%s\",\"accepted\":%llu,"
        "\"active\":%llu,\"closed\":%llu,\"deferred\":%llu,"
        "\"backoffs\":%llu,\"errors\":{",
        first ? "" : ",", addr, vip_state_name(state),
        (unsigned long long)st.accepted, (unsigned long long)st.active,
        (unsigned long long)st.closed, (unsigned long long)st.deferred,
        (unsigned long long)st.backoffs);
    for (k = 0; k < 6 && r == 0; k++)
      r = http_buf_printf(b, "%s\"%s\":%llu", k ? "," : "", err_kinds[k],
                          (unsigned long long)vip_err(&st, k));
    if (r == 0)
      r = http_buf_printf(b, "}}");
    first = 0;
  }
  if (r == 0)
    r = http_buf_printf(
        b,
        "],\"totals\":{\"accepted\":%llu,\"active\":%llu,\"closed\":%llu,"
        "\"deferred\":%llu,\"backoffs\":%llu},\"census\":%s}\n",
        (unsigned long long)tot.accepted, (unsigned long long)tot.active,
        (unsigned long long)tot.closed, (unsigned long long)tot.deferred,
        (unsigned long long)tot.backoffs, cen ? cen : "null");
  return r;
}
