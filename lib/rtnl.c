/* rtnetlink through libmnl: interface addresses (list, add, remove) and
 * address-message parsing.
 * SPDX-License-Identifier: MIT */
#include "rtnl.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if_addr.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <stdlib.h>
#include <string.h>

/* Big enough for any dump message the kernel builds (it sizes dump skbs up
 * to 32 KiB; a smaller buffer would truncate them). */
#define RTNL_DUMP_BUFSIZE 32768

/* Every request gets a distinct sequence number so that a stale answer (a
 * previous request's on the same socket) is never taken for the current
 * one's. */
static unsigned int rtnl_next_seq(void) {
  static unsigned int seq;
  return __atomic_add_fetch(&seq, 1, __ATOMIC_RELAXED);
}

int uvip__rtnl_ifindex(const char *ifname, unsigned int *out) {
  size_t len = strlen(ifname);
  if (len == 0 || len >= IF_NAMESIZE || strchr(ifname, '/'))
    return UV_EINVAL;
  unsigned int idx = if_nametoindex(ifname);
  if (idx == 0)
    return (errno == ENODEV || errno == ENXIO || errno == 0) ? UV_ENODEV
                                                             : -errno;
  *out = idx;
  return 0;
}

int uvip__rtnl_open(unsigned int groups, int nonblock,
                    struct mnl_socket **out) {
  struct mnl_socket *nl = mnl_socket_open2(
      NETLINK_ROUTE, SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0));
  if (nl == NULL)
    return -errno;
  if (mnl_socket_bind(nl, groups, MNL_SOCKET_AUTOPID) < 0) {
    int err = -errno;
    mnl_socket_close(nl);
    return err;
  }
  /* Extended acks carry the kernel's own explanation of a refusal, which
   * ends up in the caller's errbuf. Old kernels lack it: not an error. */
  int one = 1;
  (void)mnl_socket_setsockopt(nl, NETLINK_EXT_ACK, &one, sizeof(one));
  /* Acks need not echo our request back. */
  (void)mnl_socket_setsockopt(nl, NETLINK_CAP_ACK, &one, sizeof(one));
  *out = nl;
  return 0;
}

static int addr_attr_cb(const struct nlattr *attr, void *data) {
  const struct nlattr **tb = data;
  int type = mnl_attr_get_type(attr);
  if (mnl_attr_type_valid(attr, IFA_MAX) < 0)
    return MNL_CB_OK; /* newer kernel attribute: ignore */
  tb[type] = attr;
  return MNL_CB_OK;
}

int uvip__rtnl_parse_addr(const struct nlmsghdr *nlh, uvip__ifaddr_t *out) {
  if (nlh->nlmsg_type != RTM_NEWADDR && nlh->nlmsg_type != RTM_DELADDR)
    return UV_EINVAL;
  if (mnl_nlmsg_get_payload_len(nlh) < sizeof(struct ifaddrmsg))
    return UV_EINVAL;
  const struct ifaddrmsg *ifa = mnl_nlmsg_get_payload(nlh);
  size_t alen;
  if (ifa->ifa_family == AF_INET)
    alen = 4;
  else if (ifa->ifa_family == AF_INET6)
    alen = 16;
  else
    return UV_EAFNOSUPPORT;

  const struct nlattr *tb[IFA_MAX + 1];
  memset(tb, 0, sizeof(tb));
  if (mnl_attr_parse(nlh, sizeof(*ifa), addr_attr_cb, tb) != MNL_CB_OK)
    return UV_EINVAL;
  /* On point-to-point links IFA_ADDRESS is the peer; IFA_LOCAL is ours. */
  const struct nlattr *a = tb[IFA_LOCAL] ? tb[IFA_LOCAL] : tb[IFA_ADDRESS];
  if (a == NULL || mnl_attr_get_payload_len(a) != alen)
    return UV_EINVAL;

  memset(out, 0, sizeof(*out));
  out->ifindex = ifa->ifa_index;
  out->prefixlen = ifa->ifa_prefixlen;
  out->flags = ifa->ifa_flags;
  if (tb[IFA_FLAGS] && mnl_attr_get_payload_len(tb[IFA_FLAGS]) == 4)
    out->flags = mnl_attr_get_u32(tb[IFA_FLAGS]);
  if (alen == 4) {
    out->addr.in.sin_family = AF_INET;
    memcpy(&out->addr.in.sin_addr, mnl_attr_get_payload(a), 4);
  } else {
    out->addr.in6.sin6_family = AF_INET6;
    memcpy(&out->addr.in6.sin6_addr, mnl_attr_get_payload(a), 16);
    if (IN6_IS_ADDR_LINKLOCAL(&out->addr.in6.sin6_addr))
      out->addr.in6.sin6_scope_id = ifa->ifa_index;
  }
  return 0;
}

typedef struct {
  uvip__rtnl_addr_cb cb;
  void *arg;
  int err;         /* the callback's error, if any */
  bool interrupted; /* NLM_F_DUMP_INTR seen: the dump is inconsistent */
} dump_ctx_t;

static int dump_msg_cb(const struct nlmsghdr *nlh, void *data) {
  dump_ctx_t *ctx = data;
  uvip__ifaddr_t a;
  /* After a callback error the rest of the dump is read and dropped so
   * that the socket stays usable for the next request. */
  if (ctx->err == 0 && uvip__rtnl_parse_addr(nlh, &a) == 0)
    ctx->err = ctx->cb(ctx->arg, &a);
  return MNL_CB_OK;
}

static int dump_once(struct mnl_socket *nl, char *buf, dump_ctx_t *ctx) {
  struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
  nlh->nlmsg_type = RTM_GETADDR;
  nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  nlh->nlmsg_seq = rtnl_next_seq();
  struct ifaddrmsg *ifa = mnl_nlmsg_put_extra_header(nlh, sizeof(*ifa));
  ifa->ifa_family = AF_UNSPEC;
  unsigned int seq = nlh->nlmsg_seq;
  unsigned int portid = mnl_socket_get_portid(nl);

  if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0)
    return -errno;
  for (;;) {
    ssize_t n = mnl_socket_recvfrom(nl, buf, RTNL_DUMP_BUFSIZE);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    /* libmnl fails a message marked NLM_F_DUMP_INTR with EINTR (and the
     * kernel marks the rest of the dump, NLMSG_DONE included), which would
     * end the dump with an error instead of redoing it, and leave its rest
     * queued on the socket. Noted here and cleared, the dump is read to
     * its end and then redone. */
    int left = (int)n;
    for (struct nlmsghdr *m = (struct nlmsghdr *)buf; mnl_nlmsg_ok(m, left);
         m = mnl_nlmsg_next(m, &left)) {
      if (m->nlmsg_flags & NLM_F_DUMP_INTR) {
        ctx->interrupted = true;
        m->nlmsg_flags &= ~NLM_F_DUMP_INTR;
      }
    }
    int r = mnl_cb_run(buf, (size_t)n, seq, portid, dump_msg_cb, ctx);
    if (r == MNL_CB_STOP)
      return 0;
    if (r == MNL_CB_ERROR)
      return errno ? -errno : UV_EIO;
  }
}

int uvip__rtnl_dump(struct mnl_socket *nl, uvip__rtnl_addr_cb cb, void *arg) {
  char *buf = malloc(RTNL_DUMP_BUFSIZE);
  if (buf == NULL)
    return UV_ENOMEM;
  int r = 0;
  /* A dump that raced with a change is redone; after a few tries the
   * address table is changing too fast to be read consistently. */
  for (int attempt = 0; attempt < 8; attempt++) {
    dump_ctx_t ctx = {cb, arg, 0, false};
    if (attempt > 0 && (r = cb(arg, NULL)) != 0)
      break;
    r = dump_once(nl, buf, &ctx);
    if (r == 0)
      r = ctx.err;
    if (r != 0 || !ctx.interrupted)
      break;
    r = UV_EAGAIN;
  }
  free(buf);
  return r;
}

static void copy_ext_ack(const struct nlmsghdr *nlh,
                         const struct nlmsgerr *err, char *msg,
                         size_t msglen) {
  if (!(nlh->nlmsg_flags & NLM_F_ACK_TLVS))
    return;
  size_t off = sizeof(*err);
  if (!(nlh->nlmsg_flags & NLM_F_CAPPED))
    off += mnl_nlmsg_get_payload_len(&err->msg);
  const struct nlattr *attr;
  mnl_attr_for_each(attr, nlh, off) {
    if (mnl_attr_get_type(attr) == NLMSGERR_ATTR_MSG &&
        mnl_attr_validate(attr, MNL_TYPE_NUL_STRING) == 0) {
      snprintf(msg, msglen, "%s", mnl_attr_get_str(attr));
      return;
    }
  }
}

/* Reads until the answer to seq. rtnetlink handles a request while it is
 * being sent, so the answer is already queued and this does not block for
 * long. */
static int wait_ack(struct mnl_socket *nl, unsigned int seq, char *msg,
                    size_t msglen) {
  _Alignas(8) char buf[8192];
  for (;;) {
    ssize_t n = mnl_socket_recvfrom(nl, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    int left = (int)n;
    for (const struct nlmsghdr *nlh = (const struct nlmsghdr *)buf;
         mnl_nlmsg_ok(nlh, left); nlh = mnl_nlmsg_next(nlh, &left)) {
      if (nlh->nlmsg_seq != seq || nlh->nlmsg_type != NLMSG_ERROR)
        continue;
      if (mnl_nlmsg_get_payload_len(nlh) < sizeof(struct nlmsgerr))
        return UV_EIO;
      const struct nlmsgerr *err = mnl_nlmsg_get_payload(nlh);
      if (err->error != 0 && msg != NULL)
        copy_ext_ack(nlh, err, msg, msglen);
      /* The kernel's error is a negative errno, as UV_E* codes are. */
      return err->error;
    }
  }
}

int uvip__rtnl_change(struct mnl_socket *nl, int add, const uvip__ifaddr_t *a,
                      char *msg, size_t msglen) {
  _Alignas(8) char buf[512];
  if (msg != NULL && msglen > 0)
    msg[0] = '\0';

  struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
  nlh->nlmsg_type = add ? RTM_NEWADDR : RTM_DELADDR;
  nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
  /* EXCL: an address that appeared since we looked must be reported as
   * someone else's, not silently taken over. */
  if (add)
    nlh->nlmsg_flags |= NLM_F_CREATE | NLM_F_EXCL;
  nlh->nlmsg_seq = rtnl_next_seq();

  struct ifaddrmsg *ifa = mnl_nlmsg_put_extra_header(nlh, sizeof(*ifa));
  int family = a->addr.sa.sa_family;
  const void *bytes;
  size_t alen;
  if (family == AF_INET) {
    bytes = &a->addr.in.sin_addr;
    alen = 4;
  } else if (family == AF_INET6) {
    bytes = &a->addr.in6.sin6_addr;
    alen = 16;
  } else {
    return UV_EAFNOSUPPORT;
  }
  ifa->ifa_family = (unsigned char)family;
  ifa->ifa_prefixlen = (unsigned char)a->prefixlen;
  ifa->ifa_flags = (unsigned char)(a->flags & 0xff);
  ifa->ifa_scope = RT_SCOPE_UNIVERSE;
  ifa->ifa_index = a->ifindex;
  mnl_attr_put(nlh, IFA_LOCAL, alen, bytes);
  mnl_attr_put(nlh, IFA_ADDRESS, alen, bytes);
  if (add && a->flags > 0xff)
    mnl_attr_put_u32(nlh, IFA_FLAGS, a->flags);

  unsigned int seq = nlh->nlmsg_seq;
  if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0)
    return -errno;
  return wait_ack(nl, seq, msg, msglen);
}

int uvip__ip_cmp(const struct sockaddr *a, const struct sockaddr *b) {
  if (a->sa_family != b->sa_family)
    return a->sa_family < b->sa_family ? -1 : 1;
  if (a->sa_family == AF_INET)
    return memcmp(&((const struct sockaddr_in *)a)->sin_addr,
                  &((const struct sockaddr_in *)b)->sin_addr, 4);
  return memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
                &((const struct sockaddr_in6 *)b)->sin6_addr, 16);
}

/* ------------------------------------------------------------------------ */
/* Local routes for prefix pools                                            */
/* ------------------------------------------------------------------------ */

int uvip__rtnl_route_type(struct mnl_socket *nl, int family, const void *addr,
                          unsigned int *type) {
  _Alignas(8) char buf[8192];
  size_t alen = family == AF_INET ? 4 : 16;
  struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
  nlh->nlmsg_type = RTM_GETROUTE;
  nlh->nlmsg_flags = NLM_F_REQUEST;
  nlh->nlmsg_seq = rtnl_next_seq();
  struct rtmsg *rtm = mnl_nlmsg_put_extra_header(nlh, sizeof(*rtm));
  rtm->rtm_family = (unsigned char)family;
  rtm->rtm_dst_len = (unsigned char)(alen * 8);
  mnl_attr_put(nlh, RTA_DST, alen, addr);
  unsigned int seq = nlh->nlmsg_seq;
  if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0)
    return -errno;
  for (;;) {
    ssize_t n = mnl_socket_recvfrom(nl, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    int left = (int)n;
    for (const struct nlmsghdr *m = (const struct nlmsghdr *)buf;
         mnl_nlmsg_ok(m, left); m = mnl_nlmsg_next(m, &left)) {
      if (m->nlmsg_seq != seq)
        continue;
      if (m->nlmsg_type == NLMSG_ERROR) {
        /* No route at all (ENETUNREACH): not local either. */
        const struct nlmsgerr *err = mnl_nlmsg_get_payload(m);
        if (mnl_nlmsg_get_payload_len(m) < sizeof(*err))
          return UV_EIO;
        if (err->error == 0)
          continue;
        *type = RTN_UNREACHABLE;
        return err->error == UV_ENETUNREACH || err->error == UV_EHOSTUNREACH
                   ? 0
                   : err->error;
      }
      if (m->nlmsg_type == RTM_NEWROUTE &&
          mnl_nlmsg_get_payload_len(m) >= sizeof(struct rtmsg)) {
        *type = ((const struct rtmsg *)mnl_nlmsg_get_payload(m))->rtm_type;
        return 0;
      }
    }
  }
}

int uvip__rtnl_local_route(struct mnl_socket *nl, int add,
                           const uvip_prefix_t *p, unsigned int ifindex,
                           char *msg, size_t msglen) {
  _Alignas(8) char buf[512];
  if (msg != NULL && msglen > 0)
    msg[0] = '\0';
  struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
  nlh->nlmsg_type = add ? RTM_NEWROUTE : RTM_DELROUTE;
  nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
  /* EXCL: a route that is already there is someone else's, and must be
   * reported as such rather than taken over (and later removed). */
  if (add)
    nlh->nlmsg_flags |= NLM_F_CREATE | NLM_F_EXCL;
  nlh->nlmsg_seq = rtnl_next_seq();
  struct rtmsg *rtm = mnl_nlmsg_put_extra_header(nlh, sizeof(*rtm));
  rtm->rtm_family = (unsigned char)p->family;
  rtm->rtm_dst_len = (unsigned char)p->len;
  rtm->rtm_table = RT_TABLE_LOCAL;
  /* What "ip route add local" sets, but static: ours are told apart from
   * the kernel's own (proto kernel) local routes. */
  rtm->rtm_protocol = RTPROT_STATIC;
  rtm->rtm_scope = RT_SCOPE_HOST;
  rtm->rtm_type = RTN_LOCAL;
  mnl_attr_put(nlh, RTA_DST, p->family == AF_INET ? 4 : 16, &p->addr);
  mnl_attr_put_u32(nlh, RTA_OIF, ifindex);
  unsigned int seq = nlh->nlmsg_seq;
  if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0)
    return -errno;
  return wait_ack(nl, seq, msg, msglen);
}
