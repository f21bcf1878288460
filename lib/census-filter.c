/* Census: inet_diag bytecode. A dump's filter is the AND of two parts: the
 * shard split (which of the census's parallel dumps gets a socket) and the
 * VIP address chain (which local addresses are wanted).
 *
 * The kernel runs the bytecode op by op: a condition that holds falls
 * through to the next op (`yes` is its own length), one that fails jumps
 * `no` bytes ahead; JMP always jumps `no` bytes. Reaching the end exactly
 * accepts the socket, jumping past it (end + 4) rejects it. The kernel's
 * audit wants every jump target on the chain of `yes` steps from the
 * start, which this layout (everything sequential) gives.
 * SPDX-License-Identifier: MIT */
#include <linux/inet_diag.h>
#include <string.h>

#include "census-internal.h"

/* Appends one S_COND op; the JMP glue is added by put_addrs(). */
static size_t put_cond(char *p, const uvip__akey_t *k) {
  struct inet_diag_bc_op *op = (struct inet_diag_bc_op *)p;
  struct inet_diag_hostcond *hc = (struct inet_diag_hostcond *)(op + 1);
  size_t alen = k->fam == AF_INET6 ? 16 : 4;
  size_t len = sizeof(*op) + sizeof(*hc) + alen;
  memset(p, 0, len); /* hostcond has padding: send no stray bytes */
  op->code = INET_DIAG_BC_S_COND;
  op->yes = (unsigned char)len;
  op->no = (unsigned short)(len + 4);
  hc->family = k->fam;
  hc->prefix_len = (uint8_t)(alen * 8);
  hc->port = -1;
  memcpy(hc + 1, k->a, alen);
  return len;
}

/* "local address is one of the filter's, or a wildcard", as an OR chain
 * built the way ss builds one: COND, JMP over the rest on a match. It must
 * come last (its jumps accept by reaching the end). Returns the length, 0
 * when no bytecode is worth sending; out has room for cap bytes. */
static size_t put_addrs(const uvip__bc_spec_t *sp, char *out, size_t cap) {
  uvip__akey_t wild;
  size_t n = 0, conds = 0;
  const uvip__akey_t *list[UVIP__BC_MAX_ADDRS + 1];

  if (sp->nfilter == 0 || sp->nfilter > UVIP__BC_MAX_ADDRS)
    return 0;
  for (size_t i = 0; i < sp->nfilter; i++) {
    /* IPv4 conditions also match IPv4-mapped sockets in the IPv6 dump. */
    if (sp->filter[i].fam == sp->fam || sp->fam == AF_INET6)
      list[conds++] = &sp->filter[i];
  }
  memset(&wild, 0, sizeof(wild));
  wild.fam = (uint8_t)sp->fam;
  list[conds++] = &wild;

  /* Right-nested: cond_0 JMP (cond_1 JMP (... cond_k)). Each JMP skips to
   * the end (accept); a failed cond skips its JMP; the last one's "no"
   * jumps past the end (reject). Sizes: op 4, hostcond 8, address. */
  size_t total = 0;
  for (size_t i = 0; i < conds; i++)
    total += 12 + (list[i]->fam == AF_INET6 ? 16 : 4) + (i + 1 < conds ? 4 : 0);
  if (total > cap)
    return 0;
  for (size_t i = 0; i < conds; i++) {
    n += put_cond(out + n, list[i]);
    if (i + 1 < conds) {
      struct inet_diag_bc_op *j = (struct inet_diag_bc_op *)(out + n);
      j->code = INET_DIAG_BC_JMP;
      j->yes = 4;
      j->no = (unsigned short)(total - n);
      n += 4;
    }
  }
  return n;
}

/* The split. With thresholds T_1 < ... < T_{N-1} dividing the ephemeral
 * range into N equal parts, a port's bucket b(p) is the number of
 * thresholds <= p (ports below the range are in bucket 0, above it in
 * N - 1), and a socket belongs to shard (b(sport) + b(dport)) mod N. For
 * N = 2 that is "(sport < M) == (dport < M)" for shard 0, M the middle of
 * the range. A server's sockets (sport fixed, dport ephemeral) and a
 * client's (dport fixed, sport ephemeral) both spread evenly, whatever the
 * ports. Every socket is in exactly one shard whatever the thresholds:
 * they only decide the balance. */
static unsigned threshold(const uvip__bc_spec_t *sp, int i) {
  long span = (long)sp->port_hi - sp->port_lo + 1;
  return (unsigned)(sp->port_lo + span * i / sp->nshards);
}

/* Number of port comparisons that pin a port into bucket b. */
static int bucket_conds(int nshards, int b) {
  return (b > 0) + (b < nshards - 1);
}

/* Writes the comparisons "port in bucket b" (source or destination port);
 * each failed one jumps to fail, an offset from the start of out. */
static size_t put_bucket(const uvip__bc_spec_t *sp, int dst, int b, char *out,
                         size_t at, size_t fail) {
  size_t n = 0;
  for (int k = 0; k < 2; k++) {
    struct inet_diag_bc_op *op = (struct inet_diag_bc_op *)(out + at + n);
    unsigned port;
    if (k == 0 && b > 0) { /* p >= T_b */
      op->code = dst ? INET_DIAG_BC_D_GE : INET_DIAG_BC_S_GE;
      port = threshold(sp, b);
    } else if (k == 1 && b < sp->nshards - 1) { /* p <= T_{b+1} - 1 */
      op->code = dst ? INET_DIAG_BC_D_LE : INET_DIAG_BC_S_LE;
      port = threshold(sp, b + 1) - 1;
    } else {
      continue;
    }
    op[0].yes = 8;
    op[0].no = (unsigned short)(fail - (at + n));
    op[1].code = 0;
    op[1].yes = 0;
    op[1].no = (unsigned short)port;
    n += 8;
  }
  return n;
}

/* Shard s: OR over b of (b(sport) = b AND b(dport) = (s - b) mod N), one
 * block per b; a block that matches jumps to the end of the split, one
 * that fails goes on to the next block; failing the last rejects. reject
 * is the offset of "past the end of the whole bytecode". */
static size_t put_split(const uvip__bc_spec_t *sp, char *out, size_t tail) {
  int N = sp->nshards;
  size_t len = 0, at = 0;
  for (int b = 0; b < N; b++) {
    int d = ((sp->shard - b) % N + N) % N;
    len += 8 * (size_t)(bucket_conds(N, b) + bucket_conds(N, d)) +
           (b < N - 1 ? 4 : 0);
  }
  size_t reject = len + tail + 4;
  for (int b = 0; b < N; b++) {
    int d = ((sp->shard - b) % N + N) % N;
    size_t blen = 8 * (size_t)(bucket_conds(N, b) + bucket_conds(N, d)) +
                  (b < N - 1 ? 4 : 0);
    size_t fail = b < N - 1 ? at + blen : reject;
    size_t n = at;
    n += put_bucket(sp, 0, b, out, n, fail);
    n += put_bucket(sp, 1, d, out, n, fail);
    if (b < N - 1) {
      struct inet_diag_bc_op *j = (struct inet_diag_bc_op *)(out + n);
      j->code = INET_DIAG_BC_JMP;
      j->yes = 4;
      j->no = (unsigned short)(len - n);
      n += 4;
    }
    at = n;
  }
  return len;
}

size_t uvip__census_bytecode(const uvip__bc_spec_t *sp, char *out,
                             int *with_addrs) {
  size_t split_max = sp->nshards > 1 ? 36 * (size_t)sp->nshards : 0;
  size_t alen, slen = 0;
  char addrs[(UVIP__BC_MAX_ADDRS + 1) * 32];

  /* The address chain goes after the split (it accepts by reaching the
   * end), so it is built first to know its length. */
  alen = put_addrs(sp, addrs, sizeof(addrs));
  if (alen + split_max > UVIP__BC_CAP)
    alen = 0; /* cannot happen with the caps above; the split must fit */
  if (sp->nshards > 1 && sp->shard >= 0 && sp->shard < sp->nshards &&
      sp->nshards <= UVIP_CENSUS_SHARDS_MAX)
    slen = put_split(sp, out, alen);
  memcpy(out + slen, addrs, alen);
  if (with_addrs)
    *with_addrs = alen > 0;
  return slen + alen;
}
