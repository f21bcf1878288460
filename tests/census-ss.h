/* Census test helpers: cross-checks against `ss` and workload builders.
 * SPDX-License-Identifier: MIT */
#ifndef UVIP_TEST_CENSUS_SS_H
#define UVIP_TEST_CENSUS_SS_H

#include <stdint.h>
#include <uvip.h>

/* Moves the calling (forked) test into a fresh network namespace with lo
 * up, so that nothing but the test's own sockets is counted. The process
 * must already have passed th_enter_netns_or_skip(). */
void cs_fresh_netns(void);

/* For tests that sample on the libuv threadpool: the pool's threads stay
 * in the namespace where they started, so a process (CK_FORK=no, as under
 * valgrind) must keep the first namespace it made for them. Enters a fresh
 * namespace on the first call in a process, stays on later calls. */
void cs_fresh_netns_once(void);

/* Writes a sysctl (only ever inside the test's own namespace). */
void cs_sysctl(const char *path, const char *value);

/* Fails the test unless every VIP row, listener and tuple of the census
 * equals what `ss -tanH` shows for the same addresses: counts by state,
 * inbound/outbound, Recv-Q/Send-Q of listeners, sockets per outbound
 * (local, remote:port) tuple. The census must be unfiltered and the
 * namespace quiescent. Returns the number of ss lines compared. */
int cs_compare_with_ss(const uvip_census_t *census);

/* The count in a census row for an address ("127.77.0.1"), state and
 * direction (1 inbound, 0 outbound); fails the test if there is no row. */
uint64_t cs_row(const uvip_census_t *census, const char *addr, int state,
                int inbound);

/* A listening socket on ip:port with the given backlog; returns the fd. */
int cs_listen(const char *ip, int port, int backlog);

/* A blocking connect from src (port 0; IP_BIND_ADDRESS_NO_PORT so the
 * port is chosen per destination) to dst:port. Returns the fd, or -errno
 * when connect fails. */
int cs_connect_from(const char *src, const char *dst, int port, int nonblock);

/* Closes with an RST (SO_LINGER 0): no TIME_WAIT is left behind. */
void cs_abort(int fd);

/* Samples until no socket of the namespace is in FIN_WAIT1/2, CLOSE_WAIT,
 * LAST_ACK or CLOSING (a close handshake still in flight on loopback), at
 * most max_tries times; fails the test if it does not settle. */
void cs_sample_settled(uvip_census_t *census, int max_tries);

#endif
