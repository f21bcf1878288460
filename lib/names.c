/* Names of the public enums, for logs, metrics labels and JSON, so that
 * every program spells them the same way (uvip_tcp_state_name() is in
 * census.c with the census).
 * SPDX-License-Identifier: MIT */
#include "internal.h"
#include "uvip/census.h"

/* Indexed by uvip_vip_state_t. */
static const char *const vip_state_names[] = {
    [UVIP_VIP_IDLE] = "idle",         [UVIP_VIP_LISTENING] = "listening",
    [UVIP_VIP_FAILED] = "failed",     [UVIP_VIP_DRAINING] = "draining",
    [UVIP_VIP_STOPPED] = "stopped",   [UVIP_VIP_PAUSED] = "paused",
};

/* Indexed by uvip_event_kind_t, which starts at 1. */
static const char *const event_kind_names[] = {
    [UVIP_EVENT_PORTS] = "ports",
    [UVIP_EVENT_TIME_WAIT] = "time_wait",
    [UVIP_EVENT_LISTEN_QUEUE] = "listen_queue",
    [UVIP_EVENT_OVERFLOW] = "overflow",
    [UVIP_EVENT_EXHAUSTION] = "exhaustion",
};

#define NAMES_COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

UVIP_EXPORT const char *uvip_vip_state_name(int state) {
  if (state < 0 || state >= NAMES_COUNT(vip_state_names))
    return NULL;
  return vip_state_names[state];
}

UVIP_EXPORT const char *uvip_event_kind_name(int kind) {
  if (kind < 0 || kind >= NAMES_COUNT(event_kind_names))
    return NULL;
  return event_kind_names[kind]; /* NULL for 0 */
}
