/* The request path: llhttp callbacks, header limits, pipelining.
 * SPDX-License-Identifier: MIT */
#include "http.h"

#include <string.h>

/* The loose parser accepts request smuggling shapes (examples/meson.build
 * builds llhttp strict). */
#if !LLHTTP_STRICT_MODE
#error "llhttp must be built with LLHTTP_STRICT_MODE=1"
#endif

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
  s->flags = (uint16_t)((s->flags & ~(HTTP_SF_URL_LONG | HTTP_SF_KEEPALIVE |
                                       HTTP_SF_VALUE_CR)) |
                        HTTP_SF_IN_MSG | HTTP_SF_IN_HEADERS);
  s->url_len = 0;
  s->hdr_bytes = 0;
  s->body_bytes = 0;
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

/* A folded line (obs-fold) comes as one more span of the same value,
 * after the CR LF that ended the previous one: nginx answers it with 400,
 * and RFC 9112 5.2 lets a server reject it, which is safer behind a proxy
 * that may unfold it differently. A span that merely continues across
 * reads starts where the previous feed ended, not after a CR. */
static int on_header_value(llhttp_t *p, const char *at, size_t len) {
  http_session_t *s = session_of(p);
  int r = header_span(s, at, len);
  if (r != 0)
    return r;
  if (s->flags & HTTP_SF_VALUE_CR)
    return HPE_USER;
  if (at + len < s->ctx->feed_end && at[len] == '\r')
    s->flags |= HTTP_SF_VALUE_CR;
  return 0;
}

static int on_header_value_complete(llhttp_t *p) {
  session_of(p)->flags &= (uint16_t)~HTTP_SF_VALUE_CR;
  return 0;
}

static int body_too_big(http_session_t *s, uint64_t n) {
  uint64_t max = s->ctx->limits.max_body_bytes;
  if (max && n > max) {
    s->flags |= HTTP_SF_BODY_BIG;
    return 1;
  }
  return 0;
}

static int on_headers_complete(llhttp_t *p) {
  http_session_t *s = session_of(p);
  s->flags &= (uint16_t)~HTTP_SF_IN_HEADERS;
  /* Transfer-Encoding in HTTP/1.0 means the framing is in doubt (RFC 9112
   * 6.1); nginx answers 400 and so does this. */
  if (p->http_major == 1 && p->http_minor == 0 &&
      (p->flags & F_TRANSFER_ENCODING))
    return -1;
  /* A declared length over the limit is refused before any of it. */
  if ((p->flags & F_CONTENT_LENGTH) && body_too_big(s, p->content_length))
    return -1;
  if (llhttp_should_keep_alive(p))
    s->flags |= HTTP_SF_KEEPALIVE;
  return 0;
}

static int on_message_complete(llhttp_t *p) {
  http_session_t *s = session_of(p);
  http_ctx_t *ctx = s->ctx;
  unsigned int rflags = 0;
  int method = llhttp_get_method(p);

  s->flags &= (uint16_t)~(HTTP_SF_IN_MSG | HTTP_SF_IN_HEADERS |
                          HTTP_SF_STARTED);
  s->nreq++;
  ctx->c.requests++;
  if (method == HTTP_HEAD)
    rflags |= HTTP_RF_HEAD;
  /* HTTP/0.9 (`GET /` and a line end): answered as nginx does, with the
   * body alone and a close; any other method is a 400, body alone. */
  if (llhttp_get_http_major(p) == 0) {
    rflags = HTTP_RF_HTTP09 | HTTP_RF_CLOSE;
    s->flags |= HTTP_SF_DONE;
    if (method != HTTP_GET)
      (void)http_respond_error(ctx, ctx->out, HTTP_S400, rflags);
    else
      (void)http_route(ctx, ctx->out, method, s->url, s->url_len,
                       (s->flags & HTTP_SF_URL_LONG) != 0, rflags);
    return HPE_PAUSED;
  }
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
  /* A shared body goes out after out, so nothing may follow it: stop
   * here (the rest is fed again once it is written). */
  if (ctx->attach || ctx->out->len >= ctx->limits.max_pending_out)
    return HPE_PAUSED;
  return 0;
}

/* Chunked bodies are counted as they come. */
static int on_body(llhttp_t *p, const char *at, size_t len) {
  http_session_t *s = session_of(p);
  (void)at;
  s->body_bytes += len;
  return body_too_big(s, s->body_bytes) ? HPE_USER : 0;
}

static const llhttp_settings_t settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_method = on_span,
    .on_version = on_span,
    .on_header_field = on_span,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
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
  uint32_t nreq;

  *consumed = len;
  if (s->flags & HTTP_SF_DONE)
    return HTTP_FEED_CLOSE;
  ctx->out = out;
  ctx->mark = (s->flags & HTTP_SF_IN_HEADERS) ? data : NULL;
  ctx->feed_end = data + len;
  nreq = s->nreq;
  err = llhttp_execute(&s->parser, data, len);
  switch (err) {
  case HPE_OK:
    /* Only empty lines since the last request: they start the next one
     * (its deadlines run), or a stream of CRLFs would keep the connection
     * open for ever. */
    if (len && nreq == s->nreq && !(s->flags & HTTP_SF_IN_MSG))
      s->flags |= HTTP_SF_STARTED;
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
  default:
    if (s->flags & HTTP_SF_TOO_BIG)
      return fail(s, out, HTTP_S431);
    if (s->flags & HTTP_SF_BODY_BIG)
      return fail(s, out, HTTP_S413);
    return fail(s, out, HTTP_S400);
  }
}

int http_session_timeout(http_session_t *s, http_buf_t *out) {
  if (s->flags & HTTP_SF_DONE)
    return HTTP_FEED_CLOSE;
  s->flags |= HTTP_SF_DONE;
  if (http_session_in_request(s)) {
    s->flags |= HTTP_SF_LINGER;
    (void)http_respond_error(s->ctx, out, HTTP_S408, 0);
  }
  return HTTP_FEED_CLOSE;
}
