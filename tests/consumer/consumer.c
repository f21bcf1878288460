/* A program outside the uvip tree, linked the way a user's server would. */
#include <stdio.h>
#include <uvip.h>

int main(void) {
  uvip_addrs_t *a = NULL;
  char err[128] = "";
  if (uvip_addrs_new(&a) != 0)
    return 1;
  int r = uvip_addrs_parse(a, "127.0.0.1-127.0.0.16", 7000, err, sizeof(err));
  size_t n = uvip_addrs_count(a);
  printf("uvip %s: %zu VIPs (%s)\n", uvip_version_string(), n, r == 0 ? "ok" : err);
  uvip_addrs_free(a);
  return r == 0 && n == 16 ? 0 : 1;
}
