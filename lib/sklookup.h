/* BPF sk_lookup steering of a prefix to one socket (sklookup.c). Not
 * installed.
 * SPDX-License-Identifier: MIT */
#ifndef UVIP_SKLOOKUP_H
#define UVIP_SKLOOKUP_H

#include "internal.h"

typedef struct uvip__sklookup {
  int map_fd, prog_fd, link_fd; /* -1 when not open */
} uvip__sklookup_t;

/* All descriptors -1. */
void uvip__sklookup_init(uvip__sklookup_t *k);
/* Loads the program for TCP connections to prefix p on port and attaches
 * it to the calling thread's network namespace. On error nothing stays
 * open, and errbuf says which step the kernel refused and why (UV_EPERM
 * without CAP_BPF/CAP_NET_ADMIN). */
int uvip__sklookup_new(uvip__sklookup_t *k, const uvip_prefix_t *p, int port,
                       char *errbuf, size_t errlen);
/* Makes fd (a listening TCP socket) the one the prefix is steered to. */
int uvip__sklookup_set(uvip__sklookup_t *k, int fd);
/* Detaches and closes; safe on an initialised, unopened one. */
void uvip__sklookup_free(uvip__sklookup_t *k);

#endif /* UVIP_SKLOOKUP_H */
