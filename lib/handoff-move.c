/* Moving idle connections to an independent new process (one that fetched
 * the listeners over the hand-off socket, uvip_handoff_fetch()). There is
 * no channel set up at start as with a re-exec, so the running process
 * makes one when the new process has taken over (said ready keeping its
 * connection, and lived through its probation if there is one): a
 * SOCK_SEQPACKET pair, one end sent over the hand-off connection by
 * SCM_RIGHTS. On it the same hand-over runs as for a re-exec (handover.c
 * sends, moved.c receives).
 * SPDX-License-Identifier: MIT */
#include "restart-internal.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#define MOVE_MAGIC 0x75766d76u /* "uvmv" */

typedef struct {
  uint32_t magic;
  uint32_t reserved[3];
} move_hdr_t;

int uvip__handoff_send_channel(int conn) {
  move_hdr_t hdr;
  struct iovec iov = {&hdr, sizeof(hdr)};
  int sp[2];
  ssize_t r;
  memset(&hdr, 0, sizeof(hdr));
  hdr.magic = MOVE_MAGIC;
  /* Message boundaries kept by the kernel: one connection per message. */
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0,
                 sp) != 0)
    return -1;
  r = uvip__send_fds(conn, &iov, 1, &sp[1], 1);
  close(sp[1]);
  if (r != (ssize_t)sizeof(hdr)) {
    /* Gone already, or it did not keep its connection: nothing moves. */
    close(sp[0]);
    return -1;
  }
  return sp[0];
}

UVIP_EXPORT int uvip_handoff_channel(int conn, int *chan) {
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int) * 4)];
  } ctl;
  move_hdr_t hdr;
  struct iovec iov = {&hdr, sizeof(hdr)};
  struct msghdr m;
  struct cmsghdr *cm;
  int fd = -1, extra = 0;
  ssize_t n;
  UVIP_CHECK_ARG(conn < 0 || chan == NULL);
  *chan = -1;
  memset(&m, 0, sizeof(m));
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = ctl.buf;
  m.msg_controllen = sizeof(ctl.buf);
  do
    n = recvmsg(conn, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n < 0)
    return errno == EAGAIN || errno == EWOULDBLOCK ? UV_EAGAIN : -errno;
  if (n == 0)
    return UV_EOF;
  /* Every descriptor that came is ours to close unless it is the one. */
  for (cm = CMSG_FIRSTHDR(&m); cm; cm = CMSG_NXTHDR(&m, cm))
    if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS)
      for (size_t i = 0; i < (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
           i++) {
        int x;
        memcpy(&x, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
        if (fd < 0)
          fd = x;
        else {
          close(x);
          extra++;
        }
      }
  if (n != (ssize_t)sizeof(hdr) || hdr.magic != MOVE_MAGIC || fd < 0 ||
      extra || (m.msg_flags & MSG_CTRUNC)) {
    if (fd >= 0)
      close(fd);
    return UV_EPROTO;
  }
  *chan = fd;
  return 0;
}
