/* What /metrics shows when uvip-http runs workers.
 *
 * Workers may not call uvip_server_* or uvip_vip_* (the server belongs to
 * the acceptor's loop), and process workers do not even share its memory.
 * So the acceptor copies the VIP counters and the latest census rendering
 * into one shared anonymous mapping, created before the workers start, and
 * every worker copies its HTTP counters into its own slot there; a worker
 * answering /metrics renders from the mapping. A robust process-shared
 * mutex guards it, so a worker process that dies holding it cannot block
 * the others.
 *
 * SPDX-License-Identifier: MIT */
#include "http.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>

#define CENSUS_MAX (256 * 1024)

struct http_shared_s {
  pthread_mutex_t lock;
  /* Set by the acceptor on SIGTERM: workers stop gracefully on their next
   * tick. Lock-free atomics work across processes in a shared mapping. */
  atomic_int stopping;
  size_t nvips;
  unsigned int nworkers;
  http_shared_vip_t *vips;
  http_counters_t *workers;
  char *prom, *json; /* CENSUS_MAX each, NUL-terminated, "" when none */
  size_t size;
};

int http_shared_new(size_t nvips, unsigned int nworkers,
                    http_shared_t **out) {
  pthread_mutexattr_t ma;
  http_shared_t *sh;
  size_t size = sizeof(*sh) + nvips * sizeof(http_shared_vip_t) +
                nworkers * sizeof(http_counters_t) + 2 * CENSUS_MAX;
  char *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED)
    return UV_ENOMEM;
  sh = (http_shared_t *)(void *)p;
  sh->size = size;
  sh->nvips = nvips;
  sh->nworkers = nworkers;
  p += sizeof(*sh);
  sh->vips = (http_shared_vip_t *)(void *)p;
  p += nvips * sizeof(http_shared_vip_t);
  sh->workers = (http_counters_t *)(void *)p;
  p += nworkers * sizeof(http_counters_t);
  sh->prom = p;
  sh->json = p + CENSUS_MAX;
  pthread_mutexattr_init(&ma);
  pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
  pthread_mutex_init(&sh->lock, &ma);
  atomic_init(&sh->stopping, 0);
  pthread_mutexattr_destroy(&ma);
  *out = sh;
  return 0;
}

void http_shared_free(http_shared_t *sh) {
  if (!sh)
    return;
  pthread_mutex_destroy(&sh->lock);
  munmap(sh, sh->size);
}

void http_shared_lock(http_shared_t *sh) {
  if (pthread_mutex_lock(&sh->lock) == EOWNERDEAD)
    pthread_mutex_consistent(&sh->lock);
}

void http_shared_unlock(http_shared_t *sh) { pthread_mutex_unlock(&sh->lock); }

size_t http_shared_vip_count(const http_shared_t *sh) { return sh->nvips; }

const http_shared_vip_t *http_shared_vip(const http_shared_t *sh, size_t i) {
  return i < sh->nvips ? &sh->vips[i] : NULL;
}

const char *http_shared_census(const http_shared_t *sh, int json) {
  const char *s = json ? sh->json : sh->prom;
  return s[0] ? s : NULL;
}

void http_shared_counters(const http_shared_t *sh, http_counters_t *sum) {
  memset(sum, 0, sizeof(*sum));
  for (unsigned int w = 0; w < sh->nworkers; w++) {
    const http_counters_t *c = &sh->workers[w];
    sum->requests += c->requests;
    for (int k = 0; k < HTTP_NSTATUS; k++)
      sum->responses[k] += c->responses[k];
    sum->conns_total += c->conns_total;
    sum->conns_active += c->conns_active;
    sum->timeouts_header += c->timeouts_header;
    sum->timeouts_idle += c->timeouts_idle;
    sum->timeouts_request += c->timeouts_request;
    sum->write_stalls += c->write_stalls;
  }
}

void http_shared_set_stopping(http_shared_t *sh) {
  atomic_store(&sh->stopping, 1);
}

int http_shared_stopping(http_shared_t *sh) {
  return atomic_load(&sh->stopping);
}

void http_shared_publish_worker(http_shared_t *sh, unsigned int worker,
                                const http_counters_t *c) {
  if (worker >= sh->nworkers)
    return;
  http_shared_lock(sh);
  sh->workers[worker] = *c;
  http_shared_unlock(sh);
}

/* Copies a census rendering, cut at a line end when it does not fit. */
static void put_census(char *dst, const char *src) {
  size_t n = src ? strlen(src) : 0;
  if (n >= CENSUS_MAX) {
    n = CENSUS_MAX - 1;
    while (n > 0 && src[n - 1] != '\n')
      n--;
  }
  if (n)
    memcpy(dst, src, n);
  dst[n] = 0;
}

void http_shared_publish_server(http_shared_t *sh, uvip_server_t *server,
                                const char *prom, const char *json) {
  http_shared_lock(sh);
  for (size_t i = 0; i < sh->nvips; i++) {
    http_shared_vip_t *v = &sh->vips[i];
    uvip_vip_t *vip = server ? uvip_server_vip(server, i) : NULL;
    if (!vip || uvip_addr_format(uvip_vip_addr(vip), 1, v->addr,
                                 sizeof(v->addr)) != 0 ||
        uvip_vip_stats(vip, &v->stats) != 0) {
      v->addr[0] = 0;
      continue;
    }
    v->state = uvip_vip_state(vip);
  }
  put_census(sh->prom, prom);
  /* JSON cannot be cut: all or nothing. */
  if (json && strlen(json) < CENSUS_MAX)
    put_census(sh->json, json);
  else
    sh->json[0] = 0;
  http_shared_unlock(sh);
}
