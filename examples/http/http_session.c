/* The request path: llhttp callbacks, header limits, pipelining.
 * SPDX-License-Identifier: MIT */
#include "http.h"

#include <string.h>

static http_session_t *session_of(llhttp_t *p) {
  /* The parser is the session's first member. */
  return (http_session_t *)(void *)p;
}

/* Header bytes are measured as the distance from the first header byte of
 * this feed (ctx->mark) to the end of the latest span, plus what earlier
 * feeds counted. Measuring positions rather than summing span lengths also
 * counts the whitespace and line ends between spans, so a client cannot pad
 * its headers past the limit with bytes no callback reports. */
static int header_span(http_session_t *s, const char *at, size_t len) {
  http_ctx_t *ctx = s->ctx;
  if (!ctx->mark)
    ctx->mark = at;
  if ((size_t)(at + len - ctx->mark) + s->hdr_bytes >
      ctx->limits.max_header_bytes) {
    s->flags |= HTTP_SF_TOO_BIG;
    return HPE_USER;
  }
  return 0;
}

static int on_message_begin(llhttp_t *p) {
  http_session_t *s = session_of(p);
  s->flags = (uint8_t)((s->flags & ~(HTTP_SF_URL_LONG | HTTP_SF_KEEPALIVE)) |
                       HTTP_SF_IN_MSG | HTTP_SF_IN_HEADERS);
  s->url_len = 0;
  s->hdr_bytes = 0;
  s->ctx->mark = NULL;
  return 0;
}

static int on_span(llhttp_t *p, const char *at, size_t len) {
  return header_span(session_of(p), at, len);
}

static int on_url(llhttp_t *p, const char *at, size_t len) {
  http_session_t *s = session_of(p);
  int r = header_span(s, at, len);
  if (r != 0)
    return r;
  if (s->flags & HTTP_SF_URL_LONG)
    return 0;
  /* Only the routes' short paths matter; a longer URL is a 404 anyway. */
  if (len > (size_t)(HTTP_URL_MAX - s->url_len)) {
    s->flags |= HTTP_SF_URL_LONG;
    return 0;
  }
  memcpy(s->url + s->url_len, at, len);
  s->url_len = (uint8_t)(s->url_len + len);
  return 0;
}

static int on_headers_complete(llhttp_t *p) {
  http_session_t *s = session_of(p);
  s->flags &= (uint8_t)~HTTP_SF_IN_HEADERS;
  if (llhttp_should_keep_alive(p))
    s->flags |= HTTP_SF_KEEPALIVE;
  return 0;
}

static int on_message_complete(llhttp_t *p) {
  http_session_t *s = session_of(p);
  http_ctx_t *ctx = s->ctx;
  unsigned int rflags = 0;
  int method = llhttp_get_method(p);

  s->flags &= (uint8_t)~(HTTP_SF_IN_MSG | HTTP_SF_IN_HEADERS);
  s->nreq++;
  ctx->c.requests++;
  if (method == HTTP_HEAD)
    rflags |= HTTP_RF_HEAD;
  /* Upgrade and CONNECT are not supported: whatever follows them is not
   * HTTP/1.1, so answer and close. */
  if (!(s->flags & HTTP_SF_KEEPALIVE) || llhttp_get_upgrade(p) ||
      method == HTTP_CONNECT || ctx->stopping ||
      (ctx->limits.max_requests && s->nreq >= ctx->limits.max_requests))
    rflags |= HTTP_RF_CLOSE;
  else if (llhttp_get_http_major(p) == 1 && llhttp_get_http_minor(p) == 0)
    rflags |= HTTP_RF_HTTP10;

  if (http_route(ctx, ctx->out, method, s->url, s->url_len,
                 (s->flags & HTTP_SF_URL_LONG) != 0, rflags) != 0 ||
      (rflags & HTTP_RF_CLOSE)) {
    s->flags |= HTTP_SF_DONE;
    /* A client that asked for keep-alive may have pipelined more requests
     * that a plain close would answer with a reset. */
    if (s->flags & HTTP_SF_KEEPALIVE)
      s->flags |= HTTP_SF_LINGER;
    return HPE_PAUSED;
  }
  if (ctx->out->len >= ctx->limits.max_pending_out)
    return HPE_PAUSED;
  return 0;
}

static const llhttp_settings_t settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_method = on_span,
    .on_version = on_span,
    .on_header_field = on_span,
    .on_header_value = on_span,
    .on_headers_complete = on_headers_complete,
    .on_message_complete = on_message_complete,
};

void http_session_init(http_session_t *s, http_ctx_t *ctx) {
  memset(s, 0, sizeof(*s));
  /* llhttp_init() keeps the pointer; the settings are static. */
  llhttp_init(&s->parser, HTTP_REQUEST, (llhttp_settings_t *)&settings);
  s->ctx = ctx;
}

static int fail(http_session_t *s, http_buf_t *out, int status_idx) {
  s->flags |= HTTP_SF_DONE | HTTP_SF_LINGER;
  (void)http_respond_error(s->ctx, out, status_idx, 0);
  return HTTP_FEED_CLOSE;
}

int http_session_feed(http_session_t *s, const char *data, size_t len,
                      http_buf_t *out, size_t *consumed) {
  http_ctx_t *ctx = s->ctx;
  llhttp_errno_t err;
  const char *pos;

  *consumed = len;
  if (s->flags & HTTP_SF_DONE)
    return HTTP_FEED_CLOSE;
  ctx->out = out;
  ctx->mark = (s->flags & HTTP_SF_IN_HEADERS) ? data : NULL;
  err = llhttp_execute(&s->parser, data, len);
  switch (err) {
  case HPE_OK:
    if (s->flags & HTTP_SF_IN_HEADERS) {
      size_t n = (size_t)(data + len - (ctx->mark ? ctx->mark : data));
      if (s->hdr_bytes + n > ctx->limits.max_header_bytes)
        return fail(s, out, HTTP_S431);
      s->hdr_bytes += (uint32_t)n;
    }
    return HTTP_FEED_OK;
  case HPE_PAUSED:
  case HPE_PAUSED_UPGRADE:
    pos = llhttp_get_error_pos(&s->parser);
    if (pos && pos >= data && pos <= data + len)
      *consumed = (size_t)(pos - data);
    if (s->flags & HTTP_SF_DONE) {
      if (*consumed < len)
        s->flags |= HTTP_SF_LINGER;
      return HTTP_FEED_CLOSE;
    }
    if (err == HPE_PAUSED_UPGRADE) /* not answered: cannot happen, be safe */
      return fail(s, out, HTTP_S400);
    llhttp_resume(&s->parser);
    return *consumed < len ? HTTP_FEED_PAUSED : HTTP_FEED_OK;
  case HPE_USER:
    if (s->flags & HTTP_SF_TOO_BIG)
      return fail(s, out, HTTP_S431);
    return fail(s, out, HTTP_S400);
  default:
    return fail(s, out, HTTP_S400);
  }
}

int http_session_timeout(http_session_t *s, http_buf_t *out) {
  if (s->flags & HTTP_SF_DONE)
    return HTTP_FEED_CLOSE;
  s->flags |= HTTP_SF_DONE;
  if (s->flags & HTTP_SF_IN_MSG) {
    s->flags |= HTTP_SF_LINGER;
    (void)http_respond_error(s->ctx, out, HTTP_S408, 0);
  }
  return HTTP_FEED_CLOSE;
}
