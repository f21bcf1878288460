/* The longest gap of a 10 ms tick timer on an example's loop: how long the
 * loop was kept from running its timers (by a callback, or by the process
 * not being scheduled). Benchmarks set UVIP_LOOP_GAP=1 to have each
 * process print it at exit ("longest loop gap N ms", one line per
 * generation across upgrades); without the variable nothing runs.
 * SPDX-License-Identifier: MIT */
#ifndef UVIP_EX_LOOPGAP_H
#define UVIP_EX_LOOPGAP_H

#include <uv.h>

/* Starts the tick timer on loop (unreferenced: it never keeps uv_run()
 * going) when UVIP_LOOP_GAP is set and not "0". */
void ex_loopgap_start(uv_loop_t *loop);

/* Once uv_run() has returned: closes the timer, lets its close finish and
 * prints the longest gap. Nothing when it was not started. */
void ex_loopgap_stop(uv_loop_t *loop);

#endif
