/* Fuzz target for the PROXY protocol parser (uvip_proxy_parse() and the TLV
 * walk). Built with -DUVIP_LIBFUZZER (clang -fsanitize=fuzzer) it is a
 * libFuzzer target; otherwise main() replays the files given (the corpus
 * in tests/fuzz/proxy-corpus) so that every build checks them.
 * Invariants: the answer is a length within the input, 0, UV_EPROTO or
 * UV_E2BIG; every prefix of an accepted header asks for more; TLVs never
 * run past the header.
 * SPDX-License-Identifier: MIT */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uvip.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  uvip_proxy_info_t in;
  /* An exact-size copy: a read past the input is a sanitizer error. */
  uint8_t *b = malloc(size ? size : 1);
  int r;
  memcpy(b, data, size);
  r = uvip_proxy_parse(b, size, &in);
  if (!(r == 0 || r == UV_EPROTO || r == UV_E2BIG || (r > 0 && (size_t)r <= size)))
    abort();
  if (r > 0) {
    size_t off = 0, vlen;
    unsigned int type;
    const unsigned char *v;
    int t;
    while ((t = uvip_proxy_tlv_next(&in, &off, &type, &v, &vlen)) == 1)
      if (v + vlen > b + r)
        abort();
    if (t != 0 && t != UV_EPROTO)
      abort();
    for (int k = 0; k < r; k += 1 + r / 16)
      if (uvip_proxy_parse(b, (size_t)k, NULL) != 0)
        abort();
  }
  free(b);
  return 0;
}

#ifndef UVIP_LIBFUZZER
static int replay(const char *path) {
  FILE *f = fopen(path, "rb");
  uint8_t buf[70000];
  size_t n;
  if (!f)
    return 1;
  n = fread(buf, 1, sizeof(buf), f);
  fclose(f);
  LLVMFuzzerTestOneInput(buf, n);
  return 0;
}

int main(int argc, char **argv) {
  int files = 0;
  for (int i = 1; i < argc; i++) {
    DIR *d = opendir(argv[i]);
    struct dirent *e;
    if (!d) {
      if (replay(argv[i]) != 0)
        return 1;
      files++;
      continue;
    }
    while ((e = readdir(d))) {
      char p[4096];
      if (e->d_name[0] == '.')
        continue;
      snprintf(p, sizeof(p), "%s/%s", argv[i], e->d_name);
      if (replay(p) != 0)
        return 1;
      files++;
    }
    closedir(d);
  }
  printf("fuzz-proxy: %d inputs replayed\n", files);
  return files > 0 ? 0 : 1;
}
#endif
