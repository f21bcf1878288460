/* <uvip.h> on its own must compile as strict C99 (-std=c99 -pedantic -Werror). */
#include <uvip.h>

int main(void) {
  uvip_addrs_t *a = NULL;
  if (uvip_addrs_new(&a) != 0)
    return 1;
  uvip_addrs_free(a);
  return uvip_version() == UVIP_VERSION_HEX ? 0 : 1;
}
