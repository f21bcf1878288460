/* Fuzz target for uvip-http's request path (http_session_feed() and the
 * routes), no sockets involved.
 *
 * The first input byte picks how the rest is cut into reads (1..255 bytes,
 * 0 = one read), so split tokens, split CRLFs and header limits reached
 * across reads are all covered. Invariants checked on every input:
 *  - feed never claims more bytes than it was given, a pause makes
 *    progress, and after a close no more input is taken or answered;
 *  - every output chunk starts with a status line and holds exactly one
 *    status line per response the server counted (an HTTP/0.9 answer,
 *    the body alone, ends the connection);
 *  - no more requests are answered than --max-requests allows.
 *
 * Built with -DUVIP_LIBFUZZER (clang -fsanitize=fuzzer) it is a libFuzzer
 * target. Otherwise main() replays the files or directories given and
 * then runs a fixed number of deterministic mutations of them, so every
 * build runs the same checks as a regression test.
 *
 * SPDX-License-Identifier: MIT */
#include "http.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static http_ctx_t ctx;
static http_buf_t out;
static const http_limits_t limits = {
    .max_header_bytes = 512, .max_requests = 8, .max_pending_out = 256,
    .max_body_bytes = 100};

static void check(int cond, const char *what) {
  if (!cond) {
    fprintf(stderr, "fuzz-http: invariant failed: %s\n", what);
    abort();
  }
}

static uint64_t responses_total(void) {
  uint64_t n = 0;
  for (int i = 0; i < HTTP_NSTATUS; i++)
    n += ctx.c.responses[i];
  return n;
}

static size_t status_lines(const char *p, size_t n) {
  static const char tag[] = "HTTP/1.1 ";
  size_t count = 0;
  const char *end = p + n, *q;
  while (p && (q = memmem(p, (size_t)(end - p), tag, sizeof(tag) - 1))) {
    count++;
    p = q + 1;
  }
  return count;
}

static void check_output(const http_session_t *s, int timeout,
                         size_t *statuses) {
  if (out.len == 0)
    return;
  /* An HTTP/0.9 request is answered with the body alone, the last output
   * of the connection (after any HTTP/1.x responses in the same chunk). */
  if (!timeout && s->parser.http_major == 0 && (s->flags & HTTP_SF_DONE) &&
      !http_session_in_message(s)) {
    *statuses += 1 + status_lines(out.base, out.len);
    return;
  }
  check(out.len >= 9 && memcmp(out.base, "HTTP/1.1 ", 9) == 0,
        "output starts with a status line");
  *statuses += status_lines(out.base, out.len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int inited;
  http_session_t s;
  size_t chunk, off = 0, statuses = 0;
  uint64_t before;
  int closed = 0;

  if (!inited) {
    http_ctx_init(&ctx, &limits);
    inited = 1;
  }
  if (size == 0)
    return 0;
  chunk = data[0] ? data[0] : size;
  data++;
  size--;
  before = responses_total();
  http_session_init(&s, &ctx);

  while (off < size && !closed) {
    size_t left = size - off < chunk ? size - off : chunk;
    const char *p = (const char *)data + off;
    off += left;
    while (left > 0) {
      size_t used = 0;
      out.len = 0;
      int r = http_session_feed(&s, p, left, &out, &used);
      check(used <= left, "consumed <= given");
      /* A shared body ends the output: the feed stopped after it. */
      if (ctx.attach) {
        check(r != HTTP_FEED_OK || used == left, "nothing after a body");
        http_blob_unref(ctx.attach);
        ctx.attach = NULL;
      }
      check_output(&s, 0, &statuses);
      if (r == HTTP_FEED_PAUSED) {
        check(used > 0 && used < left, "a pause makes progress");
        p += used;
        left -= used;
        continue;
      }
      if (r == HTTP_FEED_CLOSE) {
        closed = 1;
        break;
      }
      check(r == HTTP_FEED_OK && used == left, "OK consumes everything");
      break;
    }
  }
  if (closed) {
    /* A closed session ignores whatever else arrives. */
    size_t used = 0;
    out.len = 0;
    check(http_session_feed(&s, "GET / HTTP/1.1\r\n\r\n", 18, &out, &used) ==
                  HTTP_FEED_CLOSE &&
              out.len == 0,
          "nothing answered after close");
  } else {
    out.len = 0;
    check(http_session_timeout(&s, &out) == HTTP_FEED_CLOSE,
          "timeout closes");
    check(out.len == 0 || memcmp(out.base, "HTTP/1.1 408 ", 13) == 0,
          "a timeout answers 408 or nothing");
    check_output(&s, 1, &statuses);
  }
  check(statuses == responses_total() - before,
        "one status line per response");
  check(s.nreq <= limits.max_requests, "max requests per connection");
  return 0;
}

#ifndef UVIP_LIBFUZZER

typedef struct {
  uint8_t *data;
  size_t len;
} input_t;

static input_t *inputs;
static size_t ninputs;

static void add_file(const char *path) {
  FILE *f = fopen(path, "rb");
  input_t in = {NULL, 0};
  size_t cap = 0, n;
  uint8_t buf[4096];
  if (!f) {
    perror(path);
    exit(1);
  }
  while ((n = fread(buf, 1, sizeof(buf), f)) > 0) {
    if (in.len + n > cap) {
      cap = (in.len + n) * 2;
      in.data = realloc(in.data, cap);
      check(in.data != NULL, "memory");
    }
    memcpy(in.data + in.len, buf, n);
    in.len += n;
  }
  fclose(f);
  inputs = realloc(inputs, (ninputs + 1) * sizeof(*inputs));
  check(inputs != NULL, "memory");
  inputs[ninputs++] = in;
}

static void add_path(const char *path) {
  struct stat st;
  if (stat(path, &st) != 0) {
    perror(path);
    exit(1);
  }
  if (!S_ISDIR(st.st_mode)) {
    add_file(path);
    return;
  }
  DIR *d = opendir(path);
  struct dirent *e;
  check(d != NULL, "opendir");
  while ((e = readdir(d))) {
    char full[4096];
    if (e->d_name[0] == '.')
      continue;
    snprintf(full, sizeof(full), "%s/%s", path, e->d_name);
    add_file(full);
  }
  closedir(d);
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t next(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

static const char *const tokens[] = {
    "\r\n", "\r\n\r\n", " ", ":", "GET ", "HEAD ", "POST ", "HTTP/1.1",
    "HTTP/1.0", "Content-Length: 3\r\n", "Transfer-Encoding: chunked\r\n",
    "Connection: close\r\n", "Connection: keep-alive\r\n", "0\r\n\r\n",
    "/metrics", "/stats.json", "\n", "\0", "\xff"};

/* Byte flips, token inserts, cuts and duplications of a seed. */
static size_t mutate(const input_t *seed, uint8_t *dst, size_t cap) {
  size_t len = seed->len < cap ? seed->len : cap;
  int rounds = 1 + (int)(next() % 4);
  memcpy(dst, seed->data, len);
  while (rounds-- > 0) {
    size_t pos = len ? next() % (len + 1) : 0;
    switch (next() % 5) {
    case 0:
      if (len)
        dst[pos % len] ^= (uint8_t)(1u << (next() % 8));
      break;
    case 1: {
      const char *t = tokens[next() % (sizeof(tokens) / sizeof(tokens[0]))];
      size_t tl = strlen(t) ? strlen(t) : 1;
      if (len + tl <= cap) {
        memmove(dst + pos + tl, dst + pos, len - pos);
        memcpy(dst + pos, t, tl);
        len += tl;
      }
      break;
    }
    case 2:
      len = pos;
      break;
    case 3:
      if (len && len * 2 <= cap) {
        memcpy(dst + len, dst, len);
        len *= 2;
      }
      break;
    default:
      if (len)
        dst[0] = (uint8_t)next();
      break;
    }
  }
  return len;
}

int main(int argc, char **argv) {
  const char *env = getenv("FUZZ_HTTP_ITERS");
  long iters = env ? atol(env) : 20000;
  static uint8_t buf[16384];
  for (int i = 1; i < argc; i++)
    add_path(argv[i]);
  for (size_t i = 0; i < ninputs; i++)
    LLVMFuzzerTestOneInput(inputs[i].data, inputs[i].len);
  for (long i = 0; i < iters && ninputs; i++) {
    size_t n = mutate(&inputs[next() % ninputs], buf, sizeof(buf));
    LLVMFuzzerTestOneInput(buf, n);
  }
  printf("fuzz-http: %zu inputs replayed, %ld mutations, %llu responses\n",
         ninputs, ninputs ? iters : 0, (unsigned long long)responses_total());
  for (size_t i = 0; i < ninputs; i++)
    free(inputs[i].data);
  free(inputs);
  http_buf_free(&out);
  http_ctx_free(&ctx);
  return 0;
}

#endif
