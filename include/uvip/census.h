/* uvip: census API. Included by <uvip.h>; do not include directly.
 * SPDX-License-Identifier: MIT */
#ifndef UVIP_CENSUS_H
#define UVIP_CENSUS_H

#ifdef __cplusplus
extern "C" {
#endif

#ifdef __cplusplus
}
#endif

#endif /* UVIP_CENSUS_H */
