/* SPDX-License-Identifier: MIT */
#include "internal.h"

#define UVIP_STR2(x) #x
#define UVIP_STR(x) UVIP_STR2(x)

UVIP_EXPORT unsigned int uvip_version(void) { return UVIP_VERSION_HEX; }

UVIP_EXPORT const char *uvip_version_string(void) {
  return UVIP_STR(UVIP_VERSION_MAJOR) "." UVIP_STR(UVIP_VERSION_MINOR) "."
      UVIP_STR(UVIP_VERSION_PATCH);
}
