/* uvip: inherited listeners and socket activation. Included by <uvip.h>;
 * do not include directly.
 * SPDX-License-Identifier: MIT
 *
 * A restart that closes its listeners refuses every connection that comes
 * while no process listens. Handing the listening sockets to the next
 * process instead (systemd socket activation, a re-exec, a new process that
 * fetches them) keeps the kernel's accept queues alive across the restart:
 * nothing is refused. This part adopts such sockets into a server.
 */
#ifndef UVIP_RESTART_H
#define UVIP_RESTART_H

#ifdef __cplusplus
extern "C" {
#endif

/* systemd's socket activation protocol (sd_listen_fds(3)), implemented on
 * its three environment variables so that libsystemd is not needed: when
 * LISTEN_PID is this process, LISTEN_FDS descriptors starting at 3 were
 * passed to it, named by the colon-separated LISTEN_FDNAMES.
 *
 * Stores in *n the number of descriptors passed (0 when LISTEN_FDS is not
 * set: not socket-activated) and, when fds is not NULL, up to max of them.
 * Every passed descriptor gets FD_CLOEXEC. With unset_env the three
 * variables are removed, so that children do not take the descriptors for
 * theirs. Errors: UV_EINVAL (n NULL, or LISTEN_FDS / LISTEN_PID not a
 * number, or more than 65,536 descriptors), UV_ESRCH (LISTEN_PID names
 * another process: the descriptors are not ours; nothing is touched),
 * UV_EBADF (a passed descriptor is not open). */
int uvip_listen_fds(int unset_env, int *fds, size_t max, size_t *n);

/* Adopts listening sockets for the server's VIPs, before
 * uvip_server_listen(): a VIP whose address (getsockname()) equals an
 * adopted socket's listens on that socket instead of binding a new one;
 * VIPs without one are bound as usual. The server's caps, scheduler and
 * counters start fresh; socket options already set on the adopted sockets
 * are kept (uvip sets O_NONBLOCK and FD_CLOEXEC only).
 *
 * Every descriptor is checked first: it must be a socket (else
 * UV_ENOTSOCK), of type SOCK_STREAM (UV_EPROTOTYPE), of family AF_INET or
 * AF_INET6 (UV_EAFNOSUPPORT), and listening (UV_EINVAL). On any such error
 * nothing is taken (the caller still owns every descriptor) and errbuf, when
 * given, names the descriptor and the reason. On success the server owns
 * all of them: those that match no VIP, and second sockets for a VIP that
 * already has one, are closed, and their number is stored in *extra (extra
 * may be NULL). UV_EALREADY once the server listens. */
int uvip_server_adopt(uvip_server_t *server, const int *fds, size_t n,
                      size_t *extra, char *errbuf, size_t errlen);

/* 1 when the VIP listens (or will listen) on an adopted socket, 0 when uvip
 * bound it, UV_EINVAL for NULL. */
int uvip_vip_adopted(const uvip_vip_t *vip);

#ifdef __cplusplus
}
#endif

#endif /* UVIP_RESTART_H */
