/* census-time: one census of the current namespace, as the benchmark's
 * uvip side. Prints "SECONDS SOCKETS_SEEN MAXRSS_KB READS SHARDS" where
 * SECONDS covers uvip_census_sample() only, MAXRSS_KB is the process's
 * peak resident memory (getrusage) and SHARDS the dumps that ran.
 *   census-time [--procfs] [--shards N]   (N = 0: the default, automatic)
 * SPDX-License-Identifier: MIT */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <uvip.h>

int main(int argc, char **argv) {
  uvip_census_options_t o;
  uvip_census_t *c = NULL;
  struct rusage ru;
  uvip_census_options_init(&o);
  o.flags |= UVIP_CENSUS_NO_LIMITS;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--procfs") == 0) {
      o.flags |= UVIP_CENSUS_PROCFS;
    } else if (strcmp(argv[i], "--shards") == 0 && i + 1 < argc) {
      o.shards = (unsigned int)strtoul(argv[++i], NULL, 10);
    } else {
      fprintf(stderr, "usage: census-time [--procfs] [--shards N]\n");
      return 2;
    }
  }
  int rc = uvip_census_new(NULL, &o, &c);
  if (rc == 0)
    rc = uvip_census_sample(c);
  if (rc != 0) {
    fprintf(stderr, "census-time: %s\n", uv_strerror(rc));
    return 1;
  }
  const uvip_census_info_t *i = uvip_census_info(c);
  getrusage(RUSAGE_SELF, &ru);
  printf("%.6f %llu %ld %llu %d\n", (double)i->duration_ns / 1e9,
         (unsigned long long)i->seen, ru.ru_maxrss,
         (unsigned long long)i->reads, i->shards);
  uvip_census_free(c);
  return 0;
}
