/* SPDX-License-Identifier: MIT */
#include "loopgap.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "common.h"

#define TICK_MS 10

static struct {
  uv_timer_t timer;
  bool started;
  uint64_t last_ns;
  uint64_t worst_ns;
} G;

static void on_tick(uv_timer_t *t) {
  (void)t;
  /* uv_hrtime(), not uv_now(): uv_now() is the loop's cached time, updated
   * only once per iteration, which is the very thing being measured. */
  uint64_t now = uv_hrtime();
  uint64_t gap = now - G.last_ns;
  if (gap > G.worst_ns)
    G.worst_ns = gap;
  G.last_ns = now;
}

void ex_loopgap_start(uv_loop_t *loop) {
  const char *v = getenv("UVIP_LOOP_GAP");
  if (G.started || v == NULL || v[0] == '\0' || (v[0] == '0' && v[1] == '\0'))
    return;
  if (uv_timer_init(loop, &G.timer) != 0)
    return;
  G.started = true;
  G.last_ns = uv_hrtime();
  uv_timer_start(&G.timer, on_tick, TICK_MS, TICK_MS);
  uv_unref((uv_handle_t *)&G.timer);
}

void ex_loopgap_stop(uv_loop_t *loop) {
  if (!G.started)
    return;
  G.started = false;
  uv_close((uv_handle_t *)&G.timer, NULL);
  uv_run(loop, UV_RUN_DEFAULT); /* nothing else is active: the close ends it */
  /* The gap beyond the tick itself: 0 means every tick came on time. */
  uint64_t worst_ms = G.worst_ns / 1000000;
  printf("%s: longest loop gap %llu ms\n", ex_prog,
         (unsigned long long)(worst_ms > TICK_MS ? worst_ms - TICK_MS : 0));
  fflush(stdout);
}
