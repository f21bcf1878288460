/* uvip: the PROXY protocol (HAProxy's specification, versions 1 and 2).
 * Included by <uvip.h>; do not include directly.
 * SPDX-License-Identifier: MIT
 *
 * A balancer in front of a server (HAProxy with send-proxy / send-proxy-v2,
 * AWS NLB, ...) sends one header before the client's bytes, saying where the
 * connection really came from and which address the client addressed. These
 * functions parse and write that header; they touch no socket.
 */
#ifndef UVIP_PROXY_H
#define UVIP_PROXY_H

#ifdef __cplusplus
extern "C" {
#endif

/* The longest header: a v1 line is at most 107 bytes; a v2 header is 16
 * bytes plus a length of up to 65,535. */
#define UVIP_PROXY_V1_MAX 107
#define UVIP_PROXY_V2_MAX (16 + 65535)
/* The longest v2 header a server with UVIP_PROXY_PROTOCOL accepts (TLVs
 * included): a socket waiting for its header holds at most this much
 * memory, so that a flood of them stays cheap. Balancers send a few dozen
 * bytes of TLVs. */
#define UVIP_PROXY_RECV_MAX 1024

typedef struct uvip_proxy_info_s {
  int version; /* 1 or 2 */
  /* 1 when the header carries the real addresses (v1 TCP4/TCP6, v2 PROXY
   * over TCP/IPv4 or IPv6); 0 for v1 UNKNOWN, v2 LOCAL (a balancer's own
   * health check) and v2 UNSPEC or other families: use the socket's own
   * addresses then. */
  int has_addrs;
  int local; /* v2 LOCAL command */
  struct sockaddr_storage src; /* the client (port included) */
  struct sockaddr_storage dst; /* the address the client connected to */
  /* v2 TLVs (type, length, value...), pointing into the parsed buffer. */
  const unsigned char *tlvs;
  size_t tlvs_len;
} uvip_proxy_info_t;

/* Parses a PROXY header at the start of buf (len bytes received so far).
 * Returns the header's length in bytes (> 0: the application's own bytes
 * start right after it), 0 when the bytes so far are a valid beginning but
 * more are needed, or an error: UV_EPROTO (not a PROXY header, or a
 * malformed one: bad signature, version, command, family, address, port,
 * or a v2 length too short for its addresses), UV_E2BIG (a v1 line without
 * its end within 107 bytes). Never reads past len. out may be NULL. */
int uvip_proxy_parse(const void *buf, size_t len, uvip_proxy_info_t *out);

/* Walks the TLVs of a v2 header: *off starts at 0. Returns 1 and fills
 * type, value and vlen for the next one, 0 at the end, UV_EPROTO if a TLV
 * runs past the end. */
int uvip_proxy_tlv_next(const uvip_proxy_info_t *info, size_t *off,
                        unsigned int *type, const unsigned char **value,
                        size_t *vlen);

/* Writes a version 1 or 2 PROXY header for a connection from src to dst
 * (both IPv4 or both IPv6; NULL for both writes v1 UNKNOWN / v2 LOCAL).
 * Returns the number of bytes written, or UV_EINVAL (bad version, mixed
 * families, one address NULL), UV_ENOBUFS (len too small: 108 bytes
 * always suffice for v1, 52 for v2). */
int uvip_proxy_write(int version, const struct sockaddr *src,
                     const struct sockaddr *dst, void *buf, size_t len);

#ifdef __cplusplus
}
#endif

#endif /* UVIP_PROXY_H */
