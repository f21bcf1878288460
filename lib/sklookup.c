/* A BPF sk_lookup program (Linux 5.9) that steers the TCP connections
 * addressed to any address of a prefix on one port to one listening socket,
 * whatever address that socket is bound to, before the kernel's own lookup:
 * the port stays free on the host's other addresses (unlike a wildcard
 * listener) and nothing else bound on the port sees the prefix's traffic.
 *
 * Written as raw instructions through bpf(2) so that the library needs
 * neither libbpf nor clang at build time; the program is 20-odd
 * instructions:
 *
 *   if (ctx->family != FAMILY || ctx->protocol != IPPROTO_TCP ||
 *       ctx->local_port != PORT) return SK_PASS;
 *   for each 32-bit word w of the address with mask bits:
 *     if ((ctx->local_ip[w] & MASK[w]) != PREFIX[w]) return SK_PASS;
 *   sk = bpf_map_lookup_elem(&sockmap, &zero);    (the listener)
 *   if (sk) { bpf_sk_assign(ctx, sk, 0); bpf_sk_release(sk); }
 *   return SK_PASS;
 *
 * SK_PASS without a socket (the listener closed, paused) lets the kernel's
 * own lookup go on, so nothing is dropped that would not be anyway. Loading
 * needs CAP_BPF and CAP_NET_ADMIN (or CAP_SYS_ADMIN); the program runs on
 * every TCP and UDP socket lookup of the network namespace while attached.
 * SPDX-License-Identifier: MIT */
#include "sklookup.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static int sys_bpf(int cmd, union bpf_attr *attr) {
  int r = (int)syscall(__NR_bpf, cmd, attr, sizeof(*attr));
  return r < 0 ? -errno : r;
}

#define INSN(c, d, s, o, i)                                                    \
  ((struct bpf_insn){.code = (c), .dst_reg = (d), .src_reg = (s),             \
                     .off = (o), .imm = (i)})
#define LDX_W(d, s, o) INSN(BPF_LDX | BPF_MEM | BPF_W, d, s, o, 0)
#define JNE32_K(d, imm, o) INSN(BPF_JMP32 | BPF_JNE | BPF_K, d, 0, o, imm)
#define AND32_K(d, imm) INSN(BPF_ALU | BPF_AND | BPF_K, d, 0, 0, imm)
#define MOV64_X(d, s) INSN(BPF_ALU64 | BPF_MOV | BPF_X, d, s, 0, 0)
#define MOV64_K(d, imm) INSN(BPF_ALU64 | BPF_MOV | BPF_K, d, 0, 0, imm)
#define ADD64_K(d, imm) INSN(BPF_ALU64 | BPF_ADD | BPF_K, d, 0, 0, imm)
#define ST_W(d, o, imm) INSN(BPF_ST | BPF_MEM | BPF_W, d, 0, o, imm)
#define JEQ_K(d, imm, o) INSN(BPF_JMP | BPF_JEQ | BPF_K, d, 0, o, imm)
#define CALL(f) INSN(BPF_JMP | BPF_CALL, 0, 0, 0, f)
#define EXIT() INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)

#define MAX_INSNS 40
#define OUT_MARK 0x7fff /* jump offsets to the final "return SK_PASS" */

static int build(const uvip_prefix_t *p, int port, int map_fd,
                 struct bpf_insn *prog) {
  int n = 0, words = p->family == AF_INET ? 1 : 4;
  int addr_off = p->family == AF_INET
                     ? (int)offsetof(struct bpf_sk_lookup, local_ip4)
                     : (int)offsetof(struct bpf_sk_lookup, local_ip6);
  uint8_t addr[16] = {0}, mask[16] = {0};

  memcpy(addr, &p->addr, (size_t)words * 4);
  for (unsigned int b = 0; b < p->len; b++)
    mask[b / 8] |= (uint8_t)(0x80u >> (b % 8));

  prog[n++] = MOV64_X(BPF_REG_6, BPF_REG_1);
  prog[n++] = LDX_W(BPF_REG_2, BPF_REG_6,
                    (short)offsetof(struct bpf_sk_lookup, family));
  prog[n++] = JNE32_K(BPF_REG_2, p->family, OUT_MARK);
  prog[n++] = LDX_W(BPF_REG_2, BPF_REG_6,
                    (short)offsetof(struct bpf_sk_lookup, protocol));
  prog[n++] = JNE32_K(BPF_REG_2, IPPROTO_TCP, OUT_MARK);
  prog[n++] = LDX_W(BPF_REG_2, BPF_REG_6,
                    (short)offsetof(struct bpf_sk_lookup, local_port));
  prog[n++] = JNE32_K(BPF_REG_2, port, OUT_MARK);
  for (int w = 0; w < words; w++) {
    uint32_t m, a;
    /* Both as the program loads them: network order bytes in a u32. */
    memcpy(&m, mask + 4 * w, 4);
    memcpy(&a, addr + 4 * w, 4);
    if (m == 0)
      continue;
    prog[n++] = LDX_W(BPF_REG_2, BPF_REG_6, (short)(addr_off + 4 * w));
    prog[n++] = AND32_K(BPF_REG_2, (int32_t)m);
    prog[n++] = JNE32_K(BPF_REG_2, (int32_t)a, OUT_MARK);
  }
  /* r1 = &sockmap (a two-slot instruction), r2 = &zero on the stack. */
  prog[n++] = INSN(BPF_LD | BPF_DW | BPF_IMM, BPF_REG_1, BPF_PSEUDO_MAP_FD, 0,
                   map_fd);
  prog[n++] = INSN(0, 0, 0, 0, 0);
  prog[n++] = ST_W(BPF_REG_10, -4, 0);
  prog[n++] = MOV64_X(BPF_REG_2, BPF_REG_10);
  prog[n++] = ADD64_K(BPF_REG_2, -4);
  prog[n++] = CALL(BPF_FUNC_map_lookup_elem);
  prog[n++] = JEQ_K(BPF_REG_0, 0, OUT_MARK);
  prog[n++] = MOV64_X(BPF_REG_7, BPF_REG_0);
  prog[n++] = MOV64_X(BPF_REG_1, BPF_REG_6);
  prog[n++] = MOV64_X(BPF_REG_2, BPF_REG_7);
  prog[n++] = MOV64_K(BPF_REG_3, 0);
  prog[n++] = CALL(BPF_FUNC_sk_assign);
  prog[n++] = MOV64_X(BPF_REG_1, BPF_REG_7);
  prog[n++] = CALL(BPF_FUNC_sk_release);
  /* out: */
  prog[n++] = MOV64_K(BPF_REG_0, SK_PASS);
  prog[n++] = EXIT();
  for (int i = 0; i < n; i++)
    if (prog[i].off == OUT_MARK)
      prog[i].off = (short)(n - 2 - (i + 1));
  return n;
}

static void say(char *errbuf, size_t errlen, const char *what, int r,
                const char *log) {
  const char *last = log;
  if (errbuf == NULL || errlen == 0)
    return;
  /* The verifier's last line says why. */
  if (log != NULL && log[0] != '\0') {
    size_t l = strlen(log);
    while (l > 0 && log[l - 1] == '\n')
      l--;
    for (last = log + l; last > log && last[-1] != '\n'; last--)
      ;
  }
  snprintf(errbuf, errlen,
           "BPF sk_lookup refused: %s: %s%s%s%.*s", what, uv_strerror(r),
           r == UV_EPERM ? " (needs CAP_BPF and CAP_NET_ADMIN)" : "",
           last && last[0] ? ": " : "",
           last ? (int)strcspn(last, "\n") : 0, last ? last : "");
}

static int load(const struct bpf_insn *prog, int n, char *log, size_t len) {
  static const char license[] = "Dual MIT/GPL";
  union bpf_attr a;
  memset(&a, 0, sizeof(a));
  a.prog_type = BPF_PROG_TYPE_SK_LOOKUP;
  a.expected_attach_type = BPF_SK_LOOKUP;
  a.insns = (uint64_t)(uintptr_t)prog;
  a.insn_cnt = (uint32_t)n;
  a.license = (uint64_t)(uintptr_t)license;
  if (log != NULL) {
    a.log_buf = (uint64_t)(uintptr_t)log;
    a.log_size = (uint32_t)len;
    a.log_level = 1;
  }
  return sys_bpf(BPF_PROG_LOAD, &a);
}

void uvip__sklookup_init(uvip__sklookup_t *k) {
  k->map_fd = k->prog_fd = k->link_fd = -1;
}

int uvip__sklookup_new(uvip__sklookup_t *k, const uvip_prefix_t *p, int port,
                       char *errbuf, size_t errlen) {
  struct bpf_insn prog[MAX_INSNS];
  union bpf_attr a;
  int n, r, ns;

  uvip__sklookup_init(k);
  memset(&a, 0, sizeof(a));
  a.map_type = BPF_MAP_TYPE_SOCKMAP;
  a.key_size = 4;
  a.value_size = 8;
  a.max_entries = 1;
  if ((r = k->map_fd = sys_bpf(BPF_MAP_CREATE, &a)) < 0) {
    say(errbuf, errlen, "bpf(BPF_MAP_CREATE)", r, NULL);
    goto fail;
  }
  n = build(p, port, k->map_fd, prog);
  if ((r = k->prog_fd = load(prog, n, NULL, 0)) < 0) {
    /* Again with the verifier's log, to say why. */
    char log[16384] = "";
    int again = load(prog, n, log, sizeof(log));
    if (again >= 0)
      close(again);
    say(errbuf, errlen, "bpf(BPF_PROG_LOAD)", r, again < 0 ? log : NULL);
    goto fail;
  }
  /* Attached to the caller's network namespace. */
  if ((ns = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)) < 0) {
    r = -errno;
    say(errbuf, errlen, "/proc/thread-self/ns/net", r, NULL);
    goto fail;
  }
  memset(&a, 0, sizeof(a));
  a.link_create.prog_fd = (uint32_t)k->prog_fd;
  a.link_create.target_fd = (uint32_t)ns;
  a.link_create.attach_type = BPF_SK_LOOKUP;
  r = k->link_fd = sys_bpf(BPF_LINK_CREATE, &a);
  close(ns);
  if (r < 0) {
    say(errbuf, errlen, "bpf(BPF_LINK_CREATE)", r, NULL);
    goto fail;
  }
  return 0;

fail:
  uvip__sklookup_free(k);
  return r;
}

int uvip__sklookup_set(uvip__sklookup_t *k, int fd) {
  union bpf_attr a;
  uint32_t key = 0;
  uint64_t value = (uint64_t)fd;
  memset(&a, 0, sizeof(a));
  a.map_fd = (uint32_t)k->map_fd;
  a.key = (uint64_t)(uintptr_t)&key;
  a.value = (uint64_t)(uintptr_t)&value;
  a.flags = BPF_ANY;
  return sys_bpf(BPF_MAP_UPDATE_ELEM, &a);
}

void uvip__sklookup_free(uvip__sklookup_t *k) {
  /* Closing the link detaches the program; the map and the program go
   * with their last descriptor. */
  if (k->link_fd >= 0)
    close(k->link_fd);
  if (k->prog_fd >= 0)
    close(k->prog_fd);
  if (k->map_fd >= 0)
    close(k->map_fd);
  uvip__sklookup_init(k);
}
